"""Small declarative validators for decoded JSON (SPEC §2.1 field rules, §3.2 field limits).

A validator takes a path (for messages) and a decoded value and returns the value or raises
`FieldError`: `invalid_field` for a wrong type, format or missing/unknown field, and
`limit_exceeded` for a string or array over its limit. Pure; used by transactions, genesis
and blocks.
"""

from __future__ import annotations

import datetime
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ledger.crypto import is_public_key
from ledger.encoding import shown_integer
from ledger.errors import FieldError
from ledger.limits import JSON_INTEGER_MAX

Validator = Callable[[str, Any], Any]

HEX64: Final[re.Pattern[str]] = re.compile(r"[0-9a-f]{64}\Z")
HEX128: Final[re.Pattern[str]] = re.compile(r"[0-9a-f]{128}\Z")
SLUG: Final[re.Pattern[str]] = re.compile(r"[a-z0-9][a-z0-9-]{1,62}\Z")
BATCH_ID: Final[re.Pattern[str]] = re.compile(r"B-[1-9][0-9]{0,15}\Z")
CHAIN_ID: Final[re.Pattern[str]] = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
DATE: Final[re.Pattern[str]] = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
JURISDICTION: Final[re.Pattern[str]] = re.compile(r"[A-Z]{2}-[A-Z0-9]{1,3}\Z")


def integer(low: int = 0, high: int = JSON_INTEGER_MAX) -> Validator:
    def check(path: str, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise FieldError(path, f"expected an integer, got {_kind(value)}")
        if value < low:
            raise FieldError(path, f"{shown_integer(value)} is below the minimum {low}")
        if value > high:
            raise FieldError(
                path, f"{shown_integer(value)} is above the maximum {high}", code="limit_exceeded"
            )
        return value

    return check


def text(high: int, *, low: int = 1, pattern: re.Pattern[str] | None = None) -> Validator:
    """A string of `low`..`high` characters with no control characters (or matching
    `pattern`, which then decides the alphabet)."""

    def check(path: str, value: Any) -> str:
        if not isinstance(value, str):
            raise FieldError(path, f"expected a string, got {_kind(value)}")
        if len(value) > high:
            raise FieldError(
                path, f"{len(value)} characters, at most {high} allowed", code="limit_exceeded"
            )
        if len(value) < low:
            raise FieldError(path, f"{len(value)} characters, at least {low} needed")
        if pattern is not None:
            if not pattern.match(value):
                raise FieldError(path, f"{value[:80]!r} does not match {pattern.pattern}")
        elif any(unicodedata.category(char) in ("Cc", "Cs") for char in value):
            raise FieldError(path, "control characters are not allowed")
        return value

    return check


HASH_HEX: Final[Validator] = text(64, low=64, pattern=HEX64)
ACCOUNT_ID: Final[Validator] = HASH_HEX
SLUG_ID: Final[Validator] = text(63, low=2, pattern=SLUG)
BATCH: Final[Validator] = text(18, low=3, pattern=BATCH_ID)


def public_key(path: str, value: Any) -> str:
    HASH_HEX(path, value)
    if not is_public_key(bytes.fromhex(value)):
        raise FieldError(path, "not a canonical Ed25519 curve point of large order")
    return str(value)


def signature_hex(path: str, value: Any) -> str:
    return str(text(128, low=128, pattern=HEX128)(path, value))


def date(path: str, value: Any) -> str:
    text(10, low=10, pattern=DATE)(path, value)
    try:
        datetime.date.fromisoformat(value)
    except ValueError as error:
        raise FieldError(path, f"{value!r} is not a calendar date") from error
    return str(value)


def enum(*choices: str) -> Validator:
    def check(path: str, value: Any) -> str:
        if value not in choices or not isinstance(value, str):
            shown = f"{value[:80]!r}" if isinstance(value, str) else _kind(value)
            raise FieldError(path, f"{shown} is not one of {', '.join(choices)}")
        return value

    return check


def boolean(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise FieldError(path, f"expected true or false, got {_kind(value)}")
    return value


def array(item: Validator, *, low: int, high: int, unique: bool = False) -> Validator:
    def check(path: str, value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise FieldError(path, f"expected an array, got {_kind(value)}")
        if len(value) > high:
            raise FieldError(
                path, f"{len(value)} items, at most {high} allowed", code="limit_exceeded"
            )
        if len(value) < low:
            raise FieldError(path, f"{len(value)} items, at least {low} needed")
        result = [item(f"{path}[{index}]", element) for index, element in enumerate(value)]
        if unique and len({repr(element) for element in result}) != len(result):
            raise FieldError(path, "items must not repeat")
        return result

    return check


@dataclass(frozen=True, slots=True)
class Field:
    check: Validator
    required: bool = True


def obj(fields: Mapping[str, Field | Validator]) -> Validator:
    """An object with exactly these fields (optional ones may be absent, never null)."""
    spec = {name: f if isinstance(f, Field) else Field(f) for name, f in fields.items()}

    def check(path: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise FieldError(path, f"expected an object, got {_kind(value)}")
        unknown = sorted(str(name) for name in set(value) - set(spec))
        if unknown:
            raise FieldError(path, f"unknown field {unknown[0][:80]!r}")
        result: dict[str, Any] = {}
        for name, field in spec.items():
            if name in value:
                result[name] = field.check(f"{path}.{name}" if path else name, value[name])
            elif field.required:
                raise FieldError(path, f"missing field {name!r}")
        return result

    return check


def optional(check: Validator) -> Field:
    return Field(check, required=False)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", str: "a string", list: "an array"}.get(
        type(value), "an object"
    )
