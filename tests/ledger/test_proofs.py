"""Proof generation and verification end to end (SPEC §4, §6.1, §6.3, §6.4).

1. The RFC 9162 log: proofs read from the nodes `LogState.append` reports equal the reference
   generator of `test_merkle` (and Certificate Transparency's pinned vectors), and read only
   O(log n) nodes.
2. The sparse Merkle tree: every key proves present or absent, every proof verifies, every
   tampered or malformed proof fails with `InvalidProofError` and nothing else.
3. A real `Store` fed by `SoloProducer`: inclusion, consistency and state proofs verify against
   the checkpoints they come with, and damaged log nodes are refused, never served.
4. Retirement receipts: each verifies offline after a JSON round trip, and each kind of
   tampering fails at the numbered step of `ledger.receipts` that guards it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import random
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from consensus.producer import SoloProducer
from ledger.blocks import (
    Validator,
    compute_validators_hash,
    parse_certificate,
    parse_header,
    sign_certificate,
    verify_certificate,
)
from ledger.encoding import decode
from ledger.errors import DecodeError, InvalidProofError, LedgerError, StoreError
from ledger.merkle import (
    LogState,
    NodeReader,
    compute_root,
    consistency_path,
    inclusion_path,
    leaf_hash,
    subtree_hash,
    verify_consistency,
    verify_inclusion,
)
from ledger.receipts import verify_receipt
from ledger.state import State
from ledger.state_tree import (
    EMPTY_HASH,
    StateTree,
    compute_leaf_hash,
    compute_state_root,
    key_hash,
    prove_state,
    value_hash,
    verify_state_proof,
)
from ledger.store import DATABASE_FILE, Store
from ledger.transactions import Envelope
from tests.factory import GENESIS_TIME, Chain, key
from tests.ledger.test_merkle import consistency_proof, inclusion_proof, make_leaf, mth

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
SIZE_MAX = 64
SYNTHETIC_SIZE_MAX = 2**20
PROGRAM = "zibo-green-home"


def ceil_log2(n: int) -> int:
    return (n - 1).bit_length()


def flip_hex(text: str, position: int = 0) -> str:
    """Another lowercase hex digit at `position`."""
    digit = "1" if text[position] == "0" else "0"
    return text[:position] + digit + text[position + 1 :]


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON text (so `true` differs from `1` and `1.0` from `1`)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# --- 1. the RFC 9162 log ----------------------------------------------------------------------


LEAVES = [make_leaf(i) for i in range(SIZE_MAX)]


def grow_log(leaves: list[bytes]) -> list[tuple[LogState, dict[tuple[int, int], bytes]]]:
    """The log and the nodes it reported after each append, one leaf at a time: entry n is the
    log of size n with exactly the nodes a store would hold then."""
    log = LogState()
    nodes: dict[tuple[int, int], bytes] = {}
    snapshots = [(log, dict(nodes))]
    for leaf in leaves:
        log, completed = log.append([leaf])
        for node in completed:
            assert (node.level, node.index) not in nodes, "a node is reported once"
            nodes[(node.level, node.index)] = node.hash
        snapshots.append((log, dict(nodes)))
    return snapshots


LOGS = grow_log(LEAVES)


def stored_reader(nodes: dict[tuple[int, int], bytes], size: int) -> NodeReader:
    """Reads stored nodes, and fails on one that is not complete in a log of `size`."""

    def read(level: int, index: int) -> bytes:
        assert (index + 1) << level <= size, f"node ({level}, {index}) read at size {size}"
        return nodes[(level, index)]

    return read


def test_append_reports_every_perfect_subtree_exactly_once() -> None:
    for size, (log, nodes) in enumerate(LOGS):
        assert log.size == size
        assert log.root() == mth(0, size)
        expected = {
            (level, index): mth(index << level, (index + 1) << level)
            for level in range(size.bit_length())
            for index in range(size >> level)
        }
        assert nodes == expected
        assert len(nodes) == 2 * size - size.bit_count()
    # Appending in one batch reports the same nodes.
    batch, completed = LogState().append(LEAVES)
    assert batch == LOGS[-1][0]
    assert {(n.level, n.index): n.hash for n in completed} == LOGS[-1][1]


def test_inclusion_paths_from_stored_nodes_equal_the_rfc_reference() -> None:
    for size in range(1, SIZE_MAX + 1):
        log, nodes = LOGS[size]
        root = log.root()
        for index in range(size):
            path = inclusion_path(index, size, stored_reader(nodes, size))
            assert path == inclusion_proof(index, size), (index, size)
            assert len(path) <= ceil_log2(size)
            verify_inclusion(leaf_hash=LEAVES[index], index=index, size=size, path=path, root=root)


def test_consistency_paths_from_stored_nodes_equal_the_rfc_reference() -> None:
    for size2 in range(1, SIZE_MAX + 1):
        log2, nodes = LOGS[size2]
        for size1 in range(1, size2 + 1):
            path = consistency_path(size1, size2, stored_reader(nodes, size2))
            assert path == consistency_proof(size1, size2), (size1, size2)
            assert (path == []) == (size1 == size2)
            assert len(path) <= ceil_log2(size2) + 1
            verify_consistency(
                size1=size1, size2=size2, path=path, root1=LOGS[size1][0].root(), root2=log2.root()
            )


def rfc_ranges(size: int) -> set[tuple[int, int]]:
    """Every [start, end) whose MTH is an element of some PATH(m, D[size]) or
    PROOF(m, D[size]) in RFC 9162 §2.1.3.1 / §2.1.4.1."""
    ranges: set[tuple[int, int]] = set()

    def split(n: int) -> int:
        return 1 << ((n - 1).bit_length() - 1)

    def path(m: int, start: int, end: int) -> None:
        if end - start == 1:
            return
        k = split(end - start)
        if m < k:
            ranges.add((start + k, end))
            path(m, start, start + k)
        else:
            ranges.add((start, start + k))
            path(m - k, start + k, end)

    def subproof(m: int, start: int, end: int, complete: bool) -> None:
        if m == end - start:
            if not complete:
                ranges.add((start, end))
            return
        k = split(end - start)
        if m <= k:
            ranges.add((start + k, end))
            subproof(m, start, start + k, complete)
        else:
            ranges.add((start, start + k))
            subproof(m - k, start + k, end, False)

    for m in range(size):
        path(m, 0, size)
    for m in range(1, size + 1):
        subproof(m, 0, size, True)
    return ranges


def test_subtree_hash_equals_compute_root_on_the_ranges_the_recursion_uses() -> None:
    checked = 0
    for size in range(1, SIZE_MAX + 1):
        _, nodes = LOGS[size]
        for start, end in sorted(rfc_ranges(size)):
            expected = compute_root(LEAVES[start:end])
            assert subtree_hash(start, end, stored_reader(nodes, size)) == expected
            assert expected == mth(start, end)
            checked += 1
    assert checked > 1000


def synthetic_reader(size: int, calls: list[tuple[int, int]]) -> NodeReader:
    """Deterministic fake hashes for a log of `size` leaves that is never built."""

    def read(level: int, index: int) -> bytes:
        assert (index + 1) << level <= size, f"node ({level}, {index}) read at size {size}"
        calls.append((level, index))
        return hashlib.sha256(b"%d/%d" % (level, index)).digest()

    return read


def synthetic_sizes() -> list[int]:
    generator = random.Random(9162)
    sizes = set(range(1, 40))
    for power in range(21):
        sizes |= {2**power - 1, 2**power, 2**power + 1}
    sizes |= {generator.randint(1, SYNTHETIC_SIZE_MAX) for _ in range(150)}
    return sorted(size for size in sizes if 1 <= size <= SYNTHETIC_SIZE_MAX)


def test_proofs_read_logarithmically_many_nodes() -> None:
    generator = random.Random(6962)
    largest = 0
    for size in synthetic_sizes():
        bound = 2 * ceil_log2(size) + 2
        picks = {0, 1, size // 2, size - 2, size - 1} | {
            generator.randrange(size) for _ in range(3)
        }
        for index in sorted(i for i in picks if 0 <= i < size):
            calls: list[tuple[int, int]] = []
            path = inclusion_path(index, size, synthetic_reader(size, calls))
            assert len(path) <= ceil_log2(size)
            assert len(calls) <= bound, (index, size, len(calls))
            largest = max(largest, len(calls))
        firsts = {1, 2, size // 2, size - 1, size} | {generator.randint(1, size) for _ in range(3)}
        for size1 in sorted(m for m in firsts if 1 <= m <= size):
            calls = []
            path = consistency_path(size1, size, synthetic_reader(size, calls))
            assert len(path) <= ceil_log2(size) + 1
            assert len(calls) <= bound, (size1, size, len(calls))
            largest = max(largest, len(calls))
    assert largest > 20, "the largest trees were exercised"


def never_read(level: int, index: int) -> bytes:
    raise AssertionError(f"node ({level}, {index}) read for an invalid request")


@pytest.mark.parametrize(
    ("index", "size"), [(0, 0), (1, 1), (5, 5), (6, 5), (-1, 5), (0, -1), (2**64, 3)]
)
def test_inclusion_path_outside_the_tree_is_invalid(index: int, size: int) -> None:
    with pytest.raises(InvalidProofError):
        inclusion_path(index, size, never_read)


@pytest.mark.parametrize(
    ("size1", "size2"), [(0, 0), (0, 1), (0, 8), (2, 1), (9, 8), (-1, 4), (65, 64)]
)
def test_consistency_path_from_zero_or_backwards_is_invalid(size1: int, size2: int) -> None:
    with pytest.raises(InvalidProofError):
        consistency_path(size1, size2, never_read)


def test_generated_proofs_equal_the_pinned_rfc_6962_vectors() -> None:
    reference = json.loads((VECTORS / "merkle.json").read_text(encoding="utf-8"))["reference"]
    inputs = [bytes.fromhex(leaf) for leaf in reference["leaf_inputs_hex"]]
    assert inputs == [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        bytes(range(0x60, 0x70)),
    ]
    logs = grow_log([leaf_hash(leaf) for leaf in inputs])
    for entry in reference["roots"]:
        assert logs[entry["size"]][0].root().hex() == entry["root"]
    assert len(reference["inclusion"]) == 36
    for entry in reference["inclusion"]:
        size = entry["size"]
        path = inclusion_path(entry["index"], size, stored_reader(logs[size][1], size))
        assert [node.hex() for node in path] == entry["path"], entry
    assert len(reference["consistency"]) == 36
    for entry in reference["consistency"]:
        size2 = entry["size2"]
        path = consistency_path(entry["size1"], size2, stored_reader(logs[size2][1], size2))
        assert [node.hex() for node in path] == entry["path"], entry


# --- 2. the sparse Merkle tree ----------------------------------------------------------------


STATE_KEYS = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")),
    min_size=1,
    max_size=40,
)
JSON_KEYS = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)
SCALARS: SearchStrategy[Any] = (
    st.none() | st.booleans() | st.integers(0, 2**53 - 1) | st.text(max_size=12)
)
STATE_VALUES: SearchStrategy[Any] = (
    st.booleans()
    | st.integers(0, 2**53 - 1)
    | st.text(max_size=12)
    | st.lists(SCALARS, max_size=3)
    | st.dictionaries(JSON_KEYS, SCALARS | st.lists(SCALARS, max_size=3), max_size=4)
)
STATE_MAPS = st.dictionaries(STATE_KEYS, STATE_VALUES, max_size=200)


def kind(proof: dict[str, Any]) -> str:
    if proof["value"] is not None:
        return "present"
    return "absent, other leaf" if "leaf" in proof else "absent, empty subtree"


def fold(key: str, bottom: bytes, siblings: list[str]) -> bytes:
    """The root a proof's siblings lead to from `bottom`, by the bits of sha256(key) (SPEC §4),
    with none of the verifier's other checks."""
    path = int.from_bytes(key_hash(key), "big")
    current = bottom
    for level in range(len(siblings) - 1, -1, -1):
        sibling = bytes.fromhex(siblings[level])
        if path >> (255 - level) & 1:
            current = hashlib.sha256(b"\x01" + sibling + current).digest()
        else:
            current = hashlib.sha256(b"\x01" + current + sibling).digest()
    return current


