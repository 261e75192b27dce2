"""Segments of content in the storage overlay: cutting them (publisher) and verifying them
(fetcher) against the swarm's root hash or the live injector's signatures (docs/usages.md).

A segment is ``S = segment_chunks`` consecutive chunks aligned to a bin of the PPSPP Merkle
tree (RFC 7574 §4.2): segment i holds chunks ``[i·S, (i+1)·S − 1]`` (the last may be short).
What verifies it travels with it, so a fetcher needs nothing but the CONTENT-META value:

* VoD (§5): the segment's chunks hash into the subtree under the segment's bin (the static
  tree's rules: H(chunk) leaves, zero leaves and zero nodes past the end of the content,
  §5.1, as :class:`ppsp.peer.merkle.HashTree` builds it); ``proof`` holds the uncle hashes
  from the segment bin's sibling up to the root, lowest first; climbing with them must give
  the root hash, which is the swarm ID (§5.2).
* live, Unified Merkle Tree (§6.1.2): S is a multiple of the munro size; ``signed`` holds one
  signed munro per munro of the segment, each checked with the swarm ID's public key over
  the bytes PPSPP signs (chunk specification in the swarm's chunk addressing ‖ NTP
  timestamp ‖ munro hash, §6.1.2.2), and the chunks must hash up to it.
* live, Sign All (§6.1.1): one signature per chunk over chunk specification ‖ timestamp ‖
  chunk.

:func:`verify_segment` returns the chunks only when all of that holds, and raises
:class:`SegmentVerificationError` otherwise: nothing is cached, served or played before.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

from ppsp.peer.bins import bin_from_layer, bin_to_range
from ppsp.peer.live import (
    LiveSigner,
    LiveVerifier,
    SignAllInjector,
    SignAllVerifier,
    SignedMunro,
    UnifiedMerkleInjector,
    UnifiedMerkleVerifier,
)
from ppsp.peer.merkle import HashTree
from ppsp.peer.messages import (
    ChunkAddressing,
    DecodeError,
    IntegrityMethod,
    MerkleHashFunction,
    SignedIntegrity,
)
from reload.usages.values import ChunkSignature, ContentMeta, ContentSegment, MunroSignature

__all__ = [
    "DEFAULT_SEGMENT_CHUNKS",
    "LiveSegmenter",
    "SegmentVerificationError",
    "live_meta",
    "live_segment",
    "segment_chunk_count",
    "segments_of",
    "verify_segment",
    "vod_meta",
    "vod_segment",
]

#: Default segment size in chunks: 64 KiB at 1 KiB chunks (docs/usages.md).
DEFAULT_SEGMENT_CHUNKS: Final = 64


class SegmentVerificationError(ValueError):
    """A segment that does not verify against its content's metadata; never use its data."""


def _hash_function(meta: ContentMeta) -> MerkleHashFunction:
    return MerkleHashFunction[meta.hash.upper()]


def _log2(n: int) -> int:
    return n.bit_length() - 1


def segment_chunk_count(meta: ContentMeta, index: int) -> int:
    """Chunks in VoD segment ``index`` (S, fewer for the last); raises ValueError."""
    if meta.chunks is None:
        raise ValueError("live content has no fixed segment count")
    first = index * meta.segment_chunks
    if not 0 <= first < meta.chunks:
        raise ValueError(f"segment {index} is past the end ({meta.segments} segments)")
    return min(meta.segment_chunks, meta.chunks - first)


def _vod_geometry(meta: ContentMeta) -> tuple[int, int]:
    """(tree height, layer of a segment's bin) — the segment bin cannot be above the root."""
    assert meta.chunks is not None
    height = (meta.chunks - 1).bit_length()
    return height, min(_log2(meta.segment_chunks), height)


# --- publisher side ------------------------------------------------------------------------


