"""`tanlian receipt` and `tanlian verify receipt`, through the real console script."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from ledger.genesis import parse_genesis
from ledger.store import DATABASE_FILE
from tests.api.test_cli import assert_fails_cleanly, tanlian
from tests.factory import Chain, key


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("receipt-demo")
    result = tanlian("demo", "--data", data, "--transactions", 300, "--seed", 3)
    assert result.returncode == 0, result.stderr
    return data


def write_receipt(data: Path, retirement_id: str, out: Path) -> None:
    result = tanlian("receipt", retirement_id, "--data", data, "--out", out)
    assert result.returncode == 0, result.stderr


def retirement_ids(data: Path) -> list[str]:
    connection = sqlite3.connect(data / DATABASE_FILE)
    try:
        rows = connection.execute("SELECT retirement_id FROM retirements ORDER BY height")
        return [row[0] for row in rows]
    finally:
        connection.close()


def test_a_written_receipt_verifies_against_the_genesis(demo: Path, tmp_path: Path) -> None:
    retirement_id = retirement_ids(demo)[0]
    receipt = tmp_path / "receipt.json"
    written = tanlian("receipt", retirement_id, "--data", demo, "--out", receipt)
    assert written.returncode == 0, written.stderr
    document = json.loads(receipt.read_text())
    assert document["retirement"]["retirement_id"] == retirement_id
    checked = tanlian("verify", "receipt", receipt, "--genesis", demo / "genesis.json")
    assert checked.returncode == 0, checked.stderr
    assert "receipt verified" in checked.stdout
    assert retirement_id in checked.stdout
    # The beneficiary is quoted as JSON, whatever it holds (repr had chosen ' or " by it).
    beneficiary = json.dumps(document["retirement"]["beneficiary"], ensure_ascii=False)
    assert f" for {beneficiary} (" in checked.stdout


def test_a_receipt_verifies_against_a_trusted_validators_hash(demo: Path, tmp_path: Path) -> None:
    receipt = tmp_path / "receipt.json"
    assert (
        tanlian("receipt", retirement_ids(demo)[1], "--data", demo, "--out", receipt).returncode
        == 0
    )
    header = json.loads(receipt.read_text())["checkpoint"]["header"]
    trusted = header["validators_hash"]
    checked = tanlian("verify", "receipt", receipt, "--validators-hash", trusted)
    assert checked.returncode == 0, checked.stderr
    # A hash names a set, not a chain (a test chain of the same validators has it too): the
    # line says which chain the certificate signed (found by review).
    assert checked.stdout.rstrip().endswith(f" of chain {header['chain_id']}")
    other = "0" * 64
    result = tanlian("verify", "receipt", receipt, "--validators-hash", other)
    assert_fails_cleanly(result, "not the trusted set")


def test_a_tampered_receipt_fails_with_one_line(demo: Path, tmp_path: Path) -> None:
    receipt = tmp_path / "receipt.json"
    assert (
        tanlian("receipt", retirement_ids(demo)[0], "--data", demo, "--out", receipt).returncode
        == 0
    )
    document = json.loads(receipt.read_text())
    document["retirement"]["quantity"] += 1
    receipt.write_text(json.dumps(document))
    result = tanlian("verify", "receipt", receipt, "--genesis", demo / "genesis.json")
    assert_fails_cleanly(result, "receipt not verified")


def test_a_receipt_of_another_chain_with_the_same_validators_fails(
    demo: Path, tmp_path: Path
) -> None:
    """A test chain run by the same validators certifies its own retirements with the same
    keys: only the chain id, which the precommits sign, tells its receipts from the real
    chain's. The receipt's genesis_hash is a claim anyone can rewrite."""
    receipt = tmp_path / "receipt.json"
    write_receipt(demo, retirement_ids(demo)[0], receipt)
    genesis = json.loads((demo / "genesis.json").read_text())
    other = {**genesis, "chain_id": "zibo-prod"}
    (tmp_path / "other.json").write_text(json.dumps(other))
    document = json.loads(receipt.read_text())
    document["genesis_hash"] = parse_genesis(other).genesis_hash()  # claims the other chain
    receipt.write_text(json.dumps(document))
    result = tanlian("verify", "receipt", receipt, "--genesis", tmp_path / "other.json")
    assert_fails_cleanly(result, f"is for chain {genesis['chain_id']!r}, not 'zibo-prod'")


def test_a_receipt_that_is_not_json_fails_with_one_line(demo: Path, tmp_path: Path) -> None:
    receipt = tmp_path / "receipt.json"
    receipt.write_bytes(b'{"retirement": [[[[[[[[[[1]]]]]]]]]]}\xff')
    result = tanlian("verify", "receipt", receipt, "--genesis", demo / "genesis.json")
    assert_fails_cleanly(result, "receipt not verified")


def test_a_nodes_error_answer_saved_as_a_receipt_is_named_so(demo: Path, tmp_path: Path) -> None:
    """Found by review: a 404's body, saved by curl as the receipt, was "receipt: receipt:
    unknown field 'code'". A field's path is said once."""
    answer = tmp_path / "receipt.json"
    problem = {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "no retirement 00",
        "code": "not_found",
    }
    answer.write_text(json.dumps(problem))
    result = tanlian("verify", "receipt", answer, "--genesis", demo / "genesis.json")
    assert_fails_cleanly(
        result,
        f"receipt not verified: {answer} holds a node's error answer (not_found, HTTP 404:"
        " no retirement 00), not a receipt",
    )
    other = tmp_path / "other.json"
    other.write_text('{"foo": 1}')
    result = tanlian("verify", "receipt", other, "--genesis", demo / "genesis.json")
    assert_fails_cleanly(result, "receipt not verified: receipt: unknown field 'foo'")


