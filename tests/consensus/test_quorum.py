"""Tallies by power, admission of proposals and votes, and the bounds on what is held."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from consensus.messages import NO_ROUND, Proposal, Vote, sign_proposal, sign_vote
from consensus.quorum import PRECOMMIT, PREVOTE, Quorum, VoteSet, has_one_third
from ledger.blocks import Block, Validator
from ledger.limits import ROUNDS_AHEAD_MAX
from ledger.proposer import compute_proposer
from ledger.state_transition import build_block
from tests.consensus.simulation.world import make_world
from tests.factory import CHAIN_ID, GENESIS_TIME, key

WORLD = make_world(4)
KEYS = WORLD.keys
HASH = "aa" * 32


def quorum(height: int = 1) -> Quorum:
    return Quorum(
        chain_id=CHAIN_ID,
        height=height,
        validators=WORLD.validators,
        next_validators=WORLD.validators,
    )


def vote(
    signer: int,
    block_hash: str | None = HASH,
    *,
    round: int = 0,
    height: int = 1,
    vote_type: str = PREVOTE,
) -> Vote:
    return sign_vote(
        KEYS[signer],
        chain_id=CHAIN_ID,
        vote_type=vote_type,
        height=height,
        round=round,
        block_hash=block_hash,
    )


def block(time: int = GENESIS_TIME + 1000) -> Block:
    return build_block(
        WORLD.genesis,
        WORLD.workload[:1],
        time=time,
        proposer=KEYS[0].public_key_hex,
        last_commit=None,
    ).block


def proposal(
    round: int = 0, *, time: int = GENESIS_TIME + 1000, valid_round: int = NO_ROUND
) -> Proposal:
    proposer = compute_proposer(WORLD.validators, 1, round)
    signer = next(k for k in KEYS if k.public_key_hex == proposer)
    return sign_proposal(
        signer, chain_id=CHAIN_ID, height=1, round=round, valid_round=valid_round, block=block(time)
    )


def test_thresholds_are_more_than_two_thirds_and_more_than_one_third() -> None:
    votes = VoteSet(total=4)
    for signer in range(2):
        votes.add(vote(signer), 1)
    assert not votes.has_quorum_for(HASH) and not votes.has_quorum_any()
    votes.add(vote(2, None), 1)
    assert votes.has_quorum_any() and not votes.has_quorum_for(HASH)
    votes.add(vote(3), 1)
    assert votes.has_quorum_for(HASH) and votes.quorum_block_hash() == HASH
    assert [v.public_key for v in votes.votes_for(HASH)] == sorted(
        KEYS[i].public_key_hex for i in (0, 1, 3)
    )
    assert (has_one_third(1, 4), has_one_third(2, 4), has_one_third(1, 3), has_one_third(2, 6)) == (
        False,
        True,
        False,
        False,
    )


def test_power_not_heads_is_counted() -> None:
    weighted = [
        Validator(public_key=k.public_key_hex, power=p, name="v")
        for k, p in zip(KEYS, (5, 1, 1, 1), strict=True)
    ]
    held = Quorum(chain_id=CHAIN_ID, height=1, validators=weighted, next_validators=weighted)
    assert held.admit(vote(0), current_round=0).status == "added"
    assert not held.current.has_quorum_for(0, PREVOTE, HASH)  # 5 of 8 is not > 2/3
    held.admit(vote(1), current_round=0)
    assert held.current.has_quorum_for(0, PREVOTE, HASH)  # 6 of 8 is
    assert held.current.skip_round(-1) == 0


def test_admission_statuses() -> None:
    held = quorum(height=3)
    assert held.admit(vote(0, height=3), current_round=0).status == "added"
    assert held.admit(vote(0, height=3), current_round=0).status == "known"
    assert held.admit(vote(0, height=2), current_round=0).status == "old"
    assert held.admit(vote(0, height=5), current_round=0).status == "future"
    assert held.admit(vote(0, height=4, round=ROUNDS_AHEAD_MAX), current_round=0).status == "added"
    assert (
        held.admit(vote(0, height=4, round=ROUNDS_AHEAD_MAX + 1), current_round=5).status
        == "future"
    )
    assert (
        held.admit(vote(1, height=3, round=5 + ROUNDS_AHEAD_MAX), current_round=5).status == "added"
    )
    assert (
        held.admit(vote(1, height=3, round=6 + ROUNDS_AHEAD_MAX), current_round=5).status
        == "future"
    )
    stranger = sign_vote(
        key("stranger"), chain_id=CHAIN_ID, vote_type=PREVOTE, height=3, round=0, block_hash=None
    )
    admission = held.admit(stranger, current_round=0)
    assert admission.status == "invalid" and admission.error is not None
    assert admission.error.code == "unknown_validator"


def test_a_forged_signature_is_invalid_and_never_counted() -> None:
    held = quorum()
    genuine = vote(2)
    forged = Vote(
        chain_id=genuine.chain_id,
        vote_type=genuine.vote_type,
        height=genuine.height,
        round=genuine.round,
        block_hash=None,
        public_key=genuine.public_key,
        signature=genuine.signature,
    )
    admission = held.admit(forged, current_round=0)
    assert admission.status == "invalid" and admission.error is not None
    assert admission.error.code == "bad_signature"
    assert held.current.message_count() == 0


def test_a_second_different_vote_is_evidence_once() -> None:
    held = quorum()
    held.admit(vote(3, HASH), current_round=0)
    first = held.admit(vote(3, "bb" * 32), current_round=0)
    assert first.status == "equivocation" and first.evidence is not None
    assert first.evidence.public_key == KEYS[3].public_key_hex
    again = held.admit(vote(3, "cc" * 32), current_round=0)
    assert again.status == "known" and again.evidence is None
    assert held.current.message_count() == 1  # the unused conflicting votes are not held


def test_an_equivocators_vote_for_a_proposed_block_counts_toward_its_quorum() -> None:
    """A replica that first heard a Byzantine validator vote nil must still be able to see the
    quorum for the proposed block that another replica saw with that validator's other vote."""
    held = quorum()
    offered = proposal()
    assert held.admit(offered, current_round=0).status == "added"
    held.admit(vote(3, None), current_round=0)  # the Byzantine validator's first vote: nil
    held.admit(vote(0, offered.block_hash), current_round=0)
    held.admit(vote(1, offered.block_hash), current_round=0)
    assert not held.current.has_quorum_for(0, PREVOTE, offered.block_hash)
    admission = held.admit(vote(3, offered.block_hash), current_round=0)
    assert admission.status == "added" and admission.evidence is not None
    assert held.current.has_quorum_for(0, PREVOTE, offered.block_hash)
    assert held.current.vote_set(0, PREVOTE).voted_power == 3  # counted once for "any"


