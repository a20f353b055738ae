"""RFC 9457 problem details: every error the API answers, through one table (SPEC §7.3).

A problem is `{"type", "title", "status", "detail", "code"}` served as
`application/problem+json`. `code` is the stable snake_case code of the ledger error (or of the
HTTP layer's own faults); `STATUS` maps each code to its HTTP status, and routes never choose a
status themselves. Input from outside never yields a 500: a code missing from the table is a
bug, answered as `internal_error` and logged.

`problem_responses(*codes)` declares, for one operation's OpenAPI, each status its codes can
answer with, plus `COMMON_CODES` (any operation can meet them), each status's schema narrowed
to its own codes and titles, with one example per code.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from typing import Any, Final

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api.media import PROBLEM_MEDIA_TYPE

# code -> (status, title)
STATUS: Final[dict[str, tuple[int, str]]] = {
    # Decoding and shape (SPEC §2.1, §7.2)
    "malformed_json": (400, "The body is not acceptable JSON"),
    "malformed_request": (400, "The request is not valid HTTP/1.1"),
    "invalid_field": (422, "A field is missing, unknown or invalid"),
    "limit_exceeded": (422, "A value is over its limit"),
    "payload_too_large": (413, "The request or a transaction is too large"),
    # Envelope rules (SPEC §3.1)
    "wrong_chain": (422, "The transaction is for another chain"),
    "bad_signature": (422, "A signature does not verify"),
    "unknown_key": (422, "A key is not in the signer's key set"),
    "insufficient_signatures": (422, "The signatures do not reach the threshold"),
    "bad_nonce": (409, "The nonce does not follow the signer's last one"),
    # Transaction rules (SPEC §3.3)
    "not_authorized": (403, "The signer may not do this"),
    "not_accredited": (403, "The signer holds no valid accreditation"),
    "methodology_not_in_scope": (403, "The methodology is outside the accreditation"),
    "unknown_methodology": (422, "No such methodology"),
    "double_issuance": (409, "This meter period is already credited"),
    "insufficient_credits": (409, "Not enough circulating credits"),
    "account_suspended": (403, "The account is suspended"),
    "account_not_suspended": (409, "The account is not suspended"),
    "unknown_account": (422, "No such account"),
    "unknown_batch": (422, "No such batch"),
    "unknown_program": (422, "No such programme"),
    "program_expired": (422, "The programme has ended"),
    "already_exists": (409, "It exists already"),
    "self_transfer": (422, "A transfer must go to another account"),
    # The node (SPEC §7.2)
    "mempool_full": (503, "The pending pool is full: try again later"),
    # Overload (docs/decisions/0005): refused before any work, with Retry-After
    "overloaded": (503, "The node is overloaded: try again later"),
    "too_many_requests": (429, "Too many submissions from this client at once: try again later"),
    "not_found": (404, "Not found"),
    "method_not_allowed": (405, "Method not allowed"),
    "not_acceptable": (406, "Not acceptable"),
    "unsupported_media_type": (415, "The body is not of the media type this operation takes"),
    "request_timeout": (408, "The request took too long"),
    "invalid_proof": (422, "A proof does not verify"),
    # The explorer's pages (issue 6): an address with a malformed id, parameter or cursor
    "bad_query": (400, "The address holds an invalid id or parameter"),
    # Consensus (SPEC §5.4, docs/decisions/0006)
    "malformed_message": (400, "A consensus message is not of its wire form"),
    "store_unavailable": (503, "The node's store cannot serve this safely"),
    # Followers (docs/decisions/0006): a submission forwarded to the nodes followed
    "upstream_unavailable": (503, "No node this follower follows could be reached"),
    "bad_upstream": (502, "The followed node answered badly"),
    "forward_loop": (508, "The nodes this follower follows lead back to it"),
    "internal_error": (500, "Internal error"),
}


DETAIL_CHARS_MAX: Final = 1000

# Codes any operation may answer: a body declared over the limit is refused before routing
# (BodyGuard), a node at its bound on connections or body bytes refuses before routing too
# (api.serving, api.admission), the store may refuse to serve, and a bug is reported as one
# rather than hidden.
COMMON_CODES: Final = ("payload_too_large", "overloaded", "store_unavailable", "internal_error")


class Problem(BaseModel):
    """An RFC 9457 problem, as every error of this API is served."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(
        pattern=r"^urn:tanlian:problem:[a-z_]+$", description="urn:tanlian:problem:<code>"
    )
    title: str = Field(description="The title of the code: the same for every problem of a code.")
    status: int = Field(ge=400, le=599, description="The HTTP status, from the one table.")
    detail: str = Field(max_length=DETAIL_CHARS_MAX, description="What failed, with its values.")
    code: str = Field(pattern=r"^[a-z_]+$", description="The stable snake_case code (SPEC §7.3).")


def problem(code: str, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    body = problem_body(code, detail)
    return JSONResponse(
        body,
        status_code=int(str(body["status"])),
        headers=headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def problem_body(code: str, detail: str) -> dict[str, object]:
    if code not in STATUS:  # a bug: every code the node can raise is in the table
        code = "internal_error"
    status, title = STATUS[code]
    return {
        "type": f"urn:tanlian:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail[:DETAIL_CHARS_MAX],
        "code": code,
    }


def problem_responses(*codes: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of an operation that can fail with `codes` (and COMMON_CODES)."""
    by_status: dict[int, set[str]] = {}
    for code in (*codes, *COMMON_CODES):
        by_status.setdefault(STATUS[code][0], set()).add(code)  # a code not in STATUS: a bug
    return {status: _response(status, sorted(group)) for status, group in sorted(by_status.items())}


@functools.cache
def _problem_schema() -> dict[str, Any]:
    """`Problem`'s JSON schema, made once: the routes' declarations ask for it some eighty
    times at import, and making it took ~0.5 ms each, 40 ms of every node's start."""
    return Problem.model_json_schema()


def _response(status: int, codes: list[str]) -> dict[str, Any]:
    schema = copy.deepcopy(_problem_schema())  # narrowed below, for this status only
    properties = schema["properties"]
    properties["type"] = {"enum": [f"urn:tanlian:problem:{code}" for code in codes]}
    properties["title"] = {"enum": sorted({STATUS[code][1] for code in codes})}
    properties["status"] = {"const": status}
    properties["code"] = {"enum": codes}
    return {
        "description": "; ".join(f"`{code}`: {STATUS[code][1]}" for code in codes),
        "content": {
            PROBLEM_MEDIA_TYPE: {
                "schema": schema,
                "examples": {
                    code: {"summary": STATUS[code][1], "value": problem_body(code, STATUS[code][1])}
                    for code in codes
                },
            }
        },
    }
