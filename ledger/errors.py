"""The ledger's exceptions, each with a stable `code` (the API's problem `code`, SPEC §7.3).

    LedgerError
    ├── DecodeError              malformed_json, limit_exceeded, payload_too_large
    ├── FieldError               invalid_field, limit_exceeded
    ├── TransactionRejected      one of RULE_CODES: a §3.3 rule failed
    ├── InvalidBlockError        a block breaks a §5 rule (names the height and the rule)
    ├── InvalidProofError        a proof, receipt or evidence does not verify (§6.4, §5.4);
    │                            evidence names its check (ledger.evidence's codes)
    ├── PoolError                mempool_full, bad_nonce, duplicate (node-side admission)
    └── StoreError               the data directory cannot be used (corrupt, mismatched)
        ├── StoreUnreadable      store_unreadable: this process may not open it
        └── StoreExists          a ledger is already where one was to be made

Messages say which rule failed and with what values; `code` never changes once published.
"""

from __future__ import annotations

from typing import Final

RULE_CODES: Final = frozenset(
    {
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
        "payload_too_large",
        "invalid_field",
    }
)


class LedgerError(Exception):
    """Base of every error the ledger raises on bad input."""

    code: str = "ledger_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0])


class DecodeError(LedgerError):
    """Bytes that are not acceptable JSON under SPEC §2.1."""

    code = "malformed_json"


class FieldError(LedgerError):
    """A decoded value with a missing, unknown, mistyped or out-of-range field."""

    code = "invalid_field"

    def __init__(self, path: str, message: str, *, code: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message, code=code)
        self.path = path


class TransactionRejected(LedgerError):
    """A transaction broke a validity rule; nothing changed."""

    def __init__(self, code: str, message: str, *, tx_id: str | None = None) -> None:
        assert code in RULE_CODES, code
        super().__init__(message, code=code)
        self.tx_id = tx_id


class InvalidBlockError(LedgerError):
    """A block that must not be appended: it names the height and the rule."""

    code = "invalid_block"

    def __init__(self, height: int, rule: str, message: str, *, tx_id: str | None = None) -> None:
        super().__init__(f"block {height}: {rule}: {message}")
        self.height = height
        self.rule = rule
        self.tx_id = tx_id


class InvalidProofError(LedgerError):
    """A proof, certificate or receipt that does not verify; names the failed check."""

    code = "invalid_proof"


class PoolError(LedgerError):
    """A transaction the pending pool will not take (full, nonce out of window, duplicate)."""


class StoreError(LedgerError):
    """A data directory that cannot be used as it is."""

    code = "store_error"


class StoreUnreadable(StoreError):
    """A store this process may not open (permissions, a read-only file system): nothing says
    it is damaged, so it must not be rebuilt or moved aside."""

    code = "store_unreadable"


class StoreExists(StoreError):
    """A ledger is where a new one was to be created (another process may have made it
    while this one waited for the directory)."""


def printable(text: str) -> str:
    """`text` with every character a terminal could act on (controls, escapes, format and
    line separators: whatever `str.isprintable` refuses, but the space) written as its
    Python escape, so a message that quotes another party's words can be printed or logged
    as it is: an `ESC [2J` sent by a node cannot clear the auditor's screen."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
