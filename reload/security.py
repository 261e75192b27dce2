"""RELOAD security (RFC 6940 §6.3.4, §7.1, §11.3): certificates, signatures, their verification.

This module is the credential side of RELOAD, working on bytes so it does not depend on the
message codec:

- **Enrollment** (§11.3): an overlay CA (:func:`create_overlay_ca`) issues node certificates
  (:func:`issue_node_certificate`) whose subjectAltName carries one RELOAD URI per Node-ID and
  the user name as an rfc822Name; :func:`node_ids_from_certificate` and
  :func:`user_name_from_certificate` read them back. Self-signed mode (§11.3.1) derives the
  Node-ID from the public key (:func:`self_signed_node`, :func:`check_self_signed`).
- **Signing** (§6.3.4, §7.1): a :class:`Signer` turns the signature input prefix the caller
  built (``overlay ‖ transaction_id ‖ MessageContents`` for a message, ``resource_id ‖ kind ‖
  storage_time ‖ StoredDataValue`` for StoredData) into a :class:`Signature`; the SignerIdentity
  it picks is appended to the input before signing, as §6.3.4 requires.
- **Verification**: a :class:`Verifier` finds the signer's certificate by its SignerIdentity
  hash in a bounded :class:`CertificateCache` fed from the security block's certificate bucket,
  checks the chain to the configuration's root-cert list (or the self-signed rule), the validity
  period at the injected time, the Node-ID binding and the signature, and returns a
  :class:`VerifiedSigner` or raises :class:`SignatureError`. It remembers (bounded) the
  signatures it has checked, so a value verified again costs a SHA-256 instead of a public-key
  operation; the chain, validity and Node-ID checks still run on every call.

The wire structures the signature input needs — SignerIdentity and Signature — are encoded by
:mod:`reload.wire` (:func:`encode_signer_identity` and :func:`encode_signature` are re-exported
from there, its struct fast path, byte-equal to the normative Construct definitions;
:func:`decode_signature` reads one Signature off the front of a buffer with them). A
:class:`Signer` encodes its SignerIdentity once, not on every signature.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import os
import re
import secrets
import struct
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from construct import ConstructError
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from reload import wire
from reload.messages import (
    HashAlgorithm,
    ReloadDecodeError,
    ReloadEncodeError,
    Signature,
    SignatureAlgorithm,
    SignatureAndHashAlgorithm,
    SignerIdentity,
    SignerIdentityType,
)
from reload.wire import encode_signature as encode_signature
from reload.wire import encode_signer_identity as encode_signer_identity

__all__ = [
    "CertificateCache",
    "CertificateError",
    "HashAlgorithm",
    "SecurityError",
    "Signature",
    "SignatureAlgorithm",
    "SignatureAndHashAlgorithm",
    "SignatureError",
    "Signer",
    "SignerIdentity",
    "SignerIdentityType",
    "VerifiedSigner",
    "Verifier",
    "check_self_signed",
    "create_overlay_ca",
    "issue_node_certificate",
    "node_ids_from_certificate",
    "self_signed_node",
    "user_name_from_certificate",
]

# -- errors -------------------------------------------------------------------------------


class SecurityError(Exception):
    """Base class of this module's errors."""


class CertificateError(SecurityError, ValueError):
    """A certificate, key or name that cannot be parsed, issued or used as asked."""


