"""The `tanlian` command line (SPEC §8), run as the real console script in a subprocess.

Exit codes: 0 on success, 1 when a check or the input fails (one line on stderr, never a
traceback), 2 on bad usage. The demo, export and dev commands are checked against the store
they leave behind and against an independent replay of the export.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from api.cli import app, unwrapped
from api.console import counted
from ledger.blocks import parse_block, parse_certificate, verify_certificate
from ledger.crypto import PrivateKey
from ledger.genesis import genesis_state, parse_genesis
from ledger.limits import TRANSACTION_BYTES_MAX_CEILING
from ledger.state import State
from ledger.state_transition import apply_block
from ledger.store import DATABASE_FILE, Store
from ledger.transactions import TRANSACTION_TYPES
from tests.factory import key

TANLIAN = Path(sys.executable).parent / "tanlian"
DEV_WAIT_S = 60


def environment(passphrase: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TANLIAN_PASSPHRASE"}
    if passphrase is not None:
        env["TANLIAN_PASSPHRASE"] = passphrase
    return env


def tanlian(
    *args: str | Path | int, passphrase: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TANLIAN), *map(str, args)],
        capture_output=True,
        text=True,
        env=environment(passphrase),
        timeout=120,
        check=False,
    )


def assert_fails_cleanly(
    result: subprocess.CompletedProcess[str], fragment: str, *, code: int = 1
) -> None:
    """Exit `code`, and the reason on exactly one line of stderr, with no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0], lines[0]


def printed_key(output: str) -> tuple[str, str]:
    public = re.search(r"public key\s+([0-9a-f]{64})", output)
    account = re.search(r"account id\s+([0-9a-f]{64})", output)
    assert public and account, output
    return public.group(1), account.group(1)


def write_key(path: Path, name: str) -> PrivateKey:
    private = key(name)
    path.write_bytes(private.to_pem())
    return private


def transaction_types(directory: Path) -> Counter[str]:
    connection = sqlite3.connect(directory / DATABASE_FILE)
    try:
        rows = connection.execute("SELECT type, COUNT(*) FROM transactions GROUP BY type")
        return Counter(dict(rows.fetchall()))
    finally:
        connection.close()


def stored_state(directory: Path) -> State:
    store = Store.open(directory)
    try:
        return store.load_state()
    finally:
        store.close()


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("demo") / "city"
    result = tanlian("demo", "--data", directory, "--transactions", 300, "--seed", 7)
    assert result.returncode == 0, result.stderr
    assert "demo chain ready" in result.stdout
    return directory


# --- keys ---------------------------------------------------------------------------------------


def test_keys_new_then_show_print_the_same_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "alice.pem"
    made = tanlian("keys", "new", "--out", path)
    assert made.returncode == 0, made.stderr
    shown = tanlian("keys", "show", path)
    assert shown.returncode == 0, shown.stderr
    public, account = printed_key(made.stdout)
    assert printed_key(shown.stdout) == (public, account)
    loaded = PrivateKey.from_pem(path.read_bytes())
    assert (loaded.public_key_hex, loaded.account_id) == (public, account)
    assert path.stat().st_mode & 0o077 == 0, "a private key is readable by its owner only"


def test_keys_new_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "alice.pem"
    assert tanlian("keys", "new", "--out", path).returncode == 0
    before = path.read_bytes()
    assert_fails_cleanly(tanlian("keys", "new", "--out", path), "refusing to overwrite")
    assert path.read_bytes() == before


def test_keys_with_a_passphrase_are_encrypted(tmp_path: Path) -> None:
    path = tmp_path / "secret.pem"
    made = tanlian("keys", "new", "--out", path, passphrase="correct horse")
    assert made.returncode == 0, made.stderr
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    shown = tanlian("keys", "show", path, passphrase="correct horse")
    assert shown.returncode == 0, shown.stderr
    assert printed_key(shown.stdout) == printed_key(made.stdout)
    # It says where the passphrase comes from (found by review: only "give its passphrase").
    assert_fails_cleanly(tanlian("keys", "show", path), "give its passphrase (set $TANLIAN_PASS")
    assert_fails_cleanly(tanlian("keys", "show", path, passphrase="wrong"), "passphrase")


