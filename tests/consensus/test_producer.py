"""The single-validator producer: pool to certified, stored block (SPEC §5.2, §5.3).

Each test runs a real store in a temporary directory and checks what the producer returns
against what the store holds and what an independent replay (`apply_block`) accepts.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from consensus.producer import CommittedBlock, SoloProducer
from ledger.blocks import Validator, parse_block, verify_certificate
from ledger.crypto import verify_signature
from ledger.errors import LedgerError
from ledger.evidence import vote_bytes
from ledger.genesis import genesis_state, make_genesis_document
from ledger.state_transition import apply_block
from ledger.store import Store
from ledger.transactions import Envelope, Signature
from ledger.verification import audit_chain
from tests.factory import CHAIN_ID, GENESIS_TIME, Chain, key

PROGRAM = "zibo-green-home"
T1 = GENESIS_TIME + 1000


@pytest.fixture
def chain() -> Chain:
    return Chain()


@pytest.fixture
def store(tmp_path: Path, chain: Chain) -> Iterator[Store]:
    opened = Store.create(tmp_path, chain.genesis_document)
    yield opened
    opened.close()


@pytest.fixture
def producer(store: Store, chain: Chain) -> SoloProducer:
    return SoloProducer(store, chain.validator)


def setup_envelopes(chain: Chain) -> list[Envelope]:
    return [
        chain.accredit(),
        chain.create_program(PROGRAM),
        chain.issue([(chain.alice, 1000), (chain.bob, 500)]),
    ]


def produced(producer: SoloProducer, now_ms: int) -> CommittedBlock:
    result = producer.produce(now_ms)
    assert result is not None
    return result


def transfer(chain: Chain, quantity: int, *, nonce: int | None = None) -> Envelope:
    return chain.tx(
        chain.alice,
        "transfer",
        {"to": chain.carol.account_id, "batch_id": "B-1", "quantity": quantity},
        nonce=nonce,
    )


# --- committing ---------------------------------------------------------------------------------


def test_commits_submitted_transactions_with_a_one_of_one_certificate(
    producer: SoloProducer, store: Store, chain: Chain
) -> None:
    envelopes = setup_envelopes(chain)
    answers = producer.submit(envelopes)
    assert [(a.tx_id, a.status) for a in answers] == [(e.tx_id, "pending") for e in envelopes]
    assert producer.pending_count() == 3

    result = produced(producer, T1)
    block, certificate = result.block, result.certificate
    assert block.height == 1 and block.transactions == tuple(envelopes)
    assert block.header.proposer == chain.validator.public_key_hex
    assert producer.pending_count() == 0
    # SPEC §5.3: exactly these fields, one precommit signature by the only validator.
    document = certificate.to_json()
    assert set(document) == {"chain_id", "height", "round", "block_hash", "signatures"}
    assert (document["chain_id"], document["height"], document["round"]) == (CHAIN_ID, 1, 0)
    assert document["block_hash"] == block.block_hash()
    assert document["signatures"] == [
        {"public_key": chain.validator.public_key_hex, "signature": certificate.signatures[0][1]}
    ]
    verify_certificate(
        certificate,
        chain_id=CHAIN_ID,
        height=1,
        block_hash=block.block_hash(),
        validators=genesis_state(chain.genesis).current_validators(),
    )
    signed = vote_bytes(
        chain_id=CHAIN_ID, vote_type="precommit", height=1, round=0, block_hash=block.block_hash()
    )
    verify_signature(
        chain.validator.public_key, signed, bytes.fromhex(certificate.signatures[0][1])
    )
    # The block is stored with its certificate, and replays on the genesis state.
    assert store.head_height == 1
    assert store.read_block(1) == block
    assert store.read_certificate(1) == certificate
    replayed = apply_block(genesis_state(chain.genesis), block)
    assert replayed.state_root == producer.state.state_root == block.header.state_root

    # The next block carries this certificate as its last commit.
    following = transfer(chain, 10)
    producer.submit([following])
    second = produced(producer, T1 + 1000)
    assert second.block.last_commit == certificate
    assert second.block.header.last_commit_hash == certificate.certificate_hash()
    assert second.block.header.parent_hash == block.block_hash()
    assert apply_block(replayed, second.block).state_root == second.block.header.state_root


def test_outcomes_record_height_and_log_index(producer: SoloProducer, chain: Chain) -> None:
    envelopes = setup_envelopes(chain)
    producer.submit(envelopes)
    first = produced(producer, T1)
    expected = [("committed", 1, index) for index in range(3)]
    assert [(o.status, o.height, o.log_index) for o in first.outcomes] == expected
    assert [o.tx_id for o in first.outcomes] == [e.tx_id for e in envelopes]
    later = [transfer(chain, 1), transfer(chain, 2)]
    producer.submit(later)
    produced(producer, T1 + 1000)
    for envelope, (status, height, index) in zip(
        envelopes + later, [*expected, ("committed", 2, 3), ("committed", 2, 4)], strict=True
    ):
        outcome = producer.outcomes[envelope.tx_id]
        assert (outcome.status, outcome.height, outcome.log_index) == (status, height, index)
        assert outcome.code is None


def test_a_failing_transaction_is_rejected_with_its_code(
    producer: SoloProducer, store: Store, chain: Chain
) -> None:
    producer.submit(setup_envelopes(chain))
    produced(producer, T1)
    too_much = transfer(chain, 5000)
    fine = chain.tx(
        chain.bob, "transfer", {"to": chain.carol.account_id, "batch_id": "B-1", "quantity": 5}
    )
    producer.submit([too_much, fine])
    result = produced(producer, T1 + 1000)
    assert result.block.transactions == (fine,)
    rejected = [o for o in result.outcomes if o.status == "rejected"]
    assert [(o.tx_id, o.code) for o in rejected] == [(too_much.tx_id, "insufficient_credits")]
    remembered = producer.outcomes[too_much.tx_id]
    assert remembered.status == "rejected" and remembered.code == "insufficient_credits"
    assert remembered.message and "5000" in remembered.message
    assert too_much.tx_id not in producer.pool
    assert producer.pending_count() == 0
    assert store.read_block(2).transactions == (fine,)


def test_a_bad_signature_is_rejected_at_submission(producer: SoloProducer, chain: Chain) -> None:
    good = chain.accredit()
    signature = good.signatures[0]
    flipped = signature.signature[:-1] + ("0" if signature.signature[-1] != "0" else "1")
    bad = Envelope(
        tx=good.tx,
        signatures=(
            Signature(public_key=signature.public_key, signature=flipped),
            *good.signatures[1:],
        ),
    )
    (answer,) = producer.submit([bad])
    assert (answer.status, answer.code) == ("rejected", "bad_signature")
    assert bad.tx_id not in producer.outcomes  # a broken copy says nothing of the transaction
    assert producer.pending_count() == 0
    assert producer.produce(T1) is None


def test_later_transactions_of_a_failed_signer_are_deferred(
    producer: SoloProducer, store: Store, chain: Chain
) -> None:
    producer.submit(setup_envelopes(chain))
    produced(producer, T1)
    failing = transfer(chain, 5000, nonce=1)
    second = transfer(chain, 10, nonce=2)
    producer.submit([failing, second])
    # Only alice's transactions are ready: the failed one is rejected, the next one waits,
    # and no empty block is cut.
    assert producer.produce(T1 + 1000) is None
    assert store.head_height == 1
    assert producer.outcomes[failing.tx_id].code == "insufficient_credits"
    assert second.tx_id not in producer.outcomes, "deferred, not rejected"
    assert second.tx_id in producer.pool and producer.pending_count() == 1
    assert producer.produce(T1 + 2000) is None, "nonce 2 cannot go before a nonce 1"
    # A new, valid transaction with nonce 1 fills the gap; both commit, in nonce order.
    refill = transfer(chain, 20, nonce=1)
    (answer,) = producer.submit([refill])
    assert answer.status == "pending"
    result = produced(producer, T1 + 3000)
    assert result.block.transactions == (refill, second)
    assert producer.outcomes[second.tx_id].status == "committed"
    assert producer.outcomes[second.tx_id].height == 2
    assert producer.pending_count() == 0
    assert producer.state.get(f"account/{chain.alice.account_id}")["nonce"] == 2


def test_deferred_transactions_wait_while_others_commit(
    producer: SoloProducer, chain: Chain
) -> None:
    producer.submit(setup_envelopes(chain))
    produced(producer, T1)
    failing = transfer(chain, 5000, nonce=1)
    second = transfer(chain, 10, nonce=2)
    other = chain.tx(
        chain.bob, "transfer", {"to": chain.carol.account_id, "batch_id": "B-1", "quantity": 5}
    )
    producer.submit([failing, second, other])
    result = produced(producer, T1 + 1000)
    assert result.block.transactions == (other,)
    assert {o.tx_id: o.status for o in result.outcomes} == {
        other.tx_id: "committed",
        failing.tx_id: "rejected",
    }
    assert second.tx_id in producer.pool


def test_a_transaction_over_transaction_bytes_max_is_never_committed(
    producer: SoloProducer, store: Store, chain: Chain
) -> None:
    """SPEC §7.2: a transaction is at most the genesis `transaction_bytes_max`. Whatever the
    way in, a block must never carry a bigger one: `parse_block` (what a verifier of the
    export runs) refuses it."""
    limit = chain.genesis.params.transaction_bytes_max
    producer.submit([chain.accredit()])
    produced(producer, T1)
    households = [hashlib.sha256(f"household-{i}".encode()).hexdigest() for i in range(250)]
    big = chain.issue([(account, 10) for account in households])
    assert len(big.leaf) > limit
    small = chain.issue([(chain.alice, 10)], project_id="meter-0002")
    producer.submit([big, small])
    result = producer.produce(T1 + 1000)
    committed = () if result is None else result.block.transactions
    assert big.tx_id not in {e.tx_id for e in committed}, (
        f"a {len(big.leaf)}-byte transaction was committed (limit {limit})"
    )
    outcome = producer.outcomes.get(big.tx_id)
    assert outcome is not None and (outcome.status, outcome.code) == (
        "rejected",
        "payload_too_large",
    )
    for height in range(1, store.head_height + 1):
        parse_block(store.read_block(height).to_json(), transaction_bytes_max=limit)


# --- blocks -------------------------------------------------------------------------------------


def test_no_empty_blocks(producer: SoloProducer, store: Store, chain: Chain) -> None:
    assert producer.produce(T1) is None
    assert store.head_height == 0 and producer.state.height == 0
    producer.submit(setup_envelopes(chain))
    produced(producer, T1)
    assert producer.produce(T1 + 1000) is None
    assert store.head_height == 1


def test_block_time_strictly_increases_when_the_clock_goes_back(
    producer: SoloProducer, store: Store, chain: Chain
) -> None:
    producer.submit(setup_envelopes(chain))
    first = produced(producer, T1 + 50_000)
    assert first.block.header.time == T1 + 50_000
    producer.submit([transfer(chain, 1)])
    second = produced(producer, T1)  # the clock went back 50 s
    assert second.block.header.time > first.block.header.time
    producer.submit([transfer(chain, 1)])
    third = produced(producer, second.block.header.time)  # the clock stood still
    assert third.block.header.time > second.block.header.time
    assert [store.read_block(h).header.time for h in (1, 2, 3)] == [
        first.block.header.time,
        second.block.header.time,
        third.block.header.time,
    ]


def test_block_transactions_max_is_respected(tmp_path: Path) -> None:
    chain = Chain(block_transactions_max=2)
    store = Store.create(tmp_path, chain.genesis_document)
    try:
        producer = SoloProducer(store, chain.validator)
        envelopes = [*setup_envelopes(chain), chain.create_program("zibo-ev-rewards")]
        producer.submit(envelopes)
        blocks = [produced(producer, T1), produced(producer, T1 + 1000)]
        assert [b.block.transactions for b in blocks] == [
            tuple(envelopes[:2]),
            tuple(envelopes[2:]),
        ]
        assert producer.produce(T1 + 2000) is None
        assert store.head_height == 2
    finally:
        store.close()


# --- who may produce ----------------------------------------------------------------------------


def test_refuses_a_key_that_is_not_the_validator(store: Store, chain: Chain) -> None:
    with pytest.raises(LedgerError) as raised:
        SoloProducer(store, chain.alice)
    assert raised.value.code == "not_a_validator"


def test_refuses_a_chain_with_more_than_one_validator(tmp_path: Path, chain: Chain) -> None:
    document = make_genesis_document(
        chain_id=CHAIN_ID,
        genesis_time=GENESIS_TIME,
        authority_name="Zibo registry authority",
        authority_keys=[k.public_key_hex for k in chain.authority_keys],
        authority_threshold=2,
        validators=[
            Validator(public_key=chain.validator.public_key_hex, power=1, name="city"),
            Validator(public_key=key("validator-centre").public_key_hex, power=1, name="centre"),
        ],
    )
    store = Store.create(tmp_path, document)
    try:
        with pytest.raises(LedgerError) as raised:
            SoloProducer(store, chain.validator)
        assert raised.value.code == "not_a_validator"
    finally:
        store.close()


def test_after_giving_others_power_the_validator_certifies_at_its_own_turn(
    producer: SoloProducer, store: Store, chain: Chain
) -> None:
    """Found by review: a single validator that keeps more than 2/3 of a set it changed goes
    on alone, as before; its certificates said round 0 also in another member's turn, so
    `verify chain` failed the chain it wrote (rule proposer). Each block is now certified at
    the round of the validator's own turn, which the absent member's lets pass."""
    centre = key("validator-centre")
    weighted = [
        {"public_key": chain.validator.public_key_hex, "power": 3, "name": "city"},
        {"public_key": centre.public_key_hex, "power": 1, "name": "centre"},
    ]
    producer.submit([chain.authority_tx("set_validators", {"validators": weighted})])
    now = T1
    produced(producer, now)
    rounds = []
    for number in range(1, 9):  # heights 2-9: the new set governs from 3, a cycle of 4
        now += 1000
        producer.submit([chain.create_program(f"programme-{number}")])
        rounds.append(produced(producer, now).certificate.round)
    assert 1 in rounds and set(rounds) <= {0, 1}  # the centre's turn came and passed
    report = audit_chain(chain.genesis, list(store.export_lines()))
    assert report.height == 9


def test_a_copy_signed_by_another_key_is_answered_and_forgotten(
    producer: SoloProducer, chain: Chain
) -> None:
    """Ids come from the transaction alone: signed by a key outside the signer's set it is
    rejected (on admission, by the pool), and that answer is not what became of the
    transaction: the same transaction signed rightly then commits."""
    for envelope in producer.submit(setup_envelopes(chain)):
        assert envelope.status == "pending"
    produced(producer, T1)
    right = transfer(chain, 10)
    wrong = Envelope(
        tx=right.tx,
        signatures=(
            Signature(
                public_key=chain.bob.public_key_hex,
                signature=chain.bob.sign(right.tx.signing_bytes()).hex(),
            ),
        ),
    )
    assert wrong.tx_id == right.tx_id
    (refused,) = producer.submit([wrong])
    assert (refused.status, refused.code) == ("rejected", "unknown_key")
    assert producer.pending_count() == 0
    assert wrong.tx_id not in producer.outcomes  # anyone can make such a copy
    (again,) = producer.submit([right])
    assert again.status == "pending"
    result = produced(producer, T1 + 2000)
    assert [e.tx_id for e in result.block.transactions] == [right.tx_id]
    assert producer.outcomes[right.tx_id].status == "committed"


def test_a_new_attempt_at_a_rejected_transaction_replaces_its_answer(
    producer: SoloProducer, chain: Chain
) -> None:
    """An authentic copy refused on admission (its nonce too far ahead) is remembered so;
    admitted once its nonce is within reach, the answer it had is replaced."""
    producer.submit(setup_envelopes(chain))
    produced(producer, T1)
    nonce = chain.next_nonce(chain.alice.account_id)
    far = transfer(chain, 3, nonce=nonce + producer.pool.nonce_gap_max)
    (answer,) = producer.submit([far])
    assert (answer.status, answer.code) == ("rejected", "bad_nonce")
    assert producer.outcomes[far.tx_id].code == "bad_nonce"  # authentic: remembered
    producer.submit([transfer(chain, 1, nonce=nonce)])
    produced(producer, T1 + 1000)
    (again,) = producer.submit([far])
    assert again.status == "pending"
    assert far.tx_id not in producer.outcomes  # the old rejection is forgotten


def test_a_copy_nobody_signed_never_replaces_what_became_of_a_transaction(
    producer: SoloProducer, chain: Chain
) -> None:
    """Found by review: a copy with its signatures stripped was refused
    `insufficient_signatures`, and that answer replaced the transaction's genuine rejection;
    copies of transactions nobody submitted were remembered "rejected", and a thousand at a
    time pushed genuine outcomes out of memory."""
    producer.submit(setup_envelopes(chain))
    produced(producer, T1)
    too_much = transfer(chain, 5000)
    producer.submit([too_much])
    produced_or_none = producer.produce(T1 + 1000)
    assert produced_or_none is None  # nothing applied: the transfer was rejected
    assert producer.outcomes[too_much.tx_id].code == "insufficient_credits"
    stripped = Envelope(tx=too_much.tx, signatures=())
    (answer,) = producer.submit([stripped])
    assert (answer.status, answer.code) == ("rejected", "insufficient_signatures")
    assert producer.outcomes[too_much.tx_id].code == "insufficient_credits"
    remembered = len(producer.outcomes)
    never_submitted = [
        Envelope(tx=transfer(chain, 1, nonce=nonce).tx, signatures=()) for nonce in range(100, 130)
    ]
    answers = producer.submit(never_submitted)
    assert {answer.status for answer in answers} == {"rejected"}
    assert len(producer.outcomes) == remembered
    assert not any(envelope.tx_id in producer.outcomes for envelope in never_submitted)


def test_a_committed_transaction_submitted_again_stays_committed(
    producer: SoloProducer, chain: Chain
) -> None:
    """Found by review: the route looks whether a transaction is committed before the pool
    sees it; committed in between, its nonce is used and the pool refuses it `bad_nonce`,
    which had replaced the committed answer."""
    producer.submit(setup_envelopes(chain))
    produced(producer, T1)
    move = transfer(chain, 1)
    producer.submit([move])
    produced(producer, T1 + 1000)
    assert producer.outcomes[move.tx_id].status == "committed"
    (again,) = producer.submit([move])
    assert again.status == "committed" and again.height == 2
    assert producer.outcomes[move.tx_id].status == "committed"


# --- a block built while the previous one is written ------------------------------------------


def test_the_next_block_is_built_on_one_not_yet_committed(
    producer: SoloProducer, store: Store, chain: Chain
) -> None:
    producer.submit(setup_envelopes(chain))
    first = producer.prepare(T1)
    assert first is not None and first.block.height == 1
    # Prepared, not written: nothing is committed, and its transactions are still pending
    # in the pool but not waiting for a block.
    assert producer.state.height == 0 and store.head_height == 0
    assert all(e.tx_id in producer.pool for e in first.block.transactions)
    assert not any(e.tx_id in producer.outcomes for e in first.block.transactions)
    assert producer.pending_count() == 0 and not producer.due(T1 + 5000)

    moves = [transfer(chain, 10), transfer(chain, 20)]  # alice's nonces follow block 1's
    assert [a.status for a in producer.submit(moves)] == ["pending", "pending"]
    again = producer.submit([first.block.transactions[0]])  # already in block 1: pending
    assert again[0].status == "pending"
    other = chain.tx(
        chain.alice,
        "transfer",
        {"to": chain.bob.account_id, "batch_id": "B-1", "quantity": 1},
        nonce=1,
    )
    refused = producer.submit([other])  # alice's nonce 1 is taken by block 1
    assert refused[0].status == "rejected" and refused[0].code == "bad_nonce"
    assert producer.pending_count() == 2 and producer.due(T1 + 1000)

    second = producer.prepare(T1 + 1000)  # on block 1, while it is "being written"
    assert second is not None and second.block.height == 2
    assert [e.tx_id for e in second.block.transactions] == [e.tx_id for e in moves]
    assert second.block.last_commit == first.certificate

    producer.write(first)
    assert producer.state.height == 0, "written is not committed until finish"
    committed = producer.finish(first)
    assert producer.state.height == 1 and store.head_height == 1
    assert all(producer.outcomes[o.tx_id].status == "committed" for o in committed.outcomes)
    assert all(e.tx_id in producer.pool for e in second.block.transactions), "not stale"

    producer.write(second)
    producer.finish(second)
    assert producer.state.height == 2 and len(producer.pool) == 0
    replayed = apply_block(apply_block(genesis_state(store.genesis), first.block), second.block)
    assert replayed.state_root == producer.state.state_root == store.load_state().state_root


def test_abandon_drops_unwritten_blocks_and_keeps_their_transactions(
    producer: SoloProducer, store: Store, chain: Chain
) -> None:
    producer.submit(setup_envelopes(chain))
    first = producer.prepare(T1)
    producer.submit([transfer(chain, 10)])
    second = producer.prepare(T1 + 1000)
    assert first is not None and second is not None
    producer.abandon()  # say writing block 1 failed: block 2 stood on it
    assert producer.state.height == 0 and producer.pending_count() == 4
    result = produced(producer, T1 + 2000)
    assert result.block.height == 1 and len(result.block.transactions) == 4
    assert store.head_height == 1


def test_a_failed_write_leaves_the_producer_ready_to_try_again(
    producer: SoloProducer, store: Store, chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    producer.submit(setup_envelopes(chain))

    def fail(*args: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(store, "append", fail)
    with pytest.raises(OSError, match="disk on fire"):
        producer.produce(T1)
    assert producer.state.height == 0 and producer.pending_count() == 3
    monkeypatch.undo()
    assert produced(producer, T1 + 1000).block.height == 1


def test_after_a_full_block_the_next_is_due_once_it_is_written(tmp_path: Path) -> None:
    """The interval paces blocks while the node keeps up; after a full block it does not
    (more arrives than a block holds), so the next is due as soon as nothing is written."""
    chain = Chain(block_transactions_max=3)
    store = Store.create(tmp_path, chain.genesis_document)
    producer = SoloProducer(store, chain.validator)
    try:
        producer.submit(setup_envelopes(chain))
        assert producer.due(GENESIS_TIME + 1), "a full block's worth is due at once"
        full = produced(producer, T1)
        assert len(full.block.transactions) == 3
        producer.submit([transfer(chain, 10)])
        assert producer.due(T1 + 1), "after a full block: no need to wait for the interval"
        prepared = producer.prepare(T1 + 1)
        assert prepared is not None and len(prepared.block.transactions) == 1
        producer.submit([transfer(chain, 20)])
        assert not producer.due(T1 + 999), "a block is being written"
        producer.write(prepared)
        producer.finish(prepared)
        assert not producer.due(T1 + 999), "the last block was not full: the interval paces"
        assert producer.due(T1 + 1 + 1000)
        # A clock stepped back behind the last block cannot measure the interval: the block
        # is cut now, just after the last one, where it had waited for the clock to catch up
        # (found by review: 289 s of "pending" after NTP stepped a clock back 5 minutes).
        assert producer.due(T1 - 300_000)
        stepped = produced(producer, T1 - 300_000)
        assert stepped.block.header.time == T1 + 2  # the last block's time + 1 ms
    finally:
        store.close()


def test_a_single_validator_with_only_gapped_transactions_still_lets_them_go(
    producer: SoloProducer, chain: Chain
) -> None:
    """A pool holding only transactions behind a missing nonce builds no block, so nothing
    settled it after a block: they must leave all the same once they waited the gap wait."""
    producer.submit(setup_envelopes(chain))
    produced(producer, T1)
    gapped = transfer(chain, 5, nonce=5)  # alice's next nonce is 1: 1..4 never come
    (outcome,) = producer.submit([gapped])
    assert outcome.status == "pending"
    producer.pool.gap_wait_ms = 0  # as if the wait was over
    assert producer.produce(T1 + 1000) is None  # no block: nothing ready
    assert gapped.tx_id not in producer.pool
    rejected = producer.outcomes[gapped.tx_id]
    assert rejected.status == "rejected" and rejected.code == "bad_nonce"
    assert "did not come within" in (rejected.message or "")


def test_a_rejection_made_while_a_submission_is_answered_is_kept(
    producer: SoloProducer, chain: Chain
) -> None:
    """Found by review: the answer "pending" was settled after the producer's lock was let
    go once, and a block built in between rejected the transaction and remembered it; the
    late answer then erased that rejection, and the transaction was unknown for good."""
    producer.submit(setup_envelopes(chain))
    produced(producer, T1)
    too_much = transfer(chain, 5000)
    submitter = threading.current_thread()
    inner = producer._lock
    built: list[CommittedBlock | None] = []

    class BuildOnRelease:
        """The producer's lock; the first time the submitting thread lets it go, the block
        loop runs at once (as it may whenever the lock is free)."""

        def __enter__(self) -> None:
            inner.acquire()

        def __exit__(self, *exc: object) -> None:
            inner.release()
            if threading.current_thread() is submitter and not built:
                loop = threading.Thread(target=lambda: built.append(producer.produce(T1 + 1000)))
                loop.start()
                loop.join(timeout=10)

    producer._lock = BuildOnRelease()  # type: ignore[assignment]
    assert [o.status for o in producer.submit([too_much])] == ["pending"]
    assert built == [None]  # the block loop ran, and its one transaction was rejected
    outcome = producer.outcomes.get(too_much.tx_id)
    assert outcome is not None and outcome.code == "insufficient_credits"


def test_a_pool_of_transactions_behind_gaps_is_not_due_until_one_may_leave(
    producer: SoloProducer, chain: Chain
) -> None:
    """Found by review: such a pool was due at every poll, 100 times a second, each time
    scanning the whole pool under the producer's lock."""
    now = [0]
    producer.pool._clock_ms = lambda: now[0]
    later = transfer(chain, 1, nonce=5)  # nonces 1 to 4 never came
    assert [o.status for o in producer.submit([later])] == ["pending"]
    assert producer.pending_count() == 1 and producer.pool.gapped_count() == 1
    assert not producer.due(T1 + 60_000)
    now[0] = producer.pool.gap_wait_ms
    assert producer.due(T1 + 60_000)
    assert producer.produce(T1 + 60_000) is None
    outcome = producer.outcomes[later.tx_id]
    assert outcome.code == "bad_nonce" and producer.pending_count() == 0


