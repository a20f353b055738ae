"""What validators send each other besides votes: transactions, and blocks by reference.

docs/decisions/0006 ("Pool forwarding" and "Blocks larger than a request body") says why. A
peer batch (the NDJSON body of `POST /v1/consensus/messages`) holds, one per line, each
decoded on its own:

    ENVELOPE            a transaction (SPEC §3.1), as its canonical bytes (its log leaf):
                        forwarded once by the validator a client submitted it to, or one of
                        the transactions of a block sent by reference
    VOTE, PROPOSAL, DECISION    as `consensus.messages` (a whole block on one line is still
                        understood, but no sender here makes one)
    PROPOSAL BY REFERENCE       {"chain_id", "height", "round", "valid_round", "block_ref",
                        "signature"}: a proposal whose block lists its transactions by their
                        RFC 9162 leaf hashes (signatures included: a transaction's id names
                        the transaction alone, and two signings of it are different leaves):
                        "block_ref" is {"header", "last_commit", "evidence", "leaf_hashes"}
    DECISION BY REFERENCE       {"block_ref", "certificate"}

`encode_lines` turns the replica's messages into lines: a proposal or a decision becomes its
block's transactions, then the message by reference, so no line is larger than a transaction
or a block's list of hashes, and `consensus.transport.batches` cuts any block into bodies
within the API's request limit (SPEC §7.2's 4 MiB).

`decode_batch` reads a batch, skipping without parsing every envelope line whose leaf hash
the receiver already holds (`known`: its pool and its `Relay`), so a block's transactions,
forwarded to a validator earlier, are neither parsed nor checked again when the block comes.

`Relay` is the receiver's holding: envelopes lately received (bounded, least recently used
first out), whether their signatures were checked here, and the messages by reference still
missing a transaction (bounded; the newest kept). A message by reference becomes the
replica's `Proposal` or `Decision` once every transaction is held, from the pool or the
relay; until then it waits (the sender re-sends the block with its proposal every
REBROADCAST_INTERVAL_MS). Nothing here is trusted: the replica checks the proposal's
signature, the certificate, and that the block applies, as for a block sent whole.

No storage, network or clock; `Relay` takes a lock of its own, as the node's request threads
share it.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from consensus.messages import (
    Decision,
    MalformedMessage,
    Message,
    Proposal,
    Vote,
    batch_lines,
    encode_message,
    parse_message,
)
from ledger import schema as s
from ledger.blocks import Block, Certificate, parse_block, parse_certificate
from ledger.encoding import JSON, canonical, decode
from ledger.errors import LedgerError
from ledger.evidence import parse_valid_round, valid_round_to_json
from ledger.limits import BLOCK_TRANSACTIONS_MAX_CEILING
from ledger.merkle import leaf_hash
from ledger.transactions import Envelope, parse_envelope

# A canonical envelope's keys sort "signatures" before "tx" (SPEC §2.1).
_ENVELOPE_LINE: Final = b'{"signatures":'
REFERENCES_WAITING_MAX: Final = 16  # messages by reference held while transactions are missing
# A reference waits only for the next height or the one after (a proposal for H+2 may come
# before this node has decided H+1): one of any later height would wait forever.
REFERENCE_HEIGHTS_AHEAD: Final = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockRef:
    """A block without its transactions, and their leaf hashes in order."""

    skeleton: Block  # header, last_commit and evidence; no transactions
    leaf_hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProposalRef:
    chain_id: str
    height: int
    round: int
    valid_round: int
    block: BlockRef
    signature: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DecisionRef:
    block: BlockRef
    certificate: Certificate


Reference = ProposalRef | DecisionRef


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerBatch:
    """A decoded batch: envelopes new to the receiver, and messages in order."""

    envelopes: tuple[Envelope, ...]
    messages: tuple[Message | Reference, ...]
    lines: int


# --- sending --------------------------------------------------------------------------------------


def _block_ref_json(block: Block) -> dict[str, JSON]:
    value = dataclasses.replace(block, transactions=()).to_json()
    del value["transactions"]
    value["leaf_hashes"] = [envelope.leaf_hash.hex() for envelope in block.transactions]
    return value


def encode_reference(message: Proposal | Decision) -> bytes:
    """The canonical bytes of a proposal or decision by reference."""
    if isinstance(message, Decision):
        value: dict[str, JSON] = {
            "block_ref": _block_ref_json(message.block),
            "certificate": message.certificate.to_json(),
        }
    else:
        value = {
            "chain_id": message.chain_id,
            "height": message.height,
            "round": message.round,
            "valid_round": valid_round_to_json(message.valid_round),
            "block_ref": _block_ref_json(message.block),
            "signature": message.signature,
        }
    return canonical(value)


def encode_lines(messages: Sequence[Message]) -> list[bytes]:
    """Each message as lines for a peer: a vote as itself; a proposal or decision as its
    block's transactions (their leaves) followed by the message by reference."""
    lines: list[bytes] = []
    for message in messages:
        if isinstance(message, Vote):
            lines.append(encode_message(message))
        else:
            lines.extend(envelope.leaf for envelope in message.block.transactions)
            lines.append(encode_reference(message))
    return lines


