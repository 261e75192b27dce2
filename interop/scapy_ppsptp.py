"""scapy layers for the binary encoding of PPSP-TP (docs/ppsp-tp-binary.md).

The normative definition is the Construct code of :mod:`ppsp.tracker.binary`; these layers
follow it field by field, with its names: the 24-byte header of draft-gu-02 (token
0xd0505374, version, method, 64-bit transaction ID, RELOAD-style fragment field, length), then
the TLVs of the method's body (§5-§8 of the document), nested TLVs included (SWARM_RESULT holds
PEER_INFO TLVs, which hold PEER_ADDR, ROLE, AREA and RANGES TLVs). A TLV whose type is unknown
keeps its value as raw bytes (an optional type is skipped by receivers; a required one makes the
message malformed, which :func:`to_model` reports).

:func:`to_model` turns a layer into the message model of :mod:`ppsp.tracker.messages` through
the same conversion the Construct decoder uses, so the cross-check tests compare what scapy read
with what :func:`ppsp.tracker.binary.parse` and :func:`~ppsp.tracker.binary.decode` read.

Bound to UDP and TCP port 7846 (``p2pcdn`` default). Over TCP, messages follow each other on the
stream: each layer stops at its Message Length and the rest is the next message's.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from typing import Any

from construct import Container, ListContainer
from scapy.fields import (
    BitField,
    BitFieldLenField,
    ByteEnumField,
    ByteField,
    ConditionalField,
    FieldLenField,
    FlagsField,
    IEEEDoubleField,
    IntField,
    IP6Field,
    IPField,
    LongField,
    MultipleTypeField,
    PacketField,
    PacketLenField,
    PacketListField,
    ShortField,
    StrField,
    StrLenField,
    XIntField,
    XShortEnumField,
    XStrLenField,
)
from scapy.layers.inet import TCP, UDP
from scapy.packet import Packet, Raw, bind_layers

from ppsp.tracker import binary
from ppsp.tracker.binary import HEADER_SIZE, TOKEN, Method, TlvType
from ppsp.tracker.messages import Message, TrackerError

__all__ = [
    "DEFAULT_PORT",
    "METHOD_NAMES",
    "PPSPTP",
    "TLV_NAMES",
    "PPSPTPId",
    "PPSPTPRangeList",
    "PPSPTPText",
    "PPSPTPTlv",
    "id_text",
    "to_model",
]

#: PPSP-TP's port (RFC 7846 registers none for binary; ours follows the RFC number).
DEFAULT_PORT = 7846

METHOD_NAMES = {int(m): m.name for m in Method}
TLV_NAMES = {int(t): t.name for t in TlvType}
_ACTIONS = {1: "JOIN", 2: "LEAVE"}
_MODES = {1: "SEEDER", 2: "LEECH"}
_ADDRESS_TYPES = {1: "HOST", 2: "REFLEXIVE", 3: "PROXY"}
_FAMILIES = {4: "IPv4", 6: "IPv6"}
_ROLES = {1: "SOURCE", 2: "CACHER", 3: "CSC"}
_UNITS = {1: "CHUNKS", 2: "SECONDS"}
_RESULTS = {0: "SUCCESSFUL", 1: "FAILED"}
#: Enough for the largest message (16 MiB of the smallest TLV).
_MAX_ITEMS = 1 << 22


class _Part(Packet):
    """A part of known length: what follows it is the next part, not its payload."""

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s


class _IdValueField(StrLenField):
    """An ID's value: hex when H says raw bytes, else the UTF-8 text."""

    def i2repr(self, pkt: Packet | None, x: Any) -> str:
        value = bytes(x or b"")
        if pkt is not None and pkt.raw:
            return value.hex()
        return repr(value.decode("utf-8", "replace"))


class PPSPTPId(_Part):
    """An ID (§6.1): H (raw bytes shown as hex) and a 15-bit length, then the value."""

    name = "ID"
    fields_desc = [
        BitField("raw", 0, 1),
        BitFieldLenField("length", None, 15, length_of="value"),
        _IdValueField("value", b"", length_from=lambda p: p.length),
    ]

    def mysummary(self) -> str:
        return id_text(self)


