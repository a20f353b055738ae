"""The transaction log as an RFC 9162 Merkle tree (SPEC §6.1, §6.4).

The proofs under test come from a reference generator written here straight from RFC 9162:
PATH (§2.1.3.1) and PROOF/SUBPROOF (§2.1.4.1), over an independent MTH (§2.1.1).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import InvalidProofError, LedgerError
from ledger.merkle import (
    EMPTY_ROOT,
    LogNode,
    LogState,
    compute_root,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from ledger.state_tree import verify_state_proof

SIZE_MAX = 64
EXHAUSTIVE_MAX = 16


def make_leaf(index: int) -> bytes:
    return hashlib.sha256(b"\x00" + b"tx-%d" % index).digest()


LEAVES = [make_leaf(i) for i in range(300)]


# --- the reference, from the RFC's definitions -------------------------------------------------


def largest_power_of_two_below(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@cache
def mth(start: int, end: int) -> bytes:
    """MTH(D[start:end]) of LEAVES (already leaf-hashed), RFC 9162 §2.1.1."""
    n = end - start
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return LEAVES[start]
    k = largest_power_of_two_below(n)
    return hashlib.sha256(b"\x01" + mth(start, start + k) + mth(start + k, end)).digest()


def path(m: int, start: int, end: int) -> list[bytes]:
    """PATH(m, D[start:end]), RFC 9162 §2.1.3.1."""
    n = end - start
    if n == 1:
        return []
    k = largest_power_of_two_below(n)
    if m < k:
        return [*path(m, start, start + k), mth(start + k, end)]
    return [*path(m - k, start + k, end), mth(start, start + k)]


def subproof(m: int, start: int, end: int, complete: bool) -> list[bytes]:
    """SUBPROOF(m, D[start:end], b), RFC 9162 §2.1.4.1."""
    n = end - start
    if m == n:
        return [] if complete else [mth(start, end)]
    k = largest_power_of_two_below(n)
    if m <= k:
        return [*subproof(m, start, start + k, complete), mth(start + k, end)]
    return [*subproof(m - k, start + k, end, False), mth(start, start + k)]


def inclusion_proof(index: int, size: int) -> list[bytes]:
    return path(index, 0, size)


def consistency_proof(size1: int, size2: int) -> list[bytes]:
    return subproof(size1, 0, size2, True)


def check_inclusion(index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    verify_inclusion(leaf_hash=LEAVES[index], index=index, size=size, path=proof, root=root)


def check_consistency(size1: int, size2: int, proof: Sequence[bytes], r1: bytes, r2: bytes) -> None:
    verify_consistency(size1=size1, size2=size2, path=proof, root1=r1, root2=r2)


def refused(function: Callable[..., None], **kwargs: Any) -> bool:
    try:
        function(**kwargs)
    except InvalidProofError:
        return True
    return False


def flip(value: bytes, bit: int) -> bytes:
    changed = bytearray(value)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


def test_reference_generator_matches_the_rfc_on_small_trees() -> None:
    # Hand-checked against the figures of RFC 9162 §2.1.5 (seven leaves a..g).
    a, b, c, d, e, f, g = LEAVES[:7]
    ab, cd, ef = node_hash(a, b), node_hash(c, d), node_hash(e, f)
    abcd, efg = node_hash(ab, cd), node_hash(ef, g)
    assert mth(0, 7) == node_hash(abcd, efg)
    assert inclusion_proof(0, 7) == [b, cd, efg]  # a: [b, h, l]
    assert inclusion_proof(3, 7) == [c, ab, efg]  # d: [c, g, l]
    assert inclusion_proof(4, 7) == [f, g, abcd]  # e: [f, j, k]
    assert inclusion_proof(6, 7) == [ef, abcd]  # j: [i, k]
    assert consistency_proof(3, 7) == [c, d, ab, efg]  # hash0 → [c, d, g, l]
    assert consistency_proof(4, 7) == [efg]  # hash1 → [l]
    assert consistency_proof(6, 7) == [ef, g, abcd]  # hash2 → [i, j, k]


# --- roots and the incremental log --------------------------------------------------------------


def test_empty_root() -> None:
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert compute_root([]) == EMPTY_ROOT
    assert LogState().root() == EMPTY_ROOT


def test_leaf_and_node_hash() -> None:
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert (
        node_hash(LEAVES[0], LEAVES[1]) == hashlib.sha256(b"\x01" + LEAVES[0] + LEAVES[1]).digest()
    )


@pytest.mark.parametrize("size", range(SIZE_MAX + 1))
def test_compute_root_is_mth(size: int) -> None:
    assert compute_root(LEAVES[:size]) == mth(0, size)


def expected_nodes(size: int) -> dict[tuple[int, int], bytes]:
    """Every leaf and every root of a perfect subtree inside the first `size` leaves."""
    nodes: dict[tuple[int, int], bytes] = {}
    level = 0
    while 1 << level <= size:
        width = 1 << level
        for index in range(size // width):
            nodes[(level, index)] = compute_root(LEAVES[index * width : (index + 1) * width])
        level += 1
    return nodes


def check_log(state: LogState, completed: list[LogNode]) -> None:
    size = state.size
    assert state.root() == compute_root(LEAVES[:size])
    positions = LogState.peak_positions(size)
    assert len(positions) == len(state.peaks) == size.bit_count()
    start = 0
    for (level, index), peak in zip(positions, state.peaks, strict=True):
        assert index << level == start, "peaks are contiguous, leftmost first"
        assert peak == compute_root(LEAVES[start : start + (1 << level)])
        start += 1 << level
    assert start == size
    # The completed nodes, in order of completion: each exactly once, each hash right.
    keys = [(node.level, node.index) for node in completed]
    assert len(keys) == len(set(keys))
    assert {(node.level, node.index): node.hash for node in completed} == expected_nodes(size)


@pytest.mark.parametrize("size", range(SIZE_MAX + 1))
def test_log_state_one_leaf_at_a_time(size: int) -> None:
    state, completed = LogState(), []
    for leaf in LEAVES[:size]:
        state, new = state.append([leaf])
        completed += new
    check_log(state, completed)
    whole, nodes = LogState().append(LEAVES[:size])
    assert whole == state
    assert nodes == completed
    assert LogState().extended(LEAVES[:size]) == state


@given(st.lists(st.integers(0, 40), max_size=8))
def test_log_state_in_random_chunks(chunks: list[int]) -> None:
    state, completed = LogState(), []
    for chunk in chunks:
        before = state
        state, new = state.append(LEAVES[state.size : state.size + chunk])
        assert before.extended(LEAVES[before.size : before.size + chunk]) == state
        assert state.size == before.size + chunk
        assert before.root() == compute_root(LEAVES[: before.size]), "append changes nothing"
        completed += new
        check_log(state, completed)


def test_completed_node_order_for_four_leaves() -> None:
    _, nodes = LogState().append(LEAVES[:4])
    assert [(node.level, node.index) for node in nodes] == [
        (0, 0),
        (0, 1),
        (1, 0),
        (0, 2),
        (0, 3),
        (1, 1),
        (2, 0),
    ]


@pytest.mark.parametrize(
    ("size", "positions"),
    [
        (0, []),
        (1, [(0, 0)]),
        (2, [(1, 0)]),
        (3, [(1, 0), (0, 2)]),
        (6, [(2, 0), (1, 2)]),
        (7, [(2, 0), (1, 2), (0, 6)]),
        (8, [(3, 0)]),
        (13, [(3, 0), (2, 2), (0, 12)]),
    ],
)
def test_peak_positions(size: int, positions: list[tuple[int, int]]) -> None:
    assert LogState.peak_positions(size) == positions


def test_log_state_refuses_inconsistent_peaks() -> None:
    with pytest.raises(AssertionError):
        LogState(size=3, peaks=(LEAVES[0],))


# --- inclusion ----------------------------------------------------------------------------------


def test_every_inclusion_proof_verifies() -> None:
    for size in range(1, SIZE_MAX + 1):
        root = mth(0, size)
        for index in range(size):
            check_inclusion(index, size, inclusion_proof(index, size), root)


def inclusion_tamperings(index: int, size: int, bits: Sequence[int]) -> list[dict[str, Any]]:
    """Arguments to verify_inclusion, each a valid proof with one thing changed."""
    proof, root = inclusion_proof(index, size), mth(0, size)
    valid: dict[str, Any] = {
        "leaf_hash": LEAVES[index],
        "index": index,
        "size": size,
        "path": proof,
        "root": root,
    }
    cases = []
    for bit in bits:
        cases.append({**valid, "root": flip(root, bit)})
        cases.append({**valid, "leaf_hash": flip(LEAVES[index], bit)})
        for position, node in enumerate(proof):
            changed = list(proof)
            changed[position] = flip(node, bit)
            cases.append({**valid, "path": changed})
    for other in range(size):
        if other != index:
            cases.append({**valid, "index": other})
    # The same proof against every other tree size, with that tree's real root.
    for other in range(1, SIZE_MAX + 1):
        if other != size and index < other:
            cases.append({**valid, "size": other, "root": mth(0, other)})
    cases.append({**valid, "path": [*proof, proof[-1] if proof else root]})
    if proof:
        cases.append({**valid, "path": proof[:-1]})
        cases.append({**valid, "path": proof[1:]})
    if len(proof) > 1:
        cases.append({**valid, "path": proof[::-1]})
    return cases


def test_tampered_inclusion_proofs_are_refused_exhaustively() -> None:
    for size in range(1, EXHAUSTIVE_MAX + 1):
        for index in range(size):
            for case in inclusion_tamperings(index, size, range(256)):
                assert refused(verify_inclusion, **case), (index, size, case)


@given(st.integers(1, 200).flatmap(lambda n: st.tuples(st.integers(0, n - 1), st.just(n))))
def test_tampered_inclusion_proofs_are_refused_sampled(pair: tuple[int, int]) -> None:
    index, size = pair
    check_inclusion(index, size, inclusion_proof(index, size), mth(0, size))
    bits = [0, 7, 8, 100, 255]
    for case in inclusion_tamperings(index, size, bits):
        assert refused(verify_inclusion, **case), (index, size, case)


# --- consistency --------------------------------------------------------------------------------


def test_every_consistency_proof_verifies() -> None:
    for size2 in range(1, SIZE_MAX + 1):
        for size1 in range(1, size2 + 1):
            proof = consistency_proof(size1, size2)
            check_consistency(size1, size2, proof, mth(0, size1), mth(0, size2))


def test_consistency_between_equal_sizes_is_empty() -> None:
    for size in range(1, SIZE_MAX + 1):
        assert consistency_proof(size, size) == []


def consistency_tamperings(size1: int, size2: int, bits: Sequence[int]) -> list[dict[str, Any]]:
    proof, root1, root2 = consistency_proof(size1, size2), mth(0, size1), mth(0, size2)
    valid: dict[str, Any] = {
        "size1": size1,
        "size2": size2,
        "path": proof,
        "root1": root1,
        "root2": root2,
    }
    cases = []
    for bit in bits:
        cases.append({**valid, "root1": flip(root1, bit)})
        cases.append({**valid, "root2": flip(root2, bit)})
        for position, node in enumerate(proof):
            changed = list(proof)
            changed[position] = flip(node, bit)
            cases.append({**valid, "path": changed})
    # The same proof between other sizes, with those trees' real roots.
    # (Skipping any pair whose own proof happens to be the same list: that would be valid.)
    for other in range(1, SIZE_MAX + 1):
        if other != size1 and other <= size2 and consistency_proof(other, size2) != proof:
            cases.append({**valid, "size1": other, "root1": mth(0, other)})
        if other != size2 and other >= size1 and consistency_proof(size1, other) != proof:
            cases.append({**valid, "size2": other, "root2": mth(0, other)})
    cases.append({**valid, "path": [*proof, root1]})
    if proof:
        cases.append({**valid, "path": proof[:-1]})
        cases.append({**valid, "path": proof[1:]})
        cases.append({**valid, "path": [root1, *proof]})
    return cases


def test_tampered_consistency_proofs_are_refused_exhaustively() -> None:
    for size2 in range(1, EXHAUSTIVE_MAX + 1):
        for size1 in range(1, size2 + 1):
            for case in consistency_tamperings(size1, size2, range(256)):
                assert refused(verify_consistency, **case), case


@given(
    st.integers(1, 200).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))),
)
def test_tampered_consistency_proofs_are_refused_sampled(pair: tuple[int, int]) -> None:
    size1, size2 = pair
    proof = consistency_proof(size1, size2)
    check_consistency(size1, size2, proof, mth(0, size1), mth(0, size2))
    for case in consistency_tamperings(size1, size2, [0, 9, 64, 255]):
        assert refused(verify_consistency, **case), case


# --- edge cases -------------------------------------------------------------------------------


def expect_refused(function: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    with pytest.raises(InvalidProofError) as caught:
        function(*args, **kwargs)
    assert isinstance(caught.value, LedgerError)
    assert caught.value.code == "invalid_proof"


@pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 1), (5, 5), (6, 5), (-1, 5), (0, -1)])
def test_inclusion_index_outside_the_tree(index: int, size: int) -> None:
    leaf = LEAVES[0]
    expect_refused(
        lambda: verify_inclusion(leaf_hash=leaf, index=index, size=size, path=[], root=leaf)
    )


def test_inclusion_in_a_single_leaf_tree_needs_an_empty_path() -> None:
    leaf = LEAVES[0]
    verify_inclusion(leaf_hash=leaf, index=0, size=1, path=[], root=leaf)
    expect_refused(
        lambda: verify_inclusion(leaf_hash=leaf, index=0, size=1, path=[leaf], root=leaf)
    )


def test_inclusion_empty_path_where_one_is_needed() -> None:
    expect_refused(lambda: check_inclusion(0, 2, [], mth(0, 2)))
    expect_refused(lambda: check_inclusion(0, 2, [], LEAVES[0]))


def test_inclusion_path_longer_than_any_tree() -> None:
    proof = inclusion_proof(0, 2) * 65
    expect_refused(lambda: check_inclusion(0, 2, proof, mth(0, 2)))


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_inclusion_hashes_of_wrong_length(length: int) -> None:
    proof, root = inclusion_proof(2, 5), mth(0, 5)
    bad = (root * 3)[:length]
    expect_refused(lambda: check_inclusion(2, 5, proof, bad))
    expect_refused(lambda: verify_inclusion(leaf_hash=bad, index=2, size=5, path=proof, root=root))
    for position in range(len(proof)):
        changed = list(proof)
        changed[position] = bad
        expect_refused(check_inclusion, 2, 5, changed, root)


@pytest.mark.parametrize("bad", [None, "00" * 32, 0, [0] * 32, bytearray(32)], ids=repr)
def test_inclusion_hashes_that_are_not_bytes(bad: Any) -> None:
    proof, root = inclusion_proof(2, 5), mth(0, 5)
    expect_refused(lambda: check_inclusion(2, 5, proof, bad))
    expect_refused(lambda: verify_inclusion(leaf_hash=bad, index=2, size=5, path=proof, root=root))
    expect_refused(lambda: check_inclusion(2, 5, [bad, *proof[1:]], root))


@pytest.mark.parametrize("bad", [None, "1", 1.0])
def test_inclusion_index_and_size_must_be_integers(bad: Any) -> None:
    proof, root = inclusion_proof(0, 1), mth(0, 1)
    leaf = LEAVES[0]
    expect_refused(
        lambda: verify_inclusion(leaf_hash=leaf, index=bad, size=1, path=proof, root=root)
    )
    expect_refused(
        lambda: verify_inclusion(leaf_hash=leaf, index=0, size=bad, path=proof, root=root)
    )


def test_consistency_from_size_zero_is_refused() -> None:
    for size2 in range(5):
        expect_refused(check_consistency, 0, size2, [], EMPTY_ROOT, mth(0, size2))
    expect_refused(lambda: check_consistency(0, 4, [mth(0, 4)], EMPTY_ROOT, mth(0, 4)))


def test_consistency_first_size_larger_is_refused() -> None:
    proof = consistency_proof(3, 5)
    expect_refused(lambda: check_consistency(5, 3, proof, mth(0, 5), mth(0, 3)))
    expect_refused(lambda: check_consistency(5, 3, [], mth(0, 5), mth(0, 3)))


def test_consistency_equal_sizes() -> None:
    root = mth(0, 5)
    check_consistency(5, 5, [], root, root)
    expect_refused(lambda: check_consistency(5, 5, [root], root, root))
    expect_refused(lambda: check_consistency(5, 5, [], root, mth(0, 4)))


def test_consistency_empty_path_where_one_is_needed() -> None:
    for size1, size2 in [(1, 2), (2, 4), (3, 5), (4, 8)]:
        r1, r2 = mth(0, size1), mth(0, size2)
        expect_refused(check_consistency, size1, size2, [], r1, r2)


def test_consistency_path_longer_than_any_tree() -> None:
    proof = consistency_proof(3, 5)
    expect_refused(lambda: check_consistency(3, 5, proof * 64, mth(0, 3), mth(0, 5)))


@pytest.mark.parametrize("length", [0, 31, 33])
def test_consistency_hashes_of_wrong_length(length: int) -> None:
    proof, r1, r2 = consistency_proof(3, 7), mth(0, 3), mth(0, 7)
    bad = (r1 * 2)[:length]
    expect_refused(lambda: check_consistency(3, 7, proof, bad, r2))
    expect_refused(lambda: check_consistency(3, 7, proof, r1, bad))
    for position in range(len(proof)):
        changed = list(proof)
        changed[position] = bad
        expect_refused(check_consistency, 3, 7, changed, r1, r2)


@pytest.mark.parametrize("bad", [None, "00" * 32, 0, bytearray(32)], ids=repr)
def test_consistency_hashes_that_are_not_bytes(bad: Any) -> None:
    proof, r1, r2 = consistency_proof(3, 7), mth(0, 3), mth(0, 7)
    expect_refused(lambda: check_consistency(3, 7, proof, bad, r2))
    expect_refused(lambda: check_consistency(3, 7, proof, r1, bad))
    expect_refused(lambda: check_consistency(3, 7, [*proof[:-1], bad], r1, r2))


@pytest.mark.parametrize("bad", [None, "3", 3.0])
def test_consistency_sizes_must_be_integers(bad: Any) -> None:
    proof, r1, r2 = consistency_proof(3, 7), mth(0, 3), mth(0, 7)
    expect_refused(lambda: check_consistency(bad, 7, proof, r1, r2))
    expect_refused(lambda: check_consistency(3, bad, proof, r1, r2))


def test_wrong_path_lengths_name_the_failed_check() -> None:
    # SPEC §6.4: the error names the failed check, not just "does not verify".
    extra = LEAVES[299]
    for size in range(2, 40):
        for index in (0, size // 2, size - 1):
            proof, root = inclusion_proof(index, size), mth(0, size)
            with pytest.raises(InvalidProofError, match="longer"):
                check_inclusion(index, size, [*proof, extra], root)
            with pytest.raises(InvalidProofError, match="shorter"):
                check_inclusion(index, size, proof[:-1], root)
        for size1 in range(1, size):
            proof = consistency_proof(size1, size)
            r1, r2 = mth(0, size1), mth(0, size)
            with pytest.raises(InvalidProofError, match="longer"):
                check_consistency(size1, size, [*proof, extra], r1, r2)
            if len(proof) > 1:
                with pytest.raises(InvalidProofError, match="shorter"):
                    check_consistency(size1, size, proof[:-1], r1, r2)


@pytest.mark.parametrize("bad", [None, 7, b"\x00" * 32, "00" * 32, {}], ids=repr)
def test_a_path_that_is_not_a_list_is_refused(bad: Any) -> None:
    """A script passing `proof.get("path")` (None) or a hex string still gets the library's
    own error (SPEC §6.4), never a TypeError."""
    expect_refused(check_inclusion, 2, 5, bad, mth(0, 5))
    expect_refused(check_consistency, 3, 7, bad, mth(0, 3), mth(0, 7))


@pytest.mark.parametrize(
    "call",
    [
        lambda: verify_inclusion(
            leaf_hash=bytes(32), index=10**5000, size=4, path=[], root=bytes(32)
        ),
        lambda: verify_consistency(
            size1=10**5000, size2=5, path=[], root1=bytes(32), root2=bytes(32)
        ),
        lambda: verify_state_proof(
            proof={"key": "a", "value": 10**5000, "siblings": []}, root=bytes(32)
        ),
        lambda: verify_state_proof(
            proof={"key": "a", "value": memoryview(b"x"), "siblings": []}, root=bytes(32)
        ),
        lambda: verify_state_proof(
            proof={"key": "a", "value": {10**5000: 1}, "siblings": []}, root=bytes(32)
        ),
        lambda: verify_inclusion(
            leaf_hash=bytes(32), index=-(10**5000), size=4, path=[], root=bytes(32)
        ),
    ],
)
def test_a_verifier_refuses_any_python_value_with_its_own_error(call: Callable[[], None]) -> None:
    """SPEC §6.4: each verifier raises InvalidProofError. An integer past Python's 4,300
    digits had raised ValueError while its message was written, and a memoryview TypeError
    from the encoder (found by review; JSON can hold neither, a library caller can)."""
    with pytest.raises(InvalidProofError) as refused:
        call()
    assert "16610 bits" in refused.value.message or "memoryview" in refused.value.message
    assert len(refused.value.message) < 200


def test_a_long_object_key_is_shown_cut_short() -> None:
    with pytest.raises(InvalidProofError) as refused:
        verify_state_proof(
            proof={"key": "a", "value": {"a" * 10**6 + "!": 1}, "siblings": []}, root=bytes(32)
        )
    assert len(refused.value.message) < 200
