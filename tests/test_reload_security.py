"""RELOAD security (reload.security, reload.access, `p2pcdn ca`) against RFC 6940 §6.3.4, §7.1,
§7.3, §11.3."""

from __future__ import annotations

import datetime
import hashlib
import json
import stat
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab import cli
from reload import access, security
from reload.security import (
    CertificateCache,
    CertificateError,
    HashAlgorithm,
    SignatureAlgorithm,
    SignatureError,
    Signer,
    SignerIdentity,
    SignerIdentityType,
    Verifier,
)

OVERLAY = "lab.p2pcdn"
NODE_A = bytes.fromhex("00112233445566778899aabbccddeeff")
NODE_B = bytes.fromhex("ffeeddccbbaa99887766554433221100")
DATA = security.message_signature_prefix(0x12345678, 0x0102030405060708, b"contents")
KEY_TYPES = ["ecdsa-p256", "rsa-2048"]
IDENTITY_TYPES = list(SignerIdentityType)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _later(days: float) -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)


@pytest.fixture(scope="module")
def ca() -> tuple[security.PrivateKey, x509.Certificate]:
    return security.create_overlay_ca(OVERLAY)


@pytest.fixture(scope="module")
def node_keys() -> dict[str, security.PrivateKey]:
    return {kt: security.generate_private_key(kt) for kt in KEY_TYPES}


@pytest.fixture(scope="module")
def single(
    ca: tuple[security.PrivateKey, x509.Certificate], node_keys: dict[str, security.PrivateKey]
) -> dict[str, Signer]:
    """One-Node-ID credentials, one per key type."""
    ca_key, ca_cert = ca
    return {
        kt: Signer(
            key,
            security.issue_node_certificate(
                ca_key, ca_cert, key.public_key(), [NODE_A], "alice@lab.p2pcdn", OVERLAY
            ),
            NODE_A,
        )
        for kt, key in node_keys.items()
    }


@pytest.fixture(scope="module")
def multi(
    ca: tuple[security.PrivateKey, x509.Certificate], node_keys: dict[str, security.PrivateKey]
) -> Signer:
    """An ECDSA credential with two Node-IDs, signing as the second."""
    ca_key, ca_cert = ca
    key = node_keys["ecdsa-p256"]
    cert = security.issue_node_certificate(
        ca_key, ca_cert, key.public_key(), [NODE_A, NODE_B], "bob", OVERLAY
    )
    return Signer(key, cert, NODE_B)


@pytest.fixture(scope="module")
def other_ca() -> tuple[security.PrivateKey, x509.Certificate]:
    return security.create_overlay_ca(OVERLAY)


def verifier(ca_cert: x509.Certificate, **kwargs: object) -> Verifier:
    return Verifier([ca_cert], OVERLAY, **kwargs)  # type: ignore[arg-type]


# -- enrollment CA and node certificates (§11.3) --------------------------------------------


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_overlay_ca_is_a_self_signed_root_naming_the_overlay(key_type: str) -> None:
    key, cert = security.create_overlay_ca("other.example", key_type)
    cert.verify_directly_issued_by(cert)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert security.overlay_of_ca(cert) == "other.example"
    expected = rsa.RSAPrivateKey if key_type == "rsa-2048" else ec.EllipticCurvePrivateKey
    assert isinstance(key, expected)


def test_create_overlay_ca_rejects_bad_input() -> None:
    with pytest.raises(CertificateError):
        security.create_overlay_ca("bad overlay/name")
    with pytest.raises(CertificateError):
        security.create_overlay_ca(OVERLAY, "dsa-1024")


def test_node_certificate_carries_node_id_uris_and_user_name(multi: Signer) -> None:
    cert = multi.cert
    assert cert.subject == x509.Name([])  # §11.3: the subject DN MUST be empty
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical  # RFC 5280 §4.2.1.6 with an empty subject
    # §14.15: the destination is a hex Destination List: one node entry, type 1, length 16.
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"reload://0110{NODE_A.hex()}@{OVERLAY}/",
        f"reload://0110{NODE_B.hex()}@{OVERLAY}/",
    ]
    assert san.value.get_values_for_type(x509.RFC822Name) == ["bob"]
    assert len(list(san.value)) == 3  # §11.3: no other identities
    assert security.node_ids_from_certificate(cert, OVERLAY) == [NODE_A, NODE_B]
    assert security.node_ids_from_certificate(cert, "elsewhere") == []
    assert security.node_ids_from_certificate(cert, OVERLAY, node_id_length=20) == []
    assert security.user_name_from_certificate(cert) == "bob"
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_node_certificate_chains_to_the_ca_and_ends_with_it(
    ca: tuple[security.PrivateKey, x509.Certificate], single: dict[str, Signer]
) -> None:
    ca_key, ca_cert = ca
    for signer in single.values():
        signer.cert.verify_directly_issued_by(ca_cert)
        assert signer.cert.not_valid_after_utc <= ca_cert.not_valid_after_utc
    key = security.generate_private_key()
    cert = security.issue_node_certificate(
        ca_key,
        ca_cert,
        key.public_key(),
        [NODE_A],
        "carol",
        OVERLAY,
        valid_for=datetime.timedelta(days=100_000),
    )
    assert cert.not_valid_after_utc == ca_cert.not_valid_after_utc


