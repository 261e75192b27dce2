"""The Wireshark Lua dissectors (interop/wireshark/*.lua) against our own codecs, with tshark.

Every field tshark shows must equal what our normative codecs decode from the same bytes:
ppsp/peer/wire.py for PPSPP (with the per-channel context a HANDSHAKE fixes, RFC 7574 §7) and
ppsp/tracker/binary.py for PPSP-TP binary (docs/ppsp-tp-binary.md). Captures: the libswift
traces in ../shared/traces and captures written here with interop/pcapfile.py from our own
codecs (every PPSPP message type under every chunk addressing method, every PPSP-TP method).
Valid traffic gets no malformed or Lua error; truncated or garbage packets get the expert
"malformed" item instead of a Lua error.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import struct
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interop.pcapfile import PcapPacket, read_pcap, write_pcap
from ppsp.peer import wire
from ppsp.peer.messages import (
    Ack,
    Cancel,
    Choke,
    ChunkAddressing,
    Data,
    Datagram,
    DecodeError,
    Handshake,
    HandshakeOptions,
    Have,
    Integrity,
    IntegrityMethod,
    LiveSignatureAlgorithm,
    MerkleHashFunction,
    Message,
    PexReq,
    PexResCert,
    PexResV4,
    PexResV6,
    Request,
    SignedIntegrity,
    Unchoke,
    WireContext,
)
from ppsp.tracker import binary
from ppsp.tracker.messages import (
    Action,
    AddressType,
    AvailabilityDelta,
    Connect,
    ErrorCode,
    Find,
    GlobalInfoMessage,
    HintUnit,
    PeerAddress,
    PeerInfo,
    PeerMode,
    PeerNum,
    PushHint,
    PushHintMessage,
    Response,
    ResponseType,
    Role,
    StatQuery,
    StatReport,
    StreamStats,
    SwarmAction,
    SwarmAvailability,
    SwarmPopularity,
    SwarmResult,
    TrackerError,
)

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "interop" / "wireshark"
TRACES = ROOT.parent / "shared" / "traces" / "libswift"
TSHARK = shutil.which("tshark")

pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")

TIMEOUT = 60


# ------------------------------------------------------------------------------------ tshark


@dataclass
class Node:
    """One PDML field: its name (empty for text items), show and raw value, children."""

    name: str
    show: str
    value: str
    children: list[Node]

    def walk(self) -> Iterable[Node]:
        yield self
        for c in self.children:
            yield from c.walk()

    def all(self, name: str) -> list[Node]:
        return [n for n in self.walk() if n.name == name]


def _node(el: ET.Element) -> Node:
    return Node(
        el.get("name", ""),
        el.get("show", ""),
        el.get("value", ""),
        [_node(c) for c in el if c.tag in ("field", "proto")],
    )


def tshark_env() -> dict[str, str]:
    """tshark's environment with an empty home: no installed copy of our plugins (which
    would register the protocols twice) and no personal preferences."""
    home = Path(tempfile.gettempdir()) / "p2pcdn-tshark-home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"}
    return {**env, "HOME": str(home)}


def tshark_pdml(pcap: Path, script: str, *args: str) -> tuple[list[list[Node]], str]:
    """The packets of ``pcap`` as PDML trees (the protos of each packet) and tshark's stderr."""
    assert TSHARK is not None
    cmd = [TSHARK, "-n", "-X", f"lua_script:{LUA / script}", "-r", str(pcap), "-T", "pdml", *args]
    out = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT, check=True, env=tshark_env())
    root = ET.fromstring(out.stdout.decode("utf-8", "replace"))
    packets = [[_node(p) for p in pkt if p.tag == "proto"] for pkt in root.iter("packet")]
    return packets, out.stderr.decode("utf-8", "replace")


def proto(packet: list[Node], name: str) -> Node | None:
    for p in packet:
        if p.name == name:
            return p
    return None


def ppspp_nodes(packets: list[list[Node]]) -> list[Node]:
    return [p for pkt in packets for p in pkt if p.name == "ppspp"]


def errors_in(packet: list[Node]) -> list[str]:
    """Malformed and Lua-error items anywhere in a packet."""
    bad = []
    for top in packet:
        for n in top.walk():
            if n.name in ("_ws.malformed", "_ws.lua.error") or n.name.endswith(".malformed"):
                bad.append(f"{n.name}: {n.show}")
            if "Lua Error" in n.show or "Lua error" in n.show:
                bad.append(n.show)
    return bad


def lua_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "Lua" in line or "lua" in line]


def num(n: Node) -> int:
    return int(n.show, 0)


# ------------------------------------------------------------------------------------ PPSPP

Key = tuple[str, int, int]


def expected_datagrams(packets: Sequence[PcapPacket]) -> list[Datagram | DecodeError]:
    """Our codec's decode of each datagram with the per-channel context (as the dissector)."""
    contexts: dict[Key, WireContext] = {}
    out: list[Datagram | DecodeError] = []
    for p in packets:
        data = p.payload
        if len(data) < 4:
            out.append(DecodeError("short"))
            continue
        channel = int.from_bytes(data[:4], "big")
        ctx = WireContext()
        if channel != 0:
            ctx = contexts.get((p.dst, p.dport, channel), ctx)
        try:
            dgram = wire.parse_datagram(data, ctx)
        except DecodeError as exc:
            out.append(exc)
            continue
        out.append(dgram)
        for m in dgram.messages:
            if isinstance(m, Handshake) and m.source_channel != 0:
                try:
                    new = ctx.updated_by(m.options)
                except DecodeError:
                    continue
                contexts[(p.src, p.sport, m.source_channel)] = new
                if channel != 0:
                    contexts[(p.dst, p.dport, channel)] = new
    return out


