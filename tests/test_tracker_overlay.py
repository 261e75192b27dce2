"""The tracker in overlay mode (issue 6 item 2, item 4's tracker side; draft-xiao-ppsp-reload-
distributed-tracker-03): the pure decisions (ranking, what to Store, the PEER-BATCH derived
fetch) without sockets, then real tracker overlays on 127.0.0.1 (TLS links): FIND across
trackers, a tracker killed without Leave, a 200-swarm batch report, hostile overlay values,
one-overlay mode."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppsp.tracker.client import TrackerRequestError, open_client
from ppsp.tracker.config import ConfigError, OverlaySettings, TrackerDaemonConfig, config_from_dict
from ppsp.tracker.messages import (
    Action,
    Connect,
    PeerAddress,
    PeerInfo,
    PeerMode,
    Role,
    StatReport,
    SwarmAction,
    SwarmAvailability,
)
from ppsp.tracker.overlay import (
    Candidate,
    OverlayTracker,
    batch_parts,
    merge_peers,
    plan_stores,
    responsible_node,
)
from ppsp.tracker.server import TrackerServer, serve
from reload.access import chord_resource_id
from reload.messages import DataValue, DictionaryEntry, StoredData
from reload.storage import synthetic_signature
from reload.usages import PEER_BATCH, SWARM_PEERS, PeerBatch, PeerRecord, SwarmPeers
from reload.usages.tracker import (
    SwarmPeersRule,
    info_of,
    read_swarm_peers,
    record_of,
    swarm_bytes,
)

T1 = b"\x01" * 16
T2 = b"\x02" * 16


def rec(peer: str, **kw: Any) -> PeerRecord:
    kw.setdefault("addrs", (("127.0.0.1", 7000, "udp"),))
    return PeerRecord(peer, **kw)


# ---------------------------------------------------------------------------- pure parts


def test_swarm_bytes_inverts_the_hex_swarm_id_and_keeps_other_strings() -> None:
    assert swarm_bytes("00ff10") == b"\x00\xff\x10"
    assert swarm_bytes("channel-1") == b"channel-1"
    assert swarm_bytes("ABCD") == b"ABCD"  # not our lowercase hex: an opaque string
    assert swarm_bytes("abc") == b"abc"  # odd length


def test_record_and_info_round_trip_and_unpublishable_peers() -> None:
    info = PeerInfo("p1", [PeerAddress("10.0.0.1", 5000), PeerAddress("host.example", 1)])
    info.role, info.area = Role.CACHER, "eu"
    record = record_of(info, PeerMode.SEEDER, [(0, 9), (20, 29)], 5.0)
    assert record is not None
    assert record.addrs == (("10.0.0.1", 5000, "udp"),)  # a host name is no IP: left out
    assert (record.role, record.mode, record.ranges) == ("cacher", "seeder", ((0, 9), (20, 29)))
    back = info_of(record)
    assert (back.peer_id, back.role, back.area) == ("p1", Role.CACHER, "eu")
    assert [(a.ip, a.port) for a in back.addresses] == [("10.0.0.1", 5000)]
    # No role: a viewer (CSC); no IP address at all: nothing to publish.
    viewer = record_of(PeerInfo("v", [PeerAddress("::1", 9)]), PeerMode.LEECH, None, 0.0)
    assert viewer is not None and viewer.role == "csc" and viewer.ranges == ()
    assert record_of(PeerInfo("x", [PeerAddress("nowhere", 1)]), PeerMode.LEECH, None, 0) is None
    many = [(i * 3, i * 3) for i in range(5000)]
    capped = record_of(info, PeerMode.SEEDER, many, 0.0)
    assert capped is not None and len(capped.ranges) == 1024 and capped.ranges[0] == (0, 0)


def test_merge_ranks_remote_peers_by_the_trackers_own_order() -> None:
    def info(peer: str, role: Role | None = None, area: str | None = None) -> PeerInfo:
        return PeerInfo(peer, [PeerAddress("127.0.0.1", 1)], role, area)

    local = [(info("local-leech"), PeerMode.LEECH, 0), (info("me"), PeerMode.LEECH, 0)]
    remote = [
        Candidate.of(rec("far-seed", mode="seeder")),
        Candidate.of(rec("holder", mode="leecher", ranges=((0, 99),))),
        Candidate.of(rec("near-cacher", role="cacher", area="eu", mode="seeder")),
        Candidate.of(rec("local-leech", mode="seeder")),  # known locally: local entry wins
    ]
    peers, from_overlay = merge_peers(
        local, remote, requester="me", area="eu", ranges=[(10, 19)], k=10
    )
    assert [p.peer_id for p in peers] == ["near-cacher", "holder", "far-seed", "local-leech"]
    assert from_overlay == 3
    # k bounds the answer; a peer the local tracker knows is never taken from the overlay.
    peers, _ = merge_peers(
        local, remote, requester="me", area=None, ranges=None, k=2, exclude=lambda p: p == "holder"
    )
    assert [p.peer_id for p in peers] == ["far-seed", "near-cacher"]
    assert merge_peers(local, remote, requester="me", area=None, ranges=None, k=0) == ([], 0)


@given(
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 30)), max_size=12),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 30)), max_size=6),
)
def test_candidate_overlap_counts_held_wanted_chunks(
    held: list[tuple[int, int]], wanted: list[tuple[int, int]]
) -> None:
    ranges = tuple((s, s + n) for s, n in held)
    have = {c for s, e in ranges for c in range(s, e + 1)}
    # FIND's wanted ranges are disjoint (the tracker's _overlap assumes it too).
    want_set: set[int] = set()
    disjoint: list[tuple[int, int]] = []
    for s, n in wanted:
        span = set(range(s, s + n + 1))
        if not span & want_set:
            want_set |= span
            disjoint.append((s, s + n))
    cand = Candidate.of(rec("p", ranges=ranges))
    assert cand.overlap(disjoint) == len(have & want_set)


def test_plan_stores_batches_per_responsible_node_from_the_threshold() -> None:
    owner = {f"s{i}": (b"A" if i < 10 else b"B") for i in range(13)}
    # A node with few of the changed swarms (B: 3) is batched too: one Store per node.
    singles, batched = plan_stores(owner, owner.__getitem__, threshold=5)
    assert batched == {b"A", b"B"} and singles == []
    singles, batched = plan_stores(["s1", "s11"], owner.__getitem__, threshold=5)
    assert batched == set() and sorted(singles) == ["s1", "s11"]


def test_responsible_node_is_the_first_at_or_after_the_resource() -> None:
    ring = [b"\x10", b"\x80", b"\xc0"]
    assert responsible_node(ring, b"\x10") == b"\x10"
    assert responsible_node(ring, b"\x11") == b"\x80"
    assert responsible_node(ring, b"\xc1") == b"\x10"  # wraps round the ring


def test_batch_parts_split_over_budget_inside_the_nodes_range() -> None:
    node = (5000).to_bytes(16, "big")
    swarms = {bytes([i]) * 20: (rec(f"peer{i}", ranges=((0, i),)),) for i in range(200)}
    whole = batch_parts(node, T1, swarms, 1 << 20)
    assert len(whole) == 1 and whole[0][0] == node
    parts = batch_parts(node, T1, swarms, 4096)
    assert len(parts) > 2
    resources = [r for r, _ in parts]
    assert resources == [(5000 - i).to_bytes(16, "big") for i in range(len(parts))]
    seen: dict[bytes, tuple[PeerRecord, ...]] = {}
    for _, entry in parts:
        assert len(entry.value.value) <= 4096 and entry.key == T1
        batch = PeerBatch.decode(entry.value.value)
        assert not set(batch.swarms) & set(seen)
        seen.update(batch.swarms)
    assert seen == swarms


# ---------------------------------------------------------------------------- the local state


def _connect(peer: str, *swarms: str, mode: PeerMode = PeerMode.SEEDER, **kw: Any) -> Connect:
    actions = [SwarmAction(s, Action.JOIN, mode) for s in swarms]
    kw.setdefault("peer_addresses", [PeerAddress("127.0.0.1", 6000)])
    return Connect(peer, f"t{random.getrandbits(48)}", actions, **kw)


def test_overlay_tracker_answers_like_the_tracker_and_notes_changes() -> None:
    tracker = OverlayTracker()
    source = ("127.0.0.1", 1)
    tracker.handle(_connect("a", "s1", "s2", role=Role.CACHER, area="eu"), source, 0.0)
    assert tracker.dirty_swarms == {"s1", "s2"} and tracker.dirty_peers == {"a"}
    tracker.dirty_swarms.clear()
    tracker.dirty_peers.clear()
    records = tracker.records("s1", 1.0, 10)
    assert [(r.peer, r.role, r.area, r.mode) for r in records] == [("a", "cacher", "eu", "seeder")]
    assert tracker.records("nothing", 1.0, 10) == ()
    # A new area for the peer: its records change in every swarm it is in.
    tracker.handle(
        Connect("a", "t9", [], area="us", peer_addresses=[PeerAddress("127.0.0.1", 6000)]),
        source,
        1.0,
    )
    assert tracker.dirty_swarms == {"s1", "s2"}
    tracker.dirty_swarms.clear()
    # The track timer expires: the peer leaves both swarms (§2.3.2 D).
    tracker.handle_timer(10_000.0)
    assert tracker.dirty_swarms == {"s1", "s2"} and "a" in tracker.dirty_peers
    assert tracker.swarm_ids() == [] and tracker.peer_status("a") is None


_REQUESTS = st.lists(
    st.tuples(
        st.sampled_from(["p0", "p1", "p2"]),
        st.sampled_from(["connect", "report", "delta", "area", "expire"]),
        st.lists(st.sampled_from(["s0", "s1", "s2", "s3"]), max_size=3, unique=True),
        st.integers(0, 50),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(_REQUESTS)
def test_every_change_of_a_published_record_marks_its_swarm_dirty(
    steps: list[tuple[str, str, list[str], int]],
) -> None:
    """A swarm not marked dirty has exactly the records it had when last published: the hooks
    on the state's primitives miss no change (else a change would never reach the overlay)."""
    from ppsp.tracker.messages import AvailabilityDelta

    tracker = OverlayTracker()
    now = 0.0
    published: dict[str, tuple[PeerRecord, ...]] = {}
    for n, (peer, what, swarms, chunk) in enumerate(steps):
        now += 1.0
        source = ("127.0.0.1", 1000 + n % 3)
        if what == "connect":
            avail = [SwarmAvailability(s, ranges=[(0, chunk)]) for s in swarms]
            request: Any = _connect(peer, *swarms, availability=avail)
        elif what == "report":
            avail = [SwarmAvailability(s, ranges=[(chunk, chunk + 3)]) for s in swarms]
            request = StatReport(peer, f"r{n}", availability=avail)
        elif what == "delta":
            deltas = [AvailabilityDelta(s, cached=[(chunk, chunk)]) for s in swarms[:1]]
            deltas += [AvailabilityDelta(s, evicted=[(0, chunk)]) for s in swarms[1:]]
            request = StatReport(peer, f"d{n}", deltas=deltas)
        elif what == "area":
            request = Connect(peer, f"a{n}", [], area=f"area{chunk % 2}", role=Role.CACHER)
        else:
            tracker.handle_timer(now + 1000.0)
            now += 1000.0
            request = None
        if request is not None:
            tracker.handle(request, source, now)
        for swarm in {*published, *tracker.swarm_ids()}:
            current = tracker.records(swarm, 0.0, 100)
            if swarm not in tracker.dirty_swarms:
                assert current == published.get(swarm, ()), (n, swarm)
            published[swarm] = current
        tracker.dirty_swarms.clear()


