"""Child processes of a node: how they are started, spoken to and stopped.

A node hands CPU-bound or GIL-bound work (signature checks, block writes) to a child
`python -m MODULE` reading length-prefixed frames on its stdin and answering on its stdout.
The child ends when its stdin closes, so a node that dies (even by SIGKILL) leaves none behind.
Used by `ledger.store` (the block writer) and `consensus.verifier` (the signature worker).
"""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import IO, Final

FRAME_BYTES_MAX: Final = 1 << 30  # a batch of the API's 1,000 largest envelopes is ~17 MB
_LENGTH: Final = struct.Struct("<Q")
_PROJECT_ROOT: Final = Path(__file__).resolve().parent.parent


def write_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(_LENGTH.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def read_frame(stream: IO[bytes], max_bytes: int | None = FRAME_BYTES_MAX) -> bytes | None:
    """One length-prefixed frame, or None at the end of the stream; ValueError if it is over
    `max_bytes` (None: frames only this node's own process writes, bounded where made)."""
    head = stream.read(_LENGTH.size)
    if len(head) != _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(head)
    if max_bytes is not None and length > max_bytes:
        raise ValueError(f"a frame of {length} bytes, at most {max_bytes}")
    payload = stream.read(length)
    return payload if len(payload) == length else None


def start_child(
    module: str, *arguments: str, pass_fds: tuple[int, ...] = ()
) -> subprocess.Popen[bytes]:
    """`python -m module arguments` with this interpreter, finding this checkout first;
    `pass_fds` stay open in the child."""
    paths = [str(_PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return subprocess.Popen(
        [sys.executable, "-m", module, *arguments],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
        pass_fds=pass_fds,
    )


def stop_child(process: subprocess.Popen[bytes], seconds: float) -> None:
    """Close its stdin (it ends on its own), wait, and kill it only if it does not."""
    assert process.stdin is not None and process.stdout is not None
    with contextlib.suppress(OSError):  # a dead child's pipe may not flush
        process.stdin.close()
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=seconds)
    process.stdout.close()
