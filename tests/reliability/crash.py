"""Crash harness (issue 7, item 1): a real single-validator node under continuous signed load,
SIGKILLed at random moments and restarted on the same data, again and again.

    .venv/bin/python -m tests.reliability.crash --kills 1000 [--seed N] [--data DIR]

CI runs it with 100 kills (tests/reliability/test_crash.py). What each cycle does:

1. start `tanlian node` (the real console script) on the data directory, on a free loopback
   port; about one start in ten is killed before it answers (a crash while it opens);
2. once it answers: every transaction that was in doubt at the last kill (sent, no
   "committed" answer) is looked up: committed, or unknown to the node (never half there);
   the acknowledged ones of the last cycle are read back committed where they were;
3. load: one thread per sender account signs transfers and retirements of 1 kg with its
   next nonce, alone or in arrays of up to three, and POSTs them with `?wait=commit`; a
   "committed" answer is an acknowledgement;
4. SIGKILL after a random time (0.02-0.6 s of load), wait for the process to end, and for
   its block writer process to let go of the data directory;
5. on the dead node's files: `PRAGMA integrity_check` is "ok"; every acknowledged
   transaction is stored exactly once, at the height and log index it was acknowledged
   with; each sender's committed nonces are exactly 1..n; the lots of the batch add up to
   what the committed transactions say (all-or-nothing: a transaction is in the state with
   all of its effects or not at all);
6. every `audit_every` kills, and after the last: `tanlian verify chain` on an export of the
   data directory (every hash, certificate, signature and rule, both roots recomputed).

A failure raises `CrashFailure` naming the kill, the seed and what broke. The node's output
goes to `node.log` in the data directory; a traceback there fails the run.

The workload (`Workload`: its accounts, signing, and the checks of a store's committed
transactions), `read_store`, `audit` and `wait_unlocked` are shared with the harness for one
validator of a consortium, tests.reliability.consortium_crash.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

from ledger.blocks import Validator
from ledger.encoding import canonical
from ledger.genesis import make_genesis_document
from ledger.limits import HTTP_IDLE_REUSE_SECONDS_MAX
from ledger.store import DATABASE_FILE, LOCK_FILE, DirectoryLock
from ledger.transactions import Envelope, Transaction, sign_transaction
from tests.consensus.test_processes import node_environment
from tests.factory import FAR_FUTURE, GENESIS_TIME, METHODOLOGIES, key

TANLIAN: Final = Path(sys.executable).parent / "tanlian"
CHAIN_ID: Final = "zibo-crash"
SENDERS: Final = 4
SENDER_UNITS: Final = 1_000_000  # issued to each sender; transfers and retirements move 1
BLOCK_INTERVAL_MS: Final = 50  # short blocks: more writes for a kill to land in
START_WAIT_S: Final = 60.0
REQUEST_TIMEOUT_S: Final = 10.0
IDLE_REUSE: Final = httpx.Limits(keepalive_expiry=HTTP_IDLE_REUSE_SECONDS_MAX)  # as our clients
LOAD_SECONDS: Final = (0.02, 0.6)
KILL_WHILE_STARTING: Final = 0.1  # the share of kills that land before the node answers
LOCK_WAIT_S: Final = 30.0


class CrashFailure(AssertionError):
    """A promise broken across a crash."""


@dataclass(frozen=True, slots=True)
class Sent:
    """A transaction the harness signed: whose, which nonce, what it does."""

    sender: int
    nonce: int
    kind: str  # "transfer" (1 kg to the next sender) or "retire" (1 kg)


@dataclass
class Ledger:
    """What the harness knows: every transaction it sent, those acknowledged (with where), and
    those in doubt (sent, no acknowledgement) since the last kill."""

    sent: dict[str, Sent] = field(default_factory=dict)
    acknowledged: dict[str, tuple[int, int]] = field(default_factory=dict)
    in_doubt: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Workload:
    """The harness's accounts and what it knows of their transactions, shared by the single
    node's harness and the consortium's (tests.reliability.consortium_crash): an authority,
    a certifier that issues SENDER_UNITS to each of SENDERS senders, each sender signing
    transfers and retirements of 1 kg with its next nonce; and the checks of a store's
    committed transactions against what was acknowledged."""

    def __init__(self, chain_id: str, name: str, failure: Callable[[str], CrashFailure]) -> None:
        self.chain_id = chain_id
        self.failure = failure
        self.authority = key(f"{name}/authority")
        self.certifier = key(f"{name}/certifier")
        self.senders = [key(f"{name}/sender-{i}") for i in range(SENDERS)]
        self.nonces = [0] * SENDERS  # the next nonce each sender signs is this + 1
        self.ledger = Ledger()
        self.issue_id: str | None = None  # a store without it holds no lots yet

    def genesis(self, validators: list[Validator], block_interval_ms: int) -> dict[str, Any]:
        return make_genesis_document(
            chain_id=self.chain_id,
            genesis_time=GENESIS_TIME,
            authority_name="Crash test authority",
            authority_keys=[self.authority.public_key_hex],
            authority_threshold=1,
            validators=validators,
            methodologies=METHODOLOGIES,
            block_interval_ms=block_interval_ms,
        )

    def sign(self, sender: int, kind: str) -> Envelope:
        self.nonces[sender] += 1
        nonce = self.nonces[sender]
        if kind == "transfer":
            to = self.senders[(sender + 1) % SENDERS].account_id
            payload: dict[str, Any] = {"to": to, "batch_id": "B-1", "quantity": 1}
        else:
            payload = {
                "batch_id": "B-1",
                "quantity": 1,
                "beneficiary": f"Sender {sender}",
                "purpose": "voluntary",
            }
        transaction = Transaction(
            chain_id=self.chain_id,
            type=kind,
            signer=self.senders[sender].account_id,
            nonce=nonce,
            payload=payload,
        )
        envelope = sign_transaction(transaction, [self.senders[sender]])
        with self.ledger.lock:
            self.ledger.sent[envelope.tx_id] = Sent(sender=sender, nonce=nonce, kind=kind)
        return envelope

    def set_up(self) -> list[Envelope]:
        """Accredit the certifier and issue SENDER_UNITS to each sender."""
        accredit = sign_transaction(
            Transaction(
                chain_id=self.chain_id,
                type="accredit_certifier",
                signer=self.authority.account_id,
                nonce=1,
                payload={
                    "certifier": self.certifier.account_id,
                    "name": "Crash test certifier",
                    "methodologies": ["household-electricity"],
                    "valid_from": 0,
                    "valid_until": FAR_FUTURE,
                },
            ),
            [self.authority],
        )
        issue = sign_transaction(
            Transaction(
                chain_id=self.chain_id,
                type="issue",
                signer=self.certifier.account_id,
                nonce=1,
                payload={
                    "methodology_id": "household-electricity",
                    "project_id": "meter-crash",
                    "period_start": "2026-01-01",
                    "period_end": "2026-02-01",
                    "evidence_sha256": "ab" * 32,
                    "recipients": [
                        {"account": sender.account_id, "quantity": SENDER_UNITS}
                        for sender in self.senders
                    ],
                },
            ),
            [self.certifier],
        )
        self.issue_id = issue.tx_id
        return [accredit, issue]

    def check(self, stored: Stored, *, up_to_head: bool = False) -> None:
        """A store's committed transactions: every acknowledged one exactly once where it
        was acknowledged (with `up_to_head`, only those of heights the store holds: a node
        still catching up), each sender's nonces 1..n, and the lots what the committed
        transactions say (all-or-nothing: a transaction is there with all of its effects or
        not at all)."""
        with self.ledger.lock:
            acknowledged = dict(self.ledger.acknowledged)
            sent = dict(self.ledger.sent)
        for tx_id, position in acknowledged.items():
            if up_to_head and position[0] > stored.head:
                continue
            if stored.committed.get(tx_id) != position:
                raise self.failure(
                    f"acknowledged {tx_id} at {position}, stored at "
                    f"{stored.committed.get(tx_id)} in {stored.name}"
                )
        nonces: list[list[int]] = [[] for _ in range(SENDERS)]
        issued = self.issue_id is None or self.issue_id in stored.committed
        expected: dict[tuple[str, str], int] = {
            (s.account_id, "circulating"): SENDER_UNITS for s in self.senders if issued
        }
        for tx_id in stored.committed:
            known = sent.get(tx_id)
            if known is None:
                continue
            nonces[known.sender].append(known.nonce)
            owner = self.senders[known.sender].account_id
            expected[(owner, "circulating")] -= 1
            if known.kind == "transfer":
                to = self.senders[(known.sender + 1) % SENDERS].account_id
                expected[(to, "circulating")] += 1
            else:
                expected[(owner, "retired")] = expected.get((owner, "retired"), 0) + 1
        for sender, used in enumerate(nonces):
            if sorted(used) != list(range(1, len(used) + 1)):
                raise self.failure(
                    f"sender {sender}'s committed nonces in {stored.name} are {sorted(used)}"
                )
        if stored.lots != expected:
            raise self.failure(
                f"the lots of {stored.name} are {stored.lots}, its committed transactions "
                f"say {expected}"
            )


@dataclass(frozen=True, slots=True)
class Stored:
    """What a data directory's database holds, read in one read transaction."""

    name: str
    head: int
    committed: dict[str, tuple[int, int]]  # tx_id -> (height, log index)
    lots: dict[tuple[str, str], int]  # (owner, status) -> kg
    hashes: list[str]  # block hashes, height 1 first
    evidence_heights: list[int]  # blocks whose evidence names `names_key` (read_store)


