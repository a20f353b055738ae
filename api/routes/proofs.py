"""Proofs and receipts (SPEC §6, §7.1): each checked against the stored header before it is
served."""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Path, Query

from api import schemas
from api.node import Node
from api.problems import problem_responses
from api.routes import example, node_of
from api.schemas import EXAMPLE_TX_ID
from ledger import schema
from ledger.errors import LedgerError
from ledger.limits import JSON_INTEGER_MAX
from ledger.state_tree import STATE_KEY_CHARS_MAX

router = APIRouter(prefix="/v1", tags=["proofs"])

HEX64 = r"^[0-9a-f]{64}$"
# A state key is text without control characters (Unicode Cc), as the proof verifier reads it.
STATE_KEY_PATTERN: Final = r"^[^\x00-\x1f\x7f-\x9f]+$"
STATE_KEY: Final = schema.text(STATE_KEY_CHARS_MAX)
HEIGHT_QUERY = Annotated[
    int | None,
    Query(ge=1, le=JSON_INTEGER_MAX, openapi_examples=example(2, "At height 2")),
]


@router.get(
    "/proofs/inclusion",
    summary="RFC 9162 inclusion proof of a transaction",
    response_model=schemas.InclusionProof,
    response_model_exclude_unset=True,
    responses=problem_responses("not_found", "invalid_field"),
)
def inclusion(
    node: Annotated[Node, Depends(node_of)],
    tx_id: Annotated[
        str, Query(pattern=HEX64, openapi_examples=example(EXAMPLE_TX_ID, "A transaction id"))
    ],
    height: HEIGHT_QUERY = None,
) -> dict[str, Any]:
    at = node.state.height if height is None else height
    if at > node.state.height or at == 0:
        raise LedgerError(f"no block at height {at}", code="not_found")
    return node.reader().inclusion_proof(tx_id, at)


@router.get(
    "/proofs/consistency",
    summary="RFC 9162 consistency proof between two heights",
    response_model=schemas.ConsistencyProof,
    response_model_exclude_unset=True,
    responses=problem_responses("not_found", "invalid_field"),
)
def consistency(
    node: Annotated[Node, Depends(node_of)],
    from_height: Annotated[
        int, Query(ge=1, le=JSON_INTEGER_MAX, openapi_examples=example(1, "From height 1"))
    ],
    to_height: HEIGHT_QUERY = None,
) -> dict[str, Any]:
    head = node.state.height
    if to_height is not None and to_height < from_height:
        raise LedgerError(
            f"no consistency proof from height {from_height} to {to_height}: to_height is"
            " below from_height",
            code="invalid_field",
        )
    to = head if to_height is None else to_height
    if to > head or from_height > to:
        raise LedgerError(
            f"no consistency proof from height {from_height} to {to}: the chain's head is at"
            f" height {head}",
            code="not_found",
        )
    return node.reader().consistency_proof(from_height, to)


@router.get(
    "/proofs/state",
    summary="A state proof against the latest checkpoint",
    response_model=schemas.StateProofAnswer,
    response_model_exclude_unset=True,
    responses=problem_responses("not_found", "invalid_field"),
)
def state_proof(
    node: Annotated[Node, Depends(node_of)],
    key: Annotated[
        str,
        Query(
            min_length=1,
            max_length=STATE_KEY_CHARS_MAX,
            pattern=STATE_KEY_PATTERN,
            description="A state key (SPEC §4); an absent key is proven absent.",
            openapi_examples=example("batch/B-1", "A batch's supply"),
        ),
    ],
) -> dict[str, Any]:
    STATE_KEY("key", key)  # the verifier's own rule: a key it would refuse is never proven
    return node.reader().state_proof(node.state, key)


@router.get(
    "/retirements/{retirement_id}/receipt",
    summary="A self-contained receipt (§6.3)",
    response_model=schemas.Receipt,
    response_model_exclude_unset=True,
    responses=problem_responses("not_found", "invalid_field"),
)
def receipt(
    node: Annotated[Node, Depends(node_of)],
    retirement_id: Annotated[
        str,
        Path(pattern=HEX64, openapi_examples=example(EXAMPLE_TX_ID, "A retirement's tx id")),
    ],
) -> dict[str, Any]:
    return node.reader().receipt(node.state, retirement_id)