def test_twenty_byte_node_ids_round_trip(ca: tuple[security.PrivateKey, x509.Certificate]) -> None:
    ca_key, ca_cert = ca
    ids = security.random_node_ids(3, 20)
    assert len(set(ids)) == 3 and all(len(i) == 20 for i in ids)
    key = security.generate_private_key()
    cert = security.issue_node_certificate(ca_key, ca_cert, key.public_key(), ids, "u", OVERLAY)
    assert security.node_ids_from_certificate(cert, OVERLAY, 20) == ids
    assert security.node_ids_from_certificate(cert, OVERLAY, 16) == []


@pytest.mark.parametrize(
    ("node_ids", "user", "overlay"),
    [
        ([], "alice", OVERLAY),
        ([NODE_A, NODE_A], "alice", OVERLAY),
        ([NODE_A, NODE_A + b"\0"], "alice", OVERLAY),
        ([NODE_A[:15]], "alice", OVERLAY),
        ([NODE_A + bytes(5)], "alice", OVERLAY),
        ([NODE_A], "alice smith", OVERLAY),
        ([NODE_A], "nul\0byte", OVERLAY),
        ([NODE_A], "", OVERLAY),
        ([NODE_A], "alice", "bad/overlay"),
    ],
)
def test_issue_rejects_bad_node_ids_and_names(
    ca: tuple[security.PrivateKey, x509.Certificate],
    node_keys: dict[str, security.PrivateKey],
    node_ids: list[bytes],
    user: str,
    overlay: str,
) -> None:
    ca_key, ca_cert = ca
    with pytest.raises(CertificateError):
        security.issue_node_certificate(
            ca_key, ca_cert, node_keys["ecdsa-p256"].public_key(), node_ids, user, overlay
        )


def test_issue_rejects_weak_and_unsupported_keys(
    ca: tuple[security.PrivateKey, x509.Certificate],
) -> None:
    ca_key, ca_cert = ca
    for key in (
        rsa.generate_private_key(public_exponent=65537, key_size=1024),
        ec.generate_private_key(ec.SECP384R1()),
    ):
        with pytest.raises(CertificateError):
            security.issue_node_certificate(
                ca_key, ca_cert, key.public_key(), [NODE_A], "alice", OVERLAY
            )


def test_random_node_ids_bounds() -> None:
    with pytest.raises(CertificateError):
        security.random_node_ids(0)
    with pytest.raises(CertificateError):
        security.random_node_ids(security.MAX_NODE_IDS_PER_CERTIFICATE + 1)
    with pytest.raises(CertificateError):
        security.random_node_ids(1, 21)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (f"reload://0110{NODE_A.hex()}@{OVERLAY}/", NODE_A),
        (f"reload://0110{NODE_A.hex().upper()}@LAB.p2pcdn/", NODE_A),
        (f"reload://{NODE_A.hex()}@{OVERLAY}/", NODE_A),  # bare Node-ID, accepted
        (f"reload://0110{NODE_A.hex()}@other/", None),
        (f"reload://0210{NODE_A.hex()}@{OVERLAY}/", None),  # a resource entry
        (f"reload://0114{NODE_A.hex()}@{OVERLAY}/", None),  # length byte lies
        (f"reload://0110{NODE_A.hex()}@{OVERLAY}/0001", None),  # a data specifier
        (f"reload://0110{NODE_A.hex()}0@{OVERLAY}/", None),  # odd digits
        (f"http://0110{NODE_A.hex()}@{OVERLAY}/", None),
        ("reload://@lab.p2pcdn/", None),
    ],
)
def test_node_id_from_uri(uri: str, expected: bytes | None) -> None:
    assert security.node_id_from_uri(uri, OVERLAY) == expected


@FUZZ
@given(st.text(max_size=120))
def test_node_id_from_uri_never_raises(uri: str) -> None:
    result = security.node_id_from_uri(uri, OVERLAY)
    assert result is None or len(result) == 16


# -- self-signed mode (§11.3.1) -------------------------------------------------------------


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize(("digest", "length"), [("sha256", 16), ("sha1", 20), ("sha256", 20)])
def test_self_signed_node_id_is_the_high_bits_of_the_key_digest(digest: str, length: int) -> None:
    key, cert, node_id = security.self_signed_node(OVERLAY, digest, length)
    assert node_id == hashlib.new(digest, _spki(cert)).digest()[:length]
    assert security.node_ids_from_certificate(cert, OVERLAY, length) == [node_id]
    assert security.user_name_from_certificate(cert) == f"{node_id.hex()}@{OVERLAY}"
    cert.verify_directly_issued_by(cert)
    security.check_self_signed(cert, node_id, digest)
    security.check_self_signed(cert, node_id, digest, OVERLAY)
    assert isinstance(key, ec.EllipticCurvePrivateKey)


def test_self_signed_multiple_node_ids_prepend_the_index() -> None:
    key = security.generate_private_key()
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ids = security.self_signed_node_ids(key.public_key(), "sha256", 16, count=3)
    assert ids == [hashlib.sha256(struct.pack(">I", i) + spki).digest()[:16] for i in (1, 2, 3)]


