"""A small typed client for a node's HTTP API (SPEC §7), for the command line and for scripts.

    with Client("http://127.0.0.1:8000") as client:
        head = client.checkpoint()

Every answer is outside input and is read as such: a JSON answer is read up to
`ANSWER_BYTES_MAX` and decoded strictly (SPEC §2.1), an export is read line by line with each
line bounded (like `tanlian verify chain --export`), and nothing from the node ever surfaces as
an httpx traceback. Failures are one exception with a stable code:

    LedgerError
    └── ClientError   the problem's own `code` (SPEC §7.3) for an RFC 9457 answer,
                      node_unreachable (no connection, or no answer in time),
                      bad_answer (not JSON, too large, not the expected shape),
                      bad_url (a URL that is not http(s)://host)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import Any, Final, Self

import httpcore
import httpx

from api.media import PROBLEM_MEDIA_TYPE
from ledger.encoding import JSON, canonical, decode
from ledger.errors import LedgerError, printable
from ledger.limits import (
    BLOCK_TRANSACTIONS_MAX_DEFAULT,
    HTTP_IDLE_REUSE_SECONDS_MAX,
    TRANSACTION_BYTES_MAX_DEFAULT,
)
from ledger.transactions import Envelope
from ledger.verification import LINE_OVERHEAD_BYTES, LINE_SPACING_FACTOR

ANSWER_BYTES_MAX: Final = 64 * 1024 * 1024  # the largest JSON answer read into memory
# A checkpoint (a header and up to VALIDATORS_MAX signatures) or a consistency proof (two of
# them and at most 64 hashes) is a few kilobytes: a node is allowed this much, so a "checkpoint"
# of [{},{},...] cannot cost an auditor gigabytes of parsed objects.
SMALL_ANSWER_BYTES_MAX: Final = 1024 * 1024
TIMEOUT_SECONDS_DEFAULT: Final = 10.0  # connect, read (per chunk), write and pool, each
# A submission waiting for its commit is answered within the node's commit wait (at most
# 30 s, api.settings); the client waits this much longer before giving up on the answer.
COMMIT_WAIT_SECONDS_MAX: Final = 30.0
COMMIT_WAIT_MARGIN_SECONDS: Final = 5.0
# An export line of a chain with the default parameters (ledger.verification's bound); give
# `compute_line_bytes_max(genesis.params)` for a chain with others.
EXPORT_LINE_BYTES_MAX_DEFAULT: Final = (
    BLOCK_TRANSACTIONS_MAX_DEFAULT * TRANSACTION_BYTES_MAX_DEFAULT * LINE_SPACING_FACTOR
    + LINE_OVERHEAD_BYTES
)
REASON_CHARS_MAX: Final = 300  # how much of a transport error's text a message quotes
# What the command line allows a node: a whole one-shot answer (a read, a submission that
# waits for its commit) within ONE_ANSWER_SECONDS_MAX; a streamed export at least
# STREAM_PACE_BYTES_MIN bytes every STREAM_PACE_SECONDS (a long chain takes as long as it
# takes, but a node dripping bytes does not hold an auditor for ever).
ONE_ANSWER_SECONDS_MAX: Final = 60.0
STREAM_PACE_BYTES_MIN: Final = 64 * 1024
STREAM_PACE_SECONDS: Final = 30.0

assert ANSWER_BYTES_MAX >= 16 * 1024 * 1024, "a genesis file (16 MiB) must fit in an answer"


class ClientError(LedgerError):
    """A request that did not get the answer it asked for; `status` is the HTTP status, if
    any came back."""

    code = "bad_answer"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.detail = detail  # a problem's own detail (one printable line), if it was one


def _one_line(text: str, limit: int = REASON_CHARS_MAX) -> str:
    """Another party's words, fit for one line of a terminal (`ledger.errors.printable`)."""
    line = printable(" ".join(text.split()))
    return line if len(line) <= limit else f"{line[:limit]}…"


Submission = Envelope | Mapping[str, Any]


