"""The cacher's admission, eviction and prefetch decisions (DESIGN F4, F5), sans-IO.

Nothing here touches a disk or a socket, and time is always passed in (``now``, seconds on
any monotonic origin), so every decision can be tested by itself.

**Inputs.** Recency: which chunk ranges were stored and served, and when. Popularity: the
tracker's global info (:class:`~ppsp.tracker.messages.SwarmPopularity`: viewers and join rate
per swarm, F5). Push hints (:class:`~ppsp.tracker.messages.PushHint`: a swarm's head range and
a priority, F4). The configured size limit.

**Eviction** works on *blocks* of ``block_chunks`` consecutive chunks of a swarm, each with
the time it was last stored or served — LRU over chunk ranges inside a swarm, and so over
swarms, whose blocks all age together when nobody watches them. A swarm's *heat* (viewers,
joins per minute and an active push hint, from the tracker) lends its blocks extra life:
``recency_bonus · log2(1 + heat)`` seconds, so a popular channel's chunks outlive a cold
channel's slightly more recent ones. Finally the *head* of a hot channel (VoD: its first
chunks, where every new viewer starts; live: the newest chunks at the live edge, where a
viewer tunes in, RFC 7574 §6.1.2.4) is evicted only after everything else: those are the
chunks the cacher pushes right after the handshake (fast channel change).

Blocks are ordered by ``(head of a hot channel, last use + heat bonus)`` and evicted from
the smallest up until the requested room is free.

**Admission.** Below ``admission_threshold`` of the limit everything is admitted. Above it
a miss-fill is admitted only for a swarm that is hot, hinted, or missed at least
``admit_after_misses`` times within ``miss_window`` seconds — one-off requests for cold
content do not push out what the cacher's viewers watch.

**Prefetch.** Unexpired push hints, highest priority first: VoD hints name the head chunks
still missing; live hints ask to follow the live edge.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ppsp.peer.ranges import ChunkSet
from ppsp.tracker.messages import HintUnit, PushHint, SwarmPopularity

__all__ = ["CachePolicy", "Prefetch", "SwarmHeat"]

#: Chunks per eviction block: 64 KiB of 1 KiB chunks (RFC 7574 §8.1's recommended size).
DEFAULT_BLOCK_CHUNKS = 64
#: Head chunks of a channel kept longest when no push hint says how many.
DEFAULT_HEAD_CHUNKS = 64


@dataclass(slots=True)
class SwarmHeat:
    """What the tracker last said about a swarm's popularity (F5) and its push hint (F4)."""

    viewers: int = 0
    join_rate: float = 0.0  # joins per minute
    info_time: float | None = None
    hint: PushHint | None = None
    hint_expires: float = 0.0


@dataclass(frozen=True, slots=True)
class Prefetch:
    """Fetch this ahead of demand: the missing head ``ranges`` of a VoD swarm, or (live)
    follow the live edge keeping the newest ``head_chunks``."""

    swarm_id: bytes
    priority: int
    ranges: list[tuple[int, int]] = field(default_factory=list)
    follow_live: bool = False
    head_chunks: int = 0


@dataclass(slots=True)
class _SwarmState:
    live: bool = False
    chunk_size: int = 1024
    bytes_per_second: float | None = None
    #: block index → last time a chunk in it was stored or served.
    blocks: dict[int, float] = field(default_factory=dict)
    misses: deque[float] = field(default_factory=deque)


