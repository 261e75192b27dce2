"""Classic pcap reading and writing for UDP traffic, in pure stdlib (no scapy, no tcpdump).

:func:`read_pcap` yields the UDP datagrams of a classic libpcap file (both byte orders,
microsecond and nanosecond timestamps) captured on Ethernet, BSD loopback (Null), raw IP or
Linux cooked (SLL) links, over IPv4 or IPv6. Everything else (ARP, TCP, ICMP, IP fragments,
datagrams cut short by the snapshot length) is skipped: the conformance tests want whole
PPSPP datagrams and nothing else. :func:`write_pcap` writes datagrams back as a raw-IP
capture that Wireshark and tshark open, with correct IP and UDP headers and checksums.

pcapng is not supported (a :class:`PcapError` says so).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "LINKTYPE_ETHERNET",
    "LINKTYPE_IPV4",
    "LINKTYPE_IPV6",
    "LINKTYPE_LINUX_SLL",
    "LINKTYPE_NULL",
    "LINKTYPE_RAW",
    "PcapError",
    "PcapPacket",
    "read_pcap",
    "write_pcap",
]

# Link-layer header types (tcpdump.org linktypes registry).
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229

_MAGIC_USEC = 0xA1B2C3D4
_MAGIC_NSEC = 0xA1B23C4D
_PCAPNG_MAGIC = 0x0A0D0D0A

_ETHERTYPE_IPV4 = 0x0800
_ETHERTYPE_IPV6 = 0x86DD
_ETHERTYPE_VLAN = (0x8100, 0x88A8, 0x9100)

_IPPROTO_UDP = 17
# IPv6 extension headers that can precede UDP and share the (next, length in 8-octet units)
# layout (RFC 8200 §4): hop-by-hop, routing, destination options.
_IPV6_EXT_HEADERS = (0, 43, 60)
_IPV6_FRAGMENT = 44

_DEFAULT_SNAPLEN = 262144
# No link type captures frames this big; a larger length is a corrupt header, not a packet.
_MAX_RECORD = 1 << 24


class PcapError(ValueError):
    """A file that is not a classic pcap capture, or one cut short in the middle of a record."""


@dataclass(slots=True)
class PcapPacket:
    """One UDP datagram of a capture: when, between which endpoints, and its payload."""

    timestamp: float
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


def read_pcap(path: str | Path) -> Iterator[PcapPacket]:
    """Yield the UDP datagrams of the classic pcap file at ``path``, in capture order.

    Raises :class:`PcapError` for a bad header, an unsupported link type or a truncated
    file (the packets before the damage have been yielded by then).
    """
    with open(path, "rb") as f:
        yield from _read_stream(f)


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise PcapError(f"truncated pcap file: {what} has {len(data)} of {n} bytes")
    return data


def _read_stream(f: BinaryIO) -> Iterator[PcapPacket]:
    header = f.read(24)
    if len(header) < 4:
        raise PcapError("not a pcap file: shorter than the magic number")
    for order in ("<", ">"):
        (magic,) = struct.unpack(order + "I", header[:4])
        if magic in (_MAGIC_USEC, _MAGIC_NSEC):
            break
    else:
        if struct.unpack("<I", header[:4])[0] == _PCAPNG_MAGIC:
            raise PcapError("pcapng files are not supported; convert with editcap -F pcap")
        raise PcapError(f"not a pcap file: magic {header[:4].hex()}")
    if len(header) != 24:
        raise PcapError("truncated pcap file: global header")
    ts_divisor = 1e9 if magic == _MAGIC_NSEC else 1e6
    _, _major, _minor, _zone, _sigfigs, _snaplen, linktype = struct.unpack(
        order + "IHHiIII", header
    )
    # The upper bits of the link-type field carry FCS information (pcap-savefile(5)).
    linktype &= 0x0FFFFFFF
    decode_link = _LINK_DECODERS.get(linktype)
    if decode_link is None:
        raise PcapError(f"unsupported pcap link type {linktype}")
    record = struct.Struct(order + "IIII")
    while True:
        rec = f.read(16)
        if not rec:
            return
        if len(rec) != 16:
            raise PcapError(f"truncated pcap file: record header has {len(rec)} of 16 bytes")
        ts_sec, ts_frac, incl_len, _orig_len = record.unpack(rec)
        if incl_len > _MAX_RECORD:
            raise PcapError(f"corrupt pcap file: record of {incl_len} bytes")
        frame = _read_exact(f, incl_len, "packet data")
        found = decode_link(frame)
        if found is None:
            continue
        src, sport, dst, dport, payload = found
        yield PcapPacket(ts_sec + ts_frac / ts_divisor, src, sport, dst, dport, payload)


_Found = tuple[str, int, str, int, bytes] | None


def _link_ethernet(frame: bytes) -> _Found:
    if len(frame) < 14:
        return None
    off = 12
    (ethertype,) = struct.unpack_from(">H", frame, off)
    while ethertype in _ETHERTYPE_VLAN and len(frame) >= off + 6:
        off += 4
        (ethertype,) = struct.unpack_from(">H", frame, off)
    return _network(ethertype, frame, off + 2)


def _link_null(frame: bytes) -> _Found:
    # The 4-byte address family is in the capturing host's byte order and AF_INET6 differs
    # between BSDs (24, 28, 30), so the IP version nibble is the reliable discriminator.
    return _link_raw(frame[4:]) if len(frame) > 4 else None


def _link_raw(frame: bytes) -> _Found:
    if not frame:
        return None
    version = frame[0] >> 4
    if version == 4:
        return _ipv4(frame, 0)
    if version == 6:
        return _ipv6(frame, 0)
    return None


def _link_sll(frame: bytes) -> _Found:
    if len(frame) < 16:
        return None
    (protocol,) = struct.unpack_from(">H", frame, 14)
    return _network(protocol, frame, 16)


_LINK_DECODERS = {
    LINKTYPE_NULL: _link_null,
    LINKTYPE_ETHERNET: _link_ethernet,
    LINKTYPE_RAW: _link_raw,
    LINKTYPE_LINUX_SLL: _link_sll,
    LINKTYPE_IPV4: _link_raw,
    LINKTYPE_IPV6: _link_raw,
}


def _network(ethertype: int, frame: bytes, off: int) -> _Found:
    if ethertype == _ETHERTYPE_IPV4:
        return _ipv4(frame, off)
    if ethertype == _ETHERTYPE_IPV6:
        return _ipv6(frame, off)
    return None


def _ipv4(frame: bytes, off: int) -> _Found:
    if len(frame) < off + 20 or frame[off] >> 4 != 4:
        return None
    ihl = (frame[off] & 0x0F) * 4
    total_len, frag, proto = struct.unpack_from(">H2xHxB", frame, off + 2)
    # A fragment (MF set or non-zero offset) holds only part of a UDP datagram.
    if proto != _IPPROTO_UDP or ihl < 20 or frag & 0x3FFF:
        return None
    end = off + total_len if total_len else len(frame)
    src = str(ipaddress.IPv4Address(frame[off + 12 : off + 16]))
    dst = str(ipaddress.IPv4Address(frame[off + 16 : off + 20]))
    return _udp(frame, off + ihl, end, src, dst)


def _ipv6(frame: bytes, off: int) -> _Found:
    if len(frame) < off + 40 or frame[off] >> 4 != 6:
        return None
    (payload_len,) = struct.unpack_from(">H", frame, off + 4)
    nxt = frame[off + 6]
    src = str(ipaddress.IPv6Address(frame[off + 8 : off + 24]))
    dst = str(ipaddress.IPv6Address(frame[off + 24 : off + 40]))
    end = off + 40 + payload_len
    pos = off + 40
    while nxt in _IPV6_EXT_HEADERS:
        if len(frame) < pos + 2:
            return None
        nxt, hdr_len = frame[pos], (frame[pos + 1] + 1) * 8
        pos += hdr_len
    if nxt != _IPPROTO_UDP:  # includes _IPV6_FRAGMENT: fragments are skipped
        return None
    return _udp(frame, pos, end, src, dst)


def _udp(frame: bytes, off: int, ip_end: int, src: str, dst: str) -> _Found:
    if len(frame) < off + 8:
        return None
    sport, dport, length = struct.unpack_from(">HHH", frame, off)
    if length < 8 or off + length > ip_end:
        return None
    if off + length > len(frame):
        return None  # cut short by the snapshot length: not a whole datagram
    return src, sport, dst, dport, frame[off + 8 : off + length]


def write_pcap(
    path: str | Path,
    packets: Iterable[PcapPacket],
    *,
    linktype: int = LINKTYPE_IPV4,
) -> None:
    """Write ``packets`` as a classic little-endian microsecond pcap file of raw IP frames.

    ``linktype`` is :data:`LINKTYPE_IPV4` (228, the default), :data:`LINKTYPE_IPV6` (229) or
    :data:`LINKTYPE_RAW` (101, either version). IP and UDP checksums are computed. A packet
    whose addresses do not fit the link type, or an out-of-range port or payload size, raises
    :class:`ValueError`.
    """
    if linktype not in (LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_RAW):
        raise ValueError(f"write_pcap writes raw IP link types only, not {linktype}")
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", _MAGIC_USEC, 2, 4, 0, 0, _DEFAULT_SNAPLEN, linktype))
        for ident, pkt in enumerate(packets):
            frame = _ip_frame(pkt, linktype, ident & 0xFFFF)
            sec = int(pkt.timestamp)
            usec = round((pkt.timestamp - sec) * 1e6)
            if usec >= 1_000_000:
                sec, usec = sec + 1, usec - 1_000_000
            f.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)))
            f.write(frame)


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): ones' complement of the ones' complement sum."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ip_frame(pkt: PcapPacket, linktype: int, ident: int) -> bytes:
    src = ipaddress.ip_address(pkt.src)
    dst = ipaddress.ip_address(pkt.dst)
    if src.version != dst.version:
        raise ValueError(f"mixed address families: {pkt.src} -> {pkt.dst}")
    allowed = {LINKTYPE_IPV4: (4,), LINKTYPE_IPV6: (6,), LINKTYPE_RAW: (4, 6)}[linktype]
    if src.version not in allowed:
        raise ValueError(f"IPv{src.version} packet on link type {linktype}")
    for port in (pkt.sport, pkt.dport):
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port {port} out of range")
    udp_len = 8 + len(pkt.payload)
    limit = 0xFFFF - (20 if src.version == 4 else 0)
    if udp_len > limit:
        raise ValueError(f"UDP payload of {len(pkt.payload)} bytes does not fit one datagram")
    # The UDP checksum covers a pseudo-header (RFC 768; RFC 8200 §8.1 for IPv6).
    if src.version == 4:
        pseudo = src.packed + dst.packed + struct.pack(">xBH", _IPPROTO_UDP, udp_len)
    else:
        pseudo = src.packed + dst.packed + struct.pack(">I3xB", udp_len, _IPPROTO_UDP)
    udp = struct.pack(">HHHH", pkt.sport, pkt.dport, udp_len, 0) + pkt.payload
    csum = _checksum(pseudo + udp) or 0xFFFF  # 0 means "no checksum" on the wire
    udp = udp[:6] + struct.pack(">H", csum) + udp[8:]
    if src.version == 4:
        ip = struct.pack(
            ">BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, ident, 0x4000, 64, _IPPROTO_UDP, 0,
            src.packed, dst.packed,
        )  # fmt: skip
        ip = ip[:10] + struct.pack(">H", _checksum(ip)) + ip[12:]
    else:
        ip = struct.pack(">IHBB16s16s", 6 << 28, udp_len, _IPPROTO_UDP, 64, src.packed, dst.packed)
    return ip + udp