def vod_meta(
    tree: HashTree,
    channel: str,
    source: str,
    *,
    segment_chunks: int = DEFAULT_SEGMENT_CHUNKS,
    title: str = "",
    trackers: Sequence[str] = (),
    sources: Sequence[tuple[str, int]] = (),
    created: float | None = None,
) -> ContentMeta:
    """The CONTENT-META value of static content hashed into ``tree`` (a seeder's tree)."""
    if tree.num_chunks is None or tree.content_length is None:
        raise ValueError("the tree's size is not known")
    return ContentMeta(
        channel=channel,
        source=source,
        live=False,
        swarm=tree.root_hash,
        hash=tree.hash_function.hashlib_name,
        chunk_size=tree.chunk_size,
        segment_chunks=segment_chunks,
        length=tree.content_length,
        chunks=tree.num_chunks,
        cipm=int(IntegrityMethod.MERKLE),
        title=title,
        trackers=tuple(trackers),
        sources=tuple(sources),
        created=time.time() if created is None else created,
    )


def vod_segment(meta: ContentMeta, tree: HashTree, index: int, data: bytes) -> ContentSegment:
    """VoD segment ``index`` holding ``data`` (its chunks, concatenated), with its proof."""
    if tree.root_hash != meta.swarm or tree.num_chunks != meta.chunks:
        raise ValueError("the tree is not the content's")
    count = segment_chunk_count(meta, index)  # checks the index
    height, layer = _vod_geometry(meta)
    b = bin_from_layer(layer, index)
    proof: list[bytes] = []
    for level in range(layer, height):
        sibling = b ^ (2 << level)
        h = tree.hash_at(sibling)
        if h is None or not tree.is_verified(sibling):
            raise ValueError(f"the tree does not know bin {sibling}")
        proof.append(h)
        b = (b | (1 << level)) & ~(2 << level)  # parent (§4.2)
    first = index * meta.segment_chunks
    expected = _vod_bytes(meta, first, count)
    if len(data) != expected:
        raise ValueError(f"segment {index} holds {expected} bytes, got {len(data)}")
    return ContentSegment(meta.channel, index, first, bytes(data), tuple(proof))


def segments_of(
    meta: ContentMeta, tree: HashTree, content: bytes | memoryview | Callable[[int, int], bytes]
) -> Iterator[ContentSegment]:
    """Every segment of VoD content, in order. ``content`` is the whole content or a function
    ``read(offset, size)`` (so a large file need not be in memory)."""
    assert meta.segments is not None and meta.chunks is not None
    view = None if callable(content) else memoryview(content)
    for index in range(meta.segments):
        first = index * meta.segment_chunks
        offset = first * meta.chunk_size
        size = _vod_bytes(meta, first, segment_chunk_count(meta, index))
        if view is not None:
            data = bytes(view[offset : offset + size])
        else:
            assert callable(content)
            data = content(offset, size)
        yield vod_segment(meta, tree, index, data)


def _vod_bytes(meta: ContentMeta, first: int, count: int) -> int:
    assert meta.length is not None and meta.chunks is not None
    end = min((first + count) * meta.chunk_size, meta.length)
    return end - first * meta.chunk_size


def live_meta(
    swarm_id: bytes,
    channel: str,
    source: str,
    *,
    signing: str = "unified-merkle",
    chunk_size: int = 1024,
    segment_chunks: int = DEFAULT_SEGMENT_CHUNKS,
    munro_chunks: int | None = 16,
    bitrate: int | None = None,
    cam: ChunkAddressing = ChunkAddressing.CHUNK_RANGE32,
    hash_function: MerkleHashFunction = MerkleHashFunction.SHA256,
    title: str = "",
    trackers: Sequence[str] = (),
    sources: Sequence[tuple[str, int]] = (),
    created: float | None = None,
) -> ContentMeta:
    """The CONTENT-META value of a live channel (defaults: our live source's, ppsp.peer.aio)."""
    unified = signing == "unified-merkle"
    return ContentMeta(
        channel=channel,
        source=source,
        live=True,
        swarm=swarm_id,
        hash=hash_function.hashlib_name,
        chunk_size=chunk_size,
        segment_chunks=segment_chunks,
        bitrate=bitrate,
        live_signing=signing,
        munro_chunks=munro_chunks if unified else None,
        cipm=int(IntegrityMethod.UNIFIED_MERKLE if unified else IntegrityMethod.SIGN_ALL),
        cam=int(cam),
        title=title,
        trackers=tuple(trackers),
        sources=tuple(sources),
        created=time.time() if created is None else created,
    )


