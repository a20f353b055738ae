"""Admission under overload: bounded, fair queues in front of the work a request costs.

A submission costs the node CPU in proportion to its body, whether its signatures are good or
not: decoding, two validators, canonical bytes and a signature check per envelope (SPEC §2.3,
§3.1). A client that floods bad signatures must pay for each, but must not make an honest
client wait behind its whole flood, and nothing it sends may pile up without bound. So:

- **Request bodies** held at once, over all requests, are bounded in bytes (`BodyBudget`,
  `request_bodies_bytes_max`): a body that would pass it is refused, 503 `overloaded`, and
  unread when its Content-Length says so. Bodies of at most `SMALL_BODY_BYTES` (a single
  envelope is ~1 KB) count but are never refused: many large bodies cannot keep small ones
  out, and these are bounded by the connections (`connections_max`) that carry them.
- **Parsing** a submission waits for its turn in a `FairQueue`: at most `working_max` at once
  (small bodies in threads: the GIL runs one at a time, but several hide each one's wait for
  a thread and for the GIL; large ones in the intake worker processes, api.intake). The
  turn goes round the client addresses that have a submission waiting, one submission each:
  a client with one request in flight waits for at most one submission of each other
  client, however many they queue.
- At most `queue_max` wait in all (503 `overloaded`) and `queue_per_client_max` from one
  address (429 `too_many_requests`), answered at once with Retry-After: waiting is bounded in
  count, so in memory and in time.

The node has no other notion of a client than the address its connection comes from
(`proxy_headers` is off): behind a proxy every client shares one address, and the proxy's
own limits are the ones that tell them apart.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

SMALL_BODY_BYTES: Final = 32 * 1024  # the intake workers' threshold (api.intake)
# Intake worker processes (api.intake): with one, it sat idle while the node took in its
# answer and the machine's second core idled a quarter of the time under arrays (bench/api.py
# (b): 4,300-4,800 tx/s with one, ~5,200 with two, measured in turn on 2 cores).
INTAKE_WORKERS: Final = 2
RETRY_AFTER_SECONDS: Final = 1  # what a refused client is told to wait (RFC 9110 §10.2.3)


class Refused(Exception):
    """A request refused before its work, with the problem's code and detail."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class FairQueue:
    """At most `working_max` holders of a turn at once; the others wait, served round-robin
    over their client addresses, at most `queue_max` in all and `queue_per_client_max` per
    address. Used from one event loop."""

    def __init__(
        self, name: str, *, working_max: int, queue_max: int, queue_per_client_max: int
    ) -> None:
        assert working_max >= 1 and queue_max >= 1 and queue_per_client_max >= 1
        self.name = name
        self.working_max = working_max
        self.queue_max = queue_max
        self.queue_per_client_max = queue_per_client_max
        self.working = 0
        self.queued = 0
        # Addresses with a submission waiting, in the order their turn comes.
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    @asynccontextmanager
    async def turn(self, client: str) -> AsyncIterator[None]:
        """Hold one of the working turns for the block; raises `Refused` at once when the
        queue, or this client's share of it, is full."""
        if self.working < self.working_max and not self.queued:
            self.working += 1
        else:
            await self._wait(client)
        try:
            yield
        finally:
            self._pass_on()

    async def _wait(self, client: str) -> None:
        mine = self._waiting.get(client)
        if mine is not None and len(mine) >= self.queue_per_client_max:
            raise Refused(
                "too_many_requests",
                f"{len(mine)} {self.name} submissions from {client} wait already "
                f"(at most {self.queue_per_client_max})",
            )
        if self.queued >= self.queue_max:
            raise Refused(
                "overloaded",
                f"{self.queued} {self.name} submissions wait already (at most {self.queue_max})",
            )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(client, deque()).append(future)
        self.queued += 1
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._pass_on()  # the turn came as the request was cancelled: hand it on
            raise  # a cancelled future left in its queue is skipped when its turn comes

    def _pass_on(self) -> None:
        """Hand a finished turn to the next address's oldest waiting submission."""
        while self._waiting:
            client, waiting = next(iter(self._waiting.items()))
            future = waiting.popleft()
            self.queued -= 1
            if waiting:
                self._waiting.move_to_end(client)  # its next submission waits for the others
            else:
                del self._waiting[client]
            if not future.cancelled():
                future.set_result(None)
                return
        self.working -= 1


class BodyBudget:
    """Request body bytes held at once, over all requests, at most `limit`; a body of at
    most SMALL_BODY_BYTES is never refused. Used from one event loop."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def refusal(self, body_bytes: int, more: int) -> Refused | None:
        """The refusal for a body of `body_bytes` so far about to hold `more` bytes, if any."""
        if body_bytes + more <= SMALL_BODY_BYTES or self.held + more <= self.limit:
            return None
        return Refused(
            "overloaded",
            f"request bodies hold {self.held} bytes already, at most {self.limit} at once",
        )


class Admission:
    """The node's two submission queues: small bodies parsed in threads, large ones in the
    intake workers (api.intake.WORKER_BODY_BYTES_MIN, the same threshold)."""

    def __init__(
        self,
        *,
        parsing_max: int,
        queue_max: int,
        queue_per_client_max: int,
        large_queue_max: int,
    ) -> None:
        self.small = FairQueue(
            "small",
            working_max=parsing_max,
            queue_max=queue_max,
            queue_per_client_max=queue_per_client_max,
        )
        # Each intake worker parses one large body at a time: another would only wait.
        # One address may hold a quarter of the large queue, so that three others still fit.
        self.large = FairQueue(
            "large",
            working_max=INTAKE_WORKERS,
            queue_max=large_queue_max,
            queue_per_client_max=min(queue_per_client_max, max(1, large_queue_max // 4)),
        )

    def queue_for(self, body_bytes: int) -> FairQueue:
        return self.large if body_bytes >= SMALL_BODY_BYTES else self.small


class StreamTurns:
    """Answers streamed at once (`GET /v1/export`): at most `total_max` in all and
    `per_client_max` for one client address, taken without waiting and given back when the
    answer ends. Each holds a store connection (two file descriptors) for as long as its
    client reads: without a bound, clients that read nothing ran a node out of descriptors,
    and with one bound alone, 32 connections of one client kept every export, block sync's
    included, from everybody else (both found by review). Used from request threads."""

    def __init__(
        self,
        *,
        total_max: int,
        per_client_max: int,
        what: str = "exports",
        doing: str = "being streamed",
    ) -> None:
        self.total_max = total_max
        self.per_client_max = per_client_max
        self.what = what  # in refusals: "4 exports to 127.0.0.1 are being streamed already"
        self.doing = doing
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, client: str) -> Refused | None:
        """A turn for `client`, or the refusal: `too_many_requests` for a client holding
        its share, `overloaded` when every turn is taken."""
        with self._lock:
            mine = self._held.get(client, 0)
            if mine >= self.per_client_max:
                return Refused(
                    "too_many_requests",
                    f"{mine} {self.what} of {client} are {self.doing} already, at most"
                    f" {self.per_client_max} at once",
                )
            if sum(self._held.values()) >= self.total_max:
                return Refused(
                    "overloaded",
                    f"{self.total_max} {self.what} are {self.doing} already, the most at once",
                )
            self._held[client] = mine + 1
            return None

    def give_back(self, client: str) -> None:
        with self._lock:
            left = self._held[client] - 1
            if left:
                self._held[client] = left
            else:
                del self._held[client]

    def held(self) -> int:
        with self._lock:
            return sum(self._held.values())
