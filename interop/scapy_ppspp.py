"""scapy layers for PPSPP (RFC 7574 §7, §8): every message, every handshake option, every chunk
addressing method (CAM) and hash size.

The wire does not say how long a chunk specification, a hash or a signature is: the channel's
HANDSHAKE fixed it (§7). A :class:`~ppsp.peer.messages.WireContext` therefore travels with the
dissection: :func:`dissect_ppspp` takes the context of the channel (the dissector of
:mod:`interop.dissect` remembers what each side announced, per address and channel), a
HANDSHAKE inside the datagram changes it for the messages after it (as in
:mod:`ppsp.peer.wire`), and every message keeps the context it was read with in a field that
takes no bytes on the wire (``ctx``, shown as ``[context]``), so that ``show()``, ``bytes()``
and :func:`to_model` work after the dissection too.

Bins are kept as bins on the layer (field ``bin``), chunk and byte ranges as ``start``/``end``;
:func:`to_model` converts to the model's inclusive ranges. A message that cannot be read (an
unknown type, a truncated body, options out of order) becomes a :class:`PPSPPMalformed` layer
carrying the reason and the rest of the datagram, as §8.3 discards the rest after an invalid
message; :func:`malformed_reason` finds it.

scapy is slow (DESIGN §3: ~1 s import, ~145 µs a datagram) and GPL-2.0: only ``interop/``
imports it, daemons never do. The layers are bound to UDP port 7777 (``p2pcdn`` default).
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from scapy.config import conf
from scapy.fields import (
    ByteEnumField,
    ByteField,
    ConditionalField,
    Field,
    FieldLenField,
    IntField,
    IP6Field,
    IPField,
    LongField,
    MultipleTypeField,
    PacketListField,
    ShortField,
    StrField,
    XIntField,
    XStrField,
    XStrFixedLenField,
    XStrLenField,
)
from scapy.layers.inet import UDP
from scapy.packet import Packet, bind_layers

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
from ppsp.peer.wire import DEFAULT_CONTEXT, bin_to_chunk_range

__all__ = [
    "CAM_NAMES",
    "DEFAULT_PORT",
    "MESSAGE_TYPES",
    "OPTION_NAMES",
    "PPSPP",
    "PPSPPAck",
    "PPSPPBare",
    "PPSPPCancel",
    "PPSPPData",
    "PPSPPHandshake",
    "PPSPPHave",
    "PPSPPIntegrity",
    "PPSPPMalformed",
    "PPSPPOption",
    "PPSPPPexResCert",
    "PPSPPPexResV4",
    "PPSPPPexResV6",
    "PPSPPRequest",
    "PPSPPSignedIntegrity",
    "context_label",
    "dissect_ppspp",
    "malformed_reason",
    "ppspp_context",
    "to_model",
]

#: ``p2pcdn`` default PPSPP port (lab/cli.py DEFAULT_PORT).
DEFAULT_PORT = 7777

MESSAGE_TYPES = {
    0: "HANDSHAKE",
    1: "DATA",
    2: "ACK",
    3: "HAVE",
    4: "INTEGRITY",
    5: "PEX_RESv4",
    6: "PEX_REQ",
    7: "SIGNED_INTEGRITY",
    8: "REQUEST",
    9: "CANCEL",
    10: "CHOKE",
    11: "UNCHOKE",
    12: "PEX_RESv6",
    13: "PEX_REScert",
}

OPTION_NAMES = {
    0: "version",
    1: "minimum_version",
    2: "swarm_id",
    3: "content_integrity_protection_method",
    4: "merkle_hash_tree_function",
    5: "live_signature_algorithm",
    6: "chunk_addressing_method",
    7: "live_discard_window",
    8: "supported_messages",
    9: "chunk_size",
    255: "end",
}

#: Short CAM names used in summaries (§7.8 Table 6).
CAM_NAMES = {0: "bin32", 1: "bytes64", 2: "chunk32", 3: "bin64", 4: "chunk64"}
CIPM_NAMES = {0: "none", 1: "merkle", 2: "sign-all", 3: "unified-merkle"}
MHF_NAMES = {0: "SHA-1", 1: "SHA-224", 2: "SHA-256", 3: "SHA-384", 4: "SHA-512"}
LSA_NAMES = {5: "RSASHA1", 8: "RSASHA256", 13: "ECDSAP256SHA256", 14: "ECDSAP384SHA384"}
_OPTION_VALUE_NAMES = {3: CIPM_NAMES, 4: MHF_NAMES, 5: LSA_NAMES, 6: CAM_NAMES}


# ---------------------------------------------------------------------------------------------
# The dissection context
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _State:
    """What the datagram being dissected reads with: the channel's context (``base``), the one
    in force at this point of the datagram (``ctx``), and why the rest cannot be read."""

    base: WireContext
    ctx: WireContext
    broken: str | None = None


_STATE: ContextVar[_State | None] = ContextVar("ppspp_state", default=None)


def _state() -> _State:
    state = _STATE.get()
    if state is None:
        state = _State(DEFAULT_CONTEXT, DEFAULT_CONTEXT)
        _STATE.set(state)
    return state


@contextlib.contextmanager
def ppspp_context(ctx: WireContext) -> Iterator[None]:
    """Dissect PPSPP datagrams inside the block with the channel context ``ctx`` (also when
    scapy reaches the layer through a UDP binding, e.g. ``IP(frame)``)."""
    token = _STATE.set(_State(ctx, ctx))
    try:
        yield
    finally:
        _STATE.reset(token)


def dissect_ppspp(data: bytes, ctx: WireContext = DEFAULT_CONTEXT) -> Packet:
    """The :class:`PPSPP` layer of one datagram read with the channel context ``ctx``, or a
    :class:`PPSPPMalformed` layer when it has no 4-byte channel ID (§8.3)."""
    data = bytes(data)
    if len(data) < 4:
        return _malformed(data, f"datagram of {len(data)} bytes has no 4-byte channel ID (§8.3)")
    with ppspp_context(ctx):
        return PPSPP(data)


def context_label(ctx: WireContext) -> str:
    """A short description of a context, e.g. ``chunk32, hash 20 B, sig 64 B``."""
    cam = CAM_NAMES.get(int(ctx.chunk_addressing), str(int(ctx.chunk_addressing)))
    text = f"{cam}, hash {ctx.hash_size} B, sig {ctx.signature_size} B"
    if ctx.chunk_size is not None:
        text += f", chunk {ctx.chunk_size} B"
    return text


class _ContextField(Field[WireContext | None, WireContext | None]):
    """The context a message was read with: no bytes on the wire (Wireshark's "generated"
    fields). Set from the dissection state; a layer built by hand may set it explicitly."""

    def __init__(self, name: str) -> None:
        super().__init__(name, None, fmt="!")

    def getfield(self, pkt: Packet, s: bytes) -> tuple[bytes, WireContext | None]:
        return s, _state().ctx

    def addfield(self, pkt: Packet, s: bytes, val: WireContext | None) -> bytes:
        return s

    def i2len(self, pkt: Packet | None, x: Any) -> int:
        return 0

    def i2repr(self, pkt: Packet | None, x: WireContext | None) -> str:
        return f"[{context_label(x if x is not None else DEFAULT_CONTEXT)}]"


class _ReasonField(Field[str | None, str | None]):
    """Why a :class:`PPSPPMalformed` layer could not be read; no bytes on the wire."""

    def __init__(self, name: str) -> None:
        super().__init__(name, None, fmt="!")

    def getfield(self, pkt: Packet, s: bytes) -> tuple[bytes, str | None]:
        return s, None

    def addfield(self, pkt: Packet, s: bytes, val: str | None) -> bytes:
        return s

    def i2len(self, pkt: Packet | None, x: Any) -> int:
        return 0

    def i2repr(self, pkt: Packet | None, x: str | None) -> str:
        return f"[{x}]"


class _ChunkField(StrField):
    """The chunk of a DATA message: the rest of it; shown as its size and first bytes."""

    def i2repr(self, pkt: Packet | None, x: Any) -> str:
        data = bytes(x or b"")
        more = "…" if len(data) > 16 else ""
        return f"{len(data)} bytes: {data[:16].hex()}{more}"


def _ctx(pkt: Packet) -> WireContext:
    ctx = pkt.getfieldval("ctx")
    return ctx if isinstance(ctx, WireContext) else DEFAULT_CONTEXT


def _cam(pkt: Packet) -> int:
    return int(_ctx(pkt).chunk_addressing)


def _spec_fields() -> list[Any]:
    """§4 chunk specification, by the CAM of the message's context: a 32- or 64-bit bin, or a
    32- or 64-bit (chunk or byte) range."""
    return [
        _ContextField("ctx"),
        ConditionalField(
            MultipleTypeField([(LongField("bin", 0), lambda p: _cam(p) == 3)], IntField("bin", 0)),
            lambda p: _cam(p) in (0, 3),
        ),
        ConditionalField(
            MultipleTypeField(
                [(LongField("start", 0), lambda p: _cam(p) in (1, 4))], IntField("start", 0)
            ),
            lambda p: _cam(p) in (1, 2, 4),
        ),
        ConditionalField(
            MultipleTypeField(
                [(LongField("end", 0), lambda p: _cam(p) in (1, 4))], IntField("end", 0)
            ),
            lambda p: _cam(p) in (1, 2, 4),
        ),
    ]


def spec_range(pkt: Packet) -> tuple[int, int]:
    """The inclusive range a message's chunk specification denotes (bins converted)."""
    if _cam(pkt) in (0, 3):
        return bin_to_chunk_range(int(pkt.getfieldval("bin")))
    return int(pkt.getfieldval("start")), int(pkt.getfieldval("end"))