def test_check_self_signed_rejects_theft_and_ca_issued(single: dict[str, Signer]) -> None:
    _, cert, node_id = security.self_signed_node(OVERLAY, user_name="mallory")
    with pytest.raises(SignatureError) as info:
        security.check_self_signed(cert, NODE_A, "sha256")
    assert info.value.reason == "self-signed-mismatch"
    with pytest.raises(SignatureError):
        security.check_self_signed(cert, node_id, "sha1")  # other digest, other Node-ID
    with pytest.raises(SignatureError):
        security.check_self_signed(single["ecdsa-p256"].cert, NODE_A, "sha256")
    with pytest.raises(CertificateError):
        security.self_signed_node_ids(cert.public_key(), "sha1", 21)  # type: ignore[arg-type]


def _forged_self_signed(node_id: bytes) -> tuple[security.PrivateKey, x509.Certificate]:
    """A self-signed certificate claiming a Node-ID its key does not derive."""
    key = security.generate_private_key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(x509.Name([]))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(security.node_id_uri(node_id, OVERLAY))]
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


# -- signing and verification (§6.3.4) -------------------------------------------------------


@pytest.mark.parametrize("key_type", KEY_TYPES)
@pytest.mark.parametrize("identity_type", IDENTITY_TYPES)
def test_sign_and_verify(
    ca: tuple[security.PrivateKey, x509.Certificate],
    single: dict[str, Signer],
    key_type: str,
    identity_type: SignerIdentityType,
) -> None:
    signer = single[key_type]
    signature = signer.sign(DATA, identity_type)
    expected_sig = SignatureAlgorithm.RSA if key_type == "rsa-2048" else SignatureAlgorithm.ECDSA
    assert (signature.algorithm.hash, signature.algorithm.signature) == (4, expected_sig)
    verified = verifier(ca[1]).verify(DATA, signature, signer.certificates)
    assert verified.node_ids == (NODE_A,)
    assert verified.node_id == NODE_A
    assert verified.user_name == "alice@lab.p2pcdn"
    assert verified.cert == signer.cert
    assert verified.identity_type == identity_type
    assert not verified.self_signed


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_signature_input_is_data_then_signer_identity(
    single: dict[str, Signer], key_type: str
) -> None:
    """§6.3.4: the signed bytes are the caller's prefix followed by the encoded SignerIdentity,
    checked here with the raw public key, independently of the Verifier."""
    signer = single[key_type]
    signature = signer.sign(DATA, SignerIdentityType.CERT_HASH)
    der = signer.cert.public_bytes(serialization.Encoding.DER)
    identity_bytes = b"\x01\x00\x22\x04\x20" + hashlib.sha256(der).digest()
    assert security.encode_signer_identity(signature.identity) == identity_bytes
    key = signer.cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(
            signature.signature_value, DATA + identity_bytes, padding.PKCS1v15(), hashes.SHA256()
        )
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert signature.signature_value[0] == 0x30  # DER ECDSA-Sig-Value, as TLS carries it
        key.verify(signature.signature_value, DATA + identity_bytes, ec.ECDSA(hashes.SHA256()))


def test_signer_identity_hashes(multi: Signer) -> None:
    der = multi.der
    node_hash = multi.identity(SignerIdentityType.CERT_HASH_NODE_ID)
    assert node_hash == SignerIdentity(2, 4, hashlib.sha256(NODE_B + der).digest())
    assert multi.identity(SignerIdentityType.CERT_HASH).hash == hashlib.sha256(der).digest()
    assert security.encode_signer_identity(SignerIdentity(3)) == b"\x03\x00\x00"
    sha1_signer = Signer(multi.key, multi.cert, NODE_A, hash_alg=HashAlgorithm.SHA1)
    identity = sha1_signer.identity(SignerIdentityType.CERT_HASH_NODE_ID)
    assert identity == SignerIdentity(2, 2, hashlib.sha1(NODE_A + der).digest())


def test_multi_node_certificate_names_the_node_only_with_cert_hash_node_id(
    ca: tuple[security.PrivateKey, x509.Certificate], multi: Signer
) -> None:
    v = verifier(ca[1])
    by_node = v.verify(
        DATA, multi.sign(DATA, SignerIdentityType.CERT_HASH_NODE_ID), multi.certificates
    )
    assert by_node.node_id == NODE_B and by_node.node_ids == (NODE_A, NODE_B)
    by_cert = v.verify(DATA, multi.sign(DATA, SignerIdentityType.CERT_HASH), multi.certificates)
    assert by_cert.node_id is None


def test_sha1_signer_identity_verifies(
    ca: tuple[security.PrivateKey, x509.Certificate], multi: Signer
) -> None:
    signer = Signer(multi.key, multi.cert, NODE_A, hash_alg=HashAlgorithm.SHA1)
    signature = signer.sign(DATA, SignerIdentityType.CERT_HASH_NODE_ID)
    assert verifier(ca[1]).verify(DATA, signature, signer.certificates).node_id == NODE_A


def _reason(v: Verifier, data: bytes, signature: security.Signature, certs: list[bytes]) -> str:
    with pytest.raises(SignatureError) as info:
        v.verify(data, signature, certs)
    return info.value.reason


