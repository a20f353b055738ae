"""What a node reads for its answers: the queries the JSON routes and the explorer's pages share.

Values come from the node's latest state (`node.state`: one consistent height, in memory);
lists come from the store's indexed query tables through this thread's read connection
(`node.reader()`), newest first, each page bounded by its `limit` and continued by an opaque
cursor (`api.cursors`). A list whose rows name state values (lots, batches, retirements,
the registry's entries) is read in one transaction at the state's height (`_settled`); the
lists of blocks and transactions come from the store alone.
A list query reads at most `limit + 1` rows: one more than the page,
to know whether another page follows. An id that names nothing raises `not_found`; a cursor
this node did not give out raises `invalid_field`.

The routes stay thin: `api.routes.registry` answers these as JSON, `api.routes.explorer` as
HTML.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from api.cursors import decode_cursor, encode_cursor
from api.node import Node
from ledger.errors import LedgerError
from ledger.state import State
from ledger.store import BATCH_NUMBER, Store

HOLDING_RANGES_MAX: Final = 1000  # serial ranges in one JSON account answer
POSITION_MAX: Final = 2**63 - 1  # past every log index, batch number and serial
FAMILY_ENTRIES_MAX: Final = 1000  # methodologies, certifiers or programmes on one page
BLOCKS_PAGE_TRANSACTIONS_MAX: Final = 2000  # in one page of whole blocks (one block may hold more)
READ_SETTLE_SECONDS: Final = 2.0  # how long a read waits for the state to reach the store's head
# An account's lots in issuance order (B-2 before B-10), as the index `lots_owner_number` holds
# them: the expression is the index's own (ledger.store), so no read sorts an account's lots.
LOT_ORDER: Final = f"{BATCH_NUMBER}, first_serial"

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Page:
    """One page of a list, and the cursor of the next (None on the last page)."""

    items: list[Any]
    next_cursor: str | None

    def to_json(self) -> dict[str, Any]:
        return {"items": self.items, "next_cursor": self.next_cursor}


def _page(items: list[Any], position: dict[str, Any] | None) -> Page:
    return Page(items=items, next_cursor=None if position is None else encode_cursor(position))


class ReadInThread(Exception):
    """Raised instead of reading, with `wait=False` (a caller on the event loop), for a read
    that would hold the loop: the caller waits its own way, then reads in a thread."""

    height: int | None = None  # the height to wait for first, if any


class StoreAhead(ReadInThread):
    """The store holds a block the node's state has not taken yet (the block loop takes it
    within a poll of the write): rows read now are of a later height than the state."""

    def __init__(self, height: int) -> None:
        super().__init__(height)
        self.height = height


class LargeAccount(ReadInThread):
    """An account with more lots than an answer lists: finding its circulating ones scans
    every lot it has (~30 ms at 200,000), too long for the event loop."""


def _settled(node: Node, read: Callable[[State, sqlite3.Connection], T], *, wait: bool = True) -> T:
    """`read(state, db)` with the node's state and a read transaction of the store at the
    same height. The writer commits block H+1 before the state moves on to it, so a query
    table read then, checked against the state of H, would lose what H+1 moved: a lot that
    changed hands in H+1 is in neither (an account shown holding nothing at H). So the
    store's head is read in the same transaction as the rows, and if it is ahead the read
    waits for the state (in this thread; `wait=False` raises `StoreAhead` instead, for an
    event loop to wait its own way) and is made again."""
    deadline = time.monotonic() + READ_SETTLE_SECONDS
    while True:
        state = node.state
        db = node.reader().db.conn
        db.execute("BEGIN")
        try:
            (head,) = db.execute("SELECT value FROM meta WHERE key = 'head_height'").fetchone()
            if int(head) == state.height:
                return read(state, db)
        finally:
            db.execute("COMMIT")
        if not wait:
            raise StoreAhead(int(head))
        remaining = deadline - time.monotonic()
        if int(head) < state.height or not node.wait_for_height(int(head), remaining):
            raise LedgerError(
                f"the store's head ({head}) and the node's state ({state.height}) do not agree",
                code="store_unavailable",
            )


# --- accounts -------------------------------------------------------------------------------------


def account(node: Node, account_id: str, *, wait: bool = True) -> dict[str, Any]:
    """Keys, nonce, status, roles and holdings by batch with serial ranges: at most
    HOLDING_RANGES_MAX ranges, the circulating ones first (what the account can spend), and
    `holdings_truncated` when it has more; each batch's totals count the ranges shown. Lots
    changing hands cannot make one vanish (`_settled`). With `wait=False` a read that would
    wait, or scan more than an answer's ranges, raises `ReadInThread` instead."""

    def read(state: State, db: sqlite3.Connection) -> dict[str, Any]:
        value = state.get(f"account/{account_id}")
        if value is None:
            raise LedgerError(f"no account {account_id}", code="not_found")
        listed = HOLDING_RANGES_MAX + 1
        rows = db.execute(
            f"SELECT batch_id, first_serial FROM lots WHERE owner = ? ORDER BY {LOT_ORDER} LIMIT ?",
            (account_id, listed),
        ).fetchall()
        if len(rows) == listed:
            # Retired lots never merge, so an account retiring a unit at a time has thousands:
            # they must not push its circulating lots out of the answer. No index finds an
            # owner's circulating lots (one would cost every block's write): they are scanned.
            if not wait:
                raise LargeAccount
            rows = db.execute(
                "SELECT batch_id, first_serial FROM lots WHERE owner = ? "
                f"AND status = 'circulating' ORDER BY {LOT_ORDER} LIMIT ?",
                (account_id, listed),
            ).fetchall()
            if len(rows) < listed:
                rows += db.execute(
                    "SELECT batch_id, first_serial FROM lots WHERE owner = ? "
                    f"AND status != 'circulating' ORDER BY {LOT_ORDER} LIMIT ?",
                    (account_id, listed - len(rows)),
                ).fetchall()
        holdings: dict[str, dict[str, Any]] = {}
        shown = sorted(rows[:HOLDING_RANGES_MAX], key=lambda row: (batch_number(row[0]), row[1]))
        for batch_id, first, quantity, status in held_lots(state, account_id, shown):
            entry = holdings.setdefault(
                batch_id,
                {
                    "batch_id": batch_id,
                    "circulating": 0,
                    "retired": 0,
                    "invalidated": 0,
                    "ranges": [],
                },
            )
            entry[status] += quantity
            entry["ranges"].append({"first": first, "last": first + quantity - 1, "status": status})
        return {
            "account_id": account_id,
            "keys": value["keys"],
            "threshold": value["threshold"],
            "nonce": value["nonce"],
            "status": value["status"],
            "roles": _roles(state, account_id),
            "holdings": list(holdings.values()),
            "holdings_truncated": len(rows) > HOLDING_RANGES_MAX,
            "height": state.height,
        }

    return _settled(node, read, wait=wait)


