"""Blocks (SPEC §5.2, §5.3): `apply_block` replays what `build_block` made, refuses every
header fault with `InvalidBlockError` naming the rule, and never touches its input state;
the block hash covers the header only; certificates need > 2/3 of the power.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

import pytest
import rfc8785

from ledger.blocks import (
    Block,
    Certificate,
    Header,
    Validator,
    parse_block,
    sign_certificate,
    verify_certificate,
)
from ledger.crypto import ZERO_HASH_HEX
from ledger.encoding import canonical, decode
from ledger.errors import InvalidBlockError, InvalidProofError
from ledger.evidence import make_evidence, sign_vote, vote_bytes
from ledger.state import State
from ledger.state_transition import (
    BuiltBlock,
    apply_block,
    build_block,
    check_block_body,
    first_that_applies,
)
from ledger.state_tree import compute_state_root
from ledger.transactions import Envelope
from tests.factory import CHAIN_ID, Chain, key

TRANSACTION_BYTES_MAX = 16384


# --- helpers ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything observable about a `State`, deep-copied."""

    entries: dict[str, Any]
    state_root: str
    log_size: int
    log_peaks: tuple[bytes, ...]
    log_root: bytes
    batch_lots: dict[str, tuple[int, ...]]
    holdings: dict[tuple[str, str], tuple[int, ...]]
    batch_count: int
    next_serial: int
    height: int
    head_hash: str
    head_time: int
    last_validators: tuple[Validator, ...]


def snapshot(state: State) -> Snapshot:
    return Snapshot(
        entries=copy.deepcopy(dict(state.entries)),
        state_root=state.state_root,
        log_size=state.log.size,
        log_peaks=state.log.peaks,
        log_root=state.log.root(),
        batch_lots=dict(state.batch_lots),
        holdings=dict(state.holdings),
        batch_count=state.batch_count,
        next_serial=state.next_serial,
        height=state.height,
        head_hash=state.head_hash,
        head_time=state.head_time,
        last_validators=state.last_validators,
    )


def transfer(
    chain: Chain, sender: Any, to: Any, quantity: int, nonce: int | None = None
) -> Envelope:
    return chain.tx(
        sender,
        "transfer",
        {"to": to.account_id, "batch_id": "B-1", "quantity": quantity},
        nonce=nonce,
    )


def with_header(block: Block, **changes: Any) -> Block:
    return dataclasses.replace(block, header=dataclasses.replace(block.header, **changes))


def assert_refused(state: State, block: Block, rule: str) -> InvalidBlockError:
    """`block` is refused for `rule`, and `state` is exactly as it was."""
    before = snapshot(state)
    with pytest.raises(InvalidBlockError) as caught:
        apply_block(state, block)
    assert caught.value.rule == rule, caught.value.message
    assert caught.value.height == block.header.height
    assert snapshot(state) == before
    return caught.value


@dataclass
class Pending:
    """A chain at height `state.height` and its valid next block, not yet applied."""

    chain: Chain
    state: State
    built: BuiltBlock

    @property
    def block(self) -> Block:
        return self.built.block


@pytest.fixture
def pending() -> Pending:
    """Height 1 committed (B-1 issued); block 2 moves, retires and invalidates credits."""
    chain = Chain().funded()
    envelopes = [
        transfer(chain, chain.alice, chain.carol, 100),
        chain.tx(
            chain.bob,
            "retire",
            {
                "batch_id": "B-1",
                "quantity": 50,
                "beneficiary": "Li family",
                "purpose": "incentive",
                "program_id": "zibo-green-home",
            },
        ),
        chain.authority_tx(
            "invalidate",
            {
                "batch_id": "B-1",
                "holder": chain.alice.account_id,
                "quantity": 10,
                "reason": "meter fault",
            },
        ),
    ]
    built = chain.build(envelopes)
    assert built.rejected == () and len(built.block.transactions) == 3
    return Pending(chain=chain, state=chain.state, built=built)


# --- the good path ----------------------------------------------------------------------------


