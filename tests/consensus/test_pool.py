"""The pending pool (SPEC §7.2): bounded, deduplicated, nonce-windowed, released in order.

Envelopes are signed for real; the pool only looks at signatures, signers, nonces and ids, so
the payloads need not pass the state rules. The committed nonce of each account is a plain
dict, the way the producer's state would answer it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from consensus import pool as pool_module
from consensus.pool import AccountLookup, Pool
from ledger.crypto import PrivateKey
from ledger.errors import LedgerError
from ledger.limits import POOL_NONCE_GAP_MAX
from ledger.merkle import leaf_hash
from ledger.transactions import Envelope, Signature, check_signatures
from tests.factory import Chain, key

CHAIN = Chain()


def envelope(signer: PrivateKey, nonce: int, *, memo: str = "") -> Envelope:
    """A signed transfer of `signer` with `nonce`; `memo` makes a different transaction."""
    payload = {"to": CHAIN.carol.account_id, "batch_id": "B-1", "quantity": 1}
    if memo:
        payload["memo"] = memo
    return CHAIN.tx(signer, "transfer", payload, nonce=nonce)


def committed(nonces: dict[str, int] | None = None) -> Callable[[str], int]:
    table = nonces or {}
    return lambda signer: table.get(signer, 0)


def accounts(nonces: dict[str, int] | None = None) -> AccountLookup:
    """Accounts as the producer's state gives them: single-key ones at these nonces."""
    table = nonces or {}
    return lambda signer: {"nonce": table[signer], "keys": []} if signer in table else None


def codes(
    pool: Pool, envelopes: Sequence[Envelope], nonces: dict[str, int] | None = None
) -> list[str | None]:
    answers = pool.add_many(envelopes, accounts(nonces))
    assert [a.envelope for a in answers] == list(envelopes), "one answer per envelope, in order"
    return [None if a.error is None else a.error.code for a in answers]


def tampered(original: Envelope, position: int = -1) -> Envelope:
    """The same envelope with one hex character of its first signature changed."""
    first = original.signatures[0]
    text = first.signature
    index = position % len(text)
    digit = "0" if text[index] != "0" else "1"
    signature = Signature(
        public_key=first.public_key, signature=text[:index] + digit + text[index + 1 :]
    )
    return Envelope(tx=original.tx, signatures=(signature, *original.signatures[1:]))


ALICE, BOB = CHAIN.alice, CHAIN.bob


# --- bounds -------------------------------------------------------------------------------------


def test_full_pool_refuses_with_mempool_full_and_evicts_nothing() -> None:
    pool = Pool(capacity=3)
    held = [envelope(ALICE, 1), envelope(ALICE, 2), envelope(BOB, 1)]
    assert codes(pool, held) == [None, None, None]
    extra = envelope(BOB, 2)
    assert codes(pool, [extra]) == ["mempool_full"]
    assert len(pool) == 3
    assert all(e.tx_id in pool for e in held)
    assert extra.tx_id not in pool
    assert pool.ready(committed(), limit=10) == [held[0], held[1], held[2]]
    # Resubmitting a held transaction to a full pool is still a no-op, not a refusal.
    assert codes(pool, [held[0]]) == [None]
    assert len(pool) == 3
    # Room made by removal is room again.
    pool.remove([held[0]])
    assert codes(pool, [extra]) == [None]
    assert len(pool) == 3


def test_full_pool_error_message_names_the_capacity() -> None:
    pool = Pool(capacity=1)
    pool.add_many([envelope(ALICE, 1)], accounts())
    (answer,) = pool.add_many([envelope(BOB, 1)], accounts())
    assert answer.error is not None
    assert answer.error.code == "mempool_full"
    assert "1" in answer.error.message


# --- deduplication and nonces -------------------------------------------------------------------


def test_duplicate_tx_id_is_idempotent() -> None:
    pool = Pool()
    first = envelope(ALICE, 1)
    later = envelope(BOB, 1)
    assert codes(pool, [first, first]) == [None, None]
    assert codes(pool, [later, first]) == [None, None]
    assert len(pool) == 2
    # The duplicate did not refresh the first one's place in the arrival order.
    assert pool.ready(committed(), limit=10) == [first, later]


