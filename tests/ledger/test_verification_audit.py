"""The chain auditor (`ledger.verification.audit_chain`, SPEC §6.2): a valid export passes with
the chain's head, and each kind of tampering fails with `AuditFailure` naming the right height,
rule and transaction.

The chain: block 1 funds alice and bob; block 2 changes the validator set from the city alone
to four validators (and moves credits); block 3 is still certified by the city alone (the H+2
rule); block 4 is the first the four-validator set governs, and carries evidence of
equivocation; block 5 holds enough transactions for the threaded signature checks to split
them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from consensus.pool import verify_signatures
from ledger.blocks import (
    Certificate,
    Validator,
    compute_evidence_hash,
    compute_validators_hash,
    parse_block,
    sign_certificate,
)
from ledger.crypto import PrivateKey
from ledger.encoding import canonical
from ledger.errors import LedgerError
from ledger.evidence import Evidence, make_evidence, parse_evidence, sign_vote
from ledger.genesis import Genesis, genesis_state, make_genesis_document, parse_genesis
from ledger.limits import JSON_DENSE_CHARS_MIN
from ledger.merkle import EMPTY_ROOT
from ledger.proposer import compute_proposer
from ledger.state_transition import BuiltBlock
from ledger.transactions import Envelope, Transaction, parse_envelope, sign_transaction
from ledger.verification import (
    EARLY_ISSUANCES_LISTED,
    AuditFailure,
    AuditReport,
    EarlyIssuance,
    audit_chain,
    compute_line_bytes_max,
)
from tests.factory import CHAIN_ID, GENESIS_TIME, Chain, key

VALIDATOR_NAMES = (
    "validator-city",
    "validator-certification-centre",
    "validator-energy-platform",
    "validator-independent",
)
PARALLEL_BLOCK_TRANSACTIONS = 70  # over consensus.pool's threshold for splitting a batch
BIG_BLOCK = 5
CHANGED_SET_HEIGHT = 2
FIRST_CONSORTIUM_HEIGHT = 4


class ConsortiumChain(Chain):
    """`Chain` whose certificates are signed by every validator of the set governing the
    height (as tests/vectors/generate.py does), so a multi-validator set can take over."""

    def __init__(self) -> None:
        super().__init__()
        self.validator_keys = {key(name).public_key_hex: key(name) for name in VALIDATOR_NAMES}
        self.certificates: list[Certificate] = []

    def certify(self, built: BuiltBlock) -> Certificate:
        governing = built.state.last_validators  # the set that governed this height
        certificate = sign_certificate(
            chain_id=built.block.header.chain_id,
            height=built.block.height,
            round=0,
            block_hash=built.block.block_hash(),
            keys=[self.validator_keys[v.public_key] for v in governing],
        )
        self.certificates.append(certificate)
        return certificate


def export_of(chain: ConsortiumChain) -> list[bytes]:
    """The chain as `tanlian export` writes it: the genesis, then one block a line."""
    lines = [canonical(chain.genesis_document) + b"\n"]
    for built, certificate in zip(chain.blocks, chain.certificates, strict=True):
        line = {"block": built.block.to_json(), "certificate": certificate.to_json()}
        lines.append(canonical(line) + b"\n")
    return lines


def _double_vote(name: str, height: int) -> Evidence:
    votes = [
        sign_vote(key(name), chain_id=CHAIN_ID, vote_type="prevote", height=height, round=1,
                  block_hash=block_hash)
        for block_hash in (None, "ab" * 32)
    ]  # fmt: skip
    return make_evidence(*votes)


# Block 4 carries evidence against the city at height 3 (which the city alone governed) and
# against the certification centre at height 4 (the four-validator set's first height).
EVIDENCE = (
    _double_vote("validator-city", 3),
    _double_vote("validator-certification-centre", FIRST_CONSORTIUM_HEIGHT),
)


@dataclass(frozen=True)
class Scenario:
    genesis: Genesis
    lines: tuple[bytes, ...]
    report: AuditReport
    governing: tuple[tuple[str, ...], ...]  # public keys governing each height, from 1


@functools.cache
def scenario() -> Scenario:
    chain = ConsortiumChain()
    chain.funded()
    alice, bob, carol = chain.alice, chain.bob, chain.carol

    def pay(sender: PrivateKey, to: PrivateKey, quantity: int) -> Envelope:
        payload = {"to": to.account_id, "batch_id": "B-1", "quantity": quantity}
        return chain.tx(sender, "transfer", payload)

    new_set = [
        {"public_key": key(name).public_key_hex, "power": 1, "name": name}
        for name in VALIDATOR_NAMES
    ]
    blocks = [
        [chain.authority_tx("set_validators", {"validators": new_set}), pay(alice, carol, 10)],
        [pay(bob, carol, 5), pay(carol, alice, 2)],
        [
            pay(alice, bob, 7),
            chain.tx(
                bob,
                "retire",
                {
                    "batch_id": "B-1",
                    "quantity": 3,
                    "beneficiary": "Bob's household",
                    "purpose": "voluntary",
                },
            ),
        ],
        [pay(alice, bob, 1) for _ in range(PARALLEL_BLOCK_TRANSACTIONS)],
    ]
    for height, envelopes in enumerate(blocks, start=2):
        evidence = EVIDENCE if height == FIRST_CONSORTIUM_HEIGHT else ()
        built = chain.commit(*envelopes, evidence=evidence)
        assert not built.rejected, built.rejected
        assert built.block.evidence == evidence, built.evidence_left_out
    lines = export_of(chain)
    state = chain.state
    first = chain.blocks[0].block
    (issue,) = [e for e in first.transactions if e.tx.type == "issue"]
    report = AuditReport(
        height=state.height,
        transactions=state.log.size,
        log_root=state.log.root().hex(),
        state_root=state.state_root,
        head_hash=state.head_hash,
        validators_hash=chain.blocks[-1].block.header.validators_hash,
        # `funded` issues B-1 for January 2026 in a block of 2026-01-01: a period not ended
        early_issuances=1,
        early_listed=(
            EarlyIssuance(
                height=1,
                block_time=first.header.time,
                tx_id=issue.tx_id,
                batch_id="B-1",
                methodology_id="household-electricity",
                project_id="meter-0001",
                period_start="2026-01-01",
                period_end="2026-02-01",
            ),
        ),
    )
    governing = tuple(
        tuple(v.public_key for v in built.state.last_validators) for built in chain.blocks
    )
    return Scenario(genesis=chain.genesis, lines=tuple(lines), report=report, governing=governing)


def audit(lines: Sequence[bytes], **options: Any) -> AuditReport:
    return audit_chain(scenario().genesis, lines, **options)


def expect_failure(
    lines: Sequence[bytes], *, height: int | None, rule: str, tx_id: str | None = None
) -> AuditFailure:
    with pytest.raises(AuditFailure) as caught:
        audit(lines)
    failure = caught.value
    assert (failure.height, failure.rule, failure.tx_id) == (height, rule, tx_id), failure.message
    return failure


def edited(height: int, change: Callable[[Any], None]) -> list[bytes]:
    """The scenario's export with line `height` decoded, changed in place and re-encoded."""
    lines = list(scenario().lines)
    value = json.loads(lines[height])
    change(value)
    lines[height] = canonical(value) + b"\n"
    return lines