def test_apply_block_replays_build_block(pending: Pending) -> None:
    before = snapshot(pending.state)
    applied = apply_block(pending.state, pending.block)
    built = pending.built.state
    assert applied.state_root == built.state_root == pending.block.header.state_root
    assert dict(applied.entries) == dict(built.entries)
    assert applied.state_root == compute_state_root(applied.entries.items()).hex()
    assert applied.height == pending.block.height == 2
    assert applied.head_hash == built.head_hash == pending.block.block_hash()
    assert applied.head_time == pending.block.header.time
    assert applied.log.size == pending.block.header.log_size == 6
    assert applied.log.root().hex() == pending.block.header.log_root
    assert dict(applied.batch_lots) == dict(built.batch_lots)
    assert dict(applied.holdings) == dict(built.holdings)
    assert (applied.batch_count, applied.next_serial) == (built.batch_count, built.next_serial)
    # Pure: the input is untouched by an accepted block too.
    assert snapshot(pending.state) == before
    assert pending.state.get("lot/B-1/1")["owner"] == pending.chain.alice.account_id


def test_a_chain_of_blocks_replays_from_genesis() -> None:
    chain = Chain().funded()
    for n in range(3):
        chain.commit(transfer(chain, chain.alice, chain.carol, 10 + n))
    replay = Chain()
    state = replay.state
    for built in chain.blocks:
        state = apply_block(state, built.block)
        assert state.state_root == built.state.state_root
        assert state.head_hash == built.block.block_hash()
    assert state.height == 4


def test_build_block_is_pure_even_with_rejections(pending: Pending) -> None:
    chain = pending.chain
    before = snapshot(pending.state)
    too_much = transfer(chain, chain.carol, chain.alice, 5000)
    built = build_block(
        pending.state,
        [*pending.block.transactions, too_much],
        time=chain.time + 1,
        proposer=chain.validator.public_key_hex,
        last_commit=chain.last_certificate,
    )
    assert [error.code for _, error in built.rejected] == ["insufficient_credits"]
    assert snapshot(pending.state) == before


def test_first_that_applies_says_what_a_block_built_now_would_hold(pending: Pending) -> None:
    chain = pending.chain
    before = snapshot(pending.state)
    good = pending.block.transactions[0]
    too_much = transfer(chain, chain.carol, chain.alice, 5000)
    behind = transfer(chain, chain.carol, chain.alice, 1)  # carol's next nonce after it
    time = chain.time + 1
    # The first that applies, and why those before it do not; a signer's later ones wait.
    found, rejected = first_that_applies(pending.state, [too_much, behind, good], time=time)
    assert found is good
    assert [(e.tx_id, error.code) for e, error in rejected] == [
        (too_much.tx_id, "insufficient_credits")
    ]
    # None applies: each one's reason, as build_block gives it, and the block would be empty.
    found, rejected = first_that_applies(pending.state, [too_much, behind], time=time)
    built = build_block(
        pending.state,
        [too_much, behind],
        time=time,
        proposer=chain.validator.public_key_hex,
        last_commit=chain.last_certificate,
    )
    assert found is None and built.block.transactions == ()
    assert [(e.tx_id, error.code) for e, error in rejected] == [
        (e.tx_id, error.code) for e, error in built.rejected
    ]
    assert first_that_applies(pending.state, [], time=time) == (None, ())
    assert snapshot(pending.state) == before


def test_signatures_verified_skips_only_the_signature_check(pending: Pending) -> None:
    good = pending.block.transactions[0]
    signature = good.signatures[0]
    raw = bytearray(bytes.fromhex(signature.signature))
    raw[33] ^= 1
    tampered = Envelope(
        tx=good.tx, signatures=(dataclasses.replace(signature, signature=raw.hex()),)
    )
    block = dataclasses.replace(
        pending.block, transactions=(tampered, *pending.block.transactions[1:])
    )
    error = assert_refused(pending.state, block, "bad_signature")
    assert error.tx_id == good.tx_id
    # A caller that vouches for signatures skips that check only: the log commits to the
    # exact envelopes, signatures included, so the header's log_root still refuses the block.
    before = snapshot(pending.state)
    with pytest.raises(InvalidBlockError) as caught:
        apply_block(pending.state, block, signatures_verified=True)
    assert caught.value.rule == "log_root"
    assert snapshot(pending.state) == before
    applied = apply_block(pending.state, pending.block, signatures_verified=True)
    assert applied.state_root == pending.block.header.state_root


