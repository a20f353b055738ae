"""The hostile input catalogue, consensus messages (issue 7, item 3): one case per attack.

Every case is driven over HTTP (`POST /v1/consensus/messages`, httpx.ASGITransport) against
the real application of a real validator `Node` of a 4-validator genesis. The test holds the
other three keys: three honest `BftProducer`s, joined to the node by a `MemoryNetwork`, which
a driver thread runs (or pauses, so that a case sees one height that cannot move on), and
the key of anyone else.

Two answers, as docs/decisions/0006 and `api.routes.consensus` document them:

- refused at the HTTP edge, the batch whole (nothing of it read): a body that is not a batch of
  wire-form messages (`malformed_message`, naming the line), over the line count
  (`limit_exceeded`) or over the body limit (`payload_too_large`), each an RFC 9457 problem;
- accepted but dropped (202 `{"accepted": <lines>}`): a well-formed message is checked, a
  proposal or decision before it is queued (`BftProducer._authentic`), a vote by the replica,
  and what fails is dropped and counted by why (`BftProducer.dropped()`: `unknown_validator`,
  `bad_signature`, `wrong_chain`, `not_proposer`, `body_mismatch`, `old`, `future`, `known`).

Each case then checks that nothing changed: the same head and state root, the same pool,
no new evidence, nothing waiting in the relay, and the message held nowhere in the quorum.
The flood case counts what the quorum and relay hold against the documented bounds
(consensus/quorum.py: rounds held x validators x a small constant; consensus/relay.py:
REFERENCES_WAITING_MAX) while thousands of far-ahead messages arrive, then sees the node decide
with the honest validators. What tests/consensus proves already at the unit level (the
decoder's refusals, each `verify_*` code, the quorum's bounds under any stream, a forged
reference not taking a waiting place) is driven here end to end, once per attack.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from api.app import create_app
from api.media import PROBLEM_MEDIA_TYPE
from api.node import Node
from api.settings import BODY_BYTES_MAX, Settings  # SPEC §7.2's 4 MiB
from consensus.messages import (
    NO_ROUND,
    Decision,
    Message,
    Proposal,
    Vote,
    encode_message,
    sign_proposal,
    sign_vote,
)
from consensus.node import BftProducer
from consensus.quorum import PRECOMMIT, PREVOTE
from consensus.relay import REFERENCES_WAITING_MAX, encode_lines, encode_reference
from consensus.replica import Replica
from consensus.transport import MESSAGES_PATH, NDJSON, MemoryNetwork
from consensus.wal import WAL_FILE_NAME, SignedLog
from ledger.crypto import FIELD_P, GROUP_L, PrivateKey
from ledger.limits import CONSENSUS_MESSAGES_BATCH_MAX, HEIGHTS_AHEAD_MAX, ROUNDS_AHEAD_MAX
from ledger.proposer import compute_proposer
from ledger.state_transition import build_block
from ledger.store import Store
from tests.consensus.simulation.world import make_world
from tests.consensus.test_node import FAST, LIMIT, document
from tests.factory import CHAIN_ID, key

pytestmark = pytest.mark.anyio

WORLD = make_world(4)
KEYS = WORLD.keys
ME = 0  # the node under test; the test holds KEYS[1:]
STRANGER = key("not-a-validator")
FLOOD_BATCHES = 4  # of CONSENSUS_MESSAGES_BATCH_MAX lines each
# Per (height, round, sender) a quorum holds one proposal and, per vote type, the first vote
# plus nil and a proposed block for an equivocator (consensus/quorum.py).
HELD_PER_SENDER_AND_ROUND = 1 + 2 * 3
WAIT_SECONDS = 20.0


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def wait_until(
    condition: Callable[[], bool], what: str | Callable[[], str], seconds: float = WAIT_SECONDS
) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out waiting for {what if isinstance(what, str) else what()}"
            )
        time.sleep(0.01)


class Cluster:
    """The node under test and three honest producers on a `MemoryNetwork`, which a driver
    thread runs while `running` is set."""

    def __init__(self, root: Path) -> None:
        for index in range(4):
            Store.create(root / str(index), document()).close()
        self.root = root
        self.network = MemoryNetwork()
        self.node = Node(root / str(ME), KEYS[ME])
        producer = self.bft
        producer.transport = self.network.join("node", producer.on_batch)
        self.honest: dict[int, BftProducer] = {}
        self.writers: list[ThreadPoolExecutor] = []
        for index in range(1, 4):
            writer = ThreadPoolExecutor(1)
            self.writers.append(writer)
            honest = BftProducer(
                Store.open(root / str(index)),
                KEYS[index],
                log=SignedLog(
                    root / str(index) / WAL_FILE_NAME,
                    public_key=KEYS[index].public_key_hex,
                    transaction_bytes_max=LIMIT,
                ),
                timeouts=FAST,
                write_executor=writer,
            )
            honest.transport = self.network.join(str(index), honest.on_batch)
            self.honest[index] = honest
        self.running = threading.Event()
        self.stopping = threading.Event()
        self.turn = threading.Lock()  # held while the driver runs the honest producers
        self.driver = threading.Thread(target=self._drive, name="honest", daemon=True)

    @property
    def bft(self) -> BftProducer:
        producer = self.node.producer
        assert isinstance(producer, BftProducer)
        return producer

    @property
    def replica(self) -> Replica:
        return self.bft.replica

    def start(self) -> None:
        self.node.start()
        self.driver.start()
        self.running.set()

    def _drive(self) -> None:
        while not self.stopping.is_set():
            if self.running.is_set():
                with self.turn:
                    for producer in self.honest.values():
                        now_ms = int(time.time() * 1000)
                        while producer.due(now_ms) and producer.produce(now_ms) is not None:
                            pass
            self.stopping.wait(0.005)

    def pause(self) -> None:
        """The honest three stop: the node cannot decide, its height stays."""
        self.running.clear()
        with self.turn:
            pass

        def settled() -> bool:
            """The node took what they sent before, and its last decided block is durable."""
            height = self.replica.height
            time.sleep(0.05)
            return self.replica.height == height == self.node.state.height + 1

        wait_until(settled, "the node to settle")

    def resume(self) -> None:
        self.running.set()

    def close(self) -> None:
        self.stopping.set()
        if self.driver.is_alive():
            self.driver.join(timeout=10)
        self.node.stop()
        for producer in self.honest.values():
            assert producer.transport is not None
            producer.transport.close()
        for writer in self.writers:
            writer.shutdown(wait=True)
        for producer in self.honest.values():
            producer.log.close()
            producer.store.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    built = Cluster(tmp_path_factory.mktemp("hostile-consensus"))
    try:
        built.start()
        wait_until(lambda: built.node.state.height >= 2, "the first blocks")
        yield built
    finally:
        built.close()


@pytest.fixture
def paused(cluster: Cluster) -> Iterator[Cluster]:
    cluster.pause()
    try:
        yield cluster
    finally:
        cluster.resume()


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(data=cluster.root / str(ME))
    app = create_app(cluster.node, settings, manage_node=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as opened:
        yield opened


# --- what the node holds ----------------------------------------------------------------------


def _retry(read: Callable[[], Any]) -> Any:
    """Read the replica's holdings from this thread while the block loop may change them."""
    for _ in range(100):
        try:
            return read()
        except RuntimeError:  # a dict changed size while it was read
            time.sleep(0.001)
    raise AssertionError("the replica's holdings kept changing")


