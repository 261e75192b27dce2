"""The content sharing client (csc/): the sans-IO core with injected time, the configuration,
and the whole CSC on 127.0.0.1 against the portal (in-process), a standalone tracker and
PPSPP seeders standing in for the cacher (DESIGN F3, F4): watch, zap with and without push,
a peer sending garbage, the cacher dying mid-stream (rescue from the storage overlay, or
from the source), and the ``p2pcdn csc`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

import lab.cli as cli
from csc.client import CscClient
from csc.config import CscConfig, CscConfigError, config_from_table, load_config
from csc.core import (
    DEFAULT_PEER_DELAY,
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
from ppsp import linkemu
from ppsp.peer.aio import PeerNode
from ppsp.peer.content import MemoryChunkStore, StaticContent, SwarmParameters
from ppsp.peer.merkle import HashTree
from ppsp.peer.messages import IntegrityMethod, MerkleHashFunction
from ppsp.peer.ranges import ChunkSet
from ppsp.tracker.client import UdpTrackerClient
from ppsp.tracker.config import TrackerDaemonConfig
from ppsp.tracker.messages import Action, PeerAddress, PeerMode, Role, SwarmAction
from ppsp.tracker.server import TrackerServer, serve
from ppsp.tracker.state import TrackerConfig

REPO = Path(__file__).resolve().parent.parent
TOKEN = "csc-test-token"
AREA = "east"
CHUNK = 1024
T = TypeVar("T")
Address = tuple[str, int]


def run(coro: Awaitable[T], timeout: float = 30.0) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(main())


def info(name: str = "a", chunks: int = 64, **kw: Any) -> ChannelInfo:
    return ChannelInfo(
        name=name,
        live=False,
        swarm_id=bytes(32),
        chunk_size=CHUNK,
        integrity="merkle",
        length=kw.pop("length", chunks * CHUNK),
        bitrate=kw.pop("bitrate", 1_000_000),
        **kw,
    )


# -- the core (sans-IO, injected time) --------------------------------------------------------


def test_zap_finds_peers_cacher_first_and_remembers_cachers() -> None:
    core = CscCore(startup_seconds=0.1, starvation_timeout=1.0)
    assert core.zap(info("a"), 0.0) == [FindPeers("a")]
    peer, cacher = ("10.0.0.2", 1), ("10.0.0.1", 1)
    actions = core.on_peers(
        "a", [PeerCandidate(peer, Origin.PEER), PeerCandidate(cacher, Origin.CACHER)], 0.1
    )
    # Cacher first: the peer waits until the first frame or DEFAULT_PEER_DELAY after the zap.
    assert actions == [ConnectPeer("a", cacher, Origin.CACHER)]
    assert core.on_peers("a", [PeerCandidate(peer, Origin.PEER)], 0.2) == []  # no duplicate
    assert core.next_timer() == pytest.approx(DEFAULT_PEER_DELAY)
    assert core.handle_timer(DEFAULT_PEER_DELAY) == [ConnectPeer("a", peer, Origin.PEER)]
    assert core.on_peers("a", [PeerCandidate(peer, Origin.PEER)], 0.3) == []
    # The next channel change contacts the known cacher at once (F4), then asks the tracker.
    assert core.zap(info("b"), 1.0) == [ConnectPeer("b", cacher, Origin.CACHER), FindPeers("b")]
    # Late events of the channel left are ignored.
    assert not core.on_chunk("a", 0, cacher, 1.1)


def test_peers_join_at_the_first_frame_from_the_cacher() -> None:
    core = CscCore(startup_seconds=0.008)  # one chunk
    core.zap(info("a"), 0.0)
    cacher, peer = ("10.0.0.1", 1), ("10.0.0.2", 1)
    named = [PeerCandidate(cacher, Origin.CACHER), PeerCandidate(peer, Origin.PEER)]
    assert core.on_peers("a", named, 0.01) == [ConnectPeer("a", cacher, Origin.CACHER)]
    core.on_chunk("a", 0, cacher, 0.02)  # pushed head: first frame
    assert core.next_timer() == 0.0  # release the peers now
    assert core.handle_timer(0.02) == [ConnectPeer("a", peer, Origin.PEER)]
    # Without a cacher named, peers are connected at once.
    core.zap(info("b"), 1.0)
    assert core.on_peers("b", [PeerCandidate(peer, Origin.PEER)], 1.01) == [
        ConnectPeer("b", peer, Origin.PEER)
    ]


def test_another_areas_viewers_wait_for_starvation_when_ours_are_named() -> None:
    """Locality for plain peers: with anyone of our area named, viewers of other areas are
    only the help of a starving moment; named alone, they serve at once."""
    core = CscCore(startup_seconds=0.1, starvation_timeout=1.0, peer_delay=0.0)
    core.zap(info("a"), 0.0)
    near, far = ("10.0.1.2", 1), ("10.0.2.2", 1)
    named = [PeerCandidate(far, Origin.PEER, remote=True), PeerCandidate(near, Origin.PEER)]
    assert core.on_peers("a", named, 0.01) == [ConnectPeer("a", near, Origin.PEER)]
    # A later answer naming only the far viewer still holds it back: ours was named.
    assert core.on_peers("a", [PeerCandidate(far, Origin.PEER, remote=True)], 0.5) == []
    rescue = core.handle_timer(1.02)  # the near one delivered nothing for starvation_timeout
    assert ConnectPeer("a", far, Origin.PEER) in rescue
    core.zap(info("b"), 2.0)
    got = core.on_peers("b", [PeerCandidate(far, Origin.PEER, remote=True)], 2.01)
    assert got == [ConnectPeer("b", far, Origin.PEER)]


def test_another_areas_cacher_waits_for_starvation_when_ours_is_named() -> None:
    """Locality: with a cacher of our area named, another area's cacher is neither connected
    nor remembered for later zaps; it is the first help when we starve, before the source.
    Named alone, it serves like our own."""
    core = CscCore(startup_seconds=0.1, starvation_timeout=1.0)
    core.zap(info("a"), 0.0)
    ours, theirs = ("10.0.1.1", 1), ("10.0.2.1", 1)
    named = [
        PeerCandidate(theirs, Origin.CACHER, remote=True),
        PeerCandidate(ours, Origin.CACHER),
    ]
    assert core.on_peers("a", named, 0.01) == [ConnectPeer("a", ours, Origin.CACHER)]
    assert core.cachers == [ours]
    assert core.handle_timer(0.5) == []  # not released with the plain peers
    rescue = core.handle_timer(1.02)  # ours delivered nothing for starvation_timeout
    assert ConnectPeer("a", theirs, Origin.CACHER) in rescue
    # Alone in the answer, another area's cacher is connected at once, but not remembered.
    core.zap(info("b"), 2.0)
    got = core.on_peers("b", [PeerCandidate(theirs, Origin.CACHER, remote=True)], 2.01)
    assert got == [ConnectPeer("b", theirs, Origin.CACHER)]
    assert core.cachers == [ours]


def test_verified_chunks_play_bytes_by_origin_and_startup_delay() -> None:
    core = CscCore(startup_seconds=0.016)  # two chunks at 1 Mbit/s
    core.zap(info("a", chunks=4), 10.0)
    cacher, peer = ("10.0.0.1", 1), ("10.0.0.2", 1)
    core.on_peers("a", [PeerCandidate(cacher, Origin.CACHER), PeerCandidate(peer, Origin.PEER)], 10)
    core.on_channel_up("a", cacher, 10.02)
    assert core.on_chunk("a", 0, cacher, 10.05)
    assert not core.on_chunk("a", 0, peer, 10.05)  # counted once, for the first origin
    assert core.on_chunk("a", 1, peer, 10.06)
    assert core.on_segment("a", 0, [b"x" * CHUNK] * 4, 10.07) == 2  # chunks 2, 3
    core.handle_timer(10.2)
    (report,) = core.reports()
    assert report.startup_delay == pytest.approx(0.06)
    assert report.handshake_delay == pytest.approx(0.02)
    assert report.bytes == {
        Origin.CACHER: CHUNK,
        Origin.PEER: CHUNK,
        Origin.OVERLAY: 2 * CHUNK,
        Origin.SOURCE: 0,
    }
    assert core.ended() and report.ended
    summary = core.summary()
    assert summary["q1"] == 1.0 and summary["q2"] == 1.0
    assert summary["bytes"]["overlay"] == 2 * CHUNK


def test_stall_events_are_reported_with_their_time_and_length() -> None:
    core = CscCore(startup_seconds=0.016)  # two chunks (8 ms each) at 1 Mbit/s
    core.zap(info("a", chunks=8), 10.0)
    cacher = ("10.0.0.1", 1)
    core.on_peers("a", [PeerCandidate(cacher, Origin.CACHER)], 10.0)
    core.on_chunk("a", 0, cacher, 10.01)
    core.on_chunk("a", 1, cacher, 10.02)  # first frame; 16 ms of media
    core.handle_timer(10.1)  # ran dry at 10.036
    core.on_chunk("a", 2, cacher, 10.2)
    core.on_chunk("a", 3, cacher, 10.2)  # rebuffered: resumes
    core.handle_timer(10.21)
    (channel,) = core.summary()["channels"]
    assert channel["stalls"] == 1
    assert channel["stall_events"] == [[0.036, 0.164]]


def test_starvation_starts_a_rescue_and_peers_end_it() -> None:
    core = CscCore(startup_seconds=0.008, starvation_timeout=0.5, refind_interval=1.0, overlay=True)
    # 100 kbit/s: the ten chunks below last 0.82 s, past the starvation deadline.
    core.zap(info("a", chunks=256, source_user="src", bitrate=100_000), 0.0)
    cacher = ("10.0.0.1", 1)
    core.on_peers("a", [PeerCandidate(cacher, Origin.CACHER)], 0.0)
    for c in range(10):
        core.on_chunk("a", c, cacher, 0.1)
    assert core.next_timer() == pytest.approx(0.6)  # starvation deadline (playback later)
    assert core.handle_timer(0.3) == []
    actions = core.handle_timer(0.6)
    # The silent cacher is dropped (a FIND may name it again), the tracker asked again, and
    # the storage overlay rescues.
    assert actions == [DropPeer("a", cacher), FindPeers("a"), StartRescue("a")]
    assert core.rescuing("a")
    # Segments from the first missing chunk on, at most ``limit`` in flight.
    assert core.rescue_segments("a", 2) == [0, 1]
    assert core.rescue_segments("a", 2) == []
    core.on_segment("a", 0, [b"y" * CHUNK] * 64, 0.7)
    assert core.rescue_segments("a", 2) == [2]
    assert core.handle_timer(1.6) == [FindPeers("a")]  # asks the tracker again meanwhile
    core.on_chunk("a", 200, cacher, 1.7)  # a peer delivers again: the rescue is over
    assert not core.rescuing("a") and core.rescue_segments("a", 2) == []
    assert core.reports()[0].rescues == 1


def test_rescue_without_overlay_connects_the_source_and_bad_peers_stay_out() -> None:
    source = ("10.0.0.9", 7)
    core = CscCore(startup_seconds=0.008, starvation_timeout=0.5)
    core.zap(info("a", sources=(source,)), 0.0)
    bad = ("10.0.0.3", 1)
    core.on_peers("a", [PeerCandidate(bad, Origin.PEER)], 0.0)
    core.on_peer_gone("a", bad, "chunk 0 failed verification", 0.1, integrity=True)
    assert core.on_peers("a", [PeerCandidate(bad, Origin.PEER)], 0.2) == []  # never again
    assert core.handle_timer(0.5) == [FindPeers("a"), ConnectPeer("a", source, Origin.SOURCE)]
    assert core.on_chunk("a", 0, source, 0.6)
    report = core.reports()[0]
    assert report.bytes[Origin.SOURCE] == CHUNK and report.dropped


def test_the_source_is_the_rescue_unless_nobody_else_holds_the_channel() -> None:
    cacher, source = ("10.0.0.1", 1), ("10.0.0.9", 1)
    core = CscCore(startup_seconds=0.008, starvation_timeout=0.5)
    core.zap(info("a"), 0.0)
    named = [PeerCandidate(source, Origin.SOURCE), PeerCandidate(cacher, Origin.CACHER)]
    assert core.on_peers("a", named, 0.1) == [ConnectPeer("a", cacher, Origin.CACHER)]
    actions = core.handle_timer(0.6)  # the cacher delivered nothing: the source rescues
    assert ConnectPeer("a", source, Origin.SOURCE) in actions
    # On the next channel the tracker names the source only: it serves at once, although
    # the known cacher was contacted at the zap on a hunch.
    assert core.zap(info("b"), 1.0) == [ConnectPeer("b", cacher, Origin.CACHER), FindPeers("b")]
    only = [PeerCandidate(source, Origin.SOURCE)]
    assert core.on_peers("b", only, 1.1) == [ConnectPeer("b", source, Origin.SOURCE)]
    assert core.on_chunk("b", 0, source, 1.2)
    assert core.reports()[1].bytes[Origin.SOURCE] == CHUNK


def test_a_vod_of_unknown_length_is_complete_when_ppspp_says_so() -> None:
    core = CscCore(startup_seconds=0.008, starvation_timeout=0.5)
    core.zap(info("a", length=None, bitrate=10_000), 0.0)  # 0.8 s of media per chunk
    assert core.on_chunk("a", 0, ("10.0.0.1", 1), 0.1)
    core.on_complete("a", 0.1)  # the peaks gave the size: one chunk, held
    assert core.next_timer() == pytest.approx(0.1 + 1024 * 8 / 10_000)  # playback only
    assert core.handle_timer(0.7) == []  # no starvation: nothing is missing


def test_stalls_count_in_q1_and_q2() -> None:
    core = CscCore(startup_seconds=0.008)  # one chunk at 1 Mbit/s: 8.192 ms of media
    core.zap(info("a", chunks=4), 0.0)
    core.on_chunk("a", 0, ("10.0.0.1", 1), 0.0)
    core.handle_timer(0.1)  # ran dry after 8 ms: stalled
    core.on_chunk("a", 1, ("10.0.0.1", 1), 0.1)
    core.zap(info("b", chunks=1), 0.2)  # a second visit that never stalls
    core.on_chunk("b", 0, ("10.0.0.1", 1), 0.2)
    core.leave(0.3)
    summary = core.summary()
    assert summary["channels"][0]["stalls"] == 2  # resumed with chunk 1, dry again
    assert summary["q2"] == 0.5  # one of two visits stalled
    assert 0 < summary["q1"] < 1


def test_channel_info_from_the_portal_json() -> None:
    data = {
        "name": "film",
        "live": False,
        "swarm_id": "ab" * 32,
        "chunk_size": 1024,
        "integrity": "merkle",
        "hash": "sha256",
        "bitrate": 800,
        "length": 5000,
        "trackers": ["ppsp-udp://127.0.0.1:1"],
        "sources": ["127.0.0.1:9", "[::1]:10"],
        "viewers": 3,
        "published": 1.0,
    }
    parsed = ChannelInfo.from_json({"channel": data})
    assert parsed.bitrate == 800_000 and parsed.num_chunks == 5
    assert parsed.chunk_bytes(4) == 5000 - 4 * 1024
    assert parsed.sources == (("127.0.0.1", 9), ("::1", 10))
    cases: list[object] = [
        {**data, "swarm_id": "zz"},
        {**data, "chunk_size": True},
        {**data, "live": "no"},
        {k: v for k, v in data.items() if k != "integrity"},
        {**data, "segment_chunks": 48},
        [],
    ]
    for broken in cases:
        with pytest.raises(ChannelError):
            ChannelInfo.from_json(broken)


def test_configuration_file_and_checks(tmp_path: Path) -> None:
    path = tmp_path / "csc.toml"
    path.write_text(
        '[csc]\nportal = "http://127.0.0.1:8080/"\narea = "east"\n'
        'trackers = ["ppsp-udp://127.0.0.1:7846"]\nstorage_overlay = "o/csc.toml"\n'
        'startup = 0.25\nlog_level = "info"\n'
    )
    config = load_config(path).check()
    assert config.area == "east" and config.startup == 0.25 and config.startup_bytes is None
    assert config.storage_overlay == tmp_path / "o" / "csc.toml"
    assert CscCore().startup_bytes == 8192 and CscCore().startup_seconds is None  # defaults
    with pytest.raises(CscConfigError, match="startup_bytes"):
        CscConfig(portal="http://x/", startup_bytes=0).check()
    with pytest.raises(CscConfigError, match="unknown key"):
        config_from_table({"portl": "x"})
    with pytest.raises(CscConfigError, match="portal is required"):
        CscConfig().check()
    with pytest.raises(CscConfigError, match="heartbeat"):
        CscConfig(portal="http://x/", heartbeat=60).check()
    with pytest.raises(CscConfigError, match="trackers"):
        CscConfig(portal="http://x/", trackers=("ftp://x",)).check()


# -- the CSC on 127.0.0.1 ---------------------------------------------------------------------


def make_content(size: int, seed: int) -> tuple[bytes, HashTree]:
    data = random.Random(seed).randbytes(size)
    return data, HashTree.from_content(data, CHUNK, MerkleHashFunction.SHA256)


class CorruptStore(MemoryChunkStore):
    """Serves every chunk with its first byte flipped: a peer sending garbage."""

    def read_chunk(self, chunk: int) -> bytes | memoryview:
        data = bytearray(super().read_chunk(chunk))
        data[0] ^= 0xFF
        return bytes(data)


async def start_seeder(
    contents: Sequence[tuple[bytes, HashTree]],
    *,
    push_head: int = 0,
    have: int | None = None,
    corrupt: bool = False,
    host: str = "127.0.0.1",
) -> PeerNode:
    """One PPSPP node seeding every content (one socket, like a cacher): ``push_head`` head
    chunks pushed after the handshake; ``have`` chunks held of each (a cacher still filling);
    ``corrupt`` serves garbage."""
    node = PeerNode()
    node.endpoint.push_head = push_head
    for data, tree in contents:
        params = SwarmParameters(
            swarm_id=tree.root_hash,
            integrity_method=IntegrityMethod.MERKLE,
            hash_function=MerkleHashFunction.SHA256,
            chunk_size=CHUNK,
        )
        n = tree.num_chunks
        assert n is not None
        held = n if have is None else have
        store = (CorruptStore if corrupt else MemoryChunkStore)(CHUNK, data)
        node.endpoint.add_swarm(params, StaticContent(tree, store, ChunkSet([(0, held - 1)])))
    await node.start((host, 0))
    return node


def kill(node: PeerNode) -> None:
    """The node dies without a word (no §8.4 close): its socket just goes away."""
    transport, node.transport = node.transport, None
    assert transport is not None
    transport.close()
    if node.timer is not None:
        node.timer.cancel()


@dataclass
class Lab:
    portal_url: str
    tracker_url: str
    session: aiohttp.ClientSession
    tracker: TrackerServer
    clients: list[UdpTrackerClient] = field(default_factory=list)

    async def publish(
        self, name: str, tree: HashTree, bitrate_kbit: int, **extra: Any
    ) -> dict[str, Any]:
        body = {
            "name": name,
            "live": False,
            "swarm_id": tree.root_hash.hex(),
            "trackers": [self.tracker_url],
            "chunk_size": CHUNK,
            "integrity": "merkle",
            "hash": "sha256",
            "bitrate": bitrate_kbit,
            "length": tree.content_length,
            **extra,
        }
        async with self.session.post(
            self.portal_url + "api/v1/channels",
            json=body,
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as answer:
            assert answer.status in (200, 201), await answer.text()
            result: dict[str, Any] = await answer.json()
            return result

    async def register(
        self, node: PeerNode, trees: Sequence[HashTree], role: Role | None, peer_id: str
    ) -> None:
        """CONNECT ``node`` at the tracker as a seeder of ``trees`` (a cacher: role CACHER)."""
        assert node.local is not None
        client = UdpTrackerClient(self.tracker.addresses["udp"], peer_id)
        self.clients.append(client)
        await client.connect(
            [SwarmAction(t.root_hash.hex(), Action.JOIN, PeerMode.SEEDER) for t in trees],
            peer_addresses=[PeerAddress(node.local[0], node.local[1])],
            role=role,
            area=AREA,
        )

    async def viewers(self, name: str) -> int:
        async with self.session.get(self.portal_url + f"api/v1/channels/{name}") as answer:
            data = await answer.json()
            return int(data["viewers"])


@contextlib.asynccontextmanager
async def lab(tracker_config: TrackerConfig | None = None) -> AsyncIterator[Lab]:
    from portal.server import PortalServer

    portal = PortalServer(TOKEN)
    await portal.start("127.0.0.1", 0)
    local = ("127.0.0.1", 0)
    config = TrackerDaemonConfig(udp=local, http=local, tcp=local)
    if tracker_config is not None:
        config.tracker = tracker_config
    tracker = await serve(config)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    udp_url = next(u for u in tracker.urls if u.startswith("ppsp-udp:"))
    the_lab = Lab(portal.url, udp_url, session, tracker)
    try:
        yield the_lab
    finally:
        for client in the_lab.clients:
            await client.close()
        await session.close()
        tracker.close()
        await tracker.wait_closed()
        await portal.close()


def csc_config(the_lab: Lab, **kw: Any) -> CscConfig:
    defaults: dict[str, Any] = {"startup": 0.1, "starvation_timeout": 0.5, "heartbeat": 0.2}
    defaults.update(kw)
    return CscConfig(portal=the_lab.portal_url, area=AREA, **defaults).check()


def test_watch_a_vod_channel_from_the_cacher() -> None:
    data, tree = make_content(100 * CHUNK - 300, 1)

    async def main() -> None:
        async with lab() as the_lab:
            cacher = await start_seeder([(data, tree)], push_head=16)
            await the_lab.register(cacher, [tree], Role.CACHER, "cacher-1")
            await the_lab.publish("film", tree, bitrate_kbit=1000)  # ~0.8 s of media
            before = time.time()
            csc = CscClient(csc_config(the_lab), keep_content=True)
            try:
                await csc.start()
                watching = asyncio.ensure_future(csc.watch("film", seconds=5.0))
                for _ in range(50):  # bounded: 5 s — the portal counts the viewer meanwhile
                    if await the_lab.viewers("film") == 1 or watching.done():
                        break
                    await asyncio.sleep(0.1)
                assert await the_lab.viewers("film") == 1
                summary = await watching
                assert await the_lab.viewers("film") == 0  # "watching": false on leaving
            finally:
                await csc.close()
                cacher.close()
            (ch,) = summary["channels"]
            assert ch["startup_delay"] is not None and 0 < ch["startup_delay"] < 2.0
            assert before <= ch["zap_unix"] <= time.time()  # wall clock, for a lab's timeline
            assert ch["ended"] and ch["stalls"] == 0 and ch["stall_events"] == []
            assert summary["q1"] == 1.0 and summary["q2"] == 1.0
            assert summary["bytes"] == {"cacher": len(data), "peer": 0, "overlay": 0, "source": 0}
            assert csc.content_of("film") == data  # every chunk played is the original

    run(main())


@pytest.mark.parametrize("scheme", ["http", "ppsp-tcp"])
def test_tracker_override_json_over_http_and_binary_over_tcp(scheme: str) -> None:
    data, tree = make_content(48 * CHUNK, 8)

    async def main() -> None:
        async with lab() as the_lab:
            cacher = await start_seeder([(data, tree)], push_head=16)
            await the_lab.register(cacher, [tree], Role.CACHER, "cacher-1")
            await the_lab.publish("film", tree, bitrate_kbit=4000)  # lists the UDP tracker
            url = next(u for u in the_lab.tracker.urls if u.startswith(scheme + ":"))
            csc = CscClient(csc_config(the_lab, trackers=(url,)), keep_content=True)
            try:
                await csc.start()
                summary = await csc.watch("film", seconds=5.0)
            finally:
                await csc.close()
                cacher.close()
            assert summary["bytes"]["cacher"] == len(data)  # role CACHER came through
            assert csc.content_of("film") == data
            # The CSC registered at that tracker, and left at the end (RFC 7846 Table 6).
            assert the_lab.tracker.tracker.stats()["peers"] == 1  # the cacher only

    run(main())


def test_zap_with_push_starts_in_one_round_trip_without_push_in_two() -> None:
    contents = [make_content(64 * CHUNK, seed) for seed in (11, 12, 13)]
    names = ["A", "B", "C"]

    async def session(push_head: int) -> dict[str, Any]:
        async with lab() as the_lab:
            cacher = await start_seeder(contents, push_head=push_head)
            await the_lab.register(cacher, [t for _, t in contents], Role.CACHER, "cacher-1")
            for name, (_, tree) in zip(names, contents, strict=True):
                await the_lab.publish(name, tree, bitrate_kbit=1000)
            csc = CscClient(csc_config(the_lab, startup=0.05), keep_content=True)
            try:
                await csc.start()
                summary = await csc.zap(names, dwell=0.4)
            finally:
                await csc.close()
                cacher.close()
            for name, (data, _) in zip(names, contents, strict=True):
                held = csc.chunks_of(name)  # without push, a dwell may end before the end
                assert held and all(v == data[c * CHUNK : (c + 1) * CHUNK] for c, v in held.items())
                if push_head:
                    assert csc.content_of(name) == data
            return summary

    # One-way delay 25 ms on every PPSPP datagram (RTT 50 ms): round trips dominate.
    linkemu.configure(linkemu.parse_rules("127.0.0.0/8 delay=25ms"))
    try:
        pushed = run(session(16))
        plain = run(session(0))
    finally:
        linkemu.configure(None)

    def rtts(summary: dict[str, Any]) -> list[float]:
        # Zap → first frame in units of zap → handshake answered (one RTT to the cacher).
        return [c["startup_delay"] / c["handshake_delay"] for c in summary["channels"]]

    for summary in (pushed, plain):
        assert len(summary["startup_delays"]) == 3  # three channel changes, three delays
        assert all(c["bytes"]["cacher"] > 0 for c in summary["channels"])
    # The first channel is the first contact with the cacher: two round trips either way.
    # After it, the cacher knows the viewer's address and pushes with its handshake reply.
    assert all(r < 1.5 for r in rtts(pushed)[1:]), rtts(pushed)
    assert all(r > 1.5 for r in rtts(plain)[1:]), rtts(plain)
    fast = statistics.median(pushed["startup_delays"][1:])
    slow = statistics.median(plain["startup_delays"][1:])
    assert fast < 0.75 * slow, (pushed["startup_delays"], plain["startup_delays"])


def test_a_peer_sending_garbage_is_dropped_and_playback_continues() -> None:
    data, tree = make_content(200 * CHUNK, 3)

    async def main() -> None:
        async with lab() as the_lab:
            # The good peer sits behind a slow link (datagrams to 127.0.0.2 wait 100 ms), so
            # the garbage peer answers first and gets the first requests.
            linkemu.configure(linkemu.parse_rules("127.0.0.2/32 delay=100ms"))
            try:
                garbage = await start_seeder([(data, tree)], corrupt=True)
                good = await start_seeder([(data, tree)], host="127.0.0.2")
                csc = CscClient(csc_config(the_lab, starvation_timeout=5.0), keep_content=True)
                await csc.start()
            finally:
                linkemu.configure(None)
            await the_lab.register(garbage, [tree], None, "garbage")
            await the_lab.register(good, [tree], None, "good")
            await the_lab.publish("film", tree, bitrate_kbit=8000)
            try:
                summary = await csc.watch("film", seconds=8.0)
            finally:
                await csc.close()
                garbage.close()
                good.close()
            (ch,) = summary["channels"]
            assert len(ch["dropped"]) == 1 and "failed verification" in ch["dropped"][0]
            assert garbage.local is not None and f":{garbage.local[1]}:" in ch["dropped"][0]
            assert ch["ended"] and ch["startup_delay"] is not None
            assert ch["bytes"]["peer"] == len(data)
            assert csc.content_of("film") == data  # no corrupted chunk was played

    run(main())


def test_cacher_dies_mid_stream_csc_falls_back_to_the_source() -> None:
    data, tree = make_content(128 * CHUNK, 4)

    async def main() -> None:
        async with lab() as the_lab:
            cacher = await start_seeder([(data, tree)], push_head=16, have=40)
            source = await start_seeder([(data, tree)])  # known from the portal only
            assert source.local is not None
            await the_lab.register(cacher, [tree], Role.CACHER, "cacher-1")
            await the_lab.publish(
                "film", tree, bitrate_kbit=1000, sources=[f"127.0.0.1:{source.local[1]}"]
            )
            csc = CscClient(csc_config(the_lab, starvation_timeout=0.3), keep_content=True)
            try:
                await csc.start()
                watching = asyncio.ensure_future(csc.watch("film", seconds=8.0))
                for _ in range(100):  # bounded: 5 s
                    if csc.core.current is not None and csc.core.current.report.chunks >= 40:
                        break
                    await asyncio.sleep(0.05)
                kill(cacher)
                summary = await watching
            finally:
                await csc.close()
                cacher.close()
                source.close()
            (ch,) = summary["channels"]
            assert ch["rescues"] >= 1 and ch["ended"]
            # Under load the rescue may start before the cacher delivered all it had: the
            # split varies, the sum does not (each chunk counts once, for its first origin).
            assert 0 < ch["bytes"]["cacher"] <= 40 * CHUNK
            assert ch["bytes"]["cacher"] + ch["bytes"]["source"] == len(data)
            assert csc.content_of("film") == data

    run(main())


def test_a_second_csc_gets_the_channel_from_the_first_when_the_cacher_is_gone() -> None:
    data, tree = make_content(96 * CHUNK, 6)

    async def main() -> None:
        async with lab() as the_lab:
            cacher = await start_seeder([(data, tree)], push_head=16)
            await the_lab.register(cacher, [tree], Role.CACHER, "cacher-1")
            await the_lab.publish("film", tree, bitrate_kbit=4000)
            first = CscClient(csc_config(the_lab), keep_content=True)
            second = CscClient(csc_config(the_lab, starvation_timeout=5.0), keep_content=True)
            try:
                await first.start()
                await second.start()
                # The first viewer stays on the channel (zap does not stop at the end of a
                # VoD) and is registered at the tracker as a leecher: a peer of the swarm.
                staying = asyncio.ensure_future(first.zap(["film"], dwell=4.0))
                for _ in range(100):  # bounded: 5 s
                    if first.content_of("film") == data:
                        break
                    await asyncio.sleep(0.05)
                assert first.content_of("film") == data
                kill(cacher)
                summary = await second.watch("film", seconds=3.0)
                staying.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await staying
            finally:
                await first.close()
                await second.close()
                cacher.close()
            (ch,) = summary["channels"]
            assert ch["ended"] and ch["bytes"]["peer"] == len(data)
            assert ch["bytes"]["cacher"] == 0
            assert second.content_of("film") == data

    run(main())


def test_watch_a_live_channel_from_the_source() -> None:
    from ppsp.peer.aio import serve_live_source

    async def main() -> None:
        async with lab() as the_lab:
            reader = asyncio.StreamReader()
            source = await serve_live_source(reader)
            stream = random.Random(7).randbytes(400 * CHUNK)

            async def feed() -> None:
                for i in range(0, len(stream), 4 * CHUNK):  # 512 kbit/s: 4 chunks / 62.5 ms
                    reader.feed_data(stream[i : i + 4 * CHUNK])
                    await asyncio.sleep(0.0625)

            feeding = asyncio.ensure_future(feed())
            try:
                await asyncio.sleep(0.6)  # a live edge a few munros ahead of chunk 0
                client = UdpTrackerClient(the_lab.tracker.addresses["udp"], "source")
                the_lab.clients.append(client)
                await client.connect(
                    [SwarmAction(source.swarm_id.hex(), Action.JOIN, PeerMode.SEEDER)],
                    peer_addresses=[PeerAddress(*source.address)],
                    role=Role.SOURCE,
                )
                body = {
                    "name": "news",
                    "live": True,
                    "swarm_id": source.swarm_id.hex(),
                    "trackers": [the_lab.tracker_url],
                    "chunk_size": CHUNK,
                    "integrity": "unified-merkle",
                    "hash": "sha256",
                    "bitrate": 512,
                }
                async with the_lab.session.post(
                    the_lab.portal_url + "api/v1/channels",
                    json=body,
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ) as answer:
                    assert answer.status == 201
                csc = CscClient(csc_config(the_lab, startup=0.2), keep_content=True)
                try:
                    await csc.start()
                    summary = await csc.watch("news", seconds=1.5)
                finally:
                    await csc.close()
            finally:
                feeding.cancel()
                source.close()
            (ch,) = summary["channels"]
            assert ch["live"] and ch["startup_delay"] is not None
            assert ch["bytes"]["source"] >= 16 * CHUNK and ch["play_time"] > 0.3
            held = csc.chunks_of("news")
            assert min(held) % 16 == 0 and min(held) > 0  # tuned in at a munro (§6.1.2.4)
            assert all(v == stream[c * CHUNK : (c + 1) * CHUNK] for c, v in held.items())

    run(main())


# -- the storage overlay rescue ---------------------------------------------------------------


OVERLAY = "csc.p2pcdn.test"
SOURCE_USER = f"node0@{OVERLAY}"


def test_cacher_dies_mid_stream_csc_rescues_from_the_storage_overlay(tmp_path: Path) -> None:
    from reload.aio import OverlayNode, load_daemon_config
    from reload.usages.client import ContentStore
    from reload.usages.config import add_daemon, make_overlay_dir
    from reload.usages.content import segments_of, vod_meta

    data, tree = make_content(256 * CHUNK - 100, 5)

    async def main() -> None:
        paths = make_overlay_dir(tmp_path, OVERLAY, 3, "storage", link="tls")
        nodes: list[OverlayNode] = []
        for path in paths:
            node = OverlayNode.from_config(load_daemon_config(path))
            await node.start(join_timeout=15.0)
            nodes.append(node)
        try:
            meta = vod_meta(tree, "film", SOURCE_USER)
            store = ContentStore(nodes[0], SOURCE_USER, timeout=10.0)
            await store.put_meta(meta)
            for segment in segments_of(meta, tree, data):
                await store.put_segment(segment)
            assert nodes[1].address is not None
            toml = add_daemon(tmp_path, "csc", "csc@lab", client=True, bootstrap=[nodes[1].address])
            async with lab() as the_lab:
                cacher = await start_seeder([(data, tree)], push_head=16, have=50)
                await the_lab.register(cacher, [tree], Role.CACHER, "cacher-1")
                await the_lab.publish("film", tree, bitrate_kbit=2000, source_user=SOURCE_USER)
                config = csc_config(the_lab, starvation_timeout=0.3, storage_overlay=toml)
                csc = CscClient(config, keep_content=True)
                try:
                    await csc.start()
                    watching = asyncio.ensure_future(csc.watch("film", seconds=10.0))
                    for _ in range(100):  # bounded: 5 s
                        current = csc.core.current
                        if current is not None and current.report.chunks >= 50:
                            break
                        await asyncio.sleep(0.05)
                    kill(cacher)
                    summary = await watching
                finally:
                    await csc.close()
                    cacher.close()
            (ch,) = summary["channels"]
            assert ch["rescues"] >= 1 and ch["ended"]
            assert 0 < ch["bytes"]["cacher"] <= 50 * CHUNK
            assert ch["bytes"]["cacher"] + ch["bytes"]["overlay"] == len(data)
            assert ch["bytes"]["source"] == 0 and not ch["dropped"]
            assert csc.content_of("film") == data  # verified segments only
        finally:
            for node in nodes:
                await node.close()

    run(main(), timeout=60.0)


# -- the command line -------------------------------------------------------------------------


def test_cli_zap_prints_json_and_text(tmp_path: Path) -> None:
    contents = [make_content(32 * CHUNK, seed) for seed in (21, 22)]

    async def main() -> tuple[dict[str, Any], str]:
        async with lab() as the_lab:
            cacher = await start_seeder(contents, push_head=8)
            await the_lab.register(cacher, [t for _, t in contents], Role.CACHER, "cacher-1")
            for name, (_, tree) in zip(["one", "two"], contents, strict=True):
                await the_lab.publish(name, tree, bitrate_kbit=1000)
            config = tmp_path / "csc.toml"
            config.write_text(f'[csc]\nportal = "{the_lab.portal_url}"\nstartup = 0.05\n')
            base = [sys.executable, "-m", "lab.cli", "csc", "--config", str(config)]
            outputs = []
            for extra in (["--json"], []):
                proc = await asyncio.create_subprocess_exec(
                    *base,
                    "--area",
                    AREA,
                    *extra,
                    "zap",
                    "one",
                    "two",
                    "--dwell",
                    "0.3",
                    cwd=REPO,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                out, err = await asyncio.wait_for(proc.communicate(), 20)
                assert proc.returncode == 0, err.decode()
                outputs.append(out.decode())
            cacher.close()
            return json.loads(outputs[0]), outputs[1]

    summary, text = run(main(), timeout=40.0)
    assert [c["channel"] for c in summary["channels"]] == ["one", "two"]
    assert summary["area"] == AREA and summary["peer_id"].startswith("csc-")
    assert len(summary["startup_delays"]) == 2 and summary["q1"] == 1.0
    assert summary["bytes"]["cacher"] == 2 * 32 * CHUNK
    assert text.splitlines()[0].startswith("one: startup delay ")
    assert "Q1 = 1.0000" in text and "Q2 = 1.0000" in text and "cacher 65536 (100.0%)" in text


def test_cli_usage_errors() -> None:
    assert cli.main(["csc", "zap", "a"]) == cli.EXIT_USAGE  # no portal
    assert cli.main(["csc", "--portal", "ftp://x", "watch", "a"]) == cli.EXIT_USAGE
    proc = subprocess.run(
        [sys.executable, "-m", "lab.cli", "csc", "--portal", "http://127.0.0.1:9/", "watch", "a"],
        cwd=REPO,
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == cli.EXIT_FAILURE
    assert b"cannot reach the portal" in proc.stderr


def test_cli_sigint_ends_the_session_cleanly_with_its_report() -> None:
    data, tree = make_content(32 * CHUNK, 23)

    async def main() -> tuple[int, dict[str, Any], int]:
        async with lab() as the_lab:
            cacher = await start_seeder([(data, tree)], push_head=8)
            await the_lab.register(cacher, [tree], Role.CACHER, "cacher-1")
            await the_lab.publish("one", tree, bitrate_kbit=1000)
            await the_lab.publish("two", tree, bitrate_kbit=1000)
            proc = await asyncio.create_subprocess_exec(
                *[sys.executable, "-m", "lab.cli", "csc", "--portal", the_lab.portal_url],
                *["--json", "zap", "one", "two", "--dwell", "20"],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            try:
                for _ in range(100):  # bounded: 10 s, until the viewer is counted
                    if await the_lab.viewers("one") == 1:
                        break
                    await asyncio.sleep(0.1)
                proc.send_signal(signal.SIGINT)
                out, _ = await asyncio.wait_for(proc.communicate(), 15)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                cacher.close()
            assert proc.returncode is not None
            return proc.returncode, json.loads(out), await the_lab.viewers("one")

    code, summary, viewers = run(main(), timeout=40.0)
    assert code == 0
    assert [c["channel"] for c in summary["channels"]] == ["one"]
    assert summary["channels"][0]["startup_delay"] is not None
    assert viewers == 0  # the CSC told the portal it left


# -- with the cacher daemon -------------------------------------------------------------------


def test_zap_to_channels_served_by_the_cacher_daemon(tmp_path: Path) -> None:
    """The real cacher (cacher/daemon.py) fills from the storage overlay, registers at the
    tracker in the CSC's area and pushes the head: the CSC gets every byte from it."""
    from cacher.config import CacherConfig
    from cacher.content import OverlaySegments
    from cacher.daemon import Cacher
    from reload.aio import OverlayNode, load_daemon_config
    from reload.usages.client import ContentStore
    from reload.usages.config import make_overlay_dir
    from reload.usages.content import segments_of, vod_meta

    contents = {
        name: make_content(128 * CHUNK - 7, seed) for name, seed in (("m1", 41), ("m2", 42))
    }

    async def main() -> None:
        nodes: list[OverlayNode] = []
        for path in make_overlay_dir(tmp_path / "overlay", OVERLAY, 2, "storage", link="tls"):
            node = OverlayNode.from_config(load_daemon_config(path))
            await node.start(join_timeout=15.0)
            nodes.append(node)
        cacher: Cacher | None = None
        try:
            store = ContentStore(nodes[0], SOURCE_USER, timeout=10.0)
            for name, (data, tree) in contents.items():
                meta = vod_meta(tree, name, SOURCE_USER)
                await store.put_meta(meta)
                for segment in segments_of(meta, tree, data):
                    await store.put_segment(segment)
            # Push hints (F4) every 0.2 s for the head of 16 chunks.
            hints = TrackerConfig(hint_interval=0.2, hint_head_chunks=16)
            async with lab(hints) as the_lab:
                config = CacherConfig(
                    tracker=the_lab.tracker_url,
                    area=AREA,
                    cache_dir=tmp_path / "cacher",
                    sources=(SOURCE_USER,),
                    channels=tuple(f"{SOURCE_USER}/{name}" for name in contents),
                    push_head=16,
                    fsync=False,
                    peer_id="cacher-east",
                ).check()
                cacher = Cacher(config, meta_store=OverlaySegments(nodes[1], "reader"))
                await cacher.start()
                for name, (_, tree) in contents.items():
                    await the_lab.publish(name, tree, bitrate_kbit=4000, source_user=SOURCE_USER)
                # Viewers in the area make the channels hot: the tracker hints their heads
                # to the cacher, which prefetches them from the storage overlay and reports
                # them (F2): from then on a FIND lists it.
                for name, (_, tree) in contents.items():
                    warm = UdpTrackerClient(the_lab.tracker.addresses["udp"], f"viewer-{name}")
                    the_lab.clients.append(warm)
                    await warm.connect(
                        [SwarmAction(tree.root_hash.hex(), Action.JOIN, PeerMode.LEECH)],
                        role=Role.CSC,
                        area=AREA,
                    )

                def warmed() -> bool:
                    for _, tree in contents.values():
                        held = the_lab.tracker.tracker.availability(
                            "cacher-east", tree.root_hash.hex()
                        )
                        if held is None or not held.contains_range(0, 15):
                            return False
                    return True

                for _ in range(200):  # bounded: 10 s
                    if warmed():
                        break
                    await asyncio.sleep(0.05)
                assert warmed()
                csc = CscClient(csc_config(the_lab, starvation_timeout=5.0), keep_content=True)
                try:
                    await csc.start()
                    summary = await csc.zap(list(contents), dwell=1.5)
                finally:
                    await csc.close()
            for ch in summary["channels"]:
                assert ch["startup_delay"] is not None and ch["ended"], ch
                assert ch["bytes"]["cacher"] == len(contents[ch["channel"]][0]), ch
            for name, (data, _) in contents.items():
                assert csc.content_of(name) == data
        finally:
            if cacher is not None:
                await cacher.close()
            for node in nodes:
                await node.close()

    run(main(), timeout=60.0)
