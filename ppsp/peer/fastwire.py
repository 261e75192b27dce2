"""Hand-written ``struct`` codec for the PPSPP data path (DESIGN §3).

DATA, ACK, HAVE, INTEGRITY, REQUEST, CANCEL, CHOKE, UNCHOKE and keep-alives are decoded and
encoded with ``struct.Struct`` objects precompiled per chunk addressing method; every other
message (HANDSHAKE, SIGNED_INTEGRITY, PEX_*) is delegated to the normative Construct
definition in :mod:`ppsp.peer.wire`. The results are the same as :mod:`ppsp.peer.wire`'s for
every input, errors included (``tests/test_fastwire.py`` proves it with hypothesis).

DATA payloads are returned as ``memoryview`` slices of the input: no copy of the chunk. They
stay valid as long as the input buffer does; a caller that reuses a receive buffer must copy
the payloads it keeps.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

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
    Have,
    Integrity,
    Message,
    MessageType,
    Request,
    Unchoke,
    WireContext,
)
from ppsp.peer.wire import DEFAULT_CONTEXT, bin_to_chunk_range, chunk_range_to_bin

__all__ = [
    "decode_datagram",
    "encode_ack",
    "encode_cancel",
    "encode_data",
    "encode_datagram",
    "encode_have",
    "encode_integrity_data",
    "encode_request",
]

_CHANNEL = struct.Struct(">I")

# Message type codes (§8.2 Table 7) as plain ints: cheaper to compare than IntEnum members.
_HANDSHAKE = 0
_DATA = 1
_ACK = 2
_HAVE = 3
_INTEGRITY = 4
_REQUEST = 8
_CANCEL = 9
_CHOKE = 10
_UNCHOKE = 11
_KNOWN_TYPES = frozenset(int(t) for t in MessageType)
_SPEC_ONLY = frozenset((_HAVE, _REQUEST, _CANCEL))


@dataclass(frozen=True, slots=True)
class _Cam:
    """Precompiled layouts of one chunk addressing method (§4, §7.8).

    ``spec`` is the chunk specification alone (HAVE, REQUEST, CANCEL, INTEGRITY), ``spec_q``
    the specification followed by a 64-bit integer (DATA timestamp, ACK delay sample). The
    ``m_`` variants start with the type octet, the ``d_`` variants with the channel ID too.
    """

    is_bin: bool
    spec: struct.Struct
    spec_q: struct.Struct
    m_spec: struct.Struct
    m_spec_q: struct.Struct
    d_spec: struct.Struct
    d_spec_q: struct.Struct


def _cam(is_bin: bool, fmt: str) -> _Cam:
    return _Cam(
        is_bin,
        struct.Struct(">" + fmt),
        struct.Struct(">" + fmt + "Q"),
        struct.Struct(">B" + fmt),
        struct.Struct(">B" + fmt + "Q"),
        struct.Struct(">IB" + fmt),
        struct.Struct(">IB" + fmt + "Q"),
    )


_CAMS: dict[ChunkAddressing, _Cam] = {
    ChunkAddressing.BIN32: _cam(True, "I"),
    ChunkAddressing.BYTE_RANGE64: _cam(False, "QQ"),
    ChunkAddressing.CHUNK_RANGE32: _cam(False, "II"),
    ChunkAddressing.BIN64: _cam(True, "Q"),
    ChunkAddressing.CHUNK_RANGE64: _cam(False, "QQ"),
}


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def _truncated(t: int, off: int, dgram: Datagram) -> DecodeError:
    return DecodeError(
        f"malformed {MessageType(t).name} message at offset {off}: truncated", partial=dgram
    )


def decode_datagram(data: bytes | memoryview, ctx: WireContext = DEFAULT_CONTEXT) -> Datagram:
    """Parse a PPSPP datagram; same result and errors as :func:`ppsp.peer.wire.parse_datagram`.

    DATA payloads are ``memoryview`` slices of ``data`` (no copy).
    """
    n = len(data)
    if n < 4:
        raise DecodeError(f"datagram of {n} bytes has no 4-byte channel ID (§8.3)")
    mv = data if isinstance(data, memoryview) else memoryview(data)
    c = _CAMS[ctx.chunk_addressing]
    dgram = Datagram(_CHANNEL.unpack_from(data)[0])
    messages = dgram.messages
    off = 4
    while off < n:
        t = data[off]
        body = off + 1
        if t == _DATA:  # §8.6: spec, timestamp, then the chunk (see WireContext.data_length)
            h = c.spec_q
            p = body + h.size
            if p > n:
                raise _truncated(t, off, dgram)
            if c.is_bin:
                b, ts = h.unpack_from(data, body)
                s, e = bin_to_chunk_range(b)
            else:
                s, e, ts = h.unpack_from(data, body)
            size = ctx.data_length(s, e) if ctx.chunk_size is not None else None
            if size is not None and p + size < n:
                messages.append(Data(s, e, ts, mv[p : p + size]))  # more DATA follows
                off = p + size
                continue
            messages.append(Data(s, e, ts, mv[p:]))
            break
        if t == _INTEGRITY:  # §8.8
            h = c.spec
            p = body + h.size
            q = p + ctx.hash_size
            if q > n:
                raise _truncated(t, off, dgram)
            if c.is_bin:
                s, e = bin_to_chunk_range(h.unpack_from(data, body)[0])
            else:
                s, e = h.unpack_from(data, body)
            messages.append(Integrity(s, e, bytes(mv[p:q])))
            off = q
        elif t == _ACK:  # §8.7
            h = c.spec_q
            p = body + h.size
            if p > n:
                raise _truncated(t, off, dgram)
            if c.is_bin:
                b, delay = h.unpack_from(data, body)
                s, e = bin_to_chunk_range(b)
            else:
                s, e, delay = h.unpack_from(data, body)
            messages.append(Ack(s, e, delay))
            off = p
        elif t in _SPEC_ONLY:  # §8.5, §8.10, §8.11
            h = c.spec
            p = body + h.size
            if p > n:
                raise _truncated(t, off, dgram)
            if c.is_bin:
                s, e = bin_to_chunk_range(h.unpack_from(data, body)[0])
            else:
                s, e = h.unpack_from(data, body)
            cls = Have if t == _HAVE else Request if t == _REQUEST else Cancel
            messages.append(cls(s, e))
            off = p
        elif t == _CHOKE:  # §8.12
            messages.append(Choke())
            off = body
        elif t == _UNCHOKE:
            messages.append(Unchoke())
            off = body
        elif t in _KNOWN_TYPES:
            # Control messages: the Construct definition is the codec.
            try:
                msg, used = wire.parse_message(mv[off:], ctx)
            except DecodeError as exc:
                raise DecodeError(f"{exc} (message at offset {off})", partial=dgram) from exc
            messages.append(msg)
            off += used
            if t == _HANDSHAKE and off < n:
                assert isinstance(msg, Handshake)
                try:
                    ctx = wire.context_after_handshake(ctx, msg)
                except DecodeError as exc:
                    raise DecodeError(str(exc), partial=dgram) from exc
                c = _CAMS[ctx.chunk_addressing]
        else:
            raise DecodeError(
                f"unknown message type {t} at offset {off} (§8.2 Table 7)", partial=dgram
            )
    return dgram


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


def _spec_values(c: _Cam, start: int, end: int) -> tuple[int, ...]:
    return (chunk_range_to_bin(start, end),) if c.is_bin else (start, end)


def _enc_data(m: Data, c: _Cam, ctx: WireContext) -> bytes:
    return c.m_spec_q.pack(_DATA, *_spec_values(c, m.start, m.end), m.timestamp) + m.payload


def _enc_ack(m: Ack, c: _Cam, ctx: WireContext) -> bytes:
    return c.m_spec_q.pack(_ACK, *_spec_values(c, m.start, m.end), m.delay_sample)


def _enc_integrity(m: Integrity, c: _Cam, ctx: WireContext) -> bytes:
    if len(m.hash) != ctx.hash_size:
        raise EncodeError(f"INTEGRITY hash of {len(m.hash)} bytes, context says {ctx.hash_size}")
    return c.m_spec.pack(_INTEGRITY, *_spec_values(c, m.start, m.end)) + m.hash


def _spec_encoder(t: int) -> Callable[[Have | Request | Cancel, _Cam, WireContext], bytes]:
    def enc(m: Have | Request | Cancel, c: _Cam, ctx: WireContext) -> bytes:
        return c.m_spec.pack(t, *_spec_values(c, m.start, m.end))

    return enc


_CHOKE_OCTET = bytes([_CHOKE])
_UNCHOKE_OCTET = bytes([_UNCHOKE])

_ENCODERS: dict[type, Callable[..., bytes]] = {
    Data: _enc_data,
    Ack: _enc_ack,
    Integrity: _enc_integrity,
    Have: _spec_encoder(_HAVE),
    Request: _spec_encoder(_REQUEST),
    Cancel: _spec_encoder(_CANCEL),
    Choke: lambda m, c, ctx: _CHOKE_OCTET,
    Unchoke: lambda m, c, ctx: _UNCHOKE_OCTET,
}


def encode_datagram(
    channel: int, messages: Iterable[Message], ctx: WireContext = DEFAULT_CONTEXT
) -> bytes:
    """The wire form of a datagram to ``channel``; same bytes and errors as
    :func:`ppsp.peer.wire.build_datagram`. Raises :class:`EncodeError`."""
    msgs = list(messages)
    try:
        parts: list[bytes | memoryview] = [_CHANNEL.pack(channel)]
        c = _CAMS[ctx.chunk_addressing]
        last = len(msgs) - 1
        for i, msg in enumerate(msgs):
            enc = _ENCODERS.get(type(msg))
            if enc is not None:
                parts.append(enc(msg, c, ctx))
                continue
            parts.append(wire.build_message(msg, ctx))
            if isinstance(msg, Handshake) and i < last:
                try:
                    ctx = wire.context_after_handshake(ctx, msg)
                except DecodeError as exc:
                    raise EncodeError(str(exc)) from exc
                c = _CAMS[ctx.chunk_addressing]
    except struct.error as exc:
        raise EncodeError(f"value out of range: {exc}") from exc
    return b"".join(parts)


# The hot builders below inline the common case (chunk ranges) and fall back to the bin
# conversion only for bin CAMs.


def encode_data(
    channel: int,
    start: int,
    end: int,
    timestamp: int,
    payload: bytes | memoryview,
    ctx: WireContext = DEFAULT_CONTEXT,
) -> bytes:
    """A datagram holding one DATA message (§8.6)."""
    c = _CAMS[ctx.chunk_addressing]
    try:
        if c.is_bin:
            head = c.d_spec_q.pack(channel, _DATA, chunk_range_to_bin(start, end), timestamp)
        else:
            head = c.d_spec_q.pack(channel, _DATA, start, end, timestamp)
    except struct.error as exc:
        raise EncodeError(f"DATA value out of range: {exc}") from exc
    return head + payload


def encode_integrity_data(
    channel: int,
    integrities: list[Integrity],
    start: int,
    end: int,
    timestamp: int,
    payload: bytes | memoryview,
    ctx: WireContext = DEFAULT_CONTEXT,
) -> bytes:
    """A datagram holding the INTEGRITY messages a chunk needs, then its DATA (§5.4: the
    receiver checks the chunk with hashes that arrived in the same datagram, before it)."""
    c = _CAMS[ctx.chunk_addressing]
    size = ctx.hash_size
    try:
        parts: list[bytes | memoryview] = [_CHANNEL.pack(channel)]
        m_spec = c.m_spec
        for m in integrities:
            if len(m.hash) != size:
                raise EncodeError(f"INTEGRITY hash of {len(m.hash)} bytes, context says {size}")
            if c.is_bin:
                parts.append(m_spec.pack(_INTEGRITY, chunk_range_to_bin(m.start, m.end)))
            else:
                parts.append(m_spec.pack(_INTEGRITY, m.start, m.end))
            parts.append(m.hash)
        parts.append(c.m_spec_q.pack(_DATA, *_spec_values(c, start, end), timestamp))
    except struct.error as exc:
        raise EncodeError(f"value out of range: {exc}") from exc
    parts.append(payload)
    return b"".join(parts)


def encode_ack(
    channel: int, start: int, end: int, delay_sample: int, ctx: WireContext = DEFAULT_CONTEXT
) -> bytes:
    """A datagram holding one ACK (§8.7)."""
    c = _CAMS[ctx.chunk_addressing]
    try:
        return c.d_spec_q.pack(channel, _ACK, *_spec_values(c, start, end), delay_sample)
    except struct.error as exc:
        raise EncodeError(f"ACK value out of range: {exc}") from exc


def _encode_spec(t: int, channel: int, start: int, end: int, ctx: WireContext) -> bytes:
    c = _CAMS[ctx.chunk_addressing]
    try:
        return c.d_spec.pack(channel, t, *_spec_values(c, start, end))
    except struct.error as exc:
        raise EncodeError(f"{MessageType(t).name} value out of range: {exc}") from exc


def encode_have(channel: int, start: int, end: int, ctx: WireContext = DEFAULT_CONTEXT) -> bytes:
    """A datagram holding one HAVE (§8.5)."""
    return _encode_spec(_HAVE, channel, start, end, ctx)


def encode_request(channel: int, start: int, end: int, ctx: WireContext = DEFAULT_CONTEXT) -> bytes:
    """A datagram holding one REQUEST (§8.10)."""
    return _encode_spec(_REQUEST, channel, start, end, ctx)


def encode_cancel(channel: int, start: int, end: int, ctx: WireContext = DEFAULT_CONTEXT) -> bytes:
    """A datagram holding one CANCEL (§8.11)."""
    return _encode_spec(_CANCEL, channel, start, end, ctx)
