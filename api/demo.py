"""The demo city: a realistic Zibo scenario on a local single-validator chain.

The Zibo municipal registry authority (a 2-of-3 key account fixed in genesis) registers three
methodologies, accredits the quality-certification centre for a validity window and creates
incentive programmes. Each month the certifier issues batches from meter-evidence hashes:
household electricity saving and rooftop solar (kWh × the grid emission factor) and EV
charging, to hundreds of households. Households transfer and retire credits (voluntary, and
incentive redemptions with beneficiaries); a ceramics company buys credits and retires them
for compliance. Along the way: a suspension and its reinstatement, an invalidation after a
meter fault, a household's key rotation and the company's move to a 2-of-3 key set.

Every transaction goes through the real pool, producer and store. Keys are derived from the
seed so a demo is reproducible: they are demo keys, never for real use.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from api.console import passphrase, write_atomically
from api.explorer import TARGETS_FILE
from consensus.pool import Pool
from consensus.producer import SoloProducer
from ledger.blocks import Validator
from ledger.crypto import PrivateKey, compute_account_id
from ledger.genesis import make_genesis_document
from ledger.store import Store
from ledger.transactions import Envelope, Transaction, sign_transaction

CHAIN_ID: Final = "zibo-demo"
DAY_MS: Final = 86_400_000
MONTHS: Final = 10
HOUSEHOLDS: Final = 300
SOLAR_SITES: Final = 24
EV_OWNERS: Final = 40
COMPOUND_HOUSEHOLDS: Final = 100  # households per residential compound, one batch each
# China's national grid emission factor, 0.5703 t CO2 / MWh (= 0.5703 kg CO2e per kWh),
# kept as an integer ratio so quantities stay integers (units of 1 kg CO2e).
GRID_FACTOR_PER_10000_KWH: Final = 5703
METHODOLOGIES: Final = {
    "household-electricity": "Household electricity saving against a metered baseline",
    "rooftop-solar": "Rooftop solar generation displacing grid electricity",
    "ev-charging": "Electric-vehicle charging replacing petrol kilometres",
}
PROGRAM: Final = "zibo-green-home"
EV_PROGRAM: Final = "zibo-ev-rewards"


@dataclass
class DemoSummary:
    directory: Path
    transactions: int = 0
    blocks: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    keys: dict[str, Path] = field(default_factory=dict)


def _kg(kwh: int) -> int:
    return max(1, kwh * GRID_FACTOR_PER_10000_KWH // 10_000)


class _City:
    """The scenario's parties, their keys, nonces and a model of who holds what."""

    def __init__(self, directory: Path, seed: int) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.keys_dir = directory / "keys"
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        self.authority = [self.key(f"authority-{i}") for i in range(1, 4)]
        self.validator = self.key("validator-city")
        self.certifier = self.key("certifier-zibo-quality-centre")
        self.company = self.key("zibo-ceramics-co")
        self.company_extra = [self.key(f"zibo-ceramics-co-{i}") for i in (2, 3)]
        household_keys = [self.key(f"households/household-{i:04d}") for i in range(HOUSEHOLDS)]
        self.households = [key.account_id for key in household_keys]
        # Each account's current signing keys: a key rotation changes these, never the id.
        self.signing: dict[str, list[PrivateKey]] = {
            key.account_id: [key] for key in [*household_keys, self.certifier, self.company]
        }
        self.nonces: dict[str, int] = {}
        self.holdings: dict[tuple[str, str], int] = {}  # (account, batch) -> circulating units

    def key(self, name: str) -> PrivateKey:
        key = PrivateKey(seed=hashlib.sha256(f"tanlian-demo/{self.seed}/{name}".encode()).digest())
        # Readable by their owner only, whole or absent, and encrypted with
        # $TANLIAN_PASSPHRASE when it is set, as every key file (`keys new`): `dev` reads
        # them with it (found by review: it could not read the plain ones it had written).
        write_atomically(self.keys_dir / f"{name}.pem", key.to_pem(passphrase()), mode=0o600)
        return key

    def tx(self, account: str, kind: str, payload: dict[str, Any]) -> Envelope:
        """A transaction of `account`, signed with its current keys."""
        keys = self.authority[:2] if account == self.authority_id else self.signing[account]
        self.nonces[account] = self.nonces.get(account, 0) + 1
        transaction = Transaction(
            chain_id=CHAIN_ID,
            type=kind,
            signer=account,
            nonce=self.nonces[account],
            payload=payload,
        )
        return sign_transaction(transaction, keys)

    @property
    def authority_id(self) -> str:
        return compute_account_id([k.public_key_hex for k in self.authority], 2)

    def by_authority(self, kind: str, payload: dict[str, Any]) -> Envelope:
        return self.tx(self.authority_id, kind, payload)

    def move(self, source: str, batch: str, quantity: int, target: str | None) -> None:
        self.holdings[(source, batch)] -= quantity
        if target is not None:
            self.holdings[(target, batch)] = self.holdings.get((target, batch), 0) + quantity


