"""Hashes, identifiers and strict Ed25519 (SPEC §2.2, §2.3).

Verification is strict and the same on every node, whatever library does the curve arithmetic:
before the backend sees a signature we refuse a public key or an `R` whose encoding is not
canonical (y >= p) or whose point has small order, and an `S` that is not reduced (S >= L). The
backend is libsodium through PyNaCl, chosen by measurement (about twice OpenSSL's verification
rate on this machine; it also releases the GIL, so threads verify in parallel). libsodium makes
the same refusals itself; our own checks make the rule explicit and backend-independent.
Private keys are PKCS#8 PEM files (through `cryptography`), optionally passphrase-encrypted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import nacl.bindings
import nacl.exceptions
import nacl.signing
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.encoding import JSON, canonical, canonical_unchecked
from ledger.errors import LedgerError

TX_DOMAIN: Final = b"tanlian/tx/v1\n"
BLOCK_DOMAIN: Final = b"tanlian/block/v1\n"
VOTE_DOMAIN: Final = b"tanlian/vote/v1\n"
PROPOSAL_DOMAIN: Final = b"tanlian/proposal/v1\n"
CERTIFICATE_DOMAIN: Final = b"tanlian/certificate/v1\n"
VALIDATORS_DOMAIN: Final = b"tanlian/validators/v1\n"
GENESIS_DOMAIN: Final = b"tanlian/genesis/v1\n"
ACCOUNT_DOMAIN: Final = b"tanlian/account/v1\n"
EVIDENCE_DOMAIN: Final = b"tanlian/evidence/v1\n"

ZERO_HASH_HEX: Final = "0" * 64

# Curve25519 field prime and the order of the prime-order subgroup (RFC 8032 §5.1).
FIELD_P: Final = 2**255 - 19
GROUP_L: Final = 2**252 + 27742317777372353535851937790883648493


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def hash_domain(domain: bytes, value: JSON) -> bytes:
    """`sha256(DOMAIN + canonical(value))`, the hash of every structure (SPEC §2.2)."""
    return hashlib.sha256(domain + canonical(value)).digest()


def hash_domain_trusted(domain: bytes, value: JSON) -> bytes:
    """`hash_domain` for a value the ledger built or already validated (skips the value check)."""
    return hashlib.sha256(domain + canonical_unchecked(value)).digest()


def compute_account_id(keys: Sequence[str], threshold: int) -> str:
    """The id of an account from the key set it first appeared with (keys sorted ascending)."""
    value = {"keys": sorted(keys), "threshold": threshold}
    return hashlib.sha256(ACCOUNT_DOMAIN + canonical_unchecked(value)).hexdigest()


def _sqrt(value: int) -> int | None:
    """A square root in GF(p), or None (RFC 8032 §5.1.3 step 3)."""
    root = pow(value, (FIELD_P + 3) // 8, FIELD_P)
    if root * root % FIELD_P == value % FIELD_P:
        return root
    root = root * pow(2, (FIELD_P - 1) // 4, FIELD_P) % FIELD_P
    if root * root % FIELD_P == value % FIELD_P:
        return root
    return None


def _small_order_y_values() -> frozenset[int]:
    """The y coordinates of the eight points of order dividing 8.

    Order 1 and 2: (0, 1) and (0, -1); order 4: (±sqrt(-1), 0). A point of order 8 doubles to
    one of order 4, so y(2P) = (y² + x²) / (2 + x² - y²) = 0 gives y² = -x²; with the curve
    -x² + y² = 1 + d·x²·y² that is d·x⁴ - 2x² - 1 = 0, so x² = (1 ± sqrt(1 + d)) / d.
    """
    d = -121665 * pow(121666, FIELD_P - 2, FIELD_P) % FIELD_P  # the curve's constant
    values = {0, 1, FIELD_P - 1}
    root = _sqrt(1 + d)
    assert root is not None
    for sign in (1, -1):
        x_squared = (1 + sign * root) * pow(d, FIELD_P - 2, FIELD_P) % FIELD_P
        if _sqrt(x_squared) is None:
            continue
        y = _sqrt(-x_squared % FIELD_P)
        if y is not None:
            values.update({y, FIELD_P - y})
    assert len(values) == 5, values
    return frozenset(values)


SMALL_ORDER_Y: Final = _small_order_y_values()


class SignatureError(LedgerError):
    code = "bad_signature"


def is_strict_point(encoded: bytes) -> bool:
    """A 32-byte point encoding that is canonical (y < p) and not of small order."""
    if len(encoded) != 32:
        return False
    y = int.from_bytes(encoded, "little") & ((1 << 255) - 1)
    return y < FIELD_P and y not in SMALL_ORDER_Y


_BASE_POINT: Final = bytes.fromhex(
    "5866666666666666666666666666666666666666666666666666666666666666"
)


@lru_cache(maxsize=65536)
def is_public_key(encoded: bytes) -> bool:
    """A 32-byte encoding that can be an Ed25519 public key: `is_strict_point`, and a point
    of the curve (RFC 8032 §5.1.3 decodes it). libsodium's point addition decodes both
    operands and refuses one that is no curve point, without the prime-order-subgroup
    check of its `is_valid_point`, which SPEC §2.3 does not ask for: adding the base point
    is that decoding alone (~12 µs). Remembered: accounts sign again and again, and a key
    is checked wherever a signature list names it."""
    if not is_strict_point(encoded):
        return False
    try:
        nacl.bindings.crypto_core_ed25519_add(encoded, _BASE_POINT)
    except nacl.exceptions.RuntimeError:
        return False
    return True


@lru_cache(maxsize=65536)
def validate_public_key(public_key: bytes) -> None:
    """Refuse a key that strict verification would never accept (SPEC §2.3)."""
    if not is_public_key(public_key):
        raise SignatureError(
            f"public key {public_key.hex()} is not a canonical curve point of large order"
        )


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Strict Ed25519 verification; raises `SignatureError` (code bad_signature)."""
    validate_public_key(public_key)
    if len(signature) != 64:
        raise SignatureError("a signature is 64 bytes")
    if not is_strict_point(signature[:32]):
        raise SignatureError("signature R is not a canonical point of large order")
    if int.from_bytes(signature[32:], "little") >= GROUP_L:
        raise SignatureError("signature S is not reduced (S >= L)")
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError) as error:
        raise SignatureError(f"signature does not verify for key {public_key.hex()}") from error


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivateKey:
    """An Ed25519 private key; signs with libsodium, stores as PKCS#8 PEM."""

    seed: bytes

    def __post_init__(self) -> None:
        assert len(self.seed) == 32

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(seed=bytes(nacl.signing.SigningKey.generate()))

    @property
    def public_key(self) -> bytes:
        return _public_key_of(self.seed)

    @property
    def public_key_hex(self) -> str:
        return self.public_key.hex()

    @property
    def account_id(self) -> str:
        """The id of the single-key account this key controls (SPEC §3.1)."""
        return compute_account_id([self.public_key_hex], 1)

    def sign(self, message: bytes) -> bytes:
        return _signing_key(self.seed).sign(message).signature

    def to_pem(self, passphrase: bytes | None = None) -> bytes:
        key = Ed25519PrivateKey.from_private_bytes(self.seed)
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    @classmethod
    def from_pem(cls, data: bytes, passphrase: bytes | None = None) -> PrivateKey:
        passphrase = passphrase or None  # an empty passphrase is no passphrase, as in to_pem
        try:
            key = serialization.load_pem_private_key(data, password=passphrase)
        except TypeError as error:
            raise LedgerError(
                "the key file is encrypted: give its passphrase"
                if passphrase is None
                else "the key file is not encrypted: give no passphrase",
                code="bad_key",
            ) from error
        except (ValueError, UnsupportedAlgorithm) as error:
            raise LedgerError(
                "not a PKCS#8 PEM Ed25519 private key, or a wrong passphrase", code="bad_key"
            ) from error
        if not isinstance(key, Ed25519PrivateKey):
            raise LedgerError("the key file holds a key that is not Ed25519", code="bad_key")
        return cls(seed=key.private_bytes_raw())


@lru_cache(maxsize=1024)
def _signing_key(seed: bytes) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(seed)


@lru_cache(maxsize=1024)
def _public_key_of(seed: bytes) -> bytes:
    return bytes(_signing_key(seed).verify_key)
