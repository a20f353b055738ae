"""The explorer: the node's human-readable pages (issue 6), rendered on the server.

Residents, journalists and city officials see the ledger at `/` without reading JSON: blocks,
transactions, accounts, batches, certifiers, methodologies, programmes, retirement
certificates and the city dashboard. The pages read through the same queries as the JSON API
(`api.reads`), show every quantity in t CO2e from the ledger's integer units, and carry the
proofs a browser needs to check a transaction or a retirement itself (`api/static/verify.js`,
the checks of `ledger.receipts` in JavaScript). No page loads anything from outside the node.

This module holds what the pages share: the Jinja2 environment and its filters, the running
totals (`api.statistics`), the programme targets (a node-side setting: the SPEC's programmes
have none, docs/decisions/0007-explorer.md) and the error pages. An error on a page is the same
problem as over JSON (`api.problems`: one table of codes and statuses), shown as HTML.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from markupsafe import Markup
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from api.charts import format_tonnes
from api.node import Node
from api.problems import problem_body
from api.settings import Settings
from api.statistics import Statistics
from ledger.blocks import compute_validators_hash
from ledger.genesis import Genesis

log = logging.getLogger("tanlian.explorer")

PACKAGE: Final = Path(__file__).resolve().parent
TEMPLATES: Final = PACKAGE / "templates"
STATIC: Final = PACKAGE / "static"
ASSETS_URL: Final = "/assets"
TARGETS_FILE: Final = "programme-targets.json"
TARGETS_FILE_BYTES_MAX: Final = 1024 * 1024
HIDDEN_SHOWN_MAX: Final = 5  # invisible characters named after a free text
# The calendar ends in the year 9999, a signed time may be any integer up to 2^53 - 1 ms (the
# year 287396: a programme "valid until for ever"), and such a time had made every page that
# shows it fail (found by review). Later times are shown as this, from a day before the end,
# whatever the display offset.
LATEST_MS: Final = int((datetime.datetime(9999, 12, 30, tzinfo=datetime.UTC)).timestamp()) * 1000
LATEST_TEXT: Final = "after 9999-12-30"
# Paths that belong to the machine interfaces: their errors stay RFC 9457 JSON problems.
MACHINE_PATHS: Final = ("/v1/", "/healthz", "/metrics", "/openapi.json", "/docs", "/redoc")

TYPE_LABELS: Final = {
    "register_methodology": ("登记方法学", "Register methodology"),
    "accredit_certifier": ("认证机构资质", "Accredit certifier"),
    "revoke_certifier": ("撤销资质", "Revoke certifier"),
    "create_program": ("创建激励项目", "Create programme"),
    "suspend_account": ("冻结账户", "Suspend account"),
    "reinstate_account": ("恢复账户", "Reinstate account"),
    "set_validators": ("变更验证者", "Set validators"),
    "issue": ("签发", "Issue"),
    "transfer": ("转让", "Transfer"),
    "retire": ("注销", "Retire"),
    "invalidate": ("作废", "Invalidate"),
    "set_keys": ("更换密钥", "Set keys"),
}
PURPOSE_LABELS: Final = {
    "voluntary": ("自愿注销", "Voluntary"),
    "incentive": ("激励兑换", "Incentive redemption"),
    "compliance": ("履约注销", "Compliance"),
}
STATUS_LABELS: Final = {
    "circulating": ("流通", "Circulating"),
    "retired": ("已注销", "Retired"),
    "invalidated": ("已作废", "Invalidated"),
}


class ProgrammeTarget(BaseModel):
    """A programme's target as the city published it (not on the ledger)."""

    model_config = ConfigDict(extra="forbid")

    target_t_co2e: int = Field(gt=0, le=10**12, description="Tonnes CO2e to redeem.")
    deadline: datetime.date | None = Field(default=None, description="By when (a date).")
    source: str = Field(
        default="", max_length=200, description="Where the city published this target."
    )

    @property
    def target_units(self) -> int:
        return self.target_t_co2e * 1000


class ProgrammeTargets(RootModel[dict[str, ProgrammeTarget]]):
    """`programme-targets.json`: program_id -> its target."""


