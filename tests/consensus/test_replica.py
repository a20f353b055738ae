"""The replica, rule by rule: effects in order, locks, restarts, timeouts, catch-up.

Most tests drive one replica by hand with messages signed by the other validators' real
keys; `Cluster` runs four replicas over a perfect, in-order network. The simulation
(tests/consensus/simulation) does the same under faults.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from consensus.messages import (
    NO_ROUND,
    Decision,
    Message,
    Proposal,
    encode_message,
    sign_proposal,
    sign_vote,
)
from consensus.replica import (
    NEW_HEIGHT,
    PROPOSE,
    REBROADCAST,
    WAIT,
    Broadcast,
    Decide,
    Effect,
    Persist,
    Reject,
    Replica,
    ScheduleTimeout,
    SendDecision,
    SignedMessage,
    Timeout,
    Timeouts,
)
from ledger.blocks import (
    Block,
    Certificate,
    compute_evidence_hash,
    sign_certificate,
    verify_certificate,
)
from ledger.crypto import SignatureError
from ledger.errors import LedgerError
from ledger.evidence import Vote, make_evidence, verify_evidence
from ledger.limits import (
    BLOCK_TIME_DRIFT_MS_MAX,
    CATCH_UP_HEIGHTS_MAX,
    CATCH_UP_INTERVAL_MS,
    EVIDENCE_AGE_HEIGHTS_MAX,
    ROUND_TIMEOUT_MS_BASE,
    ROUND_TIMEOUT_MS_DELTA,
)
from ledger.proposer import compute_proposer
from ledger.state import State
from ledger.state_transition import apply_block, build_block, first_that_applies
from ledger.transactions import Envelope, Transaction, sign_transaction
from tests.consensus.simulation.world import World, make_world, transaction_source
from tests.factory import CHAIN_ID, key

WORLD: World = make_world(4)
KEYS = WORLD.keys
T0 = WORLD.genesis.head_time + 1000


def index_of(public_key: str) -> int:
    return [k.public_key_hex for k in KEYS].index(public_key)


def proposer(height: int, round: int) -> int:
    return index_of(compute_proposer(WORLD.validators, height, round))


def not_proposer(height: int, round: int) -> int:
    return next(i for i in range(4) if i != proposer(height, round))


def replica(
    index: int, *, signed: Sequence[SignedMessage] = (), state: State | None = None
) -> Replica:
    return Replica(
        key=KEYS[index],
        state=state or WORLD.genesis,
        last_certificate=None,
        transactions=transaction_source(WORLD),
        signed=signed,
    )


def block(*, time: int = T0, transactions: int = 3, builder: int = 1) -> Block:
    return build_block(
        WORLD.genesis,
        WORLD.workload[:transactions],
        time=time,
        proposer=KEYS[builder].public_key_hex,
        last_commit=None,
    ).block


def proposal(round: int, value: Block, valid_round: int = NO_ROUND, height: int = 1) -> Proposal:
    return sign_proposal(
        KEYS[proposer(height, round)],
        chain_id=CHAIN_ID,
        height=height,
        round=round,
        valid_round=valid_round,
        block=value,
    )


def vote(signer: int, vote_type: str, round: int, block_hash: str | None, height: int = 1) -> Vote:
    return sign_vote(
        KEYS[signer],
        chain_id=CHAIN_ID,
        vote_type=vote_type,
        height=height,
        round=round,
        block_hash=block_hash,
    )


def feed(target: Replica, messages: Sequence[Message], now: int = T0) -> list[Effect]:
    effects: list[Effect] = []
    for message in messages:
        effects += target.on_message(message, now)
    return effects


def signed_by(effects: Sequence[Effect], kind: type) -> list[Effect]:
    return [e for e in effects if isinstance(e, kind)]


def votes_sent(effects: Sequence[Effect], vote_type: str) -> list[Vote]:
    return [
        e.message
        for e in effects
        if isinstance(e, Broadcast)
        and isinstance(e.message, Vote)
        and e.message.vote_type == vote_type
    ]


def timeouts(effects: Sequence[Effect], step: str) -> list[ScheduleTimeout]:
    return [e for e in effects if isinstance(e, ScheduleTimeout) and e.timeout.step == step]


def assert_persisted_before_sent(
    effects: Sequence[Effect], log: Sequence[SignedMessage] = ()
) -> None:
    persisted = list(log)
    for effect in effects:
        if isinstance(effect, Persist):
            persisted.append(effect.message)
        elif isinstance(effect, Broadcast) and not isinstance(effect.message, Decision):
            message = effect.message
            own = not isinstance(message, Vote) or message.public_key in {
                m.public_key for m in persisted if isinstance(m, Vote)
            }
            if own:
                assert message in persisted, f"sent before persisted: {message}"


def describe(effect: Effect) -> str:
    """An effect as text without object addresses (a State's repr has some)."""
    if isinstance(effect, Persist | Broadcast):
        return f"{type(effect).__name__} {encode_message(effect.message).hex()}"
    if isinstance(effect, Decide):
        return f"Decide {effect.block.block_hash()} {effect.certificate!r}"
    return repr(effect)


# --- a perfect network ---------------------------------------------------------------------------


class Cluster:
    """Four replicas; every broadcast reaches every other replica in order, at once."""

    def __init__(self, *, silent: Sequence[int] = ()) -> None:
        self.replicas = [replica(i) for i in range(4)]
        self.silent = set(silent)
        self.now = T0
        self.queue: deque[tuple[int, Message]] = deque()
        self.timers: list[tuple[int, int, int, Timeout]] = []
        self.sequence = 0
        self.decided: list[list[Decide]] = [[] for _ in range(4)]
        self.logs: list[list[SignedMessage]] = [[] for _ in range(4)]
        self.trace: list[str] = []

    def carry_out(self, index: int, effects: list[Effect]) -> None:
        assert_persisted_before_sent(effects, self.logs[index])
        for effect in effects:
            self.trace.append(f"{index} {self.now} {describe(effect)}")
            if isinstance(effect, Persist):
                self.logs[index].append(effect.message)
            elif isinstance(effect, Broadcast) and index not in self.silent:
                self.queue.extend((other, effect.message) for other in range(4) if other != index)
            elif isinstance(effect, ScheduleTimeout):
                self.sequence += 1
                heapq.heappush(
                    self.timers, (self.now + effect.delay_ms, self.sequence, index, effect.timeout)
                )
            elif isinstance(effect, Decide):
                self.decided[index].append(effect)

    def run(self, until: Callable[[], bool], steps_max: int = 20_000) -> None:
        for index, member in enumerate(self.replicas):
            self.carry_out(index, member.on_start(self.now))
        for _ in range(steps_max):
            if until():
                return
            if self.queue:
                index, message = self.queue.popleft()
                self.carry_out(index, self.replicas[index].on_message(message, self.now))
            else:
                due, _, index, timeout = heapq.heappop(self.timers)
                self.now = max(self.now, due)
                self.carry_out(index, self.replicas[index].on_timeout(timeout, self.now))
        raise AssertionError("the cluster did not get there")


def test_four_replicas_decide_the_same_valid_chain() -> None:
    cluster = Cluster()
    cluster.run(lambda: all(len(d) >= 3 for d in cluster.decided))
    state = WORLD.genesis
    for height in range(1, 4):
        decisions = [d[height - 1] for d in cluster.decided]
        assert len({d.block.block_hash() for d in decisions}) == 1
        decided = decisions[0].block
        assert decided.height == height
        state_before, state = state, apply_block(state, decided)
        for d in decisions:
            verify_certificate(
                d.certificate,
                chain_id=CHAIN_ID,
                height=height,
                block_hash=decided.block_hash(),
                validators=state_before.current_validators(),
            )
            assert d.state.state_root == state.state_root
            assert [key for key, _ in d.certificate.signatures] == sorted(
                key for key, _ in d.certificate.signatures
            )
        if height > 1:
            # The next block carries its proposer's own certificate of the previous height.
            builder = index_of(decided.header.proposer)
            assert decided.last_commit == cluster.decided[builder][height - 2].certificate
    assert sum(len(b.block.transactions) for b in cluster.decided[0]) >= 3


def test_the_same_inputs_give_the_same_effects() -> None:
    first, second = Cluster(), Cluster()
    for cluster in (first, second):
        cluster.run(lambda c=cluster: len(c.decided[0]) >= 2)  # type: ignore[misc]
    assert first.trace == second.trace


def test_three_of_four_decide_without_the_silent_one() -> None:
    cluster = Cluster(silent=[proposer(1, 0)])  # the first proposer never speaks
    cluster.run(
        lambda: all(len(cluster.decided[i]) >= 2 for i in range(4) if i not in cluster.silent)
    )
    assert {
        d.certificate.round
        for i in range(4)
        for d in cluster.decided[i][:1]
        if i not in cluster.silent
    } == {1}


# --- one replica by hand -------------------------------------------------------------------------


def test_the_proposer_persists_each_message_before_sending_it() -> None:
    effects = replica(proposer(1, 0)).on_start(T0)
    kinds = [type(e).__name__ for e in effects]
    assert kinds == ["ScheduleTimeout", "Persist", "Broadcast", "Persist", "Broadcast"]
    assert isinstance(effects[1], Persist) and isinstance(effects[1].message, Proposal)
    assert effects[2] == Broadcast(message=effects[1].message)
    assert isinstance(effects[3], Persist) and effects[4] == Broadcast(message=effects[3].message)
    assert_persisted_before_sent(effects)
    assert timeouts(effects, REBROADCAST)[0].delay_ms == Timeouts().rebroadcast_ms


def test_timeouts_grow_with_the_round_and_start_again_at_each_height() -> None:
    me = not_proposer(1, 0)
    target = replica(me)
    start = target.on_start(T0)
    assert [t.delay_ms for t in timeouts(start, PROPOSE)] == [ROUND_TIMEOUT_MS_BASE]
    for round in range(3):
        others = [i for i in range(4) if i != me][:2]
        effects = target.on_timeout(Timeout(height=1, round=round, step=PROPOSE), T0)
        assert [v.block_hash for v in votes_sent(effects, "prevote")] == [None]  # line 57
        effects = feed(target, [vote(i, "prevote", round, None) for i in others])
        delay = ROUND_TIMEOUT_MS_BASE + round * ROUND_TIMEOUT_MS_DELTA
        assert [t.delay_ms for t in timeouts(effects, "prevote")] == [delay]  # line 34
        assert [v.block_hash for v in votes_sent(effects, "precommit")] == [None]  # line 44
        effects = feed(target, [vote(i, "precommit", round, None) for i in others])
        (scheduled,) = timeouts(effects, "precommit")  # line 47
        effects = target.on_timeout(scheduled.timeout, T0)  # line 65
        assert target.round == round + 1
        if proposer(1, round + 1) != me:
            assert [t.delay_ms for t in timeouts(effects, PROPOSE)] == [
                ROUND_TIMEOUT_MS_BASE + (round + 1) * ROUND_TIMEOUT_MS_DELTA
            ]
    # A decision moves to height 2: the pause before round 0, then round 0's timeout again.
    # After a block with transactions more may be waiting: no pause.
    decided = block(time=T0)
    certificate = sign_certificate(
        chain_id=CHAIN_ID, height=1, round=0, block_hash=decided.block_hash(), keys=KEYS[:3]
    )
    effects = target.on_message(Decision(block=decided, certificate=certificate), T0)
    assert isinstance(effects[0], Decide) and target.height == 2 and target.step == NEW_HEIGHT
    (pause,) = timeouts(effects, NEW_HEIGHT)
    assert pause.delay_ms == 0
    effects = target.on_timeout(pause.timeout, T0 + pause.delay_ms)
    if proposer(2, 0) != me:
        assert [t.delay_ms for t in timeouts(effects, PROPOSE)] == [ROUND_TIMEOUT_MS_BASE]
    # After an empty block, the pace of an idle chain.
    empty = build_block(
        decided_state := apply_block(WORLD.genesis, decided),
        [],
        time=T0 + 1,
        proposer=KEYS[proposer(2, 0)].public_key_hex,
        last_commit=certificate,
    ).block
    second = sign_certificate(
        chain_id=CHAIN_ID, height=2, round=0, block_hash=empty.block_hash(), keys=KEYS[:3]
    )
    effects = target.on_message(Decision(block=empty, certificate=second), T0 + 1)
    assert isinstance(effects[0], Decide) and target.height == 3 and decided_state.height == 1
    (pause,) = timeouts(effects, NEW_HEIGHT)
    assert pause.delay_ms == WORLD.genesis.params.block_interval_ms


def test_after_a_busy_block_the_proposer_waits_for_transactions_briefly() -> None:
    """After a block with transactions the next height starts at once; a proposer with
    nothing to propose looks again every wait_poll_ms, for at most the block interval."""
    decided = block(time=T0)
    certificate = sign_certificate(
        chain_id=CHAIN_ID, height=1, round=0, block_hash=decided.block_hash(), keys=KEYS[:3]
    )
    me = proposer(2, 0)
    offered: list[Envelope] = []
    target = Replica(
        key=KEYS[me],
        state=WORLD.genesis,
        last_certificate=None,
        transactions=lambda state, now_ms: list(offered),
        timeouts=Timeouts(wait_poll_ms=40),
    )
    target.on_start(T0)
    effects = target.on_message(Decision(block=decided, certificate=certificate), T0)
    (pause,) = timeouts(effects, NEW_HEIGHT)
    effects = target.on_timeout(pause.timeout, T0)
    (look,) = timeouts(effects, WAIT)
    assert look.delay_ms == 40 and not signed_by(effects, Persist)  # nothing to propose yet
    # A transaction arrives: the next look proposes it.
    after = apply_block(WORLD.genesis, decided)
    offered.append(WORLD.workload[3])
    effects = target.on_timeout(look.timeout, T0 + 40)
    (proposed,) = [
        e.message for e in effects if isinstance(e, Persist) and isinstance(e.message, Proposal)
    ]
    assert [e.tx_id for e in proposed.block.transactions] == [WORLD.workload[3].tx_id]
    assert after.height == 1
    # Without transactions it proposes an empty block once the block interval has passed.
    target = Replica(
        key=KEYS[me],
        state=WORLD.genesis,
        last_certificate=None,
        transactions=lambda state, now_ms: [],
    )
    target.on_start(T0)
    effects = target.on_message(Decision(block=decided, certificate=certificate), T0)
    effects = target.on_timeout(timeouts(effects, NEW_HEIGHT)[0].timeout, T0)
    (look,) = timeouts(effects, WAIT)
    interval = WORLD.genesis.params.block_interval_ms
    effects = target.on_timeout(look.timeout, T0 + interval)
    (empty,) = [
        e.message for e in effects if isinstance(e, Persist) and isinstance(e.message, Proposal)
    ]
    assert empty.block.transactions == ()


# --- an idle consortium: after an empty block, wait for something to decide ---------------------

IDLE_MS = 10_000  # the empty-block interval of these tests
POLL_MS = 40


def _idle_replica(index: int, offered: list[Envelope], state: State | None = None) -> Replica:
    state = state or WORLD.genesis
    return Replica(
        key=KEYS[index],
        state=state,
        last_certificate=None if state.height == 0 else _certificate_of(state),
        transactions=lambda state, now_ms: list(offered),
        timeouts=Timeouts(wait_poll_ms=POLL_MS, empty_block_ms=IDLE_MS),
    )


def _empty_block(state: State = WORLD.genesis) -> Block:
    height = state.height + 1
    return build_block(
        state,
        [],
        time=T0 + height,
        proposer=KEYS[proposer(height, 0)].public_key_hex,
        last_commit=None if state.height == 0 else _certificate_of(state),
    ).block


def _certificate_of(state: State) -> Certificate:
    return sign_certificate(
        chain_id=CHAIN_ID, height=state.height, round=0, block_hash=state.head_hash, keys=KEYS[:3]
    )


def _decide_empty(target: Replica, now: int = T0) -> ScheduleTimeout:
    """Decide an empty block at the target's height; the pause it then schedules."""
    effects = target.on_message(_decision(_empty_block(target.state), target.state), now)
    assert isinstance(effects[0], Decide) and target.step == NEW_HEIGHT
    (pause,) = timeouts(effects, NEW_HEIGHT)
    assert pause.delay_ms == WORLD.genesis.params.block_interval_ms
    return pause


def _proposed(effects: Sequence[Effect]) -> list[Proposal]:
    return [
        e.message for e in effects if isinstance(e, Persist) and isinstance(e.message, Proposal)
    ]


def test_an_idle_validator_adds_an_empty_block_only_after_the_empty_block_interval() -> None:
    me = proposer(2, 0)
    target = _idle_replica(me, [])
    target.on_start(T0)
    pause = _decide_empty(target)
    now = T0 + pause.delay_ms
    effects = target.on_timeout(pause.timeout, now)
    looks = 0
    while now < T0 + IDLE_MS:
        # Nothing to decide: it looks again every poll, and signs nothing.
        (look,) = timeouts(effects, NEW_HEIGHT)
        assert look.delay_ms == POLL_MS and not signed_by(effects, Persist), now
        assert target.step == NEW_HEIGHT and target.height == 2
        looks += 1
        now += POLL_MS
        effects = target.on_timeout(look.timeout, now)
    assert looks > (IDLE_MS - pause.delay_ms) // POLL_MS - 1 and now - POLL_MS < T0 + IDLE_MS
    (heartbeat,) = _proposed(effects)  # the interval ran out: an empty block all the same
    assert heartbeat.height == 2 and heartbeat.block.transactions == ()
    # With no empty-block interval (0), the chain's block interval alone paces it.
    paced = replica(me)
    paced.on_start(T0)
    pause = _decide_empty(paced)
    assert _proposed(paced.on_timeout(pause.timeout, T0 + pause.delay_ms))


def test_an_idle_validator_starts_the_height_once_a_transaction_arrives() -> None:
    offered: list[Envelope] = []
    me = proposer(2, 0)
    target = _idle_replica(me, offered)
    target.on_start(T0)
    pause = _decide_empty(target)
    effects = target.on_timeout(pause.timeout, T0 + pause.delay_ms)
    (look,) = timeouts(effects, NEW_HEIGHT)
    offered.append(WORLD.workload[0])
    (proposed,) = _proposed(target.on_timeout(look.timeout, T0 + pause.delay_ms + POLL_MS))
    assert [e.tx_id for e in proposed.block.transactions] == [WORLD.workload[0].tx_id]
    # Not before the block interval, though: the pace of the chain holds.
    early = _idle_replica(me, [WORLD.workload[0]])
    early.on_start(T0)
    pause = _decide_empty(early)
    assert pause.delay_ms > 0 and early.step == NEW_HEIGHT


def rejections(effects: Sequence[Effect]) -> list[Reject]:
    return [e for e in effects if isinstance(e, Reject)]


def _refused_transfer() -> Envelope:
    """A transfer, signed by a key of its own, of a batch the chain does not have."""
    sender = key("a holder of nothing")
    transaction = Transaction(
        chain_id=CHAIN_ID,
        type="transfer",
        signer=sender.account_id,
        nonce=1,
        payload={"to": KEYS[0].account_id, "batch_id": "B-404", "quantity": 5},
    )
    return sign_transaction(transaction, [sender])


def test_a_transaction_the_chain_refuses_starts_no_height_and_is_rejected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Found by review: each validator's pool kept such a transaction until its own turn to
    # propose, and started a height for it, so one refused transfer made an empty block
    # about every second, one for each validator.
    refused = _refused_transfer()
    offered = [refused]
    wait = Timeouts().reject_wait_ms
    tried: list[str] = []  # each envelope the replica tries on its state

    def counting(state: State, candidates: Sequence[Envelope], **options: Any) -> Any:
        tried.extend(e.tx_id for e in candidates)
        return first_that_applies(state, candidates, **options)

    monkeypatch.setattr("consensus.replica.first_that_applies", counting)
    for me in (proposer(2, 0), not_proposer(2, 0)):
        tried.clear()
        target = _idle_replica(me, offered)
        target.on_start(T0)
        pause = _decide_empty(target)
        now = T0 + pause.delay_ms
        effects = target.on_timeout(pause.timeout, now)
        first_failed, looks = now, 1
        while not rejections(effects):
            # Still waiting, and nothing signed; not rejected before it has failed `wait`
            # (what it depends on may be forwarded from another validator a moment later).
            (look,) = timeouts(effects, NEW_HEIGHT)
            assert look.delay_ms == POLL_MS and not signed_by(effects, Persist)
            assert target.step == NEW_HEIGHT and target.height == 2
            assert now - first_failed < wait
            now += POLL_MS
            effects = target.on_timeout(look.timeout, now)
            looks += 1
        assert now - first_failed >= wait and not signed_by(effects, Persist)
        (rejection,) = rejections(effects)  # answered as a proposer would answer it
        ((envelope, error),) = rejection.rejected
        assert envelope.tx_id == refused.tx_id and error.code == "unknown_batch"
        assert target.step == NEW_HEIGHT and target.height == 2
        # Tried when first seen and once more when due, not at each of the looks between
        # (found by review: a pool of failing transactions cost ~95 ms of every 50 ms poll).
        assert looks > 30 and tried == [refused.tx_id] * 2


def test_what_a_waiting_transaction_depends_on_may_arrive_after_it() -> None:
    """Found by review: the pool offers transactions in their order of arrival, so one that
    depends on another forwarded a moment later (an issuance before its certifier's
    accreditation) failed in the proposer's block, and was rejected at once."""
    me = proposer(2, 0)
    accreditation, issuance = WORLD.workload[0], WORLD.workload[2]
    late = _idle_replica(me, [issuance])
    late.on_start(T0)
    pause = _decide_empty(late)
    now = T0 + pause.delay_ms
    effects = late.on_timeout(pause.timeout, now)
    (look,) = timeouts(effects, NEW_HEIGHT)
    assert not rejections(effects) and not _proposed(effects)  # it fails, and waits
    late.transactions = lambda state, now_ms: [issuance, accreditation]  # in arrival order
    effects = late.on_timeout(look.timeout, now + POLL_MS)
    (proposed,) = _proposed(effects)  # the accreditation starts the height
    assert [e.tx_id for e in proposed.block.transactions] == [accreditation.tx_id]
    assert not rejections(effects)  # the issuance stays pending, for the next block
    # Beside one that applies, a transaction that fails is left out of the block, and stays
    # pending for the wait too: only a bad signature is rejected at once.
    refused = _refused_transfer()
    busy = _idle_replica(me, [refused, accreditation])
    busy.on_start(T0)
    pause = _decide_empty(busy)
    effects = busy.on_timeout(pause.timeout, T0 + pause.delay_ms)
    (proposed,) = _proposed(effects)
    assert [e.tx_id for e in proposed.block.transactions] == [accreditation.tx_id]
    assert not rejections(effects)


def test_an_idle_validator_joins_at_once_when_another_validator_begins_the_height() -> None:
    me = not_proposer(2, 0)
    other = next(i for i in range(4) if i != me)
    target = _idle_replica(me, [])
    target.on_start(T0)
    _decide_empty(target)
    # A vote of this height signed by a key outside the set is refused and starts nothing.
    outsider = sign_vote(
        key("outsider"), chain_id=CHAIN_ID, vote_type="prevote", height=2, round=0, block_hash=None
    )
    effects = target.on_message(outsider, T0 + 5)
    assert target.step == NEW_HEIGHT and not timeouts(effects, PROPOSE)
    # A validator's vote of the height just decided (a straggler's precommit) starts nothing.
    effects = target.on_message(vote(other, "precommit", 0, None, height=1), T0 + 5)
    assert target.step == NEW_HEIGHT
    # One of this height: round 0 starts now, before the block interval or any look.
    effects = target.on_message(vote(other, "prevote", 0, None, height=2), T0 + 6)
    assert target.step == PROPOSE and target.round == 0
    assert [t.timeout.height for t in timeouts(effects, PROPOSE)] == [2]
    # One of the next height: the others decided this one without this replica (found by
    # review: it waited for its heartbeat). It begins the height, and its nil prevote, a
    # vote of a height they decided, has them send it the block.
    behind = _idle_replica(me, [])
    behind.on_start(T0)
    _decide_empty(behind)
    effects = behind.on_message(vote(other, "prevote", 0, None, height=3), T0 + 6)
    assert behind.height == 2 and behind.step == PROPOSE
    (propose,) = timeouts(effects, PROPOSE)
    effects = behind.on_timeout(propose.timeout, T0 + 6 + propose.delay_ms)
    assert [(v.height, v.block_hash) for v in votes_sent(effects, "prevote")] == [(2, None)]


def test_a_message_held_before_the_decision_ends_the_wait() -> None:
    """Found by review: a proposal (or vote) of the next height that came before this
    replica decided the last one was held, then ignored while it waited for work."""
    me = not_proposer(2, 0)
    other = next(i for i in range(4) if i != me)
    interval = WORLD.genesis.params.block_interval_ms
    for held in (True, False):
        target = _idle_replica(me, [])
        target.on_start(T0)
        if held:  # at height 1 still: held for height 2
            feed(target, [vote(other, "prevote", 0, None, height=2)])
            assert target.height == 1
        pause = _decide_empty(target)
        effects = target.on_timeout(pause.timeout, T0 + interval)
        assert (target.step == PROPOSE) is held
        assert bool(timeouts(effects, NEW_HEIGHT)) is not held


def test_evidence_a_set_change_or_a_clock_stepped_back_ends_the_wait() -> None:
    interval = WORLD.genesis.params.block_interval_ms
    me = proposer(2, 0)
    # Evidence held for a block: proposed at the block interval, with the evidence.
    equivocator = next(i for i in range(4) if i != me)
    holder = _idle_replica(me, [])
    holder.on_start(T0)
    feed(holder, [vote(equivocator, "prevote", 0, h) for h in (None, "ab" * 32)])
    pause = _decide_empty(holder)
    (proposed,) = _proposed(holder.on_timeout(pause.timeout, T0 + interval))
    assert [e.public_key for e in proposed.block.evidence] == [KEYS[equivocator].public_key_hex]
    # A validator set changing: the height before the new set governs is not held back,
    # while after another block with a transaction the validator waits as ever.
    authority = [key(f"authority-{i}") for i in range(2)]
    change = sign_transaction(
        Transaction(
            chain_id=CHAIN_ID,
            type="set_validators",
            signer=WORLD.workload[0].tx.signer,  # the authority
            nonce=1,
            payload={
                "validators": [
                    {"public_key": v.public_key, "power": 2, "name": v.name}
                    for v in WORLD.validators
                ]
            },
        ),
        authority,
    )
    for envelope, waits in ((change, False), (WORLD.workload[0], True)):
        built = build_block(
            WORLD.genesis,
            [envelope],
            time=T0,
            proposer=KEYS[proposer(1, 0)].public_key_hex,
            last_commit=None,
        )
        assert not built.rejected, built.rejected
        mover = _idle_replica(me, [])
        mover.on_start(T0)
        effects = mover.on_message(_decision(built.block, WORLD.genesis), T0)
        (pause,) = timeouts(effects, NEW_HEIGHT)
        assert pause.delay_ms == 0  # a block with a transaction: no pace to keep
        changing = built.state.next_validators() != built.state.current_validators()
        assert changing is not waits
        effects = mover.on_timeout(pause.timeout, T0)
        assert (mover.step == NEW_HEIGHT) is waits and bool(timeouts(effects, NEW_HEIGHT)) is waits
    # A clock stepped back past the decision: the wait counts as over, not as the step.
    stepped = _idle_replica(proposer(2, 0), [])
    stepped.on_start(T0)
    pause = _decide_empty(stepped, now=T0 + 60_000)
    assert _proposed(stepped.on_timeout(pause.timeout, T0))


def test_the_propose_step_may_wait_longer_than_the_others() -> None:
    me = not_proposer(1, 0)
    target = Replica(
        key=KEYS[me],
        state=WORLD.genesis,
        last_certificate=None,
        transactions=transaction_source(WORLD),
        timeouts=Timeouts(propose_extra_ms=2000),
    )
    start = target.on_start(T0)
    assert [t.delay_ms for t in timeouts(start, PROPOSE)] == [ROUND_TIMEOUT_MS_BASE + 2000]
    target.on_timeout(Timeout(height=1, round=0, step=PROPOSE), T0)
    others = [i for i in range(4) if i != me][:2]
    effects = feed(target, [vote(i, "prevote", 0, None) for i in others])
    assert [t.delay_ms for t in timeouts(effects, "prevote")] == [ROUND_TIMEOUT_MS_BASE]


def test_signatures_are_checked_through_the_injected_check_once_per_block() -> None:
    """The replica asks its `verify_signatures` (a node's skips what it checked on
    admission) and applies the block without checking signatures again itself."""
    asked: list[list[str]] = []

    def check_none(envelopes: Sequence[Envelope]) -> list[LedgerError | None]:
        asked.append([e.tx_id for e in envelopes])
        return [None] * len(envelopes)

    def refuse_all(envelopes: Sequence[Envelope]) -> list[LedgerError | None]:
        return [SignatureError("refused by the injected check")] * len(envelopes)

    good = block()
    me = not_proposer(1, 0)
    for check, expected in ((check_none, good.block_hash()), (refuse_all, None)):
        target = Replica(
            key=KEYS[me],
            state=WORLD.genesis,
            last_certificate=None,
            transactions=transaction_source(WORLD),
            verify_signatures=check,
        )
        target.on_start(T0)
        effects = feed(target, [proposal(0, good), proposal(0, good)])
        assert [v.block_hash for v in votes_sent(effects, "prevote")] == [expected]
    assert asked == [[e.tx_id for e in good.transactions]]  # once: the result is kept

    # The proposer passes its candidates through the same check: one it refuses stays out.
    builder = proposer(1, 0)
    first = WORLD.workload[0].tx_id

    def refuse_first(envelopes: Sequence[Envelope]) -> list[LedgerError | None]:
        return [SignatureError("no") if e.tx_id == first else None for e in envelopes]

    target = Replica(
        key=KEYS[builder],
        state=WORLD.genesis,
        last_certificate=None,
        transactions=transaction_source(WORLD),
        verify_signatures=refuse_first,
    )
    (proposed,) = [
        e.message
        for e in target.on_start(T0)
        if isinstance(e, Persist) and isinstance(e.message, Proposal)
    ]
    assert first not in [e.tx_id for e in proposed.block.transactions]


def test_what_is_not_held_is_counted_by_why() -> None:
    target = replica(0)
    target.on_start(T0)
    genuine = vote(1, "prevote", 0, None)
    value = block()
    offered = proposal(0, value)
    forged_body = dataclasses.replace(
        offered, block=dataclasses.replace(value, transactions=value.transactions[1:])
    )
    feed(
        target,
        [
            genuine,
            genuine,  # a copy: known
            vote(1, "prevote", 0, None, height=3),  # future
            vote(1, "prevote", 50, None),  # future (a round far ahead)
            dataclasses.replace(vote(2, "prevote", 0, None), block_hash="aa" * 32),
            sign_vote(
                key("stranger"),
                chain_id=CHAIN_ID,
                vote_type="prevote",
                height=1,
                round=0,
                block_hash=None,
            ),
            sign_vote(
                KEYS[3],
                chain_id="other-chain",
                vote_type="prevote",
                height=1,
                round=0,
                block_hash=None,
            ),
            forged_body,
            dataclasses.replace(offered, round=1),  # signed for round 0: not its proposer's
        ],
    )
    assert target.dropped == {
        "known": 1,
        "future": 2,
        "bad_signature": 1,
        "unknown_validator": 1,
        "wrong_chain": 1,
        "body_mismatch": 1,
        "not_proposer": 1,
    }


def test_a_valid_proposal_gets_a_prevote_and_an_invalid_one_nil() -> None:
    me = not_proposer(1, 0)
    good = block()
    target = replica(me)
    target.on_start(T0)
    assert [v.block_hash for v in votes_sent(feed(target, [proposal(0, good)]), "prevote")] == [
        good.block_hash()
    ]  # line 22
    for bad in (
        dataclasses.replace(good, header=dataclasses.replace(good.header, state_root="00" * 32)),
        block(time=T0 + BLOCK_TIME_DRIFT_MS_MAX + 1),  # too far ahead of this replica's clock
    ):
        target = replica(me)
        target.on_start(T0)
        assert [v.block_hash for v in votes_sent(feed(target, [proposal(0, bad)]), "prevote")] == [
            None
        ]


def test_a_block_whose_header_names_another_proposer_gets_nil() -> None:
    """Found by review: a proposer could build a block naming another validator as its
    proposer, and `verify chain`'s notices then asked that validator about its content. A new
    block must name the round's proposer; one proposed again (line 28) a proposer of a round
    up to its valid round."""
    me = next(i for i in range(4) if i not in (proposer(1, 0), proposer(1, 1)))
    framing = block(builder=proposer(1, 1))  # proposed in round 0, naming round 1's proposer
    target = replica(me)
    target.on_start(T0)
    prevotes = votes_sent(feed(target, [proposal(0, framing)]), "prevote")
    assert [v.block_hash for v in prevotes] == [None]
    others = [i for i in range(4) if i != me]
    for builder, expected in ((proposer(1, 0), True), (proposer(1, 1), False)):
        value = block(time=T0 + 1, builder=builder)
        target = replica(me)
        target.on_start(T0)
        # A polka for the value in round 0 (its proposal never reached this replica), then
        # two validators in round 1: the replica skips there (line 55), unlocked.
        feed(target, [vote(i, "prevote", 0, value.block_hash()) for i in others])
        feed(target, [vote(i, "prevote", 1, None) for i in others[:2]])
        assert target.round == 1 and target.locked_round == NO_ROUND
        prevotes = votes_sent(feed(target, [proposal(1, value, valid_round=0)]), "prevote")
        assert [v.block_hash for v in prevotes] == [value.block_hash() if expected else None]


def test_a_proposal_refused_for_its_time_is_counted_once_with_how_far_ahead() -> None:
    """A validator whose clock is behind by more than the drift votes against every block
    but its own (it counts as faulty, as in proposer-based timestamps: trusting the parent's
    time instead would let a faulty proposer move the chain's time on by the drift with each
    of its blocks). Found by review: it said nothing of it; it now counts each such proposal
    once, and how far ahead the last one was, for the node to tell the operator."""
    me = not_proposer(1, 0)
    slow = T0 - 60_000  # a minute behind the others
    target = replica(me)
    target.on_start(slow)
    value = block(time=T0)
    sent = votes_sent(feed(target, [proposal(0, value)], now=slow), "prevote")
    assert [v.block_hash for v in sent] == [None]
    assert (target.time_refusals, target.time_ahead_ms) == (1, 60_000)
    # The same block judged again (the prevotes of others for it) is not counted again.
    feed(target, [vote(i, "prevote", 0, value.block_hash()) for i in range(4) if i != me], slow)
    assert target.time_refusals == 1
    # On a right clock, the same proposal is voted for, and nothing is counted.
    right = replica(me)
    right.on_start(T0)
    sent = votes_sent(feed(right, [proposal(0, value)], now=T0), "prevote")
    assert [v.block_hash for v in sent] == [value.block_hash()]
    assert right.time_refusals == 0


def _locked_on(value: Block, me: int) -> tuple[Replica, list[SignedMessage]]:
    """A replica that saw 2f+1 prevotes for `value` in round 0 and precommitted it."""
    target = replica(me)
    log: list[SignedMessage] = []
    effects = target.on_start(T0)
    others = [i for i in range(4) if i != me]
    effects += feed(
        target,
        [proposal(0, value), *(vote(i, "prevote", 0, value.block_hash()) for i in others[:2])],
    )
    log += [e.message for e in effects if isinstance(e, Persist)]
    assert target.locked_round == 0 and target.locked_hash == value.block_hash()  # line 36
    assert [v.block_hash for v in votes_sent(effects, "precommit")] == [value.block_hash()]
    return target, log


def _to_round_1(target: Replica, me: int) -> list[Effect]:
    others = [i for i in range(4) if i != me]
    effects = feed(target, [vote(i, "precommit", 0, None) for i in others[:2]])
    (scheduled,) = timeouts(effects, "precommit")
    return target.on_timeout(scheduled.timeout, T0)


def test_a_locked_replica_prevotes_nil_for_another_block_even_after_a_restart() -> None:
    me = next(i for i in range(4) if i not in (proposer(1, 0), proposer(1, 1)))
    locked_value, other_value = block(), block(time=T0 + 1, builder=proposer(1, 1))
    target, log = _locked_on(locked_value, me)
    restarted = replica(me, signed=log)
    assert restarted.locked_round == 0 and restarted.locked_hash == locked_value.block_hash()
    restarted.on_start(T0)
    fresh = replica(me)
    fresh.on_start(T0)
    for member in (target, restarted, fresh):
        if member is not fresh:
            _to_round_1(member, me)
        else:
            member.on_timeout(Timeout(height=1, round=0, step=PROPOSE), T0)
            member.round, member.step = 1, PROPOSE  # the same place, without a lock
        prevotes = votes_sent(feed(member, [proposal(1, other_value)]), "prevote")
        expected = other_value.block_hash() if member is fresh else None
        assert [v.block_hash for v in prevotes] == [expected]


def test_a_restarted_replica_holds_the_block_it_locked_on_and_proposes_it_again() -> None:
    """Found by review: only a replica's own messages were durable, so one restarted after
    locking on another proposer's block knew its hash only. As proposer it built a new block,
    which every locked replica prevotes nil: with the block lost everywhere (its proposer
    down, the others restarted) the height never ended. The proposal is now made durable
    before the precommit that locks on it, with the prevotes that justify the lock, and
    proposed again at the replica's turn (line 15), which a replica that never saw the first
    round takes (line 28)."""
    me = proposer(1, 1)
    assert me != proposer(1, 0)
    value = block()
    _, log = _locked_on(value, me)
    persisted = [
        (m.vote_type, m.public_key == KEYS[me].public_key_hex) if isinstance(m, Vote) else m
        for m in log
    ]
    others = [i for i in range(4) if i != me]
    assert persisted == [  # the block and its polka before the lock
        ("prevote", True),
        proposal(0, value),
        ("prevote", False),
        ("prevote", False),
        ("precommit", True),
    ]
    restarted = replica(me, signed=log)
    restarted.on_start(T0 + 5000)
    assert restarted.locked_hash == value.block_hash()
    effects = _to_round_1(restarted, me)
    effects += restarted.on_timeout(Timeout(height=1, round=1, step=REBROADCAST), T0 + 6000)
    sent = [e.message for e in effects if isinstance(e, Broadcast)]
    proposed = [m for m in sent if isinstance(m, Proposal)]
    assert {(p.round, p.valid_round, p.block_hash) for p in proposed} == {
        (1, 0, value.block_hash())
    }
    # A replica that saw nothing of round 0 (its proposer is down) is sent the polka with it,
    # and prevotes the block again.
    fresh = next(i for i in others if i != proposer(1, 0))
    newcomer = replica(fresh)
    newcomer.on_start(T0 + 5000)
    newcomer.on_timeout(Timeout(height=1, round=0, step=PROPOSE), T0 + 5000)
    feed(newcomer, [vote(i, "precommit", 0, None) for i in others if i != fresh][:2])
    newcomer.on_timeout(Timeout(height=1, round=0, step="precommit"), T0 + 5000)
    assert newcomer.round == 1
    prevotes = votes_sent(feed(newcomer, sent), "prevote")
    assert [v.block_hash for v in prevotes] == [value.block_hash()]
    # Without the block in the log, the same replica proposes a block of its own, which no
    # replica locked on the first can prevote: what stalled the height.
    forgetful = replica(me, signed=[m for m in log if isinstance(m, Vote)])
    forgetful.on_start(T0 + 5000)
    effects = _to_round_1(forgetful, me)
    (new,) = [
        e.message for e in effects if isinstance(e, Broadcast) and isinstance(e.message, Proposal)
    ]
    assert new.block_hash != value.block_hash() and new.valid_round == NO_ROUND


def test_a_later_polka_unlocks_line_28() -> None:
    me = next(i for i in range(4) if i not in (proposer(1, 0), proposer(1, 1), proposer(1, 2)))
    first_value, later_value = block(), block(time=T0 + 1)
    target, _ = _locked_on(first_value, me)
    _to_round_1(target, me)
    others = [i for i in range(4) if i != me]
    # Round 1: three others prevote later_value (a polka this replica missed voting for).
    target.on_timeout(Timeout(height=1, round=1, step=PROPOSE), T0)
    feed(target, [vote(i, "prevote", 1, later_value.block_hash()) for i in others])
    feed(target, [vote(i, "precommit", 1, None) for i in others[:2]])
    target.on_timeout(Timeout(height=1, round=1, step="precommit"), T0)
    assert target.round == 2 and target.locked_round == 0
    prevotes = votes_sent(feed(target, [proposal(2, later_value, valid_round=1)]), "prevote")
    assert [v.block_hash for v in prevotes] == [later_value.block_hash()]


def test_a_restarted_replica_reuses_what_it_signed_byte_for_byte() -> None:
    me = not_proposer(1, 0)
    target = replica(me)
    target.on_start(T0)
    effects = target.on_timeout(Timeout(height=1, round=0, step=PROPOSE), T0)
    (logged,) = [e.message for e in effects if isinstance(e, Persist)]
    assert isinstance(logged, Vote) and logged.block_hash is None
    restarted = replica(me, signed=[logged])
    effects = restarted.on_start(T0 + 5000)
    effects += feed(restarted, [proposal(0, block())])  # would prevote the block if it could
    assert not signed_by(effects, Persist)
    assert votes_sent(effects, "prevote") == [logged]
    assert restarted.step == "prevote"


def test_a_restarted_proposer_sends_the_same_proposal() -> None:
    me = proposer(1, 0)
    effects = replica(me).on_start(T0)
    log = [e.message for e in effects if isinstance(e, Persist)]
    again = replica(me, signed=log).on_start(T0 + 7000)  # a later clock would build another block
    assert not signed_by(again, Persist)
    assert [e.message for e in again if isinstance(e, Broadcast)] == log


def test_more_than_a_third_in_a_later_round_skips_to_it() -> None:
    me = not_proposer(1, 0)
    target = replica(me)
    target.on_start(T0)
    others = [i for i in range(4) if i != me]
    feed(target, [vote(others[0], "prevote", 4, None)])
    assert target.round == 0
    feed(target, [vote(others[1], "precommit", 4, None)])
    assert target.round == 4  # line 55


def test_a_decision_message_catches_up_and_a_forged_one_is_ignored() -> None:
    target = replica(0)
    target.on_start(T0)
    decided = block()
    weak = sign_certificate(
        chain_id=CHAIN_ID, height=1, round=0, block_hash=decided.block_hash(), keys=KEYS[1:3]
    )
    assert target.on_message(Decision(block=decided, certificate=weak), T0) == []
    strong = sign_certificate(
        chain_id=CHAIN_ID, height=1, round=2, block_hash=decided.block_hash(), keys=KEYS[1:]
    )
    effects = target.on_message(Decision(block=decided, certificate=strong), T0)
    assert isinstance(effects[0], Decide) and effects[0].certificate == strong
    assert target.height == 2 and target.last_certificate == strong
    invalid = dataclasses.replace(decided, header=dataclasses.replace(decided.header, height=2))
    certificate = sign_certificate(
        chain_id=CHAIN_ID, height=2, round=0, block_hash=invalid.block_hash(), keys=KEYS
    )
    assert (
        target.on_message(Decision(block=invalid, certificate=certificate), T0) == []
    )  # does not apply


def _forgeries(genuine: Proposal) -> list[Proposal]:
    """The genuine proposal's signature and header with other bodies, as anyone who saw it
    can send them: fewer transactions, others, other evidence."""
    value = genuine.block
    a, b = (vote(3, "prevote", 0, value) for value in (None, "ab" * 32))
    bodies = [
        dataclasses.replace(value, transactions=value.transactions[:1]),
        dataclasses.replace(value, transactions=tuple(WORLD.workload[5:8])),
        dataclasses.replace(value, evidence=(make_evidence(a, b),)),
    ]
    return [dataclasses.replace(genuine, block=body) for body in bodies]


def test_a_replayed_proposal_signature_with_another_body_does_not_take_the_slot() -> None:
    me = not_proposer(1, 0)
    genuine = proposal(0, block())
    for forged in _forgeries(genuine):
        assert forged.block_hash == genuine.block_hash  # the signature verifies for it
        target = replica(me)
        target.on_start(T0)
        assert feed(target, [forged]) == []  # refused before the quorum holds it
        assert target.quorum.current.proposals == {}
        effects = feed(target, [genuine])
        assert [v.block_hash for v in votes_sent(effects, "prevote")] == [genuine.block_hash]
        assert target.quorum.current.proposals[0] is genuine


def test_a_forged_proposal_of_the_next_height_gives_its_slot_back_once_the_parent_is_known() -> (
    None
):
    me = next(i for i in range(4) if i not in (proposer(1, 0), proposer(2, 0)))
    target = replica(me)
    target.on_start(T0)
    first = block()
    parent = apply_block(WORLD.genesis, first)
    decision = _decision(first, WORLD.genesis)
    second = _second_block(parent, decision.certificate)
    genuine = proposal(0, second, height=2)
    forged = dataclasses.replace(genuine, block=dataclasses.replace(second, transactions=()))
    feed(target, [forged])  # held for height 2: its parent is not known yet
    assert target.quorum.following.proposals[0] is forged
    feed(target, [decision])
    assert target.height == 2 and target.quorum.current.proposals == {}
    target.on_timeout(Timeout(height=2, round=0, step=NEW_HEIGHT), T0 + 20)
    effects = feed(target, [genuine], now=T0 + 20)
    assert [v.block_hash for v in votes_sent(effects, "prevote")] == [genuine.block_hash]


def test_a_forged_decision_does_not_speak_for_the_real_block() -> None:
    """A certificate replayed with another body is ignored, and the verdict on that body is
    not remembered for the block hash: the real decision and proposal still count."""
    me = not_proposer(1, 0)
    genuine = block()
    decision = _decision(genuine, WORLD.genesis)
    target = replica(me)
    target.on_start(T0)
    for forged in _forgeries(proposal(0, genuine)):
        assert feed(target, [Decision(block=forged.block, certificate=decision.certificate)]) == []
    effects = feed(target, [proposal(0, genuine)])
    assert [v.block_hash for v in votes_sent(effects, "prevote")] == [genuine.block_hash()]
    effects = feed(target, [decision])
    assert [e.block for e in effects if isinstance(e, Decide)] == [genuine]


def test_a_proposal_holds_at_most_its_limit_halved_each_round() -> None:
    me = proposer(1, 1)
    capped = Replica(
        key=KEYS[me],
        state=WORLD.genesis,
        last_certificate=None,
        transactions=transaction_source(WORLD, limit=10),
        proposal_transactions_max=4,
    )
    assert [capped.proposal_limit(r) for r in range(5)] == [4, 2, 1, 1, 1]
    chain_max = WORLD.genesis.params.block_transactions_max
    assert replica(me).proposal_limit(0) == chain_max  # no bound of its own: the chain's
    assert replica(me).proposal_limit(1) == chain_max // 2
    assert replica(me).proposal_limit(99) == 1
    capped.on_start(T0)
    others = [i for i in range(4) if i != me][:2]
    effects = feed(capped, [vote(i, "prevote", 1, None) for i in others])  # line 55: round 1
    (proposed,) = [
        e.message for e in effects if isinstance(e, Persist) and isinstance(e.message, Proposal)
    ]
    assert proposed.round == 1 and len(proposed.block.transactions) == 2


def test_a_lock_signed_at_a_later_height_is_taken_back_when_the_replica_gets_there() -> None:
    """A node writes a decided block while its replica goes on: after a crash its store may
    be a height behind its log. The lock it signed at that later height must hold there."""
    me = next(i for i in range(4) if i not in (proposer(1, 0), proposer(2, 0)))
    first = block()
    decision = _decision(first, WORLD.genesis)
    locked_on = "ab" * 32
    precommit = vote(me, "precommit", 0, locked_on, height=2)
    target = replica(me, signed=[precommit])
    target.on_start(T0)
    feed(target, [decision])
    assert target.height == 2
    assert (target.locked_round, target.locked_hash) == (0, locked_on)
    target.on_timeout(Timeout(height=2, round=0, step=NEW_HEIGHT), T0 + 20)
    second = _second_block(apply_block(WORLD.genesis, first), decision.certificate)
    effects = feed(target, [proposal(0, second, height=2)], now=T0 + 20)
    assert [v.block_hash for v in votes_sent(effects, "prevote")] == [None]  # locked elsewhere
    assert target.signed[(2, 0, "precommit")] is precommit  # never signed anew


def test_a_validator_behind_is_sent_the_decision_once_per_interval() -> None:
    target = replica(0)
    target.on_start(T0)
    decided = block()
    certificate = sign_certificate(
        chain_id=CHAIN_ID, height=1, round=0, block_hash=decided.block_hash(), keys=KEYS[1:]
    )
    target.on_message(Decision(block=decided, certificate=certificate), T0)
    late = vote(2, "precommit", 0, decided.block_hash())
    assert target.on_message(late, T0 + 10) == []  # the usual stragglers after a decision
    later = T0 + CATCH_UP_INTERVAL_MS
    assert target.on_message(vote(2, "prevote", 3, None), later) == [
        SendDecision(to=KEYS[2].public_key_hex, height=1)
    ]
    assert target.on_message(vote(2, "prevote", 4, None), later + 1) == []  # rate limited
    assert target.on_message(vote(2, "prevote", 5, None), later + CATCH_UP_INTERVAL_MS) != []
    # A clock stepped back a minute: what was sent "in the future" does not hold the next
    # answer back for that minute (found by review), and the interval counts again from it.
    stepped_back = later - 60_000
    assert target.on_message(vote(2, "prevote", 6, None), stepped_back) != []
    assert target.on_message(vote(2, "prevote", 7, None), stepped_back + 1) == []
    stranger = sign_vote(
        key("stranger"), chain_id=CHAIN_ID, vote_type="prevote", height=1, round=9, block_hash=None
    )
    assert target.on_message(stranger, later * 2) == []


def test_a_forged_vote_of_a_decided_height_is_not_answered_and_keeps_no_slot() -> None:
    """Only a vote its sender signed asks for a decision: the keys are public (the genesis
    names them), and a forged vote would cost reads and sends of old blocks and take the
    validator's own catch-up slot."""
    target = replica(0)
    target.on_start(T0)
    decided = block()
    target.on_message(_decision(decided, WORLD.genesis, signers=(1, 2, 3)), T0)
    later = T0 + CATCH_UP_INTERVAL_MS
    signed = vote(2, "prevote", 3, None)
    forged = dataclasses.replace(signed, signature="00" * 64)
    assert target.on_message(forged, later) == []
    assert target.dropped.get("bad_signature") == 1
    other_chain = sign_vote(
        KEYS[2], chain_id="another-chain", vote_type="prevote", height=1, round=3, block_hash=None
    )
    assert target.on_message(other_chain, later) == []
    assert target.on_message(signed, later) == [  # the forgeries took no slot
        SendDecision(to=KEYS[2].public_key_hex, height=1)
    ]


def test_a_replayed_precommit_of_an_older_height_is_neither_answered_nor_takes_the_slot() -> None:
    """Found by review: anyone can take a validator's precommits from an export's
    certificates. Replayed every 100 ms, one of height 1 took the validator's catch-up slot
    from its own votes (stuck one height behind, it never got its decision), and each
    answer sent up to CATCH_UP_HEIGHTS_MAX old blocks. A vote older than one its validator
    was seen signing is no longer answered."""
    target = replica(0)
    target.on_start(T0)
    first = block()
    first_decision = _decision(first, WORLD.genesis, signers=(0, 1, 3))
    target.on_message(first_decision, T0)
    after_first = apply_block(WORLD.genesis, first)
    second = _second_block(after_first, first_decision.certificate)
    target.on_message(_decision(second, after_first, signers=(0, 1, 3)), T0 + 20)
    assert target.height == 3
    stuck = vote(2, "prevote", 1, None, height=2)  # validator 2, one height behind
    replayed = vote(2, "precommit", 0, first.block_hash(), height=1)  # from a certificate
    at = T0 + 20 + CATCH_UP_INTERVAL_MS  # past the stragglers after the decision
    assert target.on_message(stuck, at) == [SendDecision(to=KEYS[2].public_key_hex, height=2)]
    for tick in range(1, 30):  # ten a second for three seconds
        assert target.on_message(replayed, at + 100 * tick) == []
        if tick % 10 == 0:  # its own vote, re-sent each second, is answered each time
            again = target.on_message(stuck, at + 100 * tick)
            assert again == [SendDecision(to=KEYS[2].public_key_hex, height=2)]
    # Once it signs at this height, its precommits of height 2 are replays too.
    feed(target, [vote(2, "prevote", 0, None, height=3)], now=at + 5000)
    certified = vote(2, "precommit", 0, second.block_hash(), height=2)
    assert target.on_message(certified, at + 10_000) == []
    # But a validator that restarts lower (its block of height 2 was not yet durable when it
    # died) re-sends its prevotes of height 2 from its log: those are still answered (found
    # by review of the first version, which answered none of its votes again).
    assert target.on_message(stuck, at + 10_000) == [
        SendDecision(to=KEYS[2].public_key_hex, height=2)
    ]


def test_a_certified_precommit_replayed_is_answered_once_and_is_not_hearing() -> None:
    """Found by review: a node whose peers cannot reach it had never seen them sign, so the
    precommit of its last decided height, copied from any export, was answered once a
    second (sixteen blocks read and sent each time) and counted as hearing from a peer,
    which put off its probe for good."""
    target = replica(0)
    target.on_start(T0)
    first = block()
    target.on_message(_decision(first, WORLD.genesis, signers=(0, 1, 3)), T0)
    assert target.height == 2
    replayed = vote(2, "precommit", 0, first.block_hash(), height=1)
    heard = target.heard
    answers = [
        effect
        for second in range(1, 61)
        for effect in target.on_message(replayed, T0 + second * CATCH_UP_INTERVAL_MS)
    ]
    assert answers == [SendDecision(to=KEYS[2].public_key_hex, height=1)]
    assert target.heard == heard


def test_an_old_vote_draws_old_blocks_only_while_recent_or_new_and_else_the_latest_alone() -> None:
    """Found by review (decision 0006, "Open"): replayed old prevotes of a validator, or a
    silent validator's precommits taken from an export one height higher each second, made
    every correct validator send up to 16 old blocks to every peer once a second. A vote
    older than its validator's latest (or than one answered) draws the decisions from its
    height only within CATCH_UP_HEIGHTS_MAX of this height (a validator restarted lower),
    and otherwise the latest decision alone, whose certificate starts the validator's block
    sync (a second review: a validator restarted far lower, that one peer reached, had
    waited for its probe). A certified precommit is answered only if newer and recent. A
    validator's own lag, at a height it was not seen at or past, is answered from there."""
    target = replica(0)
    target.on_start(T0)
    state, certificate = WORLD.genesis, None
    blocks = []
    for height in range(1, 5):
        value = build_block(
            state,
            WORLD.workload[3 * (height - 1) : 3 * height],
            time=T0 + 10 * height,
            proposer=KEYS[proposer(height, 0)].public_key_hex,
            last_commit=certificate,
        ).block
        decision = _decision(value, state, signers=(0, 1, 3))
        target.on_message(decision, T0 + 10 * height)
        state, certificate = apply_block(state, value), decision.certificate
        blocks.append(value)
    assert target.height == 5
    latest = target.height - 1
    second = CATCH_UP_INTERVAL_MS
    at = T0 + 100 + second
    feed(target, [vote(2, "prevote", 0, None, height=5)], now=at)  # validator 2 signs here
    old = vote(2, "prevote", 3, None, height=2)  # three heights back: block sync's
    assert target.on_message(old, at + second) == [
        SendDecision(to=KEYS[2].public_key_hex, height=latest)
    ]
    certified_old = vote(2, "precommit", 0, blocks[1].block_hash(), height=2)
    assert target.on_message(certified_old, at + 2 * second) == []
    recent = vote(2, "prevote", 3, None, height=5 - CATCH_UP_HEIGHTS_MAX)
    assert target.on_message(recent, at + 3 * second) == [
        SendDecision(to=KEYS[2].public_key_hex, height=5 - CATCH_UP_HEIGHTS_MAX)
    ]
    # A silent validator's precommit of height 2, from an export: new, but not recent.
    assert target.on_message(vote(1, "precommit", 0, blocks[1].block_hash(), height=2), at) == []
    # Validator 3, never seen signing here, stuck at height 1: answered from there.
    stuck = vote(3, "prevote", 7, None, height=1)
    assert target.on_message(stuck, at) == [SendDecision(to=KEYS[3].public_key_hex, height=1)]
    # The same vote again (its lag, or a replay of a silent validator's last vote): the
    # latest decision alone, once a second at most, and not hearing from a peer (a second
    # review: each answer had put off the probe, once a second, for anyone's replay).
    heard = target.heard
    assert target.on_message(stuck, at + second // 2) == []
    assert target.on_message(stuck, at + second) == [
        SendDecision(to=KEYS[3].public_key_hex, height=latest)
    ]
    assert target.on_message(old, at + 10 * second) == [
        SendDecision(to=KEYS[2].public_key_hex, height=latest)
    ]
    assert target.heard == heard


def _second_block(parent: State, certificate: Certificate) -> Block:
    """Height 2's block on `parent`, by its round 0 proposer, committing height 1."""
    return build_block(
        parent,
        WORLD.workload[3:6],
        time=T0 + 10,
        proposer=KEYS[proposer(2, 0)].public_key_hex,
        last_commit=certificate,
    ).block


def _decision(value: Block, state: State, signers: Sequence[int] = (0, 1, 2)) -> Decision:
    certificate = sign_certificate(
        chain_id=CHAIN_ID,
        height=value.height,
        round=0,
        block_hash=value.block_hash(),
        keys=[KEYS[i] for i in signers],
    )
    assert apply_block(state, value)
    return Decision(block=value, certificate=certificate)


def test_evidence_goes_into_the_next_block_proposed_and_is_dropped_once_recorded() -> None:
    me = proposer(2, 0)
    equivocator = next(i for i in range(4) if i not in (me, proposer(1, 0)))
    witness = next(i for i in range(4) if i not in (me, equivocator, proposer(2, 0)))
    target, other = replica(me), replica(witness)
    conflicting = [vote(equivocator, "prevote", 0, h) for h in (None, "ab" * 32)]
    for member in (target, other):
        member.on_start(T0)
        feed(member, conflicting)
        assert [e.public_key for e in member.evidence.values()] == [
            KEYS[equivocator].public_key_hex
        ]
    first = block()
    for member in (target, other):
        member.on_message(_decision(first, WORLD.genesis), T0)
        assert member.height == 2 and len(member.evidence) == 1  # not recorded yet: kept
    effects = target.on_timeout(Timeout(height=2, round=0, step=NEW_HEIGHT), T0 + 500)
    (proposed,) = [e.message for e in effects if isinstance(e, Persist)][:1]
    assert isinstance(proposed, Proposal)
    (evidence,) = proposed.block.evidence
    assert evidence == next(iter(target.evidence.values()))
    verify_evidence(evidence, chain_id=CHAIN_ID, validators=WORLD.validators)
    # Another validator judges the proposal, evidence and all, with apply_block: it prevotes
    # for it; and nil for the same block whose evidence was forged.
    other.on_timeout(Timeout(height=2, round=0, step=NEW_HEIGHT), T0 + 500)
    prevotes = votes_sent(other.on_message(proposed, T0 + 500), "prevote")
    assert [v.block_hash for v in prevotes] == [proposed.block_hash]
    forged_vote = dataclasses.replace(evidence.b, signature=evidence.a.signature)
    forged = dataclasses.replace(
        proposed.block, evidence=(dataclasses.replace(evidence, b=forged_vote),)
    )
    forged = dataclasses.replace(
        forged,
        header=dataclasses.replace(
            forged.header, evidence_hash=compute_evidence_hash(forged.evidence)
        ),
    )
    judged = replica(witness)
    judged.on_message(_decision(first, WORLD.genesis), T0)
    judged.on_timeout(Timeout(height=2, round=0, step=NEW_HEIGHT), T0 + 500)
    bad = sign_proposal(
        KEYS[me], chain_id=CHAIN_ID, height=2, round=0, valid_round=NO_ROUND, block=forged
    )
    assert [v.block_hash for v in votes_sent(judged.on_message(bad, T0 + 500), "prevote")] == [None]
    # Once a decided block records it, every replica that held it lets it go.
    state_after_1 = apply_block(WORLD.genesis, first)
    for member in (target, other):
        member.on_message(_decision(proposed.block, state_after_1), T0 + 600)
        assert member.height == 3 and member.evidence == {}


def test_evidence_too_old_for_a_block_is_not_held() -> None:
    state = WORLD.genesis
    while state.height < EVIDENCE_AGE_HEIGHTS_MAX + 1:
        state = build_block(
            state, [], time=state.head_time + 1, proposer=KEYS[0].public_key_hex, last_commit=None
        ).state
    certificate = sign_certificate(
        chain_id=CHAIN_ID, height=state.height, round=0, block_hash=state.head_hash, keys=KEYS
    )
    target = Replica(
        key=KEYS[0],
        state=state,
        last_certificate=certificate,
        transactions=transaction_source(WORLD),
    )
    assert target.height == EVIDENCE_AGE_HEIGHTS_MAX + 2
    for height, kept in ((1, False), (2, True)):
        conflicting = [vote(3, "prevote", 0, h, height=height) for h in (None, "ab" * 32)]
        target.add_evidence(make_evidence(*conflicting))
        assert (f"evidence/{KEYS[3].public_key_hex}/{height}" in target.evidence) is kept


def test_a_replica_outside_the_set_follows_without_signing() -> None:
    observer = Replica(
        key=key("observer"),
        state=WORLD.genesis,
        last_certificate=None,
        transactions=transaction_source(WORLD),
    )
    effects = observer.on_start(T0)
    effects += observer.on_timeout(Timeout(height=1, round=0, step=PROPOSE), T0)
    effects += feed(observer, [proposal(0, block())])
    assert not signed_by(effects, Persist) and not signed_by(effects, Broadcast)
    decided = block()
    certificate = sign_certificate(
        chain_id=CHAIN_ID, height=1, round=0, block_hash=decided.block_hash(), keys=KEYS[:3]
    )
    assert signed_by(
        observer.on_message(Decision(block=decided, certificate=certificate), T0), Decide
    )


def test_rebroadcast_resends_what_was_signed_at_this_height() -> None:
    me = proposer(1, 0)
    target = replica(me)
    effects = target.on_start(T0)
    signed = [e.message for e in effects if isinstance(e, Persist)]
    (tick,) = timeouts(effects, REBROADCAST)
    again = target.on_timeout(tick.timeout, T0 + tick.delay_ms)
    assert {encode_message(e.message) for e in again if isinstance(e, Broadcast)} == {
        encode_message(message) for message in signed
    }
    assert len(signed_by(again, Broadcast)) == 2
    assert timeouts(again, REBROADCAST) == [tick]


def test_split_prevotes_wait_for_the_prevote_timeout_then_precommit_nil() -> None:
    me = not_proposer(1, 0)
    target = replica(me)
    target.on_start(T0)
    others = [i for i in range(4) if i != me]
    target.on_timeout(Timeout(height=1, round=0, step=PROPOSE), T0)
    effects = feed(
        target, [vote(others[0], "prevote", 0, "ab" * 32), vote(others[1], "prevote", 0, "cd" * 32)]
    )
    (scheduled,) = timeouts(effects, "prevote")  # line 34: 2f+1 prevotes, for nothing in common
    assert not votes_sent(effects, "precommit")
    stale = target.on_timeout(Timeout(height=1, round=1, step="prevote"), T0)
    assert not votes_sent(stale, "precommit")  # another round's timeout changes nothing
    effects = target.on_timeout(scheduled.timeout, T0 + scheduled.delay_ms)
    assert [v.block_hash for v in votes_sent(effects, "precommit")] == [None]  # line 61
    assert target.step == "precommit"
