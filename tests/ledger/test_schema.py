"""Field rules of the twelve transaction types and the envelope (SPEC §2.1, §3.1, §3.2).

Each error test starts from a valid envelope, changes one thing, and expects exactly one code.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from ledger.crypto import FIELD_P, SMALL_ORDER_Y, TX_DOMAIN, PrivateKey
from ledger.encoding import canonical, canonical_unchecked, decode
from ledger.errors import DecodeError, FieldError, LedgerError
from ledger.limits import (
    ACCOUNT_KEYS_MAX,
    ACCREDITATION_METHODOLOGIES_MAX,
    ISSUE_RECIPIENTS_MAX,
    JSON_INTEGER_MAX,
    TRANSACTION_BYTES_MAX_CEILING,
    TRANSACTION_BYTES_MAX_DEFAULT,
    TRANSACTION_SIGNATURES_MAX,
    VALIDATORS_MAX,
)
from ledger.transactions import (
    PAYLOADS,
    Envelope,
    Transaction,
    decode_envelope,
    parse_envelope,
    sign_transaction,
    verify_envelope_signatures,
)
from tests.factory import CHAIN_ID, FAR_FUTURE, key

ALICE, BOB = key("alice"), key("bob")
KEY_POOL = [key(f"schema-{i}") for i in range(24)]
PUBLIC_KEYS = sorted(k.public_key_hex for k in KEY_POOL)
DOC = hashlib.sha256(b"document").hexdigest()
SMALL_ORDER_KEY = (sorted(SMALL_ORDER_Y)[-1]).to_bytes(32, "little").hex()
NON_CANONICAL_KEY = (FIELD_P + 5).to_bytes(32, "little").hex()
Path = tuple[str | int, ...]

VALID: dict[str, dict[str, Any]] = {
    "register_methodology": {
        "methodology_id": "household-electricity",
        "name": "Household electricity saving",
        "document_sha256": DOC,
    },
    "accredit_certifier": {
        "certifier": BOB.account_id,
        "name": "National quality certification centre",
        "methodologies": ["household-electricity", "rooftop-solar"],
        "valid_from": 0,
        "valid_until": FAR_FUTURE,
    },
    "revoke_certifier": {"certifier": BOB.account_id, "reason": "accreditation lapsed"},
    "create_program": {
        "program_id": "zibo-green-home",
        "name": "Zibo green home incentive",
        "valid_until": FAR_FUTURE,
    },
    "suspend_account": {"account": BOB.account_id, "reason": "under investigation"},
    "reinstate_account": {"account": BOB.account_id, "reason": "cleared"},
    "set_validators": {
        "validators": [
            {"public_key": PUBLIC_KEYS[0], "power": 1, "name": "city"},
            {"public_key": PUBLIC_KEYS[1], "power": 1000, "name": "certification centre"},
        ]
    },
    "issue": {
        "methodology_id": "household-electricity",
        "project_id": "meter-0001",
        "period_start": "2026-01-01",
        "period_end": "2026-02-01",
        "evidence_sha256": DOC,
        "recipients": [
            {"account": ALICE.account_id, "quantity": 1000},
            {"account": BOB.account_id, "quantity": 500},
        ],
        "memo": "January readings",
    },
    "transfer": {"to": BOB.account_id, "batch_id": "B-1", "quantity": 10, "memo": "gift"},
    "retire": {
        "batch_id": "B-1",
        "quantity": 5,
        "beneficiary": "Li Wei's household",
        "purpose": "incentive",
        "program_id": "zibo-green-home",
        "jurisdiction": "CN-SD",
        "memo": "redeemed for a discount",
    },
    "invalidate": {
        "batch_id": "B-1",
        "holder": ALICE.account_id,
        "quantity": 3,
        "reason": "meter fault",
    },
    "set_keys": {"keys": PUBLIC_KEYS[:3], "threshold": 2},
}
OPTIONAL = {("issue", "memo"), ("transfer", "memo"), ("retire", "jurisdiction"), ("retire", "memo")}
FREE_TEXT = {"name", "reason", "memo", "beneficiary", "project_id"}
SLUGS = {"methodology_id", "program_id", "methodologies"}
HEXES = {"document_sha256", "evidence_sha256", "certifier", "account", "to", "holder"}


def test_every_type_has_a_valid_example() -> None:
    assert set(VALID) == set(PAYLOADS)
    assert len(PAYLOADS) == 12


def make_tx(kind: str, payload: Any, **changes: Any) -> dict[str, Any]:
    tx = {"chain_id": CHAIN_ID, "type": kind, "signer": ALICE.account_id, "nonce": 1}
    return {**tx, "payload": payload, **changes}


def parse(
    tx: Any, *, signatures: Any = (), bytes_max: int = TRANSACTION_BYTES_MAX_CEILING
) -> Envelope:
    return parse_envelope(
        {"tx": tx, "signatures": list(signatures)}, transaction_bytes_max=bytes_max
    )


def expect(code: str, tx: Any, **kwargs: Any) -> FieldError:
    with pytest.raises(FieldError) as caught:
        parse(tx, **kwargs)
    assert caught.value.code == code, caught.value.message
    return caught.value


def expect_payload(code: str, kind: str, payload: Any) -> FieldError:
    return expect(code, make_tx(kind, payload))


def walk(value: Any, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Every (path, value) inside `value`; for arrays, their first item stands for all."""
    if isinstance(value, dict):
        for name, item in value.items():
            yield (*prefix, name), item
            yield from walk(item, (*prefix, name))
    elif isinstance(value, list) and value:
        yield (*prefix, 0), value[0]
        yield from walk(value[0], (*prefix, 0))


