"""`tanlian tx`, `tanlian query` and `tanlian export --node` (SPEC §8): the node's clients.

    tanlian tx TYPE --key KEY [--key KEY ...] [--signer ACCOUNT] [--nonce N] [--no-wait]
               [--field NAME=VALUE ...] [--payload FILE|-] [--node URL] [--out FILE]
    tanlian query (account|batch|retirement|block|tx) ID [--node URL]

`tx` makes one §3.2 transaction in numbered steps:

1. Read the payload: `--payload` (one JSON object, from a file or stdin), then each
   `--field NAME=VALUE`, its value read as its field's type (`read_field`): integers for
   quantities, times and thresholds, JSON for the structured fields, text for the rest.
   Bad usage (an unknown TYPE, a malformed field, a `--node` that is not an http(s) URL)
   exits 2.
2. Name the signer (the single key's account, or `--signer` for an M-of-N account) and check
   the transaction with the ledger's own stateless rules (`parse_transaction`) before any
   node is asked anything: a field that breaks a rule fails here, with exit 1.
3. Ask the node for its genesis (the chain id and the size limit) and, unless `--nonce`, the
   signer's nonce: its last committed nonce + 1, or 1 for an account the node does not know.
4. Sign with every key, check the envelope as the node will (`parse_envelope`), submit and,
   unless `--no-wait`, wait (bounded) for the commit. With `--out FILE`, write the signed
   envelope there instead and submit nothing (to POST it with curl or another client).
5. Print the outcome (tx_id, status, height, log index), or the node's problem as one line
   on stderr, "rejected (code): detail", and exit 1.

A node is outside input: every answer is read through `api.client`, whose failures carry a
stable code and end in one line and exit 1 (`api.console.fails_cleanly`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from rich.highlighter import JSONHighlighter

from api.client import (
    ONE_ANSWER_SECONDS_MAX,
    STREAM_PACE_BYTES_MIN,
    STREAM_PACE_SECONDS,
    Client,
    ClientError,
)
from api.console import (
    checked_url,
    err,
    fail,
    fails_cleanly,
    load_key,
    out,
    refuse_precious_out,
    replace_naming,
    temporary_beside,
    write_atomically,
)
from ledger import schema as s
from ledger.crypto import PrivateKey
from ledger.encoding import JSON, KEY_PATTERN, canonical, decode
from ledger.errors import FieldError, LedgerError
from ledger.genesis import parse_genesis
from ledger.limits import JSON_INTEGER_MAX, TRANSACTION_BYTES_MAX_CEILING
from ledger.transactions import (
    PAYLOADS,
    Transaction,
    parse_envelope,
    parse_transaction,
    sign_transaction,
)

NODE_DEFAULT: Final = "http://127.0.0.1:8000"  # SPEC §8
PAYLOAD_BYTES_MAX: Final = TRANSACTION_BYTES_MAX_CEILING  # no larger payload fits any chain
# The stateless check runs before the node names its chain; any valid chain id does.
LOCAL_CHAIN_ID: Final = "local-check"

# How `--field NAME=VALUE` reads VALUE (SPEC §3.2); any other field is text, as given.
INTEGER_FIELDS: Final = frozenset({"quantity", "valid_from", "valid_until", "threshold"})
JSON_FIELDS: Final = frozenset({"recipients", "validators"})  # arrays of objects
LIST_FIELDS: Final = frozenset({"methodologies", "keys"})  # a JSON array, or comma-separated
INTEGER_TEXT: Final = re.compile(r"-?[0-9]{1,20}\Z")  # the schema then checks the range

assert len(INTEGER_FIELDS | JSON_FIELDS | LIST_FIELDS) == (
    len(INTEGER_FIELDS) + len(JSON_FIELDS) + len(LIST_FIELDS)
), "each field is read one way"


class Kind(StrEnum):
    """What `tanlian query` reads."""

    account = "account"
    batch = "batch"
    retirement = "retirement"
    block = "block"
    tx = "tx"


# Each kind's path under /v1, and the shape of its id, checked before the id goes in a URL.
QUERIES: Final[dict[Kind, tuple[str, re.Pattern[str], str]]] = {
    Kind.account: ("accounts", s.HEX64, "an account id: 64 hex digits"),
    Kind.batch: ("batches", s.BATCH_ID, "a batch id: B-1, B-2, ..."),
    Kind.retirement: ("retirements", s.HEX64, "a retirement id: 64 hex digits"),
    Kind.block: ("blocks", re.compile(r"[1-9][0-9]{0,15}\Z"), "a block height: 1, 2, ..."),
    Kind.tx: ("transactions", s.HEX64, "a transaction id: 64 hex digits"),
}
assert set(QUERIES) == set(Kind)


class Reader(Client):
    """`Client` with the registry's reads (accounts, batches, retirements, blocks)."""

    def read(self, kind: Kind, item_id: str) -> dict[str, Any]:
        collection, _, _ = QUERIES[kind]
        return self._get(f"/v1/{collection}/{item_id}")


