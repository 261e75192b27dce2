"""``p2pcdn dissect``: a Wireshark-style dissection of PPSPP, PPSP-TP binary and RELOAD captures.

For every frame of a classic pcap (or pcapng) file the dissector prints the frame number, the
time, the addresses, the protocol and the message tree of the scapy layers of
:mod:`interop.scapy_ppspp`, :mod:`interop.scapy_ppsptp` and :mod:`interop.scapy_reload`
(``--json``: one JSON object per frame), then a summary: packets per protocol and how many
were malformed. docs/dissect.md is the user manual.

What decides the protocol of a UDP or TCP payload, first match wins: ``--proto`` (every
payload), the port map (default ports PPSPP 7777, PPSP-TP 7846, RELOAD 6084, more with
``--port-map PROTO=PORT``; the destination port first, then the source port), then the magic
numbers of PPSP-TP (token 0xd0505374) and RELOAD (a framing header followed by the token
0xd2454c4f, or a bare forwarding header). PPSPP has no magic number: it needs its port.

PPSPP context: the chunk addressing method and the hash and signature sizes of a datagram come
from the HANDSHAKE of its channel (RFC 7574 §7). The dissector remembers, for each address and
channel, what that side announced; a datagram is read with the context of the side it is sent
to (its destination channel), else with the last context seen between the two addresses, else
with RFC 7574's defaults.

Streams: PPSP-TP and RELOAD over TCP are reassembled per direction; a message is shown in the
frame in which it completes (several messages in one frame are all shown).

Malformed input never stops the dissection: the verdict and its reason come from the
normative Construct codecs (:mod:`ppsp.peer.wire`, :mod:`ppsp.tracker.binary`,
:mod:`reload.wire`), and a frame cut short by the snapshot length, a wrong port (a payload that
is not the protocol its port says) and garbage are reported the same way. A pcap file cut short
in the middle of a record ends the dissection with a note; the exit status is 0 unless the
file cannot be read at all (missing, not a capture).

This module imports scapy only when a dissection starts, so that ``p2pcdn`` itself does not pay
for it (DESIGN §3).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import struct
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "DEFAULT_PORTS",
    "PROTOCOLS",
    "DissectError",
    "Dissector",
    "PacketRecord",
    "add_arguments",
    "dissect_file",
    "run",
]

PROTOCOLS = ("ppspp", "ppsptp", "reload")
#: Default ports: lab/cli.py DEFAULT_PORT for PPSPP, PPSP-TP's 7846, RELOAD's registered 6084.
DEFAULT_PORTS: Mapping[int, str] = {7777: "ppspp", 7846: "ppsptp", 6084: "reload"}
_LABEL = {"ppspp": "PPSPP", "ppsptp": "PPSP-TP", "reload": "RELOAD"}

_PCAP_MAGIC = {0xA1B2C3D4: 1e6, 0xA1B23C4D: 1e9}
_PCAPNG_MAGIC = 0x0A0D0D0A
_MAX_RECORD = 1 << 24
#: A TCP direction buffers at most this much while waiting for the end of a message.
_MAX_STREAM_BUFFER = (16 << 20) + 64
_PPSPTP_TOKEN = b"\xd0\x50\x53\x74"
_RELO_TOKEN = b"\xd2\x45\x4c\x4f"


class DissectError(Exception):
    """The capture cannot be read at all (missing, not a pcap or pcapng file)."""


@dataclass(slots=True)
class RawFrame:
    number: int
    timestamp: float
    linktype: int
    data: bytes
    wire_length: int


@dataclass(slots=True)
class PacketRecord:
    """What the dissector found in one frame; :meth:`as_json` is the ``--json`` object."""

    frame: int
    time: float
    relative_time: float
    length: int
    captured: int
    src: str | None = None
    dst: str | None = None
    sport: int | None = None
    dport: int | None = None
    transport: str | None = None
    protocol: str = "other"
    summary: str = ""
    malformed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: The scapy layers of the messages found in the frame (several over TCP).
    packets: list[Any] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "frame": self.frame,
            "time": self.time,
            "relative_time": round(self.relative_time, 6),
            "length": self.length,
            "captured": self.captured,
            "src": self.src,
            "sport": self.sport,
            "dst": self.dst,
            "dport": self.dport,
            "transport": self.transport,
            "protocol": self.protocol,
            "summary": self.summary,
            "malformed": self.malformed or None,
            "notes": self.notes,
            "messages": [layer_tree(p) for p in self.packets],
        }


# ---------------------------------------------------------------------------------------------
# Capture files
# ---------------------------------------------------------------------------------------------


def read_frames(path: str | Path) -> Iterator[RawFrame | str]:
    """The frames of a classic pcap or a pcapng file; a string is a problem that ended the
    reading (a truncated file). Raises :class:`DissectError` when nothing can be read."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, the generator owns it
    except OSError as exc:
        raise DissectError(f"cannot open {path}: {exc.strerror or exc}") from exc
    with f:
        head = f.read(24)
        if len(head) < 4:
            raise DissectError(f"{path}: not a capture file (shorter than a magic number)")
        if struct.unpack("<I", head[:4])[0] == _PCAPNG_MAGIC:
            f.close()
            yield from _read_pcapng(path)
            return
        order = next((o for o in "<>" if struct.unpack(o + "I", head[:4])[0] in _PCAP_MAGIC), None)
        if order is None:
            raise DissectError(f"{path}: not a pcap file (magic {head[:4].hex()})")
        if len(head) < 24:
            raise DissectError(f"{path}: truncated pcap global header")
        divisor = _PCAP_MAGIC[struct.unpack(order + "I", head[:4])[0]]
        linktype = struct.unpack(order + "I", head[20:24])[0] & 0x0FFFFFFF
        record = struct.Struct(order + "IIII")
        number = 0
        while True:
            rec = f.read(16)
            if not rec:
                return
            number += 1
            if len(rec) < 16:
                yield f"truncated pcap file: record header of frame {number} has {len(rec)} of 16 bytes"
                return
            sec, frac, incl, orig = record.unpack(rec)
            if incl > _MAX_RECORD:
                yield f"corrupt pcap file: frame {number} claims {incl} bytes"
                return
            data = f.read(incl)
            if len(data) < incl:
                yield f"truncated pcap file: frame {number} has {len(data)} of {incl} bytes"
                return
            yield RawFrame(number, sec + frac / divisor, linktype, data, max(orig, incl))


