"""The content sharing client's asyncio wiring (DESIGN §3: a thin adapter around
:class:`csc.core.CscCore`).

:class:`CscClient` owns the sockets and the clock:

- the portal (aiohttp): the channel descriptions (``GET /api/v1/channels[/NAME]``) and the
  viewer heartbeats (``POST /api/v1/channels/NAME/viewers``, docs/portal.md);
- the trackers (:mod:`ppsp.tracker.client`): CONNECT as a leecher with role CSC and the area,
  so that other CSCs find it (RFC 7846 §4.1.1), FIND with the area as locality hint
  (§4.1.2), a STAT_REPORT keep-alive (§4.1.3);
- one PPSPP :class:`~ppsp.peer.aio.PeerNode` (one UDP socket, RFC 7574 §3.11) for every
  channel visited: keeping the socket across channel changes is what lets a cacher push the
  head of the next channel with its handshake reply (docs/cacher.md "Early push");
- optionally a RELOAD client node of the storage overlay, for the rescue
  (:class:`reload.usages.client.ContentStore`: segments verified against the swarm).

Only chunks that PPSPP verified (:class:`_ViewerSwarm` reports them) or that came in a
verified storage overlay segment reach the core and so the playback model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import urllib.parse
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp

from csc.config import CscConfig
from csc.core import (
    Action,
    ChannelError,
    ChannelInfo,
    ConnectPeer,
    CscCore,
    DropPeer,
    FindPeers,
    Origin,
    PeerCandidate,
    StartRescue,
)
from ppsp.peer.aio import PeerNode
from ppsp.peer.channel import Channel
from ppsp.peer.content import (
    DEFAULT_CHUNKS_PER_SIGNATURE,
    DEFAULT_LIVE_WINDOW,
    LiveContent,
    MemoryChunkStore,
    StaticContent,
    SwarmContent,
    SwarmParameters,
)
from ppsp.peer.endpoint import (
    ChannelClosed,
    ChannelEstablished,
    DownloadComplete,
    Endpoint,
    Event,
    IntegrityFailed,
    Swarm,
)
from ppsp.peer.merkle import HashTree
from ppsp.peer.messages import IntegrityMethod, LiveSignatureAlgorithm, MerkleHashFunction
from ppsp.peer.picker import PickPolicy
from ppsp.tracker.client import (
    TrackerClient,
    TrackerClientError,
    TrackerRequestError,
    open_client,
)
from ppsp.tracker.messages import (
    Action as SwarmActionType,
)
from ppsp.tracker.messages import (
    PeerAddress,
    PeerMode,
    PeerNum,
    Response,
    Role,
    StreamStats,
    SwarmAction,
)

log = logging.getLogger("csc")

Address = tuple[str, int]

#: Portal requests: a small JSON answer on a nearby host.
PORTAL_TIMEOUT = 5.0
#: Largest portal answer read (a channel list of 10,000 channels is a few MiB).
MAX_PORTAL_ANSWER = 16 << 20
#: Tracker requests (binary over UDP retransmits within this).
TRACKER_TIMEOUT = 5.0
#: Peers asked for in a FIND (RFC 7846 §3.2 peer_num).
FIND_PEERS = 20
#: Storage overlay segments fetched at once during a rescue.
RESCUE_CONCURRENCY = 2
#: Seconds a rescue waits for the storage overlay node to join.
OVERLAY_JOIN_TIMEOUT = 15.0
#: How long ``watch`` follows a live channel when no duration is given.
LIVE_WATCH_DEFAULT = 30.0
#: STAT_REPORT keep-alive period (RFC 7846 §4.1.3; well inside the tracker's track timer).
KEEPALIVE = 20.0

_HASHES = {h.hashlib_name: h for h in MerkleHashFunction}


class CscError(Exception):
    """A failure the user must hear about (unknown channel, portal down); one line."""


class _ViewerSwarm(Swarm):
    """A swarm that tells the CSC every chunk PPSPP verified and who sent it."""

    def __init__(
        self,
        endpoint: Endpoint,
        params: SwarmParameters,
        content: SwarmContent,
        policy: PickPolicy,
        on_verified: Callable[[int, Address], None],
    ) -> None:
        super().__init__(endpoint, params, content, policy)
        self.on_verified = on_verified

    def chunk_verified(self, chunk: int, source: Channel) -> None:
        # Called by the channel only after verify_and_store accepted the chunk (RFC 7574 §5,
        # §6.1): the one door through which PPSPP data reaches playback.
        super().chunk_verified(chunk, source)
        self.on_verified(chunk, source.addr)


def swarm_parameters(info: ChannelInfo) -> SwarmParameters:
    """PPSPP parameters of a portal channel (integrity "merkle[-HASH]", "unified-merkle…",
    "sign-all…"; RFC 7574 §7.5–§7.7)."""
    method = info.integrity.lower()
    hash_name = info.hash.lower() or "sha256"
    if method.startswith("merkle-") and method[7:] in _HASHES:
        hash_name = method[7:]
    hash_function = _HASHES.get(hash_name)
    if hash_function is None:
        raise ChannelError(f"unsupported hash function {info.hash!r}")
    if info.live:
        if method.startswith("unified-merkle"):
            integrity = IntegrityMethod.UNIFIED_MERKLE
        elif method.startswith("sign-all"):
            integrity = IntegrityMethod.SIGN_ALL
        else:
            raise ChannelError(f"unsupported live integrity method {info.integrity!r}")
        try:
            algorithm = LiveSignatureAlgorithm(info.swarm_id[0])
        except ValueError:
            raise ChannelError("the live swarm ID names no known signature algorithm") from None
        return SwarmParameters(
            swarm_id=info.swarm_id,
            integrity_method=integrity,
            hash_function=MerkleHashFunction.SHA256,
            chunk_size=info.chunk_size,
            live_signature_algorithm=algorithm,
            live_discard_window=DEFAULT_LIVE_WINDOW,
        )
    if not method.startswith("merkle"):
        raise ChannelError(f"unsupported VoD integrity method {info.integrity!r}")
    if len(info.swarm_id) != hash_function.digest_size:
        raise ChannelError(f"a {hash_name} swarm ID has {hash_function.digest_size} bytes")
    return SwarmParameters(
        swarm_id=info.swarm_id,
        integrity_method=IntegrityMethod.MERKLE,
        hash_function=hash_function,
        chunk_size=info.chunk_size,
    )


class _Visit:
    """The I/O side of one channel visit: its swarm, content and chunk store."""

    def __init__(self, info: ChannelInfo, swarm: _ViewerSwarm, store: MemoryChunkStore) -> None:
        self.info = info
        self.swarm = swarm
        self.store = store
        self.integrity_failed: set[Address] = set()
        self.live_start_told = False
        #: Tracker URL → the CONNECT that JOINs the swarm there (done or under way).
        self.joining: dict[str, asyncio.Task[Any]] = {}
        self.tasks: set[asyncio.Task[Any]] = set()


class CscClient:
    """One viewer: ``await start()``, then :meth:`watch` or :meth:`zap`, then ``close()``.

    ``keep_content`` keeps every visited channel's verified chunks in memory
    (:meth:`content_of`), for tests and checks; otherwise a visit's chunks are dropped when
    the viewer zaps away.
    """

    def __init__(
        self,
        config: CscConfig,
        *,
        keep_content: bool = False,
        on_visit: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = config
        self.peer_id = config.peer_id or "csc-" + secrets.token_hex(8)
        self.keep_content = keep_content
        #: Called with each visit's report (ChannelReport.to_json) as the viewer leaves it.
        self.on_visit = on_visit
        self.core = CscCore(
            startup_seconds=config.startup,
            startup_bytes=config.startup_bytes,
            starvation_timeout=config.starvation_timeout,
            refind_interval=max(config.starvation_timeout, 0.5),
            default_bitrate=config.bitrate * 1000,
            overlay=config.storage_overlay is not None,
        )
        self.node: PeerNode | None = None
        self.address: Address | None = None
        self._http: aiohttp.ClientSession | None = None
        self._trackers: dict[str, TrackerClient] = {}
        #: Tracker URL → the swarm (hex) the CSC is JOINed to there.
        self._tracker_swarm: dict[str, str | None] = {}
        self._visit: _Visit | None = None
        self._kept: dict[str, tuple[ChannelInfo, MemoryChunkStore]] = {}
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._overlay: Any = None  # reload.aio.OverlayNode, imported only when configured
        self._overlay_task: asyncio.Task[Any] | None = None
        self._metas: dict[str, Any] = {}
        self._last_keepalive = 0.0
        #: Overlay hops of each storage overlay segment fetched (reload.aio last_hops).
        self.overlay_hops: list[int] = []

    # -- life cycle

    async def start(self) -> Address:
        """Open the PPSPP socket and the portal session; start joining the storage overlay
        (in the background) when one is configured."""
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PORTAL_TIMEOUT))
        self.node = PeerNode()
        self.node.listeners.append(self._on_event)
        self.address = await self.node.start(self.config.listen)
        if self.config.storage_overlay is not None:
            self._overlay_task = asyncio.ensure_future(self._open_overlay())
        log.info("CSC %s on %s:%d", self.peer_id, *self.address)
        return self.address

    async def close(self) -> None:
        """Leave the channel (heartbeat, tracker LEAVE), close every socket."""
        await self.stop_watching()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._overlay_task is not None:
            self._overlay_task.cancel()
            with contextlib.suppress(BaseException):
                await self._overlay_task
        if self._overlay is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._overlay.close(), 5.0)
        for client in self._trackers.values():
            with contextlib.suppress(Exception):
                await client.close()
        self._trackers.clear()
        if self.node is not None:
            self.node.close()
        if self._http is not None:
            await self._http.close()

    async def __aenter__(self) -> CscClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the portal

    def _portal(self, path: str) -> str:
        base = self.config.portal or ""
        return base.rstrip("/") + "/api/v1/" + path

    async def _get_json(self, url: str) -> Any:
        assert self._http is not None
        try:
            async with self._http.get(url) as answer:
                body = await answer.content.read(MAX_PORTAL_ANSWER + 1)
                if answer.status == 404:
                    raise CscError(f"the portal has no such channel ({url})")
                if answer.status != 200:
                    raise CscError(f"the portal answered {answer.status} to GET {url}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CscError(
                f"cannot reach the portal at {url}: {exc or type(exc).__name__}"
            ) from None
        if len(body) > MAX_PORTAL_ANSWER:
            raise CscError("the portal's answer is too large")
        try:
            return json.loads(body)
        except ValueError:
            raise CscError(f"the portal's answer to GET {url} is not JSON") from None

    async def channel(self, name: str) -> ChannelInfo:
        """The portal's description of channel ``name``."""
        if not name or "/" in name or name.startswith("."):
            raise CscError(f"{name!r} is not a channel name")
        data = await self._get_json(self._portal("channels/" + urllib.parse.quote(name, safe="")))
        try:
            info = ChannelInfo.from_json(data)
            swarm_parameters(info)
        except ChannelError as exc:
            raise CscError(f"channel {name}: {exc}") from None
        return info

    async def channels(self) -> list[ChannelInfo]:
        """Every channel the portal lists (unusable entries are skipped with a warning)."""
        data = await self._get_json(self._portal("channels"))
        items = data.get("channels") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise CscError("the portal's channel list is not {'channels': [...]}")
        out: list[ChannelInfo] = []
        for item in items:
            try:
                out.append(ChannelInfo.from_json(item))
            except ChannelError as exc:
                log.warning("skipping a portal channel: %s", exc)
        return out

    async def _heartbeat(self, name: str, watching: bool) -> None:
        """docs/portal.md "Viewer heartbeats": the viewer is our tracker Peer-ID."""
        assert self._http is not None
        url = self._portal("channels/" + urllib.parse.quote(name, safe="") + "/viewers")
        try:
            async with self._http.post(
                url, json={"viewer": self.peer_id, "watching": watching}
            ) as answer:
                if answer.status != 204:
                    log.info("portal heartbeat for %s: HTTP %d", name, answer.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("portal heartbeat for %s failed: %s", name, exc or type(exc).__name__)

    # -- watching

    async def watch(self, name: str, seconds: float | None = None) -> dict[str, Any]:
        """Watch one channel: a VoD until it ends (or ``seconds``), a live one for
        ``seconds``; returns the session summary (:meth:`CscCore.summary`)."""
        info = await self.channel(name)
        if seconds is None and info.live:
            seconds = LIVE_WATCH_DEFAULT
        await self._play(info, seconds, until_end=True)
        await self.stop_watching()
        return self.finish()

    async def zap(self, names: list[str], dwell: float) -> dict[str, Any]:
        """Visit the channels in order, ``dwell`` seconds each. The descriptions are read
        from the portal first, as a set-top box holds its channel list: a channel change
        starts at the tracker."""
        infos = [await self.channel(name) for name in names]
        for info in infos:
            await self._play(info, dwell, until_end=False)
        await self.stop_watching()
        return self.finish()

    async def stop_watching(self) -> None:
        """Leave the current channel: the portal heartbeat saying so, CONNECT LEAVE at the
        trackers (RFC 7846 §4.1.1), the PPSPP channels closed (RFC 7574 §8.4)."""
        self.core.leave(asyncio.get_running_loop().time())
        visit = self._visit
        if visit is None:
            return
        self._end_visit(visit)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._leave(visit), 2.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._leave_trackers(), 5.0)

    def finish(self) -> dict[str, Any]:
        """End the session: the summary (:meth:`CscCore.summary`), with ``peer_id`` and
        ``area``."""
        loop_time = asyncio.get_running_loop().time()
        self.core.leave(loop_time)
        summary = self.core.summary()
        # Wall-clock zap times, so that a lab can line up the visits of many viewers.
        offset = time.time() - loop_time
        for channel, visit in zip(summary["channels"], self.core.visits, strict=True):
            channel["zap_unix"] = round(visit.report.zap_time + offset, 3)
        summary["peer_id"] = self.peer_id
        summary["area"] = self.config.area
        summary["overlay_hops"] = list(self.overlay_hops)
        return summary

    def content_of(self, name: str) -> bytes | None:
        """The verified chunks of a visited channel in order (``keep_content`` only), None
        if a chunk is missing."""
        kept = self._kept.get(name)
        if kept is None:
            return None
        info, store = kept
        chunks = store.chunks
        n = info.num_chunks
        if not chunks or sorted(chunks) != list(range(len(chunks))) or n != len(chunks):
            return None
        return store.content()

    def chunks_of(self, name: str) -> dict[int, bytes]:
        """The verified chunks of a visited channel held so far (``keep_content`` only)."""
        kept = self._kept.get(name)
        return {} if kept is None else dict(kept[1].chunks)

    async def _play(self, info: ChannelInfo, seconds: float | None, *, until_end: bool) -> None:
        node = self.node
        assert node is not None, "start() first"
        loop = asyncio.get_running_loop()
        old = self._visit
        if old is not None:
            self._spawn(self._leave(old))
            self._end_visit(old)
        visit = self._begin_visit(info)
        now = loop.time()
        self._do(self.core.zap(info, now))
        self._spawn(self._heartbeat(info.name, True))
        end = None if seconds is None else now + seconds
        next_beat = now + self.config.heartbeat
        for _ in range(10_000_000):  # bounded: ends by time, by the end of the VoD, or a signal
            now = loop.time()
            if end is not None and now >= end:
                break
            if until_end and self.core.ended():
                break
            self._do(self.core.handle_timer(now))
            self._tell_live_start(visit, now)
            if now >= next_beat:
                next_beat = now + self.config.heartbeat
                self._spawn(self._heartbeat(info.name, True))
                if now - self._last_keepalive >= KEEPALIVE:
                    self._last_keepalive = now
                    self._spawn(self._keepalive(visit))
            wake = min(t for t in (self.core.next_timer(), end, next_beat) if t is not None)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, wake - loop.time()) + 0.001)
        # The visit is over for the viewer (the next zap, or the end): settle its report.
        self.core.leave(loop.time())
        if self.on_visit is not None and self.core.visits:
            report = self.core.reports()[-1]
            try:
                self.on_visit(report.to_json())
            except Exception:  # the application's bug must not end the session
                log.exception("on_visit callback failed")

    # -- channel visits: swarms on the PPSPP node

    def _begin_visit(self, info: ChannelInfo) -> _Visit:
        node = self.node
        assert node is not None
        params = swarm_parameters(info)
        store = MemoryChunkStore(info.chunk_size)
        content: SwarmContent
        if info.live:
            content = LiveContent(params, DEFAULT_CHUNKS_PER_SIGNATURE, DEFAULT_LIVE_WINDOW)
            content.store = store  # verified chunks are kept where content_of finds them
        else:
            tree = HashTree.for_root(info.swarm_id, info.chunk_size, params.hash_function)
            content = StaticContent(tree, store)
        name = info.name

        def verified(chunk: int, addr: Address) -> None:
            if self._visit is not None and self._visit.info.name == name:
                self.core.on_chunk(name, chunk, addr, node.loop.time())
                self._wake.set()

        # A playing viewer wants the chunks in order (RFC 7574 §3.4 leaves the picker to us).
        swarm = _ViewerSwarm(node.endpoint, params, content, PickPolicy.IN_ORDER, verified)
        swarm.push_head = 0  # a viewer pushes nothing
        node.endpoint.remove_swarm(info.swarm_id)
        node.endpoint.swarms[info.swarm_id] = swarm
        visit = _Visit(info, swarm, store)
        self._visit = visit
        if self.keep_content:
            self._kept[name] = (info, store)
        return visit

    def _end_visit(self, visit: _Visit) -> None:
        node = self.node
        for task in list(visit.tasks):
            task.cancel()
        if node is not None:
            node.endpoint.remove_swarm(visit.info.swarm_id)  # §8.4 explicit close to peers
            node.flush()  # the close events go out while the old visit is current
        if self._visit is visit:
            self._visit = None

    def _tell_live_start(self, visit: _Visit, now: float) -> None:
        content = visit.swarm.content
        if visit.live_start_told or not isinstance(content, LiveContent):
            return
        if content.position is not None:
            visit.live_start_told = True
            self.core.on_live_start(visit.info.name, content.position, now)

    def _on_event(self, event: Event) -> None:
        visit = self._visit
        if visit is None or getattr(event, "swarm_id", None) != visit.info.swarm_id:
            return
        assert self.node is not None
        now = self.node.loop.time()
        name = visit.info.name
        if isinstance(event, ChannelEstablished):
            self.core.on_channel_up(name, event.addr, now)
        elif isinstance(event, IntegrityFailed):
            visit.integrity_failed.add(event.addr)
            log.warning(
                "%s: dropped peer %s:%d: chunk %d failed verification",
                name,
                *event.addr,
                event.chunk,
            )
        elif isinstance(event, ChannelClosed):
            bad = event.addr in visit.integrity_failed
            self.core.on_peer_gone(name, event.addr, event.reason, now, integrity=bad)
        elif isinstance(event, DownloadComplete):
            self.core.on_complete(name, now)
        self._wake.set()

    # -- actions

    def _do(self, actions: list[Action]) -> None:
        node = self.node
        visit = self._visit
        if node is None or visit is None:
            return
        for action in actions:
            if action.channel != visit.info.name:
                continue
            if isinstance(action, ConnectPeer):
                if action.addr == self.address:
                    continue  # ourselves, listed under another name
                log.info("%s: connecting %s %s:%d", action.channel, action.origin, *action.addr)
                node.endpoint.connect(visit.info.swarm_id, action.addr, node.loop.time())
                node.kick()
            elif isinstance(action, DropPeer):
                for ch in list(visit.swarm.channels):
                    if ch.addr == action.addr and ch.is_open:
                        log.info(
                            "%s: dropping %s:%d: nothing new from it", action.channel, *ch.addr
                        )
                        ch.close("delivered nothing while we starved", notify_peer=True)
                node.kick()
            elif isinstance(action, FindPeers):
                self._spawn(self._find(visit), visit)
            elif isinstance(action, StartRescue):
                log.info("%s: peers starve us, rescue from the storage overlay", action.channel)
                self._spawn(self._rescue(visit), visit)

    def _spawn(
        self, coro: Coroutine[Any, Any, Any], visit: _Visit | None = None
    ) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if visit is not None:
            visit.tasks.add(task)
            task.add_done_callback(visit.tasks.discard)
        return task

    # -- trackers

    def _tracker_urls(self, info: ChannelInfo) -> tuple[str, ...]:
        return self.config.trackers or info.trackers

    def _tracker(self, url: str) -> TrackerClient:
        client = self._trackers.get(url)
        if client is None:
            client = open_client(url, self.peer_id, timeout=TRACKER_TIMEOUT)
            self._trackers[url] = client
        return client

    def _my_addresses(self) -> list[PeerAddress]:
        addr = self.address
        if addr is None or addr[0] in ("0.0.0.0", "::"):
            return []  # the tracker takes the address its request came from
        return [PeerAddress(addr[0], addr[1], peer_protocol="PPSP-PP")]

    async def _find(self, visit: _Visit) -> None:
        """Ask every tracker of the channel at once (see :meth:`_find_at`)."""
        urls = self._tracker_urls(visit.info)
        await asyncio.gather(*(self._find_at(visit, url) for url in urls))

    async def _find_at(self, visit: _Visit, url: str) -> None:
        """CONNECT (JOIN as a leecher, role CSC, our area) where not done yet, and FIND.
        A CSC registered at the tracker already (TRACKING, RFC 7846 §2.3.1) sends the FIND
        along with its CONNECT instead of after it: one tracker round trip per zap."""
        info = visit.info
        swarm = info.swarm_id.hex()
        client = self._tracker(url)
        try:
            join = visit.joining.get(url)
            registered = self._tracker_swarm.get(url) is not None
            if join is None or (join.done() and join.exception() is not None):
                join = visit.joining[url] = self._spawn(self._join(url, swarm))
            if registered:
                answer, _ = await asyncio.gather(
                    self._find_once(client, swarm), asyncio.shield(join)
                )
            else:
                # From START the FIND must follow the CONNECT (§2.3.1: only a registered peer
                # may FIND). Sent right behind it, it usually arrives second and saves a round
                # trip; if it overtook the CONNECT, the tracker refuses it and it is sent
                # again once the CONNECT is answered.
                await asyncio.sleep(0)  # the CONNECT goes first
                try:
                    answer = await self._find_once(client, swarm)
                except TrackerRequestError:
                    await asyncio.shield(join)
                    answer = await self._find_once(client, swarm)
                else:
                    await asyncio.shield(join)
        except (TrackerClientError, OSError, ValueError) as exc:
            log.warning("%s: tracker %s: %s", info.name, url, exc)
            return
        candidates: list[PeerCandidate] = []
        for result in answer.swarm_results:
            for peer in result.peers or []:
                if peer.peer_id == self.peer_id or not peer.addresses:
                    continue
                a = peer.addresses[0]
                origin = {Role.CACHER: Origin.CACHER, Role.SOURCE: Origin.SOURCE}.get(
                    peer.role or Role.CSC, Origin.PEER
                )
                remote = (
                    origin is not Origin.SOURCE
                    and self.config.area is not None
                    and peer.area is not None
                    and peer.area != self.config.area
                )
                candidates.append(PeerCandidate((a.ip, a.port), origin, peer.peer_id, remote))
        if self.node is None:
            return
        log.info("%s: tracker %s named %d peers", info.name, url, len(candidates))
        self._do(self.core.on_peers(info.name, candidates, self.node.loop.time()))
        self._wake.set()

    async def _find_once(self, client: TrackerClient, swarm: str) -> Response:
        return await client.find(swarm, peer_num=PeerNum(FIND_PEERS), area=self.config.area)

    async def _join(self, url: str, swarm: str) -> None:
        """RFC 7846 Table 6: a leecher in TRACKING changes swarm with one CONNECT carrying
        LEAVE of the old swarm and JOIN of the new; from START it sends the JOIN alone."""
        actions = [SwarmAction(swarm, SwarmActionType.JOIN, PeerMode.LEECH)]
        old = self._tracker_swarm.get(url)
        if old is not None and old != swarm:
            actions.insert(0, SwarmAction(old, SwarmActionType.LEAVE, PeerMode.LEECH))
        if old == swarm:
            return
        self._tracker_swarm[url] = None  # unknown until the tracker answered
        await self._tracker(url).connect(
            actions,
            peer_addresses=self._my_addresses(),
            role=Role.CSC,
            area=self.config.area,
        )
        self._tracker_swarm[url] = swarm

    async def _leave(self, visit: _Visit) -> None:
        """The heartbeat saying we left the channel (the tracker hears it with the next
        JOIN, or :meth:`_leave_trackers` at the end)."""
        await self._heartbeat(visit.info.name, False)

    async def _leave_trackers(self) -> None:
        """CONNECT LEAVE of the swarm joined at each tracker (Table 6: the peer terminates)."""
        for url, swarm in list(self._tracker_swarm.items()):
            if swarm is None:
                continue
            self._tracker_swarm[url] = None
            with contextlib.suppress(TrackerClientError, OSError, ValueError):
                await self._tracker(url).connect(
                    [SwarmAction(swarm, SwarmActionType.LEAVE, PeerMode.LEECH)],
                    peer_addresses=self._my_addresses(),
                )

    async def _keepalive(self, visit: _Visit) -> None:
        swarm = visit.info.swarm_id.hex()
        report = self.core.current.report if self.core.current is not None else None
        got = sum(report.bytes.values()) if report is not None else 0
        for url, joined in list(self._tracker_swarm.items()):
            if joined != swarm:
                continue
            with contextlib.suppress(TrackerClientError, OSError, ValueError):
                await self._tracker(url).stat_report([StreamStats(swarm, downloaded_bytes=got)])

    # -- the storage overlay (rescue)

    async def _open_overlay(self) -> Any:
        from reload.aio import OverlayNode, load_daemon_config

        path = self.config.storage_overlay
        assert path is not None
        try:
            node = OverlayNode.from_config(load_daemon_config(Path(path)))
            await node.start(join_timeout=OVERLAY_JOIN_TIMEOUT)
        except (OSError, ValueError, TimeoutError, ConnectionError) as exc:
            log.warning("storage overlay unusable (%s): rescue from the source only", exc)
            self._do(self.core.on_overlay_unusable(asyncio.get_running_loop().time()))
            return None
        self._overlay = node
        return node

    async def _rescue(self, visit: _Visit) -> None:
        """Fetch the segments the core asks for from the storage overlay (verified there)."""
        from reload.usages.client import ContentStore

        info = visit.info
        loop = asyncio.get_running_loop()
        node = None
        if self._overlay_task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                node = await asyncio.wait_for(
                    asyncio.shield(self._overlay_task), OVERLAY_JOIN_TIMEOUT
                )
        if node is None:
            self._do(self.core.on_overlay_unusable(loop.time()))
            return
        store = ContentStore(node, "csc", timeout=5.0)
        meta = self._metas.get(info.name)
        if meta is None:
            try:
                meta = await store.get_meta(info.source_user, info.name, swarm=info.swarm_id)
            except Exception as exc:  # not found, replicas exhausted, timeouts
                log.warning("%s: no content meta in the storage overlay: %s", info.name, exc)
                self._do(self.core.on_segment_failed(info.name, -1, loop.time()))
                return
            self._metas[info.name] = meta

        async def one(index: int) -> None:
            try:
                chunks = await store.get_segment(meta, index)
            except Exception as exc:  # not found, replicas exhausted, timeouts: use the source
                log.warning("%s: segment %d from the storage overlay: %s", info.name, index, exc)
                self._do(self.core.on_segment_failed(info.name, index, loop.time()))
                return
            self.overlay_hops.append(int(getattr(node, "last_hops", 0)))
            if self._visit is not visit:
                return
            first = index * info.segment_chunks
            for i, data in enumerate(chunks):
                visit.store.chunks.setdefault(first + i, data)
            added = self.core.on_segment(info.name, index, chunks, loop.time())
            log.info(
                "%s: segment %d from the storage overlay (%d new chunks)", info.name, index, added
            )
            self._wake.set()

        for _ in range(100_000):  # bounded by the segments of the content
            indices = self.core.rescue_segments(info.name, RESCUE_CONCURRENCY)
            if not indices:
                break
            await asyncio.gather(*(one(i) for i in indices))
