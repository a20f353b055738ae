"""`tanlian verify ...` (SPEC §8): check a chain offline, trusting only its genesis file.

    tanlian verify chain --export FILE --genesis FILE

The checking is the pure auditor's (`ledger.verification.audit_chain`, SPEC §6.2); this shell
reads the files (line by line, each line bounded), spreads each block's signature checks
over one thread per core (`consensus.pool.verify_signatures`), draws a progress bar on a
terminal and prints the outcome: the head on stdout and exit 0, or one line on stderr naming
the first failing height, transaction and rule, and exit 1. Bad usage exits 2.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Annotated, Final

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

from api.console import err, fail, fails_cleanly, out
from consensus.pool import verify_signatures
from consensus.producer import tune_garbage_collector
from ledger.blocks import compute_validators_hash
from ledger.encoding import decode
from ledger.errors import LedgerError
from ledger.genesis import Genesis, decode_genesis
from ledger.receipts import verify_receipt
from ledger.transactions import Envelope
from ledger.verification import (
    AuditFailure,
    AuditReport,
    SignatureVerifier,
    audit_chain,
    compute_line_bytes_max,
)

verify_app: typer.Typer = typer.Typer(
    help="Verify a chain or a retirement receipt offline, trusting only a genesis file or a "
    "validator set.",
    no_args_is_help=True,
)

GENESIS_FILE_BYTES_MAX: Final = 16 * 1024 * 1024
NODE_NOT_AVAILABLE: Final = "the HTTP API is not available yet; use --export"


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


def audit_export(export_file: Path, genesis: Genesis) -> tuple[AuditReport, float]:
    """Audit an export file with threaded signature checks; the report and the seconds."""
    line_bytes_max = compute_line_bytes_max(genesis.params)
    workers = os.cpu_count() or 2
    consumed = 0

    tune_garbage_collector()  # the replay builds the state's large, acyclic heap, as a node's
    with (
        export_file.open("rb") as handle,
        ThreadPoolExecutor(workers, thread_name_prefix="verify") as executor,
        _progress() as progress,
    ):
        task = progress.add_task("audit", total=os.fstat(handle.fileno()).st_size or None)

        def on_read(size: int) -> None:
            nonlocal consumed
            consumed += size

        def on_block(height: int, transactions: int) -> None:
            progress.update(task, completed=consumed, transactions=transactions)

        started = time.perf_counter()
        report = audit_chain(
            genesis,
            read_lines(handle, line_bytes_max, on_read),
            verify_signatures=parallel_verifier(executor),
            on_block=on_block,
        )
        return report, time.perf_counter() - started


@verify_app.command("chain")
@fails_cleanly
def verify_chain(
    genesis_file: Annotated[
        Path, typer.Option("--genesis", help="The genesis file you trust for this chain.")
    ],
    export_file: Annotated[
        Path | None, typer.Option("--export", help="An NDJSON export (tanlian export).")
    ] = None,
    node: Annotated[str | None, typer.Option("--node", help="A node's URL.")] = None,
) -> None:
    """Audit a whole chain (SPEC §6.2) and name the first failing height and rule.

    Checks every hash link, every certificate against the validator set governing its height,
    every signature, every transaction rule by replaying the state, and both roots.
    """
    if (export_file is None) == (node is None):
        raise typer.BadParameter("give either --export FILE or --node URL")
    if node is not None:
        raise LedgerError(NODE_NOT_AVAILABLE, code="not_available")
    assert export_file is not None
    try:
        genesis = read_genesis(genesis_file)
    except LedgerError as error:
        fail(f"error ({error.code}): {error.message}")
    try:
        report, seconds = audit_export(export_file, genesis)
    except AuditFailure as failure:
        fail(f"verification failed {failure.message}")
    rate = report.transactions / seconds if seconds > 0 else 0.0
    out.print(
        f"chain verified: height {report.height}, {report.transactions} transactions, "
        f"log root {report.log_root}, state root {report.state_root}, "
        f"{seconds:.1f} s, {rate:,.0f} tx/s",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


RECEIPT_FILE_BYTES_MAX: Final = 4 * 1024 * 1024
RECEIPT_DEPTH_MAX: Final = 8  # receipt > state_proofs > proof > value > serials > range


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
    genesis_hash = None
    if genesis_file is not None:
        genesis = read_genesis(genesis_file)
        trusted = compute_validators_hash(genesis.validators)
        genesis_hash = genesis.genesis_hash()
    else:
        assert validators_hash is not None
        trusted = validators_hash.lower()
    with receipt_file.open("rb") as handle:
        data = handle.read(RECEIPT_FILE_BYTES_MAX + 1)
    if len(data) > RECEIPT_FILE_BYTES_MAX:
        fail(f"receipt not verified: {receipt_file} is over {RECEIPT_FILE_BYTES_MAX} bytes")
    try:
        receipt = decode(data, max_depth=RECEIPT_DEPTH_MAX)
        verify_receipt(receipt, validators_hash=trusted, genesis_hash=genesis_hash)
    except LedgerError as error:
        fail(f"receipt not verified: {error.message}")
    record = receipt["retirement"]
    header = receipt["checkpoint"]["header"]
    out.print(
        f"receipt verified: retirement {record['retirement_id']}, {record['quantity']} kg CO2e "
        f"of {record['batch_id']} retired by {record['holder']} for {record['beneficiary']!r} "
        f"({record['purpose']}), certified at height {header['height']}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
