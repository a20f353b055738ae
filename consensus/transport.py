"""How validators reach each other: signed messages and transactions over HTTP, and an
in-memory twin.

A `Transport` sends a validator's messages to every peer (`broadcast`), and forwards the
transactions its own clients submitted (`forward`, docs/decisions/0006), best effort: the
replica re-sends whatever still matters every REBROADCAST_INTERVAL_MS, and a transaction
that a peer never hears of is still proposed by the validator that holds it, so a lost batch
costs time, never safety. Nothing is trusted because of where it came from (SPEC §5.4): the
receiver parses each batch strictly (`consensus.relay.decode_batch`), checks transactions'
signatures on admission, and the replica checks every vote, proposal and certificate.

Lines come from `consensus.relay.encode_lines`: a proposal or decision travels as its block's
transactions and then the message by reference, so no block needs a body larger than the
API's limit, and `batches` cuts the lines into bodies within it.

`HttpTransport` posts NDJSON batches (`POST /v1/consensus/messages`) to each peer on two
lanes, each with its own queue and thread: consensus messages, and forwarded transactions,
so that neither a slow peer nor a large forwarded batch delays a vote. Every bound is in
ledger.limits: messages per batch (CONSENSUS_MESSAGES_BATCH_MAX), bytes per batch
(CONSENSUS_BATCH_BYTES_MAX), the time a request may take (PEER_REQUEST_MS_MAX), the bytes of a
peer's answer read (PEER_ANSWER_BYTES_MAX) and the lines waiting per peer and lane
(PEER_QUEUE_MESSAGES_MAX at least, the oldest dropped first).

`MemoryNetwork` joins transports in one process: a batch goes through the same bytes and the
same receiver, and a member can be cut off and reconnected, for tests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import httpx

from consensus.messages import ConsensusError, Message
from consensus.relay import encode_lines
from ledger.errors import printable
from ledger.limits import (
    CONSENSUS_BATCH_BYTES_MAX,
    CONSENSUS_MESSAGES_BATCH_MAX,
    HTTP_IDLE_REUSE_SECONDS_MAX,
    PEER_ANSWER_BYTES_MAX,
    PEER_QUEUE_MESSAGES_MAX,
    PEER_REQUEST_MS_MAX,
)
from ledger.transactions import Envelope

log = logging.getLogger("tanlian.consensus.transport")

MESSAGES_PATH: Final = "/v1/consensus/messages"
NDJSON: Final = "application/x-ndjson"
RETRY_SECONDS: Final = 0.2  # after a failed request, before the next one to that peer
# That a peer stops answering (and then that it answers again), and its refusals, are logged
# at most once this often each, with how many went untold between.
PEER_LOGGED_EVERY_S: Final = 60.0
# A peer's node counts bodies above this against its body budget, which anyone's stalled
# uploads can fill (api.admission.SMALL_BODY_BYTES): a batch it refuses as overloaded is sent
# again in bodies this small, which it always takes (found by review: a stranger's 16 stalled
# 4 MiB uploads kept every proposal of more than ~50 transactions out).
UNBUDGETED_BODY_BYTES: Final = 32 * 1024
_REQUEST_HEADERS: Final = {"content-type": NDJSON, "accept-encoding": "identity"}

Inbox = Callable[[bytes], int]
"""Where a node takes a peer's batch: it decodes it (`consensus.relay.decode_batch`, raising
`MalformedMessage`), takes what it holds, and answers how many lines it read."""


class Transport(Protocol):
    def broadcast(self, messages: Sequence[Message]) -> None:
        """Send to every peer; returns at once (best effort)."""

    def forward(self, envelopes: Sequence[Envelope]) -> None:
        """Send transactions this node admitted from its clients to every peer; returns at
        once (best effort)."""

    def close(self) -> None: ...


def batches(
    lines: Sequence[bytes],
    *,
    lines_max: int = CONSENSUS_MESSAGES_BATCH_MAX,
    bytes_max: int = CONSENSUS_BATCH_BYTES_MAX,
) -> list[bytes]:
    """NDJSON bodies holding `lines` in order, each within both bounds (a line longer than
    `bytes_max` travels alone)."""
    bodies: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for line in lines:
        if current and (len(current) >= lines_max or size + len(line) + 1 > bytes_max):
            bodies.append(b"\n".join(current) + b"\n")
            current, size = [], 0
        current.append(line)
        size += len(line) + 1
    if current:
        bodies.append(b"\n".join(current) + b"\n")
    return bodies


def _taken(status: int | None) -> bool:
    return status is not None and status < 300


@dataclass(slots=True)
class PeerCounters:
    batches_sent: int = 0
    batches_failed: int = 0
    messages_dropped: int = 0


class _Peer:
    """One peer's queue and the thread that drains it."""

    def __init__(
        self, url: str, client: httpx.Client, queue_max: int, lane: str, request_s: float
    ) -> None:
        self.url = url.rstrip("/") + MESSAGES_PATH
        self.client = client
        self.request_s = request_s
        self.queue: deque[bytes] = deque()
        self.queue_max = queue_max
        self.counters = PeerCounters()
        self.lane = lane
        # What the operator was told: that the peer stopped answering (at most once a
        # PEER_LOGGED_EVERY_S, with how often it did since) and answers again; refusals, at
        # most one line a PEER_LOGGED_EVERY_S with how many went untold.
        self.told_down = False
        self.down_told_at = -PEER_LOGGED_EVERY_S
        self.downs_untold = 0
        self.refusals_untold = 0
        self.refusal_told_at = -PEER_LOGGED_EVERY_S
        self.ready = threading.Condition()
        self.closing = False
        self.thread = threading.Thread(target=self._run, name=f"{lane} {url}", daemon=True)
        self.thread.start()

    def put(self, lines: Sequence[bytes]) -> None:
        with self.ready:
            self.queue.extend(lines)
            over = len(self.queue) - self.queue_max
            for _ in range(max(over, 0)):
                self.queue.popleft()
            self.counters.messages_dropped += max(over, 0)
            self.ready.notify()

    def _take(self) -> list[bytes] | None:
        with self.ready:
            while not self.queue and not self.closing:
                self.ready.wait()
            if self.closing:
                return None
            taken = list(self.queue)
            self.queue.clear()
            return taken

    def _post(self, body: bytes) -> int | None:
        """Send one batch; the peer's HTTP status (None: not reached). Of its answer (a
        count, or a problem) at most PEER_ANSWER_BYTES_MAX bytes are read, as they came (no
        decompression), and only until the request's time is up: a faulty peer answering
        without end, or byte by byte, holds neither this lane nor memory."""
        deadline = time.monotonic() + self.request_s
        try:
            with self.client.stream(
                "POST", self.url, content=body, headers=_REQUEST_HEADERS
            ) as answer:
                head = bytearray()
                # An answer already in memory (a mock network's) has no stream left.
                chunks = [answer.content] if answer.is_stream_consumed else answer.iter_raw()
                for chunk in chunks:
                    head += chunk[: PEER_ANSWER_BYTES_MAX - len(head)]
                    if len(head) >= PEER_ANSWER_BYTES_MAX or time.monotonic() > deadline:
                        break  # the rest is never read: closing drops the connection
        except httpx.HTTPError as error:
            self._note_down(printable(str(error)[:200]) or type(error).__name__)
            return None
        if self.told_down:
            log.warning("peer %s (%s) answers again", self.url, self.lane)
            self.told_down = False
        if answer.status_code >= 300 and not (
            answer.status_code in (413, 503) and len(body) > UNBUDGETED_BODY_BYTES
        ):
            self._note_refusal(answer.status_code, bytes(head[:200]))
        return answer.status_code

    def _note_down(self, why: str) -> None:
        """The peer did not answer: told once while it stays so, and at most once a
        PEER_LOGGED_EVERY_S (a peer up and down by turns had written two lines a request)."""
        if self.told_down:
            return
        self.downs_untold += 1
        now = time.monotonic()
        if now - self.down_told_at < PEER_LOGGED_EVERY_S:
            return
        more = self.downs_untold - 1
        since = f" ({more} more times since the last such line)" if more else ""
        log.warning(
            "peer %s (%s) unreachable: %s; said again once it answers%s",
            self.url, self.lane, why, since,
        )  # fmt: skip
        self.told_down, self.down_told_at, self.downs_untold = True, now, 0

    def _note_refusal(self, status: int, head: bytes) -> None:
        """A refused batch, told at most once a PEER_LOGGED_EVERY_S with how many went
        untold since (a peer refusing every batch had written a line each, several a second)."""
        self.refusals_untold += 1
        now = time.monotonic()
        if now - self.refusal_told_at < PEER_LOGGED_EVERY_S:
            return
        shown = printable(head.decode("utf-8", "replace"))
        more = self.refusals_untold - 1
        since = f" ({more} more since the last such line)" if more else ""
        log.warning(
            "peer %s (%s) refused a batch: %s %s%s", self.url, self.lane, status, shown, since
        )
        self.refusals_untold = 0
        self.refusal_told_at = now

    def _send(self, body: bytes) -> bool:
        """`body` to the peer; refused for its size or the peer's body budget, again in
        bodies of at most UNBUDGETED_BODY_BYTES. Whether the peer took every line."""
        status = self._post(body)
        if status in (413, 503) and len(body) > UNBUDGETED_BODY_BYTES:
            parts = batches(body.splitlines(), bytes_max=UNBUDGETED_BODY_BYTES)
            return all(_taken(self._post(part)) for part in parts)
        return _taken(status)

    def _run(self) -> None:
        while (lines := self._take()) is not None:
            for body in batches(lines):
                if self._send(body):
                    self.counters.batches_sent += 1
                    continue
                self.counters.batches_failed += 1
                with self.ready:  # the rest is stale by the time the peer is back
                    self.ready.wait_for(lambda: self.closing, timeout=RETRY_SECONDS)
                break

    def close(self) -> None:
        with self.ready:
            self.closing = True
            self.ready.notify()
        self.thread.join(timeout=PEER_REQUEST_MS_MAX / 1000 + 1)