def test_nonce_already_committed_is_bad_nonce() -> None:
    pool = Pool()
    nonces = {ALICE.account_id: 3}
    assert codes(pool, [envelope(ALICE, 3), envelope(ALICE, 1)], nonces) == [
        "bad_nonce",
        "bad_nonce",
    ]
    assert len(pool) == 0
    assert codes(pool, [envelope(ALICE, 4)], nonces) == [None]


def test_nonce_beyond_the_window_is_bad_nonce() -> None:
    pool = Pool(nonce_gap_max=4)
    nonces = {ALICE.account_id: 10}
    assert codes(pool, [envelope(ALICE, 15)], nonces) == ["bad_nonce"]
    assert codes(pool, [envelope(ALICE, 14)], nonces) == [None]
    default = Pool()
    assert codes(default, [envelope(BOB, POOL_NONCE_GAP_MAX + 1)]) == ["bad_nonce"]
    assert codes(default, [envelope(BOB, POOL_NONCE_GAP_MAX)]) == [None]


def test_second_transaction_with_a_pending_nonce_is_bad_nonce() -> None:
    pool = Pool()
    first = envelope(ALICE, 1, memo="first")
    rival = envelope(ALICE, 1, memo="rival")
    assert first.tx_id != rival.tx_id
    assert codes(pool, [first, rival]) == [None, "bad_nonce"]
    assert first.tx_id in pool and rival.tx_id not in pool
    assert pool.ready(committed(), limit=10) == [first]


# --- release order ------------------------------------------------------------------------------


def test_ready_follows_nonces_without_gaps() -> None:
    pool = Pool()
    one, three = envelope(ALICE, 1), envelope(ALICE, 3)
    codes(pool, [one, three])
    assert pool.ready(committed(), limit=10) == [one]
    assert pool.ready(committed({ALICE.account_id: 1}), limit=10) == []
    two = envelope(ALICE, 2)
    codes(pool, [two], {ALICE.account_id: 1})
    assert pool.ready(committed({ALICE.account_id: 1}), limit=10) == [two, three]


def test_ready_releases_out_of_order_submissions_in_nonce_order() -> None:
    pool = Pool()
    three, one, two = envelope(ALICE, 3), envelope(ALICE, 1), envelope(ALICE, 2)
    codes(pool, [three])
    codes(pool, [one])
    codes(pool, [two])
    assert pool.ready(committed(), limit=10) == [one, two, three]


def test_ready_respects_arrival_order_across_accounts() -> None:
    pool = Pool()
    a1, b1, a2, c1, b2 = (
        envelope(ALICE, 1),
        envelope(BOB, 1),
        envelope(ALICE, 2),
        envelope(CHAIN.carol, 1),
        envelope(BOB, 2),
    )
    codes(pool, [a1, b1, a2, c1, b2])
    assert pool.ready(committed(), limit=10) == [a1, b1, a2, c1, b2]


def test_an_early_later_nonce_waits_for_its_predecessor() -> None:
    pool = Pool()
    a2, b1, a1 = envelope(ALICE, 2), envelope(BOB, 1), envelope(ALICE, 1)
    codes(pool, [a2, b1, a1])
    # a2 arrived first but cannot overtake a1, which arrived after b1.
    assert pool.ready(committed(), limit=10) == [b1, a1, a2]


def test_ready_respects_the_limit() -> None:
    pool = Pool()
    envelopes = [envelope(ALICE, n) for n in range(1, 6)] + [envelope(BOB, 1)]
    codes(pool, envelopes)
    assert pool.ready(committed(), limit=3) == envelopes[:3]
    assert pool.ready(committed(), limit=0) == []
    assert pool.ready(committed(), limit=100) == envelopes
    assert len(pool) == 6, "ready() only looks"


# --- removal ------------------------------------------------------------------------------------


