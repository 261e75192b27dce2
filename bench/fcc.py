"""Benchmark: fast channel change (issue 7, DESIGN F4) — zap → first frame, with and without push.

Set-up, in this process, on loopback: a PPSP-TP tracker (the cacher needs one; nobody asks it
for anything here, so it sends no push hints), a storage overlay of 2 RELOAD peers with TLS
links on 127.0.0.1 holding the channels, and a real cacher (:class:`cacher.daemon.Cacher`)
listening on 127.0.0.2. The viewer is a lean PPSPP client on 127.0.0.3: one UDP socket (a
:class:`ppsp.peer.aio.PeerNode`) that keeps its address across channel changes, as a CSC does,
and one :class:`csc.playback.PlaybackSession` per startup threshold, fed only chunks that
PPSPP verified. A zap closes the old channel (RFC 7574 §8.4) and opens the new one; the
startup delay is zap → the first frame, that is until the first ``threshold`` chunks are
verified (8 and 16 chunks of 1 KiB are measured in the same zaps).

Legs, each over 3 warm channels the viewer cycles through:

- **push, warm** — the cacher holds the channels' head and pushes ``PUSH_HEAD`` chunks; the
  viewer already talks to the cacher (its address was validated by an earlier channel), so
  the head follows the handshake reply at once: one round trip (docs/cacher.md "Early push").
- **push, first contact** — a new viewer socket per zap: the push waits for the third
  datagram (§3.1), two round trips.
- **no push, warm cacher** — ``push_head = 0``: the handshake round trip, then the REQUEST
  with the third datagram, answered under LEDBAT's slow start.
- **no push hints, cold cacher** — the channel is known to the cacher but none of its chunks
  are cached (as without a push hint from the tracker): the viewer's third datagram waits
  while the cacher fetches the segment from the storage overlay and verifies it (F3); the
  head, cached by then, is pushed. The chunks are evicted again before the next zap to that
  channel (``CachedSwarm.evict``).

Three network conditions (``CONDITIONS``): plain loopback, and an emulated WAN
(``ppsp.linkemu``, userspace: this kernel has no netem) with and without jitter: ``delay`` one
way (± ``jitter``) between viewer and cacher (rules on 127.0.0.2/32 and 127.0.0.3/32), and
the same per hop inside the storage overlay and towards it (127.0.0.1/32), so the storage
overlay is not nearer than the cacher. The cacher reads the overlay through a RELOAD client
attached to a storage peer, so a fill always crosses a link. The rules of the one emulator
are swapped between conditions (all transports are wrapped from the start).

A fourth, separate condition, ``areas`` (``measure_topology``), is the lab's shipped topology
(lab/topologies/areas.toml): the viewer 5 ms one way from its cacher, and both 40 ms one way
from the core, where the tracker, the storage overlay and the source live (127.0.0.4, a lab of
its own). Its legs compare what LiveSky compares, a nearby edge that has the first chunks
against one that has to get them from afar:

- **push hints, warm cacher** (``push_warm``) and **no push, warm cacher** (``nopush_warm``),
  as above;
- **no push hints, cold cacher** (``nopush_cold``): the fill crosses the 80 ms round trip to
  the storage overlay at the core;
- **no cacher** (``no_cacher``): the viewer zaps to the source at the core, a plain PPSPP
  seeder that does not push (the CDN without edge caching).

The emulator of ``ppsp.linkemu`` matches destinations only, so the topology gives each host's
transports an emulator of its own (a transport keeps the emulator current when it was made):
the core's (0 ms inside the core, 40 ms to the areas), the area's (5 ms between viewer and
cacher, 40 ms to the core) and, while the cacher's RELOAD client joins, one with 40 ms to every
destination for both ends of its TLS link to the storage peer.

Figures per condition and leg: median and p95 startup delay. RTT is the median handshake
round trip (zap → the cacher's reply) of the no-push leg; the "first chunks" time is the time
to receive and verify the first ``threshold`` chunks sent back to back without a round trip,
measured on loopback in the push leg (first frame − handshake reply: the pushed chunks follow
the reply in the same flush). Target (issue 7): push p95 ≤ 1.5 × (RTT + first chunks), and
≥ 5× faster than without push.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import row
from cacher.config import CacherConfig
from cacher.content import OverlaySegments
from cacher.daemon import Cacher
from csc.playback import FirstFrame, PlaybackSession
from ppsp import linkemu
from ppsp.peer.aio import PeerNode
from ppsp.peer.channel import Channel
from ppsp.peer.content import MemoryChunkStore, StaticContent, SwarmContent, SwarmParameters
from ppsp.peer.endpoint import ChannelEstablished, Endpoint, Event, Swarm
from ppsp.peer.merkle import HashTree
from ppsp.peer.messages import IntegrityMethod, MerkleHashFunction
from ppsp.peer.picker import PickPolicy
from ppsp.peer.ranges import ChunkSet
from ppsp.tracker.config import TrackerDaemonConfig
from ppsp.tracker.server import TrackerServer, serve
from reload.aio import OverlayNode, load_daemon_config
from reload.usages.client import ContentStore
from reload.usages.config import add_daemon, make_overlay_dir
from reload.usages.content import segments_of, vod_meta

OVERLAY = "fcc.p2pcdn"
SOURCE = f"node0@{OVERLAY}"
CACHER_HOST = "127.0.0.2"
VIEWER_HOST = "127.0.0.3"
OVERLAY_HOST = "127.0.0.1"
#: The core of the topology condition: tracker, storage overlay and source.
CORE_HOST = "127.0.0.4"
CHUNK = 1024
#: Chunks per channel: one 64-chunk storage segment (a cold zap costs one segment fetch).
CHANNEL_CHUNKS = 64
#: Head chunks the cacher pushes after the handshake.
PUSH_HEAD = 16
#: Startup thresholds measured (chunks verified from chunk 0 before the first frame).
THRESHOLDS = (8, 16)
#: The media rate of the playback model (LiveSky's 400 kbit/s).
BITRATE = 400_000.0
WARM_CHANNELS = 3
COLD_CHANNELS = 3
#: A zap that shows no first frame within this long counts as failed.
ZAP_TIMEOUT = 5.0
#: The emulated WAN: one-way delay and jitter (seconds).
WAN_DELAY = 0.020
WAN_JITTER = 0.002
#: Network conditions: (name, one-way delay, jitter) between viewer, cacher and overlay.
CONDITIONS: tuple[tuple[str, float, float], ...] = (
    ("loopback", 0.0, 0.0),
    ("wan", WAN_DELAY, WAN_JITTER),
    ("wan_nojitter", WAN_DELAY, 0.0),
)

LEGS = ("push_warm", "push_first_contact", "nopush_warm", "nopush_cold")
LEG_LABELS = {
    "push_warm": "push, viewer already talks to the cacher",
    "push_first_contact": "push, first contact",
    "nopush_warm": "no push, warm cacher",
    "nopush_cold": "no push hints, cold cacher (fill from storage overlay)",
}

#: The realistic-topology condition (lab/topologies/areas.toml), one way: viewer <-> cacher
#: and area <-> core (tracker, storage overlay, source).
TOPOLOGY = "areas"
AREA_DELAY = 0.005
CORE_DELAY = 0.040
TOPOLOGY_LEGS = ("push_warm", "nopush_warm", "nopush_cold", "no_cacher")
TOPOLOGY_LABELS = {
    "push_warm": "push hints, warm cacher",
    "nopush_warm": "no push, warm cacher",
    "nopush_cold": "no push hints: cold cacher filling from the storage overlay at the core",
    "no_cacher": "no cacher: viewer fetches from the source at the core",
}
#: Labels of the ratios (leg median / push median).
RATIO_LABELS = {
    "nopush_warm": "no push (warm)",
    "nopush_cold": "no hints (cold)",
    "no_cacher": "no cacher (source at the core)",
}

log = logging.getLogger(__name__)


@dataclass
class Zap:
    """One channel change as the viewer saw it (times in seconds from the zap)."""

    leg: str
    channel: int
    established: float | None = None
    first_frame: dict[int, float] = field(default_factory=dict)
    #: The cacher's side: whether its channel pushed before the handshake completed.
    early_push: bool = False
    chunks_pushed: int = 0
    #: Bytes of chunks the cacher had sent on the channel when the viewer's last threshold
    #: was reached (more than the threshold: retransmissions or the push beyond it).
    cacher_bytes: int = 0
    #: Cold leg: channels of earlier zaps to this channel still open at the cacher.
    stale_channels: int = 0

    @property
    def ok(self) -> bool:
        return all(t in self.first_frame for t in THRESHOLDS)


class _VerifiedSwarm(Swarm):
    """A swarm that reports every chunk PPSPP verified (the only door to playback)."""

    def __init__(
        self,
        endpoint: Endpoint,
        params: SwarmParameters,
        content: SwarmContent,
        on_verified: Callable[[int], None],
    ) -> None:
        super().__init__(endpoint, params, content, PickPolicy.IN_ORDER)
        self.on_verified = on_verified
        self.push_head = 0

    def chunk_verified(self, chunk: int, source: Channel) -> None:
        super().chunk_verified(chunk, source)
        self.on_verified(chunk)


def _params(swarm_id: bytes) -> SwarmParameters:
    return SwarmParameters(
        swarm_id=swarm_id,
        integrity_method=IntegrityMethod.MERKLE,
        hash_function=MerkleHashFunction.SHA256,
        chunk_size=CHUNK,
    )


class Viewer:
    """A zapping viewer: one socket, one channel at a time, playback models per threshold."""

    def __init__(self) -> None:
        self.node = PeerNode()
        self.node.listeners.append(self._on_event)
        self.address: tuple[str, int] = (VIEWER_HOST, 0)
        self._swarm: bytes | None = None
        self._zap: Zap | None = None
        self._t0 = 0.0
        self._sessions: dict[int, PlaybackSession] = {}
        self._done = asyncio.Event()

    async def start(self) -> None:
        self.address = await self.node.start((VIEWER_HOST, 0))

    def close(self) -> None:
        self.node.close()

    def _on_event(self, event: Event) -> None:
        zap = self._zap
        if (
            zap is not None
            and isinstance(event, ChannelEstablished)
            and event.swarm_id == self._swarm
            and zap.established is None
        ):
            zap.established = self.node.loop.time() - self._t0

    def _on_verified(self, chunk: int) -> None:
        zap = self._zap
        if zap is None:
            return
        now = self.node.loop.time()
        for threshold, session in self._sessions.items():
            session.on_chunk(chunk, now)
            for event in session.pop_events():
                if isinstance(event, FirstFrame):
                    zap.first_frame[threshold] = event.startup_delay
        if zap.ok:
            self._done.set()

    async def zap(self, leg: str, channel: int, swarm_id: bytes, cacher: tuple[str, int]) -> Zap:
        endpoint = self.node.endpoint
        if self._swarm is not None:
            endpoint.remove_swarm(self._swarm)  # §8.4: the old channel is closed explicitly
            self.node.flush()
        tree = HashTree.for_root(swarm_id, CHUNK, MerkleHashFunction.SHA256)
        content = StaticContent(tree, MemoryChunkStore(CHUNK))
        endpoint.swarms[swarm_id] = _VerifiedSwarm(
            endpoint, _params(swarm_id), content, self._on_verified
        )
        self._swarm = swarm_id
        self._done = asyncio.Event()
        zap = Zap(leg, channel)
        self._zap = zap
        now = self.node.loop.time()
        self._sessions = {
            t: PlaybackSession(BITRATE, CHUNK, startup_bytes=t * CHUNK) for t in THRESHOLDS
        }
        for session in self._sessions.values():
            session.zap(f"channel-{channel}", now, end_chunk=CHANNEL_CHUNKS - 1)
        self._t0 = now
        endpoint.connect(swarm_id, cacher, now)
        self.node.kick()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), ZAP_TIMEOUT)
        self._zap = None
        return zap


def _record_cacher_side(cacher: Cacher, viewer: Viewer, swarm_id: bytes, zap: Zap) -> None:
    for ch in cacher.node.endpoint.channels.values():
        if ch.addr == viewer.address and ch.swarm.swarm_id == swarm_id:
            zap.early_push = ch.early_push
            zap.chunks_pushed = ch.chunks_pushed
            zap.cacher_bytes = ch.bytes_sent


def _content(index: int) -> tuple[bytes, HashTree]:
    data = random.Random(7000 + index).randbytes(CHANNEL_CHUNKS * CHUNK)
    return data, HashTree.from_content(data, CHUNK, MerkleHashFunction.SHA256)


@dataclass
class _Lab:
    tracker: TrackerServer
    nodes: list[OverlayNode]
    cacher: Cacher
    warm: list[bytes]
    cold: list[bytes]
    #: The topology condition's source at the core, seeding the warm channels (no push).
    source: PeerNode | None = None

    @property
    def source_address(self) -> tuple[str, int]:
        assert self.source is not None and self.source.local is not None
        return self.source.local

    async def close(self) -> None:
        if self.source is not None:
            self.source.close()
        await self.cacher.close()
        for node in self.nodes:
            await node.close()
        self.tracker.close()
        await self.tracker.wait_closed()


def _rebind(path: Path, old: str, new: str) -> None:
    """Replace the address ``old`` by ``new`` in a generated overlay file (the lab's
    overlay.xml is unsigned: docs/usages.md §8)."""
    path.write_text(path.read_text().replace(old, new))


def _seeder(warm: list[int]) -> PeerNode:
    """The topology's source: a plain PPSPP seeder of the warm channels, pushing nothing."""
    node = PeerNode()
    for i in warm:
        data, tree = _content(i)
        content = StaticContent(
            tree, MemoryChunkStore(CHUNK, data), ChunkSet([(0, CHANNEL_CHUNKS - 1)])
        )
        node.endpoint.add_swarm(_params(tree.root_hash), content, push_head=0)
    return node


