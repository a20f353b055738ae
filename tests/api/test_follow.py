"""Other nodes' API as block sync and followers use it: `ApiSource` over HTTP (httpx's mock
transport standing in for the node), the client's bound on a whole answer, the `Forwarder`
relaying a followed node's answers (and refusing what it cannot vouch for), and a follower
node serving the API from its own store."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from typer.testing import CliRunner

from api.app import create_app
from api.cli import app
from api.client import Client, ClientError
from api.follow import FORWARD_HOPS_MAX, FORWARDED_HEADER, ApiSource, Forwarder
from api.node import Node
from api.problems import problem_body
from api.settings import Settings
from consensus.follower import Follower
from consensus.producer import Outcome
from consensus.sync import BlockSync, MemorySource
from consensus.wal import WAL_FILE_NAME
from ledger.encoding import canonical
from ledger.errors import LedgerError
from ledger.evidence import parse_evidence
from ledger.store import Store
from tests.api.test_app import assert_problem
from tests.consensus.test_sync import (
    NEW_VALIDATOR,
    Sink,
    Unreachable,
    built,
    decoded,
    forked_lines,
)

Handler = Callable[[httpx.Request], httpx.Response]
TX_ID = "ab" * 32


def node_api(lines: list[bytes] | None = None, *, checkpoint: Any = None) -> Handler:
    """A node's checkpoint and export over the built chain (tests.consensus.test_sync)."""
    chain = built()
    served = list(chain.lines) if lines is None else lines

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/checkpoint":
            if checkpoint is not None:
                return httpx.Response(200, json=checkpoint)
            if not served:
                return httpx.Response(404, json=problem_body("not_found", "no block yet"))
            block, certificate = decoded(served[-1])
            body = {"header": block.header.to_json(), "certificate": certificate.to_json()}
            return httpx.Response(200, json=body)
        assert request.url.path == "/v1/export"
        first = int(request.url.params["from_height"])
        last = int(request.url.params["to_height"])
        content = chain.genesis_line + b"".join(served[first - 1 : last])
        return httpx.Response(200, content=content)

    return handler


def api_sync(handler: Handler, **options: Any) -> BlockSync:
    source = ApiSource("http://node.test", transport=httpx.MockTransport(handler))
    return BlockSync([source], genesis=built().chain.genesis, **options)


# --- ApiSource ----------------------------------------------------------------------------------


def test_a_nodes_api_is_synced_through_its_checkpoint_and_export() -> None:
    sync = api_sync(node_api())
    sink = Sink()
    state = built().genesis
    while (after := sync.step(state, sink.append)) is not state:
        state = after
    assert state.height == 250 and state.state_root == built().states[-1].state_root
    assert sync.counters.refusals == 0
    sync.close_sources()


def test_a_chain_without_blocks_has_head_zero() -> None:
    source = ApiSource("http://node.test", transport=httpx.MockTransport(node_api([])))
    assert source.latest().height == 0


@pytest.mark.parametrize(
    "checkpoint",
    [
        {"header": {"height": "7"}},
        {"header": None},
        {"other": 1},
        {"header": {}},
        {"header": {"height": 7}},  # a height, but no header: its hash cannot be compared
    ],
)
def test_a_checkpoint_without_a_height_is_refused(checkpoint: Any) -> None:
    source = ApiSource(
        "http://node.test", transport=httpx.MockTransport(node_api(checkpoint=checkpoint))
    )
    with pytest.raises(ClientError) as refused:
        source.latest()
    assert refused.value.code == "bad_answer"


def test_an_unreachable_node_is_refused_with_its_reason() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    sync = api_sync(handler)
    assert sync.step(built().genesis, Sink().append).height == 0
    assert "(node_unreachable)" in (sync.counters.last_refusal or "")


def test_a_line_over_the_chains_bound_is_refused_while_it_streams() -> None:
    sync = api_sync(node_api())
    sync.line_bytes_max = 2000  # the chain's bound is ~160 MB: a small one stands in
    assert len(built().lines[3]) < 2000 < len(built().lines[4])
    state = sync.step(built().states[3], lambda block, certificate, state: None)
    assert state.height == 4
    assert "rule malformed at height 5: the line is over 2000 bytes" in (
        sync.counters.last_refusal or ""
    )


