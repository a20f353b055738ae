"""The data directory: one SQLite database, the only ledger module that does I/O (SPEC §5, §7).

WAL journal with `synchronous=FULL`: a block is durable when `append` returns. Each block
(header, transactions, certificate, state changes, log Merkle nodes and the query tables) is
written in one SQLite transaction, so a crash or an error leaves the store at the previous
block. Opening checks the stored head before anything is served: the header hashes to its
recorded hash, its certificate verifies against the validators that governed it, and the
state and log rebuilt from the tables give the header's `state_root`, `log_root` and
`log_size`. A mismatch refuses to start, with the reason. A new store is built under another
name and renamed once whole, so a node killed at its first start leaves none half made.

Tables: meta, blocks, transactions, account_transactions, state, state_changes (the history of
the validator sets), log_nodes, and the query projections batches, retirements and lots
(indexed for the API's queries). The `lots` rows are also the one stored copy of each lot's
state value (`_LOT_COLUMNS`): `state` holds every other key, and the head's `state_root`
check covers both.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import marshal
import os
import resource
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Final

import sqlite_utils

from ledger import schema
from ledger.blocks import (
    Block,
    Certificate,
    Header,
    Validator,
    compute_evidence_hash,
    compute_validators_hash,
    parse_certificate,
    parse_header,
    parse_validators,
    verify_certificate,
)
from ledger.crypto import ZERO_HASH_HEX
from ledger.encoding import canonical, canonical_object, canonical_unchecked
from ledger.errors import (
    InvalidProofError,
    LedgerError,
    StoreError,
    StoreExists,
    StoreUnreadable,
)
from ledger.evidence import parse_evidence
from ledger.genesis import Genesis, genesis_state, parse_genesis
from ledger.limits import EVIDENCE_AGE_HEIGHTS_MAX
from ledger.merkle import (
    LogState,
    consistency_path,
    inclusion_path,
    verify_consistency,
    verify_inclusion,
)
from ledger.state import GoverningSet, State, parse_recent_validators, remember_validators
from ledger.state_tree import STATE_KEY_CHARS_MAX, prove_state, verify_state_proof
from ledger.transactions import Envelope, envelope_from_json_trusted
from ledger.worker import Child, read_frame, run_child, write_frame

DATABASE_FILE: Final = "ledger.sqlite"
LOCK_FILE: Final = "ledger.lock"
CREATING_SUFFIX: Final = ".creating"  # a database being created (`Store.create`)
# How long a node waits for the data directory's write lock: a node killed a moment ago may
# leave its writer process finishing (or rolling back) the block it held.
LOCK_WAIT_SECONDS: Final = 10.0
# SQLite's answers when the file cannot be opened or written for what it is not (permissions,
# a read-only file system), not for what it holds.
DESCRIPTORS_SPARE: Final = 8  # fewer free than this: the process is out of descriptors
_CANNOT_OPEN: Final = frozenset(
    {sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH}
)
# The store's layout, in its `meta` row: 1 kept each lot in `state` and `lots`; 2 keeps it once,
# in `lots` (`_LOT_COLUMNS`). A store of a later version is refused, not misread: its layout is
# one this build does not know. (Versions 1 and 2 shared the number 1 for a while; the lots
# table's columns tell them apart, and `ensure_layout` writes 2 once it holds lots once.)
SCHEMA_VERSION: Final = 2
# A lot's state value is kept once, as its row of the `lots` table (these columns are the
# value's own members), not also as a row of `state`: a transfer rewrites two or three lots,
# and each row of a random-keyed table dirties a page that the commit writes twice (the WAL,
# then the checkpoint). Measured in-process on blocks of 1,200 transfers and retirements: the
# store's write from ~92 to ~77 us a transaction, a new file 12 % smaller (docs/decisions/0006).
_LOT_PREFIX: Final = "lot/"
_LOT_COLUMNS: Final = ("batch_id", "first_serial", "quantity", "owner", "status", "retirement_id")
PAGE_CACHE_KIB: Final = 8192
# Pages the WAL may hold before a commit copies them into the database (SQLite's default is
# 1,000, less than one block of 1,400 transactions writes, ~8,000): a page a later block
# dirties again is copied once for them all. In-process, blocks of 1,400 on a 229 MB store:
# 98-105 us a transaction at 1,000, 87-92 at 20,000-40,000; with none the WAL grows without
# end and reads through it slow every write (115 us). Up to ~80 MB of WAL a node. Live
# (bench/cluster.py, 4 validators, alternated): the writers 313-326 us a transaction across
# the four against 329-339 at 1,000, the rate within its spread (docs/decisions/0006).
WAL_CHECKPOINT_PAGES: Final = 20_000


def _involved_accounts(envelope: Envelope) -> set[str]:
    """Every account a transaction names, for the per-account history."""
    tx = envelope.tx
    accounts = {tx.signer}
    payload = tx.payload
    for field in ("to", "holder", "certifier", "account"):
        if field in payload:
            accounts.add(payload[field])
    for recipient in payload.get("recipients", ()):
        accounts.add(recipient["account"])
    return accounts


def _out_of_descriptors() -> bool:
    """Whether this process has (nearly) all the file descriptors it may: SQLite says only
    "unable to open database file" then, which had been read as a permissions problem."""
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError as error:  # no descriptor left to read it with, or no /proc
        return error.errno == errno.EMFILE
    return open_now >= resource.getrlimit(resource.RLIMIT_NOFILE)[0] - DESCRIPTORS_SPARE


class Store:
    """A Tanlian data directory. Create it with `Store.create`, reopen it with `Store.open`."""

    def __init__(self, directory: Path, connection: sqlite3.Connection) -> None:
        self.directory = directory
        self._conn = connection
        self._writer: _Writer | None = None
        self._lock: DirectoryLock | None = None
        self.db = sqlite_utils.Database(connection)
        version = self._meta("schema_version")
        if not version.isdigit():
            raise StoreError(f"its schema version {version[:20]!r} is not a number")
        if len(version) > 6 or int(version) > SCHEMA_VERSION:
            # Not damaged: a layout this build does not know. Unreadable, so that nothing
            # sets it aside or rebuilds it (--resync had: found by review).
            raise StoreUnreadable(
                f"its layout is schema version {version[:20]}, written by a later version of"
                f" Tanlian; this one reads versions up to {SCHEMA_VERSION}: run the later one"
            )
        self.genesis: Genesis = parse_genesis(json.loads(self._meta("genesis")))
        # The genesis set is known without a read: a chain whose set never changed reads no
        # history for it (each new connection had scanned the whole history table).
        self._validator_sets: dict[str, tuple[Validator, ...]] = {
            compute_validators_hash(self.genesis.validators): self.genesis.validators
        }

    # --- opening --------------------------------------------------------------------------

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        # A larger page cache keeps the hot B-tree pages of random-keyed tables in memory.
        connection.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
        connection.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        connection.execute("PRAGMA foreign_keys=ON")
        return connection

    @classmethod
    def create(cls, directory: Path, genesis_document: dict[str, Any]) -> Store:
        """A new data directory for the chain of `genesis_document`. Made under the
        directory's lock: two processes starting on one empty directory at once had each
        deleted the other's half-made file and renamed one into place, a store refused at
        every later start (found by review); the second now finds the first's ledger."""
        genesis = parse_genesis(genesis_document)
        directory.mkdir(parents=True, exist_ok=True)
        lock = DirectoryLock(directory / LOCK_FILE)
        lock.acquire(wait_seconds=LOCK_WAIT_SECONDS)
        try:
            cls._create_locked(directory, genesis, genesis_document)
        finally:
            lock.release()
        return cls(directory, cls._connect(directory / DATABASE_FILE))

    @classmethod
    def _create_locked(
        cls, directory: Path, genesis: Genesis, genesis_document: dict[str, Any]
    ) -> None:
        path = directory / DATABASE_FILE
        if path.exists():
            raise StoreExists(f"{path} exists already: refusing to overwrite a ledger")
        orphan = directory / (DATABASE_FILE + "-wal")
        if orphan.exists():  # SQLite would replay its pages into the new database
            raise StoreError(
                f"{orphan} is here without its database: it may hold committed pages of a store"
                " moved or copied elsewhere. Move it away with that store (--resync sets it"
                " aside)"
            )
        # Built under another name and renamed once whole: a node killed while it creates
        # its store (at its first start) leaves no half-made database that refuses to open.
        building = directory / (DATABASE_FILE + CREATING_SUFFIX)
        leftovers = [Path(str(building) + suffix) for suffix in ("", "-wal", "-shm", "-journal")]
        for leftover in leftovers:
            leftover.unlink(missing_ok=True)  # a killed creation's
        try:
            connection = cls._connect(building)
            try:
                cls._fill(connection, genesis, genesis_document)
            finally:
                connection.close()  # the last connection: SQLite folds its WAL into the file
        except sqlite3.Error as error:  # a full disk, say (found by review: a traceback)
            for leftover in leftovers:
                leftover.unlink(missing_ok=True)
            raise StoreError(f"cannot create the ledger {path}: {error}") from error
        descriptor = os.open(building, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.rename(building, path)
        fsync_directory(directory)

    @staticmethod
    def _fill(
        connection: sqlite3.Connection, genesis: Genesis, genesis_document: dict[str, Any]
    ) -> None:
        db = sqlite_utils.Database(connection)
        _create_schema(db)
        state = genesis_state(genesis)
        with _transaction(connection):
            connection.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("genesis", canonical(genesis_document).decode()),
                    ("genesis_hash", genesis.genesis_hash()),
                    ("head_height", "0"),
                    ("recent_validators", "[]"),
                ],
            )
            connection.executemany(
                "INSERT INTO state (key, value) VALUES (?, ?)",
                [
                    (key, canonical_unchecked(value).decode())
                    for key, value in state.entries.items()
                ],
            )

    @classmethod
    def open(cls, directory: Path) -> Store:
        path = directory / DATABASE_FILE
        if not path.is_file():
            nested = directory / "data" / DATABASE_FILE  # a `tanlian cluster` party's directory
            hint = f"; {nested.parent} holds one" if nested.is_file() else ""
            raise StoreError(f"no ledger at {path}{hint}")
        try:
            empty = path.stat().st_size == 0
        except OSError as error:
            raise StoreUnreadable(f"cannot open {path}: {error}") from error
        if empty:  # SQLite would make it a new database: 4 KiB written where nothing may change
            raise StoreError(f"{path} is not a usable Tanlian database: it is empty (0 bytes)")
        try:
            connection = cls._connect(path)
            store = cls(directory, connection)
        except sqlite3.OperationalError as error:
            if (error.sqlite_errorcode & 0xFF) in _CANNOT_OPEN:  # an extended code's primary
                if _out_of_descriptors():
                    raise StoreError(  # this process's own state, not the store's
                        f"cannot open {path}: {error} (this process has nearly all of its "
                        f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]} file descriptors open)",
                        code="store_unavailable",
                    ) from error
                raise StoreUnreadable(
                    f"cannot open {path}: {error} (check that this user may read and write the"
                    " data directory and its files, and that its file system is writable)"
                ) from error
            raise StoreError(f"{path} is not a usable Tanlian database: {error}") from error
        except StoreUnreadable as error:
            raise StoreUnreadable(f"cannot open {path}: {error.message}") from error
        except (sqlite3.DatabaseError, KeyError, ValueError, LedgerError) as error:
            raise StoreError(f"{path} is not a usable Tanlian database: {error}") from error
        return store

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        self._conn.close()

    def _lock_for_writing(self) -> DirectoryLock:
        """Become the data directory's one writer (`DirectoryLock`), waiting a little for a
        writer that is finishing; StoreError if another process keeps it."""
        if self._lock is None:
            database = self.directory / DATABASE_FILE
            effective = os.access in os.supports_effective_ids  # as the writes will be made
            if not os.access(database, os.W_OK, effective_ids=effective):
                # SQLite opens a file it may not write read-only, without a word, and fails
                # at the first write: a node had started, taken transactions, and stopped at
                # its first block (found by review).
                raise StoreUnreadable(
                    f"cannot write {database} (check that this user may read and write the"
                    " data directory and its files, and that its file system is writable)"
                )
            lock = DirectoryLock(self.directory / LOCK_FILE)
            lock.acquire(wait_seconds=LOCK_WAIT_SECONDS)
            self._lock = lock
        return self._lock

    def _meta(self, key: str) -> str:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(f"meta {key!r} missing")
        return str(row[0])

    @property
    def head_height(self) -> int:
        return int(self._meta("head_height"))

    def load_state(self) -> State:
        """The state at the stored head, after checking that head (refuses a damaged store).

        Read in one read transaction: a store that a running node's writer appends to is read
        as of one commit. Read statement by statement, `tanlian export --data` and `receipt
        --data` beside a running node had met the head of one block and the rows of the next,
        and called the store damaged (found by review)."""
        try:
            with _read_transaction(self._conn):
                return self._load_state()
        except StoreError as error:
            if error.message.startswith("refusing to start"):
                raise
            raise StoreError(f"refusing to start: {error.message}") from error
        except (sqlite3.DatabaseError, KeyError, ValueError, TypeError, LedgerError) as error:
            raise StoreError(f"refusing to start: the store cannot be read ({error})") from error

    def _load_state(self) -> State:
        genesis = self.genesis
        height = self.head_height
        entries = {
            key: json.loads(value)
            for key, value in self._conn.execute("SELECT key, value FROM state")
        }
        if self._lots_held_once():  # else a store from before `ensure_layout`: lots in `state`
            for row in self._conn.execute(f"SELECT {', '.join(_LOT_COLUMNS)} FROM lots"):
                lot = dict(zip(_LOT_COLUMNS, row, strict=True))
                entries[f"{_LOT_PREFIX}{lot['batch_id']}/{lot['first_serial']}"] = lot
        if height == 0:
            state = genesis_state(genesis)
            if dict(state.entries) != entries:
                raise StoreError("refusing to start: the stored genesis state was altered")
            return state
        top = self._conn.execute("SELECT MAX(height) FROM blocks").fetchone()[0]
        if top != height:
            raise StoreError(f"refusing to start: head is {height} but blocks end at {top}")
        block = self.read_block(height)
        header = block.header
        stored_hash = self._conn.execute(
            "SELECT hash FROM blocks WHERE height = ?", (height,)
        ).fetchone()[0]
        if header.block_hash() != stored_hash:
            raise StoreError(
                f"refusing to start: block {height}'s header does not hash to {stored_hash}"
            )
        recent_validators = self._load_recent_validators(height)
        last_validators = recent_validators[-1].validators
        certificate = self.read_certificate(height)
        try:
            verify_certificate(
                certificate,
                chain_id=genesis.chain_id,
                height=height,
                block_hash=stored_hash,
                validators=last_validators,
            )
        except InvalidProofError as error:
            raise StoreError(
                f"refusing to start: certificate of block {height}: {error}"
            ) from error
        log = self._load_log(header.log_size)
        self._check_head_transactions(block)
        if log.root().hex() != header.log_root:
            raise StoreError(
                f"refusing to start: the stored log does not give block {height}'s log_root"
            )
        state = State.from_entries(
            chain_id=genesis.chain_id,
            genesis_hash=genesis.genesis_hash(),
            authority=genesis.authority_id,
            params=genesis.params,
            height=height,
            head_hash=stored_hash,
            head_time=header.time,
            recent_validators=recent_validators,
            entries=entries,
            log=log,
        )
        if state.state_root != header.state_root:
            raise StoreError(
                f"refusing to start: the stored state does not give block {height}'s state_root"
            )
        if compute_validators_hash(last_validators) != header.validators_hash:
            raise StoreError("refusing to start: recorded validators do not match the head")
        return state

    def _load_recent_validators(self, height: int) -> tuple[GoverningSet, ...]:
        """`State.recent_validators` at the head, each set checked against the header of the
        first height it governed (so a set that did not govern what it claims is refused)."""
        row = self._conn.execute(
            "SELECT value FROM meta WHERE key = 'recent_validators'"
        ).fetchone()
        if row is None:  # a data directory written before the store kept them
            recent = self._rebuild_recent_validators(height)
        else:
            recent = parse_recent_validators(json.loads(row[0]))
        firsts = [run.first_height for run in recent]
        if not recent or firsts[0] != max(1, height - EVIDENCE_AGE_HEIGHTS_MAX + 1):
            raise StoreError("refusing to start: the recorded recent validator sets are not whole")
        if firsts != sorted(set(firsts)) or firsts[-1] > height:
            raise StoreError("refusing to start: the recorded recent validator sets are unordered")
        for run in recent:
            if self.read_header(run.first_height).validators_hash != compute_validators_hash(
                run.validators
            ):
                raise StoreError(
                    "refusing to start: the recorded validators of height "
                    f"{run.first_height} do not match its header"
                )
        return recent

    def _rebuild_recent_validators(self, height: int) -> tuple[GoverningSet, ...]:
        """The sets that governed the last heights, from the recorded changes of
        `validators/current` (its value after block h - 1 governs h). Reads every change of
        the chain: done once, for a data directory from before the store kept them."""
        changes = {
            changed_at: parse_validators(json.loads(value))
            for changed_at, value in self._conn.execute(
                "SELECT height, value FROM state_changes WHERE key = 'validators/current'"
            )
        }
        oldest = max(1, height - EVIDENCE_AGE_HEIGHTS_MAX + 1)
        before = [changed_at for changed_at in changes if changed_at < oldest]
        governing = changes[max(before)] if before else self.genesis.validators
        recent: tuple[GoverningSet, ...] = ()
        for governed in range(oldest, height + 1):
            governing = changes.get(governed - 1, governing)
            recent = remember_validators(recent, height=governed, validators=governing)
        return recent

    def _check_head_transactions(self, block: Block) -> None:
        """The head block's stored transactions are the leaves its log root was built from."""
        first = block.header.log_size - len(block.transactions)
        stored = dict(
            self._conn.execute(
                "SELECT idx, hash FROM log_nodes WHERE level = 0 AND idx >= ? AND idx < ?",
                (first, block.header.log_size),
            ).fetchall()
        )
        for offset, envelope in enumerate(block.transactions):
            if stored.get(first + offset) != envelope.leaf_hash:
                raise StoreError(
                    f"refusing to start: transaction {first + offset} of block "
                    f"{block.height} does not match its log leaf"
                )

    def _load_log(self, size: int) -> LogState:
        count = self._conn.execute("SELECT COUNT(*) FROM transactions").fetchone()[0]
        if count != size:
            raise StoreError(f"refusing to start: {count} transactions stored, head says {size}")
        peaks = []
        for level, index in LogState.peak_positions(size):
            row = self._conn.execute(
                "SELECT hash FROM log_nodes WHERE level = ? AND idx = ?", (level, index)
            ).fetchone()
            if row is None:
                raise StoreError(f"refusing to start: log node ({level}, {index}) is missing")
            peaks.append(bytes(row[0]))
        return LogState(size=size, peaks=tuple(peaks))

    # --- writing --------------------------------------------------------------------------

    def append(self, block: Block, certificate: Certificate, state: State) -> None:
        """Write `block`, its `certificate` and the `state` it produced, atomically; durable
        when this returns (in the writer process if one was started)."""
        assert state.height == block.height == self.head_height + 1
        assert certificate.height == block.height and certificate.block_hash == block.block_hash()
        record = _block_record(block, certificate, state)
        self._lock_for_writing()
        if self._writer is None:
            try:
                _write(self._conn, record)
            except sqlite3.Error as error:  # rolled back: say so as the writer process does
                raise StoreError(f"the block was not written: {error}") from error
            return
        try:
            self._writer.write(record)
        except WriterDied:
            # It may have died after its COMMIT and before its answer: then the block is
            # stored, and building it again broke the next append (found by review: a node
            # said "not stored", then stopped on an assertion).
            if not self._holds(block):
                raise

    def _holds(self, block: Block) -> bool:
        """Whether this store's head is `block` (read now, on this process's connection)."""
        try:
            row = self._conn.execute(
                "SELECT hash FROM blocks WHERE height = ?", (block.height,)
            ).fetchone()
            return (
                row is not None
                and row[0] == block.block_hash()
                and self.head_height == block.height
            )
        except sqlite3.Error:
            return False

    def ensure_layout(self) -> None:
        """Bring a store made by an earlier version to this one's layout (once; seconds on a
        large chain): each lot held once (`_LOT_COLUMNS`), the list indexes added and the
        ones they superseded dropped. Call it before the writer starts: it becomes the
        directory's writer first, so a killed predecessor's writer finishing a block in the
        old layout is waited for, never moved over half way. StoreError if the old rows
        cannot be moved (a damaged store: nothing is changed)."""
        self._lock_for_writing()
        try:
            with _transaction(self._conn):
                if not self._lots_held_once():
                    self._hold_lots_once()
                if self._meta("schema_version") != str(SCHEMA_VERSION):
                    self._conn.execute(
                        "UPDATE meta SET value = ? WHERE key = 'schema_version'",
                        (str(SCHEMA_VERSION),),
                    )
        except sqlite3.Error as error:
            raise StoreError(
                f"refusing to start: the store's lots cannot be moved to this version's layout"
                f" ({error})"
            ) from error
        try:
            self._ensure_indexes()
        except sqlite3.Error as error:  # a full disk, say (found by review: a traceback)
            raise StoreError(
                f"refusing to start: the store's indexes cannot be brought to this version's"
                f" layout ({error}); its lots are in this version's layout already, and the"
                " indexes are made at the next start"
            ) from error

    def _hold_lots_once(self) -> None:
        # The lots' values move from `state`, the hashed copy the head's state_root was
        # checked against, into `lots`, whose rows are rebuilt from them. The file keeps its
        # size (no VACUUM): the freed pages take the next blocks' rows.
        lots = f"key > '{_LOT_PREFIX}' AND key < '{_LOT_PREFIX[:-1]}0'"
        in_state = self._conn.execute(f"SELECT 1 FROM state WHERE {lots} LIMIT 1").fetchone()
        if in_state is None and self._conn.execute("SELECT 1 FROM lots LIMIT 1").fetchone():
            # Lots, but none in `state`: a store of this layout whose column was removed.
            raise StoreError("refusing to start: the lots table lost its retirement_id column")
        columns = ", ".join(_LOT_COLUMNS)
        values = ", ".join(f"json_extract(value, '$.{column}')" for column in _LOT_COLUMNS)
        self._conn.execute("ALTER TABLE lots ADD COLUMN retirement_id TEXT")
        self._conn.execute("DELETE FROM lots")
        self._conn.execute(f"INSERT INTO lots ({columns}) SELECT {values} FROM state WHERE {lots}")
        self._conn.execute(f"DELETE FROM state WHERE {lots}")

    def _lots_held_once(self) -> bool:
        columns = self._conn.execute("PRAGMA table_info(lots)").fetchall()
        return any(column[1] == "retirement_id" for column in columns)

    def _ensure_indexes(self) -> None:

        def present(name: str) -> bool:
            return (
                self._conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (name,)
                ).fetchone()
                is not None
            )

        missing = [s for s in _LIST_INDEXES if not present(s.split()[5])]
        superseded = [name for name in _SUPERSEDED_INDEXES if present(name)]
        if missing or superseded:
            with _transaction(self._conn):
                for statement in missing:
                    self._conn.execute(statement)
                for name in superseded:
                    self._conn.execute(f"DROP INDEX {name}")

    def start_writer(self) -> None:
        """From now on, hand `append`'s rows to a writer process with its own connection.

        SQLite releases the GIL for each row it inserts, and a thread must win the GIL back
        before the next row: beside a thread running Python (a request being parsed) that
        wait is the interpreter's 5 ms switch interval, row after row, and a block has tens of
        thousands of rows. In a process of its own the inserts run at full speed on another
        core, with the decoding and the query-table rows; this process sends each block's
        record (`marshal`: plain data) and waits for the writer's answer."""
        if self._writer is None:
            self._writer = _Writer(self.directory / DATABASE_FILE, self._lock_for_writing())

    def writing(self) -> bool:
        """A block is with the writer process, not yet answered."""
        return self._writer is not None and self._writer.child.busy

    def kill_writer(self) -> None:
        """Kill the writer process now, a block under way or not (a node's stop, when the
        writer does not answer): that block is stored or not, as after any writer's death,
        and `append` says which at the next start (it reads the head back)."""
        if self._writer is not None:
            self._writer.child.kill()

    # --- reading --------------------------------------------------------------------------

    def read_block(self, height: int) -> Block:
        """The block at `height`, checked before it is returned (`_check_block`). A page
        SQLite cannot read (a damaged file, a failing disk) is a StoreError too, like any
        other damage to the block."""
        try:
            return self._read_block(height)
        except sqlite3.Error as error:
            raise StoreError(f"block {height} could not be read: {error}") from error

    def _read_block(self, height: int) -> Block:
        row = self._conn.execute(
            "SELECT header, last_commit, evidence, hash FROM blocks WHERE height = ?", (height,)
        ).fetchone()
        if row is None:
            raise StoreError(f"no block at height {height}")
        try:
            envelopes = tuple(
                envelope_from_json_trusted(json.loads(envelope))
                for (envelope,) in self._conn.execute(
                    "SELECT envelope FROM transactions WHERE height = ? ORDER BY log_index",
                    (height,),
                )
            )
            block = Block(
                header=parse_header(json.loads(row[0])),
                transactions=envelopes,
                last_commit=None if row[1] is None else parse_certificate(json.loads(row[1])),
                evidence=tuple(parse_evidence(item) for item in json.loads(row[2])),
            )
        except (ValueError, KeyError, TypeError, LedgerError) as error:
            raise StoreError(f"block {height} is corrupt: it does not parse ({error})") from error
        self._check_block(block, height=height, stored_hash=row[3])
        return block

    def _check_block(self, block: Block, *, height: int, stored_hash: str) -> None:
        """A stored block is what was certified, before anything of it is served: its header
        hashes to the recorded hash, the certificate it carries and its evidence hash to what
        the header says, and its transactions, appended to the log the parent's header
        committed to (the stored peaks, checked against the parent's `log_root`), give the
        header's `log_root`. The header itself is checked with its certificate
        (`read_certificate`, `checkpoint`). StoreError names the block and what differs."""
        header = block.header

        def corrupt(what: str) -> StoreError:
            return StoreError(f"block {height} is corrupt: {what}; refusing to serve it")

        if header.height != height or header.chain_id != self.genesis.chain_id:
            raise corrupt(f"its header is block {header.height} of {header.chain_id}")
        if header.block_hash() != stored_hash:
            raise corrupt(f"its header does not hash to the recorded {stored_hash}")
        if compute_evidence_hash(block.evidence) != header.evidence_hash:
            raise corrupt("its evidence does not hash to the header's evidence_hash")
        last_commit = block.last_commit
        carried = ZERO_HASH_HEX if last_commit is None else last_commit.certificate_hash()
        if carried != header.last_commit_hash:
            raise corrupt("the certificate it carries does not hash to its last_commit_hash")
        first = header.log_size - len(block.transactions)
        if first < 0:
            raise corrupt("it holds more transactions than its log_size")
        log = self._stored_log(first, self.read_header(height - 1).log_root if height > 1 else "")
        if log is None:
            raise corrupt("the stored log before it does not give its parent's log_root")
        grown = log.extended([envelope.leaf_hash for envelope in block.transactions])
        if grown.root().hex() != header.log_root:
            raise corrupt("its transactions do not give its log_root")

    def _stored_log(self, size: int, root: str) -> LogState | None:
        """The log of the first `size` transactions from the stored peaks, if they give
        `root` (any root for the empty log at height 0)."""
        peaks = []
        for level, index in LogState.peak_positions(size):
            try:
                peaks.append(self.log_node(level, index))
            except StoreError:
                return None
        log = LogState(size=size, peaks=tuple(peaks))
        return log if size == 0 or log.root().hex() == root else None

    def read_certificate(self, height: int) -> Certificate:
        """The certificate of `height`, checked against the block's stored header and the
        validator set that header names: a corrupt one is never served as valid (nor is an
        unreadable one: StoreError, as for `read_block`)."""
        try:
            return self._read_certificate(height)
        except sqlite3.Error as error:
            raise StoreError(
                f"the certificate of block {height} could not be read: {error}"
            ) from error

    def _read_certificate(self, height: int) -> Certificate:
        row = self._conn.execute(
            "SELECT certificate, header FROM blocks WHERE height = ?", (height,)
        ).fetchone()
        if row is None:
            raise StoreError(f"no block at height {height}")
        try:
            certificate = parse_certificate(json.loads(row[0]))
            header = parse_header(json.loads(row[1]))
        except (ValueError, KeyError, TypeError, LedgerError) as error:
            raise StoreError(f"block {height} is corrupt: it does not parse ({error})") from error
        if header.height != height:
            raise StoreError(f"block {height} is corrupt: its header is block {header.height}")
        validators = self._validator_set(header.validators_hash)
        try:
            if validators is None:
                raise InvalidProofError(f"no validator set of this chain has hash "
                                        f"{header.validators_hash}")  # fmt: skip
            verify_certificate(
                certificate,
                chain_id=self.genesis.chain_id,
                height=height,
                block_hash=header.block_hash(),
                validators=validators,
            )
        except InvalidProofError as error:
            raise StoreError(
                f"block {height} is corrupt: its certificate does not certify its header "
                f"({error.message}); refusing to serve it"
            ) from error
        return certificate

    def _validator_set(self, validators_hash: str) -> tuple[Validator, ...] | None:
        """The validator set of this chain with that hash: the genesis set or one the state
        recorded since (read again only when a block names a set not seen yet)."""
        if validators_hash not in self._validator_sets:
            sets = dict(self._validator_sets)  # the genesis set, and any read before
            for (value,) in self._conn.execute(
                f"SELECT value FROM state_changes WHERE {_VALIDATOR_CHANGES} AND value IS NOT NULL"
            ):
                validators = parse_validators(json.loads(value))
                sets[compute_validators_hash(validators)] = validators
            self._validator_sets = sets
        return self._validator_sets.get(validators_hash)

    def last_certificate(self) -> Certificate | None:
        height = self.head_height
        return None if height == 0 else self.read_certificate(height)

    # --- proofs (SPEC §6): each one checked against the stored header before it is served --

    def log_node(self, level: int, index: int) -> bytes:
        row = self._conn.execute(
            "SELECT hash FROM log_nodes WHERE level = ? AND idx = ?", (level, index)
        ).fetchone()
        if row is None:
            raise StoreError(f"log node ({level}, {index}) is missing")
        value = row[0]
        if not isinstance(value, bytes) or len(value) != 32:
            raise StoreError(f"log node ({level}, {index}) is not a 32-byte hash")
        return value

    def checkpoint(self, height: int) -> dict[str, Any]:
        """`{"header", "certificate"}` of a stored height (SPEC §5.3)."""
        return {
            "header": self.read_header(height).to_json(),
            "certificate": self.read_certificate(height).to_json(),
        }

    def read_header(self, height: int) -> Header:
        row = self._conn.execute("SELECT header FROM blocks WHERE height = ?", (height,)).fetchone()
        if row is None:
            raise LedgerError(f"no block at height {height}", code="not_found")
        return parse_header(json.loads(row[0]))

    def transaction_ids(self) -> Iterator[str]:
        """Every committed transaction's id."""
        for (tx_id,) in self._conn.execute("SELECT tx_id FROM transactions"):
            yield tx_id

    def transaction_position(self, tx_id: str) -> tuple[int, int, Envelope]:
        """(height, log index, envelope) of a committed transaction."""
        row = self._conn.execute(
            "SELECT height, log_index, envelope FROM transactions WHERE tx_id = ?", (tx_id,)
        ).fetchone()
        if row is None:
            raise LedgerError(f"no committed transaction {tx_id}", code="not_found")
        height, index = int(row[0]), int(row[1])
        try:
            envelope = envelope_from_json_trusted(json.loads(row[2]))
        except (ValueError, KeyError, TypeError, LedgerError) as error:
            raise StoreError(f"transaction {tx_id} is corrupt: it does not parse") from error
        if envelope.tx_id != tx_id:
            raise StoreError(f"transaction {tx_id} is corrupt: its stored body has another id")
        header = self.read_header(height)
        try:  # the stored envelope, signatures included, is the log's leaf at its index
            verify_inclusion(
                leaf_hash=envelope.leaf_hash,
                index=index,
                size=header.log_size,
                path=inclusion_path(index, header.log_size, self.log_node),
                root=bytes.fromhex(header.log_root),
            )
        except (InvalidProofError, StoreError) as error:
            raise StoreError(
                f"transaction {tx_id} is corrupt: it is not the log's leaf {index} ({error})"
            ) from error
        return height, index, envelope

    def inclusion_proof(self, tx_id: str, height: int) -> dict[str, Any]:
        """The RFC 9162 inclusion proof of `tx_id` in the log at `height`, with its checkpoint."""
        tx_height, index, envelope = self.transaction_position(tx_id)
        if tx_height > height:
            raise LedgerError(
                f"transaction {tx_id} is at height {tx_height}, after {height}", code="not_found"
            )
        header = self.read_header(height)
        path = inclusion_path(index, header.log_size, self.log_node)
        try:
            verify_inclusion(
                leaf_hash=envelope.leaf_hash,
                index=index,
                size=header.log_size,
                path=path,
                root=bytes.fromhex(header.log_root),
            )
        except InvalidProofError as error:
            raise StoreError(f"stored log data is corrupt, refusing the proof: {error}") from error
        return {
            "log_index": index,
            "log_size": header.log_size,
            "path": [node.hex() for node in path],
            "checkpoint": self.checkpoint(height),
        }

    def _first_logged(self, up_to: int) -> str:
        """Where a consistency proof can start: the first height up to `up_to` whose log
        holds a transaction (log sizes never shrink, so a binary search over headers)."""
        if self.read_header(up_to).log_size == 0:
            return f"no block up to height {up_to} holds a transaction yet"
        low, high = 1, up_to
        while low < high:
            middle = (low + high) // 2
            if self.read_header(middle).log_size > 0:
                high = middle
            else:
                low = middle + 1
        return f"the first height whose log is not empty is {low}"

    def consistency_proof(self, from_height: int, to_height: int) -> dict[str, Any]:
        """The RFC 9162 consistency proof between the logs at two heights, with checkpoints."""
        first, second = self.read_header(from_height), self.read_header(to_height)
        if first.log_size == 0:
            raise LedgerError(
                f"no consistency proof from height {from_height}: its log is empty (size 0),"
                " and RFC 9162 has no proof from an empty log; " + self._first_logged(to_height),
                code="invalid_field",
            )
        if first.log_size > second.log_size:
            raise LedgerError(
                f"no consistency proof from log size {first.log_size} to {second.log_size}",
                code="invalid_field",
            )
        path = consistency_path(first.log_size, second.log_size, self.log_node)
        try:
            verify_consistency(
                size1=first.log_size,
                size2=second.log_size,
                path=path,
                root1=bytes.fromhex(first.log_root),
                root2=bytes.fromhex(second.log_root),
            )
        except InvalidProofError as error:
            raise StoreError(f"stored log data is corrupt, refusing the proof: {error}") from error
        return {
            "first_size": first.log_size,
            "second_size": second.log_size,
            "path": [node.hex() for node in path],
            "first": self.checkpoint(from_height),
            "second": self.checkpoint(to_height),
        }

    def state_proof(self, state: State, key: str) -> dict[str, Any]:
        """A state proof against `state`'s checkpoint, which must be this store's head."""
        self._check_head(state)
        schema.text(STATE_KEY_CHARS_MAX)("key", key)  # outside input: invalid_field, not a 503
        proof = prove_state(state.tree, key, state.entries.__getitem__)
        try:
            verify_state_proof(proof=proof, root=bytes.fromhex(state.state_root))
        except InvalidProofError as error:  # pragma: no cover - the tree is ours
            raise StoreError(f"state tree is inconsistent, refusing the proof: {error}") from error
        return {"proof": proof, "checkpoint": self.checkpoint(state.height)}

    def receipt(self, state: State, retirement_id: str) -> dict[str, Any]:
        """The self-contained retirement receipt of SPEC §6.3, against the head checkpoint."""
        self._check_head(state)
        record = state.get(f"retirement/{retirement_id}")
        if record is None:
            raise LedgerError(f"no retirement {retirement_id}", code="not_found")
        proof = self.inclusion_proof(retirement_id, state.height)
        _, _, envelope = self.transaction_position(retirement_id)
        keys = [f"retirement/{retirement_id}"] + [
            f"lot/{record['batch_id']}/{first}" for first, _ in record["serials"]
        ]
        root = bytes.fromhex(state.state_root)
        state_proofs = []
        for key in keys:
            state_proof = prove_state(state.tree, key, state.entries.__getitem__)
            verify_state_proof(proof=state_proof, root=root)
            state_proofs.append(state_proof)
        return {
            "retirement": record,
            "transaction": envelope.to_json(),
            "log_index": proof["log_index"],
            "inclusion": proof["path"],
            "state_proofs": state_proofs,
            "checkpoint": proof["checkpoint"],
            "validators": [v.to_json() for v in state.last_validators],
            "genesis_hash": self.genesis.genesis_hash(),
        }

    def _check_head(self, state: State) -> None:
        """`state` must be a state this store has written (the head, or just behind it while a
        reader's snapshot trails the writer): its proofs are served against its own height."""
        if state.height == 0 or state.height > self.head_height:
            raise LedgerError(
                f"no checkpoint for a state at height {state.height} in this store",
                code="not_found",
            )
        if self.read_header(state.height).state_root != state.state_root:
            raise LedgerError(
                f"the state at height {state.height} is not the one this store holds",
                code="not_found",
            )

    def export_lines(self, from_height: int = 1, to_height: int | None = None) -> Iterator[bytes]:
        """SPEC §7.1 NDJSON: the genesis, then one `{"block", "certificate"}` per line."""
        yield canonical(json.loads(self._meta("genesis"))) + b"\n"
        last = self.head_height if to_height is None else min(to_height, self.head_height)
        for height in range(max(from_height, 1), last + 1):
            block = self.read_block(height).canonical_bytes()
            certificate = canonical_unchecked(self.read_certificate(height).to_json())
            yield canonical_object({"block": block, "certificate": certificate}) + b"\n"

    def export(self, out: IO[bytes]) -> int:
        count = 0
        for line in self.export_lines():
            out.write(line)
            count += 1
        return count - 1


