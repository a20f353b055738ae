"""Crash harness for one validator of a running 4-validator consortium (issue 7, item 1): four
real `tanlian node` validators on loopback under continuous signed load, validator 3 (the
victim) SIGKILLed at random moments and restarted on the same data directory, again and again.

    .venv/bin/python -m tests.reliability.consortium_crash --kills 1000 [--seed N] [--data DIR]

CI runs it with 100 kills (tests/reliability/test_consortium_crash.py). It shares its
workload, store checks and audit with the single node's harness (tests.reliability.crash)
and its processes with tests.consensus.test_processes (`Consortium`: free ports, stopped by
pid). What it does:

1. load, throughout: one thread per sender account signs transfers and retirements of 1 kg
   with its next nonce, alone or in arrays of up to three, and POSTs them with
   `?wait=commit` to a validator chosen at random (the victim, when it answers, half the
   time); a
   "committed" answer, from any validator, is an acknowledgement with its height and log
   index. An answer cut by a kill, or still pending, is resubmitted (the same signed
   bytes, as a client would) to another validator until it is answered;
2. each cycle starts the victim and SIGKILLs it: a third of the kills 0.05-1 s after its
   start (while it opens its store and log), the others 0-0.4 s after it answers (while it
   catches up by block sync or writes a decided block, votes, answers submissions, half of
   which are sent to it first); then waits for its block writer to let go of the data
   directory. No cycle waits for it to catch up;
3. after each kill, on the victim's files: `PRAGMA integrity_check` is "ok"; every
   acknowledged transaction of a height it holds is stored exactly once, at that height and
   log index; each sender's nonces are exactly 1..n and the lots add up to what the
   committed transactions say (all-or-nothing); its block hashes are those of validator 0;
   its signed-message log holds no message for a (height, round, type) that an earlier
   reading of it held with other bytes (equivocation across restarts);
4. every `check_every` kills, and at the end: the victim is started and waited for until it
   has caught up with its peers (then killed at a random moment as usual), and all four
   stores are checked as in 3, hashes equal, and no block or state entry of any of them
   holds evidence naming the victim;
5. at the end: the load stops (every transaction sent is then acknowledged), the victim
   catches up once more, every acknowledged transaction is on every node exactly once where
   it was acknowledged, and `tanlian verify chain` accepts each node's export.

A failure raises `CrashFailure` naming the kill, the seed and what broke; each node's output
is in `node-<i>.log` beside its data directory, and a traceback in any of them fails the run.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import httpx

from consensus.messages import Proposal, decode_message
from consensus.wal import DECIDED_HEIGHT_FIELD, WAL_FILE_NAME, slot_of
from ledger.blocks import Validator
from ledger.errors import LedgerError
from ledger.evidence import Vote
from ledger.limits import HTTP_IDLE_REUSE_SECONDS_MAX, TRANSACTION_BYTES_MAX_DEFAULT
from ledger.store import DATABASE_FILE
from ledger.transactions import Envelope
from tests.consensus.test_node import WORLD
from tests.consensus.test_processes import NODES, Consortium
from tests.reliability.crash import (
    SENDERS,
    CrashFailure,
    Stored,
    Workload,
    audit,
    read_store,
    wait_unlocked,
)

CHAIN_ID: Final = "zibo-consortium-crash"
VICTIM: Final = 3
PEERS: Final = tuple(i for i in range(NODES) if i != VICTIM)
BLOCK_INTERVAL_MS: Final = 50  # short blocks: more writes for a kill to land in
KILL_WHILE_STARTING: Final = 0.35  # the share of kills that land before the victim answers
KILL_STARTING_S: Final = (0.05, 1.0)  # those: after its start (it answers after ~1-2 s)
KILL_RUNNING_S: Final = (0.0, 0.4)  # the others: after it answers (or caught up)
VICTIM_FIRST: Final = 0.5  # the share of submissions sent to the victim first
CATCH_UP_WAIT_S: Final = 90.0
REQUEST_TIMEOUT_S: Final = 20.0  # above the node's 10 s commit wait
IDLE_REUSE: Final = httpx.Limits(keepalive_expiry=HTTP_IDLE_REUSE_SECONDS_MAX)  # as our clients
SUBMISSIONS_MAX: Final = 20  # of one array, before the harness gives up on it


class ConsortiumCrashHarness:
    def __init__(self, root: Path, *, seed: int, check_every: int = 25) -> None:
        self.root = root
        self.seed = seed
        self.check_every = check_every
        self.rng = random.Random(seed)
        self.workload = Workload(CHAIN_ID, "consortium-crash", self.failure)
        self.victim_key = WORLD.keys[VICTIM].public_key_hex
        root.mkdir(parents=True, exist_ok=True)
        validators = [
            Validator(public_key=k.public_key_hex, power=1, name=f"validator-{i}")
            for i, k in enumerate(WORLD.keys)
        ]
        self.consortium = Consortium(root, self.workload.genesis(validators, BLOCK_INTERVAL_MS))
        self.kills = 0
        self.checks = 0
        self.audits = 0
        self.kills_while_starting = 0  # before it said it was running
        self.kills_after_storing = 0  # lives in which it stored blocks (synced or decided)
        self.kills_in_flight = 0  # with submissions to it not yet answered
        self.answers_cut = 0  # submissions to the victim whose answer a kill cut
        self.acknowledged_by_victim = 0
        self.resubmissions = 0
        self.victim_head = 0
        self.signed: dict[tuple[int, int, str], bytes] = {}  # the victim's, across restarts
        self._lock = threading.Lock()
        self._in_flight = 0  # submissions to the victim under way
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._failures: list[BaseException] = []

    def failure(self, what: str) -> CrashFailure:
        return CrashFailure(f"after kill {self.kills} (seed {self.seed}): {what}")

    def data(self, index: int) -> Path:
        return self.root / f"data-{index}"

    def log_file(self, index: int) -> Path:
        return self.root / f"node-{index}.log"

    # --- the victim ---------------------------------------------------------------------

    def start_victim(self) -> int:
        """Start the victim; returns where its log's output of this life begins."""
        log = self.log_file(VICTIM)
        offset = log.stat().st_size if log.exists() else 0
        self.consortium.start(VICTIM, measured=False)  # killed: its coverage would be lost
        return offset

    def live_for(self, seconds: float) -> None:
        """Let the victim run `seconds`; it must not end on its own meanwhile."""
        deadline = time.monotonic() + seconds
        process = self.consortium.processes[VICTIM]
        while (left := deadline - time.monotonic()) > 0:
            if process.poll() is not None:
                tail = self.log_file(VICTIM).read_text(errors="replace")[-3000:]
                raise self.failure(f"the victim exited with {process.returncode}: {tail}")
            time.sleep(min(left, 0.02))

    def kill_victim(self, offset: int) -> None:
        with self._lock:
            self.kills_in_flight += self._in_flight > 0
        self.consortium.kill(VICTIM)  # SIGKILL, by its pid
        self.kills += 1
        wait_unlocked(self.data(VICTIM))
        with self.log_file(VICTIM).open("rb") as log:
            log.seek(offset)
            life = log.read()
        self.kills_while_starting += b"running on" not in life

    def wait_victim_acknowledges(self) -> None:
        """Let the victim answer at least one more transaction committed before this kill
        (at most CATCH_UP_WAIT_S): on a busy machine the short lives of the other cycles may
        never let it, and its own acknowledgements are the ones a kill must not lose."""
        with self._lock:
            before = self.acknowledged_by_victim
        deadline = time.monotonic() + CATCH_UP_WAIT_S
        while time.monotonic() < deadline:
            with self._lock:
                if self.acknowledged_by_victim > before:
                    return
            self.live_for(0.05)

    def wait_answers(self) -> None:
        deadline = time.monotonic() + CATCH_UP_WAIT_S
        while self.consortium.height(VICTIM) is None:
            self.live_for(0.02)
            if time.monotonic() > deadline:
                raise self.failure("the victim did not answer")

    def wait_caught_up(self) -> None:
        c = self.consortium
        self.wait_answers()
        deadline = time.monotonic() + CATCH_UP_WAIT_S
        target = max(h or 0 for h in c.heights(list(PEERS)))
        while (c.height(VICTIM) or 0) < target:
            self.live_for(0.05)
            if time.monotonic() > deadline:
                raise self.failure(f"the victim did not catch up to {target}: {c.heights()}")

    # --- checks -------------------------------------------------------------------------

    def read(self, index: int, *, integrity: bool = True) -> Stored:
        return read_store(
            self.data(index),
            self.failure,
            name=f"validator {index}",
            names_key=self.victim_key,
            integrity=integrity,
        )

    def check_victim(self) -> None:
        """Step 3 of the module docstring, on the stopped victim's files."""
        if not (self.data(VICTIM) / DATABASE_FILE).exists():
            return  # killed before it made its store (it is made whole, or not at all)
        stored = self.read(VICTIM)
        self.kills_after_storing += stored.head > self.victim_head
        self.victim_head = stored.head
        self.workload.check(stored, up_to_head=True)
        self.check_same_chain([stored, self.read(0, integrity=False)])  # its own, at checks
        self.check_signed_log()

    def check_same_chain(self, stores: list[Stored]) -> None:
        top = min(s.head for s in stores)
        for stored in stores[1:]:
            if stored.hashes[:top] != stores[0].hashes[:top]:
                first = next(h for h in range(top) if stored.hashes[h] != stores[0].hashes[h])
                raise self.failure(f"{stored.name} and {stores[0].name} differ at {first + 1}")

    def check_signed_log(self) -> None:
        """No slot the victim's log held with some bytes is ever held with others."""
        path = self.data(VICTIM) / WAL_FILE_NAME
        data = path.read_bytes() if path.exists() else b""
        lines = data.split(b"\n")[:-1]  # a torn last line was never sent
        for line in lines:
            if line.startswith(b'{"' + DECIDED_HEIGHT_FIELD.encode()):
                continue
            try:
                message = decode_message(line, transaction_bytes_max=TRANSACTION_BYTES_MAX_DEFAULT)
            except LedgerError as error:
                raise self.failure(f"the victim's signed-message log: {error.message}") from error
            if not isinstance(message, (Vote, Proposal)):
                raise self.failure("the victim's signed-message log holds a decision")
            if isinstance(message, Vote) and message.public_key != self.victim_key:
                continue  # another validator's prevote, kept with a lock's block
            slot = slot_of(message)
            if self.signed.setdefault(slot, line) != line:
                raise self.failure(f"the victim signed two different messages for {slot}")

    def check_all(self, *, final: bool) -> list[Stored]:
        """Step 4 (and 5 when `final`): all four stores, the victim caught up."""
        stores = [self.read(index) for index in range(NODES)]
        for stored in stores:
            self.workload.check(stored, up_to_head=not final)
            if stored.evidence_heights:
                raise self.failure(
                    f"{stored.name} holds evidence naming the victim: {stored.evidence_heights}"
                )
        self.check_same_chain(stores)
        self.check_signed_log()
        self.checks += 1
        return stores

    # --- load ---------------------------------------------------------------------------

    def start_load(self) -> None:
        for index in range(SENDERS):
            rng = random.Random(self.rng.random())
            thread = threading.Thread(target=self._sender, args=(index, rng), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop_load(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=SUBMISSIONS_MAX * REQUEST_TIMEOUT_S)
            if thread.is_alive():
                raise self.failure("a load thread did not stop")
        self._threads.clear()
        if self._failures:
            raise self._failures[0]

    def _sender(self, sender: int, rng: random.Random) -> None:
        try:
            with httpx.Client(
                timeout=REQUEST_TIMEOUT_S, trust_env=False, limits=IDLE_REUSE
            ) as client:
                while not self._stop.is_set():
                    envelopes = [
                        self.workload.sign(sender, rng.choice(("transfer", "transfer", "retire")))
                        for _ in range(rng.choice((1, 1, 2, 3)))
                    ]
                    self._deliver(client, rng, envelopes)
        except BaseException as error:  # reported by the main thread
            self._failures.append(error)

    def _deliver(self, client: httpx.Client, rng: random.Random, envelopes: list[Envelope]) -> None:
        """Submit until every envelope is answered committed: first to any validator, then
        (an answer cut, or pending) again to a peer of the victim."""
        waiting = {e.tx_id for e in envelopes}
        body: Any = [e.to_json() for e in envelopes]
        target = VICTIM if rng.random() < VICTIM_FIRST else rng.choice(PEERS)
        for _ in range(SUBMISSIONS_MAX):
            url = self.consortium.urls[target]
            with self._lock:
                self._in_flight += target == VICTIM
            results: list[dict[str, Any]] | None = None
            try:
                answer = client.post(f"{url}/v1/transactions?wait=commit", json=body)
                results = answer.json()["results"]
            except httpx.ConnectError:
                pass  # not delivered: the victim is down
            except (httpx.HTTPError, ValueError, KeyError) as error:
                if target != VICTIM and not isinstance(error, httpx.TimeoutException):
                    raise self.failure(f"validator {target} answered {error!r}") from error
                with self._lock:
                    self.answers_cut += target == VICTIM
            finally:
                with self._lock:
                    self._in_flight -= target == VICTIM
            for envelope, result in zip(envelopes, results or [], strict=results is not None):
                if result.get("status") == "committed":
                    self._acknowledge(envelope.tx_id, result, by_victim=target == VICTIM)
                    waiting.discard(envelope.tx_id)
                elif result.get("status") == "rejected":
                    # The harness signs only valid transactions: a rejection is a bug.
                    raise self.failure(f"transaction {envelope.tx_id} was rejected: {result}")
            if not waiting:
                return
            target = rng.choice(PEERS)
            with self._lock:
                self.resubmissions += 1
        raise self.failure(f"{sorted(waiting)} not committed after {SUBMISSIONS_MAX} submissions")

    def _acknowledge(self, tx_id: str, result: dict[str, Any], *, by_victim: bool) -> None:
        position = (result["height"], result["log_index"])
        with self.workload.ledger.lock:
            known = self.workload.ledger.acknowledged.setdefault(tx_id, position)
        if known != position:
            raise self.failure(f"{tx_id} acknowledged at {known}, then at {position}")
        with self._lock:
            self.acknowledged_by_victim += by_victim

    # --- the run --------------------------------------------------------------------------

    def set_up(self) -> None:
        c = self.consortium
        for index in PEERS:  # the victim starts in the first cycle
            c.start(index)
        c.wait(lambda: all((h or 0) >= 1 for h in c.heights(list(PEERS))), "start", 60)
        answer = c.client.post(
            f"{c.urls[0]}/v1/transactions?wait=commit",
            json=[envelope.to_json() for envelope in self.workload.set_up()],
            timeout=REQUEST_TIMEOUT_S,
        )
        statuses = [item["status"] for item in answer.json()["results"]]
        if statuses != ["committed", "committed"]:
            raise self.failure(f"the set-up did not commit: {answer.text}")

    def run(self, kills: int, report: Callable[[str], None] = print) -> None:
        started = time.monotonic()
        try:
            self.set_up()
            self.start_load()
            while self.kills < kills:
                offset = self.start_victim()
                if (self.kills + 1) % self.check_every == 0:
                    self.wait_caught_up()
                    self.check_all(final=False)
                    self.wait_victim_acknowledges()
                    self.live_for(self.rng.uniform(*KILL_RUNNING_S))
                elif self.rng.random() < KILL_WHILE_STARTING:
                    self.live_for(self.rng.uniform(*KILL_STARTING_S))
                else:
                    self.wait_answers()
                    self.live_for(self.rng.uniform(*KILL_RUNNING_S))
                self.kill_victim(offset)
                self.check_victim()
                if self._failures:
                    raise self._failures[0]
                if self.kills % 50 == 0:
                    report(self.summary(started))
            self.stop_load()
            self.start_victim()
            self.wait_caught_up()
            self.finish()
        finally:
            self._stop.set()
            self.consortium.stop_all()
        self.check_logs()
        for index in range(NODES):
            audit(
                self.data(index),
                self.root / "genesis.json",
                self.root / f"export-{index}.ndjson",
                self.failure,
            )
            self.audits += 1
        report(self.summary(started))

    def finish(self) -> None:
        """Step 5: every acknowledged transaction on every node, once all hold its height."""
        c = self.consortium
        top = max((h for h, _ in self.workload.ledger.acknowledged.values()), default=0)
        c.wait(lambda: all((h or 0) >= top for h in c.heights()), "all reach the last ack", 60)
        self.check_all(final=True)
        sent = set(self.workload.ledger.sent)
        if sent - set(self.workload.ledger.acknowledged):
            raise self.failure("a transaction sent was never acknowledged")

    def check_logs(self) -> None:
        for index in range(NODES):
            if "Traceback" in self.log_file(index).read_text(errors="replace"):
                raise self.failure(f"a traceback in {self.log_file(index)}")

    def summary(self, started: float) -> str:
        return (
            f"{self.kills} kills of validator {VICTIM} of {NODES} in "
            f"{time.monotonic() - started:.0f} s: {self.kills_while_starting} while it started, "
            f"{self.kills_after_storing} after it stored blocks, {self.kills_in_flight} with "
            f"submissions to it in flight ({self.answers_cut} answers cut); "
            f"{len(self.workload.ledger.acknowledged)} transactions acknowledged "
            f"({self.acknowledged_by_victim} by the victim), {self.resubmissions} "
            f"resubmissions; {self.checks} full checks, {self.audits} audits (seed {self.seed})"
        )


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--data", type=Path, default=None, help="default: a new temp directory")
    parser.add_argument("--check-every", type=int, default=50)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    options = _arguments(argv)
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**32)
    if options.data is not None:
        harness = ConsortiumCrashHarness(options.data, seed=seed, check_every=options.check_every)
        harness.run(options.kills)
        return
    with tempfile.TemporaryDirectory(prefix="tanlian-consortium-crash-") as directory:
        harness = ConsortiumCrashHarness(
            Path(directory), seed=seed, check_every=options.check_every
        )
        harness.run(options.kills)


if __name__ == "__main__":
    main()
