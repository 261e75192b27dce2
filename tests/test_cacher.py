"""The cacher daemon (issue 7 item 2, DESIGN F2–F5) on 127.0.0.1: a standalone tracker, a small
storage overlay with content published, and a cacher. Plus its sans-IO core and config."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import aiohttp
import pytest

from cacher.cache import ChunkCache
from cacher.config import CacherConfig, CacherConfigError, config_from_table, parse_size
from cacher.content import OverlaySegments, RequestGate, VodServing, segment_hashes
from cacher.core import SegmentGeometry, TrackerAction, TrackerSession, plan_fill
from cacher.daemon import Cacher
from portal.server import PortalServer
from ppsp.peer.aio import DownloadError, download, download_live, serve_live_source
from ppsp.peer.channel import Channel
from ppsp.peer.content import MemoryChunkStore, StaticContent
from ppsp.peer.endpoint import ChannelEstablished, Endpoint, Event, IntegrityFailed
from ppsp.peer.merkle import HashTree
from ppsp.peer.messages import MerkleHashFunction
from ppsp.peer.ranges import ChunkSet
from ppsp.tracker.client import UdpTrackerClient
from ppsp.tracker.config import TrackerDaemonConfig
from ppsp.tracker.messages import (
    Action,
    PeerMode,
    PushHint,
    PushHintMessage,
    Role,
    SwarmAction,
    swarm_id_hex,
)
from ppsp.tracker.server import TrackerServer, serve
from ppsp.tracker.state import PeerState, TrackerConfig
from reload.aio import OverlayNode, load_daemon_config
from reload.usages.client import ContentStore
from reload.usages.config import add_daemon, make_overlay_dir
from reload.usages.content import live_meta, segments_of, vod_meta
from reload.usages.values import ContentMeta, ContentSegment

OVERLAY = "cachelab"
SOURCE = f"node0@{OVERLAY}"
LENGTH = 3 * 64 * 1024 - 100  # 192 chunks in three 64-chunk segments, the last chunk short
HEAD = 16  # chunks the tracker hints and the cacher pushes
#: The p2pcdn command (lab.cli.main; ``-m lab.cli`` would load lab.cli twice).
P2PCDN = [sys.executable, "-c", "import sys; from lab.cli import main; sys.exit(main())"]


def content(size: int = LENGTH, seed: int = 7) -> tuple[bytes, HashTree]:
    data = random.Random(seed).randbytes(size)
    return data, HashTree.from_content(data, 1024, MerkleHashFunction.SHA256)


async def until(check: Callable[[], bool], what: str, timeout: float = 8.0) -> None:
    """Poll ``check`` every 20 ms, at most ``timeout`` seconds."""
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def start_tracker(port: int = 0) -> TrackerServer:
    config = TrackerDaemonConfig(
        udp=("127.0.0.1", port),
        tracker=TrackerConfig(hint_interval=0.2, hint_head_chunks=HEAD, global_info_interval=0.5),
    )
    return await serve(config)


async def start_overlay(root: Path, nodes: int = 2) -> list[OverlayNode]:
    started: list[OverlayNode] = []
    for path in make_overlay_dir(root, OVERLAY, nodes, "storage", link="tls"):
        node = OverlayNode.from_config(load_daemon_config(path))
        await node.start(join_timeout=15.0)
        started.append(node)
    return started


async def stop_all(
    running: Sequence[Cacher], nodes: Sequence[OverlayNode], tracker: TrackerServer
) -> None:
    """A test's teardown: its cachers, then the storage overlay, then the tracker."""
    for each in running:
        await each.close()
    for node in nodes:
        await node.close()
    tracker.close()
    await tracker.wait_closed()


async def publish(
    node: OverlayNode, name: str, data: bytes, tree: HashTree, corrupt: Sequence[int] = ()
) -> ContentMeta:
    meta = vod_meta(tree, name, SOURCE)
    store = ContentStore(node, SOURCE, timeout=10.0)
    await store.put_meta(meta)
    for segment in segments_of(meta, tree, data):
        if segment.index in corrupt:
            raw = bytearray(segment.data)
            raw[100] ^= 0xFF  # signed by the source, yet not the content: never to be served
            segment = dataclasses.replace(segment, data=bytes(raw))
        await store.put_segment(segment)
    return meta