class SignatureError(SecurityError):
    """A signature that does not authenticate its data (§6.3.4: drop the message).

    ``reason`` is a short machine-readable token (``unknown-signer``, ``bad-chain``,
    ``expired``, ``bad-signature``, ``node-id-mismatch``, ``untrusted``, ``malformed``,
    ``unsupported-algorithm``, ``self-signed-mismatch``); the message says more for the log.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


# -- registries -------------------------------------------------------------------------
# HashAlgorithm, SignatureAlgorithm (TLS codes) and SignerIdentityType (§6.3.4) are the message
# model's (reload.messages), re-exported here so callers of this module need only it.

#: RFC 6091 CertificateType of a GenericCertificate carrying a DER X.509 certificate.
CERTIFICATE_TYPE_X509: Final = 0

#: Hash functions this module computes for SignerIdentity and self-signed Node-IDs. MD5 and
#: SHA-224 are left out on purpose: nothing in RELOAD needs them.
_HASHLIB_NAMES: Final[dict[HashAlgorithm, str]] = {
    HashAlgorithm.SHA1: "sha1",
    HashAlgorithm.SHA256: "sha256",
    HashAlgorithm.SHA384: "sha384",
    HashAlgorithm.SHA512: "sha512",
}
_BY_NAME: Final[dict[str, HashAlgorithm]] = {name: alg for alg, name in _HASHLIB_NAMES.items()}
_CODES: Final = frozenset(int(alg) for alg in HashAlgorithm)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

KEY_TYPES: Final = ("ecdsa-p256", "rsa-2048")

#: §5.1 / §11: node-id-length is 16 to 20 bytes.
MIN_NODE_ID_LENGTH: Final = 16
MAX_NODE_ID_LENGTH: Final = 20
#: Limits on what one certificate, one bucket and one chain may hold (DoS bounds).
MAX_CERTIFICATE_SIZE: Final = 0xFFFF  # certificate<0..2^16-1> (§6.3.4)
MAX_CERTIFICATES_PER_BLOCK: Final = 16
MAX_NODE_IDS_PER_CERTIFICATE: Final = 64
MAX_CHAIN_DEPTH: Final = 4
MAX_SIGNATURE_SIZE: Final = 0xFFFF  # signature_value<0..2^16-1>
#: Signatures a :class:`Verifier` remembers having checked (a bounded LRU), and the largest
#: signature input it remembers: the key holds a SHA-256 of the input, cheap next to an
#: ECDSA or RSA verification up to this size.
VERIFIED_SIGNATURES_CACHED: Final = 4096
MAX_CACHED_SIGNATURE_INPUT: Final = 16384
#: certificates<0..2^16-1> of a SecurityBlock holding none (§6.3.4): :func:`decode_signature`.
_EMPTY_CERTIFICATE_BUCKET: Final = b"\x00\x00"

DEFAULT_CA_VALIDITY: Final = datetime.timedelta(days=3650)
DEFAULT_NODE_VALIDITY: Final = datetime.timedelta(days=365)


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def hash_bytes(algorithm: int, data: bytes) -> bytes:
    """``H(data)`` for a TLS hash code; :class:`CertificateError` for one we do not compute."""
    name = _HASHLIB_NAMES.get(HashAlgorithm(algorithm)) if algorithm in _CODES else None
    if name is None:
        raise CertificateError(f"unsupported hash algorithm {algorithm}")
    return hashlib.new(name, data).digest()


def hash_algorithm_by_name(name: str) -> HashAlgorithm:
    """``"sha1"``/``"sha256"``/… (the configuration's digest attribute) to the TLS code."""
    try:
        return _BY_NAME[name.lower()]
    except KeyError:
        raise CertificateError(f"unsupported digest {name!r}") from None


# -- keys and names ---------------------------------------------------------------------------


def generate_private_key(key_type: str = "ecdsa-p256") -> PrivateKey:
    """A fresh key: ECDSA P-256 or RSA 2048 (the two signature algorithms we sign with)."""
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise CertificateError(f"unknown key type {key_type!r} (expected one of {KEY_TYPES})")


# reg-name of RFC 3986 restricted to what a DNS-like overlay name uses (§14.15: overlay).
_OVERLAY_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
# §11.3: only legal characters in the user name (no NUL, no spaces, no controls); an
# rfc822Name is an IA5String, so ASCII only.
_USER_RE = re.compile(r"^[A-Za-z0-9._%+-]{1,64}(?:@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}))?$")


def check_overlay_name(overlay: str) -> str:
    if not _OVERLAY_RE.match(overlay):
        raise CertificateError(f"invalid overlay name {overlay!r}")
    return overlay


def check_user_name(user_name: str) -> str:
    if not _USER_RE.match(user_name):
        raise CertificateError(f"invalid user name {user_name!r}")
    return user_name


def _check_node_ids(node_ids: Sequence[bytes]) -> None:
    if not node_ids:
        raise CertificateError("a node certificate needs at least one Node-ID")
    if len(node_ids) > MAX_NODE_IDS_PER_CERTIFICATE:
        raise CertificateError(f"more than {MAX_NODE_IDS_PER_CERTIFICATE} Node-IDs")
    lengths = {len(n) for n in node_ids}
    if len(lengths) != 1:
        raise CertificateError("Node-IDs of one overlay have one length (§5.1)")
    (length,) = lengths
    if not MIN_NODE_ID_LENGTH <= length <= MAX_NODE_ID_LENGTH:
        raise CertificateError(f"Node-ID length {length} outside 16-20 bytes")
    if len(set(node_ids)) != len(node_ids):
        raise CertificateError("duplicate Node-ID")


# -- RELOAD URIs (§14.15) -------------------------------------------------------------------


def node_id_uri(node_id: bytes, overlay: str) -> str:
    """The §11.3 SAN URI of a Node-ID: ``reload://<Destination List hex>@<overlay>/``.

    §14.15 makes the destination a hex-encoded Destination List; §11.3 requires a list with a
    single ``node`` entry, i.e. type 1, length, Node-ID (§6.3.2.2). So a 16-byte Node-ID
    ``ab…`` gives ``reload://0110ab…@overlay/``.
    """
    check_overlay_name(overlay)
    destination = bytes((1, len(node_id))) + node_id
    return f"reload://{destination.hex()}@{overlay}/"


_URI_RE = re.compile(r"^reload://([0-9A-Fa-f]+)@([^/@]+)/$")


def node_id_from_uri(uri: str, overlay: str, node_id_length: int = 16) -> bytes | None:
    """The Node-ID a §11.3 SAN URI names for ``overlay``, or None if it names none.

    Accepts the §14.15 form (a one-entry Destination List, see :func:`node_id_uri`) and, to be
    liberal in what we accept, the bare Node-ID hex some implementations write. With the
    overlay's ``node_id_length`` the two never collide (their lengths differ by two bytes).
    """
    match = _URI_RE.match(uri)
    if match is None or match.group(2).lower() != overlay.lower():
        return None
    raw = bytes.fromhex(match.group(1)) if len(match.group(1)) % 2 == 0 else b""
    if len(raw) == node_id_length + 2 and raw[0] == 1 and raw[1] == node_id_length:
        return raw[2:]
    if len(raw) == node_id_length:
        return raw
    return None


# -- certificates -----------------------------------------------------------------------------


def parse_certificate(der: bytes) -> x509.Certificate:
    """A DER X.509 certificate from a GenericCertificate; :class:`CertificateError` if not."""
    if not isinstance(der, bytes | bytearray | memoryview):
        raise CertificateError("certificate must be bytes")
    if len(der) > MAX_CERTIFICATE_SIZE:
        raise CertificateError(f"certificate longer than {MAX_CERTIFICATE_SIZE} bytes")
    try:
        cert = x509.load_der_x509_certificate(bytes(der))
        # Force the lazily parsed parts we rely on, so garbage fails here and not later.
        cert.public_key()
        _ = cert.extensions
    except (ValueError, TypeError, x509.UnsupportedGeneralNameType) as exc:
        raise CertificateError(f"not a DER X.509 certificate: {exc}") from None
    except Exception as exc:  # the Rust parser may raise its own types on odd input
        raise CertificateError(f"not a DER X.509 certificate: {type(exc).__name__}") from None
    return cert


def certificate_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _signing_hash(key: PrivateKey) -> hashes.SHA256:
    # Certificates are signed with SHA-256 whatever the key (RSA PKCS#1 v1.5 or ECDSA).
    del key
    return hashes.SHA256()


def create_overlay_ca(
    overlay_name: str,
    key_type: str = "ecdsa-p256",
    *,
    valid_for: datetime.timedelta = DEFAULT_CA_VALIDITY,
    now: datetime.datetime | None = None,
) -> tuple[PrivateKey, x509.Certificate]:
    """The enrollment CA of an overlay (§11.3): a self-signed root for the root-cert list.

    Its subject names the overlay; basicConstraints CA with pathLen 0, because node
    certificates are issued directly and a node certificate must never sign another.
    """
    check_overlay_name(overlay_name)
    key = generate_private_key(key_type)
    start = (now or _utcnow()) - datetime.timedelta(minutes=5)  # tolerate clock skew
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"RELOAD overlay CA {overlay_name}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, overlay_name),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, _signing_hash(key))
    )
    return key, cert