# ---------------------------------------------------------------------------- derived fetch


@dataclass
class FakeStore:
    """What SwarmPeersRule reads of a DataStore."""

    batches: list[tuple[bytes, StoredData]]
    resource_id_function: Callable[[bytes], bytes] = chord_resource_id

    def kind_values(self, kind_id: int, now: float) -> list[tuple[bytes, StoredData]]:
        assert kind_id == PEER_BATCH
        return self.batches


def stored(key: bytes, value: bytes, storage_time: int) -> StoredData:
    return StoredData(
        storage_time, 60, DictionaryEntry(key, DataValue(True, value)), synthetic_signature()
    )


def test_swarm_peers_answers_include_batches_newest_entry_per_tracker_wins() -> None:
    swarm = b"\xaa" * 20
    resource = chord_resource_id(swarm)
    batch1 = PeerBatch(T1, {swarm: (rec("from-batch"),), b"\xbb" * 20: (rec("other"),)})
    batch2 = PeerBatch(T2, {swarm: (rec("t2-batch"),)})
    store = FakeStore(
        [(T1, stored(T1, batch1.encode(), 100)), (T2, stored(T2, batch2.encode(), 100))]
    )
    rule = SwarmPeersRule()
    single_new = stored(T2, SwarmPeers(T2, (rec("t2-single"),)).encode(), 200)
    out = rule(store, resource, [single_new], 1.0)  # type: ignore[arg-type]
    got, bad = read_swarm_peers(out)
    assert bad == 0
    assert {k: [r.peer for r in v] for k, v in got.items()} == {
        T1: ["from-batch"],  # derived from T1's batch
        T2: ["t2-single"],  # T2's own later single Store beats its older batch
    }
    single_old = stored(T2, SwarmPeers(T2, (rec("t2-single"),)).encode(), 50)
    got, _ = read_swarm_peers(rule(store, resource, [single_old], 1.0))  # type: ignore[arg-type]
    assert [r.peer for r in got[T2]] == ["t2-batch"]
    # A resource no batch mentions: the stored values as they are.
    assert rule(store, b"\x00" * 16, [single_old], 1.0) == [single_old]  # type: ignore[arg-type]


