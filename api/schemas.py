"""The API's contracts at the edge: pydantic models of every request body and every answer.

Requests: `Envelope` is one signed transaction (SPEC §3.1) whose `tx` is one of the twelve
types of §3.2, told apart by `type`, with every field limit of §2.1 and §3.2 (`ledger.limits`).
`validate_envelope` checks decoded JSON against it and raises a `LedgerError` with the code the
ledger's own parser gives for the same fault (`invalid_field`, `limit_exceeded`). The model is
the edge's contract; `ledger.transactions.parse_envelope` stays the authority (the auditor
replays with it, without this module) and still checks what a schema cannot state: signatures
sorted by key, the canonical size against `transaction_bytes_max`, calendar dates.
tests/api/test_schemas.py holds the two to one verdict on generated envelopes.

Answers: one model per JSON answer of §7.1, `extra="forbid"`, so an answer that drifts from
its documented shape fails the tests (and schemathesis) rather than reaching a client. Values
from the state follow docs/state.md. Routes serve them with `response_model_exclude_unset`: a
field the node left out stays out (an envelope is served exactly as signed, no optional field
turned into null).
"""

from __future__ import annotations

import datetime
from typing import Annotated, Any, Final, Generic, Literal, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import ErrorDetails, PydanticCustomError

from api.problems import Problem
from api.settings import SUBMISSION_ENVELOPES_MAX
from ledger.crypto import is_public_key
from ledger.errors import LedgerError
from ledger.limits import (
    ACCOUNT_KEYS_MAX,
    ACCREDITATION_METHODOLOGIES_MAX,
    CHAIN_ID_CHARS_MAX,
    HASH_HEX_CHARS,
    ISSUE_PERIOD_DAYS_MAX,
    ISSUE_RECIPIENTS_MAX,
    JSON_INTEGER_MAX,
    LONG_TEXT_CHARS_MAX,
    PROJECT_ID_CHARS_MAX,
    SIGNATURE_HEX_CHARS,
    SLUG_CHARS_MAX,
    TEXT_CHARS_MAX,
    TRANSACTION_SIGNATURES_MAX,
    VALIDATOR_POWER_MAX,
    VALIDATORS_MAX,
)

# Shared example values: well-formed, not from any real chain.
EXAMPLE_ACCOUNT: Final = "9af211329b2fc82e5efe906062c730082819b23fe8394bc435e0b1bf0458eb54"
EXAMPLE_CERTIFIER: Final = "44977dcd3b8475dc80fe44788ad0abc4e6c431da417d642ef63902e27008170e"
EXAMPLE_TX_ID: Final = "1b5b9ccb3e8d006a5230de9bda23ff91edc794d4f56410560830b418528e446c"
EXAMPLE_PUBLIC_KEY: Final = "eb3102a6cb586765d01fad324523ec0bc67b9efd6a2d9589c135adfedf7922cc"
EXAMPLE_SIGNATURE: Final = 2 * "a543997d84f12798350c09bdef2cdb171bf41ed3e4a5f808af2feb0c56263009"
EXAMPLE_HASH: Final = "52b82a66ccb3dcfcbe6f3f047c18dec382dac6557a81cc1b947406cfc5732191"

# Text is any Unicode but control characters (Unicode Cc); the decoder already refuses lone
# surrogates (SPEC §2.1).
NO_CONTROL: Final = r"^[^\x00-\x1f\x7f-\x9f]*$"
HEX64_PATTERN: Final = rf"^[0-9a-f]{{{HASH_HEX_CHARS}}}$"


def _calendar_date(value: str) -> str:
    datetime.date.fromisoformat(value)  # a ValueError is reported as the field's fault
    return value


def _strict_point(value: str) -> str:
    if not is_public_key(bytes.fromhex(value)):
        raise ValueError("not a canonical Ed25519 curve point of large order")
    return value


