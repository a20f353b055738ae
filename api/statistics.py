"""Running totals of the ledger's credit flows, for the explorer's home page and city dashboard.

Credits flow four ways, each counted in units (1 unit = 1 kg CO2e, SPEC §3.4) when its
transaction commits:

- issued: the recipients of an `issue`;
- retired: a `retire`, whatever its purpose;
- redeemed: a `retire` with purpose `incentive` into a programme (a part of retired);
- invalidated: an `invalidate`.

They are kept by month (of the block time, in the explorer's time zone), by methodology, by
certifier (of the batch) and by programme (with each programme's months), beside the number of
retirements. Circulating units follow: issued - retired - invalidated (SPEC §3.4 conservation,
which every block asserts).

The totals are built from what the ledger keeps anyway, without parsing envelopes: issuances
from the batch entries (numbered in order, so the new ones follow the last one counted),
retirements from their records (found through the store's height index), and only the rare
invalidations from their envelopes. `refresh(node)` reads only the heights it has not seen
yet, so a page costs what the chain grew since the last page; the first refresh of a node
reads the whole chain once (bench/explorer.py measures it), in steps of `REFRESH_HEIGHTS_MAX`
heights.
A snapshot (`Totals`) is immutable: a page renders one height's totals while the next refresh
builds the next snapshot.
"""

from __future__ import annotations

import copy
import datetime
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from api.node import Node
from ledger.state import State
from ledger.store import Store

FLOWS: Final = ("issued", "retired", "redeemed", "invalidated")
REFRESH_HEIGHTS_MAX: Final = 2000  # heights one query groups (a block holds <= 5,000 tx)
MS_PER_MINUTE: Final = 60_000
MS_PER_DAY: Final = 86_400_000

# The retirements and invalidations committed in a range of heights (the store's height index).
# A retirement's figures come from its record in the state (SPEC §3.4: permanent), so only an
# invalidation's envelope is read, and invalidations are rare.
_EVENTS: Final = """
SELECT t.tx_id, t.type, b.time, CASE t.type WHEN 'invalidate' THEN t.envelope END
FROM transactions AS t JOIN blocks AS b ON b.height = t.height
WHERE t.height > ? AND t.height <= ? AND t.type IN ('retire', 'invalidate')
"""


