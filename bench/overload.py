"""Overload benchmark (issue 7, item 4): one node under a bounded attack, beside an honest client.

    .venv/bin/python bench/overload.py [--seconds 30] [--rest-seconds 10] [--honest 4]
        [--flood 48] [--flood-arrays 4] [--slow-heads 1000] [--slow-bodies 200]
        [--big-bodies 32] [--oversized 2] [--block-interval-ms 250]

About 1.5 minutes on the 2-core development machine with the defaults.

A real `tanlian node` (bench/api.py's `start_node`, on a chain of bench/ingest.py's genesis
with `--block-interval-ms`), then two phases of `--rest-seconds` and `--seconds`:

- **Honest clients**, all of them from 127.0.0.1 (`--honest` accounts, each in its own
  coroutine): sign a retirement, POST it with `?wait=commit` (a 503 is retried after its
  Retry-After, a 202 polled until committed: the latency runs from the first attempt to the
  commit), then GET its receipt and check it offline with `ledger.verification.verify_receipt`
  against the genesis file alone; then the next. A prober asks GET /healthz every
  PROBE_SECONDS on a kept-alive connection.
- **At rest** the honest clients run alone; **under attack** beside an attacker process (its
  own core, its own event loop) that for `--seconds` holds, from the addresses 127.0.0.2 ...:
  - `--flood` connections POSTing single envelopes whose signature is broken (signed, then one
    hex digit changed), one after another as fast as the node answers;
  - `--flood-arrays` connections POSTing arrays of 1,000 such envelopes;
  - `--slow-heads` connections trickling a request head, one byte per TRICKLE_SECONDS, opening a
    new one whenever the node cuts one (slowloris);
  - `--slow-bodies` connections sending a complete head and then a body one byte per
    TRICKLE_SECONDS (slowloris on the body);
  - `--big-bodies` connections each sending a body just under the node's 4 MiB limit at
    BIG_BODY_RATE bytes/s, so that many bodies are half-read at once (memory);
  - `--oversized` connections sending chunked bodies past the limit as fast as they can;
  - and, from the main process, a copy of each honest transaction with a broken signature,
    sent just after the honest one: an attacker who sees submissions (a follower relays them).
- The node's RSS, and its children's (store writer, signature and intake workers), are read
  from /proc every RSS_SECONDS: the peak under attack beside the figure at rest.
- Nothing acknowledged lost: after the attack, `tanlian export --node` and `tanlian verify
  chain --genesis --export` audit the chain; every honest transaction the node answered
  committed (or pending) is in it exactly once, at the height and log index it was answered.

Beside the figures, limits measured in the same run: the raw single-core Ed25519 verification
rate (bench/ingest.py's `raw_verify_rate`), the bare /healthz round trip (p99, one client, at
rest), the block interval (a commit waits for the next block) and the honest figures at rest.
The machine's load average is printed: other processes on the same two cores lower every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib
import itertools

from bench.api import (
    HOST,
    NODE_START_S,
    TANLIAN,
    BenchError,
    Connection,
    NodeProcess,
    Run,
    drive,
    setup_chain,
    single_body,
    start_node,
    write_chain_files,
)
from bench.ingest import CHAIN_ID, make_workload, raw_verify_rate
from ledger.blocks import compute_validators_hash
from ledger.crypto import PrivateKey
from ledger.genesis import Genesis, parse_genesis
from ledger.transactions import Envelope, Transaction, parse_envelope, sign_transaction
from ledger.verification import verify_receipt

SETUP_TYPES: Final = frozenset({"accredit_certifier", "issue"})
ARRAY: Final = 1000  # envelopes in one flood array: the API's most
PROBE_SECONDS: Final = 0.1  # how often the prober asks /healthz
RSS_SECONDS: Final = 0.25  # how often the node's memory is read
FSYNC_PROBE_SECONDS: Final = 0.1  # how often the disk probe writes and fsyncs
TRICKLE_SECONDS: Final = 1.0  # a slow client's byte, this often
SLOW_BODY_BYTES: Final = 100_000  # what a slow body declares
BIG_BODY_BYTES: Final = 4 * 1024 * 1024 - 4096  # just under the node's body limit
BIG_BODY_RATE: Final = 256 * 1024  # bytes/s: a big body takes ~16 s, within the 30 s bound
BIG_BODY_CHUNK: Final = 16 * 1024
OVERSIZED_BYTES: Final = 5 * 1024 * 1024
FLOOD_SINGLES: Final = 4000  # distinct bad single envelopes the flood cycles through
FLOOD_ARRAYS: Final = 4  # distinct bad arrays the array flood cycles through
RECONNECT_PAUSE_SECONDS: Final = 0.05  # after a refused connect, before the next
REQUEST_TIMEOUT_SECONDS: Final = 60.0
HONEST_RETRY_SECONDS: Final = 0.2  # an honest client's pause after a refusal (429, 503)
HONEST_POLL_SECONDS: Final = 0.05  # polling a transaction answered pending
SETTLE_SECONDS: Final = 30.0  # for every honest transaction to commit after the attack
ATTACKER_READY_SECONDS: Final = 120.0
ATTACKER_ADDRESSES: Final = 16  # 127.0.0.2 ... 127.0.0.17
REPLAY_ADDRESS: Final = "127.0.0.250"
EXPORT_TIMEOUT_SECONDS: Final = 600.0


# --- what is measured ---------------------------------------------------------------------------


@dataclass
class Honest:
    """The honest clients' record of one phase."""

    commits: Run = field(default_factory=Run)  # first attempt to committed, per transaction
    proofs: Run = field(default_factory=Run)  # GET receipt, per committed transaction
    probe: Run = field(default_factory=Run)  # GET /healthz every PROBE_SECONDS
    retries: Counter[str] = field(default_factory=Counter)  # refusals retried, by code
    rejected: Counter[str] = field(default_factory=Counter)  # final rejections, by code
    acknowledged: dict[str, tuple[int, int]] = field(default_factory=dict)  # tx_id -> position
    # tx_id -> wall clock (ms) of its first attempt and of its commit's answer
    clock: dict[str, tuple[float, float]] = field(default_factory=dict)
    unverified: int = 0  # receipts that did not verify
    seconds: float = 0.0
    cpu: tuple[float, float] = (0.0, 0.0)  # CPU seconds of the node, and of its children
    fsync: Run = field(default_factory=Run)  # a 4 KiB write and fsync beside the node's store


