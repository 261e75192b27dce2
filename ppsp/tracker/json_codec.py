"""The RFC 7846 JSON encoding of PPSP-TP: the §3 grammar and the §4 HTTP binding.

Converts between the message model of :mod:`ppsp.tracker.messages` and the bodies of the HTTP
POSTs (requests) and their answers (responses), whose media type is :data:`CONTENT_TYPE`.

RFC 7846's examples contradict its own grammar (FIND's ``swarm_id`` and ``peer_num`` directly
under the root, ``"Stat"`` for ``"stat"``, single objects where the grammar has arrays, numbers
written as strings, a response ``peer_addr`` without ``type``). The decoders accept both the
grammar and every shape the examples use; the encoders emit the grammar. ``docs/ppsp-tp-json.md``
lists the accepted variants and our extension members, which all start with ``x_p2pcdn_`` so
that a plain RFC 7846 tracker ignores them (§4.4).

Every body is hostile: its size is checked before it is parsed, its nesting depth before the
JSON parser recurses, and every array, string and integer is bounded (:class:`JsonLimits`).
Whatever is wrong comes out as :class:`~ppsp.tracker.messages.TrackerError` carrying the §4.3
error code to answer with (01 Bad Request, 02 Unsupported Version Number) and, when it could
be read, the request's transaction ID.

The encoders trust the model (the tracker's own state, or values the decoders validated); they
only refuse what the grammar cannot express.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, TypeVar

from ppsp.tracker.messages import (
    VERSION,
    Action,
    AddressType,
    AvailabilityDelta,
    ChunkRanges,
    Connect,
    ErrorCode,
    Find,
    HintUnit,
    PeerAddress,
    PeerInfo,
    PeerMode,
    PeerNum,
    PushHint,
    Request,
    RequestType,
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

#: §4, §8.1: the media type of every PPSP-TP request and response body.
CONTENT_TYPE: Final = "application/ppsp-tracker+json"

#: The prefix of every member our extensions add (§4.4: a plain tracker ignores them).
EXTENSION_PREFIX: Final = "x_p2pcdn_"

X_ROLE: Final = "x_p2pcdn_role"
X_AREA: Final = "x_p2pcdn_area"
X_RANGES: Final = "x_p2pcdn_ranges"
X_AVAILABILITY: Final = "x_p2pcdn_availability"
X_DELTAS: Final = "x_p2pcdn_deltas"
X_STAT_QUERY: Final = "x_p2pcdn_stat_query"
X_PUSH_HINTS: Final = "x_p2pcdn_push_hints"
X_GLOBAL_INFO: Final = "x_p2pcdn_global_info"

ROOT: Final = "PPSPTrackerProtocol"  # §3.4

_U16: Final = 0xFFFF
_U32: Final = 0xFFFF_FFFF
_I64: Final = 2**63 - 1
_U64: Final = 2**64 - 1
_MAX_ERROR_CODE: Final = max(ErrorCode)  # §8.4 Table 9
#: Seconds or joins per minute: a week is plenty, and the bound keeps floats finite.
_MAX_SECONDS: Final = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class JsonLimits:
    """Bounds on what the decoders accept from the network.

    The defaults let a cacher's batch availability report of 10,000 swarms (a CONNECT with a
    swarm action and an availability entry each, SHA-256 swarm IDs, a few ranges per swarm)
    through with room to spare; an HTTP server must allow bodies of ``max_body`` bytes.
    """

    max_body: int = 4 * 1024 * 1024
    max_depth: int = 32
    #: peer IDs and transaction IDs
    max_id_length: int = 256
    #: a live swarm's ID is its public key (RFC 7574 §12.1): an RSA-4096 DNSKEY is 1034 hex digits
    max_swarm_id_length: int = 2048
    #: every other string: area, asn, connection, peer_protocol, ability_nat
    max_string_length: int = 256
    max_swarm_actions: int = 10_000
    #: peer_addr elements per CONNECT and per peer
    max_addresses: int = 16
    max_availability: int = 10_000
    #: chunk ranges per swarm (availability, deltas, FIND hint, rarest chunks)
    max_ranges: int = 1024
    max_stats: int = 10_000
    max_deltas: int = 10_000
    max_swarm_results: int = 10_000
    #: peer_info elements per swarm_result
    max_peers: int = 1000
    max_push_hints: int = 1000
    max_global_info: int = 10_000
    max_query_swarms: int = 10_000


DEFAULT_LIMITS: Final = JsonLimits()


def content_type_matches(value: str | None) -> bool:
    """Whether an HTTP Content-Type header names :data:`CONTENT_TYPE` (§4); media
    type parameters such as ``charset`` are allowed and case does not matter (RFC 7231)."""
    if value is None:
        return False
    return value.partition(";")[0].strip().lower() == CONTENT_TYPE


# ------------------------------------------------------------------------------ public API


def decode_request(body: bytes, *, limits: JsonLimits = DEFAULT_LIMITS) -> Request:
    """Parse the body of a PPSP-TP request (§3.3.3): CONNECT, FIND, STAT_REPORT, or our
    STAT_QUERY. Raises :class:`TrackerError` with code 01 or 02 (§4.3)."""
    msg = _load(body, limits)
    tid = _peek_transaction_id(msg, limits)
    try:
        _check_version(msg)
        return _request(msg, limits)
    except TrackerError as exc:
        exc.transaction_id = tid
        raise


def decode_response(body: bytes, *, limits: JsonLimits = DEFAULT_LIMITS) -> Response:
    """Parse the body of a PPSP-TP response (§3.3.4). Raises :class:`TrackerError` (an
    invalid response, which §4.3 tells the peer to answer by repeating its request)."""
    msg = _load(body, limits)
    tid = _peek_transaction_id(msg, limits)
    try:
        _check_version(msg)
        return _response(msg, limits)
    except TrackerError as exc:
        exc.transaction_id = tid
        raise


def encode_request(req: Request) -> bytes:
    """The body of a request, in the §3.3.3 grammar form plus our extension members."""
    if not isinstance(req, Connect | Find | StatReport | StatQuery):
        raise TypeError(f"not a PPSP-TP request: {type(req).__name__}")
    parts = [_request_head(req)]
    if isinstance(req, Find):
        parts.append(',"find":{"swarm_id":' + _str(req.swarm_id))
        if req.peer_num is not None:
            parts.append(',"peer_num":' + _peer_num_text(req.peer_num))
        parts.append("}")
        if req.area is not None:
            parts.append(f',"{X_AREA}":' + _str(req.area))
        if req.ranges is not None:
            parts.append(f',"{X_RANGES}":' + _json(req.ranges))
    elif isinstance(req, Connect):
        if not req.swarm_actions:
            raise TrackerError("§3.3.3: a CONNECT carries at least one swarm_action")
        parts.append(',"connect":{')
        if req.peer_num is not None:
            parts.append('"peer_num":' + _peer_num_text(req.peer_num) + ",")
        if req.peer_addresses:
            parts.append(
                '"peer_addr":[' + ",".join([_peer_addr_text(a) for a in req.peer_addresses]) + "],"
            )
        parts.append('"swarm_action":')
        parts.append(
            _json(
                [
                    {"swarm_id": a.swarm_id, "action": a.action, "peer_mode": a.peer_mode}
                    for a in req.swarm_actions
                ]
            )
        )
        parts.append("}")
        if req.role is not None:
            parts.append(f',"{X_ROLE}":' + _str(req.role))
        if req.area is not None:
            parts.append(f',"{X_AREA}":' + _str(req.area))
        if req.availability:
            parts.append(f',"{X_AVAILABILITY}":' + _availability_text(req.availability))
    elif isinstance(req, StatReport):
        # §4.1.3: without a statistics group the STAT_REPORT is a keep-alive.
        if req.stats:
            stats = [
                {
                    "swarm_id": s.swarm_id,
                    "uploaded_bytes": s.uploaded_bytes,
                    "downloaded_bytes": s.downloaded_bytes,
                    "available_bandwidth": s.available_bandwidth,
                    "concurrent_links": s.concurrent_links,
                }
                for s in req.stats
            ]
            parts.append(',"stat_report":{"type":"STREAM_STATS","stat":' + _json(stats) + "}")
        if req.availability:
            parts.append(f',"{X_AVAILABILITY}":' + _availability_text(req.availability))
        if req.deltas:
            deltas = [
                {"swarm_id": d.swarm_id, "cached": d.cached, "evicted": d.evicted}
                for d in req.deltas
            ]
            parts.append(f',"{X_DELTAS}":' + _json(deltas))
    else:
        parts.append(f',"{X_STAT_QUERY}":{{"swarm_id":' + _json(req.swarm_ids) + "}")
    parts.append("}}")
    return "".join(parts).encode("ascii")


class EncodeMemo:
    """The JSON text of model objects, kept by object identity, so that
    :func:`encode_response` (keyword ``memo``) writes each peer of a peer list, and each
    reflexive address, only once: a tracker answers FIND after FIND with the same few peers.

    Only for objects that are never mutated once encoded, as the peer lists and reflexive
    addresses in a :class:`~ppsp.tracker.state.Tracker`'s responses (it makes a new object
    whenever a peer changes, and its responses are read-only): a mutated object would keep its
    old text. The memo holds a reference to every object it has text for, so no other object
    can have that identity meanwhile (two live objects never share one). At most
    ``max_entries`` entries; all are dropped when it is full.
    """

    __slots__ = ("_held", "_text", "max_entries")

    def __init__(self, max_entries: int = 65_536) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._text: dict[int, str] = {}  # id → text
        self._held: dict[int, object] = {}  # id → the object, kept alive

    def __len__(self) -> int:
        return len(self._text)

    def clear(self) -> None:
        self._text.clear()
        self._held.clear()

    def text(self, value: PeerInfo | PeerAddress) -> str:
        """A peer's peer_info elements (comma-separated), or a peer_addr object."""
        text = self._text.get(id(value))
        if text is not None:
            return text
        text = _peer_info_text(value) if isinstance(value, PeerInfo) else _peer_addr_text(value)
        if len(self._text) >= self.max_entries:
            self.clear()
        self._text[id(value)] = text
        self._held[id(value)] = value
        return text