def _limit(message: str) -> PydanticCustomError:
    """A fault the ledger reports as `limit_exceeded` (a relation over its bound)."""
    return PydanticCustomError("limit_exceeded", message)


def _distinct(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise ValueError("items must not repeat")
    return values


Hex64 = Annotated[
    str,
    StringConstraints(
        min_length=HASH_HEX_CHARS, max_length=HASH_HEX_CHARS, pattern=HEX64_PATTERN, strict=True
    ),
]
Hex128 = Annotated[
    str,
    StringConstraints(
        min_length=SIGNATURE_HEX_CHARS,
        max_length=SIGNATURE_HEX_CHARS,
        pattern=rf"^[0-9a-f]{{{SIGNATURE_HEX_CHARS}}}$",
        strict=True,
    ),
]
PublicKey = Annotated[Hex64, AfterValidator(_strict_point)]
Slug = Annotated[
    str,
    StringConstraints(
        min_length=2, max_length=SLUG_CHARS_MAX, pattern=r"^[a-z0-9][a-z0-9-]{1,62}$", strict=True
    ),
]
BatchId = Annotated[
    str,
    StringConstraints(min_length=3, max_length=18, pattern=r"^B-[1-9][0-9]{0,15}$", strict=True),
]
ChainId = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=CHAIN_ID_CHARS_MAX,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        strict=True,
    ),
]
Date = Annotated[
    str,
    StringConstraints(
        min_length=10, max_length=10, pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", strict=True
    ),
    AfterValidator(_calendar_date),
]
Jurisdiction = Annotated[
    str,
    StringConstraints(min_length=4, max_length=6, pattern=r"^[A-Z]{2}-[A-Z0-9]{1,3}$", strict=True),
]
Name = Annotated[
    str, StringConstraints(min_length=1, max_length=TEXT_CHARS_MAX, pattern=NO_CONTROL, strict=True)
]
LongText = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=LONG_TEXT_CHARS_MAX, pattern=NO_CONTROL, strict=True
    ),
]
ProjectId = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=PROJECT_ID_CHARS_MAX, pattern=NO_CONTROL, strict=True
    ),
]
Quantity = Annotated[int, Field(ge=1, le=JSON_INTEGER_MAX, strict=True)]
Count = Annotated[int, Field(ge=0, le=JSON_INTEGER_MAX, strict=True)]
TimeMs = Count
Height = Count
PositiveHeight = Quantity
Nonce = Quantity
Purpose = Literal["voluntary", "incentive", "compliance"]
LotStatus = Literal["circulating", "retired", "invalidated"]
# An optional request field: absent or a value, never null (SPEC §2.1); the model refuses
# null (Strict._no_nulls), and the docs show the field without null.
Memo = LongText | SkipJsonSchema[None]