def test_hostile_batches_contribute_nothing_and_are_counted() -> None:
    swarm = b"\xaa" * 20
    good = PeerBatch(T1, {swarm: (rec("good"),)}).encode()
    forged = PeerBatch(T1, {swarm: (rec("forged"),)}).encode()  # stored under T2's key
    store = FakeStore(
        [
            (T1, stored(T1, good, 1)),
            (T2, stored(T2, forged, 1)),
            (T2 + b"", stored(b"\x03" * 16, b"\xff\xfe garbage", 1)),
        ]
    )
    rule = SwarmPeersRule()
    got, _ = read_swarm_peers(rule(store, chord_resource_id(swarm), [], 1.0))  # type: ignore[arg-type]
    assert {k: [r.peer for r in v] for k, v in got.items()} == {T1: ["good"]}
    assert rule.malformed == 2
    rule(store, chord_resource_id(swarm), [], 2.0)  # type: ignore[arg-type]
    assert rule.malformed == 2  # decoded once per stored version


@dataclass(frozen=True)
class NodeSigner:
    """What check_access reads of a verified signer (NODE-KEY-MATCH: its Node-ID)."""

    user_name: str | None
    node_id: bytes | None


def test_data_store_runs_the_rule_on_fetch_only_and_survives_its_failure() -> None:
    from reload.messages import (
        FetchAns,
        FetchReq,
        SignatureAndHashAlgorithm,
        SignerIdentity,
        SignerIdentityType,
        StatAns,
        StatReq,
        StoredDataSpecifier,
        StoreKindData,
        StoreReq,
    )
    from reload.messages import Signature as Sig
    from reload.storage import DataStore
    from reload.usages.config import usage_kinds
    from reload.usages.tracker import install_swarm_peers_rule, peer_batch_entry

    sig = Sig(
        SignatureAndHashAlgorithm(4, 3),
        SignerIdentity(SignerIdentityType.CERT_HASH, 4, b"h" * 32),
        b"signature",
    )
    store = DataStore(kinds=usage_kinds("tracker"))
    swarm = b"\xaa" * 20
    entry = peer_batch_entry(T1, {swarm: (rec("batched"),)})
    value = StoredData(1_700_000_000_000, 60, entry, sig)
    answer = store.store(
        StoreReq(T1, 0, (StoreKindData(PEER_BATCH, 0, (value,)),)),
        NodeSigner("t1", T1),
        1_700_000_000.0,
    )
    assert not hasattr(answer, "code"), answer
    resource = chord_resource_id(swarm)
    spec = StoredDataSpecifier(SWARM_PEERS, keys=())

    def fetched(generation: int = 0) -> list[str]:
        got = store.fetch(
            FetchReq(resource, (replace(spec, generation=generation),)), 1_700_000_001.0
        )
        assert isinstance(got, FetchAns)
        records, _ = read_swarm_peers(got.kind_responses[0].values)
        return [r.peer for v in records.values() for r in v]

    assert fetched() == []  # no rule: only what is stored at H(swarm) (nothing)
    rule = install_swarm_peers_rule(store)
    assert fetched() == ["batched"]
    assert fetched(generation=5) == []  # a conditional fetch is about stored values alone
    stat = store.stat(StatReq(resource, (spec,)), 1_700_000_001.0)
    assert isinstance(stat, StatAns) and stat.kind_responses[0].values == ()
    assert [r for r, _ in store.kind_values(PEER_BATCH, 1_700_000_001.0)] == [T1]
    assert rule.malformed == 0

    def broken(*_args: object) -> list[StoredData]:
        raise RuntimeError("a usage bug")

    store.set_derived_fetch(SWARM_PEERS, broken)
    assert fetched() == []  # the stored values stand; Fetch is not taken down
    store.set_derived_fetch(SWARM_PEERS, None)
    assert fetched() == []


