"""Ingest benchmark (issue 2): signed transactions through the pool and the single-validator
producer into SQLite, with the log root and the state root maintained on every block.

    .venv/bin/python bench/ingest.py [--transactions 20000] [--accounts 1000] [--retire-share 0.3]
    .venv/bin/python bench/ingest.py --transactions 100000 --stream      # peak RSS

After an issuance for every 100 transactions, the workload moves credits: transfers, and
retirements for --retire-share of the moves. Prints committed tx/s beside the raw
single-core Ed25519 verification rate of the fastest installed implementation, measured in
the same run, and their ratio; the share of block time spent keeping both roots; and the
peak RSS of the process (and, apart, of its signature worker process).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import random
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nacl.bindings
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from consensus.pool import Pool
from consensus.producer import PreparedBlock, SoloProducer, tune_garbage_collector
from consensus.verifier import SignatureWorker
from ledger import merkle, native, state_tree
from ledger.blocks import Validator
from ledger.crypto import PrivateKey
from ledger.genesis import make_genesis_document, parse_genesis
from ledger.store import Store
from ledger.transactions import Envelope, Transaction, sign_transaction

CHAIN_ID = "bench"
CHUNK = 1000  # transactions a client submits at once
METHODOLOGY = "household-electricity"
RETIRE_SHARE = 0.3  # of the moves after the issuances; the rest are transfers


def raw_verify_rate(seconds: float = 1.0) -> tuple[float, str]:
    """Single-core Ed25519 verifications per second: libsodium and OpenSSL, the faster."""
    message = os.urandom(300)
    seed = os.urandom(32)
    key = PrivateKey(seed=seed)
    signature = key.sign(message)
    rates = {}
    start = time.perf_counter()
    count = 0
    while time.perf_counter() - start < seconds:
        for _ in range(200):
            nacl.bindings.crypto_sign_open(signature + message, key.public_key)
        count += 200
    rates["libsodium"] = count / (time.perf_counter() - start)
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    start = time.perf_counter()
    count = 0
    while time.perf_counter() - start < seconds:
        for _ in range(200):
            public.verify(signature, message)
        count += 200
    rates["openssl"] = count / (time.perf_counter() - start)
    best = max(rates, key=lambda name: rates[name])
    return rates[best], best


def make_workload(
    total: int, accounts: int, seed: int, *, retire_share: float = RETIRE_SHARE
) -> tuple[dict[str, Any], Iterator[Envelope], PrivateKey]:
    """The genesis, the signed transactions (made lazily, in order) and the validator key:
    an issuance for every 100, then transfers and, `retire_share` of them, retirements."""
    rng = random.Random(seed)
    authority = PrivateKey(seed=hashlib.sha256(b"bench-authority").digest())
    validator_key = PrivateKey(seed=hashlib.sha256(b"bench-validator").digest())
    certifier = PrivateKey(seed=hashlib.sha256(b"bench-certifier").digest())
    holders = [
        PrivateKey(seed=hashlib.sha256(f"bench-{i}".encode()).digest()) for i in range(accounts)
    ]
    validator = Validator(public_key=validator_key.public_key_hex, power=1, name="city")
    genesis = make_genesis_document(
        chain_id=CHAIN_ID,
        genesis_time=1_700_000_000_000,
        authority_name="authority",
        authority_keys=[authority.public_key_hex],
        authority_threshold=1,
        validators=[validator],
        methodologies=[
            {"methodology_id": METHODOLOGY, "name": "Household", "document_sha256": "00" * 32}
        ],
    )
    nonces: dict[str, int] = {}

    def tx(key: PrivateKey, kind: str, payload: dict[str, Any]) -> Envelope:
        nonces[key.account_id] = nonces.get(key.account_id, 0) + 1
        t = Transaction(
            chain_id=CHAIN_ID,
            type=kind,
            signer=key.account_id,
            nonce=nonces[key.account_id],
            payload=payload,
        )
        return sign_transaction(t, [key])

    def generate() -> Iterator[Envelope]:
        yield from _transactions(tx, rng, authority, certifier, holders, total, retire_share)

    return genesis, generate(), validator_key


def _transactions(  # noqa: PLR0917
    tx: Callable[[PrivateKey, str, dict[str, Any]], Envelope],
    rng: random.Random,
    authority: PrivateKey,
    certifier: PrivateKey,
    holders: list[PrivateKey],
    total: int,
    retire_share: float,
) -> Iterator[Envelope]:
    accounts = len(holders)
    count = 1
    yield tx(
        authority,
        "accredit_certifier",
        {
            "certifier": certifier.account_id,
            "name": "certifier",
            "methodologies": [METHODOLOGY],
            "valid_from": 0,
            "valid_until": 4_000_000_000_000,
        },
    )
    issues = max(1, total // 100)
    per_issue = 50
    holdings: list[list[str]] = [[] for _ in range(accounts)]
    for n in range(issues):
        chosen = rng.sample(range(accounts), per_issue)
        count += 1
        yield (
            tx(
                certifier,
                "issue",
                {
                    "methodology_id": METHODOLOGY,
                    "project_id": f"meter-{n}",
                    "period_start": "2026-01-01",
                    "period_end": "2026-02-01",
                    "evidence_sha256": hashlib.sha256(str(n).encode()).hexdigest(),
                    "recipients": [
                        {"account": holders[i].account_id, "quantity": 10_000} for i in chosen
                    ],
                },
            )
        )
        for i in chosen:
            holdings[i].append(f"B-{n + 1}")
    funded = [i for i in range(accounts) if holdings[i]]
    while count < total:
        count += 1
        i = rng.choice(funded)
        batch = rng.choice(holdings[i])
        if rng.random() < 1 - retire_share:
            j = rng.randrange(accounts)
            while j == i:
                j = rng.randrange(accounts)
            yield (
                tx(
                    holders[i],
                    "transfer",
                    {"to": holders[j].account_id, "batch_id": batch, "quantity": rng.randint(1, 5)},
                )
            )
        else:
            yield (
                tx(
                    holders[i],
                    "retire",
                    {
                        "batch_id": batch,
                        "quantity": rng.randint(1, 3),
                        "beneficiary": f"household {i}",
                        "purpose": "voluntary",
                    },
                )
            )


class Timer:
    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, owner: object, name: str) -> None:
        original = getattr(owner, name)

        def timed(*args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        setattr(owner, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transactions", type=int, default=20_000)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--retire-share",
        type=float,
        default=RETIRE_SHARE,
        help="the share of retirements among the moves (the rest are transfers)",
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="sign the workload while it is submitted instead of before (for peak RSS: the "
        "process then holds the node and one chunk, not the whole workload)",
    )
    args = parser.parse_args()

    genesis, generated, validator_key = make_workload(
        args.transactions, args.accounts, args.seed, retire_share=args.retire_share
    )
    workload: Iterator[Envelope]
    if args.stream:
        print(f"streaming {args.transactions} transactions over {args.accounts} accounts ...")
        workload = generated
    else:
        print(f"signing {args.transactions} transactions over {args.accounts} accounts ...")
        workload = iter(list(generated))
    raw, backend = raw_verify_rate()

    roots = Timer()
    roots.wrap(state_tree.StateTree, "update_encoded")
    roots.wrap(merkle.LogState, "append")
    signatures = SignatureWorker()  # as a node checks them: in a worker process
    with tempfile.TemporaryDirectory() as directory:
        store = Store.create(Path(directory), genesis)
        store.start_writer()  # as a node writes blocks: in a writer process
        # One client submits the whole pre-signed workload, so the pool is sized for it (the
        # node's defaults bound what many clients can queue ahead of commit).
        tx_pool = Pool(
            capacity=args.transactions + 1,
            nonce_gap_max=args.transactions,
            check_signatures=signatures.check,
        )
        producer = SoloProducer(store, validator_key, pool=tx_pool)
        tune_garbage_collector()  # as a node process does
        start = time.perf_counter()
        block_time = 0.0
        now = parse_genesis(genesis).genesis_time
        committed = rejected = blocks = 0
        refused: list[int] = []

        def submit_all() -> None:
            # Clients submit while the producer cuts blocks, as on a live node.
            backlog = 2 * parse_genesis(genesis).params.block_transactions_max
            while chunk := list(itertools.islice(workload, CHUNK)):
                while args.stream and producer.pending_count() > backlog:
                    time.sleep(0.001)  # back-pressure, as mempool_full gives a real client
                answers = producer.submit(chunk)
                refused.append(sum(1 for a in answers if a.status == "rejected"))

        submitter = threading.Thread(target=submit_all)
        submitter.start()
        # As the node's block loop: block N+1 is built while a thread writes block N, and N
        # counts as committed once written (api/node.py).
        writing: tuple[PreparedBlock, Future[None]] | None = None
        with ThreadPoolExecutor(1) as writer:
            while submitter.is_alive() or producer.pending_count() or writing is not None:
                now += 1000
                t0 = time.perf_counter()
                prepared = producer.prepare(now)
                if writing is not None:
                    writing[1].result()
                    result = producer.finish(writing[0])
                    writing = None
                    blocks += 1
                    committed += len(result.block.transactions)
                    rejected += sum(1 for o in result.outcomes if o.status == "rejected")
                if prepared is None:
                    block_time += time.perf_counter() - t0
                    time.sleep(0.001)
                    continue
                writing = (prepared, writer.submit(producer.write, prepared))
                block_time += time.perf_counter() - t0
        submitter.join()
        rejected += sum(refused)
        elapsed = time.perf_counter() - start
        children_mb = _children_peak_rss_mb()
        store.close()
        signatures.close()

    rate = committed / elapsed
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mode = "streamed: signing included" if args.stream else "pre-signed"
    print(f"committed            {committed} transactions in {blocks} blocks, {rejected} rejected")
    print(f"ingest rate          {rate:,.0f} tx/s  ({elapsed:.2f} s, {mode})")
    print(f"raw Ed25519 verify   {raw:,.0f} verifications/s on one core ({backend})")
    print(f"ledger               {native.describe()}")
    print(f"ratio                {rate / raw:.2f}  (goal >= 0.5)")
    if native.in_use():  # compiled callers call the tree directly, past the timer
        print(
            f"root upkeep          not timed: {native.describe()} (TANLIAN_PURE_PYTHON=1 times it)"
        )
    else:
        print(f"root upkeep          {roots.seconds / block_time:.1%} of block time  (goal < 20%)")
    held = "node + one chunk" if args.stream else "node + the whole pre-signed workload"
    print(f"peak RSS             {rss_mb:,.0f} MB, {held}  (goal <= 300 MB at 100,000 tx)")
    for name, megabytes in children_mb.items():
        print(f"                     {megabytes:,.0f} MB more in {name}")


def _children_peak_rss_mb() -> dict[str, float]:
    """Peak RSS of each child process (the signature worker, the store's writer), Linux."""
    found = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
            )
            command = (status.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if int(fields.get("PPid", "0")) == os.getpid() and "VmHWM" in fields:
            name = " ".join(part.decode() for part in command[1:3])
            found[name] = int(fields["VmHWM"].split()[0]) / 1024
    return found


if __name__ == "__main__":
    main()