def id_text(pkt: Packet | None) -> str:
    """The ID string an :class:`PPSPTPId` layer carries (hex for H = 1, as the model has it)."""
    if pkt is None:
        return "?"
    value = bytes(pkt.value)
    if pkt.raw:
        return value.hex()
    return value.decode("utf-8", "replace")


def _short_id(pkt: Packet | None) -> str:
    text = id_text(pkt)
    return text[:8] + "…" if len(text) > 12 else text


class PPSPTPText(_Part):
    """A text (§6.2): a length octet, then UTF-8."""

    name = "text"
    fields_desc = [
        FieldLenField("length", None, length_of="text", fmt="B"),
        StrLenField("text", b"", length_from=lambda p: p.length),
    ]


class PPSPTPRange32(_Part):
    name = "chunk range"
    fields_desc = [IntField("start", 0), IntField("end", 0)]


class PPSPTPRange64(_Part):
    name = "chunk range"
    fields_desc = [LongField("start", 0), LongField("end", 0)]


class PPSPTPRangeList(_Part):
    """A range list (§6.3): W (64-bit numbers) and a 15-bit count, then the ranges."""

    name = "range list"
    fields_desc = [
        BitField("wide", 0, 1),
        BitFieldLenField("count", None, 15, count_of="ranges"),
        MultipleTypeField(
            [
                (
                    PacketListField(
                        "ranges", [], PPSPTPRange64, count_from=lambda p: p.count, max_count=1 << 15
                    ),
                    lambda p: p.wide == 1,
                )
            ],
            PacketListField(
                "ranges", [], PPSPTPRange32, count_from=lambda p: p.count, max_count=1 << 15
            ),
        ),
    ]

    def mysummary(self) -> str:
        return ranges_text(self)


def ranges_text(pkt: Packet | None) -> str:
    if pkt is None:
        return ""
    return (
        ",".join(
            f"{r.start}-{r.end}" if isinstance(r, (PPSPTPRange32, PPSPTPRange64)) else "[truncated]"
            for r in pkt.ranges
        )
        or "none"
    )


# §8 TLV values ------------------------------------------------------------------------------


class PPSPTPSwarmAction(_Part):
    name = "SWARM_ACTION"
    fields_desc = [
        ByteEnumField("action", 1, _ACTIONS),
        ByteEnumField("peer_mode", 2, _MODES),
        PacketField("swarm_id", PPSPTPId(), PPSPTPId),
    ]

    def mysummary(self) -> str:
        action = _ACTIONS.get(self.action, self.action)
        return (
            f"{action} {_short_id(self.swarm_id)} as {_MODES.get(self.peer_mode, self.peer_mode)}"
        )


class PPSPTPPeerNum(_Part):
    name = "PEER_NUM"
    fields_desc = [
        IntField("peer_count", 0),
        FlagsField(
            "present", 0, 8, ["ability_nat", "concurrent_links", "online_time", "upload_bandwidth"]
        ),
        ConditionalField(
            PacketField("ability_nat", PPSPTPText(), PPSPTPText), lambda p: p.present & 0x01
        ),
        ConditionalField(IntField("concurrent_links", 0), lambda p: p.present & 0x02),
        ConditionalField(LongField("online_time", 0), lambda p: p.present & 0x04),
        ConditionalField(LongField("upload_bandwidth", 0), lambda p: p.present & 0x08),
    ]

    def mysummary(self) -> str:
        return f"peer_num={self.peer_count}"


def _text_or_none(pkt: Packet, name: str, bit: int) -> bytes | None:
    if not pkt.present & bit:
        return None
    text = pkt.getfieldval(name)
    value = bytes(text.text)
    if len(value) != text.length:
        raise ValueError(f"{name}: text of {len(value)} of {text.length} bytes")
    return value


