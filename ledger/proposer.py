"""Who proposes at (height, round): weighted round-robin by power (SPEC §5.4), pure.

The validators are sorted by public key. Each validator owns `power` slots of a cycle of
`sum(power)` slots, dealt in layers: layer j holds, in key order, every validator whose power
is more than j. So the slots are

    powers (2, 1, 3)  ->  v0 v1 v2 | v0 v2 | v2        (a cycle of 6)

and the proposer of (height, round) owns slot `(height + round) mod sum(power)`. Every validator
proposes in proportion to its power; with equal powers (n validators of power p: p layers of
the whole set) the proposer is validator `(height + round) mod n`, as the SPEC requires.
Consecutive rounds of a height take consecutive slots.

In the ledger, not in consensus: the auditor checks a block header's `proposer` against the
turns too (`had_a_turn`).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from functools import lru_cache

from ledger.blocks import Validator


def compute_proposer(validators: Sequence[Validator], height: int, round: int) -> str:
    """The public key of the proposer of (height, round) among `validators`."""
    assert validators and height >= 1 and round >= 0
    slots = _slots(tuple(sorted((v.public_key, v.power) for v in validators)))
    return slots[(height + round) % len(slots)]


@lru_cache(maxsize=4)  # a cycle is at most 100 x 1000 slots; sets change rarely
def _slots(powers: tuple[tuple[str, int], ...]) -> tuple[str, ...]:
    """The cycle of slots for validators given as sorted (public_key, power) pairs."""
    layers = max(power for _, power in powers)
    return tuple(key for layer in range(layers) for key, power in powers if power > layer)


@lru_cache(maxsize=4)
def _positions(slots: tuple[str, ...]) -> dict[str, list[int]]:
    """Each key's slots in the cycle, in order."""
    positions: dict[str, list[int]] = {}
    for index, key in enumerate(slots):
        positions.setdefault(key, []).append(index)
    return positions


def first_turn(validators: Sequence[Validator], height: int, public_key: str) -> int | None:
    """The first round of `height` that `public_key` proposes, or None if it never does (not
    in the set): its first slot from the height's, round 0's, going round the cycle (a
    round past one cycle repeats an earlier one). A lookup, whatever the cycle's length."""
    assert validators and height >= 1
    slots = _slots(tuple(sorted((v.public_key, v.power) for v in validators)))
    mine = _positions(slots).get(public_key)
    if mine is None:
        return None
    start = height % len(slots)
    after = bisect.bisect_left(mine, start)
    slot = mine[after] if after < len(mine) else mine[0] + len(slots)
    return slot - start


def had_a_turn(validators: Sequence[Validator], height: int, public_key: str, round: int) -> bool:
    """Whether `public_key` proposes (height, r) for some round r up to `round`: what a
    block's header may name as its `proposer` once the block is decided at `round` (it was
    built in that round, or in an earlier one and proposed again)."""
    assert round >= 0
    first = first_turn(validators, height, public_key)
    return first is not None and first <= round


def proposer_objection(
    validators: Sequence[Validator], height: int, proposer: str, round: int
) -> str | None:
    """Why a block of `height` decided at `round` may not name `proposer` in its header (no
    turn of it up to that round), or None: the audit's rule `proposer`, and block sync's."""
    if had_a_turn(validators, height, proposer, round):
        return None
    return (
        f"the header names {proposer} as its proposer, whose turn came in no round up to"
        f" {round}, the round of its certificate"
    )
