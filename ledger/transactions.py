"""Transactions: the envelope, the twelve types and their stateless rules (SPEC §3.1, §3.2).

`parse_envelope` turns decoded JSON into an `Envelope`, refusing anything that is not exactly
the SPEC's shape (unknown, missing or mistyped fields, limits, unsorted or repeated signatures).
`verify_envelope_signatures` checks every listed signature against its own key; whether those
keys belong to the signer and reach its threshold is a state rule (`state_transition`).
The id and the signed bytes come from the canonical encoding of `tx` alone (§2.2, §2.3).
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ledger import merkle
from ledger import schema as s
from ledger.crypto import TX_DOMAIN, SignatureError, verify_signature
from ledger.encoding import JSON, canonical_object, canonical_unchecked, decode
from ledger.errors import FieldError, LedgerError
from ledger.limits import (
    ACCOUNT_KEYS_MAX,
    ACCREDITATION_METHODOLOGIES_MAX,
    ISSUE_PERIOD_DAYS_MAX,
    ISSUE_RECIPIENTS_MAX,
    JSON_INTEGER_MAX,
    LONG_TEXT_CHARS_MAX,
    PROJECT_ID_CHARS_MAX,
    TEXT_CHARS_MAX,
    TRANSACTION_SIGNATURES_MAX,
    VALIDATOR_POWER_MAX,
    VALIDATORS_MAX,
)

NAME = s.text(TEXT_CHARS_MAX)
REASON = s.text(LONG_TEXT_CHARS_MAX)
MEMO = s.optional(s.text(LONG_TEXT_CHARS_MAX))
QUANTITY = s.integer(1)
TIME_MS = s.integer(0)

VALIDATOR_ENTRY: Final = s.obj(
    {
        "public_key": s.public_key,
        "power": s.integer(1, VALIDATOR_POWER_MAX),
        "name": NAME,
    }
)

PAYLOADS: Final[dict[str, s.Validator]] = {
    "register_methodology": s.obj(
        {"methodology_id": s.SLUG_ID, "name": NAME, "document_sha256": s.HASH_HEX}
    ),
    "accredit_certifier": s.obj(
        {
            "certifier": s.ACCOUNT_ID,
            "name": NAME,
            "methodologies": s.array(
                s.SLUG_ID, low=1, high=ACCREDITATION_METHODOLOGIES_MAX, unique=True
            ),
            "valid_from": TIME_MS,
            "valid_until": TIME_MS,
        }
    ),
    "revoke_certifier": s.obj({"certifier": s.ACCOUNT_ID, "reason": REASON}),
    "create_program": s.obj({"program_id": s.SLUG_ID, "name": NAME, "valid_until": TIME_MS}),
    "suspend_account": s.obj({"account": s.ACCOUNT_ID, "reason": REASON}),
    "reinstate_account": s.obj({"account": s.ACCOUNT_ID, "reason": REASON}),
    "set_validators": s.obj({"validators": s.array(VALIDATOR_ENTRY, low=1, high=VALIDATORS_MAX)}),
    "issue": s.obj(
        {
            "methodology_id": s.SLUG_ID,
            "project_id": s.text(PROJECT_ID_CHARS_MAX),
            "period_start": s.date,
            "period_end": s.date,
            "evidence_sha256": s.HASH_HEX,
            "recipients": s.array(
                s.obj({"account": s.ACCOUNT_ID, "quantity": QUANTITY}),
                low=1,
                high=ISSUE_RECIPIENTS_MAX,
            ),
            "memo": MEMO,
        }
    ),
    "transfer": s.obj(
        {"to": s.ACCOUNT_ID, "batch_id": s.BATCH, "quantity": QUANTITY, "memo": MEMO}
    ),
    "retire": s.obj(
        {
            "batch_id": s.BATCH,
            "quantity": QUANTITY,
            "beneficiary": NAME,
            "purpose": s.enum("voluntary", "incentive", "compliance"),
            "program_id": s.optional(s.SLUG_ID),
            "jurisdiction": s.optional(s.text(6, low=4, pattern=s.JURISDICTION)),
            "memo": MEMO,
        }
    ),
    "invalidate": s.obj(
        {
            "batch_id": s.BATCH,
            "holder": s.ACCOUNT_ID,
            "quantity": QUANTITY,
            "reason": REASON,
        }
    ),
    "set_keys": s.obj(
        {
            "keys": s.array(s.public_key, low=1, high=ACCOUNT_KEYS_MAX, unique=True),
            "threshold": s.integer(1, ACCOUNT_KEYS_MAX),
        }
    ),
}

TRANSACTION_TYPES: Final = tuple(PAYLOADS)
AUTHORITY_TYPES: Final = frozenset(
    {
        "register_methodology",
        "accredit_certifier",
        "revoke_certifier",
        "create_program",
        "suspend_account",
        "reinstate_account",
        "set_validators",
    }
)

_TX: Final = s.obj(
    {
        "chain_id": s.text(64, pattern=s.CHAIN_ID),
        "type": s.enum(*TRANSACTION_TYPES),
        "signer": s.ACCOUNT_ID,
        "nonce": s.integer(1),
        "payload": lambda path, value: value,  # checked per type below
    }
)
_SIGNATURE: Final = s.obj({"public_key": s.HASH_HEX, "signature": s.signature_hex})
_ENVELOPE: Final = s.obj(
    {
        "tx": lambda path, value: value,
        "signatures": s.array(_SIGNATURE, low=0, high=TRANSACTION_SIGNATURES_MAX),
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Signature:
    public_key: str
    signature: str

    def to_json(self) -> dict[str, str]:
        return {"public_key": self.public_key, "signature": self.signature}


@dataclass(frozen=True, slots=True, kw_only=True)
class Transaction:
    chain_id: str
    type: str
    signer: str
    nonce: int
    payload: dict[str, Any]

    def to_json(self) -> dict[str, JSON]:
        return {
            "chain_id": self.chain_id,
            "type": self.type,
            "signer": self.signer,
            "nonce": self.nonce,
            "payload": self.payload,
        }

    def signing_bytes(self) -> bytes:
        """What every signature covers: `"tanlian/tx/v1\\n" + canonical(tx)` (SPEC §3.1)."""
        return TX_DOMAIN + canonical_unchecked(self.to_json())


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """A transaction with its signatures; `tx_id` and `leaf` are derived once, on creation.

    `leaf` is `canonical(envelope)`. Its keys sort `"signatures"` before `"tx"`, so it ends
    with `canonical(tx)` and a closing brace: the transaction is encoded once, and the bytes
    its signatures cover are read back from the leaf (`signing_bytes`).
    """

    tx: Transaction
    signatures: tuple[Signature, ...]
    tx_id: str = field(init=False, compare=False)
    leaf: bytes = field(init=False, compare=False, repr=False)
    # Its RFC 9162 leaf hash: the log, the pool, block references and the store all name
    # the envelope by it, several times on a validator's path.
    leaf_hash: bytes = field(init=False, compare=False, repr=False)
    _tx_start: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        tx_bytes = canonical_unchecked(self.tx.to_json())
        signatures = canonical_unchecked([signature.to_json() for signature in self.signatures])
        leaf = canonical_object({"signatures": signatures, "tx": tx_bytes})
        object.__setattr__(self, "tx_id", hashlib.sha256(TX_DOMAIN + tx_bytes).hexdigest())
        object.__setattr__(self, "leaf", leaf)
        object.__setattr__(self, "leaf_hash", merkle.leaf_hash(leaf))
        object.__setattr__(self, "_tx_start", len(leaf) - len(tx_bytes) - 1)

    def signing_bytes(self) -> bytes:
        """What every signature covers, `"tanlian/tx/v1\\n" + canonical(tx)` (SPEC §3.1)."""
        return TX_DOMAIN + self.leaf[self._tx_start : -1]

    def to_json(self) -> dict[str, JSON]:
        return {
            "tx": self.tx.to_json(),
            "signatures": [signature.to_json() for signature in self.signatures],
        }


def restore_envelope(
    tx: Transaction, signatures: tuple[Signature, ...], *, tx_id: str, leaf: bytes
) -> Envelope:
    """An envelope whose id and leaf another of this node's processes derived already (a
    worker that parsed it): nothing is encoded again. The id is checked against the leaf, a
    hash of bytes at hand, so a mix-up between the two processes cannot pass unnoticed."""
    envelope = Envelope.__new__(Envelope)  # not object.__new__: mypyc compiles the class
    object.__setattr__(envelope, "tx", tx)
    object.__setattr__(envelope, "signatures", signatures)
    object.__setattr__(envelope, "tx_id", tx_id)
    object.__setattr__(envelope, "leaf", leaf)
    object.__setattr__(envelope, "leaf_hash", merkle.leaf_hash(leaf))
    object.__setattr__(envelope, "_tx_start", leaf.index(b'"tx":') + len(b'"tx":'))
    assert hashlib.sha256(envelope.signing_bytes()).hexdigest() == tx_id, "id and leaf agree"
    return envelope


def parse_transaction(value: Any, path: str = "tx") -> Transaction:
    fields = _TX(path, value)
    payload = PAYLOADS[fields["type"]](f"{path}.payload", fields["payload"])
    _validate_payload(fields["type"], payload, f"{path}.payload")
    return Transaction(
        chain_id=fields["chain_id"],
        type=fields["type"],
        signer=fields["signer"],
        nonce=fields["nonce"],
        payload=payload,
    )


def parse_envelope(value: Any, *, transaction_bytes_max: int) -> Envelope:
    """An `Envelope` from decoded JSON, or `FieldError`/`LedgerError` naming the first fault."""
    fields = _ENVELOPE("", value)
    tx = parse_transaction(fields["tx"])
    signatures = tuple(
        Signature(public_key=item["public_key"], signature=item["signature"])
        for item in fields["signatures"]
    )
    keys = [signature.public_key for signature in signatures]
    if keys != sorted(set(keys)):
        raise FieldError("signatures", "must be sorted by public_key, with no key twice")
    envelope = Envelope(tx=tx, signatures=signatures)
    if len(envelope.leaf) > transaction_bytes_max:
        raise LedgerError(
            f"transaction is {len(envelope.leaf)} bytes, at most {transaction_bytes_max}",
            code="payload_too_large",
        )
    return envelope


def decode_envelope(
    data: bytes | bytearray | memoryview | str, *, transaction_bytes_max: int
) -> Envelope:
    if len(data) > 4 * transaction_bytes_max:
        raise LedgerError(
            f"transaction body is {len(data)} bytes, far over {transaction_bytes_max}",
            code="payload_too_large",
        )
    return parse_envelope(decode(data), transaction_bytes_max=transaction_bytes_max)


def _validate_payload(kind: str, payload: dict[str, Any], path: str) -> None:
    """The stateless rules that relate fields to one another."""
    if kind == "accredit_certifier" and payload["valid_from"] >= payload["valid_until"]:
        raise FieldError(path, "valid_from must be before valid_until")
    if kind == "set_keys" and payload["threshold"] > len(payload["keys"]):
        raise FieldError(path, f"threshold {payload['threshold']} exceeds the number of keys")
    if kind == "set_validators":
        keys = [entry["public_key"] for entry in payload["validators"]]
        if len(set(keys)) != len(keys):
            raise FieldError(path, "a validator key appears twice")
    elif kind == "issue":
        start = datetime.date.fromisoformat(payload["period_start"])
        end = datetime.date.fromisoformat(payload["period_end"])
        if not start < end:
            raise FieldError(path, "period_start must be before period_end (end is exclusive)")
        if (end - start).days > ISSUE_PERIOD_DAYS_MAX:
            raise FieldError(
                path,
                f"period of {(end - start).days} days, at most {ISSUE_PERIOD_DAYS_MAX}",
                code="limit_exceeded",
            )
        total = sum(recipient["quantity"] for recipient in payload["recipients"])
        if total > JSON_INTEGER_MAX:
            raise FieldError(
                path, f"recipients sum to {total}, over 2**53 - 1", code="limit_exceeded"
            )
    elif kind == "retire":
        has_program = "program_id" in payload
        if (payload["purpose"] == "incentive") != has_program:
            raise FieldError(path, "program_id is required if and only if purpose is incentive")


def verify_envelope_signatures(envelope: Envelope) -> None:
    """Every listed signature verifies under its own key (code bad_signature otherwise)."""
    _verify_signed(*signed_message(envelope))


SignedMessage = tuple[bytes, tuple[tuple[str, str], ...]]
"""A transaction's signed bytes and its (public key, signature) pairs, as hex."""


