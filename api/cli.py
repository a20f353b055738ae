"""The `tanlian` command line (SPEC §8).

Exit 0 on success, 1 when a verification or a transaction fails (one line on stderr, no
traceback), 2 on bad usage. Commands that talk to a node arrive with the HTTP API.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from api.cli_verify import verify_app
from api.console import fails_cleanly, out
from api.demo import build_demo
from consensus.producer import SoloProducer, tune_garbage_collector
from ledger.blocks import Validator
from ledger.crypto import PrivateKey
from ledger.errors import LedgerError
from ledger.genesis import make_genesis_document
from ledger.store import DATABASE_FILE, Store
from ledger.transactions import Transaction, sign_transaction

app = typer.Typer(
    help="Tanlian (碳链): a verifiable carbon-credit ledger.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
keys_app = typer.Typer(help="Make and inspect Ed25519 keys (PKCS#8 PEM).", no_args_is_help=True)
genesis_app = typer.Typer(help="Write genesis files.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(genesis_app, name="genesis")
app.add_typer(verify_app, name="verify")

PASSPHRASE_ENV = "TANLIAN_PASSPHRASE"
POLL_SECONDS = 0.05  # how often the block loop looks at the clock and the pool


def _passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def load_key(path: Path) -> PrivateKey:
    return PrivateKey.from_pem(path.read_bytes(), _passphrase())


@keys_app.command("new")
@fails_cleanly
def keys_new(
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the PEM file.")],
) -> None:
    """Make a key; encrypted with $TANLIAN_PASSPHRASE when set."""
    if out_file.exists():
        raise LedgerError(f"{out_file} exists: refusing to overwrite a key", code="exists")
    key = PrivateKey.generate()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_bytes(key.to_pem(_passphrase()))
    out_file.chmod(0o600)
    out.print(f"public key  {key.public_key_hex}\naccount id  {key.account_id}", highlight=False)


@keys_app.command("show")
@fails_cleanly
def keys_show(file: Path) -> None:
    """Print a key's public key and the id of its single-key account."""
    key = load_key(file)
    out.print(f"public key  {key.public_key_hex}\naccount id  {key.account_id}", highlight=False)


@genesis_app.command("new")
@fails_cleanly
def genesis_new(  # noqa: PLR0917 - typer maps each option to a parameter
    chain_id: Annotated[str, typer.Option(help="The chain's id, e.g. zibo-2026.")],
    authority: Annotated[list[Path], typer.Option(help="An authority key file (repeat).")],
    validator: Annotated[list[Path], typer.Option(help="A validator key file (repeat).")],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the genesis.")],
    threshold: Annotated[int, typer.Option(help="Authority signatures needed.")] = 1,
    authority_name: Annotated[str, typer.Option(help="The authority's name.")] = "Registry",
    genesis_time: Annotated[int | None, typer.Option(help="Unix ms; default now.")] = None,
) -> None:
    """Write a genesis file (SPEC §5.1)."""
    document = make_genesis_document(
        chain_id=chain_id,
        genesis_time=genesis_time if genesis_time is not None else int(time.time() * 1000),
        authority_name=authority_name,
        authority_keys=[load_key(path).public_key_hex for path in authority],
        authority_threshold=threshold,
        validators=[
            Validator(public_key=load_key(path).public_key_hex, power=1, name=path.stem)
            for path in validator
        ],
    )
    out_file.write_text(json.dumps(document, indent=2, ensure_ascii=False))
    out.print(f"wrote {out_file}", highlight=False)


@app.command()
@fails_cleanly
def demo(
    data: Annotated[Path, typer.Option(help="An empty directory for keys, genesis and chain.")],
    transactions: Annotated[int, typer.Option(min=50, max=1_000_000)] = 3000,
    seed: Annotated[int, typer.Option(help="Makes the demo reproducible.")] = 1,
) -> None:
    """Build a local single-validator chain with a realistic Zibo scenario, then exit."""
    _build_demo(data, transactions, seed)


def _build_demo(data: Path, transactions: int, seed: int) -> None:
    if (data / DATABASE_FILE).exists():
        raise LedgerError(
            f"{data} holds a ledger already: choose an empty directory", code="exists"
        )
    started = time.perf_counter()
    summary = build_demo(
        data,
        transactions=transactions,
        seed=seed,
        now_ms=int(time.time() * 1000),
        report=lambda line: out.print(f"  {line}", highlight=False),
    )
    elapsed = time.perf_counter() - started
    out.print(
        f"[green]demo chain ready[/green]: {summary.transactions} transactions in "
        f"{summary.blocks} blocks ({elapsed:.1f} s) in {data}",
        highlight=False,
    )
    for kind, count in sorted(summary.by_type.items()):
        out.print(f"  {kind:<22} {count}", highlight=False)
    out.print("keys:", highlight=False)
    for name, path in summary.keys.items():
        out.print(f"  {name:<14} {path}", highlight=False)


