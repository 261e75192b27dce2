"""The scapy PPSPP layers (interop.scapy_ppspp) decode like the normative Construct codec
(ppsp.peer.wire) and the fast codec (ppsp.peer.fastwire): on every datagram of the libswift
traces, on the swirl vectors, and on generated datagrams of every message type, every chunk
addressing method and every hash size; hostile bytes give a malformed layer, never a crash."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("scapy", reason="scapy is the interop extra")

from scapy.layers.inet import IP, UDP

from interop import scapy_ppspp as layers
from interop.pcapfile import read_pcap
from ppsp.peer import fastwire, wire
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
    MerkleHashFunction,
    PexReq,
    PexResCert,
    PexResV4,
    PexResV6,
    Request,
    SignedIntegrity,
    Unchoke,
    WireContext,
)
from tests.test_fastwire import contexts, datagrams
from tests.test_traces import chunk_vectors, erlang_binaries, swirl

TRACES = Path(__file__).resolve().parents[2] / "shared/traces"
LIBSWIFT = TRACES / "libswift"
needs_traces = pytest.mark.skipif(not LIBSWIFT.exists(), reason="no captured traces")
SHA1_CHUNK32 = WireContext(hash_size=20)
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def scapy_model(data: bytes, ctx: WireContext) -> Datagram:
    layer = layers.dissect_ppspp(data, ctx)
    assert bytes(layer) == data  # the layer re-encodes byte-exactly
    return layers.to_model(layer)


# --- the libswift traces ---------------------------------------------------------------------


@needs_traces
@pytest.mark.parametrize("name", ["libswift_static_200000B.pcap", "libswift_handshake_probes.pcap"])
def test_every_trace_datagram_decodes_alike_in_all_three_codecs(name: str) -> None:
    """Per channel: each side's handshake fixes the context of the datagrams sent to it."""
    contexts_by_channel: dict[tuple[str, int, int], WireContext] = {}
    checked = 0
    for packet in read_pcap(LIBSWIFT / name):
        channel = int.from_bytes(packet.payload[:4], "big")
        ctx = contexts_by_channel.get((packet.dst, packet.dport, channel), WireContext())
        if channel == 0:
            ctx = WireContext()
        ours = wire.parse_datagram(packet.payload, ctx)
        assert fastwire.decode_datagram(packet.payload, ctx) == ours
        assert scapy_model(packet.payload, ctx) == ours
        for msg in ours.messages:
            if isinstance(msg, Handshake) and msg.source_channel:
                announced = WireContext().updated_by(msg.options)
                contexts_by_channel[(packet.src, packet.sport, msg.source_channel)] = announced
        checked += 1
    assert checked == {"libswift_static_200000B.pcap": 411}.get(name, 12)
    # libswift announces SHA-1 Merkle trees: the INTEGRITY hashes were read as 20 bytes.
    assert WireContext().updated_by(HandshakeOptions(merkle_hash_function=0)) == SHA1_CHUNK32


@needs_traces
def test_trace_summaries_read_like_tshark_info_lines() -> None:
    packets = list(read_pcap(LIBSWIFT / "libswift_static_200000B.pcap"))
    first = layers.dissect_ppspp(packets[0].payload)
    assert first.summary() == (
        "PPSPP ch 0x00000000 HANDSHAKE(ver 1, min 1, swarm 026bf5be…, cipm merkle, hash SHA-1,"
        " cam chunk32)"
    )
    reply = layers.dissect_ppspp(packets[1].payload, SHA1_CHUNK32).summary()
    assert reply.endswith("HAVE 0-127 HAVE 128-191 HAVE 192-195")
    assert reply.startswith("PPSPP ch 0x9ecfd7ca HANDSHAKE(ver 1,")
    data = next(
        layers.dissect_ppspp(p.payload, SHA1_CHUNK32) for p in packets if len(p.payload) > 1000
    )
    assert "INTEGRITY 0-127 " in data.summary() and data.summary().endswith("DATA 0 (1024 B)")
    keepalive = next(p for p in packets if len(p.payload) == 4)
    assert layers.dissect_ppspp(keepalive.payload).summary().endswith(" keep-alive")
    close = layers.dissect_ppspp(packets[-1].payload).summary()
    assert close.endswith("HANDSHAKE(close)")


