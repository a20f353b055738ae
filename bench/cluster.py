"""Consortium benchmark (issue 5): validators on loopback, as `tanlian cluster` runs them.

    .venv/bin/python bench/cluster.py [--validators 4 7] [--seconds 20] [--clients 5]
                                      [--array 110] [--accounts 4000]

What it does: signs the bench workload of bench/ingest.py (`make_workload`), then for a single
validator (`tanlian node`, the solo producer) and for each --validators N (`tanlian cluster
--validators N`, real `tanlian node --peer ...` processes, BFT consensus) on a fresh chain with
the same authority and transactions: commits the setup (accreditation, issuances), then runs
closed-loop clients, --clients for each validator of the first --validators count (20 for 4 by
default) and the same number in all for every other run (all on the single validator; spread
evenly over 7), so every run is offered the same load. Each client owns its accounts and posts
arrays of --array envelopes with `?wait=commit` to its validator, the next array once the last
is answered, for --seconds. Printed for each: committed tx/s (the log's growth over the window,
from /v1/checkpoint), and the submit-to-commit latency of every transaction answered committed
(an array's answer time stands for each of its transactions), p50 and p99; beside them the raw
single-core Ed25519 verify rate (`raw_verify_rate`) and the single validator's rate, measured in
the same run, with the ratios, and the CPU the validators' processes used per committed
transaction (node, intake workers, signature worker, store writer, from /proc) with the share of
the machine they had (others' processes take the rest). Then, in this process: one validator's
floor (`replica_floor`: the CPU a transaction of the strict decoding, one signature check,
`apply_block` and the store's write, which every validator spends on every transaction) and the
most the machine's cores could commit for each validator count at that floor with nothing else
running, with each run's share of it; and the interpreter time a validator spends validating a
proposed full block when it checks every signature itself, and when it reuses the checks made on
admission (what consensus.node does).

Also printed per run: the blocks of the window (median and largest transactions, and how
many were decided only after round 0), and at the start the scheduler group the benchmark
runs in (`/proc/self/autogroup`; the figures in docs/decisions/0006 come from a group of its
own at nice -20: `setsid bash -c 'echo -20 > /proc/self/autogroup; exec .venv/bin/python
bench/cluster.py ...'`).

Every process is stopped by its pid (the cluster's children by `tanlian cluster` itself, on
SIGTERM; by their pids if it fails to). The load average is printed: other processes on the
same two cores lower every figure. Issue 5's goal: >= 1,500 tx/s with p50 <= 1.5 s on 4.

The default load is what that goal asks of a closed loop. Its clients keep a fixed number of
transactions in flight, so by Little's law the mean submit-to-commit time is that number over
the rate, whatever the validators do: with L in flight, meeting both halves takes a rate of at
least max(1,500, L / 1.5 s). At 2,200 in flight (20 clients x 110, the default) that is the
goal's own 1,500 tx/s; a larger load would ask for more (3,200, the default until 2026-12-07,
asked for 2,133 tx/s), a smaller one would let fewer blocks fill.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.cli_cluster import party_names
from bench.api import (
    HOST,
    NODE_START_S,
    BenchError,
    Connection,
    array_body,
    by_client,
    close_all,
    free_port,
    open_all,
    start_node,
    write_chain_files,
)
from bench.ingest import make_workload, raw_verify_rate
from consensus.pool import Pool
from consensus.producer import tune_garbage_collector
from ledger.blocks import Block, Certificate, Validator, sign_certificate
from ledger.crypto import PrivateKey
from ledger.genesis import genesis_state, make_genesis_document, parse_genesis
from ledger.limits import POOL_NONCE_GAP_MAX
from ledger.native import describe as native_build
from ledger.state import State
from ledger.state_transition import apply_block, build_block
from ledger.store import Store
from ledger.transactions import Envelope, check_signatures, decode_envelope

TANLIAN = Path(sys.executable).parent / "tanlian"
SETUP_TYPES = frozenset({"accredit_certifier", "issue"})
WARM_UP_S = 3.0  # clients run this long before the window opens
STOP_S = 30.0
PORT_TRIES = 50


@dataclass
class Result:
    name: str
    validators: int
    rate: float = 0.0  # committed tx/s over the window
    latencies: list[float] = field(default_factory=list)  # seconds, one per committed tx
    pending: int = 0  # transactions answered still pending after the wait
    heights: int = 0  # blocks over the window
    window_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)  # by process kind, over the window
    block_sizes: list[int] = field(default_factory=list)  # transactions, each block of the window
    late_rounds: int = 0  # blocks of the window decided after round 0 (their certificate's)
    refusals: int = 0  # submissions answered 429 or 503 (queues full) and sent again

    def p(self, quantile: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return math.nan
        return ordered[max(0, math.ceil(quantile * len(ordered)) - 1)]


# --- the chains ---------------------------------------------------------------------------------


def consortium_genesis(base: dict[str, Any], keys: Sequence[PrivateKey]) -> dict[str, Any]:
    """The workload's genesis with `keys` as the validators, named as `tanlian cluster` names
    its parties."""
    names = party_names(len(keys))
    params = base["params"]
    return make_genesis_document(
        chain_id=base["chain_id"],
        genesis_time=base["genesis_time"],
        authority_name=base["authority"]["name"],
        authority_keys=list(base["authority"]["keys"]),
        authority_threshold=base["authority"]["threshold"],
        validators=[
            Validator(public_key=key.public_key_hex, power=1, name=name)
            for key, name in zip(keys, names, strict=True)
        ],
        methodologies=list(base["methodologies"]),
        block_interval_ms=params["block_interval_ms"],
        block_transactions_max=params["block_transactions_max"],
        transaction_bytes_max=params["transaction_bytes_max"],
    )


def free_port_range(count: int) -> int:
    """A base port with `count` free ports after it (probed; another process may still take
    one before the cluster binds it)."""
    for _ in range(PORT_TRIES):
        base = free_port()
        if base + count > 65535:
            continue
        probes = []
        try:
            for port in range(base, base + count):
                probe = socket.socket()
                probes.append(probe)
                probe.bind((HOST, port))
            return base
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    raise BenchError(f"no {count} consecutive free ports")


@dataclass
class Cluster:
    """A `tanlian cluster` process started by this benchmark, and its children's pids."""

    process: subprocess.Popen[bytes]
    ports: list[int]
    output: Path

    def children(self) -> list[int]:
        return [int(pid) for pid in re.findall(r"\(pid (\d+)\)", self.output.read_text())]

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(f"tanlian cluster exited: {self.output.read_text()[-2000:]}")

    def stop(self) -> None:
        children = self.children()
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=STOP_S)
        for pid in children:  # normally stopped by the cluster already
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def start_cluster(directory: Path, genesis: dict[str, Any], keys: Sequence[PrivateKey]) -> Cluster:
    names = party_names(len(keys))
    (directory / "genesis.json").write_text(json.dumps(genesis, indent=2))
    for name, key in zip(names, keys, strict=True):
        (directory / name).mkdir(parents=True)
        (directory / name / "validator.pem").write_bytes(key.to_pem())
    base = free_port_range(len(keys))
    output = directory / "cluster.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [str(TANLIAN), "cluster", "--data", str(directory),
             "--validators", str(len(keys)), "--base-port", str(base)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k != "TANLIAN_PASSPHRASE"},
        )  # fmt: skip
    cluster = Cluster(process=process, ports=[base + i for i in range(len(keys))], output=output)
    try:
        deadline = time.monotonic() + NODE_START_S
        while not asyncio.run(_all_healthy(cluster.ports)):
            cluster.check_alive()
            if time.monotonic() > deadline:
                raise BenchError("the cluster's validators did not answer /healthz")
            time.sleep(0.2)
    except BaseException:
        cluster.stop()
        raise
    return cluster


