"""Tampering with a real data directory (issue 3, point 6; issue 7, item 2), end to end
through the commands.

Each case alters one thing in a copy of a demo ledger with sqlite3, then shows that the damage
is caught before anything is served: `tanlian export` refuses a store whose head does not
re-derive (a node refuses to start on it), and checks every older block as it reads it (its
header against its certificate, its transactions against its log root), naming the block and
writing nothing; proofs are never served from a damaged log.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from ledger.crypto import TX_DOMAIN, hash_domain
from ledger.errors import StoreError
from ledger.store import DATABASE_FILE, Store
from tests.api.test_cli import assert_fails_cleanly, tanlian


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("tamper-demo")
    result = tanlian("demo", "--data", data, "--transactions", 300, "--seed", 11)
    assert result.returncode == 0, result.stderr
    return data


@pytest.fixture
def ledger(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "ledger"
    shutil.copytree(pristine, copy)
    return copy


def alter(data: Path, change: Callable[[sqlite3.Connection], object]) -> None:
    connection = sqlite3.connect(data / DATABASE_FILE)
    try:
        change(connection)
        connection.commit()
    finally:
        connection.close()


def export_refuses(data: Path, tmp_path: Path) -> str:
    """`tanlian export` fails with one line, writing no file; its stderr."""
    export = tmp_path / "chain.ndjson"
    result = tanlian("export", "--data", data, "--out", export)
    assert_fails_cleanly(result, "is corrupt")
    assert not export.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".chain")] == []
    return result.stderr


def export_and_verify(data: Path, tmp_path: Path) -> tuple[int, str]:
    export = tmp_path / "chain.ndjson"
    exported = tanlian("export", "--data", data, "--out", export)
    assert exported.returncode == 0, exported.stderr
    result = tanlian("verify", "chain", "--export", export, "--genesis", data / "genesis.json")
    return result.returncode, result.stderr


def head(data: Path) -> int:
    connection = sqlite3.connect(data / DATABASE_FILE)
    try:
        return int(connection.execute("SELECT MAX(height) FROM blocks").fetchone()[0])
    finally:
        connection.close()


def test_the_untouched_ledger_verifies(ledger: Path, tmp_path: Path) -> None:
    code, stderr = export_and_verify(ledger, tmp_path)
    assert code == 0, stderr


def test_a_transaction_byte_is_named_by_height_and_transaction(
    ledger: Path, tmp_path: Path
) -> None:
    found: list[tuple[str, int]] = []

    def change(connection: sqlite3.Connection) -> None:
        stored_id, height, envelope = connection.execute(
            "SELECT tx_id, height, envelope FROM transactions WHERE type = 'transfer' "
            "ORDER BY log_index LIMIT 1"
        ).fetchone()
        document = json.loads(envelope)
        document["tx"]["payload"]["quantity"] += 1
        connection.execute(
            "UPDATE transactions SET envelope = ? WHERE tx_id = ?",
            (json.dumps(document, separators=(",", ":")), stored_id),
        )
        # The id the audit names is the altered transaction's: ids derive from content.
        found.append((hash_domain(TX_DOMAIN, document["tx"]).hex(), height))

    alter(ledger, change)
    stderr = export_refuses(ledger, tmp_path)
    ((_, height),) = found
    assert f"block {height} is corrupt: its transactions do not give its log_root" in stderr


def test_a_header_field_is_named_by_height(ledger: Path, tmp_path: Path) -> None:
    def change(connection: sqlite3.Connection) -> None:
        (header,) = connection.execute("SELECT header FROM blocks WHERE height = 3").fetchone()
        document = json.loads(header)
        document["time"] += 1
        connection.execute(
            "UPDATE blocks SET header = ? WHERE height = 3",
            (json.dumps(document, separators=(",", ":")),),
        )

    alter(ledger, change)
    stderr = export_refuses(ledger, tmp_path)
    assert "block 3 is corrupt: its header does not hash to the recorded" in stderr, stderr


def test_a_certificate_signature_is_named_by_height(ledger: Path, tmp_path: Path) -> None:
    def change(connection: sqlite3.Connection) -> None:
        (certificate,) = connection.execute(
            "SELECT certificate FROM blocks WHERE height = 5"
        ).fetchone()
        document = json.loads(certificate)
        signature = document["signatures"][0]["signature"]
        document["signatures"][0]["signature"] = ("1" if signature[0] == "0" else "0") + signature[
            1:
        ]
        connection.execute(
            "UPDATE blocks SET certificate = ? WHERE height = 5",
            (json.dumps(document, separators=(",", ":")),),
        )

    alter(ledger, change)
    stderr = export_refuses(ledger, tmp_path)
    assert "block 5 is corrupt: its certificate does not certify its header" in stderr, stderr


def test_swapped_blocks_are_named_by_height(ledger: Path, tmp_path: Path) -> None:
    def change(connection: sqlite3.Connection) -> None:
        connection.execute("UPDATE blocks SET height = -1 WHERE height = 6")
        connection.execute("UPDATE blocks SET height = 6 WHERE height = 7")
        connection.execute("UPDATE blocks SET height = 7 WHERE height = -1")

    alter(ledger, change)
    stderr = export_refuses(ledger, tmp_path)
    assert "block 6 is corrupt" in stderr, stderr


def test_a_deleted_block_stops_the_export(ledger: Path, tmp_path: Path) -> None:
    alter(ledger, lambda connection: connection.execute("DELETE FROM blocks WHERE height = 2"))
    result = tanlian("export", "--data", ledger, "--out", tmp_path / "chain.ndjson")
    assert_fails_cleanly(result, "no block at height 2")


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(
            lambda c: c.execute(
                "UPDATE state SET value = replace(value, '\"nonce\":', '\"nonce\":1') "
                "WHERE key = (SELECT key FROM state WHERE key LIKE 'account/%' LIMIT 1)"
            ),
            id="a state row",
        ),
        pytest.param(
            lambda c: c.execute(
                "UPDATE log_nodes SET hash = zeroblob(32) WHERE level = 0 AND "
                "idx = (SELECT MAX(idx) FROM log_nodes WHERE level = 0)"
            ),
            id="the head's last log leaf",
        ),
        pytest.param(
            lambda c: c.execute(
                "UPDATE meta SET value = CAST(value AS INTEGER) - 1 WHERE key = 'head_height'"
            ),
            id="the recorded head height",
        ),
    ],
)
def test_damage_at_the_head_refuses_to_start(
    ledger: Path, tmp_path: Path, change: Callable[[sqlite3.Connection], object]
) -> None:
    alter(ledger, change)
    with pytest.raises(StoreError, match="refusing to start"):
        Store.open(ledger).load_state()
    result = tanlian("export", "--data", ledger, "--out", tmp_path / "chain.ndjson")
    assert_fails_cleanly(result, "refusing to start")


def test_a_damaged_merkle_node_yields_no_proof(ledger: Path) -> None:
    store = Store.open(ledger)
    try:
        state = store.load_state()
        # A retirement whose leaf has a sibling at level 0, the first node its inclusion
        # path reads (the last leaf at an even index has none: its path starts higher).
        retirement_id, index = next(
            (retirement_id, index)
            for key in state.entries
            if key.startswith("retirement/")
            for retirement_id in [key.split("/", 1)[1]]
            for _, index, _ in [store.transaction_position(retirement_id)]
            if index ^ 1 < state.log.size
        )
        store.receipt(state, retirement_id)  # served while the log is intact
    finally:
        store.close()
    sibling = index ^ 1
    alter(
        ledger,
        lambda c: c.execute(
            "UPDATE log_nodes SET hash = zeroblob(32) WHERE level = 0 AND idx = ?", (sibling,)
        ),
    )
    store = Store.open(ledger)
    try:
        with pytest.raises(StoreError, match="corrupt"):
            store.receipt(state, retirement_id)
    finally:
        store.close()


def test_an_older_copy_of_the_database_is_a_valid_shorter_chain(
    pristine: Path, tmp_path: Path
) -> None:
    """A swapped-in older database is internally consistent: the audit accepts it, and only
    its lower head shows the rollback. Comparing heads with a trusted checkpoint (tanlian
    verify monitor, with the HTTP API) is what catches it; here we show what the audit says."""
    older = tmp_path / "older"
    shutil.copytree(pristine, older)
    top = head(older)

    def roll_back(connection: sqlite3.Connection) -> None:
        connection.execute("DELETE FROM blocks WHERE height > 10")
        connection.execute("DELETE FROM transactions WHERE height > 10")

    alter(older, roll_back)
    export = tmp_path / "older.ndjson"
    # The state rows still describe the newer head: the node refuses to start on the mix.
    result = tanlian("export", "--data", older, "--out", export)
    assert_fails_cleanly(result, "refusing to start")
    assert top > 10
