"""What every command of the command line shares: its consoles and its way of failing.

A command that meets bad input or a failed check prints one line on stderr and exits 1,
never a traceback (SPEC §8). Messages quote outside input, so they are never read as markup.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NoReturn, ParamSpec, TypeVar

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
