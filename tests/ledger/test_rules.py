"""SPEC §3.3 validity rules, one error code at a time, and the exact effects of §3.4.

Each rejection test builds a valid transaction, shows that it would be accepted, changes one
thing and expects exactly one code. `assert_rejected` checks the code twice: from the
proposer's side (`build_block` leaves the transaction out, and the state is exactly that of an
empty block: same entries, same root, same log) and from the validator's side (`apply_block`
refuses a block that carries it, naming the same code and the transaction).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from ledger import receipts, state_transition, verification
from ledger.blocks import Validator, compute_validators_hash, sign_certificate
from ledger.crypto import PrivateKey, compute_account_id
from ledger.errors import RULE_CODES, InvalidBlockError
from ledger.limits import JSON_INTEGER_MAX, RETIREMENT_LOTS_MAX
from ledger.state_transition import (
    OWN_RULES,
    VALIDITY_ONLY,
    BuiltBlock,
    ProposerRules,
    apply_block,
    build_block,
)
from ledger.transactions import AUTHORITY_TYPES, Envelope
from tests.factory import CHAIN_ID, FAR_FUTURE, Chain, key

PROGRAM = "zibo-green-home"
METHODOLOGY = "household-electricity"
JANUARY = ("2026-01-01", "2026-02-01")
FEBRUARY = ("2026-02-01", "2026-03-01")

# Every code a transaction can earn from the state rules (payload_too_large and invalid_field
# come from decoding, before the state is consulted). A new code needs a test in this file.
STATE_RULE_CODES = (
    "wrong_chain",
    "bad_signature",
    "unknown_key",
    "insufficient_signatures",
    "bad_nonce",
    "not_authorized",
    "not_accredited",
    "unknown_methodology",
    "methodology_not_in_scope",
    "double_issuance",
    "insufficient_credits",
    "account_suspended",
    "account_not_suspended",
    "unknown_account",
    "unknown_batch",
    "unknown_program",
    "program_expired",
    "already_exists",
    "self_transfer",
    "limit_exceeded",
)


# --- helpers ----------------------------------------------------------------------------------


def account(chain: Chain, account_id: str) -> dict[str, Any]:
    value = chain.state.get(f"account/{account_id}")
    assert value is not None, f"no account {account_id}"
    return dict(value)


def committed_nonce(chain: Chain, account_id: str) -> int:
    value = chain.state.get(f"account/{account_id}")
    return 0 if value is None else int(value["nonce"])


def sign(
    chain: Chain,
    keys: PrivateKey | list[PrivateKey],
    kind: str,
    payload: dict[str, Any],
    *,
    signer: str | None = None,
    nonce: int | None = None,
    chain_id: str = CHAIN_ID,
) -> Envelope:
    """An envelope whose nonce defaults to the signer's committed nonce + 1 (read from the
    state, so a valid twin and its one-change variant share it)."""
    key_list = keys if isinstance(keys, list) else [keys]
    signer = signer or key_list[0].account_id
    if nonce is None:
        nonce = committed_nonce(chain, signer) + 1
    return chain.tx(key_list, kind, payload, signer=signer, nonce=nonce, chain_id=chain_id)


def as_authority(
    chain: Chain,
    kind: str,
    payload: dict[str, Any],
    *,
    keys: list[PrivateKey] | None = None,
) -> Envelope:
    keys = chain.authority_keys[:2] if keys is None else keys
    return sign(chain, keys, kind, payload, signer=chain.authority_id)


def transfer(to: PrivateKey | str, quantity: int, batch_id: str = "B-1") -> dict[str, Any]:
    return {
        "to": to if isinstance(to, str) else to.account_id,
        "batch_id": batch_id,
        "quantity": quantity,
    }


def retirement(
    quantity: int,
    batch_id: str = "B-1",
    *,
    program_id: str | None = None,
    jurisdiction: str | None = None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "batch_id": batch_id,
        "quantity": quantity,
        "beneficiary": "Zhang household, Zhangdian district",
        "purpose": "voluntary" if program_id is None else "incentive",
    }
    if program_id is not None:
        payload["program_id"] = program_id
    if jurisdiction is not None:
        payload["jurisdiction"] = jurisdiction
    return payload


def invalidation(holder: PrivateKey | str, quantity: int, batch_id: str = "B-1") -> dict[str, Any]:
    return {
        "batch_id": batch_id,
        "holder": holder if isinstance(holder, str) else holder.account_id,
        "quantity": quantity,
        "reason": "meter readings were tampered with",
    }


def issuance(
    recipients: list[tuple[PrivateKey | str, int]],
    *,
    project_id: str = "meter-0001",
    period: tuple[str, str] = JANUARY,
    methodology_id: str = METHODOLOGY,
) -> dict[str, Any]:
    return {
        "methodology_id": methodology_id,
        "project_id": project_id,
        "period_start": period[0],
        "period_end": period[1],
        "evidence_sha256": hashlib.sha256(f"{project_id}/{period[0]}".encode()).hexdigest(),
        "recipients": [
            {"account": who if isinstance(who, str) else who.account_id, "quantity": quantity}
            for who, quantity in recipients
        ],
    }


def issue(
    chain: Chain,
    recipients: list[tuple[PrivateKey | str, int]],
    *,
    project_id: str = "meter-0001",
    period: tuple[str, str] = JANUARY,
    methodology_id: str = METHODOLOGY,
    nonce: int | None = None,
) -> Envelope:
    """An `issue` signed by the factory's accredited certifier."""
    payload = issuance(
        recipients, project_id=project_id, period=period, methodology_id=methodology_id
    )
    return sign(chain, chain.certifier, "issue", payload, nonce=nonce)


def accreditation(
    certifier: PrivateKey,
    methodologies: list[str] | None = None,
    *,
    valid_from: int = 0,
    valid_until: int = FAR_FUTURE,
) -> dict[str, Any]:
    return {
        "certifier": certifier.account_id,
        "name": "Shandong energy audit office",
        "methodologies": methodologies or [METHODOLOGY],
        "valid_from": valid_from,
        "valid_until": valid_until,
    }


def next_block(
    chain: Chain,
    envelopes: list[Envelope],
    *,
    time: int | None = None,
    rules: ProposerRules = OWN_RULES,
) -> BuiltBlock:
    """The chain's next block from `envelopes`, built and replayed but not adopted."""
    built = build_block(
        chain.state,
        envelopes,
        time=chain.time + 1000 if time is None else time,
        proposer=chain.validator.public_key_hex,
        last_commit=chain.last_certificate,
        rules=rules,
    )
    assert apply_block(chain.state, built.block).state_root == built.state.state_root
    return built


def assert_accepted(chain: Chain, envelope: Envelope, *, advance_ms: int = 1000) -> None:
    """`envelope` alone in the next block would be applied (the chain does not move)."""
    built = next_block(chain, [envelope], time=chain.time + advance_ms)
    assert [(e.tx_id, error.code) for e, error in built.rejected] == []
    assert built.block.transactions == (envelope,)


def assert_rejected(
    chain: Chain, envelope: Envelope, code: str, *, advance_ms: int = 1000
) -> BuiltBlock:
    """`envelope` fails with exactly `code`, on both sides, and changes nothing."""
    assert code in RULE_CODES
    before = chain.state
    empty = next_block(chain, [], time=chain.time + advance_ms)
    built = chain.commit(envelope, advance_ms=advance_ms)
    assert [(e.tx_id, error.code) for e, error in built.rejected] == [(envelope.tx_id, code)]
    assert built.rejected[0][1].tx_id == envelope.tx_id
    assert built.block.transactions == ()
    assert built.state.state_root == empty.state.state_root
    assert dict(built.state.entries) == dict(empty.state.entries)
    assert built.state.log.size == before.log.size
    assert built.state.log.root() == before.log.root()
    # The validator's side: a block that carries it is invalid, for the same reason.
    forged = dataclasses.replace(empty.block, transactions=(envelope,))
    with pytest.raises(InvalidBlockError) as caught:
        apply_block(before, forged)
    assert (caught.value.rule, caught.value.tx_id) == (code, envelope.tx_id)
    return built


def check_one_change(
    chain: Chain,
    valid: Envelope,
    invalid: Envelope,
    code: str,
    *,
    advance_ms: int = 1000,
    recheck: bool = True,
) -> None:
    """`valid` would be accepted; `invalid`, one change away, fails with `code`; and after
    that rejection `valid` is still acceptable (unless time alone makes it fail)."""
    assert_accepted(chain, valid, advance_ms=advance_ms)
    assert_rejected(chain, invalid, code, advance_ms=advance_ms)
    if recheck:
        assert_accepted(chain, valid)


def commit_ok(chain: Chain, *envelopes: Envelope, advance_ms: int = 1000) -> BuiltBlock:
    built = chain.commit(*envelopes, advance_ms=advance_ms)
    assert [(e.tx.type, error.code) for e, error in built.rejected] == []
    assert built.block.transactions == envelopes
    for envelope in envelopes:  # keep the factory's nonce bookkeeping in step with ours
        chain.nonces[envelope.tx.signer] = committed_nonce(chain, envelope.tx.signer)
    return built