def encode_response(resp: Response, *, memo: EncodeMemo | None = None) -> bytes:
    """The body of a response, in the §3.3.4 grammar form plus our extension members. With a
    ``memo`` (:class:`EncodeMemo`), peers and the reflexive address come from it; the bytes
    are the same."""
    parts = [
        f'{{"{ROOT}":{{"version":{resp.version:d},"response_type":{resp.response_type:d},'
        f'"error_code":{resp.error_code:d},"transaction_id":{_str(resp.transaction_id)}'
    ]
    if resp.peer_address is not None:
        address = resp.peer_address
        parts.append(
            ',"peer_addr":' + (_peer_addr_text(address) if memo is None else memo.text(address))
        )
    if resp.swarm_results:
        parts.append(',"swarm_result":[')
        parts.append(",".join([_swarm_result_text(r, memo) for r in resp.swarm_results]))
        parts.append("]")
    if resp.push_hints:
        hints = [
            {
                "swarm_id": h.swarm_id,
                "head_start": h.head_start,
                "head_end": h.head_end,
                "unit": h.unit,
                "priority": h.priority,
                "expires_in": h.expires_in,
            }
            for h in resp.push_hints
        ]
        parts.append(f',"{X_PUSH_HINTS}":' + _json(hints))
    if resp.global_info:
        info = [
            {
                "swarm_id": p.swarm_id,
                "viewers": p.viewers,
                "join_rate": p.join_rate,
                "rarest": p.rarest,
            }
            for p in resp.global_info
        ]
        parts.append(f',"{X_GLOBAL_INFO}":' + _json(info))
    parts.append("}}")
    return "".join(parts).encode("ascii")


