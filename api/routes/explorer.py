"""The explorer's pages (issue 6): thin HTML routes over `api.reads`, outside the OpenAPI schema.

Each route parses its path and query by hand, so that a malformed id or cursor is answered by
an HTML page (400 `bad_query`) rather than by the JSON API's validation problem; an id that
names nothing is a 404 `not_found` page. Lists are pages of `PAGE_ITEMS` continued by the same
opaque cursors as the JSON API. The templates are in api/templates, the stylesheet and the
scripts in api/static (served at /assets).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Final
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from api import charts, reads
from api.charts import Series
from api.cursors import CURSOR_CHARS_MAX
from api.explorer import Explorer
from api.node import Node
from api.routes import node_of
from api.statistics import Totals
from ledger.errors import LedgerError
from ledger.limits import JSON_INTEGER_MAX, TEXT_CHARS_MAX
from ledger.state_transition import project_id_objection
from ledger.verification import period_not_ended

router = APIRouter(include_in_schema=False)

PAGE_ITEMS: Final = 25
HOME_ITEMS: Final = 10
WINDOW_MONTHS: Final = 12  # months on one page of the dashboard
TOP_PROGRAMMES: Final = 10
HEX64: Final = re.compile(r"[0-9a-f]{64}\Z")
HEIGHT: Final = re.compile(r"[1-9][0-9]{0,15}\Z")
BATCH: Final = re.compile(r"B-[1-9][0-9]{0,15}\Z")
SLUG: Final = re.compile(r"[a-z0-9][a-z0-9-]{1,62}\Z")
MONTH: Final = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])\Z")
SEARCH_CHARS_MAX: Final = TEXT_CHARS_MAX
ROLE_LABELS: Final = {
    "holder": ("持有人", "Holder"),
    "authority": ("登记机构", "Registry authority"),
    "certifier": ("认证机构", "Certifier"),
}


def explorer_of(request: Request) -> Explorer:
    explorer: Explorer = request.app.state.explorer
    return explorer


NodeDep = Annotated[Node, Depends(node_of)]
ExplorerDep = Annotated[Explorer, Depends(explorer_of)]


# --- parsing the address ----------------------------------------------------------------------


def _bad(detail: str) -> LedgerError:
    return LedgerError(detail, code="bad_query")


def _hex(value: str, what: str) -> str:
    lowered = value.strip().lower()
    if not HEX64.match(lowered):
        raise _bad(f"{what} must be 64 hex characters, not {value[:80]!r}")
    return lowered


def _height(value: str) -> int:
    if not HEIGHT.match(value) or int(value) > JSON_INTEGER_MAX:
        raise _bad(f"a height is a whole number from 1, not {value[:80]!r}")
    return int(value)


def _batch_id(value: str) -> str:
    normalised = value.strip().upper()
    if not BATCH.match(normalised):
        raise _bad(f"a batch id looks like B-12, not {value[:80]!r}")
    return normalised


def _slug(value: str, what: str) -> str:
    if not SLUG.match(value):
        raise _bad(f"{what} is 2 to 63 of a-z, 0-9 and '-', not {value[:80]!r}")
    return value


def _cursor(value: str | None) -> str | None:
    """The cursor of a page; an empty one (a form's) is the first page."""
    if not value:
        return None
    if len(value) > CURSOR_CHARS_MAX:
        raise _bad("the page cursor is not one this node gave out")
    return value


@contextmanager
def _cursors() -> Iterator[None]:
    """A cursor the reads refuse (invalid_field) is a bad address here."""
    try:
        yield
    except LedgerError as error:
        if error.code == "invalid_field":
            raise _bad(error.message) from error
        raise


def _names(node: Node, explorer: Explorer) -> Callable[[str], str | None]:
    """The registry's own names for accounts: the authority (genesis) and certifiers."""
    state = node.state

    def name(account_id: str) -> str | None:
        if account_id == state.authority:
            return explorer.chain(node).authority_name
        certifier = state.get(f"certifier/{account_id}")
        return None if certifier is None else str(certifier["name"])

    return name


def _with_transactions(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**item, "transaction": json.loads(item["envelope"])} for item in items]


