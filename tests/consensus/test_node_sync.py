"""A validator far behind catches up by block sync, then takes part again; a follower follows.

Four BFT producers on the in-memory transport (tests.consensus.test_node); block sources read
the other validators' stores as their API's export would serve them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from consensus.follower import Follower
from consensus.messages import Decision, Vote
from consensus.node import BftProducer
from consensus.producer import CommittedBlock
from consensus.sync import BlockSync, Head, MemorySource
from consensus.transport import MemoryNetwork
from consensus.wal import WAL_FILE_NAME, SignedLog, SignedMessage
from ledger.blocks import sign_certificate
from ledger.crypto import PrivateKey
from ledger.errors import LedgerError
from ledger.evidence import make_evidence, sign_vote
from ledger.genesis import parse_genesis
from ledger.limits import SYNC_PROBE_MS
from ledger.store import Store
from tests.consensus.test_node import IDLE, WORLD, Consortium, document
from tests.consensus.test_sync import NEW_VALIDATOR, Built, built, source
from tests.factory import CHAIN_ID, key

T = TypeVar("T")


class StoreSource:
    """Another node's store, served as its `GET /v1/checkpoint` and `GET /v1/export` would."""

    def __init__(self, name: str, store: Store) -> None:
        self.name = name
        self.store = store

    def latest(self) -> Head:
        height = self.store.head_height
        return Head(height, self.store.read_header(height).block_hash() if height else None)

    def export_lines(
        self, from_height: int, to_height: int, *, line_bytes_max: int
    ) -> Generator[bytes, None, None]:
        yield from self.store.export_lines(from_height, to_height)

    def close(self) -> None:
        pass


def sources(consortium: Consortium, but: int) -> list[StoreSource]:
    return [
        StoreSource(str(i), producer.store)
        for i, producer in consortium.producers.items()
        if i != but
    ]


def test_a_validator_far_behind_catches_up_by_block_sync_then_votes(tmp_path: Path) -> None:
    consortium = Consortium(tmp_path)
    try:
        consortium.run(lambda: min(consortium.heights().values()) >= 3)
        consortium.stop(3)
        before = max(consortium.heights().values())
        consortium.run(lambda: min(consortium.heights().values()) >= before + 12, seconds=60)
        consortium.start(3)
        restarted = consortium.producers[3]
        restarted.sync = BlockSync(
            sources(consortium, but=3), genesis=parse_genesis(document()), range_blocks_max=4
        )
        behind = restarted.state.height
        # Evidence this validator held before its replica is rebuilt at the head goes with it.
        equivocator = WORLD.keys[1]
        conflicting = [
            sign_vote(
                equivocator,
                chain_id=CHAIN_ID,
                vote_type="prevote",
                height=behind,
                round=0,
                block_hash=block_hash,
            )
            for block_hash in (None, "ab" * 32)
        ]
        restarted.replica.add_evidence(make_evidence(*conflicting))
        target = max(consortium.heights().values())
        consortium.run(lambda: restarted.state.height >= target + 3)
        synced = restarted.sync.counters.blocks
        assert synced >= target - behind - 3, (synced, behind, target)  # not one by one
        assert restarted.sync.counters.refusals == 0
        top = min(consortium.heights().values())
        assert len({tuple(consortium.hashes(i, top)) for i in range(4)}) == 1
        # Back at the head, it takes part: its replica is at the height after its store's
        # (once the blocks it decided meanwhile are written: under load they can be two),
        # and it signs there.
        consortium.run(lambda: restarted.replica.height == restarted.state.height + 1)
        consortium.run(lambda: any(m.height > target for m in restarted.log.read()))
        recorded = f"evidence/{equivocator.public_key_hex}/{behind}"
        consortium.run(lambda: restarted.state.get(recorded) is not None, seconds=60)
    finally:
        consortium.close()


