"""Fixtures shared by the tests of the HTTP application: anyio on asyncio, and a running
single-validator node on a fresh store (a module may define its own `node` instead)."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from api.node import Node
from ledger.store import Store
from tests.factory import Chain


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Chain, Node]]:
    chain = Chain()
    Store.create(tmp_path, chain.genesis_document).close()
    running = Node(tmp_path, chain.validator)
    running.start()
    try:
        yield chain, running
    finally:
        running.stop()
