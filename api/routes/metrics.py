"""GET /metrics: Prometheus text (blocks, transactions, pool size, block sync, consensus
messages dropped by why, requests and latencies by route), through prometheus-client; one
registry per application."""

from __future__ import annotations

import time
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from api.node import Node
from api.problems import problem_responses
from api.routes import node_of
from consensus.node import BftProducer

router = APIRouter(tags=["operations"])


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tanlian_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tanlian_http_request_seconds",
            "HTTP request latency by route",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )
        self.connections_refused = Counter(
            "tanlian_http_refused_before_routing",
            "Requests the server answered itself, before any route saw them, by problem code:"
            " request_timeout (no complete head in time), payload_too_large (a head too"
            " large), malformed_request (not HTTP/1.1), overloaded (connections_max reached)",
            ["code"],
            registry=self.registry,
        )
        self.height = Gauge("tanlian_height", "Height of the latest block", registry=self.registry)
        self.transactions = Gauge(
            "tanlian_transactions", "Transactions in the log", registry=self.registry
        )
        self.pending = Gauge(
            "tanlian_pending_transactions",
            "Transactions in the pending pool",
            registry=self.registry,
        )
        self.blocks = Gauge(
            "tanlian_blocks_produced",
            "Blocks this node committed (built, decided with its consortium, or synced)",
            registry=self.registry,
        )
        self.synced = Gauge(
            "tanlian_blocks_synced",
            "Blocks this process took by block sync from other nodes, each verified",
            registry=self.registry,
        )
        self.refusals = Gauge(
            "tanlian_sync_refusals",
            "Times block sync refused a source (unreachable, or serving what fails a check)",
            registry=self.registry,
        )
        self.forks = Gauge(
            "tanlian_forks_detected",
            "Times block sync met another certified block at a height this node holds (a "
            "fork: more than a third of the validators signed two chains)",
            registry=self.registry,
        )
        self.time_refusals = Gauge(
            "tanlian_proposals_refused_for_time",
            "Proposals this validator refused because their time was past its clock's drift:"
            " a clock behind the others' shows here",
            registry=self.registry,
        )
        self.dropped = Gauge(
            "tanlian_consensus_messages_dropped",
            "Peers' consensus messages a validator took and did not hold, by why: an admission"
            " status (old, future, known), a failed check's code, or inbox_full",
            ["reason"],
            registry=self.registry,
        )

    def refused_early(self, code: str) -> None:
        """A request the server answered itself (`api.serving.HeadBound`)."""
        self.connections_refused.labels(code).inc()


# The method the client sent, where a middleware changed the scope's (`api.app.HeadAsGet`
# answers HEAD as GET): what the request counter is labelled with.
SENT_METHOD: Final = "tanlian.sent_method"


class Measure:
    """ASGI middleware counting requests and timing them by the route template the router
    matched (FastAPI records it in the scope; bounded cardinality: unknown paths are
    "unmatched")."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = ["500"]

        async def tracked(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        finally:
            path = getattr(scope.get("route"), "path", None)
            route = path if isinstance(path, str) else "unmatched"
            method = scope.get(SENT_METHOD, scope["method"])
            self.metrics.requests.labels(route, method, status[0]).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "description": "The Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **problem_responses(),
    },
)
def metrics(request: Request, node: Annotated[Node, Depends(node_of)]) -> Response:
    registry: Metrics = request.app.state.metrics
    state = node.state
    registry.height.set(state.height)
    registry.transactions.set(state.log.size)
    registry.pending.set(node.producer.pending_count())
    registry.blocks.set(node.blocks_produced)
    if node.sync is not None:
        registry.synced.set(node.sync.counters.blocks)
        registry.refusals.set(node.sync.counters.refusals)
        registry.forks.set(node.sync.counters.forks)
    if isinstance(node.producer, BftProducer):
        # The replica's since it was built (at the start, or when it rejoins after block
        # sync), the queue's since the node started: reasons an earlier replica counted are
        # cleared, not left at their old values.
        registry.dropped.clear()
        for reason, count in node.producer.dropped().items():
            registry.dropped.labels(reason).set(count)
        registry.dropped.labels("inbox_full").set(node.producer.messages_dropped)
        registry.time_refusals.set(node.producer.time_refusals)
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