# --- header faults ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("chain_id", "zibo-prod", "chain_id"),
        ("height", 3, "height"),
        ("height", 1, "height"),
        ("parent_hash", ZERO_HASH_HEX, "parent_hash"),
        ("parent_hash", hashlib.sha256(b"another parent").hexdigest(), "parent_hash"),
        ("validators_hash", ZERO_HASH_HEX, "validators_hash"),
        ("next_validators_hash", ZERO_HASH_HEX, "next_validators_hash"),
        ("proposer", key("stranger").public_key_hex, "proposer"),
        ("evidence_hash", ZERO_HASH_HEX, "evidence_hash"),
        ("log_root", ZERO_HASH_HEX, "log_root"),
        ("state_root", ZERO_HASH_HEX, "state_root"),
        ("last_commit_hash", ZERO_HASH_HEX, "last_commit_hash"),
    ],
)
def test_header_fault(pending: Pending, field: str, value: Any, rule: str) -> None:
    assert getattr(pending.block.header, field) != value
    assert_refused(pending.state, with_header(pending.block, **{field: value}), rule)


@pytest.mark.parametrize("delta", [-1, 1])
def test_log_size_fault(pending: Pending, delta: int) -> None:
    size = pending.block.header.log_size + delta
    assert_refused(pending.state, with_header(pending.block, log_size=size), "log_size")


@pytest.mark.parametrize("delta", [0, -1])
def test_time_not_after_the_parent(pending: Pending, delta: int) -> None:
    time = pending.state.head_time + delta
    assert_refused(pending.state, with_header(pending.block, time=time), "time")


def test_time_one_millisecond_after_the_parent_is_enough(pending: Pending) -> None:
    chain = pending.chain
    built = build_block(
        pending.state,
        [],
        time=pending.state.head_time + 1,
        proposer=chain.validator.public_key_hex,
        last_commit=chain.last_certificate,
    )
    assert built.block.header.time == pending.state.head_time + 1
    assert apply_block(pending.state, built.block).head_time == pending.state.head_time + 1


def test_state_root_of_another_block(pending: Pending) -> None:
    other = pending.chain.build([])  # a valid root, but for other transactions
    root = other.block.header.state_root
    assert root != pending.block.header.state_root
    assert_refused(pending.state, with_header(pending.block, state_root=root), "state_root")


def test_dropping_a_transaction(pending: Pending) -> None:
    block = dataclasses.replace(pending.block, transactions=pending.block.transactions[:2])
    assert_refused(pending.state, block, "log_size")


def test_reordering_transactions_changes_the_log_root(pending: Pending) -> None:
    a, b, c = pending.block.transactions
    block = dataclasses.replace(pending.block, transactions=(b, a, c))
    assert_refused(pending.state, block, "log_root")


# --- the body against its header (a proposal's signature covers the header only) --------------


def test_the_body_a_header_commits_to_passes(pending: Pending) -> None:
    check_block_body(pending.state, pending.block)


def _other_signing(envelope: Envelope) -> Envelope:
    """The same transaction with its signature list changed: the same id, another leaf."""
    return dataclasses.replace(envelope, signatures=envelope.signatures * 2)


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        (lambda b: dataclasses.replace(b, transactions=b.transactions[:2]), "log_size"),
        (lambda b: dataclasses.replace(b, transactions=b.transactions[::-1]), "log_root"),
        (
            lambda b: dataclasses.replace(
                b, transactions=(*b.transactions[:2], _other_signing(b.transactions[2]))
            ),
            "log_root",
        ),
        (lambda b: dataclasses.replace(b, last_commit=None), "last_commit_hash"),
        (lambda b: with_header(b, height=b.header.height + 1), "height"),
    ],
    ids=["dropped", "reordered", "resigned", "no_last_commit", "other_height"],
)
def test_a_body_its_header_does_not_commit_to_is_refused(
    pending: Pending, change: Any, rule: str
) -> None:
    with pytest.raises(InvalidBlockError) as caught:
        check_block_body(pending.state, change(pending.block))
    assert caught.value.rule == rule, caught.value.message


