"""Crash safety of a single node (issue 7, item 1): 100 SIGKILLs of a real node under signed
load, each followed by a restart on the same data and the checks of `tests.reliability.crash`
(integrity, every acknowledged transaction exactly once where it was acknowledged,
all-or-nothing for the rest, `tanlian verify chain` every 25 kills and at the end).

The documented long run: `.venv/bin/python -m tests.reliability.crash --kills 1000`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability.crash import CrashHarness

KILLS = 100


@pytest.mark.long(171)
def test_a_hundred_kills_lose_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("TANLIAN_CRASH_SEED", "20261204"))
    lines: list[str] = []
    harness = CrashHarness(tmp_path, seed=seed, audit_every=25)
    harness.run(KILLS, report=lines.append)
    assert harness.kills == KILLS
    assert harness.audits >= KILLS // 25
    # The kills met the load: most of them cut transactions in flight, some of those after
    # their block was stored (the answer lost, the commit kept), and what was acknowledged
    # survived every kill after it.
    assert harness.kills_in_flight >= KILLS // 2, lines
    assert harness.committed_unanswered >= 1, lines
    assert len(harness.ledger.acknowledged) >= KILLS, lines