async def _start_lab(root: Path, topology: bool = False) -> _Lab:
    """The benchmark's lab; with ``topology`` the areas condition's (module docstring): the
    core on CORE_HOST and an emulator per host, left configured for the viewers (the area's)."""
    core = CORE_HOST if topology else OVERLAY_HOST
    if topology:
        linkemu.configure(_topology_rules("core"))
    tracker = await serve(TrackerDaemonConfig(udp=(core, 0)))
    nodes: list[OverlayNode] = []
    source: PeerNode | None = None
    try:
        paths = make_overlay_dir(root / "overlay", OVERLAY, 2, "storage", link="tls")
        if topology:
            for path in (*paths, root / "overlay" / "overlay.xml"):
                _rebind(path, OVERLAY_HOST, core)
        for path in paths:
            node = OverlayNode.from_config(load_daemon_config(path))
            await node.start(join_timeout=30.0)
            nodes.append(node)
        if topology:
            source = _seeder(list(range(WARM_CHANNELS)))
            await source.start((core, 0))
        # The cacher reads through a RELOAD client (RFC 6940 §3.2.1) attached to a storage
        # peer, so every segment fetch crosses the overlay's links (none is local).
        attach = load_daemon_config(paths[-1]).listen
        client = add_daemon(
            root / "overlay", "cacher", f"cacher@{OVERLAY}", client=True, bootstrap=[attach]
        )
        if topology:
            # The client lives on the cacher's host; both ends of its TLS link are made while
            # it joins, under an emulator that delays everything by the core path.
            _rebind(client, f'listen = "{OVERLAY_HOST}:', f'listen = "{CACHER_HOST}:')
            linkemu.configure(_topology_rules("link"))
        reader = OverlayNode.from_config(load_daemon_config(client))
        await reader.start(join_timeout=30.0)
        nodes.append(reader)
        if topology:
            linkemu.configure(_topology_rules("core"))
        store = ContentStore(nodes[0], SOURCE, timeout=10.0)
        names: list[str] = []
        swarms: list[bytes] = []
        for i in range(WARM_CHANNELS + COLD_CHANNELS):
            data, tree = _content(i)
            name = f"ch{i}"
            meta = vod_meta(tree, name, SOURCE)
            await store.put_meta(meta)
            for segment in segments_of(meta, tree, data):
                await store.put_segment(segment)
            names.append(f"{SOURCE}/{name}")
            swarms.append(tree.root_hash)
        config = CacherConfig(
            tracker=tracker.urls[0],
            area="bench",
            listen=(CACHER_HOST, 0),
            cache_dir=root / "cacher",
            cache_size=64 * 1024 * 1024,
            sources=(SOURCE,),
            channels=tuple(names),
            push_head=PUSH_HEAD,
            readahead=0,
            peer_id="cacher-fcc",
            keepalive=20.0,
            report_delay=0.2,
            fsync=False,
        ).check()
        if topology:
            linkemu.configure(_topology_rules("area"))  # the cacher's and the viewers'
        cacher = Cacher(config, meta_store=OverlaySegments(reader, "reader", timeout=10.0))
        await cacher.start()
    except BaseException:
        if source is not None:
            source.close()
        for node in nodes:
            await node.close()
        tracker.close()
        raise
    lab = _Lab(tracker, nodes, cacher, swarms[:WARM_CHANNELS], swarms[WARM_CHANNELS:], source)
    try:
        deadline = time.monotonic() + 30.0
        while not all(s in cacher.servings for s in swarms):
            if time.monotonic() > deadline:
                raise RuntimeError("the cacher did not learn the channels from the overlay")
            await asyncio.sleep(0.05)
        for sid in lab.warm:
            if not await cacher.servings[sid].fill([0]):
                raise RuntimeError("the cacher could not fill a warm channel")
            if cacher.node.endpoint.swarms[sid].push_head != PUSH_HEAD:
                raise RuntimeError("the warm channel's head is not pushed")
    except BaseException:
        await lab.close()
        raise
    return lab