def test_a_body_with_other_evidence_or_too_much_is_refused(pending: Pending) -> None:
    a, b = (
        sign_vote(
            pending.chain.validator,
            chain_id=CHAIN_ID,
            vote_type="prevote",
            height=1,
            round=0,
            block_hash=value,
        )
        for value in (None, ZERO_HASH_HEX)
    )
    evidence = make_evidence(a, b)
    for body, rule in (
        (dataclasses.replace(pending.block, evidence=(evidence,)), "evidence_hash"),
        (dataclasses.replace(pending.block, evidence=(evidence,) * 101), "evidence_count"),
        (
            dataclasses.replace(pending.block, transactions=pending.block.transactions * 2_000),
            "block_transactions_max",
        ),
    ):
        with pytest.raises(InvalidBlockError) as caught:
            check_block_body(pending.state, body)
        assert caught.value.rule == rule, caught.value.message


def test_a_blocks_canonical_bytes_are_those_of_its_json(pending: Pending) -> None:
    """`canonical_bytes` joins the transactions' leaves instead of encoding them again: the
    same bytes, with a last commit, evidence, memos beyond ASCII, and for an empty block."""
    chain = pending.chain
    votes = [
        sign_vote(chain.validator, chain_id=CHAIN_ID, vote_type="prevote", height=1, round=0,
                  block_hash=value)
        for value in (None, ZERO_HASH_HEX)
    ]  # fmt: skip
    unicode = chain.tx(
        chain.alice,
        "transfer",
        {"to": chain.carol.account_id, "batch_id": "B-1", "quantity": 1,
         "memo": "淄博 \u2028 \"quoted\" é"},
    )  # fmt: skip
    blocks = [
        pending.block,
        dataclasses.replace(pending.block, evidence=(make_evidence(*votes),)),
        dataclasses.replace(pending.block, transactions=(unicode,)),
        dataclasses.replace(pending.block, transactions=()),
        chain.blocks[0].block,  # height 1: no last commit
    ]
    assert pending.block.last_commit is not None and chain.blocks[0].block.last_commit is None
    for block in blocks:
        assert block.canonical_bytes() == canonical(block.to_json())


def test_missing_last_commit(pending: Pending) -> None:
    block = dataclasses.replace(pending.block, last_commit=None)
    assert_refused(pending.state, block, "last_commit")


def test_extra_last_commit_at_height_1() -> None:
    chain = Chain()
    built = chain.build([])
    assert built.block.height == 1 and built.block.last_commit is None
    assert apply_block(chain.state, built.block).height == 1
    stray = sign_certificate(
        chain_id=CHAIN_ID,
        height=1,
        round=0,
        block_hash=built.block.block_hash(),
        keys=[chain.validator],
    )
    assert_refused(chain.state, dataclasses.replace(built.block, last_commit=stray), "last_commit")
    block = with_header(
        dataclasses.replace(built.block, last_commit=stray),
        last_commit_hash=stray.certificate_hash(),
    )
    assert_refused(chain.state, block, "last_commit")


def test_block_1_with_a_last_commit_hash_but_no_last_commit() -> None:
    chain = Chain()
    built = chain.build([])
    block = with_header(built.block, last_commit_hash=hashlib.sha256(b"x").hexdigest())
    assert_refused(chain.state, block, "last_commit")


def _with_certificate(block: Block, certificate: Certificate) -> Block:
    """`block` carrying `certificate`, its header bound to it (so only the certificate fails)."""
    return with_header(
        dataclasses.replace(block, last_commit=certificate),
        last_commit_hash=certificate.certificate_hash(),
    )


def test_last_commit_with_a_bad_signature(pending: Pending) -> None:
    certificate = pending.block.last_commit
    assert certificate is not None
    ((public_key, signature),) = certificate.signatures
    raw = bytearray(bytes.fromhex(signature))
    raw[35] ^= 1
    bad = dataclasses.replace(certificate, signatures=((public_key, raw.hex()),))
    assert_refused(pending.state, _with_certificate(pending.block, bad), "last_commit")


