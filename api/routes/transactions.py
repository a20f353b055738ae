"""POST /v1/transactions and GET /v1/transactions/{tx_id} (SPEC §7.1)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.node import Node
from api.problems import problem, problem_body
from api.routes import node_of, settings_of
from api.settings import Settings
from consensus.producer import Outcome
from ledger.encoding import decode
from ledger.errors import LedgerError
from ledger.transactions import Envelope, parse_envelope

router = APIRouter(prefix="/v1", tags=["transactions"])

TX_ID = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$", description="A transaction id (hex).")]

ENVELOPE_EXAMPLE: dict[str, Any] = {
    "tx": {
        "chain_id": "zibo-demo",
        "type": "retire",
        "signer": "<account id, 64 hex>",
        "nonce": 7,
        "payload": {
            "batch_id": "B-3",
            "quantity": 40,
            "beneficiary": "Household 560fbf3d, Zhangdian",
            "purpose": "incentive",
            "program_id": "zibo-green-home",
            "jurisdiction": "CN-SD",
        },
    },
    "signatures": [{"public_key": "<64 hex>", "signature": "<128 hex>"}],
}


def outcome_body(outcome: Outcome) -> dict[str, Any]:
    if outcome.status == "committed":
        return {
            "tx_id": outcome.tx_id,
            "status": "committed",
            "height": outcome.height,
            "log_index": outcome.log_index,
        }
    if outcome.status == "rejected":
        return {
            "tx_id": outcome.tx_id,
            "status": "rejected",
            "problem": problem_body(outcome.code or "internal_error", outcome.message or ""),
        }
    return {"tx_id": outcome.tx_id, "status": "pending"}


@router.post(
    "/transactions",
    status_code=202,
    summary="Submit one signed envelope, or an array of up to 1,000",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"oneOf": [{"type": "object"}, {"type": "array", "maxItems": 1000}]},
                    "example": ENVELOPE_EXAMPLE,
                }
            },
        }
    },
)
async def submit(
    request: Request,
    node: Annotated[Node, Depends(node_of)],
    settings: Annotated[Settings, Depends(settings_of)],
    wait: Annotated[Literal["commit"] | None, Query(description="Wait until committed.")] = None,
) -> JSONResponse:
    body = await request.body()
    value = decode(body)
    single = not isinstance(value, list)
    items = [value] if single else value
    if len(items) > settings.submission_envelopes_max:
        raise LedgerError(
            f"{len(items)} envelopes, at most {settings.submission_envelopes_max} at once",
            code="limit_exceeded",
        )
    limit = node.genesis.params.transaction_bytes_max
    parsed: list[Envelope | LedgerError] = []
    for item in items:
        try:
            parsed.append(parse_envelope(item, transaction_bytes_max=limit))
        except LedgerError as error:
            parsed.append(error)
    envelopes = [item for item in parsed if isinstance(item, Envelope)]
    outcomes = await run_in_threadpool(_admit, node, envelopes)
    if wait == "commit":
        pending = [o.tx_id for o in outcomes.values() if o.status == "pending"]
        if pending:
            waited = await run_in_threadpool(
                node.wait_for_commit, pending, settings.commit_wait_seconds
            )
            for result in waited:
                if result is not None:
                    outcomes[result.tx_id] = result
    answers: list[Outcome | LedgerError] = [
        outcomes[item.tx_id] if isinstance(item, Envelope) else item for item in parsed
    ]
    if single:
        answer = answers[0]
        if isinstance(answer, LedgerError):
            return problem(answer.code, answer.message)
        if answer.status == "rejected":
            return problem(answer.code or "internal_error", answer.message or "")
        status = 200 if answer.status == "committed" else 202
        return JSONResponse(outcome_body(answer), status_code=status)
    bodies = [
        {"status": "rejected", "problem": problem_body(a.code, a.message)}
        if isinstance(a, LedgerError)
        else outcome_body(a)
        for a in answers
    ]
    done = all(b["status"] in ("committed", "rejected") for b in bodies)
    return JSONResponse({"results": bodies}, status_code=200 if done else 202)


def _admit(node: Node, envelopes: list[Envelope]) -> dict[str, Outcome]:
    """Committed transactions answer their original outcome; the rest go to the pool."""
    outcomes: dict[str, Outcome] = {}
    fresh = []
    for envelope in envelopes:
        known = node.outcome(envelope.tx_id)
        if known is not None and known.status == "committed":
            outcomes[envelope.tx_id] = known
        else:
            fresh.append(envelope)
    for outcome in node.submit(fresh):
        outcomes[outcome.tx_id] = outcome
    return outcomes


@router.get("/transactions/{tx_id}", summary="A transaction: envelope, status, height, error")
def transaction(tx_id: TX_ID, node: Annotated[Node, Depends(node_of)]) -> JSONResponse:
    outcome = node.outcome(tx_id)
    if outcome is None:
        raise LedgerError(f"no transaction {tx_id} is known to this node", code="not_found")
    body = outcome_body(outcome)
    if outcome.status == "committed":
        _, _, envelope = node.reader().transaction_position(tx_id)
        body["transaction"] = envelope.to_json()
    return JSONResponse(body)
