"""The explorer's pages in process (httpx.ASGITransport) on a real node and store: every page
renders what the ledger holds, lists paginate with cursors, unknown ids are HTML 404 pages,
bad addresses HTML 400 pages (`bad_query`), the JSON API keeps its problems, and the
dashboard's totals agree with the state. The browser's side is tests/api/test_explorer_browser.py.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from api import charts
from api.app import create_app
from api.explorer import LATEST_TEXT, embed_json, load_targets
from api.media import PROBLEM_MEDIA_TYPE
from api.node import Node
from api.settings import Settings
from api.statistics import _EVENTS, Statistics
from consensus.producer import SoloProducer
from ledger.blocks import compute_validators_hash
from ledger.crypto import PrivateKey
from ledger.genesis import parse_genesis
from ledger.state_transition import VALIDITY_ONLY
from ledger.store import Store
from tests.api.test_cli import TANLIAN, environment
from tests.factory import GENESIS_TIME, Chain
from tests.factory import key as named_key

pytestmark = pytest.mark.anyio

MONTH_MS = 31 * 86_400_000
HOUSEHOLDS = 30  # more than one page (25) of lots, history and retirements


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


PADDED = " Padded Org "


class City:
    """A small chain over three months: two programmes, issuances, transfers, retirements of
    every purpose, an invalidation."""

    def __init__(self) -> None:
        self.chain = Chain()
        self.retirements: list[str] = []
        self.transfers: list[str] = []
        self.issue_ids: list[str] = []

    def blocks(self) -> list[tuple[int, list[Any]]]:
        c = self.chain
        alice, bob = c.alice.account_id, c.bob.account_id
        first = [
            c.accredit(methodologies=["household-electricity", "rooftop-solar"]),
            c.create_program(),
            c.create_program("zibo-bus-pass"),
        ]
        issues = [
            c.issue([(alice, 5000), (bob, 3000)], project_id="meter-0001"),
            c.issue(
                [(bob, 2000)],
                project_id="roof-7",
                methodology_id="rooftop-solar",
                period=("2026-01-01", "2026-02-01"),  # ended when it is issued, unlike B-1
            ),
        ]
        self.issue_ids = [e.tx_id for e in issues]
        moves = []
        for i in range(HOUSEHOLDS):
            retire = c.tx(
                c.alice,
                "retire",
                {
                    "batch_id": "B-1",
                    "quantity": 10 + i,
                    "beneficiary": f"Household {i:02d}",
                    "purpose": ("incentive", "voluntary", "compliance")[i % 3],
                    **({"program_id": "zibo-green-home"} if i % 3 == 0 else {}),
                },
            )
            self.retirements.append(retire.tx_id)
            moves.append(retire)
        for i in range(HOUSEHOLDS):
            transfer = c.tx(
                c.bob, "transfer", {"to": alice, "batch_id": "B-1", "quantity": 1 + i % 2}
            )
            self.transfers.append(transfer.tx_id)
            moves.append(transfer)
        later = [
            c.tx(  # a name that begins and ends with spaces: the ledger takes it as it is
                c.bob,
                "retire",
                {"batch_id": "B-2", "quantity": 1, "beneficiary": PADDED, "purpose": "voluntary"},
            ),
            c.tx(
                c.bob,
                "retire",
                {
                    "batch_id": "B-2",
                    "quantity": 700,
                    "beneficiary": "张伟 Zhang Wei household",
                    "purpose": "incentive",
                    "program_id": "zibo-bus-pass",
                    "jurisdiction": "CN-SD",
                    "memo": "redeemed for a bus pass",
                },
            ),
            c.tx(
                c.certifier,
                "invalidate",
                {"batch_id": "B-1", "holder": bob, "quantity": 100, "reason": "meter fault"},
            ),
        ]
        self.retirements += [later[0].tx_id, later[1].tx_id]  # Zhang Wei's the latest
        return [
            (GENESIS_TIME + 86_400_000, first + issues[:1]),
            (GENESIS_TIME + MONTH_MS, issues[1:] + moves),
            (GENESIS_TIME + 2 * MONTH_MS, later),
        ]


def write_city(directory: Path, city: City) -> None:
    store = Store.create(directory, city.chain.genesis_document)
    producer = SoloProducer(store, city.chain.validator)
    for start, envelopes in city.blocks():
        outcomes = producer.submit(envelopes)
        assert all(o.status == "pending" for o in outcomes), outcomes
        at = start
        while producer.pending_count():
            result = producer.produce(at)
            assert result is not None
            assert not any(o.status == "rejected" for o in result.outcomes), result.outcomes
            at += 1000
    store.close()


class Live:
    def __init__(self, city: City, node: Node, client: httpx.AsyncClient, data: Path) -> None:
        self.city = city
        self.node = node
        self.client = client
        self.data = data

    async def page(self, path: str, status: int = 200) -> str:
        response = await self.client.get(path)
        assert response.status_code == status, (path, response.status_code, response.text[:500])
        assert response.headers["content-type"].startswith("text/html"), path
        return response.text


@pytest.fixture(scope="module")
def city_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[City, Node, Path]]:
    data = tmp_path_factory.mktemp("explorer")
    city = City()
    write_city(data, city)
    (data / "programme-targets.json").write_text(
        json.dumps(
            {
                "zibo-green-home": {
                    "target_t_co2e": 2,
                    "deadline": "2026-12-31",
                    "source": "淄博市双碳行动方案 2026",
                },
                "no-such-programme": {"target_t_co2e": 5},
            },
            ensure_ascii=False,
        )
    )
    node = Node(data, city.chain.validator)
    node.start()
    try:
        yield city, node, data
    finally:
        node.stop()


@pytest.fixture(scope="module")
async def live(city_node: tuple[City, Node, Path]) -> AsyncIterator[Live]:
    city, node, data = city_node
    app = create_app(node, Settings(data=data), manage_node=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        yield Live(city, node, client, data)


@contextlib.asynccontextmanager
async def serving(data: Path, key: PrivateKey) -> AsyncIterator[httpx.AsyncClient]:
    """A node of its own on `data` (started, stopped at the end) and a client of its app."""
    node = Node(data, key)
    node.start()
    try:
        app = create_app(node, Settings(data=data), manage_node=False)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            yield client
    finally:
        node.stop()


def text_of(html: str) -> str:
    """The page's text, tags removed and spaces collapsed (to find figures in it)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


