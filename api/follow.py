"""Other nodes' public API, as block sync and followers use it (docs/decisions/0006).

`ApiSource` is a node's API as a `consensus.sync.BlockSource`: its head from
`GET /v1/checkpoint` and its blocks from `GET /v1/export`, read through `api.client.Client`
(strict JSON, each line bounded, each step and each whole answer bounded in time). Whatever it
answers is a claim; `consensus.sync.verify_lines` checks the blocks.

`Forwarder` is what a follower does with `POST /v1/transactions`: it signs nothing and holds no
pool, so it forwards the body as it came to the nodes it follows, in the order given, and
answers what the first that answers decides, as that node answered it: 202 pending, 200
committed, an array's results, or that node's RFC 9457 problem (its status from this node's
own table). A user of a follower gets the validators' outcome, not a guess, and never a
commit the follower has not verified (`vouch`): an answer must name the transactions
submitted, and "committed" is answered only for what the follower's own store holds (with its
height and log index); a commit it has not synced yet is answered pending, or, with
`?wait=commit`, waited for in its own store. What the follower cannot vouch for it does not
relay, and asks the next node instead (a transaction is idempotent by its id). A node whose
blocks showed another chain or a fork (`consensus.sync.BlockSync.distrusted`) is not asked at
all. When none gives an answer to relay:

    upstream_unavailable (503)  no followed node could be reached
    bad_upstream (502)          one answered something that is not a submission's answer, or
                                a problem whose code this node does not know
    forward_loop (508)          the followed nodes lead back to this follower

A forwarded submission names the followers it passed through (`FORWARDED_HEADER`: each one's
random id, made at its start), so a follower that follows itself, or followers that follow
each other, are answered `forward_loop` at once (found by review: a follower given its own
URL forwarded to itself until its per-client limit answered 429 `too_many_requests`). At most
FORWARD_HOPS_MAX followers may pass a submission on.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any, Final, TypeGuard

import httpx
from pydantic import TypeAdapter, ValidationError

from api import schemas
from api.client import (
    COMMIT_WAIT_MARGIN_SECONDS,
    COMMIT_WAIT_SECONDS_MAX,
    Client,
    ClientError,
)
from api.problems import STATUS
from consensus.producer import Outcome
from consensus.sync import Head
from ledger.blocks import parse_header
from ledger.encoding import decode
from ledger.errors import LedgerError
from ledger.limits import SYNC_READ_MS_MAX, SYNC_REQUEST_MS_MAX
from ledger.transactions import parse_envelope

log = logging.getLogger("tanlian.follow")

FORWARD_ANSWER_SECONDS_MAX: Final = COMMIT_WAIT_SECONDS_MAX + COMMIT_WAIT_MARGIN_SECONDS
# Past this long, a submission is not forwarded to more nodes block sync could not use a moment
# ago once one of them could not be reached: `tanlian tx` waits 35 s for an answer.
FORWARD_PATIENCE_SECONDS: Final = 15.0
FORWARDED_HEADER: Final = "tanlian-forwarded-by"
FORWARD_HOPS_MAX: Final = 8
_HOP: Final = re.compile(r"[0-9a-f]{16}")
_SUBMISSION_ANSWER: Final = TypeAdapter(schemas.Committed | schemas.Pending | schemas.Results)
# A followed node's problem is relayed when this node knows its code; its internal error is
# not ours to claim (bad_upstream instead).
_RELAYED: Final = frozenset(STATUS) - {"internal_error"}


class ApiSource:
    """A node's public API as a block source (`consensus.sync.BlockSource`)."""

    def __init__(self, url: str, *, transport: httpx.BaseTransport | None = None) -> None:
        """`transport` replaces the network (tests: `httpx.MockTransport`)."""
        self.client = Client(
            url,
            timeout=SYNC_READ_MS_MAX / 1000,
            answer_seconds_max=SYNC_REQUEST_MS_MAX / 1000,
            transport=transport,
        )

    @property
    def name(self) -> str:
        return self.client.base_url

    def latest(self) -> Head:
        try:
            checkpoint = self.client.checkpoint()
        except ClientError as error:
            if error.code == "not_found":
                return Head(0)  # a chain with no block yet
            raise
        header = checkpoint.get("header")
        height = header.get("height") if isinstance(header, dict) else None
        if not isinstance(height, int) or isinstance(height, bool) or height < 1:
            raise ClientError(f"{self.name}/v1/checkpoint: no header height in the answer")
        try:  # the hash of the header it serves: a claim, which its blocks must back
            block_hash = parse_header(header).block_hash()
        except LedgerError as error:
            raise ClientError(
                f"{self.name}/v1/checkpoint: not a header ({error.code}): {error.message}"
            ) from error
        return Head(height, block_hash)

    def export_lines(
        self, from_height: int, to_height: int, *, line_bytes_max: int
    ) -> Generator[bytes, None, None]:
        yield from self.client.export_lines(from_height, to_height, line_bytes_max=line_bytes_max)

    def close(self) -> None:
        self.client.close()


