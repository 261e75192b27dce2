"""End to end on 127.0.0.1 (issue 6 items 4 and 5): the storage overlay, the tracker overlay and
the source server as separate ``p2pcdn`` processes, so that a SIGKILL is a real crash.

The two-overlay lab (draft-li-ppsp-p2p-cdn; docs/usages.md) is built once for the module:

* a storage overlay of 10 ``p2pcdn overlay`` daemons (TLS links, CHORD-RELOAD, replication 3,
  RFC 6940 §10.4) plus two in-test RELOAD peers running on a :class:`LoopThread` — the
  *reader*, a storage node that is not the source and fetches, and the *faulty* node, whose
  stored segments test 3 corrupts;
* a tracker overlay of 3 ``p2pcdn tracker --config`` daemons in overlay mode
  (draft-xiao-ppsp-reload-distributed-tracker);
* ``p2pcdn source publish`` of a 20 MiB random file, a RELOAD client (§3.2.1) of the storage
  overlay that keeps serving over PPSPP and stays registered at its connection tracker.

The trackers' roles are chosen from the certificates' Node-IDs before anything starts: the
source registers at tracker S, FIND goes to tracker F, and the swarm tracker R (the tracker
overlay node responsible for H(swarm), xiao §3.2) is the one test 2 kills — the hardest case
for FIND, whose answer then comes from a replica.

Tests 1–3 share that lab and run in file order (2 kills nodes, 3 works with the survivors);
each still passes alone. Test 4 is the one-overlay mode: five nodes that are trackers and
storers at once, by configuration alone (``usage_kinds("both")``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from ppsp.peer.merkle import HashTree
from ppsp.peer.messages import MerkleHashFunction
from ppsp.tracker.client import open_client
from ppsp.tracker.messages import Action, PeerInfo, PeerMode, Role, SwarmAction, swarm_id_hex
from ppsp.tracker.overlay import responsible_node
from reload.aio import OverlayNode, load_daemon_config
from reload.messages import DataValue, DictionaryEntry, StoredDataSpecifier
from reload.usages import (
    CONTENT_SEGMENT,
    ContentSegment,
    content_segment_key,
    content_segment_resource,
    swarm_peers_resource,
)
from reload.usages.client import ContentStore
from reload.usages.config import add_daemon, make_overlay_dir
from reload.usages.values import ContentMeta
from tests.cdn_lab import Daemon, Lab, LoopThread, node_id_of, wait_until

STORAGE = "storage.cdn.test"
TRACKERS = "trackers.cdn.test"
ONE = "one.cdn.test"
SOURCE_USER = "source@cdn.test"
CHANNEL = "movie"
BIG = 20 * 1024 * 1024
SEGMENTS = BIG // (64 * 1024)  # the default segments: 64 chunks of 1 KiB
SMALL = 2 * 1024 * 1024 + 4321  # 33 segments, the last short

START_TIMEOUT = 60.0  # a daemon's first lines (joined the overlay; listening)
PUBLISH_TIMEOUT = 120.0  # hashing and storing 20 MiB on a busy 2-core machine
REPAIR_TIMEOUT = 30.0  # the ring after a SIGKILL (links fail at once; Chord updates, §10.7)
FIND_TIMEOUT = 30.0  # a tracker's publication reaching the swarm tracker (coalesced, xiao §5)


# --------------------------------------------------------------------------- the lab set-up


def write_tracker_config(path: Path, daemon: Path) -> Path:
    """A ``p2pcdn tracker --config`` file (docs/tracker.md) for overlay mode: binary PPSP-TP
    over UDP on a free port, fast publication and a short FIND cache so that a test sees the
    overlay, not a cached answer."""
    path.write_text(
        "[listen]\n"
        'udp = "127.0.0.1:0"\n'
        "[overlay]\n"
        f"daemon = {json.dumps(str(daemon))}\n"  # a JSON string is a TOML basic string
        "coalesce = 0.05\n"
        "fetch_cache = 0.2\n"
        "fetch_timeout = 2.0\n"
    )
    return path


def start_overlay_daemons(lab: Lab, prefix: str, daemons: Sequence[Path]) -> list[Daemon]:
    """``p2pcdn overlay --config`` for each node: node 0 creates the overlay (make_overlay_dir
    lists it as its own bootstrap node), then the others join through it at once."""
    first = lab.start(f"{prefix}0", "overlay", "--config", str(daemons[0]))
    first.wait_lines(2, START_TIMEOUT)  # Node-ID, address: joined (created)
    rest = [
        lab.start(f"{prefix}{i}", "overlay", "--config", str(path))
        for i, path in enumerate(daemons[1:], 1)
    ]
    for daemon in rest:
        daemon.wait_lines(2, START_TIMEOUT)
    return [first, *rest]


def start_trackers(
    lab: Lab, prefix: str, daemons: Sequence[Path]
) -> tuple[list[Daemon], list[str]]:
    """``p2pcdn tracker --config`` in overlay mode for each node (node 0 first, as above);
    returns the processes and their ``ppsp-udp://`` URLs."""
    procs: list[Daemon] = []
    for i, daemon in enumerate(daemons):
        config = write_tracker_config(daemon.parent / "tracker.toml", daemon)
        procs.append(lab.start(f"{prefix}{i}", "tracker", "--config", str(config)))
        if i == 0:
            procs[0].wait_lines(1, START_TIMEOUT)
    urls = [proc.wait_lines(1, START_TIMEOUT)[0] for proc in procs]
    assert all(u.startswith("ppsp-udp://127.0.0.1:") for u in urls), urls
    return procs, urls


