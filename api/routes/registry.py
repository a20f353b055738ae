"""Accounts, batches, retirements and blocks, with opaque cursors and bounded limits; stats.

Values come from the node's latest state (one consistent height); lists come from the
store's indexed query tables, newest first. The reads are `api.reads`, which the explorer's
pages share.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Path, Query

from api import reads, schemas
from api.cursors import CURSOR_CHARS_MAX, encode_cursor
from api.node import Node
from api.problems import problem_responses
from api.routes import example, node_of
from api.schemas import EXAMPLE_ACCOUNT, EXAMPLE_CERTIFIER, EXAMPLE_TX_ID
from api.settings import LIST_LIMIT_MAX

router = APIRouter(prefix="/v1", tags=["registry"])

HEX64 = r"^[0-9a-f]{64}$"
# A filter that no id could match is refused, as the explorer's pages refuse it (found by
# review: `?methodology_id=Household%20Electricity` answered an empty page, a typo read as
# "nothing there").
SLUG = r"^[a-z0-9][a-z0-9-]{1,62}$"
ACCOUNT = Annotated[
    str,
    Path(
        pattern=HEX64,
        description="An account id.",
        openapi_examples=example(EXAMPLE_ACCOUNT, "An account id"),
    ),
]
LIMIT = Annotated[
    int,
    Query(
        ge=1,
        le=LIST_LIMIT_MAX,
        description="Items per page.",
        openapi_examples=example(2, "Two per page"),
    ),
]
CURSOR_DESCRIPTION = "`next_cursor` of a previous page, passed back unchanged."
BEFORE_CURSOR = Annotated[
    str | None,
    Query(
        max_length=CURSOR_CHARS_MAX,
        description=CURSOR_DESCRIPTION,
        openapi_examples=example(encode_cursor({"before": 20}), "Items before position 20"),
    ),
]
RETIREMENT_CURSOR = Annotated[
    str | None,
    Query(
        max_length=CURSOR_CHARS_MAX,
        description=CURSOR_DESCRIPTION,
        openapi_examples=example(
            encode_cursor({"height": 5, "id": EXAMPLE_TX_ID}), "Retirements before one"
        ),
    ),
]
HISTORY_FIELDS = ("log_index", "tx_id", "height", "type")
LIST_PROBLEMS = problem_responses("invalid_field")
ITEM_PROBLEMS = problem_responses("not_found", "invalid_field")


@router.get(
    "/accounts/{account_id}",
    summary="Keys, nonce, status, roles and holdings",
    response_model=schemas.Account,
    response_model_exclude_unset=True,
    responses=ITEM_PROBLEMS,
)
async def account(account_id: ACCOUNT, node: Annotated[Node, Depends(node_of)]) -> dict[str, Any]:
    # On the event loop, not the thread pool: the answer is bounded (HOLDING_RANGES_MAX ranges,
    # one indexed query, ~25 us typical, ~1 ms at the bound), and the hop to a pool thread and
    # back, contending for the GIL, cost several times that (bench/api.py (c): 857 -> 2,442
    # req/s, p99 83 -> 22 ms, measured on the 2-core machine). In the moment after a block's
    # write, before the state takes it, the read waits here without holding the loop; an
    # account with more lots than an answer lists is read in a thread.
    try:
        return reads.account(node, account_id, wait=False)
    except reads.ReadInThread as deferred:
        if deferred.height is not None:
            await node.wait_for_height_async(deferred.height, reads.READ_SETTLE_SECONDS)
    return await anyio.to_thread.run_sync(reads.account, node, account_id)


@router.get(
    "/accounts/{account_id}/transactions",
    summary="An account's history, newest first",
    response_model=schemas.Page[schemas.HistoryItem],
    response_model_exclude_unset=True,
    responses=LIST_PROBLEMS,
)
def account_transactions(
    account_id: ACCOUNT,
    node: Annotated[Node, Depends(node_of)],
    limit: LIMIT = 20,
    cursor: BEFORE_CURSOR = None,
) -> dict[str, Any]:
    page = reads.account_history(node, account_id, limit=limit, cursor=cursor)
    items = [{key: item[key] for key in HISTORY_FIELDS} for item in page.items]
    return {"items": items, "next_cursor": page.next_cursor}


@router.get(
    "/batches",
    summary="Batches, newest first, by methodology or certifier",
    response_model=schemas.Page[schemas.Batch],
    response_model_exclude_unset=True,
    responses=LIST_PROBLEMS,
)
def batches(
    node: Annotated[Node, Depends(node_of)],
    methodology_id: Annotated[
        str | None,
        Query(
            pattern=SLUG,
            openapi_examples=example("household-electricity", "A methodology"),
        ),
    ] = None,
    certifier: Annotated[
        str | None,
        Query(pattern=HEX64, openapi_examples=example(EXAMPLE_CERTIFIER, "A certifier's id")),
    ] = None,
    limit: LIMIT = 20,
    cursor: BEFORE_CURSOR = None,
) -> dict[str, Any]:
    return reads.batches(
        node, methodology_id=methodology_id, certifier=certifier, limit=limit, cursor=cursor
    ).to_json()


@router.get(
    "/batches/{batch_id}",
    summary="A batch: issuance details and supply by status",
    response_model=schemas.Batch,
    response_model_exclude_unset=True,
    responses=ITEM_PROBLEMS,
)
def batch(
    batch_id: Annotated[
        str, Path(pattern=r"^B-[1-9][0-9]{0,15}$", openapi_examples=example("B-1", "A batch id"))
    ],
    node: Annotated[Node, Depends(node_of)],
) -> dict[str, Any]:
    return reads.batch(node, batch_id)


@router.get(
    "/retirements",
    summary="Retirements, newest first, by beneficiary or programme",
    response_model=schemas.Page[schemas.Retirement],
    response_model_exclude_unset=True,
    responses=LIST_PROBLEMS,
)
def retirements(
    node: Annotated[Node, Depends(node_of)],
    beneficiary: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=200,
            openapi_examples=example("Household 560fbf3d, Zhangdian", "A beneficiary"),
        ),
    ] = None,
    program_id: Annotated[
        str | None,
        Query(pattern=SLUG, openapi_examples=example("zibo-green-home", "A programme")),
    ] = None,
    limit: LIMIT = 20,
    cursor: RETIREMENT_CURSOR = None,
) -> dict[str, Any]:
    return reads.retirements(
        node, beneficiary=beneficiary, program_id=program_id, limit=limit, cursor=cursor
    ).to_json()


@router.get(
    "/retirements/{retirement_id}",
    summary="A retirement record",
    response_model=schemas.Retirement,
    response_model_exclude_unset=True,
    responses=ITEM_PROBLEMS,
)
def retirement(
    retirement_id: Annotated[
        str, Path(pattern=HEX64, openapi_examples=example(EXAMPLE_TX_ID, "A retirement's tx id"))
    ],
    node: Annotated[Node, Depends(node_of)],
) -> dict[str, Any]:
    return reads.retirement(node, retirement_id)


@router.get(
    "/blocks",
    summary="Blocks with their certificates, newest first",
    description=f"At most `limit` blocks, and no more than"
    f" {reads.BLOCKS_PAGE_TRANSACTIONS_MAX:,} transactions in all but for the page's first"
    " block: a page may hold fewer than `limit` blocks while `next_cursor` says more follow.",
    response_model=schemas.Page[schemas.CertifiedBlock],
    response_model_exclude_unset=True,
    responses=LIST_PROBLEMS,
)
def blocks(
    node: Annotated[Node, Depends(node_of)], limit: LIMIT = 10, cursor: BEFORE_CURSOR = None
) -> dict[str, Any]:
    return reads.blocks(node, limit=limit, cursor=cursor).to_json()


@router.get(
    "/stats",
    summary="Totals by status, methodology and month (t = 1,000 units); recorded evidence",
    response_model=schemas.Stats,
    response_model_exclude_unset=True,
    responses=problem_responses(),
)
def stats(node: Annotated[Node, Depends(node_of)]) -> dict[str, Any]:
    state = node.state
    totals = {"issued": 0, "circulating": 0, "retired": 0, "invalidated": 0}
    by_methodology: dict[str, dict[str, int]] = {}
    by_month: dict[str, dict[str, int]] = {}
    evidence: dict[str, int] = {}
    for key, value in state.entries.items():
        if key.startswith("evidence/"):
            evidence[value["validator"]] = evidence.get(value["validator"], 0) + 1
        if not key.startswith("batch/"):
            continue
        month = datetime.datetime.fromtimestamp(value["time"] / 1000, tz=datetime.UTC)
        for bucket in (
            totals,
            by_methodology.setdefault(value["methodology_id"], dict.fromkeys(totals, 0)),
            by_month.setdefault(month.strftime("%Y-%m"), dict.fromkeys(totals, 0)),
        ):
            for status in totals:
                bucket[status] += value[status]
    return {
        "height": state.height,
        "transactions": state.log.size,
        "units": "kg CO2e",
        "totals": totals,
        "by_methodology": by_methodology,
        "by_issuance_month": dict(sorted(by_month.items())),
        "evidence": dict(sorted(evidence.items())),
    }