def held_signatures(cluster: Cluster) -> set[str]:
    def read() -> set[str]:
        quorum = cluster.replica.quorum
        found: set[str] = set()
        for held in (quorum.current, quorum.following):
            found.update(p.signature for p in list(held.proposals.values()))
            for votes in list(held.votes.values()):
                for by_key in list(votes.by_hash.values()):
                    found.update(v.signature for v in list(by_key.values()))
        return found

    result: set[str] = _retry(read)
    return result


def held_count(cluster: Cluster) -> tuple[int, int]:
    """Messages the quorum holds for the current height and the next."""

    def read() -> tuple[int, int]:
        quorum = cluster.replica.quorum
        return quorum.current.message_count(), quorum.following.message_count()

    result: tuple[int, int] = _retry(read)
    return result


def held_bound(cluster: Cluster) -> tuple[int, int]:
    """The documented bound on what the quorum may hold (consensus/quorum.py)."""
    n = len(WORLD.validators)
    rounds_current = cluster.replica.round + ROUNDS_AHEAD_MAX + 1
    return (
        rounds_current * n * HELD_PER_SENDER_AND_ROUND,
        (ROUNDS_AHEAD_MAX + 1) * n * HELD_PER_SENDER_AND_ROUND,
    )


def snapshot(cluster: Cluster) -> dict[str, object]:
    """What bad input must not change (with the honest three paused)."""
    state = cluster.node.state
    return {
        "height": state.height,
        "state_root": state.state_root,
        "pending": cluster.bft.pending_count(),
        "evidence": sorted(_retry(lambda: list(cluster.replica.evidence))),
        "waiting": cluster.bft.relay.waiting(),
        "replica height": cluster.replica.height,
    }