class CachePolicy:
    """See the module docstring."""

    def __init__(
        self,
        limit_bytes: int,
        *,
        block_chunks: int = DEFAULT_BLOCK_CHUNKS,
        head_chunks: int = DEFAULT_HEAD_CHUNKS,
        recency_bonus: float = 60.0,
        join_weight: float = 1.0,
        hint_weight: float = 4.0,
        info_ttl: float = 120.0,
        admission_threshold: float = 0.9,
        admit_after_misses: int = 2,
        miss_window: float = 300.0,
    ) -> None:
        if limit_bytes <= 0 or block_chunks <= 0 or head_chunks < 0:
            raise ValueError("limit and block size must be positive, head chunks ≥ 0")
        self.limit_bytes = limit_bytes
        self.block_chunks = block_chunks
        self.head_chunks = head_chunks
        self.recency_bonus = recency_bonus
        self.join_weight = join_weight
        self.hint_weight = hint_weight
        self.info_ttl = info_ttl
        self.admission_threshold = admission_threshold
        self.admit_after_misses = admit_after_misses
        self.miss_window = miss_window
        self.heat: dict[bytes, SwarmHeat] = {}
        self._swarms: dict[bytes, _SwarmState] = {}

    # -- what the cache tells us

    def register(
        self,
        swarm_id: bytes,
        *,
        live: bool,
        chunk_size: int = 1024,
        bytes_per_second: float | None = None,
    ) -> None:
        """Describe a swarm: live or VoD, chunk size, media rate (for hints in seconds)."""
        st = self._state(swarm_id)
        st.live = live
        st.chunk_size = chunk_size
        st.bytes_per_second = bytes_per_second

    def _state(self, swarm_id: bytes) -> _SwarmState:
        st = self._swarms.get(swarm_id)
        if st is None:
            st = self._swarms[swarm_id] = _SwarmState()
        return st

    def _blocks_of(self, start: int, end: int) -> range:
        return range(start // self.block_chunks, end // self.block_chunks + 1)

    def record_insert(self, swarm_id: bytes, start: int, end: int, now: float) -> None:
        """Chunks ``start..end`` were stored."""
        blocks = self._state(swarm_id).blocks
        for b in self._blocks_of(start, end):
            blocks[b] = max(blocks.get(b, now), now)

    def record_access(self, swarm_id: bytes, start: int, end: int, now: float) -> None:
        """Chunks ``start..end`` were served (or asked for and held)."""
        self.record_insert(swarm_id, start, end, now)

    def record_evict(self, swarm_id: bytes, start: int, end: int) -> None:
        """Chunks ``start..end`` left the cache: forget the blocks they emptied."""
        st = self._swarms.get(swarm_id)
        if st is None:
            return
        k = self.block_chunks
        for b in self._blocks_of(start, end):
            if start <= b * k and (b + 1) * k - 1 <= end:
                st.blocks.pop(b, None)

    def record_miss(self, swarm_id: bytes, now: float) -> None:
        """A viewer asked for chunks of the swarm that the cache lacks."""
        misses = self._state(swarm_id).misses
        misses.append(now)
        while misses and misses[0] < now - self.miss_window:
            misses.popleft()
        while len(misses) > max(16, self.admit_after_misses):
            misses.popleft()

    def forget(self, swarm_id: bytes) -> None:
        self._swarms.pop(swarm_id, None)

    # -- what the tracker tells us (F4, F5)

    def on_global_info(self, swarms: Iterable[SwarmPopularity], now: float) -> None:
        for p in swarms:
            h = self.heat.setdefault(_swarm_bytes(p.swarm_id), SwarmHeat())
            h.viewers = max(0, p.viewers)
            h.join_rate = max(0.0, p.join_rate)
            h.info_time = now

    def on_push_hints(self, hints: Iterable[PushHint], now: float) -> None:
        for hint in hints:
            h = self.heat.setdefault(_swarm_bytes(hint.swarm_id), SwarmHeat())
            h.hint = hint
            h.hint_expires = now + max(0.0, hint.expires_in)

    def heat_of(self, swarm_id: bytes, now: float) -> float:
        """Viewers + join rate (weighted) from fresh global info, plus an active hint."""
        h = self.heat.get(swarm_id)
        if h is None:
            return 0.0
        heat = 0.0
        if h.info_time is not None and now - h.info_time <= self.info_ttl:
            heat += h.viewers + self.join_weight * h.join_rate
        if h.hint is not None and now < h.hint_expires:
            heat += self.hint_weight * (1 + max(0, h.hint.priority))
        return heat

    def _hint_active(self, swarm_id: bytes, now: float) -> PushHint | None:
        h = self.heat.get(swarm_id)
        if h is None or h.hint is None or now >= h.hint_expires:
            return None
        return h.hint

    def head_chunks_of(self, swarm_id: bytes, now: float) -> int:
        """How many head chunks of the swarm are kept longest (and pushed)."""
        hint = self._hint_active(swarm_id, now)
        if hint is None:
            return self.head_chunks
        return max(self.head_chunks, self._hint_chunks(swarm_id, hint))

    def _hint_chunks(self, swarm_id: bytes, hint: PushHint) -> int:
        span = max(0, hint.head_end - hint.head_start + 1)
        if hint.unit == HintUnit.SECONDS:
            st = self._state(swarm_id)
            rate = st.bytes_per_second
            if rate is None:
                return self.head_chunks
            return math.ceil(span * rate / st.chunk_size)
        return span

    # -- decisions

    def admit(self, swarm_id: bytes, used_bytes: int, now: float) -> bool:
        """Whether a miss-fill of the swarm may enter the cache (see the module docstring)."""
        if used_bytes < self.admission_threshold * self.limit_bytes:
            return True
        if self.heat_of(swarm_id, now) > 0:
            return True
        st = self._swarms.get(swarm_id)
        if st is None:
            return False
        recent = sum(1 for t in st.misses if t >= now - self.miss_window)
        return recent >= self.admit_after_misses

    def victims(
        self,
        holdings: Mapping[bytes, ChunkSet],
        chunk_sizes: Mapping[bytes, int],
        need_bytes: int,
        now: float,
    ) -> list[tuple[bytes, int, int]]:
        """Chunk ranges to evict, first to last, freeing at least ``need_bytes`` if the
        holdings allow (the last chunk of a VoD may be short: the cache stops when done)."""
        if need_bytes <= 0:
            return []
        k = self.block_chunks
        candidates: list[tuple[int, float, bytes, int]] = []
        for sid, have in holdings.items():
            if have.is_empty():
                continue
            st = self._state(sid)
            heat = self.heat_of(sid, now)
            bonus = self.recency_bonus * math.log2(1 + heat)
            head_lo, head_hi = self._head_range(sid, have, now)
            seen: set[int] = set()
            for s, e in have.intervals():
                for b in self._blocks_of(s, e):
                    if b in seen:
                        continue
                    seen.add(b)
                    last_use = st.blocks.get(b, float("-inf"))
                    head = heat > 0 and b * k <= head_hi and head_lo <= (b + 1) * k - 1
                    candidates.append((int(head), last_use + bonus, sid, b))
        candidates.sort(key=lambda c: (c[0], c[1], c[2], c[3]))
        out: list[tuple[bytes, int, int]] = []
        freed = 0
        for _, _, sid, b in candidates:
            have = holdings[sid]
            size = chunk_sizes.get(sid, 1024)
            for s, e in have.intervals():
                lo, hi = max(s, b * k), min(e, (b + 1) * k - 1)
                if lo <= hi:
                    out.append((sid, lo, hi))
                    freed += (hi - lo + 1) * size
            if freed >= need_bytes:
                break
        return out

    def _head_range(self, swarm_id: bytes, have: ChunkSet, now: float) -> tuple[int, int]:
        n = self.head_chunks_of(swarm_id, now)
        if n <= 0:
            return 1, 0
        if self._state(swarm_id).live:
            last = have.last
            assert last is not None
            return max(0, last - n + 1), last
        return 0, n - 1

    def prefetch_plan(
        self, holdings: Mapping[bytes, ChunkSet], now: float, limit: int = 16
    ) -> list[Prefetch]:
        """What to fetch ahead of demand, highest priority (then hottest) first."""
        plan: list[tuple[int, float, Prefetch]] = []
        for sid in self.heat:
            hint = self._hint_active(sid, now)
            if hint is None:
                continue
            heat = self.heat_of(sid, now)
            if self._state(sid).live:
                n = self._hint_chunks(sid, hint)
                p = Prefetch(sid, hint.priority, follow_live=True, head_chunks=n)
                plan.append((hint.priority, heat, p))
                continue
            if hint.unit == HintUnit.SECONDS:
                n = self._hint_chunks(sid, hint)
                start, end = 0, n - 1
            else:
                start, end = hint.head_start, hint.head_end
            if end < start:
                continue
            have = holdings.get(sid, ChunkSet())
            missing = [(r.start, r.end) for r in have.missing(start, end)]
            if missing:
                plan.append((hint.priority, heat, Prefetch(sid, hint.priority, missing)))
        plan.sort(key=lambda x: (-x[0], -x[1], x[2].swarm_id))
        return [p for _, _, p in plan[:limit]]


def _swarm_bytes(swarm_id: str) -> bytes:
    """The PPSPP swarm ID of a PPSP-TP swarm ID string (lowercase hex, tracker messages)."""
    try:
        return bytes.fromhex(swarm_id)
    except ValueError:
        return swarm_id.encode()
