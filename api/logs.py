"""The node's log: each line on stderr with its time (UTC, ISO 8601, to the millisecond), its
level and where it comes from, as an operator reads it beside another validator's.

    2026-12-06T12:03:41.207Z WARNING tanlian.consensus.transport: peer http://... unreachable

The handler is the root logger's, so every line goes through it, a library's too (asyncio's
"Task exception was never retrieved"). The node's own loggers (`tanlian.*`) write from INFO
on, the rest from WARNING on (uvicorn's per-request lines are left out:
`api.serving.PER_REQUEST_WARNINGS`). Before this, the node configured no handler: Python's
last-resort one printed bare WARNING lines with no time. The handler writes to `sys.stderr`
as it is when a line is written (a test runner may swap it), never to a stream that was
closed since.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Final, TextIO

LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS: Final = {"": logging.WARNING, "tanlian": logging.INFO, "uvicorn": logging.WARNING}


def utc_stamp(seconds: float | None = None) -> str:
    """`seconds` since the epoch (default: now) as the log writes times:
    2026-12-06T12:03:41.207Z. The node's progress lines on stdout carry it too."""
    seconds = time.time() if seconds is None else seconds
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{whole}.{int(seconds * 1000) % 1000:03d}Z"


class _Utc(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return utc_stamp(record.created)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler writing to the `sys.stderr` of the moment (as logging's last resort does)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)
        self.setFormatter(_Utc(LOG_FORMAT))

    @property
    def stream(self) -> TextIO:
        return sys.stderr


def configure_logging() -> None:
    """Give the root logger the timed handler, once (calling it again changes nothing), and
    the node's loggers and uvicorn's their levels."""
    for name, level in LEVELS.items():
        logging.getLogger(name).setLevel(level)
    root = logging.getLogger()
    if not any(isinstance(handler, _Stderr) for handler in root.handlers):
        root.addHandler(_Stderr())