def test_a_node_dripping_its_answer_is_cut_off() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        def drip() -> Iterator[bytes]:
            for _ in range(20):
                time.sleep(0.05)
                yield b" "
            yield b"{}"

        return httpx.Response(200, content=drip())

    with (
        Client(
            "http://node.test", answer_seconds_max=0.2, transport=httpx.MockTransport(handler)
        ) as client,
        pytest.raises(ClientError) as refused,
    ):
        client.checkpoint()
    assert refused.value.code == "node_unreachable"
    assert "the whole answer took too long" in refused.value.message


# --- Forwarder ----------------------------------------------------------------------------------


def forwarder(
    *handlers: Handler,
    distrust: Sequence[str | None] = (),
    refused: Sequence[int] = (),
    patience: float = 15.0,
) -> Forwarder:
    """A forwarder to one node per handler, in order; `distrust[i]`: why node i is not asked;
    `refused`: the nodes block sync could not use a moment ago."""

    def route(request: httpx.Request) -> httpx.Response:
        index = int(request.url.host.removeprefix("node-").removesuffix(".test"))
        return handlers[index](request)

    urls = [f"http://node-{i}.test" for i in range(len(handlers))]
    reasons = [*distrust, *[None] * (len(handlers) - len(distrust))]
    return Forwarder(
        urls,
        distrusted=reasons.__getitem__,
        refused=lambda index: index in refused,
        patience_seconds=patience,
        transport=httpx.MockTransport(route),
    )


def answering(status: int, body: Any, **headers: str) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/transactions"
        return httpx.Response(status, json=body, headers=headers)

    return handler