async def _all_healthy(ports: Sequence[int]) -> bool:
    async def one(port: int) -> bool:
        try:
            connection = await asyncio.wait_for(Connection.open(port), 2)
        except OSError:
            return False
        try:
            status, _ = await asyncio.wait_for(connection.request("GET", "/healthz"), 2)
            return status == 200
        except (OSError, ValueError, asyncio.IncompleteReadError):
            return False  # not up yet, or another program on the port (the cluster then exits)
        finally:
            await connection.close()

    return all(await asyncio.gather(*(one(port) for port in ports)))


# --- where the CPU went ----------------------------------------------------------------------


def process_tree(pids: Sequence[int]) -> list[int]:
    """`pids` and their descendants (Linux /proc)."""
    found = list(pids)
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue
        children = []
        for task in tasks:
            with contextlib.suppress(FileNotFoundError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                children += [int(child) for child in text.split()]
        found += process_tree(children)
    return found


def cpu_by_kind(pids: Sequence[int]) -> dict[str, float]:
    """CPU seconds (user + system) so far of each process, summed by kind: the node, its
    intake workers, its signature worker, its store writer."""
    tick = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except FileNotFoundError:
            continue
        kind = (
            "signature worker"
            if b"consensus.verifier" in command
            else "store writer"
            if b"ledger.store" in command
            else "intake workers"
            if b"api.intake" in command
            else "node"
        )
        totals[kind] = totals.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return totals


BACK_OFF_S = 0.2  # before a submission refused for full queues is sent again
SETUP_WAIT_S = 120.0  # for each chunk of the setup to be committed


async def commit_setup(port: int, setup: Sequence[Envelope]) -> None:
    """The accreditation and issuances, in chunks of the pool's nonce window (one certifier
    signs them all), each committed before the next is sent. A chunk still pending after the
    node's own wait is polled for (a consortium under load, or one that forwards nothing,
    takes longer than one wait)."""
    for i in range(0, len(setup), POOL_NONCE_GAP_MAX):
        chunk = setup[i : i + POOL_NONCE_GAP_MAX]
        connection = await Connection.open(port)
        try:
            status, body = await connection.request(
                "POST", "/v1/transactions?wait=commit", array_body(chunk)
            )
        finally:
            await connection.close()
        if status not in (200, 202):
            raise BenchError(f"setup refused: {status} {body[:300]!r}")
        deadline = time.monotonic() + SETUP_WAIT_S
        while True:
            connection = await Connection.open(port)
            try:
                answer = await connection.get_json(f"/v1/transactions/{chunk[-1].tx_id}")
            finally:
                await connection.close()
            if answer["status"] == "committed":
                break
            if answer["status"] != "pending" or time.monotonic() > deadline:
                raise BenchError(f"setup transaction not committed: {answer}")
            await asyncio.sleep(0.2)


# --- the clients --------------------------------------------------------------------------------


async def measure(
    ports: Sequence[int],
    work: Sequence[Envelope],
    *,
    clients: int,
    array: int,
    seconds: float,
    result: Result,
    processes: Sequence[int],
) -> None:
    """`clients` closed-loop clients spread evenly over the ports; the window opens after
    WARM_UP_S."""
    per_port = [clients // len(ports) + (p < clients % len(ports)) for p in range(len(ports))]
    queues = by_client(work, clients)
    bodies = [
        [(array_body(q[i : i + array]), len(q[i : i + array])) for i in range(0, len(q), array)]
        for q in queues
    ]
    # Client k talks from 127.0.0.(2 + k), the first per_port[0] of them to ports[0] and so
    # on: each is one certifier's or platform's app, and a node queues large submissions
    # fairly by client address.
    connections = [
        c
        for p, port in enumerate(ports)
        for c in await open_all(port, per_port[p], first_address=2 + sum(per_port[:p]))
    ]
    start = time.perf_counter()
    window_open = start + WARM_UP_S
    window_close = window_open + seconds
    exhausted = False

    async def client(index: int, mine: list[tuple[bytes, int]]) -> None:
        nonlocal exhausted
        for body, count in mine:
            if time.perf_counter() >= window_close:
                return
            sent = time.perf_counter()
            while True:
                connection = connections[index]
                status, answer = await connection.request(
                    "POST", "/v1/transactions?wait=commit", body
                )
                if status not in (429, 503):
                    break
                # The node's fair queues are full (api.admission): back off as a client
                # told Retry-After would, on a new connection (a refused one may close).
                result.refusals += 1
                await connection.close()
                await asyncio.sleep(BACK_OFF_S)
                connections[index] = await Connection.open(
                    connection.port, address=connection.address
                )
            done = time.perf_counter()
            if status not in (200, 202):
                raise BenchError(f"array refused: {status} {answer[:300]!r}")
            results = json.loads(answer)["results"]
            committed = sum(1 for r in results if r["status"] == "committed")
            rejected = [r for r in results if r["status"] == "rejected"]
            if rejected:
                raise BenchError(f"rejected: {json.dumps(rejected[0])[:300]}")
            if window_open <= sent and done <= window_close:
                result.latencies.extend([done - sent] * committed)
            result.pending += count - committed
        exhausted = True

    try:
        tasks = [asyncio.ensure_future(client(i, b)) for i, b in enumerate(bodies)]
        await asyncio.sleep(max(0.0, window_open - time.perf_counter()))
        first_size, first_height = await checkpoint(ports[0])
        first_at = time.perf_counter()
        tree = process_tree(processes)
        first_cpu = cpu_by_kind(tree)
        await asyncio.sleep(max(0.0, window_close - time.perf_counter()))
        last_size, last_height = await checkpoint(ports[0])
        last_at = time.perf_counter()
        last_cpu = cpu_by_kind(tree)
        await asyncio.gather(*tasks)
        result.block_sizes, result.late_rounds = await blocks_of(
            ports[0], first_height, last_height, first_size
        )
    finally:
        await close_all(connections)
    if exhausted:
        print("    NOTE a client ran out of transactions before the window closed: sign more")
    result.rate = (last_size - first_size) / (last_at - first_at)
    result.heights = last_height - first_height
    result.window_s = last_at - first_at
    result.cpu_s = {kind: last_cpu[kind] - first_cpu.get(kind, 0.0) for kind in last_cpu}


async def checkpoint(port: int) -> tuple[int, int]:
    """The log size and height (a new connection: an idle one may have been closed)."""
    connection = await Connection.open(port)
    try:
        header = (await connection.get_json("/v1/checkpoint"))["header"]
    finally:
        await connection.close()
    return int(header["log_size"]), int(header["height"])


async def blocks_of(port: int, first: int, last: int, size: int) -> tuple[list[int], int]:
    """The transactions of each block after height `first` up to `last` (the log held `size`
    at `first`), and how many of them were decided after round 0."""
    sizes, late = [], 0
    connection = await Connection.open(port)
    try:
        for height in range(first + 1, last + 1):
            checkpoint = await connection.get_json(f"/v1/checkpoints/{height}")
            log_size = int(checkpoint["header"]["log_size"])
            sizes.append(log_size - size)
            size = log_size
            late += int(checkpoint["certificate"]["round"]) > 0
    finally:
        await connection.close()
    return sizes, late


@dataclass(frozen=True)
class Workload:
    genesis: dict[str, Any]  # the single validator's; a consortium's replaces the validators
    key: PrivateKey  # the single validator's
    setup: Sequence[Envelope]
    work: Sequence[Envelope]


def run_single(directory: Path, load: Workload, args: argparse.Namespace) -> Result:
    directory.mkdir()
    genesis_file, key_file = write_chain_files(directory, load.genesis, load.key)
    node = start_node(directory, genesis_file, key_file, directory / "data", NODE_START_S)
    result = Result(name="single validator", validators=1)
    clients = args.clients * args.validators[0]
    try:
        asyncio.run(commit_setup(node.port, load.setup))
        asyncio.run(
            measure([node.port], load.work, clients=clients, array=args.array,
                    seconds=args.seconds, result=result, processes=[node.process.pid])
        )  # fmt: skip
        node.check_alive()
    except BaseException:
        node.stop()
        tail = node.stderr.read_text(errors="replace")[-5000:]
        print(f"the node's stderr (exit {node.process.returncode}):\n{tail}", file=sys.stderr)
        raise
    finally:
        node.stop()
    return result


def run_cluster(directory: Path, load: Workload, count: int, args: argparse.Namespace) -> Result:
    directory.mkdir()
    keys = [
        PrivateKey(seed=hashlib.sha256(f"bench-validator-{i}".encode()).digest())
        for i in range(count)
    ]
    cluster = start_cluster(directory, consortium_genesis(load.genesis, keys), keys)
    result = Result(name=f"{count} validators", validators=count)
    try:
        asyncio.run(commit_setup(cluster.ports[0], load.setup))
        asyncio.run(
            measure(cluster.ports, load.work, clients=args.clients * args.validators[0],
                    array=args.array, seconds=args.seconds, result=result,
                    processes=cluster.children())
        )  # fmt: skip
        cluster.check_alive()
    except BaseException:
        cluster.stop()
        for log in sorted(directory.glob("*/node.log")):
            tail = log.read_text(errors="replace")[-3000:]
            print(f"{log.parent.name}'s node.log:\n{tail}", file=sys.stderr)
        raise
    finally:
        cluster.stop()
    return result


# --- validating a proposed block ----------------------------------------------------------------


def solo_certificate(block: Block, key: PrivateKey) -> Certificate:
    """The certificate of `block` in round 0 by the workload's one validator."""
    return sign_certificate(
        chain_id=block.header.chain_id,
        height=block.height,
        round=0,
        block_hash=block.block_hash(),
        keys=[key],
    )


def validation_cost(
    genesis: dict[str, Any], setup: Sequence[Envelope], work: Sequence[Envelope], key: PrivateKey
) -> tuple[int, float, float, float]:
    """(transactions, s with every signature checked on this thread, s reusing admission's
    checks, s for the pool's lookups alone) for one full block on the setup's state."""
    state = genesis_state(parse_genesis(genesis))
    certificate: Certificate | None = None
    now = state.head_time

    def build(candidates: Sequence[Envelope]) -> tuple[Block, State]:
        built = build_block(
            state, candidates, time=now, proposer=key.public_key_hex, last_commit=certificate
        )
        return built.block, built.state

    for i in range(0, len(setup), 500):
        now += 1000
        block, state = build(setup[i : i + 500])
        certificate = solo_certificate(block, key)
    now += 1000
    block, _ = build(work[: state.params.block_transactions_max])
    limit = len(block.transactions)
    pool = Pool(capacity=2 * limit, nonce_gap_max=limit)
    accounts = state  # the block's parent: its signers' nonces and keys
    pool.admit(
        block.transactions,
        [None] * len(block.transactions),
        lambda signer: accounts.get(f"account/{signer}"),
    )
    assert len(pool) == limit
    started = time.perf_counter()
    apply_block(state, block)
    every = time.perf_counter() - started
    started = time.perf_counter()
    unchecked = [e for e in block.transactions if not pool.holds(e)]
    assert not unchecked
    apply_block(state, block, signatures_verified=True)
    reused = time.perf_counter() - started
    started = time.perf_counter()
    for envelope in block.transactions:
        pool.holds(envelope)
    lookups = time.perf_counter() - started
    return len(block.transactions), every, reused, lookups


FLOOR_BLOCK_TRANSACTIONS = 1200  # the median block of 4 validators under the default load
FLOOR_BLOCKS = 8


@dataclass
class Floor:
    """CPU seconds per transaction of what every validator does for every transaction, in
    this process: the strict decoding and parsing of its bytes, one signature check, its
    share of `apply_block` and of the store's write of the block (SQLite, fsync included)."""

    transactions: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, started: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.process_time() - started

    def per_transaction(self) -> dict[str, float]:
        return {stage: s / self.transactions for stage, s in self.seconds.items()}


def replica_floor(
    genesis: dict[str, Any], setup: Sequence[Envelope], work: Sequence[Envelope], key: PrivateKey
) -> Floor:
    """`Floor` over FLOOR_BLOCKS blocks of the workload's transfers and retirements, on a
    store in a temporary directory, after the setup's blocks; the garbage collector set as
    a node sets it (this process holds the whole signed workload, which a node does not)."""
    tune_garbage_collector()
    floor = Floor()
    limit = parse_genesis(genesis).params.transaction_bytes_max
    with tempfile.TemporaryDirectory() as temporary:
        store = Store.create(Path(temporary), genesis)
        state = store.load_state()
        certificate: Certificate | None = None
        size = FLOOR_BLOCK_TRANSACTIONS
        chunks = [setup[i : i + 500] for i in range(0, len(setup), 500)]
        chunks += [work[i : i + size] for i in range(0, size * FLOOR_BLOCKS, size)]
        for number, chunk in enumerate(chunks):
            built = build_block(
                state,
                chunk,
                time=state.head_time + 1000,
                proposer=key.public_key_hex,
                last_commit=certificate,
            )
            block = built.block
            certificate = solo_certificate(block, key)
            if number < len(chunks) - FLOOR_BLOCKS:
                store.append(block, certificate, built.state)
                state = built.state
                continue
            floor.transactions += len(block.transactions)
            started = time.process_time()
            for envelope in block.transactions:
                decode_envelope(envelope.leaf, transaction_bytes_max=limit)
            floor.add("decode", started)
            started = time.process_time()
            assert not any(check_signatures(block.transactions))
            floor.add("signature", started)
            started = time.process_time()
            state = apply_block(state, block, signatures_verified=True)
            floor.add("apply", started)
            started = time.process_time()
            store.append(block, certificate, state)
            floor.add("store", started)
        store.close()
    return floor


def scheduler_group() -> str:
    """This process's autogroup and its nice value (Linux): a run started in a group of its
    own at a high priority (`echo -15 > /proc/self/autogroup`) is less disturbed by other
    work on the machine, and its figures should say so."""
    try:
        return Path("/proc/self/autogroup").read_text().strip()
    except OSError:
        return "unknown"


# --- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--validators", type=int, nargs="+", default=[4, 7])
    parser.add_argument("--seconds", type=float, default=20.0, help="the measured window")
    parser.add_argument(
        "--clients",
        type=int,
        default=5,
        help="closed-loop clients per validator of the first --validators count; every run"
        " gets that many in all, spread evenly over its validators",
    )
    parser.add_argument("--array", type=int, default=110, help="envelopes per POST")
    parser.add_argument("--accounts", type=int, default=4000)
    parser.add_argument("--rate-max", type=int, default=4000, help="tx/s to sign for")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-single", action="store_true", help="skip the single validator")
    parser.add_argument(
        "--no-validation", action="store_true", help="skip the in-process validation figure"
    )
    args = parser.parse_args()
    assert all(n >= 1 for n in args.validators) and args.clients >= 1 and args.array >= 1

    began = time.perf_counter()
    loads = [os.getloadavg()[0]]
    total = int(args.rate_max * (args.seconds + WARM_UP_S + 5))
    print(f"load average {loads[0]:.2f}; signing {total:,} transactions ...", flush=True)
    print(f"scheduler group: {scheduler_group()}", flush=True)
    genesis, generated, validator_key = make_workload(total, args.accounts, args.seed)
    envelopes = list(generated)
    setup = [e for e in envelopes if e.tx.type in SETUP_TYPES]
    work = [e for e in envelopes if e.tx.type not in SETUP_TYPES]
    load = Workload(genesis=genesis, key=validator_key, setup=setup, work=work)
    raw, backend = raw_verify_rate()
    print(f"raw Ed25519 verify: {raw:,.0f}/s on one core ({backend})", flush=True)
    print(f"ledger's hot modules: {native_build()} (the nodes run the same)", flush=True)

    results: list[Result] = []
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        if not args.no_single:
            print("single validator ...", flush=True)
            results.append(run_single(directory / "single", load, args))
            loads.append(os.getloadavg()[0])
        for count in args.validators:
            print(f"{count} validators ...", flush=True)
            try:
                results.append(run_cluster(directory / f"cluster-{count}", load, count, args))
            except BenchError as error:  # say so, and measure the others
                print(f"    {count} validators: no figure: {str(error)[:300]}", flush=True)
            loads.append(os.getloadavg()[0])
    cost = None if args.no_validation else validation_cost(genesis, setup, work, validator_key)
    floor = None if args.no_validation else replica_floor(genesis, setup, work, validator_key)

    print(
        f"\ntotal {time.perf_counter() - began:.0f} s; load average "
        + ", ".join(f"{load:.2f}" for load in loads)
        + f" (at the start and after each run) on {os.cpu_count()} cores"
    )
    print(f"raw Ed25519 verify {raw:,.0f}/s, one core ({backend}); ledger: {native_build()}")
    single = next((r for r in results if r.validators == 1), None)
    for r in results:
        clients = args.clients * args.validators[0]
        line = (
            f"{r.name:17} {r.rate:7,.0f} committed tx/s, submit-to-commit p50 {r.p(0.5):.2f} s,"
            f" p99 {r.p(0.99):.2f} s ({len(r.latencies):,} tx, {r.heights} blocks in"
            f" {args.seconds:.0f} s, {clients} clients x {args.array})"
        )
        print(line)
        ratios = f"{'':17} ratio to raw verify {r.rate / raw:.3f}"
        if single is not None and r is not single:
            ratios += f", to the single validator {r.rate / single.rate:.2f}"
        if r.validators == 4:
            ok = r.rate >= 1500 and r.p(0.5) <= 1.5
            ratios += f"; goal >= 1,500 tx/s, p50 <= 1.5 s: {'meets' if ok else 'MISSES'}"
        print(ratios)
        if r.rate > 0:
            # Closed-loop clients keep a fixed number in flight, so the mean time a
            # transaction spends is that number over the rate (Little's law) whatever the
            # node does: the latency a run shows is chosen by its load as much as earned.
            in_flight = clients * args.array
            print(
                f"{'':17} {in_flight:,} in flight / {r.rate:,.0f} tx/s = {in_flight / r.rate:.2f} s"
                " (Little's law: the mean submit-to-commit time of any closed loop this size);"
                f" p50 <= 1.5 s at 1,500 tx/s leaves room for {1500 * 1.5:,.0f} in flight"
            )
        if r.pending:
            print(f"{'':17} {r.pending:,} answered still pending after the wait")
        if r.refusals:
            print(f"{'':17} {r.refusals:,} submissions refused for full queues, sent again")
        if r.block_sizes:
            sizes = sorted(r.block_sizes)
            print(
                f"{'':17} blocks of {sizes[len(sizes) // 2]:,} tx (median), at most"
                f" {sizes[-1]:,}; {r.late_rounds} of {len(sizes)} decided after round 0"
            )
        committed = r.rate * r.window_s
        used = sum(r.cpu_s.values())
        share = used / ((os.cpu_count() or 1) * r.window_s) if r.window_s else 0.0
        per = ", ".join(
            f"{kind} {seconds / max(committed, 1) * 1e6:,.0f}"
            for kind, seconds in sorted(r.cpu_s.items())
        )
        print(f"{'':17} CPU us per committed tx: {per}; they had {share:.0%} of the machine")
    if floor is not None:
        stages = floor.per_transaction()
        each = sum(stages.values())
        cores = os.cpu_count() or 1
        print(
            f"one validator's floor, in this process ({FLOOR_BLOCKS} blocks of"
            f" {FLOOR_BLOCK_TRANSACTIONS:,}): "
            + ", ".join(f"{stage} {seconds * 1e6:.0f}" for stage, seconds in stages.items())
            + f" = {each * 1e6:.0f} us CPU a transaction; with nothing else, {cores} cores"
            " could commit at most "
            + ", ".join(
                f"{cores / (n * each):,.0f} tx/s for {n} validator{'s' if n > 1 else ''}"
                for n in sorted({1, *args.validators})
            )
        )
        for r in results:
            print(f"{'':17} {r.name}: {r.rate * r.validators * each / cores:.2f} of that ceiling")
    if cost is None:
        return
    size, every, reused, lookups = cost
    print(
        f"validating a proposed block of {size:,} transactions, interpreter time: "
        f"{every * 1000:.0f} ms checking every signature here, {reused * 1000:.0f} ms reusing"
        f" admission's checks ({lookups * 1000:.1f} ms of it the pool lookups); "
        f"saved {(every - reused) / size * 1e6:.0f} us a transaction"
    )


if __name__ == "__main__":
    main()