def _spec_text(pkt: Packet) -> str:
    start, end = spec_range(pkt)
    span = f"{start}-{end}" if start != end else f"{start}"
    cam = _cam(pkt)
    if cam in (0, 3):
        return f"bin {pkt.getfieldval('bin')} ({span})"
    if cam == 1:
        return f"bytes {span}"
    return span


# ---------------------------------------------------------------------------------------------
# §7 protocol options
# ---------------------------------------------------------------------------------------------


class _Element(Packet):
    """A part of known length: what follows it is the next part, not its payload."""

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s

    def tree_label(self) -> str:
        """The title of this part in a dissection tree (interop.dissect)."""
        if hasattr(self, "value_text"):
            code = self.code
            text = self.value_text()
            return f"Option {code} {OPTION_NAMES.get(code, '?')}" + (f": {text}" if text else "")
        return str(self.mysummary())


class PPSPPOption(_Element):
    """A protocol option with a one-octet value (§7.2, §7.3, §7.5-§7.8); the value is shown
    with the names of its code's registry."""

    name = "PPSPP option"
    fields_desc = [
        ByteEnumField("code", 0, OPTION_NAMES),
        MultipleTypeField(
            [
                (ByteEnumField("value", 0, names), lambda p, c=code: p.code == c)
                for code, names in _OPTION_VALUE_NAMES.items()
            ],
            ByteField("value", 0),
        ),
    ]

    def value_text(self) -> str:
        names = _OPTION_VALUE_NAMES.get(self.code)
        return names.get(self.value, str(self.value)) if names else str(self.value)


