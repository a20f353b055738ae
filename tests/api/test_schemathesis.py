"""Schemathesis against the live /openapi.json of an in-process node (issue 4).

One node serves the module: a fresh chain, funded, with retirements committed through the API.
Every operation of the schema is tested (nothing is excluded, /metrics included: its text is
declared as such), in schemathesis's examples, coverage and fuzzing phases, positive and
negative, then in stateful workflows across operations, with every built-in check: no 5xx,
status codes, content types, headers and bodies as declared, schema-valid data accepted and
schema-invalid data refused, undeclared methods answered 405 with `Allow`. Examples are bounded
by the hypothesis profile (tests/conftest.py: `dev` locally, `ci` in CI).

The schema is the app's own /openapi.json (the node serves exactly the document loaded here:
`test_the_node_serves_the_schema_tested`), with one change: the examples of the id parameters
(account, transaction, retirement, certifier) and of the request body are replaced by this
chain's ids and a signed envelope, so the examples phase reaches stored data and a commit, not
only 404s and rejections. The factory's keys are derived from names, so the chain's ids are
known when the module is collected, before the node runs.

Three refusals of schema-valid data are expected, because JSON Schema cannot state their rule:
a submitted envelope (signatures, nonces, the chain's state, integer-only JSON), a list cursor
(opaque: valid only if this node gave it out), and a range of heights whose `to_height` is
below its `from_height` (a consistency proof, an export). Those operations accept the refusal
statuses in positive_data_acceptance, and `refusals_are_explained` checks that a refusal of
schema-valid data is one of those reasons and nothing else.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import anyio
import httpx
import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from schemathesis import Case
from schemathesis.checks import CheckContext
from schemathesis.config import PositiveDataAcceptanceConfig, SchemathesisConfig
from schemathesis.config._checks import NegativeDataRejectionConfig
from schemathesis.core.transport import Response
from schemathesis.transport import SerializationContext

from api.app import create_app
from api.media import PROBLEM_MEDIA_TYPE
from api.node import Node
from api.settings import Settings
from ledger.store import Store
from ledger.transactions import Envelope
from tests.factory import Chain

SUBMIT: Final = "POST /v1/transactions"
CURSOR_OPERATIONS: Final = (
    "GET /v1/accounts/{account_id}/transactions",
    "GET /v1/batches",
    "GET /v1/retirements",
    "GET /v1/blocks",
)
BAD_CURSOR: Final = "cursor is not one this node gave out"
RANGE_OPERATIONS: Final = ("GET /v1/proofs/consistency", "GET /v1/export")
REVERSED_RANGE: Final = "to_height is below from_height"
# schemathesis's default for positive_data_acceptance, extended below by the refusals explained
ACCEPTED: Final = list(PositiveDataAcceptanceConfig().expected_statuses)
REJECTED: Final = list(NegativeDataRejectionConfig().expected_statuses)
CONFIG: Final = SchemathesisConfig.from_dict(
    {
        "operations": [
            {
                # 400 malformed_json (a float in a free-form payload), 413 (a transaction
                # over transaction_bytes_max), 422 (a rule: signature, chain, payload fields)
                "include-name": SUBMIT,
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": [*ACCEPTED, "400", "413", "422"]
                    },
                    # schema-invalid data is refused; a body over the size limit (an array of
                    # 1,001 recipients, say) is refused first, as too large
                    "negative_data_rejection": {"expected-statuses": [*REJECTED, "413"]},
                },
            },
            *(
                {
                    # 422 invalid_field for a cursor this node did not give out
                    "include-name": name,
                    "checks": {
                        "positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "422"]}
                    },
                }
                for name in CURSOR_OPERATIONS
            ),
            *(
                {
                    # 422 invalid_field for a to_height below from_height
                    "include-name": name,
                    "checks": {
                        "positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "422"]}
                    },
                }
                for name in RANGE_OPERATIONS
            ),
        ]
    }
)
OpenAPICase = Case[Any]


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx: SerializationContext, value: Any) -> bytes:
    """Consensus batches (POST /v1/consensus/messages) are NDJSON text, sent as it is."""
    return value.encode() if isinstance(value, str) else str(value).encode()


# Stateful scenarios cost ~10 calls each: at most 50 (the `dev` profile's count) of 8 steps keep
# the module within a few minutes under coverage; links here are 2-3 calls deep.
SCENARIOS_MAX: Final = 50
STEPS_MAX: Final = 8
BENEFICIARY: Final = "Household 560fbf3d, Zhangdian"  # the app's example beneficiary


@dataclass(frozen=True, slots=True)
class Plan:
    """What the node is given before schemathesis runs, and the envelope the examples submit."""

    chain: Chain
    setup: list[Envelope]
    retirements: list[str]
    fresh: Envelope  # signed and valid, not submitted by the set-up: the body's example

    @classmethod
    def build(cls) -> Plan:
        chain = Chain()
        funding = [
            chain.accredit(),
            chain.create_program(),
            chain.issue([(chain.alice, 1000), (chain.bob, 500)]),
        ]
        retires = [
            chain.tx(holder, "retire", {"batch_id": "B-1", **payload})
            for holder, payload in (
                (
                    chain.alice,
                    {"quantity": 40, "beneficiary": BENEFICIARY, "purpose": "compliance"},
                ),
                (chain.alice, {"quantity": 5, "beneficiary": "Alice", "purpose": "voluntary"}),
                (
                    chain.bob,
                    {
                        "quantity": 7,
                        "beneficiary": BENEFICIARY,
                        "purpose": "incentive",
                        "program_id": "zibo-green-home",
                        "jurisdiction": "CN-SD",
                    },
                ),
            )
        ]
        fresh = chain.tx(
            chain.bob,
            "retire",
            {"batch_id": "B-1", "quantity": 3, "beneficiary": BENEFICIARY, "purpose": "voluntary"},
        )
        return cls(
            chain=chain,
            setup=funding + retires,
            retirements=[envelope.tx_id for envelope in retires],
            fresh=fresh,
        )


def with_chain_examples(spec: dict[str, Any], plan: Plan) -> tuple[dict[str, Any], set[str]]:
    """`spec` with the plan's ids as the id parameters' examples and its fresh envelope as the
    body's; also the names of what was replaced."""
    real = {
        "account_id": plan.chain.alice.account_id,
        "certifier": plan.chain.certifier.account_id,
        "tx_id": plan.retirements[0],
        "retirement_id": plan.retirements[0],
    }
    patched = copy.deepcopy(spec)
    replaced: set[str] = set()
    for operations in patched["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] in real:
                    for named in parameter["examples"].values():
                        named["value"] = real[parameter["name"]]
                    replaced.add(parameter["name"])
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None:
                body["examples"]["retire"]["value"] = plan.fresh.to_json()
                body["examples"]["array"]["value"] = [plan.fresh.to_json()]
                replaced.add("requestBody")
    return patched, replaced


def served_openapi(app: FastAPI) -> dict[str, Any]:
    async def fetch() -> dict[str, Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            response = await client.get("/openapi.json")
        assert response.status_code == 200, response.text
        spec: dict[str, Any] = response.json()
        return spec

    return anyio.run(fetch)


PLAN: Final = Plan.build()
# The document does not depend on the node's state: an app on no node serves the same one.
SPEC: Final = served_openapi(
    create_app(cast(Node, None), Settings(data=Path("unused")), manage_node=False)
)
PATCHED, REPLACED = with_chain_examples(SPEC, PLAN)
schema = schemathesis.openapi.from_dict(PATCHED, config=CONFIG)


@dataclass(frozen=True, slots=True)
class Ledger:
    node: Node
    app: FastAPI


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    """A node on PLAN's chain, its set-up committed through the API."""
    data: Path = tmp_path_factory.mktemp("node")
    Store.create(data, PLAN.chain.genesis_document).close()
    node = Node(data, PLAN.chain.validator)
    node.start()
    try:
        app = create_app(node, Settings(data=data, body_bytes_max=64 * 1024), manage_node=False)

        async def commit_setup() -> None:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
                for envelope in PLAN.setup:
                    response = await client.post(
                        "/v1/transactions?wait=commit", json=envelope.to_json()
                    )
                    assert response.status_code == 200, response.text
                    assert response.json()["status"] == "committed", response.text

        anyio.run(commit_setup)
        yield Ledger(node=node, app=app)
    finally:
        node.stop()


def refusals_are_explained(ctx: CheckContext, response: Response, case: OpenAPICase) -> bool | None:
    """Schema-valid data is refused only for a rule JSON Schema cannot state (module doc)."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    if response.status_code not in (400, 413, 422):
        return None  # positive_data_acceptance judges every other status
    assert response.headers.get("content-type", [""])[0].startswith(PROBLEM_MEDIA_TYPE)
    problem = response.json()
    if case.operation.label == SUBMIT:
        return None
    if case.operation.label in RANGE_OPERATIONS:
        query = case.query or {}
        assert int(query["to_height"]) < int(query["from_height"]), problem
        assert problem["code"] == "invalid_field", problem
        assert problem["detail"].endswith(REVERSED_RANGE), problem
        return None
    assert case.operation.label in CURSOR_OPERATIONS, problem
    assert case.query is not None and "cursor" in case.query, problem
    assert problem["code"] == "invalid_field" and problem["detail"] == BAD_CURSOR, problem
    return None


def test_the_node_serves_the_schema_tested(ledger: Ledger) -> None:
    assert served_openapi(ledger.app) == SPEC
    assert {"account_id", "certifier", "tx_id", "retirement_id", "requestBody"} == REPLACED


@schema.parametrize()
def test_every_operation_conforms_to_its_openapi(case: OpenAPICase, ledger: Ledger) -> None:
    case.call_and_validate(app=ledger.app, additional_checks=[refusals_are_explained])


def test_workflows_across_operations(ledger: Ledger) -> None:
    """Stateful: schemathesis links operations by the values their answers carry (a submitted
    tx_id to its transaction, a listed retirement to its record) and checks every step."""

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: OpenAPICase) -> dict[str, Any]:
            return {"app": ledger.app}

        def validate_response(
            self,
            response: Response,
            case: OpenAPICase,
            additional_checks: list[Any] | None = None,
            **kwargs: Any,
        ) -> None:
            checks = [*(additional_checks or []), refusals_are_explained]
            super().validate_response(response, case, additional_checks=checks, **kwargs)

    scenarios = min(hypothesis.settings().max_examples, SCENARIOS_MAX)  # the profile's
    Workflow.run(
        settings=hypothesis.settings(
            max_examples=scenarios, deadline=None, stateful_step_count=STEPS_MAX
        )
    )


def test_the_examples_reached_the_chain(ledger: Ledger) -> None:
    """Runs after the operations: the body example, a real envelope, was committed."""
    outcome = ledger.node.outcome(PLAN.fresh.tx_id)
    assert outcome is not None and outcome.status == "committed", outcome