class PPSPTPPeerAddr(_Part):
    name = "PEER_ADDR"
    fields_desc = [
        ByteEnumField("type", 1, _ADDRESS_TYPES),
        ByteEnumField("family", 4, _FAMILIES),
        MultipleTypeField(
            [(IP6Field("address", "::"), lambda p: p.family == 6)], IPField("address", "0.0.0.0")
        ),
        ShortField("port", 0),
        IntField("priority", 0),
        FlagsField("present", 0, 8, ["connection", "asn", "peer_protocol"]),
        ConditionalField(
            PacketField("connection", PPSPTPText(), PPSPTPText), lambda p: p.present & 0x01
        ),
        ConditionalField(PacketField("asn", PPSPTPText(), PPSPTPText), lambda p: p.present & 0x02),
        ConditionalField(
            PacketField("peer_protocol", PPSPTPText(), PPSPTPText), lambda p: p.present & 0x04
        ),
    ]

    def mysummary(self) -> str:
        host = f"[{self.address}]" if self.family == 6 else str(self.address)
        return f"{_ADDRESS_TYPES.get(self.type, self.type)} {host}:{self.port}"


class PPSPTPStreamStats(_Part):
    name = "STREAM_STATS"
    fields_desc = [
        LongField("uploaded_bytes", 0),
        LongField("downloaded_bytes", 0),
        LongField("available_bandwidth", 0),
        IntField("concurrent_links", 0),
        PacketField("swarm_id", PPSPTPId(), PPSPTPId),
    ]

    def mysummary(self) -> str:
        return f"stats {_short_id(self.swarm_id)}"


class PPSPTPRole(_Part):
    name = "ROLE"
    fields_desc = [ByteEnumField("role", 3, _ROLES)]

    def mysummary(self) -> str:
        return f"role={_ROLES.get(self.role, self.role)}"


class PPSPTPArea(_Part):
    name = "AREA"
    fields_desc = [StrField("area", b"")]

    def mysummary(self) -> str:
        return f"area={bytes(self.area).decode('utf-8', 'replace')}"


class PPSPTPAvailability(_Part):
    name = "AVAILABILITY"
    fields_desc = [
        ByteEnumField("peer_mode", 1, _MODES),
        ByteEnumField("role", 2, _ROLES),
        PacketField("swarm_id", PPSPTPId(), PPSPTPId),
        PacketField("ranges", PPSPTPRangeList(), PPSPTPRangeList),
    ]

    def mysummary(self) -> str:
        return f"has {_short_id(self.swarm_id)} {ranges_text(self.ranges)}"


class PPSPTPAvailabilityDelta(_Part):
    name = "AVAILABILITY_DELTA"
    fields_desc = [
        PacketField("swarm_id", PPSPTPId(), PPSPTPId),
        PacketField("cached", PPSPTPRangeList(), PPSPTPRangeList),
        PacketField("evicted", PPSPTPRangeList(), PPSPTPRangeList),
    ]

    def mysummary(self) -> str:
        return (
            f"delta {_short_id(self.swarm_id)} +{ranges_text(self.cached)}"
            f" -{ranges_text(self.evicted)}"
        )


class PPSPTPPushHint(_Part):
    name = "PUSH_HINT"
    fields_desc = [
        ByteEnumField("unit", 1, _UNITS),
        IntField("priority", 0),
        LongField("head_start", 0),
        LongField("head_end", 0),
        IEEEDoubleField("expires_in", 60.0),  # type: ignore[arg-type]
        PacketField("swarm_id", PPSPTPId(), PPSPTPId),
    ]

    def mysummary(self) -> str:
        unit = "s" if self.unit == 2 else ""
        return f"push {_short_id(self.swarm_id)} {self.head_start}-{self.head_end}{unit}"


class PPSPTPSwarmPopularity(_Part):
    name = "SWARM_POPULARITY"
    fields_desc = [
        IntField("viewers", 0),
        IEEEDoubleField("join_rate", 0.0),  # type: ignore[arg-type]
        PacketField("swarm_id", PPSPTPId(), PPSPTPId),
        PacketField("rarest", PPSPTPRangeList(), PPSPTPRangeList),
    ]

    def mysummary(self) -> str:
        return f"popularity {_short_id(self.swarm_id)} viewers={self.viewers}"


def _tlv_value(s: bytes, _parent: Packet | None = None) -> Packet:
    """The value layer of a TLV, by the type of the TLV being dissected (``_parent``)."""
    cls = _VALUES.get(_parent.type if _parent is not None else -1, Raw)
    return cls(s)


