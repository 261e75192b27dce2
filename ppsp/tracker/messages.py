"""The PPSP-TP message model (RFC 7846 §3, §4), shared by both encodings.

The JSON codec (:mod:`ppsp.tracker.json_codec`, RFC 7846 exactly) and the binary codec
(:mod:`ppsp.tracker.binary`, draft-gu-02's header with TLV bodies, DESIGN §4) both decode to and
encode from these classes; the sans-IO tracker (:mod:`ppsp.tracker.state`) sees nothing else.

Identifiers are the RFC's opaque strings (§3.1: peer IDs and swarm IDs are strings; ours are a
UUID for peers and the lowercase hex of the PPSPP swarm ID for swarms, see :func:`swarm_id_hex`).
Chunk ranges are inclusive ``(start, end)`` pairs of chunk numbers (RFC 7574 §4).

Our extensions (the P2P CDN of DESIGN §1; a plain RFC 7846 tracker ignores them, §4.4):
availability reports (batch and incremental), the tracker's push hints and global information,
the stat query, and each peer's role and area.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

#: RFC 7846 §3.2 Table 2: the protocol version.
VERSION = 1

ChunkRanges = list[tuple[int, int]]


class TrackerError(ValueError):
    """A message that cannot be decoded or is not valid PPSP-TP; ``code`` is the RFC 7846
    error code (§4.3) to answer with, normally 01 Bad Request. ``transaction_id`` is the
    request's transaction ID when the decoder got that far, so the error response can carry it
    (§4.1.1: responses use the same transaction_id as the request)."""

    def __init__(
        self, message: str, code: ErrorCode | None = None, transaction_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code if code is not None else ErrorCode.BAD_REQUEST
        self.transaction_id = transaction_id


class RequestType(enum.StrEnum):
    """RFC 7846 §3.3 Table 5, plus our stat query (an extension request type)."""

    CONNECT = "CONNECT"
    FIND = "FIND"
    STAT_REPORT = "STAT_REPORT"
    STAT_QUERY = "STAT_QUERY"  # extension: asks the tracker for global info


class ResponseType(enum.IntEnum):
    """RFC 7846 §3.3: response_type."""

    SUCCESSFUL = 0
    FAILED = 1


class ErrorCode(enum.IntEnum):
    """RFC 7846 §4.3 and §8.4 Table 9."""

    NO_ERROR = 0
    BAD_REQUEST = 1
    UNSUPPORTED_VERSION = 2
    FORBIDDEN_ACTION = 3
    INTERNAL_SERVER_ERROR = 4
    SERVICE_UNAVAILABLE = 5
    AUTHENTICATION_REQUIRED = 6


class Action(enum.StrEnum):
    """RFC 7846 §3.2: swarm_action action."""

    JOIN = "JOIN"
    LEAVE = "LEAVE"


class PeerMode(enum.StrEnum):
    """RFC 7846 §3.2: peer_mode."""

    SEEDER = "SEEDER"
    LEECH = "LEECH"


class AddressType(enum.StrEnum):
    """RFC 7846 §3.2 Table 3: peer_addr type."""

    HOST = "HOST"
    REFLEXIVE = "REFLEXIVE"
    PROXY = "PROXY"


class Role(enum.StrEnum):
    """Extension: what a peer is in the P2P CDN (DESIGN §1)."""

    SOURCE = "SOURCE"
    CACHER = "CACHER"
    CSC = "CSC"


class HintUnit(enum.StrEnum):
    """Extension: the unit of a push hint's head range."""

    CHUNKS = "CHUNKS"
    SECONDS = "SECONDS"


@dataclass(slots=True)
class PeerAddress:
    """RFC 7846 §3.2 ppsp_tp_peer_addr_t."""

    ip: str
    port: int
    priority: int = 0
    type: AddressType = AddressType.HOST
    connection: str | None = None  # "wireless" / "wired"
    asn: str | None = None
    peer_protocol: str | None = None  # e.g. "PPSP-PP"


@dataclass(slots=True)
class PeerNum:
    """RFC 7846 §3.2 ppsp_tp_peer_num_t: how many peers the requester wants, and about it."""

    peer_count: int
    ability_nat: str | None = None  # "NO_NAT" / "STUN" / "TURN"
    concurrent_links: int | None = None
    online_time: int | None = None
    upload_bandwidth: int | None = None


@dataclass(slots=True)
class SwarmAction:
    """RFC 7846 §3.2 ppsp_tp_swarm_action_t."""

    swarm_id: str
    action: Action
    peer_mode: PeerMode


@dataclass(slots=True)
class StreamStats:
    """RFC 7846 §3.2 ppsp_tp_stream_stats (STAT_REPORT type STREAM_STATS)."""

    swarm_id: str
    uploaded_bytes: int = 0
    downloaded_bytes: int = 0
    available_bandwidth: int = 0
    concurrent_links: int = 0


@dataclass(slots=True)
class SwarmAvailability:
    """Extension: what a peer holds of one swarm (batch availability report)."""

    swarm_id: str
    peer_mode: PeerMode = PeerMode.SEEDER
    role: Role = Role.CACHER
    ranges: ChunkRanges = field(default_factory=list)


