"""Bin numbers (RFC 7574 §4.2): the Figure 2 examples and properties against a naive model."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppsp.peer import bins
from ppsp.peer.bins import (
    ALL32,
    ALL64,
    EMPTY32,
    EMPTY64,
    bin_contains,
    bin_from_layer,
    bin_layer,
    bin_to_range,
    bins_covering,
    chunk_to_bin,
    first_chunk,
    is_left,
    last_chunk,
    left_child,
    parent,
    range_to_bin,
    right_child,
    sibling,
)

bin_numbers = st.integers(min_value=0, max_value=(1 << 40) - 1)


def naive_range(b: int) -> tuple[int, int]:
    """Bin range by the §4.2 definition: climb from the leaves, parent = (l + r) / 2."""
    layer = 0
    while (b >> layer) & 1:
        layer += 1
    width = 1 << layer
    # Leaves of layer-L node k are chunks k*width .. k*width + width - 1; node bin is the
    # average of its leftmost and rightmost leaf bins.
    k = (b - (width - 1)) // (2 * width)
    return k * width, k * width + width - 1


def test_figure2_tree() -> None:
    # §4.2 Figure 2, W = 8.
    assert bin_to_range(7) == (0, 7)
    assert bin_to_range(3) == (0, 3)
    assert bin_to_range(11) == (4, 7)
    assert bin_to_range(1) == (0, 1)
    assert bin_to_range(2) == (1, 1)
    assert bin_to_range(13) == (6, 7)
    assert [chunk_to_bin(i) for i in range(8)] == [0, 2, 4, 6, 8, 10, 12, 14]
    assert parent(0) == parent(2) == 1
    assert parent(1) == parent(5) == 3
    assert parent(3) == parent(11) == 7
    assert parent(9) == 11
    assert sibling(3) == 11 and sibling(11) == 3
    assert sibling(8) == 10
    assert left_child(7) == 3 and right_child(7) == 11
    assert left_child(1) == 0 and right_child(1) == 2
    assert bin_layer(7) == 3 and bin_layer(12) == 0 and bin_layer(13) == 1


def test_special_values() -> None:
    assert EMPTY32 == 0xFFFFFFFF and EMPTY64 == (1 << 64) - 1
    assert ALL32 == 0x7FFFFFFF and ALL64 == (1 << 63) - 1
    # "Everything" is the root of the widest tree the width can address.
    assert bin_to_range(ALL32) == (0, (1 << 31) - 1)
    assert bin_to_range(ALL64) == (0, (1 << 63) - 1)


def test_leaf_has_no_children() -> None:
    with pytest.raises(ValueError):
        left_child(4)
    with pytest.raises(ValueError):
        right_child(4)


@pytest.mark.parametrize("bad", [(-1, 0), (3, 2), (1, 2), (2, 5), (0, 2), (4, 11)])
def test_range_to_bin_rejects_unaligned(bad: tuple[int, int]) -> None:
    with pytest.raises(ValueError):
        range_to_bin(*bad)


def test_negative_inputs_rejected() -> None:
    with pytest.raises(ValueError):
        bin_layer(-1)
    with pytest.raises(ValueError):
        chunk_to_bin(-3)
    with pytest.raises(ValueError):
        bins_covering(-1, 4)
    with pytest.raises(ValueError):
        bins_covering(5, 4)


def test_bins_covering_examples() -> None:
    assert bins_covering(0, 195) == [range_to_bin(0, 127), range_to_bin(128, 191), 387]
    assert bins_covering(0, 0) == [0]
    assert bins_covering(3, 3) == [6]
    assert bins_covering(1, 6) == [2, 5, 9, 12]
    assert bins_covering(0, 7) == [7]


@given(bin_numbers)
def test_range_matches_definition(b: int) -> None:
    assert bin_to_range(b) == naive_range(b)
    assert (first_chunk(b), last_chunk(b)) == naive_range(b)


@given(bin_numbers)
def test_range_round_trip(b: int) -> None:
    assert range_to_bin(*bin_to_range(b)) == b


@given(bin_numbers)
def test_family(b: int) -> None:
    p = parent(b)
    s, e = bin_to_range(b)
    ps, pe = bin_to_range(p)
    assert bin_layer(p) == bin_layer(b) + 1
    assert pe - ps + 1 == 2 * (e - s + 1)
    assert {left_child(p), right_child(p)} == {b, sibling(b)}
    assert p * 2 == b + sibling(b)  # §4.2: parent = (left + right) / 2
    assert is_left(b) == (left_child(p) == b)
    assert bin_contains(p, b) and not bin_contains(b, p)
    assert sibling(sibling(b)) == b


@given(st.integers(0, 20), st.integers(0, 1 << 20))
def test_from_layer(layer: int, offset: int) -> None:
    b = bin_from_layer(layer, offset)
    assert bin_layer(b) == layer
    assert bin_to_range(b) == (offset << layer, ((offset + 1) << layer) - 1)


@settings(max_examples=300)
@given(st.integers(0, 5000), st.integers(0, 5000))
def test_bins_covering_is_minimal_exact_cover(a: int, w: int) -> None:
    start, end = a, a + w
    out = bins_covering(start, end)
    ranges = [bin_to_range(b) for b in out]
    # Exact, in order, no gaps or overlaps.
    assert ranges[0][0] == start and ranges[-1][1] == end
    for (_, e1), (s2, _) in itertools.pairwise(ranges):
        assert s2 == e1 + 1
    # Minimal: no two neighbours are siblings (they would merge into their parent), and
    # at most two bins per layer.
    for b1, b2 in itertools.pairwise(out):
        assert not (bin_layer(b1) == bin_layer(b2) and sibling(b1) == b2)
    layers = [bin_layer(b) for b in out]
    assert all(layers.count(x) <= 2 for x in set(layers))


def test_module_exports() -> None:
    assert set(bins.__all__) <= set(dir(bins))
