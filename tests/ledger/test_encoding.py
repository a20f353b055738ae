"""Canonical JSON and the strict decoder (SPEC §2.1): round trips, RFC 8785 agreement, refusals."""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from ledger.encoding import STRING_LITERAL, canonical, canonical_object, decode
from ledger.errors import DecodeError, LedgerError, printable
from ledger.limits import JSON_DENSE_CHARS_MIN, JSON_DEPTH_MAX, JSON_INTEGER_MAX
from tests.factory import Chain

KEYS = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)
SPECIAL_CHARS = st.sampled_from(
    [
        *["\x00", "\x01", "\x08", "\t", "\n", "\x0c", "\r", "\x1f", "\x7f", '"', "\\", "/"],
        *["\u0085", "\u2028", "\u2029", "\ufeff", "\uffff", "é", "碳", "😀", "\U0010ffff"],
    ]
)
# codec="utf-8" leaves out surrogates, so every string has a UTF-8 form.
STRINGS = st.text(st.characters(codec="utf-8") | SPECIAL_CHARS, max_size=24)
INTEGERS = st.integers(0, JSON_INTEGER_MAX) | st.sampled_from([0, 1, 2**31, 2**32, 2**53 - 1])
SCALARS: SearchStrategy[Any] = st.none() | st.booleans() | INTEGERS | STRINGS


@cache
def json_values(depth: int) -> SearchStrategy[Any]:
    """Values of the §2.1 space with at most `depth` containers nested."""
    if depth == 0:
        return SCALARS
    inner = json_values(depth - 1)
    return SCALARS | st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4)


VALUES = json_values(JSON_DEPTH_MAX)


def nest(depth: int, *, kind: str = "list") -> Any:
    """`depth` containers nested inside one another."""
    value: Any = 1
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


def reorder(value: Any) -> Any:
    """The same value with every object's keys in reverse order (not canonical)."""
    if isinstance(value, dict):
        return {key: reorder(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [reorder(item) for item in value]
    return value


def expect_decode_error(data: bytes, code: str = "malformed_json") -> None:
    with pytest.raises(DecodeError) as caught:
        decode(data)
    assert caught.value.code == code, (data[:60], caught.value.message)


# --- round trips ------------------------------------------------------------------------------


@given(VALUES)
def test_decode_inverts_canonical(value: Any) -> None:
    encoded = canonical(value)
    assert decode(encoded) == value
    assert canonical(decode(encoded)) == encoded


@given(VALUES)
def test_canonical_is_rfc8785(value: Any) -> None:
    assert canonical(value) == rfc8785.dumps(value)


@given(
    VALUES,
    st.sampled_from([None, 0, 2, "\t"]),
    st.booleans(),
    st.sampled_from(["", " ", "\n", "\r\n\t "]),
)
def test_non_canonical_input_decodes_to_the_same_value(
    value: Any, indent: int | str | None, ascii_only: bool, padding: str
) -> None:
    # Whitespace, key order and \uXXXX escapes (surrogate pairs for astral characters) may vary.
    text = json.dumps(reorder(value), indent=indent, ensure_ascii=ascii_only)
    data = (padding + text + padding).encode("utf-8")
    assert decode(data) == value
    assert canonical(decode(data)) == canonical(value)


@given(st.dictionaries(KEYS, json_values(JSON_DEPTH_MAX - 1), max_size=6))
def test_canonical_object_joins_encoded_members(value: dict[str, Any]) -> None:
    members = {key: canonical(item) for key, item in value.items()}
    assert canonical_object(members) == canonical(value)


def test_canonical_pins_bytes() -> None:
    value: Any = {"b": [1, True, None], "a": '\u2028\x7f\x00\x1f"\\/é', "a_1": {}}
    expected = '{"a":"\u2028\x7f\\u0000\\u001f\\"\\\\/é","a_1":{},"b":[1,true,null]}'
    assert canonical(value) == expected.encode("utf-8")
    assert canonical(value) == rfc8785.dumps(value)


def test_str_input_decodes_like_bytes() -> None:
    assert decode('{"a": [1, "碳"]}') == decode('{"a": [1, "碳"]}'.encode()) == {"a": [1, "碳"]}


def test_surrogate_pair_escape_is_one_character() -> None:
    assert decode(b'"\\ud83d\\ude00"') == "😀"


def test_integer_bounds_accepted() -> None:
    assert decode(b"0") == 0
    assert decode(str(JSON_INTEGER_MAX).encode()) == JSON_INTEGER_MAX


# --- nesting ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_nesting_of_exactly_eight_is_accepted(kind: str) -> None:
    value = nest(JSON_DEPTH_MAX, kind=kind)
    assert decode(canonical(value)) == value


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_nesting_deeper_than_eight_is_limit_exceeded(kind: str) -> None:
    deep = nest(JSON_DEPTH_MAX + 1, kind=kind)
    expect_decode_error(json.dumps(deep).encode(), "limit_exceeded")
    with pytest.raises(LedgerError) as caught:
        canonical(deep)
    assert caught.value.code == "limit_exceeded"


def test_nesting_limit_counts_mixed_containers() -> None:
    expect_decode_error(b'[{"a":[{"a":[{"a":[{"a":[1]}]}]}]}]', "limit_exceeded")
    eight = b'[{"a":[{"a":[{"a":[{"a":1}]}]}]}]'
    assert decode(eight) == [{"a": [{"a": [{"a": [{"a": 1}]}]}]}]


def test_max_depth_argument() -> None:
    assert decode(b"[[1]]", max_depth=2) == [[1]]
    with pytest.raises(DecodeError) as caught:
        decode(b"[[[1]]]", max_depth=2)
    assert caught.value.code == "limit_exceeded"


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 100_000,
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    ],
    ids=["open-arrays", "closed-arrays", "open-objects", "closed-objects"],
)
def test_very_deep_nesting_is_refused_without_crashing(data: bytes) -> None:
    expect_decode_error(data, "limit_exceeded")