class PPSPTPTlv(_Part):
    """A TLV (§5): O bit + 15-bit type, 32-bit length, the value of the type's layout."""

    name = "TLV"
    fields_desc = [
        XShortEnumField("type", 1, TLV_NAMES),
        FieldLenField("length", None, length_of="value", fmt="!I"),
        PacketLenField(
            "value",
            None,  # type: ignore[arg-type]
            _tlv_value,
            length_from=lambda p: p.length,
        ),
    ]

    def tree_label(self) -> str:
        """The title of this TLV in a dissection tree (interop.dissect)."""
        name = TLV_NAMES.get(self.type, f"type {self.type:#06x}")
        try:
            return f"TLV {name}: {self.mysummary()}"
        except Exception:  # a truncated value
            return f"TLV {name}"

    def mysummary(self) -> str:
        value = self.value
        if value is None:
            return str(TLV_NAMES.get(self.type, f"{self.type:#06x}"))
        if self.type == TlvType.PEER_ID:
            return f"peer={id_text(value)}"
        if self.type == TlvType.SWARM_ID:
            return f"swarm={_short_id(value)}"
        if self.type == TlvType.RANGES:
            return f"ranges={ranges_text(value)}"
        if isinstance(value, Raw):
            return f"{TLV_NAMES.get(self.type, f'type {self.type:#06x}')}({len(value.load)} B)"
        return str(value.mysummary())


class PPSPTPSwarmResult(_Part):
    name = "SWARM_RESULT"
    fields_desc = [
        ByteEnumField("result", 0, _RESULTS),
        FlagsField("flags", 0, 8, ["peer_group"]),
        PacketField("swarm_id", PPSPTPId(), PPSPTPId),
        PacketListField("tlvs", [], PPSPTPTlv, max_count=_MAX_ITEMS),
    ]

    def mysummary(self) -> str:
        return (
            f"result {_short_id(self.swarm_id)} {_RESULTS.get(self.result, self.result)}"
            f" {len(self.tlvs)} peer(s)"
        )


class PPSPTPPeerInfo(_Part):
    name = "PEER_INFO"
    fields_desc = [
        PacketField("peer_id", PPSPTPId(), PPSPTPId),
        PacketListField("tlvs", [], PPSPTPTlv, max_count=_MAX_ITEMS),
    ]

    def mysummary(self) -> str:
        return f"peer {id_text(self.peer_id)}"


_VALUES: dict[int, type[Packet]] = {
    TlvType.PEER_ID: PPSPTPId,
    TlvType.SWARM_ID: PPSPTPId,
    TlvType.SWARM_ACTION: PPSPTPSwarmAction,
    TlvType.PEER_NUM: PPSPTPPeerNum,
    TlvType.PEER_ADDR: PPSPTPPeerAddr,
    TlvType.STREAM_STATS: PPSPTPStreamStats,
    TlvType.SWARM_RESULT: PPSPTPSwarmResult,
    TlvType.PEER_INFO: PPSPTPPeerInfo,
    TlvType.ROLE: PPSPTPRole,
    TlvType.AREA: PPSPTPArea,
    TlvType.RANGES: PPSPTPRangeList,
    TlvType.AVAILABILITY: PPSPTPAvailability,
    TlvType.AVAILABILITY_DELTA: PPSPTPAvailabilityDelta,
    TlvType.PUSH_HINT: PPSPTPPushHint,
    TlvType.SWARM_POPULARITY: PPSPTPSwarmPopularity,
}


