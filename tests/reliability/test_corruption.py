"""Corruption of committed data is caught before it is served (issue 7, item 2).

A running node over a real store; one row of a committed block is altered behind its back
(as a failing disk or a hand with sqlite3 would), and every way of reading that block
refuses it: the block, its transaction, the transaction's inclusion proof, its checkpoint
(503 `store_unavailable`, an RFC 9457 problem), and the export, which ends with a problem
line instead of the block, so no client or auditor takes it for a shorter chain. Blocks
that were not touched are still served.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from api.node import Node
from api.settings import Settings
from ledger.store import DATABASE_FILE, Store
from tests.api.test_app import assert_problem
from tests.factory import Chain

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Served:
    def __init__(self, data: Path, client: httpx.AsyncClient, ids: list[str]) -> None:
        self.data = data
        self.client = client
        self.ids = ids  # a transaction of block 1, block 2 and block 3

    def alter(self, change: Callable[[sqlite3.Connection], object]) -> None:
        connection = sqlite3.connect(self.data / DATABASE_FILE)
        try:
            change(connection)
            connection.commit()
        finally:
            connection.close()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    chain = Chain(block_interval_ms=20)
    Store.create(tmp_path, chain.genesis_document).close()
    node = Node(tmp_path, chain.validator)
    node.start()
    try:
        ids = []
        for envelope in (
            chain.accredit(),
            chain.issue([(chain.alice, 100)]),
            chain.tx(chain.alice, "transfer", {"to": chain.bob.account_id, "batch_id": "B-1",
                                               "quantity": 5}),
        ):  # fmt: skip
            node.submit([envelope])
            (outcome,) = node.wait_for_commit([envelope.tx_id], 20)
            assert outcome is not None and outcome.status == "committed"
            ids.append(envelope.tx_id)
        assert node.state.height == 3
        app = create_app(node, Settings(data=tmp_path), manage_node=False)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            yield Served(tmp_path, client, ids)
    finally:
        node.stop()


def other_signature(connection: sqlite3.Connection, tx_id: str) -> None:
    """Flip one hex digit of the transaction's first signature: its id stays the same."""
    (text,) = connection.execute(
        "SELECT envelope FROM transactions WHERE tx_id = ?", (tx_id,)
    ).fetchone()
    envelope = json.loads(text)
    signature = envelope["signatures"][0]["signature"]
    envelope["signatures"][0]["signature"] = ("1" if signature[0] == "0" else "0") + signature[1:]
    connection.execute(
        "UPDATE transactions SET envelope = ? WHERE tx_id = ?",
        (json.dumps(envelope, separators=(",", ":"), sort_keys=True), tx_id),
    )


async def test_a_damaged_transaction_is_refused_everywhere_it_is_read(served: Served) -> None:
    client = served.client
    tx_id = served.ids[1]
    assert (await client.get("/v1/blocks/2")).status_code == 200
    served.alter(lambda connection: other_signature(connection, tx_id))
    assert_problem(await client.get("/v1/blocks/2"), 503, "store_unavailable")
    assert_problem(await client.get(f"/v1/transactions/{tx_id}"), 503, "store_unavailable")
    proof = await client.get(f"/v1/proofs/inclusion?tx_id={tx_id}")
    assert_problem(proof, 503, "store_unavailable")
    # Untouched blocks are still served.
    assert (await client.get("/v1/blocks/1")).status_code == 200
    assert (await client.get("/v1/blocks/3")).status_code == 200
    # The export ends with a problem line where block 2 would be.
    answer = await client.get("/v1/export")
    assert answer.status_code == 200
    lines = [json.loads(line) for line in answer.content.splitlines()]
    assert [sorted(line) for line in lines[1:]] == [["block", "certificate"], ["problem"]]
    assert lines[-1]["problem"]["code"] == "store_unavailable"
    assert "block 2 is corrupt" in lines[-1]["problem"]["detail"]
    # From the damaged block on, the export is refused before it starts.
    assert_problem(await client.get("/v1/export?from_height=2"), 503, "store_unavailable")


async def test_a_damaged_certificate_is_refused(served: Served) -> None:
    def change(connection: sqlite3.Connection) -> None:
        (text,) = connection.execute("SELECT certificate FROM blocks WHERE height = 1").fetchone()
        certificate = json.loads(text)
        certificate["round"] += 1
        connection.execute(
            "UPDATE blocks SET certificate = ? WHERE height = 1",
            (json.dumps(certificate, separators=(",", ":")),),
        )

    served.alter(change)
    assert_problem(await served.client.get("/v1/checkpoints/1"), 503, "store_unavailable")
    assert_problem(await served.client.get("/v1/blocks/1"), 503, "store_unavailable")
    assert (await served.client.get("/v1/checkpoints/2")).status_code == 200


async def test_a_damaged_header_is_refused(served: Served) -> None:
    def change(connection: sqlite3.Connection) -> None:
        (text,) = connection.execute("SELECT header FROM blocks WHERE height = 2").fetchone()
        header = json.loads(text)
        header["time"] += 1
        connection.execute(
            "UPDATE blocks SET header = ? WHERE height = 2",
            (json.dumps(header, separators=(",", ":")),),
        )

    served.alter(change)
    for path in ("/v1/blocks/2", "/v1/checkpoints/2", "/v1/export?from_height=2"):
        assert_problem(await served.client.get(path), 503, "store_unavailable")


async def test_a_damaged_lots_index_forges_no_holding(served: Served) -> None:
    """The lots table only finds an account's lots; the amounts come from the verified state."""
    client = served.client
    answer = await client.get("/v1/blocks/2")
    alice = answer.json()["block"]["transactions"][0]["tx"]["payload"]["recipients"][0]["account"]
    before = (await client.get(f"/v1/accounts/{alice}")).json()["holdings"]
    served.alter(
        lambda connection: connection.execute(
            "UPDATE lots SET quantity = quantity + 1000, status = 'circulating' WHERE owner = ?",
            (alice,),
        )
    )
    assert (await client.get(f"/v1/accounts/{alice}")).json()["holdings"] == before