def test_a_validator_on_a_rebuilt_store_signs_nothing_below_its_log_until_synced(
    tmp_path: Path,
) -> None:
    """Its store moved aside and created anew (`tanlian node --resync`), a validator keeps its
    signed-message log: heights it signed at and forgot are not signed at again."""
    consortium = Consortium(tmp_path)
    try:
        consortium.run(lambda: min(consortium.heights().values()) >= 6)
        consortium.stop(3)
        for path in (tmp_path / "3").glob("ledger.sqlite*"):
            path.rename(tmp_path / f"aside-{path.name}")
        Store.create(tmp_path / "3", document()).close()
        consortium.start(3)
        restarted = consortium.producers[3]
        decided = restarted.log.decided_height
        assert decided >= 5 and restarted.state.height == 0
        signed: list[int] = []
        append_all = restarted.log.append_all

        def spy(messages: Sequence[SignedMessage]) -> None:
            signed.extend(message.height for message in messages)
            append_all(messages)

        restarted.log.append_all = spy  # type: ignore[method-assign]
        # No peer's message and no block sync: it stays silent, it does not start over.
        consortium.run(lambda: max(consortium.heights().values()) >= decided + 2)
        assert restarted.state.height == 0 and signed == []
        restarted.sync = BlockSync(
            sources(consortium, but=3), genesis=parse_genesis(document()), range_blocks_max=4
        )
        target = max(consortium.heights().values())
        consortium.run(lambda: restarted.state.height >= target + 2, seconds=60)
        consortium.run(lambda: any(height > target for height in signed))
        assert min(signed) > decided, (signed, decided)
        top = min(consortium.heights().values())
        assert len({tuple(consortium.hashes(i, top)) for i in range(4)}) == 1
    finally:
        consortium.close()