# --- every page ---------------------------------------------------------------------------------


async def test_home_shows_totals_latest_blocks_and_retirements(live: Live) -> None:
    page = text_of(await live.page("/"))
    assert "Carbon credits" in page and "碳信用" in page
    # issued 10,000 kg; retired 30 household retirements (10..39 kg) + 1 + 700
    retired = sum(10 + i for i in range(HOUSEHOLDS)) + 1 + 700
    assert "Issued 10 " in page  # 10 t
    assert f"Retired {retired // 1000}.{retired % 1000:03d}".rstrip("0") in page
    assert "Invalidated 0.1 " in page
    assert "张伟 Zhang Wei household" in page
    assert "2 个批次 batches" in page and f"{HOUSEHOLDS + 2} 次注销 retirements" in page


async def test_every_page_renders(live: Live) -> None:
    city = live.city
    chain = city.chain
    retirement = city.retirements[-1]
    pages = {
        "/dashboard": ["City carbon dashboard", "Issued per month", "t CO2e"],
        "/blocks": ["Blocks", "Newest first"],
        "/blocks/1": ["Block 1", "Log root", "accredit"],
        f"/transactions/{city.transfers[0]}": ["Transfer", "Check it yourself", "proof-data"],
        f"/accounts/{chain.alice.account_id}": ["Holdings", "Serial ranges by batch", "History"],
        "/batches": ["Batches", "B-1", "B-2", "rooftop-solar"],
        "/batches/B-1": [
            "Evidence hash",
            "Supply by status",
            "serial ranges",
            "Invalidated",
            'id="issued-early"',  # issued on 2026-01-02 for January 2026
            "issued before its period ended",
        ],
        "/retirements": ["Retirements", "张伟 Zhang Wei household"],
        f"/retirements/{retirement}": [
            "Carbon credit retirement certificate",
            "张伟 Zhang Wei household",
            "receipt-data",
            "0.7",
        ],
        "/programmes": ["Incentive programmes", "zibo-green-home", "no target set"],
        "/programmes/zibo-green-home": ["Progress toward the target", "淄博市双碳行动方案 2026"],
        "/certifiers": ["National quality certification centre", "Valid"],
        "/methodologies": ["household-electricity", "rooftop-solar", "genesis"],
        "/verify": ["Verify a retirement receipt", "receipt-file"],
    }
    for path, expected in pages.items():
        html = await live.page(path)
        for words in expected:
            assert words in html, (path, words)
        assert "<title>" in html and 'lang="zh-CN"' in html, path
        assert "http://" not in html.replace("http://www.w3.org/2000/svg", ""), path
        assert "https://" not in html, path  # nothing from outside the node
    assert 'id="issued-early"' not in await live.page("/batches/B-2")  # its period had ended
    certificate = await live.page(f"/retirements/{retirement}")  # under the genesis's set
    assert "data-later-set" not in certificate and "--genesis genesis.json" in certificate