def _chunk_bin(first: int, last: int) -> int:
    width = last - first + 1
    return 2 * first + width - 1  # §4.2: chunks [k·2^L, (k+1)·2^L − 1] are one bin


def _wire(
    meta: ContentMeta, first: int, last: int, last_length: int | None = None
) -> tuple[int, int]:
    """A chunk range in the swarm's chunk addressing units (bytes for 64-bit byte ranges)."""
    if ChunkAddressing(meta.cam).is_byte_range:
        end = (last + 1) * meta.chunk_size - 1
        if last_length is not None:
            end = last * meta.chunk_size + last_length - 1
        return first * meta.chunk_size, end
    return first, last


def live_segment(
    meta: ContentMeta,
    index: int,
    chunks: Sequence[bytes],
    signed: Sequence[SignedMunro] | Sequence[SignedIntegrity],
) -> ContentSegment:
    """Live segment ``index`` from its chunks and the injector's signatures: the signed
    munros covering them (Unified Merkle) or one SIGNED_INTEGRITY per chunk (Sign All)."""
    if not meta.live:
        raise ValueError("not live content")
    if not 1 <= len(chunks) <= meta.segment_chunks:
        raise ValueError(f"a segment holds 1..{meta.segment_chunks} chunks")
    first = index * meta.segment_chunks
    entries: list[MunroSignature | ChunkSignature] = []
    if meta.live_signing == "unified-merkle":
        munros = [m for m in signed if isinstance(m, SignedMunro)]
        entries = [
            MunroSignature(_chunk_bin(m.start, m.end), m.munro_hash, m.timestamp, m.signature)
            for m in munros
        ]
    else:
        sigs = [s for s in signed if isinstance(s, SignedIntegrity)]
        entries = [
            ChunkSignature(2 * (first + k), s.timestamp, s.signature) for k, s in enumerate(sigs)
        ]
    if len(entries) != len(signed):
        raise ValueError(f"signatures of the wrong form for {meta.live_signing}")
    return ContentSegment(
        meta.channel,
        index,
        first,
        b"".join(chunks),
        signed=tuple(entries),
    )