def read_store(
    data: Path,
    failure: Callable[[str], CrashFailure],
    *,
    name: str,
    names_key: str = "-",
    integrity: bool = True,
) -> Stored:
    """A store's committed transactions, lots and block hashes, once `PRAGMA integrity_check`
    says "ok" (unless not `integrity`; a transaction stored twice fails). One read
    transaction: a running node's store is seen at one height."""
    connection = sqlite3.connect(f"file:{data / DATABASE_FILE}?mode=ro", uri=True)
    try:
        checked = connection.execute("PRAGMA integrity_check").fetchone() if integrity else None
        if checked is not None and checked[0] != "ok":
            raise failure(f"PRAGMA integrity_check of {name}: {checked[0]}")
        connection.execute("BEGIN")
        rows = connection.execute("SELECT tx_id, height, log_index FROM transactions").fetchall()
        lots = connection.execute(
            "SELECT owner, status, SUM(quantity) FROM lots GROUP BY owner, status"
        ).fetchall()
        hashes = [h for (h,) in connection.execute("SELECT hash FROM blocks ORDER BY height")]
        evidence = [
            height
            for (height,) in connection.execute(
                "SELECT height FROM blocks WHERE instr(evidence, ?) > 0", (names_key,)
            )
        ]
        evidence += [
            -1
            for _ in connection.execute(
                "SELECT key FROM state WHERE key LIKE 'evidence/' || ? || '/%'", (names_key,)
            )
        ]
        connection.execute("COMMIT")
    finally:
        connection.close()
    committed = {tx_id: (height, index) for tx_id, height, index in rows}
    if len(committed) != len(rows):
        raise failure(f"a transaction is stored twice in {name}")
    return Stored(
        name=name,
        head=len(hashes),
        committed=committed,
        lots={(owner, status): quantity for owner, status, quantity in lots},
        hashes=hashes,
        evidence_heights=evidence,
    )


