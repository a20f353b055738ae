"""Golden vectors (tests/vectors): recomputed from the library, then checked independently.

First every file must be exactly what `tests.vectors.generate` produces from the library today,
so a change to any encoding, hash or state shape fails here until the vectors are regenerated
on purpose. Then the stored values are checked without the library's own code paths: canonical
JSON through the `rfc8785` package, hashes through hashlib on the stored bytes, signatures
through `cryptography` (OpenSSL; the ledger signs and verifies with libsodium), both Merkle
trees through the small reference implementations below, and the blocks by replaying them with
`apply_block` from the stored genesis.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import pytest
import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ledger.blocks import parse_block, verify_certificate
from ledger.encoding import canonical
from ledger.errors import InvalidBlockError, InvalidProofError
from ledger.genesis import genesis_state, parse_genesis
from ledger.merkle import verify_consistency, verify_inclusion
from ledger.state_transition import apply_block
from ledger.transactions import TRANSACTION_TYPES
from ledger.verification import audit_chain
from tests.vectors import generate

VECTORS: Final = Path(__file__).resolve().parents[1] / "vectors"
FILES: Final = (
    "keys.json",
    "genesis.json",
    "transactions.json",
    "blocks.json",
    "merkle.json",
    "state.json",
    "domains.json",
    "evidence.json",
)
# SPEC §2.2, copied by hand: the vectors must carry exactly these tags.
SPEC_DOMAINS: Final = (
    "tanlian/tx/v1\n",
    "tanlian/block/v1\n",
    "tanlian/vote/v1\n",
    "tanlian/proposal/v1\n",
    "tanlian/certificate/v1\n",
    "tanlian/validators/v1\n",
    "tanlian/genesis/v1\n",
    "tanlian/account/v1\n",
    "tanlian/evidence/v1\n",
)
TX_TAG: Final = b"tanlian/tx/v1\n"
BLOCK_TAG: Final = b"tanlian/block/v1\n"
VOTE_TAG: Final = b"tanlian/vote/v1\n"
PROPOSAL_TAG: Final = b"tanlian/proposal/v1\n"
CERTIFICATE_TAG: Final = b"tanlian/certificate/v1\n"
VALIDATORS_TAG: Final = b"tanlian/validators/v1\n"
GENESIS_TAG: Final = b"tanlian/genesis/v1\n"
ACCOUNT_TAG: Final = b"tanlian/account/v1\n"
EVIDENCE_TAG: Final = b"tanlian/evidence/v1\n"
# Roots published with Certificate Transparency's RFC 6962 test data (transparency-dev/merkle,
# testonly/constants.go) for the reference leaves, sizes 0..8, and two of its proofs.
PUBLISHED_ROOTS: Final = (
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)
PUBLISHED_INCLUSION_0_OF_8: Final = [
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
]
PUBLISHED_CONSISTENCY_2_TO_8: Final = [
    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
]
TRANSACTION_BYTES_MAX: Final = 16384


def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


# --- independent references -------------------------------------------------------------------


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def jcs(value: Any) -> bytes:
    """RFC 8785 by the `rfc8785` package, not by ledger.encoding."""
    result: bytes = rfc8785.dumps(value)
    return result


def check_ed25519(public_key_hex: str, signature_hex: str, message: bytes) -> None:
    """Raises `InvalidSignature` unless the signature verifies (OpenSSL via cryptography)."""
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex))
    key.verify(bytes.fromhex(signature_hex), message)


def mth(leaf_inputs: Sequence[bytes]) -> bytes:
    """MTH(D[n]), RFC 9162 §2.1.1, straight from the definition."""
    n = len(leaf_inputs)
    if n == 0:
        return sha256(b"")
    if n == 1:
        return sha256(b"\x00" + leaf_inputs[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return sha256(b"\x01" + mth(leaf_inputs[:k]) + mth(leaf_inputs[k:]))


def smt_leaf(key: str, value: Any) -> tuple[bytes, bytes]:
    path = sha256(key.encode("utf-8"))
    return path, sha256(b"\x00" + path + sha256(jcs(value)))


def smt_root(leaves: dict[bytes, bytes], depth: int = 0) -> bytes:
    """The SPEC §4 sparse Merkle root over {sha256(key): leaf hash}, by recursion on bits."""
    if not leaves:
        return bytes(32)
    if len(leaves) == 1:
        return next(iter(leaves.values()))
    assert depth < 256

    def bit(path: bytes) -> int:
        return (path[depth // 8] >> (7 - depth % 8)) & 1

    left = {path: leaf for path, leaf in leaves.items() if bit(path) == 0}
    right = {path: leaf for path, leaf in leaves.items() if bit(path) == 1}
    return sha256(b"\x01" + smt_root(left, depth + 1) + smt_root(right, depth + 1))


def state_root_of(entries: dict[str, Any]) -> str:
    return smt_root(dict(smt_leaf(key, value) for key, value in entries.items())).hex()


def validators_hash_of(validators: list[dict[str, Any]]) -> str:
    ordered = sorted(validators, key=lambda v: str(v["public_key"]))
    return sha256(VALIDATORS_TAG + jcs(ordered)).hex()


# --- (a) every file is what the library produces today -----------------------------------------


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return generate.render_all()


@pytest.mark.parametrize("name", FILES)
def test_stored_file_is_what_the_library_produces(name: str, rendered: dict[str, str]) -> None:
    stored = (VECTORS / name).read_bytes()
    assert stored == rendered[name].encode("utf-8"), (
        f"{name} differs from the library's output: if the change is intended, run "
        "`.venv/bin/python -m tests.vectors.generate` and review the diff"
    )


def test_generation_is_deterministic_and_complete(rendered: dict[str, str]) -> None:
    assert generate.render_all() == rendered
    assert sorted(rendered) == sorted(FILES)
    assert sorted(path.name for path in VECTORS.glob("*.json")) == sorted(FILES)
    for name in FILES:
        assert load(name)["description"]


# --- (b) independent checks ---------------------------------------------------------------------


def test_keys_derive_from_their_seeds_and_ids_from_their_key_sets() -> None:
    vectors = load("keys.json")
    assert len(vectors["parties"]) == len(generate.NAMED_PARTIES)
    for party in vectors["parties"]:
        seed = bytes.fromhex(party["seed"])
        assert seed == sha256(f"tanlian-test/{party['name']}".encode())
        public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
        assert public.hex() == party["public_key"]
        key_set = jcs({"keys": [party["public_key"]], "threshold": 1})
        assert key_set == party["account_key_set_canonical"].encode("utf-8")
        assert sha256(ACCOUNT_TAG + key_set).hex() == party["account_id"]
    multi = vectors["multi_key_account"]
    assert multi["key_set"]["keys"] == sorted(multi["key_set"]["keys"])
    assert len(multi["key_set"]["keys"]) == 3
    assert multi["key_set"]["threshold"] == 2
    assert jcs(multi["key_set"]) == multi["canonical"].encode("utf-8")
    assert sha256(ACCOUNT_TAG + multi["canonical"].encode("utf-8")).hex() == multi["account_id"]
    by_name = {party["name"]: party["public_key"] for party in vectors["parties"]}
    assert multi["key_set"]["keys"] == sorted(by_name[f"authority-{i}"] for i in range(3))


def test_genesis_bytes_hash_and_state() -> None:
    vectors = load("genesis.json")
    canonical = vectors["canonical"].encode("utf-8")
    assert jcs(vectors["document"]) == canonical
    assert sha256(GENESIS_TAG + canonical).hex() == vectors["genesis_hash"]
    assert vectors["authority_id"] == load("keys.json")["multi_key_account"]["account_id"]
    document = vectors["document"]
    assert validators_hash_of(document["validators"]) == vectors["validators_hash"]
    entries = vectors["state"]["entries"]
    # What SPEC §5.1 says the genesis state holds, and nothing else.
    expected_keys = {
        f"account/{vectors['authority_id']}",
        "validators/current",
        "validators/next",
        *(f"methodology/{m['methodology_id']}" for m in document["methodologies"]),
    }
    assert set(entries) == expected_keys
    assert entries["validators/current"] == entries["validators/next"] == document["validators"]
    assert entries[f"account/{vectors['authority_id']}"]["keys"] == document["authority"]["keys"]
    assert state_root_of(entries) == vectors["state"]["state_root"]


def test_every_transaction_type_once_with_its_bytes_ids_and_signatures() -> None:
    vectors = load("transactions.json")
    items = vectors["transactions"]
    assert sorted(item["type"] for item in items) == sorted(TRANSACTION_TYPES)
    assert len(items) == 12
    keys = load("keys.json")
    single_key_ids = {party["account_id"]: party["public_key"] for party in keys["parties"]}
    authority = keys["multi_key_account"]
    for item in items:
        envelope, tx = item["envelope"], item["envelope"]["tx"]
        assert tx["type"] == item["type"]
        assert tx["chain_id"] == vectors["chain_id"]
        tx_bytes = item["tx_canonical"].encode("utf-8")
        assert jcs(tx) == tx_bytes
        signing = bytes.fromhex(item["signing_bytes_hex"])
        assert signing == TX_TAG + tx_bytes
        assert sha256(signing).hex() == item["tx_id"]
        leaf = item["leaf_input"].encode("utf-8")
        assert jcs(envelope) == leaf
        assert sha256(b"\x00" + leaf).hex() == item["leaf_hash"]
        signers = [signature["public_key"] for signature in envelope["signatures"]]
        assert signers == sorted(set(signers))
        for signature in envelope["signatures"]:
            check_ed25519(signature["public_key"], signature["signature"], signing)
            with pytest.raises(InvalidSignature):
                check_ed25519(signature["public_key"], signature["signature"], signing + b" ")
        if tx["signer"] == authority["account_id"]:
            assert len(signers) == authority["key_set"]["threshold"]
            assert set(signers) <= set(authority["key_set"]["keys"])
        else:
            assert signers == [single_key_ids[tx["signer"]]]


def test_blocks_link_certify_and_log_independently() -> None:
    genesis = load("genesis.json")
    blocks = load("blocks.json")["blocks"]
    transactions = load("transactions.json")["transactions"]
    assert [block["height"] for block in blocks] == [1, 2, 3, 4]
    parent_hash, previous_certificate = genesis["genesis_hash"], None
    # The H+2 rule, worked out here: a set chosen at height H governs from H+2 (genesis: -1).
    governing = {-1: genesis["document"]["validators"]}

    def set_at(height: int) -> Any:
        return governing[max(chosen for chosen in governing if chosen + 2 <= height)]

    leaves: list[bytes] = []
    for vector in blocks:
        block, height = vector["block"], vector["height"]
        header = block["header"]
        header_bytes = vector["header_canonical"].encode("utf-8")
        assert jcs(header) == header_bytes
        assert sha256(BLOCK_TAG + header_bytes).hex() == vector["block_hash"]
        assert header["height"] == height
        assert header["parent_hash"] == parent_hash
        if previous_certificate is None:
            assert block["last_commit"] is None
            assert header["last_commit_hash"] == "0" * 64
        else:
            assert block["last_commit"] == previous_certificate
            certificate_bytes = jcs(previous_certificate)
            assert header["last_commit_hash"] == sha256(CERTIFICATE_TAG + certificate_bytes).hex()
        assert header["evidence_hash"] == sha256(EVIDENCE_TAG + jcs(block["evidence"])).hex()
        validators = set_at(height)
        assert header["validators_hash"] == validators_hash_of(validators)
        assert header["next_validators_hash"] == validators_hash_of(set_at(height + 1))
        assert header["proposer"] in {v["public_key"] for v in validators}

        # The certificate: precommits over the vote bytes, > 2/3 of the governing power.
        certificate = vector["certificate"]
        certificate_bytes = vector["certificate_canonical"].encode("utf-8")
        assert jcs(certificate) == certificate_bytes
        assert sha256(CERTIFICATE_TAG + certificate_bytes).hex() == vector["certificate_hash"]
        assert certificate["block_hash"] == vector["block_hash"]
        assert certificate["height"] == height
        vote = {
            "chain_id": header["chain_id"],
            "type": "precommit",
            "height": height,
            "round": certificate["round"],
            "block_hash": vector["block_hash"],
        }
        assert bytes.fromhex(vector["precommit_signing_bytes_hex"]) == VOTE_TAG + jcs(vote)
        powers = {v["public_key"]: v["power"] for v in validators}
        signed = 0
        keys = [signature["public_key"] for signature in certificate["signatures"]]
        assert keys == sorted(set(keys))
        for signature in certificate["signatures"]:
            check_ed25519(signature["public_key"], signature["signature"], VOTE_TAG + jcs(vote))
            signed += powers[signature["public_key"]]
        assert 3 * signed > 2 * sum(powers.values())

        # The transaction log over every envelope so far, and the block's place in it.
        for envelope in block["transactions"]:
            leaves.append(jcs(envelope))
            if envelope["tx"]["type"] == "set_validators":
                governing[height] = envelope["tx"]["payload"]["validators"]
        after = vector["state_after"]
        assert header["log_size"] == after["log_size"] == len(leaves)
        assert header["log_root"] == after["log_root"] == mth(leaves).hex()
        assert header["state_root"] == after["state_root"]
        assert validators_hash_of(after["validators_current"]) == validators_hash_of(
            set_at(height + 1)
        )
        assert validators_hash_of(after["validators_next"]) == validators_hash_of(
            set_at(height + 2)
        )
        parent_hash, previous_certificate = vector["block_hash"], certificate
    # Block 4 is the first one governed by the set chosen at height 2, and it has 4 validators.
    assert (
        blocks[3]["block"]["header"]["validators_hash"]
        != blocks[2]["block"]["header"]["validators_hash"]
    )
    assert len(blocks[3]["certificate"]["signatures"]) == 4
    # transactions.json holds exactly the committed envelopes, at their heights and indexes.
    committed = [
        (vector["height"], envelope)
        for vector in blocks
        for envelope in vector["block"]["transactions"]
    ]
    assert len(committed) == len(transactions)
    for item in transactions:
        assert committed[item["log_index"]] == (item["height"], item["envelope"])
        assert leaves[item["log_index"]] == item["leaf_input"].encode("utf-8")


def test_replaying_the_stored_blocks_from_the_stored_genesis_reaches_the_stored_state() -> None:
    genesis = parse_genesis(load("genesis.json")["document"])
    state = genesis_state(genesis)
    assert state.state_root == load("genesis.json")["state"]["state_root"]
    blocks = load("blocks.json")["blocks"]
    governing = state.current_validators()
    for vector in blocks:
        block = parse_block(vector["block"], transaction_bytes_max=TRANSACTION_BYTES_MAX)
        assert block.block_hash() == vector["block_hash"]
        state = apply_block(state, block)
        assert state.height == vector["height"]
        assert state.log.size == vector["state_after"]["log_size"]
        assert state.log.root().hex() == vector["state_after"]["log_root"]
        assert state.state_root == vector["state_after"]["state_root"]
        certificate = parse_block(
            {**vector["block"], "last_commit": vector["certificate"]},
            transaction_bytes_max=TRANSACTION_BYTES_MAX,
        ).last_commit
        assert certificate is not None
        assert certificate.certificate_hash() == vector["certificate_hash"]
        verify_certificate(
            certificate,
            chain_id=genesis.chain_id,
            height=vector["height"],
            block_hash=vector["block_hash"],
            validators=governing,
        )
        governing = state.current_validators()
    final = load("state.json")
    assert state.state_root == final["state_root"]
    assert dict(state.entries) == final["entries"]


def test_the_stored_chain_passes_the_audit_with_block_5() -> None:
    """Blocks 1-4 and evidence.json's block 5, as an export, pass every check of `verify
    chain`, the header's proposer against the turns included (a review found block 5 named
    the city in the energy platform's turn, which `apply_block` alone does not check)."""
    genesis = parse_genesis(load("genesis.json")["document"])
    vectors = [*load("blocks.json")["blocks"], load("evidence.json")]
    lines = [canonical(load("genesis.json")["document"])]
    for vector in vectors:
        lines.append(canonical({"block": vector["block"], "certificate": vector["certificate"]}))
    report = audit_chain(genesis, lines)
    assert report.height == 5 and report.head_hash == vectors[-1]["block_hash"]


def _replayed_to_block_4() -> Any:
    state = genesis_state(parse_genesis(load("genesis.json")["document"]))
    for vector in load("blocks.json")["blocks"]:
        block = parse_block(vector["block"], transaction_bytes_max=TRANSACTION_BYTES_MAX)
        state = apply_block(state, block)
    return state


def test_evidence_bytes_hash_signatures_and_records_independently() -> None:
    vectors = load("evidence.json")
    block = vectors["block"]
    header = block["header"]
    assert vectors["height"] == header["height"] == 5
    assert sha256(BLOCK_TAG + jcs(header)).hex() == vectors["block_hash"]
    assert jcs(header) == vectors["header_canonical"].encode("utf-8")
    listed = [item["evidence"] for item in vectors["evidence"]]
    assert block["evidence"] == listed and len(listed) == 2
    assert jcs(listed) == vectors["evidence_canonical"].encode("utf-8")
    assert sha256(EVIDENCE_TAG + jcs(listed)).hex() == vectors["evidence_hash"]
    assert header["evidence_hash"] == vectors["evidence_hash"]
    # Who governed which height: the genesis set up to 3, the four from 4 (blocks.json).
    blocks = load("blocks.json")["blocks"]
    genesis_set = load("genesis.json")["document"]["validators"]
    four = blocks[1]["block"]["transactions"][1]["tx"]["payload"]["validators"]
    governing = {3: genesis_set, 4: four}
    for height, validators in governing.items():
        assert blocks[height - 1]["block"]["header"]["validators_hash"] == validators_hash_of(
            validators
        )
    for item in vectors["evidence"]:
        evidence, signed = item["evidence"], []
        for half in ("a", "b"):
            message = dict(evidence[half])
            public_key, signature = message.pop("public_key"), message.pop("signature")
            if evidence["type"] == "duplicate_vote":
                body = VOTE_TAG + jcs(message)
            else:
                message["valid_round"] = (
                    -1 if message["valid_round"] is None else message["valid_round"]
                )
                body = PROPOSAL_TAG + jcs(message)
            assert body == bytes.fromhex(item[f"{half}_signed_bytes_hex"])
            check_ed25519(public_key, signature, body)
            signed.append((public_key, message, body))
        (key_a, a, bytes_a), (key_b, b, bytes_b) = signed
        assert key_a == key_b and bytes_a < bytes_b
        slot = (
            ("type", "height", "round")
            if evidence["type"] == "duplicate_vote"
            else ("height", "round")
        )
        assert [a[name] for name in slot] == [b[name] for name in slot]
        assert key_a in {v["public_key"] for v in governing[a["height"]]}
        assert item["state_key"] == f"evidence/{key_a}/{a['height']}"
        assert vectors["state_after"]["entries"][item["state_key"]] == {
            "validator": key_a,
            "height": a["height"],
            "round": a["round"],
            "evidence": evidence,
            "recorded_height": 5,
        }
    # Replayed from the genesis: block 5 applies and adds exactly the evidence records.
    before = _replayed_to_block_4()
    after = apply_block(before, parse_block(block, transaction_bytes_max=TRANSACTION_BYTES_MAX))
    added = {k: v for k, v in after.entries.items() if k not in before.entries}
    assert added == vectors["state_after"]["entries"]
    assert after.state_root == header["state_root"] == vectors["state_after"]["state_root"]
    assert state_root_of(dict(after.entries)) == header["state_root"]


def test_refused_evidence_is_refused_with_its_rule() -> None:
    vectors = load("evidence.json")
    before = _replayed_to_block_4()
    assert [item["rule"] for item in vectors["refused"]] == [
        "evidence_not_validator",
        "evidence_order",
    ]
    for item in vectors["refused"]:
        header = {
            **vectors["block"]["header"],
            "evidence_hash": sha256(EVIDENCE_TAG + jcs([item["evidence"]])).hex(),
        }
        value = {**vectors["block"], "header": header, "evidence": [item["evidence"]]}
        block = parse_block(value, transaction_bytes_max=TRANSACTION_BYTES_MAX)
        with pytest.raises(InvalidBlockError) as caught:
            apply_block(before, block)
        assert caught.value.rule == item["rule"]


def test_a_tampered_stored_block_does_not_replay() -> None:
    genesis = parse_genesis(load("genesis.json")["document"])
    vector = load("blocks.json")["blocks"][0]
    transfer = next(
        envelope
        for envelope in vector["block"]["transactions"]
        if envelope["tx"]["type"] == "transfer"
    )
    transfer["tx"]["payload"]["quantity"] += 1
    block = parse_block(vector["block"], transaction_bytes_max=TRANSACTION_BYTES_MAX)
    with pytest.raises(InvalidBlockError) as caught:
        apply_block(genesis_state(genesis), block)
    assert caught.value.rule == "bad_signature"


def test_merkle_roots_match_the_published_and_reference_values() -> None:
    vectors = load("merkle.json")
    assert vectors["empty_root"] == sha256(b"").hex() == PUBLISHED_ROOTS[0]
    example = vectors["node_hash_example"]
    assert (
        sha256(b"\x01" + bytes.fromhex(example["left"]) + bytes.fromhex(example["right"])).hex()
        == example["node"]
    )
    reference = vectors["reference"]
    inputs = [bytes.fromhex(leaf) for leaf in reference["leaf_inputs_hex"]]
    assert inputs[0] == b""
    assert reference["leaf_hashes"] == [sha256(b"\x00" + leaf).hex() for leaf in inputs]
    assert [root["size"] for root in reference["roots"]] == list(range(9))
    for root in reference["roots"]:
        assert root["root"] == mth(inputs[: root["size"]]).hex() == PUBLISHED_ROOTS[root["size"]]
    sizes = [tree["size"] for tree in vectors["sequential"]]
    assert sizes == [*range(9), 1000]
    for tree in vectors["sequential"]:
        assert tree["root"] == mth([bytes([i % 256]) for i in range(tree["size"])]).hex()


def test_merkle_proofs_verify_and_tampered_ones_do_not() -> None:
    reference = load("merkle.json")["reference"]
    hashes = [bytes.fromhex(h) for h in reference["leaf_hashes"]]
    roots = [bytes.fromhex(root["root"]) for root in reference["roots"]]
    inclusion = {(p["index"], p["size"]): p["path"] for p in reference["inclusion"]}
    assert len(inclusion) == 36
    assert inclusion[(0, 8)] == PUBLISHED_INCLUSION_0_OF_8
    for (index, size), path in inclusion.items():
        nodes = [bytes.fromhex(node) for node in path]
        verify_inclusion(
            leaf_hash=hashes[index], index=index, size=size, path=nodes, root=roots[size]
        )
        if size > 1:
            with pytest.raises(InvalidProofError):
                verify_inclusion(
                    leaf_hash=hashes[index],
                    index=(index + 1) % size,
                    size=size,
                    path=nodes,
                    root=roots[size],
                )
    consistency = {(p["size1"], p["size2"]): p["path"] for p in reference["consistency"]}
    assert len(consistency) == 36
    assert consistency[(2, 8)] == PUBLISHED_CONSISTENCY_2_TO_8
    for (size1, size2), path in consistency.items():
        nodes = [bytes.fromhex(node) for node in path]
        assert (size1 == size2) == (not nodes)
        verify_consistency(
            size1=size1, size2=size2, path=nodes, root1=roots[size1], root2=roots[size2]
        )
        if nodes:
            with pytest.raises(InvalidProofError):
                verify_consistency(
                    size1=size1,
                    size2=size2,
                    path=nodes,
                    root1=roots[size1],
                    root2=roots[size2 - 1],
                )


def test_state_root_and_leaves_from_the_definition() -> None:
    vectors = load("state.json")
    entries = vectors["entries"]
    assert vectors["height"] == load("blocks.json")["blocks"][-1]["height"]
    assert vectors["state_root"] == load("blocks.json")["blocks"][-1]["state_after"]["state_root"]
    assert state_root_of(entries) == vectors["state_root"]
    assert sorted(vectors["leaves"]) == sorted(entries)
    for key, value in entries.items():
        path, leaf = smt_leaf(key, value)
        stored = vectors["leaves"][key]
        assert stored["key_hash"] == path.hex()
        assert stored["value_hash"] == sha256(jcs(value)).hex()
        assert stored["leaf_hash"] == leaf.hex()
    # Every key family of SPEC §4 that this chain produces is present.
    families = {key.split("/")[0] for key in entries}
    assert families == {
        "account",
        "methodology",
        "certifier",
        "program",
        "batch",
        "lot",
        "retirement",
        "issuance",
        "validators",
    }


def test_state_tree_examples_from_the_definition() -> None:
    examples = load("state.json")["examples"]
    assert [len(example["entries"]) for example in examples] == [0, 1, 2, 3]
    assert examples[0]["state_root"] == "0" * 64
    assert examples[1]["state_root"] == examples[1]["entries"][0]["leaf_hash"]
    for example in examples:
        leaves: dict[bytes, bytes] = {}
        for entry in example["entries"]:
            assert jcs(entry["value"]) == entry["value_canonical"].encode("utf-8")
            path, leaf = smt_leaf(entry["key"], entry["value"])
            assert entry["key_hash"] == path.hex()
            assert entry["value_hash"] == sha256(entry["value_canonical"].encode("utf-8")).hex()
            assert entry["leaf_hash"] == leaf.hex()
            leaves[path] = leaf
        assert smt_root(leaves).hex() == example["state_root"]
    # The two-key tree climbs the levels its two paths share: not a plain node of two leaves.
    first, second = (bytes.fromhex(entry["leaf_hash"]) for entry in examples[2]["entries"])
    assert examples[2]["state_root"] not in {
        sha256(b"\x01" + first + second).hex(),
        sha256(b"\x01" + second + first).hex(),
    }


def test_domain_tags_and_hashes() -> None:
    domains = load("domains.json")["domains"]
    assert tuple(item["tag"] for item in domains) == SPEC_DOMAINS
    for item in domains:
        tag = item["tag"].encode("ascii")
        assert item["tag_hex"] == tag.hex()
        canonical = item["canonical"].encode("utf-8")
        assert jcs(item["value"]) == canonical
        assert sha256(tag + canonical).hex() == item["hash"]
    by_tag = {item["tag"]: item for item in domains}
    genesis = load("genesis.json")
    first_block = load("blocks.json")["blocks"][0]
    register = next(
        item
        for item in load("transactions.json")["transactions"]
        if item["type"] == "register_methodology"
    )
    assert by_tag["tanlian/tx/v1\n"]["hash"] == register["tx_id"]
    assert by_tag["tanlian/block/v1\n"]["hash"] == first_block["block_hash"]
    assert by_tag["tanlian/certificate/v1\n"]["hash"] == first_block["certificate_hash"]
    assert by_tag["tanlian/validators/v1\n"]["hash"] == genesis["validators_hash"]
    assert by_tag["tanlian/genesis/v1\n"]["hash"] == genesis["genesis_hash"]
    assert by_tag["tanlian/account/v1\n"]["hash"] == genesis["authority_id"]
    assert (
        by_tag["tanlian/evidence/v1\n"]["hash"] == first_block["block"]["header"]["evidence_hash"]
    )
    vote = by_tag["tanlian/vote/v1\n"]
    assert (
        vote["tag_hex"] + vote["canonical"].encode("utf-8").hex()
        == first_block["precommit_signing_bytes_hex"]
    )
    assert by_tag["tanlian/proposal/v1\n"]["value"]["valid_round"] == -1
    assert by_tag["tanlian/validators/v1\n"]["value"] == genesis["document"]["validators"]