@needs_traces
def test_swirl_vectors() -> None:
    ctx = WireContext(ChunkAddressing.CHUNK_RANGE32, hash_size=20)
    for raw in erlang_binaries(swirl("handshakes.trace"))[0::2]:
        datagram = bytes(4) + raw
        assert scapy_model(datagram, ctx) == wire.parse_datagram(datagram, ctx)
    for raw, (start, end) in chunk_vectors():
        layer = layers.dissect_ppspp(bytes(4) + b"\x08" + raw, ctx)
        (request,) = layer.messages
        assert (request.start, request.end) == (start, end)
        assert layers.to_model(layer).messages == [Request(start, end)]


# --- our own messages ------------------------------------------------------------------------


def every_message(ctx: WireContext) -> list[object]:
    cam = ctx.chunk_addressing
    start, end = (4, 7) if cam.is_bin else (3, 9)
    return [
        Ack(start, end, 123456),
        Have(start, end),
        Integrity(start, end, bytes(range(ctx.hash_size))),
        PexResV4(ipaddress.IPv4Address("192.0.2.1"), 7777),
        PexReq(),
        SignedIntegrity(start, end, 0x1122334455667788, b"\x5a" * ctx.signature_size),
        Request(start, end),
        Cancel(start, end),
        Choke(),
        Unchoke(),
        PexResV6(ipaddress.IPv6Address("2001:db8::7"), 7778),
        PexResCert(b"\x30\x82\x01\x00" + bytes(32)),
        Data(start, end, 1_790_000_000_000_000, b"chunk bytes"),
    ]


@pytest.mark.parametrize("cam", list(ChunkAddressing))
@pytest.mark.parametrize("hash_function", list(MerkleHashFunction))
def test_every_message_type_cam_and_hash_size(
    cam: ChunkAddressing, hash_function: MerkleHashFunction
) -> None:
    ctx = WireContext(cam, hash_function.digest_size)
    dgram = Datagram(0xABCD, every_message(ctx))  # type: ignore[arg-type]
    data = wire.build_datagram(dgram, ctx)
    assert scapy_model(data, ctx) == dgram == wire.parse_datagram(data, ctx)
    assert fastwire.decode_datagram(data, ctx) == dgram
    layer = layers.dissect_ppspp(data, ctx)
    assert [m.type for m in layer.messages] == [1 + i for i in range(1, 13)] + [1]
    integrity = layer.messages[2]
    assert len(integrity.hash) == hash_function.digest_size
    if cam.is_bin:
        assert layer.messages[1].bin == wire.chunk_range_to_bin(4, 7) and "bin 11 (4-7)" in str(
            layer.summary()
        )
    elif cam is ChunkAddressing.BYTE_RANGE64:
        assert "HAVE bytes 3-9" in str(layer.summary())
    else:
        assert "HAVE 3-9" in str(layer.summary())


def test_handshake_with_every_option_sets_the_context_of_what_follows() -> None:
    options = HandshakeOptions(
        version=1,
        minimum_version=1,
        swarm_id=bytes(range(32)),
        integrity_method=IntegrityMethod.UNIFIED_MERKLE,
        merkle_hash_function=MerkleHashFunction.SHA512,
        live_signature_algorithm=13,
        chunk_addressing=ChunkAddressing.CHUNK_RANGE64,
        live_discard_window=2**40,  # 8 bytes wide after a 64-bit CAM (§7.9)
        supported_messages=HandshakeOptions.bitmap_for({0, 1, 2, 3, 4, 8}),
        chunk_size=4,
    )
    dgram = Datagram(
        0,
        [
            Handshake(0x01020304, options),
            Integrity(0, 1, bytes(64)),  # SHA-512 after the handshake
            Data(0, 0, 1, b"abcd"),  # chunk size 4: several DATA in one datagram (§8.6)
            Data(1, 1, 2, b"efgh"),
        ],
    )
    data = wire.build_datagram(dgram, WireContext())
    layer = layers.dissect_ppspp(data)
    assert layers.to_model(layer) == dgram == wire.parse_datagram(data)
    handshake = layer.messages[0]
    codes = [o.code for o in handshake.options]
    assert codes == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 255]
    assert handshake.option(7).value == 2**40
    summary = handshake.mysummary()
    assert "cam chunk64" in summary and "hash SHA-512" in summary and "chunk 4" in summary
    assert layer.messages[1].ctx.hash_size == 64
    assert [m.chunk for m in layer.messages[2:]] == [b"abcd", b"efgh"]


