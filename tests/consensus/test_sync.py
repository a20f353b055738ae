"""Block sync from in-memory sources: good ranges, gaps, forged certificates, blocks that fail
replay, sources that lie about their head, truncated and oversized lines, another chain, the
H+2 rule of `set_validators`, unreachable sources with a bounded backoff, and the hint that
tells a validator it is behind."""

from __future__ import annotations

import dataclasses
import gc
import json
import sys
from collections.abc import Generator, Sequence
from functools import lru_cache
from typing import Any

import pytest

from consensus.messages import Decision, decode_message, sign_proposal, sign_vote
from consensus.sync import (
    BlockSync,
    ForkProof,
    Head,
    MemorySource,
    SyncRefused,
    parse_fork_proof,
    prove_fork,
    verify_lines,
)
from ledger.blocks import Block, Certificate, sign_certificate
from ledger.crypto import PrivateKey
from ledger.encoding import canonical, decode
from ledger.errors import LedgerError, StoreError
from ledger.evidence import verify_evidence
from ledger.genesis import genesis_state, make_genesis_document, parse_genesis
from ledger.limits import JSON_DEPTH_MAX, SYNC_LAG_HEIGHTS_MIN
from ledger.state import State
from ledger.state_transition import build_block
from ledger.transactions import Envelope
from tests.factory import CHAIN_ID, GENESIS_TIME, Chain, key

NEW_VALIDATOR = key("validator-new")
CHANGE_AT = 5  # set_validators at this height: the new set governs from CHANGE_AT + 2


@dataclasses.dataclass(frozen=True)
class Built:
    """A chain in memory and its export: `lines[i]` is the line of height i + 1."""

    chain: Chain
    genesis_line: bytes
    lines: tuple[bytes, ...]
    states: tuple[State, ...]  # states[h] is the state after height h (states[0]: genesis)
    keys: dict[str, PrivateKey]

    @property
    def genesis(self) -> State:
        return self.states[0]


def line_of(block: Block, certificate: Certificate) -> bytes:
    return canonical({"block": block.to_json(), "certificate": certificate.to_json()}) + b"\n"


@lru_cache(maxsize=2)
def built(height: int = 250) -> Built:
    """`height` blocks: transactions in the first few, the validator set changed at CHANGE_AT,
    each block certified by the set governing its height."""
    chain = Chain()
    keys = {k.public_key_hex: k for k in (chain.validator, NEW_VALIDATOR)}
    alice = chain.alice.account_id
    planned: dict[int, list[Any]] = {
        1: [chain.accredit(), chain.create_program()],
        2: [chain.issue([(alice, 1000)])],
        3: [
            chain.tx(
                chain.alice,
                "transfer",
                {"to": chain.bob.account_id, "batch_id": "B-1", "quantity": 10},
            )
        ],
        CHANGE_AT: [
            chain.authority_tx(
                "set_validators",
                {
                    "validators": [
                        {"public_key": NEW_VALIDATOR.public_key_hex, "power": 1, "name": "new"}
                    ]
                },
            )
        ],
    }
    state = chain.state
    states = [state]
    lines = []
    last: Certificate | None = None
    for h in range(1, height + 1):
        governing = [keys[v.public_key] for v in state.current_validators()]
        made = build_block(
            state,
            planned.get(h, []),
            time=GENESIS_TIME + 1000 * h,
            proposer=governing[0].public_key_hex,
            last_commit=last,
        )
        assert not made.rejected, made.rejected
        last = sign_certificate(
            chain_id=CHAIN_ID, height=h, round=0, block_hash=made.block.block_hash(), keys=governing
        )
        lines.append(line_of(made.block, last))
        state = made.state
        states.append(state)
    assert states[CHANGE_AT + 2].current_validators()[0].public_key == NEW_VALIDATOR.public_key_hex
    return Built(
        chain=chain,
        genesis_line=canonical(chain.genesis_document) + b"\n",
        lines=tuple(lines),
        states=tuple(states),
        keys=keys,
    )


def decoded(line: bytes) -> tuple[Block, Certificate]:
    message = decode_message(line, transaction_bytes_max=16384)
    assert isinstance(message, Decision)
    return message.block, message.certificate


