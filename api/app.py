"""The HTTP API (SPEC §7): one FastAPI application per node, thin routes over `Node`.

Every error is an RFC 9457 problem from `api.problems` (one table maps codes to statuses);
request bodies are bounded while they are read, in size (a body over the limit is refused with
413 without being read into memory) and in time (a body that has not arrived in full within
`request_body_seconds` is answered 408); outside input never yields a 500.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio
import anyio.lowlevel
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Mount

from api.admission import RETRY_AFTER_SECONDS, Admission, BodyBudget
from api.explorer import ASSETS_URL, STATIC, Explorer, is_page
from api.node import Node
from api.problems import problem
from api.routes import (
    chain,
    consensus,
    explorer,
    metrics,
    proofs,
    registry,
    strict_url,
    transactions,
)
from api.settings import Settings
from ledger.errors import LedgerError, StoreError

log = logging.getLogger("tanlian.api")
# A refused body is left unread: the connection closes, and the client may come back later.
OVERLOADED_HEADERS: Final = {"connection": "close", "retry-after": str(RETRY_AFTER_SECONDS)}
DOCS_ASSETS_URL = "/docs-assets"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyGuard:
    """Bound a request body while it streams in, so no client can fill memory or hold a
    worker: at most `limit` bytes (refused by its Content-Length before anything is read, or
    as soon as the bytes read pass the limit: 413 `payload_too_large`), and in full within
    `seconds` of the application first asking for it (408 `request_timeout`, after which the
    connection closes, RFC 9110 §15.5.9). Once the body is complete, later receives (a
    streaming answer waiting for a disconnect) are not bounded.

    The bytes every request's body holds count against `budget` (api.admission.BodyBudget)
    until the request is answered: a large body that would pass it is refused, 503
    `overloaded` with Retry-After, unread when its Content-Length says so, and the
    connection closes."""

    def __init__(self, app: ASGIApp, limit: int, seconds: float, budget: BodyBudget) -> None:
        self.app = app
        self.limit = limit
        self.seconds = seconds
        self.budget = budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"request bodies are at most {self.limit} bytes"
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _send_problem(send, "payload_too_large", too_large)
            return
        if declared is not None and (refused := self.budget.refusal(0, int(declared))):
            await _send_problem(send, refused.code, refused.detail, OVERLOADED_HEADERS)
            return
        seen = 0
        deadline: float | None = None
        complete = False
        responded = False

        async def guarded() -> Message:
            nonlocal seen, deadline, complete
            if complete:
                return await receive()
            if deadline is None:
                deadline = anyio.current_time() + self.seconds
            with anyio.move_on_after(deadline - anyio.current_time()) as waited:
                message = await receive()
            if waited.cancelled_caught:
                detail = f"the request body did not arrive within {self.seconds:g} s"
                raise _BodyRefused("request_timeout", detail, {"connection": "close"})
            if message["type"] == "http.request":
                more = len(message.get("body", b""))
                if seen + more > self.limit:
                    raise _BodyRefused("payload_too_large", too_large)
                if refused := self.budget.refusal(seen, more):
                    raise _BodyRefused(refused.code, refused.detail, OVERLOADED_HEADERS)
                self.budget.held += more
                seen += more
            complete = message["type"] != "http.request" or not message.get("more_body")
            return message

        async def tracked(message: Message) -> None:
            nonlocal responded
            if message["type"] == "http.response.start":
                responded = True
            await send(message)

        try:
            await self.app(scope, guarded, tracked)
        except _BodyRefused as refused:
            if not responded:
                await _send_problem(send, refused.code, refused.detail, refused.headers)
        finally:
            self.budget.held -= seen


async def _send_problem(
    send: Send, code: str, detail: str, headers: dict[str, str] | None = None
) -> None:
    response = problem(code, detail, headers)
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": response.raw_headers,
        }
    )
    await send({"type": "http.response.body", "body": response.body})


class HeadAsGet:
    """HEAD on every GET resource (RFC 9110 §9.3.2: a general-purpose server must support
    it): the application answers it as GET, and uvicorn, which still sees HEAD, sends the
    status and headers (Content-Length included) without the body. A HEAD of a resource that
    takes no GET is answered 405, as GET would be.

    The answer ends with its head: the body is never made. A streamed answer (an export) is
    stopped there, the client being gone as far as it knows (Starlette's streaming answers
    end when the client is): uvicorn writes nothing of a HEAD's body, so nothing else would
    slow it, and a HEAD of /v1/export had read the whole chain (found by review)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        answered = anyio.Event()
        request_read = False

        async def receiving() -> Message:
            nonlocal request_read
            if not request_read:  # the request's own (empty) body, as the server gives it
                request_read = True
                return await receive()
            await answered.wait()
            return {"type": "http.disconnect"}

        async def sending(message: Message) -> None:
            if answered.is_set():  # the body of a HEAD: nobody reads it
                await anyio.lowlevel.checkpoint()  # where the stream's cancellation lands
                return
            await send(message)
            if message["type"] == "http.response.start":
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                answered.set()

        # a copy: the server's own scope stays HEAD, and the metrics count a HEAD
        await self.app({**scope, "method": "GET", metrics.SENT_METHOD: "HEAD"}, receiving, sending)


# Every answer: no content-type sniffing (a JSON answer or an asset is never run as another
# type). The explorer's HTML pages besides: their scripts and styles come from the node's own
# assets only (a `<script type="application/json">` holds data, never code), style attributes
# alone inline (a bar's width), nothing else loaded, never framed (clickjacking the verify
# page), and the address not sent to other sites.
NOSNIFF: Final = (b"x-content-type-options", b"nosniff")
PAGE_HEADERS: Final = (
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; "
        b"style-src-attr 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
        b"form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
)


