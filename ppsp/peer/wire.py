"""The normative PPSPP wire format (RFC 7574 §4, §7, §8) as Construct definitions.

This module is meant to be read next to the RFC: one Construct per layout, in the RFC's order
and words. Everything else in the stack uses the dataclasses of :mod:`ppsp.peer.messages`;
:func:`parse_datagram` and :func:`build_datagram` convert between the two. The hand-written
``struct`` codec of the data path (:mod:`ppsp.peer.fastwire`) is proved byte-equal to these
definitions by property tests.

What the wire does not say comes from the :class:`~ppsp.peer.messages.WireContext` that the
channel's handshake fixed: the chunk addressing method (CAM, §7.8) picks the chunk
specification layout (§4), the Merkle hash function the INTEGRITY hash size (§8.8) and the
live signature algorithm the SIGNED_INTEGRITY signature size (§8.9). The Constructs read
them as parse/build parameters ``cam``, ``hash_size`` and ``signature_size``.

Bins (CAMs 0 and 3) are converted to and from the inclusive chunk range they denote, so the
model never carries a bin number: see :func:`bin_to_chunk_range`.

The DESIGN §3 Construct traps are avoided: every Switch has ``default=Error`` and integer
keys (no Enum, no lambdas, so everything compiles); messages are parsed one at a time until
the datagram ends, never with a ``GreedyRange`` that would drop a truncated tail; the
compiled parser (``compiled=True``) only sees a message after its length was checked.

Section numbers are RFC 7574's: HAVE is §8.5, DATA §8.6, ACK §8.7, INTEGRITY §8.8,
SIGNED_INTEGRITY §8.9, REQUEST §8.10, CANCEL §8.11, CHOKE/UNCHOKE §8.12, PEX §8.13.
"""

from __future__ import annotations

import io
import ipaddress
import struct
from collections.abc import Callable
from functools import cache
from typing import Any

from construct import (
    Bytes,
    Const,
    Construct,
    ConstructError,
    Error,
    GreedyBytes,
    Int8ub,
    Int16ub,
    Int32ub,
    Int64ub,
    Prefixed,
    StreamError,
    Struct,
    Subconstruct,
    Switch,
    stream_seek,
    stream_tell,
    stream_write,
    this,
)

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
    MessageType,
    PexReq,
    PexResCert,
    PexResV4,
    PexResV6,
    Request,
    SignedIntegrity,
    Unchoke,
    WireContext,
)

__all__ = [
    "CHUNK_SPEC",
    "DATAGRAM_HEADER",
    "DEFAULT_CONTEXT",
    "MESSAGE",
    "PROTOCOL_OPTIONS",
    "bin_to_chunk_range",
    "build_datagram",
    "build_message",
    "chunk_range_to_bin",
    "compiled_message",
    "context_after_handshake",
    "parse_datagram",
    "parse_message",
]


# ---------------------------------------------------------------------------------------------
# §4.2 bins <-> chunk ranges
# ---------------------------------------------------------------------------------------------


def bin_to_chunk_range(b: int) -> tuple[int, int]:
    """The inclusive chunk range ``(start, end)`` that bin ``b`` denotes (§4.2).

    Bin ``b`` lies in layer L = number of trailing 1 bits of ``b`` and covers the 2**L chunks
    starting at ``(b >> (L+1)) << L``. The formula is a bijection between non-negative
    integers and aligned power-of-two chunk blocks, so the §4.2 special values map too:
    "everything" 0x7FFFFFFF is chunks [0, 2**31-1] and "empty" 0xFFFFFFFF is [0, 2**32-1]
    (64-bit alike); only the all-ones bin of a width yields a range that wide, so a caller can
    recognise it.
    """
    if b < 0:
        raise ValueError(f"negative bin {b}")
    layer = ((b + 1) & ~b).bit_length() - 1  # the lowest 0 bit's position = trailing 1s
    start = (b >> (layer + 1)) << layer
    return start, start + (1 << layer) - 1


def chunk_range_to_bin(start: int, end: int) -> int:
    """The bin denoting chunks ``start..end`` (inclusive), the inverse of
    :func:`bin_to_chunk_range`. A range that is not an aligned power-of-two block has no bin
    (§4.2): :class:`EncodeError`."""
    size = end - start + 1
    if start < 0 or size <= 0 or size & (size - 1) or start & (size - 1):
        raise EncodeError(f"chunks {start}..{end} are not an aligned power-of-two block (bin)")
    layer = size.bit_length() - 1
    return ((start >> layer) << (layer + 1)) | ((1 << layer) - 1)