async def publish_at_portal(portal: PortalServer, meta: ContentMeta) -> None:
    """The channel as the source publishes it at the portal (docs/usages.md, portal API)."""
    channel = {
        "name": meta.channel,
        "live": meta.live,
        "swarm_id": meta.swarm.hex(),
        "chunk_size": meta.chunk_size,
        "integrity": "unified-merkle-ecdsa-p256" if meta.live else "merkle-sha256",
        "source_user": meta.source,
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            portal.url + "api/v1/channels",
            json=channel,
            headers={"Authorization": "Bearer t0ken"},
        ) as reply,
    ):
        assert reply.status == 201, await reply.text()


def cacher_config(tmp: Path, tracker: TrackerServer, **kw: object) -> CacherConfig:
    config = CacherConfig(
        tracker=tracker.urls[0],
        area="east",
        cache_dir=tmp / "cacher",
        cache_size=4 * 1024 * 1024,
        sources=(SOURCE,),
        channels=(f"{SOURCE}/movie",),
        push_head=HEAD,
        keepalive=2.0,
        report_delay=0.05,
        fsync=False,
        peer_id="cacher-east",
    )
    for key, value in kw.items():
        setattr(config, key, value)
    return config.check()


def held_at_tracker(server: TrackerServer, peer: str, swarm: bytes) -> ChunkSet:
    got = server.tracker.availability(peer, swarm_id_hex(swarm))
    return got if got is not None else ChunkSet()


