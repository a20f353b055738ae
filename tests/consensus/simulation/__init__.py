"""A deterministic, seeded simulation of a validator consortium running `consensus.replica`.

`world` builds the chain (keys, genesis, a workload of signed transactions), `scenario` what
goes wrong and when, `network` the virtual clock and the links, `byzantine` the faulty
validators, `harness` the node shells and the invariants checked after every event.
"""