def objects(value: Any, prefix: Path = ()) -> Iterator[Path]:
    if isinstance(value, dict):
        yield prefix
    for path, item in walk(value, prefix):
        if isinstance(item, dict):
            yield path


def value_at(value: Any, path: Path) -> Any:
    for step in path:
        value = value[step]
    return value


def replaced(value: Any, path: Path, new: Any) -> Any:
    result = copy.deepcopy(value)
    target = result
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = new
    return result


def removed(value: Any, path: Path) -> Any:
    result = copy.deepcopy(value)
    target = result
    for step in path[:-1]:
        target = target[step]
    del target[path[-1]]
    return result


def with_payload(kind: str, path: Path, new: Any) -> dict[str, Any]:
    return make_tx(kind, replaced(VALID[kind], path, new))


def payload_paths(test: Any = lambda path, value: True) -> list[tuple[str, Path]]:
    return [
        (kind, path)
        for kind, payload in VALID.items()
        for path, value in walk(payload)
        if test(path, value)
    ]


def last_name(path: Path) -> str:
    return next(str(step) for step in reversed(path) if isinstance(step, str))


def params(cases: list[tuple[Any, ...]]) -> list[Any]:
    """pytest parameters named like `issue.recipients.0.account`."""
    return [
        pytest.param(
            *case,
            id=".".join([case[0], *map(str, case[1])]) + "".join(f"={value}" for value in case[2:]),
        )
        for case in cases
    ]


# --- valid input ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(VALID))
def test_valid_payload_parses(kind: str) -> None:
    tx = make_tx(kind, VALID[kind])
    transaction = Transaction(**{**tx, "payload": copy.deepcopy(VALID[kind])})
    envelope = sign_transaction(transaction, [ALICE, BOB])
    parsed = parse_envelope(
        decode(canonical(envelope.to_json())), transaction_bytes_max=TRANSACTION_BYTES_MAX_DEFAULT
    )
    assert parsed == envelope
    assert parsed.tx.payload == VALID[kind]
    assert parsed.tx_id == hashlib.sha256(TX_DOMAIN + canonical(tx)).hexdigest()
    verify_envelope_signatures(parsed)


@pytest.mark.parametrize(("kind", "name"), sorted(OPTIONAL))
def test_optional_fields_may_be_absent(kind: str, name: str) -> None:
    assert parse(make_tx(kind, removed(VALID[kind], (name,)))).tx.payload == removed(
        VALID[kind], (name,)
    )


# --- unknown, missing and mistyped fields ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "path"),
    params([(kind, path) for kind, payload in VALID.items() for path in objects(payload)]),
)
def test_unknown_field_in_any_payload_object(kind: str, path: Path) -> None:
    payload = copy.deepcopy(VALID[kind])
    target: Any = payload
    for step in path:
        target = target[step]
    target["extra"] = 1
    error = expect_payload("invalid_field", kind, payload)
    assert "extra" in error.message


def test_unknown_field_in_tx_envelope_and_signature() -> None:
    tx = make_tx("transfer", VALID["transfer"])
    expect("invalid_field", {**tx, "fee": 1})
    with pytest.raises(FieldError) as caught:
        parse_envelope(
            {"tx": tx, "signatures": [], "meta": {}},
            transaction_bytes_max=TRANSACTION_BYTES_MAX_DEFAULT,
        )
    assert caught.value.code == "invalid_field"
    signature = {"public_key": PUBLIC_KEYS[0], "signature": "00" * 64, "note": "x"}
    expect("invalid_field", tx, signatures=[signature])


