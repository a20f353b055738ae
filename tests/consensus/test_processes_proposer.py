"""Four real `tanlian node` processes on 127.0.0.1: forwarding, and a stopped proposer.

Reuses the consortium of tests/consensus/test_processes.py (its fixture starts four
validators and stops exactly those pids). Transactions submitted to four different
validators at once are forwarded to every pool, so the next proposer takes them, not each
its own validator in its own turn; the validator that is to propose next is SIGSTOPped: the
others move to the next round and go on, and after SIGCONT it catches up and proposes
again; every transaction any node acknowledged as committed is in every node's chain
exactly once.
"""

from __future__ import annotations

import json
import signal
import threading
from collections import Counter
from typing import Any

import httpx
import pytest

from ledger.blocks import parse_block
from ledger.crypto import PrivateKey
from ledger.genesis import parse_genesis
from ledger.proposer import compute_proposer
from ledger.transactions import Envelope, Transaction, sign_transaction
from tests.consensus.test_node import WORLD, document
from tests.consensus.test_processes import NODES, Consortium, consortium
from tests.factory import CHAIN_ID, key

__all__ = ["consortium"]  # the fixture
VALIDATORS = parse_genesis(document()).validators
KEYS = [k.public_key_hex for k in WORLD.keys]


def new_account(name: str) -> Envelope:
    """A transaction valid from genesis on, independent of any other: a new account sets
    its own key."""
    owner: PrivateKey = key(name)
    transaction = Transaction(
        chain_id=CHAIN_ID,
        type="set_keys",
        signer=owner.account_id,
        nonce=1,
        payload={"keys": [owner.public_key_hex], "threshold": 1},
    )
    return sign_transaction(transaction, [owner])


def proposer_index(height: int, round: int) -> int:
    return KEYS.index(compute_proposer(VALIDATORS, height, round))


def blocks(c: Consortium, index: int, to_height: int) -> list[dict[str, Any]]:
    """Every block line of a node's export up to `to_height`: {"block", "certificate"}."""
    return [json.loads(line) for line in c.export(index, to_height)[1:]]


def submit(c: Consortium, index: int, envelope: Envelope, wait: bool) -> httpx.Response:
    target = f"{c.urls[index]}/v1/transactions" + ("?wait=commit" if wait else "")
    return c.client.post(target, json=envelope.to_json(), timeout=15)


def test_transactions_sent_to_four_validators_are_forwarded_to_the_next_proposer(
    consortium: Consortium,
) -> None:
    c = consortium
    envelopes = [new_account(f"forwarded-{i}") for i in range(NODES)]
    before = max(h or 0 for h in c.heights())
    for index, envelope in enumerate(envelopes):  # each to another validator
        assert submit(c, index, envelope, wait=False).status_code == 202
    c.wait(lambda: all(committed_at(c, 0, e.tx_id) is not None for e in envelopes), "commit")
    at = [committed_at(c, 0, e.tx_id) or 0 for e in envelopes]
    proposer = {
        line["block"]["header"]["height"]: line["block"]["header"]["proposer"]
        for line in blocks(c, 0, max(at))
    }
    # Without forwarding a transaction can only be proposed by the validator it was sent to,
    # each in its own turn: four heights, each block by the one that took it. With it the
    # first proposer after the submissions holds them all: at least one (most often all
    # four, in one block or two) lands in a block another validator proposed.
    elsewhere = [i for i, height in enumerate(at) if proposer[height] != KEYS[i]]
    assert elsewhere, (at, [KEYS.index(proposer[h]) for h in at])
    assert min(at) > before, (before, at)


def committed_at(c: Consortium, index: int, tx_id: str) -> int | None:
    answer = c.client.get(f"{c.urls[index]}/v1/transactions/{tx_id}")
    body: dict[str, Any] = answer.json()
    if answer.status_code != 200 or body.get("status") != "committed":
        return None
    height: int = body["height"]
    return height


