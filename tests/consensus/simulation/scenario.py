"""What goes wrong in a simulated run, and when: a `Scenario` replays exactly.

A run has two phases. Chaos, for `chaos_ms` of virtual time: links lose, duplicate, delay and
so reorder messages, partitions (symmetric and one-way) come and go, validators crash (some
in the middle of carrying out an event's effects) and restart from their durable log, and up
to f validators are Byzantine. Then the heal: the `core` (at least 2f+1 correct validators)
is restarted where crashed and its links become reliable, with delays of at most
HEAL_DELAY_MS_MAX; the rest keep misbehaving. Every detail is in the scenario or follows from
`seed`, so `run(Scenario(...))` with the printed value replays a run event for event.

In one run of three the authority changes the validator set (SPEC §3.2 `set_validators`, the
H+2 rule): each validator's new power in `set_change` (0: it leaves the set), the transaction
placed at `set_change_at` in the workload, so that it is decided during the chaos or after. The
new set keeps the assumptions: the core holds more than two thirds of its power, the Byzantine
validators less than a third.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from hypothesis import strategies as st

BEHAVIOURS = ("silent", "equivocate", "invalid", "flood", "replay", "twins", "forge")
SIZES = (4, 7)
LOSS_PERMILLE_MAX = 300  # 30 %
DUPLICATE_PERMILLE_MAX = 200
DELAY_MS_MAX = 400
HEAL_DELAY_MS_MAX = 100
CHAOS_MS_MIN, CHAOS_MS_MAX = 1_000, 6_000
SKEW_MS_MAX = 300  # each validator's clock is off by at most this much
# In two runs of three, validators wait after a block for something to decide (a
# transaction, evidence, another validator's message) for up to one of EMPTY_BLOCK_MS before
# they add an empty block (`Timeouts.empty_block_ms`); in the others they add one every block
# interval. In those runs the workload arrives a block's worth every TRANSACTION_GAP_MS, so
# the chain idles between batches: with 5 s each gap holds a wait that runs out and one that
# a transaction ends; with 60 s (a node's default) no wait runs out within a run, so progress
# after the heal (HEAL_PROGRESS_MS_MAX, 30 s) needs what ends a wait early.
EMPTY_BLOCK_MS = (0, 5_000, 60_000)
TRANSACTION_GAP_MS = 7_000
SET_CHANGE_POWER_MAX = 3
SET_CHANGE_AT = (2, 14)  # where in the workload: after the authority's two, up to ~height 5


@dataclass(frozen=True, slots=True, kw_only=True)
class Partition:
    """From `start_ms` to `end_ms`, no message goes from `a` to `b` for each (a, b) blocked.

    a and b are validator indices; n + i names the second process of twins i."""

    start_ms: int
    end_ms: int
    blocked: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Crash:
    """Validator `node` crashes at `at_ms` (`torn`: part way through an event's effects) and
    restarts from its durable log `down_ms` later (a core validator at the heal at latest)."""

    node: int
    at_ms: int
    down_ms: int
    torn: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    seed: int
    n: int
    byzantine: tuple[tuple[int, str], ...]  # (validator index, behaviour), at most f
    loss_permille: int
    duplicate_permille: int
    delay_ms: tuple[int, int]
    partitions: tuple[Partition, ...]
    crashes: tuple[Crash, ...]
    chaos_ms: int
    core: tuple[int, ...]  # correct validators healed after the chaos, at least 2f+1
    skew_ms: tuple[int, ...]
    beyond_f: bool = False  # more than f Byzantine validators: only the negative test
    empty_block_ms: int = 0  # every validator's `Timeouts.empty_block_ms`
    set_change: tuple[int, ...] = ()  # each validator's power in the new set (0: out); () none
    set_change_at: int = SET_CHANGE_AT[0]  # the set_validators' index in the workload

    @property
    def f(self) -> int:
        return (self.n - 1) // 3

    def __post_init__(self) -> None:
        faulty = {index for index, _ in self.byzantine}
        assert len(faulty) == len(self.byzantine)
        assert self.beyond_f or len(faulty) <= self.f
        assert self.beyond_f or len(self.core) >= 2 * self.f + 1
        assert not faulty & set(self.core)
        assert all(behaviour in BEHAVIOURS for _, behaviour in self.byzantine)
        assert len(self.skew_ms) == self.n
        assert not self.set_change or set_change_fits(self, self.set_change)
        assert SET_CHANGE_AT[0] <= self.set_change_at <= SET_CHANGE_AT[1]

    @classmethod
    def from_seed(cls, seed: int) -> Scenario:
        """A scenario drawn from `seed` alone, with the same distribution as `scenarios()`."""
        return build_scenario(_RandomDraw(random.Random(seed)), seed)


def set_change_fits(scenario: Scenario, powers: Sequence[int]) -> bool:
    """Whether the new set `powers` keeps the run's assumptions: every core validator stays
    in it, the core holds more than 2/3 of its power and (unless `beyond_f`) the Byzantine
    validators less than 1/3."""
    total = sum(powers)
    core = sum(powers[i] for i in scenario.core)
    byzantine = sum(powers[i] for i, _ in scenario.byzantine)
    return (
        len(powers) == scenario.n
        and all(0 <= p <= SET_CHANGE_POWER_MAX for p in powers)
        and all(powers[i] >= 1 for i in scenario.core)
        and 3 * core > 2 * total
        and (scenario.beyond_f or 3 * byzantine < total)
    )


class Draw(Protocol):
    """Where a scenario's choices come from: a seeded `random.Random`, or hypothesis."""

    def integer(self, low: int, high: int) -> int: ...

    def sample(self, population: Sequence[int], k: int) -> list[int]: ...


class _RandomDraw:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def sample(self, population: Sequence[int], k: int) -> list[int]:
        return self.rng.sample(list(population), k)


class _HypothesisDraw:
    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw

    def integer(self, low: int, high: int) -> int:
        return self.draw(st.integers(low, high))

    def sample(self, population: Sequence[int], k: int) -> list[int]:
        return list(self.draw(st.permutations(list(population))))[:k]


def build_scenario(draw: Draw, seed: int) -> Scenario:
    n = SIZES[draw.integer(0, len(SIZES) - 1)]
    f = (n - 1) // 3
    faulty = draw.sample(range(n), draw.integer(0, f))
    byzantine = tuple(
        sorted((index, BEHAVIOURS[draw.integer(0, len(BEHAVIOURS) - 1)]) for index in faulty)
    )
    correct = sorted(set(range(n)) - set(faulty))
    core = tuple(sorted(draw.sample(correct, draw.integer(2 * f + 1, len(correct)))))
    chaos_ms = draw.integer(CHAOS_MS_MIN, CHAOS_MS_MAX)
    low = draw.integer(1, DELAY_MS_MAX // 2)
    high = draw.integer(low, DELAY_MS_MAX)
    partitions = []
    for _ in range(draw.integer(0, 3)):
        start = draw.integer(0, chaos_ms)
        end = draw.integer(start, chaos_ms + 500)
        if draw.integer(0, 1):  # symmetric: two sides
            side = set(draw.sample(range(n), draw.integer(1, n - 1)))
            blocked = tuple(
                (a, b) for a in range(n) for b in range(n) if a != b and (a in side) != (b in side)
            )
        else:  # one-way links
            pairs = {tuple(draw.sample(range(n), 2)) for _ in range(draw.integer(1, n))}
            blocked = tuple(sorted((a, b) for a, b in pairs))
        partitions.append(Partition(start_ms=start, end_ms=end, blocked=blocked))
    crashes = tuple(
        Crash(
            node=node,
            at_ms=draw.integer(0, chaos_ms),
            down_ms=draw.integer(0, 3_000),
            torn=bool(draw.integer(0, 1)),
        )
        for node in sorted(draw.sample(correct, draw.integer(0, min(2, len(correct)))))
    )
    scenario = Scenario(
        seed=seed,
        n=n,
        byzantine=byzantine,
        loss_permille=draw.integer(0, LOSS_PERMILLE_MAX),
        duplicate_permille=draw.integer(0, DUPLICATE_PERMILLE_MAX),
        delay_ms=(low, high),
        partitions=tuple(partitions),
        crashes=crashes,
        chaos_ms=chaos_ms,
        core=core,
        skew_ms=tuple(draw.integer(-SKEW_MS_MAX, SKEW_MS_MAX) for _ in range(n)),
        empty_block_ms=EMPTY_BLOCK_MS[draw.integer(0, len(EMPTY_BLOCK_MS) - 1)],
    )
    # Drawn last, so that a seed's other choices are what they were before set changes.
    if draw.integer(0, 2) == 0:
        powers = tuple(draw.integer(1 if i in core else 0, SET_CHANGE_POWER_MAX) for i in range(n))
        at = draw.integer(*SET_CHANGE_AT)
        if set_change_fits(scenario, powers):
            scenario = dataclasses.replace(scenario, set_change=powers, set_change_at=at)
    return scenario


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """Scenarios drawn by hypothesis, choice by choice (so a failure shrinks)."""
    return build_scenario(_HypothesisDraw(draw), draw(st.integers(0, 2**32 - 1)))
