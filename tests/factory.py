"""Builders for tests: deterministic keys, a genesis, signed transactions and blocks.

    chain = Chain()                                  # authority 2-of-3, one validator
    chain.commit(chain.accredit(chain.certifier))    # build, certify and apply a block
    envelope = chain.tx(chain.alice, "transfer", {...})

Every key is derived from a name, so runs are reproducible and golden vectors are stable.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ledger.blocks import Certificate, Validator, sign_certificate
from ledger.crypto import PrivateKey
from ledger.evidence import Evidence
from ledger.genesis import Genesis, genesis_state, make_genesis_document, parse_genesis
from ledger.proposer import compute_proposer
from ledger.state import State
from ledger.state_transition import OWN_RULES, BuiltBlock, ProposerRules, apply_block, build_block
from ledger.store import Store
from ledger.transactions import Envelope, Transaction, sign_transaction

CHAIN_ID = "zibo-test"
GENESIS_TIME = 1_767_225_600_000  # 2026-01-01T00:00:00Z
FAR_FUTURE = 4_102_444_800_000  # 2100-01-01
METHODOLOGIES = [
    {
        "methodology_id": "household-electricity",
        "name": "Household electricity saving",
        "document_sha256": hashlib.sha256(b"household-electricity v1").hexdigest(),
    },
    {
        "methodology_id": "rooftop-solar",
        "name": "Rooftop solar generation",
        "document_sha256": hashlib.sha256(b"rooftop-solar v1").hexdigest(),
    },
]


def key(name: str) -> PrivateKey:
    """A private key derived from `name` (tests only: never derive real keys like this)."""
    return PrivateKey(seed=hashlib.sha256(f"tanlian-test/{name}".encode()).digest())


class Chain:
    """A single-validator chain in memory, with named parties and nonce bookkeeping."""

    def __init__(
        self, *, block_transactions_max: int = 5000, block_interval_ms: int = 1000
    ) -> None:
        self.authority_keys = [key(f"authority-{i}") for i in range(3)]
        self.validator = key("validator-city")
        # Keys that certify blocks: those of the governing set this chain knows (a
        # set_validators may bring in more with `validator_keys`).
        self.validator_keys = {self.validator.public_key_hex: self.validator}
        self.certifier = key("certifier")
        self.alice = key("alice")
        self.bob = key("bob")
        self.carol = key("carol")
        document = make_genesis_document(
            chain_id=CHAIN_ID,
            genesis_time=GENESIS_TIME,
            authority_name="Zibo registry authority",
            authority_keys=[k.public_key_hex for k in self.authority_keys],
            authority_threshold=2,
            validators=[Validator(public_key=self.validator.public_key_hex, power=1, name="city")],
            methodologies=METHODOLOGIES,
            block_transactions_max=block_transactions_max,
            block_interval_ms=block_interval_ms,
        )
        self.genesis_document = document
        self.genesis: Genesis = parse_genesis(document)
        self.authority_id = self.genesis.authority_id
        self.state: State = genesis_state(self.genesis)
        self.time = GENESIS_TIME
        self.nonces: dict[str, int] = {}
        self.last_certificate: Certificate | None = None
        # The proposer's own rules `build` applies; VALIDITY_ONLY builds the blocks another
        # implementation's proposer could (docs/decisions/0004).
        self.rules: ProposerRules = OWN_RULES
        self.blocks: list[BuiltBlock] = []

    def next_nonce(self, signer: str) -> int:
        self.nonces[signer] = self.nonces.get(signer, 0) + 1
        return self.nonces[signer]

    def tx(
        self,
        keys: PrivateKey | list[PrivateKey],
        kind: str,
        payload: dict[str, Any],
        *,
        signer: str | None = None,
        nonce: int | None = None,
        chain_id: str = CHAIN_ID,
    ) -> Envelope:
        """A signed envelope; the signer defaults to the single key's account."""
        key_list = keys if isinstance(keys, list) else [keys]
        signer = signer or key_list[0].account_id
        transaction = Transaction(
            chain_id=chain_id,
            type=kind,
            signer=signer,
            nonce=self.next_nonce(signer) if nonce is None else nonce,
            payload=payload,
        )
        return sign_transaction(transaction, key_list)

    def authority_tx(self, kind: str, payload: dict[str, Any]) -> Envelope:
        return self.tx(self.authority_keys[:2], kind, payload, signer=self.authority_id)

    def set_validators(self, members: list[PrivateKey], name: str = "validator") -> Envelope:
        """The authority's `set_validators` of `members`, power 1 each, named `name i`; their
        keys are kept to certify the heights they will govern."""
        self.validator_keys.update({k.public_key_hex: k for k in members})
        validators = [
            {"public_key": k.public_key_hex, "power": 1, "name": f"{name} {i}"}
            for i, k in enumerate(members)
        ]
        return self.authority_tx("set_validators", {"validators": validators})

    def build(
        self,
        envelopes: list[Envelope],
        *,
        advance_ms: int = 1000,
        evidence: tuple[Evidence, ...] = (),
    ) -> BuiltBlock:
        self.time += advance_ms
        return build_block(
            self.state,
            envelopes,
            time=self.time,
            # the proposer of round 0, which `certify` signs for: the header names it
            proposer=compute_proposer(self.state.current_validators(), self.state.height + 1, 0),
            last_commit=self.last_certificate,
            evidence=evidence,
            rules=self.rules,
        )

    def certify(self, built: BuiltBlock) -> Certificate:
        """Precommits of every validator of the set that governed the block whose key this
        chain holds."""
        governing = built.state.last_validators
        return sign_certificate(
            chain_id=CHAIN_ID,
            height=built.block.height,
            round=0,
            block_hash=built.block.block_hash(),
            keys=[
                self.validator_keys[v.public_key]
                for v in governing
                if v.public_key in self.validator_keys
            ],
        )

    def commit(
        self, *envelopes: Envelope, advance_ms: int = 1000, evidence: tuple[Evidence, ...] = ()
    ) -> BuiltBlock:
        """Build a block from `envelopes` (and `evidence`), replay it with `apply_block`, and
        adopt it.

        Rejected transactions do not consume their nonce: the bookkeeping is rolled back.
        """
        built = self.build(list(envelopes), advance_ms=advance_ms, evidence=evidence)
        replayed = apply_block(self.state, built.block)
        assert replayed.state_root == built.state.state_root
        for envelope, _ in built.rejected:
            signer = envelope.tx.signer
            if self.nonces.get(signer) == envelope.tx.nonce:
                self.nonces[signer] -= 1
        self.state = built.state
        self.last_certificate = self.certify(built)
        self.blocks.append(built)
        return built

    def write_store(self, directory: Path) -> None:
        """A node's store in `directory` holding every block committed so far, each with
        its certificate (as a node that produced them would have it)."""
        store = Store.create(directory, self.genesis_document)
        try:
            for built in self.blocks:
                store.append(built.block, self.certify(built), built.state)
        finally:
            store.close()

    # --- common set-ups -----------------------------------------------------------------------

    def accredit(
        self,
        certifier: PrivateKey | None = None,
        methodologies: list[str] | None = None,
        *,
        valid_from: int = 0,
        valid_until: int = FAR_FUTURE,
    ) -> Envelope:
        certifier = certifier or self.certifier
        return self.authority_tx(
            "accredit_certifier",
            {
                "certifier": certifier.account_id,
                "name": "National quality certification centre",
                "methodologies": methodologies or ["household-electricity"],
                "valid_from": valid_from,
                "valid_until": valid_until,
            },
        )

    def issue(
        self,
        recipients: list[tuple[PrivateKey | str, int]],
        *,
        project_id: str = "meter-0001",
        period: tuple[str, str] = ("2026-01-01", "2026-02-01"),
        methodology_id: str = "household-electricity",
        certifier: PrivateKey | None = None,
    ) -> Envelope:
        return self.tx(
            certifier or self.certifier,
            "issue",
            {
                "methodology_id": methodology_id,
                "project_id": project_id,
                "period_start": period[0],
                "period_end": period[1],
                "evidence_sha256": hashlib.sha256(
                    project_id.encode() + period[0].encode()
                ).hexdigest(),
                "recipients": [
                    {
                        "account": who if isinstance(who, str) else who.account_id,
                        "quantity": quantity,
                    }
                    for who, quantity in recipients
                ],
            },
        )

    def create_program(self, program_id: str = "zibo-green-home") -> Envelope:
        return self.authority_tx(
            "create_program",
            {
                "program_id": program_id,
                "name": "Zibo green home incentive",
                "valid_until": FAR_FUTURE,
            },
        )

    def funded(self) -> Chain:
        """Accredit the certifier, create a programme, and issue B-1: alice 1000, bob 500."""
        built = self.commit(
            self.accredit(),
            self.create_program(),
            self.issue([(self.alice, 1000), (self.bob, 500)]),
        )
        assert not built.rejected, built.rejected
        assert len(built.block.transactions) == 3, "block_transactions_max left a set-up out"
        return self
