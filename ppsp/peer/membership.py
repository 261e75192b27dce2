"""Swarm-membership certificates for secure peer address exchange (RFC 7574 §3.10, §12.2).

A membership certificate is an X.509v3 certificate (DER) whose critical Subject Alternative
Name is one URI, ``file://<ip>:<port>/<swarm ID hex>`` (IPv6 in brackets; the URI form is
our wire decision, see ``specs/DIGEST.md``): "the peer at (ip, port) is a member of swarm S
at time T", signed by an issuer the swarm trusts — for example the tracker (§12.2.2).

This module issues such certificates (:func:`issue_membership_certificate`, for a tracker or
a lab CA), checks them (:meth:`MembershipPolicy.verify`, which never raises on hostile
bytes), and keeps the verified ones to hand out in PEX_REScert messages (§8.13). The PPSPP
engine consults a swarm's :class:`MembershipPolicy`; nothing here does I/O, and time is
injected as wall-clock seconds since the epoch.
"""

from __future__ import annotations

import datetime
import ipaddress
import random
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

Address = tuple[str, int]
#: Keys a membership-certificate issuer may sign with (§12.2.1 leaves the choice open).
IssuerKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
SubjectKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

#: Largest certificate we look at: a P-256 membership certificate is ~400 bytes, an RSA-4096
#: one ~1.2 KB; bigger ones are hostile (§12.2.2: verifying must not become an attack).
MAX_CERTIFICATE_SIZE = 4096
#: §12.2.2: the certificate's timestamp gives freshness; we keep lifetimes short by default.
DEFAULT_VALIDITY = datetime.timedelta(hours=1)
#: Clock difference between issuer and verifier tolerated on notBefore, in seconds.
MAX_CLOCK_SKEW = 60.0
#: Certificates kept for PEX (one per peer address), and peers whose defects we remember.
MAX_STORED_CERTIFICATES = 1024
MAX_TRACKED_SOURCES = 1024
#: §12.2.2: "check a few of the certificates sent and discard the rest if they are
#: defective" — after this many defective certificates from one peer, its PEX_REScerts are
#: dropped unchecked.
MAX_DEFECTIVE_PER_SOURCE = 3

_SIGNATURE_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
#: Extensions a membership certificate may mark critical; RFC 5280 §4.2 requires rejecting
#: a certificate with any other critical extension.
_UNDERSTOOD_CRITICAL = (
    x509.SubjectAlternativeName,
    x509.BasicConstraints,
    x509.KeyUsage,
    x509.ExtendedKeyUsage,
)
#: §8.13: "private, unique-local, link-local, or multicast" addresses (RFC 1918, RFC 4193,
#: RFC 4291), plus loopback, which must not leak to external peers either.
_INTERNAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "224.0.0.0/4",
        "127.0.0.0/8",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
        "::1/128",
    )
)
_URI = re.compile(
    r"file://(?:(?P<v4>\d{1,3}(?:\.\d{1,3}){3})|\[(?P<v6>[0-9A-Fa-f:.]{2,45})\])"
    r":(?P<port>\d{1,5})/(?P<swarm>(?:[0-9A-Fa-f]{2})+)"
)


# ---------------------------------------------------------------------------- addresses


def normalize_address(addr: Address) -> Address | None:
    """``addr`` with its IP literal in canonical form, or None if it is not an IP literal."""
    try:
        ip = ipaddress.ip_address(addr[0])
    except ValueError:
        return None
    return str(ip), addr[1]