def test_cacher_reports_prefetches_on_hints_fills_misses_and_restores_after_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cacher")
    data, tree = content()
    swarm = tree.root_hash

    async def run() -> None:
        tracker = await start_tracker()
        nodes = await start_overlay(tmp_path / "overlay")
        viewer = UdpTrackerClient(tracker.addresses["udp"], "viewer-1", timeout=3.0)
        running: list[Cacher] = []
        try:
            await publish(nodes[0], "movie", data, tree)
            config = cacher_config(tmp_path, tracker)
            cacher = Cacher(config, meta_store=OverlaySegments(nodes[1], "reader"))
            running.append(cacher)
            await cacher.start()
            peer = cacher.peer_id
            # F2: registered with role CACHER and its area; the batch report held nothing.
            await until(
                lambda: tracker.tracker.peer_state(peer) is PeerState.TRACKING, "registration"
            )
            assert cacher.stats["batch_reports"] >= 1
            await until(lambda: swarm in cacher.metas, "channel metadata from the overlay")
            assert swarm in cacher.servings  # pull-through from now on, before any hint
            assert cacher.carried == set()  # it follows hints: announced once cached
            # Hostile input changes nothing: junk datagrams, push hints naming junk swarms.
            junk = random.Random(3)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for _ in range(300):
                    sock.sendto(junk.randbytes(junk.randrange(0, 200)), cacher.address)
            cacher._on_push(
                PushHintMessage(
                    "1", [PushHint("not-hex", 0, 1 << 40), PushHint(junk.randbytes(32).hex(), 5, 1)]
                )
            )
            assert list(cacher.policy.heat) == []  # nothing there named a swarm and a head

            # F4: a viewer in the cacher's area makes the swarm hot; the tracker hints the head
            # and the cacher prefetches it from the overlay, then reports it incrementally.
            await viewer.connect(
                [SwarmAction(swarm_id_hex(swarm), Action.JOIN, PeerMode.LEECH)],
                role=Role.CSC,
                area="east",
            )
            await until(
                lambda: held_at_tracker(tracker, peer, swarm).contains_range(0, HEAD - 1),
                "the hinted head at the tracker",
            )
            assert cacher.stats["push_hints"] >= 1
            assert cacher.stats["delta_reports"] >= 1
            serving = cacher.servings[swarm]
            # The head segment, and the last one (its proof carries the peak hashes, needed
            # before anything is served, RFC 7574 §5.6), not the body.
            assert serving.cached.have == ChunkSet([(0, 63), (128, 191)])
            ppspp_swarm = cacher.node.endpoint.swarms[swarm]
            assert ppspp_swarm.push_head == HEAD  # the cached head is pushed (F4)

            # F5: global info from the tracker reaches the policy (one viewer).
            await until(lambda: swarm in cacher.policy.heat, "global info")
            await until(lambda: cacher.policy.heat[swarm].viewers == 1, "the viewer count")

            # F3: a PPSPP leecher gets the whole content from the cacher, verified; the
            # misses (segment 1, the middle) are filled from the overlay on demand. The
            # cached head was pushed right after the handshake (F4).
            channels: list[Channel] = []

            def on_event(event: Event) -> None:
                if isinstance(event, ChannelEstablished):
                    channels.append(cacher.node.endpoint.channels[event.channel])

            cacher.node.listeners.append(on_event)
            out = tmp_path / "got.bin"
            result = await download(swarm, [cacher.address], out, timeout=15.0)
            assert out.read_bytes() == data and result.size == LENGTH
            assert [ch.chunks_pushed for ch in channels] == [HEAD]
            assert cacher.stats["held_requests"] >= 1
            assert serving.cached.have.contains_range(0, 191)
            await until(
                lambda: held_at_tracker(tracker, peer, swarm).contains_range(0, 191),
                "the filled chunks at the tracker",
            )

            # Restart while the tracker still tracks the cacher's peer ID: the batch CONNECT is
            # refused entry by entry (RFC 7846 Table 6), the same snapshot goes as STAT_REPORT.
            await cacher.abort()
            running.remove(cacher)
            cacher = Cacher(config, meta_store=OverlaySegments(nodes[1], "reader"))
            running.append(cacher)
            await cacher.start()
            await until(lambda: cacher.session.connected, "the reconnect")
            assert cacher.stats["batch_reports"] == 1 and cacher.session.failures == 0
            assert held_at_tracker(tracker, peer, swarm).contains_range(0, 191)
            # ... and a FIND (F3) lists it, in the viewer's area, at its new PPSPP port.
            found = await viewer.find(swarm_id_hex(swarm), area="east")
            listed = [p for r in found.swarm_results for p in r.peers or [] if p.peer_id == peer]
            assert [(a.ip, a.port) for a in listed[0].addresses] == [cacher.address]
            assert listed[0].role is Role.CACHER and listed[0].area == "east"

            # Restart: the cacher dies (no LEAVE, no final commit) and the tracker restarts
            # too, so it knows nothing; the new cacher on the same cache directory comes back
            # with every chunk and its batch report restores the tracker's view.
            await cacher.abort()
            running.remove(cacher)
            udp = tracker.addresses["udp"]
            tracker.close()
            await tracker.wait_closed()
            tracker = await start_tracker(udp[1])
            assert held_at_tracker(tracker, peer, swarm).is_empty()
            caplog.clear()
            cacher = Cacher(config, meta_store=OverlaySegments(nodes[1], "reader"))
            running.append(cacher)
            await cacher.start()
            assert cacher.restored == {swarm: 192}
            assert "cache holds 1 swarm(s)" in caplog.text
            await until(
                lambda: held_at_tracker(tracker, peer, swarm).contains_range(0, 191),
                "the batch report after the restart",
            )
            assert tracker.tracker.swarms_of(peer) == {swarm_id_hex(swarm): PeerMode.SEEDER}
            # ... and serves from the disk cache alone.
            again = tmp_path / "again.bin"
            await download(swarm, [cacher.address], again, timeout=10.0)
            assert again.read_bytes() == data
            assert cacher.stats["held_requests"] == 0
            assert cacher.servings[swarm].segments_filled == 0
        finally:
            await viewer.close()
            await stop_all(running, nodes, tracker)

    asyncio.run(run())