def _render(
    request: Request, explorer: Explorer, node: Node, template: str, **context: Any
) -> HTMLResponse:
    return explorer.render(
        request,
        template,
        names=_names(node, explorer),
        ROLE_LABELS=ROLE_LABELS,
        **context,
    )


# --- pages ------------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def home(request: Request, node: NodeDep, explorer: ExplorerDep) -> HTMLResponse:
    totals = explorer.statistics.refresh(node)
    return _render(
        request,
        explorer,
        node,
        "home.html",
        totals=totals,
        transactions=node.state.log.size,
        blocks=reads.block_summaries(node, limit=HOME_ITEMS, cursor=None).items,
        retirements=reads.retirements(
            node, beneficiary=None, program_id=None, limit=HOME_ITEMS, cursor=None
        ).items,
    )


@router.get("/search", response_model=None)
def search(
    request: Request, node: NodeDep, explorer: ExplorerDep, q: str = ""
) -> HTMLResponse | RedirectResponse:
    """One match: go there (303). Several: list them. None: a 404 page."""
    text = q.strip()
    if not text:
        return RedirectResponse("/", status_code=303)
    if len(q) > SEARCH_CHARS_MAX:
        raise _bad(f"a search is at most {SEARCH_CHARS_MAX} characters")
    matches = _matches(node, text, exact=q)
    if len(matches) == 1:
        return RedirectResponse(matches[0][1], status_code=303)
    if not matches:
        raise LedgerError(
            f"nothing on this chain matches {text[:80]!r}: search a transaction, retirement "
            "or account id (64 hex), a batch (B-12), a height, a programme or methodology id, "
            "or a beneficiary's exact name",
            code="not_found",
        )
    return _render(request, explorer, node, "search.html", q=text, matches=matches)


def _matches(node: Node, text: str, *, exact: str) -> list[tuple[str, str]]:
    """What `text` (the search, stripped) names; a beneficiary by its exact name, which may
    begin or end with spaces (`exact`, the search as typed), or else by `text`."""
    state = node.state
    found: list[tuple[str, str]] = []
    plain = text.replace(",", "").replace(" ", "")
    if HEIGHT.match(plain) and int(plain) <= state.height:
        found.append((f"区块 Block {int(plain):,}", f"/blocks/{int(plain)}"))
    if BATCH.match(text.upper()) and state.get(f"batch/{text.upper()}") is not None:
        found.append((f"批次 Batch {text.upper()}", f"/batches/{text.upper()}"))
    lowered = text.lower()
    if HEX64.match(lowered):
        if state.get(f"retirement/{lowered}") is not None:
            # the certificate, which links to its transaction
            found.append(("注销证书 Retirement certificate", f"/retirements/{lowered}"))
        elif node.outcome(lowered) is not None:
            found.append(("交易 Transaction", f"/transactions/{lowered}"))
        if state.get(f"account/{lowered}") is not None:
            found.append(("账户 Account", f"/accounts/{lowered}"))
    if SLUG.match(text):
        programme = state.get(f"program/{text}")
        if programme is not None:
            found.append((f"激励项目 Programme: {programme['name']}", f"/programmes/{text}"))
        methodology = state.get(f"methodology/{text}")
        if methodology is not None:
            found.append(
                (f"方法学 Methodology: {methodology['name']}", f"/batches?methodology_id={text}")
            )
    reader = node.reader()
    for name in dict.fromkeys((exact, text)):
        query = "SELECT 1 FROM retirements WHERE beneficiary = ? LIMIT 1"
        if reader.db.execute(query, (name,)).fetchone() is not None:
            link = f"/retirements?beneficiary={quote(name, safe='')}"
            found.append((f"受益方 Beneficiary: {name}", link))
            break
    return found


@router.get("/blocks", response_class=HTMLResponse)
def blocks(
    request: Request, node: NodeDep, explorer: ExplorerDep, cursor: str | None = None
) -> HTMLResponse:
    with _cursors():
        page = reads.block_summaries(node, limit=PAGE_ITEMS, cursor=_cursor(cursor))
    return _render(request, explorer, node, "blocks.html", page=page, cursor=cursor)


