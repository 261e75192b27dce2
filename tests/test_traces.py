"""Conformance on the captured traces in ../shared/traces (see its README.md), and the pcap
reader/writer (interop.pcapfile) that reads them.

libswift/*.pcap: every datagram of a real libswift exchange parses with both codecs and
re-encodes byte-exactly, and the facts the README documents hold. swirl/*.trace: the swirl
test vectors (Erlang term files) decode as they document.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import re
import struct
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from interop.pcapfile import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    PcapError,
    PcapPacket,
    read_pcap,
    write_pcap,
)
from ppsp.peer import fastwire, wire
from ppsp.peer.messages import (
    Ack,
    ChunkAddressing,
    Data,
    Datagram,
    Handshake,
    HandshakeOptions,
    Have,
    Integrity,
    IntegrityMethod,
    MerkleHashFunction,
    Message,
    PexReq,
    Request,
    WireContext,
)

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
needs_traces = pytest.mark.skipif(not TRACES.is_dir(), reason=f"no captured traces at {TRACES}")

STATIC = TRACES / "libswift" / "libswift_static_200000B.pcap"
PROBES = TRACES / "libswift" / "libswift_handshake_probes.pcap"
SEEDER_PORT, LEECHER_PORT = 20200, 20201

# The swarm of both captures: SHA-1 Merkle tree (20-byte hashes), 32-bit chunk ranges.
LIBSWIFT = WireContext(ChunkAddressing.CHUNK_RANGE32, hash_size=20)
SWARM_ID = bytes.fromhex("026bf5bed2c08204b6f0765acd1429068a874ee6")
CHUNK_SIZE = 1024
CONTENT_SIZE = 200000


@cache
def packets(path: Path) -> list[PcapPacket]:
    return list(read_pcap(path))


@cache
def decoded(path: Path) -> list[Datagram]:
    return [wire.parse_datagram(p.payload, LIBSWIFT) for p in packets(path)]


def content() -> bytes:
    """The documented content: SHA-256(counter as 8-byte big-endian), concatenated, cut."""
    stream = b"".join(hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(6250))
    return stream[:CONTENT_SIZE]


def of_type(dgrams: list[Datagram], cls: type[Message]) -> list[Message]:
    return [m for d in dgrams for m in d.messages if isinstance(m, cls)]


# --- both codecs, byte-exact ----------------------------------------------------------------


@needs_traces
@pytest.mark.parametrize("path", [STATIC, PROBES], ids=lambda p: p.name)
def test_every_datagram_parses_and_reencodes(path: Path) -> None:
    pkts = packets(path)
    assert pkts, "no UDP datagrams read"
    for i, (pkt, dgram) in enumerate(zip(pkts, decoded(path), strict=True), start=1):
        fast = fastwire.decode_datagram(pkt.payload, LIBSWIFT)
        assert fast == dgram, f"frame {i}"
        assert wire.parse_datagram(pkt.payload, LIBSWIFT, compiled=True) == dgram, f"frame {i}"
        assert wire.build_datagram(dgram, LIBSWIFT) == pkt.payload, f"frame {i}"
        assert fastwire.encode_datagram(fast.channel, fast.messages, LIBSWIFT) == pkt.payload


@needs_traces
def test_static_capture_shape() -> None:
    pkts = packets(STATIC)
    assert len(pkts) == 411
    assert {(p.src, p.dst) for p in pkts} == {("127.0.0.1", "127.0.0.1")}
    assert {(p.sport, p.dport) for p in pkts} == {
        (SEEDER_PORT, LEECHER_PORT),
        (LEECHER_PORT, SEEDER_PORT),
    }


# --- libswift_static_200000B.pcap: the README's facts ---------------------------------------


@needs_traces
def test_frame_1_leecher_handshake() -> None:
    first = decoded(STATIC)[0]
    assert packets(STATIC)[0].sport == LEECHER_PORT
    assert first.channel == 0  # §8.4: the initiator sends to channel 0
    assert len(first.messages) == 1
    hs = first.messages[0]
    assert isinstance(hs, Handshake)
    assert hs.options == HandshakeOptions(
        version=1,
        minimum_version=1,
        swarm_id=SWARM_ID,
        integrity_method=IntegrityMethod.MERKLE,
        merkle_hash_function=MerkleHashFunction.SHA1,
        chunk_addressing=ChunkAddressing.CHUNK_RANGE32,
    )
    # the swarm ID option carries a 2-byte length of 20 (§7.4)
    assert packets(STATIC)[0].payload[13:16] == bytes.fromhex("020014")


@needs_traces
def test_frame_2_seeder_reply_and_haves() -> None:
    leecher_hs, reply = decoded(STATIC)[0].messages[0], decoded(STATIC)[1]
    assert isinstance(leecher_hs, Handshake)
    assert reply.channel == leecher_hs.source_channel  # §8.4
    hs, *haves = reply.messages
    assert isinstance(hs, Handshake)
    assert hs.options.swarm_id is None  # the responder MAY omit it (§7.4); libswift does
    assert hs.options.chunk_addressing == ChunkAddressing.CHUNK_RANGE32
    assert hs.source_channel not in (0, leecher_hs.source_channel)
    assert haves == [Have(0, 127), Have(128, 191), Have(192, 195)]


@needs_traces
def test_channels_after_handshake() -> None:
    # §8.3: every datagram after the handshake carries the receiver's channel ID.
    dgrams, pkts = decoded(STATIC), packets(STATIC)
    leecher_hs, seeder_hs = dgrams[0].messages[0], dgrams[1].messages[0]
    assert isinstance(leecher_hs, Handshake) and isinstance(seeder_hs, Handshake)
    for pkt, dgram in zip(pkts[2:], dgrams[2:], strict=True):
        want = leecher_hs.source_channel if pkt.sport == SEEDER_PORT else seeder_hs.source_channel
        assert dgram.channel == want


@needs_traces
def test_frame_3_first_request() -> None:
    assert decoded(STATIC)[2].messages == [Request(0, 0), PexReq()]


@needs_traces
def test_integrity_before_data() -> None:
    # §5.4 as libswift does it: INTEGRITY (uncle hashes) first, one DATA last.
    with_data = [d for d in decoded(STATIC) if of_type([d], Data)]
    assert len(with_data) == 196
    assert sum(1 for d in with_data if isinstance(d.messages[0], Integrity)) == 117
    for dgram in with_data:
        *head, last = dgram.messages
        assert isinstance(last, Data)
        assert all(isinstance(m, Integrity) for m in head)


@needs_traces
def test_data_timestamp_then_payload() -> None:
    datas = of_type(decoded(STATIC), Data)
    assert sorted(m.start for m in datas if isinstance(m, Data)) == list(range(196))
    for m in datas:
        assert isinstance(m, Data)
        assert m.start == m.end  # one chunk per DATA
        # 64-bit µs timestamp (§8.6); the capture machine's clock said 2026 (README)
        when = datetime.datetime.fromtimestamp(m.timestamp / 1e6, datetime.UTC)
        assert when.year == 2026
        assert len(m.payload) == (CONTENT_SIZE - 195 * CHUNK_SIZE if m.start == 195 else CHUNK_SIZE)


@needs_traces
def test_data_reassembles_the_documented_content() -> None:
    chunks = {
        m.start: bytes(m.payload) for m in of_type(decoded(STATIC), Data) if isinstance(m, Data)
    }
    data = b"".join(chunks[i] for i in range(196))
    assert hashlib.sha1(data).hexdigest() == "0d4d86d55d046d39c5c7770ecac00ed7f8aada4e"
    assert hashlib.sha256(data).hexdigest() == (
        "58392635ad291988798e2725e571c51407ccc080721af16e525908a92c7036e8"
    )
    assert data == content()


@needs_traces
def test_integrity_hashes_are_the_merkle_tree() -> None:
    # §5.1: leaves H(chunk), empty leaves and subtrees all-zero, parent H(left || right);
    # swarm ID = root hash. Every INTEGRITY libswift sent is a node of that tree.
    data = content()
    leaves = [
        hashlib.sha1(data[i : i + CHUNK_SIZE]).digest() for i in range(0, len(data), CHUNK_SIZE)
    ]
    zero = bytes(20)

    @cache
    def node(start: int, end: int) -> bytes:
        if start >= len(leaves):
            return zero
        if start == end:
            return leaves[start]
        mid = (start + end) // 2
        left, right = node(start, mid), node(mid + 1, end)
        return zero if left == right == zero else hashlib.sha1(left + right).digest()

    assert node(0, 255) == SWARM_ID
    integrities = of_type(decoded(STATIC), Integrity)
    assert len(integrities) >= 196
    for m in integrities:
        assert isinstance(m, Integrity)
        assert node(m.start, m.end) == m.hash, (m.start, m.end)


@needs_traces
def test_acks_carry_delay_samples() -> None:
    acks = of_type(decoded(STATIC), Ack)
    assert sorted(a.start for a in acks if isinstance(a, Ack)) == list(range(196))
    for a in acks:
        assert isinstance(a, Ack)
        # §8.7: one-way delay in µs; on loopback, tens to hundreds of µs
        assert 0 < a.delay_sample < 10_000
    assert acks[0] == Ack(0, 0, 25)


@needs_traces
def test_keep_alives_are_the_channel_only() -> None:
    pkts, dgrams = packets(STATIC), decoded(STATIC)
    keep = [i for i, p in enumerate(pkts, start=1) if len(p.payload) == 4]
    assert keep == [70, 72, 391, *range(399, 411)]
    for i in keep:
        assert dgrams[i - 1].messages == []
        assert wire.build_datagram(dgrams[i - 1]) == pkts[i - 1].payload


@needs_traces
def test_frame_411_explicit_close() -> None:
    pkt, dgram = packets(STATIC)[410], decoded(STATIC)[410]
    assert pkt.sport == LEECHER_PORT
    assert pkt.payload[4:] == bytes.fromhex("0000000000ff")
    (hs,) = dgram.messages
    assert isinstance(hs, Handshake) and hs.is_close
    assert hs.options == HandshakeOptions()


# --- libswift_handshake_probes.pcap ---------------------------------------------------------


@needs_traces
def test_probes() -> None:
    pkts, dgrams = packets(PROBES), decoded(PROBES)
    assert len(pkts) == 12
    probe = {
        name: dgrams[frame - 1].messages[0]
        for name, frame in zip("ABCDEF", (1, 3, 5, 7, 9, 11), strict=True)
    }
    for name, frame in zip("ABCDEF", (1, 3, 5, 7, 9, 11), strict=True):
        assert pkts[frame - 1].dport == SEEDER_PORT and dgrams[frame - 1].channel == 0, name
        assert isinstance(probe[name], Handshake)
    opts = {name: hs.options for name, hs in probe.items() if isinstance(hs, Handshake)}
    assert opts["A"] == decoded(STATIC)[0].messages[0].options  # type: ignore[union-attr]
    assert opts["B"].chunk_size == 1024  # option 9: libswift drops the whole handshake
    assert opts["C"].supported_messages == b"\xff\xff"
    assert opts["C"].supported_message_types() == set(range(16))
    # D: option 8 then 9. libswift's option-8 parser swallows option 9; ours reads both.
    assert (opts["D"].supported_messages, opts["D"].chunk_size) == (b"\xff\xff", 1024)
    assert opts["E"].merkle_hash_function == MerkleHashFunction.SHA256
    assert opts["F"].chunk_addressing == ChunkAddressing.CHUNK_RANGE64

    def replies_to(frame: int) -> list[int]:
        port = pkts[frame - 1].sport
        return [i for i, p in enumerate(pkts, start=1) if p.dport == port]

    assert replies_to(1) == [2, 4]  # accepted, reply retransmitted
    assert replies_to(3) == []  # B silently dropped
    assert replies_to(5) == [6] and replies_to(7) == [8]  # C, D accepted
    for accepted in (2, 6, 8):
        hs, *haves = dgrams[accepted - 1].messages
        assert isinstance(hs, Handshake) and not hs.is_close
        assert haves == [Have(0, 127), Have(128, 191), Have(192, 195)]
    for refused in (9, 11):  # E, F: refused with a close on channel 0
        (reply,) = replies_to(refused)
        assert pkts[reply - 1].payload == bytes.fromhex("00000000 00 00000000 ff")
        assert dgrams[reply - 1] == Datagram(0, [Handshake(0)])


# --- swirl test vectors ---------------------------------------------------------------------


def erlang_binaries(text: str) -> list[bytes]:
    """Every ``<<1,2,3>>`` binary literal of an Erlang term file, in order."""
    return [
        bytes(int(x) for x in body.split(",") if x.strip())
        for body in re.findall(r"<<([\d,\s]*)>>", text)
    ]


def swirl(name: str) -> str:
    return (TRACES / "swirl" / name).read_text()


@needs_traces
def test_swirl_handshakes() -> None:
    text = swirl("handshakes.trace")
    channels = [int(c) for c in re.findall(r"channel => (\d+)", text)]
    swarm_ids = erlang_binaries(text)[1::2]  # each entry: the message, then its swarm_id
    messages = erlang_binaries(text)[0::2]
    assert channels == [4011418068, 2342878923] and len(messages) == 2
    for raw, channel, swarm_id in zip(messages, channels, swarm_ids, strict=True):
        expected = Handshake(
            channel,
            HandshakeOptions(
                version=1,  # supported_version
                minimum_version=1,
                swarm_id=swarm_id,
                integrity_method=IntegrityMethod.MERKLE,  # merkle_hash_tree
                merkle_hash_function=MerkleHashFunction.SHA1,  # sha
                chunk_addressing=ChunkAddressing.CHUNK_RANGE32,  # chunk_32bit_chunks
            ),
        )
        # A bare HANDSHAKE message (no datagram channel prefix) from swirl's encoder.
        assert wire.parse_message(raw, LIBSWIFT) == (expected, len(raw))
        assert fastwire.decode_datagram(bytes(4) + raw, LIBSWIFT).messages == [expected]
        assert wire.build_message(expected, LIBSWIFT) == raw


def chunk_vectors() -> list[tuple[bytes, tuple[int, int]]]:
    text = swirl("chunks.trace")
    found = re.findall(
        r"\{chunk_32bit_chunks,\s*<<([\d,\s]*)>>\},\s*\{#\{chunk_32bit_chunks => \{(\d+),(\d+)\}\}",
        text,
    )
    return [(bytes(int(x) for x in raw.split(",")), (int(s), int(e))) for raw, s, e in found]


@needs_traces
def test_swirl_chunk_ranges() -> None:
    vectors = chunk_vectors()
    assert len(vectors) == 7
    ctx = WireContext(ChunkAddressing.CHUNK_RANGE32)
    for raw, (start, end) in vectors:
        spec = wire.CHUNK_SPEC.parse(raw, cam=int(ctx.chunk_addressing))
        assert (spec.start, spec.end) == (start, end)
        assert wire.CHUNK_SPEC.build({"start": start, "end": end}, cam=2) == raw
        # the same specification inside a REQUEST, through both codecs
        assert wire.parse_message(b"\x08" + raw, ctx) == (Request(start, end), 9)
        assert fastwire.decode_datagram(bytes(4) + b"\x08" + raw, ctx).messages == [
            Request(start, end)
        ]


@needs_traces
def test_swirl_haves() -> None:
    text = swirl("haves.trace")
    haves = erlang_binaries(text)
    assert len(haves) == 7
    # Each entry is {chunk_32bit_chunks, <<HAVE message>>, {chunk_32bit_chunks, 5, 6}}. The
    # third element is a placeholder in the original swirl vectors (the same {5, 6} for every
    # HAVE), not the decoded range, so it is not asserted. The HAVE bodies are the chunk
    # specifications of chunks.trace, in the same order: assert the ranges from there.
    assert text.count("{chunk_32bit_chunks, 5, 6}") == 7
    ctx = WireContext(ChunkAddressing.CHUNK_RANGE32)
    for raw, (spec, (start, end)) in zip(haves, chunk_vectors(), strict=True):
        assert raw == b"\x03" + spec
        assert wire.parse_message(raw, ctx) == (Have(start, end), 9)
        assert fastwire.decode_datagram(bytes(4) + raw, ctx).messages == [Have(start, end)]
        assert wire.build_message(Have(start, end), ctx) == raw


# --- interop.pcapfile -----------------------------------------------------------------------


def internet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def udp4(src: str, dst: str, sport: int, dport: int, payload: bytes, proto: int = 17) -> bytes:
    udp = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
    return (
        struct.pack(">BBHHHBBH", 0x45, 0, 20 + len(udp), 1, 0, 64, proto, 0)
        + ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
        + udp
    )


def udp6(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
    # with a hop-by-hop extension header (8 bytes) before UDP
    return (
        struct.pack(">IHBB", 6 << 28, len(udp) + 8, 0, 64)
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + bytes([17, 0]) + bytes(6)
        + udp
    )  # fmt: skip


def pcap_bytes(linktype: int, frames: list[bytes], order: str = "<", nanos: bool = False) -> bytes:
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for i, frame in enumerate(frames):
        frac = 250_000_000 if nanos else 250_000
        out += struct.pack(order + "IIII", 1_700_000_000 + i, frac, len(frame), len(frame)) + frame
    return out


ETH = bytes(12)
FRAMES_V4 = udp4("10.0.0.1", "10.0.0.2", 1111, 2222, b"ppspp")
FRAMES_V6 = udp6("2001:db8::1", "2001:db8::2", 3333, 4444, b"v6")


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nanos", [False, True])
@pytest.mark.parametrize(
    ("linktype", "wrap"),
    [
        (
            LINKTYPE_ETHERNET,
            lambda ip: ETH + (b"\x08\x00" if ip[0] >> 4 == 4 else b"\x86\xdd") + ip,
        ),
        (LINKTYPE_NULL, lambda ip: struct.pack("<I", 2 if ip[0] >> 4 == 4 else 30) + ip),
        (LINKTYPE_RAW, lambda ip: ip),
        (LINKTYPE_IPV4, lambda ip: ip),
        (
            LINKTYPE_LINUX_SLL,
            lambda ip: bytes(14) + (b"\x08\x00" if ip[0] >> 4 == 4 else b"\x86\xdd") + ip,
        ),
    ],
)
def test_read_link_types(tmp_path: Path, order: str, nanos: bool, linktype: int, wrap: Any) -> None:
    base = 1_700_000_000.25
    frames: list[bytes] = []
    want: list[PcapPacket] = []
    # non-UDP traffic is skipped: an ARP frame (Ethernet only) and a TCP segment
    if linktype == LINKTYPE_ETHERNET:
        frames.append(ETH + b"\x08\x06" + bytes(28))
    frames.append(wrap(udp4("10.0.0.1", "10.0.0.2", 1, 2, bytes(20), proto=6)))
    frames.append(wrap(FRAMES_V4))
    want.append(PcapPacket(base + len(frames) - 1, "10.0.0.1", 1111, "10.0.0.2", 2222, b"ppspp"))
    if linktype != LINKTYPE_IPV4:
        frames.append(wrap(FRAMES_V6))
        want.append(
            PcapPacket(base + len(frames) - 1, "2001:db8::1", 3333, "2001:db8::2", 4444, b"v6")
        )
    path = tmp_path / "t.pcap"
    path.write_bytes(pcap_bytes(linktype, frames, order, nanos))
    assert list(read_pcap(path)) == want


def fields(p: PcapPacket) -> tuple[str, int, str, int, bytes]:
    return (p.src, p.sport, p.dst, p.dport, p.payload)


def test_fragments_and_snaplen_cuts_are_skipped(tmp_path: Path) -> None:
    frag = bytearray(FRAMES_V4)
    frag[6] = 0x20  # More Fragments
    cut = FRAMES_V4[:-2]  # captured shorter than the datagram
    path = tmp_path / "t.pcap"
    path.write_bytes(pcap_bytes(LINKTYPE_RAW, [bytes(frag), cut, FRAMES_V4]))
    assert [p.payload for p in read_pcap(path)] == [b"ppspp"]


@pytest.mark.parametrize("cut", [3, 10, 24 + 8, 24 + 16 + 5])
def test_truncated_file(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "t.pcap"
    path.write_bytes(pcap_bytes(LINKTYPE_RAW, [FRAMES_V4])[:cut])
    with pytest.raises(PcapError):
        list(read_pcap(path))


@pytest.mark.parametrize(
    "head",
    [b"\x0a\x0d\x0d\x0a" + bytes(20), b"GIF89a" + bytes(30), pcap_bytes(147, [])],
    ids=["pcapng", "not-pcap", "unknown-linktype"],
)
def test_not_a_classic_pcap(tmp_path: Path, head: bytes) -> None:
    path = tmp_path / "t.pcap"
    path.write_bytes(head)
    with pytest.raises(PcapError):
        list(read_pcap(path))
    assert issubclass(PcapError, ValueError)


def test_empty_capture(tmp_path: Path) -> None:
    path = tmp_path / "t.pcap"
    path.write_bytes(pcap_bytes(LINKTYPE_ETHERNET, []))
    assert list(read_pcap(path)) == []


@pytest.mark.parametrize("linktype", [LINKTYPE_IPV4, LINKTYPE_RAW, LINKTYPE_IPV6])
def test_write_then_read(tmp_path: Path, linktype: int) -> None:
    v4 = PcapPacket(1_700_000_000.123456, "127.0.0.1", 20200, "127.0.0.1", 20201, b"\x00" * 1029)
    v6 = PcapPacket(1_700_000_001.5, "::1", 1, "::1", 65535, b"odd")
    packets_in = {LINKTYPE_IPV4: [v4], LINKTYPE_RAW: [v4, v6], LINKTYPE_IPV6: [v6]}[linktype]
    path = tmp_path / "w.pcap"
    write_pcap(path, packets_in, linktype=linktype)
    raw = path.read_bytes()
    assert struct.unpack_from("<IHHiIII", raw)[::6] == (0xA1B2C3D4, linktype)
    got = list(read_pcap(path))
    assert [fields(p) for p in got] == [fields(p) for p in packets_in]
    assert [round(p.timestamp, 6) for p in got] == [p.timestamp for p in packets_in]
    # checksums: the IPv4 header and every UDP datagram (with its pseudo-header) sum to 0xFFFF
    off = 24
    for pkt in packets_in:
        (length,) = struct.unpack_from("<I", raw, off + 8)
        frame = raw[off + 16 : off + 16 + length]
        off += 16 + length
        src = ipaddress.ip_address(pkt.src).packed
        dst = ipaddress.ip_address(pkt.dst).packed
        udp_len = 8 + len(pkt.payload)
        if frame[0] >> 4 == 4:
            assert internet_checksum(frame[:20]) == 0xFFFF
            pseudo = src + dst + struct.pack(">xBH", 17, udp_len)
            udp = frame[20:]
        else:
            pseudo = src + dst + struct.pack(">I3xB", udp_len, 17)
            udp = frame[40:]
        assert struct.unpack_from(">H", udp, 6)[0] != 0
        assert internet_checksum(pseudo + udp) == 0xFFFF


def test_write_rejects_what_does_not_fit(tmp_path: Path) -> None:
    v6 = PcapPacket(0.0, "::1", 1, "::1", 2, b"")
    with pytest.raises(ValueError):
        write_pcap(tmp_path / "a.pcap", [v6])  # IPv6 on the IPv4 link type
    with pytest.raises(ValueError):
        write_pcap(tmp_path / "b.pcap", [PcapPacket(0.0, "1.2.3.4", 70000, "1.2.3.4", 2, b"")])
    with pytest.raises(ValueError):
        write_pcap(tmp_path / "c.pcap", [PcapPacket(0.0, "1.2.3.4", 1, "1.2.3.4", 2, bytes(65508))])
    with pytest.raises(ValueError):
        write_pcap(tmp_path / "d.pcap", [], linktype=LINKTYPE_ETHERNET)


@needs_traces
def test_rewrite_trace_keeps_datagrams(tmp_path: Path) -> None:
    path = tmp_path / "probes.pcap"
    write_pcap(path, packets(PROBES))
    assert list(read_pcap(path)) == [
        PcapPacket(round(p.timestamp, 6), p.src, p.sport, p.dst, p.dport, p.payload)
        for p in packets(PROBES)
    ]
