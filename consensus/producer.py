"""Block producers: what turns pending transactions into certified blocks.

`BlockProducer` is the interface the node drives; `SoloProducer` is the single-validator
producer (n = 1, f = 0). It signs a 1-of-1 commit certificate in exactly the SPEC §5.3 format
the BFT engine will produce, so nothing downstream changes when consensus arrives.
"""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol

from consensus.pool import Pool
from ledger.blocks import Block, Certificate, sign_certificate, verify_certificate
from ledger.crypto import PrivateKey
from ledger.errors import LedgerError
from ledger.limits import OUTCOMES_REMEMBERED_MAX
from ledger.proposer import first_turn
from ledger.state import State
from ledger.state_transition import build_block, check_authorization
from ledger.store import Store
from ledger.transactions import Envelope


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What became of a transaction: pending, committed (height, log index) or rejected."""

    tx_id: str
    status: str
    height: int | None = None
    log_index: int | None = None
    code: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CommittedBlock:
    block: Block
    certificate: Certificate
    outcomes: tuple[Outcome, ...]


def committed_outcomes(block: Block) -> tuple[Outcome, ...]:
    """Each transaction of a committed block, with its height and log index."""
    first = block.header.log_size - len(block.transactions)
    return tuple(
        Outcome(tx_id=e.tx_id, status="committed", height=block.height, log_index=first + i)
        for i, e in enumerate(block.transactions)
    )


def remember(outcomes: OrderedDict[str, Outcome], outcome: Outcome) -> None:
    """Keep `outcome`, forgetting the oldest beyond OUTCOMES_REMEMBERED_MAX."""
    outcomes[outcome.tx_id] = outcome
    outcomes.move_to_end(outcome.tx_id)
    while len(outcomes) > OUTCOMES_REMEMBERED_MAX:
        outcomes.popitem(last=False)


def settle_pool(
    pool: Pool,
    outcomes: OrderedDict[str, Outcome],
    committed: Sequence[Outcome],
    block: Block,
    committed_nonce: Callable[[str], int],
    *,
    drop_stale: bool = True,
) -> None:
    """After `block` is committed (the caller holds its lock): its transactions leave the
    pool with their outcomes, and, with `drop_stale`, any left holding a nonce now used, or
    waiting too long behind a missing one (`Pool.drop_stale`), is rejected."""
    pool.remove(block.transactions)
    for outcome in committed:
        remember(outcomes, outcome)
    if drop_stale:
        reject_stale(pool, outcomes, committed_nonce)


def refusal(
    outcomes: OrderedDict[str, Outcome],
    envelope: Envelope,
    error: LedgerError,
    *,
    authentic: bool,
) -> Outcome:
    """The answer to a submission the pool refused (the caller holds the producer's lock).

    A transaction answered committed stays so: its block was committed after the route
    looked, and the pool then found its nonce used. The refusal is remembered under the
    transaction's id only for an `authentic` copy: an id names the transaction alone, and a
    copy anyone can make (unsigned, or signed by a key not the signer's) must neither replace
    what became of the transaction nor, a thousand at a time, push other outcomes out of
    memory (found by review: a copy with no signatures turned a genuine rejection into
    `insufficient_signatures`, and made ids never submitted answer "rejected")."""
    known = outcomes.get(envelope.tx_id)
    if known is not None and known.status == "committed":
        return known
    outcome = Outcome(
        tx_id=envelope.tx_id, status="rejected", code=error.code, message=error.message
    )
    if authentic:
        remember(outcomes, outcome)
    return outcome


def is_authentic(check: LedgerError | None, account: Any, envelope: Envelope) -> bool:
    """The envelope's signatures verified (`check` is None) and its listed keys are its
    signer's and reach the threshold at `account` (its `account/` record, or None)."""
    if check is not None:
        return False
    try:
        check_authorization(account, envelope)
    except LedgerError:
        return False
    return True


def reject_stale(
    pool: Pool, outcomes: OrderedDict[str, Outcome], committed_nonce: Callable[[str], int]
) -> None:
    """`Pool.drop_stale`, each transaction it drops remembered rejected `bad_nonce`."""
    for stale, why in pool.drop_stale(committed_nonce):
        remember(
            outcomes,
            Outcome(tx_id=stale.tx_id, status="rejected", code="bad_nonce", message=why),
        )


class BlockProducer(Protocol):
    @property
    def state(self) -> State: ...

    def submit(
        self,
        envelopes: Sequence[Envelope],
        signature_checks: Sequence[LedgerError | None] | None = None,
    ) -> list[Outcome]: ...

    def produce(self, now_ms: int) -> CommittedBlock | None: ...

    def pending_count(self) -> int: ...

    def due(self, now_ms: int) -> bool: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class PreparedBlock:
    """A block built and certified on the producer's tip, not yet written."""

    block: Block
    certificate: Certificate
    state: State
    rejected: tuple[Outcome, ...]


class SoloProducer:
    """One validator, one store: cut a block from the pool, certify it, write it.

    `produce` does it all at once. A node pipelines the same three steps: `prepare` builds
    block N+1 on the tip (block N, possibly still being written) while another thread runs
    `write` for block N; `finish` then makes N the committed state. What readers see (`state`,
    committed outcomes) changes only in `finish`, after `write` returned: a block is never
    reported committed before it is durable.

    `submit` may be called from any thread while one thread prepares and finishes blocks:
    signatures are checked and blocks are built and written outside the lock, which guards
    only the pool, the outcomes and the switch to a new state.
    """

    def __init__(
        self,
        store: Store,
        validator_key: PrivateKey,
        *,
        pool: Pool | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.store = store
        self.key = validator_key
        self._state = store.load_state()
        validators = self._state.current_validators()
        if [v.public_key for v in validators] != [validator_key.public_key_hex]:
            detail = (
                f"the chain's only validator is {validators[0].public_key[:16]}…, and this key"
                f" is {validator_key.public_key_hex[:16]}…: check --validator-key"
                if len(validators) == 1
                else "a consortium needs BFT consensus (give each other validator as --peer)"
            )
            raise LedgerError(
                f"this key is not the chain's only validator: {detail}", code="not_a_validator"
            )
        self.pool = pool if pool is not None else Pool(executor=executor)
        self.pool.chain_id = self._state.chain_id
        self._last_certificate = store.last_certificate()
        # The tip: the last block prepared, which `finish` has not made committed yet.
        self._tip = self._state
        self._tip_certificate = self._last_certificate
        self._unfinished: list[PreparedBlock] = []
        self._last_full = False  # the last block prepared held block_transactions_max
        self.outcomes: OrderedDict[str, Outcome] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def state(self) -> State:
        """The committed state: what the store holds."""
        return self._state

    def pending_count(self) -> int:
        """Transactions waiting for a block (not those in a block being written)."""
        return len(self.pool) - sum(len(p.block.transactions) for p in self._unfinished)

    def due(self, now_ms: int) -> bool:
        """Time to cut a block: `block_transactions_max` pending already; or something pending
        and either `block_interval_ms` since the last block, or the last block full and
        written. A full block means more arrives than a block holds: waiting out the interval
        then would only leave the node idle while transactions queue."""
        pending = self.pending_count()
        if pending == self.pool.gapped_count():
            # Nothing to build from (found by review: a pool of transactions behind gaps was
            # scanned every poll, 100 times a second): due only once one of them may leave.
            return pending > 0 and self.pool.gap_expired()
        params = self._tip.params
        if pending >= params.block_transactions_max:
            return True
        if not self._unfinished and self._last_full:
            return True
        # A clock behind the last block's time (stepped back, or the data directory moved to
        # a machine whose clock is behind) cannot measure the interval: cut the block now,
        # stamped just after the last (`build_block`), where it had waited for the clock to
        # catch up, answering pending meanwhile (found by review).
        elapsed = now_ms - self._tip.head_time
        return elapsed >= params.block_interval_ms or elapsed < 0

    def _tip_nonce(self, signer: str) -> int:
        account = self._tip_account(signer)
        return 0 if account is None else int(account["nonce"])

    def _tip_account(self, signer: str) -> Any:
        return self._tip.get(f"account/{signer}")

    def _committed_nonce(self, signer: str) -> int:
        account = self._state.get(f"account/{signer}")
        return 0 if account is None else int(account["nonce"])

    def _remember(self, outcome: Outcome) -> None:
        remember(self.outcomes, outcome)

    def submit(
        self,
        envelopes: Sequence[Envelope],
        signature_checks: Sequence[LedgerError | None] | None = None,
    ) -> list[Outcome]:
        """Admit envelopes to the pool; each answer is pending or rejected with its code.
        `signature_checks`, where given, are the envelopes' checks made already."""
        limit = self._state.params.transaction_bytes_max
        if signature_checks is None:
            signature_checks = self.pool.check_signatures(envelopes)
        checks: list[LedgerError | None] = [
            error if size_error is None else size_error
            for size_error, error in zip(
                (_size_error(envelope, limit) for envelope in envelopes),
                signature_checks,
                strict=True,
            )
        ]
        answers = []
        # One locked section: the block loop may build, reject and remember an admitted
        # transaction as soon as the lock is let go, and a later "pending" must not erase
        # that (found by review: answered pending, then unknown for good).
        with self._lock:
            # Nonces count from the tip: one in a block being written is used already.
            admissions = self.pool.admit(envelopes, checks, self._tip_account)
            for admission, check in zip(admissions, signature_checks, strict=True):
                envelope, error = admission.envelope, admission.error
                if error is None:
                    outcome = Outcome(tx_id=envelope.tx_id, status="pending")
                    if admission.new:
                        # Ids come from the transaction alone: a new attempt (say, now signed
                        # by the right key) replaces what an earlier one was answered.
                        self.outcomes.pop(envelope.tx_id, None)
                else:
                    account = self._tip_account(envelope.tx.signer)
                    outcome = refusal(
                        self.outcomes,
                        envelope,
                        error,
                        authentic=is_authentic(check, account, envelope),
                    )
                answers.append(outcome)
        return answers

    def produce(self, now_ms: int) -> CommittedBlock | None:
        """Cut one block from the ready transactions at time `now_ms`, write it and commit
        it; None if none apply."""
        prepared = self.prepare(now_ms)
        if prepared is None:
            return None
        try:
            self.write(prepared)
        except BaseException:
            self.abandon()
            raise
        return self.finish(prepared)

    def prepare(self, now_ms: int) -> PreparedBlock | None:
        """Build and certify the next block on the tip, from the ready transactions; None if
        none apply. Rejected transactions leave the pool now; the block's own stay in it,
        pending, until `finish`."""
        assert len(self._unfinished) < 2, "at most one block is written while one is built"
        with self._lock:
            tip = self._tip
            limit = tip.params.block_transactions_max
            candidates = self.pool.ready(self._tip_nonce, limit)
            if not candidates and (
                self.pool.gap_expired() or self.pending_count() != self.pool.gapped_count()
            ):
                # Only transactions behind a gap: they do not wait for ever. Or the pool's
                # count of them is behind (a block refused a nonce and held back the signer's
                # later ones): counted afresh, so that `due` waits for them (found by review:
                # pending for ever, the loop polling 100 times a second).
                reject_stale(self.pool, self.outcomes, self._committed_nonce)
        if not candidates:
            return None
        built = build_block(
            tip,
            candidates,
            time=now_ms,
            proposer=self.key.public_key_hex,
            last_commit=self._tip_certificate,
            signatures_verified=True,
        )
        rejected = tuple(
            Outcome(
                tx_id=envelope.tx_id,
                status="rejected",
                code=error.code,
                message=error.message,
            )
            for envelope, error in built.rejected
        )
        with self._lock:
            for outcome in rejected:
                self._remember(outcome)
            self.pool.remove(envelope for envelope, _ in built.rejected)
        if not built.block.transactions:
            return None
        block = built.block
        # The round of this validator's turn: 0 while it is the only validator. A set it
        # changed to give others power (this key keeping more than 2/3) gives them turns,
        # which their absence lets pass, and the audit checks the header's proposer had its
        # turn by the certificate's round (found by review).
        turn = first_turn(tip.current_validators(), block.height, self.key.public_key_hex)
        certificate = sign_certificate(
            chain_id=tip.chain_id,
            height=block.height,
            round=0 if turn is None else turn,
            block_hash=block.block_hash(),
            keys=[self.key],
        )
        verify_certificate(  # check our own work from the other side before writing it
            certificate,
            chain_id=tip.chain_id,
            height=block.height,
            block_hash=block.block_hash(),
            validators=tip.current_validators(),
        )
        prepared = PreparedBlock(
            block=block, certificate=certificate, state=built.state, rejected=rejected
        )
        with self._lock:
            self._tip = built.state
            self._tip_certificate = certificate
            self._unfinished.append(prepared)
            self._last_full = len(block.transactions) == limit
        return prepared

    def write(self, prepared: PreparedBlock) -> None:
        """Make a prepared block durable (any thread; one block at a time, in order)."""
        self.store.append(prepared.block, prepared.certificate, prepared.state)

    def finish(self, prepared: PreparedBlock) -> CommittedBlock:
        """After `write` returned: the block is committed, and readers see it."""
        block = prepared.block
        committed = committed_outcomes(block)
        with self._lock:
            assert self._unfinished and self._unfinished[0] is prepared, "finish in order"
            self._unfinished.pop(0)
            self._state = prepared.state
            self._last_certificate = prepared.certificate
            # Against the committed state: the next block, if prepared, is not stale.
            settle_pool(self.pool, self.outcomes, committed, block, self._committed_nonce)
        return CommittedBlock(
            block=block,
            certificate=prepared.certificate,
            outcomes=committed + prepared.rejected,
        )

    def abandon(self) -> None:
        """After a failed `write`: drop every unfinished block (the next one was built on the
        failed one) and build again from the committed state. Their transactions never left
        the pool."""
        with self._lock:
            self._unfinished.clear()
            self._tip = self._state
            self._tip_certificate = self._last_certificate


def _size_error(envelope: Envelope, limit: int) -> LedgerError | None:
    """Refuse at the door what no block could hold (the state transition checks it again)."""
    if len(envelope.leaf) <= limit:
        return None
    return LedgerError(
        f"transaction is {len(envelope.leaf)} bytes, the chain allows {limit}",
        code="payload_too_large",
    )


# The state is millions of long-lived containers that almost never form cycles (refcounting
# frees them); with the default thresholds every ~700 allocations start a young collection and
# every few of those promote into full scans of that heap. Measured in bench/ingest.py: about
# a fifth of a block's time. Collect young objects every 200,000 allocations instead: at
# 50,000, collections still took a quarter of the node process's CPU in bench/api.py (b)
# (1.8 s of ~7 s over 50,000 transfers, each young one ~40 ms); at 200,000 the node spent
# 127-141 us of CPU a transaction against 149-153 (three runs each, in turn), each young
# collection ~130 ms, about one every 2.5 s under that load. Cyclic garbage waits longer:
# a bounded amount.
GC_YOUNG_THRESHOLD = 200_000


def tune_garbage_collector() -> None:
    """Set a node process's garbage collector for a large, acyclic, long-lived heap, and move
    everything alive now (the loaded state) out of the collector's way."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