def _node_extensions(
    builder: x509.CertificateBuilder,
    public_key: PublicKey,
    node_ids: Sequence[bytes],
    user_name: str,
    overlay: str,
) -> x509.CertificateBuilder:
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(node_id_uri(n, overlay)) for n in node_ids
    ]
    names.append(x509.RFC822Name(user_name))
    return (
        builder.public_key(public_key)
        .serial_number(x509.random_serial_number())
        # §11.3: the subject is empty, so RFC 5280 §4.2.1.6 makes the SAN critical.
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName(names), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement=isinstance(public_key, ec.EllipticCurvePublicKey),
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        # Overlay links are mutually authenticated TLS/DTLS (§6.6): both roles.
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _check_public_key(public_key: object) -> PublicKey:
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < 2048:
            raise CertificateError("RSA keys must have at least 2048 bits")
        return public_key
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, ec.SECP256R1):
            raise CertificateError("ECDSA keys must be on P-256")
        return public_key
    raise CertificateError(f"unsupported key type {type(public_key).__name__}")


def issue_node_certificate(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    public_key: PublicKey,
    node_ids: Sequence[bytes],
    user_name: str,
    overlay: str,
    *,
    valid_for: datetime.timedelta = DEFAULT_NODE_VALIDITY,
    now: datetime.datetime | None = None,
) -> x509.Certificate:
    """A node certificate (§11.3): empty subject, SAN = one RELOAD URI per Node-ID + the user
    name as rfc822Name, nothing else. Raises :class:`CertificateError` on bad input."""
    _check_public_key(public_key)
    _check_node_ids(node_ids)
    check_user_name(user_name)
    check_overlay_name(overlay)
    start = (now or _utcnow()) - datetime.timedelta(minutes=5)
    end = min(start + valid_for, ca_cert.not_valid_after_utc)
    if end <= start:
        raise CertificateError("the CA certificate has expired")
    builder = (
        x509.CertificateBuilder()
        .issuer_name(ca_cert.subject)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    builder = _node_extensions(builder, public_key, node_ids, user_name, overlay)
    return builder.sign(ca_key, _signing_hash(ca_key))


def overlay_of_ca(ca_cert: x509.Certificate) -> str:
    """The overlay name :func:`create_overlay_ca` put in the CA's organizationName."""
    names = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str):
        raise CertificateError("the CA certificate does not name an overlay")
    return check_overlay_name(names[0].value)


def random_node_ids(count: int, node_id_length: int = 16) -> list[bytes]:
    """Cryptographically random Node-IDs, as §11.3 requires of an enrollment server."""
    if not 1 <= count <= MAX_NODE_IDS_PER_CERTIFICATE:
        raise CertificateError(f"Node-ID count must be 1-{MAX_NODE_IDS_PER_CERTIFICATE}")
    if not MIN_NODE_ID_LENGTH <= node_id_length <= MAX_NODE_ID_LENGTH:
        raise CertificateError("Node-ID length must be 16-20 bytes")
    ids: set[bytes] = set()
    while len(ids) < count:
        ids.add(secrets.token_bytes(node_id_length))
    return sorted(ids)


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:
        raise CertificateError(f"bad extensions: {exc}") from None