class PPSPPOptionSwarmId(_Element):
    """Swarm Identifier (§7.4): a 16-bit length, then the swarm ID."""

    name = "PPSPP option"
    fields_desc = [
        ByteEnumField("code", 2, OPTION_NAMES),
        FieldLenField("length", None, length_of="swarm_id", fmt="!H"),
        XStrLenField("swarm_id", b"", length_from=lambda p: p.length),
    ]

    def value_text(self) -> str:
        return bytes(self.swarm_id).hex()


class PPSPPOptionLiveDiscardWindow32(_Element):
    """Live Discard Window (§7.9) for 32-bit CAMs."""

    name = "PPSPP option"
    fields_desc = [ByteEnumField("code", 7, OPTION_NAMES), IntField("value", 0)]

    def value_text(self) -> str:
        return str(self.value)


class PPSPPOptionLiveDiscardWindow64(_Element):
    """Live Discard Window (§7.9) for 64-bit CAMs."""

    name = "PPSPP option"
    fields_desc = [ByteEnumField("code", 7, OPTION_NAMES), LongField("value", 0)]

    def value_text(self) -> str:
        return str(self.value)


class PPSPPOptionSupportedMessages(_Element):
    """Supported Messages (§7.10): a length octet, then the bitmap."""

    name = "PPSPP option"
    fields_desc = [
        ByteEnumField("code", 8, OPTION_NAMES),
        FieldLenField("length", None, length_of="bitmap", fmt="B"),
        XStrLenField("bitmap", b"", length_from=lambda p: p.length),
    ]

    def value_text(self) -> str:
        bitmap = bytes(self.bitmap)
        kinds = sorted(HandshakeOptions(supported_messages=bitmap).supported_message_types() or ())
        return ",".join(MESSAGE_TYPES.get(k, str(k)) for k in kinds) or "none"


