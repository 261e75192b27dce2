"""The normative Construct codec (ppsp.peer.wire) against RFC 7574's examples and rules."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppsp.peer import wire
from ppsp.peer.messages import (
    Ack,
    Cancel,
    Choke,
    ChunkAddressing,
    Data,
    Datagram,
    DecodeError,
    EncodeError,
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

CR32 = WireContext(ChunkAddressing.CHUNK_RANGE32, hash_size=32)
SHA1_CR32 = WireContext(ChunkAddressing.CHUNK_RANGE32, hash_size=20)
BIN32 = WireContext(ChunkAddressing.BIN32)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# --- §4.2 bins -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("b", "chunks"),
    # §4.2 Figure 2 (W=8) and its prose: 7 = C0..C7, 3 = C0..C3, 1 = C0..C1, 2 = C1, 11 = C4..C7
    [(7, (0, 7)), (3, (0, 3)), (1, (0, 1)), (2, (1, 1)), (11, (4, 7)), (0, (0, 0)), (14, (7, 7))],
)
def test_bin_figure_2(b: int, chunks: tuple[int, int]) -> None:
    assert wire.bin_to_chunk_range(b) == chunks
    assert wire.chunk_range_to_bin(*chunks) == b


def test_bin_special_values() -> None:
    # §4.2: 0x7FFF...F is "everything"; all-ones is "empty" and maps to the widest range.
    assert wire.bin_to_chunk_range(0x7FFFFFFF) == (0, 2**31 - 1)
    assert wire.bin_to_chunk_range(0x7FFFFFFFFFFFFFFF) == (0, 2**63 - 1)
    assert wire.bin_to_chunk_range(0xFFFFFFFF) == (0, 2**32 - 1)
    assert wire.chunk_range_to_bin(0, 2**32 - 1) == 0xFFFFFFFF


@given(st.integers(0, 2**64 - 1))
def test_bin_round_trip(b: int) -> None:
    start, end = wire.bin_to_chunk_range(b)
    size = end - start + 1
    assert size & (size - 1) == 0 and start % size == 0
    assert wire.chunk_range_to_bin(start, end) == b


@pytest.mark.parametrize(("start", "end"), [(1, 2), (0, 2), (3, 2), (-1, 0), (2, 5), (4, 11)])
def test_unaligned_range_is_not_a_bin(start: int, end: int) -> None:
    with pytest.raises(EncodeError):
        wire.chunk_range_to_bin(start, end)


# --- RFC examples ---------------------------------------------------------------------------


def test_rfc_8_2_have_bin_example() -> None:
    # §8.2: HAVE of bin 1 with 32-bit bins is "0300000001" (bin 1 = chunks 0..1).
    assert wire.build_message(Have(0, 1), BIN32) == h("0300000001")
    assert wire.parse_message(h("0300000001"), BIN32) == (Have(0, 1), 5)


SWARM_ID = bytes(range(20))


def test_rfc_8_16_example_of_operation() -> None:
    # §8.16, first datagram (its swarm ID length field says 20, see DIGEST §2.9).
    first = (
        h("00000000 00 00000001 0001 0101 020014") + SWARM_ID + h("0301 0402 0602 0900000400 ff")
    )
    dgram = wire.parse_datagram(first, SHA1_CR32)
    assert dgram == Datagram(
        0,
        [
            Handshake(
                1,
                HandshakeOptions(
                    version=1,
                    minimum_version=1,
                    swarm_id=SWARM_ID,
                    integrity_method=IntegrityMethod.MERKLE,
                    merkle_hash_function=MerkleHashFunction.SHA256,
                    chunk_addressing=ChunkAddressing.CHUNK_RANGE32,
                    chunk_size=1024,
                ),
            )
        ],
    )
    assert isinstance(dgram.messages[0], Handshake)
    assert type(dgram.messages[0].options.merkle_hash_function) is MerkleHashFunction
    assert wire.build_datagram(dgram, SHA1_CR32) == first
    # Second datagram: the reply (no Minimum Version, no swarm ID) plus HAVE of chunk 0.
    reply = h("00000001 00 00000008 0001 0301 0402 0602 0900000400 ff 03 00000000 00000000")
    dgram = wire.parse_datagram(reply)
    assert dgram.channel == 1
    assert dgram.messages[1] == Have(0, 0)
    assert wire.build_datagram(dgram) == reply
    # Third datagram: REQUEST of chunk 0 and PEX_REQ.
    third = h("00000008 08 00000000 00000000 06")
    assert wire.parse_datagram(third) == Datagram(8, [Request(0, 0), PexReq()])
    assert wire.build_datagram(Datagram(8, [Request(0, 0), PexReq()])) == third


def test_keep_alive_is_the_channel_only() -> None:
    # §8.14
    assert wire.parse_datagram(h("12345678")) == Datagram(0x12345678, [])
    assert wire.build_datagram(Datagram(0x12345678)) == h("12345678")


def test_close_handshake() -> None:
    # §8.4: source channel 0, options empty (End only) or Version + End.
    dgram = wire.parse_datagram(h("0000abcd 00 00000000 ff"))
    msg = dgram.messages[0]
    assert isinstance(msg, Handshake) and msg.is_close
    assert wire.build_message(Handshake(0, HandshakeOptions(version=1))) == h("00 00000000 0001 ff")


# --- every message layout -------------------------------------------------------------------

HASH32 = bytes(range(32))

# (message, CAM, expected bytes): one per message type, covering every chunk addressing method.
LAYOUTS: list[tuple[Message, WireContext, str]] = [
    (Data(5, 5, 0x0102030405060708, b"chunk"), CR32, "01 00000005 00000005 0102030405060708 6368756e6b"),
    (Ack(2, 3, 77), WireContext(ChunkAddressing.BIN32), "02 00000005 000000000000004d"),
    (Have(4, 7), WireContext(ChunkAddressing.BIN64), "03 000000000000000b"),
    (Integrity(0, 1, HASH32), CR32, "04 00000000 00000001" + HASH32.hex()),
    (PexResV4(ipaddress.IPv4Address("192.0.2.1"), 6778), CR32, "05 c0000201 1a7a"),
    (PexReq(), CR32, "06"),
    (
        SignedIntegrity(0, 3, 0xE0000000_80000000, bytes(64)),
        WireContext(ChunkAddressing.CHUNK_RANGE64),
        "07 0000000000000000 0000000000000003 e000000080000000" + "00" * 64,
    ),
    (Request(1024, 2047), WireContext(ChunkAddressing.BYTE_RANGE64), "08 0000000000000400 00000000000007ff"),
    (Cancel(9, 9), CR32, "09 00000009 00000009"),
    (Choke(), CR32, "0a"),
    (Unchoke(), CR32, "0b"),
    (PexResV6(ipaddress.IPv6Address("2001:db8::1"), 1), CR32, "0c 20010db8000000000000000000000001 0001"),
    (PexResCert(b"\x30\x03\x02\x01\x00"), CR32, "0d 0005 3003020100"),
]  # fmt: skip


@pytest.mark.parametrize(("msg", "ctx", "wire_hex"), LAYOUTS)
def test_message_layout(msg: Message, ctx: WireContext, wire_hex: str) -> None:
    data = h(wire_hex)
    assert wire.build_message(msg, ctx) == data
    assert wire.parse_message(data, ctx) == (msg, len(data))
    assert wire.build_message(msg, ctx, compiled=True) == data
    assert wire.parse_message(data, ctx, compiled=True) == (msg, len(data))


@pytest.mark.parametrize(("msg", "ctx", "wire_hex"), LAYOUTS)
def test_every_truncation_is_a_decode_error(msg: Message, ctx: WireContext, wire_hex: str) -> None:
    data = h("00000001 0b") + h(wire_hex)  # an UNCHOKE first, to check `partial`
    # A DATA cut inside its chunk is still a whole DATA with a shorter chunk.
    whole = 5 + 1 + ctx.chunk_addressing.spec_size + 8 if isinstance(msg, Data) else len(data)
    assert whole > 6 or len(h(wire_hex)) == 1
    for cut in range(6, whole):
        for compiled in (False, True):
            with pytest.raises(DecodeError) as info:
                wire.parse_datagram(data[:cut], ctx, compiled=compiled)
            assert info.value.partial == Datagram(1, [Unchoke()])


@pytest.mark.parametrize("cam", list(ChunkAddressing))
def test_every_cam_spec_size(cam: ChunkAddressing) -> None:
    ctx = WireContext(cam)
    data = wire.build_message(Request(0, 0), ctx)
    assert len(data) == 1 + cam.spec_size
    assert wire.parse_message(data, ctx)[0] == Request(0, 0)


def test_several_messages_in_order() -> None:
    msgs: list[Message] = [Have(0, 127), Ack(3, 3, 25), Request(32, 63), Integrity(3, 3, HASH32)]
    msgs.append(Data(3, 3, 1, b"x" * 1024))
    data = wire.build_datagram(Datagram(7, msgs))
    assert wire.parse_datagram(data) == Datagram(7, msgs)


def test_data_takes_the_rest_of_the_datagram() -> None:
    # §8.6: without a chunk size in the context, bytes after a DATA header are its chunk.
    data = wire.build_datagram(Datagram(1, [Data(0, 0, 0, b"")])) + h("0b")
    assert wire.parse_datagram(data) == Datagram(1, [Data(0, 0, 0, b"\x0b")])


# --- handshake options (§7) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("cam", "width"),
    [(None, 4), (0, 4), (1, 8), (2, 4), (3, 8), (4, 8)],
)
def test_live_discard_window_width_follows_cam(cam: int | None, width: int) -> None:
    # §7.9: as wide as one number of the CAM; §7.8 default (chunk32) without option 6.
    options = HandshakeOptions(version=1, chunk_addressing=cam, live_discard_window=0x01020304)
    data = wire.build_message(Handshake(9, options))
    cam_part = "" if cam is None else f"06{cam:02x}"
    assert data == h(f"00 00000009 0001 {cam_part} 07 {0x01020304:0{2 * width}x} ff")
    assert wire.parse_message(data)[0] == Handshake(9, options)


def test_all_options_round_trip() -> None:
    options = HandshakeOptions(
        version=1,
        minimum_version=1,
        swarm_id=b"\x0d" + bytes(64),
        integrity_method=IntegrityMethod.UNIFIED_MERKLE,
        merkle_hash_function=MerkleHashFunction.SHA512,
        live_signature_algorithm=LiveSignatureAlgorithm.ECDSAP256SHA256,
        chunk_addressing=ChunkAddressing.BIN64,
        live_discard_window=0xFFFFFFFFFFFFFFFF,
        supported_messages=HandshakeOptions.bitmap_for({0, 1, 2, 3, 4, 8, 9, 10, 11}),
        chunk_size=0xFFFFFFFF,
    )
    data = wire.build_message(Handshake(0xCAFEBABE, options))
    assert data.startswith(h("00 cafebabe 0001 0101 020041 0d"))
    assert data.endswith(h("08 02 f8f0 09 ffffffff ff"))
    parsed, used = wire.parse_message(data)
    assert used == len(data)
    assert parsed == Handshake(0xCAFEBABE, options)


def test_unknown_option_values_are_kept() -> None:
    # Unknown values decode as ints so the endpoint can refuse them (libswift closes).
    data = h("00 00000001 0007 0309 0409 0563 0609 ff")
    msg, _ = wire.parse_message(data)
    assert isinstance(msg, Handshake)
    assert msg.options.version == 7
    assert msg.options.integrity_method == 9 and type(msg.options.integrity_method) is int
    assert msg.options.chunk_addressing == 9
    assert wire.build_message(msg) == data


@pytest.mark.parametrize(
    "options_hex",
    [
        "0001",  # no End option
        "",  # no End option, no options
        "0a00 ff",  # unknown option code 10
        "fe ff",  # unknown option code 254
        "0601 0001 ff",  # out of order (§7: sorted by code)
        "0001 0001 ff",  # repeated
        "020014 0001",  # swarm ID longer than the message
        "0802 ff",  # supported messages bitmap truncated
        "0605 07000000 ff",  # live discard window with an unknown CAM: width unknown
        "07 0102",  # live discard window truncated
    ],
)
def test_bad_options_are_decode_errors(options_hex: str) -> None:
    data = h("00000000 03 00000000 00000000 00 00000001" + options_hex.replace(" ", ""))
    with pytest.raises(DecodeError) as info:
        wire.parse_datagram(data)
    assert info.value.partial == Datagram(0, [Have(0, 0)])


def test_handshake_sets_context_for_following_messages() -> None:
    # §7: after a handshake choosing 64-bit chunk ranges and SHA-1, HAVE takes 16 bytes and
    # INTEGRITY a 20-byte hash, whatever the datagram was parsed with.
    hs = Handshake(5, HandshakeOptions(merkle_hash_function=0, chunk_addressing=4))
    msgs: list[Message] = [hs, Have(1, 2**40), Integrity(0, 0, bytes(20))]
    data = wire.build_datagram(Datagram(0, msgs), CR32)
    assert len(data) == 4 + 10 + 17 + 37
    assert wire.parse_datagram(data, CR32) == Datagram(0, msgs)


def test_live_signature_size_from_handshake() -> None:
    # §8.9: ECDSAP384SHA384 signatures are 96 bytes.
    swarm = bytes([14]) + bytes(96)
    hs = Handshake(5, HandshakeOptions(swarm_id=swarm, live_signature_algorithm=14))
    msgs: list[Message] = [hs, SignedIntegrity(0, 7, 1, bytes(range(96)))]
    data = wire.build_datagram(Datagram(0, msgs))
    assert data.endswith(bytes(range(96)))
    assert wire.parse_datagram(data) == Datagram(0, msgs)


def test_unusable_handshake_context() -> None:
    # A handshake with a CAM we cannot lay out still decodes when it ends the datagram (the
    # endpoint can answer it), but the messages after it cannot be parsed.
    alone = h("00000000 00 00000001 0609 ff")
    assert wire.parse_datagram(alone).messages[0] == Handshake(
        1, HandshakeOptions(chunk_addressing=9)
    )
    with pytest.raises(DecodeError) as info:
        wire.parse_datagram(alone + h("0b"))
    assert info.value.partial == wire.parse_datagram(alone)
    with pytest.raises(EncodeError):
        wire.build_datagram(
            Datagram(0, [Handshake(1, HandshakeOptions(chunk_addressing=9)), Choke()])
        )


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [14, 100, 254, 255])
def test_unknown_message_type(t: int) -> None:
    data = h("00000001 0a") + bytes([t]) + bytes(20)
    with pytest.raises(DecodeError, match="unknown message type") as info:
        wire.parse_datagram(data)
    assert info.value.partial == Datagram(1, [Choke()])


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x00\x00"])
def test_datagram_without_channel(data: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        wire.parse_datagram(data)
    assert info.value.partial is None


BAD_MESSAGES: list[tuple[Message, WireContext]] = [
    (Have(-1, 0), CR32),
    (Have(0, 2**32), CR32),
    (Have(0, 2**64), WireContext(ChunkAddressing.CHUNK_RANGE64)),
    (Have(1, 2), BIN32),  # not a bin
    (Have(2**31, 2**32 - 1), BIN32),  # a bin wider than 32 bits
    (Ack(0, 0, 2**64), CR32),
    (Data(0, 0, -1, b""), CR32),
    (Integrity(0, 0, bytes(20)), CR32),  # hash size differs from the context's
    (SignedIntegrity(0, 0, 0, bytes(63)), CR32),
    (PexResV4(ipaddress.IPv4Address("10.0.0.1"), 65536), CR32),
    (PexResCert(bytes(65536)), CR32),
    (Handshake(2**32), CR32),
    (Handshake(1, HandshakeOptions(version=256)), CR32),
    (Handshake(1, HandshakeOptions(swarm_id=bytes(65536))), CR32),
    (Handshake(1, HandshakeOptions(supported_messages=bytes(256))), CR32),
    (Handshake(1, HandshakeOptions(live_discard_window=2**32)), CR32),
    (Handshake(1, HandshakeOptions(chunk_addressing=7, live_discard_window=1)), CR32),
]


@pytest.mark.parametrize(("msg", "ctx"), BAD_MESSAGES)
def test_out_of_range_is_encode_error(msg: Message, ctx: WireContext) -> None:
    for compiled in (False, True):
        with pytest.raises(EncodeError):
            wire.build_message(msg, ctx, compiled=compiled)


def test_channel_out_of_range() -> None:
    with pytest.raises(EncodeError):
        wire.build_datagram(Datagram(-1))


# --- fuzz -----------------------------------------------------------------------------------

CONTEXTS = st.builds(
    WireContext,
    st.sampled_from(list(ChunkAddressing)),
    st.sampled_from([20, 28, 32, 48, 64]),
    st.sampled_from([64, 96, 256]),
)


def _decode_all_ways(data: bytes, ctx: WireContext) -> Datagram | None:
    """Parse interpreted and compiled; both must agree, and fail only with DecodeError."""
    results: list[tuple[str, Datagram | None]] = []
    for compiled in (False, True):
        try:
            results.append(("ok", wire.parse_datagram(data, ctx, compiled=compiled)))
        except DecodeError as exc:
            results.append(("error", exc.partial))
    assert results[0] == results[1]
    kind, value = results[0]
    if kind == "ok":
        # Every layout is canonical (sorted options, bijective bins), so a successful parse
        # re-encodes to exactly the input.
        assert isinstance(value, Datagram)
        assert wire.build_datagram(value, ctx) == data
        return value
    return None


@FUZZ
@given(st.binary(max_size=120), CONTEXTS)
def test_fuzz_random_bytes(data: bytes, ctx: WireContext) -> None:
    _decode_all_ways(data, ctx)


@FUZZ
@given(st.binary(min_size=5, max_size=80).map(lambda b: b[:4] + b"\x00" + b[4:]), CONTEXTS)
def test_fuzz_random_handshakes(data: bytes, ctx: WireContext) -> None:
    # Random bytes rarely start a handshake; force the type octet to reach the options.
    _decode_all_ways(data, ctx)


SAMPLE_DATAGRAMS = [
    h("00000000 00 9ecfd7ca 0001 0101 020014") + SWARM_ID + h("0301 0400 0602 ff"),
    h("9ecfd7ca 00 9e7e243a 0001 0101 0301 0400 0602 ff 03 00000000 0000007f 03 00000080 000000bf"),
    h("9e7e243a 03 00000000 00000000 02 00000000 00000000 0000000000000019 08 00000020 0000003f"),
    h("9ecfd7ca 04 00000023 00000023")
    + bytes(20)
    + h("01 00000022 00000022 000660cf9ecfdbdd")
    + bytes(40),
]


@FUZZ
@given(
    st.sampled_from(SAMPLE_DATAGRAMS),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=4),
    st.none() | st.integers(0, 120),
)
def test_fuzz_mutated_datagrams(base: bytes, flips: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(base)
    for pos, value in flips:
        data[pos % len(data)] = value
    _decode_all_ways(bytes(data[:cut]), SHA1_CR32)


def test_mutated_samples_deterministic() -> None:
    # Every single-byte substitution at every position of the samples: a quick exhaustive
    # pass that hypothesis' random sampling would take many examples to cover.
    rng = random.Random(7574)
    for base in SAMPLE_DATAGRAMS:
        for pos in range(len(base)):
            for value in (0x00, 0xFF, rng.randrange(256)):
                _decode_all_ways(base[:pos] + bytes([value]) + base[pos + 1 :], SHA1_CR32)
