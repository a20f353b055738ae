"""A city-scale chain for the explorer benchmark: Zibo's registry over two years, built
in-process (signing included) as fast as the node's own pipeline allows.

    from bench.city import build_city
    summary = build_city(Path("/tmp/city"), transactions=1_000_000)

The shape follows the demo (api/demo.py) at a city's scale: the registry authority accredits
two certifiers and creates four incentive programmes; each month every residential compound's
household-electricity meters (100 households a batch), the rooftop-solar sites and the EV
chargers are credited; households retire (incentive redemptions into the programme of their
methodology, voluntary retirements) and sell to companies, which retire for compliance at each
month's end; a certifier invalidates part of a batch after a meter fault now and then. Block
times run through the months (one block every few hours), so the dashboard's months, the
programmes' progress and the lists' pages look as a real registry's would after two years.

Every transaction is checked, signed and committed through the real pool, producer and store
(a writer process, a signature worker process, block N+1 built while block N is written, as
the node does). A rejected transaction stops the build: the workload's model of who holds what
must match the ledger exactly. The keys are derived from names (benchmark keys only).
"""

from __future__ import annotations

import calendar
import datetime
import hashlib
import json
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from consensus.pool import Pool
from consensus.producer import PreparedBlock, SoloProducer, tune_garbage_collector
from consensus.verifier import SignatureWorker
from ledger.blocks import Validator
from ledger.crypto import PrivateKey
from ledger.genesis import make_genesis_document
from ledger.store import DATABASE_FILE, Store
from ledger.transactions import Envelope, Transaction, sign_transaction

CHAIN_ID: Final = "zibo-city"
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 24 * HOUR_MS
GENESIS_TIME: Final = 1_735_660_800_000  # 2025-01-01T00:00:00+08:00
MONTHS: Final = 24
COMPOUND: Final = 100  # households credited together in one batch
BLOCKS_PER_DAY: Final = 6  # activity steps a day; each is one block or a few
SUBMIT_CHUNK: Final = 2000
# China's grid emission factor, 0.5703 kg CO2e per kWh, as an integer ratio (units: kg).
GRID_FACTOR_PER_10000_KWH: Final = 5703
METHODOLOGIES: Final = {
    "household-electricity": "Household electricity saving against a metered baseline",
    "rooftop-solar": "Rooftop solar generation displacing grid electricity",
    "ev-charging": "Electric-vehicle charging replacing petrol kilometres",
}
# programme id, name, the methodologies whose credits households redeem into it
PROGRAMMES: Final = (
    ("zibo-green-home", "淄博绿色家庭激励 Zibo green home incentive", ("household-electricity",)),
    ("zibo-solar-roofs", "淄博阳光屋顶补贴 Zibo solar roof subsidy", ("rooftop-solar",)),
    ("zibo-ev-rewards", "淄博电动车充电奖励 Zibo EV charging rewards", ("ev-charging",)),
    ("zibo-bus-pass", "淄博公交碳积分 Zibo bus-pass carbon points", tuple(METHODOLOGIES)),
)
COMPANIES: Final = (
    "淄博陶瓷有限公司 Zibo Ceramics Co., Ltd.",
    "山东玻璃制品厂 Shandong Glassworks",
    "淄博化工集团 Zibo Chemical Group",
    "齐鲁纺织 Qilu Textiles",
    "博山耐火材料 Boshan Refractories",
    "张店物流 Zhangdian Logistics",
    "淄川水泥 Zichuan Cement",
    "临淄石化 Linzi Petrochemical",
)
DISTRICTS: Final = ("Zhangdian", "Zichuan", "Boshan", "Linzi", "Zhoucun")


