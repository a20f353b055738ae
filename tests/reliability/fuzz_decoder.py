"""Coverage-guided fuzzing of the outside-input decoders with atheris (issue 7, item 5).

    .venv/bin/pip install -e '.[fuzz]'            # atheris, from PyPI (a wheel for CPython 3.11)
    .venv/bin/python -m tests.reliability.fuzz_decoder -atheris_runs=2000000 [CORPUS_DIR]

libFuzzer mutates bytes, guided by the coverage of `ledger.encoding`, `ledger.schema`,
`ledger.transactions` and `consensus.messages`, and feeds them to the strict JSON decoder,
the envelope decoder and the consensus batch decoder. Their contract, as in
tests/reliability/test_fuzz.py: a value or a `LedgerError`; any other exception is a crash
that libFuzzer reports with the input that caused it (saved as crash-<sha1>). Whatever the
decoder accepts must also survive the canonical encoder and decode back to the same value.
Not run in CI (it runs until stopped, or for -atheris_runs inputs: ~9,000 inputs/s on one
core here). A corpus directory keeps what it learnt between runs; seeding it with valid
documents (the lines of an export) starts it deep in the format.
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from consensus.messages import decode_batch
    from ledger.encoding import canonical, decode
    from ledger.errors import LedgerError
    from ledger.transactions import decode_envelope

TRANSACTION_BYTES_MAX = 16384


def one_input(data: bytes) -> None:
    try:
        value = decode(data)
    except LedgerError:
        value = None
    if value is not None:
        try:
            encoded = canonical(value)
        except LedgerError:
            pass  # a key outside the signed value space: canonical refuses it, as it must
        else:
            assert decode(encoded) == value, data
    for decoder in (decode_envelope, decode_batch):
        with contextlib.suppress(LedgerError):
            decoder(data, transaction_bytes_max=TRANSACTION_BYTES_MAX)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
