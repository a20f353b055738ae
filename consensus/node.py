"""The BFT producer: the I/O shell that runs one pure `Replica` for a validator of a consortium.

It implements the `BlockProducer` interface the node's block loop drives (`produce(now_ms)`
is called often; `due` says whether there is work), and carries out the replica's effects in
order, as docs/decisions/0006 requires:

    Persist          `SignedLog.append_all` (a run of them at once, each line fsynced in
                     turn): written and fsynced before anything later happens, above all
                     the Broadcast of the same message (SPEC §5.4)
    Broadcast        gathered and handed to the `Transport` once the effects of one event are
                     carried out (after the Persists before them, so never before)
    SendDecision     the block and certificate of that height from the store, as a `Decision`,
                     and of the height after it (CATCH_UP_HEIGHTS_MAX; sent to every peer:
                     it is authenticated by its certificate; a lag beyond is block sync's)
    ScheduleTimeout  a timer on the monotonic clock; `produce` fires the due ones
    Decide           `Store.append` of block, certificate and state, exactly as SoloProducer
                     writes: on the write thread (`write_executor`) while the replica goes
                     on with the next height, one block at a time, in order; once it is
                     durable the pool and outcomes move on, readers see it, and the
                     signed-message log drops the decided heights (without an executor,
                     before any later effect)

Peers' batches arrive on any thread through `on_batch` (the route's inbox, docs/decisions/0006
"Pool forwarding" and "Blocks larger than a request body"): transactions new here are admitted
to the pool as forwarded ones (their signatures checked once, in the signature worker, and
never forwarded again: every validator forwards only what its own clients submitted, to
every peer); blocks sent by reference are completed from the pool and the `consensus.relay`
holding; a message is queued only if it is signed for what it is (`_authentic`: a vote by
a validator, a proposal by its round's proposer, a decision with its certificate, each of a
height the replica can take but a vote, whose old ones tell it a validator lags): otherwise
anyone's messages could push the real ones out of the queue. Votes and blocks wait apart
(at most PEER_QUEUE_MESSAGES_MAX votes, of a decided height only each validator's latest,
and PEER_QUEUE_MESSAGES_MAX messages with a block within about PEER_QUEUE_BYTES_MAX bytes,
the oldest of each dropped and counted: blocks never push votes out) and are fed to the
replica in the order they came, on the block-loop thread: the replica is touched by one
thread only. The replica checks every signature and certificate again, and the rest; what
it refuses is dropped there.

Two states: `state` is the committed one (durable: what readers see and the store holds),
the tip is the replica's (decided, perhaps still being written). Nonces count from the tip,
so a transaction in a block being written is not offered again; a decided block's
transactions stay in the pool, pending, until it is durable (as `SoloProducer` keeps them),
and nothing is answered committed before. The replica goes on meanwhile, which is safe: what
it signs at later heights is fsynced in its log first, and a restarted replica takes back
its round and lock at each height from that log (`consensus.replica`).

Signatures are checked once per node: the replica is given `verify_signatures`, which passes
every transaction this node admitted (the same leaf: a transaction signed otherwise is
checked anew) and sends the rest to the signature worker, off the interpreter's GIL.

The replica is built from the store (state, last certificate) and the signed-message log, so a
restarted validator re-sends what it signed, byte for byte, and signs nothing new for a slot
it used. Wall-clock `now_ms` (from the caller) gives block times; the timers run on
`time.monotonic`, so a clock step never fires or delays a timeout. The replica's own spans
(the wait for something to decide, catch-up answers) are on the wall clock: a clock stepped
back past their start counts as long past, so a step ends such a wait early, never holds it.

Far behind (peers' messages show at least SYNC_LAG_HEIGHTS_MIN heights decided above its
store), it catches up by block sync (`consensus.sync`) before it takes part again: each
verified block is stored as a decided one, and once none is missing the replica is built
anew from the store and the signed-message log at the new height.

A store behind the heights this validator signed at and then forgot (the log's
`decided_height`: a store rebuilt from its peers, `tanlian node --resync`) would let a replica
sign a second message for a slot it used. Until block sync brings the store up to that height
the replica is not started, hears nothing and signs nothing (`_below_decided`); then it is
built from the store and the log as at a restart.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from typing import Any, Final

from consensus.messages import (
    ConsensusError,
    Decision,
    Message,
    Proposal,
    Vote,
    verify_decision,
    verify_proposal,
    verify_vote,
)
from consensus.pool import Pool
from consensus.producer import (
    CommittedBlock,
    Outcome,
    committed_outcomes,
    is_authentic,
    refusal,
    reject_stale,
    remember,
    settle_pool,
)
from consensus.quorum import is_certified
from consensus.relay import Reference, Relay, decode_batch
from consensus.replica import (
    NEW_HEIGHT,
    Broadcast,
    Decide,
    Effect,
    Persist,
    Reject,
    Replica,
    ScheduleTimeout,
    SendDecision,
    Timeout,
    Timeouts,
)
from consensus.sync import BlockSync
from consensus.transport import Transport
from consensus.wal import SignedLog
from ledger.blocks import Block, Certificate
from ledger.crypto import PrivateKey
from ledger.encoding import canonical
from ledger.errors import LedgerError, StoreError, printable
from ledger.evidence import Evidence, verify_evidence
from ledger.limits import (
    CATCH_UP_HEIGHTS_MAX,
    EMPTY_BLOCK_INTERVAL_MS_DEFAULT,
    EVIDENCE_PENDING_MAX,
    HEIGHTS_AHEAD_MAX,
    PEER_MESSAGE_BYTES_BASE,
    PEER_QUEUE_BYTES_MAX,
    PEER_QUEUE_MESSAGES_MAX,
    PROPOSAL_TRANSACTIONS_MAX,
    PROPOSE_TIMEOUT_MS_EXTRA,
    RELAY_BLOCKS_HELD,
    STALE_CHECK_MS,
    SYNC_LAG_HEIGHTS_MIN,
    SYNC_PROBE_MS,
)
from ledger.state import State
from ledger.state_transition import check_block_body
from ledger.store import Store
from ledger.transactions import Envelope

log = logging.getLogger("tanlian.consensus.node")

CLOCK_WARNING_MS: Final = 60_000  # at most one warning of proposals refused for their time
# A height under way this long, undecided, is said in the log (`BftProducer._say_if_stalled`):
# a stopped proposer costs a height ~4 s (its round 0); with more than a third of the power
# missing, the rest wait in round 0 for votes that never come, and no timeout moves them on.
STALL_LOG_AFTER_MS: Final = 15_000
STALL_LOG_MS: Final = 60_000  # then at most once this often while the height lasts
# Votes remembered as checked (`BftProducer._seen_vote`): a few heights' worth of every
# validator's votes and re-sends, so copies cost a lookup, not a signature check.
VOTES_CHECKED_MAX: Final = 4096


def message_bytes(message: Message) -> int:
    """What a peer's message counts against PEER_QUEUE_BYTES_MAX: PEER_MESSAGE_BYTES_BASE,
    and its block's encoding, evidence and last commit included (its transactions shared
    with the pool when they came by reference: an overcount, on the safe side), and a
    decision's certificate."""
    if isinstance(message, Vote):
        return PEER_MESSAGE_BYTES_BASE
    # `Block.canonical_bytes` less its transactions, and each leaf with its comma, counted
    # without joining them: nothing of a message is checked before it is counted, so the
    # count must not cost what the message claims.
    block = message.block
    skeleton = dataclasses.replace(block, transactions=())
    size = PEER_MESSAGE_BYTES_BASE + len(skeleton.canonical_bytes())
    size += sum(len(envelope.leaf) for envelope in block.transactions)
    size += max(len(block.transactions) - 1, 0)  # the commas between them
    if isinstance(message, Decision):
        size += len(canonical(message.certificate.to_json()))
    return size