class PPSPTP(Packet):
    """A binary PPSP-TP message or fragment (§2): the 24-byte header, then the TLVs of the
    body (a fragment's data stays raw until reassembled, §10)."""

    name = "PPSP-TP"
    fields_desc = [
        XIntField("token", TOKEN),
        ByteField("version", 1),
        ByteField("reserved", 0),
        XShortEnumField("method", int(Method.FIND), METHOD_NAMES),
        LongField("transaction_id", 0),
        BitField("fragment_bit", 1, 1),
        BitField("last_fragment", 1, 1),
        BitField("fragment_reserved", 0, 6),
        BitField("fragment_offset", 0, 24),
        IntField("length", None),
        ConditionalField(
            PacketListField(
                "tlvs", [], PPSPTPTlv, length_from=lambda p: _body_length(p), max_count=_MAX_ITEMS
            ),
            lambda p: _whole(p),
        ),
        ConditionalField(
            XStrLenField("fragment_data", b"", length_from=lambda p: _body_length(p)),
            lambda p: not _whole(p),
        ),
    ]

    def post_build(self, pkt: bytes, pay: bytes) -> bytes:
        if self.length is None:
            pkt = pkt[:20] + struct.pack(">I", len(pkt)) + pkt[24:]
        return pkt + pay

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s  # over TCP, the next message

    @property
    def is_whole(self) -> bool:
        return _whole(self)

    def mysummary(self) -> str:
        method = METHOD_NAMES.get(self.method, f"method {self.method:#06x}")
        text = f"PPSP-TP {method} tid {self.transaction_id}"
        if not _whole(self):
            return f"{text} fragment @{self.fragment_offset}{' last' if self.last_fragment else ''}"
        parts = [str(t.mysummary()) for t in self.tlvs]
        return " ".join([text, *parts])


def _whole(p: Packet) -> bool:
    return bool(p.fragment_offset == 0 and p.last_fragment)


def _body_length(p: Packet) -> int:
    length = p.length
    return max(0, length - HEADER_SIZE) if length is not None else 1 << 30


bind_layers(UDP, PPSPTP, dport=DEFAULT_PORT)
bind_layers(UDP, PPSPTP, sport=DEFAULT_PORT)
bind_layers(TCP, PPSPTP, dport=DEFAULT_PORT)
bind_layers(TCP, PPSPTP, sport=DEFAULT_PORT)


# ---------------------------------------------------------------------------------------------
# Layer -> model, through ppsp.tracker.binary's conversion of Construct containers
# ---------------------------------------------------------------------------------------------


def _c_id(p: Packet) -> Container:
    value = bytes(p.value)
    if len(value) != p.length:
        raise _bad(f"ID of {len(value)} of {p.length} bytes")
    return Container(prefix=(0x8000 if p.raw else 0) | (p.length & 0x7FFF), value=value)


def _c_ranges(p: Packet) -> Container:
    kind = PPSPTPRange64 if p.wide else PPSPTPRange32
    if len(p.ranges) != p.count or not all(isinstance(r, kind) for r in p.ranges):
        raise _bad(f"range list of {len(p.ranges)} of {p.count} ranges")
    return Container(
        prefix=(0x8000 if p.wide else 0) | (p.count & 0x7FFF),
        ranges=ListContainer(Container(start=r.start, end=r.end) for r in p.ranges),
    )


def _packed(address: str, family: int) -> bytes:
    if family not in (4, 6):
        raise _bad(f"address family {family}")
    return ipaddress.ip_address(address).packed