@given(st.lists(st.binary(max_size=300), max_size=5), st.binary(max_size=300))
def test_read_swarm_peers_fuzz_never_raises(values: list[bytes], batch: bytes) -> None:
    data = [stored(bytes([i + 1]) * 16, v, 1) for i, v in enumerate(values)]
    got, bad = read_swarm_peers(data)
    assert len(got) + bad <= len(values)
    rule = SwarmPeersRule()
    out = rule(FakeStore([(T1, stored(T1, batch, 1))]), b"\x00" * 16, data, 0.0)  # type: ignore[arg-type]
    assert out == sorted(data, key=lambda d: d.value.key)  # type: ignore[union-attr]


# ---------------------------------------------------------------------------- configuration


def test_overlay_section_of_the_tracker_configuration(tmp_path: Path) -> None:
    config = config_from_dict(
        {"overlay": {"daemon": "node/daemon.toml", "lifetime": 30, "coalesce": 0.5}}, tmp_path
    )
    assert config.overlay == OverlaySettings(
        tmp_path / "node/daemon.toml", lifetime=30, coalesce=0.5
    )
    with pytest.raises(ConfigError, match="daemon"):
        config_from_dict({"overlay": {"lifetime": 30}}, tmp_path)
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_dict({"overlay": {"daemon": "x", "nope": 1}}, tmp_path)
    with pytest.raises(ConfigError, match="lifetime"):
        config_from_dict({"overlay": {"daemon": "x", "lifetime": 1}}, tmp_path)
    missing = TrackerDaemonConfig(udp=("127.0.0.1", 0), overlay=OverlaySettings(tmp_path / "no"))
    with pytest.raises(ConfigError, match="does not exist"):
        missing.validate()