class PPSPPOptionChunkSize(_Element):
    """Chunk Size (§7.11); 0xFFFFFFFF = variable."""

    name = "PPSPP option"
    fields_desc = [ByteEnumField("code", 9, OPTION_NAMES), IntField("value", 0)]

    def value_text(self) -> str:
        return "variable" if self.value == 0xFFFFFFFF else str(self.value)


class PPSPPOptionEnd(_Element):
    """End Option (§7.1): code 255, no value."""

    name = "PPSPP option"
    fields_desc = [ByteEnumField("code", 255, OPTION_NAMES)]

    def value_text(self) -> str:
        return ""


class PPSPPMalformed(Packet):
    """What could not be read, with the reason (§8.3: the rest of the datagram is dropped)."""

    name = "PPSPP malformed"
    fields_desc = [_ReasonField("reason"), XStrField("load", b"")]

    def mysummary(self) -> str:
        return f"[malformed: {self.reason}]"


def _malformed(s: bytes, reason: str) -> PPSPPMalformed:
    p = PPSPPMalformed(s)
    p.reason = reason
    return p


_ONE_OCTET_OPTIONS = (0, 1, 3, 4, 5, 6)
_OPTION_SIZE = {0: 1, 1: 1, 3: 1, 4: 1, 5: 1, 6: 1, 9: 4, 255: 0}


def _option_reader(pkt: Packet | None, previous: list[Any], s: bytes) -> Callable[..., Packet]:
    """The class (or a maker of a malformed layer) for the option at the start of ``s``."""
    if not s:
        return lambda data, _parent=None: _malformed(data, "option list without End (§7.1)")
    code = s[0]
    last = previous[-1].code if previous else -1
    if code != 255 and code <= last:
        why = f"option {code} after option {last}: options are sorted by code (§7)"
        return lambda data, _parent=None: _malformed(data, why)
    cls: type[Packet]
    if code in _ONE_OCTET_OPTIONS:
        cls = PPSPPOption
    elif code == 2:
        cls = PPSPPOptionSwarmId
        if len(s) >= 3 and len(s) < 3 + int.from_bytes(s[1:3], "big"):
            return lambda data, _parent=None: _malformed(data, "truncated swarm ID option")
    elif code == 7:
        cam = next((int(o.value) for o in previous if o.code == 6), 2)
        if cam not in CAM_NAMES:
            why = f"live discard window after unknown CAM {cam}"
            return lambda data, _parent=None: _malformed(data, why)
        wide = ChunkAddressing(cam).width == 8
        cls = PPSPPOptionLiveDiscardWindow64 if wide else PPSPPOptionLiveDiscardWindow32
        if len(s) < 1 + (8 if wide else 4):
            return lambda data, _parent=None: _malformed(data, "truncated option 7")
    elif code == 8:
        cls = PPSPPOptionSupportedMessages
        if len(s) >= 2 and len(s) < 2 + s[1]:
            return lambda data, _parent=None: _malformed(data, "truncated option 8")
    elif code == 9:
        cls = PPSPPOptionChunkSize
    elif code == 255:
        cls = PPSPPOptionEnd
    else:
        why = f"unknown protocol option {code} (§7 Table 2)"
        return lambda data, _parent=None: _malformed(data, why)
    need = {2: 3, 8: 2}.get(code, 1 + _OPTION_SIZE.get(code, 0))
    if len(s) < need:
        return lambda data, _parent=None: _malformed(data, f"truncated option {code}")
    return cls