def test_a_follower_follows_a_consortium_and_refuses_a_forger(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    consortium = Consortium(tmp_path)
    follower_store = Store.create(tmp_path / "follower", document())
    try:
        consortium.run(lambda: min(consortium.heights().values()) >= 12)
        lines = list(consortium.producers[0].store.export_lines(1, 12))
        # A forger serving the first five blocks, then block 7 in place of 6 and onwards.
        forger = MemorySource(name="forger", genesis_line=lines[0], lines=lines[1:6] + lines[7:])
        forger.head = 30
        sync = BlockSync([forger, *sources(consortium, but=-1)], genesis=parse_genesis(document()))
        follower = Follower(follower_store, sync, poll_ms=50)
        committed: list[CommittedBlock] = []

        def follow(height: int) -> Callable[[], bool]:
            def reached() -> bool:  # the consortium's loop drives the follower too
                while follower.due(0) and (result := follower.produce(0)) is not None:
                    committed.append(result)
                return follower.state.height >= height

            return reached

        consortium.run(follow(max(consortium.heights().values()) + 5))
        refusals = [r.getMessage() for r in caplog.records if r.name == "tanlian.consensus.sync"]
        assert "refused forger" in refusals[0] and "rule height at height 6" in refusals[0]
        assert all("refused forger" in refusal for refusal in refusals)
        assert len(refusals) == sync.counters.refusals <= 8  # asked again after a wait, doubling
        top = follower.state.height
        assert [c.block.height for c in committed] == list(range(1, top + 1))
        # The follower may be ahead of any one validator (it reads from all): compare with the
        # one furthest on.
        furthest, height = max(consortium.heights().items(), key=lambda item: item[1])
        common = min(top, height)
        mine = [follower_store.read_block(h).block_hash() for h in range(1, common + 1)]
        assert common >= top - 1 and mine == consortium.hashes(furthest, common)
        assert follower.pending_count() == 0 and not follower.outcomes
    finally:
        follower_store.close()
        consortium.close()


@dataclasses.dataclass(frozen=True)
class AtGenesis:
    """A store at genesis of `built()`'s chain (its set changes at height 5), a signed-message
    log, and block sync from that chain's export, as a validator restarted on an empty
    store (or a new member's first start) has them."""

    chain: Built
    store: Store
    log: SignedLog
    sync: BlockSync


@pytest.fixture
def at_genesis(tmp_path: Path) -> Generator[AtGenesis, None, None]:
    chain = built()
    Store.create(tmp_path, chain.chain.genesis_document).close()
    store = Store.open(tmp_path)
    log = SignedLog(
        tmp_path / WAL_FILE_NAME,
        public_key=NEW_VALIDATOR.public_key_hex,
        transaction_bytes_max=16384,
    )
    sync = BlockSync([source()], genesis=parse_genesis(chain.chain.genesis_document))
    try:
        yield AtGenesis(chain=chain, store=store, log=log, sync=sync)
    finally:
        sync.close()
        sync.close_sources()
        log.close()
        store.close()


def test_a_validator_brought_in_by_set_validators_starts_below_its_set_and_syncs_to_it(
    at_genesis: AtGenesis,
) -> None:
    """A member added by set_validators (here at height 5: it governs from 7) whose store is
    below that height (a new member's first start, a store rebuilt by `--resync`) is not
    refused: it syncs from its peers, signing nothing until its key is a validator there.
    With no peer to sync from, its key is refused as before."""
    store, log, sync = at_genesis.store, at_genesis.log, at_genesis.sync
    height = len(at_genesis.chain.lines)
    with pytest.raises(LedgerError) as refused:
        BftProducer(store, NEW_VALIDATOR, log=log)
    assert refused.value.code == "not_a_validator"
    producer = BftProducer(store, NEW_VALIDATOR, log=log, sync=sync)
    assert not producer.replica.is_validator
    sync.expect(height)
    deadline = time.monotonic() + 30
    while store.head_height < height and time.monotonic() < deadline:
        producer.produce(int(time.monotonic() * 1000))
    producer.produce(int(time.monotonic() * 1000))
    assert store.head_height == height  # the whole chain, synced and verified
    assert producer.replica.height == height + 1
    assert producer.replica.is_validator  # the new set's member, from here on
    assert all(m.height > height for m in log.read())  # nothing signed below


def test_a_key_no_validator_set_names_stops_once_synced_with_its_peers(
    at_genesis: AtGenesis,
) -> None:
    """Starting below its set is allowed a joining validator; a wrong key (a typo, another
    party's) is let start too, for nothing tells it apart yet, but once the store has caught
    up with the peers' head and still no set names it, the node stops (not_a_validator)
    rather than run the consortium one validator short without a word."""
    store, log, sync = at_genesis.store, at_genesis.log, at_genesis.sync
    height = len(at_genesis.chain.lines)
    producer = BftProducer(store, key("not-in-any-set"), log=log, sync=sync)
    sync.expect(height)
    deadline = time.monotonic() + 30
    with pytest.raises(LedgerError) as stopped:
        while time.monotonic() < deadline:
            producer.produce(int(time.monotonic() * 1000))
    assert stopped.value.code == "not_a_validator"
    assert f"synced to height {height}" in stopped.value.message
    assert store.head_height == height
    assert log.read() == []


def test_a_validator_a_set_change_left_out_stops_once_its_last_height_is_decided(
    at_genesis: AtGenesis, tmp_path: Path
) -> None:
    """`built()`'s first validator is left out at CHANGE_AT (the new set governs from
    CHANGE_AT + 2). Run with its key, the node takes the chain past that and stops
    (not_a_validator), saying why, every block stored (found by review: it ran on, signing
    nothing, its /healthz "ok" and its log silent)."""
    chain = at_genesis.chain
    removed = chain.chain.validator
    (tmp_path / "removed").mkdir()
    log = SignedLog(
        tmp_path / "removed" / WAL_FILE_NAME,
        public_key=removed.public_key_hex,
        transaction_bytes_max=16384,
    )
    try:
        producer = BftProducer(at_genesis.store, removed, log=log, sync=at_genesis.sync)
        assert producer.replica.is_validator  # the genesis set names it
        height = len(chain.lines)
        at_genesis.sync.expect(height)
        deadline = time.monotonic() + 30
        with pytest.raises(LedgerError) as stopped:
            while time.monotonic() < deadline:
                producer.produce(int(time.monotonic() * 1000))
        assert stopped.value.code == "not_a_validator"
        assert stopped.value.message.startswith("this key is no longer a validator")
        stored = at_genesis.store.head_height
        assert stored == height  # caught up first: a later set could have named it again
        assert f"up to height {stored} is stored" in stopped.value.message
        assert log.read() == []  # synced, never signing
    finally:
        log.close()


def test_a_validator_catching_up_takes_a_transaction_whose_nonce_is_far_ahead_of_its_tip(
    at_genesis: AtGenesis,
) -> None:
    """A validator whose store is far behind (restarted, resynced) knows it from its peers:
    a client's transaction with a nonce far ahead of its tip is the chain's next one, not a
    bad nonce. Refusing it was a final wrong answer (the crash harness met it)."""
    chain = at_genesis.chain.chain
    producer = BftProducer(
        at_genesis.store, NEW_VALIDATOR, log=at_genesis.log, sync=at_genesis.sync
    )
    payload = {"to": chain.bob.account_id, "batch_id": "B-1", "quantity": 1}
    far = chain.tx(chain.alice, "transfer", payload, nonce=500)
    (refused,) = producer.submit([far])
    assert (refused.status, refused.code) == ("rejected", "bad_nonce")  # nothing heard
    at_genesis.sync.expect(len(at_genesis.chain.lines))  # what its peers' messages say
    (taken,) = producer.submit([far])
    assert taken.status == "pending"


def test_only_signed_messages_of_a_third_of_the_power_tell_a_validator_it_is_behind(
    tmp_path: Path,
) -> None:
    """Found by review: one forged vote of a far height started a block sync attempt, which
    holds the block loop (up to a minute against a source dripping its answer), again and
    again. A hint now needs a decision's certificate, or validators with more than a third of
    the power, each message's signature checked."""
    consortium = Consortium(tmp_path)
    try:
        validator = consortium.producers[0]
        validator.sync = BlockSync(sources(consortium, but=0), genesis=parse_genesis(document()))

        def far_vote(signer: PrivateKey, height: int) -> Vote:
            return sign_vote(
                signer, chain_id=CHAIN_ID, vote_type="prevote", height=height, round=0,
                block_hash=None,
            )  # fmt: skip

        outsider = far_vote(key("outsider"), 50)
        forged = dataclasses.replace(far_vote(WORLD.keys[1], 50), signature="00" * 64)
        validator.on_messages([outsider, forged])
        assert validator.sync.heard_height == 0
        validator.on_messages([far_vote(WORLD.keys[1], 50)] * 3)  # one validator: a quarter
        assert validator.sync.heard_height == 0
        validator.on_messages([far_vote(WORLD.keys[2], 40)])  # two: the lower of them
        assert validator.sync.heard_height == 39
        validator.on_messages([far_vote(WORLD.keys[3], 60)])
        assert validator.sync.heard_height == 49
    finally:
        consortium.close()


def test_a_validator_its_peers_cannot_reach_asks_them_for_their_heads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: a validator restarted on an address its peers do not know got no
    message, so nothing told it the chain went on: it stayed at its height, silent and
    healthy. Having heard nothing for SYNC_PROBE_MS (and two block intervals), it now asks
    its peers for their heads; the validators that hear each other never do."""
    monkeypatch.setattr("consensus.node.SYNC_PROBE_MS", 300)
    consortium = Consortium(tmp_path)
    try:
        for i in range(3):  # able to probe: they never need to
            consortium.producers[i].sync = BlockSync(
                sources(consortium, but=i), genesis=parse_genesis(document())
            )
        consortium.run(lambda: min(consortium.heights().values()) >= 3)
        consortium.stop(3)
        before = max(consortium.heights().values())
        consortium.run(lambda: min(consortium.heights().values()) >= before + 5, seconds=60)
        consortium.start(3)
        consortium.network.cut.add("3")  # it hears nothing, and nothing it says arrives
        restarted = consortium.producers[3]
        restarted.sync = BlockSync(sources(consortium, but=3), genesis=parse_genesis(document()))
        target = min(consortium.heights()[i] for i in range(3))
        consortium.run(lambda: restarted.state.height >= target, seconds=30)
        assert restarted.probes >= 1 and restarted.sync.counters.blocks >= target - before
        assert [consortium.producers[i].probes for i in range(3)] == [0, 0, 0]
    finally:
        consortium.close()


def test_posts_from_anyone_do_not_put_off_the_probe(tmp_path: Path) -> None:
    """Found by review: any post to the consensus route, malformed or forged, counted as
    hearing from a peer, so a stranger posting more often than the quiet spell kept a
    validator its peers cannot reach from ever asking them for their heads. Only a message
    the replica takes as a validator's own counts."""
    consortium = Consortium(tmp_path)
    try:
        validator = consortium.producers[0]
        clock = [10_000_000]
        validator._clock_ms = lambda: clock[0]
        validator._heard_at = validator._probed_at = clock[0]
        validator.sync = BlockSync(sources(consortium, but=0), genesis=parse_genesis(document()))
        idle = max(
            validator.state.params.block_interval_ms, validator.replica.timeouts.empty_block_ms
        )
        quiet = SYNC_PROBE_MS + 2 * idle
        forged = dataclasses.replace(
            sign_vote(
                WORLD.keys[1], chain_id=CHAIN_ID, vote_type="prevote", height=1, round=0,
                block_hash=None,
            ),
            signature="00" * 64,
        )  # fmt: skip
        for _ in range(quiet // 10_000 + 2):  # a post every 10 s, for longer than the spell
            clock[0] += 10_000
            with pytest.raises(LedgerError):
                validator.on_batch(b"not json at all\n")
            validator.on_messages([forged])
            validator.produce(clock[0])
        assert validator.dropped().get("bad_signature", 0) >= 1
        assert validator.probes == 1  # asked once, when the spell ended
        genuine = sign_vote(
            WORLD.keys[1], chain_id=CHAIN_ID, vote_type="prevote", height=1, round=0,
            block_hash=None,
        )  # fmt: skip
        validator.on_messages([genuine])
        validator.produce(clock[0])
        assert validator._heard_at == clock[0]  # a validator's own vote is hearing from it
        # A copy of it proves nothing: anyone can replay a precommit from an export's
        # certificates (found by review of the first version, which counted copies).
        heard = clock[0]
        clock[0] += 10_000
        validator.on_messages([genuine])
        validator.produce(clock[0])
        assert validator._heard_at == heard
    finally:
        consortium.close()


def test_a_far_decision_of_a_set_the_head_does_not_know_asks_for_heads_soon(
    tmp_path: Path,
) -> None:
    """A decision two heights or more ahead, certified by a set this validator's head does
    not name (the set changed since; or forged), is no hint block sync can check: it asks the
    peers for their heads SYNC_PROBE_MS after the last probe, not after a silence that peers
    deciding far ahead never let come (found by the simulation: a validator restarted below a
    set change was stuck until its silence probe). At most one such probe a SYNC_PROBE_MS."""
    consortium = Consortium(tmp_path)
    try:
        consortium.run(lambda: min(consortium.heights().values()) >= 3)
        validator = consortium.producers[0]
        clock = [10_000_000]
        validator._clock_ms = lambda: clock[0]
        validator._heard_at = validator._probed_at = clock[0]
        validator.sync = BlockSync(sources(consortium, but=0), genesis=parse_genesis(document()))
        # as a node runs: the silence probe comes after SYNC_PROBE_MS + 2 x 60 s, off this test
        validator.replica.timeouts = IDLE
        height = validator.state.height + 2
        block = validator.store.read_block(validator.state.height)
        block = dataclasses.replace(block, header=dataclasses.replace(block.header, height=height))
        others = [key(f"later-validator-{i}") for i in range(4)]
        certificate = sign_certificate(
            chain_id=CHAIN_ID, height=height, round=0, block_hash=block.block_hash(), keys=others
        )
        later = Decision(block=block, certificate=certificate)
        heard = validator.sync.heard_height
        clock[0] += 1_000
        validator.on_messages([later])
        validator._clock_ms = lambda: clock[0]
        validator.produce(clock[0])
        assert validator.probes == 0  # the last probe (here, the start) was 1 s ago
        assert validator.sync.heard_height == heard  # no hint: nothing it could check
        clock[0] += SYNC_PROBE_MS
        validator.produce(clock[0])
        assert validator.probes == 1  # not after SYNC_PROBE_MS + 2 x 60 s of silence
        validator.on_messages([later])
        clock[0] += SYNC_PROBE_MS // 2
        validator.produce(clock[0])
        assert validator.probes == 1  # one a SYNC_PROBE_MS at most
        clock[0] += SYNC_PROBE_MS // 2
        validator.produce(clock[0])
        assert validator.probes == 2
        clock[0] += SYNC_PROBE_MS
        validator.produce(clock[0])
        assert validator.probes == 2  # asked for by a decision, not by the clock
    finally:
        consortium.close()


def test_idle_validators_that_hear_each_other_do_not_ask_for_heads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle consortium is silent between its empty blocks: the probe's quiet spell counts
    two empty-block intervals, not two block intervals, or every validator would ask its
    peers for their heads (and log a warning) many times in every idle minute."""
    monkeypatch.setattr("consensus.node.SYNC_PROBE_MS", 300)
    consortium = Consortium(tmp_path, timeouts=IDLE)
    try:
        for i in range(4):
            consortium.producers[i].sync = BlockSync(
                sources(consortium, but=i), genesis=parse_genesis(document())
            )
        consortium.run(lambda: min(consortium.heights().values()) >= 1)
        heights = consortium.heights()
        quiet_until = time.monotonic() + 2.0  # four times the old quiet spell (300 + 2 x 100)
        consortium.run(lambda: time.monotonic() > quiet_until)
        assert consortium.heights() == heights  # idle: no block, no message
        assert [consortium.producers[i].probes for i in range(4)] == [0, 0, 0, 0]
    finally:
        consortium.close()


class _OnePeerReaches(MemoryNetwork):
    """Only member `reaches` delivers to member `alone` (whose own sends reach everyone)."""

    def __init__(self, alone: str, reaches: str) -> None:
        super().__init__()
        self.alone, self.reaches = alone, reaches

    def deliver(self, sender: str, body: bytes) -> None:
        inbox = self.inboxes.pop(self.alone, None)
        try:
            super().deliver(sender, body)
        finally:
            if inbox is not None:
                self.inboxes[self.alone] = inbox
        if inbox is not None and sender == self.reaches:
            inbox(body)


class _LostWrites(ThreadPoolExecutor):
    """A write thread that never writes: a crash while decided blocks are still in flight."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return Future()


def test_a_validator_restarted_far_lower_that_one_peer_reaches_catches_up_at_once(
    tmp_path: Path,
) -> None:
    """Found by review of the catch-up answers' bound: a validator whose last decided blocks
    were lost in a crash (it had signed at later heights) re-sends votes older than what its
    peers saw it sign, and not recent; with only one peer reaching it (a quarter of the power:
    no hint for block sync) it waited for its probe, 135 s by default. Its peers now answer
    such a vote with their latest decision, whose certificate starts its block sync."""
    consortium = Consortium(tmp_path)
    network = _OnePeerReaches(alone="3", reaches="1")
    for index, producer in consortium.producers.items():
        assert producer.transport is not None
        producer.transport.close()
        producer.transport = network.join(str(index), producer.on_batch)
    consortium.network = network
    try:
        consortium.run(lambda: min(consortium.heights().values()) >= 3)
        behind = consortium.producers[3]
        consortium.writers.pop(3).shutdown(wait=True)
        consortium.writers[3] = behind._write_executor = _LostWrites(1)
        durable = behind.state.height
        consortium.run(lambda: behind._tip.height >= durable + 3)  # signs on, writes nothing
        consortium.stop(3)  # the crash
        others = list(consortium.producers.values())
        consortium.run(lambda: min(p.state.height for p in others) >= durable + 10)
        consortium.start(3)  # its store at `durable`, its log above it
        restarted = consortium.producers[3]
        restarted.sync = BlockSync(sources(consortium, but=3), genesis=parse_genesis(document()))
        assert restarted.state.height == durable
        top = max(p.state.height for p in others)
        consortium.run(lambda: restarted.state.height >= top, seconds=10)
        assert restarted.probes == 0  # not its probe: a peer's answer started it
    finally:
        consortium.close()