# ---------------------------------------------------------------------------- real overlays

OVERLAY = "trackers.p2pcdn.test"


def run(coro: Awaitable[None]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, 90)

    asyncio.run(bounded())


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def start_trackers(root: Path, count: int, role: str) -> list[TrackerServer]:
    from reload.usages.config import make_overlay_dir

    daemons = make_overlay_dir(root, OVERLAY, count, role, link="tls", bootstrap_count=1)
    servers: list[TrackerServer] = []
    try:
        for daemon in daemons:
            overlay = OverlaySettings(daemon, lifetime=60, coalesce=0.05, fetch_timeout=2.0)
            config = TrackerDaemonConfig(
                http=("127.0.0.1", 0), udp=("127.0.0.1", 0), tcp=("127.0.0.1", 0), overlay=overlay
            )
            servers.append(await serve(config))
        await wait_for(lambda: all(ring_of(s) == count for s in servers), 30, "the ring")
    except BaseException:
        await stop(servers)
        raise
    return servers


def ring_of(server: TrackerServer) -> int:
    assert server.overlay is not None
    return len(server.overlay._ring_view())


async def stop(servers: list[TrackerServer]) -> None:
    for server in servers:
        assert server.overlay is not None
        await server.overlay.node.abort()  # no Leave: quick
        server.close()
    for server in servers:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5)


