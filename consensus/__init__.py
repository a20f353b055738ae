"""Consensus: the pending pool, the producers that turn it into certified blocks, and the BFT
protocol (SPEC §5.3, §5.4).

- `pool`, `producer`, `verifier`: admission of transactions (signatures checked in a worker
  process) and the single-validator producer `SoloProducer` (n = 1, the embedded development
  default) behind the `BlockProducer` protocol the node drives.
- `messages`, `quorum`, `proposer`, `replica`: Tendermint (Algorithm 1) as a pure,
  deterministic state machine that returns effects; no clock, socket, thread or randomness
  (an import-linter contract keeps it so). docs/decisions/0006 describes the design.

Errors: `ledger.errors.PoolError` (mempool_full, bad_nonce, duplicate) for admission, and
`consensus.messages.ConsensusError` for consensus messages.
"""
