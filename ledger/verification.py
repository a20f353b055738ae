"""Auditing a whole chain offline, from the genesis file alone (SPEC §6.2, §7.1).

`audit_chain(genesis, lines)` reads an export (the genesis, then one `{"block", "certificate"}`
per line) and either returns an `AuditReport` of the head or raises `AuditFailure` naming the
first failing height, the transaction (if one is to blame) and the rule. Pure: it takes the
lines from its caller and touches no disk, clock, thread or network; a caller that wants the
signature checks spread over threads injects a batch verifier (`verify_signatures`).

The steps, in order, for a chain the auditor trusts only through `genesis`:

1. The first line decodes strictly (SPEC §2.1) to a genesis document whose hash is the trusted
   genesis's hash (rule `genesis`, reported at the genesis line, height None).
2. Each following line is at most `compute_line_bytes_max` bytes and decodes strictly to
   exactly `{"block", "certificate"}`: the block parses under the genesis's
   `transaction_bytes_max`, the certificate parses (rule `malformed`, at the previous
   height + 1, whatever height the line claims).
3. Every signature of every transaction verifies, through the injected batch verifier or
   serially (rule `bad_signature`, naming the first failing transaction).
4. The block applies to the state before it (`state_transition.apply_block`): heights run
   1, 2, 3 ..., every hash link, the `last_commit` certificate of the parent, every piece of
   evidence (against the set that governed its height), every transaction rule and
   `log_size`, `log_root` and `state_root` (the rule is the one `apply_block` names:
   `height`, `parent_hash`, `state_root`, `evidence_signature`, a transaction's code such as
   `unknown_key` with its transaction, ...). A deleted or reordered line fails here as
   `height`.
5. The line's own certificate commits this block with more than 2/3 of the power of the set
   governing its height: the current set of the state before the block, which the state
   transition moves on by the H+2 rule of `set_validators` (rule `certificate`); and the
   header's `proposer` had a turn (SPEC §5.4) in some round up to the certificate's, as the
   validator that built a block decided in that round must have (rule `proposer`).
6. After the last line the head is reported: height, transactions, both roots, head hash,
   and a notice the SPEC does not make a rule: the issuances that credited a period which had
   not ended at their block's time (`EarlyIssuance`; SPEC §3.3 allows them, and savings not
   yet measured cannot have been certified, so an auditor asks the certifier why).
   A genesis line alone is a valid, empty chain. What is not there cannot be checked: an
   export cut at a line boundary is a shorter valid chain, so compare the reported head with
   a head you trust (a checkpoint) when you have one.

Bounds: one line, one block and the state at a time, whatever the chain's length (the state
grows with the ledger, as a node's does); a line over `compute_line_bytes_max` is refused.
Any bad input ends in `AuditFailure`; any other exception is a bug.

Receipts are checked by `verify_receipt` (SPEC §6.4 names it here; it lives in
`ledger.receipts`, with its own numbered steps).

    LedgerError
    └── AuditFailure   audit_failed: height, tx_id and rule of the first failed check
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ledger.blocks import (
    Block,
    Certificate,
    compute_validators_hash,
    parse_block,
    parse_certificate,
    verify_certificate,
)
from ledger.crypto import GENESIS_DOMAIN, hash_domain
from ledger.encoding import decode
from ledger.errors import FieldError, InvalidBlockError, LedgerError
from ledger.genesis import Genesis, genesis_state
from ledger.limits import RETIREMENT_LOTS_MAX
from ledger.proposer import proposer_objection
from ledger.receipts import verify_receipt
from ledger.state import Params, State
from ledger.state_transition import apply_block, project_id_objection
from ledger.transactions import Envelope, check_signatures

LINE_FIELDS: Final = frozenset({"block", "certificate"})
# Besides its transactions a line holds a header, two certificates of at most VALIDATORS_MAX
# signatures (about 22 KB each) and the evidence list: far below one MiB.
LINE_OVERHEAD_BYTES: Final = 1024 * 1024
# Transactions are bounded in canonical bytes; an export need not be canonical (SPEC §2.1),
# so a line may spend up to this factor more on spacing and escapes.
LINE_SPACING_FACTOR: Final = 2

SignatureVerifier = Callable[[Sequence[Envelope]], Sequence[LedgerError | None]]
"""A batch signature check (one block's transactions): for each envelope, in order, None or
the error of its first bad signature."""


class AuditFailure(LedgerError):
    """The first check an audited chain fails: its height, its transaction and its rule.

    `height` is the position of the failing line (None for the genesis line), `tx_id` the
    transaction to blame (or None), `rule` the failed rule and `detail` what was found.
    """

    code = "audit_failed"

    def __init__(
        self, *, height: int | None, rule: str, detail: str, tx_id: str | None = None
    ) -> None:
        where = "at the genesis line" if height is None else f"at height {height}"
        if tx_id is not None:
            where += f", transaction {tx_id}"
        super().__init__(f"{where}: rule {rule}: {detail}")
        self.height = height
        self.tx_id = tx_id
        self.rule = rule
        self.detail = detail


EARLY_ISSUANCES_LISTED: Final = 10  # an audit keeps this many; it counts them all


@dataclass(frozen=True, slots=True, kw_only=True)
class EarlyIssuance:
    """An `issue` committed before the period it credits had ended: its block's time is
    before 00:00 UTC of `period_end` (exclusive), so part of the period was still to come."""

    height: int
    block_time: int  # unix ms
    tx_id: str
    batch_id: str
    methodology_id: str
    project_id: str
    period_start: str
    period_end: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ProposerNotice:
    """A committed transaction this implementation's proposer leaves out (docs/decisions/0004,
    "proposer's rules"): valid by the SPEC, so the chain passes, but worth a question to the
    validator that proposed its block."""

    height: int
    proposer: str
    tx_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditReport:
    """The head of a chain that passed every check, and the early issuances met on the way
    (`early_issuances` of them; the first EARLY_ISSUANCES_LISTED in `early_listed`)."""

    height: int
    transactions: int
    log_root: str
    state_root: str
    head_hash: str
    # The set that certified the head (a receipt certified there trusts it: docs/verification.md)
    validators_hash: str
    early_issuances: int = 0
    early_listed: tuple[EarlyIssuance, ...] = ()
    proposer_notices: int = 0
    proposer_listed: tuple[ProposerNotice, ...] = ()


def compute_line_bytes_max(params: Params) -> int:
    """The longest export line (bytes) the auditor reads for a chain with these parameters."""
    return (
        params.block_transactions_max * params.transaction_bytes_max * LINE_SPACING_FACTOR
        + LINE_OVERHEAD_BYTES
    )


verify_signatures_serially: Final[SignatureVerifier] = check_signatures
"""The default `SignatureVerifier`: one envelope after the other, on this thread."""


def audit_chain(
    genesis: Genesis,
    lines: Iterable[bytes],
    *,
    verify_signatures: SignatureVerifier | None = None,
    on_block: Callable[[int, int], None] | None = None,
) -> AuditReport:
    """Check every line of an export against `genesis` (steps 1-6 of the module docstring).

    `on_block(height, transactions)` is called after each block passes, with the number of
    transactions audited so far. Raises `AuditFailure` at the first failed check.
    """
    verify = verify_signatures_serially if verify_signatures is None else verify_signatures
    line_bytes_max = compute_line_bytes_max(genesis.params)
    remaining = iter(lines)
    _check_genesis_line(genesis, next(remaining, None), line_bytes_max)  # step 1
    state = genesis_state(genesis)
    early: list[EarlyIssuance] = []
    early_count = 0
    notices: list[ProposerNotice] = []
    notice_count = 0
    for line in remaining:
        height = state.height + 1
        try:  # step 2
            block, certificate = _parse_line(line, genesis, line_bytes_max)
        except LedgerError as error:
            detail = f"({error.code}) {error.message}"
            raise AuditFailure(height=height, rule="malformed", detail=detail) from error
        _check_signatures(block, verify(block.transactions), height)  # step 3
        state = _check_block(state, block, certificate)  # steps 4 and 5
        for found in early_issuances(block, state):
            early_count += 1
            if len(early) < EARLY_ISSUANCES_LISTED:
                early.append(found)
        for notice in proposer_notices(block, state):
            notice_count += 1
            if len(notices) < EARLY_ISSUANCES_LISTED:
                notices.append(notice)
        if on_block is not None:
            on_block(state.height, state.log.size)
    return AuditReport(  # step 6
        height=state.height,
        transactions=state.log.size,
        log_root=state.log.root().hex(),
        state_root=state.state_root,
        head_hash=state.head_hash,
        validators_hash=compute_validators_hash(
            state.last_validators or state.current_validators()
        ),
        early_issuances=early_count,
        early_listed=tuple(early),
        proposer_notices=notice_count,
        proposer_listed=tuple(notices),
    )


def early_issuances(block: Block, after: State) -> Iterator[EarlyIssuance]:
    """The issuances of `block` (applied: `after` is the state it produced) that credit a
    period which had not ended at the block's time, in block order."""
    time = block.header.time
    for envelope in block.transactions:
        if envelope.tx.type != "issue":
            continue
        payload = envelope.tx.payload
        if not period_not_ended(payload["period_end"], time):
            continue
        methodology, project = payload["methodology_id"], payload["project_id"]
        periods = after.get(f"issuance/{methodology}/{project}") or ()
        batch_id = next(  # a (methodology, project, period) is credited once while it stands
            (
                p["batch_id"]
                for p in reversed(periods)
                if (p["period_start"], p["period_end"])
                == (payload["period_start"], payload["period_end"])
            ),
            "",
        )
        yield EarlyIssuance(
            height=block.height,
            block_time=time,
            tx_id=envelope.tx_id,
            batch_id=batch_id,
            methodology_id=methodology,
            project_id=project,
            period_start=payload["period_start"],
            period_end=payload["period_end"],
        )


