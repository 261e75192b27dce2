"""The binary encoding of PPSP-TP (DESIGN §4): draft-gu-02's header, TLV bodies, fragmentation.

RFC 7846 defines PPSP-TP over HTTP with JSON only. This module is the normative definition of
our second encoding of the same message model (:mod:`ppsp.tracker.messages`), for UDP and
TCP, written up in ``docs/ppsp-tp-binary.md``:

- every message starts with the 24-byte common header of draft-gu-ppsp-tracker-protocol-02
  §5.2.1 (token, version, method, 64-bit transaction ID, RELOAD-style fragment field, length);
- the body is a sequence of TLVs (type, length, value). Peer IDs and swarm IDs are
  variable-length, because a SHA-256 root hash does not fit gu-02's 16-byte swarm ID;
- a message longer than the path allows is fragmented as gu-02 §5.2.3 (borrowed from RELOAD,
  RFC 6940 §6.7) describes, and :class:`Reassembler` puts it back together.

The Construct definitions below (:data:`HEADER`, :data:`MESSAGE` and the value layouts) are
the normative wire format, meant to be read next to the document. :func:`build` and
:func:`parse` run them. :func:`encode` and :func:`decode`, which everything else uses, are a
hand-written ``struct`` codec of the same format (DESIGN §3: interpreted Construct is far too
slow for 20,000 FIND/s or a 10,000-swarm batch in 100 ms); ``tests/test_tracker_binary.py``
proves the two byte-equal with hypothesis, errors included. Both share every check that is not
about byte layout (IDs, enums, counts, required and repeated TLVs), so they cannot drift there.

A tracker answers the same few peers over and over, so the fast codec also remembers: IDs and
addresses by their (immutable) strings, always; whole PEER_INFO TLVs by object identity
(:class:`EncodeMemo`) and whole requests by their bytes (:class:`DecodeMemo`) when a caller
that never mutates those objects asks for it. Either way the bytes and messages are the same
(``tests/test_tracker_perf.py``).

DESIGN §3 Construct traps: every Switch ends in ``Error`` except that a TLV type with the
optional bit set is skipped (§"TLV format" of the document says so); each sequence of TLVs is
a ``GreedyRange`` followed by ``Terminated`` (or sits in an :class:`Exact` value), so a
truncated tail is an error, never silently dropped; nothing here is compiled.

Every decoding failure raises :class:`~ppsp.tracker.messages.TrackerError` whose ``code`` is
the RFC 7846 error code to answer with: 02 Unsupported Version Number for a version other than
1, 01 Bad Request for anything else.
"""

from __future__ import annotations

import bisect
import enum
import ipaddress
import math
import re
import struct
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from construct import (
    Array,
    Bytes,
    Const,
    Construct,
    ConstructError,
    Error,
    FixedSized,
    Float64b,
    GreedyBytes,
    GreedyRange,
    If,
    IfThenElse,
    Int8ub,
    Int16ub,
    Int32ub,
    Int64ub,
    Prefixed,
    Struct,
    Switch,
    Terminated,
    TerminatedError,
    this,
)
from construct.core import BytesIOWithOffsets

from ppsp.tracker.messages import (
    VERSION,
    Action,
    AddressType,
    AvailabilityDelta,
    Connect,
    ErrorCode,
    Find,
    GlobalInfoMessage,
    HintUnit,
    Message,
    PeerAddress,
    PeerInfo,
    PeerMode,
    PeerNum,
    PushHint,
    PushHintMessage,
    Response,
    ResponseType,
    Role,
    StatQuery,
    StatReport,
    StreamStats,
    SwarmAction,
    SwarmAvailability,
    SwarmPopularity,
    SwarmResult,
    TrackerError,
)

__all__ = [
    "DEFAULT_MAX_FRAGMENT",
    "ERROR_METHODS",
    "HEADER",
    "HEADER_SIZE",
    "HEADER_STRUCT",
    "MAX_MESSAGE",
    "MESSAGE",
    "RESPONSE_ERRORS",
    "TOKEN",
    "UNFRAGMENTED",
    "DecodeMemo",
    "EncodeMemo",
    "Header",
    "Method",
    "Reassembler",
    "TlvType",
    "build",
    "decode",
    "encode",
    "error_response",
    "is_last_fragment",
    "is_request",
    "parse",
    "peek_header",
]


# ---------------------------------------------------------------------------------------------
# Constants and limits
# ---------------------------------------------------------------------------------------------

#: gu-02 §5.2.1: "PPSt" with the high bit of the first byte set.
TOKEN: Final = 0xD0505374
#: gu-02 §5.2.1 writes the version as fixed point 0.1-25.4; RELOAD's x10 rule makes RFC 7846's
#: version 1 the byte 0x01 (DESIGN §4).
WIRE_VERSION: Final = VERSION
HEADER_SIZE: Final = 24
#: Fragment field (RFC 6940 §6.7, borrowed by gu-02 §5.2.3): bit 31 always set, bit 30 set on
#: the last (or only) fragment, bits 29-24 reserved, bits 23-0 the byte offset of the fragment
#: within the body.
FRAGMENT_BIT: Final = 0x80000000
LAST_FRAGMENT: Final = 0x40000000
OFFSET_MASK: Final = 0x00FFFFFF
UNFRAGMENTED: Final = FRAGMENT_BIT | LAST_FRAGMENT
#: Largest message, header included, whole (TCP frame) or reassembled; the 24-bit offset of
#: the fragment field limits a fragmented body to about this much anyway.
MAX_MESSAGE: Final = 16 * 1024 * 1024
#: A UDP fragment fits a 1500-byte Ethernet MTU with IPv6 and UDP headers (gu-02 §5.2.3 wants
#: fragments no larger than the PMTU minus 32 bytes).
DEFAULT_MAX_FRAGMENT: Final = 1400

#: Bounds on what one message may carry (every network input is hostile). The encoder
#: enforces them too, so that we never send what a peer of ours would refuse.
MAX_ID_LENGTH: Final = 1024  # bytes of one peer ID or swarm ID on the wire
MAX_TEXT_LENGTH: Final = 255  # bytes of one UTF-8 text (area, ASN, ...)
MAX_RANGES: Final = 0x7FFF  # chunk ranges in one list: the 15-bit count
MAX_ENTRIES: Final = 100_000  # swarm-scoped TLVs of one type in one message
MAX_PEERS: Final = 1024  # PEER_INFO TLVs in one SWARM_RESULT
MAX_ADDRESSES: Final = 16  # PEER_ADDR TLVs of one peer
MAX_UNKNOWN_TLVS: Final = 64  # skipped optional TLVs in one TLV sequence

#: TLV type bit 15: a receiver that does not know the type skips it (set) or refuses the whole
#: message (clear) — STUN's comprehension-optional/required split, RFC 8489 §14.
OPTIONAL: Final = 0x8000


class Method(enum.IntEnum):
    """The method field (gu-02 §5.2.1.1 Tables 4 and 5): first byte 0x08 for requests, 0x88
    for responses. 0x0820-0x082F are our tracker-initiated requests (DESIGN §4); the other
    gu-02 requests (DISCONNECT 0x0801, JOIN 0x0802, JOIN_CHUNK 0x0803, LEAVE 0x0804,
    KEEPALIVE 0x0806) have no RFC 7846 counterpart and are not accepted."""

    CONNECT = 0x0800
    FIND = 0x0805
    STAT_QUERY = 0x0807
    STAT_REPORT = 0x0808
    PUSH_HINT = 0x0820
    GLOBAL_INFO = 0x0821
    SUCCESSFUL = 0x8800
    MESSAGE_FORBIDDEN = 0x8810
    OBJECT_NOT_FOUND = 0x8811
    AUTHENTICATION_REQUIRED = 0x8812
    PAYMENT_REQUIRED = 0x8813
    INVALID_SYNTAX = 0x88F0
    VERSION_NOT_SUPPORTED = 0x88F1
    MESSAGE_NOT_SUPPORTED = 0x88F2
    TEMPORARILY_OVERLOADED = 0x88F3
    INTERNAL_ERROR = 0x88F4


#: The response method that carries each RFC 7846 error code (§4.3); 00 is gu-02's OK.
ERROR_METHODS: Final[Mapping[ErrorCode, Method]] = {
    ErrorCode.NO_ERROR: Method.SUCCESSFUL,
    ErrorCode.BAD_REQUEST: Method.INVALID_SYNTAX,
    ErrorCode.UNSUPPORTED_VERSION: Method.VERSION_NOT_SUPPORTED,
    ErrorCode.FORBIDDEN_ACTION: Method.MESSAGE_FORBIDDEN,
    ErrorCode.INTERNAL_SERVER_ERROR: Method.INTERNAL_ERROR,
    ErrorCode.SERVICE_UNAVAILABLE: Method.TEMPORARILY_OVERLOADED,
    ErrorCode.AUTHENTICATION_REQUIRED: Method.AUTHENTICATION_REQUIRED,
}
#: The RFC 7846 error code each response method means. gu-02's three codes RFC 7846 lacks are
#: understood as the nearest one, and never sent.
RESPONSE_ERRORS: Final[Mapping[int, ErrorCode]] = {
    **{int(method): code for code, method in ERROR_METHODS.items()},
    Method.MESSAGE_NOT_SUPPORTED: ErrorCode.BAD_REQUEST,
    Method.OBJECT_NOT_FOUND: ErrorCode.FORBIDDEN_ACTION,
    Method.PAYMENT_REQUIRED: ErrorCode.AUTHENTICATION_REQUIRED,
}


class TlvType(enum.IntEnum):
    """TLV types. 0x0001-0x7FFF carry RFC 7846 elements; 0x8001-0xFFFF (optional bit set)
    our extensions, which a plain RFC 7846 tracker would skip (as §4.4 has it ignore unknown
    JSON members)."""

    PEER_ID = 0x0001
    SWARM_ID = 0x0002
    SWARM_ACTION = 0x0003
    PEER_NUM = 0x0004
    PEER_ADDR = 0x0005
    STREAM_STATS = 0x0006
    SWARM_RESULT = 0x0007
    PEER_INFO = 0x0008
    ROLE = 0x8001
    AREA = 0x8002
    RANGES = 0x8003
    AVAILABILITY = 0x8004
    AVAILABILITY_DELTA = 0x8005
    PUSH_HINT = 0x8006
    SWARM_POPULARITY = 0x8007


# Plain ints for the hot paths and the Construct tables (DESIGN §3: no IntEnum keys).
_PEER_ID = 0x0001
_SWARM_ID = 0x0002
_SWARM_ACTION = 0x0003
_PEER_NUM = 0x0004
_PEER_ADDR = 0x0005
_STREAM_STATS = 0x0006
_SWARM_RESULT = 0x0007
_PEER_INFO = 0x0008
_ROLE = 0x8001
_AREA = 0x8002
_RANGES = 0x8003
_AVAILABILITY = 0x8004
_DELTA = 0x8005
_PUSH_HINT = 0x8006
_POPULARITY = 0x8007

