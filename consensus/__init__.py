"""Block production: the pending pool and the producers that turn it into certified blocks.

    ConsensusError (a LedgerError): mempool_full, bad_nonce, duplicate admission faults

Today one producer exists, `SoloProducer` (n = 1, the embedded development default, SPEC §5.4);
the BFT engine will implement the same `BlockProducer` protocol.
"""
