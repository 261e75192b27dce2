"""The tracker in overlay mode: trackers are peers of a RELOAD tracker overlay
(draft-xiao-ppsp-reload-distributed-tracker-03; docs/tracker.md "Overlay mode").

Each tracker is a *connection tracker* for the PPSP peers that talk PPSP-TP to it and a RELOAD
peer (:class:`reload.aio.OverlayNode`, in the same process) of the tracker overlay. The node
responsible for H(swarm) is that swarm's *swarm tracker* (xiao §1, §3.2). The usage
(Kind-IDs, values, Resource-IDs) is :mod:`reload.usages`; this module is the tracker's side:

* **Local state stays authoritative.** :class:`OverlayTracker` is the sans-IO
  :class:`~ppsp.tracker.state.Tracker` plus bookkeeping of which swarms and peers changed; it
  answers every request exactly as a standalone tracker does (xiao §3.2: "TrackerA first
  handles the registration locally").
* **Publication, asynchronous and coalesced** (xiao §3.2 Figure 2, §5): the swarms whose
  membership changed are Stored at most once per ``coalesce`` seconds — one SWARM-PEERS entry
  at H(swarm) per swarm, or, when at least ``batch_threshold`` changed swarms map to one
  responsible node (a batch availability report), one PEER-BATCH Store per responsible node
  (Resource-ID = its Node-ID) carrying all this tracker's swarms in that node's range. Every
  ``lifetime / 3`` seconds, and when the ring changes, everything is Stored again as one
  PEER-BATCH per responsible node, so the entries of a tracker that died expire within
  ``lifetime``. A swarm this tracker no longer has peers in is Stored with an empty peer list
  (for one lifetime), which overrides its older entries at the responsible node. PEER-STATUS
  (xiao §5) records at H(Peer-ID) which tracker holds a peer.
* **FIND** (xiao §4): the answer is the local members ∪ the members Fetched from the overlay
  (SWARM-PEERS at H(swarm); the responsible node adds the PEER-BATCH entries it holds, see
  :class:`reload.usages.tracker.SwarmPeersRule`), ranked by the tracker's own policy
  (:func:`merge_peers`): same-area cachers, then holders of the wanted chunks (most first),
  seeders, leechers. Fetched swarms are cached for ``fetch_cache`` seconds, concurrent FINDs of
  one swarm share one Fetch, and a Fetch that fails or takes longer than ``fetch_timeout``
  leaves the answer to the local state (logged). A FIND for a swarm the local tracker does not
  track (§2.3.2 C would answer 03) is answered from the overlay when it knows members.

The decisions that are pure (what to Store, how to rank) are functions here, tested without
sockets; :class:`TrackerOverlay` is the thin asyncio adapter around them (DESIGN §3).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ppsp.tracker.config import OverlaySettings
from ppsp.tracker.messages import (
    AddressType,
    Connect,
    ErrorCode,
    Find,
    PeerAddress,
    PeerInfo,
    PeerMode,
    Request,
    Response,
    ResponseType,
    Role,
    SwarmResult,
)
from ppsp.tracker.state import PeerState, Tracker, TrackerConfig, _Member, _overlap, _Peer, _runs
from reload.messages import DataValue, DictionaryEntry, StoredDataSpecifier
from reload.usages.kinds import (
    PEER_BATCH,
    PEER_STATUS,
    SWARM_PEERS,
    peer_batch_resource,
    peer_status_resource,
    swarm_peers_resource,
    tracker_key,
)
from reload.usages.tracker import (
    info_of,
    install_swarm_peers_rule,
    peer_batch_entry,
    peer_status_entry,
    read_swarm_peers,
    record_of,
    swarm_bytes,
    swarm_peers_entry,
)
from reload.usages.values import PeerRecord

if TYPE_CHECKING:
    from reload.aio import OverlayNode
    from reload.node import ReloadNode

__all__ = [
    "Candidate",
    "OverlayCounters",
    "OverlaySettings",
    "OverlayTracker",
    "Pass",
    "TrackerOverlay",
    "batch_parts",
    "merge_peers",
    "open_overlay",
    "plan_stores",
    "responsible_node",
]

log = logging.getLogger(__name__)

#: Fetched swarms kept at most (the oldest half goes when full).
MAX_CACHED_SWARMS = 10_000
#: PEER-STATUS Stores per flush; more wait for the next flush (a reconnect storm of thousands of
#: peers must not become thousands of Stores at once).
STATUS_PER_FLUSH = 64
#: Swarm results of one CONNECT that get overlay peers merged (a LEECH JOIN has one; a batch
#: registration answered with peer lists for thousands of swarms is left local).
MAX_CONNECT_MERGES = 4
#: How often the maintenance loop looks at the ring (a changed ring re-publishes everything).
RING_POLL = 1.0
_OK = ResponseType.SUCCESSFUL


@dataclass(slots=True)
class OverlayCounters:
    """What the overlay side did, for logs, tests and the benchmark."""

    swarm_peers_stores: int = 0
    peer_batch_stores: int = 0
    peer_status_stores: int = 0
    store_failures: int = 0
    refreshes: int = 0
    fetches: int = 0
    fetch_failures: int = 0
    fetch_cache_hits: int = 0
    malformed_values: int = 0
    overlay_answers: int = 0  # FINDs whose answer lists at least one peer from the overlay


# ---------------------------------------------------------------------------- the local state


_ROLE_ORDER = {Role.SOURCE: 0, Role.CACHER: 0}


class OverlayTracker(Tracker):
    """The sans-IO tracker, answering exactly as :class:`Tracker`, that also notes which swarms
    and peers changed since the overlay last heard of them.

    It hooks the state's own membership primitives (join, leave, chunks, profile, registration),
    through which every change passes, rather than diffing: a standalone tracker pays nothing,
    and a batch of 10,000 swarms costs one set insertion per swarm."""

    def __init__(
        self,
        config: TrackerConfig | None = None,
        now: float = 0.0,
        *,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(config, now, rng=rng)
        #: Swarm IDs whose members, modes, chunks or member profiles changed.
        self.dirty_swarms: set[str] = set()
        #: Peer IDs registered, deleted or moved to TRACKING.
        self.dirty_peers: set[str] = set()

    # -- hooks (every change of what a PeerRecord or PeerStatus says passes here) ---------

    def _join(
        self,
        peer: _Peer,
        swarm_id: str,
        mode: PeerMode,
        runs: list[tuple[int, int]] | None,
        now: float,
    ) -> _Member:
        self.dirty_swarms.add(swarm_id)
        return super()._join(peer, swarm_id, mode, runs, now)

    def _leave(self, m: _Member, now: float) -> None:
        self.dirty_swarms.add(m.swarm.swarm_id)
        super()._leave(m, now)

    def _set_chunks(self, m: _Member, raw: Any, cs: Any = None) -> None:
        self.dirty_swarms.add(m.swarm.swarm_id)
        super()._set_chunks(m, raw, cs)

    def _refresh_holder(self, m: _Member) -> None:
        # An availability delta changes a member's chunks in place, then lands here.
        self.dirty_swarms.add(m.swarm.swarm_id)
        super()._refresh_holder(m)

    def _set_profile(self, peer: _Peer, role: Role | None, area: str | None) -> None:
        self.dirty_swarms.update(peer.swarms)
        super()._set_profile(peer, role, area)

    def _update_profile(self, peer: _Peer, req: Connect, source: tuple[str, int]) -> None:
        info = peer.info
        addresses = peer.addresses
        super()._update_profile(peer, req, source)
        if peer.addresses is not addresses or (peer.info is None and info is not None):
            self.dirty_swarms.update(peer.swarms)  # a record lists the peer's addresses

    def _add_peer(self, peer: _Peer) -> None:
        self.dirty_peers.add(peer.peer_id)
        super()._add_peer(peer)

    def _delete(self, peer: _Peer, now: float) -> None:
        self.dirty_peers.add(peer.peer_id)
        super()._delete(peer, now)

    def _touch(self, peer: _Peer, now: float) -> None:
        if peer.state is PeerState.PEER_REGISTERED:
            self.dirty_peers.add(peer.peer_id)
        super()._touch(peer, now)

    # -- what the overlay side reads ----------------------------------------------------------

    def records(self, swarm_id: str, updated: float, limit: int) -> tuple[PeerRecord, ...]:
        """This tracker's members of ``swarm_id`` as PeerRecords (none: not tracked here), at
        most ``limit``: sources and cachers first, then seeders, then leechers."""
        sw = self._swarms.get(swarm_id)
        if sw is None:
            return ()
        members = list(sw.members.values())
        if len(members) > limit:
            members.sort(
                key=lambda m: (_ROLE_ORDER.get(m.peer.role, 1) if m.peer.role else 1, m.mode)
            )
            members = members[:limit]
        out: list[PeerRecord] = []
        for m in members:
            record = record_of(self._info(m.peer), m.mode, _runs(m), updated)
            if record is not None:
                out.append(record)
        return tuple(out)

    def swarm_ids(self) -> list[str]:
        """Every swarm tracked here."""
        return list(self._swarms)

    def peer_status(self, peer_id: str) -> tuple[str, int] | None:
        """(state, number of swarms) of a registered peer; None when not registered."""
        peer = self._peers.get(peer_id)
        if peer is None:
            return None
        return peer.state.value, len(peer.swarms)

    def peer_ids(self) -> list[str]:
        """Every registered peer ID."""
        return list(self._peers)

    def member(self, swarm_id: str, peer_id: str) -> bool:
        """Whether ``peer_id`` is a member of ``swarm_id`` here."""
        sw = self._swarms.get(swarm_id)
        return sw is not None and peer_id in sw.members

    def facts(
        self, swarm_id: str, peer_id: str, ranges: Sequence[tuple[int, int]] | None
    ) -> tuple[PeerMode | None, int]:
        """The mode of a local member and how many of ``ranges`` it holds (what
        :func:`merge_peers` ranks by)."""
        sw = self._swarms.get(swarm_id)
        m = sw.members.get(peer_id) if sw is not None else None
        if m is None:
            return None, 0
        return m.mode, (_overlap(m, ranges) if ranges and m.runs else 0)

    def area_of(self, peer_id: str) -> str | None:
        """The area a registered peer declared."""
        peer = self._peers.get(peer_id)
        return peer.area if peer is not None else None


# ---------------------------------------------------------------------------- ranking


@dataclass(slots=True)
class Candidate:
    """One peer from the overlay, prepared for ranking: its PeerInfo (built once per fetched
    record, so the encoders' memos hit) and its chunk runs, sorted and merged."""

    info: PeerInfo
    mode: PeerMode
    starts: list[int]
    ends: list[int]

    @classmethod
    def of(cls, record: PeerRecord) -> Candidate:
        runs: list[list[int]] = []
        for s, e in sorted(record.ranges):
            if runs and s <= runs[-1][1] + 1:
                runs[-1][1] = max(runs[-1][1], e)
            else:
                runs.append([s, e])
        mode = PeerMode.SEEDER if record.mode == "seeder" else PeerMode.LEECH
        return cls(info_of(record), mode, [r[0] for r in runs], [r[1] for r in runs])

    def overlap(self, ranges: Sequence[tuple[int, int]]) -> int:
        """Chunks of ``ranges`` (disjoint) this peer holds."""
        total = 0
        starts, ends = self.starts, self.ends
        for s, e in ranges:
            i = bisect.bisect_right(ends, s - 1)  # first run ending at or after s
            while i < len(starts) and starts[i] <= e:
                a = max(s, starts[i])
                b = min(e, ends[i])
                if a <= b:
                    total += b - a + 1
                i += 1
        return total


def _group(info: PeerInfo, mode: PeerMode | None, overlap: int, area: str | None) -> int:
    """The tracker's FIND order (ppsp.tracker.state, "Peer selection for FIND"): 0 same-area
    cachers, 1 holders of wanted chunks, 2 seeders, 3 leechers."""
    if area is not None and info.role is Role.CACHER and info.area == area:
        return 0
    if overlap > 0:
        return 1
    return 2 if mode is PeerMode.SEEDER else 3


def merge_peers(
    local: Sequence[tuple[PeerInfo, PeerMode | None, int]],
    remote: Sequence[Candidate],
    *,
    requester: str,
    area: str | None,
    ranges: Sequence[tuple[int, int]] | None,
    k: int,
    exclude: Callable[[str], bool] = lambda _peer: False,
) -> tuple[list[PeerInfo], int]:
    """The FIND answer from the local answer (PeerInfo, mode, overlap, in the local order) and
    the overlay's candidates (in the order to prefer among equals: shuffle them first to
    spread load), ranked alike; at most ``k``, never the requester, each peer once (the local
    entry wins; ``exclude`` drops remote peers known locally). Returns the list and how many
    of it came from the overlay."""
    if k <= 0:
        return [], 0
    seen = {requester}
    keyed: list[tuple[int, int, int, int, PeerInfo]] = []
    for i, (info, mode, overlap) in enumerate(local):
        if info.peer_id in seen:
            continue
        seen.add(info.peer_id)
        group = _group(info, mode, overlap, area)
        keyed.append((group, -overlap if group < 2 else 0, i, 0, info))
    for i, cand in enumerate(remote):
        peer_id = cand.info.peer_id
        if peer_id in seen or exclude(peer_id):
            continue
        seen.add(peer_id)
        overlap = cand.overlap(ranges) if ranges else 0
        group = _group(cand.info, cand.mode, overlap, area)
        keyed.append((group, -overlap if group < 2 else 0, i, 1, cand.info))
    keyed.sort(key=lambda item: item[:4])
    chosen = keyed[:k]
    return [item[4] for item in chosen], sum(item[3] for item in chosen)


# ---------------------------------------------------------------------------- what to Store


def responsible_node(ring: Sequence[bytes], resource: bytes) -> bytes:
    """The node responsible for ``resource`` in a sorted list of Node-IDs (§10.1: the first
    at or after it clockwise)."""
    i = bisect.bisect_left(ring, resource)
    return ring[i] if i < len(ring) else ring[0]


def plan_stores(
    dirty: Iterable[str],
    responsible: Callable[[str], bytes],
    threshold: int,
) -> tuple[list[str], set[bytes]]:
    """Split changed swarms into those Stored one by one (SWARM-PEERS) and the responsible
    nodes that get one PEER-BATCH each.

    At least ``threshold`` changed swarms (a batch availability report, or many changes
    coalesced) go as one PEER-BATCH per responsible node they map to — however unevenly
    random Node-IDs divide the ring, the report costs at most one Store per node. Fewer go
    one by one: a PEER-BATCH replaces this tracker's whole entry at that node, all its swarms
    there, which one changed swarm does not warrant."""
    swarms = list(dirty)
    if len(swarms) < threshold:
        return swarms, set()
    return [], {responsible(swarm) for swarm in swarms}


def batch_parts(
    node_id: bytes,
    tracker: bytes,
    swarms: Mapping[bytes, Sequence[PeerRecord]],
    budget: int,
) -> list[tuple[bytes, DictionaryEntry]]:
    """The PEER-BATCH Stores that carry ``swarms`` to responsible node ``node_id``: one at
    Resource-ID = its Node-ID when the value fits ``budget`` bytes (the Kind's max-size and
    the overlay's max-message-size bound it), else parts at Node-ID, Node-ID − 1, … — all in
    the node's own range (predecessor, Node-ID] but for a ring of astronomically close
    Node-IDs — which the responsible node's derived fetch reads alike."""
    entry = peer_batch_entry(tracker, swarms)
    if len(entry.value.value) <= budget or len(swarms) <= 1:
        return [(peer_batch_resource(node_id), entry)]
    parts = -(-len(entry.value.value) // budget) + 1
    items = sorted(swarms.items())
    size = -(-len(items) // parts)
    modulus = 1 << (8 * len(node_id))
    base = int.from_bytes(node_id, "big")
    out = []
    for n in range(0, len(items), size):
        chunk = dict(items[n : n + size])
        resource = ((base - n // size) % modulus).to_bytes(len(node_id), "big")
        out.append((resource, peer_batch_entry(tracker, chunk)))
    return out


# ---------------------------------------------------------------------------- the adapter


@dataclass(frozen=True, slots=True)
class Pass:
    """One publication pass: full (refresh, ring change) or of the changed swarms, how many
    changed swarms it carried, and the membership Stores it made (PEER-BATCH, SWARM-PEERS)."""

    full: bool
    changed: int
    peer_batch_stores: int
    swarm_peers_stores: int


@dataclass(slots=True)
class _Fetched:
    expires: float
    candidates: list[Candidate] = field(default_factory=list)


class TrackerOverlay:
    """The tracker's RELOAD side: publication and FIND merging (module doc). Create with
    :func:`open_overlay` (or directly around a started node), then :meth:`start`."""

    def __init__(
        self, node: OverlayNode, tracker: OverlayTracker, settings: OverlaySettings
    ) -> None:
        if node.node is None:
            raise ValueError("the overlay node is not started")
        self.node = node
        self._reload: ReloadNode = node.node
        self.tracker = tracker
        self.settings = settings
        self.node_id: bytes = node.node_id
        self.key = tracker_key(self.node_id)
        self.counters = OverlayCounters()
        self.loop = asyncio.get_running_loop()
        self._rng = random.Random()
        self._fetched: dict[str, _Fetched] = {}
        self._inflight: dict[str, asyncio.Future[list[Candidate]]] = {}
        self._gone: dict[str, float] = {}  # swarm → when it emptied here (wall clock)
        self._resources: dict[str, bytes] = {}
        self._status_at: dict[str, float] = {}  # peer → when its PEER-STATUS was Stored
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_flush = 0.0
        self._next_refresh = 0.0
        self._ring: tuple[bytes, ...] = ()
        self._closed = False
        #: The last publication passes (for logs, tests and the benchmark).
        self.passes: collections.deque[Pass] = collections.deque(maxlen=64)
        self.rule = install_swarm_peers_rule(self._reload.store_)
        sizes = {k.resolved_kind_id(): k.max_size for k in self._reload.config.kinds}
        missing = [hex(k) for k in (SWARM_PEERS, PEER_BATCH, PEER_STATUS) if k not in sizes]
        if missing:
            raise ValueError(f"the overlay does not declare the tracker Kinds {missing}")
        #: Largest SWARM-PEERS value the overlay takes (the Kind's max-size, §7.4.1.1).
        self._swarm_peers_max = sizes[SWARM_PEERS]
        self._batch_budget = min(settings.batch_budget, sizes[PEER_BATCH])

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the publication loop (the first pass publishes whatever is tracked)."""
        if self._worker is None:
            self._worker = self.loop.create_task(self._work())

    async def close(self, *, leave: bool = True) -> None:
        """Stop publishing and leave the overlay (``leave=False``: the node is left as is)."""
        self._closed = True
        self._wake.set()
        tasks = [t for t in (self._worker, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if leave:
            await self.node.close()

    # -- publication --------------------------------------------------------------------------

    def poke(self) -> None:
        """Something may have changed: wake the publication loop if it did."""
        tracker = self.tracker
        if (tracker.dirty_swarms or tracker.dirty_peers) and not self._wake.is_set():
            self._wake.set()

    def _ring_view(self) -> tuple[bytes, ...]:
        table = self._reload.chord.table
        return tuple(sorted({self.node_id, *table.peers}))

    def _resource(self, swarm: str) -> bytes:
        """SWARM-PEERS Resource-ID of a swarm (H(swarm ID), memoised: every flush maps swarms
        to responsible nodes)."""
        resource = self._resources.get(swarm)
        if resource is None:
            if len(self._resources) >= MAX_CACHED_SWARMS * 10:
                self._resources.clear()
            function = self._reload.store_.resource_id_function
            resource = swarm_peers_resource(swarm_bytes(swarm), function)
            self._resources[swarm] = resource
        return resource

    def _responsible(self, ring: Sequence[bytes]) -> Callable[[str], bytes]:
        def responsible(swarm: str) -> bytes:
            return responsible_node(ring, self._resource(swarm))

        return responsible

    async def _work(self) -> None:
        settings = self.settings
        self._next_refresh = self.loop.time()  # publish what is tracked at once
        while not self._closed:
            now = self.loop.time()
            wait = max(0.0, min(self._next_refresh - now, RING_POLL))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            if self._closed:
                return
            # Coalesce (at most one Store per swarm per interval): changes keep arriving
            # while we wait, and go out together.
            delay = self._last_flush + settings.coalesce - self.loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._wake.clear()
            ring = self._ring_view()
            full = self.loop.time() >= self._next_refresh or ring != self._ring
            if not full and not self.tracker.dirty_swarms and not self.tracker.dirty_peers:
                continue  # a look at the ring, nothing changed
            try:
                await self._flush(ring, full)
            except Exception:  # the loop must go on: the next pass retries
                log.exception("tracker overlay publication failed")
            self._last_flush = self.loop.time()

    async def _flush(self, ring: tuple[bytes, ...], full: bool) -> None:
        settings = self.settings
        tracker = self.tracker
        wall = time.time()
        dirty = tracker.dirty_swarms
        tracker.dirty_swarms = set()
        responsible = self._responsible(ring)
        for swarm in list(self._gone):
            if wall - self._gone[swarm] > settings.lifetime:
                del self._gone[swarm]
        current = set(tracker.swarm_ids())
        for swarm in dirty:
            if swarm in current:
                self._gone.pop(swarm, None)
            else:
                self._gone[swarm] = wall
        if full:
            self._ring = ring
            self.counters.refreshes += 1
            self._next_refresh = self.loop.time() + settings.lifetime / 3
            singles: list[str] = []
            batched = set(ring)
        else:
            singles, batched = plan_stores(dirty, responsible, settings.batch_threshold)
        jobs: list[Coroutine[Any, Any, bool]] = []
        if batched:
            grouped: dict[bytes, dict[bytes, Sequence[PeerRecord]]] = {n: {} for n in batched}
            owner: dict[bytes, list[str]] = {n: [] for n in batched}
            for swarm in (*current, *self._gone):
                node = responsible(swarm)
                group = grouped.get(node)
                if group is None:
                    continue
                group[swarm_bytes(swarm)] = tracker.records(swarm, wall, settings.max_records)
                owner[node].append(swarm)
            for node, swarms in grouped.items():
                if not swarms:
                    continue  # nothing of ours there: older entries expire by themselves
                for resource, entry in batch_parts(node, self.node_id, swarms, self._batch_budget):
                    jobs.append(self._store(resource, PEER_BATCH, entry, owner[node]))
        for swarm in singles:
            entry = self._swarm_peers(tracker.records(swarm, wall, settings.max_records))
            jobs.append(self._store(self._resource(swarm), SWARM_PEERS, entry, [swarm]))
        self.passes.append(Pass(full, len(dirty), len(jobs) - len(singles), len(singles)))
        if settings.peer_status:
            jobs.extend(self._status_jobs(wall, full))
        if not jobs:
            return
        results = await asyncio.gather(*jobs, return_exceptions=True)
        if any(result is not True for result in results):
            # Failed Stores made their swarms dirty again; a full pass soon covers the rest.
            retry = self.loop.time() + max(1.0, settings.coalesce * 5)
            self._next_refresh = min(self._next_refresh, retry)

    def _swarm_peers(self, records: Sequence[PeerRecord]) -> DictionaryEntry:
        """The SWARM-PEERS entry, cut to the Kind's max-size (the first records, the best, stay:
        :meth:`OverlayTracker.records` puts sources and cachers first)."""
        entry = swarm_peers_entry(self.node_id, records)
        count = len(records)
        while len(entry.value.value) > self._swarm_peers_max and count > 0:
            count = count * 3 // 4
            entry = swarm_peers_entry(self.node_id, records[:count])
        return entry

    def _status_jobs(self, wall: float, full: bool) -> list[Coroutine[Any, Any, bool]]:
        settings = self.settings
        tracker = self.tracker
        if full:
            stale = wall - settings.status_lifetime / 2
            for peer_id in tracker.peer_ids():
                if self._status_at.get(peer_id, 0.0) < stale:
                    tracker.dirty_peers.add(peer_id)
        jobs = []
        function = self._reload.store_.resource_id_function
        for _ in range(min(STATUS_PER_FLUSH, len(tracker.dirty_peers))):
            peer_id = tracker.dirty_peers.pop()
            status = tracker.peer_status(peer_id)
            if status is None and peer_id not in self._status_at:
                continue  # registered and gone between two passes: nothing was published
            try:
                resource = peer_status_resource(peer_id, function)
                if status is None:
                    self._status_at.pop(peer_id, None)
                    # A deleted registration: the entry goes (a tombstone, §7.4.1.3).
                    entry = DictionaryEntry(self.key, DataValue(False, b""))
                else:
                    self._status_at[peer_id] = wall
                    entry = peer_status_entry(self.node_id, peer_id, status[0], status[1], wall)
            except ValueError as exc:
                log.debug("no PEER-STATUS for %r: %s", peer_id, exc)
                continue
            jobs.append(self._store(resource, PEER_STATUS, entry, [], lifetime_status=True))
        if tracker.dirty_peers:
            self._wake.set()  # the rest next time
        return jobs

    async def _store(
        self,
        resource: bytes,
        kind: int,
        entry: DictionaryEntry,
        swarms: list[str],
        *,
        lifetime_status: bool = False,
    ) -> bool:
        settings = self.settings
        lifetime = settings.status_lifetime if lifetime_status else settings.lifetime
        try:
            await self.node.store(
                resource, kind, [entry], lifetime=lifetime, timeout=settings.store_timeout
            )
        except Exception as exc:
            self.counters.store_failures += 1
            # Retried: the swarms are dirty again (a refresh would carry them anyway).
            self.tracker.dirty_swarms.update(s for s in swarms if s)
            log.warning(
                "tracker overlay: Store of Kind %#x at %s failed: %s", kind, resource.hex(), exc
            )
            return False
        if kind == SWARM_PEERS:
            self.counters.swarm_peers_stores += 1
        elif kind == PEER_BATCH:
            self.counters.peer_batch_stores += 1
        else:
            self.counters.peer_status_stores += 1
        return True

    # -- FIND ------------------------------------------------------------------------------

    def augment(
        self, request: Request, response: Response, source: tuple[str, int]
    ) -> Response | Coroutine[Any, Any, Response]:
        """The answer to ``request`` in overlay mode: ``response`` itself when the overlay has
        nothing to add to it, the merged answer when the fetched swarms are cached, else a
        coroutine that fetches and merges (the server awaits it off the hot path)."""
        swarms = self._swarms_to_merge(request, response)
        if not swarms:
            return response
        now = self.loop.time()
        cached: dict[str, list[Candidate]] = {}
        for swarm in swarms:
            hit = self._fetched.get(swarm)
            if hit is None or hit.expires <= now:
                return self._augment_later(request, response, source, swarms)
            cached[swarm] = hit.candidates
        self.counters.fetch_cache_hits += 1
        return self._merge(request, response, source, cached)

    def _swarms_to_merge(self, request: Request, response: Response) -> list[str]:
        if isinstance(request, Find):
            if response.response_type is _OK:
                return [request.swarm_id]
            if (
                response.error_code == ErrorCode.FORBIDDEN_ACTION
                and self.tracker.peer_state(request.peer_id) is not None
            ):
                return [request.swarm_id]  # registered, swarm unknown here (§2.3.2 C)
            return []
        if isinstance(request, Connect) and response.response_type is _OK:
            listed = [r.swarm_id for r in response.swarm_results if r.peers is not None]
            if 0 < len(listed) <= MAX_CONNECT_MERGES:
                return listed
        return []

    async def _augment_later(
        self,
        request: Request,
        response: Response,
        source: tuple[str, int],
        swarms: list[str],
    ) -> Response:
        found = await asyncio.gather(*(self._candidates(s) for s in swarms))
        return self._merge(request, response, source, dict(zip(swarms, found, strict=True)))

    async def _candidates(self, swarm: str) -> list[Candidate]:
        """The overlay's peers of ``swarm`` (cached; one Fetch for concurrent FINDs)."""
        now = self.loop.time()
        hit = self._fetched.get(swarm)
        if hit is not None and hit.expires > now:
            return hit.candidates
        future = self._inflight.get(swarm)
        if future is None:
            future = self.loop.create_future()
            self._inflight[swarm] = future
            task = self.loop.create_task(self._fetch(swarm, future))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            return await asyncio.shield(future)
        except Exception:
            return []

    async def _fetch(self, swarm: str, future: asyncio.Future[list[Candidate]]) -> None:
        settings = self.settings
        candidates: list[Candidate] = []
        try:
            self.counters.fetches += 1
            answer = await self.node.fetch(
                self._resource(swarm),
                [StoredDataSpecifier(SWARM_PEERS, keys=())],  # every key: a wildcard (§7.4.2.1)
                timeout=settings.fetch_timeout,
            )
            values = [v for r in answer.kind_responses if r.kind == SWARM_PEERS for v in r.values]
            by_tracker, bad = read_swarm_peers(values, skip=self.key)
            self.counters.malformed_values += bad
            for records in by_tracker.values():
                candidates.extend(Candidate.of(r) for r in records)
        except Exception as exc:
            self.counters.fetch_failures += 1
            log.warning(
                "tracker overlay: Fetch of swarm %s failed (answering from local state): %s",
                swarm[:32],
                exc,
            )
            future.set_result([])
            self._inflight.pop(swarm, None)
            return
        if len(self._fetched) >= MAX_CACHED_SWARMS:
            for old in list(self._fetched)[: MAX_CACHED_SWARMS // 2]:
                del self._fetched[old]
        self._fetched[swarm] = _Fetched(self.loop.time() + settings.fetch_cache, candidates)
        self._inflight.pop(swarm, None)
        future.set_result(candidates)

    def _merge(
        self,
        request: Request,
        response: Response,
        source: tuple[str, int],
        found: dict[str, list[Candidate]],
    ) -> Response:
        tracker = self.tracker
        config = tracker.config
        area: str | None = None
        ranges: Sequence[tuple[int, int]] | None = None
        peer_num = None
        if isinstance(request, Find):
            area = request.area if request.area is not None else tracker.area_of(request.peer_id)
            ranges = request.ranges
            peer_num = request.peer_num
        elif isinstance(request, Connect):
            area = request.area if request.area is not None else tracker.area_of(request.peer_id)
            peer_num = request.peer_num
        if peer_num is None:
            k = min(config.default_find_peers, config.max_find_peers)
        else:
            k = max(0, min(peer_num.peer_count, config.max_find_peers))
        results: list[SwarmResult] = []
        from_overlay = 0
        if response.response_type is _OK:
            for result in response.swarm_results:
                remote = found.get(result.swarm_id)
                if remote is None or result.peers is None:
                    results.append(result)
                    continue
                merged, n = self._merge_one(
                    result.swarm_id, result.peers, remote, request.peer_id, area, ranges, k
                )
                from_overlay += n
                results.append(SwarmResult(result.swarm_id, result.result, merged))
            if not from_overlay:
                return response
            self.counters.overlay_answers += 1
            # The tracker shares responses with its replay cache: never mutate one.
            return dataclasses.replace(response, swarm_results=results)
        # A FIND for a swarm not tracked here: the overlay's members, if it knows any.
        assert isinstance(request, Find)
        merged, n = self._merge_one(
            request.swarm_id, [], found.get(request.swarm_id, []), request.peer_id, area, ranges, k
        )
        if not merged:
            return response
        self.counters.overlay_answers += 1
        reflexive = PeerAddress(source[0], source[1], type=AddressType.REFLEXIVE)
        return Response(
            request.transaction_id,
            peer_address=reflexive,
            swarm_results=[SwarmResult(request.swarm_id, _OK, merged)],
        )

    def _merge_one(
        self,
        swarm: str,
        local: Sequence[PeerInfo],
        remote: list[Candidate],
        requester: str,
        area: str | None,
        ranges: Sequence[tuple[int, int]] | None,
        k: int,
    ) -> tuple[list[PeerInfo], int]:
        tracker = self.tracker
        facts = [(info, *tracker.facts(swarm, info.peer_id, ranges)) for info in local]
        shuffled = list(remote)
        self._rng.shuffle(shuffled)  # spread load among equally good remote peers
        return merge_peers(
            facts,
            shuffled,
            requester=requester,
            area=area,
            ranges=ranges,
            k=k,
            exclude=lambda peer: tracker.member(swarm, peer),
        )


async def open_overlay(
    settings: OverlaySettings, tracker: OverlayTracker, *, join_timeout: float = 30.0
) -> TrackerOverlay:
    """Start the tracker's RELOAD node from ``settings.daemon`` (the ``p2pcdn overlay``
    daemon configuration), join the tracker overlay and wrap it; call :meth:`start` once the
    tracker serves."""
    from reload.aio import OverlayNode, load_daemon_config

    node = OverlayNode.from_config(load_daemon_config(settings.daemon))
    await node.start(join_timeout=join_timeout)
    try:
        return TrackerOverlay(node, tracker, settings)
    except BaseException:
        await node.abort()
        raise