class Strict(BaseModel):
    """Exactly these fields, of exactly these JSON types (no coercion), never null."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for name, field in value.items():
                if field is None:
                    raise PydanticCustomError(
                        "null_field", f"{name}: null is not allowed; leave the field out instead"
                    )
        return value


# -- Requests: the twelve payloads (SPEC §3.2) ---------------------------------------------


class RegisterMethodology(Strict):
    methodology_id: Slug
    name: Name
    document_sha256: Hex64


class AccreditCertifier(Strict):
    certifier: Hex64
    name: Name
    methodologies: Annotated[
        list[Slug],
        Field(
            min_length=1,
            max_length=ACCREDITATION_METHODOLOGIES_MAX,
            json_schema_extra={"uniqueItems": True},
        ),
        AfterValidator(_distinct),
    ]
    valid_from: TimeMs
    valid_until: TimeMs

    @model_validator(mode="after")
    def _period(self) -> Self:
        if self.valid_from >= self.valid_until:
            raise ValueError("valid_from must be before valid_until")
        return self


class RevokeCertifier(Strict):
    certifier: Hex64
    reason: LongText


class CreateProgram(Strict):
    program_id: Slug
    name: Name
    valid_until: TimeMs


class AccountAction(Strict):
    """suspend_account and reinstate_account."""

    account: Hex64
    reason: LongText


class ValidatorEntry(Strict):
    public_key: PublicKey
    power: Annotated[int, Field(ge=1, le=VALIDATOR_POWER_MAX, strict=True)]
    name: Name


class SetValidators(Strict):
    validators: Annotated[list[ValidatorEntry], Field(min_length=1, max_length=VALIDATORS_MAX)]

    @model_validator(mode="after")
    def _distinct_keys(self) -> Self:
        _distinct([entry.public_key for entry in self.validators])
        return self


class Recipient(Strict):
    account: Hex64
    quantity: Quantity


class Issue(Strict):
    methodology_id: Slug
    project_id: ProjectId
    period_start: Date
    period_end: Date
    evidence_sha256: Hex64
    recipients: Annotated[list[Recipient], Field(min_length=1, max_length=ISSUE_RECIPIENTS_MAX)]
    memo: Memo = None

    @model_validator(mode="after")
    def _period_and_sum(self) -> Self:
        start = datetime.date.fromisoformat(self.period_start)
        end = datetime.date.fromisoformat(self.period_end)
        if not start < end:
            raise ValueError("period_start must be before period_end (end is exclusive)")
        if (end - start).days > ISSUE_PERIOD_DAYS_MAX:
            raise _limit(f"period of {(end - start).days} days, at most {ISSUE_PERIOD_DAYS_MAX}")
        total = sum(recipient.quantity for recipient in self.recipients)
        if total > JSON_INTEGER_MAX:
            raise _limit(f"recipients sum to {total}, over 2**53 - 1")
        return self


class Transfer(Strict):
    to: Hex64
    batch_id: BatchId
    quantity: Quantity
    memo: Memo = None


class Retire(Strict):
    batch_id: BatchId
    quantity: Quantity
    beneficiary: Name
    purpose: Purpose
    program_id: Slug | SkipJsonSchema[None] = Field(
        default=None, description="The programme redeemed into: required for `incentive`."
    )
    jurisdiction: Jurisdiction | SkipJsonSchema[None] = Field(
        default=None, description="ISO 3166-2, for example CN-SD."
    )
    memo: Memo = None

    @model_validator(mode="after")
    def _program_for_incentive(self) -> Self:
        if (self.purpose == "incentive") != (self.program_id is not None):
            raise ValueError("program_id is required if and only if purpose is incentive")
        return self


class Invalidate(Strict):
    batch_id: BatchId
    holder: Hex64
    quantity: Quantity
    reason: LongText


class SetKeys(Strict):
    keys: Annotated[
        list[PublicKey],
        Field(min_length=1, max_length=ACCOUNT_KEYS_MAX, json_schema_extra={"uniqueItems": True}),
        AfterValidator(_distinct),
    ]
    threshold: Annotated[int, Field(ge=1, le=ACCOUNT_KEYS_MAX, strict=True)]

    @model_validator(mode="after")
    def _reachable(self) -> Self:
        if self.threshold > len(self.keys):
            raise ValueError(f"threshold {self.threshold} exceeds the number of keys")
        return self


# -- Requests: the transaction and its envelope (SPEC §3.1) ---------------------------------


class _Tx(Strict):
    chain_id: ChainId
    signer: Hex64 = Field(description="The signing account's id.")
    nonce: Nonce


class RegisterMethodologyTx(_Tx):
    type: Literal["register_methodology"]
    payload: RegisterMethodology


class AccreditCertifierTx(_Tx):
    type: Literal["accredit_certifier"]
    payload: AccreditCertifier


class RevokeCertifierTx(_Tx):
    type: Literal["revoke_certifier"]
    payload: RevokeCertifier


class CreateProgramTx(_Tx):
    type: Literal["create_program"]
    payload: CreateProgram


class SuspendAccountTx(_Tx):
    type: Literal["suspend_account"]
    payload: AccountAction


class ReinstateAccountTx(_Tx):
    type: Literal["reinstate_account"]
    payload: AccountAction


class SetValidatorsTx(_Tx):
    type: Literal["set_validators"]
    payload: SetValidators


class IssueTx(_Tx):
    type: Literal["issue"]
    payload: Issue


class TransferTx(_Tx):
    type: Literal["transfer"]
    payload: Transfer


class RetireTx(_Tx):
    type: Literal["retire"]
    payload: Retire


class InvalidateTx(_Tx):
    type: Literal["invalidate"]
    payload: Invalidate


class SetKeysTx(_Tx):
    type: Literal["set_keys"]
    payload: SetKeys


Tx = Annotated[
    RegisterMethodologyTx
    | AccreditCertifierTx
    | RevokeCertifierTx
    | CreateProgramTx
    | SuspendAccountTx
    | ReinstateAccountTx
    | SetValidatorsTx
    | IssueTx
    | TransferTx
    | RetireTx
    | InvalidateTx
    | SetKeysTx,
    Field(discriminator="type"),
]


class Signature(Strict):
    public_key: Hex64
    signature: Hex128


class Envelope(Strict):
    """A signed transaction (SPEC §3.1)."""

    tx: Tx
    signatures: Annotated[
        list[Signature],
        Field(max_length=TRANSACTION_SIGNATURES_MAX, description="Sorted by public_key."),
    ]

    @model_validator(mode="after")
    def _sorted_signatures(self) -> Self:
        keys = [signature.public_key for signature in self.signatures]
        if keys != sorted(set(keys)):
            raise ValueError("signatures must be sorted by public_key, with no key twice")
        return self


_ENVELOPE: Final = TypeAdapter(Envelope)
# A pydantic error type -> the ledger's code for the same fault: over a maximum is
# `limit_exceeded` (SPEC §3.2), every other fault of shape is `invalid_field`.
_LIMIT_ERRORS: Final = frozenset(
    {"string_too_long", "too_long", "less_than_equal", "limit_exceeded"}
)


def validate_envelope(value: Any) -> None:
    """Check decoded JSON against `Envelope`; raise the ledger's error for its first fault."""
    if not isinstance(value, dict):  # pydantic's words ("a valid dictionary or instance of
        # Envelope") named its own types, not the request's (found by review)
        raise LedgerError(
            f"body: an envelope is a JSON object (SPEC §3.1), not {_json_kind(value)}",
            code="invalid_field",
        )
    try:
        _ENVELOPE.validate_python(value)
    except ValidationError as error:
        first = error.errors(include_url=False, include_context=False, include_input=False)[0]
        code = "limit_exceeded" if first["type"] in _LIMIT_ERRORS else "invalid_field"
        message = first["msg"].removeprefix("Value error, ")
        raise LedgerError(f"{_path(first)}: {message}", code=code) from None


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array"