@pytest.mark.parametrize("key_type", KEY_TYPES)
@pytest.mark.parametrize("identity_type", IDENTITY_TYPES)
def test_tampered_data_or_signature_is_rejected(
    ca: tuple[security.PrivateKey, x509.Certificate],
    single: dict[str, Signer],
    key_type: str,
    identity_type: SignerIdentityType,
) -> None:
    signer = single[key_type]
    v = verifier(ca[1])
    signature = signer.sign(DATA, identity_type)
    certs = signer.certificates
    # SignerIdentity none finds no key that verifies, so it reports an unknown signer.
    bad = "unknown-signer" if identity_type == SignerIdentityType.NONE else "bad-signature"
    assert _reason(v, DATA[:-1] + b"X", signature, certs) == bad
    value = bytearray(signature.signature_value)
    value[len(value) // 2] ^= 0x01
    assert _reason(v, DATA, replace(signature, signature_value=bytes(value)), certs) == bad
    assert _reason(v, DATA, replace(signature, signature_value=b""), certs) == bad


def test_tampered_identity_or_certificate_is_rejected(
    ca: tuple[security.PrivateKey, x509.Certificate],
    single: dict[str, Signer],
    multi: Signer,
) -> None:
    signer = single["ecdsa-p256"]
    v = verifier(ca[1])
    signature = signer.sign(DATA, SignerIdentityType.CERT_HASH)
    wrong_hash = replace(signature.identity, hash=bytes(32))
    assert _reason(v, DATA, replace(signature, identity=wrong_hash), []) == "unknown-signer"
    # The bucket holds another certificate with the same key: its hash is not the signer's.
    assert _reason(verifier(ca[1]), DATA, signature, multi.certificates) == "unknown-signer"
    # A modified certificate is a different certificate (and its CA signature breaks).
    der = bytearray(signer.der)
    der[-10] ^= 0x01
    assert _reason(verifier(ca[1]), DATA, signature, [bytes(der)]) in {
        "unknown-signer",
        "malformed",
    }
    # The identity of one type with the hash of the other does not match either.
    swapped = replace(signature.identity, identity_type=2)
    assert _reason(v, DATA, replace(signature, identity=swapped), []) == "unknown-signer"
    assert _reason(v, DATA, replace(signature, identity=SignerIdentity(9, 4, b"")), []) == (
        "malformed"
    )


def test_cert_hash_node_id_with_a_node_id_not_in_the_certificate(
    ca: tuple[security.PrivateKey, x509.Certificate], single: dict[str, Signer]
) -> None:
    good = single["ecdsa-p256"]
    thief = Signer(good.key, good.cert, NODE_B)  # NODE_B is not in this certificate
    signature = thief.sign(DATA, SignerIdentityType.CERT_HASH_NODE_ID)
    assert _reason(verifier(ca[1]), DATA, signature, thief.certificates) == "unknown-signer"


def test_algorithm_mismatch_is_rejected(
    ca: tuple[security.PrivateKey, x509.Certificate], single: dict[str, Signer]
) -> None:
    signature = single["rsa-2048"].sign(DATA)
    certs = single["rsa-2048"].certificates
    v = verifier(ca[1])
    as_ecdsa = replace(signature, algorithm=security.SignatureAndHashAlgorithm(4, 3))
    assert _reason(v, DATA, as_ecdsa, certs) == "unsupported-algorithm"
    as_sha1 = replace(signature, algorithm=security.SignatureAndHashAlgorithm(2, 1))
    assert _reason(v, DATA, as_sha1, certs) == "unsupported-algorithm"


def test_expired_and_not_yet_valid_certificates_are_rejected(
    ca: tuple[security.PrivateKey, x509.Certificate], single: dict[str, Signer]
) -> None:
    signer = single["ecdsa-p256"]
    signature = signer.sign(DATA)
    v = verifier(ca[1])
    v.verify(DATA, signature, signer.certificates, now=_later(300))
    for moment in (_later(400), _later(-1)):
        with pytest.raises(SignatureError) as info:
            v.verify(DATA, signature, signer.certificates, now=moment)
        assert info.value.reason == "expired"


def test_expired_ca_is_rejected() -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    ca_key, ca_cert = security.create_overlay_ca(
        OVERLAY, valid_for=datetime.timedelta(days=10), now=past
    )
    key = security.generate_private_key()
    with pytest.raises(CertificateError):  # cannot issue from an expired CA
        security.issue_node_certificate(ca_key, ca_cert, key.public_key(), [NODE_A], "a", OVERLAY)
    cert = security.issue_node_certificate(
        ca_key, ca_cert, key.public_key(), [NODE_A], "a", OVERLAY, now=past
    )
    signer = Signer(key, cert, NODE_A)
    v = verifier(ca_cert)
    v.verify(DATA, signer.sign(DATA), signer.certificates, now=past + datetime.timedelta(days=1))
    assert _reason(v, DATA, signer.sign(DATA), signer.certificates) == "expired"


def test_untrusted_certificates_are_rejected(
    ca: tuple[security.PrivateKey, x509.Certificate],
    other_ca: tuple[security.PrivateKey, x509.Certificate],
    single: dict[str, Signer],
) -> None:
    signer = single["ecdsa-p256"]
    signature = signer.sign(DATA)
    # Issued by another CA with the very same subject name: the signature check tells them apart.
    assert _reason(verifier(other_ca[1]), DATA, signature, signer.certificates) == "untrusted"
    # An intermediate the root's pathLen 0 forbids is not a way around it.
    certs = [*signer.certificates, security.certificate_der(ca[1])]
    assert _reason(verifier(other_ca[1]), DATA, signature, certs) == "untrusted"
    self_key, cert, node_id = security.self_signed_node(OVERLAY)
    self_signer = Signer(self_key, cert, node_id)
    sig = self_signer.sign(DATA)
    assert _reason(verifier(ca[1]), DATA, sig, self_signer.certificates) == "untrusted"


def test_intermediate_ca_beyond_path_length_is_rejected(
    ca: tuple[security.PrivateKey, x509.Certificate],
) -> None:
    ca_key, ca_cert = ca
    sub_key = security.generate_private_key()
    now = datetime.datetime.now(datetime.UTC)
    sub_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "sub")])
    sub_cert = (
        x509.CertificateBuilder()
        .subject_name(sub_name)
        .issuer_name(ca_cert.subject)
        .public_key(sub_key.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = security.generate_private_key()
    leaf = security.issue_node_certificate(
        sub_key, sub_cert, key.public_key(), [NODE_A], "a", OVERLAY
    )
    signer = Signer(key, leaf, NODE_A)
    certs = [*signer.certificates, security.certificate_der(sub_cert)]
    assert _reason(verifier(ca_cert), DATA, signer.sign(DATA), certs) == "bad-chain"
    # The same chain under a root without pathLen 0 (the sub-CA as a root itself) is accepted.
    verifier(sub_cert).verify(DATA, signer.sign(DATA), certs)


def test_self_signed_permitted(ca: tuple[security.PrivateKey, x509.Certificate]) -> None:
    key, cert, node_id = security.self_signed_node(OVERLAY, user_name="selfie")
    signer = Signer(key, cert, node_id)
    v = verifier(ca[1], self_signed_permitted=True)
    verified = v.verify(DATA, signer.sign(DATA), signer.certificates)
    assert verified.self_signed and verified.node_id == node_id
    assert verified.user_name == "selfie"
    # Node-ID theft (§11.3.1): a self-signed certificate naming someone else's Node-ID.
    forged_key, forged = _forged_self_signed(NODE_A)
    thief = Signer(forged_key, forged, NODE_A)
    assert _reason(v, DATA, thief.sign(DATA), thief.certificates) == "self-signed-mismatch"
    # A sha1 overlay derives other Node-IDs from the same key.
    v_sha1 = verifier(ca[1], self_signed_permitted=True, self_signed_digest="sha1")
    assert _reason(v_sha1, DATA, signer.sign(DATA), signer.certificates) == ("self-signed-mismatch")


def test_a_ca_certificate_cannot_sign(ca: tuple[security.PrivateKey, x509.Certificate]) -> None:
    signer = Signer(ca[0], ca[1], NODE_A)
    sig = signer.sign(DATA)
    assert _reason(verifier(ca[1]), DATA, sig, signer.certificates) == "bad-chain"


def test_certificate_for_another_overlay_has_no_node_id(
    ca: tuple[security.PrivateKey, x509.Certificate], single: dict[str, Signer]
) -> None:
    signer = single["ecdsa-p256"]
    v = Verifier([ca[1]], "elsewhere")
    assert _reason(v, DATA, signer.sign(DATA), signer.certificates) == "node-id-mismatch"


def test_authenticate_a_link_peer_certificate(
    ca: tuple[security.PrivateKey, x509.Certificate],
    other_ca: tuple[security.PrivateKey, x509.Certificate],
    multi: Signer,
) -> None:
    peer = verifier(ca[1]).authenticate(multi.certificates)
    assert peer.node_ids == (NODE_A, NODE_B) and peer.node_id is None and peer.user_name == "bob"
    with pytest.raises(SignatureError) as info:
        verifier(other_ca[1]).authenticate(multi.certificates)
    assert info.value.reason == "untrusted"
    with pytest.raises(SignatureError) as info:
        verifier(ca[1]).authenticate(multi.certificates, now=_later(4000))
    assert info.value.reason == "expired"
    for bad in ([], [b"junk"]):
        with pytest.raises(SignatureError):
            verifier(ca[1]).authenticate(bad)
    _, cert, node_id = security.self_signed_node(OVERLAY)
    der = [security.certificate_der(cert)]
    assert verifier(ca[1], self_signed_permitted=True).authenticate(der).node_id == node_id
    with pytest.raises(SignatureError):
        verifier(ca[1]).authenticate(der)


def test_signer_rejects_a_key_that_is_not_the_certificates(single: dict[str, Signer]) -> None:
    with pytest.raises(CertificateError):
        Signer(single["rsa-2048"].key, single["ecdsa-p256"].cert, NODE_A)


# -- certificate cache ------------------------------------------------------------------------


def test_cache_lets_later_messages_omit_the_certificate(
    ca: tuple[security.PrivateKey, x509.Certificate], single: dict[str, Signer]
) -> None:
    signer = single["ecdsa-p256"]
    v = verifier(ca[1])
    assert _reason(v, DATA, signer.sign(DATA), []) == "unknown-signer"
    v.verify(DATA, signer.sign(DATA), signer.certificates)
    assert v.verify(DATA, signer.sign(DATA), []).node_id == NODE_A
    assert signer.der in v.cache


def test_cache_is_bounded_and_evicts_the_least_recently_used(
    ca: tuple[security.PrivateKey, x509.Certificate],
) -> None:
    ca_key, ca_cert = ca
    cache = CertificateCache(OVERLAY, max_entries=3)
    v = Verifier([ca_cert], OVERLAY, cache=cache)
    signers = []
    key = security.generate_private_key()
    for i in range(5):
        node_id = bytes([i]) * 16
        cert = security.issue_node_certificate(
            ca_key, ca_cert, key.public_key(), [node_id], f"u{i}", OVERLAY
        )
        signers.append(Signer(key, cert, node_id))
    for s in signers[:3]:
        cache.add(s.der)
    v.verify(DATA, signers[0].sign(DATA))  # touches signer 0: signer 1 is now the oldest
    for s in signers[3:]:
        cache.add(s.der)
    assert len(cache) == 3
    assert [s.der in cache for s in signers] == [True, False, False, True, True]
    for evicted in signers[1:3]:
        for kind in IDENTITY_TYPES[:2]:
            assert cache.find(evicted.identity(kind)) is None
            assert _reason(v, DATA, evicted.sign(DATA, kind), []) == "unknown-signer"
    assert v.verify(DATA, signers[4].sign(DATA, SignerIdentityType.CERT_HASH_NODE_ID)).node_id
    with pytest.raises(ValueError):
        CertificateCache(OVERLAY, max_entries=0)


def test_bucket_limits_and_garbage(
    ca: tuple[security.PrivateKey, x509.Certificate], single: dict[str, Signer]
) -> None:
    signer = single["ecdsa-p256"]
    v = verifier(ca[1])
    many = signer.certificates * (security.MAX_CERTIFICATES_PER_BLOCK + 1)
    assert _reason(v, DATA, signer.sign(DATA), many) == "malformed"
    assert _reason(v, DATA, signer.sign(DATA), [b"not a certificate"]) == "malformed"
    huge = b"\x30" * (security.MAX_CERTIFICATE_SIZE + 1)
    assert _reason(v, DATA, signer.sign(DATA), [huge]) == "malformed"
    assert len(v.cache) == 0


# -- wire helpers -------------------------------------------------------------------------


def test_signature_input_prefixes() -> None:
    assert bytes.fromhex("123456780102030405060708") + b"contents" == DATA
    prefix = security.stored_data_signature_prefix(b"\xaa" * 16, 0xF0000001, 1234, b"VALUE")
    assert prefix == b"\x10" + b"\xaa" * 16 + bytes.fromhex("f0000001 00000000000004d2") + b"VALUE"
    with pytest.raises(security.SecurityError):
        security.stored_data_signature_prefix(bytes(256), 1, 1, b"")


def test_encode_decode_signature(single: dict[str, Signer]) -> None:
    for identity_type in IDENTITY_TYPES:
        signature = single["rsa-2048"].sign(DATA, identity_type)
        encoded = security.encode_signature(signature)
        assert encoded[:2] == b"\x04\x01"
        assert security.decode_signature(encoded + b"tail") == (signature, len(encoded))
        for cut in range(len(encoded)):
            with pytest.raises(SignatureError):
                security.decode_signature(encoded[:cut])


@FUZZ
@given(st.binary(max_size=300))
def test_decode_signature_fuzz(data: bytes) -> None:
    try:
        signature, used = security.decode_signature(data)
    except SignatureError as exc:
        assert exc.reason == "malformed"
        return
    assert security.encode_signature(signature) == data[:used]


@FUZZ
@given(
    st.sampled_from([1, 2]),
    st.sampled_from(list(HashAlgorithm)),
    st.binary(max_size=64),
    st.binary(max_size=600),
)
def test_signature_round_trip(identity_type: int, alg: int, digest: bytes, value: bytes) -> None:
    signature = security.Signature(
        security.SignatureAndHashAlgorithm(4, 3), SignerIdentity(identity_type, alg, digest), value
    )
    encoded = security.encode_signature(signature)
    assert security.decode_signature(encoded) == (signature, len(encoded))


# -- certificate parsing fuzz --------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=400))
def test_parse_certificate_random_bytes(data: bytes) -> None:
    with pytest.raises(CertificateError):
        security.parse_certificate(data)


@pytest.fixture(scope="module")
def sample_der(multi: Signer) -> bytes:
    return multi.der


@FUZZ
@given(data=st.data())
def test_parse_certificate_mutated(sample_der: bytes, data: st.DataObject) -> None:
    der = bytearray(sample_der)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(der) - 1))
        der[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(der)))
    try:
        cert = security.parse_certificate(bytes(der[:cut]))
    except CertificateError:
        return
    # What parses must also be safe to read.
    security.node_ids_from_certificate(cert, OVERLAY)
    security.user_name_from_certificate(cert)


