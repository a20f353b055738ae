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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ledger import schema as s
from ledger.encoding import JSON, canonical, canonical_unchecked
from ledger.errors import InvalidProofError, LedgerError

EMPTY_HASH: Final = bytes(32)
PATH_BITS: Final = 256
STATE_KEY_CHARS_MAX: Final = 400  # the longest key: issuance/<63-char slug>/<128-char project>


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def value_hash(value: JSON) -> bytes:
    return hashlib.sha256(canonical_unchecked(value)).digest()


def compute_leaf_hash(key_digest: bytes, value_digest: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + key_digest + value_digest).digest()


def _bit(path: int, position: int) -> int:
    return (path >> (PATH_BITS - 1 - position)) & 1


class _Leaf:
    # The path, the hash and the key (the same string object as the state's, so 8 bytes): a
    # proof that needs this leaf's value hash reads the value from the state.
    __slots__ = ("hash", "key", "path")
    hash: bytes
    path: int

    def __init__(self, key: str, key_digest: bytes, value_digest: bytes) -> None:
        self.key = key
        self.path = int.from_bytes(key_digest, "big")
        self.hash = compute_leaf_hash(key_digest, value_digest)


class _Branch:
    __slots__ = ("depth", "hash", "left", "path", "right")

    depth: int
    hash: bytes
    path: int

    def __init__(self, depth: int, left: _Node, right: _Node) -> None:
        self.depth = depth
        self.left = left
        self.right = right
        self.path = left.path  # every leaf below shares bits [0, depth)
        # Most children sit right below (a leaf, or a branch one level down): their own
        # hash, without the call (this runs for every branch a block rebuilds).
        below = depth + 1
        left_hash = (
            left.hash if isinstance(left, _Leaf) or left.depth == below else _hash_at(left, below)
        )
        right_hash = (
            right.hash
            if isinstance(right, _Leaf) or right.depth == below
            else _hash_at(right, below)
        )
        self.hash = hashlib.sha256(b"\x01" + left_hash + right_hash).digest()


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


def _build(leaves: Sequence[_Leaf]) -> _Node | None:
    """A trie over leaves sorted by path, with no two equal."""
    return _build_range(leaves, [leaf.path for leaf in leaves], 0, len(leaves))


def _build_range(leaves: Sequence[_Leaf], paths: list[int], lo: int, hi: int) -> _Node | None:
    if hi - lo <= 1:
        return leaves[lo] if hi > lo else None
    depth = _first_difference(paths[lo], paths[hi - 1])
    split = bisect.bisect_left(paths, _with_bit(paths[lo], depth), lo, hi)
    left = _build_range(leaves, paths, lo, split)
    right = _build_range(leaves, paths, split, hi)
    assert left is not None and right is not None
    return _Branch(depth, left, right)


class _Changes:
    """Changes sorted by path, as parallel lists: a leaf, or None to delete the path."""

    __slots__ = ("leaves", "paths")

    def __init__(self, paths: list[int], leaves: list[_Leaf | None]) -> None:
        self.paths = paths
        self.leaves = leaves

    def inserted(self, lo: int, hi: int) -> _Node | None:
        """A subtree of the leaves set in [lo, hi) where nothing was before."""
        leaves = [leaf for leaf in self.leaves[lo:hi] if leaf is not None]
        return _build(leaves)


