"""The ledger state: a map from key strings to canonical-JSON values (SPEC §4), immutable.

Keys and value shapes (documented in docs/state.md, pinned by tests/vectors):

    account/<id>                   {"keys", "threshold", "nonce", "status"} (keys [] = unknown)
    methodology/<id>               {"methodology_id", "name", "document_sha256", "height"}
    certifier/<id>                 {"certifier", "name", "methodologies", "valid_from",
                                    "valid_until", "height", "revoked_height", "revoke_reason"}
    program/<id>                   {"program_id", "name", "valid_until", "height", "retired"}
    batch/<id>                     {"batch_id", "methodology_id", "project_id", "period_start",
                                    "period_end", "evidence_sha256", "certifier", "first_serial",
                                    "issued", "circulating", "retired", "invalidated", "memo",
                                    "tx_id", "height", "time"}
    lot/<batch_id>/<first_serial>  {"batch_id", "first_serial", "quantity", "owner", "status",
                                    "retirement_id"}
    retirement/<tx_id>             the §3.4 record
    issuance/<methodology>/<project>  [{"batch_id", "period_start", "period_end"}, ...]
    validators/current, validators/next   validator lists sorted by public key
    evidence/<validator>/<height>  {"validator", "height", "round", "evidence",
                                    "recorded_height"}

Besides the hashed entries a `State` carries what follows from them and from the chain so far:
the sparse Merkle tree, the log's peaks, the lot indexes (all lots of a batch; the circulating
lots of an owner in a batch), the batch counter and the next serial. `State.from_entries`
rebuilds those from the entries alone, which is how the store reopens a data directory.

And one thing the entries cannot give: `recent_validators`, the sets that governed the last
EVIDENCE_AGE_HEIGHTS_MAX heights (the entries hold only the sets of the next two heights).
Evidence of a height is verified against the set that governed it, so this is how far back
evidence can go. The store keeps it beside the head.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import immutables

from ledger.blocks import Validator, compute_validators_hash
from ledger.encoding import JSON
from ledger.limits import EVIDENCE_AGE_HEIGHTS_MAX
from ledger.merkle import LogNode, LogState
from ledger.state_tree import StateTree


@dataclass(frozen=True, slots=True, kw_only=True)
class Params:
    """Chain parameters, fixed in genesis (SPEC §5.1)."""

    block_interval_ms: int
    block_transactions_max: int
    transaction_bytes_max: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockDelta:
    """What the block that produced a state changed: the store writes exactly this."""

    changes: Mapping[str, JSON | None]
    encoded: Mapping[str, bytes | None]  # the same changes as canonical bytes
    log_nodes: tuple[LogNode, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class GoverningSet:
    """A validator set and the first height it governed, as far back as a state remembers."""

    first_height: int
    validators: tuple[Validator, ...]

    def to_json(self) -> dict[str, JSON]:
        return {
            "first_height": self.first_height,
            "validators": [v.to_json() for v in self.validators],
        }


def remember_validators(
    recent: tuple[GoverningSet, ...], *, height: int, validators: tuple[Validator, ...]
) -> tuple[GoverningSet, ...]:
    """`recent` (of a state at `height - 1`) once `validators` governed block `height`: the
    sets of heights `height - EVIDENCE_AGE_HEIGHTS_MAX + 1 .. height`, oldest first, the first
    one's `first_height` clipped to that window so that every node remembers the same."""
    assert not recent or recent[-1].first_height < height
    if recent and recent[-1].validators == validators:
        runs = list(recent)
    else:
        runs = [*recent, GoverningSet(first_height=height, validators=validators)]
    oldest = max(1, height - EVIDENCE_AGE_HEIGHTS_MAX + 1)
    while len(runs) > 1 and runs[1].first_height <= oldest:
        del runs[0]
    if runs[0].first_height < oldest:
        runs[0] = GoverningSet(first_height=oldest, validators=runs[0].validators)
    return tuple(runs)


