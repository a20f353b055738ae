"""Retirement receipts (SPEC §6.3): one JSON file that proves a retirement offline.

`verify_receipt(receipt, *, validators_hash)` trusts nothing but `validators_hash` (from the
genesis file, or a validator set the verifier already trusts) and checks, in order:

1. The receipt has exactly the SPEC's fields, each well-formed and within its bounds; with a
   trusted `chain_id` (a genesis file's), the header is of that chain. The receipt's own
   `genesis_hash` is a claim nobody signs: only the chain id, which every certificate's
   precommits sign, ties a receipt to one chain, so two chains sharing a validator set (a
   test chain and the real one) cannot pass for each other.
2. The validators hash to `validators_hash`, and so does the header's `validators_hash`.
3. The certificate commits the header's block hash with more than 2/3 of their power.
4. The transaction is a `retire` on this chain whose id is the retirement's id, whose fields
   are the record's, and whose signatures verify.
5. The transaction is leaf `log_index` of the header's RFC 9162 log (`log_size`, `log_root`).
6. State proofs against the header's `state_root` show the retirement record, and every lot
   its serials name with status `retired` and this retirement's id: the same serials can
   never be claimed by another retirement.

Pure: no node, no database, no clock. Raises `InvalidProofError` naming the failed step.
"""

from __future__ import annotations

from typing import Any, Final

from ledger import schema as s
from ledger.blocks import (
    compute_validators_hash,
    parse_certificate,
    parse_header,
    parse_validators,
    verify_certificate,
)
from ledger.encoding import canonical
from ledger.errors import InvalidProofError, LedgerError
from ledger.limits import RETIREMENT_LOTS_MAX, TRANSACTION_BYTES_MAX_CEILING
from ledger.merkle import verify_inclusion
from ledger.state_tree import verify_state_proof
from ledger.transactions import parse_envelope, verify_envelope_signatures

LOG_PATH_MAX: Final = 64
RECEIPT_LOTS_MAX: Final = RETIREMENT_LOTS_MAX  # what a proposer takes in one retirement

_ANY = s.Field(lambda path, value: value)
_RECEIPT: Final = s.obj(
    {
        "retirement": _ANY,
        "transaction": _ANY,
        "log_index": s.integer(0),
        "inclusion": s.array(s.HASH_HEX, low=0, high=LOG_PATH_MAX),
        "state_proofs": s.array(lambda path, value: value, low=2, high=RECEIPT_LOTS_MAX + 1),
        "checkpoint": s.obj({"header": _ANY, "certificate": _ANY}),
        "validators": _ANY,
        "genesis_hash": s.HASH_HEX,
    }
)


def verify_receipt(
    receipt: Any,
    *,
    validators_hash: str | bytes,
    genesis_hash: str | None = None,
    chain_id: str | None = None,
) -> None:
    """Check a retirement receipt offline (steps in the module docstring). A verifier that
    trusts a genesis file passes its hash and its `chain_id`."""
    trusted = validators_hash.hex() if isinstance(validators_hash, bytes) else validators_hash
    try:
        _verify(receipt, trusted, genesis_hash, chain_id)
    except InvalidProofError:
        raise
    except LedgerError as error:  # a field's path names the receipt already: said once
        message = error.message
        said = message if message.startswith("receipt") else f"receipt: {message}"
        raise InvalidProofError(said) from error


def _same(a: Any, b: Any) -> bool:
    """Equal as canonical JSON: `true` is not `1` and `6.0` is not `6` (SPEC §2.1), as they
    would be for Python's `==`."""
    try:
        return canonical(a) == canonical(b)
    except LedgerError:
        return False


def _fail(step: str, message: str) -> InvalidProofError:
    return InvalidProofError(f"receipt step {step}: {message}")