# The names pydantic gives the branches of an optional field's union (`Memo`) in a location.
_UNION_BRANCHES: Final = frozenset({"constrained-str", "none"})


def _path(error: ErrorDetails) -> str:
    """`tx.payload.recipients[3].quantity`: the location, without the union's tag."""
    loc = [part for part in error["loc"] if part not in _UNION_BRANCHES]
    if len(loc) > 1 and loc[0] == "tx" and isinstance(loc[1], str) and loc[1] != "payload":
        del loc[1]  # the discriminator's value, which pydantic inserts after `tx`
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path or "body"


def _envelope_example(kind: str, payload: dict[str, Any], nonce: int = 7) -> dict[str, Any]:
    return {
        "tx": {
            "chain_id": "zibo-demo",
            "type": kind,
            "signer": EXAMPLE_ACCOUNT,
            "nonce": nonce,
            "payload": payload,
        },
        "signatures": [{"public_key": EXAMPLE_PUBLIC_KEY, "signature": EXAMPLE_SIGNATURE}],
    }


REASON_EXAMPLE: Final = "Meter data under review by the city"
# One example per transaction type, for the docs (SPEC §3.2); signatures are placeholders.
ENVELOPE_EXAMPLES: Final[dict[str, dict[str, Any]]] = {
    "register_methodology": _envelope_example(
        "register_methodology",
        {
            "methodology_id": "rooftop-solar",
            "name": "Rooftop photovoltaic generation",
            "document_sha256": EXAMPLE_HASH,
        },
    ),
    "accredit_certifier": _envelope_example(
        "accredit_certifier",
        {
            "certifier": EXAMPLE_CERTIFIER,
            "name": "National Quality Certification Centre, Shandong",
            "methodologies": ["household-electricity", "rooftop-solar"],
            "valid_from": 1767225600000,
            "valid_until": 1798761600000,
        },
    ),
    "revoke_certifier": _envelope_example(
        "revoke_certifier", {"certifier": EXAMPLE_CERTIFIER, "reason": REASON_EXAMPLE}
    ),
    "create_program": _envelope_example(
        "create_program",
        {
            "program_id": "zibo-green-home",
            "name": "Zibo green home incentive",
            "valid_until": 1798761600000,
        },
    ),
    "suspend_account": _envelope_example(
        "suspend_account", {"account": EXAMPLE_ACCOUNT, "reason": REASON_EXAMPLE}
    ),
    "reinstate_account": _envelope_example(
        "reinstate_account", {"account": EXAMPLE_ACCOUNT, "reason": "Review closed"}
    ),
    "set_validators": _envelope_example(
        "set_validators",
        {"validators": [{"public_key": EXAMPLE_PUBLIC_KEY, "power": 1, "name": "Zibo city"}]},
    ),
    "issue": _envelope_example(
        "issue",
        {
            "methodology_id": "household-electricity",
            "project_id": "zhangdian/compound-17",
            "period_start": "2026-01-01",
            "period_end": "2026-04-01",
            "evidence_sha256": EXAMPLE_HASH,
            "recipients": [{"account": EXAMPLE_ACCOUNT, "quantity": 1250}],
            "memo": "Q1 2026 metered savings",
        },
    ),
    "transfer": _envelope_example(
        "transfer", {"to": EXAMPLE_CERTIFIER, "batch_id": "B-3", "quantity": 100}
    ),
    "retire": _envelope_example(
        "retire",
        {
            "batch_id": "B-3",
            "quantity": 40,
            "beneficiary": "Household 560fbf3d, Zhangdian",
            "purpose": "incentive",
            "program_id": "zibo-green-home",
            "jurisdiction": "CN-SD",
        },
    ),
    "invalidate": _envelope_example(
        "invalidate",
        {"batch_id": "B-3", "holder": EXAMPLE_ACCOUNT, "quantity": 10, "reason": REASON_EXAMPLE},
    ),
    "set_keys": _envelope_example(
        "set_keys", {"keys": [EXAMPLE_PUBLIC_KEY], "threshold": 1}, nonce=1
    ),
}


