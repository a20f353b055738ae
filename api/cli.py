"""The `tanlian` command line (SPEC §8).

Exit 0 on success, 1 when a verification or a transaction fails (one line on stderr, no
traceback), 2 on bad usage (one line too: `main`). Commands that talk to a node arrive with
the HTTP API. The commands that run a node load the web server only when they run
(`api.cli_node`).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import re
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from api.cli_client import Kind, checked_id, export_from_node, query, tx
from api.cli_cluster import EMPTY_BLOCK_INTERVAL_S_DEFAULT, EmptyBlockInterval, cluster
from api.cli_verify import read_genesis, verify_app
from api.console import (
    atomic_file,
    checked_url,
    checked_urls,
    close_all,
    counted,
    err,
    fails_cleanly,
    load_key,
    option_given,
    out,
    passphrase,
    refuse_precious_out,
    write_atomically,
)
from ledger.blocks import Validator
from ledger.crypto import PrivateKey
from ledger.errors import LedgerError, StoreError, StoreExists, StoreUnreadable, printable
from ledger.genesis import make_genesis_document, parse_genesis
from ledger.store import DATABASE_FILE, Store, move_store_aside

USAGE_EXIT = 2  # SPEC §8: bad usage

app = typer.Typer(
    help="Tanlian (碳链): a verifiable carbon-credit ledger.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
keys_app = typer.Typer(help="Make and inspect Ed25519 keys (PKCS#8 PEM).", no_args_is_help=True)
genesis_app = typer.Typer(help="Write genesis files.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(genesis_app, name="genesis")
app.command()(cluster)
app.add_typer(verify_app, name="verify")
app.command("tx")(tx)
app.command("query")(query)


@keys_app.command("new")
@fails_cleanly
def keys_new(
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the PEM file.")],
) -> None:
    """Make a key; encrypted with $TANLIAN_PASSPHRASE when set."""
    if out_file.exists():
        raise LedgerError(f"{out_file} exists: refusing to overwrite a key", code="exists")
    key = PrivateKey.generate()
    write_atomically(out_file, key.to_pem(passphrase()), mode=0o600)
    out.print(f"public key  {key.public_key_hex}\naccount id  {key.account_id}", highlight=False)


@keys_app.command("show")
@fails_cleanly
def keys_show(file: Path) -> None:
    """Print a key's public key and the id of its single-key account."""
    key = load_key(file)
    out.print(f"public key  {key.public_key_hex}\naccount id  {key.account_id}", highlight=False)