class LiveSegmenter:
    """Source side of live content in the storage overlay: signs chunks as they come, with
    our live source's scheme (:class:`UnifiedMerkleInjector` or :class:`SignAllInjector`),
    and hands back each segment once all its chunks are signed. Only the current segment is
    kept in memory."""

    def __init__(self, meta: ContentMeta, signer: LiveSigner) -> None:
        if not meta.live:
            raise ValueError("not live content")
        if signer.swarm_id != meta.swarm:
            raise ValueError("the signer's swarm ID is not the content's")
        self.meta = meta
        cam = ChunkAddressing(meta.cam)
        self._unified: UnifiedMerkleInjector | None = None
        self._sign_all: SignAllInjector | None = None
        if meta.live_signing == "unified-merkle":
            assert meta.munro_chunks is not None
            self._unified = UnifiedMerkleInjector(
                signer, cam, _hash_function(meta), meta.munro_chunks, chunk_size=meta.chunk_size
            )
        else:
            self._sign_all = SignAllInjector(signer, cam, chunk_size=meta.chunk_size)
        self.next_chunk = 0
        self._chunks: list[bytes] = []
        self._munros: list[SignedMunro] = []
        self._signatures: list[SignedIntegrity] = []

    def add_chunk(self, data: bytes, now: float) -> list[ContentSegment]:
        """Sign the next chunk (at most ``chunk_size`` bytes); returns the segment it
        completes, if any."""
        if not 0 < len(data) <= self.meta.chunk_size:
            raise ValueError(f"a chunk holds 1..{self.meta.chunk_size} bytes")
        index = self.next_chunk
        self.next_chunk += 1
        self._chunks.append(bytes(data))
        if self._unified is not None:
            self._munros.extend(self._unified.add_chunk(index, data, now))
        else:
            assert self._sign_all is not None
            self._signatures.append(self._sign_all.add_chunk(index, data, now))
        if len(self._chunks) == self.meta.segment_chunks:
            return [self._emit()]
        return []

    def flush(self, now: float) -> list[ContentSegment]:
        """End of the stream: the short last segment (its last munro padded, §5.1)."""
        if not self._chunks:
            return []
        if self._unified is not None:
            self._munros.extend(self._unified.flush(now))
        return [self._emit()]

    def _emit(self) -> ContentSegment:
        index = (self.next_chunk - 1) // self.meta.segment_chunks
        signed: list[SignedMunro] | list[SignedIntegrity] = (
            self._munros if self._unified is not None else self._signatures
        )
        segment = live_segment(self.meta, index, self._chunks, signed)
        if self._unified is not None:
            self._unified.forget_before(self.next_chunk)
        self._chunks, self._munros, self._signatures = [], [], []
        return segment


# --- fetcher side --------------------------------------------------------------------------


def _fail(reason: str) -> SegmentVerificationError:
    return SegmentVerificationError(reason)


def verify_segment(meta: ContentMeta, segment: ContentSegment) -> list[bytes]:
    """The segment's chunks, once verified against ``meta`` (root hash or live signatures);
    raises :class:`SegmentVerificationError` otherwise."""
    if segment.channel != meta.channel:
        raise _fail(f"segment of channel {segment.channel!r}, not {meta.channel!r}")
    if segment.first_chunk != segment.index * meta.segment_chunks:
        raise _fail(f"segment {segment.index} does not start at chunk {segment.first_chunk}")
    if meta.live:
        return _verify_live(meta, segment)
    return _verify_vod(meta, segment)


def _split(meta: ContentMeta, data: bytes) -> list[bytes]:
    size = meta.chunk_size
    return [data[o : o + size] for o in range(0, len(data), size)]