def test_outside_input_is_quoted_in_a_message_at_bounded_length() -> None:
    """Found by review: a 3 MB transaction type or unknown key was quoted whole, a 3 MB
    line on `tanlian verify receipt`'s stderr; an integer of over 4,300 digits could not be
    written at all (ValueError)."""
    tx = make_tx("transfer", VALID["transfer"])
    errors = [
        expect("invalid_field", {**tx, "type": "A" * 3_000_000}),
        expect("invalid_field", {**tx, "k" * 3_000_000: 1}),
        expect("invalid_field", {**tx, "nonce": -(10**5000)}),
        expect_payload("limit_exceeded", "transfer", {**VALID["transfer"], "quantity": 10**5000}),
    ]
    for error in errors:
        assert len(error.message) < 300, error.message[:300]
    assert "'AAAA" in errors[0].message and "'kkkk" in errors[1].message
    assert "a negative integer of 16610 bits is below the minimum" in errors[2].message


def required_field_paths() -> list[tuple[str, Path]]:
    """The path of every field of every object in every payload, but the optional ones."""
    cases = []
    for kind, payload in VALID.items():
        for object_path in objects(payload):
            for name in value_at(payload, object_path):
                if object_path or (kind, name) not in OPTIONAL:
                    cases.append((kind, (*object_path, name)))
    return cases


@pytest.mark.parametrize(("kind", "path"), params(required_field_paths()))
def test_each_required_field_missing(kind: str, path: Path) -> None:
    expect_payload("invalid_field", kind, removed(VALID[kind], path))


@pytest.mark.parametrize("name", ["chain_id", "type", "signer", "nonce", "payload"])
def test_each_required_tx_field_missing(name: str) -> None:
    expect("invalid_field", removed(make_tx("transfer", VALID["transfer"]), (name,)))


def test_envelope_fields_missing() -> None:
    tx = make_tx("transfer", VALID["transfer"])
    values: list[dict[str, Any]] = [{"tx": tx}, {"signatures": []}, {}]
    for value in values:
        with pytest.raises(FieldError) as caught:
            parse_envelope(value, transaction_bytes_max=TRANSACTION_BYTES_MAX_DEFAULT)
        assert caught.value.code == "invalid_field"


WRONG_TYPES: list[Any] = [None, True, 7, "7", [], {}, [7], {"a": 1}]


def wrong_types_for(value: Any) -> list[Any]:
    return [candidate for candidate in WRONG_TYPES if type(candidate) is not type(value)]


@pytest.mark.parametrize(("kind", "path"), params(payload_paths()))
def test_wrong_type_anywhere_in_a_payload(kind: str, path: Path) -> None:
    original = value_at(VALID[kind], path)
    for candidate in wrong_types_for(original):
        error = expect_payload("invalid_field", kind, replaced(VALID[kind], path, candidate))
        assert error.path.startswith("tx.payload"), error.path


@pytest.mark.parametrize("name", ["chain_id", "type", "signer", "nonce", "payload"])
def test_wrong_type_in_tx(name: str) -> None:
    tx = make_tx("transfer", VALID["transfer"])
    for candidate in wrong_types_for(tx[name]):
        expect("invalid_field", {**tx, name: candidate})


@pytest.mark.parametrize("value", [None, 1, "x", [], True])
def test_envelope_and_tx_must_be_objects(value: Any) -> None:
    expect("invalid_field", value)
    with pytest.raises(FieldError) as caught:
        parse_envelope(value, transaction_bytes_max=TRANSACTION_BYTES_MAX_DEFAULT)
    assert caught.value.code == "invalid_field"


def test_signatures_must_be_an_array_of_objects() -> None:
    tx = make_tx("transfer", VALID["transfer"])
    signatures: Any
    for signatures in ({}, "x", None, 1):
        with pytest.raises(FieldError) as caught:
            parse_envelope(
                {"tx": tx, "signatures": signatures},
                transaction_bytes_max=TRANSACTION_BYTES_MAX_DEFAULT,
            )
        assert caught.value.code == "invalid_field"
    expect("invalid_field", tx, signatures=["00" * 64])


def test_payload_of_another_type_is_invalid() -> None:
    expect("invalid_field", make_tx("transfer", VALID["retire"]))
    expect("invalid_field", make_tx("burn", VALID["transfer"]))


# --- limits -----------------------------------------------------------------------------------

STRING_LIMITS = [
    (
        kind,
        path,
        {"name": 200, "beneficiary": 200, "reason": 500, "memo": 500}.get(
            last_name(path), 128 if last_name(path) == "project_id" else 63
        ),
    )
    for kind, path in payload_paths(
        lambda path, value: isinstance(value, str) and last_name(path) in FREE_TEXT | SLUGS
    )
]