def test_keys_show_refuses_a_file_that_is_not_a_key(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a key at all\n")
    assert_fails_cleanly(tanlian("keys", "show", text), "(bad_key)")
    other = tmp_path / "p256.pem"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert_fails_cleanly(tanlian("keys", "show", other), "(bad_key)")
    assert_fails_cleanly(tanlian("keys", "show", tmp_path / "missing.pem"), "missing.pem")


def test_unknown_command_is_bad_usage() -> None:
    result = tanlian("frobnicate")
    assert_fails_cleanly(result, "error (usage): No such command 'frobnicate'.", code=2)
    assert result.stderr == "error (usage): No such command 'frobnicate'. See 'tanlian --help'.\n"


@pytest.mark.parametrize(
    ("arguments", "line"),
    [
        (
            ["verify", "chain"],
            "error (usage): Missing option '--genesis'. See 'tanlian verify chain --help'.",
        ),
        (
            ["keys", "show", "--bogus"],
            "error (usage): No such option: --bogus. See 'tanlian keys show --help'.",
        ),
        (
            ["demo", "--data", "d", "--transactions", "3"],
            "error (usage): Invalid value for '--transactions': Input should be greater than or"
            " equal to 50. See 'tanlian demo --help'.",
        ),
        (  # raised by the command itself
            ["export", "--out", "e.ndjson"],
            "error (usage): Invalid value: give either --data DIR or --node URL. See 'tanlian"
            " export --help'.",
        ),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(arguments: list[str], line: str) -> None:
    """Found by review: usage errors were click's usage line, a hint and a framed box, where
    every other error is one line (SPEC §8)."""
    result = tanlian(*arguments)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"{line}\n")


def test_help_and_a_group_without_a_command_are_as_they_were() -> None:
    """--help prints the help and exits 0; a group with no command prints its help and
    exits 2 (no error line: the help is the answer)."""
    shown = tanlian("verify", "chain", "--help")
    assert shown.returncode == 0 and "--genesis" in shown.stdout and shown.stderr == ""
    group = tanlian("keys")
    assert group.returncode == 2 and "new" in group.stdout and "error" not in group.stderr


def test_one_of_a_thing_is_said_in_the_singular() -> None:
    """Found by review: a block of one transaction was printed as "1 transactions"."""
    assert counted(1, "transaction") == "1 transaction"
    assert counted(0, "transaction") == "0 transactions"
    assert counted(12_345, "block") == "12345 blocks"  # as `export` printed it


def test_the_commands_that_run_no_node_load_no_web_server() -> None:
    """`api.cli` loads the web server only inside `node`, `dev` and `demo` (`api.cli_node`):
    it is most of a second on a slow machine that `verify`, `tx` or `keys` never use. The
    import-linter contract in pyproject.toml says the same of every import, even one made
    later; this is what a fresh process loads before it parses its command line."""
    probe = "import sys, api.cli; print(' '.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(result.stdout.split())
    assert {"typer", "httpx", "api.cli", "ledger.store"} <= loaded  # what the probe can see
    web = {"fastapi", "starlette", "uvicorn", "jinja2", "pydantic", "api.cli_node", "api.app"}
    assert not loaded & web
    node = subprocess.run(
        [sys.executable, "-c", probe.replace("api.cli;", "api.cli, api.cli_node;")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert web <= set(node.stdout.split())  # the probe would see them loaded


# --- help -----------------------------------------------------------------------------------------


def test_help_is_wrapped_to_the_terminal_not_to_the_source() -> None:
    """Found by review: a help's later paragraphs kept the source's line breaks, so in 80
    columns they broke mid-sentence ("Checks" alone on a line)."""
    shown = CliRunner().invoke(app, ["verify", "chain", "--help"], env={"COLUMNS": "80"})
    assert shown.exit_code == 0, shown.output
    assert any("Checks every hash link" in line for line in shown.output.splitlines())
    assert all(len(line) <= 80 for line in shown.output.splitlines())
    # A laid-out paragraph keeps its lines (tx's fields by type).
    table = "Intro:\nalpha: a b\nbeta: c d"
    assert unwrapped(f"Short.\n\nOne long\nsentence.\n\n{table}") == (
        f"Short.\n\nOne long sentence.\n\n{table}"
    )
    laid_out = CliRunner().invoke(app, ["tx", "--help"], env={"COLUMNS": "100"})
    assert "\n register_methodology: methodology_id name document_sha256" in laid_out.output


# --- genesis ------------------------------------------------------------------------------------


def test_genesis_new_writes_a_genesis_the_ledger_accepts(tmp_path: Path) -> None:
    authorities = [write_key(tmp_path / f"authority-{i}.pem", f"authority-{i}") for i in range(3)]
    validator = write_key(tmp_path / "validator-city.pem", "validator-city")
    # printed as it is, not read as markup or an emoji code (found by review)
    out = tmp_path / "genesis[2026]:cd:.json"
    result = tanlian(
        "genesis", "new",
        "--chain-id", "zibo-2026",
        *[arg for i in range(3) for arg in ("--authority", tmp_path / f"authority-{i}.pem")],
        "--threshold", 2,
        "--validator", tmp_path / "validator-city.pem",
        "--genesis-time", 1_767_225_600_000,
        "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    genesis = parse_genesis(json.loads(out.read_text()))
    assert genesis.chain_id == "zibo-2026"
    assert genesis.genesis_time == 1_767_225_600_000
    assert genesis.authority_threshold == 2
    assert genesis.authority_keys == tuple(sorted(k.public_key_hex for k in authorities))
    assert [v.public_key for v in genesis.validators] == [validator.public_key_hex]
    assert [v.power for v in genesis.validators] == [1]
    state = genesis_state(genesis)
    assert state.get(f"account/{genesis.authority_id}")["threshold"] == 2
    # It names the account the authority's keys sign for (a newcomer had no way to find it).
    assert f"authority account id: {genesis.authority_id} (2 of 3 keys" in result.stdout
    assert f"wrote {out}" in result.stdout
    # A store can be made on it.
    Store.create(tmp_path / "node", genesis.document).close()


def test_genesis_new_refuses_a_threshold_above_the_key_count(tmp_path: Path) -> None:
    for i in range(3):
        write_key(tmp_path / f"authority-{i}.pem", f"authority-{i}")
    write_key(tmp_path / "validator.pem", "validator-city")
    out = tmp_path / "genesis.json"
    result = tanlian(
        "genesis", "new",
        "--chain-id", "zibo-2026",
        *[arg for i in range(3) for arg in ("--authority", tmp_path / f"authority-{i}.pem")],
        "--threshold", 4,
        "--validator", tmp_path / "validator.pem",
        "--out", out,
    )  # fmt: skip
    assert_fails_cleanly(result, "threshold")
    assert not out.exists()


# --- demo ---------------------------------------------------------------------------------------


def test_demo_builds_a_chain_with_keys_and_genesis(demo_dir: Path) -> None:
    document = json.loads((demo_dir / "genesis.json").read_text())
    genesis = parse_genesis(document)
    pems = sorted((demo_dir / "keys").rglob("*.pem"))
    names = {path.stem for path in pems}
    assert {"authority-1", "authority-2", "authority-3", "validator-city"} <= names
    assert len(list((demo_dir / "keys").glob("*.pem"))) >= 4
    # Readable by their owner only, as every key file (found by a docs review: 0644 here).
    assert {path.stat().st_mode & 0o777 for path in pems} == {0o600}
    validator = PrivateKey.from_pem((demo_dir / "keys" / "validator-city.pem").read_bytes())
    assert [v.public_key for v in genesis.validators] == [validator.public_key_hex]
    store = Store.open(demo_dir)
    try:
        assert store.genesis.document == document, "genesis.json is the chain's genesis"
        state = store.load_state()
    finally:
        store.close()
    kinds = transaction_types(demo_dir)
    assert set(kinds) <= set(TRANSACTION_TYPES)
    assert len(kinds) >= 9, kinds
    assert sum(kinds.values()) == state.log.size >= 300


def test_demo_with_the_same_seed_repeats_itself(demo_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    result = tanlian("demo", "--data", again, "--transactions", 300, "--seed", 7)
    assert result.returncode == 0, result.stderr
    # The demo's clock follows the wall clock, so roots differ; what was done does not.
    assert transaction_types(again) == transaction_types(demo_dir)
    assert stored_state(again).height == stored_state(demo_dir).height
    for path in (demo_dir / "keys").rglob("*.pem"):
        assert (again / path.relative_to(demo_dir)).read_bytes() == path.read_bytes()


def test_demo_refuses_a_directory_holding_a_ledger(demo_dir: Path) -> None:
    before = stored_state(demo_dir)
    result = tanlian("demo", "--data", demo_dir, "--transactions", 300, "--seed", 7)
    assert_fails_cleanly(result, "holds a ledger already")
    after = stored_state(demo_dir)
    assert (after.height, after.state_root) == (before.height, before.state_root)


# --- export -------------------------------------------------------------------------------------


def export(demo_dir: Path, out: Path) -> list[bytes]:
    result = tanlian("export", "--data", demo_dir, "--out", out)
    assert result.returncode == 0, result.stderr
    return out.read_bytes().splitlines()


def test_export_writes_a_chain_that_replays_to_the_stored_head(
    demo_dir: Path, tmp_path: Path
) -> None:
    lines = export(demo_dir, tmp_path / "chain.ndjson")
    stored = stored_state(demo_dir)
    assert len(lines) == 1 + stored.height
    genesis = parse_genesis(json.loads(lines[0]))
    assert genesis.document == json.loads((demo_dir / "genesis.json").read_text())
    state = genesis_state(genesis)
    for height, line in enumerate(lines[1:], start=1):
        item = json.loads(line)
        assert set(item) == {"block", "certificate"}
        # The size limit is checked on its own below; here, every other rule.
        block = parse_block(item["block"], transaction_bytes_max=TRANSACTION_BYTES_MAX_CEILING)
        assert block.height == height
        verify_certificate(
            parse_certificate(item["certificate"]),
            chain_id=genesis.chain_id,
            height=height,
            block_hash=block.block_hash(),
            validators=state.current_validators(),
        )
        state = apply_block(state, block)
    assert state.state_root == stored.state_root
    assert state.log.root() == stored.log.root()


def test_export_parses_under_the_chains_own_transaction_limit(
    demo_dir: Path, tmp_path: Path
) -> None:
    """A verifier reads the export with the genesis `transaction_bytes_max` (SPEC §7.2)."""
    lines = export(demo_dir, tmp_path / "chain.ndjson")
    limit = parse_genesis(json.loads(lines[0])).params.transaction_bytes_max
    oversized = [
        (height, envelope["tx"]["type"], len(rfc8785.dumps(envelope)))
        for height, line in enumerate(lines[1:], start=1)
        for envelope in json.loads(line)["block"]["transactions"]
        if len(rfc8785.dumps(envelope)) > limit
    ]
    assert oversized == [], f"transactions over {limit} bytes (height, type, bytes)"
    for line in lines[1:]:
        parse_block(json.loads(line)["block"], transaction_bytes_max=limit)


def test_export_from_a_missing_directory_fails(tmp_path: Path) -> None:
    out = tmp_path / "chain.ndjson"
    result = tanlian("export", "--data", tmp_path / "nowhere", "--out", out)
    assert_fails_cleanly(result, "no ledger")
    assert not out.exists()


# --- dev ----------------------------------------------------------------------------------------


def _lines(stream: object, into: queue.Queue[str | None]) -> None:
    assert hasattr(stream, "readline")
    for line in iter(stream.readline, ""):
        into.put(line)
    into.put(None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# SIGHUP, a closed terminal, had killed the node at once (found by review).
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])
def test_dev_runs_the_validator_until_sigterm(tmp_path: Path, stop: signal.Signals) -> None:
    data = tmp_path / "dev"
    stderr = (tmp_path / "dev.stderr").open("w")
    port = str(free_port())
    process = subprocess.Popen(
        [str(TANLIAN), "dev", "--data", str(data), "--transactions", "200", "--port", port],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=environment(),
    )
    output: list[str] = []
    try:
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_lines, args=(process.stdout, lines), daemon=True).start()
        deadline = time.monotonic() + DEV_WAIT_S
        running = False
        blocks = 0
        while blocks < 2:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no two blocks within {DEV_WAIT_S} s: {''.join(output)}"
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            assert line is not None, f"dev exited early: {''.join(output)}"
            output.append(line)
            running = running or "single validator running" in line
            if running and re.match(r"\S+Z block ", line):
                blocks += 1
        process.send_signal(stop)
        assert process.wait(timeout=30) == 0
        while (line := lines.get(timeout=5)) is not None:
            output.append(line)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stderr.close()
    text = "".join(output)
    started = re.search(r"single validator running.*?height (\d+)", text, re.DOTALL)
    stopped = re.search(r"stopped at height (\d+)", text)
    assert started and stopped, text
    demo_height = int(started.group(1))
    # Each progress line with its UTC time, as the log's lines (an operator's run found
    # most of a validator's node.log untimed).
    printed = [
        int(h) for h in re.findall(r"^\d{4}-\d\d-\d\dT\S+Z block (\d+):", text, re.MULTILINE)
    ]
    assert printed[:2] == [demo_height + 1, demo_height + 2]
    height = stored_state(data).height
    assert height > demo_height
    assert height == int(stopped.group(1)) >= printed[-1]
    assert "Traceback" not in (tmp_path / "dev.stderr").read_text()