def source(name: str = "honest", *, lines: list[bytes] | None = None, **extra: Any) -> MemorySource:
    chain = built()
    extra.setdefault("genesis_line", chain.genesis_line)
    return MemorySource(name=name, lines=list(chain.lines) if lines is None else lines, **extra)


class Sink:
    """The store's stand-in: what `append` received, checked to follow on."""

    def __init__(self) -> None:
        self.blocks: list[tuple[Block, Certificate, State]] = []

    def append(self, block: Block, certificate: Certificate, state: State) -> None:
        assert block.height == len(self.blocks) + 1
        self.blocks.append((block, certificate, state))


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> int:
        return self.ms


def make_sync(
    *sources: MemorySource | Any, clock: Clock | None = None, **options: Any
) -> BlockSync:
    genesis = parse_genesis(built().chain.genesis_document)
    return BlockSync(sources, genesis=genesis, clock_ms=clock or Clock(), **options)


def tampered(line: bytes, change: Any) -> bytes:
    value = json.loads(line)
    change(value)
    return canonical(value) + b"\n"


# --- good ranges --------------------------------------------------------------------------------


def test_a_good_source_is_synced_in_ranges_to_its_head() -> None:
    chain = built()
    honest = source()
    sync = make_sync(honest, range_blocks_max=100)
    sink = Sink()
    state = chain.genesis
    for expected in (100, 200, 250):  # one range per attempt
        state = sync.step(state, sink.append)
        assert state.height == expected
    assert state.state_root == chain.states[-1].state_root
    assert state.head_hash == chain.states[-1].head_hash
    assert [b.block_hash() for b, _, _ in sink.blocks] == [
        decoded(line)[0].block_hash() for line in chain.lines
    ]
    assert sync.counters.blocks == 250 and sync.counters.refusals == 0
    assert not sync.is_behind(state.height, lag=1)
    assert sync.step(state, sink.append) is state  # nothing more: a short wait follows
    assert sync.retry_at_ms > 0


def test_verify_lines_checks_the_h_plus_2_rule_across_a_validator_change() -> None:
    chain = built()
    verified = list(
        verify_lines(
            chain.genesis,
            [chain.genesis_line, *chain.lines[: CHANGE_AT + 3]],
            last=CHANGE_AT + 3,
            genesis_hash=chain.chain.genesis.genesis_hash(),
            line_bytes_max=1 << 20,
        )
    )
    signers = [{key for key, _ in d.certificate.signatures} for d, _ in verified]
    old, new = chain.chain.validator.public_key_hex, NEW_VALIDATOR.public_key_hex
    assert signers[CHANGE_AT] == {old}  # height CHANGE_AT + 1: still the old set
    assert signers[CHANGE_AT + 1] == {new}  # CHANGE_AT + 2: the new set governs
    # The old validator certifying a height the new set governs is refused.
    block, _ = decoded(chain.lines[CHANGE_AT + 1])
    by_old = sign_certificate(
        chain_id=CHAIN_ID,
        height=block.height,
        round=0,
        block_hash=block.block_hash(),
        keys=[chain.chain.validator],
    )
    state = chain.states[CHANGE_AT + 1]
    with pytest.raises(SyncRefused) as refused:
        list(verify(state, [line_of(block, by_old)], last=block.height))
    assert refused.value.rule == "certificate" and refused.value.height == CHANGE_AT + 2


def test_verify_lines_refuses_a_header_naming_a_proposer_whose_turn_had_not_come() -> None:
    """As the audit does (rule `proposer`): a block certified in round 0 must name round 0's
    proposer; the same block certified in the other validator's round 1 is taken."""
    chain = Chain()
    members = [chain.validator, key("validator-centre")]
    chain.commit(chain.set_validators(members))
    chain.commit()  # height 2, still the city alone; the two govern height 3
    made = chain.build([])
    named = made.block.header.proposer
    other = next(k for k in members if k.public_key_hex != named)
    block = dataclasses.replace(
        made.block, header=dataclasses.replace(made.block.header, proposer=other.public_key_hex)
    )
    lines = [
        line_of(built.block, chain.certify(built)) for built in chain.blocks
    ]  # heights 1 and 2

    def verified(round: int) -> list[Any]:
        certificate = sign_certificate(
            chain_id=CHAIN_ID, height=3, round=round, block_hash=block.block_hash(), keys=members
        )
        return list(
            verify_lines(
                genesis_state(chain.genesis),
                [canonical(chain.genesis_document) + b"\n", *lines, line_of(block, certificate)],
                last=3,
                genesis_hash=chain.genesis.genesis_hash(),
                line_bytes_max=1 << 20,
            )
        )

    with pytest.raises(SyncRefused) as refused:
        verified(0)
    assert refused.value.rule == "proposer" and refused.value.height == 3
    assert verified(1)[-1][1].head_hash == block.block_hash()


