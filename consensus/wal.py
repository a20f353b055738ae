"""The signed-message log: what this validator signed, durable before it is sent (SPEC §5.4).

The replica's `Persist(message)` effect lands here. `SignedLog.append` writes the message's
wire form (`consensus.messages.encode_message`, canonical JSON, one line) and fsyncs the file
before it returns, so the shell carries out the `Broadcast` that follows only once the message
would survive a crash. On restart `SignedLog.read` gives the replica its `signed=` back, and
the replica re-sends those messages byte for byte instead of signing others: a validator never
signs two different messages for one (height, round, type), even across crashes.

Rules the log keeps:
- One message per slot (height, round, type): appending a different message to a taken slot
  is a bug and raises `ConflictingSignature` before anything is written; the same message
  again is a no-op. Besides what it signed, a validator keeps here what a lock needs after a
  restart (consensus.replica, `_keep_locked_block`): the proposal that carries the locked
  block, in that round's proposal slot (a round has one proposer), and the other
  validators' prevotes for it, each filed under its own signer.
- A torn last line (a crash during `append`, before its fsync returned) was never sent: it
  is cut off on open. Any other unreadable line means the file was damaged: `CorruptLog`,
  and the node refuses to start rather than sign anew.
- One process at a time: a lock file beside it is held (`flock`) while open, so two
  processes started on one data directory cannot both sign (`LogInUse`).
- One key: the public key it signs with is written beside it (`SIGNER_FILE_NAME`) when it
  is first opened, and the log refuses to open with another (`WrongKey`). A review started a
  validator's data directory with another party's key file: the node signed as that party
  beside it, and the chain recorded evidence of equivocation against a party that had done
  nothing wrong. A log from before the key was written down is taken if none of its votes
  is another key's.
- `compact(above_height)` keeps only messages above a decided height, rewriting the file
  through a temporary file, fsync and rename (the old file stays whole until the rename).
  The rewritten file starts with the line `{"decided_height":H}`: every height up to H was
  decided, and what this validator signed there is forgotten, so it must never sign at
  those heights again (`decided_height`). A store that is behind it (rebuilt from peers,
  `tanlian node --resync`) catches up by block sync before its replica signs anything: with
  the messages gone, a replica at such a height could sign a second, different message for
  a slot it used (consensus.node).

    ConsensusError
    └── WalError               wal_error
        ├── ConflictingSignature  two different messages for one slot
        ├── CorruptLog            a line in the middle does not decode
        ├── LogInUse              another process holds the log
        └── WrongKey              the log was signed with another key
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Final

from consensus.messages import ConsensusError, Proposal, decode_message, encode_message
from consensus.quorum import PREVOTE
from ledger.encoding import canonical, decode
from ledger.errors import LedgerError
from ledger.evidence import Vote
from ledger.store import fsync_directory

SignedMessage = Vote | Proposal

PROPOSAL_SLOT: Final = "proposal"
WAL_FILE_NAME: Final = "consensus-signed.ndjson"
SIGNER_FILE_NAME: Final = "consensus-signer.txt"  # beside the log: the key it signs with
DECIDED_HEIGHT_FIELD: Final = "decided_height"


class WalError(ConsensusError):
    code = "wal_error"


class ConflictingSignature(WalError):
    code = "conflicting_signature"


class CorruptLog(WalError):
    code = "corrupt_log"


class LogInUse(WalError):
    code = "log_in_use"


class WrongKey(WalError):
    code = "wrong_key"


def slot_of(message: SignedMessage) -> tuple[int, int, str]:
    kind = message.vote_type if isinstance(message, Vote) else PROPOSAL_SLOT
    return (message.height, message.round, kind)


class SignedLog:
    """An append-only, fsynced file of this validator's signed messages; see the module
    docstring. Not thread-safe: one thread (the node's consensus thread) owns it."""

    def __init__(self, path: Path, *, public_key: str, transaction_bytes_max: int) -> None:
        self.path = path
        self.public_key = public_key
        self.transaction_bytes_max = transaction_bytes_max
        self._slots: dict[tuple[int, int, str] | tuple[int, int, str, str], bytes] = {}
        self._messages: list[SignedMessage] = []
        self.decided_height = 0  # this validator signs nothing at or below (see above)
        # The lock is on a file of its own, so compaction's rename never leaves the log open to
        # a second process; it is released when this process closes it or dies.
        self._lock: BinaryIO = open(path.with_name(path.name + ".lock"), "a+b")  # noqa: SIM115
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            self._lock.close()
            raise LogInUse(f"{path}: another process holds this signed-message log") from error
        self._file: BinaryIO = open(path, "a+b")  # noqa: SIM115 - closed by close()
        try:
            self._load()
            self._check_signer()
        except BaseException:
            self.close()
            raise

    def _load(self) -> None:
        self._file.seek(0)
        data = self._file.read()
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline, as every append does
        for number, line in enumerate(lines, start=1):
            if number == 1 and line.startswith(b'{"' + DECIDED_HEIGHT_FIELD.encode()):
                self.decided_height = self._decided_height(line)
                continue
            try:
                message = decode_message(line, transaction_bytes_max=self.transaction_bytes_max)
            except LedgerError as error:
                raise CorruptLog(f"{self.path}: line {number}: {error.message}") from error
            if not isinstance(message, (Vote, Proposal)):
                raise CorruptLog(f"{self.path}: line {number}: a decision is never signed here")
            self._remember(message, line)
        if torn:  # a crash during append: that message was never sent
            self._file.truncate(len(data) - len(torn))
            self._file.flush()
            os.fsync(self._file.fileno())

    def _check_signer(self) -> None:
        """This log is `public_key`'s (see the module docstring), written down if it was not."""
        signer_file = self.path.with_name(SIGNER_FILE_NAME)
        try:
            signer = signer_file.read_text(encoding="ascii").strip()
        except FileNotFoundError:  # its first vote is its own (it prevotes before it keeps any)
            signer = next(
                (m.public_key for m in self._messages if isinstance(m, Vote)), self.public_key
            )
        except (OSError, UnicodeError) as error:
            raise CorruptLog(f"{signer_file}: unreadable: {error}") from error
        # Another key's vote is taken only as a kept prevote: one of a round the signer
        # prevoted in itself. Any other is another validator's log (found by review: with the
        # signer file in place, such a log had opened and stopped the replica on an assertion).
        own_prevotes = {
            (m.height, m.round)
            for m in self._messages
            if isinstance(m, Vote) and m.public_key == signer and m.vote_type == PREVOTE
        }
        others = {
            m.public_key
            for m in self._messages
            if isinstance(m, Vote)
            and m.public_key != signer
            and (m.vote_type != PREVOTE or (m.height, m.round) not in own_prevotes)
        }
        if signer == self.public_key and others:
            raise WrongKey(
                f"{self.path} holds votes of validator {sorted(others)[0][:16]}… that this one"
                " did not keep for a lock: another validator's log (a data directory is one"
                " validator's)"
            )
        if signer != self.public_key:
            raise WrongKey(
                f"{self.path.parent} holds what validator {signer[:16]}… signed, and this key"
                f" is {self.public_key[:16]}…: a validator's data directory keeps its key"
                " (another key needs a data directory of its own)"
            )
        if not signer_file.exists():
            temporary = signer_file.with_name(SIGNER_FILE_NAME + ".tmp")
            with open(temporary, "w", encoding="ascii") as file:
                file.write(self.public_key + "\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, signer_file)
            fsync_directory(signer_file.parent)

    def _decided_height(self, line: bytes) -> int:
        try:
            value = decode(line)
        except LedgerError as error:
            raise CorruptLog(f"{self.path}: line 1: {error.message}") from error
        if not isinstance(value, dict) or list(value) != [DECIDED_HEIGHT_FIELD]:
            raise CorruptLog(f"{self.path}: line 1: not a decided height")
        height = value[DECIDED_HEIGHT_FIELD]
        if type(height) is not int or height < 0:
            raise CorruptLog(f"{self.path}: line 1: not a decided height")
        return height

    def _key(self, message: SignedMessage) -> tuple[int, int, str] | tuple[int, int, str, str]:
        """Where a message is filed: its slot, and for another validator's prevote (kept
        for a lock) its signer too, so it never takes this validator's own slot."""
        if isinstance(message, Vote) and message.public_key != self.public_key:
            return (*slot_of(message), message.public_key)
        return slot_of(message)

    def _remember(self, message: SignedMessage, line: bytes) -> bool:
        slot = self._key(message)
        known = self._slots.get(slot)
        if known is not None:
            if known != line:
                raise ConflictingSignature(
                    f"{self.path}: a different message is already signed for {slot}"
                )
            return False
        self._slots[slot] = line
        self._messages.append(message)
        return True

    def read(self) -> list[SignedMessage]:
        """Every message in the log, in the order signed."""
        return list(self._messages)

    def append(self, message: SignedMessage) -> None:
        """Write `message` and fsync before returning (the Persist effect)."""
        self.append_all([message])

    def append_all(self, messages: Sequence[SignedMessage]) -> None:
        """Write `messages`, each fsynced, before returning (the Persist effects in a row: a
        lock's block, its prevotes and the precommit); a conflict refuses them all first."""
        encoded = [(message, encode_message(message)) for message in messages]
        assert all(b"\n" not in line for _, line in encoded), "canonical JSON is one line"
        # Every conflict refuses the whole batch before anything is remembered or written.
        batch = {self._key(message): line for message, line in reversed(encoded)}
        for message, line in encoded:
            if batch[self._key(message)] != line:
                raise ConflictingSignature(
                    f"{self.path}: two different messages for {slot_of(message)} in one batch"
                )
            known = self._slots.get(self._key(message))
            if known is not None and known != line:
                raise ConflictingSignature(
                    f"{self.path}: a different message is already signed for {slot_of(message)}"
                )
        # Each line fsynced before the next is written: one write of several lines may reach
        # the disk out of order, leaving a damaged line before whole ones, which a restart
        # must refuse (`CorruptLog`), where only a torn last line is cut (found by review).
        self._file.seek(0, os.SEEK_END)
        for message, line in encoded:
            if self._remember(message, line):
                self._file.write(line + b"\n")
                self._file.flush()
                os.fsync(self._file.fileno())

    def compact(self, *, above_height: int) -> None:
        """Keep only messages of heights above `above_height` (decided and stored), and
        remember that height as `decided_height` when anything is forgotten."""
        kept = [m for m in self._messages if m.height > above_height]
        if len(kept) == len(self._messages):
            return
        decided = max(self.decided_height, above_height)
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(temporary, "wb") as file:
            file.write(canonical({DECIDED_HEIGHT_FIELD: decided}) + b"\n")
            for message in kept:
                file.write(self._slots[self._key(message)] + b"\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)
        fsync_directory(self.path.parent)
        self._file.close()
        self._file = open(self.path, "a+b")  # noqa: SIM115 - closed by close()
        self._messages = kept
        self._slots = {self._key(m): self._slots[self._key(m)] for m in kept}
        self.decided_height = decided

    def close(self) -> None:
        self._file.close()
        self._lock.close()