def message_nodes(ppspp: Node) -> list[Node]:
    return [c for c in ppspp.children if c.name in ("", "_ws.lua.text") and c.all("ppspp.type")]


def one(n: Node, name: str) -> Node:
    found = [c for c in n.walk() if c.name == name]
    assert len(found) == 1, (name, [c.show for c in found])
    return found[0]


def maybe(n: Node, name: str) -> Node | None:
    found = n.all(name)
    return found[0] if found else None


def check_message(node: Node, msg: Message) -> None:
    t = num(one(node, "ppspp.type"))
    if isinstance(msg, Handshake):
        assert t == 0
        assert num(one(node, "ppspp.source_channel")) == msg.source_channel
        o = msg.options
        for name, value in (
            ("ppspp.version", o.version),
            ("ppspp.min_version", o.minimum_version),
            ("ppspp.cipm", o.integrity_method),
            ("ppspp.mhf", o.merkle_hash_function),
            ("ppspp.lsa", o.live_signature_algorithm),
            ("ppspp.cam", o.chunk_addressing),
            ("ppspp.ldw", o.live_discard_window),
            ("ppspp.chunk_size", o.chunk_size),
        ):
            found = maybe(node, name)
            if value is None:
                assert found is None, name
            else:
                assert found is not None and num(found) == int(value), name
        for name, raw in (
            ("ppspp.swarm_id", o.swarm_id),
            ("ppspp.supported", o.supported_messages),
        ):
            found = maybe(node, name)
            if raw is None:
                assert found is None, name
            else:
                assert found is not None and found.value == bytes(raw).hex(), name
        return
    expected_type = {
        Data: 1, Ack: 2, Have: 3, Integrity: 4, PexResV4: 5, PexReq: 6, SignedIntegrity: 7,
        Request: 8, Cancel: 9, Choke: 10, Unchoke: 11, PexResV6: 12, PexResCert: 13,
    }[type(msg)]  # fmt: skip
    assert t == expected_type
    if isinstance(msg, Data | Ack | Have | Integrity | SignedIntegrity | Request | Cancel):
        assert num(one(node, "ppspp.start")) == msg.start
        assert num(one(node, "ppspp.end")) == msg.end
    if isinstance(msg, Data):
        assert num(one(node, "ppspp.timestamp")) == msg.timestamp
        assert num(one(node, "ppspp.payload_len")) == len(msg.payload)
        assert one(node, "ppspp.payload").value == bytes(msg.payload).hex()
    if isinstance(msg, Ack):
        assert num(one(node, "ppspp.delay")) == msg.delay_sample
    if isinstance(msg, Integrity):
        assert one(node, "ppspp.hash").value == bytes(msg.hash).hex()
    if isinstance(msg, SignedIntegrity):
        assert num(one(node, "ppspp.timestamp")) == msg.timestamp
        assert one(node, "ppspp.signature").value == bytes(msg.signature).hex()
    if isinstance(msg, PexResV4):
        assert one(node, "ppspp.ipv4").show == str(msg.address)
        assert num(one(node, "ppspp.port")) == msg.port
    if isinstance(msg, PexResV6):
        assert ipaddress.IPv6Address(one(node, "ppspp.ipv6").show) == msg.address
        assert num(one(node, "ppspp.port")) == msg.port
    if isinstance(msg, PexResCert):
        assert one(node, "ppspp.cert").value == bytes(msg.certificate).hex()


def check_ppspp_capture(pcap: Path, *args: str) -> list[list[Node]]:
    packets, stderr = tshark_pdml(pcap, "ppspp.lua", *args)
    assert not lua_errors(stderr), stderr
    expected = expected_datagrams(list(read_pcap(pcap)))
    assert len(packets) == len(expected)
    for i, (pkt, dgram) in enumerate(zip(packets, expected, strict=True), start=1):
        node = proto(pkt, "ppspp")
        assert node is not None, f"frame {i} not dissected as PPSPP"
        assert isinstance(dgram, Datagram), f"frame {i}: our codec refuses it: {dgram}"
        assert errors_in(pkt) == [], f"frame {i}"
        assert num(one(node, "ppspp.channel")) == dgram.channel
        msgs = message_nodes(node)
        assert len(msgs) == len(dgram.messages), f"frame {i}"
        if not dgram.messages:
            assert one(node, "ppspp.keepalive").show in ("1", "True")
        for n, m in zip(msgs, dgram.messages, strict=True):
            check_message(n, m)
    return packets


