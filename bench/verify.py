"""Audit benchmark (issue 3): `audit_chain` over the export of a long chain, offline.

    .venv/bin/python bench/verify.py [--transactions 200000] [--accounts 1000] [--serial]

The chain is built once with bench/ingest.py's workload (issues, transfers and retirements,
every transaction signed) through the pool, the single-validator producer and the store, in a
child process, and exported; the export and its genesis are cached under the temporary
directory (`tanlian-bench-verify/`), so later runs only audit. Then this process audits the
export exactly as `tanlian verify chain` does (signature checks in threads, one per core,
overlapping the replay) and prints the audited tx/s beside the raw single-core Ed25519 verify
rate measured in the same run, their ratio (goal >= 1.5), and the peak RSS of the auditing
process (the build's memory is the child's, not counted).

On the 2-core development machine the default run takes about 3 minutes the first time
(building and exporting the 200,000-transaction chain: about 110 s; the audit: about 65 s)
and about 65 s once the export is cached. Measured there (2026-11-25): 3,170 audited tx/s
beside 21,000 raw verifications/s (ratio 0.15), 488 MB peak RSS. The replay
(`apply_block`) takes two thirds of the audit, parsing 15 % and the threaded signature
checks 14 %: the goal needs a faster state transition, not more signature threads.
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.cli_verify import parallel_verifier, read_genesis, read_lines
from bench.ingest import CHUNK, make_workload, raw_verify_rate
from consensus.pool import Pool
from consensus.producer import SoloProducer, tune_garbage_collector
from ledger.encoding import canonical
from ledger.genesis import parse_genesis
from ledger.store import Store
from ledger.verification import (
    SignatureVerifier,
    audit_chain,
    compute_line_bytes_max,
    verify_signatures_serially,
)

CACHE_DIR = Path(tempfile.gettempdir()) / "tanlian-bench-verify"
EXPORT_FILE = "chain.ndjson"
GENESIS_FILE = "genesis.json"


def build(directory: Path, transactions: int, accounts: int, seed: int) -> None:
    """Produce the chain into a store under `directory`, then export it (atomically)."""
    genesis, workload, validator_key = make_workload(transactions, accounts, seed)
    store_dir = directory / "store"
    with ThreadPoolExecutor(os.cpu_count() or 2) as executor:
        store = Store.create(store_dir, genesis)
        try:
            pool = Pool(capacity=transactions + 1, nonce_gap_max=transactions, executor=executor)
            producer = SoloProducer(store, validator_key, pool=pool)
            tune_garbage_collector()
            block_max = producer.state.params.block_transactions_max
            now = parse_genesis(genesis).genesis_time
            while chunk := list(itertools.islice(workload, CHUNK)):
                producer.submit(chunk)
                while producer.pending_count() >= block_max:
                    now += 1000
                    producer.produce(now)
            while producer.pending_count():
                now += 1000
                if producer.produce(now) is None:
                    break
            part = directory / f"{EXPORT_FILE}.part"
            with part.open("wb") as handle:
                blocks = store.export(handle)
        finally:
            store.close()
    shutil.rmtree(store_dir)  # the export is all the audit reads
    (directory / GENESIS_FILE).write_bytes(canonical(genesis))
    part.rename(directory / EXPORT_FILE)
    print(f"built and exported {blocks} blocks")


def cached_export(transactions: int, accounts: int, seed: int) -> Path:
    """The directory holding the export and genesis, built in a child process if missing."""
    directory = CACHE_DIR / f"tx{transactions}-accounts{accounts}-seed{seed}"
    if not (directory / EXPORT_FILE).is_file():
        print(f"building a chain of {transactions} transactions (once; cached in {directory}) ...")
        shutil.rmtree(directory, ignore_errors=True)  # what an interrupted build left
        directory.mkdir(parents=True)
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--build-into",
                str(directory),
                "--transactions",
                str(transactions),
                "--accounts",
                str(accounts),
                "--seed",
                str(seed),
            ],
            check=True,
        )
        print(f"built in {time.perf_counter() - started:.1f} s")
    return directory


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transactions", type=int, default=200_000)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--serial", action="store_true", help="check signatures on the auditing thread only"
    )
    parser.add_argument("--build-into", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_into is not None:
        build(args.build_into, args.transactions, args.accounts, args.seed)
        return

    directory = cached_export(args.transactions, args.accounts, args.seed)
    export_file = directory / EXPORT_FILE
    genesis = read_genesis(directory / GENESIS_FILE)
    raw, backend = raw_verify_rate()
    line_bytes_max = compute_line_bytes_max(genesis.params)
    tune_garbage_collector()  # as the command line's process would run a node's replay
    with (
        export_file.open("rb") as handle,
        ThreadPoolExecutor(os.cpu_count() or 2) as executor,
    ):
        verifier: SignatureVerifier = (
            verify_signatures_serially if args.serial else parallel_verifier(executor)
        )
        started = time.perf_counter()
        report = audit_chain(
            genesis,
            read_lines(handle, line_bytes_max, lambda size: None),
            verify_signatures=verifier,
        )
        elapsed = time.perf_counter() - started

    rate = report.transactions / elapsed
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mode = "serial signatures" if args.serial else f"signatures on {os.cpu_count()} threads"
    size_mb = export_file.stat().st_size / 1024 / 1024
    print(f"audited              height {report.height}, {report.transactions} transactions")
    print(f"                     ({size_mb:,.0f} MB export, {elapsed:.1f} s, {mode})")
    print(f"audit rate           {rate:,.0f} tx/s")
    print(f"raw Ed25519 verify   {raw:,.0f} verifications/s on one core ({backend})")
    print(f"ratio                {rate / raw:.2f}  (goal >= 1.5)")
    print(f"peak RSS             {rss_mb:,.0f} MB (the auditing process)")


if __name__ == "__main__":
    main()