def certificate_by(height: int, names: Sequence[str]) -> dict[str, Any]:
    block_hash = json.loads(scenario().lines[height])["certificate"]["block_hash"]
    return sign_certificate(
        chain_id=CHAIN_ID,
        height=height,
        round=0,
        block_hash=block_hash,
        keys=[key(name) for name in names],
    ).to_json()


def flip_hex(text: str, index: int = 0) -> str:
    return text[:index] + ("1" if text[index] == "0" else "0") + text[index + 1 :]


# --- a valid chain ------------------------------------------------------------------------------


def test_a_valid_chain_passes_with_the_chains_head() -> None:
    s = scenario()
    assert s.report.height == 5
    assert s.report.transactions == 3 + 2 + 2 + 2 + PARALLEL_BLOCK_TRANSACTIONS
    assert audit(s.lines) == s.report


def test_the_validator_set_changes_by_the_h_plus_2_rule() -> None:
    """The scenario is what the tests below rely on: the city alone governs heights 1 to 3,
    the four validators govern from height 4."""
    city = key("validator-city").public_key_hex
    four = tuple(sorted(key(name).public_key_hex for name in VALIDATOR_NAMES))
    assert scenario().governing == ((city,), (city,), (city,), four, four)


def test_on_block_reports_each_height_and_the_transactions_so_far() -> None:
    seen: list[tuple[int, int]] = []
    audit(scenario().lines, on_block=lambda height, count: seen.append((height, count)))
    assert seen == [(1, 3), (2, 5), (3, 7), (4, 9), (5, 9 + PARALLEL_BLOCK_TRANSACTIONS)]


