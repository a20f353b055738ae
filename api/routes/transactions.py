"""POST /v1/transactions and GET /v1/transactions/{tx_id} (SPEC §7.1).

A follower forwards a submission, as it came, to the nodes it follows and answers what the
first that answers decided (`api.follow.Forwarder`, docs/decisions/0006).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api import schemas
from api.admission import RETRY_AFTER_SECONDS, Admission, Refused
from api.follow import FORWARDED_HEADER, committed_here, status_of, submitted_ids
from api.intake import Submission
from api.node import Node
from api.problems import problem, problem_body, problem_responses
from api.routes import admission_of, body_of, example, node_of, settings_of
from api.schemas import EXAMPLE_TX_ID
from api.settings import SUBMISSION_ENVELOPES_MAX, Settings
from consensus.producer import Outcome
from ledger.errors import RULE_CODES, LedgerError
from ledger.transactions import Envelope

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


def _ref(model: type[BaseModel]) -> dict[str, str]:
    """A reference to a model among the OpenAPI components (every answer model is one)."""
    return {"$ref": f"#/components/schemas/{model.__name__}"}


SUBMIT_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "description": "Committed (an array: every envelope committed or rejected)",
        "model": schemas.Committed | schemas.Results,
    },
    202: {
        "description": "Pending (an array: some envelope still pending)",
        "model": schemas.Pending | schemas.Results,
    },
    **problem_responses(
        "malformed_json",
        "unsupported_media_type",
        "request_timeout",
        "mempool_full",
        "too_many_requests",
        "limit_exceeded",
        "upstream_unavailable",
        "bad_upstream",
        "forward_loop",
        *RULE_CODES,
    ),
}
REQUEST_EXAMPLES: Final = {
    **{
        kind: {"summary": f"One {kind} envelope", "value": envelope}
        for kind, envelope in schemas.ENVELOPE_EXAMPLES.items()
    },
    "array": {
        "summary": "An array of envelopes, each answered on its own",
        "value": [schemas.ENVELOPE_EXAMPLES["transfer"], schemas.ENVELOPE_EXAMPLES["retire"]],
    },
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
    description=(
        "A validator admits the envelopes to its pool. A follower (`tanlian node --follow`) "
        "forwards the body as it came to the nodes it follows and answers with the first "
        "answer it can relay: that node's outcome or problem; `upstream_unavailable` when "
        "none can be reached, `bad_upstream` when one answered badly, `forward_loop` when "
        "they lead back to this follower (it follows itself, or followers follow each other)."
    ),
    responses=SUBMIT_RESPONSES,
    dependencies=[Depends(body_of("application/json"))],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            _ref(schemas.Envelope),
                            {
                                "type": "array",
                                "maxItems": SUBMISSION_ENVELOPES_MAX,
                                # each item is answered on its own in `results`, a malformed
                                # one as rejected beside the others: the array itself is valid
                                "items": {
                                    "description": "An `Envelope`, answered on its own: one "
                                    "that is not is rejected in `results`, not the array."
                                },
                            },
                        ]
                    },
                    "examples": REQUEST_EXAMPLES,
                }
            },
        }
    },
)
async def submit(
    request: Request,
    node: Annotated[Node, Depends(node_of)],
    settings: Annotated[Settings, Depends(settings_of)],
    admission: Annotated[Admission, Depends(admission_of)],
    wait: Annotated[
        Literal["commit"] | None,
        Query(
            description="Wait (bounded) until committed.",
            openapi_examples=example("commit", "Answer once committed"),
        ),
    ] = None,
) -> JSONResponse:
    body = await request.body()
    client = request.client.host if request.client is not None else ""
    if node.forwarder is not None:  # a follower: the nodes it follows decide
        via = request.headers.get(FORWARDED_HEADER, "")
        return await _forward(
            node, settings, admission, body, client, wait=wait == "commit", request_via=via
        )
    try:
        # Parsing costs CPU per envelope, good signatures or not: each client's submissions
        # wait their turn (api.admission), and a full queue is answered at once.
        async with admission.queue_for(len(body)).turn(client):
            # Decoding, parsing and checking up to 1,000 envelopes is CPU work: off the event
            # loop, and for a large body in one of the node's intake worker processes (api.intake);
            # then the pool. One trip to a thread for both: on a busy node each trip waits
            # for the GIL.
            submission, outcomes, broken = await run_in_threadpool(
                _parse_and_admit, node, body, settings.submission_envelopes_max
            )
    except Refused as refused:
        return problem(refused.code, refused.detail, {"retry-after": str(RETRY_AFTER_SECONDS)})
    if wait == "commit":
        pending = [o.tx_id for o in outcomes.values() if o.status == "pending"]
        if pending:
            waited = await node.wait_for_commit_async(pending, settings.commit_wait_seconds)
            for result in waited:
                if result is not None:
                    outcomes[result.tx_id] = result
    answers: list[Outcome | LedgerError] = [
        item if isinstance(item, LedgerError) else broken.get(item.leaf) or outcomes[item.tx_id]
        for item in submission.items
    ]
    if submission.single:
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
    return JSONResponse({"results": bodies}, status_code=status_of(bodies))


async def _forward(
    node: Node,
    settings: Settings,
    admission: Admission,
    body: bytes,
    client: str,
    *,
    wait: bool,
    request_via: str,
) -> JSONResponse:
    """A follower's submission (api.follow): its ids read in the client's parsing turn,
    then forwarded in a forwarding turn of its own (`Node.forwards`), and answered as this
    follower can vouch for it; with `wait`, a commit claimed that its store has not synced
    yet is waited for there, within what is left of the one commit wait the request has."""
    forwarder = node.forwarder
    assert forwarder is not None
    try:  # before any turn: a loop's own request must not wait behind the one it came from
        via = forwarder.route(request_via)
    except LedgerError as error:
        return problem(error.code, error.message)
    limit = node.genesis.params.transaction_bytes_max
    wait_until = time.monotonic() + settings.commit_wait_seconds
    try:
        async with admission.queue_for(len(body)).turn(client):
            ids = await run_in_threadpool(lambda: submitted_ids(body, transaction_bytes_max=limit))
    except Refused as refused:
        return problem(refused.code, refused.detail, {"retry-after": str(RETRY_AFTER_SECONDS)})
    turn = node.forwards.take(client)
    if turn is not None:
        return problem(turn.code, turn.detail, {"retry-after": str(RETRY_AFTER_SECONDS)})
    try:
        status, answer, unsynced = await run_in_threadpool(
            lambda: forwarder.submit(body, wait=wait, ids=ids, own=node.outcome, via=via)
        )
    finally:
        node.forwards.give_back(client)
    left = wait_until - time.monotonic()
    if wait and unsynced and left > 0:
        await node.wait_for_commit_async(unsynced, left)
        results = answer.get("results", [answer])
        for result in results:
            if result.get("tx_id") in unsynced:
                result.update(committed_here(node.outcome, result["tx_id"]) or {})
        status = status_of(results)
    return JSONResponse(answer, status_code=status)


def _parse_and_admit(
    node: Node, body: bytes, envelopes_max: int
) -> tuple[Submission, dict[str, Outcome], dict[bytes, Outcome]]:
    submission = node.intake.parse(
        body,
        envelopes_max=envelopes_max,
        transaction_bytes_max=node.genesis.params.transaction_bytes_max,
    )
    return submission, *_admit(node, submission)


def in_nonce_order(envelopes: list[Envelope]) -> list[Envelope]:
    """Each signer's transactions in nonce order, in the places its transactions held: a
    transaction signed by the keys a set_keys of the same array brings is admitted after it
    (consensus.pool), and the order between signers, which a block keeps and on which one
    signer's transaction may depend (an accreditation, then an issuance), is the array's."""
    by_signer: dict[str, list[Envelope]] = {}
    for envelope in envelopes:
        by_signer.setdefault(envelope.tx.signer, []).append(envelope)
    queues = {
        signer: iter(sorted(own, key=lambda envelope: envelope.tx.nonce))
        for signer, own in by_signer.items()
    }
    return [next(queues[envelope.tx.signer]) for envelope in envelopes]


def _admit(node: Node, submission: Submission) -> tuple[dict[str, Outcome], dict[bytes, Outcome]]:
    """The outcomes by transaction id, and the refusals of broken copies by envelope leaf.
    Committed transactions answer their original outcome. An envelope whose signature
    failed is answered so without the pool (an id names the transaction alone: a broken copy
    says nothing of what became of it, and a flood of them must not push other outcomes out
    of the producer's memory), and a good copy beside it still goes to the pool, as do the
    rest. For the same reason the producer does not remember the refusal of a copy whose
    listed keys do not authorize it (`consensus.producer.refusal`)."""
    outcomes: dict[str, Outcome] = {}
    refused: dict[bytes, Outcome] = {}
    fresh = []
    for envelope in submission.envelopes:
        known = node.outcome(envelope.tx_id)
        failure = submission.signature_errors.get(envelope.leaf)
        if known is not None and known.status == "committed":
            outcomes[envelope.tx_id] = known
        elif failure is not None:
            refused[envelope.leaf] = Outcome(
                tx_id=envelope.tx_id, status="rejected", code=failure.code, message=failure.message
            )
        else:
            fresh.append(envelope)
    fresh = in_nonce_order(fresh)
    for outcome in node.submit(fresh, submission.signature_checks(fresh)):
        outcomes[outcome.tx_id] = outcome
    return outcomes, refused


@router.get(
    "/transactions/{tx_id}",
    summary="A transaction: envelope, status, height, error",
    response_model=schemas.TransactionStatus,
    response_model_exclude_unset=True,
    responses=problem_responses("not_found", "invalid_field"),
)
def transaction(tx_id: TX_ID, node: Annotated[Node, Depends(node_of)]) -> dict[str, Any]:
    outcome = node.outcome(tx_id)
    if outcome is None:
        raise LedgerError(f"no transaction {tx_id} is known to this node", code="not_found")
    body = outcome_body(outcome)
    if outcome.status == "committed":
        _, _, envelope = node.reader().transaction_position(tx_id)
        body["transaction"] = envelope.to_json()
    return body