def unreachable(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


PENDING = {"tx_id": TX_ID, "status": "pending"}
COMMITTED = {"tx_id": TX_ID, "status": "committed", "height": 3, "log_index": 7}


def synced(tx_id: str) -> Outcome | None:
    """This follower's own store, holding TX_ID where COMMITTED says."""
    return (
        Outcome(tx_id=tx_id, status="committed", height=3, log_index=7) if tx_id == TX_ID else None
    )


def nothing(tx_id: str) -> Outcome | None:
    """A follower's store that holds no commit yet."""
    return None


def relayed(
    relay: Forwarder,
    body: bytes = b"{}",
    *,
    wait: bool = False,
    ids: list[str | None] | None = None,
    own: Callable[[str], Outcome | None] = synced,
) -> tuple[int, dict[str, Any]]:
    """`relay.submit` of a body whose envelopes are `ids` (TX_ID alone by default)."""
    status, answer, _ = relay.submit(body, wait=wait, ids=ids or [TX_ID], own=own)
    return status, answer


def test_the_followed_nodes_answer_is_relayed_with_its_status() -> None:
    seen: list[httpx.Request] = []

    def pending(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json=PENDING)

    assert relayed(forwarder(pending), b'{"as": "it came"}', own=nothing) == (202, PENDING)
    assert seen[0].content == b'{"as": "it came"}' and "wait" not in seen[0].url.params
    assert relayed(forwarder(answering(200, COMMITTED)), wait=True) == (200, COMMITTED)
    results = {"results": [PENDING, {"status": "rejected", "problem": problem_body("x", "y")}]}
    relay = forwarder(answering(202, results))
    assert relayed(relay, b"[]", ids=[TX_ID, None], own=nothing) == (202, results)


def test_the_next_node_is_asked_when_one_cannot_be_reached_or_answers_badly() -> None:
    relay = forwarder(unreachable, answering(202, PENDING))
    assert relayed(relay, own=nothing) == (202, PENDING)
    relay = forwarder(answering(501, {"not": "an answer"}), answering(200, COMMITTED))
    assert relayed(relay, wait=True) == (200, COMMITTED)
    with pytest.raises(LedgerError) as refused:
        relayed(forwarder(unreachable, answering(200, {"tx_id": TX_ID})), own=nothing)
    assert refused.value.code == "bad_upstream"


def test_no_node_reachable_is_upstream_unavailable() -> None:
    with pytest.raises(LedgerError) as refused:
        relayed(forwarder(unreachable, unreachable), own=nothing)
    assert refused.value.code == "upstream_unavailable"
    assert refused.value.message.count("cannot reach") == 2


def test_a_node_the_sync_found_on_another_chain_or_a_fork_is_not_asked() -> None:
    # Found by review: a follower forwarded to a node it had refused as another chain, and
    # to one it had caught serving a fork, which committed the transaction there.
    asked: list[httpx.Request] = []

    def fork(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return httpx.Response(202, json=PENDING)

    relay = forwarder(fork, answering(202, PENDING), distrust=["it serves a fork (height 9)"])
    assert relayed(relay, own=nothing) == (202, PENDING) and not asked
    relay = forwarder(fork, distrust=["it serves another chain"])
    with pytest.raises(LedgerError) as refused:
        relayed(relay, own=nothing)
    assert refused.value.code == "upstream_unavailable" and not asked
    assert "http://node-0.test was not asked: it serves another chain" in refused.value.message


def test_nodes_block_sync_cannot_use_are_asked_last_and_not_after_one_is_unreachable() -> None:
    # Found by review: with four validators stopped, a follower asked each in turn, 10 s
    # each, and answered after 40 s, past the command line's own wait.
    asked: list[str] = []

    def counted(handler: Handler) -> Handler:
        def counting(request: httpx.Request) -> httpx.Response:
            asked.append(request.url.host)
            return handler(request)

        return counting

    relay = forwarder(counted(unreachable), counted(answering(202, PENDING)), refused=[0])
    assert relayed(relay, own=nothing) == (202, PENDING) and asked == ["node-1.test"]
    asked.clear()
    relay = forwarder(*(counted(unreachable) for _ in range(4)), refused=[0, 1, 2, 3], patience=0)
    with pytest.raises(LedgerError) as refused:
        relayed(relay, own=nothing)
    assert refused.value.code == "upstream_unavailable" and asked == ["node-0.test"]
    assert refused.value.message.count("block sync could not use it a moment ago either") == 3
    # Within the patience, the others are asked all the same: this follower's own link may
    # have been what failed, and they may be back (found by review).
    asked.clear()
    answering_again = [counted(unreachable), *(counted(answering(202, PENDING)),) * 3]
    relay = forwarder(*answering_again, refused=[0, 1, 2, 3])
    assert relayed(relay, own=nothing) == (202, PENDING)
    assert asked == ["node-0.test", "node-1.test"]
    # Refused by block sync but the only ones that answer: still asked, after the others.
    asked.clear()
    relay = forwarder(counted(answering(202, PENDING)), counted(unreachable), refused=[0])
    assert relayed(relay, own=nothing) == (202, PENDING)
    assert asked == ["node-1.test", "node-0.test"]


def test_a_submission_that_comes_back_to_its_follower_is_a_forward_loop() -> None:
    # Found by review: a follower given its own URL forwarded each submission to itself
    # until its per-client limit answered 429 too_many_requests.
    seen: list[httpx.Request] = []

    def pending(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json=PENDING)

    relay = forwarder(pending)
    me = relay.identity
    assert relayed(relay, own=nothing) == (202, PENDING)
    assert seen[-1].headers[FORWARDED_HEADER] == me  # named on the way on
    other = "0123456789abcdef"
    assert relay.route(f"{other},not-an-id,{'f' * 40}") == f"{other},{me}"
    assert relay.route(f"{other}, {'1' * 16}") == f"{other},{'1' * 16},{me}"  # a proxy's join
    with pytest.raises(LedgerError) as looped:
        relay.route(f"{other}, {me}")
    assert looped.value.code == "forward_loop" and "lead back to it" in looped.value.message
    with pytest.raises(LedgerError) as looped:
        relay.route(",".join(f"{i:016x}" for i in range(FORWARD_HOPS_MAX)))
    assert looped.value.code == "forward_loop" and "passed through 8" in looped.value.message
    # A followed node that answers forward_loop leads back here: the next one is asked, and
    # when every one does, the user is told so.
    loop_body = problem_body("forward_loop", "leads back")
    looping = answering(508, loop_body, **{"content-type": "application/problem+json"})
    assert relayed(forwarder(looping, pending), own=nothing) == (202, PENDING)
    with pytest.raises(LedgerError) as looped:
        relayed(forwarder(looping, looping), own=nothing)
    assert looped.value.code == "forward_loop"
    assert looped.value.message.count("leads back to this follower") == 2
    with pytest.raises(LedgerError) as refused:
        relayed(forwarder(looping, unreachable), own=nothing)
    assert refused.value.code == "upstream_unavailable"


def test_a_problem_is_relayed_with_its_code() -> None:
    problem = problem_body("bad_nonce", "nonce 3 does not follow 1")
    relay = forwarder(answering(409, problem, **{"content-type": "application/problem+json"}))
    with pytest.raises(LedgerError) as refused:
        relayed(relay, own=nothing)
    assert refused.value.code == "bad_nonce"
    # The validator's own words, once: the status and its address had been added, so a
    # client printed "... (HTTP 409) (HTTP 409)".
    assert refused.value.message == "nonce 3 does not follow 1"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, problem_body("internal_error", "oops")),  # its bug is not ours to claim
        (422, {**problem_body("invalid_field", "x"), "code": "never_heard_of"}),
        (418, {"not": "a problem"}),
        (202, {"tx_id": TX_ID, "status": "maybe"}),
        (202, {**PENDING, "extra": 1}),
        (200, [PENDING]),
        (201, PENDING),
    ],
)
def test_what_is_not_a_submissions_answer_is_bad_upstream(status: int, body: Any) -> None:
    with pytest.raises(LedgerError) as refused:
        relayed(forwarder(answering(status, body)), own=nothing)
    assert refused.value.code == "bad_upstream", refused.value


