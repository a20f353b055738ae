"""Blocks by reference and forwarded transactions on the wire (consensus.relay).

A proposal or decision travels as its block's transactions, then the message with the block's
transactions named by leaf hash; the receiver completes it from what it holds, skips lines it
holds already without parsing them, and waits (bounded) for what is missing. A block larger
than a request body travels in bodies within the limit.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

import pytest

from consensus.messages import (
    Decision,
    MalformedMessage,
    Message,
    Proposal,
    encode_message,
    sign_proposal,
)
from consensus.relay import (
    DecisionRef,
    ProposalRef,
    Relay,
    complete,
    decode_batch,
    encode_lines,
)
from consensus.transport import batches
from ledger.blocks import Block, sign_certificate
from ledger.crypto import PrivateKey
from ledger.errors import LedgerError
from ledger.limits import CONSENSUS_BATCH_BYTES_MAX, CONSENSUS_MESSAGES_BATCH_MAX
from ledger.merkle import leaf_hash
from ledger.state_transition import check_block_body
from ledger.transactions import Envelope, Transaction, sign_transaction
from tests.consensus.test_replica import KEYS, WORLD, block, proposal, vote
from tests.factory import CHAIN_ID

LIMIT = 16384


def nothing(leaf: bytes) -> bool:
    return False


def missing(leaf: bytes) -> Envelope | None:
    return None


def held_in(envelopes: tuple[Envelope, ...] | list[Envelope]) -> dict[bytes, Envelope]:
    return {leaf_hash(e.leaf): e for e in envelopes}


def large_issue(signer: PrivateKey, nonce: int) -> Envelope:
    """An issue of about 15 KiB (170 recipients): not valid on any ledger here, and the relay
    does not care."""
    recipients = [{"account": f"{nonce:08x}{i:056x}", "quantity": 1} for i in range(170)]
    transaction = Transaction(
        chain_id=CHAIN_ID,
        type="issue",
        signer=signer.account_id,
        nonce=nonce,
        payload={
            "methodology_id": "household-electricity",
            "project_id": f"meter-{nonce}",
            "period_start": "2026-01-01",
            "period_end": "2026-02-01",
            "evidence_sha256": "ab" * 32,
            "recipients": recipients,
        },
    )
    return sign_transaction(transaction, [signer])


def test_a_proposal_travels_as_its_transactions_then_by_reference() -> None:
    sent = proposal(0, block())
    lines = encode_lines([sent])
    assert lines[:-1] == [e.leaf for e in sent.block.transactions]
    assert len(lines[-1]) < len(encode_message(sent))
    batch = decode_batch(b"\n".join(lines), transaction_bytes_max=LIMIT, known=nothing)
    assert batch.lines == len(lines)
    assert list(batch.envelopes) == list(sent.block.transactions)
    (reference,) = batch.messages
    assert isinstance(reference, ProposalRef)
    rebuilt = complete(reference, held_in(batch.envelopes).get)
    assert isinstance(rebuilt, Proposal)
    assert encode_message(rebuilt) == encode_message(sent)


def test_a_decision_travels_by_reference_too_and_votes_as_themselves() -> None:
    decided = block()
    certificate = sign_certificate(
        chain_id=CHAIN_ID, height=1, round=0, block_hash=decided.block_hash(), keys=KEYS[:3]
    )
    sent: list[Message] = [
        vote(0, "prevote", 0, None),
        Decision(block=decided, certificate=certificate),
    ]
    batch = decode_batch(
        b"\n".join(encode_lines(sent)) + b"\n", transaction_bytes_max=LIMIT, known=nothing
    )
    first, reference = batch.messages
    assert first == sent[0] and isinstance(reference, DecisionRef)
    rebuilt = complete(reference, held_in(batch.envelopes).get)
    assert rebuilt is not None and encode_message(rebuilt) == encode_message(sent[1])
    assert complete(reference, missing) is None  # a transaction missing: not yet


def test_lines_the_receiver_holds_are_skipped_unparsed() -> None:
    sent = proposal(0, block())
    lines = encode_lines([sent])
    asked: list[bytes] = []

    def known(leaf: bytes) -> bool:
        asked.append(leaf)
        return True

    # A line that would not even parse is never looked at once its leaf hash is held.
    garbage = b'{"signatures": not json'
    batch = decode_batch(b"\n".join([*lines, garbage]), transaction_bytes_max=LIMIT, known=known)
    assert batch.envelopes == ()
    assert asked == [leaf_hash(line) for line in [*lines[:-1], garbage]]
    (reference,) = batch.messages
    assert isinstance(reference, ProposalRef)


def test_a_bad_line_refuses_the_batch_naming_it() -> None:
    good = encode_lines([vote(0, "prevote", 0, None)])[0]
    for body, code, where in (
        (good + b"\n" + b'{"tx": {}, "signatures": []}', "malformed_message", "line 2:"),
        (good + b"\n" + b'{"block_ref": {}, "certificate": {}}', "malformed_message", "line 2:"),
        (b"\n", "malformed_message", "line 1:"),
        (b"", "malformed_message", "an empty batch"),
        (good + b"\n" + b"[1, 2]", "malformed_message", "line 2:"),
    ):
        with pytest.raises(MalformedMessage) as refused:
            decode_batch(body, transaction_bytes_max=LIMIT, known=nothing)
        assert refused.value.code == code and refused.value.message.startswith(where)
    with pytest.raises(MalformedMessage) as refused:
        decode_batch(
            b"{}\n" * (CONSENSUS_MESSAGES_BATCH_MAX + 1), transaction_bytes_max=LIMIT, known=nothing
        )
    assert refused.value.code == "limit_exceeded"


def test_a_block_larger_than_a_request_body_arrives_whole() -> None:
    signer = KEYS[3]
    transactions = tuple(large_issue(signer, n) for n in range(1, 300))
    assert all(len(e.leaf) <= LIMIT for e in transactions)
    big = dataclasses.replace(block(), transactions=transactions)
    sent = sign_proposal(KEYS[0], chain_id=CHAIN_ID, height=1, round=0, valid_round=-1, block=big)
    assert len(encode_message(sent)) > 4 * 1024 * 1024  # once a single line
    bodies = batches(encode_lines([sent]))
    assert len(bodies) >= 2
    assert all(len(body) <= CONSENSUS_BATCH_BYTES_MAX for body in bodies)
    relay = Relay(held_max=1000)
    received: list[Message] = []
    for body in bodies:
        batch = decode_batch(body, transaction_bytes_max=LIMIT, known=nothing)
        for envelope in batch.envelopes:
            relay.hold(envelope, verified=True)
        received += relay.receive(batch.messages, relay.lookup, height_min=1)
    (rebuilt,) = received
    assert isinstance(rebuilt, Proposal)
    assert encode_message(rebuilt) == encode_message(sent)


def test_a_reference_waits_for_its_transactions_within_bounds() -> None:
    value: Block = block()
    lines = encode_lines([proposal(0, value)])
    reference_only = decode_batch(lines[-1], transaction_bytes_max=LIMIT, known=nothing)
    relay = Relay(held_max=2, waiting_max=1)
    assert relay.receive(reference_only.messages, relay.lookup, height_min=1) == []
    assert relay.waiting() == 1
    # The transactions come later: the waiting proposal is ready once the last is held.
    for envelope in value.transactions[:-1]:
        relay.hold(envelope, verified=True)
    assert relay.receive([], relay.lookup, height_min=1) == []
    envelopes = held_in(value.transactions)
    (ready,) = relay.receive([], envelopes.get, height_min=1)
    assert isinstance(ready, Proposal) and ready.block_hash == value.block_hash()
    assert relay.waiting() == 0
    # Held envelopes are bounded: the least recently held go first.
    relay.hold(value.transactions[-1], verified=True)
    assert [relay.lookup(leaf_hash(e.leaf)) for e in value.transactions] == [
        None,
        *value.transactions[1:],
    ]
    # Waiting references are bounded (the newest kept) and dropped once their height is done.
    later = decode_batch(
        encode_lines([proposal(1, value)])[-1], transaction_bytes_max=LIMIT, known=nothing
    )
    relay.receive(reference_only.messages, missing, height_min=1)
    relay.receive(later.messages, missing, height_min=1)
    assert relay.waiting() == 1
    relay.receive([], missing, height_min=2)
    assert relay.waiting() == 0
    assert relay.receive(reference_only.messages, missing, height_min=2) == []
    assert relay.waiting() == 0  # below the height decided here: not kept


class Bounded(OrderedDict[Any, Any]):
    """An OrderedDict that fails the moment it holds more than `bound` entries."""

    def __init__(self, bound: int) -> None:
        super().__init__()
        self.bound = bound

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        assert len(self) <= self.bound, f"{len(self)} held, at most {self.bound}"


def test_the_holdings_never_exceed_their_bounds_even_for_a_moment() -> None:
    """`waiting()` is read without the relay's lock (the node's metrics, the hostile-flood
    test's sampler thread), so the bound must hold at every instant, not only once `receive`
    or `hold` returns: the oldest goes before the newest comes (a sampler once saw 17 of 16)."""
    value: Block = block()
    relay = Relay(held_max=2, waiting_max=2)
    relay._waiting = Bounded(2)  # the invariant is about these very dicts
    relay._held = Bounded(2)
    for round_ in range(5):
        lines = encode_lines([proposal(round_, value)])
        reference = decode_batch(lines[-1], transaction_bytes_max=LIMIT, known=nothing)
        relay.receive(reference.messages, missing, height_min=1)
    assert relay.waiting() == 2
    for envelope in value.transactions:
        relay.hold(envelope, verified=True)
    assert [relay.lookup(leaf_hash(e.leaf)) for e in value.transactions[-2:]] == list(
        value.transactions[-2:]
    )


def test_a_forged_reference_does_not_take_the_waiting_place_of_the_real_one() -> None:
    """The genuine signature with other leaf hashes (here: fewer) is refused by the body
    check a node passes (`refuses`); without it the newer reference would replace the one
    waiting for its transactions."""
    value = block()
    genuine = proposal(0, value)
    forged = dataclasses.replace(
        genuine, block=dataclasses.replace(value, transactions=value.transactions[:1])
    )

    def by_reference(message: Proposal) -> tuple[Message | ProposalRef | DecisionRef, ...]:
        line = encode_lines([message])[-1]
        return decode_batch(line, transaction_bytes_max=LIMIT, known=nothing).messages

    def refuses(reference: ProposalRef | DecisionRef) -> bool:
        try:
            check_block_body(
                WORLD.genesis, reference.block.skeleton, leaf_hashes=reference.block.leaf_hashes
            )
        except LedgerError:
            return True
        return False

    relay = Relay(held_max=10, waiting_max=4)
    assert relay.receive(by_reference(genuine), missing, height_min=1, refuses=refuses) == []
    assert relay.receive(by_reference(forged), missing, height_min=1, refuses=refuses) == []
    assert relay.waiting() == 1
    (ready,) = relay.receive([], held_in(value.transactions).get, height_min=1, refuses=refuses)
    assert isinstance(ready, Proposal) and ready.block == value


def test_only_the_same_leaf_counts_as_verified() -> None:
    value = block()
    relay = Relay(held_max=10)
    checked, unchecked = value.transactions[0], value.transactions[1]
    relay.hold(checked, verified=True)
    relay.hold(unchecked, verified=False)
    assert relay.verified(checked)
    assert not relay.verified(unchecked)
    assert not relay.verified(value.transactions[2])  # never held


def test_a_reference_waits_only_for_the_next_two_heights() -> None:
    """Found by review: references for a far height never expired and were looked at again
    on every batch. One for the height after next is not kept waiting."""
    value = block()  # of height 1: height_min, then height_min + 1, then height_min + 2
    for height_min, waits in ((1, True), (0, True), (-1, False)):
        relay = Relay(held_max=10, waiting_max=4)
        line = encode_lines([proposal(0, value)])[-1]  # the block is of height 1
        reference = decode_batch(line, transaction_bytes_max=LIMIT, known=nothing)
        relay.receive(reference.messages, missing, height_min=height_min)
        assert relay.waiting() == (1 if waits else 0), height_min


def test_a_waiting_reference_is_searched_again_from_where_it_stopped() -> None:
    """Found by review: a reference listing thousands of held leaves and then one unknown
    was walked whole on every batch, a thousandfold slowdown of every peer's batch."""
    value = block(transactions=3)
    line = encode_lines([proposal(0, value)])[-1]
    reference = decode_batch(line, transaction_bytes_max=LIMIT, known=nothing)
    held = held_in(value.transactions[:-1])
    looked: list[bytes] = []

    def lookup(leaf: bytes) -> Envelope | None:
        looked.append(leaf)
        return held.get(leaf)

    relay = Relay(held_max=10)
    assert relay.receive(reference.messages, lookup, height_min=1) == []
    looked.clear()
    assert relay.receive([], lookup, height_min=1) == []
    assert looked == [leaf_hash(value.transactions[-1].leaf)]  # only the one it lacks
    held.update(held_in(value.transactions))
    (ready,) = relay.receive([], lookup, height_min=1)
    assert isinstance(ready, Proposal) and ready.block_hash == value.block_hash()
