"""The intake worker: a large submission gets exactly the answers of parsing it in-process.

A real worker (`python -m api.intake`) parses the large bodies here; its answers are compared
item by item (envelope, id, leaf, signature check, or the error's code and message) with
`parse_submission` run in the test's own thread, over bodies mixing good envelopes, bad
signatures and items of every kind of fault.
"""

from __future__ import annotations

import io
import json
import marshal
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from api.admission import INTAKE_WORKERS
from api.intake import (
    WORKER_BODY_BYTES_MIN,
    IntakeWorker,
    Submission,
    parse_submission,
    serve,
)
from ledger.errors import LedgerError
from ledger.transactions import Envelope, restore_envelope
from ledger.worker import read_frame
from tests.consensus.test_pool import envelope, tampered
from tests.factory import key

LIMITS: dict[str, int] = {"envelopes_max": 1000, "transaction_bytes_max": 16384}


def mixed_items(size: int) -> list[Any]:
    """Good envelopes, bad signatures (every 7th), and a fault of shape every 11th item."""
    items: list[Any] = []
    for i in range(size):
        signer = key(f"intake-{i}")
        good = envelope(signer, 1)
        if i % 11 == 5:
            broken = good.to_json()
            broken["tx"]["payload"]["quantity"] = 0 if i % 2 else "10"
            items.append(broken)
        elif i % 7 == 3:
            items.append(tampered(good, position=i).to_json())
        else:
            items.append(good.to_json())
    return items


def body_of(items: Any) -> bytes:
    return json.dumps(items, separators=(",", ":")).encode()


def error_of(error: LedgerError | None) -> tuple[str, str] | None:
    return None if error is None else (error.code, error.message)


def summary(submission: Submission) -> list[Any]:
    """Everything an answer depends on, per item."""
    return [
        error_of(item)
        if isinstance(item, LedgerError)
        else (
            item.tx_id,
            item.leaf,
            item.signing_bytes(),
            item,
            error_of(submission.signature_errors.get(item.leaf)),
        )
        for item in submission.items
    ] + [submission.single]


@pytest.fixture(scope="module")
def large_body() -> bytes:
    body = body_of(mixed_items(200))
    assert len(body) >= WORKER_BODY_BYTES_MIN, "large enough to go to the worker"
    return body


@pytest.fixture
def worker() -> Iterator[IntakeWorker]:
    """One worker process, so that each test knows which one a body went to."""
    started = IntakeWorker(workers=1)
    yield started
    started.close()


def test_a_large_body_gets_the_in_process_answers(worker: IntakeWorker, large_body: bytes) -> None:
    expected = parse_submission(large_body, **LIMITS)
    kinds = {type(item) for item in expected.items}
    assert kinds == {Envelope, LedgerError} and expected.signature_errors, "a mixed body"
    assert summary(worker.parse(large_body, **LIMITS)) == summary(expected)
    assert worker.children[0].process is not None, "a large body goes to the worker"
    assert summary(worker.parse(large_body, **LIMITS)) == summary(expected), "and the next"
    assert worker.children[0].restarts == 0


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"[" + b" " * WORKER_BODY_BYTES_MIN + b"{]", "malformed_json"),
        (body_of([{"tx": {}, "signatures": []}] * 1001) + b" " * 8000, "limit_exceeded"),
    ],
)
def test_a_bad_large_body_gets_its_error_from_the_worker(
    worker: IntakeWorker, body: bytes, code: str
) -> None:
    assert len(body) >= WORKER_BODY_BYTES_MIN
    with pytest.raises(LedgerError) as in_process:
        parse_submission(body, **LIMITS)
    with pytest.raises(LedgerError) as from_worker:
        worker.parse(body, **LIMITS)
    assert in_process.value.code == from_worker.value.code == code
    assert from_worker.value.message == in_process.value.message
    assert worker.children[0].process is not None and worker.children[0].restarts == 0


def test_a_small_body_is_parsed_without_a_worker(worker: IntakeWorker) -> None:
    body = body_of(mixed_items(3)[0])
    assert summary(worker.parse(body, **LIMITS)) == summary(parse_submission(body, **LIMITS))
    assert worker.children[0].process is None


def test_a_lost_worker_costs_speed_not_answers(worker: IntakeWorker, large_body: bytes) -> None:
    expected = summary(parse_submission(large_body, **LIMITS))
    worker.parse(large_body, **LIMITS)
    first = worker.children[0].process
    assert first is not None
    first.kill()
    first.wait()
    assert summary(worker.parse(large_body, **LIMITS)) == expected, "parsed in this thread"
    assert worker.children[0].restarts == 1 and worker.children[0].process is None
    assert summary(worker.parse(large_body, **LIMITS)) == expected
    assert worker.children[0].process is not None and worker.children[0].process.pid != first.pid


def test_bodies_go_to_a_free_worker_each(large_body: bytes) -> None:
    """The node's default: INTAKE_WORKERS processes; two bodies given at once go to two of
    them, and each gets the in-process answer."""
    expected = summary(parse_submission(large_body, **LIMITS))
    intake = IntakeWorker()
    try:
        assert len(intake.children) == INTAKE_WORKERS >= 2
        with ThreadPoolExecutor(2) as threads:
            answers = list(threads.map(lambda _: intake.parse(large_body, **LIMITS), range(2)))
        assert [summary(answer) for answer in answers] == [expected, expected]
        assert [child.process is not None for child in intake.children[:2]] == [True, True]
        pids = {child.process.pid for child in intake.children if child.process is not None}
        assert len(pids) >= 2
        assert all(child.restarts == 0 for child in intake.children)
    finally:
        intake.close()
    assert all(child.process is None for child in intake.children), "close stops them all"


def test_serve_answers_each_body_in_order() -> None:
    bodies = [body_of(mixed_items(4)), b"{not json"]
    frames = b"".join(
        struct.pack("<Q", len(request)) + request
        for request in (marshal.dumps((body, 1000, 16384)) for body in bodies)
    )
    sink = io.BytesIO()
    serve(io.BytesIO(frames), sink)
    sink.seek(0)
    first, second = read_frame(sink), read_frame(sink)
    assert first is not None and second is not None and read_frame(sink) is None
    assert marshal.loads(first)[0] == "items" and len(marshal.loads(first)[2]) == 4
    assert marshal.loads(second)[:2] == ("error", "malformed_json")


def test_a_restored_envelope_is_the_parsed_one() -> None:
    original = envelope(key("intake-restore"), 3)
    restored = restore_envelope(
        original.tx, original.signatures, tx_id=original.tx_id, leaf=original.leaf
    )
    assert restored == original and restored.tx_id == original.tx_id
    assert restored.leaf == original.leaf and restored.signing_bytes() == original.signing_bytes()
    with pytest.raises(AssertionError, match="id and leaf agree"):
        restore_envelope(original.tx, original.signatures, tx_id="0" * 64, leaf=original.leaf)
