"""Property tests of the state transition (SPEC §3.3, §3.4, §4).

(a) Random blocks of valid and invalid issues, transfers, retirements, invalidations and
    suspensions: after every block the lots of each batch partition its serial range, the
    status totals equal the batch's counters, no serial is in two lots or two retirements,
    the indexes agree with the entries, and the state root equals a full recomputation.
(b) A rule-based state machine runs the ledger against a plain model of balances per (batch,
    account): every rule predicts acceptance or the exact error code.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from ledger.crypto import PrivateKey
from ledger.limits import JSON_INTEGER_MAX
from ledger.state import State, holding_key
from ledger.state_transition import BuiltBlock
from ledger.state_tree import compute_state_root
from ledger.transactions import Envelope
from tests.factory import Chain, key

PROGRAM = "zibo-green-home"
METHODOLOGY = "household-electricity"
PROJECTS = ("meter-0001", "meter-0002", "meter-0003")
MONTHS = (
    ("2026-01-01", "2026-02-01"),
    ("2026-02-01", "2026-03-01"),
    ("2026-01-15", "2026-02-15"),  # overlaps both months above
)
STATUSES = ("circulating", "retired", "invalidated")
HUGE = JSON_INTEGER_MAX // 2  # two of these pass the end of the serial space


# --- shared helpers ---------------------------------------------------------------------------


def issue_payload(
    recipients: list[tuple[str, int]], project: str, period: tuple[str, str]
) -> dict[str, Any]:
    return {
        "methodology_id": METHODOLOGY,
        "project_id": project,
        "period_start": period[0],
        "period_end": period[1],
        "evidence_sha256": hashlib.sha256(f"{project}/{period[0]}".encode()).hexdigest(),
        "recipients": [{"account": who, "quantity": quantity} for who, quantity in recipients],
    }


def retire_payload(batch_id: str, quantity: int, incentive: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "batch_id": batch_id,
        "quantity": quantity,
        "beneficiary": "Wang household",
        "purpose": "incentive" if incentive else "voluntary",
    }
    if incentive:
        payload["program_id"] = PROGRAM
    return payload


def invalidate_payload(batch_id: str, holder: str, quantity: int) -> dict[str, Any]:
    return {"batch_id": batch_id, "holder": holder, "quantity": quantity, "reason": "audit"}


def started_chain() -> Chain:
    """A chain with the certifier accredited and the programme created, and no credits."""
    chain = Chain()
    built = chain.commit(chain.accredit(), chain.create_program())
    assert built.rejected == ()
    return chain


def nonce_of(state: State, account_id: str) -> int:
    value = state.get(f"account/{account_id}")
    return 0 if value is None else int(value["nonce"])


def held_by_owner(state: State) -> dict[tuple[str, str], int]:
    """Circulating units per (batch, owner), from the lot entries alone."""
    held: dict[tuple[str, str], int] = defaultdict(int)
    for entry_key, value in state.entries.items():
        if entry_key.startswith("lot/") and value["status"] == "circulating":
            held[(value["batch_id"], value["owner"])] += value["quantity"]
    return dict(held)


def _kind(lot: dict[str, Any]) -> tuple[str, str, str | None]:
    """What two adjacent lots must share to be one: owner, status and retirement."""
    return (lot["owner"], lot["status"], lot["retirement_id"])


def check_invariants(state: State) -> None:
    """SPEC §3.4 and §4 over the whole state, recomputed from scratch."""
    entries = dict(state.entries)
    assert state.state_root == compute_state_root(entries.items()).hex()

    batches = {k: v for k, v in entries.items() if k.startswith("batch/")}
    lots_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry_key, lot in entries.items():
        if entry_key.startswith("lot/"):
            assert entry_key == f"lot/{lot['batch_id']}/{lot['first_serial']}"
            assert lot["quantity"] >= 1 and lot["status"] in STATUSES
            assert (lot["retirement_id"] is not None) == (lot["status"] == "retired")
            lots_of[lot["batch_id"]].append(lot)
    assert set(lots_of) <= {b["batch_id"] for b in batches.values()}

    # Batches take consecutive ranges of the one global serial sequence, from 1.
    expected_first = 1
    for number in range(1, len(batches) + 1):
        batch = batches[f"batch/B-{number}"]
        assert batch["first_serial"] == expected_first
        expected_first += batch["issued"]
    assert state.next_serial == expected_first and state.batch_count == len(batches)

    for batch in batches.values():
        lots = sorted(lots_of[batch["batch_id"]], key=lambda lot: lot["first_serial"])
        serial = batch["first_serial"]
        totals = dict.fromkeys(STATUSES, 0)
        previous: dict[str, Any] | None = None
        for lot in lots:
            assert lot["first_serial"] == serial, f"gap or overlap at {serial}"
            serial += lot["quantity"]
            totals[lot["status"]] += lot["quantity"]
            if previous is not None:  # lots are maximal (docs/state.md): no mergeable pair
                assert _kind(previous) != _kind(lot), f"unmerged lots at {lot['first_serial']}"
            previous = lot
        assert serial == batch["first_serial"] + batch["issued"]
        assert totals == {status: batch[status] for status in STATUSES}
        assert sum(totals.values()) == batch["issued"]

    # Retirements: exactly their retired lots; no serial in two of them.
    retired_ranges: dict[str, list[list[int]]] = defaultdict(list)
    for lots in lots_of.values():
        for lot in sorted(lots, key=lambda lot: lot["first_serial"]):
            if lot["status"] == "retired":
                last = lot["first_serial"] + lot["quantity"] - 1
                retired_ranges[lot["retirement_id"]].append([lot["first_serial"], last])
    claimed: list[tuple[int, int]] = []
    program_totals: dict[str, int] = defaultdict(int)
    retirements = [v for k, v in entries.items() if k.startswith("retirement/")]
    for record in retirements:
        assert record["serials"] == retired_ranges[record["retirement_id"]]
        assert record["quantity"] == sum(last - first + 1 for first, last in record["serials"])
        claimed.extend((first, last) for first, last in record["serials"])
        if record["program_id"] is not None:
            program_totals[record["program_id"]] += record["quantity"]
    assert set(retired_ranges) == {record["retirement_id"] for record in retirements}
    claimed.sort()
    for (_, last), (first, _) in itertools.pairwise(claimed):
        assert last < first, "a serial is in two retirements"
    for entry_key, program in entries.items():
        if entry_key.startswith("program/"):
            assert program["retired"] == program_totals.get(program["program_id"], 0)

    # The indexes the state carries agree with a rebuild from the entries alone.
    rebuilt = State.from_entries(
        chain_id=state.chain_id,
        genesis_hash=state.genesis_hash,
        authority=state.authority,
        params=state.params,
        height=state.height,
        head_hash=state.head_hash,
        head_time=state.head_time,
        recent_validators=state.recent_validators,
        entries=entries,
        log=state.log,
    )
    assert dict(rebuilt.batch_lots) == dict(state.batch_lots)
    assert dict(rebuilt.holdings) == dict(state.holdings)
    assert (rebuilt.batch_count, rebuilt.next_serial) == (state.batch_count, state.next_serial)
    assert rebuilt.state_root == state.state_root


# --- (a) random blocks --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Op:
    kind: str
    actor: int = 0  # a holder index (or, for invalidate, 0 = authority, 1 = certifier)
    other: int = 0  # a holder index
    batch: int = 1
    quantity: int = 1
    flag: bool = False  # retire: incentive; any: sign with a skipped nonce
    project: int = 0
    month: int = 0
    recipients: tuple[tuple[int, int], ...] = ()
    skew: bool = False


HOLDER = st.integers(0, 5)
BATCH = st.integers(1, 3)
SMALL = st.integers(1, 300)
QUANTITY = st.one_of(  # mostly affordable, sometimes more than anyone holds
    SMALL, SMALL, SMALL, SMALL, st.integers(301, 2500), st.just(JSON_INTEGER_MAX)
)
SKEW = st.sampled_from([False] * 11 + [True])

OPS = st.one_of(
    st.builds(
        Op,
        kind=st.just("issue"),
        recipients=st.lists(
            st.tuples(HOLDER, st.one_of(st.integers(1, 2000), st.just(HUGE))),
            min_size=1,
            max_size=3,
        ).map(tuple),
        project=st.integers(0, len(PROJECTS) - 1),
        month=st.integers(0, len(MONTHS) - 1),
        skew=SKEW,
    ),
    st.builds(
        Op,
        kind=st.just("transfer"),
        actor=HOLDER,
        other=HOLDER,
        batch=BATCH,
        quantity=QUANTITY,
        skew=SKEW,
    ),
    st.builds(
        Op,
        kind=st.just("retire"),
        actor=HOLDER,
        batch=BATCH,
        quantity=QUANTITY,
        flag=st.booleans(),
        skew=SKEW,
    ),
    st.builds(
        Op,
        kind=st.just("invalidate"),
        actor=st.integers(0, 1),
        other=HOLDER,
        batch=BATCH,
        quantity=QUANTITY,
        skew=SKEW,
    ),
    st.builds(Op, kind=st.sampled_from(["suspend_account", "reinstate_account"]), other=HOLDER),
)

# The codes each kind may earn in these scenarios (a skewed nonce earns only bad_nonce).
ALLOWED = {
    "issue": {"double_issuance", "limit_exceeded", "account_suspended"},
    "transfer": {"insufficient_credits", "unknown_batch", "self_transfer", "account_suspended"},
    "retire": {"insufficient_credits", "unknown_batch", "account_suspended"},
    "invalidate": {"insufficient_credits", "unknown_batch"},
    "suspend_account": {"account_suspended", "unknown_account"},
    "reinstate_account": {"account_not_suspended", "unknown_account"},
}


def signer_of(chain: Chain, op: Op, holders: list[PrivateKey]) -> str:
    if op.kind == "issue" or (op.kind == "invalidate" and op.actor == 1):
        return chain.certifier.account_id
    if op.kind in ("transfer", "retire"):
        return holders[op.actor % len(holders)].account_id
    return chain.authority_id


def sign_op(chain: Chain, op: Op, holders: list[PrivateKey]) -> Envelope:
    """The op as an envelope, at the signer's next nonce (or the one after, if skewed)."""
    ids = [h.account_id for h in holders]
    signer = signer_of(chain, op, holders)
    keys: list[PrivateKey]
    if signer == chain.authority_id:
        keys = chain.authority_keys[:2]
    elif signer == chain.certifier.account_id:
        keys = [chain.certifier]
    else:
        keys = [holders[op.actor % len(holders)]]
    # The other party is an offset from the actor, so the simplest draw is not a self-transfer.
    other = ids[(op.actor + 1 + op.other) % len(ids)]
    payload: dict[str, Any]
    if op.kind == "issue":
        recipients = [(ids[i % len(ids)], q) for i, q in op.recipients]
        payload = issue_payload(recipients, PROJECTS[op.project], MONTHS[op.month])
    elif op.kind == "transfer":
        payload = {"to": other, "batch_id": f"B-{op.batch}", "quantity": op.quantity}
    elif op.kind == "retire":
        payload = retire_payload(f"B-{op.batch}", op.quantity, op.flag)
    elif op.kind == "invalidate":
        payload = invalidate_payload(f"B-{op.batch}", ids[op.other % len(ids)], op.quantity)
    else:
        payload = {"account": ids[op.other % len(ids)], "reason": "audit"}
    nonce = nonce_of(chain.state, signer) + (2 if op.skew else 1)
    return chain.tx(keys, op.kind, payload, signer=signer, nonce=nonce)


