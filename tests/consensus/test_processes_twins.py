"""A validator run twice with one key: real `tanlian node` processes on 127.0.0.1 (issue 5).

Four validators, of which validator 3's key is run by two processes at once, each with its
own data directory and signed-message log: the fault a careless failover makes (a standby
started while the primary still runs). Each twin is correct on its own and never signs two
messages for one slot, but together they do: when validator 3 proposes, each twin builds its
own block (at its own clock, and here from its own pool: transactions are submitted to one
twin only), so two proposals for one (height, round) go out, and each twin prevotes its own.

The test asserts safety (every process's chain agrees hash for hash at every common height,
and `tanlian verify chain` accepts the export), and that evidence naming validator 3 is
committed in a block and recorded in the state: `/v1/stats` counts it, the state proof of
`evidence/<validator>/<height>` verifies against the checkpoint, and the recorded evidence
verifies on its own. It starts and stops exactly its own processes, by their Popen handles.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.blocks import parse_block
from ledger.encoding import canonical
from ledger.evidence import parse_evidence, verify_evidence
from ledger.state_tree import verify_state_proof
from tests.consensus.test_node import WORLD, document
from tests.consensus.test_processes import TANLIAN, WAIT_S, free_port
from tests.factory import CHAIN_ID

TWIN = 3  # the validator whose key runs twice
START_WAIT_S = 90.0  # five processes starting at once on a shared two-core machine
EVIDENCE_WAIT_S = 60.0


@dataclass
class Process:
    name: str
    validator: int
    port: int
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Twins:
    """Validators 0, 1, 2 once each, validator 3 twice ("3a", "3b"); every process peers with
    every other one."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "genesis.json").write_bytes(canonical(document()))
        names = [(str(i), i) for i in range(TWIN)] + [("3a", TWIN), ("3b", TWIN)]
        self.processes = [Process(name, index, free_port()) for name, index in names]
        self.client = httpx.Client(timeout=5, trust_env=False)
        for index in range(len(WORLD.keys)):
            (root / f"key-{index}.pem").write_bytes(WORLD.keys[index].to_pem())

    def start(self, process: Process) -> None:
        peers = [arg for p in self.processes if p is not process for arg in ("--peer", p.url)]
        log = (self.root / f"node-{process.name}.log").open("ab")
        process.popen = subprocess.Popen(
            [
                str(TANLIAN), "node",
                "--genesis", str(self.root / "genesis.json"),
                "--data", str(self.root / f"data-{process.name}"),
                "--validator-key", str(self.root / f"key-{process.validator}.pem"),
                "--listen", f"127.0.0.1:{process.port}",
                # A chain that moves while idle gives the twins a height to sign twice at
                # every block interval, not only when a transaction comes.
                "--empty-block-interval", "0",
                *peers,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k != "TANLIAN_PASSPHRASE"},
        )  # fmt: skip
        log.close()

    def stop_all(self) -> None:
        started = [p.popen for p in self.processes if p.popen is not None]
        for popen in started:
            if popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
        for popen in started:
            try:
                popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(timeout=5)
        for process in self.processes:
            process.popen = None
        self.client.close()

    def get(self, process: Process, path: str, **params: Any) -> Any:
        answer = self.client.get(f"{process.url}{path}", params=params)
        assert answer.status_code == 200, (path, answer.text)
        return answer.json()

    def height(self, process: Process) -> int | None:
        try:
            answer = self.client.get(f"{process.url}/healthz", timeout=1)
        except httpx.HTTPError:
            return None
        height: int = answer.json()["height"]
        return height

    def heights(self) -> dict[str, int | None]:
        return {p.name: self.height(p) for p in self.processes}

    def wait(self, condition: Callable[[], bool], what: str, seconds: float = WAIT_S) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            assert time.monotonic() < deadline, f"{what}: not within {seconds} s, {self.heights()}"
            time.sleep(0.1)

    def export(self, process: Process, to_height: int) -> list[bytes]:
        answer = self.client.get(f"{process.url}/v1/export", params={"to_height": to_height})
        assert answer.status_code == 200, answer.text
        lines = answer.content.splitlines()
        assert len(lines) == to_height + 1
        return lines

    def hashes(self, process: Process, to_height: int) -> list[str]:
        return [
            parse_block(json.loads(line)["block"], transaction_bytes_max=16384).block_hash()
            for line in self.export(process, to_height)[1:]
        ]


