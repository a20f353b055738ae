"""The simulated chain: validator keys, a genesis, and a workload of signed transactions.

Everything is derived from names (tests.factory.key), so every run signs the same bytes and
the expensive parts (the genesis state, the signed workload) are built once per process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from ledger.blocks import Validator
from ledger.crypto import PrivateKey
from ledger.genesis import genesis_state, make_genesis_document, parse_genesis
from ledger.state import State
from ledger.transactions import Envelope, Transaction, sign_transaction
from tests.factory import CHAIN_ID, FAR_FUTURE, GENESIS_TIME, METHODOLOGIES, key

BLOCK_INTERVAL_MS = 100  # the pause after a decision (genesis `block_interval_ms`)
TRANSACTIONS_PER_BLOCK = 3
TRANSFERS = 40  # workload length: enough for every height a run reaches


@dataclass(frozen=True, slots=True, kw_only=True)
class World:
    keys: tuple[PrivateKey, ...]  # sorted by public key: index i proposes at (h, r) = i - h - r
    genesis: State
    workload: tuple[Envelope, ...]

    @property
    def validators(self) -> tuple[Validator, ...]:
        return self.genesis.current_validators()

    @property
    def n(self) -> int:
        return len(self.keys)

    @property
    def f(self) -> int:
        return (self.n - 1) // 3


@lru_cache(maxsize=8)
def make_world(n: int, powers: tuple[int, ...] | None = None) -> World:
    """A chain of `n` validators (power 1 each unless `powers`), with its workload."""
    keys = sorted((key(f"sim-validator-{i}") for i in range(n)), key=lambda k: k.public_key_hex)
    powers = powers or (1,) * n
    authority = [key(f"authority-{i}") for i in range(3)]
    document = make_genesis_document(
        chain_id=CHAIN_ID,
        genesis_time=GENESIS_TIME,
        authority_name="Zibo registry authority",
        authority_keys=[k.public_key_hex for k in authority],
        authority_threshold=2,
        validators=[
            Validator(public_key=k.public_key_hex, power=p, name=f"validator-{i}")
            for i, (k, p) in enumerate(zip(keys, powers, strict=True))
        ],
        methodologies=METHODOLOGIES,
        block_interval_ms=BLOCK_INTERVAL_MS,
    )
    genesis = parse_genesis(document)
    return World(
        keys=tuple(keys),
        genesis=genesis_state(genesis),
        workload=_workload(authority, genesis.authority_id),
    )


def _workload(authority: Sequence[PrivateKey], authority_id: str) -> tuple[Envelope, ...]:
    """Accredit a certifier, create a programme, issue to alice and bob, then alice and bob
    transfer and retire in turn: every block moves, retires and conserves units."""
    certifier, alice, bob = key("certifier"), key("alice"), key("bob")
    nonces: dict[str, int] = {}

    def tx(keys: list[PrivateKey], kind: str, payload: dict[str, object], signer: str) -> Envelope:
        nonces[signer] = nonces.get(signer, 0) + 1
        transaction = Transaction(
            chain_id=CHAIN_ID, type=kind, signer=signer, nonce=nonces[signer], payload=payload
        )
        return sign_transaction(transaction, keys)

    envelopes = [
        tx(
            list(authority[:2]),
            "accredit_certifier",
            {
                "certifier": certifier.account_id,
                "name": "National quality certification centre",
                "methodologies": ["household-electricity"],
                "valid_from": 0,
                "valid_until": FAR_FUTURE,
            },
            authority_id,
        ),
        tx(
            list(authority[:2]),
            "create_program",
            {"program_id": "zibo-green-home", "name": "Zibo green home", "valid_until": FAR_FUTURE},
            authority_id,
        ),
        tx(
            [certifier],
            "issue",
            {
                "methodology_id": "household-electricity",
                "project_id": "meter-0001",
                "period_start": "2026-01-01",
                "period_end": "2026-02-01",
                "evidence_sha256": "ab" * 32,
                "recipients": [
                    {"account": alice.account_id, "quantity": 1000},
                    {"account": bob.account_id, "quantity": 500},
                ],
            },
            certifier.account_id,
        ),
    ]
    for i in range(TRANSFERS):
        sender, receiver = (alice, bob) if i % 2 == 0 else (bob, alice)
        if i % 5 == 4:
            envelopes.append(
                tx(
                    [sender],
                    "retire",
                    {
                        "batch_id": "B-1",
                        "quantity": 3,
                        "beneficiary": "Household 12",
                        "purpose": "incentive",
                        "program_id": "zibo-green-home",
                    },
                    sender.account_id,
                )
            )
        else:
            envelopes.append(
                tx(
                    [sender],
                    "transfer",
                    {"to": receiver.account_id, "batch_id": "B-1", "quantity": 7 + i},
                    sender.account_id,
                )
            )
    return tuple(envelopes)


@lru_cache(maxsize=64)
def with_set_change(n: int, powers: tuple[int, ...], at: int) -> tuple[Envelope, ...]:
    """`make_world(n)`'s workload with the authority's `set_validators` at index `at`: each
    validator i in the new set with `powers[i]` (left out at 0). The authority signs nothing
    after its first two transactions, so the change takes its next nonce wherever it stands."""
    world = make_world(n)
    authority = [key(f"authority-{i}") for i in range(3)]
    validators = [
        {"public_key": k.public_key_hex, "power": p, "name": f"validator-{i}"}
        for i, (k, p) in enumerate(zip(world.keys, powers, strict=True))
        if p > 0
    ]
    first = world.workload[0].tx
    change = sign_transaction(
        Transaction(
            chain_id=CHAIN_ID,
            type="set_validators",
            signer=first.signer,
            nonce=3,
            payload={"validators": validators},
        ),
        authority[:2],
    )
    assert 2 <= at <= len(world.workload)
    return (*world.workload[:at], change, *world.workload[at:])


def pending(workload: Sequence[Envelope], state: State, limit: int) -> list[Envelope]:
    """The first `limit` envelopes of the workload that `state` has not applied."""
    found = []
    for envelope in workload:
        account = state.get(f"account/{envelope.tx.signer}")
        if account is None or account["nonce"] < envelope.tx.nonce:
            found.append(envelope)
            if len(found) == limit:
                break
    return found


def transaction_source(
    world: World,
    limit: int = TRANSACTIONS_PER_BLOCK,
    gap_ms: int = 0,
    workload: tuple[Envelope, ...] | None = None,
) -> Callable[[State, int], list[Envelope]]:
    """A replica's `TransactionSource`: what the workload (the world's unless `workload`)
    still holds, in order. With `gap_ms`, the workload arrives TRANSACTIONS_PER_BLOCK at a
    time, a batch every `gap_ms` of the caller's clock from the genesis time, so the chain
    idles between batches."""
    whole = world.workload if workload is None else workload

    def source(state: State, now_ms: int) -> list[Envelope]:
        workload = whole
        if gap_ms:
            batches = max(0, (now_ms - world.genesis.head_time) // gap_ms + 1)
            workload = workload[: batches * TRANSACTIONS_PER_BLOCK]
        return pending(workload, state, limit)

    return source