# ------------------------------------------------------------------------------ JSON text

# Compact output; NaN and infinities are not JSON (RFC 8259 §6), so refuse to write them.
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Python's json module reads NaN and Infinity unless told otherwise.
_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)


# The encoders write the body's frame and the elements of the hot path (peer_addr, peer_info:
# a FIND response is mostly those) as text, which is three times faster here than building
# dicts for the json module; everything else goes through _json. Both escape strings the same
# way, to ASCII (so the body is also UTF-8, RFC 8259 §8.1).
_json: Final = _ENCODER.encode
_str: Final = json.encoder.encode_basestring_ascii


def _load(body: bytes, limits: JsonLimits) -> dict[str, Any]:
    """The §3.4 root's PPSPTrackerProtocol object, after the size and depth checks."""
    if len(body) > limits.max_body:
        raise TrackerError(f"body of {len(body)} bytes exceeds {limits.max_body}")
    # A document cannot nest deeper than it has '[' and '{'; count those (cheap) before
    # paying for the exact check.
    if body.count(b"[") + body.count(b"{") > limits.max_depth:
        _check_depth(bytes(body), limits.max_depth)
    try:
        # RFC 8259 §8.1: JSON exchanged between systems is UTF-8; a BOM may be ignored.
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        raise TrackerError("body is not UTF-8") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        doc = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        raise TrackerError(f"body is not JSON: {exc}") from None
    if type(doc) is not dict:
        raise TrackerError("§3.4: the body must be a JSON object")
    root = doc.get(ROOT)
    if type(root) is not dict:
        raise TrackerError(f"§3.4: no {ROOT} object")
    return root


_KEEP_BRACKETS_AND_QUOTES: Final = bytes(b for b in range(256) if b not in b'[]{}"')


@lru_cache(maxsize=4)
def _depth_pattern(max_depth: int) -> re.Pattern[bytes]:
    # Nesting of at most max_depth is a regular language: max_depth nested possessive groups,
    # each an opening bracket, the next level, a closing bracket. Possessive quantifiers never
    # backtrack, so a match is linear in the input and uses no recursion.
    pattern = b""
    for _ in range(max_depth):
        pattern = rb"(?:[\[{]" + pattern + rb"[\]}])*+"
    return re.compile(pattern)


def _check_depth(body: bytes, max_depth: int) -> None:
    """Reject documents nested deeper than ``max_depth`` before the (recursive) JSON parser
    sees them. Brackets inside strings do not count."""
    if b"\\" in body:
        # Drop escaped backslashes, then escaped quotes, so every '"' left delimits a string.
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    quotes_and_brackets = body.translate(None, _KEEP_BRACKETS_AND_QUOTES)
    # Every other piece between quotes is outside a string.
    brackets = b"".join(quotes_and_brackets.split(b'"')[::2])
    if _depth_pattern(max_depth).fullmatch(brackets) is None:
        # Deeper than allowed, or unbalanced (not JSON either way).
        raise TrackerError(f"JSON nested deeper than {max_depth} levels, or unbalanced")


# ------------------------------------------------------------------------------ value checks


def _missing(what: str) -> TrackerError:
    return TrackerError(f"missing {what}")


def _obj(value: Any, what: str) -> dict[str, Any]:
    if type(value) is dict:
        return value
    if value is None:
        raise _missing(what)
    raise TrackerError(f"{what} must be a JSON object")