def lots(chain: Chain, batch_id: str = "B-1") -> list[tuple[int, int, str, str]]:
    """(first, last, owner, status) of every lot of the batch, in serial order."""
    prefix = f"lot/{batch_id}/"
    found = [value for k, value in chain.state.entries.items() if k.startswith(prefix)]
    for value in found:
        assert f"{prefix}{value['first_serial']}" in chain.state.entries
    return sorted(
        (v["first_serial"], v["first_serial"] + v["quantity"] - 1, v["owner"], v["status"])
        for v in found
    )


def held(chain: Chain, owner: PrivateKey | str, batch_id: str = "B-1") -> int:
    owner_id = owner if isinstance(owner, str) else owner.account_id
    return sum(
        last - first + 1
        for first, last, lot_owner, status in lots(chain, batch_id)
        if lot_owner == owner_id and status == "circulating"
    )


def batch(chain: Chain, batch_id: str = "B-1") -> dict[str, Any]:
    value = chain.state.get(f"batch/{batch_id}")
    assert value is not None
    return dict(value)


def suspend(chain: Chain, who: PrivateKey | str) -> None:
    who_id = who if isinstance(who, str) else who.account_id
    commit_ok(chain, as_authority(chain, "suspend_account", {"account": who_id, "reason": "audit"}))
    assert account(chain, who_id)["status"] == "suspended"


@pytest.fixture
def chain() -> Chain:
    return Chain().funded()


def test_every_state_rule_code_is_covered_here() -> None:
    assert set(STATE_RULE_CODES) == RULE_CODES - {"payload_too_large", "invalid_field"}
    assert len(STATE_RULE_CODES) == len(set(STATE_RULE_CODES))


def test_funded_chain_is_as_the_factory_says(chain: Chain) -> None:
    alice, bob = chain.alice.account_id, chain.bob.account_id
    assert lots(chain) == [(1, 1000, alice, "circulating"), (1001, 1500, bob, "circulating")]
    assert chain.state.height == 1


# --- envelope: chain, signatures, keys, nonce (§3.1) ------------------------------------------


def test_wrong_chain(chain: Chain) -> None:
    valid = sign(chain, chain.alice, "transfer", transfer(chain.carol, 10))
    invalid = sign(chain, chain.alice, "transfer", transfer(chain.carol, 10), chain_id="zibo-prod")
    check_one_change(chain, valid, invalid, "wrong_chain")


def test_cross_chain_replay_of_a_committed_transaction_is_refused(chain: Chain) -> None:
    """An envelope committed on another chain cannot replay here, even at the right nonce."""
    other = Chain().funded()
    foreign = sign(other, other.alice, "transfer", transfer(other.carol, 10), chain_id="zibo-dev")
    assert foreign.tx.nonce == committed_nonce(chain, chain.alice.account_id) + 1
    local = sign(chain, chain.alice, "transfer", transfer(chain.carol, 10))
    check_one_change(chain, local, foreign, "wrong_chain")


def test_bad_signature_tampered_signature(chain: Chain) -> None:
    valid = sign(chain, chain.alice, "transfer", transfer(chain.carol, 10))
    original = valid.signatures[0]
    raw = bytearray(bytes.fromhex(original.signature))
    raw[40] ^= 0x01  # inside S, far below its top byte: still reduced, no longer valid
    tampered = dataclasses.replace(original, signature=raw.hex())
    invalid = Envelope(tx=valid.tx, signatures=(tampered,))
    assert invalid.tx_id == valid.tx_id  # signatures are not part of the id
    check_one_change(chain, valid, invalid, "bad_signature")


def test_bad_signature_payload_changed_after_signing(chain: Chain) -> None:
    valid = sign(chain, chain.alice, "transfer", transfer(chain.carol, 10))
    changed = dataclasses.replace(valid.tx, payload=transfer(chain.carol, 11))
    invalid = Envelope(tx=changed, signatures=valid.signatures)
    check_one_change(chain, valid, invalid, "bad_signature")


def test_bad_signature_one_of_two_authority_signatures(chain: Chain) -> None:
    payload = {"program_id": "zibo-ev-charging", "name": "EV charging", "valid_until": FAR_FUTURE}
    valid = as_authority(chain, "create_program", payload)
    other = as_authority(chain, "create_program", {**payload, "name": "Something else"})
    mixed = (valid.signatures[0], other.signatures[1])
    assert mixed[1].public_key == valid.signatures[1].public_key
    check_one_change(chain, valid, Envelope(tx=valid.tx, signatures=mixed), "bad_signature")


def test_unknown_key_signer_not_derived_from_its_key(chain: Chain) -> None:
    """A new single-key account's id must be the one its key derives."""
    dave, erin = key("dave"), key("erin")
    keys_payload = {"keys": [dave.public_key_hex], "threshold": 1}
    valid = sign(chain, dave, "set_keys", keys_payload)
    invalid = sign(chain, dave, "set_keys", keys_payload, signer=erin.account_id)
    assert invalid.tx.nonce == valid.tx.nonce == 1
    check_one_change(chain, valid, invalid, "unknown_key")
    assert chain.state.get(f"account/{erin.account_id}") is None


def test_unknown_key_for_a_holder_whose_keys_are_not_known_yet(chain: Chain) -> None:
    """Alice only received credits: her account exists with no keys, so only her key signs."""
    assert account(chain, chain.alice.account_id)["keys"] == []
    valid = sign(chain, chain.alice, "transfer", transfer(chain.carol, 10))
    invalid = sign(
        chain, chain.carol, "transfer", transfer(chain.carol, 10), signer=chain.alice.account_id
    )
    check_one_change(chain, valid, invalid, "unknown_key")


def test_unknown_key_extra_key_beside_the_deriving_key(chain: Chain) -> None:
    valid = sign(chain, chain.alice, "transfer", transfer(chain.carol, 10))
    invalid = sign(
        chain,
        [chain.alice, chain.carol],
        "transfer",
        transfer(chain.carol, 10),
        signer=chain.alice.account_id,
    )
    check_one_change(chain, valid, invalid, "unknown_key")


def test_authority_key_outside_the_set_is_unknown_key(chain: Chain) -> None:
    payload = {"program_id": "zibo-ev-charging", "name": "EV charging", "valid_until": FAR_FUTURE}
    valid = as_authority(chain, "create_program", payload)
    invalid = as_authority(
        chain, "create_program", payload, keys=[chain.authority_keys[0], key("mallory")]
    )
    check_one_change(chain, valid, invalid, "unknown_key")


def test_authority_one_of_two_needed_signatures(chain: Chain) -> None:
    payload = {"program_id": "zibo-ev-charging", "name": "EV charging", "valid_until": FAR_FUTURE}
    valid = as_authority(chain, "create_program", payload, keys=chain.authority_keys[1:3])
    invalid = as_authority(chain, "create_program", payload, keys=chain.authority_keys[2:3])
    check_one_change(chain, valid, invalid, "insufficient_signatures")


def test_authority_three_of_three_is_more_than_enough(chain: Chain) -> None:
    payload = {"program_id": "zibo-ev-charging", "name": "EV charging", "valid_until": FAR_FUTURE}
    commit_ok(chain, as_authority(chain, "create_program", payload, keys=chain.authority_keys))
    assert chain.state.get("program/zibo-ev-charging") is not None


def test_no_signature_at_all(chain: Chain) -> None:
    valid = sign(chain, chain.alice, "transfer", transfer(chain.carol, 10))
    invalid = Envelope(tx=valid.tx, signatures=())
    check_one_change(chain, valid, invalid, "insufficient_signatures")


def test_one_key_listed_twice_counts_once_toward_the_threshold(chain: Chain) -> None:
    """M-of-N means M distinct keys: the 2-of-3 authority's one key, listed twice, is 1 of 2.

    The decoder refuses repeated keys, but `apply_block` takes in-memory envelopes (from the
    pool, the store, a proposer), so the state rule must count distinct keys itself.
    """
    payload = {"program_id": "zibo-ev-charging", "name": "EV charging", "valid_until": FAR_FUTURE}
    valid = as_authority(chain, "create_program", payload)
    one = valid.signatures[0]
    one_key_twice = Envelope(tx=valid.tx, signatures=(one, one))
    check_one_change(chain, valid, one_key_twice, "insufficient_signatures")


def test_bad_nonce_reused(chain: Chain) -> None:
    commit_ok(chain, sign(chain, chain.alice, "transfer", transfer(chain.carol, 10)))
    valid = sign(chain, chain.alice, "transfer", transfer(chain.carol, 20))
    reused = sign(chain, chain.alice, "transfer", transfer(chain.carol, 20), nonce=1)
    assert valid.tx.nonce == 2
    check_one_change(chain, valid, reused, "bad_nonce")


def test_bad_nonce_replaying_the_committed_envelope(chain: Chain) -> None:
    first = sign(chain, chain.alice, "transfer", transfer(chain.carol, 10))
    commit_ok(chain, first)
    assert_rejected(chain, first, "bad_nonce")
    assert held(chain, chain.carol) == 10


def test_bad_nonce_skipped(chain: Chain) -> None:
    valid = sign(chain, chain.alice, "transfer", transfer(chain.carol, 10))
    skipped = sign(chain, chain.alice, "transfer", transfer(chain.carol, 10), nonce=2)
    assert valid.tx.nonce == 1
    check_one_change(chain, valid, skipped, "bad_nonce")


