"""The pending pool: bounded, deduplicated by `tx_id`, nonce-ordered per account (SPEC §7.2).

- At most `capacity` transactions in all; beyond that `add` raises `mempool_full` (the pool
  never evicts silently: a caller always learns what was not taken). Transactions forwarded
  by peers (`forwarded=True`) may fill it only up to `capacity - local_reserved`: a flood
  from a peer (or from anyone posting to the consensus route) leaves room for this node's
  own clients, whose transactions it proposes itself in its turn (docs/decisions/0006).
- Per account it holds nonces from the next expected one up to `nonce_gap_max` ahead, and
  releases them strictly in order; a nonce already used or too far ahead is `bad_nonce`. One
  still waiting behind a missing nonce after `gap_wait_ms` leaves the pool (`drop_stale`):
  fresh keys cost nothing, and a review filled the pool with transactions that could never be
  proposed (nonce 2 of fresh accounts), for good. At most `gapped_max` wait so at once (a
  later review refilled the pool faster than they left, one client keeping everyone else's
  transactions out): beyond, another behind a gap is `mempool_full`, and ready ones still
  have the rest of the pool.
- Transactions must be for the pool's `chain_id` (`wrong_chain`; set by the producer that
  owns the pool): one signed for another chain with the same key could otherwise hold its
  signer's nonce here until its block refused it (found by review).
- The listed keys must belong to the signer's key set at the node's tip and reach its
  threshold (`check_authorization`), so nobody can hold another account's nonce (and make its
  own transaction `bad_nonce`) with one that account did not sign. After a pending
  `set_keys` of the same signer the keys are not known yet: block building decides.
- Signatures are checked on admission, so block building need not check them again. Who
  checks them is the pool's `check_signatures`: by default `verify_signatures` over an
  executor's threads, which only pay while the interpreter is otherwise idle (a thread must
  win the GIL back after every check; measured in bench/verify.py); a node passes
  `consensus.verifier.SignatureWorker.check`, a worker process with a core of its own.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from ledger.errors import LedgerError, PoolError
from ledger.limits import (
    POOL_GAP_WAIT_MS,
    POOL_GAPPED_MAX,
    POOL_LOCAL_RESERVED,
    POOL_NONCE_GAP_MAX,
    POOL_TRANSACTIONS_MAX,
)
from ledger.state_transition import check_authorization
from ledger.transactions import Envelope, check_signatures

_PARALLEL_MIN = 64

SignatureCheck = Callable[[Sequence[Envelope]], list[LedgerError | None]]
"""For each envelope, in order, None or the error of its first bad signature."""

AccountLookup = Callable[[str], Mapping[str, Any] | None]
"""An account's `account/` record at the node's tip (its nonce, keys and threshold), or None."""


@dataclass(frozen=True, slots=True)
class Admission:
    """The pool's answer for one envelope: accepted (`new` unless it was pending already), or
    the error that refused it."""

    envelope: Envelope
    error: LedgerError | None = None
    new: bool = False


def verify_signatures(
    envelopes: Sequence[Envelope], executor: Executor | None
) -> list[LedgerError | None]:
    """Each envelope's signature check result, spread over `executor`'s threads."""
    if executor is None or len(envelopes) < _PARALLEL_MIN:
        return check_signatures(envelopes)
    workers: int = getattr(executor, "_max_workers", 1)
    size = -(-len(envelopes) // workers)
    chunks = [envelopes[i : i + size] for i in range(0, len(envelopes), size)]
    return [result for part in executor.map(check_signatures, chunks) for result in part]


class Pool:
    def __init__(
        self,
        *,
        capacity: int = POOL_TRANSACTIONS_MAX,
        nonce_gap_max: int = POOL_NONCE_GAP_MAX,
        local_reserved: int | None = None,
        gapped_max: int = POOL_GAPPED_MAX,
        chain_id: str | None = None,
        executor: Executor | None = None,
        check_signatures: SignatureCheck | None = None,
        clock_ms: Callable[[], int] = lambda: time.monotonic_ns() // 1_000_000,
    ) -> None:
        assert capacity > 0 and nonce_gap_max > 0
        self.capacity = capacity
        self.nonce_gap_max = nonce_gap_max
        if local_reserved is None:
            local_reserved = min(POOL_LOCAL_RESERVED, capacity // 2)
        assert 0 <= local_reserved < capacity
        self.forwarded_capacity = capacity - local_reserved
        self.gapped_max = gapped_max
        self.chain_id = chain_id  # None: not checked (the producer owning the pool sets it)
        self.executor = executor
        self.check_signatures: SignatureCheck = check_signatures or (
            lambda envelopes: verify_signatures(envelopes, executor)
        )
        self._by_id: dict[str, Envelope] = {}
        self._by_leaf: dict[bytes, Envelope] = {}  # RFC 9162 leaf hash -> envelope
        self._by_signer: dict[str, dict[int, Envelope]] = {}
        self._arrival: dict[str, int] = {}  # tx_id -> admission sequence number
        self._sequence = 0
        self.gap_wait_ms = POOL_GAP_WAIT_MS
        self._clock_ms = clock_ms
        self._admitted_at: dict[str, int] = {}  # tx_id -> `clock_ms()` when it was admitted
        # Pending behind a missing nonce of their signer, as of the last admission of the
        # signer's or the last `drop_stale`; with their admission times, oldest first (ids
        # no longer gapped are skipped when met).
        self._gapped: set[str] = set()
        self._gap_heap: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, tx_id: object) -> bool:
        return tx_id in self._by_id

    def by_leaf_hash(self, leaf: bytes) -> Envelope | None:
        """The pending envelope whose RFC 9162 leaf hash is `leaf` (its signatures included:
        ids name the transaction alone). Any thread: one dictionary read."""
        return self._by_leaf.get(leaf)

    def holds(self, envelope: Envelope) -> bool:
        """This very envelope, signatures and all, is pending (so its signatures were
        checked when it was admitted). Any thread: one dictionary read."""
        pending = self._by_id.get(envelope.tx_id)
        return pending is not None and (pending is envelope or pending.leaf == envelope.leaf)

    def add_many(self, envelopes: Sequence[Envelope], account: AccountLookup) -> list[Admission]:
        """Admit each envelope or say why not; signatures are checked in parallel."""
        return self.admit(envelopes, self.check_signatures(envelopes), account)

    def admit(
        self,
        envelopes: Sequence[Envelope],
        checks: Sequence[LedgerError | None],
        account: AccountLookup,
        *,
        forwarded: bool = False,
        tip_behind: bool = False,
    ) -> list[Admission]:
        """Admit envelopes whose signature `checks` (from `verify_signatures`) passed, by
        their signers' `account` records at the tip; `forwarded` ones (from a peer) only
        within `forwarded_capacity`. With `tip_behind` (the chain has gone on beyond the
        node's tip: it is catching up) a nonce far ahead of the tip's is not refused, for it
        may well be the next one at the chain's head; the keys are still checked (peers'
        messages, which say how far behind, are not verified when they arrive, and a key
        check is what keeps another account's nonce free)."""
        answers = []
        capacity = self.forwarded_capacity if forwarded else self.capacity
        for envelope, signature_error in zip(envelopes, checks, strict=True):
            error = signature_error
            new = False
            if error is None:
                try:
                    new = self._admit(
                        envelope, account(envelope.tx.signer), capacity, tip_behind, forwarded
                    )
                except LedgerError as refused:  # PoolError, or the envelope's authorization
                    error = refused
            answers.append(Admission(envelope, error, new))
        return answers

    def gapped_count(self) -> int:
        """How many pending transactions wait behind a missing nonce of their signer."""
        return len(self._gapped)

    def gap_expired(self) -> bool:
        """Whether a transaction behind a gap has waited `gap_wait_ms`: `drop_stale` would
        drop it. Cheap: the oldest one's time."""
        heap = self._gap_heap
        while heap and heap[0][1] not in self._gapped:
            heapq.heappop(heap)
        return bool(heap) and self._clock_ms() - heap[0][0] >= self.gap_wait_ms

    def _reach(self, pending: Mapping[int, Envelope], committed: int) -> int:
        """The first nonce after `committed` that `pending` lacks: those above wait."""
        reach = committed + 1
        while reach in pending:
            reach += 1
        return reach

    def _regap(self, pending: Mapping[int, Envelope], reach: int) -> None:
        for nonce, waiting in pending.items():
            tx_id = waiting.tx_id
            if nonce < reach:
                self._gapped.discard(tx_id)
            elif tx_id not in self._gapped:
                self._gapped.add(tx_id)
                heapq.heappush(self._gap_heap, (self._admitted_at[tx_id], tx_id))

    def _admit(
        self,
        envelope: Envelope,
        account: Mapping[str, Any] | None,
        capacity: int,
        tip_behind: bool,
        forwarded: bool = False,
    ) -> bool:
        if envelope.tx_id in self._by_id:
            return False  # the same transaction again: already pending, nothing changes
        if self.chain_id is not None and envelope.tx.chain_id != self.chain_id:
            raise LedgerError(
                f"transaction is for chain {envelope.tx.chain_id[:80]!r}, not {self.chain_id!r}",
                code="wrong_chain",
            )
        committed = 0 if account is None else int(account["nonce"])
        nonce = envelope.tx.nonce
        if nonce <= committed:
            raise PoolError(f"nonce {nonce} is already used (last {committed})", code="bad_nonce")
        if nonce > committed + self.nonce_gap_max and not tip_behind:
            raise PoolError(
                f"nonce {nonce} is more than {self.nonce_gap_max} ahead of {committed}",
                code="bad_nonce",
            )
        pending = self._by_signer.get(envelope.tx.signer, {})
        if not any(e.tx.type == "set_keys" for n, e in pending.items() if n < nonce):
            check_authorization(account, envelope)
        if nonce in pending:
            raise PoolError(
                f"another transaction with nonce {nonce} of this signer is pending",
                code="bad_nonce",
            )
        if len(self._by_id) >= capacity:
            raise PoolError(f"the pending pool holds {len(self._by_id)}", code="mempool_full")
        reach = self._reach(pending, committed)
        # Peers' (forwarded) transactions take the gapped share in proportion to their share
        # of the pool: the rest is this node's own clients' (found by review).
        gapped_max = (
            self.gapped_max * self.forwarded_capacity // self.capacity
            if forwarded
            else self.gapped_max
        )
        if nonce > reach and len(self._gapped) >= gapped_max:
            raise PoolError(
                f"{len(self._gapped)} pending transactions wait behind missing nonces, at most"
                f" {gapped_max}: send nonce {reach} of this signer first",
                code="mempool_full",
            )
        self._by_signer.setdefault(envelope.tx.signer, pending)[nonce] = envelope
        self._by_id[envelope.tx_id] = envelope
        self._by_leaf[envelope.leaf_hash] = envelope
        self._sequence += 1
        self._arrival[envelope.tx_id] = self._sequence
        self._admitted_at[envelope.tx_id] = self._clock_ms()
        self._regap(pending, self._reach(pending, reach - 1))  # on from where the gap was
        return True

    def ready(self, committed_nonce: Callable[[str], int], limit: int) -> list[Envelope]:
        """Up to `limit` transactions in order of arrival, except that each account's follow
        on from its committed nonce without a gap (a later nonce never overtakes an earlier)."""
        heap: list[tuple[int, str, int]] = []
        for signer, pending in self._by_signer.items():
            nonce = committed_nonce(signer) + 1
            if nonce in pending:
                heap.append((self._arrival[pending[nonce].tx_id], signer, nonce))
        heapq.heapify(heap)
        selected: list[Envelope] = []
        while heap and len(selected) < limit:
            _, signer, nonce = heapq.heappop(heap)
            pending = self._by_signer[signer]
            selected.append(pending[nonce])
            following = pending.get(nonce + 1)
            if following is not None:
                heapq.heappush(heap, (self._arrival[following.tx_id], signer, nonce + 1))
        return selected

    def remove(self, envelopes: Iterable[Envelope]) -> None:
        for envelope in envelopes:
            pending_envelope = self._by_id.pop(envelope.tx_id, None)
            if pending_envelope is None:
                continue
            del self._by_leaf[pending_envelope.leaf_hash]
            del self._arrival[envelope.tx_id]
            del self._admitted_at[envelope.tx_id]
            self._gapped.discard(envelope.tx_id)
            pending = self._by_signer[envelope.tx.signer]
            del pending[envelope.tx.nonce]
            if not pending:
                del self._by_signer[envelope.tx.signer]

    def drop_stale(self, committed_nonce: Callable[[str], int]) -> list[tuple[Envelope, str]]:
        """After a block is committed, or when there is none to build: remove and return,
        each with why, the transactions whose nonce a committed transaction has used, and
        those that waited `gap_wait_ms` behind a missing nonce."""
        now = self._clock_ms()
        stale: list[tuple[Envelope, str]] = []
        gapped: list[tuple[int, str]] = []
        for signer, pending in self._by_signer.items():
            committed = committed_nonce(signer)
            ready_to = self._reach(pending, committed)  # the first nonce a gap keeps out
            for nonce, envelope in pending.items():
                if nonce > ready_to:
                    gapped.append((self._admitted_at[envelope.tx_id], envelope.tx_id))
                if nonce <= committed:
                    stale.append((envelope, "another transaction used this nonce first"))
                elif nonce > ready_to and now - self._admitted_at[envelope.tx_id] >= (
                    self.gap_wait_ms
                ):
                    stale.append(
                        (
                            envelope,
                            f"nonce {ready_to} of this signer did not come within"
                            f" {self.gap_wait_ms // 1000} s",
                        )
                    )
        # Which wait behind a gap, counted afresh: blocks committed since moved accounts on.
        self._gapped = {tx_id for _, tx_id in gapped}
        heapq.heapify(gapped)
        self._gap_heap = gapped
        self.remove(envelope for envelope, _ in stale)
        return stale
