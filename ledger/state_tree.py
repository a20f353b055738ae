"""The sparse Merkle tree behind `state_root` (SPEC §4).

Paths are `sha256(key)`, most significant bit first. An empty subtree hashes to 32 zero bytes;
a leaf is `sha256(0x00 + sha256(key) + sha256(canonical(value)))`; an internal node is
`sha256(0x01 + left + right)`; a subtree holding exactly one leaf is that leaf, wherever it sits.

The tree is a persistent, path-compressed binary trie: a `_Branch` sits where the paths below it
first differ and remembers its hash at that depth; the levels between a branch and its parent
(one child empty) are hashed on the way up. Updates copy only the paths they touch, so the old
tree stays valid (a rejected block changes nothing) and a block costs O(k log n) hashes for k
touched keys.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Sequence
from typing import Final

from ledger.encoding import JSON, canonical_unchecked

EMPTY_HASH: Final = bytes(32)
PATH_BITS: Final = 256


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def value_hash(value: JSON) -> bytes:
    return hashlib.sha256(canonical_unchecked(value)).digest()


def compute_leaf_hash(key_digest: bytes, value_digest: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + key_digest + value_digest).digest()


def _bit(path: int, position: int) -> int:
    return (path >> (PATH_BITS - 1 - position)) & 1


class _Leaf:
    __slots__ = ("hash", "key_hash", "path", "value_hash")
    path: int

    def __init__(self, key_digest: bytes, value_digest: bytes) -> None:
        self.key_hash = key_digest
        self.value_hash = value_digest
        self.path = int.from_bytes(key_digest, "big")
        self.hash = compute_leaf_hash(key_digest, value_digest)


class _Branch:
    __slots__ = ("depth", "hash", "left", "path", "right")

    path: int

    def __init__(self, depth: int, left: _Node, right: _Node) -> None:
        self.depth = depth
        self.left = left
        self.right = right
        self.path = left.path  # every leaf below shares bits [0, depth)
        self.hash = hashlib.sha256(
            b"\x01" + _hash_at(left, depth + 1) + _hash_at(right, depth + 1)
        ).digest()


_Node = _Leaf | _Branch


def _hash_at(node: _Node, depth: int) -> bytes:
    """The hash of the subtree at `depth` whose only non-empty part is `node`."""
    if isinstance(node, _Leaf):
        return node.hash
    result = node.hash
    for position in range(node.depth - 1, depth - 1, -1):
        if _bit(node.path, position):
            result = hashlib.sha256(b"\x01" + EMPTY_HASH + result).digest()
        else:
            result = hashlib.sha256(b"\x01" + result + EMPTY_HASH).digest()
    return result


def _first_difference(a: int, b: int) -> int:
    return PATH_BITS - (a ^ b).bit_length()


def _with_bit(path: int, position: int) -> int:
    """The smallest path that shares `path`'s bits before `position` and has 1 there."""
    shift = PATH_BITS - 1 - position
    return ((path >> (shift + 1)) << (shift + 1)) | (1 << shift)


def _path_of(leaf: _Leaf) -> int:
    return leaf.path


def _change_path(change: tuple[int, _Leaf | None]) -> int:
    return change[0]


def _build(leaves: Sequence[_Leaf]) -> _Node | None:
    """A trie over leaves sorted by path, with no two equal."""
    if not leaves:
        return None
    if len(leaves) == 1:
        return leaves[0]
    depth = _first_difference(leaves[0].path, leaves[-1].path)
    split = bisect.bisect_left(leaves, _with_bit(leaves[0].path, depth), key=_path_of)
    left = _build(leaves[:split])
    right = _build(leaves[split:])
    assert left is not None and right is not None
    return _Branch(depth, left, right)


_Change = tuple[int, _Leaf | None]  # (path, new leaf or None to delete)


def _join(depth: int, left: _Node | None, right: _Node | None) -> _Node | None:
    if left is None:
        return right
    if right is None:
        return left
    return _Branch(depth, left, right)


