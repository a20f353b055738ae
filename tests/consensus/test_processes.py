"""A consortium of four real `tanlian node` processes on 127.0.0.1 (issue 5, deliverable 6).

The test starts and stops exactly its own processes, by pid, with bounded waits: four
validators commit transactions submitted to any of them with identical block hashes; one
SIGKILLed, the chain goes on; restarted, it catches up with identical hashes; two of four
SIGSTOPped, no height is decided beyond the one in flight and nothing forks, and the chain
resumes after SIGCONT; `tanlian verify chain --export` accepts every node's export.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.blocks import parse_block
from ledger.encoding import canonical
from tests.api.test_cli import environment
from tests.consensus.test_node import WORLD, document

TANLIAN = Path(sys.executable).parent / "tanlian"
TIMED_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARNING tanlian\.")
NODES = 4
WAIT_S = 30.0


def node_environment(*, measured: bool = True) -> dict[str, str]:
    """The environment of a node these tests start: this one's, without a passphrase.

    With `measured=False`, also without coverage's variables, for a node that will be
    SIGKILLed: coverage writes a process's data at its exit, so a killed node's measurements
    are lost, and measuring it only slowed it (the two crash tests ran 30-40 % longer, each
    restart paying for the tracer on its imports and its load)."""
    env = environment()
    if not measured:
        for name in ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START"):
            env.pop(name, None)
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Consortium:
    def __init__(self, root: Path, genesis: dict[str, Any] | None = None) -> None:
        """Four validators of `genesis` (default: `document()`; its validators are WORLD's)."""
        self.root = root
        (root / "genesis.json").write_bytes(canonical(document() if genesis is None else genesis))
        self.ports = [free_port() for _ in range(NODES)]
        self.urls = [f"http://127.0.0.1:{port}" for port in self.ports]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.client = httpx.Client(timeout=5, trust_env=False)
        for index in range(NODES):
            (root / f"key-{index}.pem").write_bytes(WORLD.keys[index].to_pem())

    def start(self, index: int, *extra: str, measured: bool = True) -> None:
        """Start validator `index` (`extra`: more arguments of `tanlian node`; `measured`:
        see `node_environment`). These tests watch an idle chain's heights move through
        crashes and stalls, so its validators add an empty block every block interval
        (`--empty-block-interval 0`; the default waits up to a minute for something to
        decide: tests/api/test_cli_cluster.py)."""
        peers = [arg for j in range(NODES) if j != index for arg in ("--peer", self.urls[j])]
        log = (self.root / f"node-{index}.log").open("ab")
        self.processes[index] = subprocess.Popen(
            [
                str(TANLIAN), "node",
                "--genesis", str(self.root / "genesis.json"),
                "--data", str(self.root / f"data-{index}"),
                "--validator-key", str(self.root / f"key-{index}.pem"),
                "--listen", f"127.0.0.1:{self.ports[index]}",
                "--empty-block-interval", "0",
                *peers,
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=node_environment(measured=measured),
        )  # fmt: skip
        log.close()

    def signal(self, index: int, number: signal.Signals) -> None:
        os.kill(self.processes[index].pid, number)

    def kill(self, index: int) -> None:
        process = self.processes.pop(index)
        process.kill()
        process.wait(timeout=10)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        self.processes.clear()
        self.client.close()

    def height(self, index: int) -> int | None:
        try:
            answer = self.client.get(f"{self.urls[index]}/healthz", timeout=1)
        except httpx.HTTPError:
            return None
        height: int = answer.json()["height"]
        return height

    def heights(self, indexes: range | list[int] = range(NODES)) -> list[int | None]:
        return [self.height(i) for i in indexes]

    def wait(self, condition: Callable[[], bool], what: str, seconds: float = WAIT_S) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            assert time.monotonic() < deadline, f"{what}: not within {seconds} s, {self.heights()}"
            time.sleep(0.05)

    def export(self, index: int, to_height: int) -> list[bytes]:
        answer = self.client.get(f"{self.urls[index]}/v1/export?to_height={to_height}")
        assert answer.status_code == 200, answer.text
        return answer.content.splitlines()

    def hashes(self, index: int, to_height: int) -> list[str]:
        lines = self.export(index, to_height)[1:]
        assert len(lines) == to_height
        return [parse_block(json.loads(line)["block"], transaction_bytes_max=16384).block_hash()
                for line in lines]  # fmt: skip

    def assert_one_chain(self, indexes: list[int]) -> int:
        heights = [h for h in self.heights(indexes) if h is not None]
        top = min(heights)
        assert len({tuple(self.hashes(i, top)) for i in indexes}) == 1, "a fork"
        return top


@pytest.fixture
def consortium(tmp_path: Path) -> Iterator[Consortium]:
    running = Consortium(tmp_path)
    try:
        for index in range(NODES):
            running.start(index)
        running.wait(lambda: all(h is not None and h >= 1 for h in running.heights()), "start")
        yield running
    finally:
        running.stop_all()


def committed(consortium: Consortium, index: int, tx_id: str) -> bool:
    answer = consortium.client.get(f"{consortium.urls[index]}/v1/transactions/{tx_id}")
    body: dict[str, Any] = answer.json()
    return answer.status_code == 200 and body.get("status") == "committed"


@pytest.mark.long(32)
def test_four_processes_agree_through_a_crash_and_a_stall(
    consortium: Consortium, tmp_path: Path
) -> None:
    c = consortium
    # Transactions submitted to every validator in turn are committed on every one.
    for number, envelope in enumerate(WORLD.workload):
        answer = c.client.post(f"{c.urls[number % NODES]}/v1/transactions", json=envelope.to_json())
        assert answer.status_code in (200, 202), answer.text
    ids = [e.tx_id for e in WORLD.workload]
    c.wait(lambda: all(committed(c, i, t) for i in range(NODES) for t in ids), "commit all")
    c.assert_one_chain(list(range(NODES)))

    # SIGKILL one: the other three go on.
    c.kill(3)
    before = max(h or 0 for h in c.heights([0, 1, 2]))
    c.wait(lambda: all((h or 0) >= before + 2 for h in c.heights([0, 1, 2])), "go on without 3")
    # Restarted from its store and signed-message log, it catches up.
    c.start(3)
    target = max(h or 0 for h in c.heights([0, 1, 2]))
    c.wait(lambda: (c.height(3) or 0) >= target, "3 catches up")
    c.assert_one_chain(list(range(NODES)))
    # Its peers' logs said it was gone, and back, once each, with the time (the operator's
    # first clue; found by review: a peer that could not be reached was logged at debug).
    peer = f"peer {c.urls[3]}/v1/consensus/messages (consensus)"
    lines = (c.root / "node-0.log").read_text(errors="replace").splitlines()
    told = [line for line in lines if line.partition(": ")[2].startswith(peer)]
    said = [t.partition(": ")[2].removeprefix(peer).split(":")[0] for t in told]
    # (A first pair if node 0 sent before node 3 listened at the start.)
    assert said in ([" unreachable", " answers again"] * n for n in (1, 2)), told
    assert all(TIMED_LINE.match(line) for line in told), told

    # Two of four stopped: no quorum, so at most the height in flight is decided.
    c.signal(2, signal.SIGSTOP)
    c.signal(3, signal.SIGSTOP)
    time.sleep(0.5)
    stalled = max(h or 0 for h in c.heights([0, 1]))
    time.sleep(2.5)
    assert max(h or 0 for h in c.heights([0, 1])) <= stalled + 1, "progress without a quorum"
    c.signal(2, signal.SIGCONT)
    c.signal(3, signal.SIGCONT)
    c.wait(lambda: all((h or 0) >= stalled + 3 for h in c.heights()), "resume after SIGCONT")
    top = c.assert_one_chain(list(range(NODES)))

    # The offline auditor accepts every node's export.
    for index in range(NODES):
        exported = tmp_path / f"export-{index}.ndjson"
        exported.write_bytes(b"\n".join(c.export(index, top)) + b"\n")
        result = subprocess.run(
            [str(TANLIAN), "verify", "chain", "--export", str(exported),
             "--genesis", str(tmp_path / "genesis.json")],
            check=False, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr + result.stdout
        assert f"height {top}" in result.stdout
