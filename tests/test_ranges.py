"""ChunkRange and ChunkSet against a naive Python-set model."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppsp.peer import ranges as ranges_mod
from ppsp.peer.bins import bin_to_range
from ppsp.peer.ranges import ChunkRange, ChunkSet

UNIVERSE = 120

intervals = st.tuples(st.integers(0, UNIVERSE), st.integers(0, 12)).map(
    lambda t: (t[0], t[0] + t[1])
)
ops = st.lists(st.tuples(st.sampled_from(["add", "remove"]), intervals), max_size=60)


def runs_of(model: set[int]) -> list[ChunkRange]:
    out: list[ChunkRange] = []
    for c in sorted(model):
        if out and out[-1].end == c - 1:
            out[-1] = ChunkRange(out[-1].start, c)
        else:
            out.append(ChunkRange(c, c))
    return out


def build(op_list: list[tuple[str, tuple[int, int]]]) -> tuple[ChunkSet, set[int]]:
    cs = ChunkSet()
    model: set[int] = set()
    for op, (s, e) in op_list:
        if op == "add":
            cs.add(s, e)
            model |= set(range(s, e + 1))
        else:
            cs.remove(s, e)
            model -= set(range(s, e + 1))
    return cs, model


def check_invariants(cs: ChunkSet) -> None:
    runs = cs.intervals()
    for a, b in itertools.pairwise(runs):
        assert a.end + 1 < b.start  # disjoint and not adjacent: maximal runs
    assert all(r.start <= r.end for r in runs)
    assert cs.count == sum(r.length for r in runs)
    assert len(cs) == len(runs)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tiny blocks so the model tests exercise block splits, merges across blocks, and
    # block removal, which the default size only reaches with huge sets.
    monkeypatch.setattr(ranges_mod, "_MAX_BLOCK", 4)


class TestChunkRange:
    def test_basics(self) -> None:
        r = ChunkRange(4, 7)
        assert r.length == r.len == 4 and len(r) == 2
        assert r.contains(4) and r.contains(7) and not r.contains(8)
        assert r.is_bin() and r.to_bin() == 11
        assert ChunkRange.from_bin(11) == r
        assert list(r.chunks()) == [4, 5, 6, 7]
        assert r.intersection(ChunkRange(6, 9)) == ChunkRange(6, 7)
        assert r.intersection(ChunkRange(8, 9)) is None
        assert r.overlaps(ChunkRange(7, 7)) and not r.overlaps(ChunkRange(0, 3))
        assert r.contains_range(ChunkRange(5, 6)) and not r.contains_range(ChunkRange(3, 5))
        assert not ChunkRange(1, 2).is_bin()
        with pytest.raises(ValueError):
            ChunkRange(1, 2).to_bin()
        assert ChunkRange(1, 6).to_bins() == [2, 5, 9, 12]


class TestChunkSetModel:
    @settings(max_examples=300)
    @given(ops)
    def test_matches_set_model(self, op_list: list[tuple[str, tuple[int, int]]]) -> None:
        cs, model = build(op_list)
        check_invariants(cs)
        assert cs.intervals() == runs_of(model)
        assert cs.count == len(model)
        assert list(cs.chunks()) == sorted(model)
        for c in range(UNIVERSE + 15):
            assert (c in cs) == (c in model)
        assert cs.is_empty() == (not model)
        assert cs.first == (min(model) if model else None)
        assert cs.last == (max(model) if model else None)

    @settings(max_examples=200)
    @given(ops, intervals)
    def test_queries(self, op_list: list[tuple[str, tuple[int, int]]], q: tuple[int, int]) -> None:
        cs, model = build(op_list)
        s, e = q
        assert cs.contains_range(s, e) == all(c in model for c in range(s, e + 1))
        assert cs.overlaps(s, e) == any(c in model for c in range(s, e + 1))
        gaps = runs_of(set(range(s, e + 1)) - model)
        assert cs.missing(s, e) == gaps
        fm = cs.first_missing(s, e + 1)
        expect = next((c for c in range(s, e + 1) if c not in model), None)
        assert fm == expect
        unbounded = cs.first_missing(s)
        assert unbounded is not None and unbounded not in model and unbounded >= s
        assert all(c in model for c in range(s, unbounded))
        cov = cs.covering_interval(s)
        if s in model:
            assert cov is not None and cov.contains(s)
            assert cov in runs_of(model)
        else:
            assert cov is None

    @settings(max_examples=200)
    @given(ops, st.integers(0, UNIVERSE + 12))
    def test_covering_bin(self, op_list: list[tuple[str, tuple[int, int]]], c: int) -> None:
        cs, model = build(op_list)
        b = cs.covering_bin(c)
        if c not in model:
            assert b is None
            return
        assert b is not None
        s, e = bin_to_range(b)
        assert s <= c <= e and all(x in model for x in range(s, e + 1))
        # The next bigger aligned block around c is not complete.
        size = 2 * (e - s + 1)
        lo = c - c % size
        assert not all(x in model for x in range(lo, lo + size))

    @settings(max_examples=200)
    @given(ops, ops)
    def test_set_algebra(
        self, a_ops: list[tuple[str, tuple[int, int]]], b_ops: list[tuple[str, tuple[int, int]]]
    ) -> None:
        a, ma = build(a_ops)
        b, mb = build(b_ops)
        for result, expected in [
            (a.union(b), ma | mb),
            (a | b, ma | mb),
            (a.difference(b), ma - mb),
            (a - b, ma - mb),
            (a.intersection(b), ma & mb),
            (a & b, ma & mb),
        ]:
            check_invariants(result)
            assert result.intervals() == runs_of(expected)
        for method, expected in [
            ("update", ma | mb),
            ("difference_update", ma - mb),
            ("intersection_update", ma & mb),
        ]:
            c = a.copy()
            getattr(c, method)(b)
            check_invariants(c)
            assert c.intervals() == runs_of(expected)
        # The originals are untouched by the copies' updates.
        assert a.intervals() == runs_of(ma)

    @settings(max_examples=100)
    @given(ops)
    def test_to_bins_cover_exactly(self, op_list: list[tuple[str, tuple[int, int]]]) -> None:
        cs, model = build(op_list)
        covered: set[int] = set()
        for b in cs.to_bins():
            s, e = bin_to_range(b)
            assert not covered & set(range(s, e + 1))
            covered |= set(range(s, e + 1))
        assert covered == model


class TestChunkSetBehaviour:
    def test_update_small_into_large_uses_add_path(self) -> None:
        big = ChunkSet((i * 3, i * 3) for i in range(200))
        small = ChunkSet([(1, 2)])
        big.update(small)
        assert big.covering_interval(0) == ChunkRange(0, 3)
        big.difference_update(ChunkSet([(0, 0)]))
        assert 0 not in big and big.covering_interval(1) == ChunkRange(1, 3)

    def test_self_algebra(self) -> None:
        a = ChunkSet([(1, 5)])
        a.update(a)
        assert a.intervals() == [ChunkRange(1, 5)]
        a.intersection_update(a)
        assert a.count == 5
        a.difference_update(a)
        assert a.is_empty() and a.count == 0

    def test_equality_and_copy(self) -> None:
        a = ChunkSet([(0, 3), (10, 12)])
        b = ChunkSet()
        for x in [12, 0, 11, 2, 1, 10, 3]:
            b.add(x)
        assert a == b
        c = a.copy()
        c.add(5)
        assert a != c and a == b
        assert a != "not a set"
        with pytest.raises(TypeError):
            hash(a)

    def test_bad_input(self) -> None:
        cs = ChunkSet()
        with pytest.raises(ValueError):
            cs.add(-1)
        with pytest.raises(ValueError):
            cs.add(5, 4)
        with pytest.raises(ValueError):
            cs.remove(3, 2)
        with pytest.raises(ValueError):
            cs.missing(3, 2)
        assert "x" not in cs and -1 not in cs

    def test_empty_queries(self) -> None:
        cs = ChunkSet()
        assert cs.first_missing() == 0
        assert cs.first_missing(5, 5) is None
        assert cs.missing(0, 3) == [ChunkRange(0, 3)]
        assert cs.covering_interval(0) is None and cs.covering_bin(0) is None
        assert not cs.contains_range(0, 0) and not cs.overlaps(0, 10)
        assert cs.first is None and cs.last is None
        cs.remove(0, 10)
        assert len(cs) == 0 and repr(cs) == "ChunkSet()"

    def test_have_biggest_interval(self) -> None:
        # §4.3: HAVE carries the biggest complete interval containing the new chunks.
        cs = ChunkSet()
        for c in (0, 1, 2, 4):
            cs.add(c)
        assert cs.covering_interval(4) == ChunkRange(4, 4)
        cs.add(3)
        assert cs.covering_interval(3) == ChunkRange(0, 4)
        # libswift-style aligned announcement (all trace HAVEs are bins).
        assert cs.covering_bin(3) == 3  # chunks 0..3
        assert cs.covering_bin(4) == 8  # chunk 4 alone

    def test_first_missing_limit(self) -> None:
        cs = ChunkSet([(0, 9)])
        assert cs.first_missing(0, 10) is None
        assert cs.first_missing(0, 11) == 10
        assert cs.first_missing(3) == 10
        assert cs.first_missing(12, 20) == 12

    def test_large_random_order(self) -> None:
        # Default block size: many splits; the set ends as one run with the right count.
        ranges_mod._MAX_BLOCK = 512
        order = list(range(20000))
        random.Random(7).shuffle(order)
        cs = ChunkSet()
        for c in order[:10000]:
            cs.add(c)
        assert cs.count == 10000
        for c in order[:10000:97]:
            assert c in cs
        for c in order[10000::97]:
            assert c not in cs
        for c in order[10000:]:
            cs.add(c)
        assert cs.intervals() == [ChunkRange(0, 19999)]
        for c in order[:5000]:
            cs.remove(c)
        assert cs.count == 15000
        check_invariants(cs)
