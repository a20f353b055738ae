"""What a replica holds of others' proposals and votes, tallied by power, bounded (SPEC §5.4).

`Quorum.admit` takes a parsed proposal or vote from anywhere and answers what it did with it
(`Admission.status`):

- `old`: for a height already decided here (the sender lags: the replica may help it);
- `future`: beyond what is held, refused unread: a height past the next one
  (HEIGHTS_AHEAD_MAX), or a round more than ROUNDS_AHEAD_MAX past the replica's round (at the
  next height: past round ROUNDS_AHEAD_MAX);
- `invalid`: fails `consensus.messages.verify_*` (`error` says why);
- `known`: nothing new: a copy of a held message, or one no rule needs from a sender already
  proven to equivocate in that slot;
- `equivocation`: a validly signed message that conflicts with the sender's first one for
  its slot and that no rule needs; `evidence` is the pair (once per slot);
- `added`: held and counted (a conflicting vote that a rule needs is counted too, see
  `VoteSet`, and carries the evidence if it is the slot's first conflict).

A slot is (height, round, kind) for one sender, kind one of proposal, prevote, precommit.
A slot holds one proposal (the first: another is evidence only) and the sender's first vote;
further votes of an equivocating sender are held only for values a rule can use (nil, the
block proposed in that round, or a block proposed later naming that round as its valid
round). So whatever arrives, memory is bounded by the rounds held (those of the current
height so far plus ROUNDS_AHEAD_MAX, and ROUNDS_AHEAD_MAX + 1 rounds of the next height)
times the validators times a small constant. Cheap refusals (bounds, an unknown sender, a
copy of a held message) come before any signature check, so a flood of replays or far-future
messages costs no signature verification.

Thresholds are by power, in integers: a quorum is more than 2/3 of the total power
(`ledger.blocks.has_quorum`, Algorithm 1's 2f+1) and a round skip needs more than 1/3 (f+1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from consensus.messages import (
    ConsensusError,
    InvalidMessage,
    Proposal,
    Vote,
    verify_proposal,
    verify_vote,
)
from ledger.blocks import Validator, has_quorum
from ledger.evidence import Evidence, SignedProposal, make_evidence
from ledger.limits import HEIGHTS_AHEAD_MAX, ROUNDS_AHEAD_MAX
from ledger.proposer import compute_proposer

PROPOSAL: Final = "proposal"
PREVOTE: Final = "prevote"
PRECOMMIT: Final = "precommit"

ADMISSIONS: Final = ("old", "future", "invalid", "known", "equivocation", "added")


def is_certified(vote: Vote) -> bool:
    """A precommit for a block: what any certificate (and so any export) holds, which anyone
    can replay."""
    return vote.vote_type == PRECOMMIT and vote.block_hash is not None


def has_one_third(power: int, total: int) -> bool:
    """More than 1/3 of the total power (f+1 in Algorithm 1), in integers."""
    return 3 * power > total


@dataclass(frozen=True, slots=True, kw_only=True)
class Admission:
    status: str
    evidence: Evidence | None = None
    error: ConsensusError | None = None

    def __post_init__(self) -> None:
        assert self.status in ADMISSIONS, self.status
        assert self.status != "equivocation" or self.evidence is not None
        assert (self.status == "invalid") == (self.error is not None)


class VoteSet:
    """The votes of one type at one (height, round).

    Each validator's first vote counts towards "more than 2/3 voted" (`voted_power`). Towards
    a value it counts once per value it voted for: a validator that equivocates is counted
    for each value it signed, as Algorithm 1 counts the messages a process received. Without
    that, a replica that saw the Byzantine vote for v that completed a quorum could never
    show it to one that first saw the same validator vote nil. Only values that matter are
    taken beyond the first vote (`Quorum` decides which), so this stays bounded.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.first: dict[str, Vote] = {}
        self.by_hash: dict[str | None, dict[str, Vote]] = {}
        self.power_by_hash: dict[str | None, int] = {}
        self.voted_power = 0

    def holds(self, vote: Vote) -> bool:
        """This validator's vote for this value is counted already."""
        return vote.public_key in self.by_hash.get(vote.block_hash, {})

    def add(self, vote: Vote, power: int) -> None:
        assert not self.holds(vote)
        if vote.public_key not in self.first:
            self.first[vote.public_key] = vote
            self.voted_power += power
        self.by_hash.setdefault(vote.block_hash, {})[vote.public_key] = vote
        self.power_by_hash[vote.block_hash] = self.power_by_hash.get(vote.block_hash, 0) + power

    def has_quorum_for(self, block_hash: str | None) -> bool:
        """More than 2/3 of the power voted for `block_hash` (None: for nil)."""
        return has_quorum(self.power_by_hash.get(block_hash, 0), self.total)

    def has_quorum_any(self) -> bool:
        """More than 2/3 of the power voted, for anything (Algorithm 1's 2f+1 ⟨·, *⟩)."""
        return has_quorum(self.voted_power, self.total)

    def quorum_block_hash(self) -> str | None:
        """A block hash (never nil) with more than 2/3 of the power, if any."""
        for block_hash, power in self.power_by_hash.items():
            if block_hash is not None and has_quorum(power, self.total):
                return block_hash
        return None

    def votes_for(self, block_hash: str | None) -> list[Vote]:
        """The votes for `block_hash`, sorted by public key (a certificate's order)."""
        voters = self.by_hash.get(block_hash, {})
        return [voters[key] for key in sorted(voters)]

    def count(self) -> int:
        return sum(len(voters) for voters in self.by_hash.values())