@router.get("/blocks/{height}", response_class=HTMLResponse)
def block(
    request: Request,
    height: str,
    node: NodeDep,
    explorer: ExplorerDep,
    cursor: str | None = None,
) -> HTMLResponse:
    number = _height(height)
    header = reads.block_header(node, number)
    with _cursors():
        page = reads.block_transactions(node, number, limit=PAGE_ITEMS, cursor=_cursor(cursor))
    page = reads.Page(items=_with_transactions(page.items), next_cursor=page.next_cursor)
    return _render(request, explorer, node, "block.html", block=header, page=page, cursor=cursor)


@router.get("/transactions/{tx_id}", response_class=HTMLResponse)
def transaction(request: Request, tx_id: str, node: NodeDep, explorer: ExplorerDep) -> HTMLResponse:
    tx_id = _hex(tx_id, "a transaction id")
    outcome = node.outcome(tx_id)
    if outcome is None:
        raise LedgerError(f"no transaction {tx_id} is known to this node", code="not_found")
    proof = None
    block_time = None
    if outcome.status == "committed":
        proof = reads.transaction_proof(node, tx_id)
        block_time = node.reader().read_header(proof["height"]).time
    return _render(
        request,
        explorer,
        node,
        "transaction.html",
        tx_id=tx_id,
        outcome=outcome,
        proof=proof,
        block_time=block_time,
    )


@router.get("/accounts/{account_id}", response_class=HTMLResponse)
def account(
    request: Request,
    *,
    account_id: str,
    node: NodeDep,
    explorer: ExplorerDep,
    lots: str | None = None,
    history: str | None = None,
) -> HTMLResponse:
    account_id = _hex(account_id, "an account id")
    value = node.state.get(f"account/{account_id}")
    if value is None:
        raise LedgerError(f"no account {account_id}", code="not_found")
    with _cursors():
        lots_page = reads.account_lots(node, account_id, limit=PAGE_ITEMS, cursor=_cursor(lots))
        history_page = reads.account_history(
            node, account_id, limit=PAGE_ITEMS, cursor=_cursor(history)
        )
    return _render(
        request,
        explorer,
        node,
        "account.html",
        account={**value, "account_id": account_id, "roles": reads.roles(node, account_id)},
        name=_names(node, explorer)(account_id),
        totals=reads.account_totals(node, account_id),
        lots=lots_page,
        lots_cursor=lots,
        history=reads.Page(
            items=_with_transactions(history_page.items), next_cursor=history_page.next_cursor
        ),
        history_cursor=history,
    )


@router.get("/batches", response_class=HTMLResponse)
def batches(
    request: Request,
    *,
    node: NodeDep,
    explorer: ExplorerDep,
    methodology_id: str | None = None,
    certifier: str | None = None,
    cursor: str | None = None,
) -> HTMLResponse:
    if methodology_id is not None:
        _slug(methodology_id, "a methodology id")
    if certifier is not None:
        certifier = _hex(certifier, "a certifier's account id")
    with _cursors():
        page = reads.batches(
            node,
            methodology_id=methodology_id,
            certifier=certifier,
            limit=PAGE_ITEMS,
            cursor=_cursor(cursor),
        )
    return _render(
        request,
        explorer,
        node,
        "batches.html",
        page=page,
        cursor=cursor,
        methodology_id=methodology_id,
        certifier=certifier,
    )


@router.get("/batches/{batch_id}", response_class=HTMLResponse)
def batch(
    request: Request,
    batch_id: str,
    node: NodeDep,
    explorer: ExplorerDep,
    cursor: str | None = None,
) -> HTMLResponse:
    value = reads.batch(node, _batch_id(batch_id))
    with _cursors():
        lots = reads.batch_lots(node, value["batch_id"], limit=PAGE_ITEMS, cursor=_cursor(cursor))
    return _render(
        request,
        explorer,
        node,
        "batch.html",
        b=value,
        issued_early=period_not_ended(value["period_end"], value["time"]),
        # Why this registry's proposer would have left the issuance out (docs/decisions/0004):
        # a reader cannot see a hidden character, nor tell look-alike letters apart.
        project_questioned=project_id_objection(value["project_id"]),
        methodology=node.state.get(f"methodology/{value['methodology_id']}"),
        lots=lots,
        cursor=cursor,
    )