def build_demo(
    directory: Path,
    *,
    transactions: int = 3000,
    seed: int = 1,
    now_ms: int,
    report: Callable[[str], None] = lambda line: None,
) -> DemoSummary:
    """Write keys, genesis and a chain of about `transactions` transactions into `directory`.

    The chain's clock runs through the `MONTHS` months before `now_ms`, so a node started on
    it afterwards carries on in real time.
    """
    city = _City(directory, seed)
    genesis_time = now_ms - (MONTHS + 1) * 30 * DAY_MS
    document = make_genesis_document(
        chain_id=CHAIN_ID,
        genesis_time=genesis_time,
        authority_name="Zibo Municipal Bureau of Ecology and Environment (淄博市生态环境局)",
        authority_keys=[k.public_key_hex for k in city.authority],
        authority_threshold=2,
        validators=[Validator(public_key=city.validator.public_key_hex, power=1, name="Zibo city")],
    )
    (directory / "genesis.json").write_text(json.dumps(document, indent=2, ensure_ascii=False))
    store = Store.create(directory, document)
    pool = Pool(capacity=max(50_000, 2 * transactions), nonce_gap_max=max(64, transactions))
    producer = SoloProducer(store, city.validator, pool=pool)
    summary = DemoSummary(directory=directory)
    clock = [genesis_time]

    def commit(envelopes: list[Envelope], at_ms: int) -> None:
        for outcome in producer.submit(envelopes):
            if outcome.status == "rejected":
                raise AssertionError(f"demo transaction rejected: {outcome.code} {outcome.message}")
        clock[0] = max(clock[0] + 1000, at_ms)
        while producer.pending_count():
            result = producer.produce(clock[0])
            if result is None:
                rejected = [o for o in producer.outcomes.values() if o.status == "rejected"]
                raise AssertionError(f"demo transactions left pending: {rejected[-3:]}")
            for outcome in result.outcomes:
                if outcome.status == "rejected":
                    raise AssertionError(f"demo rejected {outcome.code}: {outcome.message}")
            summary.blocks += 1
            for envelope in result.block.transactions:
                summary.transactions += 1
                summary.by_type[envelope.tx.type] = summary.by_type.get(envelope.tx.type, 0) + 1
            clock[0] += 1000

    # Month 0: the registry sets up the programme.
    setup = [
        city.by_authority(
            "register_methodology",
            {
                "methodology_id": methodology_id,
                "name": name,
                "document_sha256": hashlib.sha256(f"{methodology_id} v1.0".encode()).hexdigest(),
            },
        )
        for methodology_id, name in METHODOLOGIES.items()
    ]
    setup += [
        city.by_authority(
            "accredit_certifier",
            {
                "certifier": city.certifier.account_id,
                "name": "Zibo Quality Certification Centre (淄博市质量认证中心)",
                "methodologies": list(METHODOLOGIES),
                "valid_from": genesis_time,
                "valid_until": now_ms + 730 * DAY_MS,
            },
        ),
        city.by_authority(
            "create_program",
            {
                "program_id": PROGRAM,
                "name": "Zibo green home incentive (淄博绿色家庭激励)",
                "valid_until": now_ms + 365 * DAY_MS,
            },
        ),
        city.by_authority(
            "create_program",
            {
                "program_id": EV_PROGRAM,
                "name": "Zibo EV charging rewards (淄博电动车充电奖励)",
                "valid_until": now_ms + 365 * DAY_MS,
            },
        ),
    ]
    commit(setup, genesis_time + DAY_MS)
    report(f"registry set up: {len(METHODOLOGIES)} methodologies, certifier, 2 programmes")
    # The city's published target for the green-home programme, which the explorer's
    # dashboard measures the redemptions against (a node-side setting: the SPEC's programmes
    # carry no target; docs/decisions/0007-explorer.md). Scaled to the demo's size.
    (directory / TARGETS_FILE).write_text(
        json.dumps(
            {
                PROGRAM: {
                    "target_t_co2e": max(1, transactions // 100),
                    "deadline": _date(now_ms + 365 * DAY_MS),
                    "source": "demo figure: 淄博市绿色家庭行动方案 (Zibo green home action plan)",
                }
            },
            indent=2,
            ensure_ascii=False,
        )
    )

    per_month = max(10, (transactions - summary.transactions - 5 * MONTHS) // MONTHS)
    batch_number = 0
    solar = city.households[:SOLAR_SITES]
    ev = city.households[SOLAR_SITES : SOLAR_SITES + EV_OWNERS]
    suspended = city.households[7]
    for month in range(1, MONTHS + 1):
        month_start = genesis_time + month * 30 * DAY_MS
        start = _date(month_start - 30 * DAY_MS)
        end = _date(month_start)
        issues: list[Envelope] = []
        for methodology_id, group, low, high in (
            ("household-electricity", city.households, 15, 160),
            ("rooftop-solar", solar, 200, 900),
            ("ev-charging", ev, 40, 260),
        ):
            members = [m for m in group if not (m == suspended and month in (4, 5))]
            # One batch per residential compound (小区) and month: each compound's meters are
            # read together, and a batch stays well inside transaction_bytes_max.
            for compound, first in enumerate(range(0, len(members), COMPOUND_HOUSEHOLDS), 1):
                recipients: list[dict[str, Any]] = [
                    {"account": member, "quantity": _kg(city.rng.randint(low, high))}
                    for member in members[first : first + COMPOUND_HOUSEHOLDS]
                ]
                project = f"zhangdian-compound-{compound:02d}-{methodology_id}"
                evidence = hashlib.sha256(f"meter-readings/{project}/{start}".encode())
                issues.append(
                    city.tx(
                        city.certifier.account_id,
                        "issue",
                        {
                            "methodology_id": methodology_id,
                            "project_id": project,
                            "period_start": start,
                            "period_end": end,
                            "evidence_sha256": evidence.hexdigest(),
                            "recipients": recipients,
                            "memo": f"Zhangdian compound {compound}, {start[:7]} meter readings",
                        },
                    )
                )
                batch_number += 1
                for recipient in recipients:
                    holding = (recipient["account"], f"B-{batch_number}")
                    city.holdings[holding] = city.holdings.get(holding, 0) + recipient["quantity"]
        commit(issues, month_start)

        activity = _month_activity(city, month, per_month, suspended)
        commit(activity, month_start + DAY_MS)
        report(f"month {month}: {summary.transactions} transactions in {summary.blocks} blocks")
        if summary.transactions >= transactions:
            break

    for name in ("authority-1", "authority-2", "authority-3", "validator-city"):
        summary.keys[name] = city.keys_dir / f"{name}.pem"
    summary.keys["certifier"] = city.keys_dir / "certifier-zibo-quality-centre.pem"
    summary.keys["household"] = city.keys_dir / "households" / "household-0012.pem"
    store.close()
    return summary


def _date(time_ms: int) -> str:
    return datetime.datetime.fromtimestamp(time_ms / 1000, tz=datetime.UTC).date().isoformat()


def _month_activity(city: _City, month: int, count: int, suspended: str) -> list[Envelope]:
    """A month of holders' transactions, plus the month's special events."""
    rng = city.rng
    envelopes: list[Envelope] = []
    company = city.company.account_id
    if month == 3:
        envelopes.append(
            city.by_authority(
                "suspend_account",
                {"account": suspended, "reason": "meter tampering under investigation"},
            )
        )
    if month == 5:
        envelopes.append(
            city.by_authority(
                "reinstate_account",
                {"account": suspended, "reason": "investigation closed: meter sound"},
            )
        )
    victim = city.households[11]
    held = (
        sorted(
            (batch != "B-1", -units, batch)
            for (a, batch), units in city.holdings.items()
            if a == victim and units > 0
        )
        if month == 2
        else []
    )
    if held:  # a busy month 1 may have left it nothing to void
        # A meter fault found by the certifier: half of what one household holds of its first
        # batch is void (of the batch it holds most of, if it kept none of the first).
        _, minus_units, batch = held[0]
        units = -minus_units
        envelopes.append(
            city.tx(
                city.certifier.account_id,
                "invalidate",
                {
                    "batch_id": batch,
                    "holder": victim,
                    "quantity": max(1, units // 2),
                    "reason": "meter 0011 found miscalibrated on inspection",
                },
            )
        )
        city.move(victim, batch, max(1, units // 2), None)
    if month == 4:
        household = city.households[10]
        new_key = city.key("households/household-0010-rotated")
        envelopes.append(
            city.tx(household, "set_keys", {"keys": [new_key.public_key_hex], "threshold": 1})
        )
        city.signing[household] = [new_key]
    if month == 6:
        keys = [city.company, *city.company_extra]
        envelopes.append(
            city.tx(
                company,
                "set_keys",
                {"keys": sorted(k.public_key_hex for k in keys), "threshold": 2},
            )
        )
        city.signing[company] = keys[:2]
    frozen = {suspended} if 3 <= month < 5 else set()
    holders = [h for h in city.households if h not in frozen]
    for _ in range(count):
        account = rng.choice(holders)
        batches = [b for (a, b), units in city.holdings.items() if a == account and units > 0]
        if not batches:
            continue
        batch = rng.choice(batches)
        units = city.holdings[(account, batch)]
        quantity = rng.randint(1, max(1, min(units, 40)))
        roll = rng.random()
        if roll < 0.45:
            payload: dict[str, Any] = {
                "batch_id": batch,
                "quantity": quantity,
                "beneficiary": f"Household {account[:8]}, Zhangdian",
                "purpose": "incentive",
                "program_id": PROGRAM,
                "jurisdiction": "CN-SD",
            }
            envelopes.append(city.tx(account, "retire", payload))
            city.move(account, batch, quantity, None)
        elif roll < 0.65:
            payload = {
                "batch_id": batch,
                "quantity": quantity,
                "beneficiary": f"Household {account[:8]}",
                "purpose": "voluntary",
            }
            envelopes.append(city.tx(account, "retire", payload))
            city.move(account, batch, quantity, None)
        else:
            payload = {"to": company, "batch_id": batch, "quantity": quantity, "memo": "sold"}
            envelopes.append(city.tx(account, "transfer", payload))
            city.move(account, batch, quantity, company)
    # The company retires what it bought for its compliance obligation.
    company_batches = [(b, u) for (a, b), u in city.holdings.items() if a == company and u > 0]
    for batch, units in company_batches[:3]:
        payload = {
            "batch_id": batch,
            "quantity": units,
            "beneficiary": "Zibo Ceramics Co., Ltd. (淄博陶瓷有限公司)",
            "purpose": "compliance",
            "jurisdiction": "CN-SD",
        }
        envelopes.append(city.tx(company, "retire", payload))
        city.move(company, batch, units, None)
    return envelopes
