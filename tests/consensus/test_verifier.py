"""The signature worker process: the same answers as checking in-process, whatever happens to it.

A real worker (`python -m consensus.verifier`) checks the large batches here; the protocol
loop itself (`serve`) is also driven in-process, through byte streams.
"""

from __future__ import annotations

import io
import marshal
import struct
from collections.abc import Iterator, Sequence

import pytest

from consensus.pool import Pool
from consensus.verifier import BATCH_MIN, SignatureWorker, serve
from ledger.errors import LedgerError
from ledger.transactions import Envelope, check_signatures, signed_message
from ledger.worker import FRAME_BYTES_MAX, read_frame
from tests.consensus.test_pool import envelope, tampered
from tests.factory import key


def answers(results: Sequence[LedgerError | None]) -> list[tuple[str, str] | None]:
    return [None if error is None else (error.code, error.message) for error in results]


def batch(size: int, *, bad_every: int = 7) -> list[Envelope]:
    signers = [key(f"verifier-{i}") for i in range(size)]
    return [
        tampered(envelope(signer, 1), position=i) if i % bad_every == 3 else envelope(signer, 1)
        for i, signer in enumerate(signers)
    ]


@pytest.fixture(scope="module")
def large() -> list[Envelope]:
    return batch(BATCH_MIN + 16)


@pytest.fixture
def worker() -> Iterator[SignatureWorker]:
    started = SignatureWorker()
    yield started
    started.close()


def test_a_large_batch_gets_the_in_process_answers(
    worker: SignatureWorker, large: list[Envelope]
) -> None:
    expected = answers(check_signatures(large))
    assert any(expected) and expected.count(None) > len(large) // 2
    assert answers(worker.check(large)) == expected
    assert worker.child.process is not None, "a large batch goes to the worker"
    assert answers(worker.check(large)) == expected, "and the worker serves the next one too"
    assert worker.child.restarts == 0


def test_a_small_batch_is_checked_without_a_worker(worker: SignatureWorker) -> None:
    small = batch(BATCH_MIN - 1)
    assert answers(worker.check(small)) == answers(check_signatures(small))
    assert worker.child.process is None


def test_a_lost_worker_costs_speed_not_answers(
    worker: SignatureWorker, large: list[Envelope]
) -> None:
    expected = answers(check_signatures(large))
    worker.check(large)
    first = worker.child.process
    assert first is not None
    first.kill()
    first.wait()
    assert answers(worker.check(large)) == expected, "checked in the calling thread instead"
    assert worker.child.restarts == 1 and worker.child.process is None
    assert answers(worker.check(large)) == expected
    assert worker.child.process is not None and worker.child.process.pid != first.pid


def test_close_stops_the_worker_and_may_be_repeated(
    worker: SignatureWorker, large: list[Envelope]
) -> None:
    worker.check(large)
    process = worker.child.process
    assert process is not None
    worker.close()
    assert process.returncode == 0, "the worker ends when its input closes"
    worker.close()
    assert answers(worker.check(large)) == answers(check_signatures(large)), "starts again"


def test_a_pool_admits_through_the_worker(worker: SignatureWorker, large: list[Envelope]) -> None:
    pool = Pool(check_signatures=worker.check)
    admitted = pool.add_many(large, lambda signer: None)
    expected = check_signatures(large)
    assert [a.error is None for a in admitted] == [e is None for e in expected]
    assert worker.child.process is not None


def frames(*payloads: bytes) -> bytes:
    return b"".join(struct.pack("<Q", len(p)) + p for p in payloads)


def test_serve_answers_each_frame_in_order(large: list[Envelope]) -> None:
    first = [signed_message(e) for e in large[:5]]
    second = [signed_message(e) for e in large[5:9]]
    sink = io.BytesIO()
    serve(io.BytesIO(frames(marshal.dumps(first), marshal.dumps(second))), sink)
    sink.seek(0)
    replies = [read_frame(sink), read_frame(sink), read_frame(sink)]
    assert replies[2] is None
    expected = answers(check_signatures(large[:9]))
    got = [*marshal.loads(replies[0] or b""), *marshal.loads(replies[1] or b"")]
    assert [None if m is None else ("bad_signature", m) for m in got] == expected


def test_frames_are_bounded_and_a_cut_frame_is_the_end() -> None:
    assert read_frame(io.BytesIO(frames(b"abc")[:-1])) is None
    assert read_frame(io.BytesIO(b"\x01\x00")) is None
    too_long = struct.pack("<Q", FRAME_BYTES_MAX + 1)
    with pytest.raises(ValueError, match="at most"):
        read_frame(io.BytesIO(too_long))
