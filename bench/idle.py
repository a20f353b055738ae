"""An idle consortium: empty blocks while nothing happens, and a lone transaction's latency.

    .venv/bin/python bench/idle.py [--intervals 60 0] [--transactions 12] [--idle-seconds 20]

For each `--empty-block-interval` given (seconds; 60 is a node's default, 0 an empty block
every block interval, as consortia ran before docs/decisions/0006 "An idle consortium"): runs
`tanlian cluster` (4 validators on loopback, a fresh chain), waits for its first block, counts
the blocks of --idle-seconds with nothing submitted (each ~4 KB on every validator), then sends
--transactions single transactions, each PAUSE_S after the last answer, to the validators in
turn, with `?wait=commit`: prints their submit-to-commit latency (p50, max) and how many blocks
the chain grew by for them. Beside it, the physical limit measured in the same run: one HTTP
round trip to a validator on loopback (`GET /healthz`, the median of ROUND_TRIPS), and the
ratio. Every process is stopped by `tanlian cluster` on SIGTERM (by pid if it fails to).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.client import Client
from bench.api import HOST
from bench.cluster import TANLIAN, Cluster, free_port_range
from ledger.crypto import PrivateKey
from ledger.genesis import parse_genesis
from ledger.transactions import Transaction, sign_transaction

VALIDATORS = 4
PAUSE_S = 4.0  # after a transaction's block, long enough for the chain to idle again
ROUND_TRIPS = 200
START_S = 120.0


def heights(client: httpx.Client, ports: list[int]) -> list[int]:
    """Every validator's height; [] while one does not answer."""
    found = []
    for port in ports:
        try:
            found.append(int(client.get(f"http://{HOST}:{port}/healthz").json()["height"]))
        except (httpx.HTTPError, ValueError, KeyError):
            return []
    return found


def top(client: httpx.Client, ports: list[int]) -> int:
    """The highest height, once every validator answers."""
    deadline = time.monotonic() + START_S
    while not (found := heights(client, ports)):
        assert time.monotonic() < deadline, "a validator stopped answering /healthz"
        time.sleep(0.2)
    return max(found)


def run(directory: Path, interval: float, transactions: int, idle_s: float) -> str:
    base = free_port_range(VALIDATORS)
    output = directory / "cluster.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [str(TANLIAN), "cluster", "--data", str(directory), "--base-port", str(base),
             "--empty-block-interval", f"{interval:g}"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k != "TANLIAN_PASSPHRASE"},
        )  # fmt: skip
    cluster = Cluster(process=process, ports=[base + i for i in range(VALIDATORS)], output=output)
    try:
        with httpx.Client(timeout=2, trust_env=False) as client:
            deadline = time.monotonic() + START_S
            while len(found := heights(client, cluster.ports)) < VALIDATORS or min(found) < 1:
                cluster.check_alive()
                assert time.monotonic() < deadline, "the cluster did not decide its first block"
                time.sleep(0.2)
            time.sleep(PAUSE_S)  # every validator past its first block
            before = top(client, cluster.ports)
            time.sleep(idle_s)
            idle_blocks = top(client, cluster.ports) - before
            url = f"http://{HOST}:{cluster.ports[0]}/healthz"
            round_trips = []
            for _ in range(ROUND_TRIPS):
                started = time.perf_counter()
                client.get(url)
                round_trips.append(time.perf_counter() - started)
            genesis = json.loads((directory / "genesis.json").read_text())
            authority = PrivateKey.from_pem((directory / "authority.pem").read_bytes())
            signer = parse_genesis(genesis).authority_id
            first = top(client, cluster.ports)
            latencies = []
            for nonce in range(1, transactions + 1):
                time.sleep(PAUSE_S)
                envelope = sign_transaction(
                    Transaction(
                        chain_id=genesis["chain_id"],
                        type="register_methodology",
                        signer=signer,
                        nonce=nonce,
                        payload={
                            "methodology_id": f"bench-{nonce}",
                            "name": f"Bench methodology {nonce}",
                            "document_sha256": f"{nonce:064x}",
                        },
                    ),
                    [authority],
                )
                port = cluster.ports[nonce % VALIDATORS]
                with Client(f"http://{HOST}:{port}") as submitter:
                    started = time.perf_counter()
                    answer = submitter.submit(envelope, wait=True)
                    latencies.append(time.perf_counter() - started)
                assert answer["status"] == "committed", answer
            grown = top(client, cluster.ports) - first
    finally:
        cluster.stop()
    p50, round_trip = statistics.median(latencies), statistics.median(round_trips)
    return (
        f"--empty-block-interval {interval:g}: {idle_blocks} blocks in {idle_s:.0f} s idle;"
        f" {transactions} lone transactions: submit-to-commit p50 {p50 * 1000:.0f} ms,"
        f" max {max(latencies) * 1000:.0f} ms, {grown} blocks for them; loopback round trip"
        f" {round_trip * 1000:.2f} ms (p50 {p50 / round_trip:.0f}x it)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--intervals", type=float, nargs="+", default=[60.0, 0.0])
    parser.add_argument("--transactions", type=int, default=12)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    args = parser.parse_args()
    assert args.transactions >= 1 and args.idle_seconds > 0
    for interval in args.intervals:
        with tempfile.TemporaryDirectory() as temporary:
            print(run(Path(temporary), interval, args.transactions, args.idle_seconds), flush=True)


if __name__ == "__main__":
    main()