@router.get("/retirements", response_class=HTMLResponse)
def retirements(
    request: Request,
    *,
    node: NodeDep,
    explorer: ExplorerDep,
    program_id: str | None = None,
    beneficiary: str | None = None,
    cursor: str | None = None,
) -> HTMLResponse:
    if program_id is not None:
        _slug(program_id, "a programme id")
    if beneficiary is not None and not beneficiary.strip():
        beneficiary = None  # an empty filter; a name is matched exactly, spaces and all
    if beneficiary is not None and len(beneficiary) > TEXT_CHARS_MAX:
        raise _bad(f"a beneficiary is at most {TEXT_CHARS_MAX} characters")
    with _cursors():
        page = reads.retirements(
            node,
            beneficiary=beneficiary,
            program_id=program_id,
            limit=PAGE_ITEMS,
            cursor=_cursor(cursor),
        )
    return _render(
        request,
        explorer,
        node,
        "retirements.html",
        page=page,
        cursor=cursor,
        program_id=program_id,
        beneficiary=beneficiary,
    )


@router.get("/retirements/{retirement_id}", response_class=HTMLResponse)
def certificate(
    request: Request, retirement_id: str, node: NodeDep, explorer: ExplorerDep
) -> HTMLResponse:
    """The printable retirement certificate, with its receipt (SPEC §6.3) for the browser."""
    retirement_id = _hex(retirement_id, "a retirement id")
    state = node.state
    record = reads.retirement(node, retirement_id)
    receipt = node.reader().receipt(state, retirement_id)
    programme = (
        None if record["program_id"] is None else state.get(f"program/{record['program_id']}")
    )
    return _render(
        request,
        explorer,
        node,
        "certificate.html",
        r=record,
        b=state.get(f"batch/{record['batch_id']}"),
        programme_name=None if programme is None else programme["name"],
        receipt=receipt,
        authority_name=explorer.chain(node).authority_name,
    )


@router.get("/programmes", response_class=HTMLResponse)
def programmes(
    request: Request, node: NodeDep, explorer: ExplorerDep, cursor: str | None = None
) -> HTMLResponse:
    totals = explorer.statistics.refresh(node)
    with _cursors():
        page = reads.family(node, "program/", limit=PAGE_ITEMS, cursor=_cursor(cursor))
    return _render(
        request,
        explorer,
        node,
        "programmes.html",
        page=page,
        cursor=cursor,
        flows=totals.by_programme,
        targets=explorer.targets,
    )


@router.get("/programmes/{program_id}", response_class=HTMLResponse)
def programme(
    request: Request,
    program_id: str,
    node: NodeDep,
    explorer: ExplorerDep,
    cursor: str | None = None,
) -> HTMLResponse:
    _slug(program_id, "a programme id")
    value = node.state.get(f"program/{program_id}")
    if value is None:
        raise LedgerError(f"no programme {program_id}", code="not_found")
    totals = explorer.statistics.refresh(node)
    with _cursors():
        page = reads.retirements(
            node, beneficiary=None, program_id=program_id, limit=PAGE_ITEMS, cursor=_cursor(cursor)
        )
    redeemed = totals.programme_months.get(program_id, {})
    months = _months_until(explorer.month_now(node.state.head_time), WINDOW_MONTHS)
    chart = (
        charts.column_chart(
            chart_id="chart-programme-months",
            title=f"{value['name']}: credits redeemed per month, t CO2e",
            description=_series_description(months, [redeemed.get(m, 0) for m in months]),
            labels=months,
            series=[Series(name="redeemed", css="redeemed")],
            values=[[redeemed.get(m, 0) for m in months]],
        )
        if redeemed
        else None
    )
    target = explorer.targets.get(program_id)
    progress = (
        charts.progress_bar(
            chart_id="programme-progress",
            title=f"{value['name']}: progress toward its target",
            done=value["retired"],
            target=target.target_units,
        )
        if target is not None
        else None
    )
    return _render(
        request,
        explorer,
        node,
        "programme.html",
        p=value,
        page=page,
        cursor=cursor,
        target=target,
        progress=progress,
        chart=chart,
        months=[(m, redeemed.get(m, 0)) for m in months],
        retirements_count=totals.by_programme.get(program_id, {}).get("retirements", 0),
    )


