"""hypothesis strategies building random valid PPSP-TP model objects (ppsp.tracker.messages).

Shared by the codec tests (JSON and binary) and anything else that wants random messages. The
values stay inside what every encoding carries: canonical IP addresses, IDs of 1..64
characters (any Unicode text without surrogates), chunk numbers below 2**32 (RFC 7574's default
32-bit chunk ranges), counters below 2**63, and fractions that are whole thousandths so that a
fixed-point encoding round-trips them too. Within one swarm result peer IDs are unique, and
every peer has at least one address, as the RFC 7846 grammar requires.
"""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from ppsp.tracker.messages import (
    Action,
    AddressType,
    AvailabilityDelta,
    ChunkRanges,
    Connect,
    ErrorCode,
    Find,
    GlobalInfoMessage,
    HintUnit,
    PeerAddress,
    PeerInfo,
    PeerMode,
    PeerNum,
    PushHint,
    PushHintMessage,
    Request,
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
)

MAX_CHUNK = 2**32 - 1
MAX_COUNTER = 2**63 - 1

#: Unicode text that UTF-8 can carry (no lone surrogates).
_TEXT_CHARS = st.characters(exclude_categories=["Cs"])

ids = st.text(_TEXT_CHARS, min_size=1, max_size=64)
#: swarm IDs as the system makes them: hex of a SHA-256 root hash, or anything else.
swarm_ids = st.one_of(
    st.binary(min_size=32, max_size=32).map(bytes.hex),
    st.text("0123456789abcdef", min_size=1, max_size=130),
    ids,
)
short_text = st.text(_TEXT_CHARS, max_size=32)
counters = st.integers(0, MAX_COUNTER)
thousandths = st.integers(0, 10**8).map(lambda n: n / 1000)

ips = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: str(ipaddress.IPv6Address(int(ip)))),
)


@st.composite
def chunk_ranges(draw: st.DrawFn, max_size: int = 8, max_chunk: int = MAX_CHUNK) -> ChunkRanges:
    """Inclusive (start, end) pairs, start <= end (not necessarily sorted or disjoint)."""
    pairs = draw(
        st.lists(st.tuples(st.integers(0, max_chunk), st.integers(0, max_chunk)), max_size=max_size)
    )
    return [(min(a, b), max(a, b)) for a, b in pairs]


peer_addresses = st.builds(
    PeerAddress,
    ip=ips,
    port=st.integers(0, 65535),
    priority=st.integers(0, 2**32 - 1),
    type=st.sampled_from(AddressType),
    connection=st.none() | st.sampled_from(["wired", "wireless"]) | short_text,
    asn=st.none() | st.integers(0, 2**32 - 1).map(str) | short_text,
    peer_protocol=st.none() | st.just("PPSP-PP") | short_text,
)

peer_nums = st.builds(
    PeerNum,
    peer_count=st.integers(0, 100),
    ability_nat=st.none() | st.sampled_from(["NO_NAT", "STUN", "TURN"]),
    concurrent_links=st.none() | st.integers(0, 10_000),
    online_time=st.none() | counters,
    upload_bandwidth=st.none() | counters,
)

swarm_actions = st.builds(
    SwarmAction,
    swarm_id=swarm_ids,
    action=st.sampled_from(Action),
    peer_mode=st.sampled_from(PeerMode),
)

stream_stats = st.builds(
    StreamStats,
    swarm_id=swarm_ids,
    uploaded_bytes=counters,
    downloaded_bytes=counters,
    available_bandwidth=counters,
    concurrent_links=st.integers(0, 10_000),
)

swarm_availabilities = st.builds(
    SwarmAvailability,
    swarm_id=swarm_ids,
    peer_mode=st.sampled_from(PeerMode),
    role=st.sampled_from(Role),
    ranges=chunk_ranges(),
)

availability_deltas = st.builds(
    AvailabilityDelta,
    swarm_id=swarm_ids,
    cached=chunk_ranges(),
    evicted=chunk_ranges(),
)