def test_nonces_within_one_block_follow_each_other(chain: Chain) -> None:
    first = sign(chain, chain.alice, "transfer", transfer(chain.carol, 10))
    second = sign(chain, chain.alice, "transfer", transfer(chain.carol, 20), nonce=2)
    commit_ok(chain, first, second)
    assert account(chain, chain.alice.account_id)["nonce"] == 2
    assert held(chain, chain.carol) == 30


def test_rejected_transaction_does_not_consume_its_nonce(chain: Chain) -> None:
    too_much = sign(chain, chain.alice, "transfer", transfer(chain.carol, 5000))
    assert_rejected(chain, too_much, "insufficient_credits")
    assert account(chain, chain.alice.account_id)["nonce"] == 0
    commit_ok(chain, sign(chain, chain.alice, "transfer", transfer(chain.carol, 10), nonce=1))


# --- authorization (§1, §3.3) ------------------------------------------------------------------


def _validators_payload(chain: Chain) -> dict[str, Any]:
    return {
        "validators": [
            {"public_key": chain.validator.public_key_hex, "power": 3, "name": "city"},
            {"public_key": key("validator-centre").public_key_hex, "power": 1, "name": "centre"},
        ]
    }


def _no_setup(chain: Chain) -> None:
    del chain


AUTHORITY_CASES: dict[str, tuple[Callable[[Chain], None], Callable[[Chain], dict[str, Any]]]] = {
    "register_methodology": (
        _no_setup,
        lambda c: {
            "methodology_id": "heat-pump",
            "name": "Heat pump retrofit",
            "document_sha256": hashlib.sha256(b"heat-pump v1").hexdigest(),
        },
    ),
    "accredit_certifier": (_no_setup, lambda c: accreditation(c.carol)),
    "revoke_certifier": (
        _no_setup,
        lambda c: {"certifier": c.certifier.account_id, "reason": "audit failed"},
    ),
    "create_program": (
        _no_setup,
        lambda c: {"program_id": "zibo-ev", "name": "EV charging", "valid_until": FAR_FUTURE},
    ),
    "suspend_account": (_no_setup, lambda c: {"account": c.bob.account_id, "reason": "audit"}),
    "reinstate_account": (
        lambda c: suspend(c, c.bob),
        lambda c: {"account": c.bob.account_id, "reason": "cleared"},
    ),
    "set_validators": (_no_setup, _validators_payload),
}


def test_authority_cases_cover_every_authority_type() -> None:
    assert set(AUTHORITY_CASES) == AUTHORITY_TYPES


@pytest.mark.parametrize("intruder", ["alice", "certifier"])
@pytest.mark.parametrize("kind", sorted(AUTHORITY_CASES))
def test_authority_only_types_signed_by_others(chain: Chain, kind: str, intruder: str) -> None:
    setup, make_payload = AUTHORITY_CASES[kind]
    setup(chain)
    payload = make_payload(chain)
    signer: PrivateKey = getattr(chain, intruder)
    valid = as_authority(chain, kind, payload)
    invalid = sign(chain, signer, kind, payload)
    check_one_change(chain, valid, invalid, "not_authorized")


def test_authority_cannot_suspend_itself(chain: Chain) -> None:
    valid = as_authority(chain, "suspend_account", {"account": chain.bob.account_id, "reason": "x"})
    invalid = as_authority(chain, "suspend_account", {"account": chain.authority_id, "reason": "x"})
    check_one_change(chain, valid, invalid, "not_authorized")


def test_invalidate_by_the_issuing_certifier(chain: Chain) -> None:
    commit_ok(chain, sign(chain, chain.certifier, "invalidate", invalidation(chain.bob, 100)))
    assert held(chain, chain.bob) == 400
    assert batch(chain)["invalidated"] == 100


def test_invalidate_by_the_authority(chain: Chain) -> None:
    commit_ok(chain, as_authority(chain, "invalidate", invalidation(chain.bob, 100)))
    assert held(chain, chain.bob) == 400


def test_invalidate_by_another_certifier_is_not_authorized(chain: Chain) -> None:
    other = key("other-certifier")
    commit_ok(chain, as_authority(chain, "accredit_certifier", accreditation(other)))
    valid = sign(chain, chain.certifier, "invalidate", invalidation(chain.bob, 100))
    invalid = sign(chain, other, "invalidate", invalidation(chain.bob, 100))
    check_one_change(chain, valid, invalid, "not_authorized")


def test_invalidate_by_a_holder_is_not_authorized(chain: Chain) -> None:
    valid = sign(chain, chain.certifier, "invalidate", invalidation(chain.bob, 100))
    invalid = sign(chain, chain.alice, "invalidate", invalidation(chain.bob, 100))
    check_one_change(chain, valid, invalid, "not_authorized")


def test_invalidate_by_a_revoked_certifier_is_not_accredited(chain: Chain) -> None:
    """SPEC §3.3: a certifier's accreditation must be unrevoked for whatever it signs as one.
    Found by review: a certifier revoked for misconduct could still destroy its holders'
    credits for good; the authority still can."""
    revoke = {"certifier": chain.certifier.account_id, "reason": "audit failed"}
    commit_ok(chain, as_authority(chain, "revoke_certifier", revoke))
    payload = invalidation(chain.bob, 100)
    assert_rejected(chain, sign(chain, chain.certifier, "invalidate", payload), "not_accredited")
    assert batch(chain)["invalidated"] == 0
    commit_ok(chain, as_authority(chain, "invalidate", payload))
    assert batch(chain)["invalidated"] == 100


def test_invalidate_by_a_certifier_outside_its_window_or_scope(chain: Chain) -> None:
    auditor = key("auditor")
    valid_until = chain.time + 5000
    accredit = accreditation(auditor, valid_until=valid_until)
    commit_ok(chain, as_authority(chain, "accredit_certifier", accredit))
    issuing = issuance([(chain.alice, 10)], project_id="meter-0002")
    commit_ok(chain, sign(chain, auditor, "issue", issuing))
    envelope = sign(chain, auditor, "invalidate", invalidation(chain.alice, 4, batch_id="B-2"))
    # The same envelope: one millisecond inside the window, then at its (exclusive) end.
    assert_accepted(chain, envelope, advance_ms=valid_until - 1 - chain.time)
    assert_rejected(chain, envelope, "not_accredited", advance_ms=valid_until - chain.time)
    narrowed = accreditation(auditor, ["rooftop-solar"])  # re-accredited for another scope
    commit_ok(chain, as_authority(chain, "accredit_certifier", narrowed))
    assert_rejected(chain, envelope, "methodology_not_in_scope")
    assert batch(chain, "B-2")["invalidated"] == 0


# --- accreditation (§3.3) ----------------------------------------------------------------------


def test_issue_by_an_account_never_accredited(chain: Chain) -> None:
    payload = issuance([(chain.alice, 10)], period=FEBRUARY)
    valid = sign(chain, chain.certifier, "issue", payload)
    invalid = sign(chain, chain.carol, "issue", payload)
    check_one_change(chain, valid, invalid, "not_accredited")


def test_issue_after_the_accreditation_window(chain: Chain) -> None:
    auditor = key("auditor")
    valid_until = chain.time + 5000
    commit_ok(
        chain,
        as_authority(chain, "accredit_certifier", accreditation(auditor, valid_until=valid_until)),
    )
    envelope = sign(
        chain,
        auditor,
        "issue",
        issuance([(chain.alice, 10), (chain.bob, 5)], project_id="meter-0002"),
    )
    # The same envelope: one millisecond inside the window, then at its (exclusive) end.
    assert_accepted(chain, envelope, advance_ms=valid_until - 1 - chain.time)
    assert_rejected(chain, envelope, "not_accredited", advance_ms=valid_until - chain.time)
    assert chain.state.get("batch/B-2") is None


def test_issue_before_the_accreditation_window(chain: Chain) -> None:
    auditor = key("auditor")
    valid_from = chain.time + 5000
    commit_ok(
        chain,
        as_authority(chain, "accredit_certifier", accreditation(auditor, valid_from=valid_from)),
    )
    envelope = sign(chain, auditor, "issue", issuance([(chain.alice, 10)], project_id="meter-0002"))
    assert_accepted(chain, envelope, advance_ms=valid_from - chain.time)
    assert_rejected(chain, envelope, "not_accredited", advance_ms=valid_from - 1 - chain.time)
    commit_ok(chain, envelope, advance_ms=1)  # now exactly at valid_from
    assert batch(chain, "B-2")["certifier"] == auditor.account_id


def test_issue_after_revocation(chain: Chain) -> None:
    envelope = issue(chain, [(chain.alice, 10)], period=FEBRUARY)
    assert_accepted(chain, envelope)
    revoke = {"certifier": chain.certifier.account_id, "reason": "audit failed"}
    built = commit_ok(chain, as_authority(chain, "revoke_certifier", revoke))
    record = chain.state.get(f"certifier/{chain.certifier.account_id}")
    assert record["revoked_height"] == built.block.height
    assert record["revoke_reason"] == "audit failed"
    assert_rejected(chain, envelope, "not_accredited")
    # Earlier issuances stand: B-1 is untouched and still moves.
    assert batch(chain)["circulating"] == 1500
    commit_ok(chain, sign(chain, chain.alice, "transfer", transfer(chain.carol, 10)))