# ---------------------------------------------------------------------------------------------
# §4 chunk specifications, selected by the CAM (§7.8 Table 6) passed as parameter ``cam``
# ---------------------------------------------------------------------------------------------

BIN32 = Struct("bin" / Int32ub)  # §4.2
BIN64 = Struct("bin" / Int64ub)  # §4.2
CHUNK_RANGE32 = Struct("start" / Int32ub, "end" / Int32ub)  # §4.1.1
CHUNK_RANGE64 = Struct("start" / Int64ub, "end" / Int64ub)  # §4.1.1
BYTE_RANGE64 = Struct("start" / Int64ub, "end" / Int64ub)  # §4.1.2, byte offsets

CHUNK_SPEC = Switch(
    this._params.cam,
    {
        0: BIN32,
        1: BYTE_RANGE64,
        2: CHUNK_RANGE32,
        3: BIN64,
        4: CHUNK_RANGE64,
    },
    default=Error,
)


# ---------------------------------------------------------------------------------------------
# §7 protocol options
# ---------------------------------------------------------------------------------------------


class ProtocolOption(Subconstruct):  # type: ignore[misc]
    """One protocol option (§7): its code octet, then its value; ``None`` when absent.

    §7 requires the options sorted by code, so the option list is a fixed sequence of these,
    each present when the next octet is its code. An unknown code, a repeated or out-of-order
    option therefore stops the sequence early and the End option check after it fails.
    """

    def __init__(self, code: int, subcon: Construct) -> None:
        super().__init__(subcon)
        self.code = code
        self.code_octet = bytes([code])

    def _parse(self, stream: Any, context: Any, path: str) -> Any:
        fallback = stream_tell(stream, path)
        if stream.read(1) != self.code_octet:
            stream_seek(stream, fallback, 0, path)
            return None
        return self.subcon._parsereport(stream, context, path)

    def _build(self, obj: Any, stream: Any, context: Any, path: str) -> Any:
        if obj is None:
            return None
        stream_write(stream, self.code_octet, 1, path)
        return self.subcon._build(obj, stream, context, path)

    def _sizeof(self, context: Any, path: str) -> int:
        raise NotImplementedError


#: §7.9: the Live Discard Window is as wide as one number of the CAM given before it in the
#: same option list; without option 6 the CAM is §7.8's default, 32-bit chunk ranges.
LIVE_DISCARD_WINDOW = Switch(
    this.chunk_addressing,
    {None: Int32ub, 0: Int32ub, 1: Int64ub, 2: Int32ub, 3: Int64ub, 4: Int64ub},
    default=Error,
)

PROTOCOL_OPTIONS = Struct(
    "version" / ProtocolOption(0, Int8ub),  # §7.2
    "minimum_version" / ProtocolOption(1, Int8ub),  # §7.3
    "swarm_id" / ProtocolOption(2, Prefixed(Int16ub, GreedyBytes)),  # §7.4
    "integrity_method" / ProtocolOption(3, Int8ub),  # §7.5
    "merkle_hash_function" / ProtocolOption(4, Int8ub),  # §7.6
    "live_signature_algorithm" / ProtocolOption(5, Int8ub),  # §7.7
    "chunk_addressing" / ProtocolOption(6, Int8ub),  # §7.8
    "live_discard_window" / ProtocolOption(7, LIVE_DISCARD_WINDOW),  # §7.9
    "supported_messages" / ProtocolOption(8, Prefixed(Int8ub, GreedyBytes)),  # §7.10
    "chunk_size" / ProtocolOption(9, Int32ub),  # §7.11
    "end" / Const(b"\xff"),  # §7.1: End Option, code 255, no value
)

_OPTION_NAMES = (
    "version",
    "minimum_version",
    "swarm_id",
    "integrity_method",
    "merkle_hash_function",
    "live_signature_algorithm",
    "chunk_addressing",
    "live_discard_window",
    "supported_messages",
    "chunk_size",
)
_BYTES_OPTIONS = ("swarm_id", "supported_messages")