def load_targets(path: Path, *, required: bool = False) -> dict[str, ProgrammeTarget]:
    """The programme targets in `path` (none if it does not exist, unless `required`: named
    on purpose); ValueError naming the file and the fault if it is not a valid targets
    file."""
    if not path.is_file():
        if required:  # found by review: a file named but missing was silently none
            raise ValueError(f"programme targets {path} (TANLIAN_PROGRAMME_TARGETS): no such file")
        return {}
    try:
        with path.open("rb") as handle:
            data = handle.read(TARGETS_FILE_BYTES_MAX + 1)
        if len(data) > TARGETS_FILE_BYTES_MAX:
            raise ValueError(f"over {TARGETS_FILE_BYTES_MAX} bytes")
        return ProgrammeTargets.model_validate_json(data).root
    except (OSError, ValueError, ValidationError) as error:
        first = error.errors()[0] if isinstance(error, ValidationError) else None
        detail = (
            f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}" if first else str(error)
        )
        raise ValueError(f"programme targets {path}: {detail}") from None


def is_page(path: str) -> bool:
    """Whether a path is the explorer's (HTML errors) rather than a machine interface's.
    Judged as a client meant it: `//v1/...` and `/V1/...` are the API's, misspelt, and a
    program that sent them gets a problem it can read, not an HTML page."""
    meant = "/" + path.lstrip("/").lower()
    return meant != "/v1" and not meant.startswith(MACHINE_PATHS)


def free_text(value: str | None) -> Markup:
    """Text anyone may write into the ledger (a beneficiary, a memo, a reason, a name),
    isolated from the page's own text around it (`<bdi>`): a right-to-left override at a
    beneficiary's end reversed the purpose label and programme link the page put after it
    (found by review). The format characters it holds (bidirectional controls, zero-width
    ones) are named after it: the text cannot show them, and a search for what it seems to
    say finds nothing."""
    if value is None:
        return Markup("")
    hidden = sorted({f"U+{ord(char):04X}" for char in value if unicodedata.category(char) == "Cf"})
    html = Markup("<bdi>{}</bdi>").format(value)
    if hidden:
        shown = ", ".join(hidden[:HIDDEN_SHOWN_MAX]) + (
            " …" if len(hidden) > HIDDEN_SHOWN_MAX else ""
        )
        html += Markup(
            ' <span class="hint">(<span lang="zh-CN">含不可见字符</span>'
            " holds invisible characters: {})</span>"
        ).format(shown)
    return html