def audit(
    data: Path, genesis_file: Path, export: Path, failure: Callable[[str], CrashFailure]
) -> None:
    """`tanlian export --data` then `tanlian verify chain`, as an auditor would."""
    for arguments in (
        ["export", "--data", str(data), "--out", str(export)],
        ["verify", "chain", "--export", str(export), "--genesis", str(genesis_file)],
    ):
        result = subprocess.run(
            [str(TANLIAN), *arguments], capture_output=True, text=True, timeout=300, check=False
        )
        if result.returncode != 0:
            raise failure(f"tanlian {arguments[0]} of {data}: {result.stderr or result.stdout}")


def wait_unlocked(data: Path) -> None:
    """Until nothing of a killed node holds its data directory (its block writer finishes or
    rolls back the block it holds, then ends on its own)."""
    if not data.is_dir():
        return  # killed before it made its data directory
    lock = DirectoryLock(data / LOCK_FILE)
    lock.acquire(wait_seconds=LOCK_WAIT_S)
    lock.release()


class CrashHarness:
    def __init__(self, data: Path, *, seed: int, audit_every: int = 25) -> None:
        self.data = data
        self.seed = seed
        self.audit_every = audit_every
        self.rng = random.Random(seed)
        self.validator = key("crash/validator")
        self.workload = Workload(CHAIN_ID, "crash", self.failure)
        self.senders = self.workload.senders
        self.nonces = self.workload.nonces
        self.ledger = self.workload.ledger
        self.kills = 0
        self.audits = 0
        self.kills_in_flight = 0  # kills that found transactions sent and not yet answered
        self.committed_unanswered = 0  # of those, committed before the kill cut the answer
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(timeout=REQUEST_TIMEOUT_S, trust_env=False, limits=IDLE_REUSE)
        data.mkdir(parents=True, exist_ok=True)
        self.genesis_file = data / "genesis.json"
        self.key_file = data / "validator.pem"
        document = self.workload.genesis(
            [Validator(public_key=self.validator.public_key_hex, power=1, name="v")],
            BLOCK_INTERVAL_MS,
        )
        self.genesis_file.write_bytes(canonical(document))
        self.key_file.write_bytes(self.validator.to_pem())
        self.log_file = data / "node.log"

    # --- the node process ---------------------------------------------------------------

    def start(self) -> None:
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(TANLIAN), "node",
                    "--genesis", str(self.genesis_file),
                    "--data", str(self.data / "node"),
                    "--validator-key", str(self.key_file),
                    "--listen", f"127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=node_environment(measured=False),  # every life ends in a SIGKILL
            )  # fmt: skip

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_WAIT_S
        assert self.process is not None
        while True:
            if self.process.poll() is not None:
                raise self.failure(f"the node exited with {self.process.returncode} at start")
            try:
                if self.client.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise self.failure(f"no answer from the node within {START_WAIT_S} s")
            time.sleep(0.01)

    def kill(self) -> None:
        """SIGKILL the node, then wait until nothing of it holds the data directory (its
        block writer finishes or rolls back the block it holds, then ends on its own)."""
        process, self.process = self.process, None
        if process is None:
            return
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        self.kills += 1
        wait_unlocked(self.data / "node")

    def stop(self) -> None:
        """Stop whatever runs (the end of a run, or a failure): by its pid only."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        self.client.close()

    def failure(self, what: str) -> CrashFailure:
        return CrashFailure(f"after kill {self.kills} (seed {self.seed}): {what}")

    # --- transactions -------------------------------------------------------------------

    def sign(self, sender: int, kind: str) -> Envelope:
        return self.workload.sign(sender, kind)

    def set_up(self) -> None:
        """Accredit the certifier and issue SENDER_UNITS to each sender, committed."""
        self.start()
        self.wait_ready()
        answer = self.client.post(
            f"{self.url}/v1/transactions?wait=commit",
            json=[envelope.to_json() for envelope in self.workload.set_up()],
        )
        statuses = [item["status"] for item in answer.json()["results"]]
        if statuses != ["committed", "committed"]:
            raise self.failure(f"the set-up did not commit: {answer.text}")

    def load(self, stop: threading.Event) -> None:
        """One thread per sender, each submitting its own transactions in nonce order."""
        failures: list[BaseException] = []

        def sender(index: int, rng: random.Random) -> None:
            try:
                self._sender(index, rng, stop)
            except BaseException as error:  # reported by the main thread
                failures.append(error)

        threads = [
            threading.Thread(target=sender, args=(i, random.Random(self.rng.random())))
            for i in range(SENDERS)
        ]
        for thread in threads:
            thread.start()
        stop.wait(self.rng.uniform(*LOAD_SECONDS))
        self.kill()
        stop.set()
        for thread in threads:
            thread.join(timeout=REQUEST_TIMEOUT_S + 5)
            if thread.is_alive():
                raise self.failure("a load thread did not stop")
        if failures:
            raise failures[0]

    def _sender(self, sender: int, rng: random.Random, stop: threading.Event) -> None:
        with httpx.Client(timeout=REQUEST_TIMEOUT_S, trust_env=False, limits=IDLE_REUSE) as client:
            while not stop.is_set():
                envelopes = [
                    self.sign(sender, rng.choice(("transfer", "transfer", "retire")))
                    for _ in range(rng.choice((1, 1, 2, 3)))
                ]
                ids = [e.tx_id for e in envelopes]
                with self.ledger.lock:
                    self.ledger.in_doubt.update(ids)
                body: Any = (
                    envelopes[0].to_json()
                    if len(envelopes) == 1
                    else [e.to_json() for e in envelopes]
                )
                try:
                    answer = client.post(f"{self.url}/v1/transactions?wait=commit", json=body)
                except httpx.HTTPError:
                    return  # the node died: these stay in doubt
                results = answer.json()
                results = [results] if len(envelopes) == 1 else results.get("results", [])
                for tx_id, result in zip(ids, results, strict=False):
                    if result.get("status") == "committed":
                        with self.ledger.lock:
                            self.ledger.acknowledged[tx_id] = (
                                result["height"],
                                result["log_index"],
                            )
                            self.ledger.in_doubt.discard(tx_id)
                    elif result.get("status") == "rejected" or "code" in result:
                        # The harness signs only valid transactions: a rejection is a bug.
                        raise self.failure(f"transaction {tx_id} was rejected: {result}")
                if any(tx_id in self.ledger.in_doubt for tx_id in ids):
                    return  # pending at the wait's end: leave the rest for the next cycle

    # --- checks -------------------------------------------------------------------------

    def check_files(self) -> dict[str, tuple[int, int]]:
        """On the stopped node's files: integrity, acknowledged transactions exactly once
        where they were acknowledged, nonces 1..n, and the lots agreeing with the committed
        transactions (`Workload.check`). Returns every committed transaction's (height, log
        index)."""
        stored = read_store(self.data / "node", self.failure, name="the node")
        self.workload.check(stored)
        return stored.committed

    def settle_doubts(self, committed: dict[str, tuple[int, int]]) -> None:
        """After a kill: a transaction in doubt is committed (and now known) or absent; every
        sender signs on from its committed nonce (its absent ones are never resent)."""
        with self.ledger.lock:
            self.kills_in_flight += bool(self.ledger.in_doubt)
            for tx_id in self.ledger.in_doubt:
                if tx_id in committed:
                    self.ledger.acknowledged[tx_id] = committed[tx_id]
                    self.committed_unanswered += 1
            self.ledger.in_doubt.clear()
        for sender in range(SENDERS):
            used = [
                s.nonce
                for tx_id, s in self.ledger.sent.items()
                if s.sender == sender and tx_id in committed
            ]
            self.nonces[sender] = max(used, default=0)

    def check_served(self, recent: list[str]) -> None:
        """The restarted node serves the recent acknowledgements as committed, where they were."""
        for tx_id in recent:
            answer = self.client.get(f"{self.url}/v1/transactions/{tx_id}")
            body = answer.json()
            position = (body.get("height"), body.get("log_index"))
            if body.get("status") != "committed" or position != self.ledger.acknowledged[tx_id]:
                raise self.failure(f"the restarted node answers {body} for {tx_id}")

    def audit(self) -> None:
        """`tanlian export --data` then `tanlian verify chain`, as an auditor would."""
        audit(self.data / "node", self.genesis_file, self.data / "chain.ndjson", self.failure)
        self.audits += 1

    # --- the run --------------------------------------------------------------------------

    def run(self, kills: int, report: Callable[[str], None] = print) -> None:
        started = time.monotonic()
        try:
            self.set_up()
            self.kill()
            committed = self.check_files()
            recent: list[str] = []
            while self.kills < kills:
                self.settle_doubts(committed)
                self.start()
                if self.rng.random() < KILL_WHILE_STARTING:
                    time.sleep(self.rng.uniform(0, 1.0))
                    self.kill()
                else:
                    self.wait_ready()
                    self.check_served(recent)
                    before = set(self.ledger.acknowledged)
                    self.load(threading.Event())
                    recent = [t for t in self.ledger.acknowledged if t not in before][-20:]
                committed = self.check_files()
                if self.kills % self.audit_every == 0 or self.kills >= kills:
                    self.audit()
                if self.kills % 50 == 0:
                    report(self.summary(started))
            self.settle_doubts(committed)
            self.check_log()
        finally:
            self.stop()
        report(self.summary(started))

    def check_log(self) -> None:
        text = self.log_file.read_text(errors="replace")
        if "Traceback" in text:
            raise self.failure(f"a traceback in {self.log_file}")

    def summary(self, started: float) -> str:
        return (
            f"{self.kills} kills in {time.monotonic() - started:.0f} s: "
            f"{len(self.ledger.acknowledged)} transactions acknowledged and committed, "
            f"{len(self.ledger.sent)} sent; {self.kills_in_flight} kills with transactions in "
            f"flight, {self.committed_unanswered} transactions committed but unanswered; "
            f"{self.audits} full audits (seed {self.seed})"
        )


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--data", type=Path, default=None, help="default: a new temp directory")
    parser.add_argument("--audit-every", type=int, default=50)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    options = _arguments(argv)
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**32)
    if options.data is not None:
        CrashHarness(options.data, seed=seed, audit_every=options.audit_every).run(options.kills)
        return
    with tempfile.TemporaryDirectory(prefix="tanlian-crash-") as directory:
        CrashHarness(Path(directory), seed=seed, audit_every=options.audit_every).run(options.kills)


if __name__ == "__main__":
    main()