def test_revocation_takes_effect_at_its_place_in_the_block(chain: Chain) -> None:
    revoke = as_authority(
        chain, "revoke_certifier", {"certifier": chain.certifier.account_id, "reason": "audit"}
    )
    issuing = issue(chain, [(chain.alice, 10)], period=FEBRUARY)
    before = next_block(chain, [issuing, revoke])
    assert before.rejected == () and len(before.block.transactions) == 2
    after = next_block(chain, [revoke, issuing])
    assert [(e.tx_id, error.code) for e, error in after.rejected] == [
        (issuing.tx_id, "not_accredited")
    ]


def test_reaccreditation_after_revocation_works(chain: Chain) -> None:
    revoke = {"certifier": chain.certifier.account_id, "reason": "audit failed"}
    commit_ok(chain, as_authority(chain, "revoke_certifier", revoke))
    envelope = issue(chain, [(chain.alice, 10)], period=FEBRUARY)
    assert_rejected(chain, envelope, "not_accredited")
    built = commit_ok(
        chain, as_authority(chain, "accredit_certifier", accreditation(chain.certifier))
    )
    record = chain.state.get(f"certifier/{chain.certifier.account_id}")
    assert record["revoked_height"] is None and record["height"] == built.block.height
    commit_ok(chain, envelope)
    assert batch(chain, "B-2")["issued"] == 10


def test_revoking_what_is_not_accredited(chain: Chain) -> None:
    valid = as_authority(
        chain, "revoke_certifier", {"certifier": chain.certifier.account_id, "reason": "x"}
    )
    invalid = as_authority(
        chain, "revoke_certifier", {"certifier": chain.carol.account_id, "reason": "x"}
    )
    check_one_change(chain, valid, invalid, "not_accredited")


def test_revoking_twice(chain: Chain) -> None:
    payload = {"certifier": chain.certifier.account_id, "reason": "audit failed"}
    revoked = commit_ok(chain, as_authority(chain, "revoke_certifier", payload)).block.height
    again = as_authority(chain, "revoke_certifier", payload)
    ((_, error),) = assert_rejected(chain, again, "not_accredited").rejected
    # says when (found by review: the message read as if it had never been accredited)
    assert error.message.endswith(f"it was revoked at height {revoked} already")


def test_issue_under_an_unregistered_methodology(chain: Chain) -> None:
    period = FEBRUARY
    valid = issue(chain, [(chain.alice, 10)], period=period)
    invalid = issue(chain, [(chain.alice, 10)], period=period, methodology_id="wind-power")
    check_one_change(chain, valid, invalid, "unknown_methodology")


def test_accredit_for_an_unregistered_methodology(chain: Chain) -> None:
    valid = as_authority(chain, "accredit_certifier", accreditation(chain.carol, [METHODOLOGY]))
    invalid = as_authority(
        chain, "accredit_certifier", accreditation(chain.carol, [METHODOLOGY, "wind-power"])
    )
    check_one_change(chain, valid, invalid, "unknown_methodology")
    register = {
        "methodology_id": "wind-power",
        "name": "Small wind",
        "document_sha256": hashlib.sha256(b"wind").hexdigest(),
    }
    built = commit_ok(chain, as_authority(chain, "register_methodology", register))
    assert chain.state.get("methodology/wind-power") == {**register, "height": built.block.height}
    commit_ok(
        chain,
        as_authority(
            chain, "accredit_certifier", accreditation(chain.carol, [METHODOLOGY, "wind-power"])
        ),
    )


def test_issue_outside_the_accreditation_scope(chain: Chain) -> None:
    period = FEBRUARY
    valid = issue(chain, [(chain.alice, 10)], period=period)
    invalid = issue(chain, [(chain.alice, 10)], period=period, methodology_id="rooftop-solar")
    check_one_change(chain, valid, invalid, "methodology_not_in_scope")


# --- double issuance (§3.3) --------------------------------------------------------------------


@pytest.mark.parametrize(
    "period",
    [
        ("2026-01-15", "2026-02-15"),  # overlaps the end
        ("2025-12-15", "2026-01-02"),  # overlaps the start by one day
        ("2026-01-01", "2026-02-01"),  # the same period
        ("2026-01-10", "2026-01-20"),  # inside
        ("2025-12-01", "2026-03-01"),  # around
    ],
)
def test_double_issuance_of_an_overlapping_period(chain: Chain, period: tuple[str, str]) -> None:
    valid = issue(chain, [(chain.carol, 10)], period=FEBRUARY)
    invalid = issue(chain, [(chain.carol, 10)], period=period)
    check_one_change(chain, valid, invalid, "double_issuance")


@pytest.mark.parametrize("period", [FEBRUARY, ("2025-12-01", "2026-01-01")])
def test_adjacent_periods_do_not_overlap(chain: Chain, period: tuple[str, str]) -> None:
    commit_ok(chain, issue(chain, [(chain.carol, 10)], period=period))
    entry = chain.state.get(f"issuance/{METHODOLOGY}/meter-0001")
    assert entry == [
        {"batch_id": "B-1", "period_start": JANUARY[0], "period_end": JANUARY[1]},
        {"batch_id": "B-2", "period_start": period[0], "period_end": period[1]},
    ]


def test_same_period_for_another_project(chain: Chain) -> None:
    valid = issue(chain, [(chain.carol, 10)], project_id="meter-0002")
    invalid = issue(chain, [(chain.carol, 10)])
    check_one_change(chain, valid, invalid, "double_issuance")


def test_same_period_under_another_methodology(chain: Chain) -> None:
    both = [METHODOLOGY, "rooftop-solar"]
    commit_ok(
        chain, as_authority(chain, "accredit_certifier", accreditation(chain.certifier, both))
    )
    commit_ok(
        chain,
        issue(chain, [(chain.carol, 10)], methodology_id="rooftop-solar"),
    )
    assert batch(chain, "B-2")["methodology_id"] == "rooftop-solar"


def test_double_issuance_by_another_certifier(chain: Chain) -> None:
    other = key("other-certifier")
    commit_ok(chain, as_authority(chain, "accredit_certifier", accreditation(other)))
    assert_rejected(
        chain, sign(chain, other, "issue", issuance([(chain.carol, 10)])), "double_issuance"
    )


def test_double_issuance_after_partial_invalidation(chain: Chain) -> None:
    commit_ok(chain, as_authority(chain, "invalidate", invalidation(chain.alice, 1000)))
    again = issue(chain, [(chain.carol, 10)])
    assert_rejected(chain, again, "double_issuance")
    # Retired units are not invalidated either: they still block the period.
    commit_ok(chain, sign(chain, chain.bob, "retire", retirement(1)))
    commit_ok(chain, as_authority(chain, "invalidate", invalidation(chain.bob, 499)))
    assert batch(chain)["invalidated"] == 1499
    assert_rejected(chain, again, "double_issuance")


def test_issuance_allowed_again_after_full_invalidation(chain: Chain) -> None:
    again = issue(chain, [(chain.carol, 10)])
    assert_rejected(chain, again, "double_issuance")
    commit_ok(chain, as_authority(chain, "invalidate", invalidation(chain.alice, 1000)))
    commit_ok(chain, as_authority(chain, "invalidate", invalidation(chain.bob, 500)))
    assert batch(chain)["invalidated"] == batch(chain)["issued"] == 1500
    commit_ok(chain, again)
    assert batch(chain, "B-2")["period_start"] == JANUARY[0]
    # B-2 now credits January: a third overlapping issue is refused again.
    third = issue(chain, [(chain.carol, 10)], period=("2026-01-20", "2026-02-10"))
    assert_rejected(chain, third, "double_issuance")


# --- holdings: double spending, retirement is terminal (§3.3) --------------------------------


def test_transfer_more_than_held(chain: Chain) -> None:
    valid = sign(chain, chain.alice, "transfer", transfer(chain.carol, 1000))
    invalid = sign(chain, chain.alice, "transfer", transfer(chain.carol, 1001))
    check_one_change(chain, valid, invalid, "insufficient_credits")


def test_transfer_from_an_account_that_holds_nothing(chain: Chain) -> None:
    valid = sign(chain, chain.alice, "transfer", transfer(chain.bob, 10))
    invalid = sign(chain, chain.carol, "transfer", transfer(chain.bob, 10))
    check_one_change(chain, valid, invalid, "insufficient_credits")


def test_double_retirement(chain: Chain) -> None:
    commit_ok(chain, sign(chain, chain.alice, "retire", retirement(600)))
    valid = sign(chain, chain.alice, "retire", retirement(400))
    invalid = sign(chain, chain.alice, "retire", retirement(401))
    check_one_change(chain, valid, invalid, "insufficient_credits")


