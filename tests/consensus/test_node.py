"""The BFT producer: four validators, each with its own store and signed-message log, joined
by the in-memory transport, decide the same chain; one restarted from its log and store
catches up and re-signs nothing differently."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from consensus.node import BftProducer
from consensus.replica import Timeouts
from consensus.transport import MemoryNetwork
from consensus.wal import WAL_FILE_NAME, SignedLog
from ledger.blocks import Validator
from ledger.genesis import make_genesis_document, parse_genesis
from ledger.store import Store
from ledger.verification import audit_chain
from tests.consensus.simulation.world import BLOCK_INTERVAL_MS, make_world
from tests.factory import CHAIN_ID, GENESIS_TIME, METHODOLOGIES, key

WORLD = make_world(4)
FAST = Timeouts(base_ms=300, delta_ms=100, rebroadcast_ms=200, catch_up_ms=200)
LIMIT = WORLD.genesis.params.transaction_bytes_max


def document() -> dict[str, object]:
    authority = [key(f"authority-{i}") for i in range(3)]
    return make_genesis_document(
        chain_id=CHAIN_ID,
        genesis_time=GENESIS_TIME,
        authority_name="Zibo registry authority",
        authority_keys=[k.public_key_hex for k in authority],
        authority_threshold=2,
        validators=[
            Validator(public_key=k.public_key_hex, power=1, name=f"validator-{i}")
            for i, k in enumerate(WORLD.keys)
        ],
        methodologies=METHODOLOGIES,
        block_interval_ms=BLOCK_INTERVAL_MS,
    )


class Consortium:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.network = MemoryNetwork()
        self.producers: dict[int, BftProducer] = {}
        for index in range(4):
            Store.create(root / str(index), document()).close()
            self.start(index)

    def start(self, index: int) -> None:
        store = Store.open(self.root / str(index))
        log = SignedLog(self.root / str(index) / WAL_FILE_NAME, transaction_bytes_max=LIMIT)
        producer = BftProducer(store, WORLD.keys[index], log=log, timeouts=FAST)
        producer.transport = self.network.join(str(index), producer.on_batch)
        self.producers[index] = producer

    def stop(self, index: int) -> None:
        producer = self.producers.pop(index)
        assert producer.transport is not None
        producer.transport.close()
        producer.log.close()
        producer.store.close()

    def run(self, until: Callable[[], bool], seconds: float = 20.0) -> None:
        deadline = time.monotonic() + seconds
        while not until():
            assert time.monotonic() < deadline, {
                i: p.state.height for i, p in self.producers.items()
            }
            for producer in list(self.producers.values()):
                now_ms = int(time.time() * 1000)
                while producer.due(now_ms) and producer.produce(now_ms) is not None:
                    pass
            time.sleep(0.005)

    def heights(self) -> dict[int, int]:
        return {i: p.state.height for i, p in self.producers.items()}

    def hashes(self, index: int, height: int) -> list[str]:
        store = self.producers[index].store
        return [store.read_block(h).block_hash() for h in range(1, height + 1)]

    def close(self) -> None:
        for index in list(self.producers):
            self.stop(index)


def test_four_validators_decide_one_chain_and_a_restarted_one_catches_up(tmp_path: Path) -> None:
    consortium = Consortium(tmp_path)
    try:
        submitted = consortium.producers[0].submit(list(WORLD.workload))
        assert all(o.status == "pending" for o in submitted)
        ids = {o.tx_id for o in submitted}

        def all_committed() -> bool:
            return all(
                all(p.outcomes.get(i) is not None for i in ids)
                for p in consortium.producers.values()
            )

        consortium.run(all_committed)
        top = min(consortium.heights().values())
        assert len({tuple(consortium.hashes(i, top)) for i in range(4)}) == 1
        assert all(
            p.outcomes[i].status == "committed" for p in consortium.producers.values() for i in ids
        )

        # Messages are lost in real networks: every replica still re-sends every interval,
        # heights after the one its rebroadcast timer was first scheduled at.
        assert all(
            any(timer[2].step == "rebroadcast" for timer in p._timers)
            for p in consortium.producers.values()
        )
        consortium.stop(3)  # the chain goes on with 3 of 4
        before = max(consortium.heights().values())
        consortium.run(lambda: min(consortium.heights().values()) >= before + 2)
        consortium.start(3)  # from its store and log: it catches up
        target = max(consortium.heights().values())
        consortium.run(lambda: consortium.producers[3].state.height >= target)
        top = min(consortium.heights().values())
        assert len({tuple(consortium.hashes(i, top)) for i in range(4)}) == 1
        for index in range(4):  # the offline auditor accepts every validator's export
            lines = list(consortium.producers[index].store.export_lines())
            report = audit_chain(parse_genesis(document()), lines)
            assert report.height >= top
    finally:
        consortium.close()
