"""POST /v1/consensus/messages: NDJSON batches parsed strictly and handed to the engine."""

from __future__ import annotations

import httpx
import pytest

from api.routes.consensus import _VOTE_EXAMPLE
from consensus.messages import Message, decode_batch, encode_batch, sign_vote
from ledger.limits import CONSENSUS_MESSAGES_BATCH_MAX
from tests.api.test_app import Live, assert_problem, live

__all__ = ["live"]  # a fixture (anyio_backend and node: tests/api/conftest.py)
pytestmark = pytest.mark.anyio
NDJSON = {"content-type": "application/x-ndjson"}


async def post_batch(live: Live, body: bytes) -> httpx.Response:
    return await live.client.post("/v1/consensus/messages", content=body, headers=NDJSON)


def collect(live: Live) -> list[Message]:
    received: list[Message] = []
    limit = live.node.genesis.params.transaction_bytes_max

    def inbox(body: bytes) -> int:
        messages = decode_batch(body, transaction_bytes_max=limit)
        received.extend(messages)
        return len(messages)

    live.node.consensus_inbox = inbox
    return received


def a_vote(live: Live, round: int = 0) -> Message:
    return sign_vote(
        live.chain.validator,
        chain_id=live.node.genesis.chain_id,
        vote_type="prevote",
        height=1,
        round=round,
        block_hash=None,
    )


async def test_a_node_without_consensus_takes_no_messages(live: Live) -> None:
    response = await post_batch(live, _VOTE_EXAMPLE.encode())
    assert_problem(response, 404, "not_found")


async def test_a_batch_reaches_the_engine(live: Live) -> None:
    received = collect(live)
    votes = [a_vote(live, 0), a_vote(live, 1)]
    response = await post_batch(live, encode_batch(votes))
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 2}
    assert received == votes


async def test_the_example_is_well_formed(live: Live) -> None:
    received = collect(live)
    response = await post_batch(live, _VOTE_EXAMPLE.encode())
    assert response.status_code == 202
    assert len(received) == 1  # its signature is checked by the replica, not here


async def test_one_bad_line_refuses_the_batch_naming_it(live: Live) -> None:
    received = collect(live)
    body = encode_batch([a_vote(live)]) + b'{"type": "prevote"}\n'
    problem = assert_problem(await post_batch(live, body), 400, "malformed_message")
    assert problem["detail"].startswith("line 2:")
    assert_problem(await post_batch(live, b""), 400, "malformed_message")
    assert received == []


async def test_more_lines_than_a_batch_holds_are_refused(live: Live) -> None:
    collect(live)
    body = b"{}\n" * (CONSENSUS_MESSAGES_BATCH_MAX + 1)  # counted before any line is read
    assert_problem(await post_batch(live, body), 422, "limit_exceeded")


@pytest.mark.parametrize("declared", ["application/json", "text/plain", "multipart/form-data"])
async def test_a_batch_declared_as_another_media_type_is_415_and_not_read(
    live: Live, declared: str
) -> None:
    received = collect(live)
    body = encode_batch([a_vote(live)])
    answer = await live.client.post(
        "/v1/consensus/messages", content=body, headers={"content-type": declared}
    )
    problem = assert_problem(answer, 415, "unsupported_media_type")
    assert problem["detail"] == (
        f"the body is declared {declared!r}; send it as application/x-ndjson (content-type header)"
    )
    assert received == []
    assert (await live.client.post("/v1/consensus/messages", content=body)).status_code == 202
    assert received == decode_batch(body, transaction_bytes_max=1 << 20)