def dropped(cluster: Cluster, reason: str) -> int:
    return cluster.bft.dropped().get(reason, 0)


async def post(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await client.post(MESSAGES_PATH, content=body, headers={"content-type": NDJSON})


def lines_of(messages: Sequence[Message]) -> bytes:
    return b"".join(line + b"\n" for line in encode_lines(messages))


async def refused(
    client: httpx.AsyncClient, cluster: Cluster, body: bytes, status: int, code: str
) -> dict[str, Any]:
    """Expect exactly this problem for `body`, and nothing changed."""
    before = snapshot(cluster)
    answer = await post(client, body)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM_MEDIA_TYPE
    problem: dict[str, Any] = answer.json()
    assert problem["code"] == code, problem
    assert problem["type"] == f"urn:tanlian:problem:{code}"
    assert snapshot(cluster) == before
    return problem


async def dropped_as(
    client: httpx.AsyncClient, cluster: Cluster, messages: Sequence[Message], reason: str
) -> None:
    """Expect the batch accepted (it is well-formed), each message dropped by the replica
    for `reason`, and nothing changed: none of them held, no evidence, the same head."""
    before, count = snapshot(cluster), dropped(cluster, reason)
    body = lines_of(messages)
    answer = await post(client, body)
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"accepted": body.count(b"\n")}
    wait_until(
        lambda: dropped(cluster, reason) >= count + len(messages),
        lambda: (
            f"{reason} drops (the replica at height {cluster.replica.height}, round"
            f" {cluster.replica.round}, dropped {cluster.bft.dropped()}, {count} before)"
        ),
    )
    assert snapshot(cluster) == before
    signatures = {m.signature for m in messages if isinstance(m, Vote | Proposal)}
    assert not signatures & held_signatures(cluster)


# --- messages ---------------------------------------------------------------------------------


def a_vote(
    signer: PrivateKey,
    *,
    height: int,
    round: int,
    block_hash: str | None = None,
    vote_type: str = PREVOTE,
    chain_id: str = CHAIN_ID,
) -> Vote:
    return sign_vote(
        signer,
        chain_id=chain_id,
        vote_type=vote_type,
        height=height,
        round=round,
        block_hash=block_hash,
    )


def with_signature(vote: Vote, change: Callable[[bytes], bytes]) -> Vote:
    return dataclasses.replace(vote, signature=change(bytes.fromhex(vote.signature)).hex())


def point(y: int, sign: int = 0) -> bytes:
    return (y | sign << 255).to_bytes(32, "little")


