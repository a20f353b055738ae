"""Genesis, checkpoints, blocks, export and liveness (SPEC §7.1)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse, StreamingResponse

from api.node import Node
from api.routes import node_of
from ledger.errors import LedgerError
from ledger.limits import JSON_INTEGER_MAX
from ledger.store import Store

router = APIRouter(tags=["chain"])

HEIGHT = Annotated[int, Path(ge=1, le=JSON_INTEGER_MAX, description="A block height.")]


@router.get("/healthz", summary="Liveness")
def healthz(node: Annotated[Node, Depends(node_of)]) -> dict[str, Any]:
    return {"status": "ok", "height": node.state.height}


@router.get("/v1/genesis", summary="The genesis document")
def genesis(node: Annotated[Node, Depends(node_of)]) -> JSONResponse:
    return JSONResponse(node.genesis.document)


def _checkpoint(node: Node, height: int) -> dict[str, Any]:
    if height > node.state.height:
        raise LedgerError(f"no block at height {height} yet", code="not_found")
    return node.reader().checkpoint(height)


@router.get("/v1/checkpoint", summary="The latest checkpoint: {header, certificate}")
def latest_checkpoint(node: Annotated[Node, Depends(node_of)]) -> dict[str, Any]:
    height = node.state.height
    if height == 0:
        raise LedgerError("the chain has no block yet", code="not_found")
    return _checkpoint(node, height)


@router.get("/v1/checkpoints/{height}", summary="The checkpoint of a height")
def checkpoint(height: HEIGHT, node: Annotated[Node, Depends(node_of)]) -> dict[str, Any]:
    return _checkpoint(node, height)


@router.get("/v1/blocks/{height}", summary="A block with its certificate")
def block(height: HEIGHT, node: Annotated[Node, Depends(node_of)]) -> dict[str, Any]:
    if height > node.state.height:
        raise LedgerError(f"no block at height {height} yet", code="not_found")
    store = node.reader()
    return {
        "block": store.read_block(height).to_json(),
        "certificate": store.read_certificate(height).to_json(),
    }


@router.get("/v1/export", summary="NDJSON: the genesis, then one {block, certificate} per line")
def export(
    node: Annotated[Node, Depends(node_of)],
    from_height: Annotated[int, Query(ge=1, le=JSON_INTEGER_MAX)] = 1,
    to_height: Annotated[int | None, Query(ge=1, le=JSON_INTEGER_MAX)] = None,
) -> StreamingResponse:
    last = node.state.height if to_height is None else min(to_height, node.state.height)
    store = Store.open(node.data)  # its own connection: the stream outlives this thread

    def lines() -> Iterator[bytes]:
        try:
            yield from store.export_lines(from_height, last)
        finally:
            store.close()

    return StreamingResponse(lines(), media_type="application/x-ndjson")