def url(server: TrackerServer, scheme: str = "ppsp-udp") -> str:
    return next(u for u in server.urls if u.startswith(scheme + ":"))


async def find_peers(server: TrackerServer, peer: str, swarm: str) -> list[str]:
    async with open_client(url(server), peer, timeout=5.0) as client:
        try:
            response = await client.find(swarm)
        except TrackerRequestError:
            return []
    return [p.peer_id for r in response.swarm_results for p in (r.peers or [])]


async def published(server: TrackerServer) -> None:
    """Wait until the tracker has nothing left to publish."""
    assert server.overlay is not None
    overlay = server.overlay
    tracker = overlay.tracker
    await wait_for(
        lambda: not tracker.dirty_swarms and not tracker.dirty_peers and not overlay._wake.is_set(),
        10,
        "publication",
    )
    await asyncio.sleep(0.3)  # the Stores of the last flush complete


async def settled(servers: list[TrackerServer]) -> None:
    """Wait until every tracker has published for the ring it sees (a ring change re-publishes
    everything) and has nothing left to publish."""

    def done() -> bool:
        for server in servers:
            overlay = server.overlay
            assert overlay is not None
            if overlay._ring != overlay._ring_view() or overlay._wake.is_set():
                return False
        return True

    await wait_for(done, 10, "the trackers to settle")
    for server in servers:
        await published(server)