def node_ids_from_certificate(
    cert: x509.Certificate, overlay: str, node_id_length: int = 16
) -> list[bytes]:
    """The Node-IDs the certificate's SAN URIs give for ``overlay``, in certificate order."""
    san = _san(cert)
    if san is None:
        return []
    found: list[bytes] = []
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        node_id = node_id_from_uri(uri, overlay, node_id_length)
        if node_id is not None and node_id not in found:
            found.append(node_id)
    return found[:MAX_NODE_IDS_PER_CERTIFICATE]


def user_name_from_certificate(cert: x509.Certificate) -> str | None:
    """The §11.3 user name (the single rfc822Name of the SAN), or None."""
    san = _san(cert)
    if san is None:
        return None
    names = san.get_values_for_type(x509.RFC822Name)
    return names[0] if len(names) == 1 else None


# -- self-signed mode (§11.3.1) ---------------------------------------------------------------


def _spki(public_key: PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def self_signed_node_ids(
    public_key: PublicKey, digest: str = "sha256", node_id_length: int = 16, count: int = 1
) -> list[bytes]:
    """§11.3.1: the high-order bytes of digest(SubjectPublicKeyInfo); with several Node-IDs,
    of digest(i ‖ SubjectPublicKeyInfo) for i = 1…count as a 4-byte big-endian integer."""
    algorithm = hash_algorithm_by_name(digest)
    spki = _spki(public_key)
    if len(hash_bytes(algorithm, b"")) < node_id_length:
        raise CertificateError(f"{digest} is too short for {node_id_length}-byte Node-IDs")
    if count == 1:
        return [hash_bytes(algorithm, spki)[:node_id_length]]
    return [
        hash_bytes(algorithm, struct.pack(">I", i) + spki)[:node_id_length]
        for i in range(1, count + 1)
    ]


def self_signed_node(
    overlay: str,
    digest: str = "sha256",
    node_id_length: int = 16,
    *,
    user_name: str | None = None,
    key_type: str = "ecdsa-p256",
    valid_for: datetime.timedelta = DEFAULT_NODE_VALIDITY,
    now: datetime.datetime | None = None,
) -> tuple[PrivateKey, x509.Certificate, bytes]:
    """A self-generated credential (§11.3.1): key, self-signed certificate, Node-ID.

    The user name may be anything (§11.3.1); by default it is ``<Node-ID hex>@<overlay>``.
    """
    key = generate_private_key(key_type)
    (node_id,) = self_signed_node_ids(key.public_key(), digest, node_id_length)
    name = user_name if user_name is not None else f"{node_id.hex()}@{overlay}"
    check_user_name(name)
    start = (now or _utcnow()) - datetime.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .issuer_name(x509.Name([]))
        .not_valid_before(start)
        .not_valid_after(start + valid_for)
    )
    builder = _node_extensions(builder, key.public_key(), [node_id], name, overlay)
    return key, builder.sign(key, _signing_hash(key)), node_id


def _is_self_issued(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_self_signed(
    cert: x509.Certificate,
    node_id: bytes,
    digest: str = "sha256",
    overlay: str | None = None,
) -> None:
    """§11.3.1: a self-signed certificate's Node-ID must match its public key ("this prevents
    Node-ID theft"). Raises :class:`SignatureError` (``self-signed-mismatch``) if it does not;
    with ``overlay``, the Node-ID must also be one the certificate's SAN names."""
    if not _is_self_issued(cert):
        raise SignatureError("self-signed-mismatch", "certificate is not validly self-signed")
    try:
        public_key = _check_public_key(cert.public_key())
        if overlay is not None:
            in_cert = node_ids_from_certificate(cert, overlay, len(node_id))
            if node_id not in in_cert:
                raise SignatureError("self-signed-mismatch", "Node-ID not in the certificate")
            count = len(in_cert)
        else:
            count = 1
        derived = self_signed_node_ids(public_key, digest, len(node_id), count)
    except CertificateError as exc:
        raise SignatureError("self-signed-mismatch", str(exc)) from None
    if node_id not in derived:
        raise SignatureError("self-signed-mismatch", "Node-ID does not match the public key")


# -- PEM files ------------------------------------------------------------------------------


def save_private_key(path: Path, key: PrivateKey) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM, readable by the owner only (0600)."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
        os.write(fd, data)
    finally:
        os.close(fd)


def load_private_key(path: Path) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"{path}: not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{path}: unsupported key type {type(key).__name__}")
    return key


def save_certificates(path: Path, certs: Iterable[x509.Certificate]) -> None:
    Path(path).write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))


def load_certificates(path: Path) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
    except ValueError as exc:
        raise CertificateError(f"{path}: not PEM certificates: {exc}") from None
    return certs


def load_certificate(path: Path) -> x509.Certificate:
    """The first certificate of a PEM file."""
    return load_certificates(path)[0]