@app.command()
@fails_cleanly
def export(
    out_file: Annotated[Path, typer.Option("--out", help="The NDJSON file to write.")],
    data: Annotated[Path, typer.Option(help="A node's data directory.")],
) -> None:
    """Write the NDJSON export: the genesis, then one {"block", "certificate"} per line."""
    store = Store.open(data)
    try:
        store.load_state()  # refuse to export from a damaged store
        with out_file.open("wb") as handle:
            blocks = store.export(handle)
    finally:
        store.close()
    out.print(f"wrote {blocks} blocks to {out_file}", highlight=False)


@app.command()
@fails_cleanly
def receipt(
    retirement_id: Annotated[str, typer.Argument(help="The retirement's id (its tx_id).")],
    data: Annotated[Path, typer.Option(help="A node's data directory.")],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the receipt.")],
) -> None:
    """Write the self-contained receipt of a retirement (SPEC §6.3), against the head."""
    store = Store.open(data)
    try:
        document = store.receipt(store.load_state(), retirement_id.lower())
    finally:
        store.close()
    out_file.write_text(json.dumps(document, indent=2, ensure_ascii=False))
    out.print(
        f"wrote the receipt of {retirement_id} to {out_file}", highlight=False, soft_wrap=True
    )


@app.command()
@fails_cleanly
def dev(
    data: Annotated[Path, typer.Option(help="Data directory; a demo is built if empty.")] = Path(
        "data/dev"
    ),
    port: Annotated[int, typer.Option(help="Port for the HTTP API (issue 4).")] = 8000,
    transactions: Annotated[int, typer.Option(min=50, max=1_000_000)] = 3000,
) -> None:
    """Build the demo if DATA is empty, then run the single validator on it: it keeps
    producing blocks from live simulated activity, printing each one, until Ctrl-C."""
    if not (data / DATABASE_FILE).exists():
        _build_demo(data, transactions, seed=1)
    store = Store.open(data)
    validator = load_key(data / "keys" / "validator-city.pem")
    producer = SoloProducer(store, validator)
    tune_garbage_collector()
    state = producer.state
    out.print(
        f"[green]single validator running[/green] on {data}: height {state.height}, "
        f"{state.log.size} transactions, state root {state.state_root[:16]}…\n"
        f"(the HTTP API on 127.0.0.1:{port} arrives with the API issue; Ctrl-C stops)",
        highlight=False,
    )
    households = sorted((data / "keys" / "households").glob("household-*.pem"))
    signal.signal(signal.SIGTERM, _stop)
    try:
        _live(producer, households)
    except KeyboardInterrupt:
        out.print(f"stopped at height {producer.state.height}", highlight=False)
    finally:
        store.close()


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops as cleanly as Ctrl-C


def _live(producer: SoloProducer, household_files: list[Path]) -> None:
    """Live activity: each interval a few households retire a little, and a block is cut."""
    rng = random.Random()
    keys = [PrivateKey.from_pem(path.read_bytes()) for path in household_files]
    interval = producer.state.params.block_interval_ms / 1000
    next_activity = 0.0
    while True:
        time.sleep(POLL_SECONDS)
        if time.monotonic() >= next_activity:
            next_activity = time.monotonic() + interval
            state = producer.state
            envelopes = []
            for key in rng.sample(keys, k=min(3, len(keys))):
                envelope = _small_retirement(state, key)
                if envelope is not None:
                    envelopes.append(envelope)
            producer.submit(envelopes)
        now_ms = int(time.time() * 1000)
        if not producer.due(now_ms):
            continue
        result = producer.produce(now_ms)
        if result is not None:
            header = result.block.header
            out.print(
                f"block {header.height}: {len(result.block.transactions)} transactions, "
                f"log {header.log_size}, state root {header.state_root[:16]}…",
                highlight=False,
            )


def _small_retirement(state: Any, key: PrivateKey) -> Any:
    account_id = key.account_id
    account = state.get(f"account/{account_id}")
    if account is None or account["status"] != "active":
        return None
    if account["keys"] and account["keys"] != [key.public_key_hex]:
        return None  # this household rotated its key
    for (batch_id, owner), starts in state.holdings.items():
        if owner == account_id and starts:
            transaction = Transaction(
                chain_id=state.chain_id,
                type="retire",
                signer=account_id,
                nonce=account["nonce"] + 1,
                payload={
                    "batch_id": batch_id,
                    "quantity": 1,
                    "beneficiary": f"Household {account_id[:8]}",
                    "purpose": "voluntary",
                },
            )
            return sign_transaction(transaction, [key])
    return None


def main() -> None:
    app(prog_name="tanlian")


if __name__ == "__main__":  # pragma: no cover
    main()
