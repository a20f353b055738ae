"""Admission under overload (api.admission): fair bounded queues, the body budget, and their
refusals through the real application on a real node and store (httpx.ASGITransport)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.admission import (
    INTAKE_WORKERS,
    SMALL_BODY_BYTES,
    Admission,
    BodyBudget,
    FairQueue,
    Refused,
)
from api.app import create_app
from api.node import Node
from api.settings import Settings
from consensus.transport import UNBUDGETED_BODY_BYTES
from tests.api.test_app import Live, assert_problem, funded, post
from tests.factory import Chain

pytestmark = pytest.mark.anyio

CLIENT = "127.0.0.1"  # the address httpx.ASGITransport gives its requests


@asynccontextmanager
async def serving(node: tuple[Chain, Node], tmp_path: Path, **settings: Any) -> AsyncIterator[Live]:
    chain, running = node
    app = create_app(running, Settings(data=tmp_path, **settings), manage_node=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        yield Live(chain, running, client)


def admission_of(live: Live) -> Admission:
    transport = live.client._transport
    assert isinstance(transport, httpx.ASGITransport)
    admission: Admission = transport.app.state.admission  # type: ignore[attr-defined]
    return admission


def broken(value: dict[str, Any]) -> dict[str, Any]:
    """An envelope's JSON with one hex digit of its first signature changed."""
    signature = value["signatures"][0]["signature"]
    value["signatures"][0]["signature"] = ("1" if signature[0] == "0" else "0") + signature[1:]
    return value


# --- the fair queue ------------------------------------------------------------------------------


async def test_turns_go_round_the_clients_not_in_arrival_order() -> None:
    queue = FairQueue("small", working_max=1, queue_max=100, queue_per_client_max=100)
    order: list[str] = []
    release = asyncio.Event()

    async def submission(client: str) -> None:
        async with queue.turn(client):
            order.append(client)
            await release.wait()

    first = asyncio.create_task(submission("flood"))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(submission("flood")) for _ in range(5)]
    await asyncio.sleep(0)
    waiting.append(asyncio.create_task(submission("honest")))
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(first, *waiting)
    # The honest client's one submission came second among those that waited, not sixth.
    assert order == ["flood", "flood", "honest", "flood", "flood", "flood", "flood"]
    assert (queue.working, queue.queued) == (0, 0)


async def test_a_full_queue_refuses_at_once() -> None:
    queue = FairQueue("small", working_max=1, queue_max=2, queue_per_client_max=1)
    release = asyncio.Event()

    async def submission(client: str) -> None:
        async with queue.turn(client):
            await release.wait()

    held = [asyncio.create_task(submission(c)) for c in ("a", "b", "c")]
    await asyncio.sleep(0)
    assert (queue.working, queue.queued) == (1, 2)
    with pytest.raises(Refused) as mine:
        async with queue.turn("b"):
            pass
    assert mine.value.code == "too_many_requests"
    assert mine.value.detail == "1 small submissions from b wait already (at most 1)"
    with pytest.raises(Refused) as everyone:
        async with queue.turn("d"):
            pass
    assert everyone.value.code == "overloaded"
    assert everyone.value.detail == "2 small submissions wait already (at most 2)"
    release.set()
    await asyncio.gather(*held)
    assert (queue.working, queue.queued) == (0, 0)


async def test_a_cancelled_waiter_is_skipped_and_a_cancelled_holder_passes_its_turn() -> None:
    queue = FairQueue("small", working_max=1, queue_max=10, queue_per_client_max=10)
    release = asyncio.Event()
    ran: list[str] = []

    async def submission(client: str) -> None:
        async with queue.turn(client):
            ran.append(client)
            await release.wait()

    holder = asyncio.create_task(submission("a"))
    await asyncio.sleep(0)
    gone = asyncio.create_task(submission("b"))
    last = asyncio.create_task(submission("c"))
    await asyncio.sleep(0)
    gone.cancel()
    holder.cancel()
    for _ in range(10):  # a few turns of the loop: the cancellations, then c's start
        await asyncio.sleep(0)
    assert ran == ["a", "c"]  # b left while it waited; a's turn went on to c
    release.set()
    await last
    assert (queue.working, queue.queued) == (0, 0)