# -- Answers (SPEC §7.1) ---------------------------------------------------------------------


class Answer(BaseModel):
    """A JSON answer: exactly the documented fields."""

    model_config = ConfigDict(extra="forbid")


class ConsensusAccepted(Answer):
    accepted: Annotated[int, Field(ge=1, description="Messages handed to the consensus engine.")]


class Fork(Answer):
    """Two blocks of one height, each certified, that block sync met: proof that more than a
    third of the validators signed two chains. The whole proof (both blocks and certificates,
    and any duplicate precommits) is in the node's data directory, fork-proof-HEIGHT.json."""

    height: PositiveHeight
    ours: Hex64 = Field(description="The hash of this node's block at that height.")
    theirs: Hex64 = Field(description="The hash of the other certified block.")
    source: str = Field(description="The node that served the other block.")
    signers_of_both: list[Hex64] = Field(
        description="The validators whose signatures are in both certificates."
    )


class Stalled(Answer):
    reason: str = Field(description="Why, in words: what is pending and for how long.")
    code: str = Field(description="`stalled`, or the code the block loop stopped with.")


class Healthz(Answer):
    status: Literal["ok"] = Field(description="The node answers (liveness).")
    height: Height
    stalled: Stalled | None = Field(
        default=None,
        description="Present while the node cannot commit: transactions pending and no block "
        "for 60 s (a consortium without 2/3 of its power, a store that does not write), or "
        "its block loop stopped for good. Liveness stays ok: the node still serves reads.",
    )
    out_of_touch: Stalled | None = Field(
        default=None,
        description="A follower only: present while no node it follows has served it for 60 s "
        "(since its start if none ever did; code `out_of_touch`). It still serves its own "
        "verified copy, which may be behind.",
    )
    fork: Fork | None = Field(
        default=None,
        description="Present once block sync met another certified block at a height this "
        "node holds (the first such fork). The node keeps serving its own verified chain.",
    )


