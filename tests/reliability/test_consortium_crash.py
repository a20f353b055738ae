"""Crash safety of one validator inside a running 4-validator consortium (issue 7, item 1): 100
SIGKILLs of validator 3 under signed load, each followed by an immediate restart on the same
data, with the checks of `tests.reliability.consortium_crash` after every kill (integrity,
acknowledged transactions exactly once where acknowledged, all-or-nothing, the same block
hashes as a peer, no slot of its signed-message log ever signed twice) and, every 25 kills and
at the end, on all four validators once it caught up (no evidence naming it), then
`tanlian verify chain` on each one's export.

The documented long run: `.venv/bin/python -m tests.reliability.consortium_crash --kills 1000`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability.consortium_crash import ConsortiumCrashHarness

KILLS = 100


@pytest.mark.long(216)
def test_a_hundred_kills_of_one_validator_of_four_lose_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("TANLIAN_CRASH_SEED", "20261204"))
    lines: list[str] = []
    harness = ConsortiumCrashHarness(tmp_path, seed=seed, check_every=25)
    harness.run(KILLS, report=lines.append)
    assert harness.kills == KILLS
    assert harness.checks >= KILLS // 25 + 1 and harness.audits == 4
    # The kills met the victim in every state: opening its store, storing blocks it synced or
    # decided, answering submissions; and the consortium committed throughout.
    assert harness.kills_while_starting >= KILLS // 10, lines
    assert harness.kills_after_storing >= KILLS // 20, lines
    assert harness.kills_in_flight >= 1 and harness.acknowledged_by_victim >= 1, lines
    assert len(harness.workload.ledger.acknowledged) >= KILLS, lines
    assert harness.signed, "the victim signed in the consortium"
