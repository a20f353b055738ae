"""The node shell: its block loop (built while the previous block is written) and what it
answers about a transaction, from memory, the pool, or the committed-id filter and the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from api.node import Node, _CommittedIds
from api.settings import Settings
from consensus.producer import SoloProducer
from ledger import limits
from ledger.store import Store
from ledger.transactions import Envelope, Transaction, sign_transaction
from tests.factory import GENESIS_TIME, Chain, key


def ids(label: str, count: int) -> list[str]:
    return [hashlib.sha256(f"{label}-{i}".encode()).hexdigest() for i in range(count)]


def test_the_filter_holds_every_id_added_and_rules_out_most_others() -> None:
    added = ids("committed", 20_000)
    committed = _CommittedIds(20_000)
    for tx_id in added:
        committed.add(tx_id)
    assert all(tx_id in committed for tx_id in added)
    others = ids("other", 20_000)
    maybe = sum(tx_id in committed for tx_id in others)
    assert maybe < 0.02 * len(others), maybe  # ~1 % at capacity
    for odd in ("not-hex-" * 8, "abc", 12):  # what it cannot rule out: the store answers
        assert odd in committed


def committed_chain(directory: Path, chain: Chain) -> list[str]:
    """A store with two committed blocks; their transaction ids."""
    store = Store.create(directory, chain.genesis_document)
    producer = SoloProducer(store, chain.validator)
    alice = chain.alice.account_id
    tx_ids = []
    for number, envelopes in enumerate(
        [
            [chain.accredit(), chain.issue([(alice, 1000)])],
            [
                chain.tx(
                    chain.alice,
                    "transfer",
                    {"to": chain.bob.account_id, "batch_id": "B-1", "quantity": 5},
                )
            ],
        ]
    ):
        producer.submit(envelopes)
        result = producer.produce(GENESIS_TIME + 1000 * (number + 1))
        assert result is not None
        tx_ids += [e.tx_id for e in result.block.transactions]
    store.close()
    return tx_ids


@pytest.fixture
def chain() -> Chain:
    return Chain()


def filled(node: Node) -> _CommittedIds:
    """The node's committed-id filter, once filled beside its block loop."""
    deadline = time.monotonic() + 20
    while not node._committed_ids.filled and time.monotonic() < deadline:
        time.sleep(0.02)
    assert node._committed_ids.filled
    return node._committed_ids


@pytest.fixture
def restarted(tmp_path: Path, chain: Chain) -> Iterator[tuple[Node, list[str]]]:
    tx_ids = committed_chain(tmp_path, chain)
    node = Node(tmp_path, chain.validator)  # remembers nothing: a restarted node
    node.start()
    try:
        filled(node)
        yield node, tx_ids
    finally:
        node.stop()


def test_a_restarted_node_finds_what_was_committed_before(
    restarted: tuple[Node, list[str]],
) -> None:
    node, tx_ids = restarted
    assert not node.producer.outcomes
    for index, tx_id in enumerate(tx_ids):
        outcome = node.outcome(tx_id)
        assert outcome is not None and outcome.status == "committed"
        assert outcome.log_index == index