def embed_json(value: Any) -> Markup:
    """JSON for a `<script type="application/json">`: `<`, `>` and `&` escaped as \\u00XX, so
    no text inside can close the element; JSON parsers read the escapes back unchanged."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return Markup(
        text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    )  # safe: escaped above for a script element's content


@dataclass(frozen=True, slots=True, kw_only=True)
class Chain:
    """The chain's genesis as the pages show it; the validators' hash is what the browser
    trusts unless the reader gives another."""

    chain_id: str
    genesis_hash: str
    trusted_validators_hash: str
    authority_name: str

    @classmethod
    def of(cls, genesis: Genesis) -> Chain:
        return cls(
            chain_id=genesis.chain_id,
            genesis_hash=genesis.genesis_hash(),
            trusted_validators_hash=compute_validators_hash(genesis.validators),
            authority_name=genesis.authority_name,
        )


class Explorer:
    """What every page of one node shares."""

    def __init__(self, settings: Settings) -> None:
        self.offset_minutes = settings.display_utc_offset_minutes
        self.zone = _zone_name(self.offset_minutes)
        self.statistics = Statistics(utc_offset_minutes=self.offset_minutes)
        named = settings.programme_targets
        self.targets = load_targets(
            named or settings.data / TARGETS_FILE, required=named is not None
        )
        self._chain: Chain | None = None
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            tonnes=format_tonnes,
            when=self.when,
            day=self.day,
            short=_short,
            number=lambda value: f"{value:,}",
            embed_json=embed_json,
            free=free_text,
        )
        self.env.globals.update(
            TYPE_LABELS=TYPE_LABELS,
            PURPOSE_LABELS=PURPOSE_LABELS,
            STATUS_LABELS=STATUS_LABELS,
            zone=self.zone,
            assets=ASSETS_URL,
            query=query,
        )
        self._warming: threading.Thread | None = None
        self._stop = threading.Event()

    def chain(self, node: Node) -> Chain:
        """What the pages show of the chain's genesis (computed once)."""
        if self._chain is None:
            self._chain = Chain.of(node.genesis)
        return self._chain

    # --- formatting ---------------------------------------------------------------------------

    def local(self, time_ms: int) -> datetime.datetime:
        """`time_ms` on the display clock, at most `LATEST_MS` (the calendar's end)."""
        return datetime.datetime.fromtimestamp(
            min(time_ms, LATEST_MS) / 1000,
            tz=datetime.timezone(datetime.timedelta(minutes=self.offset_minutes)),
        )

    def when(self, time_ms: int) -> str:
        if time_ms >= LATEST_MS:
            return LATEST_TEXT
        return self.local(time_ms).strftime("%Y-%m-%d %H:%M:%S")

    def day(self, time_ms: int) -> str:
        if time_ms >= LATEST_MS:
            return LATEST_TEXT
        return self.local(time_ms).strftime("%Y-%m-%d")

    def month_now(self, time_ms: int) -> str:
        return self.local(time_ms).strftime("%Y-%m")

    # --- rendering ----------------------------------------------------------------------------

    def render(
        self,
        request: Request,
        template: str,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        **context: Any,
    ) -> HTMLResponse:
        node: Node = request.app.state.node
        state = node.state
        chain = self.chain(node)
        page = self.env.get_template(template).render(
            chain_id=chain.chain_id,
            genesis_hash=chain.genesis_hash,
            trusted_validators_hash=chain.trusted_validators_hash,
            request_path=request.url.path,
            height=state.height,
            head_time=state.head_time,
            search_text=request.query_params.get("q", "") if template == "error.html" else "",
            **context,
        )
        return HTMLResponse(page, status_code=status, headers=headers)

    def error(
        self, request: Request, code: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> Response:
        """The problem `code` (api.problems) as an HTML page with its status."""
        body = problem_body(code, detail)
        status = int(str(body["status"]))
        try:
            return self.render(request, "error.html", status=status, headers=headers, problem=body)
        except Exception:  # a page that cannot render still answers the problem, as text
            log.exception("the error page for %s failed to render", code)
            return PlainTextResponse(  # never HTML: the detail may echo the address
                f"{status} {body['title']}: {body['detail']}",
                status_code=status,
                headers=headers,
            )

    # --- the running totals ---------------------------------------------------------------------

    def start(self, node: Node) -> None:
        """Bring the totals up to the node's height in the background (the first time reads
        the whole chain: seconds on a large one), so the first page does not wait for it."""
        self._stop.clear()
        self._warming = threading.Thread(
            target=self._warm, args=(node,), name="explorer-totals", daemon=True
        )
        self._warming.start()

    def _warm(self, node: Node) -> None:
        try:
            self.statistics.refresh(node, stop=self._stop)
        except Exception:  # the pages refresh again and show the error's problem
            log.exception("the explorer's totals could not be built")

    def stop(self) -> None:
        self._stop.set()
        if self._warming is not None:
            self._warming.join()
            self._warming = None


def query(params: Mapping[str, str | None], **more: str | None) -> str:
    """ "?a=1&b=2" of the parameters that have a value (or "" when none has)."""
    pairs = {name: value for name, value in {**params, **more}.items() if value is not None}
    return "?" + urlencode(pairs) if pairs else ""


def _short(value: str, keep: int = 10) -> str:
    return value if len(value) <= keep + 1 else value[:keep] + "…"


def _zone_name(offset_minutes: int) -> str:
    hours, minutes = divmod(abs(offset_minutes), 60)
    sign = "+" if offset_minutes >= 0 else "-"
    return f"UTC{sign}{hours}" + (f":{minutes:02d}" if minutes else "")