def test_a_genesis_line_alone_is_a_valid_empty_chain() -> None:
    s = scenario()
    report = audit(s.lines[:1])
    state = genesis_state(s.genesis)
    assert report == AuditReport(
        height=0,
        transactions=0,
        log_root=EMPTY_ROOT.hex(),
        state_root=state.state_root,
        head_hash=s.genesis.genesis_hash(),
        validators_hash=compute_validators_hash(s.genesis.validators),
    )


def test_a_last_line_without_its_newline_still_passes() -> None:
    lines = list(scenario().lines)
    lines[-1] = lines[-1].rstrip(b"\n")
    assert audit(lines) == scenario().report


def test_an_equivalent_non_canonical_export_passes() -> None:
    """Input need not arrive canonical (SPEC §2.1): spacing and key order do not matter."""
    lines = [scenario().lines[0]]
    for line in scenario().lines[1:]:
        value = json.loads(line)
        spaced = json.dumps(dict(reversed(value.items())), separators=(", ", ": "))
        lines.append(spaced.encode() + b"\n")
    assert lines[1:] != list(scenario().lines[1:])
    assert audit(lines) == scenario().report


# --- signatures ---------------------------------------------------------------------------------


def test_a_changed_quantity_breaks_the_signature() -> None:
    def change(value: Any) -> None:
        value["block"]["transactions"][1]["tx"]["payload"]["quantity"] += 1

    lines = edited(3, change)
    envelope = json.loads(lines[3])["block"]["transactions"][1]
    tampered = parse_envelope(envelope, transaction_bytes_max=16384)
    failure = expect_failure(lines, height=3, rule="bad_signature", tx_id=tampered.tx_id)
    assert failure.code == "audit_failed"
    assert failure.message.startswith(f"at height 3, transaction {tampered.tx_id}: ")
    assert "rule bad_signature" in failure.message


def test_a_transaction_re_signed_by_another_key_is_refused() -> None:
    mallory = key("mallory")
    resigned: list[Envelope] = []

    def change(value: Any) -> None:
        tx = value["block"]["transactions"][0]["tx"]
        tx["payload"]["quantity"] = 500
        transaction = Transaction(**tx)
        resigned.append(sign_transaction(transaction, [mallory]))
        value["block"]["transactions"][0] = resigned[0].to_json()

    lines = edited(3, change)
    expect_failure(lines, height=3, rule="unknown_key", tx_id=resigned[0].tx_id)


def test_a_verifier_that_finds_a_bad_signature_fails_that_transaction() -> None:
    """The injected batch verifier is the one used, and its first error is the one named."""
    target = scenario().lines[2]
    envelopes = json.loads(target)["block"]["transactions"]
    second = parse_envelope(envelopes[1], transaction_bytes_max=16384)

    def verifier(batch: Sequence[Envelope]) -> list[LedgerError | None]:
        return [
            LedgerError("refused by the test", code="bad_signature")
            if envelope.tx_id == second.tx_id
            else None
            for envelope in batch
        ]

    with pytest.raises(AuditFailure) as caught:
        audit(scenario().lines, verify_signatures=verifier)
    assert (caught.value.height, caught.value.rule, caught.value.tx_id) == (
        2,
        "bad_signature",
        second.tx_id,
    )
    assert "refused by the test" in caught.value.message