def _items(value: Any, what: str, limit: int, single: bool = False) -> list[Any]:
    """The elements of a grammar array (``<n..*>``), at most ``limit``; absent is empty.
    ``single`` also takes one bare object for an array of one, as the RFC's examples write."""
    if type(value) is list:
        if len(value) > limit:
            raise TrackerError(f"more than {limit} {what} elements")
        return value
    if value is None:
        return []
    if single and type(value) is dict:
        return [value]
    raise TrackerError(f"{what} must be a JSON array")


def _valid_text(value: str) -> bool:
    # Lone surrogates (JSON's "\ud800") are not Unicode text and cannot be re-encoded.
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(value: Any, what: str, max_length: int) -> str:
    if type(value) is str and len(value) <= max_length and (value.isascii() or _valid_text(value)):
        return value
    if value is None:
        raise _missing(what)
    if type(value) is str and len(value) > max_length:
        raise TrackerError(f"{what} longer than {max_length} characters")
    raise TrackerError(f"{what} must be a string")


def _ident(value: Any, what: str, max_length: int) -> str:
    """§3.1 IDs (peer ID, swarm ID, transaction ID): non-empty strings."""
    # The common case inline: a batch report carries 20,000 of them.
    if type(value) is str and 0 < len(value) <= max_length and value.isascii():
        return value
    text = _text(value, what, max_length)
    if not text:
        raise TrackerError(f"{what} is empty")
    return text


def _opt_text(value: Any, what: str, max_length: int) -> str | None:
    return None if value is None else _text(value, what, max_length)


_HEX_INT: Final = re.compile(r"0[xX][0-9a-fA-F]{1,16}")


def _int(value: Any, what: str, low: int, high: int) -> int:
    """A ppsp_tp_integer_t in [low, high]. The RFC's examples also write integers as strings
    ("concurrent_links": "5") and its grammar response types as 0x00, so digit strings and
    0x-hex strings count; booleans and fractions do not."""
    if type(value) is not int:
        if type(value) is str and 0 < len(value) <= 20 and value.isascii():
            if value.isdigit():
                value = int(value)
            elif _HEX_INT.fullmatch(value):
                value = int(value, 16)
        if type(value) is not int:
            if value is None:
                raise _missing(what)
            raise TrackerError(f"{what} must be an integer")
    if low <= value <= high:
        return value
    raise TrackerError(f"{what} = {value} out of range [{low}, {high}]")


def _opt_int(value: Any, what: str, high: int) -> int | None:
    return None if value is None else _int(value, what, 0, high)


def _seconds(value: Any, what: str, default: float) -> float:
    """A non-negative finite number (extension members that are not integral)."""
    if value is None:
        return default
    if (type(value) is int or type(value) is float) and 0 <= value <= _MAX_SECONDS:
        return float(value)
    raise TrackerError(f"{what} must be a number in [0, {_MAX_SECONDS:g}]")


E = TypeVar("E", bound=enum.Enum)


def _table(cls: type[E]) -> dict[str, E]:
    return {str(member.value): member for member in cls}


_ACTIONS: Final = _table(Action)
_PEER_MODES: Final = _table(PeerMode)
_ADDRESS_TYPES: Final = _table(AddressType)
_ROLES: Final = _table(Role)
_UNITS: Final = _table(HintUnit)
_REQUEST_TYPES: Final = _table(RequestType)
_IP_VERSIONS: Final = {"ipv4": 4, "ipv6": 6}  # §3.2.4 address_type


def _choice(value: Any, table: dict[str, E], what: str) -> E:
    """One of the grammar's enumerated strings. Case is forgiven (liberal in what we accept)."""
    if type(value) is str:
        member = table.get(value)
        if member is None and len(value) <= 32:
            member = table.get(value.upper())
        if member is not None:
            return member
    if value is None:
        raise _missing(what)
    raise TrackerError(f"{what} must be one of {', '.join(table)}")


def _opt_choice(value: Any, table: dict[str, E], what: str) -> E | None:
    return None if value is None else _choice(value, table, what)


def _ranges(value: Any, what: str, limits: JsonLimits) -> ChunkRanges:
    """Our chunk ranges: ``[[start, end], ...]``, inclusive (RFC 7574 §4), start <= end."""
    if type(value) is not list:
        raise TrackerError(f"{what} must be an array of [start, end] pairs")
    if len(value) > limits.max_ranges:
        raise TrackerError(f"more than {limits.max_ranges} {what}")
    ranges: ChunkRanges = []
    for pair in value:
        if type(pair) is not list or len(pair) != 2:
            raise TrackerError(f"{what} must be an array of [start, end] pairs")
        start, end = pair
        if type(start) is not int or type(end) is not int or not 0 <= start <= end <= _U64:
            raise TrackerError(f"{what}: bad chunk range {pair!r:.60}")
        ranges.append((start, end))
    return ranges


def _opt_ranges(value: Any, what: str, limits: JsonLimits) -> ChunkRanges | None:
    return None if value is None else _ranges(value, what, limits)


@lru_cache(maxsize=4096)
def _canonical_ip(address: str, version: int) -> str | None:
    """The address in its canonical form (RFC 5952 for IPv6), or None when it is not an
    address of that version. Scoped IPv6 addresses (a zone after '%') mean nothing to a peer
    elsewhere, so they are refused."""
    if "%" in address:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return str(ip) if ip.version == version else None