def test_remove_takes_transactions_out_and_ignores_unknown_ones() -> None:
    pool = Pool()
    a1, a2, b1 = envelope(ALICE, 1), envelope(ALICE, 2), envelope(BOB, 1)
    codes(pool, [a1, a2, b1])
    pool.remove([a1, envelope(CHAIN.carol, 1)])
    assert len(pool) == 2
    assert a1.tx_id not in pool and a2.tx_id in pool
    assert pool.ready(committed({ALICE.account_id: 1}), limit=10) == [a2, b1]
    pool.remove([a2, b1, b1])
    assert len(pool) == 0
    assert pool.ready(committed(), limit=10) == []
    # A removed nonce is free again.
    assert codes(pool, [a1]) == [None]


def test_drop_stale_removes_and_returns_used_nonces() -> None:
    pool = Pool()
    a1, a2, a3, b1 = envelope(ALICE, 1), envelope(ALICE, 2), envelope(ALICE, 3), envelope(BOB, 1)
    codes(pool, [a1, a2, a3, b1])
    nonces = {ALICE.account_id: 2}
    stale = pool.drop_stale(committed(nonces))
    assert {e.tx_id for e, _ in stale} == {a1.tx_id, a2.tx_id}
    assert {why for _, why in stale} == {"another transaction used this nonce first"}
    assert len(pool) == 2
    assert a3.tx_id in pool and b1.tx_id in pool
    assert pool.ready(committed(nonces), limit=10) == [a3, b1]
    assert pool.drop_stale(committed(nonces)) == []


# --- signatures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("position", [0, 31, 64, -1])
def test_bad_signature_is_refused_at_admission(position: int) -> None:
    pool = Pool()
    good = envelope(ALICE, 1)
    bad = tampered(good, position)
    assert bad.tx_id == good.tx_id, "a signature is not part of the id"
    assert codes(pool, [bad]) == ["bad_signature"]
    assert len(pool) == 0
    assert codes(pool, [good]) == [None]


def test_bad_signatures_are_refused_when_verified_in_parallel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    signers = [key(f"household-{i}") for i in range(96)]
    envelopes = [
        tampered(envelope(signer, 1)) if i % 7 == 3 else envelope(signer, 1)
        for i, signer in enumerate(signers)
    ]
    expected = ["bad_signature" if i % 7 == 3 else None for i in range(len(envelopes))]
    threads: set[str] = set()

    def recording(items: Sequence[Envelope]) -> list[LedgerError | None]:
        threads.add(threading.current_thread().name)
        return check_signatures(items)

    monkeypatch.setattr(pool_module, "check_signatures", recording)
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="verify") as executor:
        pool = Pool(executor=executor)
        assert codes(pool, envelopes) == expected
    # Verified on the executor's threads, never on the caller's (how many threads the executor
    # starts is its own business).
    assert threads and all(name.startswith("verify") for name in threads), threads
    assert len(pool) == expected.count(None)
    assert all(
        (e.tx_id in pool) == (code is None) for e, code in zip(envelopes, expected, strict=True)
    )
    # The sequential path gives the same answers.
    assert codes(Pool(), envelopes) == expected


def test_forwarded_transactions_leave_room_for_local_clients() -> None:
    pool = Pool(capacity=4, local_reserved=2)
    assert pool.forwarded_capacity == 2
    signers = [key(f"forwarded-{i}") for i in range(5)]
    forwarded = [envelope(s, 1) for s in signers[:3]]
    answers = pool.admit(forwarded, [None] * 3, accounts(), forwarded=True)
    assert [None if a.error is None else a.error.code for a in answers] == [
        None,
        None,
        "mempool_full",
    ]
    local = [envelope(s, 1) for s in signers[3:]]  # the reserved room is this node's clients'
    assert codes(pool, local) == [None, None]
    assert codes(pool, [envelope(signers[2], 1)]) == ["mempool_full"]


def test_admission_says_what_is_new_and_the_pool_finds_envelopes_by_leaf() -> None:
    pool = Pool()
    first = envelope(ALICE, 1)
    (answer,) = pool.add_many([first], accounts())
    assert answer.new and answer.error is None
    (again,) = pool.add_many([first], accounts())
    assert not again.new and again.error is None  # pending already
    assert pool.by_leaf_hash(leaf_hash(first.leaf)) is first
    assert pool.holds(first)
    # Same transaction, other signatures: another leaf, not "held" (its check was not made).
    assert not pool.holds(tampered(first))
    assert pool.by_leaf_hash(leaf_hash(tampered(first).leaf)) is None
    pool.remove([first])
    assert pool.by_leaf_hash(leaf_hash(first.leaf)) is None and not pool.holds(first)


