"""The content source server (DESIGN.md §1, flow F1 publish): ingest a file (VoD) or a live
stream, store its metadata and segments in the storage overlay, register at the tracker as a
seeder, serve the swarm over PPSPP and publish the channel to the portal.

Layout (DESIGN.md §3):

- :class:`StorePipeline` is the sans-IO core of publishing: which Stores to send, in which
  order, how many at once, and when to retry. It is fed outcomes and the time, and never does
  I/O, so ordering, the concurrency bound, back-off and give-up are tested without sockets.
- :class:`SegmentAssembler` is the sans-IO cutter of a live stream into segments of whole munros
  (RFC 7574 §6.1.2.1), holding only the chunks of segments not yet complete.
- :func:`run_pipeline`, :class:`TrackerRegistration`, :func:`publish_vod` and
  :func:`run_live` are the thin asyncio runners around them, over
  :class:`reload.aio.OverlayNode` (storage overlay), :mod:`ppsp.tracker.client` (PPSP-TP),
  :mod:`ppsp.peer.aio` (PPSPP) and :mod:`portal.portal_client`.

Decisions (also in docs/source.md):

- Store order. VoD: every segment first, CONTENT-META last, so a fetcher that finds the meta
  finds every segment (the meta announces complete content). Live: CONTENT-META first, then
  segments as they fill, so a fetcher can verify a segment as soon as it appears.
- Retries: a Store that fails with a transient error (Error_Request_Timeout, a routing
  failure, a broken link; RFC 6940 §6.3.3.1) is retried with exponential back-off, at most
  ``max_attempts`` times; a permanent error (Error_Forbidden from the access policy,
  Error_Data_Too_Large, Error_Unknown_Kind, ...) ends the publication at once: retrying
  cannot help and the user must fix the configuration.
- Live memory stays bounded: segments already stored are forgotten (the overlay keeps them
  for their lifetime); if the overlay falls behind the stream, the oldest segments waiting to
  be stored are dropped (counted) rather than queued without bound.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import enum
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final, Generic, TypeVar

from portal.portal_client import Channel, publish_channel, publish_url
from ppsp.peer.aio import LiveSourceHandle, PeerNode, SeederHandle, serve_seed
from ppsp.peer.bins import range_to_bin
from ppsp.peer.content import (
    DEFAULT_CHUNKS_PER_SIGNATURE,
    DEFAULT_LIVE_WINDOW,
    LiveSourceContent,
    SwarmParameters,
)
from ppsp.peer.live import LiveSigner, SignedMunro
from ppsp.peer.merkle import HashTree
from ppsp.peer.messages import IntegrityMethod, LiveSignatureAlgorithm, MerkleHashFunction
from ppsp.peer.picker import PickPolicy
from ppsp.peer.storage import SeedStorage
from ppsp.tracker.client import TrackerClient, TrackerClientError, open_client, parse_tracker_url
from ppsp.tracker.messages import (
    Action,
    PeerAddress,
    PeerMode,
    Role,
    SwarmAction,
    swarm_id_hex,
)
from reload import security
from reload.aio import DaemonConfigError, OverlayNode, ReloadRequestError, load_daemon_config
from reload.messages import ErrorCode
from reload.usages.client import ContentStore
from reload.usages.content import (
    DEFAULT_SEGMENT_CHUNKS,
    live_meta,
    live_segment,
    segment_chunk_count,
    vod_meta,
    vod_segment,
)
from reload.usages.kinds import check_channel
from reload.usages.values import ContentMeta, ContentSegment

__all__ = [
    "LIVE_LIFETIME",
    "META",
    "VOD_LIFETIME",
    "InputStream",
    "LiveStream",
    "PipelineStats",
    "PublishError",
    "PublishReport",
    "SegmentAssembler",
    "SegmentParts",
    "Source",
    "SourceOptions",
    "StorePipeline",
    "TrackerRegistration",
    "generated_stream",
    "is_transient",
    "munro_bin",
    "open_storage_overlay",
    "publish_vod",
    "run_live",
    "run_pipeline",
]

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
Address = tuple[str, int]

#: Stores in flight at once: enough to fill a few overlay round trips without making the
#: source's links the bottleneck (measured in bench/source.py).
DEFAULT_CONCURRENCY = 8
DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_BACKOFF = 0.25
MAX_BACKOFF = 8.0
#: How long one Store may take before it counts as a transient failure.
STORE_TIMEOUT = 20.0
#: PPSP-TP keep-alive (RFC 7846 §2.3: a STAT_REPORT resets the tracker's track timer, 120 s
#: by default in ppsp.tracker.state): a third of it survives two lost keep-alives.
TRACKER_KEEPALIVE = 40.0
#: Live: segments waiting to be stored, beyond which the oldest are dropped.
LIVE_MAX_QUEUED = 32
#: Live: how long the end of a stream waits for viewers to acknowledge the last chunk.
LIVE_DRAIN = 5.0
#: On SIGINT/SIGTERM, how long a live source still waits for its last Stores before it exits.
STOP_GRACE = 2.0
#: Lifetime of stored values (RFC 6940 §7.4.1: the storing peer drops a value when it runs
#: out). VoD content lives a day and is Stored again every half lifetime while the source
#: runs; live segments live an hour (a time-shift window), and the live CONTENT-META is
#: Stored again while the stream runs.
VOD_LIFETIME = 86400
LIVE_LIFETIME = 3600

#: RELOAD errors worth retrying (RFC 6940 §6.3.3.1): no answer in time, a request the
#: responsible peer is still processing, routing that failed while the ring repairs.
TRANSIENT_CODES = frozenset(
    {ErrorCode.REQUEST_TIMEOUT, ErrorCode.IN_PROGRESS, ErrorCode.TTL_EXCEEDED, ErrorCode.NOT_FOUND}
)


class PublishError(Exception):
    """The publication failed (a Store that kept failing, or one that cannot succeed)."""


def is_transient(exc: BaseException) -> bool:
    """Whether a failed Store may succeed if sent again (see the module's decisions)."""
    code = getattr(exc, "code", None)
    if isinstance(code, ErrorCode):
        return code in TRANSIENT_CODES
    # A broken link or a local timeout (ConnectionError and TimeoutError are OSErrors).
    return isinstance(exc, OSError)


# ---------------------------------------------------------------------------------------------
# The sans-IO Store pipeline
# ---------------------------------------------------------------------------------------------


class ItemState(enum.Enum):
    WAITING = "waiting"
    IN_FLIGHT = "in flight"


@dataclass(slots=True)
class _Item(Generic[K]):
    seq: int
    key: K
    size: int
    barrier: bool
    state: ItemState = ItemState.WAITING
    attempts: int = 0
    not_before: float = 0.0


@dataclass(slots=True)
class PipelineStats:
    """What a pipeline did: items and bytes stored, Stores sent, retries, dropped items."""

    stored: int = 0
    bytes_stored: int = 0
    sent: int = 0
    retries: int = 0
    dropped: int = 0


class StorePipeline(Generic[K]):
    """Which Stores to send, in which order, how many at once, and when to retry.

    Items are added in order with :meth:`add`; a *barrier* item (CONTENT-META) starts only once
    every earlier item is stored, and no later item starts before it is stored. The driver
    asks :meth:`ready` for the keys to send now (they count as in flight), reports each
    outcome with :meth:`succeeded` or :meth:`failed`, and sleeps until a completion or
    :meth:`next_timer`. :meth:`close` says no more items come; :attr:`done` is then true once
    everything is stored. A permanent failure, or a transient one on the last attempt, sets
    :attr:`error` and the pipeline stops handing out work.
    """

    def __init__(
        self,
        *,
        max_in_flight: int = DEFAULT_CONCURRENCY,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff: float = DEFAULT_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        max_queued: int | None = None,
        on_drop: Callable[[K], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if max_in_flight < 1 or max_attempts < 1:
            raise ValueError("max_in_flight and max_attempts must be at least 1")
        self.max_in_flight = max_in_flight
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_queued = max_queued
        self.on_drop = on_drop
        self._rng = rng or random.Random()
        self._seq = 0
        #: Items not stored yet (waiting or in flight), ordered by ``seq``.
        self._items: list[_Item[K]] = []
        self._by_key: dict[K, _Item[K]] = {}
        self._in_flight = 0
        self.closed = False
        self.error: str | None = None
        self.stats = PipelineStats()
        self.total_items = 0
        self.total_bytes = 0

    # -- feeding -----------------------------------------------------------------------

    def add(self, key: K, size: int, *, barrier: bool = False) -> None:
        """Queue the Store of ``key`` (``size`` bytes of value, for progress)."""
        if self.closed:
            raise RuntimeError("the pipeline is closed")
        if key in self._by_key:
            raise ValueError(f"{key!r} is already queued")
        item = _Item(self._seq, key, size, barrier)
        self._seq += 1
        self._items.append(item)
        self._by_key[key] = item
        self.total_items += 1
        self.total_bytes += size
        if self.max_queued is not None:
            self._drop_excess()

    def _drop_excess(self) -> None:
        assert self.max_queued is not None
        waiting = [i for i in self._items if i.state is ItemState.WAITING and not i.barrier]
        for item in waiting[: max(0, len(waiting) - self.max_queued)]:
            self._remove(item)
            self.stats.dropped += 1
            self.total_bytes -= item.size
            self.total_items -= 1
            log.warning("the overlay falls behind: %r dropped before it was stored", item.key)
            if self.on_drop is not None:
                self.on_drop(item.key)

    def close(self) -> None:
        """No more items will be added."""
        self.closed = True

    # -- driving -----------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Closed, and every item stored (False after an error)."""
        return self.error is None and self.closed and not self._items

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def pending(self) -> int:
        """Items not stored yet (waiting or in flight)."""
        return len(self._items)

    def ready(self, now: float) -> list[K]:
        """Keys to send now, in order; they are in flight until their outcome is reported."""
        if self.error is not None:
            return []
        out: list[K] = []
        for index, item in enumerate(self._items):
            if self._in_flight >= self.max_in_flight:
                break
            if item.barrier:
                # Everything before it stored (it is first) and nothing in flight.
                if (
                    index == 0
                    and self._in_flight == 0
                    and item.state is ItemState.WAITING
                    and item.not_before <= now
                ):
                    self._start(item)
                    out.append(item.key)
                break  # nothing after a barrier starts before the barrier is stored
            if item.state is ItemState.WAITING and item.not_before <= now:
                self._start(item)
                out.append(item.key)
        return out

    def _start(self, item: _Item[K]) -> None:
        item.state = ItemState.IN_FLIGHT
        item.attempts += 1
        self._in_flight += 1
        self.stats.sent += 1
        if item.attempts > 1:
            self.stats.retries += 1

    def _finish(self, key: K) -> _Item[K]:
        item = self._by_key.get(key)
        if item is None or item.state is not ItemState.IN_FLIGHT:
            raise KeyError(f"{key!r} is not in flight")
        self._in_flight -= 1
        return item

    def succeeded(self, key: K) -> None:
        item = self._finish(key)
        self._remove(item)
        self.stats.stored += 1
        self.stats.bytes_stored += item.size

    def failed(self, key: K, now: float, *, transient: bool, reason: str) -> None:
        """A Store of ``key`` failed: retry it later (transient, attempts left) or give up."""
        item = self._finish(key)
        if not transient or item.attempts >= self.max_attempts:
            why = "permanent error" if not transient else f"{item.attempts} attempts"
            self.error = f"storing {item.key!r} failed ({why}): {reason}"
            return
        item.state = ItemState.WAITING
        # Exponential back-off with jitter (RFC 8085 §3.1.3 practice): retries of many Stores
        # that failed together (a peer that died) do not all land at the same moment.
        delay = min(self.max_backoff, self.backoff * 2 ** (item.attempts - 1))
        item.not_before = now + delay * (0.5 + self._rng.random() / 2)
        log.info("store of %r failed (%s); retry %d in %.2f s", key, reason, item.attempts, delay)

    def _remove(self, item: _Item[K]) -> None:
        index = bisect.bisect_left(self._items, item.seq, key=lambda i: i.seq)
        del self._items[index]
        del self._by_key[item.key]

    def next_timer(self) -> float | None:
        """When a waiting retry becomes ready (None: nothing waits on time)."""
        times = [
            i.not_before
            for i in self._items
            if i.state is ItemState.WAITING and i.not_before > 0 and i.attempts > 0
        ]
        return min(times, default=None)


async def run_pipeline(
    pipeline: StorePipeline[K],
    store: Callable[[K], Awaitable[None]],
    *,
    wakeup: asyncio.Event | None = None,
    progress: Callable[[int, int], None] | None = None,
    poll: float = 1.0,
) -> None:
    """Drive ``pipeline`` until it is done, calling ``store(key)`` for every key it hands out.

    ``wakeup`` is set by a feeder that adds items (live); without one, the pipeline must be
    closed. Raises :class:`PublishError` when the pipeline gives up. Outstanding Stores are
    cancelled on the way out."""
    loop = asyncio.get_running_loop()
    tasks: dict[asyncio.Future[Any], K] = {}
    try:
        while not pipeline.done:
            if pipeline.error is not None:
                raise PublishError(pipeline.error)
            if wakeup is not None:
                wakeup.clear()
            for key in pipeline.ready(loop.time()):
                tasks[asyncio.ensure_future(store(key))] = key
            if not tasks and wakeup is None and pipeline.next_timer() is None:
                raise RuntimeError("the pipeline is stalled: nothing in flight, nothing to wait")
            waits: set[asyncio.Future[Any]] = set(tasks)
            waker: asyncio.Future[Any] | None = None
            if wakeup is not None:
                waker = asyncio.ensure_future(wakeup.wait())
                waits.add(waker)
            timer = pipeline.next_timer()
            timeout = poll if timer is None else max(0.0, min(poll, timer - loop.time()))
            finished: set[asyncio.Future[Any]] = set()
            try:
                if waits:
                    finished, _ = await asyncio.wait(
                        waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                    )
                else:
                    await asyncio.sleep(timeout)  # only a retry's back-off to wait for
            finally:
                if waker is not None:
                    waker.cancel()
            now = loop.time()
            for task in finished:
                if task not in tasks:
                    continue  # the waker
                key_of = tasks.pop(task)
                exc = task.exception()
                if exc is None:
                    pipeline.succeeded(key_of)
                else:
                    pipeline.failed(
                        key_of, now, transient=is_transient(exc), reason=str(exc) or repr(exc)
                    )
            if progress is not None:
                progress(pipeline.stats.bytes_stored, pipeline.total_bytes)
        if pipeline.error is not None:
            raise PublishError(pipeline.error)
    finally:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)


# ---------------------------------------------------------------------------------------------
# Live segments (sans-IO)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SegmentParts:
    """A complete live segment before it is turned into a CONTENT-SEGMENT value: segment
    ``index`` covers chunks ``first_chunk …``; ``munros`` are the signed munros over them."""

    index: int
    first_chunk: int
    chunks: tuple[bytes, ...]
    munros: tuple[SignedMunro, ...]

    @property
    def size(self) -> int:
        return sum(len(c) for c in self.chunks)


class SegmentAssembler:
    """Cuts a live stream into segments of ``segment_chunks`` chunks, a whole number of munros
    (docs/usages.md: a live segment is whole munros, so each verifies on its own signatures).

    Feed every chunk with :meth:`add_chunk` and every signed munro with :meth:`add_munro`; a
    segment is emitted once its chunks are in and every munro under it is signed. Only chunks
    of segments not complete yet are held, so memory stays bounded by one segment plus the
    munro in progress.
    """

    def __init__(self, segment_chunks: int, munro_chunks: int) -> None:
        if munro_chunks < 1 or segment_chunks % munro_chunks:
            raise ValueError("a live segment is a whole number of munros")
        self.segment_chunks = segment_chunks
        self.munro_chunks = munro_chunks
        self._chunks: dict[int, bytes] = {}
        self._munros: dict[int, SignedMunro] = {}  # by first chunk
        self._next_segment = 0
        self._ended_at: int | None = None  # chunks in the whole stream, once ended

    @property
    def next_segment(self) -> int:
        return self._next_segment

    @property
    def held(self) -> int:
        """Chunks held for segments not complete yet."""
        return len(self._chunks)

    def add_chunk(self, index: int, data: bytes) -> None:
        if index < self._next_segment * self.segment_chunks:
            return  # a segment already emitted: nothing to add
        self._chunks[index] = bytes(data)

    def add_munro(self, munro: SignedMunro) -> list[SegmentParts]:
        self._munros[munro.start] = munro
        return self._emit()

    def end(self, chunks_in_stream: int) -> list[SegmentParts]:
        """End of the stream after ``chunks_in_stream`` chunks: the last, short segment goes
        out once its (last, partial) munro is signed."""
        self._ended_at = chunks_in_stream
        return self._emit()

    def _emit(self) -> list[SegmentParts]:
        out: list[SegmentParts] = []
        while True:  # bounded: each pass emits a segment or returns
            first = self._next_segment * self.segment_chunks
            last = first + self.segment_chunks - 1
            if self._ended_at is not None:
                if first >= self._ended_at:
                    return out
                last = min(last, self._ended_at - 1)
            munros: list[SignedMunro] = []
            for start in range(first, last + 1, self.munro_chunks):
                munro = self._munros.get(start)
                if munro is None:
                    return out
                munros.append(munro)
            if any(i not in self._chunks for i in range(first, last + 1)):
                return out
            chunks = tuple(self._chunks.pop(i) for i in range(first, last + 1))
            for munro in munros:
                del self._munros[munro.start]
            out.append(SegmentParts(self._next_segment, first, chunks, tuple(munros)))
            self._next_segment += 1


def munro_bin(munro: SignedMunro) -> int:
    """The bin number (RFC 7574 §4.2) of a munro's chunk range."""
    return range_to_bin(munro.start, munro.end)


# ---------------------------------------------------------------------------------------------
# Tracker registration (PPSP-TP, RFC 7846)
# ---------------------------------------------------------------------------------------------


class TrackerRegistration:
    """The source at one tracker: CONNECT with a SEEDER JOIN for the swarm and role SOURCE
    (RFC 7846 §4.1.1 and our role extension), STAT_REPORT keep-alives so the track timer does
    not expire (§2.3), and a LEAVE on :meth:`close`."""

    def __init__(
        self,
        url: str,
        swarm_id: bytes,
        addresses: Sequence[Address],
        *,
        peer_id: str | None = None,
        keepalive: float = TRACKER_KEEPALIVE,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.swarm = swarm_id_hex(swarm_id)
        self.peer_id = peer_id or str(uuid.uuid4())
        self.addresses = [PeerAddress(ip, port, peer_protocol="PPSP-PP") for ip, port in addresses]
        self.keepalive = keepalive
        self.client: TrackerClient = open_client(url, self.peer_id, timeout=timeout)
        self._task: asyncio.Task[None] | None = None
        self.registered = False

    async def start(self) -> None:
        """Register (raises :class:`TrackerClientError` if the tracker refuses or is silent)."""
        await self.client.connect(
            [SwarmAction(self.swarm, Action.JOIN, PeerMode.SEEDER)],
            peer_addresses=self.addresses,
            role=Role.SOURCE,
        )
        self.registered = True
        self._task = asyncio.ensure_future(self._keep_alive())
        log.info("registered at tracker %s as seeder of %s", self.url, self.swarm)

    async def _keep_alive(self) -> None:
        while True:  # until cancelled by close()
            await asyncio.sleep(self.keepalive)
            try:
                await self.client.stat_report()
            except TrackerClientError as exc:
                # A tracker restarted (it forgot us) or unreachable for a while: register
                # again, so FIND keeps returning the source.
                log.warning("tracker %s keep-alive failed (%s); registering again", self.url, exc)
                with contextlib.suppress(TrackerClientError):
                    await self.client.connect(
                        [SwarmAction(self.swarm, Action.JOIN, PeerMode.SEEDER)],
                        peer_addresses=self.addresses,
                        role=Role.SOURCE,
                    )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.registered:
            self.registered = False
            with contextlib.suppress(TrackerClientError, OSError):
                await self.client.connect([SwarmAction(self.swarm, Action.LEAVE, PeerMode.SEEDER)])
        await self.client.close()


# ---------------------------------------------------------------------------------------------
# The live source over PPSPP
# ---------------------------------------------------------------------------------------------


class LiveStream:
    """A live source serving over PPSPP (RFC 7574 §6, Unified Merkle Tree signing) whose
    chunks and signed munros also go to a :class:`SegmentAssembler`. The same pieces as
    :func:`ppsp.peer.aio.serve_live_source`, with the stream pushed in by the caller (so the
    source sees every signed munro)."""

    def __init__(
        self,
        handle: LiveSourceHandle,
        content: LiveSourceContent,
        segmenter: SegmentAssembler,
        publish: Callable[[list[tuple[int, int]]], None],
        viewers_have: Callable[[int], bool] | None = None,
    ) -> None:
        self.handle = handle
        self._viewers_have = viewers_have
        self.content = content
        self.segmenter = segmenter
        self._publish = publish
        self.chunks = 0
        self.bytes = 0

    @classmethod
    async def start(
        cls,
        listen: Address,
        *,
        chunk_size: int,
        segment_chunks: int,
        munro_chunks: int,
        signer: LiveSigner | None = None,
        algorithm: LiveSignatureAlgorithm = LiveSignatureAlgorithm.ECDSAP256SHA256,
        window: int | None = DEFAULT_LIVE_WINDOW,
    ) -> LiveStream:
        if signer is None:
            signer = await asyncio.to_thread(LiveSigner.generate, algorithm)
        params = SwarmParameters(
            swarm_id=signer.swarm_id,
            integrity_method=IntegrityMethod.UNIFIED_MERKLE,
            hash_function=MerkleHashFunction.SHA256,
            chunk_size=chunk_size,
            live_signature_algorithm=signer.swarm_id[0],
            live_discard_window=window,
        )
        content = LiveSourceContent(params, signer, munro_chunks, window)
        node = PeerNode()
        swarm = node.endpoint.add_swarm(params, content, PickPolicy.IN_ORDER)
        address = await node.start(listen)
        handle = LiveSourceHandle(node, signer.swarm_id, address)

        def publish(ranges: list[tuple[int, int]]) -> None:
            swarm.publish(ranges)
            node.kick()

        def viewers_have(chunk: int) -> bool:
            return all(chunk in ch.peer_have for ch in swarm.channels if ch.is_open)

        segmenter = SegmentAssembler(segment_chunks, munro_chunks)
        return cls(handle, content, segmenter, publish, viewers_have)

    @property
    def swarm_id(self) -> bytes:
        return self.handle.swarm_id

    def add_chunk(self, data: bytes, now: float) -> list[SegmentParts]:
        """Sign, announce and serve the next chunk; returns the segments it completed."""
        index = self.content.next_chunk
        ranges = self.content.add_chunk(data, now)
        self.chunks += 1
        self.bytes += len(data)
        self.segmenter.add_chunk(index, data)
        out = self._munros(ranges)
        self._publish(ranges)
        return out

    def end(self, now: float) -> list[SegmentParts]:
        """End of the stream: sign the last, partial munro; returns the last segments."""
        ranges = self.content.end(now)
        out = self._munros(ranges)
        self._publish(ranges)
        return out + self.segmenter.end(self.content.next_chunk)

    def _munros(self, ranges: list[tuple[int, int]]) -> list[SegmentParts]:
        unified = self.content.unified
        assert unified is not None
        out: list[SegmentParts] = []
        for start, _end in ranges:
            munro = unified.munro_for(start)
            if munro is not None:
                out += self.segmenter.add_munro(munro)
        return out

    async def drain(self, timeout: float) -> None:
        """After :meth:`end`: wait (at most ``timeout`` s) until every viewer acknowledged the
        last chunk, as :func:`ppsp.peer.aio.serve_live_source` does, so closing does not cut
        off the end of the stream."""
        last = self.content.next_chunk - 1
        if last < 0 or self._viewers_have is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and not self._viewers_have(last):  # bounded by timeout
            await asyncio.sleep(0.02)

    def close(self) -> None:
        self.handle.close()


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class PublishReport:
    """What a publication did, for the summary the CLI prints."""

    channel: str
    swarm_id: bytes
    live: bool
    bytes: int = 0
    segments: int = 0
    seconds: float = 0.0
    stats: PipelineStats = field(default_factory=PipelineStats)
    user: str | None = None
    address: Address | None = None
    trackers: list[str] = field(default_factory=list)
    portal: str | None = None

    @property
    def mib_per_second(self) -> float:
        return self.bytes / (1 << 20) / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        where = []
        if self.user is not None:
            where.append(f"storage overlay as {self.user}/{self.channel}")
        where += [f"tracker {url}" for url in self.trackers]
        if self.portal:
            where.append(f"portal {self.portal}")
        out = [
            f"swarm ID  {self.swarm_id.hex()}",
            f"channel   {self.channel} ({'live' if self.live else 'VoD'})",
            f"content   {self.bytes} bytes in {self.segments} "
            f"segment{'s' if self.segments != 1 else ''}",
        ]
        if self.user is not None:
            out.append(
                f"stored    {self.stats.stored} values, {self.stats.sent} Stores "
                f"({self.stats.retries} retries) in {self.seconds:.2f} s, "
                f"{self.mib_per_second:.2f} MiB/s"
            )
        if self.address is not None:
            host, port = self.address
            verb = "served " if self.live else "serving"
            out.append(f"{verb}   PPSPP on {'[' + host + ']' if ':' in host else host}:{port}")
        out.append(
            f"published {'; '.join(where) if where else 'nowhere (no --overlay, --tracker)'}"
        )
        return out


# ---------------------------------------------------------------------------------------------
# Orchestration: publish a file, run a live channel
# ---------------------------------------------------------------------------------------------

#: Key of the CONTENT-META Store in a pipeline (segments are keyed by their index).
META: Final = "meta"
StoreKey = int | str


@dataclass(slots=True)
class SourceOptions:
    """What ``p2pcdn source publish|live`` was asked to do (docs/source.md)."""

    name: str
    title: str = ""
    #: Daemon TOML of the source's RELOAD node in the storage overlay (docs/overlay.md).
    overlay: Path | None = None
    trackers: Sequence[str] = ()
    portal: str | None = None
    portal_token: str | None = None
    hash_function: MerkleHashFunction = MerkleHashFunction.SHA256
    chunk_size: int = 1024
    segment_chunks: int = DEFAULT_SEGMENT_CHUNKS
    listen: Address = ("127.0.0.1", 0)
    concurrency: int = DEFAULT_CONCURRENCY
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    join_timeout: float = 60.0
    #: Stored values' lifetime in seconds (None: VOD_LIFETIME or LIVE_LIFETIME); while the
    #: source runs it Stores them again every half lifetime.
    lifetime: int | None = None
    #: Live: kbit/s of the stream (pacing of a generated stream or a file, and metadata).
    bitrate: int | None = None
    #: Live: chunks per signed munro (RFC 7574 §6.1.2.1, NCHUNKS_PER_SIG).
    munro_chunks: int = DEFAULT_CHUNKS_PER_SIGNATURE
    tracker_keepalive: float = TRACKER_KEEPALIVE

    def check(self) -> None:
        """Raise :class:`ValueError` for options that cannot work together."""
        check_channel(self.name)
        if self.segment_chunks < 1 or self.segment_chunks & (self.segment_chunks - 1):
            raise ValueError("--segment-chunks must be a power of two")
        if self.portal is not None and not self.portal_token:
            raise ValueError("--portal needs --portal-token")
        if self.concurrency < 1:
            raise ValueError("--concurrency must be at least 1")
        for url in self.trackers:
            parse_tracker_url(url)
        if self.portal is not None:
            publish_url(self.portal)


async def open_storage_overlay(
    daemon_toml: Path, *, join_timeout: float = 60.0
) -> tuple[OverlayNode, str]:
    """Start the source's RELOAD node from its daemon configuration (a client when the file
    says ``client = true``, else a peer) and return it with the certificate's user name — the
    namespace USER-PREFIX-MATCH lets it write in (docs/usages.md). Raises
    :class:`DaemonConfigError` or :class:`ConnectionError`."""
    config = load_daemon_config(daemon_toml)
    user = security.user_name_from_certificate(security.load_certificate(config.certificate))
    if user is None:
        raise DaemonConfigError(f"{config.certificate} carries no user name (rfc822Name)")
    node = OverlayNode.from_config(config)
    try:
        await node.start(join_timeout=join_timeout)
    except TimeoutError:
        await node.abort()
        raise ConnectionError(f"could not join the overlay within {join_timeout:g} s") from None
    except BaseException:
        await node.abort()
        raise
    return node, user


class Source:
    """A running source: its PPSPP server, its overlay node, its tracker registrations.
    :meth:`close` leaves the trackers (LEAVE), stops serving and leaves the overlay."""

    def __init__(self, report: PublishReport) -> None:
        self.report = report
        self.server: SeederHandle | None = None
        self.node: OverlayNode | None = None
        self.own_node = False
        self.registrations: list[TrackerRegistration] = []
        self.meta: ContentMeta | None = None
        self.live: LiveStream | None = None
        self._refresh: asyncio.Task[None] | None = None
        #: Completed refreshes (Stores again before the values' lifetime ends).
        self.refreshes = 0

    def keep_stored(self, interval: float, store_again: Callable[[], Awaitable[None]]) -> None:
        """Every ``interval`` seconds, run ``store_again`` (RFC 6940 §7.4.1: a value lives
        until its lifetime ends, so a source that wants its content kept Stores it again).
        A failed refresh is retried after a quarter interval: one failure still leaves time
        before the values expire."""

        async def loop() -> None:
            delay = interval
            while True:  # until close() cancels it
                await asyncio.sleep(delay)
                try:
                    await store_again()
                except (PublishError, ReloadRequestError, OSError, ValueError) as exc:
                    log.warning("storing %s again failed: %s", self.report.channel, exc)
                    delay = interval / 4
                    continue
                self.refreshes += 1
                delay = interval
                log.info("stored %s again (refresh %d)", self.report.channel, self.refreshes)

        self._refresh = asyncio.ensure_future(loop())

    async def register(self, options: SourceOptions) -> None:
        """CONNECT at every tracker (RFC 7846 §4.1.1) as seeder, role SOURCE."""
        assert self.server is not None
        for url in options.trackers:
            registration = TrackerRegistration(
                url,
                self.report.swarm_id,
                [self.server.address],
                keepalive=options.tracker_keepalive,
            )
            self.registrations.append(registration)
            await registration.start()
            self.report.trackers.append(url)

    async def publish_to_portal(self, options: SourceOptions, channel: Channel) -> None:
        if options.portal is None:
            return
        assert options.portal_token is not None
        await publish_channel(options.portal, options.portal_token, channel)
        self.report.portal = options.portal

    async def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
            self._refresh = None
        for registration in self.registrations:
            try:
                await asyncio.wait_for(registration.close(), 5.0)
            except (TimeoutError, OSError) as exc:
                log.info("leaving tracker %s: %s", registration.url, exc)
        self.registrations.clear()
        if self.live is not None:
            self.live.close()
        elif self.server is not None:
            self.server.close()
        if self.server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 5.0)
        if self.node is not None and self.own_node:
            await self.node.close()
        self.node = None


def _channel(options: SourceOptions, meta: ContentMeta, user: str | None) -> Channel:
    """The portal's view of the channel (DESIGN.md §1 portal row)."""
    integrity = (meta.live_signing or "unified-merkle") if meta.live else "merkle"
    return Channel(
        name=meta.channel,
        live=meta.live,
        swarm_id=meta.swarm.hex(),
        trackers=list(options.trackers),
        chunk_size=meta.chunk_size,
        integrity=integrity,
        hash=meta.hash,
        bitrate=meta.bitrate,
        title=meta.title,
        length=meta.length,
        source_user=user or "",
        sources=[f"{'[' + h + ']' if ':' in h else h}:{p}" for h, p in meta.sources],
    )


def _content_store(
    node: OverlayNode, user: str, options: SourceOptions, *, live: bool
) -> ContentStore:
    lifetime = options.lifetime or (LIVE_LIFETIME if live else VOD_LIFETIME)
    return ContentStore(node, user, lifetime=lifetime, timeout=STORE_TIMEOUT)


async def publish_vod(
    path: Path,
    options: SourceOptions,
    *,
    node: OverlayNode | None = None,
    user: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_serving: Callable[[Source], None] | None = None,
    refresh: bool = True,
) -> Source:
    """Publish ``path`` as a VoD channel (flow F1) and keep serving it; returns the running
    :class:`Source` (``source.report`` has the figures). ``node``/``user`` give an overlay node
    already started; else ``options.overlay`` names the daemon TOML to start one from.

    Steps: hash the file into its Merkle tree (RFC 7574 §5.1; the root is the swarm ID), serve
    it over PPSPP, Store every segment then CONTENT-META in the storage overlay, CONNECT at
    the trackers as seeder, publish the channel to the portal. On any failure, what was
    started is stopped and the error propagates. ``on_serving`` is called once the swarm ID
    is known and PPSPP serves, before the Stores. With ``refresh`` (the default), the content
    is Stored again every half lifetime until :meth:`Source.close`."""
    options.check()
    storage = await asyncio.to_thread(
        SeedStorage.open, path, options.chunk_size, options.hash_function
    )
    tree = storage.tree
    report = PublishReport(options.name, tree.root_hash, live=False)
    source = Source(report)
    try:
        # serve_seed reuses the hash tree sidecar SeedStorage.open just wrote: no rehash.
        source.server = await serve_seed(
            path,
            listen=options.listen,
            hash_function=options.hash_function,
            chunk_size=options.chunk_size,
        )
        report.address = source.server.address
        if on_serving is not None:
            on_serving(source)  # the swarm ID and address are known: tell the user now
        if node is None and options.overlay is not None:
            node, user = await open_storage_overlay(
                options.overlay, join_timeout=options.join_timeout
            )
            source.own_node = True
        source.node = node
        meta = vod_meta(
            tree,
            options.name,
            user or "-",
            segment_chunks=options.segment_chunks,
            title=options.title,
            trackers=options.trackers,
            sources=[report.address],
        )
        source.meta = meta
        assert meta.segments is not None and meta.length is not None
        report.bytes, report.segments = meta.length, meta.segments
        if node is not None:
            assert user is not None
            report.user = user
            await _store_vod(node, user, options, meta, tree, storage, report, progress)
        await source.register(options)
        await source.publish_to_portal(options, _channel(options, meta, report.user))
        if node is not None and refresh:
            assert user is not None
            lifetime = options.lifetime or VOD_LIFETIME
            source.keep_stored(
                lifetime / 2, lambda: _store_vod_again(path, node, user, options, meta)
            )
    except BaseException:
        storage.close()
        await source.close()
        raise
    storage.close()
    return source


async def _store_vod_again(
    path: Path, node: OverlayNode, user: str, options: SourceOptions, meta: ContentMeta
) -> None:
    """Store every segment and the meta again, from the file (its tree from the sidecar)."""
    storage = await asyncio.to_thread(
        SeedStorage.open, path, options.chunk_size, options.hash_function
    )
    try:
        if storage.tree.root_hash != meta.swarm:
            raise PublishError(f"{path} changed since it was published: not storing it again")
        scratch = PublishReport(meta.channel, meta.swarm, live=False)
        await _store_vod(node, user, options, meta, storage.tree, storage, scratch, None)
    finally:
        storage.close()


async def _store_vod(
    node: OverlayNode,
    user: str,
    options: SourceOptions,
    meta: ContentMeta,
    tree: HashTree,
    storage: SeedStorage,
    report: PublishReport,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Every segment, then CONTENT-META (a barrier: stored once every segment is)."""
    assert meta.segments is not None
    store = _content_store(node, user, options, live=False)
    pipeline: StorePipeline[StoreKey] = StorePipeline(
        max_in_flight=options.concurrency, max_attempts=options.max_attempts
    )
    for index in range(meta.segments):
        first = index * meta.segment_chunks
        count = segment_chunk_count(meta, index)
        size = min((first + count) * meta.chunk_size, tree.content_length or 0) - (
            first * meta.chunk_size
        )
        pipeline.add(index, size)
    encoded_meta = len(meta.encode())
    pipeline.add(META, encoded_meta, barrier=True)
    pipeline.close()

    async def send(key: StoreKey) -> None:
        if key == META:
            await store.put_meta(meta)
            return
        assert isinstance(key, int)
        first = key * meta.segment_chunks
        count = segment_chunk_count(meta, key)
        data = b"".join(storage.read_chunk(c) for c in range(first, first + count))
        await store.put_segment(vod_segment(meta, tree, key, data))

    started = time.monotonic()
    await run_pipeline(pipeline, send, progress=progress)
    report.seconds = time.monotonic() - started
    report.stats = pipeline.stats


# -- live -----------------------------------------------------------------------------------


def generated_stream(chunk_size: int, seed: int = 0) -> Callable[[], bytes]:
    """A synthetic stream (no input given): every chunk starts with its number, then bytes
    from a seeded generator, so a viewer can check order and content."""
    rng = random.Random(seed)
    counter = 0

    def next_chunk() -> bytes:
        nonlocal counter
        head = counter.to_bytes(8, "big")
        counter += 1
        return (head + rng.randbytes(max(0, chunk_size - 8)))[:chunk_size]

    return next_chunk


#: A live input: a file object (read in a worker thread) or a stream reader on a pipe.
InputStream = BinaryIO | asyncio.StreamReader


async def _read_chunk(stream: InputStream, size: int) -> bytes:
    """The next chunk: ``size`` bytes, fewer only at the end of the input."""
    if isinstance(stream, asyncio.StreamReader):
        try:
            return await stream.readexactly(size)
        except asyncio.IncompleteReadError as exc:
            return exc.partial
    return await asyncio.to_thread(_read_full, stream, size)


async def _first(
    read: asyncio.Future[bytes], stop: asyncio.Event | None, duration: float | None, begin: float
) -> bool:
    """Wait for ``read``; False (and ``read`` cancelled) if ``stop`` is set or ``duration``
    runs out first — Ctrl-C must not wait for a silent input."""
    loop = asyncio.get_running_loop()
    waits: set[asyncio.Future[Any]] = {read}
    stopping = asyncio.ensure_future(stop.wait()) if stop is not None else None
    if stopping is not None:
        waits.add(stopping)
    timeout = None if duration is None else max(0.0, begin + duration - loop.time())
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if stopping is not None:
            stopping.cancel()
    if read.done():
        return True
    read.cancel()
    return False


def _read_full(stream: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes, fewer only at the end of the input (a pipe gives short reads)."""
    parts: list[bytes] = []
    got = 0
    while got < size:  # bounded: every pass reads ≥ 1 byte or ends
        part = stream.read(size - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


async def run_live(
    options: SourceOptions,
    *,
    input_stream: InputStream | None = None,
    pace: bool | None = None,
    duration: float | None = None,
    stop: asyncio.Event | None = None,
    node: OverlayNode | None = None,
    user: str | None = None,
    on_started: Callable[[Source], None] | None = None,
    signer: LiveSigner | None = None,
) -> PublishReport:
    """Run a live channel until the input ends, ``duration`` seconds pass or ``stop`` is set.

    Chunks are signed (Unified Merkle Tree, RFC 7574 §6.1.2) and served over PPSPP as they
    come; CONTENT-META is stored first, then each segment as soon as its munros are signed;
    the source registers at the trackers and publishes to the portal before the first chunk.
    Without ``input_stream`` a synthetic stream is generated at ``options.bitrate``. ``pace``
    (default: when there is a bitrate and the input is not a pipe) sends one chunk every
    chunk_size·8 / bitrate seconds; stdin is read as it comes."""
    options.check()
    bitrate = options.bitrate
    if input_stream is None and not bitrate:
        raise ValueError("a generated stream needs --bitrate")
    if options.segment_chunks % options.munro_chunks:
        raise ValueError("--segment-chunks must be a multiple of the munro size")
    if pace is None:
        pace = bitrate is not None and bitrate > 0
    stream = await LiveStream.start(
        options.listen,
        chunk_size=options.chunk_size,
        segment_chunks=options.segment_chunks,
        munro_chunks=options.munro_chunks,
        signer=signer,
    )
    report = PublishReport(options.name, stream.swarm_id, live=True, address=stream.handle.address)
    source = Source(report)
    source.server = stream.handle
    source.live = stream
    runner: asyncio.Task[None] | None = None
    try:
        if node is None and options.overlay is not None:
            node, user = await open_storage_overlay(
                options.overlay, join_timeout=options.join_timeout
            )
            source.own_node = True
        source.node = node
        meta = live_meta(
            stream.swarm_id,
            options.name,
            user or "-",
            chunk_size=options.chunk_size,
            segment_chunks=options.segment_chunks,
            munro_chunks=options.munro_chunks,
            bitrate=bitrate,
            title=options.title,
            trackers=options.trackers,
            sources=[stream.handle.address],
        )
        source.meta = meta
        values: dict[StoreKey, ContentSegment] = {}
        pipeline: StorePipeline[StoreKey] = StorePipeline(
            max_in_flight=options.concurrency,
            max_attempts=options.max_attempts,
            max_queued=LIVE_MAX_QUEUED,
            on_drop=lambda key: _forget(values, key),
        )
        wakeup = asyncio.Event()
        if node is not None:
            assert user is not None
            report.user = user
            store = _content_store(node, user, options, live=True)
            pipeline.add(META, len(meta.encode()), barrier=True)

            async def send(key: StoreKey) -> None:
                if key == META:
                    await store.put_meta(meta)
                    return
                await store.put_segment(values[key])
                values.pop(key, None)

            runner = asyncio.ensure_future(run_pipeline(pipeline, send, wakeup=wakeup))

            async def store_meta_again() -> None:
                await store.put_meta(meta)

            source.keep_stored((options.lifetime or LIVE_LIFETIME) / 2, store_meta_again)
        await source.register(options)
        await source.publish_to_portal(options, _channel(options, meta, report.user))
        if on_started is not None:
            on_started(source)
        started = time.monotonic()

        def queue(parts: list[SegmentParts]) -> None:
            for part in parts:
                segment = live_segment(meta, part.index, part.chunks, part.munros)
                report.segments += 1
                if runner is None:
                    continue
                values[part.index] = segment
                pipeline.add(part.index, part.size)
                wakeup.set()

        await _pump(stream, options, input_stream, pace, duration, stop, queue, runner)
        queue(stream.end(time.time()))
        report.bytes = stream.bytes
        pipeline.close()
        wakeup.set()
        # Stopped by a signal: the operator wants the process gone, so the last Stores get a
        # short grace and viewers are not waited for; at the end of the input they are.
        stopped = stop is not None and stop.is_set()
        if runner is not None:
            # The last Stores: bounded by the pipeline's attempts, and by this wait.
            if not stopped:
                await asyncio.wait_for(asyncio.shield(runner), STORE_TIMEOUT * options.max_attempts)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(runner), STOP_GRACE)
                if not runner.done():
                    log.info("stopping: the last live segments were not all stored")
        report.seconds = time.monotonic() - started
        report.stats = pipeline.stats
        if not stopped:
            await stream.drain(LIVE_DRAIN)
        return report
    finally:
        if runner is not None and not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, PublishError):
                await runner
        await source.close()


def _forget(values: dict[StoreKey, ContentSegment], key: StoreKey) -> None:
    values.pop(key, None)


async def _pump(
    stream: LiveStream,
    options: SourceOptions,
    input_stream: InputStream | None,
    pace: bool,
    duration: float | None,
    stop: asyncio.Event | None,
    queue: Callable[[list[SegmentParts]], None],
    runner: asyncio.Task[None] | None,
) -> None:
    """Read (or generate) chunks and feed them to the live source until the input ends,
    ``duration`` passes or ``stop`` is set; a failed Store pipeline ends the stream too."""
    loop = asyncio.get_running_loop()
    generate = generated_stream(options.chunk_size) if input_stream is None else None
    interval = 0.0
    if pace and options.bitrate:
        interval = options.chunk_size * 8 / (options.bitrate * 1000)
    begin = loop.time()
    next_at = begin
    while True:  # until end of input, duration, stop or a failed pipeline
        if stop is not None and stop.is_set():
            return
        if duration is not None and loop.time() - begin >= duration:
            return
        if runner is not None and runner.done():
            runner.result()  # raises PublishError; a finished runner is a bug here
            raise PublishError("the store pipeline ended before the stream")
        if interval:
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:
                next_at = loop.time()  # fell behind by over a second: do not burst
            next_at += interval
        if generate is not None:
            data = generate()
        else:
            assert input_stream is not None
            read = asyncio.ensure_future(_read_chunk(input_stream, options.chunk_size))
            if not await _first(read, stop, duration, begin):
                return  # stopped (or out of time) while waiting for input
            data = read.result()
        if data:
            queue(stream.add_chunk(data, time.time()))
        if generate is None and len(data) < options.chunk_size:
            return  # end of input