OTHER_ID = "cd" * 32


def test_a_commit_is_answered_only_as_this_followers_store_holds_it() -> None:
    """Found by review: a hostile followed node's "committed at height 999999" was relayed
    as it came. A commit this store has not synced is pending here; one it holds is
    answered with its own height and log index."""
    claimed = {**COMMITTED, "height": 999_999, "log_index": 123_456}
    status, answer, unsynced = forwarder(answering(200, claimed)).submit(
        b"{}", wait=False, ids=[TX_ID], own=synced
    )
    assert (status, answer, unsynced) == (200, COMMITTED, [])
    status, answer, unsynced = forwarder(answering(200, COMMITTED)).submit(
        b"{}", wait=False, ids=[TX_ID], own=lambda tx_id: None
    )
    assert (status, answer, unsynced) == (202, PENDING, [TX_ID])
    results = {"results": [COMMITTED, {**COMMITTED, "tx_id": OTHER_ID}]}
    status, answer, unsynced = forwarder(answering(200, results)).submit(
        b"[]", wait=False, ids=[TX_ID, OTHER_ID], own=synced
    )
    pending_other = {"tx_id": OTHER_ID, "status": "pending"}
    assert (status, answer, unsynced) == (202, {"results": [COMMITTED, pending_other]}, [OTHER_ID])


@pytest.mark.parametrize(
    ("ids", "body"),
    [
        ([OTHER_ID], PENDING),  # another transaction than the one submitted
        (None, PENDING),  # an answer to what is no envelope
        ([TX_ID, TX_ID], PENDING),  # one answer to an array of two
        ([None], {"results": [PENDING]}),  # accepted what is no envelope
        (  # a rejection of another transaction
            [TX_ID, TX_ID],
            {
                "results": [
                    PENDING,
                    {"tx_id": "cd" * 32, "status": "rejected", "problem": problem_body("x", "y")},
                ]
            },
        ),
    ],
)
def test_an_answer_about_other_transactions_is_bad_upstream(
    ids: list[str | None] | None, body: dict[str, Any]
) -> None:
    with pytest.raises(LedgerError) as refused:
        forwarder(answering(202, body)).submit(b"{}", wait=False, ids=ids, own=synced)
    assert refused.value.code == "bad_upstream", refused.value
    assert "answered the submission" in refused.value.message


def test_an_item_refused_as_it_was_read_is_relayed_whatever_this_follower_parsed() -> None:
    """A followed node's schema may refuse what this follower's parser took (another version,
    a stricter edge check): its rejection without an id is relayed, not bad_upstream."""
    refused = {"status": "rejected", "problem": problem_body("invalid_field", "x")}
    relay = forwarder(answering(200, {"results": [refused, PENDING]}))
    answer = relayed(relay, b"[]", ids=[TX_ID, TX_ID], own=nothing)
    assert answer == (202, {"results": [refused, PENDING]})