def proposer_notices(block: Block, after: State) -> Iterator[ProposerNotice]:
    """The transactions of `block` (applied: `after` is the state it produced) that this
    implementation's proposer leaves out, in block order: an issuance whose project id
    hides characters or mixes look-alike scripts (`project_id_objection`), a retirement of
    more than RETIREMENT_LOTS_MAX lots (its receipt, a state proof a lot, is one no verifier
    reads)."""
    for envelope in block.transactions:
        reason = None
        if envelope.tx.type == "issue":
            reason = project_id_objection(envelope.tx.payload["project_id"])
        elif envelope.tx.type == "retire":
            record = after.get(f"retirement/{envelope.tx_id}")
            lots = 0 if record is None else len(record["serials"])
            if lots > RETIREMENT_LOTS_MAX:
                reason = (
                    f"a retirement of {lots:,} lots, over {RETIREMENT_LOTS_MAX:,}: no verifier"
                    " reads its receipt"
                )
        if reason is not None:
            yield ProposerNotice(
                height=block.height,
                proposer=block.header.proposer,
                tx_id=envelope.tx_id,
                reason=reason,
            )


def period_not_ended(period_end: str, time_ms: int) -> bool:
    """Whether a period ending (exclusive) on `period_end` had not ended at `time_ms`: the
    time is before 00:00 UTC of that day."""
    start = datetime.datetime.combine(
        datetime.date.fromisoformat(period_end), datetime.time(), tzinfo=datetime.UTC
    )
    return time_ms < int(start.timestamp()) * 1000


