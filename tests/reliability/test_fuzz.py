"""Property fuzzing of every decoder and of the canonical encoder (issue 7, item 5).

Each decoder of outside input meets, through the bytes a client would send: arbitrary bytes,
and valid documents mutated at a random place (a value replaced by any JSON value, a member
deleted, a member added). Its contract: a decoded value or a `LedgerError` (whose code the API
maps to a problem), never any other exception. Valid documents survive their own wire form.
The canonical encoder is compared byte for byte with the `rfc8785` package and inverted by the
decoder in tests/ledger/test_encoding.py; here it also meets the mutated documents.

The long run: `HYPOTHESIS_PROFILE=nightly .venv/bin/pytest tests/reliability/test_fuzz.py`.
A coverage-guided run of the JSON decoder and the envelope parser with atheris:
`.venv/bin/python -m tests.reliability.fuzz_decoder` (see there).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from api.cli_verify import parse_checkpoint
from api.cursors import decode_cursor, encode_cursor
from api.node import Node
from consensus.messages import decode_batch, decode_message, encode_batch
from ledger.blocks import parse_block, parse_certificate, parse_header
from ledger.encoding import canonical, decode
from ledger.errors import LedgerError
from ledger.evidence import parse_evidence
from ledger.genesis import decode_genesis, parse_genesis
from ledger.receipts import verify_receipt
from ledger.store import Store
from ledger.transactions import decode_envelope, parse_envelope
from tests.consensus.test_messages import LIMIT, decision, proposal, vote
from tests.factory import Chain

CHAIN = Chain().funded()
BLOCK = CHAIN.blocks[-1].block
CERTIFICATE = CHAIN.certify(CHAIN.blocks[-1])

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.text(max_size=40)
    | st.sampled_from(["", "B-1", "00" * 32, "zibo-test", "household-electricity"])
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a JSON document: object members and array items, at any depth."""
    yield prefix
    if isinstance(value, dict):
        for name, item in value.items():
            yield from paths(item, (*prefix, name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, (*prefix, index))


@st.composite
def mutated(draw: st.DrawFn, document: Any) -> bytes:
    """`document` changed at one place, as JSON bytes (not always canonical, as a client's)."""
    value = json.loads(json.dumps(document))
    path = draw(st.sampled_from(list(paths(value))))
    action = draw(st.sampled_from(["replace", "delete", "add"]))
    if not path:
        value = draw(JSON_VALUES)
    else:
        parent = value
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        if action == "replace":
            parent[last] = draw(JSON_VALUES)
        elif action == "delete":
            del parent[last]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=12))] = draw(JSON_VALUES)
        else:
            parent.insert(last, draw(JSON_VALUES))
    return json.dumps(value, ensure_ascii=draw(st.booleans())).encode()


def holds_the_contract(decoder: Callable[[bytes], object], data: bytes) -> None:
    """A value or a LedgerError; anything else escapes and fails the test."""
    try:
        decoder(data)
    except LedgerError as error:
        assert error.code, error


def parse_json(parser: Callable[[Any], object]) -> Callable[[bytes], object]:
    return lambda data: parser(decode(data))


