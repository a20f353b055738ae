"""Genesis, checkpoints, blocks, export and liveness (SPEC §7.1)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Generator, Iterator
from typing import Annotated, Any, Final

import anyio
from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from api import schemas
from api.admission import RETRY_AFTER_SECONDS
from api.node import EXPORTS_AT_ONCE_MAX, Node
from api.problems import problem, problem_body, problem_responses
from api.routes import example, node_of
from ledger.encoding import canonical
from ledger.errors import LedgerError, StoreError
from ledger.limits import JSON_INTEGER_MAX
from ledger.store import Store

log = logging.getLogger("tanlian.api")

router = APIRouter(tags=["chain"])

HEIGHT = Annotated[
    int,
    Path(
        ge=1,
        le=JSON_INTEGER_MAX,
        description="A block height.",
        openapi_examples=example(1, "The first block"),
    ),
]
NDJSON: Final = "application/x-ndjson"
# The longest an export waits for its client to take the next part: a client reading a
# block line of 80 MB at 1.4 MB/s (~11 Mbit/s) takes it within this.
EXPORT_STALL_SECONDS: Final = 60.0


@router.get(
    "/healthz",
    summary="Liveness",
    response_model=schemas.Healthz,
    response_model_exclude_unset=True,
    responses=problem_responses(),
)
async def healthz(node: Annotated[Node, Depends(node_of)]) -> dict[str, Any]:
    # Answered on the event loop, with no trip to a request thread: liveness says whether
    # the node answers at all, and a busy node's threads must not make it look dead.
    answer: dict[str, Any] = {"status": "ok", "height": node.state.height}
    fork = node.sync.counters.fork if node.sync is not None else None
    if fork is not None:
        answer["fork"] = {
            "height": fork.height,
            "ours": fork.ours.block.block_hash(),
            "theirs": fork.theirs.block.block_hash(),
            "source": fork.source,
            "signers_of_both": fork.signers_of_both(),
        }
    return answer


@router.get(
    "/v1/genesis",
    summary="The genesis document",
    response_model=schemas.Genesis,
    response_model_exclude_unset=True,
    responses=problem_responses(),
)
def genesis(node: Annotated[Node, Depends(node_of)]) -> dict[str, Any]:
    return node.genesis.document


def _checkpoint(node: Node, height: int) -> dict[str, Any]:
    if height > node.state.height:
        raise LedgerError(f"no block at height {height} yet", code="not_found")
    return node.reader().checkpoint(height)


@router.get(
    "/v1/checkpoint",
    summary="The latest checkpoint: {header, certificate}",
    response_model=schemas.Checkpoint,
    response_model_exclude_unset=True,
    responses=problem_responses("not_found"),
)
def latest_checkpoint(node: Annotated[Node, Depends(node_of)]) -> dict[str, Any]:
    height = node.state.height
    if height == 0:
        raise LedgerError("the chain has no block yet", code="not_found")
    return _checkpoint(node, height)


@router.get(
    "/v1/checkpoints/{height}",
    summary="The checkpoint of a height",
    response_model=schemas.Checkpoint,
    response_model_exclude_unset=True,
    responses=problem_responses("not_found", "invalid_field"),
)
def checkpoint(height: HEIGHT, node: Annotated[Node, Depends(node_of)]) -> dict[str, Any]:
    return _checkpoint(node, height)


@router.get(
    "/v1/blocks/{height}",
    summary="A block with its certificate",
    response_model=schemas.CertifiedBlock,
    response_model_exclude_unset=True,
    responses=problem_responses("not_found", "invalid_field"),
)
def block(height: HEIGHT, node: Annotated[Node, Depends(node_of)]) -> dict[str, Any]:
    if height > node.state.height:
        raise LedgerError(f"no block at height {height} yet", code="not_found")
    store = node.reader()
    return {
        "block": store.read_block(height).to_json(),
        "certificate": store.read_certificate(height).to_json(),
    }


@router.get(
    "/v1/export",
    summary="NDJSON: the genesis, then one {block, certificate} per line",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The genesis document, then each block with its certificate",
            "content": {NDJSON: {"schema": {"type": "string"}}},
        },
        **problem_responses("not_found", "invalid_field"),
    },
)
def export(
    node: Annotated[Node, Depends(node_of)],
    from_height: Annotated[
        int,
        Query(
            ge=1,
            le=JSON_INTEGER_MAX,
            description="The first block's height: at most the head's height + 1 (an empty "
            "tail, answered with the genesis alone); above that, 404 not_found.",
            openapi_examples=example(1, "From the first block"),
        ),
    ] = 1,
    to_height: Annotated[
        int | None,
        Query(
            ge=1,
            le=JSON_INTEGER_MAX,
            description="The last block's height (default and at most: the head's).",
            openapi_examples=example(10, "Up to height 10"),
        ),
    ] = None,
) -> Response:
    if to_height is not None and to_height < from_height:  # as the consistency route has it
        raise LedgerError(
            f"no blocks from height {from_height} to {to_height}: to_height is below from_height",
            code="not_found",
        )
    head = node.state.height
    if from_height > head + 1:  # the next height is an empty tail; beyond it, a mistake
        raise LedgerError(
            f"no block at height {from_height} yet: the chain's head is at height {head}",
            code="not_found",
        )
    last = head if to_height is None else min(to_height, head)
    if not node.exports.acquire(blocking=False):
        return problem(
            "overloaded",
            f"{EXPORTS_AT_ONCE_MAX} exports are being streamed already, the most at once",
            {"retry-after": str(RETRY_AFTER_SECONDS)},
        )
    try:
        store = Store.open(node.data)  # its own connection: the stream outlives this thread
    except BaseException:
        node.exports.release()
        raise
    produced = store.export_lines(from_height, last)
    try:  # the genesis and the first block before answering: a corrupt one is a 503
        first = list(itertools.islice(produced, 2))
    except BaseException:
        store.close()
        node.exports.release()
        raise

    def lines() -> Generator[bytes]:
        try:
            yield from first
            yield from produced
        except StoreError as error:
            # A block found corrupt mid-stream (the status is sent already): the last line
            # says so, and no client or auditor can take the export for a shorter chain.
            log.error("export stopped: %s", error.message)
            yield canonical({"problem": problem_body("store_unavailable", error.message)}) + b"\n"
        finally:
            store.close()

    stream = lines()

    def end() -> None:
        try:
            stream.close()  # its `finally`, if it began
            store.close()  # and if it never began (a HEAD)
        finally:
            node.exports.release()

    return ClosingStream(stream, media_type=NDJSON, on_end=end, stall_seconds=EXPORT_STALL_SECONDS)


class ClosingStream(StreamingResponse):
    """A streamed answer that releases what it reads from when the answer ends, however it
    ends: sent whole, stopped after its head (a HEAD), the client gone, or the client taking
    nothing for `stall_seconds`. Left to the generator's own `finally`, a stream never begun
    or abandoned kept its store connection (two file descriptors) until a cyclic garbage
    collection, which a node makes rare: HEAD requests in a loop ran a node out of
    descriptors (found by review). A client that stops reading keeps its connection open and
    its stream's turn (`Node.exports`): past `stall_seconds` the stream ends unfinished, the
    connection is closed without the chunked body's end (the client sees a cut answer, never
    a shorter chain; uvicorn logs one line), and the turn comes back. Starlette's thread
    running the generator is awaited before this returns, so `on_end` never races it."""

    def __init__(
        self,
        content: Iterator[bytes],
        *,
        media_type: str,
        on_end: Callable[[], None],
        stall_seconds: float,
    ) -> None:
        super().__init__(content, media_type=media_type)
        self._on_end = on_end
        self._stall_seconds = stall_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def bounded(message: Message) -> None:
            with anyio.fail_after(self._stall_seconds):
                await send(message)

        try:
            await super().__call__(scope, receive, bounded)
        except TimeoutError:
            log.warning("an export stopped: its client took nothing for %ss", self._stall_seconds)
        finally:
            self._on_end()