def test_threaded_signature_checks_give_the_serial_result() -> None:
    s = scenario()
    big = json.loads(s.lines[BIG_BLOCK])["block"]["transactions"]
    assert len(big) >= 64, "consensus.pool splits only batches of 64 or more"

    def change(value: Any) -> None:
        envelope = value["block"]["transactions"][PARALLEL_BLOCK_TRANSACTIONS // 2]
        envelope["signatures"][0]["signature"] = flip_hex(envelope["signatures"][0]["signature"])

    tampered = edited(BIG_BLOCK, change)
    with ThreadPoolExecutor(2) as executor:

        def threaded(envelopes: Sequence[Envelope]) -> list[LedgerError | None]:
            return verify_signatures(envelopes, executor)

        assert audit(s.lines, verify_signatures=threaded) == audit(s.lines) == s.report
        failures = []
        for options in ({"verify_signatures": threaded}, {}):
            with pytest.raises(AuditFailure) as caught:
                audit(tampered, **options)
            failures.append((caught.value.height, caught.value.rule, caught.value.tx_id))
    assert failures[0] == failures[1]
    assert failures[0][:2] == (BIG_BLOCK, "bad_signature")
    middle = json.loads(tampered[BIG_BLOCK])["block"]["transactions"][
        PARALLEL_BLOCK_TRANSACTIONS // 2
    ]
    assert failures[0][2] == parse_envelope(middle, transaction_bytes_max=16384).tx_id


# --- evidence -----------------------------------------------------------------------------------


def test_evidence_in_a_block_is_audited_and_recorded() -> None:
    line = json.loads(scenario().lines[FIRST_CONSORTIUM_HEIGHT])
    assert [parse_evidence(item) for item in line["block"]["evidence"]] == list(EVIDENCE)
    assert audit(scenario().lines) == scenario().report


def test_changed_evidence_fails_at_its_height() -> None:
    """A signature in block 4's evidence changed: the header no longer commits to it; with a
    header rewritten to commit to it, the signature itself fails (and so would the block's
    certificate, which signs the old header)."""

    def forge(value: Any) -> None:
        vote = value["block"]["evidence"][1]["b"]
        vote["signature"] = flip_hex(vote["signature"], 70)

    expect_failure(edited(FIRST_CONSORTIUM_HEIGHT, forge), height=4, rule="evidence_hash")

    def forge_and_commit(value: Any) -> None:
        forge(value)
        items = [parse_evidence(item) for item in value["block"]["evidence"]]
        value["block"]["header"]["evidence_hash"] = compute_evidence_hash(items)

    failure = expect_failure(
        edited(FIRST_CONSORTIUM_HEIGHT, forge_and_commit), height=4, rule="evidence_signature"
    )
    assert key("validator-certification-centre").public_key_hex in failure.detail


def test_evidence_dropped_from_a_block_fails_at_its_height() -> None:
    def drop(value: Any) -> None:
        value["block"]["evidence"].pop(0)
        items = [parse_evidence(item) for item in value["block"]["evidence"]]
        value["block"]["header"]["evidence_hash"] = compute_evidence_hash(items)

    # The header may be rewritten to match, but the state root then says what was dropped.
    expect_failure(edited(FIRST_CONSORTIUM_HEIGHT, drop), height=4, rule="state_root")


# --- headers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["state_root", "log_root", "parent_hash"])
def test_a_changed_header_hash_fails_at_its_height(field: str) -> None:
    def change(value: Any) -> None:
        value["block"]["header"][field] = flip_hex(value["block"]["header"][field], 5)

    expect_failure(edited(3, change), height=3, rule=field)


def test_a_time_not_after_the_parent_fails() -> None:
    parent_time = json.loads(scenario().lines[2])["block"]["header"]["time"]

    def change(value: Any) -> None:
        value["block"]["header"]["time"] = parent_time

    expect_failure(edited(3, change), height=3, rule="time")


def test_a_changed_time_no_longer_matches_the_certificate() -> None:
    """Block 3 holds only transfers, so its time is in no root: only its hash binds it."""

    def change(value: Any) -> None:
        value["block"]["header"]["time"] += 1

    failure = expect_failure(edited(3, change), height=3, rule="certificate")
    assert "different block hash" in failure.message


def test_a_changed_carried_certificate_fails_its_hash() -> None:
    def change(value: Any) -> None:
        signature = value["block"]["last_commit"]["signatures"][0]
        signature["signature"] = flip_hex(signature["signature"], 3)

    expect_failure(edited(4, change), height=4, rule="last_commit_hash")


# --- certificates -------------------------------------------------------------------------------


def test_a_changed_certificate_signature_fails() -> None:
    def change(value: Any) -> None:
        signature = value["certificate"]["signatures"][0]
        signature["signature"] = flip_hex(signature["signature"], 10)

    failure = expect_failure(edited(2, change), height=2, rule="certificate")
    assert "signature" in failure.message


def test_a_certificate_for_another_block_hash_fails() -> None:
    def change(value: Any) -> None:
        value["certificate"]["block_hash"] = flip_hex(value["certificate"]["block_hash"])

    expect_failure(edited(2, change), height=2, rule="certificate")


def test_a_certificate_signed_by_a_non_validator_fails() -> None:
    def change(value: Any) -> None:
        value["certificate"] = certificate_by(2, ["mallory"])

    failure = expect_failure(edited(2, change), height=2, rule="certificate")
    assert "not a validator" in failure.message


def test_a_certificate_below_two_thirds_of_the_new_set_fails() -> None:
    def change(value: Any) -> None:
        value["certificate"] = certificate_by(FIRST_CONSORTIUM_HEIGHT, VALIDATOR_NAMES[:2])

    failure = expect_failure(
        edited(FIRST_CONSORTIUM_HEIGHT, change), height=FIRST_CONSORTIUM_HEIGHT, rule="certificate"
    )
    assert "power 2 of 4" in failure.message


def test_three_of_the_four_new_validators_are_enough() -> None:
    def change(value: Any) -> None:
        value["certificate"] = certificate_by(FIRST_CONSORTIUM_HEIGHT, VALIDATOR_NAMES[1:])

    assert audit(edited(FIRST_CONSORTIUM_HEIGHT, change)) == scenario().report


def test_the_old_validator_alone_no_longer_certifies_after_the_change() -> None:
    def change(value: Any) -> None:
        value["certificate"] = certificate_by(FIRST_CONSORTIUM_HEIGHT, VALIDATOR_NAMES[:1])

    expect_failure(
        edited(FIRST_CONSORTIUM_HEIGHT, change), height=FIRST_CONSORTIUM_HEIGHT, rule="certificate"
    )


def test_the_new_set_does_not_govern_the_height_after_the_change() -> None:
    """The set chosen at height 2 governs height 4, not 3: its validators cannot certify 3."""

    def change(value: Any) -> None:
        value["certificate"] = certificate_by(CHANGED_SET_HEIGHT + 1, VALIDATOR_NAMES)

    failure = expect_failure(
        edited(CHANGED_SET_HEIGHT + 1, change), height=CHANGED_SET_HEIGHT + 1, rule="certificate"
    )
    assert "not a validator" in failure.message


# --- lines missing, moved or broken -------------------------------------------------------------


def test_a_header_naming_a_validator_whose_turn_had_not_come_fails() -> None:
    """Found by review: a block's header could name any validator of the set as its
    proposer, and the audit's notices then asked that one about the block. The named
    proposer must have had a turn in a round up to the certificate's: taken at the round of
    its turn, refused at round 0 (the last block, so no later line links to its hash)."""
    s = scenario()
    height = s.report.height
    line = json.loads(s.lines[height])
    block = parse_block(line["block"], transaction_bytes_max=s.genesis.params.transaction_bytes_max)
    members = [
        Validator(public_key=key(name).public_key_hex, power=1, name=name)
        for name in VALIDATOR_NAMES
    ]
    first = compute_proposer(members, height, 0)
    assert block.header.proposer == first
    other = compute_proposer(members, height, 1)
    assert other != first
    changed = dataclasses.replace(block, header=dataclasses.replace(block.header, proposer=other))

    def export_at(round: int) -> list[bytes]:
        certificate = sign_certificate(
            chain_id=CHAIN_ID,
            height=height,
            round=round,
            block_hash=changed.block_hash(),
            keys=[key(name) for name in VALIDATOR_NAMES],
        )
        lines = list(s.lines)
        lines[height] = canonical(
            {"block": changed.to_json(), "certificate": certificate.to_json()}
        )
        return lines

    failure = expect_failure(export_at(0), height=height, rule="proposer")
    assert other in failure.message and "up to 0" in failure.message
    report = audit(export_at(1))
    assert report.head_hash == changed.block_hash() != s.report.head_hash


def test_a_deleted_block_is_named() -> None:
    lines = list(scenario().lines)
    del lines[3]
    failure = expect_failure(lines, height=3, rule="height")
    assert "holds block 4" in failure.message


def test_two_swapped_blocks_are_named() -> None:
    lines = list(scenario().lines)
    lines[3], lines[4] = lines[4], lines[3]
    expect_failure(lines, height=3, rule="height")


def test_a_repeated_block_is_named() -> None:
    lines = list(scenario().lines)
    lines.insert(3, lines[2])
    expect_failure(lines, height=3, rule="height")


def test_a_truncated_last_line_is_malformed() -> None:
    lines = list(scenario().lines)
    lines[-1] = lines[-1][: len(lines[-1]) // 2]
    failure = expect_failure(lines, height=BIG_BLOCK, rule="malformed")
    assert "malformed_json" in failure.message


def test_a_cut_at_a_line_boundary_is_a_shorter_valid_chain() -> None:
    report = audit(scenario().lines[:4])
    assert report.height == 3
    assert report.head_hash == json.loads(scenario().lines[4])["block"]["header"]["parent_hash"]


def _with_field(extra: str) -> bytes:
    value = json.loads(scenario().lines[3])
    value[extra] = 1
    return canonical(value) + b"\n"


def _without_certificate() -> bytes:
    value = json.loads(scenario().lines[3])
    del value["certificate"]
    return canonical(value) + b"\n"


def _bad_hex() -> bytes:
    value = json.loads(scenario().lines[3])
    value["block"]["header"]["state_root"] = "zz" * 32
    return canonical(value) + b"\n"


def _short_hash() -> bytes:
    value = json.loads(scenario().lines[3])
    value["certificate"]["block_hash"] = value["certificate"]["block_hash"][:-2]
    return canonical(value) + b"\n"


def _huge_array() -> bytes:
    value = json.loads(scenario().lines[3])
    value["block"]["transactions"] = [{}] * 100_001
    return canonical(value) + b"\n"


def _unsorted_certificate() -> bytes:
    value = json.loads(scenario().lines[3])
    value["certificate"]["signatures"] *= 2
    return canonical(value) + b"\n"


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"garbage\n", "malformed_json"),
        (b"\n", "malformed_json"),
        (b"\xff\xfe{}\n", "malformed_json"),
        (b'{"block": 1, "block": 2}\n', "malformed_json"),
        (b"[]\n", "invalid_field"),
        (b"{}\n", "invalid_field"),
        (b'{"block": {}, "certificate": {}}\n', "invalid_field"),
        (b"[" * 100 + b"]" * 100 + b"\n", "limit_exceeded"),
        (b'{"block": 1.5, "certificate": 0}\n', "malformed_json"),
        (_with_field("extra"), "invalid_field"),
        (_without_certificate(), "invalid_field"),
        (_bad_hex(), "invalid_field"),
        (_short_hash(), "invalid_field"),
        (_huge_array(), "limit_exceeded"),
        (_unsorted_certificate(), "invalid_field"),
    ],
    ids=[
        "garbage",
        "empty",
        "not-utf8",
        "duplicate-key",
        "array",
        "empty-object",
        "empty-fields",
        "deep",
        "float",
        "extra-field",
        "missing-field",
        "bad-hex",
        "short-hash",
        "huge-array",
        "repeated-signer",
    ],
)
def test_a_malformed_line_is_named_at_the_next_height(line: bytes, code: str) -> None:
    lines = list(scenario().lines)
    lines[3] = line
    failure = expect_failure(lines, height=3, rule="malformed")
    assert f"({code})" in failure.message