# Enumerated fields: wire code of each model value (0 is never used, so zeroed garbage fails).
_ACTION_CODES: Final = {Action.JOIN: 1, Action.LEAVE: 2}
_MODE_CODES: Final = {PeerMode.SEEDER: 1, PeerMode.LEECH: 2}
_ADDRESS_TYPE_CODES: Final = {AddressType.HOST: 1, AddressType.REFLEXIVE: 2, AddressType.PROXY: 3}
_ROLE_CODES: Final = {Role.SOURCE: 1, Role.CACHER: 2, Role.CSC: 3}
_UNIT_CODES: Final = {HintUnit.CHUNKS: 1, HintUnit.SECONDS: 2}
_RESULT_CODES: Final = {ResponseType.SUCCESSFUL: 0, ResponseType.FAILED: 1}


def _inverse(codes: Mapping[Any, int]) -> dict[int, Any]:
    return {code: value for value, code in codes.items()}


_ACTIONS: Final = _inverse(_ACTION_CODES)
_MODES: Final = _inverse(_MODE_CODES)
_ADDRESS_TYPES: Final = _inverse(_ADDRESS_TYPE_CODES)
_ROLES: Final = _inverse(_ROLE_CODES)
_UNITS: Final = _inverse(_UNIT_CODES)
_RESULTS: Final = _inverse(_RESULT_CODES)

# Bits of the ``present`` octets (which optional fields follow).
_NAT, _LINKS, _ONLINE, _UPLOAD = 0x01, 0x02, 0x04, 0x08
_CONNECTION, _ASN, _PROTOCOL = 0x01, 0x02, 0x04
_PEER_GROUP = 0x01  # SWARM_RESULT flags: the peer_group is present (RFC 7846 §3.3.4)


# ---------------------------------------------------------------------------------------------
# Normative layouts (Construct)
# ---------------------------------------------------------------------------------------------


class Exact(Prefixed):  # type: ignore[misc]
    """``Prefixed`` whose value must be consumed exactly: bytes left over are an error, not
    silently ignored as ``Prefixed`` and ``FixedSized`` do."""

    def _parse(self, stream: Any, context: Any, path: str) -> Any:
        length = self.lengthfield._parsereport(stream, context, path)
        substream = BytesIOWithOffsets.from_reading(stream, length, path)
        obj = self.subcon._parsereport(substream, context, path)
        if substream.read(1):
            raise TerminatedError("bytes left after the value", path=path)
        return obj


#: gu-02 §5.2.1 Figure 15: the common message header, 24 bytes, big-endian.
HEADER = Struct(
    "token" / Const(TOKEN, Int32ub),
    "version" / Int8ub,  # 0x01
    "reserved" / Int8ub,  # sent as 0, ignored on receipt
    "method" / Int16ub,  # Method
    "transaction_id" / Int64ub,
    "fragment" / Int32ub,  # bit 31 set, bit 30 last fragment, bits 0-23 offset
    "length" / Int32ub,  # of this message or fragment, header included
)

#: A peer ID or swarm ID. Bit 15 of the prefix (H) says the value is raw bytes whose ID string
#: is their lowercase hex (a PPSPP swarm ID: root hash or public key); otherwise the value is
#: the ID string in UTF-8. Bits 0-14: the length of the value in bytes (at most 1024).
ID = Struct("prefix" / Int16ub, "value" / Bytes(this.prefix & 0x7FFF))

#: A short text (area, ASN, ...): length octet, UTF-8.
TEXT = Prefixed(Int8ub, GreedyBytes)

#: A list of inclusive chunk ranges (RFC 7574 §4.1.1). Bit 15 of the prefix (W) says the
#: chunk numbers are 64-bit, else 32-bit; bits 0-14: the number of ranges. start <= end.
RANGE32 = Struct("start" / Int32ub, "end" / Int32ub)
RANGE64 = Struct("start" / Int64ub, "end" / Int64ub)
RANGE_LIST = Struct(
    "prefix" / Int16ub,
    "ranges"
    / IfThenElse(
        this.prefix & 0x8000,
        Array(this.prefix & 0x7FFF, RANGE64),
        Array(this.prefix & 0x7FFF, RANGE32),
    ),
)

# RFC 7846 §3.2 elements. Within a value: fixed-size fields first, then IDs, then lists.

SWARM_ACTION = Struct(  # ppsp_tp_swarm_action_t
    "action" / Int8ub,  # 1 JOIN, 2 LEAVE
    "peer_mode" / Int8ub,  # 1 SEEDER, 2 LEECH
    "swarm_id" / ID,
)
PEER_NUM = Struct(  # ppsp_tp_peer_num_t
    "peer_count" / Int32ub,
    "present" / Int8ub,  # bit 0 ability_nat, 1 concurrent_links, 2 online_time, 3 upload_bw
    "ability_nat" / If(this.present & _NAT, TEXT),  # "NO_NAT", "STUN", "TURN"
    "concurrent_links" / If(this.present & _LINKS, Int32ub),
    "online_time" / If(this.present & _ONLINE, Int64ub),  # seconds
    "upload_bandwidth" / If(this.present & _UPLOAD, Int64ub),  # kbps
)
PEER_ADDR = Struct(  # ppsp_tp_peer_addr_t
    "type" / Int8ub,  # 1 HOST, 2 REFLEXIVE, 3 PROXY
    "family" / Int8ub,  # 4 IPv4, 6 IPv6
    "address" / Switch(this.family, {4: Bytes(4), 6: Bytes(16)}, default=Error),
    "port" / Int16ub,
    "priority" / Int32ub,  # higher is better
    "present" / Int8ub,  # bit 0 connection, 1 asn, 2 peer_protocol
    "connection" / If(this.present & _CONNECTION, TEXT),  # "wireless", "wired"
    "asn" / If(this.present & _ASN, TEXT),
    "peer_protocol" / If(this.present & _PROTOCOL, TEXT),  # e.g. "PPSP-PP"
)
STREAM_STATS = Struct(  # ppsp_tp_stream_stats (stat type STREAM_STATS)
    "uploaded_bytes" / Int64ub,
    "downloaded_bytes" / Int64ub,
    "available_bandwidth" / Int64ub,
    "concurrent_links" / Int32ub,
    "swarm_id" / ID,
)

# Our extensions (DESIGN §1).

ROLE = Struct("role" / Int8ub)  # 1 SOURCE, 2 CACHER, 3 CSC
AREA = GreedyBytes  # UTF-8, at most 255 bytes
AVAILABILITY = Struct(  # what a peer holds of one swarm (batch availability report)
    "peer_mode" / Int8ub,
    "role" / Int8ub,
    "swarm_id" / ID,
    "ranges" / RANGE_LIST,
)
AVAILABILITY_DELTA = Struct(  # incremental availability
    "swarm_id" / ID,
    "cached" / RANGE_LIST,
    "evicted" / RANGE_LIST,
)
PUSH_HINT = Struct(  # F4: prefetch the head of a hot swarm
    "unit" / Int8ub,  # 1 CHUNKS, 2 SECONDS
    "priority" / Int32ub,  # higher is more urgent
    "head_start" / Int64ub,
    "head_end" / Int64ub,
    "expires_in" / Float64b,  # seconds from the message
    "swarm_id" / ID,
)
SWARM_POPULARITY = Struct(  # F5: global info on one swarm
    "viewers" / Int32ub,
    "join_rate" / Float64b,  # joins per minute
    "swarm_id" / ID,
    "rarest" / RANGE_LIST,
)


def tlv(values: Mapping[int, Construct]) -> Construct:
    """One TLV whose type must be one of ``values``'s keys, or have the optional bit set (it
    is then skipped: its value parses as raw bytes)."""
    return Struct(
        "type" / Int16ub,
        "value"
        / Exact(
            Int32ub,
            Switch(
                this.type,
                dict(values),
                default=IfThenElse(this.type & OPTIONAL, GreedyBytes, Error),
            ),
        ),
    )


#: ppsp_tp_peer_info_t: the peer's ID, then its addresses and our extensions as TLVs.
PEER_INFO = Struct(
    "peer_id" / ID,
    "tlvs"
    / GreedyRange(tlv({_PEER_ADDR: PEER_ADDR, _ROLE: ROLE, _AREA: AREA, _RANGES: RANGE_LIST})),
)
#: ppsp_tp_swarm_action_result_t: result, flags (bit 0: the peer_group follows), swarm ID,
#: then one PEER_INFO TLV per peer of the group.
SWARM_RESULT = Struct(
    "result" / Int8ub,  # 0 SUCCESSFUL, 1 FAILED
    "flags" / Int8ub,
    "swarm_id" / ID,
    "tlvs" / GreedyRange(tlv({_PEER_INFO: PEER_INFO})),
)

VALUES: Final[Mapping[int, Construct]] = {
    _PEER_ID: ID,
    _SWARM_ID: ID,
    _SWARM_ACTION: SWARM_ACTION,
    _PEER_NUM: PEER_NUM,
    _PEER_ADDR: PEER_ADDR,
    _STREAM_STATS: STREAM_STATS,
    _SWARM_RESULT: SWARM_RESULT,
    _PEER_INFO: PEER_INFO,
    _ROLE: ROLE,
    _AREA: AREA,
    _RANGES: RANGE_LIST,
    _AVAILABILITY: AVAILABILITY,
    _DELTA: AVAILABILITY_DELTA,
    _PUSH_HINT: PUSH_HINT,
    _POPULARITY: SWARM_POPULARITY,
}


def body(*types: int) -> Construct:
    """A message body: TLVs of ``types`` (in any order) up to the end of the message."""
    return Struct("tlvs" / GreedyRange(tlv({t: VALUES[t] for t in types})), Terminated)


CONNECT_BODY = body(_PEER_ID, _SWARM_ACTION, _PEER_NUM, _PEER_ADDR, _ROLE, _AREA, _AVAILABILITY)
FIND_BODY = body(_PEER_ID, _SWARM_ID, _PEER_NUM, _AREA, _RANGES)
STAT_REPORT_BODY = body(_PEER_ID, _STREAM_STATS, _AVAILABILITY, _DELTA)
STAT_QUERY_BODY = body(_PEER_ID, _SWARM_ID)
RESPONSE_BODY = body(_PEER_ADDR, _SWARM_RESULT, _PUSH_HINT, _POPULARITY)
PUSH_HINT_BODY = body(_PUSH_HINT)
GLOBAL_INFO_BODY = body(_POPULARITY)

BODIES: Final[Mapping[int, Construct]] = {
    int(Method.CONNECT): CONNECT_BODY,
    int(Method.FIND): FIND_BODY,
    int(Method.STAT_REPORT): STAT_REPORT_BODY,
    int(Method.STAT_QUERY): STAT_QUERY_BODY,
    int(Method.PUSH_HINT): PUSH_HINT_BODY,
    int(Method.GLOBAL_INFO): GLOBAL_INFO_BODY,
    **{int(method): RESPONSE_BODY for method in RESPONSE_ERRORS},
}

#: A whole (unfragmented or reassembled) message: header, then the method's body up to the
#: header's length.
MESSAGE = Struct(
    "header" / HEADER,
    "body"
    / FixedSized(
        this.header.length - HEADER_SIZE, Switch(this.header.method, dict(BODIES), default=Error)
    ),
)