def test_a_later_proposal_naming_a_valid_round_makes_its_votes_count() -> None:
    held = quorum()
    offered = proposal(round=2, valid_round=0)
    held.admit(offered, current_round=2)
    held.admit(vote(3, None, round=0), current_round=2)
    assert held.admit(vote(3, offered.block_hash, round=0), current_round=2).status == "added"
    assert (
        held.admit(vote(3, offered.block_hash, round=1), current_round=2).status == "added"
    )  # first vote of round 1
    assert (
        held.admit(vote(3, None, round=1), current_round=2).status == "added"
    )  # nil always counts
    held.admit(vote(2, "dd" * 32, round=1), current_round=2)
    assert held.admit(vote(2, "ee" * 32, round=1), current_round=2).status == "equivocation"


def test_proposals_come_from_the_proposer_once_per_round() -> None:
    held = quorum()
    offered = proposal()
    assert held.admit(offered, current_round=0).status == "added"
    assert held.admit(offered, current_round=0).status == "known"
    other = proposal(time=GENESIS_TIME + 2000)
    admission = held.admit(other, current_round=0)
    assert admission.status == "equivocation" and admission.evidence is not None
    assert admission.evidence.evidence_type == "duplicate_proposal"
    assert held.current.proposals[0] == offered
    assert held.admit(other, current_round=0).status == "known"
    not_proposer = next(k for k in KEYS if k.public_key_hex != held.proposer(1))
    wrong = sign_proposal(
        not_proposer,
        chain_id=CHAIN_ID,
        height=1,
        round=1,
        valid_round=NO_ROUND,
        block=offered.block,
    )
    refused = held.admit(wrong, current_round=0)
    assert refused.status == "invalid" and refused.error is not None
    assert refused.error.code == "not_proposer"


def test_senders_of_more_than_a_third_in_a_later_round_skip_to_it() -> None:
    held = quorum()
    held.admit(vote(0, round=3), current_round=0)
    assert held.current.skip_round(0) is None  # 1 of 4
    held.admit(vote(1, round=5, vote_type=PRECOMMIT), current_round=0)
    assert held.current.skip_round(0) is None  # one sender in each round
    held.admit(vote(1, round=3, vote_type=PRECOMMIT), current_round=0)
    assert held.current.skip_round(0) == 3
    assert held.current.skip_round(3) is None


def test_precommit_quorums_are_listed_by_round() -> None:
    held = quorum()
    for signer in range(3):
        held.admit(vote(signer, "bb" * 32, round=2, vote_type=PRECOMMIT), current_round=2)
        held.admit(vote(signer, None, round=1, vote_type=PRECOMMIT), current_round=2)
    assert held.current.precommit_quorums() == [(2, "bb" * 32)]


def test_advance_makes_the_next_height_current() -> None:
    held = quorum()
    held.admit(vote(0, height=2), current_round=0)
    held.advance(next_validators=WORLD.validators)
    assert held.height == 2 and held.current.message_count() == 1
    assert held.following.height == 3 and held.following.message_count() == 0


@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),  # signer
            st.integers(0, 4),  # height
            st.integers(0, 40),  # round
            st.sampled_from([PREVOTE, PRECOMMIT]),
            st.sampled_from([None, HASH, "bb" * 32, "cc" * 32]),
        ),
        max_size=120,
    ),
    st.integers(0, 10),
)
def test_whatever_arrives_memory_stays_within_the_bounds(
    stream: list[tuple[int, int, int, str, str | None]], current_round: int
) -> None:
    held = quorum(height=1)
    offered = proposal()
    held.admit(offered, current_round=current_round)
    for signer, height, round, vote_type, block_hash in stream:
        held.admit(
            vote(signer, block_hash, round=round, height=height, vote_type=vote_type),
            current_round=current_round,
        )
    rounds_current = current_round + ROUNDS_AHEAD_MAX + 1
    assert all(round < rounds_current for round, _ in held.current.votes)
    assert all(round <= ROUNDS_AHEAD_MAX for round, _ in held.following.votes)
    # Per slot: a first vote, plus nil and the proposed block for an equivocator.
    assert held.current.message_count() <= 1 + 2 * 4 * 3 * rounds_current
    assert held.following.message_count() <= 2 * 4 * 3 * (ROUNDS_AHEAD_MAX + 1)
