"""Consensus messages (SPEC §5.3, §5.4): wire forms, strict parsing, signing and checks.

Validators exchange three messages, each authenticated by its signatures, never by the
connection it came on. On the wire each is a JSON object of its own shape, told apart by the
member only it has:

    VOTE      {"chain_id", "type", "height", "round", "block_hash" | null, "public_key",
               "signature"}                                 (`ledger.evidence.Vote`; "type")
    PROPOSAL  {"chain_id", "height", "round", "valid_round" (null for -1), "block",
               "signature"}, signed by proposer(height, round)          ("valid_round")
    DECISION  {"block", "certificate"}: a decided block and its commit certificate, sent to a
               validator that is behind; authenticated by the certificate ("certificate")

No envelope wraps them: a proposal already nests its block's deepest transaction field at the
SPEC §2.1 limit of 8, so any wrapper would make it undecodable. For the same reason a batch
(the body of `POST /v1/consensus/messages`) is NDJSON, one message per line, at most
CONSENSUS_MESSAGES_BATCH_MAX lines, each decoded on its own (`decode_batch`). A proposal names
no signer (SPEC §5.4's fields): its signer is the proposer of its (height, round)
(`ledger.proposer`), which the receiver computes. Its `valid_round` is -1 in the signed
bytes and `null` on the wire, since the strict decoder admits no negative integer
(docs/decisions/0006).

`parse_*` refuse anything not exactly of these shapes; `sign_*` make messages; `verify_*`
check a well-formed message against the chain and the validator set governing its height.

    LedgerError
    └── ConsensusError        consensus_error
        ├── MalformedMessage  malformed_message: not the wire shape (strict SPEC §2.1 decoding,
        │                     unknown, missing or mistyped fields, limits, valid_round >= round)
        └── InvalidMessage    well-formed but refused; `code` is one of MESSAGE_CODES:
                              wrong_chain, block_mismatch, unknown_validator, not_proposer,
                              bad_signature, invalid_certificate
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from ledger import schema as s
from ledger.blocks import (
    Block,
    Certificate,
    Validator,
    parse_block,
    parse_certificate,
    verify_certificate,
)
from ledger.crypto import PrivateKey, SignatureError
from ledger.encoding import JSON, canonical, canonical_object, decode
from ledger.errors import InvalidProofError, LedgerError
from ledger.evidence import (
    NO_ROUND,
    SignedProposal,
    Vote,
    parse_valid_round,
    parse_vote,
    proposal_bytes,
    sign_vote,
    valid_round_to_json,
    verify_signed,
)
from ledger.limits import CONSENSUS_MESSAGES_BATCH_MAX
from ledger.proposer import compute_proposer

__all__ = [
    "MESSAGE_CODES",
    "NO_ROUND",
    "ConsensusError",
    "Decision",
    "InvalidMessage",
    "MalformedMessage",
    "Message",
    "Proposal",
    "Vote",
    "decode_batch",
    "decode_message",
    "encode_batch",
    "encode_message",
    "parse_message",
    "sign_proposal",
    "sign_vote",
    "verify_decision",
    "verify_proposal",
    "verify_vote",
]

MESSAGE_CODES: Final = frozenset(
    {
        "wrong_chain",
        "block_mismatch",
        "unknown_validator",
        "not_proposer",
        "bad_signature",
        "invalid_certificate",
    }
)


class ConsensusError(LedgerError):
    """Base of every error the consensus engine raises on bad input."""

    code = "consensus_error"


class MalformedMessage(ConsensusError):
    """Bytes or a decoded value that is not a consensus message's wire form."""

    code = "malformed_message"


class InvalidMessage(ConsensusError):
    """A well-formed message that fails a check; `code` names it (MESSAGE_CODES)."""

    def __init__(self, code: str, message: str) -> None:
        assert code in MESSAGE_CODES, code
        super().__init__(message, code=code)