async def test_a_certificate_under_a_later_validator_set_says_so_and_how_to_check_it(
    tmp_path: Path,
) -> None:
    """Found by review: after a set_validators every genuine certificate page showed
    "Not verified" against the genesis's set, and its offline hint gave `--genesis`, which
    fails the same way. The page names the set that certified the receipt, says when to
    trust it, and its hint gives `--validators-hash`; the browser still trusts the genesis's
    set unless the reader pastes another. A certificate under the genesis's set says nothing
    of it."""
    chain = Chain().funded()
    retire = {"batch_id": "B-1", "quantity": 5, "beneficiary": "Alice", "purpose": "voluntary"}
    assert not chain.commit(chain.tx(chain.alice, "retire", retire)).rejected
    successor = named_key("successor")
    assert not chain.commit(chain.set_validators([successor])).rejected
    chain.commit()  # the new set governs from two heights on
    assert not chain.commit(
        chain.tx(chain.bob, "retire", {**retire, "beneficiary": "Bob"})
    ).rejected
    chain.write_store(tmp_path)
    later = compute_validators_hash(chain.state.current_validators())
    genesis_set = compute_validators_hash(parse_genesis(chain.genesis_document).validators)
    assert later != genesis_set
    async with serving(tmp_path, successor) as client:
        ids = (await client.get("/v1/retirements")).json()["items"]
        pages = {
            r["beneficiary"]: (await client.get(f"/retirements/{r['retirement_id']}")).text
            for r in ids
        }
    bob, alice = pages["Bob"], pages["Alice"]
    assert "data-later-set" in bob and later in bob
    assert f"--validators-hash {later}" in bob and "--genesis genesis.json" not in bob
    assert f'id="trusted" class="hash-input" value="{genesis_set}"' in bob  # trust unchanged
    # Alice retired before the change; her receipt, made now, is certified at the head too
    assert "data-later-set" in alice and f"--validators-hash {later}" in alice


async def test_the_dashboard_draws_labelled_charts_with_tables(live: Live) -> None:
    html = await live.page("/dashboard")
    for chart in ("issued", "retired", "invalidated", "methodology-issued", "programmes"):
        svg = re.search(rf'<svg class="chart" id="chart-{chart}".*?</svg>', html, re.S)
        assert svg is not None, chart
        assert f'<title id="chart-{chart}-title">' in svg.group(0)
        assert f'<desc id="chart-{chart}-desc">' in svg.group(0)
        assert "t CO2e" in svg.group(0)
        assert '<rect class="bar' in svg.group(0), chart
    assert 'id="progress-zibo-green-home"' in html  # a target is configured for it
    assert "no-such-programme" not in html  # a target for a programme the chain lacks
    assert "<table" in html and "2026-02" in html and "month (月份)" in html


async def test_the_dashboard_pages_through_months(live: Live) -> None:
    html = await live.page("/dashboard?to=2025-06")
    assert "2024-07 – 2025-06" in html
    assert 'href="/dashboard?to=2026-06"' in html  # later 12 months
    assert "Earlier 12 months" not in html  # the chain starts in 2026
    html = await live.page("/dashboard")
    assert "2025-04 – 2026-03" in html  # up to the head's month
    assert "Later 12 months" not in html and "Earlier 12 months" not in html


# --- totals agree with the ledger -----------------------------------------------------------------


async def test_the_totals_agree_with_the_state(live: Live) -> None:
    state = live.node.state
    totals = Statistics(utc_offset_minutes=480).refresh(live.node)
    sums = {"issued": 0, "retired": 0, "invalidated": 0}
    for key, value in state.entries.items():
        if key.startswith("batch/"):
            for name in sums:
                sums[name] += value[name]
    assert {name: totals.total[name] for name in sums} == sums
    for flow in ("issued", "retired", "redeemed", "invalidated"):
        assert sum(m[flow] for m in totals.by_month.values()) == totals.total[flow]
        assert sum(m[flow] for m in totals.by_methodology.values()) == totals.total[flow]
    programmes = {k: v for k, v in state.entries.items() if k.startswith("program/")}
    assert {k[8:]: v["retired"] for k, v in programmes.items() if v["retired"]} == {
        p: f["redeemed"] for p, f in totals.by_programme.items()
    }
    assert totals.retirements == len(live.city.retirements)
    assert totals.batches == 2
    assert list(totals.by_month) == ["2026-01", "2026-02", "2026-03"]