# ------------------------------------------------------------------------------ decoding


def _peek_transaction_id(msg: dict[str, Any], limits: JsonLimits) -> str | None:
    """The transaction ID, if readable, so that even an error response carries it (§4.3)."""
    tid = msg.get("transaction_id")
    if type(tid) is str and len(tid) <= limits.max_id_length and _valid_text(tid):
        return tid
    return None


def _check_version(msg: dict[str, Any]) -> None:
    # §3.2.1, §4.3: a version we do not speak is 02, checked before the rest because another
    # version may shape its messages differently.
    version = msg.get("version")
    if type(version) is not int:  # any JSON integer is a version number; strings must parse
        version = _int(version, "version", 0, _U64)
    if version != VERSION:
        raise TrackerError(f"unsupported PPSP-TP version {version}", ErrorCode.UNSUPPORTED_VERSION)


#: §3.3.3 Table 5 (plus our STAT_QUERY): the request_data member of each request_type.
_REQUEST_DATA: Final = {
    RequestType.CONNECT: "connect",
    RequestType.FIND: "find",
    RequestType.STAT_REPORT: "stat_report",
    RequestType.STAT_QUERY: X_STAT_QUERY,
}


def _request(msg: dict[str, Any], limits: JsonLimits) -> Request:
    raw_type = msg.get("request_type")
    if raw_type is None:
        raise _missing("request_type")
    request_type = _REQUEST_TYPES.get(raw_type) if type(raw_type) is str else None
    if request_type is None:
        raise TrackerError(f"§3.3.1: unknown request_type {raw_type!r:.40}")
    tid = _ident(msg.get("transaction_id"), "transaction_id", limits.max_id_length)
    peer_id = _ident(msg.get("peer_id"), "peer_id", limits.max_id_length)
    # Table 5: request_data must be the member of this request_type and no other.
    expected = _REQUEST_DATA[request_type]
    for member in _REQUEST_DATA.values():
        if member != expected and member in msg:
            raise TrackerError(f"§3.3.3 Table 5: {member} in a {request_type} request")
    if request_type is RequestType.FIND:
        return _find(msg, peer_id, tid, limits)
    if request_type is RequestType.CONNECT:
        return _connect(msg, peer_id, tid, limits)
    if request_type is RequestType.STAT_REPORT:
        return _stat_report(msg, peer_id, tid, limits)
    return _stat_query(msg, peer_id, tid, limits)


def _find(msg: dict[str, Any], peer_id: str, tid: str, limits: JsonLimits) -> Find:
    body = msg.get("find")
    # §3.3.3 puts swarm_id and peer_num in a "find" object; §4.1.2.1's example puts them
    # directly in the request. Read whichever is there.
    find = msg if body is None else _obj(body, "find")
    raw_peer_num = find.get("peer_num")
    return Find(
        peer_id,
        tid,
        _ident(find.get("swarm_id"), "swarm_id", limits.max_swarm_id_length),
        None if raw_peer_num is None else _peer_num(raw_peer_num, limits),
        _opt_text(msg.get(X_AREA), X_AREA, limits.max_string_length),
        _opt_ranges(msg.get(X_RANGES), X_RANGES, limits),
    )


def _connect(msg: dict[str, Any], peer_id: str, tid: str, limits: JsonLimits) -> Connect:
    connect = _obj(msg.get("connect"), "connect")
    raw_actions = connect.get("swarm_action")
    if raw_actions is None:
        raise _missing("swarm_action")
    # §3.3.3: swarm_action<1..*>; §4.1.1.1's second example writes a single object.
    actions = [
        _swarm_action(a, limits)
        for a in _items(raw_actions, "swarm_action", limits.max_swarm_actions, single=True)
    ]
    if not actions:
        raise TrackerError("§3.3.3: a CONNECT carries at least one swarm_action")
    raw_peer_num = connect.get("peer_num")
    # §3.3.3: peer_addr<1..*>; §4.1.1.1's first example writes a single object.
    addresses = [
        _peer_addr(a, limits)
        for a in _items(connect.get("peer_addr"), "peer_addr", limits.max_addresses, single=True)
    ]
    availability = [
        _availability(a, limits)
        for a in _items(msg.get(X_AVAILABILITY), X_AVAILABILITY, limits.max_availability)
    ]
    return Connect(
        peer_id,
        tid,
        actions,
        None if raw_peer_num is None else _peer_num(raw_peer_num, limits),
        addresses,
        _opt_choice(msg.get(X_ROLE), _ROLES, X_ROLE),
        _opt_text(msg.get(X_AREA), X_AREA, limits.max_string_length),
        availability,
    )