def _kg(kwh: int) -> int:
    return max(1, kwh * GRID_FACTOR_PER_10000_KWH // 10_000)


def _key(name: str) -> PrivateKey:
    return PrivateKey(seed=hashlib.sha256(f"tanlian-city/{name}".encode()).digest())


def _month_start(month: int) -> datetime.date:
    """The first day of the chain's `month` (0 = January 2025)."""
    year, index = divmod(month, 12)
    return datetime.date(2025 + year, index + 1, 1)


def _ms(day: datetime.date, hours: float = 0) -> int:
    """Unix ms of `hours` past midnight of `day` in China Standard Time (UTC+8)."""
    midnight = calendar.timegm(day.timetuple()) * 1000 - 8 * HOUR_MS
    return midnight + int(hours * HOUR_MS)


@dataclass
class _Holder:
    key: PrivateKey
    account: str
    nonce: int = 0
    units: dict[str, int] = field(default_factory=dict)  # batch -> circulating units
    batches: list[str] = field(default_factory=list)  # batches with units > 0

    def add(self, batch: str, quantity: int) -> None:
        if not self.units.get(batch):
            self.batches.append(batch)
        self.units[batch] = self.units.get(batch, 0) + quantity

    def take(self, batch: str, quantity: int) -> None:
        left = self.units[batch] - quantity
        assert left >= 0
        self.units[batch] = left
        if left == 0:
            self.batches.remove(batch)


class CityWorkload:
    """The city's transactions, month by month, as (block time, envelopes) steps."""

    def __init__(self, *, households: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.authority = _key("authority")
        self.validator = _key("validator-city")
        self.certifiers = {
            "quality": _holder(_key("certifier-zibo-quality-centre")),
            "energy": _holder(_key("certifier-shandong-energy-institute")),
        }
        self.scope = {
            "household-electricity": "quality",
            "rooftop-solar": "energy",
            "ev-charging": "energy",
        }
        self.households = [_holder(_key(f"household-{i:06d}")) for i in range(households)]
        self.solar = self.households[: max(1, households // 10)]
        self.ev = self.households[max(1, households // 10) : max(2, households // 4)]
        self.companies = [_holder(_key(f"company-{i}")) for i in range(len(COMPANIES))]
        self.authority_nonce = 0
        self.batches = 0
        self.issued_in: dict[str, str] = {}  # batch -> methodology

    def genesis(self) -> dict[str, Any]:
        return make_genesis_document(
            chain_id=CHAIN_ID,
            genesis_time=GENESIS_TIME,
            authority_name="淄博市生态环境局 Zibo Municipal Bureau of Ecology and Environment",
            authority_keys=[self.authority.public_key_hex],
            authority_threshold=1,
            validators=[
                Validator(public_key=self.validator.public_key_hex, power=1, name="Zibo city")
            ],
            methodologies=[
                {
                    "methodology_id": slug,
                    "name": name,
                    "document_sha256": hashlib.sha256(f"{slug} v1.0".encode()).hexdigest(),
                }
                for slug, name in METHODOLOGIES.items()
            ],
        )

    def _sign(self, holder: _Holder | None, kind: str, payload: dict[str, Any]) -> Envelope:
        if holder is None:
            self.authority_nonce += 1
            signer, nonce, key = self.authority_account, self.authority_nonce, self.authority
        else:
            holder.nonce += 1
            signer, nonce, key = holder.account, holder.nonce, holder.key
        tx = Transaction(chain_id=CHAIN_ID, type=kind, signer=signer, nonce=nonce, payload=payload)
        return sign_transaction(tx, [key])

    @property
    def authority_account(self) -> str:
        return self.authority.account_id

    def steps(self, transactions: int) -> Iterator[tuple[int, list[Envelope]]]:
        """(block time, envelopes) until about `transactions` transactions."""
        made = 0
        setup = self._setup()
        made += len(setup)
        yield _ms(_month_start(0), 10), setup
        per_month = max(100, transactions // MONTHS)
        for month in range(MONTHS):
            issues = self._issues(month)
            made += len(issues)
            yield _ms(_month_start(month + 1), 9), issues
            budget = min(per_month, transactions - made) - 2 * len(self.companies) - 1
            days = (_month_start(month + 2) - _month_start(month + 1)).days
            steps = days * BLOCKS_PER_DAY
            for step in range(steps):
                count = budget * (step + 1) // steps - budget * step // steps
                envelopes = self._activity(count)
                if step == steps // 2:
                    envelopes += self._invalidation()
                made += len(envelopes)
                when = _month_start(month + 1) + datetime.timedelta(days=step // BLOCKS_PER_DAY)
                yield _ms(when, 10 + 2 * (step % BLOCKS_PER_DAY) + 0.5), envelopes
            compliance = self._compliance()
            made += len(compliance)
            yield _ms(_month_start(month + 2) - datetime.timedelta(days=1), 23), compliance
            if made >= transactions:
                return

    def _setup(self) -> list[Envelope]:
        envelopes = []
        for name, holder in self.certifiers.items():
            methodologies = [m for m, who in self.scope.items() if who == name]
            envelopes.append(
                self._sign(
                    None,
                    "accredit_certifier",
                    {
                        "certifier": holder.account,
                        "name": {
                            "quality": "淄博市质量认证中心 Zibo Quality Certification Centre",
                            "energy": "山东省节能评估院 Shandong Energy Assessment Institute",
                        }[name],
                        "methodologies": methodologies,
                        "valid_from": GENESIS_TIME,
                        "valid_until": _ms(_month_start(MONTHS + 24)),
                    },
                )
            )
        for slug, name, _ in PROGRAMMES:
            envelopes.append(
                self._sign(
                    None,
                    "create_program",
                    {"program_id": slug, "name": name, "valid_until": _ms(_month_start(60))},
                )
            )
        return envelopes

    def _issues(self, month: int) -> list[Envelope]:
        start, end = _month_start(month), _month_start(month + 1)
        envelopes = []
        for methodology, group, low, high in (
            ("household-electricity", self.households, 15, 160),
            ("rooftop-solar", self.solar, 200, 900),
            ("ev-charging", self.ev, 40, 260),
        ):
            certifier = self.certifiers[self.scope[methodology]]
            for compound, first in enumerate(range(0, len(group), COMPOUND), 1):
                members = group[first : first + COMPOUND]
                recipients: list[dict[str, Any]] = [
                    {"account": h.account, "quantity": _kg(self.rng.randint(low, high))}
                    for h in members
                ]
                district = DISTRICTS[compound % len(DISTRICTS)]
                project = f"{district.lower()}-compound-{compound:04d}-{methodology}"
                evidence = hashlib.sha256(f"meter-readings/{project}/{start}".encode())
                envelopes.append(
                    self._sign(
                        certifier,
                        "issue",
                        {
                            "methodology_id": methodology,
                            "project_id": project,
                            "period_start": start.isoformat(),
                            "period_end": end.isoformat(),
                            "evidence_sha256": evidence.hexdigest(),
                            "recipients": recipients,
                            "memo": f"{district} compound {compound}, {start:%Y-%m} readings",
                        },
                    )
                )
                self.batches += 1
                batch = f"B-{self.batches}"
                self.issued_in[batch] = methodology
                for holder, recipient in zip(members, recipients, strict=True):
                    holder.add(batch, recipient["quantity"])
        return envelopes

    def _activity(self, count: int) -> list[Envelope]:
        rng = self.rng
        envelopes: list[Envelope] = []
        tries = 0
        while len(envelopes) < count and tries < 20 * count:
            tries += 1
            holder = rng.choice(self.households)
            if not holder.batches:
                continue
            batch = rng.choice(holder.batches)
            quantity = rng.randint(1, min(holder.units[batch], 30))
            roll = rng.random()
            if roll < 0.5:
                methodology = self.issued_in[batch]
                programmes = [p for p, _, scope in PROGRAMMES if methodology in scope]
                payload: dict[str, Any] = {
                    "batch_id": batch,
                    "quantity": quantity,
                    "beneficiary": f"Household {holder.account[:8]}",
                    "purpose": "incentive",
                    "program_id": rng.choice(programmes),
                    "jurisdiction": "CN-SD",
                }
                envelopes.append(self._sign(holder, "retire", payload))
                holder.take(batch, quantity)
            elif roll < 0.7:
                payload = {
                    "batch_id": batch,
                    "quantity": quantity,
                    "beneficiary": f"Household {holder.account[:8]}",
                    "purpose": "voluntary",
                }
                envelopes.append(self._sign(holder, "retire", payload))
                holder.take(batch, quantity)
            else:
                company = rng.choice(self.companies)
                payload = {
                    "to": company.account,
                    "batch_id": batch,
                    "quantity": quantity,
                    "memo": "sold to offset emissions",
                }
                envelopes.append(self._sign(holder, "transfer", payload))
                holder.take(batch, quantity)
                company.add(batch, quantity)
        return envelopes

    def _invalidation(self) -> list[Envelope]:
        """A meter fault: the certifier voids half of one household's units of a batch."""
        for _ in range(100):
            holder = self.rng.choice(self.households)
            candidates = [b for b in holder.batches if holder.units[b] >= 2]
            if candidates:
                batch = candidates[-1]
                quantity = holder.units[batch] // 2
                certifier = self.certifiers[self.scope[self.issued_in[batch]]]
                holder.take(batch, quantity)
                return [
                    self._sign(
                        certifier,
                        "invalidate",
                        {
                            "batch_id": batch,
                            "holder": holder.account,
                            "quantity": quantity,
                            "reason": f"meter of {holder.account[:8]} found miscalibrated",
                        },
                    )
                ]
        return []

    def _compliance(self) -> list[Envelope]:
        """Each company retires its two largest holdings for its compliance obligation."""
        envelopes = []
        for company, name in zip(self.companies, COMPANIES, strict=True):
            largest = sorted(company.batches, key=lambda b: -company.units[b])[:2]
            for batch in largest:
                quantity = company.units[batch]
                envelopes.append(
                    self._sign(
                        company,
                        "retire",
                        {
                            "batch_id": batch,
                            "quantity": quantity,
                            "beneficiary": name,
                            "purpose": "compliance",
                            "jurisdiction": "CN-SD",
                        },
                    )
                )
                company.take(batch, quantity)
        return envelopes


def _holder(key: PrivateKey) -> _Holder:
    return _Holder(key=key, account=key.account_id)


@dataclass
class CitySummary:
    transactions: int
    blocks: int
    seconds: float
    head_time: int


def build_city(
    directory: Path,
    *,
    transactions: int,
    households: int = 20_000,
    seed: int = 1,
    report: Callable[[str], None] = print,
) -> CitySummary:
    """Write genesis.json, keys/validator-city.pem and the chain into `directory` (empty)."""
    if (directory / DATABASE_FILE).exists():
        raise FileExistsError(f"{directory} holds a ledger already")
    workload = CityWorkload(households=households, seed=seed)
    genesis = workload.genesis()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "genesis.json").write_text(json.dumps(genesis, indent=2, ensure_ascii=False))
    keys = directory / "keys"
    keys.mkdir(exist_ok=True)
    (keys / "validator-city.pem").write_bytes(workload.validator.to_pem())
    started = time.perf_counter()
    store = Store.create(directory, genesis)
    store.start_writer()
    signatures = SignatureWorker()
    pool = Pool(
        capacity=10 * SUBMIT_CHUNK + 5000, nonce_gap_max=10_000, check_signatures=signatures.check
    )
    producer = SoloProducer(store, workload.validator, pool=pool)
    tune_garbage_collector()
    committed = blocks = 0
    clock = GENESIS_TIME
    writing: tuple[PreparedBlock, Future[None]] | None = None
    next_report = 100_000

    def finish_writing() -> None:
        nonlocal writing, committed, blocks
        if writing is None:
            return
        prepared, written = writing
        writing = None
        written.result()
        result = producer.finish(prepared)
        rejected = [o for o in result.outcomes if o.status == "rejected"]
        if rejected:
            raise AssertionError(f"the city build was refused: {rejected[0]}")
        committed += len(result.block.transactions)
        blocks += 1

    try:
        with ThreadPoolExecutor(1) as writer:
            for at_ms, envelopes in workload.steps(transactions):
                for first in range(0, len(envelopes), SUBMIT_CHUNK):
                    chunk = envelopes[first : first + SUBMIT_CHUNK]
                    refused = [o for o in producer.submit(chunk) if o.status == "rejected"]
                    if refused:
                        raise AssertionError(f"the city build was refused: {refused[0]}")
                    # Cut blocks while a step's envelopes arrive, each at the step's time or
                    # just after the last (block times must grow).
                    while producer.pending_count() >= (
                        SUBMIT_CHUNK if first + SUBMIT_CHUNK < len(envelopes) else 1
                    ):
                        clock = max(clock + 1000, at_ms)
                        prepared = producer.prepare(clock)
                        finish_writing()
                        if prepared is None:
                            raise AssertionError("pending transactions that no block takes")
                        writing = (prepared, writer.submit(producer.write, prepared))
                if committed >= next_report:
                    report(f"    {committed:,} committed in {blocks:,} blocks")
                    next_report += 100_000
            finish_writing()
    finally:
        store.close()
        signatures.close()
    return CitySummary(
        transactions=committed,
        blocks=blocks,
        seconds=time.perf_counter() - started,
        head_time=clock,
    )
