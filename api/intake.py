"""Submission intake: a request body turned into parsed, signature-checked envelopes.

`parse_submission` is the whole contract of `POST /v1/transactions` for its body: strict
decoding (SPEC §2.1), at most `envelopes_max` items, each checked against the edge's pydantic
model and then by the ledger's own parser (the authority, whose codes the answer carries),
and every signature checked (SPEC §2.3). Items are answered one by one: a bad item is its
error, beside the others.

For a large body this is most of the node's work per transaction (decoding, two validators,
canonical bytes and id, a signature check: ~70 us of the ~115 us the node process spent per
transaction of an array, docs/decisions/0003). `IntakeWorker` runs it in child processes
(`python -m api.intake`, `INTAKE_WORKERS` of them), beside the node's interpreter instead of
inside it, as `consensus.verifier` does for signatures alone and for the same reason (the
GIL). A worker answers plain data (`marshal`: strings, integers, bytes, lists, dicts, tuples) from
which the node rebuilds each envelope without computing anything again
(`ledger.transactions.restore_envelope`). A small body is handled in the calling thread,
where it costs less than the round trip. If a worker dies or breaks the protocol, its body
is handled in the calling thread and the next large body it is given starts a new one: a
lost worker costs speed, never a different answer.
"""

from __future__ import annotations

import marshal
import queue
from dataclasses import dataclass
from typing import IO, Any, Final

from api.admission import INTAKE_WORKERS, SMALL_BODY_BYTES
from api.schemas import validate_envelope
from ledger.crypto import SignatureError
from ledger.encoding import decode
from ledger.errors import LedgerError
from ledger.transactions import (
    Envelope,
    Signature,
    Transaction,
    check_signed_messages,
    parse_envelope,
    restore_envelope,
    signed_message,
)
from ledger.worker import Child, read_frame, run_child, write_frame

# ~60 envelopes: below, the calling thread is cheaper (api.admission queues by the same size)
WORKER_BODY_BYTES_MIN: Final = SMALL_BODY_BYTES
STOP_SECONDS: Final = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Submission:
    """A parsed body: whether it was one envelope (or an array), each item as an envelope or
    the error that refused it, and for each envelope its signature check (None: all good)."""

    single: bool
    items: list[Envelope | LedgerError]
    # An envelope's leaf (its bytes, signatures included) -> its first bad signature: an id
    # names the transaction alone, and a broken copy must not stand for a good one beside it.
    signature_errors: dict[bytes, LedgerError]

    @property
    def envelopes(self) -> list[Envelope]:
        return [item for item in self.items if isinstance(item, Envelope)]

    def signature_checks(self, envelopes: list[Envelope]) -> list[LedgerError | None]:
        return [self.signature_errors.get(envelope.leaf) for envelope in envelopes]


def parse_items(
    body: bytes, *, envelopes_max: int, transaction_bytes_max: int
) -> tuple[bool, list[Envelope | LedgerError]]:
    """Whether one envelope came (or an array), and each item parsed or its error. Raises
    `LedgerError` for a body that is not JSON or holds too many items."""
    value = decode(body)
    single = not isinstance(value, list)
    items = [value] if single else value
    if len(items) > envelopes_max:
        raise LedgerError(
            f"{len(items)} envelopes, at most {envelopes_max} at once", code="limit_exceeded"
        )
    parsed: list[Envelope | LedgerError] = []
    for item in items:
        try:
            validate_envelope(item)  # the edge's contract, then the ledger's own parser
            parsed.append(parse_envelope(item, transaction_bytes_max=transaction_bytes_max))
        except LedgerError as error:
            parsed.append(error)
    return single, parsed


def parse_submission(body: bytes, *, envelopes_max: int, transaction_bytes_max: int) -> Submission:
    """`parse_items`, then every envelope's signatures checked (in this thread)."""
    single, items = parse_items(
        body, envelopes_max=envelopes_max, transaction_bytes_max=transaction_bytes_max
    )
    envelopes = [item for item in items if isinstance(item, Envelope)]
    failures = check_signed_messages([signed_message(envelope) for envelope in envelopes])
    return Submission(
        single=single,
        items=items,
        signature_errors={
            envelope.leaf: SignatureError(failure)
            for envelope, failure in zip(envelopes, failures, strict=True)
            if failure is not None
        },
    )


