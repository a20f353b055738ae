"""The signed-message log: durable, one message per slot, a torn tail cut, one process at a
time, and a replica rebuilt from it re-sends byte for byte."""

from __future__ import annotations

import itertools
import multiprocessing
import os
from pathlib import Path

import pytest

from consensus.messages import encode_message
from consensus.replica import Broadcast, Persist, Replica, SignedMessage
from consensus.wal import (
    SIGNER_FILE_NAME,
    ConflictingSignature,
    CorruptLog,
    LogInUse,
    SignedLog,
    WrongKey,
)
from ledger.crypto import PrivateKey
from ledger.limits import TRANSACTION_BYTES_MAX_DEFAULT
from tests.consensus.simulation.world import transaction_source
from tests.consensus.test_replica import KEYS, T0, WORLD, block, proposal, proposer, vote

LIMIT = TRANSACTION_BYTES_MAX_DEFAULT


def open_log(tmp_path: Path, key: PrivateKey = KEYS[1]) -> SignedLog:
    return SignedLog(
        tmp_path / "signed.ndjson", public_key=key.public_key_hex, transaction_bytes_max=LIMIT
    )


def test_appended_messages_are_read_back_after_reopening(tmp_path: Path) -> None:
    value = block()
    messages: list[SignedMessage] = [proposal(0, value), vote(1, "prevote", 0, value.block_hash())]
    log = open_log(tmp_path)
    for message in messages:
        log.append(message)
    log.append(messages[0])  # the same message again: nothing new
    log.close()
    again = open_log(tmp_path)
    assert [encode_message(m) for m in again.read()] == [encode_message(m) for m in messages]
    again.close()


