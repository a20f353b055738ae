"""A small version of bench/overload.py's attack on a real `tanlian node` process: the honest
client's transactions all commit exactly once where they were acknowledged, every health
check under attack is answered ok, and each attack meets the refusal that bounds it. Nothing
here is timed or weighed: how fast the answers came and how much memory the node took are
the benchmark's figures (`python bench/overload.py`); this checks that nothing breaks.

The node and the attacker process are stopped by their pids (bench.overload.run); the
attackers come from 127.0.0.2 and up, the honest client from 127.0.0.1.
"""

from __future__ import annotations

import pytest

from bench.overload import Figures, Options, run


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> Figures:
    with pytest.MonkeyPatch.context() as patch:
        # Slow heads are cut after 2 s, so the slowloris clients come back within the attack.
        patch.setenv("TANLIAN_REQUEST_HEAD_SECONDS", "2")
        patch.setenv("TANLIAN_REQUEST_BODY_SECONDS", "3")
        # 24 bodies of ~4 MiB, streaming at once, pass 8 MiB held within the attack.
        patch.setenv("TANLIAN_REQUEST_BODIES_BYTES_MAX", str(8 * 1024 * 1024))
        options = Options(
            seconds=8,
            rest_seconds=2,
            honest=2,
            flood=12,
            flood_arrays=1,
            slow_heads=60,
            slow_bodies=12,
            big_bodies=24,
            oversized=1,
            accounts=50,
            limits=False,
        )
        return run(options, tmp_path_factory.mktemp("overload"))


def test_every_acknowledged_honest_transaction_is_in_the_chain_once(figures: Figures) -> None:
    acknowledged = len(figures.rest.acknowledged) + len(figures.attack.acknowledged)
    assert figures.attack.commits.count > 0, "no honest transaction committed under attack"
    assert figures.lost == []
    assert figures.audit.startswith("chain verified: "), figures.audit
    assert acknowledged == figures.rest.commits.count + figures.attack.commits.count
    # No honest transaction was refused for good; a copy with a broken signature, sent right
    # after each, did not make it look rejected.
    assert figures.attack.rejected == {}
    assert figures.attack.unverified == figures.rest.unverified == 0


def test_every_health_check_under_attack_is_answered_ok(figures: Figures) -> None:
    probe = figures.attack.probe  # each within the probe's own request timeout
    assert probe.count > 0 and set(probe.statuses) == {200}, probe.statuses


def test_each_attack_met_the_refusal_that_bounds_it(figures: Figures) -> None:
    statuses = figures.attackers["statuses"]
    assert statuses.get("flood 422 bad_signature", 0) > 0
    assert statuses.get("slow heads 408 request_timeout", 0) > 0
    assert statuses.get("slow bodies 408 request_timeout", 0) > 0
    assert statuses.get("big bodies 503 overloaded", 0) > 0
    assert not any("(not a problem)" in status for status in statuses), statuses