def _next_option(
    pkt: Packet, lst: list[Any], cur: Packet | None, remain: bytes
) -> Callable[..., Packet] | None:
    if cur is None:
        return _option_reader(pkt, [], remain)
    if isinstance(cur, (PPSPPOptionEnd, PPSPPMalformed)):
        return None
    return _option_reader(pkt, [*lst, cur], remain)  # scapy appends ``cur`` after this call


# ---------------------------------------------------------------------------------------------
# §8 messages
# ---------------------------------------------------------------------------------------------


class PPSPPHandshake(_Element):
    """HANDSHAKE (§8.4): source channel ID, then protocol options ending with End."""

    name = "PPSPP HANDSHAKE"
    fields_desc = [
        ByteEnumField("type", 0, MESSAGE_TYPES),
        XIntField("source_channel", 0),
        PacketListField("options", [], next_cls_cb=_next_option),  # type: ignore[arg-type]
    ]

    def option(self, code: int) -> Packet | None:
        return next((o for o in self.options if getattr(o, "code", None) == code), None)

    def mysummary(self) -> str:
        parts = []
        for o in self.options:
            if isinstance(o, PPSPPMalformed) or o.code == 255:
                continue
            text = o.value_text()
            label = {
                0: "ver",
                1: "min",
                2: "swarm",
                3: "cipm",
                4: "hash",
                5: "sig",
                6: "cam",
                7: "ldw",
                8: "msgs",
                9: "chunk",
            }[o.code]
            if o.code == 2 and len(text) > 8:
                text = text[:8] + "…"
            elif o.code == 8:
                text = bytes(o.bitmap).hex()
            parts.append(f"{label} {text}")
        if self.source_channel == 0:
            parts.insert(0, "close")
        return f"HANDSHAKE({', '.join(parts)})"


class PPSPPData(_Element):
    """DATA (§8.6): chunk specification, 64-bit timestamp (µs), the chunk bytes.

    The chunk takes the rest of the datagram unless the context's fixed chunk size says where
    it ends (several DATA in one datagram, §8.6)."""

    name = "PPSPP DATA"
    fields_desc = [
        ByteEnumField("type", 1, MESSAGE_TYPES),
        *_spec_fields(),
        LongField("timestamp", 0),
        _ChunkField("chunk", b""),
    ]

    def mysummary(self) -> str:
        return f"DATA {_spec_text(self)} ({len(self.chunk)} B)"


class PPSPPAck(_Element):
    """ACK (§8.7): chunk specification, 64-bit one-way delay sample (µs)."""

    name = "PPSPP ACK"
    fields_desc = [
        ByteEnumField("type", 2, MESSAGE_TYPES),
        *_spec_fields(),
        LongField("delay_sample", 0),
    ]

    def mysummary(self) -> str:
        return f"ACK {_spec_text(self)} (delay {self.delay_sample} µs)"


class _SpecOnly(_Element):
    def mysummary(self) -> str:
        return f"{MESSAGE_TYPES[self.type]} {_spec_text(self)}"