# -- SignerIdentity and Signature (§6.3.4) ----------------------------------------------------


def decode_signature(data: bytes) -> tuple[Signature, int]:
    """Parse a Signature (§6.3.4) at the start of ``data``: (signature, bytes consumed).

    The bytes are read by :data:`reload.wire.SIGNATURE`; the model comes from
    :func:`reload.wire.decode_security_block` over an empty certificate bucket and exactly
    those bytes, so this module holds no second definition of the structure. Raises
    :class:`SignatureError` (``malformed``) for anything that is not one.
    """
    stream = io.BytesIO(bytes(data))
    try:
        wire.SIGNATURE.parse_stream(stream)
        used = stream.tell()
        block = wire.decode_security_block(_EMPTY_CERTIFICATE_BUCKET + bytes(data[:used]))
    except (ConstructError, ReloadDecodeError) as exc:
        raise SignatureError("malformed", str(exc)) from None
    return block.signature, used


# -- signature inputs (§6.3.4, §7.1) --------------------------------------------------------


def message_signature_prefix(overlay: int, transaction_id: int, message_contents: bytes) -> bytes:
    """``overlay ‖ transaction_id ‖ MessageContents`` (§6.3.4); :meth:`Signer.sign` appends
    the SignerIdentity. ``overlay`` and ``transaction_id`` are the forwarding header's
    uint32 and uint64."""
    return struct.pack(">IQ", overlay, transaction_id) + message_contents


def stored_data_signature_prefix(
    resource_id: bytes, kind: int, storage_time: int, stored_data_value: bytes
) -> bytes:
    """``resource_id ‖ kind ‖ storage_time ‖ StoredDataValue`` (§7.1).

    Each value is taken in its wire encoding: the Resource-ID as ResourceId
    (``opaque<0..2^8-1>``, so with its length byte), the Kind-ID as uint32, storage_time as
    uint64; ``stored_data_value`` is the encoded StoredDataValue of the data model.
    """
    if len(resource_id) > 0xFF:
        raise SecurityError("Resource-ID longer than 255 bytes")
    return (
        bytes((len(resource_id),)) + resource_id + struct.pack(">IQ", kind, storage_time)
    ) + stored_data_value


# -- signing -------------------------------------------------------------------------------


class Signer:
    """A node's credential: private key, certificate and the Node-ID it signs as."""

    def __init__(
        self,
        key: PrivateKey,
        cert: x509.Certificate,
        node_id: bytes,
        *,
        hash_alg: HashAlgorithm = HashAlgorithm.SHA256,
    ) -> None:
        if _spki(key.public_key()) != _spki(_check_public_key(cert.public_key())):
            raise CertificateError("the private key does not match the certificate")
        if hash_alg not in _HASHLIB_NAMES:
            raise CertificateError(f"unsupported hash algorithm {int(hash_alg)}")
        self.key = key
        self.cert = cert
        self.node_id = node_id
        self.hash_alg = hash_alg
        self.der = certificate_der(cert)
        # SignerIdentity and its encoding per type: the certificate and Node-ID are fixed
        self._identities: dict[int, tuple[SignerIdentity, bytes]] = {}

    def identity(self, identity_type: SignerIdentityType) -> SignerIdentity:
        """§6.3.4: cert_hash = H(certificate), cert_hash_node_id = H(Node-ID ‖ certificate)."""
        return self._identity(identity_type)[0]

    def _identity(self, identity_type: SignerIdentityType) -> tuple[SignerIdentity, bytes]:
        cached = self._identities.get(identity_type)
        if cached is None:
            identity = self._compute_identity(identity_type)
            cached = self._identities[identity_type] = (
                identity,
                encode_signer_identity(identity),
            )
        return cached

    def _compute_identity(self, identity_type: SignerIdentityType) -> SignerIdentity:
        if identity_type == SignerIdentityType.CERT_HASH:
            return SignerIdentity(identity_type, self.hash_alg, hash_bytes(self.hash_alg, self.der))
        if identity_type == SignerIdentityType.CERT_HASH_NODE_ID:
            digest = hash_bytes(self.hash_alg, self.node_id + self.der)
            return SignerIdentity(identity_type, self.hash_alg, digest)
        return SignerIdentity(SignerIdentityType.NONE)

    def sign(
        self,
        data: bytes,
        identity_type: SignerIdentityType = SignerIdentityType.CERT_HASH,
    ) -> Signature:
        """Sign ``data ‖ SignerIdentity`` (§6.3.4, §7.1): ``data`` is the input up to, not
        including, the SignerIdentity (see :func:`message_signature_prefix`)."""
        identity, encoded = self._identity(SignerIdentityType(identity_type))
        to_sign = data + encoded
        if isinstance(self.key, rsa.RSAPrivateKey):
            # RSASSA-PKCS1-v1_5 with SHA-256, the mandatory algorithm (§6.3.4).
            value = self.key.sign(to_sign, padding.PKCS1v15(), hashes.SHA256())
            algorithm = SignatureAlgorithm.RSA
        else:
            # ECDSA P-256/SHA-256; the value is the DER ECDSA-Sig-Value, as TLS carries it.
            value = self.key.sign(to_sign, ec.ECDSA(hashes.SHA256()))
            algorithm = SignatureAlgorithm.ECDSA
        return Signature(
            SignatureAndHashAlgorithm(HashAlgorithm.SHA256, algorithm), identity, value
        )

    @property
    def certificates(self) -> list[bytes]:
        """The DER certificates to put in the security block's bucket for this signer."""
        return [self.der]