# --- receiving ------------------------------------------------------------------------------------

_BLOCK_REF_SCHEMA: Final = s.obj(
    {
        "header": lambda path, value: value,  # parse_block checks these three
        "last_commit": lambda path, value: value,
        "evidence": lambda path, value: value,
        "leaf_hashes": s.array(s.HASH_HEX, low=0, high=BLOCK_TRANSACTIONS_MAX_CEILING),
    }
)
_PROPOSAL_REF_SCHEMA: Final = s.obj(
    {
        "chain_id": s.text(64, pattern=s.CHAIN_ID),
        "height": s.integer(1),
        "round": s.integer(0),
        "valid_round": lambda path, value: value,  # checked against the round
        "block_ref": lambda path, value: value,
        "signature": s.signature_hex,
    }
)
_DECISION_REF_SCHEMA: Final = s.obj(
    {"block_ref": lambda path, value: value, "certificate": lambda path, value: value}
)


def _parse_block_ref(value: Any, path: str, transaction_bytes_max: int) -> BlockRef:
    fields = _BLOCK_REF_SCHEMA(path, value)
    skeleton = parse_block(
        {
            "header": fields["header"],
            "transactions": [],
            "last_commit": fields["last_commit"],
            "evidence": fields["evidence"],
        },
        transaction_bytes_max=transaction_bytes_max,
        path=path,
    )
    return BlockRef(
        skeleton=skeleton, leaf_hashes=tuple(bytes.fromhex(h) for h in fields["leaf_hashes"])
    )


def parse_reference(value: dict[str, Any], *, transaction_bytes_max: int) -> Reference:
    """A proposal or decision by reference from decoded JSON, strictly."""
    try:
        if "certificate" in value:
            fields = _DECISION_REF_SCHEMA("decision", value)
            return DecisionRef(
                block=_parse_block_ref(
                    fields["block_ref"], "decision.block_ref", transaction_bytes_max
                ),
                certificate=parse_certificate(fields["certificate"], "decision.certificate"),
            )
        fields = _PROPOSAL_REF_SCHEMA("proposal", value)
        return ProposalRef(
            chain_id=fields["chain_id"],
            height=fields["height"],
            round=fields["round"],
            valid_round=parse_valid_round(
                "proposal.valid_round", fields["valid_round"], round=fields["round"]
            ),
            block=_parse_block_ref(
                fields["block_ref"], "proposal.block_ref", transaction_bytes_max
            ),
            signature=fields["signature"],
        )
    except MalformedMessage:
        raise
    except LedgerError as error:
        raise MalformedMessage(error.message) from error


def _decode_line(line: bytes, transaction_bytes_max: int) -> Envelope | Message | Reference:
    try:
        value = decode(line)
    except LedgerError as error:
        raise MalformedMessage(error.message) from error
    if isinstance(value, dict) and "tx" in value:
        try:
            return parse_envelope(value, transaction_bytes_max=transaction_bytes_max)
        except LedgerError as error:
            raise MalformedMessage(f"transaction: {error.message}") from error
    if isinstance(value, dict) and "block_ref" in value:
        return parse_reference(value, transaction_bytes_max=transaction_bytes_max)
    return parse_message(value, transaction_bytes_max=transaction_bytes_max)


def decode_batch(
    data: bytes, *, transaction_bytes_max: int, known: Callable[[bytes], bool]
) -> PeerBatch:
    """A peer batch: 1 to CONSENSUS_MESSAGES_BATCH_MAX lines (a final newline is optional).
    Envelope lines whose leaf hash is `known` are skipped unparsed. One bad line refuses the
    batch, naming the line."""
    lines = batch_lines(data, "lines")
    envelopes: list[Envelope] = []
    messages: list[Message | Reference] = []
    for number, line in enumerate(lines, start=1):
        if line.startswith(_ENVELOPE_LINE) and known(leaf_hash(line)):
            continue  # held already: the same canonical bytes, signatures and all
        try:
            item = _decode_line(line, transaction_bytes_max)
        except MalformedMessage as error:
            raise MalformedMessage(f"line {number}: {error.message}", code=error.code) from error
        if isinstance(item, Envelope):
            envelopes.append(item)
        else:
            messages.append(item)
    return PeerBatch(envelopes=tuple(envelopes), messages=tuple(messages), lines=len(lines))


def first_missing(
    reference: Reference, lookup: Callable[[bytes], Envelope | None], start: int = 0
) -> int | None:
    """The position of the first transaction from `start` on that `lookup` does not hold,
    or None when it holds them all."""
    hashes = reference.block.leaf_hashes
    for position in range(start, len(hashes)):
        if lookup(hashes[position]) is None:
            return position
    return None


