"""`api.client.Client`, `tanlian verify chain --node` and `tanlian verify monitor`, against a
real node process (`tanlian dev`, its simulation adding blocks) and against a hostile one.

One node serves the whole module: started on a free port, waited for (bounded) through
/healthz, and stopped by its pid whatever happens. The hostile node is a small HTTP server in
this process answering whatever a test puts in its table; the client's own limits (answer
size, line length, timeouts) are checked on an in-memory transport.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from api.cli_verify import read_lines
from api.client import (
    ANSWER_BYTES_MAX,
    COMMIT_WAIT_MARGIN_SECONDS,
    COMMIT_WAIT_SECONDS_MAX,
    SMALL_ANSWER_BYTES_MAX,
    Client,
    ClientError,
    split_lines,
)
from api.console import load_key
from ledger.blocks import Validator, compute_validators_hash, parse_certificate, parse_header
from ledger.blocks import verify_certificate as verify_block_certificate
from ledger.encoding import canonical
from ledger.genesis import Genesis, decode_genesis
from ledger.merkle import verify_consistency
from ledger.receipts import verify_receipt
from ledger.transactions import Transaction, parse_envelope, sign_transaction
from tests.api.test_cli import TANLIAN, assert_fails_cleanly, environment, free_port, tanlian

NODE_WAIT_S = 60  # the demo build and the first answer of /healthz
GROWTH_WAIT_S = 30  # the simulation adds a block about every second


@dataclass(frozen=True, slots=True)
class RunningNode:
    url: str
    data: Path
    pid: int

    @property
    def genesis_file(self) -> Path:
        return self.data / "genesis.json"

    def genesis(self) -> Genesis:
        return decode_genesis(self.genesis_file.read_bytes())


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop exactly this process: SIGTERM, a bounded wait, then SIGKILL."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@contextlib.contextmanager
def running_dev_node(directory: Path, *, simulate: bool) -> Iterator[RunningNode]:
    """A real `tanlian dev` process on a free port, until the block ends; stopped by its pid,
    and its stderr must hold no traceback."""
    data = directory / "city"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    arguments = ["dev", "--data", str(data), "--port", str(port), "--transactions", "200"]
    if not simulate:
        arguments.append("--no-simulate")
    with (directory / "dev.out").open("wb") as stdout, (directory / "dev.err").open("wb") as err:
        process = subprocess.Popen(
            [str(TANLIAN), *arguments], stdout=stdout, stderr=err, env=environment()
        )
    try:
        deadline = time.monotonic() + NODE_WAIT_S
        while True:
            assert process.poll() is None, (directory / "dev.err").read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"no answer from {url} in {NODE_WAIT_S} s"
            time.sleep(0.1)
        yield RunningNode(url=url, data=data, pid=process.pid)
    finally:
        _stop(process)
    assert "Traceback" not in (directory / "dev.err").read_text()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    """`tanlian dev` with its live simulation, so the chain grows while the tests run."""
    with running_dev_node(tmp_path_factory.mktemp("node"), simulate=True) as running:
        yield running


@pytest.fixture
def client(node: RunningNode) -> Iterator[Client]:
    with Client(node.url) as opened:
        yield opened


def wait_for_height_above(client: Client, height: int) -> int:
    deadline = time.monotonic() + GROWTH_WAIT_S
    while (now := int(client.checkpoint()["header"]["height"])) <= height:
        assert time.monotonic() < deadline, f"the chain stayed at height {now}"
        time.sleep(0.2)
    return now


def first_retirement(client: Client, genesis: Genesis) -> dict[str, Any]:
    """The envelope of the first retirement in the node's export."""
    limit = genesis.params.transaction_bytes_max
    for line in client.export_lines(2):
        value = json.loads(line)
        for envelope in value.get("block", {}).get("transactions", []):
            if envelope["tx"]["type"] == "retire":
                parse_envelope(envelope, transaction_bytes_max=limit)
                found: dict[str, Any] = envelope
                return found
    raise AssertionError("the demo chain holds no retirement")


def tx_id_of(envelope: dict[str, Any], genesis: Genesis) -> str:
    return parse_envelope(
        envelope, transaction_bytes_max=genesis.params.transaction_bytes_max
    ).tx_id


# --- the client against a real node -------------------------------------------------------------


def test_the_client_reads_the_genesis_and_certified_checkpoints(
    node: RunningNode, client: Client
) -> None:
    genesis = node.genesis()
    assert client.genesis() == genesis.document
    latest = client.checkpoint()
    header = parse_header(latest["header"])
    assert header.height >= 1
    assert header.validators_hash == compute_validators_hash(genesis.validators)
    verify_block_certificate(
        parse_certificate(latest["certificate"]),
        chain_id=genesis.chain_id,
        height=header.height,
        block_hash=header.block_hash(),
        validators=genesis.validators,
    )
    assert client.checkpoint_at(header.height) == latest
    assert client.checkpoint_at(1)["header"]["height"] == 1


def test_the_client_streams_the_export_up_to_a_height(node: RunningNode, client: Client) -> None:
    head = client.checkpoint()
    height = int(head["header"]["height"])
    lines = list(client.export_lines(1, height))
    assert len(lines) == height + 1
    assert all(line.endswith(b"\n") for line in lines)
    assert json.loads(lines[0]) == node.genesis().document
    last = json.loads(lines[-1])
    assert last["block"]["header"] == head["header"]
    assert last["certificate"] == head["certificate"]
    assert [json.loads(line)["block"]["header"]["height"] for line in lines[1:]] == list(
        range(1, height + 1)
    )