def test_a_line_over_the_chains_bound_is_refused_unread() -> None:
    document = make_genesis_document(
        chain_id=CHAIN_ID,
        genesis_time=GENESIS_TIME,
        authority_name="registry",
        authority_keys=[key("authority-0").public_key_hex],
        authority_threshold=1,
        validators=list(scenario().genesis.validators),
        block_transactions_max=1,
        transaction_bytes_max=1024,
    )
    genesis = parse_genesis(document)
    limit = compute_line_bytes_max(genesis.params)
    assert limit == 2 * 1024 + 1024 * 1024
    lines = [canonical(document) + b"\n", b" " * limit + b"{}\n"]
    with pytest.raises(AuditFailure) as caught:
        audit_chain(genesis, lines)
    assert (caught.value.height, caught.value.rule) == (1, "malformed")
    assert "(limit_exceeded)" in caught.value.message
    with pytest.raises(AuditFailure) as caught:
        audit_chain(genesis, [b" " * limit + lines[0]])
    assert (caught.value.height, caught.value.rule) == (None, "genesis")
    assert f"over {limit} bytes" in caught.value.message


# --- the genesis line ---------------------------------------------------------------------------


def test_an_export_of_another_genesis_fails() -> None:
    document = dict(scenario().genesis.document)
    document["genesis_time"] = GENESIS_TIME + 1
    lines = [canonical(document) + b"\n", *scenario().lines[1:]]
    failure = expect_failure(lines, height=None, rule="genesis")
    assert failure.message.startswith("at the genesis line: rule genesis: ")