@FUZZ
@given(data=st.data())
def test_verify_with_mutated_bucket_raises_only_signature_error(
    ca: tuple[security.PrivateKey, x509.Certificate],
    multi: Signer,
    data: st.DataObject,
) -> None:
    der = bytearray(multi.der)
    for _ in range(data.draw(st.integers(1, 3))):
        der[data.draw(st.integers(0, len(der) - 1))] ^= data.draw(st.integers(1, 255))
    if bytes(der) == multi.der:  # two flips of one byte cancelled out
        return
    signature = multi.sign(DATA, SignerIdentityType.CERT_HASH)
    extra = data.draw(st.lists(st.binary(max_size=50), max_size=3))
    with pytest.raises(SignatureError):
        verifier(ca[1]).verify(DATA, signature, [bytes(der), *extra])


# -- PEM files --------------------------------------------------------------------------------


def test_pem_round_trip_and_private_key_mode(tmp_path: Path, multi: Signer) -> None:
    key_path = tmp_path / "node.key"
    key_path.write_text("old")
    key_path.chmod(0o644)
    security.save_private_key(key_path, multi.key)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    loaded = security.load_private_key(key_path)
    assert loaded.private_numbers() == multi.key.private_numbers()
    cert_path = tmp_path / "node.pem"
    security.save_certificates(cert_path, [multi.cert])
    assert security.load_certificate(cert_path) == multi.cert
    (tmp_path / "junk").write_text("junk")
    with pytest.raises(CertificateError):
        security.load_private_key(tmp_path / "junk")
    with pytest.raises(CertificateError):
        security.load_certificate(tmp_path / "junk")