def _zero() -> dict[str, int]:
    return dict.fromkeys(FLOWS, 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Totals:
    """The flows up to `height` (each a read-only mapping of FLOWS to units)."""

    height: int
    total: Mapping[str, int]
    by_month: Mapping[str, Mapping[str, int]]  # "YYYY-MM" -> flows, months in order
    by_methodology: Mapping[str, Mapping[str, int]]
    by_certifier: Mapping[str, Mapping[str, int]]
    by_programme: Mapping[str, Mapping[str, int]]  # program_id -> {"redeemed", "retirements"}
    programme_months: Mapping[str, Mapping[str, int]]  # program_id -> month -> units redeemed
    retirements: int
    batches: int

    @property
    def circulating(self) -> int:
        return self.total["issued"] - self.total["retired"] - self.total["invalidated"]


def _frozen(table: dict[str, dict[str, int]]) -> Mapping[str, Mapping[str, int]]:
    return MappingProxyType({key: MappingProxyType(dict(value)) for key, value in table.items()})


@dataclass(slots=True)
class _Tally:
    height: int = 0
    total: dict[str, int] = field(default_factory=_zero)
    by_month: dict[str, dict[str, int]] = field(default_factory=dict)
    by_methodology: dict[str, dict[str, int]] = field(default_factory=dict)
    by_certifier: dict[str, dict[str, int]] = field(default_factory=dict)
    by_programme: dict[str, dict[str, int]] = field(default_factory=dict)
    programme_months: dict[str, dict[str, int]] = field(default_factory=dict)
    retirements: int = 0
    batches: int = 0

    def add(self, flows: tuple[str, ...], units: int, month: str, batch: Mapping[str, Any]) -> None:
        for bucket in (
            self.total,
            self.by_month.setdefault(month, _zero()),
            self.by_methodology.setdefault(batch["methodology_id"], _zero()),
            self.by_certifier.setdefault(batch["certifier"], _zero()),
        ):
            for name in flows:
                bucket[name] += units

    def add_retirement(
        self, record: Mapping[str, Any], month: str, batch: Mapping[str, Any]
    ) -> None:
        units = record["quantity"]
        program = record["program_id"]
        self.retirements += 1
        if program is None:
            self.add(("retired",), units, month, batch)
            return
        self.add(("retired", "redeemed"), units, month, batch)
        entry = self.by_programme.setdefault(program, {"redeemed": 0, "retirements": 0})
        entry["redeemed"] += units
        entry["retirements"] += 1
        months = self.programme_months.setdefault(program, {})
        months[month] = months.get(month, 0) + units

    def snapshot(self) -> Totals:
        return Totals(
            height=self.height,
            total=MappingProxyType(dict(self.total)),
            by_month=_frozen(dict(sorted(self.by_month.items()))),
            by_methodology=_frozen(self.by_methodology),
            by_certifier=_frozen(self.by_certifier),
            by_programme=_frozen(self.by_programme),
            programme_months=_frozen(
                {p: dict(sorted(m.items())) for p, m in self.programme_months.items()}
            ),
            retirements=self.retirements,
            batches=self.batches,
        )


class Statistics:
    """The flows of one node's chain, brought up to the node's height on demand."""

    def __init__(self, *, utc_offset_minutes: int) -> None:
        self.offset_ms = utc_offset_minutes * MS_PER_MINUTE
        self._tally = _Tally()
        self._snapshot = self._tally.snapshot()
        self._lock = threading.Lock()
        self._months: dict[int, str] = {}

    def month(self, time_ms: int) -> str:
        """The month ("YYYY-MM") of a unix-ms time in the explorer's time zone; remembered by
        day, since a refresh asks for the month of every retirement."""
        day = (time_ms + self.offset_ms) // MS_PER_DAY
        found = self._months.get(day)
        if found is None:
            moment = datetime.datetime.fromtimestamp(day * (MS_PER_DAY // 1000), tz=datetime.UTC)
            found = self._months[day] = f"{moment.year:04d}-{moment.month:02d}"
        return found

    def refresh(self, node: Node, *, stop: threading.Event | None = None) -> Totals:
        """The totals at the node's current height (reading only the heights not seen yet).
        A set `stop` ends the reading between two steps (the totals then trail the node)."""
        state = node.state
        if self._snapshot.height >= state.height:
            return self._snapshot
        with self._lock:  # one refresh at a time; the others then find it done
            while self._tally.height < state.height and not (stop is not None and stop.is_set()):
                high = min(state.height, self._tally.height + REFRESH_HEIGHTS_MAX)
                # Counted into a copy, kept only once the whole range is read: a read that
                # fails halfway (StoreError) must leave the tally as it was, or the next
                # refresh would count the range's first events twice.
                working = copy.deepcopy(self._tally)
                self._read(node.reader(), state, working, high)
                self._tally = working
            self._snapshot = self._tally.snapshot()
            return self._snapshot

    def _read(self, store: Store, state: State, tally: _Tally, high: int) -> None:
        """Add the heights (tally.height, high] to `tally`."""
        # Batches are numbered in order of issuance (SPEC §3.4): the new ones follow the last.
        while tally.batches < state.batch_count:
            batch = state.get(f"batch/B-{tally.batches + 1}")
            if batch is None or batch["height"] > high:
                break
            tally.add(("issued",), batch["issued"], self.month(batch["time"]), batch)
            tally.batches += 1
        for tx_id, kind, time_ms, envelope in store.db.execute(_EVENTS, (tally.height, high)):
            month = self.month(time_ms)
            if kind == "retire":
                record = state.get(f"retirement/{tx_id}")
                tally.add_retirement(record, month, state.get(f"batch/{record['batch_id']}"))
            else:
                payload = json.loads(envelope)["tx"]["payload"]
                batch = state.get(f"batch/{payload['batch_id']}")
                tally.add(("invalidated",), payload["quantity"], month, batch)
        tally.height = high