def test_a_corrupted_segment_is_never_cached_nor_served(tmp_path: Path) -> None:
    data, tree = content(seed=9)
    swarm = tree.root_hash

    async def run() -> None:
        tracker = await start_tracker()
        nodes = await start_overlay(tmp_path / "overlay")
        running: list[Cacher] = []
        try:
            await publish(nodes[0], "movie", data, tree, corrupt=[1])
            config = cacher_config(tmp_path, tracker, readahead=0)
            cacher = Cacher(config, meta_store=OverlaySegments(nodes[1], "reader"))
            running.append(cacher)
            await cacher.start()
            await until(lambda: swarm in cacher.metas and swarm in cacher.servings, "metadata")
            out = tmp_path / "got.bin"
            with pytest.raises(DownloadError) as failed:
                await download(swarm, [cacher.address], out, timeout=4.0)
            # The leecher timed out waiting for segment 1: it never got a chunk that failed
            # verification (that would be an IntegrityFailure and a dropped channel).
            assert "integrity" not in str(failed.value)
            serving = cacher.servings[swarm]
            assert serving.segments_failed >= 1
            assert serving.cached.have.contains_range(0, 63)
            assert serving.cached.have.contains_range(128, 191)
            assert not serving.cached.have.overlaps(64, 127)
            assert not any(64 <= c <= 127 for c in serving.memory)
            assert not held_at_tracker(tracker, cacher.peer_id, swarm).overlaps(64, 127)
        finally:
            await stop_all(running, nodes, tracker)

    asyncio.run(run())


def test_a_small_cache_serves_on_demand_evicts_and_reports_evictions(tmp_path: Path) -> None:
    data, tree = content(seed=13)
    swarm = tree.root_hash

    async def run() -> None:
        tracker = await start_tracker()
        nodes = await start_overlay(tmp_path / "overlay")
        portal = PortalServer("t0ken")
        running: list[Cacher] = []
        try:
            meta = await publish(nodes[0], "movie", data, tree)
            await portal.start("127.0.0.1", 0)
            await publish_at_portal(portal, meta)
            # Room for two of the three segments: the third evicts (or is served uncached).
            # No channel configured: the cacher learns of the swarm from the CSC's handshake
            # and finds its channel at the portal (its first handshake goes unanswered).
            config = cacher_config(
                tmp_path,
                tracker,
                cache_size=130 * 1024,
                readahead=0,
                channels=(),
                portal=portal.url,
            )
            cacher = Cacher(config, meta_store=OverlaySegments(nodes[1], "reader"))
            running.append(cacher)
            await cacher.start()
            assert swarm not in cacher.servings
            out = tmp_path / "got.bin"
            await download(swarm, [cacher.address], out, timeout=15.0)
            assert out.read_bytes() == data
            cached = cacher.servings[swarm].cached
            assert cacher.cache.used_bytes <= 130 * 1024
            assert 0 < cached.have.count < 192
            # The tracker's view follows the evictions (incremental reports, F2).
            await until(
                lambda: held_at_tracker(tracker, cacher.peer_id, swarm) == cached.have,
                "the tracker's view to match the cache",
            )
        finally:
            await portal.close()
            await stop_all(running, nodes, tracker)

    asyncio.run(run())


