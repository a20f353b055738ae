"""Hashes, identifiers and strict Ed25519 (SPEC §2.2, §2.3)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any, Final

import nacl.bindings
import nacl.signing
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa, x25519
from hypothesis import given
from hypothesis import strategies as st

from ledger import crypto
from ledger.blocks import parse_validators
from ledger.crypto import (
    FIELD_P,
    GROUP_L,
    SMALL_ORDER_Y,
    PrivateKey,
    SignatureError,
    compute_account_id,
    is_public_key,
    is_strict_point,
    validate_public_key,
    verify_signature,
)
from ledger.encoding import canonical
from ledger.errors import LedgerError
from ledger.transactions import PAYLOADS

SEEDS = st.binary(min_size=32, max_size=32)
MESSAGE = b"tanlian/tx/v1\n" + b'{"chain_id":"zibo-test"}'

# --- RFC 8032 §7.1, TEST 1..3 -------------------------------------------------------------------
# (secret key, public key, message, signature), as printed in the RFC. Each is checked below
# against libsodium directly, and against the ledger's own signing and strict verification.
RFC8032_VECTORS = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]


@pytest.mark.parametrize(("seed", "public", "message", "signature"), RFC8032_VECTORS)
def test_rfc8032_vectors(seed: str, public: str, message: str, signature: str) -> None:
    signing = nacl.signing.SigningKey(bytes.fromhex(seed))
    assert bytes(signing.verify_key).hex() == public
    assert signing.sign(bytes.fromhex(message)).signature.hex() == signature

    key = PrivateKey(seed=bytes.fromhex(seed))
    assert key.public_key_hex == public
    assert key.sign(bytes.fromhex(message)).hex() == signature
    verify_signature(bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature))


# --- an independent model of the curve ----------------------------------------------------------

D = -121665 * pow(121666, FIELD_P - 2, FIELD_P) % FIELD_P
IDENTITY = (0, 1)
Point = tuple[int, int]


def inverse(value: int) -> int:
    return pow(value, FIELD_P - 2, FIELD_P)


def add(p: Point, q: Point) -> Point:
    """Twisted Edwards addition, a = -1 (complete, since d is not a square)."""
    (x1, y1), (x2, y2) = p, q
    t = D * x1 * x2 * y1 * y2 % FIELD_P
    x3 = (x1 * y2 + x2 * y1) * inverse(1 + t) % FIELD_P
    y3 = (y1 * y2 + x1 * x2) * inverse(1 - t) % FIELD_P
    return x3, y3


def times(n: int, p: Point) -> Point:
    """n * p by double-and-add."""
    result, addend = IDENTITY, p
    while n:
        if n & 1:
            result = add(result, addend)
        addend = add(addend, addend)
        n >>= 1
    return result


def on_curve(p: Point) -> bool:
    x, y = p
    return (-x * x + y * y - 1 - D * x * x * y * y) % FIELD_P == 0


def square_roots(value: int) -> list[int]:
    """Both square roots of `value` in GF(p) (p = 5 mod 8), or none."""
    value %= FIELD_P
    candidate = pow(value, (FIELD_P + 3) // 8, FIELD_P)
    for root in (candidate, candidate * pow(2, (FIELD_P - 1) // 4, FIELD_P) % FIELD_P):
        if root * root % FIELD_P == value:
            return sorted({root, -root % FIELD_P})
    return []


def points_with_y(y: int) -> list[Point]:
    x_squared = (y * y - 1) * inverse(D * y * y + 1) % FIELD_P
    return [(x, y) for x in square_roots(x_squared)]


def encode(y: int, *, sign: bool = False) -> bytes:
    return (y | (sign << 255)).to_bytes(32, "little")


def order(p: Point) -> int:
    return next(n for n in (1, 2, 4, 8) if times(n, p) == IDENTITY)


def test_edwards_model_agrees_with_libsodium() -> None:
    # The model is only trustworthy if it reproduces real arithmetic: n * B for a few n, and
    # L * B is the identity (B has prime order L).
    base = next(p for p in points_with_y(4 * inverse(5) % FIELD_P) if p[0] % 2 == 0)
    assert on_curve(base)
    assert times(GROUP_L, base) == IDENTITY
    for n in (1, 2, 3, 8, 12345, GROUP_L - 1):
        x, y = times(n, base)
        expected = nacl.bindings.crypto_scalarmult_ed25519_base_noclamp(n.to_bytes(32, "little"))
        assert encode(y, sign=bool(x & 1)) == expected


def test_small_order_y_are_exactly_the_eight_torsion_points() -> None:
    assert len(SMALL_ORDER_Y) == 5
    points = [point for y in SMALL_ORDER_Y for point in points_with_y(y)]
    assert len(set(points)) == 8, "8 distinct points: the whole 8-torsion subgroup"
    for point in points:
        assert on_curve(point)
        assert times(8, point) == IDENTITY
    orders = sorted(order(point) for point in points)
    assert orders == [1, 2, 4, 4, 8, 8, 8, 8]
    assert {0, 1, FIELD_P - 1} <= SMALL_ORDER_Y


@pytest.mark.parametrize("y", sorted(SMALL_ORDER_Y))
@pytest.mark.parametrize("sign", [False, True])
def test_small_order_public_keys_are_refused(y: int, sign: bool) -> None:
    public = encode(y, sign=sign)
    assert not is_strict_point(public)
    assert not nacl.bindings.crypto_core_ed25519_is_valid_point(public)
    key = PrivateKey(seed=bytes(32))
    with pytest.raises(SignatureError) as caught:
        verify_signature(public, MESSAGE, key.sign(MESSAGE))
    assert caught.value.code == "bad_signature"
    with pytest.raises(SignatureError):
        validate_public_key(public)


@pytest.mark.parametrize("offset", range(19))
@pytest.mark.parametrize("sign", [False, True])
def test_non_canonical_y_is_refused(offset: int, sign: bool) -> None:
    encoded = encode(FIELD_P + offset, sign=sign)
    assert int.from_bytes(encoded, "little") & ((1 << 255) - 1) >= FIELD_P
    assert not is_strict_point(encoded)
    with pytest.raises(SignatureError) as caught:
        validate_public_key(encoded)
    assert caught.value.code == "bad_signature"
    # The same encoding as R of an otherwise valid signature.
    key = PrivateKey(seed=bytes(range(32)))
    signature = key.sign(MESSAGE)
    with pytest.raises(SignatureError):
        verify_signature(key.public_key, MESSAGE, encoded + signature[32:])


OFF_CURVE_Y: Final = 2  # x² = 3 / (4d + 1) has no root: y = 2 is no point's (checked below)


def test_a_key_that_is_no_curve_point_is_refused_everywhere_keys_are_read() -> None:
    """SPEC §2.3 refuses non-canonical point encodings: an encoding with y < p, not of small
    order, that decodes to no point of the curve passed as a key, in `set_keys`, validator
    sets and genesis, where only a later signature check would have refused it (an account
    rotated to such a key is locked for good; validators given one halt the chain)."""
    assert points_with_y(OFF_CURVE_Y) == []
    encoded = encode(OFF_CURVE_Y)
    assert is_strict_point(encoded) and not is_public_key(encoded)
    assert not nacl.bindings.crypto_core_ed25519_is_valid_point(encoded)
    with pytest.raises(SignatureError, match="not a canonical curve point"):
        validate_public_key(encoded)
    with pytest.raises(LedgerError, match="not a canonical Ed25519 curve point") as caught:
        PAYLOADS["set_keys"]("payload", {"keys": [encoded.hex()], "threshold": 1})
    assert caught.value.code == "invalid_field"
    with pytest.raises(LedgerError) as caught:
        parse_validators([{"public_key": encoded.hex(), "power": 1, "name": "v"}])
    assert caught.value.code == "invalid_field"


@given(st.integers(0, FIELD_P - 1), st.booleans())
def test_a_public_key_is_exactly_a_strict_point_of_the_curve(y: int, sign: bool) -> None:
    """Against the Edwards model above (its own decoding, not the Euler shortcut)."""
    encoded = encode(y, sign=sign)
    assert is_public_key(encoded) == (is_strict_point(encoded) and points_with_y(y) != [])
    if nacl.bindings.crypto_core_ed25519_is_valid_point(encoded):
        assert is_public_key(encoded)


def test_is_strict_point_length() -> None:
    key = PrivateKey(seed=bytes(32))
    assert is_strict_point(key.public_key)
    assert not is_strict_point(key.public_key[:31])
    assert not is_strict_point(key.public_key + b"\x00")


# --- strict verification ----------------------------------------------------------------------


@given(SEEDS, st.binary(max_size=200))
def test_sign_then_verify(seed: bytes, message: bytes) -> None:
    key = PrivateKey(seed=seed)
    assert is_strict_point(key.public_key)
    verify_signature(key.public_key, message, key.sign(message))


@given(SEEDS, st.integers(1, 2**256 // GROUP_L - 1))
def test_non_reduced_s_is_refused(seed: bytes, multiple: int) -> None:
    key = PrivateKey(seed=seed)
    signature = key.sign(MESSAGE)
    s = int.from_bytes(signature[32:], "little")
    forged = signature[:32] + (s + multiple * GROUP_L).to_bytes(32, "little")
    with pytest.raises(SignatureError) as caught:
        verify_signature(key.public_key, MESSAGE, forged)
    assert caught.value.code == "bad_signature"


def test_s_bounds() -> None:
    key = PrivateKey(seed=bytes(32))
    signature = key.sign(MESSAGE)
    for s in (GROUP_L, 2**256 - 1):
        with pytest.raises(SignatureError, match=r"S >= L"):
            verify_signature(key.public_key, MESSAGE, signature[:32] + s.to_bytes(32, "little"))


@pytest.mark.parametrize("y", sorted(SMALL_ORDER_Y))
@pytest.mark.parametrize("sign", [False, True])
def test_small_order_r_is_refused(y: int, sign: bool) -> None:
    key = PrivateKey(seed=bytes(32))
    signature = key.sign(MESSAGE)
    with pytest.raises(SignatureError) as caught:
        verify_signature(key.public_key, MESSAGE, encode(y, sign=sign) + signature[32:])
    assert caught.value.code == "bad_signature"


def test_every_flipped_bit_of_a_signature_is_refused() -> None:
    key = PrivateKey(seed=hashlib.sha256(b"flip").digest())
    signature = bytearray(key.sign(MESSAGE))
    for bit in range(len(signature) * 8):
        signature[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(SignatureError):
            verify_signature(key.public_key, MESSAGE, bytes(signature))
        signature[bit // 8] ^= 1 << (bit % 8)
    verify_signature(key.public_key, MESSAGE, bytes(signature))


def test_every_flipped_bit_of_the_message_is_refused() -> None:
    key = PrivateKey(seed=hashlib.sha256(b"flip").digest())
    signature = key.sign(MESSAGE)
    for bit in range(len(MESSAGE) * 8):
        message = bytearray(MESSAGE)
        message[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(SignatureError):
            verify_signature(key.public_key, bytes(message), signature)


@pytest.mark.parametrize("length", [0, 32, 63, 65, 128])
def test_wrong_signature_length_is_refused(length: int) -> None:
    key = PrivateKey(seed=bytes(32))
    signature = (key.sign(MESSAGE) * 2)[:length]
    with pytest.raises(SignatureError) as caught:
        verify_signature(key.public_key, MESSAGE, signature)
    assert caught.value.code == "bad_signature"


def test_signature_of_another_key_is_refused() -> None:
    alice, bob = PrivateKey(seed=bytes(32)), PrivateKey(seed=bytes([1] * 32))
    with pytest.raises(SignatureError):
        verify_signature(bob.public_key, MESSAGE, alice.sign(MESSAGE))


@pytest.mark.parametrize("length", [0, 31, 33])
def test_wrong_public_key_length_is_refused(length: int) -> None:
    key = PrivateKey(seed=bytes(32))
    with pytest.raises(SignatureError):
        verify_signature((key.public_key * 2)[:length], MESSAGE, key.sign(MESSAGE))


@given(st.binary(min_size=32, max_size=32))
def test_libsodium_valid_points_are_strict(encoded: bytes) -> None:
    # libsodium's notion of a valid point (canonical, on the curve, prime order) is stricter
    # than ours, never looser; and ours refuses everything with y >= p or small order.
    if nacl.bindings.crypto_core_ed25519_is_valid_point(encoded):
        assert is_strict_point(encoded)
    y = int.from_bytes(encoded, "little") & ((1 << 255) - 1)
    if y >= FIELD_P or y in SMALL_ORDER_Y:
        assert not is_strict_point(encoded)


# --- hashes and identifiers -------------------------------------------------------------------


def test_domains_match_the_spec_table() -> None:
    domains = {
        crypto.TX_DOMAIN: b"tanlian/tx/v1\n",
        crypto.BLOCK_DOMAIN: b"tanlian/block/v1\n",
        crypto.VOTE_DOMAIN: b"tanlian/vote/v1\n",
        crypto.PROPOSAL_DOMAIN: b"tanlian/proposal/v1\n",
        crypto.CERTIFICATE_DOMAIN: b"tanlian/certificate/v1\n",
        crypto.VALIDATORS_DOMAIN: b"tanlian/validators/v1\n",
        crypto.GENESIS_DOMAIN: b"tanlian/genesis/v1\n",
        crypto.ACCOUNT_DOMAIN: b"tanlian/account/v1\n",
        crypto.EVIDENCE_DOMAIN: b"tanlian/evidence/v1\n",
    }
    assert all(actual == expected for actual, expected in domains.items())
    assert len(domains) == 9


@given(st.dictionaries(st.from_regex(r"[a-z]{1,4}", fullmatch=True), st.integers(0, 9)))
def test_hash_domain(value: dict[str, Any]) -> None:
    expected = hashlib.sha256(crypto.TX_DOMAIN + canonical(value)).digest()
    assert crypto.hash_domain(crypto.TX_DOMAIN, value) == expected
    assert crypto.hash_domain_trusted(crypto.TX_DOMAIN, value) == expected
    assert crypto.hash_domain(crypto.BLOCK_DOMAIN, value) != expected


@given(
    st.lists(SEEDS.map(lambda seed: PrivateKey(seed=seed).public_key_hex), min_size=1, max_size=10)
    .map(lambda keys: sorted(set(keys)))
    .flatmap(lambda keys: st.tuples(st.just(keys), st.permutations(keys))),
    st.integers(1, 10),
)
def test_compute_account_id_sorts_keys(pair: tuple[list[str], list[str]], threshold: int) -> None:
    ordered, shuffled = pair
    expected = hashlib.sha256(
        b"tanlian/account/v1\n" + canonical({"keys": ordered, "threshold": threshold})
    ).hexdigest()
    assert compute_account_id(shuffled, threshold) == expected
    assert compute_account_id(list(reversed(ordered)), threshold) == expected
    assert compute_account_id(ordered, threshold + 1) != expected


def test_account_id_pinned() -> None:
    key = PrivateKey(seed=bytes(32))
    expected = hashlib.sha256(
        b'tanlian/account/v1\n{"keys":["' + key.public_key_hex.encode() + b'"],"threshold":1}'
    ).hexdigest()
    assert key.account_id == expected == compute_account_id([key.public_key_hex], 1)


# --- PEM files --------------------------------------------------------------------------------


@given(SEEDS)
def test_pem_round_trip(seed: bytes) -> None:
    key = PrivateKey(seed=seed)
    pem = key.to_pem()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert PrivateKey.from_pem(pem) == key
    loaded = serialization.load_pem_private_key(pem, password=None)
    public = loaded.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert public == key.public_key


def test_encrypted_pem_round_trip() -> None:
    key = PrivateKey(seed=hashlib.sha256(b"pem").digest())
    pem = key.to_pem(b"correct horse")
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert key.seed not in pem
    assert PrivateKey.from_pem(pem, b"correct horse") == key


def expect_bad_key(data: bytes, passphrase: bytes | None = None) -> None:
    with pytest.raises(LedgerError) as caught:
        PrivateKey.from_pem(data, passphrase)
    assert caught.value.code == "bad_key", caught.value.message


def test_wrong_passphrase_is_bad_key() -> None:
    expect_bad_key(PrivateKey(seed=bytes(32)).to_pem(b"right"), b"wrong")


def test_missing_passphrase_is_bad_key() -> None:
    expect_bad_key(PrivateKey(seed=bytes(32)).to_pem(b"right"))


def test_passphrase_for_a_plain_key_is_bad_key() -> None:
    expect_bad_key(PrivateKey(seed=bytes(32)).to_pem(), b"unneeded")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
        PrivateKey(seed=bytes(32)).to_pem()[:60],
    ],
)
def test_garbage_pem_is_bad_key(data: bytes) -> None:
    expect_bad_key(data)


def test_pkcs8_with_an_unknown_algorithm_is_bad_key() -> None:
    # A well-formed PKCS#8 PrivateKeyInfo whose algorithm OID (1.2.3.4) nobody knows.
    inner = b"\x04\x20" + bytes(32)
    body = b"\x02\x01\x00" + b"\x30\x05\x06\x03\x2a\x03\x04" + bytes([0x04, len(inner)]) + inner
    der = bytes([0x30, len(body)]) + body
    pem = (
        b"-----BEGIN PRIVATE KEY-----\n" + base64.encodebytes(der) + b"-----END PRIVATE KEY-----\n"
    )
    expect_bad_key(pem)


def test_empty_passphrase_for_an_encrypted_key() -> None:
    with pytest.raises(LedgerError) as caught:
        PrivateKey.from_pem(PrivateKey(seed=bytes(32)).to_pem(b"right"), b"")
    assert caught.value.code == "bad_key"
    # The message must name the failed rule: this file *is* encrypted.
    assert "not encrypted" not in caught.value.message, caught.value.message


def test_public_key_pem_is_bad_key() -> None:
    public = PrivateKey(seed=bytes(32)).public_key
    der = b"\x30\x2a\x30\x05\x06\x03\x2b\x65\x70\x03\x21\x00" + public
    expect_bad_key(
        b"-----BEGIN PUBLIC KEY-----\n" + base64.encodebytes(der) + b"-----END PUBLIC KEY-----\n"
    )


def test_other_key_types_are_bad_key() -> None:
    no_encryption = serialization.NoEncryption()
    pkcs8 = serialization.PrivateFormat.PKCS8
    pem = serialization.Encoding.PEM
    others: list[
        rsa.RSAPrivateKey
        | ec.EllipticCurvePrivateKey
        | x25519.X25519PrivateKey
        | ed448.Ed448PrivateKey
    ] = [
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec.generate_private_key(ec.SECP256R1()),
        x25519.X25519PrivateKey.generate(),
        ed448.Ed448PrivateKey.generate(),
    ]
    for other in others:
        expect_bad_key(other.private_bytes(pem, pkcs8, no_encryption))
