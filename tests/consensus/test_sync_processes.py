"""Block sync and followers between real `tanlian` processes on 127.0.0.1.

Each test starts and stops exactly its own processes, by pid, on free ports, with bounded
waits: a follower of a `tanlian dev` node (and of a hostile node serving a forged certificate)
follows as blocks are made, serves identical hashes and a receipt that verifies, forwards a
submission, and keeps serving when the node it follows goes away; in a 4-validator consortium
a validator SIGKILLed while the chain moves on many heights catches up by block sync on
restart, and a follower of the consortium (following the killed validator first) follows
throughout with identical hashes.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.client import Client
from ledger.blocks import (
    compute_validators_hash,
    parse_block,
    parse_certificate,
    sign_certificate,
)
from ledger.encoding import canonical
from ledger.genesis import decode_genesis
from ledger.limits import SYNC_RETRY_MS_MAX
from ledger.receipts import verify_receipt
from ledger.store import Store
from tests.api.test_cli import TANLIAN, environment, free_port, tanlian
from tests.api.test_client_monitor import Hostile, _stop, hostile
from tests.consensus.test_node import WORLD
from tests.consensus.test_processes import NODES, Consortium, committed, consortium
from tests.factory import key

__all__ = ["consortium", "hostile"]  # fixtures
START_WAIT_S = 60  # a process's first answer on /healthz (a loaded machine)
WAIT_S = 60


@dataclass(frozen=True, slots=True)
class Process:
    url: str
    log: Path
    process: subprocess.Popen[bytes]

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def running(log: Path, *arguments: str, port: int) -> Iterator[Process]:
    """A real `tanlian` process serving 127.0.0.1:`port` until the block ends (waited for on
    /healthz); stopped by its pid, and its output must hold no traceback."""
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(TANLIAN), *arguments], stdout=output, stderr=subprocess.STDOUT, env=environment()
        )
    running = Process(url=url, log=log, process=process)
    try:
        wait(lambda: answers(url, running), f"{log.stem} answers", START_WAIT_S)
        yield running
    finally:
        _stop(process)
    assert "Traceback" not in running.output(), running.output()


def answers(url: str, process: Process) -> bool:
    assert process.process.poll() is None, process.output()
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait(condition: Callable[[], bool], what: str, seconds: float = WAIT_S) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.1)


def height(url: str) -> int:
    try:
        value: int = httpx.get(f"{url}/healthz", timeout=2).json()["height"]
    except httpx.HTTPError:
        return -1
    return value


def hashes(url: str, top: int) -> list[str]:
    with Client(url) as client:
        lines = list(client.export_lines(1, top))[1:]
    assert len(lines) == top
    return [
        parse_block(json.loads(line)["block"], transaction_bytes_max=1 << 20).block_hash()
        for line in lines
    ]


def verified_receipt(url: str, retirement_id: str, genesis_file: Path) -> None:
    genesis = decode_genesis(genesis_file.read_bytes())
    with Client(url) as client:
        receipt = client.receipt(retirement_id)
    verify_receipt(
        receipt,
        validators_hash=compute_validators_hash(genesis.validators),
        genesis_hash=genesis.genesis_hash(),
    )


def forged_export(data: Path, at: int) -> tuple[dict[str, Any], bytes]:
    """The demo chain's checkpoint and export, the certificate of height `at` forged."""
    store = Store.open(data)
    try:
        head = store.head_height
        checkpoint = store.checkpoint(head)
        lines = list(store.export_lines(1, head))
    finally:
        store.close()
    value = json.loads(lines[at])
    certificate = parse_certificate(value["certificate"])
    forged = sign_certificate(
        chain_id=certificate.chain_id,
        height=at,
        round=0,
        block_hash=certificate.block_hash,
        keys=[key("mallory")],
    )
    lines[at] = canonical({**value, "certificate": forged.to_json()}) + b"\n"
    return checkpoint, b"".join(lines)