# ---------------------------------------------------------------------------------------------
# Field conversions shared by both codecs (everything that is not byte layout)
# ---------------------------------------------------------------------------------------------


def _bad(why: str) -> TrackerError:
    return TrackerError(f"malformed binary PPSP-TP message: {why}", ErrorCode.BAD_REQUEST)


_HEX_ID = re.compile(r"(?:[0-9a-f]{2})+")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")


def _id_wire(value: str) -> tuple[int, bytes]:
    """The ID prefix and value bytes of a peer ID or swarm ID string."""
    if not isinstance(value, str):
        raise TrackerError(f"an ID must be a string, not {value!r}")
    if value and _HEX_ID.fullmatch(value):
        raw = bytes.fromhex(value)
        prefix = 0x8000 | len(raw)
    else:
        raw = value.encode()
        prefix = len(raw)
    if len(raw) > MAX_ID_LENGTH:
        raise TrackerError(f"ID of {len(raw)} bytes, at most {MAX_ID_LENGTH}")
    return prefix, raw


def _id_from(prefix: int, raw: bytes) -> str:
    if len(raw) > MAX_ID_LENGTH:
        raise _bad(f"ID of {len(raw)} bytes, at most {MAX_ID_LENGTH}")
    if prefix & 0x8000:
        return raw.hex()
    return raw.decode()


def _text_wire(value: str) -> bytes:
    if not isinstance(value, str):
        raise TrackerError(f"a text must be a string, not {value!r}")
    raw = value.encode()
    if len(raw) > MAX_TEXT_LENGTH:
        raise TrackerError(f"text of {len(raw)} bytes, at most {MAX_TEXT_LENGTH}")
    return raw


def _text_from(raw: bytes) -> str:
    if len(raw) > MAX_TEXT_LENGTH:
        raise _bad(f"text of {len(raw)} bytes, at most {MAX_TEXT_LENGTH}")
    return raw.decode()


def _ranges_wire(ranges: Sequence[tuple[int, int]]) -> tuple[int, list[int]]:
    """The range list prefix and the flat start, end, start, end... numbers."""
    if len(ranges) > MAX_RANGES:
        raise TrackerError(f"{len(ranges)} chunk ranges in one list, at most {MAX_RANGES}")
    flat: list[int] = []
    for start, end in ranges:
        if not 0 <= start <= end:
            raise TrackerError(f"chunk range {start!r}..{end!r} is not 0 <= start <= end")
        flat += (start, end)
    top = max(flat, default=0)
    if type(top) is not int or top >> 64:  # a float would pass the comparisons
        raise TrackerError(f"chunk number {top} does not fit 64 bits")
    return (0x8000 if top >> 32 else 0) | len(ranges), flat


def _ranges_from(flat: Sequence[int]) -> list[tuple[int, int]]:
    it = iter(flat)
    ranges = list(zip(it, it, strict=True))
    for start, end in ranges:
        if start > end:
            raise _bad(f"chunk range {start}..{end} ends before it starts")
    return ranges


def _float_wire(value: float) -> float:
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise TrackerError(f"{value!r} is not a finite non-negative number")
    return number