def test_the_client_reads_a_consistency_proof_that_verifies(client: Client) -> None:
    height = int(client.checkpoint()["header"]["height"])
    proof = client.consistency(1, height)
    first, second = proof["first"]["header"], proof["second"]["header"]
    assert (first["height"], second["height"]) == (1, height)
    assert (proof["first_size"], proof["second_size"]) == (first["log_size"], second["log_size"])
    assert proof["first"] == client.checkpoint_at(1)
    verify_consistency(
        size1=first["log_size"],
        size2=second["log_size"],
        path=[bytes.fromhex(node) for node in proof["path"]],
        root1=bytes.fromhex(first["log_root"]),
        root2=bytes.fromhex(second["log_root"]),
    )


def test_the_client_reads_a_receipt_that_verifies_and_its_transaction(
    node: RunningNode, client: Client
) -> None:
    genesis = node.genesis()
    retirement_id = tx_id_of(first_retirement(client, genesis), genesis)
    receipt = client.receipt(retirement_id)
    assert receipt["retirement"]["retirement_id"] == retirement_id
    verify_receipt(
        receipt,
        validators_hash=compute_validators_hash(genesis.validators),
        genesis_hash=genesis.genesis_hash(),
    )
    answer = client.transaction(retirement_id)
    assert answer["status"] == "committed"
    assert answer["transaction"]["tx"]["type"] == "retire"


def test_a_committed_envelope_submitted_again_answers_its_commit(
    node: RunningNode, client: Client
) -> None:
    genesis = node.genesis()
    envelope = first_retirement(client, genesis)
    tx_id = tx_id_of(envelope, genesis)
    known = client.transaction(tx_id)
    answer = client.submit(envelope, wait=True)
    assert answer == {
        "tx_id": tx_id,
        "status": "committed",
        "height": known["height"],
        "log_index": known["log_index"],
    }
    batch = client.submit([envelope])
    assert [result["tx_id"] for result in batch["results"]] == [tx_id]


def test_a_forged_envelope_is_refused_with_its_rule(node: RunningNode, client: Client) -> None:
    genesis = node.genesis()
    envelope = json.loads(json.dumps(first_retirement(client, genesis)))
    envelope["tx"]["payload"]["quantity"] += 1
    with pytest.raises(ClientError) as refused:
        client.submit(envelope)
    assert refused.value.code == "bad_signature", refused.value.message
    assert refused.value.status == 422
    assert "(HTTP 422)" in refused.value.message


def test_an_unknown_retirement_is_not_found(client: Client) -> None:
    with pytest.raises(ClientError) as missing:
        client.receipt("ab" * 32)
    assert missing.value.code == "not_found"
    assert missing.value.status == 404
    assert missing.value.message.endswith("(HTTP 404)")
    with pytest.raises(ClientError) as beyond:
        client.checkpoint_at(10**9)
    assert beyond.value.code == "not_found"


def test_a_node_where_nothing_listens_is_unreachable() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", timeout=2) as nowhere:
        with pytest.raises(ClientError) as unreachable:
            nowhere.checkpoint()
        assert unreachable.value.code == "node_unreachable"
        assert "\n" not in unreachable.value.message
        with pytest.raises(ClientError) as streaming:
            next(nowhere.export_lines())
        assert streaming.value.code == "node_unreachable"


@pytest.mark.parametrize("url", ["ftp://example.org", "not a url", "http://"])
def test_a_url_that_is_not_http_is_refused(url: str) -> None:
    with pytest.raises(ClientError) as refused:
        Client(url)
    assert refused.value.code == "bad_url"


# --- the client's limits, on an in-memory transport ---------------------------------------------


def mock_client(handler: Callable[[httpx.Request], httpx.Response]) -> Client:
    return Client("http://node.test", transport=httpx.MockTransport(handler))


def test_an_endless_answer_is_refused_at_the_cap() -> None:
    chunk = b" " * (1024 * 1024)
    sent = 0

    def endless() -> Iterator[bytes]:
        nonlocal sent
        while True:
            sent += len(chunk)
            yield chunk

    answer = httpx.Response(200, content=endless())
    with mock_client(lambda request: answer) as hostile, pytest.raises(ClientError) as refused:
        hostile.genesis()
    assert refused.value.code == "bad_answer"
    assert f"over {ANSWER_BYTES_MAX} bytes" in refused.value.message
    assert sent <= ANSWER_BYTES_MAX + 2 * len(chunk)


@pytest.mark.parametrize("read", ["checkpoint", "consistency", "problem"])
def test_a_checkpoint_proof_or_problem_is_refused_past_a_mebibyte(read: str) -> None:
    """Found by review: a 64 MiB "checkpoint" of `[{},{},...]` cost the monitor 1.8 GB of
    parsed objects; a real one is a few kilobytes."""
    body = b"[" + b"{}," * (SMALL_ANSWER_BYTES_MAX // 3) + b"{}]"
    status = 500 if read == "problem" else 200
    answer = httpx.Response(status, content=body)
    with mock_client(lambda request: answer) as hostile, pytest.raises(ClientError) as refused:
        if read == "consistency":
            hostile.consistency(1, 2)
        else:
            hostile.checkpoint()
    assert f"over {SMALL_ANSWER_BYTES_MAX} bytes" in refused.value.message or read == "problem"
    assert refused.value.code == "bad_answer"


def test_no_compressed_answer_is_asked_for_or_decoded() -> None:
    """Found by review: `Content-Encoding: gzip, gzip` (a 13 KB answer) decoded to 8 GiB,
    past every bound, and killed a follower with MemoryError."""
    bomb = gzip.compress(gzip.compress(b"\0" * (64 * 1024 * 1024)))
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers["accept-encoding"])
        return httpx.Response(200, headers={"content-encoding": "gzip, gzip"}, content=bomb)

    with mock_client(answer) as hostile, pytest.raises(ClientError) as refused:
        hostile.checkpoint()
    assert asked == ["identity"]
    assert refused.value.code == "bad_answer"
    assert "content-encoding 'gzip, gzip'" in refused.value.message
    with mock_client(answer) as hostile, pytest.raises(ClientError):
        next(hostile.export_lines())
    empty = httpx.Response(200, headers={"content-encoding": ""}, content=b"{}")
    with mock_client(lambda request: empty) as node:
        assert node.checkpoint() == {}  # an empty Content-Encoding is no encoding


