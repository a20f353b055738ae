"""The data directory (SPEC §5, §7.1): durable blocks, reopening, export, and refusing damage.

A small chain is produced through the real pool and `SoloProducer` (issuance, transfers that
split and merge lots, retirements, an invalidation), then the store is closed, reopened, read
back, exported and replayed from the genesis alone. Failures injected in the middle of
`append` must leave the previous block as the head, and every kind of damage done to the
database behind the store's back must make opening refuse with a `StoreError` naming it.
"""

from __future__ import annotations

import io
import json
import marshal
import multiprocessing
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import rfc8785

from api.reads import LOT_ORDER
from consensus.producer import CommittedBlock, SoloProducer
from ledger import store as store_module
from ledger.blocks import (
    compute_validators_hash,
    parse_block,
    parse_certificate,
    verify_certificate,
)
from ledger.encoding import canonical_unchecked
from ledger.errors import StoreError, StoreExists, StoreUnreadable
from ledger.evidence import make_evidence, sign_vote
from ledger.genesis import genesis_state, parse_genesis
from ledger.merkle import LogState
from ledger.state import State
from ledger.state_transition import apply_block
from ledger.store import BATCH_NUMBER, DATABASE_FILE, SCHEMA_VERSION, Store
from ledger.transactions import Envelope
from ledger.worker import read_frame
from tests.factory import GENESIS_TIME, Chain, key

PROGRAM = "zibo-green-home"
TABLES = (
    "meta",
    "blocks",
    "transactions",
    "account_transactions",
    "state",
    "state_changes",
    "log_nodes",
    "batches",
    "retirements",
    "lots",
)


# --- helpers ----------------------------------------------------------------------------------


@dataclass
class Produced:
    """A chain produced into a store (closed afterwards), with what the producer returned."""

    chain: Chain
    directory: Path
    blocks: list[CommittedBlock]
    state: State


def commit(producer: SoloProducer, envelopes: list[Envelope], at_ms: int) -> CommittedBlock:
    """Submit `envelopes` and cut one block holding exactly them."""
    answers = producer.submit(envelopes)
    assert [a.status for a in answers] == ["pending"] * len(envelopes), answers
    result = producer.produce(at_ms)
    assert result is not None
    assert [e.tx_id for e in result.block.transactions] == [e.tx_id for e in envelopes]
    return result


def scenario_blocks(chain: Chain) -> Iterator[list[Envelope]]:
    """Four blocks: set-up and issuance, transfers and retirements that split and merge lots,
    an invalidation, and a second batch. Generated lazily: each uses the nonces committed."""
    alice, bob = chain.alice.account_id, chain.bob.account_id
    yield [
        chain.accredit(),
        chain.create_program(PROGRAM),
        chain.issue([(alice, 1000), (bob, 500)]),
    ]
    yield [
        chain.tx(chain.alice, "transfer", {"to": bob, "batch_id": "B-1", "quantity": 100}),
        chain.tx(
            chain.bob,
            "retire",
            {"batch_id": "B-1", "quantity": 50, "beneficiary": "Bob", "purpose": "voluntary"},
        ),
    ]
    yield [
        # Bob's lowest serials come back to alice and merge with her remaining lot.
        chain.tx(chain.bob, "transfer", {"to": alice, "batch_id": "B-1", "quantity": 100}),
        chain.tx(
            chain.alice,
            "retire",
            {
                "batch_id": "B-1",
                "quantity": 30,
                "beneficiary": "Alice's household",
                "purpose": "incentive",
                "program_id": PROGRAM,
                "jurisdiction": "CN-SD",
            },
        ),
        chain.tx(
            chain.certifier,
            "invalidate",
            {"batch_id": "B-1", "holder": bob, "quantity": 10, "reason": "meter fault"},
        ),
    ]
    yield [
        chain.issue([(chain.carol, 300)], project_id="meter-0002"),
        chain.tx(chain.alice, "transfer", {"to": bob, "batch_id": "B-1", "quantity": 1}),
    ]


def produce_chain(directory: Path, *, writer: bool = False) -> Produced:
    chain = Chain()
    store = Store.create(directory, chain.genesis_document)
    if writer:
        store.start_writer()
    producer = SoloProducer(store, chain.validator)
    blocks = [
        commit(producer, envelopes, GENESIS_TIME + 1000 * (number + 1))
        for number, envelopes in enumerate(scenario_blocks(chain))
    ]
    state = producer.state
    store.close()
    return Produced(chain=chain, directory=directory, blocks=blocks, state=state)


@pytest.fixture
def produced(tmp_path: Path) -> Produced:
    return produce_chain(tmp_path / "node")


def connect(directory: Path) -> sqlite3.Connection:
    """A plain connection to the store's database, behind the store's back."""
    connection = sqlite3.connect(directory / DATABASE_FILE, isolation_level=None)
    connection.row_factory = sqlite3.Row
    return connection