def test_an_unknown_id_is_answered_without_the_store(
    restarted: tuple[Node, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    node, _ = restarted

    def no_lookup(tx_id: str) -> None:
        raise AssertionError("the filter rules this id out")

    monkeypatch.setattr(node.reader(), "transaction_position", no_lookup)
    assert node.outcome(hashlib.sha256(b"never submitted").hexdigest()) is None


def test_the_loop_commits_and_the_filter_grows_with_the_chain(
    tmp_path: Path, chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("api.node.COMMITTED_IDS_MIN", 2)  # so that it must grow
    committed_chain(tmp_path, chain)
    node = Node(tmp_path, chain.validator)
    node.start()
    try:
        capacity = filled(node).capacity
        moves = [
            chain.tx(
                chain.alice,
                "transfer",
                {"to": chain.carol.account_id, "batch_id": "B-1", "quantity": 1},
            )
            for _ in range(capacity + 1)
        ]
        assert len(moves) <= limits.POOL_NONCE_GAP_MAX
        assert all(a.status == "pending" for a in node.submit(moves))
        done = node.wait_for_commit([e.tx_id for e in moves], timeout=20)
        assert all(o is not None and o.status == "committed" for o in done)
        deadline = time.monotonic() + 20
        while node._committed_ids.capacity == capacity and time.monotonic() < deadline:
            time.sleep(0.05)  # the larger filter is filled on a thread of its own
        assert node._committed_ids.capacity > capacity
        node.producer.outcomes.clear()  # forget: the answers must come from filter and store
        assert all(
            (o := node.outcome(e.tx_id)) is not None and o.status == "committed" for e in moves
        )
    finally:
        node.stop()


def hold_filling(
    monkeypatch: pytest.MonkeyPatch, *, passed: int
) -> tuple[threading.Event, threading.Event]:
    """Hold the filter's filling thread after its read of the committed ids, once `passed`
    fillings have gone through: (set once it is held, set to let it go on)."""
    reading, released = threading.Event(), threading.Event()
    every_id = Store.transaction_ids
    fillings: list[str] = []

    def slow_ids(store: Store) -> Iterator[str]:
        ids = list(every_id(store))  # read now: what is committed later is not among them
        if threading.current_thread().name == "committed-ids":
            fillings.append("read")
            if len(fillings) > passed:
                reading.set()
                assert released.wait(30)
        yield from ids

    monkeypatch.setattr(Store, "transaction_ids", slow_ids)
    return reading, released


def test_blocks_go_on_while_the_larger_filter_is_filled(
    tmp_path: Path, chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Filling a larger filter reads every committed id (2.2 s a million on this machine);
    it used to be done on the block loop, which stopped committing for as long. Now the loop
    goes on with the full filter, and the larger one, once filled, also holds what was
    committed meanwhile."""
    monkeypatch.setattr("api.node.COMMITTED_IDS_MIN", 2)
    committed_chain(tmp_path, chain)
    reading, released = hold_filling(monkeypatch, passed=1)  # the start's goes through
    node = Node(tmp_path, chain.validator)
    node.start()
    try:
        capacity = filled(node).capacity

        def moves(count: int) -> list[Envelope]:
            return [
                chain.tx(
                    chain.alice,
                    "transfer",
                    {"to": chain.carol.account_id, "batch_id": "B-1", "quantity": 1},
                )
                for _ in range(count)
            ]

        first = moves(capacity + 1)
        node.submit(first)
        done = node.wait_for_commit([e.tx_id for e in first], timeout=20)
        assert all(o is not None and o.status == "committed" for o in done)
        assert reading.wait(10)  # the larger filter is being filled, and is held there
        later = moves(3)
        node.submit(later)
        done = node.wait_for_commit([e.tx_id for e in later], timeout=20)
        assert all(o is not None and o.status == "committed" for o in done)
        assert node._committed_ids.capacity == capacity  # still the full one
        released.set()
        deadline = time.monotonic() + 20
        while node._committed_ids.capacity == capacity and time.monotonic() < deadline:
            time.sleep(0.05)
        assert node._committed_ids.capacity > capacity
        assert all(e.tx_id in node._committed_ids for e in first + later)
    finally:
        released.set()
        node.stop()


def test_the_read_connections_of_ended_threads_are_closed(
    restarted: tuple[Node, list[str]],
) -> None:
    """Found by review: each request thread kept its read connection (two file descriptors
    and up to an 8 MiB page cache) until the node stopped, and request threads end after
    10 s idle, so an idle validator polled by a monitor grew ~10 MiB a minute."""
    node, tx_ids = restarted
    descriptors = len(os.listdir("/proc/self/fd"))
    seen: list[Store] = []

    def read() -> None:
        store = node.reader()
        assert store.transaction_position(tx_ids[0]) is not None
        seen.append(store)

    for _ in range(30):  # thirty request threads, one after another
        thread = threading.Thread(target=read)
        thread.start()
        thread.join()
    assert len({id(store) for store in seen}) == 30  # each thread had its own
    assert node.readers_open() == 1  # the last one's: the others were closed as it opened
    assert len(os.listdir("/proc/self/fd")) <= descriptors + 2
    with pytest.raises(sqlite3.ProgrammingError):  # closed, not just forgotten
        seen[0].db.execute("SELECT 1")
    assert node.reader() is node.reader()  # a live thread keeps its own
    assert node.readers_open() == 1  # this thread's: the last ended one's closed meanwhile


def test_a_node_starts_before_its_filter_is_filled_and_answers_from_the_store(
    tmp_path: Path, chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Filling the filter reads every committed id (2.2 s a million on this machine), which
    had been added to every start. Now it is filled beside the block loop: until then each
    id is looked up in the store, and the filter, once filled, also holds what was committed
    meanwhile."""
    before = committed_chain(tmp_path, chain)
    reading, released = hold_filling(monkeypatch, passed=0)
    node = Node(tmp_path, chain.validator)
    node.start()
    try:
        assert reading.wait(10)
        assert not node._committed_ids.filled
        unknown = hashlib.sha256(b"never submitted").hexdigest()
        assert unknown in node._committed_ids  # not filled: "maybe", so the store answers
        assert node.outcome(unknown) is None
        for index, tx_id in enumerate(before):
            outcome = node.outcome(tx_id)
            assert outcome is not None and outcome.status == "committed"
            assert outcome.log_index == index
        later = [
            chain.tx(
                chain.alice,
                "transfer",
                {"to": chain.carol.account_id, "batch_id": "B-1", "quantity": 1},
            )
        ]
        node.submit(later)
        done = node.wait_for_commit([e.tx_id for e in later], timeout=20)
        assert all(o is not None and o.status == "committed" for o in done)
        released.set()
        committed = filled(node)
        assert all(tx_id in committed for tx_id in before + [e.tx_id for e in later])
        assert unknown not in committed
        node.producer.outcomes.clear()  # forget: the answers must come from filter and store
        assert all(
            (o := node.outcome(e.tx_id)) is not None and o.status == "committed" for e in later
        )
    finally:
        released.set()
        node.stop()


def test_a_validators_rejection_with_no_block_answers_its_waiting_submitter(
    tmp_path: Path,
) -> None:
    """Found by review: an idle consortium validator rejects a transaction that fails on its
    state without deciding a block, and only a block woke the submitters waiting for their
    commit: one with `?wait=commit` heard the rejection at the end of its 25 s wait."""
    chain = Chain().funded()
    chain.write_store(tmp_path)
    # A consortium's producer (a peer given, never reachable): no block for two minutes idle.
    node = Node(tmp_path, chain.validator, peers=["http://127.0.0.1:9"], empty_block_ms=120_000)
    nobody = key("nobody")
    transaction = Transaction(
        chain_id=chain.state.chain_id,
        type="transfer",
        signer=nobody.account_id,
        nonce=1,
        payload={"to": chain.alice.account_id, "batch_id": "B-404", "quantity": 5},
    )
    refused = sign_transaction(transaction, [nobody])
    served = create_app(node, Settings(data=tmp_path, commit_wait_seconds=25), manage_node=False)
    node.start()

    async def submit() -> tuple[httpx.Response, float]:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=served), base_url="http://node", timeout=60
        ) as client:
            started = time.monotonic()
            answer = await client.post("/v1/transactions?wait=commit", content=refused.leaf)
            return answer, time.monotonic() - started

    try:
        start = node.state.height
        deadline = time.monotonic() + 30
        while node.state.height == start:  # a start costs one empty block; then it idles
            assert time.monotonic() < deadline
            time.sleep(0.05)
        height = node.state.height
        answer, took = asyncio.run(submit())
    finally:
        node.stop()
    assert answer.status_code == 422 and answer.json()["code"] == "unknown_batch"
    assert took < 10, took  # the 2 s it fails before it is rejected, not the 25 s wait
    assert node.state.height == height  # and no block for it
