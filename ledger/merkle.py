"""The transaction log as an RFC 9162 Merkle tree (SPEC §6.1, §6.4).

Leaf hash `sha256(0x00 + leaf)`, node hash `sha256(0x01 + left + right)`, the empty tree
`sha256("")`. `LogState` keeps only the roots of the perfect subtrees ("peaks") that make up
the log, so an append costs O(log n) and never rescans; each append reports the nodes it
completed, which the store keeps so proofs can be served from O(log n) reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from ledger.encoding import shown_integer
from ledger.errors import InvalidProofError

EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
HASH_BYTES: Final = 32


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


@dataclass(frozen=True, slots=True)
class LogNode:
    """A completed perfect subtree: leaves [index * 2**level, (index + 1) * 2**level)."""

    level: int
    index: int
    hash: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class LogState:
    """The log's size and the roots of its perfect subtrees, largest (leftmost) first."""

    size: int = 0
    peaks: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        assert len(self.peaks) == self.size.bit_count(), (self.size, len(self.peaks))

    def root(self) -> bytes:
        """MTH over all leaves: folding the peaks right to left is RFC 9162's recursion."""
        if not self.peaks:
            return EMPTY_ROOT
        result = self.peaks[-1]
        for peak in reversed(self.peaks[:-1]):
            result = node_hash(peak, result)
        return result

    def append(self, leaf_hashes: Sequence[bytes]) -> tuple[LogState, list[LogNode]]:
        """The log with `leaf_hashes` appended, and every node that became complete."""
        peaks = list(self.peaks)
        size = self.size
        completed: list[LogNode] = []
        for leaf in leaf_hashes:
            completed.append(LogNode(0, size, leaf))
            peaks.append(leaf)
            size += 1
            level = 0
            # Each trailing one bit of the new size closes one more perfect subtree.
            while (size >> level) & 1 == 0:
                right = peaks.pop()
                left = peaks.pop()
                merged = node_hash(left, right)
                peaks.append(merged)
                level += 1
                completed.append(LogNode(level, (size >> level) - 1, merged))
        return LogState(size=size, peaks=tuple(peaks)), completed

    def extended(self, leaf_hashes: Sequence[bytes]) -> LogState:
        """The log with `leaf_hashes` appended, as `append` gives it, without the nodes it
        completed: what checking a block's `log_root` needs, at about a third of the cost
        (no node objects). A validator checks each block's body several times: at the door
        (whole or by reference), in its replica's body match, and before its apply."""
        peaks = list(self.peaks)
        size = self.size
        for leaf in leaf_hashes:
            size += 1
            merged = leaf
            bit = 1
            while not size & bit:  # each trailing zero of the new size: a subtree closes
                merged = node_hash(peaks.pop(), merged)
                bit <<= 1
            peaks.append(merged)
        return LogState(size=size, peaks=tuple(peaks))

    @staticmethod
    def root_of_prefix(size: int, node: NodeReader) -> bytes:
        """The root of the log's first `size` leaves, from stored nodes (O(log n) reads)."""
        return EMPTY_ROOT if size == 0 else subtree_hash(0, size, node)

    @staticmethod
    def peak_positions(size: int) -> list[tuple[int, int]]:
        """(level, index) of each peak of a log of `size` leaves, leftmost first."""
        positions: list[tuple[int, int]] = []
        start = 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                positions.append((level, start >> level))
                start += 1 << level
        return positions