def batch_number(batch_id: str) -> int:
    """n of a batch id `B-<n>`; -1 for anything else (a damaged row, a forged cursor), a
    number past POSITION_MAX included: SQLite takes no larger integer (a forged cursor's
    B-99999999999999999999 had been a 500, found by review)."""
    digits = batch_id[2:]
    if batch_id[:2] != "B-" or not digits.isascii() or not digits.isdigit() or len(digits) > 19:
        return -1
    number = int(digits)
    return number if number <= POSITION_MAX else -1


def held_lots(
    state: State, account_id: str, rows: Iterable[tuple[str, int]]
) -> Iterator[tuple[str, int, int, str]]:
    """`(batch_id, first, quantity, status)` of each lot the rows `(batch_id, first_serial)`
    name, read from the state. The lots table is an index that finds an account's lots; what
    is served comes from the state (verified against the head at start), so a damaged row
    cannot forge a holding. A row the state does not hold for this account (a damaged index)
    is left out; the rows and the state are of one height (`_settled`)."""
    for batch_id, first in rows:
        lot = state.get(f"lot/{batch_id}/{first}")
        if lot is not None and lot["owner"] == account_id:
            yield batch_id, first, lot["quantity"], lot["status"]


def roles(node: Node, account_id: str) -> list[str]:
    return _roles(node.state, account_id)


def _roles(state: State, account_id: str) -> list[str]:
    """What the account may do at the head: "certifier" only while its accreditation is
    unrevoked and the head's time lies in `[valid_from, valid_until)` (SPEC §3.3), so an
    expired or not yet valid one is not shown as a role it cannot sign in."""
    found = ["holder"]
    if account_id == state.authority:
        found.append("authority")
    certifier = state.get(f"certifier/{account_id}")
    if (
        certifier is not None
        and certifier["revoked_height"] is None
        and certifier["valid_from"] <= state.head_time < certifier["valid_until"]
    ):
        found.append("certifier")
    return found


