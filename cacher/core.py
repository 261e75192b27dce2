"""The cacher's decisions without I/O (DESIGN §3: sans-IO core, injected time).

:class:`TrackerSession` decides what to say to the tracker and when (flow F2):

- on every (re)connect ONE batch availability report of everything held (a CONNECT carrying
  ``availability``; a tracker that still tracks us answers its entries FAILED — Table 6 of
  RFC 7846 §4.1.1, "SEEDER JOIN while TRACKING" — and the same snapshot goes in a STAT_REPORT
  instead, which replaces what the tracker knows);
- an incremental report (STAT_REPORT ``deltas``) ``report_delay`` seconds after the cache
  changed, so that a segment of 64 chunks is one report, not 64;
- a keep-alive (an empty STAT_REPORT, RFC 7846 §4.1.3) when nothing was sent for
  ``keepalive`` seconds, so the tracker's track timer (§2.3.2) never expires;
- after any failure (timeout, connection lost, the tracker forgot us) the session is
  disconnected: the next action is the batch report again, retried with exponential backoff.
  The batch subsumes every delta that was lost with the failure.

:func:`plan_fill` decides which storage-overlay segments fill a miss, :func:`plan_prefetch`
which ones carry out the policy's prefetch list (push hints, F4). Segments are the storage
overlay's unit (docs/usages.md): ``segment_chunks`` chunks aligned to a Merkle bin.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cacher.policy import Prefetch
from ppsp.peer.ranges import ChunkSet

__all__ = [
    "SegmentGeometry",
    "TrackerAction",
    "TrackerSession",
    "describe_holdings",
    "plan_fill",
    "plan_prefetch",
]

#: Most segments one miss may fetch: a hostile REQUEST for a whole film costs a bounded
#: amount of overlay traffic; the leecher asks again for the rest (its request window is
#: 64 chunks, ppsp.peer.channel.REQUEST_WINDOW_START, so honest misses need one or two).
MAX_FILL_SEGMENTS = 8


class TrackerAction(enum.Enum):
    BATCH = "batch"  # CONNECT with the batch availability report
    DELTA = "delta"  # STAT_REPORT with incremental availability
    KEEPALIVE = "keepalive"  # empty STAT_REPORT


class TrackerSession:
    """When to send the batch report, incremental reports and keep-alives (see above)."""

    def __init__(
        self,
        *,
        keepalive: float = 20.0,
        report_delay: float = 0.2,
        retry_min: float = 0.5,
        retry_max: float = 30.0,
        now: float = 0.0,
    ) -> None:
        if keepalive <= 0 or report_delay < 0 or not 0 < retry_min <= retry_max:
            raise ValueError("need keepalive > 0, report_delay >= 0, 0 < retry_min <= retry_max")
        self.keepalive = keepalive
        self.report_delay = report_delay
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.connected = False
        self.batches_sent = 0
        self.failures = 0
        self._retry_at = now
        self._backoff = retry_min
        self._changes_at: float | None = None
        self._last_sent = now
        self._in_flight: TrackerAction | None = None
        self._again = False

    def on_changes(self, now: float) -> None:
        """The cache cached or evicted something: report it soon."""
        if self._changes_at is None:
            self._changes_at = now + self.report_delay

    def due(self, now: float) -> TrackerAction | None:
        """What to send now, if anything."""
        if not self.connected:
            return TrackerAction.BATCH if now >= self._retry_at else None
        if self._changes_at is not None and now >= self._changes_at:
            return TrackerAction.DELTA
        if now >= self._last_sent + self.keepalive:
            return TrackerAction.KEEPALIVE
        return None

    def next_deadline(self) -> float:
        """When :meth:`due` may next return an action."""
        if not self.connected:
            return self._retry_at
        deadline = self._last_sent + self.keepalive
        if self._changes_at is not None:
            deadline = min(deadline, self._changes_at)
        return deadline

    def begin(self, action: TrackerAction) -> None:
        """``action`` is about to be built: the changes so far go in it (a batch carries the
        whole state). Changes from now on are reported after it."""
        if action is not TrackerAction.KEEPALIVE:
            self._changes_at = None
        self._in_flight = action

    def sent(self, action: TrackerAction, now: float) -> None:
        """``action`` was answered successfully."""
        self._in_flight = None
        self._last_sent = now
        if action is TrackerAction.BATCH:
            self.connected = not self._again  # asked again while this one was built or sent
            self._again = False
            self.batches_sent += 1
            self._backoff = self.retry_min

    def failed(self, now: float) -> None:
        """A request failed: reconnect (batch report) after a backoff."""
        self.failures += 1
        self._in_flight = None
        self._again = False
        self.connected = False
        self._retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, self.retry_max)

    def reconnect(self) -> None:
        """Send the batch again now (e.g. the tracker said it does not know us, or what it
        carries changed); once more after the one in flight, if one is."""
        self.connected = False
        self._retry_at = self._last_sent
        self._again = self._in_flight is TrackerAction.BATCH


@dataclass(frozen=True, slots=True)
class SegmentGeometry:
    """How a VoD content of ``chunks`` chunks is cut into storage-overlay segments."""

    chunks: int
    segment_chunks: int

    def __post_init__(self) -> None:
        if self.chunks <= 0 or self.segment_chunks <= 0:
            raise ValueError("a VoD content has chunks and segments")

    @property
    def segments(self) -> int:
        return -(-self.chunks // self.segment_chunks)

    @property
    def last_chunk(self) -> int:
        return self.chunks - 1

    def segment_of(self, chunk: int) -> int:
        return chunk // self.segment_chunks

    def chunks_of(self, index: int) -> tuple[int, int]:
        first = index * self.segment_chunks
        return first, min(first + self.segment_chunks, self.chunks) - 1


def plan_fill(
    geometry: SegmentGeometry,
    requested: Iterable[tuple[int, int]],
    held: ChunkSet,
    *,
    readahead: int = 1,
    peaks_known: bool = True,
    limit: int = MAX_FILL_SEGMENTS,
) -> list[int]:
    """Segments to fetch so that the ``requested`` chunk ranges are held, in fetch order.

    First, if the peak hashes are not known yet, the last segment: its proof carries every
    peak left of it and it holds the rest (RFC 7574 §5.6: a leecher that has only the root
    hash is sent the peaks before its first DATA, so the cacher must know them before it
    serves anything). Then each segment with a requested chunk missing, then ``readahead``
    segments after the last of those (viewers read VoD in order). At most ``limit``.
    """
    out: list[int] = []
    seen: set[int] = set()

    def add(index: int) -> None:
        if index not in seen and 0 <= index < geometry.segments and len(out) < limit:
            first, last = geometry.chunks_of(index)
            seen.add(index)
            if not held.contains_range(first, last):
                out.append(index)

    if not peaks_known:
        add(geometry.segments - 1)
    highest = -1
    for start, end in requested:
        start, end = max(0, start), min(end, geometry.last_chunk)
        if start > end:
            continue
        for gap in held.missing(start, end):
            for index in range(geometry.segment_of(gap.start), geometry.segment_of(gap.end) + 1):
                add(index)
                highest = max(highest, index)
    if highest >= 0:
        for index in range(highest + 1, highest + 1 + readahead):
            add(index)
    return out


def plan_prefetch(
    plan: Iterable[Prefetch],
    geometries: Mapping[bytes, SegmentGeometry],
    holdings: Mapping[bytes, ChunkSet],
    peaks_known: Mapping[bytes, bool],
    *,
    limit: int = 4 * MAX_FILL_SEGMENTS,
) -> list[tuple[bytes, int]]:
    """(swarm ID, segment) pairs carrying out the policy's VoD prefetch list (push hints,
    DESIGN F4), highest priority first; swarms whose geometry is unknown (no metadata yet)
    and live entries (followed over PPSPP instead) are left out."""
    out: list[tuple[bytes, int]] = []
    for item in plan:
        geometry = geometries.get(item.swarm_id)
        if item.follow_live or geometry is None:
            continue
        held = holdings.get(item.swarm_id, ChunkSet())
        for index in plan_fill(
            geometry,
            item.ranges,
            held,
            readahead=0,
            peaks_known=peaks_known.get(item.swarm_id, False),
            limit=limit - len(out),
        ):
            out.append((item.swarm_id, index))
        if len(out) >= limit:
            break
    return out


def describe_holdings(holdings: Mapping[bytes, ChunkSet]) -> str:
    """One line for the log: what a cacher holds (e.g. after a restart)."""
    if not holdings:
        return "nothing"
    parts = []
    for sid, have in sorted(holdings.items()):
        ranges = ",".join(f"{s}-{e}" if s != e else str(s) for s, e in have.intervals()[:4])
        more = "…" if len(have.intervals()) > 4 else ""
        parts.append(f"{sid.hex()[:12]}: {have.count} chunks [{ranges}{more}]")
    return f"{len(holdings)} swarm(s): " + "; ".join(parts)
