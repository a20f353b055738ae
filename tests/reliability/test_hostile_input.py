"""The hostile input catalogue (issue 7, item 3): one readable place, one case per attack.

Every case is driven over HTTP against the real application on a real node and store
(httpx.ASGITransport): a body or an envelope that is wrong in exactly one way, the exact
status and `code` of its RFC 9457 problem (application/problem+json), and nothing changed
afterwards: the same head, the same state root, nothing left pending. The world is built once
per module: an authority (2-of-3 keys), an accredited certifier (household electricity only),
a revoked one and one whose accreditation has expired, a programme and an expired one, batch
B-1 held by Alice and Bob, and Carol suspended while holding credits.

Signature edge cases carry the facts of RFC 8032 (§5.1.7: S < L; the point encodings of
§5.1.3) and of "Taming the many EdDSAs" (Chalkias, Garillot, Nikolaenko, SSR 2020): its twelve
edge-case vectors, of which strict verification (libsodium's rules, which `ledger.crypto`
states itself) accepts exactly one, the signature whose points have a torsion component but
are not of small order. The RFC 8032 §7.1 vectors are checked in tests/ledger/test_crypto.py.

Consensus messages (from non-validators, badly signed, far-future heights and rounds) have
their part of the catalogue in tests/reliability/test_hostile_consensus.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.media import PROBLEM_MEDIA_TYPE
from api.node import Node
from api.settings import Settings
from ledger.crypto import FIELD_P, GROUP_L, SignatureError, verify_signature
from ledger.limits import JSON_INTEGER_MAX, POOL_NONCE_GAP_MAX
from ledger.store import Store
from ledger.transactions import Envelope
from tests.factory import GENESIS_TIME, Chain, key

pytestmark = pytest.mark.anyio

BODY_BYTES_MAX = 256 * 1024
NOW_MS = int(time.time() * 1000)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class World:
    chain: Chain
    node: Node
    data: Path


def commit_all(node: Node, envelopes: list[Envelope]) -> None:
    node.submit(envelopes)
    outcomes = node.wait_for_commit([e.tx_id for e in envelopes], 30)
    assert [o.status if o else None for o in outcomes] == ["committed"] * len(envelopes), [
        (o.code, o.message) for o in outcomes if o is not None
    ]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data = tmp_path_factory.mktemp("hostile")
    chain = Chain(block_interval_ms=20)
    Store.create(data, chain.genesis_document).close()
    node = Node(data, chain.validator)
    node.start()
    revoked, lapsed = key("revoked-certifier"), key("lapsed-certifier")
    # A programme that ends during the set-up (it waits for the end below): far enough ahead
    # that its creation, on a loaded machine, still comes before it ends.
    ends = int(time.time() * 1000) + 5000
    try:
        commit_all(
            node,
            [
                chain.accredit(),
                chain.accredit(revoked),
                chain.accredit(lapsed, valid_until=GENESIS_TIME + 1),
                chain.create_program(),
                chain.authority_tx(
                    "create_program",
                    {"program_id": "ended-programme", "name": "Ended", "valid_until": ends},
                ),
            ],
        )
        commit_all(
            node,
            [
                chain.authority_tx(
                    "revoke_certifier", {"certifier": revoked.account_id, "reason": "audit"}
                ),
                chain.issue([(chain.alice, 1000), (chain.bob, 500), (chain.carol, 50)]),
            ],
        )
        commit_all(
            node,
            [
                chain.authority_tx(
                    "suspend_account", {"account": chain.carol.account_id, "reason": "fraud"}
                ),
                chain.tx(
                    chain.alice,
                    "retire",
                    {"batch_id": "B-1", "quantity": 1, "beneficiary": "A", "purpose": "voluntary"},
                ),
            ],
        )
        time.sleep(max(0.0, ends / 1000 - time.time() + 0.05))
        yield World(chain=chain, node=node, data=data)
    finally:
        node.stop()


@pytest.fixture
async def client(world: World) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(data=world.data, body_bytes_max=BODY_BYTES_MAX, commit_wait_seconds=2)
    app = create_app(world.node, settings, manage_node=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as opened:
        yield opened


def head(node: Node) -> tuple[int, str, int]:
    state = node.state
    return state.height, state.state_root, node.producer.pending_count()


async def refused(
    client: httpx.AsyncClient, world: World, body: bytes, status: int, code: str
) -> dict[str, Any]:
    """POST `body` (waiting for the commit), expect exactly this problem, and no change."""
    before = head(world.node)
    answer = await client.post(
        "/v1/transactions?wait=commit",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    problem: dict[str, Any] = answer.json()
    assert problem["code"] == code, problem
    assert problem["status"] == status and problem["type"] == f"urn:tanlian:problem:{code}"
    assert head(world.node) == before, "a refused input changed the ledger"
    return problem


def encoded(envelope: Envelope | dict[str, Any]) -> bytes:
    value = envelope.to_json() if isinstance(envelope, Envelope) else envelope
    return json.dumps(value).encode()


def transfer(world: World, **payload: Any) -> Envelope:
    chain = world.chain
    return chain.tx(
        chain.alice,
        "transfer",
        {"to": chain.bob.account_id, "batch_id": "B-1", "quantity": 1, **payload},
        nonce=world.node.state.get(f"account/{chain.alice.account_id}")["nonce"] + 1,
    )


def nonce_of(world: World, who: str) -> int:
    account = world.node.state.get(f"account/{who}")
    return 0 if account is None else int(account["nonce"])


def signed(world: World, by: Any, kind: str, payload: dict[str, Any], **options: Any) -> bytes:
    """An envelope of `kind` signed `by` a key (or a list of keys, with `signer=` the
    account), at the signer's next nonce unless `nonce=` is given."""
    chain = world.chain
    keys = by if isinstance(by, list) else [by]
    who = options.pop("signer", None) or keys[0].account_id
    options.setdefault("nonce", nonce_of(world, who) + 1)
    return encoded(chain.tx(keys, kind, payload, signer=who, **options))