# -- certificate cache ------------------------------------------------------------------------


@dataclass
class CachedCertificate:
    """A parsed certificate with what verification looks up."""

    der: bytes
    cert: x509.Certificate
    node_ids: list[bytes]
    user_name: str | None
    #: DER of the issuer whose signature on this certificate was already checked.
    verified_issuer: bytes | None = None
    hashes: dict[HashAlgorithm, bytes] = field(default_factory=dict)
    #: What the chain check reads of the certificate, parsed once (:func:`_facts_of`).
    facts: CertificateFacts | None = None


@dataclass(frozen=True, slots=True)
class CertificateFacts:
    """The extensions and validity period a chain check reads (§11.3, PKIX), read once per
    certificate rather than on every signature."""

    is_ca: bool
    path_length: int | None
    #: KeyUsage present without digitalSignature: the key may not sign RELOAD data.
    signing_forbidden: bool
    not_before: datetime.datetime
    not_after: datetime.datetime


def _facts_of(entry: CachedCertificate) -> CertificateFacts:
    facts = entry.facts
    if facts is None:
        cert = entry.cert
        try:
            usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
            signing_forbidden = not usage.digital_signature
        except x509.ExtensionNotFound:
            signing_forbidden = False
        facts = entry.facts = CertificateFacts(
            _is_ca(cert),
            _path_length(cert),
            signing_forbidden,
            cert.not_valid_before_utc,
            cert.not_valid_after_utc,
        )
    return facts


class CertificateCache:
    """A bounded, least-recently-used store of certificates keyed by their hashes.

    Fed from each security block's certificate bucket (§6.3.4), it lets a SignerIdentity find
    its certificate by ``H(cert)`` or ``H(Node-ID ‖ cert)`` for every hash we compute. A flood
    of certificates only evicts old entries: ``max_entries`` bounds memory.
    """

    def __init__(self, overlay: str, node_id_length: int = 16, max_entries: int = 1024) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self.overlay = overlay
        self.node_id_length = node_id_length
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, CachedCertificate] = OrderedDict()
        self._index: dict[tuple[int, int, bytes], bytes] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, der: object) -> bool:
        return isinstance(der, bytes) and der in self._entries

    def add(self, der: bytes) -> CachedCertificate:
        """Parse and index ``der`` (or refresh it); :class:`CertificateError` if unparsable."""
        der = bytes(der)
        entry = self._entries.get(der)
        if entry is not None:
            self._entries.move_to_end(der)
            return entry
        cert = parse_certificate(der)
        entry = CachedCertificate(
            der,
            cert,
            node_ids_from_certificate(cert, self.overlay, self.node_id_length),
            user_name_from_certificate(cert),
        )
        for alg in _HASHLIB_NAMES:
            digest = hash_bytes(alg, der)
            entry.hashes[alg] = digest
            self._index[(SignerIdentityType.CERT_HASH, alg, digest)] = der
            for node_id in entry.node_ids:
                key = (SignerIdentityType.CERT_HASH_NODE_ID, alg, hash_bytes(alg, node_id + der))
                self._index[key] = der
        self._entries[der] = entry
        while len(self._entries) > self.max_entries:
            _, old = self._entries.popitem(last=False)
            self._unindex(old)
        return entry

    def _unindex(self, entry: CachedCertificate) -> None:
        stale = [k for k, v in self._index.items() if v == entry.der]
        for k in stale:
            del self._index[k]

    def find(self, identity: SignerIdentity) -> tuple[CachedCertificate, bytes | None] | None:
        """The certificate a SignerIdentity names and, for cert_hash_node_id, the Node-ID."""
        der = self._index.get((identity.identity_type, identity.hash_alg, identity.hash))
        if der is None:
            return None
        entry = self._entries[der]
        self._entries.move_to_end(der)
        if identity.identity_type == SignerIdentityType.CERT_HASH_NODE_ID:
            for node_id in entry.node_ids:
                if hash_bytes(identity.hash_alg, node_id + der) == identity.hash:
                    return entry, node_id
            return None
        return entry, None

    def get(self, der: bytes) -> CachedCertificate | None:
        return self._entries.get(der)

    def by_subject(self, name: x509.Name) -> list[CachedCertificate]:
        return [e for e in self._entries.values() if e.cert.subject == name]


# -- verification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedSigner:
    """Who signed, once :meth:`Verifier.verify` accepted the signature.

    ``node_id`` is the Node-ID the SignerIdentity indicates (§7.3): the hashed one for
    cert_hash_node_id, the certificate's only Node-ID for cert_hash; None when the certificate
    has several and the identity did not say which.
    """

    node_ids: tuple[bytes, ...]
    user_name: str | None
    cert: x509.Certificate
    node_id: bytes | None
    identity_type: int
    self_signed: bool = False


