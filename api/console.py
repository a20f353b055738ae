"""What every command of the command line shares: its consoles and its way of failing.

A command that meets bad input or a failed check prints one line on stderr and exits 1,
never a traceback (SPEC §8). Messages quote outside input, so they are never read as markup.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from ledger.errors import LedgerError

out = Console()
err = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")


def fail(line: str) -> NoReturn:
    """Print `line` as one line on stderr, as it is, and exit 1."""
    err.print(" ".join(line.splitlines()), markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def fails_cleanly(command: Callable[P, R]) -> Callable[P, R]:
    """Turn a `LedgerError` or an `OSError` into one line on stderr and exit 1."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except LedgerError as error:
            err.print(
                f"[red]error[/red] ({error.code}): {escape(error.message)}",
                highlight=False,
                soft_wrap=True,
            )
        except OSError as error:
            reason = escape(f"{error.strerror or error}: {error.filename}")
            err.print(f"[red]error[/red]: {reason}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)

    return wrapper


@contextlib.contextmanager
def atomic_file(path: Path, *, mode: int = 0o644) -> Iterator[IO[bytes]]:
    """A binary file that becomes `path` only once the block ends without an error: written
    to a temporary file beside it (created with `mode`), fsynced, then renamed over `path`.
    A reader, a crash, a full disk or a failed check leaves the old file or the new one,
    never half of one (a truncated key, genesis or export would be worse than none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_atomically(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """`data` to `path` through `atomic_file`."""
    with atomic_file(path, mode=mode) as handle:
        handle.write(data)
