"""The node's settings, each a named, documented limit (SPEC §7.2).

The command line gives where a node runs (`data`, `host`, `port`); every other setting keeps
its default unless the environment sets it as `TANLIAN_<NAME>` (`TANLIAN_REQUEST_HEAD_SECONDS=2`),
validated like any outside input (`Settings.from_environment`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, model_validator

from ledger.native import PURE_PYTHON_ENV

BODY_BYTES_MAX = 4 * 1024 * 1024
SUBMISSION_ENVELOPES_MAX = 1000
LIST_LIMIT_MAX = 100
REQUEST_BODY_SECONDS = 30.0  # 4 MiB in 30 s is ~1.1 Mbit/s: slower than that is a stall
REQUEST_HEAD_SECONDS = 10.0  # a request line and headers are a few hundred bytes: ample
REQUEST_HEAD_BYTES_MAX = 16 * 1024  # h11's own bound on a request head
KEEP_ALIVE_SECONDS = 5  # uvicorn's default idle time between requests on one connection
CONNECTIONS_MAX = 4096  # open connections, and requests in flight (uvicorn counts both)
REQUEST_BODIES_BYTES_MAX = 64 * 1024 * 1024  # 16 bodies of the largest size at once
SUBMISSIONS_PARSING_MAX = 16  # small bodies parsed at once: enough to hide the trips to threads
SUBMISSION_QUEUE_MAX = 1024  # small bodies waiting for their turn, ~1 KB each
SUBMISSION_QUEUE_PER_CLIENT_MAX = 64  # of them from one address
LARGE_SUBMISSION_QUEUE_MAX = 8  # large bodies waiting for the intake workers, up to 4 MiB each
DISPLAY_UTC_OFFSET_MINUTES = 480  # China Standard Time (UTC+8), where Zibo's officials count
ENVIRONMENT_PREFIX = "TANLIAN_"
FROM_COMMAND_LINE = frozenset({"data", "host", "port"})
# Read elsewhere: the key's passphrase (api.console), the store's test faults (ledger.store)
# and the choice of the ledger's sources over its compiled build (ledger.native).
OTHER_VARIABLES = frozenset({"TANLIAN_PASSPHRASE", "TANLIAN_STORE_FAULT", PURE_PYTHON_ENV})


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
        ge=0.1,  # found by review: 1e-300 was taken, and refused every remote client
        le=300,
        description="How long a request body may take to arrive in full (408 after).",
    )
    commit_wait_seconds: float = Field(
        default=10.0,
        gt=0,
        le=30,
        description="How long ?wait=commit waits before answering pending.",
    )
    request_head_seconds: float = Field(
        default=REQUEST_HEAD_SECONDS,
        ge=0.1,
        le=300,
        description=(
            "How long a request line and headers may take to arrive in full, counted from the "
            "connection's opening (its first request) or from the first byte of the next "
            "request (keep-alive); 408 and closed after (slowloris)."
        ),
    )
    request_head_bytes_max: int = Field(
        default=REQUEST_HEAD_BYTES_MAX,
        ge=1024,
        le=1024 * 1024,
        description="Largest request line and headers (413 and closed over it).",
    )
    keep_alive_seconds: int = Field(
        default=KEEP_ALIVE_SECONDS,
        ge=1,
        le=300,
        description="How long a connection may stay idle between requests before it closes.",
    )
    connections_max: int = Field(
        default=CONNECTIONS_MAX,
        ge=1,
        le=100_000,
        description=(
            "Most open connections, and most requests in flight: a new connection beyond it "
            "closes the one waiting longest for its request head, and a request that finds "
            "no room is answered 503 (uvicorn's limit_concurrency)."
        ),
    )
    request_bodies_bytes_max: int = Field(
        default=REQUEST_BODIES_BYTES_MAX,
        ge=1024,
        description=(
            "Most request body bytes the node holds at once, over all requests: a body that "
            "would pass it is refused (503 overloaded, unread if its length is declared), so "
            "many large bodies sent at once cannot fill memory."
        ),
    )
    submissions_parsing_max: int = Field(
        default=SUBMISSIONS_PARSING_MAX,
        ge=1,
        le=64,
        description=(
            "Small submissions (below the intake workers' size) decoded and signature-checked "
            "at once; the others wait in a queue, served in turn from each client address."
        ),
    )
    submission_queue_max: int = Field(
        default=SUBMISSION_QUEUE_MAX,
        ge=1,
        description="Small submissions waiting for their turn, in all (503 overloaded beyond).",
    )
    submission_queue_per_client_max: int = Field(
        default=SUBMISSION_QUEUE_PER_CLIENT_MAX,
        ge=1,
        description=(
            "Submissions of one client address waiting for their turn, in each queue "
            "(429 too_many_requests beyond)."
        ),
    )
    large_submission_queue_max: int = Field(
        default=LARGE_SUBMISSION_QUEUE_MAX,
        ge=1,
        description=(
            "Large submissions (arrays parsed in the intake workers, one each at a time) waiting "
            "for their turn, in all (503 overloaded beyond)."
        ),
    )

    display_utc_offset_minutes: int = Field(
        default=DISPLAY_UTC_OFFSET_MINUTES,
        ge=-720,
        le=840,
        description=(
            "The explorer's time zone, in minutes east of UTC: its times and the dashboard's "
            "months (480: China Standard Time, Zibo's). The JSON API keeps unix ms and UTC."
        ),
    )
    programme_targets: Path | None = Field(
        default=None,
        description=(
            "A JSON file of programme targets for the dashboard (program_id -> "
            "{target_t_co2e, deadline, source}); default: programme-targets.json in the data "
            "directory when it exists. Not on the ledger: docs/decisions/0007-explorer.md."
        ),
    )

    @model_validator(mode="after")
    def _bodies_fit(self) -> Settings:
        """The node's hold on all bodies at once takes one of the largest (found by review: a
        smaller one was taken, and every body above it refused 503 for good)."""
        if self.request_bodies_bytes_max < self.body_bytes_max:
            raise ValueError(
                f"{ENVIRONMENT_PREFIX}REQUEST_BODIES_BYTES_MAX ({self.request_bodies_bytes_max})"
                f" is below {ENVIRONMENT_PREFIX}BODY_BYTES_MAX ({self.body_bytes_max}): no body"
                " above it could ever be taken"
            )
        return self

    @classmethod
    def from_environment(cls, environment: Mapping[str, str], **given: Any) -> Settings:
        """The settings `given` (the command line's), each other one from `environment`'s
        TANLIAN_<NAME> when set there; a bad value raises ValueError naming the variable."""
        values = dict(given)
        known = {ENVIRONMENT_PREFIX + name.upper() for name in cls.model_fields} | OTHER_VARIABLES
        for variable in sorted(environment):
            # A misspelt setting had been ignored without a word (found by review).
            if variable.startswith(ENVIRONMENT_PREFIX) and variable not in known:
                settings = ", ".join(
                    ENVIRONMENT_PREFIX + name.upper()
                    for name in cls.model_fields
                    if name not in FROM_COMMAND_LINE
                )
                raise ValueError(f"{variable}: not a setting of this node (they are {settings})")
        for name in cls.model_fields:
            variable = ENVIRONMENT_PREFIX + name.upper()
            if name not in FROM_COMMAND_LINE and name not in given and variable in environment:
                values[name] = environment[variable]
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            first = error.errors()[0]
            if not first["loc"]:  # between settings: the message names them
                raise ValueError(str(first["msg"]).removeprefix("Value error, ")) from None
            name = str(first["loc"][0])
            where = ENVIRONMENT_PREFIX + name.upper() if name not in given else name
            raise ValueError(f"{where}: {first['msg']}") from None