@pytest.mark.skipif(not TRACES.is_dir(), reason="no libswift traces")
def test_libswift_static_trace_equals_our_codec() -> None:
    packets = check_ppspp_capture(TRACES / "libswift_static_200000B.pcap", "-o", "ppspp.port:20200")
    # The SHA-1 hash size was learnt from the handshake: INTEGRITY hashes are 20 bytes.
    hashes = [h for n in ppspp_nodes(packets) for h in n.all("ppspp.hash")]
    assert hashes and all(len(h.value) == 40 for h in hashes)


@pytest.mark.skipif(not TRACES.is_dir(), reason="no libswift traces")
def test_libswift_probes_with_decode_as() -> None:
    packets = check_ppspp_capture(
        TRACES / "libswift_handshake_probes.pcap", "-d", "udp.port==20200,ppspp"
    )
    # Probes E and F are refused by a HANDSHAKE with source channel 0 (traces/README).
    for frame in (10, 12):
        node = proto(packets[frame - 1], "ppspp")
        assert node is not None and one(node, "ppspp.close").show in ("1", "True")


A, B = "10.0.0.1", "10.0.0.2"
SWARM = bytes(range(32))
SIG_RSA_KEY = bytes([1, 3]) + b"\x01\x00\x01" + bytes(range(1, 129))  # exponent 65537, 128 B
RSA_SWARM = bytes([8]) + SIG_RSA_KEY[1:]  # algorithm RSASHA256 + DNSKEY key


def conversation(
    port: int,
    options: HandshakeOptions,
    to_b: list[Message],
    to_a: list[Message],
    *,
    a_chan: int,
    b_chan: int,
) -> list[PcapPacket]:
    """A handshake A→B, the reply B→A, then ``to_b`` and ``to_a`` in their own datagrams."""
    init = Datagram(0, [Handshake(a_chan, options)])
    reply_opts = HandshakeOptions(
        version=1,
        minimum_version=1,
        integrity_method=options.integrity_method,
        merkle_hash_function=options.merkle_hash_function,
        chunk_addressing=options.chunk_addressing,
    )
    ctx = WireContext().updated_by(options)
    reply = Datagram(a_chan, [Handshake(b_chan, reply_opts), *to_a[:1]])
    out = [
        PcapPacket(0.0, A, 40000 + port, B, port, wire.build_datagram(init)),
        PcapPacket(0.1, B, port, A, 40000 + port, wire.build_datagram(reply, ctx)),
    ]
    for i, m in enumerate(to_b):
        out.append(
            PcapPacket(
                1 + i, A, 40000 + port, B, port, wire.build_datagram(Datagram(b_chan, [m]), ctx)
            )
        )
    for i, m in enumerate(to_a[1:]):
        out.append(
            PcapPacket(
                2 + i, B, port, A, 40000 + port, wire.build_datagram(Datagram(a_chan, [m]), ctx)
            )
        )
    return out