def test_large_bodies_have_their_own_queue_and_one_address_a_quarter_of_it() -> None:
    admission = Admission(parsing_max=8, queue_max=100, queue_per_client_max=64, large_queue_max=8)
    assert admission.queue_for(SMALL_BODY_BYTES - 1) is admission.small
    assert admission.queue_for(SMALL_BODY_BYTES) is admission.large
    assert admission.large.working_max == INTAKE_WORKERS  # one body at a time in each
    assert admission.large.queue_per_client_max == 2


def test_the_body_budget_refuses_large_bodies_only() -> None:
    budget = BodyBudget(100_000)
    budget.held = 90_000
    assert budget.refusal(0, 10_000) is None  # fits
    assert budget.refusal(0, SMALL_BODY_BYTES) is None  # small: never refused
    refused = budget.refusal(SMALL_BODY_BYTES, 20_000)
    assert refused is not None and refused.code == "overloaded"
    assert refused.detail == "request bodies hold 90000 bytes already, at most 100000 at once"


# --- through the application ---------------------------------------------------------------------


async def test_a_submission_finding_the_queue_full_is_answered_overloaded(
    node: tuple[Chain, Node], tmp_path: Path
) -> None:
    async with serving(node, tmp_path, submissions_parsing_max=1, submission_queue_max=1) as live:
        small = admission_of(live).small
        release = asyncio.Event()

        async def hold(client: str) -> None:
            async with small.turn(client):
                await release.wait()

        held = [asyncio.create_task(hold(c)) for c in ("10.0.0.1", "10.0.0.2")]
        await asyncio.sleep(0)
        accredit = live.chain.accredit()
        response = await post(live, accredit.to_json())
        problem = assert_problem(response, 503, "overloaded")
        assert problem["detail"] == "1 small submissions wait already (at most 1)"
        assert response.headers["retry-after"] == "1"
        release.set()
        await asyncio.gather(*held)
        # Nothing of the refused submission reached the pool: it may come again.
        assert live.node.outcome(accredit.tx_id) is None
        assert (await post(live, accredit.to_json())).json()["status"] == "committed"


async def test_a_client_over_its_share_of_the_queue_is_answered_too_many_requests(
    node: tuple[Chain, Node], tmp_path: Path
) -> None:
    async with serving(
        node, tmp_path, submissions_parsing_max=1, submission_queue_per_client_max=1
    ) as live:
        small = admission_of(live).small
        release = asyncio.Event()

        async def hold(client: str) -> None:
            async with small.turn(client):
                await release.wait()

        held = [asyncio.create_task(hold(c)) for c in ("10.0.0.1", CLIENT)]
        await asyncio.sleep(0)
        response = await post(live, live.chain.accredit().to_json())
        problem = assert_problem(response, 429, "too_many_requests")
        assert problem["detail"] == f"1 small submissions from {CLIENT} wait already (at most 1)"
        assert response.headers["retry-after"] == "1"
        release.set()
        await asyncio.gather(*held)


async def test_a_large_body_over_the_body_budget_is_refused_unread(
    node: tuple[Chain, Node], tmp_path: Path
) -> None:
    budget = 2 * SMALL_BODY_BYTES  # and no body may be larger (a larger one is refused 413)
    async with serving(
        node, tmp_path, request_bodies_bytes_max=budget, body_bytes_max=budget
    ) as live:
        body = b"[" + b" " * (SMALL_BODY_BYTES + 4096) + b"]"
        await live.client.get("/healthz")  # the middleware stack is built at the first request
        guard = body_guard(live)
        guard.budget.held = budget - SMALL_BODY_BYTES  # other bodies under way hold the rest
        declared = await live.client.post(
            "/v1/transactions", content=body, headers={"content-type": "application/json"}
        )
        problem = assert_problem(declared, 503, "overloaded")
        assert problem["detail"] == (
            f"request bodies hold {budget - SMALL_BODY_BYTES} bytes already, at most {budget}"
            " at once"
        )
        assert declared.headers["retry-after"] == "1"
        assert declared.headers["connection"] == "close"

        async def streamed() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            for start in range(0, len(body), 8192):
                yield body[start : start + 8192]

        chunked = await live.client.post(
            "/v1/transactions", content=streamed(), headers={"content-type": "application/json"}
        )
        assert_problem(chunked, 503, "overloaded")
        # Small bodies still pass, and the budget is as it was once each request is answered.
        small = await post(live, live.chain.accredit().to_json())
        assert small.json()["status"] == "committed"
        assert admission_budget_held(live) == budget - SMALL_BODY_BYTES


