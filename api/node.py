"""A running node: the store, the block producer and the loop that cuts blocks.

A node is the single validator of its chain (`SoloProducer`), one validator of a consortium
(`BftProducer`, which catches up by block sync from its peers' API when far behind), or a
follower (`consensus.follower.Follower`: no key; it syncs from the nodes it follows, and
`forwarder` hands its users' submissions to them).

The block loop builds blocks (`SoloProducer.prepare`); one write thread makes each durable
through the store's writer process while the loop builds the next, and only then does the
loop commit it (`finish`): what readers see, and every "committed" answer, follows
durability. Request threads submit to the pool and read through their own read-only
connections (SQLite WAL lets readers run beside the writer). Reads of the state use the
producer's latest committed immutable `State`, so a request sees one consistent height even
while the next block is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio

from api.admission import StreamTurns
from api.console import write_atomically
from api.follow import ApiSource, Forwarder
from api.intake import IntakeWorker
from consensus.follower import Follower
from consensus.messages import Decision
from consensus.node import BftProducer
from consensus.pool import Pool
from consensus.producer import (
    CommittedBlock,
    Outcome,
    PreparedBlock,
    SoloProducer,
    tune_garbage_collector,
)
from consensus.replica import Timeouts
from consensus.sync import BlockSync, ForkProof, parse_fork_proof
from consensus.transport import HttpTransport, Inbox
from consensus.verifier import SignatureWorker
from consensus.wal import WAL_FILE_NAME, SignedLog
from ledger.crypto import PrivateKey
from ledger.encoding import canonical, decode
from ledger.errors import LedgerError, StoreError
from ledger.limits import (
    CONSENSUS_MESSAGES_BATCH_MAX,
    EMPTY_BLOCK_INTERVAL_MS_DEFAULT,
    JSON_DEPTH_MAX,
    PEER_QUEUE_MESSAGES_MAX,
    PROPOSE_TIMEOUT_MS_EXTRA,
)
from ledger.state import State
from ledger.store import Store
from ledger.transactions import Envelope
from ledger.verification import compute_line_bytes_max

log = logging.getLogger("tanlian.node")

# Two certified blocks of one height that block sync met (`consensus.sync.ForkProof`), in the
# data directory: fork-proof-<height>.json.
FORK_PROOF_PREFIX: Final = "fork-proof-"
# A stop waits this long for the block loop; if it is then waiting on the store's writer, the
# writer is killed (`Node._abandon_write`) and the loop waited for as long again.
STOP_LOOP_SECONDS: Final = 10.0

T = TypeVar("T")

POLL_SECONDS: Final = 0.01  # how often the block loop looks at the clock and the pool
# A block the store could not write is dropped (its transactions stay pending) and built
# again after WRITE_RETRY_SECONDS; after WRITE_ATTEMPTS_MAX failures in a row the node stops
# (`Node.failure`): a store that keeps failing needs its operator, not a node that limps on.
WRITE_RETRY_SECONDS: Final = 0.2
WRITE_ATTEMPTS_MAX: Final = 3
COMMIT_WAIT_SECONDS_MAX: Final = 30.0  # the longest a submitter may wait for its commit
# Transactions pending and no block committed for this long: /healthz says the node is stalled.
STALLED_SECONDS: Final = 60.0
# No node a follower follows has served it for this long: /healthz says it is out of touch.
OUT_OF_TOUCH_SECONDS: Final = 60.0
COMMITTED_IDS_MIN: Final = 1 << 20  # transaction ids the filter holds before it grows
# Exports streamed at once (`api.admission.StreamTurns`): 2 x 32 file descriptors fit in
# api.serving's FILES_RESERVE beside the request threads' readers.
EXPORTS_AT_ONCE_MAX: Final = 32
EXPORTS_PER_CLIENT_MAX: Final = 4
# A follower's submissions forwarded and waiting for the nodes it follows (api.follow): each
# holds a request thread for up to the commit wait.
FORWARDS_AT_ONCE_MAX: Final = 32
FORWARDS_PER_CLIENT_MAX: Final = 4


class _CommittedIds:
    """A Bloom filter over every committed `tx_id`: its "no" is certain.

    A submission asks first whether each transaction is committed already; for a new one the
    answer would otherwise be a database lookup, and each lookup releases the GIL and, beside
    a busy block loop, waits up to the 5 ms switch interval to take it back: ~0.2 s for an
    array of 1,000. Seven hashes at 10 bits an id (~1 % false "maybe"s, which look up the
    database as before): 1.25 MB per million ids. Ids are SHA-256 hex, so their own digits
    are the hashes.
    """

    HASHES: Final = 7
    BITS_PER_ID: Final = 10

    def __init__(self, capacity: int, *, filled: bool = True) -> None:
        self.capacity = capacity
        self.count = 0
        self.filled = filled  # False: the committed ids are not in it yet, every id is "maybe"
        self._bits = (capacity * self.BITS_PER_ID).bit_length()  # a power of two, rounded up
        assert self._bits <= 32, "each position is one 32-bit word of the id"
        self._table = bytearray(1 << (self._bits - 3))

    def _positions(self, tx_id: str) -> list[int]:
        # Seven 32-bit words of the id, read in one conversion (this runs for every id of
        # every block, on the block loop).
        digits = int(tx_id[: 8 * self.HASHES], 16)
        mask = (1 << self._bits) - 1
        return [(digits >> (32 * i)) & mask for i in range(self.HASHES)]

    def add(self, tx_id: str) -> None:
        for position in self._positions(tx_id):
            self._table[position >> 3] |= 1 << (position & 7)
        self.count += 1

    def __contains__(self, tx_id: object) -> bool:
        if not self.filled or not isinstance(tx_id, str) or len(tx_id) < 8 * self.HASHES:
            return True  # not an id this filter can rule out
        try:
            positions = self._positions(tx_id)
        except ValueError:
            return True  # not hex
        return all(self._table[p >> 3] & (1 << (p & 7)) for p in positions)


class Node:
    """A node on a data directory: a validator (alone, or of a consortium) or a follower."""

    def __init__(
        self,
        data: Path,
        validator_key: PrivateKey | None,
        *,
        peers: Sequence[str] = (),
        follow: Sequence[str] = (),
        empty_block_ms: int = EMPTY_BLOCK_INTERVAL_MS_DEFAULT,
    ) -> None:
        """A single validator with no peers runs `SoloProducer`; with peers, or a genesis
        naming several validators, the node runs BFT consensus (`consensus.node`), adding an
        empty block at most every `empty_block_ms` while idle; with no key, it follows the
        nodes at `follow` (`consensus.follower`)."""
        assert (validator_key is None) == bool(follow), "a follower has no key, and follows"
        self.data = data
        self._writer = Store.open(data)
        self._writer.ensure_layout()  # a store from an earlier version gets this layout
        self._writer.start_writer()  # a process: see Store.start_writer for why
        self.genesis = self._writer.genesis
        self._signatures = SignatureWorker()  # a process: see consensus.verifier for why
        self.intake = IntakeWorker()  # a process for large submissions: see api.intake
        self._write = ThreadPoolExecutor(1, thread_name_prefix="block-write")
        pool = Pool(check_signatures=self._signatures.check)
        self._solo: SoloProducer | None = None
        self._transport: HttpTransport | None = None
        self._log: SignedLog | None = None
        self.sync: BlockSync | None = None
        self.forwarder: Forwarder | None = None
        self.producer: SoloProducer | BftProducer | Follower
        if validator_key is None:
            self.sync = self._block_sync(follow)
            self.forwarder = Forwarder(
                follow, distrusted=self.sync.distrusted, refused=self.sync.refused_now
            )
            self.producer = Follower(self._writer, self.sync)
        elif not peers and len(self.genesis.validators) == 1:
            self.producer = self._solo = SoloProducer(self._writer, validator_key, pool=pool)
        else:
            self._log = SignedLog(
                data / WAL_FILE_NAME,
                public_key=validator_key.public_key_hex,
                transaction_bytes_max=self.genesis.params.transaction_bytes_max,
            )
            params = self.genesis.params
            # A block travels as its transactions' lines: a peer's queue holds two of them.
            self._transport = HttpTransport(
                peers,
                queue_max=max(
                    PEER_QUEUE_MESSAGES_MAX,
                    2 * params.block_transactions_max + CONSENSUS_MESSAGES_BATCH_MAX,
                ),
            )
            self.sync = self._block_sync(peers) if peers else None
            self.producer = BftProducer(
                self._writer,
                validator_key,
                log=self._log,
                transport=self._transport,
                pool=pool,
                sync=self.sync,
                write_executor=self._write,  # decided blocks are written beside the next
                timeouts=Timeouts(
                    propose_extra_ms=PROPOSE_TIMEOUT_MS_EXTRA, empty_block_ms=empty_block_ms
                ),
            )
            if self.sync is not None and self.sync.counters.fork is not None:
                self.producer.hold_evidence(self.sync.counters.fork.evidence)  # a kept proof
        # Filled from the store once the node starts, on a thread of its own (2.2 s a million
        # ids, which had been added to every start): until then every id is "maybe"
        # committed, a lookup in the store.
        self._committed_ids = _CommittedIds(1, filled=False)
        self._committed_ids_lock = threading.Lock()
        # While a larger filter is filled beside the block loop: the ids committed meanwhile.
        self._committed_while_growing: list[str] | None = None
        self._readers = threading.local()
        self._opened: dict[threading.Thread, Store] = {}  # each reader, by its thread
        self._opened_lock = threading.Lock()
        # A stream's turn (`GET /v1/export`), taken without waiting and given back when its
        # answer ends, however it ends.
        self.exports = StreamTurns(
            total_max=EXPORTS_AT_ONCE_MAX, per_client_max=EXPORTS_PER_CLIENT_MAX
        )
        # A follower's forwarded submission's turn, held while the nodes it follows answer
        # (out of the parsing queues, which it had held for the whole commit wait: 16 such
        # requests of one client kept everyone's submissions waiting, found by review).
        self.forwards = StreamTurns(
            total_max=FORWARDS_AT_ONCE_MAX,
            per_client_max=FORWARDS_PER_CLIENT_MAX,
            what="forwarded submissions",
            doing="waiting for the nodes this follower follows",
        )
        self._committed = threading.Condition()
        # Event loops' futures waiting for the next block (`wait_for_commit_async`)
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._waiters_lock = threading.Lock()
        self._stopping = threading.Event()
        self._loop: threading.Thread | None = None
        self.blocks_produced = 0
        self.last_commit_monotonic = time.monotonic()  # or the node's start
        self.on_block: Callable[[CommittedBlock], None] | None = None
        # Why the block loop stopped for good (the store kept failing), and whom to tell.
        self.failure: str | None = None
        self.failure_code = "store_unavailable"  # the code of `failure`, when there is one
        self.on_failure: Callable[[str], None] | None = None
        self._write_failures = 0
        # Where POST /v1/consensus/messages hands peers' messages; None: no consensus here.
        self.consensus_inbox: Inbox | None = (
            self.producer.on_batch if isinstance(self.producer, BftProducer) else None
        )

    def _block_sync(self, urls: Sequence[str]) -> BlockSync:
        sync = BlockSync(
            [ApiSource(url) for url in urls],
            genesis=self.genesis,
            verify_signatures=self._signatures.check,
            local=self._decision_at,
            local_hash=self._block_hash_at,
            on_fork=self._write_fork_proof,
        )
        kept = self._kept_fork_proof()
        if kept is not None:  # the alarm outlives a restart, as the proof does
            sync.counters.fork, sync.counters.forks = kept, 1
        return sync

    def _kept_fork_proofs(self) -> list[Path]:
        return sorted(self.data.glob(f"{FORK_PROOF_PREFIX}*.json"))

    def _kept_fork_proof(self) -> ForkProof | None:
        """The fork proof this data directory keeps, if any (the first one written)."""
        for path in self._kept_fork_proofs():
            try:
                # Two of the chain's longest export lines, and their evidence besides.
                bound = 2 * compute_line_bytes_max(self.genesis.params) + (1 << 20)
                with path.open("rb") as handle:
                    data = handle.read(bound + 1)
                if len(data) > bound:
                    raise LedgerError(f"over {bound} bytes")
                # Its decisions sit one level below an export line's.
                value = decode(data.rstrip(b"\n"), max_depth=JSON_DEPTH_MAX + 1)
                return parse_fork_proof(
                    value, transaction_bytes_max=self.genesis.params.transaction_bytes_max
                )
            except (OSError, LedgerError) as error:
                log.warning("%s is not a fork proof this node can read: %s", path, error)
        return None

    def _decision_at(self, height: int) -> Decision:
        store = self.reader()
        return Decision(block=store.read_block(height), certificate=store.read_certificate(height))

    def _block_hash_at(self, height: int) -> str:
        return self.reader().read_header(height).block_hash()

    def fork_proof_path(self, height: int) -> Path:
        return self.data / f"{FORK_PROOF_PREFIX}{height}.json"

    def _write_fork_proof(self, proof: ForkProof) -> None:
        """Keep a fork's proof where the operator finds it: the first one only. A forked
        source refused again is asked again every 30 s at most, at this node's new head
        each time, and each proof had been a new file of two blocks (found by review). A
        validator also holds its duplicate precommits as evidence for its next block."""
        if isinstance(self.producer, BftProducer):
            self.producer.hold_evidence(proof.evidence)
        if self._kept_fork_proofs():
            return
        path = self.fork_proof_path(proof.height)
        try:
            write_atomically(path, canonical(proof.to_json()) + b"\n")
        except OSError as error:
            log.error("the fork's proof could not be written to %s: %s", path, error)
            return
        log.error("the fork's proof is in %s", path)

    @property
    def state(self) -> State:
        return self.producer.state

    def reader(self) -> Store:
        """This thread's read connection to the store. A new one first closes those of
        threads that have ended: request threads come and go (anyio's end after 10 s idle),
        and each had kept its connection, two file descriptors and up to its page cache
        (8 MiB) until the node stopped; an idle consortium polled by a monitor grew ~10 MiB
        a minute a validator (found by review). So readers are as many as live threads."""
        store: Store | None = getattr(self._readers, "store", None)
        if store is None:
            with self._opened_lock:
                for thread in [t for t in self._opened if not t.is_alive()]:
                    self._opened.pop(thread).close()
            store = Store.open(self.data)
            self._readers.store = store
            with self._opened_lock:
                self._opened[threading.current_thread()] = store
        return store

    def readers_open(self) -> int:
        """Read connections open now (tests and metrics)."""
        with self._opened_lock:
            return len(self._opened)

    def start(self) -> None:
        tune_garbage_collector()
        with self._committed_ids_lock:
            self._fill_committed_ids_beside()
        self._loop = threading.Thread(target=self._run, name="block-loop", daemon=True)
        self._loop.start()

    def stop(self) -> None:
        self._stopping.set()
        if self.sync is not None:
            self.sync.close()  # an attempt under way ends at its next line
        if self._loop is not None:
            self._loop.join(timeout=STOP_LOOP_SECONDS)
        if self.sync is not None:
            self.sync.close_sources()
        if self.forwarder is not None:
            self.forwarder.close()
        # The writes under way (a validator's go on beside its block loop, a single
        # validator's loop waits on its own), for STOP_LOOP_SECONDS; then a writer that never
        # answered is killed, and they are waited for as long again.
        # A follower's (and a validator's catching up by block sync) are its block loop's own.
        written = _ended_within(self._write.shutdown, STOP_LOOP_SECONDS)
        looping = self._loop is not None and self._loop.is_alive()
        if (not written or looping) and self._writer.writing():
            self._abandon_write()
            if not _ended_within(self._write.shutdown, STOP_LOOP_SECONDS):
                self._writer.kill_writer()  # a write begun again meanwhile: not waited for
        if self._loop is not None and self._loop.is_alive():
            self._loop.join(timeout=STOP_LOOP_SECONDS)
        if self._transport is not None:
            self._transport.close()
        if self._log is not None:
            self._log.close()
        self._signatures.close()
        self.intake.close()
        with self._opened_lock:
            for store in self._opened.values():
                store.close()
            self._opened.clear()
        self._writer.close()

    def _abandon_write(self) -> None:
        """The stop waited STOP_LOOP_SECONDS for a block the store's writer never answered
        (a hung disk, a stopped process): kill the writer, and say so as the node's failure.
        Found by review: the stop hung for good (a single validator's, and, found by later
        reviews, a validator's, whose writes go on beside its block loop, and a follower's,
        whose loop writes), and a writer killed from outside then made the node exit with
        a false `internal_error`."""
        reason = (
            f"the store's writer did not answer within {STOP_LOOP_SECONDS:g} s of the stop and"
            " was killed: the block it held is stored or not, which the next start reads back"
        )
        log.error("stopping: %s", reason)
        self._writer.kill_writer()
        if self._loop is not None:
            self._loop.join(timeout=STOP_LOOP_SECONDS)
        self.failure, self.failure_code = reason, "store_unavailable"

    def _run(self) -> None:
        """The block loop's thread. Whatever ends it unforeseen stops the node (`_fail`), so
        that a node whose loop has died never looks alive and takes transactions it will
        never decide."""
        try:
            self._produce()
        except Exception as error:
            log.exception("the block loop failed")
            if self._solo is None:
                assert not isinstance(self.producer, SoloProducer)
                self._report_settled(self.producer)
            self._fail(
                f"the block loop failed: {type(error).__name__}: {error}", code="internal_error"
            )

    def _produce(self) -> None:
        """Cut blocks; block N+1 is built while block N is written (`SoloProducer`)."""
        if self._solo is None:
            assert not isinstance(self.producer, SoloProducer)
            self._run_consensus(self.producer)
            return
        solo = self._solo
        writing: tuple[PreparedBlock, Future[None]] | None = None
        try:
            while not self._stopping.is_set() and self.failure is None:
                if writing is not None and writing[1].done():
                    written, writing = writing, None
                    if not self._finish(*written):
                        continue
                now_ms = int(time.time() * 1000)
                if solo.due(now_ms):
                    prepared = solo.prepare(now_ms)
                    if writing is not None:  # one block written at a time, in order
                        written, writing = writing, None
                        if not self._finish(*written):
                            continue  # `prepared` was built on it: dropped with it
                    if prepared is not None:
                        writing = (prepared, self._write.submit(solo.write, prepared))
                        continue
                    self._wake()  # rejections only: their submitters hear it now
                self._stopping.wait(POLL_SECONDS)
        finally:
            if writing is not None:
                self._finish(*writing)

    def _run_consensus(self, producer: BftProducer | Follower) -> None:
        """Drive the BFT producer (peers' messages, due timers, block sync) or the follower
        (block sync), every POLL_SECONDS at most; each decided or synced block is committed as
        `_finish` commits a solo one.

        A decided block the store cannot write stops the node (`_fail`): unlike a solo
        block it cannot be built again, the consortium has decided it and the replica has
        gone on. Nothing of it or after it was reported committed, and every block made
        durable before it is (`_report_settled`); once restarted on a healthy disk the node
        fetches what it missed from its peers (block sync). So does a signed-message log that
        cannot be written: the message was not sent (it is sent only once durable), and a torn
        last line is dropped when the log is read at the restart."""
        while not self._stopping.is_set():
            now_ms = int(time.time() * 1000)
            try:
                # The stop is looked for between calls too: a producer that stayed due with
                # nothing to return would keep this loop from ever seeing it.
                while not self._stopping.is_set() and producer.due(now_ms):
                    rejections = producer.rejections
                    result = producer.produce(now_ms)
                    if result is not None:
                        self._committed_block(result)
                    elif producer.rejections != rejections:
                        # Rejections with no block (an idle validator's, of transactions
                        # that fail on its state): their waiters hear it now, not at their
                        # timeout (found by review: 25 s after the rejection).
                        self._wake()
                    if result is None and not producer.due(now_ms):
                        break
            except StoreError as error:
                self._report_settled(producer)
                height = self.state.height + 1
                self._fail(f"the store failed to write decided block {height}: {error.message}")
                return
            except OSError as error:  # the signed-message log: what is signed must be durable
                self._report_settled(producer)
                self._fail(f"the signed-message log could not be written: {error}")
                return
            except LedgerError as error:  # this node cannot take part (not_a_validator)
                self._report_settled(producer)
                self._fail(error.message, code=error.code)
                return
            self._stopping.wait(POLL_SECONDS)

    def _report_settled(self, producer: BftProducer | Follower) -> None:
        """Report the blocks the failing call made durable before it failed: their
        transactions are answered committed, so whoever follows `on_block` must see them."""
        for result in producer.take_settled():
            self._committed_block(result)

    def _finish(self, prepared: PreparedBlock, written: Future[None]) -> bool:
        """Commit a block once its write returned; False if the store refused it."""
        assert self._solo is not None
        try:
            written.result()
        except StoreError as error:
            self._solo.abandon()  # nothing of it was stored; its transactions wait
            self._write_failures += 1
            height = prepared.block.height
            if self._write_failures >= WRITE_ATTEMPTS_MAX:
                self._fail(f"the store failed to write block {height} "
                           f"{self._write_failures} times: {error.message}")  # fmt: skip
            else:
                log.warning("block %d was not stored (%s): built again", height, error.message)
                self._stopping.wait(WRITE_RETRY_SECONDS)
            return False
        except BaseException:
            self._solo.abandon()
            raise
        self._write_failures = 0
        self._committed_block(self._solo.finish(prepared))
        return True

    def _fail(self, reason: str, *, code: str = "store_unavailable") -> None:
        """Stop producing blocks for good; nothing more is committed by this process."""
        self.failure, self.failure_code = reason, code
        log.error("stopping: %s", reason)
        self._wake()
        if self.on_failure is not None:
            self.on_failure(reason)

    def _committed_block(self, result: CommittedBlock) -> None:
        self._note_committed([envelope.tx_id for envelope in result.block.transactions])
        self.blocks_produced += 1
        self.last_commit_monotonic = time.monotonic()
        self._wake()
        if self.on_block is not None:
            self.on_block(result)

    def _wake(self) -> None:
        # Wake waiters whatever happened: a block may be empty of what they wait for but
        # their transactions rejected, which they must hear now, not at timeout.
        with self._committed:
            self._committed.notify_all()
        with self._waiters_lock:
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # its loop has closed: nobody waits
                loop.call_soon_threadsafe(_wake_future, future)

    def submit(
        self,
        envelopes: Sequence[Envelope],
        signature_checks: Sequence[LedgerError | None] | None = None,
    ) -> list[Outcome]:
        """Admit envelopes to the pool; `signature_checks`, where given, are their signatures'
        checks made already (by an intake worker), which are then not made again."""
        return self.producer.submit(envelopes, signature_checks)

    def _load_committed_ids(self, store: Store, at_least: int) -> _CommittedIds:
        """A filter over `store`'s committed ids, with room to spare (`_note_committed`
        replaces it with one twice as large when it fills)."""
        size = self.producer.state.log.size
        committed = _CommittedIds(max(COMMITTED_IDS_MIN, 2 * at_least, 2 * size))
        for tx_id in store.transaction_ids():
            committed.add(tx_id)
        return committed

    def out_of_touch(self) -> dict[str, Any] | None:
        """A follower none of whose nodes has served it for OUT_OF_TOUCH_SECONDS (since its
        start, if none ever did): what /healthz reports beside liveness, as `stalled` is
        (found by review: a follower of nodes that were down, or of no Tanlian node at all,
        said "ok" and nothing else while it could not know the chain). Its reads stay those
        of its own verified store, however old."""
        if self.forwarder is None or self.sync is None:
            return None
        silent = self.sync.silent_ms() / 1000
        if silent < OUT_OF_TOUCH_SECONDS:
            return None
        last = self.sync.counters.last_refusal
        return {
            "reason": f"no node it follows has served it for {silent:.0f} s"
            + ("" if last is None else f"; last refused: {last}"),
            "code": "out_of_touch",
        }

    def stalled(self) -> dict[str, Any] | None:
        """Transactions pending and no block committed for STALLED_SECONDS (a consortium
        without 2/3 of its power, a store that does not write), or the block loop stopped
        for good: what /healthz reports beside liveness (found by review: it said "ok" and
        nothing else while nothing could commit)."""
        if self.failure is not None:
            return {"reason": self.failure, "code": self.failure_code}
        pending = self.producer.pending_count()
        since = time.monotonic() - self.last_commit_monotonic
        if pending and since >= STALLED_SECONDS:
            return {
                "reason": f"{pending} transactions pending and no block committed for"
                f" {since:.0f} s",
                "code": "stalled",
            }
        return None

    def _note_committed(self, tx_ids: list[str]) -> None:
        """Add a block's ids to the filter. Once it holds more than it was sized for (or
        was never filled: its filling failed), a filter twice as large is filled from the
        store on a thread of its own, which reads every committed id (2.2 s a million on
        this machine): on the block loop that had stopped the chain, or this validator's
        part in it, for as long, at each doubling. Meanwhile the full filter goes on taking
        ids: overfull, it answers "maybe" more often (a lookup in the store), never a wrong
        "no". The new one takes the ids committed since it began and replaces it."""
        with self._committed_ids_lock:
            for tx_id in tx_ids:
                self._committed_ids.add(tx_id)
            if self._committed_while_growing is not None:
                self._committed_while_growing += tx_ids
            elif (
                not self._committed_ids.filled
                or self._committed_ids.count > self._committed_ids.capacity
            ):
                self._fill_committed_ids_beside()

    def _fill_committed_ids_beside(self) -> None:
        """Start filling a new filter (the caller holds `_committed_ids_lock`)."""
        self._committed_while_growing = []
        capacity = self._committed_ids.capacity if self._committed_ids.filled else 0
        threading.Thread(
            target=self._grow_committed_ids, args=(capacity,), name="committed-ids", daemon=True
        ).start()

    def _grow_committed_ids(self, capacity: int) -> None:
        grown: _CommittedIds | None = None
        try:
            store = Store.open(self.data)
            try:
                grown = self._load_committed_ids(store, capacity)
            finally:
                store.close()
        except (LedgerError, sqlite3.Error) as error:  # the next block tries again
            log.warning("the committed-id filter could not grow: %s", error)
        finally:  # whatever happened, the ids committed meanwhile are no longer kept aside
            with self._committed_ids_lock:
                if grown is not None:
                    for tx_id in self._committed_while_growing or ():
                        grown.add(tx_id)
                    self._committed_ids = grown
                self._committed_while_growing = None

    def outcome(self, tx_id: str) -> Outcome | None:
        """What became of a transaction: pending in the pool, remembered by the producer, or
        found committed. The pool comes first: an id names the transaction alone, so a copy
        with a broken signature, refused after the transaction was admitted, must not make it
        look rejected while it waits for its block."""
        if tx_id in self.producer.pool:
            return Outcome(tx_id=tx_id, status="pending")
        remembered = self.producer.outcomes.get(tx_id)
        if remembered is not None:
            return remembered
        if tx_id not in self._committed_ids:
            return None  # certain: every committed id is in the filter
        try:
            height, index, _ = self.reader().transaction_position(tx_id)
        except LedgerError as error:
            if error.code == "not_found":
                return None
            raise
        return Outcome(tx_id=tx_id, status="committed", height=height, log_index=index)

    def wait_for_commit(self, tx_ids: Sequence[str], timeout: float) -> list[Outcome | None]:
        """Each transaction's outcome once none is pending any more, or when `timeout` ends."""
        deadline = time.monotonic() + min(timeout, COMMIT_WAIT_SECONDS_MAX)
        with self._committed:
            while True:
                outcomes = [self.outcome(tx_id) for tx_id in tx_ids]
                pending = any(o is None or o.status == "pending" for o in outcomes)
                remaining = deadline - time.monotonic()
                if not pending or remaining <= 0 or self.failure is not None:
                    return outcomes
                self._committed.wait(remaining)

    async def wait_for_commit_async(
        self, tx_ids: Sequence[str], timeout: float
    ) -> list[Outcome | None]:
        """`wait_for_commit` for an event loop: no thread is held while it waits, so clients
        waiting for their commits cannot take every request thread."""

        async def look() -> tuple[bool, list[Outcome | None]]:
            outcomes = self._outcomes_in_memory(tx_ids)
            if outcomes is None:  # one must be read from the store: in a thread, briefly
                outcomes = await anyio.to_thread.run_sync(self._outcomes, tx_ids)
            return not any(o is None or o.status == "pending" for o in outcomes), outcomes

        return await self._look_until_async(look, min(timeout, COMMIT_WAIT_SECONDS_MAX))

    async def _look_until_async(
        self, look: Callable[[], Awaitable[tuple[bool, T]]], timeout: float
    ) -> T:
        """What `look` finds once it says done, the block loop has stopped, or `timeout`
        ends; it looks again after each committed block, holding no thread meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            woken: asyncio.Future[None] = loop.create_future()
            with self._waiters_lock:  # before looking: a block committed meanwhile wakes it
                self._waiters.append((loop, woken))
            try:
                done, found = await look()
                remaining = deadline - loop.time()
                if done or remaining <= 0 or self.failure is not None:
                    return found
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken, remaining)
            finally:
                with self._waiters_lock, contextlib.suppress(ValueError):
                    self._waiters.remove((loop, woken))

    def wait_for_height(self, height: int, timeout: float) -> bool:
        """Whether the node's state reached `height` within `timeout` seconds (not once the
        block loop has stopped for good)."""
        deadline = time.monotonic() + timeout
        with self._committed:
            while self.state.height < height and self.failure is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._committed.wait(remaining)
        return self.state.height >= height

    async def wait_for_height_async(self, height: int, timeout: float) -> bool:
        """`wait_for_height` for an event loop, holding no thread."""

        async def look() -> tuple[bool, bool]:
            reached = self.state.height >= height
            return reached, reached

        return await self._look_until_async(look, timeout)

    def _outcomes(self, tx_ids: Sequence[str]) -> list[Outcome | None]:
        return [self.outcome(tx_id) for tx_id in tx_ids]

    def _outcomes_in_memory(self, tx_ids: Sequence[str]) -> list[Outcome | None] | None:
        """`outcome` of each, when none needs the store (a committed transaction the producer
        no longer remembers); None otherwise. Reads only what `outcome` reads first."""
        outcomes: list[Outcome | None] = []
        for tx_id in tx_ids:
            if tx_id in self.producer.pool:
                outcomes.append(Outcome(tx_id=tx_id, status="pending"))
            elif (remembered := self.producer.outcomes.get(tx_id)) is not None:
                outcomes.append(remembered)
            elif tx_id not in self._committed_ids:
                outcomes.append(None)
            else:
                return None
        return outcomes


def _ended_within(step: Callable[[], object], seconds: float) -> bool:
    """Run `step` on a thread of its own; whether it ended within `seconds` (if not, it goes
    on, unwaited for)."""
    thread = threading.Thread(target=step, name="stopping", daemon=True)
    thread.start()
    thread.join(timeout=seconds)
    return not thread.is_alive()


def _wake_future(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