# --- writing a block: its rows, the statements that write them, and the writer process ---------

Record = dict[str, Any]
"""What `append` hands over for one block: plain data (`marshal` carries it to a writer
process), the canonical texts still as bytes. `_rows` derives the rows from it where they are
written, so a writer process also takes the decoding and the query-table rows off the node."""

Rows = dict[str, list[tuple[Any, ...]]]
"""A block's rows, by the name of the statement that writes them (`_STATEMENTS`)."""

_STATEMENTS: Final = (
    (
        "blocks",
        "INSERT INTO blocks (height, hash, time, header, last_commit, evidence, certificate, "
        "tx_count, log_size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    ),
    (
        "transactions",
        "INSERT INTO transactions (log_index, tx_id, height, type, signer, envelope) "
        "VALUES (?, ?, ?, ?, ?, ?)",
    ),
    (
        "account_transactions",
        "INSERT OR IGNORE INTO account_transactions (account, log_index) VALUES (?, ?)",
    ),
    ("state_changes", "INSERT INTO state_changes (height, key, value) VALUES (?, ?, ?)"),
    ("state_removed", "DELETE FROM state WHERE key = ?"),
    ("state", "INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)"),
    ("log_nodes", "INSERT OR REPLACE INTO log_nodes (level, idx, hash) VALUES (?, ?, ?)"),
    (
        "batches",
        "INSERT OR REPLACE INTO batches (batch_id, methodology_id, certifier, project_id, "
        "height) VALUES (?, ?, ?, ?, ?)",
    ),
    (
        "retirements",
        "INSERT OR REPLACE INTO retirements (retirement_id, holder, beneficiary, program_id, "
        "batch_id, height) VALUES (?, ?, ?, ?, ?, ?)",
    ),
    ("lots_removed", "DELETE FROM lots WHERE batch_id = ? AND first_serial = ?"),
    (
        "lots",
        "INSERT OR REPLACE INTO lots (batch_id, first_serial, quantity, owner, status, "
        "retirement_id) VALUES (?, ?, ?, ?, ?, ?)",
    ),
    ("meta", "INSERT OR REPLACE INTO meta (value, key) VALUES (?, ?)"),
)


def _block_record(block: Block, certificate: Certificate, state: State) -> Record:
    delta = state.delta
    assert delta is not None
    return {
        "block": (
            block.height,
            block.block_hash(),
            block.header.time,
            canonical_unchecked(block.header.to_json()),
            None if block.last_commit is None else canonical_unchecked(block.last_commit.to_json()),
            canonical_unchecked([item.to_json() for item in block.evidence]),
            canonical_unchecked(certificate.to_json()),
            len(block.transactions),
            block.header.log_size,
        ),
        "first_index": block.header.log_size - len(block.transactions),
        "transactions": [
            (e.tx_id, e.tx.type, e.tx.signer, e.leaf, tuple(_involved_accounts(e)))
            for e in block.transactions
        ],
        "changes": list(delta.encoded.items()),
        "log_nodes": [(node.level, node.index, node.hash) for node in delta.log_nodes],
        "recent_validators": json.dumps([run.to_json() for run in state.recent_validators]),
    }


def _rows(record: Record) -> Rows:
    """Every row a block writes: the block, its transactions, the state changes, the log
    nodes, the query tables and the head."""
    height, *block = record["block"]
    first_index = record["first_index"]
    changes = [(key, None if value is None else value.decode()) for key, value in record["changes"]]
    batches, retirements, lots, gone = _projections(changes)
    return {
        "blocks": [
            (height, *(item.decode() if isinstance(item, bytes) else item for item in block))
        ],
        "transactions": [
            (first_index + offset, tx_id, height, kind, signer, leaf.decode())
            for offset, (tx_id, kind, signer, leaf, _) in enumerate(record["transactions"])
        ],
        "account_transactions": sorted(
            (account, first_index + offset)
            for offset, (*_, accounts) in enumerate(record["transactions"])
            for account in accounts
        ),
        # The history of the validator sets alone, which `_validator_set` and
        # `_rebuild_recent_validators` read: any other key's past is the blocks' to replay.
        # Every value's history had been ~1/6 of a block's write, read by nothing
        # (docs/decisions/0006-consensus.md); stores written before keep their rows.
        "state_changes": [(height, key, value) for key, value in changes if key in _VALIDATOR_KEYS],
        # A lot's current value is its row in `lots` (`_LOT_COLUMNS`), not a second copy here.
        "state_removed": [
            (key,) for key, value in changes if value is None and not key.startswith(_LOT_PREFIX)
        ],
        "state": [
            (key, value)
            for key, value in changes
            if value is not None and not key.startswith(_LOT_PREFIX)
        ],
        "log_nodes": record["log_nodes"],
        "batches": batches,
        "retirements": retirements,
        "lots_removed": gone,
        "lots": lots,
        "meta": [
            (str(height), "head_height"),
            (record["recent_validators"], "recent_validators"),
        ],
    }


def _projections(
    changes: list[tuple[str, str | None]],
) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    """Rows of the query tables derived from the state changes (values as canonical text):
    batches, retirements, lots written and lots removed (the last two sorted by key)."""
    batches, retirements, lots, gone = [], [], [], []
    for key, text in changes:
        family, _, rest = key.partition("/")
        if family not in ("batch", "retirement", "lot"):
            continue
        value: Any = None if text is None else json.loads(text)
        if family == "batch":
            batches.append(
                (
                    value["batch_id"],
                    value["methodology_id"],
                    value["certifier"],
                    value["project_id"],
                    value["height"],
                )
            )
        elif family == "retirement":
            retirements.append(
                (
                    value["retirement_id"],
                    value["holder"],
                    value["beneficiary"],
                    value["program_id"],
                    value["batch_id"],
                    value["height"],
                )
            )
        else:
            batch_id, _, start = rest.partition("/")
            if value is None:
                gone.append((batch_id, int(start)))
            else:
                lots.append(
                    (
                        batch_id,
                        value["first_serial"],
                        value["quantity"],
                        value["owner"],
                        value["status"],
                        value["retirement_id"],
                    )
                )
    return batches, retirements, sorted(lots), sorted(gone)


def _write(connection: sqlite3.Connection, record: Record) -> None:
    """One block in one SQLite transaction: all of its rows, or none after an error."""
    rows = _rows(record)
    assert set(rows) == {name for name, _ in _STATEMENTS}
    fault = record.get("fault")
    if fault == "full":  # the database may not grow by a page: SQLite's own SQLITE_FULL
        (pages,) = connection.execute("PRAGMA page_count").fetchone()
        connection.execute(f"PRAGMA max_page_count = {int(pages)}")
    try:
        with _transaction(connection, on_commit=_FAULTS.get(fault)):
            for name, statement in _STATEMENTS:
                connection.executemany(statement, rows[name])
    finally:
        if fault == "full":
            connection.execute(f"PRAGMA max_page_count = {_PAGES_MAX}")


def _refuse_file_writes() -> Callable[[], None]:
    """Until the returned function is called, the kernel refuses this process's file writes
    past the first byte (RLIMIT_FSIZE: EFBIG; Python ignores SIGXFSZ): SQLite's COMMIT meets a
    real write error (SQLITE_IOERR_WRITE) and rolls back."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def _die() -> Callable[[], None]:
    os._exit(3)  # the writer dies with the block's rows written, uncommitted


_FAULTS: Final[dict[Any, Callable[[], Callable[[], None]]]] = {
    "ioerror": _refuse_file_writes,
    "exit": _die,
}
_PAGES_MAX: Final = 0xFFFFFFFE  # SQLite's largest max_page_count


WRITER_STOP_SECONDS: Final = 10.0

FAULT_ENVIRONMENT: Final = "TANLIAN_STORE_FAULT"
"""Tests only: `N:KIND` or `N:KIND:forever` makes the N-th block write of a node's writer
(and, with `forever`, every one after it) fail for real inside its SQLite transaction. KIND is
`ioerror` (the kernel refuses the COMMIT's file writes, RLIMIT_FSIZE: SQLite's own
SQLITE_IOERR_WRITE, every row already written), `full` (the database may not grow by a page,
`PRAGMA max_page_count`: SQLite's own SQLITE_FULL once the block needs a new page), `exit`
(the writer process dies just before COMMIT) or `exit_committed` (it dies just after COMMIT,
before it answers: the block is stored). Unset, nothing is injected."""
FAULT_KINDS: Final = ("ioerror", "full", "exit", "exit_committed")


def parse_fault(text: str | None) -> tuple[int, str, bool] | None:
    """(N, KIND, forever) from FAULT_ENVIRONMENT's value; StoreError if it is not one."""
    if not text:
        return None
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0].isdigit() or int(parts[0]) < 1:
        raise StoreError(f"{FAULT_ENVIRONMENT} must be N:KIND[:forever], not {text!r}")
    if parts[1] not in FAULT_KINDS or parts[2:] not in ([], ["forever"]):
        raise StoreError(f"{FAULT_ENVIRONMENT}: KIND is one of {FAULT_KINDS}, then :forever")
    return int(parts[0]), parts[1], len(parts) == 3


class WriterDied(StoreError):
    """The writer process ended before it answered: the block may or may not be stored."""


class _Writer:
    """`python -m ledger.store DATABASE`: writes each block record it is sent, one SQLite
    transaction each, and answers once the block is durable (an empty answer) or with the
    error that rolled it back. A writer that dies before its COMMIT fails the block it held
    (nothing of it was committed); one that dies after it left the block stored, which
    `Store.append` reads back. Either is replaced at the next block."""

    def __init__(self, database: Path, lock: DirectoryLock) -> None:
        self.database = database
        self.lock = lock
        self.writes = 0  # blocks handed to a writer process, counted across its restarts
        self.fault = parse_fault(os.environ.get(FAULT_ENVIRONMENT))
        # Started now, not at the first block (its interpreter starts on the other core while
        # the node loads its state), and holding the directory lock too (the same open file):
        # a node killed while its writer finishes a block keeps the next node out until the
        # writer has ended.
        self.child = Child(
            "ledger.store",
            str(database),
            stop_seconds=WRITER_STOP_SECONDS,
            pass_fds=(lock.fileno(),),
            start_now=True,
        )

    def write(self, record: Record) -> None:
        self.writes += 1
        if self.fault is not None:
            first, kind, forever = self.fault
            if self.writes == first or (forever and self.writes > first):
                record = {**record, "fault": kind}
        # Answers are empty or an error's text, made by our own child: no bound needed.
        answer = self.child.exchange(marshal.dumps(record), answer_bytes_max=None)
        if answer is None:
            raise WriterDied("the store's writer process died: the block was not written")
        if answer:
            raise StoreError(f"the block was not written: {answer.decode()}")

    def close(self) -> None:
        self.child.close()


def serve_writes(database: Path, source: IO[bytes], sink: IO[bytes]) -> None:
    """The writer process: write each block record, answer, until the node closes the pipe."""
    if not database.is_file():  # connecting would create an empty database
        raise StoreError(f"no ledger at {database}")
    connection = Store._connect(database)
    try:
        while (request := read_frame(source, max_bytes=None)) is not None:
            try:
                record = marshal.loads(request)
            except (EOFError, ValueError, TypeError):
                # Only the node writes this pipe, in whole frames (a frame cut short ends
                # the loop above as the end of its input), so this is no request the node
                # makes. It was seen in CI's output as a traceback: a test's stand-in bytes,
                # sent by a block loop that went on past its node's stop. Nothing of it is
                # written, and no answer is read: one line, and the writer ends.
                line = "tanlian store writer: a request that is no block record; ending"
                print(line, file=sys.stderr)
                return
            try:
                _write(connection, record)
            except (sqlite3.Error, AssertionError, ValueError) as error:
                answer = str(error).encode() or type(error).__name__.encode()
            else:
                if record.get("fault") == "exit_committed":
                    os._exit(3)  # the block committed, its answer never sent
                answer = b""
            try:
                write_frame(sink, answer)
            except BrokenPipeError:
                return  # the node is gone (killed): the block is stored or rolled back
    finally:
        connection.close()


MOVED_ASIDE_PREFIX: Final = "store-moved-aside-"


def move_store_aside(directory: Path) -> Path | None:
    """Move the data directory's database (with its SQLite WAL and shared-memory files) into a
    new folder `store-moved-aside-<UTC time>` inside it, for `tanlian node --resync`: a
    damaged store is kept for its operator to inspect, never deleted; everything else of the
    directory (the validator's signed-message log above all) stays. Holds the directory's
    write lock meanwhile, so a running node's store is never moved. Returns the folder, or
    None when there was no database."""
    files = [directory / (DATABASE_FILE + suffix) for suffix in ("", "-wal", "-shm")]
    if not any(path.exists() for path in files):
        return None
    lock = DirectoryLock(directory / LOCK_FILE)
    lock.acquire(wait_seconds=LOCK_WAIT_SECONDS)
    try:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = directory / f"{MOVED_ASIDE_PREFIX}{stamp}"
        number = 1
        while aside.exists():
            number += 1
            aside = directory / f"{MOVED_ASIDE_PREFIX}{stamp}-{number}"
        aside.mkdir()
        # The WAL file goes with the database: it may hold committed pages. The database
        # goes first: killed in between, no database is left here to open at its last
        # checkpoint, silently without its newest blocks (a single validator would decide
        # those heights again, differently); the WAL left behind refuses a new database
        # here (`create`) until it is moved aside too (another --resync).
        for path in files:
            if path.exists():
                path.rename(aside / path.name)
        fsync_directory(directory)
    finally:
        lock.release()
    return aside


def fsync_directory(directory: Path) -> None:
    """Make renames in `directory` durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class DirectoryLock:
    """An exclusive `flock` on a file of the data directory, held by the one process that
    writes blocks there (and by its writer process, which shares the open file): two nodes on
    one directory, or a node restarted while its killed predecessor's writer still finishes
    a block, would otherwise both write. The kernel drops it when every holder has ended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._descriptor: int | None = None

    def acquire(self, *, wait_seconds: float) -> None:
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(descriptor)
                    raise StoreError(
                        f"another process writes to {self.path.parent} (it holds "
                        f"{self.path.name} after {wait_seconds:g} s): one node per directory"
                    ) from None
                time.sleep(0.01)
            else:
                self._descriptor = descriptor
                return

    def fileno(self) -> int:
        assert self._descriptor is not None, "not acquired"
        return self._descriptor

    def release(self) -> None:
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is not None:
            os.close(descriptor)


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (SQLite may have rolled back
    already after an I/O error). `on_commit` (fault injection) runs just before COMMIT and
    returns what undoes it once COMMIT has returned or failed."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        on_commit: Callable[[], Callable[[], None]] | None = None,
    ) -> None:
        self.connection = connection
        self.on_commit = on_commit

    def __enter__(self) -> None:
        self.connection.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        if kind is None:
            undo = None if self.on_commit is None else self.on_commit()
            try:
                self.connection.execute("COMMIT")
            finally:
                if undo is not None:
                    undo()
        elif self.connection.in_transaction:
            self.connection.execute("ROLLBACK")


