"""The virtual clock and the links between simulated validators.

One seeded `random.Random` decides every loss, duplicate and delay, and events at the same
virtual time run in the order they were scheduled, so a run is a function of its scenario.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.consensus.simulation.scenario import HEAL_DELAY_MS_MAX, Scenario


@dataclass(order=True)
class Event:
    time: int
    sequence: int
    action: Callable[[], None] = field(compare=False)


class Clock:
    """Virtual time and the queue of what happens next."""

    def __init__(self) -> None:
        self.now = 0
        self._queue: list[Event] = []
        self._sequence = 0

    def at(self, time: int, action: Callable[[], None]) -> None:
        assert time >= self.now
        self._sequence += 1
        heapq.heappush(self._queue, Event(time, self._sequence, action))

    def step(self) -> bool:
        """Run the next event; False when none is left."""
        if not self._queue:
            return False
        event = heapq.heappop(self._queue)
        self.now = event.time
        event.action()
        return True


class Links:
    """Whether and when a message sent from validator `a` to `b` arrives."""

    def __init__(self, scenario: Scenario, rng: random.Random) -> None:
        self.scenario = scenario
        self.rng = rng
        self.healed = False
        self.sent = 0
        self.lost = 0

    def delays(self, a: int, b: int, now: int) -> list[int]:
        """The delays of the copies of one message that arrive: none, one, or two."""
        scenario, rng = self.scenario, self.rng
        self.sent += 1
        if self.healed and a in scenario.core and b in scenario.core:
            return [rng.randint(1, HEAL_DELAY_MS_MAX)]
        if not self.healed:
            for partition in scenario.partitions:
                if partition.start_ms <= now < partition.end_ms and (a, b) in partition.blocked:
                    self.lost += 1
                    return []
        if rng.randrange(1000) < scenario.loss_permille:
            self.lost += 1
            return []
        low, high = scenario.delay_ms
        copies = [rng.randint(low, high)]
        if rng.randrange(1000) < scenario.duplicate_permille:
            copies.append(rng.randint(low, high))
        return copies
