"""Signature checks in a worker process: beside the node's interpreter, not inside it.

libsodium releases the GIL while it checks a signature, but a thread that checked one must
take the GIL back before the next, and while another thread runs Python (the block loop,
request parsing) that wait lasts the interpreter's switch interval, 5 ms. One verifying
thread beside a busy interpreter managed ~1,400 checks/s on the 2-core development machine
instead of ~24,000 (docs/decisions/0003). A worker process has an interpreter of its own.

`SignatureWorker.check` sends a batch to `python -m consensus.verifier` through a pipe, as
`ledger.transactions.SignedMessage`s in `marshal` form (bytes, strings and tuples: plain
data, never code), and reads back `check_signed_messages`' answers. One batch at a time: one
worker checks them in order anyway. A small batch is checked in the calling thread, where it
costs less than the round trip. If the worker dies, its batch is checked in the calling
thread and the next batch starts a new worker, so a lost worker costs speed, never a wrong
answer.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Final

from ledger.crypto import SignatureError
from ledger.errors import LedgerError
from ledger.transactions import (
    Envelope,
    SignedMessage,
    check_signatures,
    check_signed_messages,
    signed_message,
)

BATCH_MIN: Final = 64  # smaller batches are checked in the calling thread
FRAME_BYTES_MAX: Final = 1 << 30  # a batch of the API's 1,000 largest envelopes is ~17 MB
STOP_SECONDS: Final = 5.0
_LENGTH: Final = struct.Struct("<Q")
_PROJECT_ROOT: Final = Path(__file__).resolve().parent.parent


def _write_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(_LENGTH.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def _read_frame(stream: IO[bytes]) -> bytes | None:
    """One length-prefixed frame, or None at the end of the stream."""
    head = stream.read(_LENGTH.size)
    if len(head) != _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(head)
    if length > FRAME_BYTES_MAX:
        raise ValueError(f"a frame of {length} bytes, at most {FRAME_BYTES_MAX}")
    payload = stream.read(length)
    return payload if len(payload) == length else None


class SignatureWorker:
    """A worker process for batches of signature checks, started at the first large batch."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self.restarts = 0  # workers started after one was lost

    def check(self, envelopes: Sequence[Envelope]) -> list[LedgerError | None]:
        """For each envelope, in order, None or the error of its first bad signature."""
        if len(envelopes) < BATCH_MIN:
            return check_signatures(envelopes)
        request = marshal.dumps([signed_message(envelope) for envelope in envelopes])
        with self._lock:
            answer = self._exchange(request)
        if answer is None:
            return check_signatures(envelopes)
        failures: list[str | None] = marshal.loads(answer)
        assert len(failures) == len(envelopes), "the worker answers every item, in order"
        return [None if failure is None else SignatureError(failure) for failure in failures]

    def close(self) -> None:
        """Stop the worker (it exits when its input closes); idempotent."""
        with self._lock:
            self._stop()

    def _exchange(self, request: bytes) -> bytes | None:
        if self._process is None:
            self._process = _start_worker()
        process = self._process
        assert process.stdin is not None and process.stdout is not None
        try:
            _write_frame(process.stdin, request)
            answer = _read_frame(process.stdout)
        except (OSError, ValueError):
            answer = None
        if answer is None:  # the worker died or broke the protocol: replace it
            self._stop()
            self.restarts += 1
        return answer

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None and process.stdout is not None
        with contextlib.suppress(OSError):  # a dead worker's pipe may not flush
            process.stdin.close()
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_SECONDS)
        process.stdout.close()


def _start_worker() -> subprocess.Popen[bytes]:
    """`python -m consensus.verifier` with this interpreter, finding this checkout first."""
    paths = [str(_PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return subprocess.Popen(
        [sys.executable, "-m", "consensus.verifier"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
    )


def serve(source: IO[bytes], sink: IO[bytes]) -> None:
    """The worker: answer each batch in order until the node closes the pipe."""
    while (request := _read_frame(source)) is not None:
        items: list[SignedMessage] = marshal.loads(request)
        _write_frame(sink, marshal.dumps(check_signed_messages(items)))


def _main() -> None:
    # The node stops its worker by closing the pipe; a Ctrl-C meant for the node is not ours.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Answers go to a private copy of stdout; anything printed by accident goes to stderr.
    sink = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    with sink:
        serve(sys.stdin.buffer, sink)


if __name__ == "__main__":
    _main()
