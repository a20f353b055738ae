"""How simulated validators behave on the wire: honestly, or as one of the Byzantine kinds.

A Byzantine validator runs the correct replica (so it takes part and stays plausible) and
then lies about what it sends:

- `silent`: sends nothing at all;
- `equivocate`: every message it signs goes to a random half of its peers, and a conflicting
  one (another block, another vote) to the other half;
- `invalid`: proposes blocks the ledger refuses (a wrong state root), and prevotes and
  precommits for them;
- `flood`: keeps sending validly signed votes for future rounds and heights;
- `replay`: keeps re-sending old messages it received, from any validator;
- `twins`: two processes share its key, each running the correct code on its own.
- `forge`: re-sends every proposal it receives from another validator, at once and to every
  peer, with the genuine signature and header but other transactions (the signature covers
  only the block hash: anyone who saw a proposal can do this).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections import deque
from collections.abc import Sequence

from consensus.messages import Message, Proposal, sign_proposal
from consensus.replica import Replica
from ledger.crypto import PrivateKey
from ledger.evidence import Vote, sign_vote
from ledger.state_transition import build_block

FLOOD_PER_TICK = 12
REPLAY_PER_TICK = 8
REPLAY_HISTORY_MAX = 400
TICK_MS = 250

Sends = list[tuple[int, Message]]  # (peer node id, message)


class Behaviour:
    """Honest: every broadcast goes to every peer."""

    name = "honest"
    ticks = False

    def __init__(self, key: PrivateKey, rng: random.Random) -> None:
        self.key = key
        self.rng = rng

    def broadcast(self, replica: Replica, message: Message, peers: Sequence[int]) -> Sends:
        return [(peer, message) for peer in peers]

    def received(self, message: Message) -> None:
        return None

    def on_receive(self, replica: Replica, message: Message, peers: Sequence[int]) -> Sends:
        """What it sends the moment `message` arrives (nothing, for the honest)."""
        return []

    def tick(self, replica: Replica, peers: Sequence[int]) -> Sends:
        return []

    def _own(self, message: Message) -> bool:
        if isinstance(message, Vote):
            return message.public_key == self.key.public_key_hex
        return isinstance(message, Proposal)


class Silent(Behaviour):
    name = "silent"

    def broadcast(self, replica: Replica, message: Message, peers: Sequence[int]) -> Sends:
        return []


class Equivocate(Behaviour):
    name = "equivocate"

    def broadcast(self, replica: Replica, message: Message, peers: Sequence[int]) -> Sends:
        if not self._own(message) or len(peers) < 2:
            return super().broadcast(replica, message, peers)
        other = self._conflicting(replica, message)
        shuffled = list(peers)
        self.rng.shuffle(shuffled)
        half = len(shuffled) // 2
        return [(peer, message) for peer in shuffled[:half]] + [
            (peer, other) for peer in shuffled[half:]
        ]

    def _conflicting(self, replica: Replica, message: Message) -> Message:
        if isinstance(message, Vote):
            other_hash = None if message.block_hash is not None else _random_hash(self.rng)
            return sign_vote(
                self.key,
                chain_id=message.chain_id,
                vote_type=message.vote_type,
                height=message.height,
                round=message.round,
                block_hash=other_hash,
            )
        assert isinstance(message, Proposal)
        if message.height != replica.height:
            return message
        built = build_block(  # another valid block: the same transactions a moment later
            replica.state,
            message.block.transactions,
            time=message.block.header.time + 1,
            proposer=self.key.public_key_hex,
            last_commit=message.block.last_commit,
        )
        return sign_proposal(
            self.key,
            chain_id=message.chain_id,
            height=message.height,
            round=message.round,
            valid_round=-1,
            block=built.block,
        )


class Invalid(Behaviour):
    name = "invalid"

    def broadcast(self, replica: Replica, message: Message, peers: Sequence[int]) -> Sends:
        if not isinstance(message, Proposal):
            return super().broadcast(replica, message, peers)
        header = dataclasses.replace(message.block.header, state_root=_random_hash(self.rng))
        block = dataclasses.replace(message.block, header=header)
        bad = sign_proposal(
            self.key,
            chain_id=message.chain_id,
            height=message.height,
            round=message.round,
            valid_round=-1,
            block=block,
        )
        sends: Sends = [(peer, bad) for peer in peers]
        for vote_type in ("prevote", "precommit"):
            vote = sign_vote(
                self.key,
                chain_id=message.chain_id,
                vote_type=vote_type,
                height=message.height,
                round=message.round,
                block_hash=block.block_hash(),
            )
            sends += [(peer, vote) for peer in peers]
        return sends


class Flood(Behaviour):
    name = "flood"
    ticks = True

    def tick(self, replica: Replica, peers: Sequence[int]) -> Sends:
        sends: Sends = []
        for _ in range(FLOOD_PER_TICK):
            vote = sign_vote(
                self.key,
                chain_id=replica.chain_id,
                vote_type=self.rng.choice(("prevote", "precommit")),
                height=replica.height + self.rng.choice((0, 0, 1, 1, 2, 7)),
                round=replica.round + self.rng.randint(1, 40),
                block_hash=self.rng.choice((None, _random_hash(self.rng))),
            )
            sends += [(peer, vote) for peer in peers]
        return sends


class Replay(Behaviour):
    name = "replay"
    ticks = True

    def __init__(self, key: PrivateKey, rng: random.Random) -> None:
        super().__init__(key, rng)
        self.history: deque[Message] = deque(maxlen=REPLAY_HISTORY_MAX)

    def received(self, message: Message) -> None:
        self.history.append(message)

    def tick(self, replica: Replica, peers: Sequence[int]) -> Sends:
        if not self.history:
            return []
        return [
            (self.rng.choice(list(peers)), self.rng.choice(self.history))
            for _ in range(REPLAY_PER_TICK)
        ]


class Forge(Behaviour):
    name = "forge"

    def on_receive(self, replica: Replica, message: Message, peers: Sequence[int]) -> Sends:
        if not isinstance(message, Proposal):
            return []
        block = message.block
        # Other transactions: the same ones reordered, or one where the block had none.
        other = block.transactions[::-1] if len(block.transactions) > 1 else ()
        if not block.transactions:
            other = tuple(replica.transactions(replica.state, block.header.time)[:1])
        if other == block.transactions:
            return []
        forged = dataclasses.replace(message, block=dataclasses.replace(block, transactions=other))
        return [(peer, forged) for peer in peers]


BEHAVIOUR_CLASSES: dict[str, type[Behaviour]] = {
    "silent": Silent,
    "equivocate": Equivocate,
    "invalid": Invalid,
    "flood": Flood,
    "replay": Replay,
    "forge": Forge,
    "twins": Behaviour,  # each twin is honest; that there are two is the fault
}


def _random_hash(rng: random.Random) -> str:
    return hashlib.sha256(rng.randbytes(8)).hexdigest()