def _read_pcapng(path: str | Path) -> Iterator[RawFrame | str]:
    from scapy.utils import RawPcapNgReader

    try:
        reader = RawPcapNgReader(str(path))
    except Exception as exc:
        raise DissectError(f"{path}: unreadable pcapng file: {exc}") from exc
    number = 0
    quiet = logging.getLogger("scapy.runtime")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # scapy warns on a damaged file; we report it ourselves
    try:
        with reader:
            while True:
                try:
                    data, meta = reader._read_packet()
                except EOFError:
                    break
                except Exception as exc:
                    yield f"corrupt pcapng file after frame {number}: {exc}"
                    return
                number += 1
                ts = ((meta.tshigh << 32) | meta.tslow) / float(meta.tsresol or 1_000_000)
                wirelen = getattr(meta, "wirelen", None) or len(data)
                yield RawFrame(number, ts, meta.linktype, bytes(data), max(wirelen, len(data)))
    finally:
        quiet.setLevel(level)
    # scapy ends a damaged file like a whole one: walk the blocks to tell them apart.
    damage = _pcapng_damage(path)
    if damage is not None:
        yield f"{damage} (after frame {number})"


def _pcapng_damage(path: str | Path) -> str | None:
    """Why a pcapng file is not a whole sequence of blocks, or None (each block: type, total
    length, body, total length again; the section header's magic gives the byte order)."""
    data = Path(path).read_bytes()
    pos, order = 0, "<"
    for _ in range(len(data) // 12 + 1):  # bounded: a block takes at least 12 bytes
        if pos == len(data):
            return None
        if len(data) - pos < 12:
            return f"truncated pcapng file: {len(data) - pos} bytes after the last block"
        if data[pos : pos + 4] == b"\x0a\x0d\x0d\x0a":
            order = "<" if data[pos + 8 : pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
        (length,) = struct.unpack_from(order + "I", data, pos + 4)
        if length < 12 or length % 4:
            return f"corrupt pcapng file: block of {length} bytes at offset {pos}"
        if pos + length > len(data):
            return f"truncated pcapng file: block at offset {pos} has {len(data) - pos} of {length} bytes"
        pos += length
    return None


# ---------------------------------------------------------------------------------------------
# Trees
# ---------------------------------------------------------------------------------------------


def _json_value(value: Any) -> Any:
    from ppsp.peer.messages import WireContext

    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, WireContext):
        return {
            "chunk_addressing": int(value.chunk_addressing),
            "hash_size": value.hash_size,
            "signature_size": value.signature_size,
            "chunk_size": value.chunk_size,
        }
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    try:
        return int(value)  # FlagValue and friends
    except (TypeError, ValueError):
        return str(value)


def _fields(pkt: Any) -> Iterator[tuple[str, Any, Any]]:
    """(name, field, value) of the fields a layer actually has (conditions resolved)."""
    from scapy.fields import ConditionalField, MultipleTypeField

    for f in pkt.fields_desc:
        if isinstance(f, ConditionalField):
            if not f._evalcond(pkt):
                continue
            f = f.fld
        if isinstance(f, MultipleTypeField):
            f = f._find_fld_pkt(pkt)
        yield f.name, f, pkt.getfieldval(f.name)


def layer_tree(pkt: Any) -> dict[str, Any]:
    """A layer as ``{"layer": name, "fields": {...}}``, nested layers as such objects, with
    machine values (numbers, hex strings for bytes)."""
    from scapy.packet import Packet

    out: dict[str, Any] = {}
    for name, _fld, value in _fields(pkt):
        if isinstance(value, Packet):
            out[name] = layer_tree(value)
        elif isinstance(value, list) and value and all(isinstance(v, Packet) for v in value):
            out[name] = [layer_tree(v) for v in value]
        else:
            out[name] = _json_value(value)
    tree: dict[str, Any] = {"layer": pkt.name, "fields": out}
    payload = pkt.payload
    if payload is not None and len(payload.fields_desc) and payload.name != "NoPayload":
        tree["payload"] = layer_tree(payload)
    return tree


def _text_tree(pkt: Any, indent: int, lines: list[str]) -> None:
    from scapy.packet import Packet

    pad = "    " * indent
    label = getattr(pkt, "tree_label", None)
    lines.append(f"{pad}{label() if callable(label) else pkt.name}")
    for name, fld, value in _fields(pkt):
        if isinstance(value, Packet):
            lines.append(f"{pad}    {name}:")
            _text_tree(value, indent + 2, lines)
        elif isinstance(value, list) and value and all(isinstance(v, Packet) for v in value):
            lines.append(f"{pad}    {name}: {len(value)} item(s)")
            for v in value:
                _text_tree(v, indent + 2, lines)
        else:
            try:
                text = fld.i2repr(pkt, value)
            except Exception:
                text = repr(value)
            if len(text) > 96:
                text = text[:93] + "..."
            lines.append(f"{pad}    {name}: {text}")
    payload = pkt.payload
    if payload is not None and payload.name != "NoPayload" and len(payload.fields_desc):
        _text_tree(payload, indent, lines)


def text_tree(pkt: Any, indent: int = 1) -> list[str]:
    """The Wireshark-style lines of a layer and what it contains."""
    lines: list[str] = []
    _text_tree(pkt, indent, lines)
    return lines


# ---------------------------------------------------------------------------------------------
# The dissector
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Stream:
    expected: int | None = None
    buffer: bytearray = field(default_factory=bytearray)


class Dissector:
    """Dissects frames one after the other, keeping PPSPP channel contexts and TCP streams."""

    def __init__(
        self,
        *,
        proto: str | None = None,
        port_map: Mapping[int, str] | None = None,
        node_id_length: int = 16,
    ) -> None:
        if proto is not None and proto not in PROTOCOLS:
            raise ValueError(f"unknown protocol {proto!r}: one of {', '.join(PROTOCOLS)}")
        # Imported here, not at module level: `p2pcdn` must not import scapy (DESIGN §3).
        from scapy.config import conf

        from interop import scapy_ppspp, scapy_ppsptp, scapy_reload
        from ppsp.peer.messages import WireContext
        from reload.messages import DEFAULT_DATA_MODELS, DataModel
        from reload.usages.kinds import (
            CONTENT_META,
            CONTENT_SEGMENT,
            PEER_BATCH,
            PEER_STATUS,
            SWARM_PEERS,
        )

        self._conf = conf
        self._ppspp = scapy_ppspp
        self._ppsptp = scapy_ppsptp
        self._reload = scapy_reload
        self.proto = proto
        self.ports = dict(DEFAULT_PORTS)
        self.ports.update(port_map or {})
        self.node_id_length = node_id_length
        # Our private Kinds (docs/usages.md) are all dictionaries.
        ours = (SWARM_PEERS, PEER_BATCH, PEER_STATUS, CONTENT_META, CONTENT_SEGMENT)
        self.data_models = {
            **DEFAULT_DATA_MODELS,
            **{kind: DataModel.DICTIONARY for kind in ours},
        }
        self.default_context = WireContext()
        self.channel_contexts: dict[tuple[str, int, int], WireContext] = {}
        self.pair_contexts: dict[frozenset[tuple[str, int]], WireContext] = {}
        self.streams: dict[tuple[str, int, str, int], _Stream] = {}
        self.first_time: float | None = None
        self.counts: dict[str, int] = {p: 0 for p in (*PROTOCOLS, "other")}
        self.malformed = 0
        self.frames = 0
        self.problems: list[str] = []

    # -- frames ----------------------------------------------------------------------------

    def dissect(self, frame: RawFrame) -> PacketRecord:
        """Dissect one frame; never raises for what the frame contains."""
        if self.first_time is None:
            self.first_time = frame.timestamp
        rec = PacketRecord(
            frame.number,
            frame.timestamp,
            frame.timestamp - self.first_time,
            frame.wire_length,
            len(frame.data),
        )
        self.frames += 1
        try:
            self._dissect(frame, rec)
        except Exception as exc:  # a bug or a hostile frame scapy chokes on: report, go on
            rec.malformed.append(f"dissector error: {type(exc).__name__}: {exc}")
        self.counts[rec.protocol] = self.counts.get(rec.protocol, 0) + 1
        rec.malformed = [" ".join(m.split()) for m in rec.malformed]  # one line each
        if rec.malformed:
            self.malformed += 1
        if not rec.summary:
            rec.summary = "; ".join(rec.malformed) or rec.protocol
        return rec

    def _dissect(self, frame: RawFrame, rec: PacketRecord) -> None:
        from scapy.layers.inet import IP, TCP, UDP
        from scapy.layers.inet6 import IPv6

        link = self._conf.l2types.num2layer.get(frame.linktype)
        if link is None:
            rec.summary = f"link type {frame.linktype} not supported"
            return
        pkt = link(frame.data)
        ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
        if ip is None:
            rec.summary = pkt.summary()
            return
        rec.src, rec.dst = str(ip.src), str(ip.dst)
        if isinstance(ip, IP) and (ip.flags.MF or ip.frag):
            rec.summary = f"IPv4 fragment (offset {ip.frag * 8})"
            return
        udp, tcp = pkt.getlayer(UDP), pkt.getlayer(TCP)
        if udp is not None and udp.underlayer is ip:
            rec.transport = "udp"
            rec.sport, rec.dport = int(udp.sport), int(udp.dport)
            raw = bytes(udp.original or b"")
            length = int(udp.len) if udp.len is not None else len(raw)
            payload = raw[8:length] if length >= 8 else raw[8:]
            proto = self._protocol(rec.sport, rec.dport, payload)
            if proto is None:
                rec.summary = f"UDP {rec.sport} → {rec.dport} ({len(payload)} bytes, no decoder)"
                return
            rec.protocol = proto
            if length > len(raw) or length < 8:
                rec.malformed.append(
                    f"truncated: captured {max(0, len(raw) - 8)} of {max(0, length - 8)} "
                    "payload bytes"
                )
                rec.summary = f"{_LABEL[proto]} [truncated]"
                return
            self._datagram(proto, payload, rec)
            return
        if tcp is not None and tcp.underlayer is ip:
            rec.transport = "tcp"
            rec.sport, rec.dport = int(tcp.sport), int(tcp.dport)
            raw_tcp = bytes(tcp.original or b"")
            data = raw_tcp[int(tcp.dataofs or 5) * 4 :]
            proto = self._protocol(rec.sport, rec.dport, data)
            flags = str(tcp.flags)
            if proto is None or proto == "ppspp":
                if proto == "ppspp" and data:
                    rec.protocol = proto
                    rec.malformed.append("PPSPP runs over UDP (RFC 7574 §8), not TCP")
                rec.summary = f"TCP {rec.sport} → {rec.dport} [{flags}] ({len(data)} bytes)"
                return
            rec.protocol = proto
            self._segment(proto, tcp, data, rec)
            return
        rec.summary = pkt.summary()

    def _protocol(self, sport: int, dport: int, payload: bytes) -> str | None:
        if self.proto is not None:
            return self.proto
        for port in (dport, sport):
            if port in self.ports:
                return self.ports[port]
        return self._looks_like(payload)

    @staticmethod
    def _looks_like(payload: bytes) -> str | None:
        """The protocol whose magic number starts ``payload`` (PPSPP has none)."""
        if payload[:4] == _PPSPTP_TOKEN:
            return "ppsptp"
        framed = payload[:1] == b"\x80" and payload[8:12] == _RELO_TOKEN
        if payload[:4] == _RELO_TOKEN or framed:
            return "reload"
        return None

    # -- datagrams -------------------------------------------------------------------------

    def _datagram(self, proto: str, payload: bytes, rec: PacketRecord) -> None:
        if proto == "ppspp":
            self._ppspp_datagram(payload, rec)
        elif proto == "ppsptp":
            self._ppsptp_message(payload, rec, whole_datagram=True)
        else:
            self._reload_frame(payload, rec)

    def _ppspp_datagram(self, payload: bytes, rec: PacketRecord) -> None:
        from ppsp.peer import wire
        from ppsp.peer.messages import DecodeError, Handshake

        assert rec.src is not None and rec.dst is not None
        assert rec.sport is not None and rec.dport is not None
        src, dst = (rec.src, rec.sport), (rec.dst, rec.dport)
        channel = int.from_bytes(payload[:4], "big") if len(payload) >= 4 else 0
        ctx = self.channel_contexts.get((rec.dst, rec.dport, channel))
        if ctx is None and channel == 0:  # a handshake initiation: its own options count
            ctx = self.default_context
        if ctx is None:
            ctx = self.pair_contexts.get(frozenset((src, dst)), self.default_context)
        layer = self._layer(lambda d: self._ppspp.dissect_ppspp(d, ctx), payload)
        messages: list[Any] = []
        try:
            messages = wire.parse_datagram(payload, ctx).messages
        except DecodeError as exc:
            rec.malformed.append(str(exc))
            if exc.partial is not None:
                messages = exc.partial.messages
        if not rec.malformed:
            reason = self._ppspp.malformed_reason(layer)
            if reason is not None:
                rec.malformed.append(reason)
        for m in messages:
            if isinstance(m, Handshake) and m.source_channel != 0:
                base = self.pair_contexts.get(frozenset((src, dst)), self.default_context)
                try:
                    announced = base.updated_by(m.options)
                except DecodeError as exc:
                    rec.notes.append(f"channel 0x{m.source_channel:08x}: {exc}")
                    continue
                self.channel_contexts[(rec.src, rec.sport, m.source_channel)] = announced
                self.pair_contexts[frozenset((src, dst))] = announced
        if ctx is not self.default_context:
            rec.notes.append(f"context: {self._ppspp.context_label(ctx)}")
        looks = self._looks_like(payload)
        if looks is not None:
            rec.notes.append(f"looks like {_LABEL[looks]}: wrong port? (--port-map, --proto)")
        try:
            rec.summary = str(layer.mysummary())
        except Exception:  # a hostile datagram may defeat the summary, not the dissection
            rec.summary = f"PPSPP [{len(payload)} bytes]"
        if not isinstance(layer, self._ppspp.PPSPP):
            rec.summary = f"PPSPP [{len(payload)} bytes]"
        if rec.malformed and "[malformed" not in rec.summary:
            rec.summary += " [malformed]"
        rec.packets.append(layer)

    def _ppsptp_message(self, data: bytes, rec: PacketRecord, *, whole_datagram: bool) -> None:
        from ppsp.tracker import binary
        from ppsp.tracker.messages import TrackerError

        error: str | None = None
        try:
            header = binary.peek_header(data)
            if header.length != len(data):
                error = f"length field {header.length}, {'datagram' if whole_datagram else 'frame'} of {len(data)} bytes"
            elif binary.is_last_fragment(header) and header.fragment & binary.OFFSET_MASK == 0:
                binary.parse(data)
            else:
                rec.notes.append(
                    f"PPSP-TP fragment at offset {header.fragment & binary.OFFSET_MASK}"
                    " (reassembled by the receiver, shown raw)"
                )
        except TrackerError as exc:
            error = str(exc)
        if len(data) < binary.HEADER_SIZE:
            error = error or f"{len(data)} bytes, shorter than the 24-byte header"
            layer: Any = self._conf.raw_layer(data)
            summary = f"PPSP-TP [{len(data)} bytes]"
        else:
            layer = self._layer(self._ppsptp.PPSPTP, data)
            try:
                summary = str(layer.mysummary())
            except Exception:  # a hostile message may defeat the summary, not the dissection
                summary = f"PPSP-TP [{len(data)} bytes]"
        if error is not None:
            rec.malformed.append(error)
            summary += " [malformed]"
        rec.summary = f"{rec.summary}; {summary}" if rec.summary else summary
        rec.packets.append(layer)

    def _reload_frame(self, data: bytes, rec: PacketRecord) -> None:
        from reload import wire
        from reload.messages import ReloadDecodeError, UnknownKindError

        error: str | None = None
        message: bytes | None = None
        bare = data[:4] == _RELO_TOKEN  # a message without a framing header
        if bare:
            message = data
        else:
            try:
                frame = wire.decode_framing(data)
                message = getattr(frame, "message", None)
            except ReloadDecodeError as exc:
                error = str(exc)
        if message is not None:
            try:
                fragment = int.from_bytes(message[12:16], "big") if len(message) >= 16 else 0
                if len(message) >= 16 and fragment & 0x40FFFFFF != 0x40000000:
                    wire.decode_forwarding_header(message, self.node_id_length)
                    rec.notes.append(f"RELOAD fragment at offset {fragment & 0xFFFFFF}")
                else:
                    wire.decode_message(message, self.node_id_length, self.data_models)
            except UnknownKindError as exc:
                rec.notes.append(str(exc))
            except ReloadDecodeError as exc:
                error = str(exc)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
        with self._reload.reload_context(self.node_id_length):
            factory = self._reload.RELOAD if bare else self._reload.RELOADFraming
            layer = self._layer(factory, data)
        summary = self._reload_summary(layer)
        if error is not None:
            rec.malformed.append(error)
            summary += " [malformed]"
        rec.summary = f"{rec.summary}; {summary}" if rec.summary else summary
        rec.packets.append(layer)

    def _layer(self, factory: Any, data: bytes) -> Any:
        """The scapy layer ``factory`` makes of ``data``, or raw bytes when scapy cannot even
        read its fixed fields (the verdict comes from the Construct codec anyway)."""
        try:
            return factory(data)
        except Exception:
            return self._conf.raw_layer(data)

    def _reload_summary(self, layer: Any) -> str:
        msg = layer.getlayer(self._reload.RELOAD)
        text = str(layer.mysummary()) if isinstance(layer, self._reload.RELOADFraming) else ""
        if msg is not None:
            try:
                text = f"{text}: {msg.mysummary()}" if text else str(msg.mysummary())
            except Exception as exc:  # a header too short for its own summary
                text += f": RELOAD [{type(exc).__name__}]"
        return text or "RELOAD"

    # -- TCP streams -----------------------------------------------------------------------

    def _segment(self, proto: str, tcp: Any, data: bytes, rec: PacketRecord) -> None:
        assert rec.src is not None and rec.dst is not None
        assert rec.sport is not None and rec.dport is not None
        key = (rec.src, rec.sport, rec.dst, rec.dport)
        stream = self.streams.setdefault(key, _Stream())
        seq = int(tcp.seq)
        if tcp.flags.S:
            stream.expected = (seq + 1) & 0xFFFFFFFF
            stream.buffer.clear()
        if tcp.flags.R:
            self.streams.pop(key, None)
        if not data:
            rec.summary = f"TCP {rec.sport} → {rec.dport} [{tcp.flags}] ({_LABEL[proto]} stream)"
            return
        if stream.expected is None:
            stream.expected = seq
        delta = (seq - stream.expected) & 0xFFFFFFFF
        end = (seq + len(data)) & 0xFFFFFFFF
        if delta >= 0x80000000:  # old data: a retransmission, maybe partly new
            old = (stream.expected - seq) & 0xFFFFFFFF
            if old >= len(data):
                rec.notes.append("TCP retransmission")
                rec.summary = f"TCP {rec.sport} → {rec.dport} retransmission"
                return
            data = data[old:]
        elif delta:
            rec.malformed.append(f"TCP stream gap of {delta} bytes: the capture missed data")
            stream.buffer.clear()
        stream.expected = end
        stream.buffer += data
        done = 0
        for _ in range(1 << 16):  # bounded: at most this many messages in one segment
            size = self._frame_size(proto, bytes(stream.buffer[:24]), rec)
            if size is None:
                if rec.malformed and stream.buffer:
                    stream.buffer.clear()  # no way to find the next message
                break
            if len(stream.buffer) < size:
                break
            piece = bytes(stream.buffer[:size])
            del stream.buffer[:size]
            done += 1
            if proto == "ppsptp":
                self._ppsptp_message(piece, rec, whole_datagram=False)
            else:
                self._reload_frame(piece, rec)
        if len(stream.buffer) > _MAX_STREAM_BUFFER:
            rec.malformed.append(f"more than {_MAX_STREAM_BUFFER} bytes without a whole message")
            stream.buffer.clear()
        if not done and not rec.malformed:
            rec.notes.append(f"TCP segment of a reassembled {_LABEL[proto]} message")
            rec.summary = (
                f"TCP {rec.sport} → {rec.dport} [{tcp.flags}] segment of a {_LABEL[proto]}"
                f" message ({len(stream.buffer)} bytes buffered)"
            )

    def _frame_size(self, proto: str, head: bytes, rec: PacketRecord) -> int | None:
        """Bytes the next message of a stream takes; None until known (or when the stream is
        broken, which is then reported)."""
        if proto == "ppsptp":
            if len(head) < 4:
                return None
            if head[:4] != _PPSPTP_TOKEN:
                rec.malformed.append(f"PPSP-TP stream: bad token {head[:4].hex()}")
                return None
            if len(head) < 24:
                return None
            length = int.from_bytes(head[20:24], "big")
            if length < 24 or length > 16 << 20:
                rec.malformed.append(f"PPSP-TP stream: bad message length {length}")
                return None
            return length
        if not head:
            return None
        if head[0] == 129:
            return 9
        if head[0] == 128:
            return None if len(head) < 8 else 8 + int.from_bytes(head[5:8], "big")
        rec.malformed.append(f"RELOAD stream: unknown framing type {head[0]} (§6.6.2)")
        return None

    # -- reporting -------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "packets": dict(self.counts),
            "malformed": self.malformed,
            "problems": list(self.problems),
        }