def random_file(path: Path, size: int, seed: int) -> tuple[bytes, bytes]:
    """A file of ``size`` random bytes and its swarm ID: the root hash of its SHA-256 Merkle
    tree of 1 KiB chunks (RFC 7574 §5, what ``p2pcdn source publish`` computes by default)."""
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data, HashTree.from_content(data, 1024, MerkleHashFunction.SHA256).root_hash


def source_daemon(root: Path, attach: Path) -> Path:
    """The source's daemon TOML: a RELOAD client (§3.2.1) of user SOURCE_USER — the content
    namespace USER-PREFIX-MATCH lets it write — attached to the peer of ``attach``."""
    return add_daemon(
        root, "source", SOURCE_USER, client=True, bootstrap=[load_daemon_config(attach).listen]
    )


def publish(lab: Lab, path: Path, daemon: Path, tracker: str) -> tuple[Daemon, str, list[str]]:
    """``p2pcdn source publish`` that keeps serving (so it stays registered as seeder);
    returns the process, its PPSPP address and its summary lines."""
    source = lab.start(
        "source",
        "source", "publish", str(path), "--name", CHANNEL, "--title", "A movie",
        "--overlay", str(daemon), "--tracker", tracker,
    )  # fmt: skip
    # swarm ID, HOST:PORT, then the summary up to "published ..." (portal/source_cli.py).
    wait_until(
        lambda: any(line.startswith("published") for line in source.lines()) or not source.running,
        PUBLISH_TIMEOUT,
        "the publication",
        poll=0.2,
    )
    lines = source.wait_lines(3, 1.0)
    return source, lines[1], source.lines()


async def start_peer(daemon: Path) -> OverlayNode:
    node = OverlayNode.from_config(load_daemon_config(daemon))
    try:
        await node.start(join_timeout=START_TIMEOUT)
    except BaseException:
        await node.abort()
        raise
    return node


async def routes_to_all(node: OverlayNode, ring: Sequence[bytes]) -> bool:
    """Whether a Ping to every Node-ID of ``ring`` is answered by that node (§10.3: a peer is
    responsible for its own Node-ID): the ring is whole as ``node`` sees it."""
    for node_id in ring:
        if await node.replica_set(node_id, count=1, timeout=2.0) != [node_id]:
            return False
    return True


