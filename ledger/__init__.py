"""Tanlian's ledger core: encodings, transactions, state, blocks, Merkle trees and storage.

Every module here but `store` is pure: no disk, clock, network or web framework (SPEC §2–§6).
The hottest of them may run compiled by mypyc: `native` (which reads the sources) chooses
here, before any of them is imported, whether the compiled build or the sources run.
"""

from ledger.native import use_current_build

use_current_build()
