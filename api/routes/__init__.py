"""The API's routes, one module per resource; each is thin: parse, ask the node, answer.

The dependencies that hand a route the node, its settings and its admission queues are
coroutines: FastAPI runs a plain function dependency in a thread, a hop per request that
waits for a free thread when the node is busy.

Every parameter and body carries an OpenAPI example (what the interactive docs fill in and what
schemathesis sends first); the example values (api.schemas) are well-formed, not from any
real chain.
"""

import re
import types
import typing
import urllib.parse
from collections.abc import Callable, Coroutine
from typing import Any, Final

from fastapi import Request
from fastapi.openapi.models import Example
from fastapi.routing import APIRoute

from api.admission import Admission
from api.node import Node
from api.settings import Settings
from ledger.errors import LedgerError, printable

_DECIMAL: Final = re.compile(r"(?:0|[1-9][0-9]{0,15})\Z")


def _is_integer(annotation: Any) -> bool:
    return annotation is int or (
        typing.get_origin(annotation) in (typing.Union, types.UnionType)
        and int in typing.get_args(annotation)
    )


async def strict_url(request: Request) -> None:
    """Every route's first dependency, for what a parameter's type cannot say:

    - a path or query whose percent-escapes are not UTF-8 is refused (SPEC §2.1 refuses
      invalid UTF-8). Starlette replaces such bytes with U+FFFD, so `?key=%FF` was answered
      as a proof about the key "\ufffd", another key, and a client checking only
      `value == null` took its own key for absent;
    - an integer parameter is decimal digits and nothing else: pydantic also reads `1_0`,
      `+1`, ` 1` and `1.0`, so one block had many spellings (`/v1/blocks/1_0` answered
      block 10), and `0001` answered block 1 (leading zeros are refused as the explorer
      refuses them). A validator on the type would do it, but FastAPI then writes the bounds
      into the OpenAPI document under pydantic's names (`ge`), not JSON Schema's;
    - a query parameter of the route given twice is refused: Starlette keeps the last, so
      `?limit=10&limit=500` was answered as 500 wherever a client or proxy added the other."""
    scope = request.scope
    route = scope.get("route")
    if isinstance(route, APIRoute):
        for field in route.dependant.query_params:
            if len(request.query_params.getlist(field.alias)) > 1:
                raise LedgerError(
                    f"query.{field.alias}: given more than once", code="invalid_field"
                )
        found = [
            ("path", field.alias, [request.path_params.get(field.alias, "")])
            for field in route.dependant.path_params
            if _is_integer(field.field_info.annotation)
        ] + [
            ("query", field.alias, request.query_params.getlist(field.alias))
            for field in route.dependant.query_params
            if _is_integer(field.field_info.annotation)
        ]
        for where, name, values in found:
            if any(not _DECIMAL.match(value) for value in values):
                raise LedgerError(
                    f"{where}.{name}: must be an integer in decimal digits, no leading zero",
                    code="invalid_field",
                )
    for what, raw in (("path", scope.get("raw_path") or b""), ("query", scope["query_string"])):
        try:
            urllib.parse.unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError as error:
            raise LedgerError(
                f"the {what} holds percent-escapes that are not UTF-8 (byte {error.start})",
                code="invalid_field",
            ) from error


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
    told what to send rather than have its bytes guessed at. A body in a content coding
    (RFC 9110 §8.4: gzip, ...) is refused the same way, naming the header: the node reads no
    coding, and a gzipped body had been answered "invalid UTF-8 at byte 1", a plain one
    labelled gzip taken (found by review)."""

    async def check(request: Request) -> None:
        codings = [
            coding.strip().lower()
            for value in request.headers.getlist("content-encoding")
            for coding in value.split(",")
        ]
        if any(coding not in ("", "identity") for coding in codings):
            shown = ", ".join(coding for coding in codings if coding)
            raise LedgerError(
                f"the body is in content coding {printable(shown[:80])!r}, which this node does"
                f" not read; send it unencoded (no content-encoding header)",
                code="unsupported_media_type",
            )
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