class Committed(Answer):
    tx_id: Hex64
    status: Literal["committed"]
    height: PositiveHeight
    log_index: Count


class Pending(Answer):
    tx_id: Hex64
    status: Literal["pending"]


class Rejected(Answer):
    tx_id: Hex64 | None = Field(default=None, description="Absent if the item was unparsable.")
    status: Literal["rejected"]
    problem: Problem


class Results(Answer):
    """The answer to an array: one result per envelope, in order."""

    results: Annotated[
        list[Annotated[Committed | Pending | Rejected, Field(discriminator="status")]],
        Field(max_length=SUBMISSION_ENVELOPES_MAX),
    ]


class Header(Answer):
    chain_id: ChainId
    height: PositiveHeight
    time: TimeMs
    parent_hash: Hex64
    last_commit_hash: Hex64
    log_size: Count
    log_root: Hex64
    state_root: Hex64
    evidence_hash: Hex64
    validators_hash: Hex64
    next_validators_hash: Hex64
    proposer: Hex64


class Certificate(Answer):
    chain_id: ChainId
    height: PositiveHeight
    round: Count
    block_hash: Hex64
    signatures: list[Signature]


class Checkpoint(Answer):
    header: Header
    certificate: Certificate


class Block(Answer):
    header: Header
    transactions: list[Envelope]
    last_commit: Certificate | None
    evidence: list[dict[str, JsonValue]]


class CertifiedBlock(Answer):
    block: Block
    certificate: Certificate


class CommittedTransaction(Committed):
    transaction: Envelope


class RejectedTransaction(Rejected):
    tx_id: Hex64


TransactionStatus = Annotated[
    CommittedTransaction | Pending | RejectedTransaction, Field(discriminator="status")
]


Item = TypeVar("Item")


class Range(Answer):
    first: Count
    last: Count
    status: LotStatus


class Holding(Answer):
    batch_id: BatchId
    circulating: Count
    retired: Count
    invalidated: Count
    ranges: list[Range]


class Account(Answer):
    account_id: Hex64
    keys: list[Hex64] = Field(description="Empty while the account has only received credits.")
    threshold: Count
    nonce: Count
    status: Literal["active", "suspended"]
    roles: list[Literal["holder", "authority", "certifier"]]
    holdings: list[Holding] = Field(
        description="By batch in issuance order (B-2 before B-10), at most 1,000 serial ranges"
        " in all: when an account has more, the circulating ones are chosen first, then retired"
        " and invalidated ones. Each batch's totals count the ranges shown."
    )
    holdings_truncated: bool = Field(
        description="The account has more ranges than shown (retired lots never merge): the"
        " totals then count only the ranges shown (the circulating ones all, unless they"
        " alone are more than 1,000)."
    )
    height: Height