def test_last_commit_signed_by_a_non_validator(pending: Pending) -> None:
    certificate = pending.block.last_commit
    assert certificate is not None
    forged = sign_certificate(
        chain_id=CHAIN_ID,
        height=certificate.height,
        round=0,
        block_hash=certificate.block_hash,
        keys=[key("stranger")],
    )
    assert_refused(pending.state, _with_certificate(pending.block, forged), "last_commit")


@pytest.mark.parametrize("fault", ["height", "block_hash", "chain_id"])
def test_last_commit_for_something_else(pending: Pending, fault: str) -> None:
    certificate = pending.block.last_commit
    assert certificate is not None
    fields: dict[str, Any] = {
        "chain_id": CHAIN_ID,
        "height": certificate.height,
        "round": 0,
        "block_hash": certificate.block_hash,
    }
    fields[fault] = {
        "height": certificate.height + 1,
        "block_hash": hashlib.sha256(b"another block").hexdigest(),
        "chain_id": "zibo-prod",
    }[fault]
    other = sign_certificate(**fields, keys=[pending.chain.validator])
    assert_refused(pending.state, _with_certificate(pending.block, other), "last_commit")


def test_a_certificate_from_another_round_is_fine(pending: Pending) -> None:
    certificate = pending.block.last_commit
    assert certificate is not None
    later = sign_certificate(
        chain_id=CHAIN_ID,
        height=certificate.height,
        round=3,
        block_hash=certificate.block_hash,
        keys=[pending.chain.validator],
    )
    assert later.certificate_hash() != certificate.certificate_hash()
    block = _with_certificate(pending.block, later)
    assert apply_block(pending.state, block).state_root == pending.block.header.state_root


def test_too_many_transactions() -> None:
    chain = Chain(block_transactions_max=3).funded()
    envelopes = [transfer(chain, chain.alice, chain.carol, 1) for _ in range(4)]
    built = chain.build(envelopes)
    assert built.block.transactions == tuple(envelopes[:3]) and built.rejected == ()
    assert apply_block(chain.state, built.block).height == 2
    block = dataclasses.replace(built.block, transactions=tuple(envelopes))
    assert_refused(chain.state, block, "block_transactions_max")


def test_a_block_with_an_invalid_transaction(pending: Pending) -> None:
    chain = pending.chain
    first, *rest = pending.block.transactions
    too_much = transfer(chain, chain.alice, chain.carol, 1001, nonce=first.tx.nonce)
    block = dataclasses.replace(pending.block, transactions=(too_much, *rest))
    error = assert_refused(pending.state, block, "insufficient_credits")
    assert error.tx_id == too_much.tx_id


def test_a_block_whose_second_transaction_depends_on_a_later_one(pending: Pending) -> None:
    chain = pending.chain
    state = pending.built.state
    give = transfer(chain, chain.carol, chain.bob, 101)  # carol holds 100 before this block
    before = transfer(chain, chain.alice, chain.carol, 1)
    good = build_block(
        state,
        [before, give],
        time=pending.block.header.time + 1000,
        proposer=chain.validator.public_key_hex,
        last_commit=chain.certify(pending.built),
    )
    assert good.rejected == ()
    assert apply_block(state, good.block).height == 3
    swapped = dataclasses.replace(good.block, transactions=(give, before))
    error = assert_refused(state, swapped, "insufficient_credits")
    assert error.tx_id == give.tx_id


def test_a_block_with_a_duplicate_transaction(pending: Pending) -> None:
    first = pending.block.transactions[0]
    block = dataclasses.replace(pending.block, transactions=(*pending.block.transactions, first))
    error = assert_refused(pending.state, block, "bad_nonce")
    assert error.tx_id == first.tx_id


# --- hashing and encoding ---------------------------------------------------------------------


def test_block_hash_is_the_header_hash(pending: Pending) -> None:
    header = pending.block.header.to_json()
    expected = hashlib.sha256(b"tanlian/block/v1\n" + rfc8785.dumps(header)).hexdigest()
    assert pending.block.block_hash() == pending.block.header.block_hash() == expected


