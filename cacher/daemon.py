"""The cacher daemon: asyncio wiring of the cache, the tracker session, the storage overlay and
the PPSPP endpoint (DESIGN §1 cacher; flows F2–F5; DESIGN §3: a thin adapter, the decisions
are in :mod:`cacher.core`, :mod:`cacher.policy` and :mod:`cacher.cache`).

- **Tracker (F2, F4, F5).** One binary PPSP-TP client (UDP or TCP: the tracker speaks first
  to send push hints and global info, DESIGN §4). :class:`cacher.core.TrackerSession` says
  when to send the batch report (on every (re)connect), incremental reports and keep-alives.
- **Storage overlay (F3).** A RELOAD node started from its daemon TOML; segments are fetched
  with :class:`cacher.content.OverlaySegments` (verified, replicas retried).
- **CSCs (F3, F4).** One UDP socket and one sans-IO PPSPP endpoint; datagrams pass through
  :class:`cacher.content.RequestGate`, which holds back REQUESTs for chunks not yet cached
  until their segments are filled. Each served swarm pushes its cached head right after the
  handshake (``Swarm.push_head``, docs/cacher.md "Push").
- **Push hints (F4).** VoD: the hinted swarm's channel metadata is looked up (known channels,
  then the portal's ``GET /api/v1/channels`` for the swarm ID → source user and channel, then
  CONTENT-META from the overlay, checked against the swarm ID) and the head segments are
  prefetched. Live: the cacher joins the live swarm as a PPSPP leecher of the channel's
  sources, relays it to CSCs and caches the verified chunks at the live edge.
- **State on disk.** ``cache_dir/chunks`` (the ChunkCache), ``cache_dir/meta`` (the CONTENT-META
  of each served swarm, CBOR), ``cache_dir/peer-id`` (the PPSP-TP peer ID, kept so that a
  restarted cacher's batch report replaces its old registration at the tracker).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp

from cacher.cache import CacheError, ChunkCache
from cacher.config import CacherConfig
from cacher.content import (
    Held,
    OverlaySegments,
    RequestGate,
    SegmentSource,
    VodServing,
    handshake_swarm,
)
from cacher.core import TrackerAction, TrackerSession, describe_holdings, plan_prefetch
from cacher.policy import CachePolicy
from ppsp.linkemu import wrap_datagram
from ppsp.peer.aio import SOCKET_BUFFER, PeerNode
from ppsp.peer.content import LiveContent, SwarmParameters
from ppsp.peer.endpoint import Swarm
from ppsp.peer.messages import ChunkAddressing, IntegrityMethod, MerkleHashFunction
from ppsp.peer.picker import PickPolicy
from ppsp.tracker.client import (
    PushMessage,
    TrackerClient,
    TrackerClientError,
    TrackerRequestError,
    open_client,
)
from ppsp.tracker.messages import (
    Action,
    ErrorCode,
    GlobalInfoMessage,
    PeerAddress,
    PeerMode,
    PeerNum,
    PushHintMessage,
    ResponseType,
    Role,
    SwarmAction,
    SwarmAvailability,
    swarm_id_hex,
)
from reload.usages.values import ContentMeta, UsageDecodeError

__all__ = ["Cacher"]

log = logging.getLogger("cacher")

Address = tuple[str, int]
#: REQUEST datagrams held back at once; beyond, a REQUEST is dropped (the leecher asks again).
MAX_HELD = 512
#: Seconds between commits of the cache index while chunks arrive (crash consistency).
COMMIT_INTERVAL = 1.0
#: The stats snapshot in the cache directory (:meth:`Cacher._write_stats`).
STATS_FILE = "stats.json"
#: Bound on a portal answer and on each portal request.
MAX_PORTAL_BODY = 4 * 1024 * 1024
PORTAL_TIMEOUT = 5.0
#: Portal lookups at once (push hints name swarms; a hostile tracker could name many), and
#: seconds before the same swarm is looked up again.
MAX_LOOKUPS = 4
PORTAL_HOLDOFF = 10.0
#: Chunks of a live swarm kept (and announced) behind the live edge (RFC 7574 §6.2).
LIVE_WINDOW = 4096
#: Peers (other than the sources) a cacher follows a live channel from.
LIVE_PEERS = 4


#: Entries of one push-hint or global-info message that are looked at.
MAX_PUSH_ENTRIES = 256


def _is_swarm_hex(text: str) -> bool:
    """A PPSP-TP swarm ID as we write them: lowercase hex of 1 to 256 bytes."""
    if not 2 <= len(text) <= 512 or len(text) % 2:
        return False
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


class _GateProtocol(asyncio.DatagramProtocol):
    def __init__(self, cacher: Cacher) -> None:
        self.cacher = cacher

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            self.cacher._on_datagram(bytes(data), (str(addr[0]), int(addr[1])))
        except Exception:  # a bug must not take the daemon down; the datagram is dropped
            log.exception("error handling a datagram from %s", addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("PPSPP socket error: %s", exc)


class _CacherNode(PeerNode):
    """A :class:`PeerNode` whose datagrams pass through the cacher's request gate."""

    def __init__(self, cacher: Cacher) -> None:
        super().__init__()
        self.cacher = cacher

    async def start(self, listen: Address) -> Address:
        family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)  # *BUFFORCE, as root
            with contextlib.suppress(OSError):
                if sock.getsockopt(socket.SOL_SOCKET, opt) < SOCKET_BUFFER:
                    sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        try:
            sock.bind(listen)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        transport, _ = await self.loop.create_datagram_endpoint(
            lambda: _GateProtocol(self.cacher), sock=sock
        )
        self.transport = wrap_datagram(transport)  # link emulation when configured
        bound = sock.getsockname()
        return (str(bound[0]), int(bound[1]))