# -- access control policies (§7.3) -----------------------------------------------------------


@dataclass(frozen=True)
class PolicySigner:
    """What the policies read of a verified signer (access.Signer)."""

    user_name: str | None
    node_id: bytes | None


def _signer(user: str | None = "alice", node_id: bytes | None = NODE_A) -> PolicySigner:
    return PolicySigner(user, node_id)


H = access.chord_resource_id


def test_chord_resource_id_is_truncated_sha1() -> None:
    assert H(b"alice") == hashlib.sha1(b"alice").digest()[:16]


@pytest.mark.parametrize(
    ("signer", "resource_id", "allowed"),
    [
        (_signer(), H(b"alice"), True),
        (_signer(), H(b"bob"), False),
        (_signer(user=None), H(b"alice"), False),
        (_signer(), hashlib.sha1(b"alice").digest(), False),  # not truncated: not the ID
    ],
)
def test_user_match(signer: PolicySigner, resource_id: bytes, allowed: bool) -> None:
    decision = access.check_access("USER-MATCH", resource_id, signer)
    assert decision.allowed is allowed
    assert decision.error_code == (None if allowed else access.ERROR_FORBIDDEN)


@pytest.mark.parametrize(
    ("signer", "resource_id", "allowed"),
    [
        (_signer(), H(NODE_A), True),
        (_signer(), H(NODE_B), False),  # in the certificate, but not the indicated Node-ID
        (_signer(node_id=None), H(NODE_A), False),
    ],
)
def test_node_match(signer: PolicySigner, resource_id: bytes, allowed: bool) -> None:
    assert bool(access.check_access(access.AccessPolicy.NODE_MATCH, resource_id, signer)) is allowed