async def test_the_totals_follow_the_chain_block_by_block(live: Live) -> None:
    """A refresh reads only the new heights, and gives what a fresh count of them gives."""
    statistics = Statistics(utc_offset_minutes=480)
    before = statistics.refresh(live.node)
    chain = live.city.chain
    retire = chain.tx(
        chain.alice,
        "retire",
        {"batch_id": "B-1", "quantity": 5, "beneficiary": "Late", "purpose": "voluntary"},
    )
    live.node.submit([retire])
    (outcome,) = live.node.wait_for_commit([retire.tx_id], timeout=20)
    assert outcome is not None and outcome.status == "committed"
    after = statistics.refresh(live.node)
    assert after.height > before.height
    assert after.total["retired"] == before.total["retired"] + 5
    fresh = Statistics(utc_offset_minutes=480).refresh(live.node)
    assert after == fresh
    live.city.retirements.append(retire.tx_id)


# --- lists paginate ---------------------------------------------------------------------------


async def follow(live: Live, path: str, pattern: str, *, pager: int = 0) -> list[str]:
    """Every match of `pattern` on a list page and on each next page its cursor links to (the
    `pager`-th list of the page: an account has two)."""
    found: list[str] = []
    for _ in range(50):
        html = await live.page(path)
        found += re.findall(pattern, html)
        pagers = re.findall(r'<nav class="pager".*?</nav>', html, re.S)
        more = re.search(r'<a href="([^"]+)" rel="next">', pagers[pager]) if pagers else None
        if more is None:
            return found
        path = more.group(1).replace("&amp;", "&")
    raise AssertionError("more than 50 pages")


async def test_lists_follow_their_cursors_to_the_end(live: Live) -> None:
    alice = live.city.chain.alice.account_id
    retirements = await follow(live, "/retirements", r'href="/retirements/([0-9a-f]{64})"')
    assert set(retirements) == set(live.city.retirements)
    assert len(retirements) == len(set(retirements))
    history = await follow(
        live,
        f"/accounts/{alice}",
        r'<td><a class="id" href="/transactions/([0-9a-f]{64})"',
        pager=-1,
    )
    assert len(history) == len(set(history)) >= 2 * HOUSEHOLDS
    lots = await follow(live, "/batches/B-1", r'<tr><td><span class="serials">([0-9,]+) –')
    serials = [int(first.replace(",", "")) for first in lots]
    assert serials == sorted(serials) and len(serials) > 25 and serials[0] == 1
    blocks = await follow(live, "/blocks", r'<td><a href="/blocks/(\d+)">')
    assert [int(h) for h in blocks] == list(range(live.node.state.height, 0, -1))
    transactions = await follow(live, "/blocks/2", r'href="/transactions/([0-9a-f]{64})"')
    assert len(set(transactions)) == 1 + 2 * HOUSEHOLDS  # the solar issue and the moves


async def test_an_account_pages_its_lots_and_history_independently(live: Live) -> None:
    alice = live.city.chain.alice.account_id
    html = await live.page(f"/accounts/{alice}")
    lots_next = re.search(r'href="([^"]*lots=[^"]+)" rel="next"', html)
    history_next = re.search(r'href="([^"]*history=[^"]+)" rel="next"', html)
    assert lots_next is not None and history_next is not None
    second = await live.page(lots_next.group(1).replace("&amp;", "&"))
    assert "First page" in second


# --- search -------------------------------------------------------------------------------------


async def test_search_goes_to_the_one_match(live: Live) -> None:
    city = live.city
    cases = {
        "2": "/blocks/2",
        "b-2": "/batches/B-2",
        city.retirements[0].upper(): f"/retirements/{city.retirements[0]}",
        city.transfers[0]: f"/transactions/{city.transfers[0]}",
        city.chain.bob.account_id: f"/accounts/{city.chain.bob.account_id}",
        "zibo-bus-pass": "/programmes/zibo-bus-pass",
        "rooftop-solar": "/batches?methodology_id=rooftop-solar",
        "张伟 Zhang Wei household": "/retirements?beneficiary=",
        "  ": "/",
    }
    for text, target in cases.items():
        response = await live.client.get("/search", params={"q": text})
        assert response.status_code == 303, (text, response.text[:300])
        assert response.headers["location"].startswith(target), (text, response.headers)


