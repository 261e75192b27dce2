"""PEX with swarm-membership certificates (RFC 7574 §3.10, §8.13, §12.2): issuing, checking,
storing, and the engine answering PEX_REQ with PEX_REScert over the simulated network."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import random

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID, ObjectIdentifier
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppsp.peer import fastwire
from ppsp.peer.content import MemoryChunkStore, StaticContent, SwarmParameters
from ppsp.peer.endpoint import ChannelEstablished, Endpoint, PeerDiscovered
from ppsp.peer.membership import (
    MAX_CERTIFICATE_SIZE,
    MAX_DEFECTIVE_PER_SOURCE,
    MembershipPolicy,
    is_internal_address,
    issue_membership_certificate,
    make_test_ca,
    membership_uri,
    parse_membership_uri,
)
from ppsp.peer.merkle import HashTree
from ppsp.peer.messages import (
    MerkleHashFunction,
    Message,
    PexResCert,
    PexResV4,
    PexResV6,
    WireContext,
)
from ppsp.peer.ranges import ChunkSet
from ppsp.peer.simnet import SimNet

#: Wall clock of the simulated network's time 0 (2027-01-15), so certificates are dated.
T0 = 1_800_000_000.0
START = datetime.datetime.fromtimestamp(T0, datetime.UTC)
SWARM = hashlib.sha256(b"swarm").digest()
SEEDER = ("10.0.0.1", 7000)
THIRD = ("10.0.0.2", 7000)
LEECHER = ("10.0.0.3", 7000)
FAR = ("10.0.0.99", 7000)

CA_KEY, CA = make_test_ca(now=START - datetime.timedelta(days=1))


def cert_for(addr: tuple[str, int], swarm_id: bytes = SWARM, **kw: object) -> bytes:
    kw.setdefault("now", START)
    return issue_membership_certificate(CA_KEY, CA, addr, swarm_id, **kw)  # type: ignore[arg-type]


def policy(**kw: object) -> MembershipPolicy:
    return MembershipPolicy([CA], SWARM, clock=lambda: T0 + 1, **kw)  # type: ignore[arg-type]


def build(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    issuer: x509.Name,
    names: list[x509.GeneralName],
    *,
    extra: x509.ExtensionType | None = None,
) -> bytes:
    """A certificate built by hand, for the shapes the issuer never produces."""
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer)
        .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        .serial_number(7)
        .not_valid_before(START)
        .not_valid_after(START + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=True)
    )
    if extra is not None:
        b = b.add_extension(extra, critical=True)
    return b.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)


# ---------------------------------------------------------------------------- certificates


def test_issue_and_verify_round_trip() -> None:
    der = cert_for(("192.0.2.7", 6778))
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == [f"file://192.0.2.7:6778/{SWARM.hex()}"]
    assert cert.issuer == CA.subject
    assert policy().verify(der) == ("192.0.2.7", 6778)
    assert policy().add_certificate(memoryview(der)) == ("192.0.2.7", 6778)  # as decoded


def test_ipv6_address_is_bracketed_and_canonical() -> None:
    der = cert_for(("2001:DB8:0:0::1", 9))
    cert = x509.load_der_x509_certificate(der)
    uris = cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == [f"file://[2001:db8::1]:9/{SWARM.hex()}"]
    assert policy().verify(der) == ("2001:db8::1", 9)


def test_rsa_issuer_is_accepted() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa tracker")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(START - datetime.timedelta(days=1))
        .not_valid_after(START + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    der = issue_membership_certificate(key, ca, THIRD, SWARM, now=START)
    assert MembershipPolicy([ca], SWARM).verify(der, T0) == THIRD
    assert policy().verify(der) is None  # not a CA this swarm trusts


def test_certificate_of_an_untrusted_issuer_with_the_same_name_is_rejected() -> None:
    key, _ = make_test_ca()
    name = CA.subject  # a forger copying the tracker's name, not its key
    forged = build(key, name, [x509.UniformResourceIdentifier(membership_uri(THIRD, SWARM))])
    assert policy().verify(forged) is None
    # ... and the same bytes made by the trusted key are fine (the test can fail).
    genuine = build(CA_KEY, name, [x509.UniformResourceIdentifier(membership_uri(THIRD, SWARM))])
    assert policy().verify(genuine) == THIRD


def test_validity_window() -> None:
    der = cert_for(THIRD, valid_for=datetime.timedelta(minutes=10))
    p = policy()
    assert p.verify(der, T0) == THIRD
    assert p.verify(der, T0 + 600) == THIRD
    assert p.verify(der, T0 + 601) is None  # expired
    assert p.verify(der, T0 - 30) == THIRD  # within the tolerated clock skew
    assert p.verify(der, T0 - 3600) is None  # not yet valid


def test_expired_issuer_invalidates_its_certificates() -> None:
    key, ca = make_test_ca(now=START - datetime.timedelta(days=2), valid_for=datetime.timedelta(1))
    der = issue_membership_certificate(key, ca, THIRD, SWARM, now=START)
    assert MembershipPolicy([ca], SWARM).verify(der, T0) is None
    assert MembershipPolicy([ca], SWARM).verify(der, T0 - 2 * 86400 + 10) is None  # before T


def test_wrong_swarm_is_rejected() -> None:
    der = cert_for(THIRD, swarm_id=hashlib.sha256(b"other").digest())
    assert policy().verify(der) is None
    assert MembershipPolicy([CA], hashlib.sha256(b"other").digest()).verify(der, T0) == THIRD


def test_san_not_critical_is_rejected() -> None:
    der = cert_for(THIRD, san_critical=False)
    assert policy().verify(der) is None


@pytest.mark.parametrize(
    ("names", "extra"),
    [
        ([x509.UniformResourceIdentifier(membership_uri(THIRD, SWARM))] * 2, None),
        ([x509.DNSName("peer.example")], None),
        ([x509.UniformResourceIdentifier(f"http://10.0.0.2:7000/{SWARM.hex()}")], None),
        (
            [x509.UniformResourceIdentifier(membership_uri(THIRD, SWARM))],
            x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"),
        ),
        (
            [x509.UniformResourceIdentifier(membership_uri(THIRD, SWARM))],
            x509.BasicConstraints(ca=True, path_length=None),
        ),
    ],
    ids=["two-uris", "dns-name", "http-uri", "unknown-critical-extension", "ca-certificate"],
)
def test_malformed_statements_are_rejected(
    names: list[x509.GeneralName], extra: x509.ExtensionType | None
) -> None:
    assert policy().verify(build(CA_KEY, CA.subject, names, extra=extra)) is None


def test_the_issuer_certificate_itself_is_no_membership() -> None:
    assert policy().verify(CA.public_bytes(Encoding.DER)) is None


def test_oversized_input_is_rejected_unparsed() -> None:
    der = cert_for(THIRD)
    assert policy().verify(der + bytes(MAX_CERTIFICATE_SIZE)) is None


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.binary(max_size=600))
def test_random_bytes_never_verify_and_never_raise(data: bytes) -> None:
    assert policy().verify(data) is None


_GOOD = cert_for(THIRD)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.integers(0, len(_GOOD) - 1), st.integers(1, 255), st.integers(0, len(_GOOD)))
def test_mutated_certificate_never_verifies(pos: int, flip: int, cut: int) -> None:
    p = policy()
    flipped = bytearray(_GOOD)
    flipped[pos] ^= flip
    assert p.verify(bytes(flipped)) is None
    if cut < len(_GOOD):
        assert p.verify(_GOOD[:cut]) is None


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("file://10.1.2.3:80/00ff", (("10.1.2.3", 80), b"\x00\xff")),
        ("file://[::ffff:1.2.3.4]:1/AB", (("::ffff:102:304", 1), b"\xab")),
        ("file://10.1.2.3:0/00", None),
        ("file://10.1.2.3:65536/00", None),
        ("file://10.1.2.3:80/", None),
        ("file://10.1.2.3:80/abc", None),
        ("file://peer.example:80/00", None),
        ("file://2001:db8::1:80/00", None),
        ("file://[10.1.2.3]:80/00", None),
        ("file://0.0.0.0:80/00", None),
        ("file://[ff02::1]:80/00", None),
        ("file://999.1.2.3:80/00", None),
        ("file://10.1.2.3:80/00?x", None),
    ],
)
def test_parse_membership_uri(uri: str, expected: object) -> None:
    assert parse_membership_uri(uri) == expected


@pytest.mark.parametrize(
    ("host", "internal"),
    [
        ("10.1.1.1", True),
        ("172.31.0.1", True),
        ("172.32.0.1", False),
        ("192.168.5.5", True),
        ("169.254.1.1", True),
        ("239.1.1.1", True),
        ("127.0.0.1", True),
        ("fd00::1", True),
        ("fe80::1", True),
        ("ff05::2", True),
        ("::ffff:10.0.0.1", True),
        ("198.51.100.7", False),
        ("2001:db8::1", False),
        ("not-an-ip", True),
    ],
)
def test_internal_addresses_of_section_8_13(host: str, internal: bool) -> None:
    assert is_internal_address(host) is internal


# ---------------------------------------------------------------------------- the store


def test_store_keeps_only_verified_certificates() -> None:
    p = policy()
    assert p.add_certificate(b"\x30\x00") is None
    assert p.add_certificate(cert_for(THIRD, san_critical=False)) is None
    assert len(p) == 0
    assert p.add_certificate(cert_for(THIRD)) == THIRD
    assert len(p) == 1


def test_certificates_for_pex_filters() -> None:
    p = policy(rng=random.Random(1))
    fresh = {a: cert_for(a) for a in (THIRD, FAR, ("198.51.100.9", 1))}
    short = cert_for(("10.0.0.50", 5), valid_for=datetime.timedelta(seconds=30))
    for der in [*fresh.values(), short]:
        assert p.add_certificate(der) is not None
    everything = set(p.certificates_for_pex(LEECHER, 10))
    assert everything == {*fresh.values(), short}
    assert set(p.certificates_for_pex(LEECHER, 10, now=T0 + 60)) == set(fresh.values())
    assert fresh[THIRD] not in p.certificates_for_pex(THIRD, 10)
    assert p.certificates_for_pex(LEECHER, 10, alive=[THIRD]) == [fresh[THIRD]]
    public = p.certificates_for_pex(("203.0.113.5", 1), 10, public_only=True)
    assert public == [fresh[("198.51.100.9", 1)]]
    assert len(p.certificates_for_pex(LEECHER, 2)) == 2
    assert p.certificates_for_pex(LEECHER, 0) == []


def test_own_certificate_comes_first_and_newest_certificate_per_address_wins() -> None:
    p = policy()
    own = cert_for(SEEDER)
    assert p.set_own_certificate(own) == SEEDER
    assert p.own_address == SEEDER
    old = cert_for(THIRD, valid_for=datetime.timedelta(minutes=5))
    new = cert_for(THIRD, valid_for=datetime.timedelta(minutes=50))
    assert p.add_certificate(new) == THIRD
    assert p.add_certificate(old) == THIRD
    assert p.certificates_for_pex(LEECHER, 5, alive=[]) == [own]
    assert p.certificates_for_pex(LEECHER, 5, alive=[THIRD]) == [own, new]
    assert p.certificates_for_pex(SEEDER, 5, alive=[THIRD]) == [new]


def test_a_source_of_defective_certificates_is_ignored_after_a_few() -> None:
    p = policy()
    attacker = ("10.6.6.6", 6)
    for _ in range(MAX_DEFECTIVE_PER_SOURCE):
        assert p.receive_certificate(b"junk", attacker) is None
    # §12.2.2: the rest is discarded unchecked, even a good one ...
    assert p.receive_certificate(cert_for(THIRD), attacker) is None
    assert len(p) == 0
    # ... while other peers are still heard.
    assert p.receive_certificate(cert_for(THIRD), SEEDER) == THIRD


# ---------------------------------------------------------------------------- the engine


def endpoint(data: bytes, *, seed: bool, member: bool) -> Endpoint:
    tree = HashTree.from_content(data, 1024, MerkleHashFunction.SHA256)
    params = SwarmParameters(tree.root_hash)
    ep = Endpoint(wall_clock_offset=T0)
    n = tree.num_chunks
    assert n is not None
    if seed:
        content = StaticContent(tree, MemoryChunkStore(1024, data), ChunkSet([(0, n - 1)]))
    else:
        content = StaticContent(
            HashTree.for_root(tree.root_hash, 1024, tree.hash_function), MemoryChunkStore(1024)
        )
    swarm = ep.add_swarm(params, content)
    if member:
        swarm.membership = MembershipPolicy([CA], params.swarm_id, clock=lambda: T0)
    return ep


DATA = bytes(range(256)) * 8  # two chunks: PEX needs a swarm, not a download


_SID = HashTree.from_content(DATA, 1024, MerkleHashFunction.SHA256).root_hash


def sid() -> bytes:
    return _SID


def pex_messages(net: SimNet, src: tuple[str, int], dst: tuple[str, int]) -> list[Message]:
    """Tap the network; the returned list fills with PEX replies from ``src`` to ``dst``."""
    seen: list[Message] = []

    def tap(data: bytes, s: tuple[str, int], d: tuple[str, int]) -> bytes:
        if s == src and d == dst and data[:4] != b"\0\0\0\0":
            try:
                msgs = fastwire.decode_datagram(data, WireContext()).messages
            except Exception:  # DATA datagrams need the swarm's context; not PEX anyway
                return data
            seen.extend(m for m in msgs if isinstance(m, (PexResV4, PexResV6, PexResCert)))
        return data

    net.tap = tap
    return seen


def three_peers(
    *, member: bool = True, leecher_member: bool | None = None
) -> tuple[SimNet, Endpoint, Endpoint, Endpoint]:
    net = SimNet()
    s = net.add(SEEDER, endpoint(DATA, seed=True, member=member))
    t = net.add(THIRD, endpoint(DATA, seed=False, member=member))
    lm = member if leecher_member is None else leecher_member
    le = net.add(LEECHER, endpoint(DATA, seed=False, member=lm))
    t.connect(sid(), SEEDER, net.now)  # the third peer talks to the seeder: it is alive
    net.run(1.0)
    return net, s, t, le


def discovered(net: SimNet, who: tuple[str, int]) -> list[tuple[str, int]]:
    return [e.addr for e in net.events[who] if isinstance(e, PeerDiscovered)]


def test_pex_rescert_end_to_end() -> None:
    net, s, _t, le = three_peers()
    swarm = s.swarms[sid()]
    assert swarm.membership is not None
    own, third = cert_for(SEEDER, sid()), cert_for(THIRD, sid())
    assert swarm.membership.set_own_certificate(own) == SEEDER
    assert swarm.membership.add_certificate(third) == THIRD
    swarm.membership.add_certificate(cert_for(FAR, sid()))  # valid, but never heard from
    swarm.membership.add_certificate(cert_for(LEECHER, sid()))  # the requester's own
    sent = pex_messages(net, SEEDER, LEECHER)
    ch = le.connect(sid(), SEEDER, net.now)
    ch.request_peers()  # queued while the handshake is under way
    net.run(2.0)
    assert any(isinstance(e, ChannelEstablished) for e in net.events[LEECHER])
    certs = [m.certificate for m in sent if isinstance(m, PexResCert)]
    assert certs and not any(isinstance(m, (PexResV4, PexResV6)) for m in sent)
    # Its own certificate and the live third peer's; not the requester's, nor FAR (§3.10.1).
    assert sorted(certs) == sorted([own, third])
    assert discovered(net, LEECHER) == [THIRD]  # the seeder itself is no discovery
    leecher_policy = le.swarms[sid()].membership
    assert leecher_policy is not None and len(leecher_policy) == 2  # kept for further PEX
    assert len(swarm.membership) == 3


def test_certificates_gossip_on_section_12_2_2() -> None:
    """The third peer hands its own certificate to the seeder, which passes it on."""
    net, s, t, le = three_peers()
    third = t.swarms[sid()].membership
    assert third is not None and third.set_own_certificate(cert_for(THIRD, sid())) == THIRD
    (seeder_side,) = [c for c in s.channels.values() if c.addr == THIRD]
    seeder_side.request_peers()
    net.run(2.0)
    assert discovered(net, SEEDER) == []  # the certificate names the sender itself
    ch = le.connect(sid(), SEEDER, net.now)
    ch.request_peers()
    net.run(4.0)
    assert discovered(net, LEECHER) == [THIRD]


def test_forged_certificate_is_ignored() -> None:
    net, s, _t, le = three_peers()
    # Same name as the trusted issuer (the default), another key.
    forger_key, forger_ca = make_test_ca(now=START - datetime.timedelta(days=1))
    assert forger_ca.subject == CA.subject
    seeder_policy = s.swarms[sid()].membership
    assert seeder_policy is not None
    seeder_policy.trusted_ca_certs.append(forger_ca)  # a seeder fooled (or malicious)
    forged = issue_membership_certificate(forger_key, forger_ca, THIRD, sid(), now=START)
    assert seeder_policy.add_certificate(forged) == THIRD
    sent = pex_messages(net, SEEDER, LEECHER)
    ch = le.connect(sid(), SEEDER, net.now)
    ch.request_peers()
    net.run(2.0)
    assert [m.certificate for m in sent if isinstance(m, PexResCert)] == [forged]
    assert discovered(net, LEECHER) == []
    leecher_policy = le.swarms[sid()].membership
    assert leecher_policy is not None and len(leecher_policy) == 0
    assert ch.is_open  # a bad certificate is no reason to drop the peer


def test_without_a_policy_pex_resv4_works_and_certificates_are_ignored() -> None:
    net, _s, _t, _le = three_peers(member=False)
    sent = pex_messages(net, SEEDER, LEECHER)
    ch = _le.connect(sid(), SEEDER, net.now)
    ch.request_peers()
    net.run(2.0)
    assert sent == [PexResV4(ipaddress.IPv4Address(THIRD[0]), THIRD[1])]
    assert discovered(net, LEECHER) == [THIRD]

    # A seeder with certificates, a leecher without a policy: nothing is discovered.
    net, s, _t, le = three_peers(member=True, leecher_member=False)
    seeder_policy = s.swarms[sid()].membership
    assert seeder_policy is not None and seeder_policy.add_certificate(cert_for(THIRD, sid()))
    sent = pex_messages(net, SEEDER, LEECHER)
    ch = le.connect(sid(), SEEDER, net.now)
    ch.request_peers()
    net.run(2.0)
    assert [type(m) for m in sent] == [PexResCert]
    assert discovered(net, LEECHER) == []


def test_public_requester_gets_no_internal_addresses() -> None:
    """§8.13: a PEX_REQ from a public address is not answered with internal ones."""
    net, _s, _t, _le = three_peers(member=False)
    public = ("198.51.100.20", 7000)
    pub_peer = net.add(public, endpoint(DATA, seed=False, member=False))
    other_public = ("203.0.113.4", 7000)
    net.add(other_public, endpoint(DATA, seed=False, member=False)).connect(sid(), SEEDER, net.now)
    net.run(net.now + 1)
    sent = pex_messages(net, SEEDER, public)
    ch = pub_peer.connect(sid(), SEEDER, net.now)
    ch.request_peers()
    net.run(net.now + 2)
    assert sent == [PexResV4(ipaddress.IPv4Address(other_public[0]), other_public[1])]
    assert discovered(net, public) == [other_public]


def test_pex_reply_fits_the_path_mtu() -> None:
    net, s, _t, le = three_peers()
    seeder_policy = s.swarms[sid()].membership
    assert seeder_policy is not None
    peers = [(f"10.0.1.{i}", 7000) for i in range(8)]
    for p in peers:
        net.add(p, endpoint(DATA, seed=False, member=True)).connect(sid(), SEEDER, net.now)
        seeder_policy.add_certificate(cert_for(p, sid()))
    net.run(net.now + 1)
    sizes: list[int] = []

    def measure(d: bytes, src: tuple[str, int], dst: tuple[str, int]) -> bytes:
        if src == SEEDER and dst == LEECHER:
            sizes.append(len(d))
        return d

    net.tap = measure
    ch = le.connect(sid(), SEEDER, net.now)
    ch.request_peers()
    net.run(net.now + 2)
    found = discovered(net, LEECHER)
    assert 2 <= len(found) < len(peers) and set(found) <= set(peers)
    assert max(sizes) <= 1500 - 48


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.binary(max_size=700), min_size=1, max_size=6))
def test_hostile_pex_rescert_datagrams_do_not_disturb_the_channel(certs: list[bytes]) -> None:
    ep = endpoint(DATA, seed=True, member=True)
    ch = ep.connect(sid(), LEECHER, 0.0)
    ch.on_messages([PexResCert(c) for c in certs], 0.1)
    assert not [e for e in ep.pop_events() if isinstance(e, PeerDiscovered)]
    assert ch.is_open
