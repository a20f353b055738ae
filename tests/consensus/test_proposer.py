"""Proposer rotation (SPEC §5.4): weighted round-robin by power over keys sorted ascending."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from ledger.blocks import Validator
from ledger.proposer import compute_proposer, had_a_turn
from tests.factory import key

KEYS = sorted(key(f"proposer-{i}").public_key_hex for i in range(12))


def validators(powers: list[int]) -> list[Validator]:
    return [
        Validator(public_key=KEYS[i], power=power, name=f"v{i}") for i, power in enumerate(powers)
    ]


@given(
    n=st.integers(1, 12),
    power=st.integers(1, 1000),
    height=st.integers(1, 10**12),
    round=st.integers(0, 10**6),
)
def test_equal_powers_rotate_by_height_plus_round(
    n: int, power: int, height: int, round: int
) -> None:
    chosen = compute_proposer(validators([power] * n), height, round)
    assert chosen == KEYS[(height + round) % n]


@given(powers=st.lists(st.integers(1, 20), min_size=1, max_size=8), start=st.integers(1, 10**6))
def test_each_validator_proposes_in_proportion_to_its_power(powers: list[int], start: int) -> None:
    """Over any sum(power) consecutive slots each validator proposes exactly `power` times."""
    members = validators(powers)
    total = sum(powers)
    counts = Counter(compute_proposer(members, start + slot, 0) for slot in range(total))
    assert counts == Counter({KEYS[i]: power for i, power in enumerate(powers)})


def test_slots_are_dealt_in_layers() -> None:
    members = validators([2, 1, 3])
    cycle = [compute_proposer(members, height, 0) for height in range(6, 12)]  # 6 ≡ 0 mod 6
    assert cycle == [KEYS[0], KEYS[1], KEYS[2], KEYS[0], KEYS[2], KEYS[2]]


@given(order=st.permutations(list(range(5))), height=st.integers(1, 100), round=st.integers(0, 50))
def test_the_order_of_the_set_does_not_matter(order: list[int], height: int, round: int) -> None:
    members = validators([3, 1, 4, 1, 5])
    shuffled = [members[i] for i in order]
    assert compute_proposer(shuffled, height, round) == compute_proposer(members, height, round)


def test_a_new_round_moves_to_the_next_slot() -> None:
    members = validators([1, 1, 1, 1])
    assert [compute_proposer(members, 7, r) for r in range(4)] == [
        KEYS[3],
        KEYS[0],
        KEYS[1],
        KEYS[2],
    ]


@given(
    powers=st.lists(st.integers(1, 5), min_size=1, max_size=6),
    height=st.integers(1, 10**6),
    round=st.integers(0, 40),
    who=st.integers(0, 6),
)
def test_a_turn_up_to_a_round_is_a_proposer_of_one_of_those_rounds(
    powers: list[int], height: int, round: int, who: int
) -> None:
    """`had_a_turn` (what a header's `proposer` may name once its block is decided in
    `round`) against the rounds one by one; one outside the set never had one."""
    members = validators(powers)
    public_key = KEYS[who]
    expected = any(compute_proposer(members, height, r) == public_key for r in range(round + 1))
    assert had_a_turn(members, height, public_key, round) == expected


def test_a_turn_takes_at_most_one_cycle_whatever_the_round() -> None:
    members = validators([1, 2, 1])
    assert all(had_a_turn(members, 5, KEYS[i], 2**53 - 1) for i in range(3))
    assert not had_a_turn(members, 5, KEYS[3], 2**53 - 1)
    first = compute_proposer(members, 5, 0)
    assert [k for k in KEYS[:3] if had_a_turn(members, 5, k, 0)] == [first]