def own_ppspp_packets() -> list[PcapPacket]:
    h32 = bytes(range(100, 132))
    common: list[Message] = [
        Request(0, 0), Cancel(2, 3), Ack(0, 0, 1234), PexReq(), Choke(), Unchoke(),
    ]  # fmt: skip
    pex: list[Message] = [
        PexResV4(ipaddress.IPv4Address("192.0.2.1"), 7777),
        PexResV6(ipaddress.IPv6Address("2001:db8::1"), 7778),
        PexResCert(b"\x30\x82\x00\x01\xff"),
    ]
    pkts: list[PcapPacket] = []
    # 32-bit chunk ranges, SHA-256, every option but the live ones, chunk size 1024.
    full = HandshakeOptions(
        version=1,
        minimum_version=1,
        swarm_id=SWARM,
        integrity_method=IntegrityMethod.MERKLE,
        merkle_hash_function=MerkleHashFunction.SHA256,
        chunk_addressing=ChunkAddressing.CHUNK_RANGE32,
        supported_messages=b"\xff\xfc",
        chunk_size=1024,
    )
    pkts += conversation(
        7777,
        full,
        common,
        [Have(0, 3), Integrity(0, 1, h32), Data(0, 0, 99, bytes(1024)), *pex],
        a_chan=0x11111111,
        b_chan=0x22222222,
    )
    # Two DATA in one datagram (§8.6, fixed chunk size), then the explicit close.
    ctx = WireContext(chunk_size=1024)
    two = Datagram(0x11111111, [Data(1, 1, 5, b"a" * 1024), Data(2, 2, 6, b"b" * 100)])
    pkts.append(PcapPacket(3, B, 7777, A, 47777, wire.build_datagram(two, ctx)))
    pkts.append(PcapPacket(4, A, 47777, B, 7777, wire.build_datagram(Datagram(0x22222222))))
    close = Datagram(0x22222222, [Handshake(0, HandshakeOptions(version=1))])
    pkts.append(PcapPacket(5, A, 47777, B, 7777, wire.build_datagram(close)))
    # 32-bit bins, SHA-1 (libswift's hash); the special bins (§4.2).
    bins = HandshakeOptions(
        version=1, minimum_version=1, swarm_id=SWARM[:20], integrity_method=IntegrityMethod.MERKLE,
        merkle_hash_function=MerkleHashFunction.SHA1, chunk_addressing=ChunkAddressing.BIN32,
    )  # fmt: skip
    pkts += conversation(
        7001, bins, [Request(4, 7), Have(0, 2**31 - 1), Ack(6, 6, 1)],
        [Have(0, 0), Integrity(0, 1, bytes(20)), Data(2, 3, 7, b"x" * 2000)],
        a_chan=3, b_chan=4,
    )  # fmt: skip
    # 64-bit bins, SHA-512.
    bins64 = HandshakeOptions(
        version=1, minimum_version=1, swarm_id=SWARM, integrity_method=IntegrityMethod.MERKLE,
        merkle_hash_function=MerkleHashFunction.SHA512, chunk_addressing=ChunkAddressing.BIN64,
    )  # fmt: skip
    pkts += conversation(
        7002, bins64, [Request(2**40, 2**40 + 255), Have(0, 2**64 - 1)],
        [Have(8, 15), Integrity(0, 0, bytes(range(64)))],
        a_chan=5, b_chan=6,
    )  # fmt: skip
    # 64-bit byte ranges, SHA-384.
    byte_ranges = HandshakeOptions(
        version=1, minimum_version=1, swarm_id=SWARM, integrity_method=IntegrityMethod.MERKLE,
        merkle_hash_function=MerkleHashFunction.SHA384,
        chunk_addressing=ChunkAddressing.BYTE_RANGE64,
    )  # fmt: skip
    pkts += conversation(
        7003, byte_ranges, [Request(0, 1023), Ack(1024, 2047, 9)],
        [Integrity(0, 1023, bytes(48)), Data(0, 9, 1, b"0123456789")],
        a_chan=7, b_chan=8,
    )  # fmt: skip
    # Live: 64-bit chunk ranges, unified Merkle tree, ECDSA P-256 (64-byte signatures).
    live = HandshakeOptions(
        version=1, minimum_version=1, swarm_id=bytes([13]) + bytes(64),
        integrity_method=IntegrityMethod.UNIFIED_MERKLE,
        merkle_hash_function=MerkleHashFunction.SHA256,
        live_signature_algorithm=LiveSignatureAlgorithm.ECDSAP256SHA256,
        chunk_addressing=ChunkAddressing.CHUNK_RANGE64, live_discard_window=2**40,
    )  # fmt: skip
    pkts += conversation(
        7004, live, [Request(2**33, 2**33 + 7)],
        [SignedIntegrity(0, 7, 2**60, bytes(range(64))), Integrity(0, 7, h32)],
        a_chan=9, b_chan=10,
    )  # fmt: skip
    # Live, sign all, RSA: the signature is as long as the swarm key's modulus (128 bytes).
    rsa = HandshakeOptions(
        version=1, minimum_version=1, swarm_id=RSA_SWARM,
        integrity_method=IntegrityMethod.SIGN_ALL,
        live_signature_algorithm=LiveSignatureAlgorithm.RSASHA256,
        chunk_addressing=ChunkAddressing.CHUNK_RANGE32, live_discard_window=100,
    )  # fmt: skip
    ctx_rsa = WireContext().updated_by(rsa)
    assert ctx_rsa.signature_size == 128
    init = Datagram(0, [Handshake(12, rsa), SignedIntegrity(0, 0, 1, bytes(128))])
    pkts.append(PcapPacket(9, A, 47005, B, 7005, wire.build_datagram(init)))
    return pkts


def test_own_capture_every_message_type(tmp_path: Path) -> None:
    pkts = own_ppspp_packets()
    types = set()
    for d in expected_datagrams(pkts):
        assert isinstance(d, Datagram)
        types |= {type(m) for m in d.messages}
    assert len(types) == 14  # every message type of §8.2 Table 7
    pcap = tmp_path / "own.pcap"
    write_pcap(pcap, pkts)
    decode_as = [a for p in (7001, 7002, 7003, 7004, 7005) for a in ("-d", f"udp.port=={p},ppspp")]
    packets = check_ppspp_capture(pcap, *decode_as)
    # the bins are shown with the chunk range they denote (§4.2)
    bin_values = [num(b) for n in ppspp_nodes(packets) for b in n.all("ppspp.bin")]
    assert 0xFFFFFFFFFFFFFFFF in bin_values and 0x7FFFFFFF in bin_values


def test_info_column_summarises(tmp_path: Path) -> None:
    pcap = tmp_path / "info.pcap"
    write_pcap(pcap, own_ppspp_packets()[:3])
    assert TSHARK is not None
    out = subprocess.run(
        [TSHARK, "-n", "-X", f"lua_script:{LUA / 'ppspp.lua'}", "-r", str(pcap),
         "-T", "fields", "-e", "_ws.col.Info"],
        capture_output=True, text=True, timeout=TIMEOUT, check=True, env=tshark_env(),
    ).stdout.splitlines()  # fmt: skip
    assert out[0].startswith("chan=0x00000000, HANDSHAKE src=0x11111111 swarm=0001020304050607")
    assert out[1].startswith("chan=0x11111111, HANDSHAKE src=0x22222222, HAVE 0-3")
    assert out[2] == "chan=0x22222222, REQUEST 0-0"