class Submitter:
    """A thread sending independent transactions with ?wait=commit to the running validators in
    turn, keeping the ids each node acknowledged as committed."""

    def __init__(self, c: Consortium) -> None:
        self.c = c
        self.stopped: set[int] = set()
        self.acknowledged: list[str] = []
        self.sent = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        number = 0
        while not self.done.is_set():
            running = [i for i in range(NODES) if i not in self.stopped]
            index = running[number % len(running)]
            envelope = new_account(f"stopped-proposer-{number}")
            number += 1
            try:
                answer = submit(self.c, index, envelope, wait=True)
            except httpx.HTTPError:
                continue
            self.sent += 1
            if answer.status_code == 200 and answer.json()["status"] == "committed":
                self.acknowledged.append(envelope.tx_id)


@pytest.mark.long(27)
def test_a_stopped_proposer_changes_the_round_and_rejoins(consortium: Consortium) -> None:
    c = consortium
    submitter = Submitter(c)
    submitter.thread.start()
    try:
        c.wait(lambda: len(submitter.acknowledged) >= 3, "commits before the stop")
        # Stop the validator that proposes two heights on: the height in flight may be
        # proposed already, the next cannot be.
        stopped_at = max(h or 0 for h in c.heights())
        victim = proposer_index(stopped_at + 2, 0)
        submitter.stopped.add(victim)
        c.signal(victim, signal.SIGSTOP)
        at_stop = len(submitter.acknowledged)
        others = [i for i in range(NODES) if i != victim]
        # Its next turns come round every four heights: the others must pass two of them.
        c.wait(
            lambda: all((h or 0) >= stopped_at + 7 for h in c.heights(others)),
            "go on without the proposer",
            seconds=60,
        )
        top = min(h or 0 for h in c.heights(others))
        lines = blocks(c, others[0], top)
        turns = [
            line
            for line in lines
            if line["block"]["header"]["height"] >= stopped_at + 2
            and proposer_index(line["block"]["header"]["height"], 0) == victim
        ]
        assert turns, "the stopped validator had no turn"
        for line in turns:  # its round 0 timed out: another round decided the height
            assert line["certificate"]["round"] >= 1
            assert line["block"]["header"]["proposer"] != KEYS[victim]
        # Commits go on while it is stopped (each client waits at most its commit wait, so
        # on a loaded machine the first may come a few heights on: wait for it, bounded).
        c.wait(lambda: len(submitter.acknowledged) > at_stop, "commits while stopped", seconds=60)

        c.signal(victim, signal.SIGCONT)
        submitter.stopped.discard(victim)
        resumed = max(h or 0 for h in c.heights(others))
        c.wait(lambda: (c.height(victim) or 0) >= resumed, "catch up after SIGCONT")
        # It rejoins as a proposer: a later block of its own at round 0.
        c.wait(
            lambda: any(
                line["block"]["header"]["proposer"] == KEYS[victim]
                and line["certificate"]["round"] == 0
                and line["block"]["header"]["height"] > resumed
                for line in blocks(c, victim, c.height(victim) or 0)
            ),
            "propose again",
            seconds=60,
        )
    finally:
        submitter.done.set()
        submitter.thread.join(timeout=20)
    acknowledged = submitter.acknowledged
    needed = max(committed_at(c, others[0], t) or 0 for t in acknowledged)
    c.wait(lambda: all((h or 0) >= needed for h in c.heights()), "every node at the last commit")
    top = c.assert_one_chain(list(range(NODES)))
    for index in range(NODES):
        chain = [
            parse_block(line["block"], transaction_bytes_max=16384)
            for line in blocks(c, index, top)
        ]
        counts = Counter(e.tx_id for block in chain for e in block.transactions)
        assert all(n == 1 for n in counts.values()), "a transaction committed twice"
        missing = [t for t in acknowledged if counts.get(t) != 1]
        assert not missing, f"node {index} lacks acknowledged transactions {missing}"
