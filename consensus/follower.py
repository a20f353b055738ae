"""A follower: a node that signs nothing and takes the chain from the nodes it follows.

It implements the `BlockProducer` interface the node's block loop drives, but produces
nothing of its own: every FOLLOW_POLL_MS (at once while its sources have more) it runs one
`consensus.sync.BlockSync` attempt, which checks every certificate against the validator set
governing its height and replays every block with `apply_block` before anything is stored,
and appends what passes to its own store, exactly as a validator stores a decided block. So a
third party serves the whole read, proof, receipt and export API from its own copy, and trusts
the nodes it follows for nothing but liveness: a node serving a forged block or certificate
is refused (logged; nothing of it stored) and the next one asked; a node gone away is asked
again after a bounded backoff while the follower keeps serving what it has.

A follower holds no pool and takes no transactions itself: the API forwards its users'
submissions to the nodes it follows (`api.follow.Forwarder`, docs/decisions/0006).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

from consensus.pool import Pool
from consensus.producer import CommittedBlock, Outcome, committed_outcomes
from consensus.sync import BlockSync
from ledger.blocks import Block, Certificate
from ledger.errors import LedgerError
from ledger.limits import FOLLOW_POLL_MS
from ledger.state import State
from ledger.store import Store
from ledger.transactions import Envelope


def _monotonic_ms() -> int:
    return int(time.monotonic() * 1000)


class Follower:
    """A non-validating node's producer; see the module docstring."""

    def __init__(
        self,
        store: Store,
        sync: BlockSync,
        *,
        poll_ms: int = FOLLOW_POLL_MS,
        clock_ms: Callable[[], int] = _monotonic_ms,
    ) -> None:
        assert poll_ms > 0
        self.store = store
        self.sync = sync
        self.poll_ms = poll_ms
        self._clock_ms = clock_ms
        self.pool = Pool()  # always empty: what the node asks of every producer
        self.rejections = 0  # likewise: it rejects nothing
        self.outcomes: OrderedDict[str, Outcome] = OrderedDict()  # likewise
        self._lock = threading.Lock()  # the state readers see
        self._state = store.load_state()
        self._committed: deque[CommittedBlock] = deque()
        self._next_poll_ms = 0

    # --- the BlockProducer interface ------------------------------------------------------------

    @property
    def state(self) -> State:
        with self._lock:
            return self._state

    def pending_count(self) -> int:
        return 0

    def due(self, now_ms: int) -> bool:
        if self._committed:
            return True
        return self._clock_ms() >= max(self._next_poll_ms, self.sync.retry_at_ms)

    def submit(
        self,
        envelopes: Sequence[Envelope],
        signature_checks: Sequence[LedgerError | None] | None = None,
    ) -> list[Outcome]:
        """Never called: the API forwards a follower's submissions (`api.follow`)."""
        raise AssertionError("a follower takes no transactions; the API forwards them")

    def produce(self, now_ms: int) -> CommittedBlock | None:
        """One sync attempt when one is due; each appended block is returned by a call of its
        own, in order (as a validator's producer returns its decided blocks)."""
        if not self._committed and self._clock_ms() >= self._next_poll_ms:
            state = self.sync.step(self.state, self._append)
            more = self.sync.is_behind(state.height, lag=1)
            self._next_poll_ms = self._clock_ms() + (0 if more else self.poll_ms)
        return self._committed.popleft() if self._committed else None

    def take_settled(self) -> list[CommittedBlock]:
        """The blocks appended that `produce` has not returned yet, in order (a range whose
        later block the store refused leaves its earlier ones here; the node reports them)."""
        settled = list(self._committed)
        self._committed.clear()
        return settled

    def _append(self, block: Block, certificate: Certificate, state: State) -> None:
        """A block that passed every check: durable first, then what readers see."""
        self.store.append(block, certificate, state)
        with self._lock:
            self._state = state
        self._committed.append(
            CommittedBlock(block=block, certificate=certificate, outcomes=committed_outcomes(block))
        )