async def wait_ring(node: OverlayNode, ring: Sequence[bytes], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await routes_to_all(node, ring):  # bounded by the deadline
        if loop.time() >= deadline:
            raise AssertionError(f"the ring of {len(ring)} peers did not form in {timeout:g} s")
        await asyncio.sleep(0.2)


async def fetch_all(reader: ContentStore, meta: ContentMeta, parallel: int = 8) -> bytes:
    """Every segment of ``meta``'s content through :meth:`ContentStore.get_segment` (each
    verified against the root hash before it is returned), reassembled in order."""
    assert meta.segments is not None
    gate = asyncio.Semaphore(parallel)

    async def one(index: int) -> bytes:
        async with gate:
            return b"".join(await reader.get_segment(meta, index))

    parts = await asyncio.gather(*(one(i) for i in range(meta.segments)))
    return b"".join(parts)


async def find_peers(url: str, swarm: bytes) -> list[PeerInfo]:
    """A new viewer's CONNECT (JOIN as leecher) and FIND of ``swarm`` at the tracker ``url``."""
    swarm_hex = swarm_id_hex(swarm)
    async with open_client(url, f"viewer-{uuid.uuid4().hex[:8]}", timeout=5.0) as viewer:
        await viewer.connect([SwarmAction(swarm_hex, Action.JOIN, PeerMode.LEECH)])
        found = await viewer.find(swarm_hex)
    return [p for r in found.swarm_results for p in (r.peers or [])]


def is_source(peer: PeerInfo, address: str) -> bool:
    return peer.role is Role.SOURCE and any(f"{a.ip}:{a.port}" == address for a in peer.addresses)


async def wait_found(url: str, swarm: bytes, address: str, timeout: float) -> PeerInfo:
    """FIND at ``url`` until the source (role SOURCE, PPSPP ``address``) is among the peers."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen: list[PeerInfo] = []
    while loop.time() < deadline:  # bounded by the deadline
        seen = await find_peers(url, swarm)
        for peer in seen:
            if is_source(peer, address):
                return peer
        await asyncio.sleep(0.3)
    raise AssertionError(f"FIND at {url} never returned the source {address}; last: {seen}")


@dataclass
class Cdn:
    """The two-overlay lab of tests 1–3."""

    lab: Lab
    loop: LoopThread
    data: bytes
    swarm: bytes
    storage: list[Daemon]  # the 10 storage daemons, node0..node9
    storage_ids: list[bytes]
    trackers: list[Daemon]
    tracker_urls: list[str]
    swarm_tracker: int  # R: responsible for H(swarm)
    connection_tracker: int  # S: where the source registered
    find_tracker: int  # F: where viewers FIND
    source: Daemon
    source_address: str
    reader: OverlayNode
    faulty: OverlayNode

    def ring(self) -> list[bytes]:
        """Node-IDs of the storage peers still alive (daemons and in-test peers)."""
        alive = [i for d, i in zip(self.storage, self.storage_ids, strict=True) if d.running]
        return sorted([*alive, self.reader.node_id, self.faulty.node_id])


@pytest.fixture(scope="module")
def cdn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cdn]:
    root = tmp_path_factory.mktemp("cdn")
    storage_dir, tracker_dir = root / "storage", root / "trackers"
    storage_tomls = make_overlay_dir(storage_dir, STORAGE, 10, "storage", link="tls")
    reader_toml = add_daemon(storage_dir, "reader", f"reader@{STORAGE}")
    faulty_toml = add_daemon(storage_dir, "faulty", f"faulty@{STORAGE}")
    source_toml = source_daemon(storage_dir, storage_tomls[0])
    tracker_tomls = make_overlay_dir(tracker_dir, TRACKERS, 3, "tracker", link="tls")
    data, swarm = random_file(root / "movie.bin", BIG, seed=6)

    # Roles of the trackers, from the Node-IDs in their certificates (§10.1).
    tracker_ids = [node_id_of(t) for t in tracker_tomls]
    swarm_tracker = tracker_ids.index(
        responsible_node(sorted(tracker_ids), swarm_peers_resource(swarm))
    )
    connection_tracker, find_tracker = (i for i in range(3) if i != swarm_tracker)

    loop = LoopThread()
    lab = Lab(root)
    nodes: list[OverlayNode] = []
    try:
        with lab.reporting():
            trackers, urls = start_trackers(lab, "tracker", tracker_tomls)
            storage = start_overlay_daemons(lab, "storage", storage_tomls)
            nodes.append(loop.run(start_peer(reader_toml), START_TIMEOUT))
            nodes.append(loop.run(start_peer(faulty_toml), START_TIMEOUT))
            reader, faulty = nodes
            storage_ids = [node_id_of(t) for t in storage_tomls]
            ring = sorted([*storage_ids, reader.node_id, faulty.node_id])
            loop.run(wait_ring(reader, ring, START_TIMEOUT), START_TIMEOUT + 10)
            source, address, summary = publish(
                lab, root / "movie.bin", source_toml, urls[connection_tracker]
            )
            assert summary[0] == swarm.hex(), summary  # the root hash we computed
            assert f"content   {BIG} bytes in {SEGMENTS} segments" in summary, summary
        yield Cdn(
            lab,
            loop,
            data,
            swarm,
            storage,
            storage_ids,
            trackers,
            urls,
            swarm_tracker,
            connection_tracker,
            find_tracker,
            source,
            address,
            reader,
            faulty,
        )
    finally:
        for node in nodes:
            with contextlib.suppress(TimeoutError):
                loop.run(node.abort(), 10)
        loop.close()
        lab.close()
        assert not [d.name for d in lab.daemons if d.running], "a daemon outlived the lab"


# --------------------------------------------------------------------------- tests 1–3


@pytest.mark.slow
def test_publish_20_mib_fetch_every_segment_elsewhere_and_find_at_another_tracker(
    cdn: Cdn,
) -> None:
    async def check() -> None:
        reader = ContentStore(cdn.reader, f"reader@{STORAGE}")
        meta = await reader.get_meta(SOURCE_USER, CHANNEL, swarm=cdn.swarm)
        assert meta.length == BIG and meta.segments == SEGMENTS and meta.title == "A movie"
        assert meta.trackers == (cdn.tracker_urls[cdn.connection_tracker],)
        assert await fetch_all(reader, meta) == cdn.data
        assert reader.bad_nodes == []
        # FIND at a tracker the source never talked to: the answer comes from the overlay.
        found = await wait_found(
            cdn.tracker_urls[cdn.find_tracker], cdn.swarm, cdn.source_address, FIND_TIMEOUT
        )
        assert found.role is Role.SOURCE

    with cdn.lab.reporting():
        assert cdn.source.running
        cdn.loop.run(check(), 90)


@pytest.mark.slow
def test_sigkill_the_swarm_tracker_and_a_storage_node_find_and_fetch_still_work(
    cdn: Cdn,
) -> None:
    # The storage daemon responsible for the most segments (not node0: the source's attached
    # peer), by the ring of the certificates' Node-IDs.
    resources = [content_segment_resource(SOURCE_USER, CHANNEL, i) for i in range(SEGMENTS)]
    ring = cdn.ring()
    load = {
        i: sum(responsible_node(ring, r) == node_id for r in resources)
        for i, node_id in enumerate(cdn.storage_ids)
        if i > 0 and cdn.storage[i].running
    }
    victim = max(load, key=lambda i: load[i])
    victim_id = cdn.storage_ids[victim]
    held = [r for r in resources if responsible_node(ring, r) == victim_id]
    assert held, "the victim must be responsible for segments, or the kill proves nothing"

    async def replicas_exclude_victim() -> bool:
        for resource in held:
            chain = await cdn.reader.replica_set(resource, timeout=2.0)
            if victim_id in chain or len(chain) < 3:
                return False
        return True

    with cdn.lab.reporting():
        # Before: the victim answers for its segments.
        chain = cdn.loop.run(cdn.reader.replica_set(held[0], timeout=2.0), 10)
        assert chain[0] == victim_id
        cdn.trackers[cdn.swarm_tracker].kill()
        cdn.storage[victim].kill()

        # The ring repairs (bounded): Pings for the victim's segments reach live peers only.
        async def repaired() -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + REPAIR_TIMEOUT
            while not await replicas_exclude_victim():  # bounded by the deadline
                if loop.time() >= deadline:
                    raise AssertionError("the storage ring did not repair after the SIGKILL")
                await asyncio.sleep(0.5)

        cdn.loop.run(repaired(), REPAIR_TIMEOUT + 15)

        async def after() -> None:
            # FIND at a surviving tracker that is not the source's: the swarm tracker is dead,
            # so the swarm's entries come from a replica (RFC 6940 §10.4).
            await wait_found(
                cdn.tracker_urls[cdn.find_tracker], cdn.swarm, cdn.source_address, FIND_TIMEOUT
            )
            reader = ContentStore(cdn.reader, f"reader@{STORAGE}")
            meta = await reader.get_meta(SOURCE_USER, CHANNEL, swarm=cdn.swarm)
            assert await fetch_all(reader, meta) == cdn.data
            assert reader.bad_nodes == []

        cdn.loop.run(after(), 90)
        assert cdn.source.running and cdn.trackers[cdn.connection_tracker].running


@pytest.mark.slow
def test_a_corrupted_segment_is_caught_by_verification_and_fetched_from_a_replica(
    cdn: Cdn, caplog: pytest.LogCaptureFixture
) -> None:
    faulty = cdn.faulty
    assert faulty.node is not None
    store = faulty.node.store_

    async def tamper() -> dict[int, bytes]:
        """Flip a bit in the chunk data of every segment the faulty node is responsible for,
        in its DataStore (the value stays well-formed CBOR: only verification can tell)."""
        originals: dict[int, bytes] = {}
        ring = cdn.ring()
        for index in range(SEGMENTS):
            resource = content_segment_resource(SOURCE_USER, CHANNEL, index)
            if responsible_node(ring, resource) != faulty.node_id:
                continue
            # The overlay agrees: the faulty node is the responsible peer, not a replica.
            assert (await cdn.reader.replica_set(resource, timeout=2.0))[0] == faulty.node_id
            key = content_segment_key(CHANNEL, index)
            state = store._data.get(resource, {}).get(CONTENT_SEGMENT)
            if state is None or key not in state.entries:
                continue  # not handed over yet after test 2's kill: the replicas answer anyway
            entry = state.entries[key]
            assert isinstance(entry.data.value, DictionaryEntry)
            good = ContentSegment.decode(entry.data.value.value.value)
            bad = bytearray(good.data)
            bad[len(bad) // 2] ^= 0x01
            forged = dataclasses.replace(good, data=bytes(bad)).encode()
            value = DictionaryEntry(key, DataValue(True, forged))
            entry.data = dataclasses.replace(entry.data, value=value)
            originals[index] = good.data
        return originals

    async def check(originals: dict[int, bytes]) -> ContentStore:
        reader = ContentStore(cdn.reader, f"reader@{STORAGE}")
        meta = await reader.get_meta(SOURCE_USER, CHANNEL, swarm=cdn.swarm)
        for index, good in originals.items():
            assert b"".join(await reader.get_segment(meta, index)) == good
        return reader

    with cdn.lab.reporting():
        # After test 2's kill the ring repairs and data moves (§10.7.3): the faulty node may
        # need a moment to hold the segments it became responsible for.
        deadline = time.monotonic() + 45.0
        originals = cdn.loop.run(tamper(), 60)
        while not originals and time.monotonic() < deadline:
            time.sleep(1.0)
            originals = cdn.loop.run(tamper(), 60)
        assert originals, "the faulty node holds no segment it is responsible for"
        # The faulty node really serves the corrupted bytes (the test is not vacuous).
        index = next(iter(originals))
        served = cdn.loop.run(
            cdn.reader.fetch(
                content_segment_resource(SOURCE_USER, CHANNEL, index),
                [StoredDataSpecifier(CONTENT_SEGMENT, keys=(content_segment_key(CHANNEL, index),))],
                at=faulty.node_id,
                timeout=10.0,
            ),
            15,
        )
        (value,) = served.kind_responses[0].values
        assert isinstance(value.value, DictionaryEntry)
        assert ContentSegment.decode(value.value.value.value).data != originals[index]
        with caplog.at_level(logging.WARNING, logger="reload.usages.client"):
            reader = cdn.loop.run(check(originals), 60)
        # Each corrupted segment was caught and its responsible peer — the faulty node —
        # reported, once per segment, and in the log.
        assert reader.bad_nodes == [faulty.node_id] * len(originals)
        assert faulty.node_id.hex() in caplog.text


# --------------------------------------------------------------------------- test 4


@pytest.mark.slow
def test_one_overlay_mode_five_nodes_are_trackers_and_storers(tmp_path: Path) -> None:
    daemons = make_overlay_dir(tmp_path, ONE, 5, "both", link="tls")
    # The reader is a RELOAD client (§3.2.1): it adds no sixth peer to the overlay.
    reader_toml = add_daemon(
        tmp_path,
        "reader",
        f"reader@{ONE}",
        client=True,
        bootstrap=[load_daemon_config(daemons[1]).listen],
    )
    source_toml = source_daemon(tmp_path, daemons[0])
    data, swarm = random_file(tmp_path / "clip.bin", SMALL, seed=4)
    loop = LoopThread()
    with Lab(tmp_path) as lab, lab.reporting():
        try:
            _, urls = start_trackers(lab, "node", daemons)
            _, address, summary = publish(lab, tmp_path / "clip.bin", source_toml, urls[0])
            assert summary[0] == swarm.hex(), summary

            async def check() -> None:
                reader_node = await start_peer(reader_toml)
                try:
                    reader = ContentStore(reader_node, f"reader@{ONE}")
                    meta = await reader.get_meta(SOURCE_USER, CHANNEL, swarm=swarm)
                    assert meta.segments == 33
                    assert await fetch_all(reader, meta) == data
                    # FIND at another node's tracker: the same overlay holds the swarm.
                    await wait_found(urls[3], swarm, address, FIND_TIMEOUT)
                finally:
                    await reader_node.abort()

            loop.run(check(), 90)
        finally:
            loop.close()
    assert not [d.name for d in lab.daemons if d.running]