def _verify_vod(meta: ContentMeta, segment: ContentSegment) -> list[bytes]:
    assert meta.chunks is not None
    try:
        count = segment_chunk_count(meta, segment.index)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    expected = _vod_bytes(meta, segment.first_chunk, count)
    if len(segment.data) != expected:
        raise _fail(f"segment {segment.index} holds {len(segment.data)} bytes, not {expected}")
    height, layer = _vod_geometry(meta)
    if len(segment.proof) != height - layer:
        raise _fail(f"a proof of {len(segment.proof)} hashes; the tree needs {height - layer}")
    hf = _hash_function(meta)
    new = getattr(hashlib, hf.hashlib_name)
    zero = bytes(hf.digest_size)
    if any(len(h) != hf.digest_size for h in segment.proof):
        raise _fail(f"proof hashes are {hf.digest_size}-byte {hf.name} digests")
    chunks = _split(meta, segment.data)
    # §5.1 inside the segment's subtree: leaves past the end of the content are zero, and a
    # node is zero exactly when its first chunk is past the end (as HashTree builds it).
    level = [new(c).digest() for c in chunks] + [zero] * ((1 << layer) - len(chunks))
    base = segment.first_chunk
    for depth in range(1, layer + 1):
        level = [
            zero
            if base + (i << depth) >= meta.chunks
            else new(level[2 * i] + level[2 * i + 1]).digest()
            for i in range(len(level) // 2)
        ]
    current = level[0]
    b = bin_from_layer(layer, segment.index)
    for depth, uncle in enumerate(segment.proof, start=layer):
        is_left = not b & (2 << depth)
        current = new(current + uncle if is_left else uncle + current).digest()
        b = (b | (1 << depth)) & ~(2 << depth)
    if current != meta.swarm:
        raise _fail(f"segment {segment.index} does not hash up to the root hash (swarm ID)")
    return chunks


def _verify_live(meta: ContentMeta, segment: ContentSegment) -> list[bytes]:
    if not segment.data:
        raise _fail("an empty live segment")
    chunks = _split(meta, segment.data)
    if len(chunks) > meta.segment_chunks:
        raise _fail(f"{len(chunks)} chunks in a segment of {meta.segment_chunks}")
    try:
        verifier = LiveVerifier.from_swarm_id(meta.swarm)
    except (DecodeError, ValueError) as exc:
        raise _fail(f"not a live swarm ID: {exc}") from None
    cam = ChunkAddressing(meta.cam)
    first = segment.first_chunk
    if meta.live_signing == "unified-merkle":
        assert meta.munro_chunks is not None
        munro = meta.munro_chunks
        entries = segment.signed
        needed = -(-len(chunks) // munro)
        if len(entries) != needed or not all(isinstance(e, MunroSignature) for e in entries):
            raise _fail(f"{needed} signed munros expected, got {len(entries)}")
        checker = UnifiedMerkleVerifier(
            verifier, cam, _hash_function(meta), munro, chunk_size=meta.chunk_size
        )
        leaf = getattr(hashlib, _hash_function(meta).hashlib_name)
        for k, entry in enumerate(entries):
            assert isinstance(entry, MunroSignature)
            start = first + k * munro
            if bin_to_range(entry.bin) != (start, start + munro - 1):
                raise _fail(f"signed munro {k} is bin {entry.bin}, not chunks {start}..")
            leaves = [leaf(c).digest() for c in chunks[k * munro : (k + 1) * munro]]
            computed = _munro_hash(leaf, leaves, munro)
            if computed != entry.hash:
                raise _fail(f"chunks {start}.. do not hash to their signed munro")
            lo, hi = _wire(meta, start, start + munro - 1)
            if not checker.offer_signed_munro(lo, hi, computed, entry.timestamp, entry.signature):
                raise _fail(f"the signature of munro {start}.. is not the injector's")
        return chunks
    if len(segment.signed) != len(chunks) or not all(
        isinstance(e, ChunkSignature) for e in segment.signed
    ):
        raise _fail(f"{len(chunks)} chunk signatures expected, got {len(segment.signed)}")
    sign_all = SignAllVerifier(verifier, cam, chunk_size=meta.chunk_size)
    for k, (entry, chunk) in enumerate(zip(segment.signed, chunks, strict=True)):
        index = first + k
        assert isinstance(entry, ChunkSignature)
        if entry.bin != 2 * index:
            raise _fail(f"chunk signature {k} is for bin {entry.bin}, not chunk {index}")
        lo, hi = _wire(meta, index, index, len(chunk))
        if not sign_all.verify(lo, hi, entry.timestamp, entry.signature, chunk):
            raise _fail(f"the signature of chunk {index} is not the injector's")
    return chunks


def _munro_hash(new: Callable[[bytes], Any], leaves: list[bytes], width: int) -> bytes:
    # §6.1.2.1 with the static tree's padding: absent chunks are empty leaves, and two empty
    # children make an empty parent — exactly how UnifiedMerkleInjector.flush signs the last
    # munro of a stream.
    empty = bytes(len(leaves[0]))
    level = leaves + [empty] * (width - len(leaves))
    while len(level) > 1:
        level = [
            empty if left == empty and right == empty else bytes(new(left + right).digest())
            for left, right in zip(level[0::2], level[1::2], strict=True)
        ]
    return level[0]