def with_json(transform: Callable[[dict[str, Any]], None], world: World) -> bytes:
    """A valid transfer's envelope JSON, changed in one way."""
    value = transfer(world).to_json()
    transform(value)
    return encoded(value)


# --- 1. bytes and JSON ------------------------------------------------------------------------

DECODING = {
    "not JSON": (b'{"tx": ', 400, "malformed_json"),
    "not UTF-8": (b'{"tx": "\xff\xfe"}', 400, "malformed_json"),
    "a lone surrogate escape": (b'{"tx": "\\ud800"}', 400, "malformed_json"),
    "duplicate keys": (b'{"tx": {}, "tx": {}}', 400, "malformed_json"),
    "trailing data": (b'{"tx": {}} {}', 400, "malformed_json"),
    "NaN": (b'{"tx": NaN}', 400, "malformed_json"),
    "nesting 9 deep": (b'{"tx": ' + b"[" * 8 + b"]" * 8 + b"}", 422, "limit_exceeded"),
    "nesting 200,000 deep": (b"[" * 200_000 + b"]" * 200_000, 413, "payload_too_large"),
    "nesting 20,000 deep": (b"[" * 20_000 + b"]" * 20_000, 422, "limit_exceeded"),
    "an empty body": (b"", 400, "malformed_json"),
}


@pytest.mark.parametrize("case", list(DECODING))
async def test_undecodable_bodies(case: str, client: httpx.AsyncClient, world: World) -> None:
    body, status, code = DECODING[case]
    await refused(client, world, body, status, code)


QUANTITIES = {
    "a float": b"1.5",
    "an exponent": b"1e3",
    "minus zero": b"-0",
    "a negative": b"-5",
    "2**53": str(2**53).encode(),
    "a huge integer": b"1" + b"0" * 400,
}


@pytest.mark.parametrize("case", list(QUANTITIES))
async def test_quantities_outside_the_integer_space(
    case: str, client: httpx.AsyncClient, world: World
) -> None:
    text = transfer(world).to_json()
    body = json.dumps(text).encode().replace(b'"quantity": 1', b'"quantity": ' + QUANTITIES[case])
    assert QUANTITIES[case] in body
    await refused(client, world, body, 400, "malformed_json")


