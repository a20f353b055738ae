"""`tanlian cluster`: N validator processes on this machine as one consortium (SPEC §8).

The first run makes, under DIR, one directory per party (named after the consortium's parties:
city, certification centre, platform operator, independent party, then validator-5...), each
with its own validator key and data, an authority key, and one genesis naming all N
validators. Each party then runs `tanlian node --peer ...` on 127.0.0.1:BASE_PORT+i, and
Ctrl-C (or SIGTERM) stops every child process, each by its pid, and waits for it (bounded).
A validator that exits is named with its reason and the command that starts it again, and
the cluster says how many of its validators still run and how many the chain needs to decide
(more than 2/3); the others go on, and the cluster ends when none is left. A validator ended
by a signal it does not handle (SIGKILL, the kernel's out-of-memory killer) is named with the
signal; one that stopped cleanly (exit 0) though the cluster had not asked it to, as a
validator does on a SIGTERM, SIGINT or SIGHUP from outside, is said to have stopped on its
own. Stopped after one had ended while it ran, or with one that had to be killed because it
did not stop in time (a paused process, say), it says so and exits 1.
A later run on the same DIR resumes the same chain; a run on a DIR whose validators another
run still holds, or whose stores exist without their genesis, is refused before anything is
written.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, BinaryIO, Final

import typer

from api.cli_verify import read_genesis
from api.console import (
    close_all,
    err,
    fails_cleanly,
    listening_sockets,
    load_key,
    option_given,
    out,
    passphrase,
    write_atomically,
)
from ledger.blocks import Validator
from ledger.crypto import PrivateKey
from ledger.errors import LedgerError, StoreError, printable
from ledger.genesis import make_genesis_document
from ledger.limits import EMPTY_BLOCK_INTERVAL_MS_DEFAULT, EMPTY_BLOCK_INTERVAL_MS_MAX
from ledger.store import DATABASE_FILE, LOCK_FILE, DirectoryLock

PARTIES: Final = ("city", "certification-centre", "platform-operator", "independent-party")
VALIDATORS_MAX: Final = 16  # processes on one machine
# `--empty-block-interval` of `tanlian node` and of `tanlian cluster` (which passes it on).
EMPTY_BLOCK_INTERVAL_S_DEFAULT: Final = EMPTY_BLOCK_INTERVAL_MS_DEFAULT / 1000
EmptyBlockInterval = Annotated[
    float,
    typer.Option(
        min=0,
        max=EMPTY_BLOCK_INTERVAL_MS_MAX / 1000,
        help="A validator of a consortium: while no one has anything to decide, add an empty "
        "block at most every this many seconds (0: every block interval of the chain, never "
        "more often; a transaction, evidence or another validator's message starts the next "
        "block at once). The validator with the shortest interval sets the pace for all.",
    ),
]
STOP_SECONDS: Final = 20.0  # how long each child may take to stop before it is killed
EXITS_GATHER_SECONDS: Final = 1.0  # after a validator exits, before the others are looked at
LOG_TAIL_BYTES: Final = 64 * 1024  # of an exited child's log, read for its reason
ERROR_CHARS_MAX: Final = 300  # of that reason, in the one line
CHAIN_ID: Final = "tanlian-consortium"


def party_names(count: int) -> list[str]:
    return [PARTIES[i] if i < len(PARTIES) else f"validator-{i + 1}" for i in range(count)]


def _key(path: Path) -> PrivateKey:
    """The key at `path`, or a new one written there: read and written with
    $TANLIAN_PASSPHRASE as the nodes it starts read it (found by review: the cluster wrote
    plain keys that its nodes, given a passphrase, refused)."""
    if path.exists():
        return load_key(path)
    key = PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, key.to_pem(passphrase()), mode=0o600)
    return key


def checked_genesis(data: Path, names: list[str]) -> Path | None:
    """`data`'s genesis, checked with each party's key against it, or None when there is
    none yet. It writes nothing, so a damaged genesis is the error given whatever else is
    wrong (a port taken by chance had hidden it, found in CI). A genesis missing beside
    parties' stores is refused: a new one would be another chain, which every store then
    refused, and stayed to fail every later run (found by review)."""
    genesis = data / "genesis.json"
    if not genesis.exists():
        stores = sorted(path.parent for path in data.glob(f"*/data/{DATABASE_FILE}"))
        if stores:
            raise LedgerError(
                f"{genesis} is missing, yet the stores of its parties exist"
                f" ({', '.join(map(str, stores))}): restore the consortium's genesis.json"
                " there (a new one would be another chain), or choose another --data",
                code="missing_genesis",
            )
        return None
    named = {v.name: v.public_key for v in read_genesis(genesis).validators}
    if sorted(named) != sorted(names):
        raise LedgerError(
            f"{genesis} names validators {sorted(named)}, not {sorted(names)}", code="exists"
        )
    for name in names:
        path = data / name / "validator.pem"
        if not path.exists() or load_key(path).public_key_hex != named[name]:
            raise LedgerError(f"{path} is not the key {genesis} names for {name}", code="exists")
    return genesis


def prepare(data: Path, names: list[str]) -> Path:
    """Keys and genesis under `data` (made once; the same on later runs). An existing genesis
    is checked, with each party's key against it, before anything is written."""
    existing = checked_genesis(data, names)
    if existing is not None:
        return existing
    keys = {name: _key(data / name / "validator.pem") for name in names}
    authority = _key(data / "authority.pem")
    document = make_genesis_document(
        chain_id=CHAIN_ID,
        genesis_time=int(time.time() * 1000),
        authority_name="Registry",
        authority_keys=[authority.public_key_hex],
        authority_threshold=1,
        validators=[
            Validator(public_key=keys[name].public_key_hex, power=1, name=name) for name in names
        ],
    )
    genesis = data / "genesis.json"
    write_atomically(genesis, json.dumps(document, indent=2, ensure_ascii=False).encode())
    return genesis


