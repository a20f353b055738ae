"""Every bound the ledger keeps, in one place, with its unit last (SPEC §2.1, §3.2, §5.1, §7.2).

A limit that is a chain parameter (set in genesis) has its default here; the value in force is
the genesis one.
"""

from typing import Final

JSON_INTEGER_MAX: Final = 2**53 - 1
JSON_DEPTH_MAX: Final = 8
HASH_HEX_CHARS: Final = 64
SIGNATURE_HEX_CHARS: Final = 128

SLUG_CHARS_MAX: Final = 63
TEXT_CHARS_MAX: Final = 200
LONG_TEXT_CHARS_MAX: Final = 500
PROJECT_ID_CHARS_MAX: Final = 128
CHAIN_ID_CHARS_MAX: Final = 64

ACCOUNT_KEYS_MAX: Final = 10
TRANSACTION_SIGNATURES_MAX: Final = ACCOUNT_KEYS_MAX
ACCREDITATION_METHODOLOGIES_MAX: Final = 64
ISSUE_RECIPIENTS_MAX: Final = 1000
VALIDATORS_MAX: Final = 100
VALIDATOR_POWER_MAX: Final = 1000
ISSUE_PERIOD_DAYS_MAX: Final = 366
GENESIS_METHODOLOGIES_MAX: Final = 1000
AUTHORITY_KEYS_MAX: Final = ACCOUNT_KEYS_MAX

BLOCK_INTERVAL_MS_DEFAULT: Final = 1000
BLOCK_TRANSACTIONS_MAX_DEFAULT: Final = 5000
TRANSACTION_BYTES_MAX_DEFAULT: Final = 16384
BLOCK_TRANSACTIONS_MAX_CEILING: Final = 100_000
TRANSACTION_BYTES_MAX_CEILING: Final = 1024 * 1024

# The node's pending pool (SPEC §7.2): bounded in total and in how far ahead of an account's
# committed nonce it holds transactions.
POOL_TRANSACTIONS_MAX: Final = 50_000
POOL_NONCE_GAP_MAX: Final = 64
OUTCOMES_REMEMBERED_MAX: Final = 10_000  # recent outcomes in memory; the store has the rest

assert ISSUE_RECIPIENTS_MAX * JSON_INTEGER_MAX > JSON_INTEGER_MAX, "sums must be checked"
assert POOL_NONCE_GAP_MAX < POOL_TRANSACTIONS_MAX
assert BLOCK_TRANSACTIONS_MAX_DEFAULT <= BLOCK_TRANSACTIONS_MAX_CEILING
assert TRANSACTION_BYTES_MAX_DEFAULT <= TRANSACTION_BYTES_MAX_CEILING
