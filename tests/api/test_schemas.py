"""The edge's pydantic contract (api/schemas.py) against the ledger's own parser.

The model and `ledger.transactions.parse_envelope` must give one verdict on every input: a
valid transaction of each type passes both, and any single change to one (a field replaced by
another JSON value, removed, added, or an item repeated) is refused by both with the same code.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.schemas import ENVELOPE_EXAMPLES, Envelope, validate_envelope
from ledger.errors import LedgerError
from ledger.limits import JSON_INTEGER_MAX, TRANSACTION_BYTES_MAX_CEILING
from ledger.transactions import TRANSACTION_TYPES, parse_envelope

HEX64 = "ab" * 32
EDGE_LENGTHS = (0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 18, 19, 63, 64, 65, 128, 129, 200, 201, 500, 501)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, 1, -1, 2, 10, 11, 1000, 1001, JSON_INTEGER_MAX, JSON_INTEGER_MAX + 1]),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.builds(
        lambda n, c: c * n, st.sampled_from(EDGE_LENGTHS), st.sampled_from("aZ0-é碳 \x00\x9f")
    ),
    st.sampled_from(
        [
            HEX64,
            "AB" * 32,
            "ab" * 64,
            "0" * 64,
            "B-1",
            "B-0",
            "B-01",
            "CN-SD",
            "cn-sd",
            "2026-01-01",
            "2026-02-30",
            "2027-01-03",
            "incentive",
            "voluntary",
            "transfer",
            "issue",
            "zibo-demo",
            "-x",
            "x",
        ]
    ),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "tx", "memo"]), inner)
    ),
    max_leaves=6,
)


def ledger_verdict(value: Any) -> str | None:
    try:
        parse_envelope(value, transaction_bytes_max=TRANSACTION_BYTES_MAX_CEILING)
    except LedgerError as error:
        return error.code
    return None


def model_verdict(value: Any) -> str | None:
    try:
        validate_envelope(value)
    except LedgerError as error:
        return error.code
    return None


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every location in a JSON value, the root included."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, (*prefix, index))
    return found


def locate(value: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        value = value[part]
    return value


@st.composite
def mutated_envelopes(draw: st.DrawFn) -> Any:
    envelope = copy.deepcopy(ENVELOPE_EXAMPLES[draw(st.sampled_from(TRANSACTION_TYPES))])
    path = draw(st.sampled_from(paths(envelope)))
    target = locate(envelope, path)
    mutations = ["replace"]
    if path:
        mutations.append("remove")
    if isinstance(target, dict):
        mutations.append("add")
    if isinstance(target, list) and target:
        mutations.append("repeat")
    mutation = draw(st.sampled_from(mutations))
    if mutation == "replace":
        if not path:
            return draw(JSON_VALUES)
        locate(envelope, path[:-1])[path[-1]] = draw(JSON_VALUES)
    elif mutation == "remove":
        parent = locate(envelope, path[:-1])
        del parent[path[-1]]
    elif mutation == "add":
        target[draw(st.sampled_from(["extra", "memo", "program_id", "type"]))] = draw(JSON_VALUES)
    else:
        target.append(copy.deepcopy(target[0]))
    return envelope


@pytest.mark.parametrize("kind", TRANSACTION_TYPES)
def test_every_example_is_valid_for_both(kind: str) -> None:
    example = ENVELOPE_EXAMPLES[kind]
    assert example["tx"]["type"] == kind
    assert model_verdict(example) is None
    assert ledger_verdict(example) is None
    assert Envelope.model_validate(example).tx.type == kind


@given(mutated_envelopes())
def test_model_and_ledger_give_one_verdict(value: Any) -> None:
    assert model_verdict(value) == ledger_verdict(value)


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        (
            lambda e: e["tx"]["payload"].update(quantity=JSON_INTEGER_MAX + 1),
            "limit_exceeded",
            "tx.payload.quantity: Input should be less than or equal to 9007199254740991",
        ),
        (
            lambda e: e["tx"]["payload"].update(memo=None),
            "invalid_field",
            "tx.payload: memo: null is not allowed; leave the field out instead",
        ),
        (
            lambda e: e["tx"]["payload"].update(memo="x" * 501),
            "limit_exceeded",
            "tx.payload.memo: String should have at most 500 characters",
        ),
        (lambda e: e["tx"].update(type="mint"), "invalid_field", "tx: Input tag 'mint'"),
        (
            lambda e: e["signatures"].append(dict(e["signatures"][0])),
            "invalid_field",
            "body: signatures must be sorted by public_key, with no key twice",
        ),
    ],
)
def test_faults_are_named_with_the_ledger_code(change: Any, code: str, message: str) -> None:
    envelope = copy.deepcopy(ENVELOPE_EXAMPLES["transfer"])
    change(envelope)
    with pytest.raises(LedgerError) as raised:
        validate_envelope(envelope)
    assert raised.value.code == code
    assert raised.value.message.startswith(message)
