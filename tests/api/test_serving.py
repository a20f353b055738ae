"""Serving against slow and numerous clients (api.serving): a real `tanlian dev` process on
loopback with a short head bound, and uvicorn servers in this process with both HTTP parsers.

Raw sockets play the clients, so the bytes on the wire are exactly the test's; answers are
read with the standard library's HTTP response reader. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import re
import resource
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.responses import StreamingResponse

from api.app import HeadAsGet
from api.media import PROBLEM_MEDIA_TYPE
from api.routes.chain import ClosingStream
from api.routes.metrics import Metrics
from api.serving import FILES_RESERVE, PER_REQUEST_WARNINGS, server_config
from api.settings import CONNECTIONS_MAX as CONNECTIONS_MAX_DEFAULT
from api.settings import Settings
from tests.api.test_cli import TANLIAN, environment, free_port, tanlian
from tests.api.test_client_monitor import RunningNode, running_dev_node

HEAD_SECONDS = 1.0  # the node's request_head_seconds in these tests
CONNECTIONS_MAX = 16  # the node's connections_max in these tests
MARGIN_SECONDS = 0.8  # scheduling on a loaded 2-core machine
TRICKLE_SECONDS = 0.5  # one header byte this often: far slower than any honest client
ANSWER_WAIT_SECONDS = 10.0  # the longest any read here waits
HEALTHZ = b"GET /healthz HTTP/1.1\r\nhost: node\r\n\r\n"
NEVER_ENDING_HEAD = b"GET /healthz HTTP/1.1\r\nhost: node\r\nx-slow: " + b"z" * 200


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    """`tanlian dev` with a head bound of HEAD_SECONDS and at most CONNECTIONS_MAX
    connections, set through the environment."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TANLIAN_REQUEST_HEAD_SECONDS", str(HEAD_SECONDS))
        patch.setenv("TANLIAN_CONNECTIONS_MAX", str(CONNECTIONS_MAX))
        with running_dev_node(tmp_path_factory.mktemp("serving"), simulate=False) as running:
            patch.undo()
            yield running


