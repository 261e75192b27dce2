"""scapy layers for PPSPP (RFC 7574 §8), 32-bit chunk ranges (the default CAM, §7.8).

A first cut of the interop layers (the full set, with every CAM, the handshake options and
contexts taken from the channel's handshake, arrives with the interop issue): the datagram
header and the data-path messages DATA, ACK, HAVE, REQUEST, CANCEL, INTEGRITY (SHA-256 by
default, see :data:`INTEGRITY_HASH_SIZE`), CHOKE and UNCHOKE. scapy is slow (DESIGN §3: ~1 s
import, ~145 µs a datagram) and GPL-2.0: only ``interop/`` imports it, daemons never do.
"""

from __future__ import annotations

from typing import Any

from scapy.fields import (
    ByteEnumField,
    IntField,
    LongField,
    PacketListField,
    StrField,
    StrFixedLenField,
    XIntField,
)
from scapy.packet import Packet, Raw

#: Digest size the INTEGRITY layer reads: SHA-256, RFC 7574's default Merkle hash (§7.6).
INTEGRITY_HASH_SIZE = 32

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


class _Message(Packet):
    """A message of known length: what follows it is the next message, not its payload."""

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s


class PPSPPData(Packet):
    """DATA (§8.6): takes the rest of the datagram (one DATA, at the tail)."""

    name = "PPSPP DATA"
    fields_desc = [
        ByteEnumField("type", 1, MESSAGE_TYPES),
        IntField("start", 0),
        IntField("end", 0),
        LongField("timestamp", 0),
        StrField("chunk", b""),
    ]

    def mysummary(self) -> str:
        return str(self.sprintf("DATA %start%-%end% (%s bytes)") % len(self.chunk))


class PPSPPAck(_Message):
    name = "PPSPP ACK"
    fields_desc = [
        ByteEnumField("type", 2, MESSAGE_TYPES),
        IntField("start", 0),
        IntField("end", 0),
        LongField("delay_sample", 0),
    ]


class PPSPPChunkSpec(_Message):
    """HAVE, REQUEST or CANCEL: a type and a chunk range (§8.5, §8.10, §8.11)."""

    name = "PPSPP chunk message"
    fields_desc = [
        ByteEnumField("type", 3, MESSAGE_TYPES),
        IntField("start", 0),
        IntField("end", 0),
    ]


class PPSPPIntegrity(_Message):
    name = "PPSPP INTEGRITY"
    fields_desc = [
        ByteEnumField("type", 4, MESSAGE_TYPES),
        IntField("start", 0),
        IntField("end", 0),
        StrFixedLenField("hash", b"", length_from=lambda _pkt: INTEGRITY_HASH_SIZE),
    ]


class PPSPPBare(_Message):
    """CHOKE, UNCHOKE, PEX_REQ: the type alone (§8.12, §8.13)."""

    name = "PPSPP message"
    fields_desc = [ByteEnumField("type", 10, MESSAGE_TYPES)]


_BY_TYPE: dict[int, type[Packet]] = {
    1: PPSPPData,
    2: PPSPPAck,
    3: PPSPPChunkSpec,
    4: PPSPPIntegrity,
    6: PPSPPBare,
    8: PPSPPChunkSpec,
    9: PPSPPChunkSpec,
    10: PPSPPBare,
    11: PPSPPBare,
}


def _guess_message(s: bytes, *_args: Any, **_kwargs: Any) -> Packet:
    cls = _BY_TYPE.get(s[0], Raw) if s else Raw
    return cls(s)


class PPSPP(Packet):
    """A PPSPP datagram (§8.3): the destination channel ID, then the messages."""

    name = "PPSPP"
    fields_desc = [
        XIntField("channel", 0),
        PacketListField("messages", [], _guess_message),
    ]

    def mysummary(self) -> str:
        kinds = ", ".join(
            MESSAGE_TYPES.get(m.type, "?") for m in self.messages if hasattr(m, "type")
        )
        return f"PPSPP channel {self.channel:08x}: {kinds or 'keep-alive'}"