def test_find_at_another_tracker_and_after_a_tracker_dies(tmp_path: Path) -> None:
    async def scenario() -> None:
        servers = await start_trackers(tmp_path, 3, "tracker")
        try:
            t0, t1, t2 = servers
            await settled(servers)
            # A swarm whose swarm tracker (the responsible node, xiao §3.2) is tracker 1, the
            # one that dies: FIND must then be served by a replica.
            assert t0.overlay is not None
            ring = sorted(s.overlay.node_id for s in servers if s.overlay is not None)
            swarm = next(
                sid
                for sid in (f"{i:040x}" for i in range(10_000))
                if responsible_node(ring, chord_resource_id(bytes.fromhex(sid)))
                == t0.overlay.node_id
            )
            more = ["e1" * 20, "e2" * 20]  # found over TCP and HTTP below
            async with open_client(url(t0), "peer-a", timeout=5.0) as a:
                await a.connect(
                    [SwarmAction(s, Action.JOIN, PeerMode.SEEDER) for s in (swarm, *more)],
                    peer_addresses=[PeerAddress("127.0.0.1", 7001)],
                    role=Role.SOURCE,
                )
            await published(t0)
            assert t0.overlay is not None
            assert t0.overlay.counters.swarm_peers_stores == 3  # three swarms: no batch
            # Peer B joins the swarm at tracker 3 (answered with a peer list, merged), then FINDs.
            async with open_client(url(t2), "peer-b", timeout=5.0) as b:
                joined = await b.connect(
                    [SwarmAction(swarm, Action.JOIN, PeerMode.LEECH)],
                    peer_addresses=[PeerAddress("127.0.0.1", 7002)],
                )
                assert [p.peer_id for p in joined.swarm_results[0].peers or []] == ["peer-a"]
                found = await b.find(swarm)
            peers = found.swarm_results[0].peers or []
            assert [p.peer_id for p in peers] == ["peer-a"]
            assert [(a.ip, a.port) for a in peers[0].addresses] == [("127.0.0.1", 7001)]
            assert peers[0].role is Role.SOURCE
            # The same over binary TCP and JSON HTTP, for swarms tracker 3 does not track and
            # has not fetched yet: those answers wait for a Fetch.
            for scheme, other in zip(("ppsp-tcp", "http"), more, strict=True):
                async with open_client(url(t2, scheme), "peer-b", timeout=5.0) as b:
                    found = await b.find(other)
                assert [p.peer_id for p in found.swarm_results[0].peers or []] == ["peer-a"]
            assert t2.overlay is not None and t2.overlay.counters.fetches >= 3
            assert t2.stats()["overlay"]["fetches"] == t2.overlay.counters.fetches
            # Tracker 1 dies without a Leave: tracker 2's FIND still finds A (a replica).
            assert t0.overlay is not None
            await t0.overlay.node.abort()
            t0.close()
            async with open_client(url(t1), "peer-c", timeout=5.0) as c:
                await c.connect([SwarmAction("cd" * 20, Action.JOIN, PeerMode.LEECH)])
            deadline = time.monotonic() + 30
            found_c: list[str] = []
            while time.monotonic() < deadline and "peer-a" not in found_c:
                found_c = await find_peers(t1, "peer-c", swarm)
                await asyncio.sleep(0.3)
            # A (a seeder, at the dead tracker) and B (a leecher, at tracker 3), seeders first.
            assert found_c == ["peer-a", "peer-b"]
            # An unregistered requester still gets the RFC's error, overlay or not.
            assert await find_peers(t1, "stranger", swarm) == []
        finally:
            await stop(servers)

    run(scenario())


def test_batch_report_is_one_store_per_responsible_node_in_one_overlay_mode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """200 swarms reported at once → at most 3 membership Stores for a 3-node overlay, and
    FIND at another tracker returns the cacher for any of them; the overlay declares the
    storage Kinds too (one-overlay mode) and garbage at SWARM-PEERS / PEER-BATCH is ignored."""
    swarms = [f"{i:040x}" for i in range(200)]

    async def scenario() -> None:
        servers = await start_trackers(tmp_path, 3, "both")
        try:
            t0, t1, t2 = servers
            await settled(servers)
            assert t0.overlay is not None
            before = replace(t0.overlay.counters)
            passes = len(t0.overlay.passes)
            async with open_client(url(t0), "cacher", timeout=10.0) as cacher:
                await cacher.connect(
                    peer_addresses=[PeerAddress("127.0.0.1", 7100)],
                    role=Role.CACHER,
                    availability=[SwarmAvailability(s, ranges=[(0, 63)]) for s in swarms],
                )
            await published(t0)
            # The pass that carried the 200 changed swarms made one PEER-BATCH Store per
            # responsible node (a ring change in between would add a full pass, also ≤ 3).
            (batch_pass,) = [p for p in list(t0.overlay.passes)[passes:] if p.changed >= 200]
            assert batch_pass.swarm_peers_stores == 0
            assert 1 <= batch_pass.peer_batch_stores <= 3, t0.overlay.passes
            after = t0.overlay.counters
            assert after.store_failures == before.store_failures
            assert after.peer_status_stores - before.peer_status_stores == 1  # one peer
            # Garbage in the overlay, written by a tracker (NODE-KEY-MATCH lets it write its
            # own entries only): a SWARM-PEERS value and a PEER-BATCH that are not CBOR.
            assert t1.overlay is not None and t2.overlay is not None
            node1 = t1.overlay.node
            key1 = node1.node_id
            garbage = DictionaryEntry(key1, DataValue(True, cbor2.dumps({"v": 1, "peers": 7})))
            await node1.store(chord_resource_id(bytes.fromhex(swarms[5])), SWARM_PEERS, [garbage])
            junk = DictionaryEntry(key1, DataValue(True, b"\xff\x00 not cbor"))
            await node1.store(key1, PEER_BATCH, [junk])
            async with open_client(url(t2), "viewer", timeout=5.0) as viewer:
                await viewer.connect([SwarmAction("ee" * 20, Action.JOIN, PeerMode.LEECH)])
            with caplog.at_level(logging.WARNING, logger="reload.usages.tracker"):
                missing = [s for s in swarms if await find_peers(t2, "viewer", s) != ["cacher"]]
            assert missing == []
            assert t2.overlay.counters.malformed_values >= 1
            assert "malformed SWARM-PEERS" in caplog.text  # logged, and FIND went on
            assert "malformed PEER-BATCH" in caplog.text
            assert t2.counters.internal_errors == 0
            # A FIND asks for the wanted chunks: the cacher holds 0-63 and is listed.
            async with open_client(url(t2), "viewer", timeout=5.0) as viewer:
                hit = await viewer.find(swarms[7], ranges=[(10, 20)])
            assert [p.peer_id for p in hit.swarm_results[0].peers or []] == ["cacher"]
        finally:
            await stop(servers)

    run(scenario())