def signed_message(envelope: Envelope) -> SignedMessage:
    return envelope.signing_bytes(), tuple(
        (signature.public_key, signature.signature) for signature in envelope.signatures
    )


def _verify_signed(message: bytes, signatures: tuple[tuple[str, str], ...]) -> None:
    for public_key, signature in signatures:
        verify_signature(bytes.fromhex(public_key), message, bytes.fromhex(signature))


def check_signed_messages(items: Sequence[SignedMessage]) -> list[str | None]:
    """For each item, in order, None or why its first bad signature fails (the message of
    its bad_signature error). Plain data in and out, so that another process can run it."""
    results: list[str | None] = []
    for message, signatures in items:
        try:
            _verify_signed(message, signatures)
            results.append(None)
        except SignatureError as error:
            results.append(error.message)
    return results


def check_signatures(envelopes: Sequence[Envelope]) -> list[LedgerError | None]:
    """For each envelope, in order, None or the error of its first bad signature."""
    return [
        None if failure is None else SignatureError(failure)
        for failure in check_signed_messages([signed_message(e) for e in envelopes])
    ]


def sign_transaction(tx: Transaction, keys: list[Any]) -> Envelope:
    """An envelope with `tx` signed by each `crypto.PrivateKey` in `keys` (sorted by key)."""
    message = tx.signing_bytes()
    signatures = sorted(
        (
            Signature(public_key=key.public_key_hex, signature=key.sign(message).hex())
            for key in keys
        ),
        key=lambda item: item.public_key,
    )
    return Envelope(tx=tx, signatures=tuple(signatures))


def envelope_from_json_trusted(value: dict[str, Any]) -> Envelope:
    """An envelope read back from our own store, already validated when it was admitted."""
    tx = value["tx"]
    return Envelope(
        tx=Transaction(
            chain_id=tx["chain_id"],
            type=tx["type"],
            signer=tx["signer"],
            nonce=tx["nonce"],
            payload=tx["payload"],
        ),
        signatures=tuple(Signature(**item) for item in value["signatures"]),
    )
