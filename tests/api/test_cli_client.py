"""`tanlian tx`, `tanlian query` and `tanlian export --node` (SPEC §8), run as the real console
script against a real node process.

One node serves the module: `tanlian dev` on the demo chain, without its simulation (so only
these tests change the ledger), started on a free port, waited for (bounded) through /healthz
and stopped by its pid whatever happens. The demo's keys sign: two of the three authority
keys for the 2-of-3 authority, and households that hold credits, found with `query account`.
Bad usage (exit 2, refused before any node is asked), how `--field` reads each of the twelve
types' payloads and how the node's answers are read are checked in this process.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from api.cli import app
from api.cli_client import (
    Reader,
    next_nonce,
    print_outcome,
    read_field,
    read_payload,
    terminal_json,
)
from api.client import ClientError
from api.console import PASSPHRASE_ENV
from ledger.crypto import PrivateKey, compute_account_id
from ledger.errors import LedgerError
from ledger.transactions import PAYLOADS, parse_envelope, parse_transaction
from tests.api.test_cli import TANLIAN, assert_fails_cleanly, environment, free_port, tanlian
from tests.api.test_client_monitor import RunningNode, running_dev_node

NODE_WAIT_S = 60  # the demo build and the first answer of /healthz
COMMIT_WAIT_S = 10  # a block comes about every second
HOUSEHOLDS_SCANNED_MAX = 40  # how many demo households `holders` asks about, at most
HEX_A = "a" * 64
FAR_FUTURE_MS = 4_102_444_800_000  # 2100-01-01


@dataclass(frozen=True, slots=True)
class Household:
    key_file: Path
    account_id: str


@dataclass(frozen=True, slots=True)
class Parties:
    """Demo households whose own key signs and that can receive: `sender` and `rotator`
    hold credits; `recipient` receives them."""

    sender: Household
    rotator: Household
    recipient: Household


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    with running_dev_node(tmp_path_factory.mktemp("client"), simulate=False) as running:
        yield running


def query(node: RunningNode, kind: str, item_id: str) -> dict[str, Any]:
    result = tanlian("query", kind, item_id, "--node", node.url)
    assert result.returncode == 0, (result.stdout, result.stderr)
    value: dict[str, Any] = json.loads(result.stdout)
    return value


def read(node: RunningNode, path: str) -> dict[str, Any]:
    """The node's answer to `GET path`, read directly: quicker than `tanlian query`."""
    response = httpx.get(f"{node.url}{path}", timeout=10)
    assert response.status_code == 200, response.text
    value: dict[str, Any] = response.json()
    return value


def account_of(node: RunningNode, account_id: str) -> dict[str, Any]:
    return read(node, f"/v1/accounts/{account_id}")


def circulating(account: dict[str, Any], batch_id: str) -> int:
    units = [entry["circulating"] for entry in account["holdings"] if entry["batch_id"] == batch_id]
    return int(units[0]) if units else 0


def richest_batch(account: dict[str, Any]) -> str:
    entry = max(account["holdings"], key=lambda item: item["circulating"])
    return str(entry["batch_id"])


@pytest.fixture(scope="module")
def parties(node: RunningNode) -> Parties:
    """The first demo households that sign with their own key, are active and (for the first
    two) hold credits, as `tanlian query account` shows them."""
    files = sorted((node.data / "keys" / "households").glob("household-[0-9][0-9][0-9][0-9].pem"))
    found: list[Household] = []
    for path in files[:HOUSEHOLDS_SCANNED_MAX]:
        key = PrivateKey.from_pem(path.read_bytes())
        result = tanlian("query", "account", key.account_id, "--node", node.url)
        if result.returncode != 0:
            assert_fails_cleanly(result, "not_found")
            continue
        account = json.loads(result.stdout)
        assert account["account_id"] == key.account_id
        own_key = account["keys"] in ([], [key.public_key_hex])
        holds = any(entry["circulating"] >= 20 for entry in account["holdings"])
        if own_key and account["status"] == "active" and (holds or len(found) == 2):
            found.append(Household(key_file=path, account_id=key.account_id))
            if len(found) == 3:
                return Parties(sender=found[0], rotator=found[1], recipient=found[2])
    raise AssertionError(f"not three usable households among {HOUSEHOLDS_SCANNED_MAX}")