def admission_budget_held(live: Live) -> int:
    held: int = body_guard(live).budget.held
    return held


def body_guard(live: Live) -> Any:
    """The application's BodyGuard middleware (what holds the body budget)."""
    transport = live.client._transport
    assert isinstance(transport, httpx.ASGITransport)
    stack: Any = transport.app.middleware_stack  # type: ignore[attr-defined]
    while stack is not None:
        if hasattr(stack, "budget"):
            return stack
        stack = getattr(stack, "app", None)
    raise AssertionError("no BodyGuard in the middleware stack")


async def test_a_broken_copy_of_a_pending_transaction_leaves_it_pending(
    node: tuple[Chain, Node], tmp_path: Path
) -> None:
    async with serving(node, tmp_path) as live:
        await funded(live)
        chain = live.chain
        # Nonce 2 while 1 is unused: it stays pending for as long as this test looks.
        later = chain.tx(
            chain.alice,
            "retire",
            {"batch_id": "B-1", "quantity": 1, "beneficiary": "Alice", "purpose": "voluntary"},
            nonce=2,
        )
        assert (await post(live, later.to_json(), wait=False)).json()["status"] == "pending"
        copy = await post(live, broken(later.to_json()), wait=False)
        assert_problem(copy, 422, "bad_signature")
        fetched = await live.client.get(f"/v1/transactions/{later.tx_id}")
        assert fetched.json()["status"] == "pending"
        # A transaction only ever seen with a broken signature is not remembered: the copy
        # said nothing about what became of the transaction its id names.
        never = chain.tx(
            chain.bob, "transfer", {"to": chain.alice.account_id, "batch_id": "B-1", "quantity": 1}
        )
        assert_problem(await post(live, broken(never.to_json())), 422, "bad_signature")
        assert (await live.client.get(f"/v1/transactions/{never.tx_id}")).status_code == 404


async def test_clients_waiting_for_commits_hold_no_request_thread(
    node: tuple[Chain, Node], tmp_path: Path
) -> None:
    """More ?wait=commit submissions than there are request threads (anyio's 40) wait for
    transactions that stay pending; a read that needs a thread is answered meanwhile."""
    async with serving(node, tmp_path, commit_wait_seconds=4) as live:
        await funded(live)
        chain = live.chain
        keys = [chain.alice, chain.bob]
        waiting = [
            chain.tx(
                keys[n % 2],
                "retire",
                {"batch_id": "B-1", "quantity": 1, "beneficiary": "x", "purpose": "voluntary"},
                nonce=2 + n // 2,  # nonce 1 of each is never sent: all stay pending
            )
            for n in range(60)
        ]
        submissions = [asyncio.create_task(post(live, e.to_json())) for e in waiting]
        await asyncio.sleep(0.5)
        checkpoint = await live.client.get("/v1/checkpoint")  # a plain function: a thread
        assert checkpoint.status_code == 200
        # Answered while every commit wait still waits (each ends, pending, after 4 s).
        assert not any(task.done() for task in submissions)
        answers = await asyncio.gather(*submissions)
        assert {a.status_code for a in answers} == {202}
        assert {a.json()["status"] for a in answers} == {"pending"}


async def test_a_commit_wait_reads_the_store_for_an_outcome_no_longer_remembered(
    node: tuple[Chain, Node], tmp_path: Path
) -> None:
    async with serving(node, tmp_path) as live:
        await funded(live)
        chain, running = node
        retire = chain.tx(
            chain.bob,
            "retire",
            {"batch_id": "B-1", "quantity": 1, "beneficiary": "Bob", "purpose": "voluntary"},
        )
        committed = (await post(live, retire.to_json())).json()
        assert committed["status"] == "committed"
        running.producer.outcomes.clear()  # as if a flood of later outcomes had pushed it out
        (outcome,) = await running.wait_for_commit_async([retire.tx_id], timeout=1)
        assert outcome is not None and outcome.status == "committed"
        assert (outcome.height, outcome.log_index) == (committed["height"], committed["log_index"])


def test_the_bodies_peers_fall_back_to_are_ones_the_budget_never_counts() -> None:
    """consensus.transport sends a refused batch again in bodies this small (it may not
    import the API's constant)."""
    assert UNBUDGETED_BODY_BYTES <= SMALL_BODY_BYTES
