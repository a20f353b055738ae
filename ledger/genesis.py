"""The genesis document and the state it starts (SPEC §5.1).

`genesis_hash = sha256("tanlian/genesis/v1\\n" + canonical(genesis))`. The genesis state holds
the authority account, the methodologies and the validator set (current and next).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from ledger import schema as s
from ledger.blocks import Validator, parse_validators, validators_to_json
from ledger.crypto import GENESIS_DOMAIN, compute_account_id, hash_domain
from ledger.encoding import JSON, decode
from ledger.errors import FieldError
from ledger.limits import (
    AUTHORITY_KEYS_MAX,
    BLOCK_INTERVAL_MS_DEFAULT,
    BLOCK_TRANSACTIONS_MAX_CEILING,
    BLOCK_TRANSACTIONS_MAX_DEFAULT,
    GENESIS_METHODOLOGIES_MAX,
    TEXT_CHARS_MAX,
    TRANSACTION_BYTES_MAX_CEILING,
    TRANSACTION_BYTES_MAX_DEFAULT,
)
from ledger.state import Params, State, initial_state

_METHODOLOGY: Final = s.obj(
    {
        "methodology_id": s.SLUG_ID,
        "name": s.text(TEXT_CHARS_MAX),
        "document_sha256": s.HASH_HEX,
    }
)
_SCHEMA: Final = s.obj(
    {
        "chain_id": s.text(64, pattern=s.CHAIN_ID),
        "genesis_time": s.integer(0),
        "authority": s.obj(
            {
                "name": s.text(TEXT_CHARS_MAX),
                "keys": s.array(s.public_key, low=1, high=AUTHORITY_KEYS_MAX, unique=True),
                "threshold": s.integer(1, AUTHORITY_KEYS_MAX),
            }
        ),
        "validators": lambda path, value: value,
        "methodologies": s.array(_METHODOLOGY, low=0, high=GENESIS_METHODOLOGIES_MAX),
        "params": s.obj(
            {
                "block_interval_ms": s.integer(1, 3_600_000),
                "block_transactions_max": s.integer(1, BLOCK_TRANSACTIONS_MAX_CEILING),
                "transaction_bytes_max": s.integer(1024, TRANSACTION_BYTES_MAX_CEILING),
            }
        ),
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Genesis:
    chain_id: str
    genesis_time: int
    authority_name: str
    authority_keys: tuple[str, ...]
    authority_threshold: int
    validators: tuple[Validator, ...]
    methodologies: tuple[dict[str, str], ...]
    params: Params
    document: dict[str, JSON]

    @property
    def authority_id(self) -> str:
        return compute_account_id(self.authority_keys, self.authority_threshold)

    def genesis_hash(self) -> str:
        return hash_domain(GENESIS_DOMAIN, self.document).hex()


def parse_genesis(value: Any) -> Genesis:
    fields = _SCHEMA("", value)
    authority = fields["authority"]
    if authority["threshold"] > len(authority["keys"]):
        raise FieldError("authority.threshold", "exceeds the number of keys")
    ids = [m["methodology_id"] for m in fields["methodologies"]]
    if len(set(ids)) != len(ids):
        raise FieldError("methodologies", "a methodology_id appears twice")
    params = fields["params"]
    return Genesis(
        chain_id=fields["chain_id"],
        genesis_time=fields["genesis_time"],
        authority_name=authority["name"],
        authority_keys=tuple(sorted(authority["keys"])),
        authority_threshold=authority["threshold"],
        validators=parse_validators(fields["validators"]),
        methodologies=tuple(fields["methodologies"]),
        params=Params(**params),
        document=value,
    )


def decode_genesis(data: bytes) -> Genesis:
    return parse_genesis(decode(data))


def make_genesis_document(
    *,
    chain_id: str,
    genesis_time: int,
    authority_name: str,
    authority_keys: list[str],
    authority_threshold: int,
    validators: list[Validator],
    methodologies: list[dict[str, str]] | None = None,
    block_interval_ms: int = BLOCK_INTERVAL_MS_DEFAULT,
    block_transactions_max: int = BLOCK_TRANSACTIONS_MAX_DEFAULT,
    transaction_bytes_max: int = TRANSACTION_BYTES_MAX_DEFAULT,
) -> dict[str, JSON]:
    document: dict[str, JSON] = {
        "chain_id": chain_id,
        "genesis_time": genesis_time,
        "authority": {
            "name": authority_name,
            "keys": sorted(authority_keys),
            "threshold": authority_threshold,
        },
        "validators": validators_to_json(validators),
        "methodologies": list(methodologies or []),
        "params": {
            "block_interval_ms": block_interval_ms,
            "block_transactions_max": block_transactions_max,
            "transaction_bytes_max": transaction_bytes_max,
        },
    }
    parse_genesis(document)  # a document we write must be one we accept
    return document


def genesis_state(genesis: Genesis) -> State:
    """The state before block 1."""
    entries: dict[str, JSON] = {
        f"account/{genesis.authority_id}": {
            "keys": list(genesis.authority_keys),
            "threshold": genesis.authority_threshold,
            "nonce": 0,
            "status": "active",
        },
        "validators/current": validators_to_json(genesis.validators),
        "validators/next": validators_to_json(genesis.validators),
    }
    for methodology in genesis.methodologies:
        entries[f"methodology/{methodology['methodology_id']}"] = {**methodology, "height": 0}
    return initial_state(
        chain_id=genesis.chain_id,
        genesis_hash=genesis.genesis_hash(),
        genesis_time=genesis.genesis_time,
        authority=genesis.authority_id,
        params=genesis.params,
        entries=entries,
    )