@dataclass
class Memory:
    """Resident memory of the node and its children, in bytes, sampled."""

    samples: list[tuple[int, int]] = field(default_factory=list)  # (node, children)

    @property
    def peak_total(self) -> int:
        return max((node + children for node, children in self.samples), default=0)

    @property
    def peak_node(self) -> int:
        return max((node for node, _ in self.samples), default=0)

    @property
    def peak_children(self) -> int:
        return max((children for _, children in self.samples), default=0)

    @property
    def last_total(self) -> int:
        return sum(self.samples[-1]) if self.samples else 0


@dataclass
class Figures:
    raw_verify: float = 0.0
    verify_backend: str = ""
    block_interval_ms: int = 0
    bare: Run = field(default_factory=Run)
    rest: Honest = field(default_factory=Honest)
    attack: Honest = field(default_factory=Honest)
    rest_memory: Memory = field(default_factory=Memory)
    attack_memory: Memory = field(default_factory=Memory)
    high_water: dict[str, int] = field(default_factory=dict)  # VmHWM by process, at the end
    attackers: dict[str, Any] = field(default_factory=dict)
    audit: str = ""
    lost: list[str] = field(default_factory=list)
    attack_window_ms: tuple[int, int] = (0, 0)  # wall clock, for the blocks cut under attack
    block_gaps: Run = field(default_factory=Run)  # seconds between blocks under attack
    to_block: Run = field(default_factory=Run)  # honest, under attack: submitted to its block
    from_block: Run = field(default_factory=Run)  # its block's time to the committed answer


# --- the node's memory --------------------------------------------------------------------------