class HttpTransport:
    """NDJSON batches to every peer's `POST /v1/consensus/messages`; see the module docstring."""

    def __init__(
        self,
        peers: Sequence[str],
        *,
        request_ms_max: int = PEER_REQUEST_MS_MAX,
        queue_max: int = PEER_QUEUE_MESSAGES_MAX,
        http: httpx.BaseTransport | None = None,
    ) -> None:
        """`http` replaces the network (tests: `httpx.MockTransport`). `queue_max` should
        hold two blocks' transactions: a block travels as its transactions' lines."""
        assert request_ms_max > 0 and queue_max > 0
        self.client = httpx.Client(
            timeout=request_ms_max / 1000,
            trust_env=False,
            transport=http,
            limits=httpx.Limits(keepalive_expiry=HTTP_IDLE_REUSE_SECONDS_MAX),
        )
        request_s = request_ms_max / 1000
        self.peers = [_Peer(url, self.client, queue_max, "consensus", request_s) for url in peers]
        self.forwarding = [
            _Peer(url, self.client, queue_max, "forward", request_s) for url in peers
        ]

    def broadcast(self, messages: Sequence[Message]) -> None:
        lines = encode_lines(messages)
        for peer in self.peers:
            peer.put(lines)

    def forward(self, envelopes: Sequence[Envelope]) -> None:
        lines = [envelope.leaf for envelope in envelopes]
        for peer in self.forwarding:
            peer.put(lines)

    def counters(self) -> dict[str, PeerCounters]:
        return {peer.url: peer.counters for peer in self.peers}

    def close(self) -> None:
        for peer in [*self.peers, *self.forwarding]:
            peer.close()
        self.client.close()


