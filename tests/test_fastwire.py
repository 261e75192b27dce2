"""The struct fast path (ppsp.peer.fastwire) is byte-equal to the Construct definition.

Both directions, every message type, every chunk addressing method, every Merkle hash size,
and random or mutated bytes: both codecs raise DecodeError (with the same ``partial``) or
return the same datagram.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppsp.peer import fastwire, wire
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

PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HASH_SIZES = [20, 28, 32, 48, 64]
U8 = st.integers(0, 0xFF)
U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFFFFFF)
U64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)


@st.composite
def contexts(draw: st.DrawFn) -> WireContext:
    return WireContext(
        draw(st.sampled_from(list(ChunkAddressing))),
        draw(st.sampled_from(HASH_SIZES)),
        draw(st.sampled_from([64, 96, 128, 256])),
        draw(st.sampled_from([None, 4, 1024])),  # a fixed chunk size allows several DATA
    )


@st.composite
def chunk_specs(draw: st.DrawFn, cam: ChunkAddressing) -> tuple[int, int]:
    if cam.is_bin:
        # Drawing the bin covers every wire value, special ones included (§4.2).
        return wire.bin_to_chunk_range(draw(U32 if cam.width == 4 else U64))
    number = U32 if cam.width == 4 else U64
    return draw(number), draw(number)


T = TypeVar("T")

NO_BODY: dict[str, Callable[[], Message]] = {"pexreq": PexReq, "choke": Choke, "unchoke": Unchoke}
SPEC_ONLY: dict[str, Callable[[int, int], Message]] = {
    "have": Have,
    "request": Request,
    "cancel": Cancel,
}


@st.composite
def handshake_options(draw: st.DrawFn) -> HandshakeOptions:
    def maybe(strategy: st.SearchStrategy[T]) -> T | None:
        return draw(st.none() | strategy)

    known_cams = [0, 1, 2, 3, 4]
    cam = maybe(st.sampled_from(known_cams) | U8)
    ldw = None
    if cam is None or cam in known_cams:  # §7.9: the width comes from the CAM
        width = 4 if cam is None else ChunkAddressing(cam).width
        ldw = maybe(st.integers(0, 2 ** (8 * width) - 1))
    return HandshakeOptions(
        version=maybe(U8),
        minimum_version=maybe(U8),
        swarm_id=maybe(st.binary(max_size=40)),
        integrity_method=maybe(st.sampled_from([0, 1, 2, 3]) | U8),
        merkle_hash_function=maybe(st.sampled_from([0, 1, 2, 3, 4]) | U8),
        live_signature_algorithm=maybe(st.sampled_from([5, 8, 13, 14]) | U8),
        chunk_addressing=cam,
        live_discard_window=ldw,
        supported_messages=maybe(st.binary(max_size=32)),
        chunk_size=maybe(U32),
    )


@st.composite
def messages(draw: st.DrawFn, ctx: WireContext, data_allowed: bool) -> Message:
    cam = ctx.chunk_addressing
    kinds = [
        "handshake",
        "ack",
        "have",
        "integrity",
        "pex4",
        "pexreq",
        "signed",
        "request",
        "cancel",
        "choke",
        "unchoke",
        "pex6",
        "cert",
    ]
    kind = draw(st.sampled_from([*kinds, "data"] if data_allowed else kinds))
    if kind == "handshake":
        return Handshake(draw(U32), draw(handshake_options()))
    if kind in ("pexreq", "choke", "unchoke"):
        return NO_BODY[kind]()
    if kind == "pex4":
        return PexResV4(ipaddress.IPv4Address(draw(U32)), draw(U16))
    if kind == "pex6":
        return PexResV6(ipaddress.IPv6Address(draw(st.integers(0, 2**128 - 1))), draw(U16))
    if kind == "cert":
        return PexResCert(draw(st.binary(max_size=300)))
    start, end = draw(chunk_specs(cam))
    if kind == "data":
        payload = draw(st.binary(max_size=64) | st.just(bytes(range(256)) * 4))
        limit = ctx.data_length(start, end)
        if limit is not None:
            # §8.6: with a fixed chunk size a DATA holds at most its chunks' bytes (more would
            # be read as the next message); fewer is the short last chunk.
            payload = payload[:limit]
        return Data(start, end, draw(U64), payload)
    if kind == "ack":
        return Ack(start, end, draw(U64))
    if kind == "integrity":
        return Integrity(
            start, end, draw(st.binary(min_size=ctx.hash_size, max_size=ctx.hash_size))
        )
    if kind == "signed":
        signature = draw(st.binary(min_size=ctx.signature_size, max_size=ctx.signature_size))
        return SignedIntegrity(start, end, draw(U64), signature)
    return SPEC_ONLY[kind](start, end)


@st.composite
def datagrams(draw: st.DrawFn) -> tuple[WireContext, Datagram]:
    """A valid datagram and the context it starts in; a HANDSHAKE in it changes the context
    for the messages after it (§7), DATA comes last (§8.6)."""
    ctx = start_ctx = draw(contexts())
    count = draw(st.integers(0, 6))
    dgram = Datagram(draw(U32))
    for i in range(count):
        msg = draw(messages(ctx, data_allowed=i == count - 1))
        dgram.messages.append(msg)
        if isinstance(msg, Handshake):
            try:
                ctx = ctx.updated_by(msg.options)
            except DecodeError:
                break  # nothing can follow a handshake we cannot lay out
    return start_ctx, dgram


def decode_both(data: bytes, ctx: WireContext) -> tuple[str, Datagram | None]:
    """Decode with both codecs; they must agree, and fail only with DecodeError."""
    outcomes: list[tuple[str, Datagram | None]] = []
    for decode in (wire.parse_datagram, fastwire.decode_datagram):
        try:
            outcomes.append(("ok", decode(data, ctx)))
        except DecodeError as exc:
            outcomes.append(("error", exc.partial))
    assert outcomes[0] == outcomes[1]
    # memoryview input (a receive buffer) decodes the same
    try:
        assert ("ok", fastwire.decode_datagram(memoryview(data), ctx)) == outcomes[0]
    except DecodeError as exc:
        assert ("error", exc.partial) == outcomes[0]
    return outcomes[0]


# --- properties -----------------------------------------------------------------------------


@PROPERTY
@given(datagrams())
def test_encode_is_byte_equal(case: tuple[WireContext, Datagram]) -> None:
    ctx, dgram = case
    data = wire.build_datagram(dgram, ctx)
    assert fastwire.encode_datagram(dgram.channel, dgram.messages, ctx) == data
    assert wire.build_datagram(dgram, ctx, compiled=True) == data


@PROPERTY
@given(datagrams())
def test_decode_is_equal_and_round_trips(case: tuple[WireContext, Datagram]) -> None:
    ctx, dgram = case
    data = wire.build_datagram(dgram, ctx)
    assert decode_both(data, ctx) == ("ok", dgram)
    assert wire.parse_datagram(data, ctx, compiled=True) == dgram


@PROPERTY
@given(datagrams(), st.data())
def test_mutated_datagrams(case: tuple[WireContext, Datagram], data: st.DataObject) -> None:
    ctx, dgram = case
    raw = bytearray(wire.build_datagram(dgram, ctx))
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["set", "cut", "insert"]))
        pos = data.draw(st.integers(0, len(raw)))
        if op == "set" and pos < len(raw):
            raw[pos] = data.draw(U8)
        elif op == "cut":
            del raw[pos:]
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=3))
    kind, result = decode_both(bytes(raw), ctx)
    if kind == "ok":
        assert result is not None
        assert fastwire.encode_datagram(result.channel, result.messages, ctx) == bytes(raw)


@settings(PROPERTY, max_examples=80)
@given(datagrams())
def test_every_truncation(case: tuple[WireContext, Datagram]) -> None:
    ctx, dgram = case
    data = wire.build_datagram(dgram, ctx)
    # Cuts deep inside a DATA chunk only shorten the chunk, so stop at 260 bytes.
    for cut in range(min(len(data), 260)):
        decode_both(data[:cut], ctx)


@pytest.mark.parametrize("tail", ["0a", "0b", "06", "03 00000000 00000000", "01 00"])
@pytest.mark.parametrize("options", ["0609", "0463", "020001 05 0505", "020000 0563"])
def test_unusable_handshake_then_anything(tail: str, options: str) -> None:
    # A CAM, hash function or signature algorithm we cannot lay out stops decoding right
    # after the handshake, even before a message whose layout would not depend on it.
    hs = bytes.fromhex(f"00000000 00 00000001 {options} ff".replace(" ", ""))
    alone = wire.parse_datagram(hs)
    assert fastwire.decode_datagram(hs) == alone
    assert decode_both(hs + bytes.fromhex(tail.replace(" ", "")), WireContext()) == (
        "error",
        alone,
    )


@PROPERTY
@given(st.binary(max_size=100), contexts())
def test_random_bytes(raw: bytes, ctx: WireContext) -> None:
    decode_both(raw, ctx)


@PROPERTY
@given(
    contexts(),
    st.lists(st.sampled_from([1, 2, 3, 4, 8, 9, 10, 11]), min_size=1, max_size=5),
    st.binary(max_size=120),
)
def test_random_fast_path_messages(ctx: WireContext, types: list[int], tail: bytes) -> None:
    # Random bytes rarely hit valid type octets; put fast-path types at random positions.
    raw = bytearray(b"\x00\x00\x00\x01" + tail)
    step = max(1, len(tail) // len(types))
    for i, t in enumerate(types):
        pos = 4 + i * step
        if pos < len(raw):
            raw[pos] = t
    decode_both(bytes(raw), ctx)


@st.composite
def bad_messages(draw: st.DrawFn, ctx: WireContext) -> Message:
    """Messages with one value out of its field's range (or not a bin under a bin CAM)."""
    cam = ctx.chunk_addressing
    limit = 2 ** (8 * cam.width)
    bad_number = st.sampled_from([-1, limit, limit + 12345])
    good_start, good_end = draw(chunk_specs(cam))
    kinds = ["start", "end", "u64", "hash"] + (["unaligned"] if cam.is_bin else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "unaligned":
        start = draw(st.integers(1, 1000)) * 2 + 1
        return draw(st.sampled_from(list(SPEC_ONLY.values())))(start, start + 1)
    if kind == "hash":
        size = draw(st.sampled_from([s for s in HASH_SIZES if s != ctx.hash_size]))
        return Integrity(good_start, good_end, bytes(size))
    if kind == "u64":
        value = draw(st.sampled_from([-1, 2**64]))
        bad: list[Message] = [
            Ack(good_start, good_end, value),
            Data(good_start, good_end, value, b""),
        ]
        return draw(st.sampled_from(bad))
    start = draw(bad_number) if kind == "start" else good_start
    end = draw(bad_number) if kind == "end" else good_end
    if cam.is_bin:
        # any range the bin conversion accepts but the bin width cannot hold
        start, end = limit, 2 * limit - 1
    return draw(st.sampled_from(list(SPEC_ONLY.values())))(start, end)


@PROPERTY
@given(contexts().flatmap(lambda ctx: st.tuples(st.just(ctx), bad_messages(ctx))))
def test_out_of_range_values_are_encode_errors(case: tuple[WireContext, Message]) -> None:
    ctx, msg = case
    with pytest.raises(EncodeError):
        wire.build_datagram(Datagram(1, [msg]), ctx)
    with pytest.raises(EncodeError):
        fastwire.encode_datagram(1, [msg], ctx)


# --- the hot builders -----------------------------------------------------------------------


@PROPERTY
@given(contexts().flatmap(lambda ctx: st.tuples(st.just(ctx), st.data())))
def test_hot_builders_match_generic(case: tuple[WireContext, st.DataObject]) -> None:
    ctx, data = case
    channel = data.draw(U32)
    start, end = data.draw(chunk_specs(ctx.chunk_addressing))
    stamp = data.draw(U64)
    payload = data.draw(st.binary(max_size=40))
    integrities = [
        Integrity(*data.draw(chunk_specs(ctx.chunk_addressing)), bytes(ctx.hash_size))
        for _ in range(data.draw(st.integers(0, 4)))
    ]

    def generic(*msgs: Message) -> bytes:
        return wire.build_datagram(Datagram(channel, list(msgs)), ctx)

    assert fastwire.encode_data(channel, start, end, stamp, payload, ctx) == generic(
        Data(start, end, stamp, payload)
    )
    assert fastwire.encode_data(channel, start, end, stamp, memoryview(payload), ctx) == generic(
        Data(start, end, stamp, payload)
    )
    assert fastwire.encode_integrity_data(
        channel, integrities, start, end, stamp, payload, ctx
    ) == generic(*integrities, Data(start, end, stamp, payload))
    assert fastwire.encode_ack(channel, start, end, stamp, ctx) == generic(Ack(start, end, stamp))
    assert fastwire.encode_have(channel, start, end, ctx) == generic(Have(start, end))
    assert fastwire.encode_request(channel, start, end, ctx) == generic(Request(start, end))
    assert fastwire.encode_cancel(channel, start, end, ctx) == generic(Cancel(start, end))


def test_hot_builders_reject_out_of_range() -> None:
    ctx = WireContext()
    with pytest.raises(EncodeError):
        fastwire.encode_data(2**32, 0, 0, 0, b"", ctx)
    with pytest.raises(EncodeError):
        fastwire.encode_ack(1, 0, -1, 0, ctx)
    with pytest.raises(EncodeError):
        fastwire.encode_request(1, 0, 2**32, ctx)
    with pytest.raises(EncodeError):
        fastwire.encode_have(1, 1, 2, WireContext(ChunkAddressing.BIN32))
    with pytest.raises(EncodeError):
        fastwire.encode_integrity_data(1, [Integrity(0, 0, bytes(20))], 0, 0, 0, b"", ctx)


def test_data_payload_is_not_copied() -> None:
    buf = bytearray(fastwire.encode_data(7, 3, 3, 99, b"A" * 1024))
    dgram = fastwire.decode_datagram(memoryview(buf))
    msg = dgram.messages[0]
    assert isinstance(msg, Data) and isinstance(msg.payload, memoryview)
    buf[-1] = ord("B")  # the payload is a view of the receive buffer
    assert bytes(msg.payload[-1:]) == b"B"


@PROPERTY
@given(
    cam=st.sampled_from(list(ChunkAddressing)),
    chunks=st.lists(st.integers(0, 1000), min_size=1, max_size=6),
    tail=st.binary(min_size=0, max_size=8),
)
def test_several_data_in_one_datagram(cam: ChunkAddressing, chunks: list[int], tail: bytes) -> None:
    """§8.6: with a fixed chunk size a datagram may carry several DATA messages; each takes
    exactly its chunks' bytes, the last one the rest (here a short last chunk)."""
    size = 8
    ctx = WireContext(cam, 20, 64, size)
    msgs: list[Message] = []
    for i, c in enumerate(chunks):
        start = c * size if cam.is_byte_range else c
        end = start + size - 1 if cam.is_byte_range else c
        payload = bytes([i]) * size if i < len(chunks) - 1 else tail or b"z"
        if cam.is_byte_range and i == len(chunks) - 1:
            end = start + len(payload) - 1
        msgs.append(Data(start, end, i, payload))
    dgram = Datagram(7, msgs)
    fast = fastwire.encode_datagram(7, msgs, ctx)
    assert fast == wire.build_datagram(dgram, ctx)

    def fields(ms: list[Message]) -> list[tuple[int, int, int, bytes]]:
        return [(m.start, m.end, m.timestamp, bytes(m.payload)) for m in ms if isinstance(m, Data)]

    for decoded in (fastwire.decode_datagram(fast, ctx), wire.parse_datagram(fast, ctx)):
        assert len(decoded.messages) == len(msgs)
        assert fields(decoded.messages) == fields(msgs)