@pytest.mark.parametrize(("kind", "path", "limit"), params(STRING_LIMITS))
def test_string_over_its_limit(kind: str, path: Path, limit: int) -> None:
    filler = "a" if last_name(path) in SLUGS else "碳"
    assert parse(with_payload(kind, path, filler * limit)).tx.payload is not None
    expect("limit_exceeded", with_payload(kind, path, filler * (limit + 1)))


def test_every_free_text_and_slug_field_has_a_limit_test() -> None:
    names = {last_name(path) for _, path, _ in STRING_LIMITS}
    assert names == FREE_TEXT | SLUGS
    assert len(STRING_LIMITS) == 18


def many_slugs(count: int) -> list[str]:
    return [f"method-{i}" for i in range(count)]


def many_validators(count: int) -> list[dict[str, Any]]:
    return [
        {"public_key": key(f"validator-{i}").public_key_hex, "power": 1, "name": f"v{i}"}
        for i in range(count)
    ]


def many_recipients(count: int) -> list[dict[str, Any]]:
    return [{"account": ALICE.account_id, "quantity": 1} for _ in range(count)]


def many_keys(count: int) -> list[str]:
    return sorted(key(f"owner-{i}").public_key_hex for i in range(count))


@pytest.mark.parametrize(
    ("kind", "name", "make", "limit"),
    [
        ("accredit_certifier", "methodologies", many_slugs, ACCREDITATION_METHODOLOGIES_MAX),
        ("set_validators", "validators", many_validators, VALIDATORS_MAX),
        ("issue", "recipients", many_recipients, ISSUE_RECIPIENTS_MAX),
        ("set_keys", "keys", many_keys, ACCOUNT_KEYS_MAX),
    ],
    ids=lambda value: getattr(value, "__name__", str(value)),
)
def test_array_over_its_limit(kind: str, name: str, make: Any, limit: int) -> None:
    items = make(limit + 1)
    at_limit = parse(with_payload(kind, (name,), items[:limit]))
    assert len(at_limit.tx.payload[name]) == limit
    expect("limit_exceeded", with_payload(kind, (name,), items))
    expect("invalid_field", with_payload(kind, (name,), []))


def test_too_many_signatures() -> None:
    keys = [key(f"signer-{i}") for i in range(TRANSACTION_SIGNATURES_MAX + 1)]
    tx = make_tx("transfer", VALID["transfer"])
    transaction = Transaction(**tx)
    at_limit = sign_transaction(transaction, keys[:TRANSACTION_SIGNATURES_MAX]).to_json()
    assert len(parse(tx, signatures=at_limit["signatures"]).signatures) == 10
    over = sign_transaction(transaction, keys).to_json()
    expect("limit_exceeded", tx, signatures=over["signatures"])


@pytest.mark.parametrize(
    ("kind", "path", "value", "code"),
    [
        ("transfer", ("quantity",), 0, "invalid_field"),
        ("transfer", ("quantity",), JSON_INTEGER_MAX + 1, "limit_exceeded"),
        ("retire", ("quantity",), 0, "invalid_field"),
        ("invalidate", ("quantity",), 0, "invalid_field"),
        ("issue", ("recipients", 0, "quantity"), 0, "invalid_field"),
        ("set_validators", ("validators", 0, "power"), 0, "invalid_field"),
        ("set_validators", ("validators", 0, "power"), 1001, "limit_exceeded"),
        ("set_keys", ("threshold",), 0, "invalid_field"),
        ("set_keys", ("threshold",), ACCOUNT_KEYS_MAX + 1, "limit_exceeded"),
        ("create_program", ("valid_until",), JSON_INTEGER_MAX + 1, "limit_exceeded"),
    ],
    ids=str,
)
def test_integer_bounds(kind: str, path: Path, value: int, code: str) -> None:
    expect(code, with_payload(kind, path, value))


def test_integer_upper_bounds_accepted() -> None:
    assert parse(with_payload("transfer", ("quantity",), JSON_INTEGER_MAX)).tx.nonce == 1
    assert parse(with_payload("set_validators", ("validators", 0, "power"), 1000)).tx.nonce == 1


def test_issue_quantities_summing_over_the_integer_range() -> None:
    recipients = [
        {"account": ALICE.account_id, "quantity": JSON_INTEGER_MAX},
        {"account": BOB.account_id, "quantity": 1},
    ]
    expect("limit_exceeded", with_payload("issue", ("recipients",), recipients))
    recipients[0]["quantity"] = JSON_INTEGER_MAX - 1
    assert parse(with_payload("issue", ("recipients",), recipients)).tx.type == "issue"


# --- formats ----------------------------------------------------------------------------------

