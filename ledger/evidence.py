"""Signed votes, signed proposals and evidence of equivocation (SPEC §5.3, §5.4), pure.

A validator equivocates when it signs two different votes, or two different proposals, for
one (height, round, type). That is provable by anyone holding both signed messages and the
validator set, so this module lives in the ledger: the offline auditor and the state
transition verify evidence without the consensus engine (the ledger never imports
`consensus`). Wire forms:

    VOTE     = {"chain_id", "type": "prevote"|"precommit", "height", "round",
                "block_hash" (hex, or null for nil), "public_key", "signature"}
    PROPOSAL = {"chain_id", "height", "round", "valid_round" (null for -1), "block_hash",
                "public_key", "signature"}
    EVIDENCE = {"type": "duplicate_vote", "a": VOTE, "b": VOTE}
             | {"type": "duplicate_proposal", "a": PROPOSAL, "b": PROPOSAL}

A vote signs `vote_bytes` (SPEC §5.3); a proposal signs
`"tanlian/proposal/v1\\n" + canonical({"chain_id", "height", "round", "valid_round",
"block_hash"})` with `valid_round` an integer, -1 when the proposal carries no earlier round
(SPEC §5.4). The decoder refuses negative integers (SPEC §2.1), so on the wire -1 is `null`;
the signed bytes keep -1 exactly as the SPEC writes them (docs/decisions/0006). A proposal in
evidence carries its block's hash, not the block: the signature covers only the hash.

Evidence verifies when (`verify_evidence`): both messages are for the same chain, height,
round and type; both are signed by the same validator of the set governing that height; their
signed bytes differ; `a` sorts before `b` by those bytes (so a pair has exactly one form and
evidence can be compared and deduplicated byte for byte); and both signatures verify. Failure
raises `InvalidProofError` whose `code` names the check (one of EVIDENCE_CHECK_CODES, which
`apply_block` reports as the block's rule); a malformed value raises `FieldError`.

This module makes the bytes every validator signs (votes and proposals), so `ledger.blocks`
asks it for the vote bytes a certificate's precommits sign, and parses a block's evidence with
`parse_evidence`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ledger import schema as s
from ledger.crypto import (
    PROPOSAL_DOMAIN,
    VOTE_DOMAIN,
    PrivateKey,
    SignatureError,
    verify_signature,
)
from ledger.encoding import JSON, canonical_unchecked
from ledger.errors import FieldError, InvalidProofError

if TYPE_CHECKING:  # ledger.blocks imports this module: these are for annotations only
    from ledger.blocks import Certificate, Validator

VOTE_TYPES: Final = ("prevote", "precommit")
EVIDENCE_TYPES: Final = ("duplicate_vote", "duplicate_proposal")
NO_ROUND: Final = -1  # a proposal's valid_round when it names no earlier round
# What `verify_evidence` names when evidence fails, as `InvalidProofError.code`.
EVIDENCE_CHECK_CODES: Final = (
    "evidence_wrong_chain",  # a message is for another chain
    "evidence_slot_mismatch",  # the two are not for one (height, round, type)
    "evidence_signer_mismatch",  # two different validators signed them
    "evidence_not_validator",  # the signer is not in the set governing that height
    "evidence_no_conflict",  # both sign the same content
    "evidence_order",  # a does not sort before b
    "evidence_signature",  # a signature does not verify
)


def vote_bytes(
    *, chain_id: str, vote_type: str, height: int, round: int, block_hash: str | None
) -> bytes:
    """What a validator signs for a vote (SPEC §5.3), a certificate's precommits included."""
    assert vote_type in VOTE_TYPES
    value = {
        "chain_id": chain_id,
        "type": vote_type,
        "height": height,
        "round": round,
        "block_hash": block_hash,
    }
    return VOTE_DOMAIN + canonical_unchecked(value)