def mutate(rng: random.Random, data: bytes) -> bytes:
    kind = rng.randrange(3)
    if kind == 0:
        return data[: rng.randrange(len(data))]  # truncated
    if kind == 1:
        b = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    return rng.randbytes(rng.randrange(0, 40))  # garbage


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32))
def test_hostile_ppspp_is_malformed_not_a_lua_error(seed: int) -> None:
    rng = random.Random(seed)
    valid = [p.payload for p in own_ppspp_packets() if len(p.payload) > 0]
    hostile = [mutate(rng, rng.choice(valid)) for _ in range(40)]
    # Each datagram between its own addresses, so that no channel context carries over.
    pkts = [PcapPacket(i, A, 20000 + i, f"10.1.0.{i + 1}", 7777, d) for i, d in enumerate(hostile)]
    with tempfile.TemporaryDirectory() as tmp:
        pcap = Path(tmp) / "hostile.pcap"
        write_pcap(pcap, pkts)
        packets, stderr = tshark_pdml(pcap, "ppspp.lua")
    assert not lua_errors(stderr), stderr
    assert len(packets) == len(hostile)
    for data, pkt in zip(hostile, packets, strict=True):
        node = proto(pkt, "ppspp")
        if not data:
            assert node is None  # UDP hands no empty payload to a dissector
            continue
        assert node is not None
        lua_failures = [n.show for n in node.walk() if "Lua" in n.show]
        assert lua_failures == [], data.hex()
        try:
            wire.parse_datagram(data)
            ours_ok = True
        except DecodeError:
            ours_ok = False
        malformed = bool(node.all("ppspp.malformed"))
        assert malformed == (not ours_ok), (data.hex(), ours_ok)


# ------------------------------------------------------------------------------------ PPSP-TP

S1 = "a4aa02efdd355541014e879bde4db5686ed896bc296b3683f151f3c394b3e375"
S2 = "8b9c668e0ac91bb2a680ee432c8770a6a147ae9f57ef7361d9022f0af1370df5"

ADDR4 = PeerAddress("198.51.100.7", 6778, 5, AddressType.REFLEXIVE)
ADDR6 = PeerAddress(
    "2001:db8::23", 7001, 0, AddressType.HOST, connection="wired", asn="64500",
    peer_protocol="PPSP-PP",
)  # fmt: skip
PEER_NUM = PeerNum(3, ability_nat="STUN", concurrent_links=4, online_time=5, upload_bandwidth=6)


def tracker_messages() -> list[Any]:
    """One message of every method (§3), together using every TLV type (§8)."""
    return [
        Connect(
            "csc-17",
            "2",
            [
                SwarmAction(S1, Action.LEAVE, PeerMode.LEECH),
                SwarmAction("live-1", Action.JOIN, PeerMode.SEEDER),
            ],
            peer_num=PEER_NUM,
            peer_addresses=[ADDR4, ADDR6],
            role=Role.CSC,
            area="paris",
            availability=[
                SwarmAvailability(S2, PeerMode.SEEDER, Role.CACHER, [(0, 9), (2**33, 2**33 + 1)])
            ],
        ),
        Find("csc-17", "81985529216486895", S1, PeerNum(2), area="paris", ranges=[(0, 63)]),
        StatQuery("cacher-3", "7", [S1, S2]),
        StatReport(
            "cacher-3",
            "8",
            stats=[StreamStats(S1, 1, 2, 3, 4)],
            availability=[SwarmAvailability(S1, PeerMode.LEECH, Role.CSC, [])],
            deltas=[AvailabilityDelta(S2, cached=[(5, 6)], evicted=[(7, 8), (9, 10)])],
        ),
        PushHintMessage(
            "9",
            [
                PushHint(S2, 0, 255, HintUnit.CHUNKS, 10, 60.0),
                PushHint(S1, 0, 30, HintUnit.SECONDS, 1, 2.5),
            ],
        ),
        GlobalInfoMessage("10", [SwarmPopularity(S1, 1000, 12.5, [(3, 4)])]),
        Response(
            "11",
            peer_address=ADDR4,
            swarm_results=[
                SwarmResult(
                    S1,
                    ResponseType.SUCCESSFUL,
                    [
                        PeerInfo(
                            "cacher-3",
                            [PeerAddress("203.0.113.10", 7000, 10)],
                            Role.CACHER,
                            "paris",
                            [(0, 1023)],
                        ),
                        PeerInfo("csc-23", [ADDR6], Role.CSC),
                    ],
                ),
                SwarmResult(S2, ResponseType.FAILED, None),
                SwarmResult("empty-group", ResponseType.SUCCESSFUL, []),
            ],
            push_hints=[PushHint(S2, 1, 2)],
            global_info=[SwarmPopularity(S2, 7, 0.5, [])],
        ),
        Response.error("12", ErrorCode.FORBIDDEN_ACTION),
        Response.error("13", ErrorCode.SERVICE_UNAVAILABLE),
    ]


_ENUMS: dict[type, dict[Any, int]] = {
    Action: {Action.JOIN: 1, Action.LEAVE: 2},
    PeerMode: {PeerMode.SEEDER: 1, PeerMode.LEECH: 2},
    AddressType: {AddressType.HOST: 1, AddressType.REFLEXIVE: 2, AddressType.PROXY: 3},
    Role: {Role.SOURCE: 1, Role.CACHER: 2, Role.CSC: 3},
    HintUnit: {HintUnit.CHUNKS: 1, HintUnit.SECONDS: 2},
}


