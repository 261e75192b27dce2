"""What the cacher serves over PPSPP: VoD content backed by the ChunkCache, misses filled from
the storage overlay (DESIGN F3: "cacher misses are filled from the storage overlay, verified
first").

A cacher announces the whole content (HAVE 0..N−1, RFC 7574 §3.2) even when it holds only
part of it: it can get any chunk from the storage overlay. The PPSPP channel serves only what
the content object can read at once, so a REQUEST (§3.7) for chunks not cached must wait
until they are. :class:`RequestGate` sits between the UDP socket and the endpoint: it looks
at each datagram of a channel in a served swarm, and when a REQUEST names chunks that are not
held it feeds the endpoint the datagram without those REQUESTs (ACKs and HAVEs are not
delayed, so LEDBAT's delay samples stay true), fetches the segments that hold them
(:class:`VodServing`), verifies and caches them, and then feeds the held-back REQUESTs, clipped
to what could be filled. A segment that fails verification is never cached nor served: the
REQUEST for it is dropped and the leecher asks again (or asks another peer).

Verification (§5.2): every chunk of a fetched segment is checked against the swarm's root hash
through the cache's hash tree (:meth:`cacher.cache.CachedSwarm.store`), with the segment's
subtree and its proof (docs/usages.md) offered as candidate hashes. The tree thereby learns
every uncle the cacher needs to send with the chunk (§5.4). Before serving anything, the last
segment is fetched: its proof holds every peak hash left of it and the segment the others
(§5.6: a leecher knowing only the root hash is sent the peaks first).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from cacher.cache import CachedSwarm, CacheError, CacheFull, ChunkCache
from cacher.core import SegmentGeometry, plan_fill
from ppsp.peer import fastwire
from ppsp.peer.bins import bin_from_layer
from ppsp.peer.content import PeerHashes, StaticContent, SwarmParameters
from ppsp.peer.endpoint import Endpoint
from ppsp.peer.messages import (
    ChunkAddressing,
    DecodeError,
    Handshake,
    Integrity,
    IntegrityMethod,
    MerkleHashFunction,
    Message,
    Request,
    SignedIntegrity,
    WireContext,
)
from ppsp.peer.ranges import ChunkSet
from reload.aio import ReloadRequestError
from reload.usages.client import ContentNotFoundError, ContentStore
from reload.usages.content import SegmentVerificationError, verify_segment
from reload.usages.kinds import CONTENT_SEGMENT, content_segment_key, content_segment_resource
from reload.usages.values import ContentMeta, ContentSegment, UsageDecodeError

__all__ = [
    "CacherVodContent",
    "OverlaySegments",
    "RequestGate",
    "SegmentSource",
    "VodServing",
    "handshake_swarm",
    "swarm_parameters",
]

log = logging.getLogger(__name__)

Address = tuple[str, int]
#: Chunks of recently filled segments kept in memory as well: what is served while the cache
#: is full or refuses admission, and a fallback if the cache evicted a chunk between the fill
#: and the send (LEDBAT may hold the send back for a while).
MEMORY_CHUNKS = 8 * 64
#: Bound on one segment fetch (the overlay client retries replicas within it).
FILL_TIMEOUT = 15.0
#: Seconds a segment that could not be filled is not asked for again.
FAILED_SEGMENT_HOLDOFF = 5.0


async def _false() -> bool:
    return False


class SegmentSource(Protocol):
    """Where verified segments come from (the storage overlay, or a test double)."""

    async def get_segment_value(self, meta: ContentMeta, index: int) -> ContentSegment: ...


class OverlaySegments(ContentStore):
    """:class:`ContentStore` returning the whole verified segment value, proof included (the
    cache's hash tree needs the proof), with the same replica retry on a bad answer."""

    async def get_segment_value(self, meta: ContentMeta, index: int) -> ContentSegment:
        resource = content_segment_resource(meta.source, meta.channel, index)
        key = content_segment_key(meta.channel, index)

        def accept(raw: bytes) -> ContentSegment:
            segment = ContentSegment.decode(raw)
            if segment.index != index:
                raise SegmentVerificationError(f"segment {segment.index}, not {index}")
            verify_segment(meta, segment)  # raises: the replicas are asked instead
            return segment

        what = f"{meta.source}/{meta.channel} segment {index}"
        return await self._fetch_verified(resource, CONTENT_SEGMENT, key, accept, what)


def swarm_parameters(meta: ContentMeta) -> SwarmParameters:
    """The PPSPP swarm parameters (§3.1, §7) of a VoD channel's CONTENT-META."""
    if meta.live:
        raise ValueError("a live channel")
    return SwarmParameters(
        swarm_id=meta.swarm,
        integrity_method=IntegrityMethod.MERKLE,
        hash_function=MerkleHashFunction[meta.hash.upper()],
        chunk_addressing=ChunkAddressing(meta.cam),
        chunk_size=meta.chunk_size,
    )


def segment_hashes(meta: ContentMeta, segment: ContentSegment) -> dict[int, bytes]:
    """Bin → hash of every node of the segment's subtree and of its proof (candidates for
    :meth:`HashTree.check_chunk`; nothing here is trusted until a chunk hashes up to the
    root through them, §5.2). Zero-hash rule of §5.1 as ppsp.peer.merkle builds the tree."""
    assert meta.chunks is not None
    hf = MerkleHashFunction[meta.hash.upper()]
    new = getattr(hashlib, hf.hashlib_name)
    zero = bytes(hf.digest_size)
    height = (meta.chunks - 1).bit_length()
    layer = min(meta.segment_chunks.bit_length() - 1, height)
    first = segment.first_chunk
    size = meta.chunk_size
    data = segment.data
    level = [new(data[o : o + size]).digest() for o in range(0, len(data), size)]
    level += [zero] * ((1 << layer) - len(level))
    out: dict[int, bytes] = {(first + i) << 1: h for i, h in enumerate(level)}
    for depth in range(1, layer + 1):
        level = [
            zero
            if first + (i << depth) >= meta.chunks
            else new(level[2 * i] + level[2 * i + 1]).digest()
            for i in range(len(level) // 2)
        ]
        base = first >> depth
        for i, h in enumerate(level):
            out[bin_from_layer(depth, base + i)] = h
    b = bin_from_layer(layer, first >> layer)
    for depth, uncle in enumerate(segment.proof, start=layer):
        out[b ^ (2 << depth)] = bytes(uncle)
        b = (b | (1 << depth)) & ~(2 << depth)  # parent (§4.2)
    return out


class VodServing:
    """One VoD swarm the cacher serves: its metadata, its cache, the fills in progress."""

    def __init__(
        self,
        meta: ContentMeta,
        cache: ChunkCache,
        source: SegmentSource,
        *,
        clock: Callable[[], float],
        memory_chunks: int = MEMORY_CHUNKS,
    ) -> None:
        if meta.live or meta.chunks is None or meta.length is None:
            raise ValueError("VodServing needs the metadata of a VoD channel")
        if meta.cam != ChunkAddressing.CHUNK_RANGE32:
            # The request gate reads REQUESTs in chunk units; other addressing would reach
            # the channel ungated and ask for chunks not yet cached.
            raise ValueError(f"chunk addressing {meta.cam} is not served (32-bit chunk ranges)")
        self.meta = meta
        self.cache = cache
        self.source = source
        self.clock = clock
        self.params = swarm_parameters(meta)
        self.cached: CachedSwarm = cache.open_static(self.params, meta.length)
        self.geometry = SegmentGeometry(meta.chunks, meta.segment_chunks)
        self.memory: OrderedDict[int, bytes] = OrderedDict()
        self.memory_chunks = memory_chunks
        self._fills: dict[int, asyncio.Task[bool]] = {}
        self._failed_until: dict[int, float] = {}
        #: Called after each segment stored (the daemon reports and commits).
        self.on_filled: list[Callable[[int, bool], None]] = []
        self.segments_filled = 0
        self.segments_failed = 0
        self.content = CacherVodContent(self)

    @property
    def swarm_id(self) -> bytes:
        return self.meta.swarm

    # -- what is held

    def peaks_known(self) -> bool:
        tree = self.cached.tree
        assert tree is not None
        return len(tree.peaks()) == len(tree.peak_bins())

    def held(self) -> ChunkSet:
        """Chunks that can be served now (cached, or in memory)."""
        held = self.cached.have.copy()
        for chunk in self.memory:
            held.add(chunk, chunk)
        return held

    def head_held(self, count: int) -> int:
        """How many of the first ``count`` chunks are cached, counted from chunk 0 (what
        may be pushed after the handshake: only held chunks are, DESIGN F4)."""
        if count <= 0 or not self.peaks_known():
            return 0
        run = self.cached.have.covering_interval(0)
        return 0 if run is None else min(count, run[1] + 1)

    # -- filling

    def plan(self, ranges: Iterable[tuple[int, int]], readahead: int) -> list[int]:
        return plan_fill(
            self.geometry, ranges, self.held(), readahead=readahead, peaks_known=self.peaks_known()
        )

    async def fill(self, indexes: Iterable[int], timeout: float = FILL_TIMEOUT) -> bool:
        """Fetch, verify and cache the segments (one fetch per segment however many ask);
        True when every one was stored."""
        tasks = [self._fill_task(i) for i in indexes]
        if not tasks:
            return True
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        return not pending and all(t.result() for t in done)

    def _fill_task(self, index: int) -> asyncio.Task[bool]:
        task = self._fills.get(index)
        if task is None and self.clock() < self._failed_until.get(index, float("-inf")):
            # Failed a moment ago (missing, or no replica verified): the leecher re-REQUESTs
            # every second or so, which must not turn into an overlay Fetch each time.
            task = asyncio.get_running_loop().create_task(_false())
        elif task is None:
            task = asyncio.get_running_loop().create_task(self._fill(index))
            self._fills[index] = task
            task.add_done_callback(lambda _t: self._fills.pop(index, None))
        return task

    async def _fill(self, index: int) -> bool:
        ok = False
        try:
            async with asyncio.timeout(FILL_TIMEOUT):
                segment = await self.source.get_segment_value(self.meta, index)
            ok = self.store_segment(index, segment)
        except (ContentNotFoundError, ReloadRequestError, TimeoutError, OSError) as exc:
            log.warning("swarm %s: segment %d not filled: %s", self.swarm_id.hex()[:12], index, exc)
        except (SegmentVerificationError, UsageDecodeError, ValueError) as exc:
            log.warning("swarm %s: segment %d rejected: %s", self.swarm_id.hex()[:12], index, exc)
        if ok:
            self.segments_filled += 1
            self._failed_until.pop(index, None)
        else:
            self.segments_failed += 1
            self._failed_until[index] = self.clock() + FAILED_SEGMENT_HOLDOFF
        for callback in self.on_filled:
            try:
                callback(index, ok)
            except Exception:
                log.exception("on_filled callback failed")
        return ok

    def store_segment(self, index: int, segment: ContentSegment) -> bool:
        """Verify every chunk of ``segment`` against the root hash and cache it (or keep it in
        memory when the policy does not admit it). False, and nothing more stored, as soon as
        a chunk fails: a segment from a hostile overlay node is never served."""
        meta = self.meta
        if segment.index != index or segment.first_chunk != index * meta.segment_chunks:
            log.warning("swarm %s: segment %d is not where it claims", self.swarm_id.hex(), index)
            return False
        first, last = self.geometry.chunks_of(index)
        size = meta.chunk_size
        data = segment.data
        if last < self.geometry.last_chunk:
            expected = (last - first + 1) * size
        else:
            assert meta.length is not None  # checked in __init__
            expected = meta.length - first * size
        if len(data) != expected:
            log.warning("swarm %s: segment %d has the wrong size", self.swarm_id.hex()[:12], index)
            return False
        uncles = segment_hashes(meta, segment)
        tree = self.cached.tree
        assert tree is not None
        now = self.clock()
        admitted = self.cache.admits(self.swarm_id, now)
        if not admitted:
            self.cache.policy.record_miss(self.swarm_id, now)
        for k, chunk in enumerate(range(first, last + 1)):
            piece = data[k * size : (k + 1) * size]
            ok: bool | None
            if admitted:
                try:
                    ok = self.cached.store(chunk, piece, now, uncles)
                except CacheFull as exc:
                    log.info("swarm %s: cache full (%s); serving from memory", self.swarm_id, exc)
                    admitted = False
                    ok = tree.check_chunk(chunk, piece, uncles)
            else:
                ok = tree.check_chunk(chunk, piece, uncles)
            if ok is not True:
                log.warning(
                    "swarm %s: chunk %d of segment %d fails verification against the root "
                    "hash; segment dropped",
                    self.swarm_id.hex()[:12],
                    chunk,
                    index,
                )
                return False
            self._remember(chunk, bytes(piece))
        return True

    def _remember(self, chunk: int, data: bytes) -> None:
        memory = self.memory
        memory[chunk] = data
        memory.move_to_end(chunk)
        while len(memory) > self.memory_chunks:
            memory.popitem(last=False)

    def read(self, chunk: int) -> bytes:
        """A verified chunk: from the cache, else from memory; KeyError if neither."""
        try:
            # Served now: the read records the use at our clock too (what a touch after it
            # did, in one policy update instead of two).
            data = self.cached.read_chunk(chunk, self.clock())
        except (KeyError, CacheError):
            got = self.memory.get(chunk)
            if got is None:
                raise KeyError(chunk) from None
            return got
        return data

    def cancel(self) -> None:
        for task in list(self._fills.values()):
            task.cancel()


class CacherVodContent:
    """The PPSPP content object (:class:`ppsp.peer.content.SwarmContent`) of a served VoD
    swarm: announces every chunk, serves verified chunks from the cache, and takes nothing
    from CSCs (the cacher fills from the storage overlay, never from viewers)."""

    def __init__(self, serving: VodServing) -> None:
        self.serving = serving
        n = serving.geometry.chunks
        #: What the cacher announces (HAVE, §3.2): everything; see the module docstring.
        self.have = ChunkSet([(0, n - 1)])
        tree = serving.cached.tree
        assert tree is not None
        self._static = StaticContent(tree, serving.cached, serving.cached.have)

    @property
    def num_chunks(self) -> int | None:
        return self.serving.geometry.chunks

    @property
    def complete(self) -> bool:
        return True  # nothing to download from viewers

    def read_chunk(self, chunk: int) -> bytes | memoryview:
        return self.serving.read(chunk)

    def integrity_for(self, chunk: int, peer: PeerHashes) -> list[Integrity | SignedIntegrity]:
        # §5.4: peaks for a peer with nothing yet, then the uncles it lacks; the cache's tree
        # knows them for every chunk that was verified into it.
        return self._static.integrity_for(chunk, peer)

    def accept_integrity(self, messages: list[Integrity]) -> bool:
        return True  # hashes from a viewer are of no use: we never take DATA from it

    def accept_signed_integrity(self, message: SignedIntegrity) -> bool:
        return False  # no SIGNED_INTEGRITY in a static swarm (§6)

    def verify_and_store(self, chunk: int, data: bytes | memoryview) -> bool | None:
        return None  # unrequested DATA from a viewer: dropped, the sender is not blamed


@dataclass(slots=True)
class Held:
    """REQUESTs held back until their chunks are filled (see the module docstring)."""

    serving: VodServing
    channel_id: int
    ctx: WireContext
    requests: list[tuple[int, int]]
    #: A whole datagram to feed afterwards (a handshake carrying REQUESTs), else None.
    datagram: bytes | None = None


def handshake_swarm(data: bytes) -> bytes | None:
    """The swarm ID an initiating HANDSHAKE (to channel 0, RFC 7574 §3.1, §7.3) asks for."""
    try:
        messages = fastwire.decode_datagram(data, WireContext()).messages
    except DecodeError:
        return None
    if not messages or not isinstance(messages[0], Handshake):
        return None
    return messages[0].options.swarm_id


class RequestGate:
    """Splits datagrams into what the endpoint may process now and REQUESTs to hold back."""

    def __init__(self, endpoint: Endpoint, servings: Mapping[bytes, VodServing]) -> None:
        self.endpoint = endpoint
        self.servings = servings

    def inspect(self, data: bytes, addr: Address) -> tuple[bytes | None, Held | None]:
        """(what to feed now — ``data`` itself, a re-encoded datagram or None —, what to hold)."""
        if len(data) < 4:
            return data, None
        channel_id = int.from_bytes(data[:4], "big")
        if channel_id == 0:
            return self._inspect_handshake(data)
        ch = self.endpoint.channels.get(channel_id)
        if ch is None or ch.addr != addr:
            return data, None
        serving = self.servings.get(ch.swarm.swarm_id)
        if serving is None or ch.ctx.chunk_addressing != ChunkAddressing.CHUNK_RANGE32:
            return data, None
        if serving.cached.have.contains_range(0, serving.geometry.last_chunk):
            # All cached: no REQUEST can be missing (see _missing), so the datagram need
            # not be decoded here as well as in the endpoint (the warm cacher's case).
            return data, None
        try:
            messages = fastwire.decode_datagram(data, ch.ctx).messages
        except DecodeError:
            return data, None  # the endpoint closes the channel
        missing = self._missing(serving, messages)
        if not missing:
            return data, None
        keep: list[Message] = []
        held: list[tuple[int, int]] = []
        for m in messages:
            if type(m) is Request and missing.overlaps(m.start, m.end):
                held.append((m.start, m.end))
            else:
                keep.append(m)
        now: bytes | None = None
        if keep:
            try:
                now = fastwire.encode_datagram(channel_id, keep, ch.ctx)
            except (ValueError, DecodeError):
                return data, None
        return now, Held(serving, channel_id, ch.ctx, held)

    def _inspect_handshake(self, data: bytes) -> tuple[bytes | None, Held | None]:
        try:
            messages = fastwire.decode_datagram(data, WireContext()).messages
        except DecodeError:
            return data, None
        if not messages or not isinstance(messages[0], Handshake):
            return data, None
        serving = self.servings.get(messages[0].options.swarm_id or b"")
        if serving is None:
            return data, None
        missing = self._missing(serving, messages[1:])
        if not missing:
            return data, None
        requests = [(m.start, m.end) for m in messages if type(m) is Request]
        return None, Held(serving, 0, WireContext(), requests, datagram=data)

    @staticmethod
    def _missing(serving: VodServing, messages: Iterable[Message]) -> ChunkSet:
        """Requested chunks that are neither cached nor in memory (cheap when all are
        cached, the common case: one range lookup per REQUEST)."""
        last = serving.geometry.last_chunk
        have = serving.cached.have
        memory = serving.memory
        missing = ChunkSet()
        for m in messages:
            if type(m) is not Request:
                continue
            assert isinstance(m, Request)
            start, end = max(0, m.start), min(m.end, last)
            if start > end or have.contains_range(start, end):
                continue
            for gap in have.missing(start, end):
                if gap.end - gap.start >= len(memory):
                    missing.add(gap.start, gap.end)  # more than memory could hold anyway
                    continue
                for chunk in range(gap.start, gap.end + 1):
                    if chunk not in memory:
                        missing.add(chunk, chunk)
        if not missing.is_empty() and not serving.peaks_known():
            missing.add(last, last)  # nothing is served before the peaks are known (§5.6)
        return missing

    def release(self, held: Held) -> bytes | None:
        """After the fill: the datagram to feed (REQUESTs clipped to what is now held)."""
        if held.datagram is not None:
            # A handshake with REQUESTs: feed it whole only if everything is there.
            nothing_missing = self._missing(held.serving, [Request(s, e) for s, e in held.requests])
            return held.datagram if nothing_missing.is_empty() else None
        now_held = held.serving.held()
        last = held.serving.geometry.last_chunk
        if not held.serving.peaks_known():
            return None
        out: list[Message] = []
        for start, end in held.requests:
            start, end = max(0, start), min(end, last)
            if start > end:
                continue
            wanted = ChunkSet([(start, end)])
            for r in wanted.intersection(now_held).intervals():
                out.append(Request(r.start, r.end))
        if not out:
            return None
        with contextlib.suppress(ValueError):
            return fastwire.encode_datagram(held.channel_id, out, held.ctx)
        return None