def proposal_bytes(
    *, chain_id: str, height: int, round: int, valid_round: int, block_hash: str
) -> bytes:
    """What a proposer signs (SPEC §5.4); `valid_round` is -1 or an earlier round."""
    assert valid_round == NO_ROUND or 0 <= valid_round < round, (valid_round, round)
    value = {
        "chain_id": chain_id,
        "height": height,
        "round": round,
        "valid_round": valid_round,
        "block_hash": block_hash,
    }
    return PROPOSAL_DOMAIN + canonical_unchecked(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Vote:
    """A prevote or precommit, signed by `public_key` over `vote_bytes` (SPEC §5.3)."""

    chain_id: str
    vote_type: str
    height: int
    round: int
    block_hash: str | None  # None is a vote for nil
    public_key: str
    signature: str

    def signed_bytes(self) -> bytes:
        return vote_bytes(
            chain_id=self.chain_id,
            vote_type=self.vote_type,
            height=self.height,
            round=self.round,
            block_hash=self.block_hash,
        )

    def to_json(self) -> dict[str, JSON]:
        return {
            "chain_id": self.chain_id,
            "type": self.vote_type,
            "height": self.height,
            "round": self.round,
            "block_hash": self.block_hash,
            "public_key": self.public_key,
            "signature": self.signature,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedProposal:
    """A proposal's signed fields, its signer and signature: a proposal without its block."""

    chain_id: str
    height: int
    round: int
    valid_round: int  # NO_ROUND (-1) or an earlier round
    block_hash: str
    public_key: str
    signature: str

    def signed_bytes(self) -> bytes:
        return proposal_bytes(
            chain_id=self.chain_id,
            height=self.height,
            round=self.round,
            valid_round=self.valid_round,
            block_hash=self.block_hash,
        )

    def to_json(self) -> dict[str, JSON]:
        return {
            "chain_id": self.chain_id,
            "height": self.height,
            "round": self.round,
            "valid_round": valid_round_to_json(self.valid_round),
            "block_hash": self.block_hash,
            "public_key": self.public_key,
            "signature": self.signature,
        }


def sign_vote(
    key: PrivateKey,
    *,
    chain_id: str,
    vote_type: str,
    height: int,
    round: int,
    block_hash: str | None,
) -> Vote:
    message = vote_bytes(
        chain_id=chain_id, vote_type=vote_type, height=height, round=round, block_hash=block_hash
    )
    return Vote(
        chain_id=chain_id,
        vote_type=vote_type,
        height=height,
        round=round,
        block_hash=block_hash,
        public_key=key.public_key_hex,
        signature=key.sign(message).hex(),
    )


def valid_round_to_json(valid_round: int) -> int | None:
    return None if valid_round == NO_ROUND else valid_round


def parse_valid_round(path: str, value: Any, *, round: int) -> int:
    """`null` (-1 in the signed bytes) or a round before `round` (SPEC §5.4)."""
    if value is None:
        return NO_ROUND
    valid_round: int = s.integer(0)(path, value)
    if valid_round >= round:
        raise FieldError(path, f"{valid_round} is not before the proposal's round {round}")
    return valid_round


def _hash_or_null(path: str, value: Any) -> str | None:
    return None if value is None else str(s.HASH_HEX(path, value))


VOTE_SCHEMA: Final = s.obj(
    {
        "chain_id": s.text(64, pattern=s.CHAIN_ID),
        "type": s.enum(*VOTE_TYPES),
        "height": s.integer(1),
        "round": s.integer(0),
        "block_hash": _hash_or_null,
        "public_key": s.public_key,
        "signature": s.signature_hex,
    }
)

SIGNED_PROPOSAL_SCHEMA: Final = s.obj(
    {
        "chain_id": s.text(64, pattern=s.CHAIN_ID),
        "height": s.integer(1),
        "round": s.integer(0),
        "valid_round": lambda path, value: value,  # checked against the round below
        "block_hash": s.HASH_HEX,
        "public_key": s.public_key,
        "signature": s.signature_hex,
    }
)


def parse_vote(value: Any, path: str = "vote") -> Vote:
    fields = VOTE_SCHEMA(path, value)
    return Vote(
        chain_id=fields["chain_id"],
        vote_type=fields["type"],
        height=fields["height"],
        round=fields["round"],
        block_hash=fields["block_hash"],
        public_key=fields["public_key"],
        signature=fields["signature"],
    )


def parse_signed_proposal(value: Any, path: str = "proposal") -> SignedProposal:
    fields = SIGNED_PROPOSAL_SCHEMA(path, value)
    return SignedProposal(
        chain_id=fields["chain_id"],
        height=fields["height"],
        round=fields["round"],
        valid_round=parse_valid_round(
            f"{path}.valid_round", fields["valid_round"], round=fields["round"]
        ),
        block_hash=fields["block_hash"],
        public_key=fields["public_key"],
        signature=fields["signature"],
    )


def verify_signed(message: Vote | SignedProposal) -> None:
    """The message's own signature verifies under its `public_key` (strict Ed25519)."""
    verify_signature(
        bytes.fromhex(message.public_key),
        message.signed_bytes(),
        bytes.fromhex(message.signature),
    )


# --- evidence ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Evidence:
    """Two different messages one validator signed for one (height, round, type)."""

    evidence_type: str
    a: Vote | SignedProposal
    b: Vote | SignedProposal

    @property
    def public_key(self) -> str:
        """The validator the evidence names."""
        return self.a.public_key

    @property
    def height(self) -> int:
        return self.a.height

    @property
    def round(self) -> int:
        return self.a.round

    def state_key(self) -> str:
        """Where the state records this validator's equivocation at this height (SPEC §4):
        one record per validator and height, whatever the round or type."""
        return evidence_state_key(self.public_key, self.height)

    def to_json(self) -> dict[str, JSON]:
        return {"type": self.evidence_type, "a": self.a.to_json(), "b": self.b.to_json()}


def evidence_state_key(public_key: str, height: int) -> str:
    return f"evidence/{public_key}/{height}"


def _slot(message: Vote | SignedProposal) -> tuple[str, int, int, str]:
    kind = message.vote_type if isinstance(message, Vote) else "proposal"
    return (message.chain_id, message.height, message.round, kind)


def make_evidence(first: Vote | SignedProposal, second: Vote | SignedProposal) -> Evidence:
    """The evidence two conflicting messages make, in its one canonical order."""
    assert type(first) is type(second)
    assert _slot(first) == _slot(second) and first.public_key == second.public_key
    assert first.signed_bytes() != second.signed_bytes(), "the same message twice is no evidence"
    a, b = sorted((first, second), key=lambda message: message.signed_bytes())
    kind = "duplicate_vote" if isinstance(a, Vote) else "duplicate_proposal"
    return Evidence(evidence_type=kind, a=a, b=b)


EVIDENCE_SCHEMA: Final = s.obj(
    {
        "type": s.enum(*EVIDENCE_TYPES),
        "a": lambda path, value: value,
        "b": lambda path, value: value,
    }
)


def parse_evidence(value: Any, path: str = "evidence") -> Evidence:
    fields = EVIDENCE_SCHEMA(path, value)
    parse = parse_vote if fields["type"] == "duplicate_vote" else parse_signed_proposal
    return Evidence(
        evidence_type=fields["type"],
        a=parse(fields["a"], f"{path}.a"),
        b=parse(fields["b"], f"{path}.b"),
    )


def verify_evidence(evidence: Evidence, *, chain_id: str, validators: Sequence[Validator]) -> None:
    """`evidence` proves that a validator of `validators` (the set governing the evidence's
    height) equivocated on `chain_id`. Raises `InvalidProofError` whose `code` names the failed
    check (EVIDENCE_CHECK_CODES), cheapest first: the signatures are checked last."""

    def fail(code: str, message: str) -> InvalidProofError:
        assert code in EVIDENCE_CHECK_CODES, code
        return InvalidProofError(message, code=code)

    a, b = evidence.a, evidence.b
    if a.chain_id != chain_id or b.chain_id != chain_id:
        raise fail("evidence_wrong_chain", f"evidence is not for chain {chain_id!r}")
    if _slot(a) != _slot(b):
        raise fail(
            "evidence_slot_mismatch",
            f"evidence messages are for different slots: {_slot(a)[1:]} and {_slot(b)[1:]}",
        )
    if a.public_key != b.public_key:
        raise fail(
            "evidence_signer_mismatch", "evidence messages are signed by two different validators"
        )
    if a.public_key not in {v.public_key for v in validators}:
        raise fail(
            "evidence_not_validator", f"{a.public_key} is not a validator at height {a.height}"
        )
    a_bytes, b_bytes = a.signed_bytes(), b.signed_bytes()
    if a_bytes == b_bytes:
        raise fail(
            "evidence_no_conflict", "evidence messages sign the same content: no equivocation"
        )
    if a_bytes > b_bytes:
        raise fail("evidence_order", "evidence messages are not in canonical order (a before b)")
    for name, message in (("a", a), ("b", b)):
        try:
            verify_signed(message)
        except SignatureError as error:
            raise fail("evidence_signature", f"evidence {name}: {error.message}") from error


def evidence_from_certificates(first: Certificate, second: Certificate) -> list[Evidence]:
    """Duplicate precommits in two certificates that commit different blocks at one height
    and round: each validator that signed both gets one piece of evidence (sorted by key).

    Certificates of different rounds yield none: precommits of two rounds are not
    equivocation by themselves (that fork needs prevotes to attribute; docs/decisions/0006).
    """
    if (first.chain_id, first.height, first.round) != (
        second.chain_id,
        second.height,
        second.round,
    ) or (first.block_hash == second.block_hash):
        return []
    signatures_b = dict(second.signatures)
    found = []
    for key, signature in first.signatures:
        if key not in signatures_b:
            continue
        votes = [
            Vote(
                chain_id=certificate.chain_id,
                vote_type="precommit",
                height=certificate.height,
                round=certificate.round,
                block_hash=certificate.block_hash,
                public_key=key,
                signature=sig,
            )
            for certificate, sig in ((first, signature), (second, signatures_b[key]))
        ]
        found.append(make_evidence(votes[0], votes[1]))
    return found