async def test_a_zero_quantity(client: httpx.AsyncClient, world: World) -> None:
    await refused(client, world, encoded(transfer(world, quantity=0)), 422, "invalid_field")


async def test_sums_overflowing_across_recipients(client: httpx.AsyncClient, world: World) -> None:
    chain = world.chain
    payload = json.loads(encoded(chain.issue([(chain.alice, 1)], project_id="meter-sum")))
    half = JSON_INTEGER_MAX // 2 + 1  # each fits; their sum does not
    recipients = [{"account": chain.alice.account_id, "quantity": half},
                  {"account": chain.bob.account_id, "quantity": half}]  # fmt: skip
    body = signed(
        world, chain.certifier, "issue", {**payload["tx"]["payload"], "recipients": recipients}
    )
    await refused(client, world, body, 422, "limit_exceeded")


# --- 2. shape: unknown, missing and oversized fields ------------------------------------------


async def test_an_unknown_envelope_field(client: httpx.AsyncClient, world: World) -> None:
    body = with_json(lambda value: value.update(extra=1), world)
    await refused(client, world, body, 422, "invalid_field")


async def test_an_unknown_payload_field(client: httpx.AsyncClient, world: World) -> None:
    await refused(client, world, encoded(transfer(world, colour="green")), 422, "invalid_field")


async def test_a_missing_field(client: httpx.AsyncClient, world: World) -> None:
    body = with_json(lambda value: value["tx"].pop("nonce"), world)
    await refused(client, world, body, 422, "invalid_field")


async def test_an_oversized_string(client: httpx.AsyncClient, world: World) -> None:
    await refused(client, world, encoded(transfer(world, memo="m" * 501)), 422, "limit_exceeded")


async def test_an_oversized_array(client: httpx.AsyncClient, world: World) -> None:
    chain = world.chain
    envelope = chain.issue([(chain.alice, 1)] * 1001, project_id="meter-many")
    await refused(client, world, encoded(envelope), 422, "limit_exceeded")


async def test_more_envelopes_than_a_submission_holds(
    client: httpx.AsyncClient, world: World
) -> None:
    body = b"[" + b",".join([b"{}"] * 1001) + b"]"
    await refused(client, world, body, 422, "limit_exceeded")


async def test_a_body_declared_over_the_limit(client: httpx.AsyncClient, world: World) -> None:
    before = head(world.node)
    answer = await client.post(
        "/v1/transactions",
        content=b"{}",
        headers={"content-type": "application/json", "content-length": str(2**30)},
    )
    assert answer.status_code == 413 and answer.json()["code"] == "payload_too_large"
    assert head(world.node) == before


async def test_a_gibibyte_streamed_in_is_refused_after_the_limit(
    client: httpx.AsyncClient, world: World
) -> None:
    """1 GiB offered in 1 MiB chunks: refused once the limit passes, having read only what
    came before it (the rest is never produced, let alone held)."""
    produced = 0
    chunk = b" " * (1 << 20)

    async def gibibyte() -> AsyncIterator[bytes]:
        nonlocal produced
        for _ in range(1024):
            produced += 1
            yield chunk

    before = head(world.node)
    started = time.monotonic()
    answer = await client.post(
        "/v1/transactions", content=gibibyte(), headers={"content-type": "application/json"}
    )
    assert answer.status_code == 413 and answer.json()["code"] == "payload_too_large"
    assert produced <= 2, f"{produced} MiB read for a {BODY_BYTES_MAX}-byte limit"
    assert time.monotonic() - started < 10
    assert head(world.node) == before


SLUGS = {
    "a control character": "zibo-green-home\u0000",
    "a trailing newline": "zibo-green-home\n",
    "a Cyrillic o (confusable)": "zib\u043e-green-home",
    "a fullwidth letter": "\uff5aibo-green-home",
    "a zero-width space": "zibo-green\u200bhome",
    "upper case": "Zibo-green-home",
}


