"""Evidence benchmark: what a block full of evidence costs `apply_block` (SPEC §5.4).

    .venv/bin/python bench/evidence.py [--seconds 3]

A genesis with VALIDATORS_MAX validators, and block 1 carrying EVIDENCE_PER_BLOCK_MAX pieces
of evidence (one double prevote per validator): the most a block may hold, so the most a
hostile proposer can make every validator (and the auditor) check per block. Each piece is two
Ed25519 signatures. Prints the time to apply that block, the evidence signatures verified per
second, and beside them the raw single-core Ed25519 verify rate measured in the same run
(bench/ingest.py's `raw_verify_rate`) and the ratio; then the time to refuse the same block
with its last piece forged (every check runs before the forgery is found).

Measured on the 2-core development machine (2026-12-04, load average 5.4 from other work, so
the ratio is the figure to compare): the full block applied in 27.3 ms, 7,331 evidence
signatures/s beside 7,730 raw verifications/s (ratio 0.95: the signatures are nearly all of
the cost); with its last piece forged it was refused in 24.4 ms. Before the governing set was
built once per height rather than per piece, the ratio was 0.39.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest import raw_verify_rate
from ledger.blocks import Block, Validator, compute_evidence_hash
from ledger.crypto import PrivateKey
from ledger.errors import InvalidBlockError
from ledger.evidence import Evidence, make_evidence, sign_vote
from ledger.genesis import genesis_state, make_genesis_document, parse_genesis
from ledger.limits import EVIDENCE_PER_BLOCK_MAX, VALIDATORS_MAX
from ledger.state import State
from ledger.state_transition import apply_block, build_block

CHAIN_ID = "bench-evidence"


def full_block() -> tuple[State, Block]:
    keys = [PrivateKey(seed=os.urandom(32)) for _ in range(VALIDATORS_MAX)]
    authority = PrivateKey(seed=os.urandom(32))
    document = make_genesis_document(
        chain_id=CHAIN_ID,
        genesis_time=1_767_225_600_000,
        authority_name="authority",
        authority_keys=[authority.public_key_hex],
        authority_threshold=1,
        validators=[
            Validator(public_key=k.public_key_hex, power=1, name=f"v{i}")
            for i, k in enumerate(keys)
        ],
        methodologies=[],
    )
    state = genesis_state(parse_genesis(document))
    evidence = [
        make_evidence(
            *(
                sign_vote(key, chain_id=CHAIN_ID, vote_type="prevote", height=1, round=0,
                          block_hash=block_hash)
                for block_hash in (None, "ab" * 32)
            )
        )
        for key in keys[:EVIDENCE_PER_BLOCK_MAX]
    ]  # fmt: skip
    built = build_block(
        state,
        [],
        time=state.head_time + 1,
        proposer=keys[0].public_key_hex,
        last_commit=None,
        evidence=evidence,
    )
    assert len(built.block.evidence) == EVIDENCE_PER_BLOCK_MAX, built.evidence_left_out
    return state, built.block


def forged(block: Block) -> Block:
    last = block.evidence[-1]
    raw = bytearray(bytes.fromhex(last.b.signature))
    raw[40] ^= 1
    bad: Evidence = dataclasses.replace(last, b=dataclasses.replace(last.b, signature=raw.hex()))
    evidence = (*block.evidence[:-1], bad)
    header = dataclasses.replace(block.header, evidence_hash=compute_evidence_hash(evidence))
    return dataclasses.replace(block, header=header, evidence=evidence)


def time_per_call(call: object, seconds: float) -> float:
    assert callable(call)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call()
        count += 1
    return (time.perf_counter() - start) / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    options = parser.parse_args()
    state, block = full_block()
    bad = forged(block)

    def refuse() -> None:
        try:
            apply_block(state, bad)
        except InvalidBlockError as error:
            assert error.rule == "evidence_signature", error
        else:
            raise AssertionError("the forged block applied")

    applied = time_per_call(lambda: apply_block(state, block), options.seconds)
    refused = time_per_call(refuse, options.seconds)
    raw, backend = raw_verify_rate()
    signatures = 2 * len(block.evidence)
    rate = signatures / applied
    print(f"load average {os.getloadavg()[0]:.1f}")
    print(
        f"block of {len(block.evidence)} evidence pieces ({signatures} signatures): "
        f"applied in {applied * 1000:.1f} ms, {rate:,.0f} evidence signatures/s"
    )
    print(f"raw single-core Ed25519 verify ({backend}): {raw:,.0f}/s; ratio {rate / raw:.2f}")
    print(f"the same block with its last piece forged: refused in {refused * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
