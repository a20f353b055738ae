"""Child processes of a node: how they are started, spoken to and stopped.

A node hands CPU-bound or GIL-bound work (signature checks, request bodies, block writes) to a
child `python -m MODULE` reading length-prefixed frames on its stdin and answering one frame
for each on its stdout. The child ends when its stdin closes, so a node that dies (even by
SIGKILL) leaves none behind. `Child` is the node's side, `run_child` the child's main. Used by
`ledger.store` (the block writer), `consensus.verifier` (the signature worker) and
`api.intake` (the submission worker).
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
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


class Child:
    """A child `python -m module arguments`, asked one request at a time (any thread),
    started at the first request and replaced at the next after it was lost."""

    def __init__(
        self,
        module: str,
        *arguments: str,
        stop_seconds: float,
        pass_fds: tuple[int, ...] = (),
        start_now: bool = False,
    ) -> None:
        """`pass_fds` stay open in the child; `start_now` starts it at once (its interpreter
        starts on the other core meanwhile, and the first request does not wait for it)."""
        self.module = module
        self.arguments = arguments
        self.stop_seconds = stop_seconds
        self.pass_fds = pass_fds
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0  # children started after one was lost
        self._lock = threading.Lock()
        if start_now:
            self.process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        return start_child(self.module, *self.arguments, pass_fds=self.pass_fds)

    def exchange(
        self, request: bytes, *, answer_bytes_max: int | None = FRAME_BYTES_MAX
    ) -> bytes | None:
        """The child's answer to `request`, or None if the child died or broke the protocol
        (it is stopped then, and the next request starts a new one)."""
        with self._lock:
            if self.process is None:
                self.process = self._start()
            process = self.process
            assert process.stdin is not None and process.stdout is not None
            try:
                write_frame(process.stdin, request)
                answer = read_frame(process.stdout, answer_bytes_max)
            except (OSError, ValueError):
                answer = None
            if answer is None:
                self._stop()
                self.restarts += 1
            return answer

    def close(self) -> None:
        """Stop the child (it exits when its input closes); idempotent. A request under way
        is waited for `stop_seconds`, then the child is killed (a request that never ends
        had held this for good; found by review)."""
        if not self._lock.acquire(timeout=self.stop_seconds):
            self.kill()
            self._lock.acquire()
        try:
            self._stop()
        finally:
            self._lock.release()

    @property
    def busy(self) -> bool:
        """A request is under way (its answer not yet read)."""
        return self._lock.locked()

    def kill(self) -> None:
        """Kill the child now, without waiting for a request under way: one that never
        answers (a hung disk, a stopped process) held `close`, and a node's stop, for good.
        The request gets no answer (None)."""
        process = self.process
        if process is not None:
            with contextlib.suppress(OSError):
                process.kill()

    def _stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            stop_child(process, self.stop_seconds)


def run_child(serve: Callable[[IO[bytes], IO[bytes]], None]) -> None:
    """A child's main: `serve(requests, answers)` until the node closes the pipe."""
    # The node stops its child by closing the pipe; a Ctrl-C meant for the node is not the
    # child's (and a block being written must finish or roll back, not stop halfway). Nor is
    # a SIGTERM sent to the node's whole process group (systemd's stop, `timeout`): the node
    # stops gracefully on it and then closes the pipe; a node killed outright closes it too.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Answers go to a private copy of stdout; anything printed by accident goes to stderr.
    sink = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        with sink:
            serve(sys.stdin.buffer, sink)
    except BrokenPipeError:
        pass  # the node is gone: nothing reads what is left in the pipe's buffer