def dump(directory: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, sorted: to compare a whole database before and after."""
    connection = connect(directory)
    try:
        return {
            table: sorted(tuple(row) for row in connection.execute(f"SELECT * FROM {table}"))
            for table in TABLES
        }
    finally:
        connection.close()


def assert_same_state(loaded: State, expected: State) -> None:
    assert loaded.state_root == expected.state_root
    assert loaded.height == expected.height
    assert loaded.head_hash == expected.head_hash
    assert loaded.head_time == expected.head_time
    assert loaded.log.size == expected.log.size
    assert loaded.log.root() == expected.log.root()
    assert loaded.log.peaks == expected.log.peaks
    assert dict(loaded.entries) == dict(expected.entries)
    assert loaded.recent_validators == expected.recent_validators
    assert dict(loaded.batch_lots) == dict(expected.batch_lots)
    assert dict(loaded.holdings) == dict(expected.holdings)
    assert (loaded.batch_count, loaded.next_serial) == (expected.batch_count, expected.next_serial)


def replay_export(lines: list[bytes]) -> State:
    """Check an export from the genesis alone: every block replays and every certificate
    carries the set that governs its height."""
    genesis = parse_genesis(json.loads(lines[0]))
    state = genesis_state(genesis)
    for line in lines[1:]:
        item = json.loads(line)
        assert set(item) == {"block", "certificate"}
        block = parse_block(
            item["block"], transaction_bytes_max=genesis.params.transaction_bytes_max
        )
        certificate = parse_certificate(item["certificate"])
        verify_certificate(
            certificate,
            chain_id=genesis.chain_id,
            height=block.height,
            block_hash=block.block_hash(),
            validators=state.current_validators(),
        )
        state = apply_block(state, block)
    return state


# --- reopening ----------------------------------------------------------------------------------


def test_reopened_store_loads_the_identical_state(produced: Produced) -> None:
    store = Store.open(produced.directory)
    try:
        assert store.head_height == len(produced.blocks) == 4
        assert_same_state(store.load_state(), produced.state)
    finally:
        store.close()


def test_production_resumes_on_the_stored_head(produced: Produced) -> None:
    chain = produced.chain
    store = Store.open(produced.directory)
    try:
        producer = SoloProducer(store, chain.validator)
        head = produced.blocks[-1]
        envelope = chain.tx(
            chain.bob, "transfer", {"to": chain.carol.account_id, "batch_id": "B-1", "quantity": 7}
        )
        result = commit(producer, [envelope], GENESIS_TIME + 60_000)
        header = result.block.header
        assert header.height == 5
        assert header.parent_hash == head.block.block_hash()
        assert result.block.last_commit == head.certificate
        assert header.last_commit_hash == head.certificate.certificate_hash()
        assert header.log_size == produced.state.log.size + 1
        # A validator replaying the new block on the state as it was stored agrees with it.
        assert apply_block(produced.state, result.block).state_root == header.state_root
    finally:
        store.close()
    reopened = Store.open(produced.directory)
    try:
        assert reopened.load_state().state_root == header.state_root
        assert reopened.head_height == 5
    finally:
        reopened.close()


def test_read_block_and_certificate_round_trip(produced: Produced) -> None:
    store = Store.open(produced.directory)
    try:
        for committed in produced.blocks:
            height = committed.block.height
            block = store.read_block(height)
            assert block == committed.block
            assert block.to_json() == committed.block.to_json()
            assert [e.tx_id for e in block.transactions] == [
                e.tx_id for e in committed.block.transactions
            ]
            assert store.read_certificate(height) == committed.certificate
        assert store.last_certificate() == produced.blocks[-1].certificate
        with pytest.raises(StoreError, match="no block at height 5"):
            store.read_block(5)
        with pytest.raises(StoreError, match="no block at height 0"):
            store.read_certificate(0)
    finally:
        store.close()


def test_blocks_with_evidence_and_the_validator_history_survive_a_reopen(
    tmp_path: Path,
) -> None:
    """Evidence is stored with its block and read back as it was; the sets that governed
    the last heights (what evidence is verified against) come back across a set change, and
    from a data directory written before the store kept them, rebuilt from its history."""
    chain = Chain()
    other = key("validator-other")
    chain.validator_keys[other.public_key_hex] = other
    chain.commit(
        chain.authority_tx(
            "set_validators",
            {"validators": [{"public_key": other.public_key_hex, "power": 1, "name": "other"}]},
        )
    )
    chain.commit()
    votes = [
        sign_vote(chain.validator, chain_id=chain.genesis.chain_id, vote_type="precommit",
                  height=2, round=0, block_hash=block_hash)
        for block_hash in (None, chain.blocks[-1].block.block_hash())
    ]  # fmt: skip
    with_evidence = chain.commit(evidence=(make_evidence(*votes),))
    assert with_evidence.block.evidence and len(chain.state.recent_validators) == 2
    chain.write_store(tmp_path)
    connection = connect(tmp_path)
    try:
        history = connection.execute("SELECT height, key FROM state_changes").fetchall()
    finally:
        connection.close()
    # The sets' history alone: the set named in block 1 becomes current after block 2.
    assert sorted(map(tuple, history)) == [(1, "validators/next"), (2, "validators/current")]
    store = Store.open(tmp_path)
    try:
        assert store.read_block(3) == with_evidence.block
        assert_same_state(store.load_state(), chain.state)
    finally:
        store.close()
    connection = connect(tmp_path)
    try:
        connection.execute("DELETE FROM meta WHERE key = 'recent_validators'")
    finally:
        connection.close()
    store = Store.open(tmp_path)
    try:
        assert_same_state(store.load_state(), chain.state)
        following = chain.commit()  # and the next block records them again
        store.append(following.block, chain.certify(following), following.state)
    finally:
        store.close()
    connection = connect(tmp_path)
    try:
        (recorded,) = connection.execute(
            "SELECT value FROM meta WHERE key = 'recent_validators'"
        ).fetchone()
    finally:
        connection.close()
    assert json.loads(recorded) == [run.to_json() for run in following.state.recent_validators]


def test_a_store_is_loaded_as_of_one_commit_while_its_writer_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: `tanlian export --data` and `receipt --data` beside a running node
    failed 1 time in 5 with "refusing to start: ... transactions stored, head says ...": the
    head was read before the writer's next commit and the rows after it."""
    chain = Chain()
    writer = Store.create(tmp_path, chain.genesis_document)
    writer.start_writer()
    producer = SoloProducer(writer, chain.validator)
    blocks = scenario_blocks(chain)
    for number in range(3):
        commit(producer, next(blocks), GENESIS_TIME + 1000 * (number + 1))
    at_three = producer.state
    reader = Store.open(tmp_path)
    reading_log = Store._load_log

    def appended_meanwhile(store: Store, size: int) -> LogState:
        if producer.state.height == 3:  # the writer commits block 4 in the middle of the read
            commit(producer, next(blocks), GENESIS_TIME + 4000)
        return reading_log(store, size)

    monkeypatch.setattr(Store, "_load_log", appended_meanwhile)
    try:
        loaded = reader.load_state()
        assert producer.state.height == 4  # the append did happen during the read
        assert_same_state(loaded, at_three)
        assert_same_state(reader.load_state(), producer.state)  # and the next read sees it
    finally:
        reader.close()
        writer.close()


def test_genesis_only_store_reopens_at_height_zero(tmp_path: Path) -> None:
    chain = Chain()
    Store.create(tmp_path, chain.genesis_document).close()
    store = Store.open(tmp_path)
    try:
        state = store.load_state()
        assert state.height == 0
        assert state.state_root == genesis_state(chain.genesis).state_root
        assert store.last_certificate() is None
        assert list(store.export_lines()) == [rfc8785.dumps(chain.genesis_document) + b"\n"]
    finally:
        store.close()


# --- export (SPEC §7.1) -------------------------------------------------------------------------


def test_export_is_genesis_then_one_block_and_certificate_per_line(produced: Produced) -> None:
    store = Store.open(produced.directory)
    try:
        lines = list(store.export_lines())
        part = list(store.export_lines(2, 3))
        beyond = list(store.export_lines(4, 99))
    finally:
        store.close()
    assert len(lines) == 1 + len(produced.blocks)
    assert lines[0] == rfc8785.dumps(produced.chain.genesis_document) + b"\n"
    for line, committed in zip(lines[1:], produced.blocks, strict=True):
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert line == rfc8785.dumps(json.loads(line)) + b"\n", "each line is canonical JSON"
        assert json.loads(line) == {
            "block": committed.block.to_json(),
            "certificate": committed.certificate.to_json(),
        }
    assert part == [lines[0], lines[2], lines[3]]
    assert beyond == [lines[0], lines[4]]


def test_export_replays_from_genesis_to_the_stored_state(produced: Produced) -> None:
    store = Store.open(produced.directory)
    try:
        lines = list(store.export_lines())
        stored = store.load_state()
    finally:
        store.close()
    replayed = replay_export(lines)
    assert replayed.height == stored.height == 4
    assert replayed.state_root == stored.state_root == produced.state.state_root
    assert replayed.log.root() == stored.log.root()
    assert dict(replayed.entries) == dict(stored.entries)


# --- query tables -------------------------------------------------------------------------------


def test_query_tables_agree_with_the_state(produced: Produced) -> None:
    entries = dict(produced.state.entries)

    def family(prefix: str) -> dict[str, Any]:
        return {k: v for k, v in entries.items() if k.startswith(prefix)}

    connection = connect(produced.directory)
    try:
        batches = {
            row["batch_id"]: dict(row) for row in connection.execute("SELECT * FROM batches")
        }
        retirements = {
            row["retirement_id"]: dict(row)
            for row in connection.execute("SELECT * FROM retirements")
        }
        lots = {
            (row["batch_id"], row["first_serial"]): dict(row)
            for row in connection.execute("SELECT * FROM lots")
        }
        history = {
            (row["account"], row["log_index"])
            for row in connection.execute("SELECT * FROM account_transactions")
        }
        transactions = [dict(row) for row in connection.execute("SELECT * FROM transactions")]
    finally:
        connection.close()

    assert batches == {
        value["batch_id"]: {
            "batch_id": value["batch_id"],
            "methodology_id": value["methodology_id"],
            "certifier": value["certifier"],
            "project_id": value["project_id"],
            "height": value["height"],
        }
        for value in family("batch/").values()
    }
    assert set(batches) == {"B-1", "B-2"}
    assert retirements == {
        value["retirement_id"]: {
            "retirement_id": value["retirement_id"],
            "holder": value["holder"],
            "beneficiary": value["beneficiary"],
            "program_id": value.get("program_id"),
            "batch_id": value["batch_id"],
            "height": value["height"],
        }
        for value in family("retirement/").values()
    }
    assert len(retirements) == 2
    # Lots split, merged and deleted along the way: the table holds exactly the state's lots,
    # each value whole (it is the only copy the store keeps).
    assert lots == {
        (value["batch_id"], value["first_serial"]): value for value in family("lot/").values()
    }
    assert {lot["status"] for lot in lots.values()} == {"circulating", "retired", "invalidated"}
    assert {lot["retirement_id"] is None for lot in lots.values()} == {True, False}

    committed = [e for block in produced.blocks for e in block.block.transactions]
    assert [(t["log_index"], t["tx_id"], t["type"], t["signer"]) for t in transactions] == [
        (index, e.tx_id, e.tx.type, e.tx.signer) for index, e in enumerate(committed)
    ]
    expected_history: set[tuple[str, int]] = set()
    for index, envelope in enumerate(committed):
        payload = envelope.tx.payload
        named = {envelope.tx.signer}
        named |= {payload[f] for f in ("to", "holder", "certifier", "account") if f in payload}
        named |= {r["account"] for r in payload.get("recipients", ())}
        expected_history |= {(account, index) for account in named}
    assert history == expected_history
    carol = produced.chain.carol.account_id
    assert {index for account, index in history if account == carol} == {8}


# --- exact bytes -------------------------------------------------------------------------------

AWKWARD_TEXT = 'Zibo 淄博 "quoted" back\\slash \u2028 line sep, 😀, tab-free, \u00e9'


def test_rows_keep_the_exact_canonical_bytes(tmp_path: Path) -> None:
    """The stored text is byte for byte the canonical encoding, whatever characters a
    free-text field holds, and reopens to the same state."""
    chain = Chain()
    store = Store.create(tmp_path, chain.genesis_document)
    producer = SoloProducer(store, chain.validator)
    alice, bob = chain.alice.account_id, chain.bob.account_id
    commit(producer, [chain.accredit(), chain.issue([(alice, 1000)])], GENESIS_TIME + 1000)
    moves = [
        chain.tx(
            chain.alice,
            "transfer",
            {"to": bob, "batch_id": "B-1", "quantity": 7, "memo": AWKWARD_TEXT},
        ),
        chain.tx(
            chain.alice,
            "retire",
            {
                "batch_id": "B-1",
                "quantity": 3,
                "beneficiary": AWKWARD_TEXT[:200],
                "purpose": "voluntary",
            },
        ),
    ]
    result = commit(producer, moves, GENESIS_TIME + 2000)
    state = producer.state
    store.close()
    connection = connect(tmp_path)
    try:
        stored = dict(connection.execute("SELECT tx_id, envelope FROM transactions").fetchall())
        for envelope in result.block.transactions:
            assert stored[envelope.tx_id].encode() == envelope.leaf
        for key, value in connection.execute("SELECT key, value FROM state"):
            assert value.encode() == canonical_unchecked(state.entries[key])
        retirement = connection.execute("SELECT beneficiary FROM retirements").fetchone()
        assert retirement["beneficiary"] == AWKWARD_TEXT[:200]
    finally:
        connection.close()
    reopened = Store.open(tmp_path)
    try:
        assert_same_state(reopened.load_state(), state)
    finally:
        reopened.close()


# --- the writer process --------------------------------------------------------------------------


def test_a_writer_process_writes_the_same_rows(produced: Produced, tmp_path: Path) -> None:
    through_writer = produce_chain(tmp_path / "writer", writer=True)
    assert dump(through_writer.directory) == dump(produced.directory)
    assert_same_state(through_writer.state, produced.state)
    store = Store.open(through_writer.directory)
    try:
        assert_same_state(store.load_state(), produced.state)
    finally:
        store.close()


def test_a_dead_writer_fails_its_block_and_the_next_writer_takes_over(tmp_path: Path) -> None:
    chain = Chain()
    store = Store.create(tmp_path, chain.genesis_document)
    store.start_writer()
    producer = SoloProducer(store, chain.validator)
    blocks = scenario_blocks(chain)
    commit(producer, next(blocks), GENESIS_TIME + 1000)
    writer = store._writer
    assert writer is not None and writer.child.process is not None
    first = writer.child.process
    first.kill()
    first.wait()
    second = next(blocks)
    producer.submit(second)
    with pytest.raises(StoreError, match="writer process died"):
        producer.produce(GENESIS_TIME + 2000)
    assert store.head_height == 1 and producer.pending_count() == len(second)
    result = producer.produce(GENESIS_TIME + 3000)  # a new writer, the same transactions
    assert result is not None and result.block.height == 2
    assert writer.child.process is not None and writer.child.process.pid != first.pid
    assert store.head_height == 2
    store.close()
    assert first.returncode is not None and writer.child.process is None
    reopened = Store.open(tmp_path)
    try:
        assert reopened.load_state().state_root == result.block.header.state_root
    finally:
        reopened.close()


def test_serve_writes_ends_with_one_line_at_a_request_that_is_no_record(
    produced: Produced, capsys: pytest.CaptureFixture[str]
) -> None:
    """Seen in CI's output: a writer read a whole frame that was no block record (a test's
    stand-in bytes, from a block loop that went on past its node's stop) and died with a
    traceback. It ends with one line and writes nothing."""
    before = dump(produced.directory)
    cut = marshal.dumps({"block": (99, "h")})[:-3]
    source = io.BytesIO(struct.pack("<Q", len(cut)) + cut)
    sink = io.BytesIO()
    store_module.serve_writes(produced.directory / DATABASE_FILE, source, sink)
    assert sink.getvalue() == b""  # no answer: no one is waiting for it
    assert capsys.readouterr().err == (
        "tanlian store writer: a request that is no block record; ending\n"
    )
    assert dump(produced.directory) == before


def test_serve_writes_answers_each_block_and_names_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer's loop, driven in-process: rows of a height already written are refused
    with SQLite's reason, and the loop goes on to the next request."""
    written: list[store_module.Record] = []
    original = store_module._write

    def recording(connection: sqlite3.Connection, record: store_module.Record) -> None:
        written.append(record)
        original(connection, record)

    monkeypatch.setattr(store_module, "_write", recording)
    produced = produce_chain(tmp_path)
    monkeypatch.undo()
    request = marshal.dumps(written[0])
    source = io.BytesIO(b"".join(struct.pack("<Q", len(request)) + request for _ in range(2)))
    sink = io.BytesIO()
    store_module.serve_writes(produced.directory / DATABASE_FILE, source, sink)
    sink.seek(0)
    answers = [read_frame(sink) for _ in range(3)]
    assert answers[0] and b"UNIQUE" in answers[0] and answers[1] == answers[0]
    assert answers[2] is None


# --- failures in the middle of append -----------------------------------------------------------


def _fail_inserts_into(directory: Path, table: str) -> None:
    """A fault inside SQLite itself: every insert into `table` aborts its transaction."""
    connection = connect(directory)
    try:
        connection.execute(
            f"CREATE TRIGGER fault BEFORE INSERT ON {table} "
            "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )
    finally:
        connection.close()


def _repair(directory: Path) -> None:
    connection = connect(directory)
    try:
        connection.execute("DROP TRIGGER fault")
    finally:
        connection.close()


@pytest.mark.parametrize("writer", [False, True], ids=["in-process", "writer-process"])
@pytest.mark.parametrize("table", ["state", "lots"])
def test_failed_append_leaves_the_previous_head(tmp_path: Path, table: str, writer: bool) -> None:
    chain = Chain()
    store = Store.create(tmp_path, chain.genesis_document)
    if writer:
        store.start_writer()
    producer = SoloProducer(store, chain.validator)
    blocks = scenario_blocks(chain)
    commit(producer, next(blocks), GENESIS_TIME + 1000)
    before_state = producer.state
    before_rows = dump(tmp_path)
    _fail_inserts_into(tmp_path, table)  # rows of block 2 go in before it, then it fails
    second = next(blocks)
    producer.submit(second)
    with pytest.raises((sqlite3.IntegrityError, StoreError), match="disk on fire"):
        producer.produce(GENESIS_TIME + 2000)
    assert store.head_height == 1
    assert producer.state is before_state
    assert producer.pending_count() == len(second), "the transactions wait for the next try"
    store.close()

    assert dump(tmp_path) == before_rows, "nothing of block 2 is stored"
    connection = connect(tmp_path)
    try:
        assert connection.execute("SELECT COUNT(*) FROM blocks WHERE height = 2").fetchone()[0] == 0
        assert (
            connection.execute("SELECT COUNT(*) FROM transactions WHERE height = 2").fetchone()[0]
            == 0
        )
    finally:
        connection.close()
    reopened = Store.open(tmp_path)
    try:
        assert reopened.head_height == 1
        assert_same_state(reopened.load_state(), before_state)
        # Once the fault is gone, the same transactions commit at the same height.
        _repair(tmp_path)
        resumed = SoloProducer(reopened, chain.validator)
        result = commit(resumed, second, GENESIS_TIME + 3000)
        assert result.block.height == 2
        assert reopened.load_state().state_root == result.block.header.state_root
    finally:
        reopened.close()


# --- damage done behind the store's back --------------------------------------------------------


def _head(connection: sqlite3.Connection) -> sqlite3.Row:
    row: sqlite3.Row = connection.execute(
        "SELECT * FROM blocks ORDER BY height DESC LIMIT 1"
    ).fetchone()
    return row


def _alter_header(change: Callable[[str], str]) -> Callable[[sqlite3.Connection], None]:
    """Rewrite the head block's stored header JSON with `change` (one byte each time)."""

    def alter(connection: sqlite3.Connection) -> None:
        head = _head(connection)
        header: str = head["header"]
        changed = change(header)
        assert len(changed) == len(header) and changed != header
        connection.execute(
            "UPDATE blocks SET header = ? WHERE height = ?", (changed, head["height"])
        )

    return alter


def _replace_once(old: str, new: str) -> Callable[[str], str]:
    def change(text: str) -> str:
        assert old in text
        return text.replace(old, new, 1)

    return change


def _hex_digit_of(field: str) -> Callable[[str], str]:
    """Another hex digit at the start of `field`'s value."""

    def change(text: str) -> str:
        return _other_hex_digit(text, text.index(f'"{field}":"') + len(field) + 4)

    return change


def _alter_signature(replace: Callable[[str], str]) -> Callable[[sqlite3.Connection], None]:
    def alter(connection: sqlite3.Connection) -> None:
        head = _head(connection)
        certificate = json.loads(head["certificate"])
        signature = certificate["signatures"][0]["signature"]
        certificate["signatures"][0]["signature"] = replace(signature)
        connection.execute(
            "UPDATE blocks SET certificate = ? WHERE height = ?",
            (json.dumps(certificate, separators=(",", ":")), head["height"]),
        )

    return alter


def _alter_state_value(connection: sqlite3.Connection) -> None:
    (value,) = connection.execute("SELECT value FROM state WHERE key = 'batch/B-1'").fetchone()
    assert '"issued":1500' in value
    changed = value.replace('"issued":1500', '"issued":1501')
    connection.execute("UPDATE state SET value = ? WHERE key = 'batch/B-1'", (changed,))


def _alter_lot(statement: str) -> Callable[[sqlite3.Connection], None]:
    def alter(connection: sqlite3.Connection) -> None:
        cursor = connection.execute(
            f"{statement} WHERE (batch_id, first_serial) = "
            "(SELECT batch_id, first_serial FROM lots WHERE status = 'retired' LIMIT 1)"
        )
        assert cursor.rowcount == 1

    return alter


def _alter_peak(connection: sqlite3.Connection) -> None:
    size = connection.execute("SELECT COUNT(*) FROM transactions").fetchone()[0]
    level, index = LogState.peak_positions(size)[0]
    (node,) = connection.execute(
        "SELECT hash FROM log_nodes WHERE level = ? AND idx = ?", (level, index)
    ).fetchone()
    changed = bytes([node[0] ^ 0x01]) + bytes(node[1:])
    connection.execute(
        "UPDATE log_nodes SET hash = ? WHERE level = ? AND idx = ?", (changed, level, index)
    )


def _delete_head(connection: sqlite3.Connection) -> None:
    connection.execute("DELETE FROM blocks WHERE height = (SELECT MAX(height) FROM blocks)")


def _set_head_height(value: str) -> Callable[[sqlite3.Connection], None]:
    def alter(connection: sqlite3.Connection) -> None:
        connection.execute("UPDATE meta SET value = ? WHERE key = 'head_height'", (value,))

    return alter


def _set_recent_validators(
    value: Callable[[list[Any]], list[Any]],
) -> Callable[[sqlite3.Connection], None]:
    def alter(connection: sqlite3.Connection) -> None:
        (text,) = connection.execute(
            "SELECT value FROM meta WHERE key = 'recent_validators'"
        ).fetchone()
        changed = json.dumps(value(json.loads(text)))
        connection.execute("UPDATE meta SET value = ? WHERE key = 'recent_validators'", (changed,))

    return alter


def _another_set(runs: list[Any]) -> list[Any]:
    stranger = key("stranger").public_key_hex
    return [
        {**run, "validators": [{**run["validators"][0], "public_key": stranger}]} for run in runs
    ]


def _other_hex_digit(text: str, position: int) -> str:
    digit = "0" if text[position] != "0" else "1"
    return text[:position] + digit + text[position + 1 :]


TAMPERING: dict[str, tuple[Callable[[sqlite3.Connection], None], str]] = {
    # (a) one byte of the head block's header JSON
    "header state_root digit": (_alter_header(_hex_digit_of("state_root")), "does not hash to"),
    "header time digit": (
        _alter_header(_replace_once('"time":1767225604000', '"time":1767225604001')),
        "does not hash to",
    ),
    "header field name": (_alter_header(_replace_once('"time"', '"tima"')), "header"),
    "header closing brace": (_alter_header(_replace_once("}", " ")), "does not parse"),
    # (b) a state row value
    "state value": (_alter_state_value, "state_root"),
    # (b') a lot's row, the only copy of its value the store keeps
    "lot quantity": (_alter_lot("UPDATE lots SET quantity = quantity + 1"), "state_root"),
    "lot owner": (_alter_lot("UPDATE lots SET owner = 'someone-else'"), "state_root"),
    "lot retirement": (_alter_lot("UPDATE lots SET retirement_id = NULL"), "state_root"),
    "lot quantity not a number": (
        _alter_lot("UPDATE lots SET quantity = 'many'"),
        "state_root",
    ),
    "lot deleted": (_alter_lot("DELETE FROM lots"), "state_root"),
    # (c) a log_nodes hash of a peak
    "log peak": (_alter_peak, "log_root"),
    # (d) the head certificate's signature
    "certificate signature digit": (
        _alter_signature(lambda s: _other_hex_digit(s, 70)),
        "block 4 is corrupt: its certificate does not certify its header",
    ),
    "certificate signature not hex": (
        _alter_signature(lambda s: s[:70] + "g" + s[71:]),
        "certificate",
    ),
    # (e) the head block row deleted
    "head block deleted": (_delete_head, "blocks end at 3"),
    # (f) meta head_height
    "head_height lower": (_set_head_height("3"), "head is 3 but blocks end at 4"),
    "head_height higher": (_set_head_height("5"), "head is 5 but blocks end at 4"),
    "head_height zero": (_set_head_height("0"), "genesis state was altered"),
    "head_height not a number": (_set_head_height("four"), "cannot be read"),
    # (g) the validator sets kept for evidence (State.recent_validators)
    "recent validators another set": (
        _set_recent_validators(_another_set),
        "validators of height 1 do not match its header",
    ),
    "recent validators none": (_set_recent_validators(lambda runs: []), "not whole"),
    "recent validators start late": (
        _set_recent_validators(lambda runs: [{**runs[0], "first_height": 2}]),
        "not whole",
    ),
    "recent validators after the head": (
        _set_recent_validators(lambda runs: [*runs, {**runs[0], "first_height": 9}]),
        "unordered",
    ),
}


@pytest.mark.parametrize("damage", list(TAMPERING))
def test_damaged_store_refuses_to_start(produced: Produced, damage: str) -> None:
    alter, fragment = TAMPERING[damage]
    connection = connect(produced.directory)
    try:
        alter(connection)
    finally:
        connection.close()
    store = Store.open(produced.directory)
    try:
        with pytest.raises(StoreError) as raised:
            store.load_state()
    finally:
        store.close()
    message = str(raised.value)
    assert "refusing to start" in message
    assert fragment in message
    assert raised.value.code == "store_error"


def test_genesis_state_altered_is_refused(tmp_path: Path) -> None:
    Store.create(tmp_path, Chain().genesis_document).close()
    connection = connect(tmp_path)
    try:
        connection.execute("UPDATE state SET value = replace(value, '\"nonce\":0', '\"nonce\":1')")
    finally:
        connection.close()
    store = Store.open(tmp_path)
    try:
        with pytest.raises(StoreError, match="genesis state was altered"):
            store.load_state()
    finally:
        store.close()


# --- creating and opening -----------------------------------------------------------------------


def _open_as_another_user(directory: str, answers: multiprocessing.Queue[str]) -> None:
    if os.getuid() == 0:  # root may open anything: open it as nobody, as a service would
        os.setgid(65534)
        os.setuid(65534)
    try:
        Store.open(Path(directory)).close()
        answers.put("opened")
    except StoreError as error:
        answers.put(f"{error.code}: {error.message}")


def _answer_of_child(
    target: Callable[[str, multiprocessing.Queue[str]], None], directory: Path
) -> str:
    """What `target`, run in a forked child on `directory`, put on its queue."""
    answers: multiprocessing.Queue[str] = multiprocessing.Queue()
    child = multiprocessing.get_context("fork").Process(
        target=target, args=(str(directory), answers)
    )
    child.start()
    child.join(30)
    return answers.get(timeout=5)


def _start_as_its_owner(directory: str, answers: multiprocessing.Queue[str]) -> None:
    if os.getuid() == 0:  # root may write anything: be the files' owner, nobody
        os.setgid(65534)
        os.setuid(65534)
    try:
        store = Store.open(Path(directory))  # a reader may read a read-only store
        try:
            assert store.load_state().height > 0
            store.ensure_layout()  # what a node does first
            answers.put("started")
        finally:
            store.close()
    except StoreError as error:
        answers.put(f"{error.code}: {error.message}")


def test_a_store_its_owner_may_not_write_is_refused_at_the_start(produced: Produced) -> None:
    """Found by review: SQLite opened a database file its owner may not write (mode 0444,
    in a directory it may write) read-only, without a word; the node started, took
    transactions and stopped at its first block."""
    shared = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        shutil.copy(produced.directory / DATABASE_FILE, shared / DATABASE_FILE)
        (shared / DATABASE_FILE).chmod(0o444)
        if os.getuid() == 0:
            for path in (shared, shared / DATABASE_FILE):
                os.chown(path, 65534, 65534)
        answer = _answer_of_child(_start_as_its_owner, shared)
        assert answer.startswith("store_unreadable: cannot write"), answer
        assert "may read and write" in answer
    finally:
        shutil.rmtree(shared)


def test_a_store_this_process_may_not_open_is_not_called_damaged(produced: Produced) -> None:
    """Found by review: a store whose files the node's user may not read or write (started
    once as root, then as a service user) was reported "not a usable Tanlian database", with
    `--resync` suggested, which sets a whole store aside. As root the test opens the store as
    nobody; as any other user, it takes the permissions away from itself."""
    as_root = os.getuid() == 0
    for database_mode, directory_mode in ((0o600, 0o755), (0o644, 0o755), (0o444, 0o555)):
        shared = Path(tempfile.mkdtemp(dir="/tmp"))
        try:
            shutil.copy(produced.directory / DATABASE_FILE, shared / DATABASE_FILE)
            # As root: others may look in, not open (0600) or not write (0644) the database.
            # As another user: no permission at all, or a read-only database and directory.
            (shared / DATABASE_FILE).chmod(
                database_mode if as_root or database_mode == 0o444 else 0o000
            )
            shared.chmod(directory_mode)
            answer = _answer_of_child(_open_as_another_user, shared)
            assert answer.startswith("store_unreadable: cannot open"), (database_mode, answer)
            assert "may read and write" in answer and "not a usable" not in answer
        finally:
            shared.chmod(0o755)
            shutil.rmtree(shared)
    damaged = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        (damaged / DATABASE_FILE).write_bytes(b"not a database at all" * 100)
        with pytest.raises(StoreError) as refused:
            Store.open(damaged)
        assert not isinstance(refused.value, StoreUnreadable)
        assert "not a usable" in refused.value.message
    finally:
        shutil.rmtree(damaged)


def test_a_wal_left_without_its_database_is_never_replayed_into_a_new_one(
    produced: Produced,
) -> None:
    """Found by review: a store moved aside by a process killed between its two renames left
    its WAL behind, and the next store made there had the old WAL's pages replayed into it.
    A new store is now refused beside an orphan WAL, and moving aside takes an orphan along."""
    directory = produced.directory
    wal = directory / (DATABASE_FILE + "-wal")
    store = Store.open(directory)  # a live reader keeps the WAL file
    try:
        assert wal.exists()
        orphan = wal.read_bytes()
    finally:
        store.close()
    (directory / DATABASE_FILE).unlink()
    wal.write_bytes(orphan or b"\0" * 32)
    with pytest.raises(StoreError, match="without its database"):
        Store.create(directory, produced.chain.genesis_document)
    assert not (directory / DATABASE_FILE).exists()
    aside = store_module.move_store_aside(directory)
    assert aside is not None and (aside / wal.name).exists() and not wal.exists()
    Store.create(directory, produced.chain.genesis_document).close()
    assert Store.open(directory).head_height == 0


def test_create_refuses_an_existing_database(produced: Produced) -> None:
    before = dump(produced.directory)
    with pytest.raises(StoreError, match="exists already"):
        Store.create(produced.directory, produced.chain.genesis_document)
    assert dump(produced.directory) == before
    store = Store.open(produced.directory)
    try:
        assert store.load_state().state_root == produced.state.state_root
    finally:
        store.close()


def test_two_creations_at_once_make_one_store_and_refuse_the_other(tmp_path: Path) -> None:
    """Found by review: two processes starting on one empty directory each deleted the
    other's half-made file, and one renamed a half-made database into place, refused at
    every later start. Under the directory's lock one makes it, the other finds it."""
    chain = Chain()

    def create(directory: Path, start: threading.Barrier, outcomes: list[str]) -> None:
        start.wait()
        try:
            Store.create(directory, chain.genesis_document).close()
            outcomes.append("made")
        except StoreExists:
            outcomes.append("exists")

    for attempt in range(8):
        directory = tmp_path / str(attempt)
        start = threading.Barrier(2)
        outcomes: list[str] = []
        threads = [
            threading.Thread(target=create, args=(directory, start, outcomes)) for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(outcomes) == ["exists", "made"]
        store = Store.open(directory)
        try:
            assert store.head_height == 0 and store.load_state().height == 0
        finally:
            store.close()
        assert not list(directory.glob(f"{DATABASE_FILE}.*creating*"))


def test_indexes_that_cannot_be_made_refuse_the_start_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: a full disk while an older store's indexes were made escaped as a
    traceback."""
    store = Store.create(tmp_path, Chain().genesis_document)
    try:
        store.db.execute("DROP INDEX lots_owner_number")

        def full(self: Store) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(Store, "_ensure_indexes", full)
        with pytest.raises(StoreError, match="indexes cannot be brought") as refused:
            store.ensure_layout()
        assert "database or disk is full" in refused.value.message
        assert "the indexes are made at the next start" in refused.value.message
    finally:
        store.close()


def test_a_creation_cut_short_leaves_no_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node killed while it creates its store (its first start) must start next time: a
    half-made database (tables, no genesis) used to refuse to open for ever."""
    chain = Chain()

    def killed(genesis: object) -> None:
        raise KeyboardInterrupt  # as a SIGKILL would stop it: after the tables, before meta

    monkeypatch.setattr(store_module, "genesis_state", killed)
    with pytest.raises(KeyboardInterrupt):
        Store.create(tmp_path, chain.genesis_document)
    assert not (tmp_path / DATABASE_FILE).exists()
    monkeypatch.undo()
    store = Store.create(tmp_path, chain.genesis_document)  # the leftover is cleared
    try:
        assert store.load_state().height == 0
    finally:
        store.close()
    assert sorted(p.name for p in tmp_path.iterdir() if "creating" in p.name) == []


def test_open_refuses_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no ledger at"):
        Store.open(tmp_path / "nowhere")
    with pytest.raises(StoreError, match="no ledger at") as refused:
        Store.open(tmp_path)  # exists, but holds no database
    assert "holds one" not in str(refused.value)


def test_open_names_the_store_of_a_cluster_partys_directory(tmp_path: Path) -> None:
    """`tanlian cluster` keeps a party's store in `<party>/data` (found by review:
    `receipt --data <party>` said only "no ledger at <party>/ledger.sqlite")."""
    Store.create(tmp_path / "city" / "data", Chain().genesis_document).close()
    with pytest.raises(StoreError, match="no ledger at") as refused:
        Store.open(tmp_path / "city")
    assert str(refused.value).endswith(f"; {tmp_path / 'city' / 'data'} holds one")


def test_a_process_out_of_file_descriptors_is_told_so(produced: Produced) -> None:
    """Found by review: with every descriptor in use, SQLite's "unable to open database
    file" was answered with advice on permissions (and `store_unreadable`)."""
    script = f"""
import os, resource
from ledger.errors import StoreError
from ledger.store import Store
directory = __import__("pathlib").Path({str(produced.directory)!r})
Store.open(directory).close()  # everything imported while descriptors are free
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
for descriptor in held[-2:]:  # two free: the database opens, its WAL and index do not
    os.close(descriptor)
try:
    Store.open(directory).load_state()
except StoreError as error:
    print(error.code, error.message)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("store_unavailable cannot open"), result.stdout
    assert "nearly all of its 64 file descriptors open" in result.stdout


def test_open_refuses_a_garbage_file(tmp_path: Path) -> None:
    (tmp_path / DATABASE_FILE).write_bytes(os.urandom(8192))
    with pytest.raises(StoreError, match="not a usable Tanlian database"):
        Store.open(tmp_path)


def test_open_refuses_an_empty_sqlite_database(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / DATABASE_FILE).close()  # SQLite's empty database: 0 bytes
    assert (tmp_path / DATABASE_FILE).stat().st_size == 0
    # (`tanlian node` adds its --resync advice to "not a usable Tanlian database")
    with pytest.raises(StoreError, match=r"not a usable Tanlian database: it is empty \(0 b"):
        Store.open(tmp_path)
    # Refused and untouched: the attempt to open it had made it a 4 KiB WAL database.
    assert (tmp_path / DATABASE_FILE).stat().st_size == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == [DATABASE_FILE]


def test_open_refuses_a_database_with_tables_but_no_ledger(tmp_path: Path) -> None:
    connection = sqlite3.connect(tmp_path / DATABASE_FILE)
    connection.execute("CREATE TABLE other (x)")
    connection.commit()
    connection.close()
    with pytest.raises(StoreError, match="not a usable Tanlian database"):
        Store.open(tmp_path)


def test_open_refuses_an_altered_genesis_record(produced: Produced) -> None:
    connection = connect(produced.directory)
    try:
        connection.execute("UPDATE meta SET value = '{}' WHERE key = 'genesis'")
    finally:
        connection.close()
    with pytest.raises(StoreError, match="not a usable Tanlian database"):
        Store.open(produced.directory)


def test_database_uses_wal_and_full_synchronous(produced: Produced) -> None:
    store = Store.open(produced.directory)
    try:
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        store.close()
    connection = connect(produced.directory)  # WAL is a property of the file itself
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        connection.close()


def test_the_writer_never_creates_a_database(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no ledger"):
        store_module.serve_writes(tmp_path / DATABASE_FILE, io.BytesIO(), io.BytesIO())
    assert not (tmp_path / DATABASE_FILE).exists()


def test_a_store_from_an_earlier_version_gets_its_list_indexes(tmp_path: Path) -> None:
    chain = Chain()
    store = Store.create(tmp_path, chain.genesis_document)
    names = [
        "retirements_newest",
        "retirements_program_newest",
        "lots_owner_number",
        "state_changes_validators",
    ]
    for name in names:
        store.db.execute(f"DROP INDEX {name}")  # as a store made before they existed
    store.ensure_layout()
    store.ensure_layout()  # once is enough; again changes nothing
    present = {row[0] for row in store.db.execute("SELECT name FROM sqlite_master")}
    assert set(names) <= present
    plan = " ".join(
        row[3]
        for row in store.db.execute(
            "EXPLAIN QUERY PLAN SELECT retirement_id FROM retirements "
            "ORDER BY height DESC, retirement_id DESC LIMIT 10"
        )
    )
    assert "retirements_newest" in plan and "TEMP B-TREE" not in plan
    store.close()


# What each single-column index answered, and the covering index that answers it now.
SUPERSEDED_QUERIES = {
    "idx_lots_owner": (
        "CREATE INDEX idx_lots_owner ON lots (owner)",
        "SELECT batch_id, first_serial FROM lots WHERE owner = 'a'",
        "lots_owner_number",
    ),
    "lots_owner_supply": (
        "CREATE INDEX lots_owner_supply ON lots (owner, batch_id, first_serial, status, quantity)",
        f"SELECT batch_id, first_serial FROM lots WHERE owner = 'a' ORDER BY {LOT_ORDER} LIMIT 9",
        "lots_owner_number",
    ),
    "idx_retirements_beneficiary": (
        "CREATE INDEX idx_retirements_beneficiary ON retirements (beneficiary)",
        "SELECT 1 FROM retirements WHERE beneficiary = 'b' LIMIT 1",
        "retirements_beneficiary_newest",
    ),
    "idx_retirements_program_id": (
        "CREATE INDEX idx_retirements_program_id ON retirements (program_id)",
        "SELECT retirement_id FROM retirements WHERE program_id = 'p' "
        "ORDER BY height DESC, retirement_id DESC LIMIT 10",
        "retirements_program_newest",
    ),
    "idx_batches_methodology_id": (
        "CREATE INDEX idx_batches_methodology_id ON batches (methodology_id)",
        "SELECT batch_id FROM batches WHERE methodology_id = 'm'",
        "batches_methodology_newest",
    ),
    "idx_batches_certifier": (
        "CREATE INDEX idx_batches_certifier ON batches (certifier)",
        "SELECT batch_id FROM batches WHERE certifier = 'c'",
        "batches_certifier_newest",
    ),
}


@pytest.mark.parametrize(
    ("where", "index"),
    [
        ("", "batches_newest"),
        ("methodology_id = 'm' AND ", "batches_methodology_newest"),
        ("certifier = 'c' AND ", "batches_certifier_newest"),
    ],
)
def test_a_page_of_batches_reads_an_index_in_order(tmp_path: Path, where: str, index: str) -> None:
    """`api.reads.batches`' query, newest first by number: found by review sorting every
    batch on each page (~100 ms a page at 300,000 batches)."""
    store = Store.create(tmp_path, Chain().genesis_document)
    number = "CAST(substr(batch_id, 3) AS INTEGER)"
    query = (
        f"SELECT batch_id FROM batches WHERE {where}{number} < 99 ORDER BY {number} DESC LIMIT 21"
    )
    plan = " ".join(row[3] for row in store.db.execute(f"EXPLAIN QUERY PLAN {query}"))
    assert index in plan and "TEMP B-TREE" not in plan and "SCAN batches" not in plan, plan
    store.close()


@pytest.mark.parametrize(
    "where",
    [
        "owner = 'a'",
        "owner = 'a' AND status = 'circulating'",
        # a page of `api.reads.account_lots`: it seeks to the cursor's batch (found by
        # review walking the account's lots from the first, with the row value alone)
        f"owner = 'a' AND {BATCH_NUMBER} >= 3 AND ({LOT_ORDER}) > (3, 7)",
    ],
)
def test_an_accounts_lots_are_read_in_issuance_order_from_an_index(
    tmp_path: Path, where: str
) -> None:
    """`api.reads`' queries: batches by number (B-2 before B-10, found by review shown in
    text order), with no sort of the account's lots."""
    store = Store.create(tmp_path, Chain().genesis_document)
    query = f"SELECT batch_id, first_serial FROM lots WHERE {where} ORDER BY {LOT_ORDER} LIMIT 9"
    plan = " ".join(row[3] for row in store.db.execute(f"EXPLAIN QUERY PLAN {query}"))
    assert "lots_owner_number" in plan and "TEMP B-TREE" not in plan, plan
    if ">=" in where:
        assert "(owner=? AND <expr>>?)" in plan, plan  # a seek, not a walk from the first
    store.close()


def test_the_validator_sets_are_found_without_reading_the_whole_history(
    tmp_path: Path,
) -> None:
    """Found by review: every new read connection scanned the history table for the sets
    (0.3 s at 200,000 transactions). The genesis set needs no read at all, and a later set
    is found through a partial index that holds only the rows recording one."""
    chain = Chain()
    store = Store.create(tmp_path, chain.genesis_document)
    query = (
        "SELECT value FROM state_changes WHERE key IN ('validators/current', "
        "'validators/next') AND value IS NOT NULL"
    )
    plan = " ".join(row[3] for row in store.db.execute(f"EXPLAIN QUERY PLAN {query}"))
    assert "USING INDEX state_changes_validators" in plan, plan
    statements: list[str] = []
    store.db.conn.set_trace_callback(statements.append)
    genesis_set = compute_validators_hash(chain.genesis.validators)
    assert store._validator_set(genesis_set) == chain.genesis.validators
    assert not any("state_changes" in statement for statement in statements), statements
    store.close()


def test_a_new_store_has_no_index_another_one_covers(tmp_path: Path) -> None:
    store = Store.create(tmp_path, Chain().genesis_document)
    present = {row[0] for row in store.db.execute("SELECT name FROM sqlite_master")}
    assert present.isdisjoint(SUPERSEDED_QUERIES)
    for _, query, covering in SUPERSEDED_QUERIES.values():
        plan = " ".join(row[3] for row in store.db.execute(f"EXPLAIN QUERY PLAN {query}"))
        assert covering in plan and "SCAN" not in plan, (query, plan)
    store.close()


def test_a_store_from_an_earlier_version_loses_its_superseded_indexes(tmp_path: Path) -> None:
    chain = Chain()
    store = Store.create(tmp_path, chain.genesis_document)
    for statement, _, _ in SUPERSEDED_QUERIES.values():
        store.db.execute(statement)  # as a store made before 2026-12-05 has them
    store.ensure_layout()
    store.ensure_layout()  # once is enough; again changes nothing
    present = {row[0] for row in store.db.execute("SELECT name FROM sqlite_master")}
    assert present.isdisjoint(SUPERSEDED_QUERIES)
    assert "lots_owner_number" in present
    store.close()
    reopened = Store.open(tmp_path)  # and the store still opens, its head checked
    assert reopened.load_state().height == 0
    reopened.close()


def _lots(connection: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    rows = connection.execute("SELECT * FROM lots").fetchall()
    return {f"lot/{row['batch_id']}/{row['first_serial']}": dict(row) for row in rows}


def test_each_lot_is_stored_once_and_loads_back_whole(produced: Produced) -> None:
    entries = dict(produced.state.entries)
    connection = connect(produced.directory)
    try:
        in_state = connection.execute("SELECT key FROM state WHERE key LIKE 'lot/%'").fetchall()
        lots = _lots(connection)
    finally:
        connection.close()
    assert in_state == []
    assert lots == {key: value for key, value in entries.items() if key.startswith("lot/")}
    store = Store.open(produced.directory)
    try:
        assert_same_state(store.load_state(), produced.state)
    finally:
        store.close()


def test_a_store_holding_each_lot_twice_loads_and_moves_to_one_copy(produced: Produced) -> None:
    """A store made before the evening of 2026-12-05 kept each lot's value in `state` too,
    and its `lots` rows had no retirement_id: it loads as it is, and `ensure_layout` moves it
    over."""
    connection = connect(produced.directory)
    try:
        lots = _lots(connection)
        with connection:  # as that version wrote it
            connection.executemany(
                "INSERT INTO state (key, value) VALUES (?, ?)",
                [(key, canonical_unchecked(value).decode()) for key, value in lots.items()],
            )
            connection.execute("ALTER TABLE lots DROP COLUMN retirement_id")
            connection.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    finally:
        connection.close()
    store = Store.open(produced.directory)
    try:
        assert_same_state(store.load_state(), produced.state)  # read from `state`, as before
        store.ensure_layout()
        store.ensure_layout()  # once is enough; again changes nothing
        assert_same_state(store.load_state(), produced.state)
    finally:
        store.close()
    connection = connect(produced.directory)
    try:
        assert connection.execute("SELECT key FROM state WHERE key LIKE 'lot/%'").fetchall() == []
        assert _lots(connection) == lots
        assert _schema_version(connection) == str(SCHEMA_VERSION) == "2"
    finally:
        connection.close()
    reopened = Store.open(produced.directory)
    try:
        assert_same_state(reopened.load_state(), produced.state)
    finally:
        reopened.close()


def test_an_old_store_whose_lots_cannot_be_moved_is_refused_unchanged(
    produced: Produced,
) -> None:
    connection = connect(produced.directory)
    try:
        lots = _lots(connection)
        with connection:
            rows = [(key, canonical_unchecked(value).decode()) for key, value in lots.items()]
            rows[0] = (rows[0][0], rows[0][1][:-1])  # one value cut short: not JSON
            connection.executemany("INSERT INTO state (key, value) VALUES (?, ?)", rows)
            connection.execute("ALTER TABLE lots DROP COLUMN retirement_id")
        before = dump(produced.directory)
    finally:
        connection.close()
    store = Store.open(produced.directory)
    try:
        with pytest.raises(StoreError, match="refusing to start: the store's lots cannot be moved"):
            store.ensure_layout()
    finally:
        store.close()
    assert dump(produced.directory) == before


def test_a_store_of_this_layout_that_lost_a_column_is_not_taken_for_an_old_one(
    produced: Produced,
) -> None:
    """Found by review: with retirement_id dropped, it looked like a store of the old layout,
    and the move rebuilt its lots from `state`, which holds none: every lot row deleted."""
    connection = connect(produced.directory)
    try:
        with connection:
            connection.execute("ALTER TABLE lots DROP COLUMN retirement_id")
    finally:
        connection.close()
    before = dump(produced.directory)
    store = Store.open(produced.directory)
    try:
        with pytest.raises(StoreError, match="lots table lost its retirement_id column"):
            store.ensure_layout()
    finally:
        store.close()
    assert dump(produced.directory) == before


def _schema_version(connection: sqlite3.Connection) -> str:
    row = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return str(row[0])


def test_a_new_store_is_of_this_schema_version(produced: Produced) -> None:
    connection = connect(produced.directory)
    try:
        assert _schema_version(connection) == str(SCHEMA_VERSION)
    finally:
        connection.close()


def test_a_store_of_this_layout_labelled_version_1_is_labelled_again(produced: Produced) -> None:
    """The build that first held each lot once still wrote version 1: its stores keep their
    rows and take the number 2."""
    connection = connect(produced.directory)
    try:
        with connection:
            connection.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        lots = _lots(connection)
    finally:
        connection.close()
    store = Store.open(produced.directory)
    try:
        store.ensure_layout()
        assert_same_state(store.load_state(), produced.state)
    finally:
        store.close()
    connection = connect(produced.directory)
    try:
        assert _schema_version(connection) == "2"
        assert _lots(connection) == lots
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("version", "later", "reason"),
    [
        (str(SCHEMA_VERSION + 1), True, "schema version 3, written by a later version of"),
        ("12345678901234567890", True, "schema version 12345678901234567890, written by a"),
        ("2.0", False, "schema version '2.0' is not a number"),
        ("", False, "schema version '' is not a number"),
    ],
)
def test_a_store_of_a_later_or_unknown_schema_version_is_refused_unchanged(
    produced: Produced, version: str, later: bool, reason: str
) -> None:
    """Its layout is not one this build knows: read as this one's, its rows could be
    misread, or moved over and lost. A later version's store is not damaged: it is
    `store_unreadable`, which nothing sets aside or rebuilds (review found `--resync` set
    one aside, taking it for too damaged to say whose chain it was)."""
    connection = connect(produced.directory)
    try:
        with connection:
            connection.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
    finally:
        connection.close()
    before = dump(produced.directory)
    with pytest.raises(StoreError) as raised:
        Store.open(produced.directory)
    assert reason in raised.value.message
    assert isinstance(raised.value, StoreUnreadable) == later
    assert raised.value.message.startswith(
        "cannot open " if later else f"{produced.directory / DATABASE_FILE} is not a usable"
    )
    assert dump(produced.directory) == before
