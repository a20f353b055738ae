"""The HTTP API in process, through httpx.ASGITransport, on a real node and store."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api import reads
from api.app import create_app
from api.cursors import encode_cursor
from api.media import PROBLEM_MEDIA_TYPE
from api.node import EXPORTS_AT_ONCE_MAX, EXPORTS_PER_CLIENT_MAX, Node
from api.problems import STATUS
from api.routes.transactions import in_nonce_order
from api.settings import Settings
from ledger.blocks import compute_validators_hash
from ledger.encoding import canonical
from ledger.errors import RULE_CODES, LedgerError
from ledger.evidence import make_evidence, sign_vote
from ledger.merkle import leaf_hash, verify_consistency, verify_inclusion
from ledger.state_tree import verify_state_proof
from ledger.store import Store
from ledger.verification import audit_chain, verify_receipt
from tests.api.test_explorer import serving
from tests.factory import Chain, key

pytestmark = pytest.mark.anyio


class Live:
    def __init__(self, chain: Chain, node: Node, client: httpx.AsyncClient) -> None:
        self.chain = chain
        self.node = node
        self.client = client


@pytest.fixture
async def live(node: tuple[Chain, Node], tmp_path: Path) -> AsyncIterator[Live]:
    chain, running = node
    app = create_app(running, Settings(data=tmp_path, body_bytes_max=64 * 1024), manage_node=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        yield Live(chain, running, client)


async def post(live: Live, body: Any, wait: bool = True) -> httpx.Response:
    return await live.client.post(
        "/v1/transactions" + ("?wait=commit" if wait else ""),
        content=json.dumps(body),
        headers={"content-type": "application/json"},
    )


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    body: dict[str, Any] = response.json()
    assert body["code"] == code and body["status"] == status, body
    assert set(body) == {"type", "title", "status", "detail", "code"}
    return body


async def funded(live: Live) -> None:
    chain = live.chain
    for envelope in (
        chain.accredit(),
        chain.create_program(),
        chain.issue([(chain.alice, 1000), (chain.bob, 500)]),
    ):
        response = await post(live, envelope.to_json())
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "committed"


def test_every_rule_code_has_a_status_that_is_not_500() -> None:
    for code in RULE_CODES | {"malformed_json", "mempool_full", "not_found"}:
        assert code in STATUS, code
        assert STATUS[code][0] < 500 or code in ("mempool_full",), code


async def test_submit_commit_query_and_resubmit(live: Live) -> None:
    await funded(live)
    chain = live.chain
    retire = chain.tx(
        chain.alice,
        "retire",
        {"batch_id": "B-1", "quantity": 40, "beneficiary": "Alice", "purpose": "voluntary"},
    )
    first = await post(live, retire.to_json())
    assert first.status_code == 200, first.text
    outcome = first.json()
    assert outcome["tx_id"] == retire.tx_id and outcome["status"] == "committed"
    again = await post(live, retire.to_json())
    assert again.status_code == 200 and again.json() == outcome  # idempotent
    fetched = (await live.client.get(f"/v1/transactions/{retire.tx_id}")).json()
    assert fetched["status"] == "committed" and fetched["transaction"] == retire.to_json()


async def test_pending_answer_without_wait(live: Live) -> None:
    chain = live.chain
    response = await post(live, chain.accredit().to_json(), wait=False)
    assert response.status_code in (200, 202)
    assert response.json()["status"] in ("pending", "committed")


async def test_a_rejected_transaction_is_a_problem_and_is_remembered(live: Live) -> None:
    await funded(live)
    chain = live.chain
    to_self = chain.tx(
        chain.alice, "transfer", {"to": chain.alice.account_id, "batch_id": "B-1", "quantity": 1}
    )
    started = time.monotonic()
    response = await post(live, to_self.to_json())
    assert_problem(response, 422, "self_transfer")
    # Rejected when its block was cut, which wakes the waiter: it must not sit out the whole
    # ?wait=commit bound (10 s) to hear it.
    assert time.monotonic() - started < 5
    remembered = (await live.client.get(f"/v1/transactions/{to_self.tx_id}")).json()
    assert remembered["status"] == "rejected"
    assert remembered["problem"]["code"] == "self_transfer"


async def test_an_array_answers_each_transaction(live: Live) -> None:
    chain = live.chain
    good = chain.accredit()
    bad_chain = chain.tx(
        chain.alice,
        "set_keys",
        {"keys": [chain.alice.public_key_hex], "threshold": 1},
        chain_id="other-chain",
    )
    response = await post(live, [good.to_json(), {"tx": {}}, bad_chain.to_json()])
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["committed", "rejected", "rejected"]
    assert results[1]["problem"]["code"] == "invalid_field"
    assert results[2]["problem"]["code"] == "wrong_chain"


async def test_nobody_holds_another_accounts_nonce_and_a_broken_copy_spoils_nothing(
    live: Live,
) -> None:
    """Alice's next nonce cannot be taken by a transaction she did not sign (signed by Bob's
    key, by none, or her own with its signatures stripped): each is refused and changes
    nothing, and her own transaction with that nonce commits. In one array, a copy of a
    transaction with a broken signature is refused without spoiling the good copy beside it."""
    await funded(live)
    chain = live.chain
    payload = {"to": chain.carol.account_id, "batch_id": "B-1", "quantity": 5}
    nonce = chain.next_nonce(chain.alice.account_id)
    own = chain.tx(chain.alice, "transfer", payload, nonce=nonce)
    by_bob = chain.tx(chain.bob, "transfer", payload, signer=chain.alice.account_id, nonce=nonce)
    for squatter, code in (
        (by_bob.to_json(), "unknown_key"),
        ({"tx": by_bob.to_json()["tx"], "signatures": []}, "insufficient_signatures"),
        ({"tx": own.to_json()["tx"], "signatures": []}, "insufficient_signatures"),
    ):
        assert_problem(await post(live, squatter, wait=False), 422, code)
        assert live.node.producer.pending_count() == 0
    # Nor is what a copy anyone can make was answered kept as what became of the transaction.
    assert_problem(await live.client.get(f"/v1/transactions/{own.tx_id}"), 404, "not_found")
    broken = own.to_json()
    signature = broken["signatures"][0]["signature"]
    broken["signatures"][0]["signature"] = ("0" if signature[0] != "0" else "1") + signature[1:]
    response = await post(live, [broken, own.to_json()])
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["rejected", "committed"], results
    assert results[0]["problem"]["code"] == "bad_signature"
    alice = (await live.client.get(f"/v1/accounts/{chain.alice.account_id}")).json()
    assert alice["nonce"] == nonce and alice["holdings"][0]["circulating"] == 1000 - 5


async def test_a_rotation_and_a_transaction_under_the_new_key_in_one_array_both_commit(
    live: Live,
) -> None:
    """The pool checks keys on admission, and after a pending set_keys takes the signer's
    later transactions on trust: in one array the rotation goes first whatever the order."""
    await funded(live)
    chain = live.chain
    new_key = key("alice-rotated")
    nonce = chain.next_nonce(chain.alice.account_id)
    rotate = chain.tx(
        chain.alice, "set_keys", {"keys": [new_key.public_key_hex], "threshold": 1}, nonce=nonce
    )
    payload = {"to": chain.carol.account_id, "batch_id": "B-1", "quantity": 3}
    after = chain.tx(new_key, "transfer", payload, signer=chain.alice.account_id, nonce=nonce + 1)
    response = await post(live, [after.to_json(), rotate.to_json()])
    assert [r["status"] for r in response.json()["results"]] == ["committed", "committed"]


def test_an_arrays_order_changes_only_within_each_signer() -> None:
    """in_nonce_order puts each signer's transactions in nonce order in the places they held,
    and never moves one signer's transaction past another's (it may depend on it)."""
    chain = Chain()
    a1, a2, a3 = (chain.tx(chain.alice, "set_keys", _own(chain), nonce=n) for n in (1, 2, 3))
    b1 = chain.tx(chain.bob, "set_keys", {"keys": [chain.bob.public_key_hex], "threshold": 1})
    assert in_nonce_order([a3, b1, a1, a2]) == [a1, b1, a2, a3]
    for signers in ([b1, a1], [a1, b1]):  # whichever id sorts first
        assert in_nonce_order(signers) == signers


def _own(chain: Chain) -> dict[str, object]:
    return {"keys": [chain.alice.public_key_hex], "threshold": 1}


async def test_an_array_whose_issuance_needs_the_accreditation_before_it_commits(
    live: Live,
) -> None:
    chain = live.chain
    setup = [chain.accredit(), chain.create_program(), chain.issue([(chain.alice, 10)])]
    response = await post(live, [envelope.to_json() for envelope in setup])
    assert [r["status"] for r in response.json()["results"]] == ["committed"] * 3


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b'{"tx": 1, "tx": 2}', 400, "malformed_json"),
        (b"\xff\xfe", 400, "malformed_json"),
        (b"1.5", 400, "malformed_json"),
        (b"[" * 50 + b"]" * 50, 422, "limit_exceeded"),
        (b'{"tx": {}, "signatures": [], "extra": 1}', 422, "invalid_field"),
        (b"[" + b",".join([b"{}"] * 1001) + b"]", 422, "limit_exceeded"),
    ],
)
async def test_bad_bodies_get_their_problem(
    live: Live, body: bytes, status: int, code: str
) -> None:
    response = await live.client.post(
        "/v1/transactions", content=body, headers={"content-type": "application/json"}
    )
    assert_problem(response, status, code)
    assert live.node.state.height == 0  # nothing changed


@pytest.mark.parametrize(
    ("body", "kind"),
    [(b"null", "null"), (b"5", "a number"), (b'"x"', "a string"), (b"true", "a boolean")],
)
async def test_a_body_that_is_no_object_is_told_what_an_envelope_is(
    live: Live, body: bytes, kind: str
) -> None:
    """Found by review: pydantic's "Input should be a valid dictionary or instance of
    Envelope" named the server's types. In an array, each item is told the same."""
    headers = {"content-type": "application/json"}
    response = await live.client.post("/v1/transactions", content=body, headers=headers)
    problem = assert_problem(response, 422, "invalid_field")
    assert problem["detail"] == f"body: an envelope is a JSON object (SPEC §3.1), not {kind}"
    mixed = await live.client.post(
        "/v1/transactions", content=b"[" + body + b", []]", headers=headers
    )
    results = mixed.json()["results"]
    assert [r["problem"]["detail"] for r in results] == [
        f"body: an envelope is a JSON object (SPEC §3.1), not {kind}",
        "body: an envelope is a JSON object (SPEC §3.1), not an array",
    ]
    assert live.node.state.height == 0  # nothing changed


