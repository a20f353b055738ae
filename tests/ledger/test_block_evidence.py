"""Evidence of equivocation in blocks (SPEC §5.2, §5.4): hashed by `evidence_hash`, verified by
`apply_block` against the set that governed its height, recorded under
`evidence/<validator>/<height>`, and every refusal named by its own rule.

Each refusal test starts from a block that applies, changes one thing, and expects exactly
that rule, with the state untouched.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable

import pytest
import rfc8785

from ledger.blocks import (
    Block,
    Validator,
    compute_evidence_hash,
    compute_validators_hash,
    parse_block,
)
from ledger.crypto import PrivateKey
from ledger.encoding import canonical, decode
from ledger.errors import FieldError, InvalidBlockError
from ledger.evidence import (
    NO_ROUND,
    Evidence,
    SignedProposal,
    Vote,
    make_evidence,
    proposal_bytes,
    sign_vote,
)
from ledger.limits import EVIDENCE_AGE_HEIGHTS_MAX, EVIDENCE_PER_BLOCK_MAX
from ledger.state import GoverningSet, State, remember_validators
from ledger.state_transition import EVIDENCE_RULES, apply_block
from tests.factory import CHAIN_ID, Chain, key
from tests.ledger.test_blocks import assert_refused, with_header

TRANSACTION_BYTES_MAX = 16384
HASH_A = hashlib.sha256(b"one block").hexdigest()
HASH_B = hashlib.sha256(b"another block").hexdigest()
STRANGER = key("stranger")


def double_vote(
    signer: PrivateKey,
    *,
    height: int,
    round: int = 0,
    vote_type: str = "prevote",
    chain_id: str = CHAIN_ID,
) -> Evidence:
    votes = [
        sign_vote(signer, chain_id=chain_id, vote_type=vote_type, height=height, round=round,
                  block_hash=block_hash)
        for block_hash in (None, HASH_A)
    ]  # fmt: skip
    return make_evidence(*votes)


def signed_proposal(
    signer: PrivateKey, *, height: int, round: int, block_hash: str, valid_round: int = NO_ROUND
) -> SignedProposal:
    signed = proposal_bytes(
        chain_id=CHAIN_ID,
        height=height,
        round=round,
        valid_round=valid_round,
        block_hash=block_hash,
    )
    return SignedProposal(
        chain_id=CHAIN_ID,
        height=height,
        round=round,
        valid_round=valid_round,
        block_hash=block_hash,
        public_key=signer.public_key_hex,
        signature=signer.sign(signed).hex(),
    )


def double_proposal(signer: PrivateKey, *, height: int, round: int = 0) -> Evidence:
    return make_evidence(
        signed_proposal(signer, height=height, round=round, block_hash=HASH_A),
        signed_proposal(signer, height=height, round=round, block_hash=HASH_B),
    )


def with_evidence(block: Block, evidence: tuple[Evidence, ...]) -> Block:
    """`block` carrying `evidence`, its header committing to it (so the evidence is judged)."""
    return with_header(
        dataclasses.replace(block, evidence=evidence),
        evidence_hash=compute_evidence_hash(evidence),
    )


@pytest.fixture
def chain() -> Chain:
    """Block 1 committed (credits issued); the single validator `city` governs every height."""
    return Chain().funded()


# --- the good path ----------------------------------------------------------------------------


def test_evidence_is_hashed_verified_and_recorded(chain: Chain) -> None:
    city = chain.validator
    earlier = double_vote(city, height=1, round=2, vote_type="precommit")
    now = double_proposal(city, height=2, round=1)  # of the block's own height, an earlier round
    built = chain.build([], evidence=(earlier, now))
    block = built.block
    assert block.evidence == (earlier, now) and built.evidence_left_out == ()
    # SPEC §2.2: sha256("tanlian/evidence/v1\n" + canonical(list)), here checked by rfc8785.
    listed = [earlier.to_json(), now.to_json()]
    expected = hashlib.sha256(b"tanlian/evidence/v1\n" + rfc8785.dumps(listed)).hexdigest()
    assert block.header.evidence_hash == expected
    applied = apply_block(chain.state, block)
    assert applied.state_root == built.state.state_root == block.header.state_root
    assert applied.get(f"evidence/{city.public_key_hex}/1") == {
        "validator": city.public_key_hex,
        "height": 1,
        "round": 2,
        "evidence": earlier.to_json(),
        "recorded_height": 2,
    }
    assert applied.get(now.state_key())["evidence"]["type"] == "duplicate_proposal"
    # The wire form round-trips through the strict decoder, evidence and all.
    again = parse_block(decode(canonical(block.to_json())), transaction_bytes_max=16384)
    assert again == block and again.block_hash() == block.block_hash()


def test_a_block_with_no_evidence_hashes_the_empty_list(chain: Chain) -> None:
    block = chain.build([]).block
    empty = hashlib.sha256(b"tanlian/evidence/v1\n[]").hexdigest()
    assert block.evidence == () and block.header.evidence_hash == empty


def test_parse_block_refuses_more_evidence_than_a_block_holds(chain: Chain) -> None:
    value = chain.build([]).block.to_json()
    piece = double_vote(CITY, height=1).to_json()
    value["evidence"] = [piece] * EVIDENCE_PER_BLOCK_MAX
    assert len(parse_block(value, transaction_bytes_max=TRANSACTION_BYTES_MAX).evidence) == 100
    value["evidence"] = [piece] * (EVIDENCE_PER_BLOCK_MAX + 1)
    with pytest.raises(FieldError) as caught:
        parse_block(value, transaction_bytes_max=TRANSACTION_BYTES_MAX)
    assert caught.value.code == "limit_exceeded" and caught.value.path == "block.evidence"
    value["evidence"] = [{**piece, "type": "duplicate_votes"}]
    with pytest.raises(FieldError) as caught:
        parse_block(value, transaction_bytes_max=TRANSACTION_BYTES_MAX)
    assert caught.value.path == "block.evidence[0].type"


def test_evidence_changed_after_the_header_is_refused(chain: Chain) -> None:
    evidence = (double_vote(chain.validator, height=1), double_proposal(chain.validator, height=2))
    block = chain.build([], evidence=evidence).block
    for changed in (evidence[:1], evidence[::-1], ()):
        assert_refused(chain.state, dataclasses.replace(block, evidence=changed), "evidence_hash")


# --- every refusal, one change each -----------------------------------------------------------


def _swapped(evidence: Evidence) -> Evidence:
    return dataclasses.replace(evidence, a=evidence.b, b=evidence.a)


def _both(first: Vote, second: Vote) -> Evidence:
    """Two votes as evidence in the order the canonical form wants, whatever they are."""
    a, b = sorted((first, second), key=lambda vote: vote.signed_bytes())
    return Evidence(evidence_type="duplicate_vote", a=a, b=b)


def _bad_signature(evidence: Evidence) -> Evidence:
    raw = bytearray(bytes.fromhex(evidence.b.signature))
    raw[40] ^= 1
    return dataclasses.replace(evidence, b=dataclasses.replace(evidence.b, signature=raw.hex()))


def _vote(signer: PrivateKey, round: int, block_hash: str | None) -> Vote:
    return sign_vote(
        signer, chain_id=CHAIN_ID, vote_type="prevote", height=1, round=round, block_hash=block_hash
    )


CITY = key("validator-city")
REFUSALS: dict[str, tuple[Callable[[], tuple[Evidence, ...]], str]] = {
    "of the next height": (lambda: (double_vote(CITY, height=3),), "evidence_future"),
    "twice for one validator and height": (
        lambda: (double_vote(CITY, height=1), double_vote(CITY, height=1, vote_type="precommit")),
        "evidence_duplicate",
    ),
    "for another chain": (
        lambda: (double_vote(CITY, height=1, chain_id="zibo-prod"),),
        "evidence_wrong_chain",
    ),
    "two rounds": (
        lambda: (_both(_vote(CITY, 0, None), _vote(CITY, 1, HASH_A)),),
        "evidence_slot_mismatch",
    ),
    "two signers": (
        lambda: (_both(_vote(CITY, 0, None), _vote(STRANGER, 0, HASH_A)),),
        "evidence_signer_mismatch",
    ),
    "by a non-validator": (lambda: (double_vote(STRANGER, height=1),), "evidence_not_validator"),
    "one message twice": (
        lambda: (_both(_vote(CITY, 0, None), _vote(CITY, 0, None)),),
        "evidence_no_conflict",
    ),
    "out of order": (lambda: (_swapped(double_vote(CITY, height=1)),), "evidence_order"),
    "a forged signature": (
        lambda: (_bad_signature(double_vote(CITY, height=1)),),
        "evidence_signature",
    ),
    "a forged proposal signature": (
        lambda: (_bad_signature(double_proposal(CITY, height=1)),),
        "evidence_signature",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_each_refusal_is_its_own_rule(chain: Chain, case: str) -> None:
    make, rule = REFUSALS[case]
    assert rule in EVIDENCE_RULES
    good = chain.build([], evidence=(double_vote(CITY, height=1),)).block
    assert apply_block(chain.state, good).height == 2  # the unchanged block applies
    bad = with_evidence(good, make())
    error = assert_refused(chain.state, bad, rule)
    assert error.tx_id is None
    # The auditor vouches for transaction signatures only: evidence is checked all the same.
    with pytest.raises(InvalidBlockError) as caught:
        apply_block(chain.state, bad, signatures_verified=True)
    assert caught.value.rule == rule


def test_the_rules_are_the_documented_ones() -> None:
    assert set(EVIDENCE_RULES) == {case[1] for case in REFUSALS.values()} | {
        "evidence_count",
        "evidence_expired",
        "evidence_recorded",
    }


def test_evidence_already_recorded_is_refused(chain: Chain) -> None:
    first = double_vote(CITY, height=1)
    chain.commit(evidence=(first,))
    assert chain.state.get(first.state_key())["recorded_height"] == 2
    again = chain.build([]).block
    assert apply_block(chain.state, again).height == 3
    # The same evidence, and other evidence of the same validator and height, are refused.
    for evidence in (first, double_proposal(CITY, height=1)):
        assert_refused(chain.state, with_evidence(again, (evidence,)), "evidence_recorded")
    # Another height of the same validator is news.
    news = chain.build([], evidence=(double_vote(CITY, height=2),))
    assert news.block.evidence and apply_block(chain.state, news.block).height == 3


def test_build_block_leaves_out_what_fails_and_says_why(chain: Chain) -> None:
    good = double_vote(CITY, height=1)
    built = chain.build(
        [],
        evidence=(
            double_vote(STRANGER, height=1),
            good,
            double_proposal(CITY, height=1),  # a second item for (city, 1)
            _swapped(double_vote(CITY, height=2)),
        ),
    )
    assert built.block.evidence == (good,)
    assert [error.rule for _, error in built.evidence_left_out] == [
        "evidence_not_validator",
        "evidence_duplicate",
        "evidence_order",
    ]
    assert apply_block(chain.state, built.block).state_root == built.state.state_root


# --- how far back: the age bound and the validator sets the state remembers ------------------


@pytest.fixture(scope="module")
def long_chain() -> Chain:
    """More than EVIDENCE_AGE_HEIGHTS_MAX + 1 heights (empty blocks after block 1)."""
    long = Chain().funded()
    while long.state.height < EVIDENCE_AGE_HEIGHTS_MAX + 2:
        long.commit()
    return long


def test_evidence_older_than_the_bound_is_refused(long_chain: Chain) -> None:
    height = long_chain.state.height + 1
    oldest = height - EVIDENCE_AGE_HEIGHTS_MAX
    accepted = long_chain.build([], evidence=(double_vote(CITY, height=oldest),)).block
    assert accepted.evidence and apply_block(long_chain.state, accepted).height == height
    block = long_chain.build([]).block
    too_old = with_evidence(block, (double_vote(CITY, height=oldest - 1),))
    assert_refused(long_chain.state, too_old, "evidence_expired")
    assert long_chain.state.governing_validators(oldest - 1) is None
    assert long_chain.state.governing_validators(oldest) == long_chain.state.current_validators()


def test_at_most_evidence_per_block_max(long_chain: Chain) -> None:
    height = long_chain.state.height + 1
    many = tuple(
        double_vote(CITY, height=h) for h in range(height - EVIDENCE_PER_BLOCK_MAX, height + 1)
    )
    assert len(many) == EVIDENCE_PER_BLOCK_MAX + 1
    built = long_chain.build([], evidence=many)
    assert built.block.evidence == many[:EVIDENCE_PER_BLOCK_MAX]
    assert built.evidence_left_out == ()  # the one over the limit waits; it is not wrong
    assert apply_block(long_chain.state, built.block).state_root == built.state.state_root
    assert_refused(long_chain.state, with_evidence(built.block, many), "evidence_count")


def test_evidence_is_verified_against_the_set_that_governed_its_height() -> None:
    """Block 1 replaces `city` by three new validators: the set governs height 3 on (H+2).
    Evidence of height 2 names city, never a new one; of height 3 a new one, never city."""
    chain = Chain()
    new = [key(f"new-validator-{i}") for i in range(3)]
    chain.commit(chain.set_validators(new, name="new"))
    chain.commit()  # height 2, still governed by city
    chain.commit()  # height 3, the new set
    state = chain.state
    assert state.recent_validators == (
        GoverningSet(first_height=1, validators=chain.blocks[0].state.last_validators),
        GoverningSet(first_height=3, validators=state.current_validators()),
    )
    for built in chain.blocks:  # what the state remembers is what the headers name
        governing = state.governing_validators(built.block.height)
        assert governing is not None
        assert compute_validators_hash(governing) == built.block.header.validators_hash
    block = chain.build([]).block
    for evidence, outcome in (
        (double_vote(CITY, height=2), None),
        (double_vote(new[1], height=3), None),
        (double_vote(new[1], height=4), None),
        (double_vote(new[1], height=2), "evidence_not_validator"),
        (double_vote(CITY, height=3), "evidence_not_validator"),
    ):
        if outcome is None:
            built = chain.build([], evidence=(evidence,))
            assert built.block.evidence == (evidence,), built.evidence_left_out
            assert apply_block(state, built.block).get(evidence.state_key()) is not None
        else:
            assert_refused(state, with_evidence(block, (evidence,)), outcome)


def test_remember_validators_keeps_the_window_and_merges_runs() -> None:
    a = (Validator(public_key=key("one").public_key_hex, power=1, name="one"),)
    b = (Validator(public_key=key("two").public_key_hex, power=1, name="two"),)
    recent: tuple[GoverningSet, ...] = ()
    for height in range(1, 4):
        recent = remember_validators(recent, height=height, validators=a)
    assert recent == (GoverningSet(first_height=1, validators=a),)
    recent = remember_validators(recent, height=4, validators=b)
    assert [run.first_height for run in recent] == [1, 4]
    # The window is the last EVIDENCE_AGE_HEIGHTS_MAX heights: `a` leaves it once height 4 is
    # the oldest, and the run left first starts where the window does.
    window_at_4 = EVIDENCE_AGE_HEIGHTS_MAX + 3  # the height whose window starts at 4
    for height in range(5, window_at_4 + 1):
        recent = remember_validators(recent, height=height, validators=b)
    assert recent == (GoverningSet(first_height=4, validators=b),)
    recent = remember_validators(recent, height=window_at_4 + 1, validators=b)
    assert recent == (GoverningSet(first_height=5, validators=b),)


def test_a_state_knows_no_set_before_its_window_or_after_the_next_height(chain: Chain) -> None:
    state: State = chain.state
    assert state.governing_validators(0) is None
    assert state.governing_validators(1) == state.last_validators
    assert state.governing_validators(2) == state.current_validators()
    assert state.governing_validators(3) is None