class PPSPPHave(_SpecOnly):
    """HAVE (§8.5)."""

    name = "PPSPP HAVE"
    fields_desc = [ByteEnumField("type", 3, MESSAGE_TYPES), *_spec_fields()]


class PPSPPRequest(_SpecOnly):
    """REQUEST (§8.10)."""

    name = "PPSPP REQUEST"
    fields_desc = [ByteEnumField("type", 8, MESSAGE_TYPES), *_spec_fields()]


class PPSPPCancel(_SpecOnly):
    """CANCEL (§8.11)."""

    name = "PPSPP CANCEL"
    fields_desc = [ByteEnumField("type", 9, MESSAGE_TYPES), *_spec_fields()]


class PPSPPIntegrity(_Element):
    """INTEGRITY (§8.8): chunk specification and the hash (size from the Merkle function)."""

    name = "PPSPP INTEGRITY"
    fields_desc = [
        ByteEnumField("type", 4, MESSAGE_TYPES),
        *_spec_fields(),
        XStrFixedLenField("hash", b"", length_from=lambda p: _ctx(p).hash_size),
    ]

    def mysummary(self) -> str:
        return f"INTEGRITY {_spec_text(self)} {bytes(self.hash)[:4].hex()}…"


class PPSPPSignedIntegrity(_Element):
    """SIGNED_INTEGRITY (§8.9): chunk specification, NTP timestamp, signature."""

    name = "PPSPP SIGNED_INTEGRITY"
    fields_desc = [
        ByteEnumField("type", 7, MESSAGE_TYPES),
        *_spec_fields(),
        LongField("timestamp", 0),
        XStrFixedLenField("signature", b"", length_from=lambda p: _ctx(p).signature_size),
    ]

    def mysummary(self) -> str:
        return f"SIGNED_INTEGRITY {_spec_text(self)} ({len(self.signature)} B signature)"


class PPSPPPexResV4(_Element):
    """PEX_RESv4 (§8.13)."""

    name = "PPSPP PEX_RESv4"
    fields_desc = [
        ByteEnumField("type", 5, MESSAGE_TYPES),
        IPField("address", "0.0.0.0"),
        ShortField("port", 0),
    ]

    def mysummary(self) -> str:
        return f"PEX_RESv4 {self.address}:{self.port}"


class PPSPPPexResV6(_Element):
    """PEX_RESv6 (§8.13)."""

    name = "PPSPP PEX_RESv6"
    fields_desc = [
        ByteEnumField("type", 12, MESSAGE_TYPES),
        IP6Field("address", "::"),
        ShortField("port", 0),
    ]

    def mysummary(self) -> str:
        return f"PEX_RESv6 [{self.address}]:{self.port}"


class PPSPPPexResCert(_Element):
    """PEX_REScert (§8.13): a 16-bit size, then a DER X.509 membership certificate."""

    name = "PPSPP PEX_REScert"
    fields_desc = [
        ByteEnumField("type", 13, MESSAGE_TYPES),
        FieldLenField("cert_size", None, length_of="certificate", fmt="!H"),
        XStrLenField("certificate", b"", length_from=lambda p: p.cert_size),
    ]

    def mysummary(self) -> str:
        return f"PEX_REScert ({len(self.certificate)} B)"


class PPSPPBare(_Element):
    """PEX_REQ, CHOKE, UNCHOKE: the type alone (§8.12, §8.13)."""

    name = "PPSPP message"
    fields_desc = [ByteEnumField("type", 10, MESSAGE_TYPES)]

    def mysummary(self) -> str:
        return str(MESSAGE_TYPES.get(self.type, self.type))


