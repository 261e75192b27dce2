"""Bin numbers, RFC 7574 §4.2: one integer per aligned power-of-two chunk interval.

The leaf of chunk ``i`` is bin ``2*i``; the parent of bins ``l`` and ``r`` is ``(l + r) / 2``.
The *layer* of a bin is its number of trailing one bits (leaves are layer 0), and a bin at
layer ``L`` covers ``2**L`` chunks. Everything here is plain integer arithmetic on Python
ints, so it serves 32-bit and 64-bit bins alike; the wire width only matters for the two
special values (:data:`EMPTY32`/:data:`EMPTY64` and :data:`ALL32`/:data:`ALL64`), which a
codec must recognise *before* treating a number as an ordinary bin.

The Merkle tree (:mod:`ppsp.peer.merkle`) indexes its nodes by bin, and the chunk-range CAMs
convert to bins with :func:`range_to_bin` / :func:`bins_covering`.
"""

from __future__ import annotations

__all__ = [
    "ALL32",
    "ALL64",
    "EMPTY32",
    "EMPTY64",
    "bin_contains",
    "bin_from_layer",
    "bin_layer",
    "bin_to_range",
    "bins_covering",
    "chunk_to_bin",
    "first_chunk",
    "is_left",
    "last_chunk",
    "left_child",
    "parent",
    "range_to_bin",
    "right_child",
    "sibling",
]

#: §4.2: the all-ones bin denotes the empty interval (32-bit and 64-bit wire forms).
EMPTY32 = 0xFFFF_FFFF
EMPTY64 = 0xFFFF_FFFF_FFFF_FFFF
#: §4.2: 0x7FFF...F denotes "everything" — it is also the root bin of the widest tree the
#: wire width can address (2**31 resp. 2**63 chunks), so :func:`bin_to_range` gives it the
#: natural meaning without special-casing.
ALL32 = 0x7FFF_FFFF
ALL64 = 0x7FFF_FFFF_FFFF_FFFF


def _check(b: int) -> None:
    if b < 0:
        raise ValueError(f"bin numbers are non-negative, got {b}")


def chunk_to_bin(chunk: int) -> int:
    """The leaf bin of chunk ``chunk`` (§4.2: chunk index times two)."""
    if chunk < 0:
        raise ValueError(f"chunk index must be non-negative, got {chunk}")
    return chunk << 1


def bin_layer(b: int) -> int:
    """Layer (height) of bin ``b``: its number of trailing one bits; leaves are layer 0."""
    _check(b)
    # ~b & (b + 1) isolates the lowest zero bit of b.
    return (~b & (b + 1)).bit_length() - 1


def bin_from_layer(layer: int, offset: int) -> int:
    """The ``offset``-th bin (from the left, 0-based) of layer ``layer``."""
    if layer < 0 or offset < 0:
        raise ValueError("layer and offset must be non-negative")
    return (offset << (layer + 1)) + (1 << layer) - 1


def first_chunk(b: int) -> int:
    """First chunk covered by bin ``b``."""
    layer = bin_layer(b)
    return (b >> (layer + 1)) << layer


def last_chunk(b: int) -> int:
    """Last chunk covered by bin ``b`` (inclusive)."""
    layer = bin_layer(b)
    return (((b >> (layer + 1)) + 1) << layer) - 1


def bin_to_range(b: int) -> tuple[int, int]:
    """Inclusive chunk interval ``(start, end)`` covered by bin ``b``.

    For example bin 11 of Figure 2 covers chunks 4..7.
    """
    layer = bin_layer(b)
    start = (b >> (layer + 1)) << layer
    return start, start + (1 << layer) - 1


def range_to_bin(start: int, end: int) -> int:
    """The bin covering exactly chunks ``start..end`` (inclusive).

    Raises :class:`ValueError` unless the interval is an aligned power-of-two block, the only
    intervals a bin can name (§4.2).
    """
    if start < 0 or end < start:
        raise ValueError(f"not a chunk interval: {start}..{end}")
    width = end - start + 1
    if width & (width - 1) or start & (width - 1):
        raise ValueError(f"chunks {start}..{end} are not an aligned power-of-two block")
    return (start << 1) + width - 1


def bins_covering(start: int, end: int) -> list[int]:
    """The fewest bins whose union is exactly chunks ``start..end``, left to right.

    Greedy from the left: at each position take the biggest block that is aligned there and
    still fits, which is the unique minimal decomposition (at most two per layer).
    """
    if start < 0 or end < start:
        raise ValueError(f"not a chunk interval: {start}..{end}")
    out: list[int] = []
    pos = start
    stop = end + 1
    while pos < stop:
        # Largest power of two dividing pos (unbounded at 0), capped by what remains.
        size = pos & -pos if pos else 1 << (stop - pos).bit_length()
        remaining = stop - pos
        while size > remaining:
            size >>= 1
        out.append((pos << 1) + size - 1)
        pos += size
    return out


def parent(b: int) -> int:
    """Parent bin: §4.2 ``(left + right) / 2``, done on the bits."""
    layer = bin_layer(b)
    return (b | (1 << layer)) & ~(1 << (layer + 1))


def sibling(b: int) -> int:
    """The other child of ``b``'s parent."""
    layer = bin_layer(b)
    return b ^ (1 << (layer + 1))


def is_left(b: int) -> bool:
    """True if ``b`` is the left child of its parent."""
    layer = bin_layer(b)
    return not b & (1 << (layer + 1))


def left_child(b: int) -> int:
    """Left child of ``b``; :class:`ValueError` for a leaf."""
    layer = bin_layer(b)
    if layer == 0:
        raise ValueError(f"bin {b} is a leaf")
    return b - (1 << (layer - 1))


def right_child(b: int) -> int:
    """Right child of ``b``; :class:`ValueError` for a leaf."""
    layer = bin_layer(b)
    if layer == 0:
        raise ValueError(f"bin {b} is a leaf")
    return b + (1 << (layer - 1))


def bin_contains(outer: int, inner: int) -> bool:
    """True if bin ``inner`` lies within (or equals) bin ``outer``."""
    s, e = bin_to_range(outer)
    si, ei = bin_to_range(inner)
    return s <= si and ei <= e