def account_history(node: Node, account_id: str, *, limit: int, cursor: str | None) -> Page:
    """The transactions that name the account, newest first: each `{log_index, tx_id, height,
    type, envelope}` (the envelope as its stored canonical text)."""
    position = decode_cursor(cursor, {"before": int})
    before = position["before"] if position else POSITION_MAX
    rows = (
        node.reader()
        .db.execute(
            "SELECT t.log_index, t.tx_id, t.height, t.type, t.envelope FROM account_transactions a "
            "JOIN transactions t ON t.log_index = a.log_index "
            "WHERE a.account = ? AND a.log_index < ? ORDER BY a.log_index DESC LIMIT ?",
            (account_id, before, limit + 1),
        )
        .fetchall()
    )
    items = [
        {"log_index": index, "tx_id": tx_id, "height": height, "type": kind, "envelope": text}
        for index, tx_id, height, kind, text in rows[:limit]
    ]
    return _page(items, {"before": rows[limit - 1][0]} if len(rows) > limit else None)


def account_lots(node: Node, account_id: str, *, limit: int, cursor: str | None) -> Page:
    """The account's lots (every status) by batch, in issuance order, and serial: `{batch_id,
    first, last, quantity, status, retirement_id}`."""
    position = decode_cursor(cursor, {"batch": str, "serial": int})
    after = (batch_number(position["batch"]), position["serial"]) if position else (-1, -1)
    if after[0] < 0 and position:
        raise LedgerError("cursor is not one this node gave out", code="invalid_field")

    def read(state: State, db: sqlite3.Connection) -> Page:
        # The first term is what SQLite seeks the index with (it does not seek on a row
        # value over an expression: every page had walked the account's lots from the first,
        # found by review); the second is the exact position.
        rows = db.execute(
            "SELECT batch_id, first_serial FROM lots "
            f"WHERE owner = ? AND {BATCH_NUMBER} >= ? AND ({LOT_ORDER}) > (?, ?) "
            f"ORDER BY {LOT_ORDER} LIMIT ?",
            (account_id, after[0], *after, limit + 1),
        ).fetchall()
        items = [
            _lot(state, batch_id, first, quantity, status)
            for batch_id, first, quantity, status in held_lots(state, account_id, rows[:limit])
        ]
        more = (
            {"batch": rows[limit - 1][0], "serial": rows[limit - 1][1]}
            if len(rows) > limit
            else None
        )
        return _page(items, more)

    return _settled(node, read)


def account_totals(node: Node, account_id: str) -> dict[str, int]:
    """Units the account holds (circulating), has retired, and lost to invalidation."""

    def read(state: State, db: sqlite3.Connection) -> dict[str, int]:
        totals = {"circulating": 0, "retired": 0, "invalidated": 0}
        rows = db.execute("SELECT batch_id, first_serial FROM lots WHERE owner = ?", (account_id,))
        for _, _, quantity, status in held_lots(state, account_id, rows):
            totals[status] += quantity
        return totals

    return _settled(node, read)


def _lot(state: State, batch_id: str, first: int, quantity: int, status: str) -> dict[str, Any]:
    retirement_id = None
    if status == "retired":
        value = state.get(f"lot/{batch_id}/{first}")
        retirement_id = None if value is None else value["retirement_id"]
    return {
        "batch_id": batch_id,
        "first": first,
        "last": first + quantity - 1,
        "quantity": quantity,
        "status": status,
        "retirement_id": retirement_id,
    }


# --- batches and lots -----------------------------------------------------------------------------


def batches(
    node: Node,
    *,
    methodology_id: str | None,
    certifier: str | None,
    limit: int,
    cursor: str | None,
) -> Page:
    """Batches (their state values), newest first, by methodology or certifier."""
    position = decode_cursor(cursor, {"before": int})
    before = position["before"] if position else POSITION_MAX
    clauses: list[str] = [f"{BATCH_NUMBER} < ?"]
    values: list[Any] = [before]
    if methodology_id is not None:
        clauses.append("methodology_id = ?")
        values.append(methodology_id)
    if certifier is not None:
        clauses.append("certifier = ?")
        values.append(certifier)

    def read(state: State, db: sqlite3.Connection) -> Page:
        rows = db.execute(
            "SELECT batch_id FROM batches WHERE "
            + " AND ".join(clauses)
            + f" ORDER BY {BATCH_NUMBER} DESC LIMIT ?",
            (*values, limit + 1),
        ).fetchall()
        items = [state.get(f"batch/{batch_id}") for (batch_id,) in rows[:limit]]
        more = {"before": int(rows[limit - 1][0][2:])} if len(rows) > limit else None
        return _page([item for item in items if item is not None], more)

    return _settled(node, read)


