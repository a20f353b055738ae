"""Block sync benchmark (issue 5): how long a validator that missed 500 heights takes to
catch up from a peer's API.

    .venv/bin/python bench/sync.py [--heights 500] [--transactions 20]

A 4-validator chain of HEIGHTS blocks is built in memory (after a set-up block, TRANSACTIONS
signed transfers per block; each block certified by 3 of the 4 validators, a quorum) and
written to a store that a real `tanlian node --follow` process serves over loopback HTTP (a
follower of a node that does not exist: it serves its store and never changes). Then this
process catches up from an empty store exactly as a validator's node does: `BlockSync` with
an `ApiSource` on that URL (ranges of SYNC_RANGE_BLOCKS_MAX, every line parsed strictly,
every certificate checked against the set governing its height, every block replayed with
`apply_block`), signatures through a `SignatureWorker`, every block appended through the
store's writer process (fsync per block).

Printed beside it, measured in the same run: the same blocks appended to an empty store and
nothing else (the writer process, fsync per block: the floor a durable catch-up cannot go
below), and the raw single-core Ed25519 verification rate with the time the catch-up's
signature checks take at that rate.

    .venv/bin/python bench/sync.py --consortium [--heights 500]

The same question end to end: four real `tanlian node` validators on loopback (genesis
`block_interval_ms` 20 and `--empty-block-interval 0`, so heights come quickly), one
SIGKILLed while the other three decide HEIGHTS more heights, then restarted. Prints how long
the restarted validator takes from its restart to the head the others had then (its process
start included, and printed apart), how many of those blocks came by block sync, and beside
it the rate at which the three decided the heights it missed (a catch-up slower than that
would never end).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.follow import ApiSource
from bench.ingest import raw_verify_rate
from consensus.sync import BlockSync
from consensus.verifier import SignatureWorker
from ledger.blocks import Block, Certificate, Validator, sign_certificate
from ledger.crypto import PrivateKey
from ledger.encoding import canonical
from ledger.genesis import genesis_state, make_genesis_document, parse_genesis
from ledger.limits import SYNC_RANGE_BLOCKS_MAX
from ledger.state import State
from ledger.state_transition import build_block
from ledger.store import Store
from ledger.transactions import Envelope, Transaction, sign_transaction

CHAIN_ID = "bench-sync"
GENESIS_TIME = 1_700_000_000_000
HOLDERS = 100  # one issue credits them all (within transaction_bytes_max)
START_WAIT_S = 60


def _key(name: str) -> PrivateKey:
    return PrivateKey(seed=hashlib.sha256(f"bench-sync/{name}".encode()).digest())


def build_chain(
    heights: int, per_block: int
) -> tuple[dict[str, Any], list[tuple[Block, Certificate, State]]]:
    """The genesis and every block with its certificate and the state after it."""
    rng = random.Random(1)
    authority, certifier = _key("authority"), _key("certifier")
    validators = sorted((_key(f"validator-{i}") for i in range(4)), key=lambda k: k.public_key_hex)
    holders = [_key(f"holder-{i}") for i in range(HOLDERS)]
    document = make_genesis_document(
        chain_id=CHAIN_ID,
        genesis_time=GENESIS_TIME,
        authority_name="authority",
        authority_keys=[authority.public_key_hex],
        authority_threshold=1,
        validators=[
            Validator(public_key=k.public_key_hex, power=1, name=f"validator-{i}")
            for i, k in enumerate(validators)
        ],
        methodologies=[{"methodology_id": "household", "name": "Household",
                        "document_sha256": "00" * 32}],
    )  # fmt: skip
    nonces: dict[str, int] = {}

    def tx(key: PrivateKey, kind: str, payload: dict[str, Any]) -> Envelope:
        nonces[key.account_id] = nonces.get(key.account_id, 0) + 1
        transaction = Transaction(chain_id=CHAIN_ID, type=kind, signer=key.account_id,
                                  nonce=nonces[key.account_id], payload=payload)  # fmt: skip
        return sign_transaction(transaction, [key])

    setup = [
        tx(authority, "accredit_certifier", {"certifier": certifier.account_id, "name": "c",
           "methodologies": ["household"], "valid_from": 0, "valid_until": 4_000_000_000_000}),
        tx(certifier, "issue", {"methodology_id": "household", "project_id": "p",
           "period_start": "2026-01-01", "period_end": "2026-02-01",
           "evidence_sha256": "00" * 32,
           "recipients": [{"account": h.account_id, "quantity": 1_000_000} for h in holders]}),
    ]  # fmt: skip
    state: State = genesis_state(parse_genesis(document))
    last: Certificate | None = None
    blocks = []
    for height in range(1, heights + 1):
        if height == 1:
            envelopes = setup
        else:
            envelopes = []
            for sender in rng.sample(holders, per_block):
                receiver = rng.choice([h for h in holders if h is not sender])
                payload = {"to": receiver.account_id, "batch_id": "B-1", "quantity": 1}
                envelopes.append(tx(sender, "transfer", payload))
        proposer = validators[height % 4]
        made = build_block(
            state, envelopes, time=GENESIS_TIME + 1000 * height, proposer=proposer.public_key_hex,
            last_commit=last,
        )  # fmt: skip
        assert not made.rejected, [error.code for _, error in made.rejected]
        quorum = [k for k in validators if k is not validators[(height + 1) % 4]]
        last = sign_certificate(chain_id=CHAIN_ID, height=height, round=0,
                                block_hash=made.block.block_hash(), keys=quorum)  # fmt: skip
        blocks.append((made.block, last, made.state))
        state = made.state
    return document, blocks


def serve(directory: Path, genesis_file: Path, port: int) -> subprocess.Popen[bytes]:
    """A `tanlian node` serving the store in `directory` on `port` (a follower of nothing)."""
    program = Path(sys.executable).parent / "tanlian"
    log = (directory / "source.log").open("wb")
    process = subprocess.Popen(
        [str(program), "node", "--genesis", str(genesis_file), "--data", str(directory / "source"),
         "--follow", "http://127.0.0.1:9", "--listen", f"127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    deadline = time.monotonic() + START_WAIT_S
    while True:
        assert process.poll() is None, (directory / "source.log").read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the source node did not start"
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _height(url: str) -> int:
    try:
        value: int = httpx.get(f"{url}/healthz", timeout=2).json()["height"]
    except httpx.HTTPError:
        return -1
    return value


def _wait(condition: Any, what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.02)


def consortium(heights: int) -> None:
    """The `--consortium` run: see the module docstring."""
    keys = sorted((_key(f"validator-{i}") for i in range(4)), key=lambda k: k.public_key_hex)
    document = make_genesis_document(
        chain_id=CHAIN_ID, genesis_time=int(time.time() * 1000) - 1000,
        authority_name="authority", authority_keys=[_key("authority").public_key_hex],
        authority_threshold=1,
        validators=[Validator(public_key=k.public_key_hex, power=1, name=f"validator-{i}")
                    for i, k in enumerate(keys)],
        block_interval_ms=20,
    )  # fmt: skip
    program = Path(sys.executable).parent / "tanlian"
    with tempfile.TemporaryDirectory(prefix="tanlian-bench-sync-") as temporary:
        root = Path(temporary)
        (root / "genesis.json").write_bytes(canonical(document))
        ports = [free_port() for _ in keys]
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        processes: dict[int, subprocess.Popen[bytes]] = {}

        def start(index: int) -> None:
            (root / f"key-{index}.pem").write_bytes(keys[index].to_pem())
            peers = [arg for j, url in enumerate(urls) if j != index for arg in ("--peer", url)]
            with (root / f"node-{index}.log").open("ab") as log:
                processes[index] = subprocess.Popen(
                    [str(program), "node", "--genesis", str(root / "genesis.json"),
                     "--data", str(root / f"data-{index}"),
                     "--validator-key", str(root / f"key-{index}.pem"),
                     "--listen", f"127.0.0.1:{ports[index]}",
                     "--empty-block-interval", "0", *peers],  # heights move while idle
                    stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip

        try:
            for index in range(4):
                start(index)
            _wait(lambda: all(_height(url) >= 2 for url in urls), "the consortium starts", 120)
            processes.pop(3).kill()
            missed_from = max(_height(url) for url in urls[:3])
            started = time.perf_counter()
            _wait(
                lambda: min(_height(url) for url in urls[:3]) >= missed_from + heights,
                f"three validators decide {heights} heights",
                600,
            )
            production = time.perf_counter() - started
            target = max(_height(url) for url in urls[:3])
            started = time.perf_counter()
            start(3)
            _wait(lambda: _height(urls[3]) >= 0, "the restarted validator answers", 120)
            answering = time.perf_counter() - started
            _wait(lambda: _height(urls[3]) >= target, "the restarted validator catches up", 600)
            elapsed = time.perf_counter() - started
            metrics = httpx.get(f"{urls[3]}/metrics", timeout=5).text
            synced = next(
                float(line.split()[1])
                for line in metrics.splitlines()
                if line.startswith("tanlian_blocks_synced ")
            )
        finally:
            for process in processes.values():
                process.terminate()
            for process in processes.values():
                process.wait(timeout=30)
    missed = target - missed_from
    print(f"missed               {missed} heights (killed at {missed_from}, restarted at {target})")
    print(f"caught up            in {elapsed:.2f} s from its restart ({answering:.2f} s of it "
          f"until its API answered; {missed / (elapsed - answering):,.0f} heights/s after), "
          f"{synced:.0f} blocks by block sync")  # fmt: skip
    print(f"the chain meanwhile  {heights / production:,.1f} heights/s decided by the other three")
    print(f"ratio                {missed / (elapsed - answering) / (heights / production):.1f}"
          "  (catch-up speed over the chain's own)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--heights", type=int, default=500)
    parser.add_argument("--transactions", type=int, default=20, help="transfers per block")
    parser.add_argument("--consortium", action="store_true", help="four real validators")
    args = parser.parse_args()
    assert 1 <= args.transactions <= HOLDERS
    if args.consortium:
        consortium(args.heights)
        return

    started = time.perf_counter()
    document, blocks = build_chain(args.heights, args.transactions)
    transactions = sum(len(block.transactions) for block, _, _ in blocks)
    print(f"built {args.heights} blocks, {transactions} transactions "
          f"({time.perf_counter() - started:.1f} s)")  # fmt: skip
    genesis = parse_genesis(document)
    with tempfile.TemporaryDirectory(prefix="tanlian-bench-sync-") as temporary:
        root = Path(temporary)
        genesis_file = root / "genesis.json"
        genesis_file.write_bytes(canonical(document))

        # The floor: the same blocks appended, nothing else.
        floor_store = Store.create(root / "floor", document)
        floor_store.start_writer()
        started = time.perf_counter()
        for block, certificate, state in blocks:
            floor_store.append(block, certificate, state)
        floor = time.perf_counter() - started
        floor_store.close()

        source = Store.create(root / "source", document)
        for block, certificate, state in blocks:
            source.append(block, certificate, state)
        source.close()
        port = free_port()
        server = serve(root, genesis_file, port)
        try:
            store = Store.create(root / "behind", document)
            store.start_writer()
            signatures = SignatureWorker()
            sync = BlockSync(
                [ApiSource(f"http://127.0.0.1:{port}")],
                genesis=genesis,
                verify_signatures=signatures.check,
            )
            state = store.load_state()
            started = time.perf_counter()
            while state.height < args.heights:
                state = sync.step(state, store.append)
            elapsed = time.perf_counter() - started
            assert sync.counters.refusals == 0, sync.counters
            assert state.head_hash == blocks[-1][0].block_hash()
            sync.close_sources()
            signatures.close()
            store.close()
        finally:
            server.terminate()
            server.wait(timeout=20)

    raw, backend = raw_verify_rate()
    checks = transactions + 3 * args.heights  # every transaction, every certificate's 3
    print(f"caught up            {args.heights} heights from an empty store in {elapsed:.2f} s "
          f"({args.heights / elapsed:,.0f} blocks/s, {transactions / elapsed:,.0f} tx/s; "
          f"ranges of {SYNC_RANGE_BLOCKS_MAX} over loopback HTTP)")  # fmt: skip
    print(f"store append only    {floor:.2f} s for the same blocks "
          f"({args.heights / floor:,.0f} blocks/s: writer process, fsync per block)")  # fmt: skip
    print(f"ratio                {floor / elapsed:.2f}  (the append floor over the catch-up)")
    print(f"raw Ed25519 verify   {raw:,.0f} verifications/s on one core ({backend}): "
          f"{checks} checks = {checks / raw:.2f} s")  # fmt: skip
    print(
        f"ratio                {checks / raw / elapsed:.2f}  (signature checks over the catch-up)"
    )


if __name__ == "__main__":
    main()
