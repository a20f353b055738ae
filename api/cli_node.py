"""The commands that run a node or build a demo chain (`tanlian node`, `dev`, `demo`): the
parts that need the web server, FastAPI and the explorer.

`api.cli` imports this module only inside those commands. Those modules take most of a
second to load on a slow machine, and the other commands (keys, genesis, tx, query, export,
receipt, verify, cluster) never use them: an auditor's `tanlian verify chain` starts in about
half the time. An import-linter contract keeps them out of `api.cli`'s other imports.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Final

import typer
import uvicorn
from rich.markup import escape

from api.app import create_app
from api.console import close_all, counted, listening_sockets, load_key, out
from api.demo import build_demo
from api.explorer import TARGETS_FILE, load_targets
from api.logs import configure_logging, utc_stamp
from api.node import Node
from api.serving import ensure_file_limit, server_config
from api.settings import Settings
from consensus.producer import CommittedBlock
from ledger.crypto import PrivateKey
from ledger.errors import LedgerError
from ledger.limits import EMPTY_BLOCK_INTERVAL_MS_DEFAULT
from ledger.store import DATABASE_FILE, fsync_directory
from ledger.transactions import Transaction, sign_transaction

DEMO_BUILDING: Final = ".demo-building"  # where `demo` builds, inside its --data


def make_demo(data: Path, transactions: int, seed: int) -> None:
    """`tanlian demo` (and `dev` on an empty directory): the demo chain, keys and targets
    built aside in `data`, then moved in whole, and what was built printed."""
    if (data / DATABASE_FILE).exists():
        raise LedgerError(
            f"{data} holds a ledger already: choose an empty directory", code="exists"
        )
    for made in (data / "genesis.json", data / "keys", data / TARGETS_FILE):
        if made.exists():  # a demo writes these: never over someone's keys
            raise LedgerError(
                f"{made} exists but {data} holds no ledger: remove it or choose an empty directory",
                code="exists",
            )
    for suffix in ("-wal", "-shm", "-journal"):
        # As `Store.create` refuses: SQLite would replay the orphan's pages into the demo's
        # database, moved in beside it (found by review: an old store's table appeared in
        # the new one, and its integrity check failed).
        orphan = data / f"{DATABASE_FILE}{suffix}"
        if orphan.exists():
            raise LedgerError(
                f"{orphan} is here without its database: it may hold committed pages of a"
                " store moved or copied elsewhere. Move it away with that store, or choose"
                " an empty directory",
                code="exists",
            )
    started = time.perf_counter()
    # Built aside and moved in once whole, the ledger last: a demo stopped halfway (Ctrl-C, a
    # full disk) leaves no keys, genesis or chain that `dev` would take for a finished demo
    # (found by review), and the next one starts over.
    building = data / DEMO_BUILDING
    if building.exists():
        shutil.rmtree(building)
    building.mkdir(parents=True)
    summary = build_demo(
        building,
        transactions=transactions,
        seed=seed,
        now_ms=int(time.time() * 1000),
        report=lambda line: out.print(f"  {line}", highlight=False),
    )
    for name in ("keys", "genesis.json", TARGETS_FILE, DATABASE_FILE):
        os.rename(building / name, data / name)
    fsync_directory(data)
    shutil.rmtree(building)
    summary.keys = {name: data / path.relative_to(building) for name, path in summary.keys.items()}
    elapsed = time.perf_counter() - started
    out.print(
        f"[green]demo chain ready[/green]: {counted(summary.transactions, 'transaction')} in "
        f"{counted(summary.blocks, 'block')} ({elapsed:.1f} s) in {escape(str(data))}",
        markup=True,
        highlight=False,
    )
    if summary.transactions < transactions:
        # The scenario's households hold what their meters earned: past some tens of
        # thousands of transactions a year they have nothing left to move (found by review:
        # the shortfall went unsaid).
        out.print(
            f"  (asked for {transactions}: the scenario's year has room for"
            f" {summary.transactions}, its households' credits spent)",
            highlight=False,
        )
    for kind, count in sorted(summary.by_type.items()):
        out.print(f"  {kind:<22} {count}", highlight=False)
    out.print("keys:", highlight=False)
    for name, path in summary.keys.items():
        out.print(f"  {name:<14} {path}", highlight=False)


def open_api(data: Path, host: str, port: int) -> tuple[Settings, list[socket.socket]]:
    """The settings (from the environment) and the API's listening sockets, checked and
    taken before a command writes anything."""
    try:
        settings = Settings.from_environment(os.environ, data=data, host=host, port=port)
        ensure_file_limit(settings)
        # The explorer reads it at its start, after the store is made: a targets file named
        # but missing or bad had left a new store, or a whole demo, behind (found by review).
        named = settings.programme_targets
        load_targets(named or data / TARGETS_FILE, required=named is not None)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    return settings, listening_sockets(host, port)


def serve(
    data: Path,
    validator: PrivateKey | None,
    *,
    settings: Settings,
    listening: list[socket.socket],
    simulate: bool,
    peers: tuple[str, ...] = (),
    follow: tuple[str, ...] = (),
    empty_block_ms: int = EMPTY_BLOCK_INTERVAL_MS_DEFAULT,
) -> None:
    """Run a node on `data` serving the API on `listening` (closed when it stops, or if it
    cannot start)."""
    configure_logging()
    host, port = settings.host, settings.port
    try:
        running = Node(data, validator, peers=peers, follow=follow, empty_block_ms=empty_block_ms)
    except BaseException:
        close_all(listening)
        raise
    running.on_block = _print_block
    try:
        app_ = create_app(running, settings)
    except ValueError as error:  # a setting the explorer cannot use
        running.stop()
        close_all(listening)
        raise typer.BadParameter(str(error)) from None
    state = running.state
    base = f"http://{host}:{port}"
    if follow:  # a URL may hold brackets: escaped, as every interpolation below (review)
        role = escape(f"follower of {', '.join(follow)}")
    else:
        role = "single validator" if running.consensus_inbox is None else "validator"
    out.print(
        f"{utc_stamp()} [green]{role} running[/green] on {escape(str(data))}: "
        f"height {state.height}, {counted(state.log.size, 'transaction')}, "
        f"state root {state.state_root[:16]}…\n"
        f"explorer {escape(base)}/   dashboard {escape(base)}/dashboard\n"
        f"API {escape(base)}/v1/checkpoint   docs {escape(base)}/docs   (Ctrl-C stops)",
        markup=True,
        highlight=False,
    )
    keys = data / "keys"
    if keys.is_dir():
        out.print(f"demo keys in {keys} (households in {keys / 'households'})", highlight=False)
    stopping = threading.Event()
    if simulate:
        households = sorted((keys / "households").glob("household-*.pem"))
        threading.Thread(
            target=_live, args=(running, households, stopping), name="simulation", daemon=True
        ).start()
    server = uvicorn.Server(server_config(app_, settings))

    def stop_serving(reason: str) -> None:  # the store keeps failing: stop, and say why
        server.should_exit = True

    running.on_failure = stop_serving
    # A closed terminal (SIGHUP) stops the node as SIGTERM does, not at once (review).
    signal.signal(signal.SIGHUP, lambda *_: stop_serving("SIGHUP"))
    # uvicorn stops gracefully on SIGINT/SIGTERM, then raises the signal again for the handler
    # that was there before: let that be a no-op (SIGTERM) or a caught KeyboardInterrupt, so
    # a clean stop exits 0.
    signal.signal(signal.SIGTERM, _after_shutdown)
    try:
        server.run(sockets=listening)
    except KeyboardInterrupt:
        pass
    except SystemExit as exited:  # uvicorn's own startup failure (it logged why)
        if exited.code not in (None, 0):
            running.stop()
            raise LedgerError("the HTTP server could not start", code="exited") from None
    finally:
        stopping.set()
        close_all(listening)
    if running.failure is not None:
        raise LedgerError(
            f"stopped at height {running.state.height}: {running.failure}",
            code=running.failure_code,
        )
    out.print(f"{utc_stamp()} stopped at height {running.state.height}", highlight=False)


def _after_shutdown(signum: int, frame: object) -> None:
    """The signal uvicorn already handled, raised again after its shutdown: nothing to do."""


def _print_block(result: CommittedBlock) -> None:
    header = result.block.header
    out.print(
        f"{utc_stamp()} block {header.height}: "
        f"{counted(len(result.block.transactions), 'transaction')}, "
        f"log {header.log_size}, state root {header.state_root[:16]}…",
        highlight=False,
    )


def _live(running: Node, household_files: list[Path], stopping: threading.Event) -> None:
    """Live activity: each block interval a few households retire a little."""
    rng = random.Random()
    keys = [load_key(path) for path in household_files]
    interval = running.state.params.block_interval_ms / 1000
    while not stopping.wait(interval):
        state = running.state
        envelopes = []
        for key in rng.sample(keys, k=min(3, len(keys))):
            envelope = _small_retirement(state, key)
            if envelope is not None:
                envelopes.append(envelope)
        running.submit(envelopes)


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
