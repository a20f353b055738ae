"""Golden test vectors: exact bytes and hashes another implementation can check itself against.

Regenerate with `.venv/bin/python -m tests.vectors.generate` (run twice, the files are the same:
keys come from names through `tests.factory.key`, times are fixed, and Ed25519 signatures are
deterministic, RFC 8032 §5.1.6). `tests/ledger/test_vectors.py` recomputes every file from the
library and compares it byte for byte, then checks the stored values independently.

Files (each a JSON object with a "description"):
    keys.json          seeds, public keys and account ids of the named parties (SPEC §2.2, §2.3)
    genesis.json       the genesis document, its canonical bytes, hash and state (§5.1)
    transactions.json  one accepted envelope of each of the twelve types (§3), with every byte
    blocks.json        the four blocks that commit them, certificates and roots (§5.2, §5.3)
    merkle.json        RFC 9162 roots and proofs (§6.1)
    state.json         the state after the last block and small sparse-Merkle examples (§4)
    domains.json       every domain tag of §2.2 and one hash under each
    evidence.json      block 5: evidence of equivocation, its hash and its state records (§5.4)

The chain: block 1 sets up the registry and moves credits (issue, transfer, retire, invalidate,
suspend, reinstate); block 2 changes keys, the validator set and revokes the certifier; blocks
3 and 4 are empty and show the H+2 rule: the set chosen at height 2 governs height 4. Block 5
(evidence.json only, so the files of blocks 1-4 stay as they were) carries two pieces of
evidence: one verified against the four-validator set, one against the `city` set that
governed height 3.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from ledger.blocks import Certificate, sign_certificate
from ledger.crypto import (
    ACCOUNT_DOMAIN,
    BLOCK_DOMAIN,
    CERTIFICATE_DOMAIN,
    EVIDENCE_DOMAIN,
    GENESIS_DOMAIN,
    PROPOSAL_DOMAIN,
    TX_DOMAIN,
    VALIDATORS_DOMAIN,
    VOTE_DOMAIN,
    compute_account_id,
    hash_domain,
)
from ledger.encoding import JSON, canonical
from ledger.evidence import (
    NO_ROUND,
    Evidence,
    SignedProposal,
    make_evidence,
    proposal_bytes,
    sign_vote,
    vote_bytes,
)
from ledger.genesis import genesis_state
from ledger.merkle import EMPTY_ROOT, compute_root, leaf_hash, node_hash
from ledger.proposer import compute_proposer
from ledger.state import State
from ledger.state_transition import BuiltBlock, apply_block, build_block
from ledger.state_tree import EMPTY_HASH, StateTree, compute_leaf_hash, key_hash, value_hash
from ledger.transactions import TRANSACTION_TYPES, Envelope
from tests.factory import CHAIN_ID, FAR_FUTURE, GENESIS_TIME, Chain, key

VECTORS_DIR: Final = Path(__file__).resolve().parent

NAMED_PARTIES: Final = (
    "authority-0",
    "authority-1",
    "authority-2",
    "validator-city",
    "validator-certification-centre",
    "validator-energy-platform",
    "validator-independent",
    "certifier",
    "alice",
    "bob",
    "carol",
    "carol-phone",
    "carol-backup",
)
NEW_VALIDATORS: Final = (
    ("validator-city", "city"),
    ("validator-certification-centre", "certification centre"),
    ("validator-energy-platform", "energy platform"),
    ("validator-independent", "independent auditor"),
)
HEAT_PUMP: Final = {
    "methodology_id": "heat-pump-heating",
    "name": "Air-source heat pump space heating",
    "document_sha256": hashlib.sha256(b"heat-pump-heating v1").hexdigest(),
}
# RFC 6962 / RFC 9162 reference leaves (published with Certificate Transparency's test data).
REFERENCE_LEAVES_HEX: Final = (
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
)
SEQUENTIAL_SIZES: Final = (0, 1, 2, 3, 4, 5, 6, 7, 8, 1000)
# Sparse-Merkle examples: "example/40" and "example/99" share their first 14 path bits, so the
# two-key root climbs 14 levels whose other child is empty.
STATE_TREE_EXAMPLE: Final = (
    ("example/40", {"quantity": 40, "owner": "alice"}),
    ("example/99", {"quantity": 99, "owner": "bob"}),
    ("example/0", {"quantity": 0, "owner": "carol", "note": "碳链"}),
)


class VectorChain(Chain):
    """`Chain` whose certificates are signed by every validator of the governing set."""

    def __init__(self) -> None:
        super().__init__()
        self.validator_keys = {key(name).public_key_hex: key(name) for name, _ in NEW_VALIDATORS}

    def certify(self, built: BuiltBlock) -> Certificate:
        governing = built.state.last_validators  # the set that governed this height
        return sign_certificate(
            chain_id=built.block.header.chain_id,
            height=built.block.height,
            round=0,
            block_hash=built.block.block_hash(),
            keys=[self.validator_keys[v.public_key] for v in governing],
        )


class Scenario:
    """The committed chain and what the vectors need from it."""

    def __init__(self) -> None:
        chain = VectorChain()
        self.chain = chain
        self.genesis_state: State = chain.state
        self.envelopes: dict[str, Envelope] = {}
        self.heights: dict[str, int] = {}
        self.certificates: list[Certificate] = []
        self.states: list[State] = []

        alice, bob, carol, certifier = chain.alice, chain.bob, chain.carol, chain.certifier
        block_1 = [
            chain.authority_tx("register_methodology", dict(HEAT_PUMP)),
            chain.accredit(
                methodologies=["household-electricity", "heat-pump-heating"],
                valid_from=GENESIS_TIME,
                valid_until=FAR_FUTURE,
            ),
            chain.authority_tx(
                "create_program",
                {
                    "program_id": "zibo-green-home",
                    "name": "淄博绿色家庭 Zibo green home incentive",
                    "valid_until": FAR_FUTURE,
                },
            ),
            chain.tx(
                certifier,
                "issue",
                {
                    "methodology_id": "household-electricity",
                    "project_id": "meter-0001",
                    "period_start": "2026-01-01",
                    "period_end": "2026-02-01",
                    "evidence_sha256": hashlib.sha256(b"meter-0001 2026-01").hexdigest(),
                    "recipients": [
                        {"account": alice.account_id, "quantity": 1000},
                        {"account": bob.account_id, "quantity": 500},
                    ],
                    "memo": "January 2026 savings against the 2025 baseline",
                },
            ),
            chain.tx(
                alice,
                "transfer",
                {
                    "to": carol.account_id,
                    "batch_id": "B-1",
                    "quantity": 200,
                    "memo": "for the shared balcony solar kit",
                },
            ),
            chain.tx(
                alice,
                "retire",
                {
                    "batch_id": "B-1",
                    "quantity": 100,
                    "beneficiary": "张伟 Zhang Wei household",
                    "purpose": "incentive",
                    "program_id": "zibo-green-home",
                    "jurisdiction": "CN-SD",
                    "memo": "redeemed for a bus pass",
                },
            ),
            chain.tx(
                certifier,
                "invalidate",
                {
                    "batch_id": "B-1",
                    "holder": bob.account_id,
                    "quantity": 50,
                    "reason": "meter recalibration showed 50 kg over-reported",
                },
            ),
            chain.authority_tx(
                "suspend_account",
                {"account": bob.account_id, "reason": "meter under investigation"},
            ),
            chain.authority_tx(
                "reinstate_account",
                {"account": bob.account_id, "reason": "investigation closed"},
            ),
        ]
        block_2 = [
            chain.tx(
                carol,
                "set_keys",
                {
                    "keys": sorted(
                        k.public_key_hex for k in (carol, key("carol-phone"), key("carol-backup"))
                    ),
                    "threshold": 2,
                },
            ),
            chain.authority_tx(
                "set_validators",
                {
                    "validators": [
                        {"public_key": key(name).public_key_hex, "power": 1, "name": label}
                        for name, label in NEW_VALIDATORS
                    ]
                },
            ),
            chain.authority_tx(
                "revoke_certifier",
                {"certifier": certifier.account_id, "reason": "accreditation period reviewed"},
            ),
        ]
        for height, envelopes in enumerate((block_1, block_2, [], []), start=1):
            built = chain.commit(*envelopes)
            assert not built.rejected, [(e.tx.type, r.code, r.message) for e, r in built.rejected]
            assert built.block.height == height
            assert chain.last_certificate is not None
            self.certificates.append(chain.last_certificate)
            self.states.append(built.state)
            for envelope in envelopes:
                assert envelope.tx.type not in self.envelopes
                self.envelopes[envelope.tx.type] = envelope
                self.heights[envelope.tx.type] = height
        assert sorted(self.envelopes) == sorted(TRANSACTION_TYPES)
        assert self.states[-1].current_validators() != self.genesis_state.current_validators()

    @property
    def blocks(self) -> list[BuiltBlock]:
        return self.chain.blocks

    @property
    def final_state(self) -> State:
        return self.states[-1]

    def log_index(self, envelope: Envelope) -> int:
        ordered = [e for built in self.blocks for e in built.block.transactions]
        return ordered.index(envelope)


def _text(data: bytes) -> str:
    return data.decode("utf-8")


def _sorted_entries(state: State) -> dict[str, JSON]:
    return {name: state.entries[name] for name in sorted(state.entries)}


# --- the files -----------------------------------------------------------------------------


def keys_vectors(scenario: Scenario) -> dict[str, JSON]:
    chain = scenario.chain
    parties = []
    for name in NAMED_PARTIES:
        private = key(name)
        parties.append(
            {
                "name": name,
                "seed": private.seed.hex(),
                "public_key": private.public_key_hex,
                "account_id": private.account_id,
                "account_key_set_canonical": _text(
                    canonical({"keys": [private.public_key_hex], "threshold": 1})
                ),
            }
        )
    authority_keys = sorted(k.public_key_hex for k in chain.authority_keys)
    key_set = {"keys": authority_keys, "threshold": 2}
    account_id = compute_account_id(authority_keys, 2)
    assert account_id == chain.authority_id
    return {
        "description": (
            "Ed25519 test keys (RFC 8032). seed = sha256('tanlian-test/' + name), the 32-byte "
            "private key; public_key is its RFC 8032 public key; account_id = sha256("
            "'tanlian/account/v1\\n' + canonical({'keys': [public_key], 'threshold': 1})) for "
            "a single-key account (SPEC §2.2, §3.1). multi_key_account is the 2-of-3 registry "
            "authority: keys sorted ascending before hashing. Test keys only."
        ),
        "parties": parties,
        "multi_key_account": {
            "name": "authority (2-of-3)",
            "key_set": key_set,
            "canonical": _text(canonical(key_set)),
            "account_id": account_id,
        },
    }


def genesis_vectors(scenario: Scenario) -> dict[str, JSON]:
    chain = scenario.chain
    document = chain.genesis_document
    state = scenario.genesis_state
    assert state.entries == genesis_state(chain.genesis).entries
    return {
        "description": (
            "The genesis document (SPEC §5.1), its canonical bytes (RFC 8785, as a UTF-8 "
            "string), genesis_hash = sha256('tanlian/genesis/v1\\n' + canonical), the "
            "authority's account id, and the state before block 1 with its state_root."
        ),
        "document": document,
        "canonical": _text(canonical(document)),
        "genesis_hash": chain.genesis.genesis_hash(),
        "authority_id": chain.authority_id,
        "validators_hash": state.validators_hash(),
        "state": {"entries": _sorted_entries(state), "state_root": state.state_root},
    }


def transactions_vectors(scenario: Scenario) -> dict[str, JSON]:
    items = []
    for kind in TRANSACTION_TYPES:
        envelope = scenario.envelopes[kind]
        signing = envelope.tx.signing_bytes()
        items.append(
            {
                "type": kind,
                "height": scenario.heights[kind],
                "log_index": scenario.log_index(envelope),
                "envelope": envelope.to_json(),
                "tx_canonical": _text(canonical(envelope.tx.to_json())),
                "signing_bytes_hex": signing.hex(),
                "tx_id": envelope.tx_id,
                "leaf_input": _text(envelope.leaf),
                "leaf_hash": leaf_hash(envelope.leaf).hex(),
            }
        )
    return {
        "description": (
            "One accepted envelope of each of the twelve transaction types (SPEC §3), as "
            "committed in blocks.json (height, log_index). tx_canonical = canonical(tx); "
            "signing_bytes = 'tanlian/tx/v1\\n' + tx_canonical, which every Ed25519 signature "
            "covers; tx_id = sha256(signing_bytes); leaf_input = canonical(envelope), the RFC "
            "9162 leaf input; leaf_hash = sha256(0x00 + leaf_input). Authority transactions "
            "carry 2 of its 3 keys' signatures, sorted by public_key."
        ),
        "chain_id": scenario.chain.genesis.chain_id,
        "transactions": items,
    }


def blocks_vectors(scenario: Scenario) -> dict[str, JSON]:
    items = []
    for built, certificate in zip(scenario.blocks, scenario.certificates, strict=True):
        block, state = built.block, built.state
        header = block.header
        assert header.state_root == state.state_root
        items.append(
            {
                "height": header.height,
                "block": block.to_json(),
                "header_canonical": _text(canonical(header.to_json())),
                "block_hash": block.block_hash(),
                "certificate": certificate.to_json(),
                "certificate_canonical": _text(canonical(certificate.to_json())),
                "certificate_hash": certificate.certificate_hash(),
                "precommit_signing_bytes_hex": vote_bytes(
                    chain_id=certificate.chain_id,
                    vote_type="precommit",
                    height=certificate.height,
                    round=certificate.round,
                    block_hash=certificate.block_hash,
                ).hex(),
                "state_after": {
                    "log_size": state.log.size,
                    "log_root": state.log.root().hex(),
                    "state_root": state.state_root,
                    "validators_current": state.entries["validators/current"],
                    "validators_next": state.entries["validators/next"],
                },
            }
        )
    return {
        "description": (
            "The blocks that commit transactions.json, from genesis.json (SPEC §5.2, §5.3). "
            "block_hash = sha256('tanlian/block/v1\\n' + header_canonical); each block's "
            "certificate (signed precommits, more than 2/3 of the governing set's power) is "
            "carried by the next block as last_commit, bound by last_commit_hash = "
            "sha256('tanlian/certificate/v1\\n' + certificate_canonical). state_after is the "
            "state once the block is applied: log_size, log_root, state_root equal the header's. "
            "The set_validators at height 2 governs height 4 (the H+2 rule)."
        ),
        "genesis_hash": scenario.chain.genesis.genesis_hash(),
        "blocks": items,
    }


def inclusion_path(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 §2.1.3.1 over already-hashed leaves."""
    n = len(leaves)
    assert 0 <= index < n
    if n == 1:
        return []
    split = 1 << ((n - 1).bit_length() - 1)
    if index < split:
        return [*inclusion_path(leaves[:split], index), compute_root(leaves[split:])]
    return [*inclusion_path(leaves[split:], index - split), compute_root(leaves[:split])]


