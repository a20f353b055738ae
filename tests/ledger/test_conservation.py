"""The per-block conservation check (SPEC §3.4) catches a broken partition or counter.

The rules never produce such states, so these tests break a block's working state on purpose
and run the check on it directly; the property tests show the check stays silent on every
state the rules do produce.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ledger.state_transition import _check_conservation, _Work
from tests.factory import Chain


def work_after_a_transfer(change: Callable[[_Work], None]) -> _Work:
    chain = Chain().funded()
    work = _Work(chain.state, height=chain.state.height + 1, time=chain.time + 1000)
    work.touched_batches.add("B-1")
    change(work)
    return work


def lot(work: _Work, start: int) -> dict[str, Any]:
    value: dict[str, Any] = work.get(f"lot/B-1/{start}")
    return value


def test_an_untouched_block_passes() -> None:
    _check_conservation(work_after_a_transfer(lambda work: None))


def test_a_rewritten_lot_that_still_abuts_passes() -> None:
    def rewrite(work: _Work) -> None:
        work.put("lot/B-1/1", dict(lot(work, 1)))

    _check_conservation(work_after_a_transfer(rewrite))


def test_a_gap_is_caught() -> None:
    def shrink(work: _Work) -> None:
        work.put("lot/B-1/1", {**lot(work, 1), "quantity": lot(work, 1)["quantity"] - 1})

    with pytest.raises(AssertionError, match="partition"):
        _check_conservation(work_after_a_transfer(shrink))


def test_an_overlap_is_caught() -> None:
    def grow(work: _Work) -> None:
        work.put("lot/B-1/1", {**lot(work, 1), "quantity": lot(work, 1)["quantity"] + 1})

    with pytest.raises(AssertionError, match="partition"):
        _check_conservation(work_after_a_transfer(grow))


def test_a_removed_lot_left_uncovered_is_caught() -> None:
    def remove(work: _Work) -> None:
        last = work.lots("B-1")[-1]
        work.delete(f"lot/B-1/{last}")
        work.lots("B-1").remove(last)

    with pytest.raises(AssertionError, match="in no lot"):
        _check_conservation(work_after_a_transfer(remove))


def test_a_status_change_without_its_counter_is_caught() -> None:
    def retire_silently(work: _Work) -> None:
        work.put("lot/B-1/1", {**lot(work, 1), "status": "retired", "retirement_id": "x" * 64})

    with pytest.raises(AssertionError, match="counter"):
        _check_conservation(work_after_a_transfer(retire_silently))


def test_counters_that_do_not_sum_to_issued_are_caught() -> None:
    def inflate(work: _Work) -> None:
        batch = work.get("batch/B-1")
        work.put("batch/B-1", {**batch, "issued": batch["issued"] + 1})

    with pytest.raises(AssertionError):
        _check_conservation(work_after_a_transfer(inflate))