_CONVERT: dict[int, Callable[[Packet], Any]] = {
    TlvType.PEER_ID: _c_id,
    TlvType.SWARM_ID: _c_id,
    TlvType.SWARM_ACTION: lambda p: Container(
        action=p.action, peer_mode=p.peer_mode, swarm_id=_c_id(p.swarm_id)
    ),
    TlvType.PEER_NUM: lambda p: Container(
        peer_count=p.peer_count,
        present=int(p.present),
        ability_nat=_text_or_none(p, "ability_nat", 0x01),
        concurrent_links=p.concurrent_links if p.present & 0x02 else None,
        online_time=p.online_time if p.present & 0x04 else None,
        upload_bandwidth=p.upload_bandwidth if p.present & 0x08 else None,
    ),
    TlvType.PEER_ADDR: lambda p: Container(
        type=p.type,
        family=p.family,
        address=_packed(p.address, p.family),
        port=p.port,
        priority=p.priority,
        present=int(p.present),
        connection=_text_or_none(p, "connection", 0x01),
        asn=_text_or_none(p, "asn", 0x02),
        peer_protocol=_text_or_none(p, "peer_protocol", 0x04),
    ),
    TlvType.STREAM_STATS: lambda p: Container(
        uploaded_bytes=p.uploaded_bytes,
        downloaded_bytes=p.downloaded_bytes,
        available_bandwidth=p.available_bandwidth,
        concurrent_links=p.concurrent_links,
        swarm_id=_c_id(p.swarm_id),
    ),
    TlvType.SWARM_RESULT: lambda p: Container(
        result=p.result,
        flags=int(p.flags),
        swarm_id=_c_id(p.swarm_id),
        tlvs=_c_tlvs(p.tlvs, binary._IN_RESULT),
    ),
    TlvType.PEER_INFO: lambda p: Container(
        peer_id=_c_id(p.peer_id), tlvs=_c_tlvs(p.tlvs, binary._IN_PEER)
    ),
    TlvType.ROLE: lambda p: Container(role=p.role),
    TlvType.AREA: lambda p: bytes(p.area),
    TlvType.RANGES: _c_ranges,
    TlvType.AVAILABILITY: lambda p: Container(
        peer_mode=p.peer_mode,
        role=p.role,
        swarm_id=_c_id(p.swarm_id),
        ranges=_c_ranges(p.ranges),
    ),
    TlvType.AVAILABILITY_DELTA: lambda p: Container(
        swarm_id=_c_id(p.swarm_id), cached=_c_ranges(p.cached), evicted=_c_ranges(p.evicted)
    ),
    TlvType.PUSH_HINT: lambda p: Container(
        unit=p.unit,
        priority=p.priority,
        head_start=p.head_start,
        head_end=p.head_end,
        expires_in=p.expires_in,
        swarm_id=_c_id(p.swarm_id),
    ),
    TlvType.SWARM_POPULARITY: lambda p: Container(
        viewers=p.viewers,
        join_rate=p.join_rate,
        swarm_id=_c_id(p.swarm_id),
        rarest=_c_ranges(p.rarest),
    ),
}


def _bad(why: str) -> TrackerError:
    return TrackerError(f"malformed binary PPSP-TP message: {why}")


def _c_tlvs(tlvs: list[Packet], context: Any) -> ListContainer:
    """Construct-like containers of a TLV sequence; types not allowed in ``context`` (a
    :mod:`ppsp.tracker.binary` TLV context) stay raw, as the Construct definition skips
    them (optional types) or refuses them whatever their value (required types)."""
    out = ListContainer()
    for t in tlvs:
        if not isinstance(t, PPSPTPTlv):
            raise _bad("truncated TLV")
        value = t.value
        if value is None:
            value = Raw(b"")
        if t.length is not None and len(bytes(value)) != t.length:
            raise _bad(f"TLV {t.type:#06x} value of {len(bytes(value))} of {t.length} bytes")
        convert = _CONVERT.get(t.type) if t.type in context.limits else None
        if convert is None or isinstance(value, Raw):
            out.append(Container(type=t.type, value=bytes(value)))
            continue
        pad = value.lastlayer()
        if pad is not value:
            raise _bad(f"bytes left in the value of TLV {t.type:#06x}")
        out.append(Container(type=t.type, value=convert(value)))
    return out


def to_model(pkt: Packet, data: bytes | None = None) -> Message:
    """The model message of a whole :class:`PPSPTP` layer; :class:`TrackerError` if it is
    malformed, a fragment, or carries what the model cannot (the Construct decoder's checks).
    ``data``, the bytes the layer was dissected from, lets the length field be checked."""
    if pkt.token != TOKEN:
        raise _bad(f"token {pkt.token:#010x}")
    if pkt.version != 1:
        raise TrackerError(f"version {pkt.version}")
    if not _whole(pkt):
        raise _bad("a fragment: reassemble first")
    if data is not None and pkt.length != len(data):
        raise _bad(f"length field {pkt.length}, message of {len(data)} bytes")
    entry = binary._METHODS.get(pkt.method)
    if entry is None:
        raise _bad(f"unknown method {pkt.method:#06x}")
    context, finish = entry
    try:
        items = binary._m_tlvs(_c_tlvs(pkt.tlvs, context), context)
        return finish(pkt.method, str(pkt.transaction_id), items)
    except TrackerError:
        raise
    except binary._CODEC_ERRORS as exc:
        raise _bad(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