def _stat_report(msg: dict[str, Any], peer_id: str, tid: str, limits: JsonLimits) -> StatReport:
    stats: list[StreamStats] = []
    raw_group = msg.get("stat_report")
    # §4.1.3: no statistics group at all makes the STAT_REPORT a keep-alive.
    if raw_group is not None:
        group = _obj(raw_group, "stat_report")
        kind = _text(group.get("type"), "stat_report type", limits.max_string_length)
        # §4.1.3.1's example spells the member "Stat" and writes one object for stat<1..*>.
        raw_stats = group["stat"] if "stat" in group else group.get("Stat")
        if raw_stats is None:
            raise _missing("stat")
        items = _items(raw_stats, "stat", limits.max_stats, single=True)
        # §3.2.5: other property types may be defined; one we do not know is skipped, like an
        # unknown member (§4.4), and the report still counts as a keep-alive.
        if kind == "STREAM_STATS":
            if not items:
                raise TrackerError("§3.2.5: stat<1..*> is empty")
            stats = [_stream_stats(s, limits) for s in items]
    availability = [
        _availability(a, limits)
        for a in _items(msg.get(X_AVAILABILITY), X_AVAILABILITY, limits.max_availability)
    ]
    deltas = [_delta(d, limits) for d in _items(msg.get(X_DELTAS), X_DELTAS, limits.max_deltas)]
    return StatReport(peer_id, tid, stats, availability, deltas)


def _stat_query(msg: dict[str, Any], peer_id: str, tid: str, limits: JsonLimits) -> StatQuery:
    raw_query = msg.get(X_STAT_QUERY)
    swarm_ids: list[str] = []
    if raw_query is not None:
        query = _obj(raw_query, X_STAT_QUERY)
        swarm_ids = [
            _ident(s, "swarm_id", limits.max_swarm_id_length)
            for s in _items(query.get("swarm_id"), "swarm_id", limits.max_query_swarms)
        ]
    return StatQuery(peer_id, tid, swarm_ids)


def _response(msg: dict[str, Any], limits: JsonLimits) -> Response:
    response_type = ResponseType(_int(msg.get("response_type"), "response_type", 0, 1))
    error_code = ErrorCode(_int(msg.get("error_code"), "error_code", 0, _MAX_ERROR_CODE))
    if response_type is ResponseType.SUCCESSFUL and error_code is not ErrorCode.NO_ERROR:
        raise TrackerError("§3.3.4: a SUCCESSFUL response has error_code 00")
    # A tracker that could not read the request's transaction ID answers with an empty one.
    tid = _text(msg.get("transaction_id"), "transaction_id", limits.max_id_length)
    raw_address = msg.get("peer_addr")
    peer_address = None
    if raw_address is not None:
        addresses = _items(raw_address, "peer_addr", limits.max_addresses, single=True)
        if not addresses:
            raise TrackerError("empty peer_addr")
        peer_address = _peer_addr(addresses[0], limits)
    # §3.3.4: swarm_result<1..*>; every example in §4.1 writes a single object.
    results = [
        _swarm_result(r, limits)
        for r in _items(msg.get("swarm_result"), "swarm_result", limits.max_swarm_results, True)
    ]
    hints = [
        _push_hint(h, limits)
        for h in _items(msg.get(X_PUSH_HINTS), X_PUSH_HINTS, limits.max_push_hints)
    ]
    info = [
        _popularity(p, limits)
        for p in _items(msg.get(X_GLOBAL_INFO), X_GLOBAL_INFO, limits.max_global_info)
    ]
    return Response(tid, response_type, error_code, peer_address, results, hints, info)


def _peer_num(value: Any, limits: JsonLimits) -> PeerNum:
    """§3.2.2; the examples write all but peer_count as strings."""
    num = _obj(value, "peer_num")
    return PeerNum(
        _int(num.get("peer_count"), "peer_count", 0, _U32),
        _opt_text(num.get("ability_nat"), "ability_nat", limits.max_string_length),
        _opt_int(num.get("concurrent_links"), "concurrent_links", _I64),
        _opt_int(num.get("online_time"), "online_time", _I64),
        _opt_int(num.get("upload_bandwidth"), "upload_bandwidth", _I64),
    )


def _swarm_action(value: Any, limits: JsonLimits) -> SwarmAction:
    """§3.2.3."""
    action = _obj(value, "swarm_action")
    return SwarmAction(
        _ident(action.get("swarm_id"), "swarm_id", limits.max_swarm_id_length),
        _choice(action.get("action"), _ACTIONS, "action"),
        _choice(action.get("peer_mode"), _PEER_MODES, "peer_mode"),
    )


def _peer_addr(value: Any, limits: JsonLimits) -> PeerAddress:
    """§3.2.4 ppsp_tp_peer_addr_t. ``type`` is mandatory in the grammar but missing from
    §4.1.1.1's response example; absent, it is HOST."""
    addr = _obj(value, "peer_addr")
    ip_address = _obj(addr.get("ip_address"), "ip_address")
    raw_type = ip_address.get("address_type")
    version = _IP_VERSIONS.get(raw_type.lower()) if type(raw_type) is str else None
    if version is None:
        raise TrackerError("§3.2.4: address_type must be ipv4 or ipv6")
    raw_ip = ip_address.get("address")
    ip = _canonical_ip(raw_ip, version) if type(raw_ip) is str and len(raw_ip) <= 64 else None
    if ip is None:
        raise TrackerError(f"§3.2.4: address {raw_ip!r:.70} is not an {raw_type} address")
    raw_kind = addr.get("type")
    raw_asn = addr.get("asn")
    return PeerAddress(
        ip,
        _int(addr.get("port"), "port", 0, _U16),
        _int(addr.get("priority"), "priority", 0, _U32),
        AddressType.HOST if raw_kind is None else _choice(raw_kind, _ADDRESS_TYPES, "type"),
        _opt_text(addr.get("connection"), "connection", limits.max_string_length),
        # An AS number is a number; the grammar makes asn a string. Take both.
        str(raw_asn)
        if type(raw_asn) is int and 0 <= raw_asn <= _U32
        else _opt_text(raw_asn, "asn", limits.max_string_length),
        _opt_text(addr.get("peer_protocol"), "peer_protocol", limits.max_string_length),
    )