@pytest.mark.parametrize("first", [b"garbage\n", b"[]\n", b'{"chain_id": "x"}\n', b"\n"])
def test_a_broken_genesis_line_fails(first: bytes) -> None:
    expect_failure([first, *scenario().lines[1:]], height=None, rule="genesis")


def test_an_empty_export_fails() -> None:
    failure = expect_failure([], height=None, rule="genesis")
    assert "empty" in failure.message


# --- any change of bytes ------------------------------------------------------------------------


@st.composite
def mutations(draw: st.DrawFn) -> tuple[int, int, str, int]:
    lines = scenario().lines
    height = draw(st.integers(1, len(lines) - 1))
    position = draw(st.integers(0, len(lines[height]) - 1))
    kind = draw(st.sampled_from(["replace", "replace", "replace", "insert", "delete"]))
    # Any byte, or one that keeps hex strings and numbers well formed (to reach deeper rules).
    byte = draw(st.one_of(st.sampled_from(b"0123456789abcdef"), st.integers(0, 255)))
    return height, position, kind, byte


@given(mutations())
def test_any_byte_change_passes_unchanged_or_fails_as_an_audit_failure(
    mutation: tuple[int, int, str, int],
) -> None:
    height, position, kind, byte = mutation
    lines = list(scenario().lines)
    line = lines[height]
    if kind == "replace":
        line = line[:position] + bytes([byte]) + line[position + 1 :]
    elif kind == "insert":
        line = line[:position] + bytes([byte]) + line[position:]
    else:
        line = line[:position] + line[position + 1 :]
    lines[height] = line
    try:
        report = audit(lines)
    except AuditFailure as failure:
        assert failure.height == height, failure.message
        event(f"fails: {failure.rule}")
        return
    event("passes")
    # Only a change JSON ignores (spacing, a newline at the end) may pass, with the same head.
    assert report == scenario().report


