"""The sparse Merkle tree behind `state_root` (SPEC §4), against `compute_state_root` and against
hashes written out by hand from the SPEC's definition."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from ledger.encoding import canonical
from ledger.state_tree import (
    EMPTY_HASH,
    StateTree,
    compute_leaf_hash,
    compute_state_root,
    key_hash,
    value_hash,
)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def leaf(key: str, value: Any) -> bytes:
    """A leaf, written from SPEC §4: sha256(0x00 + sha256(key) + sha256(canonical(value)))."""
    return sha256(b"\x00" + sha256(key.encode()) + sha256(canonical(value)))


def internal(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01" + left + right)


def bit(key: str, position: int) -> int:
    return (int.from_bytes(sha256(key.encode()), "big") >> (255 - position)) & 1


def first_difference(a: str, b: str) -> int:
    return next(i for i in range(256) if bit(a, i) != bit(b, i))


def two_leaf_root(a: str, value_a: Any, b: str, value_b: Any, *, top: int = 0) -> bytes:
    """By hand: the two leaves meet at their first differing bit; above it, up to the subtree
    at depth `top`, every sibling is empty."""
    depth = first_difference(a, b)
    if bit(a, depth):
        (a, value_a), (b, value_b) = (b, value_b), (a, value_a)
    node = internal(leaf(a, value_a), leaf(b, value_b))
    for position in range(depth - 1, top - 1, -1):
        node = internal(EMPTY_HASH, node) if bit(a, position) else internal(node, EMPTY_HASH)
    return node


def keys_sharing_prefixes() -> list[list[str]]:
    """Groups of keys whose sha256 share their first 2 or 3 bytes (found by counting up)."""
    by_prefix: dict[bytes, list[str]] = defaultdict(list)
    for number in range(40_000):
        key = f"lot/B-{number}/1"
        by_prefix[sha256(key.encode())[:3]].append(key)
    three = [group for group in by_prefix.values() if len(group) >= 2]
    by_two: dict[bytes, list[str]] = defaultdict(list)
    for number in range(3_000):
        key = f"account/{number}"
        by_two[sha256(key.encode())[:2]].append(key)
    two = sorted((group for group in by_two.values() if len(group) >= 2), key=len, reverse=True)
    assert three and two
    return three[:6] + two[:6]


PREFIX_GROUPS = keys_sharing_prefixes()
CLOSE_KEYS = [key for group in PREFIX_GROUPS for key in group]

VALUES: SearchStrategy[Any] = st.none() | st.integers(0, 2**53 - 1) | st.text(max_size=8)
VALUES = VALUES | st.dictionaries(st.sampled_from(["a", "b", "owner"]), VALUES, max_size=3)
KEYS = st.sampled_from([f"account/{i}" for i in range(24)]) | st.sampled_from(CLOSE_KEYS)
ITEMS = st.dictionaries(KEYS | st.text(max_size=12), VALUES, max_size=40)
CHANGES = st.lists(st.tuples(KEYS, st.none() | VALUES), max_size=12)


# --- the definition ---------------------------------------------------------------------------


def test_empty_tree_root_is_32_zero_bytes() -> None:
    assert StateTree().root == bytes(32) == EMPTY_HASH
    assert StateTree.from_items([]).root == bytes(32)
    assert compute_state_root([]) == bytes(32)


@pytest.mark.parametrize(
    ("key", "value"),
    [("account/x", {"nonce": 1}), ("", None), ("碳", [1, "a"]), ("validators/current", [])],
)
def test_single_leaf_root_is_that_leaf(key: str, value: Any) -> None:
    expected = leaf(key, value)
    assert compute_leaf_hash(key_hash(key), value_hash(value)) == expected
    assert StateTree.from_items([(key, value)]).root == expected
    if value is not None:  # to `update`, None means "delete"
        assert StateTree().update([(key, value)]).root == expected
    assert compute_state_root([(key, value)]) == expected


@given(st.text(max_size=10), st.text(max_size=10), VALUES, VALUES)
def test_two_leaf_root_by_hand(a: str, b: str, value_a: Any, value_b: Any) -> None:
    assume(a != b)
    expected = two_leaf_root(a, value_a, b, value_b)
    items = [(a, value_a), (b, value_b)]
    assert compute_state_root(items) == expected
    assert StateTree.from_items(items).root == expected
    if value_a is not None and value_b is not None:  # to `update`, None means "delete"
        assert StateTree().update(items).root == expected


@pytest.mark.parametrize("group", PREFIX_GROUPS[:4], ids="+".join)
def test_two_leaves_deep_in_the_tree_by_hand(group: list[str]) -> None:
    a, b = group[:2]
    assert first_difference(a, b) >= 16
    expected = two_leaf_root(a, 1, b, 2)
    assert compute_state_root([(a, 1), (b, 2)]) == expected
    assert StateTree.from_items([(a, 1), (b, 2)]).root == expected
    assert StateTree.from_items([(a, 1)]).update([(b, 2)]).root == expected


def test_three_leaves_by_hand() -> None:
    # Two keys far down one side of the root, a third anywhere else: the pair's subtree is
    # hashed up to where the third key's path leaves it.
    group = PREFIX_GROUPS[0]
    a, b = group[:2]
    c = next(f"other/{i}" for i in range(100) if bit(f"other/{i}", 0) != bit(a, 0))
    pair = two_leaf_root(a, 1, b, 2, top=1)
    expected = internal(leaf(c, 3), pair) if bit(a, 0) else internal(pair, leaf(c, 3))
    items = [(a, 1), (b, 2), (c, 3)]
    assert compute_state_root(items) == expected
    assert StateTree.from_items(items).root == expected
    assert StateTree.from_items(items[:1]).update(items[1:]).root == expected


# --- the persistent tree against the reference --------------------------------------------------


@given(ITEMS)
def test_from_items_matches_the_reference(items: dict[str, Any]) -> None:
    tree = StateTree.from_items(items.items())
    assert tree.root == compute_state_root(items.items())
    assert tree.root == StateTree.from_items(reversed(list(items.items()))).root


@given(ITEMS, st.lists(CHANGES, max_size=6))
def test_updates_match_a_rebuild(
    items: dict[str, Any], batches: list[list[tuple[str, Any]]]
) -> None:
    tree = StateTree.from_items(items.items())
    model = dict(items)
    history = [(tree, tree.root)]
    for changes in batches:
        tree = tree.update(changes)
        for key, value in changes:
            if value is None:
                model.pop(key, None)
            else:
                model[key] = value
        assert tree.root == compute_state_root(model.items())
        assert tree.root == StateTree.from_items(model.items()).root
        history.append((tree, tree.root))
    # Persistence: every earlier tree still has its own root.
    for old, root in history:
        assert old.root == root


@given(ITEMS, CHANGES, CHANGES)
def test_old_tree_is_unchanged_and_usable(
    items: dict[str, Any], first: list[tuple[str, Any]], second: list[tuple[str, Any]]
) -> None:
    base = StateTree.from_items(items.items())
    before = base.root
    one = base.update(first)
    two = base.update(second)
    assert base.root == before
    assert two.root == StateTree.from_items(items.items()).update(second).root
    assert one.update(second).root == base.update([*first, *second]).root


@given(ITEMS, st.text(max_size=12))
def test_deleting_an_absent_key_is_a_no_op(items: dict[str, Any], key: str) -> None:
    assume(key not in items)
    tree = StateTree.from_items(items.items())
    assert tree.update([(key, None)]).root == tree.root
    assert tree.update([]).root == tree.root


@given(ITEMS)
def test_deleting_everything_gives_the_empty_root(items: dict[str, Any]) -> None:
    tree = StateTree.from_items(items.items())
    assert tree.update([(key, None) for key in items]).root == EMPTY_HASH


@given(ITEMS, st.sampled_from(CLOSE_KEYS), VALUES.filter(lambda value: value is not None))
def test_set_then_delete_restores_the_root(items: dict[str, Any], key: str, value: Any) -> None:
    items.pop(key, None)
    tree = StateTree.from_items(items.items())
    added = tree.update([(key, value)])
    assert added.root != tree.root
    assert added.update([(key, None)]).root == tree.root


def test_last_change_to_a_key_wins() -> None:
    tree = StateTree().update([("k", 1), ("k", 2)])
    assert tree.root == leaf("k", 2)
    assert StateTree().update([("k", 1), ("k", None)]).root == EMPTY_HASH


def test_value_changes_change_the_root() -> None:
    items = dict.fromkeys(CLOSE_KEYS, 0)
    tree = StateTree.from_items(items.items())
    for key in CLOSE_KEYS:
        changed = tree.update([(key, 1)])
        assert changed.root != tree.root
        assert changed.root == compute_state_root({**items, key: 1}.items())


@pytest.mark.parametrize("group", PREFIX_GROUPS, ids="+".join)
def test_keys_with_shared_prefixes(group: list[str]) -> None:
    others = [f"account/{i}" for i in range(12)]
    items = [(key, {"n": n}) for n, key in enumerate(group + others)]
    assert StateTree.from_items(items).root == compute_state_root(items)
    # Built one key at a time, in both orders, then taken apart again.
    for order in (items, items[::-1]):
        tree = StateTree()
        for position, (key, value) in enumerate(order):
            tree = tree.update([(key, value)])
            assert tree.root == compute_state_root(order[: position + 1])
        for position, (key, _) in enumerate(order):
            tree = tree.update([(key, None)])
            assert tree.root == compute_state_root(order[position + 1 :])
    # Only the close keys, deleted in every single step from the full set.
    close = [(key, n) for n, key in enumerate(group)]
    full = StateTree.from_items(close)
    for position in range(len(close)):
        rest = close[:position] + close[position + 1 :]
        assert full.update([close[position]]).root == full.root
        assert full.update([(close[position][0], None)]).root == compute_state_root(rest)


def test_many_keys_many_batches() -> None:
    # A bigger tree than hypothesis builds: 400 keys, then batches that set and delete.
    keys = [f"lot/B-{n % 7}/{n}" for n in range(400)] + CLOSE_KEYS
    model: dict[str, Any] = {key: {"n": n} for n, key in enumerate(keys[::2])}
    tree = StateTree.from_items(model.items())
    assert tree.root == compute_state_root(model.items())
    for step in range(25):
        changes: list[tuple[str, Any]] = []
        for offset in range(0, len(keys), 13 + step):
            key = keys[(offset * 7 + step * 31) % len(keys)]
            value = None if (offset + step) % 3 == 0 else {"step": step}
            changes.append((key, value))
        tree = tree.update(changes)
        for key, value in changes:
            if value is None:
                model.pop(key, None)
            else:
                model[key] = value
        assert tree.root == compute_state_root(model.items()), step


@given(ITEMS, st.lists(CHANGES, max_size=4))
def test_update_encoded_matches_update(
    items: dict[str, Any], batches: list[list[tuple[str, Any]]]
) -> None:
    tree = encoded_tree = StateTree.from_items(items.items())
    for changes in batches:
        tree = tree.update(changes)
        encoded_tree = encoded_tree.update_encoded(
            (key, None if value is None else canonical(value)) for key, value in changes
        )
        assert encoded_tree.root == tree.root
