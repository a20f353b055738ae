"""Opaque list cursors: base64url of a small canonical JSON position. Clients pass them back
unchanged; a cursor that does not decode to the expected position is `invalid_field`."""

from __future__ import annotations

import base64
import binascii
from typing import Any, Final

from ledger.encoding import canonical, decode
from ledger.errors import LedgerError

CURSOR_CHARS_MAX: Final = 512


def encode_cursor(position: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(canonical(position)).decode().rstrip("=")


def decode_cursor(cursor: str | None, fields: dict[str, type]) -> dict[str, Any] | None:
    if cursor is None:
        return None
    try:
        if len(cursor) > CURSOR_CHARS_MAX:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        position = decode(raw)
    except (ValueError, binascii.Error, LedgerError) as error:
        raise LedgerError("cursor is not one this node gave out", code="invalid_field") from error
    if not isinstance(position, dict) or set(position) != set(fields):
        raise LedgerError("cursor is not one this node gave out", code="invalid_field")
    for name, kind in fields.items():
        if not isinstance(position[name], kind) or isinstance(position[name], bool):
            raise LedgerError("cursor is not one this node gave out", code="invalid_field")
    # One spelling a position: the one `encode_cursor` gives (padded, other JSON spacing or
    # escapes of it were taken as the same cursor, found by review).
    if encode_cursor(position) != cursor:
        raise LedgerError("cursor is not one this node gave out", code="invalid_field")
    return position