@dataclass(frozen=True, slots=True, kw_only=True)
class Proposal:
    """A block proposed at (height, round), with the round it was last seen to gather more
    than 2/3 of prevotes (`valid_round`, or NO_ROUND) (SPEC §5.4)."""

    chain_id: str
    height: int
    round: int
    valid_round: int
    block: Block
    block_hash: str  # block.block_hash(), computed once where the proposal is made or parsed
    signature: str

    def __post_init__(self) -> None:
        assert self.valid_round == NO_ROUND or 0 <= self.valid_round < self.round
        assert self.block_hash == self.block.block_hash()

    def signed_bytes(self) -> bytes:
        return proposal_bytes(
            chain_id=self.chain_id,
            height=self.height,
            round=self.round,
            valid_round=self.valid_round,
            block_hash=self.block_hash,
        )

    def signed(self, public_key: str) -> SignedProposal:
        """This proposal without its block, as evidence carries it."""
        return SignedProposal(
            chain_id=self.chain_id,
            height=self.height,
            round=self.round,
            valid_round=self.valid_round,
            block_hash=self.block_hash,
            public_key=public_key,
            signature=self.signature,
        )

    def to_json(self) -> dict[str, JSON]:
        return {**self.fields_but_block(), "block": self.block.to_json()}

    def fields_but_block(self) -> dict[str, JSON]:
        """Every member but the block."""
        return {
            "chain_id": self.chain_id,
            "height": self.height,
            "round": self.round,
            "valid_round": valid_round_to_json(self.valid_round),
            "signature": self.signature,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """A decided block and a certificate committing it: what a lagging validator needs."""

    block: Block
    certificate: Certificate

    @property
    def height(self) -> int:
        return self.block.height

    def to_json(self) -> dict[str, JSON]:
        return {"block": self.block.to_json(), "certificate": self.certificate.to_json()}


Message = Vote | Proposal | Decision


def encode_message(message: Message) -> bytes:
    """The canonical bytes of a message's wire form: `canonical(message.to_json())`, a
    block's transactions taken from their leaves (`Block.canonical_bytes`)."""
    if isinstance(message, Vote):
        return canonical(message.to_json())
    if isinstance(message, Proposal):
        members = {key: canonical(value) for key, value in message.fields_but_block().items()}
    else:
        members = {"certificate": canonical(message.certificate.to_json())}
    return canonical_object({**members, "block": message.block.canonical_bytes()})


def encode_batch(messages: Sequence[Message]) -> bytes:
    """NDJSON: one message's canonical bytes per line."""
    assert 0 < len(messages) <= CONSENSUS_MESSAGES_BATCH_MAX
    return b"".join(encode_message(message) + b"\n" for message in messages)


# --- parsing outside input ----------------------------------------------------------------------

_PROPOSAL_SCHEMA: Final = s.obj(
    {
        "chain_id": s.text(64, pattern=s.CHAIN_ID),
        "height": s.integer(1),
        "round": s.integer(0),
        "valid_round": lambda path, value: value,  # checked against the round
        "block": lambda path, value: value,
        "signature": s.signature_hex,
    }
)
_DECISION_SCHEMA: Final = s.obj(
    {"block": lambda path, value: value, "certificate": lambda path, value: value}
)


def _parse_proposal(value: Any, path: str, transaction_bytes_max: int) -> Proposal:
    fields = _PROPOSAL_SCHEMA(path, value)
    block = parse_block(
        fields["block"], transaction_bytes_max=transaction_bytes_max, path=f"{path}.block"
    )
    return Proposal(
        chain_id=fields["chain_id"],
        height=fields["height"],
        round=fields["round"],
        valid_round=parse_valid_round(
            f"{path}.valid_round", fields["valid_round"], round=fields["round"]
        ),
        block=block,
        block_hash=block.block_hash(),
        signature=fields["signature"],
    )


def _parse_decision(value: Any, path: str, transaction_bytes_max: int) -> Decision:
    fields = _DECISION_SCHEMA(path, value)
    return Decision(
        block=parse_block(
            fields["block"], transaction_bytes_max=transaction_bytes_max, path=f"{path}.block"
        ),
        certificate=parse_certificate(fields["certificate"], f"{path}.certificate"),
    )


def parse_message(value: Any, *, transaction_bytes_max: int, path: str = "") -> Message:
    """A message from decoded JSON (a peer's), strictly: `MalformedMessage` otherwise."""
    try:
        if not isinstance(value, dict):
            raise MalformedMessage(f"{path or 'message'}: expected an object")
        if "type" in value:
            return parse_vote(value, path or "vote")
        if "valid_round" in value:
            return _parse_proposal(value, path or "proposal", transaction_bytes_max)
        if "certificate" in value:
            return _parse_decision(value, path or "decision", transaction_bytes_max)
        raise MalformedMessage(
            f"{path or 'message'}: neither a vote (type), a proposal (valid_round)"
            " nor a decision (certificate)"
        )
    except MalformedMessage:
        raise
    except LedgerError as error:
        raise MalformedMessage(error.message) from error


def decode_message(data: bytes, *, transaction_bytes_max: int) -> Message:
    """A message from the bytes of its wire form (strict SPEC §2.1 decoding first)."""
    try:
        value = decode(data)
    except LedgerError as error:
        raise MalformedMessage(error.message) from error
    return parse_message(value, transaction_bytes_max=transaction_bytes_max)


def batch_lines(data: bytes, what: str) -> list[bytes]:
    """The lines of an NDJSON batch, 1 to CONSENSUS_MESSAGES_BATCH_MAX (a final newline is
    optional), counted before a list of them is made (found by review: a 4 MiB batch of
    2-byte lines made ~1.4 M objects first); `what` names them in the refusal."""
    count = data.count(b"\n") + (not data.endswith(b"\n"))
    if count > CONSENSUS_MESSAGES_BATCH_MAX:
        raise MalformedMessage(
            f"{count} {what}, at most {CONSENSUS_MESSAGES_BATCH_MAX} allowed",
            code="limit_exceeded",
        )
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        raise MalformedMessage("an empty batch")
    return lines


def decode_batch(data: bytes, *, transaction_bytes_max: int) -> list[Message]:
    """An NDJSON batch: 1 to CONSENSUS_MESSAGES_BATCH_MAX messages, one per line (a final
    newline is optional). One bad line refuses the batch, naming the line."""
    lines = batch_lines(data, "messages")
    messages = []
    for number, line in enumerate(lines, start=1):
        try:
            messages.append(decode_message(line, transaction_bytes_max=transaction_bytes_max))
        except MalformedMessage as error:
            raise MalformedMessage(f"line {number}: {error.message}", code=error.code) from error
    return messages


# --- signing ----------------------------------------------------------------------------------


def sign_proposal(
    key: PrivateKey, *, chain_id: str, height: int, round: int, valid_round: int, block: Block
) -> Proposal:
    block_hash = block.block_hash()
    message = proposal_bytes(
        chain_id=chain_id,
        height=height,
        round=round,
        valid_round=valid_round,
        block_hash=block_hash,
    )
    return Proposal(
        chain_id=chain_id,
        height=height,
        round=round,
        valid_round=valid_round,
        block=block,
        block_hash=block_hash,
        signature=key.sign(message).hex(),
    )


# --- verification -----------------------------------------------------------------------------


def _check_chain(chain_id: str, expected: str) -> None:
    if chain_id != expected:
        raise InvalidMessage("wrong_chain", f"message is for chain {chain_id!r}, not {expected!r}")


def verify_vote(vote: Vote, *, chain_id: str, validators: Sequence[Validator]) -> None:
    """`vote` is for `chain_id`, by a validator of `validators` (the set governing its height),
    and its signature verifies."""
    _check_chain(vote.chain_id, chain_id)
    if vote.public_key not in {v.public_key for v in validators}:
        raise InvalidMessage(
            "unknown_validator", f"{vote.public_key} is not a validator at height {vote.height}"
        )
    try:
        verify_signed(vote)
    except SignatureError as error:
        raise InvalidMessage("bad_signature", f"vote: {error.message}") from error


def verify_proposal(proposal: Proposal, *, chain_id: str, validators: Sequence[Validator]) -> str:
    """`proposal` is for `chain_id`, carries a block of its height and chain, and is signed by
    the proposer of its (height, round) among `validators`. Returns that proposer's key.

    Whether the block is valid is a separate question (the replica's `valid(v)`)."""
    _check_chain(proposal.chain_id, chain_id)
    header = proposal.block.header
    if header.height != proposal.height or header.chain_id != proposal.chain_id:
        raise InvalidMessage(
            "block_mismatch",
            f"proposal for height {proposal.height} carries a block of height {header.height}"
            f" on chain {header.chain_id!r}",
        )
    proposer = compute_proposer(validators, proposal.height, proposal.round)
    try:
        verify_signed(proposal.signed(proposer))
    except SignatureError as error:
        raise InvalidMessage(
            "not_proposer",
            f"proposal at ({proposal.height}, {proposal.round}) is not signed by its proposer"
            f" {proposer}: {error.message}",
        ) from error
    return proposer


def verify_decision(decision: Decision, *, chain_id: str, validators: Sequence[Validator]) -> None:
    """The certificate commits the block at its height with more than 2/3 of `validators`
    (the set governing that height). Whether the block applies is the replica's question."""
    _check_chain(decision.block.header.chain_id, chain_id)
    try:
        verify_certificate(
            decision.certificate,
            chain_id=chain_id,
            height=decision.height,
            block_hash=decision.block.block_hash(),
            validators=validators,
        )
    except InvalidProofError as error:
        raise InvalidMessage("invalid_certificate", error.message) from error