def test_verify_receipt_needs_exactly_one_trust_anchor(demo: Path, tmp_path: Path) -> None:
    receipt = tmp_path / "receipt.json"
    receipt.write_text("{}")
    assert tanlian("verify", "receipt", receipt).returncode == 2
    both = tanlian(
        "verify",
        "receipt",
        receipt,
        "--genesis",
        demo / "genesis.json",
        "--validators-hash",
        "0" * 64,
    )
    assert both.returncode == 2


def test_receipt_of_an_unknown_retirement_is_not_found(demo: Path, tmp_path: Path) -> None:
    result = tanlian("receipt", "ab" * 32, "--data", demo, "--out", tmp_path / "r.json")
    assert_fails_cleanly(result, "(not_found)")
    assert not (tmp_path / "r.json").exists()


def test_a_malformed_retirement_id_is_bad_usage_as_in_query(demo: Path, tmp_path: Path) -> None:
    """Found by review: `query retirement` exited 2 for a malformed id, `receipt` 1."""
    result = tanlian("receipt", "B-1", "--data", demo, "--out", tmp_path / "r.json")
    assert_fails_cleanly(result, "a retirement id: 64 hex digits", code=2)
    assert not (tmp_path / "r.json").exists()
    queried = tanlian("query", "retirement", "B-1", "--node", "http://127.0.0.1:9")
    assert queried.returncode == 2, (queried.stdout, queried.stderr)


def test_error_messages_quoting_markup_are_printed_as_they_are(tmp_path: Path) -> None:
    """Rich markup in outside input must neither crash the command nor vanish from its line."""
    key = tmp_path / "city.pem"
    assert tanlian("keys", "new", "--out", key).returncode == 0
    for chain_id in ("[/x]", "a[b]"):
        result = tanlian(
            "genesis",
            "new",
            "--chain-id",
            chain_id,
            "--authority",
            key,
            "--validator",
            key,
            "--out",
            tmp_path / "genesis.json",
        )
        assert_fails_cleanly(result, chain_id)


def test_a_beneficiarys_bidirectional_controls_are_printed_escaped(tmp_path: Path) -> None:
    """Found by review: the success line printed a beneficiary's right-to-left override as
    it was, which reorders the rest of the line on a terminal that honours it, the chain's
    name included."""
    chain = Chain()
    chain.funded()
    beneficiary = "Alice \u202e(fake text)\u202c"
    retire = chain.tx(
        chain.alice,
        "retire",
        {"batch_id": "B-1", "quantity": 5, "beneficiary": beneficiary, "purpose": "voluntary"},
    )
    chain.commit(retire)
    data = tmp_path / "data"
    chain.write_store(data)
    genesis = tmp_path / "genesis.json"
    genesis.write_text(json.dumps(chain.genesis_document))
    receipt = tmp_path / "receipt.json"
    write_receipt(data, retire.tx_id, receipt)
    checked = tanlian("verify", "receipt", receipt, "--genesis", genesis)
    assert checked.returncode == 0, checked.stderr
    assert "\u202e" not in checked.stdout and "\u202c" not in checked.stdout
    assert 'for "Alice \\u202e(fake text)\\u202c" (voluntary)' in checked.stdout


def test_a_receipt_under_a_later_validator_set_says_how_to_trust_it(tmp_path: Path) -> None:
    """Found by review: after a set_validators, `--genesis` refused a sound receipt with
    "the validators are not the trusted set" and no word of `--validators-hash`."""
    chain = Chain().funded()
    successors = [key(f"successor-{i}") for i in range(4)]
    assert not chain.commit(chain.set_validators(successors)).rejected
    chain.commit()  # the new set governs from two heights on
    retire = chain.tx(
        chain.alice,
        "retire",
        {"batch_id": "B-1", "quantity": 5, "beneficiary": "Alice", "purpose": "voluntary"},
    )
    assert not chain.commit(retire).rejected
    data = tmp_path / "data"
    chain.write_store(data)
    genesis = tmp_path / "genesis.json"
    genesis.write_text(json.dumps(chain.genesis_document))
    receipt = tmp_path / "receipt.json"
    write_receipt(data, retirement_ids(data)[0], receipt)
    result = tanlian("verify", "receipt", receipt, "--genesis", genesis)
    assert_fails_cleanly(result, "the validators are not the trusted set: --genesis trusts")
    assert "needs --validators-hash of a later set you trust" in result.stderr
    trusted = json.loads(receipt.read_text())["checkpoint"]["header"]["validators_hash"]
    assert tanlian("verify", "receipt", receipt, "--validators-hash", trusted).returncode == 0