async def test_a_body_over_the_limit_is_refused_while_streaming(live: Live) -> None:
    declared = await live.client.post(
        "/v1/transactions", content=b"x", headers={"content-length": str(1 << 30)}
    )
    assert_problem(declared, 413, "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(1000):
            yield b" " * 1024

    streamed = await live.client.post("/v1/transactions", content=chunks())
    assert_problem(streamed, 413, "payload_too_large")


async def test_unknown_routes_methods_and_ids_are_problems(live: Live) -> None:
    assert_problem(await live.client.get("/v1/nothing"), 404, "not_found")
    assert_problem(await live.client.delete("/healthz"), 405, "method_not_allowed")
    assert_problem(await live.client.get("/v1/transactions/xyz"), 422, "invalid_field")
    assert_problem(await live.client.get(f"/v1/transactions/{'ab' * 32}"), 404, "not_found")
    assert_problem(await live.client.get("/v1/checkpoint"), 404, "not_found")
    assert_problem(await live.client.get("/v1/blocks/0"), 422, "invalid_field")
    assert_problem(await live.client.get("/v1/blocks/99"), 404, "not_found")
    assert_problem(
        await live.client.get("/v1/proofs/consistency?from_height=abc"), 422, "invalid_field"
    )


async def test_proofs_receipts_and_export_verify_with_the_pure_library(live: Live) -> None:
    await funded(live)
    chain = live.chain
    retire = chain.tx(
        chain.bob,
        "retire",
        {
            "batch_id": "B-1",
            "quantity": 25,
            "beneficiary": "Bob's household",
            "purpose": "incentive",
            "program_id": "zibo-green-home",
        },
    )
    assert (await post(live, retire.to_json())).json()["status"] == "committed"
    client = live.client

    checkpoint = (await client.get("/v1/checkpoint")).json()
    header = checkpoint["header"]
    inclusion = (await client.get(f"/v1/proofs/inclusion?tx_id={retire.tx_id}")).json()
    verify_inclusion(
        leaf_hash=leaf_hash(canonical(retire.to_json())),
        index=inclusion["log_index"],
        size=inclusion["log_size"],
        path=[bytes.fromhex(node) for node in inclusion["path"]],
        root=bytes.fromhex(inclusion["checkpoint"]["header"]["log_root"]),
    )
    consistency = (await client.get("/v1/proofs/consistency?from_height=1")).json()
    verify_consistency(
        size1=consistency["first_size"],
        size2=consistency["second_size"],
        path=[bytes.fromhex(node) for node in consistency["path"]],
        root1=bytes.fromhex(consistency["first"]["header"]["log_root"]),
        root2=bytes.fromhex(consistency["second"]["header"]["log_root"]),
    )
    state = (await client.get(f"/v1/proofs/state?key=retirement/{retire.tx_id}")).json()
    verify_state_proof(
        proof=state["proof"], root=bytes.fromhex(state["checkpoint"]["header"]["state_root"])
    )
    assert state["proof"]["value"]["beneficiary"] == "Bob's household"

    receipt = (await client.get(f"/v1/retirements/{retire.tx_id}/receipt")).json()
    trusted = compute_validators_hash(chain.genesis.validators)
    verify_receipt(receipt, validators_hash=trusted, genesis_hash=chain.genesis.genesis_hash())

    export = await client.get("/v1/export")
    assert export.headers["content-type"].startswith("application/x-ndjson")
    report = audit_chain(chain.genesis, export.content.splitlines(keepends=True))
    assert report.height == header["height"] and report.state_root == header["state_root"]

    genesis = (await client.get("/v1/genesis")).json()
    assert genesis == chain.genesis_document
    health = (await client.get("/healthz")).json()
    assert health == {"status": "ok", "height": header["height"]}


async def test_roles_name_a_certifier_only_inside_its_accreditation(live: Live) -> None:
    """An expired or not yet valid accreditation cannot sign an issuance (SPEC §3.3), so the
    account is not shown as a certifier; a revoked one neither."""
    chain = live.chain
    expired, early, revoked = key("expired-certifier"), key("early-certifier"), key("revoked")
    now_ms = int(time.time() * 1000)
    for envelope in (
        chain.accredit(chain.certifier),
        chain.accredit(expired, valid_until=now_ms - 60_000),
        chain.accredit(early, valid_from=now_ms + 86_400_000),
        chain.accredit(revoked),
        chain.authority_tx(
            "revoke_certifier", {"certifier": revoked.account_id, "reason": "misconduct"}
        ),
        # An account comes into being when it first signs.
        *(
            chain.tx(signer, "set_keys", {"keys": [signer.public_key_hex], "threshold": 1})
            for signer in (chain.certifier, expired, early, revoked)
        ),
    ):
        assert (await post(live, envelope.to_json())).json()["status"] == "committed"
    # ...and the rules agree: the expired one's issuance is refused.
    refused = await post(live, chain.issue([(chain.alice, 10)], certifier=expired).to_json())
    assert refused.json()["code"] == "not_accredited", refused.text

    for certifier, roles in (
        (chain.certifier, ["holder", "certifier"]),
        (expired, ["holder"]),
        (early, ["holder"]),
        (revoked, ["holder"]),
    ):
        account = (await live.client.get(f"/v1/accounts/{certifier.account_id}")).json()
        assert account["roles"] == roles, certifier.account_id


async def test_openapi_and_docs_are_served(live: Live) -> None:
    spec = (await live.client.get("/openapi.json")).json()
    assert "/v1/transactions" in spec["paths"] and "/v1/proofs/inclusion" in spec["paths"]
    docs = await live.client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


async def test_accounts_batches_retirements_and_pages(live: Live) -> None:
    await funded(live)
    chain = live.chain
    client = live.client
    retirements = []
    for quantity in (5, 6, 7):
        retire = chain.tx(
            chain.alice,
            "retire",
            {
                "batch_id": "B-1",
                "quantity": quantity,
                "beneficiary": "Alice",
                "purpose": "voluntary",
            },
        )
        assert (await post(live, retire.to_json())).json()["status"] == "committed"
        retirements.append(retire.tx_id)

    alice = (await client.get(f"/v1/accounts/{chain.alice.account_id}")).json()
    assert alice["nonce"] == 3 and alice["roles"] == ["holder"]
    (holding,) = alice["holdings"]
    assert holding["circulating"] == 1000 - 18 and holding["retired"] == 18
    assert [r["status"] for r in holding["ranges"]] == ["retired"] * 3 + ["circulating"]
    authority = (await client.get(f"/v1/accounts/{chain.authority_id}")).json()
    assert "authority" in authority["roles"]
    certifier = (await client.get(f"/v1/accounts/{chain.certifier.account_id}")).json()
    assert "certifier" in certifier["roles"]

    first = await client.get(f"/v1/accounts/{chain.alice.account_id}/transactions?limit=2")
    page = first.json()
    assert [item["tx_id"] for item in page["items"]] == retirements[::-1][:2]
    rest = await client.get(
        f"/v1/accounts/{chain.alice.account_id}/transactions?limit=2&cursor={page['next_cursor']}"
    )
    assert rest.json()["items"][0]["tx_id"] == retirements[0]

    listed = (await client.get("/v1/retirements?beneficiary=Alice&limit=2")).json()
    assert len(listed["items"]) == 2 and listed["next_cursor"]
    more = (await client.get(f"/v1/retirements?cursor={listed['next_cursor']}&limit=2")).json()
    seen = {item["retirement_id"] for item in listed["items"] + more["items"]}
    assert seen == set(retirements)
    one = (await client.get(f"/v1/retirements/{retirements[0]}")).json()
    assert one["quantity"] == 5

    batches = (await client.get("/v1/batches?methodology_id=household-electricity")).json()
    assert [b["batch_id"] for b in batches["items"]] == ["B-1"]
    by_certifier = await client.get(f"/v1/batches?certifier={chain.certifier.account_id}")
    assert len(by_certifier.json()["items"]) == 1
    batch = (await client.get("/v1/batches/B-1")).json()
    assert batch["issued"] == batch["circulating"] + batch["retired"] + batch["invalidated"]

    blocks = (await client.get("/v1/blocks?limit=2")).json()
    heights = [item["block"]["header"]["height"] for item in blocks["items"]]
    assert heights == [live.node.state.height, live.node.state.height - 1]

    stats = (await client.get("/v1/stats")).json()
    assert stats["totals"]["issued"] == 1500 and stats["totals"]["retired"] == 18
    assert stats["by_methodology"]["household-electricity"]["issued"] == 1500


async def test_recorded_evidence_is_served_proven_and_counted(tmp_path: Path) -> None:
    """A chain whose block 2 carries evidence against its validator: the block JSON shows
    it, the state entry is proven against the checkpoint, and /v1/stats counts it."""
    chain = Chain().funded()
    city = chain.validator
    votes = [
        sign_vote(city, chain_id=chain.genesis.chain_id, vote_type="precommit", height=1,
                  round=1, block_hash=block_hash)
        for block_hash in (None, chain.blocks[0].block.block_hash())
    ]  # fmt: skip
    evidence = make_evidence(*votes)
    carrying = chain.commit(evidence=(evidence,))
    chain.write_store(tmp_path)
    async with serving(tmp_path, city) as client:
        block = (await client.get("/v1/blocks/2")).json()["block"]
        assert block["evidence"] == [evidence.to_json()]
        answer = await client.get(
            "/v1/proofs/state", params={"key": f"evidence/{city.public_key_hex}/1"}
        )
        assert answer.status_code == 200, answer.text
        proven = answer.json()
        root = bytes.fromhex(proven["checkpoint"]["header"]["state_root"])
        verify_state_proof(proof=proven["proof"], root=root)
        assert proven["proof"]["value"] == carrying.state.get(evidence.state_key())
        assert proven["proof"]["value"]["evidence"] == evidence.to_json()
        absent = await client.get(
            "/v1/proofs/state", params={"key": f"evidence/{city.public_key_hex}/2"}
        )
        assert absent.json()["proof"]["value"] is None
        stats = (await client.get("/v1/stats")).json()
        assert stats["evidence"] == {city.public_key_hex: 1}


async def test_a_consistency_proof_from_an_empty_log_names_where_one_can_start(
    tmp_path: Path,
) -> None:
    """A consortium's block 1 is empty (found by review: `from_height=1`, as the README's
    first steps have it, answered "no consistency proof from log size 0 to 74" alone). The
    answer says why, and names the first height a proof can start from; a reversed range is
    the asker's mistake (422), a height past the head not found (404)."""
    chain = Chain()
    chain.commit()  # block 1, empty
    chain.commit()  # block 2, empty
    chain.funded()  # block 3, the first transactions
    chain.write_store(tmp_path)
    async with serving(tmp_path, chain.validator) as client:
        empty = await client.get("/v1/proofs/consistency?from_height=1&to_height=2")
        problem = assert_problem(empty, 422, "invalid_field")
        assert "its log is empty (size 0)" in problem["detail"]
        assert "no block up to height 2 holds a transaction yet" in problem["detail"]
        problem = assert_problem(
            await client.get("/v1/proofs/consistency?from_height=2"), 422, "invalid_field"
        )
        assert "the first height whose log is not empty is 3" in problem["detail"]
        assert (await client.get("/v1/proofs/consistency?from_height=3")).status_code == 200
        reversed_range = await client.get("/v1/proofs/consistency?from_height=3&to_height=2")
        problem = assert_problem(reversed_range, 422, "invalid_field")
        assert "to_height is below from_height" in problem["detail"]
        beyond = await client.get("/v1/proofs/consistency?from_height=1&to_height=4")
        problem = assert_problem(beyond, 404, "not_found")
        assert "the chain's head is at height 3" in problem["detail"]


async def test_exports_at_once_are_bounded_and_each_gives_its_turn_back(live: Live) -> None:
    """Found by review: each export holds a store connection (two file descriptors) while its
    client reads, so clients that read nothing could run the node out of descriptors; and
    with one bound alone, one client's connections could keep every export from everybody.
    At most EXPORTS_PER_CLIENT_MAX for one address and EXPORTS_AT_ONCE_MAX in all stream at
    once; one more is told to come back, and every answer, read whole, refused or a HEAD,
    gives its turn back."""
    await funded(live)
    turns, here = live.node.exports, "127.0.0.1"  # the address httpx's ASGI transport gives
    for _ in range(EXPORTS_PER_CLIENT_MAX):
        assert turns.take(here) is None
    refused = await live.client.get("/v1/export")
    problem = assert_problem(refused, 429, "too_many_requests")
    assert refused.headers["retry-after"] and here in problem["detail"]
    for _ in range(EXPORTS_PER_CLIENT_MAX):
        turns.give_back(here)
    others = [f"10.0.0.{i}" for i in range(EXPORTS_AT_ONCE_MAX)]
    for other in others:
        assert turns.take(other) is None
    refused = await live.client.get("/v1/export")
    problem = assert_problem(refused, 503, "overloaded")
    assert refused.headers["retry-after"] and str(EXPORTS_AT_ONCE_MAX) in problem["detail"]
    turns.give_back(others.pop())
    for method in ("GET", "HEAD", "GET"):
        answer = await live.client.request(method, "/v1/export")
        assert answer.status_code == 200
    assert (await live.client.get("/v1/export?from_height=99")).status_code == 404  # no turn
    assert turns.held() == EXPORTS_AT_ONCE_MAX - 1  # each answer gave its turn back
    for other in others:
        turns.give_back(other)
    assert turns.held() == 0


async def test_bad_cursors_and_unknown_ids_are_problems(live: Live) -> None:
    client = live.client
    for cursor in ("%%%", "e30", "x" * 600, "eyJiZWZvcmUiOiJhIn0"):
        response = await client.get(f"/v1/blocks?cursor={cursor}")
        assert response.status_code == 422, (cursor, response.text)
        assert response.json()["code"] == "invalid_field"
    # One spelling a cursor (found by review: padded or respaced ones were taken as the same).
    given = encode_cursor({"before": 5})
    assert (await client.get(f"/v1/blocks?cursor={given}")).status_code == 200
    spaced = base64.urlsafe_b64encode(b'{"before": 5}').decode().rstrip("=")
    for other in (f"{given}=", f"{given}==", f"{given}%3D", spaced):
        assert other != given
        assert_problem(await client.get(f"/v1/blocks?cursor={other}"), 422, "invalid_field")
    assert_problem(await client.get(f"/v1/accounts/{'cd' * 32}"), 404, "not_found")
    assert_problem(await client.get("/v1/batches/B-9"), 404, "not_found")
    assert_problem(await client.get("/v1/batches/B-01"), 422, "invalid_field")
    assert_problem(await client.get(f"/v1/retirements/{'ef' * 32}"), 404, "not_found")
    assert_problem(await client.get("/v1/retirements?limit=1000"), 422, "invalid_field")
    reversed_range = await client.get("/v1/export?from_height=5&to_height=3")
    problem = assert_problem(reversed_range, 422, "invalid_field")  # the asker's mistake
    assert "to_height is below from_height" in problem["detail"]
    assert live.node.state.height == 0
    # The height after the head is an empty tail (the genesis alone); past it, a mistake that
    # had been answered 200 with the genesis alone, where the consistency route answers 404.
    for tail in ("/v1/export?from_height=1", "/v1/export?from_height=1&to_height=5"):
        empty = await client.get(tail)
        assert empty.status_code == 200 and len(empty.content.splitlines()) == 1
    past = assert_problem(
        await client.get("/v1/export?from_height=2&to_height=5"), 404, "not_found"
    )
    assert "no block at height 2 yet: the chain's head is at height 0" in past["detail"]


async def test_metrics_count_requests_by_route(live: Live) -> None:
    await live.client.get("/healthz")
    assert (await live.client.head("/healthz")).status_code == 200
    await live.client.get(f"/v1/transactions/{'ab' * 32}")
    text = (await live.client.get("/metrics")).text
    assert 'tanlian_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    # A HEAD is answered as a GET, and counted as what it was (it had been counted as a GET).
    assert 'tanlian_http_requests_total{method="HEAD",route="/healthz",status="200"} 1.0' in text
    assert 'route="/v1/transactions/{tx_id}",status="404"' in text
    assert "tanlian_height 0.0" in text and "tanlian_pending_transactions" in text


def test_an_account_read_never_mixes_the_stores_next_block_with_the_states_last(
    node: tuple[Chain, Node], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer commits a block before the state takes it. A transfer moves the lowest
    serials, so the sender's remaining lot has a new key in the store; read against the state
    of the block before, it was in neither, and the account showed nothing at that height."""
    chain, running = node
    for envelope in (
        chain.accredit(),
        chain.create_program(),
        chain.issue([(chain.alice, 1000)]),
    ):
        (outcome,) = running.submit([envelope])
        assert outcome.status == "pending"
        assert running.wait_for_commit([envelope.tx_id], 10)[0].status == "committed"  # type: ignore[union-attr]
    before = running.state.height
    assert reads.account(running, chain.alice.account_id)["holdings"][0]["circulating"] == 1000

    # Hold the block loop between the store's commit and the state's move.
    solo = running._solo
    assert solo is not None
    release = threading.Event()
    finish = solo.finish

    def held_finish(prepared: Any) -> Any:
        release.wait(10)
        return finish(prepared)

    monkeypatch.setattr(solo, "finish", held_finish)
    transfer = chain.tx(
        chain.alice, "transfer", {"to": chain.bob.account_id, "batch_id": "B-1", "quantity": 400}
    )
    running.submit([transfer])
    store = Store.open(tmp_path)
    try:
        deadline = time.monotonic() + 10
        while store.head_height == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert store.head_height == before + 1 and running.state.height == before
    finally:
        store.close()

    with pytest.raises(reads.StoreAhead) as ahead:
        reads.account(running, chain.alice.account_id, wait=False)
    assert ahead.value.height == before + 1
    answers: list[dict[str, Any]] = []
    reader = threading.Thread(
        target=lambda: answers.append(reads.account(running, chain.alice.account_id))
    )
    reader.start()
    time.sleep(0.2)
    assert not answers  # it waits for the state rather than answer a mix
    release.set()
    reader.join(10)
    (answer,) = answers
    assert answer["height"] == before + 1
    assert [h["circulating"] for h in answer["holdings"]] == [600]


async def test_an_account_past_its_ranges_bound_still_shows_what_it_can_spend(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retired lots never merge: an account retiring a unit at a time fills the answer's
    ranges with them. Its circulating lots come first, so its spendable balance stays."""
    await funded(live)
    chain = live.chain
    for _ in range(4):
        retire = chain.tx(
            chain.alice,
            "retire",
            {"batch_id": "B-1", "quantity": 1, "beneficiary": "Alice", "purpose": "voluntary"},
        )
        assert (await post(live, retire.to_json())).json()["status"] == "committed"
    monkeypatch.setattr(reads, "HOLDING_RANGES_MAX", 3)
    # Finding its circulating lots scans them all: not on the event loop (the route reads
    # it in a thread).
    with pytest.raises(reads.LargeAccount):
        reads.account(live.node, chain.alice.account_id, wait=False)
    alice = (await live.client.get(f"/v1/accounts/{chain.alice.account_id}")).json()
    assert alice["holdings_truncated"] is True
    (holding,) = alice["holdings"]
    assert holding["circulating"] == 996 and holding["retired"] == 2
    assert [r["status"] for r in holding["ranges"]] == ["retired", "retired", "circulating"]
    monkeypatch.setattr(reads, "HOLDING_RANGES_MAX", 5)
    alice = (await live.client.get(f"/v1/accounts/{chain.alice.account_id}")).json()
    assert alice["holdings_truncated"] is False and alice["holdings"][0]["retired"] == 4


async def test_holdings_and_lots_are_listed_in_issuance_order(live: Live) -> None:
    """Found by review: batch ids were ordered as text, so a household's monthly batches read
    B-1, B-10, B-11, B-2, ... in the API and on the explorer's account page."""
    await funded(live)  # B-1
    chain = live.chain
    issues = [
        chain.issue([(chain.alice, 10 + n)], project_id=f"meter-{n:04d}").to_json()
        for n in range(2, 12)
    ]
    answer = await live.client.post("/v1/transactions?wait=commit", json=issues)
    assert answer.status_code == 200, answer.text
    order = [f"B-{n}" for n in range(1, 12)]
    alice = (await live.client.get(f"/v1/accounts/{chain.alice.account_id}")).json()
    assert [h["batch_id"] for h in alice["holdings"]] == order
    assert [h["circulating"] for h in alice["holdings"]] == [1000, *range(12, 22)]
    listed: list[str] = []
    cursor = None
    while True:  # the explorer's pages of lots, four at a time
        page = reads.account_lots(live.node, chain.alice.account_id, limit=4, cursor=cursor)
        listed += [item["batch_id"] for item in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert listed == order
    # Not a batch id, or one past what SQLite takes (that one had been a 500).
    for batch in ("X-1", "B-99999999999999999999", "B-9223372036854775808", "B-٣"):
        forged = encode_cursor({"batch": batch, "serial": 0})
        with pytest.raises(LedgerError, match="cursor is not one this node gave out"):
            reads.account_lots(live.node, chain.alice.account_id, limit=4, cursor=forged)


async def test_a_page_of_blocks_is_bounded_by_its_transactions_too(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page of `limit` whole blocks could hold half a million transactions; it now stops
    at BLOCKS_PAGE_TRANSACTIONS_MAX, but always holds one block, and the cursor goes on."""
    await funded(live)  # three blocks of one transaction each
    head = live.node.state.height
    monkeypatch.setattr(reads, "BLOCKS_PAGE_TRANSACTIONS_MAX", 2)
    seen: list[int] = []
    cursor = ""
    while True:
        page = (await live.client.get(f"/v1/blocks?limit=10{cursor}")).json()
        heights = [item["block"]["header"]["height"] for item in page["items"]]
        counts = [len(item["block"]["transactions"]) for item in page["items"]]
        assert heights and (len(heights) == 1 or sum(counts) <= 2), (heights, counts)
        seen += heights
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert seen == list(range(head, 0, -1))
    monkeypatch.setattr(reads, "BLOCKS_PAGE_TRANSACTIONS_MAX", 0)
    page = (await live.client.get("/v1/blocks?limit=10")).json()
    assert [item["block"]["header"]["height"] for item in page["items"]] == [head]


async def test_the_explorer_of_a_chain_with_no_block_yet_links_to_no_block_0(
    live: Live,
) -> None:
    """Found by review: every page's header linked its height, `/blocks/0`, which answers
    400, until a new registry's first block."""
    assert live.node.state.height == 0
    for path in ("/", "/blocks", "/dashboard"):
        page = await live.client.get(path)
        assert page.status_code == 200
        assert 'href="/blocks/0"' not in page.text
        for height in re.findall(r'href="/blocks/([0-9]+)"', page.text):
            assert (await live.client.get(f"/blocks/{height}")).status_code == 200


async def test_healthz_says_when_transactions_wait_and_nothing_commits(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: /healthz said "ok" and nothing more while nothing could commit (a
    stopped store writer, a consortium without 2/3 of its power). Liveness stays ok; the
    answer says what is stalled."""
    assert "stalled" not in (await live.client.get("/healthz")).json()
    chain = live.chain
    waiting = chain.tx(
        chain.alice,
        "transfer",
        {"to": chain.bob.account_id, "batch_id": "B-1", "quantity": 1},
        nonce=5,  # behind nonces that never come: pending, and no block
    )
    assert (await post(live, waiting.to_json(), wait=False)).json()["status"] == "pending"
    monkeypatch.setattr("api.node.STALLED_SECONDS", 0.0)
    answer = (await live.client.get("/healthz")).json()
    assert answer["status"] == "ok" and answer["stalled"]["code"] == "stalled"
    assert answer["stalled"]["reason"].startswith("1 transactions pending and no block")