def _check_genesis_line(genesis: Genesis, line: bytes | None, line_bytes_max: int) -> None:
    """Step 1: the export starts with the trusted genesis document."""

    def fail(detail: str) -> AuditFailure:
        return AuditFailure(height=None, rule="genesis", detail=detail)

    if line is None:
        raise fail("the export is empty: no genesis line")
    if len(line) > line_bytes_max:
        raise fail(f"the genesis line is over {line_bytes_max} bytes")
    try:
        found = hash_domain(GENESIS_DOMAIN, decode(line)).hex()
    except LedgerError as error:
        raise fail(f"not a genesis document ({error.code}): {error.message}") from error
    expected = genesis.genesis_hash()
    if found != expected:
        raise fail(f"the export's genesis hashes to {found}, the trusted genesis to {expected}")


def parse_export_line(line: bytes, genesis: Genesis) -> tuple[Block, Certificate]:
    """One export line `{"block", "certificate"}` of the chain of `genesis`, strictly parsed
    (nothing about it verified); raises `LedgerError`."""
    return _parse_line(line, genesis, compute_line_bytes_max(genesis.params))


def _parse_line(line: bytes, genesis: Genesis, line_bytes_max: int) -> tuple[Block, Certificate]:
    """Step 2: exactly {"block", "certificate"}, each strictly parsed."""
    if len(line) > line_bytes_max:
        raise LedgerError(
            f"the line is over {line_bytes_max} bytes, the most this chain's blocks can take",
            code="limit_exceeded",
        )
    value: Any = decode(line)
    if not isinstance(value, dict):
        raise FieldError("line", f"expected an object, got {type(value).__name__}")
    if set(value) != LINE_FIELDS:
        raise FieldError("line", f"expected the fields block and certificate, got {sorted(value)}")
    block = parse_block(value["block"], transaction_bytes_max=genesis.params.transaction_bytes_max)
    return block, parse_certificate(value["certificate"])