@contextlib.contextmanager
def _read_transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """Every read inside sees one commit (WAL: the snapshot of the first read); within a
    transaction already open, that one's."""
    if connection.in_transaction:
        yield
        return
    connection.execute("BEGIN")
    try:
        yield
    finally:
        if connection.in_transaction:
            connection.execute("ROLLBACK")  # nothing was written: ends the snapshot


# Indexes that answer the lists newest first, and an owner's lots in order and its supply,
# without a sort or a visit to every row (a store made before them gets them when a node
# opens it: `ensure_layout`). Without them, on a chain of 700,000 transactions, the newest
# retirements took 640 ms (a scan and a sort of every retirement) and the supply of an account
# with 27,000 lots 470 ms (a lookup of each lot), measured on the loaded 2-core machine.
# The rows of the history table that record a validator set: a partial index holds only them,
# so finding them reads no other row (a scan of the largest table had cost every new reader
# connection 0.3 s at 200,000 transactions, found by review) and a block's write touches it
# only when a set changes. The query's WHERE is this very expression, as SQLite requires.
_VALIDATOR_KEYS: Final = ("validators/current", "validators/next")
_VALIDATOR_CHANGES: Final = "key IN (" + ", ".join(f"'{key}'" for key in _VALIDATOR_KEYS) + ")"