@router.get("/certifiers", response_class=HTMLResponse)
def certifiers(
    request: Request, node: NodeDep, explorer: ExplorerDep, cursor: str | None = None
) -> HTMLResponse:
    totals = explorer.statistics.refresh(node)
    with _cursors():
        page = reads.family(node, "certifier/", limit=PAGE_ITEMS, cursor=_cursor(cursor))
    return _render(
        request,
        explorer,
        node,
        "certifiers.html",
        page=page,
        cursor=cursor,
        flows=totals.by_certifier,
    )


@router.get("/methodologies", response_class=HTMLResponse)
def methodologies(
    request: Request, node: NodeDep, explorer: ExplorerDep, cursor: str | None = None
) -> HTMLResponse:
    totals = explorer.statistics.refresh(node)
    with _cursors():
        page = reads.family(node, "methodology/", limit=PAGE_ITEMS, cursor=_cursor(cursor))
    return _render(
        request,
        explorer,
        node,
        "methodologies.html",
        page=page,
        cursor=cursor,
        flows=totals.by_methodology,
    )


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard(
    request: Request, node: NodeDep, explorer: ExplorerDep, to: str | None = None
) -> HTMLResponse:
    """The city dashboard: flows per month (WINDOW_MONTHS a page), by methodology, the top
    programmes and their progress toward the targets the city published."""
    totals = explorer.statistics.refresh(node)
    state = node.state
    last = explorer.month_now(state.head_time)
    first = next(iter(totals.by_month), last)
    earliest = _shift("0001-01", WINDOW_MONTHS - 1)  # the window's first month is 0001-01
    if to is not None and (not MONTH.match(to) or to < earliest):
        raise _bad(f"'to' is a month as YYYY-MM, from {earliest} on, not {to[:80]!r}")
    end = last if to is None else to
    months = _months_until(end, WINDOW_MONTHS)
    by_month = totals.by_month
    column = [by_month.get(m, {}) for m in months]
    context: dict[str, Any] = {
        "totals": totals,
        "months": months,
        "by_month": by_month,
        "earlier": _shift(months[0], -1) if months[0] > first else None,
        "later": min(_shift(end, WINDOW_MONTHS), "9999-12") if end < last else None,
        "charts": _dashboard_charts(totals, months, column, node, explorer),
        "methodologies": sorted(totals.by_methodology.items(), key=lambda kv: -kv[1]["issued"]),
    }
    programmes = _programmes(totals, node, explorer)
    context["programmes"] = programmes
    context["progress"] = [
        (
            p,
            charts.progress_bar(
                chart_id=f"progress-{p['program_id']}",
                title=f"{p['name']}: progress toward its target",
                done=p["redeemed"],
                target=p["target"].target_units,
            ),
        )
        for p in programmes
        if p["target"] is not None
    ]
    return _render(request, explorer, node, "dashboard.html", **context)


def _programmes(totals: Totals, node: Node, explorer: Explorer) -> list[dict[str, Any]]:
    """The programmes with redemptions (most first) and those with a target, at most
    TOP_PROGRAMMES plus the targeted ones."""
    state = node.state
    ranked = sorted(totals.by_programme.items(), key=lambda kv: -kv[1]["redeemed"])
    chosen = [program_id for program_id, _ in ranked[:TOP_PROGRAMMES]]
    chosen += [p for p in explorer.targets if p not in chosen]
    rows = []
    for program_id in chosen:
        value = state.get(f"program/{program_id}")
        if value is None:
            continue  # a target for a programme the chain does not hold (yet)
        flows = totals.by_programme.get(program_id, {})
        rows.append(
            {
                "program_id": program_id,
                "name": value["name"],
                "redeemed": value["retired"],
                "retirements": flows.get("retirements", 0),
                "target": explorer.targets.get(program_id),
            }
        )
    return rows