def _stream_stats(value: Any, limits: JsonLimits) -> StreamStats:
    """§3.2.5 stream_stats: every member is mandatory."""
    stat = _obj(value, "stat")
    return StreamStats(
        _ident(stat.get("swarm_id"), "swarm_id", limits.max_swarm_id_length),
        _int(stat.get("uploaded_bytes"), "uploaded_bytes", 0, _I64),
        _int(stat.get("downloaded_bytes"), "downloaded_bytes", 0, _I64),
        _int(stat.get("available_bandwidth"), "available_bandwidth", 0, _I64),
        _int(stat.get("concurrent_links"), "concurrent_links", 0, _I64),
    )


def _swarm_result(value: Any, limits: JsonLimits) -> SwarmResult:
    """§3.3.4 ppsp_tp_swarm_action_result_t."""
    result = _obj(value, "swarm_result")
    raw_group = result.get("peer_group")
    return SwarmResult(
        _ident(result.get("swarm_id"), "swarm_id", limits.max_swarm_id_length),
        ResponseType(_int(result.get("result"), "result", 0, 1)),
        None if raw_group is None else _peer_group(raw_group, limits),
    )


def _peer_group(value: Any, limits: JsonLimits) -> list[PeerInfo]:
    """§3.2.4 ppsp_tp_peer_group_t. A peer_info carries one peer_addr, so a peer with several
    addresses comes as several peer_info elements with its peer ID: they are merged, in order
    of first appearance. An empty peer_info array is how we say "no peers" (a FIND response
    MUST have a peer_group, §4.1.2) and is accepted although the grammar says <1..*>."""
    group = _obj(value, "peer_group")
    raw_infos = group.get("peer_info")
    if raw_infos is None:
        raise _missing("peer_info")
    peers: dict[str, PeerInfo] = {}
    for raw in _items(raw_infos, "peer_info", limits.max_peers, single=True):
        info = _peer_info(raw, limits)
        known = peers.get(info.peer_id)
        if known is None:
            peers[info.peer_id] = info
            continue
        known.addresses.extend(info.addresses)
        if len(known.addresses) > limits.max_addresses:
            raise TrackerError(f"more than {limits.max_addresses} addresses for one peer")
        if known.role is None:
            known.role = info.role
        if known.area is None:
            known.area = info.area
        if known.ranges is None:
            known.ranges = info.ranges
    return list(peers.values())


def _peer_info(value: Any, limits: JsonLimits) -> PeerInfo:
    """§3.2.4 ppsp_tp_peer_info_t (one peer_addr in the grammar; an array is accepted too),
    with our role, area and chunk ranges."""
    info = _obj(value, "peer_info")
    raw_addresses = info.get("peer_addr")
    if raw_addresses is None:
        raise _missing("peer_addr of a peer_info")
    addresses = [
        _peer_addr(a, limits)
        for a in _items(raw_addresses, "peer_addr", limits.max_addresses, single=True)
    ]
    if not addresses:
        raise TrackerError("§3.2.4: a peer_info has a peer_addr")
    return PeerInfo(
        _ident(info.get("peer_id"), "peer_id", limits.max_id_length),
        addresses,
        _opt_choice(info.get(X_ROLE), _ROLES, X_ROLE),
        _opt_text(info.get(X_AREA), X_AREA, limits.max_string_length),
        _opt_ranges(info.get(X_RANGES), X_RANGES, limits),
    )


def _availability(value: Any, limits: JsonLimits) -> SwarmAvailability:
    entry = _obj(value, X_AVAILABILITY)
    raw_mode = entry.get("peer_mode")
    raw_role = entry.get("role")
    raw_ranges = entry.get("ranges")
    return SwarmAvailability(
        _ident(entry.get("swarm_id"), "swarm_id", limits.max_swarm_id_length),
        PeerMode.SEEDER if raw_mode is None else _choice(raw_mode, _PEER_MODES, "peer_mode"),
        Role.CACHER if raw_role is None else _choice(raw_role, _ROLES, "role"),
        [] if raw_ranges is None else _ranges(raw_ranges, "ranges", limits),
    )


def _delta(value: Any, limits: JsonLimits) -> AvailabilityDelta:
    entry = _obj(value, X_DELTAS)
    cached = entry.get("cached")
    evicted = entry.get("evicted")
    return AvailabilityDelta(
        _ident(entry.get("swarm_id"), "swarm_id", limits.max_swarm_id_length),
        [] if cached is None else _ranges(cached, "cached", limits),
        [] if evicted is None else _ranges(evicted, "evicted", limits),
    )