def test_block_hash_excludes_the_certificate(pending: Pending) -> None:
    """Nodes may hold different valid quorums for one block: its hash cannot depend on them."""
    block = pending.block
    chain = pending.chain
    certificates = [
        sign_certificate(
            chain_id=CHAIN_ID,
            height=block.height,
            round=round_,
            block_hash=block.block_hash(),
            keys=[chain.validator],
        )
        for round_ in (0, 1)
    ]
    assert certificates[0].certificate_hash() != certificates[1].certificate_hash()
    for certificate in certificates:
        verify_certificate(
            certificate,
            chain_id=CHAIN_ID,
            height=block.height,
            block_hash=block.block_hash(),
            validators=pending.state.current_validators(),
        )
    # Nothing but the header counts: not the carried certificate, transactions or evidence.
    votes = [
        sign_vote(chain.validator, chain_id=CHAIN_ID, vote_type="prevote", height=2, round=0,
                  block_hash=block_hash)
        for block_hash in (None, block.block_hash())
    ]  # fmt: skip
    evidence = (make_evidence(*votes),)
    stripped = dataclasses.replace(block, last_commit=None, transactions=(), evidence=evidence)
    assert stripped.block_hash() == block.block_hash()
    assert "certificate" not in block.to_json()
    assert with_header(block, time=block.header.time + 1).block_hash() != block.block_hash()


def test_parse_block_round_trips(pending: Pending) -> None:
    first = pending.chain.blocks[0].block
    for block in (first, pending.block):
        data = canonical(block.to_json())
        again = parse_block(decode(data), transaction_bytes_max=TRANSACTION_BYTES_MAX)
        assert again == block
        assert again.to_json() == block.to_json()
        assert canonical(again.to_json()) == data
        assert [e.tx_id for e in again.transactions] == [e.tx_id for e in block.transactions]
        assert again.block_hash() == block.block_hash()
    assert first.last_commit is None and pending.block.last_commit is not None


def test_parse_block_reads_plain_json(pending: Pending) -> None:
    text = json.dumps(pending.block.to_json(), indent=2)
    again = parse_block(json.loads(text), transaction_bytes_max=TRANSACTION_BYTES_MAX)
    assert apply_block(pending.state, again).state_root == pending.block.header.state_root


# --- certificates (§5.3) ----------------------------------------------------------------------

VALIDATOR_KEYS = [key(f"consortium-{name}") for name in ("city", "centre", "grid", "audit")]
POWERS = (5, 6, 7, 8)  # total 26: any two hold at most 15 (< 17.34), any three at least 18
VALIDATORS = tuple(
    sorted(
        (
            Validator(public_key=k.public_key_hex, power=p, name=f"v{i}")
            for i, (k, p) in enumerate(zip(VALIDATOR_KEYS, POWERS, strict=True))
        ),
        key=lambda v: v.public_key,
    )
)
BLOCK_HASH = hashlib.sha256(b"block 7").hexdigest()


def signed_by(keys: list[Any], *, height: int = 7, block_hash: str = BLOCK_HASH) -> Certificate:
    return sign_certificate(
        chain_id=CHAIN_ID, height=height, round=0, block_hash=block_hash, keys=keys
    )


def verify(cert: Certificate, validators: tuple[Validator, ...] = VALIDATORS) -> None:
    verify_certificate(
        cert, chain_id=CHAIN_ID, height=7, block_hash=BLOCK_HASH, validators=validators
    )


def test_one_of_one_certificate(pending: Pending) -> None:
    chain = pending.chain
    good = chain.certify(pending.built)
    verify_certificate(
        good,
        chain_id=CHAIN_ID,
        height=2,
        block_hash=pending.block.block_hash(),
        validators=pending.state.current_validators(),
    )
    for changes in (
        {"height": 3},
        {"block_hash": ZERO_HASH_HEX},
        {"chain_id": "zibo-prod"},
    ):
        arguments: dict[str, Any] = {
            "chain_id": CHAIN_ID,
            "height": 2,
            "block_hash": pending.block.block_hash(),
            **changes,
        }
        with pytest.raises(InvalidProofError):
            verify_certificate(good, validators=pending.state.current_validators(), **arguments)


@pytest.mark.parametrize("signers", list(itertools.combinations(range(4), 3)))
def test_three_of_four_is_a_quorum(signers: tuple[int, ...]) -> None:
    verify(signed_by([VALIDATOR_KEYS[i] for i in signers]))


