"""The node's settings, each a named, documented limit (SPEC §7.2)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

BODY_BYTES_MAX = 4 * 1024 * 1024
SUBMISSION_ENVELOPES_MAX = 1000
LIST_LIMIT_MAX = 100
REQUEST_BODY_SECONDS = 30.0  # 4 MiB in 30 s is ~1.1 Mbit/s: slower than that is a stall


class Settings(BaseModel):
    """How a node runs; validated like any outside input."""

    data: Path = Field(description="The data directory (ledger.sqlite, genesis.json, keys).")
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port to listen on.")
    body_bytes_max: int = Field(
        default=BODY_BYTES_MAX, ge=1024, description="Largest request body."
    )
    submission_envelopes_max: int = Field(
        default=SUBMISSION_ENVELOPES_MAX, ge=1, description="Most envelopes in one submission."
    )
    request_body_seconds: float = Field(
        default=REQUEST_BODY_SECONDS,
        gt=0,
        le=300,
        description="How long a request body may take to arrive in full (408 after).",
    )
    commit_wait_seconds: float = Field(
        default=10.0,
        gt=0,
        le=30,
        description="How long ?wait=commit waits before answering pending.",
    )
