"""Node shells around `consensus.replica.Replica`, and the invariants checked after every event.

Each simulated validator is a `Node`: a replica, a durable log of what it signed, a store of
what it decided, and a behaviour on the wire (honest or Byzantine). The node carries out its
replica's effects in order, exactly as the real shell must: Persist writes the log before
anything later happens, Decide appends to the store, Broadcast and SendDecision go through the
links, ScheduleTimeout through the clock. A crash loses the replica and every pending timer,
and keeps the log and the store; a restart builds a new replica from them. The shell's block
sync, which has no API here, is its hint and probe (`Simulation._block_sync`): a decision
two heights or more beyond a node has the sender send it the decisions it lacks.

Every message travels as bytes: it is encoded canonically, decoded by the strict decoder and
parsed, once per message, so the wire forms are exercised by every run.

`Checker` holds the invariants. After every event:
- agreement: no two correct validators decide different blocks at one height;
- validity: the first decided block of each height applies (`apply_block`, which asserts
  conservation of units) to the state of the height before, giving the decided state;
- the hash chain is unbroken (parent hash and last commit hash);
- every certificate a correct validator decides with passes `verify_certificate` against the
  set governing its height;
- a correct validator signs at most one message per (height, round, type), across restarts,
  and sends what it signed only after persisting it;
- every piece of evidence a correct replica holds, and every piece a decided block carries,
  verifies against the set that governed its height and names a Byzantine validator, never a
  correct one;
- a correct replica holds at most 3 messages per validator for each round it may hold.

And after the heal, once the core has progressed: every piece of evidence a core validator
holds then is recorded in the decided chain within EVIDENCE_COMMIT_MS_MAX (each core validator
proposes in turn, and its blocks carry what it holds).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

from consensus.messages import (
    ConsensusError,
    Decision,
    Message,
    decode_message,
    encode_message,
    verify_decision,
)
from consensus.replica import (
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
from ledger.blocks import Block, Certificate, verify_certificate
from ledger.crypto import ZERO_HASH_HEX, SignatureError, verify_signature
from ledger.evidence import Evidence, Vote, verify_evidence
from ledger.limits import (
    CATCH_UP_INTERVAL_MS,
    EVIDENCE_AGE_HEIGHTS_MAX,
    ROUNDS_AHEAD_MAX,
    SYNC_LAG_HEIGHTS_MIN,
    SYNC_PROBE_MS,
)
from ledger.state import State
from ledger.state_transition import apply_block
from tests.consensus.simulation.byzantine import BEHAVIOUR_CLASSES, TICK_MS, Behaviour
from tests.consensus.simulation.network import Clock, Links
from tests.consensus.simulation.scenario import TRANSACTION_GAP_MS, Scenario
from tests.consensus.simulation.world import (
    World,
    make_world,
    transaction_source,
    with_set_change,
)

HEAL_PROGRESS_MS_MAX = 30_000  # after the heal, every core validator decides a new height
# After that progress, the evidence the core holds is recorded within this much virtual time.
EVIDENCE_COMMIT_MS_MAX = 30_000
# A catch-up answer, with block sync for a lag beyond it (`Simulation._decisions_from`).
SIMULATED_CATCH_UP_HEIGHTS = 16


class SimulationFailure(AssertionError):
    """An invariant broke; the message names it, and the scenario replays it."""


@dataclass(slots=True)
class Stored:
    block: Block
    certificate: Certificate
    state: State


@dataclass(eq=False)
class Node:
    """One validator process: what survives a crash is `log` and `store`."""

    id: int
    validator: int  # index into World.keys (twins share one)
    endpoint: int  # where the links see it: the validator index, n + index for a second twin
    behaviour: Behaviour
    skew_ms: int
    correct: bool
    replica: Replica | None = None
    incarnation: int = 0
    log: list[SignedMessage] = field(default_factory=list)
    logged: dict[tuple[int, int, str], SignedMessage] = field(default_factory=dict)
    store: list[Stored] = field(default_factory=list)
    torn_crash: bool = False
    synced_at: int | None = None  # the last block sync a decision's hint started
    probed_at: int = 0  # the process's start, or its last probe (`BftProducer._probed_at`)

    @property
    def height(self) -> int:
        """The last height this node decided (0 before the first)."""
        return len(self.store)


def slot(message: SignedMessage) -> tuple[int, int, str]:
    kind = message.vote_type if isinstance(message, Vote) else "proposal"
    return (message.height, message.round, kind)


class Checker:
    def __init__(self, world: World, byzantine_keys: set[str]) -> None:
        self.world = world
        self.byzantine_keys = byzantine_keys
        self.states: list[State] = [world.genesis]  # index h: the state after height h
        self.blocks: list[str] = []  # index h-1: the block hash decided at height h
        self.signed: dict[tuple[str, int, int, str], bytes] = {}
        self.evidence_seen: set[Evidence] = set()  # every piece checked (held or committed)
        self.evidence_committed = 0
        self.certificates: dict[int, list[Certificate]] = {}  # every correct decision's

    def fail(self, message: str) -> SimulationFailure:
        return SimulationFailure(message)

    def on_persist(self, node: Node, message: SignedMessage) -> None:
        if not node.correct:
            return
        key = self.world.keys[node.validator].public_key_hex
        if isinstance(message, Vote) and message.public_key != key:
            if message.vote_type != "prevote":
                raise self.fail(f"node {node.id} persisted a {message.vote_type} of another key")
            return  # another validator's prevote, kept with a lock's block
        if not isinstance(message, Vote) and not _signed_by(key, message):
            return  # another proposer's proposal, kept for the block a precommit locks on
        content = message.signed_bytes()
        known = self.signed.setdefault((key, *slot(message)), content)
        if known != content:
            raise self.fail(f"correct node {node.id} equivocated at {slot(message)}")

    def on_send(self, node: Node, message: Message) -> None:
        """A correct node sends what it signed only after persisting it."""
        if not node.correct or isinstance(message, Decision):
            return
        key = self.world.keys[node.validator].public_key_hex
        if isinstance(message, Vote) and message.public_key != key:
            return  # a relayed vote of another validator
        if node.logged.get(slot(message)) != message:
            raise self.fail(f"node {node.id} sent {slot(message)} before persisting it")

    def on_decide(self, node: Node, decide: Decide) -> None:
        block, height = decide.block, decide.block.height
        if height != node.height + 1:
            raise self.fail(f"node {node.id} decided height {height} after {node.height}")
        if not node.correct:
            return
        self.certificates.setdefault(height, []).append(decide.certificate)
        block_hash = block.block_hash()
        before = self.states[height - 1]
        if height <= len(self.blocks):
            if self.blocks[height - 1] != block_hash:
                raise self.fail(
                    f"agreement: node {node.id} decided {block_hash[:12]} at height {height},"
                    f" another correct node {self.blocks[height - 1][:12]}"
                )
        else:
            parent = self.blocks[-1] if self.blocks else before.genesis_hash
            if block.header.parent_hash != parent:
                raise self.fail(f"hash chain broken at height {height}")
            expected_last = (
                ZERO_HASH_HEX if block.last_commit is None else block.last_commit.certificate_hash()
            )
            if block.header.last_commit_hash != expected_last or (
                (block.last_commit is None) != (height == 1)
            ):
                raise self.fail(f"last commit broken at height {height}")
            after = apply_block(before, block)  # validity; asserts conservation
            self.blocks.append(block_hash)
            self.states.append(after)
            for evidence in block.evidence:
                self.check_evidence(evidence, f"block {height}")
                if after.get(evidence.state_key()) is None:
                    raise self.fail(f"block {height} does not record {evidence.state_key()}")
                self.evidence_committed += 1
        after = self.states[height]
        if (decide.state.state_root, decide.state.head_hash) != (after.state_root, block_hash):
            raise self.fail(f"node {node.id} decided a state that replay does not give")
        verify_certificate(
            decide.certificate,
            chain_id=before.chain_id,
            height=height,
            block_hash=block_hash,
            validators=before.current_validators(),
        )

    def check_evidence(self, evidence: Evidence, where: str) -> None:
        """Evidence verifies against the set that governed its height and names a Byzantine
        validator. The states decided so far give the set: the state after height h - 1
        governs h, the latest state's next set the height after its own (H+2 rule); a
        replica holds no message beyond that."""
        if evidence in self.evidence_seen:
            return
        if evidence.public_key not in self.byzantine_keys:
            raise self.fail(f"{where}: evidence names correct validator {evidence.public_key}")
        if evidence.height <= len(self.states):
            governing = self.states[evidence.height - 1].current_validators()
        else:
            governing = self.states[-1].next_validators()
        verify_evidence(evidence, chain_id=self.world.genesis.chain_id, validators=governing)
        self.evidence_seen.add(evidence)

    def on_event(self, node: Node) -> None:
        replica = node.replica
        if not node.correct or replica is None:
            return
        for evidence in replica.evidence.values():
            self.check_evidence(evidence, f"node {node.id}")
        held = replica.quorum
        n = self.world.n
        limit_current = 3 * n * (replica.round + ROUNDS_AHEAD_MAX + 1)
        limit_next = 3 * n * (ROUNDS_AHEAD_MAX + 1)
        if (
            held.current.message_count() > limit_current
            or held.following.message_count() > limit_next
        ):
            raise self.fail(f"node {node.id} holds more messages than its bounds allow")


@dataclass(slots=True, kw_only=True)
class Report:
    heights: int  # the longest chain a correct node decided
    healed_at_ms: int
    progress_ms: int  # from the heal to the new height at every core node
    events: int
    messages: int
    lost: int
    evidence: int  # pieces checked: held by correct validators or carried by decided blocks
    evidence_committed: int  # pieces recorded by decided blocks
    evidence_awaited: int  # pieces the core held after the heal, each then recorded
    evidence_ms: int  # from the core's progress to the last awaited piece recorded
    trace: str  # sha256 of every effect carried out: equal traces, equal runs


class Simulation:
    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.world = make_world(scenario.n)
        self.rng = random.Random(scenario.seed)
        self.clock = Clock()
        self.links = Links(scenario, self.rng)
        gap_ms = TRANSACTION_GAP_MS if scenario.empty_block_ms else 0
        workload = (
            with_set_change(scenario.n, scenario.set_change, scenario.set_change_at)
            if scenario.set_change
            else None
        )
        self.source = transaction_source(self.world, gap_ms=gap_ms, workload=workload)
        behaviours = dict(scenario.byzantine)
        self.nodes: list[Node] = []
        for validator in range(scenario.n):
            name = behaviours.get(validator)
            copies = 2 if name == "twins" else 1
            for copy in range(copies):
                behaviour = BEHAVIOUR_CLASSES.get(name or "", Behaviour)(
                    self.world.keys[validator], self.rng
                )
                self.nodes.append(
                    Node(
                        id=len(self.nodes),
                        validator=validator,
                        endpoint=validator + copy * scenario.n,
                        behaviour=behaviour,
                        skew_ms=scenario.skew_ms[validator] + 97 * copy,
                        correct=name is None,
                    )
                )
        self.checker = Checker(
            self.world, {self.world.keys[index].public_key_hex for index in behaviours}
        )
        self._wire: dict[int, tuple[Message, Message]] = {}
        self.trace = hashlib.sha256()  # every effect of every event, in order
        self.events = 0
        self.healed_at: int | None = None
        self.heal_target: int | None = None
        self.progress_at: int | None = None
        self.awaited: set[str] | None = None  # evidence the core held at progress, by state key
        self.recorded_at: int | None = None

    # --- running ------------------------------------------------------------------------------

    def run(self) -> Report:
        for node in self.nodes:
            self.clock.at(0, partial(self._start, node))
            if node.behaviour.ticks:
                self.clock.at(TICK_MS, partial(self._tick, node))
        for crash in self.scenario.crashes:
            for node in self._nodes_of(crash.node):
                self.clock.at(crash.at_ms, partial(self._crash, node, crash.torn))
                restart = crash.at_ms + crash.down_ms
                if crash.node not in self.scenario.core or restart < self.scenario.chaos_ms:
                    self.clock.at(restart, partial(self._restart, node))
        self.clock.at(self.scenario.chaos_ms, self._heal)
        deadline = self.scenario.chaos_ms + HEAL_PROGRESS_MS_MAX
        while self.recorded_at is None and self.clock.step():
            self.events += 1
            if self.progress_at is None and self.clock.now > deadline:
                raise SimulationFailure(
                    f"no progress: {HEAL_PROGRESS_MS_MAX} ms after the heal, core heights"
                    f" {[self.nodes[i].height for i in self._core_node_ids()]},"
                    f" target {self.heal_target}"
                )
            if self.progress_at is not None and (
                self.clock.now > self.progress_at + EVIDENCE_COMMIT_MS_MAX
            ):
                raise SimulationFailure(
                    f"evidence not recorded {EVIDENCE_COMMIT_MS_MAX} ms after progress:"
                    f" {sorted(self._unrecorded())}"
                )
        assert self.healed_at is not None and self.progress_at is not None
        assert self.awaited is not None and self.recorded_at is not None
        return Report(
            heights=len(self.checker.blocks),
            healed_at_ms=self.healed_at,
            progress_ms=self.progress_at - self.healed_at,
            events=self.events,
            messages=self.links.sent,
            lost=self.links.lost,
            evidence=len(self.checker.evidence_seen),
            evidence_committed=self.checker.evidence_committed,
            evidence_awaited=len(self.awaited),
            evidence_ms=self.recorded_at - self.progress_at,
            trace=self.trace.hexdigest(),
        )

    def _nodes_of(self, validator: int) -> list[Node]:
        return [node for node in self.nodes if node.validator == validator]

    def _core_node_ids(self) -> list[int]:
        return [node.id for node in self.nodes if node.validator in self.scenario.core]

    def _now(self, node: Node) -> int:
        return self.world.genesis.head_time + self.clock.now + node.skew_ms

    def _start(self, node: Node) -> None:
        if node.replica is not None:
            return
        head = node.store[-1] if node.store else None
        node.probed_at = self.clock.now  # a new process: its first probe is SYNC_PROBE_MS on
        node.replica = Replica(
            key=self.world.keys[node.validator],
            state=self.world.genesis if head is None else head.state,
            last_certificate=None if head is None else head.certificate,
            transactions=self.source,
            signed=tuple(node.log),
            timeouts=Timeouts(empty_block_ms=self.scenario.empty_block_ms),
        )
        self._carry_out(node, node.replica.on_start(self._now(node)))

    def _crash(self, node: Node, torn: bool) -> None:
        if torn:
            node.torn_crash = True  # the next event stops part way through its effects
        else:
            self._stop(node)

    def _stop(self, node: Node) -> None:
        node.replica = None
        node.incarnation += 1
        node.torn_crash = False

    def _restart(self, node: Node) -> None:
        if node.replica is None:
            self._start(node)
        else:
            node.torn_crash = False

    def _heal(self) -> None:
        self.links.healed = True
        self.healed_at = self.clock.now
        self.heal_target = max(node.height for node in self.nodes if node.correct) + 1
        for node_id in self._core_node_ids():
            self._restart(self.nodes[node_id])

    def _tick(self, node: Node) -> None:
        if node.replica is not None:
            self._send_all(node, node.behaviour.tick(node.replica, self._peers(node)))
        self.clock.at(self.clock.now + TICK_MS, partial(self._tick, node))

    # --- effects ------------------------------------------------------------------------------

    def _deliver(self, node: Node, message: Message, source: int) -> None:
        replica = node.replica
        if replica is None:
            return
        node.behaviour.received(message)
        self._send_all(node, node.behaviour.on_receive(replica, message, self._peers(node)))
        self._carry_out(node, replica.on_message(message, self._now(node)))
        if isinstance(message, Decision) and node.correct and node.replica is not None:
            self._block_sync(node, message, self.nodes[source])  # unless it crashed just now

    def _block_sync(self, node: Node, decision: Decision, source: Node) -> None:
        """The node shell's block sync (`BftProducer._hint`, `consensus.sync`): a decision
        at least SYNC_LAG_HEIGHTS_MIN beyond what `node` decided is a hint, and the node
        fetches the decisions it lacks from a peer, here the sender, over the same link (an
        answer `SendDecision`'s cannot give: a validator is answered from its vote's height
        only once, then with the latest decision alone). A decision its head's set certifies
        starts a sync at once, at most one a CATCH_UP_INTERVAL_MS; one it cannot check (the
        set changed since) only at its probe, at most one a SYNC_PROBE_MS from the last or
        from the process's start. Found by this simulation (2026-12-07): a validator
        restarted below a set change waited for a probe that peers deciding far ahead never
        let come."""
        replica = node.replica
        assert replica is not None
        if (
            decision.height < node.height + SYNC_LAG_HEIGHTS_MIN
            or source.behaviour.name == "silent"
        ):
            return
        now = self.clock.now
        try:
            verify_decision(
                decision, chain_id=self.world.genesis.chain_id, validators=replica.validators
            )
        except ConsensusError:
            if now - node.probed_at < SYNC_PROBE_MS:
                return
            node.probed_at = now
        else:
            if node.synced_at is not None and now - node.synced_at < CATCH_UP_INTERVAL_MS:
                return
        node.synced_at = now
        fetched = self._decisions_from(source, node.height + 1)
        self._send_all(source, [(node.id, d) for d in fetched])

    def _timeout(self, node: Node, incarnation: int, timeout: Timeout) -> None:
        if node.replica is None or node.incarnation != incarnation:
            return
        self._carry_out(node, node.replica.on_timeout(timeout, self._now(node)))

    def _carry_out(self, node: Node, effects: Sequence[Effect]) -> None:
        count = len(effects)
        if node.torn_crash and count:
            count = self.rng.randrange(count)  # the process dies part way through
        for effect in effects[:count]:
            self._carry_out_one(node, effect)
        if node.torn_crash and effects:
            self._stop(node)
        self.checker.on_event(node)
        self._check_progress(node)

    def _carry_out_one(self, node: Node, effect: Effect) -> None:
        self.trace.update(f"{self.clock.now} {node.id} {describe(effect)}\n".encode())
        if isinstance(effect, Persist):
            self.checker.on_persist(node, effect.message)
            node.log.append(effect.message)
            message = effect.message
            if not isinstance(message, Vote) or message.public_key == self._public_key(node):
                node.logged[slot(message)] = message  # what it signed (and a kept proposal)
        elif isinstance(effect, Broadcast):
            self.checker.on_send(node, effect.message)
            assert node.replica is not None
            sends = node.behaviour.broadcast(node.replica, effect.message, self._peers(node))
            self._send_all(node, sends)
        elif isinstance(effect, SendDecision):
            targets = [peer.id for peer in self._nodes_of(self._validator_of(effect.to))]
            if node.behaviour.name != "silent":
                self._send_all(
                    node,
                    [(t, d) for d in self._decisions_from(node, effect.height) for t in targets],
                )
        elif isinstance(effect, ScheduleTimeout):
            self.clock.at(
                self.clock.now + effect.delay_ms,
                partial(self._timeout, node, node.incarnation, effect.timeout),
            )
        elif isinstance(effect, Reject):
            pass  # the workload offers again what is not applied: a pool's business, not ours
        else:
            assert isinstance(effect, Decide)
            self.checker.on_decide(node, effect)
            node.store.append(Stored(effect.block, effect.certificate, effect.state))

    def _public_key(self, node: Node) -> str:
        return self.world.keys[node.validator].public_key_hex

    def _validator_of(self, public_key: str) -> int:
        return next(i for i, k in enumerate(self.world.keys) if k.public_key_hex == public_key)

    def _peers(self, node: Node) -> list[int]:
        return [peer.id for peer in self.nodes if peer.id != node.id]

    def _send_all(self, node: Node, sends: Sequence[tuple[int, Message]]) -> None:
        for target_id, message in sends:
            target = self.nodes[target_id]
            wire = self._over_the_wire(message)
            for delay in self.links.delays(node.endpoint, target.endpoint, self.clock.now):
                self.clock.at(self.clock.now + delay, partial(self._deliver, target, wire, node.id))

    def _decisions_from(self, node: Node, height: int) -> list[Decision]:
        """What a validator behind gets for a SendDecision, to it alone: the decisions of
        `height` and of the heights after it that `node` has, at most
        SIMULATED_CATCH_UP_HEIGHTS and, beyond the first, block_transactions_max transactions
        in all. The node shell sends CATCH_UP_HEIGHTS_MAX (2) to every peer, and a validator
        further behind fetches the rest by block sync (`consensus.sync`), from the peers'
        API to itself; the simulation has no API, so this answer stands in for both. One a
        round trip was too slow: a validator cut off during the chaos fell further behind a
        7-validator chain deciding faster than a height a second, never proposed again, and
        so never put the evidence it held in a block."""
        decisions: list[Decision] = []
        if height < 1:
            return decisions
        budget = self.world.genesis.params.block_transactions_max
        for stored in node.store[height - 1 : height - 1 + SIMULATED_CATCH_UP_HEIGHTS]:
            budget -= len(stored.block.transactions)
            if decisions and budget < 0:
                break
            decisions.append(Decision(block=stored.block, certificate=stored.certificate))
        return decisions

    def _over_the_wire(self, message: Message) -> Message:
        """The message as a peer parses it from its canonical bytes (once per message)."""
        cached = self._wire.get(id(message))
        if cached is None or cached[0] is not message:
            limit = self.world.genesis.params.transaction_bytes_max
            parsed = decode_message(encode_message(message), transaction_bytes_max=limit)
            if parsed != message:
                raise SimulationFailure(f"wire round trip changed {type(message).__name__}")
            cached = self._wire[id(message)] = (message, parsed)
        return cached[1]

    def _check_progress(self, node: Node) -> None:
        if self.heal_target is None:
            return
        if self.progress_at is None:
            core = [self.nodes[i] for i in self._core_node_ids()]
            if all(member.height >= self.heal_target for member in core):
                self.progress_at = self.clock.now
                self.awaited = {
                    key
                    for member in core
                    if member.replica is not None
                    for key in member.replica.evidence
                }
        if self.progress_at is not None and not self._unrecorded():
            self.recorded_at = self.clock.now

    def _unrecorded(self) -> set[str]:
        """Awaited evidence the decided chain has not recorded (and still could)."""
        assert self.awaited is not None
        head = self.checker.states[-1]
        oldest = head.height + 1 - EVIDENCE_AGE_HEIGHTS_MAX
        return {
            key
            for key in self.awaited
            if head.get(key) is None and int(key.rsplit("/", 1)[1]) >= oldest
        }


def _signed_by(public_key: str, message: SignedMessage) -> bool:
    try:
        verify_signature(
            bytes.fromhex(public_key), message.signed_bytes(), bytes.fromhex(message.signature)
        )
    except SignatureError:
        return False
    return True


def describe(effect: Effect) -> str:
    """An effect as text, without object addresses: what the trace digest is made of."""
    if isinstance(effect, Persist | Broadcast):
        message = effect.message
        if isinstance(message, Decision):
            return f"{type(effect).__name__} decision {message.certificate.certificate_hash()}"
        return f"{type(effect).__name__} {slot(message)} {message.signature}"
    if isinstance(effect, Decide):
        return f"Decide {effect.block.block_hash()} {effect.certificate.certificate_hash()}"
    return repr(effect)


def run(scenario: Scenario) -> Report:
    """Run `scenario` to the end; raises `SimulationFailure` (with its replay) on a violation."""
    try:
        return Simulation(scenario).run()
    except Exception as error:  # an invariant, or a bug anywhere: both need the replay
        raise SimulationFailure(
            f"{type(error).__name__}: {error}\nreplay: run({scenario!r})"
        ) from error