# --- the audit's notice: issuances of a period not yet ended --------------------------------------


def test_an_issuance_is_noticed_when_its_period_had_not_ended_at_its_block() -> None:
    """A period's end is exclusive: one ending on the block's own day (UTC) had ended at 00:00,
    one ending the next day had not. The chain is valid either way (SPEC §3.3)."""
    chain = ConsortiumChain()
    alice = chain.alice
    built = chain.commit(
        chain.accredit(),
        chain.issue([(alice, 10)], project_id="ended", period=("2025-12-01", "2026-01-01")),
        chain.issue([(alice, 10)], project_id="not-ended", period=("2025-12-01", "2026-01-02")),
    )
    assert not built.rejected, built.rejected
    assert built.block.header.time >= GENESIS_TIME  # 2026-01-01T00:00:00Z or after
    early = built.block.transactions[2]
    report = audit_chain(chain.genesis, export_of(chain))
    assert report.early_issuances == 1
    assert report.early_listed == (
        EarlyIssuance(
            height=1,
            block_time=built.block.header.time,
            tx_id=early.tx_id,
            batch_id="B-2",
            methodology_id="household-electricity",
            project_id="not-ended",
            period_start="2025-12-01",
            period_end="2026-01-02",
        ),
    )


def test_every_early_issuance_is_counted_and_the_first_ones_listed() -> None:
    chain = ConsortiumChain()
    count = EARLY_ISSUANCES_LISTED + 2
    projects = [f"meter-{n:02d}" for n in range(count)]
    built = chain.commit(
        chain.accredit(), *(chain.issue([(chain.alice, 1)], project_id=p) for p in projects)
    )
    assert not built.rejected, built.rejected
    report = audit_chain(chain.genesis, export_of(chain))
    assert report.early_issuances == count
    assert [e.project_id for e in report.early_listed] == projects[:EARLY_ISSUANCES_LISTED]
    assert [e.batch_id for e in report.early_listed] == [
        f"B-{n}" for n in range(1, EARLY_ISSUANCES_LISTED + 1)
    ]