def bottom_of(proof: dict[str, Any]) -> bytes:
    if proof["value"] is not None:
        return compute_leaf_hash(key_hash(proof["key"]), value_hash(proof["value"]))
    if "leaf" in proof:
        leaf = proof["leaf"]
        return compute_leaf_hash(bytes.fromhex(leaf["key_hash"]), bytes.fromhex(leaf["value_hash"]))
    return EMPTY_HASH


def round_trip(value: Any) -> Any:
    return json.loads(json.dumps(value))


def check_proof(
    tree: StateTree, entries: dict[str, Any], state_key: str, root: bytes
) -> dict[str, Any]:
    proof = prove_state(tree, state_key, entries.__getitem__)
    assert proof["key"] == state_key
    if state_key in entries:
        assert proof["value"] == entries[state_key] and "leaf" not in proof
    else:
        assert proof["value"] is None
    assert set(proof) <= {"key", "value", "siblings", "leaf"}
    assert fold(state_key, bottom_of(proof), proof["siblings"]) == root
    verify_state_proof(proof=round_trip(proof), root=root)
    return proof


@given(entries=STATE_MAPS, absent=st.lists(STATE_KEYS, max_size=20))
def test_every_key_proves_present_or_absent(entries: dict[str, Any], absent: list[str]) -> None:
    tree = StateTree.from_items(entries.items())
    root = tree.root
    assert root == compute_state_root(entries.items())
    # The same map reached by updates (with a deletion on the way) proves the same way.
    items = list(entries.items())
    updated = StateTree().update([*items[: len(items) // 2], ("zz-gone", 1)])
    updated = updated.update([*items[len(items) // 2 :], ("zz-gone", None)])
    assert updated.root == root
    for state_key in entries:
        proof = check_proof(tree, entries, state_key, root)
        assert prove_state(updated, state_key, entries.__getitem__) == proof
    for state_key in absent:
        if state_key not in entries:
            check_proof(tree, entries, state_key, root)


def test_both_kinds_of_absence_occur_and_verify() -> None:
    entries: dict[str, Any] = {f"account/{i}": {"nonce": i} for i in range(3000)}
    tree = StateTree.from_items(entries.items())
    root = tree.root
    seen: dict[str, int] = {}
    for i in range(3000):
        for state_key in (f"account/{i}", f"absent/{i}"):
            proof = check_proof(tree, entries, state_key, root)
            seen[kind(proof)] = seen.get(kind(proof), 0) + 1
    assert seen["present"] == 3000
    assert seen["absent, other leaf"] >= 1
    assert seen["absent, empty subtree"] >= 1
    assert seen["absent, other leaf"] + seen["absent, empty subtree"] == 3000


def test_proofs_against_the_empty_tree() -> None:
    tree = StateTree()
    assert tree.root == EMPTY_HASH == compute_state_root([])
    nothing: dict[str, Any] = {}
    proof = prove_state(tree, "account/nobody", nothing.__getitem__)
    assert proof == {"key": "account/nobody", "value": None, "siblings": []}
    verify_state_proof(proof=proof, root=EMPTY_HASH)
    for forged in (
        {**proof, "value": 1},
        {**proof, "siblings": [EMPTY_HASH.hex()]},
        {**proof, "leaf": {"key_hash": key_hash("x").hex(), "value_hash": value_hash(1).hex()}},
    ):
        with pytest.raises(InvalidProofError):
            verify_state_proof(proof=forged, root=EMPTY_HASH)
    with pytest.raises(InvalidProofError):
        verify_state_proof(proof=proof, root=hashlib.sha256(b"not empty").digest())


def test_proofs_against_a_one_leaf_tree() -> None:
    entries: dict[str, Any] = {"batch/B-1": {"issued": 1500}}
    tree = StateTree.from_items(entries.items())
    root = tree.root
    assert root == compute_leaf_hash(key_hash("batch/B-1"), value_hash({"issued": 1500}))
    present = check_proof(tree, entries, "batch/B-1", root)
    assert present == {"key": "batch/B-1", "value": {"issued": 1500}, "siblings": []}
    absent = check_proof(tree, entries, "batch/B-2", root)
    assert absent["siblings"] == []
    assert absent["leaf"] == {
        "key_hash": key_hash("batch/B-1").hex(),
        "value_hash": value_hash({"issued": 1500}).hex(),
    }
    for forged in tampered_proofs(present) + tampered_proofs(absent):
        with pytest.raises(InvalidProofError):
            verify_state_proof(proof=forged, root=root)


def tampered_proofs(proof: dict[str, Any]) -> list[dict[str, Any]]:
    """Every single change SPEC §4 says a verifier must notice (the key only where it is
    present: another absent key may rightly share an absence proof)."""
    siblings: list[str] = proof["siblings"]
    forged: list[dict[str, Any]] = []
    for position in range(len(siblings)):
        changed = list(siblings)
        changed[position] = flip_hex(changed[position], position % 64)
        forged.append({**proof, "siblings": changed})
    if siblings:
        forged.append({**proof, "siblings": siblings[1:]})
        forged.append({**proof, "siblings": siblings[:-1]})
    forged.append({**proof, "siblings": [*siblings, EMPTY_HASH.hex()]})
    forged.append({**proof, "siblings": [EMPTY_HASH.hex(), *siblings]})
    other_leaf = {"key_hash": key_hash("other").hex(), "value_hash": value_hash("v").hex()}
    if proof["value"] is not None:
        forged.append({**proof, "value": ["tampered", proof["value"]]})
        forged.append({**proof, "key": proof["key"] + "x"})
        forged.append({**proof, "value": None})
        forged.append({**proof, "leaf": other_leaf})
        own = {
            "key_hash": key_hash(proof["key"]).hex(),
            "value_hash": value_hash(proof["value"]).hex(),
        }
        forged.append({**proof, "leaf": own})
        # Present, but "proven absent" by its own leaf: this folds to the true root.
        forged.append({**proof, "value": None, "leaf": own})
    else:
        forged.append({**proof, "value": "tampered"})
        if "leaf" in proof:
            leaf = proof["leaf"]
            forged.append({**proof, "leaf": {**leaf, "key_hash": flip_hex(leaf["key_hash"], 63)}})
            forged.append({**proof, "leaf": {**leaf, "value_hash": flip_hex(leaf["value_hash"])}})
            forged.append({key: value for key, value in proof.items() if key != "leaf"})
        else:
            forged.append({**proof, "leaf": other_leaf})
    return forged


@given(entries=STATE_MAPS.filter(bool), absent=STATE_KEYS, data=st.data())
def test_every_tampered_state_proof_fails(
    entries: dict[str, Any], absent: str, data: st.DataObject
) -> None:
    tree = StateTree.from_items(entries.items())
    root = tree.root
    present = data.draw(st.sampled_from(sorted(entries)), label="present key")
    proofs = [check_proof(tree, entries, present, root)]
    if absent not in entries:
        proofs.append(check_proof(tree, entries, absent, root))
    for proof in proofs:
        for forged in tampered_proofs(proof):
            with pytest.raises(InvalidProofError):
                verify_state_proof(proof=round_trip(forged), root=root)


def many_key_tree() -> tuple[StateTree, dict[str, Any]]:
    entries: dict[str, Any] = {f"lot/B-1/{i}": {"quantity": i} for i in range(1, 400)}
    return StateTree.from_items(entries.items()), entries


def test_a_leaf_off_the_keys_path_is_refused_even_when_the_root_matches() -> None:
    tree, entries = many_key_tree()
    tested = 0
    for i in range(400):
        proof = prove_state(tree, f"absent/{i}", entries.__getitem__)
        if "leaf" not in proof or not proof["siblings"]:
            continue
        depth = len(proof["siblings"])
        digest = int(proof["leaf"]["key_hash"], 16)
        for bit in (0, depth - 1):  # the first and the last bit it must share
            moved = (digest ^ (1 << (255 - bit))).to_bytes(32, "big").hex()
            forged = {**proof, "leaf": {**proof["leaf"], "key_hash": moved}}
            # A root made to match, so only the path check can refuse it.
            forged_root = fold(forged["key"], bottom_of(forged), forged["siblings"])
            with pytest.raises(InvalidProofError, match="does not sit on the key's path"):
                verify_state_proof(proof=forged, root=forged_root)
        tested += 1
    assert tested >= 10


def test_a_leaf_named_for_a_present_key_is_refused() -> None:
    tree, entries = many_key_tree()
    root = tree.root
    for state_key in list(entries)[:50]:
        proof = prove_state(tree, state_key, entries.__getitem__)
        own = {
            "key_hash": key_hash(state_key).hex(),
            "value_hash": value_hash(proof["value"]).hex(),
        }
        with pytest.raises(InvalidProofError, match="names no other leaf"):
            verify_state_proof(proof={**proof, "leaf": own}, root=root)
        # Null value with its own leaf folds to the real root: the verifier must still refuse.
        absent = {**proof, "value": None, "leaf": own}
        assert fold(state_key, bottom_of(absent), absent["siblings"]) == root
        with pytest.raises(InvalidProofError, match="not absent"):
            verify_state_proof(proof=absent, root=root)


def malformed_state_proofs(proof: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for field in ("key", "value", "siblings"):
        yield f"missing {field}", {k: v for k, v in proof.items() if k != field}
    yield "unknown field", {**proof, "extra": 1}
    yield "leaf null", {**proof, "leaf": None}
    yield "leaf not an object", {**proof, "leaf": ["a", "b"]}
    leaf = {"key_hash": "ab" * 32, "value_hash": "cd" * 32}
    yield "leaf missing key_hash", {**proof, "value": None, "leaf": {"value_hash": "cd" * 32}}
    yield "leaf extra field", {**proof, "value": None, "leaf": {**leaf, "key": "x"}}
    yield "leaf hash not hex", {**proof, "value": None, "leaf": {**leaf, "key_hash": "zz" * 32}}
    siblings = proof["siblings"] or [EMPTY_HASH.hex()]
    yield "siblings not a list", {**proof, "siblings": siblings[0]}
    yield "sibling not hex", {**proof, "siblings": ["g" * 64, *siblings[1:]]}
    upper = siblings[0].upper() if siblings[0].upper() != siblings[0] else "A" + siblings[0][1:]
    yield "sibling uppercase", {**proof, "siblings": [upper, *siblings[1:]]}
    yield "sibling short", {**proof, "siblings": [siblings[0][:-2], *siblings[1:]]}
    yield "sibling long", {**proof, "siblings": [siblings[0] + "00", *siblings[1:]]}
    yield "sibling not a string", {**proof, "siblings": [7, *siblings[1:]]}
    yield "sibling null", {**proof, "siblings": [None]}
    yield "257 siblings", {**proof, "siblings": [EMPTY_HASH.hex()] * 257}
    yield "key too long", {**proof, "key": "k" * 401}
    yield "key empty", {**proof, "key": ""}
    yield "key not a string", {**proof, "key": 12}
    yield "key with a control character", {**proof, "key": "account/\x00"}
    yield "key with a lone surrogate", {**proof, "key": "account/\ud800"}
    yield "value a float", {**proof, "value": 1.5}
    yield "value too deep", {**proof, "value": [[[[[[[[[[1]]]]]]]]]]}
    yield "value with a bad key", {**proof, "value": {"Bad Key": 1}}
    yield "value too large", {**proof, "value": 2**64}
    yield "value a lone surrogate", {**proof, "value": "\udc00"}
    for other in (None, [], "proof", 1, True, [proof]):
        yield f"not an object: {other!r}", other


def test_malformed_state_proofs_are_invalid_proofs_and_nothing_else() -> None:
    tree, entries = many_key_tree()
    root = tree.root
    bases = [
        prove_state(tree, "lot/B-1/7", entries.__getitem__),
        *(prove_state(tree, f"absent/{i}", entries.__getitem__) for i in range(20)),
    ]
    assert {kind(base) for base in bases} == {
        "present",
        "absent, other leaf",
        "absent, empty subtree",
    }
    count = 0
    for base in bases:
        verify_state_proof(proof=base, root=root)
        for _label, malformed in malformed_state_proofs(base):
            with pytest.raises(InvalidProofError):
                verify_state_proof(proof=malformed, root=root)
            count += 1
    assert count > 500
    for bad_root in (b"", bytes(31), "00" * 32, None):
        with pytest.raises(InvalidProofError):
            verify_state_proof(proof=bases[0], root=bad_root)


ANY_JSON: SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=70)
    | st.sampled_from([EMPTY_HASH.hex(), "ab" * 32, "account/1"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["key", "value", "siblings", "leaf", "key_hash", "value_hash", "x"]),
            inner,
            max_size=5,
        )
    ),
    max_leaves=12,
)


@given(proof=ANY_JSON)
def test_arbitrary_json_is_an_invalid_proof_or_a_valid_one(proof: Any) -> None:
    try:
        verify_state_proof(proof=proof, root=hashlib.sha256(b"some root").digest())
    except InvalidProofError:
        return
    raise AssertionError(f"{proof!r} verified against an arbitrary root")


# --- 3. proofs served by a real store ---------------------------------------------------------


@dataclass
class Ledger:
    """A chain produced into an open store; block 1 is empty (log size 0)."""

    chain: Chain
    store: Store
    directory: Path
    states: list[State]  # states[h] is the state after height h (states[0] the genesis)
    envelopes: list[tuple[Envelope, int]]  # every committed transaction with its height
    validators: list[Validator]

    @property
    def head(self) -> State:
        return self.states[-1]

    @property
    def validators_hash(self) -> str:
        return compute_validators_hash(self.validators)

    def retirement_ids(self) -> list[str]:
        return sorted(
            value["retirement_id"]
            for state_key, value in self.head.entries.items()
            if state_key.startswith("retirement/")
        )


def scenario(chain: Chain) -> Iterator[list[Envelope]]:
    """Blocks 2.. : issuance, a transfer in between that leaves bob two non-adjacent lots, a
    retirement spanning both, an incentive retirement, a retirement of one unit, more moves."""
    alice, bob, carol = chain.alice.account_id, chain.bob.account_id, chain.carol.account_id

    def retire(holder: Any, batch_id: str, quantity: int, **extra: str) -> Envelope:
        payload: dict[str, Any] = {
            "batch_id": batch_id,
            "quantity": quantity,
            "beneficiary": f"{quantity} units for the city",
            "purpose": "voluntary",
            **extra,
        }
        return chain.tx(holder, "retire", payload)

    yield [
        chain.accredit(),
        chain.create_program(PROGRAM),
        chain.issue([(alice, 1000), (bob, 500)]),
    ]
    yield [
        chain.tx(chain.alice, "transfer", {"to": bob, "batch_id": "B-1", "quantity": 100}),
        retire(chain.bob, "B-1", 50),
    ]
    yield [
        retire(chain.bob, "B-1", 150),  # serials 51..100 and 1001..1100: two lots
        retire(
            chain.alice,
            "B-1",
            30,
            purpose="incentive",
            program_id=PROGRAM,
            jurisdiction="CN-SD",
            memo="green home 2026",
        ),
    ]
    yield [
        chain.issue([(carol, 300)], project_id="meter-0002"),
        retire(chain.carol, "B-2", 1, purpose="compliance"),
    ]
    yield [
        chain.tx(chain.carol, "transfer", {"to": alice, "batch_id": "B-2", "quantity": 10}),
        chain.tx(chain.alice, "transfer", {"to": carol, "batch_id": "B-1", "quantity": 5}),
        retire(chain.alice, "B-2", 4),
    ]
    yield [chain.tx(chain.bob, "transfer", {"to": carol, "batch_id": "B-1", "quantity": 20})]


def build_ledger(directory: Path) -> Ledger:
    chain = Chain()
    store = Store.create(directory, chain.genesis_document)
    states = [chain.state]
    empty = chain.build([])
    store.append(empty.block, chain.certify(empty), empty.state)
    states.append(empty.state)
    producer = SoloProducer(store, chain.validator)
    envelopes: list[tuple[Envelope, int]] = []
    for number, block in enumerate(scenario(chain)):
        assert [a.status for a in producer.submit(block)] == ["pending"] * len(block)
        committed = producer.produce(GENESIS_TIME + 10_000 * (number + 1))
        assert committed is not None
        assert [e.tx_id for e in committed.block.transactions] == [e.tx_id for e in block]
        envelopes += [(e, committed.block.height) for e in block]
        states.append(producer.state)
    validators = [Validator(public_key=chain.validator.public_key_hex, power=1, name="city")]
    assert compute_validators_hash(validators) == states[-1].validators_hash()
    return Ledger(chain, store, directory, states, envelopes, validators)


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    built = build_ledger(tmp_path_factory.mktemp("proofs"))
    yield built
    built.store.close()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Ledger]:
    """A ledger of its own, to damage."""
    built = build_ledger(tmp_path / "node")
    yield built
    built.store.close()


def checked_header(ledger: Ledger, checkpoint: dict[str, Any], height: int) -> Any:
    """The checkpoint's header, after checking its certificate against the validators."""
    assert set(checkpoint) == {"header", "certificate"}
    header = parse_header(round_trip(checkpoint["header"]))
    assert header.height == height
    verify_certificate(
        parse_certificate(round_trip(checkpoint["certificate"])),
        chain_id=header.chain_id,
        height=height,
        block_hash=header.block_hash(),
        validators=ledger.validators,
    )
    return header


def test_checkpoint_log_roots_are_the_rfc_roots_of_the_transactions(ledger: Ledger) -> None:
    leaves = [leaf_hash(envelope.leaf) for envelope, _ in ledger.envelopes]
    assert ledger.store.head_height == len(ledger.states) - 1 == 7
    assert len(leaves) == 13
    for height in range(1, ledger.store.head_height + 1):
        header = checked_header(ledger, ledger.store.checkpoint(height), height)
        assert header.log_root == compute_root(leaves[: header.log_size]).hex()
    assert ledger.store.read_header(1).log_size == 0


def test_inclusion_proof_of_every_transaction_at_every_later_height(ledger: Ledger) -> None:
    head = ledger.store.head_height
    for index, (envelope, tx_height) in enumerate(ledger.envelopes):
        assert ledger.store.transaction_position(envelope.tx_id)[:2] == (tx_height, index)
        for height in range(tx_height, head + 1):
            proof = round_trip(ledger.store.inclusion_proof(envelope.tx_id, height))
            assert set(proof) == {"log_index", "log_size", "path", "checkpoint"}
            header = checked_header(ledger, proof["checkpoint"], height)
            assert proof["log_index"] == index
            assert proof["log_size"] == header.log_size > index
            path = [bytes.fromhex(node) for node in proof["path"]]
            verify_inclusion(
                leaf_hash=leaf_hash(envelope.leaf),
                index=index,
                size=header.log_size,
                path=path,
                root=bytes.fromhex(header.log_root),
            )
        for height in range(tx_height):
            with pytest.raises(LedgerError) as caught:
                ledger.store.inclusion_proof(envelope.tx_id, height)
            assert caught.value.code == "not_found"


@pytest.mark.parametrize(
    ("tx_id", "height"),
    [("00" * 32, 7), ("not an id", 7), (None, 7), ("head", 8), ("head", 10**6), ("head", -1)],
)
def test_inclusion_proof_of_unknown_transaction_or_height(
    ledger: Ledger, tx_id: str | None, height: int
) -> None:
    known = ledger.envelopes[-1][0].tx_id
    with pytest.raises(LedgerError) as caught:
        ledger.store.inclusion_proof(known if tx_id == "head" else tx_id, height)  # type: ignore[arg-type]
    assert caught.value.code == "not_found"
    assert not isinstance(caught.value, StoreError)


def test_consistency_proof_between_every_pair_of_heights(ledger: Ledger) -> None:
    head = ledger.store.head_height
    checked = 0
    for first in range(2, head + 1):
        for second in range(first, head + 1):
            proof = round_trip(ledger.store.consistency_proof(first, second))
            assert set(proof) == {"first_size", "second_size", "path", "first", "second"}
            one = checked_header(ledger, proof["first"], first)
            two = checked_header(ledger, proof["second"], second)
            assert (proof["first_size"], proof["second_size"]) == (one.log_size, two.log_size)
            verify_consistency(
                size1=one.log_size,
                size2=two.log_size,
                path=[bytes.fromhex(node) for node in proof["path"]],
                root1=bytes.fromhex(one.log_root),
                root2=bytes.fromhex(two.log_root),
            )
            checked += 1
    assert checked == 21


def test_consistency_proof_from_an_empty_log_or_backwards_is_refused(ledger: Ledger) -> None:
    for first, second in [(1, 1), (1, 2), (1, 7), (7, 2), (3, 2)]:
        with pytest.raises(LedgerError) as caught:
            ledger.store.consistency_proof(first, second)
        assert caught.value.code == "invalid_field", (first, second)
        assert not isinstance(caught.value, StoreError)
    for first, second in [(0, 3), (2, 8), (8, 8), (-1, 3)]:
        with pytest.raises(LedgerError) as caught:
            ledger.store.consistency_proof(first, second)
        assert caught.value.code == "not_found", (first, second)


def test_state_proofs_of_present_and_absent_keys(ledger: Ledger) -> None:
    head = ledger.head
    absent = [
        "account/" + "00" * 32,
        "lot/B-1/2",
        "lot/B-9/1",
        "retirement/" + "ff" * 32,
        "batch/B-3",
        *(f"program/p-{i}" for i in range(40)),
    ]
    kinds: set[str] = set()
    for state_key in [*head.entries, *absent]:
        served = round_trip(ledger.store.state_proof(head, state_key))
        assert set(served) == {"proof", "checkpoint"}
        header = checked_header(ledger, served["checkpoint"], head.height)
        assert header.state_root == head.state_root
        proof = served["proof"]
        assert proof["key"] == state_key
        assert proof["value"] == head.entries.get(state_key)
        verify_state_proof(proof=proof, root=bytes.fromhex(header.state_root))
        kinds.add(kind(proof))
    assert kinds == {"present", "absent, other leaf", "absent, empty subtree"}


def test_state_proof_and_receipt_refuse_a_state_that_is_not_the_head(ledger: Ledger) -> None:
    """A state the store wrote is proven against its own checkpoint (a reader's snapshot may
    trail the writer); one it did not write, or the genesis state, gets no proof."""
    retirement_id = ledger.retirement_ids()[0]
    earlier = ledger.states[-2]
    served = ledger.store.state_proof(earlier, "batch/B-1")
    assert served["checkpoint"]["header"]["height"] == earlier.height
    verify_state_proof(
        proof=served["proof"], root=bytes.fromhex(served["checkpoint"]["header"]["state_root"])
    )
    foreign = dataclasses.replace(earlier, tree=ledger.head.tree)
    for refused in (ledger.states[0], foreign):
        with pytest.raises(LedgerError) as caught:
            ledger.store.state_proof(refused, "batch/B-1")
        assert caught.value.code == "not_found"
        with pytest.raises(LedgerError) as caught:
            ledger.store.receipt(refused, retirement_id)
        assert caught.value.code == "not_found"
    with pytest.raises(LedgerError) as caught:
        ledger.store.receipt(ledger.head, "00" * 32)
    assert caught.value.code == "not_found"


# --- damage to the log behind the store's back --------------------------------------------------


def connect(directory: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(directory / DATABASE_FILE, isolation_level=None)
    connection.execute("PRAGMA synchronous=OFF")
    return connection


def nodes_read(store: Store, build: Callable[[NodeReader], list[bytes]]) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []

    def read(level: int, index: int) -> bytes:
        calls.append((level, index))
        return store.log_node(level, index)

    build(read)
    return sorted(set(calls))


def damages(value: bytes) -> Iterator[tuple[str, Any]]:
    yield "one bit flipped", bytes([value[0] ^ 0x01]) + value[1:]
    yield "last byte changed", value[:-1] + bytes([value[-1] ^ 0xFF])
    yield "truncated", value[:-1]
    yield "lengthened", value + b"\x00"
    yield "zeroed", bytes(32)


def assert_refused(call: Callable[[], Any]) -> None:
    with pytest.raises(StoreError) as caught:
        call()
    assert caught.value.code == "store_error"


def damage_each_node(ledger: Ledger, needed: list[tuple[int, int]], call: Callable[[], Any]) -> int:
    """Corrupt, then delete, each needed node in turn: `call` must refuse every time, and
    work again once the node is restored."""
    connection = connect(ledger.directory)
    refused = 0
    try:
        for level, index in needed:
            (original,) = connection.execute(
                "SELECT hash FROM log_nodes WHERE level = ? AND idx = ?", (level, index)
            ).fetchone()
            for _, damaged in damages(bytes(original)):
                connection.execute(
                    "UPDATE log_nodes SET hash = ? WHERE level = ? AND idx = ?",
                    (damaged, level, index),
                )
                assert_refused(call)
                refused += 1
            connection.execute("DELETE FROM log_nodes WHERE level = ? AND idx = ?", (level, index))
            assert_refused(call)
            connection.execute(
                "INSERT INTO log_nodes (level, idx, hash) VALUES (?, ?, ?)",
                (level, index, original),
            )
            call()
    finally:
        connection.close()
    return refused


def test_damaged_log_nodes_never_yield_an_inclusion_proof(fresh: Ledger) -> None:
    store = fresh.store
    head = store.head_height
    refused = 0
    for index, (envelope, tx_height) in enumerate(fresh.envelopes):
        for height in sorted({tx_height, head}):
            size = store.read_header(height).log_size
            needed = nodes_read(store, functools.partial(inclusion_path, index, size))
            assert len(needed) >= 1 or size == 1

            def call(tx_id: str = envelope.tx_id, at: int = height) -> Any:
                return store.inclusion_proof(tx_id, at)

            refused += damage_each_node(fresh, needed, call)
    assert refused > 100


def test_damaged_log_nodes_never_yield_a_consistency_proof(fresh: Ledger) -> None:
    store = fresh.store
    head = store.head_height
    refused = 0
    for first in range(2, head):
        for second in range(first + 1, head + 1):
            size1, size2 = store.read_header(first).log_size, store.read_header(second).log_size
            needed = nodes_read(store, functools.partial(consistency_path, size1, size2))
            assert needed

            def call(a: int = first, b: int = second) -> Any:
                return store.consistency_proof(a, b)

            refused += damage_each_node(fresh, needed, call)
    assert refused > 50


def test_a_log_node_overwritten_with_text_is_refused(fresh: Ledger) -> None:
    """SQLite lets any value into a BLOB column: a text hash must be refused, not crash."""
    store = fresh.store
    envelope, _ = fresh.envelopes[0]
    size = store.read_header(store.head_height).log_size
    first_size = store.read_header(2).log_size
    # One node each proof reads (they need not read the same ones).
    targets = {
        nodes_read(store, functools.partial(inclusion_path, 0, size))[0],
        nodes_read(store, functools.partial(consistency_path, first_size, size))[0],
    }
    connection = connect(fresh.directory)
    try:
        for level, index in targets:
            connection.execute(
                "UPDATE log_nodes SET hash = ? WHERE level = ? AND idx = ?",
                ("00" * 32, level, index),
            )
    finally:
        connection.close()
    assert_refused(lambda: store.inclusion_proof(envelope.tx_id, store.head_height))
    assert_refused(lambda: store.consistency_proof(2, store.head_height))


def test_an_altered_stored_transaction_yields_no_inclusion_proof(fresh: Ledger) -> None:
    store = fresh.store
    envelope, _ = fresh.envelopes[4]
    document = envelope.to_json()
    signature = document["signatures"][0]["signature"]
    document["signatures"][0]["signature"] = flip_hex(signature, 10)
    connection = connect(fresh.directory)
    try:
        connection.execute(
            "UPDATE transactions SET envelope = ? WHERE tx_id = ?",
            (json.dumps(document, separators=(",", ":")), envelope.tx_id),
        )
    finally:
        connection.close()
    assert_refused(lambda: store.inclusion_proof(envelope.tx_id, store.head_height))


# --- 4. retirement receipts ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def receipts(ledger: Ledger) -> dict[str, dict[str, Any]]:
    """Every retirement's receipt, after a JSON round trip."""
    return {
        retirement_id: round_trip(ledger.store.receipt(ledger.head, retirement_id))
        for retirement_id in ledger.retirement_ids()
    }


def multi_lot(receipts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (receipt,) = [r for r in receipts.values() if len(r["retirement"]["serials"]) > 1]
    return copy.deepcopy(receipt)


def verify(ledger: Ledger, receipt: Any, **options: Any) -> None:
    verify_receipt(receipt, validators_hash=ledger.validators_hash, **options)


def test_every_retirement_has_a_receipt_that_verifies(
    ledger: Ledger, receipts: dict[str, dict[str, Any]]
) -> None:
    genesis_hash = ledger.chain.genesis.genesis_hash()
    assert len(receipts) == 5
    for retirement_id, receipt in receipts.items():
        assert set(receipt) == {
            "retirement",
            "transaction",
            "log_index",
            "inclusion",
            "state_proofs",
            "checkpoint",
            "validators",
            "genesis_hash",
        }
        record = receipt["retirement"]
        assert record == ledger.head.entries[f"retirement/{retirement_id}"]
        assert receipt["genesis_hash"] == genesis_hash
        assert [p["key"] for p in receipt["state_proofs"]] == [
            f"retirement/{retirement_id}",
            *(f"lot/{record['batch_id']}/{first}" for first, _ in record["serials"]),
        ]
        verify(ledger, receipt)
        verify(ledger, receipt, genesis_hash=genesis_hash)
        verify_receipt(receipt, validators_hash=bytes.fromhex(ledger.validators_hash))


def test_a_retirement_spanning_two_lots_proves_each_lot(
    ledger: Ledger, receipts: dict[str, dict[str, Any]]
) -> None:
    receipt = multi_lot(receipts)
    record = receipt["retirement"]
    assert record["serials"] == [[51, 100], [1001, 1100]]
    assert record["quantity"] == 150
    lots = [proof["value"] for proof in receipt["state_proofs"][1:]]
    assert [(lot["first_serial"], lot["quantity"]) for lot in lots] == [(51, 50), (1001, 100)]
    assert {lot["status"] for lot in lots} == {"retired"}
    assert {lot["retirement_id"] for lot in lots} == {record["retirement_id"]}
    verify(ledger, receipt)


def other_validator_set() -> list[dict[str, Any]]:
    return [{"public_key": key("validator-other").public_key_hex, "power": 1, "name": "other"}]


def flip_signature(receipt: dict[str, Any]) -> None:
    entry = receipt["checkpoint"]["certificate"]["signatures"][0]
    entry["signature"] = flip_hex(entry["signature"], 20)


def set_path(*path: Any, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(receipt: dict[str, Any]) -> None:
        target: Any = receipt
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value(target[path[-1]]) if callable(value) else value

    return change


def drop_lot_proof(receipt: dict[str, Any]) -> None:
    del receipt["state_proofs"][-1]


def add_log_index(delta: int) -> Callable[[dict[str, Any]], None]:
    return set_path("log_index", value=lambda index: index + delta)


# name -> (change, the steps that may refuse it)
TAMPERING: dict[str, tuple[Callable[[dict[str, Any]], None], set[str]]] = {
    "validators replaced": (set_path("validators", value=other_validator_set()), {"2"}),
    "validator power changed": (set_path("validators", 0, "power", value=2), {"2"}),
    "certificate signature": (flip_signature, {"3"}),
    "certificate round": (set_path("checkpoint", "certificate", "round", value=1), {"3"}),
    "certificate height": (
        set_path("checkpoint", "certificate", "height", value=lambda h: h - 1),
        {"3"},
    ),
    "header state_root": (
        set_path("checkpoint", "header", "state_root", value=flip_hex),
        {"3"},
    ),
    "header log_root": (set_path("checkpoint", "header", "log_root", value=flip_hex), {"3"}),
    "header log_size": (
        set_path("checkpoint", "header", "log_size", value=lambda n: n + 1),
        {"3"},
    ),
    "record quantity": (set_path("retirement", "quantity", value=lambda q: q + 1), {"4"}),
    "record beneficiary": (
        set_path("retirement", "beneficiary", value=lambda b: b + "!"),
        {"4"},
    ),
    "record holder": (set_path("retirement", "holder", value=flip_hex), {"4"}),
    "record serials": (
        set_path("retirement", "serials", 0, 1, value=lambda last: last + 1),
        {"6"},
    ),
    "record height": (set_path("retirement", "height", value=lambda h: h + 1), {"6"}),
    "record memo": (set_path("retirement", "memo", value="another memo"), {"4"}),
    "transaction payload": (
        set_path("transaction", "tx", "payload", "beneficiary", value=lambda b: b + "!"),
        {"4"},
    ),
    "transaction nonce": (set_path("transaction", "tx", "nonce", value=lambda n: n + 1), {"4"}),
    "transaction signature": (
        set_path("transaction", "signatures", 0, "signature", value=flip_hex),
        {"4"},
    ),
    "log_index plus one": (add_log_index(1), {"5"}),
    "log_index minus one": (add_log_index(-1), {"5"}),
    "inclusion hash flipped": (set_path("inclusion", 0, value=flip_hex), {"5"}),
    "inclusion hash dropped": (set_path("inclusion", value=lambda path: path[:-1]), {"5"}),
    "inclusion hash added": (set_path("inclusion", value=lambda p: [*p, "00" * 32]), {"5"}),
    "lot status": (set_path("state_proofs", 1, "value", "status", value="circulating"), {"6"}),
    "lot retirement_id": (
        set_path("state_proofs", 1, "value", "retirement_id", value=flip_hex),
        {"6"},
    ),
    "lot proof sibling": (set_path("state_proofs", 1, "siblings", 0, value=flip_hex), {"6"}),
    "record proof value": (
        set_path("state_proofs", 0, "value", "quantity", value=lambda q: q + 1),
        {"6"},
    ),
}


@pytest.mark.parametrize("name", list(TAMPERING))
def test_each_tampered_receipt_fails_at_its_step(
    ledger: Ledger, receipts: dict[str, dict[str, Any]], name: str
) -> None:
    change, steps = TAMPERING[name]
    for original in receipts.values():
        receipt = copy.deepcopy(original)
        change(receipt)
        assert receipt != original
        with pytest.raises(InvalidProofError) as caught:
            verify(ledger, receipt)
        message = caught.value.message
        assert any(f"step {step}:" in message for step in steps), (name, message)


def recertified(ledger: Ledger, receipt: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`receipt` against a state with `changes` (None deletes), under a header certified by the
    chain's own validator key: what a validator set that certified a wrong state would hand
    out. Only step 6's own checks stand between such a receipt and acceptance."""
    entries = {**ledger.head.entries, **changes}
    entries = {k: v for k, v in entries.items() if v is not None}
    tree = StateTree.from_items(entries.items())
    header = {**receipt["checkpoint"]["header"], "state_root": tree.root.hex()}
    block_hash = parse_header(header).block_hash()
    certificate = sign_certificate(
        chain_id=header["chain_id"],
        height=header["height"],
        round=0,
        block_hash=block_hash,
        keys=[ledger.chain.validator],
    )
    record_key = f"retirement/{receipt['retirement']['retirement_id']}"
    record = entries.get(record_key, receipt["retirement"])
    keys = [p["key"] for p in receipt["state_proofs"]]
    forged: dict[str, Any] = round_trip(
        {
            **receipt,
            "retirement": record,
            "state_proofs": [prove_state(tree, k, entries.__getitem__) for k in keys],
            "checkpoint": {"header": header, "certificate": certificate.to_json()},
        }
    )
    return forged


def test_step_6_refuses_a_certified_state_that_does_not_back_the_record(
    ledger: Ledger, receipts: dict[str, dict[str, Any]]
) -> None:
    receipt = multi_lot(receipts)
    record = receipt["retirement"]
    record_key = f"retirement/{record['retirement_id']}"
    lot_key = receipt["state_proofs"][2]["key"]
    lot = receipt["state_proofs"][2]["value"]
    assert lot_key == "lot/B-1/1001"
    verify(ledger, recertified(ledger, receipt, {}))  # the helper itself is sound
    other_id = next(r for r in ledger.retirement_ids() if r != record["retirement_id"])
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "lot circulating": ({lot_key: {**lot, "status": "circulating"}}, "not proven retired"),
        "lot invalidated": ({lot_key: {**lot, "status": "invalidated"}}, "not proven retired"),
        "lot absent": ({lot_key: None}, "not proven retired"),
        "lot retired by another": (
            {lot_key: {**lot, "retirement_id": other_id}},
            "retired by another retirement",
        ),
        "lot of another owner": (
            {lot_key: {**lot, "owner": ledger.chain.alice.account_id}},
            "retired by another retirement",
        ),
        "lot shorter than the range": (
            {lot_key: {**lot, "quantity": lot["quantity"] - 1}},
            "does not cover",
        ),
        "record serials short of the quantity": (
            {record_key: {**record, "serials": record["serials"][:1]}},
            "the lots hold 50 units",
        ),
        "record without serials": ({record_key: {**record, "serials": []}}, "names no serials"),
        # Found by review: these reached `last - first + 1` (a TypeError, or True - True + 1).
        "record serials as strings": (
            {record_key: {**record, "serials": [[str(a), str(b)] for a, b in record["serials"]]}},
            "not [first, last] integers",
        ),
        "record serials as booleans": (
            {record_key: {**record, "serials": [[True, True]]}},
            "not [first, last] integers",
        ),
        "record absent": ({record_key: None}, "does not hold this retirement record"),
    }
    for name, (changes, message) in cases.items():
        with pytest.raises(InvalidProofError, match="step 6:") as caught:
            verify(ledger, recertified(ledger, receipt, changes))
        assert message in caught.value.message, (name, caught.value.message)


def test_a_lot_proof_removed_fails_at_step_6(
    ledger: Ledger, receipts: dict[str, dict[str, Any]]
) -> None:
    receipt = multi_lot(receipts)
    drop_lot_proof(receipt)
    with pytest.raises(InvalidProofError, match="step 6:"):
        verify(ledger, receipt)
    for original in receipts.values():  # a single-lot receipt then has too few proofs
        receipt = copy.deepcopy(original)
        drop_lot_proof(receipt)
        with pytest.raises(InvalidProofError):
            verify(ledger, receipt)


def test_pieces_of_another_retirement_are_refused(
    ledger: Ledger, receipts: dict[str, dict[str, Any]]
) -> None:
    items = list(receipts.items())
    for (retirement_id, receipt), (other_id, other) in zip(
        items, items[1:] + items[:1], strict=True
    ):
        assert retirement_id != other_id
        swapped = copy.deepcopy(receipt)
        swapped["retirement"]["retirement_id"] = other_id
        with pytest.raises(InvalidProofError, match="step 4:"):
            verify(ledger, swapped)
        swapped = copy.deepcopy(receipt)
        swapped["transaction"] = other["transaction"]
        with pytest.raises(InvalidProofError, match="step 4:"):
            verify(ledger, swapped)
        swapped = copy.deepcopy(receipt)
        swapped["state_proofs"] = other["state_proofs"]
        with pytest.raises(InvalidProofError):
            verify(ledger, swapped)
        # Another retirement's lot proofs appended do not prove this record's serials.
        swapped = copy.deepcopy(receipt)
        swapped["state_proofs"] = receipt["state_proofs"][:1] + other["state_proofs"][1:]
        with pytest.raises(InvalidProofError, match="step 6:"):
            verify(ledger, swapped)


def test_untrusted_validators_are_refused_at_step_2(
    ledger: Ledger, receipts: dict[str, dict[str, Any]]
) -> None:
    other_hash = compute_validators_hash([Validator(**v) for v in other_validator_set()])
    for receipt in receipts.values():
        with pytest.raises(InvalidProofError, match="step 2:"):
            verify_receipt(receipt, validators_hash=other_hash)
        with pytest.raises(InvalidProofError, match="step 2:"):
            verify_receipt(receipt, validators_hash=flip_hex(ledger.validators_hash))
        # The receipt's own validators swapped for the set the verifier trusts: the header
        # still names the chain's set.
        swapped = copy.deepcopy(receipt)
        swapped["validators"] = other_validator_set()
        with pytest.raises(InvalidProofError, match="step 2:"):
            verify_receipt(swapped, validators_hash=other_hash)


def test_a_receipt_for_another_genesis_is_refused(
    ledger: Ledger, receipts: dict[str, dict[str, Any]]
) -> None:
    genesis_hash = ledger.chain.genesis.genesis_hash()
    for receipt in receipts.values():
        with pytest.raises(InvalidProofError, match="genesis"):
            verify(ledger, receipt, genesis_hash=flip_hex(genesis_hash))
        changed = copy.deepcopy(receipt)
        changed["genesis_hash"] = flip_hex(genesis_hash)
        with pytest.raises(InvalidProofError, match="genesis"):
            verify(ledger, changed, genesis_hash=genesis_hash)


def test_a_record_that_only_compares_equal_in_python_is_refused(
    ledger: Ledger, receipts: dict[str, dict[str, Any]]
) -> None:
    """SPEC §2.1/§6.3: the receipt's record is the state's record; `true` is not `1` and `4.0`
    is not `4` in canonical JSON, though Python's == says they are."""
    (one_unit,) = [r for r in receipts.values() if r["retirement"]["quantity"] == 1]
    as_boolean = copy.deepcopy(one_unit)
    as_boolean["retirement"]["quantity"] = True
    assert decode(json.dumps(as_boolean))["retirement"]["quantity"] is True  # strict JSON
    with pytest.raises(InvalidProofError):
        verify(ledger, as_boolean)
    as_float = copy.deepcopy(one_unit)
    as_float["retirement"]["height"] = float(as_float["retirement"]["height"])
    with pytest.raises(InvalidProofError):
        verify(ledger, as_float)


def malformed_receipts(receipt: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for field in receipt:
        yield f"missing {field}", {k: v for k, v in receipt.items() if k != field}
    yield "extra field", {**receipt, "note": "trust me"}
    for other in (None, [], [receipt], "receipt", 7, True):
        yield f"not an object: {other!r}", other
    yield "inclusion of 65", {**receipt, "inclusion": ["00" * 32] * 65}
    yield "inclusion not hex", {**receipt, "inclusion": ["zz" * 32]}
    yield "inclusion not a list", {**receipt, "inclusion": "00" * 32}
    proofs = receipt["state_proofs"]
    yield "state_proofs of 2000", {**receipt, "state_proofs": (proofs * 2000)[:2000]}
    yield "state_proofs of 1", {**receipt, "state_proofs": proofs[:1]}
    yield "state_proofs of numbers", {**receipt, "state_proofs": [proofs[0], 1, 2]}
    yield "state_proof malformed", {**receipt, "state_proofs": [proofs[0], {"key": "lot/B-1/1"}]}
    yield "state_proofs not a list", {**receipt, "state_proofs": proofs[0]}
    yield "log_index negative", {**receipt, "log_index": -1}
    yield "log_index text", {**receipt, "log_index": str(receipt["log_index"])}
    yield "log_index float", {**receipt, "log_index": float(receipt["log_index"])}
    yield "log_index huge", {**receipt, "log_index": 2**64}
    yield "log_index beyond", {**receipt, "log_index": 2**53 - 1}
    yield "retirement a list", {**receipt, "retirement": [receipt["retirement"]]}
    yield "retirement empty", {**receipt, "retirement": {}}
    yield "retirement null", {**receipt, "retirement": None}
    yield "transaction null", {**receipt, "transaction": None}
    yield "transaction empty", {**receipt, "transaction": {}}
    yield "transaction extra", {**receipt, "transaction": {**receipt["transaction"], "x": 1}}
    checkpoint = receipt["checkpoint"]
    yield "checkpoint null", {**receipt, "checkpoint": None}
    yield "checkpoint extra", {**receipt, "checkpoint": {**checkpoint, "x": 1}}
    yield "checkpoint no certificate", {**receipt, "checkpoint": {"header": checkpoint["header"]}}
    yield "certificate null", {**receipt, "checkpoint": {**checkpoint, "certificate": None}}
    yield "header a string", {**receipt, "checkpoint": {**checkpoint, "header": "header"}}
    header = checkpoint["header"]
    yield (
        "header height text",
        {
            **receipt,
            "checkpoint": {**checkpoint, "header": {**header, "height": "7"}},
        },
    )
    yield (
        "header missing log_root",
        {
            **receipt,
            "checkpoint": {
                **checkpoint,
                "header": {k: v for k, v in header.items() if k != "log_root"},
            },
        },
    )
    yield "validators empty", {**receipt, "validators": []}
    yield "validators twice", {**receipt, "validators": receipt["validators"] * 2}
    yield "validators of 101", {**receipt, "validators": receipt["validators"] * 101}
    yield (
        "validator key not a point",
        {
            **receipt,
            "validators": [{**receipt["validators"][0], "public_key": "ff" * 32}],
        },
    )
    yield "genesis_hash not hex", {**receipt, "genesis_hash": "genesis"}
    yield "genesis_hash null", {**receipt, "genesis_hash": None}
    # Found by review: Python refuses to write an integer of over 4,300 digits, and the
    # message's ValueError escaped a library caller passing objects.
    yield "log_index of 5,000 digits", {**receipt, "log_index": 10**5000}
    yield (
        "height of 5,000 digits",
        {**receipt, "checkpoint": {**checkpoint, "header": {**header, "height": -(10**5000)}}},
    )


def test_malformed_receipts_are_invalid_proofs_and_nothing_else(
    ledger: Ledger, receipts: dict[str, dict[str, Any]]
) -> None:
    count = 0
    for receipt in receipts.values():
        for _name, malformed in malformed_receipts(receipt):
            with pytest.raises(InvalidProofError) as refused:
                verify(ledger, malformed)
            assert len(refused.value.message) < 1000  # outside input is quoted, bounded
            count += 1
        verify(ledger, receipt)  # the originals were not changed along the way
    assert count > 200


ALPHABET = '0123456789abcdefgABCDEF"\\,:{}[] .-+eEnultr\x00\x7f\u00e9\U0001f600'


@given(data=st.data())
def test_single_character_mutations_of_a_receipt_never_escape(
    ledger: Ledger, receipts: dict[str, dict[str, Any]], data: st.DataObject
) -> None:
    genesis_hash = ledger.chain.genesis.genesis_hash()
    original = data.draw(st.sampled_from(sorted(receipts)), label="retirement")
    text = json.dumps(receipts[original], separators=(",", ":"), ensure_ascii=False)
    position = data.draw(st.integers(0, len(text) - 1), label="position")
    operation = data.draw(st.sampled_from(["replace", "insert", "delete"]), label="operation")
    character = data.draw(st.sampled_from(ALPHABET), label="character")
    if operation == "replace":
        mutated = text[:position] + character + text[position + 1 :]
    elif operation == "insert":
        mutated = text[:position] + character + text[position:]
    else:
        mutated = text[:position] + text[position + 1 :]
    try:
        value = decode(mutated.encode("utf-8"))
        verify(ledger, value, genesis_hash=genesis_hash)
    except (InvalidProofError, DecodeError):
        return
    assert same_json(value, receipts[original]), "a changed receipt verified"