def check_not_running(data: Path, names: list[str]) -> None:
    """No process holds a party's store (its `ledger.lock`): a cluster or node runs on
    `data` already. Found by review: a second cluster on one DIR started its validators,
    which failed after ~10 s waiting for the locks, and their errors went into the running
    validators' logs, where the first cluster then took one for its own validator's reason.
    The lock is only tried, and let go at once; it reads and writes nothing else."""
    for name in names:
        lock_path = data / name / "data" / LOCK_FILE
        if not lock_path.exists():  # never made here: trying it would create it
            continue
        lock = DirectoryLock(lock_path)
        try:
            lock.acquire(wait_seconds=0)
        except StoreError:
            raise LedgerError(
                f"{lock_path.parent} is in use: another process holds its {LOCK_FILE} (a"
                f" cluster or node runs on {data} already): stop it, or choose another --data",
                code="in_use",
            ) from None
        lock.release()


PR_SET_PDEATHSIG: Final = 1  # linux/prctl.h


def _end_with(parent: int) -> None:
    """In a validator's process before it runs (Linux): SIGTERM it when the cluster process
    ends, however it ends. A review SIGKILLed `tanlian cluster` and its four validators ran
    on, holding their ports and data directories, so the next `cluster` could not start."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the cluster ended before the line above: end now
        os._exit(1)


def _last_error(log_path: Path, start: int, end: int) -> str:
    """`: <the "error (code): ..." line the child wrote last>`, or "" when its last line is
    none: the reason, where the log (kept across runs) buries it (found by review). Only the
    child's own output counts: from `start`, the log's end when it started, to `end`, just
    after the last bytes it wrote (its log's file offset, which it shares), and of that only
    its last line, its final word, since a line another process appended while it ran may
    lie before it. Found by review: a second cluster's error lines, appended to the log of a
    running validator, were given as its reason once it was killed."""
    try:
        with log_path.open("rb") as log:
            log.seek(max(start, end - LOG_TAIL_BYTES))
            tail = log.read(max(0, end - log.tell())).decode("utf-8", "replace")
    except OSError:
        return ""
    lines = tail.rstrip().splitlines()
    if not lines or not lines[-1].startswith("error ("):
        return ""
    return f": {printable(lines[-1])[:ERROR_CHARS_MAX]}"


def _stop(children: list[subprocess.Popen[bytes]]) -> list[int]:
    """Stop every child still running (SIGTERM), each given STOP_SECONDS; the indices of
    those killed (SIGKILL) because they did not stop in time (found by review: a paused
    validator was killed, and the cluster said it had stopped every one)."""
    for child in children:
        if child.poll() is None:
            child.terminate()
    killed = []
    for i, child in enumerate(children):
        try:
            child.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=STOP_SECONDS)
            killed.append(i)
    return killed


@fails_cleanly
def cluster(
    context: typer.Context,
    data: Annotated[Path, typer.Option(help="The consortium's directory (made if new).")],
    validators: Annotated[
        int, typer.Option(min=1, max=VALIDATORS_MAX, help="How many validators.")
    ] = 4,
    base_port: Annotated[
        int, typer.Option(min=1, max=65535 - VALIDATORS_MAX, help="The first one's port.")
    ] = 8100,
    empty_block_interval: EmptyBlockInterval = EMPTY_BLOCK_INTERVAL_S_DEFAULT,
) -> None:
    """Run N local validator processes as one consortium, until Ctrl-C stops them all (one
    that exits is named, with the command that starts it again, and whether the chain can
    still decide; the others go on)."""
    # One validator is a single validator, which adds no empty blocks: the option is not
    # passed on, and refused if given (as `tanlian node` refuses it).
    interval = [] if validators == 1 else ["--empty-block-interval", repr(empty_block_interval)]
    if validators == 1 and option_given(context, "empty_block_interval"):
        raise typer.BadParameter(
            "a single validator adds no empty blocks: --empty-block-interval is for two"
            " validators or more"
        )
    names = party_names(validators)
    checked_genesis(data, names)  # what is in the directory first, then the ports
    check_not_running(data, names)
    for port in range(base_port, base_port + validators):  # before anything is written
        try:
            close_all(listening_sockets("127.0.0.1", port))  # as each validator will listen
        except LedgerError as error:
            raise LedgerError(
                f"{error.message} (choose another --base-port)", code=error.code
            ) from error
    genesis = prepare(data, names)
    urls = [f"http://127.0.0.1:{base_port + i}" for i in range(validators)]
    program = Path(sys.executable).parent / "tanlian"
    children: list[subprocess.Popen[bytes]] = []
    commands: list[list[str]] = []
    exited: list[str] = []  # the validators that ended while the cluster ran
    killed: list[int] = []  # those killed because they did not stop in time
    # Each child's log, kept open: its file offset, shared with the child, is just after
    # the last bytes the child wrote, whoever else appends to the file (`_last_error`).
    logs: list[BinaryIO] = []
    starts: list[int] = []  # each log's size when its child started
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {
        number: signal.signal(number, on_signal) for number in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        for i, name in enumerate(names):
            if stopping:  # Ctrl-C while they start: start no more (review)
                break
            peers = [arg for j, url in enumerate(urls) if j != i for arg in ("--peer", url)]
            log = (data / name / "node.log").open("ab")
            logs.append(log)
            starts.append(log.tell())  # where this run's lines begin (the log is kept)
            command = [
                str(program), "node",
                "--genesis", str(genesis),
                "--data", str(data / name / "data"),
                "--validator-key", str(data / name / "validator.pem"),
                "--listen", f"127.0.0.1:{base_port + i}",
                *interval,
                *peers,
            ]  # fmt: skip
            commands.append(command)
            children.append(
                subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    # This process runs no other thread, so the child's first moments
                    # after the fork run nothing but `_end_with`.
                    preexec_fn=functools.partial(_end_with, os.getpid()),  # noqa: PLW1509
                )
            )
            out.print(f"{name:22} {urls[i]}  (pid {children[-1].pid})", highlight=False)
        out.print(f"genesis {genesis}; logs in {data}/<party>/node.log (Ctrl-C stops all)")
        running = dict(enumerate(children))
        quorum = 2 * validators // 3 + 1  # more than 2/3 of the (equal) power
        reasons: list[str] = []  # of every validator that exited, in turn
        while not stopping:
            ended = [i for i, child in running.items() if child.poll() is not None]
            if ended:
                # Several often end together (a setting every node refuses): a moment more,
                # and every child looked at again, so that they are told at once (review).
                time.sleep(EXITS_GATHER_SECONDS)
                ended = [i for i, child in running.items() if child.poll() is not None]
            for i in ended:
                del running[i]
                exited.append(names[i])
            told = [
                _exited(
                    data / names[i] / "node.log",
                    names[i],
                    children[i],
                    (starts[i], os.lseek(logs[i].fileno(), 0, os.SEEK_CUR)),
                )
                for i in ended
            ]
            reasons += told
            if ended and not running:
                raise LedgerError("; ".join(reasons), code="exited")
            # The others go on (found by review: one validator killed had stopped them all,
            # where the chain goes on with up to f down).
            for i, reason in zip(ended, told, strict=True):
                err.print(
                    f"warning: {reason}; start it again (apart from this cluster) with:"
                    f" {shlex.join(commands[i])}",
                    highlight=False,
                )
            if ended:  # its own children only: one started again apart from it counts too
                err.print(
                    f"warning: {len(running)} of the {validators} validators this cluster"
                    f" started run; the chain decides while {quorum} or more do",
                    highlight=False,
                )
            time.sleep(0.2)
    finally:
        killed = _stop(children)
        for handle in logs:
            handle.close()
        for number, handler in previous.items():
            signal.signal(number, handler)
    # Stopped, but not as it was started, or not cleanly: say so, and exit non-zero (review).
    problems = []
    if exited:
        problems.append(f"{', '.join(exited)} had ended while the cluster ran")
    if killed:
        problems.append(
            f"{', '.join(names[i] for i in killed)} did not stop within {STOP_SECONDS:g} s"
            f" and {'was' if len(killed) == 1 else 'were'} killed (SIGKILL)"
        )
    if problems:
        raise LedgerError(
            f"stopped the validators still running; {'; '.join(problems)}", code="exited"
        )
    out.print("stopped every validator", highlight=False)


def _exited(
    log_path: Path, name: str, child: subprocess.Popen[bytes], written: tuple[int, int]
) -> str:
    """How a validator the cluster had not asked to stop ended; `written`: where its own
    output is in `log_path` (`_last_error`)."""
    code = child.returncode
    reason = _last_error(log_path, *written)
    if code == 0:
        # A validator stops cleanly on SIGTERM, SIGINT or SIGHUP (found by review: "exited
        # (0)" was all the cluster said of a `kill` from outside).
        return (
            f"{name}'s validator process stopped on its own (exit 0, as after a `kill` from"
            f" outside or another signal it stops on: SIGTERM, SIGINT, SIGHUP){reason}:"
            f" see {log_path}"
        )
    # Killed from outside, the process exits with no word of its own: say which signal
    # ("exited (-15)" read as the node's own failure).
    how = f"was ended by {_signal_name(-code)}" if code < 0 else f"exited ({code})"
    return f"{name}'s validator process {how}{reason}: see {log_path}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal, which has no name of its own
        return f"signal {number}"