_BY_TYPE: dict[int, type[Packet]] = {
    0: PPSPPHandshake,
    1: PPSPPData,
    2: PPSPPAck,
    3: PPSPPHave,
    4: PPSPPIntegrity,
    5: PPSPPPexResV4,
    6: PPSPPBare,
    7: PPSPPSignedIntegrity,
    8: PPSPPRequest,
    9: PPSPPCancel,
    10: PPSPPBare,
    11: PPSPPBare,
    12: PPSPPPexResV6,
    13: PPSPPPexResCert,
}


def _body_size(t: int, s: bytes, ctx: WireContext) -> int | None:
    """Bytes after the type octet a message needs at least (None: HANDSHAKE, checked by its
    options)."""
    spec = ctx.chunk_addressing.spec_size
    sizes = {
        1: spec + 8,
        2: spec + 8,
        3: spec,
        4: spec + ctx.hash_size,
        5: 6,
        6: 0,
        7: spec + 8 + ctx.signature_size,
        8: spec,
        9: spec,
        10: 0,
        11: 0,
        12: 18,
    }
    if t == 13:
        return 2 + int.from_bytes(s[1:3], "big") if len(s) >= 3 else 2
    return sizes.get(t)


def _data_end(s: bytes, ctx: WireContext) -> int | None:
    """Where a DATA at the start of ``s`` ends when more messages follow it (§8.6)."""
    if ctx.chunk_size is None:
        return None
    cam = ctx.chunk_addressing
    head = 1 + cam.spec_size + 8
    spec = s[1 : 1 + cam.spec_size]
    if cam.is_bin:
        start, end = bin_to_chunk_range(int.from_bytes(spec, "big"))
    else:
        half = cam.spec_size // 2
        start, end = int.from_bytes(spec[:half], "big"), int.from_bytes(spec[half:], "big")
    size = ctx.data_length(start, end)
    if size is None or head + size >= len(s):
        return None
    return head + size


def _read_message(s: bytes, _parent: Packet | None = None) -> Packet:
    """The layer of the message at the start of ``s`` (the rest becomes padding)."""
    state = _state()
    if state.broken is not None:
        return _malformed(s, state.broken)
    t = s[0]
    cls = _BY_TYPE.get(t)
    if cls is None:
        state.broken = f"unknown message type {t} (§8.2 Table 7)"
        return _malformed(s, state.broken)
    need = _body_size(t, s, state.ctx)
    if need is not None and len(s) - 1 < need:
        state.broken = f"truncated {MESSAGE_TYPES[t]}: {len(s) - 1} of {need} bytes after the type"
        return _malformed(s, state.broken)
    if t == 1:
        end = _data_end(s, state.ctx)
        if end is not None:
            data = PPSPPData(s[:end])
            data.add_payload(conf.padding_layer(s[end:]))
            return data
        return PPSPPData(s)
    if t != 0:
        return cls(s)
    try:
        msg = cls(s)
    except Exception as exc:  # a hostile handshake must not end the dissection
        state.broken = f"malformed HANDSHAKE: {exc}"
        return _malformed(s, state.broken)
    bad = next((o for o in msg.options if isinstance(o, PPSPPMalformed)), None)
    if bad is not None:
        state.broken = f"malformed HANDSHAKE: {bad.reason}"
        return msg
    try:
        state.ctx = state.ctx.updated_by(handshake_options(msg))
    except DecodeError as exc:  # messages after it cannot be laid out (§7)
        state.broken = str(exc)
    return msg


class PPSPP(Packet):
    """A PPSPP datagram (§8.3): the destination channel ID, then the messages in order.

    A datagram with no messages is a keep-alive (§8.14)."""

    name = "PPSPP"
    fields_desc = [
        XIntField("channel", 0),
        PacketListField("messages", [], _read_message, max_count=1 << 16),
    ]

    def pre_dissect(self, s: bytes) -> bytes:
        state = _state()
        state.ctx, state.broken = state.base, None
        return s

    def mysummary(self) -> str:
        if not self.messages:
            return f"PPSPP ch 0x{self.channel:08x} keep-alive"
        return f"PPSPP ch 0x{self.channel:08x} " + " ".join(m.mysummary() for m in self.messages)