# --- refusals (§2.1) --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"\xff",
        b"\x80",
        b'"\xc3"',  # truncated two-byte sequence
        b'"\xe2\x82"',  # truncated three-byte sequence
        b'"\xc0\xaf"',  # overlong encoding of "/"
        b'"\xed\xa0\x80"',  # an encoded surrogate (CESU-8)
        b'"\xf4\x90\x80\x80"',  # above U+10FFFF
        b'{"a":"ok","b":"\xfe"}',
        b'{"\xff":1}',
    ],
)
def test_invalid_utf8_is_refused(data: bytes) -> None:
    expect_decode_error(data)


@pytest.mark.parametrize("depth", range(JSON_DEPTH_MAX - 1))
def test_duplicate_keys_are_refused_at_any_depth(depth: int) -> None:
    inner = b'{"a":1,"b":2,"a":1}'
    for level in range(depth):
        inner = b'{"x":' + inner + b"}" if level % 2 else b"[0," + inner + b"]"
    expect_decode_error(inner)


def test_duplicate_keys_with_escaped_spelling_are_refused() -> None:
    expect_decode_error(b'{"a":1,"\\u0061":1}')


@pytest.mark.parametrize(
    "data",
    [
        b"1.0",
        b"0.5",
        b"1.5e3",
        b"1e5",
        b"1E5",
        b"1e+5",
        b"1e-5",
        b"0e0",
        b"-0",
        b"-0.0",
        b"-1",
        b"-9007199254740991",
        b"9007199254740992",
        str(2**64).encode(),
        b"1" * 5000,
        b"01",
        b"NaN",
        b"Infinity",
        b"-Infinity",
        b'{"a":[1,2.0]}',
        b'{"a":{"b":1e5}}',
        b'{"a":[-0]}',
        b'{"a":NaN}',
        b"[9007199254740992]",
    ],
)
def test_numbers_outside_the_value_space_are_refused(data: bytes) -> None:
    expect_decode_error(data)