def split_by_signer(chain: Chain, ops: list[Op], holders: list[PrivateKey]) -> list[list[Op]]:
    """Consecutive runs of `ops` with one transaction per signer each, so every nonce is known
    before the block is built, whichever transactions fail."""
    runs: list[list[Op]] = [[]]
    signers: set[str] = set()
    for op in ops:
        signer = signer_of(chain, op, holders)
        if signer in signers:
            runs.append([])
            signers = set()
        runs[-1].append(op)
        signers.add(signer)
    return runs


@given(
    holder_count=st.integers(4, 6),
    blocks=st.lists(st.lists(OPS, min_size=1, max_size=6), min_size=1, max_size=6),
)
def test_random_blocks_keep_every_invariant(holder_count: int, blocks: list[list[Op]]) -> None:
    chain = started_chain()
    holders = [key(f"holder-{i}") for i in range(holder_count)]
    ids = [h.account_id for h in holders]
    # B-1: 1000 units for every holder; B-2: 700 for the first two. Ops may issue B-3 on.
    b1 = issue_payload([(who, 1000) for who in ids], PROJECTS[0], MONTHS[0])
    b2 = issue_payload([(ids[0], 300), (ids[1], 400)], PROJECTS[1], MONTHS[1])
    setup = chain.commit(
        chain.tx(chain.certifier, "issue", b1, nonce=1),
        chain.tx(chain.certifier, "issue", b2, nonce=2),
    )
    assert setup.rejected == ()
    check_invariants(chain.state)
    for ops in (run for block in blocks for run in split_by_signer(chain, block, holders)):
        signed = [(op, sign_op(chain, op, holders)) for op in ops]
        before = chain.state
        built: BuiltBlock = chain.commit(*(e for _, e in signed))  # also replayed by apply_block
        codes = {envelope.tx_id: error.code for envelope, error in built.rejected}
        for op, envelope in signed:
            code = codes.get(envelope.tx_id)
            event(f"{op.kind}: {code or 'accepted'}")
            if op.skew:
                assert code == "bad_nonce"
            elif code is not None:
                assert code in ALLOWED[op.kind], (op, code)
        assert len(built.block.transactions) + len(built.rejected) == len(signed)
        assert built.state.log.size == before.log.size + len(built.block.transactions)
        check_invariants(chain.state)
        # Issued totals never change; retired and invalidated units never come back.
        for number in range(1, before.batch_count + 1):
            old, new = before.get(f"batch/B-{number}"), chain.state.get(f"batch/B-{number}")
            assert (old["issued"], old["first_serial"]) == (new["issued"], new["first_serial"])
            assert new["retired"] >= old["retired"]
            assert new["invalidated"] >= old["invalidated"]