@contextlib.contextmanager
def one_connection(answer: Callable[[socket.socket], None]) -> Iterator[str]:
    """The URL of a server on loopback that takes one connection, reads its request and
    hands the socket to `answer` in a thread (whose writes end quietly once the client has
    gone), until the block ends."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        connection, _ = listener.accept()
        with connection, contextlib.suppress(OSError):
            connection.recv(65536)
            answer(connection)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    with listener:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    server.join(timeout=10)


def test_a_node_dripping_its_headers_is_given_up_at_the_deadline() -> None:
    """Found by review: httpx bounds each read, not the headers, so a node sending one header
    byte every few seconds held a follower, a monitor or an auditor for days. Here a byte
    every 0.2 s, against a whole-answer bound of 1 s (the server stops after 8 s, so the
    test ends even without the bound)."""

    def drip(connection: socket.socket) -> None:
        for byte in b"HTTP/1.1 200 OK\r\n" + b"x-slow: " + b"z" * 40:
            connection.sendall(bytes([byte]))
            time.sleep(0.2)

    started = time.monotonic()
    with (
        one_connection(drip) as url,
        Client(url, timeout=5, answer_seconds_max=1.0) as slow,
        pytest.raises(ClientError) as refused,
    ):
        slow.checkpoint()
    elapsed = time.monotonic() - started
    assert refused.value.code == "node_unreachable"
    assert "no status and headers within 1 s" in refused.value.message
    assert 0.9 <= elapsed <= 3.0, elapsed


def test_the_whole_answer_bound_counts_from_the_request_not_from_the_headers() -> None:
    """Found by review: after slow headers, the body's bound started afresh, so a bound of
    1 s let an answer take 2 s. Here headers at 0.6 s, the last byte at 1.2 s."""

    def slow(connection: socket.socket) -> None:
        time.sleep(0.6)
        connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{")
        time.sleep(0.6)
        connection.sendall(b"}")

    with (
        one_connection(slow) as url,
        Client(url, timeout=5, answer_seconds_max=1.0) as client,
        pytest.raises(ClientError) as refused,
    ):
        client.checkpoint()
    assert refused.value.code == "node_unreachable"
    assert "the whole answer took too long" in refused.value.message


def test_a_node_cannot_write_to_the_terminal_through_its_words() -> None:
    """Found by review: a problem's detail reached stderr with its escape sequences, so a
    node could clear an auditor's screen and draw a line of its own."""
    problem = {"type": "x", "title": "t", "status": 400, "code": "x\x1b]0;t\x07"}
    problem["detail"] = "\x1b[2J\x1b[Hchain verified\u202e"

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, content=json.dumps(problem).encode())

    with mock_client(answer) as node, pytest.raises(ClientError) as refused:
        node.checkpoint()
    message = refused.value.message
    assert "\x1b" not in message and "\u202e" not in message, message
    assert message == "\\x1b[2J\\x1b[Hchain verified\\u202e (HTTP 400)"
    assert refused.value.code == "x\\x1b]0;t\\x07"


def test_a_declared_oversized_answer_is_refused_before_reading() -> None:
    def huge(request: httpx.Request) -> httpx.Response:
        headers = {"content-length": str(ANSWER_BYTES_MAX + 1)}
        return httpx.Response(200, headers=headers, content=iter([b"{}"]))

    with mock_client(huge) as hostile, pytest.raises(ClientError) as refused:
        hostile.genesis()
    assert refused.value.code == "bad_answer"


@pytest.mark.parametrize(
    ("status", "body", "fragment"),
    [
        (200, b"<html>hello</html>", "not acceptable JSON"),
        (200, b"[1, 2]", "expected a JSON object, got list"),
        (200, b'{"height": 1.5}', "not acceptable JSON"),
        (500, b"<html>oops</html>", "HTTP 500 with a malformed"),
        (404, b'{"detail": "no code"}', "HTTP 404 with a malformed"),
        (302, b"", "unexpected HTTP 302"),
    ],
)
def test_a_malformed_answer_is_a_bad_answer(status: int, body: bytes, fragment: str) -> None:
    answer = httpx.Response(status, content=body)
    with mock_client(lambda request: answer) as hostile, pytest.raises(ClientError) as refused:
        hostile.checkpoint()
    assert refused.value.code == "bad_answer"
    assert fragment in refused.value.message, refused.value.message


def test_a_problem_keeps_its_code_and_detail_on_one_line() -> None:
    problem = {
        "type": "x",
        "title": "t",
        "status": 503,
        "detail": "full\nnow",
        "code": "mempool_full",
    }

    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "application/problem+json"}
        return httpx.Response(503, headers=headers, content=json.dumps(problem).encode())

    with mock_client(answer) as node, pytest.raises(ClientError) as refused:
        node.submit({"tx": {}, "signatures": []})
    assert refused.value.code == "mempool_full"
    assert refused.value.message == "full now (HTTP 503)"


@pytest.mark.parametrize(
    "error", [httpx.ReadTimeout("slow"), httpx.ConnectError("refused"), httpx.ReadError("reset")]
)
def test_transport_failures_are_unreachable(error: httpx.HTTPError) -> None:
    def fails(request: httpx.Request) -> httpx.Response:
        raise error

    with mock_client(fails) as node, pytest.raises(ClientError) as refused:
        node.checkpoint()
    assert refused.value.code == "node_unreachable"


