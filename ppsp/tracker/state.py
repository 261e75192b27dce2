"""The sans-IO PPSP tracker: RFC 7846 §2.3 state machines and our P2P CDN policies.

No sockets, no asyncio: the daemon feeds :meth:`Tracker.handle` one decoded request with the
address it came from and the time (seconds, any monotonic origin), sends back the
:class:`~ppsp.tracker.messages.Response`, drives :meth:`Tracker.next_timer` /
:meth:`Tracker.handle_timer`, and sends what :meth:`Tracker.pop_outgoing` returns (push hints
and global info: the tracker speaks first, binary transports only). JSON peers get their hints
piggy-backed through :meth:`Tracker.hints_for`.

State machines (§2.3)
---------------------
The tracker is INIT without peers, STARTED with at least one; it passes through TERMINATED
when the last peer ID goes (§2.3, Figure 4; counted in :meth:`Tracker.stats`).

Per peer ID (§2.3, Figure 5), START and TERMINATE are transient; a record exists only in PEER
REGISTERED or TRACKING:

* A CONNECT from an unknown peer ID is START: the peer is registered and the *init timer*
  starts. If the CONNECT carries valid swarm actions they are applied, the init timer stops,
  the *track timer* starts and the peer is TRACKING (§2.3.1 step 2a). A CONNECT without swarm
  actions (our model allows an empty list: a cacher with an empty cache registers to get push
  hints) leaves it in PEER REGISTERED until a valid CONNECT, FIND, STAT_REPORT or stat query
  moves it to TRACKING (step 2b) or the init timer expires (the registration is deleted).
* In TRACKING, every valid request resets the track timer (steps 3, 4); its expiry removes
  the peer from every swarm and deletes the registration (§2.3.2 D).
* (A) A CONNECT in PEER REGISTERED (or from START) with only invalid swarm actions gets the
  error code of its first invalid action and the registration is deleted.
* (B) FIND, STAT_REPORT or a stat query from an unregistered peer ID, or a malformed peer ID,
  gets :attr:`TrackerConfig.unregistered_error` (03 Forbidden Action by default; 06
  Authentication Required is the RFC's other choice — the daemon does authentication).
* (C) In TRACKING, a CONNECT with only invalid swarm actions, or a FIND / STAT_REPORT naming a
  swarm that is not valid (FIND: a swarm the tracker does not track; STAT_REPORT: stats for a
  swarm the peer is not in), gets 03 and the peer stays TRACKING; its timer is not reset.
  The same holds for such a FIND in PEER REGISTERED (§2.3.2 does not cover it).
* A CONNECT with some valid and some invalid actions is SUCCESSFUL: the valid ones are
  applied and each invalid one gets ``result`` FAILED in its swarm_result (§3.3.4).
* Request version ≠ 1 → 02 (§4.3).

Table 6 (§4.1.1), how each row is treated. The rows are judged per peer_mode over the
CONNECT's swarm actions; "START" means no registration or PEER REGISTERED (no swarms yet):

* 1 LEECH JOIN from START → valid, TRACKING, answer with a peer list.
* 1 LEECH LEAVE from START, or LEECH JOIN + LEAVE from START → invalid (03).
* 1 LEECH LEAVE from TRACKING → valid; a peer left in no swarm is TERMINATEd (the row's
  final state): its registration is deleted.
* LEECH LEAVE old + JOIN new from TRACKING → the channel switch, valid, applied as LEAVE then
  JOIN in this one CONNECT; answered with a peer list for the new swarm (§4.1.1.1). Any other
  LEECH combination (two JOINs, a JOIN without a LEAVE while TRACKING, leaving a swarm the peer
  is not in, joining one it is in) makes every LEECH action of the CONNECT invalid (03).
* N SEEDER JOIN from START → valid: this *is* the batch registration of a seeder or a
  reconnecting cacher. A peer whose registration the tracker lost (timeout, tracker restart)
  is at START again, so its reconnect is this row. Peer lists only if peer_num is given.
* N SEEDER JOIN while TRACKING → invalid (03), as the table says. A cacher that is TRACKING and
  wants to add swarms or resynchronise everything it holds sends a STAT_REPORT with
  ``availability`` (full snapshot) or ``deltas``; those are availability reports, not swarm
  actions, and may add swarms while TRACKING (below).
* N SEEDER LEAVE from TRACKING → valid; as for LEECH, a peer left in no swarm is deleted.
* A CONNECT mixing both modes is valid where each mode's part is (e.g. 1 LEECH JOIN + N SEEDER
  JOIN from START).

Our extensions (a plain RFC 7846 peer never sends them):

* ``Connect.availability`` (batch availability report): an entry whose swarm is JOINed by an
  action of the same CONNECT gives that swarm's chunk ranges (the action's peer_mode wins);
  from START an entry without an action is an implicit JOIN in its peer_mode; while TRACKING
  such an entry is Table 6's "SEEDER JOIN while TRACKING" and is invalid (03, FAILED result).
* ``StatReport.availability`` is a full snapshot and replaces what the tracker knows: listed
  swarms get exactly the listed ranges (joined if the peer was not in them); a SEEDER
  membership not listed is left (a seeder claims to hold content and the snapshot withdraws
  the claim); a LEECH membership not listed stays, with no chunks (it still watches).
  An empty list means "no snapshot", not "holds nothing".
* ``StatReport.deltas``: ``cached`` ranges are added, ``evicted`` removed; ``cached`` for a
  swarm the peer is not in joins it as SEEDER. A SEEDER that holds nothing afterwards leaves.
  Reports never TERMINATE a registration: a cacher with an empty cache stays for push hints.
* An entry with no ranges means "not enumerated": like a plain RFC seeder, the peer is
  presumed to hold everything if SEEDER (it is not a chunk holder for FIND, not counted for
  rarest chunks). The first delta for such a membership starts exact tracking from nothing.
* Role is per peer (``Connect.role``); an availability entry's role only names the peer's role
  when it has declared none. Area is per peer (``Connect.area``); ``Find.area`` overrides it
  for that FIND.
* Viewers of a swarm are its LEECH members whose role is neither CACHER nor SOURCE; the join
  rate counts viewer joins only (a cacher's batch reconnect is no sign of popularity).

Replayed transaction IDs (§4.3): a request with a (peer ID, transaction ID) seen within
:attr:`TrackerConfig.transaction_window` gets the identical Response object again and no state
changes; a *different* request reusing the pair gets 01 (§4.3 allows reuse only for identical
content). Responses returned by :meth:`Tracker.handle` are shared with that cache and with
peer lists: treat them as read-only (use :func:`dataclasses.replace` to add hints). A listed
peer's PeerInfo is one object until the peer changes (then it gets a new one), which lets the
daemon encode it once (:class:`ppsp.tracker.binary.EncodeMemo`). The tracker never mutates a
request either, so requests may share parts (:class:`ppsp.tracker.binary.DecodeMemo`).

Peer selection for FIND (§4.1.2 leaves it to the tracker): same-area cachers first, then peers
holding the requested chunk ranges (most overlapping chunks first), then the others, seeders
before leechers and same-area peers first in each; never the requester; at most
``min(peer_num.peer_count, max_find_peers)``.
Each group is walked from an offset drawn from the injected :class:`random.Random`, which
spreads load over the swarm and breaks ties deterministically for a seeded generator. For
speed the chunk holders examined are at most :attr:`TrackerConfig.find_scan_limit` per FIND
(all of them in swarms that small; otherwise a window at a random offset). When all of them
are examined, their ranking for the wanted ranges is kept until a holder joins, leaves or
reports other chunks (FINDs for the head of a VoD swarm or the live edge want the same chunks);
the answers are exactly those of ranking afresh. The same peer list answers a LEECH JOIN
(without chunk ranges). A listed peer carries its peer ID, its declared
addresses (or, if it declared none, the address its CONNECT came from, type REFLEXIVE), role
and area; not its chunk ranges, which PPSPP's HAVE messages give the requester anyway.

Popularity and global info (F5): per swarm, its viewers, the join rate (viewer joins per
minute over :attr:`TrackerConfig.popularity_window`) and its rarest chunks. These come from a
per-swarm coverage map (chunk boundary → change in the number of holders) kept up to date on
every availability change, so a query is one sorted sweep over the boundaries, cached until
the swarm's availability changes; peers whose chunks are not enumerated do not count. Every
:attr:`TrackerConfig.global_info_interval` each registered cacher gets a GlobalInfoMessage:
its area's top K swarms, then the global top N.

Push hints (F4): every :attr:`TrackerConfig.hint_interval` (and on demand,
:meth:`Tracker.update_push_hints`) each area that has cachers ranks its swarms by viewers in
the area plus ``hint_join_weight`` × viewer joins per minute in the area; each cacher of the
area that does not hold the head of one of the top K (chunks 0..hint_head_chunks-1; a cacher
that knows the swarm is live follows the live edge instead, DESIGN F4) gets a hint; priority
counts down to 1 from the hottest (higher = hotter). A hint is queued once for :meth:`Tracker.pop_outgoing` (binary
transports: the tracker speaks first) and stays active until it expires or the cacher reports
the head; :meth:`Tracker.hints_for` lists the active ones for piggy-backing on JSON responses.

Timers: one heap entry per peer; resetting the track timer only moves the peer's deadline, so
:meth:`Tracker.next_timer` may be early, and :meth:`Tracker.handle_timer` then re-arms the
entry at the real deadline.
"""