def compute_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of RFC 9162 §2.1.1 over already-hashed leaves."""
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaf_hashes[0]
    split = 1 << ((n - 1).bit_length() - 1)
    return node_hash(compute_root(leaf_hashes[:split]), compute_root(leaf_hashes[split:]))


NodeReader = Callable[[int, int], bytes]
"""`(level, index) -> hash` of the completed perfect subtree over leaves
[index * 2**level, (index + 1) * 2**level): what `LogState.append` reports and a store keeps."""


def _largest_power_below(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def subtree_hash(start: int, end: int, node: NodeReader) -> bytes:
    """MTH of leaves [start, end), for the ranges RFC 9162's recursion produces: `start` is a
    multiple of the largest power of two not above `end - start`, so the range splits into
    aligned perfect subtrees, one stored node each (O(log n) reads)."""
    assert 0 <= start < end
    chunks: list[bytes] = []
    position = start
    for level in range((end - start).bit_length() - 1, -1, -1):
        if (end - start) >> level & 1:
            assert position % (1 << level) == 0, "range not aligned as RFC 9162 splits it"
            chunks.append(node(level, position >> level))
            position += 1 << level
    result = chunks[-1]
    for chunk in reversed(chunks[:-1]):
        result = node_hash(chunk, result)
    return result


def inclusion_path(index: int, size: int, node: NodeReader) -> list[bytes]:
    """PATH(index, D[size]) of RFC 9162 §2.1.3.1, read from stored nodes, leaf side first."""
    if not 0 <= index < size:
        raise InvalidProofError(
            f"index {_shown(index)} is not inside a tree of size {_shown(size)}"
        )
    path: list[bytes] = []
    start, width, target = 0, size, index
    while width > 1:
        k = _largest_power_below(width)
        if target < k:
            path.append(subtree_hash(start + k, start + width, node))
            width = k
        else:
            path.append(subtree_hash(start, start + k, node))
            start, width, target = start + k, width - k, target - k
    path.reverse()
    return path


def consistency_path(size1: int, size2: int, node: NodeReader) -> list[bytes]:
    """PROOF(size1, D[size2]) of RFC 9162 §2.1.4.1, read from stored nodes."""
    if not 0 < size1 <= size2:
        raise InvalidProofError(
            f"no consistency proof from size {_shown(size1)} to size {_shown(size2)}"
        )
    proof: list[bytes] = []
    start, width, m, complete = 0, size2, size1, True
    while m != width:
        k = _largest_power_below(width)
        if m <= k:
            proof.append(subtree_hash(start + k, start + width, node))
            width = k
        else:
            proof.append(subtree_hash(start, start + k, node))
            start, width, m, complete = start + k, width - k, m - k, False
    if not complete:
        proof.append(subtree_hash(start, start + width, node))
    proof.reverse()
    return proof


def _check_path(name: str, path: object) -> None:
    if not isinstance(path, list | tuple):
        raise InvalidProofError(f"{name} is not a list of hashes")


def _check_hash(name: str, value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_BYTES:
        raise InvalidProofError(f"{name} is not a {HASH_BYTES}-byte hash")
    return value


def _shown(value: object) -> str:
    """A size or index for a message: a caller may pass any object, of any size (SPEC §6.4:
    every refusal is an InvalidProofError, found by review)."""
    return shown_integer(value) if isinstance(value, int) else type(value).__name__


def verify_inclusion(
    *, leaf_hash: bytes, index: int, size: int, path: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 §2.1.3.2: `leaf_hash` is leaf `index` of the tree of `size` with `root`."""
    _check_hash("leaf hash", leaf_hash)
    _check_hash("root", root)
    if not (isinstance(index, int) and isinstance(size, int)) or not 0 <= index < size:
        raise InvalidProofError(
            f"index {_shown(index)} is not inside a tree of size {_shown(size)}"
        )
    _check_path("inclusion path", path)
    if len(path) > 64:
        raise InvalidProofError("inclusion path is longer than any tree allows")
    fn, sn = index, size - 1
    result = leaf_hash
    for position, sibling in enumerate(path):
        _check_hash(f"path[{position}]", sibling)
        if sn == 0:
            raise InvalidProofError("inclusion path is longer than the tree is deep")
        if fn & 1 or fn == sn:
            result = node_hash(sibling, result)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            result = node_hash(result, sibling)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InvalidProofError("inclusion path is shorter than the tree is deep")
    if result != root:
        raise InvalidProofError("inclusion path does not lead to the root")


def verify_consistency(
    *, size1: int, size2: int, path: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """RFC 9162 §2.1.4.2: the tree of `size2` with `root2` extends the one of `size1`."""
    _check_hash("first root", root1)
    _check_hash("second root", root2)
    if not (isinstance(size1, int) and isinstance(size2, int)):
        raise InvalidProofError("sizes must be integers")
    if size1 <= 0:
        raise InvalidProofError("a consistency proof from size 0 is meaningless")
    if size1 > size2:
        raise InvalidProofError(
            f"first size {_shown(size1)} is larger than second size {_shown(size2)}"
        )
    _check_path("consistency path", path)
    if len(path) > 128:
        raise InvalidProofError("consistency path is longer than any tree allows")
    for position, node in enumerate(path):
        _check_hash(f"path[{position}]", node)
    if size1 == size2:
        if path:
            raise InvalidProofError("between equal sizes the proof is empty")
        if root1 != root2:
            raise InvalidProofError("equal sizes with different roots")
        return
    if not path:
        raise InvalidProofError("an empty consistency path where one is needed")
    nodes = list(path)
    if size1 & (size1 - 1) == 0:  # size1 is a power of two: its root is the first node.
        nodes.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = nodes[0]
    for node in nodes[1:]:
        if sn == 0:
            raise InvalidProofError("consistency path is longer than needed")
        if fn & 1 or fn == sn:
            fr = node_hash(node, fr)
            sr = node_hash(node, sr)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, node)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InvalidProofError("consistency path is shorter than needed")
    if fr != root1:
        raise InvalidProofError("consistency path does not rebuild the first root")
    if sr != root2:
        raise InvalidProofError("consistency path does not rebuild the second root")