# --- step 1: the payload ------------------------------------------------------------------------


def read_field(text: str) -> tuple[str, JSON]:
    """`NAME=VALUE` as a payload field, VALUE read as the field's type; bad usage otherwise."""
    name, equals, value = text.partition("=")
    if not equals or not KEY_PATTERN.match(name):
        raise typer.BadParameter(f"{text!r} is not NAME=VALUE", param_hint="--field")
    if any("\udc80" <= char <= "\udcff" for char in value):
        # Bytes that are not UTF-8, as Python hands them over from the command line (found
        # by review: reported as control characters).
        raise typer.BadParameter(f"{name}'s value is not UTF-8 text", param_hint="--field")
    if name in INTEGER_FIELDS:
        if not INTEGER_TEXT.match(value):
            raise typer.BadParameter(
                f"{name} takes an integer, not {value!r}", param_hint="--field"
            )
        return name, int(value)
    if name in JSON_FIELDS or (name in LIST_FIELDS and value.lstrip().startswith("[")):
        try:
            return name, decode(value)
        except LedgerError as error:
            raise typer.BadParameter(
                f"{name} takes JSON: {error.message}", param_hint="--field"
            ) from error
    if name in LIST_FIELDS:
        return name, [item.strip() for item in value.split(",")] if value.strip() else []
    return name, value


def read_payload(fields: list[str], payload_file: str | None) -> dict[str, JSON]:
    """The payload from `--payload` (if given) and the `--field`s, no field given twice."""
    payload: dict[str, JSON] = {}
    if payload_file is not None:
        value = decode(_read_bounded(payload_file))
        if not isinstance(value, dict):
            raise FieldError("payload", "the --payload file must hold one JSON object")
        payload.update(value)
    for text in fields:
        name, value = read_field(text)
        if name in payload:
            raise typer.BadParameter(f"{name} is given twice", param_hint="--field")
        payload[name] = value
    return payload


def _read_bounded(source: str) -> bytes:
    if source == "-":
        data = sys.stdin.buffer.read(PAYLOAD_BYTES_MAX + 1)
    else:
        with Path(source).open("rb") as handle:
            data = handle.read(PAYLOAD_BYTES_MAX + 1)
    if len(data) > PAYLOAD_BYTES_MAX:
        raise LedgerError(
            f"the payload is over {PAYLOAD_BYTES_MAX} bytes, more than any transaction holds",
            code="payload_too_large",
        )
    return data


# --- steps 2 to 5: check, sign, submit, print ---------------------------------------------------


def _load_keys(paths: list[Path]) -> list[PrivateKey]:

    keys = [load_key(path) for path in paths]
    public_keys = [key.public_key_hex for key in keys]
    if len(set(public_keys)) != len(public_keys):
        raise typer.BadParameter("the same key is given twice", param_hint="--key")
    return keys


