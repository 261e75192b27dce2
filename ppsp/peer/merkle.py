"""Merkle hash trees for static content, RFC 7574 §5: building, verifying, size detection.

The tree is a complete binary tree over ``2**height`` leaves, ``height`` minimal so that every
chunk has a leaf. A leaf holds H(chunk); a leaf past the end of the content, and any node
whose children are both empty, holds the all-zero hash; every other node holds
H(left || right) (§5.1). The root hash is the swarm ID. This matches libswift: the
reference trace's content gives root ``026bf5be…`` with exactly this construction.

Nodes are addressed by bin number (§4.2) and kept in two flat arrays indexed by bin: the
hashes (``digest_size`` bytes per node) and a one-byte "verified" flag. Nodes past the end of
the content are verified zeros as soon as the size is known, so verification never needs a
special case for them.

Hashes received in INTEGRITY messages are *offered*: kept aside, never trusted, until a chunk
verification passes through them and ends at a verified node (§5.2). A failed verification
drops the offered hashes it used, so a bad sender cannot poison the tree.

Uncle and peak conventions follow libswift, the reference peer (checked against
``traces/libswift/libswift_static_200000B.pcap``): before the first DATA it sends the peak
hashes left to right (§5.6.2), then the chunk's uncles from the top down, stopping *below the
peak* that covers the chunk, never continuing to the root; and it leaves out uncles the
receiver can already compute from chunks it has acknowledged (§5.3). :meth:`HashTree.uncle_bins`
and :meth:`HashTree.uncles_to_send` produce those lists. (libswift also skips hashes it sent
in datagrams not yet acknowledged, the optional optimisation of §5.3; a caller gets the same
by passing the acknowledged chunks plus those in flight.)
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from .bins import bin_to_range, bins_covering
from .messages import MerkleHashFunction
from .ranges import ChunkSet

__all__ = ["DEFAULT_MAX_CHUNKS", "HashTree", "TreeFileError"]


class _Hasher(Protocol):
    def digest(self) -> bytes: ...

    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...


_Constructor = Callable[..., _Hasher]


class TreeFileError(ValueError):
    """A serialized hash tree that is corrupt, truncated, or not the tree asked for."""


#: Serialized form: magic, hash function, reserved, chunk size, number of chunks, content
#: length (both :data:`_UNKNOWN` when not known), then the root hash, then (if the size is
#: known) one verified flag per node and every node's hash, then SHA-256 of all that.
_MAGIC = b"PPSPMHT\x01"
_HEADER = struct.Struct(">8sBBIQQ")
_UNKNOWN = 0xFFFF_FFFF_FFFF_FFFF
_CHECKSUM_SIZE = 32

#: Most offered (unverified) hashes kept at once; oldest are dropped first. An honest
#: sender needs at most a few tree heights' worth in flight.
_MAX_OFFERED = 1 << 16

#: Default ceiling on a size learnt from untrusted peak hashes (§5.6). A single peak that
#: equals the root hash verifies for *any* power-of-two size, so without a ceiling one
#: INTEGRITY message could make us allocate an arbitrarily large tree. 2**22 chunks is
#: 4 GiB at the default chunk size (a tree of ~280 MB with SHA-256); for more, give the
#: size from trusted metadata or pass ``max_chunks``.
DEFAULT_MAX_CHUNKS = 1 << 22


def _constructor(hash_function: MerkleHashFunction) -> _Constructor:
    ctor: _Constructor = getattr(hashlib, hash_function.hashlib_name)
    return ctor


def _height_for(num_chunks: int) -> int:
    return (num_chunks - 1).bit_length()


def _empty_slices(num_chunks: int, nnodes: int) -> list[slice]:
    """Per layer, the bins (as a slice of the node arrays) whose chunks all lie past the end."""
    out: list[slice] = []
    for layer in range(_height_for(num_chunks) + 1):
        first_empty = -(-num_chunks // (1 << layer))
        b0 = (first_empty << (layer + 1)) + (1 << layer) - 1
        if b0 < nnodes:
            out.append(slice(b0, nnodes, 2 << layer))
    return out


class HashTree:
    """A Merkle hash tree over one piece of static content (§5.1), addressed by bins.

    Build one with :meth:`from_content` / :meth:`from_file` (seeder: everything verified) or
    :meth:`for_root` (leecher: only the root hash is trusted), or :meth:`load` a saved one.
    """

    __slots__ = (
        "_chunk_size",
        "_content_length",
        "_ds",
        "_hash_function",
        "_hashes",
        "_height",
        "_max_chunks",
        "_new",
        "_num_chunks",
        "_offered",
        "_root_hash",
        "_verified",
        "_zero",
        "verified_log",
    )

    def __init__(
        self,
        root_hash: bytes,
        chunk_size: int,
        hash_function: MerkleHashFunction | int,
        *,
        max_chunks: int = DEFAULT_MAX_CHUNKS,
    ) -> None:
        """A tree knowing only its root hash; prefer the named constructors."""
        hf = MerkleHashFunction(hash_function)
        if len(root_hash) != hf.digest_size:
            raise ValueError(
                f"root hash is {len(root_hash)} bytes, {hf.name} digests are {hf.digest_size}"
            )
        if chunk_size <= 0:
            raise ValueError(f"chunk size must be positive, got {chunk_size}")
        self._hash_function = hf
        self._new = _constructor(hf)
        self._ds = hf.digest_size
        self._zero = bytes(hf.digest_size)
        self._root_hash = bytes(root_hash)
        self._chunk_size = chunk_size
        self._max_chunks = max_chunks
        self._num_chunks: int | None = None
        self._height: int | None = None
        self._content_length: int | None = None
        self._hashes = bytearray()
        self._verified = bytearray()
        self._offered: dict[int, bytes] = {}
        #: When a list, every bin newly marked verified is appended to it (resume journals).
        self.verified_log: list[int] | None = None

    # ------------------------------------------------------------------ constructors

    @classmethod
    def for_root(
        cls,
        root_hash: bytes,
        chunk_size: int,
        hash_function: MerkleHashFunction | int,
        num_chunks: int | None = None,
        *,
        content_length: int | None = None,
        max_chunks: int = DEFAULT_MAX_CHUNKS,
    ) -> HashTree:
        """Leecher side: only ``root_hash`` is trusted (§5.2). The size comes from trusted
        metadata (``num_chunks`` / ``content_length``) or later from peak hashes (§5.6)."""
        tree = cls(root_hash, chunk_size, hash_function, max_chunks=max_chunks)
        if content_length is not None:
            tree.set_content_length(content_length)
        if num_chunks is not None:
            tree.set_num_chunks(num_chunks)
        return tree

    @classmethod
    def from_content(
        cls,
        data: bytes | bytearray | memoryview,
        chunk_size: int,
        hash_function: MerkleHashFunction | int,
    ) -> HashTree:
        """Seeder side: hash ``data`` in ``chunk_size`` chunks; every node is verified."""
        hf = MerkleHashFunction(hash_function)
        mv = memoryview(data).cast("B")
        length = len(mv)
        if length == 0:
            raise ValueError("cannot build a Merkle tree over empty content")
        if chunk_size <= 0:
            raise ValueError(f"chunk size must be positive, got {chunk_size}")
        new = _constructor(hf)
        n = -(-length // chunk_size)
        leaves = [new(mv[i * chunk_size : (i + 1) * chunk_size]).digest() for i in range(n)]
        return cls._from_leaves(leaves, chunk_size, hf, length)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        chunk_size: int,
        hash_function: MerkleHashFunction | int,
    ) -> HashTree:
        """Seeder side, streaming: hash the file chunk by chunk without loading it whole."""
        hf = MerkleHashFunction(hash_function)
        if chunk_size <= 0:
            raise ValueError(f"chunk size must be positive, got {chunk_size}")
        new = _constructor(hf)
        leaves: list[bytes] = []
        buf = bytearray(chunk_size * max(1, (1 << 20) // chunk_size))
        mv = memoryview(buf)
        length = 0
        pending = 0  # bytes of a chunk left incomplete by a short read
        with open(path, "rb", buffering=0) as f:
            while True:
                got = f.readinto(mv[pending:])
                if not got:
                    break
                have = pending + got
                length += got
                whole = have - have % chunk_size
                for off in range(0, whole, chunk_size):
                    leaves.append(new(mv[off : off + chunk_size]).digest())
                pending = have - whole
                if pending:
                    mv[:pending] = mv[whole:have]
        if pending:
            leaves.append(new(mv[:pending]).digest())
        if length == 0:
            raise ValueError(f"cannot build a Merkle tree over empty file {path}")
        return cls._from_leaves(leaves, chunk_size, hf, length)

    @classmethod
    def _from_leaves(
        cls, leaves: list[bytes], chunk_size: int, hf: MerkleHashFunction, length: int
    ) -> HashTree:
        n = len(leaves)
        height = _height_for(n)
        ds = hf.digest_size
        new = _constructor(hf)
        nnodes = (2 << height) - 1
        hashes = bytearray(nnodes * ds)
        step = 2 * ds
        for i, leaf in enumerate(leaves):
            hashes[i * step : i * step + ds] = leaf
        # §5.1 layer by layer. Only nodes with a first chunk < n are computed; the others
        # stay all-zero, which is also exactly what a right child past the end contributes.
        for layer in range(1, height + 1):
            half = 1 << (layer - 1)
            stride = 2 << layer
            count = -(-n // (1 << layer))
            b = (1 << layer) - 1
            for _ in range(count):
                lo = (b - half) * ds
                ro = (b + half) * ds
                hashes[b * ds : b * ds + ds] = new(
                    hashes[lo : lo + ds] + hashes[ro : ro + ds]
                ).digest()
                b += stride
        root = bytes(hashes[((1 << height) - 1) * ds : (1 << height) * ds])
        tree = cls(root, chunk_size, hf, max_chunks=max(n, DEFAULT_MAX_CHUNKS))
        tree._num_chunks = n
        tree._height = height
        tree._content_length = length
        tree._hashes = hashes
        tree._verified = bytearray(b"\x01") * nnodes
        return tree

    # ------------------------------------------------------------------ size

    def set_num_chunks(self, num_chunks: int) -> None:
        """Fix the number of chunks from *trusted* metadata (§3.1). Idempotent; a different
        value than the one already known raises :class:`ValueError`."""
        if num_chunks <= 0:
            raise ValueError(f"number of chunks must be positive, got {num_chunks}")
        if self._num_chunks is not None:
            if num_chunks != self._num_chunks:
                raise ValueError(f"tree has {self._num_chunks} chunks, not {num_chunks}")
            return
        if self._content_length is not None and (
            -(-self._content_length // self._chunk_size) != num_chunks
        ):
            raise ValueError("number of chunks contradicts the content length")
        self._allocate(num_chunks)

    def set_content_length(self, content_length: int) -> None:
        """Fix the content length in bytes from *trusted* metadata (and so the number of
        chunks). A different value than the one already known raises :class:`ValueError`."""
        if content_length <= 0:
            raise ValueError(f"content length must be positive, got {content_length}")
        n = -(-content_length // self._chunk_size)
        if self._content_length is not None and self._content_length != content_length:
            raise ValueError(f"content length is {self._content_length}, not {content_length}")
        if self._num_chunks is not None and self._num_chunks != n:
            raise ValueError(f"tree has {self._num_chunks} chunks, not {n}")
        if self._num_chunks is None:
            self._allocate(n)
        self._content_length = content_length

    def _allocate(self, n: int) -> None:
        height = _height_for(n)
        ds = self._ds
        nnodes = (2 << height) - 1
        hashes = bytearray(nnodes * ds)
        verified = bytearray(nnodes)
        # Nodes whose first chunk is past the end are empty: known all-zero (§5.1).
        for sl in _empty_slices(n, nnodes):
            verified[sl] = b"\x01" * len(range(sl.start, sl.stop, sl.step))
        root = (1 << height) - 1
        hashes[root * ds : root * ds + ds] = self._root_hash
        verified[root] = 1
        self._hashes = hashes
        self._verified = verified
        self._num_chunks = n
        self._height = height
        # Offered hashes outside the now-known tree can never be used.
        for b in [b for b in self._offered if b >= nnodes or verified[b]]:
            del self._offered[b]

    # ------------------------------------------------------------------ properties

    @property
    def root_hash(self) -> bytes:
        return self._root_hash

    @property
    def hash_function(self) -> MerkleHashFunction:
        return self._hash_function

    @property
    def digest_size(self) -> int:
        return self._ds

    @property
    def chunk_size(self) -> int:
        return self._chunk_size

    @property
    def num_chunks(self) -> int | None:
        """Number of chunks, once known (metadata, peak hashes, or built from content)."""
        return self._num_chunks

    @property
    def content_length(self) -> int | None:
        """Content size in bytes: given, or learnt when the last chunk verifies (§5.6)."""
        return self._content_length

    @property
    def height(self) -> int | None:
        """Layer of the root bin (the tree has ``2**height`` leaves); None if size unknown."""
        return self._height

    @property
    def root_bin(self) -> int | None:
        return None if self._height is None else (1 << self._height) - 1

    def chunk_length(self, chunk: int) -> int | None:
        """Byte length of ``chunk``; None for the last chunk while the length is unknown."""
        n = self._num_chunks
        if n is None or not 0 <= chunk < n:
            raise IndexError(f"chunk {chunk} is not in the content")
        if chunk < n - 1:
            return self._chunk_size
        if self._content_length is None:
            return None
        return self._content_length - (n - 1) * self._chunk_size

    def __repr__(self) -> str:
        return (
            f"HashTree({self._hash_function.name}, root={self._root_hash.hex()[:16]}…, "
            f"chunk_size={self._chunk_size}, num_chunks={self._num_chunks})"
        )

    # ------------------------------------------------------------------ peaks and uncles

    def peak_bins(self) -> list[int]:
        """Bins of the peak hashes (§5.6.1), left to right; [] while the size is unknown.

        The peaks are the binary decomposition of the number of chunks: one per 1 bit.
        """
        if self._num_chunks is None:
            return []
        return bins_covering(0, self._num_chunks - 1)

    def peaks(self) -> list[tuple[int, bytes]]:
        """(bin, hash) of every peak whose hash is known, left to right."""
        out: list[tuple[int, bytes]] = []
        for b in self.peak_bins():
            if self._verified[b]:
                out.append((b, self._node(b)))
        return out

    def _peak_for(self, chunk: int) -> int:
        n = self._num_chunks
        if n is None:
            raise ValueError("tree size is not known yet (no peak hashes)")
        if not 0 <= chunk < n:
            raise IndexError(f"chunk {chunk} is not in the content ({n} chunks)")
        # Peaks cover [0, n) left to right with decreasing sizes: the bits of n.
        pos = 0
        for layer in range(n.bit_length() - 1, -1, -1):
            if n & (1 << layer):
                if chunk < pos + (1 << layer):
                    return (pos << 1) + (1 << layer) - 1
                pos += 1 << layer
        raise AssertionError("unreachable")  # pragma: no cover

    def uncle_bins(self, chunk: int) -> list[int]:
        """Sibling and uncle bins needed to verify ``chunk`` against its peak, lowest first.

        They stop below the peak covering the chunk, as libswift sends them: the peaks
        themselves are checked against the root once (§5.6), so a receiver that knows them
        never needs the hashes of the incomplete nodes above a peak.
        """
        peak = self._peak_for(chunk)
        out: list[int] = []
        b = chunk << 1
        layer = 0
        while b != peak:
            out.append(b ^ (2 << layer))
            b = (b | (1 << layer)) & ~(2 << layer)
            layer += 1
        return out

    def uncles_to_send(
        self, chunk: int, receiver_has: ChunkSet, include_peaks: bool | None = None
    ) -> list[int]:
        """Bins for the INTEGRITY messages to put before DATA(chunk), in wire order (§5.4).

        ``receiver_has`` holds the chunks the receiver acknowledged (HAVE/ACK). Peaks come
        first, left to right, unless the receiver already acknowledged a chunk (§5.6.2;
        ``include_peaks`` overrides). Then the uncles, highest first, leaving out those the
        receiver must already hold (§5.3): a receiver that verified any chunk under a node's
        parent knows the node's hash, and every hash above it.
        """
        out: list[int] = []
        if include_peaks if include_peaks is not None else receiver_has.is_empty():
            out.extend(self.peak_bins())
        uncles: list[int] = []
        peak = self._peak_for(chunk)
        b = chunk << 1
        layer = 0
        while b != peak:
            p = (b | (1 << layer)) & ~(2 << layer)
            s, e = bin_to_range(p)
            if receiver_has.overlaps(s, e):
                break
            uncles.append(b ^ (2 << layer))
            b = p
            layer += 1
        uncles.reverse()
        out.extend(uncles)
        return out

    # ------------------------------------------------------------------ node access

    def _node(self, b: int) -> bytes:
        o = b * self._ds
        return bytes(self._hashes[o : o + self._ds])

    def hash_at(self, b: int) -> bytes | None:
        """Hash of node ``b``: verified, else offered (untrusted), else None."""
        if self._num_chunks is not None and 0 <= b < len(self._verified) and self._verified[b]:
            return self._node(b)
        return self._offered.get(b)

    def is_verified(self, b: int) -> bool:
        """True if node ``b``'s hash is trusted (checked up to the root, or past the end)."""
        return (
            self._num_chunks is not None
            and 0 <= b < len(self._verified)
            and bool(self._verified[b])
        )

    def offer_hash(self, b: int, h: bytes) -> None:
        """Keep ``h`` as an untrusted candidate for node ``b`` (from an INTEGRITY message).

        Ignored for verified nodes and nodes outside the tree. A newer offer for the same
        node replaces an older one.
        """
        if len(h) != self._ds:
            raise ValueError(f"hash is {len(h)} bytes, expected {self._ds}")
        if b < 0:
            raise ValueError(f"bin numbers are non-negative, got {b}")
        if self._num_chunks is not None and (b >= len(self._verified) or self._verified[b]):
            return
        offered = self._offered
        if b not in offered and len(offered) >= _MAX_OFFERED:
            del offered[next(iter(offered))]
        offered[b] = bytes(h)

    def offered_count(self) -> int:
        """Number of untrusted hashes currently kept."""
        return len(self._offered)

    def restore_verified(self, b: int, h: bytes) -> None:
        """Mark node ``b`` verified with hash ``h`` *without checking*: only for state this
        process wrote itself (a resume journal). The size must be known."""
        if self._num_chunks is None:
            raise ValueError("tree size is not known")
        if not 0 <= b < len(self._verified) or len(h) != self._ds:
            raise ValueError(f"bad node {b} for this tree")
        o = b * self._ds
        self._hashes[o : o + self._ds] = h
        self._verified[b] = 1
        self._offered.pop(b, None)

    def all_verified(self) -> bool:
        """True once every node is verified, i.e. every chunk can be served with its uncles
        (a seeder's tree; a leecher's after it verified every chunk)."""
        return self._num_chunks is not None and 0 not in self._verified

    def verified_leaf_count(self) -> int:
        """Number of chunks whose leaf hash is verified (not necessarily stored)."""
        n = self._num_chunks
        return 0 if n is None else self._verified[0 : 2 * n : 2].count(1)

    def absorb(self, other: HashTree) -> None:
        """Take over the verified nodes of ``other``, a tree for the same root that this
        process trusts (e.g. reloaded from its own resume file). :class:`ValueError` if the
        trees disagree on root, hash function, chunk size or size."""
        if (other._root_hash, other._hash_function, other._chunk_size) != (
            self._root_hash,
            self._hash_function,
            self._chunk_size,
        ):
            raise ValueError("trees have different roots or parameters")
        if other._content_length is not None:
            self.set_content_length(other._content_length)
        if other._num_chunks is None:
            return
        self.set_num_chunks(other._num_chunks)
        mine, theirs = self._verified, other._verified
        if mine == theirs:
            return
        baseline = bytearray(len(mine))
        for sl in _empty_slices(other._num_chunks, len(mine)):
            baseline[sl] = mine[sl]
        baseline[(1 << (self._height or 0)) - 1] = 1
        if mine == baseline:
            # Nothing learnt here yet: take the other arrays wholesale.
            self._verified = bytearray(theirs)
            self._hashes = bytearray(other._hashes)
        else:
            ds = self._ds
            for b in range(len(mine)):
                if theirs[b] and not mine[b]:
                    self._hashes[b * ds : b * ds + ds] = other._hashes[b * ds : b * ds + ds]
                    mine[b] = 1
        for b in [b for b in self._offered if self._verified[b]]:
            del self._offered[b]

    # ------------------------------------------------------------------ size detection

    def offer_peaks(self, candidates: list[tuple[int, bytes]]) -> bool:
        """Automatic size detection (§5.6): check peak hashes against the root hash.

        ``candidates`` are (bin, hash) pairs in the order they arrived; the peaks are the
        leading run of bins that tile chunks 0.. with strictly decreasing sizes, which is how
        libswift sends them ahead of the uncles (§5.6.2). Anything after that run is ignored
        (offer it with :meth:`offer_hash`). If the peaks hash up to the root, padding with
        zero hashes, the number of chunks becomes known and the peaks verified; returns
        whether they were accepted. With the size already known they must match it.
        """
        chain: dict[int, bytes] = {}
        order: list[int] = []
        pos = 0
        prev = -1
        for b, h in candidates:
            if b < 0 or len(h) != self._ds:
                break
            s, e = bin_to_range(b)
            size = e - s + 1
            if s != pos or (prev != -1 and size >= prev):
                break
            chain[b] = bytes(h)
            order.append(b)
            pos = e + 1
            prev = size
        if not order:
            return False
        n = pos
        if self._num_chunks is not None:
            if n != self._num_chunks:
                return False
        elif n > self._max_chunks:
            return False
        height = _height_for(n)
        root = (1 << height) - 1
        new = self._new
        zero = self._zero
        # Fold from the rightmost peak to the root (§5.6.1 lemma): going up, a left child's
        # sibling lies wholly past the end (zero hash); a right child's sibling is a peak.
        b = order[-1]
        val = chain[b]
        s, e = bin_to_range(b)
        layer = (e - s + 1).bit_length() - 1
        spine: list[tuple[int, bytes]] = []
        while b != root:
            bit = 2 << layer
            if b & bit:
                left = chain.get(b ^ bit)
                if left is None:
                    return False
                val = new(left + val).digest()
            else:
                val = new(val + zero).digest()
            b = (b | (1 << layer)) & ~bit
            layer += 1
            spine.append((b, val))
        if val != self._root_hash:
            return False
        if self._num_chunks is None:
            self._allocate(n)
        log = self.verified_log
        ds = self._ds
        for b, h in [*chain.items(), *spine[:-1]]:
            if not self._verified[b]:
                self._hashes[b * ds : b * ds + ds] = h
                self._verified[b] = 1
                self._offered.pop(b, None)
                if log is not None:
                    log.append(b)
        return True

    # ------------------------------------------------------------------ verification

    def verify_chunk(
        self,
        chunk: int,
        data: bytes | bytearray | memoryview,
        uncles: Mapping[int, bytes] | None = None,
    ) -> bool:
        """True if ``data`` verifies as chunk ``chunk``; see :meth:`check_chunk`."""
        return self.check_chunk(chunk, data, uncles) is True

    def check_chunk(
        self,
        chunk: int,
        data: bytes | bytearray | memoryview,
        uncles: Mapping[int, bytes] | None = None,
    ) -> bool | None:
        """Check ``data`` as chunk ``chunk`` against the root hash (§5.2).

        Hashes the chunk and walks up, taking each sibling from the verified nodes, else
        ``uncles`` (hashes that arrived in the same datagram, §5.3), else the offered hashes,
        until it reaches a verified node. On a match the path and the siblings used become
        verified; on a mismatch the offered hashes used are discarded. Returns None if
        a needed hash is missing or the size is unknown (nothing is discarded then: the
        chunk cannot be checked *yet*, which says nothing against its sender), False if
        the length is wrong: every chunk but the last is exactly ``chunk_size`` bytes.

        Uncles sent libswift-style stop below the chunk's peak; if that peak is not verified
        yet but every peak hash is at hand (offered or in ``uncles``), the peaks are checked
        against the root (§5.6) and the walk retried.

        In-order download hits the fast path: the chunk's own leaf hash arrived as an uncle
        of the previous chunk, so this is one hash and one compare.
        """
        n = self._num_chunks
        if n is None:
            return None
        if not 0 <= chunk < n:
            return False
        length = len(data)
        cs = self._chunk_size
        if chunk == n - 1:
            if not 0 < length <= cs:
                return False
            cl = self._content_length
            if cl is not None and length != cl - (n - 1) * cs:
                return False
        elif length != cs:
            return False
        new = self._new
        cur = new(data).digest()
        b = chunk << 1
        ds = self._ds
        hashes = self._hashes
        verified = self._verified
        if verified[b]:
            if hashes[b * ds : b * ds + ds] != cur:
                return False
            if chunk == n - 1:
                self._content_length = (n - 1) * cs + length
            return True
        result = self._walk(b, cur, uncles)
        if result is None and self._check_offered_peaks(uncles):
            # The walk stopped at an unverified peak (size known from metadata, peaks sent
            # as plain INTEGRITY hashes, §5.6.2): they now check out, so try once more.
            result = self._walk(b, cur, uncles)
        if not result:
            return result
        if chunk == n - 1:
            self._content_length = (n - 1) * cs + length
        return True

    def _walk(self, b: int, cur: bytes, uncles: Mapping[int, bytes] | None) -> bool | None:
        """Hash up from leaf ``b`` (hash ``cur``) to the first verified node (§5.2).

        True: matched, path and siblings now verified. False: mismatch, offered siblings used
        discarded. None: a sibling hash is missing, nothing changed.
        """
        ds = self._ds
        hashes = self._hashes
        verified = self._verified
        new = self._new
        offered = self._offered
        path: list[tuple[int, bytes]] = [(b, cur)]
        used: list[tuple[int, bytes]] = []
        used_offered: list[int] = []
        layer = 0
        while True:
            bit = 2 << layer
            sib = b ^ bit
            if verified[sib]:
                sh = bytes(hashes[sib * ds : sib * ds + ds])
            else:
                got = uncles.get(sib) if uncles is not None else None
                if got is None or len(got) != ds:
                    got = offered.get(sib)
                    if got is None:
                        return None
                    used_offered.append(sib)
                sh = got
                used.append((sib, sh))
            cur = new(sh + cur).digest() if b & bit else new(cur + sh).digest()
            b = (b | (1 << layer)) & ~bit
            layer += 1
            if verified[b]:
                if hashes[b * ds : b * ds + ds] != cur:
                    for s in used_offered:
                        offered.pop(s, None)
                    return False
                break
            path.append((b, cur))
        log = self.verified_log
        for node, h in path + used:
            hashes[node * ds : node * ds + ds] = h
            verified[node] = 1
            if offered:
                offered.pop(node, None)  # stale candidates for what is now known
            if log is not None:
                log.append(node)
        return True

    def _check_offered_peaks(self, uncles: Mapping[int, bytes] | None) -> bool:
        """Verify the peaks from offered (or same-datagram) hashes if some peak is not yet
        verified and every peak hash is at hand. True if that verified anything."""
        candidates: list[tuple[int, bytes]] = []
        missing = False
        for p in self.peak_bins():
            if self._verified[p]:
                candidates.append((p, self._node(p)))
                continue
            missing = True
            h = uncles.get(p) if uncles is not None else None
            if h is None or len(h) != self._ds:
                h = self._offered.get(p)
            if h is None:
                return False
            candidates.append((p, h))
        if not missing:
            return False
        if self.offer_peaks(candidates):
            return True
        # At least one offered peak hash is wrong; drop them all so they cannot block.
        for p, _ in candidates:
            if not self._verified[p]:
                self._offered.pop(p, None)
        return False

    # ------------------------------------------------------------------ persistence

    def to_bytes(self) -> bytes:
        """Serialize the trusted state (offered hashes are not kept)."""
        n = self._num_chunks
        parts: list[bytes | bytearray] = [
            _HEADER.pack(
                _MAGIC,
                int(self._hash_function),
                0,
                self._chunk_size,
                _UNKNOWN if n is None else n,
                _UNKNOWN if self._content_length is None else self._content_length,
            ),
            self._root_hash,
        ]
        if n is not None:
            parts.append(self._verified)
            parts.append(self._hashes)
        body = b"".join(parts)
        return body + hashlib.sha256(body).digest()

    @classmethod
    def from_bytes(
        cls,
        data: bytes | bytearray | memoryview,
        *,
        root_hash: bytes | None = None,
        hash_function: MerkleHashFunction | int | None = None,
        chunk_size: int | None = None,
    ) -> HashTree:
        """Parse :meth:`to_bytes` output; :class:`TreeFileError` if it is damaged or does not
        match the expected root hash / hash function / chunk size."""
        mv = memoryview(data).cast("B")
        if len(mv) < _HEADER.size + _CHECKSUM_SIZE:
            raise TreeFileError("hash tree file is truncated")
        magic, hf_code, reserved, cs, n, cl = _HEADER.unpack_from(mv)
        if magic != _MAGIC:
            raise TreeFileError("not a hash tree file (bad magic)")
        try:
            hf = MerkleHashFunction(hf_code)
        except ValueError:
            raise TreeFileError(f"unknown hash function {hf_code}") from None
        if reserved != 0 or cs == 0:
            raise TreeFileError("bad hash tree header")
        ds = hf.digest_size
        expected = _HEADER.size + ds
        nnodes = 0
        if n != _UNKNOWN:
            if n == 0 or n > 1 << 48:
                raise TreeFileError(f"implausible number of chunks {n}")
            nnodes = (2 << _height_for(n)) - 1
            expected += nnodes * (1 + ds)
        if len(mv) != expected + _CHECKSUM_SIZE:
            raise TreeFileError("hash tree file has the wrong length")
        if hashlib.sha256(mv[:expected]).digest() != mv[expected:]:
            raise TreeFileError("hash tree file checksum mismatch")
        root = bytes(mv[_HEADER.size : _HEADER.size + ds])
        if hash_function is not None and hf != MerkleHashFunction(hash_function):
            raise TreeFileError(
                f"tree uses {hf.name}, expected {MerkleHashFunction(hash_function).name}"
            )
        if chunk_size is not None and cs != chunk_size:
            raise TreeFileError(f"tree has chunk size {cs}, expected {chunk_size}")
        if root_hash is not None and root != root_hash:
            raise TreeFileError("tree has a different root hash")
        if cl != _UNKNOWN and (n == _UNKNOWN or not (n - 1) * cs < cl <= n * cs):
            raise TreeFileError("content length contradicts the number of chunks")
        tree = cls(root, cs, hf, max_chunks=max(DEFAULT_MAX_CHUNKS, 0 if n == _UNKNOWN else n))
        if n != _UNKNOWN:
            off = _HEADER.size + ds
            flags = mv[off : off + nnodes]
            if bytes(flags).translate(None, b"\x00\x01"):
                raise TreeFileError("bad verified flags")
            tree._allocate(n)
            verified = bytearray(flags)
            hashes = bytearray(mv[off + nnodes : expected])
            rb = (1 << _height_for(n)) - 1
            if not verified[rb] or hashes[rb * ds : rb * ds + ds] != root:
                raise TreeFileError("tree root node does not match its root hash")
            # Nodes past the end are verified zeros by construction; re-derive their flags
            # rather than trust the file for them.
            for sl in _empty_slices(n, nnodes):
                verified[sl] = tree._verified[sl]
            tree._verified = verified
            tree._hashes = hashes
        if cl != _UNKNOWN:
            tree._content_length = cl
        return tree

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_bytes` to ``path`` atomically (temp file + rename)."""
        target = Path(path)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(self.to_bytes())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        root_hash: bytes | None = None,
        hash_function: MerkleHashFunction | int | None = None,
        chunk_size: int | None = None,
    ) -> HashTree:
        """Read a tree written by :meth:`save`, checked as in :meth:`from_bytes`. Raises
        :class:`TreeFileError` for a damaged file, :class:`OSError` if it cannot be read."""
        return cls.from_bytes(
            Path(path).read_bytes(),
            root_hash=root_hash,
            hash_function=hash_function,
            chunk_size=chunk_size,
        )