# ---------------------------------------------------------------------------------------------
# §8 messages: type octet (§8.2 Table 7), then the body
# ---------------------------------------------------------------------------------------------

HANDSHAKE = Struct("source_channel" / Int32ub, "options" / PROTOCOL_OPTIONS)  # §8.4
DATA = Struct(  # §8.6: the chunk takes the rest of its bytes (see _data_end)
    "spec" / CHUNK_SPEC, "timestamp" / Int64ub, "payload" / GreedyBytes
)
ACK = Struct("spec" / CHUNK_SPEC, "delay_sample" / Int64ub)  # §8.7
HAVE = Struct("spec" / CHUNK_SPEC)  # §8.5
INTEGRITY = Struct("spec" / CHUNK_SPEC, "hash" / Bytes(this._params.hash_size))  # §8.8
PEX_RESV4 = Struct("address" / Bytes(4), "port" / Int16ub)  # §8.13
PEX_REQ = Struct()  # §8.13
SIGNED_INTEGRITY = Struct(  # §8.9: NTP timestamp, RRSIG-style signature
    "spec" / CHUNK_SPEC,
    "timestamp" / Int64ub,
    "signature" / Bytes(this._params.signature_size),
)
REQUEST = Struct("spec" / CHUNK_SPEC)  # §8.10
CANCEL = Struct("spec" / CHUNK_SPEC)  # §8.11
CHOKE = Struct()  # §8.12
UNCHOKE = Struct()  # §8.12
PEX_RESV6 = Struct("address" / Bytes(16), "port" / Int16ub)  # §8.13
PEX_RESCERT = Struct("certificate" / Prefixed(Int16ub, GreedyBytes))  # §8.13

MESSAGE = Struct(
    "type" / Int8ub,
    "body"
    / Switch(
        this.type,
        {
            0: HANDSHAKE,
            1: DATA,
            2: ACK,
            3: HAVE,
            4: INTEGRITY,
            5: PEX_RESV4,
            6: PEX_REQ,
            7: SIGNED_INTEGRITY,
            8: REQUEST,
            9: CANCEL,
            10: CHOKE,
            11: UNCHOKE,
            12: PEX_RESV6,
            13: PEX_RESCERT,
        },
        default=Error,  # 14-254 unassigned, 255 reserved: an invalid message (§3)
    ),
)

#: §8.3: every datagram starts with the channel ID the receiver allocated; a datagram with
#: nothing after it is a keep-alive (§8.14). The messages that follow are parsed one by one
#: (:func:`parse_datagram`), not by a repeater, because a HANDSHAKE changes the layout of the
#: messages after it (§7) and §3 wants the messages before an invalid one processed.
DATAGRAM_HEADER = Struct("channel" / Int32ub)


#: RFC 7574 defaults (§7.6, §7.8): 32-bit chunk ranges, SHA-256 hashes, ECDSA P-256 signatures.
DEFAULT_CONTEXT = WireContext()


# ---------------------------------------------------------------------------------------------
# Model <-> Construct containers
# ---------------------------------------------------------------------------------------------


def _params(ctx: WireContext) -> dict[str, int]:
    return {
        "cam": int(ctx.chunk_addressing),
        "hash_size": ctx.hash_size,
        "signature_size": ctx.signature_size,
    }


def _enum_or_int(enum_cls: Callable[[int], Any], value: int | None) -> Any:
    """Known option values become their enum; unknown ones stay ints (the endpoint decides
    whether to refuse them, as libswift does with a close handshake)."""
    if value is None:
        return None
    try:
        return enum_cls(value)
    except ValueError:
        return value


def _range(spec: Any) -> tuple[int, int]:
    if "bin" in spec:
        return bin_to_chunk_range(spec["bin"])
    return spec["start"], spec["end"]


