"""Chunk ranges and chunk sets: which chunks a peer has, was sent, or still misses.

RFC 7574 §4.1 addresses content by inclusive chunk ranges, and §4.3 requires HAVE and ACK to
carry "the biggest complete interval" containing newly verified chunks. :class:`ChunkSet`
keeps a set of chunks as sorted, disjoint, non-adjacent inclusive intervals (maximal runs),
so that interval is a lookup, not a scan.

The intervals live in parallel ``starts``/``ends`` lists searched with :mod:`bisect`, cut
into blocks of at most :data:`_MAX_BLOCK` intervals with a list of the blocks' first starts
on top. A flat pair of lists would pay a memmove of the whole list for every interval that
is created or merged away; with chunks arriving in random order a 10^6-chunk swarm reaches
~250 000 intervals, where that costs tens of seconds. Blocks bound the memmove, while
membership stays two bisections.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from .bins import bin_to_range, bins_covering, range_to_bin

__all__ = ["ChunkRange", "ChunkSet"]

#: Intervals per block before it is split in two.
_MAX_BLOCK = 256


class ChunkRange(NamedTuple):
    """An inclusive chunk interval ``start..end`` (§4.1.1)."""

    start: int
    end: int

    @property
    def length(self) -> int:
        """Number of chunks in the interval."""
        return self.end - self.start + 1

    @property
    def len(self) -> int:
        """Alias of :attr:`length` (``len()`` of the tuple itself is 2)."""
        return self.end - self.start + 1

    @classmethod
    def from_bin(cls, b: int) -> ChunkRange:
        """The interval a bin covers (§4.2)."""
        return cls(*bin_to_range(b))

    def contains(self, chunk: int) -> bool:
        """True if ``chunk`` lies in the interval (``in`` keeps its tuple meaning)."""
        return self.start <= chunk <= self.end

    def contains_range(self, other: ChunkRange) -> bool:
        return self.start <= other.start and other.end <= self.end

    def overlaps(self, other: ChunkRange) -> bool:
        return self.start <= other.end and other.start <= self.end

    def intersection(self, other: ChunkRange) -> ChunkRange | None:
        s = max(self.start, other.start)
        e = min(self.end, other.end)
        return ChunkRange(s, e) if s <= e else None

    def is_bin(self) -> bool:
        """True if the interval is an aligned power-of-two block, i.e. one bin names it."""
        n = self.end - self.start + 1
        return n > 0 and not n & (n - 1) and not self.start & (n - 1)

    def to_bin(self) -> int:
        """The bin naming this interval; :class:`ValueError` if it is not aligned."""
        return range_to_bin(self.start, self.end)

    def to_bins(self) -> list[int]:
        """Minimal bin decomposition, left to right (for bin CAMs)."""
        return bins_covering(self.start, self.end)

    def chunks(self) -> range:
        return range(self.start, self.end + 1)


def _check(start: int, end: int) -> None:
    if start < 0 or end < start:
        raise ValueError(f"not a chunk interval: {start}..{end}")


class ChunkSet:
    """A set of chunk indices stored as maximal runs (inclusive intervals).

    ``len()`` is the number of runs, :attr:`count` the number of chunks; iteration yields the
    runs as :class:`ChunkRange`. Not hashable (mutable).
    """

    __slots__ = ("_be", "_bs", "_count", "_firsts", "_nruns")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._bs: list[list[int]] = []  # per block: run starts
        self._be: list[list[int]] = []  # per block: run ends
        self._firsts: list[int] = []  # first start of each block
        self._count = 0
        self._nruns = 0
        for s, e in ranges:
            self.add(s, e)

    # ----------------------------------------------------------------- construction

    @classmethod
    def _from_sorted(cls, starts: list[int], ends: list[int]) -> ChunkSet:
        """Build from runs that are already sorted, disjoint and non-adjacent."""
        out = cls()
        half = _MAX_BLOCK // 2
        for i in range(0, len(starts), half):
            out._bs.append(starts[i : i + half])
            out._be.append(ends[i : i + half])
            out._firsts.append(starts[i])
        out._nruns = len(starts)
        out._count = sum(ends) - sum(starts) + len(starts)
        return out

    def copy(self) -> ChunkSet:
        out = ChunkSet()
        out._bs = [b[:] for b in self._bs]
        out._be = [b[:] for b in self._be]
        out._firsts = self._firsts[:]
        out._count = self._count
        out._nruns = self._nruns
        return out

    def _flat(self) -> tuple[list[int], list[int]]:
        starts: list[int] = []
        ends: list[int] = []
        for s, e in zip(self._bs, self._be, strict=True):
            starts.extend(s)
            ends.extend(e)
        return starts, ends

    # ----------------------------------------------------------------- positions
    # A position is (block, index). Canonical positions have index < len(block), except the
    # end position, which is (last block, its length), or (0, 0) when there are no blocks.

    def _locate(self, x: int) -> tuple[int, int]:
        """Position of the last run whose start <= x, or (-1, -1)."""
        bi = bisect_right(self._firsts, x) - 1
        if bi < 0:
            return -1, -1
        return bi, bisect_right(self._bs[bi], x) - 1

    def _next(self, bi: int, i: int) -> tuple[int, int]:
        if bi < 0:
            return 0, 0
        i += 1
        if i == len(self._bs[bi]) and bi + 1 < len(self._bs):
            return bi + 1, 0
        return bi, i

    def _fix(self, bi: int) -> None:
        """Restore block invariants for block ``bi`` after an edit."""
        s = self._bs[bi]
        if not s:
            del self._bs[bi], self._be[bi], self._firsts[bi]
            return
        self._firsts[bi] = s[0]
        if len(s) > _MAX_BLOCK:
            e = self._be[bi]
            h = len(s) // 2
            self._bs.insert(bi + 1, s[h:])
            self._be.insert(bi + 1, e[h:])
            self._firsts.insert(bi + 1, s[h])
            del s[h:], e[h:]

    def _splice(
        self, p1: tuple[int, int], p2: tuple[int, int], new_s: list[int], new_e: list[int]
    ) -> None:
        """Replace the runs from position p1 (inclusive) to p2 (exclusive) by new runs."""
        if not self._bs:
            if new_s:
                self._bs.append(new_s)
                self._be.append(new_e)
                self._firsts.append(new_s[0])
                self._nruns = len(new_s)
                self._count = sum(new_e) - sum(new_s) + len(new_s)
            return
        b1, i1 = p1
        b2, i2 = p2
        added = sum(new_e) - sum(new_s) + len(new_s)
        if b1 == b2:
            s = self._bs[b1]
            e = self._be[b1]
            removed = sum(e[i1:i2]) - sum(s[i1:i2]) + (i2 - i1)
            self._nruns += len(new_s) - (i2 - i1)
            s[i1:i2] = new_s
            e[i1:i2] = new_e
            self._count += added - removed
            self._fix(b1)
            return
        s1, e1 = self._bs[b1], self._be[b1]
        s2, e2 = self._bs[b2], self._be[b2]
        removed = sum(e1[i1:]) - sum(s1[i1:]) + (len(s1) - i1)
        removed += sum(e2[:i2]) - sum(s2[:i2]) + i2
        runs = (len(s1) - i1) + i2
        for k in range(b1 + 1, b2):
            sk, ek = self._bs[k], self._be[k]
            removed += sum(ek) - sum(sk) + len(sk)
            runs += len(sk)
        s1[i1:] = new_s
        e1[i1:] = new_e
        del s2[:i2], e2[:i2]
        del self._bs[b1 + 1 : b2], self._be[b1 + 1 : b2], self._firsts[b1 + 1 : b2]
        self._count += added - removed
        self._nruns += len(new_s) - runs
        self._fix(b1 + 1)  # the former b2, now adjacent; fix it first so b1 stays valid
        self._fix(b1)

    # ----------------------------------------------------------------- mutation

    def add(self, start: int, end: int | None = None) -> None:
        """Add chunk ``start``, or chunks ``start..end`` inclusive."""
        if end is None:
            end = start
        if start < 0 or end < start:
            raise ValueError(f"not a chunk interval: {start}..{end}")
        firsts = self._firsts
        if not firsts:
            self._splice((0, 0), (0, 0), [start], [end])
            return
        tail = self._be[-1]
        if start == tail[-1] + 1:
            # In-order arrival: extend the last run.
            tail[-1] = end
            self._count += end - start + 1
            return
        # The fast paths below cover single-chunk arrivals, in order or not: extend a run,
        # join two runs in one block, grow a run leftwards, or open a new run. Everything
        # else (a range spanning several runs or blocks) goes through _splice.
        reach = end + 1
        bi = bisect_right(firsts, start) - 1
        if bi >= 0:
            bs = self._bs[bi]
            be = self._be[bi]
            i = bisect_right(bs, start) - 1
            old_end = be[i]
            if old_end >= start - 1:
                if old_end >= end:
                    return
                n = len(bs)
                if i + 1 < n:
                    nxt = bs[i + 1]
                elif bi + 1 < len(firsts):
                    nxt = firsts[bi + 1]
                else:
                    nxt = reach + 1
                if nxt > reach:
                    be[i] = end
                    self._count += end - old_end
                    return
                if i + 1 < n:
                    if i + 2 < n:
                        nxt2 = bs[i + 2]
                    elif bi + 1 < len(firsts):
                        nxt2 = firsts[bi + 1]
                    else:
                        nxt2 = reach + 1
                    if nxt2 > reach:
                        # Joins exactly runs i and i+1 of this block.
                        e2 = be[i + 1]
                        new_end = e2 if e2 > end else end
                        self._count += new_end - old_end - (e2 - nxt + 1)
                        be[i] = new_end
                        del bs[i + 1], be[i + 1]
                        self._nruns -= 1
                        return
                fb, fi = bi, i
                fs = bs
            elif i + 1 < len(bs):
                fb, fi, fs = bi, i + 1, bs
            elif bi + 1 < len(firsts):
                fb, fi = bi + 1, 0
                fs = self._bs[fb]
            else:
                fb, fi, fs = bi, i + 1, bs
        else:
            fb, fi = 0, 0
            fs = self._bs[0]
        first = (fb, fi)
        n = len(fs)
        if fi == n or fs[fi] > reach:
            # Touches no run: open a new one at `first`.
            fs.insert(fi, start)
            self._be[fb].insert(fi, end)
            self._count += end - start + 1
            self._nruns += 1
            if fi == 0 or n >= _MAX_BLOCK:
                self._fix(fb)
            return
        if fi + 1 < n:
            nxt = fs[fi + 1]
        elif fb + 1 < len(firsts):
            nxt = firsts[fb + 1]
        else:
            nxt = reach + 1
        if nxt > reach:
            # Grows exactly one run (leftwards, maybe also rightwards).
            fe = self._be[fb]
            old_s, old_e = fs[fi], fe[fi]
            new_s = start if start < old_s else old_s
            new_e = end if end > old_e else old_e
            self._count += (new_e - new_s) - (old_e - old_s)
            fs[fi] = new_s
            fe[fi] = new_e
            if fi == 0:
                self._firsts[fb] = new_s
            return
        last = self._locate(reach)
        new_s = min(start, fs[fi])
        new_e = max(end, self._be[last[0]][last[1]])
        self._splice(first, self._next(*last), [new_s], [new_e])

    def remove(self, start: int, end: int | None = None) -> None:
        """Remove chunk ``start``, or chunks ``start..end`` inclusive (absent ones are ignored)."""
        if end is None:
            end = start
        _check(start, end)
        if not self._firsts:
            return
        bi, i = self._locate(start)
        first = (bi, i) if bi >= 0 and self._be[bi][i] >= start else self._next(bi, i)
        last = self._locate(end)
        if last < first:
            return
        old_s = self._bs[first[0]][first[1]]
        old_e = self._be[last[0]][last[1]]
        new_s: list[int] = []
        new_e: list[int] = []
        if old_s < start:
            new_s.append(old_s)
            new_e.append(start - 1)
        if old_e > end:
            new_s.append(end + 1)
            new_e.append(old_e)
        self._splice(first, self._next(*last), new_s, new_e)

    discard = remove

    def clear(self) -> None:
        self._bs.clear()
        self._be.clear()
        self._firsts.clear()
        self._count = 0
        self._nruns = 0

    # ----------------------------------------------------------------- queries

    def __contains__(self, chunk: object) -> bool:
        if not isinstance(chunk, int):
            return False
        bi = bisect_right(self._firsts, chunk) - 1
        if bi < 0:
            return False
        bs = self._bs[bi]
        return self._be[bi][bisect_right(bs, chunk) - 1] >= chunk

    def contains_range(self, start: int, end: int) -> bool:
        """True if every chunk of ``start..end`` is in the set."""
        bi, i = self._locate(start)
        return bi >= 0 and self._be[bi][i] >= end

    def overlaps(self, start: int, end: int) -> bool:
        """True if at least one chunk of ``start..end`` is in the set."""
        bi, i = self._locate(end)
        return bi >= 0 and self._be[bi][i] >= start

    def covering_interval(self, chunk: int) -> ChunkRange | None:
        """The maximal run containing ``chunk``: the "biggest complete interval" a HAVE or ACK
        for that chunk carries (§4.3). None if ``chunk`` is absent."""
        bi, i = self._locate(chunk)
        if bi < 0:
            return None
        e = self._be[bi][i]
        return ChunkRange(self._bs[bi][i], e) if e >= chunk else None

    def covering_bin(self, chunk: int) -> int | None:
        """The biggest *aligned* block (bin) containing ``chunk`` that is entirely in the set.

        libswift announces HAVE/ACK this way: every chunk range in the reference trace is a
        bin, since it keeps availability as a binmap (§4.3 implementation note).
        """
        run = self.covering_interval(chunk)
        if run is None:
            return None
        s, e = run
        layer = 0
        while True:
            size = 2 << layer
            lo = chunk & ~(size - 1)
            if lo < s or lo + size - 1 > e:
                break
            layer += 1
        size = 1 << layer
        lo = chunk & ~(size - 1)
        return (lo << 1) + size - 1

    def missing(self, start: int, end: int) -> list[ChunkRange]:
        """The gaps of the set within ``start..end``, left to right."""
        _check(start, end)
        out: list[ChunkRange] = []
        pos = start
        for s, e in self._iter_from(start):
            if s > end:
                break
            if s > pos:
                out.append(ChunkRange(pos, s - 1))
            if e + 1 > pos:
                pos = e + 1
            if pos > end:
                return out
        if pos <= end:
            out.append(ChunkRange(pos, end))
        return out

    def first_missing(self, from_chunk: int = 0, limit: int | None = None) -> int | None:
        """Smallest chunk ``c >= from_chunk`` not in the set, with ``c < limit`` (exclusive
        bound, e.g. the number of chunks); None if there is none."""
        bi, i = self._locate(from_chunk)
        c = from_chunk
        if bi >= 0 and self._be[bi][i] >= from_chunk:
            # Runs are maximal, so the chunk after a run is always missing.
            c = self._be[bi][i] + 1
        if limit is not None and c >= limit:
            return None
        return c

    def _iter_from(self, chunk: int) -> Iterator[tuple[int, int]]:
        """Runs in order, starting with the run containing ``chunk`` or the first after it."""
        if not self._firsts:
            return
        bi, i = self._locate(chunk)
        if bi < 0:
            bi, i = 0, 0
        elif self._be[bi][i] < chunk:
            i += 1
        nblocks = len(self._bs)
        while bi < nblocks:
            s, e = self._bs[bi], self._be[bi]
            for k in range(i, len(s)):
                yield s[k], e[k]
            bi += 1
            i = 0

    def intervals(self) -> list[ChunkRange]:
        """All runs, left to right."""
        return [ChunkRange(s, e) for s, e in zip(*self._flat(), strict=True)]

    def __iter__(self) -> Iterator[ChunkRange]:
        for s, e in zip(self._bs, self._be, strict=True):
            for k in range(len(s)):
                yield ChunkRange(s[k], e[k])

    def chunks(self) -> Iterator[int]:
        """Every chunk index in the set, ascending."""
        for s, e in self._iter_from(0):
            yield from range(s, e + 1)

    def to_bins(self) -> list[int]:
        """The set as a minimal list of bins per run, left to right (HAVE with bin CAMs, or
        libswift-style aligned announcements)."""
        out: list[int] = []
        for s, e in zip(*self._flat(), strict=True):
            out.extend(bins_covering(s, e))
        return out

    @property
    def count(self) -> int:
        """Number of chunks in the set."""
        return self._count

    def __len__(self) -> int:
        """Number of runs (maximal intervals)."""
        return self._nruns

    def is_empty(self) -> bool:
        return self._nruns == 0

    @property
    def first(self) -> int | None:
        return self._firsts[0] if self._firsts else None

    @property
    def last(self) -> int | None:
        return self._be[-1][-1] if self._be else None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChunkSet):
            return NotImplemented
        return (
            self._count == other._count
            and self._nruns == other._nruns
            and self._flat() == other._flat()
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        runs = self.intervals()
        shown = ", ".join(f"{s}-{e}" if s != e else str(s) for s, e in runs[:8])
        more = f", ... ({len(runs)} runs)" if len(runs) > 8 else ""
        return f"ChunkSet({shown}{more})"

    # ----------------------------------------------------------------- set algebra

    def update(self, other: ChunkSet) -> None:
        """Add every chunk of ``other``."""
        if other is self or other.is_empty():
            return
        if len(other) * 16 < len(self):
            for s, e in other:
                self.add(s, e)
            return
        a_s, a_e = self._flat()
        b_s, b_e = other._flat()
        out_s: list[int] = []
        out_e: list[int] = []
        i = j = 0
        na, nb = len(a_s), len(b_s)
        while i < na or j < nb:
            if j >= nb or (i < na and a_s[i] <= b_s[j]):
                s, e = a_s[i], a_e[i]
                i += 1
            else:
                s, e = b_s[j], b_e[j]
                j += 1
            if out_e and s <= out_e[-1] + 1:
                if e > out_e[-1]:
                    out_e[-1] = e
            else:
                out_s.append(s)
                out_e.append(e)
        self._replace_with(out_s, out_e)

    def difference_update(self, other: ChunkSet) -> None:
        """Remove every chunk of ``other``."""
        if other is self:
            self.clear()
            return
        if len(other) * 16 < len(self):
            for s, e in other:
                self.remove(s, e)
            return
        self._replace_with(*_difference(self._flat(), other._flat()))

    def intersection_update(self, other: ChunkSet) -> None:
        """Keep only the chunks also in ``other``."""
        if other is self:
            return
        self._replace_with(*_intersection(self._flat(), other._flat()))

    def union(self, other: ChunkSet) -> ChunkSet:
        out = self.copy()
        out.update(other)
        return out

    def difference(self, other: ChunkSet) -> ChunkSet:
        return ChunkSet._from_sorted(*_difference(self._flat(), other._flat()))

    def intersection(self, other: ChunkSet) -> ChunkSet:
        return ChunkSet._from_sorted(*_intersection(self._flat(), other._flat()))

    __or__ = union
    __sub__ = difference
    __and__ = intersection

    def _replace_with(self, starts: list[int], ends: list[int]) -> None:
        fresh = ChunkSet._from_sorted(starts, ends)
        self._bs, self._be, self._firsts = fresh._bs, fresh._be, fresh._firsts
        self._count, self._nruns = fresh._count, fresh._nruns


def _difference(
    a: tuple[list[int], list[int]], b: tuple[list[int], list[int]]
) -> tuple[list[int], list[int]]:
    a_s, a_e = a
    b_s, b_e = b
    out_s: list[int] = []
    out_e: list[int] = []
    j = 0
    nb = len(b_s)
    for s, e in zip(a_s, a_e, strict=True):
        # Skip b-runs entirely left of this a-run.
        while j < nb and b_e[j] < s:
            j += 1
        k = j
        pos = s
        while k < nb and b_s[k] <= e:
            if b_s[k] > pos:
                out_s.append(pos)
                out_e.append(b_s[k] - 1)
            pos = max(pos, b_e[k] + 1)
            k += 1
        if pos <= e:
            out_s.append(pos)
            out_e.append(e)
    return out_s, out_e


def _intersection(
    a: tuple[list[int], list[int]], b: tuple[list[int], list[int]]
) -> tuple[list[int], list[int]]:
    a_s, a_e = a
    b_s, b_e = b
    out_s: list[int] = []
    out_e: list[int] = []
    i = j = 0
    na, nb = len(a_s), len(b_s)
    while i < na and j < nb:
        s = max(a_s[i], b_s[j])
        e = min(a_e[i], b_e[j])
        if s <= e:
            out_s.append(s)
            out_e.append(e)
        if a_e[i] < b_e[j]:
            i += 1
        else:
            j += 1
    return out_s, out_e