def test_a_live_hint_makes_the_cacher_follow_the_live_edge_and_relay_it(tmp_path: Path) -> None:
    stream = random.Random(11).randbytes(1024 * 1500)

    async def run() -> None:
        tracker = await start_tracker()
        nodes = await start_overlay(tmp_path / "overlay")
        viewer = UdpTrackerClient(tracker.addresses["udp"], "viewer-2", timeout=3.0)
        portal = PortalServer("t0ken")
        feed = asyncio.StreamReader()
        source = await serve_live_source(feed, ("127.0.0.1", 0), chunks_per_signature=16)
        running: list[Cacher] = []

        async def pump() -> None:
            for offset in range(0, len(stream), 1024):  # 500 chunks/s for 3 s
                feed.feed_data(stream[offset : offset + 1024])
                await asyncio.sleep(0.002)
            feed.feed_eof()

        pumping = asyncio.get_running_loop().create_task(pump())
        try:
            swarm = source.swarm_id
            meta = live_meta(swarm, "news", SOURCE, sources=[source.address])
            await ContentStore(nodes[0], SOURCE, timeout=10.0).put_meta(meta)
            # The cacher knows no channel: the hint's swarm ID is looked up at the portal.
            await portal.start("127.0.0.1", 0)
            await publish_at_portal(portal, meta)
            config = cacher_config(tmp_path, tracker, channels=(), portal=portal.url)
            cacher = Cacher(config, meta_store=OverlaySegments(nodes[1], "reader"))
            running.append(cacher)
            await cacher.start()
            await viewer.connect(
                [SwarmAction(swarm_id_hex(swarm), Action.JOIN, PeerMode.LEECH)],
                role=Role.CSC,
                area="east",
            )
            await until(lambda: swarm in cacher.live, "following the live channel")
            assert cacher.metas[swarm] == meta
            await until(
                lambda: held_at_tracker(tracker, cacher.peer_id, swarm).count >= 32,
                "live chunks reported to the tracker",
            )
            # A CSC tunes in at the cacher and gets the stream, verified, from it alone.
            out = io.BytesIO()
            watching = asyncio.get_running_loop().create_task(
                download_live(swarm, [cacher.address], out, timeout=5.0, chunks_per_signature=16)
            )
            await until(lambda: out.tell() >= 64 * 1024, "the live stream via the cacher")
            watching.cancel()
            got = out.getvalue()
            start = stream.find(got[:1024])
            assert start >= 0 and start % (16 * 1024) == 0  # tuned in at a munro (§6.1.2.4)
            assert got == stream[start : start + len(got)]
            cached = cacher.cache.get(swarm)
            assert cached is not None and cached.have.count >= 32
        finally:
            pumping.cancel()
            await portal.close()
            source.close()
            await viewer.close()
            await stop_all(running, nodes, tracker)

    asyncio.run(run())


def test_the_daemon_killed_and_restarted_comes_back_with_its_cache(tmp_path: Path) -> None:
    """``p2pcdn cacher --config``, joining the storage overlay as a RELOAD client from its own
    daemon TOML; SIGKILL, restart on the same cache, SIGTERM (exit 0)."""
    data, tree = content(seed=5)
    swarm = tree.root_hash

    async def start_daemon(toml: Path) -> tuple[asyncio.subprocess.Process, tuple[str, int]]:
        proc = await asyncio.create_subprocess_exec(
            *P2PCDN, "cacher", "--config", str(toml), stdout=asyncio.subprocess.PIPE
        )
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20.0)).decode().strip()
        host, _, port = line.rpartition(":")
        return proc, (host, int(port))

    async def run() -> None:
        tracker = await start_tracker()
        nodes = await start_overlay(tmp_path / "overlay")
        procs: list[asyncio.subprocess.Process] = []
        try:
            await publish(nodes[0], "movie", data, tree)
            assert nodes[0].address is not None
            client = add_daemon(
                tmp_path / "overlay",
                "cacher",
                "cacher@lab",
                client=True,
                bootstrap=[nodes[0].address],
            )
            toml = tmp_path / "cacher.toml"
            toml.write_text(
                "[cacher]\n"
                f'tracker = "{tracker.urls[0]}"\n'
                'area = "east"\nlisten = "127.0.0.1:0"\ncache_dir = "cache"\n'
                f'storage_overlay = "{client}"\nsources = ["{SOURCE}"]\n'
                f'channels = ["{SOURCE}/movie"]\nfsync = false\nreport_delay = 0.05\n'
            )
            proc, address = await start_daemon(toml)
            procs.append(proc)
            peer = (tmp_path / "cache" / "peer-id").read_text().strip()
            await download(swarm, [address], tmp_path / "one.bin", timeout=15.0)
            assert (tmp_path / "one.bin").read_bytes() == data
            await until(
                lambda: held_at_tracker(tracker, peer, swarm).contains_range(0, 191),
                "the filled chunks at the tracker",
            )
            proc.kill()
            await asyncio.wait_for(proc.wait(), 10.0)
            udp = tracker.addresses["udp"]
            tracker.close()
            await tracker.wait_closed()
            tracker = await start_tracker(udp[1])  # knows nothing
            proc, address = await start_daemon(toml)
            procs.append(proc)
            await until(
                lambda: held_at_tracker(tracker, peer, swarm).contains_range(0, 191),
                "the batch report of the restarted daemon",
            )
            await download(swarm, [address], tmp_path / "two.bin", timeout=15.0)
            assert (tmp_path / "two.bin").read_bytes() == data
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15.0) == 0
            assert tracker.tracker.swarms_of(peer) == {}  # it left the swarm on its way out
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            await stop_all([], nodes, tracker)

    asyncio.run(run())