def _message_from(t: int, body: Any) -> Message:
    if t == MessageType.HANDSHAKE:
        o = body["options"]
        options = HandshakeOptions(
            version=o["version"],
            minimum_version=o["minimum_version"],
            swarm_id=o["swarm_id"],
            integrity_method=_enum_or_int(IntegrityMethod, o["integrity_method"]),
            merkle_hash_function=_enum_or_int(MerkleHashFunction, o["merkle_hash_function"]),
            live_signature_algorithm=_enum_or_int(
                LiveSignatureAlgorithm, o["live_signature_algorithm"]
            ),
            chunk_addressing=_enum_or_int(ChunkAddressing, o["chunk_addressing"]),
            live_discard_window=o["live_discard_window"],
            supported_messages=o["supported_messages"],
            chunk_size=o["chunk_size"],
        )
        return Handshake(body["source_channel"], options)
    if t == MessageType.DATA:
        return Data(*_range(body["spec"]), body["timestamp"], body["payload"])
    if t == MessageType.ACK:
        return Ack(*_range(body["spec"]), body["delay_sample"])
    if t == MessageType.HAVE:
        return Have(*_range(body["spec"]))
    if t == MessageType.INTEGRITY:
        return Integrity(*_range(body["spec"]), body["hash"])
    if t == MessageType.PEX_RESV4:
        return PexResV4(ipaddress.IPv4Address(body["address"]), body["port"])
    if t == MessageType.PEX_REQ:
        return PexReq()
    if t == MessageType.SIGNED_INTEGRITY:
        return SignedIntegrity(*_range(body["spec"]), body["timestamp"], body["signature"])
    if t == MessageType.REQUEST:
        return Request(*_range(body["spec"]))
    if t == MessageType.CANCEL:
        return Cancel(*_range(body["spec"]))
    if t == MessageType.CHOKE:
        return Choke()
    if t == MessageType.UNCHOKE:
        return Unchoke()
    if t == MessageType.PEX_RESV6:
        return PexResV6(ipaddress.IPv6Address(body["address"]), body["port"])
    if t == MessageType.PEX_RESCERT:
        return PexResCert(body["certificate"])
    raise DecodeError(f"unknown message type {t}")  # unreachable: the Switch has default=Error


def _spec(start: int, end: int, ctx: WireContext) -> dict[str, int]:
    if ctx.chunk_addressing.is_bin:
        return {"bin": chunk_range_to_bin(start, end)}
    return {"start": start, "end": end}


def _container_for(msg: Message, ctx: WireContext) -> tuple[int, dict[str, Any]]:
    """The message type and the Construct build input for ``msg``."""
    if isinstance(msg, Handshake):
        o = msg.options
        options: dict[str, Any] = {}
        for name in _OPTION_NAMES:
            value = getattr(o, name)
            if value is not None:
                value = bytes(value) if name in _BYTES_OPTIONS else int(value)
            options[name] = value
        return 0, {"source_channel": msg.source_channel, "options": options}
    if isinstance(msg, Data):
        spec = _spec(msg.start, msg.end, ctx)
        return 1, {"spec": spec, "timestamp": msg.timestamp, "payload": bytes(msg.payload)}
    if isinstance(msg, Ack):
        return 2, {"spec": _spec(msg.start, msg.end, ctx), "delay_sample": msg.delay_sample}
    if isinstance(msg, Have):
        return 3, {"spec": _spec(msg.start, msg.end, ctx)}
    if isinstance(msg, Integrity):
        # Checked here as well as by Bytes(): compiled builders write any length.
        if len(msg.hash) != ctx.hash_size:
            raise EncodeError(
                f"INTEGRITY hash of {len(msg.hash)} bytes, context says {ctx.hash_size}"
            )
        return 4, {"spec": _spec(msg.start, msg.end, ctx), "hash": bytes(msg.hash)}
    if isinstance(msg, PexResV4):
        return 5, {"address": ipaddress.IPv4Address(msg.address).packed, "port": msg.port}
    if isinstance(msg, PexReq):
        return 6, {}
    if isinstance(msg, SignedIntegrity):
        if len(msg.signature) != ctx.signature_size:
            raise EncodeError(
                f"signature of {len(msg.signature)} bytes, context says {ctx.signature_size}"
            )
        spec = _spec(msg.start, msg.end, ctx)
        return 7, {"spec": spec, "timestamp": msg.timestamp, "signature": bytes(msg.signature)}
    if isinstance(msg, Request):
        return 8, {"spec": _spec(msg.start, msg.end, ctx)}
    if isinstance(msg, Cancel):
        return 9, {"spec": _spec(msg.start, msg.end, ctx)}
    if isinstance(msg, Choke):
        return 10, {}
    if isinstance(msg, Unchoke):
        return 11, {}
    if isinstance(msg, PexResV6):
        return 12, {"address": ipaddress.IPv6Address(msg.address).packed, "port": msg.port}
    if isinstance(msg, PexResCert):
        return 13, {"certificate": bytes(msg.certificate)}
    raise EncodeError(f"not a PPSPP message: {msg!r}")


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def context_after_handshake(ctx: WireContext, handshake: Handshake) -> WireContext:
    """The context for the messages after ``handshake`` (§7: they use its CAM and sizes).

    Raises :class:`DecodeError` when the handshake names a CAM, hash function or signature
    algorithm this codec cannot lay out.
    """
    return ctx.updated_by(handshake.options)