def _update(node: _Node | None, depth: int, changes: Sequence[_Change]) -> _Node | None:
    """`node`, a subtree at `depth`, with `changes` (sorted by path) applied."""
    if not changes:
        return node
    if node is None:
        return _build([leaf for _, leaf in changes if leaf is not None])
    if isinstance(node, _Leaf):
        merged: dict[int, _Leaf | None] = {node.path: node}
        merged.update(dict(changes))
        return _build([merged[path] for path in sorted(merged) if merged[path] is not None])  # type: ignore[misc]
    # Where do the changes first leave the branch's shared prefix, if before its depth? The
    # changes are sorted, so the extremes decide: all share their common prefix.
    split = min(
        _first_difference(changes[0][0], node.path), _first_difference(changes[-1][0], node.path)
    )
    if split < node.depth:
        middle = bisect.bisect_left(changes, _with_bit(changes[0][0], split), key=_change_path)
        low, high = changes[:middle], changes[middle:]
        if _bit(node.path, split) == 0:
            kept = _update(node, split + 1, low)
            return _join(split, kept, _build([leaf for _, leaf in high if leaf is not None]))
        kept = _update(node, split + 1, high)
        return _join(split, _build([leaf for _, leaf in low if leaf is not None]), kept)
    middle = bisect.bisect_left(changes, _with_bit(node.path, node.depth), key=_change_path)
    left_changes, right_changes = changes[:middle], changes[middle:]
    return _join(
        node.depth,
        _update(node.left, node.depth + 1, left_changes),
        _update(node.right, node.depth + 1, right_changes),
    )


class StateTree:
    """An immutable sparse Merkle tree; `update` returns a new tree sharing unchanged nodes."""

    __slots__ = ("_root",)

    def __init__(self, root: _Node | None = None) -> None:
        self._root = root

    @classmethod
    def from_items(cls, items: Iterable[tuple[str, JSON]]) -> StateTree:
        leaves = sorted(
            (_Leaf(key_hash(key), value_hash(value)) for key, value in items),
            key=lambda leaf: leaf.path,
        )
        return cls(_build(leaves))

    @property
    def root(self) -> bytes:
        return EMPTY_HASH if self._root is None else _hash_at(self._root, 0)

    def update(self, changes: Iterable[tuple[str, JSON | None]]) -> StateTree:
        """The tree with each key set to its value, or removed where the value is None."""
        return self.update_encoded(
            (key, None if value is None else canonical_unchecked(value)) for key, value in changes
        )

    def update_encoded(self, changes: Iterable[tuple[str, bytes | None]]) -> StateTree:
        """`update` with each value given as its canonical bytes (None removes the key)."""
        prepared: dict[int, _Leaf | None] = {}
        for key, encoded in changes:
            digest = key_hash(key)
            leaf = None if encoded is None else _Leaf(digest, hashlib.sha256(encoded).digest())
            prepared[int.from_bytes(digest, "big")] = leaf
        ordered = sorted(prepared.items(), key=_change_path)
        return StateTree(_update(self._root, 0, ordered))


def compute_state_root(items: Iterable[tuple[str, JSON]]) -> bytes:
    """The root straight from the definition, by recursion on bits: the reference for tests."""
    leaves = sorted(
        (int.from_bytes(key_hash(key), "big"), compute_leaf_hash(key_hash(key), value_hash(value)))
        for key, value in items
    )

    def subtree(group: list[tuple[int, bytes]], depth: int) -> bytes:
        if not group:
            return EMPTY_HASH
        if len(group) == 1:
            return group[0][1]
        left = [leaf for leaf in group if not _bit(leaf[0], depth)]
        right = [leaf for leaf in group if _bit(leaf[0], depth)]
        return hashlib.sha256(
            b"\x01" + subtree(left, depth + 1) + subtree(right, depth + 1)
        ).digest()

    return subtree(leaves, 0)