FREE_TEXT_PATHS = payload_paths(lambda path, value: last_name(path) in FREE_TEXT)


@pytest.mark.parametrize(("kind", "path"), params(FREE_TEXT_PATHS))
@pytest.mark.parametrize(
    "bad", ["a\x00b", "line\nbreak", "tab\there", "\x7f", "esc\x1b[31m", "nel\x85"], ids=repr
)
def test_control_character_in_free_text(kind: str, path: Path, bad: str) -> None:
    expect("invalid_field", with_payload(kind, path, bad))


@pytest.mark.parametrize(("kind", "path"), params(FREE_TEXT_PATHS))
def test_free_text_may_not_be_empty_but_may_be_any_language(kind: str, path: Path) -> None:
    expect("invalid_field", with_payload(kind, path, ""))
    assert parse(with_payload(kind, path, "淄博 ‘green’ 🏠")).tx.type == kind


SLUG_PATHS = payload_paths(lambda path, value: last_name(path) in SLUGS and isinstance(value, str))


@pytest.mark.parametrize(("kind", "path"), params(SLUG_PATHS))
def test_bad_slug(kind: str, path: Path) -> None:
    for bad in ["Household", "household-Electricity", "-abc", "a", "", "ab_c", "ab c", "ab.c"]:
        expect("invalid_field", with_payload(kind, path, bad))
    expect("limit_exceeded", with_payload(kind, path, "a" * 64))
    for good in ["ab", "a-", "0a", "a" * 63, "9-9-9"]:
        assert parse(with_payload(kind, path, good)).tx.type == kind


HEX_PATHS = payload_paths(lambda path, value: last_name(path) in HEXES)


@pytest.mark.parametrize(("kind", "path"), params(HEX_PATHS))
def test_bad_hex(kind: str, path: Path) -> None:
    good = value_at(VALID[kind], path)
    for bad in [good.upper(), good[:63], "g" * 64, " " + good[:63], good[:62] + "0x", ""]:
        expect("invalid_field", with_payload(kind, path, bad))
    expect("limit_exceeded", with_payload(kind, path, good + "0"))


def test_bad_hex_in_tx_and_signatures() -> None:
    tx = make_tx("transfer", VALID["transfer"])
    expect("invalid_field", {**tx, "signer": ALICE.account_id.upper()})
    expect("invalid_field", {**tx, "signer": ALICE.account_id[:63]})
    valid = sign_transaction(Transaction(**tx), [ALICE]).to_json()["signatures"][0]
    for field in ("public_key", "signature"):
        for bad in (valid[field].upper(), valid[field][:-1]):
            expect("invalid_field", tx, signatures=[{**valid, field: bad}])


KEY_PATHS = [("set_keys", ("keys", 0)), ("set_validators", ("validators", 0, "public_key"))]


@pytest.mark.parametrize(("kind", "path"), params(KEY_PATHS))
@pytest.mark.parametrize(
    "bad",
    [
        *[y.to_bytes(32, "little").hex() for y in sorted(SMALL_ORDER_Y)],
        (1 | 1 << 255).to_bytes(32, "little").hex(),
        NON_CANONICAL_KEY,
        PUBLIC_KEYS[5].upper(),
        PUBLIC_KEYS[5][:63],
    ],
)
def test_bad_public_key(kind: str, path: Path, bad: str) -> None:
    expect("invalid_field", with_payload(kind, path, bad))


@pytest.mark.parametrize(
    "bad",
    [
        *["2026-02-30", "2025-02-29", "2026-1-01", "2026-13-01", "2026-00-10", "2026/01/01"],
        *["20260101", "0000-01-01", "２０２６-01-01", ""],
    ],
)
@pytest.mark.parametrize("name", ["period_start", "period_end"])
def test_bad_dates(name: str, bad: str) -> None:
    expect("invalid_field", with_payload("issue", (name,), bad))


@pytest.mark.parametrize(
    ("start", "end", "code"),
    [
        ("2026-02-01", "2026-01-01", "invalid_field"),
        ("2026-01-01", "2026-01-01", "invalid_field"),
        ("2024-01-01", "2025-01-02", "limit_exceeded"),  # 367 days
        ("2026-01-01", "2030-01-01", "limit_exceeded"),
    ],
)
def test_bad_periods(start: str, end: str, code: str) -> None:
    payload = {**VALID["issue"], "period_start": start, "period_end": end}
    expect_payload(code, "issue", payload)