def next_nonce(client: Reader, signer: str) -> int:
    """The signer's last committed nonce + 1, or 1 for an account the node does not know."""
    try:
        account = client.read(Kind.account, signer)
    except ClientError as error:
        if error.code == "not_found" and error.status == 404:
            return 1
        raise
    nonce = account.get("nonce")
    if not isinstance(nonce, int) or isinstance(nonce, bool) or not 0 <= nonce < JSON_INTEGER_MAX:
        raise ClientError(f"the node's account {signer} has no valid nonce: {nonce!r}")
    return nonce + 1


def _transaction(kind: str, signer: str, nonce: int, chain_id: str, payload: Any) -> Transaction:
    value = {"chain_id": chain_id, "type": kind, "signer": signer, "nonce": nonce}
    return parse_transaction({**value, "payload": payload})


def print_outcome(answer: dict[str, Any], tx_id: str, node: str = NODE_DEFAULT) -> None:
    """Print the node's answer for the envelope `tx_id`: committed (where) or pending, with
    the command that asks `node` again."""
    status = answer.get("status")
    if answer.get("tx_id") != tx_id or status not in ("committed", "pending"):
        raise ClientError(f"the node answered for another transaction or oddly: {answer!r}"[:300])
    lines = [f"tx_id      {tx_id}", f"status     {status}"]
    if status == "committed":
        height, log_index = answer.get("height"), answer.get("log_index")
        if not isinstance(height, int) or not isinstance(log_index, int):
            raise ClientError(f"a commit without its height and log index: {answer!r}"[:300])
        lines += [f"height     {height}", f"log index  {log_index}"]
    out.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)
    if status == "pending":
        # naming the node asked (found by review: the hint asked the default one)
        again = "" if node == NODE_DEFAULT else f" --node {node}"
        out.print(f"not committed yet: tanlian query tx {tx_id}{again}", highlight=False)


