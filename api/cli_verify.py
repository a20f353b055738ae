"""`tanlian verify ...` (SPEC §8): check a chain, trusting only its genesis file.

    tanlian verify chain (--export FILE | --node URL) --genesis FILE
    tanlian verify receipt FILE (--genesis FILE | --validators-hash HEX)
    tanlian verify monitor --node URL --state FILE --genesis FILE [--interval S --rounds N]

The checking is the pure auditor's (`ledger.verification.audit_chain`, SPEC §6.2); this shell
reads the export (from a file or streamed from a node, line by line, each line bounded),
spreads each block's signature checks over one thread per core
(`consensus.pool.verify_signatures`), draws a progress bar on a terminal and prints the
outcome: the head on stdout and exit 0, or one line on stderr naming the first failing height,
transaction and rule, and exit 1. Bad usage exits 2. A node is outside input like a file: a
broken or hostile answer ends in one line and exit 1 (`api.client`).

The monitor (SPEC §6.2, "two checkpoints") remembers the last checkpoint it verified in a state
file and, each round, proves the node's latest checkpoint extends it:

1. The node's latest checkpoint is signed by the validator set that governs its height: its
   header's `validators_hash` is that set's hash and its certificate carries more than 2/3 of
   the set's power for this header's block hash. The set is the genesis's until a
   `set_validators` changes it; the monitor follows each change as a light client does
   (`follow_validators`): the last header the trusted set certified names the next set by
   its hash, and the block before it holds the set_validators with those members. The state
   file keeps the members of the set it trusts once they are not the genesis's.
2. Against the remembered checkpoint: the same height must be the same header; a lower height
   is a rollback; a higher height needs an RFC 9162 consistency proof whose checkpoints are
   exactly the remembered header and the latest one, and whose path rebuilds both log roots.
   After a set change, the same holds from the last header the old set certified.
3. On success the latest checkpoint replaces the remembered one (write, then rename). On a
   fork, a rollback or an inconsistency the state file is left as it was, the evidence (both
   checkpoints and the proof) is written beside it, and the command fails loudly.

The state file is the monitor's own memory, trusted like the genesis file: keep it where only
you can write it.
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any, Final, Literal

import typer
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from api.client import (
    ONE_ANSWER_SECONDS_MAX,
    STREAM_PACE_BYTES_MIN,
    STREAM_PACE_SECONDS,
    Client,
    ClientError,
)
from api.console import checked_url, counted, err, fail, fails_cleanly, out, write_atomically
from consensus.pool import verify_signatures
from consensus.producer import tune_garbage_collector
from ledger.blocks import (
    Certificate,
    Header,
    Validator,
    compute_validators_hash,
    parse_certificate,
    parse_header,
    parse_validators,
    validators_to_json,
    verify_certificate,
)
from ledger.encoding import JSON, decode
from ledger.errors import FieldError, InvalidProofError, LedgerError, printable
from ledger.genesis import Genesis, decode_genesis
from ledger.merkle import verify_consistency
from ledger.receipts import verify_receipt
from ledger.transactions import Envelope
from ledger.verification import (
    AuditFailure,
    AuditReport,
    SignatureVerifier,
    audit_chain,
    compute_line_bytes_max,
    parse_export_line,
)

verify_app: typer.Typer = typer.Typer(
    help="Verify a chain, a retirement receipt or a node's new checkpoints, trusting only a "
    "genesis file or a validator set: offline, or against a node that is trusted for nothing.",
    no_args_is_help=True,
)

GENESIS_FILE_BYTES_MAX: Final = 16 * 1024 * 1024


def parallel_verifier(executor: ThreadPoolExecutor) -> SignatureVerifier:
    """A `SignatureVerifier` spreading each block's checks over `executor`'s threads."""

    def verify(envelopes: Sequence[Envelope]) -> list[LedgerError | None]:
        return verify_signatures(envelopes, executor)

    return verify


def read_lines(
    handle: IO[bytes], line_bytes_max: int, on_read: Callable[[int], None]
) -> Iterator[bytes]:
    """The lines of `handle`, none longer than `line_bytes_max` + 1 bytes (a longer one comes
    in pieces, and the auditor refuses the first); `on_read` gets each line's size."""
    while line := handle.readline(line_bytes_max + 1):
        on_read(len(line))
        yield line


def read_genesis(path: Path) -> Genesis:
    with path.open("rb") as handle:
        data = handle.read(GENESIS_FILE_BYTES_MAX + 1)
    if len(data) > GENESIS_FILE_BYTES_MAX:
        raise LedgerError(f"{path}: over {GENESIS_FILE_BYTES_MAX} bytes, not a genesis file")
    try:
        return decode_genesis(data)
    except LedgerError as error:
        message = f"{path}: not a genesis document: {error.message}"
        raise LedgerError(message, code=error.code) from error