def _push_hint(value: Any, limits: JsonLimits) -> PushHint:
    hint = _obj(value, X_PUSH_HINTS)
    start = _int(hint.get("head_start"), "head_start", 0, _U64)
    end = _int(hint.get("head_end"), "head_end", 0, _U64)
    if end < start:
        raise TrackerError("push hint head_end before head_start")
    raw_unit = hint.get("unit")
    return PushHint(
        _ident(hint.get("swarm_id"), "swarm_id", limits.max_swarm_id_length),
        start,
        end,
        HintUnit.CHUNKS if raw_unit is None else _choice(raw_unit, _UNITS, "unit"),
        _opt_int(hint.get("priority"), "priority", _U32) or 0,
        _seconds(hint.get("expires_in"), "expires_in", 60.0),
    )


def _popularity(value: Any, limits: JsonLimits) -> SwarmPopularity:
    entry = _obj(value, X_GLOBAL_INFO)
    rarest = entry.get("rarest")
    return SwarmPopularity(
        _ident(entry.get("swarm_id"), "swarm_id", limits.max_swarm_id_length),
        _opt_int(entry.get("viewers"), "viewers", _I64) or 0,
        _seconds(entry.get("join_rate"), "join_rate", 0.0),
        [] if rarest is None else _ranges(rarest, "rarest", limits),
    )


# ------------------------------------------------------------------------------ encoding


def _request_head(req: Request) -> str:
    return (
        f'{{"{ROOT}":{{"version":{req.version:d},'
        f'"request_type":"{_REQUEST_TYPE_OF[type(req)]}",'
        f'"transaction_id":{_str(req.transaction_id)},"peer_id":{_str(req.peer_id)}'
    )


_REQUEST_TYPE_OF: Final[dict[type, RequestType]] = {
    Connect: RequestType.CONNECT,
    Find: RequestType.FIND,
    StatReport: RequestType.STAT_REPORT,
    StatQuery: RequestType.STAT_QUERY,
}


def _peer_num_text(num: PeerNum) -> str:
    out: dict[str, Any] = {"peer_count": num.peer_count}
    if num.ability_nat is not None:
        out["ability_nat"] = num.ability_nat
    if num.concurrent_links is not None:
        out["concurrent_links"] = num.concurrent_links
    if num.online_time is not None:
        out["online_time"] = num.online_time
    if num.upload_bandwidth is not None:
        out["upload_bandwidth"] = num.upload_bandwidth
    return _json(out)


def _peer_addr_text(addr: PeerAddress) -> str:
    """§3.2.4 ppsp_tp_peer_addr_t; address_type follows from the address."""
    address_type = "ipv6" if ":" in addr.ip else "ipv4"
    text = (
        f'{{"ip_address":{{"address_type":"{address_type}","address":{_str(addr.ip)}}},'
        f'"port":{addr.port:d},"priority":{addr.priority:d},"type":{_str(addr.type)}'
    )
    if addr.connection is not None:
        text += ',"connection":' + _str(addr.connection)
    if addr.asn is not None:
        text += ',"asn":' + _str(addr.asn)
    if addr.peer_protocol is not None:
        text += ',"peer_protocol":' + _str(addr.peer_protocol)
    return text + "}"


def _swarm_result_text(result: SwarmResult, memo: EncodeMemo | None = None) -> str:
    text = f'{{"swarm_id":{_str(result.swarm_id)},"result":{result.result:d}'
    if result.peers is None:
        return text + "}"
    if memo is None:
        infos = [_peer_info_text(peer) for peer in result.peers]
    else:
        infos = [memo.text(peer) for peer in result.peers]
    return text + ',"peer_group":{"peer_info":[' + ",".join(infos) + "]}}"


def _peer_info_text(peer: PeerInfo) -> str:
    """A peer's peer_info elements, comma-separated: the grammar's peer_info has one
    peer_addr, so one element per address, with our extension members on the first."""
    if not peer.addresses:
        raise TrackerError(
            f"§3.2.4: peer {peer.peer_id} has no address to list",
            ErrorCode.INTERNAL_SERVER_ERROR,
        )
    peer_id = _str(peer.peer_id)
    first = f'{{"peer_id":{peer_id},"peer_addr":{_peer_addr_text(peer.addresses[0])}'
    if peer.role is not None:
        first += f',"{X_ROLE}":' + _str(peer.role)
    if peer.area is not None:
        first += f',"{X_AREA}":' + _str(peer.area)
    if peer.ranges is not None:
        first += f',"{X_RANGES}":' + _json(peer.ranges)
    infos = [first + "}"]
    for addr in peer.addresses[1:]:
        infos.append(f'{{"peer_id":{peer_id},"peer_addr":{_peer_addr_text(addr)}}}')
    return ",".join(infos)


def _availability_text(entries: list[SwarmAvailability]) -> str:
    return _json(
        [
            {"swarm_id": e.swarm_id, "peer_mode": e.peer_mode, "role": e.role, "ranges": e.ranges}
            for e in entries
        ]
    )
