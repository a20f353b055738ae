"""Proofs and receipts (SPEC §6, §7.1): each checked against the stored header before it is
served."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query

from api.node import Node
from api.routes import node_of
from ledger.errors import LedgerError
from ledger.limits import JSON_INTEGER_MAX

router = APIRouter(prefix="/v1", tags=["proofs"])

HEX64 = r"^[0-9a-f]{64}$"


@router.get("/proofs/inclusion", summary="RFC 9162 inclusion proof of a transaction")
def inclusion(
    node: Annotated[Node, Depends(node_of)],
    tx_id: Annotated[str, Query(pattern=HEX64)],
    height: Annotated[int | None, Query(ge=1, le=JSON_INTEGER_MAX)] = None,
) -> dict[str, Any]:
    at = node.state.height if height is None else height
    if at > node.state.height or at == 0:
        raise LedgerError(f"no block at height {at}", code="not_found")
    return node.reader().inclusion_proof(tx_id, at)


@router.get("/proofs/consistency", summary="RFC 9162 consistency proof between two heights")
def consistency(
    node: Annotated[Node, Depends(node_of)],
    from_height: Annotated[int, Query(ge=1, le=JSON_INTEGER_MAX)],
    to_height: Annotated[int | None, Query(ge=1, le=JSON_INTEGER_MAX)] = None,
) -> dict[str, Any]:
    to = node.state.height if to_height is None else to_height
    if to > node.state.height or from_height > to:
        raise LedgerError(f"no consistency proof from {from_height} to {to}", code="not_found")
    return node.reader().consistency_proof(from_height, to)


@router.get("/proofs/state", summary="A state proof against the latest checkpoint")
def state_proof(
    node: Annotated[Node, Depends(node_of)],
    key: Annotated[str, Query(min_length=1, max_length=400)],
) -> dict[str, Any]:
    return node.reader().state_proof(node.state, key)


@router.get("/retirements/{retirement_id}/receipt", summary="A self-contained receipt (§6.3)")
def receipt(
    node: Annotated[Node, Depends(node_of)],
    retirement_id: Annotated[str, Path(pattern=HEX64)],
) -> dict[str, Any]:
    return node.reader().receipt(node.state, retirement_id)