@pytest.mark.parametrize(
    ("signer", "resource_id", "key", "allowed"),
    [
        (_signer(), H(b"alice"), NODE_A, True),
        (_signer(), H(b"alice"), NODE_B, False),
        (_signer(), H(b"alice"), None, False),  # not a dictionary value
        (_signer(), H(b"bob"), NODE_A, False),
        (_signer(user=None), H(b"alice"), NODE_A, False),
        (_signer(node_id=None), H(b"alice"), NODE_A, False),
    ],
)
def test_user_node_match(
    signer: PolicySigner, resource_id: bytes, key: bytes | None, allowed: bool
) -> None:
    decision = access.check_access("USER-NODE-MATCH", resource_id, signer, dictionary_key=key)
    assert decision.allowed is allowed
    assert allowed or decision.reason.startswith("USER-NODE-MATCH")


@pytest.mark.parametrize(
    ("i", "maximum", "node_id", "allowed"),
    [
        (1, 3, NODE_A, True),
        (3, 3, NODE_A, True),
        (4, 3, NODE_A, False),
        (0, 3, NODE_A, False),
        (2, 3, None, False),
        (1, None, NODE_A, False),
        (1, 0, NODE_A, False),
        (1, access.MAX_NODE_MULTIPLE + 1, NODE_A, False),
    ],
)
def test_node_multiple(i: int, maximum: int | None, node_id: bytes | None, allowed: bool) -> None:
    resource_id = H(NODE_A + struct.pack(">I", i))
    assert access.node_multiple_resource_id(NODE_A, i, H) == resource_id
    decision = access.check_access(
        "NODE-MULTIPLE", resource_id, _signer(node_id=node_id), max_node_multiple=maximum
    )
    assert decision.allowed is allowed


def test_unknown_policy_is_denied_and_require_access_raises() -> None:
    assert not access.check_access("ANYONE", H(b"alice"), _signer())
    access.require_access("USER-MATCH", H(b"alice"), _signer())
    with pytest.raises(access.AccessDenied) as info:
        access.require_access("USER-MATCH", H(b"bob"), _signer())
    assert info.value.error_code == 0x02


def test_resource_id_function_is_the_overlays() -> None:
    def sha256_trunc(name: bytes) -> bytes:
        return hashlib.sha256(name).digest()[:16]

    rid = sha256_trunc(b"alice")
    assert access.check_access("USER-MATCH", rid, _signer(), resource_id_function=sha256_trunc)
    assert not access.check_access("USER-MATCH", rid, _signer())