_CONSTANT_BODY_SIZE = {
    MessageType.PEX_RESV4: 6,
    MessageType.PEX_REQ: 0,
    MessageType.CHOKE: 0,
    MessageType.UNCHOKE: 0,
    MessageType.PEX_RESV6: 18,
}


def _fixed_body_size(t: int, data: bytes | memoryview, off: int, ctx: WireContext) -> int | None:
    """Bytes after the type octet of the message at ``off``, as far as they are known before
    parsing (DATA: up to the chunk; HANDSHAKE: None, its options vary)."""
    spec = ctx.chunk_addressing.spec_size
    if t in (MessageType.HAVE, MessageType.REQUEST, MessageType.CANCEL):
        return spec
    if t in (MessageType.ACK, MessageType.DATA):
        return spec + 8
    if t == MessageType.INTEGRITY:
        return spec + ctx.hash_size
    if t == MessageType.SIGNED_INTEGRITY:
        return spec + 8 + ctx.signature_size
    if t not in MessageType._value2member_map_:
        return None
    if t == MessageType.PEX_RESCERT:
        return 2 + int.from_bytes(data[off + 1 : off + 3], "big") if len(data) >= off + 3 else 2
    return _CONSTANT_BODY_SIZE.get(MessageType(t))


def _parse_one(
    stream: io.BytesIO, data: bytes | memoryview, ctx: WireContext, compiled: bool
) -> Message:
    if compiled:
        # DESIGN §3: compiled Construct reads short fields silently, so check the length
        # first; HANDSHAKE (variable options) and unknown types go to the interpreter.
        off = stream.tell()
        t = data[off]
        need = _fixed_body_size(t, data, off, ctx)
        if need is not None:
            if len(data) - off - 1 < need:
                raise StreamError(f"truncated, {need} bytes needed", path="(parsing)")
            container = compiled_message().parse_stream(stream, **_params(ctx))
            return _message_from(container["type"], container["body"])
    container = MESSAGE.parse_stream(stream, **_params(ctx))
    return _message_from(container["type"], container["body"])


def _describe(data: bytes | memoryview, off: int, exc: Exception) -> str:
    t = data[off]
    if t not in MessageType._value2member_map_:
        return f"unknown message type {t} at offset {off} (§8.2 Table 7)"
    return f"malformed {MessageType(t).name} message at offset {off}: {exc}"


def _data_end(data: bytes | memoryview, off: int, ctx: WireContext) -> int | None:
    """Where a DATA at ``off`` ends when it is not the last message of the datagram.

    §8.6 lets a datagram carry several DATA messages when the chunk size is fixed; DATA has no
    length field, so the chunk specification and the chunk size tell where each one ends
    (:meth:`WireContext.data_length`). Otherwise — unknown chunk size, or fewer bytes left
    than the chunks take (the short last chunk) — the DATA takes the rest of the datagram.
    """
    if ctx.chunk_size is None or data[off] != MessageType.DATA:
        return None
    cam = ctx.chunk_addressing
    head = off + 1 + cam.spec_size + 8
    if head > len(data):
        return None  # truncated: the Construct parser reports it
    spec = bytes(data[off + 1 : off + 1 + cam.spec_size])
    if cam.is_bin:
        start, end = bin_to_chunk_range(int.from_bytes(spec, "big"))
    else:
        half = cam.spec_size // 2
        start, end = int.from_bytes(spec[:half], "big"), int.from_bytes(spec[half:], "big")
    size = ctx.data_length(start, end)
    if size is None or head + size >= len(data):
        return None
    return head + size


