"""Block sync: catching up from other nodes' public API, for a validator far behind and for a
follower (docs/decisions/0006, "Lost messages, catching up").

Tendermint's own catch-up (a `Decision` answered to a stale vote) brings one height per round
trip. A node further behind fetches the blocks it lacks in ranges through a `BlockSource` (a
node's `GET /v1/checkpoint` for its head and `GET /v1/export` for the blocks:
`api.follow.ApiSource`) and trusts nothing it is served. `verify_lines` checks a range as the
auditor checks an export (ledger.verification), line by line, in order:

1. the first line is a genesis document hashing to this chain's genesis hash (rule `genesis`);
2. each following line is at most `line_bytes_max` bytes and decodes strictly to exactly
   `{"block", "certificate"}`, a `Decision`'s wire form, under the chain's
   `transaction_bytes_max` (rule `malformed`);
3. its block is of the next height: no gap, repetition or reordering (rule `height`);
4. its certificate commits the block with more than 2/3 of the power of the set governing its
   height: the current set of the state before it, which the state transition moves on by the
   H+2 rule of `set_validators` (rule `certificate`); and the header's proposer had a turn
   in a round up to the certificate's (rule `proposer`, `ledger.proposer.had_a_turn`);
5. every transaction signature verifies (rule `bad_signature`, through an injected batch
   verifier) and the block applies to the state before it (`apply_block`: hash links,
   `last_commit`, every transaction rule, `log_size`, `log_root`, `state_root`; the rule is
   the one it names);
6. only then is the block handed on (`BlockSync` has it appended to the store on a write
   thread of its own, block N written while block N + 1 is checked). Lines that end
   before the range does, when the source claimed a head at or above its end, are refused too
   (rule `short`), and so are lines that stop coming in time (rule `timeout`).

`BlockSync.step` is one bounded attempt: it asks each source in turn for its head (a claim,
never trusted), and from the first that has blocks above this node's it reads one range of
at most SYNC_RANGE_BLOCKS_MAX blocks. A source that cannot be reached or serves anything that
fails a check is refused: the failing block is never stored (those before it passed every
check and stay), the refusal is logged and counted, and the next source is asked; the refused
one is not asked again for SYNC_RETRY_MS_MIN, doubling while it keeps failing, up to
SYNC_RETRY_MS_MAX. An attempt asks each source at most once and starts no request and reads no
line after SYNC_ATTEMPT_MS_MAX; after one that brought nothing the next waits at least
SYNC_RETRY_MS_MIN, and while every source is refused, until the first may be asked again.

What tells a validator it is behind is a hint: `heard` (or `hint`) keeps the highest height
peers' messages show decided (a vote or proposal of height h shows h - 1, a decision of h
shows h). The validator (`consensus.node.BftProducer`) passes on only what signed messages
show: a decision's certificate, or validators with more than a third of the power, each
message's signature checked under the set governing its next height. An attempt holds the
validator's block loop (up to SYNC_ATTEMPT_MS_MAX when a source drips its answer), so one
forged message of a far height must not start one. A hint still costs at most one bounded
attempt when no source backs it, after which it is forgotten. The blocks are what is
checked.

A source whose next block is certified but does not apply on this node's head (another
parent, an earlier time, any rule of step 5) may be on a fork: more than a third of the
validators signed two chains. Once the node gives `BlockSync` a way to read its own blocks
(`local`), such a refusal is followed by one more request: the source's block at this node's
head height. When its certificate verifies under the set that governed that height and it
commits another block, the two certified blocks are a `ForkProof` (SPEC §6.2: "proof of a
fork, signed by the validators"), with the duplicate precommits of every validator that
signed both when they are of one round (`ledger.evidence.evidence_from_certificates`). It
is counted, kept (the first one) and handed to `on_fork`: the node writes the first one to
its data directory and says so in `/healthz` and `/metrics`, across restarts. Nothing of the
other chain is stored; the source stays refused. A source whose head is not above this node's
is compared too: a head that names another block at a height this node holds (its own head's,
or one `local_hash` reads) is followed by the same request for that height, and refused (rule
`head`) when it proves no fork. A source that served a fork, or another chain's genesis, is
`distrusted`: a follower forwards its users' transactions to it no more; one that served a
fork is not asked again.

`verify_lines` is pure (no clock, thread, store or network); `MemorySource` is a source's
in-memory twin, for tests.

    ConsensusError
    └── SyncRefused   sync_refused: what a source served fails a check (`height`, `rule`)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from consensus.messages import (
    ConsensusError,
    Decision,
    InvalidMessage,
    MalformedMessage,
    Message,
    decode_message,
    verify_decision,
)
from ledger.blocks import Block, Certificate
from ledger.crypto import GENESIS_DOMAIN, hash_domain
from ledger.encoding import JSON, canonical, decode
from ledger.errors import InvalidBlockError, LedgerError, printable
from ledger.evidence import Evidence, evidence_from_certificates, parse_evidence
from ledger.genesis import Genesis
from ledger.limits import (
    SYNC_ATTEMPT_MS_MAX,
    SYNC_LAG_HEIGHTS_MIN,
    SYNC_RANGE_BLOCKS_MAX,
    SYNC_RETRY_MS_MAX,
    SYNC_RETRY_MS_MIN,
)
from ledger.proposer import proposer_objection
from ledger.state import State
from ledger.state_transition import apply_block
from ledger.verification import (
    SignatureVerifier,
    compute_line_bytes_max,
    verify_signatures_serially,
)

log = logging.getLogger("tanlian.consensus.sync")

REFUSAL_CHARS_MAX: Final = 300  # how much of a refusal the log and `last_refusal` keep

Append = Callable[[Block, Certificate, State], None]
"""Where a verified block goes, with its certificate and the state after it (the store):
called in order, one block at a time, on the sync's write thread, while the thread that runs
`step` checks the next block and waits for it before `step` returns."""


class SyncRefused(ConsensusError):
    """What a source served fails check `rule` at `height` (None: not a block's line);
    `certified`: the block's certificate had been verified (step 5 refused it)."""

    code = "sync_refused"

    def __init__(
        self, *, height: int | None, rule: str, detail: str, certified: bool = False
    ) -> None:
        where = "" if height is None else f" at height {height}"
        super().__init__(f"rule {rule}{where}: {detail}")
        self.height = height
        self.rule = rule
        self.detail = detail
        self.certified = certified


@dataclass(frozen=True, slots=True)
class Head:
    """A source's latest block as it claims it: its height (0: none yet) and its hash (None:
    not said)."""

    height: int
    block_hash: str | None = None


class BlockSource(Protocol):
    """Another node's blocks, as its public API serves them (SPEC §7.1). Whatever it answers
    is a claim: `verify_lines` checks the blocks, and nothing else is believed."""

    @property
    def name(self) -> str: ...

    def latest(self) -> Head:
        """Its latest block, as it claims. Raises `LedgerError` when it cannot answer."""

    def export_lines(
        self, from_height: int, to_height: int, *, line_bytes_max: int
    ) -> Generator[bytes, None, None]:
        """Its export of heights `from_height`..`to_height`: the genesis line, then one
        `{"block", "certificate"}` line per height; a line longer than `line_bytes_max` comes
        in pieces (the first one longer than that). Raises `LedgerError` when it cannot."""

    def close(self) -> None: ...


# --- the checks (pure) --------------------------------------------------------------------------


def verify_lines(
    state: State,
    lines: Iterable[bytes],
    *,
    last: int,
    genesis_hash: str,
    line_bytes_max: int,
    verify_signatures: SignatureVerifier = verify_signatures_serially,
) -> Iterator[tuple[Decision, State]]:
    """Steps 1-5 of the module docstring over the export lines of heights `state.height + 1`
    to `last` (the genesis line first): each block with its certificate and the state after
    it, in order. Raises `SyncRefused` at the first line that fails, or when the lines end
    before `last`; reads no line beyond `last`."""
    remaining = iter(lines)
    _check_genesis_line(next(remaining, None), genesis_hash, line_bytes_max)  # step 1
    transaction_bytes_max = state.params.transaction_bytes_max
    for height in range(state.height + 1, last + 1):
        line = next(remaining, None)
        if line is None:
            raise SyncRefused(
                height=height, rule="short", detail=f"the lines ended before height {last}"
            )
        decision = _parse_line(line, height, line_bytes_max, transaction_bytes_max)  # 2, 3
        try:  # step 4: the set governing `height` is the current one of the state before it
            verify_decision(
                decision, chain_id=state.chain_id, validators=state.current_validators()
            )
        except InvalidMessage as error:
            raise SyncRefused(height=height, rule="certificate", detail=error.message) from error
        objection = proposer_objection(
            state.current_validators(),
            height,
            decision.block.header.proposer,
            decision.certificate.round,
        )
        if objection is not None:  # as the audit has it
            raise SyncRefused(height=height, rule="proposer", detail=objection)
        state = _replay(state, decision.block, verify_signatures)  # step 5
        yield decision, state


def _check_genesis_line(line: bytes | None, genesis_hash: str, line_bytes_max: int) -> None:
    def refuse(detail: str) -> SyncRefused:
        return SyncRefused(height=None, rule="genesis", detail=detail)

    if line is None:
        raise refuse("the answer is empty: no genesis line")
    if len(line) > line_bytes_max:
        raise refuse(f"the genesis line is over {line_bytes_max} bytes")
    try:
        found = hash_domain(GENESIS_DOMAIN, decode(line)).hex()
    except LedgerError as error:
        raise refuse(f"not a genesis document ({error.code}): {error.message}") from error
    if found != genesis_hash:
        raise refuse(f"another chain: its genesis hashes to {found}, this one's to {genesis_hash}")


def _parse_line(
    line: bytes, height: int, line_bytes_max: int, transaction_bytes_max: int
) -> Decision:
    """Steps 2 and 3: exactly a block and its certificate, of `height`."""
    if len(line) > line_bytes_max:
        raise SyncRefused(
            height=height, rule="malformed", detail=f"the line is over {line_bytes_max} bytes"
        )
    try:
        decision = decode_message(line, transaction_bytes_max=transaction_bytes_max)
    except MalformedMessage as error:
        raise SyncRefused(height=height, rule="malformed", detail=error.message) from error
    if not isinstance(decision, Decision):
        raise SyncRefused(
            height=height,
            rule="malformed",
            detail=f"expected a block and its certificate, got a {type(decision).__name__}",
        )
    if decision.height != height or decision.certificate.height != height:
        raise SyncRefused(
            height=height,
            rule="height",
            detail=f"the line holds block {decision.height} with a certificate of height "
            f"{decision.certificate.height}",
        )
    return decision


def _replay(state: State, block: Block, verify_signatures: SignatureVerifier) -> State:
    """Step 5: every signature, then every rule of the block on `state`."""
    checks = verify_signatures(block.transactions)
    assert len(checks) == len(block.transactions), "one signature check per transaction"
    for envelope, error in zip(block.transactions, checks, strict=True):
        if error is not None:
            raise SyncRefused(
                height=block.height,
                rule="bad_signature",
                detail=f"transaction {envelope.tx_id}: {error.message}",
                certified=True,
            )
    try:
        return apply_block(state, block, signatures_verified=True)
    except InvalidBlockError as error:
        raise SyncRefused(
            height=block.height, rule=error.rule, detail=error.message, certified=True
        ) from error
    except LedgerError as error:
        raise SyncRefused(
            height=block.height, rule=error.code, detail=error.message, certified=True
        ) from error


# --- a fork ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ForkProof:
    """Two blocks of one height, each certified by more than 2/3 of the set that governed it:
    this node's (`ours`) and the one `source` served (`theirs`). `evidence`: the duplicate
    precommits of each validator that signed both, when both certificates are of one round
    (otherwise the two certificates are the proof, with no single vote to name)."""

    height: int
    source: str
    ours: Decision
    theirs: Decision
    evidence: tuple[Evidence, ...]

    def signers_of_both(self) -> list[str]:
        """The keys whose signatures are in both certificates (whatever their rounds)."""
        theirs = {key for key, _ in self.theirs.certificate.signatures}
        return sorted(key for key, _ in self.ours.certificate.signatures if key in theirs)

    def to_json(self) -> dict[str, JSON]:
        return {
            "kind": "fork",
            "height": self.height,
            "source": self.source,
            "ours": self.ours.to_json(),
            "theirs": self.theirs.to_json(),
            "signers_of_both": self.signers_of_both(),
            "evidence": [item.to_json() for item in self.evidence],
        }


def parse_fork_proof(value: Any, *, transaction_bytes_max: int) -> ForkProof:
    """A `ForkProof` from its `to_json` (a proof kept in a data directory, read back at a
    start); raises `LedgerError` for anything else. Parsed, not checked again: it is the
    node's own record of what it checked when it was made."""
    if not isinstance(value, dict) or value.get("kind") != "fork":
        raise LedgerError("not a fork proof", code="invalid_field")
    try:
        decisions = [
            decode_message(canonical(value[side]), transaction_bytes_max=transaction_bytes_max)
            for side in ("ours", "theirs")
        ]
        evidence = tuple(parse_evidence(item) for item in value["evidence"])
        height, source = value["height"], value["source"]
    except (KeyError, TypeError) as error:
        raise LedgerError(f"not a fork proof: {error}", code="invalid_field") from error
    ours, theirs = decisions
    if not (
        isinstance(ours, Decision)
        and isinstance(theirs, Decision)
        and isinstance(source, str)
        and height == ours.height == theirs.height
    ):
        raise LedgerError("not a fork proof: two decisions of its height", code="invalid_field")
    return ForkProof(height=height, source=source, ours=ours, theirs=theirs, evidence=evidence)


def prove_fork(
    state: State, ours: Decision, line: bytes, *, source: str, line_bytes_max: int
) -> ForkProof | None:
    """A `ForkProof` when `line` (an export line a source served for `ours.height`) holds
    another block of that height certified under the set that governed it in `state` (the
    state at `ours.height` or later, within the heights it remembers sets for); None when it
    proves nothing (the same block, an uncertified one, or a set this state no longer knows).
    Raises `SyncRefused` for a line that is no block and certificate of that height."""
    height = ours.height
    validators = state.governing_validators(height)
    theirs = _parse_line(line, height, line_bytes_max, state.params.transaction_bytes_max)
    if validators is None or theirs.block.block_hash() == ours.block.block_hash():
        return None
    try:
        verify_decision(theirs, chain_id=state.chain_id, validators=validators)
    except InvalidMessage:
        return None
    return ForkProof(
        height=height,
        source=source,
        ours=ours,
        theirs=theirs,
        evidence=tuple(evidence_from_certificates(ours.certificate, theirs.certificate)),
    )


def _detached(error: LedgerError) -> LedgerError:
    """`error` with its traceback let go, and those of the errors it came from: they hold
    the frames that read the refused line (up to the chain's line bound, ~160 MB), kept
    alive by the cycle error -> traceback -> frame -> error until a full collection, which
    an idle node seldom runs (found by review: a follower grew ~160 MB a refused attempt,
    to 4 GB)."""
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__traceback__ = None
        link = link.__cause__ or link.__context__
    return error


def _may_be_fork(refusal: LedgerError, state: State) -> bool:
    """A certified block of the next height that does not apply on this node's head: on
    another parent, or stamped before it (its time is checked before its parent: a chain
    that decided faster stamps its next block earlier, and a review's fork was missed for
    that), or breaking any other rule. Honest validators certify none of these here."""
    return (
        isinstance(refusal, SyncRefused)
        and refusal.certified
        and refusal.height == state.height + 1
        and state.height > 0
    )


# --- the attempts (the node's shell) ------------------------------------------------------------


def _monotonic_ms() -> int:
    return int(time.monotonic() * 1000)


class BlockSync:
    """Which source to ask, when, and what came of it; see the module docstring.

    `heard` and the properties may be called from any thread; `step` from one thread (the
    node's block loop), which owns the store it appends to."""

    def __init__(
        self,
        sources: Sequence[BlockSource],
        *,
        genesis: Genesis,
        verify_signatures: SignatureVerifier = verify_signatures_serially,
        range_blocks_max: int = SYNC_RANGE_BLOCKS_MAX,
        attempt_ms_max: int = SYNC_ATTEMPT_MS_MAX,
        retry_ms_min: int = SYNC_RETRY_MS_MIN,
        retry_ms_max: int = SYNC_RETRY_MS_MAX,
        clock_ms: Callable[[], int] = _monotonic_ms,
        local: Callable[[int], Decision] | None = None,
        local_hash: Callable[[int], str] | None = None,
        on_fork: Callable[[ForkProof], None] | None = None,
    ) -> None:
        """`local(height)` reads this node's own decided block of a height (on the thread of
        `step`); without it no fork is looked for. `local_hash(height)` reads that block's
        hash alone: with it, a source whose head is below this node's is compared there too
        (its head is always compared with this node's own). `on_fork` is told of each proof
        found."""
        assert sources, "a node syncs from at least one source"
        assert range_blocks_max >= 1 and attempt_ms_max > 0
        assert 0 < retry_ms_min <= retry_ms_max
        self.sources = tuple(sources)
        self.genesis_hash = genesis.genesis_hash()
        self.line_bytes_max = compute_line_bytes_max(genesis.params)
        self.verify_signatures = verify_signatures
        self.range_blocks_max = range_blocks_max
        self.attempt_ms_max = attempt_ms_max
        self.retry_ms_min = retry_ms_min
        self.retry_ms_max = retry_ms_max
        self._clock_ms = clock_ms
        self._lock = threading.Lock()  # the hint and the retry wait
        self._heard = 0
        self._expected = 0  # decided for certain (`expect`): never forgotten
        self._retry_at_ms = 0  # no attempt before (after one that brought nothing)
        self._probing = False  # an attempt is asked for, whatever the hint (`probe`)
        self._first = 0  # the source asked first: the last one that served
        # A refused source waits before it is asked again, doubling while it keeps failing.
        self._penalty_ms = [0] * len(self.sources)
        self._not_before_ms = [0] * len(self.sources)
        self._closing = threading.Event()
        # Where `append` runs: block N is written while block N + 1 is checked.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sync-write")
        self.counters = SyncCounters()
        self._local = local
        self._local_hash = local_hash
        self._on_fork = on_fork
        self._distrust: list[str | None] = [None] * len(self.sources)
        self._contact_ms = clock_ms()  # a source last answered what was asked (or the start)
        self._forked: list[SyncRefused | None] = [None] * len(self.sources)

    # --- what peers say (any thread) ----------------------------------------------------------

    def heard(self, messages: Iterable[Message]) -> None:
        """Note the highest height peers' messages show decided (a hint: unchecked)."""
        top = max(
            (m.height if isinstance(m, Decision) else m.height - 1 for m in messages), default=0
        )
        self.hint(top)

    def hint(self, height: int) -> None:
        """Note that peers show `height` decided (a hint: never trusted, the blocks are)."""
        with self._lock:
            self._heard = max(self._heard, height)

    def probe(self) -> None:
        """Make the next attempt due whatever the hint says (within the retry waits): each
        source is asked for its head. The hint itself is left as it was."""
        with self._lock:
            self._probing = True

    def expect(self, height: int) -> None:
        """Note a height this node knows for certain is decided (its own signed-message log
        says it took part beyond it): unlike a hint, it is not forgotten when an attempt
        brings nothing, so attempts go on, within their retry waits, until it is reached."""
        with self._lock:
            self._expected = max(self._expected, height)
            self._heard = max(self._heard, height)

    @property
    def heard_height(self) -> int:
        with self._lock:
            return self._heard

    def is_behind(self, height: int, *, lag: int = SYNC_LAG_HEIGHTS_MIN) -> bool:
        """At least `lag` heights above `height` are known to be decided, no retry wait is
        running and the sync is not closing: an attempt is due."""
        if self._closing.is_set():
            return False
        with self._lock:
            behind = self._probing or self._heard - height >= lag
            return behind and self._clock_ms() >= self._retry_at_ms

    @property
    def retry_at_ms(self) -> int:
        """No attempt before this time (the clock's milliseconds)."""
        with self._lock:
            return self._retry_at_ms

    def close(self) -> None:
        """End an attempt under way at its next line or source, and start no other; then
        close the sources."""
        self._closing.set()

    def close_sources(self) -> None:
        """Once no attempt runs any more: close the sources and the write thread."""
        self._writer.shutdown(wait=True)
        for source in self.sources:
            source.close()

    # --- an attempt (one thread) ----------------------------------------------------------------

    def step(self, state: State, append: Append) -> State:
        """One bounded attempt from `state`: each verified block is handed to `append` in
        order; returns the state after the last one (`state` itself if none came). An error
        of `append` itself propagates: it is this node's, not the source's."""
        now = self._clock_ms()
        if self._closing.is_set() or now < self.retry_at_ms:
            return state
        deadline = now + self.attempt_ms_max
        with self._lock:
            self._probing = False
        count = len(self.sources)
        for index in [(self._first + offset) % count for offset in range(count)]:
            if self._closing.is_set() or self._clock_ms() >= deadline:
                break
            if now < self._not_before_ms[index]:
                continue  # refused a moment ago: its wait is not over
            if self._forked[index] is not None:
                continue  # proven to serve a fork: never asked again (found by review: its
                # fork was proven anew, downloaded and logged, every 30 s)
            reached = state.height
            try:
                claimed = self.sources[index].latest()
            except LedgerError as error:
                self._refuse(index, error, 0)
                continue
            head = claimed.height
            refusal = None
            if head > state.height:
                last = min(head, state.height + self.range_blocks_max)
                state, refusal = self._take_range(index, state, last, deadline, append)
            elif self._differs_here(claimed, state):
                # Its head is one this node holds, and another block: a fork, or a claim its
                # blocks must back (found by review: a forked source went unnoticed for as
                # long as it was behind).
                found = self._look_for_fork(index, state, deadline, height=head)
                if found is None:
                    continue  # not asked (the attempt's time is up): nothing to say of it
                refusal = self._forked[index] or SyncRefused(
                    height=head,
                    rule="head",
                    detail=f"its head names block {claimed.block_hash} at height {head}, which"
                    " this node holds as another, and what it served there proves no fork"
                    " (the same block, or one not certified by the set this node knows for"
                    " that height)",
                )
            if refusal is not None:
                if self._closing.is_set():
                    return state  # not the source's fault
                self._refuse(index, refusal, state.height - reached)
                if _may_be_fork(refusal, state):
                    self._look_for_fork(index, state, deadline, height=state.height)
                continue
            self._penalty_ms[index] = 0
            self._contact_ms = self._clock_ms()
            if self._distrust[index] is not None and self._forked[index] is None:
                self._distrust[index] = None  # it serves this chain now
            if head > reached:
                self._first = index
                with self._lock:
                    self._heard = max(self._heard, head)
                    self._retry_at_ms = 0
                return state
        with self._lock:  # no source served a range: forget a hint none of them backed
            self._heard = max(min(self._heard, state.height), self._expected)
            # From the attempt's end: an attempt a source made last its whole bound must not
            # leave the next one due at once.
            ended = self._clock_ms()
            self._retry_at_ms = max(ended + self.retry_ms_min, min(self._not_before_ms))
        return state

    def _take_range(
        self, index: int, state: State, last: int, deadline: int, append: Append
    ) -> tuple[State, LedgerError | None]:
        """Heights `state.height + 1`..`last` from source `index`, each verified block handed
        to `append` on the write thread while the next is checked (one at a time, in order);
        the state reached once every handed block is appended, and the error that ended the
        range early, if one did."""
        verified = self._range(self.sources[index], state, last, deadline)
        writing: Future[None] | None = None
        refusal = None
        try:
            while True:
                try:
                    item = next(verified, None)
                except LedgerError as error:  # the source's, or a failed check
                    refusal = _detached(error)
                    break
                if item is None:
                    break
                decision, after = item
                if writing is not None:
                    writing.result()
                writing = self._writer.submit(append, decision.block, decision.certificate, after)
                state = after
                self.counters.blocks += 1
        finally:
            verified.close()
            if writing is not None:
                writing.result()
        return state, refusal

    def _range(
        self, source: BlockSource, state: State, last: int, deadline: int
    ) -> Generator[tuple[Decision, State], None, None]:
        lines = source.export_lines(state.height + 1, last, line_bytes_max=self.line_bytes_max)
        try:
            yield from verify_lines(
                state,
                self._until(lines, deadline),
                last=last,
                genesis_hash=self.genesis_hash,
                line_bytes_max=self.line_bytes_max,
                verify_signatures=self.verify_signatures,
            )
        finally:
            lines.close()  # the rest of an answer is not read

    def _until(self, lines: Iterator[bytes], deadline: int) -> Iterator[bytes]:
        for line in lines:
            if self._closing.is_set():
                raise SyncRefused(height=None, rule="closing", detail="the node is stopping")
            if self._clock_ms() >= deadline:
                raise SyncRefused(
                    height=None,
                    rule="timeout",
                    detail=f"the attempt ran past {self.attempt_ms_max} ms",
                )
            yield line

    def _differs_here(self, claimed: Head, state: State) -> bool:
        """Whether a source's claimed head is a height this node holds with another block."""
        if claimed.block_hash is None or not 1 <= claimed.height <= state.height:
            return False
        if claimed.height == state.height:
            return claimed.block_hash != state.head_hash
        if self._local_hash is None:
            return False
        try:
            ours = self._local_hash(claimed.height)
        except LedgerError as error:  # this node's store: said, and nothing compared
            log.warning("block sync: block %d not read here: %s", claimed.height, error)
            return False
        return claimed.block_hash != ours

    def _look_for_fork(
        self, index: int, state: State, deadline: int, *, height: int
    ) -> bool | None:
        """After a certified block that does not extend this node's head, or a head that is
        another block at a height this node holds: the source's block at `height`, and a
        `ForkProof` if it is one (module docstring). Whether one was found, None when the
        source was not asked; a source that serves another chain is `distrusted`."""
        if self._local is None or self._clock_ms() >= deadline:
            return None
        source = self.sources[index]
        lines = source.export_lines(height, height, line_bytes_max=self.line_bytes_max)
        try:
            _check_genesis_line(next(lines, None), self.genesis_hash, self.line_bytes_max)
            line = next(lines, None)
            if line is None:
                return False
            proof = prove_fork(
                state,
                self._local(height),
                line,
                source=source.name,
                line_bytes_max=self.line_bytes_max,
            )
        except SyncRefused as error:
            if error.rule == "genesis":
                self._distrust[index] = "it serves another chain"
            log.info("block sync: no fork proof from %s: %s", source.name, printable(str(error)))
            return False
        except LedgerError as error:  # the source's: it is refused already
            log.info("block sync: no fork proof from %s: %s", source.name, printable(str(error)))
            return False
        finally:
            lines.close()
        if proof is None:
            return False
        self._forked[index] = SyncRefused(
            height=height,
            rule="fork",
            detail=f"it serves block {proof.theirs.block.block_hash()}, certified, where this"
            f" node holds block {proof.ours.block.block_hash()}, certified",
        )
        self._distrust[index] = f"it serves a fork of this chain (height {height})"
        self.counters.forks += 1
        if self.counters.fork is None:
            self.counters.fork = proof
        log.error(
            "FORK: %s serves block %s at height %d, certified, and this node holds block %s "
            "there, certified: more than a third of the validators signed both (signers of "
            "both: %s)",
            printable(source.name),
            proof.theirs.block.block_hash(),
            proof.height,
            proof.ours.block.block_hash(),
            ", ".join(proof.signers_of_both()) or "none in common",
        )
        if self._on_fork is not None:
            self._on_fork(proof)
        return True

    def refused_now(self, index: int) -> bool:
        """Whether source `index` is waiting out a refusal (it could not be reached, or served
        what failed a check, a moment ago)."""
        return self._clock_ms() < self._not_before_ms[index]

    def silent_ms(self) -> int:
        """How long no source has answered an attempt with what was asked (its head, and its
        blocks above this node's, all verified), since this sync was made if none ever did."""
        return self._clock_ms() - self._contact_ms

    def distrusted(self, index: int) -> str | None:
        """Why source `index` is not this chain's, if its blocks showed that: it serves
        another chain (until it serves this one), or a fork of it (for good). A follower
        sends its users' transactions to no such node (`api.follow.Forwarder`)."""
        return self._distrust[index]

    def _refuse(self, index: int, error: LedgerError, kept: int) -> None:
        """Refuse source `index` for its penalty, counted from now (the refusal), not from the
        attempt's start: a source that held the attempt for its whole bound is not asked
        again the moment it ends."""
        source = self.sources[index]
        penalty = min(max(2 * self._penalty_ms[index], self.retry_ms_min), self.retry_ms_max)
        self._penalty_ms[index] = penalty
        self._not_before_ms[index] = self._clock_ms() + penalty
        if index == self._first:
            self._first = (index + 1) % len(self.sources)
        reason = printable(f"({error.code}) {error.message}")[:REFUSAL_CHARS_MAX]
        if isinstance(error, SyncRefused) and error.rule == "genesis":
            self._distrust[index] = "it serves another chain"
        self.counters.refusals += 1
        self.counters.last_refusal = f"{source.name}: {reason}"
        log.warning(
            "block sync: refused %s for %d ms (%d verified blocks of this attempt kept): %s",
            source.name,
            penalty,
            kept,
            reason,
        )


@dataclass(slots=True)
class SyncCounters:
    blocks: int = 0  # blocks verified and appended
    refusals: int = 0  # sources refused (unreachable, or serving what fails a check)
    last_refusal: str | None = field(default=None)
    forks: int = 0  # fork proofs found (`ForkProof`), each time one was found
    fork: ForkProof | None = field(default=None)  # the first one


@dataclass(slots=True)
class MemorySource:
    """A `BlockSource` in memory, for tests: `lines[i]` is the export line of height i + 1,
    served as a node would serve it; `head` is the head it claims (default: its last line)."""

    name: str
    genesis_line: bytes
    lines: list[bytes]
    head: int | None = None
    head_hash: str | None = None  # the hash its head claims (None: not said)
    requests: int = 0
    ranges: list[int] = field(default_factory=list)  # the first height of each range asked

    def latest(self) -> Head:
        self.requests += 1
        return Head(len(self.lines) if self.head is None else self.head, self.head_hash)

    def export_lines(
        self, from_height: int, to_height: int, *, line_bytes_max: int
    ) -> Generator[bytes, None, None]:
        self.requests += 1
        self.ranges.append(from_height)
        yield self.genesis_line
        yield from self.lines[from_height - 1 : to_height]

    def close(self) -> None:
        pass