def _set_push(cacher: Cacher, swarms: list[bytes], head: int) -> None:
    for sid in swarms:
        cacher.node.endpoint.swarms[sid].push_head = head


def _make_cold(cacher: Cacher, sid: bytes) -> int:
    """Evict every chunk of ``sid`` (the metadata and hash tree stay, as after eviction);
    returns how many channels of earlier zaps were still open at the cacher (closed now)."""
    serving = cacher.servings[sid]
    swarm = cacher.node.endpoint.swarms[sid]
    stale = len(swarm.channels)
    for ch in list(swarm.channels):
        # A channel left over from an earlier zap (its close still on the way) must not be
        # asked to send what is evicted now: CacherVodContent.read_chunk raises KeyError.
        ch.close("benchmark: channel made cold", notify_peer=True)
    serving.cached.evict(0, CHANNEL_CHUNKS - 1, cacher.clock())
    serving.memory.clear()
    swarm.push_head = 0
    return stale


def _set_rules(rules: list[linkemu.LinkRule]) -> None:
    emulator = linkemu.current()
    assert emulator is not None
    emulator.rules = rules
    emulator.__post_init__()  # longest prefix first, fresh link state and match cache


def _wan_rules(delay: float, jitter: float) -> list[linkemu.LinkRule]:
    import ipaddress

    return [
        linkemu.LinkRule(ipaddress.ip_network(f"{host}/32"), delay=delay, jitter=jitter)
        for host in (CACHER_HOST, VIEWER_HOST, OVERLAY_HOST)
    ]