def _vote_key(vote: Vote) -> tuple[object, ...]:
    return (vote.chain_id, vote.vote_type, vote.height, vote.round, vote.block_hash,
            vote.public_key, vote.signature)  # fmt: skip


def _monotonic_ms() -> int:
    return int(time.monotonic() * 1000)


def _names(state: State, key: PrivateKey) -> bool:
    """`key` is in the set governing the next height, or in the one after it (a
    set_validators decided at the head governs from two heights on)."""
    public = key.public_key_hex
    return any(v.public_key == public for v in (*state.current_validators(),
                                                *state.next_validators()))  # fmt: skip


def _check_membership(state: State, key: PrivateKey, *, can_sync: bool) -> bool:
    """Whether `key` is joining: not a validator at the store's head, but block sync may
    bring the store to a height where it is one (a validator brought in by set_validators
    whose store is below the height its set governs from: a new member, or a store rebuilt
    by `--resync`). Its replica signs nothing where it is no validator, and `produce` stops
    it once it has caught up with its peers and still no set names it (a wrong key). With
    no peer to sync from, such a key is refused at once."""
    if _names(state, key):
        return False
    if not can_sync:
        raise LedgerError("this key is not a validator of the chain", code="not_a_validator")
    log.warning(
        "this key is not a validator at height %d: following the chain until a"
        " set_validators makes it one",
        state.height,
    )
    return True