def dissect_file(
    path: str | Path,
    *,
    proto: str | None = None,
    port_map: Mapping[int, str] | None = None,
    node_id_length: int = 16,
) -> tuple[list[PacketRecord], dict[str, Any]]:
    """Dissect a whole capture: the records and the summary. Raises :class:`DissectError`."""
    dissector = Dissector(proto=proto, port_map=port_map, node_id_length=node_id_length)
    records = []
    for item in read_frames(path):
        if isinstance(item, str):
            dissector.problems.append(item)
            break
        records.append(dissector.dissect(item))
    return records, dissector.summary()


# ---------------------------------------------------------------------------------------------
# Output and the command line
# ---------------------------------------------------------------------------------------------


def _endpoint(host: str | None, port: int | None) -> str:
    if host is None:
        return "?"
    if port is None:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _text(rec: PacketRecord) -> list[str]:
    label = _LABEL.get(rec.protocol, rec.protocol.upper() if rec.protocol != "other" else "-")
    head = (
        f"Frame {rec.frame}: {rec.relative_time:.6f} s  {_endpoint(rec.src, rec.sport)} → "
        f"{_endpoint(rec.dst, rec.dport)}  {(rec.transport or '').upper() or '-'}  {label}  "
        f"{rec.length} bytes"
    )
    lines = [head, f"    {rec.summary}"]
    for reason in rec.malformed:
        lines.append(f"    [Malformed: {reason}]")
    for note in rec.notes:
        lines.append(f"    [{note}]")
    for layer in rec.packets:
        lines.extend(text_tree(layer, 1))
    return lines