@dataclass(slots=True)
class MemoryNetwork:
    """Transports in one process, delivering synchronously through the wire bytes."""

    inboxes: dict[str, Inbox] = field(default_factory=dict)
    cut: set[str] = field(default_factory=set)
    refused: int = 0  # batches the strict decoder refused
    largest_body: int = 0  # bytes of the largest batch delivered

    def join(self, name: str, inbox: Inbox) -> MemoryTransport:
        assert name not in self.inboxes, name
        self.inboxes[name] = inbox
        return MemoryTransport(network=self, name=name)

    def deliver(self, sender: str, body: bytes) -> None:
        if sender in self.cut:
            return
        self.largest_body = max(self.largest_body, len(body))
        for name, inbox in list(self.inboxes.items()):
            if name == sender or name in self.cut:
                continue
            try:
                inbox(body)
            except ConsensusError:
                self.refused += 1


@dataclass(slots=True)
class MemoryTransport:
    network: MemoryNetwork
    name: str
    forwarding: bool = True  # False: this member forwards no transactions (tests)

    def broadcast(self, messages: Sequence[Message]) -> None:
        for body in batches(encode_lines(messages)):
            self.network.deliver(self.name, body)

    def forward(self, envelopes: Sequence[Envelope]) -> None:
        if self.forwarding and envelopes:
            for body in batches([envelope.leaf for envelope in envelopes]):
                self.network.deliver(self.name, body)

    def close(self) -> None:
        self.network.inboxes.pop(self.name, None)