def _status_kib(pid: int, name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (the store writer, signature and intake workers)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in parents.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of one process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> tuple[float, float]:
    """CPU seconds so far of the node and of its children (together)."""
    return cpu_seconds(pid), sum(cpu_seconds(child) for child in descendants(pid))


def sample_memory(pid: int) -> tuple[int, int]:
    node = _status_kib(pid, "VmRSS") * 1024
    children = sum(_status_kib(child, "VmRSS") for child in descendants(pid)) * 1024
    return node, children


def high_water(pid: int) -> dict[str, int]:
    """VmHWM (peak RSS over each process's life) of the node and of each child."""
    marks = {"node": _status_kib(pid, "VmHWM") * 1024}
    for child in descendants(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        name = next((part.decode() for part in command if part.startswith(b"api.")), "")
        name = name or next((p.decode() for p in command if p.startswith(b"consensus.")), "")
        name = name or next((p.decode() for p in command if p.startswith(b"ledger.")), "")
        marks[name or f"pid {child}"] = _status_kib(child, "VmHWM") * 1024
    return marks


async def watch_memory(pid: int, memory: Memory, stop: asyncio.Event) -> None:
    while not stop.is_set():
        memory.samples.append(sample_memory(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RSS_SECONDS)


# --- the workload -------------------------------------------------------------------------------


def holder_key(index: int) -> PrivateKey:
    """bench/ingest.py's holder `index` (its keys are derived from their index)."""
    return PrivateKey(seed=hashlib.sha256(f"bench-{index}".encode()).digest())


def honest_retirements(
    setup: Sequence[Envelope], accounts: int, honest: int, each: int
) -> list[list[Envelope]]:
    """For `honest` holders that the setup's issuances funded, `each` retirements in nonce
    order (the holders' own transfers in the bench workload are never submitted here)."""
    keys = {holder_key(i).account_id: holder_key(i) for i in range(accounts)}
    batches: dict[str, str] = {}
    for number, envelope in enumerate(e for e in setup if e.tx.type == "issue"):
        for recipient in envelope.tx.payload["recipients"]:
            batches.setdefault(recipient["account"], f"B-{number + 1}")
    chosen = sorted(batches)[:honest]
    if len(chosen) < honest:
        raise BenchError(f"only {len(chosen)} funded accounts for {honest} honest clients")
    return [
        [
            sign_transaction(
                Transaction(
                    chain_id=CHAIN_ID,
                    type="retire",
                    signer=account,
                    nonce=nonce,
                    payload={
                        "batch_id": batches[account],
                        "quantity": 1,
                        "beneficiary": f"honest {account[:8]}",
                        "purpose": "voluntary",
                    },
                ),
                [keys[account]],
            )
            for nonce in range(1, each + 1)
        ]
        for account in chosen
    ]


def broken(envelope: Envelope) -> dict[str, Any]:
    """The envelope's JSON with one hex digit of its first signature changed."""
    value = envelope.to_json()
    signature = value["signatures"][0]["signature"]
    value["signatures"][0]["signature"] = ("1" if signature[0] == "0" else "0") + signature[1:]
    return value


def body_of(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def flood_envelopes(count: int, seed: int) -> list[dict[str, Any]]:
    """`count` distinct transfers from throwaway keys, each with a broken signature: well
    formed, so the node decodes and parses each and checks its signature before refusing."""
    rng = random.Random(seed)
    keys = [PrivateKey(seed=rng.randbytes(32)) for _ in range(64)]
    return [
        broken(
            sign_transaction(
                Transaction(
                    chain_id=CHAIN_ID,
                    type="transfer",
                    signer=keys[n % len(keys)].account_id,
                    nonce=1 + n // len(keys),
                    payload={
                        "to": keys[(n + 1) % len(keys)].account_id,
                        "batch_id": "B-1",
                        "quantity": 1 + rng.randrange(1000),
                    },
                ),
                [keys[n % len(keys)]],
            )
        )
        for n in range(count)
    ]


# --- the attacker process -----------------------------------------------------------------------


@dataclass
class Tally:
    """What the attackers sent and how the node answered, by kind of attack."""

    answers: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)  # "kind status code"
    signatures: int = 0  # bad signatures in requests the node answered
    connections: Counter[str] = field(default_factory=Counter)  # opened, by kind
    failures: Counter[str] = field(default_factory=Counter)  # connection errors, by kind
    held_seconds: Counter[str] = field(default_factory=Counter)  # slow connections' lifetimes

    def answered(self, kind: str, status: int, body: bytes) -> None:
        self.answers[kind] += 1
        code = ""
        if status >= 400:
            try:
                code = str(json.loads(body).get("code", ""))
            except (ValueError, AttributeError):
                code = "(not a problem)"
        self.statuses[f"{kind} {status} {code}".rstrip()] += 1


def source(index: int) -> str:
    return f"127.0.0.{2 + index % ATTACKER_ADDRESSES}"


async def open_from(address: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(
        asyncio.open_connection(HOST, port, local_addr=(address, 0), limit=1 << 20),
        REQUEST_TIMEOUT_SECONDS,
    )


async def flood(
    kind: str,
    index: int,
    *,
    port: int,
    bodies: Sequence[bytes],
    per_body: int,
    deadline: float,
    tally: Tally,
) -> None:
    """POST bad bodies one after another on one connection, a new one whenever it closes."""
    turn = index
    while time.monotonic() < deadline:
        try:
            connection = Connection(*await open_from(source(index), port))
        except OSError:
            tally.failures[kind] += 1
            await asyncio.sleep(RECONNECT_PAUSE_SECONDS)
            continue
        tally.connections[kind] += 1
        try:
            while time.monotonic() < deadline:
                body = bodies[turn % len(bodies)]
                turn += 1
                status, answer = await connection.request("POST", "/v1/transactions", body)
                tally.answered(kind, status, answer)
                if status in {200, 422}:
                    tally.signatures += per_body
                if status in (408, 413, 503, 429):
                    break  # the node may close the connection after these
        except (OSError, asyncio.IncompleteReadError, BenchError, TimeoutError):
            tally.failures[kind] += 1
        finally:
            connection.writer.close()


async def trickle(
    kind: str, index: int, *, port: int, head: bytes, body: bytes, deadline: float, tally: Tally
) -> None:
    """Send `head` then `body` one byte per TRICKLE_SECONDS; when the node answers or closes,
    start again on a new connection (slowloris)."""
    data = head + body
    while time.monotonic() < deadline:
        try:
            reader, writer = await open_from(source(index), port)
        except OSError:
            tally.failures[kind] += 1
            await asyncio.sleep(RECONNECT_PAUSE_SECONDS)
            continue
        tally.connections[kind] += 1
        opened = time.monotonic()
        answer = asyncio.ensure_future(read_answer(reader))
        try:
            for position in range(len(data)):
                if time.monotonic() >= deadline:
                    break
                writer.write(data[position : position + 1])
                if not answer.done():
                    await asyncio.wait([answer], timeout=TRICKLE_SECONDS)
                if answer.done():
                    tally.answered(kind, *answer.result())
                    break
        except OSError:
            tally.failures[kind] += 1
        finally:
            tally.held_seconds[kind] += int(time.monotonic() - opened)
            answer.cancel()
            writer.close()


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One answer's status and body (by its Content-Length); 0 and b"" for a connection
    closed without one."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return 0, b""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    try:
        return status, await reader.readexactly(length)
    except asyncio.IncompleteReadError as cut:
        return status, cut.partial


async def stream(
    kind: str,
    index: int,
    *,
    port: int,
    size: int,
    rate: float,
    chunked: bool,
    deadline: float,
    tally: Tally,
) -> None:
    """Send bodies of `size` bytes at `rate` bytes/s (inf: as fast as the node reads), declared
    by Content-Length or chunked, one request per connection."""
    while time.monotonic() < deadline:
        try:
            reader, writer = await open_from(source(index), port)
        except OSError:
            tally.failures[kind] += 1
            await asyncio.sleep(RECONNECT_PAUSE_SECONDS)
            continue
        tally.connections[kind] += 1
        framing = b"transfer-encoding: chunked" if chunked else b"content-length: %d" % size
        writer.write(
            b"POST /v1/transactions HTTP/1.1\r\nhost: node\r\n"
            b"content-type: application/json\r\n" + framing + b"\r\n\r\n"
        )
        answer = asyncio.ensure_future(read_answer(reader))
        chunk = b"[" + b" " * (BIG_BODY_CHUNK - 1)
        sent = 0
        try:
            while sent < size and not answer.done() and time.monotonic() < deadline:
                part = chunk[: size - sent]
                writer.write(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
                await writer.drain()
                sent += len(part)
                if rate != float("inf"):
                    await asyncio.wait([answer], timeout=len(part) / rate)
            if chunked and not answer.done():
                writer.write(b"0\r\n\r\n")
            tally.answered(kind, *await asyncio.wait_for(answer, REQUEST_TIMEOUT_SECONDS))
        except (OSError, TimeoutError):
            tally.failures[kind] += 1
        finally:
            answer.cancel()
            writer.close()


async def attack(plan: dict[str, Any], tally: Tally) -> None:
    port = plan["port"]
    deadline = time.monotonic() + plan["seconds"]
    singles = [body_of(value) for value in flood_envelopes(FLOOD_SINGLES, plan["seed"])]
    arrays = [body_of(flood_envelopes(ARRAY, plan["seed"] + 1 + n)) for n in range(FLOOD_ARRAYS)]
    slow_head = b"GET /healthz HTTP/1.1\r\nhost: node\r\nx-slow: " + b"z" * 4000
    slow_body = (
        b"POST /v1/transactions HTTP/1.1\r\nhost: node\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % SLOW_BODY_BYTES
    )
    common = {"port": port, "deadline": deadline, "tally": tally}
    tasks = [
        *(flood("flood", i, bodies=singles, per_body=1, **common) for i in range(plan["flood"])),
        *(
            flood("arrays", i, bodies=arrays, per_body=ARRAY, **common)
            for i in range(plan["flood_arrays"])
        ),
        *(
            trickle("slow heads", i, head=slow_head, body=b"", **common)
            for i in range(plan["slow_heads"])
        ),
        *(
            trickle("slow bodies", i, head=slow_body, body=b"[" * SLOW_BODY_BYTES, **common)
            for i in range(plan["slow_bodies"])
        ),
        *(
            stream(
                "big bodies", i, size=BIG_BODY_BYTES, rate=BIG_BODY_RATE, chunked=False, **common
            )
            for i in range(plan["big_bodies"])
        ),
        *(
            stream("oversized", i, size=OVERSIZED_BYTES, rate=float("inf"), chunked=True, **common)
            for i in range(plan["oversized"])
        ),
    ]
    running = [asyncio.ensure_future(task) for task in tasks]
    # Every attacker stops at the deadline, whatever it was waiting for.
    await asyncio.wait(running, timeout=max(0.0, deadline - time.monotonic()) + 0.5)
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)


def attacker_main(plan: dict[str, Any], pipe: Pipe) -> None:
    """The attacker process: wait for "go", attack for plan["seconds"], send the tally."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    pipe.send("ready")
    assert pipe.recv() == "go"
    tally = Tally()
    started = time.monotonic()
    asyncio.run(attack(plan, tally))
    pipe.send(
        {
            "seconds": time.monotonic() - started,
            "answers": dict(tally.answers),
            "statuses": dict(tally.statuses),
            "signatures": tally.signatures,
            "connections": dict(tally.connections),
            "failures": dict(tally.failures),
            "held_seconds": dict(tally.held_seconds),
        }
    )


# --- the honest side ----------------------------------------------------------------------------


class Verifier:
    """Checks receipts offline, trusting the genesis file alone."""

    def __init__(self, genesis: Genesis) -> None:
        self.validators_hash = compute_validators_hash(genesis.validators)
        self.genesis_hash = genesis.genesis_hash()

    def check(self, receipt: Any) -> bool:
        try:
            verify_receipt(
                receipt, validators_hash=self.validators_hash, genesis_hash=self.genesis_hash
            )
        except Exception:  # a failed check is counted, whatever it raised
            return False
        return True


REPLAYS: set[asyncio.Future[None]] = set()  # the copies in flight (asyncio keeps weak ones)


async def replay(port: int, body: bytes, delay: float) -> None:
    """A copy of an honest submission with a broken signature, from another address."""
    await asyncio.sleep(delay)
    try:
        connection = Connection(*await open_from(REPLAY_ADDRESS, port))
        try:
            await connection.request("POST", "/v1/transactions", body)
        finally:
            connection.writer.close()
    except (OSError, asyncio.IncompleteReadError, BenchError, TimeoutError):
        pass


async def honest_client(
    port: int,
    *,
    queue: Iterator[Envelope],
    deadline: float,
    record: Honest,
    verifier: Verifier,
    replaying: bool,
) -> None:
    """Submit, wait for the commit, fetch and check the receipt; until `deadline`."""
    connection = await Connection.open(port)
    try:
        while time.monotonic() < deadline and (envelope := next(queue, None)) is not None:
            body = single_body(envelope)
            started = time.perf_counter()
            wall = time.time() * 1000
            if replaying:
                copy = asyncio.ensure_future(replay(port, body_of(broken(envelope)), 0.005))
                REPLAYS.add(copy)
                copy.add_done_callback(REPLAYS.discard)
            connection, outcome = await submit_until_answered(connection, port, body, record)
            if outcome.get("status") == "pending":
                connection, outcome = await poll_until_settled(connection, port, envelope.tx_id)
            if outcome.get("status") != "committed":
                record.rejected[str(outcome.get("code", outcome.get("status")))] += 1
                continue
            record.commits.latencies.append(time.perf_counter() - started)
            record.acknowledged[envelope.tx_id] = (outcome["height"], outcome["log_index"])
            record.clock[envelope.tx_id] = (wall, time.time() * 1000)
            t0 = time.perf_counter()
            status, answer = await connection.request(
                "GET", f"/v1/retirements/{envelope.tx_id}/receipt"
            )
            record.proofs.latencies.append(time.perf_counter() - t0)
            record.proofs.statuses[status] += 1
            if status != 200 or not verifier.check(json.loads(answer)):
                record.unverified += 1
    finally:
        await connection.close()


async def submit_until_answered(
    connection: Connection, port: int, body: bytes, record: Honest
) -> tuple[Connection, dict[str, Any]]:
    """POST ?wait=commit until the node answers something other than a refusal to retry."""
    while True:
        try:
            status, answer = await connection.request("POST", "/v1/transactions?wait=commit", body)
        except (OSError, asyncio.IncompleteReadError, BenchError):
            record.retries["(connection lost)"] += 1
            await connection.close()
            connection = await Connection.open(port)
            continue
        value: dict[str, Any] = json.loads(answer) if answer.startswith(b"{") else {}
        if status in (200, 202):
            return connection, value
        if status in (429, 503):
            record.retries[str(value.get("code", status))] += 1
            await connection.close()  # a refusal may close the connection
            await asyncio.sleep(HONEST_RETRY_SECONDS)
            connection = await Connection.open(port)
            continue
        return connection, {"status": "rejected", "code": value.get("code", str(status))}


async def poll_until_settled(
    connection: Connection, port: int, tx_id: str
) -> tuple[Connection, dict[str, Any]]:
    while True:
        status, answer = await connection.request("GET", f"/v1/transactions/{tx_id}")
        value: dict[str, Any] = json.loads(answer)
        if status == 200 and value["status"] != "pending":
            return connection, value
        await asyncio.sleep(HONEST_POLL_SECONDS)


async def probe(port: int, run: Run, stop: asyncio.Event) -> None:
    """GET /healthz every PROBE_SECONDS on one kept-alive connection (a new one if cut)."""
    connection = await Connection.open(port)
    try:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                status, _ = await connection.request("GET", "/healthz")
            except (OSError, asyncio.IncompleteReadError, BenchError):
                run.statuses[0] += 1
                await connection.close()
                connection = await Connection.open(port)
                continue
            run.latencies.append(time.perf_counter() - t0)
            run.statuses[status] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PROBE_SECONDS)
    finally:
        await connection.close()


def probe_disk(directory: Path, run: Run, stop: threading.Event) -> None:
    """Write 4 KiB and fsync it every FSYNC_PROBE_SECONDS on the node's disk: each block waits
    for one (synchronous=FULL), so a slow disk shows here as it shows in the block gaps."""
    target = directory / "fsync-probe"
    with target.open("wb") as handle:
        while not stop.wait(FSYNC_PROBE_SECONDS):
            t0 = time.perf_counter()
            handle.write(os.urandom(4096))
            handle.flush()
            os.fsync(handle.fileno())
            run.latencies.append(time.perf_counter() - t0)
    target.unlink()


async def phase(
    port: int,
    *,
    directory: Path,
    pid: int,
    queues: Sequence[Iterator[Envelope]],
    seconds: float,
    verifier: Verifier,
    memory: Memory,
    replaying: bool,
) -> Honest:
    record = Honest()
    stop = asyncio.Event()
    watching = asyncio.ensure_future(watch_memory(pid, memory, stop))
    probing = asyncio.ensure_future(probe(port, record.probe, stop))
    disk_stop = threading.Event()
    disk = threading.Thread(target=probe_disk, args=(directory, record.fsync, disk_stop))
    disk.start()
    started = time.perf_counter()
    cpu_before = cpu_of(pid)
    deadline = time.monotonic() + seconds
    await asyncio.gather(
        *(
            honest_client(
                port,
                queue=q,
                deadline=deadline,
                record=record,
                verifier=verifier,
                replaying=replaying,
            )
            for q in queues
        )
    )
    record.seconds = time.perf_counter() - started
    cpu_after = cpu_of(pid)
    record.cpu = (cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1])
    disk_stop.set()
    disk.join()
    stop.set()
    await asyncio.gather(watching, probing)
    return record


async def bare_round_trips(port: int, count: int) -> Run:
    """/healthz from one client, one after another: the node's floor at rest."""
    connection = await Connection.open(port)
    try:
        return await drive([connection], [iter([("GET", "/healthz", b"")] * count)], expect=200)
    finally:
        await connection.close()


# --- nothing lost -------------------------------------------------------------------------------


def audit(node: NodeProcess, genesis_file: Path, directory: Path, figures: Figures) -> None:
    """Export the chain, audit it with `tanlian verify chain`, and find every acknowledged
    honest transaction in it exactly once, where it was acknowledged."""
    url = f"http://{HOST}:{node.port}"
    export_file = directory / "export.ndjson"
    for command in (
        ["export", "--node", url, "--out", str(export_file)],
        ["verify", "chain", "--genesis", str(genesis_file), "--export", str(export_file)],
    ):
        done = subprocess.run(
            [str(TANLIAN), *command],
            capture_output=True,
            text=True,
            timeout=EXPORT_TIMEOUT_SECONDS,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"tanlian {' '.join(command)}: {done.stderr.strip()}")
    figures.audit = done.stdout.strip()
    acknowledged = {**figures.rest.acknowledged, **figures.attack.acknowledged}
    seen: Counter[str] = Counter()
    where: dict[str, tuple[int, int]] = {}
    log_index = 0
    times: list[int] = []
    limit = parse_genesis(json.loads(genesis_file.read_text())).params.transaction_bytes_max
    with export_file.open("rb") as lines:
        next(lines)  # the genesis
        for line in lines:
            block = json.loads(line)["block"]
            height = int(block["header"]["height"])
            times.append(int(block["header"]["time"]))
            for value in block["transactions"]:
                tx_id = parse_envelope(value, transaction_bytes_max=limit).tx_id
                if tx_id in acknowledged:
                    seen[tx_id] += 1
                    where[tx_id] = (height, log_index)
                    if tx_id in figures.attack.clock:
                        submitted, answered = figures.attack.clock[tx_id]
                        block_time = int(block["header"]["time"])
                        figures.to_block.latencies.append((block_time - submitted) / 1000)
                        figures.from_block.latencies.append((answered - block_time) / 1000)
                log_index += 1
    start, end = figures.attack_window_ms
    cut = [t for t in times if start <= t <= end]
    figures.block_gaps.latencies = [(b - a) / 1000 for a, b in itertools.pairwise(cut)]
    figures.lost = [
        f"{tx_id}: {seen[tx_id]} times, at {where.get(tx_id)}, acknowledged at {position}"
        for tx_id, position in acknowledged.items()
        if seen[tx_id] != 1 or where[tx_id] != position
    ]


# --- the report ---------------------------------------------------------------------------------


def mib(value: int) -> str:
    return f"{value / (1 << 20):,.0f} MiB"


def report(figures: Figures, options: Options) -> None:
    f = figures
    a, r = f.attack, f.rest
    print("\nsummary: figure / limit measured in this run, ratio / issue 7's goal")
    commit_goal = a.commits.count and a.commits.p(0.99) <= 1000
    print(
        f"honest submit-to-commit under attack, {options.honest} clients: "
        f"p50 {a.commits.p(0.5):.0f} ms, p99 {a.commits.p(0.99):.0f} ms, "
        f"{a.commits.count / a.seconds:.1f} tx/s ({a.commits.count} tx)"
    )
    print(
        f"       at rest: p50 {r.commits.p(0.5):.0f} ms, p99 {r.commits.p(0.99):.0f} ms, "
        f"{r.commits.count / r.seconds:.1f} tx/s; block interval {f.block_interval_ms} ms "
        f"(a commit waits for the next block); ratio p99 "
        f"{a.commits.p(0.99) / r.commits.p(0.99):.2f}"
        f" / goal p99 <= 1 s: {'meets' if commit_goal else 'MISSES'}"
    )
    gaps = f.block_gaps
    print(
        f"       blocks under attack: {gaps.count + 1}, one every {gaps.p(0.5):.0f} ms (p50), "
        f"p99 {gaps.p(0.99):.0f} ms, longest {gaps.p(1.0):.0f} ms"
    )
    print(
        f"       under attack, submitted to its block's time: p50 {f.to_block.p(0.5):.0f} ms, "
        f"p99 {f.to_block.p(0.99):.0f} ms; block's time to the answer: "
        f"p50 {f.from_block.p(0.5):.0f} ms, p99 {f.from_block.p(0.99):.0f} ms"
    )
    print(
        f"       limit: fsync of 4 KiB beside the store (each block waits for one) under attack "
        f"p50 {a.fsync.p(0.5):.1f} ms, p99 {a.fsync.p(0.99):.0f} ms, longest "
        f"{a.fsync.p(1.0):.0f} ms; at rest p99 {r.fsync.p(0.99):.0f} ms"
    )
    if a.retries or a.rejected:
        print(f"       honest refusals retried {dict(a.retries)}; rejected {dict(a.rejected)}")
    print(
        f"honest receipt (GET + offline check) under attack: p50 {a.proofs.p(0.5):.1f} ms, "
        f"p99 {a.proofs.p(0.99):.1f} ms; at rest p99 {r.proofs.p(0.99):.1f} ms; "
        f"{a.unverified + r.unverified} did not verify"
    )
    print(
        f"/healthz every {PROBE_SECONDS:g} s under attack: p50 {a.probe.p(0.5):.1f} ms, "
        f"p99 {a.probe.p(0.99):.1f} ms, max {a.probe.p(1.0):.0f} ms, statuses "
        f"{dict(a.probe.statuses)}"
    )
    print(
        f"       limit bare /healthz, one client at rest: p99 {f.bare.p(0.99):.1f} ms; "
        f"ratio {a.probe.p(0.99) / f.bare.p(0.99):.1f}"
    )
    at = f.attackers
    seconds = at.get("seconds", 0.0) or 1.0
    checked = at.get("signatures", 0)
    print(
        f"attack absorbed over {seconds:.0f} s: {checked / seconds:,.0f} bad signatures/s "
        f"answered ({checked:,}); limit raw Ed25519 verify {f.raw_verify:,.0f}/s, one core "
        f"({f.verify_backend}); ratio {checked / seconds / f.raw_verify:.2f}"
    )
    for kind in ("flood", "arrays", "slow heads", "slow bodies", "big bodies", "oversized"):
        answers = at.get("answers", {}).get(kind, 0)
        statuses = {
            k.removeprefix(kind + " "): v
            for k, v in at.get("statuses", {}).items()
            if k.startswith(kind + " ")
        }
        print(
            f"       {kind}: {answers / seconds:,.1f} answers/s, "
            f"{at.get('connections', {}).get(kind, 0):,} connections, "
            f"{at.get('failures', {}).get(kind, 0):,} failed; {statuses}"
        )
    for name, run in (("at rest", r), ("under attack", a)):
        node_cpu, children_cpu = run.cpu
        print(
            f"node CPU {name}: {node_cpu / run.seconds:.2f} core in the node, "
            f"{children_cpu / run.seconds:.2f} in its children (of {os.cpu_count()} cores)"
        )
    rest_peak, attack_peak = f.rest_memory.peak_total, f.attack_memory.peak_total
    print(
        f"RSS node + children: at rest peak {mib(rest_peak)}, under attack peak "
        f"{mib(attack_peak)} (node {mib(f.attack_memory.peak_node)}, children "
        f"{mib(f.attack_memory.peak_children)}); ratio {attack_peak / max(rest_peak, 1):.2f}"
    )
    print(
        "       peak over each process's life (VmHWM): "
        + ", ".join(f"{name} {mib(value)}" for name, value in f.high_water.items())
    )
    acknowledged = len(f.rest.acknowledged) + len(f.attack.acknowledged)
    print(
        f"nothing lost: {acknowledged} honest transactions acknowledged committed, "
        f"{acknowledged - len(f.lost)} found exactly once where acknowledged; {f.audit}"
    )
    for line in f.lost[:10]:
        print(f"       LOST {line}")


# --- main ---------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Options:
    """One run's shape: the command line's options (tests run a small one)."""

    seconds: float = 30.0
    rest_seconds: float = 10.0
    honest: int = 4
    flood: int = 48
    flood_arrays: int = 4
    slow_heads: int = 1000
    slow_bodies: int = 200
    big_bodies: int = 32
    oversized: int = 2
    replay: bool = True
    block_interval_ms: int = 250
    accounts: int = 200
    seed: int = 1
    # The physical limits each figure is printed beside (the raw Ed25519 rate, the bare
    # /healthz round trip): the test's small run, which prints no figure, leaves them out.
    limits: bool = True


def run(options: Options, directory: Path) -> Figures:
    """Start a node in `directory`, run both phases and the audit; the node is stopped by
    its pid and the attacker process by its own, whatever happens."""
    o = options
    genesis, generated, validator_key = make_workload(100 * o.accounts, o.accounts, o.seed)
    genesis["params"]["block_interval_ms"] = o.block_interval_ms
    setup = []
    for envelope in generated:
        if envelope.tx.type not in SETUP_TYPES:
            break
        setup.append(envelope)
    each = int((o.rest_seconds + o.seconds) * 1000 / o.block_interval_ms) + 50
    queues = [iter(q) for q in honest_retirements(setup, o.accounts, o.honest, each)]
    verifier = Verifier(parse_genesis(genesis))

    figures = Figures(block_interval_ms=o.block_interval_ms)
    if o.limits:
        print("measuring the raw Ed25519 verification rate ...")
        figures.raw_verify, figures.verify_backend = raw_verify_rate()

    context = multiprocessing.get_context("spawn")
    genesis_file, key_file = write_chain_files(directory, genesis, validator_key)
    node = start_node(directory, genesis_file, key_file, directory / "data", NODE_START_S)
    ours, theirs = context.Pipe()
    plan = {
        "port": node.port,
        "seconds": o.seconds,
        "seed": o.seed,
        "flood": o.flood,
        "flood_arrays": o.flood_arrays,
        "slow_heads": o.slow_heads,
        "slow_bodies": o.slow_bodies,
        "big_bodies": o.big_bodies,
        "oversized": o.oversized,
    }
    attacker = context.Process(target=attacker_main, args=(plan, theirs), daemon=True)
    try:
        pid = node.process.pid
        print(f"node pid {pid} on {HOST}:{node.port}; {len(setup)} setup tx ...")
        asyncio.run(setup_chain(node.port, setup))
        attacker.start()
        if not ours.poll(ATTACKER_READY_SECONDS) or ours.recv() != "ready":
            raise BenchError("the attacker process did not start")
        if o.limits:
            figures.bare = asyncio.run(bare_round_trips(node.port, 1000))
        print(f"at rest: {o.honest} honest clients for {o.rest_seconds:g} s ...")
        figures.rest = asyncio.run(
            phase(
                node.port,
                directory=directory,
                pid=pid,
                queues=queues,
                seconds=o.rest_seconds,
                verifier=verifier,
                memory=figures.rest_memory,
                replaying=False,
            )
        )
        node.check_alive()
        print(f"under attack for {o.seconds:g} s ...")
        ours.send("go")
        attack_start = int(time.time() * 1000)
        figures.attack = asyncio.run(
            phase(
                node.port,
                directory=directory,
                pid=pid,
                queues=queues,
                seconds=o.seconds,
                verifier=verifier,
                memory=figures.attack_memory,
                replaying=o.replay,
            )
        )
        if not ours.poll(REQUEST_TIMEOUT_SECONDS + o.seconds):
            raise BenchError("the attacker process did not report")
        figures.attackers = ours.recv()
        figures.attack_window_ms = (attack_start, int(time.time() * 1000))
        attacker.join(timeout=10)
        node.check_alive()
        figures.high_water = high_water(pid)
        print("auditing the chain ...")
        audit(node, genesis_file, directory, figures)
    except BaseException:
        tail = node.stderr.read_text(errors="replace")[-5000:]
        print(f"the node's stderr:\n{tail}", file=sys.stderr)
        raise
    finally:
        if attacker.is_alive():
            attacker.kill()
            attacker.join(timeout=10)
        node.stop()
    return figures


def main() -> None:
    defaults = Options()
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=defaults.seconds, help="of attack")
    parser.add_argument("--rest-seconds", type=float, default=defaults.rest_seconds)
    parser.add_argument("--honest", type=int, default=defaults.honest, help="honest clients")
    for name in ("flood", "flood_arrays", "slow_heads", "slow_bodies", "big_bodies", "oversized"):
        parser.add_argument(
            "--" + name.replace("_", "-"), type=int, default=getattr(defaults, name)
        )
    parser.add_argument("--no-replay", action="store_true", help="no broken copies of honest tx")
    parser.add_argument("--block-interval-ms", type=int, default=defaults.block_interval_ms)
    parser.add_argument("--accounts", type=int, default=defaults.accounts)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = vars(parser.parse_args())
    args["replay"] = not args.pop("no_replay")
    options = Options(**args)

    began = time.perf_counter()
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as temporary:
        figures = run(options, Path(temporary))
    end = os.getloadavg()
    print(
        f"\ntotal {time.perf_counter() - began:.0f} s; load average {load[0]:.2f} at the start, "
        f"{end[0]:.2f} at the end, on {os.cpu_count()} cores (other processes' load lowers "
        "every figure here)"
    )
    report(figures, options)


if __name__ == "__main__":
    main()
