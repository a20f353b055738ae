"""How a node serves its API over HTTP: uvicorn, bounded against slow and numerous clients.

uvicorn bounds how long a connection may idle between requests (`keep_alive_seconds`). It does
not bound how long a request's line and headers may take to arrive: a client sending one header
byte every few seconds would hold its connection for ever, and a thousand such clients would
hold the node (slowloris). `HeadBound` adds that bound to
uvicorn's own HTTP/1.1 protocols, whose parsers stay as they are:

- the head clock starts when a connection opens, and on a kept-alive connection at the first
  byte of the next request (the idle time before it is keep-alive's to bound);
- it stops when the parser has a complete head (uvicorn then starts a request cycle);
- when it runs out (`request_head_seconds`), or the head grows past `request_head_bytes_max`,
  the node answers an RFC 9457 problem (408 `request_timeout`, 413 `payload_too_large`) and
  closes the connection (RFC 9110 §15.5.9). No part of another response is in flight then: the
  clock only runs while the connection has no request of its own being answered;
- a new connection that brings the server to `connections_max` closes, the same way, the one
  that has waited longest for its head: slow clients make room for new ones instead of
  keeping them out;
- a request that arrives while `connections_max` connections are open, or as many requests
  are in flight, is answered 503 `overloaded` (a problem, with Retry-After, closing the
  connection): uvicorn's own `limit_concurrency` would answer the same in plain text, so the
  node keeps that bound itself;
- bytes that are not HTTP/1.1 (a request line or header the parser refuses) are answered 400
  `malformed_request`, a problem, where uvicorn would answer plain text, and the connection
  closes as uvicorn closes it;
- a request answered before its body was read (refused early: 415, 413, 503...) has the rest
  of its body read and dropped, within the same clock and `body_bytes_max`, so that the client
  reads its answer whole (closed at once, a connection with unread bytes sends a reset, which
  can destroy the answer before the client reads it); past either bound, or chosen to make
  room, the connection closes without another answer. Then the connection goes on: idle for
  keep-alive's time (closed quietly after it), or the next request's head on its clock. Review
  found that rest of the body counted as the next request's head: answered a second,
  unasked-for 413, then reset.

The request body is bounded in size and time by `api.app.BodyGuard`; together they leave no
phase of a request unbounded in time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from collections.abc import Callable
from typing import Any, ClassVar, Final, cast

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.admission import RETRY_AFTER_SECONDS
from api.media import PROBLEM_MEDIA_TYPE
from api.problems import problem, problem_body
from api.settings import Settings

REASONS: Final = {400: b"Bad Request", 408: b"Request Timeout", 413: b"Content Too Large"}
SHUTDOWN_GRACE_SECONDS: Final = 10
FILES_RESERVE: Final = 256  # the node's own files: the store, each thread's reader, logs


class HeadBound(asyncio.Protocol):
    """A clock and a byte count on each request head, mixed into one of uvicorn's HTTP
    protocols (both keep `cycle`, `server_state` and `connections` under the same names).
    `protocol_class` sets the bounds, and the server's `waiting` connections, on a subclass
    per server."""

    head_seconds: ClassVar[float]
    head_bytes_max: ClassVar[int]
    body_bytes_max: ClassVar[int]
    keep_alive_seconds: ClassVar[float]
    connections_max: ClassVar[int]
    # The server's connections whose head clock runs, oldest clock first, with its start.
    waiting: ClassVar[dict[HeadBound, float]]
    # Told the code of each request refused before the application saw it (`/metrics`).
    refused: ClassVar[Callable[[str], None]]

    # uvicorn's own attributes, the same in its httptools and h11 protocols
    app: Any
    cycle: Any
    server_state: Any
    connections: set[Any]
    tasks: set[Any]

    _head_transport: asyncio.Transport | None = None
    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0
    _head_tail = b""  # the head's last bytes so far: its end may straddle two reads
    _draining = False  # the clock runs on the rest of an answered request's body, not a head
    _idle_timer: asyncio.TimerHandle | None = None  # after such a rest: keep-alive's time

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._served_app = self.app
        self.app = self._bounded_app  # what uvicorn starts each request cycle with

    async def _bounded_app(self, scope: Any, receive: Any, send: Any) -> None:
        """The application, or an `overloaded` problem past `connections_max` connections
        or requests in flight (this request's task counts already: uvicorn adds it before
        it runs)."""
        requests = len(self.tasks) - 1
        if self.open_connections() < self.connections_max and requests < self.connections_max:
            try:
                await self._served_app(scope, receive, send)
            finally:
                # This request's own cycle: `send` is its bound method (`self.cycle` may be
                # a pipelined request's already).
                self._drop_if_cut(getattr(send, "__self__", None))
            return
        detail = (
            f"{self.open_connections()} connections open and {requests} requests in flight "
            f"(at most {self.connections_max} of each)"
        )
        headers = {"connection": "close", "retry-after": str(RETRY_AFTER_SECONDS)}
        type(self).refused("overloaded")
        await problem("overloaded", detail, headers)(scope, receive, send)

    def _drop_if_cut(self, cycle: Any) -> None:
        """An answer the application began and did not finish (a stream its client took too
        slowly, `api.routes.chain.ClosingStream`) drops the connection at once. uvicorn then
        closes it, but a close waits for the unsent bytes to drain, which a client that reads
        nothing never lets happen: the socket stayed open, counted in `connections_max`
        (found by review)."""
        if (
            cycle is not None
            and cycle.response_started
            and not cycle.response_complete
            and not cycle.disconnected
        ):
            cycle.transport.abort()

    def is_between_requests(self) -> bool:
        """True when no request of this connection is being answered."""
        return self.cycle is None or bool(self.cycle.response_complete)

    def request_read(self) -> bool:
        """True when the parser has the whole of this connection's latest request, its
        body included (each parser's subclass says)."""
        raise NotImplementedError

    def next_request_begun(self) -> bool:
        """True when bytes after the latest whole request have come: the head of the next
        one, not yet complete (each parser's subclass says)."""
        raise NotImplementedError

    def current_cycle(self) -> object:
        """The latest request cycle uvicorn started: a new one means a complete head."""
        return self.cycle

    def default_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers uvicorn puts on every answer (date, server)."""
        headers: list[tuple[bytes, bytes]] = self.server_state.default_headers
        return headers

    def open_connections(self) -> int:
        """The server's open connections, this one included (uvicorn's count)."""
        return len(self.connections)

    def forget_connection(self) -> None:
        """Count this connection out of the server's open ones now, as uvicorn does when it
        is lost: a closed transport may only tell so after the next reads are handled."""
        self.connections.discard(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, though they are ones.
        self._head_transport = cast(asyncio.Transport, transport)
        super().connection_made(transport)
        self._start_head_clock()
        if self.open_connections() >= self.connections_max:
            self._make_room()

    def _make_room(self) -> None:
        """At `connections_max`, close the connection that has waited longest for its head,
        so that slow clients cannot keep a new one out (uvicorn would answer it 503). When
        no other connection waits for a head, uvicorn's 503 stands."""
        oldest = next(iter(self.waiting))
        if oldest is self:
            return
        waited = asyncio.get_running_loop().time() - self.waiting[oldest]
        detail = (
            f"no complete request line and headers after {waited:.1f} s, with "
            f"{self.open_connections()} connections open (at most {self.connections_max})"
        )
        oldest._refuse("request_timeout", detail)

    def data_received(self, data: bytes) -> None:
        self._stop_idle_clock()
        if self._head_timer is None and self.is_between_requests():
            # The first byte of the next request on this connection, or of the rest of the
            # body of one answered before it was read.
            self._start_head_clock(draining=not self.request_read())
        if self._head_timer is not None and not self._draining and self._head_overflows(data):
            self._refuse(
                "payload_too_large", f"request heads are at most {self.head_bytes_max} bytes"
            )
            return
        cycle = self.current_cycle()
        super().data_received(data)
        if self._head_timer is None:
            return
        if self.current_cycle() is not cycle:
            self._stop_head_clock()  # a complete head: its body is BodyGuard's to bound
            return
        if self._draining:
            if self.request_read():  # all of it dropped
                self._stop_head_clock()
                if self.next_request_begun():
                    # The next request's head, bounded as any (what of it came in this same
                    # read is not counted: lenient by one read at most).
                    self._start_head_clock()
                else:  # idle, as after any answer: keep-alive's time, then closed quietly
                    self._idle_timer = asyncio.get_running_loop().call_later(
                        self.keep_alive_seconds, self._close_quietly
                    )
                return
            self._head_bytes += len(data)
            if self._head_bytes > self.body_bytes_max:
                self._close_quietly()
            return
        # Everything received since the clock started is head: the head is not complete yet.
        self._head_bytes += len(data)
        if self._head_bytes > self.head_bytes_max:
            self._refuse(
                "payload_too_large", f"request heads are at most {self.head_bytes_max} bytes"
            )

    def _head_overflows(self, data: bytes) -> bool:
        """Whether the head, with what of `data` belongs to it, passes `head_bytes_max`,
        counted before the parser sees it: a head that ends within one read was otherwise
        never counted (found by review: 100 KB heads sent in one write were answered 200,
        and a URL over 64 KiB got llhttp's "not valid HTTP/1.1")."""
        window = self._head_tail + data
        ends = [end for end in (window.find(b"\r\n\r\n"), window.find(b"\n\n")) if end >= 0]
        head = len(data) if not ends else max(0, min(ends) + 2 - len(self._head_tail))
        self._head_tail = window[-3:]
        return self._head_bytes + head > self.head_bytes_max

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_clock()
        self._stop_idle_clock()
        super().connection_lost(exc)

    def _start_head_clock(self, *, draining: bool = False) -> None:
        self._head_bytes = 0
        self._head_tail = b""
        self._draining = draining
        loop = asyncio.get_running_loop()
        self._head_timer = loop.call_later(self.head_seconds, self._on_head_timeout)
        self.waiting[self] = loop.time()

    def _stop_head_clock(self) -> None:
        self.waiting.pop(self, None)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _stop_idle_clock(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _on_head_timeout(self) -> None:
        if self._draining:  # the request was answered: no second answer
            self._close_quietly()
            return
        detail = f"no complete request line and headers within {self.head_seconds:g} s"
        self._refuse("request_timeout", detail)

    def _close_quietly(self) -> None:
        self._stop_head_clock()
        self._stop_idle_clock()
        transport = self._head_transport
        if transport is not None and not transport.is_closing():
            transport.close()
            self.forget_connection()

    def send_400_response(self, msg: str) -> None:
        """What uvicorn calls when its parser refuses the bytes received (both protocols):
        the same answer as a problem, closing the connection."""
        self._refuse("malformed_request", "the request line or headers are not valid HTTP/1.1")

    def _refuse(self, code: str, detail: str) -> None:
        """Answer a problem and close; the parser has no request, so uvicorn sends nothing.
        A connection whose request was answered while the rest of its body came is closed
        with no second answer (found by review: made room for a new connection, it was sent
        a 408)."""
        if self._draining:
            self._close_quietly()
            return
        self._stop_head_clock()
        transport = self._head_transport
        if transport is None or transport.is_closing():
            return
        if self.is_between_requests():  # else a route has the request, and counts it (review)
            type(self).refused(code)
        transport.write(problem_answer(code, detail, self.default_headers()))
        transport.close()
        self.forget_connection()


def problem_answer(code: str, detail: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole HTTP/1.1 answer carrying the problem of `code`, closing the connection."""
    body = json.dumps(problem_body(code, detail), separators=(",", ":")).encode()
    status = int(str(problem_body(code, detail)["status"]))
    lines = [b"HTTP/1.1 %d %s" % (status, REASONS.get(status, b""))]
    lines += [name + b": " + value for name, value in headers]
    lines += [
        b"content-type: " + PROBLEM_MEDIA_TYPE.encode(),
        b"x-content-type-options: nosniff",
        b"content-length: %d" % len(body),
        b"connection: close",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class HeadBoundHttpTools(HeadBound, HttpToolsProtocol):
    """uvicorn's httptools (llhttp) protocol with the head bound."""

    _read_cycle: Any = None  # the request cycle whose message the parser last completed
    _next_begun = False  # bytes of a message after that one have come

    def on_message_begin(self) -> None:
        self._next_begun = True
        super().on_message_begin()

    def on_message_complete(self) -> None:
        # Called by the parser even for a request answered already, whose end uvicorn drops.
        # Its cycle is still the latest: the next one starts with the next complete head.
        # (A flag set here and cleared at the next message's begin had taken the rest of a
        # body and a next head in one read for more body: found by review.)
        self._read_cycle = self.cycle
        self._next_begun = False
        super().on_message_complete()

    def request_read(self) -> bool:
        return self.cycle is None or self._read_cycle is self.cycle

    def next_request_begun(self) -> bool:
        return self._next_begun


class HeadBoundH11(HeadBound, H11Protocol):
    """uvicorn's h11 protocol with the head bound."""

    conn: h11.Connection

    def request_read(self) -> bool:
        return self.conn.their_state is not h11.SEND_BODY

    def next_request_begun(self) -> bool:
        return bool(self.conn.trailing_data[0])  # received, not yet an event: a partial head


PROTOCOLS: Final[dict[str, type[HeadBound]]] = {
    "httptools": HeadBoundHttpTools,
    "h11": HeadBoundH11,
}


def protocol_class(
    settings: Settings,
    parser: str = "httptools",
    refused: Callable[[str], None] = lambda code: None,
) -> type[asyncio.Protocol]:
    """The HTTP protocol class for uvicorn's `http=`, bound by `settings`; `refused` is told
    the problem code of each request it answers itself."""
    base = PROTOCOLS[parser]
    attributes: dict[str, Any] = {
        "head_seconds": settings.request_head_seconds,
        "head_bytes_max": settings.request_head_bytes_max,
        "body_bytes_max": settings.body_bytes_max,
        "keep_alive_seconds": settings.keep_alive_seconds,
        "connections_max": settings.connections_max,
        "waiting": {},
        "refused": staticmethod(refused),
        "__module__": __name__,
    }
    return cast(type[asyncio.Protocol], type(f"{base.__name__}Configured", (base,), attributes))


def ensure_file_limit(settings: Settings) -> int:
    """Let the process hold `connections_max` sockets beside its own files: raise its soft
    limit on open files as far as needed, up to the hard limit; the limit now in force. A hard
    limit too low raises ValueError: `connections_max` would be met by failing accepts."""
    needed = settings.connections_max + FILES_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ValueError(
            f"TANLIAN_CONNECTIONS_MAX {settings.connections_max} needs {needed} open files, "
            f"over this process's hard limit of {hard}: lower it, or raise the limit"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return needed


# uvicorn's warnings about one request from outside: a line or two each, as fast as anyone
# sends them (found by review: 1,000 requests wrote 3,000 lines in half a second, one of them
# advice to install a WebSocket library the API does not use). The answers say what was
# wrong: a malformed request gets its 400 problem (`HeadBound.send_400_response`), an
# upgrade request its ordinary answer.
PER_REQUEST_WARNINGS: Final = (
    "Invalid HTTP request received.",
    "Unsupported upgrade request.",
    "No supported WebSocket library detected.",
)


class _PerRequestWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(PER_REQUEST_WARNINGS)


def _quiet_per_request_warnings() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _PerRequestWarnings) for f in logger.filters):
        logger.addFilter(_PerRequestWarnings())


def server_config(app: Any, settings: Settings, parser: str = "httptools") -> uvicorn.Config:
    """uvicorn's configuration for a node: its bounds from `settings`, uvloop and httptools
    (measured in docs/decisions/0005-serving.md), and nothing the API does not use. What it
    refuses before the application sees a request is counted in the app's `/metrics`."""
    metrics = getattr(getattr(app, "state", None), "metrics", None)
    refused = (lambda code: None) if metrics is None else metrics.refused_early
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=protocol_class(settings, parser, refused),
        ws="none",  # the API has no WebSocket
        lifespan="on",  # a node that cannot start its block loop must not serve
        log_config=None,  # the node's own (`api.logs`): every line with its time
        log_level="warning",
        access_log=False,  # one line per request is no node's log; /metrics counts them
        proxy_headers=False,  # nothing reads the client's address: trust no X-Forwarded-For
        limit_concurrency=None,  # HeadBound keeps connections_max, answering a problem
        timeout_keep_alive=settings.keep_alive_seconds,
        h11_max_incomplete_event_size=settings.request_head_bytes_max,
        # A stop waits this long for answers under way, then ends them: two exports read by
        # nobody had held a SIGTERM for 102 s (found by review), past a supervisor's patience.
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )
    _quiet_per_request_warnings()  # after the Config, which configures uvicorn's logging
    return config