@genesis_app.command("new")
@fails_cleanly
def genesis_new(  # noqa: PLR0917 - typer maps each option to a parameter
    chain_id: Annotated[str, typer.Option(help="The chain's id, e.g. zibo-2026.")],
    authority: Annotated[list[Path], typer.Option(help="An authority key file (repeat).")],
    validator: Annotated[list[Path], typer.Option(help="A validator key file (repeat).")],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the genesis.")],
    threshold: Annotated[int, typer.Option(help="Authority signatures needed.")] = 1,
    authority_name: Annotated[str, typer.Option(help="The authority's name.")] = "Registry",
    genesis_time: Annotated[int | None, typer.Option(help="Unix ms; default now.")] = None,
) -> None:
    """Write a genesis file (SPEC §5.1)."""
    if out_file.exists():  # a chain's identity: never replaced by a typo (as `keys new`)
        raise LedgerError(f"{out_file} exists: refusing to overwrite a genesis", code="exists")
    document = make_genesis_document(
        chain_id=chain_id,
        genesis_time=genesis_time if genesis_time is not None else int(time.time() * 1000),
        authority_name=authority_name,
        authority_keys=[load_key(path).public_key_hex for path in authority],
        authority_threshold=threshold,
        validators=[
            Validator(public_key=load_key(path).public_key_hex, power=1, name=path.stem)
            for path in validator
        ],
    )
    # The authority's account id is derived from its keys and threshold: without it here, a
    # newcomer had no way to name the account its transactions sign for (`--signer`).
    genesis = parse_genesis(document)
    write_atomically(out_file, json.dumps(document, indent=2, ensure_ascii=False).encode())
    out.print(f"wrote {out_file}", highlight=False)
    out.print(
        f"authority account id: {genesis.authority_id} "
        f"({genesis.authority_threshold} of {len(genesis.authority_keys)} keys sign for it)",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
@fails_cleanly
def demo(
    data: Annotated[Path, typer.Option(help="An empty directory for keys, genesis and chain.")],
    transactions: Annotated[int, typer.Option(min=50, max=1_000_000)] = 3000,
    seed: Annotated[int, typer.Option(help="Makes the demo reproducible.")] = 1,
) -> None:
    """Build a local single-validator chain with a realistic Zibo scenario, then exit."""
    from api.cli_node import make_demo  # noqa: PLC0415 - node, dev, demo only

    make_demo(data, transactions, seed)


@app.command()
@fails_cleanly
def export(
    out_file: Annotated[Path, typer.Option("--out", help="The NDJSON file to write.")],
    data: Annotated[Path | None, typer.Option(help="A node's data directory.")] = None,
    node: Annotated[
        str | None, typer.Option("--node", callback=checked_url, help="A node's URL.")
    ] = None,
) -> None:
    """Write the NDJSON export: the genesis, then one {"block", "certificate"} per line,
    from a node's data directory or streamed from a running node."""
    if (data is None) == (node is None):
        raise typer.BadParameter("give either --data DIR or --node URL")
    if node is not None:
        refuse_precious_out(out_file, None)
        blocks = export_from_node(node, out_file)
        out.print(f"wrote {counted(blocks, 'block')} to {out_file}", highlight=False)
        return
    assert data is not None
    refuse_precious_out(out_file, data)
    store = Store.open(data)
    try:
        store.load_state()  # refuse to export from a damaged store
        with atomic_file(out_file) as handle:  # nothing is left if a block is found corrupt
            blocks = store.export(handle)
    finally:
        store.close()
    out.print(f"wrote {counted(blocks, 'block')} to {out_file}", highlight=False)


@app.command()
@fails_cleanly
def receipt(
    retirement_id: Annotated[str, typer.Argument(help="The retirement's id (its tx_id).")],
    data: Annotated[Path, typer.Option(help="A node's data directory.")],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the receipt.")],
) -> None:
    """Write the self-contained receipt of a retirement (SPEC §6.3), against the head."""
    normalized = checked_id(Kind.retirement, retirement_id, "RETIREMENT_ID")
    refuse_precious_out(out_file, data)
    store = Store.open(data)
    try:
        document = store.receipt(store.load_state(), normalized)
    finally:
        store.close()
    write_atomically(out_file, json.dumps(document, indent=2, ensure_ascii=False).encode())
    out.print(
        f"wrote the receipt of {retirement_id} to {out_file}", highlight=False, soft_wrap=True
    )


@app.command()
@fails_cleanly
def node(  # noqa: PLR0917 - typer maps each option to a parameter
    context: typer.Context,
    genesis_file: Annotated[Path, typer.Option("--genesis", help="The chain's genesis file.")],
    data: Annotated[Path, typer.Option(help="The data directory (created if new).")],
    validator_key: Annotated[
        Path | None, typer.Option(help="This node's validator key (PEM); a follower has none.")
    ] = None,
    listen: Annotated[str, typer.Option(help="HOST:PORT to serve the API on.")] = "127.0.0.1:8000",
    peer: Annotated[
        list[str] | None, typer.Option(callback=checked_urls, help="A peer validator's URL.")
    ] = None,
    follow: Annotated[
        list[str] | None,
        typer.Option(
            callback=checked_urls,
            help="Follow the node at this URL (repeat: the next is asked when one fails).",
        ),
    ] = None,
    resync: Annotated[
        bool,
        typer.Option(
            "--resync",
            help="Move this node's store aside (kept, never deleted) and rebuild it from its "
            "--peer (or --follow) nodes, verifying every certificate; a validator keeps its "
            "key and signed-message log. For a store that refuses to start or answers "
            "store_unavailable.",
        ),
    ] = False,
    empty_block_interval: EmptyBlockInterval = EMPTY_BLOCK_INTERVAL_S_DEFAULT,
) -> None:
    """Run a node serving the HTTP API: the single validator of its chain; one validator of a
    consortium running BFT consensus (with --peer URL for each other validator; far behind,
    it catches up by block sync from their API); or, with --follow URL and no key, a follower
    that signs nothing, checks every certificate and replays every block it takes from the
    nodes it follows, serves the whole read, proof and export API from its own store, and
    forwards submissions to them. With --resync, a damaged store is moved aside and rebuilt
    from those nodes (docs/decisions/0008-reliability.md)."""
    follow = follow or []
    if (validator_key is None) == (not follow):
        raise typer.BadParameter(
            "give either --validator-key KEY (a validator) or --follow URL (a follower)"
        )
    if follow and peer:
        raise typer.BadParameter("a follower has no --peer: it follows the --follow nodes")
    interval_given = option_given(context, "empty_block_interval")
    if follow and interval_given:
        raise typer.BadParameter(
            "a follower makes no blocks: --empty-block-interval is for a validator of a consortium"
        )
    host, _, port_text = listen.rpartition(":")
    if not host or not port_text.isdigit():
        raise typer.BadParameter(f"--listen must be HOST:PORT, not {listen!r}")
    if resync and not (peer or follow):
        raise typer.BadParameter("--resync rebuilds the store from other nodes: give --peer")
    genesis = read_genesis(genesis_file)  # bounded, and named in its errors
    document, genesis_hash = genesis.document, genesis.genesis_hash()
    if interval_given and not peer and len(genesis.validators) == 1:
        raise typer.BadParameter(
            "a single validator adds no empty blocks: --empty-block-interval is for a"
            " validator of a consortium (with --peer)"
        )
    key = None if validator_key is None else load_key(validator_key)
    # A new store's validators are the genesis's: a key not among them would stop the node
    # once its store was made (found by review: the refused start left a new store behind).
    # One with --peer may be joining: the chain's later sets decide.
    new_store = not (data / DATABASE_FILE).exists() and not resync
    if (
        new_store
        and key is not None
        and not peer
        and key.public_key_hex not in {v.public_key for v in genesis.validators}
    ):
        validators = genesis.validators
        raise LedgerError(
            (
                f"this key is not the chain's only validator: the chain's only validator is"
                f" {validators[0].public_key[:16]}…, and this key is {key.public_key_hex[:16]}…"
                if len(validators) == 1
                else f"this key ({key.public_key_hex[:16]}…) is not one of the chain's"
                f" {len(validators)} validators"
            )
            + f" in {genesis_file}: check --validator-key {validator_key}",
            code="not_a_validator",
        )
    # A validator of several decides nothing alone (found by review: it said "validator
    # running", and never made a block). A store that exists may be governed by a later set
    # of this validator alone: then a warning, not a refusal. (After the key's check, which
    # names a wrong key more precisely.)
    named = len(genesis.validators)
    if validator_key is not None and not peer and named > 1:
        alone = f"a validator of a set of {named} ({genesis_file}) needs --peer URLs of the others"
        if new_store:
            raise typer.BadParameter(alone)
        err.print(
            f"warning: {alone}: without them it decides blocks only if the chain's current"
            " validator set is this validator alone",
            highlight=False,
            soft_wrap=True,
        )
    # Settings and the listening sockets before anything is written (found by review: a bad
    # setting or a port in use had left a new data directory and store behind).
    from api.cli_node import open_api, serve  # noqa: PLC0415 - node, dev, demo only

    settings, listening = open_api(data, host, int(port_text))
    try:
        if resync:
            _check_same_chain(data, genesis_hash, genesis_file)  # never set aside another chain
            aside = move_store_aside(data)
            sources = ", ".join(peer or follow)
            where = "no store to move aside" if aside is None else f"store moved aside to {aside}"
            out.print(
                f"resync: {where}; rebuilding it from {sources}", highlight=False, soft_wrap=True
            )
        if not (data / DATABASE_FILE).exists():
            # Another process starting on the same directory may make it first: the lock
            # then says which process runs there (`serve`).
            with contextlib.suppress(StoreExists):
                Store.create(data, document).close()
        _check_same_chain(data, genesis_hash, genesis_file)
    except BaseException:
        close_all(listening)
        raise
    try:
        serve(
            data,
            key,
            settings=settings,
            listening=listening,
            simulate=False,
            peers=tuple(peer or ()),
            follow=tuple(follow),
            empty_block_ms=round(empty_block_interval * 1000),
        )
    except StoreError as error:
        damaged = error.message.startswith("refusing to start") or "not a usable" in error.message
        if (peer or follow) and damaged:
            raise StoreError(
                f"{error.message} (--resync moves this store aside and rebuilds it from the "
                "other nodes)"
            ) from error
        raise


def _check_same_chain(data: Path, genesis_hash: str, genesis_file: Path) -> None:
    """The store at `data` is of the chain of `genesis_file` (or too damaged to say)."""
    try:
        store = Store.open(data)
    except StoreUnreadable:
        raise  # it may be whole: never set aside or rebuilt for what its files' owner is
    except StoreError:
        return  # none, or its genesis cannot be read: nothing to compare
    try:
        if store.genesis.genesis_hash() != genesis_hash:
            raise LedgerError(f"{data} holds another chain than {genesis_file}", code="exists")
    finally:
        store.close()


@app.command()
@fails_cleanly
def dev(
    data: Annotated[Path, typer.Option(help="Data directory; a demo is built if empty.")] = Path(
        "data/dev"
    ),
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port for the HTTP API.")] = 8000,
    transactions: Annotated[int, typer.Option(min=50, max=1_000_000)] = 3000,
    simulate: Annotated[bool, typer.Option(help="Keep households retiring, live.")] = True,
) -> None:
    """Build the demo if DATA is empty, then run its single validator and serve the API and
    its docs on 127.0.0.1, with live simulated activity, until Ctrl-C."""
    # The port before the demo is built (found by review: with the port in use, the whole
    # demo was built, then the start refused).
    from api.cli_node import make_demo, open_api, serve  # noqa: PLC0415 - node, dev, demo only

    settings, listening = open_api(data, "127.0.0.1", port)
    try:
        if not (data / DATABASE_FILE).exists():
            make_demo(data, transactions, seed=1)
        key = load_key(data / "keys" / "validator-city.pem")
    except BaseException:
        close_all(listening)
        raise
    serve(data, key, settings=settings, listening=listening, simulate=simulate)


# A line that starts a table row, a list item or an indented block: its paragraph keeps its
# line breaks (`tx`'s fields by type).
_LAID_OUT = re.compile(r"\s|[\w ,?-]+:\s|(\d+\.|-|\*)\s")


def unwrapped(doc: str) -> str:
    """`doc` with each prose paragraph on one line. Typer keeps the line breaks of a help's
    later paragraphs, so the source's ~90-column lines broke mid-sentence in a terminal of
    80 columns (found by review); rich wraps one line to whatever width there is."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(
        paragraph
        if any(_LAID_OUT.match(line) for line in paragraph.splitlines()[1:])
        else " ".join(paragraph.split())
        for paragraph in paragraphs
    )


def _unwrap_helps(typer_app: typer.Typer) -> None:
    for command in typer_app.registered_commands:
        doc = command.help or (command.callback.__doc__ if command.callback else None)
        if doc:
            command.help = unwrapped(doc)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _unwrap_helps(group.typer_instance)


_unwrap_helps(app)


def main() -> None:
    """Run the command line. Bad usage is one line on stderr, `error (usage): <reason>. See
    'tanlian <command> --help'.`, and exit 2 (SPEC §8): found by review, click's usage line,
    hint and framed box had been the only multi-line error, and a cluster's validator that
    exited so was read from its log by the frame's characters. Help, exit codes and Ctrl-C
    (exit 130, no traceback) are as click has them."""
    try:
        code = app(prog_name="tanlian", standalone_mode=False)
    except typer.TyperException as error:  # click's: typer carries its own copy of click
        code = error.exit_code
        # A group given no command has printed its help, the whole answer (typer's own test
        # of this error, by name: its class is not public).
        if type(error).__name__ != "NoArgsIsHelpError":
            _print_click_error(error)
    except typer.Abort:  # end of input at a prompt
        err.print("aborted", highlight=False)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


def _print_click_error(error: typer.TyperException) -> None:
    """One line: `error (usage): <reason>. See '<command> --help'.` for bad usage (exit 2),
    `error: <reason>` for another of click's errors."""
    message = " ".join(error.format_message().split())
    # A usage error's context names the command whose help says how to use it.
    command = getattr(getattr(error, "ctx", None), "command_path", None)
    if error.exit_code != USAGE_EXIT:
        line = f"[red]error[/red]: {escape(printable(message))}"
    else:
        if not message.endswith((".", "?", "!")):
            message += "."
        see = f" See '{escape(printable(command))} --help'." if isinstance(command, str) else ""
        line = f"[red]error[/red] (usage): {escape(printable(message))}{see}"
    err.print(line, markup=True, highlight=False, soft_wrap=True)


if __name__ == "__main__":  # pragma: no cover
    main()
