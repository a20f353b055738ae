"""Proof benchmark (issue 3): proof generation and verification at 1,000,000 leaves/entries.

    .venv/bin/python bench/proofs.py [--leaves 1000000] [--entries 1000000] [--samples 2000]

The log: a real store's `log_nodes` table holds a 1,000,000-leaf RFC 9162 log (synthetic
leaves: building a real million-transaction chain takes minutes and changes nothing about how
a proof is read); proofs are generated through `Store.log_node`, exactly as the store serves
them. The state: a sparse Merkle tree of 1,000,000 entries in memory, as a node holds it.
Each p99 is printed beside the floor measured in the same run: the proof's hash count times
one raw SHA-256, and its node reads times one SQLite point read.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ledger.merkle import (
    LogState,
    consistency_path,
    inclusion_path,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from ledger.state_tree import StateTree, prove_state, verify_state_proof
from ledger.store import Store
from tests.factory import Chain


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98] * 1000  # ms


def timed(action: Callable[[], object], count: int) -> list[float]:
    result = []
    for _ in range(count):
        start = time.perf_counter()
        action()
        result.append(time.perf_counter() - start)
    return result


def sha256_seconds() -> float:
    data = bytes(65)
    count = 200_000
    start = time.perf_counter()
    for _ in range(count):
        hashlib.sha256(data).digest()
    return (time.perf_counter() - start) / count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()
    rng = random.Random(1)
    n = args.leaves
    hash_s = sha256_seconds()

    with tempfile.TemporaryDirectory() as directory:
        store = Store.create(Path(directory), Chain().genesis_document)
        print(f"writing a {n:,}-leaf log into the store ...")
        log, nodes = LogState().append([leaf_hash(i.to_bytes(8, "big")) for i in range(n)])
        store._conn.execute("BEGIN")
        store._conn.executemany(
            "INSERT INTO log_nodes (level, idx, hash) VALUES (?, ?, ?)",
            ((node.level, node.index, node.hash) for node in nodes),
        )
        store._conn.execute("COMMIT")
        del nodes
        root = log.root()
        reads = [0]

        def read(level: int, index: int) -> bytes:
            reads[0] += 1
            return store.log_node(level, index)

        read_s = statistics.median(timed(lambda: store.log_node(0, rng.randrange(n)), 5000))

        indexes = [rng.randrange(n) for _ in range(args.samples)]
        paths = {}
        generation = []
        for index in indexes:
            start = time.perf_counter()
            paths[index] = inclusion_path(index, n, read)
            generation.append(time.perf_counter() - start)
        longest = max(len(path) for path in paths.values())
        verification = []
        for index in indexes:
            leaf = leaf_hash(index.to_bytes(8, "big"))
            start = time.perf_counter()
            verify_inclusion(leaf_hash=leaf, index=index, size=n, path=paths[index], root=root)
            verification.append(time.perf_counter() - start)
        reads_per_proof = reads[0] / len(indexes)

        firsts = [rng.randrange(1, n) for _ in range(args.samples)]
        roots = {m: LogState.root_of_prefix(m, read) for m in firsts[:50]}
        consistency_generation = timed(
            lambda: consistency_path(rng.choice(firsts), n, read), args.samples
        )
        consistency_verification = []
        for m, first_root in roots.items():
            proof = consistency_path(m, n, read)
            start = time.perf_counter()
            verify_consistency(size1=m, size2=n, path=proof, root1=first_root, root2=root)
            consistency_verification.append(time.perf_counter() - start)
        store.close()

    floor_hashes = math.ceil(math.log2(n))
    print(f"inclusion proof      {longest} hashes at most (ceil(log2 n) = {floor_hashes})")
    read_floor_ms = reads_per_proof * read_s * 1e3
    print(
        f"inclusion generate   p99 {p99(generation):.3f} ms  (goal <= 2 ms; floor "
        f"{reads_per_proof:.0f} reads x {read_s * 1e3:.4f} ms = {read_floor_ms:.3f} ms)"
    )
    print(
        f"inclusion verify     p99 {p99(verification):.3f} ms  (goal <= 0.5 ms; floor "
        f"{floor_hashes} SHA-256 x {hash_s * 1e6:.2f} us = {floor_hashes * hash_s * 1e3:.3f} ms)"
    )
    print(f"consistency generate p99 {p99(consistency_generation):.3f} ms  (goal <= 2 ms)")
    print(f"consistency verify   p99 {p99(consistency_verification):.3f} ms  (goal <= 0.5 ms)")

    print(f"building a state tree of {args.entries:,} entries ...")
    entries = {f"account/{i:064x}": {"nonce": i, "status": "active"} for i in range(args.entries)}
    tree = StateTree.from_items(entries.items())
    state_root = tree.root
    keys = [f"account/{rng.randrange(2 * args.entries):064x}" for _ in range(args.samples)]
    proofs = []
    state_generation = []
    for key in keys:
        start = time.perf_counter()
        proofs.append(prove_state(tree, key, entries.__getitem__))
        state_generation.append(time.perf_counter() - start)
    state_verification = timed(
        lambda: verify_state_proof(proof=rng.choice(proofs), root=state_root), args.samples
    )
    siblings = statistics.mean(len(proof["siblings"]) for proof in proofs)
    print(
        f"state proof generate p99 {p99(state_generation):.3f} ms  (goal <= 5 ms; "
        f"{siblings:.1f} siblings on average)"
    )
    print(
        f"state proof verify   p99 {p99(state_verification):.3f} ms  (floor {siblings + 3:.0f} "
        f"SHA-256 = {(siblings + 3) * hash_s * 1e3:.3f} ms)"
    )


if __name__ == "__main__":
    main()
