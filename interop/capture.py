"""``--pcap PATH``: what a daemon sends and receives, written as a pcap file as it happens.

Every daemon (seed/get, tracker, overlay, cacher, CSC, source) accepts ``--pcap PATH`` and
records its PPSPP datagrams, PPSP-TP messages (UDP datagrams or TCP stream bytes) and RELOAD
frames, so that tshark and ``p2pcdn dissect`` show a session as it was. RELOAD runs over DTLS
or TLS, whose bytes on the wire are ciphertext; we record the plaintext frames instead (the
framing header of RFC 6940 §6.6.3 and the message it carries), on the link's real addresses
and ports, as if the link were unencrypted — what a key-logging capture would show.

The file is a classic pcap of raw IP frames (link type 101) with correct IPv4/IPv6, UDP and
TCP headers and checksums; a TCP stream's bytes get consecutive sequence numbers per
direction so the reader's reassembly works. Pure standard library: daemons import this module,
never scapy (DESIGN §3). The file is flushed every :data:`FLUSH_EVERY` packets and on close,
and stops growing at ``max_bytes`` (a warning is logged once).
"""

from __future__ import annotations

import ipaddress
import logging
import struct
import time
from pathlib import Path
from typing import Any, BinaryIO, Final

log = logging.getLogger(__name__)

LINKTYPE_RAW: Final = 101
_MAGIC_USEC: Final = 0xA1B2C3D4
_SNAPLEN: Final = 262144
_IPPROTO_TCP: Final = 6
_IPPROTO_UDP: Final = 17
_TCP_ACK_PSH: Final = 0x18
#: Flush to disk after this many packets (and on close), so a killed daemon loses little.
FLUSH_EVERY: Final = 64
#: Default bound on the capture file: 1 GiB.
DEFAULT_MAX_BYTES: Final = 1 << 30
#: Largest payload put in one emulated IP packet (stream bytes are cut into such segments).
_MAX_SEGMENT: Final = 65000

