"""What every command of the command line shares: its consoles and its way of failing.

A command that meets bad input or a failed check prints one line on stderr and exits 1,
never a traceback (SPEC §8); bad usage, one line too, exits 2 (`api.cli.main`). Messages
quote outside input, so they are never read as markup.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Final, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from api.client import Client, ClientError
from consensus.wal import WAL_FILE_NAME
from ledger.crypto import PrivateKey
from ledger.errors import LedgerError, printable
from ledger.store import CREATING_SUFFIX, DATABASE_FILE, LOCK_FILE

# Text is printed as it is: a file name such as `chain[v2].ndjson` was read as markup (found
# by review: printed as `chain.ndjson`, or a traceback for `[/x]`). The few coloured words
# ask for markup, with what they interpolate escaped. Nor is `:cd:` read as an emoji code,
# nor a line wrapped at the terminal's width: a path or id is one word to copy.
out = Console(markup=False, emoji=False, soft_wrap=True)
err = Console(stderr=True, markup=False, emoji=False, soft_wrap=True)

P = ParamSpec("P")
R = TypeVar("R")


PASSPHRASE_ENV = "TANLIAN_PASSPHRASE"
KEY_FILE_BYTES_MAX = 64 * 1024  # a PEM key is a few hundred bytes; /dev/zero is not one


def option_given(context: typer.Context, name: str) -> bool:
    """Whether the parameter `name` was given (on the command line), not left at its
    default."""
    source = context.get_parameter_source(name)
    return source is not None and source.name != "DEFAULT"


def checked_url(url: str | None) -> str | None:
    """A `--node` URL, checked as the client will take it (a typer callback): one that is
    not http(s)://host is bad usage, exit 2, as `node --follow` and `--peer` have it (found
    by review: `verify chain --node ftp://x` exited 1, as if a check had failed)."""
    if url is not None:
        try:
            Client(url).close()
        except ClientError as error:
            raise typer.BadParameter(error.message) from None
    return url


def checked_urls(urls: list[str] | None) -> list[str] | None:
    """`checked_url` for each URL of a repeatable option (`node --follow`, `--peer`)."""
    for url in urls or []:
        checked_url(url)
    return urls


LISTEN_BACKLOG: Final = 2048  # uvicorn's own
PEM_HEAD_BYTES: Final = 64  # enough of a file to see a PEM private key's first line


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """The API's sockets, listening before the node says it runs: a port in use, or a host
    this machine cannot listen on, is one line and exit 1, not uvicorn's exit 3 after the
    banner. One socket for each address the host names (`localhost` may be ::1 and
    127.0.0.1), as asyncio's `create_server` makes them; an IPv6 address may come in
    brackets (`[::1]:8000`)."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        found = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as error:
        raise LedgerError(f"cannot listen on {host}:{port}: {error}", code="bad_listen") from None
    listening: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):
            one = socket.socket(family, kind, proto)
            listening.append(one)
            one.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # `::` is IPv6 only, as create_server has it
                one.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            one.bind(address)
            one.listen(LISTEN_BACKLOG)  # now: a second node cannot take the port meanwhile
    except OSError as error:
        for one in listening:
            one.close()
        reason = error.strerror or str(error)
        raise LedgerError(f"cannot listen on {host}:{port}: {reason}", code="bad_listen") from None
    return listening


def close_all(listening: list[socket.socket]) -> None:
    for one in listening:
        one.close()