# --- the request gate, sans sockets ---------------------------------------------------------


class FakeSegments:
    """Segments straight from the publisher's cut, some of them corrupted (a hostile overlay
    node whose answers were not checked on the way: the cache's tree must catch them)."""

    def __init__(self, segments: Sequence[ContentSegment], corrupt: Sequence[int] = ()) -> None:
        self.segments = list(segments)
        self.corrupt = set(corrupt)
        self.fetches: list[int] = []

    async def get_segment_value(self, meta: ContentMeta, index: int) -> ContentSegment:
        self.fetches.append(index)
        segment = self.segments[index]
        if index in self.corrupt:
            raw = bytearray(segment.data)
            raw[-1] ^= 0x55
            segment = dataclasses.replace(segment, data=bytes(raw))
        return segment


@pytest.mark.parametrize("corrupt", [(), (1,)])
def test_request_gate_fills_before_serving_and_never_serves_unverified(
    tmp_path: Path, corrupt: tuple[int, ...]
) -> None:
    data, tree = content(seed=21)
    meta = vod_meta(tree, "movie", SOURCE)
    source = FakeSegments(list(segments_of(meta, tree, data)), corrupt)
    cacher_addr, leecher_addr = ("10.0.0.1", 1), ("10.0.0.2", 2)

    async def run() -> None:
        clock = [0.0]
        cache = ChunkCache(tmp_path / "chunks", 1 << 20, durable=False)
        serving = VodServing(meta, cache, source, clock=lambda: clock[0])
        cacher = Endpoint(path_mtu=lambda _a: 1500)
        cacher.add_swarm(serving.params, serving.content)
        gate = RequestGate(cacher, {meta.swarm: serving})
        leecher = Endpoint(path_mtu=lambda _a: 1500)
        got = StaticContent(
            HashTree.for_root(meta.swarm, 1024, MerkleHashFunction.SHA256), MemoryChunkStore(1024)
        )
        leecher.add_swarm(serving.params, got)
        leecher.connect(meta.swarm, cacher_addr, 0.0)
        held_back = 0
        for _ in range(400):  # bounded: 400 steps of 10 ms of virtual time
            now = clock[0]
            for dgram, _addr in leecher.datagrams_to_send(now):
                passed, held = gate.inspect(dgram, leecher_addr)
                if passed is not None:
                    cacher.receive(passed, leecher_addr, now)
                if held is not None:
                    held_back += 1
                    await serving.fill(serving.plan(held.requests, 0))
                    released = gate.release(held)
                    if released is not None:
                        cacher.receive(released, leecher_addr, now)
            for dgram, _addr in cacher.datagrams_to_send(now):
                leecher.receive(dgram, cacher_addr, now)
            events = leecher.pop_events()
            assert not [e for e in events if isinstance(e, IntegrityFailed)]
            if got.complete:
                break
            clock[0] += 0.01
            leecher.handle_timer(clock[0])
            cacher.handle_timer(clock[0])
        assert held_back >= 1
        if not corrupt:
            assert got.complete and got.storage.content() == data  # type: ignore[attr-defined]
            assert sorted(set(source.fetches)) == [0, 1, 2]
        else:
            assert not got.complete and not got.have.overlaps(64, 127)
            assert got.have.contains_range(0, 63) and got.have.contains_range(128, 191)
            assert not serving.cached.have.overlaps(64, 127) and serving.segments_failed >= 1
            assert len(source.fetches) <= 8  # held off after the failure (no fetch storm)
        cache.close()

    asyncio.run(run())