# A batch's number n of its id `B-<n>`, as the indexes below hold it: a query that reads them
# in this order must use this very expression (`api.reads`).
BATCH_NUMBER: Final = "CAST(substr(batch_id, 3) AS INTEGER)"

_LIST_INDEXES: Final = (
    "CREATE INDEX IF NOT EXISTS state_changes_validators "
    f"ON state_changes (height) WHERE {_VALIDATOR_CHANGES}",
    "CREATE INDEX IF NOT EXISTS retirements_newest ON retirements (height, retirement_id)",
    "CREATE INDEX IF NOT EXISTS retirements_program_newest "
    "ON retirements (program_id, height, retirement_id)",
    "CREATE INDEX IF NOT EXISTS retirements_beneficiary_newest "
    "ON retirements (beneficiary, height, retirement_id)",
    # An account's lots in issuance order (B-2 before B-10), as `api.reads` lists them, with
    # what its totals need: the expression is the queries' own.
    "CREATE INDEX IF NOT EXISTS lots_owner_number "
    f"ON lots (owner, {BATCH_NUMBER}, first_serial, batch_id, status, quantity)",
    # Batches newest first, by their number (B-12 after B-9), as `api.reads.batches` orders
    # them: the expression is the query's own, so no page sorts every batch (300,000 batches
    # took ~100 ms a page with a sort, found by review).
    f"CREATE INDEX IF NOT EXISTS batches_newest ON batches ({BATCH_NUMBER})",
    "CREATE INDEX IF NOT EXISTS batches_methodology_newest "
    f"ON batches (methodology_id, {BATCH_NUMBER})",
    f"CREATE INDEX IF NOT EXISTS batches_certifier_newest ON batches (certifier, {BATCH_NUMBER})",
)