def batch(node: Node, batch_id: str) -> dict[str, Any]:
    value: dict[str, Any] | None = node.state.get(f"batch/{batch_id}")
    if value is None:
        raise LedgerError(f"no batch {batch_id}", code="not_found")
    return value


def batch_lots(node: Node, batch_id: str, *, limit: int, cursor: str | None) -> Page:
    """A batch's lots in serial order: `{batch_id, first, last, quantity, status, owner,
    retirement_id}`; together they cover the batch's serials exactly (SPEC §3.4)."""
    position = decode_cursor(cursor, {"serial": int})
    after = position["serial"] if position else -1

    def read(state: State, db: sqlite3.Connection) -> Page:
        rows = db.execute(
            "SELECT first_serial FROM lots "
            "WHERE batch_id = ? AND first_serial > ? ORDER BY first_serial LIMIT ?",
            (batch_id, after, limit + 1),
        ).fetchall()
        items = []
        for (first,) in rows[:limit]:
            lot = state.get(f"lot/{batch_id}/{first}")
            if lot is not None:
                lot_item = _lot(state, batch_id, first, lot["quantity"], lot["status"])
                items.append({**lot_item, "owner": lot["owner"]})
        return _page(items, {"serial": rows[limit - 1][0]} if len(rows) > limit else None)

    return _settled(node, read)


# --- retirements ----------------------------------------------------------------------------------


def retirements(
    node: Node,
    *,
    beneficiary: str | None,
    program_id: str | None,
    limit: int,
    cursor: str | None,
) -> Page:
    """Retirement records, newest first, by beneficiary or programme."""
    position = decode_cursor(cursor, {"height": int, "id": str})
    clauses: list[str] = []
    values: list[Any] = []
    if position is not None:  # a row value: a range of the (…, height, retirement_id) indexes
        clauses.append("(height, retirement_id) < (?, ?)")
        values += [position["height"], position["id"]]
    if beneficiary is not None:
        clauses.append("beneficiary = ?")
        values.append(beneficiary)
    if program_id is not None:
        clauses.append("program_id = ?")
        values.append(program_id)
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""

    def read(state: State, db: sqlite3.Connection) -> Page:
        rows = db.execute(
            f"SELECT retirement_id, height FROM retirements {where} "
            "ORDER BY height DESC, retirement_id DESC LIMIT ?",
            (*values, limit + 1),
        ).fetchall()
        items = [state.get(f"retirement/{rid}") for rid, _ in rows[:limit]]
        more = (
            {"height": rows[limit - 1][1], "id": rows[limit - 1][0]} if len(rows) > limit else None
        )
        return _page([item for item in items if item is not None], more)

    return _settled(node, read)


def retirement(node: Node, retirement_id: str) -> dict[str, Any]:
    value: dict[str, Any] | None = node.state.get(f"retirement/{retirement_id}")
    if value is None:
        raise LedgerError(f"no retirement {retirement_id}", code="not_found")
    return value


# --- blocks and transactions ----------------------------------------------------------------------


def _top(node: Node, cursor: str | None) -> int:
    """The height above the page: the head + 1, or the cursor's position."""
    position = decode_cursor(cursor, {"before": int})
    head = node.state.height
    return head + 1 if position is None else min(position["before"], head + 1)


def blocks(node: Node, *, limit: int, cursor: str | None) -> Page:
    """Blocks with their certificates, newest first: at most `limit` of them, and no more
    than BLOCKS_PAGE_TRANSACTIONS_MAX transactions in all but for the page's first block (a
    review found 100 full blocks, half a million transactions, could be asked for at once)."""
    top = _top(node, cursor)
    store = node.reader()
    counts = dict(
        store.db.execute(
            "SELECT height, tx_count FROM blocks WHERE height < ? ORDER BY height DESC LIMIT ?",
            (top, limit),
        ).fetchall()
    )
    heights: list[int] = []
    taken = 0
    for height in range(top - 1, max(top - 1 - limit, 0), -1):
        count = counts.get(height, 0)  # a missing row: `read_block` says the store is damaged
        if heights and taken + count > BLOCKS_PAGE_TRANSACTIONS_MAX:
            break
        heights.append(height)
        taken += count
    items = [
        {"block": store.read_block(h).to_json(), "certificate": store.read_certificate(h).to_json()}
        for h in heights
    ]
    return _page(items, {"before": heights[-1]} if heights and heights[-1] > 1 else None)