def test_a_different_message_for_a_taken_slot_is_refused(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(vote(1, "prevote", 0, None))
    with pytest.raises(ConflictingSignature) as caught:
        log.append(vote(1, "prevote", 0, block().block_hash()))
    assert caught.value.code == "conflicting_signature"
    log.close()
    assert len((tmp_path / "signed.ndjson").read_bytes().splitlines()) == 1


def test_a_locks_block_and_others_prevotes_are_kept_beside_its_own_votes(
    tmp_path: Path,
) -> None:
    """What a lock needs after a restart (consensus.replica, `_keep_locked_block`): the
    proposal and the other validators' prevotes for its block, each filed under its signer
    so none takes this validator's own slot; one batch, one fsync, all or nothing."""
    value = block()
    own = vote(1, "prevote", 0, value.block_hash())
    polka = [vote(i, "prevote", 0, value.block_hash()) for i in (0, 2)]
    lock = vote(1, "precommit", 0, value.block_hash())
    log = open_log(tmp_path)
    log.append(own)
    log.append_all([proposal(0, value), *polka, lock])
    with pytest.raises(ConflictingSignature):  # a conflict refuses the batch before writing
        log.append_all([vote(3, "prevote", 1, None), vote(1, "precommit", 0, None)])
    log.close()
    again = open_log(tmp_path)  # the signer check takes others' prevotes
    expected: list[SignedMessage] = [own, proposal(0, value), *polka, lock]
    assert [encode_message(m) for m in again.read()] == [encode_message(m) for m in expected]
    again.compact(above_height=0)  # nothing decided yet: all kept, each line once
    again.close()
    lines = (tmp_path / "signed.ndjson").read_bytes().splitlines()
    assert lines == [encode_message(m) for m in expected]


def test_another_validators_log_is_refused_though_its_directory_names_this_key(
    tmp_path: Path,
) -> None:
    """Found by review: since a log keeps other validators' prevotes, another key's votes
    were taken whenever the signer file was there, so validator 1's log copied into
    validator 2's directory opened, and its replica stopped on an assertion. Another key's
    vote is taken only as a prevote of a round this validator prevoted in itself."""
    value = block()
    log = open_log(tmp_path, KEYS[1])
    log.append(vote(1, "prevote", 0, value.block_hash()))
    log.append(vote(1, "precommit", 0, value.block_hash()))
    log.close()
    (tmp_path / SIGNER_FILE_NAME).write_text(KEYS[2].public_key_hex + "\n")
    with pytest.raises(WrongKey) as refused:
        open_log(tmp_path, KEYS[2])
    assert "did not keep for a lock" in refused.value.message


def test_each_line_of_a_run_is_fsynced_before_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: a run written in one go with one fsync may reach the disk out of
    order, a damaged line before whole ones, which a restart refuses; each line is synced."""
    value = block()
    log = open_log(tmp_path)
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(len((tmp_path / "signed.ndjson").read_bytes()))
        real_fsync(fd)

    monkeypatch.setattr("consensus.wal.os.fsync", counting_fsync)
    run: list[SignedMessage] = [
        vote(1, "prevote", 0, value.block_hash()),
        proposal(0, value),
        vote(0, "prevote", 0, value.block_hash()),
        vote(1, "precommit", 0, value.block_hash()),
    ]
    log.append_all(run)
    log.close()
    ends = list(itertools.accumulate(len(encode_message(m)) + 1 for m in run))
    assert synced == ends


def test_a_torn_last_line_is_cut_and_a_damaged_one_refused(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(vote(1, "prevote", 0, None))
    log.close()
    path = tmp_path / "signed.ndjson"
    whole = path.read_bytes()
    path.write_bytes(whole + encode_message(vote(1, "precommit", 0, None))[:40])
    log = open_log(tmp_path)
    assert len(log.read()) == 1
    log.close()
    assert path.read_bytes() == whole
    path.write_bytes(b"{not json\n" + whole)
    with pytest.raises(CorruptLog):
        open_log(tmp_path)


def _try_open(path: str, results: multiprocessing.Queue[str]) -> None:
    try:
        SignedLog(Path(path), public_key=KEYS[1].public_key_hex, transaction_bytes_max=LIMIT)
        results.put("opened")
    except LogInUse as error:
        results.put(error.code)


def test_a_second_process_cannot_open_the_log(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    results: multiprocessing.Queue[str] = multiprocessing.Queue()
    child = multiprocessing.get_context("fork").Process(
        target=_try_open, args=(str(tmp_path / "signed.ndjson"), results)
    )
    child.start()
    child.join(timeout=30)
    assert results.get(timeout=5) == "log_in_use"
    log.close()


def test_compaction_keeps_only_heights_above_the_decided_one(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(vote(1, "prevote", 0, None, height=1))
    log.append(vote(1, "prevote", 0, None, height=2))
    log.compact(above_height=1)
    log.compact(above_height=1)  # nothing to drop
    log.append(vote(1, "precommit", 0, None, height=2))
    log.close()
    again = open_log(tmp_path)
    assert [(m.height, m.vote_type) for m in again.read() if not hasattr(m, "block")] == [
        (2, "prevote"),
        (2, "precommit"),
    ]
    # What was forgotten is remembered as a height never to sign at again.
    assert again.decided_height == 1
    again.compact(above_height=2)
    again.close()
    assert (tmp_path / "signed.ndjson").read_bytes() == b'{"decided_height":2}\n'
    assert open_log(tmp_path).decided_height == 2


@pytest.mark.parametrize(
    "first", [b'{"decided_height":-1}', b'{"decided_height":1,"x":2}', b'{"decided_height":"1"}']
)
def test_a_damaged_decided_height_is_refused(tmp_path: Path, first: bytes) -> None:
    (tmp_path / "signed.ndjson").write_bytes(first + b"\n")
    with pytest.raises(CorruptLog, match="line 1"):
        open_log(tmp_path)


def test_a_replica_rebuilt_from_the_log_resends_byte_for_byte(tmp_path: Path) -> None:
    index = proposer(1, 0)
    first = Replica(
        key=KEYS[index],
        state=WORLD.genesis,
        last_certificate=None,
        transactions=transaction_source(WORLD),
    )
    log = open_log(tmp_path)
    sent = []
    for effect in first.on_start(T0):
        if isinstance(effect, Persist):
            log.append(effect.message)
        elif isinstance(effect, Broadcast):
            assert effect.message in log.read(), "persisted before it is sent"
            sent.append(encode_message(effect.message))
    assert sent
    log.close()
    log = open_log(tmp_path)
    restarted = Replica(
        key=KEYS[index],
        state=WORLD.genesis,
        last_certificate=None,
        transactions=transaction_source(WORLD),
        signed=log.read(),
    )
    resent = [
        encode_message(e.message) for e in restarted.on_start(T0 + 5000) if isinstance(e, Broadcast)
    ]
    assert resent[: len(sent)] == sent
    log.close()


def test_the_log_keeps_its_key(tmp_path: Path) -> None:
    """Found by review: a validator's data directory started with another party's key file
    signed as that party, and the chain recorded evidence against the innocent party."""
    log = open_log(tmp_path)  # KEYS[1]'s
    log.append(vote(1, "prevote", 0, None))
    log.compact(above_height=1)  # the log now holds no vote that names its key
    log.close()
    assert (tmp_path / SIGNER_FILE_NAME).read_text() == KEYS[1].public_key_hex + "\n"
    with pytest.raises(WrongKey) as refused:
        open_log(tmp_path, KEYS[2])
    assert refused.value.code == "wrong_key" and KEYS[2].public_key_hex[:16] in str(refused.value)
    assert (tmp_path / SIGNER_FILE_NAME).read_text() == KEYS[1].public_key_hex + "\n"
    open_log(tmp_path).close()  # its own key still opens it


def test_a_log_from_before_its_key_was_written_down_is_checked_by_its_votes(
    tmp_path: Path,
) -> None:
    log = open_log(tmp_path)
    log.append(vote(1, "prevote", 0, None))
    log.close()
    (tmp_path / SIGNER_FILE_NAME).unlink()
    with pytest.raises(WrongKey):
        open_log(tmp_path, KEYS[2])
    assert not (tmp_path / SIGNER_FILE_NAME).exists()
    open_log(tmp_path).close()
    assert (tmp_path / SIGNER_FILE_NAME).read_text() == KEYS[1].public_key_hex + "\n"
