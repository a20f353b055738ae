"""POST /v1/transactions and GET /v1/transactions/{tx_id} (SPEC §7.1)."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.node import Node
from api.problems import Problem, problem, problem_body, problem_responses
from api.routes import (
    EXAMPLE_ACCOUNT,
    EXAMPLE_PUBLIC_KEY,
    EXAMPLE_SIGNATURE,
    EXAMPLE_TX_ID,
    example,
    node_of,
    settings_of,
)
from api.settings import SUBMISSION_ENVELOPES_MAX, Settings
from consensus.producer import Outcome
from ledger.encoding import decode
from ledger.errors import RULE_CODES, LedgerError
from ledger.limits import JSON_INTEGER_MAX, TRANSACTION_SIGNATURES_MAX
from ledger.transactions import TRANSACTION_TYPES, Envelope, parse_envelope

router = APIRouter(prefix="/v1", tags=["transactions"])

HEX64: Final = r"^[0-9a-f]{64}$"
TX_ID = Annotated[
    str,
    Path(
        pattern=HEX64,
        description="A transaction id (hex).",
        openapi_examples=example(EXAMPLE_TX_ID, "A transaction id"),
    ),
]

# The envelope's shape (SPEC §3.1); each payload's fields are checked by its type (§3.2), and a
# valid shape may still be refused by a rule JSON Schema cannot state (signatures, state).
ENVELOPE_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["tx", "signatures"],
    "additionalProperties": False,
    "properties": {
        "tx": {
            "type": "object",
            "required": ["chain_id", "type", "signer", "nonce", "payload"],
            "additionalProperties": False,
            "properties": {
                "chain_id": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
                "type": {"enum": list(TRANSACTION_TYPES)},
                "signer": {"type": "string", "pattern": HEX64},
                "nonce": {"type": "integer", "minimum": 1, "maximum": JSON_INTEGER_MAX},
                "payload": {"type": "object", "description": "The fields of `type` (SPEC §3.2)."},
            },
        },
        "signatures": {
            "type": "array",
            "maxItems": TRANSACTION_SIGNATURES_MAX,
            "description": "Sorted by public_key, one per key.",
            "items": {
                "type": "object",
                "required": ["public_key", "signature"],
                "additionalProperties": False,
                "properties": {
                    "public_key": {"type": "string", "pattern": HEX64},
                    "signature": {"type": "string", "pattern": r"^[0-9a-f]{128}$"},
                },
            },
        },
    },
}
ENVELOPE_EXAMPLE: Final[dict[str, Any]] = {
    "tx": {
        "chain_id": "zibo-demo",
        "type": "retire",
        "signer": EXAMPLE_ACCOUNT,
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
    "signatures": [{"public_key": EXAMPLE_PUBLIC_KEY, "signature": EXAMPLE_SIGNATURE}],
}

_PROBLEM_SCHEMA: Final = Problem.model_json_schema()
_COMMITTED: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["tx_id", "status", "height", "log_index"],
    "additionalProperties": False,
    "properties": {
        "tx_id": {"type": "string", "pattern": HEX64},
        "status": {"const": "committed"},
        "height": {"type": "integer", "minimum": 1},
        "log_index": {"type": "integer", "minimum": 0},
    },
}
_PENDING: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["tx_id", "status"],
    "additionalProperties": False,
    "properties": {
        "tx_id": {"type": "string", "pattern": HEX64},
        "status": {"const": "pending"},
    },
}
_REJECTED: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["status", "problem"],
    "additionalProperties": False,
    "properties": {
        "tx_id": {"type": "string", "pattern": HEX64, "description": "Absent if unparsable."},
        "status": {"const": "rejected"},
        "problem": _PROBLEM_SCHEMA,
    },
}
_RESULTS: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["results"],
    "additionalProperties": False,
    "properties": {
        "results": {
            "type": "array",
            "maxItems": SUBMISSION_ENVELOPES_MAX,
            "items": {"oneOf": [_COMMITTED, _PENDING, _REJECTED]},
        }
    },
}
_KNOWN: Final[dict[str, Any]] = {
    "oneOf": [
        {
            **_COMMITTED,
            "required": [*_COMMITTED["required"], "transaction"],
            "properties": {**_COMMITTED["properties"], "transaction": ENVELOPE_SCHEMA},
        },
        _PENDING,
        {**_REJECTED, "required": ["tx_id", "status", "problem"]},
    ]
}
SUBMIT_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "description": "Committed (an array: every envelope committed or rejected)",
        "content": {"application/json": {"schema": {"oneOf": [_COMMITTED, _RESULTS]}}},
    },
    202: {
        "description": "Pending (an array: some envelope still pending)",
        "content": {"application/json": {"schema": {"oneOf": [_PENDING, _RESULTS]}}},
    },
    **problem_responses(
        "malformed_json", "request_timeout", "mempool_full", "limit_exceeded", *RULE_CODES
    ),
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
    responses=SUBMIT_RESPONSES,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            ENVELOPE_SCHEMA,
                            {
                                "type": "array",
                                "maxItems": SUBMISSION_ENVELOPES_MAX,
                                # each item is answered on its own in `results`: a malformed
                                # one as rejected, beside the others
                                "items": {"description": "An envelope, as the single form."},
                            },
                        ]
                    },
                    "examples": {
                        "one": {"summary": "One envelope", "value": ENVELOPE_EXAMPLE},
                        "array": {"summary": "An array of envelopes", "value": [ENVELOPE_EXAMPLE]},
                    },
                }
            },
        }
    },
)
async def submit(
    request: Request,
    node: Annotated[Node, Depends(node_of)],
    settings: Annotated[Settings, Depends(settings_of)],
    wait: Annotated[
        Literal["commit"] | None,
        Query(
            description="Wait (bounded) until committed.",
            openapi_examples=example("commit", "Answer once committed"),
        ),
    ] = None,
) -> JSONResponse:
    body = await request.body()
    # Decoding and parsing up to 1,000 envelopes is CPU work: off the event loop.
    single, parsed = await run_in_threadpool(
        _parse_submission,
        body,
        envelopes_max=settings.submission_envelopes_max,
        transaction_bytes_max=node.genesis.params.transaction_bytes_max,
    )
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


def _parse_submission(
    body: bytes, *, envelopes_max: int, transaction_bytes_max: int
) -> tuple[bool, list[Envelope | LedgerError]]:
    """Whether one envelope came (or an array), and each item parsed or its error."""
    value = decode(body)
    single = not isinstance(value, list)
    items = [value] if single else value
    if len(items) > envelopes_max:
        raise LedgerError(
            f"{len(items)} envelopes, at most {envelopes_max} at once", code="limit_exceeded"
        )
    parsed: list[Envelope | LedgerError] = []
    for item in items:
        try:
            parsed.append(parse_envelope(item, transaction_bytes_max=transaction_bytes_max))
        except LedgerError as error:
            parsed.append(error)
    return single, parsed


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


@router.get(
    "/transactions/{tx_id}",
    summary="A transaction: envelope, status, height, error",
    responses={
        200: {"content": {"application/json": {"schema": _KNOWN}}},
        **problem_responses("not_found", "invalid_field"),
    },
)
def transaction(tx_id: TX_ID, node: Annotated[Node, Depends(node_of)]) -> JSONResponse:
    outcome = node.outcome(tx_id)
    if outcome is None:
        raise LedgerError(f"no transaction {tx_id} is known to this node", code="not_found")
    body = outcome_body(outcome)
    if outcome.status == "committed":
        _, _, envelope = node.reader().transaction_position(tx_id)
        body["transaction"] = envelope.to_json()
    return JSONResponse(body)