from __future__ import annotations

import enum
import gc
import heapq
import logging
import random
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ppsp.peer.ranges import ChunkSet
from ppsp.tracker.messages import (
    VERSION,
    Action,
    AvailabilityDelta,
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
    SwarmAvailability,
    SwarmPopularity,
    SwarmResult,
    TrackerError,
)
from ppsp.tracker.messages import AddressType as _AddressType

__all__ = [
    "OutgoingMessage",
    "PeerState",
    "Tracker",
    "TrackerConfig",
    "TrackerState",
]

log = logging.getLogger(__name__)

OutgoingMessage = PushHintMessage | GlobalInfoMessage
Runs = list[tuple[int, int]]

#: RFC 7574 chunk32 addressing: the largest chunk number a range may name.
MAX_CHUNK = 2**32 - 1
#: A member holding at most this many runs keeps them at hand for FIND (_Member.few).
_FEW_RUNS = 8

_OK = ResponseType.SUCCESSFUL
_FAILED = ResponseType.FAILED
_SEEDER = PeerMode.SEEDER
_LEECH = PeerMode.LEECH
_JOIN = Action.JOIN
_LEAVE = Action.LEAVE
_CACHER = Role.CACHER
_NOT_VIEWERS = (Role.CACHER, Role.SOURCE)


class TrackerState(enum.Enum):
    """RFC 7846 §2.3 Figure 4 (TERMINATED is transient: it is passed, never stayed in)."""

    INIT = "INIT"
    STARTED = "STARTED"
    TERMINATED = "TERMINATED"


class PeerState(enum.Enum):
    """RFC 7846 §2.3 Figure 5; START and TERMINATE are transient."""

    START = "START"
    PEER_REGISTERED = "PEER_REGISTERED"
    TRACKING = "TRACKING"
    TERMINATE = "TERMINATE"