class SecurityHeaders:
    """`NOSNIFF` on every answer, and `PAGE_HEADERS` on the explorer's HTML pages (its
    error pages too); /docs and /redoc, whose pages start Swagger UI and ReDoc with inline
    scripts, are machine paths and keep theirs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        page = is_page(scope["path"])

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), NOSNIFF]
                html = any(
                    name == b"content-type" and value.startswith(b"text/html")
                    for name, value in headers
                )
                if page and html:
                    headers.extend(PAGE_HEADERS)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)


class AssetFiles(StaticFiles):
    """The explorer's scripts and style sheet, whole: a Range header is ignored (RFC 9110
    §14.2 lets a server do so), because Starlette answers a malformed or unsatisfiable one in
    plain text, where every error of the node is a problem, and no reader of a few kilobytes
    of script needs a part of it."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"range", b"if-range")]
        await super().__call__({**scope, "headers": headers}, receive, send)


class _BodyRefused(Exception):
    def __init__(self, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.headers = headers


def create_app(node: Node, settings: Settings, *, manage_node: bool = True) -> FastAPI:
    """The node's application: the JSON API (SPEC §7), its docs, and the explorer's pages.
    Raises ValueError for a setting the explorer cannot use (a bad programme targets file)."""
    pages = Explorer(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_node:
            node.start()
        pages.start(node)
        try:
            yield
        finally:
            pages.stop()
            if manage_node:
                node.stop()

    # The docs pages (/docs, /redoc) load Swagger UI and ReDoc from the node itself, never
    # from a CDN: a node runs offline.
    app = FastAPIOffline(
        static_url=DOCS_ASSETS_URL,
        title="Tanlian (碳链) ledger API",
        version="1",
        description="A verifiable carbon-credit ledger: submit, query and prove (SPEC §7).",
        lifespan=lifespan,
        # one schema per model: the request body refers to the same `Envelope` the answers use
        separate_input_output_schemas=False,
        # A path with a slash too many is not found, not redirected: the redirect's Location
        # was built from the client's Host header, and had no problem body.
        redirect_slashes=False,
        dependencies=[Depends(strict_url)],
    )
    app.state.node = node
    app.state.settings = settings
    app.state.explorer = pages
    app.state.admission = Admission(
        parsing_max=settings.submissions_parsing_max,
        queue_max=settings.submission_queue_max,
        queue_per_client_max=settings.submission_queue_per_client_max,
        large_queue_max=settings.large_submission_queue_max,
    )
    app.add_middleware(
        BodyGuard,
        limit=settings.body_bytes_max,
        seconds=settings.request_body_seconds,
        budget=BodyBudget(settings.request_bodies_bytes_max),
    )
    app.state.metrics = metrics.Metrics()
    app.add_middleware(metrics.Measure, metrics=app.state.metrics)
    app.add_middleware(HeadAsGet)
    app.add_middleware(SecurityHeaders)
    for router in (
        transactions.router,
        chain.router,
        proofs.router,
        registry.router,
        metrics.router,
        consensus.router,
        explorer.router,
    ):
        app.include_router(router)
    app.mount(ASSETS_URL, AssetFiles(directory=STATIC), name="assets")
    # The docs' own assets too: FastAPIOffline mounts plain StaticFiles, which answered a bad
    # Range in plain text (found by review).
    for index, route in enumerate(app.router.routes):
        if (
            isinstance(route, Mount)
            and route.path == DOCS_ASSETS_URL
            and type(route.app) is StaticFiles
        ):
            docs_assets = AssetFiles(directory=route.app.directory)
            app.router.routes[index] = Mount(route.path, docs_assets, name=route.name)

    # The explorer's paths answer their errors as HTML pages of the same problem (the same
    # code and status); the machine interfaces keep RFC 9457 JSON.
    def answer(
        request: Request, code: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> Response:
        if is_page(request.url.path):
            # A page's address refused is 400 `bad_query`, also when the check is the one
            # every route shares (a parameter given twice, escapes that are not UTF-8), which
            # says `invalid_field` as the API does (found by review).
            code = "bad_query" if code == "invalid_field" else code
            return pages.error(request, code, detail, headers)
        return problem(code, detail, headers)

    @app.exception_handler(LedgerError)
    async def ledger_error(request: Request, error: LedgerError) -> Response:
        if isinstance(error, StoreError):
            log.error("store refused to serve %s: %s", request.url.path, error.message)
            return answer(request, "store_unavailable", error.message)
        return answer(request, error.code, error.message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        detail = f"{where}: {first.get('msg', 'invalid')}"
        return answer(request, "invalid_field", detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed", 406: "not_acceptable"}.get(
            error.status_code, "invalid_field"
        )
        headers = dict(error.headers or {})
        allowed = [method.strip() for method in headers.get("Allow", "").split(",")]
        if "GET" in allowed and "HEAD" not in allowed:  # HeadAsGet answers HEAD of a GET
            headers["Allow"] = ", ".join([*allowed, "HEAD"])
        return answer(request, code, str(error.detail), headers or None)  # 405 keeps its Allow

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, error: ClientDisconnect) -> Response:
        # The client left mid-request: nobody reads an answer, and nothing went wrong here.
        log.debug("client disconnected during %s", request.url.path)
        return Response(status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> Response:
        # Starlette runs this handler outside every middleware, `SecurityHeaders` included:
        # its headers are set here (found by review: the 500 page had none).
        log.exception("internal error on %s", request.url.path)
        page = is_page(request.url.path)
        response = (
            pages.error(request, "internal_error", "internal error")
            if page
            else problem("internal_error", "internal error")
        )
        for name, value in (NOSNIFF, *(PAGE_HEADERS if page else ())):
            response.headers[name.decode()] = value.decode()
        return response

    return app