class BftProducer:
    """One validator of a consortium; see the module docstring."""

    def __init__(
        self,
        store: Store,
        validator_key: PrivateKey,
        *,
        log: SignedLog,
        transport: Transport | None = None,
        pool: Pool | None = None,
        timeouts: Timeouts | None = None,
        clock_ms: Callable[[], int] = _monotonic_ms,
        sync: BlockSync | None = None,
        write_executor: Executor | None = None,
        proposal_transactions_max: int | None = PROPOSAL_TRANSACTIONS_MAX,
    ) -> None:
        """`write_executor` (one thread) makes decided blocks durable while the replica goes
        on; None: in the caller's thread, before anything else. `proposal_transactions_max`
        bounds this validator's proposals (`Replica.proposal_limit`)."""
        self.store = store
        self.sync = sync
        self.key = validator_key
        self.log = log
        self.transport = transport
        self.pool = pool if pool is not None else Pool()
        self._clock_ms = clock_ms
        self._state = store.load_state()
        self.pool.chain_id = self._state.chain_id
        self._tip = self._state  # the replica's: decided, perhaps not yet durable
        self._write_executor = write_executor
        self._writing: deque[tuple[Decide, Future[None]]] = deque()  # in height order
        # The transactions of decided blocks not yet durable: resubmitted, one is pending (it
        # is committed once its block is written), not refused for the nonce it used.
        self._unsettled: set[str] = set()
        self.proposal_transactions_max = proposal_transactions_max
        self._joining = _check_membership(self._state, validator_key, can_sync=sync is not None)
        self._lock = threading.Lock()  # the pool, the outcomes, the inbox
        # The highest height each validator's own signed message showed decided (`_hint`).
        self._claims: dict[str, int] = {}
        self._claims_lock = threading.Lock()
        # When a peer's batch last came, and when this validator last asked (`_probe_due`).
        self._heard_at = self._probed_at = clock_ms()
        # The height of a far decision `_hint` could not check against the head's sets (the
        # set changed since): the next probe is due SYNC_PROBE_MS after the last, not after
        # a silence, which such a decision's sender does not keep.
        self._beyond_sets: int | None = None
        self._under_way: tuple[int, int] | None = None  # (height, since) `_say_if_stalled`
        self._stall_logged: tuple[int, int] | None = None  # (height, when) said
        self.probes = 0  # sync attempts made because no peer said anything for SYNC_PROBE_MS
        self.rejections = 0  # `Reject`s carried out: their submitters are to hear it
        self.outcomes: OrderedDict[str, Outcome] = OrderedDict()
        # Peers' messages waiting for the replica, each with its arrival number (`on_messages`):
        # votes apart from proposals and decisions, these with their `message_bytes`, and of
        # votes of a decided height only each validator's latest of each kind (`on_messages`).
        self._inbox_votes: deque[tuple[int, Vote]] = deque()
        self._inbox_old_votes: dict[tuple[str, bool], tuple[int, Vote]] = {}
        # Votes whose signatures `_authentic` checked lately (`_seen_vote`), oldest first.
        self._votes_checked: OrderedDict[tuple[object, ...], None] = OrderedDict()
        self._inbox: deque[tuple[int, Proposal | Decision, int]] = deque()
        self._inbox_bytes = 0
        self._arrivals = 0
        # Peers' messages not queued (`_authentic`, `on_messages`), by why: the replica's names.
        self.refused: dict[str, int] = {}
        # Evidence met outside the consensus messages (a fork's proof), for the replica.
        self._evidence_inbox: list[Evidence] = []
        self._stale_checked_ms = 0  # when the pool was last rid of stale transactions
        self.messages_dropped = 0
        self.signatures_checked = 0  # by `_verify_signatures`, for the replica
        self.time_refusals = 0  # proposals refused for their time, every replica's
        self._time_refusals_seen = 0  # the count of `_time_replica`, last looked at
        self._time_replica: Replica | None = None
        self._clock_warned_ms: int | None = None
        self.signatures_reused = 0  # passed there: checked on admission
        self._timers: list[tuple[int, int, Timeout]] = []
        self._timer_sequence = 0
        self._committed: deque[CommittedBlock] = deque()
        self._started = False
        self.relay = Relay(held_max=RELAY_BLOCKS_HELD * self._state.params.block_transactions_max)
        self.replica = self._new_replica(
            timeouts
            or Timeouts(
                propose_extra_ms=PROPOSE_TIMEOUT_MS_EXTRA,
                empty_block_ms=EMPTY_BLOCK_INTERVAL_MS_DEFAULT,
            )
        )

    def _new_replica(self, timeouts: Timeouts) -> Replica:
        """A replica at the height after the store's head, as at a start: from the store and
        the signed-message log (it re-uses what it signed, byte for byte)."""
        return Replica(
            key=self.key,
            state=self._state,
            last_certificate=self.store.last_certificate(),
            transactions=self._candidates,
            signed=self.log.read(),
            timeouts=timeouts,
            verify_signatures=self._verify_signatures,
            proposal_transactions_max=self.proposal_transactions_max,
        )

    # --- the BlockProducer interface ------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    def pending_count(self) -> int:
        return len(self.pool)

    def due(self, now_ms: int) -> bool:
        if self._below_decided():
            return bool(self._committed) or (
                self.sync is not None and self.sync.is_behind(self._tip.height, lag=1)
            )
        if not self._started or self._committed or self._inbox or self._inbox_votes:
            return True
        if self._inbox_old_votes:
            return True
        if self._writing and self._writing[0][1].done():
            return True
        if self.sync is not None and self.sync.is_behind(self._tip.height):
            return True
        if self._probe_due():
            return True
        return bool(self._timers) and self._timers[0][0] <= self._clock_ms()

    def _probe_due(self) -> bool:
        """No peer has sent anything for SYNC_PROBE_MS, nor has this validator asked them
        since: peers that cannot reach it (it restarted on an address they do not know) send
        it nothing, so no message would say it is behind. Peers that can reach it re-send
        their latest messages every REBROADCAST_INTERVAL_MS while a height is under way, and
        an idle chain still decides a block every empty-block interval (at least the block
        interval): twice that is added."""
        if self.sync is None:
            return False
        now = self._clock_ms()
        if self._beyond_sets is not None and now - self._probed_at >= SYNC_PROBE_MS:
            return True  # a far decision this validator's sets cannot check (`_hint`)
        idle = max(self._state.params.block_interval_ms, self.replica.timeouts.empty_block_ms)
        quiet = SYNC_PROBE_MS + 2 * idle
        return min(now - self._heard_at, now - self._probed_at) >= quiet

    def _probe(self) -> None:
        """One sync attempt however little peers' messages said: asks each peer for its head
        (a head above this validator's is then fetched and verified, as any range)."""
        assert self.sync is not None
        beyond, self._beyond_sets = self._beyond_sets, None
        if beyond is not None:
            log.warning(
                "a peer sent the decision of height %d, certified by a validator set this"
                " node's head (height %d) does not know: the set has changed since; asking"
                " the peers for their heads",
                beyond,
                self._tip.height,
            )
        else:
            log.warning(
                "no message from any peer for %d s (height %d): asking them for their heads;"
                " check that they can reach this node (their --peer URL for it)",
                (self._clock_ms() - self._heard_at) // 1000,
                self._tip.height,
            )
        self._probed_at = self._clock_ms()
        self.probes += 1
        self.sync.probe()

    def submit(
        self,
        envelopes: Sequence[Envelope],
        signature_checks: Sequence[LedgerError | None] | None = None,
    ) -> list[Outcome]:
        """Admit envelopes to the pool (pending, or rejected with its code). The replica takes
        them from the pool when this validator proposes. One in a decided block still being
        written is pending too, whether or not the pool held it (a restart re-decides from
        the signed-message log; a peer proposes). `signature_checks`, where given, are the
        envelopes' checks made already."""
        checks = (
            self.pool.check_signatures(envelopes) if signature_checks is None else signature_checks
        )
        answers = []
        with self._lock:
            admissions = self.pool.admit(
                envelopes, checks, self._tip_account, tip_behind=self._tip_behind()
            )
            fresh = [admission.envelope for admission in admissions if admission.new]
            for admission, check in zip(admissions, checks, strict=True):
                envelope, error = admission.envelope, admission.error
                if error is None or (check is None and envelope.tx_id in self._unsettled):
                    self.outcomes.pop(envelope.tx_id, None)
                    answers.append(Outcome(tx_id=envelope.tx_id, status="pending"))
                else:
                    account = self._tip_account(envelope.tx.signer)
                    authentic = is_authentic(check, account, envelope)
                    answers.append(refusal(self.outcomes, envelope, error, authentic=authentic))
        if fresh and self.transport is not None:
            self.transport.forward(fresh)
        return answers

    def produce(self, now_ms: int) -> CommittedBlock | None:
        """Feed the replica what is due (its start, peers' messages, timeouts), carry out its
        effects, and return a block decided since the last call, if any."""
        self._finish_writes(wait=False)
        if self._below_decided():
            return self._sync_to_decided()
        if self._probe_due():
            self._probe()
        if self.sync is not None and self.sync.is_behind(self._tip.height):
            self._finish_writes(wait=True)  # sync and rejoining start from the store
            if not self._committed:  # one range at a time: the last one's blocks go first
                self.sync.step(self._state, self._append_synced)
            if self._committed and self.sync.is_behind(self._state.height):
                return self._committed.popleft()  # more to fetch before taking part
        if self.replica.height <= self._tip.height:
            self._finish_writes(wait=True)
            self._rejoin()
        if self._joining:
            self._check_joining()
        elif not _names(self._tip, self.key) and not (
            self.sync is not None and self.sync.is_behind(self._tip.height)
        ):
            self._left_the_set()  # caught up: a later set may name it again while behind
        self._take_evidence()  # before a start, whose proposal may carry it
        if not self._started:
            self._started = True
            self._carry_out(self.replica.on_start(now_ms))
        with self._lock:
            blocks = ((arrival, message) for arrival, message, _ in self._inbox)
            old = sorted(self._inbox_old_votes.values(), key=lambda item: item[0])
            waiting = heapq.merge(self._inbox_votes, blocks, old, key=lambda item: item[0])
            messages = [message for _, message in waiting]
            self._clear_inbox()
        heard = self.replica.heard
        for message in messages:
            self._carry_out(self.replica.on_message(message, now_ms))
        if self.replica.heard != heard:
            # A validator's message, not any post: a stranger's every minute, malformed or
            # forged, had put off the probe for good (found by review).
            self._heard_at = self._clock_ms()
        while self._timers and self._timers[0][0] <= self._clock_ms():
            _, _, timeout = heapq.heappop(self._timers)
            self._carry_out(self.replica.on_timeout(timeout, now_ms))
        self._note_time_refusals()
        self._say_if_stalled()
        self._reject_stale()
        return self._committed.popleft() if self._committed else None

    def _say_if_stalled(self) -> None:
        """A height under way (past its start, `NEW_HEIGHT`) for STALL_LOG_AFTER_MS, undecided,
        is said in the log, then at most every STALL_LOG_MS: which validators sent nothing of
        it, with their share of the power. Found by review: a set_validators that gave most
        of the power to a key whose node was not running stalled the chain for minutes
        without a line in any validator's log."""
        replica = self.replica
        if replica.step == NEW_HEIGHT or not replica.is_validator:
            return
        now = self._clock_ms()
        began = self._under_way
        if began is None or began[0] != replica.height:
            self._under_way = (replica.height, now)
            return
        logged = self._stall_logged
        if now - began[1] < STALL_LOG_AFTER_MS or (
            logged is not None and logged[0] == replica.height and now - logged[1] < STALL_LOG_MS
        ):
            return
        self._stall_logged = (replica.height, now)
        silent = replica.silent_validators()
        total = sum(v.power for v in replica.validators)
        if silent:
            log.warning(
                "height %d has been under way for %d s (round %d), undecided: nothing of it"
                " from %s, with %d of the %d power; more than 2/3 of the power must take part:"
                " check that they run and that this node and they reach each other (--peer)",
                replica.height,
                (now - began[1]) // 1000,
                replica.round,
                ", ".join(f"{printable(v.name)} ({v.public_key[:12]})" for v in silent),
                sum(v.power for v in silent),
                total,
            )
        else:
            log.warning(
                "height %d has been under way for %d s (round %d), undecided: every validator"
                " sent messages of it, but no block had more than 2/3 of the power's votes (a"
                " validator's clock, or proposals the others refuse: see their logs)",
                replica.height,
                (now - began[1]) // 1000,
                replica.round,
            )

    def _reject_stale(self) -> None:
        """Every STALE_CHECK_MS, not only when a block is committed: an idle consortium
        commits none for up to its empty-block interval, and a transaction waiting behind a
        missing nonce is to be answered rejected after the pool's gap wait (found by
        review: after up to a minute)."""
        now = self._clock_ms()
        if now - self._stale_checked_ms < STALE_CHECK_MS or self._writing:
            return  # while a decided block is written, its nonces are not yet committed ones
        self._stale_checked_ms = now
        with self._lock:
            reject_stale(self.pool, self.outcomes, self._committed_nonce)

    def hold_evidence(self, evidence: Sequence[Evidence]) -> None:
        """Evidence this node met outside the consensus messages (any thread): a fork's
        duplicate precommits, which block sync found (`consensus.sync.ForkProof`). Checked
        against the set that governed its height, the replica holds it for the blocks this
        validator proposes, as evidence it met itself, so the chain records who signed
        both. At most EVIDENCE_PENDING_MAX wait."""
        with self._lock:
            room = EVIDENCE_PENDING_MAX - len(self._evidence_inbox)
            self._evidence_inbox.extend(evidence[: max(room, 0)])

    def _take_evidence(self) -> None:
        with self._lock:
            taken, self._evidence_inbox = self._evidence_inbox, []
        for evidence in taken:
            validators = self._tip.governing_validators(evidence.height)
            try:
                if validators is None:
                    raise LedgerError(
                        f"its height {evidence.height} is too old or too new to check here"
                    )
                verify_evidence(evidence, chain_id=self._tip.chain_id, validators=validators)
            except LedgerError as error:
                log.warning("evidence against %s not held: %s", evidence.public_key, error)
                continue
            self.replica.add_evidence(evidence)

    def _note_time_refusals(self) -> None:
        """Count the proposals the replica refused for their time, and say so in the log (at
        most once every CLOCK_WARNING_MS): a validator whose clock is behind the others' by
        more than the drift votes against every block but its own, and had said nothing."""
        if self._time_replica is not self.replica:  # built again: it counts from 0
            self._time_replica, self._time_refusals_seen = self.replica, 0
        refusals = self.replica.time_refusals
        new = refusals - self._time_refusals_seen
        self._time_refusals_seen = refusals
        if new == 0:
            return
        self.time_refusals += new
        now = self._clock_ms()
        if self._clock_warned_ms is not None and now - self._clock_warned_ms < CLOCK_WARNING_MS:
            return
        self._clock_warned_ms = now
        log.warning(
            "refused a proposal stamped %.1f s ahead of this machine's clock (the bound is "
            "%.0f s; %d refused so far): if this clock is behind, set it right (NTP), for a "
            "validator whose clock is behind votes against every block but its own",
            self.replica.time_ahead_ms / 1000,
            self.replica.timeouts.drift_ms / 1000,
            self.time_refusals,
        )

    def _check_joining(self) -> None:
        """A joining validator (see `_check_membership`) is one once a set names it; caught up
        with what its peers say is decided while none does, its key is not one of the
        chain's validators: stop (not_a_validator) rather than run one validator short."""
        if _names(self._tip, self.key):
            self._joining = False
            return
        assert self.sync is not None
        heard = self.sync.heard_height
        if heard > 0 and self._tip.height >= heard:
            raise LedgerError(
                f"this key is not a validator of the chain: synced to height"
                f" {self._tip.height}, the peers' head, and no validator set names it",
                code="not_a_validator",
            )

    def _left_the_set(self) -> None:
        """A validator a set_validators left out has no part once the last height its set
        governed is decided (neither the next height's set nor the one after names its key):
        stop (not_a_validator), every decided block written. Found by review: left running,
        it went on storing blocks and signing nothing, its /healthz "ok" and its log silent,
        where the README says such a key stops."""
        self._finish_writes(wait=True)
        height = self._tip.height
        raise LedgerError(
            f"this key is no longer a validator: a set_validators left it out of the set"
            f" governing height {height + 1} on; every block up to height {height} is stored"
            " (to keep following the chain, run a follower: tanlian node --follow URL)",
            code="not_a_validator",
        )

    def take_settled(self) -> list[CommittedBlock]:
        """The blocks made durable that `produce` has not returned yet, in order: a call that
        settles several and then fails (the log on a full disk, the store) leaves them here,
        and the node reports them as it stops."""
        settled = list(self._committed)
        self._committed.clear()
        return settled

    # --- peers ----------------------------------------------------------------------------------

    def on_batch(self, body: bytes) -> int:
        """The route's inbox (any thread): a peer's batch (`consensus.relay.decode_batch`;
        `MalformedMessage` refuses it whole). Returns how many lines it held.

        A forwarded transaction the relay holds but the pool does not is admitted again from
        the relay's copy, unparsed: a validator forwards one only when its pool took it anew,
        so it is one resubmitted after this pool let it go (rejected on an earlier state, or
        refused while the pool was full). Skipped as known, it had reached no pool but its
        entry validator's, which alone could then propose it (found by review: 4-12 s and
        empty blocks, and no commit at all while that validator was stopped)."""
        again: list[Envelope] = []

        def known(leaf: bytes) -> bool:
            if self.pool.by_leaf_hash(leaf) is not None:
                return True
            held = self.relay.lookup(leaf)
            if held is not None:
                again.append(held)
            return held is not None

        batch = decode_batch(
            body, transaction_bytes_max=self._state.params.transaction_bytes_max, known=known
        )
        if batch.envelopes or again:
            self._admit_forwarded([*batch.envelopes, *again])
        messages = self.relay.receive(
            batch.messages,
            self._lookup_leaf,
            height_min=self._tip.height + 1,
            refuses=self._refuses_reference,
        )
        if messages:
            self.on_messages(messages)
        return batch.lines

    def _authentic(self, messages: Sequence[Message]) -> list[Message]:
        """Of peers' messages, those worth the replica's queue: each signed for what it is.
        A vote by a validator of the set governing the next height or the one after, its
        signature checked (of any height: an old one is how a validator behind asks for
        blocks). A proposal of the next height or the one after, signed by the proposer of
        its round; a decision of the same heights (a catch-up answer holds two: the replica
        takes them in order), with a certificate of the set governing it. A proposal or
        decision of the next height must carry the body its header commits to (a replayed
        signature with other transactions). Review found a post of 48 made-up proposals by
        reference, their transactions any the relay held, counted 63 MiB against the queue
        and pushed out the votes and the real proposal waiting there; a second review, that
        a stranger's votes did the same to the votes; and old decisions (a catch-up answer
        meant for a peer behind) were queued only for the replica to drop them. What is left
        out is counted in `refused`, under the name the replica gives it."""
        tip = self._tip
        current, following = tip.current_validators(), tip.next_validators()
        voters = [*current, *(v for v in following if v not in current)]
        kept: list[Message] = []
        for message in messages:
            height = message.height
            reason = None
            if isinstance(message, Vote):
                if height > tip.height + 1 + HEIGHTS_AHEAD_MAX:
                    reason = "future"  # the replica holds none: not worth a check
                elif not self._seen_vote(message):
                    try:
                        verify_vote(message, chain_id=tip.chain_id, validators=voters)
                        self._saw_vote(message)
                    except ConsensusError as error:
                        reason = error.code
            elif height <= tip.height:
                reason = "old"
            elif height > tip.height + 1 + HEIGHTS_AHEAD_MAX:
                reason = "future"
            else:
                ahead = height > tip.height + 1
                validators = following if ahead else current
                try:
                    if isinstance(message, Decision):
                        verify_decision(message, chain_id=tip.chain_id, validators=validators)
                    else:
                        verify_proposal(message, chain_id=tip.chain_id, validators=validators)
                    if not ahead:
                        check_block_body(tip, message.block)
                except ConsensusError as error:
                    reason = error.code
                except LedgerError:
                    reason = "body_mismatch"
            if reason is None:
                kept.append(message)
            else:
                with self._lock:
                    self.refused[reason] = self.refused.get(reason, 0) + 1
        return kept

    def _seen_vote(self, vote: Vote) -> bool:
        """`vote`, every field and its signature, was checked here lately: a copy (each
        validator re-sends its votes every REBROADCAST_INTERVAL_MS) is not checked again."""
        with self._lock:
            return _vote_key(vote) in self._votes_checked

    def _saw_vote(self, vote: Vote) -> None:
        with self._lock:
            self._votes_checked[_vote_key(vote)] = None
            self._votes_checked.move_to_end(_vote_key(vote))
            while len(self._votes_checked) > VOTES_CHECKED_MAX:
                self._votes_checked.popitem(last=False)

    def _refuses_reference(self, reference: Reference) -> bool:
        """A block by reference that lists more transactions than a block may hold, or one
        leaf twice (no valid block does: a transaction's nonce is used once), at any height:
        it would otherwise be filled in from the relay, thousands of copies of one held
        transaction, before anything of it is checked. And one of the next height whose leaf
        hashes, evidence or last commit are not what its header commits to
        (`check_block_body`: a replayed signature); one of a later height is left to the
        replica, which checks it once it has the parent."""
        hashes = reference.block.leaf_hashes
        if len(hashes) > self._state.params.block_transactions_max or len(set(hashes)) != len(
            hashes
        ):
            return True
        tip = self._tip
        if reference.block.skeleton.height != tip.height + 1:
            return False
        try:
            check_block_body(tip, reference.block.skeleton, leaf_hashes=reference.block.leaf_hashes)
        except LedgerError:
            return True
        return False

    def _admit_forwarded(self, envelopes: Sequence[Envelope]) -> None:
        """Transactions from a peer: into the pool within its forwarded share, and into the
        relay (a block may hold one the pool refused). Refusals are not remembered as
        outcomes: the transaction may well be pending at the validator that sent it."""
        # One whose nonce the tip has used can never be pending: its signature is not checked
        # (the relay holds it unchecked, for a block that may list it). A peer's catch-up
        # answer meant for another, sent to every peer, is all such transactions: checked,
        # they had cost each receiver a signature check a transaction for nothing.
        fresh = [envelope for envelope in envelopes if not self._nonce_used(envelope)]
        unchecked = [envelope for envelope in fresh if not self.relay.verified(envelope)]
        found = dict(
            zip(
                (envelope.leaf_hash for envelope in unchecked),
                self.pool.check_signatures(unchecked),
                strict=True,
            )
        )
        checks = [found.get(envelope.leaf_hash) for envelope in fresh]  # the relay's: checked
        with self._lock:
            self.pool.admit(
                fresh,
                checks,
                self._tip_account,
                forwarded=True,
                tip_behind=self._tip_behind(),
            )
        verified = {e.leaf_hash for e, check in zip(fresh, checks, strict=True) if check is None}
        for envelope in envelopes:
            self.relay.hold(envelope, verified=envelope.leaf_hash in verified)

    def _nonce_used(self, envelope: Envelope) -> bool:
        account = self._tip_account(envelope.tx.signer)
        return account is not None and envelope.tx.nonce <= int(account["nonce"])

    def _lookup_leaf(self, leaf: bytes) -> Envelope | None:
        return self.pool.by_leaf_hash(leaf) or self.relay.lookup(leaf)

    def _verify_signatures(self, envelopes: Sequence[Envelope]) -> list[LedgerError | None]:
        """The replica's signature check: nothing for what this node checked on admission
        (the same leaf), the signature worker for the rest."""
        results: list[LedgerError | None] = [None] * len(envelopes)
        unchecked = [
            i
            for i, envelope in enumerate(envelopes)
            if not (self.pool.holds(envelope) or self.relay.verified(envelope))
        ]
        if unchecked:
            checks = self.pool.check_signatures([envelopes[i] for i in unchecked])
            for i, check in zip(unchecked, checks, strict=True):
                results[i] = check
        self.signatures_checked += len(unchecked)
        self.signatures_reused += len(envelopes) - len(unchecked)
        return results

    def on_messages(self, messages: Sequence[Message]) -> None:
        """The inbox (any thread): queue peers' parsed messages for the replica."""
        if self.sync is not None:
            self._hint(messages)
        messages = self._authentic(messages)
        sized = [
            (message, 0 if isinstance(message, Vote) else message_bytes(message))
            for message in messages
        ]
        decided = self._tip.height
        with self._lock:
            for message, size in sized:
                self._arrivals += 1
                if isinstance(message, Vote) and message.height <= decided:
                    # Each validator's latest of each kind: a precommit for a block, which
                    # anyone can take from an export, must not take the place of its other
                    # votes (found by review: replayed, it starved a validator behind).
                    slot = (message.public_key, is_certified(message))
                    if slot in self._inbox_old_votes:  # the earlier one goes
                        self.refused["old"] = self.refused.get("old", 0) + 1
                    self._inbox_old_votes[slot] = (self._arrivals, message)
                elif isinstance(message, Vote):
                    self._inbox_votes.append((self._arrivals, message))
                else:
                    self._inbox.append((self._arrivals, message, size))
                    self._inbox_bytes += size
            while len(self._inbox_votes) > PEER_QUEUE_MESSAGES_MAX:
                self._inbox_votes.popleft()
                self.messages_dropped += 1
            while len(self._inbox) > 1 and (
                len(self._inbox) > PEER_QUEUE_MESSAGES_MAX
                or self._inbox_bytes > PEER_QUEUE_BYTES_MAX
            ):
                _, _, size = self._inbox.popleft()
                self._inbox_bytes -= size
                self.messages_dropped += 1

    def dropped(self) -> dict[str, int]:
        """Peers' messages taken and not held, by why: those left out of the queue
        (`refused`) and those the replica dropped, under one set of names."""
        with self._lock:
            counts = dict(self.refused)
        for reason, count in dict(self.replica.dropped).items():
            counts[reason] = counts.get(reason, 0) + count
        return counts

    def _clear_inbox(self) -> None:
        self._inbox_votes.clear()
        self._inbox_old_votes.clear()
        self._inbox.clear()
        self._inbox_bytes = 0

    def _hint(self, messages: Sequence[Message]) -> None:
        """Tell block sync how far peers have decided, from signed messages only: a vote or
        proposal of height h shows h - 1 decided by its signer, a decision of h shows h.
        Only a message at least SYNC_LAG_HEIGHTS_MIN beyond the tip, above what its signer
        showed already, is checked (under the set governing the next height); a decision's
        certificate is a hint on its own, and otherwise validators with more than a third of
        the power must agree. A far decision that set does not certify (the set changed
        since, or a forgery) makes the next probe due SYNC_PROBE_MS after the last one
        (`_probe_due`): block sync checks the sets header by header from the head. Review
        found one forged vote of a far height, with a Byzantine validator's API dripping its
        answer, held the block loop in a sync attempt for up to a minute, again and again."""
        sync = self.sync
        assert sync is not None
        tip = self._tip
        floor = tip.height + SYNC_LAG_HEIGHTS_MIN
        validators = tip.current_validators()
        power = {v.public_key: v.power for v in validators}
        chain_id = tip.chain_id
        for message in messages:
            height = message.height if isinstance(message, Decision) else message.height - 1
            if height < floor or height <= sync.heard_height:
                continue
            try:
                if isinstance(message, Decision):
                    try:
                        verify_decision(message, chain_id=chain_id, validators=validators)
                    except ConsensusError:
                        # Certified, perhaps, by a set that came after the head's: only block
                        # sync, header by header from here, can tell. A probe (once every
                        # SYNC_PROBE_MS at most, whoever sends such decisions) brings it; before,
                        # the validator waited for its silence probe, which peers deciding
                        # far ahead never let come (found by the simulation, 2026-12-07).
                        self._beyond_sets = max(self._beyond_sets or 0, height)
                        continue
                    sync.hint(height)
                    continue
                if isinstance(message, Vote):
                    signer = message.public_key
                    if signer not in power or height <= self._claims.get(signer, 0):
                        continue
                    verify_vote(message, chain_id=chain_id, validators=validators)
                else:
                    assert isinstance(message, Proposal)
                    signer = verify_proposal(message, chain_id=chain_id, validators=validators)
            except ConsensusError:
                continue  # unknown signer, another set, or forged: no hint
            with self._claims_lock:
                self._claims[signer] = max(self._claims.get(signer, 0), height)
                claims = sorted(
                    ((h, key) for key, h in self._claims.items() if key in power), reverse=True
                )
            total, backed = sum(power.values()), 0
            for claimed, key in claims:
                backed += power[key]
                if 3 * backed > total:  # more than a third: one correct validator at least
                    sync.hint(claimed)
                    break

    def inbox_bytes(self) -> int:
        """What the messages waiting for the replica count (`message_bytes`)."""
        with self._lock:
            votes = len(self._inbox_votes) + len(self._inbox_old_votes)
            return self._inbox_bytes + votes * PEER_MESSAGE_BYTES_BASE

    def next_timer_ms(self) -> int | None:
        """Milliseconds until the next timer is due (None: none), for a loop that sleeps."""
        if not self._timers:
            return None
        return max(self._timers[0][0] - self._clock_ms(), 0)

    # --- effects --------------------------------------------------------------------------------

    def _carry_out(self, effects: list[Effect]) -> None:
        outgoing: list[Message] = []
        for index, effect in enumerate(effects):
            if isinstance(effect, Persist):
                if index and isinstance(effects[index - 1], Persist):
                    continue  # written with the first of its run
                run = itertools.takewhile(lambda e: isinstance(e, Persist), effects[index:])
                self.log.append_all([e.message for e in run if isinstance(e, Persist)])
            elif isinstance(effect, Broadcast):
                outgoing.append(effect.message)
            elif isinstance(effect, SendDecision):
                outgoing.extend(self._decisions_from(effect.height))
            elif isinstance(effect, ScheduleTimeout):
                self._timer_sequence += 1
                heapq.heappush(
                    self._timers,
                    (self._clock_ms() + effect.delay_ms, self._timer_sequence, effect.timeout),
                )
            elif isinstance(effect, Reject):
                self._reject(effect)
            else:
                self._decide(effect)
        if outgoing and self.transport is not None:
            self.transport.broadcast(outgoing)

    def _decisions_from(self, height: int) -> list[Decision]:
        """The decisions of `height` and of the heights after it, at most CATCH_UP_HEIGHTS_MAX
        and (beyond the first) block_transactions_max transactions in all: the lagging
        validator's replica takes them in order, so it catches up that many heights a round
        trip, not one, and passes a chain that decides faster than one height a second."""
        decisions: list[Decision] = []
        budget = self._state.params.block_transactions_max
        for at in range(height, min(self._state.height, height + CATCH_UP_HEIGHTS_MAX - 1) + 1):
            try:
                block = self.store.read_block(at)
                certificate = self.store.read_certificate(at)
            except StoreError as error:
                # A damaged block is never sent (nor does it stop the block loop): the peer
                # gets it from another validator, and this one's operator is told.
                log.error("not sending block %d to a peer: %s", at, error.message)
                break
            budget -= len(block.transactions)
            if decisions and budget < 0:
                break
            decisions.append(Decision(block=block, certificate=certificate))
        return decisions

    def _reject(self, rejection: Reject) -> None:
        """What this validator left out of its proposal leaves its pool, answered rejected
        (without it, each proposal would try it again, and its submitter wait for ever)."""
        with self._lock:
            self.rejections += 1
            self.pool.remove(envelope for envelope, _ in rejection.rejected)
            for envelope, error in rejection.rejected:
                self._remember(
                    Outcome(
                        tx_id=envelope.tx_id,
                        status="rejected",
                        code=error.code,
                        message=error.message,
                    )
                )

    def _decide(self, decision: Decide) -> None:
        """Make the decided block durable: on the write thread if there is one (`produce`
        finishes it once written), else now."""
        self._advance_tip(decision)
        if self._write_executor is None:
            self._write(decision)
            self._settle(decision)
            return
        self._writing.append((decision, self._write_executor.submit(self._write, decision)))

    def _advance_tip(self, decision: Decide) -> None:
        with self._lock:
            self._tip = decision.state
            self._unsettled.update(e.tx_id for e in decision.block.transactions)

    def _write(self, decision: Decide) -> None:
        self.store.append(decision.block, decision.certificate, decision.state)

    def _finish_writes(self, *, wait: bool) -> None:
        """Settle the blocks written so far, in order (all of them if `wait`). A failed write
        raises here, on the block loop, as a failed synchronous append would: the replica
        went on past a block the store does not hold, so the node must not go on."""
        while self._writing and (wait or self._writing[0][1].done()):
            decision, written = self._writing.popleft()
            written.result()
            self._settle(decision)

    def _settle(self, decision: Decide) -> None:
        """A decided block is durable: readers see it, its transactions leave the pool
        answered committed, and the log forgets its height."""
        block = decision.block
        committed = committed_outcomes(block)
        with self._lock:
            self._state = decision.state
            # Not while a later decided block is written (as `_reject_stale`): its nonces are
            # not committed ones yet, and a transaction waiting behind one of them would be
            # refused `bad_nonce` though the gap is filled (found by review).
            settle_pool(
                self.pool,
                self.outcomes,
                committed,
                block,
                self._committed_nonce,
                drop_stale=not self._writing,
            )
            self._unsettled.difference_update(e.tx_id for e in block.transactions)
        # Reported whatever the compaction meets (a full disk): the block is durable.
        self._committed.append(
            CommittedBlock(block=block, certificate=decision.certificate, outcomes=committed)
        )
        # Timers of decided heights stay: the replica ignores their steps, and its one
        # REBROADCAST timer keeps the height it was first scheduled with as it re-arms.
        self.log.compact(above_height=block.height)

    # --- block sync -----------------------------------------------------------------------------

    def _append_synced(self, block: Block, certificate: Certificate, state: State) -> None:
        """A block that block sync verified: stored and reported as a decided one (on the
        sync's write thread, while this producer's thread waits in `BlockSync.step`, with no
        write of its own under way)."""
        decision = Decide(block=block, certificate=certificate, state=state)
        self._advance_tip(decision)
        self._write(decision)
        self._settle(decision)

    def _below_decided(self) -> bool:
        """The store is below a height this validator signed at and forgot (module
        docstring): it must sign nothing until block sync brings it there, and block sync
        knows it must get there."""
        below = self._tip.height < self.log.decided_height
        if below and self.sync is not None:
            self.sync.expect(self.log.decided_height)
        return below

    def _sync_to_decided(self) -> CommittedBlock | None:
        """Block sync only, the replica untouched: peers' messages are dropped (they are
        re-sent), the blocks up to the log's `decided_height` fetched and verified."""
        self._finish_writes(wait=True)
        with self._lock:
            self._clear_inbox()
        if (
            not self._committed
            and self.sync is not None
            and self.sync.is_behind(self._state.height, lag=1)
        ):
            self.sync.step(self._state, self._append_synced)
        return self._committed.popleft() if self._committed else None

    def _rejoin(self) -> None:
        """Take part again at the height after the store's head: a replica built as at a
        restart, from the store and the signed-message log (which holds nothing below)."""
        self._timers.clear()  # the old replica's, the rebroadcast timer among them
        held = list(self.replica.evidence.values())
        self.replica = self._new_replica(self.replica.timeouts)
        for evidence in held:  # what the old replica held for a block is not lost
            self.replica.add_evidence(evidence)
        self._started = False

    # --- the pool -------------------------------------------------------------------------------

    def _candidates(self, state: State, now_ms: int) -> list[Envelope]:
        """The replica's TransactionSource: ready transactions on top of `state`."""

        def nonce(signer: str) -> int:
            account = state.get(f"account/{signer}")
            return 0 if account is None else int(account["nonce"])

        with self._lock:
            return self.pool.ready(nonce, state.params.block_transactions_max)

    def _tip_behind(self) -> bool:
        """Peers' messages (or its own log) show heights decided well beyond the tip: this
        validator is catching up, and its accounts are not the chain's."""
        return (
            self.sync is not None
            and self.sync.heard_height - self._tip.height >= SYNC_LAG_HEIGHTS_MIN
        )

    def _tip_account(self, signer: str) -> Any:
        """Accounts as at the tip: a nonce used in a block being written is used."""
        return self._tip.get(f"account/{signer}")

    def _committed_nonce(self, signer: str) -> int:
        account = self._state.get(f"account/{signer}")
        return 0 if account is None else int(account["nonce"])

    def _remember(self, outcome: Outcome) -> None:
        remember(self.outcomes, outcome)