class Forwarder:
    """A follower's `POST /v1/transactions`; see the module docstring."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        distrusted: Callable[[int], str | None] = lambda index: None,
        refused: Callable[[int], bool] = lambda index: False,
        patience_seconds: float = FORWARD_PATIENCE_SECONDS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """`distrusted(i)` says why the node at `urls[i]` is not asked (its blocks showed
        another chain, or a fork: `consensus.sync.BlockSync.distrusted`), or None;
        `refused(i)`, whether block sync could not use it a moment ago
        (`BlockSync.refused_now`): such nodes are asked after the others, and once one of
        them could not be reached, the rest only while the submission has waited less than
        `patience_seconds`."""
        assert urls, "a follower follows at least one node"
        self.distrusted = distrusted
        self.refused = refused
        self.patience_seconds = patience_seconds
        self.identity = secrets.token_hex(8)  # this follower, in `FORWARDED_HEADER`
        # A whole answer within the longest commit wait and its margin: a node that drips
        # its answer is passed over for the next, as one that cannot be reached (found by
        # review: one held every submission, its status line sent, for as long as it liked).
        self.clients = [
            Client(url, answer_seconds_max=FORWARD_ANSWER_SECONDS_MAX, transport=transport)
            for url in urls
        ]

    def route(self, via: str) -> str:
        """The `FORWARDED_HEADER` this follower sends on, given the one a submission came
        with (anyone's text: what is not a follower's id is left out); raises `LedgerError`
        `forward_loop` when it names this follower, or FORWARD_HOPS_MAX of them."""
        hops = [
            hop.strip()
            for hop in via.split(",")[: FORWARD_HOPS_MAX + 1]
            if _HOP.fullmatch(hop.strip())
        ]
        if self.identity in hops:
            raise LedgerError(
                "this follower forwarded this submission itself: the nodes it follows lead "
                "back to it (it follows itself, or a follower that follows it); give each "
                "--follow the URL of a validator or of a follower of validators",
                code="forward_loop",
            )
        if len(hops) >= FORWARD_HOPS_MAX:
            raise LedgerError(
                f"the submission passed through {len(hops)} followers already: at most "
                f"{FORWARD_HOPS_MAX} forward it",
                code="forward_loop",
            )
        return ",".join([*hops, self.identity])

    def submit(
        self,
        body: bytes,
        *,
        wait: bool,
        ids: list[str | None] | None,
        own: Callable[[str], Outcome | None],
        via: str = "",
    ) -> tuple[int, dict[str, Any], list[str]]:
        """The first answer to `body` a followed node gives that can be relayed, as `vouch`
        makes it (`ids`: the body's, `own`: this follower's outcomes): its status (200 or
        202), body and the commits claimed that this store does not hold yet; or its problem
        raised as a `LedgerError` with the problem's code. A node that cannot be reached or
        answers something else is passed over for the next (a transaction is idempotent by
        its id, so a second node may see it too)."""
        failures: list[LedgerError] = []

        def held_here() -> dict[str, Any] | None:
            """This follower's own verified commit of the one envelope, read when asked
            (its chain may have synced meanwhile): it answers whatever the nodes it follows
            did (found by review: their refusals, or their silence, were relayed)."""
            return committed_here(own, ids[0]) if _one_envelope(ids, body) else None

        # Nodes block sync could not use a moment ago go last; once one of them could not be
        # reached, the others only within the patience (found by review: four stopped
        # validators held a submission 10 s each, 40 s in all, past the command line's own
        # wait; and the patience, because this follower's own link may have been what failed).
        started = time.monotonic()
        order = sorted(range(len(self.clients)), key=self.refused)
        unreached = False
        for index in order:
            client = self.clients[index]
            waited = time.monotonic() - started
            if unreached and self.refused(index) and waited >= self.patience_seconds:
                failures.append(
                    LedgerError(
                        f"{client.base_url} was not asked after {waited:.0f} s: block sync"
                        " could not use it a moment ago either",
                        code="upstream_unavailable",
                    )
                )
                continue
            distrust = self.distrusted(index)
            if distrust is not None:
                # Found by review: a follower forwarded to a node it had refused as another
                # chain, or caught serving a fork; its user was told "pending" for ever, or
                # the transaction was committed on the fork.
                failures.append(
                    LedgerError(
                        f"{client.base_url} was not asked: {distrust}",
                        code="upstream_unavailable",
                    )
                )
                continue
            try:
                _, answer = self._forward(client, body, wait, via or self.identity)
                return vouch(answer, ids, own, upstream=client.base_url)
            except LedgerError as error:
                if error.code == "forward_loop":  # that node leads back here: the next
                    failures.append(
                        LedgerError(
                            f"{client.base_url} leads back to this follower", code="forward_loop"
                        )
                    )
                    continue
                if error.code not in ("upstream_unavailable", "bad_upstream"):
                    # That node's decision, unless this follower's own chain says otherwise.
                    mine = held_here()
                    if mine is not None:
                        return 200, mine, []
                    raise
                # Block sync was right about this one: trust it about the rest.
                unreached = unreached or (
                    error.code == "upstream_unavailable" and self.refused(index)
                )
                failures.append(error)
        mine = held_here()  # none answered: this follower's own commit still does
        if mine is not None:
            return 200, mine, []
        reasons = "; ".join(failure.message for failure in failures)
        if any(failure.code == "bad_upstream" for failure in failures):
            raise LedgerError(reasons, code="bad_upstream")
        if all(failure.code == "forward_loop" for failure in failures):
            raise LedgerError(
                f"the nodes this follower follows lead back to it: {reasons}", code="forward_loop"
            )
        raise LedgerError(
            f"this node is a follower and none of the nodes it follows answered: {reasons}",
            code="upstream_unavailable",
        )

    @staticmethod
    def _forward(client: Client, body: bytes, wait: bool, via: str) -> tuple[int, dict[str, Any]]:
        try:
            status, answer = client.forward(body, wait=wait, headers={FORWARDED_HEADER: via})
        except ClientError as error:
            if error.code in ("node_unreachable", "bad_url"):
                raise LedgerError(error.message, code="upstream_unavailable") from error
            if error.status is not None and error.code in _RELAYED:
                # The validator's own words, as its problem had them: its address and status
                # are not the client's business (the status had been printed twice).
                # Debug: the submitter is answered; anyone could fill the log (review).
                log.debug("%s refused a forwarded submission: %s", client.base_url, error.message)
                raise LedgerError(error.detail or error.message, code=error.code) from error
            raise LedgerError(
                f"{client.base_url} answered the submission badly: {error.message}",
                code="bad_upstream",
            ) from error
        try:
            _SUBMISSION_ANSWER.validate_python(answer, strict=True)
        except ValidationError as error:
            raise LedgerError(
                f"{client.base_url} answered the submission with something else: "
                f"{error.errors()[0]['msg']}",
                code="bad_upstream",
            ) from error
        if status not in (200, 202):
            raise LedgerError(
                f"{client.base_url} answered the submission with HTTP {status}",
                code="bad_upstream",
            )
        return status, answer

    def close(self) -> None:
        for client in self.clients:
            client.close()


def _one_envelope(ids: list[str | None] | None, body: bytes) -> TypeGuard[list[str]]:
    """Whether `body`, whose items are `ids`, is a single envelope (not an array)."""
    return ids is not None and len(ids) == 1 and ids[0] is not None and body.lstrip()[:1] == b"{"


def submitted_ids(body: bytes, *, transaction_bytes_max: int) -> list[str | None] | None:
    """The id of each envelope a submission body holds, None for an item that is no envelope;
    None for a body that is neither an envelope nor an array (a followed node refuses it)."""
    try:
        value = decode(body)
    except LedgerError:
        return None
    if not isinstance(value, dict | list):
        return None
    ids: list[str | None] = []
    for item in value if isinstance(value, list) else [value]:
        try:
            ids.append(parse_envelope(item, transaction_bytes_max=transaction_bytes_max).tx_id)
        except LedgerError:
            ids.append(None)
    return ids


def vouch(
    answer: dict[str, Any],
    ids: list[str | None] | None,
    own: Callable[[str], Outcome | None],
    *,
    upstream: str,
) -> tuple[int, dict[str, Any], list[str]]:
    """A followed node's answer to a submission, as this follower can stand behind it: the
    HTTP status, the answer, and the ids it claimed committed that this follower's store does
    not hold yet (answered pending). A commit this store holds is answered with this store's
    height and log index. An answer that names other transactions than `ids` (the body's, by
    `submitted_ids`), or accepts what is no envelope, raises `bad_upstream`."""
    single = "results" not in answer
    results: list[dict[str, Any]] = [answer] if single else list(answer["results"])

    def refuse(why: str) -> LedgerError:
        return LedgerError(f"{upstream} answered the submission {why}", code="bad_upstream")

    if ids is None or len(ids) != len(results):
        raise refuse("for other transactions than were submitted")
    vouched: list[dict[str, Any]] = []
    unsynced: list[str] = []
    for tx_id, result in zip(ids, results, strict=True):
        if result["status"] == "rejected" and result.get("tx_id") is None:
            vouched.append(result)  # refused as it was read: the node's schema may be stricter
            continue
        if tx_id is None:
            raise refuse(f"{result['status']} for an item that is no envelope")
        if result.get("tx_id") != tx_id:
            raise refuse(f"with transaction {result.get('tx_id')}, where {tx_id} was submitted")
        mine = committed_here(own, tx_id)
        if result["status"] != "committed":
            # this store's commit stands over a followed node's refusal or pending (review)
            vouched.append(mine or result)
            continue
        if mine is None:  # a commit this follower has not verified: not its to claim yet
            unsynced.append(tx_id)
        vouched.append(mine or {"tx_id": tx_id, "status": "pending"})
    return status_of(vouched), vouched[0] if single else {"results": vouched}, unsynced


def committed_here(own: Callable[[str], Outcome | None], tx_id: str) -> dict[str, Any] | None:
    """The answer "committed" for `tx_id` as `own` (this node's outcomes) holds it, or None."""
    mine = own(tx_id)
    if mine is None or mine.status != "committed":
        return None
    return {
        "tx_id": tx_id,
        "status": "committed",
        "height": mine.height,
        "log_index": mine.log_index,
    }


def status_of(results: Sequence[Mapping[str, Any]]) -> int:
    """A submission's HTTP status: 200 once every result is final, 202 while one is pending."""
    return 200 if all(r["status"] in ("committed", "rejected") for r in results) else 202