def block_summaries(node: Node, *, limit: int, cursor: str | None) -> Page:
    """Blocks newest first without their transactions: `{height, hash, time, transactions,
    log_size, proposer, signatures}` (a list page reads headers only, whatever the blocks
    hold)."""
    top = _top(node, cursor)
    rows = (
        node.reader()
        .db.execute(
            "SELECT height, hash, time, tx_count, log_size, header, certificate FROM blocks "
            "WHERE height < ? ORDER BY height DESC LIMIT ?",
            (top, limit),
        )
        .fetchall()
    )
    items = [
        {
            "height": height,
            "hash": block_hash,
            "time": time,
            "transactions": count,
            "log_size": log_size,
            "proposer": json.loads(header)["proposer"],
            "signatures": len(json.loads(certificate)["signatures"]),
        }
        for height, block_hash, time, count, log_size, header, certificate in rows
    ]
    last = items[-1]["height"] if items else 1
    return _page(items, {"before": last} if len(items) == limit and last > 1 else None)


def block_header(node: Node, height: int) -> dict[str, Any]:
    """`{header, certificate, hash, transactions, evidence}` of a committed height."""
    if not 1 <= height <= node.state.height:
        raise LedgerError(f"no block at height {height} yet", code="not_found")
    row = (
        node.reader()
        .db.execute(
            "SELECT header, certificate, hash, tx_count, evidence, last_commit FROM blocks "
            "WHERE height = ?",
            (height,),
        )
        .fetchone()
    )
    if row is None:
        raise LedgerError(f"no block at height {height}", code="not_found")
    header, certificate, block_hash, count, evidence, last_commit = row
    return {
        "header": json.loads(header),
        "certificate": json.loads(certificate),
        "hash": block_hash,
        "transactions": count,
        "evidence": json.loads(evidence),
        "last_commit": None if last_commit is None else json.loads(last_commit),
    }


def block_transactions(node: Node, height: int, *, limit: int, cursor: str | None) -> Page:
    """The transactions of one block in log order: `{log_index, tx_id, type, signer,
    envelope}` (a block holds up to block_transactions_max of them)."""
    position = decode_cursor(cursor, {"after": int})
    after = position["after"] if position else -1
    rows = (
        node.reader()
        .db.execute(
            "SELECT log_index, tx_id, type, signer, envelope FROM transactions "
            "WHERE height = ? AND log_index > ? ORDER BY log_index LIMIT ?",
            (height, after, limit + 1),
        )
        .fetchall()
    )
    items = [
        {"log_index": index, "tx_id": tx_id, "type": kind, "signer": signer, "envelope": text}
        for index, tx_id, kind, signer, text in rows[:limit]
    ]
    return _page(items, {"after": rows[limit - 1][0]} if len(rows) > limit else None)


def transaction_proof(node: Node, tx_id: str) -> dict[str, Any]:
    """A committed transaction with its RFC 9162 inclusion proof against the latest
    checkpoint and the validators that certified it: everything a browser needs to check it
    without trusting the node. The store checks the proof before it is served."""
    state = node.state
    store: Store = node.reader()
    proof = store.inclusion_proof(tx_id, state.height)
    height, _, envelope = store.transaction_position(tx_id)
    return {
        "transaction": envelope.to_json(),
        "height": height,
        "log_index": proof["log_index"],
        "log_size": proof["log_size"],
        "path": proof["path"],
        "checkpoint": proof["checkpoint"],
        "validators": [v.to_json() for v in state.last_validators],
    }


# --- the registry's own entries (SPEC §4: methodology/, certifier/, program/) ---------------------


def family(node: Node, prefix: str, *, limit: int, cursor: str | None) -> Page:
    """State values whose key starts with `prefix` ("methodology/", "certifier/",
    "program/"), in key order. The keys come from the store's state table (a range of its
    primary key), the values from the node's state, so a page shows one height."""
    assert prefix.endswith("/")
    position = decode_cursor(cursor, {"after": str})
    after = position["after"] if position else prefix
    if not after.startswith(prefix):  # a made-up cursor would reach into other families
        raise LedgerError("cursor is not one this node gave out", code="invalid_field")
    end = prefix[:-1] + chr(ord("/") + 1)  # the first key past the family

    def read(state: State, db: sqlite3.Connection) -> Page:
        rows = db.execute(
            "SELECT key FROM state WHERE key > ? AND key < ? ORDER BY key LIMIT ?",
            (after, end, limit + 1),
        ).fetchall()
        items = [value for (key,) in rows[:limit] if (value := state.get(key)) is not None]
        return _page(items, {"after": rows[limit - 1][0]} if len(rows) > limit else None)

    return _settled(node, read)