def test_layers_built_by_hand_encode_like_the_codec() -> None:
    ctx = WireContext(ChunkAddressing.BIN32)
    built = layers.PPSPP(
        channel=7,
        messages=[layers.PPSPPHave(ctx=ctx, bin=3), layers.PPSPPBare(type=10)],
    )
    assert bytes(built) == wire.build_datagram(Datagram(7, [Have(0, 3), Choke()]), ctx)
    default = layers.PPSPP(channel=1, messages=[layers.PPSPPRequest(start=5, end=6)])
    assert bytes(default) == wire.build_datagram(Datagram(1, [Request(5, 6)]))


def test_bound_to_the_default_udp_port() -> None:
    payload = wire.build_datagram(Datagram(9, [Have(0, 3)]))
    pkt = IP(bytes(IP(dst="127.0.0.1") / UDP(sport=40000, dport=7777) / payload))
    assert pkt.haslayer(layers.PPSPP)
    assert pkt[layers.PPSPP].channel == 9
    other = IP(bytes(IP(dst="127.0.0.1") / UDP(sport=40000, dport=7000) / payload))
    assert not other.haslayer(layers.PPSPP)


def test_context_manager_applies_to_bound_dissection() -> None:
    ctx = WireContext(hash_size=20)
    payload = wire.build_datagram(Datagram(1, [Integrity(0, 0, bytes(20)), Have(0, 0)]), ctx)
    frame = bytes(IP(dst="127.0.0.1") / UDP(sport=7777, dport=7777) / payload)
    with layers.ppspp_context(ctx):
        pkt = IP(frame)
    assert layers.to_model(pkt[layers.PPSPP]).messages == [Integrity(0, 0, bytes(20)), Have(0, 0)]
    # With the default SHA-256 context the same bytes do not parse (32-byte hash expected).
    assert layers.malformed_reason(layers.dissect_ppspp(payload)) is not None


@PROPERTY
@given(datagrams())
def test_generated_datagrams_decode_alike(case: tuple[WireContext, Datagram]) -> None:
    ctx, dgram = case
    data = wire.build_datagram(dgram, ctx)
    assert scapy_model(data, ctx) == wire.parse_datagram(data, ctx)


# --- hostile input ---------------------------------------------------------------------------


def verdict_agrees(data: bytes, ctx: WireContext) -> None:
    layer = layers.dissect_ppspp(data, ctx)  # never raises
    reason = layers.malformed_reason(layer)
    try:
        expected = wire.parse_datagram(data, ctx)
    except DecodeError:
        assert reason is not None
        with pytest.raises(DecodeError):
            layers.to_model(layer)
        return
    assert reason is None, reason
    assert layers.to_model(layer) == expected


@PROPERTY
@given(datagrams(), st.data())
def test_mutated_and_truncated_datagrams(
    case: tuple[WireContext, Datagram], data: st.DataObject
) -> None:
    ctx, dgram = case
    raw = bytearray(wire.build_datagram(dgram, ctx))
    cut = data.draw(st.integers(0, len(raw)))
    verdict_agrees(bytes(raw[:cut]), ctx)
    if raw:
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
        verdict_agrees(bytes(raw), ctx)


@PROPERTY
@given(st.binary(max_size=200), contexts())
def test_random_bytes(raw: bytes, ctx: WireContext) -> None:
    verdict_agrees(raw, ctx)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00\x00", "no 4-byte channel ID"),
        (b"\x00\x00\x00\x01\x0e", "unknown message type 14"),
        (b"\x00\x00\x00\x01\x03\x00\x00", "truncated HAVE"),
        (b"\x00\x00\x00\x01\x00\x00\x00\x00\x02\x02\x00\x14abc", "truncated swarm ID"),
        (b"\x00\x00\x00\x01\x00\x00\x00\x00\x02\x01\x01\x00\x01\xff", "sorted by code"),
        (b"\x00\x00\x00\x01\x00\x00\x00\x00\x02\x0a\x01\xff", "unknown protocol option 10"),
        (b"\x00\x00\x00\x01\x00\x00\x00\x00\x02\x00\x01", "no End option"),
    ],
)
def test_malformed_reasons(data: bytes, reason: str) -> None:
    layer = layers.dissect_ppspp(data)
    found = layers.malformed_reason(layer)
    assert found is not None and reason in found
    with pytest.raises(DecodeError):
        wire.parse_datagram(data)