class Client:
    """A node's API at `base_url`; a context manager that closes its connections."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = TIMEOUT_SECONDS_DEFAULT,
        answer_seconds_max: float | None = None,
        answer_pace: tuple[int, float] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """`timeout` bounds each step (connecting, each read, ...); `answer_seconds_max`, if
        given, a whole request, from sending it to the last byte of its answer;
        `answer_pace` (bytes, seconds), if given, how slowly an answer may come: at least
        that many bytes in every window of that many seconds."""
        try:
            url = httpx.URL(base_url)
            url.host.encode("idna")  # what connecting does: an empty or long label fails here
        except (httpx.InvalidURL, TypeError, ValueError) as error:  # UnicodeError: a ValueError
            reason = _one_line(str(error))
            raise ClientError(f"{base_url!r} is not a URL: {reason}", code="bad_url") from error
        if url.scheme not in ("http", "https") or not url.host:
            raise ClientError(
                f"{base_url!r} is not an http:// or https:// URL with a host", code="bad_url"
            )
        if url.query or url.fragment:  # the API's paths go after it (found by review)
            raise ClientError(
                f"{base_url!r} is a node's address: it has no ?query or #fragment",
                code="bad_url",
            )
        self.base_url = str(url).rstrip("/")
        self.timeout = timeout
        self.answer_seconds_max = answer_seconds_max
        self.answer_pace = answer_pace
        limits = httpx.Limits(keepalive_expiry=HTTP_IDLE_REUSE_SECONDS_MAX)
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport or _BoundedTransport(limits=limits),
            follow_redirects=False,
            # No compression: a few kilobytes of gzip can decode to gigabytes, and httpx
            # decodes without a bound; an answer in any other encoding is refused unread.
            headers={"accept": "application/json", "accept-encoding": "identity"},
            limits=limits,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- reading --------------------------------------------------------------------------------

    def genesis(self) -> dict[str, Any]:
        """The genesis document the node serves (trust your own copy, not this one)."""
        return self._get("/v1/genesis")

    def checkpoint(self) -> dict[str, Any]:
        """The latest checkpoint `{"header", "certificate"}`."""
        return self._get("/v1/checkpoint", bytes_max=SMALL_ANSWER_BYTES_MAX)

    def checkpoint_at(self, height: int) -> dict[str, Any]:
        return self._get(f"/v1/checkpoints/{int(height)}", bytes_max=SMALL_ANSWER_BYTES_MAX)

    def consistency(self, from_height: int, to_height: int) -> dict[str, Any]:
        """The RFC 9162 consistency proof between two heights, with both checkpoints:
        `{"first_size", "second_size", "path", "first", "second"}`."""
        params = {"from_height": int(from_height), "to_height": int(to_height)}
        return self._get("/v1/proofs/consistency", params=params, bytes_max=SMALL_ANSWER_BYTES_MAX)

    def transaction(self, tx_id: str) -> dict[str, Any]:
        return self._get(f"/v1/transactions/{tx_id}")

    def receipt(self, retirement_id: str) -> dict[str, Any]:
        """The self-contained receipt of a retirement (SPEC §6.3)."""
        return self._get(f"/v1/retirements/{retirement_id}/receipt")

    def export_lines(
        self,
        from_height: int = 1,
        to_height: int | None = None,
        *,
        line_bytes_max: int = EXPORT_LINE_BYTES_MAX_DEFAULT,
    ) -> Iterator[bytes]:
        """Stream `GET /v1/export`: the genesis line, then one `{"block", "certificate"}` line
        per height, none longer than `line_bytes_max` + 1 bytes (a longer line comes in
        pieces, as `api.cli_verify.read_lines` gives it, so an auditor refuses the first).

        An export the node ended with a problem line (a block it could not read) raises
        `ClientError` with the problem's code, and so does one that ends without its last
        newline (cut short): neither can pass for a whole, shorter chain (found by review:
        `tanlian export --node` wrote either as a success)."""
        params: dict[str, int] = {"from_height": int(from_height)}
        if to_height is not None:
            params["to_height"] = int(to_height)
        with self._request("GET", "/v1/export", params=params) as response:
            if response.status_code != 200:
                self._raise_for(response)
            held = b""  # a piece without its newline: given once more follows
            try:
                for line in split_lines(response.iter_bytes(), line_bytes_max):
                    if held:
                        yield held
                        held = b""
                    if line.startswith(EXPORT_PROBLEM_START):
                        raise _export_problem(line)
                    if line.endswith(b"\n") or len(line) > line_bytes_max:
                        yield line  # whole, or a piece of a line too long: more follows
                    else:
                        held = line
            except httpx.HTTPError as error:
                raise self._transport_error(error) from error
            if held:
                raise ClientError("the node's export ended in the middle of a line: it was cut")

    # --- writing --------------------------------------------------------------------------------

    def submit(
        self, envelopes: Submission | Sequence[Submission], *, wait: bool = False
    ) -> dict[str, Any]:
        """Submit one envelope (answer `{"tx_id", "status", ...}`) or a list of them (answer
        `{"results": [...]}`); with `wait`, the node answers once committed (bounded).

        A single envelope the node rejects raises `ClientError` with the rule's code.
        """
        body: JSON
        if isinstance(envelopes, Envelope | Mapping):
            body = _envelope_json(envelopes)
        else:
            body = [_envelope_json(item) for item in envelopes]
        params = {"wait": "commit"} if wait else None
        return self._call(
            "POST",
            "/v1/transactions",
            params=params,
            content=canonical(body),
            headers={"content-type": "application/json"},
            timeout=self._submit_timeout(wait),
        )

    def forward(
        self, body: bytes, *, wait: bool = False, headers: Mapping[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """Submit a body as it came, unread (a follower forwarding its users' submissions),
        with `headers` besides its media type: the HTTP status (2xx) and the JSON object
        answered. A problem raises `ClientError` with the problem's code and status."""
        with self._request(
            "POST",
            "/v1/transactions",
            params={"wait": "commit"} if wait else None,
            content=body,
            headers={"content-type": "application/json", **(headers or {})},
            timeout=self._submit_timeout(wait),
        ) as response:
            if not 200 <= response.status_code < 300:
                self._raise_for(response)
            value = self._read_json(response)
        if not isinstance(value, dict):
            raise ClientError(
                f"POST /v1/transactions: expected a JSON object, got {type(value).__name__}",
                status=response.status_code,
            )
        return response.status_code, value

    # --- the plumbing ---------------------------------------------------------------------------

    def _submit_timeout(self, wait: bool) -> float:
        if not wait:
            return self.timeout
        return max(self.timeout, COMMIT_WAIT_SECONDS_MAX + COMMIT_WAIT_MARGIN_SECONDS)

    def _get(
        self,
        path: str,
        *,
        params: Mapping[str, int | str] | None = None,
        bytes_max: int = ANSWER_BYTES_MAX,
    ) -> dict[str, Any]:
        return self._call("GET", path, params=params, bytes_max=bytes_max)

    def _call(
        self, method: str, path: str, *, bytes_max: int = ANSWER_BYTES_MAX, **options: Any
    ) -> dict[str, Any]:
        with self._request(method, path, **options) as response:
            if not 200 <= response.status_code < 300:
                self._raise_for(response)
            value = self._read_json(response, bytes_max)
        if not isinstance(value, dict):
            raise ClientError(
                f"{method} {path}: expected a JSON object, got {type(value).__name__}",
                status=response.status_code,
            )
        return value

    @contextmanager
    def _request(self, method: str, path: str, **options: Any) -> Iterator[httpx.Response]:
        """An open, streamed response; transport failures become `ClientError`s. Its status
        line and headers must come within `answer_seconds_max` (ONE_ANSWER_SECONDS_MAX when
        none is set) of sending the request, however slowly they drip (`_BoundedTransport`);
        an answer in any encoding but identity is refused before a byte of it is read."""
        head_seconds = self.answer_seconds_max or ONE_ANSWER_SECONDS_MAX
        sent = time.monotonic()
        head_by = _DEADLINE.set(sent + head_seconds)
        try:
            with self._http.stream(method, path, **options) as response:
                _DEADLINE.set(None)  # the body has its own bounds (`_Deadline`, `_Pace`)
                encoding = response.headers.get("content-encoding", "").strip().lower()
                if encoding not in ("", "identity"):
                    raise ClientError(
                        f"{path}: the node answered in content-encoding"
                        f" {_one_line(encoding, 64)!r}, where this client takes identity only",
                        status=response.status_code,
                    )
                if self.answer_seconds_max is not None:  # the whole answer, head included
                    response.stream = _Deadline(
                        response.stream, sent + self.answer_seconds_max, response.request
                    )
                if self.answer_pace is not None:
                    response.stream = _Pace(response.stream, self.answer_pace, response.request)
                yield response
        except httpx.HTTPError as error:
            head_deadline = _DEADLINE.get()  # None once the head has come
            if head_deadline is not None and time.monotonic() >= head_deadline:
                raise ClientError(
                    f"{self.base_url} answered too slowly: no status and headers within"
                    f" {head_seconds:g} s",
                    code="node_unreachable",
                ) from error
            raise self._transport_error(error, options.get("timeout", self.timeout)) from error
        except httpx.InvalidURL as error:
            raise ClientError(f"{path}: {_one_line(str(error))}", code="bad_url") from error
        finally:
            _DEADLINE.reset(head_by)

    def _transport_error(self, error: httpx.HTTPError, timeout: float | None = None) -> ClientError:
        """`error` as this client says it; `timeout`: the request's, when not the client's
        (a submission that waits for its commit has a longer one: its message had named the
        client's default, found by review)."""
        reason = _one_line(str(error)) or type(error).__name__
        if isinstance(error, _TooSlow):  # it answered, but slower than this client allows
            return ClientError(
                f"{self.base_url} answered too slowly: {reason}", code="node_unreachable"
            )
        if isinstance(error, httpx.TimeoutException):
            return ClientError(
                f"{self.base_url} did not answer within"
                f" {self.timeout if timeout is None else timeout:g} s ({reason})",
                code="node_unreachable",
            )
        if isinstance(error, httpx.UnsupportedProtocol):
            return ClientError(f"{self.base_url}: {reason}", code="bad_url")
        if isinstance(error, httpx.NetworkError | httpx.ProxyError):
            return ClientError(f"cannot reach {self.base_url}: {reason}", code="node_unreachable")
        # ProtocolError, DecodingError, TooManyRedirects...: the node answered, badly
        return ClientError(f"{self.base_url} answered badly: {reason}", code="bad_answer")

    def _read_body(self, response: httpx.Response, bytes_max: int = ANSWER_BYTES_MAX) -> bytes:
        """The body, refused beyond `bytes_max` before it is all in memory."""
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > bytes_max:
            raise self._too_large(response, bytes_max)
        body = bytearray()
        try:
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > bytes_max:
                    raise self._too_large(response, bytes_max)
        except httpx.HTTPError as error:
            raise self._transport_error(error) from error
        return bytes(body)

    def _too_large(self, response: httpx.Response, bytes_max: int) -> ClientError:
        return ClientError(
            f"{response.request.url.path}: the answer is over {bytes_max} bytes",
            status=response.status_code,
        )

    def _read_json(self, response: httpx.Response, bytes_max: int = ANSWER_BYTES_MAX) -> JSON:
        body = self._read_body(response, bytes_max)
        try:
            return decode(body)
        except LedgerError as error:
            raise ClientError(
                f"{response.request.url.path}: HTTP {response.status_code} with an answer that "
                f"is not acceptable JSON: {error.message}",
                status=response.status_code,
            ) from error

    def _raise_for(self, response: httpx.Response) -> None:
        """Raise the error a non-2xx answer stands for: its problem's code, if it is one."""
        status = response.status_code
        path = response.request.url.path
        media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if status < 400:
            raise ClientError(f"{path}: unexpected HTTP {status}", status=status)
        try:
            value = self._read_json(response, SMALL_ANSWER_BYTES_MAX)  # a problem: < 2 KB
        except ClientError as error:
            if error.code != "bad_answer":
                raise
            value = None
        if not isinstance(value, dict) or not isinstance(value.get("code"), str):
            what = "problem" if media_type == PROBLEM_MEDIA_TYPE else media_type or "answer"
            raise ClientError(f"{path}: HTTP {status} with a malformed {what}", status=status)
        code = _one_line(value["code"], 64)
        detail = value.get("detail")
        detail = _one_line(detail) if isinstance(detail, str) and detail else code
        raise ClientError(f"{detail} (HTTP {status})", code=code, status=status, detail=detail)


# The moment (monotonic) by which the request under way in this thread must have its status
# line and headers, or None: every read and write of its connection waits no longer.
_DEADLINE: ContextVar[float | None] = ContextVar("tanlian_client_deadline", default=None)


def _within_deadline(timeout: float | None) -> float | None:
    """A socket operation's timeout, cut to what is left before `_DEADLINE`."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = max(deadline - time.monotonic(), 0.001)
    return left if timeout is None else min(timeout, left)


class _BoundedStream(httpcore.NetworkStream):
    """A connection whose every read and write waits at most until `_DEADLINE`: httpx bounds
    each read, so a node sending one header byte every few seconds held a request for days."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _within_deadline(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _within_deadline(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        inner = self._stream.start_tls(ssl_context, server_hostname, _within_deadline(timeout))
        return _BoundedStream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _BoundedBackend(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._backend.connect_tcp(
            host, port, _within_deadline(timeout), local_address, socket_options
        )
        return _BoundedStream(stream)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._backend.connect_unix_socket(path, _within_deadline(timeout), socket_options)
        return _BoundedStream(stream)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _BoundedTransport(httpx.HTTPTransport):
    """httpx's own transport, its connections `_BoundedStream`s. httpx takes no network
    backend, so the pool it builds is given one (httpcore's documented `network_backend`,
    set on the pool before it opens any connection; pinned versions, and a test)."""

    def __init__(self, *, limits: httpx.Limits) -> None:
        super().__init__(limits=limits)
        pool = self._pool
        assert isinstance(pool, httpcore.ConnectionPool)
        pool._network_backend = _BoundedBackend(pool._network_backend)


class _TooSlow(httpx.ReadTimeout):
    """An answer that came, but slower than `_Deadline` or `_Pace` allow."""


class _Deadline(httpx.SyncByteStream):
    """An answer's bytes, refused (as a read timeout) once `deadline` (monotonic) passes: a
    node dripping an answer byte by byte must not hold its reader for ever."""

    def __init__(self, stream: Any, deadline: float, request: httpx.Request) -> None:
        self._stream = stream
        self._deadline = deadline
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._stream:
            if time.monotonic() > self._deadline:
                raise _TooSlow("the whole answer took too long", request=self._request)
            yield chunk

    def close(self) -> None:
        self._stream.close()


class _Pace(httpx.SyncByteStream):
    """An answer's bytes, refused (as a read timeout) once a window of `pace[1]` seconds has
    brought fewer than `pace[0]` bytes: a node that keeps a stream alive byte by byte."""

    def __init__(self, stream: Any, pace: tuple[int, float], request: httpx.Request) -> None:
        self._stream = stream
        self._bytes_min, self._seconds = pace
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        window_end = time.monotonic() + self._seconds
        received = 0
        for chunk in self._stream:
            received += len(chunk)
            now = time.monotonic()
            if now >= window_end:
                if received < self._bytes_min:
                    raise _TooSlow(
                        f"the answer came slower than {self._bytes_min} bytes in"
                        f" {self._seconds:g} s",
                        request=self._request,
                    )
                window_end, received = now + self._seconds, 0
            yield chunk

    def close(self) -> None:
        self._stream.close()


def _envelope_json(item: Submission) -> JSON:
    if isinstance(item, Envelope):
        return item.to_json()
    return dict(item)


# How a node ends an export it cannot finish (api.routes.chain): canonical JSON, one key.
EXPORT_PROBLEM_START: Final = b'{"problem":'


def _export_problem(line: bytes) -> ClientError:
    """The error of an export's closing problem line."""
    try:
        problem = decode(line)["problem"]
        code, detail = problem["code"], problem["detail"]
    except (LedgerError, KeyError, TypeError):
        code = detail = None
    if not isinstance(code, str) or not isinstance(detail, str):
        return ClientError("the node ended its export with a malformed problem line")
    code, detail = _one_line(code, 64), _one_line(detail)
    return ClientError(f"the node ended its export unfinished: {detail}", code=code, detail=detail)


def split_lines(chunks: Iterable[bytes], line_bytes_max: int) -> Iterator[bytes]:
    """The lines of a byte stream, as `IO.readline(line_bytes_max + 1)` gives them: each ends
    at its newline or after `line_bytes_max` + 1 bytes, so at most that much is held."""
    assert line_bytes_max >= 1
    piece = line_bytes_max + 1
    buffer = bytearray()
    scanned = 0  # no newline in buffer[:scanned]
    for chunk in chunks:
        buffer += chunk
        while True:
            newline = buffer.find(b"\n", scanned, piece)
            if newline != -1:
                with memoryview(buffer) as view:
                    line = bytes(view[: newline + 1])
                yield line
                del buffer[: newline + 1]
                scanned = 0
            elif len(buffer) >= piece:
                with memoryview(buffer) as view:  # one copy of a long piece, not two
                    taken = bytes(view[:piece])
                yield taken
                del buffer[:piece]
                scanned = 0
            else:
                scanned = len(buffer)
                break
    if buffer:
        yield bytes(buffer)