bind_layers(UDP, PPSPP, dport=DEFAULT_PORT)
bind_layers(UDP, PPSPP, sport=DEFAULT_PORT)


# ---------------------------------------------------------------------------------------------
# Layer -> model (the cross-check with ppsp.peer.wire and ppsp.peer.fastwire)
# ---------------------------------------------------------------------------------------------


def malformed_reason(pkt: Packet) -> str | None:
    """Why the datagram ``pkt`` (a :class:`PPSPP` layer) is malformed, or None."""
    if isinstance(pkt, PPSPPMalformed):
        return str(pkt.reason)
    for m in pkt.messages:
        if isinstance(m, PPSPPMalformed):
            return str(m.reason)
        if isinstance(m, PPSPPHandshake):
            bad = next((o for o in m.options if isinstance(o, PPSPPMalformed)), None)
            if bad is not None:
                return f"malformed HANDSHAKE: {bad.reason}"
            if not m.options or not isinstance(m.options[-1], PPSPPOptionEnd):
                return "malformed HANDSHAKE: no End option (§7.1)"
        elif not isinstance(m, tuple(_BY_TYPE.values())):
            return f"undecodable bytes: {bytes(m)[:8].hex()}"
    return None


def _enum_or_int(cls: Callable[[int], Any], value: int) -> Any:
    try:
        return cls(value)
    except ValueError:
        return value


def handshake_options(msg: Packet) -> HandshakeOptions:
    """The model's options of a :class:`PPSPPHandshake` layer."""
    o = HandshakeOptions()
    for opt in msg.options:
        if isinstance(opt, PPSPPMalformed):
            raise DecodeError(f"malformed HANDSHAKE: {opt.reason}")
        code = opt.code
        if code == 0:
            o.version = opt.value
        elif code == 1:
            o.minimum_version = opt.value
        elif code == 2:
            o.swarm_id = bytes(opt.swarm_id)
        elif code == 3:
            o.integrity_method = _enum_or_int(IntegrityMethod, opt.value)
        elif code == 4:
            o.merkle_hash_function = _enum_or_int(MerkleHashFunction, opt.value)
        elif code == 5:
            o.live_signature_algorithm = _enum_or_int(LiveSignatureAlgorithm, opt.value)
        elif code == 6:
            o.chunk_addressing = _enum_or_int(ChunkAddressing, opt.value)
        elif code == 7:
            o.live_discard_window = opt.value
        elif code == 8:
            o.supported_messages = bytes(opt.bitmap)
        elif code == 9:
            o.chunk_size = opt.value
    return o


def _message_model(m: Packet) -> Message:
    t = m.type
    if t == 0:
        return Handshake(m.source_channel, handshake_options(m))
    if t in (5, 12):
        ip = ipaddress.ip_address(m.address)
        return PexResV4(ip, m.port) if t == 5 else PexResV6(ip, m.port)  # type: ignore[arg-type]
    if t == 6:
        return PexReq()
    if t == 10:
        return Choke()
    if t == 11:
        return Unchoke()
    if t == 13:
        return PexResCert(bytes(m.certificate))
    start, end = spec_range(m)
    if t == 1:
        return Data(start, end, m.timestamp, bytes(m.chunk))
    if t == 2:
        return Ack(start, end, m.delay_sample)
    if t == 3:
        return Have(start, end)
    if t == 4:
        return Integrity(start, end, bytes(m.hash))
    if t == 7:
        return SignedIntegrity(start, end, m.timestamp, bytes(m.signature))
    if t == 8:
        return Request(start, end)
    return Cancel(start, end)


def to_model(pkt: Packet) -> Datagram:
    """The model datagram of a :class:`PPSPP` layer; :class:`DecodeError` if it is malformed."""
    reason = malformed_reason(pkt)
    if reason is not None:
        raise DecodeError(reason)
    return Datagram(pkt.channel, [_message_model(m) for m in pkt.messages])