def test_a_broken_answer_is_a_bad_answer() -> None:
    def fails(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed the connection mid-answer")

    with mock_client(fails) as node, pytest.raises(ClientError) as refused:
        node.checkpoint()
    assert refused.value.code == "bad_answer"


def test_export_lines_are_bounded_like_read_lines() -> None:
    def export(request: httpx.Request) -> httpx.Response:
        assert request.url.params["from_height"] == "1"
        return httpx.Response(200, content=iter([b"ab\ncdefghij", b"klmn\n", b"\n", b"tail\n"]))

    with mock_client(export) as node:
        lines = list(node.export_lines(line_bytes_max=4))
    assert lines == [b"ab\n", b"cdefg", b"hijkl", b"mn\n", b"\n", b"tail\n"]
    assert max(map(len, lines)) == 5


def test_split_lines_matches_readline() -> None:
    data = b"a\n" + b"x" * 23 + b"\nshort\n\n" + b"y" * 7
    for limit in (1, 2, 5, 8, 100):
        expected = list(read_lines(io.BytesIO(data), limit, lambda size: None))
        for size in (1, 3, 64):
            chunks = [data[i : i + size] for i in range(0, len(data), size)]
            assert list(split_lines(chunks, limit)) == expected, (limit, size)


def test_a_timeout_names_the_requests_own_bound() -> None:
    # Found by review: a submission waiting for its commit timed out after 35 s, and the
    # message said "did not answer within 10 s", the client's default.
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow")

    with mock_client(slow) as node:
        waits = COMMIT_WAIT_SECONDS_MAX + COMMIT_WAIT_MARGIN_SECONDS
        with pytest.raises(ClientError) as refused:
            node.submit({"tx": {}, "signatures": []}, wait=True)
        assert f"did not answer within {waits:g} s" in refused.value.message
        with pytest.raises(ClientError) as refused:
            node.checkpoint()
        assert f"did not answer within {node.timeout:g} s" in refused.value.message
        assert node.timeout != waits


def test_an_export_that_fails_mid_stream_is_a_client_error() -> None:
    def export(request: httpx.Request) -> httpx.Response:
        def body() -> Iterator[bytes]:
            yield b"genesis\n"
            raise httpx.ReadTimeout("stalled")

        return httpx.Response(200, content=body())

    with mock_client(export) as node:
        lines = node.export_lines()
        assert next(lines) == b"genesis\n"
        with pytest.raises(ClientError) as stalled:
            next(lines)
    assert stalled.value.code == "node_unreachable"


# --- verify chain --node ------------------------------------------------------------------------


def test_verify_chain_from_a_node_audits_up_to_its_checkpoint(
    node: RunningNode, client: Client
) -> None:
    before = int(client.checkpoint()["header"]["height"])
    result = tanlian("verify", "chain", "--node", node.url, "--genesis", node.genesis_file)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    height = int(lines[0].split("height ")[1].split(",")[0])
    assert height >= before
    header = client.checkpoint_at(height)["header"]
    assert f"log root {header['log_root']}" in lines[0]
    assert f"state root {header['state_root']}" in lines[0]


def test_verify_chain_against_another_genesis_fails(node: RunningNode, tmp_path: Path) -> None:
    document = json.loads(node.genesis_file.read_text())
    document["genesis_time"] += 1
    other = tmp_path / "other.json"
    other.write_text(json.dumps(document))
    result = tanlian("verify", "chain", "--node", node.url, "--genesis", other)
    assert_fails_cleanly(result, "verification failed at the genesis line: rule genesis")


def test_verify_chain_from_an_unreachable_node_fails_cleanly(node: RunningNode) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = tanlian("verify", "chain", "--node", url, "--genesis", node.genesis_file)
    assert_fails_cleanly(result, "node_unreachable")


# --- a hostile node -----------------------------------------------------------------------------

Answer = tuple[int, bytes]


class Hostile:
    """An HTTP server answering each path from `answers` (404 otherwise)."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        answers = self.answers

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = answers.get(self.path.split("?")[0], (404, b"{}"))
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def serve(self, path: str, value: Any, status: int = 200) -> None:
        self.answers[path] = (status, value if isinstance(value, bytes) else canonical(value))


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    server = Hostile()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
        thread.join(timeout=10)


def test_verify_chain_refuses_a_hostile_export(
    node: RunningNode, client: Client, hostile: Hostile
) -> None:
    head = client.checkpoint()
    hostile.serve("/v1/checkpoint", head)
    lines = list(client.export_lines(1, int(head["header"]["height"])))
    hostile.serve("/v1/export", lines[0] + b'{"block": "no"}\n')
    result = tanlian("verify", "chain", "--node", hostile.url, "--genesis", node.genesis_file)
    assert_fails_cleanly(result, "verification failed at height 1: rule malformed")
    hostile.serve("/v1/export", b"".join(lines[:-1]))  # a sound chain, one block short
    result = tanlian("verify", "chain", "--node", hostile.url, "--genesis", node.genesis_file)
    assert_fails_cleanly(result, "rule head: the node's export ends at height")
    hostile.serve("/v1/checkpoint", b"<html>")
    result = tanlian("verify", "chain", "--node", hostile.url, "--genesis", node.genesis_file)
    assert_fails_cleanly(result, "error (bad_answer)")


@pytest.mark.parametrize("command", ["export", "verify"])
def test_an_export_ended_by_a_problem_or_cut_mid_line_is_no_export(
    node: RunningNode, client: Client, hostile: Hostile, tmp_path: Path, command: str
) -> None:
    """Found by review: `tanlian export --node` wrote an export that a node ended with its
    problem line (a block it could not read), or one cut in the middle of a line, and said
    it succeeded."""
    head = client.checkpoint()
    hostile.serve("/v1/checkpoint", head)
    lines = list(client.export_lines(1, int(head["header"]["height"])))
    problem = {"problem": {"code": "store_unavailable", "detail": "block 3 is corrupt"}}
    out = tmp_path / "chain.ndjson"
    run = (
        ("export", "--node", hostile.url, "--out", out)
        if command == "export"
        else ("verify", "chain", "--node", hostile.url, "--genesis", node.genesis_file)
    )
    hostile.serve("/v1/export", b"".join(lines[:3]) + canonical(problem) + b"\n")
    result = tanlian(*run)
    assert_fails_cleanly(result, "error (store_unavailable): the node ended its export")
    assert "block 3 is corrupt" in result.stderr
    hostile.serve("/v1/export", b"".join(lines[:3]) + lines[3][:-40])
    result = tanlian(*run)
    assert_fails_cleanly(result, "error (bad_answer): the node's export ended in the middle")
    assert not out.exists() and list(tmp_path.iterdir()) == []


# --- verify monitor -----------------------------------------------------------------------------


def monitor(node_url: str, state: Path, genesis_file: Path) -> subprocess.CompletedProcess[str]:
    return tanlian(
        "verify", "monitor", "--node", node_url, "--state", state, "--genesis", genesis_file
    )


def evidence_of(state: Path) -> Path:
    return state.with_name(state.name + ".fork-evidence.json")


def test_the_monitor_saves_then_proves_each_new_checkpoint(
    node: RunningNode, client: Client, tmp_path: Path
) -> None:
    state = tmp_path / "monitor.json"
    first = monitor(node.url, state, node.genesis_file)
    assert first.returncode == 0, first.stderr
    saved = json.loads(state.read_text())
    height = int(saved["header"]["height"])
    assert saved == client.checkpoint_at(height)
    assert first.stdout.strip() == (
        f"checkpoint verified: height {height}, log size {saved['header']['log_size']}; "
        f"first checkpoint, saved to {state}"
    )
    wait_for_height_above(client, height)
    second = monitor(node.url, state, node.genesis_file)
    assert second.returncode == 0, second.stderr
    updated = json.loads(state.read_text())
    assert updated["header"]["height"] > height
    assert updated == client.checkpoint_at(updated["header"]["height"])
    assert f"consistent with the remembered height {height}," in second.stdout
    assert len(second.stdout.strip().splitlines()) == 1
    assert not evidence_of(state).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["monitor.json"]  # no temporary left


def test_the_monitor_runs_rounds_at_an_interval(node: RunningNode, tmp_path: Path) -> None:
    state = tmp_path / "monitor.json"
    result = tanlian(
        "verify", "monitor", "--node", node.url, "--state", state,
        "--genesis", node.genesis_file, "--interval", "0.5", "--rounds", "3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3, result.stdout
    assert "first checkpoint" in lines[0]
    assert state.exists()


def test_rounds_without_an_interval_is_bad_usage(node: RunningNode, tmp_path: Path) -> None:
    result = tanlian(
        "verify", "monitor", "--node", node.url, "--state", tmp_path / "s.json",
        "--genesis", node.genesis_file, "--rounds", "2",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--interval" in result.stderr


def remembered(client: Client, state: Path, change: Callable[[dict[str, Any]], None]) -> bytes:
    """Write a state file holding the node's checkpoint at height 2, changed by `change`."""
    checkpoint = client.checkpoint_at(2)
    change(checkpoint["header"])
    state.write_text(json.dumps(checkpoint))
    return state.read_bytes()


def test_a_remembered_header_the_node_never_certified_is_a_fork(
    node: RunningNode, client: Client, tmp_path: Path
) -> None:
    state = tmp_path / "monitor.json"
    original = remembered(client, state, lambda header: header.update(log_root="ab" * 32))
    result = monitor(node.url, state, node.genesis_file)
    assert_fails_cleanly(result, "FORK DETECTED between the remembered height 2 and the node's")
    assert str(evidence_of(state)) in result.stderr
    assert state.read_bytes() == original
    evidence = json.loads(evidence_of(state).read_text())
    assert evidence["kind"] == "fork"
    assert evidence["remembered"] == json.loads(original)
    latest = evidence["latest"]
    assert latest == client.checkpoint_at(latest["header"]["height"])
    assert evidence["proof"]["first"] == client.checkpoint_at(2)


def test_a_node_below_the_remembered_height_is_a_rollback(
    node: RunningNode, client: Client, tmp_path: Path
) -> None:
    state = tmp_path / "monitor.json"
    original = remembered(client, state, lambda header: header.update(height=10**9))
    result = monitor(node.url, state, node.genesis_file)
    assert_fails_cleanly(result, f"ROLLBACK DETECTED between the remembered height {10**9} and")
    assert state.read_bytes() == original
    evidence = json.loads(evidence_of(state).read_text())
    assert evidence["kind"] == "rollback"
    assert evidence["remembered"]["header"]["height"] == 10**9
    assert evidence["latest"]["header"]["height"] < 10**9
    assert evidence["proof"] is None


@dataclass
class ProofServed:
    """A monitor run against a hostile node serving the real head and `proof` from the
    remembered height 2; what it printed and what its state file held before."""

    head: dict[str, Any]
    result: subprocess.CompletedProcess[str]
    state: Path
    original: bytes


def monitor_given_proof(
    node: RunningNode,
    client: Client,
    hostile: Hostile,
    tmp_path: Path,
    proof_of: Callable[[int], Any],
) -> ProofServed:
    """The node's head served as it is, with the consistency proof `proof_of(height)`."""
    head = client.checkpoint()
    hostile.serve("/v1/checkpoint", head)
    hostile.serve("/v1/proofs/consistency", proof_of(int(head["header"]["height"])))
    state = tmp_path / "monitor.json"
    original = remembered(client, state, lambda header: None)
    return ProofServed(head, monitor(hostile.url, state, node.genesis_file), state, original)


def test_a_consistency_proof_that_does_not_rebuild_the_roots_is_an_inconsistency(
    node: RunningNode, client: Client, hostile: Hostile, tmp_path: Path
) -> None:
    proof: dict[str, Any] = {}

    def broken(height: int) -> dict[str, Any]:
        proof.update(client.consistency(2, height))
        assert proof["path"], "a proof from height 2 needs a path"
        proof["path"][0] = "00" * 32
        return proof

    served = monitor_given_proof(node, client, hostile, tmp_path, broken)
    head, result, state, original = served.head, served.result, served.state, served.original
    height = int(head["header"]["height"])
    assert_fails_cleanly(
        result, f"INCONSISTENCY DETECTED between the remembered height 2 and the node's height "
        f"{height}: the log at height {height}",
    )  # fmt: skip
    assert state.read_bytes() == original
    evidence = json.loads(evidence_of(state).read_text())
    assert evidence["proof"] == proof
    assert evidence["latest"] == head


@pytest.mark.parametrize("node_hex", ["00", "00" * 33])
def test_a_path_of_other_than_hashes_is_a_malformed_proof_not_a_fork(
    node: RunningNode, client: Client, hostile: Hostile, tmp_path: Path, node_hex: str
) -> None:
    """Found by review: a path node of valid hex but the wrong length was reported as an
    inconsistency, with fork evidence written, though a proof that is no proof is a bad
    answer (as a path that is not hex was)."""

    def malformed(height: int) -> dict[str, Any]:
        proof = client.consistency(2, height)
        proof["path"][0] = node_hex
        return proof

    served = monitor_given_proof(node, client, hostile, tmp_path, malformed)
    result, state, original = served.result, served.state, served.original
    assert_fails_cleanly(result, "the consistency proof is malformed: proof.path: expected SHA-256")
    assert "DETECTED" not in result.stdout + result.stderr
    assert state.read_bytes() == original and not evidence_of(state).exists()


def test_a_proof_about_other_checkpoints_is_a_bad_answer(
    node: RunningNode, client: Client, hostile: Hostile, tmp_path: Path
) -> None:
    """A sound proof from 2 to an earlier height than the checkpoint it is offered for:
    both headers certified, one chain, so nothing any validator did wrong."""
    served = monitor_given_proof(
        node, client, hostile, tmp_path, lambda height: client.consistency(2, height - 1)
    )
    result, state, original = served.result, served.state, served.original
    height = int(served.head["header"]["height"])
    assert_fails_cleanly(
        result, f"error (bad_answer): proof.second is the node's checkpoint at height"
        f" {height - 1}, not {height}",
    )  # fmt: skip
    assert state.read_bytes() == original and not evidence_of(state).exists()


@pytest.mark.parametrize("which", ["first", "second"])
def test_a_header_of_the_proof_no_certificate_vouches_for_is_a_bad_answer_not_a_fork(
    node: RunningNode, client: Client, hostile: Hostile, tmp_path: Path, which: str
) -> None:
    """Found by review: a proof whose `first` header was edited (its time plus one, on its
    way in over plain http) raised FORK DETECTED and was written as evidence."""

    def edited(height: int) -> dict[str, Any]:
        proof = client.consistency(2, height)
        proof[which]["header"]["time"] += 1
        return proof

    served = monitor_given_proof(node, client, hostile, tmp_path, edited)
    result, state, original = served.result, served.state, served.original
    assert_fails_cleanly(
        result, f"error (bad_answer): proof.{which}: the node's checkpoint at height"
    )  # fmt: skip
    assert "is not certified" in result.stderr and "DETECTED" not in result.stderr
    assert state.read_bytes() == original and not evidence_of(state).exists()


def test_a_lower_checkpoint_naming_a_set_the_monitor_let_go_of_is_no_rollback(
    node: RunningNode, client: Client, hostile: Hostile, tmp_path: Path
) -> None:
    """Found by review: a checkpoint below the remembered one naming any other set (here
    one that exists nowhere) raised ROLLBACK DETECTED, evidence written, unchecked."""
    lower = client.checkpoint_at(2)
    lower["header"]["validators_hash"] = "11" * 32
    hostile.serve("/v1/checkpoint", lower)
    state = tmp_path / "monitor.json"
    state.write_text(json.dumps(client.checkpoint()))
    original = state.read_bytes()
    result = monitor(hostile.url, state, node.genesis_file)
    assert_fails_cleanly(result, "error (bad_answer): the node's checkpoint at height 2, below")
    assert "which this monitor no longer holds" in result.stderr
    assert state.read_bytes() == original and not evidence_of(state).exists()


def test_an_uncertified_checkpoint_is_refused_without_evidence(
    node: RunningNode, client: Client, hostile: Hostile, tmp_path: Path
) -> None:
    head = client.checkpoint()
    head["header"]["state_root"] = "cd" * 32  # the certificate signs another block hash
    hostile.serve("/v1/checkpoint", head)
    state = tmp_path / "monitor.json"
    result = monitor(hostile.url, state, node.genesis_file)
    assert_fails_cleanly(result, "error (invalid_proof): the node's checkpoint at height")
    assert "is not certified: certificate commits a different block hash" in result.stderr
    assert not state.exists()
    assert not evidence_of(state).exists()


def test_a_set_no_certified_header_names_is_refused(
    node: RunningNode, client: Client, hostile: Hostile, tmp_path: Path
) -> None:
    """A checkpoint naming a set the chain never named: the monitor looks for the change
    (the node's own checkpoints below it) and finds the last certified header naming the
    genesis's set for that height."""
    head = client.checkpoint()
    height = int(head["header"]["height"])
    head["header"]["validators_hash"] = "ef" * 32
    hostile.serve("/v1/checkpoint", head)
    for at in range(1, height):
        hostile.serve(f"/v1/checkpoints/{at}", client.checkpoint_at(at))
    state = tmp_path / "monitor.json"
    result = monitor(hostile.url, state, node.genesis_file)
    genesis_set = compute_validators_hash(node.genesis().validators)
    assert_fails_cleanly(
        result,
        f"error (invalid_proof): the node's checkpoint at height {height} is not certified: it"
        f" names validator set {'ef' * 32}, and the certified header at height {height - 1}"
        f" names set {genesis_set} to govern it",
    )
    assert not state.exists() and not evidence_of(state).exists()


def test_a_set_change_the_node_answers_wrongly_is_refused(
    node: RunningNode, client: Client, hostile: Hostile, tmp_path: Path
) -> None:
    """Another set at or below the remembered height cannot be followed; a checkpoint of
    another height than asked for is a bad answer."""
    low = client.checkpoint_at(2)
    low["header"]["validators_hash"] = "ef" * 32
    hostile.serve("/v1/checkpoint", low)
    state = tmp_path / "monitor.json"
    original = remembered(client, state, lambda header: None)
    result = monitor(hostile.url, state, node.genesis_file)
    genesis_set = compute_validators_hash(node.genesis().validators)
    assert_fails_cleanly(
        result,
        f"the node's checkpoint at height 2 is not certified: it names validator set"
        f" {'ef' * 32}, and set {genesis_set} governs that height",
    )
    head = client.checkpoint()
    height = int(head["header"]["height"])
    head["header"]["validators_hash"] = "ef" * 32
    hostile.serve("/v1/checkpoint", head)
    for at in range(1, height):
        hostile.serve(f"/v1/checkpoints/{at}", client.checkpoint_at(2 if at > 2 else 1))
    result = monitor(hostile.url, state, node.genesis_file)
    assert_fails_cleanly(result, "error (bad_answer): asked for the checkpoint at height ")
    assert state.read_bytes() == original and not evidence_of(state).exists()


def _set_validators(url: str, data: Path, genesis: Genesis, power: int) -> int:
    """The demo's authority sets the validators to the city alone with `power` (another set:
    the power is hashed), committed; the block's height."""
    authority = [load_key(data / "keys" / f"authority-{i}.pem") for i in (1, 2)]
    account = httpx.get(f"{url}/v1/accounts/{genesis.authority_id}", timeout=10).json()
    city = genesis.validators[0]
    transaction = Transaction(
        chain_id=genesis.chain_id,
        type="set_validators",
        signer=genesis.authority_id,
        nonce=int(account["nonce"]) + 1,
        payload={"validators": [{"public_key": city.public_key, "power": power, "name": "city"}]},
    )
    with Client(url) as client:
        answer = client.submit(sign_transaction(transaction, authority), wait=True)
    assert answer["status"] == "committed", answer
    return int(answer["height"])


def test_the_monitor_follows_the_validator_set_through_its_changes(
    tmp_path: Path, hostile: Hostile
) -> None:
    """A real node whose authority changes the set twice: a monitor that remembered a height
    of the genesis's set, and one run for the first time, each follow both changes header to
    header, verify the head with the set that governs it, and keep that set's members."""
    with running_dev_node(tmp_path, simulate=False) as running:
        genesis = running.genesis()
        state, fresh = tmp_path / "monitor.json", tmp_path / "fresh.json"
        before = monitor(running.url, state, running.genesis_file)
        assert before.returncode == 0, before.stderr
        first = _set_validators(running.url, running.data, genesis, power=2)
        second = _set_validators(running.url, running.data, genesis, power=3)
        _set_validators(running.url, running.data, genesis, power=3)  # no change: two blocks
        last = _set_validators(running.url, running.data, genesis, power=3)  # so the third set
        assert last >= second + 2  # governs the head
        city = genesis.validators[0]
        sets = [[Validator(public_key=city.public_key, power=p, name="city")] for p in (2, 3)]
        for state_file in (state, fresh):
            result = monitor(running.url, state_file, running.genesis_file)
            assert result.returncode == 0, result.stderr
            lines = result.stdout.strip().splitlines()
            assert lines[:2] == [
                f"validator set changed: the certified header at height {at + 1} names set"
                f" {compute_validators_hash(members)} (1 validator, power {power}), set in"
                f" block {at}; it governs from height {at + 2}"
                for at, members, power in ((first, sets[0], 2), (second, sets[1], 3))
            ]
            assert lines[2].startswith(f"checkpoint verified: height {last}, log size ")
            saved = json.loads(state_file.read_text())
            assert saved["validators"] == [v.to_json() for v in sets[1]]
            assert saved["header"]["validators_hash"] == compute_validators_hash(sets[1])
        again = monitor(running.url, state, running.genesis_file)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip().endswith("unchanged since the last run")
        # A node serving a height before the changes: a rollback, with evidence (found by
        # review: it was refused as uncertified, the genesis's set no longer trusted).
        with Client(running.url) as client:
            hostile.serve("/v1/checkpoint", client.checkpoint_at(first))
        kept = state.read_bytes()
        rolled = monitor(hostile.url, state, running.genesis_file)
        assert_fails_cleanly(
            rolled,
            f"ROLLBACK DETECTED between the remembered height {last} and the node's height {first}",
        )
        assert state.read_bytes() == kept
        assert json.loads(evidence_of(state).read_text())["kind"] == "rollback"
        nameless = {**saved, "validators": None}
        state.write_text(json.dumps(nameless))
        assert_fails_cleanly(
            monitor(running.url, state, running.genesis_file), "monitor.json: not a checkpoint"
        )
        saved["validators"][0]["power"] = 2  # a state file whose set is not its header's
        state.write_text(json.dumps(saved))
        broken = monitor(running.url, state, running.genesis_file)
        assert_fails_cleanly(
            broken,
            f"error (wrong_chain): {state}: the remembered checkpoint names validator set"
            f" {compute_validators_hash(sets[1])}, not the set the file names: this state file"
            " is of another chain, or was altered",
        )
        # No set in the file: the genesis's is taken, and named (found by review: the
        # message read as cut short, "..., so the genesis's").
        unnamed = {key: value for key, value in saved.items() if key != "validators"}
        state.write_text(json.dumps(unnamed))
        assert_fails_cleanly(
            monitor(running.url, state, running.genesis_file),
            f"error (wrong_chain): {state}: the remembered checkpoint names validator set"
            f" {compute_validators_hash(sets[1])}, not the genesis's set"
            f" ({compute_validators_hash(genesis.validators)}), as the file names none",
        )


def test_a_malformed_checkpoint_or_state_fails_cleanly(
    node: RunningNode, hostile: Hostile, tmp_path: Path
) -> None:
    hostile.serve("/v1/checkpoint", {"header": {}, "certificate": {}})
    result = monitor(hostile.url, tmp_path / "monitor.json", node.genesis_file)
    assert_fails_cleanly(result, "error (bad_answer): the node's checkpoint is malformed")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    result = monitor(node.url, broken, node.genesis_file)
    assert_fails_cleanly(result, "broken.json: not a checkpoint")
    assert broken.read_text() == "{not json"


def test_the_monitor_against_nothing_listening_is_unreachable(
    node: RunningNode, tmp_path: Path
) -> None:
    state = tmp_path / "monitor.json"
    result = monitor(f"http://127.0.0.1:{free_port()}", state, node.genesis_file)
    assert_fails_cleanly(result, "error (node_unreachable): cannot reach http://127.0.0.1:")
    assert not state.exists()


def test_the_same_height_is_unchanged_or_a_fork(
    node: RunningNode, client: Client, hostile: Hostile, tmp_path: Path
) -> None:
    head = client.checkpoint()
    height = int(head["header"]["height"])
    hostile.serve("/v1/checkpoint", head)
    state = tmp_path / "monitor.json"
    state.write_text(json.dumps(head))
    same = monitor(hostile.url, state, node.genesis_file)
    assert same.returncode == 0, same.stderr
    assert same.stdout.strip().endswith("; unchanged since the last run")
    other = dict(head, header=dict(head["header"], state_root="12" * 32))
    state.write_text(json.dumps(other))
    result = monitor(hostile.url, state, node.genesis_file)
    assert_fails_cleanly(
        result, f"FORK DETECTED between the remembered height {height} and the node's height "
        f"{height}: the node's certified header at height {height} is block ",
    )  # fmt: skip
    assert json.loads(state.read_text()) == other
    assert json.loads(evidence_of(state).read_text())["latest"] == head


def test_a_remembered_empty_log_is_compared_header_to_header(
    node: RunningNode, client: Client, hostile: Hostile, tmp_path: Path
) -> None:
    """From an empty log no consistency proof exists: the node's header at that height must
    be the remembered one."""
    hostile.serve("/v1/checkpoint", client.checkpoint())
    hostile.serve("/v1/checkpoints/2", client.checkpoint_at(2))
    state = tmp_path / "monitor.json"
    original = remembered(client, state, lambda header: header.update(log_size=0))
    result = monitor(hostile.url, state, node.genesis_file)
    assert_fails_cleanly(result, "FORK DETECTED between the remembered height 2 and the node's")
    assert "the node's header at the remembered height 2 is block" in result.stderr
    assert state.read_bytes() == original
    # the certified header that differs is the evidence (found by review: none was kept)
    evidence = json.loads(evidence_of(state).read_text())
    assert evidence["proof"] == {"checkpoint": client.checkpoint_at(2)}


def test_a_remembered_empty_log_against_an_uncertified_header_is_a_bad_answer(
    node: RunningNode, client: Client, hostile: Hostile, tmp_path: Path
) -> None:
    forged = client.checkpoint_at(2)
    forged["header"]["time"] += 1
    hostile.serve("/v1/checkpoint", client.checkpoint())
    hostile.serve("/v1/checkpoints/2", forged)
    state = tmp_path / "monitor.json"
    original = remembered(client, state, lambda header: header.update(log_size=0))
    result = monitor(hostile.url, state, node.genesis_file)
    assert_fails_cleanly(result, "error (bad_answer): the node's checkpoint at height 2: the")
    assert "is not certified" in result.stderr
    assert state.read_bytes() == original and not evidence_of(state).exists()


OVERLOADED: Final = {
    "type": "urn:tanlian:problem:overloaded",
    "title": "The node is overloaded: try again later",
    "status": 503,
    "detail": "restarting",
    "code": "overloaded",
}


def test_a_round_that_cannot_reach_the_node_is_missed_and_the_monitor_goes_on(
    node: RunningNode, client: Client, hostile: Hostile, tmp_path: Path
) -> None:
    """Found by review: with --rounds, the first round meeting a node restarting ended the
    run, exit 1, as a fork does: a watchdog died at every routine restart."""
    hostile.serve("/v1/checkpoint", OVERLOADED, status=503)
    state = tmp_path / "monitor.json"
    process = subprocess.Popen(
        [str(TANLIAN), "verify", "monitor", "--node", hostile.url, "--state", str(state),
         "--genesis", str(node.genesis_file), "--interval", "0.3", "--rounds", "40"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )  # fmt: skip
    try:
        assert process.stderr is not None
        first = process.stderr.readline()
        assert first.startswith("round 1: missed (overloaded): restarting"), first
        hostile.serve("/v1/checkpoint", client.checkpoint())  # the node is back
        out, rest = process.communicate(timeout=60)
        assert process.returncode == 0, first + rest
        assert "checkpoint verified" in out and state.exists()
        # Missed to the end: the run fails, and says why.
        hostile.serve("/v1/checkpoint", OVERLOADED, status=503)
        result = tanlian(
            "verify", "monitor", "--node", hostile.url, "--state", state,
            "--genesis", node.genesis_file, "--interval", "0.05", "--rounds", "2",
        )  # fmt: skip
        assert result.returncode == 1
        assert result.stderr.count(": missed (overloaded)") == 2
        assert "the last round could not reach the node" in result.stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
