"""`tanlian`'s entry point (pyproject's `[project.scripts]`).

The program's modules take about a second to load on a slow machine (FastAPI, pydantic, the
cryptography bindings). A Ctrl-C meanwhile raised `KeyboardInterrupt` from inside an import,
and Python printed its traceback. Until they have loaded, Ctrl-C ends the program quietly
with exit code 130 (128 + SIGINT), as a shell reports an interrupted command.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

INTERRUPTED_EXIT: int = 128 + signal.SIGINT


def _interrupted_while_loading(signum: int, frame: FrameType | None) -> None:
    sys.stderr.write("interrupted\n")
    sys.stderr.flush()
    os._exit(INTERRUPTED_EXIT)


def main() -> None:
    previous = signal.signal(signal.SIGINT, _interrupted_while_loading)
    from api.cli import main as run  # noqa: PLC0415 - the import this module guards

    signal.signal(signal.SIGINT, previous)
    run()