def _check_signatures(block: Block, checks: Sequence[LedgerError | None], height: int) -> None:
    """Step 3: the first transaction with a bad signature fails the block."""
    assert len(checks) == len(block.transactions), "one signature check per transaction"
    for envelope, error in zip(block.transactions, checks, strict=True):
        if error is not None:
            raise AuditFailure(
                height=height, rule="bad_signature", detail=error.message, tx_id=envelope.tx_id
            )


def _check_block(state: State, block: Block, certificate: Certificate) -> State:
    """Steps 4 and 5: the state after `block`, which its certificate commits."""
    height = state.height + 1
    try:
        after = apply_block(state, block, signatures_verified=True)
    except InvalidBlockError as error:
        detail = error.message.removeprefix(f"block {error.height}: {error.rule}: ")
        if error.tx_id is not None:
            detail = detail.removeprefix(f"transaction {error.tx_id}: ")
        if error.rule == "height":
            detail = f"the line holds block {block.height}, {detail}"
        raise AuditFailure(
            height=height, rule=error.rule, detail=detail, tx_id=error.tx_id
        ) from error
    try:  # the set governing `height` is the current one of the state before the block
        verify_certificate(
            certificate,
            chain_id=state.chain_id,
            height=height,
            block_hash=block.block_hash(),
            validators=state.current_validators(),
        )
    except LedgerError as error:  # InvalidProofError, naming the failed check
        raise AuditFailure(height=height, rule="certificate", detail=error.message) from error
    # The header names the validator that built the block, whose turn came in a round up to
    # the one that decided it (SPEC §5.4; docs/decisions/0004): a proposer naming another
    # would have the audit's notices ask the wrong validator (found by review).
    objection = proposer_objection(
        state.current_validators(), height, block.header.proposer, certificate.round
    )
    if objection is not None:
        raise AuditFailure(height=height, rule="proposer", detail=objection)
    return after


__all__ = ["AuditFailure", "AuditReport", "audit_chain", "verify_receipt"]
