"""Consensus messages: wire forms through the strict decoder, signed bytes, and every code.

Each refusal test builds a valid message from real keys, changes one thing, and expects
exactly that code (MalformedMessage for shapes, InvalidMessage codes for checks).
"""

from __future__ import annotations

import dataclasses

import pytest

from consensus.messages import (
    MESSAGE_CODES,
    NO_ROUND,
    ConsensusError,
    Decision,
    InvalidMessage,
    MalformedMessage,
    Message,
    Proposal,
    Vote,
    decode_batch,
    decode_message,
    encode_batch,
    encode_message,
    sign_proposal,
    sign_vote,
    verify_decision,
    verify_proposal,
    verify_vote,
)
from ledger.blocks import Block, sign_certificate
from ledger.crypto import PROPOSAL_DOMAIN, verify_signature
from ledger.encoding import canonical
from ledger.errors import LedgerError
from ledger.evidence import vote_bytes
from ledger.limits import CONSENSUS_MESSAGES_BATCH_MAX
from ledger.proposer import compute_proposer
from ledger.state_transition import build_block
from tests.consensus.simulation.world import World, make_world
from tests.factory import CHAIN_ID, GENESIS_TIME, key

WORLD: World = make_world(4)
LIMIT = WORLD.genesis.params.transaction_bytes_max
PROPOSER = 1  # compute_proposer(validators, 1, 0) with four equal powers: index (1 + 0) mod 4


def block(time: int = GENESIS_TIME + 1000) -> Block:
    return build_block(
        WORLD.genesis,
        WORLD.workload[:3],
        time=time,
        proposer=WORLD.keys[PROPOSER].public_key_hex,
        last_commit=None,
    ).block


def proposal(*, round: int = 0, valid_round: int = NO_ROUND, signer: int | None = None) -> Proposal:
    index = signer if signer is not None else _proposer_index(1, round)
    return sign_proposal(
        WORLD.keys[index],
        chain_id=CHAIN_ID,
        height=1,
        round=round,
        valid_round=valid_round,
        block=block(),
    )


def _proposer_index(height: int, round: int) -> int:
    proposer = compute_proposer(WORLD.validators, height, round)
    return [k.public_key_hex for k in WORLD.keys].index(proposer)


def vote(block_hash: str | None = "aa" * 32, *, signer: int = 0) -> Vote:
    return sign_vote(
        WORLD.keys[signer],
        chain_id=CHAIN_ID,
        vote_type="prevote",
        height=1,
        round=0,
        block_hash=block_hash,
    )


def decision() -> Decision:
    decided = block()
    certificate = sign_certificate(
        chain_id=CHAIN_ID, height=1, round=0, block_hash=decided.block_hash(), keys=WORLD.keys[:3]
    )
    return Decision(block=decided, certificate=certificate)


def test_the_proposer_of_height_1_round_0_is_index_1() -> None:
    assert _proposer_index(1, 0) == PROPOSER


@pytest.mark.parametrize(
    "message",
    [vote(), vote(None), proposal(), proposal(round=3, valid_round=1), decision()],
    ids=["vote", "nil vote", "proposal", "proposal with valid round", "decision"],
)
def test_every_message_survives_its_wire_form(message: Message) -> None:
    data = encode_message(message)
    assert data == canonical(message.to_json())
    assert decode_message(data, transaction_bytes_max=LIMIT) == message


def test_a_proposal_signs_the_spec_bytes_and_sends_minus_one_as_null() -> None:
    made = proposal()
    assert made.to_json()["valid_round"] is None
    assert set(made.to_json()) == {
        "chain_id",
        "height",
        "round",
        "valid_round",
        "block",
        "signature",
    }
    expected = PROPOSAL_DOMAIN + canonical(
        {
            "chain_id": CHAIN_ID,
            "height": 1,
            "round": 0,
            "valid_round": -1,
            "block_hash": made.block.block_hash(),
        }
    )
    assert made.signed_bytes() == expected
    verify_signature(WORLD.keys[PROPOSER].public_key, expected, bytes.fromhex(made.signature))


def test_a_vote_signs_the_spec_vote_bytes() -> None:
    made = vote()
    assert made.signed_bytes() == vote_bytes(
        chain_id=CHAIN_ID, vote_type="prevote", height=1, round=0, block_hash="aa" * 32
    )
    assert made.to_json()["type"] == "prevote"
    verify_signature(WORLD.keys[0].public_key, made.signed_bytes(), bytes.fromhex(made.signature))


@pytest.mark.parametrize(
    "data",
    [
        b"[]",
        b"{}",
        b'{"vote": {}}',
        encode_message(vote())[:-1],
        encode_message(vote()).replace(b'"round":0', b'"round":-1'),
        encode_message(vote()).replace(b'"round":0', b'"round":0.0'),
        encode_message(vote()).replace(b'"prevote"', b'"prevotes"'),
        encode_message(vote()).replace(b'"height":1', b'"height":0'),
        encode_message(vote()).replace(b'"round":0', b'"round":0,"extra":1'),
        encode_message(proposal(round=2, valid_round=1)).replace(
            b'"valid_round":1', b'"valid_round":2'
        ),
        encode_message(proposal(round=2)).replace(b'"valid_round":null', b'"valid_round":-1'),
        encode_message(proposal()).replace(b'"signature":"', b'"signature":"00', 1),
        encode_message(decision()).replace(b'"round":0', b'"round":"0"', 1),
        b'{"certificate": 1, "block": 2}',
    ],
)
def test_malformed_input_is_refused_as_malformed_message(data: bytes) -> None:
    with pytest.raises(MalformedMessage) as raised:
        decode_message(data, transaction_bytes_max=LIMIT)
    assert raised.value.code == "malformed_message"
    assert isinstance(raised.value, ConsensusError) and isinstance(raised.value, LedgerError)