@pytest.mark.parametrize(
    "data",
    [b"{}x", b"1 2", b"{}{}", b"[] ]", b'"a" "b"', b"null,", b"{} \x00", b"true false"],
)
def test_trailing_data_is_refused(data: bytes) -> None:
    expect_decode_error(data)


@pytest.mark.parametrize(
    "data",
    [
        b'"\\ud800"',
        b'"\\udc00"',
        b'"a\\ud800b"',
        b'"\\ude00\\ud83d"',  # a pair in the wrong order is two lone surrogates
        b'["\\udfff"]',
        b'{"a":{"b":"\\ud800"}}',
        b'"\\uD800"',  # hex digits in either case
        b'["\\\\ud800", "\\uDBFF"]',  # an escaped backslash first, then a real one
    ],
)
def test_lone_surrogate_escapes_are_refused(data: bytes) -> None:
    expect_decode_error(data)


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b'"\\\\ud800"', "\\ud800"),  # an escaped backslash, then plain letters
        (b'{"\\\\udc00":"\\ud83d\\ude00"}', {"\\udc00": "\U0001f600"}),  # and a pair
    ],
)
def test_text_that_only_looks_like_a_surrogate_escape_decodes(data: bytes, value: Any) -> None:
    assert decode(data) == value


@pytest.mark.parametrize("data", [b'{"\\ud800":1}', b'{"a":{"\\udc00":1}}', b'[{"\\ud800":1}]'])
def test_lone_surrogate_escape_in_an_object_key_is_refused(data: bytes) -> None:
    # A key is a string too: "\ud800" has no UTF-8 form wherever it sits.
    expect_decode_error(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b" ",
        b"\n\t",
        b"{",
        b"[1,]",
        b'{"a":1,}',
        b"{'a':1}",
        b'{"a" 1}',
        b'"\x00"',  # a raw control character inside a string
        b'"\n"',
        b'"\\x41"',
        b"True",
        b"undefined",
        b"\xef\xbb\xbf{}",
    ],
)
def test_other_malformed_input_is_refused(data: bytes) -> None:
    expect_decode_error(data)


@pytest.mark.parametrize("data", [b"\xef\xbb\xbf{}", "\ufeff[1]"])
def test_a_byte_order_mark_is_refused_by_name(data: bytes | str) -> None:
    with pytest.raises(DecodeError, match="byte order mark") as caught:
        decode(data)
    assert caught.value.code == "malformed_json"


def test_threads_decoding_at_once_each_get_their_own_value() -> None:
    # One decoder serves every thread (its hooks run Python, where the GIL changes hands
    # mid-document): each thread's values must still be its own, keys and all.
    def documents(thread: int) -> list[bytes]:
        return [
            canonical({f"k{thread}_{i}": [{"n": i, f"t{thread}": [thread] * 20}] * 5})
            for i in range(300)
        ]

    def run(thread: int) -> bool:
        return all(decode(data) == json.loads(data) for data in documents(thread))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the GIL changes hands as often as it can
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            assert all(pool.map(run, range(8)))
    finally:
        sys.setswitchinterval(interval)


@given(json_values(JSON_DEPTH_MAX - 1), st.integers(1, 3))
def test_any_truncation_of_a_container_is_refused(value: Any, cut: int) -> None:
    encoded = canonical([value])
    expect_decode_error(encoded[: max(0, len(encoded) - cut)])


# --- canonical refuses values outside the space -------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [1.5, 0.0, float("nan"), {"A": 1}, {"1a": 1}, {"": 1}, {"a-b": 1}, {1: 1}, b"bytes", 2**53],
    ids=repr,
)
def test_canonical_refuses_values_outside_the_space(value: Any) -> None:
    with pytest.raises(LedgerError):
        canonical(value)


def test_canonical_refuses_lone_surrogates() -> None:
    with pytest.raises(DecodeError):
        canonical({"a": "\ud800"})


