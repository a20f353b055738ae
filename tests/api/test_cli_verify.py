"""`tanlian verify chain` through the real console script, on a demo chain and its export.

Exit 0 with the head on stdout for a sound export; 1 with exactly one line on stderr (the
height, the transaction and the rule, never a traceback) for a tampered one or a missing
file; 2 on bad usage.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from pathlib import Path

import pytest

from ledger.blocks import compute_evidence_hash, compute_validators_hash
from ledger.encoding import canonical
from ledger.evidence import make_evidence, sign_vote
from ledger.state_transition import VALIDITY_ONLY
from ledger.store import Store
from tests.api.test_cli import assert_fails_cleanly, free_port, tanlian
from tests.factory import key
from tests.ledger.test_verification_audit import ConsortiumChain, export_of


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 300-transaction demo chain: (its data directory, its export)."""
    directory = tmp_path_factory.mktemp("verify")
    data = directory / "city"
    built = tanlian("demo", "--data", data, "--transactions", 300)
    assert built.returncode == 0, built.stderr
    export_file = directory / "chain.ndjson"
    written = tanlian("export", "--data", data, "--out", export_file)
    assert written.returncode == 0, written.stderr
    return data, export_file


def stored_head(data: Path) -> tuple[int, str, str]:
    store = Store.open(data)
    try:
        state = store.load_state()
    finally:
        store.close()
    return state.height, state.log.root().hex(), state.state_root


def verified_lines(chain: ConsortiumChain, directory: Path) -> list[str]:
    """`tanlian verify chain` of the chain's export, which passes: its stdout's lines."""
    export_file, genesis_file = directory / "chain.ndjson", directory / "genesis.json"
    export_file.write_bytes(b"".join(export_of(chain)))
    genesis_file.write_bytes(canonical(chain.genesis_document))
    result = tanlian("verify", "chain", "--export", export_file, "--genesis", genesis_file)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()


def test_an_issuance_of_a_period_not_yet_ended_is_a_notice_not_a_failure(
    tmp_path: Path,
) -> None:
    chain = ConsortiumChain()
    chain.funded()  # B-1 credits January 2026, in a block of 2026-01-01
    block = chain.blocks[0].block
    (issue,) = [e for e in block.transactions if e.tx.type == "issue"]
    lines = verified_lines(chain, tmp_path)
    assert lines[0].startswith("chain verified: height 1, 3 transactions,"), lines
    validators = compute_validators_hash(chain.genesis.validators)
    assert f", validators hash {validators}, " in lines[0]  # a receipt's trust, from the audit
    assert lines[1].startswith("notice: 1 issuance credited a period that had not ended at its"), (
        lines
    )
    moment = datetime.datetime.fromtimestamp(block.header.time / 1000, datetime.UTC)
    assert moment.date() == datetime.date(2026, 1, 1)
    assert lines[2:] == [
        f"  B-1 at height 1 ({moment:%Y-%m-%dT%H:%M:%SZ}): household-electricity/meter-0001,"
        f" 2026-01-01 to 2026-02-01, transaction {issue.tx_id}"
    ]


def test_a_transaction_this_proposer_leaves_out_is_a_notice_naming_its_proposer(
    tmp_path: Path,
) -> None:
    """A block another implementation's proposer built, with an issuance whose project id
    ends in a zero-width space (valid by the SPEC; this proposer leaves it out): the audit
    passes and asks about it, naming the transaction, its height and who proposed it."""
    chain = ConsortiumChain()
    chain.funded()
    chain.rules = VALIDITY_ONLY  # as another implementation's proposer may
    hidden = [
        chain.issue([(chain.carol, 10)], project_id=f"meter-{n:04d}\u200b") for n in range(11)
    ]
    built = chain.commit(*hidden)
    assert built.block.transactions == tuple(hidden)
    lines = verified_lines(chain, tmp_path)
    assert lines[0].startswith("chain verified: height 2, 14 transactions,"), lines
    notice = lines.index(
        "notice: 11 transactions this implementation's proposer leaves out (valid by the SPEC;"
        " docs/decisions/0004): ask the validator that proposed the block."
    )
    assert lines[notice + 1 :] == [
        *(
            f"  transaction {issue.tx_id} at height 2, proposed by"
            f" {built.block.header.proposer}: project_id holds U+200B (ZERO WIDTH SPACE) at 10:"
            " an id another could not tell from one without it"
            for issue in hidden[:10]
        ),
        "  and 1 more",
    ]


def test_a_sound_export_verifies_and_prints_the_head(exported: tuple[Path, Path]) -> None:
    data, export_file = exported
    result = tanlian("verify", "chain", "--export", export_file, "--genesis", data / "genesis.json")
    assert result.returncode == 0, result.stderr
    height, log_root, state_root = stored_head(data)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    summary = lines[0]
    assert f"height {height}," in summary
    assert f"log root {log_root}" in summary
    assert f"state root {state_root}" in summary
    transactions = int(re.search(r"(\d+) transactions", summary).group(1))  # type: ignore[union-attr]
    assert transactions >= 300
    assert re.search(r"[\d.]+ s, [\d,]+ tx/s$", summary), summary
    assert "Traceback" not in result.stderr