def test_a_proposer_leaves_out_a_retirement_of_more_lots_than_a_receipt_proves(
    chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: a retirement's receipt proves each lot it retired, and verifiers
    read at most RETIREMENT_LOTS_MAX (1,000) of them; a holding fragmented by transfers gave
    a retirement of 1,001 lots whose receipt no verifier took. A proposer now leaves such a
    retirement out (`limit_exceeded`, with what to do); a block that holds one is still
    valid, as SPEC §3.3 says (docs/decisions/0004)."""
    assert receipts.RECEIPT_LOTS_MAX == RETIREMENT_LOTS_MAX
    assert OWN_RULES.retirement_lots_max == RETIREMENT_LOTS_MAX
    chain.rules = dataclasses.replace(OWN_RULES, retirement_lots_max=3)
    for _ in range(4):  # carol ends with serials 2, 4, 6 and 8: four lots
        commit_ok(chain, sign(chain, chain.alice, "transfer", transfer(chain.bob, 1)))
        commit_ok(chain, sign(chain, chain.alice, "transfer", transfer(chain.carol, 1)))
    too_many = sign(chain, chain.carol, "retire", retirement(4))
    before = chain.state
    built = chain.commit(too_many)  # the proposer's side only: a block is not invalid for it
    assert [(e.tx_id, error.code) for e, error in built.rejected] == [
        (too_many.tx_id, "limit_exceeded")
    ]
    assert built.block.transactions == () and built.state.log.size == before.log.size
    assert "would take more than 3 lots" in built.rejected[0][1].message
    assert "retire fewer units at once" in built.rejected[0][1].message
    commit_ok(chain, sign(chain, chain.carol, "retire", retirement(3)))  # three lots: taken
    # Validity is unchanged: a block another proposer built with such a retirement applies.
    bob_retires = sign(chain, chain.bob, "retire", retirement(504))  # {1}, {3}, {5}, {7}, rest
    assert next_block(chain, [bob_retires], rules=chain.rules).rejected
    block = next_block(chain, [bob_retires], rules=VALIDITY_ONLY).block
    assert block.transactions == (bob_retires,)
    after = apply_block(chain.state, block)
    (retired,) = [v for k, v in after.entries.items() if k.startswith("retirement/")
                  and v["holder"] == chain.bob.account_id]  # fmt: skip
    assert len(retired["serials"]) == 5
    # The auditor asks about it: a notice, naming the block's proposer.
    monkeypatch.setattr(verification, "RETIREMENT_LOTS_MAX", 3)
    assert list(verification.proposer_notices(block, after)) == [
        verification.ProposerNotice(
            height=block.height,
            proposer=block.header.proposer,
            tx_id=bob_retires.tx_id,
            reason="a retirement of 5 lots, over 3: no verifier reads its receipt",
        )
    ]
    monkeypatch.setattr(verification, "RETIREMENT_LOTS_MAX", 5)
    assert list(verification.proposer_notices(block, after)) == []


@pytest.mark.parametrize(
    "project_id",
    [
        "meter-0001\u200b",  # zero-width space
        "meter-0001\u2060",  # word joiner
        "\ufeffmeter-0001",  # byte order mark
        "\u202emeter-0001",  # right-to-left override
        "meter\u00a00001",  # no-break space
        "meter-0001 ",
        "caf\u0065\u0301-meter",  # e and a combining acute: "café" not in NFC
        "m\u0435ter-0001",  # a Cyrillic е among Latin letters
        "met\u0435r-\u03bf001",  # Cyrillic е and a Greek omicron
        "M\u13acTER-0001",  # Cherokee Ꭼ
        "carb\u0585n-01",  # Armenian օ
        "\U0001d426eter-0001",  # mathematical bold m
        # found by a later review: drawn as nothing, though not format characters
        "meter-0001\u034f",  # combining grapheme joiner
        "meter-0001\ufe0f",  # variation selector 16
        "meter-0001\U000e0100",  # variation selector 17
        "\u3164meter-0001",  # Hangul filler, a Hangul letter beside Latin ones
        "meter-0001\u2800",  # blank Braille pattern
        # ... or as another character of the id
        "meter\u20100001",  # hyphen
        "meter\u22120001",  # minus sign
        "meter-\U0001d7e2\U0001d7e2\U0001d7e2\U0001d7e3",  # mathematical sans-serif digits
        "meter-\uff10\uff10\uff10\uff11",  # fullwidth digits
        # found by the review of those: more dashes, and digits of other numbering systems
        "meter\u058a0001",  # Armenian hyphen
        "meter\u25000001",  # box drawing's horizontal line
        "meter-00\u09e61",  # a Bengali zero among ASCII digits
        "meter-\u09e6\u09e6\u09e6\u09e7",  # Bengali digits beside Latin letters
        "\u6dc4\u535a\u5149\u4f0f\u2161\u671f",  # 淄博光伏Ⅱ期: a Roman numeral for II
    ],
)
def test_a_proposer_leaves_out_an_issue_whose_project_id_hides_characters(
    chain: Chain, project_id: str
) -> None:
    """Found by review: "the same meter period can never be credited twice" (SPEC §3.3) is
    keyed on the project id's exact text, and a certifier credited one meter's January again
    under `meter-0001` with an invisible character added. A proposer now leaves out an id
    another could not tell from one without it; a block holding one is still valid
    (docs/decisions/0004)."""
    # the fixture's B-1 credits meter-0001 for January 2026
    again = chain.issue([(chain.carol, 10)], project_id=project_id)
    built = chain.commit(again)
    assert [(e.tx_id, error.code) for e, error in built.rejected] == [
        (again.tx_id, "invalid_field")
    ]
    assert "project_id" in built.rejected[0][1].message and built.block.transactions == ()
    # Another implementation's proposer may include it: the block applies here.
    issue = chain.issue([(chain.carol, 10)], project_id=project_id)
    block = next_block(chain, [issue], rules=VALIDITY_ONLY).block
    assert len(block.transactions) == 1
    after = apply_block(chain.state, block)
    # The auditor asks about it, for the proposer's own reason.
    (notice,) = verification.proposer_notices(block, after)
    reason = state_transition.project_id_objection(project_id)
    assert reason is not None and notice.reason == reason


@pytest.mark.parametrize(
    "project_id",
    [
        "淄博-张店-电表-0001",
        "caf\u00e9-meter",
        "site 7 / roof",
        "淄博-Zibo-0001",  # Han and Latin: nothing alike
        "Москва-01",  # one of the look-alike scripts, wholly
        "ΑΒΓ-001",
        "\u0561\u0563-01",  # Armenian, wholly
        "张·三-01",  # a middle dot: several scripts share it
        "\u0430\u0303-01",  # a Cyrillic а and a combining tilde: marks are no script's letters
        # fullwidth punctuation, as Chinese input methods type it (NFKC was a regression)
        "张店区热电厂（2号机组）",
        "1月\u301c3月",  # a wave dash is no hyphen
        "\u09e7\u09e8-\u09e9",  # Bengali digits alone
    ],
)
def test_readable_project_ids_in_any_script_are_taken(chain: Chain, project_id: str) -> None:
    built = chain.commit(chain.issue([(chain.carol, 10)], project_id=project_id))
    assert not built.rejected and len(built.block.transactions) == 1
    assert list(verification.proposer_notices(built.block, built.state)) == []


@pytest.mark.parametrize(
    ("project_id", "reason"),
    [
        (
            "m\u0435ter-0001",
            "project_id mixes Latin letters and U+0435 CYRILLIC SMALL LETTER IE (Cyrillic) at 1",
        ),
        (
            "\u0395\u0435-01",
            "project_id mixes Greek letters and U+0435 CYRILLIC SMALL LETTER IE (Cyrillic) at 1",
        ),
        (
            "M\u13acTER",
            "project_id mixes Latin letters and U+13AC CHEROKEE LETTER GV (another script) at 1",
        ),
        (
            "\u13acMT",
            "project_id mixes letters of another script and U+004D LATIN CAPITAL LETTER M"
            " (Latin) at 1",
        ),
    ],
)
def test_the_reason_names_both_scripts_and_the_letter_where_they_meet(
    project_id: str, reason: str
) -> None:
    assert state_transition.project_id_objection(project_id) == (
        f"{reason}: look-alike letters a reader could not tell apart"
    )


def test_retired_units_do_not_transfer(chain: Chain) -> None:
    commit_ok(chain, sign(chain, chain.bob, "retire", retirement(500)))
    assert_rejected(
        chain, sign(chain, chain.bob, "transfer", transfer(chain.alice, 1)), "insufficient_credits"
    )


def test_retired_units_cannot_be_invalidated(chain: Chain) -> None:
    envelope = as_authority(chain, "invalidate", invalidation(chain.bob, 1))
    assert_accepted(chain, envelope)
    commit_ok(chain, sign(chain, chain.bob, "retire", retirement(500)))
    assert_rejected(chain, envelope, "insufficient_credits")
    assert batch(chain)["retired"] == 500 and batch(chain)["invalidated"] == 0


def test_invalidation_takes_the_lowest_unretired_serials(chain: Chain) -> None:
    commit_ok(chain, sign(chain, chain.alice, "retire", retirement(600)))
    valid = as_authority(chain, "invalidate", invalidation(chain.alice, 400))
    invalid = as_authority(chain, "invalidate", invalidation(chain.alice, 401))
    check_one_change(chain, valid, invalid, "insufficient_credits")
    commit_ok(chain, as_authority(chain, "invalidate", invalidation(chain.alice, 100)))
    alice = chain.alice.account_id
    assert lots(chain)[:3] == [
        (1, 600, alice, "retired"),
        (601, 700, alice, "invalidated"),
        (701, 1000, alice, "circulating"),
    ]


def test_invalidated_units_do_not_transfer(chain: Chain) -> None:
    envelope = sign(chain, chain.bob, "transfer", transfer(chain.alice, 1))
    commit_ok(chain, as_authority(chain, "invalidate", invalidation(chain.bob, 500)))
    assert_rejected(chain, envelope, "insufficient_credits")


@pytest.mark.parametrize("kind", ["transfer", "retire", "invalidate"])
def test_unknown_batch(chain: Chain, kind: str) -> None:
    def envelope(batch_id: str) -> Envelope:
        if kind == "transfer":
            return sign(chain, chain.alice, kind, transfer(chain.carol, 1, batch_id))
        if kind == "retire":
            return sign(chain, chain.alice, kind, retirement(1, batch_id))
        return as_authority(chain, kind, invalidation(chain.alice, 1, batch_id))

    check_one_change(chain, envelope("B-1"), envelope("B-2"), "unknown_batch")


def test_self_transfer(chain: Chain) -> None:
    valid = sign(chain, chain.alice, "transfer", transfer(chain.bob, 10))
    invalid = sign(chain, chain.alice, "transfer", transfer(chain.alice, 10))
    check_one_change(chain, valid, invalid, "self_transfer")


# --- suspension (§3.3) -------------------------------------------------------------------------


def test_suspended_sender_cannot_transfer(chain: Chain) -> None:
    envelope = sign(chain, chain.bob, "transfer", transfer(chain.alice, 10))
    assert_accepted(chain, envelope)
    suspend(chain, chain.bob)
    assert_rejected(chain, envelope, "account_suspended")


def test_suspended_recipient_cannot_receive_a_transfer(chain: Chain) -> None:
    suspend(chain, chain.bob)
    valid = sign(chain, chain.alice, "transfer", transfer(chain.carol, 10))
    invalid = sign(chain, chain.alice, "transfer", transfer(chain.bob, 10))
    check_one_change(chain, valid, invalid, "account_suspended")


def test_suspended_recipient_cannot_receive_an_issue(chain: Chain) -> None:
    suspend(chain, chain.bob)
    period = FEBRUARY
    valid = issue(chain, [(chain.alice, 10), (chain.carol, 5)], period=period)
    invalid = issue(chain, [(chain.alice, 10), (chain.bob, 5)], period=period)
    check_one_change(chain, valid, invalid, "account_suspended")


def test_suspended_certifier_cannot_issue(chain: Chain) -> None:
    envelope = issue(chain, [(chain.alice, 10)], period=FEBRUARY)
    assert_accepted(chain, envelope)
    suspend(chain, chain.certifier)
    assert_rejected(chain, envelope, "account_suspended")


def test_suspended_holder_cannot_retire(chain: Chain) -> None:
    envelope = sign(chain, chain.bob, "retire", retirement(10))
    assert_accepted(chain, envelope)
    suspend(chain, chain.bob)
    assert_rejected(chain, envelope, "account_suspended")


def test_suspended_holder_credits_can_still_be_invalidated(chain: Chain) -> None:
    suspend(chain, chain.bob)
    commit_ok(chain, as_authority(chain, "invalidate", invalidation(chain.bob, 500)))
    assert batch(chain)["invalidated"] == 500


def test_suspending_twice(chain: Chain) -> None:
    payload = {"account": chain.bob.account_id, "reason": "audit"}
    valid = as_authority(chain, "suspend_account", payload)
    assert_accepted(chain, valid)
    suspend(chain, chain.bob)
    assert_rejected(chain, as_authority(chain, "suspend_account", payload), "account_suspended")


def test_reinstating_an_active_account(chain: Chain) -> None:
    payload = {"account": chain.bob.account_id, "reason": "cleared"}
    envelope = as_authority(chain, "reinstate_account", payload)
    assert_rejected(chain, envelope, "account_not_suspended")
    suspend(chain, chain.bob)
    commit_ok(chain, as_authority(chain, "reinstate_account", payload))
    assert account(chain, chain.bob.account_id)["status"] == "active"


def test_reinstated_account_sends_and_receives_again(chain: Chain) -> None:
    send = sign(chain, chain.bob, "transfer", transfer(chain.alice, 10))
    receive = sign(chain, chain.alice, "transfer", transfer(chain.bob, 20))
    suspend(chain, chain.bob)
    assert_rejected(chain, send, "account_suspended")
    assert_rejected(chain, receive, "account_suspended")
    commit_ok(
        chain,
        as_authority(chain, "reinstate_account", {"account": chain.bob.account_id, "reason": "ok"}),
    )
    commit_ok(chain, send, receive)
    assert held(chain, chain.bob) == 510 and held(chain, chain.alice) == 990


def test_suspended_account_may_still_set_keys(chain: Chain) -> None:
    suspend(chain, chain.bob)
    new = [key("bob-phone"), key("bob-laptop")]
    payload = {"keys": [k.public_key_hex for k in new], "threshold": 1}
    commit_ok(chain, sign(chain, chain.bob, "set_keys", payload))
    record = account(chain, chain.bob.account_id)
    assert record["status"] == "suspended"
    assert record["keys"] == sorted(k.public_key_hex for k in new) and record["nonce"] == 1
    # Still suspended for everything else, whatever key signs.
    send = sign(chain, new[0], "transfer", transfer(chain.alice, 1), signer=chain.bob.account_id)
    assert_rejected(chain, send, "account_suspended")


@pytest.mark.parametrize("kind", ["suspend_account", "reinstate_account"])
def test_unknown_account(chain: Chain, kind: str) -> None:
    if kind == "reinstate_account":
        suspend(chain, chain.bob)
    valid = as_authority(chain, kind, {"account": chain.bob.account_id, "reason": "x"})
    invalid = as_authority(chain, kind, {"account": chain.carol.account_id, "reason": "x"})
    check_one_change(chain, valid, invalid, "unknown_account")


def test_an_account_exists_once_it_receives(chain: Chain) -> None:
    payload = {"account": chain.carol.account_id, "reason": "x"}
    assert_rejected(chain, as_authority(chain, "suspend_account", payload), "unknown_account")
    commit_ok(chain, sign(chain, chain.alice, "transfer", transfer(chain.carol, 1)))
    assert account(chain, chain.carol.account_id) == {
        "keys": [],
        "threshold": 0,
        "nonce": 0,
        "status": "active",
    }
    commit_ok(chain, as_authority(chain, "suspend_account", payload))


# --- programmes (§3.2, §3.3) -------------------------------------------------------------------


def test_retire_into_an_unknown_programme(chain: Chain) -> None:
    valid = sign(chain, chain.alice, "retire", retirement(10, program_id=PROGRAM))
    invalid = sign(chain, chain.alice, "retire", retirement(10, program_id="zibo-ev-charging"))
    check_one_change(chain, valid, invalid, "unknown_program")


def test_retire_into_an_expired_programme(chain: Chain) -> None:
    valid_until = chain.time + 5000
    payload = {"program_id": "zibo-winter", "name": "Winter heating", "valid_until": valid_until}
    commit_ok(chain, as_authority(chain, "create_program", payload))
    envelope = sign(chain, chain.alice, "retire", retirement(10, program_id="zibo-winter"))
    assert_accepted(chain, envelope, advance_ms=valid_until - 1 - chain.time)
    assert_rejected(chain, envelope, "program_expired", advance_ms=valid_until - chain.time)
    # A voluntary retirement does not need the programme.
    commit_ok(chain, sign(chain, chain.alice, "retire", retirement(10)))


def test_create_programme_that_has_already_ended(chain: Chain) -> None:
    block_time = chain.time + 1000
    payload = {"program_id": "zibo-winter", "name": "Winter heating"}
    valid = as_authority(chain, "create_program", {**payload, "valid_until": block_time + 1})
    invalid = as_authority(chain, "create_program", {**payload, "valid_until": block_time})
    check_one_change(chain, valid, invalid, "program_expired", recheck=False)


def test_create_programme_twice(chain: Chain) -> None:
    payload = {"name": "Green home", "valid_until": FAR_FUTURE}
    valid = as_authority(chain, "create_program", {**payload, "program_id": "zibo-green-home-2"})
    invalid = as_authority(chain, "create_program", {**payload, "program_id": PROGRAM})
    check_one_change(chain, valid, invalid, "already_exists")
    assert chain.state.get(f"program/{PROGRAM}")["name"] == "Zibo green home incentive"


def test_register_methodology_twice(chain: Chain) -> None:
    payload = {"name": "Again", "document_sha256": hashlib.sha256(b"again").hexdigest()}
    valid = as_authority(chain, "register_methodology", {**payload, "methodology_id": "heat-pump"})
    invalid = as_authority(
        chain, "register_methodology", {**payload, "methodology_id": METHODOLOGY}
    )
    check_one_change(chain, valid, invalid, "already_exists")
    assert chain.state.get(f"methodology/{METHODOLOGY}")["name"] == "Household electricity saving"


# --- limits (§2.1, §3.3) -----------------------------------------------------------------------


def test_serial_numbers_never_pass_two_to_the_53_minus_1(chain: Chain) -> None:
    """B-1 took serials 1..1500; B-2 takes all but the last five serials of the chain."""
    assert chain.state.next_serial == 1501
    big = JSON_INTEGER_MAX - 1500 - 5
    commit_ok(
        chain,
        issue(chain, [(chain.alice, big)], project_id="meter-big"),
    )
    assert batch(chain, "B-2")["first_serial"] == 1501
    assert chain.state.next_serial == JSON_INTEGER_MAX - 4

    def last(quantity: int) -> Envelope:
        payload = issuance([(chain.bob, 2), (chain.carol, quantity)], project_id="meter-last")
        return sign(chain, chain.certifier, "issue", payload)

    valid, invalid = last(3), last(4)
    check_one_change(chain, valid, invalid, "limit_exceeded")
    commit_ok(chain, valid)
    assert lots(chain, "B-3") == [
        (JSON_INTEGER_MAX - 4, JSON_INTEGER_MAX - 3, chain.bob.account_id, "circulating"),
        (JSON_INTEGER_MAX - 2, JSON_INTEGER_MAX, chain.carol.account_id, "circulating"),
    ]
    one_more = issue(chain, [(chain.bob, 1)], project_id="meter-x")
    assert_rejected(chain, one_more, "limit_exceeded")
    assert chain.state.get("batch/B-4") is None


def test_single_issue_over_the_serial_space(chain: Chain) -> None:
    valid = issue(chain, [(chain.alice, JSON_INTEGER_MAX - 1500)], project_id="meter-big")
    invalid = issue(chain, [(chain.alice, JSON_INTEGER_MAX - 1499)], project_id="meter-big")
    check_one_change(chain, valid, invalid, "limit_exceeded")


# --- set_keys (§3.2) ---------------------------------------------------------------------------


def test_set_keys_replaces_the_key_set_and_keeps_the_id(chain: Chain) -> None:
    alice_id = chain.alice.account_id
    new = [key("alice-phone"), key("alice-laptop"), key("alice-safe")]
    payload: dict[str, Any] = {"keys": [k.public_key_hex for k in new], "threshold": 2}
    commit_ok(chain, sign(chain, chain.alice, "set_keys", payload))
    record = account(chain, alice_id)
    assert record == {
        "keys": sorted(k.public_key_hex for k in new),
        "threshold": 2,
        "nonce": 1,
        "status": "active",
    }
    assert alice_id != compute_account_id(payload["keys"], 2)  # the id does not follow the keys
    assert chain.state.get(f"account/{compute_account_id(payload['keys'], 2)}") is None

    two_new = sign(chain, new[:2], "transfer", transfer(chain.carol, 10), signer=alice_id)
    old_key = sign(chain, chain.alice, "transfer", transfer(chain.carol, 10))
    one_new = sign(chain, new[2:], "transfer", transfer(chain.carol, 10), signer=alice_id)
    new_and_old = sign(
        chain, [new[0], chain.alice], "transfer", transfer(chain.carol, 10), signer=alice_id
    )
    check_one_change(chain, two_new, old_key, "unknown_key")
    assert_rejected(chain, one_new, "insufficient_signatures")
    assert_rejected(chain, new_and_old, "unknown_key")
    commit_ok(chain, two_new)
    assert held(chain, alice_id) == 990 and held(chain, chain.carol) == 10
    assert lots(chain)[0] == (1, 10, chain.carol.account_id, "circulating")


def test_a_new_account_can_start_with_set_keys(chain: Chain) -> None:
    dave = key("dave")
    helpers = [key("dave-1"), key("dave-2")]
    payload: dict[str, Any] = {"keys": [k.public_key_hex for k in helpers], "threshold": 2}
    commit_ok(chain, sign(chain, dave, "set_keys", payload))
    assert account(chain, dave.account_id)["keys"] == sorted(payload["keys"])
    back = {"keys": [dave.public_key_hex], "threshold": 1}
    assert_rejected(chain, sign(chain, dave, "set_keys", back), "unknown_key")
    commit_ok(chain, sign(chain, helpers, "set_keys", back, signer=dave.account_id))
    assert account(chain, dave.account_id)["nonce"] == 2


def test_first_signature_records_the_derived_key(chain: Chain) -> None:
    commit_ok(chain, sign(chain, chain.alice, "transfer", transfer(chain.carol, 1)))
    assert account(chain, chain.alice.account_id) == {
        "keys": [chain.alice.public_key_hex],
        "threshold": 1,
        "nonce": 1,
        "status": "active",
    }


# --- effects: lots, serials, retirements, counters (§3.4) -------------------------------------


def test_transfer_moves_the_lowest_serials_and_splits_the_lot(chain: Chain) -> None:
    alice, bob, carol = chain.alice.account_id, chain.bob.account_id, chain.carol.account_id
    commit_ok(chain, sign(chain, chain.alice, "transfer", transfer(chain.carol, 100)))
    assert lots(chain) == [
        (1, 100, carol, "circulating"),
        (101, 1000, alice, "circulating"),
        (1001, 1500, bob, "circulating"),
    ]
    assert chain.state.get("lot/B-1/101") == {
        "batch_id": "B-1",
        "first_serial": 101,
        "quantity": 900,
        "owner": alice,
        "status": "circulating",
        "retirement_id": None,
    }
    commit_ok(chain, sign(chain, chain.alice, "transfer", transfer(chain.carol, 50)))
    # Carol's new serials 101..150 join her 1..100.
    assert lots(chain) == [
        (1, 150, carol, "circulating"),
        (151, 1000, alice, "circulating"),
        (1001, 1500, bob, "circulating"),
    ]
    assert batch(chain)["circulating"] == 1500


def test_adjacent_lots_of_one_owner_merge(chain: Chain) -> None:
    alice, bob = chain.alice.account_id, chain.bob.account_id
    commit_ok(chain, sign(chain, chain.alice, "transfer", transfer(chain.bob, 100)))
    assert lots(chain) == [
        (1, 100, bob, "circulating"),
        (101, 1000, alice, "circulating"),
        (1001, 1500, bob, "circulating"),
    ]
    commit_ok(chain, sign(chain, chain.alice, "transfer", transfer(chain.bob, 900)))
    assert lots(chain) == [(1, 1500, bob, "circulating")]
    assert [k for k in chain.state.entries if k.startswith("lot/")] == ["lot/B-1/1"]
    assert chain.state.holdings.get(("B-1", bob)) == (1,)
    assert chain.state.holdings.get(("B-1", alice)) is None
    assert chain.state.batch_lots["B-1"] == (1,)


def test_transfer_spanning_several_lots(chain: Chain) -> None:
    bob, carol = chain.bob.account_id, chain.carol.account_id
    commit_ok(chain, sign(chain, chain.alice, "transfer", transfer(chain.bob, 100)))
    commit_ok(chain, sign(chain, chain.bob, "transfer", transfer(chain.carol, 150)))
    assert lots(chain) == [
        (1, 100, carol, "circulating"),
        (101, 1000, chain.alice.account_id, "circulating"),
        (1001, 1050, carol, "circulating"),
        (1051, 1500, bob, "circulating"),
    ]


def test_issue_assigns_consecutive_ranges_in_order(chain: Chain) -> None:
    alice, bob, carol = chain.alice.account_id, chain.bob.account_id, chain.carol.account_id
    first = issue(chain, [(carol, 5), (alice, 7), (alice, 3), (bob, 1)], project_id="meter-0002")
    second = issue(chain, [(bob, 2)], project_id="meter-0003", nonce=first.tx.nonce + 1)
    built = commit_ok(chain, first, second)
    assert lots(chain, "B-2") == [
        (1501, 1505, carol, "circulating"),
        (1506, 1515, alice, "circulating"),  # two recipients' ranges of one owner merge
        (1516, 1516, bob, "circulating"),
    ]
    assert lots(chain, "B-3") == [(1517, 1518, bob, "circulating")]
    assert chain.state.next_serial == 1519 and chain.state.batch_count == 3
    b2 = batch(chain, "B-2")
    assert b2 == {
        "batch_id": "B-2",
        "methodology_id": METHODOLOGY,
        "project_id": "meter-0002",
        "period_start": JANUARY[0],
        "period_end": JANUARY[1],
        "evidence_sha256": first.tx.payload["evidence_sha256"],
        "certifier": chain.certifier.account_id,
        "first_serial": 1501,
        "issued": 16,
        "circulating": 16,
        "retired": 0,
        "invalidated": 0,
        "memo": None,
        "tx_id": first.tx_id,
        "height": built.block.height,
        "time": built.block.header.time,
    }


def test_retirement_record_and_retired_lots(chain: Chain) -> None:
    alice, bob = chain.alice.account_id, chain.bob.account_id
    commit_ok(chain, sign(chain, chain.alice, "transfer", transfer(chain.bob, 100)))
    # Bob holds 1..100 and 1001..1500: a retirement of 150 takes 1..100 and 1001..1050.
    envelope = sign(
        chain, chain.bob, "retire", retirement(150, program_id=PROGRAM, jurisdiction="CN-SD")
    )
    built = commit_ok(chain, envelope)
    assert chain.state.get(f"retirement/{envelope.tx_id}") == {
        "retirement_id": envelope.tx_id,
        "holder": bob,
        "batch_id": "B-1",
        "serials": [[1, 100], [1001, 1050]],
        "quantity": 150,
        "beneficiary": "Zhang household, Zhangdian district",
        "purpose": "incentive",
        "program_id": PROGRAM,
        "jurisdiction": "CN-SD",
        "memo": None,
        "height": built.block.height,
        "time": built.block.header.time,
    }
    assert lots(chain) == [
        (1, 100, bob, "retired"),
        (101, 1000, alice, "circulating"),
        (1001, 1050, bob, "retired"),
        (1051, 1500, bob, "circulating"),
    ]
    for start in (1, 1001):
        assert chain.state.get(f"lot/B-1/{start}")["retirement_id"] == envelope.tx_id
    assert chain.state.get(f"program/{PROGRAM}")["retired"] == 150
    b1 = batch(chain)
    assert (b1["circulating"], b1["retired"], b1["invalidated"]) == (1350, 150, 0)


def test_retired_lots_never_merge(chain: Chain) -> None:
    alice = chain.alice.account_id
    first = sign(chain, chain.alice, "retire", retirement(100))
    commit_ok(chain, first)
    second = sign(chain, chain.alice, "retire", retirement(100))
    commit_ok(chain, second)
    assert lots(chain)[:3] == [
        (1, 100, alice, "retired"),
        (101, 200, alice, "retired"),
        (201, 1000, alice, "circulating"),
    ]
    assert chain.state.get("lot/B-1/101")["retirement_id"] == second.tx_id
    assert chain.state.get(f"retirement/{second.tx_id}")["serials"] == [[101, 200]]
    voluntary = chain.state.get(f"retirement/{first.tx_id}")
    assert voluntary["purpose"] == "voluntary" and voluntary["program_id"] is None
    assert chain.state.get(f"program/{PROGRAM}")["retired"] == 0


def test_adjacent_invalidated_lots_of_one_holder_merge(chain: Chain) -> None:
    alice = chain.alice.account_id
    commit_ok(chain, as_authority(chain, "invalidate", invalidation(chain.alice, 100)))
    commit_ok(chain, sign(chain, chain.certifier, "invalidate", invalidation(chain.alice, 50)))
    assert lots(chain)[:2] == [(1, 150, alice, "invalidated"), (151, 1000, alice, "circulating")]
    assert chain.state.get("lot/B-1/101") is None


def test_programme_counter_sums_retirements(chain: Chain) -> None:
    commit_ok(
        chain,
        sign(chain, chain.alice, "retire", retirement(30, program_id=PROGRAM)),
        sign(chain, chain.bob, "retire", retirement(12, program_id=PROGRAM)),
        sign(chain, chain.bob, "retire", retirement(5), nonce=2),
    )
    assert chain.state.get(f"program/{PROGRAM}")["retired"] == 42


def test_batch_counters_add_up(chain: Chain) -> None:
    commit_ok(
        chain,
        sign(chain, chain.alice, "transfer", transfer(chain.carol, 300)),
        sign(chain, chain.bob, "retire", retirement(120)),
        as_authority(chain, "invalidate", invalidation(chain.alice, 200)),
    )
    commit_ok(chain, sign(chain, chain.carol, "retire", retirement(50, program_id=PROGRAM)))
    b1 = batch(chain)
    assert (b1["issued"], b1["circulating"], b1["retired"], b1["invalidated"]) == (
        1500,
        1130,
        170,
        200,
    )
    totals = {"circulating": 0, "retired": 0, "invalidated": 0}
    for first, last, _, status in lots(chain):
        totals[status] += last - first + 1
    assert totals == {k: b1[k] for k in totals}
    assert held(chain, chain.alice) == 500 and held(chain, chain.carol) == 250


def test_transactions_in_one_block_see_each_other(chain: Chain) -> None:
    carol, dave = chain.carol.account_id, key("dave").account_id
    commit_ok(
        chain,
        sign(chain, chain.alice, "transfer", transfer(carol, 100)),
        sign(chain, chain.carol, "transfer", transfer(dave, 60)),
        sign(chain, key("dave"), "retire", retirement(60)),
    )
    assert lots(chain)[:3] == [
        (1, 60, dave, "retired"),
        (61, 100, carol, "circulating"),
        (101, 1000, chain.alice.account_id, "circulating"),
    ]


# --- validator set changes (§3.2 H+2 rule, §5.2) -----------------------------------------------


def test_set_validators_governs_from_h_plus_2(chain: Chain) -> None:
    old = chain.state.current_validators()
    payload = _validators_payload(chain)
    new = tuple(
        sorted((Validator(**entry) for entry in payload["validators"]), key=lambda v: v.public_key)
    )
    old_hash, new_hash = compute_validators_hash(old), compute_validators_hash(new)
    assert old_hash != new_hash

    h = commit_ok(chain, as_authority(chain, "set_validators", payload))
    assert (h.block.header.validators_hash, h.block.header.next_validators_hash) == (
        old_hash,
        old_hash,
    )
    assert chain.state.get("validators/current") == [v.to_json() for v in old]
    assert chain.state.get("validators/next") == [v.to_json() for v in new]

    centre = key("validator-centre")
    # H+1 is still governed by the old set: the new validator may not propose it.
    proposed_early = build_block(
        chain.state,
        [],
        time=chain.time + 1000,
        proposer=centre.public_key_hex,
        last_commit=chain.last_certificate,
    )
    with pytest.raises(InvalidBlockError) as caught:
        apply_block(chain.state, proposed_early.block)
    assert caught.value.rule == "proposer"

    h1 = commit_ok(chain)
    assert (h1.block.header.validators_hash, h1.block.header.next_validators_hash) == (
        old_hash,
        new_hash,
    )
    assert chain.state.get("validators/current") == [v.to_json() for v in new]
    assert chain.state.get("validators/next") == [v.to_json() for v in new]

    # H+2: the new set governs, so the new validator may propose it.
    h2 = build_block(
        chain.state,
        [],
        time=chain.time + 1000,
        proposer=centre.public_key_hex,
        last_commit=chain.last_certificate,
    )
    assert (h2.block.header.validators_hash, h2.block.header.next_validators_hash) == (
        new_hash,
        new_hash,
    )
    assert apply_block(chain.state, h2.block).state_root == h2.state.state_root
    # The certificate of H+2 is checked (in H+3) against the new set: the old validator's
    # power 3 of 4 is a quorum, the new one's 1 of 4 is not.
    strong = sign_certificate(
        chain_id=CHAIN_ID,
        height=h2.block.height,
        round=0,
        block_hash=h2.block.block_hash(),
        keys=[chain.validator],
    )
    weak = dataclasses.replace(
        strong,
        signatures=sign_certificate(
            chain_id=CHAIN_ID,
            height=h2.block.height,
            round=0,
            block_hash=h2.block.block_hash(),
            keys=[centre],
        ).signatures,
    )
    for certificate, accepted in ((strong, True), (weak, False)):
        h3 = build_block(
            h2.state,
            [],
            time=h2.block.header.time + 1000,
            proposer=chain.validator.public_key_hex,
            last_commit=certificate,
        )
        if accepted:
            assert apply_block(h2.state, h3.block).height == h2.block.height + 1
        else:
            with pytest.raises(InvalidBlockError) as refused:
                apply_block(h2.state, h3.block)
            assert refused.value.rule == "last_commit"


def test_two_validator_changes_in_consecutive_blocks(chain: Chain) -> None:
    first = _validators_payload(chain)
    second = {
        "validators": [
            {"public_key": chain.validator.public_key_hex, "power": 5, "name": "city"},
            {"public_key": key("validator-grid").public_key_hex, "power": 1, "name": "grid"},
        ]
    }
    commit_ok(chain, as_authority(chain, "set_validators", first))
    commit_ok(chain, as_authority(chain, "set_validators", second))

    def entries(payload: dict[str, Any]) -> list[dict[str, Any]]:
        return sorted(payload["validators"], key=lambda v: v["public_key"])

    assert chain.state.get("validators/current") == entries(first)
    assert chain.state.get("validators/next") == entries(second)
    commit_ok(chain)
    assert chain.state.get("validators/current") == entries(second)


def test_all_authority_and_holder_types_in_one_block(chain: Chain) -> None:
    """A block may mix every type; each one is applied in order, and the roots agree."""
    kinds = set()
    envelopes: list[Envelope] = []
    nonces = itertools.count(committed_nonce(chain, chain.authority_id) + 1)

    def authority(kind: str, payload: dict[str, Any]) -> None:
        envelopes.append(
            chain.tx(
                chain.authority_keys[:2],
                kind,
                payload,
                signer=chain.authority_id,
                nonce=next(nonces),
            )
        )
        kinds.add(kind)

    for kind in sorted(AUTHORITY_CASES):
        if kind != "reinstate_account":
            authority(kind, AUTHORITY_CASES[kind][1](chain))
    authority("reinstate_account", {"account": chain.bob.account_id, "reason": "cleared"})
    authority("invalidate", invalidation(chain.alice, 5))
    envelopes.append(sign(chain, chain.alice, "transfer", transfer(chain.carol, 10)))
    envelopes.append(sign(chain, chain.alice, "retire", retirement(10), nonce=2))
    envelopes.append(
        sign(chain, chain.carol, "set_keys", {"keys": [chain.carol.public_key_hex], "threshold": 1})
    )
    built = commit_ok(chain, *envelopes)
    assert len(built.block.transactions) == len(envelopes) == 11
    assert batch(chain)["invalidated"] == 5 and batch(chain)["retired"] == 10
    assert kinds == AUTHORITY_TYPES | {"invalidate"}