def _summary_text(summary: Mapping[str, Any]) -> list[str]:
    counts = summary["packets"]
    parts = ", ".join(f"{_LABEL.get(p, p)} {counts.get(p, 0)}" for p in (*PROTOCOLS, "other"))
    lines = [f"{summary['frames']} frames: {parts}; malformed {summary['malformed']}"]
    lines.extend(f"note: {p}" for p in summary["problems"])
    return lines


def _port_map(values: list[str]) -> dict[int, str]:
    out: dict[int, str] = {}
    for item in values:
        proto, sep, port = item.partition("=")
        proto = proto.strip().lower()
        if not sep or proto not in PROTOCOLS or not port.strip().isdigit():
            raise ValueError(
                f"--port-map wants PROTO=PORT with PROTO one of {', '.join(PROTOCOLS)}: {item!r}"
            )
        number = int(port)
        if not 0 < number < 65536:
            raise ValueError(f"--port-map: port {number} out of range")
        out[number] = proto
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``p2pcdn dissect`` (imports nothing heavy)."""
    parser.add_argument("file", metavar="FILE.pcap", help="a classic pcap or pcapng capture")
    parser.add_argument(
        "--json", action="store_true", help="one JSON object per frame, then a summary object"
    )
    parser.add_argument(
        "--proto",
        choices=PROTOCOLS,
        help="decode every UDP/TCP payload as this protocol (non-default ports)",
    )
    parser.add_argument(
        "--port-map",
        action="append",
        default=[],
        metavar="PROTO=PORT",
        help="also decode PORT as PROTO (repeatable); defaults: ppspp=7777 ppsptp=7846 reload=6084",
    )
    parser.add_argument(
        "--node-id-length",
        type=int,
        default=16,
        choices=range(16, 21),
        metavar="N",
        help="RELOAD Node-ID length of the overlay (16-20, default 16)",
    )


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``p2pcdn dissect``: 0 after a dissection (malformed packets included), 1 when the file
    cannot be read at all, 2 for a bad ``--port-map``."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        port_map = _port_map(args.port_map)
    except ValueError as exc:
        print(f"p2pcdn dissect: error: {exc}", file=err)
        return 2
    try:
        dissector = Dissector(
            proto=args.proto, port_map=port_map, node_id_length=args.node_id_length
        )
        frames = read_frames(args.file)
        for item in frames:
            if isinstance(item, str):
                dissector.problems.append(item)
                break
            rec = dissector.dissect(item)
            if args.json:
                out.write(json.dumps(rec.as_json(), ensure_ascii=False) + "\n")
            else:
                out.write("\n".join(_text(rec)) + "\n\n")
    except DissectError as exc:
        print(f"p2pcdn dissect: error: {exc}", file=err)
        return 1
    except BrokenPipeError:
        return 0
    summary = dissector.summary()
    try:
        if args.json:
            out.write(json.dumps({"summary": summary}) + "\n")
        else:
            out.write("\n".join(_summary_text(summary)) + "\n")
        out.flush()
    except BrokenPipeError:
        return 0
    return 0
