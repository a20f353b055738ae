"""One validator's consensus: Tendermint (Buchman, Kwon, Milosevic 2018, Algorithm 1), pure.

A `Replica` is a deterministic state machine. It owns no socket, clock, thread or randomness:
the node shell (or the simulator) calls

    on_start(now_ms)                 once, after construction
    on_message(message, now_ms)      for every parsed message from a peer
    on_timeout(timeout, now_ms)      when a timeout it asked for is due

and each returns the effects to carry out, in order:

    Persist(message)        make a message this replica signed durable, or the proposal
                            whose block its next precommit locks on and the other
                            validators' prevotes that justify the lock. The shell MUST have
                            written it (fsync) before it carries out any later effect, above
                            all the Broadcast of the same message (SPEC §5.4), and gives it
                            back as `signed=` at a restart.
    Broadcast(message)      send to every other validator (best effort; it is re-sent).
    SendDecision(to, height)  send validator `to` the decided block of `height` with its
                            certificate, from the store, as a `Decision` message (it lags).
    ScheduleTimeout(timeout, delay_ms)  call on_timeout(timeout, ...) after delay_ms.
    Decide(block, certificate, state)  append the block, its certificate and the state
                            after it to the store, in order, and report nothing of it
                            committed before it is durable. Later effects may be carried
                            out meanwhile (a node writes while the next height runs): what
                            the replica signs at later heights is in its durable log, and
                            a restarted replica takes back its round and lock at every
                            height from that log.

The same inputs give the same effects, byte for byte, wherever they run.

Algorithm 1, line by line (h = height, r = round; "2f+1" is more than 2/3 of the power of the
set governing h, "f+1" more than 1/3):

    11  StartRound(r): the proposer proposes validValue with validRound if it has one, else a
        new block (`build_block` on its state, at `now_ms`, with the transactions the injected
        `TransactionSource` offers, at most `proposal_limit(r)`, the evidence it holds and the
        certificate of h-1 as `last_commit`); the others schedule timeoutPropose(r).
    22  PROPOSAL(h, r, v, -1) while step = propose: prevote v if valid(v) and (lockedRound =
        -1 or lockedValue = v), else nil; step = prevote.
    28  PROPOSAL(h, r, v, vr) with 0 <= vr < r and 2f+1 PREVOTE(h, vr, v) while step =
        propose: prevote v if valid(v) and (lockedRound <= vr or lockedValue = v), else nil.
    34  2f+1 PREVOTE(h, r, *) while step = prevote, first time: schedule timeoutPrevote(r).
    36  PROPOSAL(h, r, v, *) and 2f+1 PREVOTE(h, r, v), valid(v), step >= prevote, first time:
        if step = prevote, lock v at r and precommit v (step = precommit); validValue = v,
        validRound = r.
    44  2f+1 PREVOTE(h, r, nil) while step = prevote: precommit nil; step = precommit.
    47  2f+1 PRECOMMIT(h, r, *), first time: schedule timeoutPrecommit(r).
    49  PROPOSAL(h, r', v, *) and 2f+1 PRECOMMIT(h, r', v) for any r': if v applies, decide v
        with the certificate of those precommits (sorted by key), and start height h+1.
    55  f+1 of the power sent messages of (h, r') with r' > r: StartRound(r').
    57/61/65  timeoutPropose / timeoutPrevote: vote nil if still in that step of that round;
        timeoutPrecommit: StartRound(r+1).

Timeouts of round r last min(base + r * delta, max) (ledger.limits ROUND_TIMEOUT_MS_*) and
start again from round 0 at each height. After deciding a block the replica starts round 0
of the next height once it has something to decide (a transaction to propose, evidence to
record), looking every `wait_poll_ms`, or once `empty_block_ms` has passed since the decision
(an idle chain's empty blocks are that far apart); a message of the height from a validator
of its set starts round 0 at once (another validator has something, or its wait ran out).
After an empty block it first waits the chain's `block_interval_ms` (the pace of the chain),
unless a validator's message of the height arrives. A proposer woken with no transaction to
propose looks again every `wait_poll_ms` (at most `block_interval_ms` from the decision, and
half a propose timeout) before it proposes an empty block.

A proposal is held only if its block's body is the one its header commits to
(`check_block_body`: transactions against log_size and log_root, evidence against
evidence_hash, last_commit against last_commit_hash): the proposer's signature covers the
block hash alone, and a copy replayed with another body must not take the slot of the real
one. A proposal of the next height is checked once its parent is decided here.

valid(v) is the auditor's rule: `apply_block` on the replica's state accepts v, every
signature checked through the injected `verify_signatures` (by default right here; a node
skips what it checked on admission and checks the rest in a worker process); and v's header
names the validator that built it (the round's proposer for a new block, one of a round up
to `valid_round` for a block proposed again; the audit checks the weaker half, a turn up to
its certificate's round, `ledger.proposer.had_a_turn`). Before it
prevotes for or locks on v, the replica also requires v's time to be at most
BLOCK_TIME_DRIFT_MS_MAX after its own clock (the header's time is already after the parent's);
deciding (line 49, or a `Decision` message) needs only `apply_block`, so a validator with a
slow clock still follows the chain.

Never two messages for one slot: every message the replica signs is keyed by (height, round,
type) in `signed`; asking again returns the same message, byte for byte. A restarted replica
gets its durable log back through `signed` and re-uses it; its lock is the latest non-nil
precommit in that log, and it resumes at the latest round it signed in.

Messages are lost: every REBROADCAST_INTERVAL_MS the replica re-sends its own votes of the
current height, its proposal of the current round, and the prevotes that justify its
validRound. A message of an older height tells it the sender lags: it answers with
SendDecision, at most once per CATCH_UP_INTERVAL_MS per validator. A `Decision` for the
current height whose certificate verifies and whose block applies is decided at once.

What the replica takes and does not hold is counted in `dropped`, by why: the admission
status (`old`, `future`, `known`), the code of the failed check (e.g. `unknown_validator`,
`bad_signature`, `wrong_chain`, `not_proposer`), or `body_mismatch` for a proposal whose body
is not the one its header commits to. A handful of keys, so bounded; what an operator (through
/metrics) and the hostile-input catalogue read to see why a peer's messages count for nothing.

Evidence (a validator's two different messages for one slot, from `consensus.quorum`) is
held until a block records it, at most EVIDENCE_PENDING_MAX pieces, one per validator and
height (what the state records), and goes into every new block this replica proposes (the
oldest heights first; `build_block` leaves out what no longer holds, and takes at most
EVIDENCE_PER_BLOCK_MAX). Once a decided block's state records a validator's equivocation at a
height, or the height is too old for a block to carry (EVIDENCE_AGE_HEIGHTS_MAX), the replica
drops it. Other validators judge a proposal's evidence with everything else in `apply_block`.
Held evidence is not durable: a restarted replica has only what it sees again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from consensus.messages import (
    Decision,
    InvalidMessage,
    Message,
    Proposal,
    sign_proposal,
    sign_vote,
    verify_decision,
    verify_vote,
)
from consensus.quorum import PRECOMMIT, PREVOTE, PROPOSAL, Quorum, is_certified
from ledger.blocks import Block, Certificate, Validator, verify_certificate
from ledger.crypto import PrivateKey
from ledger.errors import LedgerError
from ledger.evidence import NO_ROUND, Evidence, Vote
from ledger.limits import (
    BLOCK_TIME_DRIFT_MS_MAX,
    CATCH_UP_HEIGHTS_MAX,
    CATCH_UP_INTERVAL_MS,
    EVIDENCE_AGE_HEIGHTS_MAX,
    EVIDENCE_PENDING_MAX,
    IDLE_REJECT_WAIT_MS,
    PROPOSER_WAIT_POLL_MS,
    REBROADCAST_INTERVAL_MS,
    ROUND_TIMEOUT_MS_BASE,
    ROUND_TIMEOUT_MS_DELTA,
    ROUND_TIMEOUT_MS_MAX,
)
from ledger.proposer import compute_proposer, had_a_turn
from ledger.state import State
from ledger.state_transition import (
    apply_block,
    build_block,
    check_block_body,
    first_that_applies,
)
from ledger.transactions import Envelope, check_signatures

NEW_HEIGHT: Final = "new_height"  # after a decision, before round 0 (`_is_idle`)
PROPOSE: Final = "propose"
REBROADCAST: Final = "rebroadcast"  # a timeout kind only, never a step
WAIT: Final = "wait"  # a timeout kind only: a proposer looking again for transactions
STEPS: Final = (NEW_HEIGHT, PROPOSE, PREVOTE, PRECOMMIT)  # in order
LONG_PAST_MS: Final = 2**62  # how long ago a time after now is taken to be (`_since`)
TIMEOUT_KINDS: Final = (*STEPS, REBROADCAST, WAIT)

TransactionSource = Callable[[State, int], Sequence[Envelope]]
"""Candidate transactions for a block on top of `state` at time `now_ms`, in order; the block
holds those that apply (`build_block` leaves out the rest)."""

SignatureCheck = Callable[[Sequence[Envelope]], list[LedgerError | None]]
"""For each envelope, in order, None or the error of its first bad signature
(`ledger.transactions.check_signatures`, the default). A node injects one that skips what it
checked on admission and checks the rest off its interpreter thread."""

SignedMessage = Vote | Proposal


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeout:
    height: int
    round: int
    step: str

    def __post_init__(self) -> None:
        assert self.step in TIMEOUT_KINDS, self.step


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """How long each step may take; defaults from ledger.limits."""

    base_ms: int = ROUND_TIMEOUT_MS_BASE
    delta_ms: int = ROUND_TIMEOUT_MS_DELTA
    max_ms: int = ROUND_TIMEOUT_MS_MAX
    rebroadcast_ms: int = REBROADCAST_INTERVAL_MS
    catch_up_ms: int = CATCH_UP_INTERVAL_MS
    drift_ms: int = BLOCK_TIME_DRIFT_MS_MAX
    propose_extra_ms: int = 0  # the propose step waits this much longer
    wait_poll_ms: int = PROPOSER_WAIT_POLL_MS  # how often a waiting proposer looks again
    # After a decision, how long an idle validator may wait for something to decide before
    # it starts the next height all the same: after an empty block never less than the
    # chain's block_interval_ms (0: no wait; an idle chain adds an empty block every interval).
    empty_block_ms: int = 0
    # How long an idle validator lets a waiting transaction fail on its state before it
    # rejects it (`Replica._has_transactions`): one that depends on another's, forwarded from
    # another validator a moment later, is not rejected for arriving first.
    reject_wait_ms: int = IDLE_REJECT_WAIT_MS

    def __post_init__(self) -> None:
        assert 0 < self.base_ms <= self.max_ms and self.delta_ms >= 0
        assert self.reject_wait_ms >= 0
        assert self.rebroadcast_ms > 0 and self.catch_up_ms >= 0 and self.drift_ms >= 0
        assert self.propose_extra_ms >= 0 and self.wait_poll_ms > 0
        assert self.empty_block_ms >= 0

    def for_round(self, round: int, step: str = PRECOMMIT) -> int:
        extra = self.propose_extra_ms if step == PROPOSE else 0
        return min(self.base_ms + round * self.delta_ms, self.max_ms) + extra


@dataclass(frozen=True, slots=True, kw_only=True)
class Persist:
    message: SignedMessage


@dataclass(frozen=True, slots=True, kw_only=True)
class Broadcast:
    message: Message


@dataclass(frozen=True, slots=True, kw_only=True)
class SendDecision:
    to: str
    height: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleTimeout:
    timeout: Timeout
    delay_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Decide:
    block: Block
    certificate: Certificate
    state: State


@dataclass(frozen=True, slots=True, kw_only=True)
class Reject:
    """Transactions this replica left out of a block it built, each with the rule it broke
    (or its bad signature) on the state it built on: the shell drops them from its pool and
    answers their submitters, as the single-validator producer does."""

    rejected: tuple[tuple[Envelope, LedgerError], ...]


Effect = Persist | Broadcast | SendDecision | ScheduleTimeout | Decide | Reject

_RULE_STEPS_MAX: Final = 10_000  # the rules always settle; this catches a bug that would loop


def _kept_key(vote: Vote) -> tuple[int, int, str]:
    """Where another validator's prevote kept for a lock is filed: its height, its round and
    its signer (its own slot is that validator's, not this replica's)."""
    return (vote.height, vote.round, vote.public_key)


def _slot(message: SignedMessage) -> tuple[int, int, str]:
    kind = message.vote_type if isinstance(message, Vote) else PROPOSAL
    return (message.height, message.round, kind)


class Replica:
    """One validator's Algorithm 1 state at its current height; see the module docstring."""

    def __init__(
        self,
        *,
        key: PrivateKey,
        state: State,
        last_certificate: Certificate | None,
        transactions: TransactionSource,
        signed: Sequence[SignedMessage] = (),
        timeouts: Timeouts | None = None,
        verify_signatures: SignatureCheck = check_signatures,
        proposal_transactions_max: int | None = None,
    ) -> None:
        """A replica at height `state.height + 1`. `last_certificate` commits the block at
        `state.height` (None at genesis); `signed` is this replica's durable log.
        `proposal_transactions_max` bounds the blocks it proposes in round 0 (at most the
        chain's `block_transactions_max`, the default); each later round halves it."""
        assert proposal_transactions_max is None or proposal_transactions_max >= 1
        self.proposal_transactions_max = proposal_transactions_max
        assert (last_certificate is None) == (state.height == 0)
        self.key = key
        self.public_key = key.public_key_hex
        self.chain_id = state.chain_id
        self.transactions = transactions
        self.verify_signatures = verify_signatures
        self.timeouts = timeouts or Timeouts()
        # What this replica signed, and the proposals it locked on (`_keep_locked_block`).
        self.signed: dict[tuple[int, int, str], SignedMessage] = {}
        # Other validators' prevotes that justified a lock, kept with its block.
        self._kept_votes: dict[tuple[int, int, str], Vote] = {}
        for message in signed:
            if message.height <= state.height:
                continue
            if isinstance(message, Vote) and message.public_key != self.public_key:
                assert message.vote_type == PREVOTE, "the log keeps others' prevotes only"
                self._kept_votes[_kept_key(message)] = message
                continue
            assert _slot(message) not in self.signed, "the log holds two messages for a slot"
            self.signed[_slot(message)] = message
        self.evidence: dict[str, Evidence] = {}  # by the state key that would record it
        # Peers' messages taken but not held, by why (an admission status, or the code of the
        # check that failed): what a validator's operator and the hostile-input tests see.
        self.dropped: dict[str, int] = {}
        # Proposals refused for a time past this clock's drift (`_is_valid`), and how far
        # ahead the last one was: a clock behind the others' shows here first.
        self.time_refusals = 0
        self.time_ahead_ms = 0
        self._time_refused: tuple[int, int] | None = None
        self._catch_up_sent: dict[str, int] = {}
        # Each validator's latest height this replica has seen it sign a vote at.
        self._signed_at: dict[str, int] = {}
        # Validators' messages new to this replica (held, a verified decision or old vote):
        # how a shell knows its peers reach it (anyone can post, or replay, a message).
        self.heard = 0
        self._decided_at = 0  # when the last height was decided here (clock of the caller)
        # Waiting transactions that fail on the state, by id: since when (`_failed_long_enough`);
        # and their failures on the state whose head is `_verdicts_head` (`_has_transactions`).
        self._failing: dict[str, int] = {}
        self._verdicts: dict[str, tuple[Envelope, LedgerError]] = {}
        self._verdicts_head = ""
        self._effects: list[Effect] = []
        self._now = 0
        self.quorum = Quorum(
            chain_id=self.chain_id,
            height=state.height + 1,
            validators=state.current_validators(),
            next_validators=state.next_validators(),
        )
        self._enter(state, last_certificate)

    # --- the height and round -----------------------------------------------------------------

    def _enter(self, state: State, last_certificate: Certificate | None) -> None:
        """Start height `state.height + 1` (the quorum has already moved there)."""
        self.state = state
        self.last_certificate = last_certificate
        self.height = state.height + 1
        assert self.quorum.height == self.height
        self.validators = state.current_validators()
        self.is_validator = any(v.public_key == self.public_key for v in self.validators)
        self.round = 0
        self.step = NEW_HEIGHT
        self.locked_round = NO_ROUND
        self.locked_hash: str | None = None
        self.valid_round = NO_ROUND
        self.valid_hash: str | None = None
        self._prevote_timeouts: set[int] = set()  # rounds where line 34 fired
        self._precommit_timeouts: set[int] = set()  # rounds where line 47 fired
        self._locked_rounds: set[int] = set()  # rounds where line 36 fired
        self._applied: dict[str, State | None] = {}  # block hash -> state after it, or invalid
        # Proposals of this height held before its parent was known: a body that does not
        # match its header gives its slot back (the real proposal is re-sent).
        self.quorum.current.drop_proposals(lambda proposal: not self._body_matches(proposal))
        for slot in [slot for slot in self.signed if slot[0] < self.height]:
            del self.signed[slot]
        for key in [key for key in self._kept_votes if key[0] < self.height]:
            del self._kept_votes[key]
        self._restore()

    def _restore(self) -> None:
        """Take back what the durable log says this replica signed at this height: its round
        and its lock. At a restart, and at each later height: a shell that makes a decided
        block durable while the replica goes on (`Decide`) may restart with messages of a
        height above the next one in its log."""
        mine = sorted(
            (message for message in self.signed.values() if message.height == self.height),
            key=_slot,
        )
        if not mine:
            return
        self.round = max(message.round for message in mine)
        for message in mine:
            admission = self.quorum.admit(message, current_round=self.round)
            assert admission.status in ("added", "known", "equivocation"), admission  # twins
            is_lock = isinstance(message, Vote) and message.vote_type == PRECOMMIT
            if is_lock and message.block_hash is not None:
                # Line 36 locked on what it precommitted; the latest lock wins.
                self.locked_round = self.valid_round = message.round
                self.locked_hash = self.valid_hash = message.block_hash
        # The prevotes that justified the locks: without them no other replica takes the
        # locked block proposed again (line 28 asks for them), nor does this one take it
        # from another proposer. They were checked when they came; the quorum checks again.
        for vote in self._kept_votes.values():
            if vote.height == self.height:
                self.quorum.admit(vote, current_round=self.round)

    def _start_round(self, round: int) -> None:
        """Algorithm 1 line 11."""
        self.round = round
        self.step = PROPOSE
        if self.is_validator and self.quorum.proposer(round) == self.public_key:
            proposal = self.signed.get((self.height, round, PROPOSAL))
            if proposal is None and self._waits_for_transactions(round):
                self._effects.append(
                    ScheduleTimeout(
                        timeout=Timeout(height=self.height, round=round, step=WAIT),
                        delay_ms=self.timeouts.wait_poll_ms,
                    )
                )
                return
            if proposal is None:
                proposal = self._new_proposal(round)
            self._emit(proposal)
            self.quorum.admit(proposal, current_round=round)
        else:
            self._schedule(PROPOSE, round)

    def _waits_for_transactions(self, round: int) -> bool:
        """A proposer whose round 0 began with nothing for it to propose (another
        validator's message woke it, or its pool's transactions went into the last block)
        waits for a transaction rather than propose an empty block at once, looking again
        every `wait_poll_ms`, for at most `block_interval_ms` after the decision and half the
        others' round 0 propose timeout (so they still get its proposal in time)."""
        if round != 0 or self.valid_hash is not None or self._decided_at == 0:
            return False
        longest = min(self.state.params.block_interval_ms, self.timeouts.for_round(0, PROPOSE) // 2)
        if self._since(self._decided_at) >= longest:
            return False
        return not self._has_transactions()

    def proposal_limit(self, round: int) -> int:
        """The most transactions this replica proposes in a new block at `round`: its bound
        (or the chain's) in round 0, halved each round after, at least one. A round that
        failed because its block took longer to build, send and validate than its timeouts
        allow is followed by one with less work, not more (the pool has grown meanwhile):
        under overload the chain goes on at what a round can carry instead of collapsing."""
        cap = self.state.params.block_transactions_max
        if self.proposal_transactions_max is not None:
            cap = min(cap, self.proposal_transactions_max)
        return max(cap >> min(round, cap.bit_length()), 1)

    def _new_proposal(self, round: int) -> Proposal:
        block = None if self.valid_hash is None else self._block(self.valid_hash)
        valid_round = self.valid_round
        if block is None or valid_round >= round:  # no validValue (or not its block): new
            candidates = self.transactions(self.state, self._now)[: self.proposal_limit(round)]
            checks = self.verify_signatures(candidates)
            bad = [(e, err) for e, err in zip(candidates, checks, strict=True) if err is not None]
            built = build_block(
                self.state,
                [e for e, error in zip(candidates, checks, strict=True) if error is None],
                time=self._now,
                proposer=self.public_key,
                last_commit=self.last_certificate,
                evidence=sorted(
                    self.evidence.values(), key=lambda item: (item.height, item.public_key)
                ),
                signatures_verified=True,
            )
            block, valid_round = built.block, NO_ROUND
            self._applied[block.block_hash()] = built.state
            # A bad signature never heals; a rule of the state may, once what the transaction
            # depends on has arrived (`_failed_long_enough`): until then it stays pending.
            rejected = (*bad, *self._failed_long_enough(built.rejected))
            if rejected:
                self._effects.append(Reject(rejected=rejected))
        return sign_proposal(
            self.key,
            chain_id=self.chain_id,
            height=self.height,
            round=round,
            valid_round=valid_round,
            block=block,
        )

    # --- events -------------------------------------------------------------------------------

    def on_start(self, now_ms: int) -> list[Effect]:
        self._begin(now_ms)
        self._effects.append(
            ScheduleTimeout(
                timeout=Timeout(height=self.height, round=0, step=REBROADCAST),
                delay_ms=self.timeouts.rebroadcast_ms,
            )
        )
        self._start_round(self.round)
        for vote_type in (PREVOTE, PRECOMMIT):  # resume where the log says this round stood
            vote = self.signed.get((self.height, self.round, vote_type))
            if vote is not None:
                self.step = vote_type
                self._emit(vote)
        self._run_rules()
        return self._end()

    def on_message(self, message: Message, now_ms: int) -> list[Effect]:
        self._begin(now_ms)
        if isinstance(message, Decision):
            self._on_decision(message)
        elif isinstance(message, Proposal) and not self._body_matches(message):
            self._drop("body_mismatch")  # a replayed signature with another body: not held
        else:
            admission = self.quorum.admit(message, current_round=self.round)
            if admission.error is not None:
                self._drop(admission.error.code)
            elif admission.status in ("old", "future", "known"):
                self._drop(admission.status)
            if admission.evidence is not None:
                self.add_evidence(admission.evidence)
            elif admission.status == "old" and isinstance(message, Vote):
                self._on_lagging(message)
            if admission.status == "added":
                self.heard += 1  # not for a copy ("known"): anyone can replay one
                if isinstance(message, Vote):
                    self._signed_at[message.public_key] = self.height
                if self.step == NEW_HEIGHT:
                    # Another validator has begun this height, or decided it already (a
                    # message of the next one): this replica's votes then bring it the block.
                    self._start_round(self.round)
                self._run_rules()
        return self._end()

    def on_timeout(self, timeout: Timeout, now_ms: int) -> list[Effect]:
        self._begin(now_ms)
        if timeout.step == REBROADCAST:
            self._rebroadcast()
            self._effects.append(
                ScheduleTimeout(timeout=timeout, delay_ms=self.timeouts.rebroadcast_ms)
            )
        elif timeout.height == self.height:
            self._on_step_timeout(timeout)
        self._run_rules()  # time moved: a block too far ahead a moment ago may be valid now
        return self._end()

    def silent_validators(self) -> tuple[Validator, ...]:
        """This height's validators, this one aside, that sent it nothing of this height (no
        proposal, no vote, in any round): what a height that does not end waits for."""
        heard = {key for senders in self.quorum.current.senders.values() for key in senders}
        return tuple(
            v
            for v in self.validators
            if v.public_key != self.public_key and v.public_key not in heard
        )

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def _begin(self, now_ms: int) -> None:
        assert not self._effects
        self._now = now_ms

    def _end(self) -> list[Effect]:
        effects, self._effects = self._effects, []
        return effects

    def _on_step_timeout(self, timeout: Timeout) -> None:
        """Algorithm 1 lines 57, 61 and 65, and the wait before a new height's round 0."""
        if timeout.step == NEW_HEIGHT:
            if self.step != NEW_HEIGHT:
                return
            if self._is_idle():
                self._effects.append(
                    ScheduleTimeout(timeout=timeout, delay_ms=self.timeouts.wait_poll_ms)
                )
            else:
                self._start_round(self.round)  # 0, unless the log says it signed later
            return
        if timeout.round != self.round:
            return
        if timeout.step == WAIT:
            if self.step == PROPOSE and (self.height, self.round, PROPOSAL) not in self.signed:
                self._start_round(self.round)
            return
        if timeout.step == PROPOSE and self.step == PROPOSE:
            self._vote(PREVOTE, None)
            self.step = PREVOTE
        elif timeout.step == PREVOTE and self.step == PREVOTE:
            self._vote(PRECOMMIT, None)
            self.step = PRECOMMIT
        elif timeout.step == PRECOMMIT:
            self._start_round(self.round + 1)

    def _is_idle(self) -> bool:
        """After a decision, whether round 0 of this height still waits: nothing to decide
        here and less than `empty_block_ms` since the decision. Something to decide is a
        transaction to propose, evidence to record, a change of the validator set under way
        (the new set governs from the height after this one, which should come without
        delay), or a validator's message of this height held already (it came before this
        replica decided the last height, and nothing would look at it again). A validator's
        message of this height or the next arriving during the wait ends it at once
        (`on_message`): another validator has something, its own wait ran out, or it has
        decided this height, which this replica's votes then bring it."""
        if self._decided_at == 0 or self._since(self._decided_at) >= self.timeouts.empty_block_ms:
            return False
        if self.evidence or self.quorum.following.validators != self.validators:
            return False
        if self.quorum.current.message_count():
            return False
        return not self._has_transactions()

    def _has_transactions(self) -> bool:
        """Whether a transaction waiting here would go into a block built now: one of the
        candidates applies to this replica's state (`first_that_applies`). When none does,
        each one that has failed for `reject_wait_ms` (`_failed_long_enough`), tried once
        more, is this replica's `Reject`, as a proposer leaves it out: a transaction the
        chain refuses does not start a height. Found by review: one transfer of an unknown
        batch had each validator start a height in turn, an empty block about every second,
        while it stayed in the pools of those that had not proposed yet; sent again, it
        started over.

        A verdict holds for the state it was reached on: while the head stays, a candidate
        that failed is not tried again at each look (every `wait_poll_ms`) until it is due,
        nor are its signer's later ones; only new candidates are (found by review: a pool of
        failing transactions cost ~95 ms of every 50 ms poll)."""
        candidates = self.transactions(self.state, self._now)
        if not candidates:
            self._failing, self._verdicts = {}, {}
            return False
        if self._verdicts_head != self.state.head_hash:
            self._verdicts, self._verdicts_head = {}, self.state.head_hash
        known = self._verdicts
        fresh = candidates  # under load, or after a new head: nothing known to pass over
        if known:
            held = {e.tx.signer for e in candidates if e.tx_id in known}
            fresh = [e for e in candidates if e.tx_id not in known and e.tx.signer not in held]
        applies, rejected = first_that_applies(self.state, fresh, time=self._now)
        if applies is not None:
            return True
        waiting = {e.tx_id for e in candidates}
        known.update((e.tx_id, (e, error)) for e, error in rejected)
        self._verdicts = {tx_id: v for tx_id, v in known.items() if tx_id in waiting}
        due = self._failed_long_enough(list(self._verdicts.values()))
        if not due:
            return False
        for envelope, _ in due:
            del self._verdicts[envelope.tx_id]
        # Once more, now: a rule of the time (a validity period) may hold since the first try.
        again, still = first_that_applies(self.state, [e for e, _ in due], time=self._now)
        if still:
            self._effects.append(Reject(rejected=still))
        return again is not None

    def _failed_long_enough(
        self, rejected: Sequence[tuple[Envelope, LedgerError]]
    ) -> tuple[tuple[Envelope, LedgerError], ...]:
        """Those of `rejected` (failing on the state now) that have failed for
        `reject_wait_ms`, since this replica first saw each fail, idle or building a block:
        one that depends on another (an issuance before its transfer) may reach this
        validator before it, forwarded from another validator a moment later, and a
        proposer's block tries candidates in their order of arrival. Only those failing now
        are remembered."""
        failing = {e.tx_id: self._failing.get(e.tx_id, self._now) for e, _ in rejected}
        wait = self.timeouts.reject_wait_ms
        due = tuple((e, error) for e, error in rejected if self._now - failing[e.tx_id] >= wait)
        for envelope, _ in due:
            del failing[envelope.tx_id]
        self._failing = failing
        return due

    def _on_decision(self, decision: Decision) -> None:
        if decision.height != self.height:
            self._drop("old" if decision.height < self.height else "future")
            return
        try:
            verify_decision(decision, chain_id=self.chain_id, validators=self.validators)
        except InvalidMessage as error:
            self._drop(error.code)
            return
        self.heard += 1
        state = self._applies(decision.block)
        if state is not None:
            self._decide(decision.block, decision.certificate, state)
            self._run_rules()

    def _on_lagging(self, vote: Vote) -> None:
        """A validator voted at a height decided here: send it that height's decision.

        Votes of the height just decided keep arriving for a moment after any decision (the
        precommits beyond the quorum); only after CATCH_UP_INTERVAL_MS do they mean that the
        sender is stuck there."""
        sender = vote.public_key
        if sender == self.public_key or all(v.public_key != sender for v in self.validators):
            return
        # A precommit for a block is what anyone can take from an export's certificates.
        # Answered, one replayed every 100 ms had taken the validator's catch-up slot from
        # its own votes, made this replica send up to CATCH_UP_HEIGHTS_MAX old blocks each
        # time, and (counted as hearing from a peer) put off the probe for good (found by
        # review). It is answered once, and only if its validator has signed at no later
        # height; its other votes always are: a validator that restarts lower (its last
        # decided block not yet durable) re-sends its prevotes from its log.
        # And an old vote, replayed, had made every correct validator send old blocks to
        # every peer once a second (review, decision 0006 "Open"). A vote older than its
        # validator's latest (or than one answered already) is answered from its height only
        # if recent (the validator restarted lower), and otherwise with the latest decision
        # alone: its certificate starts the validator's block sync, which brings the blocks
        # to it alone (a validator restarted far lower, that one peer reaches, had waited for
        # its probe; found by review). A certified precommit is answered only if both newer
        # and recent.
        certified = is_certified(vote)
        signed_at = self._signed_at.get(sender, 0)
        recent = self.height - vote.height <= CATCH_UP_HEIGHTS_MAX
        if certified and (vote.height <= signed_at or not recent):
            return
        start = vote.height if vote.height >= signed_at or recent else self.height - 1
        if (
            vote.height == self.height - 1
            and self._since(self._decided_at) < self.timeouts.catch_up_ms
        ):
            return
        last = self._catch_up_sent.get(sender)
        if last is not None and self._since(last) < self.timeouts.catch_up_ms:
            return
        # Only a vote its sender signed: a forged one would cost reads of old blocks and a
        # send of them, and take the sender's catch-up slot from its own votes.
        try:
            verify_vote(vote, chain_id=self.chain_id, validators=self.validators)
        except InvalidMessage as error:
            self._drop(error.code)
            return
        if vote.height >= signed_at and not certified:
            self.heard += 1  # a height it was not seen at: not a replay (found by review)
        self._catch_up_sent[sender] = self._now
        # Past the height answered: the same vote again (a replay of a silent validator's
        # last one, too) is no longer fresh, and draws the latest decision at most.
        self._signed_at[sender] = max(vote.height + 1, signed_at)
        self._effects.append(SendDecision(to=sender, height=start))

    def _rebroadcast(self) -> None:
        for slot, message in sorted(self.signed.items(), key=lambda item: item[0]):
            if slot[0] != self.height:
                continue
            # A proposal: this round's, and only its proposer's own, not one kept for a lock
            # (`_keep_locked_block`: every replica that locked would send the block again each
            # interval while the round lasts). Line 15 proposes a kept block in its turn.
            if isinstance(message, Vote) or (
                slot[1] == self.round and self.quorum.proposer(slot[1]) == self.public_key
            ):
                self._effects.append(Broadcast(message=message))
        justification = self.quorum.current.votes.get((self.valid_round, PREVOTE))
        if self.valid_hash is not None and justification is not None:
            for vote in justification.votes_for(self.valid_hash):
                if vote.public_key != self.public_key:
                    self._effects.append(Broadcast(message=vote))

    # --- the upon rules -----------------------------------------------------------------------

    def _run_rules(self) -> None:
        for _ in range(_RULE_STEPS_MAX):
            if not self._fire_one():
                return
        raise AssertionError("consensus rules did not settle")

    def _fire_one(self) -> bool:
        """Fire the first rule of Algorithm 1 whose condition holds; False if none does."""
        held = self.quorum.current
        for round, block_hash in held.precommit_quorums():  # line 49
            block = self._block(block_hash)
            state = None if block is None else self._applies(block)
            if block is not None and state is not None:
                precommits = held.vote_set(round, PRECOMMIT).votes_for(block_hash)
                self._decide(block, self._certificate(round, block_hash, precommits), state)
                return True
        skip = held.skip_round(self.round)  # line 55
        if skip is not None:
            self._start_round(skip)
            return True
        round = self.round
        proposal = held.proposals.get(round)
        if self.step == PROPOSE and proposal is not None:
            vr = proposal.valid_round
            if vr == NO_ROUND:  # line 22
                vote_for = self._is_valid(proposal) and (
                    self.locked_round == NO_ROUND or self.locked_hash == proposal.block_hash
                )
                self._vote(PREVOTE, proposal.block_hash if vote_for else None)
                self.step = PREVOTE
                return True
            if vr < round and held.has_quorum_for(vr, PREVOTE, proposal.block_hash):  # line 28
                vote_for = self._is_valid(proposal) and (
                    self.locked_round <= vr or self.locked_hash == proposal.block_hash
                )
                self._vote(PREVOTE, proposal.block_hash if vote_for else None)
                self.step = PREVOTE
                return True
        if (
            self.step == PREVOTE
            and round not in self._prevote_timeouts
            and held.has_quorum_any(round, PREVOTE)
        ):  # line 34
            self._prevote_timeouts.add(round)
            self._schedule(PREVOTE, round)
            return True
        if (
            self.step in (PREVOTE, PRECOMMIT)
            and proposal is not None
            and round not in self._locked_rounds
            and held.has_quorum_for(round, PREVOTE, proposal.block_hash)
            and self._is_valid(proposal)
        ):  # line 36
            self._locked_rounds.add(round)
            if self.step == PREVOTE:
                self._keep_locked_block(proposal)
                vote = self._vote(PRECOMMIT, proposal.block_hash)
                if vote is not None and vote.block_hash == proposal.block_hash:
                    self.locked_round, self.locked_hash = round, proposal.block_hash
                self.step = PRECOMMIT
            self.valid_round, self.valid_hash = round, proposal.block_hash
            return True
        if self.step == PREVOTE and held.has_quorum_for(round, PREVOTE, None):  # line 44
            self._vote(PRECOMMIT, None)
            self.step = PRECOMMIT
            return True
        if round not in self._precommit_timeouts and held.has_quorum_any(
            round, PRECOMMIT
        ):  # line 47
            self._precommit_timeouts.add(round)
            self._schedule(PRECOMMIT, round)
            return True
        return False

    # --- values -------------------------------------------------------------------------------

    def _block(self, block_hash: str) -> Block | None:
        """A block with this hash that this replica holds at its height, if any: proposed,
        or kept for a lock (an equivocating proposer's other proposal may hold the slot in
        the quorum, found by review)."""
        for proposal in self.quorum.current.proposals.values():
            if proposal.block_hash == block_hash:
                return proposal.block
        return self._signed_block(block_hash)

    def _signed_block(self, block_hash: str) -> Block | None:
        """A block of this height with this hash in a proposal the log holds."""
        for message in self.signed.values():
            if (
                isinstance(message, Proposal)
                and message.height == self.height
                and message.block_hash == block_hash
            ):
                return message.block
        return None

    def _body_matches(self, proposal: Proposal) -> bool:
        """A proposal of this height carries the body its header commits to
        (`check_block_body`). One of the next height is checked once this replica has its
        parent (`_enter` drops the held ones that fail)."""
        if proposal.height != self.height:
            return True
        try:
            check_block_body(self.state, proposal.block)
        except LedgerError:
            return False
        return True

    def _applies(self, block: Block) -> State | None:
        """The state after `block` if the ledger accepts it on this replica's state. The
        verdict is remembered by block hash only for a body that matches its header: the
        hash names the header alone, and another body must not speak for the real one."""
        block_hash = block.block_hash()
        if block_hash not in self._applied:
            try:
                check_block_body(self.state, block)
            except LedgerError:
                return None
            try:
                if any(error is not None for error in self.verify_signatures(block.transactions)):
                    self._applied[block_hash] = None
                else:
                    self._applied[block_hash] = apply_block(
                        self.state, block, signatures_verified=True
                    )
            except LedgerError:
                self._applied[block_hash] = None
        return self._applied[block_hash]

    def _is_valid(self, proposal: Proposal) -> bool:
        """valid(v) for voting: the block names its proposer truly (`_names_its_builder`),
        applies, and its time is not too far ahead of this validator's clock. A validator
        whose clock is behind by more than the drift therefore votes against every block but
        its own: it counts as faulty, as in Tendermint's proposer-based timestamps. Taking
        the parent's time as a floor of the clock would keep it voting, but would let one
        faulty proposer move the chain's time another drift ahead with each of its blocks
        (docs/decisions/0006). Such a refusal is counted (`time_refusals`, `time_ahead_ms`),
        so the operator is told (the node logs it)."""
        block = proposal.block
        if not self._names_its_builder(proposal):
            return False
        ahead = block.header.time - self._now
        if ahead > self.timeouts.drift_ms:
            if self._time_refused != (block.height, block.header.time):
                self._time_refused = (block.height, block.header.time)
                self.time_refusals += 1
                self.time_ahead_ms = ahead
            return False
        return self._applies(block) is not None

    def _names_its_builder(self, proposal: Proposal) -> bool:
        """The header's `proposer` is the validator that built the block: this round's
        proposer for a new block (Algorithm 1 line 15 proposes its own value unless it has
        a validValue), a proposer of a round up to `valid_round` for one proposed again. A
        block naming another validator would let the audit ask the wrong validator why it
        holds what it holds (found by review: a proposer framed another)."""
        named = proposal.block.header.proposer
        if proposal.valid_round == NO_ROUND:
            return named == compute_proposer(self.validators, self.height, proposal.round)
        return had_a_turn(self.validators, self.height, named, proposal.valid_round)

    def _since(self, then: int) -> int:
        """Milliseconds from `then` to now, on the caller's clock; a clock stepped back past
        `then` counts as long past, so no wait lasts the size of the step."""
        elapsed = self._now - then
        return elapsed if elapsed >= 0 else LONG_PAST_MS

    def _certificate(self, round: int, block_hash: str, precommits: list[Vote]) -> Certificate:
        certificate = Certificate(
            chain_id=self.chain_id,
            height=self.height,
            round=round,
            block_hash=block_hash,
            signatures=tuple((vote.public_key, vote.signature) for vote in precommits),
        )
        verify_certificate(  # our own work, checked from the other side before it is used
            certificate,
            chain_id=self.chain_id,
            height=self.height,
            block_hash=block_hash,
            validators=self.validators,
        )
        return certificate

    def _decide(self, block: Block, certificate: Certificate, state: State) -> None:
        self._decided_at = self._now
        self._effects.append(Decide(block=block, certificate=certificate, state=state))
        self.quorum.advance(next_validators=state.next_validators())
        self._enter(state, certificate)
        for key, evidence in list(self.evidence.items()):
            if not self._may_carry(evidence):
                del self.evidence[key]
        self._effects.append(
            ScheduleTimeout(
                timeout=Timeout(height=self.height, round=0, step=NEW_HEIGHT),
                # A block with transactions says more may be waiting: the next height may
                # start at once (as the solo producer cuts the next block once a full one is
                # written), when there is something to decide (`_is_idle`). After an empty
                # one, first the chain's pace (a validator's message ends it early).
                delay_ms=state.params.block_interval_ms if not block.transactions else 0,
            )
        )

    def add_evidence(self, evidence: Evidence) -> None:
        """Hold `evidence` for a block this replica proposes (bounded; once per validator and
        height; only while a block could still record it)."""
        key = evidence.state_key()
        if (
            key not in self.evidence
            and len(self.evidence) < EVIDENCE_PENDING_MAX
            and self._may_carry(evidence)
        ):
            self.evidence[key] = evidence

    def _may_carry(self, evidence: Evidence) -> bool:
        """Whether a block of this height or a later one could still record `evidence`: the
        state has not recorded that validator's equivocation at that height, and the height
        is not too old. (The quorum verified it when it arrived.)"""
        return (
            self.state.get(evidence.state_key()) is None
            and evidence.height >= self.height - EVIDENCE_AGE_HEIGHTS_MAX
        )

    # --- signing and sending ------------------------------------------------------------------

    def _vote(self, vote_type: str, block_hash: str | None) -> Vote | None:
        """Sign (or re-use) this replica's vote of `vote_type` at the current height and
        round; None if it is not a validator at this height."""
        if not self.is_validator:
            return None
        slot = (self.height, self.round, vote_type)
        vote = self.signed.get(slot)
        if vote is None:
            vote = sign_vote(
                self.key,
                chain_id=self.chain_id,
                vote_type=vote_type,
                height=self.height,
                round=self.round,
                block_hash=block_hash,
            )
        assert isinstance(vote, Vote)
        self._emit(vote)
        self.quorum.admit(vote, current_round=self.round)
        return vote

    def _keep_locked_block(self, proposal: Proposal) -> None:
        """Make durable, before the precommit that locks on it, the proposal that carries the
        block: a lock is a value, not a hash (line 36). Only this replica's own messages were
        durable, so one restarted after locking on another proposer's block knew its hash but
        no longer held it: it could not propose it again (line 15) and prevoted nil on every
        other block, and when no live validator held it either the height never ended (found
        by review: two of four restarted after locking, the proposer down). Kept in `signed`
        by its slot, which no message of this replica can take (a round has one proposer),
        it is admitted again at the restart (`_restore`)."""
        if not self.is_validator:
            return
        # One copy of a block: locked on again in a later round, it is not written again.
        if _slot(proposal) not in self.signed and self._signed_block(proposal.block_hash) is None:
            self.signed[_slot(proposal)] = proposal
            self._effects.append(Persist(message=proposal))
        # And the polka: a restarted replica that held the block but not the prevotes for it
        # proposed it again (line 15) with a valid round nobody could check, so no replica
        # prevoted it (line 28) and the height stalled as before (found testing the above).
        polka = self.quorum.current.votes.get((proposal.round, PREVOTE))
        for vote in () if polka is None else polka.votes_for(proposal.block_hash):
            if vote.public_key != self.public_key and _kept_key(vote) not in self._kept_votes:
                self._kept_votes[_kept_key(vote)] = vote
                self._effects.append(Persist(message=vote))

    def _emit(self, message: SignedMessage) -> None:
        """Send what this replica signed, persisting it first if it is new."""
        slot = _slot(message)
        if slot not in self.signed:
            self.signed[slot] = message
            self._effects.append(Persist(message=message))
        assert self.signed[slot] is message, "never two messages for one slot"
        self._effects.append(Broadcast(message=message))

    def _schedule(self, step: str, round: int) -> None:
        self._effects.append(
            ScheduleTimeout(
                timeout=Timeout(height=self.height, round=round, step=step),
                delay_ms=self.timeouts.for_round(round, step),
            )
        )