class _CachingLiveContent(LiveContent):
    """A live swarm the cacher follows (DESIGN F4): verified chunks are also cached with their
    signed munro and uncles (RFC 7574 §6.1.2), so that a restart comes back with the edge."""

    def __init__(self, params: SwarmParameters, cacher: Cacher, chunks_per_signature: int) -> None:
        super().__init__(params, chunks_per_signature, LIVE_WINDOW)
        self.cacher = cacher
        self.cached = cacher.cache.open_live(params, chunks_per_signature, LIVE_WINDOW)

    def verify_and_store(self, chunk: int, data: bytes | memoryview) -> bool | None:
        fresh = chunk not in self.have
        ok = super().verify_and_store(chunk, data)
        if ok is True and fresh and self.unified is not None:
            munro = self.unified.munro_for(chunk)
            if munro is not None:
                try:
                    uncles = self.unified.integrity_for(chunk)[2]
                    self.cached.store_live(chunk, data, munro, uncles, self.cacher.clock())
                    self.cacher._cache_changed()
                except (LookupError, CacheError) as exc:
                    log.debug("live chunk %d not cached: %s", chunk, exc)
        return ok


class Cacher:
    """The daemon; ``await start()``, then ``await close()`` (or ``abort()`` to simulate a
    crash in tests). ``segment_source`` and ``meta_store`` replace the storage overlay node
    (tests); by default it is started from ``config.storage_overlay``."""

    def __init__(
        self,
        config: CacherConfig,
        *,
        segment_source: SegmentSource | None = None,
        meta_store: OverlaySegments | None = None,
    ) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.source: SegmentSource | None = segment_source
        self.store: OverlaySegments | None = meta_store
        if self.source is None and meta_store is not None:
            self.source = meta_store
        self._overlay: Any = None  # reload.aio.OverlayNode when we started one
        self.peer_id = ""
        self.cache: ChunkCache
        self.policy = CachePolicy(config.cache_size, head_chunks=max(1, config.push_head))
        self.session = TrackerSession(
            keepalive=config.keepalive, report_delay=config.report_delay, now=self.clock()
        )
        self.node = _CacherNode(self)
        self.address: Address = config.listen
        self.metas: dict[bytes, ContentMeta] = {}
        #: VoD swarms of the configured ``channels`` of a plain cache (follow_hints = false):
        #: carried whole (pull-through), announced at the tracker before a chunk is cached.
        self.carried: set[bytes] = set()
        self.servings: dict[bytes, VodServing] = {}
        self.live: dict[bytes, _CachingLiveContent] = {}
        self.gate = RequestGate(self.node.endpoint, self.servings)
        self.tracker: TrackerClient | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._held = 0
        self._lookups = 0
        self._asked_portal: dict[bytes, float] = {}
        self._wake_tracker = asyncio.Event()
        self._wake_prefetch = asyncio.Event()
        self._dirty = False
        self._closing = False
        self.restored: dict[bytes, int] = {}
        #: Counters for logs and tests.
        self.stats: dict[str, int] = {
            "held_requests": 0,
            "dropped_requests": 0,
            "push_hints": 0,
            "global_info": 0,
            "batch_reports": 0,
            "delta_reports": 0,
        }

    def clock(self) -> float:
        return self.loop.time()

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        config = self.config
        directory = config.cache_dir
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        self.peer_id = config.peer_id or self._load_peer_id(directory / "peer-id")
        self.cache = await asyncio.to_thread(
            ChunkCache,
            directory / "chunks",
            config.cache_size,
            policy=self.policy,
            durable=config.fsync,
            now=self.clock(),
        )
        holdings = self.cache.holdings()
        self.restored = {sid: have.count for sid, have in holdings.items()}
        log.info("cacher %s: cache holds %s", self.peer_id, describe_holdings(holdings))
        if self.source is None and config.storage_overlay is not None:
            await self._start_overlay(config.storage_overlay)
        self._load_metas(directory / "meta")
        for sid, cached in list(self.cache.swarms.items()):
            meta = self.metas.get(sid)
            if cached.is_live:
                # The live edge moved on while we were down, and a live swarm is relayed from
                # memory: its old chunks are of no use to a viewer tuning in (RFC 7574 §6.2).
                # It is followed again when the tracker hints it.
                log.info("live swarm %s: stale after the restart, dropped", sid.hex()[:16])
                self.cache.drop_swarm(sid)
            elif meta is None:
                log.warning("cached swarm %s has no metadata: dropped", sid.hex())
                self.cache.drop_swarm(sid)
            else:
                self._serve(meta)
        self.cache.pop_changes()  # the batch report carries the state we came back with
        self.address = await self.node.start(config.listen)
        log.info("cacher %s serving PPSPP on %s:%d", self.peer_id, *self.address)
        self.tracker = open_client(config.tracker, self.peer_id, on_push=self._on_push)
        self._spawn(self._tracker_loop())
        self._spawn(self._prefetch_loop())
        self._spawn(self._commit_loop())
        for channel in config.channels:
            user, _, name = channel.partition("/")
            # A plain cache announces its channels as carried whole; one that follows hints
            # does not: the tracker would take it for holding every chunk and not hint it.
            carry = not config.follow_hints
            self._spawn(self._resolve_channel(user, name, carry=carry))

    async def _start_overlay(self, path: Path) -> None:
        from reload.aio import OverlayNode, load_daemon_config  # RELOAD only when configured

        node = OverlayNode.from_config(load_daemon_config(path))
        await node.start(join_timeout=30.0)
        self._overlay = node
        self.store = OverlaySegments(node, "cacher", timeout=10.0)
        self.source = self.store
        log.info("joined the storage overlay from %s", path)

    async def close(self) -> None:
        """Clean shutdown: LEAVE the tracker (best effort), commit the cache, close."""
        if self._closing:
            return
        self._closing = True
        await self._stop_tasks()
        if not hasattr(self, "cache"):  # start() failed before the cache opened
            self.node.close()
            return
        if self.tracker is not None:
            held = [swarm_id_hex(sid) for sid in self.cache.holdings()]
            if held and self.session.connected:
                with contextlib.suppress(TrackerClientError, OSError, TimeoutError):
                    async with asyncio.timeout(2.0):
                        await self.tracker.connect(
                            [SwarmAction(s, Action.LEAVE, PeerMode.SEEDER) for s in held]
                        )
            await self.tracker.close()
        self.node.close()
        self.cache.close()
        if self._overlay is not None:
            await self._overlay.close()
        log.info("cacher %s stopped", self.peer_id)

    async def abort(self) -> None:
        """Stop like a crash would (tests): no LEAVE, no commit of the cache."""
        self._closing = True
        await self._stop_tasks()
        if self.tracker is not None:
            await self.tracker.close()
        self.node.close()
        if not hasattr(self, "cache"):
            return
        for cached in self.cache.swarms.values():
            cached.close()  # the files only: what was not committed stays uncommitted
        self.cache.swarms.clear()
        if self._overlay is not None:
            await self._overlay.abort()

    async def _stop_tasks(self) -> None:
        for serving in self.servings.values():
            serving.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("cacher task failed", exc_info=task.exception())

    @staticmethod
    def _load_peer_id(path: Path) -> str:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            text = path.read_text().strip()
            if 0 < len(text) <= 128:
                return text
        peer_id = f"cacher-{secrets.token_hex(8)}"
        path.write_text(peer_id + "\n")
        return peer_id

    # -- metadata ---------------------------------------------------------------------------

    def _load_metas(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for path in sorted(directory.glob("*.cbor")):
            try:
                meta = ContentMeta.decode(path.read_bytes())
            except (OSError, UsageDecodeError, ValueError) as exc:
                log.warning("metadata file %s unusable (%s): removed", path, exc)
                path.unlink(missing_ok=True)
                continue
            if path.stem != meta.swarm.hex() or not self._trusted(meta):
                log.warning("metadata file %s is not a trusted channel's: removed", path)
                path.unlink(missing_ok=True)
                continue
            self.metas[meta.swarm] = meta

    def _trusted(self, meta: ContentMeta) -> bool:
        return not self.config.sources or meta.source in self.config.sources

    def learn_meta(self, meta: ContentMeta) -> None:
        """A channel's metadata (from the overlay: signed by its source, USER-PREFIX-MATCH)."""
        if not self._trusted(meta):
            log.warning("channel %s/%s: source not trusted, ignored", meta.source, meta.channel)
            return
        if meta.swarm in self.metas:
            return
        self.metas[meta.swarm] = meta
        path = self.config.cache_dir / "meta" / f"{meta.swarm.hex()}.cbor"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(meta.encode())
        tmp.replace(path)
        log.info(
            "channel %s/%s (%s, swarm %s)",
            meta.source,
            meta.channel,
            "live" if meta.live else f"VoD, {meta.chunks} chunks",
            meta.swarm.hex()[:16],
        )
        if not meta.live:
            self._serve(meta)  # pull-through from now on (F3); live is followed when hot (F4)
        self._wake_prefetch.set()

    async def _resolve_channel(
        self, user: str, channel: str, swarm: bytes | None = None, *, carry: bool = False
    ) -> None:
        """Learn a channel's metadata from the storage overlay (retrying while the overlay
        joins); with ``carry`` (a configured channel), announce it at the tracker."""
        if self.store is None:
            log.warning("no storage overlay: channel %s/%s cannot be resolved", user, channel)
            return
        delay = 0.5
        for _attempt in range(8):  # bounded: about a minute with backoff
            try:
                meta = await self.store.get_meta(user, channel, swarm=swarm)
            except Exception as exc:  # the overlay may still be joining; hostile values too
                log.info("metadata of %s/%s not available yet: %s", user, channel, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self.learn_meta(meta)
            if carry and not meta.live and meta.swarm in self.metas:
                self.carried.add(meta.swarm)
                self.session.reconnect()  # a fresh batch report names it
                self._wake_tracker.set()
            return

    async def _portal_lookup(self, swarm_id: bytes) -> None:
        """Swarm ID → (source user, channel) from the portal, then the meta from the overlay."""
        portal = self.config.portal
        if portal is None:
            return
        self._lookups += 1
        try:
            await self._portal_lookup_once(portal, swarm_id)
        finally:
            self._lookups -= 1

    async def _portal_lookup_once(self, portal: str, swarm_id: bytes) -> None:
        url = portal.rstrip("/") + "/api/v1/channels"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PORTAL_TIMEOUT)) as http,
                http.get(url) as reply,
            ):
                body = await reply.content.read(MAX_PORTAL_BODY + 1)
                if reply.status != 200 or len(body) > MAX_PORTAL_BODY:
                    raise ValueError(f"HTTP {reply.status}")
            channels = json.loads(body).get("channels", [])
        except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError, OSError) as exc:
            log.info("portal %s: %s", url, exc)
            return
        wanted = swarm_id.hex()
        for ch in channels if isinstance(channels, list) else []:
            if not isinstance(ch, dict) or str(ch.get("swarm_id", "")).lower() != wanted:
                continue
            user, name = ch.get("source_user"), ch.get("name")
            if isinstance(user, str) and isinstance(name, str) and user and name:
                await self._resolve_channel(user, name, swarm=swarm_id)
                return
        log.info("portal lists no channel for swarm %s", wanted[:16])

    # -- serving ----------------------------------------------------------------------------

    def _serve(self, meta: ContentMeta) -> VodServing | None:
        """Serve VoD channel ``meta`` to CSCs (idempotent)."""
        serving = self.servings.get(meta.swarm)
        if serving is not None:
            return serving
        if self.source is None:
            return None
        try:
            serving = VodServing(meta, self.cache, self.source, clock=self.clock)
        except (ValueError, CacheError) as exc:
            log.warning("channel %s/%s cannot be served: %s", meta.source, meta.channel, exc)
            return None
        self.servings[meta.swarm] = serving
        swarm = self.node.endpoint.add_swarm(serving.params, serving.content)
        swarm.push_head = serving.head_held(self.config.push_head)
        serving.on_filled.append(lambda _index, _ok: self._filled(serving, swarm))
        return serving

    def _filled(self, serving: VodServing, swarm: Swarm) -> None:
        # Only cached chunks are pushed after the handshake (DESIGN F4): the pushed head grows
        # as the head segments arrive.
        swarm.push_head = serving.head_held(self.config.push_head)
        self._cache_changed()
        # Commit per segment, not per COMMIT_INTERVAL: the index (and the hash tree the chunks
        # verify against) must be on disk before a crash can lose them (cacher/cache.py).
        self._commit()

    def _commit(self) -> None:
        self._dirty = False
        started = time.monotonic()
        try:
            self.cache.commit()
        except OSError as exc:
            log.error("cache commit failed: %s", exc)
        log.debug("cache committed in %.1f ms", (time.monotonic() - started) * 1000)

    def _cache_changed(self) -> None:
        self._dirty = True
        self.session.on_changes(self.clock())
        self._wake_tracker.set()

    def _on_datagram(self, data: bytes, addr: Address) -> None:
        node = self.node
        if data[:4] == b"\0\0\0\0":
            swarm_id = handshake_swarm(data)
            if swarm_id is not None and swarm_id not in node.endpoint.swarms:
                # A CSC asks for a channel we do not serve (yet): dropped without an answer
                # (RFC 7574 §3.1), but looked up, so that its handshake retransmission finds
                # the swarm served from the overlay (pull-through, F3).
                self._want(swarm_id)
        now_data, held = self.gate.inspect(data, addr)
        if now_data is not None:
            node.endpoint.receive(now_data, addr, self.clock())
        if held is not None:
            if self._held >= MAX_HELD:
                self.stats["dropped_requests"] += 1
            else:
                self._held += 1
                self.stats["held_requests"] += 1
                self._spawn(self._release(held, addr))
        node.kick()

    def _want(self, swarm_id: bytes) -> None:
        """Serve (VoD) or follow (live) ``swarm_id`` once its metadata is known; look it up at
        the portal if need be, at most once per PORTAL_HOLDOFF per swarm."""
        meta = self.metas.get(swarm_id)
        if meta is not None:
            if meta.live:
                self._follow_live(meta)
            else:
                self._serve(meta)
            return
        now = self.clock()
        if now - self._asked_portal.get(swarm_id, -1e9) <= PORTAL_HOLDOFF:
            return
        if self._lookups >= MAX_LOOKUPS or self.config.portal is None:
            return
        if len(self._asked_portal) >= 4096:  # bounded against handshakes for random swarms
            self._asked_portal.clear()
        self._asked_portal[swarm_id] = now
        self._spawn(self._portal_lookup(swarm_id))

    async def _release(self, held: Held, addr: Address) -> None:
        try:
            serving = held.serving
            self.policy.record_miss(serving.swarm_id, self.clock())
            needed = serving.plan(held.requests, 0)
            ahead = [
                i for i in serving.plan(held.requests, self.config.readahead) if i not in needed
            ]
            if ahead:  # fetched alongside, but the REQUEST does not wait for it
                self._spawn(serving.fill(ahead))
            await serving.fill(needed)
            data = self.gate.release(held)
            if data is not None and self.node.transport is not None:
                self.node.endpoint.receive(data, addr, self.clock())
                self.node.kick()
        finally:
            self._held -= 1

    def _follow_live(self, meta: ContentMeta) -> None:
        """Join live channel ``meta`` as a leecher of its sources (DESIGN F4: follow the live
        edge), relaying it to CSCs and caching what verifies."""
        if not meta.sources:
            return
        if meta.swarm in self.live:
            # Hinted again: make sure we still follow someone (a source that went away
            # closed its channel, RFC 7574 §8.4); join again through the listed sources.
            swarm = self.node.endpoint.swarms.get(meta.swarm)
            sources = {(host, port) for host, port in meta.sources}
            upstream = [ch for ch in swarm.channels if ch.addr in sources] if swarm else []
            if swarm is not None and not any(ch.is_open for ch in upstream):
                now = self.clock()
                for host, port in meta.sources:
                    self.node.endpoint.connect(meta.swarm, (host, port), now)
                self.node.kick()
            return
        if meta.live_signing != "unified-merkle" or meta.munro_chunks is None:
            log.info("live channel %s: only Unified Merkle streams are cached", meta.channel)
            return
        params = SwarmParameters(
            swarm_id=meta.swarm,
            integrity_method=IntegrityMethod.UNIFIED_MERKLE,
            hash_function=MerkleHashFunction[meta.hash.upper()],
            chunk_addressing=ChunkAddressing(meta.cam),
            chunk_size=meta.chunk_size,
            live_signature_algorithm=meta.swarm[0],
            live_discard_window=LIVE_WINDOW,
        )
        try:
            content = _CachingLiveContent(params, self, meta.munro_chunks)
        except (ValueError, CacheError) as exc:
            log.warning("live channel %s cannot be followed: %s", meta.channel, exc)
            return
        self.live[meta.swarm] = content
        swarm = self.node.endpoint.add_swarm(params, content, PickPolicy.IN_ORDER)
        swarm.push_head = self.config.push_head  # the newest chunks, with their signed munro
        now = self.clock()
        for host, port in meta.sources:
            self.node.endpoint.connect(meta.swarm, (host, port), now)
        self.node.kick()
        log.info("following live channel %s/%s at %s", meta.source, meta.channel, meta.sources)
        self._spawn(self._live_peers(meta))

    async def _live_peers(self, meta: ContentMeta) -> None:
        """Follow the live edge from peers too (RFC 7846 FIND in our area): the source is one
        upstream among others, and a cacher should not be the reason it saturates."""
        tracker = self.tracker
        if tracker is None:
            return
        try:
            async with asyncio.timeout(5.0):
                found = await tracker.find(
                    swarm_id_hex(meta.swarm), area=self.config.area, peer_num=PeerNum(LIVE_PEERS)
                )
        except (TrackerClientError, OSError, TimeoutError) as exc:
            log.info("no peers for live channel %s: %s", meta.channel, exc)
            return
        swarm = self.node.endpoint.swarms.get(meta.swarm)
        if swarm is None:
            return
        known = {ch.addr for ch in swarm.channels}
        now = self.clock()
        for result in found.swarm_results:
            for peer in (result.peers or [])[:LIVE_PEERS]:
                if peer.peer_id == self.peer_id or peer.role is Role.CSC:
                    continue  # viewers are downstream of us, not upstream
                for address in peer.addresses[:1]:
                    addr = (address.ip, address.port)
                    if addr not in known and addr != self.address:
                        known.add(addr)
                        self.node.endpoint.connect(meta.swarm, addr, now)
        self.node.kick()

    # -- tracker ----------------------------------------------------------------------------

    def _on_push(self, message: PushMessage) -> None:
        now = self.clock()
        if isinstance(message, PushHintMessage):
            self.stats["push_hints"] += 1
            # Only what can name a swarm (hex of a root hash or a live key) and a sane head;
            # a hostile or broken tracker must not fill the policy's tables.
            hints = [
                h
                for h in message.hints[:MAX_PUSH_ENTRIES]
                if _is_swarm_hex(h.swarm_id) and 0 <= h.head_start <= h.head_end
            ]
            if not hints:
                return
            if not self.config.follow_hints:
                # A plain cache (follow_hints = false): what the tracker hints is not
                # prefetched; misses still fill from the storage overlay.
                log.debug("push hints ignored (follow_hints = false)")
                return
            self.policy.on_push_hints(hints, now)
            log.info(
                "push hints: %s",
                ", ".join(f"{h.swarm_id[:12]} {h.head_start}-{h.head_end}" for h in hints),
            )
            self._wake_prefetch.set()
        elif isinstance(message, GlobalInfoMessage):
            self.stats["global_info"] += 1
            swarms = [p for p in message.swarms[:MAX_PUSH_ENTRIES] if _is_swarm_hex(p.swarm_id)]
            self.policy.on_global_info(swarms, now)

    async def _tracker_loop(self) -> None:
        session = self.session
        while True:
            now = self.clock()
            action = session.due(now)
            if action is None:
                self._wake_tracker.clear()
                timeout = max(0.01, session.next_deadline() - now)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake_tracker.wait(), timeout)
                continue
            session.begin(action)
            try:
                await self._tracker_send(action)
            except TrackerRequestError as exc:
                if exc.code in (ErrorCode.FORBIDDEN_ACTION, ErrorCode.AUTHENTICATION_REQUIRED):
                    # The tracker does not know us (it restarted, or our registration timed
                    # out, RFC 7846 §2.3.2): register again with the batch report.
                    log.info("tracker forgot us (%s): registering again", exc)
                    if action is TrackerAction.BATCH:
                        session.failed(self.clock())
                    else:
                        session.reconnect()
                else:
                    log.warning("tracker: %s", exc)
                    session.failed(self.clock())
            except (TrackerClientError, OSError, TimeoutError) as exc:
                log.warning("tracker unreachable (%s); retrying", exc)
                session.failed(self.clock())
            else:
                session.sent(action, self.clock())

    def _addresses(self) -> list[PeerAddress]:
        host, port = self.address
        if host in ("0.0.0.0", "::"):
            return []  # the tracker takes the address the request came from (§3.2 REFLEXIVE)
        return [PeerAddress(host, port, peer_protocol="PPSP-PP")]

    async def _tracker_send(self, action: TrackerAction) -> None:
        tracker = self.tracker
        assert tracker is not None
        if action is TrackerAction.BATCH:
            self.cache.pop_changes()  # the snapshot below carries them
            availability = self.cache.availability()
            # A carried channel nothing of which is cached yet: a SEEDER entry without
            # ranges, i.e. "not enumerated, holds it all" (as a plain RFC 7846 seeder): true
            # of a pull-through cache. The first incremental report starts exact tracking.
            held = {a.swarm_id for a in availability}
            availability += [
                SwarmAvailability(swarm_id_hex(sid), PeerMode.SEEDER, Role.CACHER, [])
                for sid in sorted(self.carried)
                if swarm_id_hex(sid) not in held
            ]
            profile: dict[str, Any] = {
                "peer_addresses": self._addresses(),
                "role": Role.CACHER,
                "area": self.config.area,
            }
            try:
                response = await tracker.connect(availability=availability, **profile)
                refused = any(r.result == ResponseType.FAILED for r in response.swarm_results)
            except TrackerRequestError as exc:
                if exc.code != ErrorCode.FORBIDDEN_ACTION or not availability:
                    raise
                refused = True
            if refused:
                # Still TRACKING at the tracker (a restart within its track timer): RFC 7846
                # Table 6 has no SEEDER JOIN while TRACKING, so the entries were refused. A
                # CONNECT without entries updates our address, area and role (a keep-alive
                # for the state machine), and the snapshot goes as a STAT_REPORT, which
                # replaces what the tracker knows.
                await tracker.connect(**profile)
                await tracker.stat_report(availability=availability)
            # Moves a registration without swarms to TRACKING (§2.3.1 2b); brings global info.
            await tracker.stat_query()
            self.stats["batch_reports"] += 1
            chunks = sum(sum(e - s + 1 for s, e in a.ranges) for a in availability)
            log.info(
                "batch availability report to %s: %d swarm(s), %d chunks",
                self.config.tracker,
                len(availability),
                chunks,
            )
        elif action is TrackerAction.DELTA:
            deltas = [change.to_delta() for change in self.cache.pop_changes()]
            if deltas:
                await tracker.stat_report(deltas=deltas)
                self.stats["delta_reports"] += 1
                log.debug("incremental report: %s", deltas)
            else:
                await tracker.stat_report()
        else:
            await tracker.stat_report()

    # -- prefetch (F4) and housekeeping -------------------------------------------------

    async def _prefetch_loop(self) -> None:
        while True:
            await self._wake_prefetch.wait()
            self._wake_prefetch.clear()
            now = self.clock()
            plan = self.policy.prefetch_plan(self.cache.holdings(), now)
            for item in plan:
                self._want(item.swarm_id)
            geometries = {sid: s.geometry for sid, s in self.servings.items()}
            peaks = {sid: s.peaks_known() for sid, s in self.servings.items()}
            holdings = {sid: s.held() for sid, s in self.servings.items()}
            work = plan_prefetch(plan, geometries, holdings, peaks)
            if work:
                log.info("prefetching %d segment(s) on push hints", len(work))
            for sid, index in work:
                serving = self.servings.get(sid)
                if serving is not None:
                    await serving.fill([index])

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(COMMIT_INTERVAL)
            if self._dirty:
                self._commit()
            self._write_stats()

    def snapshot(self) -> dict[str, Any]:
        """Counters, per-swarm fills and the policy's heat, JSON-ready (read-only)."""
        now = self.clock()
        held = self.cache.holdings()
        return {
            "peer_id": self.peer_id,
            "stats": dict(self.stats),
            "swarms": {
                sid.hex(): {
                    "held": held[sid].count if sid in held else 0,
                    "segments_filled": serving.segments_filled,
                    "segments_failed": serving.segments_failed,
                }
                for sid, serving in self.servings.items()
            },
            "heat": {
                sid.hex(): {"viewers": h.viewers, "join_rate": h.join_rate}
                for sid, h in self.policy.heat.items()
            },
            "heat_now": {sid.hex(): self.policy.heat_of(sid, now) for sid in self.policy.heat},
        }

    def _write_stats(self) -> None:
        """STATS_FILE in the cache directory, replaced every COMMIT_INTERVAL: what the cacher
        did (fills from the storage overlay, reports, hints, global info), for operators and
        end-to-end tests; nothing reads it back."""
        path = self.config.cache_dir / STATS_FILE
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.snapshot(), sort_keys=True))
            tmp.replace(path)
        except OSError as exc:
            log.debug("cannot write %s: %s", path, exc)