def test_policies_with_verified_signers(
    ca: tuple[security.PrivateKey, x509.Certificate], multi: Signer
) -> None:
    """cert_hash over a two-Node-ID certificate indicates no Node-ID (§7.3.2: "that Node-ID
    is the one indicated in the SignerIdentity"), cert_hash_node_id does."""
    v = verifier(ca[1])
    by_node = v.verify(
        DATA, multi.sign(DATA, SignerIdentityType.CERT_HASH_NODE_ID), multi.certificates
    )
    by_cert = v.verify(DATA, multi.sign(DATA, SignerIdentityType.CERT_HASH), multi.certificates)
    assert access.check_access("NODE-MATCH", H(NODE_B), by_node)
    assert not access.check_access("NODE-MATCH", H(NODE_B), by_cert)
    assert access.check_access("USER-MATCH", H(b"bob"), by_cert)


# -- p2pcdn ca ------------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_ca_init_and_issue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca_dir = tmp_path / "ca"
    code, out, _ = run_cli(capsys, "ca", "init", "--overlay", OVERLAY, "--dir", str(ca_dir))
    assert code == 0 and out.strip() == str(ca_dir / "ca.pem")
    assert stat.S_IMODE((ca_dir / "ca.key").stat().st_mode) == 0o600
    ca_cert = security.load_certificate(ca_dir / "ca.pem")
    assert security.overlay_of_ca(ca_cert) == OVERLAY

    prefix = tmp_path / "nodes" / "alice"
    argv = ["ca", "issue", "--dir", str(ca_dir), "--user", "alice@lab.p2pcdn"]
    code, out, _ = run_cli(capsys, *argv, "--random-node-ids", "2", "--out", str(prefix))
    assert code == 0
    node_ids = [bytes.fromhex(line) for line in out.split()]
    assert len(node_ids) == 2 and all(len(n) == 16 for n in node_ids)
    key = security.load_private_key(prefix.with_name("alice.key"))
    cert = security.load_certificate(prefix.with_name("alice.pem"))
    assert stat.S_IMODE(prefix.with_name("alice.key").stat().st_mode) == 0o600
    assert security.node_ids_from_certificate(cert, OVERLAY) == node_ids
    signer = Signer(key, cert, node_ids[1])
    verified = Verifier([ca_cert], OVERLAY).verify(
        DATA, signer.sign(DATA, SignerIdentityType.CERT_HASH_NODE_ID), [signer.der]
    )
    assert verified.node_id == node_ids[1] and verified.user_name == "alice@lab.p2pcdn"

    # §11.3: a returning user gets the same Node-IDs.
    code, out2, _ = run_cli(capsys, *argv, "--random-node-ids", "2", "--out", str(prefix) + "2")
    assert code == 0 and out2 == out
    registry = json.loads((ca_dir / "nodes.json").read_text())
    assert registry["alice@lab.p2pcdn"] == [n.hex() for n in node_ids]

    # Explicit Node-IDs, RSA keys; another user's Node-ID is refused.
    bob = ["ca", "issue", "--dir", str(ca_dir), "--user", "bob", "--key-type", "rsa-2048"]
    code, out, _ = run_cli(capsys, *bob, "--node-id", NODE_A.hex(), "--out", str(tmp_path / "b"))
    assert code == 0 and out.split() == [NODE_A.hex()]
    assert isinstance(security.load_private_key(tmp_path / "b.key"), rsa.RSAPrivateKey)
    eve = ["ca", "issue", "--dir", str(ca_dir), "--user", "eve", "--node-id", NODE_A.hex()]
    code, _, err = run_cli(capsys, *eve, "--out", str(tmp_path / "e"))
    assert code == cli.EXIT_USAGE and "already issued to bob" in err
    assert not (tmp_path / "e.key").exists()


def test_cli_ca_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca_dir = tmp_path / "ca"
    assert run_cli(capsys, "ca", "init", "--overlay", OVERLAY, "--dir", str(ca_dir))[0] == 0
    code, _, err = run_cli(capsys, "ca", "init", "--overlay", OVERLAY, "--dir", str(ca_dir))
    assert code == cli.EXIT_FAILURE and "refusing" in err
    code, _, err = run_cli(capsys, "ca", "init", "--overlay", "bad/name", "--dir", str(tmp_path))
    assert code == cli.EXIT_USAGE and "overlay name" in err
    issue = ["ca", "issue", "--dir", str(ca_dir), "--out", str(tmp_path / "x")]
    code, _, err = run_cli(capsys, *issue, "--user", "bad name")
    assert code == cli.EXIT_USAGE and "user name" in err
    code, _, err = run_cli(capsys, *issue, "--user", "u", "--node-id", "abc")
    assert code == cli.EXIT_USAGE
    code, _, err = run_cli(capsys, *issue, "--user", "u", "--node-id", "00" * 8)
    assert code == cli.EXIT_USAGE and "16-20" in err
    code, _, err = run_cli(capsys, *issue, "--user", "u", "--random-node-ids", "0")
    assert code == cli.EXIT_USAGE
    code, _, err = run_cli(
        capsys,
        "ca",
        "issue",
        "--dir",
        str(tmp_path / "none"),
        "--user",
        "u",
        "--out",
        str(tmp_path / "y"),
    )
    assert code == cli.EXIT_FAILURE
    assert not (tmp_path / "x.key").exists()