@pytest.mark.parametrize(
    ("start", "end"),
    [("2024-01-01", "2025-01-01"), ("2025-01-01", "2026-01-02"), ("2026-01-31", "2026-02-01")],
)
def test_periods_up_to_366_days(start: str, end: str) -> None:
    days = (datetime.date.fromisoformat(end) - datetime.date.fromisoformat(start)).days
    assert 1 <= days <= 366
    payload = {**VALID["issue"], "period_start": start, "period_end": end}
    assert parse(make_tx("issue", payload)).tx.payload["period_end"] == end


@pytest.mark.parametrize("bad", ["B-0", "B-01", "b-1", "B-", "B1", "B-1a", "B--1", "C-1"])
@pytest.mark.parametrize("kind", ["transfer", "retire", "invalidate"])
def test_bad_batch_id(kind: str, bad: str) -> None:
    expect("invalid_field", with_payload(kind, ("batch_id",), bad))


@pytest.mark.parametrize("bad", ["cn-sd", "CNSD", "CN-", "C-SD", "CHN-SD", "CN_SD"])
def test_bad_jurisdiction(bad: str) -> None:
    expect("invalid_field", with_payload("retire", ("jurisdiction",), bad))


# --- rules between fields ---------------------------------------------------------------------


def test_retire_purpose_and_program() -> None:
    retire = VALID["retire"]
    expect_payload("invalid_field", "retire", removed(retire, ("program_id",)))
    for purpose in ("voluntary", "compliance"):
        expect_payload("invalid_field", "retire", {**retire, "purpose": purpose})
        payload = {**removed(retire, ("program_id",)), "purpose": purpose}
        assert parse(make_tx("retire", payload)).tx.payload["purpose"] == purpose
    expect_payload("invalid_field", "retire", {**retire, "purpose": "Incentive"})
    expect_payload("invalid_field", "retire", {**retire, "purpose": "offset"})


def test_set_keys_threshold_and_keys() -> None:
    keys = PUBLIC_KEYS[:3]
    expect_payload("invalid_field", "set_keys", {"keys": keys, "threshold": 4})
    expect_payload("invalid_field", "set_keys", {"keys": keys[:1], "threshold": 2})
    assert parse(make_tx("set_keys", {"keys": keys, "threshold": 3})).tx.type == "set_keys"
    expect_payload(
        "invalid_field", "set_keys", {"keys": [keys[0], keys[1], keys[0]], "threshold": 1}
    )
    expect_payload(
        "invalid_field", "set_keys", {"keys": [keys[0], SMALL_ORDER_KEY], "threshold": 1}
    )


def test_set_validators_refuses_a_key_twice() -> None:
    validators = VALID["set_validators"]["validators"]
    twice = [validators[0], {**validators[1], "public_key": validators[0]["public_key"]}]
    expect_payload("invalid_field", "set_validators", {"validators": twice})


def test_accreditation_window_and_methodologies() -> None:
    accredit = VALID["accredit_certifier"]
    expect_payload("invalid_field", "accredit_certifier", {**accredit, "valid_from": FAR_FUTURE})
    expect_payload(
        "invalid_field", "accredit_certifier", {**accredit, "valid_from": FAR_FUTURE + 1}
    )
    methodologies = ["rooftop-solar", "rooftop-solar"]
    expect_payload(
        "invalid_field", "accredit_certifier", {**accredit, "methodologies": methodologies}
    )


@pytest.mark.parametrize(
    ("name", "value", "code"),
    [
        ("chain_id", "", "invalid_field"),
        ("chain_id", "-zibo", "invalid_field"),
        ("chain_id", "zibo test", "invalid_field"),
        ("chain_id", "z" * 65, "limit_exceeded"),
        ("type", "burn", "invalid_field"),
        ("type", "Transfer", "invalid_field"),
        ("nonce", 0, "invalid_field"),
        ("nonce", JSON_INTEGER_MAX + 1, "limit_exceeded"),
    ],
)
def test_bad_tx_fields(name: str, value: Any, code: str) -> None:
    expect(code, {**make_tx("transfer", VALID["transfer"]), name: value})


# --- the envelope -----------------------------------------------------------------------------


def signed(kind: str = "transfer", keys: list[PrivateKey] | None = None) -> dict[str, Any]:
    tx = make_tx(kind, VALID[kind])
    return sign_transaction(Transaction(**tx), keys or [ALICE, BOB]).to_json()


def test_unsorted_or_repeated_signatures() -> None:
    envelope = signed()
    tx, signatures = envelope["tx"], envelope["signatures"]
    assert [s["public_key"] for s in signatures] == sorted(s["public_key"] for s in signatures)
    assert len(parse(tx, signatures=signatures).signatures) == 2
    expect("invalid_field", tx, signatures=signatures[::-1])
    expect("invalid_field", tx, signatures=[signatures[0], signatures[0]])
    expect("invalid_field", tx, signatures=[signatures[0], signatures[1], signatures[1]])
    # The same key with two different signatures is a repeat too.
    other = {**signatures[0], "signature": "00" * 64}
    expect("invalid_field", tx, signatures=sorted([signatures[0], other], key=str))


