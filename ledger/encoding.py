"""Canonical JSON (RFC 8785, restricted by SPEC §2.1) and the strict decoder for outside input.

This is the one module that makes the bytes that are hashed or signed. The restricted value
space (objects with `[a-z][a-z0-9_]*` keys, strings, integers, booleans, null, arrays) makes RFC
8785 coincide with `json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`:
keys are ASCII, so UTF-16 ordering is byte ordering; integers print as ECMAScript does; and
Python escapes exactly the characters JCS escapes (`"`, `\\`, and U+0000..U+001F, using the
short forms for \\b \\f \\n \\r \\t). The test suite checks this against the `rfc8785` package.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from ledger.errors import DecodeError, LedgerError
from ledger.limits import (
    JSON_DENSE_CHARS_MIN,
    JSON_DEPTH_MAX,
    JSON_INTEGER_MAX,
    JSON_TOKEN_CHARS_MIN,
)

KEY_PATTERN: Final = re.compile(r"[a-z][a-z0-9_]*\Z")

JSON = Any
"""A decoded JSON value: dict, list, str, int, bool or None (never float)."""

_encoder = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
)
# The same encoder's C core, made once: `JSONEncoder.encode` builds it anew on every call,
# which costs a third of encoding a small value. No cycle check (the value space has no
# cycles, and `canonical` bounds the depth first); floats never reach it.
_make_c_encoder: Callable[..., Callable[[JSON, int], Sequence[str]]] | None = getattr(
    json.encoder, "c_make_encoder", None
)
_c_encoder = (
    None
    if _make_c_encoder is None
    else _make_c_encoder(
        None, _encoder.default, json.encoder.encode_basestring, None, ":", ",", True, False, False
    )
)


def canonical(value: JSON) -> bytes:
    """The RFC 8785 bytes of `value`, which must lie in the SPEC §2.1 value space."""
    _check_value(value, 0, signed=True)
    return canonical_unchecked(value)


def canonical_unchecked(value: JSON) -> bytes:
    """`canonical` for values the ledger built itself and already validated (hot path)."""
    if _c_encoder is None:
        return _encoder.encode(value).encode("utf-8")
    return "".join(_c_encoder(value, 0)).encode("utf-8")


def canonical_object(members: Mapping[str, bytes]) -> bytes:
    """The canonical bytes of an object whose member values are canonical bytes already.

    For values the ledger encodes once and reuses (a transaction's bytes are its id, its
    signed message and part of its envelope's log leaf). Keys must match `[a-z][a-z0-9_]*`,
    so they need no escaping, and sort as RFC 8785 sorts them.
    """
    assert all(KEY_PATTERN.match(key) for key in members), sorted(members)
    return (
        b"{"
        + b",".join(b'"%s":%s' % (key.encode(), members[key]) for key in sorted(members))
        + b"}"
    )


def shown_integer(value: int) -> str:
    """`value` for a message: digits, or its size when Python would refuse to write them
    (past 4,300 digits) or a reader to read them."""
    if -(10**20) < value < 10**20:
        return str(value)
    sign = "a negative" if value < 0 else "an"
    return f"{sign} integer of {value.bit_length()} bits"


def _check_value(value: JSON, depth: int, *, signed: bool) -> None:
    if isinstance(value, Mapping | list | tuple) and depth >= JSON_DEPTH_MAX:
        raise LedgerError(f"nesting deeper than {JSON_DEPTH_MAX}", code="limit_exceeded")
    if value is None or value is True or value is False:
        return
    if isinstance(value, int):
        low = -JSON_INTEGER_MAX if signed else 0
        if not low <= value <= JSON_INTEGER_MAX:
            shown = shown_integer(value)
            shown = shown if shown.startswith("a") else f"integer {shown}"
            raise LedgerError(f"{shown} outside [{low}, {JSON_INTEGER_MAX}]")
        return
    if isinstance(value, str):
        _check_string(value)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str) or not KEY_PATTERN.match(key):
                shown = shown_integer(key) if isinstance(key, int) else repr(key)[:40]
                raise LedgerError(f"object key {shown} does not match [a-z][a-z0-9_]*")
            _check_value(item, depth + 1, signed=signed)
        return
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray | memoryview):
        for item in value:
            _check_value(item, depth + 1, signed=signed)
        return
    raise LedgerError(f"{type(value).__name__} is not a canonical JSON value")


def _check_string(value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise DecodeError("string holds a lone surrogate, which is not UTF-8") from error


def _reject_float(text: str) -> Any:
    shown = text if len(text) <= 24 else f"{text[:24]}…"
    raise DecodeError(f"number {shown} is not an integer (floats and exponents are invalid)")


def _reject_constant(text: str) -> Any:
    raise DecodeError(f"{text} is not JSON")


def _parse_int(text: str) -> int:
    if text.startswith("-"):
        if text == "-0":
            raise DecodeError("negative zero is invalid")
        raise DecodeError(f"negative integer {text} is invalid")
    if len(text) > 16:
        raise DecodeError(f"integer {text[:20]}… is outside [0, 2**53 - 1]")
    number = int(text)
    if number > JSON_INTEGER_MAX:
        raise DecodeError(f"integer {number} is outside [0, 2**53 - 1]")
    return number


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):  # a key came twice: name the first one repeated
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DecodeError(f"duplicate key {key!r}")
            seen.add(key)
    return result


def decode(data: bytes | bytearray | memoryview | str, *, max_depth: int = JSON_DEPTH_MAX) -> JSON:
    """Decode outside input strictly (SPEC §2.1): UTF-8, no duplicate keys, no floats, integers
    in [0, 2**53 - 1], nesting at most `max_depth`, no trailing data; a large document no
    denser in objects, arrays and strings than JSON_TOKEN_CHARS_MIN allows. Raises
    `DecodeError`.

    Field-level rules (unknown, missing, types, lengths) are the schema's (`transactions`).
    """
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as invalid:
            raise DecodeError(f"invalid UTF-8 at byte {invalid.start}") from invalid
    else:
        text = data
    if text.startswith("\ufeff"):  # named, as `json.loads` names it (the decoder does not)
        raise DecodeError("a byte order mark (U+FEFF) before the JSON: send UTF-8 without one")
    if len(text) > JSON_DENSE_CHARS_MIN:
        _check_density(text)
    try:
        value = _decoder.decode(text)
    except DecodeError:
        raise
    except json.JSONDecodeError as error:
        message = f"not JSON: {error.msg} at line {error.lineno} column {error.colno}"
        raise DecodeError(message) from error
    except RecursionError as deep:
        raise DecodeError(f"nesting deeper than {max_depth}", code="limit_exceeded") from deep
    # Strings need a look only if the text escapes a surrogate (UTF-8 input cannot hold one
    # raw). An escaped backslash before "ud8.." only costs the look, never an error.
    strings = _SURROGATE_ESCAPE.search(text) is not None
    _check_decoded(value, 0, max_depth, strings=strings)
    return value


# The strict decoder, made once: `json.loads` with hooks builds a decoder and its C scanner
# anew on every call, a third of its time on a transaction's ~500 bytes (6.8 against 4.4 us
# in one process, ~5 % of decoding the envelope), as `JSONEncoder.encode` did for encoding
# (above). The standard library's own `json.loads` shares one decoder between threads the
# same way: the scanner keeps nothing between calls but a memo that only interns keys.
_decoder: Final = json.JSONDecoder(
    object_pairs_hook=_object_pairs,
    parse_float=_reject_float,
    parse_int=_parse_int,
    parse_constant=_reject_constant,
)
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")
# A JSON string literal, escapes included; one never closed runs to the end of the text.
# It cannot fail once begun at a quote, so the scan is linear: a pattern that had to end at a
# closing quote was tried again from each escaped quote of an unclosed literal, quadratic
# (one 1 MiB line held the GIL for ~12 minutes, found by review).
STRING_LITERAL: Final = re.compile(r'"[^"\\]*(?:\\[\s\S][^"\\]*)*(?:"|\\?\Z)')


def _check_density(text: str) -> None:
    """Refuse a large document that holds more than one object, array or string every
    JSON_TOKEN_CHARS_MIN characters (each is a Python object of 50-70 bytes once parsed).

    Counting brackets and quotes is an upper bound, and enough for nearly every document; one
    it refuses is counted again exactly, each string one and what it holds nothing: memos
    of `[` characters had made a valid block of over 1 MiB undecodable, so that block sync
    and `verify chain` stopped at a block the consortium had committed (found by review)."""
    tokens = text.count("{") + text.count("[") + text.count('"') // 2
    if tokens * JSON_TOKEN_CHARS_MIN <= len(text):
        return
    outside, strings = STRING_LITERAL.subn("", text)
    tokens = outside.count("{") + outside.count("[") + strings
    if tokens * JSON_TOKEN_CHARS_MIN > len(text):
        raise DecodeError(
            f"{tokens:,} objects, arrays and strings in {len(text):,} characters: more"
            f" than one every {JSON_TOKEN_CHARS_MIN}, which no ledger document holds",
            code="limit_exceeded",
        )


def _check_decoded(value: JSON, depth: int, max_depth: int, *, strings: bool) -> None:
    """Nesting and UTF-8 of a decoded value. `depth` counts the containers around `value`.

    json.loads turns "\\ud800" escapes into lone surrogates; such a string has no UTF-8 form.
    With `strings` false only the nesting is checked.
    """
    if isinstance(value, str):
        if strings:
            _check_string(value)
    elif isinstance(value, dict | list):
        if depth >= max_depth:
            raise DecodeError(f"nesting deeper than {max_depth}", code="limit_exceeded")
        if isinstance(value, dict):
            if strings:
                for key in value:
                    _check_string(key)
            items: Any = value.values()
        else:
            items = value
        for item in items:
            if strings or isinstance(item, dict | list):
                _check_decoded(item, depth + 1, max_depth, strings=strings)