def _update(node: _Node | None, changes: _Changes, lo: int, hi: int) -> _Node | None:
    """`node` with the changes in [lo, hi) (never empty) applied; all of them lie below
    `node`'s parent. A side without changes is kept as it is, without a call: this recursion
    runs for every branch a block touches, so the joins and bit arithmetic are inline."""
    if node is None:
        return changes.inserted(lo, hi)
    paths = changes.paths
    if hi - lo == 1:
        return _update_one(node, paths[lo], changes.leaves[lo])
    if isinstance(node, _Leaf):
        merged: dict[int, _Leaf | None] = {node.path: node}
        merged.update(zip(paths[lo:hi], changes.leaves[lo:hi], strict=True))
        return _build([leaf for _, leaf in sorted(merged.items()) if leaf is not None])
    depth, node_path = node.depth, node.path
    # Do the changes leave the branch's shared prefix before its depth? They are sorted, so
    # the extremes decide: all share their common prefix.
    differ = ((paths[lo] ^ node_path) | (paths[hi - 1] ^ node_path)).bit_length()
    if differ > PATH_BITS - depth:
        split = PATH_BITS - differ
        shift = differ - 1  # the bit at `split`, counted from the right
        ones = ((paths[lo] >> differ) << differ) | (1 << shift)
        middle = bisect.bisect_left(paths, ones, lo, hi)
        kept: _Node | None
        if (node_path >> shift) & 1 == 0:
            kept = node if lo == middle else _update(node, changes, lo, middle)
            added = changes.inserted(middle, hi) if middle < hi else None
            left, right = kept, added
        else:
            added = changes.inserted(lo, middle) if lo < middle else None
            kept = node if middle == hi else _update(node, changes, middle, hi)
            left, right = added, kept
    else:
        split = depth
        shift = PATH_BITS - 1 - depth
        ones = ((node_path >> (shift + 1)) << (shift + 1)) | (1 << shift)
        middle = bisect.bisect_left(paths, ones, lo, hi)
        left = node.left if lo == middle else _update(node.left, changes, lo, middle)
        right = node.right if middle == hi else _update(node.right, changes, middle, hi)
    if left is None:
        return right
    if right is None:
        return left
    return _Branch(split, left, right)


def _update_one(node: _Node, path: int, leaf: _Leaf | None) -> _Node | None:
    """`_update` of a single change (most calls, below the top levels a block shares): down
    its path by the path's bits, then up again, copying the branches passed."""
    passed: list[tuple[_Branch, int]] = []
    while isinstance(node, _Branch) and not (path ^ node.path) >> (PATH_BITS - node.depth):
        side = (path >> (PATH_BITS - 1 - node.depth)) & 1
        passed.append((node, side))
        node = node.right if side else node.left
    # `node` is a leaf, or a branch whose shared prefix the path leaves before its depth.
    new: _Node | None
    if isinstance(node, _Leaf) and node.path == path:
        new = leaf  # the key's new value, or None: removed
    elif leaf is None:
        return passed[0][0] if passed else node  # absent already: nothing changes
    else:  # the new key's leaf and `node` part where their paths first differ
        split = _first_difference(path, node.path)
        new = _Branch(split, node, leaf) if _bit(path, split) else _Branch(split, leaf, node)
    return _rebuild(passed, new)


def _rebuild(passed: list[tuple[_Branch, int]], new: _Node | None) -> _Node | None:
    """The branches `passed` on the way down, copied bottom up around `new`."""
    for branch, side in reversed(passed):
        if side:
            new = branch.left if new is None else _Branch(branch.depth, branch.left, new)
        else:
            new = branch.right if new is None else _Branch(branch.depth, new, branch.right)
    return new


class StateTree:
    """An immutable sparse Merkle tree; `update` returns a new tree sharing unchanged nodes."""

    __slots__ = ("_root",)

    def __init__(self, root: _Node | None = None) -> None:
        self._root = root

    @classmethod
    def from_items(cls, items: Iterable[tuple[str, JSON]]) -> StateTree:
        leaves = sorted(
            (_Leaf(key, key_hash(key), value_hash(value)) for key, value in items),
            key=lambda leaf: leaf.path,
        )
        return cls(_build(leaves))

    @property
    def root(self) -> bytes:
        return EMPTY_HASH if self._root is None else _hash_at(self._root, 0)

    def locate(self, key: str) -> StatePath:
        """The siblings along `key`'s path and the leaf where it ends (for proofs)."""
        return _prove(self._root, key)

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
            leaf = None if encoded is None else _Leaf(key, digest, hashlib.sha256(encoded).digest())
            prepared[int.from_bytes(digest, "big")] = leaf
        paths = sorted(prepared)
        ordered = _Changes(paths, [prepared[path] for path in paths])
        if not paths:
            return self
        return StateTree(_update(self._root, ordered, 0, len(paths)))


@dataclass(frozen=True, slots=True)
class StatePath:
    """Where a key's path ends: its siblings from the root down, and the leaf found there
    (its own, another key's, or none)."""

    siblings: tuple[bytes, ...]
    leaf_key: str | None


