"""The API's routes, one module per resource; each is thin: parse, ask the node, answer.

The dependencies that hand a route the node, its settings and its admission queues are
coroutines: FastAPI runs a plain function dependency in a thread, a hop per request that
waits for a free thread when the node is busy.

Every parameter and body carries an OpenAPI example (what the interactive docs fill in and what
schemathesis sends first); the example values (api.schemas) are well-formed, not from any
real chain.
"""

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.openapi.models import Example

from api.admission import Admission
from api.node import Node
from api.settings import Settings
from ledger.errors import LedgerError


def example(value: Any, summary: str) -> dict[str, Example]:
    """One named OpenAPI example, for `Path(openapi_examples=...)` and `Query(...)`."""
    return {"example": Example(summary=summary, value=value)}


async def node_of(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


async def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def admission_of(request: Request) -> Admission:
    admission: Admission = request.app.state.admission
    return admission


def body_of(media_type: str) -> Callable[[Request], Coroutine[Any, Any, None]]:
    """A dependency that refuses a body declared as anything but `media_type` (or a
    `+json` suffix of JSON), 415 `unsupported_media_type`, before it is read. A body without
    a Content-Type is taken as `media_type`: only a header that says otherwise is refused.
    So `curl -d` without `-H 'content-type: application/json'`, which declares a form, is
    told what to send rather than have its bytes guessed at."""

    async def check(request: Request) -> None:
        declared = request.headers.get("content-type")
        if declared is None:
            return
        kind = declared.split(";", 1)[0].strip().lower()
        if kind == media_type or (media_type == "application/json" and kind.endswith("+json")):
            return
        raise LedgerError(
            f"the body is declared {kind or 'empty'!r}; send it as {media_type}"
            " (content-type header)",
            code="unsupported_media_type",
        )

    return check