def _float_from(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise _bad(f"{value!r} is not a finite non-negative number")
    return value


def _code(codes: Mapping[Any, int], value: Any, what: str) -> int:
    try:
        return codes[value]
    except (KeyError, TypeError):
        raise TrackerError(f"{value!r} is not a {what}") from None


def _member(members: Mapping[int, Any], code: int, what: str) -> Any:
    try:
        return members[code]
    except KeyError:
        raise _bad(f"{code} is not a {what} code") from None


def _present(present: int, known: int, what: str) -> None:
    if present & ~known:
        raise _bad(f"unknown bits {present & ~known:#04x} in the {what} present octet")


#: Wire forms already computed, by the string they were computed from: a string is immutable,
#: so an entry never goes stale. A tracker lists the same few thousand peers and swarms over
#: and over; parsing their addresses (``ipaddress``) and IDs again for every answer cost more
#: than the rest of the encoding. Bounded: emptied when full; long IDs are not kept.
_CACHE_ENTRIES: Final = 8192
_CACHE_MAX_ID: Final = 256
_ADDRESS_CACHE: dict[str, tuple[int, bytes]] = {}
_ID_CACHE: dict[str, bytes] = {}  # ID string → its wire form (prefix and value)
_ID_STRINGS: dict[bytes, str] = {}  # the other way round


def _address_wire(ip: str) -> tuple[int, bytes]:
    cached = _ADDRESS_CACHE.get(ip) if type(ip) is str else None
    if cached is not None:
        return cached
    if not isinstance(ip, str):
        raise TrackerError(f"an IP address must be a string, not {ip!r}")
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        raise TrackerError(f"{ip!r} is not an IP address") from None
    if getattr(address, "scope_id", None):
        raise TrackerError(f"{ip!r}: a scoped address has no wire form")
    wire = (address.version, address.packed)
    if type(ip) is str:
        if len(_ADDRESS_CACHE) >= _CACHE_ENTRIES:
            _ADDRESS_CACHE.clear()
        _ADDRESS_CACHE[ip] = wire
    return wire


def _address_from(raw: bytes) -> str:
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    return str(ipaddress.IPv6Address(raw))


def _peer_address(
    kind: int,
    raw: bytes,
    port: int,
    priority: int,
    present: int,
    connection: bytes | None,
    asn: bytes | None,
    protocol: bytes | None,
) -> PeerAddress:
    _present(present, _CONNECTION | _ASN | _PROTOCOL, "PEER_ADDR")
    return PeerAddress(
        _address_from(raw),
        port,
        priority,
        _member(_ADDRESS_TYPES, kind, "peer_addr type"),
        None if connection is None else _text_from(connection),
        None if asn is None else _text_from(asn),
        None if protocol is None else _text_from(protocol),
    )


def _peer_num(
    count: int,
    present: int,
    nat: bytes | None,
    links: int | None,
    online: int | None,
    upload: int | None,
) -> PeerNum:
    _present(present, _NAT | _LINKS | _ONLINE | _UPLOAD, "PEER_NUM")
    return PeerNum(count, None if nat is None else _text_from(nat), links, online, upload)


def _transaction_id(value: str | int) -> int:
    """The header's 64-bit transaction ID: the model's decimal string, or an int."""
    if isinstance(value, str):
        if not _DECIMAL.fullmatch(value):
            raise TrackerError(f"transaction ID {value!r} is not a decimal 64-bit number")
        value = int(value)
    if not isinstance(value, int) or not 0 <= value < 1 << 64:
        raise TrackerError(f"transaction ID {value!r} is not an unsigned 64-bit number")
    return value


# ---------------------------------------------------------------------------------------------
# TLV sequences: which types each place allows, how often, which are required
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Context:
    """Where a sequence of TLVs appears: the types allowed there with their most occurrences,
    and the types that must be present."""

    name: str
    limits: Mapping[int, int]
    required: tuple[int, ...] = ()


_CONNECT = _Context(
    "CONNECT",
    {
        _PEER_ID: 1,
        _SWARM_ACTION: MAX_ENTRIES,
        _PEER_NUM: 1,
        _PEER_ADDR: MAX_ADDRESSES,
        _ROLE: 1,
        _AREA: 1,
        _AVAILABILITY: MAX_ENTRIES,
    },
    (_PEER_ID,),
)
_FIND = _Context(
    "FIND", {_PEER_ID: 1, _SWARM_ID: 1, _PEER_NUM: 1, _AREA: 1, _RANGES: 1}, (_PEER_ID, _SWARM_ID)
)
_STAT_REPORT = _Context(
    "STAT_REPORT",
    {_PEER_ID: 1, _STREAM_STATS: MAX_ENTRIES, _AVAILABILITY: MAX_ENTRIES, _DELTA: MAX_ENTRIES},
    (_PEER_ID,),
)
_STAT_QUERY = _Context("STAT_QUERY", {_PEER_ID: 1, _SWARM_ID: MAX_ENTRIES}, (_PEER_ID,))
_RESPONSE = _Context(
    "response",
    {_PEER_ADDR: 1, _SWARM_RESULT: MAX_ENTRIES, _PUSH_HINT: MAX_ENTRIES, _POPULARITY: MAX_ENTRIES},
)
_PUSH = _Context("PUSH_HINT", {_PUSH_HINT: MAX_ENTRIES})
_GLOBAL = _Context("GLOBAL_INFO", {_POPULARITY: MAX_ENTRIES})
_IN_RESULT = _Context("SWARM_RESULT", {_PEER_INFO: MAX_PEERS})
_IN_PEER = _Context("PEER_INFO", {_PEER_ADDR: MAX_ADDRESSES, _ROLE: 1, _AREA: 1, _RANGES: 1})


class _Items:
    """The TLVs of one sequence, checked as they arrive: allowed here, not too many, at most
    :data:`MAX_UNKNOWN_TLVS` skipped ones."""

    __slots__ = ("context", "lists", "unknown")

    def __init__(self, context: _Context) -> None:
        self.context = context
        self.lists: dict[int, list[Any]] = {}
        self.unknown = 0

    def add(self, t: int, value: Any) -> None:
        limit = self.context.limits.get(t)
        if limit is None:
            if not t & OPTIONAL:
                raise _bad(f"TLV type {t:#06x} is not allowed in a {self.context.name}")
            self.unknown += 1
            if self.unknown > MAX_UNKNOWN_TLVS:
                raise _bad(f"more than {MAX_UNKNOWN_TLVS} unknown TLVs")
            return
        values = self.lists.get(t)
        if values is None:
            self.lists[t] = [value]
        elif len(values) >= limit:
            raise _bad(f"more than {limit} TLVs of type {t:#06x} in a {self.context.name}")
        else:
            values.append(value)

    def done(self) -> dict[int, list[Any]]:
        for t in self.context.required:
            if t not in self.lists:
                raise _bad(f"{self.context.name} without its TLV type {t:#06x}")
        return self.lists


def _one(items: dict[int, list[Any]], t: int) -> Any:
    values = items.get(t)
    return values[0] if values else None


def _peer_info(peer_id: str, items: dict[int, list[Any]]) -> PeerInfo:
    return PeerInfo(
        peer_id,
        items.get(_PEER_ADDR, []),
        _one(items, _ROLE),
        _one(items, _AREA),
        _one(items, _RANGES),
    )


def _swarm_result(
    result: int, flags: int, swarm_id: str, items: dict[int, list[Any]]
) -> SwarmResult:
    if flags & ~_PEER_GROUP:
        raise _bad(f"unknown SWARM_RESULT flags {flags:#04x}")
    peers = items.get(_PEER_INFO, [])
    if not flags & _PEER_GROUP:
        if peers:
            raise _bad("PEER_INFO in a SWARM_RESULT without a peer group")
        return SwarmResult(swarm_id, _member(_RESULTS, result, "result"), None)
    return SwarmResult(swarm_id, _member(_RESULTS, result, "result"), peers)


# Message assembly from the TLVs of its body (both decoders).

_Finisher = Callable[[int, str, dict[int, list[Any]]], Message]


def _connect(method: int, tid: str, items: dict[int, list[Any]]) -> Message:
    return Connect(
        items[_PEER_ID][0],
        tid,
        items.get(_SWARM_ACTION, []),
        _one(items, _PEER_NUM),
        items.get(_PEER_ADDR, []),
        _one(items, _ROLE),
        _one(items, _AREA),
        items.get(_AVAILABILITY, []),
    )


def _find(method: int, tid: str, items: dict[int, list[Any]]) -> Message:
    return Find(
        items[_PEER_ID][0],
        tid,
        items[_SWARM_ID][0],
        _one(items, _PEER_NUM),
        _one(items, _AREA),
        _one(items, _RANGES),
    )


def _stat_report(method: int, tid: str, items: dict[int, list[Any]]) -> Message:
    return StatReport(
        items[_PEER_ID][0],
        tid,
        items.get(_STREAM_STATS, []),
        items.get(_AVAILABILITY, []),
        items.get(_DELTA, []),
    )


def _stat_query(method: int, tid: str, items: dict[int, list[Any]]) -> Message:
    return StatQuery(items[_PEER_ID][0], tid, items.get(_SWARM_ID, []))


def _response(method: int, tid: str, items: dict[int, list[Any]]) -> Message:
    code = RESPONSE_ERRORS[method]
    return Response(
        tid,
        ResponseType.SUCCESSFUL if code == ErrorCode.NO_ERROR else ResponseType.FAILED,
        code,
        _one(items, _PEER_ADDR),
        items.get(_SWARM_RESULT, []),
        items.get(_PUSH_HINT, []),
        items.get(_POPULARITY, []),
    )


def _push_hints(method: int, tid: str, items: dict[int, list[Any]]) -> Message:
    return PushHintMessage(tid, items.get(_PUSH_HINT, []))


def _global_info(method: int, tid: str, items: dict[int, list[Any]]) -> Message:
    return GlobalInfoMessage(tid, items.get(_POPULARITY, []))


_METHODS: Final[dict[int, tuple[_Context, _Finisher]]] = {
    int(Method.CONNECT): (_CONNECT, _connect),
    int(Method.FIND): (_FIND, _find),
    int(Method.STAT_REPORT): (_STAT_REPORT, _stat_report),
    int(Method.STAT_QUERY): (_STAT_QUERY, _stat_query),
    int(Method.PUSH_HINT): (_PUSH, _push_hints),
    int(Method.GLOBAL_INFO): (_GLOBAL, _global_info),
    **{int(method): (_RESPONSE, _response) for method in RESPONSE_ERRORS},
}


# Message -> method, version, TLVs (both encoders).

_Item = tuple[int, Any]


def _limit(values: Sequence[Any], most: int, what: str) -> None:
    if len(values) > most:
        raise TrackerError(f"{len(values)} {what} in one message, at most {most}")


def _message_items(msg: Message) -> tuple[int, int, list[_Item]]:
    items: list[_Item]
    if isinstance(msg, Find):
        items = [(_PEER_ID, msg.peer_id), (_SWARM_ID, msg.swarm_id)]
        if msg.peer_num is not None:
            items.append((_PEER_NUM, msg.peer_num))
        if msg.area is not None:
            items.append((_AREA, msg.area))
        if msg.ranges is not None:
            items.append((_RANGES, msg.ranges))
        return Method.FIND, msg.version, items
    if isinstance(msg, Response):
        return _response_method(msg), msg.version, _response_items(msg)
    if isinstance(msg, Connect):
        _limit(msg.swarm_actions, MAX_ENTRIES, "swarm actions")
        _limit(msg.peer_addresses, MAX_ADDRESSES, "peer addresses")
        _limit(msg.availability, MAX_ENTRIES, "swarm availabilities")
        items = [(_PEER_ID, msg.peer_id)]
        items += [(_SWARM_ACTION, a) for a in msg.swarm_actions]
        if msg.peer_num is not None:
            items.append((_PEER_NUM, msg.peer_num))
        items += [(_PEER_ADDR, a) for a in msg.peer_addresses]
        if msg.role is not None:
            items.append((_ROLE, msg.role))
        if msg.area is not None:
            items.append((_AREA, msg.area))
        items += [(_AVAILABILITY, a) for a in msg.availability]
        return Method.CONNECT, msg.version, items
    if isinstance(msg, StatReport):
        _limit(msg.stats, MAX_ENTRIES, "stream stats")
        _limit(msg.availability, MAX_ENTRIES, "swarm availabilities")
        _limit(msg.deltas, MAX_ENTRIES, "availability deltas")
        items = [(_PEER_ID, msg.peer_id)]
        items += [(_STREAM_STATS, s) for s in msg.stats]
        items += [(_AVAILABILITY, a) for a in msg.availability]
        items += [(_DELTA, d) for d in msg.deltas]
        return Method.STAT_REPORT, msg.version, items
    if isinstance(msg, StatQuery):
        _limit(msg.swarm_ids, MAX_ENTRIES, "swarm IDs")
        items = [(_PEER_ID, msg.peer_id)] + [(_SWARM_ID, s) for s in msg.swarm_ids]
        return Method.STAT_QUERY, msg.version, items
    if isinstance(msg, PushHintMessage):
        _limit(msg.hints, MAX_ENTRIES, "push hints")
        return Method.PUSH_HINT, WIRE_VERSION, [(_PUSH_HINT, h) for h in msg.hints]
    if isinstance(msg, GlobalInfoMessage):
        _limit(msg.swarms, MAX_ENTRIES, "swarm popularities")
        return Method.GLOBAL_INFO, WIRE_VERSION, [(_POPULARITY, s) for s in msg.swarms]
    raise TrackerError(f"not a PPSP-TP message: {msg!r}")


def _response_method(msg: Response) -> int:
    """§4.3: a FAILED response carries its error code; gu-02 puts it in the method."""
    failed = msg.response_type == ResponseType.FAILED
    if failed == (msg.error_code == ErrorCode.NO_ERROR) or msg.error_code not in ERROR_METHODS:
        raise TrackerError(
            f"response_type {msg.response_type!r} with error_code {msg.error_code!r}"
        )
    return ERROR_METHODS[msg.error_code]  # a member, or equal to one: the same key


def _response_items(msg: Response) -> list[_Item]:
    _limit(msg.swarm_results, MAX_ENTRIES, "swarm results")
    _limit(msg.push_hints, MAX_ENTRIES, "push hints")
    _limit(msg.global_info, MAX_ENTRIES, "swarm popularities")
    items: list[_Item] = []
    if msg.peer_address is not None:
        items.append((_PEER_ADDR, msg.peer_address))
    items += [(_SWARM_RESULT, r) for r in msg.swarm_results]
    items += [(_PUSH_HINT, h) for h in msg.push_hints]
    items += [(_POPULARITY, s) for s in msg.global_info]
    return items


def _peer_info_items(info: PeerInfo) -> list[_Item]:
    _limit(info.addresses, MAX_ADDRESSES, "addresses of one peer")
    items: list[_Item] = [(_PEER_ADDR, a) for a in info.addresses]
    if info.role is not None:
        items.append((_ROLE, info.role))
    if info.area is not None:
        items.append((_AREA, info.area))
    if info.ranges is not None:
        items.append((_RANGES, info.ranges))
    return items


def _result_flags(result: SwarmResult) -> tuple[int, list[_Item]]:
    if result.peers is None:
        return 0, []
    _limit(result.peers, MAX_PEERS, "peers in one swarm result")
    return _PEER_GROUP, [(_PEER_INFO, p) for p in result.peers]


# ---------------------------------------------------------------------------------------------
# The Construct codec: model <-> containers
# ---------------------------------------------------------------------------------------------


def _c_id(value: str) -> dict[str, Any]:
    prefix, raw = _id_wire(value)
    return {"prefix": prefix, "value": raw}


def _c_ranges(ranges: Sequence[tuple[int, int]]) -> dict[str, Any]:
    prefix, flat = _ranges_wire(ranges)
    pairs = [{"start": flat[i], "end": flat[i + 1]} for i in range(0, len(flat), 2)]
    return {"prefix": prefix, "ranges": pairs}


def _c_opt_text(value: str | None) -> bytes | None:
    return None if value is None else _text_wire(value)


def _c_peer_num(n: PeerNum) -> dict[str, Any]:
    fields = (n.ability_nat, n.concurrent_links, n.online_time, n.upload_bandwidth)
    present = sum(
        bit
        for bit, v in zip((_NAT, _LINKS, _ONLINE, _UPLOAD), fields, strict=True)
        if v is not None
    )
    return {
        "peer_count": n.peer_count,
        "present": present,
        "ability_nat": _c_opt_text(n.ability_nat),
        "concurrent_links": n.concurrent_links,
        "online_time": n.online_time,
        "upload_bandwidth": n.upload_bandwidth,
    }


def _c_peer_addr(a: PeerAddress) -> dict[str, Any]:
    family, raw = _address_wire(a.ip)
    fields = (a.connection, a.asn, a.peer_protocol)
    present = sum(
        bit for bit, v in zip((_CONNECTION, _ASN, _PROTOCOL), fields, strict=True) if v is not None
    )
    return {
        "type": _code(_ADDRESS_TYPE_CODES, a.type, "peer_addr type"),
        "family": family,
        "address": raw,
        "port": a.port,
        "priority": a.priority,
        "present": present,
        "connection": _c_opt_text(a.connection),
        "asn": _c_opt_text(a.asn),
        "peer_protocol": _c_opt_text(a.peer_protocol),
    }


def _c_tlvs(items: list[_Item]) -> list[dict[str, Any]]:
    return [{"type": t, "value": _TO_CONTAINER[t](v)} for t, v in items]


def _c_swarm_result(r: SwarmResult) -> dict[str, Any]:
    flags, items = _result_flags(r)
    return {
        "result": _code(_RESULT_CODES, r.result, "result"),
        "flags": flags,
        "swarm_id": _c_id(r.swarm_id),
        "tlvs": _c_tlvs(items),
    }


_TO_CONTAINER: Final[dict[int, Callable[[Any], Any]]] = {
    _PEER_ID: _c_id,
    _SWARM_ID: _c_id,
    _SWARM_ACTION: lambda a: {
        "action": _code(_ACTION_CODES, a.action, "swarm action"),
        "peer_mode": _code(_MODE_CODES, a.peer_mode, "peer mode"),
        "swarm_id": _c_id(a.swarm_id),
    },
    _PEER_NUM: _c_peer_num,
    _PEER_ADDR: _c_peer_addr,
    _STREAM_STATS: lambda s: {
        "uploaded_bytes": s.uploaded_bytes,
        "downloaded_bytes": s.downloaded_bytes,
        "available_bandwidth": s.available_bandwidth,
        "concurrent_links": s.concurrent_links,
        "swarm_id": _c_id(s.swarm_id),
    },
    _SWARM_RESULT: _c_swarm_result,
    _PEER_INFO: lambda p: {"peer_id": _c_id(p.peer_id), "tlvs": _c_tlvs(_peer_info_items(p))},
    _ROLE: lambda r: {"role": _code(_ROLE_CODES, r, "role")},
    _AREA: _text_wire,
    _RANGES: _c_ranges,
    _AVAILABILITY: lambda a: {
        "peer_mode": _code(_MODE_CODES, a.peer_mode, "peer mode"),
        "role": _code(_ROLE_CODES, a.role, "role"),
        "swarm_id": _c_id(a.swarm_id),
        "ranges": _c_ranges(a.ranges),
    },
    _DELTA: lambda d: {
        "swarm_id": _c_id(d.swarm_id),
        "cached": _c_ranges(d.cached),
        "evicted": _c_ranges(d.evicted),
    },
    _PUSH_HINT: lambda h: {
        "unit": _code(_UNIT_CODES, h.unit, "hint unit"),
        "priority": h.priority,
        "head_start": h.head_start,
        "head_end": h.head_end,
        "expires_in": _float_wire(h.expires_in),
        "swarm_id": _c_id(h.swarm_id),
    },
    _POPULARITY: lambda p: {
        "viewers": p.viewers,
        "join_rate": _float_wire(p.join_rate),
        "swarm_id": _c_id(p.swarm_id),
        "rarest": _c_ranges(p.rarest),
    },
}


def _m_id(c: Any) -> str:
    return _id_from(c.prefix, c.value)


def _m_ranges(c: Any) -> list[tuple[int, int]]:
    return _ranges_from([n for r in c.ranges for n in (r.start, r.end)])


def _m_tlvs(tlvs: Any, context: _Context) -> dict[int, list[Any]]:
    items = _Items(context)
    for c in tlvs:
        convert = _FROM_CONTAINER.get(c.type) if c.type in context.limits else None
        items.add(c.type, None if convert is None else convert(c.value))
    return items.done()


_FROM_CONTAINER: Final[dict[int, Callable[[Any], Any]]] = {
    _PEER_ID: _m_id,
    _SWARM_ID: _m_id,
    _SWARM_ACTION: lambda c: SwarmAction(
        _m_id(c.swarm_id),
        _member(_ACTIONS, c.action, "swarm action"),
        _member(_MODES, c.peer_mode, "peer mode"),
    ),
    _PEER_NUM: lambda c: _peer_num(
        c.peer_count,
        c.present,
        c.ability_nat,
        c.concurrent_links,
        c.online_time,
        c.upload_bandwidth,
    ),
    _PEER_ADDR: lambda c: _peer_address(
        c.type, c.address, c.port, c.priority, c.present, c.connection, c.asn, c.peer_protocol
    ),
    _STREAM_STATS: lambda c: StreamStats(
        _m_id(c.swarm_id),
        c.uploaded_bytes,
        c.downloaded_bytes,
        c.available_bandwidth,
        c.concurrent_links,
    ),
    _SWARM_RESULT: lambda c: _swarm_result(
        c.result, c.flags, _m_id(c.swarm_id), _m_tlvs(c.tlvs, _IN_RESULT)
    ),
    _PEER_INFO: lambda c: _peer_info(_m_id(c.peer_id), _m_tlvs(c.tlvs, _IN_PEER)),
    _ROLE: lambda c: _member(_ROLES, c.role, "role"),
    _AREA: _text_from,
    _RANGES: _m_ranges,
    _AVAILABILITY: lambda c: SwarmAvailability(
        _m_id(c.swarm_id),
        _member(_MODES, c.peer_mode, "peer mode"),
        _member(_ROLES, c.role, "role"),
        _m_ranges(c.ranges),
    ),
    _DELTA: lambda c: AvailabilityDelta(
        _m_id(c.swarm_id), _m_ranges(c.cached), _m_ranges(c.evicted)
    ),
    _PUSH_HINT: lambda c: PushHint(
        _m_id(c.swarm_id),
        c.head_start,
        c.head_end,
        _member(_UNITS, c.unit, "hint unit"),
        c.priority,
        _float_from(c.expires_in),
    ),
    _POPULARITY: lambda c: SwarmPopularity(
        _m_id(c.swarm_id), c.viewers, _float_from(c.join_rate), _m_ranges(c.rarest)
    ),
}


# Errors that malformed input or an unencodable model can raise inside either codec; they all
# become TrackerError. (UnicodeError and the ipaddress errors are ValueErrors.)
_CODEC_ERRORS = (
    ConstructError,
    struct.error,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    OverflowError,
)


def build(msg: Message, transaction_id: int | None = None) -> bytes:
    """The whole message built by the normative Construct definition, never fragmented.

    Byte-equal to ``encode(msg, transaction_id, MAX_MESSAGE)[0]``; slow, for tests and tools.
    Raises :class:`TrackerError` for a model the wire cannot carry.
    """
    tid = _transaction_id(msg.transaction_id if transaction_id is None else transaction_id)
    method, version, items = _message_items(msg)
    try:
        data: bytes = BODIES[method].build({"tlvs": _c_tlvs(items)})
        length = HEADER_SIZE + len(data)
        if length > MAX_MESSAGE:
            raise TrackerError(f"message of {length} bytes, at most {MAX_MESSAGE}")
        head: bytes = HEADER.build(
            {
                "version": version,
                "reserved": 0,
                "method": method,
                "transaction_id": tid,
                "fragment": UNFRAGMENTED,
                "length": length,
            }
        )
    except TrackerError:
        raise
    except _CODEC_ERRORS as exc:
        raise TrackerError(f"cannot encode {type(msg).__name__}: {exc}") from exc
    return head + data


def parse(data: bytes) -> Message:
    """One whole message parsed by the normative Construct definition.

    Same result and errors as :func:`decode`; slow, for tests and tools.
    """
    header = peek_header(data)
    try:
        _check_whole(header, data)
        try:
            container = MESSAGE.parse(data)
            context, finish = _METHODS[header.method]
            items = _m_tlvs(container.body.tlvs, context)
            return finish(header.method, str(header.transaction_id), items)
        except TrackerError:
            raise
        except _CODEC_ERRORS as exc:
            raise _bad(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
    except TrackerError as exc:
        _tag(exc, header)
        raise


# ---------------------------------------------------------------------------------------------
# The fast codec: struct
# ---------------------------------------------------------------------------------------------

_HEADER = struct.Struct(">IBBHQII")
#: :data:`HEADER` as a ``struct`` layout (token, version, reserved, method, transaction ID,
#: fragment, length), for a receiver's hot path that looks at the header before anything else.
HEADER_STRUCT: Final = _HEADER
_TLV = struct.Struct(">HI")
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_BB = struct.Struct(">BB")
_BBH = struct.Struct(">BBH")
_PEER_NUM_HEAD = struct.Struct(">IB")
_RANGE32 = struct.Struct(">II")
_RANGE64 = struct.Struct(">QQ")
_PORT_PRIORITY_PRESENT = struct.Struct(">HIB")
_STATS = struct.Struct(">QQQI")
_HINT = struct.Struct(">BIQQd")
_POPULARITY_HEAD = struct.Struct(">Id")
_RANGE_STRUCTS: dict[tuple[int, bool], struct.Struct] = {}


def _range_struct(count: int, wide: bool) -> struct.Struct:
    key = (count, wide)
    s = _RANGE_STRUCTS.get(key)
    if s is None:
        s = struct.Struct(f">{2 * count}{'Q' if wide else 'I'}")
        if count <= 64:
            _RANGE_STRUCTS[key] = s
    return s


# Encoding: each function returns a TLV's value.


def _e_id(value: str) -> bytes:
    cached = _ID_CACHE.get(value) if type(value) is str else None
    if cached is not None:
        return cached
    prefix, raw = _id_wire(value)
    wire = _U16.pack(prefix) + raw
    if type(value) is str and len(value) <= _CACHE_MAX_ID:
        if len(_ID_CACHE) >= _CACHE_ENTRIES:
            _ID_CACHE.clear()
        _ID_CACHE[value] = wire
    return wire


def _e_ranges(ranges: Sequence[tuple[int, int]]) -> bytes:
    prefix, flat = _ranges_wire(ranges)
    return _U16.pack(prefix) + _range_struct(len(ranges), bool(prefix & 0x8000)).pack(*flat)


def _e_text(value: str) -> bytes:
    raw = _text_wire(value)
    return _U8.pack(len(raw)) + raw


def _e_swarm_action(a: SwarmAction) -> bytes:
    head = _BB.pack(
        _code(_ACTION_CODES, a.action, "swarm action"), _code(_MODE_CODES, a.peer_mode, "peer mode")
    )
    return head + _e_id(a.swarm_id)


def _e_peer_num(n: PeerNum) -> bytes:
    present = 0
    tail = b""
    if n.ability_nat is not None:
        present |= _NAT
        tail += _e_text(n.ability_nat)
    for bit, value, layout in (
        (_LINKS, n.concurrent_links, _U32),
        (_ONLINE, n.online_time, _U64),
        (_UPLOAD, n.upload_bandwidth, _U64),
    ):
        if value is not None:
            present |= bit
            tail += layout.pack(value)
    return _PEER_NUM_HEAD.pack(n.peer_count, present) + tail


def _e_peer_addr(a: PeerAddress) -> bytes:
    family, raw = _address_wire(a.ip)
    present = 0
    tail = b""
    for bit, value in ((_CONNECTION, a.connection), (_ASN, a.asn), (_PROTOCOL, a.peer_protocol)):
        if value is not None:
            present |= bit
            tail += _e_text(value)
    kind = _code(_ADDRESS_TYPE_CODES, a.type, "peer_addr type")
    return (
        _BB.pack(kind, family)
        + raw
        + _PORT_PRIORITY_PRESENT.pack(a.port, a.priority, present)
        + tail
    )


def _e_stats(s: StreamStats) -> bytes:
    head = _STATS.pack(
        s.uploaded_bytes, s.downloaded_bytes, s.available_bandwidth, s.concurrent_links
    )
    return head + _e_id(s.swarm_id)


def _e_tlvs(items: list[_Item]) -> bytes:
    out = []
    for t, v in items:
        value = _TO_VALUE[t](v)
        out.append(_TLV.pack(t, len(value)))
        out.append(value)
    return b"".join(out)


def _e_swarm_result(r: SwarmResult) -> bytes:
    flags, items = _result_flags(r)
    head = _BB.pack(_code(_RESULT_CODES, r.result, "result"), flags)
    return head + _e_id(r.swarm_id) + _e_tlvs(items)


class EncodeMemo:
    """Whole PEER_INFO and PEER_ADDR TLVs of model objects, kept by object identity, so that
    :func:`encode` (keyword ``memo``) builds each only once: a tracker answers FIND after FIND
    with the same few peers, and their PEER_INFO TLVs were most of the work of an answer.

    Only for objects that are never mutated once encoded, as the peer lists and reflexive
    addresses in a :class:`~ppsp.tracker.state.Tracker`'s responses (it makes a new object
    whenever a peer changes, and its responses are read-only): a mutated object would keep its
    old bytes. The memo holds a reference to every object it has bytes for, so no other object
    can have that identity meanwhile (two live objects never share one). At most
    ``max_entries`` entries; all are dropped when it is full (the live ones come back at their
    next use).
    """

    __slots__ = ("_held", "_wire", "max_entries")

    def __init__(self, max_entries: int = 65_536) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._wire: dict[int, bytes] = {}  # id → TLV; looked up with no Python per entry
        self._held: dict[int, object] = {}  # id → the object, kept alive

    def __len__(self) -> int:
        return len(self._wire)

    def clear(self) -> None:
        self._wire.clear()
        self._held.clear()

    def tlv(self, t: int, value: PeerInfo | PeerAddress) -> bytes:
        """The whole TLV (header included) of type ``t`` carrying ``value``."""
        wire = self._wire.get(id(value))
        if wire is not None:
            return wire
        body = _TO_VALUE[t](value)
        wire = _TLV.pack(t, len(body)) + body
        if len(self._wire) >= self.max_entries:
            self.clear()
        self._wire[id(value)] = wire
        self._held[id(value)] = value
        return wire


def _e_response_memo(msg: Response, memo: EncodeMemo) -> bytes:
    """The body of ``msg`` as ``_e_tlvs(_response_items(msg))`` writes it (same checks in the
    same order, so the same errors), with PEER_INFO and PEER_ADDR TLVs from ``memo``."""
    tlv = memo.tlv
    lookup = memo._wire.get
    out: list[bytes] = []
    if msg.peer_address is not None:
        out.append(tlv(_PEER_ADDR, msg.peer_address))
    for r in msg.swarm_results:
        peers = r.peers
        if peers is None:
            value = _e_swarm_result(r)
        else:
            _limit(peers, MAX_PEERS, "peers in one swarm result")
            head = _BB.pack(_code(_RESULT_CODES, r.result, "result"), _PEER_GROUP)
            parts = [head, _e_id(r.swarm_id)]
            for p in peers:
                wire = lookup(id(p))
                parts.append(wire if wire is not None else tlv(_PEER_INFO, p))
            value = b"".join(parts)
        out.append(_TLV.pack(_SWARM_RESULT, len(value)))
        out.append(value)
    if msg.push_hints or msg.global_info:
        out.append(
            _e_tlvs(
                [(_PUSH_HINT, h) for h in msg.push_hints]
                + [(_POPULARITY, p) for p in msg.global_info]
            )
        )
    return b"".join(out)


def _e_peer_info(p: PeerInfo) -> bytes:
    return _e_id(p.peer_id) + _e_tlvs(_peer_info_items(p))


def _e_availability(a: SwarmAvailability) -> bytes:
    head = _BB.pack(
        _code(_MODE_CODES, a.peer_mode, "peer mode"), _code(_ROLE_CODES, a.role, "role")
    )
    return head + _e_id(a.swarm_id) + _e_ranges(a.ranges)


def _e_push_hint(h: PushHint) -> bytes:
    head = _HINT.pack(
        _code(_UNIT_CODES, h.unit, "hint unit"),
        h.priority,
        h.head_start,
        h.head_end,
        _float_wire(h.expires_in),
    )
    return head + _e_id(h.swarm_id)


def _e_popularity(p: SwarmPopularity) -> bytes:
    head = _POPULARITY_HEAD.pack(p.viewers, _float_wire(p.join_rate))
    return head + _e_id(p.swarm_id) + _e_ranges(p.rarest)


_TO_VALUE: Final[dict[int, Callable[[Any], bytes]]] = {
    _PEER_ID: _e_id,
    _SWARM_ID: _e_id,
    _SWARM_ACTION: _e_swarm_action,
    _PEER_NUM: _e_peer_num,
    _PEER_ADDR: _e_peer_addr,
    _STREAM_STATS: _e_stats,
    _SWARM_RESULT: _e_swarm_result,
    _PEER_INFO: _e_peer_info,
    _ROLE: lambda r: _U8.pack(_code(_ROLE_CODES, r, "role")),
    _AREA: _text_wire,
    _RANGES: _e_ranges,
    _AVAILABILITY: _e_availability,
    _DELTA: lambda d: _e_id(d.swarm_id) + _e_ranges(d.cached) + _e_ranges(d.evicted),
    _PUSH_HINT: _e_push_hint,
    _POPULARITY: _e_popularity,
}


# Decoding: each function parses the value in data[p:end] and must consume it exactly.


def _truncated(what: str) -> TrackerError:
    return _bad(f"truncated {what}")


def _d_id(data: bytes, p: int, end: int) -> tuple[str, int]:
    if p + 2 > end:
        raise _truncated("ID")
    prefix = data[p] << 8 | data[p + 1]
    q = p + 2 + (prefix & 0x7FFF)
    if q > end:
        raise _truncated("ID")
    return _id_from(prefix, data[p + 2 : q]), q


def _d_ranges(data: bytes, p: int, end: int) -> tuple[list[tuple[int, int]], int]:
    if p + 2 > end:
        raise _truncated("range list")
    prefix = data[p] << 8 | data[p + 1]
    count = prefix & 0x7FFF
    wide = bool(prefix & 0x8000)
    q = p + 2 + count * (16 if wide else 8)
    if q > end:
        raise _truncated("range list")
    if not count:
        return [], q
    if count == 1:  # the common case, without _ranges_from's pairing
        start, stop = (_RANGE64 if wide else _RANGE32).unpack_from(data, p + 2)
        if start > stop:
            raise _bad(f"chunk range {start}..{stop} ends before it starts")
        return [(start, stop)], q
    return _ranges_from(_range_struct(count, wide).unpack_from(data, p + 2)), q


def _d_text(data: bytes, p: int, end: int) -> tuple[bytes, int]:
    if p >= end:
        raise _truncated("text")
    q = p + 1 + data[p]
    if q > end:
        raise _truncated("text")
    return data[p + 1 : q], q


def _exact(q: int, end: int, what: str) -> None:
    if q != end:
        raise _bad(f"{end - q} bytes left after the {what} value")


def _whole_id(data: bytes, p: int, end: int) -> str:
    # A PEER_ID or SWARM_ID TLV: the same few IDs arrive again and again, and bytes that
    # decoded once decode the same way again (_ID_CACHE's reasoning, the other way round).
    wire = data[p:end]
    value = _ID_STRINGS.get(wire)
    if value is not None:
        return value
    value, q = _d_id(data, p, end)
    _exact(q, end, "ID")
    if len(wire) <= _CACHE_MAX_ID:
        if len(_ID_STRINGS) >= _CACHE_ENTRIES:
            _ID_STRINGS.clear()
        _ID_STRINGS[wire] = value
    return value


def _d_swarm_action(data: bytes, p: int, end: int) -> SwarmAction:
    if p + 2 > end:
        raise _truncated("SWARM_ACTION")
    swarm_id = _whole_id(data, p + 2, end)
    return SwarmAction(
        swarm_id,
        _member(_ACTIONS, data[p], "swarm action"),
        _member(_MODES, data[p + 1], "peer mode"),
    )


def _d_number(
    data: bytes, p: int, end: int, present: int, layout: struct.Struct
) -> tuple[int | None, int]:
    if not present:
        return None, p
    if p + layout.size > end:
        raise _truncated("number")
    value: int = layout.unpack_from(data, p)[0]
    return value, p + layout.size


def _d_peer_num(data: bytes, p: int, end: int) -> PeerNum:
    if p + 5 > end:
        raise _truncated("PEER_NUM")
    count, present = _PEER_NUM_HEAD.unpack_from(data, p)
    p += 5
    if not present:  # peer_count alone, as nearly every FIND has it
        _exact(p, end, "PEER_NUM")
        return PeerNum(count)
    nat = None
    if present & _NAT:
        nat, p = _d_text(data, p, end)
    links, p = _d_number(data, p, end, present & _LINKS, _U32)
    online, p = _d_number(data, p, end, present & _ONLINE, _U64)
    upload, p = _d_number(data, p, end, present & _UPLOAD, _U64)
    _exact(p, end, "PEER_NUM")
    return _peer_num(count, present, nat, links, online, upload)


def _d_peer_addr(data: bytes, p: int, end: int) -> PeerAddress:
    if p + 2 > end:
        raise _truncated("PEER_ADDR")
    kind, family = data[p], data[p + 1]
    if family == 4:
        size = 4
    elif family == 6:
        size = 16
    else:
        raise _bad(f"address family {family}")
    q = p + 2 + size
    if q + 7 > end:
        raise _truncated("PEER_ADDR")
    port, priority, present = _PORT_PRIORITY_PRESENT.unpack_from(data, q)
    q += 7
    texts: list[bytes | None] = []
    for bit in (_CONNECTION, _ASN, _PROTOCOL):
        if present & bit:
            text, q = _d_text(data, q, end)
            texts.append(text)
        else:
            texts.append(None)
    _exact(q, end, "PEER_ADDR")
    return _peer_address(kind, data[p + 2 : p + 2 + size], port, priority, present, *texts)


def _d_stats(data: bytes, p: int, end: int) -> StreamStats:
    if p + 28 > end:
        raise _truncated("STREAM_STATS")
    uploaded, downloaded, bandwidth, links = _STATS.unpack_from(data, p)
    return StreamStats(_whole_id(data, p + 28, end), uploaded, downloaded, bandwidth, links)


def _d_tlvs(data: bytes, p: int, end: int, context: _Context) -> dict[int, list[Any]]:
    # _Items.add and _Items.done inlined (this loop runs for every TLV of every request):
    # the same checks in the same order, so the same errors as the Construct decoder's.
    limits = context.limits
    lists: dict[int, list[Any]] = {}
    unknown = 0
    unpack = _TLV.unpack_from
    while p < end:
        if p + 6 > end:
            raise _truncated("TLV")
        t, n = unpack(data, p)
        p += 6
        q = p + n
        if q > end:
            raise _truncated(f"TLV of type {t:#06x}")
        limit = limits.get(t)
        if limit is None:
            if not t & OPTIONAL:
                raise _bad(f"TLV type {t:#06x} is not allowed in a {context.name}")
            unknown += 1
            if unknown > MAX_UNKNOWN_TLVS:
                raise _bad(f"more than {MAX_UNKNOWN_TLVS} unknown TLVs")
        else:
            value = _FROM_VALUE[t](data, p, q)
            values = lists.get(t)
            if values is None:
                lists[t] = [value]
            elif len(values) >= limit:
                raise _bad(f"more than {limit} TLVs of type {t:#06x} in a {context.name}")
            else:
                values.append(value)
        p = q
    for t in context.required:
        if t not in lists:
            raise _bad(f"{context.name} without its TLV type {t:#06x}")
    return lists


def _d_swarm_result(data: bytes, p: int, end: int) -> SwarmResult:
    if p + 2 > end:
        raise _truncated("SWARM_RESULT")
    result, flags = data[p], data[p + 1]
    swarm_id, q = _d_id(data, p + 2, end)
    return _swarm_result(result, flags, swarm_id, _d_tlvs(data, q, end, _IN_RESULT))


def _d_peer_info(data: bytes, p: int, end: int) -> PeerInfo:
    peer_id, q = _d_id(data, p, end)
    return _peer_info(peer_id, _d_tlvs(data, q, end, _IN_PEER))


def _d_role(data: bytes, p: int, end: int) -> Role:
    _exact(p + 1, end, "ROLE")
    role: Role = _member(_ROLES, data[p], "role")
    return role


def _d_ranges_value(data: bytes, p: int, end: int) -> list[tuple[int, int]]:
    ranges, q = _d_ranges(data, p, end)
    _exact(q, end, "RANGES")
    return ranges


def _d_availability(data: bytes, p: int, end: int) -> SwarmAvailability:
    if p + 2 > end:
        raise _truncated("AVAILABILITY")
    mode, role = data[p], data[p + 1]
    swarm_id, q = _d_id(data, p + 2, end)
    ranges, q = _d_ranges(data, q, end)
    _exact(q, end, "AVAILABILITY")
    return SwarmAvailability(
        swarm_id, _member(_MODES, mode, "peer mode"), _member(_ROLES, role, "role"), ranges
    )


def _d_delta(data: bytes, p: int, end: int) -> AvailabilityDelta:
    swarm_id, q = _d_id(data, p, end)
    cached, q = _d_ranges(data, q, end)
    evicted, q = _d_ranges(data, q, end)
    _exact(q, end, "AVAILABILITY_DELTA")
    return AvailabilityDelta(swarm_id, cached, evicted)


def _d_push_hint(data: bytes, p: int, end: int) -> PushHint:
    if p + _HINT.size > end:
        raise _truncated("PUSH_HINT")
    unit, priority, start, stop, expires = _HINT.unpack_from(data, p)
    swarm_id = _whole_id(data, p + _HINT.size, end)
    return PushHint(
        swarm_id, start, stop, _member(_UNITS, unit, "hint unit"), priority, _float_from(expires)
    )


def _d_popularity(data: bytes, p: int, end: int) -> SwarmPopularity:
    if p + 12 > end:
        raise _truncated("SWARM_POPULARITY")
    viewers, rate = _POPULARITY_HEAD.unpack_from(data, p)
    swarm_id, q = _d_id(data, p + 12, end)
    rarest, q = _d_ranges(data, q, end)
    _exact(q, end, "SWARM_POPULARITY")
    return SwarmPopularity(swarm_id, viewers, _float_from(rate), rarest)


def _d_area(data: bytes, p: int, end: int) -> str:
    return _text_from(data[p:end])


_FROM_VALUE: Final[dict[int, Callable[[bytes, int, int], Any]]] = {
    _PEER_ID: _whole_id,
    _SWARM_ID: _whole_id,
    _SWARM_ACTION: _d_swarm_action,
    _PEER_NUM: _d_peer_num,
    _PEER_ADDR: _d_peer_addr,
    _STREAM_STATS: _d_stats,
    _SWARM_RESULT: _d_swarm_result,
    _PEER_INFO: _d_peer_info,
    _ROLE: _d_role,
    _AREA: _d_area,
    _RANGES: _d_ranges_value,
    _AVAILABILITY: _d_availability,
    _DELTA: _d_delta,
    _PUSH_HINT: _d_push_hint,
    _POPULARITY: _d_popularity,
}


# ---------------------------------------------------------------------------------------------
# Header
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    """The common header of a message or fragment (gu-02 §5.2.1)."""

    version: int
    method: int
    transaction_id: int
    fragment: int
    length: int  # of this message or fragment, header included

    @property
    def offset(self) -> int:
        """Where this fragment's bytes go in the message body (gu-02 §5.2.3)."""
        return self.fragment & OFFSET_MASK

    @property
    def last(self) -> bool:
        """This is the last (or only) fragment."""
        return bool(self.fragment & LAST_FRAGMENT)

    @property
    def fragmented(self) -> bool:
        """This is a fragment of a longer message, not a whole message."""
        return not self.last or self.offset != 0

    @property
    def is_request(self) -> bool:
        """A request (gu-02 §5.2.1.1: first method byte 0x08), tracker-initiated ones too."""
        return self.method >> 8 == 0x08

    @property
    def is_response(self) -> bool:
        """A response (first method byte 0x88)."""
        return self.method >> 8 == 0x88


def peek_header(data: bytes) -> Header:
    """The header at the start of ``data``, checked only as far as framing needs: 24 bytes,
    the token, a length of at least 24. ``data`` may be longer or shorter than that length
    (a TCP reader peeks at the first 24 bytes, then reads the rest). Raises
    :class:`TrackerError` (01)."""
    if len(data) < HEADER_SIZE:
        raise _bad(f"{len(data)} bytes, the header alone takes {HEADER_SIZE}")
    token, version, _reserved, method, tid, fragment, length = _HEADER.unpack_from(data)
    if token != TOKEN:
        raise _bad(f"token {token:#010x} is not {TOKEN:#010x}")
    if length < HEADER_SIZE:
        raise _bad(f"message length {length} is shorter than the header")
    return Header(version, method, tid, fragment, length)


def is_request(header: Header) -> bool:
    """A request, tracker-initiated ones included (gu-02 §5.2.1.1: method byte 0x08)."""
    return header.is_request


def is_last_fragment(header: Header) -> bool:
    """The last fragment of a message, or a whole message."""
    return header.last


def _check_method(header: Header) -> tuple[_Context, _Finisher]:
    """gu-02 §5.2.4 after the length check: the version (02), then the method (01, as RFC 7846
    has no "message not supported")."""
    if header.version != WIRE_VERSION:
        raise TrackerError(
            f"PPSP-TP binary version {header.version} is not supported",
            ErrorCode.UNSUPPORTED_VERSION,
        )
    found = _METHODS.get(header.method)
    if found is None:
        raise _bad(f"unknown method {header.method:#06x}")
    return found


def _tag(exc: TrackerError, header: Header) -> None:
    """Let the error response carry the transaction ID, now that it could be read."""
    if getattr(exc, "transaction_id", None) is None:
        exc.transaction_id = str(header.transaction_id)


def _check_whole(header: Header, data: bytes) -> None:
    if header.length != len(data):
        raise _bad(f"length field says {header.length} bytes, the message has {len(data)}")
    if header.fragmented:
        raise _bad("a fragment, not a whole message: reassemble it first")
    _check_method(header)


def error_response(transaction_id: int | str, code: ErrorCode) -> bytes:
    """A bodiless response with ``code``'s method (:data:`ERROR_METHODS`): what a tracker
    answers to a message it cannot process. A transaction ID that could not be read is 0."""
    tid = _transaction_id(transaction_id)
    method = ERROR_METHODS[ErrorCode(code)]
    return _HEADER.pack(TOKEN, WIRE_VERSION, 0, method, tid, UNFRAGMENTED, HEADER_SIZE)


# ---------------------------------------------------------------------------------------------
# Public API: encode (with fragmentation), decode, reassembly
# ---------------------------------------------------------------------------------------------


def _decode_body(header: Header, data: bytes, start: int) -> Message:
    context, finish = _check_method(header)
    try:
        items = _d_tlvs(data, start, len(data), context)
        return finish(header.method, str(header.transaction_id), items)
    except TrackerError:
        raise
    except _CODEC_ERRORS as exc:
        raise _bad(str(exc) or type(exc).__name__) from exc


class DecodeMemo:
    """Requests decoded before, kept by their bytes less the transaction ID, for
    :func:`decode` (keyword ``memo``): a peer that asks again for the same thing (a FIND for
    the same swarm and chunks, a channel switch back) sends the same bytes with a new
    transaction ID, and copying the earlier message is several times cheaper than decoding.

    The copies share their parts (lists, PeerNum, ...) with each other: only for receivers
    that never mutate a decoded request, as a :class:`~ppsp.tracker.state.Tracker`. Only
    requests of at most ``max_size`` bytes are kept, at most ``max_entries`` of them (all
    dropped when full); malformed input is never kept, so it fails as it would without.
    """

    __slots__ = ("_entries", "max_entries", "max_size")

    def __init__(self, max_entries: int = 4096, max_size: int = 512) -> None:
        if max_entries < 1 or max_size < HEADER_SIZE:
            raise ValueError("max_entries must be at least 1, max_size at least the header")
        self.max_entries = max_entries
        self.max_size = max_size
        self._entries: dict[bytes, Message] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()


_MEMO_TYPES: Final = frozenset({Find, StatReport, Connect, StatQuery})


def _with_transaction_id(msg: Message, tid: str) -> Message | None:
    """A copy of a decoded request with another transaction ID (parts shared); None for a
    message :class:`DecodeMemo` does not keep. (Decoded messages are of the model's own
    classes, never subclasses.)"""
    if isinstance(msg, Find):
        m = msg
        return Find(m.peer_id, tid, m.swarm_id, m.peer_num, m.area, m.ranges, m.version)
    if isinstance(msg, StatReport):
        r = msg
        return StatReport(r.peer_id, tid, r.stats, r.availability, r.deltas, r.version)
    if isinstance(msg, Connect):
        c = msg
        return Connect(
            c.peer_id,
            tid,
            c.swarm_actions,
            c.peer_num,
            c.peer_addresses,
            c.role,
            c.area,
            c.availability,
            c.version,
        )
    if isinstance(msg, StatQuery):
        return StatQuery(msg.peer_id, tid, msg.swarm_ids, msg.version)
    return None


def decode(data: bytes, *, memo: DecodeMemo | None = None) -> Message:
    """Decode one whole message (unfragmented, or reassembled by :class:`Reassembler`).

    With a ``memo`` (:class:`DecodeMemo`), a request seen before is copied from it: the same
    message, with parts shared with earlier ones.

    Raises :class:`TrackerError` with the RFC 7846 code to answer: 02 for a version other than
    1, 01 for anything else malformed (gu-02 §5.2.4).
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    if memo is not None and len(data) <= memo.max_size:
        # Every byte but the transaction ID's (octets 8-15) is the key: the same bytes around
        # another transaction ID decode to the same message with that transaction ID.
        key = data[:8] + data[16:]
        known = memo._entries.get(key)
        if known is not None:
            copied = _with_transaction_id(known, str(_U64.unpack_from(data, 8)[0]))
            if copied is not None:
                return copied
        msg = decode(data)
        if type(msg) in _MEMO_TYPES:
            entries = memo._entries
            if len(entries) >= memo.max_entries:
                entries.clear()
            entries[key] = msg
        return msg
    # peek_header, _check_whole and _decode_body without building a Header: every request a
    # tracker receives comes this way. Same checks in the same order.
    size = len(data)
    if size < HEADER_SIZE:
        raise _bad(f"{size} bytes, the header alone takes {HEADER_SIZE}")
    token, version, _reserved, method, tid, fragment, length = _HEADER.unpack_from(data)
    if token != TOKEN:
        raise _bad(f"token {token:#010x} is not {TOKEN:#010x}")
    if length < HEADER_SIZE:
        raise _bad(f"message length {length} is shorter than the header")
    try:
        if length != size:
            raise _bad(f"length field says {length} bytes, the message has {size}")
        if not fragment & LAST_FRAGMENT or fragment & OFFSET_MASK:
            raise _bad("a fragment, not a whole message: reassemble it first")
        if version != WIRE_VERSION:
            raise TrackerError(
                f"PPSP-TP binary version {version} is not supported",
                ErrorCode.UNSUPPORTED_VERSION,
            )
        found = _METHODS.get(method)
        if found is None:
            raise _bad(f"unknown method {method:#06x}")
        context, finish = found
        try:
            return finish(method, str(tid), _d_tlvs(data, HEADER_SIZE, size, context))
        except TrackerError:
            raise
        except _CODEC_ERRORS as exc:
            raise _bad(str(exc) or type(exc).__name__) from exc
    except TrackerError as exc:
        if getattr(exc, "transaction_id", None) is None:
            exc.transaction_id = str(tid)
        raise


def encode(
    msg: Message,
    transaction_id: int | None = None,
    max_fragment: int = DEFAULT_MAX_FRAGMENT,
    *,
    memo: EncodeMemo | None = None,
) -> list[bytes]:
    """Encode ``msg`` as one message, or as fragments of at most ``max_fragment`` bytes each
    (header included) when it is longer (gu-02 §5.2.3: equal-sized fragments).

    The header's transaction ID is ``transaction_id`` when given, else the model's
    ``transaction_id``, which must then be the decimal form of an unsigned 64-bit number.
    Over TCP, pass ``max_fragment=MAX_MESSAGE``: the message then goes whole, as one frame.
    A response's peer lists and reflexive address are taken from ``memo`` (see
    :class:`EncodeMemo`) when one is given; the bytes are the same.
    Raises :class:`TrackerError` for a model the wire cannot carry or a message longer than
    :data:`MAX_MESSAGE`.
    """
    if max_fragment < HEADER_SIZE + 8:
        raise ValueError(f"max_fragment {max_fragment} leaves no room after the header")
    tid = _transaction_id(msg.transaction_id if transaction_id is None else transaction_id)
    items: list[_Item] = []
    response: Response | None = None
    if memo is not None and type(msg) is Response:
        # _message_items' checks for a response, without building its list of items.
        response = msg
        method, version = _response_method(msg), msg.version
        _limit(msg.swarm_results, MAX_ENTRIES, "swarm results")
        _limit(msg.push_hints, MAX_ENTRIES, "push hints")
        _limit(msg.global_info, MAX_ENTRIES, "swarm popularities")
    else:
        method, version, items = _message_items(msg)
    try:
        if response is not None and memo is not None:
            payload = _e_response_memo(response, memo)
        else:
            payload = _e_tlvs(items)
        if not 0 <= version <= 0xFF:
            raise TrackerError(f"version {version} does not fit the header")
    except TrackerError:
        raise
    except _CODEC_ERRORS as exc:
        raise TrackerError(f"cannot encode {type(msg).__name__}: {exc}") from exc
    total = HEADER_SIZE + len(payload)
    if total > MAX_MESSAGE:
        raise TrackerError(f"message of {total} bytes, at most {MAX_MESSAGE}")
    if total <= max_fragment:
        return [_HEADER.pack(TOKEN, version, 0, method, tid, UNFRAGMENTED, total) + payload]
    room = max_fragment - HEADER_SIZE
    count = -(-len(payload) // room)
    size = -(-len(payload) // count)
    fragments = []
    for offset in range(0, len(payload), size):
        piece = payload[offset : offset + size]
        flags = FRAGMENT_BIT | (LAST_FRAGMENT if offset + size >= len(payload) else 0)
        head = _HEADER.pack(
            TOKEN, version, 0, method, tid, flags | offset, HEADER_SIZE + len(piece)
        )
        fragments.append(head + piece)
    return fragments


@dataclass(slots=True)
class _Pending:
    """A message being reassembled: its disjoint pieces of body, sorted by offset."""

    version: int
    method: int
    started: float
    starts: list[int]
    pieces: dict[int, bytes]
    received: int = 0  # bytes of body held
    total: int | None = None  # body length, known once the last fragment came


class Reassembler:
    """Reassembly of fragmented messages (gu-02 §5.2.3, RFC 6940 §6.7), per source and
    transaction ID, with bounded state.

    :meth:`feed` takes every datagram (or TCP frame) and returns a message once it is whole;
    whole messages pass straight through to :func:`decode`. Fragments may come in any order
    and more than once (UDP, retransmissions); overlapping fragments must agree on the bytes
    they share, else the message is dropped (RFC 5722's reasoning: overlaps are how reassembly
    is attacked). At most ``max_pending`` messages (``max_per_source`` per source) and
    ``max_buffered`` bytes are held; a message still incomplete ``timeout`` seconds after its
    first fragment is dropped by :meth:`expire` (gu-02: "maximum request lifetime (15
    seconds)").
    """

    def __init__(
        self,
        max_pending: int = 64,
        max_message: int = MAX_MESSAGE,
        timeout: float = 15.0,
        *,
        max_per_source: int = 8,
        max_buffered: int = 4 * MAX_MESSAGE,
    ) -> None:
        if not HEADER_SIZE < max_message <= MAX_MESSAGE:
            raise ValueError(f"max_message must be in {HEADER_SIZE + 1}..{MAX_MESSAGE}")
        self.max_pending = max_pending
        self.max_message = max_message
        self.timeout = timeout
        self.max_per_source = max_per_source
        self.max_buffered = max_buffered
        self._pending: OrderedDict[tuple[Hashable, int], _Pending] = OrderedDict()
        self._per_source: dict[Hashable, int] = {}
        self.buffered = 0  # bytes held by incomplete messages

    @property
    def pending(self) -> int:
        """Messages being reassembled."""
        return len(self._pending)

    def feed(self, fragment: bytes, source: Hashable, now: float) -> Message | None:
        """Take one fragment (or whole message) from ``source``; return the message once it is
        complete, else ``None``. Raises :class:`TrackerError` for a malformed fragment or
        message (its pending message is dropped), 05 Service Unavailable when the buffer is
        full (gu-02 §5.2.3: the message MUST then be dropped). Once the header could be read,
        the error carries its transaction ID."""
        if not isinstance(fragment, bytes):
            fragment = bytes(fragment)
        header = peek_header(fragment)
        try:
            return self._feed(fragment, header, source, now)
        except TrackerError as exc:
            _tag(exc, header)
            raise

    def _feed(
        self, fragment: bytes, header: Header, source: Hashable, now: float
    ) -> Message | None:
        if header.length != len(fragment):
            raise _bad(f"length field says {header.length} bytes, the datagram has {len(fragment)}")
        if not header.fragmented:
            if header.length > self.max_message:
                raise _bad(f"message of {header.length} bytes, at most {self.max_message}")
            return decode(fragment)
        _check_method(header)
        key = (source, header.transaction_id)
        entry = self._pending.get(key)
        if entry is not None and now - entry.started > self.timeout:
            self._drop(key)
            entry = None
        if entry is None:
            entry = self._start(key, header, now)
        try:
            return self._add(key, entry, header, fragment)
        except TrackerError:
            if key in self._pending:
                self._drop(key)
            raise

    def expire(self, now: float) -> int:
        """Drop messages still incomplete ``timeout`` seconds after their first fragment;
        return how many."""
        dropped = 0
        while self._pending:
            key, entry = next(iter(self._pending.items()))
            if now - entry.started <= self.timeout:
                break
            self._drop(key)
            dropped += 1
        return dropped

    def _start(self, key: tuple[Hashable, int], header: Header, now: float) -> _Pending:
        source = key[0]
        if self._per_source.get(source, 0) >= self.max_per_source:
            # The source only crowds out itself: its oldest message goes.
            oldest = next(k for k in self._pending if k[0] == source)
            self._drop(oldest)
        if len(self._pending) >= self.max_pending:
            self.expire(now)
            if len(self._pending) >= self.max_pending:
                raise TrackerError(
                    f"{len(self._pending)} messages in reassembly already",
                    ErrorCode.SERVICE_UNAVAILABLE,
                )
        entry = _Pending(header.version, header.method, now, [], {})
        self._pending[key] = entry
        self._per_source[source] = self._per_source.get(source, 0) + 1
        return entry

    def _drop(self, key: tuple[Hashable, int]) -> None:
        entry = self._pending.pop(key)
        self.buffered -= entry.received
        left = self._per_source[key[0]] - 1
        if left:
            self._per_source[key[0]] = left
        else:
            del self._per_source[key[0]]

    def _add(
        self, key: tuple[Hashable, int], entry: _Pending, header: Header, fragment: bytes
    ) -> Message | None:
        if (header.method, header.version) != (entry.method, entry.version):
            raise _bad("fragments of one transaction disagree on method or version")
        start = header.offset
        end = start + header.length - HEADER_SIZE
        if HEADER_SIZE + end > self.max_message:
            raise _bad(f"fragment ends past {self.max_message} bytes")
        if header.last:
            if entry.total is not None and entry.total != end:
                raise _bad("two last fragments with different ends")
            if entry.starts and entry.starts[-1] + len(entry.pieces[entry.starts[-1]]) > end:
                raise _bad("a fragment lies past the last fragment")
            entry.total = end
        elif entry.total is not None and end > entry.total:
            raise _bad("a fragment lies past the last fragment")
        new = self._uncovered(entry, fragment, start, end)
        added = sum(len(piece) for _, piece in new)
        if self.buffered + added > self.max_buffered:
            raise TrackerError("reassembly buffer full", ErrorCode.SERVICE_UNAVAILABLE)
        for offset, piece in new:
            bisect.insort(entry.starts, offset)
            entry.pieces[offset] = piece
        entry.received += added
        self.buffered += added
        if entry.total is None or entry.received < entry.total:
            return None
        body = b"".join(entry.pieces[offset] for offset in entry.starts)
        self._drop(key)
        head = Header(entry.version, entry.method, key[1], UNFRAGMENTED, HEADER_SIZE + len(body))
        return _decode_body(head, body, 0)

    @staticmethod
    def _uncovered(
        entry: _Pending, fragment: bytes, start: int, end: int
    ) -> list[tuple[int, bytes]]:
        """The parts of body[start:end] (carried by ``fragment`` after its header) that no
        held piece covers yet; the parts that one covers must be equal to it."""
        starts, pieces = entry.starts, entry.pieces
        i = bisect.bisect_right(starts, start) - 1
        if i < 0 or starts[i] + len(pieces[starts[i]]) <= start:
            i += 1
        new: list[tuple[int, bytes]] = []
        at = start
        base = HEADER_SIZE - start  # fragment index of body offset x is x + base
        while at < end and i < len(starts) and starts[i] < end:
            held_start = starts[i]
            held = pieces[held_start]
            if held_start > at:
                new.append((at, fragment[at + base : held_start + base]))
                at = held_start
            stop = min(end, held_start + len(held))
            if fragment[at + base : stop + base] != held[at - held_start : stop - held_start]:
                raise _bad("overlapping fragments disagree")
            at = stop
            i += 1
        if at < end:
            new.append((at, fragment[at + base : end + base]))
        return new