def test_cli_tracker_joins_the_overlay_serves_and_leaves(tmp_path: Path) -> None:
    """``p2pcdn tracker --overlay DAEMON.toml``: a tracker whose RELOAD node is the overlay's
    first peer answers PPSP-TP, publishes, and stops cleanly on SIGTERM."""
    import os
    import signal
    import subprocess
    import sys

    from reload.usages.config import make_overlay_dir

    (daemon,) = make_overlay_dir(tmp_path, OVERLAY, 1, "tracker", bootstrap_count=1)
    cli = [sys.executable, "-m", "lab.cli", "tracker"]
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [*cli, "--udp", "127.0.0.1:0", "--overlay", str(daemon)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=repo,
        env=dict(os.environ, PYTHONPATH=str(repo)),
    )
    try:
        assert proc.stdout is not None
        udp = proc.stdout.readline().strip()
        assert udp.startswith("ppsp-udp://127.0.0.1:"), udp

        async def use() -> list[str]:
            async with open_client(udp, "seeder", timeout=5.0) as seeder:
                await seeder.connect(
                    [SwarmAction("ab" * 20, Action.JOIN, PeerMode.SEEDER)],
                    peer_addresses=[PeerAddress("127.0.0.1", 7001)],
                )
            async with open_client(udp, "viewer", timeout=5.0) as viewer:
                await viewer.connect([SwarmAction("ab" * 20, Action.JOIN, PeerMode.LEECH)])
                found = await viewer.find("ab" * 20)
            return [p.peer_id for p in found.swarm_results[0].peers or []]

        assert asyncio.run(asyncio.wait_for(use(), 30)) == ["seeder"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        if proc.stdout is not None:
            proc.stdout.close()


def test_plain_overlay_nodes_install_the_peer_batch_rule_when_the_kinds_are_declared() -> None:
    """A `p2pcdn overlay` node of a tracker (or one-overlay) overlay is responsible for swarms
    like any tracker: its SWARM-PEERS answers must include the PEER-BATCH entries it holds."""
    from reload.storage import DataStore
    from reload.usages.config import usage_kinds
    from reload.usages.tracker import install_usage_rules

    kinds = usage_kinds("both")
    store = DataStore(16, kinds)
    rule = install_usage_rules([k.resolved_kind_id() or 0 for k in kinds], store)
    assert rule is not None and store._derived.get(SWARM_PEERS) is rule
    storage_only = usage_kinds("storage")
    plain = DataStore(16, storage_only)
    assert install_usage_rules([k.resolved_kind_id() or 0 for k in storage_only], plain) is None
    assert SWARM_PEERS not in plain._derived