class HistoryItem(Answer):
    log_index: Count
    tx_id: Hex64
    height: PositiveHeight
    type: str


class Batch(Answer):
    """docs/state.md, batch/<batch_id>."""

    batch_id: BatchId
    methodology_id: Slug
    project_id: ProjectId
    period_start: Date
    period_end: Date
    evidence_sha256: Hex64
    certifier: Hex64
    first_serial: Count
    issued: Count
    circulating: Count
    retired: Count
    invalidated: Count
    memo: LongText | None
    tx_id: Hex64
    height: Height
    time: TimeMs


class Retirement(Answer):
    """docs/state.md, retirement/<retirement_id>."""

    retirement_id: Hex64
    holder: Hex64
    batch_id: BatchId
    serials: list[Annotated[list[Count], Field(min_length=2, max_length=2)]] = Field(
        description="Inclusive [first, last] ranges."
    )
    quantity: Quantity
    beneficiary: Name
    purpose: Purpose
    program_id: Slug | None
    jurisdiction: Jurisdiction | None
    memo: LongText | None
    height: Height
    time: TimeMs


class Page(Answer, Generic[Item]):
    items: list[Item]
    next_cursor: str | None = Field(description="Pass back as `cursor` for the next page.")


class StateLeaf(Answer):
    key_hash: Hex64
    value_hash: Hex64


class StateProof(Answer):
    """SPEC §4: siblings from the root down; `leaf` when another leaf sits on the key's path."""

    key: str
    value: JsonValue
    siblings: list[Hex64]
    leaf: StateLeaf | None = None


class InclusionProof(Answer):
    log_index: Count
    log_size: Count
    path: list[Hex64]
    checkpoint: Checkpoint


class ConsistencyProof(Answer):
    first_size: Count
    second_size: Count
    path: list[Hex64]
    first: Checkpoint
    second: Checkpoint


class StateProofAnswer(Answer):
    proof: StateProof
    checkpoint: Checkpoint


class Validator(Answer):
    public_key: Hex64
    power: Annotated[int, Field(ge=1, le=VALIDATOR_POWER_MAX)]
    name: Name


class Receipt(Answer):
    """SPEC §6.3: checkable offline with `ledger.verification.verify_receipt`."""

    retirement: Retirement
    transaction: Envelope
    log_index: Count
    inclusion: list[Hex64]
    state_proofs: list[StateProof]
    checkpoint: Checkpoint
    validators: list[Validator]
    genesis_hash: Hex64


class Authority(Answer):
    name: Name
    keys: list[Hex64]
    threshold: Annotated[int, Field(ge=1, le=ACCOUNT_KEYS_MAX)]


class Methodology(Answer):
    methodology_id: Slug
    name: Name
    document_sha256: Hex64


class Params(Answer):
    block_interval_ms: Annotated[int, Field(ge=1)]
    block_transactions_max: Annotated[int, Field(ge=1)]
    transaction_bytes_max: Annotated[int, Field(ge=1)]


class Genesis(Answer):
    """SPEC §5.1."""

    chain_id: ChainId
    genesis_time: TimeMs
    authority: Authority
    validators: list[Validator]
    methodologies: list[Methodology]
    params: Params


class Supply(Answer):
    issued: Count
    circulating: Count
    retired: Count
    invalidated: Count


class Stats(Answer):
    height: Height
    transactions: Count
    units: Literal["kg CO2e"]
    totals: Supply
    by_methodology: dict[str, Supply]
    by_issuance_month: dict[str, Supply] = Field(description="Keyed by YYYY-MM (UTC).")
    evidence: dict[Hex64, Count] = Field(
        description="Equivocations the state records (`evidence/<validator>/<height>`, SPEC "
        "§5.4), counted by validator public key: one per validator and height."
    )