# --- the worker's plain-data answer ---------------------------------------------------------------
# ("error", code, message) for the body; per item ("item", code, message) for a refused one, or
# ("envelope", chain_id, type, signer, nonce, payload, signatures, tx_id, leaf, signature failure).


def _answer(body: bytes, envelopes_max: int, transaction_bytes_max: int) -> bytes:
    try:
        single, items = parse_items(
            body, envelopes_max=envelopes_max, transaction_bytes_max=transaction_bytes_max
        )
    except LedgerError as error:
        return marshal.dumps(("error", error.code, error.message))
    envelopes = [item for item in items if isinstance(item, Envelope)]
    failures = iter(check_signed_messages([signed_message(e) for e in envelopes]))
    answers: list[tuple[Any, ...]] = []
    for item in items:
        if isinstance(item, LedgerError):
            answers.append(("item", item.code, item.message))
            continue
        tx = item.tx
        answers.append(
            (
                "envelope",
                tx.chain_id,
                tx.type,
                tx.signer,
                tx.nonce,
                tx.payload,
                tuple((s.public_key, s.signature) for s in item.signatures),
                item.tx_id,
                item.leaf,
                next(failures),
            )
        )
    return marshal.dumps(("items", single, answers))


def _submission(answer: Any) -> Submission:
    """Rebuild a `Submission` from the worker's answer (raises the body's own error)."""
    if answer[0] == "error":
        raise LedgerError(answer[2], code=answer[1])
    _, single, answers = answer
    items: list[Envelope | LedgerError] = []
    signature_errors: dict[bytes, LedgerError] = {}
    for entry in answers:
        if entry[0] == "item":
            items.append(LedgerError(entry[2], code=entry[1]))
            continue
        _, chain_id, kind, signer, nonce, payload, signatures, tx_id, leaf, failure = entry
        envelope = restore_envelope(
            Transaction(chain_id=chain_id, type=kind, signer=signer, nonce=nonce, payload=payload),
            tuple(Signature(public_key=key, signature=value) for key, value in signatures),
            tx_id=tx_id,
            leaf=leaf,
        )
        items.append(envelope)
        if failure is not None:
            signature_errors[leaf] = SignatureError(failure)
    return Submission(single=single, items=items, signature_errors=signature_errors)


class IntakeWorker:
    """`parse_submission` in worker processes for large bodies (each started at its first
    body); a body goes to a worker that is free, and waits for one if none is."""

    def __init__(self, workers: int = INTAKE_WORKERS) -> None:
        self.children = [Child("api.intake", stop_seconds=STOP_SECONDS) for _ in range(workers)]
        self._idle: queue.SimpleQueue[Child] = queue.SimpleQueue()
        for child in self.children:
            self._idle.put(child)

    def parse(self, body: bytes, *, envelopes_max: int, transaction_bytes_max: int) -> Submission:
        if len(body) >= WORKER_BODY_BYTES_MIN:
            child = self._idle.get()
            try:
                answer = child.exchange(marshal.dumps((body, envelopes_max, transaction_bytes_max)))
            finally:
                self._idle.put(child)
            if answer is not None:
                return _submission(marshal.loads(answer))
        return parse_submission(
            body, envelopes_max=envelopes_max, transaction_bytes_max=transaction_bytes_max
        )

    def close(self) -> None:
        """Stop the workers (each exits when its input closes); idempotent."""
        for child in self.children:
            child.close()


def serve(source: IO[bytes], sink: IO[bytes]) -> None:
    """The worker: answer each body in order until the node closes the pipe."""
    while (request := read_frame(source)) is not None:
        body, envelopes_max, transaction_bytes_max = marshal.loads(request)
        write_frame(sink, _answer(body, envelopes_max, transaction_bytes_max))


if __name__ == "__main__":
    run_child(serve)