@dataclass(slots=True)
class AvailabilityDelta:
    """Extension: incremental availability — chunks cached and evicted since the last report."""

    swarm_id: str
    cached: ChunkRanges = field(default_factory=list)
    evicted: ChunkRanges = field(default_factory=list)


@dataclass(slots=True)
class PeerInfo:
    """RFC 7846 §3.2 ppsp_tp_peer_info_t, with our extensions (role, area, chunk ranges)."""

    peer_id: str
    addresses: list[PeerAddress] = field(default_factory=list)
    role: Role | None = None
    area: str | None = None
    ranges: ChunkRanges | None = None


@dataclass(slots=True)
class SwarmResult:
    """RFC 7846 §3.3.4 ppsp_tp_swarm_action_result_t."""

    swarm_id: str
    result: ResponseType = ResponseType.SUCCESSFUL
    peers: list[PeerInfo] | None = None  # peer_group


@dataclass(slots=True)
class PushHint:
    """Extension (F4, DESIGN §1): tracker → cacher: prefetch the head of a hot swarm."""

    swarm_id: str
    head_start: int
    head_end: int
    unit: HintUnit = HintUnit.CHUNKS
    priority: int = 0
    expires_in: float = 60.0  # seconds from the message


@dataclass(slots=True)
class SwarmPopularity:
    """Extension (F5, DESIGN §1): tracker → cacher: how popular a swarm is, its rarest chunks."""

    swarm_id: str
    viewers: int = 0
    join_rate: float = 0.0  # joins per minute
    rarest: ChunkRanges = field(default_factory=list)


# ---------------------------------------------------------------------------- requests


@dataclass(slots=True)
class Connect:
    """CONNECT (RFC 7846 §4.1.1): register and JOIN / LEAVE swarms. With ``availability`` it is
    our batch availability report (one message for every swarm a cacher holds)."""

    peer_id: str
    transaction_id: str
    swarm_actions: list[SwarmAction]
    peer_num: PeerNum | None = None
    peer_addresses: list[PeerAddress] = field(default_factory=list)
    role: Role | None = None
    area: str | None = None
    availability: list[SwarmAvailability] = field(default_factory=list)
    version: int = VERSION


@dataclass(slots=True)
class Find:
    """FIND (RFC 7846 §4.1.2): a fresh peer list for one swarm; ``area`` and ``ranges`` (the
    chunks wanted) are our locality and availability hints."""

    peer_id: str
    transaction_id: str
    swarm_id: str
    peer_num: PeerNum | None = None
    area: str | None = None
    ranges: ChunkRanges | None = None
    version: int = VERSION


@dataclass(slots=True)
class StatReport:
    """STAT_REPORT (RFC 7846 §4.1.3): statistics, a keep-alive when empty. Extensions: a full
    availability snapshot (``availability``; replaces what the tracker knows) and
    incremental changes (``deltas``)."""

    peer_id: str
    transaction_id: str
    stats: list[StreamStats] = field(default_factory=list)
    availability: list[SwarmAvailability] = field(default_factory=list)
    deltas: list[AvailabilityDelta] = field(default_factory=list)
    version: int = VERSION


@dataclass(slots=True)
class StatQuery:
    """Extension: ask the tracker for global info on swarms (all it tracks when empty)."""

    peer_id: str
    transaction_id: str
    swarm_ids: list[str] = field(default_factory=list)
    version: int = VERSION


Request = Connect | Find | StatReport | StatQuery


@dataclass(slots=True)
class Response:
    """The tracker's answer (RFC 7846 §3.3.4, §4.2); extensions piggy-back push hints and
    global info for cachers."""

    transaction_id: str
    response_type: ResponseType = ResponseType.SUCCESSFUL
    error_code: ErrorCode = ErrorCode.NO_ERROR
    peer_address: PeerAddress | None = None  # the requester's reflexive address
    swarm_results: list[SwarmResult] = field(default_factory=list)
    push_hints: list[PushHint] = field(default_factory=list)
    global_info: list[SwarmPopularity] = field(default_factory=list)
    version: int = VERSION

    @classmethod
    def error(cls, transaction_id: str, code: ErrorCode) -> Response:
        """§4.3: an error is response_type FAILED with the code and no body."""
        return cls(transaction_id, ResponseType.FAILED, code)


# ---------------------------------------------------------------------------- tracker first


@dataclass(slots=True)
class PushHintMessage:
    """Extension, binary encoding only: the tracker speaks first (DESIGN §4)."""

    transaction_id: str
    hints: list[PushHint]


@dataclass(slots=True)
class GlobalInfoMessage:
    """Extension, binary encoding only: the tracker speaks first (DESIGN §4)."""

    transaction_id: str
    swarms: list[SwarmPopularity]


Message = Connect | Find | StatReport | StatQuery | Response | PushHintMessage | GlobalInfoMessage


def swarm_id_hex(swarm_id: bytes) -> str:
    """The PPSP-TP swarm ID string of a PPSPP swarm ID (its root hash or public key)."""
    return swarm_id.hex()