def parse_message(
    data: bytes | memoryview, ctx: WireContext = DEFAULT_CONTEXT, *, compiled: bool = False
) -> tuple[Message, int]:
    """Parse the one message at the start of ``data``; return it and the bytes it took.

    A DATA message takes all of ``data`` (§8.6). ``compiled`` selects Construct's compiled
    parser (behind a length check). Raises :class:`DecodeError`.
    """
    if not data:
        raise DecodeError("no message: empty input")
    stream = io.BytesIO(data)
    try:
        msg = _parse_one(stream, data, ctx, compiled)
    except ConstructError as exc:
        raise DecodeError(_describe(data, 0, exc)) from exc
    return msg, stream.tell()


def parse_datagram(
    data: bytes | memoryview, ctx: WireContext = DEFAULT_CONTEXT, *, compiled: bool = False
) -> Datagram:
    """Parse a whole PPSPP datagram (§8.3): destination channel, then the messages in order.

    A HANDSHAKE changes ``ctx`` for the messages after it (§7). On an invalid message the
    :class:`DecodeError` carries in ``partial`` the datagram with the messages before it,
    which §3 says to process while discarding the rest. ``compiled`` selects Construct's
    compiled parser (behind a length check); the result is the same.
    """
    n = len(data)
    if n < 4:
        raise DecodeError(f"datagram of {n} bytes has no 4-byte channel ID (§8.3)")
    stream = io.BytesIO(data)
    header = _compiled_header() if compiled else DATAGRAM_HEADER
    dgram = Datagram(header.parse_stream(stream)["channel"])
    off = 4
    while off < n:
        try:
            end = _data_end(data, off, ctx)
            if end is None:
                msg = _parse_one(stream, data, ctx, compiled)
            else:  # a DATA followed by more messages: parse it from its own bytes (§8.6)
                msg = _parse_one(io.BytesIO(data[off:end]), data[off:end], ctx, compiled)
                stream.seek(end)
        except ConstructError as exc:
            raise DecodeError(_describe(data, off, exc), partial=dgram) from exc
        dgram.messages.append(msg)
        off = stream.tell()
        if isinstance(msg, Handshake) and off < n:
            # Only messages after the handshake need its context; a handshake that ends the
            # datagram decodes even with options we cannot lay out, so the endpoint can
            # answer it (libswift closes such a channel, DESIGN §4).
            try:
                ctx = context_after_handshake(ctx, msg)
            except DecodeError as exc:
                raise DecodeError(str(exc), partial=dgram) from exc
    return dgram


def build_message(
    msg: Message, ctx: WireContext = DEFAULT_CONTEXT, *, compiled: bool = False
) -> bytes:
    """The wire form of one message (type octet included). Raises :class:`EncodeError`."""
    t, body = _container_for(msg, ctx)
    codec = compiled_message() if compiled else MESSAGE
    try:
        data: bytes = codec.build({"type": t, "body": body}, **_params(ctx))
    except (ConstructError, struct.error) as exc:  # compiled builders raise struct.error
        raise EncodeError(f"cannot encode {type(msg).__name__}: {exc}") from exc
    return data


def build_datagram(
    dgram: Datagram, ctx: WireContext = DEFAULT_CONTEXT, *, compiled: bool = False
) -> bytes:
    """The wire form of a datagram. A HANDSHAKE changes ``ctx`` for the messages after it,
    as on parsing. Raises :class:`EncodeError`."""
    header = _compiled_header() if compiled else DATAGRAM_HEADER
    try:
        parts = [header.build({"channel": dgram.channel})]
    except (ConstructError, struct.error) as exc:
        raise EncodeError(f"channel ID {dgram.channel} out of range") from exc
    last = len(dgram.messages) - 1
    for i, msg in enumerate(dgram.messages):
        parts.append(build_message(msg, ctx, compiled=compiled))
        if isinstance(msg, Handshake) and i < last:
            try:
                ctx = context_after_handshake(ctx, msg)
            except DecodeError as exc:
                raise EncodeError(str(exc)) from exc
    return b"".join(parts)


@cache
def compiled_message() -> Any:
    """:data:`MESSAGE` compiled by Construct (about 4x faster than interpreted).

    Compiled Construct parsers skip length checks (DESIGN §3): truncated input yields short
    fields instead of an error. Feed it only bytes whose length was checked, as
    ``parse_datagram(..., compiled=True)`` does.
    """
    return MESSAGE.compile()


@cache
def _compiled_header() -> Any:
    return DATAGRAM_HEADER.compile()