@pytest.mark.parametrize("case", list(SLUGS))
async def test_slugs_are_plain_ascii(case: str, client: httpx.AsyncClient, world: World) -> None:
    chain = world.chain
    body = signed(
        world,
        chain.authority_keys[:2],
        "create_program",
        {"program_id": SLUGS[case], "name": "Look-alike", "valid_until": NOW_MS + 10**9},
        signer=chain.authority_id,
    )
    await refused(client, world, body, 422, "invalid_field")


async def test_a_control_character_in_free_text(client: httpx.AsyncClient, world: World) -> None:
    chain = world.chain
    body = signed(
        world,
        chain.alice,
        "retire",
        {"batch_id": "B-1", "quantity": 1, "beneficiary": "A\u0007", "purpose": "voluntary"},
    )
    await refused(client, world, body, 422, "invalid_field")


# --- 3. keys and signatures -------------------------------------------------------------------


def other_signature(change: Callable[[bytes], bytes]) -> Callable[[dict[str, Any]], None]:
    def transform(value: dict[str, Any]) -> None:
        entry = value["signatures"][0]
        entry["signature"] = change(bytes.fromhex(entry["signature"])).hex()

    return transform


def point(y: int, sign: int = 0) -> bytes:
    return (y | sign << 255).to_bytes(32, "little")


SIGNATURES: dict[str, tuple[Callable[[dict[str, Any]], None], int, str]] = {
    "S not reduced (S + L)": (
        other_signature(
            lambda s: s[:32] + (int.from_bytes(s[32:], "little") + GROUP_L).to_bytes(32, "little")
        ),
        422,
        "bad_signature",
    ),
    "S = L exactly": (
        other_signature(lambda s: s[:32] + GROUP_L.to_bytes(32, "little")),
        422,
        "bad_signature",
    ),
    "R the identity (small order)": (
        other_signature(lambda s: point(1) + s[32:]),
        422,
        "bad_signature",
    ),
    "R of order 2 (y = -1)": (
        other_signature(lambda s: point(FIELD_P - 1) + s[32:]),
        422,
        "bad_signature",
    ),
    "R non-canonical (y = p + 1)": (
        other_signature(lambda s: point(FIELD_P + 1) + s[32:]),
        422,
        "bad_signature",
    ),
    "R with y = p (non-canonical zero)": (
        other_signature(lambda s: point(FIELD_P, 1) + s[32:]),
        422,
        "bad_signature",
    ),
    "a flipped bit": (
        other_signature(lambda s: bytes([s[0] ^ 1]) + s[1:]),
        422,
        "bad_signature",
    ),
    "a short signature": (
        other_signature(lambda s: s[:63]),
        422,
        "invalid_field",
    ),
    "the key of the identity point": (
        lambda value: value["signatures"][0].update(public_key=point(1).hex()),
        422,
        "bad_signature",
    ),
    "a non-canonical key (y = p + 1)": (
        lambda value: value["signatures"][0].update(public_key=point(FIELD_P + 1).hex()),
        422,
        "bad_signature",
    ),
    "no signature": (lambda value: value.update(signatures=[]), 422, "insufficient_signatures"),
}


@pytest.mark.parametrize("case", list(SIGNATURES))
async def test_signature_edge_cases(case: str, client: httpx.AsyncClient, world: World) -> None:
    transform, status, code = SIGNATURES[case]
    await refused(client, world, with_json(transform, world), status, code)


async def test_a_key_not_in_the_signers_set(client: httpx.AsyncClient, world: World) -> None:
    chain = world.chain
    body = signed(
        world,
        chain.carol,
        "transfer",
        {"to": chain.bob.account_id, "batch_id": "B-1", "quantity": 1},
        signer=chain.alice.account_id,
    )
    await refused(client, world, body, 422, "unknown_key")


async def test_the_threshold_not_met(client: httpx.AsyncClient, world: World) -> None:
    chain = world.chain
    body = signed(
        world,
        chain.authority_keys[:1],  # 1 of the authority's 2-of-3
        "create_program",
        {"program_id": "one-key-programme", "name": "One key", "valid_until": NOW_MS + 10**9},
        signer=chain.authority_id,
    )
    await refused(client, world, body, 422, "insufficient_signatures")