def complete(reference: Reference, lookup: Callable[[bytes], Envelope | None]) -> Message | None:
    """The message with its block's transactions filled in, or None if one is missing."""
    transactions = []
    for hash_ in reference.block.leaf_hashes:
        envelope = lookup(hash_)
        if envelope is None:
            return None
        transactions.append(envelope)
    block = dataclasses.replace(reference.block.skeleton, transactions=tuple(transactions))
    if isinstance(reference, DecisionRef):
        return Decision(block=block, certificate=reference.certificate)
    return Proposal(
        chain_id=reference.chain_id,
        height=reference.height,
        round=reference.round,
        valid_round=reference.valid_round,
        block=block,
        block_hash=block.block_hash(),
        signature=reference.signature,
    )


def _slot(reference: Reference) -> tuple[str, int, int]:
    height = reference.block.skeleton.height
    if isinstance(reference, DecisionRef):
        return ("decision", height, 0)
    return ("proposal", height, reference.round)


class Relay:
    """A receiver's envelopes lately received and its messages by reference still waiting;
    see the module docstring. Every method may be called from any thread."""

    def __init__(self, *, held_max: int, waiting_max: int = REFERENCES_WAITING_MAX) -> None:
        assert held_max > 0 and waiting_max > 0
        self.held_max = held_max
        self.waiting_max = waiting_max
        self._lock = threading.Lock()
        # leaf hash -> (envelope, whether its signatures verified here)
        self._held: OrderedDict[bytes, tuple[Envelope, bool]] = OrderedDict()
        # slot -> (the reference, how many of its transactions were found held): a waiting
        # reference is looked at again from there, not from its first transaction, on every
        # batch (a reference listing thousands of held leaves then an unknown one would cost
        # each batch thousands of lookups).
        self._waiting: OrderedDict[tuple[str, int, int], tuple[Reference, int]] = OrderedDict()

    def hold(self, envelope: Envelope, *, verified: bool) -> None:
        """Keep `envelope` (the least recently held beyond `held_max` are dropped, before it
        comes: the holding never exceeds `held_max`)."""
        key = envelope.leaf_hash
        with self._lock:
            if key not in self._held and len(self._held) >= self.held_max:
                self._held.popitem(last=False)
            self._held[key] = (envelope, verified)
            self._held.move_to_end(key)

    def lookup(self, hash_: bytes) -> Envelope | None:
        held = self._held.get(hash_)
        return None if held is None else held[0]

    def verified(self, envelope: Envelope) -> bool:
        """This very envelope (same leaf) is held, and its signatures verified here."""
        held = self._held.get(envelope.leaf_hash)
        return held is not None and held[1] and held[0].leaf == envelope.leaf

    def waiting(self) -> int:
        return len(self._waiting)

    def receive(
        self,
        items: Sequence[Message | Reference],
        lookup: Callable[[bytes], Envelope | None],
        *,
        height_min: int,
        refuses: Callable[[Reference], bool] = lambda reference: False,
    ) -> list[Message]:
        """The messages ready for the replica: `items` in order, each message by reference
        completed through `lookup`, then any waiting one now complete. Incomplete ones of
        `height_min` or the height after wait; the others are dropped (decided here, or too
        far ahead to wait for), and so is a reference the receiver `refuses` (its leaf
        hashes are not what its header commits to: it must not take the waiting place of the
        real one)."""
        ready: list[Message] = []
        with self._lock:
            for slot in [slot for slot in self._waiting if slot[1] < height_min]:
                del self._waiting[slot]
            for item in items:
                if not isinstance(item, ProposalRef | DecisionRef):
                    ready.append(item)
                    continue
                if refuses(item):
                    continue
                message = complete(item, lookup)  # mostly complete: each looked up once
                if message is not None:
                    ready.append(message)
                elif (
                    height_min
                    <= item.block.skeleton.height
                    <= (height_min + REFERENCE_HEIGHTS_AHEAD)
                ):
                    # The oldest goes before the newest comes, so no reader (`waiting`, which
                    # takes no lock) ever sees more than waiting_max.
                    slot = _slot(item)
                    if slot not in self._waiting and len(self._waiting) >= self.waiting_max:
                        self._waiting.popitem(last=False)
                    self._waiting[slot] = (item, first_missing(item, lookup) or 0)
                    self._waiting.move_to_end(slot)
            for slot, (reference, found) in list(self._waiting.items()):
                missing = first_missing(reference, lookup, found)
                # Held envelopes can be dropped meanwhile: all are looked up once none seems
                # missing, and the search starts over if one is.
                message = None if missing is not None else complete(reference, lookup)
                if message is not None:
                    del self._waiting[slot]
                    ready.append(message)
                else:
                    self._waiting[slot] = (reference, missing or 0)
        return ready