peer_infos = st.builds(
    PeerInfo,
    peer_id=ids,
    addresses=st.lists(peer_addresses, min_size=1, max_size=3),
    role=st.none() | st.sampled_from(Role),
    area=st.none() | short_text,
    ranges=st.none() | chunk_ranges(),
)

swarm_results = st.builds(
    SwarmResult,
    swarm_id=swarm_ids,
    result=st.sampled_from(ResponseType),
    peers=st.none() | st.lists(peer_infos, max_size=5, unique_by=lambda p: p.peer_id),
)


@st.composite
def push_hints(draw: st.DrawFn) -> PushHint:
    start, end = sorted(draw(st.tuples(st.integers(0, MAX_CHUNK), st.integers(0, MAX_CHUNK))))
    return PushHint(
        swarm_id=draw(swarm_ids),
        head_start=start,
        head_end=end,
        unit=draw(st.sampled_from(HintUnit)),
        priority=draw(st.integers(0, 255)),
        expires_in=draw(st.integers(0, 86_400_000).map(lambda n: n / 1000)),
    )


swarm_popularities = st.builds(
    SwarmPopularity,
    swarm_id=swarm_ids,
    viewers=st.integers(0, 2**32 - 1),
    join_rate=thousandths,
    rarest=chunk_ranges(),
)

_transaction_ids = ids

connects = st.builds(
    Connect,
    peer_id=ids,
    transaction_id=_transaction_ids,
    swarm_actions=st.lists(swarm_actions, min_size=1, max_size=5),
    peer_num=st.none() | peer_nums,
    peer_addresses=st.lists(peer_addresses, max_size=3),
    role=st.none() | st.sampled_from(Role),
    area=st.none() | short_text,
    availability=st.lists(swarm_availabilities, max_size=4),
)

finds = st.builds(
    Find,
    peer_id=ids,
    transaction_id=_transaction_ids,
    swarm_id=swarm_ids,
    peer_num=st.none() | peer_nums,
    area=st.none() | short_text,
    ranges=st.none() | chunk_ranges(),
)

stat_reports = st.builds(
    StatReport,
    peer_id=ids,
    transaction_id=_transaction_ids,
    stats=st.lists(stream_stats, max_size=4),
    availability=st.lists(swarm_availabilities, max_size=3),
    deltas=st.lists(availability_deltas, max_size=3),
)

stat_queries = st.builds(
    StatQuery,
    peer_id=ids,
    transaction_id=_transaction_ids,
    swarm_ids=st.lists(swarm_ids, max_size=5),
)

requests: st.SearchStrategy[Request] = st.one_of(connects, finds, stat_reports, stat_queries)


@st.composite
def responses(draw: st.DrawFn) -> Response:
    """Successful responses with any body, and §4.3 error responses (FAILED, no body)."""
    if draw(st.booleans()):
        code = draw(st.sampled_from([c for c in ErrorCode if c is not ErrorCode.NO_ERROR]))
        return Response.error(draw(_transaction_ids), code)
    return Response(
        transaction_id=draw(_transaction_ids),
        response_type=ResponseType.SUCCESSFUL,
        error_code=ErrorCode.NO_ERROR,
        peer_address=draw(st.none() | peer_addresses),
        swarm_results=draw(st.lists(swarm_results, max_size=3)),
        push_hints=draw(st.lists(push_hints(), max_size=3)),
        global_info=draw(st.lists(swarm_popularities, max_size=3)),
    )


push_hint_messages = st.builds(
    PushHintMessage,
    transaction_id=_transaction_ids,
    hints=st.lists(push_hints(), min_size=1, max_size=4),
)

global_info_messages = st.builds(
    GlobalInfoMessage,
    transaction_id=_transaction_ids,
    swarms=st.lists(swarm_popularities, min_size=1, max_size=4),
)