@fails_cleanly
def tx(  # noqa: PLR0917 - typer maps each option to a parameter
    kind: Annotated[str, typer.Argument(metavar="TYPE", help="A transaction type (SPEC §3.2).")],
    key: Annotated[
        list[Path], typer.Option("--key", help="A signing key (PEM); repeat for M-of-N.")
    ],
    field: Annotated[
        list[str] | None,
        typer.Option("--field", metavar="NAME=VALUE", help="A payload field (repeat)."),
    ] = None,
    payload_file: Annotated[
        str | None,
        typer.Option("--payload", metavar="FILE|-", help="The payload as one JSON object."),
    ] = None,
    signer: Annotated[
        str | None, typer.Option(help="The signing account; needed with several keys.")
    ] = None,
    nonce: Annotated[
        int | None, typer.Option(min=1, max=JSON_INTEGER_MAX, help="Default: the next one.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the commit.")] = True,
    node: Annotated[str, typer.Option(callback=checked_url, help="The node's URL.")] = NODE_DEFAULT,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="FILE",
            help="Write the signed envelope (JSON) to FILE and submit nothing: for curl.",
        ),
    ] = None,
) -> None:
    """Sign and submit a transaction of any type, wait for its commit, print the outcome.

    Each --field NAME=VALUE is read as its field's type:
    integers: quantity, valid_from and valid_until (unix ms), threshold;
    JSON: recipients, validators; JSON array or comma-separated: methodologies, keys;
    text: every other field. Keys are PEM files, decrypted with $TANLIAN_PASSPHRASE.

    Fields by TYPE (? = optional):
    register_methodology: methodology_id name document_sha256
    accredit_certifier: certifier name methodologies valid_from valid_until
    revoke_certifier: certifier reason
    create_program: program_id name valid_until
    suspend_account, reinstate_account: account reason
    set_validators: validators = [{"public_key", "power", "name"}, ...]
    issue: methodology_id project_id period_start period_end evidence_sha256 memo?
           recipients = [{"account", "quantity"}, ...]
    transfer: to batch_id quantity memo?
    retire: batch_id quantity beneficiary purpose program_id? jurisdiction? memo?
    invalidate: batch_id holder quantity reason
    set_keys: keys threshold
    """
    if kind not in PAYLOADS:
        raise typer.BadParameter(f"{kind!r} is not one of {', '.join(PAYLOADS)}", param_hint="TYPE")
    if signer is None and len(key) > 1:
        raise typer.BadParameter(
            "several keys sign for one M-of-N account: name it with --signer", param_hint="--key"
        )
    payload = read_payload(field or [], payload_file)
    keys = _load_keys(key)
    account = signer.lower() if signer is not None else keys[0].account_id
    _transaction(kind, account, nonce or 1, LOCAL_CHAIN_ID, payload)  # before any network call
    if out is not None:
        refuse_precious_out(out, None)
    with Reader(node, answer_seconds_max=ONE_ANSWER_SECONDS_MAX) as client:
        genesis = parse_genesis(client.genesis())
        transaction = _transaction(
            kind, account, nonce or next_nonce(client, account), genesis.chain_id, payload
        )
        envelope = parse_envelope(  # as the node will read it, under the chain's limit
            sign_transaction(transaction, keys).to_json(),
            transaction_bytes_max=genesis.params.transaction_bytes_max,
        )
        if out is not None:
            write_atomically(out, canonical(envelope.to_json()) + b"\n")  # whole or absent
            err.print(
                f"signed {envelope.tx_id}, not submitted: {out}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            return
        try:
            answer = client.submit(envelope, wait=wait)
        except ClientError as error:
            if error.status is None:  # no answer at all: not a rejection
                raise
            fail(f"rejected ({error.code}): {error.message}")
    print_outcome(answer, envelope.tx_id, node)


# --- query and export ---------------------------------------------------------------------------


def checked_id(kind: Kind, item_id: str, param_hint: str = "ID") -> str:
    """`item_id` as the ledger spells an id of `kind` (hex ids in lower case); one of
    another shape is bad usage (exit 2), refused before anything is read."""
    _, pattern, shape = QUERIES[kind]
    normalized = item_id.lower() if pattern is s.HEX64 else item_id
    if not pattern.match(normalized):
        raise typer.BadParameter(f"{item_id!r} is not {shape}", param_hint=param_hint)
    return normalized


@fails_cleanly
def query(
    kind: Annotated[Kind, typer.Argument(help="What to read.")],
    item_id: Annotated[
        str, typer.Argument(metavar="ID", help="An account, retirement or tx id; B-n; a height.")
    ],
    node: Annotated[str, typer.Option(callback=checked_url, help="The node's URL.")] = NODE_DEFAULT,
) -> None:
    """Read one account, batch, retirement, block or transaction from a node, as JSON."""
    normalized = checked_id(kind, item_id)
    with Reader(node, answer_seconds_max=ONE_ANSWER_SECONDS_MAX) as client:
        value = client.read(kind, normalized)
    out.print(JSONHighlighter()(terminal_json(value)))


def terminal_json(value: JSON) -> str:
    """`value` as indented JSON for a terminal: other scripts as they are, and every
    character a terminal could act on (controls, bidirectional overrides, zero-width ones)
    as its JSON escape, so the output is still the same JSON (found by review: a
    beneficiary's right-to-left override reversed the rest of the line)."""
    text = json.dumps(value, ensure_ascii=False, indent=2)
    return "".join(c if c.isprintable() or c == "\n" else _json_escape(c) for c in text)


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def export_from_node(node: str, out_file: Path) -> int:
    """Stream the node's NDJSON export into `out_file` (whole or not at all); the block count.

    The lines are written as they come, through a temporary file beside `out_file` that
    replaces it only once the stream has ended well."""
    handle, temporary = temporary_beside(out_file)
    lines = 0
    try:
        with (
            Client(node, answer_pace=(STREAM_PACE_BYTES_MIN, STREAM_PACE_SECONDS)) as client,
            os.fdopen(handle, "wb") as file,
        ):
            for line in client.export_lines():
                file.write(line)
                if line.endswith(b"\n"):
                    lines += 1
        if lines == 0:
            raise ClientError(f"{node} sent an empty export, without even its genesis")
        Path(temporary).chmod(0o644)  # an export is public, unlike mkstemp's default
        replace_naming(Path(temporary), out_file)
    finally:
        with contextlib.suppress(FileNotFoundError):
            Path(temporary).unlink()
    return lines - 1