def test_transaction_larger_than_transaction_bytes_max() -> None:
    envelope = signed("issue")
    size = len(canonical(envelope))
    assert parse(
        envelope["tx"], signatures=envelope["signatures"], bytes_max=size
    ).leaf == canonical(envelope)
    with pytest.raises(LedgerError) as caught:
        parse(envelope["tx"], signatures=envelope["signatures"], bytes_max=size - 1)
    assert caught.value.code == "payload_too_large"


def test_default_transaction_bytes_max() -> None:
    recipients = many_recipients(200)
    envelope = {"tx": with_payload("issue", ("recipients",), recipients), "signatures": []}
    assert len(canonical(envelope)) > TRANSACTION_BYTES_MAX_DEFAULT
    with pytest.raises(LedgerError) as caught:
        parse_envelope(envelope, transaction_bytes_max=TRANSACTION_BYTES_MAX_DEFAULT)
    assert caught.value.code == "payload_too_large"


def test_decode_envelope_refuses_far_oversized_bodies_before_decoding() -> None:
    body = b"[" + b" " * (4 * 1000) + b"]"
    with pytest.raises(LedgerError) as caught:
        decode_envelope(body, transaction_bytes_max=1000)
    assert caught.value.code == "payload_too_large"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b"\xff\xfe",
        b'{"tx":{},"tx":{}}',
        b'{"tx":{"nonce":1.0},"signatures":[]}',
        b'{"tx":{"nonce":1e0},"signatures":[]}',
        b'{"tx":{"nonce":-1},"signatures":[]}',
        b'{"tx":{"nonce":NaN},"signatures":[]}',
        b'{"tx":{},"signatures":[]} {}',
        b'{"tx":{"chain_id":"\\ud800"},"signatures":[]}',
    ],
)
def test_decode_envelope_on_malformed_bytes(data: bytes) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_envelope(data, transaction_bytes_max=TRANSACTION_BYTES_MAX_DEFAULT)
    assert caught.value.code == "malformed_json"


def test_decode_envelope_on_deep_nesting() -> None:
    with pytest.raises(DecodeError) as caught:
        decode_envelope(b"[" * 5000, transaction_bytes_max=TRANSACTION_BYTES_MAX_DEFAULT)
    assert caught.value.code == "limit_exceeded"


def test_decode_envelope_accepts_non_canonical_bytes() -> None:
    envelope = signed("retire")
    expected = parse(envelope["tx"], signatures=envelope["signatures"])
    loose = json.dumps(envelope, indent=2, ensure_ascii=True).encode()
    assert loose != canonical(envelope)
    parsed = decode_envelope(loose, transaction_bytes_max=TRANSACTION_BYTES_MAX_DEFAULT)
    assert parsed == expected
    assert parsed.tx_id == expected.tx_id
    assert parsed.leaf == canonical(envelope)


# --- property: every valid envelope round-trips ---------------------------------------------------

TEXT_CHARS = st.characters(exclude_categories=("Cc", "Cs"))


def texts(limit: int) -> SearchStrategy[str]:
    return st.text(TEXT_CHARS, min_size=1, max_size=min(limit, 24)) | st.just("x" * limit)


SLUG = st.from_regex(r"[a-z0-9][a-z0-9-]{1,20}", fullmatch=True) | st.just("s" * 63)
HEX = st.binary(min_size=32, max_size=32).map(bytes.hex)
QUANTITY = st.integers(1, 2**40)
TIME = st.integers(0, JSON_INTEGER_MAX)
BATCH = st.integers(1, 10**16 - 1).map(lambda n: f"B-{n}")
KEYS = st.lists(st.sampled_from(PUBLIC_KEYS), min_size=1, max_size=10, unique=True)


@st.composite
def periods(draw: st.DrawFn) -> tuple[str, str]:
    start = draw(st.dates(datetime.date(2000, 1, 1), datetime.date(2099, 1, 1)))
    end = start + datetime.timedelta(days=draw(st.integers(1, 366)))
    return start.isoformat(), end.isoformat()