def _verify(receipt: Any, trusted: str, genesis_hash: str | None, chain_id: str | None) -> None:
    # 1. Shape.
    fields = _RECEIPT("receipt", receipt)
    header = parse_header(fields["checkpoint"]["header"], "receipt.checkpoint.header")
    certificate = parse_certificate(
        fields["checkpoint"]["certificate"], "receipt.checkpoint.certificate"
    )
    validators = parse_validators(fields["validators"], "receipt.validators")
    envelope = parse_envelope(
        fields["transaction"], transaction_bytes_max=TRANSACTION_BYTES_MAX_CEILING
    )
    record = fields["retirement"]
    if not isinstance(record, dict):
        raise _fail("1", "retirement is not an object")
    if genesis_hash is not None and fields["genesis_hash"] != genesis_hash:
        raise _fail("1", "the receipt is for another chain's genesis")
    if chain_id is not None and header.chain_id != chain_id:
        raise _fail("1", f"the receipt is for chain {header.chain_id!r}, not {chain_id!r}")

    # 2. The validators are the trusted ones, and the ones the header names.
    computed = compute_validators_hash(validators)
    if computed != trusted:
        raise _fail("2", "the validators are not the trusted set")
    if header.validators_hash != computed:
        raise _fail("2", "the header names another validator set")

    # 3. The certificate.
    try:
        verify_certificate(
            certificate,
            chain_id=header.chain_id,
            height=header.height,
            block_hash=header.block_hash(),
            validators=validators,
        )
    except InvalidProofError as error:
        raise _fail("3", error.message) from error

    # 4. The transaction is this retirement.
    tx = envelope.tx
    if envelope.tx_id != record.get("retirement_id"):
        raise _fail("4", "the transaction's id is not the retirement's id")
    if tx.type != "retire" or tx.chain_id != header.chain_id:
        raise _fail("4", "the transaction is not a retirement on this chain")
    expected = {
        "holder": tx.signer,
        "batch_id": tx.payload["batch_id"],
        "quantity": tx.payload["quantity"],
        "beneficiary": tx.payload["beneficiary"],
        "purpose": tx.payload["purpose"],
        "program_id": tx.payload.get("program_id"),
        "jurisdiction": tx.payload.get("jurisdiction"),
        "memo": tx.payload.get("memo"),
    }
    for name, value in expected.items():
        if not _same(record.get(name), value):
            raise _fail("4", f"the record's {name} differs from the transaction's")
    try:
        verify_envelope_signatures(envelope)
    except LedgerError as error:
        raise _fail("4", error.message) from error

    # 5. In the log.
    try:
        verify_inclusion(
            leaf_hash=envelope.leaf_hash,
            index=fields["log_index"],
            size=header.log_size,
            path=[bytes.fromhex(node) for node in fields["inclusion"]],
            root=bytes.fromhex(header.log_root),
        )
    except InvalidProofError as error:
        raise _fail("5", error.message) from error

    # 6. In the state: the record, and every lot of its serials, retired by it.
    root = bytes.fromhex(header.state_root)
    proven: dict[str, Any] = {}
    for proof in fields["state_proofs"]:
        try:
            verify_state_proof(proof=proof, root=root)
        except InvalidProofError as error:
            raise _fail("6", error.message) from error
        proven[proof["key"]] = proof["value"]
    retirement_id = envelope.tx_id
    if not _same(proven.get(f"retirement/{retirement_id}"), record):
        raise _fail("6", "the state does not hold this retirement record")
    serials = record.get("serials")
    if not isinstance(serials, list) or not serials:
        raise _fail("6", "the record names no serials")
    total = 0
    for entry in serials:
        if not (
            isinstance(entry, list)
            and len(entry) == 2
            and all(type(serial) is int for serial in entry)  # not bool (found by review)
        ):
            raise _fail("6", "a serial range is not [first, last] integers")
        first, last = entry
        lot = proven.get(f"lot/{record['batch_id']}/{first}")
        if not isinstance(lot, dict) or lot.get("status") != "retired":
            raise _fail("6", f"serials from {first} are not proven retired")
        if lot.get("retirement_id") != retirement_id or lot.get("owner") != record["holder"]:
            raise _fail("6", f"serials from {first} are retired by another retirement")
        if not _same(lot.get("quantity"), last - first + 1):
            raise _fail("6", f"the lot at {first} does not cover [{first}, {last}]")
        total += lot["quantity"]
    if not _same(total, record["quantity"]):
        raise _fail("6", f"the lots hold {total} units, the retirement {record['quantity']}")