# The twelve edge-case vectors of "Taming the many EdDSAs" (ed25519-speccheck's cases.txt):
# (message, public key, signature). Strict verification accepts only vector 3 (mixed-order
# A and R, a valid signature); 0-2 have a small-order A or R, 4-5 verify only with the
# cofactored equation, 6-7 have S >= L, 8-9 a non-canonical R, 10-11 a non-canonical A.
TAMING_VECTORS = [
    ("8c93255d71dcab10e8f379c26200f3c7bd5f09d9bc3068d3ef4edeb4853022b6",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"
     "0000000000000000000000000000000000000000000000000000000000000000"),
    ("9bd9f44f4dcc75bd531b56b2cd280b0bb38fc1cd6d1230e14861d861de092e79",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
     "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43"
     "a5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04"),
    ("aebf3f2601a0c8c5d39cc7d8911642f740b78168218da8471772b35f9d35b9ab",
     "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"
     "8c4bd45aecaca5b24fb97bc10ac27ac8751a7dfe1baff8b953ec9f5833ca260e"),
    ("9bd9f44f4dcc75bd531b56b2cd280b0bb38fc1cd6d1230e14861d861de092e79",
     "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
     "9046a64750444938de19f227bb80485e92b83fdb4b6506c160484c016cc1852f"
     "87909e14428a7a1d62e9f22f3d3ad7802db02eb2e688b6c52fcd6648a98bd009"),
    ("e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec4011eaccd55b53f56c",
     "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
     "160a1cb0dc9c0258cd0a7d23e94d8fa878bcb1925f2c64246b2dee1796bed512"
     "5ec6bc982a269b723e0668e540911a9a6a58921d6925e434ab10aa7940551a09"),
    ("e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec4011eaccd55b53f56c",
     "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
     "21122a84e0b5fca4052f5b1235c80a537878b38f3142356b2c2384ebad4668b7"
     "e40bc836dac0f71076f9abe3a53f9c03c1ceeeddb658d0030494ace586687405"),
    ("85e241a07d148b41e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec40",
     "442aad9f089ad9e14647b1ef9099a1ff4798d78589e66f28eca69c11f582a623",
     "e96f66be976d82e60150baecff9906684aebb1ef181f67a7189ac78ea23b6c0e"
     "547f7690a0e2ddcd04d87dbc3490dc19b3b3052f7ff0538cb68afb369ba3a514"),
    ("85e241a07d148b41e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec40",
     "442aad9f089ad9e14647b1ef9099a1ff4798d78589e66f28eca69c11f582a623",
     "8ce5b96c8f26d0ab6c47958c9e68b937104cd36e13c33566acd2fe8d38aa1942"
     "7e71f98a473474f2f13f06f97c20d58cc3f54b8bd0d272f42b695dd7e89a8c22"),
    ("9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41",
     "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
     "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
     "03be9678ac102edcd92b0210bb34d7428d12ffc5df5f37e359941266a4e35f0f"),
    ("9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41",
     "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
     "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
     "ca8c5b64cd208982aa38d4936621a4775aa233aa0505711d8fdcfdaa943d4908"),
    ("e96b7021eb39c1a163b6da4e3093dcd3f21387da4cc4572be588fafae23c155b",
     "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
     "a9d55260f765261eb9b84e106f665e00b867287a761990d7135963ee0a7d59dc"
     "a5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04"),
    ("39a591f5321bbe07fd5a23dc2f39d025d74526615746727ceefd6e82ae65c06f",
     "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
     "a9d55260f765261eb9b84e106f665e00b867287a761990d7135963ee0a7d59dc"
     "a5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04"),
]  # fmt: skip


@pytest.mark.parametrize("number", range(len(TAMING_VECTORS)))
def test_the_taming_edge_case_vectors(number: int) -> None:
    message, public_key, signature = (bytes.fromhex(h) for h in TAMING_VECTORS[number])
    if number == 3:
        verify_signature(public_key, message, signature)
    else:
        with pytest.raises(SignatureError):
            verify_signature(public_key, message, signature)


