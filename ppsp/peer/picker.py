"""Chunk picking (RFC 7574 §9.1 leaves the algorithm to the implementation).

Two policies over interval sets, so that a pick costs O(intervals), not O(chunks):

- ``RAREST_FIRST`` for files: among the chunks a peer offers that we lack and have not
  requested elsewhere, take the runs held by the fewest peers (ties: lowest first), which
  spreads rare chunks quickly in a swarm;
- ``IN_ORDER`` for streams: the first missing chunks from the playback position onwards; the
  channel re-requests from another peer what misses its playback deadline (§3.8).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from ppsp.peer.ranges import ChunkRange, ChunkSet


class PickPolicy(enum.Enum):
    RAREST_FIRST = "rarest-first"
    IN_ORDER = "in-order"


def _wanted(offered: ChunkSet, have: ChunkSet, pending: ChunkSet) -> ChunkSet:
    wanted = offered.copy()
    wanted.difference_update(have)
    wanted.difference_update(pending)
    return wanted


class ChunkPicker:
    """Picks what to REQUEST next from one peer."""

    def __init__(self, policy: PickPolicy = PickPolicy.RAREST_FIRST) -> None:
        self.policy = policy
        #: Playback position for IN_ORDER: chunks before it are of no more use.
        self.position = 0

    def pick(
        self,
        offered: ChunkSet,
        have: ChunkSet,
        pending: ChunkSet,
        limit: int,
        others: Iterable[ChunkSet] = (),
    ) -> list[ChunkRange]:
        """Up to ``limit`` chunks, as ranges, that ``offered`` holds and we still need.

        ``others`` are the availability maps of the swarm's other peers (for rarity).
        """
        if limit <= 0:
            return []
        wanted = _wanted(offered, have, pending)
        if wanted.is_empty():
            return []
        if self.policy is PickPolicy.IN_ORDER:
            return _take(wanted.intervals(), limit, self.position)
        other_maps = list(others)
        if not other_maps:
            return _take(wanted.intervals(), limit, 0)
        return _take(_by_rarity(wanted, other_maps), limit, 0)


def _take(runs: Iterable[ChunkRange], limit: int, start_at: int) -> list[ChunkRange]:
    out: list[ChunkRange] = []
    for run in runs:
        start, end = run
        if end < start_at:
            continue
        start = max(start, start_at)
        n = min(limit, end - start + 1)
        out.append(ChunkRange(start, start + n - 1))
        limit -= n
        if limit == 0:
            break
    return out


def _by_rarity(wanted: ChunkSet, others: list[ChunkSet]) -> list[ChunkRange]:
    """Split the wanted runs at every boundary of the other peers' maps and sort the pieces by
    how many of those peers hold them (fewest first), then by position."""
    events: list[tuple[int, int]] = []
    for m in others:
        for s, e in m.intervals():
            events.append((s, 1))
            events.append((e + 1, -1))
    events.sort()
    pieces: list[tuple[int, int, int]] = []
    ei, count = 0, 0
    for s, e in wanted.intervals():
        pos = s
        while ei < len(events) and events[ei][0] <= pos:
            count += events[ei][1]
            ei += 1
        while pos <= e:
            nxt = events[ei][0] if ei < len(events) else e + 1
            stop = min(e, nxt - 1)
            pieces.append((count, pos, stop))
            pos = stop + 1
            while ei < len(events) and events[ei][0] <= pos:
                count += events[ei][1]
                ei += 1
    pieces.sort()
    return [ChunkRange(s, e) for _, s, e in pieces]