def test_this_followers_own_commit_stands_over_a_followed_nodes_refusal_or_pending() -> None:
    """Found by review: a followed node's 409 (or a rejected item, or pending) was relayed
    for a transaction this follower's verified chain held committed."""
    problem = problem_body("bad_nonce", "nonce 3 does not follow 1")
    relay = forwarder(answering(409, problem, **{"content-type": "application/problem+json"}))
    assert relayed(relay, b' {"tx": 1}') == (200, COMMITTED)
    with pytest.raises(LedgerError) as refused:  # an array's answer keeps its shape
        relayed(relay, b"[]")
    assert refused.value.code == "bad_nonce"
    # ... and when no followed node answers at all (found by the review of that fix)
    assert relayed(forwarder(unreachable, unreachable), b"{}") == (200, COMMITTED)
    with pytest.raises(LedgerError) as unanswered:
        relayed(forwarder(unreachable), b"{}", own=nothing)
    assert unanswered.value.code == "upstream_unavailable"
    rejected = {"tx_id": TX_ID, "status": "rejected", "problem": problem}
    relay = forwarder(answering(200, {"results": [rejected, PENDING]}))
    status, answer = relayed(relay, b"[]", ids=[TX_ID, TX_ID])
    assert (status, answer) == (200, {"results": [COMMITTED, COMMITTED]})


def test_a_node_dripping_its_answer_is_passed_over_for_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by review: a followed node that sent its status line, then its answer a byte at
    a time, held every submission for as long as it liked; the next was never asked."""

    def dripping(request: httpx.Request) -> httpx.Response:
        def drip() -> Iterator[bytes]:
            for _ in range(40):
                time.sleep(0.05)
                yield b" "
            yield canonical(COMMITTED)  # what it would say, had it been waited for

        return httpx.Response(200, content=drip())

    monkeypatch.setattr("api.follow.FORWARD_ANSWER_SECONDS_MAX", 0.3)
    # The next node's answer, not the dripping one's: it was passed over.
    assert relayed(forwarder(dripping, answering(202, PENDING)), own=nothing) == (202, PENDING)


def test_after_an_answer_about_another_transaction_the_next_node_is_asked() -> None:
    relay = forwarder(answering(202, PENDING), answering(202, {**PENDING, "tx_id": OTHER_ID}))
    assert relayed(relay, ids=[OTHER_ID]) == (202, {**PENDING, "tx_id": OTHER_ID})


# --- a follower node ----------------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def follower(tmp_path: Path) -> AsyncIterator[tuple[Node, httpx.AsyncClient]]:
    chain = built()
    Store.create(tmp_path, chain.chain.genesis_document).close()
    running = Node(tmp_path, None, follow=["http://followed.test"])
    assert running.sync is not None and isinstance(running.producer, Follower)
    running.sync.sources = (
        MemorySource(name="followed", genesis_line=chain.genesis_line, lines=list(chain.lines)),
    )
    running.forwarder = forwarder(answering(202, PENDING))
    running.start()
    served = create_app(running, Settings(data=tmp_path), manage_node=False)
    try:
        deadline = time.monotonic() + 30
        while running.state.height < 250:
            assert time.monotonic() < deadline, running.state.height
            time.sleep(0.02)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=served), base_url="http://follower"
        ) as client:
            yield running, client
    finally:
        running.stop()


@pytest.mark.anyio
async def test_a_follower_serves_the_api_from_its_own_store(
    follower: tuple[Node, httpx.AsyncClient],
) -> None:
    node, client = follower
    chain = built()
    checkpoint = (await client.get("/v1/checkpoint")).json()
    assert checkpoint["header"]["height"] == 250
    assert checkpoint["header"]["state_root"] == chain.states[-1].state_root
    block, _ = decoded(chain.lines[1])
    answer = await client.get(f"/v1/transactions/{block.transactions[0].tx_id}")
    assert answer.json()["status"] == "committed" and answer.json()["height"] == 2
    exported = (await client.get("/v1/export?from_height=1&to_height=250")).content
    assert exported.splitlines(keepends=True) == [chain.genesis_line, *chain.lines]
    metrics = (await client.get("/metrics")).text
    assert "tanlian_blocks_synced 250.0" in metrics and "tanlian_sync_refusals 0.0" in metrics
    assert node.blocks_produced == 250
    # Submissions go to the followed node, and its answer comes back.
    envelope = chain.chain.create_program("zibo-late")
    pending = {"tx_id": envelope.tx_id, "status": "pending"}
    node.forwarder = forwarder(answering(202, pending))
    submitted = await client.post("/v1/transactions", content=envelope.leaf)
    assert submitted.status_code == 202 and submitted.json() == pending
    # It runs no consensus and signs nothing: it holds no key and keeps no signed-message log.
    refused = await client.post("/v1/consensus/messages", content=b"{}\n")
    assert_problem(refused, 404, "not_found")
    assert node.consensus_inbox is None and not (node.data / WAL_FILE_NAME).exists()


@pytest.mark.anyio
async def test_a_follower_answers_problems_for_what_it_cannot_forward(
    follower: tuple[Node, httpx.AsyncClient],
) -> None:
    node, client = follower
    node.forwarder = forwarder(unreachable)
    assert_problem(
        await client.post("/v1/transactions", content=b"{}"), 503, "upstream_unavailable"
    )
    node.forwarder = forwarder(answering(200, {"tx_id": "nope"}))
    assert_problem(await client.post("/v1/transactions", content=b"{}"), 502, "bad_upstream")
    node.forwarder = forwarder(answering(202, PENDING))  # an answer to what is no envelope
    assert_problem(await client.post("/v1/transactions", content=b"{}"), 502, "bad_upstream")
    problem = problem_body("insufficient_credits", "holds 5, needs 10")
    node.forwarder = forwarder(answering(409, problem))
    relayed = assert_problem(
        await client.post("/v1/transactions?wait=commit", content=json.dumps({}).encode()),
        409,
        "insufficient_credits",
    )
    assert "holds 5, needs 10" in relayed["detail"]


@pytest.mark.anyio
async def test_a_follower_answers_committed_only_what_its_own_store_holds(
    follower: tuple[Node, httpx.AsyncClient],
) -> None:
    """Found by review: a hostile followed node's "committed at height 999999, log index
    123456" was relayed as it came, for a transaction the follower holds at height 2."""
    node, client = follower
    block, _ = decoded(built().lines[1])
    held = block.transactions[0]
    mine = node.outcome(held.tx_id)
    assert mine is not None and mine.height == 2
    forged = {"tx_id": held.tx_id, "status": "committed", "height": 999_999, "log_index": 123_456}
    node.forwarder = forwarder(answering(200, forged))
    answer = await client.post("/v1/transactions", content=held.leaf)
    assert answer.status_code == 200
    assert answer.json() == {**forged, "height": 2, "log_index": mine.log_index}
    # A commit it has not synced is pending here; waited for, it stays pending when it
    # does not come (the wait is bounded).
    unsynced = built().chain.create_program("zibo-unsynced")
    claimed = {**forged, "tx_id": unsynced.tx_id}
    node.forwarder = forwarder(answering(200, claimed))
    answer = await client.post("/v1/transactions", content=unsynced.leaf)
    assert (answer.status_code, answer.json()) == (
        202,
        {"tx_id": unsynced.tx_id, "status": "pending"},
    )
    quick = create_app(node, Settings(data=node.data, commit_wait_seconds=0.3), manage_node=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=quick), base_url="http://follower"
    ) as waiting:
        started = time.monotonic()
        answer = await waiting.post("/v1/transactions?wait=commit", content=unsynced.leaf)
    assert answer.status_code == 202 and answer.json()["status"] == "pending"
    assert 0.25 <= time.monotonic() - started < 5