# --- 4. replay and nonces ---------------------------------------------------------------------


async def test_a_committed_transaction_replayed_is_answered_once(
    client: httpx.AsyncClient, world: World
) -> None:
    """Replay is not an error: the same transaction gets its original outcome, and nothing
    happens a second time."""
    envelope = transfer(world)
    first = await client.post("/v1/transactions?wait=commit", content=encoded(envelope))
    assert first.status_code == 200, first.text
    before = head(world.node)
    again = await client.post("/v1/transactions?wait=commit", content=encoded(envelope))
    assert again.status_code == 200 and again.json() == first.json()
    assert head(world.node) == before


async def test_cross_chain_replay(client: httpx.AsyncClient, world: World) -> None:
    chain = world.chain
    body = signed(
        world,
        chain.alice,
        "transfer",
        {"to": chain.bob.account_id, "batch_id": "B-1", "quantity": 1},
        chain_id="zibo-elsewhere",
    )
    await refused(client, world, body, 422, "wrong_chain")


async def test_a_reused_nonce(client: httpx.AsyncClient, world: World) -> None:
    chain = world.chain
    used = nonce_of(world, chain.alice.account_id)
    body = encoded(transfer(world, memo="another transaction, an old nonce"))
    value = json.loads(body)
    body = signed(world, chain.alice, "transfer", value["tx"]["payload"], nonce=used)
    await refused(client, world, body, 409, "bad_nonce")


async def test_a_nonce_skipped_beyond_the_pools_reach(
    client: httpx.AsyncClient, world: World
) -> None:
    chain = world.chain
    ahead = nonce_of(world, chain.alice.account_id) + POOL_NONCE_GAP_MAX + 1
    body = signed(
        world,
        chain.alice,
        "transfer",
        {"to": chain.bob.account_id, "batch_id": "B-1", "quantity": 1},
        nonce=ahead,
    )
    await refused(client, world, body, 409, "bad_nonce")


async def test_a_skipped_nonce_waits_and_is_never_applied_out_of_order(
    client: httpx.AsyncClient, world: World
) -> None:
    skipper = key("skipper")
    chain = world.chain
    before = head(world.node)
    body = signed(
        world,
        skipper,
        "transfer",
        {"to": chain.bob.account_id, "batch_id": "B-1", "quantity": 1},
        nonce=2,
    )
    answer = await client.post("/v1/transactions?wait=commit", content=body)
    assert answer.status_code == 202 and answer.json()["status"] == "pending"
    assert head(world.node)[:2] == before[:2]  # the state is the same; it waits for nonce 1


# --- 5. the rules of the registry -------------------------------------------------------------