def _prove(root: _Node | None, key: str) -> StatePath:
    path = int.from_bytes(key_hash(key), "big")
    siblings: list[bytes] = []
    node, depth = root, 0
    while isinstance(node, _Branch):
        for level in range(depth, node.depth):
            if _bit(path, level) != _bit(node.path, level):
                # The key leaves the branch's prefix here: its side is empty.
                siblings.append(_hash_at(node, level + 1))
                return StatePath(tuple(siblings), None)
            siblings.append(EMPTY_HASH)
        side = _bit(path, node.depth)
        child, other = (node.right, node.left) if side else (node.left, node.right)
        siblings.append(_hash_at(other, node.depth + 1))
        depth = node.depth + 1
        node = child
    return StatePath(tuple(siblings), None if node is None else node.key)


def prove_state(tree: StateTree, key: str, value_of: Callable[[str], JSON]) -> dict[str, JSON]:
    """The SPEC §4 proof for `key` against `tree.root`: membership with its value, or
    absence, with the leaf that sits on its path if there is one (`value_of` reads values)."""
    found = tree.locate(key)
    proof: dict[str, JSON] = {
        "key": key,
        "value": None,
        "siblings": [sibling.hex() for sibling in found.siblings],
    }
    if found.leaf_key == key:
        proof["value"] = value_of(key)
    elif found.leaf_key is not None:
        proof["leaf"] = {
            "key_hash": key_hash(found.leaf_key).hex(),
            "value_hash": value_hash(value_of(found.leaf_key)).hex(),
        }
    return proof


_PROOF_SCHEMA: Final = s.obj(
    {
        "key": s.text(STATE_KEY_CHARS_MAX),
        "value": lambda path, value: value,
        "siblings": s.array(s.HASH_HEX, low=0, high=PATH_BITS),
        "leaf": s.optional(s.obj({"key_hash": s.HASH_HEX, "value_hash": s.HASH_HEX})),
    }
)


def verify_state_proof(*, proof: Any, root: object) -> None:
    """Check a SPEC §4 state proof against `root`; raises `InvalidProofError` naming the check.

    1. The proof has exactly the fields key, value, siblings (at most 256) and, for an absent
       key, optionally the leaf that sits on its path.
    2. The bottom: the key's own leaf (value not null); or the other leaf, whose key hash must
       differ from the key's and share its first len(siblings) bits; or the empty subtree.
    3. Fold the siblings from the bottom up, by the bits of sha256(key); the result is `root`.
    """
    if not isinstance(root, bytes) or len(root) != 32:
        raise InvalidProofError("root is not a 32-byte hash")
    try:
        fields = _PROOF_SCHEMA("proof", proof)
        value = fields["value"]
        encoded = None if value is None else canonical(value)
    except LedgerError as error:
        raise InvalidProofError(f"malformed state proof: {error.message}") from error
    digest = key_hash(fields["key"])
    path = int.from_bytes(digest, "big")
    siblings = [bytes.fromhex(sibling) for sibling in fields["siblings"]]
    other = fields.get("leaf")
    if encoded is not None:
        if other is not None:
            raise InvalidProofError("a proof of a present key names no other leaf")
        current = compute_leaf_hash(digest, hashlib.sha256(encoded).digest())
    elif other is not None:
        other_digest = bytes.fromhex(other["key_hash"])
        other_path = int.from_bytes(other_digest, "big")
        if other_digest == digest:
            raise InvalidProofError("the leaf on the path is the key's own: it is not absent")
        if _first_difference(path, other_path) < len(siblings):
            raise InvalidProofError("the leaf named does not sit on the key's path")
        current = compute_leaf_hash(other_digest, bytes.fromhex(other["value_hash"]))
    else:
        current = EMPTY_HASH
    for level in range(len(siblings) - 1, -1, -1):
        if _bit(path, level):
            current = hashlib.sha256(b"\x01" + siblings[level] + current).digest()
        else:
            current = hashlib.sha256(b"\x01" + current + siblings[level]).digest()
    if current != root:
        raise InvalidProofError(f"state proof for {fields['key'][:80]!r} does not lead to the root")


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