def verify(state: State, lines: list[bytes], *, last: int, limit: int = 1 << 20) -> Any:
    chain = built()
    return verify_lines(
        state,
        [chain.genesis_line, *lines],
        last=last,
        genesis_hash=chain.chain.genesis.genesis_hash(),
        line_bytes_max=limit,
    )


# --- what a bad source serves is refused, and the next source is asked --------------------------


def refused_then_healed(bad: MemorySource, *, rule: str, at: int) -> BlockSync:
    """`bad` is asked first and refused at height `at` with `rule`; the blocks before it are
    kept and never the bad one; an honest source then brings the rest."""
    chain = built()
    honest = source()
    sync = make_sync(bad, honest, range_blocks_max=300)
    sink = Sink()
    state = sync.step(chain.genesis, sink.append)
    assert sync.counters.refusals == 1, sync.counters
    refusal = sync.counters.last_refusal or ""
    where = "" if rule == "genesis" else f" at height {at}"  # the genesis line: before any
    assert f"rule {rule}{where}:" in refusal, sync.counters
    assert refusal.startswith("bad")
    assert state.height == 250  # the honest source brought the rest in the same attempt
    stored = [b.block_hash() for b, _, _ in sink.blocks]
    assert stored == [decoded(line)[0].block_hash() for line in chain.lines]
    # The bad source's blocks below `at` were kept: the honest one was asked from `at` on.
    assert bad.ranges == [1] and honest.ranges == [at]
    assert honest.requests == 2  # its head, then that one range
    return sync


def with_line(height: int, line: bytes) -> list[bytes]:
    lines = list(built().lines)
    lines[height - 1] = line
    return lines


def test_a_gap_is_refused() -> None:
    lines = list(built().lines)
    del lines[9]  # height 10 missing: height 11's line comes in its place
    refused_then_healed(source("bad", lines=lines, head=250), rule="height", at=10)


def test_a_repeated_line_is_refused() -> None:
    lines = list(built().lines)
    lines.insert(10, lines[9])
    refused_then_healed(source("bad", lines=lines[:250]), rule="height", at=11)


def test_a_forged_certificate_is_refused() -> None:
    block, _ = decoded(built().lines[19])
    forged = sign_certificate(
        chain_id=CHAIN_ID, height=20, round=0, block_hash=block.block_hash(), keys=[key("mallory")]
    )
    bad = source("bad", lines=with_line(20, line_of(block, forged)))
    refused_then_healed(bad, rule="certificate", at=20)


def test_a_block_changed_under_its_certificate_is_refused() -> None:
    def later(value: dict[str, Any]) -> None:
        value["block"]["header"]["time"] += 1

    bad = source("bad", lines=with_line(30, tampered(built().lines[29], later)))
    refused_then_healed(bad, rule="certificate", at=30)


def test_a_certified_block_that_fails_replay_is_refused() -> None:
    # Only a Byzantine quorum (or a bug) certifies such a block; sync replays it anyway.
    chain = built()
    block, _ = decoded(chain.lines[39])
    wrong = dataclasses.replace(
        block, header=dataclasses.replace(block.header, state_root="ab" * 32)
    )
    certificate = sign_certificate(
        chain_id=CHAIN_ID,
        height=40,
        round=0,
        block_hash=wrong.block_hash(),
        keys=[chain.keys[v.public_key] for v in chain.states[39].current_validators()],
    )
    bad = source("bad", lines=with_line(40, line_of(wrong, certificate)))
    refused_then_healed(bad, rule="state_root", at=40)