class Verifier:
    """Checks signatures against the overlay's trust roots (§6.3.4, §7.1, §11.3)."""

    def __init__(
        self,
        trust_roots: Sequence[x509.Certificate],
        overlay: str,
        self_signed_permitted: bool = False,
        *,
        self_signed_digest: str = "sha256",
        node_id_length: int = 16,
        cache: CertificateCache | None = None,
        verified_cache_size: int = VERIFIED_SIGNATURES_CACHED,
    ) -> None:
        self.overlay = overlay
        self.self_signed_permitted = self_signed_permitted
        self.self_signed_digest = self_signed_digest
        self.node_id_length = node_id_length
        self.cache = cache if cache is not None else CertificateCache(overlay, node_id_length)
        self._roots = {certificate_der(c): c for c in trust_roots}
        self._root_entries = {
            der: CachedCertificate(der, c, [], None) for der, c in self._roots.items()
        }
        # (certificate DER, signature algorithm, signature_value, SHA-256 of the input) of
        # signatures that verified: a value fetched again (a tracker's peer list, §7.4.2.2)
        # is not verified again. Only the cryptographic check is skipped; the chain,
        # validity at ``now`` and Node-ID checks run every time.
        self._verified: OrderedDict[tuple[bytes, int, bytes, bytes], None] = OrderedDict()
        self._verified_cache_size = verified_cache_size

    def verify(
        self,
        data: bytes,
        signature: Signature,
        certificates: Sequence[bytes] = (),
        *,
        now: datetime.datetime | None = None,
    ) -> VerifiedSigner:
        """Verify ``signature`` over ``data ‖ SignerIdentity`` (``data`` as for
        :meth:`Signer.sign`). ``certificates`` is the security block's bucket (DER); ``now``
        the time the validity periods are checked at (§7.1: "the current time MUST be compared
        to the certificate validity period"). Raises :class:`SignatureError`."""
        moment = now or _utcnow()
        if len(certificates) > MAX_CERTIFICATES_PER_BLOCK:
            raise SignatureError("malformed", "too many certificates in the security block")
        bucket: list[CachedCertificate] = []
        for der in certificates:
            try:
                bucket.append(self.cache.add(der))
            except CertificateError as exc:
                raise SignatureError("malformed", str(exc)) from None
        identity = signature.identity
        node_id: bytes | None
        if identity.identity_type == SignerIdentityType.NONE:
            entry, node_id = self._by_key(data, signature, bucket)
        elif identity.identity_type not in (
            SignerIdentityType.CERT_HASH,
            SignerIdentityType.CERT_HASH_NODE_ID,
        ):
            raise SignatureError(
                "malformed", f"unknown SignerIdentityType {identity.identity_type}"
            )
        else:
            found = self.cache.find(identity)
            if found is None:
                raise SignatureError("unknown-signer", "no certificate matches SignerIdentity")
            entry, node_id = found
            self._check_signature(entry, data, signature)
        self_signed = self._check_chain(entry, moment)
        if not entry.node_ids:
            raise SignatureError("node-id-mismatch", f"no Node-ID for overlay {self.overlay}")
        if node_id is None and len(entry.node_ids) == 1:
            node_id = entry.node_ids[0]
        return VerifiedSigner(
            tuple(entry.node_ids),
            entry.user_name,
            entry.cert,
            node_id,
            identity.identity_type,
            self_signed,
        )

    def authenticate(
        self, certificates: Sequence[bytes], *, now: datetime.datetime | None = None
    ) -> VerifiedSigner:
        """Check a peer's certificate without a signature: for overlay links, whose TLS/DTLS
        handshake proved possession of the key (§6.6, §11.3). ``certificates`` is the peer's
        chain, end-entity first (DER). Same checks and errors as :meth:`verify`: chain to a
        root-cert or the self-signed rule, validity at ``now``, Node-IDs for this overlay."""
        if not certificates:
            raise SignatureError("unknown-signer", "no certificate")
        if len(certificates) > MAX_CERTIFICATES_PER_BLOCK:
            raise SignatureError("malformed", "too many certificates")
        try:
            entries = [self.cache.add(der) for der in certificates]
        except CertificateError as exc:
            raise SignatureError("malformed", str(exc)) from None
        entry = entries[0]
        self_signed = self._check_chain(entry, now or _utcnow())
        if not entry.node_ids:
            raise SignatureError("node-id-mismatch", f"no Node-ID for overlay {self.overlay}")
        node_id = entry.node_ids[0] if len(entry.node_ids) == 1 else None
        return VerifiedSigner(
            tuple(entry.node_ids),
            entry.user_name,
            entry.cert,
            node_id,
            SignerIdentityType.NONE,
            self_signed,
        )

    def _by_key(
        self, data: bytes, signature: Signature, bucket: list[CachedCertificate]
    ) -> tuple[CachedCertificate, bytes | None]:
        # SignerIdentity none names no certificate: the signer must be one of the end-entity
        # certificates of the bucket, found by the key that verifies.
        for entry in bucket:
            if entry.der in self._roots or _facts_of(entry).is_ca:
                continue
            try:
                self._check_signature(entry, data, signature)
            except SignatureError:
                continue
            return entry, None
        raise SignatureError("unknown-signer", "no certificate in the bucket made the signature")

    def _check_signature(self, entry: CachedCertificate, data: bytes, signature: Signature) -> None:
        try:
            to_verify = data + encode_signer_identity(signature.identity)
        except ReloadEncodeError as exc:  # a hand-built identity the wire cannot carry
            raise SignatureError("malformed", str(exc)) from None
        if signature.algorithm.hash != HashAlgorithm.SHA256:
            raise SignatureError("unsupported-algorithm", "only SHA-256 signatures")
        remembered: tuple[bytes, int, bytes, bytes] | None = None
        if len(to_verify) <= MAX_CACHED_SIGNATURE_INPUT and self._verified_cache_size > 0:
            remembered = (
                entry.der,
                signature.algorithm.signature,
                signature.signature_value,
                hashlib.sha256(to_verify).digest(),
            )
            if remembered in self._verified:
                self._verified.move_to_end(remembered)
                return
        self._verify_value(entry.cert, to_verify, signature)
        if remembered is not None:
            self._verified[remembered] = None
            if len(self._verified) > self._verified_cache_size:
                self._verified.popitem(last=False)

    @staticmethod
    def _verify_value(cert: x509.Certificate, to_verify: bytes, signature: Signature) -> None:
        """The cryptographic check of §6.3.4: RSASSA-PKCS1-v1_5 or ECDSA, with SHA-256."""
        key = cert.public_key()
        value = signature.signature_value
        try:
            if signature.algorithm.signature == SignatureAlgorithm.RSA and isinstance(
                key, rsa.RSAPublicKey
            ):
                key.verify(value, to_verify, padding.PKCS1v15(), hashes.SHA256())
            elif signature.algorithm.signature == SignatureAlgorithm.ECDSA and isinstance(
                key, ec.EllipticCurvePublicKey
            ):
                key.verify(value, to_verify, ec.ECDSA(hashes.SHA256()))
            else:
                raise SignatureError(
                    "unsupported-algorithm", "signature algorithm does not match the key"
                )
        except InvalidSignature:
            raise SignatureError("bad-signature", "signature does not verify") from None
        except ValueError as exc:  # e.g. a DER ECDSA value that does not parse
            raise SignatureError("bad-signature", str(exc)) from None

    def _check_chain(self, entry: CachedCertificate, moment: datetime.datetime) -> bool:
        """Check the signer's certificate up to a trust root; True if it is self-signed."""
        leaf = entry.cert
        facts = _facts_of(entry)
        _check_validity(facts, moment)
        if facts.is_ca:
            raise SignatureError("bad-chain", "a CA certificate cannot sign RELOAD data")
        if facts.signing_forbidden:
            raise SignatureError("bad-chain", "key usage forbids digital signatures")
        current = entry
        for intermediates in range(MAX_CHAIN_DEPTH):
            issuer = self._issuer_of(current)
            if issuer is None:
                break
            issuer_facts = _facts_of(issuer)
            if issuer.der in self._roots:
                _check_validity(issuer_facts, moment)
                limit = issuer_facts.path_length
                if limit is not None and intermediates > limit:
                    raise SignatureError("bad-chain", "root's pathLenConstraint exceeded")
                return False
            if issuer.der == current.der:
                break
            _check_validity(issuer_facts, moment)
            current = issuer
        if self.self_signed_permitted and _is_self_issued(leaf):
            for node_id in entry.node_ids or [b"\0" * self.node_id_length]:
                check_self_signed(leaf, node_id, self.self_signed_digest, self.overlay)
            return True
        raise SignatureError("untrusted", "certificate does not chain to a root-cert")

    def _issuer_of(self, entry: CachedCertificate) -> CachedCertificate | None:
        if entry.verified_issuer is not None:  # checked before: skip the search
            root = self._root_entries.get(entry.verified_issuer)
            if root is not None:
                return root
            cached = self.cache.get(entry.verified_issuer)
            if cached is not None:
                return cached
        candidates: list[CachedCertificate] = [
            root for root in self._root_entries.values() if root.cert.subject == entry.cert.issuer
        ]
        candidates += self.cache.by_subject(entry.cert.issuer)
        for candidate in candidates:
            if entry.verified_issuer == candidate.der:
                return candidate
            if candidate.der != entry.der and not _facts_of(candidate).is_ca:
                continue  # PKIX BasicConstraints (§11.3): only a CA issues
            try:
                entry.cert.verify_directly_issued_by(candidate.cert)
            except (ValueError, TypeError, InvalidSignature):
                continue
            entry.verified_issuer = candidate.der
            return candidate
        return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _path_length(cert: x509.Certificate) -> int | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
    except x509.ExtensionNotFound:
        return None


def _check_validity(facts: CertificateFacts, moment: datetime.datetime) -> None:
    if not facts.not_before <= moment <= facts.not_after:
        raise SignatureError(
            "expired",
            f"certificate valid {facts.not_before:%Y-%m-%dT%H:%M:%SZ} to "
            f"{facts.not_after:%Y-%m-%dT%H:%M:%SZ}, now {moment:%Y-%m-%dT%H:%M:%SZ}",
        )