# --- sans-IO core --------------------------------------------------------------------------


def test_tracker_session_batch_on_connect_deltas_keepalives_and_backoff() -> None:
    s = TrackerSession(keepalive=10.0, report_delay=0.5, retry_min=1.0, retry_max=4.0, now=0.0)
    assert s.due(0.0) is TrackerAction.BATCH
    s.begin(TrackerAction.BATCH)
    s.sent(TrackerAction.BATCH, 0.0)
    assert s.due(1.0) is None and s.next_deadline() == 10.0
    s.on_changes(2.0)
    s.on_changes(2.2)  # coalesced into one report
    assert s.due(2.4) is None and s.due(2.5) is TrackerAction.DELTA
    s.begin(TrackerAction.DELTA)
    s.on_changes(2.6)  # while the report is on its way: reported after it
    s.sent(TrackerAction.DELTA, 2.7)
    assert s.due(3.0) is None and s.due(3.1) is TrackerAction.DELTA
    s.begin(TrackerAction.DELTA)
    s.sent(TrackerAction.DELTA, 2.5)
    assert s.due(12.4) is None and s.due(12.5) is TrackerAction.KEEPALIVE
    # Failures: the batch again, with exponential backoff up to retry_max.
    s.failed(20.0)
    assert not s.connected and s.due(20.5) is None and s.due(21.0) is TrackerAction.BATCH
    s.failed(21.0)
    assert s.due(22.9) is None and s.due(23.0) is TrackerAction.BATCH
    for t in (23.0, 27.0, 31.0):
        s.failed(t)
    assert s.next_deadline() == 35.0  # capped at 4 s
    s.sent(TrackerAction.BATCH, 35.0)
    assert s.connected and s.batches_sent == 2
    s.on_changes(36.0)
    s.reconnect()  # the tracker forgot us: the batch at once carries the changes too
    assert s.due(36.0) is TrackerAction.BATCH
    # Asked again while a batch is on its way (what it carries changed): one more after it.
    s.begin(TrackerAction.BATCH)
    s.reconnect()
    s.sent(TrackerAction.BATCH, 36.1)
    assert not s.connected and s.due(36.1) is TrackerAction.BATCH
    s.begin(TrackerAction.BATCH)
    s.sent(TrackerAction.BATCH, 36.2)
    assert s.connected and s.due(36.3) is None


def test_plan_fill_covers_misses_reads_ahead_fetches_peaks_first_and_is_bounded() -> None:
    g = SegmentGeometry(chunks=200, segment_chunks=64)  # segments 0..3, the last 8 chunks
    assert g.segments == 4 and g.chunks_of(3) == (192, 199)
    held = ChunkSet([(0, 63)])
    assert plan_fill(g, [(10, 20)], held) == []  # held: nothing to fetch
    assert plan_fill(g, [(60, 70)], held, readahead=1) == [1, 2]
    assert plan_fill(g, [(60, 70)], held, readahead=0, peaks_known=False) == [3, 1]
    assert plan_fill(g, [(190, 10_000)], held, readahead=3) == [2, 3]  # clipped to the content
    assert plan_fill(g, [(0, 199)], ChunkSet(), readahead=0, limit=2) == [0, 1]
    assert plan_fill(g, [(5, 1)], ChunkSet()) == []