def test_a_batch_is_ndjson_one_message_a_line() -> None:
    messages: list[Message] = [vote(), proposal(), decision()]
    data = encode_batch(messages)
    assert data.count(b"\n") == 3
    assert decode_batch(data, transaction_bytes_max=LIMIT) == messages
    assert decode_batch(data.rstrip(b"\n"), transaction_bytes_max=LIMIT) == messages
    with pytest.raises(MalformedMessage, match="line 2"):
        decode_batch(encode_message(vote()) + b"\n{}\n", transaction_bytes_max=LIMIT)
    with pytest.raises(MalformedMessage, match="empty"):
        decode_batch(b"", transaction_bytes_max=LIMIT)
    too_many = encode_message(vote()) + b"\n"
    with pytest.raises(MalformedMessage) as raised:
        decode_batch(too_many * (CONSENSUS_MESSAGES_BATCH_MAX + 1), transaction_bytes_max=LIMIT)
    assert raised.value.code == "limit_exceeded"
    assert (
        len(decode_batch(too_many * CONSENSUS_MESSAGES_BATCH_MAX, transaction_bytes_max=LIMIT))
        == CONSENSUS_MESSAGES_BATCH_MAX
    )


def test_a_proposal_nests_no_deeper_than_the_decoder_allows() -> None:
    """An issue's recipients sit 8 deep in a proposal: any wrapper would break the limit."""
    made = proposal()
    assert any(envelope.tx.type == "issue" for envelope in made.block.transactions)
    decode_message(encode_message(made), transaction_bytes_max=LIMIT)


# --- verification: one test per code -------------------------------------------------------------


def _code(check: object) -> str:
    with pytest.raises(InvalidMessage) as raised:
        check()  # type: ignore[operator]
    assert raised.value.code in MESSAGE_CODES
    return raised.value.code


def test_a_valid_vote_proposal_and_decision_verify() -> None:
    made = vote()
    verify_vote(made, chain_id=CHAIN_ID, validators=WORLD.validators)
    assert (
        verify_proposal(proposal(), chain_id=CHAIN_ID, validators=WORLD.validators)
        == WORLD.keys[PROPOSER].public_key_hex
    )
    verify_decision(decision(), chain_id=CHAIN_ID, validators=WORLD.validators)


def test_wrong_chain() -> None:
    made = vote()
    assert (
        _code(lambda: verify_vote(made, chain_id="other", validators=WORLD.validators))
        == "wrong_chain"
    )
    assert (
        _code(lambda: verify_proposal(proposal(), chain_id="other", validators=WORLD.validators))
        == "wrong_chain"
    )
    assert (
        _code(lambda: verify_decision(decision(), chain_id="other", validators=WORLD.validators))
        == "wrong_chain"
    )


def test_unknown_validator() -> None:
    stranger = sign_vote(
        key("stranger"), chain_id=CHAIN_ID, vote_type="prevote", height=1, round=0, block_hash=None
    )
    assert (
        _code(lambda: verify_vote(stranger, chain_id=CHAIN_ID, validators=WORLD.validators))
        == "unknown_validator"
    )


def test_bad_signature() -> None:
    made = vote()
    changed = dataclasses.replace(made, block_hash="bb" * 32)
    assert (
        _code(lambda: verify_vote(changed, chain_id=CHAIN_ID, validators=WORLD.validators))
        == "bad_signature"
    )


def test_not_proposer() -> None:
    wrong = proposal(signer=(PROPOSER + 1) % 4)
    assert (
        _code(lambda: verify_proposal(wrong, chain_id=CHAIN_ID, validators=WORLD.validators))
        == "not_proposer"
    )
    made = proposal()
    tampered = dataclasses.replace(made, round=1)  # another round has another proposer
    assert (
        _code(lambda: verify_proposal(tampered, chain_id=CHAIN_ID, validators=WORLD.validators))
        == "not_proposer"
    )


def test_block_mismatch() -> None:
    made = proposal()
    other_height = dataclasses.replace(made, height=2)
    assert (
        _code(lambda: verify_proposal(other_height, chain_id=CHAIN_ID, validators=WORLD.validators))
        == "block_mismatch"
    )


def test_invalid_certificate() -> None:
    made = decision()
    short = sign_certificate(
        chain_id=CHAIN_ID,
        height=1,
        round=0,
        block_hash=made.block.block_hash(),
        keys=WORLD.keys[:2],
    )
    for certificate in (
        short,  # 2 of 4 is not more than 2/3
        dataclasses.replace(made.certificate, block_hash="cc" * 32),
        dataclasses.replace(made.certificate, height=2),
    ):
        broken = Decision(block=made.block, certificate=certificate)
        assert (
            _code(
                lambda b=broken: verify_decision(b, chain_id=CHAIN_ID, validators=WORLD.validators)
            )
            == "invalid_certificate"
        )


def test_every_code_has_a_test_above() -> None:
    tested = {
        "wrong_chain",
        "unknown_validator",
        "bad_signature",
        "not_proposer",
        "block_mismatch",
        "invalid_certificate",
    }
    assert tested == set(MESSAGE_CODES)


def test_an_unknown_code_is_a_bug() -> None:
    with pytest.raises(AssertionError):
        InvalidMessage("no_such_code", "x")