@pytest.mark.parametrize("signers", list(itertools.combinations(range(4), 2)))
def test_two_of_four_is_not(signers: tuple[int, ...]) -> None:
    with pytest.raises(InvalidProofError, match="2/3"):
        verify(signed_by([VALIDATOR_KEYS[i] for i in signers]))


def test_exactly_two_thirds_is_not_a_quorum() -> None:
    three = VALIDATORS[:3]
    by_key = {k.public_key_hex: k for k in VALIDATOR_KEYS}
    equal = tuple(dataclasses.replace(v, power=1) for v in three)
    two = [by_key[v.public_key] for v in equal[:2]]
    with pytest.raises(InvalidProofError, match="2/3"):
        verify(signed_by(two), equal)
    verify(signed_by([by_key[v.public_key] for v in equal]), equal)


def test_certificate_with_no_signatures() -> None:
    empty = dataclasses.replace(signed_by(VALIDATOR_KEYS), signatures=())
    with pytest.raises(InvalidProofError):
        verify(empty)


@pytest.mark.parametrize(
    ("height", "block_hash", "chain_id"),
    [
        (8, BLOCK_HASH, CHAIN_ID),
        (7, ZERO_HASH_HEX, CHAIN_ID),
        (7, BLOCK_HASH, "zibo-prod"),
    ],
)
def test_certificate_for_something_else(height: int, block_hash: str, chain_id: str) -> None:
    cert = sign_certificate(
        chain_id=chain_id, height=height, round=0, block_hash=block_hash, keys=VALIDATOR_KEYS
    )
    with pytest.raises(InvalidProofError):
        verify(cert)


def test_certificate_whose_fields_were_rewritten() -> None:
    """Signatures over height 8 do not carry over to a certificate that says 7."""
    signed_for_8 = signed_by(VALIDATOR_KEYS, height=8)
    relabelled = dataclasses.replace(signed_for_8, height=7)
    with pytest.raises(InvalidProofError, match="signature"):
        verify(relabelled)


def test_certificate_with_a_duplicate_signer() -> None:
    three = signed_by(VALIDATOR_KEYS[:3])
    duplicated = dataclasses.replace(three, signatures=(three.signatures[0], *three.signatures))
    with pytest.raises(InvalidProofError, match="sorted"):
        verify(duplicated)
    # Two validators (15 of 26) cannot reach a quorum by repeating one of them.
    two = signed_by(VALIDATOR_KEYS[2:4])
    padded = dataclasses.replace(two, signatures=(*two.signatures, two.signatures[-1]))
    with pytest.raises(InvalidProofError):
        verify(padded)


def test_certificate_with_unsorted_signers() -> None:
    cert = signed_by(VALIDATOR_KEYS)
    verify(cert)
    unsorted = dataclasses.replace(cert, signatures=tuple(reversed(cert.signatures)))
    with pytest.raises(InvalidProofError, match="sorted"):
        verify(unsorted)


def test_certificate_with_a_non_validator() -> None:
    cert = signed_by([*VALIDATOR_KEYS[:3], key("stranger")])
    with pytest.raises(InvalidProofError, match="not a validator"):
        verify(cert)


def test_certificate_of_prevotes_is_not_a_commit() -> None:
    message = vote_bytes(
        chain_id=CHAIN_ID, vote_type="prevote", height=7, round=0, block_hash=BLOCK_HASH
    )
    signatures = tuple(sorted((k.public_key_hex, k.sign(message).hex()) for k in VALIDATOR_KEYS))
    prevotes = Certificate(
        chain_id=CHAIN_ID, height=7, round=0, block_hash=BLOCK_HASH, signatures=signatures
    )
    with pytest.raises(InvalidProofError, match="signature"):
        verify(prevotes)


def test_header_dataclass_matches_the_spec_fields(pending: Pending) -> None:
    assert list(pending.block.header.to_json()) == [f.name for f in dataclasses.fields(Header)]
    assert set(pending.block.header.to_json()) == {
        "chain_id",
        "height",
        "time",
        "parent_hash",
        "last_commit_hash",
        "log_size",
        "log_root",
        "state_root",
        "evidence_hash",
        "validators_hash",
        "next_validators_hash",
        "proposer",
    }