def expected_tracker_fields(msg: Any) -> dict[str, list[str]]:
    """What tshark must show for ``msg``, per field, as sorted lists of normalised strings."""
    out: dict[str, list[str]] = {}

    def put(name: str, value: Any) -> None:
        if value is None:
            return
        if type(value) in _ENUMS:
            value = _ENUMS[type(value)][value]
        elif isinstance(value, float):
            value = repr(value)
        out.setdefault(name, []).append(str(value))

    def ranges(rs: Sequence[tuple[int, int]] | None) -> None:
        for s, e in rs or []:
            put("ppsptp.range.start", s)
            put("ppsptp.range.end", e)

    def addr(a: PeerAddress) -> None:
        put("ppsptp.addr.type", a.type)
        ip = ipaddress.ip_address(a.ip)
        put("ppsptp.addr.family", ip.version)
        put("ppsptp.addr.ipv4" if ip.version == 4 else "ppsptp.addr.ipv6", str(ip))
        put("ppsptp.addr.port", a.port)
        put("ppsptp.addr.priority", a.priority)
        put("ppsptp.addr.connection", a.connection)
        put("ppsptp.addr.asn", a.asn)
        put("ppsptp.addr.peer_protocol", a.peer_protocol)

    def peer_num(n: PeerNum | None) -> None:
        if n is None:
            return
        put("ppsptp.peer_count", n.peer_count)
        put("ppsptp.ability_nat", n.ability_nat)
        put("ppsptp.concurrent_links", n.concurrent_links)
        put("ppsptp.online_time", n.online_time)
        put("ppsptp.upload_bandwidth", n.upload_bandwidth)

    def availability(a: SwarmAvailability) -> None:
        put("ppsptp.peer_mode", a.peer_mode)
        put("ppsptp.role", a.role)
        put("ppsptp.swarm_id", a.swarm_id)
        ranges(a.ranges)

    def hint(h: PushHint) -> None:
        put("ppsptp.unit", h.unit)
        put("ppsptp.priority", h.priority)
        put("ppsptp.head_start", h.head_start)
        put("ppsptp.head_end", h.head_end)
        put("ppsptp.expires_in", float(h.expires_in))
        put("ppsptp.swarm_id", h.swarm_id)

    def popularity(p: SwarmPopularity) -> None:
        put("ppsptp.viewers", p.viewers)
        put("ppsptp.join_rate", float(p.join_rate))
        put("ppsptp.swarm_id", p.swarm_id)
        ranges(p.rarest)

    put("ppsptp.tid", msg.transaction_id)
    if isinstance(msg, Connect | Find | StatQuery | StatReport):
        put("ppsptp.peer_id", msg.peer_id)
    if isinstance(msg, Connect):
        for a in msg.swarm_actions:
            put("ppsptp.action", a.action)
            put("ppsptp.peer_mode", a.peer_mode)
            put("ppsptp.swarm_id", a.swarm_id)
        peer_num(msg.peer_num)
        for pa in msg.peer_addresses:
            addr(pa)
        put("ppsptp.role", msg.role)
        put("ppsptp.area", msg.area)
        for av in msg.availability:
            availability(av)
    elif isinstance(msg, Find):
        put("ppsptp.swarm_id", msg.swarm_id)
        peer_num(msg.peer_num)
        put("ppsptp.area", msg.area)
        ranges(msg.ranges)
    elif isinstance(msg, StatQuery):
        for s in msg.swarm_ids:
            put("ppsptp.swarm_id", s)
    elif isinstance(msg, StatReport):
        for st_ in msg.stats:
            put("ppsptp.uploaded_bytes", st_.uploaded_bytes)
            put("ppsptp.downloaded_bytes", st_.downloaded_bytes)
            put("ppsptp.available_bandwidth", st_.available_bandwidth)
            put("ppsptp.concurrent_links", st_.concurrent_links)
            put("ppsptp.swarm_id", st_.swarm_id)
        for av in msg.availability:
            availability(av)
        for d in msg.deltas:
            put("ppsptp.swarm_id", d.swarm_id)
            ranges(d.cached)
            ranges(d.evicted)
    elif isinstance(msg, PushHintMessage):
        for h in msg.hints:
            hint(h)
    elif isinstance(msg, GlobalInfoMessage):
        for p in msg.swarms:
            popularity(p)
    elif isinstance(msg, Response):
        if msg.peer_address is not None:
            addr(msg.peer_address)
        for r in msg.swarm_results:
            put("ppsptp.result", int(r.result))
            put("ppsptp.swarm_id", r.swarm_id)
            for info in r.peers or []:
                put("ppsptp.peer_id", info.peer_id)
                for pa in info.addresses:
                    addr(pa)
                put("ppsptp.role", info.role)
                put("ppsptp.area", info.area)
                ranges(info.ranges)
        for h in msg.push_hints:
            hint(h)
        for p in msg.global_info:
            popularity(p)
    return {k: sorted(v) for k, v in out.items()}