@dataclass(frozen=True, slots=True, kw_only=True)
class State:
    chain_id: str
    genesis_hash: str
    authority: str
    params: Params
    height: int
    head_hash: str
    head_time: int
    recent_validators: tuple[GoverningSet, ...]  # see the module docstring; () at genesis
    entries: immutables.Map[str, Any]
    tree: StateTree
    log: LogState
    batch_lots: immutables.Map[str, tuple[int, ...]]
    holdings: immutables.Map[HoldingKey, tuple[int, ...]]
    batch_count: int
    next_serial: int
    delta: BlockDelta | None = field(default=None, compare=False)

    @property
    def state_root(self) -> str:
        return self.tree.root.hex()

    def get(self, key: str) -> Any:
        return self.entries.get(key)

    def current_validators(self) -> tuple[Validator, ...]:
        """The set governing height `self.height + 1`."""
        return _validators(self.entries["validators/current"])

    def next_validators(self) -> tuple[Validator, ...]:
        """The set governing height `self.height + 2`."""
        return _validators(self.entries["validators/next"])

    def validators_hash(self) -> str:
        return compute_validators_hash(self.current_validators())

    @property
    def last_validators(self) -> tuple[Validator, ...]:
        """The set that governed height `self.height` (none at genesis)."""
        return self.recent_validators[-1].validators if self.recent_validators else ()

    def governing_validators(self, height: int) -> tuple[Validator, ...] | None:
        """The set that governed (or governs) `height`, if this state knows it: heights from
        `self.height - EVIDENCE_AGE_HEIGHTS_MAX + 1` to `self.height + 1`."""
        if height == self.height + 1:
            return self.current_validators()
        if height > self.height or not self.recent_validators:
            return None
        if height < self.recent_validators[0].first_height:
            return None
        return next(
            run.validators for run in reversed(self.recent_validators) if run.first_height <= height
        )

    @classmethod
    def from_entries(
        cls,
        *,
        chain_id: str,
        genesis_hash: str,
        authority: str,
        params: Params,
        height: int,
        head_hash: str,
        head_time: int,
        recent_validators: tuple[GoverningSet, ...],
        entries: Mapping[str, Any],
        log: LogState,
    ) -> State:
        batch_lots: dict[str, list[int]] = {}
        holdings: dict[HoldingKey, list[int]] = {}
        batch_count = 0
        next_serial = 1
        for key, value in entries.items():
            if key.startswith("lot/"):
                batch_lots.setdefault(value["batch_id"], []).append(value["first_serial"])
                if value["status"] == "circulating":
                    holding = holding_key(value["batch_id"], value["owner"])
                    holdings.setdefault(holding, []).append(value["first_serial"])
            elif key.startswith("batch/"):
                batch_count = max(batch_count, int(value["batch_id"][2:]))
                next_serial = max(next_serial, value["first_serial"] + value["issued"])
        return cls(
            chain_id=chain_id,
            genesis_hash=genesis_hash,
            authority=authority,
            params=params,
            height=height,
            head_hash=head_hash,
            head_time=head_time,
            recent_validators=recent_validators,
            entries=immutables.Map(entries),
            tree=StateTree.from_items(entries.items()),
            log=log,
            batch_lots=immutables.Map({k: tuple(sorted(v)) for k, v in batch_lots.items()}),
            holdings=immutables.Map({k: tuple(sorted(v)) for k, v in holdings.items()}),
            batch_count=batch_count,
            next_serial=next_serial,
        )


def initial_state(
    *,
    chain_id: str,
    genesis_hash: str,
    genesis_time: int,
    authority: str,
    params: Params,
    entries: Mapping[str, Any],
) -> State:
    return State.from_entries(
        chain_id=chain_id,
        genesis_hash=genesis_hash,
        authority=authority,
        params=params,
        height=0,
        head_hash=genesis_hash,
        head_time=genesis_time,
        recent_validators=(),
        entries=entries,
        log=LogState(),
    )


HoldingKey = tuple[str, str]
"""(batch_id, owner): the key of the index of an owner's circulating lots in a batch."""


def holding_key(batch_id: str, owner: str) -> HoldingKey:
    # Interned: the index holds one copy of each id however many lots name it.
    return (sys.intern(batch_id), sys.intern(owner))


def _validators(value: Any) -> tuple[Validator, ...]:
    return tuple(Validator(**entry) for entry in value)


def parse_recent_validators(value: Any) -> tuple[GoverningSet, ...]:
    """`GoverningSet.to_json` values back (as the store keeps them)."""
    return tuple(
        GoverningSet(
            first_height=int(run["first_height"]), validators=_validators(run["validators"])
        )
        for run in value
    )