@given(st.text())
def test_printable_leaves_nothing_a_terminal_acts_on(text: str) -> None:
    shown = printable(text)
    assert shown.isprintable()
    assert shown == text if text.isprintable() else shown != text
    assert printable("\x1b[2J 碳链\u202e") == "\\x1b[2J 碳链\\u202e"


@pytest.mark.parametrize("item", [b"{}", b"[]", b'"ab"', b'{"a":{}}'])
def test_a_large_document_of_tiny_objects_is_refused_before_it_is_parsed(item: bytes) -> None:
    """Found by review: `[{},{},...]` parses to ~27 times its size (4.4 GB for an export line
    within its bound); a large document must average JSON_TOKEN_CHARS_MIN characters for each
    object, array and string."""
    count = JSON_DENSE_CHARS_MIN // (len(item) + 1) + 1
    dense = b"[" + b",".join([item] * count) + b"]"
    assert len(dense) > JSON_DENSE_CHARS_MIN
    with pytest.raises(DecodeError) as refused:
        decode(dense)
    assert (
        refused.value.code == "limit_exceeded" and "more than one every 8" in refused.value.message
    )
    below = b"[" + b",".join([item] * (count // 2)) + b"]"  # under the size checked: parsed
    assert len(decode(below)) == count // 2


def test_real_transactions_over_a_mebibyte_are_not_dense() -> None:
    """2,500 signed transfers, as a block's `transactions` (the densest part of a block)."""
    chain = Chain().funded()
    payload = {"to": chain.bob.account_id, "batch_id": "B-1", "quantity": 1}
    envelopes = [chain.tx(chain.alice, "transfer", payload) for _ in range(2500)]
    line = canonical({"transactions": [envelope.to_json() for envelope in envelopes]})
    assert len(line) > JSON_DENSE_CHARS_MIN
    assert canonical(decode(line)) == line


@pytest.mark.parametrize("held", ["[" * 400, "{" * 400, '\\"' * 200, "[{" * 200 + '\\"'])
def test_brackets_and_quotes_inside_strings_are_not_counted_as_objects(held: str) -> None:
    """Found by review: a valid block of transfers whose memos are brackets was refused as
    dense (the bound had counted what strings hold); a document the first count refuses is
    counted again, each string once."""
    item = b'{"memo":"' + held.encode() + b'","to":"' + b"ab" * 32 + b'"}'
    document = b"[" + b",".join([item] * (JSON_DENSE_CHARS_MIN // len(item) + 1)) + b"]"
    assert len(document) > JSON_DENSE_CHARS_MIN
    decoded = decode(document)
    assert isinstance(decoded, list) and decoded[0]["memo"] == json.loads(f'"{held}"')
    dense = b"[" + b",".join([b'"' + held.encode() + b'"'] * 1000) + b",[]" * 400_000 + b"]"
    with pytest.raises(DecodeError) as refused:  # strings that hide no object do not excuse them
        decode(dense)
    assert refused.value.code == "limit_exceeded"


def test_an_unclosed_string_is_counted_once_to_the_end_of_the_text() -> None:
    """Found by review: the recount's pattern had to end at a closing quote, so on an
    unclosed literal of escaped quotes it was tried again from each of them: quadratic, one
    1 MiB line held the interpreter for ~12 minutes. A literal now runs to the end of the
    text when unclosed, and the document is then refused by the parser, at once."""
    unclosed = '"' + '\\"' * 1000
    assert STRING_LITERAL.subn("", unclosed) == ("", 1)
    assert STRING_LITERAL.subn("", 'x"a\\"b"y"c\\\\"z"\\') == ("xyz", 3)
    document = b'"' + b'\\"' * 262_154 + b" " * 524_298  # past the size the bound checks
    assert len(document) > JSON_DENSE_CHARS_MIN
    with pytest.raises(DecodeError) as refused:
        decode(document)
    assert "Unterminated string" in refused.value.message
