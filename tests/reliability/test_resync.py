"""A validator with a damaged store re-syncs from its peers (issue 7, item 2; docs/decisions/
0008-reliability.md, "A damaged validator store: --resync").

Four real `tanlian node` validators on 127.0.0.1 (tests.consensus.test_processes), stopped
by their pids. Validator 3's store is damaged behind its back: first an older block (one
transaction's signature), which it finds while serving (503 `store_unavailable`); then its
head, so it refuses to start, with one line naming `--resync`. Restarted with `--resync` it
moves the store aside (kept, one line saying where), rebuilds it from its peers by block sync
(every certificate and block verified), keeping its key and signed-message log, reaches
identical hashes, and takes part again: with validator 0 stopped, no block is decided
without its precommit. No block holds evidence naming it, and `tanlian verify chain`
accepts its export.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from ledger.blocks import parse_block, parse_certificate
from ledger.encoding import canonical
from ledger.store import DATABASE_FILE, LOCK_FILE, MOVED_ASIDE_PREFIX, DirectoryLock, Store
from tests.api.test_cli import assert_fails_cleanly, tanlian
from tests.consensus.test_node import WORLD, document
from tests.consensus.test_processes import NODES, TANLIAN, Consortium, committed, consortium
from tests.consensus.test_sync_processes import metric
from tests.factory import Chain
from tests.reliability.test_corruption import other_signature

__all__ = ["consortium"]  # the fixture
LINE_BYTES_MAX = 1 << 20
VICTIM = 3


def stop(c: Consortium, index: int) -> None:
    """SIGKILL `index` and wait until its writer process lets go of the data directory."""
    c.kill(index)
    lock = DirectoryLock(c.root / f"data-{index}" / LOCK_FILE)
    lock.acquire(wait_seconds=30)
    lock.release()


def alter(c: Consortium, index: int, sql: str, *arguments: object) -> None:
    connection = sqlite3.connect(c.root / f"data-{index}" / DATABASE_FILE)
    try:
        connection.execute(sql, arguments)
        connection.commit()
    finally:
        connection.close()


def lines(c: Consortium, index: int, top: int) -> list[dict[str, object]]:
    return [json.loads(line) for line in c.export(index, top)[1:]]


@pytest.mark.long(28)
def test_a_validator_with_a_damaged_store_resyncs_from_its_peers_and_rejoins(
    consortium: Consortium, tmp_path: Path
) -> None:
    c = consortium
    victim_key = WORLD.keys[VICTIM].public_key_hex
    for url in c.urls:
        answer = c.client.post(f"{url}/v1/transactions", json=[e.to_json() for e in WORLD.workload])
        assert answer.status_code in (200, 202), answer.text
    ids = [e.tx_id for e in WORLD.workload]
    c.wait(lambda: all(committed(c, i, t) for i in range(NODES) for t in ids), "commit all")
    c.wait(lambda: (c.height(VICTIM) or 0) >= 8, "a few heights")
    (old_tx, old_height) = (
        sqlite3.connect(c.root / f"data-{VICTIM}" / DATABASE_FILE)
        .execute("SELECT tx_id, height FROM transactions ORDER BY log_index LIMIT 1")
        .fetchone()
    )

    # An older block damaged: the head check passes, the block is refused where it is read.
    stop(c, VICTIM)
    connection = sqlite3.connect(c.root / f"data-{VICTIM}" / DATABASE_FILE)
    other_signature(connection, old_tx)
    connection.commit()
    connection.close()
    c.start(VICTIM)
    c.wait(lambda: c.height(VICTIM) is not None, "the victim answers")
    served = c.client.get(f"{c.urls[VICTIM]}/v1/transactions/{old_tx}")
    assert served.status_code == 503 and served.json()["code"] == "store_unavailable"
    block = c.client.get(f"{c.urls[VICTIM]}/v1/blocks/{old_height}")
    assert block.status_code == 503, block.text

    # Its head damaged too: it refuses to start, and says what to do.
    stop(c, VICTIM)
    alter(c, VICTIM, "UPDATE blocks SET hash = ? WHERE height = (SELECT MAX(height) FROM blocks)",
          "00" * 32)  # fmt: skip
    c.start(VICTIM)
    refused = c.processes.pop(VICTIM)
    assert refused.wait(timeout=60) == 1
    log = (c.root / f"node-{VICTIM}.log").read_text(errors="replace")
    assert "refusing to start" in log and "--resync" in log, log[-2000:]

    # --resync: moved aside, rebuilt from the peers, the same chain.
    before = max(h or 0 for h in c.heights([0, 1, 2]))
    c.start(VICTIM, "--resync")
    c.wait(lambda: (c.height(VICTIM) or 0) >= before + 2, "the victim re-syncs", 120)
    (aside,) = (c.root / f"data-{VICTIM}").glob(f"{MOVED_ASIDE_PREFIX}*")
    assert (aside / DATABASE_FILE).is_file()  # kept, never deleted
    log = (c.root / f"node-{VICTIM}.log").read_text(errors="replace")
    assert f"resync: store moved aside to {aside}" in log, log[-2000:]
    assert metric(c.urls[VICTIM], "tanlian_blocks_synced") >= before - 5
    assert metric(c.urls[VICTIM], "tanlian_sync_refusals") == 0
    served = c.client.get(f"{c.urls[VICTIM]}/v1/transactions/{old_tx}")
    assert served.status_code == 200 and served.json()["height"] == old_height
    c.assert_one_chain(list(range(NODES)))

    # It takes part again: with validator 0 stopped, every block needs its precommit. Validator
    # 0 may have precommitted a height or two just before the stop (its messages still in
    # flight, or a peer's reported height lagging its decision), so the blocks that show it
    # was needed are those whose certificate validator 0 did not sign: at least three of them.
    key_0 = WORLD.keys[0].public_key_hex
    c.signal(0, signal.SIGSTOP)
    try:
        start = max(h or 0 for h in c.heights([1, 2, 3]))
        c.wait(lambda: all((h or 0) >= start + 5 for h in c.heights([1, 2, 3])), "1-3 go on", 60)
    finally:
        c.signal(0, signal.SIGCONT)
    certificates = [parse_certificate(line["certificate"]) for line in lines(c, 1, start + 5)]
    without_0 = [s for s in certificates[start:] if key_0 not in dict(s.signatures)]
    assert len(without_0) >= 3, [s.height for s in certificates[start:]]
    for certificate in without_0:
        assert victim_key in dict(certificate.signatures), certificate.height

    top = c.assert_one_chain(list(range(NODES)))
    for index in range(NODES):
        for line in lines(c, index, top):
            chain_block = parse_block(line["block"], transaction_bytes_max=LINE_BYTES_MAX)
            assert all(e.public_key != victim_key for e in chain_block.evidence)
    exported = tmp_path / "export.ndjson"
    exported.write_bytes(b"\n".join(c.export(VICTIM, top)) + b"\n")
    result = subprocess.run(
        [str(TANLIAN), "verify", "chain", "--export", str(exported),
         "--genesis", str(c.root / "genesis.json")],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    assert f"height {top}" in result.stdout
    assert "Traceback" not in (c.root / f"node-{VICTIM}.log").read_text(errors="replace")


def test_resync_needs_peers_and_never_sets_aside_another_chain(tmp_path: Path) -> None:
    genesis = tmp_path / "genesis.json"
    genesis.write_bytes(canonical(document()))
    (tmp_path / "key.pem").write_bytes(WORLD.keys[0].to_pem())
    node: list[str | Path] = [
        "node",
        "--data",
        tmp_path / "data",
        "--validator-key",
        tmp_path / "key.pem",
    ]
    alone = tanlian(*node, "--genesis", genesis, "--resync")
    assert alone.returncode == 2 and "--peer" in alone.stderr, alone.stderr
    # A store of another chain is not this node's to move aside.
    Store.create(tmp_path / "data", Chain().genesis_document).close()
    other = tanlian(*node, "--genesis", genesis, "--peer", "http://127.0.0.1:9", "--resync")
    assert_fails_cleanly(other, "holds another chain")
    assert (tmp_path / "data" / DATABASE_FILE).is_file()
    assert not list((tmp_path / "data").glob(f"{MOVED_ASIDE_PREFIX}*"))