def _tamper_a_quantity(export_file: Path, out: Path) -> int:
    """Change one digit of the first transaction quantity after block 1; return its height."""
    lines = export_file.read_bytes().splitlines(keepends=True)
    for height in range(2, len(lines)):
        match = re.search(rb'"quantity":(\d+)', lines[height])
        if match is None:
            continue
        digits = match.group(1)
        last = digits[-1] - ord("0")
        new = (last - 1) if last == 9 else (last + 1)
        changed = digits[:-1] + bytes([ord("0") + new])
        start, end = match.span(1)
        lines[height] = lines[height][:start] + changed + lines[height][end:]
        out.write_bytes(b"".join(lines))
        return height
    raise AssertionError("no quantity in the demo's export")


def test_a_changed_quantity_fails_at_its_height(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    data, export_file = exported
    tampered = tmp_path / "tampered.ndjson"
    height = _tamper_a_quantity(export_file, tampered)
    assert tampered.read_bytes() != export_file.read_bytes()
    result = tanlian("verify", "chain", "--export", tampered, "--genesis", data / "genesis.json")
    assert_fails_cleanly(result, f"verification failed at height {height}, transaction ")
    line = result.stderr.strip()
    assert "rule bad_signature" in line, line
    assert re.search(r"transaction [0-9a-f]{64}: rule bad_signature: ", line), line
    assert result.stdout == ""


def chain_id_of(data: Path) -> str:
    chain_id: str = json.loads((data / "genesis.json").read_text())["chain_id"]
    return chain_id


def test_forged_evidence_fails_at_its_height_and_is_named(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    """Block 2 of the export made to carry evidence against the demo's validator, signed by
    another key, its header committing to it: the audit names the height and the rule."""
    data, export_file = exported
    validator = json.loads((data / "genesis.json").read_text())["validators"][0]["public_key"]
    forger = key("forger")
    votes = [
        dataclasses.replace(
            sign_vote(forger, chain_id=chain_id_of(data), vote_type="prevote", height=1,
                      round=0, block_hash=block_hash),
            public_key=validator,
        )
        for block_hash in (None, "ab" * 32)
    ]  # fmt: skip
    lines = export_file.read_bytes().splitlines(keepends=True)
    line = json.loads(lines[2])
    evidence = make_evidence(*votes)
    line["block"]["evidence"] = [evidence.to_json()]
    line["block"]["header"]["evidence_hash"] = compute_evidence_hash([evidence])
    lines[2] = canonical(line) + b"\n"
    tampered = tmp_path / "forged-evidence.ndjson"
    tampered.write_bytes(b"".join(lines))
    result = tanlian("verify", "chain", "--export", tampered, "--genesis", data / "genesis.json")
    assert_fails_cleanly(result, "verification failed at height 2: rule evidence_signature: ")
    assert validator in result.stderr


def test_a_truncated_export_fails_at_its_last_line(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    data, export_file = exported
    content = export_file.read_bytes()
    cut = tmp_path / "cut.ndjson"
    cut.write_bytes(content[: len(content) - 100])
    last_height = content.count(b"\n") - 1
    result = tanlian("verify", "chain", "--export", cut, "--genesis", data / "genesis.json")
    assert_fails_cleanly(result, f"verification failed at height {last_height}: rule malformed")


def test_another_genesis_is_refused(exported: tuple[Path, Path], tmp_path: Path) -> None:
    data, export_file = exported
    document = json.loads((data / "genesis.json").read_text())
    document["genesis_time"] += 1
    other = tmp_path / "other-genesis.json"
    other.write_text(json.dumps(document))
    result = tanlian("verify", "chain", "--export", export_file, "--genesis", other)
    assert_fails_cleanly(result, "verification failed at the genesis line: rule genesis")


def test_a_missing_export_fails_cleanly(exported: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = exported
    missing = tmp_path / "nowhere.ndjson"
    result = tanlian("verify", "chain", "--export", missing, "--genesis", data / "genesis.json")
    assert_fails_cleanly(result, "nowhere.ndjson")


def test_a_missing_or_broken_genesis_fails_cleanly(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    _, export_file = exported
    missing = tmp_path / "missing-genesis.json"
    result = tanlian("verify", "chain", "--export", export_file, "--genesis", missing)
    assert_fails_cleanly(result, "missing-genesis.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"chain_id": "x"}')
    result = tanlian("verify", "chain", "--export", export_file, "--genesis", broken)
    assert_fails_cleanly(result, "broken.json: not a genesis document")


def test_a_genesis_quoting_markup_is_reported_as_it_is(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    """Messages quote outside input: printed as text, never as rich markup."""
    data, export_file = exported
    document = json.loads((data / "genesis.json").read_text())
    document["chain_id"] = "[/x]"
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps(document))
    result = tanlian("verify", "chain", "--export", export_file, "--genesis", odd)
    assert_fails_cleanly(result, "'[/x]' does not match")


def test_without_genesis_is_bad_usage(exported: tuple[Path, Path]) -> None:
    _, export_file = exported
    result = tanlian("verify", "chain", "--export", export_file)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "--genesis" in result.stderr
    assert "Traceback" not in result.stderr


def test_without_a_source_is_bad_usage(exported: tuple[Path, Path]) -> None:
    data, _ = exported
    result = tanlian("verify", "chain", "--genesis", data / "genesis.json")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "--export" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_node_fails_with_one_line(exported: tuple[Path, Path]) -> None:
    data, _ = exported
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = tanlian("verify", "chain", "--node", nowhere, "--genesis", data / "genesis.json")
    assert_fails_cleanly(result, "node_unreachable")