@dataclass(slots=True, kw_only=True)
class HeightMessages:
    """Everything held for one height: one proposal per round, votes by (round, type)."""

    height: int
    validators: tuple[Validator, ...]
    powers: dict[str, int] = field(init=False)
    total: int = field(init=False)
    proposals: dict[int, Proposal] = field(default_factory=dict)
    proposers: dict[int, str] = field(default_factory=dict)
    votes: dict[tuple[int, str], VoteSet] = field(default_factory=dict)
    senders: dict[int, dict[str, None]] = field(default_factory=dict)  # in arrival order
    round_power: dict[int, int] = field(default_factory=dict)
    equivocations: dict[tuple[int, str, str], None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.powers = {v.public_key: v.power for v in self.validators}
        self.total = sum(self.powers.values())

    def vote_set(self, round: int, vote_type: str) -> VoteSet:
        found = self.votes.get((round, vote_type))
        if found is None:
            found = self.votes[(round, vote_type)] = VoteSet(self.total)
        return found

    def note_sender(self, round: int, public_key: str) -> None:
        senders = self.senders.setdefault(round, {})
        if public_key not in senders:
            senders[public_key] = None
            self.round_power[round] = self.round_power.get(round, 0) + self.powers[public_key]

    def has_quorum_for(self, round: int, vote_type: str, block_hash: str | None) -> bool:
        held = self.votes.get((round, vote_type))
        return held is not None and held.has_quorum_for(block_hash)

    def has_quorum_any(self, round: int, vote_type: str) -> bool:
        held = self.votes.get((round, vote_type))
        return held is not None and held.has_quorum_any()

    def precommit_quorums(self) -> list[tuple[int, str]]:
        """Every (round, block_hash) with more than 2/3 of the power in precommits, by round."""
        found = []
        for (round, vote_type), held in sorted(self.votes.items()):
            block_hash = held.quorum_block_hash() if vote_type == PRECOMMIT else None
            if block_hash is not None:
                found.append((round, block_hash))
        return found

    def skip_round(self, after: int) -> int | None:
        """The highest round after `after` from which senders of more than 1/3 of the power
        sent something (Algorithm 1 line 55), if any."""
        rounds = [
            round
            for round, power in self.round_power.items()
            if round > after and has_one_third(power, self.total)
        ]
        return max(rounds, default=None)

    def matters(self, round: int, block_hash: str | None) -> bool:
        """Whether a vote of `round` for `block_hash` can complete a quorum a rule uses: nil,
        the block proposed in `round`, or a block proposed later with `round` as its valid
        round (Algorithm 1 lines 28, 36, 44, 49)."""
        return block_hash is None or any(
            proposal.block_hash == block_hash and round in (proposal.round, proposal.valid_round)
            for proposal in self.proposals.values()
        )

    def drop_proposals(self, refuse: Callable[[Proposal], bool]) -> None:
        """Forget the proposals `refuse` names: their slots take the next proposal of their
        round. (Their senders stay noted: each signed something in that round.)"""
        for round, proposal in list(self.proposals.items()):
            if refuse(proposal):
                del self.proposals[round]
                del self.proposers[round]

    def message_count(self) -> int:
        return len(self.proposals) + sum(held.count() for held in self.votes.values())


class Quorum:
    """The messages of the current height and the next, with their tallies and bounds."""

    def __init__(
        self,
        *,
        chain_id: str,
        height: int,
        validators: Sequence[Validator],
        next_validators: Sequence[Validator],
    ) -> None:
        self.chain_id = chain_id
        self.current = HeightMessages(height=height, validators=tuple(validators))
        self.following = HeightMessages(height=height + 1, validators=tuple(next_validators))

    @property
    def height(self) -> int:
        return self.current.height

    def advance(self, *, next_validators: Sequence[Validator]) -> None:
        """Move to the next height: what was held for it becomes current; `next_validators`
        is the set governing the height after it."""
        self.current = self.following
        self.following = HeightMessages(
            height=self.current.height + 1, validators=tuple(next_validators)
        )

    def _held(self, height: int, round: int, current_round: int) -> HeightMessages | str:
        if height < self.current.height:
            return "old"
        if height > self.current.height + HEIGHTS_AHEAD_MAX:
            return "future"
        held = self.current if height == self.current.height else self.following
        first = current_round if held is self.current else 0
        if round > first + ROUNDS_AHEAD_MAX:
            return "future"
        return held

    def admit(self, message: Proposal | Vote, *, current_round: int) -> Admission:
        """Hold `message` if it is new, in bounds and verifies; say what became of it."""
        held = self._held(message.height, message.round, current_round)
        if isinstance(held, str):
            return Admission(status=held)
        if isinstance(message, Vote):
            return self._admit_vote(held, message)
        return self._admit_proposal(held, message)

    def _admit_vote(self, held: HeightMessages, vote: Vote) -> Admission:
        power = held.powers.get(vote.public_key)
        if power is None:
            error = InvalidMessage(
                "unknown_validator", f"{vote.public_key} is not a validator at {held.height}"
            )
            return Admission(status="invalid", error=error)
        votes = held.vote_set(vote.round, vote.vote_type)
        if votes.holds(vote):
            return Admission(status="known")  # a copy, or the same vote signed again
        first = votes.first.get(vote.public_key)
        slot = (vote.round, vote.vote_type, vote.public_key)
        counts = first is None or held.matters(vote.round, vote.block_hash)
        if not counts and slot in held.equivocations:
            return Admission(status="known")  # proven already, and no rule needs it
        try:
            verify_vote(vote, chain_id=self.chain_id, validators=held.validators)
        except InvalidMessage as error:
            return Admission(status="invalid", error=error)
        evidence = None
        if first is not None and slot not in held.equivocations:
            held.equivocations[slot] = None
            evidence = make_evidence(first, vote)
        if not counts:
            return Admission(status="equivocation", evidence=evidence)
        votes.add(vote, power)
        held.note_sender(vote.round, vote.public_key)
        return Admission(status="added", evidence=evidence)

    def _admit_proposal(self, held: HeightMessages, proposal: Proposal) -> Admission:
        existing = held.proposals.get(proposal.round)
        if existing is not None and existing.signed_bytes() == proposal.signed_bytes():
            return Admission(status="known")
        try:
            proposer = verify_proposal(proposal, chain_id=self.chain_id, validators=held.validators)
        except InvalidMessage as error:
            return Admission(status="invalid", error=error)
        if existing is not None:
            return self._equivocation(
                held, existing.signed(proposer), proposal.signed(proposer), PROPOSAL
            )
        held.proposals[proposal.round] = proposal
        held.proposers[proposal.round] = proposer
        held.note_sender(proposal.round, proposer)
        return Admission(status="added")

    def _equivocation(
        self,
        held: HeightMessages,
        first: Vote | SignedProposal,
        second: Vote | SignedProposal,
        kind: str,
    ) -> Admission:
        slot = (first.round, kind, first.public_key)
        if slot in held.equivocations:
            return Admission(status="known")  # one piece of evidence per slot is enough
        held.equivocations[slot] = None
        return Admission(status="equivocation", evidence=make_evidence(first, second))

    def proposer(self, round: int) -> str:
        """The proposer of (current height, `round`)."""
        return compute_proposer(self.current.validators, self.current.height, round)