def honest_round(cluster: Cluster, height: int, after: int) -> tuple[int, PrivateKey]:
    """A round from `after` on whose proposer is one of the keys the test holds."""
    validators = cluster.node.state.current_validators()
    for round in range(after, after + len(KEYS)):
        proposer = compute_proposer(validators, height, round)
        if proposer != KEYS[ME].public_key_hex:
            return round, next(k for k in KEYS if k.public_key_hex == proposer)
    raise AssertionError("the node proposes every round")


def a_proposal(
    cluster: Cluster, *, signer: PrivateKey | None = None, chain_id: str = CHAIN_ID
) -> Proposal:
    """A proposal of the node's height, by the proposer of a round the node is not (or by
    `signer`), carrying a block the node would build now."""
    replica = cluster.replica
    round, proposer = honest_round(cluster, replica.height, replica.round + 1)
    block = build_block(
        replica.state,
        [],
        time=replica.state.head_time + 1,
        proposer=proposer.public_key_hex,
        last_commit=replica.last_certificate,
    ).block
    return sign_proposal(
        signer or proposer,
        chain_id=chain_id,
        height=replica.height,
        round=round,
        valid_round=NO_ROUND,
        block=block,
    )


# --- 1. who signed it -------------------------------------------------------------------------


async def test_a_vote_by_a_key_that_is_not_a_validator(
    client: httpx.AsyncClient, paused: Cluster
) -> None:
    replica = paused.replica
    votes = [
        a_vote(STRANGER, height=replica.height, round=replica.round, vote_type=vote_type)
        for vote_type in (PREVOTE, PRECOMMIT)
    ]
    await dropped_as(client, paused, votes, "unknown_validator")


async def test_a_proposal_by_a_key_that_is_not_its_proposer(
    client: httpx.AsyncClient, paused: Cluster
) -> None:
    await dropped_as(client, paused, [a_proposal(paused, signer=STRANGER)], "not_proposer")


# --- 2. signatures ----------------------------------------------------------------------------

BAD_SIGNATURES: dict[str, Callable[[bytes], bytes]] = {
    "a flipped bit": lambda s: bytes([s[0] ^ 1]) + s[1:],
    "S not reduced (S + L)": (
        lambda s: s[:32] + (int.from_bytes(s[32:], "little") + GROUP_L).to_bytes(32, "little")
    ),
    "S = L exactly": lambda s: s[:32] + GROUP_L.to_bytes(32, "little"),
    "R the identity (small order)": lambda s: point(1) + s[32:],
    "R of order 2 (y = -1)": lambda s: point(FIELD_P - 1) + s[32:],
    "R non-canonical (y = p + 1)": lambda s: point(FIELD_P + 1) + s[32:],
}


@pytest.mark.parametrize("case", list(BAD_SIGNATURES))
async def test_a_validators_vote_with_a_bad_signature(
    case: str, client: httpx.AsyncClient, paused: Cluster
) -> None:
    replica = paused.replica
    # For a block nobody proposed, as in test_signatures_over_another_chain: never a copy.
    genuine = a_vote(KEYS[1], height=replica.height, round=replica.round + 1, block_hash="ab" * 32)
    forged = with_signature(genuine, BAD_SIGNATURES[case])
    await dropped_as(client, paused, [forged], "bad_signature")


async def test_a_proposal_with_a_flipped_signature_bit(
    client: httpx.AsyncClient, paused: Cluster
) -> None:
    genuine = a_proposal(paused)
    signature = bytes.fromhex(genuine.signature)
    forged = dataclasses.replace(
        genuine, signature=(bytes([signature[0] ^ 1]) + signature[1:]).hex()
    )
    await dropped_as(client, paused, [forged], "not_proposer")


