"""Tanlian's ledger core: encodings, transactions, state, blocks, Merkle trees and storage.

Every module here but `store` is pure: no disk, clock, network or web framework (SPEC §2–§6).
"""