def address(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").rpartition(":")
    return host, int(port)


def connect(where: tuple[str, int]) -> socket.socket:
    connection = socket.create_connection(where, timeout=ANSWER_WAIT_SECONDS)
    connection.settimeout(ANSWER_WAIT_SECONDS)
    return connection


def read_answer(connection: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One answer from the connection: status, headers (lower-cased names), body."""
    answer = http.client.HTTPResponse(connection)
    answer.begin()
    body = answer.read()
    return answer.status, {k.lower(): v for k, v in answer.getheaders()}, body


def is_closed(connection: socket.socket) -> bool:
    """Whether the node has closed the connection (within ANSWER_WAIT_SECONDS)."""
    try:
        return connection.recv(1) == b""
    except ConnectionResetError:
        return True


def assert_head_timeout(answer: tuple[int, dict[str, str], bytes]) -> None:
    status, headers, body = answer
    assert status == 408, body
    assert headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert headers["connection"] == "close"
    problem = json.loads(body)
    assert problem == {
        "type": "urn:tanlian:problem:request_timeout",
        "title": "The request took too long",
        "status": 408,
        "detail": f"no complete request line and headers within {HEAD_SECONDS:g} s",
        "code": "request_timeout",
    }


# --- a real node process -------------------------------------------------------------------------


def test_a_trickled_head_is_cut_off_while_other_clients_are_answered(node: RunningNode) -> None:
    slow = connect(address(node.url))
    answered = 0
    started = time.monotonic()
    with slow, httpx.Client(base_url=node.url, timeout=ANSWER_WAIT_SECONDS) as honest:
        for byte in NEVER_ENDING_HEAD:
            try:
                slow.send(bytes([byte]))
            except OSError:  # closed since the last look: its answer is there
                break
            assert honest.get("/healthz").status_code == 200
            answered += 1
            readable, _, _ = select.select([slow], [], [], TRICKLE_SECONDS)
            if readable:
                break
        cut_after = time.monotonic() - started
        assert_head_timeout(read_answer(slow))
        assert is_closed(slow)
    assert HEAD_SECONDS - 0.1 <= cut_after <= HEAD_SECONDS + TRICKLE_SECONDS + MARGIN_SECONDS
    assert answered >= HEAD_SECONDS / TRICKLE_SECONDS


def test_slow_clients_beyond_connections_max_make_room_for_others(node: RunningNode) -> None:
    """Three times as many slow clients as the node takes connections: each new one closes
    the slowest, and an honest client, kept alive or new, is answered throughout."""
    where = address(node.url)
    slow: list[socket.socket] = []
    with httpx.Client(base_url=node.url, timeout=ANSWER_WAIT_SECONDS) as honest:
        try:
            for _ in range(3 * CONNECTIONS_MAX):
                slow.append(connect(where))
                slow[-1].sendall(NEVER_ENDING_HEAD[:20])
                assert honest.get("/healthz").status_code == 200
            with connect(where) as new:
                new.sendall(HEALTHZ)
                assert read_answer(new)[0] == 200
            for connection in slow[: 2 * CONNECTIONS_MAX]:  # at least these made room
                assert read_answer(connection)[0] == 408
                assert is_closed(connection)
        finally:
            for connection in slow:
                connection.close()


def test_a_silent_connection_is_answered_408_and_closed(node: RunningNode) -> None:
    started = time.monotonic()
    with connect(address(node.url)) as silent:
        assert_head_timeout(read_answer(silent))
        waited = time.monotonic() - started
        assert is_closed(silent)
    assert HEAD_SECONDS - 0.1 <= waited <= HEAD_SECONDS + MARGIN_SECONDS


def test_a_kept_alive_connection_idles_between_requests_unharmed(node: RunningNode) -> None:
    """The head clock does not run while a kept-alive connection idles (keep-alive bounds
    that, at 5 s here), but it does from the next request's first byte."""
    with connect(address(node.url)) as kept:
        kept.sendall(HEALTHZ)
        assert read_answer(kept)[0] == 200
        time.sleep(1.5 * HEAD_SECONDS)
        kept.sendall(HEALTHZ)
        assert read_answer(kept)[0] == 200
        kept.sendall(NEVER_ENDING_HEAD)
        started = time.monotonic()
        assert_head_timeout(read_answer(kept))
        waited = time.monotonic() - started
    assert HEAD_SECONDS - 0.1 <= waited <= HEAD_SECONDS + MARGIN_SECONDS


def test_a_head_over_its_byte_limit_is_answered_413(node: RunningNode) -> None:
    limit = Settings(data=node.data).request_head_bytes_max
    with connect(address(node.url)) as large:
        large.sendall(NEVER_ENDING_HEAD + b"z" * limit)
        status, headers, body = read_answer(large)
        assert is_closed(large)
    assert (status, headers["content-type"]) == (413, PROBLEM_MEDIA_TYPE)
    assert json.loads(body)["detail"] == f"request heads are at most {limit} bytes"


def test_requests_the_server_answers_itself_are_counted_in_metrics(node: RunningNode) -> None:
    """Found by review: a head too large, a malformed request or a head that never ends was
    answered before any route saw it, so nothing in /metrics showed an operator the
    attack."""

    def refused() -> dict[str, float]:
        text = httpx.get(f"{node.url}/metrics", timeout=ANSWER_WAIT_SECONDS).text
        return {
            code: float(value)
            for code, value in re.findall(
                r'^tanlian_http_refused_before_routing_total\{code="(\w+)"\} (\S+)$',
                text,
                re.MULTILINE,
            )
        }

    before = refused()
    limit = Settings(data=node.data).request_head_bytes_max
    with connect(address(node.url)) as large:
        large.sendall(NEVER_ENDING_HEAD + b"z" * limit)
        assert read_answer(large)[0] == 413
    with connect(address(node.url)) as bad:
        bad.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert read_answer(bad)[0] == 400
    after = refused()
    for code in ("payload_too_large", "malformed_request"):
        assert after.get(code, 0) == before.get(code, 0) + 1, (before, after)


def test_a_bad_setting_in_the_environment_is_a_usage_error(
    node: RunningNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TANLIAN_REQUEST_HEAD_SECONDS", "-1")
    done = tanlian("dev", "--data", node.data, "--port", free_port())
    assert done.returncode == 2
    assert "TANLIAN_REQUEST_HEAD_SECONDS" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_hold_on_all_bodies_below_one_body_is_refused_naming_both() -> None:
    """Found by review: TANLIAN_REQUEST_BODIES_BYTES_MAX below TANLIAN_BODY_BYTES_MAX was
    taken, and every body above it was then refused 503 for good."""
    with pytest.raises(ValueError, match="no body above it could ever be taken") as refused:
        Settings.from_environment(
            {"TANLIAN_REQUEST_BODIES_BYTES_MAX": "2048"}, data=Path("d"), host="h", port=1
        )
    assert str(refused.value).startswith(
        "TANLIAN_REQUEST_BODIES_BYTES_MAX (2048) is below TANLIAN_BODY_BYTES_MAX (4194304)"
    )
    equal = {"TANLIAN_REQUEST_BODIES_BYTES_MAX": "4096", "TANLIAN_BODY_BYTES_MAX": "4096"}
    assert Settings.from_environment(equal, data=Path("d")).request_bodies_bytes_max == 4096


def limit_open_files(soft: int, hard: int) -> Callable[[], None]:
    def limit() -> None:  # in the child, before it runs
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return limit


def test_the_node_raises_its_open_file_limit_to_hold_connections_max() -> None:
    program = (
        "from pathlib import Path; from api.serving import ensure_file_limit; "
        "from api.settings import Settings; import resource; "
        "print(ensure_file_limit(Settings(data=Path('d'), connections_max=4000)), "
        "resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit_open_files(256, 8192),
        check=True,
    )
    assert done.stdout.split() == [str(4000 + FILES_RESERVE)] * 2


def test_a_node_refuses_to_start_when_connections_max_needs_more_files(
    node: RunningNode,
) -> None:
    done = subprocess.run(
        [str(TANLIAN), "dev", "--data", str(node.data), "--port", str(free_port())],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(),
        preexec_fn=limit_open_files(256, 1024),
    )
    assert done.returncode == 2
    assert f"needs {CONNECTIONS_MAX_DEFAULT + FILES_RESERVE} open files" in done.stderr
    assert "hard limit of 1024" in done.stderr
    assert "Traceback" not in done.stderr


def test_settings_come_from_the_command_line_then_the_environment() -> None:
    environment = {
        "TANLIAN_REQUEST_HEAD_SECONDS": "2.5",
        "TANLIAN_CONNECTIONS_MAX": "10",
        "TANLIAN_PORT": "1",  # where a node listens is the command line's alone
    }
    settings = Settings.from_environment(environment, data=Path("d"), port=9000)
    assert (settings.request_head_seconds, settings.connections_max) == (2.5, 10)
    assert (settings.port, settings.keep_alive_seconds) == (9000, 5)
    with pytest.raises(ValueError, match=r"^TANLIAN_KEEP_ALIVE_SECONDS: "):
        Settings.from_environment({"TANLIAN_KEEP_ALIVE_SECONDS": "0"}, data=Path("d"))
    with pytest.raises(ValueError, match=r"^port: "):
        Settings.from_environment({}, data=Path("d"), port=0)


# --- uvicorn in this process, with each parser ---------------------------------------------------

Scope = MutableMapping[str, Any]


async def tiny_app(scope: Scope, receive: Any, send: Any) -> None:
    """Answers every request 200 "ok" at once; handles the lifespan uvicorn runs."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


@contextlib.contextmanager
def serving(
    settings: Settings,
    parser: str,
    app: Any = tiny_app,
    servers: list[uvicorn.Server] | None = None,
) -> Iterator[tuple[str, int]]:
    """`server_config(settings)` serving `app` with `parser`, in a thread, until the block
    ends; the server is appended to `servers` when given."""
    config = server_config(app, settings, parser)
    server = uvicorn.Server(config)
    if servers is not None:
        servers.append(server)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + ANSWER_WAIT_SECONDS
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.02)
        yield settings.host, settings.port
    finally:
        server.should_exit = True
        thread.join(timeout=ANSWER_WAIT_SECONDS)
    assert not thread.is_alive()


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_each_parser_bounds_heads_and_idle_connections(parser: str, tmp_path: Path) -> None:
    settings = Settings(
        data=tmp_path, port=free_port(), request_head_seconds=0.5, keep_alive_seconds=1
    )
    with serving(settings, parser) as where:
        with connect(where) as client:
            client.sendall(HEALTHZ)
            assert read_answer(client)[0] == 200
            time.sleep(0.7)  # longer than the head bound, shorter than keep-alive
            client.sendall(HEALTHZ[:10])
            time.sleep(0.3)
            client.sendall(HEALTHZ[10:])
            assert read_answer(client)[0] == 200
            client.sendall(NEVER_ENDING_HEAD)
            started = time.monotonic()
            status, _, body = read_answer(client)
            assert 0.4 <= time.monotonic() - started <= 0.5 + MARGIN_SECONDS
            assert (status, json.loads(body)["code"]) == (408, "request_timeout")
        with connect(where) as idle:
            idle.sendall(HEALTHZ)
            assert read_answer(idle)[0] == 200
            started = time.monotonic()
            assert is_closed(idle)  # keep-alive ran out
            assert 0.9 <= time.monotonic() - started <= 1 + MARGIN_SECONDS


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_a_whole_head_over_its_byte_limit_in_one_read_is_answered_413(
    parser: str, tmp_path: Path
) -> None:
    """Found by review: a head that ended within one read was never counted (100 KB of
    headers in one write were answered 200; a URL over 64 KiB got llhttp's 400)."""
    settings = Settings(data=tmp_path, port=free_port())
    limit = settings.request_head_bytes_max
    large_header = b"GET /healthz HTTP/1.1\r\nhost: node\r\nx-big: " + b"z" * limit + b"\r\n\r\n"
    long_url = b"GET /healthz?" + b"q" * 70_000 + b" HTTP/1.1\r\nhost: node\r\n\r\n"
    # Within the bound, with a body larger than it in the same read: only the head counts
    # (`tiny_app` answers "ok" to anything).
    body = b"[" + b" " * (2 * limit) + b"]"
    within = (
        b"POST /v1/transactions HTTP/1.1\r\nhost: node\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nx-pad: " % len(body) + b"p" * (limit - 200) + b"\r\n\r\n" + body
    )
    with serving(settings, parser) as where:
        for head in (large_header, long_url):
            with connect(where) as client:
                client.sendall(head)
                status, headers, answer = read_answer(client)
                assert is_closed(client)
            assert (status, headers["x-content-type-options"]) == (413, "nosniff")
            assert json.loads(answer)["detail"] == f"request heads are at most {limit} bytes"
        with connect(where) as client:
            client.sendall(within)
            assert read_answer(client)[:3:2] == (200, b"ok")


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_connections_max_closes_the_longest_waiting_head_first(parser: str, tmp_path: Path) -> None:
    settings = Settings(data=tmp_path, port=free_port(), connections_max=3)
    with serving(settings, parser) as where, connect(where) as oldest, connect(where) as older:
        with connect(where) as third:
            status, _, body = read_answer(oldest)
            assert (status, json.loads(body)["code"]) == (408, "request_timeout")
            assert json.loads(body)["detail"].endswith(", with 3 connections open (at most 3)")
            third.sendall(HEALTHZ)
            assert read_answer(third)[0] == 200
        older.sendall(HEALTHZ)
        assert read_answer(older)[0] == 200


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_requests_beyond_connections_max_are_answered_503(parser: str, tmp_path: Path) -> None:
    """Connections kept alive between requests wait for no head: none is closed for a new
    one, which is answered an `overloaded` problem until one goes."""
    settings = Settings(data=tmp_path, port=free_port(), connections_max=3)
    with serving(settings, parser) as where:
        kept = [connect(where) for _ in range(2)]
        for connection in kept:
            connection.sendall(HEALTHZ)
            assert read_answer(connection)[0] == 200
        with connect(where) as third:
            third.sendall(HEALTHZ)
            status, headers, body = read_answer(third)
            assert (status, headers["content-type"]) == (503, PROBLEM_MEDIA_TYPE)
            assert (headers["connection"], headers["retry-after"]) == ("close", "1")
            assert json.loads(body) == {
                "type": "urn:tanlian:problem:overloaded",
                "title": "The node is overloaded: try again later",
                "status": 503,
                "detail": "3 connections open and 0 requests in flight (at most 3 of each)",
                "code": "overloaded",
            }
            assert is_closed(third)
        for connection in kept:
            connection.close()
        time.sleep(0.1)  # the node sees the closes
        with connect(where) as later:
            later.sendall(HEALTHZ)
            assert read_answer(later)[0] == 200


@pytest.mark.parametrize("parser", ["httptools", "h11"])
@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32,
        b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
    ],
    ids=["tls-hello", "header-without-colon"],
)
def test_bytes_that_are_not_http_are_answered_a_problem(
    parser: str, garbage: bytes, tmp_path: Path
) -> None:
    """uvicorn answers a request its parser refuses in plain text; the node answers the
    same 400 as an RFC 9457 problem, and closes the connection as uvicorn does."""
    settings = Settings(data=tmp_path, port=free_port())
    with serving(settings, parser) as where, connect(where) as client:
        client.sendall(garbage)
        status, headers, body = read_answer(client)
        assert (status, headers["content-type"]) == (400, PROBLEM_MEDIA_TYPE)
        assert headers["connection"] == "close"
        assert json.loads(body) == {
            "type": "urn:tanlian:problem:malformed_request",
            "title": "The request is not valid HTTP/1.1",
            "status": 400,
            "detail": "the request line or headers are not valid HTTP/1.1",
            "code": "malformed_request",
        }
        assert is_closed(client)
        with connect(where) as next_client:  # the server goes on
            next_client.sendall(HEALTHZ)
            assert read_answer(next_client)[0] == 200


def posted(size: int) -> bytes:
    """The head of a POST whose body is `size` bytes (the body not included)."""
    return b"POST /anything HTTP/1.1\r\nhost: node\r\ncontent-length: %d\r\n\r\n" % size


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_the_rest_of_a_body_answered_early_is_dropped_not_answered_again(
    parser: str, tmp_path: Path
) -> None:
    """Found by review: a request answered before its body was read (refused early, as
    `tiny_app` answers everything) had the rest of its body read as the next request's head:
    answered a second, unasked-for 413, then reset. Now the rest is dropped and the
    connection goes on; past the body bound, or the clock, it closes with no second answer."""
    settings = Settings(
        data=tmp_path,
        port=free_port(),
        request_head_seconds=2.0,
        keep_alive_seconds=1,
        body_bytes_max=256 * 1024,
    )
    with serving(settings, parser) as where:
        with connect(where) as client:
            client.sendall(posted(200_000))
            assert read_answer(client)[0] == 200
            for _ in range(20):  # 200 kB, far over the 16 KiB head bound, slower than a read
                client.sendall(b"x" * 10_000)
                time.sleep(0.01)
            client.sendall(HEALTHZ)
            status, _, body = read_answer(client)  # the answer to the next request, not a 413
            assert (status, body) == (200, b"ok")
        with connect(where) as client:  # more than the body bound: closed, not answered
            client.sendall(posted(10_000_000))
            assert read_answer(client)[0] == 200
            with contextlib.suppress(OSError):  # the node may reset what it no longer reads
                for _ in range(40):
                    client.sendall(b"x" * 10_000)
            try:
                rest = client.recv(65536)
            except ConnectionResetError:
                rest = b""
            assert rest == b""
        with connect(where) as client:  # a body that stops: closed on the clock, not answered
            client.sendall(posted(10_000) + b"x" * 100)
            assert read_answer(client)[0] == 200
            client.sendall(b"x" * 100)  # the clock starts; keep-alive's does not run
            started = time.monotonic()
            assert is_closed(client)
            assert 2.0 - MARGIN_SECONDS <= time.monotonic() - started <= 2.0 + MARGIN_SECONDS


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_after_the_rest_of_a_body_the_connection_is_as_after_any_answer(
    parser: str, tmp_path: Path
) -> None:
    """Found by review of the drain: an idle client was sent a 408 after the head clock (it
    had been started at once), the rest of a body and the start of a next head in one read
    had that head bounded as body (4 MiB, not 16 KiB), and a draining connection chosen to
    make room was sent a 408."""
    settings = Settings(
        data=tmp_path,
        port=free_port(),
        request_head_seconds=2.0,
        keep_alive_seconds=1,
        connections_max=3,
    )
    with serving(settings, parser) as where:
        with connect(where) as idle:  # idle after it: keep-alive's time, closed quietly
            idle.sendall(posted(100) + b"x" * 50)
            assert read_answer(idle)[0] == 200
            idle.sendall(b"x" * 50)
            started = time.monotonic()
            assert is_closed(idle)  # no answer came first: recv saw the end, not a 408
            assert 1.0 - MARGIN_SECONDS <= time.monotonic() - started <= 1.0 + MARGIN_SECONDS
        with connect(where) as client:  # the rest, then a head: bounded as a head
            client.sendall(posted(100) + b"x" * 50)
            assert read_answer(client)[0] == 200
            client.sendall(b"x" * 50 + b"GET /healthz HTTP/1.1\r\nhost: node\r\nx-big: ")
            for _ in range(17):  # just past 16 KiB, and no more: nothing unread at the close
                client.sendall(b"z" * 1000)
                time.sleep(0.01)
            status, _, body = read_answer(client)
            assert status in (400, 413), (status, body)  # not 200: the 16 KiB bound held
        with connect(where) as draining:  # made room for others: closed, not answered
            draining.sendall(posted(100) + b"x" * 50)
            assert read_answer(draining)[0] == 200
            draining.sendall(b"x" * 10)  # draining now, its clock running
            time.sleep(0.2)
            with connect(where), connect(where), connect(where):
                try:
                    rest = draining.recv(65536)
                except ConnectionResetError:
                    rest = b""
                assert rest == b""


# --- HTTP semantics on the real node -------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/genesis", "/healthz", "/", "/assets/explorer.css"])
def test_head_answers_gets_status_and_headers_without_a_body(node: RunningNode, path: str) -> None:
    """RFC 9110 §9.3.2. The GET after the HEAD on the same connection shows that no body
    bytes followed the HEAD's headers (they would be read as the GET's answer)."""
    with connect(address(node.url)) as client:
        client.sendall(f"HEAD {path} HTTP/1.1\r\nhost: node\r\n\r\n".encode())
        head = http.client.HTTPResponse(client, method="HEAD")
        head.begin()
        assert head.read() == b""
        head_headers = {k.lower(): v for k, v in head.getheaders()}
        client.sendall(f"GET {path} HTTP/1.1\r\nhost: node\r\n\r\n".encode())
        status, get_headers, body = read_answer(client)
    assert head.status == status == 200
    assert head_headers["content-type"] == get_headers["content-type"]
    assert int(head_headers["content-length"]) == len(body) > 0


def test_a_head_or_an_abandoned_export_keeps_no_store_open(node: RunningNode) -> None:
    """Found by review: a HEAD of /v1/export, or a GET whose client left mid-stream, kept
    the stream's store connection (two file descriptors) until a cyclic garbage collection,
    which a node makes rare: HEADs in a loop ran a node out of descriptors, and its pages
    then answered 500."""

    def descriptors() -> int:
        return len(os.listdir(f"/proc/{node.pid}/fd"))

    where = address(node.url)
    with connect(where) as client:  # one export read whole first: what it opens, it closes
        client.sendall(b"GET /v1/export HTTP/1.1\r\nhost: node\r\n\r\n")
        assert read_answer(client)[0] == 200
    before = descriptors()
    for _ in range(60):
        with connect(where) as client:
            client.sendall(b"HEAD /v1/export HTTP/1.1\r\nhost: node\r\n\r\n")
            head = http.client.HTTPResponse(client, method="HEAD")
            head.begin()
            assert head.status == 200
        with connect(where) as client:  # a GET left after its first bytes
            client.sendall(b"GET /v1/export HTTP/1.1\r\nhost: node\r\n\r\n")
            assert client.recv(64).startswith(b"HTTP/1.1 200")
    deadline = time.monotonic() + ANSWER_WAIT_SECONDS  # the last connections' ends
    while descriptors() > before + 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert descriptors() <= before + 4, (before, descriptors())  # not 240 more


def test_head_of_a_resource_without_get_is_405_naming_what_it_takes(node: RunningNode) -> None:
    with httpx.Client(base_url=node.url, timeout=ANSWER_WAIT_SECONDS) as client:
        answer = client.head("/v1/transactions")
    assert (answer.status_code, answer.headers["content-type"]) == (405, PROBLEM_MEDIA_TYPE)
    assert answer.headers["allow"] == "POST"


@pytest.mark.parametrize(
    "range_header", ["bytes=999999999-", "bytes=abc", "items=0-1", "bytes=5-1"]
)
def test_a_range_on_an_asset_is_ignored_rather_than_refused_in_plain_text(
    node: RunningNode, range_header: str
) -> None:
    # The docs' assets as the explorer's (found by review: plain text, 400 and 416).
    for path in ("/assets/explorer.js", "/docs-assets/swagger-ui.css"):
        with httpx.Client(base_url=node.url, timeout=ANSWER_WAIT_SECONDS) as client:
            whole = client.get(path)
            ranged = client.get(path, headers={"range": range_header})
        assert whole.status_code == ranged.status_code == 200, ranged.text
        assert ranged.content == whole.content and len(whole.content) > 1000
        assert "content-range" not in ranged.headers


def test_a_stream_its_client_stops_reading_is_dropped_and_gives_back_what_it_held(
    tmp_path: Path,
) -> None:
    """Found by review: an export whose client reads nothing kept its turn for ever, and then
    its connection (a close waits for the unsent bytes to drain). Past its grace and pace the
    stream ends, gives back what it held (its store, its turn), and the connection is
    dropped at once, no longer counted; the client gets what the kernel had taken and then
    the end, never the chunked body's last chunk, so it cannot take what it had for a whole,
    shorter chain."""
    ended: list[float] = []

    def chunks() -> Iterator[bytes]:
        while True:
            yield b"x" * 65536 + b"\n"

    async def exporting(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await tiny_app(scope, receive, send)
            return
        stream = ClosingStream(
            chunks(),
            media_type="application/x-ndjson",
            on_end=lambda: ended.append(time.monotonic()),
            grace_seconds=0.5,
            pace_bytes_min=1 << 30,  # past the grace, nothing more is the client's due
        )
        await stream(scope, receive, send)

    settings = Settings(data=tmp_path, port=free_port())
    servers: list[uvicorn.Server] = []
    with (
        serving(settings, "httptools", HeadAsGet(exporting), servers) as where,
        connect(where) as client,
    ):
        client.sendall(b"GET /v1/export HTTP/1.1\r\nhost: node\r\n\r\n")
        started = time.monotonic()
        while not ended and time.monotonic() - started < ANSWER_WAIT_SECONDS:
            time.sleep(0.05)  # reading nothing
        assert ended and ended[0] - started >= 0.5
        (server,) = servers
        while server.server_state.connections and time.monotonic() - started < 5:
            time.sleep(0.05)  # still reading nothing
        assert not server.server_state.connections  # dropped: not open, not counted
        received = b""
        while chunk := client.recv(1 << 20):  # what the kernel had taken, then the end
            received += chunk
        assert received.startswith(b"HTTP/1.1 200") and not received.endswith(b"0\r\n\r\n")


def test_a_head_of_a_streamed_answer_makes_no_body(tmp_path: Path) -> None:
    """Found by review: uvicorn writes nothing of a HEAD's body, so nothing slowed a streamed
    answer, and a HEAD of /v1/export read the whole chain (2 GiB in 3 s in the review's run,
    where a GET whose client reads nothing stalls after a few MiB)."""
    made = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal made
        for _ in range(20_000):
            made += 1
            yield b"x" * 65536

    async def exporting(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await tiny_app(scope, receive, send)
            return
        await StreamingResponse(chunks(), media_type="application/x-ndjson")(scope, receive, send)

    settings = Settings(data=tmp_path, port=free_port())
    with serving(settings, "httptools", HeadAsGet(exporting)) as where, connect(where) as client:
        client.sendall(b"HEAD /v1/export HTTP/1.1\r\nhost: node\r\n\r\n")
        head = http.client.HTTPResponse(client, method="HEAD")
        head.begin()
        assert head.status == 200 and head.read() == b""
        time.sleep(0.5)  # time enough to make thousands of chunks, were it still going
        assert made <= 2, made
        client.sendall(HEALTHZ)  # the connection serves the next request
        assert read_answer(client)[0] == 200


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_requests_from_outside_write_no_line_each_to_the_log(parser: str, tmp_path: Path) -> None:
    """Found by review: every malformed request wrote "Invalid HTTP request received." and
    every Upgrade header two lines (one advising a WebSocket library), as fast as anyone
    sent them. The answers say what was wrong; the log is the node's."""
    records: list[logging.LogRecord] = []

    class Recorded(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Recorded()
    logger = logging.getLogger("uvicorn.error")
    settings = Settings(data=tmp_path, port=free_port())
    with serving(settings, parser) as where:
        logger.addHandler(handler)
        try:
            with connect(where) as client:
                client.sendall(b"NOT HTTP AT ALL\r\n\r\n")
                assert read_answer(client)[0] == 400
            with connect(where) as client:
                client.sendall(
                    b"GET /healthz HTTP/1.1\r\nhost: node\r\nconnection: upgrade\r\n"
                    b"upgrade: websocket\r\n\r\n"
                )
                assert read_answer(client)[0] == 200
        finally:
            logger.removeHandler(handler)
    noise = [r.getMessage() for r in records if r.getMessage().startswith(PER_REQUEST_WARNINGS)]
    assert noise == []


# --- what the server answers itself is counted once -----------------------------------------


class _CountingApp:
    """Reads the whole body, then answers 200; remembers each request it was given."""

    def __init__(self) -> None:
        self.state = SimpleNamespace(metrics=Metrics())
        self.seen: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.seen.append(scope["path"])
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b"ok"})


def _refused(app: _CountingApp, code: str) -> float:
    value = app.state.metrics.registry.get_sample_value(
        "tanlian_http_refused_before_routing_total", {"code": code}
    )
    return value or 0.0


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_a_request_a_route_saw_is_not_counted_as_refused_before_routing(
    parser: str, tmp_path: Path
) -> None:
    """Found by review: a body that turned malformed after its head (a bad chunk size) was
    counted as refused before routing, though a route had the request (and counted it)."""
    settings = Settings(data=tmp_path, port=free_port())
    app = _CountingApp()
    with serving(settings, parser, app) as where, connect(where) as client:
        client.sendall(b"POST /v1/transactions HTTP/1.1\r\nhost: node\r\n"
                       b"transfer-encoding: chunked\r\n\r\n")  # fmt: skip
        deadline = time.monotonic() + 5
        while not app.seen:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        client.sendall(b"ZZZ-not-a-chunk-size\r\n")
        answer = client.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert app.seen == ["/v1/transactions"]  # the route had the request
    assert _refused(app, "malformed_request") == 0, (
        f"{parser}: counted as refused before routing, though a route had it"
    )
