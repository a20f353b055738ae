"""Evidence of equivocation (SPEC §5.4): signed bytes, wire forms, and every refusal.

Each test builds valid evidence from real Ed25519 keys, changes one thing, and expects
exactly the check that names it.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ledger.blocks import Validator, sign_certificate
from ledger.crypto import PROPOSAL_DOMAIN
from ledger.encoding import canonical, decode
from ledger.errors import FieldError, InvalidProofError
from ledger.evidence import (
    EVIDENCE_CHECK_CODES,
    NO_ROUND,
    Evidence,
    SignedProposal,
    Vote,
    evidence_from_certificates,
    make_evidence,
    parse_evidence,
    parse_signed_proposal,
    parse_vote,
    proposal_bytes,
    sign_vote,
    verify_evidence,
)
from tests.factory import CHAIN_ID, key

KEYS = sorted((key(f"evidence-validator-{i}") for i in range(4)), key=lambda k: k.public_key_hex)
VALIDATORS = tuple(
    Validator(public_key=k.public_key_hex, power=1, name=f"v{i}") for i, k in enumerate(KEYS)
)
HASH_A = "aa" * 32
HASH_B = "bb" * 32


def vote(
    block_hash: str | None, *, signer: int = 0, round: int = 2, vote_type: str = "prevote"
) -> Vote:
    return sign_vote(
        KEYS[signer],
        chain_id=CHAIN_ID,
        vote_type=vote_type,
        height=5,
        round=round,
        block_hash=block_hash,
    )


def signed_proposal(
    block_hash: str, *, signer: int = 0, valid_round: int = NO_ROUND
) -> SignedProposal:
    message = proposal_bytes(
        chain_id=CHAIN_ID, height=5, round=2, valid_round=valid_round, block_hash=block_hash
    )
    return SignedProposal(
        chain_id=CHAIN_ID,
        height=5,
        round=2,
        valid_round=valid_round,
        block_hash=block_hash,
        public_key=KEYS[signer].public_key_hex,
        signature=KEYS[signer].sign(message).hex(),
    )


def duplicate_vote() -> Evidence:
    return make_evidence(vote(HASH_A), vote(None))


def test_proposal_bytes_are_the_spec_bytes_with_minus_one() -> None:
    signed = proposal_bytes(
        chain_id="c", height=3, round=1, valid_round=NO_ROUND, block_hash=HASH_A
    )
    assert signed == PROPOSAL_DOMAIN + (
        b'{"block_hash":"'
        + HASH_A.encode()
        + b'","chain_id":"c","height":3,"round":1,"valid_round":-1}'
    )
    assert b'"valid_round":0' in proposal_bytes(
        chain_id="c", height=3, round=1, valid_round=0, block_hash=HASH_A
    )


def test_wire_forms_round_trip_through_the_strict_decoder() -> None:
    for evidence in (
        duplicate_vote(),
        make_evidence(signed_proposal(HASH_A), signed_proposal(HASH_B, valid_round=1)),
    ):
        again = parse_evidence(decode(canonical(evidence.to_json())))
        assert again == evidence
        verify_evidence(again, chain_id=CHAIN_ID, validators=VALIDATORS)
    proposal = signed_proposal(HASH_A)
    assert proposal.to_json()["valid_round"] is None  # -1 travels as null (SPEC §2.1 decoder)
    assert parse_signed_proposal(decode(canonical(proposal.to_json()))) == proposal


def test_the_pair_has_one_canonical_order() -> None:
    a, b = vote(HASH_A), vote(None)
    assert make_evidence(a, b) == make_evidence(b, a)
    evidence = make_evidence(a, b)
    assert evidence.a.signed_bytes() < evidence.b.signed_bytes()
    assert evidence.public_key == KEYS[0].public_key_hex and evidence.height == 5


def test_the_same_vote_twice_is_no_evidence() -> None:
    with pytest.raises(AssertionError):
        make_evidence(vote(HASH_A), vote(HASH_A))


def _swap(evidence: Evidence, **changes: object) -> Evidence:
    return dataclasses.replace(evidence, **changes)  # type: ignore[arg-type]


def _resigned_b(evidence: Evidence, **fields: object) -> Evidence:
    b = evidence.b
    assert isinstance(b, Vote)
    changed = dataclasses.replace(b, **fields)  # type: ignore[arg-type]
    signer = next(k for k in KEYS if k.public_key_hex == changed.public_key)
    return _swap(
        evidence,
        b=dataclasses.replace(changed, signature=signer.sign(changed.signed_bytes()).hex()),
    )


@pytest.mark.parametrize(
    ("tamper", "check", "code"),
    [
        (
            lambda e: _resigned_b(e, chain_id="other-chain"),
            "not for chain",
            "evidence_wrong_chain",
        ),
        (lambda e: _resigned_b(e, round=3), "different slots", "evidence_slot_mismatch"),
        (
            lambda e: _resigned_b(e, vote_type="precommit"),
            "different slots",
            "evidence_slot_mismatch",
        ),
        (
            lambda e: _resigned_b(e, public_key=KEYS[1].public_key_hex),
            "two different validators",
            "evidence_signer_mismatch",
        ),
        (lambda e: _swap(e, b=e.a), "same content", "evidence_no_conflict"),
        (lambda e: _swap(e, a=e.b, b=e.a), "canonical order", "evidence_order"),
        (
            lambda e: _swap(e, b=dataclasses.replace(e.b, signature=e.a.signature)),
            "evidence b",
            "evidence_signature",
        ),
        (
            lambda e: _swap(e, a=dataclasses.replace(e.a, signature=e.b.signature)),
            "evidence a",
            "evidence_signature",
        ),
    ],
)
def test_each_broken_rule_is_named(tamper: object, check: str, code: str) -> None:
    evidence = duplicate_vote()
    verify_evidence(evidence, chain_id=CHAIN_ID, validators=VALIDATORS)
    with pytest.raises(InvalidProofError, match=check) as caught:
        verify_evidence(tamper(evidence), chain_id=CHAIN_ID, validators=VALIDATORS)  # type: ignore[operator]
    assert caught.value.code == code


def test_a_signer_outside_the_set_is_named_by_its_code() -> None:
    with pytest.raises(InvalidProofError) as caught:
        verify_evidence(duplicate_vote(), chain_id=CHAIN_ID, validators=VALIDATORS[1:])
    assert caught.value.code == "evidence_not_validator"
    assert {caught.value.code} < set(EVIDENCE_CHECK_CODES)


def test_a_signer_outside_the_set_is_refused() -> None:
    with pytest.raises(InvalidProofError, match="not a validator"):
        verify_evidence(duplicate_vote(), chain_id=CHAIN_ID, validators=VALIDATORS[1:])


def test_duplicate_proposals_verify_and_a_forged_one_does_not() -> None:
    evidence = make_evidence(signed_proposal(HASH_A), signed_proposal(HASH_A, valid_round=1))
    assert evidence.evidence_type == "duplicate_proposal"
    verify_evidence(evidence, chain_id=CHAIN_ID, validators=VALIDATORS)
    forged = _swap(evidence, b=dataclasses.replace(evidence.b, block_hash=HASH_B))
    with pytest.raises(InvalidProofError):
        verify_evidence(forged, chain_id=CHAIN_ID, validators=VALIDATORS)


@pytest.mark.parametrize(
    "value",
    [
        {"type": "duplicate_votes", "a": {}, "b": {}},
        {"type": "duplicate_vote", "a": {}},
        {"type": "duplicate_vote", "a": {}, "b": {}, "c": 1},
    ],
)
def test_malformed_evidence_is_a_field_error(value: object) -> None:
    with pytest.raises(FieldError):
        parse_evidence(value)


def test_a_proposal_valid_round_must_come_before_its_round() -> None:
    value = signed_proposal(HASH_A).to_json()
    for bad in (2, 3, "1", True):
        with pytest.raises(FieldError):
            parse_signed_proposal({**value, "valid_round": bad})
    assert parse_signed_proposal({**value, "valid_round": 1}).valid_round == 1


def test_a_vote_block_hash_is_hex_or_null() -> None:
    value = vote(HASH_A).to_json()
    assert parse_vote({**value, "block_hash": None}).block_hash is None
    for bad in ("AA" * 32, "aa", 0):
        with pytest.raises(FieldError):
            parse_vote({**value, "block_hash": bad})


def test_conflicting_certificates_of_one_round_name_every_double_signer() -> None:
    first = sign_certificate(chain_id=CHAIN_ID, height=5, round=2, block_hash=HASH_A, keys=KEYS[:3])
    second = sign_certificate(
        chain_id=CHAIN_ID, height=5, round=2, block_hash=HASH_B, keys=KEYS[1:]
    )
    found = evidence_from_certificates(first, second)
    assert [e.public_key for e in found] == [k.public_key_hex for k in KEYS[1:3]]
    for evidence in found:
        verify_evidence(evidence, chain_id=CHAIN_ID, validators=VALIDATORS)
    later = sign_certificate(chain_id=CHAIN_ID, height=5, round=3, block_hash=HASH_B, keys=KEYS[1:])
    assert evidence_from_certificates(first, later) == []  # two rounds: no double vote
    assert evidence_from_certificates(first, first) == []


@given(
    round=st.integers(0, 2**40),
    first=st.one_of(st.none(), st.sampled_from([HASH_A, HASH_B, "cc" * 32])),
    second=st.one_of(st.none(), st.sampled_from([HASH_A, HASH_B, "cc" * 32])),
    vote_type=st.sampled_from(["prevote", "precommit"]),
)
def test_any_two_different_votes_of_a_slot_make_verifiable_evidence(
    round: int, first: str | None, second: str | None, vote_type: str
) -> None:
    a = vote(first, round=round, vote_type=vote_type)
    b = vote(second, round=round, vote_type=vote_type)
    assume(first != second)
    evidence = make_evidence(a, b)
    verify_evidence(
        parse_evidence(decode(canonical(evidence.to_json()))),
        chain_id=CHAIN_ID,
        validators=VALIDATORS,
    )