def _dashboard_charts(
    totals: Totals,
    months: list[str],
    column: list[Any],
    node: Node,
    explorer: Explorer,
) -> dict[str, Any]:
    issued = [f.get("issued", 0) for f in column]
    redeemed = [f.get("redeemed", 0) for f in column]
    other = [f.get("retired", 0) - f.get("redeemed", 0) for f in column]
    invalidated = [f.get("invalidated", 0) for f in column]
    state = node.state
    programmes = sorted(totals.by_programme.items(), key=lambda kv: -kv[1]["redeemed"])
    programme_rows = [
        (
            str((state.get(f"program/{program_id}") or {"name": program_id})["name"]),
            flows["redeemed"],
        )
        for program_id, flows in programmes[:TOP_PROGRAMMES]
    ]
    methodologies = sorted(totals.by_methodology.items(), key=lambda kv: -kv[1]["issued"])
    return {
        "issued": charts.column_chart(
            chart_id="chart-issued",
            title="Credits issued per month, t CO2e (每月签发)",
            description=_series_description(months, issued),
            labels=months,
            series=[Series(name="issued", css="issued")],
            values=[issued],
        ),
        "retired": charts.column_chart(
            chart_id="chart-retired",
            title="Credits retired per month, t CO2e: redeemed into programmes and other "
            "retirements (每月注销)",
            description=_series_description(
                months, [r + o for r, o in zip(redeemed, other, strict=True)]
            ),
            labels=months,
            series=[
                Series(name="redeemed into programmes", css="redeemed"),
                Series(name="other retirements", css="other"),
            ],
            values=[redeemed, other],
        ),
        "invalidated": charts.column_chart(
            chart_id="chart-invalidated",
            title="Credits invalidated per month, t CO2e (每月作废)",
            description=_series_description(months, invalidated),
            labels=months,
            series=[Series(name="invalidated", css="invalidated")],
            values=[invalidated],
        ),
        "methodology_issued": charts.bar_chart(
            chart_id="chart-methodology-issued",
            title="Credits issued by methodology, t CO2e (各方法学签发量)",
            description="; ".join(
                f"{m}: {charts.format_tonnes(f['issued'])} t" for m, f in methodologies
            )
            or "nothing issued yet",
            rows=[(m, f["issued"]) for m, f in methodologies],
            css="issued",
        ),
        "methodology_retired": charts.bar_chart(
            chart_id="chart-methodology-retired",
            title="Credits retired by methodology, t CO2e (各方法学注销量)",
            description="; ".join(
                f"{m}: {charts.format_tonnes(f['retired'])} t" for m, f in methodologies
            )
            or "nothing retired yet",
            rows=[(m, f["retired"]) for m, f in methodologies],
            css="retired",
        ),
        "programmes": charts.bar_chart(
            chart_id="chart-programmes",
            title="Top programmes by credits redeemed, t CO2e (激励项目兑换量)",
            description="; ".join(
                f"{name}: {charts.format_tonnes(units)} t" for name, units in programme_rows
            )
            or "no redemption yet",
            rows=programme_rows,
            css="redeemed",
        ),
    }


def _series_description(months: list[str], values: list[int]) -> str:
    return "; ".join(
        f"{m}: {charts.format_tonnes(v)} t" for m, v in zip(months, values, strict=True)
    )


def _shift(month: str, by: int) -> str:
    found = MONTH.match(month)
    assert found is not None
    index = int(found.group(1)) * 12 + int(found.group(2)) - 1 + by
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def _months_until(end: str, count: int) -> list[str]:
    """The `count` months that end with `end` ("YYYY-MM"), oldest first."""
    return [_shift(end, offset) for offset in range(1 - count, 1)]


@router.get("/verify", response_class=HTMLResponse)
def verify(request: Request, node: NodeDep, explorer: ExplorerDep) -> HTMLResponse:
    return _render(request, explorer, node, "verify.html")