def consistency_path(leaves: Sequence[bytes], size1: int) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 9162 §2.1.4.1 over already-hashed leaves (0 < m <= n)."""

    def subproof(m: int, nodes: Sequence[bytes], complete: bool) -> list[bytes]:
        n = len(nodes)
        if m == n:
            return [] if complete else [compute_root(nodes)]
        split = 1 << ((n - 1).bit_length() - 1)
        if m <= split:
            return [*subproof(m, nodes[:split], complete), compute_root(nodes[split:])]
        return [*subproof(m - split, nodes[split:], False), compute_root(nodes[:split])]

    assert 0 < size1 <= len(leaves)
    return subproof(size1, leaves, True)


def merkle_vectors() -> dict[str, JSON]:
    reference = [bytes.fromhex(leaf) for leaf in REFERENCE_LEAVES_HEX]
    hashes = [leaf_hash(leaf) for leaf in reference]
    inclusion = [
        {
            "index": index,
            "size": size,
            "path": [node.hex() for node in inclusion_path(hashes[:size], index)],
        }
        for size in range(1, len(hashes) + 1)
        for index in range(size)
    ]
    consistency = [
        {
            "size1": size1,
            "size2": size2,
            "path": [node.hex() for node in consistency_path(hashes[:size2], size1)],
        }
        for size2 in range(1, len(hashes) + 1)
        for size1 in range(1, size2 + 1)
    ]
    sequential = []
    for size in SEQUENTIAL_SIZES:
        leaves = [bytes([i % 256]) for i in range(size)]
        sequential.append(
            {"size": size, "root": compute_root([leaf_hash(x) for x in leaves]).hex()}
        )
    return {
        "description": (
            "RFC 9162 §2.1 Merkle tree hashes (SPEC §6.1): leaf hash sha256(0x00 + input), node "
            "hash sha256(0x01 + left + right), empty tree sha256(''), split at the largest power "
            "of two below n. 'reference' uses Certificate Transparency's published leaf inputs "
            "(roots for every size 0..8, inclusion proofs for every leaf of every size, "
            "consistency proofs for every 1 <= size1 <= size2 <= 8, paths as in RFC 9162 "
            "§2.1.3.1 and §2.1.4.1). 'sequential' trees have leaf input i = the single byte "
            "i mod 256, for i in 0..size-1."
        ),
        "empty_root": EMPTY_ROOT.hex(),
        "node_hash_example": {
            "left": hashes[0].hex(),
            "right": hashes[1].hex(),
            "node": node_hash(hashes[0], hashes[1]).hex(),
        },
        "reference": {
            "leaf_inputs_hex": list(REFERENCE_LEAVES_HEX),
            "leaf_hashes": [h.hex() for h in hashes],
            "roots": [
                {"size": size, "root": compute_root(hashes[:size]).hex()}
                for size in range(len(hashes) + 1)
            ],
            "inclusion": inclusion,
            "consistency": consistency,
        },
        "sequential": sequential,
    }


def state_vectors(scenario: Scenario) -> dict[str, JSON]:
    state = scenario.final_state
    entries = _sorted_entries(state)
    leaves = {
        name: {
            "key_hash": key_hash(name).hex(),
            "value_hash": value_hash(value).hex(),
            "leaf_hash": compute_leaf_hash(key_hash(name), value_hash(value)).hex(),
        }
        for name, value in entries.items()
    }
    examples = []
    for count in range(len(STATE_TREE_EXAMPLE) + 1):
        items = STATE_TREE_EXAMPLE[:count]
        root = StateTree.from_items(items).root
        assert count or root == EMPTY_HASH
        examples.append(
            {
                "entries": [
                    {
                        "key": name,
                        "value": value,
                        "value_canonical": _text(canonical(value)),
                        "key_hash": key_hash(name).hex(),
                        "value_hash": value_hash(value).hex(),
                        "leaf_hash": compute_leaf_hash(key_hash(name), value_hash(value)).hex(),
                    }
                    for name, value in items
                ],
                "state_root": root.hex(),
            }
        )
    return {
        "description": (
            "The state after the last block of blocks.json (SPEC §4; shapes in docs/state.md) "
            "and its sparse Merkle root: path = sha256(key) most significant bit first, leaf = "
            "sha256(0x00 + sha256(key) + sha256(canonical(value))), node = sha256(0x01 + left + "
            "right), empty subtree = 32 zero bytes, a subtree with one leaf is that leaf. "
            "'examples' are standalone trees of 0, 1, 2 and 3 keys; the first two keys share "
            "their first 14 path bits."
        ),
        "height": state.height,
        "state_root": state.state_root,
        "entries": entries,
        "leaves": leaves,
        "examples": examples,
    }


def domains_vectors(scenario: Scenario) -> dict[str, JSON]:
    chain = scenario.chain
    first = scenario.blocks[0]
    certificate = scenario.certificates[0]
    register = scenario.envelopes["register_methodology"]
    samples: list[tuple[bytes, str, JSON]] = [
        (TX_DOMAIN, "a transaction: tx_id (register_methodology)", register.tx.to_json()),
        (BLOCK_DOMAIN, "a block header: block_hash (height 1)", first.block.header.to_json()),
        (
            VOTE_DOMAIN,
            "a vote body (precommit for height 1); validators sign tag + canonical",
            {
                "chain_id": certificate.chain_id,
                "type": "precommit",
                "height": certificate.height,
                "round": certificate.round,
                "block_hash": certificate.block_hash,
            },
        ),
        (
            PROPOSAL_DOMAIN,
            "a proposal body (height 1, round 0, valid_round -1); the proposer signs it",
            {
                "chain_id": certificate.chain_id,
                "height": 1,
                "round": 0,
                "valid_round": -1,
                "block_hash": first.block.block_hash(),
            },
        ),
        (CERTIFICATE_DOMAIN, "a commit certificate: last_commit_hash", certificate.to_json()),
        (
            VALIDATORS_DOMAIN,
            "a validator set sorted by public_key: validators_hash (genesis set)",
            chain.genesis_document["validators"],
        ),
        (GENESIS_DOMAIN, "the genesis document: genesis_hash", chain.genesis_document),
        (
            ACCOUNT_DOMAIN,
            "an account's first key set: account_id (the 2-of-3 authority)",
            {"keys": sorted(k.public_key_hex for k in chain.authority_keys), "threshold": 2},
        ),
        (EVIDENCE_DOMAIN, "a block's evidence list: evidence_hash (no evidence)", []),
    ]
    items = []
    for domain, hashes, value in samples:
        encoded = canonical(value)
        items.append(
            {
                "tag": domain.decode("ascii"),
                "tag_hex": domain.hex(),
                "hashes": hashes,
                "value": value,
                "canonical": _text(encoded),
                "hash": hashlib.sha256(domain + encoded).hexdigest(),
            }
        )
        assert hash_domain(domain, value).hex() == items[-1]["hash"]
    return {
        "description": (
            "Every domain tag of SPEC §2.2 (ASCII, ending in a newline) with one sample value, "
            "its canonical bytes (RFC 8785, as a UTF-8 string) and sha256(tag + canonical)."
        ),
        "domains": items,
    }


def _signed_proposal(signer: str, *, height: int, round: int, block_hash: str) -> SignedProposal:
    private = key(signer)
    signed = proposal_bytes(
        chain_id=CHAIN_ID, height=height, round=round, valid_round=NO_ROUND, block_hash=block_hash
    )
    return SignedProposal(
        chain_id=CHAIN_ID,
        height=height,
        round=round,
        valid_round=NO_ROUND,
        block_hash=block_hash,
        public_key=private.public_key_hex,
        signature=private.sign(signed).hex(),
    )


def _evidence_item(evidence: Evidence) -> dict[str, JSON]:
    return {
        "evidence": evidence.to_json(),
        "a_signed_bytes_hex": evidence.a.signed_bytes().hex(),
        "b_signed_bytes_hex": evidence.b.signed_bytes().hex(),
        "state_key": evidence.state_key(),
    }


def evidence_vectors(scenario: Scenario) -> dict[str, JSON]:
    """Block 5 on top of blocks.json, carrying evidence (built here, so that scenario's files
    stay as they are), and evidence that block 5 must refuse, with the rule."""
    chain, state = scenario.chain, scenario.final_state
    block_3, block_4 = (scenario.blocks[index].block.block_hash() for index in (2, 3))
    centre_votes = [
        sign_vote(key("validator-certification-centre"), chain_id=CHAIN_ID, vote_type="prevote",
                  height=4, round=0, block_hash=block_hash)
        for block_hash in (block_4, None)
    ]  # fmt: skip
    included = (
        # Four validators governed height 4: the certification centre prevoted twice.
        make_evidence(*centre_votes),
        # `city` alone governed height 3 and proposed two blocks in round 1.
        make_evidence(
            _signed_proposal("validator-city", height=3, round=1, block_hash=block_3),
            _signed_proposal("validator-city", height=3, round=1, block_hash=block_4),
        ),
    )
    built = build_block(
        state,
        [],
        time=chain.time + 1000,
        proposer=compute_proposer(state.current_validators(), state.height + 1, 0),
        last_commit=scenario.certificates[-1],
        evidence=included,
    )
    assert built.block.evidence == included and not built.evidence_left_out
    block = built.block
    certificate = chain.certify(built)
    energy_votes = [
        sign_vote(key("validator-energy-platform"), chain_id=CHAIN_ID, vote_type="precommit",
                  height=3, round=0, block_hash=block_hash)
        for block_hash in (block_3, None)
    ]  # fmt: skip
    in_order = make_evidence(*centre_votes)
    refused = []
    for why, piece in (
        (
            "the energy platform was not in the set that governed height 3",
            make_evidence(*energy_votes),
        ),
        (
            "the two votes in the wrong order (b's signed bytes sort first)",
            Evidence(evidence_type=in_order.evidence_type, a=in_order.b, b=in_order.a),
        ),
    ):
        attempt = build_block(
            state,
            [],
            time=chain.time + 1000,
            proposer=compute_proposer(state.current_validators(), state.height + 1, 0),
            last_commit=scenario.certificates[-1],
            evidence=(piece,),
        )
        ((_, error),) = attempt.evidence_left_out
        refused.append({"why": why, "evidence": piece.to_json(), "rule": error.rule})
    assert apply_block(state, block).state_root == built.state.state_root
    listed = [item.to_json() for item in included]
    return {
        "description": (
            "Evidence of equivocation in a block (SPEC §2.2, §5.2, §5.4). Block 5 follows "
            "block 4 of blocks.json and carries two pieces: a duplicate_vote (a and b signed "
            "by one validator for one height, round and type, a's signed bytes sorting first) "
            "verified against the set that governed its height (4), and a duplicate_proposal "
            "of height 3, which the genesis set governed. evidence_hash = "
            "sha256('tanlian/evidence/v1\\n' + evidence_canonical), the block's evidence list "
            "in its order. Each piece is recorded in the state under "
            "evidence/<validator>/<height> (docs/state.md); state_after lists those entries "
            "and the root. 'refused' holds evidence block 5 may not carry, with its rule."
        ),
        "height": block.height,
        "block": block.to_json(),
        "header_canonical": _text(canonical(block.header.to_json())),
        "block_hash": block.block_hash(),
        "certificate": certificate.to_json(),
        "evidence": [_evidence_item(item) for item in included],
        "evidence_canonical": _text(canonical(listed)),
        "evidence_hash": block.header.evidence_hash,
        "state_after": {
            "entries": {
                item.state_key(): built.state.entries[item.state_key()] for item in included
            },
            "state_root": built.state.state_root,
        },
        "refused": refused,
    }


def compute_vectors() -> dict[str, dict[str, JSON]]:
    """Every vector file's content, by file name."""
    scenario = Scenario()
    return {
        "keys.json": keys_vectors(scenario),
        "genesis.json": genesis_vectors(scenario),
        "transactions.json": transactions_vectors(scenario),
        "blocks.json": blocks_vectors(scenario),
        "merkle.json": merkle_vectors(),
        "state.json": state_vectors(scenario),
        "domains.json": domains_vectors(scenario),
        "evidence.json": evidence_vectors(scenario),
    }


def render(value: JSON) -> str:
    """Pretty-printed JSON, UTF-8 as is, keys in the order written, newline at the end."""
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def render_all() -> dict[str, str]:
    return {name: render(value) for name, value in compute_vectors().items()}


def main() -> int:
    for name, text in render_all().items():
        path = VECTORS_DIR / name
        path.write_bytes(text.encode("utf-8"))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