@st.composite
def payloads(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    memo = {"memo": draw(texts(500))} if draw(st.booleans()) else {}
    if kind == "register_methodology":
        return {
            "methodology_id": draw(SLUG),
            "name": draw(texts(200)),
            "document_sha256": draw(HEX),
        }
    if kind == "accredit_certifier":
        start = draw(st.integers(0, JSON_INTEGER_MAX - 1))
        return {
            "certifier": draw(HEX),
            "name": draw(texts(200)),
            "methodologies": draw(st.lists(SLUG, min_size=1, max_size=64, unique=True)),
            "valid_from": start,
            "valid_until": draw(st.integers(start + 1, JSON_INTEGER_MAX)),
        }
    if kind == "revoke_certifier":
        return {"certifier": draw(HEX), "reason": draw(texts(500))}
    if kind == "create_program":
        return {"program_id": draw(SLUG), "name": draw(texts(200)), "valid_until": draw(TIME)}
    if kind in ("suspend_account", "reinstate_account"):
        return {"account": draw(HEX), "reason": draw(texts(500))}
    if kind == "set_validators":
        keys = draw(st.lists(st.sampled_from(PUBLIC_KEYS), min_size=1, max_size=8, unique=True))
        return {
            "validators": [
                {"public_key": k, "power": draw(st.integers(1, 1000)), "name": draw(texts(200))}
                for k in keys
            ]
        }
    if kind == "issue":
        period_start, period_end = draw(periods())
        recipients = draw(
            st.lists(
                st.fixed_dictionaries({"account": HEX, "quantity": QUANTITY}),
                min_size=1,
                max_size=5,
            )
        )
        return {
            "methodology_id": draw(SLUG),
            "project_id": draw(texts(128)),
            "period_start": period_start,
            "period_end": period_end,
            "evidence_sha256": draw(HEX),
            "recipients": recipients,
            **memo,
        }
    if kind == "transfer":
        return {"to": draw(HEX), "batch_id": draw(BATCH), "quantity": draw(QUANTITY), **memo}
    if kind == "retire":
        purpose = draw(st.sampled_from(["voluntary", "incentive", "compliance"]))
        extra: dict[str, Any] = {"program_id": draw(SLUG)} if purpose == "incentive" else {}
        if draw(st.booleans()):
            extra["jurisdiction"] = draw(st.from_regex(r"[A-Z]{2}-[A-Z0-9]{1,3}", fullmatch=True))
        return {
            "batch_id": draw(BATCH),
            "quantity": draw(QUANTITY),
            "beneficiary": draw(texts(200)),
            "purpose": purpose,
            **extra,
            **memo,
        }
    if kind == "invalidate":
        return {
            "batch_id": draw(BATCH),
            "holder": draw(HEX),
            "quantity": draw(QUANTITY),
            "reason": draw(texts(500)),
        }
    assert kind == "set_keys"
    keys = draw(KEYS)
    return {"keys": keys, "threshold": draw(st.integers(1, len(keys)))}


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    kind = draw(st.sampled_from(sorted(PAYLOADS)))
    transaction = Transaction(
        chain_id=draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)),
        type=kind,
        signer=draw(HEX),
        nonce=draw(st.integers(1, JSON_INTEGER_MAX)),
        payload=draw(payloads(kind)),
    )
    signers = draw(st.lists(st.sampled_from(KEY_POOL), max_size=3, unique_by=lambda k: k.seed))
    return sign_transaction(transaction, signers)


@given(envelopes())
def test_valid_envelopes_round_trip(envelope: Envelope) -> None:
    data = canonical(envelope.to_json())
    parsed = parse_envelope(decode(data), transaction_bytes_max=TRANSACTION_BYTES_MAX_CEILING)
    assert parsed == envelope
    assert parsed.tx_id == envelope.tx_id
    assert parsed.tx_id == hashlib.sha256(TX_DOMAIN + canonical(envelope.tx.to_json())).hexdigest()
    assert parsed.leaf == data == canonical_unchecked(parsed.to_json())
    assert (
        parsed.signing_bytes()
        == envelope.tx.signing_bytes()
        == TX_DOMAIN + canonical(envelope.tx.to_json())
    )
    again = decode_envelope(data, transaction_bytes_max=TRANSACTION_BYTES_MAX_CEILING)
    assert again == envelope and again.tx_id == envelope.tx_id
    verify_envelope_signatures(parsed)


@given(envelopes(), st.sampled_from([None, 1, "\t"]), st.booleans())
def test_tx_id_does_not_depend_on_the_encoding_received(
    envelope: Envelope, indent: int | str | None, ascii_only: bool
) -> None:
    loose = json.dumps(envelope.to_json(), indent=indent, ensure_ascii=ascii_only).encode()
    parsed = decode_envelope(loose, transaction_bytes_max=TRANSACTION_BYTES_MAX_CEILING)
    assert parsed.tx_id == envelope.tx_id
    assert parsed.leaf == envelope.leaf