@pytest.mark.parametrize(
    "public_key",
    [point(1), point(FIELD_P - 1), point(FIELD_P + 1), point(2)],
    ids=[
        "the identity (small order)",
        "order 2 (y = -1)",
        "non-canonical (y = p + 1)",
        "no curve point (y = 2)",
    ],
)
async def test_a_vote_under_a_small_order_or_non_canonical_key(
    public_key: bytes, client: httpx.AsyncClient, paused: Cluster
) -> None:
    replica = paused.replica
    genuine = a_vote(KEYS[1], height=replica.height, round=replica.round + 1)
    forged = dataclasses.replace(genuine, public_key=public_key.hex())
    # Refused as it is parsed, before any lookup or signature check (SPEC §2.3).
    problem = await refused(
        client, paused, encode_message(forged) + b"\n", 400, "malformed_message"
    )
    assert "not a canonical Ed25519 curve point of large order" in problem["detail"]


async def test_a_signature_of_the_wrong_length(client: httpx.AsyncClient, paused: Cluster) -> None:
    replica = paused.replica
    genuine = a_vote(KEYS[1], height=replica.height, round=replica.round)
    for change in (lambda s: s[:63], lambda s: s + b"\x00"):
        body = encode_message(with_signature(genuine, change)) + b"\n"
        problem = await refused(client, paused, body, 400, "malformed_message")
        assert problem["detail"].startswith("line 1:")


async def test_signatures_over_another_chain(client: httpx.AsyncClient, paused: Cluster) -> None:
    replica = paused.replica
    # For a block nobody proposed: a nil prevote of validator 1 in this round is a copy of
    # one it may have sent when the round timed out (the quorum holds the value, not the
    # bytes), dropped as `known` before any check; found by CI on a loaded machine.
    vote = a_vote(
        KEYS[1],
        height=replica.height,
        round=replica.round,
        block_hash="ab" * 32,
        chain_id="other-chain",
    )
    proposal = a_proposal(paused, chain_id="other-chain")
    await dropped_as(client, paused, [vote, proposal], "wrong_chain")


# --- 3. the bytes -----------------------------------------------------------------------------


def vote_line(cluster: Cluster) -> bytes:
    """A well-formed line: a stranger's vote (dropped if it were ever read)."""
    replica = cluster.replica
    return encode_message(a_vote(STRANGER, height=replica.height, round=replica.round))


def member(line: bytes, name: str, value: bytes) -> bytes:
    """`line` with the integer member `name` set to the raw JSON `value`."""
    changed, count = re.subn(
        rb'"%s":\d+' % name.encode(), b'"%s":%s' % (name.encode(), value), line
    )
    assert count == 1
    return changed + b"\n"