def counted(count: int, noun: str) -> str:
    """`count` and `noun`, plural unless one: "1 transaction", "3 transactions"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def passphrase() -> bytes | None:
    """$TANLIAN_PASSPHRASE, as bytes: a passphrase need not be text in this locale."""
    return os.environb.get(PASSPHRASE_ENV.encode()) or None


def read_key_file(path: Path) -> bytes:
    """A key file's bytes, refused (bad_key) beyond KEY_FILE_BYTES_MAX before they are all
    in memory."""
    with path.open("rb") as handle:
        data = handle.read(KEY_FILE_BYTES_MAX + 1)
    if len(data) > KEY_FILE_BYTES_MAX:
        message = f"{path}: over {KEY_FILE_BYTES_MAX} bytes, not a key file"
        raise LedgerError(message, code="bad_key")
    return data


def load_key(path: Path) -> PrivateKey:
    """A PEM key file, decrypted with $TANLIAN_PASSPHRASE when it is set. A refusal names
    the file (found by review: with several keys given, it did not say which)."""
    given = passphrase()
    try:
        return PrivateKey.from_pem(read_key_file(path), given)
    except LedgerError as error:
        # Where the passphrase comes from, which the library's words cannot say.
        hint = (
            ""
            if given or not error.message.startswith("the key file is encrypted")
            else f" (set ${PASSPHRASE_ENV})"
        )
        message = (
            error.message if error.message.startswith(f"{path}:") else f"{path}: {error.message}"
        )
        raise LedgerError(f"{message}{hint}", code=error.code) from error


def refuse_precious_out(out_file: Path, data: Path | None) -> None:
    """--out must not name a file of a data directory (`data`, or the one --out is in): the
    database and its WAL are the chain, the lock keeps a second node off it, the
    signed-message log is what a validator signed (each refused whether or not it exists
    now), and nothing there that exists is another command's to replace. Found by review:
    an export written over the lock of a running node let a second node start on the same
    directory. Nor may it name a private key file, anywhere (found by a later review: `tx
    --out` replaced the very key it signed with)."""
    target = out_file.resolve()
    beside = target.parent
    directories = {beside} if (beside / DATABASE_FILE).exists() else set()
    if data is not None:
        directories.add(data.resolve())
    for directory in directories:
        named = {
            directory / name
            for name in (
                *(f"{DATABASE_FILE}{suffix}" for suffix in ("", "-wal", "-shm", "-journal")),
                f"{DATABASE_FILE}{CREATING_SUFFIX}",
                LOCK_FILE,
                WAL_FILE_NAME,
            )
        }
        if target in named:
            raise LedgerError(
                f"{out_file} is one of the ledger's own files in {directory}: choose another --out",
                code="exists",
            )
        if target.exists() and target.is_relative_to(directory):
            raise LedgerError(
                f"{out_file} already exists in the data directory {directory}, whose files"
                " are the node's: choose another --out",
                code="exists",
            )
    with contextlib.suppress(OSError):
        if not stat.S_ISREG(target.stat().st_mode):
            return  # a pipe or a terminal: reading it would wait (found by review)
        with target.open("rb") as existing:
            first = existing.read(PEM_HEAD_BYTES)
        if first.startswith(b"-----BEGIN") and b"PRIVATE KEY-----" in first:
            raise LedgerError(
                f"{out_file} holds a private key: choose another --out", code="exists"
            )


def fail(line: str) -> NoReturn:
    """Print `line` as one line on stderr, as it is, and exit 1."""
    err.print(printable(" ".join(line.splitlines())), markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def fails_cleanly(command: Callable[P, R]) -> Callable[P, R]:
    """Turn a `LedgerError` or an `OSError` into one line on stderr and exit 1."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except LedgerError as error:
            err.print(
                f"[red]error[/red] ({escape(printable(error.code))}):"
                f" {escape(printable(error.message))}",
                markup=True,
                highlight=False,
                soft_wrap=True,
            )
        except OSError as error:
            reason = escape(printable(f"{error.strerror or error}: {error.filename}"))
            if isinstance(error, FileExistsError) and Path(error.filename or "").is_file():
                reason = escape(printable(f"{error.filename} is a file, not a directory"))
            err.print(f"[red]error[/red]: {reason}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(1)

    return wrapper


@contextlib.contextmanager
def atomic_file(path: Path, *, mode: int = 0o644) -> Iterator[IO[bytes]]:
    """A binary file that becomes `path` only once the block ends without an error: written
    to a temporary file beside it (created with `mode`), fsynced, then renamed over `path`.
    A reader, a crash, a full disk or a failed check leaves the old file or the new one,
    never half of one (a truncated key, genesis or export would be worse than none)."""
    descriptor, temporary = temporary_beside(path)
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        replace_naming(Path(temporary), path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def temporary_beside(path: Path) -> tuple[int, str]:
    """A new temporary file in `path`'s directory (made if missing), whose failure (a
    read-only directory, say) names `path`, not the temporary file's random name (found by
    review)."""
    path.parent.mkdir(parents=True, exist_ok=True)  # its own errors name the directory
    try:
        return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as error:
        raise type(error)(error.errno, error.strerror, str(path)) from error


def replace_naming(temporary: Path, path: Path) -> None:
    """`os.replace(temporary, path)`, whose failure (`path` is a directory, say) names
    `path`, the file the user gave, not the temporary one (found by review)."""
    try:
        os.replace(temporary, path)
    except OSError as error:
        raise type(error)(error.errno, error.strerror, str(path)) from error


def write_atomically(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """`data` to `path` through `atomic_file`."""
    with atomic_file(path, mode=mode) as handle:
        handle.write(data)