Address = tuple[str, int]


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _host(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def ip_packet(src: Address, dst: Address, protocol: int, segment: bytes, ident: int) -> bytes:
    """An IPv4 or IPv6 packet around a transport ``segment`` whose checksum field (offset 6
    for UDP, 16 for TCP) is filled in here over the pseudo-header."""
    s, d = _host(src[0]), _host(dst[0])
    if s.version != d.version:  # a dual-stack socket talking to a mapped address: show v6
        s = s if s.version == 6 else ipaddress.IPv6Address(f"::ffff:{s}")
        d = d if d.version == 6 else ipaddress.IPv6Address(f"::ffff:{d}")
    length = len(segment)
    if s.version == 4:
        pseudo = s.packed + d.packed + struct.pack(">xBH", protocol, length)
    else:
        pseudo = s.packed + d.packed + struct.pack(">I3xB", length, protocol)
    offset = 6 if protocol == _IPPROTO_UDP else 16
    csum = _checksum(pseudo + segment)
    if protocol == _IPPROTO_UDP and csum == 0:
        csum = 0xFFFF
    segment = segment[:offset] + struct.pack(">H", csum) + segment[offset + 2 :]
    if s.version == 4:
        header = struct.pack(
            ">BBHHHBBH4s4s", 0x45, 0, 20 + length, ident & 0xFFFF, 0x4000, 64, protocol, 0,
            s.packed, d.packed,
        )  # fmt: skip
        header = header[:10] + struct.pack(">H", _checksum(header)) + header[12:]
    else:
        header = struct.pack(">IHBB16s16s", 6 << 28, length, protocol, 64, s.packed, d.packed)
    return header + segment


class PacketCapture:
    """An open pcap file that daemons append packets to."""

    def __init__(self, path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._file: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115 (closed in close())
        self._file.write(struct.pack("<IHHiIII", _MAGIC_USEC, 2, 4, 0, 0, _SNAPLEN, LINKTYPE_RAW))
        self.size = 24
        self.packets = 0
        self.truncated = False
        self._ident = 0
        self._unflushed = 0
        #: Next TCP sequence number per direction (src, dst).
        self._seq: dict[tuple[Address, Address], int] = {}

    def _write(self, packet: bytes, now: float | None) -> None:
        f = self._file
        if f is None:
            return
        if self.size + 16 + len(packet) > self.max_bytes:
            if not self.truncated:
                self.truncated = True
                log.warning(
                    "capture %s reached %d bytes: not recording more", self.path, self.max_bytes
                )
            return
        t = time.time() if now is None else now
        sec = int(t)
        usec = min(int((t - sec) * 1e6), 999_999)
        f.write(struct.pack("<IIII", sec, usec, len(packet), len(packet)))
        f.write(packet)
        self.size += 16 + len(packet)
        self.packets += 1
        self._unflushed += 1
        if self._unflushed >= FLUSH_EVERY:
            f.flush()
            self._unflushed = 0

    def udp(self, src: Address, dst: Address, payload: bytes, now: float | None = None) -> None:
        """Record one UDP datagram."""
        try:
            if len(payload) > 0xFFFF - 8 - 40:
                payload = payload[: 0xFFFF - 8 - 40]
            segment = struct.pack(">HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
            self._ident += 1
            self._write(ip_packet(src, dst, _IPPROTO_UDP, segment, self._ident), now)
        except (ValueError, OSError, struct.error) as exc:
            log.debug("capture: cannot record a datagram %s -> %s: %s", src, dst, exc)

    def tcp(self, src: Address, dst: Address, data: bytes, now: float | None = None) -> None:
        """Record stream bytes from ``src`` to ``dst`` as TCP segments (sequence numbers
        continue per direction; the acknowledgement is the other direction's next byte)."""
        try:
            for start in range(0, len(data), _MAX_SEGMENT):
                piece = data[start : start + _MAX_SEGMENT]
                seq = self._seq.get((src, dst), 1)
                ack = self._seq.get((dst, src), 1)
                segment = (
                    struct.pack(">HHIIBBHHH", src[1], dst[1], seq & 0xFFFFFFFF,
                                ack & 0xFFFFFFFF, 5 << 4, _TCP_ACK_PSH, 65535, 0, 0)
                    + piece
                )  # fmt: skip
                if len(self._seq) < 65536 or (src, dst) in self._seq:
                    self._seq[(src, dst)] = seq + len(piece)
                self._ident += 1
                self._write(ip_packet(src, dst, _IPPROTO_TCP, segment, self._ident), now)
        except (ValueError, OSError, struct.error) as exc:
            log.debug("capture: cannot record stream bytes %s -> %s: %s", src, dst, exc)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
            self._unflushed = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


_active: PacketCapture | None = None


def start(path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> PacketCapture:
    """Open the process's capture (``--pcap PATH``); every transport records from now on."""
    global _active
    stop()
    _active = PacketCapture(path, max_bytes=max_bytes)
    log.info("recording packets to %s", path)
    return _active


def active() -> PacketCapture | None:
    """The process's capture, or None (the common case: one attribute read per packet)."""
    return _active


def stop() -> None:
    """Close the process's capture, if any."""
    global _active
    if _active is not None:
        _active.close()
        _active = None


def _address_of(transport: Any, name: str) -> Address | None:
    info = transport.get_extra_info(name)
    return (str(info[0]), int(info[1])) if info else None


class _TappedDatagramTransport:
    """Records every datagram sent through the wrapped transport."""

    def __init__(self, transport: Any, cap: PacketCapture) -> None:
        self._transport = transport
        self._cap = cap
        self._local = _address_of(transport, "sockname") or ("0.0.0.0", 0)

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self._transport.sendto(data, addr)
        dst = (str(addr[0]), int(addr[1])) if addr else _address_of(self._transport, "peername")
        if dst is not None:
            self._cap.udp(self._local, dst, bytes(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _TappedStreamTransport:
    """Records every byte written to the wrapped stream transport."""

    def __init__(self, transport: Any, cap: PacketCapture) -> None:
        self._transport = transport
        self._cap = cap
        self._local = _address_of(transport, "sockname") or ("0.0.0.0", 0)
        self._peer = _address_of(transport, "peername") or ("0.0.0.0", 0)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._transport.write(data)
        self._cap.tcp(self._local, self._peer, bytes(data))

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def tap_datagram(transport: Any) -> Any:
    """``transport`` itself without a capture (no cost), else one that records sends."""
    cap = _active
    return transport if cap is None else _TappedDatagramTransport(transport, cap)


def tap_stream(transport: Any) -> Any:
    """Like :func:`tap_datagram` for a stream transport."""
    cap = _active
    return transport if cap is None else _TappedStreamTransport(transport, cap)


def received_datagram(transport: Any, data: bytes, addr: Any) -> None:
    """Record a datagram received on ``transport`` from ``addr`` (when capturing)."""
    cap = _active
    if cap is not None and addr:
        local = _address_of(transport, "sockname") or ("0.0.0.0", 0)
        cap.udp((str(addr[0]), int(addr[1])), local, bytes(data))


def received_stream(transport: Any, data: bytes) -> None:
    """Record stream bytes received on ``transport`` (when capturing)."""
    cap = _active
    if cap is not None:
        local = _address_of(transport, "sockname") or ("0.0.0.0", 0)
        peer = _address_of(transport, "peername") or ("0.0.0.0", 0)
        cap.tcp(peer, local, bytes(data))


def sent_stream(transport: Any, data: bytes) -> None:
    """Record stream bytes written to ``transport`` by code that writes through an
    ``asyncio.StreamWriter`` (which cannot be wrapped), when capturing."""
    cap = _active
    if cap is not None:
        local = _address_of(transport, "sockname") or ("0.0.0.0", 0)
        peer = _address_of(transport, "peername") or ("0.0.0.0", 0)
        cap.tcp(local, peer, bytes(data))