# --- who may hold a nonce -----------------------------------------------------------------------


def test_nobody_holds_another_accounts_nonce_with_a_transaction_it_did_not_sign() -> None:
    """A transaction of Alice's account signed by Bob's key, or by no key at all, or a copy
    of Alice's own with its signatures stripped (ids name the transaction alone) is refused
    on admission, so Alice's own transaction with that nonce is still taken."""
    pool = Pool()
    payload = {"to": CHAIN.carol.account_id, "batch_id": "B-1", "quantity": 1}
    by_bob = CHAIN.tx(BOB, "transfer", payload, signer=ALICE.account_id, nonce=1)
    unsigned = Envelope(tx=by_bob.tx, signatures=())
    own = CHAIN.tx(ALICE, "transfer", payload, nonce=1)
    stripped = Envelope(tx=own.tx, signatures=())
    assert codes(pool, [by_bob, unsigned, stripped]) == [
        "unknown_key",
        "insufficient_signatures",
        "insufficient_signatures",
    ]
    assert len(pool) == 0
    assert codes(pool, [own]) == [None]
    # Against keys on the ledger: an M-of-N account needs M of its own keys.
    keys = [key(f"shared-{i}") for i in range(3)]
    shared = {"nonce": 4, "keys": sorted(k.public_key_hex for k in keys), "threshold": 2}
    account_id = "ab" * 32

    def lookup(signer: str) -> dict[str, object] | None:
        return shared if signer == account_id else None

    one = CHAIN.tx(keys[0], "transfer", payload, signer=account_id, nonce=5)
    foreign = CHAIN.tx([keys[0], BOB], "transfer", payload, signer=account_id, nonce=5)
    two = CHAIN.tx(keys[1:], "transfer", payload, signer=account_id, nonce=5)
    answers = pool.add_many([one, foreign, two], lookup)
    assert [None if a.error is None else a.error.code for a in answers] == [
        "insufficient_signatures",
        "unknown_key",
        None,
    ]


def test_after_a_pending_set_keys_the_new_keys_are_taken_on_trust_until_the_block() -> None:
    """Alice replaces her key (nonce 1, pending): her nonce 2, signed by the new key, cannot be
    checked against keys the ledger does not hold yet. Block building decides it."""
    pool = Pool()
    new_key = key("alice-new")
    rotate = CHAIN.tx(
        ALICE, "set_keys", {"keys": [new_key.public_key_hex], "threshold": 1}, nonce=1
    )
    payload = {"to": CHAIN.carol.account_id, "batch_id": "B-1", "quantity": 1}
    after = CHAIN.tx(new_key, "transfer", payload, signer=ALICE.account_id, nonce=2)
    assert codes(pool, [after]) == ["unknown_key"]  # no set_keys before it: refused
    assert codes(pool, [rotate, after]) == [None, None]


def test_a_node_catching_up_does_not_refuse_a_nonce_far_ahead_of_its_tip() -> None:
    """Its tip is behind the chain: a nonce far ahead of it may be the next at the chain's
    head. The keys are still checked."""
    pool = Pool(nonce_gap_max=4)
    far = envelope(ALICE, 9)
    assert codes(pool, [far]) == ["bad_nonce"]
    (answer,) = pool.admit([far], [None], accounts(), tip_behind=True)
    assert answer.error is None and far.tx_id in pool
    payload = {"to": CHAIN.carol.account_id, "batch_id": "B-1", "quantity": 1}
    by_bob = CHAIN.tx(BOB, "transfer", payload, signer=ALICE.account_id, nonce=12)
    (refused,) = pool.admit([by_bob], [None], accounts(), tip_behind=True)
    assert refused.error is not None and refused.error.code == "unknown_key"