class _RateColumn(ProgressColumn):
    """Transactions audited per second so far."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        transactions = int(task.fields.get("transactions", 0))
        rate = transactions / elapsed if elapsed > 0 else 0.0
        return Text(f"{transactions:,} tx  {rate:,.0f} tx/s", style="progress.data.speed")


def _progress() -> Progress:
    return Progress(
        TextColumn("auditing"),
        BarColumn(),
        TaskProgressColumn(),
        _RateColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


def audit_lines(
    genesis: Genesis, lines: Iterable[bytes], *, total_bytes: int | None
) -> tuple[AuditReport, float]:
    """Audit export lines with threaded signature checks; the report and the seconds.
    `total_bytes` (if known) sizes the progress bar."""
    workers = os.cpu_count() or 2
    consumed = 0

    def counted() -> Iterator[bytes]:
        nonlocal consumed
        for line in lines:
            consumed += len(line)
            yield line

    tune_garbage_collector()  # the replay builds the state's large, acyclic heap, as a node's
    with (
        ThreadPoolExecutor(workers, thread_name_prefix="verify") as executor,
        _progress() as progress,
    ):
        task = progress.add_task("audit", total=total_bytes)

        def on_block(height: int, transactions: int) -> None:
            progress.update(task, completed=consumed, transactions=transactions)

        started = time.perf_counter()
        report = audit_chain(
            genesis,
            counted(),
            verify_signatures=parallel_verifier(executor),
            on_block=on_block,
        )
        return report, time.perf_counter() - started


def audit_export(export_file: Path, genesis: Genesis) -> tuple[AuditReport, float]:
    """Audit an export file with threaded signature checks; the report and the seconds."""
    line_bytes_max = compute_line_bytes_max(genesis.params)
    with export_file.open("rb") as handle:
        total = os.fstat(handle.fileno()).st_size or None
        lines = read_lines(handle, line_bytes_max, lambda size: None)
        return audit_lines(genesis, lines, total_bytes=total)


def audit_node(client: Client, genesis: Genesis) -> tuple[AuditReport, float]:
    """Audit the export a node streams, up to the checkpoint it names as its head, and check
    that the audited head is that checkpoint (an export cut short is a shorter valid chain)."""
    try:
        head: Header | None = parse_checkpoint(client.checkpoint()).header
    except ClientError as error:
        if error.code != "not_found":  # a node with no block yet has no checkpoint
            raise
        head = None
    lines = client.export_lines(
        1,
        None if head is None else head.height,
        line_bytes_max=compute_line_bytes_max(genesis.params),
    )
    report, seconds = audit_lines(genesis, lines, total_bytes=None)
    if head is None:
        height, head_hash = 0, genesis.genesis_hash()
    else:
        height, head_hash = head.height, head.block_hash()
    if (report.height, report.head_hash) != (height, head_hash):
        raise AuditFailure(
            height=report.height,
            rule="head",
            detail=f"the node's export ends at height {report.height} (block {report.head_hash})"
            f", its checkpoint names height {height} (block {head_hash})",
        )
    return report, seconds


@verify_app.command("chain")
@fails_cleanly
def verify_chain(
    genesis_file: Annotated[
        Path, typer.Option("--genesis", help="The genesis file you trust for this chain.")
    ],
    export_file: Annotated[
        Path | None, typer.Option("--export", help="An NDJSON export (tanlian export).")
    ] = None,
    node: Annotated[
        str | None, typer.Option("--node", callback=checked_url, help="A node's URL.")
    ] = None,
) -> None:
    """Audit a whole chain (SPEC §6.2) and name the first failing height and rule.

    Reads an export file, or streams a node's export up to its latest checkpoint. Checks
    every hash link, every certificate against the validator set governing its height,
    every signature, every transaction rule by replaying the state, and both roots.
    """
    if (export_file is None) == (node is None):
        raise typer.BadParameter("give either --export FILE or --node URL")
    try:
        genesis = read_genesis(genesis_file)
    except LedgerError as error:
        fail(f"error ({error.code}): {error.message}")
    try:
        if node is not None:
            pace = (STREAM_PACE_BYTES_MIN, STREAM_PACE_SECONDS)
            with Client(node, answer_pace=pace) as client:
                report, seconds = audit_node(client, genesis)
        else:
            assert export_file is not None
            report, seconds = audit_export(export_file, genesis)
    except AuditFailure as failure:
        fail(f"verification failed {failure.message}")
    rate = report.transactions / seconds if seconds > 0 else 0.0
    out.print(
        f"chain verified: height {report.height}, {counted(report.transactions, 'transaction')}, "
        f"log root {report.log_root}, state root {report.state_root}, "
        f"validators hash {report.validators_hash}, {seconds:.1f} s, {rate:,.0f} tx/s",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if report.early_issuances:
        _print_early_issuances(report)
    if report.proposer_notices:
        _print_proposer_notices(report)


def _print_proposer_notices(report: AuditReport) -> None:
    """The audit's other notice: transactions valid by the SPEC that this implementation's
    proposer leaves out (docs/decisions/0004), committed in a block another built."""
    count = report.proposer_notices
    lines = [
        f"notice: {counted(count, 'transaction')} this implementation's proposer leaves out"
        " (valid by the SPEC; docs/decisions/0004): ask the validator that proposed the block."
    ]
    for notice in report.proposer_listed:
        lines.append(
            f"  transaction {notice.tx_id} at height {notice.height}, proposed by"
            f" {notice.proposer}: {printable(notice.reason)}"
        )
    if count > len(report.proposer_listed):
        lines.append(f"  and {count - len(report.proposer_listed):,} more")
    out.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)


def _print_early_issuances(report: AuditReport) -> None:
    """The audit's notice (not a failure: the chain is valid): which issuances credited a
    period that had not ended when they were committed."""
    count = report.early_issuances
    lines = [
        f"notice: {counted(count, 'issuance')} credited a period that had not ended at"
        " its block's time (UTC). SPEC §3.3 allows it, but savings not yet measured"
        " cannot have been certified: ask the certifier."
    ]
    for early in report.early_listed:
        moment = datetime.datetime.fromtimestamp(early.block_time / 1000, datetime.UTC)
        lines.append(
            f"  {early.batch_id} at height {early.height} ({moment:%Y-%m-%dT%H:%M:%SZ}):"
            f" {early.methodology_id}/{printable(early.project_id)},"
            f" {early.period_start} to {early.period_end}, transaction {early.tx_id}"
        )
    if count > len(report.early_listed):
        lines.append(f"  and {count - len(report.early_listed):,} more")
    out.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)


RECEIPT_FILE_BYTES_MAX: Final = 4 * 1024 * 1024
RECEIPT_DEPTH_MAX: Final = 8  # receipt > state_proofs > proof > value > serials > range


def _refuse_a_problem(value: object, path: Path) -> None:
    """A node's error answer saved in place of a receipt (curl writes a 404's body as it does
    a receipt) is named as such. Found by review: it was "receipt: receipt: unknown field
    'code'"."""
    if (
        isinstance(value, dict)
        and isinstance(value.get("code"), str)
        and isinstance(value.get("status"), int)
        and "retirement" not in value
    ):
        detail = value.get("detail")
        said = f": {printable(detail[:200])}" if isinstance(detail, str) else ""
        raise LedgerError(
            f"{path} holds a node's error answer ({printable(value['code'][:40])}, HTTP"
            f" {value['status']}{said}), not a receipt",
            code="invalid_field",
        )