def submit(
    node: RunningNode, *arguments: str | Path, passphrase: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`tanlian tx TYPE ...` against `node`."""
    return tanlian("tx", *arguments, "--node", node.url, passphrase=passphrase)


def bad_usage(*arguments: str | Path) -> str:
    """`tanlian ARGUMENTS`, run in this process (bad usage is refused before any node is
    asked): exit 2 and no traceback; the usage error's text, unboxed, on one line."""
    result = CliRunner().invoke(app, list(map(str, arguments)), env={PASSPHRASE_ENV: None})
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stderr
    return " ".join(result.stderr.replace("│", " ").split())


def committed(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The outcome `tanlian tx` printed for a committed transaction."""
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stderr == ""
    printed = dict(re.findall(r"^(tx_id|status|height|log index) +(\S+)$", result.stdout, re.M))
    assert printed.keys() == {"tx_id", "status", "height", "log index"}, result.stdout
    assert printed["status"] == "committed"
    assert re.fullmatch(r"[0-9a-f]{64}", printed["tx_id"])
    return printed


def committed_transaction(node: RunningNode, printed: dict[str, str]) -> dict[str, Any]:
    """`query tx` of a printed outcome: the same height and log index, and its envelope."""
    answer = read(node, f"/v1/transactions/{printed['tx_id']}")
    assert answer["tx_id"] == printed["tx_id"]
    assert answer["status"] == "committed"
    assert (answer["height"], answer["log_index"]) == (
        int(printed["height"]),
        int(printed["log index"]),
    )
    envelope: dict[str, Any] = answer["transaction"]
    return envelope


# --- tx: committed ------------------------------------------------------------------------------


def test_the_authority_creates_a_program_with_two_of_its_three_keys(node: RunningNode) -> None:
    keys = node.data / "keys"
    authority = [PrivateKey.from_pem((keys / f"authority-{i}.pem").read_bytes()) for i in (1, 2, 3)]
    authority_id = compute_account_id(sorted(k.public_key_hex for k in authority), 2)
    assert authority_id == node.genesis().authority_id
    before = account_of(node, authority_id)["nonce"]
    printed = committed(
        submit(
            node,
            "create_program",
            "--key",
            keys / "authority-1.pem",
            "--key",
            keys / "authority-2.pem",
            "--signer",
            authority_id,
            "--field",
            "program_id=cli-test-programme",
            "--field",
            "name=A programme made by the command line",
            "--field",
            f"valid_until={FAR_FUTURE_MS}",
        )
    )
    envelope = committed_transaction(node, printed)
    assert envelope["tx"]["type"] == "create_program"
    assert envelope["tx"]["signer"] == authority_id
    assert envelope["tx"]["nonce"] == before + 1
    assert envelope["tx"]["payload"] == {
        "program_id": "cli-test-programme",
        "name": "A programme made by the command line",
        "valid_until": FAR_FUTURE_MS,
    }
    signed_by = {signature["public_key"] for signature in envelope["signatures"]}
    assert signed_by == {authority[0].public_key_hex, authority[1].public_key_hex}
    assert account_of(node, authority_id)["nonce"] == before + 1


def test_a_household_transfers_credits(node: RunningNode, parties: Parties) -> None:
    sender, recipient = parties.sender, parties.recipient
    account = account_of(node, sender.account_id)
    batch_id = richest_batch(account)
    received = circulating(account_of(node, recipient.account_id), batch_id)
    printed = committed(
        submit(
            node,
            "transfer",
            "--key",
            sender.key_file,
            "--field",
            f"to={recipient.account_id}",
            "--field",
            f"batch_id={batch_id}",
            "--field",
            "quantity=2",
            "--field",
            "memo=moved by tanlian tx",
        )
    )
    envelope = committed_transaction(node, printed)
    assert envelope["tx"]["payload"]["quantity"] == 2
    assert envelope["tx"]["nonce"] == account["nonce"] + 1
    after = account_of(node, sender.account_id)
    assert circulating(after, batch_id) == circulating(account, batch_id) - 2
    assert after["nonce"] == account["nonce"] + 1
    assert circulating(account_of(node, recipient.account_id), batch_id) == received + 2


def test_out_signs_without_submitting_and_the_file_posts_as_is(
    node: RunningNode, parties: Parties, tmp_path: Path
) -> None:
    sender, recipient = parties.sender, parties.recipient
    account = account_of(node, sender.account_id)
    out = tmp_path / "transfer.json"
    result = submit(
        node,
        "transfer",
        "--key",
        sender.key_file,
        "--field",
        f"to={recipient.account_id}",
        "--field",
        f"batch_id={richest_batch(account)}",
        "--field",
        "quantity=1",
        "--out",
        out,
    )
    assert result.returncode == 0 and result.stdout == "", (result.stdout, result.stderr)
    envelope = parse_envelope(json.loads(out.read_bytes()), transaction_bytes_max=16384)
    assert f"signed {envelope.tx_id}, not submitted" in result.stderr
    assert envelope.tx.nonce == account["nonce"] + 1
    unknown = httpx.get(f"{node.url}/v1/transactions/{envelope.tx_id}", timeout=10)
    assert unknown.status_code == 404  # nothing was submitted
    assert account_of(node, sender.account_id)["nonce"] == account["nonce"]
    posted = httpx.post(
        f"{node.url}/v1/transactions?wait=commit",
        content=out.read_bytes(),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert posted.status_code == 200, posted.text
    assert posted.json()["tx_id"] == envelope.tx_id and posted.json()["status"] == "committed"


def test_out_never_replaces_a_private_key_or_a_ledger_file(
    node: RunningNode, parties: Parties, tmp_path: Path
) -> None:
    """Found by review: `tx --out` replaced the very key it signed with, or a ledger's
    database, with the envelope."""
    sender = parties.sender
    key_copy = tmp_path / "sender.pem"
    key_copy.write_bytes(Path(sender.key_file).read_bytes())
    store = node.data / "ledger.sqlite"
    for target in (key_copy, store):
        before = target.read_bytes()
        result = submit(
            node,
            "transfer",
            "--key", key_copy,
            "--field", f"to={parties.recipient.account_id}",
            "--field", "batch_id=B-1",
            "--field", "quantity=1",
            "--out", target,
        )  # fmt: skip
        assert result.returncode == 1 and "choose another --out" in result.stderr
        assert "Traceback" not in result.stderr and target.read_bytes() == before


def test_a_household_retires_credits_read_back_as_a_retirement(
    node: RunningNode, parties: Parties
) -> None:
    sender = parties.sender
    batch_id = richest_batch(account_of(node, sender.account_id))
    printed = committed(
        submit(
            node,
            "retire",
            "--key",
            sender.key_file,
            "--field",
            f"batch_id={batch_id}",
            "--field",
            "quantity=3",
            "--field",
            "beneficiary=Household of the command-line test",
            "--field",
            "purpose=incentive",
            "--field",
            "program_id=zibo-green-home",
            "--field",
            "jurisdiction=CN-SD",
        )
    )
    retirement = query(node, "retirement", printed["tx_id"])
    assert retirement["retirement_id"] == printed["tx_id"]
    assert (retirement["holder"], retirement["batch_id"]) == (sender.account_id, batch_id)
    assert (retirement["quantity"], retirement["purpose"]) == (3, "incentive")
    assert retirement["program_id"] == "zibo-green-home"
    assert retirement["height"] == int(printed["height"])


def test_a_payload_from_stdin_submitted_without_waiting_commits_later(
    node: RunningNode, parties: Parties
) -> None:
    sender = parties.sender
    batch_id = richest_batch(account_of(node, sender.account_id))
    payload = {"batch_id": batch_id, "beneficiary": "张店区 household", "purpose": "voluntary"}
    arguments = ["retire", "--key", sender.key_file, "--payload", "-", "--field", "quantity=1"]
    result = subprocess.run(
        [str(TANLIAN), "tx", *map(str, arguments), "--no-wait", "--node", node.url],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        env=environment(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    printed = dict(re.findall(r"^(tx_id|status) +(\S+)$", result.stdout, re.M))
    assert printed["status"] == "pending", result.stdout
    assert f"tanlian query tx {printed['tx_id']}" in result.stdout
    deadline = time.monotonic() + COMMIT_WAIT_S
    while (answer := read(node, f"/v1/transactions/{printed['tx_id']}"))["status"] == "pending":
        assert time.monotonic() < deadline, f"not committed within {COMMIT_WAIT_S} s"
        time.sleep(0.1)
    assert answer["status"] == "committed"
    assert answer["transaction"]["tx"]["payload"] == {**payload, "quantity": 1}


def test_a_household_rotates_its_key_and_signs_with_the_new_one(
    node: RunningNode, parties: Parties, tmp_path: Path
) -> None:
    rotator = parties.rotator
    new_key = PrivateKey.generate()
    new_file = tmp_path / "rotated.pem"
    new_file.write_bytes(new_key.to_pem(b"correct horse"))  # encrypted: $TANLIAN_PASSPHRASE
    printed = committed(
        submit(
            node,
            "set_keys",
            "--key",
            rotator.key_file,
            "--field",
            f"keys={new_key.public_key_hex}",
            "--field",
            "threshold=1",
        )
    )
    assert committed_transaction(node, printed)["tx"]["payload"] == {
        "keys": [new_key.public_key_hex],
        "threshold": 1,
    }
    account = account_of(node, rotator.account_id)
    assert (account["account_id"], account["keys"]) == (
        rotator.account_id,
        [new_key.public_key_hex],
    )
    retire = (
        "retire",
        "--key",
        new_file,
        "--signer",
        rotator.account_id,
        "--field",
        f"batch_id={richest_batch(account)}",
        "--field",
        "quantity=1",
        "--field",
        "beneficiary=Rotated household",
        "--field",
        "purpose=voluntary",
    )
    assert_fails_cleanly(submit(node, *retire), "(bad_key)")  # no passphrase given
    signed = submit(node, *retire, passphrase="correct horse")
    envelope = committed_transaction(node, committed(signed))
    assert envelope["tx"]["signer"] == rotator.account_id
    assert [s["public_key"] for s in envelope["signatures"]] == [new_key.public_key_hex]


def test_a_new_accounts_first_transaction_has_nonce_one(node: RunningNode, tmp_path: Path) -> None:
    key = PrivateKey.generate()
    key_file = tmp_path / "new.pem"
    key_file.write_bytes(key.to_pem())
    unknown = tanlian("query", "account", key.account_id, "--node", node.url)
    assert_fails_cleanly(unknown, "not_found")
    second = PrivateKey.generate().public_key_hex
    keys = ",".join(sorted([key.public_key_hex, second]))
    printed = committed(
        submit(
            node, "set_keys", "--key", key_file, "--field", f"keys={keys}", "--field", "threshold=1"
        )
    )
    envelope = committed_transaction(node, printed)
    assert (envelope["tx"]["signer"], envelope["tx"]["nonce"]) == (key.account_id, 1)
    assert account_of(node, key.account_id)["keys"] == sorted([key.public_key_hex, second])


# --- tx: refused --------------------------------------------------------------------------------


def test_a_transfer_of_more_than_held_is_rejected_and_changes_nothing(
    node: RunningNode, parties: Parties
) -> None:
    sender, recipient = parties.sender, parties.recipient
    account = account_of(node, sender.account_id)
    batch_id = richest_batch(account)
    result = submit(
        node,
        "transfer",
        "--key",
        sender.key_file,
        "--field",
        f"to={recipient.account_id}",
        "--field",
        f"batch_id={batch_id}",
        "--field",
        f"quantity={circulating(account, batch_id) + 1}",
    )
    assert_fails_cleanly(result, "rejected (insufficient_credits)")
    assert result.stdout == ""
    assert account_of(node, sender.account_id) == account


def test_a_used_nonce_is_rejected(node: RunningNode, parties: Parties) -> None:
    """The replayed nonce is one this test has just used, and the memo makes its bytes differ
    from every other transaction's: however the tests are ordered or shared among workers, the
    node cannot answer it as an idempotent resubmission of an earlier transfer."""
    sender = parties.sender

    def transfer(memo: str, *nonce: str) -> subprocess.CompletedProcess[str]:
        account = account_of(node, sender.account_id)
        return submit(
            node,
            "transfer",
            "--key",
            sender.key_file,
            *nonce,
            "--field",
            f"to={parties.recipient.account_id}",
            "--field",
            f"batch_id={richest_batch(account)}",
            "--field",
            "quantity=1",
            "--field",
            f"memo={memo}",
        )

    used = committed_transaction(node, committed(transfer("nonce to be replayed")))["tx"]["nonce"]
    account = account_of(node, sender.account_id)
    assert account["nonce"] >= used
    result = transfer("the same nonce again", "--nonce", str(used))
    assert_fails_cleanly(result, "rejected (bad_nonce)")
    assert account_of(node, sender.account_id) == account


def test_a_field_that_breaks_a_rule_fails_before_any_node_is_asked(tmp_path: Path) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(PrivateKey.generate().to_pem())
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens: asking it would fail
    bad_slug = tanlian(
        "tx",
        "create_program",
        "--key",
        key_file,
        "--node",
        nowhere,
        "--field",
        "program_id=Not_A_Slug",
        "--field",
        "name=x",
        "--field",
        "valid_until=1",
    )
    assert_fails_cleanly(bad_slug, "(invalid_field)")
    assert "program_id" in bad_slug.stderr
    missing = tanlian("tx", "transfer", "--key", key_file, "--node", nowhere, "--field", "to=ab")
    assert_fails_cleanly(missing, "(invalid_field)")
    unreachable = tanlian(
        "tx",
        "set_keys",
        "--key",
        key_file,
        "--node",
        nowhere,
        "--field",
        f"keys={PrivateKey.generate().public_key_hex}",
        "--field",
        "threshold=1",
    )
    assert_fails_cleanly(unreachable, "(node_unreachable)")


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["frobnicate"], "frobnicate"),
        (["transfer", "--field", "quantity=lots"], "quantity takes an integer"),
        (["transfer", "--field", "no-equals-sign"], "NAME=VALUE"),
        (["issue", "--field", "recipients=[{"], "recipients takes JSON"),
        (["transfer", "--field", "quantity=1", "--field", "quantity=2"], "given twice"),
        (["transfer", "--key", "{other}"], "--signer"),
        (["transfer", "--signer", HEX_A, "--key", "{key}"], "the same key is given twice"),
    ],
)
def test_bad_usage_exits_2(arguments: list[str], fragment: str, tmp_path: Path) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(PrivateKey.generate().to_pem())
    other = tmp_path / "other.pem"
    other.write_bytes(PrivateKey.generate().to_pem())
    files = {"{key}": str(key_file), "{other}": str(other)}
    given = [files.get(argument, argument) for argument in arguments]
    assert fragment in bad_usage("tx", *given, "--key", key_file, "--node", "http://127.0.0.1:9")


# --- query --------------------------------------------------------------------------------------


def test_query_reads_each_kind(node: RunningNode, parties: Parties) -> None:
    retirements = httpx.get(f"{node.url}/v1/retirements", params={"limit": 1}, timeout=10).json()
    retirement_id = retirements["items"][0]["retirement_id"]
    account = query(node, "account", parties.sender.account_id.upper())
    assert account["account_id"] == parties.sender.account_id
    assert query(node, "batch", "B-1")["batch_id"] == "B-1"
    assert query(node, "retirement", retirement_id)["retirement_id"] == retirement_id
    block = query(node, "block", "2")
    assert block["block"]["header"]["height"] == 2
    assert set(block) == {"block", "certificate"}
    answer = query(node, "tx", retirement_id)
    assert (answer["tx_id"], answer["status"]) == (retirement_id, "committed")
    assert answer["transaction"]["tx"]["type"] == "retire"


@pytest.mark.parametrize(
    ("kind", "item_id"),
    [
        ("account", HEX_A),
        ("batch", "B-999999"),
        ("retirement", HEX_A),
        ("block", "999999"),
        ("tx", HEX_A),
    ],
)
def test_query_of_an_unknown_id_is_not_found(node: RunningNode, kind: str, item_id: str) -> None:
    result = tanlian("query", kind, item_id, "--node", node.url)
    assert_fails_cleanly(result, "(not_found)")
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["planet", HEX_A], "planet"),
        (["account", "../export"], "64 hex digits"),
        (["batch", "1"], "B-1"),
        (["block", "0"], "block height"),
    ],
)
def test_query_bad_usage_exits_2(arguments: list[str], fragment: str) -> None:
    assert fragment in bad_usage("query", *arguments, "--node", "http://127.0.0.1:9")


# --- export -------------------------------------------------------------------------------------


def test_export_from_a_node_is_a_chain_that_verifies(node: RunningNode, tmp_path: Path) -> None:
    out_file = tmp_path / "chain.ndjson"
    result = tanlian("export", "--node", node.url, "--out", out_file)
    assert result.returncode == 0, result.stderr
    lines = out_file.read_bytes().splitlines()
    assert json.loads(lines[0]) == node.genesis().document
    assert f"wrote {len(lines) - 1} blocks" in result.stdout
    assert [json.loads(line)["block"]["header"]["height"] for line in lines[1:]] == list(
        range(1, len(lines))
    )
    verified = tanlian("verify", "chain", "--export", out_file, "--genesis", node.genesis_file)
    assert verified.returncode == 0, verified.stderr
    assert f"chain verified: height {len(lines) - 1}," in verified.stdout
    assert list(tmp_path.iterdir()) == [out_file]  # no temporary file left behind


def test_export_from_an_unreachable_node_writes_nothing(tmp_path: Path) -> None:
    out_file = tmp_path / "chain.ndjson"
    result = tanlian("export", "--node", f"http://127.0.0.1:{free_port()}", "--out", out_file)
    assert_fails_cleanly(result, "(node_unreachable)")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sources", [[], ["--data", "somewhere", "--node", "http://127.0.0.1:9"]])
def test_export_needs_exactly_one_source(sources: list[str], tmp_path: Path) -> None:
    usage = bad_usage("export", *sources, "--out", tmp_path / "chain.ndjson")
    assert "--data DIR or --node URL" in usage
    assert not (tmp_path / "chain.ndjson").exists()


# --- --field, in this process: every type -------------------------------------------------------

KEY_1 = PrivateKey(seed=b"\x01" * 32).public_key_hex
KEY_2 = PrivateKey(seed=b"\x02" * 32).public_key_hex
FIELDS: dict[str, list[str]] = {
    "register_methodology": [
        "methodology_id=heat-pumps",
        "name=Heat pumps",
        f"document_sha256={HEX_A}",
    ],
    "accredit_certifier": [
        f"certifier={HEX_A}",
        "name=Zibo Quality Centre",
        "methodologies=heat-pumps, rooftop-solar",
        "valid_from=0",
        f"valid_until={FAR_FUTURE_MS}",
    ],
    "revoke_certifier": [f"certifier={HEX_A}", "reason=audit failed"],
    "create_program": ["program_id=green-home", "name=Green home", "valid_until=1"],
    "suspend_account": [f"account={HEX_A}", "reason=fraud"],
    "reinstate_account": [f"account={HEX_A}", "reason=cleared"],
    "set_validators": [f'validators=[{{"public_key": "{KEY_1}", "power": 1, "name": "city"}}]'],
    "issue": [
        "methodology_id=heat-pumps",
        "project_id=meter 0042",
        "period_start=2026-01-01",
        "period_end=2026-02-01",
        f"evidence_sha256={HEX_A}",
        f'recipients=[{{"account": "{HEX_A}", "quantity": 12}}]',
        "memo=January",
    ],
    "transfer": [f"to={HEX_A}", "batch_id=B-7", "quantity=5", "memo=12"],
    "retire": [
        "batch_id=B-7",
        "quantity=5",
        "beneficiary=Li Wei = household",
        "purpose=voluntary",
        "jurisdiction=CN-SD",
    ],
    "invalidate": ["batch_id=B-7", f"holder={HEX_A}", "quantity=5", "reason=miscalibrated"],
    "set_keys": [f'keys=["{KEY_1}", "{KEY_2}"]', "threshold=2"],
}


def test_fields_make_a_valid_payload_of_every_type() -> None:
    assert FIELDS.keys() == PAYLOADS.keys()
    for kind, fields in FIELDS.items():
        tx = {"chain_id": "zibo-demo", "type": kind, "signer": HEX_A, "nonce": 1}
        parse_transaction({**tx, "payload": read_payload(fields, None)})


def test_fields_are_read_as_their_types() -> None:
    issue = read_payload(FIELDS["issue"], None)
    assert issue["recipients"] == [{"account": HEX_A, "quantity": 12}]
    assert read_payload(FIELDS["accredit_certifier"], None)["methodologies"] == [
        "heat-pumps",
        "rooftop-solar",
    ]
    transfer = read_payload(FIELDS["transfer"], None)
    assert (transfer["quantity"], transfer["memo"]) == (5, "12")  # a memo stays text
    assert read_field("beneficiary=Li Wei = household") == ("beneficiary", "Li Wei = household")
    assert read_field("keys=") == ("keys", [])
    assert read_field("valid_until=-1") == ("valid_until", -1)  # the schema refuses it later
    for bad in ("quantity=1.5", "quantity=", "quantity=0x10", "threshold=1e3", "=x", "Name=x"):
        with pytest.raises(typer.BadParameter):
            read_field(bad)
    with pytest.raises(typer.BadParameter, match="JSON"):
        read_field("validators=[1.5]")  # SPEC §2.1: no floats


def test_a_payload_file_must_hold_an_object(tmp_path: Path) -> None:
    payload_file = tmp_path / "payload.json"
    payload_file.write_text("[1, 2]")
    with pytest.raises(LedgerError, match="one JSON object"):
        read_payload([], str(payload_file))
    payload_file.write_text('{"quantity": 1}')
    with pytest.raises(typer.BadParameter, match="given twice"):
        read_payload(["quantity=2"], str(payload_file))


# --- the node's answers, in this process --------------------------------------------------------


def reader(answer: httpx.Response) -> Reader:
    return Reader("http://node.test", transport=httpx.MockTransport(lambda request: answer))


def test_the_next_nonce_follows_the_committed_one_or_is_one() -> None:
    assert next_nonce(reader(httpx.Response(200, json={"nonce": 4})), HEX_A) == 5
    missing = {"code": "not_found", "detail": "no account"}
    assert next_nonce(reader(httpx.Response(404, json=missing)), HEX_A) == 1
    for odd in ({"nonce": "4"}, {"nonce": True}, {"nonce": 2**53 - 1}, {}):
        with pytest.raises(ClientError, match="no valid nonce"):
            next_nonce(reader(httpx.Response(200, json=odd)), HEX_A)
    broken = {"code": "internal_error", "detail": "disk full"}
    with pytest.raises(ClientError) as raised:
        next_nonce(reader(httpx.Response(500, json=broken)), HEX_A)
    assert raised.value.code == "internal_error"


def test_an_outcome_for_another_transaction_or_without_its_position_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    tx_id = "b" * 64
    print_outcome({"tx_id": tx_id, "status": "committed", "height": 3, "log_index": 7}, tx_id)
    assert capsys.readouterr().out.split() == [
        "tx_id",
        tx_id,
        "status",
        "committed",
        "height",
        "3",
        "log",
        "index",
        "7",
    ]
    for odd in (
        {"tx_id": HEX_A, "status": "committed", "height": 3, "log_index": 7},
        {"tx_id": tx_id, "status": "rejected"},
        {"tx_id": tx_id, "status": "committed", "height": "3", "log_index": 7},
        {"tx_id": tx_id, "status": "committed"},
    ):
        with pytest.raises(ClientError):
            print_outcome(odd, tx_id)
    assert capsys.readouterr().out == ""


def test_a_pending_outcome_names_the_node_to_ask_again(capsys: pytest.CaptureFixture[str]) -> None:
    """Found by review: the hint asked the default node, not the one given with --node."""
    tx_id = "b" * 64
    print_outcome({"tx_id": tx_id, "status": "pending"}, tx_id, "http://127.0.0.1:8731")
    assert f"tanlian query tx {tx_id} --node http://127.0.0.1:8731\n" in capsys.readouterr().out
    print_outcome({"tx_id": tx_id, "status": "pending"}, tx_id)
    assert capsys.readouterr().out.endswith(f"tanlian query tx {tx_id}\n")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(JSON_VALUES)
def test_query_output_is_the_same_json_with_nothing_a_terminal_acts_on(value: Any) -> None:
    """Found by review: `tanlian query` printed a beneficiary's right-to-left override as it
    was, reversing the rest of the line on the reader's terminal."""
    text = terminal_json(value)
    assert json.loads(text) == value
    assert all(line.isprintable() for line in text.split("\n"))


def test_query_output_escapes_a_bidi_override_and_keeps_other_scripts() -> None:
    text = terminal_json({"beneficiary": "Bob \u202eevil, 淄博"})
    assert '"Bob \\u202eevil, 淄博"' in text