@pytest.fixture
def twins(tmp_path: Path) -> Iterator[Twins]:
    running = Twins(tmp_path)
    try:
        for process in running.processes:
            running.start(process)
        running.wait(
            lambda: all((h or 0) >= 1 for h in running.heights().values()),
            "every process starts",
            START_WAIT_S,
        )
        yield running
    finally:
        running.stop_all()


def test_one_key_run_twice_is_caught_and_the_chain_stays_one(twins: Twins, tmp_path: Path) -> None:
    honest = twins.processes[:TWIN]
    twin_a = twins.processes[TWIN]
    twin_key = WORLD.keys[TWIN].public_key_hex

    # Transactions reach twin a's pool only: when validator 3 proposes, the twins' blocks
    # differ in content, not only in time.
    for envelope in WORLD.workload[:12]:
        answer = twins.client.post(f"{twin_a.url}/v1/transactions", json=envelope.to_json())
        assert answer.status_code in (200, 202), answer.text

    def recorded() -> bool:
        return all(twins.get(p, "/v1/stats")["evidence"].get(twin_key, 0) >= 1 for p in honest)

    twins.wait(recorded, "evidence against the twinned key recorded", EVIDENCE_WAIT_S)
    assert all(set(twins.get(p, "/v1/stats")["evidence"]) == {twin_key} for p in honest)

    # The evidence is in a block: find it in an honest node's export.
    head = twins.height(honest[0])
    assert head is not None
    lines = twins.export(honest[0], head)
    carried = [
        (json.loads(line)["block"]["header"]["height"], item)
        for line in lines[1:]
        for item in json.loads(line)["block"]["evidence"]
    ]
    assert carried, "the evidence is recorded, so a block carries it"

    # Safety: every process, twins included, holds one chain, hash for hash, at least as far
    # as that block (a twin may lag: it waits until others' decisions reach it).
    twins.wait(
        lambda: all((h or 0) >= carried[0][0] for h in twins.heights().values()),
        "every process past the block with the evidence",
    )
    heights = twins.heights()
    assert None not in heights.values(), heights
    top = min(h for h in heights.values() if h is not None)
    chains = {p.name: twins.hashes(p, top) for p in twins.processes}
    assert len({tuple(chain) for chain in chains.values()}) == 1, "a fork"

    validators = WORLD.validators
    for _, item in carried:
        evidence = parse_evidence(item)
        assert evidence.public_key == twin_key  # it names the twins' key, and only it
        assert evidence.evidence_type in ("duplicate_vote", "duplicate_proposal")
        verify_evidence(evidence, chain_id=CHAIN_ID, validators=validators)
    block_height, first = carried[0]
    evidence = parse_evidence(first)
    key = evidence.state_key()
    for process in honest:
        answer = twins.get(process, "/v1/proofs/state", key=key)
        checkpoint = answer["checkpoint"]["header"]
        verify_state_proof(proof=answer["proof"], root=bytes.fromhex(checkpoint["state_root"]))
        value = answer["proof"]["value"]
        assert value["validator"] == twin_key and value["height"] == evidence.height
        assert value["recorded_height"] == block_height
        assert parse_evidence(value["evidence"]) == evidence

    # The offline auditor accepts the chain, evidence and all.
    exported = tmp_path / "export.ndjson"
    exported.write_bytes(b"\n".join(lines) + b"\n")
    result = subprocess.run(
        [str(TANLIAN), "verify", "chain", "--export", str(exported),
         "--genesis", str(tmp_path / "genesis.json")],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    assert f"height {head}" in result.stdout