COMPARED = (
    "ppsptp.tid", "ppsptp.peer_id", "ppsptp.swarm_id", "ppsptp.action", "ppsptp.peer_mode",
    "ppsptp.peer_count", "ppsptp.ability_nat", "ppsptp.concurrent_links", "ppsptp.online_time",
    "ppsptp.upload_bandwidth", "ppsptp.addr.type", "ppsptp.addr.family", "ppsptp.addr.ipv4",
    "ppsptp.addr.ipv6", "ppsptp.addr.port", "ppsptp.addr.priority", "ppsptp.addr.connection",
    "ppsptp.addr.asn", "ppsptp.addr.peer_protocol", "ppsptp.uploaded_bytes",
    "ppsptp.downloaded_bytes", "ppsptp.available_bandwidth", "ppsptp.result", "ppsptp.role",
    "ppsptp.area", "ppsptp.range.start", "ppsptp.range.end", "ppsptp.unit", "ppsptp.priority",
    "ppsptp.head_start", "ppsptp.head_end", "ppsptp.expires_in", "ppsptp.viewers",
    "ppsptp.join_rate",
)  # fmt: skip


def shown_tracker_fields(node: Node) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n in node.walk():
        if n.name in COMPARED:
            v = n.show
            if n.name in ("ppsptp.expires_in", "ppsptp.join_rate"):
                v = repr(float(v))
            elif n.name == "ppsptp.addr.ipv6":
                v = str(ipaddress.IPv6Address(v))
            out.setdefault(n.name, []).append(v)
    return {k: sorted(v) for k, v in out.items()}


def check_tracker_message(node: Node, data: bytes) -> None:
    msg = binary.parse(data)  # the normative Construct definition
    assert binary.decode(data) == msg
    header = binary.peek_header(data)
    assert num(one(node, "ppsptp.method")) == header.method
    assert num(one(node, "ppsptp.version")) == header.version
    assert num(one(node, "ppsptp.length")) == header.length == len(data)
    assert num(one(node, "ppsptp.fragment")) == header.fragment
    assert shown_tracker_fields(node) == expected_tracker_fields(msg)
    tlvs = [num(n) for n in node.all("ppsptp.tlv.type")]
    assert len(tlvs) == len(node.all("ppsptp.tlv.length")) == (len(data) > 24) * len(tlvs)


def test_every_tracker_method_over_udp(tmp_path: Path) -> None:
    msgs = [binary.build(m) for m in tracker_messages()]
    methods = {binary.peek_header(d).method for d in msgs}
    assert {0x0800, 0x0805, 0x0807, 0x0808, 0x0820, 0x0821, 0x8800} <= methods
    pcap = tmp_path / "tp.pcap"
    write_pcap(pcap, [PcapPacket(i, A, 40000, B, 7846, d) for i, d in enumerate(msgs)])
    packets, stderr = tshark_pdml(pcap, "ppsptp.lua")
    assert not lua_errors(stderr), stderr
    seen_tlvs: set[int] = set()
    for data, pkt in zip(msgs, packets, strict=True):
        node = proto(pkt, "ppsptp")
        assert node is not None
        assert errors_in(pkt) == []
        check_tracker_message(node, data)
        seen_tlvs |= {num(n) for n in node.all("ppsptp.tlv.type")}
    assert seen_tlvs == {1, 2, 3, 4, 5, 6, 7, 8, *range(0x8001, 0x8008)}


def test_doc_example_find_over_udp(tmp_path: Path) -> None:
    find = tracker_messages()[1]
    data = binary.build(find)
    pcap = tmp_path / "find.pcap"
    write_pcap(pcap, [PcapPacket(0, A, 40000, B, 7846, data)])
    packets, _ = tshark_pdml(pcap, "ppsptp.lua")
    node = proto(packets[0], "ppsptp")
    assert node is not None
    assert one(node, "ppsptp.tid").show == "81985529216486895"
    assert one(node, "ppsptp.swarm_id").show == S1  # H = 1: shown as lowercase hex
    assert one(node, "ppsptp.peer_id").show == "csc-17"


def test_fragment_is_shown_as_fragment(tmp_path: Path) -> None:
    frags = binary.encode(tracker_messages()[0], None, 100)
    assert len(frags) > 1
    pcap = tmp_path / "frag.pcap"
    write_pcap(pcap, [PcapPacket(i, A, 40000, B, 7846, d) for i, d in enumerate(frags)])
    packets, stderr = tshark_pdml(pcap, "ppsptp.lua")
    assert not lua_errors(stderr)
    offsets = []
    for data, pkt in zip(frags, packets, strict=True):
        node = proto(pkt, "ppsptp")
        assert node is not None and errors_in(pkt) == []
        offsets.append(num(one(node, "ppsptp.fragment.offset")))
        assert one(node, "ppsptp.fragment_data").value == data[24:].hex()
    assert offsets == [binary.peek_header(d).offset for d in frags]


# TCP: segments written by hand (pcapfile writes UDP only).


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def tcp_frame(
    src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes
) -> bytes:
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload
    pseudo = s + d + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, s, d)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return ip + tcp