def test_segment_hashes_let_the_tree_verify_and_learn_every_peak() -> None:
    data, tree = content(200 * 1024 - 10, seed=3)  # 200 chunks: peaks 0-127, 128-191, 192-199
    meta = vod_meta(tree, "film", SOURCE)
    segments = list(segments_of(meta, tree, data))
    fresh = HashTree.for_root(tree.root_hash, 1024, MerkleHashFunction.SHA256)
    fresh.set_content_length(len(data))
    last = segments[-1]
    uncles = segment_hashes(meta, last)
    for k in range(len(last.data) // 1024 + 1):
        chunk = last.first_chunk + k
        assert fresh.check_chunk(chunk, last.data[k * 1024 : (k + 1) * 1024], uncles) is True
    assert len(fresh.peaks()) == len(fresh.peak_bins()) == 3  # the last segment gave them all
    bad = bytearray(segments[1].data)
    bad[0] ^= 1
    forged = dataclasses.replace(segments[1], data=bytes(bad))
    assert fresh.check_chunk(64, forged.data[:1024], segment_hashes(meta, forged)) is False


def test_config_file_flags_and_errors(tmp_path: Path) -> None:
    table = {
        "tracker": "ppsp-udp://127.0.0.1:7846",
        "listen": "127.0.0.1:0",
        "cache_dir": "c",
        "cache_size": "64MiB",
        "sources": ["src@lab"],
        "channels": ["src@lab/a"],
        "log_level": "debug",
    }
    config = config_from_table(table, tmp_path).check()
    assert config.cache_dir == tmp_path / "c" and config.cache_size == 64 << 20
    assert config.listen == ("127.0.0.1", 0) and config.log_level == logging.DEBUG
    assert parse_size(1000) == 1000 and parse_size("2 KiB") == 2048 and parse_size("1GB") == 1 << 30
    for bad in (
        {**table, "tracker": "http://127.0.0.1:7846/"},  # push hints need binary PPSP-TP
        {**table, "cache_size": "lots"},
        {**table, "channels": ["nobody/a"]},  # not a trusted source
        {**table, "colour": "blue"},
        {key: value for key, value in table.items() if key != "tracker"},
    ):
        with pytest.raises(CacherConfigError):
            config_from_table(bad, tmp_path).check()
    toml = tmp_path / "cacher.toml"
    toml.write_text('[cacher]\ntracker = "ppsp-udp://127.0.0.1:1"\npush_head = 8\n')
    help_text = subprocess.run(
        [*P2PCDN, "cacher", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "--storage-overlay" in help_text and "--config" in help_text
    usage = subprocess.run(
        [*P2PCDN, "cacher", "--config", str(toml), "--push-head", "-1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert usage.returncode == 2 and "push_head" in usage.stderr


def test_a_plain_cache_announces_its_channels_before_caching(tmp_path: Path) -> None:
    data, tree = content(3 * 64 * 1024, seed=5)

    async def run() -> None:
        tracker = await start_tracker()
        nodes = await start_overlay(tmp_path / "overlay")
        try:
            await publish(nodes[0], "movie", data, tree)
            config = cacher_config(tmp_path, tracker, follow_hints=False)
            cacher = Cacher(config, meta_store=OverlaySegments(nodes[1], "reader"))
            await cacher.start()
            try:
                swarm = swarm_id_hex(tree.root_hash)
                # Carried whole: a SEEDER whose chunks are not enumerated (RFC 7846's plain
                # seeder), named by FIND before a chunk is cached; misses fill it.
                await until(
                    lambda: tracker.tracker.swarms_of(cacher.peer_id) == {swarm: PeerMode.SEEDER},
                    "the carried channel announced",
                )
                assert tracker.tracker.availability(cacher.peer_id, swarm) is None
                out = tmp_path / "got"
                await download(tree.root_hash, [cacher.address], out, timeout=10.0)
                assert out.read_bytes() == data
            finally:
                await cacher.close()
        finally:
            await stop_all([], nodes, tracker)

    asyncio.run(run())


@pytest.mark.parametrize("follow", [True, False])
def test_follow_hints_false_makes_a_plain_cache(tmp_path: Path, follow: bool) -> None:
    # follow_hints = false (the lab's "no push hints" phase): hints change nothing.
    table = {"tracker": "ppsp-udp://127.0.0.1:1", "push_head": 0, "follow_hints": follow}
    config = config_from_table(table, tmp_path).check()

    async def hint() -> Cacher:
        cacher = Cacher(config)
        cacher._on_push(PushHintMessage("1", [PushHint("ab" * 32, 0, 63)]))
        return cacher

    cacher = asyncio.run(hint())
    assert cacher.stats["push_hints"] == 1
    assert bool(cacher.policy.heat) is follow
    with pytest.raises(CacherConfigError, match="follow_hints must be true or false"):
        config_from_table({**table, "follow_hints": "no"}, tmp_path)