@verify_app.command("receipt")
@fails_cleanly
def verify_receipt_file(
    receipt_file: Annotated[Path, typer.Argument(help="A receipt (JSON) to check.")],
    genesis_file: Annotated[
        Path | None,
        typer.Option("--genesis", help="Trust this genesis file's validator set."),
    ] = None,
    validators_hash: Annotated[
        str | None,
        typer.Option("--validators-hash", help="Trust the validator set with this hash (hex)."),
    ] = None,
) -> None:
    """Check a retirement receipt offline (SPEC §6.3): its transaction is in the log, its
    record and its lots are retired in the state, under a certificate of the trusted set."""
    if (genesis_file is None) == (validators_hash is None):
        raise typer.BadParameter("give either --genesis FILE or --validators-hash HEX")
    genesis_hash = chain_id = None
    if genesis_file is not None:
        genesis = read_genesis(genesis_file)
        trusted = compute_validators_hash(genesis.validators)
        genesis_hash, chain_id = genesis.genesis_hash(), genesis.chain_id
    else:
        assert validators_hash is not None
        trusted = validators_hash.lower()
        if not re.fullmatch(r"[0-9a-f]{64}", trusted):  # bad usage, not an untrusted set
            raise typer.BadParameter(
                f"--validators-hash is a SHA-256 in 64 hex digits, not {validators_hash[:80]!r}"
            )
    with receipt_file.open("rb") as handle:
        data = handle.read(RECEIPT_FILE_BYTES_MAX + 1)
    if len(data) > RECEIPT_FILE_BYTES_MAX:
        fail(f"receipt not verified: {receipt_file} is over {RECEIPT_FILE_BYTES_MAX} bytes")
    try:
        receipt = decode(data, max_depth=RECEIPT_DEPTH_MAX)
        _refuse_a_problem(receipt, receipt_file)
        verify_receipt(
            receipt, validators_hash=trusted, genesis_hash=genesis_hash, chain_id=chain_id
        )
    except LedgerError as error:
        hint = ""
        if genesis_file is not None and error.message.endswith("are not the trusted set"):
            # The genesis's set certifies only until a set_validators changes it (review).
            hint = (
                ": --genesis trusts the genesis's validator set; a receipt certified after a"
                " set_validators needs --validators-hash of a later set you trust (one"
                " `verify monitor` followed, docs/verification.md)"
            )
        fail(f"receipt not verified: {error.message}{hint}")
    record = receipt["retirement"]
    header = receipt["checkpoint"]["header"]
    # Quoted as JSON, the same way whatever the name holds (Python's repr chose its quotes),
    # and a character a terminal acts on escaped: a right-to-left override in a beneficiary
    # had reordered the rest of the line, the chain's name included (found by review).
    beneficiary = printable(json.dumps(record["beneficiary"], ensure_ascii=False))
    out.print(
        f"receipt verified: retirement {record['retirement_id']}, {record['quantity']} kg CO2e "
        f"of {record['batch_id']} retired by {record['holder']} for {beneficiary} "
        f"({record['purpose']}), certified at height {header['height']} of chain"
        f" {header['chain_id']}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


# --- the checkpoint monitor (SPEC §6.2, §8) -------------------------------------------------------

STATE_FILE_BYTES_MAX: Final = 1024 * 1024  # a checkpoint: a header and <= 100 signatures
EVIDENCE_SUFFIX: Final = ".fork-evidence.json"
MONITOR_ROUNDS_MAX: Final = 1_000_000
# A round that meets one of these is missed, and the monitor goes on to the next (a node
# restarting, a network hiccup); anything else a node answers ends the run.
MISSED_ROUND_CODES: Final = frozenset(
    {"node_unreachable", "overloaded", "store_unavailable", "upstream_unavailable"}
)
MONITOR_INTERVAL_SECONDS_MAX: Final = 24 * 3600.0

Misbehaviour = Literal["fork", "rollback", "inconsistency"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """A certified header (SPEC §5.3): everything a light client needs to trust a height."""

    header: Header
    certificate: Certificate

    @property
    def height(self) -> int:
        return self.header.height

    def to_json(self) -> dict[str, JSON]:
        return {"header": self.header.to_json(), "certificate": self.certificate.to_json()}


@dataclass(frozen=True, slots=True, kw_only=True)
class Trusted:
    """What a monitor trusts: the last checkpoint it verified (None before its first run) and
    the validator set that governs that height (the genesis's until a set change)."""

    checkpoint: Checkpoint | None
    validators: tuple[Validator, ...]

    def to_json(self, genesis: Genesis) -> dict[str, JSON]:
        """The state file: the checkpoint, and its set's members once they are not the
        genesis's (a file of an earlier version, without them, reads the same)."""
        assert self.checkpoint is not None
        value = self.checkpoint.to_json()
        if self.validators != genesis.validators:
            value["validators"] = validators_to_json(self.validators)
        return value


def parse_checkpoint(value: Any, path: str = "checkpoint") -> Checkpoint:
    """Exactly `{"header", "certificate"}`, each strictly parsed; raises `FieldError`."""
    if not isinstance(value, dict) or set(value) != {"header", "certificate"}:
        raise FieldError(path, "expected an object with exactly header and certificate")
    return Checkpoint(
        header=parse_header(value["header"], f"{path}.header"),
        certificate=parse_certificate(value["certificate"], f"{path}.certificate"),
    )


class MonitorAlarm(LedgerError):
    """The node's chain does not extend the remembered checkpoint: a fork (two certified
    headers for one height, or a log that does not extend the remembered log), a rollback or
    an answer contradicting itself. `proof` is the consistency proof, if one was fetched (or
    the certified checkpoint that differs, where the log was empty)."""

    code = "fork_detected"

    def __init__(self, kind: Misbehaviour, detail: str, *, proof: Any = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.proof = proof


def verify_checkpoint(
    checkpoint: Checkpoint, genesis: Genesis, validators: Sequence[Validator]
) -> None:
    """Step 1: `checkpoint` is of the genesis's chain and certified by `validators`, the set
    that governs its height (`follow_validators` found it); raises LedgerError."""
    header, height = checkpoint.header, checkpoint.height
    if header.chain_id != genesis.chain_id:
        raise LedgerError(
            f"the node's checkpoint at height {height} is for chain {header.chain_id!r}, "
            f"the genesis for {genesis.chain_id!r}",
            code="wrong_chain",
        )
    trusted = compute_validators_hash(validators)
    if header.validators_hash != trusted:
        raise InvalidProofError(
            f"the node's checkpoint at height {height} is not certified: it names validator "
            f"set {header.validators_hash}, and set {trusted} governs that height"
        )
    try:
        verify_certificate(
            checkpoint.certificate,
            chain_id=genesis.chain_id,
            height=height,
            block_hash=header.block_hash(),
            validators=validators,
        )
    except InvalidProofError as error:
        raise InvalidProofError(
            f"the node's checkpoint at height {height} is not certified: {error.message}"
        ) from error


@dataclass(frozen=True, slots=True, kw_only=True)
class SetChange:
    """A validator set the monitor followed to: named by the certified header at `named_at`
    (governed by the set before), set by a set_validators of the block before it, governing
    from `named_at + 1` (SPEC §3.2's H+2 rule)."""

    named_at: int
    validators: tuple[Validator, ...]

    def describe(self) -> str:
        power = sum(v.power for v in self.validators)
        members = counted(len(self.validators), "validator")
        return (
            f"validator set changed: the certified header at height {self.named_at} names set "
            f"{compute_validators_hash(self.validators)} ({members}, power {power}), set in "
            f"block {self.named_at - 1}; it governs from height {self.named_at + 1}"
        )


def follow_validators(
    client: Client, genesis: Genesis, trusted: Trusted, latest: Checkpoint
) -> tuple[tuple[Validator, ...], list[SetChange], Trusted | None]:
    """The set that governs `latest`'s height, reached from the trusted one as a light client
    does (Tendermint's sequential verification, at the heights where the set changed only),
    the changes followed, and the last certified checkpoint before the newest change with
    the set that certified it (None: no change). Raises `InvalidProofError` when the node's
    answers do not add up.

    For each change: bisect the heights after the anchor (the remembered checkpoint, or
    height 0) for the last one whose checkpoint the trusted set certifies; its header's
    `next_validators_hash` names the next set, whose members are those of a set_validators
    in the block before it (fetched, bound to that header by its hash) that hash to that
    name. The heights between are not fetched: a set changes only by a block the set before
    certified. Trusting a header the old set certified is trusting that set's honest
    majority, as every light client does (docs/verification.md)."""
    validators = trusted.validators
    anchor = trusted.checkpoint
    anchor_set = validators
    changes: list[SetChange] = []
    while latest.header.validators_hash != (current := compute_validators_hash(validators)):
        low = 0 if anchor is None else anchor.height
        if latest.height <= low:
            raise InvalidProofError(
                f"the node's checkpoint at height {latest.height} is not certified: it names "
                f"validator set {latest.header.validators_hash}, and set {current} governs "
                "that height"
            )
        found, lo, hi = anchor, low, latest.height
        claimed = latest.header  # the header at `hi`, which names another set
        while hi - lo > 1:
            middle = (lo + hi) // 2
            probe = fetch_checkpoint(client, middle)
            if probe.height != middle:
                raise ClientError(
                    f"asked for the checkpoint at height {middle}, the node answered one at "
                    f"height {probe.height}"
                )
            if probe.header.validators_hash == current:
                verify_checkpoint(probe, genesis, validators)
                found, lo = probe, middle
            else:
                hi, claimed = middle, probe.header
        named = current if found is None else found.header.next_validators_hash
        if named == current:
            why = (
                "the genesis's set governs it"
                if found is None
                else f"the certified header at height {lo} names set {current} to govern it"
            )
            raise InvalidProofError(
                f"the node's checkpoint at height {hi} is not certified: it names validator "
                f"set {claimed.validators_hash}, and {why}"
            )
        assert found is not None  # height 1's header names the genesis's set
        anchor, anchor_set = found, validators
        validators = _announced_set(client, genesis, found, named)
        changes.append(SetChange(named_at=found.height, validators=validators))
    certified = Trusted(checkpoint=anchor, validators=anchor_set) if changes else None
    return validators, changes, certified


def _announced_set(
    client: Client, genesis: Genesis, named_by: Checkpoint, named: str
) -> tuple[Validator, ...]:
    """The members of the set `named` (a validators hash) by the certified `named_by`: a
    set_validators of the block before it with exactly that hash."""
    height = named_by.height - 1
    lines = list(
        itertools.islice(
            client.export_lines(
                height, height, line_bytes_max=compute_line_bytes_max(genesis.params)
            ),
            3,
        )
    )
    if len(lines) != 2:
        raise ClientError(f"the node's export of height {height} is not the genesis and one block")
    try:
        block, _ = parse_export_line(lines[1], genesis)
    except LedgerError as error:
        raise ClientError(f"the node's block {height} is malformed: {error.message}") from error
    if block.header.block_hash() != named_by.header.parent_hash:
        raise ClientError(
            f"the node's block {height} is not the parent of the certified header at height "
            f"{named_by.height}"
        )
    for envelope in block.transactions:
        if envelope.tx.type == "set_validators":
            members = parse_validators(envelope.tx.payload["validators"])
            if compute_validators_hash(members) == named:
                return members
    raise InvalidProofError(
        f"the certified header at height {named_by.height} names validator set {named}, and "
        f"no set_validators of block {height} sets it"
    )


def check_consistency(
    genesis: Genesis,
    earlier: Trusted,
    latest: Trusted,
    proof: Any,
    *,
    which: str = "remembered",
) -> None:
    """Step 2, higher height: `proof` is an RFC 9162 consistency proof between exactly these
    two checkpoints (each with the set that governs its height). Raises `MonitorAlarm`, or
    `ClientError` for a proof that is no proof. `which` names the earlier checkpoint in
    messages: "remembered", or "certified" (the last header an old validator set certified,
    `follow_validators`). A header of the proof's that differs from the checkpoint's is
    evidence only once its own certificate holds: anyone can write a header."""
    assert earlier.checkpoint is not None and latest.checkpoint is not None
    remembered, current = earlier.checkpoint, latest.checkpoint
    old, new = remembered.header, current.header
    assert old.height < new.height
    try:
        if not isinstance(proof, dict):
            raise FieldError("proof", "expected an object")
        first = parse_checkpoint(proof.get("first"), "proof.first")
        second = parse_checkpoint(proof.get("second"), "proof.second")
        sizes = (proof.get("first_size"), proof.get("second_size"))
        path = proof.get("path")
        if not isinstance(path, list) or not all(isinstance(node, str) for node in path):
            raise FieldError("proof.path", "expected a list of hex strings")
        nodes = [bytes.fromhex(node) for node in path]
        if any(len(node) != 32 for node in nodes):  # no proof, not a proof of a fork (review)
            raise FieldError("proof.path", "expected SHA-256 hashes of 64 hex digits")
    except (LedgerError, ValueError) as error:
        message = error.message if isinstance(error, LedgerError) else str(error)
        raise ClientError(f"the consistency proof is malformed: {message}") from error
    if first.header != old:
        _certified_or_bad_answer(first, genesis, earlier.validators, old.height, "proof.first")
        raise MonitorAlarm(
            "fork",
            f"the node's header at the {which} height {old.height} is block "
            f"{first.header.block_hash()}, the {which} one block {old.block_hash()}",
            proof=proof,
        )
    if second.header != new:
        _certified_or_bad_answer(second, genesis, latest.validators, new.height, "proof.second")
        raise MonitorAlarm(
            "inconsistency",
            f"the node's proof to height {new.height} ends at block "
            f"{second.header.block_hash()}, its checkpoint names block {new.block_hash()}",
            proof=proof,
        )
    if sizes != (old.log_size, new.log_size):
        raise MonitorAlarm(
            "inconsistency",
            f"the proof is between log sizes {sizes[0]} and {sizes[1]}, the checkpoints at "
            f"heights {old.height} and {new.height} hold {old.log_size} and {new.log_size}",
            proof=proof,
        )
    try:
        verify_consistency(
            size1=old.log_size,
            size2=new.log_size,
            path=nodes,
            root1=bytes.fromhex(old.log_root),
            root2=bytes.fromhex(new.log_root),
        )
    except InvalidProofError as error:
        raise MonitorAlarm(
            "inconsistency",
            f"the log at height {new.height} (size {new.log_size}) does not provably extend "
            f"the {which} log at height {old.height} (size {old.log_size}): {error.message}",
            proof=proof,
        ) from error


def _certified_or_bad_answer(
    checkpoint: Checkpoint,
    genesis: Genesis,
    validators: Sequence[Validator],
    height: int,
    what: str,
) -> None:
    """`checkpoint`, which the node gave as its header at `height`, is of that height and
    certified by `validators`; otherwise it is a bad answer, not evidence of a fork (found
    by review: a header edited on its way in raised FORK DETECTED and was written as
    evidence)."""
    if checkpoint.height != height:
        raise ClientError(
            f"{what} is the node's checkpoint at height {checkpoint.height}, not {height}"
        )
    try:
        verify_checkpoint(checkpoint, genesis, validators)
    except LedgerError as error:
        raise ClientError(f"{what}: {error.message}") from error


def fetch_checkpoint(client: Client, height: int | None = None) -> Checkpoint:
    """The node's latest checkpoint (or the one at `height`), parsed; a malformed one is a
    bad answer."""
    value = client.checkpoint() if height is None else client.checkpoint_at(height)
    try:
        return parse_checkpoint(value)
    except FieldError as error:
        raise ClientError(f"the node's checkpoint is malformed: {error.message}") from error


def check_extends(
    client: Client, genesis: Genesis, earlier: Trusted, latest: Trusted, *, which: str
) -> None:
    """Step 2: `latest` (verified) extends `earlier`'s checkpoint. Raises `MonitorAlarm` for
    a fork, a rollback or an inconsistency, `ClientError` when the node cannot answer or
    answers a header no certificate vouches for. `which` as for `check_consistency`."""
    assert earlier.checkpoint is not None and latest.checkpoint is not None
    old, new = earlier.checkpoint.header, latest.checkpoint.header
    if new.height == old.height:
        if new != old:
            raise MonitorAlarm(
                "fork",
                f"the node's certified header at height {new.height} is block "
                f"{new.block_hash()}, the {which} one block {old.block_hash()}",
            )
    elif new.height < old.height:
        raise MonitorAlarm(
            "rollback",
            f"the node's latest checkpoint is at height {new.height} (log size {new.log_size}), "
            f"below the {which} height {old.height} (log size {old.log_size})",
        )
    elif old.log_size == 0:  # every log extends the empty one: compare the header itself
        at = fetch_checkpoint(client, old.height)
        if at.header != old:
            what = f"the node's checkpoint at height {old.height}"
            _certified_or_bad_answer(at, genesis, earlier.validators, old.height, what)
            raise MonitorAlarm(
                "fork",
                f"the node's header at the {which} height {old.height} is block "
                f"{at.header.block_hash()}, the {which} one block {old.block_hash()}",
                proof={"checkpoint": at.to_json()},
            )
    else:
        proof = client.consistency(old.height, new.height)
        check_consistency(genesis, earlier, latest, proof, which=which)


def read_state(path: Path, genesis: Genesis) -> Trusted:
    """The remembered checkpoint and the set that governs it (the genesis's set and no
    checkpoint before the first run)."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return Trusted(checkpoint=None, validators=genesis.validators)
    with handle:
        data = handle.read(STATE_FILE_BYTES_MAX + 1)
    if len(data) > STATE_FILE_BYTES_MAX:
        raise LedgerError(f"{path}: over {STATE_FILE_BYTES_MAX} bytes, not a monitor state file")
    try:
        value = decode(data)
        named = isinstance(value, dict) and "validators" in value
        members = value.pop("validators") if named else None
        remembered = parse_checkpoint(value)
        validators = parse_validators(members) if named else genesis.validators
    except LedgerError as error:
        raise LedgerError(f"{path}: not a checkpoint: {error.message}", code=error.code) from error
    if remembered.header.chain_id != genesis.chain_id:
        raise LedgerError(
            f"{path}: a checkpoint of chain {remembered.header.chain_id!r}, "
            f"not of the genesis's {genesis.chain_id!r}",
            code="wrong_chain",
        )
    if compute_validators_hash(validators) != remembered.header.validators_hash:
        # Found by review: the message read as cut short ("... so the genesis's"), under a
        # generic code, for a state file of another chain with the same chain id.
        held = (
            "the set the file names"
            if named
            else f"the genesis's set ({compute_validators_hash(validators)}), as the file names"
            " none"
        )
        raise LedgerError(
            f"{path}: the remembered checkpoint names validator set "
            f"{remembered.header.validators_hash}, not {held}: this state file is of another"
            " chain, or was altered; give the genesis of the chain it watched, or start a new"
            " state file",
            code="wrong_chain",
        )
    return Trusted(checkpoint=remembered, validators=validators)


def write_json_atomically(path: Path, value: JSON) -> None:
    """`value` as JSON, written through `api.console.write_atomically`."""
    write_atomically(path, json.dumps(value, indent=2, ensure_ascii=False).encode() + b"\n")


def _summary(remembered: Checkpoint | None, latest: Checkpoint, state_file: Path) -> str:
    new = latest.header
    head = f"checkpoint verified: height {new.height}, log size {new.log_size}"
    if remembered is None:
        return f"{head}; first checkpoint, saved to {state_file}"
    old = remembered.header
    if old.height == new.height:
        return f"{head}; unchanged since the last run"
    return (
        f"{head}; consistent with the remembered height {old.height}, log size "
        f"{old.log_size}; saved to {state_file}"
    )


@verify_app.command("monitor")
@fails_cleanly
def verify_monitor(
    state_file: Annotated[
        Path, typer.Option("--state", help="Where the last verified checkpoint is kept.")
    ],
    genesis_file: Annotated[
        Path, typer.Option("--genesis", help="The genesis file you trust for this chain.")
    ],
    node: Annotated[
        str, typer.Option("--node", callback=checked_url, help="A node's URL.")
    ] = "http://127.0.0.1:8000",
    interval: Annotated[
        float | None,
        typer.Option(
            min=0.01,
            max=MONITOR_INTERVAL_SECONDS_MAX,
            help="Seconds between rounds (with --rounds).",
        ),
    ] = None,
    rounds: Annotated[
        int, typer.Option(min=1, max=MONITOR_ROUNDS_MAX, help="How many rounds to run.")
    ] = 1,
) -> None:
    """Prove the node's latest checkpoint extends the last one verified (SPEC §6.2).

    Remembers the last verified checkpoint in --state. Each round verifies the node's latest
    checkpoint against the validator set that governs it (the genesis's, or the one each
    set_validators named, followed from header to header) and proves, by an RFC 9162
    consistency proof, that its log extends the remembered one. A fork, a rollback or an
    inconsistency leaves --state unchanged, writes the evidence to STATE.fork-evidence.json
    and exits 1.
    """
    if rounds > 1 and interval is None:
        raise typer.BadParameter("--rounds above 1 needs --interval SECONDS")
    genesis = read_genesis(genesis_file)
    evidence_file = state_file.with_name(state_file.name + EVIDENCE_SUFFIX)
    missed: ClientError | None = None  # why the last round could not reach the node
    with Client(node, answer_seconds_max=ONE_ANSWER_SECONDS_MAX) as client:
        for round_number in range(rounds):
            if round_number > 0:
                assert interval is not None
                time.sleep(interval)
            try:
                _monitor_round(client, genesis, state_file, evidence_file)
                missed = None
            except ClientError as error:
                # A node restarting, or a network hiccup, is one missed round of many: say so
                # and go on (a fork, a rollback or a bad checkpoint still ends the run).
                if rounds == 1 or error.code not in MISSED_ROUND_CODES:
                    raise
                missed = error
                err.print(
                    printable(f"round {round_number + 1}: missed ({error.code}): {error.message}"),
                    markup=False,
                    highlight=False,
                    soft_wrap=True,
                )
    if missed is not None:
        fail(f"error ({missed.code}): the last round could not reach the node: {missed.message}")


def _monitor_round(client: Client, genesis: Genesis, state_file: Path, evidence_file: Path) -> None:
    """One round of `verify monitor`: steps 1-3 of its docstring."""
    trusted = read_state(state_file, genesis)
    remembered = trusted.checkpoint
    latest = fetch_checkpoint(client)

    def extends(earlier: Trusted, now: Trusted, which: str) -> None:
        _check_or_alarm(
            client,
            genesis,
            earlier,
            now,
            which=which,
            state_file=state_file,
            evidence_file=evidence_file,
        )

    if (
        remembered is not None
        and latest.height < remembered.height
        and latest.header.validators_hash != remembered.header.validators_hash
    ):
        # Below a set change the monitor followed: the set that governs that height is one it
        # no longer holds, and the rollback is the finding (found by review: it was reported
        # as an uncertified checkpoint, without evidence). It is evidence only if certified
        # (found by a later review: any header at all raised ROLLBACK DETECTED): the monitor
        # can check it under the genesis's set, and under no other set it has let go of.
        if latest.header.validators_hash != compute_validators_hash(genesis.validators):
            raise ClientError(
                f"the node's checkpoint at height {latest.height}, below the remembered height"
                f" {remembered.height}, names validator set {latest.header.validators_hash},"
                " which this monitor no longer holds: it cannot tell a rollback from a"
                " header anyone could write"
            )
        _certified_or_bad_answer(
            latest, genesis, genesis.validators, latest.height, "the node's latest checkpoint"
        )
        extends(trusted, Trusted(checkpoint=latest, validators=genesis.validators), "remembered")
    validators, changes, anchor = follow_validators(client, genesis, trusted, latest)
    verify_checkpoint(latest, genesis, validators)  # step 1
    now = Trusted(checkpoint=latest, validators=validators)
    for change in changes:
        out.print(change.describe(), markup=False, highlight=False, soft_wrap=True)
    if remembered is not None:  # step 2
        extends(trusted, now, "remembered")
    if anchor is not None and anchor.checkpoint is not remembered:
        extends(anchor, now, "certified")
    if remembered is None or latest.header != remembered.header:  # step 3
        write_json_atomically(state_file, now.to_json(genesis))
    out.print(
        _summary(remembered, latest, state_file),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def _check_or_alarm(
    client: Client,
    genesis: Genesis,
    earlier: Trusted,
    latest: Trusted,
    *,
    which: str,
    state_file: Path,
    evidence_file: Path,
) -> None:
    """`check_extends`; on an alarm, the evidence written and the run failed loudly."""
    assert earlier.checkpoint is not None and latest.checkpoint is not None
    try:
        check_extends(client, genesis, earlier, latest, which=which)
    except MonitorAlarm as alarm:
        evidence = {
            "kind": alarm.kind,
            "detail": alarm.detail,
            "node": client.base_url,
            which: earlier.checkpoint.to_json(),
            "latest": latest.checkpoint.to_json(),
            "proof": alarm.proof,
        }
        write_json_atomically(evidence_file, evidence)
        fail(
            f"{alarm.kind.upper()} DETECTED between the {which} height "
            f"{earlier.checkpoint.height} and the node's height {latest.checkpoint.height}: "
            f"{alarm.detail}; evidence written to {evidence_file}; {state_file} unchanged"
        )