def _topology_rules(side: str) -> list[linkemu.LinkRule]:
    """The areas condition's rules for the transports made on ``side``: "core" (tracker,
    storage overlay, source), "area" (cacher and viewers) or "link" (both ends of the cacher's
    RELOAD client link to the core)."""
    text = {
        "core": f"{CACHER_HOST}/32 delay={CORE_DELAY}s; {VIEWER_HOST}/32 delay={CORE_DELAY}s",
        "area": f"{CACHER_HOST}/32 delay={AREA_DELAY}s; {VIEWER_HOST}/32 delay={AREA_DELAY}s;"
        f" {CORE_HOST}/32 delay={CORE_DELAY}s",
        "link": f"0.0.0.0/0 delay={CORE_DELAY}s",
    }[side]
    return linkemu.parse_rules(text)


async def _condition(
    lab: _Lab, zaps: int, first_contacts: int, rng: random.Random
) -> dict[str, list[Zap]]:
    cacher = lab.cacher
    out: dict[str, list[Zap]] = {leg: [] for leg in LEGS}

    async def pause() -> None:
        await asyncio.sleep(0.02 + rng.random() * 0.02)  # let the old channel's tail settle

    for i in range(first_contacts):
        viewer = Viewer()
        await viewer.start()
        try:
            channel = i % len(lab.warm)
            zap = await viewer.zap("push_first_contact", channel, lab.warm[channel], cacher.address)
            _record_cacher_side(cacher, viewer, lab.warm[channel], zap)
            out["push_first_contact"].append(zap)
        finally:
            viewer.close()
        await pause()

    viewer = Viewer()
    await viewer.start()
    try:
        await _cacher_legs(lab, viewer, zaps, out, pause)
    finally:
        viewer.close()
    return out


