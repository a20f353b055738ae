"""The API's hardening (issue 4), in process on a real node: what schemathesis found, each fix
with its exact problem, the request-body deadline, and the OpenAPI document's promises (every
operation has examples for its parameters and body and declares its problem responses)."""

from __future__ import annotations

import gzip
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from pydantic import ValidationError

from api.admission import BodyBudget
from api.app import DOCS_ASSETS_URL, BodyGuard, Message, Scope, create_app
from api.media import PROBLEM_MEDIA_TYPE
from api.node import Node
from api.problems import COMMON_CODES, STATUS, Problem, problem_responses
from api.schemas import validate_envelope
from api.settings import Settings
from consensus.messages import decode_batch
from ledger.limits import JSON_INTEGER_MAX, LONG_TEXT_CHARS_MAX, TRANSACTION_SIGNATURES_MAX
from ledger.transactions import TRANSACTION_TYPES
from tests.factory import Chain

pytestmark = pytest.mark.anyio

BODY_SECONDS = 0.3  # the request-body deadline of these tests' node


@pytest.fixture
async def client(node: tuple[Chain, Node], tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(data=tmp_path, body_bytes_max=64 * 1024, request_body_seconds=BODY_SECONDS)
    app = create_app(node[1], settings, manage_node=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as opened:
        yield opened


@pytest.fixture
async def spec(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body: dict[str, Any] = response.json()
    Problem.model_validate(body)
    assert body["code"] == code and body["status"] == status, body
    return body


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            yield method.upper(), path, operation


# What schemathesis found --------------------------------------------------------------------


@pytest.mark.parametrize("key", ["\x00", "retirement/\n", "batch/B-1\x7f", "a\x85b", "\x1b[31m"])
async def test_a_state_key_with_a_control_character_is_invalid_not_a_503(
    client: httpx.AsyncClient, key: str
) -> None:
    # Found: the store proved the key, its own check of the proof refused it, and the node
    # answered 503 store_unavailable to outside input.
    response = await client.get("/v1/proofs/state", params={"key": key})
    assert_problem(response, 422, "invalid_field")


async def test_a_state_key_over_the_limit_is_invalid(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/proofs/state", params={"key": "k" * 401})
    assert_problem(response, 422, "invalid_field")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("TRACE", "/v1/genesis", {"GET", "HEAD"}),
        ("DELETE", "/healthz", {"GET", "HEAD"}),
        ("PUT", "/v1/transactions", {"POST"}),
        ("PATCH", f"/v1/transactions/{'ab' * 32}", {"GET", "HEAD"}),
    ],
)
async def test_an_undeclared_method_is_405_with_allow(
    client: httpx.AsyncClient, method: str, path: str, allowed: set[str]
) -> None:
    # Found: 405 answered without the Allow header RFC 9110 §15.5.6 requires.
    response = await client.request(method, path)
    assert_problem(response, 405, "method_not_allowed")
    assert {m.strip() for m in response.headers["allow"].split(",")} == allowed


async def test_an_unparsable_array_item_is_rejected_in_its_place(
    client: httpx.AsyncClient,
) -> None:
    # Found: the schema promised envelopes as array items while the node, by design (§7.1),
    # answers each item on its own; the schema now says so, and this stays the behaviour.
    response = await client.post("/v1/transactions", json=[{"tx": 1}, "x"])
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["rejected", "rejected"]
    assert {r["problem"]["code"] for r in results} == {"invalid_field"}


@pytest.mark.parametrize(
    "declared",
    ["application/x-www-form-urlencoded", "text/plain; charset=utf-8", "application/x-ndjson"],
)
async def test_a_submission_declared_as_another_media_type_is_415_and_admits_nothing(
    client: httpx.AsyncClient, node: tuple[Chain, Node], declared: str
) -> None:
    """`curl -d @transfer.json` declares a form: it is told what to send, before the body is
    read, and nothing is admitted."""
    chain, running = node
    envelope = chain.create_program()
    headers = {"content-type": declared}
    answer = await client.post("/v1/transactions", content=envelope.leaf, headers=headers)
    problem = assert_problem(answer, 415, "unsupported_media_type")
    kind = declared.split(";", maxsplit=1)[0]
    assert problem["detail"] == (
        f"the body is declared {kind!r}; send it as application/json (content-type header)"
    )
    assert running.outcome(envelope.tx_id) is None


@pytest.mark.parametrize("coding", ["gzip", "GZIP", "identity, deflate", "br"])
async def test_a_submission_in_a_content_coding_is_415_and_admits_nothing(
    client: httpx.AsyncClient, node: tuple[Chain, Node], coding: str
) -> None:
    """Found by review: a gzipped body was answered "invalid UTF-8 at byte 1", and a plain
    one labelled gzip was taken. Either way the node now names the header, and only what is
    sent unencoded (or labelled identity) is read."""
    chain, running = node
    envelope = chain.create_program()
    for body in (gzip.compress(envelope.leaf), envelope.leaf):
        headers = {"content-type": "application/json", "content-encoding": coding}
        answer = await client.post("/v1/transactions", content=body, headers=headers)
        problem = assert_problem(answer, 415, "unsupported_media_type")
        assert "content coding" in problem["detail"] and "content-encoding" in problem["detail"]
        assert running.outcome(envelope.tx_id) is None
    headers = {"content-type": "application/json", "content-encoding": "identity"}
    answer = await client.post("/v1/transactions", content=envelope.leaf, headers=headers)
    assert answer.status_code == 202, answer.text


@pytest.mark.parametrize(
    "declared", [None, "application/json", "Application/JSON; charset=utf-8", "application/x+json"]
)
async def test_a_submission_declared_as_json_or_undeclared_is_admitted(
    client: httpx.AsyncClient, node: tuple[Chain, Node], declared: str | None
) -> None:
    chain, running = node
    envelope = chain.create_program()
    headers = {} if declared is None else {"content-type": declared}
    answer = await client.post("/v1/transactions", content=envelope.leaf, headers=headers)
    assert answer.status_code in (200, 202), answer.text
    assert answer.json()["status"] in ("pending", "committed")
    outcome = running.outcome(envelope.tx_id)
    assert outcome is not None and outcome.status in ("pending", "committed")


# The request-body deadline ------------------------------------------------------------------


async def test_a_stalled_body_is_408_request_timeout(client: httpx.AsyncClient) -> None:
    async def stalled() -> AsyncIterator[bytes]:
        yield b'{"tx": '
        await anyio.sleep(30)
        yield b"{}}"

    started = time.monotonic()
    response = await client.post(
        "/v1/transactions", content=stalled(), headers={"content-type": "application/json"}
    )
    assert_problem(response, 408, "request_timeout")
    assert response.headers["connection"] == "close"
    assert BODY_SECONDS <= time.monotonic() - started < 10


async def test_a_trickled_body_is_408_request_timeout(client: httpx.AsyncClient) -> None:
    async def trickled() -> AsyncIterator[bytes]:
        for _ in range(100):  # each chunk on time, the whole body not
            yield b" "
            await anyio.sleep(BODY_SECONDS / 10)

    response = await client.post("/v1/transactions", content=trickled())
    assert_problem(response, 408, "request_timeout")


async def test_a_body_on_time_is_read(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"[1"
        await anyio.sleep(BODY_SECONDS / 10)
        yield b".5]"

    response = await client.post("/v1/transactions", content=chunks())
    assert_problem(response, 400, "malformed_json")  # read in full, then judged


async def test_the_deadline_ends_with_the_body() -> None:
    """After the body, a receive waits for the client to disconnect (a streamed answer does):
    that wait is not bounded by the body's deadline."""
    seconds = 0.05
    messages = [{"type": "http.request", "body": b"{}", "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        await anyio.sleep(seconds * 4)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        assert (await receive())["body"] == b"{}"
        assert (await receive())["type"] == "http.disconnect"  # past the deadline
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guard = BodyGuard(app, limit=1 << 20, seconds=seconds, budget=BodyBudget(1 << 20))
    await guard({"type": "http", "method": "POST"}, receive, send)
    assert [m.get("status") for m in sent] == [204, None]


def test_the_deadline_is_a_bounded_setting(tmp_path: Path) -> None:
    assert Settings(data=tmp_path).request_body_seconds == 30.0
    for bad in (0, -1, 301, 1e-300, 0.05):  # a tiny one refused every remote client (review)
        with pytest.raises(ValidationError):
            Settings(data=tmp_path, request_body_seconds=bad)
        with pytest.raises(ValidationError):
            Settings(data=tmp_path, request_head_seconds=bad)


def test_a_misspelt_setting_in_the_environment_is_refused(tmp_path: Path) -> None:
    """Found by review: TANLIAN_REQUEST_HEAD_SECOND=2 was ignored without a word."""
    with pytest.raises(ValueError, match="TANLIAN_REQUEST_HEAD_SECOND: not a setting"):
        Settings.from_environment({"TANLIAN_REQUEST_HEAD_SECOND": "2"}, data=tmp_path)
    taken = Settings.from_environment(
        {"TANLIAN_REQUEST_HEAD_SECONDS": "2", "TANLIAN_PASSPHRASE": "x", "OTHER": "y"},
        data=tmp_path,
    )
    assert taken.request_head_seconds == 2
    # Read by ledger.native: every node refused to start with it set (found by the benchmark).
    assert Settings.from_environment({"TANLIAN_PURE_PYTHON": "1"}, data=tmp_path) == Settings(
        data=tmp_path
    )


# The OpenAPI document ------------------------------------------------------------------------


async def test_every_operation_has_examples_for_its_parameters_and_body(
    spec: dict[str, Any],
) -> None:
    assert len(list(operations(spec))) == 22
    for method, path, operation in operations(spec):
        for parameter in operation.get("parameters", []):
            examples = parameter.get("examples")
            assert examples, (method, path, parameter["name"])
            assert all("value" in example for example in examples.values())
        if (method, path) == ("POST", "/v1/consensus/messages"):
            content = operation["requestBody"]["content"]
            assert set(content) == {"application/x-ndjson"}, (method, path)
            for example in content["application/x-ndjson"]["examples"].values():
                decode_batch(example["value"].encode(), transaction_bytes_max=16384)
        elif method == "POST":
            content = operation["requestBody"]["content"]
            assert set(content) == {"application/json"}, (method, path)
            examples = content["application/json"]["examples"]
            assert set(examples) == {*TRANSACTION_TYPES, "array"}
            for name, example in examples.items():
                for envelope in example["value"] if name == "array" else [example["value"]]:
                    validate_envelope(envelope)  # every example is a well-formed envelope
        else:
            assert "requestBody" not in operation, (method, path)


async def test_every_json_answer_is_a_documented_model(spec: dict[str, Any]) -> None:
    components = spec["components"]["schemas"]

    def refs(schema: Any) -> list[str]:
        if isinstance(schema, dict):
            found = [schema["$ref"]] if "$ref" in schema else []
            return found + [ref for value in schema.values() for ref in refs(value)]
        if isinstance(schema, list):
            return [ref for value in schema for ref in refs(value)]
        return []

    for method, path, operation in operations(spec):
        if path in ("/metrics", "/v1/export"):
            continue  # Prometheus text and NDJSON: test_non_json_answers_declare_their_media_type
        success = [r for status, r in operation["responses"].items() if int(status) < 300]
        assert success, (method, path)
        for response in success:
            schema = response["content"]["application/json"]["schema"]
            named = refs(schema)
            assert named, (method, path)  # a model, never an untyped object
            for ref in named:
                assert ref.removeprefix("#/components/schemas/") in components, ref
    body = spec["paths"]["/v1/transactions"]["post"]["requestBody"]["content"]
    assert refs(body["application/json"]["schema"]) == ["#/components/schemas/Envelope"]
    envelope = components["Envelope"]
    assert envelope["additionalProperties"] is False
    assert envelope["properties"]["signatures"]["maxItems"] == TRANSACTION_SIGNATURES_MAX
    transfer = components["Transfer"]["properties"]
    assert transfer["quantity"] == {
        "maximum": JSON_INTEGER_MAX,
        "minimum": 1,
        "title": "Quantity",
        "type": "integer",
    }
    assert transfer["memo"]["maxLength"] == LONG_TEXT_CHARS_MAX  # optional, never null


async def test_every_operation_declares_its_problem_responses(spec: dict[str, Any]) -> None:
    for method, path, operation in operations(spec):
        responses = operation["responses"]
        for code in COMMON_CODES:
            assert str(STATUS[code][0]) in responses, (method, path, code)
        for status, response in responses.items():
            if int(status) < 400:
                continue
            (media,) = response["content"]  # an error is a problem, and only a problem
            assert media == PROBLEM_MEDIA_TYPE, (method, path, status)
            body = response["content"][media]
            codes = body["schema"]["properties"]["code"]["enum"]
            assert codes and all(STATUS[code][0] == int(status) for code in codes)
            assert set(body["examples"]) == set(codes), (method, path, status)
            for example in body["examples"].values():
                problem = Problem.model_validate(example["value"])
                assert problem.status == int(status) and problem.code in codes
        assert "HTTPValidationError" not in json.dumps(responses), (method, path)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_pages_load_everything_from_the_node(
    client: httpx.AsyncClient, page: str
) -> None:
    """A node runs offline: its docs pages name no other host, and it serves what they load."""
    response = await client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "//" not in re.sub(r"<!--.*?-->", "", response.text, flags=re.S).replace("://", "")
    assets = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", response.text)
    assert "/openapi.json" in assets
    loaded = [asset for asset in assets if asset.startswith(DOCS_ASSETS_URL)]
    assert any(asset.endswith(".js") for asset in loaded), assets
    for asset in loaded:
        served = await client.get(asset)
        assert served.status_code == 200, asset
        assert len(served.content) > 1000, asset
    missing = await client.get(f"{DOCS_ASSETS_URL}/no-such-file.js")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == PROBLEM_MEDIA_TYPE


async def test_non_json_answers_declare_their_media_type(spec: dict[str, Any]) -> None:
    export = spec["paths"]["/v1/export"]["get"]["responses"]["200"]["content"]
    assert set(export) == {"application/x-ndjson"}
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert set(metrics) == {"text/plain"}


async def test_a_submission_declares_both_answers_and_every_rule_code(
    spec: dict[str, Any],
) -> None:
    responses = spec["paths"]["/v1/transactions"]["post"]["responses"]
    assert {"200", "202"} <= set(responses)
    declared = {
        code
        for status, response in responses.items()
        if int(status) >= 400
        for code in response["content"][PROBLEM_MEDIA_TYPE]["schema"]["properties"]["code"]["enum"]
    }
    assert {"malformed_json", "request_timeout", "mempool_full", "bad_signature"} <= declared
    assert {"not_found", "method_not_allowed"}.isdisjoint(declared)


async def test_on_an_empty_chain_each_example_answers_a_declared_status(
    client: httpx.AsyncClient, spec: dict[str, Any]
) -> None:
    """A node that has cut no block yet (height 0) answers each operation's examples with a
    status its OpenAPI declares, in the media type declared for it (schemathesis runs on a
    chain with blocks)."""
    for method, path, operation in operations(spec):
        url, params = path, {}
        for parameter in operation.get("parameters", []):
            value = next(iter(parameter["examples"].values()))["value"]
            if parameter["in"] == "path":
                url = url.replace("{" + parameter["name"] + "}", str(value))
            else:
                params[parameter["name"]] = value
        body = operation.get("requestBody", {}).get("content", {}).get("application/json")
        response = await client.request(
            method,
            url,
            params=params,
            json=None if body is None else body["examples"]["retire"]["value"],
        )
        declared = operation["responses"].get(str(response.status_code))
        assert declared is not None, (method, url, response.status_code, response.text)
        media = response.headers["content-type"].split(";")[0]
        assert media in declared.get("content", {media: None}), (method, url, media)
        assert response.status_code < 500, (method, url, response.text)


def test_a_code_not_in_the_table_cannot_be_declared() -> None:
    with pytest.raises(KeyError):
        problem_responses("no_such_code")
    assert set(problem_responses()) == {STATUS[code][0] for code in COMMON_CODES}


async def test_a_client_that_leaves_mid_body_is_not_an_internal_error(
    node: tuple[Chain, Node], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, running = node
    app = create_app(running, Settings(data=tmp_path), manage_node=False)
    incoming: list[Message] = [
        {"type": "http.request", "body": b'{"tx"', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/transactions",
        "raw_path": b"/v1/transactions",
        "query_string": b"",
        "headers": [(b"content-length", b"100"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "scheme": "http",
        "http_version": "1.1",
        "root_path": "",
    }
    with caplog.at_level("DEBUG", logger="tanlian.api"):
        await app(scope, receive, send)
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
    assert "client disconnected" in caplog.text
    assert running.state.height == 0


@pytest.mark.parametrize(
    "path",
    [
        "/v1/proofs/state?key=%FF",  # answered once for the key "\ufffd"
        "/v1/proofs/state?key=%ED%A0%80",  # a UTF-16 surrogate, encoded
        "/v1/retirements?beneficiary=%C3",
        "/v1/accounts/%FF",
    ],
)
async def test_percent_escapes_that_are_not_utf8_are_refused(
    client: httpx.AsyncClient, path: str
) -> None:
    body = assert_problem(await client.get(path), 422, "invalid_field")
    assert "not UTF-8" in body["detail"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/batches?methodology_id=Household%20Electricity",
        "/v1/retirements?program_id=ZIBO_GREEN",
        "/v1/retirements?beneficiary=",
    ],
)
async def test_a_filter_no_item_could_match_is_refused(
    client: httpx.AsyncClient, path: str
) -> None:
    """Found by review: each answered 200 with an empty page, a client's typo read as
    "nothing there", where the explorer's pages refuse the same filters."""
    body = assert_problem(await client.get(path), 422, "invalid_field")
    assert "query." in body["detail"]


async def test_a_valid_escape_is_still_read(client: httpx.AsyncClient) -> None:
    answer = await client.get("/v1/retirements?beneficiary=%E7%A2%B3%20Alice")
    assert answer.status_code == 200 and answer.json()["items"] == []
    assert_problem(await client.get("/v1/accounts/%E7%A2%B3"), 422, "invalid_field")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/blocks/1_0",  # served block 10
        "/v1/blocks/+1",
        "/v1/blocks/%201",
        "/v1/blocks?limit=1.0",
        "/v1/blocks?limit=1_0",
        "/v1/proofs/consistency?from_height=0x1",
        "/v1/export?from_height=1e0",
        "/v1/blocks/0001",  # served block 1 (found by review)
        "/v1/blocks?limit=010",
    ],
)
async def test_integers_are_decimal_digits_only(client: httpx.AsyncClient, path: str) -> None:
    body = assert_problem(await client.get(path), 422, "invalid_field")
    assert "decimal digits" in body["detail"]


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/v1/blocks?limit=1&limit=500", "limit"),  # answered as limit=500: the last one won
        ("/v1/retirements?beneficiary=a&beneficiary=b", "beneficiary"),
        ("/v1/export?to_height=1&from_height=1&to_height=2", "to_height"),
    ],
)
async def test_a_query_parameter_given_twice_is_refused(
    client: httpx.AsyncClient, path: str, name: str
) -> None:
    body = assert_problem(await client.get(path), 422, "invalid_field")
    assert body["detail"] == f"query.{name}: given more than once"


async def test_unknown_query_parameters_are_still_ignored(client: httpx.AsyncClient) -> None:
    answer = await client.get("/v1/blocks?limit=1&utm=a&utm=b")
    assert answer.status_code == 200


@pytest.mark.parametrize("path", ["/v1/genesis/", "/v1/checkpoint/", "/v1/blocks/"])
async def test_a_slash_too_many_is_not_found_not_redirected(
    client: httpx.AsyncClient, path: str
) -> None:
    """The redirect's Location was built from the Host header (an open redirect for a cache
    to store), and had no problem body."""
    answer = await client.get(path, headers={"host": "evil.example"})
    assert_problem(answer, 404, "not_found")
    assert "location" not in answer.headers