def test_a_follower_of_a_dev_node_follows_refuses_forgeries_and_outlives_it(
    tmp_path: Path, hostile: Hostile
) -> None:
    data = tmp_path / "city"
    built = tanlian("demo", "--data", data, "--transactions", 50)
    assert built.returncode == 0, built.stderr
    genesis_file = data / "genesis.json"
    # A hostile node claims the demo chain, with a forged certificate at height 3.
    checkpoint, forged = forged_export(data, at=3)
    hostile.serve("/v1/checkpoint", checkpoint)
    hostile.serve("/v1/export", forged)
    dev_port, follower_port = free_port(), free_port()
    dev_url = f"http://127.0.0.1:{dev_port}"
    with running(
        tmp_path / "follower.log",
        "node", "--genesis", str(genesis_file), "--data", str(tmp_path / "follower"),
        "--follow", hostile.url, "--follow", dev_url,
        "--listen", f"127.0.0.1:{follower_port}",
        port=follower_port,
    ) as follower:  # fmt: skip
        with running(
            tmp_path / "dev.log", "dev", "--data", str(data), "--port", str(dev_port),
            port=dev_port,
        ):  # fmt: skip
            # It follows as blocks are made (the dev node's households keep retiring).
            target = height(dev_url) + 2
            wait(lambda: height(follower.url) >= target, "the follower follows")
            top = height(follower.url)
            assert hashes(follower.url, top) == hashes(dev_url, top)
            refusals = [
                line for line in follower.output().splitlines() if "block sync: refused" in line
            ]
            assert any(
                hostile.url in line and "rule certificate at height 3" in line for line in refusals
            ), follower.output()
            # A receipt served by the follower verifies against the genesis alone.
            listed = httpx.get(f"{follower.url}/v1/retirements", params={"limit": 1}).json()
            verified_receipt(follower.url, listed["items"][0]["retirement_id"], genesis_file)
            # A submission to the follower is decided by the node it follows.
            issued = tanlian(
                "tx", "issue", "--node", follower.url,
                "--key", data / "keys" / "certifier-zibo-quality-centre.pem",
                "--field", "methodology_id=household-electricity",
                "--field", "project_id=meter/follower-test",
                "--field", "period_start=2026-10-01", "--field", "period_end=2026-11-01",
                "--field", "evidence_sha256=" + "cd" * 32,
                "--field", f'recipients=[{{"account": "{key("alice").account_id}", '
                '"quantity": 250}]',
            )  # fmt: skip
            assert issued.returncode == 0, issued.stderr
            found = re.search(r"tx_id\s+([0-9a-f]{64})", issued.stdout)
            assert found and "committed" in issued.stdout, issued.stdout
            tx_id = found.group(1)
            wait(
                lambda: httpx.get(f"{follower.url}/v1/transactions/{tx_id}").status_code == 200,
                "the follower takes the forwarded transaction's block",
            )
        gone = datetime.now(UTC).replace(tzinfo=None)  # as the log's times: UTC
        # The node it follows is gone: it keeps serving, and says so to a submission (the
        # hostile node, still there, answers it badly).
        served = httpx.get(f"{follower.url}/v1/checkpoint")
        assert served.status_code == 200 and served.json()["header"]["height"] >= top
        answer = httpx.post(f"{follower.url}/v1/transactions", content=b"{}")
        assert answer.status_code == 502 and answer.json()["code"] == "bad_upstream"
        assert f"cannot reach {dev_url}" in answer.json()["detail"]

        # And it asks again, backing off, saying why each time with the time it did (it was
        # refused before the dev node started, too: those lines are earlier).
        def unreachable() -> list[tuple[datetime, int]]:
            return [
                (at, int(found.group(1)))
                for line in follower.output().splitlines()
                if "(node_unreachable)" in line
                and (found := re.search(rf"refused {re.escape(dev_url)}\S* for (\d+) ms", line))
                and (at := datetime.strptime(line[:23], "%Y-%m-%dT%H:%M:%S.%f")) >= gone
            ]

        wait(lambda: len(unreachable()) >= 2, "the node that is gone asked again, and refused")
        told = unreachable()
        penalties = [ms for _, ms in told]
        assert penalties == sorted(penalties) and penalties[-1] <= SYNC_RETRY_MS_MAX, told
        for (earlier, penalty), (later, _) in itertools.pairwise(told):
            assert (later - earlier).total_seconds() >= penalty / 1000 - 0.05, told
        assert height(follower.url) >= top


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, text
    return float(found.group(1))


@pytest.mark.long(41)
def test_a_killed_validator_catches_up_by_block_sync_and_a_follower_follows(
    consortium: Consortium,
) -> None:
    c = consortium
    port = free_port()
    genesis = c.root / "genesis.json"
    with running(
        c.root / "follower.log",
        "node", "--genesis", str(genesis), "--data", str(c.root / "follower"),
        "--follow", c.urls[3], "--follow", c.urls[0], "--listen", f"127.0.0.1:{port}",
        port=port,
    ) as follower:  # fmt: skip
        for url in c.urls:  # every pool holds them: whoever proposes next includes them
            answer = c.client.post(
                f"{url}/v1/transactions", json=[e.to_json() for e in WORLD.workload]
            )
            assert answer.status_code in (200, 202), answer.text
        ids = [e.tx_id for e in WORLD.workload]
        c.wait(lambda: all(committed(c, i, t) for i in range(NODES) for t in ids), "commit all")

        # SIGKILL validator 3 (the one the follower asks first); the chain moves on many heights.
        c.kill(3)
        before = max(h or 0 for h in c.heights([0, 1, 2]))
        c.wait(lambda: all((h or 0) >= before + 20 for h in c.heights([0, 1, 2])), "go on", 120)
        wait(lambda: height(follower.url) >= before + 20, "the follower follows another node")

        # Restarted, it catches up by block sync, not one height per round trip.
        c.start(3)
        target = max(h or 0 for h in c.heights([0, 1, 2]))
        c.wait(lambda: (c.height(3) or 0) >= target, "3 catches up")
        assert metric(c.urls[3], "tanlian_blocks_synced") >= target - before - 5
        assert metric(c.urls[3], "tanlian_sync_refusals") == 0
        top = c.assert_one_chain(list(range(NODES)))
        wait(lambda: height(follower.url) >= top, "the follower reaches the validators")
        assert hashes(follower.url, top) == hashes(c.urls[0], top)
        retirement = next(e.tx_id for e in WORLD.workload if e.tx.type == "retire")
        verified_receipt(follower.url, retirement, genesis)
        assert "node_unreachable" in follower.output()  # 3 was gone a while