async def _cacher_legs(
    lab: _Lab,
    viewer: Viewer,
    zaps: int,
    out: dict[str, list[Zap]],
    pause: Callable[[], Any],
) -> None:
    """The legs of one viewer that already talks to the cacher: push, no push, cold."""
    cacher = lab.cacher
    # A first zap validates the viewer's address at the cacher (not counted).
    await viewer.zap("warmup", 0, lab.warm[0], cacher.address)
    await pause()
    for leg in ("push_warm", "nopush_warm", "nopush_cold"):
        _set_push(cacher, lab.warm, 0 if leg == "nopush_warm" else PUSH_HEAD)
        for i in range(zaps):
            channel = (i + 1) % len(lab.warm)
            sid = lab.warm[channel]
            stale = 0
            if leg == "nopush_cold":
                channel = i % len(lab.cold)
                sid = lab.cold[channel]
                stale = _make_cold(cacher, sid)
            zap = await viewer.zap(leg, channel, sid, cacher.address)
            zap.stale_channels = stale
            _record_cacher_side(cacher, viewer, sid, zap)
            out[leg].append(zap)
            await pause()
    _set_push(cacher, lab.warm, PUSH_HEAD)


async def _topology_condition(lab: _Lab, zaps: int, rng: random.Random) -> dict[str, list[Zap]]:
    out: dict[str, list[Zap]] = {leg: [] for leg in TOPOLOGY_LEGS}

    async def pause() -> None:
        await asyncio.sleep(0.02 + rng.random() * 0.02)

    viewer = Viewer()
    await viewer.start()
    try:
        await _cacher_legs(lab, viewer, zaps, out, pause)
        for i in range(zaps):
            channel = (i + 1) % len(lab.warm)
            zap = await viewer.zap("no_cacher", channel, lab.warm[channel], lab.source_address)
            out["no_cacher"].append(zap)
            await pause()
    finally:
        viewer.close()
    return out