MALFORMED: dict[str, Callable[[bytes], bytes]] = {
    "not JSON": lambda line: b"not json\n",
    "truncated JSON": lambda line: line[:-5] + b"\n",
    "a duplicate key": lambda line: line[:-1] + b',"round":0}\n',
    "an unknown field": lambda line: line[:-1] + b',"extra":1}\n',
    "a missing field": lambda line: re.sub(rb'"round":\d+,', b"", line) + b"\n",
    "invalid UTF-8": lambda line: line.replace(b'"prevote"', b'"prev\xffote"') + b"\n",
    "a float": lambda line: member(line, "round", b"0.5"),
    "an exponent": lambda line: member(line, "round", b"1e2"),
    "negative zero": lambda line: member(line, "round", b"-0"),
    "a negative round": lambda line: member(line, "round", b"-2"),
    "a height over 2^53": lambda line: member(line, "height", b"9007199254740993"),
    "a string for a number": lambda line: member(line, "height", b'"1"'),
    "nesting deeper than 8": lambda line: b"[" * 9 + b"]" * 9 + b"\n",
    "an array, not an object": lambda line: b"[" + line + b"]\n",
    "trailing data": lambda line: line + b" {}\n",
    "a chain id of 100 KiB": lambda line: (
        line.replace(b'"chain_id":"', b'"chain_id":"' + b"x" * (100 * 1024)) + b"\n"
    ),
    "a line of a mebibyte": lambda line: (
        line.replace(b'"chain_id":"', b'"chain_id":"' + b"x" * (1024 * 1024)) + b"\n"
    ),
    "an empty line between two": lambda line: line + b"\n\n" + line + b"\n",
    "an empty body": lambda line: b"",
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_lines(case: str, client: httpx.AsyncClient, paused: Cluster) -> None:
    body = MALFORMED[case](vote_line(paused))
    if len(body) > BODY_BYTES_MAX:
        await refused(client, paused, body, 413, "payload_too_large")
    else:
        await refused(client, paused, body, 400, "malformed_message")


async def test_one_bad_line_refuses_the_whole_batch_naming_it(
    client: httpx.AsyncClient, paused: Cluster
) -> None:
    count = dropped(paused, "unknown_validator")
    line = vote_line(paused)
    problem = await refused(
        client, paused, line + b"\n{}\n" + line + b"\n", 400, "malformed_message"
    )
    assert problem["detail"].startswith("line 2:")
    # The good lines were not read: one such line alone, sent after, is counted once, and
    # the refused batch's two lines not at all.
    answer = await post(client, line + b"\n")
    assert answer.status_code == 202
    wait_until(lambda: dropped(paused, "unknown_validator") > count, "the line after")
    assert dropped(paused, "unknown_validator") == count + 1


async def test_too_many_lines(client: httpx.AsyncClient, paused: Cluster) -> None:
    body = (vote_line(paused) + b"\n") * (CONSENSUS_MESSAGES_BATCH_MAX + 1)
    assert len(body) <= BODY_BYTES_MAX
    await refused(client, paused, body, 422, "limit_exceeded")


async def test_a_body_over_the_limit(client: httpx.AsyncClient, paused: Cluster) -> None:
    line = vote_line(paused) + b"\n"
    body = line * (BODY_BYTES_MAX // len(line) + 1)
    await refused(client, paused, body, 413, "payload_too_large")

    async def streamed() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(BODY_BYTES_MAX // 65536 + 2):
            yield b" " * 65536

    before = snapshot(paused)
    answer = await client.post(MESSAGES_PATH, content=streamed(), headers={"content-type": NDJSON})
    assert answer.status_code == 413 and answer.json()["code"] == "payload_too_large"
    assert answer.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert snapshot(paused) == before


async def test_a_proposal_whose_body_is_not_the_one_its_header_commits_to(
    client: httpx.AsyncClient, paused: Cluster
) -> None:
    """The proposer's signature covers the block hash (the header) alone: the same signature
    with another body must not take the proposal's slot."""
    genuine = a_proposal(paused)
    block = genuine.block
    other = dataclasses.replace(block, transactions=(*block.transactions, WORLD.workload[0]))
    forged = Proposal(
        chain_id=genuine.chain_id,
        height=genuine.height,
        round=genuine.round,
        valid_round=genuine.valid_round,
        block=other,
        block_hash=other.block_hash(),
        signature=genuine.signature,
    )
    assert forged.block_hash == genuine.block_hash  # the header is unchanged
    # Sent whole (one line), not by reference: the relay refuses a reference of this kind
    # itself (tests/consensus/test_node.py).
    before = dropped(paused, "body_mismatch")
    answer = await post(client, encode_message(forged) + b"\n")
    assert answer.status_code == 202 and answer.json() == {"accepted": 1}
    wait_until(lambda: dropped(paused, "body_mismatch") > before, "the drop")
    assert forged.signature not in held_signatures(paused)


# --- 4. replays -------------------------------------------------------------------------------


async def test_replayed_messages_of_decided_heights_are_ignored(
    client: httpx.AsyncClient, paused: Cluster
) -> None:
    reader = paused.node.reader()
    decided = paused.node.state.height
    replayed: list[Message] = []
    for height in range(1, decided + 1):
        block = reader.read_block(height)
        certificate = reader.read_certificate(height)
        replayed.append(Decision(block=block, certificate=certificate))
        replayed.extend(
            Vote(
                chain_id=certificate.chain_id,
                vote_type=PRECOMMIT,
                height=certificate.height,
                round=certificate.round,
                block_hash=certificate.block_hash,
                public_key=public_key,
                signature=signature,
            )
            for public_key, signature in certificate.signatures
        )
    await dropped_as(client, paused, replayed, "old")


async def test_a_replayed_vote_of_the_current_height_counts_once(
    client: httpx.AsyncClient, paused: Cluster
) -> None:
    def held_votes() -> list[Vote]:
        quorum = paused.replica.quorum.current
        return [
            vote
            for votes in list(quorum.votes.values())
            for vote in list(votes.first.values())
            if vote.public_key != KEYS[ME].public_key_hex
        ]

    for _ in range(100):  # pause where the node holds a peer's vote of its height
        if votes := _retry(held_votes):
            break
        paused.resume()
        time.sleep(0.02)
        paused.pause()
    vote = votes[0]
    before, count = snapshot(paused), held_count(paused)
    answer = await post(client, (encode_message(vote) + b"\n") * 3)
    assert answer.status_code == 202 and answer.json() == {"accepted": 3}
    wait_until(lambda: dropped(paused, "known") >= 3, "the copies dropped")
    assert snapshot(paused) == before
    assert held_count(paused)[0] <= count[0] + 1  # the node's own vote may have come since


# --- 5. far ahead, in a flood -----------------------------------------------------------------


FAR: Final = 1000  # heights ahead that the chain cannot reach while the test runs


def flood(cluster: Cluster, batch: int) -> tuple[list[Message], int]:
    """CONSENSUS_MESSAGES_BATCH_MAX messages beyond what a quorum holds: votes of validators
    and of a stranger at far heights, and at far rounds of this height and the next; and how
    many of them stay beyond it however far the chain moves meanwhile."""
    height, round = cluster.replica.height, cluster.replica.round
    messages: list[Message] = []
    for i in range(CONSENSUS_MESSAGES_BATCH_MAX // 4):
        signer = KEYS[1 + i % 3] if i % 2 else STRANGER
        offset = batch * CONSENSUS_MESSAGES_BATCH_MAX + i
        messages.append(a_vote(signer, height=height + FAR + offset, round=0))
        messages.append(a_vote(signer, height=height + 10**9 + offset, round=offset))
        messages.append(
            a_vote(signer, height=height, round=round + ROUNDS_AHEAD_MAX + FAR + offset)
        )
        messages.append(
            a_vote(
                signer,
                height=height + HEIGHTS_AHEAD_MAX,
                round=ROUNDS_AHEAD_MAX + FAR + offset,
                vote_type=PRECOMMIT,
                block_hash="aa" * 32,
            )
        )
    return messages, len(messages) // 2


def far_proposals(cluster: Cluster, count: int) -> list[Proposal]:
    """Proposals of heights the chain cannot reach while the test runs, each signed by a
    validator, whose blocks carry a transaction the node never hears of."""
    base = a_proposal(cluster).block
    proposals = []
    for i in range(count):
        height = cluster.replica.height + FAR + i
        block = dataclasses.replace(
            base,
            header=dataclasses.replace(base.header, height=height),
            transactions=WORLD.workload[-1:],  # signed by names no one here uses
        )
        proposals.append(
            sign_proposal(
                KEYS[1 + i % 3],
                chain_id=CHAIN_ID,
                height=height,
                round=i,
                valid_round=NO_ROUND,
                block=block,
            )
        )
    return proposals


class Sampler:
    """What the node's quorum and relay hold, read every few milliseconds on a thread of its
    own while a flood arrives: the largest counts seen, and any over the bounds."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.peak = (0, 0)
        self.waiting_peak = 0
        self.over: list[tuple[tuple[int, int], tuple[int, int]]] = []
        self.samples = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _run(self) -> None:
        while not self.stopping.is_set():
            held, bound = held_count(self.cluster), held_bound(self.cluster)
            if held[0] > bound[0] or held[1] > bound[1]:
                self.over.append((held, bound))
            self.peak = (max(self.peak[0], held[0]), max(self.peak[1], held[1]))
            self.waiting_peak = max(self.waiting_peak, self.cluster.bft.relay.waiting())
            self.samples += 1
            time.sleep(0.002)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)


async def test_a_flood_of_far_ahead_messages_holds_nothing_and_the_chain_goes_on(
    client: httpx.AsyncClient, cluster: Cluster
) -> None:
    start = cluster.node.state.height
    # Far ahead, or a stranger's (refused before it is queued): not held.
    future_before = dropped(cluster, "future") + dropped(cluster, "unknown_validator")
    sent, beyond = 0, 0
    signatures: set[str] = set()
    with Sampler(cluster) as sampler:
        for batch in range(FLOOD_BATCHES):
            messages, far = flood(cluster, batch)
            answer = await post(client, lines_of(messages))
            assert answer.status_code == 202 and answer.json() == {"accepted": len(messages)}
            sent, beyond = sent + len(messages), beyond + far
            signatures.update(m.signature for m in messages if isinstance(m, Vote))
        # Far proposals by reference whose transactions never come: not kept waiting (only
        # the next two heights' are, bounded: tests/consensus/test_relay.py).
        proposals = far_proposals(cluster, 3 * REFERENCES_WAITING_MAX)
        body = b"".join(encode_reference(p) + b"\n" for p in proposals)
        answer = await post(client, body)
        assert answer.status_code == 202 and answer.json() == {"accepted": len(proposals)}
        # ... and the same proposals whole: far ahead, refused unread.
        answer = await post(client, b"".join(encode_message(p) + b"\n" for p in proposals))
        assert answer.status_code == 202 and answer.json() == {"accepted": len(proposals)}
        sent, beyond = sent + len(proposals), beyond + len(proposals)
        signatures.update(p.signature for p in proposals)
        # The honest validators' messages come after the flood's: once three more blocks
        # are decided, the flood has been read.
        wait_until(lambda: cluster.node.state.height >= start + 3, "three more blocks")
    assert sampler.samples > 10 and not sampler.over, sampler.over
    assert 0 < sum(sampler.peak) < sent // 20, (sampler.peak, sent)  # the honest ones only
    assert sampler.waiting_peak == 0
    future = dropped(cluster, "future") + dropped(cluster, "unknown_validator")
    assert future + cluster.bft.messages_dropped >= future_before + beyond, cluster.bft.dropped()
    assert not signatures & held_signatures(cluster)
    metrics = (await client.get("/metrics")).text
    seen = {
        line.split('"')[1]: float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("tanlian_consensus_messages_dropped{")
    }
    assert seen["future"] + seen["unknown_validator"] + seen["inbox_full"] >= beyond, seen


# --- 6. equivocation --------------------------------------------------------------------------


async def test_two_votes_of_one_validator_for_one_slot_become_evidence_in_the_state(
    client: httpx.AsyncClient, cluster: Cluster
) -> None:
    """The test plays validator 3 Byzantine: two prevotes of one round, for two blocks. The
    node holds the pair as evidence, proposes it in its next block, and the state records
    it (SPEC §5.4: `evidence/<validator>/<height>`). Last in this module: it changes state."""
    cluster.pause()
    try:
        replica = cluster.replica
        height, round = replica.height, replica.round + ROUNDS_AHEAD_MAX
        byzantine = KEYS[3]
        pair = [
            a_vote(byzantine, height=height, round=round, block_hash=block_hash)
            for block_hash in ("aa" * 32, "bb" * 32)
        ]
        answer = await post(client, lines_of(pair))
        assert answer.status_code == 202 and answer.json() == {"accepted": 2}
        slot = f"evidence/{byzantine.public_key_hex}/{height}"
        wait_until(lambda: slot in _retry(lambda: list(cluster.replica.evidence)), "evidence")
    finally:
        cluster.resume()
    wait_until(lambda: cluster.node.state.get(slot) is not None, "the evidence recorded")