# Indexes a store made before 2026-12-05 has (the batches' two and the lots' text-ordered one
# until later that day): one above answers every query each did, and `ensure_layout` drops
# them. Every row a block writes into an index is a random insert, so each cost the writer a
# B-tree page: dropping the lots' owner index took its share of the writer's time from ~21 to
# ~16 us a transaction (transfers and retirements, in-process; docs/decisions/0006).
_SUPERSEDED_INDEXES: Final = (
    "idx_lots_owner",  # by lots_owner_supply
    "idx_retirements_beneficiary",  # by retirements_beneficiary_newest
    "idx_retirements_program_id",  # by retirements_program_newest
    "idx_batches_methodology_id",  # by batches_methodology_newest
    "idx_batches_certifier",  # by batches_certifier_newest
    "lots_owner_supply",  # by lots_owner_number (it listed batches in text order)
)


def _create_schema(db: sqlite_utils.Database) -> None:
    db.table("meta").create({"key": str, "value": str}, pk="key")
    db.table("blocks").create(
        {
            "height": int,
            "hash": str,
            "time": int,
            "header": str,
            "last_commit": str,
            "evidence": str,
            "certificate": str,
            "tx_count": int,
            "log_size": int,
        },
        pk="height",
        not_null={"hash", "time", "header", "evidence", "certificate"},
    )
    db.table("blocks").create_index(["hash"], unique=True)
    db.table("transactions").create(
        {
            "log_index": int,
            "tx_id": str,
            "height": int,
            "type": str,
            "signer": str,
            "envelope": str,
        },
        pk="log_index",
        not_null={"tx_id", "height", "type", "signer", "envelope"},
    )
    db.table("transactions").create_index(["tx_id"], unique=True)
    db.table("transactions").create_index(["height"])
    db.execute(
        "CREATE TABLE account_transactions (account TEXT NOT NULL, log_index INTEGER NOT NULL, "
        "PRIMARY KEY (account, log_index)) WITHOUT ROWID"
    )
    db.execute("CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")
    # Appended in height order: a rowid table with a height index stays append-only.
    db.execute(
        "CREATE TABLE state_changes (height INTEGER NOT NULL, key TEXT NOT NULL, value TEXT)"
    )
    db.execute("CREATE INDEX state_changes_height ON state_changes (height)")
    db.execute(
        "CREATE TABLE log_nodes (level INTEGER NOT NULL, idx INTEGER NOT NULL, "
        "hash BLOB NOT NULL, PRIMARY KEY (level, idx)) WITHOUT ROWID"
    )
    db.table("batches").create(
        {
            "batch_id": str,
            "methodology_id": str,
            "certifier": str,
            "project_id": str,
            "height": int,
        },
        pk="batch_id",
    )
    db.table("retirements").create(
        {
            "retirement_id": str,
            "holder": str,
            "beneficiary": str,
            "program_id": str,
            "batch_id": str,
            "height": int,
        },
        pk="retirement_id",
    )
    db.table("retirements").create_index(["holder"])
    db.execute(
        "CREATE TABLE lots (batch_id TEXT NOT NULL, first_serial INTEGER NOT NULL, "
        "quantity INTEGER NOT NULL, owner TEXT NOT NULL, status TEXT NOT NULL, "
        "retirement_id TEXT, PRIMARY KEY (batch_id, first_serial)) WITHOUT ROWID"
    )
    for statement in _LIST_INDEXES:
        db.execute(statement)


def _main() -> None:
    run_child(lambda source, sink: serve_writes(Path(sys.argv[1]), source, sink))


if __name__ == "__main__":
    _main()