@pytest.mark.anyio
async def test_a_follower_none_of_whose_nodes_serves_it_says_it_is_out_of_touch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: a follower of nodes that were down, or of no Tanlian node at all,
    answered /healthz "ok" and nothing else, and /v1/checkpoint "the chain has no block yet",
    which it cannot know."""
    chain = built()
    Store.create(tmp_path, chain.chain.genesis_document).close()
    node = Node(tmp_path, None, follow=["http://gone.test"])
    assert node.sync is not None
    gone = Unreachable()
    node.sync.sources = (gone,)
    served = create_app(node, Settings(data=tmp_path), manage_node=False)
    node.start()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=served), base_url="http://follower"
        ) as client:
            deadline = time.monotonic() + 30
            while node.sync.counters.last_refusal is None:  # its sync asked, and refused
                assert time.monotonic() < deadline
                await anyio.sleep(0.02)
            assert (await client.get("/healthz")).json() == {"status": "ok", "height": 0}
            monkeypatch.setattr("api.node.OUT_OF_TOUCH_SECONDS", 0.0)
            health = (await client.get("/healthz")).json()
            checkpoint = await client.get("/v1/checkpoint")
    finally:
        node.stop()
    assert health["status"] == "ok" and health["out_of_touch"]["code"] == "out_of_touch"
    reason = health["out_of_touch"]["reason"]
    assert reason.startswith("no node it follows has served it for ")
    assert "last refused: gone: (node_unreachable) cannot reach it" in reason
    assert checkpoint.status_code == 404
    assert checkpoint.json()["detail"] == "this follower has synced no block yet"


def follower_of_a_fork(data: Path) -> Node:
    """A follower (not started) of two nodes whose chains part at height 30, each certified:
    the second one's block there was signed by the validator that signed the first's."""
    chain = built()
    Store.create(data, chain.chain.genesis_document).close()
    node = Node(data, None, follow=["http://honest.test", "http://forked.test"])
    assert node.sync is not None
    node.sync.sources = (
        MemorySource(name="honest", genesis_line=chain.genesis_line, lines=list(chain.lines[:30])),
        MemorySource(name="forked", genesis_line=chain.genesis_line, lines=forked_lines(30)),
    )
    return node


@pytest.mark.anyio
async def test_a_follower_keeps_the_proof_of_a_fork_and_says_so(tmp_path: Path) -> None:
    """Found by review: a follower whose upstream served a certified fork only logged a
    refusal every 30 s; /healthz said ok and nothing of the proof was kept."""
    chain = built()
    node = follower_of_a_fork(tmp_path)
    assert node.sync is not None
    node.start()
    served = create_app(node, Settings(data=tmp_path), manage_node=False)
    try:
        deadline = time.monotonic() + 30
        while node.sync.counters.fork is None:
            assert time.monotonic() < deadline, node.sync.counters
            time.sleep(0.02)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=served), base_url="http://follower"
        ) as client:
            health = (await client.get("/healthz")).json()
            metrics = (await client.get("/metrics")).text
            checkpoint = (await client.get("/v1/checkpoint")).json()
    finally:
        node.stop()
    ours, theirs = decoded(chain.lines[29])[0], decoded(forked_lines(30)[29])[0]
    signer = NEW_VALIDATOR.public_key_hex
    assert health == {
        "status": "ok",
        "height": 30,
        "fork": {
            "height": 30,
            "ours": ours.block_hash(),
            "theirs": theirs.block_hash(),
            "source": "forked",
            "signers_of_both": [signer],
        },
    }
    assert "tanlian_forks_detected 1.0" in metrics
    # Its own verified chain is what it serves, and nothing of the other was stored.
    assert checkpoint["header"]["height"] == 30
    assert Store.open(tmp_path).read_block(30).block_hash() == ours.block_hash()
    kept = json.loads(node.fork_proof_path(30).read_bytes())
    assert kept["kind"] == "fork" and kept["source"] == "forked"
    assert kept["ours"]["block"] == ours.to_json() and kept["theirs"]["block"] == theirs.to_json()
    assert [parse_evidence(item).public_key for item in kept["evidence"]] == [signer]
    # Only the first proof is kept: a forked source asked again at each new head had made a
    # new file of two blocks every 30 s (found by review).
    proof = node.sync.counters.fork
    assert proof is not None
    node._write_fork_proof(dataclasses.replace(proof, height=31))
    assert [path.name for path in tmp_path.glob("fork-proof-*")] == ["fork-proof-30.json"]
    # The alarm outlives a restart, as the proof does (found by review: /healthz forgot it).
    restarted = Node(tmp_path, None, follow=["http://honest.test"])
    try:
        again = create_app(restarted, Settings(data=tmp_path), manage_node=False)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=again), base_url="http://follower"
        ) as client:
            assert (await client.get("/healthz")).json() == health
            assert "tanlian_forks_detected 1.0" in (await client.get("/metrics")).text
    finally:
        restarted.stop()


def test_a_validator_records_the_evidence_of_a_fork_its_block_sync_met(tmp_path: Path) -> None:
    """Left alone before: a fork proof's duplicate precommits were written to its file but
    never reached a validator's blocks. A validator now holds them as evidence, from a proof
    its block sync hands over (`on_fork`) or one it kept from before a restart, and its next
    block records who signed both."""
    follower_data = tmp_path / "follower"
    follower = follower_of_a_fork(follower_data)
    assert follower.sync is not None
    follower.start()
    try:
        deadline = time.monotonic() + 30
        while follower.sync.counters.fork is None:
            assert time.monotonic() < deadline, follower.sync.counters
            time.sleep(0.02)
    finally:
        follower.stop()
    proof = follower.sync.counters.fork
    (evidence,) = proof.evidence
    assert evidence.public_key == NEW_VALIDATOR.public_key_hex  # the one validator from 7 on
    kept, met = tmp_path / "kept", tmp_path / "met"
    shutil.copytree(follower_data, kept)
    shutil.copytree(follower_data, met)
    for path in met.glob("fork-proof-*"):
        path.unlink()
    for data in (kept, met):
        validator = Node(data, NEW_VALIDATOR, peers=["http://127.0.0.1:9"])
        if data == met:
            assert validator.sync is not None and validator.sync.counters.fork is None
            validator._write_fork_proof(proof)  # as its block sync hands a proof over
        validator.start()
        try:
            deadline = time.monotonic() + 30
            while validator.state.get(evidence.state_key()) is None:
                assert time.monotonic() < deadline, (data.name, validator.state.height)
                time.sleep(0.02)
            recording = validator.reader().read_block(validator.state.height)
        finally:
            validator.stop()
        assert recording.height == 31 and recording.evidence == (evidence,), data.name


# --- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ([], "give either --validator-key KEY"),
        (["--validator-key", "v.pem", "--follow", "http://a.test"], "give either"),
        (["--follow", "http://a.test", "--peer", "http://b.test"], "a follower has no --peer"),
        (["--follow", "ftp://a.test"], "is not an http:// or https:// URL"),
        (
            ["--validator-key", "v.pem", "--empty-block-interval", "-1"],
            "greater than or equal to 0",
        ),
        (
            ["--validator-key", "v.pem", "--empty-block-interval", "3601"],
            "less than or equal to 3600",
        ),
        (["--validator-key", "v.pem", "--empty-block-interval", "soon"], "a valid number"),
        (
            ["--follow", "http://a.test", "--empty-block-interval", "5"],
            "a follower makes no blocks: --empty-block-interval is for a validator",
        ),
        (  # the genesis names one validator, and no --peer is given
            ["--validator-key", "v.pem", "--empty-block-interval", "60"],
            "a single validator adds no empty blocks",
        ),
    ],
)
def test_node_needs_a_key_or_nodes_to_follow(
    arguments: list[str], reason: str, tmp_path: Path
) -> None:
    genesis = tmp_path / "genesis.json"
    genesis.write_bytes(canonical(built().chain.genesis_document))
    command = ["node", "--genesis", str(genesis), "--data", str(tmp_path / "data"), *arguments]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2, result.output
    assert reason in " ".join(result.output.replace("│", " ").split()), result.output
    assert not (tmp_path / "data").exists()  # refused before anything is made


@pytest.mark.anyio
async def test_a_followers_forwarded_submissions_hold_turns_of_their_own(
    follower: tuple[Node, httpx.AsyncClient],
) -> None:
    """Found by review: a forwarded submission held its client's parsing turn for the whole
    commit wait, so 16 `wait=commit` requests of one client kept everyone's submissions
    waiting. Forwards now take turns of their own, 4 a client, given back as they end."""
    node, client = follower
    release = threading.Event()

    def slow(request: httpx.Request) -> httpx.Response:
        if b"slow" in request.content:
            release.wait(30)
        return httpx.Response(202, json=PENDING)

    node.forwarder = forwarder(slow)
    headers = {"content-type": "application/json"}

    def post(number: int) -> Any:
        return client.post("/v1/transactions", content=b'{"slow": %d}' % number, headers=headers)

    held = [asyncio.ensure_future(post(n)) for n in range(4)]
    deadline = time.monotonic() + 10
    while node.forwards.held() < 4:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    app = client._transport.app  # type: ignore[attr-defined]
    # Held forwards hold no parsing turn (found by review: this test passed with both held).
    admission = app.state.admission
    assert admission.small.working == 0 and admission.large.working == 0
    fifth = await post(5)
    assert fifth.status_code == 429 and fifth.json()["code"] == "too_many_requests"
    assert "4 forwarded submissions of 127.0.0.1" in fifth.json()["detail"]
    other = httpx.ASGITransport(app=app, client=("127.0.0.2", 1))
    async with httpx.AsyncClient(transport=other, base_url="http://follower") as elsewhere:
        answered = await elsewhere.post("/v1/transactions", content=b"{}", headers=headers)
    assert answered.status_code in (202, 502)  # answered, not kept waiting
    release.set()
    assert [(await answer).status_code for answer in held] == [502] * 4
    assert node.forwards.held() == 0