def write_tcp_pcap(path: Path, segments: list[bytes]) -> None:
    """A TCP connection A:40000 → B:7846 (SYN, SYN-ACK, ACK, then ``segments``)."""
    frames = [
        tcp_frame(A, B, 40000, 7846, 0, 0, 0x02, b""),
        tcp_frame(B, A, 7846, 40000, 0, 1, 0x12, b""),
        tcp_frame(A, B, 40000, 7846, 1, 1, 0x10, b""),
    ]
    seq = 1
    for seg in segments:
        frames.append(tcp_frame(A, B, 40000, 7846, seq, 1, 0x18, seg))
        seq += len(seg)
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 228))
        for i, fr in enumerate(frames):
            f.write(struct.pack("<IIII", 1000 + i, 0, len(fr), len(fr)) + fr)


def test_tcp_garbage_is_malformed_not_a_lua_error(tmp_path: Path) -> None:
    good = binary.build(tracker_messages()[1])
    bad_length = good[:20] + (10).to_bytes(4, "big") + good[24:]  # shorter than the header
    segments = [good, b"\x00garbage that is not a PPSP-TP header at all", good, bad_length]
    pcap = tmp_path / "tcp-bad.pcap"
    write_tcp_pcap(pcap, segments)
    packets, stderr = tshark_pdml(pcap, "ppsptp.lua", "-o", "tcp.check_checksum:FALSE")
    assert not lua_errors(stderr), stderr
    nodes = [p for pkt in packets for p in pkt if p.name == "ppsptp"]
    assert [bool(n.all("ppsptp.malformed")) for n in nodes] == [False, True, False, True]
    check_tracker_message(nodes[0], good)


def test_tcp_reassembly_by_length_field(tmp_path: Path) -> None:
    msgs = [binary.build(m) for m in tracker_messages()]
    stream = b"".join(msgs)
    # Cut the stream at awkward places: inside headers, inside TLVs, several messages per segment.
    rng = random.Random(7)
    cuts = sorted({rng.randrange(1, len(stream)) for _ in range(12)} | {10, 30})
    segments = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    pcap = tmp_path / "tcp.pcap"
    write_tcp_pcap(pcap, segments)
    packets, stderr = tshark_pdml(pcap, "ppsptp.lua", "-o", "tcp.check_checksum:FALSE")
    assert not lua_errors(stderr), stderr
    nodes = [p for pkt in packets for p in pkt if p.name == "ppsptp"]
    assert len(nodes) == len(msgs)
    for pkt in packets:
        assert errors_in(pkt) == []
    for node, data in zip(nodes, msgs, strict=True):
        check_tracker_message(node, data)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32))
def test_hostile_tracker_messages_are_malformed_not_a_lua_error(seed: int) -> None:
    rng = random.Random(seed)
    valid = [binary.build(m) for m in tracker_messages()]
    hostile = [mutate(rng, rng.choice(valid)) for _ in range(40)]
    hostile = [h for h in hostile if h]
    with tempfile.TemporaryDirectory() as tmp:
        pcap = Path(tmp) / "hostile.pcap"
        write_pcap(pcap, [PcapPacket(i, A, 40000, B, 7846, d) for i, d in enumerate(hostile)])
        packets, stderr = tshark_pdml(pcap, "ppsptp.lua")
    assert not lua_errors(stderr), stderr
    for data, pkt in zip(hostile, packets, strict=True):
        node = proto(pkt, "ppsptp")
        assert node is not None
        assert [n.show for n in node.walk() if "Lua" in n.show] == []
        malformed = bool(node.all("ppsptp.malformed"))
        try:
            binary.decode(data)
            ours_ok = True
        except TrackerError:
            ours_ok = False
        if ours_ok:
            assert not malformed, data.hex()  # valid bytes are never called malformed
        if not framed(data):
            assert malformed, data.hex()  # truncated, cut or not a message at all


def framed(data: bytes) -> bool:
    """The header is readable and its Message Length is the datagram's (gu-02 §5.2.4)."""
    try:
        return binary.peek_header(data).length == len(data)
    except TrackerError:
        return False


# ------------------------------------------------------------------------------------ install


def test_install_into_wiresharks_plugin_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`p2pcdn wireshark install` puts the plugins where tshark loads them without -X."""
    from lab import cli

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert cli.main(["wireshark", "install"]) == 0
    folder = tmp_path / ".local" / "lib" / "wireshark" / "plugins"
    printed = capsys.readouterr().out.splitlines()
    assert printed[:2] == [str(folder / "ppspp.lua"), str(folder / "ppsptp.lua")]
    for name in ("ppspp.lua", "ppsptp.lua"):
        assert (folder / name).read_bytes() == (LUA / name).read_bytes()
    pcap = tmp_path / "one.pcap"
    write_pcap(pcap, own_ppspp_packets()[:1])
    assert TSHARK is not None
    out = subprocess.run(
        [TSHARK, "-n", "-r", str(pcap), "-T", "fields", "-e", "ppspp.source_channel"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert out.stdout.strip() == "0x11111111"


def test_install_into_a_given_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lab import cli

    target = tmp_path / "a" / "b"
    assert cli.main(["wireshark", "install", "--dir", str(target)]) == 0
    assert sorted(p.name for p in target.iterdir()) == ["ppspp.lua", "ppsptp.lua"]
    assert str(target) in capsys.readouterr().out
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert cli.main(["wireshark", "install", "--dir", str(blocker)]) == 1
    assert "p2pcdn wireshark install" in capsys.readouterr().err