@pytest.fixture(scope="module")
def receipt(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real receipt, from a node that committed a retirement."""
    data: Path = tmp_path_factory.mktemp("receipt")
    chain = Chain(block_interval_ms=20)
    Store.create(data, chain.genesis_document).close()
    node = Node(data, chain.validator)
    node.start()
    try:
        retire = chain.tx(
            chain.alice,
            "retire",
            {"batch_id": "B-1", "quantity": 3, "beneficiary": "A", "purpose": "voluntary"},
        )
        envelopes = [chain.accredit(), chain.issue([(chain.alice, 10)]), retire]
        for envelope in envelopes:
            node.submit([envelope])
            (outcome,) = node.wait_for_commit([envelope.tx_id], 30)
            assert outcome is not None and outcome.status == "committed"
        document: dict[str, Any] = node.reader().receipt(node.state, retire.tx_id)
    finally:
        node.stop()
    verify_receipt(document, validators_hash=CHAIN.state.validators_hash())
    return document


DECODERS: dict[str, tuple[Callable[[bytes], object], Any]] = {
    "decode": (decode, {"a": [1, "b", None, True, {"c": 2}]}),
    "envelope": (
        lambda data: decode_envelope(data, transaction_bytes_max=LIMIT),
        CHAIN.blocks[-1].block.transactions[-1].to_json(),
    ),
    "envelope (parsed)": (
        parse_json(lambda value: parse_envelope(value, transaction_bytes_max=LIMIT)),
        BLOCK.transactions[0].to_json(),
    ),
    "block": (
        parse_json(lambda value: parse_block(value, transaction_bytes_max=LIMIT)),
        BLOCK.to_json(),
    ),
    "header": (parse_json(parse_header), BLOCK.header.to_json()),
    "certificate": (parse_json(parse_certificate), CERTIFICATE.to_json()),
    "genesis": (decode_genesis, CHAIN.genesis_document),
    "genesis (parsed)": (parse_json(parse_genesis), CHAIN.genesis_document),
    "checkpoint": (
        parse_json(parse_checkpoint),
        {"header": BLOCK.header.to_json(), "certificate": CERTIFICATE.to_json()},
    ),
    "consensus vote": (
        lambda data: decode_message(data, transaction_bytes_max=LIMIT),
        vote().to_json(),
    ),
    "consensus proposal": (
        lambda data: decode_message(data, transaction_bytes_max=LIMIT),
        proposal().to_json(),
    ),
    "consensus decision": (
        lambda data: decode_message(data, transaction_bytes_max=LIMIT),
        decision().to_json(),
    ),
    "evidence": (
        parse_json(parse_evidence),
        {"type": "duplicate_vote", "a": vote("aa" * 32).to_json(), "b": vote("bb" * 32).to_json()},
    ),
}


@pytest.mark.parametrize("name", list(DECODERS))
@given(data=st.data())
def test_every_decoder_keeps_its_contract_on_mutated_documents(
    name: str, data: st.DataObject
) -> None:
    decoder, sample = DECODERS[name]
    decoder(json.dumps(sample).encode())  # the sample itself decodes
    holds_the_contract(decoder, data.draw(mutated(sample)))


@pytest.mark.parametrize("name", list(DECODERS))
@given(raw=st.binary(max_size=256))
def test_every_decoder_keeps_its_contract_on_any_bytes(name: str, raw: bytes) -> None:
    holds_the_contract(DECODERS[name][0], raw)


@given(data=st.data())
def test_a_batch_of_consensus_messages_keeps_its_contract(data: st.DataObject) -> None:
    lines = encode_batch([vote(), proposal(), decision()]).split(b"\n")
    index = data.draw(st.integers(0, len(lines) - 1))
    if lines[index]:
        lines[index] = data.draw(mutated(json.loads(lines[index])))
    holds_the_contract(
        lambda body: decode_batch(body, transaction_bytes_max=LIMIT), b"\n".join(lines)
    )


@given(data=st.data())
def test_the_receipt_verifier_refuses_every_mutation_it_cannot_prove(
    receipt: dict[str, Any], data: st.DataObject
) -> None:
    changed = json.loads(data.draw(mutated(receipt)))
    try:
        verify_receipt(changed, validators_hash=CHAIN.state.validators_hash())
    except LedgerError as error:
        assert error.code == "invalid_proof"
    else:  # accepted: then it proves the same retirement (a no-op change, e.g. re-added key)
        assert changed["retirement"] == receipt["retirement"]
        assert changed["checkpoint"] == receipt["checkpoint"]


@given(cursor=st.text(max_size=80) | st.none())
def test_a_cursor_keeps_its_contract(cursor: str | None) -> None:
    try:
        position = decode_cursor(cursor, {"before": int})
    except LedgerError as error:
        assert error.code == "invalid_field"
    else:  # what is taken is the one spelling this node gives out
        assert position is None or encode_cursor(position) == cursor


@pytest.mark.parametrize("name", list(DECODERS))
@given(data=st.data())
def test_the_canonical_encoder_agrees_with_rfc8785_on_what_decodes(
    name: str, data: st.DataObject
) -> None:
    """Whatever the strict decoder accepts, canonical encodes as RFC 8785 does, and decoding
    the canonical bytes gives the value back."""
    try:
        value = decode(data.draw(mutated(DECODERS[name][1])))
    except LedgerError:
        return
    try:
        encoded = canonical(value)
    except LedgerError:
        return  # a key outside [a-z][a-z0-9_]*: outside the signed value space
    assert encoded == rfc8785.dumps(value)
    assert decode(encoded) == value