# --- (b) the ledger against a plain model --------------------------------------------------------

HOLDER_NAMES = ("alice", "bob", "carol", "dave", "erin")
MODES = st.sampled_from(["ok", "ok", "ok", "ok", "stale", "short"])
AMOUNT = st.one_of(st.integers(1, 200), st.integers(1, 200), st.integers(201, 2500))


class LedgerMachine(RuleBasedStateMachine):
    """Each rule commits one block with one transaction and predicts its outcome exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.chain = started_chain()
        self.holders = [key(name) for name in HOLDER_NAMES]
        self.ids = [h.account_id for h in self.holders]
        self.certifier = self.chain.certifier.account_id
        self.authority = self.chain.authority_id
        everyone = [*self.ids, self.certifier]
        self.keys: dict[str, list[PrivateKey]] = {h.account_id: [h] for h in self.holders}
        self.keys[self.certifier] = [self.chain.certifier]
        self.keys[self.authority] = list(self.chain.authority_keys)
        self.threshold: dict[str, int] = dict.fromkeys(everyone, 1)
        self.threshold[self.authority] = 2
        self.nonce: dict[str, int] = {self.authority: 2, self.certifier: 0}
        self.nonce.update(dict.fromkeys(self.ids, 0))
        self.exists: set[str] = {self.authority}
        self.suspended: set[str] = set()
        self.balance: dict[tuple[str, str], int] = defaultdict(int)
        self.batches: dict[str, dict[str, Any]] = {}
        self.next_serial = 1
        self.program_retired = 0
        self.fresh_keys = 0

    # --- plumbing ---

    def envelope(self, signer: str, kind: str, payload: dict[str, Any], mode: str) -> Envelope:
        keys, threshold = self.keys[signer], self.threshold[signer]
        if mode == "ok":
            chosen = keys[:threshold]
        elif mode == "stale":
            chosen = [*keys[: threshold - 1], key(f"stale/{signer}")]
        else:
            chosen = keys[: threshold - 1]
        return self.chain.tx(chosen, kind, payload, signer=signer, nonce=self.nonce[signer] + 1)

    def commit(self, envelope: Envelope, predicted: str | None) -> bool:
        built = self.chain.commit(envelope)
        got = [error.code for _, error in built.rejected]
        event(f"{envelope.tx.type}: {predicted or 'accepted'}")
        assert got == ([] if predicted is None else [predicted]), (envelope.tx, got)
        if predicted is None:
            assert built.block.transactions == (envelope,)
            signer = envelope.tx.signer
            self.nonce[signer] += 1
            self.exists.add(signer)
        return predicted is None

    @staticmethod
    def envelope_code(mode: str) -> str | None:
        return {"ok": None, "stale": "unknown_key", "short": "insufficient_signatures"}[mode]

    def signer_code(self, signer: str, mode: str) -> str | None:
        code = self.envelope_code(mode)
        if code is None and signer in self.suspended:
            return "account_suspended"
        return code

    def receive(self, batch_id: str, account_id: str, quantity: int) -> None:
        self.balance[(batch_id, account_id)] += quantity
        self.exists.add(account_id)

    # --- rules ---

    @initialize(quantities=st.lists(st.integers(1, 2000), min_size=3, max_size=len(HOLDER_NAMES)))
    def first_batch(self, quantities: list[int]) -> None:
        """B-1 for the first few holders, so that most rules find something to move."""
        self.issue_to(list(zip(self.ids, quantities, strict=False)), 0, 0)
        assert len(self.batches) == 1

    @rule(
        recipients=st.lists(
            st.tuples(st.integers(0, len(HOLDER_NAMES) - 1), st.integers(1, 1000)),
            min_size=1,
            max_size=3,
        ),
        project=st.integers(0, len(PROJECTS) - 1),
        month=st.integers(0, len(MONTHS) - 1),
        huge=st.booleans(),
    )
    def issue(
        self, recipients: list[tuple[int, int]], project: int, month: int, huge: bool
    ) -> None:
        listed = [
            (self.ids[i], HUGE if huge and n == 0 else q) for n, (i, q) in enumerate(recipients)
        ]
        self.issue_to(listed, project, month)

    def issue_to(self, listed: list[tuple[str, int]], project: int, month: int) -> None:
        period = MONTHS[month]
        total = sum(q for _, q in listed)
        predicted: str | None = None
        if self.certifier in self.suspended or any(who in self.suspended for who, _ in listed):
            predicted = "account_suspended"
        elif any(
            b["project"] == PROJECTS[project]
            and b["period"][0] < period[1]
            and period[0] < b["period"][1]
            and b["issued"] > b["invalidated"]
            for b in self.batches.values()
        ):
            predicted = "double_issuance"
        elif self.next_serial + total - 1 > JSON_INTEGER_MAX:
            predicted = "limit_exceeded"
        payload = issue_payload(listed, PROJECTS[project], period)
        if self.commit(self.envelope(self.certifier, "issue", payload, "ok"), predicted):
            batch_id = f"B-{len(self.batches) + 1}"
            self.batches[batch_id] = {
                "project": PROJECTS[project],
                "period": period,
                "first_serial": self.next_serial,
                "issued": total,
                "circulating": total,
                "retired": 0,
                "invalidated": 0,
            }
            self.next_serial += total
            for who, quantity in listed:
                self.receive(batch_id, who, quantity)

    @rule(
        sender=st.integers(0, len(HOLDER_NAMES) - 1),
        to=st.integers(0, len(HOLDER_NAMES) - 1),
        batch=st.integers(1, 3),
        quantity=AMOUNT,
        mode=MODES,
    )
    def transfer(self, sender: int, to: int, batch: int, quantity: int, mode: str) -> None:
        # `to` is an offset from the sender, so the simplest draw is not a self-transfer.
        recipient = self.ids[(sender + 1 + to) % len(self.ids)]
        signer, batch_id = self.ids[sender], f"B-{batch}"
        predicted = self.signer_code(signer, mode)
        if predicted is not None:
            pass
        elif recipient == signer:
            predicted = "self_transfer"
        elif batch_id not in self.batches:
            predicted = "unknown_batch"
        elif recipient in self.suspended:
            predicted = "account_suspended"
        elif self.balance[(batch_id, signer)] < quantity:
            predicted = "insufficient_credits"
        payload = {"to": recipient, "batch_id": batch_id, "quantity": quantity}
        if self.commit(self.envelope(signer, "transfer", payload, mode), predicted):
            self.balance[(batch_id, signer)] -= quantity
            self.receive(batch_id, recipient, quantity)

    @rule(
        holder=st.integers(0, len(HOLDER_NAMES) - 1),
        batch=st.integers(1, 3),
        quantity=AMOUNT,
        incentive=st.booleans(),
        mode=MODES,
    )
    def retire(self, holder: int, batch: int, quantity: int, incentive: bool, mode: str) -> None:
        signer, batch_id = self.ids[holder], f"B-{batch}"
        predicted = self.signer_code(signer, mode)
        if predicted is not None:
            pass
        elif batch_id not in self.batches:
            predicted = "unknown_batch"
        elif self.balance[(batch_id, signer)] < quantity:
            predicted = "insufficient_credits"
        payload = retire_payload(batch_id, quantity, incentive)
        if self.commit(self.envelope(signer, "retire", payload, mode), predicted):
            self.balance[(batch_id, signer)] -= quantity
            self.batches[batch_id]["circulating"] -= quantity
            self.batches[batch_id]["retired"] += quantity
            if incentive:
                self.program_retired += quantity

    @rule(
        by=st.sampled_from(["authority", "certifier", "holder"]),
        holder=st.integers(0, len(HOLDER_NAMES) - 1),
        batch=st.integers(1, 3),
        quantity=AMOUNT,
    )
    def invalidate(self, by: str, holder: int, batch: int, quantity: int) -> None:
        signer = {"authority": self.authority, "certifier": self.certifier}.get(
            by, self.ids[(holder + 1) % len(self.ids)]
        )
        target, batch_id = self.ids[holder], f"B-{batch}"
        predicted = self.signer_code(signer, "ok")
        if predicted is not None:
            pass
        elif batch_id not in self.batches:
            predicted = "unknown_batch"
        elif by == "holder":
            predicted = "not_authorized"
        elif self.balance[(batch_id, target)] < quantity:
            predicted = "insufficient_credits"
        payload = invalidate_payload(batch_id, target, quantity)
        if self.commit(self.envelope(signer, "invalidate", payload, "ok"), predicted):
            self.balance[(batch_id, target)] -= quantity
            self.batches[batch_id]["circulating"] -= quantity
            self.batches[batch_id]["invalidated"] += quantity

    @rule(
        account=st.integers(0, len(HOLDER_NAMES) - 1),
        count=st.integers(1, 3),
        threshold=st.integers(1, 3),
        mode=MODES,
    )
    def set_keys(self, account: int, count: int, threshold: int, mode: str) -> None:
        signer = self.ids[account]
        threshold = min(threshold, count)
        new = [key(f"{HOLDER_NAMES[account]}/{self.fresh_keys}/{i}") for i in range(count)]
        self.fresh_keys += 1
        payload = {"keys": [k.public_key_hex for k in new], "threshold": threshold}
        predicted = self.envelope_code(mode)  # suspension does not stop set_keys
        if self.commit(self.envelope(signer, "set_keys", payload, mode), predicted):
            self.keys[signer] = sorted(new, key=lambda k: k.public_key_hex)
            self.threshold[signer] = threshold

    @rule(account=st.integers(0, len(HOLDER_NAMES) - 1), suspend=st.booleans())
    def suspend_or_reinstate(self, account: int, suspend: bool) -> None:
        target = self.ids[account]
        kind = "suspend_account" if suspend else "reinstate_account"
        predicted: str | None = None
        if target not in self.exists:
            predicted = "unknown_account"
        elif suspend and target in self.suspended:
            predicted = "account_suspended"
        elif not suspend and target not in self.suspended:
            predicted = "account_not_suspended"
        payload = {"account": target, "reason": "audit"}
        if self.commit(self.envelope(self.authority, kind, payload, "ok"), predicted):
            if suspend:
                self.suspended.add(target)
            else:
                self.suspended.discard(target)

    @precondition(lambda self: self.certifier in self.suspended)
    @rule()
    def reinstate_certifier(self) -> None:
        payload = {"account": self.certifier, "reason": "cleared"}
        self.commit(self.envelope(self.authority, "reinstate_account", payload, "ok"), None)
        self.suspended.discard(self.certifier)

    @precondition(lambda self: self.certifier not in self.suspended)
    @rule()
    def suspend_certifier(self) -> None:
        """The certifier's account exists only once it has signed (it never receives)."""
        payload = {"account": self.certifier, "reason": "audit"}
        predicted = None if self.certifier in self.exists else "unknown_account"
        envelope = self.envelope(self.authority, "suspend_account", payload, "ok")
        if self.commit(envelope, predicted):
            self.suspended.add(self.certifier)

    # --- invariants ---

    @invariant()
    def holdings_match_the_model(self) -> None:
        ledger = held_by_owner(self.chain.state)
        model = {k: v for k, v in self.balance.items() if v}
        assert ledger == model

    @invariant()
    def batches_match_the_model(self) -> None:
        state = self.chain.state
        assert state.batch_count == len(self.batches)
        assert state.next_serial == self.next_serial
        for batch_id, expected in self.batches.items():
            batch = state.get(f"batch/{batch_id}")
            for field_name in ("first_serial", "issued", "circulating", "retired", "invalidated"):
                assert batch[field_name] == expected[field_name], (batch_id, field_name)
            assert batch["issued"] == (
                batch["circulating"] + batch["retired"] + batch["invalidated"]
            )
            for (held_batch, owner), quantity in self.balance.items():
                if held_batch == batch_id and quantity:
                    assert holding_key(batch_id, owner) in state.holdings
        assert state.get(f"program/{PROGRAM}")["retired"] == self.program_retired

    @invariant()
    def accounts_match_the_model(self) -> None:
        state = self.chain.state
        for account_id, nonce in self.nonce.items():
            value = state.get(f"account/{account_id}")
            assert (value is not None) == (account_id in self.exists), account_id
            if value is None:
                continue
            assert value["nonce"] == nonce
            assert (value["status"] == "suspended") == (account_id in self.suspended)
            if value["keys"]:
                expected = sorted(k.public_key_hex for k in self.keys[account_id])
                assert value["keys"] == expected
                assert value["threshold"] == self.threshold[account_id]

    @invariant()
    def whole_state_is_consistent(self) -> None:
        check_invariants(self.chain.state)


LedgerMachine.TestCase.settings = settings(stateful_step_count=25)
test_ledger_against_model = LedgerMachine.TestCase