RULES: dict[str, tuple[Callable[[World], bytes], int, str]] = {
    "issuance by an unaccredited account": (
        lambda w: signed(w, w.chain.alice, "issue", issue_payload(w, "meter-alice")),
        403,
        "not_accredited",
    ),
    "an authority action by a holder": (
        lambda w: signed(
            w,
            w.chain.alice,
            "create_program",
            {"program_id": "alices-own", "name": "Mine", "valid_until": NOW_MS + 10**9},
        ),
        403,
        "not_authorized",
    ),
    "issuance under a revoked accreditation": (
        lambda w: signed(w, key("revoked-certifier"), "issue", issue_payload(w, "meter-r")),
        403,
        "not_accredited",
    ),
    "issuance under an expired accreditation": (
        lambda w: signed(w, key("lapsed-certifier"), "issue", issue_payload(w, "meter-l")),
        403,
        "not_accredited",
    ),
    "a methodology out of scope": (
        lambda w: signed(
            w,
            w.chain.certifier,
            "issue",
            issue_payload(w, "roof-1", methodology_id="rooftop-solar"),
        ),
        403,
        "methodology_not_in_scope",
    ),
    "an unknown methodology": (
        lambda w: signed(
            w, w.chain.certifier, "issue", issue_payload(w, "x-1", methodology_id="wind-farm")
        ),
        422,
        "unknown_methodology",
    ),
    "an overlapping meter period": (
        lambda w: signed(
            w,
            w.chain.certifier,
            "issue",
            issue_payload(w, "meter-0001", period=("2026-01-15", "2026-02-15")),
        ),
        409,
        "double_issuance",
    ),
    "retiring more than held (double retirement)": (
        lambda w: signed(
            w,
            w.chain.bob,
            "retire",
            {"batch_id": "B-1", "quantity": 10**6, "beneficiary": "B", "purpose": "voluntary"},
        ),
        409,
        "insufficient_credits",
    ),
    "a transfer to oneself": (
        lambda w: signed(
            w,
            w.chain.alice,
            "transfer",
            {"to": w.chain.alice.account_id, "batch_id": "B-1", "quantity": 1},
        ),
        422,
        "self_transfer",
    ),
    "a suspended sender": (
        lambda w: signed(
            w,
            w.chain.carol,
            "transfer",
            {"to": w.chain.bob.account_id, "batch_id": "B-1", "quantity": 1},
        ),
        403,
        "account_suspended",
    ),
    "a suspended recipient": (
        lambda w: signed(
            w,
            w.chain.alice,
            "transfer",
            {"to": w.chain.carol.account_id, "batch_id": "B-1", "quantity": 1},
        ),
        403,
        "account_suspended",
    ),
    "an unknown batch": (
        lambda w: signed(
            w,
            w.chain.alice,
            "transfer",
            {"to": w.chain.bob.account_id, "batch_id": "B-99", "quantity": 1},
        ),
        422,
        "unknown_batch",
    ),
    "an unknown programme": (
        lambda w: signed(w, w.chain.alice, "retire", retire_payload("no-such-programme")),
        422,
        "unknown_program",
    ),
    "an ended programme": (
        lambda w: signed(w, w.chain.alice, "retire", retire_payload("ended-programme")),
        422,
        "program_expired",
    ),
    "reinstating an active account": (
        lambda w: signed(
            w,
            w.chain.authority_keys[:2],
            "reinstate_account",
            {"account": w.chain.alice.account_id, "reason": "none"},
            signer=w.chain.authority_id,
        ),
        409,
        "account_not_suspended",
    ),
}


def issue_payload(
    world: World,
    project_id: str,
    *,
    methodology_id: str = "household-electricity",
    period: tuple[str, str] = ("2026-03-01", "2026-04-01"),
) -> dict[str, Any]:
    return {
        "methodology_id": methodology_id,
        "project_id": project_id,
        "period_start": period[0],
        "period_end": period[1],
        "evidence_sha256": "cd" * 32,
        "recipients": [{"account": world.chain.alice.account_id, "quantity": 10}],
    }


def retire_payload(program_id: str) -> dict[str, Any]:
    return {
        "batch_id": "B-1",
        "quantity": 1,
        "beneficiary": "A",
        "purpose": "incentive",
        "program_id": program_id,
    }


@pytest.mark.parametrize("case", list(RULES))
async def test_registry_rules(case: str, client: httpx.AsyncClient, world: World) -> None:
    build, status, code = RULES[case]
    await refused(client, world, build(world), status, code)


# --- 6. reads ---------------------------------------------------------------------------------

READS = {
    "/v1/transactions/" + "g" * 64: (422, "invalid_field"),
    "/v1/accounts/" + "A" * 64: (422, "invalid_field"),
    "/v1/blocks/99999999": (404, "not_found"),
    "/v1/blocks/-1": (422, "invalid_field"),
    "/v1/blocks/" + "9" * 30: (422, "invalid_field"),
    "/v1/proofs/state?key=" + "k" * 5000: (422, "invalid_field"),
    "/v1/batches?limit=0": (422, "invalid_field"),
    "/v1/export?from_height=0": (422, "invalid_field"),
    "/v1/nowhere": (404, "not_found"),
}


@pytest.mark.parametrize("path", list(READS))
async def test_hostile_reads(path: str, client: httpx.AsyncClient, world: World) -> None:
    status, code = READS[path]
    before = head(world.node)
    answer = await client.get(path)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    assert answer.json()["code"] == code
    assert head(world.node) == before