async def measure(
    zaps: int,
    first_contacts: int,
    conditions: tuple[tuple[str, float, float], ...] | None = None,
) -> dict[str, dict[str, list[Zap]]]:
    """Run every leg under each (name, one-way delay, jitter) condition, the first of which
    must be plain loopback (0, 0); returns {condition: {leg: zaps}}."""
    logging.getLogger("cacher").setLevel(logging.WARNING)
    logging.getLogger("ppsp").setLevel(logging.WARNING)
    conditions = CONDITIONS if conditions is None else conditions
    if conditions[0][1:] != (0.0, 0.0):
        raise ValueError("the first condition is plain loopback")
    linkemu.configure([])  # every transport from now on can be given delay rules
    rng = random.Random(4)
    results: dict[str, dict[str, list[Zap]]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-fcc-") as tmp:
            lab = await _start_lab(Path(tmp))
            try:
                for name, delay, jitter in conditions:
                    _set_rules(_wan_rules(delay, jitter) if delay or jitter else [])
                    await asyncio.sleep(0.2)
                    results[name] = await _condition(lab, zaps, first_contacts, rng)
            finally:
                _set_rules([])
                await lab.close()
    finally:
        linkemu.configure(None)
    return results


async def measure_topology(zaps: int) -> dict[str, list[Zap]]:
    """The areas condition (module docstring) in a lab of its own: {leg: zaps}."""
    logging.getLogger("cacher").setLevel(logging.WARNING)
    logging.getLogger("ppsp").setLevel(logging.WARNING)
    rng = random.Random(9)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-fcc-areas-") as tmp:
            lab = await _start_lab(Path(tmp), topology=True)
            try:
                await asyncio.sleep(0.2)
                return await _topology_condition(lab, zaps, rng)
            finally:
                await lab.close()
    finally:
        linkemu.configure(None)


def describe(name: str) -> str:
    if name == TOPOLOGY:
        return (
            f"areas topology ({AREA_DELAY * 1e3:g} ms to the cacher, "
            f"{CORE_DELAY * 1e3:g} ms to the core)"
        )
    for cond, delay, jitter in CONDITIONS:
        if cond == name:
            if not delay and not jitter:
                return "loopback"
            return f"WAN {delay * 1e3:g}±{jitter * 1e3:g} ms"
    return name


# -- figures ---------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


def summarize(results: dict[str, dict[str, list[Zap]]]) -> dict[str, Any]:
    """Medians, p95, RTT, the first-chunks time, the target bound and the ratios."""
    first_chunks: dict[int, float] = {}
    loopback = results.get("loopback", {}).get("push_warm", [])
    base = [z for z in loopback if z.ok and z.established is not None]
    for t in THRESHOLDS:
        gaps = [z.first_frame[t] - (z.established or 0.0) for z in base]
        first_chunks[t] = statistics.median(gaps) if gaps else float("nan")
    summary: dict[str, Any] = {"first_chunks": first_chunks, "conditions": {}}
    for condition, legs in results.items():
        rtts = [z.established for z in legs["nopush_warm"] if z.established is not None]
        rtt = statistics.median(rtts) if rtts else float("nan")
        entry: dict[str, Any] = {"rtt": rtt, "legs": {}, "thresholds": {}}
        if "no_cacher" in legs:
            cores = [z.established for z in legs["no_cacher"] if z.established is not None]
            entry["rtt_core"] = statistics.median(cores) if cores else float("nan")
        for leg, zaps in legs.items():
            good = [z for z in zaps if z.ok]
            stats: dict[str | int, Any] = {
                "zaps": len(zaps),
                "failed": len(zaps) - len(good),
                "early_push": sum(1 for z in zaps if z.early_push),
            }
            for t in THRESHOLDS:
                delays = [z.first_frame[t] for z in good]
                stats[t] = {
                    "median": statistics.median(delays) if delays else float("nan"),
                    "p95": percentile(delays, 95) if delays else float("nan"),
                    "round_trips": (
                        statistics.median(delays) / rtt if delays and rtt > 0 else float("nan")
                    ),
                }
            entry["legs"][leg] = stats
        for t in THRESHOLDS:
            push = entry["legs"]["push_warm"][t]
            bound = 1.5 * (rtt + first_chunks[t])
            th: dict[str, Any] = {"bound": bound, "p95_within_bound": push["p95"] <= bound}
            for leg in RATIO_LABELS:
                if leg in entry["legs"]:
                    th[f"ratio_{leg}"] = entry["legs"][leg][t]["median"] / push["median"]
            entry["thresholds"][t] = th
        summary["conditions"][condition] = entry
    return summary


def _rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for t in THRESHOLDS:
        rows.append(
            row(f"first {t} chunks: receive+verify back to back (loopback)",
                summary["first_chunks"][t] * 1e3, "ms")
        )  # fmt: skip
    for condition, entry in summary["conditions"].items():
        where = describe(condition)
        labels = TOPOLOGY_LABELS if condition == TOPOLOGY else LEG_LABELS
        rows.append(row(f"{where}: RTT viewer-cacher (handshake)", entry["rtt"] * 1e3, "ms"))
        if "rtt_core" in entry:
            rows.append(
                row(f"{where}: RTT viewer-source at the core (handshake)",
                    entry["rtt_core"] * 1e3, "ms")
            )  # fmt: skip
        for t in THRESHOLDS:
            for leg in entry["legs"]:
                stats = entry["legs"][leg][t]
                label = f"{where}, {t} chunks, {labels[leg]}"
                rows.append(row(f"{label}: median", stats["median"] * 1e3, "ms"))
                rows.append(row(f"{label}: p95", stats["p95"] * 1e3, "ms"))
                if condition == TOPOLOGY:
                    rows.append(
                        row(f"{label}: median in RTTs to the cacher", stats["round_trips"], "RTT")
                    )
            th = entry["thresholds"][t]
            met = "met" if th["p95_within_bound"] else "NOT met"
            rows.append(
                row(f"{where}, {t} chunks: bound 1.5 x (RTT + first chunks)", th["bound"] * 1e3,
                    "ms", f"push p95 <= bound: {met}")
            )  # fmt: skip
            for leg, what in RATIO_LABELS.items():
                if f"ratio_{leg}" not in th:
                    continue
                ratio = th[f"ratio_{leg}"]
                rows.append(
                    row(f"{where}, {t} chunks: {what} / push, medians", ratio, "x",
                        f">= 5x: {'met' if ratio >= 5 else 'NOT met'}")
                )  # fmt: skip
    return rows


def run(quick: bool = False) -> dict[str, Any]:
    zaps, first_contacts = (10, 4) if quick else (30, 10)
    load = os.getloadavg()
    started = time.perf_counter()
    results = asyncio.run(measure(zaps, first_contacts))
    results[TOPOLOGY] = asyncio.run(measure_topology(zaps))
    return report(results, zaps, first_contacts, time.perf_counter() - started, load)


def report(
    results: dict[str, dict[str, list[Zap]]],
    zaps: int,
    first_contacts: int,
    seconds: float,
    load: tuple[float, float, float],
) -> dict[str, Any]:
    """The benchmark result (rows and notes) of :func:`measure`'s zaps."""
    summary = summarize(results)
    notes = [
        f"{zaps} zaps per leg and condition over {WARM_CHANNELS} warm channels "
        f"({COLD_CHANNELS} cold ones), {first_contacts} first-contact zaps; channels of "
        f"{CHANNEL_CHUNKS} x {CHUNK} B chunks; cacher pushes {PUSH_HEAD}; startup thresholds "
        f"{'/'.join(str(t) for t in THRESHOLDS)} chunks; {seconds:.0f} s; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the start (2 cores shared)",
        "Viewer, cacher, storage overlay and tracker share this process and its event loop; "
        "the WAN leg delays viewer<->cacher and every storage-overlay hop (ppsp.linkemu).",
    ]
    if TOPOLOGY in results:
        notes.append(
            f"{describe(TOPOLOGY)}: the lab's areas topology in a lab of its own, the core "
            f"(tracker, storage overlay, source: a plain PPSPP seeder, no push) on {CORE_HOST}, "
            f"{AREA_DELAY * 1e3:g} ms one way viewer<->cacher and {CORE_DELAY * 1e3:g} ms "
            "area<->core, 0 inside the core (an emulator per host); no first-contact leg; "
            "the bound uses the loopback first-chunks time."
        )
    for condition, legs in results.items():
        for leg, zs in legs.items():
            failed = sum(1 for z in zs if not z.ok)
            early = sum(1 for z in zs if z.early_push)
            sent = statistics.median([z.cacher_bytes / CHUNK for z in zs]) if zs else 0.0
            stale = sum(z.stale_channels for z in zs)
            notes.append(
                f"{describe(condition)} / {leg}: {len(zs)} zaps, {failed} without a first frame "
                f"within {ZAP_TIMEOUT:g} s, {early} early-pushed by the cacher, median "
                f"{sent:.0f} KiB sent by the cacher by the {max(THRESHOLDS)}-chunk first frame"
                + (f"; {stale} channels of earlier zaps still open at the cacher" if stale else "")
            )
    for condition, entry in summary["conditions"].items():
        if condition == "loopback":
            continue
        for t in THRESHOLDS:
            th = entry["thresholds"][t]
            legs_t = {leg: stats[t]["round_trips"] for leg, stats in entry["legs"].items()}
            notes.append(
                f"{describe(condition)}, {t} chunks, medians in RTTs to the cacher: "
                + ", ".join(f"{leg} {v:.2f}" for leg, v in legs_t.items())
                + "; "
                + ", ".join(
                    f"{what} / push = {th[f'ratio_{leg}']:.2f}x"
                    for leg, what in RATIO_LABELS.items()
                    if f"ratio_{leg}" in th
                )
            )
    notes += _explanations(summary)
    return {"name": "fcc", "rows": _rows(summary), "notes": notes}


def _explanations(summary: dict[str, Any]) -> list[str]:
    """What the figures say, as far as it follows from them (the notes adapt to the run)."""
    out = [
        "Push, warm: the head follows the handshake reply in the same flush (one RTT to the "
        "first chunks); a first contact waits for the third datagram (RFC 7574 §3.1), one "
        "more. Without push, the REQUEST goes with the third datagram and the cacher's "
        "LEDBAT starts at cwnd = 2 datagrams and slow-starts (2, 4, 8 chunks per RTT), while "
        "a pushing channel opens at PUSH_INITIAL_WINDOW = 10: a startup threshold above 10 "
        "chunks takes a second round trip even with push.",
        "Cold, no hints: the cacher holds the viewer's third datagram (ACK + REQUEST) while "
        "it fetches the 64-chunk segment from the storage overlay (one hop: its RELOAD client "
        "attached to a storage peer), then pushes the head, now cached, with the initial "
        "window of 10 (push_head follows what is cached). 5x over push needs first chunks "
        "several RTTs away (LiveSky compares with a CDN without nearby copies): in the WAN "
        "conditions the storage overlay is as near as the cacher, in the areas topology it "
        "is at the core, 40 ms one way.",
    ]
    clean = [
        (name, entry)
        for name, entry in summary["conditions"].items()
        if name not in ("loopback", TOPOLOGY) and not any(j for n, _d, j in CONDITIONS if n == name)
    ]
    jittery = [
        (name, entry)
        for name, entry in summary["conditions"].items()
        if any(j for n, _d, j in CONDITIONS if n == name)
    ]
    for name, entry in clean:
        legs = entry["legs"]
        out.append(
            f"{describe(name)}: push to a viewer already talking to the cacher takes "
            f"{legs['push_warm'][8]['round_trips']:.2f} RTT to 8 chunks, a first contact "
            f"{legs['push_first_contact'][8]['round_trips']:.2f}, no push "
            f"{legs['nopush_warm'][8]['round_trips']:.2f}, a cold cacher "
            f"{legs['nopush_cold'][8]['round_trips']:.2f}."
        )
    for name, entry in jittery:
        legs = entry["legs"]
        push, nopush = legs["push_warm"][8]["median"], legs["nopush_warm"][8]["median"]
        if push > nopush:
            out.append(
                f"{describe(name)}: the push is slower than no push ({push * 1e3:.0f} vs "
                f"{nopush * 1e3:.0f} ms to 8 chunks). Per-datagram jitter reorders the push's "
                "first flight of 10 one-chunk datagrams (several DATA per datagram only after "
                "a probe is acknowledged, §8.1); a chunk that arrives before the hashes that "
                "prove it is dropped without an ACK and comes again after the retransmission "
                "timeout (>= 200 ms). The KiB the cacher sent show the retransmissions."
            )
        else:
            out.append(
                f"{describe(name)}: reordering by the jitter costs the push little: "
                f"{push * 1e3:.0f} ms vs {nopush * 1e3:.0f} ms without push, to 8 chunks."
            )
    topo = summary["conditions"].get(TOPOLOGY)
    if topo is not None:
        legs, th = topo["legs"], topo["thresholds"][8]
        out.append(
            f"{describe(TOPOLOGY)}, to 8 chunks: push {legs['push_warm'][8]['median'] * 1e3:.0f}"
            f" ms ({legs['push_warm'][8]['round_trips']:.2f} RTT to the cacher), a cold cacher "
            f"{legs['nopush_cold'][8]['median'] * 1e3:.0f} ms "
            f"({th['ratio_nopush_cold']:.1f}x: the fill crosses the core's round trip), no "
            f"cacher {legs['no_cacher'][8]['median'] * 1e3:.0f} ms ({th['ratio_no_cacher']:.1f}x:"
            " handshake, REQUEST and slow start all at the core's RTT), no push to a warm "
            f"cacher {legs['nopush_warm'][8]['median'] * 1e3:.0f} ms "
            f"({th['ratio_nopush_warm']:.1f}x: push saves the REQUEST round trip and LEDBAT's "
            "slow start, both at the short RTT to the cacher; that baseline already has the "
            "edge copy, which is what LiveSky's 5x is about)."
        )
    return out