def is_internal_address(host: str) -> bool:
    """True for the addresses §8.13 keeps from external peers (and for non-IP hosts)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in _INTERNAL_NETWORKS)


def membership_uri(peer_addr: Address, swarm_id: bytes) -> str:
    """The Subject Alternative Name URI naming ``peer_addr`` in swarm ``swarm_id``."""
    ip = ipaddress.ip_address(peer_addr[0])
    port = peer_addr[1]
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    if not swarm_id:
        raise ValueError("empty swarm ID")
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"file://{host}:{port}/{swarm_id.hex()}"


def parse_membership_uri(uri: str) -> tuple[Address, bytes] | None:
    """(peer address, swarm ID) of a membership URI, or None if it is not one.

    Only IP literals are accepted (PEX hands out transport addresses, §3.10); an unspecified
    or multicast address, or port 0, names no peer.
    """
    m = _URI.fullmatch(uri)
    if m is None:
        return None
    try:
        ip = ipaddress.ip_address(m["v4"] or m["v6"])
    except ValueError:
        return None
    if (m["v4"] is not None) != (ip.version == 4) or ip.is_unspecified or ip.is_multicast:
        return None
    port = int(m["port"])
    if not 0 < port < 65536:
        return None
    return (str(ip), port), bytes.fromhex(m["swarm"])


# ---------------------------------------------------------------------------- issuing


def _utc(now: datetime.datetime | None) -> datetime.datetime:
    if now is None:
        return datetime.datetime.now(datetime.UTC)
    return now if now.tzinfo is not None else now.replace(tzinfo=datetime.UTC)


def make_test_ca(
    name: str = "p2pcdn test membership CA",
    *,
    now: datetime.datetime | None = None,
    valid_for: datetime.timedelta = datetime.timedelta(days=30),
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed ECDSA P-256 issuer for tests and labs: (private key, certificate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = _utc(now)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_membership_certificate(
    ca_key: IssuerKey,
    ca_cert: x509.Certificate,
    peer_addr: Address,
    swarm_id: bytes,
    *,
    valid_for: datetime.timedelta = DEFAULT_VALIDITY,
    now: datetime.datetime | None = None,
    public_key: SubjectKey | None = None,
    san_critical: bool = True,
) -> bytes:
    """A DER membership certificate: ``peer_addr`` is in ``swarm_id`` from ``now`` (§12.2.1).

    The subject is empty and the SAN carries the statement, which is why RFC 5280 §4.2.1.6
    and RFC 7574 §8.13 both want the SAN critical (``san_critical=False`` exists only to
    let tests build a defective certificate). PEX needs no subject key (nobody proves
    possession of it), so without ``public_key`` a throw-away P-256 key fills the field.
    """
    start = _utc(now)
    if public_key is None:
        public_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + valid_for)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(membership_uri(peer_addr, swarm_id))]
            ),
            critical=san_critical,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.DER)


# ---------------------------------------------------------------------------- verifying


@dataclass(slots=True)
class _Stored:
    der: bytes
    addr: Address
    not_after: float


class MembershipPolicy:
    """Which membership certificates a swarm trusts, and the verified ones it gives out.

    ``clock`` returns wall-clock seconds since the epoch; it is used when a method is not
    given ``now`` (the engine always passes its injected time). ``rng`` picks which
    certificates a PEX reply carries: a random sample, so that no peer decides what we
    gossip (§12.2.3).
    """

    def __init__(
        self,
        trusted_ca_certs: list[x509.Certificate],
        swarm_id: bytes,
        clock: Callable[[], float] = time.time,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.trusted_ca_certs = list(trusted_ca_certs)
        self.swarm_id = swarm_id
        self.clock = clock
        self.rng = rng if rng is not None else random.SystemRandom()
        self._by_addr: dict[Address, _Stored] = {}
        self._by_der: dict[bytes, _Stored] = {}
        self._own: _Stored | None = None
        self._defective: dict[Address, int] = {}

    def __len__(self) -> int:
        return len(self._by_addr)

    @property
    def own_address(self) -> Address | None:
        """The address our own certificate names, if we were given one."""
        return self._own.addr if self._own is not None else None

    # -- checking one certificate

    def verify(self, der: bytes | memoryview, now: float | None = None) -> Address | None:
        """The peer address ``der`` certifies for this swarm at ``now``, or None.

        None unless: at most :data:`MAX_CERTIFICATE_SIZE` bytes of one DER X.509v3
        certificate, signed (RSA PKCS#1 v1.5 or ECDSA, SHA-2) by a trusted issuer that is
        itself within its validity, within its own validity window, with no critical
        extension we do not understand, and with a critical SAN holding exactly one URI
        that names an IP address, a port and this swarm (§8.13, §12.2.1). Never raises.
        """
        t = self.clock() if now is None else now
        try:
            return self._verify(der, t)
        except Exception:  # hostile bytes: any parser complaint just means "not a member"
            return None

    def _verify(self, der: bytes | memoryview, now: float) -> Address | None:
        if len(der) > MAX_CERTIFICATE_SIZE:
            return None
        cert = x509.load_der_x509_certificate(bytes(der))
        if cert.version is not x509.Version.v3:
            return None
        if not (cert.not_valid_before_utc.timestamp() - MAX_CLOCK_SKEW <= now):
            return None
        if not (now <= cert.not_valid_after_utc.timestamp()):
            return None
        if not any(self._signed_by(cert, ca, now) for ca in self.trusted_ca_certs):
            return None
        names: list[x509.GeneralName] | None = None
        for ext in cert.extensions:
            value = ext.value
            if isinstance(value, x509.SubjectAlternativeName):
                if not ext.critical:
                    return None  # §8.13: the SAN MUST be marked critical
                names = list(value)
            elif ext.critical and not isinstance(value, _UNDERSTOOD_CRITICAL):
                return None
            if isinstance(value, x509.BasicConstraints) and value.ca:
                return None  # an issuer's certificate states no membership
        if names is None or len(names) != 1:
            return None
        if not isinstance(names[0], x509.UniformResourceIdentifier):
            return None
        parsed = parse_membership_uri(names[0].value)
        if parsed is None or parsed[1] != self.swarm_id:
            return None
        return parsed[0]

    @staticmethod
    def _signed_by(cert: x509.Certificate, ca: x509.Certificate, now: float) -> bool:
        if cert.issuer != ca.subject:
            return False
        if not (ca.not_valid_before_utc.timestamp() - MAX_CLOCK_SKEW <= now):
            return False
        if not (now <= ca.not_valid_after_utc.timestamp()):
            return False
        algorithm = cert.signature_hash_algorithm
        if not isinstance(algorithm, _SIGNATURE_HASHES):
            return False
        key = ca.public_key()
        params = cert.signature_algorithm_parameters
        tbs = cert.tbs_certificate_bytes
        try:
            if isinstance(key, rsa.RSAPublicKey) and isinstance(params, padding.PKCS1v15):
                key.verify(cert.signature, tbs, padding.PKCS1v15(), algorithm)
            elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(params, ec.ECDSA):
                key.verify(cert.signature, tbs, ec.ECDSA(algorithm))
            else:
                return False
        except Exception:  # InvalidSignature, or a signature that is not even DER
            return False
        return True

    # -- the store of certificates to gossip

    def add_certificate(self, der: bytes | memoryview, now: float | None = None) -> Address | None:
        """Keep ``der`` for PEX if it verifies; return the address it names (else None).

        One certificate per address is kept, the one that expires last; when the store is
        full the certificate closest to expiry makes room.
        """
        t = self.clock() if now is None else now
        if len(der) > MAX_CERTIFICATE_SIZE:
            return None
        der = bytes(der)
        known = self._by_der.get(der)
        if known is not None:
            return known.addr if t <= known.not_after else None
        addr = self.verify(der, t)
        if addr is None:
            return None
        entry = _Stored(der, addr, _not_after(der))
        old = self._by_addr.get(addr)
        if old is not None:
            if old.not_after >= entry.not_after:
                return addr
            del self._by_der[old.der]
        elif len(self._by_addr) >= MAX_STORED_CERTIFICATES:
            self._evict(t)
        self._by_addr[addr] = entry
        self._by_der[der] = entry
        return addr

    def set_own_certificate(
        self, der: bytes | memoryview, now: float | None = None
    ) -> Address | None:
        """Our own membership certificate (§12.2.2: from the tracker), if it verifies.

        It is sent in every PEX reply, so that the peers we talk to can gossip it on.
        """
        t = self.clock() if now is None else now
        addr = self.verify(der, t)
        if addr is not None:
            self._own = _Stored(bytes(der), addr, _not_after(bytes(der)))
        return addr

    def receive_certificate(
        self, der: bytes | memoryview, source: Address, now: float | None = None
    ) -> Address | None:
        """A PEX_REScert from ``source``: verify and store it; the address it names, or None.

        §12.2.2: a peer may make us spend CPU on signatures, so after
        :data:`MAX_DEFECTIVE_PER_SOURCE` defective certificates from ``source`` the rest it
        sends are discarded unchecked, and a certificate we already hold is not checked again.
        """
        t = self.clock() if now is None else now
        if self._defective.get(source, 0) >= MAX_DEFECTIVE_PER_SOURCE:
            return None
        addr = self.add_certificate(der, t)
        if addr is None:
            if source not in self._defective and len(self._defective) >= MAX_TRACKED_SOURCES:
                del self._defective[next(iter(self._defective))]
            self._defective[source] = self._defective.get(source, 0) + 1
        return addr

    def certificates_for_pex(
        self,
        exclude: Address,
        limit: int,
        *,
        now: float | None = None,
        alive: Collection[Address] | None = None,
        public_only: bool = False,
    ) -> list[bytes]:
        """Up to ``limit`` fresh certificates to send in PEX_REScert messages (§3.10.1).

        Our own certificate comes first; the others are a random sample. ``exclude`` (the
        requester) is left out; with ``alive``, only peers in it are (§3.10.1: we MUST have
        exchanged messages with them in the last 60 s); with ``public_only``, certificates
        naming internal addresses are left out (§8.13, for a requester with a public address).
        """
        t = self.clock() if now is None else now
        if limit <= 0:
            return []
        excluded = normalize_address(exclude) or exclude
        live: set[Address] | None = None
        if alive is not None:
            live = {a for a in (normalize_address(x) for x in alive) if a is not None}

        def usable(entry: _Stored) -> bool:
            return (
                entry.not_after >= t
                and entry.addr != excluded
                and not (public_only and is_internal_address(entry.addr[0]))
            )

        out: list[bytes] = []
        own = self._own
        if own is not None and usable(own):
            out.append(own.der)
        candidates = [
            e
            for e in self._by_addr.values()
            if usable(e) and (live is None or e.addr in live) and (own is None or e.der != own.der)
        ]
        want = min(limit - len(out), len(candidates))
        out.extend(e.der for e in self.rng.sample(candidates, want))
        return out

    def _evict(self, now: float) -> None:
        for addr, entry in list(self._by_addr.items()):
            if entry.not_after < now:
                del self._by_addr[addr]
                del self._by_der[entry.der]
        if len(self._by_addr) >= MAX_STORED_CERTIFICATES:
            addr = min(self._by_addr, key=lambda a: self._by_addr[a].not_after)
            del self._by_der[self._by_addr.pop(addr).der]


def _not_after(der: bytes) -> float:
    return x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp()
