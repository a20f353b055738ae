"""Validators' consensus messages (SPEC §7.1 `POST /v1/consensus/messages`, §5.4).

The body is an NDJSON batch, one signed message or transaction per line (docs/decisions/0006:
messages travel unwrapped, so no JSON wrapper can hold them; blocks travel by reference after
their transactions, `consensus.relay`). The node's inbox parses it strictly
(`consensus.relay.decode_batch`: one bad line refuses the batch, naming the line); it trusts
nothing about the connection: transactions are admitted to the pool like any submission
(signatures checked), and the replica verifies every vote, proposal and certificate against
the validator set, and drops what fails. A node that runs no consensus (a single validator, or a
follower) answers `not_found`.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from api import schemas
from api.node import Node
from api.problems import problem_responses
from api.routes import body_of, node_of
from consensus.transport import MESSAGES_PATH, NDJSON
from ledger.errors import LedgerError
from ledger.limits import CONSENSUS_MESSAGES_BATCH_MAX

router = APIRouter(tags=["consensus"])

_VOTE_EXAMPLE: Final = (
    '{"block_hash":null,"chain_id":"example-chain","height":1,"public_key":"'
    + schemas.EXAMPLE_PUBLIC_KEY
    + '","round":0,"signature":"'
    + schemas.EXAMPLE_SIGNATURE
    + '","type":"prevote"}\n'
)


@router.post(
    MESSAGES_PATH,
    status_code=202,
    summary=f"Validators only: a batch of up to {CONSENSUS_MESSAGES_BATCH_MAX} signed messages",
    response_model=schemas.ConsensusAccepted,
    responses=problem_responses(
        "malformed_message", "limit_exceeded", "not_found", "unsupported_media_type"
    ),
    dependencies=[Depends(body_of(NDJSON))],
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": (
                "NDJSON: one vote, proposal, decision (whole or by reference) or transaction"
                " envelope per line (canonical JSON)."
            ),
            "content": {
                NDJSON: {
                    "schema": {"type": "string"},
                    "examples": {"prevote": {"summary": "A nil prevote", "value": _VOTE_EXAMPLE}},
                }
            },
        }
    },
)
async def post_messages(
    request: Request, node: Annotated[Node, Depends(node_of)]
) -> dict[str, Any]:
    inbox = node.consensus_inbox
    if inbox is None:
        raise LedgerError("this node runs no consensus: it takes no messages", code="not_found")
    body = await request.body()
    # Strict decoding of up to 1,000 lines, and admitting transactions, is CPU work and waits
    # for the signature worker: off the loop.
    accepted = await run_in_threadpool(inbox, body)
    return {"accepted": accepted}
