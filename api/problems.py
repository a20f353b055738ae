"""RFC 9457 problem details: every error the API answers, through one table (SPEC §7.3).

A problem is `{"type", "title", "status", "detail", "code"}` served as
`application/problem+json`. `code` is the stable snake_case code of the ledger error (or of the
HTTP layer's own faults); `STATUS` maps each code to its HTTP status, and routes never choose a
status themselves. Input from outside never yields a 500: a code missing from the table is a
bug, answered as `internal_error` and logged.
"""

from __future__ import annotations

from typing import Final

from fastapi.responses import JSONResponse

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"

# code -> (status, title)
STATUS: Final[dict[str, tuple[int, str]]] = {
    # Decoding and shape (SPEC §2.1, §7.2)
    "malformed_json": (400, "The body is not acceptable JSON"),
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
    "not_found": (404, "Not found"),
    "method_not_allowed": (405, "Method not allowed"),
    "not_acceptable": (406, "Not acceptable"),
    "unsupported_media_type": (415, "The body must be application/json"),
    "request_timeout": (408, "The request took too long"),
    "invalid_proof": (422, "A proof does not verify"),
    "store_unavailable": (503, "The node's store cannot serve this safely"),
    "internal_error": (500, "Internal error"),
}


def problem(code: str, detail: str) -> JSONResponse:
    body = problem_body(code, detail)
    return JSONResponse(body, status_code=int(str(body["status"])), media_type=PROBLEM_MEDIA_TYPE)


def problem_body(code: str, detail: str) -> dict[str, object]:
    if code not in STATUS:  # a bug: every code the node can raise is in the table
        code = "internal_error"
    status, title = STATUS[code]
    return {
        "type": f"urn:tanlian:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail[:1000],
        "code": code,
    }