async def test_a_beneficiary_is_found_by_its_exact_name_as_the_api_finds_it(live: Live) -> None:
    """Found by review: the explorer stripped the name, so a beneficiary whose name begins or
    ends with a space was on its certificate but in no list or search."""
    api = await live.client.get("/v1/retirements", params={"beneficiary": PADDED})
    (record,) = api.json()["items"]
    assert record["beneficiary"] == PADDED
    html = await live.page(f"/retirements?beneficiary={quote(PADDED)}")
    assert f"/retirements/{record['retirement_id']}" in html
    response = await live.client.get("/search", params={"q": PADDED})
    assert response.status_code == 303, response.text[:300]
    assert response.headers["location"] == f"/retirements?beneficiary={quote(PADDED, safe='')}"


async def test_pages_carry_a_content_security_policy_and_every_answer_nosniff(
    live: Live,
) -> None:
    """Found by review: no security header at all. The browser tests load every page under
    this policy with no console error, so nothing a page needs is refused by it."""
    for path in ("/", "/verify", "/no-such-page"):
        response = await live.client.get(path)
        assert response.headers["content-type"].startswith("text/html"), path
        policy = response.headers["content-security-policy"]
        assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy
        assert "unsafe-eval" not in policy and "script-src 'unsafe-inline'" not in policy
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
    for path in ("/v1/genesis", "/v1/nothing", "/assets/verify.js", "/docs", "/v1"):
        response = await live.client.get(path)
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert "content-security-policy" not in response.headers, path
    assert (await live.client.get("/v1")).headers["content-type"] == PROBLEM_MEDIA_TYPE


async def test_search_with_no_match_is_a_404_page(live: Live) -> None:
    html = await live.page("/search?q=nothing-like-this", status=404)
    assert "nothing on this chain matches" in html and 'value="nothing-like-this"' in html


# --- errors -------------------------------------------------------------------------------------


async def test_unknown_ids_are_404_pages(live: Live) -> None:
    unknown = "ab" * 32
    for path in (
        f"/transactions/{unknown}",
        f"/accounts/{unknown}",
        f"/retirements/{unknown}",
        "/batches/B-99",
        "/programmes/no-such-programme",
        "/blocks/999999",
        "/no/such/page",
    ):
        html = await live.page(path, status=404)
        assert "<code>not_found</code>" in html, path


