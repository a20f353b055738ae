"""Genesis, checkpoints, blocks, export and liveness (SPEC §7.1)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Generator, Iterator
from typing import Annotated, Any, Final

import anyio
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from api import schemas
from api.admission import RETRY_AFTER_SECONDS
from api.node import Node
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
# An export's pace (`ClosingStream`): its client takes the stream at 64 KiB a second (0.5
# Mbit/s) on average after a minute's grace, or the stream ends. What `tanlian verify` asks
# of a node is gentler (64 KiB every 30 s): a node serves many, an auditor reads one.
EXPORT_GRACE_SECONDS: Final = 60.0
EXPORT_PACE_BYTES_MIN: Final = 64 * 1024


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
    stalled = node.stalled()
    if stalled is not None:
        answer["stalled"] = stalled
    out_of_touch = node.out_of_touch()
    if out_of_touch is not None:
        answer["out_of_touch"] = out_of_touch
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
        if node.forwarder is not None:  # it cannot know the chain has none
            raise LedgerError("this follower has synced no block yet", code="not_found")
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
    request: Request,
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
            code="invalid_field",
        )
    head = node.state.height
    if from_height > head + 1:  # the next height is an empty tail; beyond it, a mistake
        raise LedgerError(
            f"no block at height {from_height} yet: the chain's head is at height {head}",
            code="not_found",
        )
    last = head if to_height is None else min(to_height, head)
    client = request.client.host if request.client is not None else "unknown"
    refused = node.exports.take(client)
    if refused is not None:
        return problem(refused.code, refused.detail, {"retry-after": str(RETRY_AFTER_SECONDS)})
    try:
        store = Store.open(node.data)  # its own connection: the stream outlives this thread
    except BaseException:
        node.exports.give_back(client)
        raise
    produced = store.export_lines(from_height, last)
    try:  # the genesis and the first block before answering: a corrupt one is a 503
        first = list(itertools.islice(produced, 2))
    except BaseException:
        store.close()
        node.exports.give_back(client)
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
            node.exports.give_back(client)

    return ClosingStream(
        stream,
        media_type=NDJSON,
        on_end=end,
        grace_seconds=EXPORT_GRACE_SECONDS,
        pace_bytes_min=EXPORT_PACE_BYTES_MIN,
    )


class _Slow(Exception):
    """The client fell behind the stream's pace (not an OSError, which Starlette's ASGI 2.4
    path would take for the client being gone)."""


class ClosingStream(StreamingResponse):
    """A streamed answer that releases what it reads from when the answer ends, however it
    ends: sent whole, stopped after its head (a HEAD), the client gone, or the client taking
    it too slowly. Left to the generator's own `finally`, a stream never begun or abandoned
    kept its store connection (two file descriptors) until a cyclic garbage collection, which
    a node makes rare: HEAD requests in a loop ran a node out of descriptors (found by
    review). Starlette's thread running the generator is awaited before this returns, so
    `on_end` never races it.

    The pace: by `grace_seconds` after it began, plus one second for every `pace_bytes_min`
    bytes sent so far, the client must have taken all but the last of them (uvicorn's `send`
    waits for the part before to drain). A client that falls behind has its stream ended
    unfinished; `api.serving.HeadBound` then drops the connection (the client sees a cut
    answer, never a shorter chain) and the turn comes back. A client that stops reading, or
    reads a trickle, cannot keep a stream's turn for ever (found by review)."""

    def __init__(
        self,
        content: Iterator[bytes],
        *,
        media_type: str,
        on_end: Callable[[], None],
        grace_seconds: float,
        pace_bytes_min: int,
    ) -> None:
        super().__init__(content, media_type=media_type)
        self._on_end = on_end
        self._grace_seconds = grace_seconds
        self._pace_bytes_min = pace_bytes_min

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        began = anyio.current_time()
        sent = 0

        async def paced(message: Message) -> None:
            nonlocal sent
            due = began + self._grace_seconds + sent / self._pace_bytes_min
            sent += len(message.get("body", b""))
            try:
                with anyio.fail_after(max(due - anyio.current_time(), 0.0)):
                    await send(message)
            except TimeoutError:
                raise _Slow from None

        try:
            await super().__call__(scope, receive, paced)
        except _Slow:
            log.warning(
                "an export stopped: its client took %d bytes in %.0f s, slower than %d bytes a"
                " second after the first %.0f s",
                sent,
                anyio.current_time() - began,
                self._pace_bytes_min,
                self._grace_seconds,
            )
        finally:
            self._on_end()