def test_a_block_over_a_mebibyte_of_bracket_memos_is_audited() -> None:
    """Found by review: the decoder's density bound counted the brackets inside strings, so
    a valid block of 1,100 transfers with memos of `[` (1.1 MB) was refused by `verify chain`
    and by block sync (`malformed`, `limit_exceeded`) after the consortium committed it."""
    chain = ConsortiumChain()
    chain.funded()
    memo = "[{" * 250
    transfers = [
        chain.tx(sender, "transfer", {"to": to, "batch_id": "B-1", "quantity": 1, "memo": memo})
        for sender, to, count in [
            (chain.alice, chain.bob.account_id, 1000),
            (chain.bob, chain.carol.account_id, 100),
        ]
        for _ in range(count)
    ]
    built = chain.commit(*transfers)
    assert not built.rejected and len(built.block.transactions) == 1100
    lines = export_of(chain)
    assert len(lines[-1]) > JSON_DENSE_CHARS_MIN
    report = audit_chain(chain.genesis, lines)
    assert report.height == built.block.height
    assert report.state_root == built.state.state_root


def test_the_audit_names_the_validator_set_that_certified_the_head() -> None:
    """Found by review: docs/verification.md sends the holder of a receipt certified after a
    `set_validators` to the chain audit for the new set's hash, which it did not give."""
    chosen = scenario()
    report = audit(chosen.lines)
    head = json.loads(chosen.lines[-1])["block"]["header"]
    assert report.validators_hash == head["validators_hash"]
    assert report.validators_hash != compute_validators_hash(chosen.genesis.validators)
