"""The flows F1–F5 of DESIGN §1 end to end (issue 7 item 5): the whole CDN on 127.0.0.1 as real
``python -m lab.cli`` processes, one test per flow, each asserting what the flow is for.

The set-up is built once for the module (:func:`cdn`):

* a storage overlay of 4 ``p2pcdn overlay`` daemons over TLS (CHORD-RELOAD);
* a standalone tracker (binary PPSP-TP over UDP, plus HTTP for its read-only view
  ``GET /x-p2pcdn/view?swarm=HEX``: each member's reported chunk ranges and the swarm's
  popularity) with fast push hints and global info;
* the portal;
* ``p2pcdn source publish`` of every channel (RELOAD clients of the storage overlay): the
  sources of ``movie`` and ``film`` keep serving, the others exit after publishing;
* the cachers ``east`` (push of 16 head chunks, F2–F4) and ``west`` (no push: F4's
  reference leg), each a RELOAD client of the storage overlay; F5 and the failure test start
  their own (``north``: a small cache; ``south``: a slow link);
* an in-test RELOAD client (the *reader*) and an in-test tracker client (the *observer*, which
  registers without joining any swarm, so that it can FIND) on a :class:`LoopThread`.

CSCs are ``p2pcdn csc`` processes (``--json`` reports; ``--pcap`` for F4's datagram counts;
``--digest`` for the SHA-256 of what was played). The cachers' ``stats.json`` (fills from the
storage overlay, the policy's heat) shows what they did.
Viewers that make a channel hot are in-test tracker clients JOINing as leechers with role CSC.

Tests run in file order and F2 restarts the tracker (to show that the batch report alone
restores its view); each test makes the state it needs itself, so each also passes alone.
Besides the flows: the real cacher daemon SIGKILLed while a CSC streams from it (the CSC falls
back to the source and what it played hashes to the original).

Not repeated here (one concept, one place): tests/test_csc.py proves with the real CSC on
127.0.0.1 against PPSPP seeders standing in for cachers and peers that

* a CSC given garbage by a peer drops that peer and keeps playing, every chunk played the
  original (``test_a_peer_sending_garbage_is_dropped_and_playback_continues``);
* a CSC whose cacher dies mid-stream switches to a peer
  (``test_a_second_csc_gets_the_channel_from_the_first_when_the_cacher_is_gone``) or is
  rescued by the storage overlay
  (``test_cacher_dies_mid_stream_csc_rescues_from_the_storage_overlay``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import random
import socket
import struct
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ppsp.peer.aio import download
from ppsp.peer.messages import Data, DecodeError, Handshake
from ppsp.peer.wire import parse_datagram
from ppsp.tracker.client import TrackerRequestError, UdpTrackerClient
from ppsp.tracker.messages import Action, PeerMode, Role, SwarmAction
from reload.aio import OverlayNode, load_daemon_config
from reload.usages.client import ContentStore
from reload.usages.config import add_daemon, make_overlay_dir
from tests.cdn_lab import Daemon, Lab, LoopThread, wait_until

pytestmark = pytest.mark.slow

STORAGE = "storage.flows.test"
TRACKERS = "trackers.flows.test"
SOURCE_USER = "source@flows.test"
TOKEN = "flows-token"
CHUNK = 1024
SEGMENT = 64  # chunks per segment (the default)
HEAD = 16  # head chunks the tracker hints and the east cacher pushes
BITRATE = 2000  # kbit/s the CSCs assume (the portal lists none for VoD)
#: channel name → chunks (every channel ends on a segment boundary).
CHANNELS = {
    "movie": 4 * SEGMENT,  # F1, F3
    "extra": 2 * SEGMENT,  # F2
    "zap1": SEGMENT,  # F4, at the east cacher (push)
    "zap2": SEGMENT,
    "zap3": SEGMENT,  # F4, at the west cacher (no push)
    "zap4": SEGMENT,
    "pop": 2 * SEGMENT,  # F5: popular
    "cold": 2 * SEGMENT,  # F5: unpopular
    "hot": 2 * SEGMENT,  # F5: hinted last, needs room
    "film": 4 * SEGMENT,  # the cacher dies mid-stream
}
#: The channels whose source keeps serving (the others exit once published).
SERVING = ("movie", "film")

START_TIMEOUT = 30.0  # a daemon's first lines
PUBLISH_TIMEOUT = 40.0
FLOW_TIMEOUT = 20.0  # an effect to show at the tracker or the cacher


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5.0) as answer:
        return json.loads(answer.read())


@dataclass
class Cdn:
    """What the module fixture built."""

    root: Path
    lab: Lab
    loop: LoopThread
    tracker_toml: Path
    tracker_udp: int
    tracker_http: int
    tracker: Daemon
    portal_url: str
    reader: OverlayNode
    observer: UdpTrackerClient
    data: dict[str, bytes]
    swarms: dict[str, bytes]
    source: Daemon
    source_lines: list[str]
    source_address: str
    cachers: dict[str, Daemon] = field(default_factory=dict)
    cacher_tomls: dict[str, Path] = field(default_factory=dict)
    viewers: list[UdpTrackerClient] = field(default_factory=list)
    storage_nodes: list[Path] = field(default_factory=list)

    @property
    def tracker_url(self) -> str:
        return f"ppsp-udp://127.0.0.1:{self.tracker_udp}"

    # -- the tracker's view ----------------------------------------------------------------

    def view(self, channel: str) -> dict[str, Any]:
        swarm = self.swarms[channel].hex()
        answer: dict[str, Any] = get_json(
            f"http://127.0.0.1:{self.tracker_http}/x-p2pcdn/view?swarm={swarm}"
        )
        return answer

    def held(self, peer: str, channel: str) -> set[int]:
        """The chunks of ``channel`` the tracker believes ``peer`` holds."""
        member = self.view(channel)["peers"].get(peer)
        if member is None or member["ranges"] is None:
            return set()
        return {c for start, end in member["ranges"] for c in range(start, end + 1)}

    def holds_head(self, peer: str, channel: str) -> bool:
        return set(range(HEAD)) <= self.held(peer, channel)

    def find(self, channel: str, area: str | None = None) -> list[Any]:
        """FIND at the tracker, as the observer (registered, in no swarm)."""
        answer = self.loop.run(
            self.observer.find(self.swarms[channel].hex(), area=area), timeout=10.0
        )
        return [peer for result in answer.swarm_results for peer in result.peers or []]

    def register_observer(self) -> None:
        async def register() -> None:
            await self.observer.connect([])
            await self.observer.stat_query()  # PEER_REGISTERED → TRACKING (§2.3.1)

        self.loop.run(register(), timeout=10.0)

    def watch_at_tracker(self, channel: str, area: str) -> UdpTrackerClient:
        """A viewer in ``area`` JOINs ``channel`` as a leecher: the channel gets hot there."""
        n = len(self.viewers)
        viewer = UdpTrackerClient(("127.0.0.1", self.tracker_udp), f"viewer-{n}", timeout=5.0)
        self.viewers.append(viewer)
        self.loop.run(
            viewer.connect(
                [SwarmAction(self.swarms[channel].hex(), Action.JOIN, PeerMode.LEECH)],
                role=Role.CSC,
                area=area,
            ),
            timeout=10.0,
        )
        return viewer

    # -- daemons ---------------------------------------------------------------------------

    def start_tracker(self) -> Daemon:
        tracker = self.lab.start("tracker", "tracker", "--config", str(self.tracker_toml))
        tracker.wait_lines(2, START_TIMEOUT)
        self.tracker = tracker
        return tracker

    def cacher_toml(self, name: str, **settings: object) -> Path:
        """The TOML of cacher ``name``: a RELOAD client of the storage overlay of its own."""
        client = add_daemon(
            self.root / "storage",
            f"cacher-{name}",
            f"cacher-{name}@flows.test",
            client=True,
            bootstrap=[load_daemon_config(self.storage_nodes[2]).listen],
        )
        table: dict[str, object] = {
            "tracker": self.tracker_url,
            "area": name,
            "listen": "127.0.0.1:0",
            "cache_dir": f"cache-{name}",
            "storage_overlay": str(client),
            "sources": [SOURCE_USER],
            "portal": self.portal_url,
            "push_head": HEAD,
            "peer_id": f"cacher-{name}",
            "fsync": False,
            "report_delay": 0.05,
            "keepalive": 1.0,
            "log_level": "info",
            **settings,
        }
        lines = ["[cacher]"] + [f"{key} = {json.dumps(value)}" for key, value in table.items()]
        path = self.root / f"cacher-{name}.toml"
        path.write_text("\n".join(lines) + "\n")
        self.cacher_tomls[name] = path
        return path

    def start_cacher(
        self, name: str, env: dict[str, str] | None = None
    ) -> tuple[Daemon, tuple[str, int]]:
        toml = str(self.cacher_tomls[name])
        daemon = self.lab.start(f"cacher-{name}", "cacher", "--config", toml, env=env)
        (line,) = daemon.wait_lines(1, START_TIMEOUT)
        host, _, port = line.rpartition(":")
        self.cachers[name] = daemon
        return daemon, (host, int(port))

    def cacher_stats(self, name: str) -> dict[str, Any]:
        path = self.root / f"cache-{name}" / "stats.json"
        try:
            stats: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return stats

    def start_csc(self, name: str, area: str, *args: str) -> Daemon:
        """``p2pcdn csc --json ARGS``."""
        return self.lab.start(
            name,
            "csc", "--portal", self.portal_url, "--area", area, "--json",
            "--bitrate", str(BITRATE), "--startup", "0.05", *args,
        )  # fmt: skip

    def csc(self, name: str, area: str, *args: str) -> dict[str, Any]:
        """``p2pcdn csc --json ARGS`` to its end; its report."""
        return csc_report(self.start_csc(name, area, *args))


def csc_report(csc: Daemon) -> dict[str, Any]:
    """The JSON report of a CSC, once it has ended (bounded)."""
    wait_until(functools.partial(exited, csc), 30.0, f"{csc.name} to end", poll=0.1)
    assert csc.proc.returncode == 0, csc.tail()
    report: dict[str, Any] = json.loads(csc.out_path.read_text())
    return report


def published_or_exited(daemon: Daemon) -> bool:
    return not daemon.running or any(line.startswith("published") for line in daemon.lines())


def exited(daemon: Daemon) -> bool:
    return not daemon.running


@dataclass
class Publisher:
    """``p2pcdn source publish`` of one file per channel, each a RELOAD client of its own."""

    lab: Lab
    root: Path
    bootstrap: tuple[str, int]
    tracker_url: str
    portal_url: str

    def publish(self, name: str, data: bytes, keep: bool) -> Daemon:
        path = self.root / f"{name}.bin"
        path.write_bytes(data)
        daemon = add_daemon(
            self.root / "storage", f"source-{name}", SOURCE_USER, client=True,
            bootstrap=[self.bootstrap],
        )  # fmt: skip
        args = [
            "source", "publish", str(path), "--name", name, "--title", f"The {name}",
            "--overlay", str(daemon), "--tracker", self.tracker_url,
            "--portal", self.portal_url, "--portal-token", TOKEN,
        ]  # fmt: skip
        if not keep:
            args.append("--exit-after-publish")
        return self.lab.start(f"source-{name}", *args)


@pytest.fixture(scope="module")
def cdn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cdn]:
    root = tmp_path_factory.mktemp("flows")
    lab = Lab(root)
    loop = LoopThread()
    try:
        with lab.reporting():
            yield from build(root, lab, loop)
    finally:
        lab.close()
        loop.close()


def build(root: Path, lab: Lab, loop: LoopThread) -> Iterator[Cdn]:
    # The storage overlay: node 0 creates it, the others join through it.
    nodes = make_overlay_dir(root / "storage", STORAGE, 4, "storage", link="tls")
    first = lab.start("storage0", "overlay", "--config", str(nodes[0]))
    first.wait_lines(2, START_TIMEOUT)
    rest = [
        lab.start(f"storage{i}", "overlay", "--config", str(path))
        for i, path in enumerate(nodes[1:], 1)
    ]
    udp, http = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    tracker_toml = root / "tracker.toml"
    tracker_toml.write_text(
        f'[listen]\nudp = "127.0.0.1:{udp}"\nhttp = "127.0.0.1:{http}"\n'
        "[timers]\nhint_interval = 0.2\nglobal_info_interval = 0.5\n"
        f"hint_head_chunks = {HEAD}\nhint_expiry = 2.0\n"
    )
    tracker = lab.start("tracker", "tracker", "--config", str(tracker_toml))
    portal = lab.start("portal", "portal", "--listen", "127.0.0.1:0", "--token", TOKEN)
    for daemon in rest:
        daemon.wait_lines(2, START_TIMEOUT)
    tracker.wait_lines(2, START_TIMEOUT)
    (portal_url,) = portal.wait_lines(1, START_TIMEOUT)

    rng = random.Random(7574)
    data = {name: rng.randbytes(chunks * CHUNK) for name, chunks in CHANNELS.items()}
    bootstrap = load_daemon_config(nodes[1]).listen
    publisher = Publisher(lab, root, bootstrap, f"ppsp-udp://127.0.0.1:{udp}", portal_url)
    sources = {
        name: publisher.publish(name, content, keep=name in SERVING)
        for name, content in data.items()
    }
    for name, daemon in sources.items():
        wait_until(
            functools.partial(published_or_exited, daemon),
            PUBLISH_TIMEOUT,
            f"the publication of {name}",
            poll=0.2,
        )
        if name not in SERVING:
            wait_until(functools.partial(exited, daemon), 10.0, f"source {name} to exit")
            assert daemon.proc.returncode == 0, daemon.tail()
    swarms = {name: bytes.fromhex(d.lines()[0]) for name, d in sources.items()}
    source = sources["movie"]

    reader_toml = add_daemon(
        root / "storage", "reader", "reader@flows.test", client=True, bootstrap=[bootstrap]
    )

    async def start_reader() -> OverlayNode:
        node = OverlayNode.from_config(load_daemon_config(reader_toml))
        await node.start(join_timeout=START_TIMEOUT)
        return node

    reader = loop.run(start_reader(), timeout=START_TIMEOUT + 5)
    observer = UdpTrackerClient(("127.0.0.1", udp), "observer", timeout=5.0)
    cdn = Cdn(
        root=root,
        lab=lab,
        loop=loop,
        tracker_toml=tracker_toml,
        tracker_udp=udp,
        tracker_http=http,
        tracker=tracker,
        portal_url=portal_url,
        reader=reader,
        observer=observer,
        data=data,
        swarms=swarms,
        source=source,
        source_lines=source.lines(),
        source_address=source.lines()[1],
        storage_nodes=list(nodes),
    )
    cdn.register_observer()
    cdn.cacher_toml("east")
    cdn.cacher_toml("west", push_head=0)
    cdn.start_cacher("east")
    cdn.start_cacher("west")
    try:
        yield cdn
    finally:
        for client in [*cdn.viewers, observer]:
            loop.run(client.close(), timeout=5.0)
        loop.run(reader.abort(), timeout=10.0)


# --------------------------------------------------------------------------- F1 publish


def test_f1_publish(cdn: Cdn) -> None:
    """Source → storage overlay Store (meta + segments, read back verified from another node)
    → tracker CONNECT as SEEDER (FIND lists the source) → portal."""
    swarm = cdn.swarms["movie"]
    assert cdn.source.running  # keeps serving, registered as seeder
    assert any(line.startswith("published") for line in cdn.source_lines)

    async def read_back() -> bytes:
        store = ContentStore(cdn.reader, "reader", timeout=10.0)
        meta = await store.get_meta(SOURCE_USER, "movie")
        assert meta.swarm == swarm and meta.segments == CHANNELS["movie"] // SEGMENT
        parts = [b"".join(await store.get_segment(meta, i)) for i in range(meta.segments)]
        return b"".join(parts)

    assert cdn.loop.run(read_back(), timeout=30.0) == cdn.data["movie"]

    (peer,) = [p for p in cdn.find("movie") if p.role is Role.SOURCE]
    host, _, port = cdn.source_address.rpartition(":")
    assert [(a.ip, a.port) for a in peer.addresses] == [(host, int(port))]
    assert cdn.view("movie")["peers"][peer.peer_id]["mode"] == PeerMode.SEEDER.value

    listed = get_json(cdn.portal_url.rstrip("/") + "/api/v1/channels")["channels"]
    channel = next(c for c in listed if c["name"] == "movie")
    assert channel["swarm_id"] == swarm.hex() and not channel["live"]
    assert cdn.tracker_url in channel["trackers"]
    assert channel["sources"] == [cdn.source_address]  # the source serves over PPSPP too
    assert {c["name"] for c in listed} == set(CHANNELS)


# --------------------------------------------------------------------------- F2 availability


def test_f2_availability_incremental_and_batch_after_a_restart(cdn: Cdn) -> None:
    """The east cacher fetches a channel new to it: its incremental report shows at the
    tracker. Then it dies (SIGKILL) and the tracker restarts knowing nothing; the cacher,
    started again on the same cache directory, restores the tracker's view with its batch
    report, at its new PPSPP address."""
    peer, channel = "cacher-east", "extra"
    total = CHANNELS[channel]
    daemon = cdn.cachers["east"]
    host, _, port = daemon.lines()[0].rpartition(":")
    address = (host, int(port))
    assert cdn.held(peer, channel) == set()

    # A viewer fetches the whole channel at the cacher: pulled through from the overlay.
    out = cdn.root / "extra.bin"
    cdn.loop.run(download(cdn.swarms[channel], [address], out, timeout=20.0), timeout=25.0)
    assert out.read_bytes() == cdn.data[channel]
    wait_until(
        lambda: cdn.held(peer, channel) == set(range(total)), FLOW_TIMEOUT, "the incremental report"
    )

    # Crash: the cacher and the tracker; the new tracker knows nothing.
    daemon.kill()
    cdn.tracker.kill()
    cdn.start_tracker()
    assert cdn.view(channel)["peers"] == {}
    cdn.register_observer()
    restarted, address = cdn.start_cacher("east")
    wait_until(
        lambda: cdn.held(peer, channel) == set(range(total)),
        FLOW_TIMEOUT,
        "the batch report after the restart",
    )
    (listed,) = [p for p in cdn.find(channel, area="east") if p.peer_id == peer]
    assert listed.role is Role.CACHER and listed.area == "east"
    assert [(a.ip, a.port) for a in listed.addresses] == [address]
    log = restarted.err_path.read_text()
    swarm_hex = cdn.swarms[channel].hex()
    assert f"cache holds 1 swarm(s): {swarm_hex[:12]}: {total} chunks" in log
    assert f"batch availability report to {cdn.tracker_url}: 1 swarm(s), {total} chunks" in log


def test_f2_availability_through_the_tracker_overlay(cdn: Cdn) -> None:
    """Overlay mode: two trackers form a RELOAD tracker overlay. A cacher reports what it
    caches to tracker A, which Stores it in the tracker overlay; a FIND at tracker B, which
    never heard from the cacher, lists it — at its PPSPP address, role cacher."""
    trackers = make_overlay_dir(cdn.root / "trackers", TRACKERS, 2, "tracker", link="tls")
    urls: list[str] = []
    for i, daemon in enumerate(trackers):
        config = daemon.parent / "tracker.toml"
        config.write_text(
            f'[listen]\nudp = "127.0.0.1:0"\n[overlay]\ndaemon = {json.dumps(str(daemon))}\n'
            "coalesce = 0.05\nfetch_cache = 0.2\nfetch_timeout = 2.0\n"
        )
        tracker = cdn.lab.start(f"overlay-tracker{i}", "tracker", "--config", str(config))
        (url,) = tracker.wait_lines(1, START_TIMEOUT)
        urls.append(url)
    channel, peer = "extra", "cacher-ov"
    cdn.cacher_toml("ov", tracker=urls[0], peer_id=peer)
    _, address = cdn.start_cacher("ov")
    out = cdn.root / "extra-ov.bin"
    cdn.loop.run(download(cdn.swarms[channel], [address], out, timeout=20.0), timeout=25.0)
    assert out.read_bytes() == cdn.data[channel]
    host, _, port = urls[1].removeprefix("ppsp-udp://").rpartition(":")
    other = UdpTrackerClient((host, int(port)), "observer-b", timeout=5.0)
    cdn.viewers.append(other)  # closed with the module

    async def find_at_b() -> list[Any]:
        await other.connect([])
        await other.stat_query()
        swarm = cdn.swarms[channel].hex()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FLOW_TIMEOUT
        while True:  # bounded by the deadline
            with contextlib.suppress(TrackerRequestError):
                found = await other.find(swarm)
                listed = [
                    p for r in found.swarm_results for p in r.peers or [] if p.peer_id == peer
                ]
                if listed:
                    return listed
            if loop.time() >= deadline:
                raise AssertionError("tracker B never listed the cacher")
            await asyncio.sleep(0.2)

    (listed,) = cdn.loop.run(find_at_b(), timeout=FLOW_TIMEOUT + 10)
    assert listed.role is Role.CACHER and listed.area == "ov"
    assert [(a.ip, a.port) for a in listed.addresses] == [address]


# --------------------------------------------------------------------------- F3 download


def test_f3_download_from_the_cacher_filled_from_the_storage_overlay(cdn: Cdn) -> None:
    """A CSC: portal → FIND (the east cacher first) → PPSPP → verified chunks → playback with
    Q1 = 1 and every byte from the cacher, which filled its misses from the storage overlay."""
    channel, peer = "movie", "cacher-east"
    total = CHANNELS[channel]
    swarm_hex = cdn.swarms[channel].hex()
    # A viewer in the area makes the channel hot: the cacher prefetches its head on the hint.
    cdn.watch_at_tracker(channel, "east")
    wait_until(
        lambda: set(range(HEAD)) <= cdn.held(peer, channel), FLOW_TIMEOUT, "the prefetched head"
    )
    before = cdn.held(peer, channel)
    assert len(before) < total  # the body is not there yet: the CSC's requests miss
    report = cdn.csc("csc-f3", "east", "watch", channel)
    (visit,) = report["channels"]
    assert visit["ended"] and visit["stalls"] == 0 and visit["dropped"] == []
    assert report["q1"] == 1.0
    assert visit["bytes"] == {"cacher": total * CHUNK, "peer": 0, "overlay": 0, "source": 0}
    # The misses were held, filled from the overlay (verified), then served and reported.
    wait_until(lambda: cdn.held(peer, channel) == set(range(total)), FLOW_TIMEOUT, "the fills")

    def filled() -> bool:
        stats = cdn.cacher_stats("east")
        swarm = stats.get("swarms", {}).get(swarm_hex, {})
        return bool(swarm) and swarm["segments_filled"] >= total // SEGMENT

    wait_until(filled, 5.0, "the cacher's stats")
    stats = cdn.cacher_stats("east")
    assert stats["stats"]["held_requests"] >= 1
    assert stats["swarms"][swarm_hex]["segments_failed"] == 0


# --------------------------------------------------------------------------- F4 push


@dataclass
class Flight:
    """PPSPP datagrams between a CSC and its cacher on one channel, zap to first DATA."""

    sent: int  # by the CSC, its handshake included
    received: int  # by the CSC, the one carrying the first DATA included


def read_pcap(path: Path) -> list[tuple[tuple[str, int], tuple[str, int], bytes]]:
    """(source, destination, UDP payload) of each IPv4/UDP record of a classic raw-IP pcap
    (interop/capture.py writes link type 101)."""
    raw = path.read_bytes()
    magic, _, _, _, _, _, linktype = struct.unpack_from("<IHHiIII", raw, 0)
    assert magic == 0xA1B2C3D4 and linktype == 101
    out = []
    off = 24
    while off + 16 <= len(raw):
        _, _, caplen, _ = struct.unpack_from("<IIII", raw, off)
        packet = raw[off + 16 : off + 16 + caplen]
        off += 16 + caplen
        if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 17:
            continue
        ihl = (packet[0] & 0x0F) * 4
        src = socket.inet_ntoa(packet[12:16])
        dst = socket.inet_ntoa(packet[16:20])
        sport, dport = struct.unpack_from(">HH", packet, ihl)
        out.append(((src, sport), (dst, dport), packet[ihl + 8 :]))
    return out


def flight(path: Path, cacher: tuple[str, int], swarm: bytes) -> Flight:
    """Count the datagrams of the channel change to ``swarm`` at ``cacher``."""
    sent = received = 0
    ours: int | None = None  # the CSC's channel ID (the cacher sends to it)
    theirs: int | None = None  # the cacher's channel ID (the CSC sends to it)
    for src, dst, payload in read_pcap(path):
        try:
            dgram = parse_datagram(payload)
        except DecodeError as exc:
            partial = exc.partial
            if partial is None:
                continue
            dgram = partial
        if dst == cacher:
            if ours is None:
                hs = [m for m in dgram.messages if isinstance(m, Handshake)]
                if hs and hs[0].options.swarm_id == swarm:
                    ours = hs[0].source_channel
                    sent = 1
            elif dgram.channel == theirs:
                sent += 1
        elif src == cacher and ours is not None and dgram.channel == ours:
            received += 1
            for m in dgram.messages:
                if isinstance(m, Handshake) and theirs is None:
                    theirs = m.source_channel
            if any(isinstance(m, Data) for m in dgram.messages):
                return Flight(sent, received)
    raise AssertionError(f"no DATA for swarm {swarm.hex()[:12]} from {cacher} in {path}")


def test_f4_push_hints_prefetch_and_fast_channel_change(cdn: Cdn) -> None:
    """Viewers make zap1 and zap2 hot in area east, zap3 and zap4 in area west: the tracker
    hints their heads to the area's cacher, which prefetches them (the tracker's view shows
    the heads). A CSC in each area zaps between its two channels: at the east cacher (push)
    the change to the second channel gets DATA in reply to its one handshake datagram; at the
    west cacher (no push) it takes a second round trip, a REQUEST."""
    legs = {"east": ("zap1", "zap2"), "west": ("zap3", "zap4")}
    for area, channels in legs.items():
        for channel in channels:
            cdn.watch_at_tracker(channel, area)
    for area, channels in legs.items():
        for channel in channels:
            wait_until(
                functools.partial(cdn.holds_head, f"cacher-{area}", channel),
                FLOW_TIMEOUT,
                f"the head of {channel} at the {area} cacher",
            )
    flights: dict[str, Flight] = {}
    for area, channels in legs.items():
        host, _, port = cdn.cachers[area].lines()[0].rpartition(":")
        cacher = (host, int(port))
        pcap = cdn.root / f"csc-f4-{area}.pcap"
        report = cdn.csc(
            f"csc-f4-{area}", area, "--pcap", str(pcap), "zap", *channels, "--dwell", "1.0"
        )
        visits = report["channels"]
        assert [v["channel"] for v in visits] == list(channels)
        for visit in visits:
            assert visit["startup_delay"] is not None and visit["ended"], visit
            # Only the area's cacher holds the channel (the legs' channels are disjoint).
            assert visit["bytes"]["cacher"] == SEGMENT * CHUNK, visit
        flights[area] = flight(pcap, cacher, cdn.swarms[channels[1]])
    push, plain = flights["east"], flights["west"]
    # Push: the handshake alone; the reply carries (or is followed by) the head: 1 round trip.
    assert push.sent == 1, flights
    # No push: the handshake, then a REQUEST after the reply: 2 round trips.
    assert plain.sent >= 2, flights
    assert push.sent < plain.sent


# --------------------------------------------------------------------------- F5 global info


def test_f5_global_info_keeps_the_popular_head(cdn: Cdn) -> None:
    """A small cacher (room for 3 blocks of 64 chunks) holds the popular channel's head (one
    block, prefetched on a hint: the oldest block), then a cold channel fetched later (two
    blocks: full). The global info says the first channel has a viewer. A newly hinted
    channel needs a block: the cacher evicts the cold channel, more recent, and keeps the
    popular head — by recency alone the popular head would have gone first."""
    peer = "cacher-north"
    cdn.cacher_toml("north", cache_size=3 * SEGMENT * CHUNK, readahead=0)
    _, address = cdn.start_cacher("north")
    head = set(range(HEAD))
    cdn.watch_at_tracker("pop", "north")
    wait_until(lambda: head <= cdn.held(peer, "pop"), FLOW_TIMEOUT, "pop's head at the tracker")
    assert len(cdn.held(peer, "pop")) == SEGMENT  # 128 chunks: one peak, one segment
    # Global info (viewers) reaches the cacher.
    pop_hex = cdn.swarms["pop"].hex()
    wait_until(
        lambda: cdn.cacher_stats("north").get("heat", {}).get(pop_hex, {}).get("viewers") == 1,
        FLOW_TIMEOUT,
        "the global info at the cacher",
    )
    assert cdn.view("pop")["viewers"] == 1
    cold = set(range(CHANNELS["cold"]))
    out = cdn.root / "cold.bin"
    cdn.loop.run(download(cdn.swarms["cold"], [address], out, timeout=20.0), timeout=25.0)
    assert out.read_bytes() == cdn.data["cold"]
    wait_until(lambda: cdn.held(peer, "cold") == cold, FLOW_TIMEOUT, "cold cached, reported")
    assert head <= cdn.held(peer, "pop")  # the cache is full now: 3 blocks
    assert cdn.view("cold")["viewers"] == 0
    cdn.watch_at_tracker("hot", "north")
    wait_until(lambda: head <= cdn.held(peer, "hot"), FLOW_TIMEOUT, "hot's head")
    wait_until(lambda: cdn.held(peer, "cold") < cold, FLOW_TIMEOUT, "cold evicted, reported")
    assert head <= cdn.held(peer, "pop")  # the popular head stayed
    # The popular channel's heat came from the global info alone (its hint has expired).
    heat = cdn.cacher_stats("north")["heat_now"]
    assert heat[pop_hex] > 0 and heat.get(cdn.swarms["cold"].hex(), 0.0) == 0.0


# --------------------------------------------------------------------------- failures


def data_from(path: Path, sender: tuple[str, int]) -> int:
    """PPSPP datagrams carrying DATA from ``sender`` in a capture still being written."""
    try:
        records = read_pcap(path)
    except (OSError, struct.error, AssertionError):
        return 0
    count = 0
    for src, _, payload in records:
        if src != sender:
            continue
        try:
            dgram = parse_datagram(payload)
        except DecodeError as exc:
            if exc.partial is None:
                continue
            dgram = exc.partial
        count += any(isinstance(m, Data) for m in dgram.messages)
    return count


def test_a_csc_whose_cacher_dies_mid_stream_falls_back_and_plays_only_verified_chunks(
    cdn: Cdn,
) -> None:
    """The real cacher daemon, SIGKILLed while a ``p2pcdn csc`` streams from it (it sends at
    most 1 Mbit/s, link emulation, so the CSC is mid-stream): the CSC starves, falls back to
    the source the portal lists, and plays the channel to its end. What it played is the
    original (the SHA-256 of its verified chunks, ``--digest``)."""
    channel, total = "film", CHANNELS["film"]
    cdn.cacher_toml("south")
    rate = {"P2PCDN_LINK_EMULATION": "127.0.0.1/32 rate=1mbit"}
    cacher, address = cdn.start_cacher("south", env=rate)
    cdn.watch_at_tracker(channel, "south")
    wait_until(functools.partial(cdn.holds_head, "cacher-south", channel), FLOW_TIMEOUT, "the head")
    pcap = cdn.root / "csc-dies.pcap"
    csc = cdn.start_csc(
        "csc-dies", "south", "--pcap", str(pcap), "--digest", "--starvation-timeout", "0.5",
        "watch", channel,
    )  # fmt: skip
    wait_until(lambda: data_from(pcap, address) >= 16, FLOW_TIMEOUT, "chunks from the cacher")
    cacher.kill()
    report = csc_report(csc)
    (visit,) = report["channels"]
    assert visit["ended"] and visit["rescues"] >= 1 and visit["dropped"] == []
    assert 0 < visit["bytes"]["cacher"] < total * CHUNK
    assert visit["bytes"]["cacher"] + visit["bytes"]["source"] == total * CHUNK
    assert visit["sha256"] == hashlib.sha256(cdn.data[channel]).hexdigest()
