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

import marshal
from collections.abc import Sequence
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
from ledger.worker import Child, read_frame, run_child, write_frame

BATCH_MIN: Final = 4  # smaller batches are checked in the calling thread (a round trip costs
# about one check on the development machine; beyond it the worker keeps the GIL free)
STOP_SECONDS: Final = 5.0


class SignatureWorker:
    """A worker process for batches of signature checks, started at the first large batch."""

    def __init__(self) -> None:
        self.child = Child("consensus.verifier", stop_seconds=STOP_SECONDS)

    def check(self, envelopes: Sequence[Envelope]) -> list[LedgerError | None]:
        """For each envelope, in order, None or the error of its first bad signature."""
        if len(envelopes) < BATCH_MIN:
            return check_signatures(envelopes)
        answer = self.child.exchange(
            marshal.dumps([signed_message(envelope) for envelope in envelopes])
        )
        if answer is None:
            return check_signatures(envelopes)
        failures: list[str | None] = marshal.loads(answer)
        assert len(failures) == len(envelopes), "the worker answers every item, in order"
        return [None if failure is None else SignatureError(failure) for failure in failures]

    def close(self) -> None:
        """Stop the worker (it exits when its input closes); idempotent."""
        self.child.close()


def serve(source: IO[bytes], sink: IO[bytes]) -> None:
    """The worker: answer each batch in order until the node closes the pipe."""
    while (request := read_frame(source)) is not None:
        items: list[SignedMessage] = marshal.loads(request)
        write_frame(sink, marshal.dumps(check_signed_messages(items)))


if __name__ == "__main__":
    run_child(serve)