def _after(key: str) -> str:
    """A family list's cursor (api.reads.family) as a client could make one up."""
    text = json.dumps({"after": key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(text).decode().rstrip("=")


async def test_bad_addresses_are_400_pages(live: Live) -> None:
    for path in (
        "/blocks/abc",
        "/blocks/0",
        "/blocks/99999999999999999",
        "/transactions/xyz",
        "/accounts/" + "g" * 64,
        "/batches/C-1",
        "/programmes/A!",
        "/batches?methodology_id=Not_A_Slug",
        "/batches?certifier=short",
        "/retirements?program_id=X",
        "/retirements?beneficiary=" + "x" * 201,
        "/blocks?cursor=not-a-cursor",
        "/batches?cursor=" + "A" * 600,
        # cursors of the right shape, made up to reach before the family into other state
        "/programmes?cursor=" + _after("a"),
        "/certifiers?cursor=" + _after(""),
        "/methodologies?cursor=" + _after("account/"),
        f"/accounts/{live.city.chain.alice.account_id}?lots=eyJ4IjoxfQ",
        "/dashboard?to=2026-13",
        "/search?q=" + "x" * 201,
        "/dashboard?to=2026-01&to=2026-02",  # given twice (found by review: was 422)
        "/blocks?cursor=%FF",  # an escape that is not UTF-8
    ):
        response = await live.client.get(path)
        assert response.status_code == 400, (path, response.status_code)
        assert response.headers["content-type"].startswith("text/html")
        assert "<code>bad_query</code>" in response.text, path


async def test_an_explorer_path_answers_405_as_a_page_with_allow(live: Live) -> None:
    response = await live.client.post("/dashboard")
    assert response.status_code == 405
    assert response.headers["content-type"].startswith("text/html")
    assert "GET" in response.headers["allow"]


async def test_the_json_api_keeps_its_problems(live: Live) -> None:
    for path, status, code in (
        ("/v1/no-such-thing", 404, "not_found"),
        ("/v1/blocks/abc", 422, "invalid_field"),
        ("/v1/batches/B-99", 404, "not_found"),
        ("http://node//v1/genesis", 404, "not_found"),  # had been the explorer's HTML page
        ("/V1/genesis", 404, "not_found"),
        ("/V1", 404, "not_found"),
    ):
        response = await live.client.get(path)
        assert response.status_code == status
        assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
        assert response.json()["code"] == code


async def test_a_bug_in_a_page_is_a_500_page_not_a_traceback(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("api.reads.block_summaries", broken)
    app = live.client._transport.app  # type: ignore[attr-defined]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        response = await client.get("/blocks")
    assert response.status_code == 500
    assert "<code>internal_error</code>" in response.text and "a bug" not in response.text
    # Starlette answers it outside every middleware: the page sets its own (found by review)
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


async def test_a_bug_in_a_json_route_is_a_500_problem_not_a_traceback(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: the JSON answer to a bug was sent as application/json, not as the
    RFC 9457 problem every other refusal is."""

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(live.node, "reader", broken)
    app = live.client._transport.app  # type: ignore[attr-defined]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        response = await client.get("/v1/checkpoint")
    assert response.status_code == 500
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in response.headers
    assert response.json()["code"] == "internal_error" and "a bug" not in response.text


async def test_pages_are_not_in_the_openapi_schema(live: Live) -> None:
    schema = (await live.client.get("/openapi.json")).json()
    assert all(path.startswith(("/v1/", "/healthz", "/metrics")) for path in schema["paths"])


async def test_the_assets_are_served_by_the_node(live: Live) -> None:
    for name, kind in (
        ("explorer.css", "text/css"),
        ("verify.js", "javascript"),
        ("explorer.js", "javascript"),
    ):
        response = await live.client.get(f"/assets/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
    assert (await live.client.get("/assets/nothing.js")).status_code == 404


# --- settings and helpers -------------------------------------------------------------------------


def test_programme_targets_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    assert load_targets(path) == {}
    path.write_text('{"zibo-green-home": {"target_t_co2e": 50, "deadline": "2026-12-31"}}')
    assert load_targets(path)["zibo-green-home"].target_units == 50_000
    for bad, fault in (
        ('{"p": {"target_t_co2e": 0}}', "p.target_t_co2e"),
        ('{"p": {"target_t_co2e": 5, "colour": "red"}}', "p.colour"),
        ('{"p": {"target_t_co2e": 5, "deadline": "someday"}}', "p.deadline"),
        ("[1, 2]", "Input should be an object"),
        ("not json", "Invalid JSON"),
    ):
        path.write_text(bad)
        with pytest.raises(ValueError, match=re.escape(str(path))) as raised:
            load_targets(path)
        assert fault in str(raised.value), (bad, raised.value)


def test_a_bad_targets_file_stops_the_app_from_starting(
    city_node: tuple[City, Node, Path], tmp_path: Path
) -> None:
    _, node, data = city_node
    bad = tmp_path / "targets.json"
    bad.write_text('{"p": {"target_t_co2e": -1}}')
    with pytest.raises(ValueError, match="programme targets"):
        create_app(node, Settings(data=data, programme_targets=bad), manage_node=False)
    # Found by review: a targets file named on purpose but missing was silently none.
    missing = tmp_path / "missing.json"
    with pytest.raises(
        ValueError, match=f"programme targets {re.escape(str(missing))} .*: no such"
    ):
        create_app(node, Settings(data=data, programme_targets=missing), manage_node=False)


def test_embedded_json_cannot_close_its_script_element() -> None:
    value = {"memo": "</script><script>alert(1)</script> & <!--"}
    embedded = str(embed_json(value))
    assert "<" not in embedded and ">" not in embedded and "&" not in embedded
    assert json.loads(embedded) == value


def test_a_node_with_a_bad_targets_file_refuses_to_start(tmp_path: Path) -> None:
    chain = Chain()
    genesis = tmp_path / "genesis.json"
    genesis.write_text(json.dumps(chain.genesis_document))
    key = tmp_path / "validator.pem"
    key.write_bytes(chain.validator.to_pem())
    targets = tmp_path / "targets.json"
    targets.write_text('{"zibo-green-home": {"target_t_co2e": "lots"}}')
    arguments = ["node", "--genesis", genesis, "--data", tmp_path / "data"]
    arguments += ["--validator-key", key, "--listen", "127.0.0.1:1"]
    done = subprocess.run(
        [str(TANLIAN), *map(str, arguments)],
        env={**environment(), "TANLIAN_PROGRAMME_TARGETS": str(targets)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "zibo-green-home.target_t_co2e" in done.stderr and "Traceback" not in done.stderr


def test_tonnes_are_exact_and_charts_scale() -> None:
    assert [charts.format_tonnes(u) for u in (0, 1, 999, 1000, 1234567, 1500)] == [
        "0",
        "0.001",
        "0.999",
        "1",
        "1,234.567",
        "1.5",
    ]
    assert [charts.nice_step(top) for top in (0, 0.3, 7, 120, 4491)] == [
        1.0,
        0.1,
        2.0,
        50.0,
        1000.0,
    ]
    assert charts.fit("short", 200) == "short"
    cut = charts.fit("淄博公交碳积分 Zibo bus-pass carbon points", 120)
    assert cut.endswith("…") and charts.text_width(cut) <= 120
    svg = str(
        charts.column_chart(
            chart_id="c",
            title="T <&>",
            description="D",
            labels=["2026-01", "2026-02"],
            series=[charts.Series(name="a", css="issued"), charts.Series(name="b", css="other")],
            values=[[1000, 0], [500, 2500]],
        )
    )
    assert "T &lt;&amp;&gt;" in svg and svg.count('<rect class="bar') == 3 + 2  # bars, legend
    assert "2026-02: 2.5 t CO2e b" in svg and ">2026</text>" in svg
    empty = str(charts.bar_chart(chart_id="e", title="t", description="d", rows=[], css="x"))
    assert "<svg" in empty and "rect" not in empty


def test_months_are_counted_in_the_explorers_time_zone() -> None:
    evening = 1_769_889_600_000  # 2026-01-31 20:00 UTC: 2026-02-01 04:00 in Zibo
    assert Statistics(utc_offset_minutes=480).month(evening) == "2026-02"
    assert Statistics(utc_offset_minutes=0).month(evening) == "2026-01"
    assert Statistics(utc_offset_minutes=-300).month(evening) == "2026-01"


async def test_an_accounts_history_says_what_an_issuance_gave_it(live: Live) -> None:
    received = await follow(
        live,
        f"/accounts/{live.city.chain.bob.account_id}",
        r'\+<span class="qty" title="([0-9,]+) kg CO2e">',
        pager=-1,
    )
    assert sorted(received) == ["2,000", "3,000"]  # of B-2 (2,000 kg) and B-1 (8,000 kg)


class _FailingEvents:
    """A read of the events that fails after its first row, as a damaged page would."""

    def __init__(self, rows: list[Any]) -> None:
        self.rows = rows

    def __iter__(self) -> Iterator[Any]:
        yield self.rows[0]
        raise sqlite3.DatabaseError("database disk image is malformed")

    def fetchall(self) -> list[Any]:
        raise sqlite3.DatabaseError("database disk image is malformed")


class _FailingReader:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = self

    def execute(self, query: str, parameters: Any = ()) -> Any:
        rows = self.store.db.execute(query, parameters)
        return _FailingEvents(rows.fetchall()) if query == _EVENTS else rows


async def test_a_read_failing_halfway_counts_nothing_twice(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: the totals counted events while reading them, so a read that failed
    after its first rows left them counted, and the next refresh counted them again."""
    statistics = Statistics(utc_offset_minutes=480)
    reader = live.node.reader
    monkeypatch.setattr(live.node, "reader", lambda: _FailingReader(reader()))
    with pytest.raises(sqlite3.DatabaseError):
        statistics.refresh(live.node)
    monkeypatch.undo()
    again = statistics.refresh(live.node)
    assert again.total["retired"] > 0 and again.total["invalidated"] > 0
    assert again == Statistics(utc_offset_minutes=480).refresh(live.node)


async def test_times_past_the_calendars_end_are_shown_not_a_500(tmp_path: Path) -> None:
    """Found by review: a programme or an accreditation valid until 2^53 - 1 ms (the year
    287396, "for ever": any signed time may be that large) made every page that shows it
    answer 500; the calendar ends in 9999."""
    chain = Chain()
    forever = 2**53 - 1
    store = Store.create(tmp_path, chain.genesis_document)
    producer = SoloProducer(store, chain.validator)
    envelopes = [
        chain.accredit(valid_until=forever),
        chain.authority_tx(
            "create_program",
            {"program_id": "for-ever", "name": "A programme for ever", "valid_until": forever},
        ),
    ]
    assert all(o.status == "pending" for o in producer.submit(envelopes))
    result = producer.produce(GENESIS_TIME + 1000)
    assert result is not None and len(result.block.transactions) == 2
    store.close()
    async with serving(tmp_path, chain.validator) as client:
        for path in ("/programmes", "/programmes/for-ever", "/certifiers"):
            response = await client.get(path)
            assert response.status_code == 200, (path, response.text[:300])
            assert LATEST_TEXT in response.text, path


async def test_the_dashboard_refuses_months_before_its_window_can_start(live: Live) -> None:
    """Found by review: `to=0000-01` drew months of the year -1."""
    for to in ("0000-01", "0001-11"):
        html = await live.page(f"/dashboard?to={to}", 400)
        assert "<code>bad_query</code>" in html and "from 0001-12 on" in html
    html = await live.page("/dashboard?to=0001-12")
    assert "0001-01 – 0001-12" in html
    assert 'href="/dashboard?to=0002-12"' in html


async def test_a_batch_whose_project_id_this_proposer_refuses_says_what_is_in_it(
    tmp_path: Path,
) -> None:
    """A batch another implementation's proposer committed under `meter-0001` with a Cyrillic
    `е` (valid by the SPEC, decision 0004): the page cannot show the difference in the id
    itself, so it says what is in it; a batch whose id reads as it is shows nothing."""
    chain = Chain()
    chain.funded()
    chain.rules = VALIDITY_ONLY  # as another implementation's proposer may
    built = chain.commit(chain.issue([(chain.carol, 10)], project_id="m\u0435ter-0001"))
    assert len(built.block.transactions) == 1
    store = Store.create(tmp_path, chain.genesis_document)
    for block in chain.blocks:
        store.append(block.block, chain.certify(block), block.state)
    store.close()
    async with serving(tmp_path, chain.validator) as client:
        questioned = (await client.get("/batches/B-2")).text
        plain = (await client.get("/batches/B-1")).text
    assert 'id="project-questioned"' in questioned
    assert "id with hidden or look-alike characters" in questioned
    assert (
        "project_id mixes Latin letters and U+0435 CYRILLIC SMALL LETTER IE (Cyrillic) at 1"
        in questioned
    )
    assert 'id="project-questioned"' not in plain


async def test_free_text_is_isolated_and_its_invisible_characters_named(tmp_path: Path) -> None:
    """Found by review: a beneficiary ending in a right-to-left override reversed the
    purpose label and the programme link the page wrote after it, and the certificate
    showed it as the plain name, which a search did not find."""
    chain = Chain().funded()
    beneficiary = "Household 0001, Zhangdian\u202e"
    retire = chain.tx(
        chain.alice,
        "retire",
        {
            "batch_id": "B-1",
            "quantity": 5,
            "beneficiary": beneficiary,
            "purpose": "incentive",
            "program_id": "zibo-green-home",
        },
    )
    assert not chain.commit(retire).rejected
    chain.rules = VALIDITY_ONLY  # as another implementation's proposer may
    questioned = chain.issue([(chain.carol, 10)], project_id="meter-0002\u202e")
    assert not chain.commit(questioned).rejected  # B-2, as another proposer may commit it
    chain.write_store(tmp_path)
    async with serving(tmp_path, chain.validator) as client:
        pages = [
            (await client.get(path)).text
            for path in (f"/transactions/{retire.tx_id}", "/retirements", "/")
        ]
        programme = (await client.get("/programmes/zibo-green-home")).text
        batch_page = (await client.get("/batches/B-2")).text
    for html in pages:
        assert f"<bdi>{beneficiary}</bdi>" in html
        assert "holds invisible characters: U+202E" in html
    # A project id another proposer committed with one is isolated too (found by review).
    assert '<bdi>meter-0002\u202e</bdi> <span class="hint">' in batch_page
    assert "holds invisible characters: U+202E" in batch_page
    # A name without such characters is isolated all the same, and nothing is named.
    assert "<h1><bdi>Zibo green home incentive</bdi></h1>" in programme
    assert programme.count("holds invisible characters") == 1  # the beneficiary's alone