def test_a_transaction_with_a_bad_signature_is_refused() -> None:
    def broken(value: dict[str, Any]) -> None:
        signature = value["block"]["transactions"][0]["signatures"][0]
        signature["signature"] = "00" * 64

    bad = source("bad", lines=with_line(3, tampered(built().lines[2], broken)))
    refused_then_healed(bad, rule="bad_signature", at=3)


def test_a_source_that_lies_about_its_head_is_refused() -> None:
    liar = source("bad", lines=list(built().lines[:50]), head=10_000)
    refused_then_healed(liar, rule="short", at=51)


def test_a_truncated_line_is_refused() -> None:
    lines = list(built().lines[:60])
    lines[-1] = lines[-1][: len(lines[-1]) // 2]  # the stream cut mid-line
    refused_then_healed(source("bad", lines=lines, head=60), rule="malformed", at=60)


def test_an_oversized_line_is_refused_unread() -> None:
    chain = built()
    with pytest.raises(SyncRefused) as refused:
        list(verify(chain.genesis, [chain.lines[0]], last=1, limit=len(chain.lines[0]) - 1))
    assert refused.value.rule == "malformed" and "over" in refused.value.detail


def test_a_line_that_is_not_a_block_is_refused() -> None:
    vote = sign_vote(
        key("mallory"), chain_id=CHAIN_ID, vote_type="prevote", height=7, round=0, block_hash=None
    )
    bad = source("bad", lines=with_line(7, canonical(vote.to_json()) + b"\n"))
    refused_then_healed(bad, rule="malformed", at=7)


def another_chains_genesis_line() -> bytes:
    """The genesis line of a chain with this one's validators and another chain id."""
    other = make_genesis_document(
        chain_id="another-chain",
        genesis_time=GENESIS_TIME,
        authority_name="Elsewhere",
        authority_keys=[key("elsewhere").public_key_hex],
        authority_threshold=1,
        validators=list(built().genesis.current_validators()),
    )
    return canonical(other) + b"\n"


def test_another_chains_export_is_refused_at_its_genesis_line() -> None:
    bad = source("bad", genesis_line=another_chains_genesis_line())
    refused_then_healed(bad, rule="genesis", at=1)
    not_json = source("bad", genesis_line=b"<html>\n")
    refused_then_healed(not_json, rule="genesis", at=1)
    with pytest.raises(SyncRefused, match="rule genesis: the answer is empty"):
        list(verify_lines(built().genesis, [], last=1, genesis_hash="00" * 32, line_bytes_max=9))


# --- a fork: two certified blocks of one height ---------------------------------------------------

FORK_AT = 30  # the forked chain's first block of its own; the set of NEW_VALIDATOR governs it


def forked_lines(
    at: int = FORK_AT, *, certified: bool = True, earlier: bool = False
) -> list[bytes]:
    """The built chain to `at - 1`, then blocks `at` and `at + 1` of another chain: each block
    certified by the set governing its height (unless `certified` is False: block `at`'s
    certificate is then signed by a key that is no validator), stamped a millisecond after
    the built chain's, or (`earlier`) before the built chain's block `at`: a chain that
    decided faster."""
    chain = built()
    lines = list(chain.lines[: at - 1])
    state = chain.states[at - 1]
    last = decoded(chain.lines[at - 2])[1]
    for height in (at, at + 1):
        governing = [chain.keys[v.public_key] for v in state.current_validators()]
        made = build_block(
            state,
            [],
            time=(
                GENESIS_TIME + 1000 * (at - 1) + 100 * (height - at + 1)
                if earlier
                else GENESIS_TIME + 1000 * height + 1  # a millisecond after the built chain's
            ),
            proposer=governing[0].public_key_hex,
            last_commit=last,
        )
        signers = governing if certified or height > at else [key("not-a-validator")]
        last = sign_certificate(
            chain_id=CHAIN_ID,
            height=height,
            round=0,
            block_hash=made.block.block_hash(),
            keys=signers,
        )
        lines.append(line_of(made.block, last))
        state = made.state
    return lines


def ours(height: int) -> Decision:
    block, certificate = decoded(built().lines[height - 1])
    return Decision(block=block, certificate=certificate)


def test_a_certified_block_on_another_parent_brings_the_proof_of_a_fork() -> None:
    chain = built()
    found: list[ForkProof] = []
    fork = source("fork", lines=forked_lines())
    sync = make_sync(fork, range_blocks_max=300, local=ours, on_fork=found.append)
    at = chain.states[FORK_AT]  # this node holds the built chain to FORK_AT
    assert sync.step(at, Sink().append) is at  # nothing of the other chain is taken
    assert "rule parent_hash at height 31" in (sync.counters.last_refusal or "")
    assert sync.counters.forks == 1 and found == [sync.counters.fork]
    proof = found[0]
    assert proof.height == FORK_AT and proof.source == "fork"
    assert proof.ours == ours(FORK_AT)
    assert proof.theirs.block.block_hash() == decoded(forked_lines()[FORK_AT - 1])[0].block_hash()
    assert proof.theirs.block.block_hash() != proof.ours.block.block_hash()
    # The one validator signed both blocks in round 0: its two precommits are the evidence,
    # as any node checks evidence, against the set that governed that height.
    signer = NEW_VALIDATOR.public_key_hex
    assert proof.signers_of_both() == [signer]
    assert [item.public_key for item in proof.evidence] == [signer]
    verify_evidence(
        proof.evidence[0],
        chain_id=CHAIN_ID,
        validators=chain.states[FORK_AT - 1].current_validators(),
    )
    document = proof.to_json()
    assert document["kind"] == "fork" and document["height"] == FORK_AT
    assert (
        decode_message(canonical(document["theirs"]), transaction_bytes_max=16384) == proof.theirs
    )


def test_a_fork_stamped_before_this_nodes_head_is_proven_too() -> None:
    """Found by review: the other chain's next block, stamped before this node's head (a
    chain that decided faster), was refused for its time, checked before its parent, and no
    fork was looked for."""
    found: list[ForkProof] = []
    lines = forked_lines(earlier=True)
    fork = source("fork", lines=lines)
    sync = make_sync(fork, local=ours, on_fork=found.append)
    at = built().states[FORK_AT]
    assert decoded(lines[FORK_AT])[0].header.time < at.head_time  # block 31 before our 30
    assert sync.step(at, Sink().append) is at
    assert "rule time at height 31" in (sync.counters.last_refusal or "")
    assert sync.counters.forks == 1 and [proof.height for proof in found] == [FORK_AT]


def test_a_fork_proof_reads_back_from_its_json() -> None:
    found: list[ForkProof] = []
    sync = make_sync(source("fork", lines=forked_lines()), local=ours, on_fork=found.append)
    sync.step(built().states[FORK_AT], Sink().append)
    (proof,) = found
    value = decode(canonical(proof.to_json()), max_depth=JSON_DEPTH_MAX + 1)
    assert parse_fork_proof(value, transaction_bytes_max=16384) == proof
    for broken in ({**value, "kind": "other"}, {**value, "height": 7}, {"kind": "fork"}):
        with pytest.raises(LedgerError, match="not a fork proof"):
            parse_fork_proof(broken, transaction_bytes_max=16384)


def test_an_uncertified_other_block_proves_no_fork() -> None:
    found: list[ForkProof] = []
    fork = source("fork", lines=forked_lines(certified=False))
    sync = make_sync(fork, local=ours, on_fork=found.append)
    at = built().states[FORK_AT]
    assert sync.step(at, Sink().append) is at
    assert "rule parent_hash at height 31" in (sync.counters.last_refusal or "")
    assert sync.counters.forks == 0 and sync.counters.fork is None and not found
    with pytest.raises(SyncRefused, match="rule height"):  # a line of another height
        prove_fork(at, ours(FORK_AT), built().lines[3], source="x", line_bytes_max=1 << 20)
    # The same block is no fork, and neither is a height whose set the state has forgotten.
    line = built().lines[FORK_AT - 1]
    assert prove_fork(at, ours(FORK_AT), line, source="x", line_bytes_max=1 << 20) is None
    forgotten = dataclasses.replace(at, recent_validators=())
    other = forked_lines()[FORK_AT - 1]
    assert prove_fork(forgotten, ours(FORK_AT), other, source="x", line_bytes_max=1 << 20) is None
    assert prove_fork(at, ours(FORK_AT), other, source="x", line_bytes_max=1 << 20) is not None


def ours_hash(height: int) -> str:
    return ours(height).block.block_hash()


def test_a_fork_behind_this_node_or_level_with_it_is_proven() -> None:
    """Found by review: a forked source went unnoticed for as long as its head was not above
    this node's (only a head above it was read), and a follower sent it transactions."""
    chain = built()
    fork_lines = forked_lines()
    theirs = decoded(fork_lines[FORK_AT - 1])[0].block_hash()
    for held in (FORK_AT, FORK_AT + 5):  # level with the fork's head of FORK_AT, and above it
        found: list[ForkProof] = []
        fork = source("fork", lines=fork_lines[:FORK_AT], head_hash=theirs)
        sync = make_sync(fork, local=ours, local_hash=ours_hash, on_fork=found.append)
        assert sync.distrusted(0) is None
        at = chain.states[held]
        assert sync.step(at, Sink().append) is at
        assert [proof.height for proof in found] == [FORK_AT], held
        assert "rule fork at height 30" in (sync.counters.last_refusal or "")
        assert "a fork of this chain" in (sync.distrusted(0) or "")
        # For good: never trusted, nor asked, again (found by review: its fork had been
        # proven anew, downloaded and logged, at every attempt).
        asked = fork.requests
        sync.step(at, Sink().append)
        assert sync.distrusted(0) is not None
        assert fork.requests == asked and sync.counters.forks == 1
    # Behind on this very chain: nothing refused, nothing distrusted, one request (its head).
    honest = source("honest", lines=list(chain.lines[:FORK_AT]), head_hash=ours_hash(FORK_AT))
    sync = make_sync(honest, local=ours, local_hash=ours_hash)
    at = chain.states[FORK_AT + 5]
    assert sync.step(at, Sink().append) is at
    assert sync.counters.refusals == 0 and sync.distrusted(0) is None and honest.requests == 1
    # A head naming another block that its export does not back: refused, and no fork.
    liar = source("liar", lines=list(chain.lines[:FORK_AT]), head_hash=theirs)
    sync = make_sync(liar, local=ours, local_hash=ours_hash)
    assert sync.step(at, Sink().append) is at
    assert "rule head at height 30" in (sync.counters.last_refusal or "")
    assert "proves no fork" in (sync.counters.last_refusal or "")
    assert sync.counters.forks == 0 and sync.distrusted(0) is None
    # Without its own blocks to compare, a sync asks nothing more and refuses nothing.
    unseen = source("liar", lines=list(chain.lines[:FORK_AT]), head_hash=theirs)
    blind = make_sync(unseen)
    assert blind.step(chain.states[FORK_AT], Sink().append) is chain.states[FORK_AT]
    assert blind.counters.refusals == 0 and unseen.requests == 1


def test_a_source_of_another_chain_is_distrusted_until_it_serves_this_one() -> None:
    clock = Clock()
    elsewhere = source("elsewhere", genesis_line=another_chains_genesis_line())
    sync = make_sync(elsewhere, clock=clock)
    sync.step(built().genesis, Sink().append)
    assert sync.distrusted(0) == "it serves another chain"
    elsewhere.genesis_line = built().genesis_line  # its operator fixed it
    clock.ms += 60_000
    sink = Sink()
    sync.step(built().genesis, sink.append)
    assert sink.blocks and sync.distrusted(0) is None


def test_without_its_own_blocks_a_sync_looks_for_no_fork() -> None:
    fork = source("fork", lines=forked_lines())
    sync = make_sync(fork)
    at = built().states[FORK_AT]
    assert sync.step(at, Sink().append) is at
    assert sync.counters.forks == 0
    assert fork.requests == 2  # its head and the range: nothing more was asked


# --- unreachable sources, retries, the hint -----------------------------------------------------


class Unreachable:
    name = "gone"

    def __init__(self) -> None:
        self.requests = 0

    def latest(self) -> Head:
        self.requests += 1
        raise LedgerError("cannot reach it", code="node_unreachable")

    def export_lines(
        self, from_height: int, to_height: int, *, line_bytes_max: int
    ) -> Generator[bytes, None, None]:
        raise AssertionError("never asked for blocks without a head")
        yield b""  # pragma: no cover

    def close(self) -> None:
        pass


def test_unreachable_sources_are_retried_with_a_bounded_backoff() -> None:
    clock = Clock()
    gone = Unreachable()
    sync = make_sync(gone, clock=clock, retry_ms_min=500, retry_ms_max=4000)
    state = built().genesis
    waits = []
    for _ in range(6):
        assert sync.step(state, Sink().append) is state
        waits.append(sync.retry_at_ms - clock.ms)
        assert sync.step(state, Sink().append) is state  # during the wait: not asked
        clock.ms = sync.retry_at_ms
    assert waits == [500, 1000, 2000, 4000, 4000, 4000]
    assert gone.requests == 6 and sync.counters.refusals == 6


def test_silence_counts_from_the_last_attempt_a_source_answered() -> None:
    clock = Clock()
    gone, honest = Unreachable(), source()
    sync = make_sync(gone, clock=clock)
    clock.ms += 5000
    sync.step(built().genesis, Sink().append)
    assert sync.silent_ms() == 5000  # since it was made: none ever answered
    sync = make_sync(gone, honest, clock=clock, range_blocks_max=10)
    clock.ms += 7000
    sink = Sink()
    state = sync.step(built().genesis, sink.append)
    assert state.height == 10 and sync.silent_ms() == 0
    clock.ms += 3000
    honest.lines = []  # now it cannot answer with the blocks it claims
    honest.head = 20
    sync.step(state, sink.append)
    assert sync.silent_ms() == 3000


def test_a_refused_source_waits_while_the_others_are_asked() -> None:
    clock = Clock()
    gone, idle = Unreachable(), source(lines=[])
    sync = make_sync(gone, idle, clock=clock, retry_ms_min=500, retry_ms_max=4000)
    state = built().genesis
    asked_at = []
    for _ in range(40):
        before = gone.requests
        sync.step(state, Sink().append)
        if gone.requests > before:
            asked_at.append(clock.ms)
        assert sync.retry_at_ms - clock.ms == 500  # the idle source answered: no doubling
        clock.ms = sync.retry_at_ms
    start = asked_at[0]
    assert [at - start for at in asked_at] == [0, 500, 1500, 3500, 7500, 11500, 15500, 19500]
    assert idle.requests == 40


def test_the_source_that_served_last_is_asked_first() -> None:
    chain = built()
    first, second = source("first", lines=list(chain.lines[:100])), source("second")
    sync = make_sync(first, second, range_blocks_max=100)
    sink = Sink()
    state = sync.step(chain.genesis, sink.append)
    assert state.height == 100 and second.requests == 0
    state = sync.step(state, sink.append)  # first has nothing more: second serves
    assert state.height == 200 and first.requests == 3 and second.requests == 2
    state = sync.step(state, sink.append)
    assert state.height == 250 and first.requests == 3  # second is asked first now


def test_the_hint_says_when_a_validator_is_behind() -> None:
    clock = Clock()
    sync = make_sync(source(lines=[]), clock=clock)
    validator = key("validator-city")
    vote = sign_vote(
        validator, chain_id=CHAIN_ID, vote_type="prevote", height=9, round=0, block_hash=None
    )
    sync.heard([vote])  # a vote of height 9: 8 is decided
    assert sync.heard_height == 8
    assert sync.is_behind(8 - SYNC_LAG_HEIGHTS_MIN)
    assert not sync.is_behind(8 - SYNC_LAG_HEIGHTS_MIN + 1)  # one height: the Decision's job
    chain = built()
    block, certificate = decoded(chain.lines[11])
    proposal = sign_proposal(
        validator, chain_id=CHAIN_ID, height=13, round=0, valid_round=-1, block=block
    )
    sync.heard([Decision(block=block, certificate=certificate), proposal])
    assert sync.heard_height == 12
    sync.heard([vote])  # a lower one changes nothing
    assert sync.heard_height == 12
    # A hint no source backs is forgotten after one attempt, and no attempt follows at once.
    state = sync.step(chain.genesis, Sink().append)
    assert state.height == 0 and sync.heard_height == 0
    assert not sync.is_behind(-10)


def test_a_closing_sync_starts_nothing_and_stops_at_the_next_line() -> None:
    chain = built()
    sync = make_sync(source())
    sink = Sink()

    def append_then_close(block: Block, certificate: Certificate, state: State) -> None:
        sink.append(block, certificate, state)
        if block.height == 5:
            sync.close()

    vote = sign_vote(
        key("validator-city"), chain_id=CHAIN_ID, vote_type="prevote", height=100, round=0,
        block_hash=None,
    )  # fmt: skip
    sync.heard([vote])
    assert sync.is_behind(0)
    state = sync.step(chain.genesis, append_then_close)
    # The block checked while 5 was written may still be appended; no line is read after.
    assert state.height in (5, 6) and sync.counters.refusals == 0
    assert [block.height for block, _, _ in sink.blocks] == list(range(1, state.height + 1))
    assert not sync.is_behind(state.height)  # a stopping node's loop must not spin on it
    assert sync.step(state, sink.append) is state
    sync.close_sources()


def test_an_attempt_reads_no_line_after_its_deadline() -> None:
    chain = built()
    clock = Clock()

    def slow(envelopes: Sequence[Envelope]) -> list[LedgerError | None]:
        clock.ms += 100  # each block's checks take 100 ms
        return [None] * len(envelopes)

    sync = make_sync(source(), clock=clock, attempt_ms_max=1000, verify_signatures=slow)
    sink = Sink()
    state = sync.step(chain.genesis, sink.append)
    assert state.height == 10 and len(sink.blocks) == 10
    assert "rule timeout" in (sync.counters.last_refusal or "")


def test_genesis_state_is_where_an_empty_store_starts() -> None:
    assert built().genesis.height == 0
    assert genesis_state(built().chain.genesis).state_root == built().genesis.state_root


def test_a_store_that_fails_is_this_nodes_fault_not_the_sources() -> None:
    sync = make_sync(source())

    def failing(block: Block, certificate: Certificate, state: State) -> None:
        if block.height == 3:
            raise StoreError("the disk is full")

    with pytest.raises(StoreError, match="the disk is full"):
        sync.step(built().genesis, failing)
    assert sync.counters.refusals == 0


def test_a_source_that_held_an_attempt_to_its_end_waits_from_the_end() -> None:
    """Found by review: the penalty and the next attempt's wait were counted from the
    attempt's start, so a source that dripped its answer for the whole attempt was over its
    wait already, and asked again at once: one attempt after another held the block loop."""
    chain = built()
    clock = Clock()

    def slow(envelopes: Sequence[Envelope]) -> list[LedgerError | None]:
        clock.ms += 100
        return [None] * len(envelopes)

    dripping = source(lines=[*chain.lines[:5], b"{}\n"])
    sync = make_sync(
        dripping, clock=clock, attempt_ms_max=10_000, retry_ms_min=500, verify_signatures=slow
    )
    started = clock.ms
    state = sync.step(chain.genesis, Sink().append)
    assert state.height == 5 and clock.ms == started + 500  # the attempt took 500 ms
    assert sync.counters.refusals == 1
    assert sync.retry_at_ms == clock.ms + 500  # not started + 500: due at once


def test_a_refused_line_is_let_go_with_its_refusal() -> None:
    """Found by review: the refusal kept its traceback, whose frames held the refused line
    (up to the chain's line bound, ~160 MB) until a full collection, which an idle follower
    seldom ran: a peer serving over-long lines grew a follower to 4 GB."""
    refused = b'{"block": ' + b"x" * 100_000
    bad = source("bad", lines=[refused])
    sync = make_sync(bad)
    gc.disable()  # only reference counting may free it, as between an idle node's collections
    try:
        state = built().genesis
        assert sync.step(state, Sink().append) is state
        assert sync.counters.refusals == 1
        bad.lines.clear()
        assert sys.getrefcount(refused) == 2  # this function's name for it, and the call's
    finally:
        gc.enable()