def test_later_nonces_held_back_by_a_refused_one_are_counted_behind_a_gap(
    producer: SoloProducer, chain: Chain
) -> None:
    """Found by review: a block refused a signer's nonce 1 and held back its nonce 2, and
    the block was empty; the pool had not counted nonce 2 behind a gap, so the loop found it
    due at every poll and nonce 2 was pending for ever."""
    producer.submit(setup_envelopes(chain))
    produced(producer, T1)
    now = [0]
    producer.pool._clock_ms = lambda: now[0]
    stranger = key("stranger")  # holds nothing: its transfer is refused in the block
    payload = {"to": chain.carol.account_id, "batch_id": "B-1", "quantity": 1}
    first, second = (chain.tx(stranger, "transfer", payload, nonce=n) for n in (1, 2))
    assert [o.status for o in producer.submit([first, second])] == ["pending", "pending"]
    assert producer.produce(T1 + 1000) is None  # first refused, second held back: no block
    assert producer.outcomes[first.tx_id].code == "insufficient_credits"
    if producer.due(T1 + 2000):  # at most once, to count the pool afresh
        assert producer.produce(T1 + 2000) is None
    assert producer.pool.gapped_count() == 1 and not producer.due(T1 + 3000)
    now[0] = producer.pool.gap_wait_ms
    assert producer.due(T1 + 4000) and producer.produce(T1 + 4000) is None
    assert producer.outcomes[second.tx_id].code == "bad_nonce"