def test_a_transaction_waiting_behind_a_missing_nonce_leaves_after_the_gap_wait() -> None:
    """Found by review: nonce 2 of fresh accounts (fresh keys cost nothing) can never be
    proposed, and such transactions filled the pool for good: mempool_full to everyone.
    One still waiting behind its gap after gap_wait_ms is dropped, with why; a transaction
    that follows on without a gap stays however long it waits."""
    now = [0]
    pool = Pool(capacity=4, clock_ms=lambda: now[0])
    a1, a2, b2, b3 = envelope(ALICE, 1), envelope(ALICE, 2), envelope(BOB, 2), envelope(BOB, 3)
    assert codes(pool, [a1, a2, b2, b3]) == [None] * 4
    assert codes(pool, [envelope(ALICE, 3)]) == ["mempool_full"]
    now[0] = pool.gap_wait_ms - 1
    assert pool.drop_stale(committed()) == []
    now[0] = pool.gap_wait_ms
    stale = pool.drop_stale(committed())
    assert [e.tx_id for e, _ in stale] == [b2.tx_id, b3.tx_id]
    assert {why for _, why in stale} == {"nonce 1 of this signer did not come within 30 s"}
    assert a1.tx_id in pool and a2.tx_id in pool and len(pool) == 2
    assert codes(pool, [envelope(ALICE, 3)]) == [None]  # room again


def test_transactions_behind_gaps_are_bounded_apart_from_ready_ones() -> None:
    """Found by review: one client refilled the pool with transactions of fresh accounts
    behind a missing nonce faster than they expired, so everybody else got mempool_full.
    At most gapped_max wait behind gaps; ready ones keep the rest of the pool."""
    now = [0]
    pool = Pool(gapped_max=2, clock_ms=lambda: now[0])
    carol, dave = CHAIN.carol, key("dave")
    assert codes(pool, [envelope(ALICE, 2), envelope(BOB, 3)]) == [None, None]
    assert pool.gapped_count() == 2
    refused = pool.add_many([envelope(carol, 2)], accounts())
    assert refused[0].error is not None and refused[0].error.code == "mempool_full"
    assert "send nonce 1 of this signer first" in refused[0].error.message
    assert codes(pool, [envelope(carol, 1), envelope(dave, 1)]) == [None, None]  # ready: taken
    assert codes(pool, [envelope(carol, 2)]) == [None]  # follows on: not behind a gap
    assert codes(pool, [envelope(ALICE, 1)]) == [None]  # fills Alice's gap
    assert pool.gapped_count() == 1  # Bob's nonce 3 alone
    assert not pool.gap_expired()
    now[0] = pool.gap_wait_ms
    assert pool.gap_expired()
    # After a block, counted afresh from the committed nonces: Bob's 1 and 2 came elsewhere.
    assert pool.drop_stale(committed({BOB.account_id: 2})) == []
    assert pool.gapped_count() == 0 and not pool.gap_expired()


def test_a_transaction_for_another_chain_is_refused_at_admission() -> None:
    """Found by review: one signed for another chain with the same key was pending until its
    block refused it, holding its signer's nonce (the genuine one was bad_nonce)."""
    pool = Pool(chain_id="zibo-demo")
    other = envelope(ALICE, 1)  # the test chain's
    answers = pool.add_many([other], accounts())
    assert answers[0].error is not None and answers[0].error.code == "wrong_chain"
    assert len(pool) == 0
    assert codes(Pool(chain_id=other.tx.chain_id), [other]) == [None]


def test_peers_take_the_gapped_share_in_proportion_to_their_share_of_the_pool() -> None:
    """Found by review: transactions forwarded by peers (or anyone posting to the consensus
    route) could take every gapped slot, and a local client whose nonce 2 came just before
    its nonce 1 got mempool_full."""
    pool = Pool(capacity=100, local_reserved=50, gapped_max=4)  # peers: 2 of the 4
    forwarded = [envelope(signer, 2) for signer in (ALICE, BOB, CHAIN.carol)]
    answers = pool.admit(forwarded, [None] * 3, accounts(), forwarded=True)
    assert [a.error.code if a.error else None for a in answers] == [None, None, "mempool_full"]
    assert codes(pool, [envelope(key("dave"), 2)]) == [None]  # a local client's: room kept