@dataclass(slots=True)
class TrackerConfig:
    """Timers, bounds and policy knobs. RFC 7846 does not specify timer values (§2.3)."""

    #: §2.3: time a registered peer has to perform its first swarm action.
    init_timer: float = 30.0
    #: §2.3: time a TRACKING peer may stay silent; a valid CONNECT, FIND, STAT_REPORT resets it.
    track_timer: float = 120.0
    #: Bounds (hostile input): peers in total, swarms in total, per swarm, per peer.
    max_peers: int = 1_000_000
    max_swarms: int = 1_000_000
    max_peers_per_swarm: int = 100_000
    #: ≥ 10,000 so that one batch availability report of a big cacher fits.
    max_swarms_per_peer: int = 20_000
    #: Chunk ranges one availability entry or delta may carry, and runs one peer may hold in
    #: one swarm.
    max_ranges_per_swarm: int = 4096
    #: Chunk ranges a FIND may ask for.
    max_find_ranges: int = 64
    #: Peer IDs, swarm IDs and areas longer than this are malformed.
    max_id_length: int = 256
    #: Addresses one peer may declare.
    max_addresses: int = 8
    #: Swarms one stat query may name.
    max_query_swarms: int = 1024
    #: Peers in one peer list; RFC 7846 §3.2.7: peer_count "should be less than 30".
    max_find_peers: int = 30
    #: Peers in a peer list when the request has no peer_num (§4.1.1 implementation note).
    default_find_peers: int = 30
    #: Chunk holders examined per FIND: bounds its cost in big swarms (measured, 1,000-peer
    #: swarm: ~15 µs per FIND with one wanted range at 32, ~24 µs at 64). At least
    #: max_find_peers, so a full list of holders is found when there are that many.
    find_scan_limit: int = 32
    #: Seeders, then leechers, examined per FIND for members of the requester's area, listed
    #: before the others (locality); bounds that look-up's cost in big swarms (measured,
    #: 1,000 leechers in 50 areas, 20 peers per FIND: 24.9 µs per FIND without it, 27.5 µs
    #: at 64, 46.3 µs at 512).
    area_scan_limit: int = 128
    #: §4.3 replayed transaction IDs: how long, and how many, responses are kept.
    transaction_window: float = 60.0
    max_transactions: int = 65_536
    #: ... and how many swarms the kept requests and responses may name in all (a kept batch
    #: report of 10,000 swarms weighs 10,000): bounds the cache's memory, not just its length.
    max_transaction_swarms: int = 1_000_000
    #: §2.3.2 (B): 03 Forbidden Action or 06 Authentication Required.
    unregistered_error: ErrorCode = ErrorCode.FORBIDDEN_ACTION
    #: Popularity: the join rate is measured over this window (seconds); join samples kept
    #: per swarm (a rate above max_join_samples per window reads as that maximum).
    popularity_window: float = 60.0
    max_join_samples: int = 4096
    #: Push hints (F4): the top K swarms per area, the head (chunks 0..N-1) cachers should
    #: hold, how long a hint is valid, how often the policy runs, and what one join per minute
    #: weighs against one viewer in the ranking.
    hint_top_k: int = 5
    hint_head_chunks: int = 64
    hint_expiry: float = 60.0
    hint_interval: float = 10.0
    hint_join_weight: float = 1.0
    #: Global info (F5): how often cachers get it, the global top N it lists (plus their
    #: area's top K), and how many rarest ranges per swarm.
    global_info_interval: float = 30.0
    global_info_top: int = 32
    rarest_max_ranges: int = 8
    #: Tracker-initiated messages waiting for the daemon (oldest dropped beyond this).
    max_outgoing: int = 100_000
    #: A request naming at least this many swarms runs with Python's cyclic garbage collector
    #: paused (0: never). A 10,000-swarm batch allocates ~10^5 containers and so triggers
    #: ~170 collections, on a young heap a full one too, none of which finds garbage. Measured
    #: (CPU time) on a fresh tracker, i.e. the reconnect storm after a tracker restart:
    #: ~40 ms paused against 60-100 ms not.
    batch_gc_pause: int = 1000

    def __post_init__(self) -> None:
        for name in (
            "init_timer",
            "track_timer",
            "transaction_window",
            "popularity_window",
            "hint_expiry",
            "hint_interval",
            "global_info_interval",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        for name in (
            "max_peers",
            "max_swarms",
            "max_peers_per_swarm",
            "max_swarms_per_peer",
            "max_ranges_per_swarm",
            "max_find_ranges",
            "max_id_length",
            "max_addresses",
            "max_query_swarms",
            "max_transactions",
            "max_transaction_swarms",
            "max_join_samples",
            "find_scan_limit",
            "area_scan_limit",
            "hint_head_chunks",
            "max_outgoing",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("max_find_peers", "default_find_peers", "hint_top_k", "global_info_top"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.unregistered_error not in (
            ErrorCode.FORBIDDEN_ACTION,
            ErrorCode.AUTHENTICATION_REQUIRED,
        ):
            raise ValueError("unregistered_error must be 03 or 06 (RFC 7846 §2.3.2 B)")


# ---------------------------------------------------------------------------- records


class _Peer:
    """One registered peer ID: the per-peer-ID state machine's state (§2.3)."""

    __slots__ = (
        "addresses",
        "area",
        "deadline",
        "hints",
        "info",
        "peer_id",
        "reflexive",
        "role",
        "source",
        "state",
        "swarms",
    )

    def __init__(self, peer_id: str, source: tuple[str, int]) -> None:
        self.peer_id = peer_id
        self.state = PeerState.PEER_REGISTERED
        self.addresses: list[PeerAddress] = []
        self.role: Role | None = None
        self.area: str | None = None
        self.swarms: dict[str, _Member] = {}
        self.deadline = 0.0
        self.source = source
        self.reflexive: PeerAddress | None = None
        self.info: PeerInfo | None = None  # shared by every peer list naming this peer
        self.hints: dict[str, tuple[PushHint, float]] = {}  # swarm ID → (hint, expiry)


class _Member:
    """One peer in one swarm: mode and known chunk availability."""

    __slots__ = (
        "cs",
        "few",
        "hi",
        "hpos",
        "lo",
        "mode",
        "peer",
        "pos",
        "raw",
        "runs",
        "stats",
        "swarm",
    )

    def __init__(self, peer: _Peer, swarm: _Swarm, mode: PeerMode, raw: Runs | None) -> None:
        self.peer = peer
        self.swarm = swarm
        self.mode = mode
        # Known chunks: ``raw`` sorted maximal runs as reported, turned into the ChunkSet
        # ``cs`` only when something needs one (a batch of 10,000 swarms builds none). Both
        # None: not enumerated (a plain RFC seeder, presumed to hold everything).
        self.raw = raw
        self.cs: ChunkSet | None = None
        self.pos = -1  # index in swarm.seeders / swarm.leechers
        self.hpos = -1  # index in swarm.holders, -1 when it holds no known chunk
        self.lo = 0  # first and last chunk, number of runs: cached for FIND's hot loop
        self.hi = -1
        self.runs = 0
        # The runs themselves when there are at most _FEW_RUNS of them (a cacher's cache, a
        # viewer's buffer): FIND's overlap is then plain arithmetic, no ChunkSet walk.
        self.few: Sequence[tuple[int, int]] | None = None
        self.stats: StreamStats | None = None


class _Swarm:
    """One swarm: its members and the indexes FIND and the popularity policy need."""

    __slots__ = (
        "cachers",
        "coverage",
        "holders",
        "holders_epoch",
        "joins",
        "leechers",
        "members",
        "rarest",
        "seeders",
        "swarm_id",
        "version",
        "viewers",
        "viewers_by_area",
    )

    def __init__(self, swarm_id: str) -> None:
        self.swarm_id = swarm_id
        self.members: dict[str, _Member] = {}
        self.seeders: list[_Member] = []
        self.leechers: list[_Member] = []
        self.holders: list[_Member] = []
        # Bumped whenever ``holders`` or the chunks of a holder change: FIND's rankings of
        # the holders (Tracker._rankings) are valid for one epoch.
        self.holders_epoch = 0
        self.cachers: dict[str | None, dict[str, _Member]] = {}
        self.viewers = 0
        self.viewers_by_area: dict[str | None, int] = {}
        self.joins: deque[tuple[float, str | None]] | None = None  # viewer joins (time, area)
        # Coverage: chunk → change in the number of holders at that chunk (a difference
        # array over the chunk axis, zeros dropped).
        self.coverage: dict[int, int] = {}
        self.version = 0  # bumped on every availability change
        self.rarest: tuple[int, list[tuple[int, int]]] | None = None  # (version, result)


def _cover(cov: dict[int, int], runs: Iterable[tuple[int, int]], delta: int) -> None:
    """Add ``delta`` holders over each run to a coverage map (zeros dropped)."""
    get = cov.get
    for s, e in runs:
        v = get(s, 0) + delta
        if v:
            cov[s] = v
        else:
            del cov[s]
        e += 1
        v = get(e, 0) - delta
        if v:
            cov[e] = v
        else:
            del cov[e]


def _weight(request: Request) -> int:
    """How many swarms a request names (for :attr:`TrackerConfig.batch_gc_pause`)."""
    if isinstance(request, Connect):
        return len(request.swarm_actions) + len(request.availability)
    if isinstance(request, StatReport):
        return len(request.stats) + len(request.availability) + len(request.deltas)
    return 0


def _runs(m: _Member) -> Sequence[tuple[int, int]]:
    """The member's known chunks as sorted maximal runs (empty when unknown)."""
    if m.raw is not None:
        return m.raw
    if m.cs is not None:
        return list(m.cs)
    return ()


def _chunkset(m: _Member) -> ChunkSet | None:
    """The member's known chunks as a ChunkSet, built on first use."""
    cs = m.cs
    if cs is None and m.raw is not None:
        cs = m.cs = ChunkSet(m.raw)
        m.raw = None
    return cs


def _few(m: _Member) -> Sequence[tuple[int, int]] | None:
    """The member's runs for :attr:`_Member.few` (a held list is never mutated in place)."""
    if m.raw is not None:
        return m.raw if len(m.raw) <= _FEW_RUNS else None
    cs = m.cs
    if cs is not None and len(cs) <= _FEW_RUNS:
        return tuple(cs)
    return None


def _overlap(m: _Member, ranges: Sequence[tuple[int, int]]) -> int:
    """Chunks of ``ranges`` that member ``m`` holds (ranges assumed disjoint)."""
    lo = m.lo
    hi = m.hi
    total = 0
    few = m.few
    for s, e in ranges:
        if e < lo or s > hi:
            continue
        if m.runs == 1:
            total += (e if e < hi else hi) - (s if s > lo else lo) + 1
        elif few is not None:
            for rs, re in few:
                a = s if s > rs else rs
                b = e if e < re else re
                if a <= b:
                    total += b - a + 1
        else:
            cs = _chunkset(m)
            assert cs is not None
            n = e - s + 1
            for gs, ge in cs.missing(s, e):
                n -= ge - gs + 1
            total += n
    return total


def _rank(window: Sequence[_Member], ranges: Sequence[tuple[int, int]]) -> list[_Member]:
    """The members of ``window`` holding chunks of ``ranges``, most chunks first, ties in
    window order (FIND's step 2)."""
    # The hull of the requested ranges rejects most non-holders in two compares; a single
    # requested range against a few runs is plain arithmetic.
    single = len(ranges) == 1
    if single:
        lo, hi = ranges[0]
    else:
        lo = min(s for s, _ in ranges)
        hi = max(e for _, e in ranges)
    scored: list[tuple[int, int, _Member]] = []
    i = 0
    for m in window:
        i += 1
        mhi = m.hi
        if mhi < lo:
            continue
        mlo = m.lo
        if mlo > hi:
            continue
        if m.runs == 1:
            if single:
                ov = (hi if hi < mhi else mhi) - (lo if lo > mlo else mlo) + 1
            else:
                ov = 0
                for s, e in ranges:
                    a = s if s > mlo else mlo
                    b = e if e < mhi else mhi
                    if a <= b:
                        ov += b - a + 1
        elif single and m.few is not None:
            ov = 0
            for s, e in m.few:
                a = s if s > lo else lo
                b = e if e < hi else hi
                if a <= b:
                    ov += b - a + 1
        else:
            ov = _overlap(m, ranges)
        if ov > 0:
            scored.append((-ov, i, m))
    scored.sort()
    return [m for _, _, m in scored]


#: Rankings of a swarm's holders for FIND's wanted ranges kept at most (all swarms together).
_RANKED_ENTRIES = 16_384


# ---------------------------------------------------------------------------- the tracker


class Tracker:
    """The PPSP tracker core (RFC 7846 §2.3): see the module docstring."""

    def __init__(
        self,
        config: TrackerConfig | None = None,
        now: float = 0.0,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config if config is not None else TrackerConfig()
        self._rng = rng if rng is not None else random.Random()
        self._now = now
        self.state = TrackerState.INIT
        self._peers: dict[str, _Peer] = {}
        self._swarms: dict[str, _Swarm] = {}
        self._n_tracking = 0
        self._cachers: dict[str | None, dict[str, _Peer]] = {}  # area → registered cachers
        self._popular: dict[str, _Swarm] = {}  # swarms with viewers or recent viewer joins
        self._timers: list[tuple[float, int, _Peer]] = []  # one live entry per peer
        # FIND: (swarm, wanted ranges) → (swarm.holders_epoch, ranked holders); see _select.
        self._rankings: dict[
            tuple[_Swarm, tuple[tuple[int, int], ...]], tuple[int, list[_Member]]
        ] = {}
        self._timer_seq = 0
        # (peer ID, transaction ID) → (time, request, response, weight), in time order.
        self._transactions: OrderedDict[tuple[str, str], tuple[float, Request, Response, int]] = (
            OrderedDict()
        )
        self._transaction_weight = 0
        self._outbox: deque[tuple[str, OutgoingMessage]] = deque(maxlen=self.config.max_outgoing)
        self._next_hints = now + self.config.hint_interval
        self._next_global = now + self.config.global_info_interval
        self._counters: dict[str, int] = {
            "requests": 0,
            "replays": 0,
            "errors": 0,
            "registrations": 0,
            "terminated": 0,
            "expired": 0,
            "tracker_terminations": 0,
            "hints_issued": 0,
            "global_info_sent": 0,
        }
        self._errors_by_code: dict[int, int] = {}

    # ------------------------------------------------------------------ requests

    def handle(self, request: Request, source: tuple[str, int], now: float) -> Response:
        """Process one request from ``source`` (the reflexive address, §4.1.1) at ``now``."""
        self._now = now
        self._counters["requests"] += 1
        key = (request.peer_id, request.transaction_id)
        seen = self._transactions.get(key)
        if seen is not None and now - seen[0] <= self.config.transaction_window:
            # §4.3: a repeated transaction ID is a retransmission; answer it as before.
            if seen[1] == request:
                self._counters["replays"] += 1
                return seen[2]
            # §4.3: a transaction ID "can be reused if and only if all of the content is
            # identical"; anything else is a malformed exchange.
            return self._error(request.transaction_id, ErrorCode.BAD_REQUEST)
        paused = False
        threshold = self.config.batch_gc_pause
        weight = _weight(request)
        if threshold and weight >= threshold and gc.isenabled():
            gc.disable()
            paused = True
        try:
            response = self._dispatch(request, source, now)
        except TrackerError as exc:
            response = Response.error(request.transaction_id, exc.code)
        except Exception:  # §4.3: an unexpected condition is 04, never a crash
            log.exception("tracker: internal error handling %s", type(request).__name__)
            response = Response.error(request.transaction_id, ErrorCode.INTERNAL_SERVER_ERROR)
        finally:
            if paused:
                gc.enable()
        if response.response_type is _FAILED:
            self._count_error(response.error_code)
        self._remember(key, request, response, now, 1 + weight)
        return response

    def _dispatch(self, request: Request, source: tuple[str, int], now: float) -> Response:
        if request.version != VERSION:
            raise TrackerError("unsupported version", ErrorCode.UNSUPPORTED_VERSION)
        if not self._id_ok(request.peer_id):
            raise TrackerError("invalid peer ID", self.config.unregistered_error)  # §2.3.2 B
        if isinstance(request, Find):
            return self._find(request, source, now)
        if isinstance(request, Connect):
            return self._connect(request, source, now)
        if isinstance(request, StatReport):
            return self._stat_report(request, source, now)
        if isinstance(request, StatQuery):
            return self._stat_query(request, source, now)
        raise TrackerError("not a request")

    def _error(self, transaction_id: str, code: ErrorCode) -> Response:
        self._count_error(code)
        return Response.error(transaction_id, code)

    def _count_error(self, code: ErrorCode) -> None:
        self._counters["errors"] += 1
        self._errors_by_code[int(code)] = self._errors_by_code.get(int(code), 0) + 1

    def _remember(
        self, key: tuple[str, str], req: Request, resp: Response, now: float, weight: int
    ) -> None:
        """Keep the exchange for §4.3 replays; ``weight`` is 1 + the swarms ``req`` names."""
        cfg = self.config
        tx = self._transactions
        old = tx.pop(key, None)  # re-inserted at the end so the dict stays in time order
        total = self._transaction_weight
        if old is not None:
            total -= old[3]
        tx[key] = (now, req, resp, weight)
        total += weight
        horizon = now - cfg.transaction_window
        most, heaviest = cfg.max_transactions, cfg.max_transaction_swarms
        while tx:
            first = next(iter(tx))
            entry = tx[first]
            if len(tx) > most or total > heaviest or entry[0] < horizon:
                del tx[first]
                total -= entry[3]
            else:
                break
        self._transaction_weight = total

    def _id_ok(self, ident: str) -> bool:
        return isinstance(ident, str) and 0 < len(ident) <= self.config.max_id_length

    def _ranges_ok(self, ranges: Sequence[tuple[int, int]] | None, limit: int) -> bool:
        if ranges is None:
            return True
        if len(ranges) > limit:
            return False
        return all(0 <= s <= e <= MAX_CHUNK for s, e in ranges)

    def _runs_of(self, ranges: Sequence[tuple[int, int]]) -> Runs | None:
        """Reported ranges as sorted maximal runs; None if they are not valid chunk ranges."""
        if len(ranges) > self.config.max_ranges_per_swarm:
            return None
        prev = -2
        in_order = True
        for s, e in ranges:
            if not (0 <= s <= e <= MAX_CHUNK):
                return None
            if s <= prev + 1:
                in_order = False
            prev = e
        if in_order:  # what a peer sends from its own ChunkSet: taken as is
            return list(ranges)
        return list(ChunkSet(ranges))

    def _registered(self, peer_id: str) -> _Peer:
        peer = self._peers.get(peer_id)
        if peer is None:
            # §2.3.2 (B): FIND / STAT_REPORT from an unregistered peer ID.
            raise TrackerError("unregistered peer ID", self.config.unregistered_error)
        return peer

    def _reflexive(self, peer: _Peer, source: tuple[str, int]) -> PeerAddress:
        """§4.1.1: the requester's public address as the tracker sees it, type REFLEXIVE."""
        r = peer.reflexive
        if r is None or r.ip != source[0] or r.port != source[1]:
            r = PeerAddress(source[0], source[1], type=_AddressType.REFLEXIVE)
            peer.reflexive = r
        return r

    def _touch(self, peer: _Peer, now: float) -> None:
        """A valid request: PEER REGISTERED → TRACKING (§2.3.1 step 2), track timer (re)set."""
        if peer.state is PeerState.PEER_REGISTERED:
            peer.state = PeerState.TRACKING
            self._n_tracking += 1
        peer.deadline = now + self.config.track_timer

    # ------------------------------------------------------------------ FIND (§4.1.2)

    def _find(self, req: Find, source: tuple[str, int], now: float) -> Response:
        peer = self._registered(req.peer_id)
        swarm = self._swarms.get(req.swarm_id)
        if swarm is None:
            # §2.3.2 (C): a FIND with an invalid swarm ID; the peer stays where it is.
            raise TrackerError("unknown swarm", ErrorCode.FORBIDDEN_ACTION)
        ranges = req.ranges
        cfg = self.config
        if ranges is not None:
            if len(ranges) > cfg.max_find_ranges:
                raise TrackerError("bad chunk ranges")
            for s, e in ranges:
                if not 0 <= s <= e <= MAX_CHUNK:
                    raise TrackerError("bad chunk ranges")
        area = req.area
        if area is None:
            area = peer.area
        elif len(area) > cfg.max_id_length:
            raise TrackerError("bad area")
        peer_num = req.peer_num  # _wanted, inlined
        if peer_num is None:
            want = min(cfg.default_find_peers, cfg.max_find_peers)
        else:
            want = max(0, min(peer_num.peer_count, cfg.max_find_peers))
        peers = self._select(swarm, peer, area, ranges, want)
        self._touch(peer, now)
        return Response(
            req.transaction_id,
            peer_address=self._reflexive(peer, source),
            swarm_results=[SwarmResult(swarm.swarm_id, _OK, peers)],
        )

    def _wanted(self, peer_num: PeerNum | None) -> int:
        cfg = self.config
        if peer_num is None:
            return min(cfg.default_find_peers, cfg.max_find_peers)
        return max(0, min(peer_num.peer_count, cfg.max_find_peers))

    def _info(self, peer: _Peer) -> PeerInfo:
        info = peer.info
        if info is None:
            addresses = peer.addresses
            if not addresses:
                # §4.1.1: the list MUST carry an address; a peer that declared none is
                # reachable, if at all, where its request came from.
                ip, port = peer.source[0], peer.source[1]
                addresses = [PeerAddress(ip, port, type=_AddressType.REFLEXIVE)]
            info = PeerInfo(peer.peer_id, addresses, peer.role, peer.area)
            peer.info = info
        return info

    def _select(
        self,
        swarm: _Swarm,
        requester: _Peer,
        area: str | None,
        ranges: Sequence[tuple[int, int]] | None,
        k: int,
    ) -> list[PeerInfo]:
        """The peer list (§4.1.2): area cachers, then chunk holders, then seeders, leechers.

        The hot path of FIND (and of every JOIN answered with a peer list), so written for
        speed: peers' PeerInfo taken straight from their records, overlaps inlined, peers
        taken told apart by identity (one record per peer ID)."""
        out: list[PeerInfo] = []
        if k <= 0:
            return out
        taken = {requester}
        rng = self._rng
        make_info = self._info
        info: PeerInfo | None

        def take(members: Iterable[_Member], only_area: str | None) -> bool:
            """List the members not taken yet (of ``only_area`` if given), in order; True
            once the list is full."""
            for m in members:
                peer = m.peer
                if peer in taken or (only_area is not None and peer.area != only_area):
                    continue
                info = peer.info
                out.append(info if info is not None else make_info(peer))
                if len(out) >= k:
                    return True
                taken.add(peer)
            return False

        # 1. Cachers in the requester's area: the P2P CDN's nearby cache (DESIGN F3).
        if area is not None:
            group = swarm.cachers.get(area)
            if group:
                if requester.peer_id in group:
                    cands = [m for m in group.values() if m.peer is not requester]
                else:
                    cands = list(group.values())
                n = len(cands)
                if n > 1:
                    off = rng.randrange(n)
                    if off:
                        cands = cands[off:] + cands[:off]
                    if ranges:
                        cands.sort(key=lambda m: -_overlap(m, ranges))
                for m in cands[:k] if n > k else cands:
                    peer = m.peer
                    info = peer.info
                    out.append(info if info is not None else make_info(peer))
                    taken.add(peer)
                if len(out) >= k:
                    return out
        # 2. Peers holding the requested chunks, most overlap first.
        if ranges:
            holders = swarm.holders
            n = len(holders)
            if n:
                scan = self.config.find_scan_limit
                if n <= scan:
                    # Every holder is examined, so the ranking depends on nothing but the
                    # holders and the ranges: kept until the holders change (many FINDs
                    # want the same chunks: the head of a VoD swarm, the live edge).
                    try:
                        key = (swarm, tuple(ranges))
                        cached = self._rankings.get(key)
                    except TypeError:  # unhashable ranges (not from a decoder): no caching
                        key = None
                        cached = None
                    if cached is not None and cached[0] == swarm.holders_epoch:
                        ranked = cached[1]
                    else:
                        ranked = _rank(holders, ranges)
                        if key is not None:
                            if len(self._rankings) >= _RANKED_ENTRIES:
                                self._rankings.clear()
                            self._rankings[key] = (swarm.holders_epoch, ranked)
                else:
                    off = rng.randrange(n)
                    window = holders[off : off + scan]
                    if len(window) < scan:
                        window += holders[: scan - len(window)]
                    ranked = _rank(window, ranges)
                if take(ranked, None):
                    return out
        # 3. Everybody else, seeders before leechers; in each group the requester's area
        # first (locality: LiveSky kept 80 % of the traffic inside the ISP), looked for among
        # at most area_scan_limit members so that a FIND in a huge swarm stays cheap.
        for group_list in (swarm.seeders, swarm.leechers):
            n = len(group_list)
            if not n:
                continue
            off = rng.randrange(n)
            rotated = group_list[off:] + group_list[:off] if off else group_list
            if area is not None and take(rotated[: self.config.area_scan_limit], area):
                return out
            if take(rotated, None):
                return out
        return out

    # ------------------------------------------------------------------ CONNECT (§4.1.1)

    def _connect(self, req: Connect, source: tuple[str, int], now: float) -> Response:
        cfg = self.config
        peer = self._peers.get(req.peer_id)
        acts = req.swarm_actions
        avail = req.availability
        if len(acts) > cfg.max_swarms_per_peer or len(avail) > cfg.max_swarms_per_peer:
            raise TrackerError("too many swarms")
        if len(req.peer_addresses) > cfg.max_addresses:
            raise TrackerError("too many addresses")
        if req.area is not None and len(req.area) > cfg.max_id_length:
            raise TrackerError("bad area")
        if peer is None and len(self._peers) >= cfg.max_peers:
            raise TrackerError("tracker full", ErrorCode.SERVICE_UNAVAILABLE)
        fresh = peer is None or peer.state is PeerState.PEER_REGISTERED
        joined: dict[str, _Member] = peer.swarms if peer is not None else {}

        # Availability entries: format first, so a bad entry also spoils its JOIN action.
        bad = ErrorCode.BAD_REQUEST
        forbidden = ErrorCode.FORBIDDEN_ACTION
        a_codes: list[ErrorCode | None] = [None] * len(avail)
        a_runs: list[Runs | None] = [None] * len(avail)
        entry_of: dict[str, int] = {}
        id_ok = self._id_ok
        runs_of = self._runs_of
        for j, e in enumerate(avail):
            sid = e.swarm_id
            if not id_ok(sid):
                a_codes[j] = bad
                continue
            runs = a_runs[j] = runs_of(e.ranges)
            if runs is None:
                a_codes[j] = bad
            if sid in entry_of:
                a_codes[j] = bad
                a_codes[entry_of[sid]] = bad
            else:
                entry_of[sid] = j

        # Swarm actions: format and duplicates.
        codes: list[ErrorCode | None] = [None] * len(acts)
        action_of: dict[str, int] = {}
        for i, a in enumerate(acts):
            sid = a.swarm_id
            if not self._id_ok(sid):
                codes[i] = bad
            elif sid in action_of:
                codes[i] = bad
                codes[action_of[sid]] = bad
            else:
                action_of[sid] = i
                j = entry_of.get(sid, -1)
                if j >= 0 and a_codes[j] is not None:
                    codes[i] = a_codes[j]

        # Table 6, LEECH rows: judged as a group.
        leech = [i for i, a in enumerate(acts) if a.peer_mode is _LEECH]
        if leech:
            ok = all(codes[i] is None for i in leech)
            la = [acts[i] for i in leech]
            if fresh:
                ok = ok and len(la) == 1 and la[0].action is _JOIN
            else:
                leaves = [a for a in la if a.action is _LEAVE]
                joins = [a for a in la if a.action is _JOIN]
                ok = (
                    ok
                    and len(leaves) == 1
                    and len(joins) <= 1
                    and leaves[0].swarm_id in joined
                    and all(a.swarm_id not in joined for a in joins)
                )
            if not ok:
                for i in leech:
                    codes[i] = codes[i] or forbidden
        # Table 6, SEEDER rows: N JOIN from START, N LEAVE from TRACKING.
        for i, a in enumerate(acts):
            if a.peer_mode is _SEEDER and codes[i] is None:
                if a.action is _JOIN:
                    if not fresh:
                        codes[i] = forbidden
                elif fresh or a.swarm_id not in joined:
                    codes[i] = forbidden

        # Entries without a JOIN action: implicit JOIN from START only.
        implicit: list[int] = []
        for j, e in enumerate(avail):
            if a_codes[j] is not None:
                continue
            i = action_of.get(e.swarm_id, -1)
            if i >= 0:
                if acts[i].action is _LEAVE:
                    a_codes[j] = forbidden  # a report about a swarm being left
                elif codes[i] is not None:
                    a_codes[j] = codes[i]
            elif not fresh or e.swarm_id in joined:
                a_codes[j] = forbidden  # Table 6: N SEEDER JOIN while TRACKING
            else:
                implicit.append(j)

        # Capacity, in the order of application (LEAVEs free room first).
        count = len(joined) - sum(
            1 for i, a in enumerate(acts) if codes[i] is None and a.action is _LEAVE
        )
        new_swarms = 0
        swarms = self._swarms
        unavailable = ErrorCode.SERVICE_UNAVAILABLE

        def room(sid: str) -> ErrorCode | None:
            nonlocal count, new_swarms
            sw = swarms.get(sid)
            if count >= cfg.max_swarms_per_peer:
                return unavailable
            if sw is None:
                if len(swarms) + new_swarms >= cfg.max_swarms:
                    return unavailable
                new_swarms += 1
            elif len(sw.members) >= cfg.max_peers_per_swarm:
                return unavailable
            count += 1
            return None

        for i, a in enumerate(acts):
            if codes[i] is None and a.action is _JOIN:
                codes[i] = room(a.swarm_id)
                j = entry_of.get(a.swarm_id, -1)
                if j >= 0 and codes[i] is not None:
                    a_codes[j] = codes[i]
        still: list[int] = []
        for j in implicit:
            a_codes[j] = room(avail[j].swarm_id)
            if a_codes[j] is None:
                still.append(j)
        implicit = still

        n_valid = sum(1 for c in codes if c is None) + len(implicit)
        if (acts or avail) and not n_valid:
            code = next((c for c in (*codes, *a_codes) if c is not None), forbidden)
            if fresh and peer is not None:
                self._delete(peer, now)  # §2.3.2 (A): delete the registration
            # (C) in TRACKING: the error, and the peer stays.
            raise TrackerError("only invalid swarm actions", code)

        # Valid: register (START → PEER REGISTERED, init timer), then the swarm actions.
        created = peer is None
        if peer is None:
            peer = _Peer(req.peer_id, source)
            peer.deadline = now + cfg.init_timer
            self._add_peer(peer)
        self._update_profile(peer, req, source)
        results: list[SwarmResult] = []
        left_any = False
        for i, a in enumerate(acts):
            if codes[i] is None and a.action is _LEAVE:
                self._leave(joined[a.swarm_id], now)
                left_any = True
        want = self._wanted(req.peer_num)
        for i, a in enumerate(acts):
            if codes[i] is not None:
                results.append(SwarmResult(a.swarm_id, _FAILED))
                continue
            if a.action is _LEAVE:
                results.append(SwarmResult(a.swarm_id, _OK))
                continue
            j = entry_of.get(a.swarm_id, -1)
            m = self._join(peer, a.swarm_id, a.peer_mode, a_runs[j] if j >= 0 else None, now)
            peers = None
            if a.peer_mode is _LEECH or req.peer_num is not None:
                # §4.1.1: LEECH → a peer list (MUST); SEEDER only with peer_num.
                peers = self._select(m.swarm, peer, peer.area, None, want)
            results.append(SwarmResult(a.swarm_id, _OK, peers))
        # Entries without an action of their own, in their order: implicit JOINs or failures.
        for j, e in enumerate(avail):
            if e.swarm_id in action_of:
                continue
            if a_codes[j] is not None:
                results.append(SwarmResult(e.swarm_id, _FAILED))
                continue
            m = self._join(peer, e.swarm_id, e.peer_mode, a_runs[j], now)
            peers = None
            if req.peer_num is not None:
                peers = self._select(m.swarm, peer, peer.area, None, want)
            results.append(SwarmResult(e.swarm_id, _OK, peers))

        if n_valid:
            # §2.3.1 step 2a / 4: stop the init timer, (re)start the track timer.
            self._touch(peer, now)
        elif peer.state is PeerState.TRACKING:
            peer.deadline = now + cfg.track_timer  # an action-less CONNECT is a keep-alive
        if left_any and not peer.swarms:
            # Table 6: LEAVE of the last swarm ends in TERMINATE.
            self._delete(peer, now)
        elif created:
            self._arm(peer)  # armed once its timer is known: init or track
        return Response(
            req.transaction_id,
            peer_address=self._reflexive(peer, source),
            swarm_results=results,
        )

    def _update_profile(self, peer: _Peer, req: Connect, source: tuple[str, int]) -> None:
        role = req.role
        if role is None and peer.role is None and req.availability:
            role = req.availability[0].role  # an entry names the role of a peer without one
        area = req.area if req.area is not None else peer.area
        if (role is not None and role is not peer.role) or area != peer.area:
            self._set_profile(peer, role if role is not None else peer.role, area)
        if req.peer_addresses and req.peer_addresses != peer.addresses:
            peer.addresses = list(req.peer_addresses)
            peer.info = None
        if source != peer.source:
            peer.source = source
            if not peer.addresses:
                peer.info = None

    def _set_profile(self, peer: _Peer, role: Role | None, area: str | None) -> None:
        """Change a peer's role or area: every index keyed by them is rebuilt for it."""
        members = list(peer.swarms.values())
        for m in members:
            self._unindex(m)
        self._unregister_cacher(peer)
        peer.role = role
        peer.area = area
        peer.info = None
        self._register_cacher(peer)
        for m in members:
            self._index(m)

    def _register_cacher(self, peer: _Peer) -> None:
        if peer.role is _CACHER:
            self._cachers.setdefault(peer.area, {})[peer.peer_id] = peer

    def _unregister_cacher(self, peer: _Peer) -> None:
        if peer.role is _CACHER:
            group = self._cachers.get(peer.area)
            if group is not None:
                group.pop(peer.peer_id, None)
                if not group:
                    del self._cachers[peer.area]

    # ------------------------------------------------------------------ STAT_REPORT (§4.1.3)

    def _stat_report(self, req: StatReport, source: tuple[str, int], now: float) -> Response:
        cfg = self.config
        peer = self._registered(req.peer_id)
        limit = cfg.max_swarms_per_peer
        if len(req.stats) > limit or len(req.availability) > limit or len(req.deltas) > limit:
            raise TrackerError("too many swarms")
        max_ranges = cfg.max_ranges_per_swarm
        listed: dict[str, tuple[SwarmAvailability, Runs]] = {}
        for e in req.availability:
            if not self._id_ok(e.swarm_id) or e.swarm_id in listed:
                raise TrackerError("bad availability entry")
            runs = self._runs_of(e.ranges)
            if runs is None:
                raise TrackerError("bad availability ranges")
            listed[e.swarm_id] = (e, runs)
        seen: set[str] = set()
        for d in req.deltas:
            if not self._id_ok(d.swarm_id) or d.swarm_id in seen:
                raise TrackerError("bad availability delta")
            if not self._ranges_ok(d.cached, max_ranges) or not self._ranges_ok(
                d.evicted, max_ranges
            ):
                raise TrackerError("bad delta ranges")
            seen.add(d.swarm_id)
        stat_ids: set[str] = set()
        for s in req.stats:
            sid = s.swarm_id
            if sid in stat_ids:
                raise TrackerError("duplicate stats")
            stat_ids.add(sid)
            if sid not in peer.swarms and sid not in listed and sid not in seen:
                # §2.3.2 (C): a STAT_REPORT naming a swarm the peer is not in.
                raise TrackerError(
                    "stats for a swarm the peer is not in", ErrorCode.FORBIDDEN_ACTION
                )

        if peer.role is None and req.availability:
            self._set_profile(peer, req.availability[0].role, peer.area)
        failed: list[str] = []
        if listed:
            self._apply_snapshot(peer, listed, failed, now)
        for d in req.deltas:
            self._apply_delta(peer, d, failed, now)
        for s in req.stats:
            m = peer.swarms.get(s.swarm_id)
            if m is not None:
                m.stats = s
        self._touch(peer, now)
        results = [SwarmResult(s.swarm_id, _OK) for s in req.stats]
        results.extend(SwarmResult(sid, _FAILED) for sid in failed)
        return Response(
            req.transaction_id,
            peer_address=self._reflexive(peer, source),
            swarm_results=results,
        )

    def _room(self, peer: _Peer, swarm_id: str) -> bool:
        cfg = self.config
        if len(peer.swarms) >= cfg.max_swarms_per_peer:
            return False
        sw = self._swarms.get(swarm_id)
        if sw is None:
            return len(self._swarms) < cfg.max_swarms
        return len(sw.members) < cfg.max_peers_per_swarm

    def _apply_snapshot(
        self,
        peer: _Peer,
        listed: dict[str, tuple[SwarmAvailability, Runs]],
        failed: list[str],
        now: float,
    ) -> None:
        for sid, old in list(peer.swarms.items()):
            if sid in listed:
                continue
            if old.mode is _SEEDER:
                self._leave(old, now)  # the snapshot withdraws this seeder's claim
            else:
                self._set_chunks(old, [])
        for sid, (e, runs) in listed.items():
            m = peer.swarms.get(sid)
            if m is None:
                if self._room(peer, sid):
                    self._join(peer, sid, e.peer_mode, runs, now)
                else:
                    failed.append(sid)
                continue
            if m.mode is not e.peer_mode:
                self._unindex(m)
                m.mode = e.peer_mode
                self._index(m)
            self._set_chunks(m, runs or None)

    def _apply_delta(
        self, peer: _Peer, d: AvailabilityDelta, failed: list[str], now: float
    ) -> None:
        m = peer.swarms.get(d.swarm_id)
        if m is None:
            if not d.cached:
                return
            fresh = ChunkSet(d.cached)
            for s, e in d.evicted:
                fresh.remove(s, e)
            if fresh.is_empty():
                return
            if len(fresh) > self.config.max_ranges_per_swarm or not self._room(peer, d.swarm_id):
                failed.append(d.swarm_id)
                return
            self._join(peer, d.swarm_id, _SEEDER, list(fresh), now)
            return
        chunks = _chunkset(m)
        if chunks is None:
            # First delta for a membership whose chunks were never enumerated: track exactly
            # from here on.
            chunks = ChunkSet(d.cached)
            self._set_chunks(m, None, chunks)
        else:
            # Each cached range adds at most one run, each evicted one splits at most one.
            if len(chunks) + len(d.cached) + len(d.evicted) > self.config.max_ranges_per_swarm:
                failed.append(d.swarm_id)
                return
            sw = m.swarm
            cov = sw.coverage
            for s, e in d.cached:
                _cover(cov, chunks.missing(s, e), 1)
                chunks.add(s, e)
            sw.version += 1
        if d.evicted:
            sw = m.swarm
            cov = sw.coverage
            for s, e in d.evicted:
                held: Runs = []
                pos = s
                for gs, ge in chunks.missing(s, e):
                    if gs > pos:
                        held.append((pos, gs - 1))
                    pos = ge + 1
                if pos <= e:
                    held.append((pos, e))
                _cover(cov, held, -1)
                chunks.remove(s, e)
            sw.version += 1
        self._refresh_holder(m)
        if m.mode is _SEEDER and chunks.is_empty():
            self._leave(m, now)  # a seeder that holds nothing any more

    # ------------------------------------------------------------------ stat query (ext.)

    def _stat_query(self, req: StatQuery, source: tuple[str, int], now: float) -> Response:
        peer = self._registered(req.peer_id)
        if len(req.swarm_ids) > self.config.max_query_swarms:
            raise TrackerError("too many swarms")
        if not all(self._id_ok(s) for s in req.swarm_ids):
            raise TrackerError("bad swarm ID")
        info = self.global_info(req.swarm_ids or None, now)
        self._touch(peer, now)
        return Response(
            req.transaction_id,
            peer_address=self._reflexive(peer, source),
            global_info=info,
        )

    # ------------------------------------------------------------------ membership

    def _add_peer(self, peer: _Peer) -> None:
        self._peers[peer.peer_id] = peer
        self._counters["registrations"] += 1
        self._register_cacher(peer)
        if self.state is not TrackerState.STARTED:
            self.state = TrackerState.STARTED  # §2.3 Figure 4: the first peer

    def _delete(self, peer: _Peer, now: float) -> None:
        """TERMINATE (§2.3): clean the peer from every swarm, delete the registration."""
        if self._peers.get(peer.peer_id) is not peer:
            return
        for m in list(peer.swarms.values()):
            self._leave(m, now)
        self._unregister_cacher(peer)
        del self._peers[peer.peer_id]
        if peer.state is PeerState.TRACKING:
            self._n_tracking -= 1
        peer.state = PeerState.TERMINATE
        peer.hints.clear()
        self._counters["terminated"] += 1
        if not self._peers:
            # §2.3 Figure 4: last peer gone → TERMINATED, which at once becomes INIT.
            self.state = TrackerState.TERMINATED
            self._counters["tracker_terminations"] += 1
            self.state = TrackerState.INIT

    def _join(
        self,
        peer: _Peer,
        swarm_id: str,
        mode: PeerMode,
        runs: Runs | None,
        now: float,
    ) -> _Member:
        """Add the peer to the swarm; ``runs`` (sorted maximal runs) are its chunks, empty or
        None for "not enumerated"."""
        sw = self._swarms.get(swarm_id)
        if sw is None:
            sw = _Swarm(swarm_id)
            self._swarms[swarm_id] = sw
        m = _Member(peer, sw, mode, runs or None)
        sw.members[peer.peer_id] = m
        peer.swarms[swarm_id] = m
        self._index(m)
        if mode is _LEECH and peer.role not in _NOT_VIEWERS:
            joins = sw.joins
            if joins is None:
                joins = sw.joins = deque(maxlen=self.config.max_join_samples)
            joins.append((now, peer.area))
            self._popular[swarm_id] = sw
        return m

    def _leave(self, m: _Member, now: float) -> None:
        sw = m.swarm
        peer = m.peer
        self._unindex(m)
        del sw.members[peer.peer_id]
        del peer.swarms[sw.swarm_id]
        peer.hints.pop(sw.swarm_id, None)
        if not sw.members:
            del self._swarms[sw.swarm_id]
            self._popular.pop(sw.swarm_id, None)

    def _index(self, m: _Member) -> None:
        sw = m.swarm
        peer = m.peer
        lst = sw.seeders if m.mode is _SEEDER else sw.leechers
        m.pos = len(lst)
        lst.append(m)
        if peer.role is _CACHER:
            group = sw.cachers.get(peer.area)
            if group is None:
                group = sw.cachers[peer.area] = {}
            group[peer.peer_id] = m
        runs = _runs(m)
        if runs:
            sw.holders_epoch += 1
            m.hpos = len(sw.holders)
            sw.holders.append(m)
            m.lo = runs[0][0]
            m.hi = runs[-1][1]
            m.runs = len(runs)
            m.few = _few(m)
            _cover(sw.coverage, runs, 1)
            sw.version += 1
        if m.mode is _LEECH and peer.role not in _NOT_VIEWERS:
            sw.viewers += 1
            by_area = sw.viewers_by_area
            by_area[peer.area] = by_area.get(peer.area, 0) + 1
            self._popular[sw.swarm_id] = sw

    def _unindex(self, m: _Member) -> None:
        sw = m.swarm
        peer = m.peer
        lst = sw.seeders if m.mode is _SEEDER else sw.leechers
        last = lst.pop()
        if last is not m:
            lst[m.pos] = last
            last.pos = m.pos
        m.pos = -1
        if peer.role is _CACHER:
            group = sw.cachers.get(peer.area)
            if group is not None:
                group.pop(peer.peer_id, None)
                if not group:
                    del sw.cachers[peer.area]
        if m.hpos >= 0:
            self._drop_holder(m)
            _cover(sw.coverage, _runs(m), -1)
            sw.version += 1
        if m.mode is _LEECH and peer.role not in _NOT_VIEWERS:
            sw.viewers -= 1
            by_area = sw.viewers_by_area
            left = by_area[peer.area] - 1
            if left:
                by_area[peer.area] = left
            else:
                del by_area[peer.area]

    def _drop_holder(self, m: _Member) -> None:
        m.swarm.holders_epoch += 1
        holders = m.swarm.holders
        last = holders.pop()
        if last is not m:
            holders[m.hpos] = last
            last.hpos = m.hpos
        m.hpos = -1

    def _refresh_holder(self, m: _Member) -> None:
        """After the member's chunks changed: holder index and cached bounds."""
        m.swarm.holders_epoch += 1
        cs = m.cs
        if cs is not None:
            n = len(cs)
            lo = cs.first
            hi = cs.last
        else:
            raw = m.raw
            n = len(raw) if raw else 0
            lo = raw[0][0] if raw else None
            hi = raw[-1][1] if raw else None
        if not n or lo is None or hi is None:
            if m.hpos >= 0:
                self._drop_holder(m)
            # Bounds that no range overlaps: FIND's overlap must see no chunks, not stale ones.
            m.lo = 0
            m.hi = -1
            m.runs = 0
            m.few = None
            return
        if m.hpos < 0:
            m.hpos = len(m.swarm.holders)
            m.swarm.holders.append(m)
        m.lo = lo
        m.hi = hi
        m.runs = n
        m.few = _few(m)

    def _set_chunks(self, m: _Member, raw: Runs | None, cs: ChunkSet | None = None) -> None:
        """Replace the member's known chunks (runs, or a ChunkSet); coverage follows."""
        sw = m.swarm
        if m.hpos >= 0:
            _cover(sw.coverage, _runs(m), -1)
        m.raw = raw
        m.cs = cs
        _cover(sw.coverage, _runs(m), 1)
        sw.version += 1
        self._refresh_holder(m)

    # ------------------------------------------------------------------ timers (§2.3)

    def _arm(self, peer: _Peer) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (peer.deadline, self._timer_seq, peer))

    def next_timer(self) -> float | None:
        """When :meth:`handle_timer` should next run (None: nothing scheduled)."""
        t: float | None = self._timers[0][0] if self._timers else None
        if self._cachers:
            periodic = min(self._next_hints, self._next_global)
            t = periodic if t is None else min(t, periodic)
        return t

    def handle_timer(self, now: float) -> None:
        """Expire init and track timers (§2.3.2 D) and run the push-hint and global-info
        policies when due."""
        self._now = now
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, peer = heapq.heappop(timers)
            if self._peers.get(peer.peer_id) is not peer:
                continue  # deleted since
            if peer.deadline <= now:
                # (D): the init timer (PEER REGISTERED) or track timer (TRACKING) expired.
                self._counters["expired"] += 1
                self._delete(peer, now)
            else:
                self._arm(peer)  # the timer was reset meanwhile; one live entry per peer
        if now >= self._next_hints:
            self._next_hints = now + self.config.hint_interval
            if self._cachers:
                self.update_push_hints(now)
        if now >= self._next_global:
            self._next_global = now + self.config.global_info_interval
            if self._cachers:
                self._send_global_info(now)

    # ------------------------------------------------------------------ popularity

    def _join_count(self, sw: _Swarm, now: float) -> int:
        joins = sw.joins
        if joins is None:
            return 0
        horizon = now - self.config.popularity_window
        while joins and joins[0][0] <= horizon:
            joins.popleft()
        return len(joins)

    def _rate_factor(self) -> float:
        """Joins in the window → joins per minute."""
        return 60.0 / self.config.popularity_window

    def _rarest(self, sw: _Swarm) -> list[tuple[int, int]]:
        """Ranges held by the fewest peers (at least one), from the coverage map."""
        cached = sw.rarest
        if cached is not None and cached[0] == sw.version:
            return cached[1]
        cov = sw.coverage
        out: list[tuple[int, int]] = []
        best = 0
        level = 0
        keys = sorted(cov)
        for i in range(len(keys) - 1):
            k = keys[i]
            level += cov[k]
            if level <= 0:
                continue
            # Neighbouring segments always differ in level (zero changes are not stored), so
            # each segment of the minimum level is a maximal range.
            if best == 0 or level < best:
                best = level
                out = [(k, keys[i + 1] - 1)]
            elif level == best:
                out.append((k, keys[i + 1] - 1))
        out = out[: self.config.rarest_max_ranges]
        sw.rarest = (sw.version, out)
        return out

    def _popularity(self, sw: _Swarm, now: float) -> SwarmPopularity:
        joins = self._join_count(sw, now)
        return SwarmPopularity(
            sw.swarm_id,
            viewers=sw.viewers,
            join_rate=joins * self._rate_factor(),
            rarest=list(self._rarest(sw)),
        )

    def popularity(self, swarm_id: str, now: float | None = None) -> SwarmPopularity | None:
        """Viewers, join rate (per minute) and rarest chunks of one swarm (F5)."""
        sw = self._swarms.get(swarm_id)
        if sw is None:
            return None
        return self._popularity(sw, self._now if now is None else now)

    def _ranked(self, now: float) -> tuple[list[str], dict[str | None, list[str]]]:
        """Swarms by score: globally (top N) and per area with cachers (top K). Score =
        viewers + hint_join_weight × joins per minute; ties by swarm ID."""
        cfg = self.config
        weight = cfg.hint_join_weight * self._rate_factor()
        glob: list[tuple[float, str]] = []
        per_area: dict[str | None, dict[str, float]] = {a: {} for a in self._cachers}
        for sid, sw in list(self._popular.items()):
            n = self._join_count(sw, now)
            if not sw.viewers and not n:
                del self._popular[sid]
                continue
            glob.append((sw.viewers + weight * n, sid))
            for area, v in sw.viewers_by_area.items():
                scores = per_area.get(area)
                if scores is not None:
                    scores[sid] = scores.get(sid, 0.0) + v
            if n and sw.joins is not None:
                for _, area in sw.joins:
                    scores = per_area.get(area)
                    if scores is not None:
                        scores[sid] = scores.get(sid, 0.0) + weight

        def top(items: Iterable[tuple[float, str]], k: int) -> list[str]:
            return [sid for _, sid in heapq.nsmallest(k, items, key=lambda t: (-t[0], t[1]))]

        areas = {
            a: top(((v, s) for s, v in scores.items()), cfg.hint_top_k)
            for a, scores in per_area.items()
        }
        return top(glob, cfg.global_info_top), areas

    def global_info(
        self, swarm_ids: Iterable[str] | None = None, now: float | None = None
    ) -> list[SwarmPopularity]:
        """Global info (F5): for the named swarms the tracker knows, or the global top N."""
        t = self._now if now is None else now
        if swarm_ids is None:
            swarm_ids, _ = self._ranked(t)
        out: list[SwarmPopularity] = []
        for sid in swarm_ids:
            sw = self._swarms.get(sid)
            if sw is not None:
                out.append(self._popularity(sw, t))
        return out

    # ------------------------------------------------------------------ push hints (F4)

    def _holds_head(self, peer: _Peer, swarm_id: str) -> bool:
        m = peer.swarms.get(swarm_id)
        if m is None:
            return False
        last = self.config.hint_head_chunks - 1
        if m.cs is not None:
            return m.cs.contains_range(0, last)
        raw = m.raw
        if raw is None:
            return m.mode is _SEEDER  # not enumerated: a seeder holds everything
        return bool(raw) and raw[0][0] == 0 and raw[0][1] >= last

    def _new_transaction_id(self) -> str:
        # Binary transports carry a 64-bit transaction ID; the model's is its decimal string.
        return str(self._rng.getrandbits(64))

    def update_push_hints(self, now: float | None = None) -> int:
        """Run the push-hint policy now: for each area with cachers, its top K swarms, hinted
        to the area's cachers that do not hold their head yet. Newly issued hints are queued
        for :meth:`pop_outgoing`; returns how many."""
        t = self._now if now is None else now
        cfg = self.config
        _, areas = self._ranked(t)
        issued = 0
        for area, tops in areas.items():
            group = self._cachers.get(area)
            if not group:
                continue
            for pid, peer in group.items():
                hints = peer.hints
                for sid in [s for s, (_, exp) in hints.items() if exp <= t]:
                    del hints[sid]
                new: list[PushHint] = []
                for rank, sid in enumerate(tops):
                    if self._holds_head(peer, sid):
                        hints.pop(sid, None)
                        continue
                    if sid in hints:
                        continue  # still active: pushed once, piggy-backed until it expires
                    hint = PushHint(
                        sid,
                        0,
                        cfg.hint_head_chunks - 1,
                        HintUnit.CHUNKS,
                        priority=len(tops) - rank,
                        expires_in=cfg.hint_expiry,
                    )
                    hints[sid] = (hint, t + cfg.hint_expiry)
                    new.append(hint)
                if new:
                    issued += len(new)
                    self._outbox.append((pid, PushHintMessage(self._new_transaction_id(), new)))
        self._counters["hints_issued"] += issued
        return issued

    def _send_global_info(self, now: float) -> None:
        top, areas = self._ranked(now)
        cache: dict[str, SwarmPopularity] = {}

        def pop_of(sid: str) -> SwarmPopularity | None:
            p = cache.get(sid)
            if p is None:
                sw = self._swarms.get(sid)
                if sw is None:
                    return None
                p = cache[sid] = self._popularity(sw, now)
            return p

        for area, group in self._cachers.items():
            sids = list(dict.fromkeys([*areas.get(area, ()), *top]))
            swarms = [p for p in map(pop_of, sids) if p is not None]
            if not swarms:
                continue
            for pid in group:
                self._outbox.append((pid, GlobalInfoMessage(self._new_transaction_id(), swarms)))
                self._counters["global_info_sent"] += 1

    def hints_for(self, peer_id: str, now: float | None = None) -> list[PushHint]:
        """The peer's active push hints (not expired, head not yet held), with
        ``expires_in`` counted from ``now``: for piggy-backing on a JSON response."""
        peer = self._peers.get(peer_id)
        if peer is None or not peer.hints:
            return []
        t = self._now if now is None else now
        out: list[PushHint] = []
        for sid, (hint, expiry) in list(peer.hints.items()):
            if expiry <= t or self._holds_head(peer, sid):
                del peer.hints[sid]
                continue
            out.append(replace(hint, expires_in=expiry - t))
        return out

    def pop_outgoing(self) -> list[tuple[str, OutgoingMessage]]:
        """Tracker-initiated messages (peer ID, message) for the daemon to send; messages for
        peers deregistered since they were queued are dropped."""
        peers = self._peers
        out = [item for item in self._outbox if item[0] in peers]
        self._outbox.clear()
        return out

    # ------------------------------------------------------------------ inspection

    def peer_state(self, peer_id: str) -> PeerState | None:
        """PEER_REGISTERED or TRACKING; None for an unregistered peer ID."""
        peer = self._peers.get(peer_id)
        return peer.state if peer is not None else None

    def swarms_of(self, peer_id: str) -> dict[str, PeerMode]:
        peer = self._peers.get(peer_id)
        return {} if peer is None else {sid: m.mode for sid, m in peer.swarms.items()}

    def peers_of(self, swarm_id: str) -> dict[str, PeerMode]:
        sw = self._swarms.get(swarm_id)
        return {} if sw is None else {pid: m.mode for pid, m in sw.members.items()}

    def availability(self, peer_id: str, swarm_id: str) -> ChunkSet | None:
        """The chunks the tracker believes ``peer_id`` holds in ``swarm_id`` (a copy); None
        when the peer is not in the swarm or never enumerated them."""
        peer = self._peers.get(peer_id)
        m = peer.swarms.get(swarm_id) if peer is not None else None
        if m is None or (m.raw is None and m.cs is None):
            return None
        return m.cs.copy() if m.cs is not None else ChunkSet(m.raw or ())

    def stats(self) -> dict[str, Any]:
        """Counters for logs and monitoring."""
        n = len(self._peers)
        return {
            "state": self.state.value,
            "peers": n,
            "swarms": len(self._swarms),
            "memberships": sum(len(s.members) for s in self._swarms.values()),
            "peers_by_state": {
                PeerState.PEER_REGISTERED.value: n - self._n_tracking,
                PeerState.TRACKING.value: self._n_tracking,
            },
            "cachers": sum(len(g) for g in self._cachers.values()),
            "transactions_cached": len(self._transactions),
            "outgoing_queued": len(self._outbox),
            "errors_by_code": dict(self._errors_by_code),
            **self._counters,
        }

    def check_invariants(self) -> None:
        """Assert the indexes agree with the membership (a debugging aid for tests)."""
        n_tracking = 0
        for pid, peer in self._peers.items():
            assert peer.peer_id == pid
            assert peer.state in (PeerState.PEER_REGISTERED, PeerState.TRACKING)
            n_tracking += peer.state is PeerState.TRACKING
            for sid, m in peer.swarms.items():
                sw = self._swarms.get(sid)
                assert sw is not None and sw.members.get(pid) is m, (pid, sid)
            assert (self._cachers.get(peer.area, {}).get(pid) is peer) == (peer.role is _CACHER)
        assert n_tracking == self._n_tracking
        assert sum(len(g) for g in self._cachers.values()) == sum(
            1 for p in self._peers.values() if p.role is _CACHER
        )
        assert (self.state is TrackerState.STARTED) == bool(self._peers)
        for sid, sw in self._swarms.items():
            assert sw.members, sid
            cov: dict[int, int] = {}
            viewers: dict[str | None, int] = {}
            n_holders = 0
            for pid, m in sw.members.items():
                owner = self._peers.get(pid)
                assert owner is not None and owner.swarms.get(sid) is m, (pid, sid)
                peer = owner
                lst = sw.seeders if m.mode is _SEEDER else sw.leechers
                assert lst[m.pos] is m
                assert m.raw is None or m.cs is None
                runs = list(_runs(m))
                if m.raw is not None:
                    assert runs == list(ChunkSet(m.raw)), "raw runs not sorted and maximal"
                assert (m.hpos >= 0) == bool(runs)
                if runs:
                    n_holders += 1
                    assert sw.holders[m.hpos] is m
                    assert (m.lo, m.hi, m.runs) == (runs[0][0], runs[-1][1], len(runs))
                    few = list(runs) if len(runs) <= _FEW_RUNS else None
                    assert (None if m.few is None else list(m.few)) == few, (pid, sid)
                    _cover(cov, runs, 1)
                if m.mode is _LEECH and peer.role not in _NOT_VIEWERS:
                    viewers[peer.area] = viewers.get(peer.area, 0) + 1
                in_cachers = sw.cachers.get(peer.area, {}).get(pid) is m
                assert in_cachers == (peer.role is _CACHER)
            assert len(sw.seeders) + len(sw.leechers) == len(sw.members)
            assert len(sw.holders) == n_holders
            assert sum(len(g) for g in sw.cachers.values()) == sum(
                1 for m in sw.members.values() if m.peer.role is _CACHER
            )
            assert cov == sw.coverage, sid
            assert viewers == sw.viewers_by_area and sw.viewers == sum(viewers.values())
        for (ranked_swarm, ranges), (epoch, ranked) in self._rankings.items():
            if (
                epoch == ranked_swarm.holders_epoch
                and self._swarms.get(ranked_swarm.swarm_id) is ranked_swarm
            ):
                assert ranked == _rank(ranked_swarm.holders, ranges), ranges
