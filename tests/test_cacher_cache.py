"""The cacher's on-disk chunk cache: verification before caching, size limit, change events,
restart and crash consistency (cacher/cache.py)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cacher.cache import (
    INDEX,
    PENDING,
    CacheChange,
    CachedLiveContent,
    CachedSwarm,
    CacheError,
    ChunkCache,
)
from cacher.policy import CachePolicy
from ppsp.peer.content import (
    LiveContent,
    LiveSourceContent,
    MemoryChunkStore,
    StaticContent,
    SwarmParameters,
)
from ppsp.peer.endpoint import DownloadComplete, Endpoint
from ppsp.peer.live import LiveSigner
from ppsp.peer.merkle import HashTree
from ppsp.peer.messages import (
    ChunkAddressing,
    IntegrityMethod,
    LiveSignatureAlgorithm,
    MerkleHashFunction,
)
from ppsp.peer.picker import PickPolicy
from ppsp.peer.ranges import ChunkSet
from ppsp.peer.simnet import SimNet
from ppsp.tracker.messages import (
    HintUnit,
    PeerMode,
    PushHint,
    Role,
    SwarmPopularity,
    swarm_id_hex,
)

CS = 1024
ROOT_DIR = Path(__file__).resolve().parents[1]


def make_content(size: int, seed: int = 0) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed.to_bytes(4, "big") + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


class Vod:
    """A VoD swarm: its content, full tree, and the uncles a peer would send per chunk."""

    def __init__(self, size: int = 40 * CS + 300, seed: int = 0) -> None:
        self.data = make_content(size, seed)
        self.tree = HashTree.from_content(self.data, CS, MerkleHashFunction.SHA256)
        self.params = SwarmParameters(self.tree.root_hash)
        n = self.tree.num_chunks
        assert n is not None
        self.n = n

    def chunk(self, i: int) -> bytes:
        return self.data[i * CS : (i + 1) * CS]

    def uncles(self, i: int) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for b in [*self.tree.peak_bins(), *self.tree.uncle_bins(i)]:
            h = self.tree.hash_at(b)
            assert h is not None
            out[b] = h
        return out


def store_all(swarm: CachedSwarm, vod: Vod, chunks: range | list[int], now: float = 0.0) -> None:
    for i in chunks:
        assert swarm.store(i, vod.chunk(i), now, vod.uncles(i)) is True


def open_cache(root: Path, limit: int = 1 << 20, now: float = 0.0) -> ChunkCache:
    return ChunkCache(root, limit, durable=False, now=now)


# ---------------------------------------------------------------------------- VoD


def test_verified_chunks_are_cached_and_served(tmp_path: Path) -> None:
    vod = Vod()
    cache = open_cache(tmp_path)
    swarm = cache.open_static(vod.params, content_length=len(vod.data))
    store_all(swarm, vod, [0, 1, 2, vod.n - 1])
    assert swarm.have == ChunkSet([(0, 2), (vod.n - 1, vod.n - 1)])
    assert swarm.read_chunk(1) == vod.chunk(1)
    assert swarm.read_chunk(vod.n - 1) == vod.chunk(vod.n - 1)  # the short last chunk
    assert cache.used_bytes == 3 * CS + 300
    assert cache.holdings() == {vod.params.swarm_id: ChunkSet([(0, 2), (vod.n - 1, vod.n - 1)])}


def test_unverified_chunks_are_never_cached(tmp_path: Path) -> None:
    vod = Vod()
    cache = open_cache(tmp_path)
    swarm = cache.open_static(vod.params)
    bad = bytearray(vod.chunk(3))
    bad[10] ^= 1
    assert swarm.store(3, bytes(bad), 0.0, vod.uncles(3)) is False
    assert swarm.store(4, vod.chunk(4), 0.0) is None  # no hashes yet: cannot be checked
    assert swarm.have.is_empty() and cache.used_bytes == 0
    with pytest.raises(KeyError):
        swarm.read_chunk(3)
    with pytest.raises(CacheError):
        swarm.write_chunk(3, bytes(bad))  # the StaticContent path verifies too
    # The honest chunk still verifies after the bad one.
    assert swarm.store(3, vod.chunk(3), 0.0, vod.uncles(3)) is True


def test_restart_restores_the_cache(tmp_path: Path) -> None:
    vod, other = Vod(seed=1), Vod(seed=2, size=10 * CS)
    cache = open_cache(tmp_path)
    a = cache.open_static(vod.params)
    b = cache.open_static(other.params)
    store_all(a, vod, range(0, 10))
    store_all(b, other, [5])
    cache.close()
    again = open_cache(tmp_path)
    assert again.holdings() == {
        vod.params.swarm_id: ChunkSet([(0, 9)]),
        other.params.swarm_id: ChunkSet([(5, 5)]),
    }
    assert again.used_bytes == 11 * CS
    a2 = again.get(vod.params.swarm_id)
    assert a2 is not None and a2.read_chunk(7) == vod.chunk(7)
    # The hash tree came back too: chunk 10 needs only its own uncles below known nodes.
    assert a2.store(10, vod.chunk(10), 1.0, vod.uncles(10)) is True
    assert again.pop_changes() == [CacheChange(vod.params.swarm_id, [(10, 10)], [])]


def test_uncommitted_chunks_are_reverified_after_a_crash(tmp_path: Path) -> None:
    """Chunks stored after the last commit are named in the intent log only: after a crash
    they are re-verified against the committed tree and adopted, or dropped."""
    vod = Vod()
    cache = open_cache(tmp_path)
    swarm = cache.open_static(vod.params)
    store_all(swarm, vod, range(0, 4))
    cache.commit()
    store_all(swarm, vod, range(4, 8))
    # "Crash": the process dies without committing; one uncommitted chunk's bytes got
    # damaged on the way to the disk, and the log's last record is torn.
    with open(swarm.directory / "data", "r+b") as f:
        f.seek(6 * CS + 5)
        f.write(b"\xff\xff")
    with open(swarm.directory / PENDING, "ab") as f:
        f.write(b"\x00\x00\x01\x00\x00")
    again = open_cache(tmp_path)
    s2 = again.get(vod.params.swarm_id)
    assert s2 is not None
    assert s2.have == ChunkSet([(0, 5), (7, 7)])
    for c in s2.have.chunks():
        assert s2.read_chunk(c) == vod.chunk(c)
    # The re-verified chunks are indexed now: a second restart keeps them without the log.
    assert (s2.directory / PENDING).stat().st_size == 0
    third = open_cache(tmp_path)
    s3 = third.get(vod.params.swarm_id)
    assert s3 is not None and s3.have == ChunkSet([(0, 5), (7, 7)])


def test_damaged_index_drops_the_swarm(tmp_path: Path) -> None:
    vod = Vod()
    cache = open_cache(tmp_path)
    swarm = cache.open_static(vod.params)
    store_all(swarm, vod, range(3))
    cache.close()
    index = swarm.directory / INDEX
    raw = json.loads(index.read_bytes())
    raw["ranges"] = [[0, 30]]  # claims more than was verified; the checksum gives it away
    index.write_text(json.dumps(raw))
    again = open_cache(tmp_path)
    assert again.holdings() == {}
    assert not swarm.directory.exists()


def test_sigkill_leaves_a_consistent_cache(tmp_path: Path) -> None:
    """A real SIGKILL in the middle of storing: after restart every chunk held reads back
    as the original, at least everything committed is there, nothing else is named."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT_DIR)!r})
        from tests.test_cacher_cache import Vod, store_all
        from cacher.cache import ChunkCache
        vod = Vod()
        cache = ChunkCache({str(tmp_path)!r}, 1 << 20, durable=True)
        swarm = cache.open_static(vod.params)
        store_all(swarm, vod, range(0, 16))
        cache.commit()
        store_all(swarm, vod, range(16, 30))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL
    vod = Vod()
    cache = open_cache(tmp_path)
    swarm = cache.get(vod.params.swarm_id)
    assert swarm is not None
    assert swarm.have.contains_range(0, 15)
    for c in swarm.have.chunks():
        assert swarm.read_chunk(c) == vod.chunk(c)
    assert swarm.have == ChunkSet([(0, 29)])  # the page cache survived: all re-verified


# ---------------------------------------------------------------------------- size limit, events


def test_size_limit_evicts_least_recently_used(tmp_path: Path) -> None:
    vod = Vod(size=64 * CS)
    policy = CachePolicy(16 * CS, block_chunks=4)
    cache = ChunkCache(tmp_path, 16 * CS, policy=policy, durable=False)
    swarm = cache.open_static(vod.params)
    for t, c in enumerate(range(16)):
        assert swarm.store(c, vod.chunk(c), float(t), vod.uncles(c))
    assert cache.used_bytes == 16 * CS
    swarm.touch(0, 3, 100.0)  # chunks 0..3 were just served
    cache.pop_changes()
    for c in range(16, 20):
        assert swarm.store(c, vod.chunk(c), 101.0 + c, vod.uncles(c))
    assert cache.used_bytes <= 16 * CS
    # Block 4..7 was the least recently used one.
    assert swarm.have == ChunkSet([(0, 3), (8, 19)])
    changes = cache.pop_changes()
    assert changes == [CacheChange(vod.params.swarm_id, [(16, 19)], [(4, 7)])]
    assert cache.pop_changes() == []


def test_changes_net_out(tmp_path: Path) -> None:
    vod = Vod()
    cache = open_cache(tmp_path)
    swarm = cache.open_static(vod.params)
    store_all(swarm, vod, range(0, 6))
    swarm.evict(2, 3)
    assert cache.pop_changes() == [CacheChange(vod.params.swarm_id, [(0, 1), (4, 5)], [(2, 3)])]
    store_all(swarm, vod, [2])
    (change,) = cache.pop_changes()
    assert change.cached == [(2, 2)] and change.evicted == []
    delta = change.to_delta()
    assert delta.swarm_id == swarm_id_hex(vod.params.swarm_id) and delta.cached == [(2, 2)]


def test_availability_is_the_batch_report(tmp_path: Path) -> None:
    vod = Vod()
    cache = open_cache(tmp_path)
    store_all(cache.open_static(vod.params), vod, [0, 1, 5])
    cache.open_static(Vod(seed=9).params)  # known but empty: not reported
    (avail,) = cache.availability()
    assert avail.swarm_id == swarm_id_hex(vod.params.swarm_id)
    assert (avail.peer_mode, avail.role) == (PeerMode.SEEDER, Role.CACHER)
    assert avail.ranges == [(0, 1), (5, 5)]


def test_dropping_a_swarm(tmp_path: Path) -> None:
    vod = Vod()
    cache = open_cache(tmp_path)
    swarm = cache.open_static(vod.params)
    store_all(swarm, vod, range(3))
    cache.pop_changes()
    cache.drop_swarm(vod.params.swarm_id)
    assert cache.used_bytes == 0 and cache.holdings() == {}
    assert cache.pop_changes() == [CacheChange(vod.params.swarm_id, [], [(0, 2)])]
    assert open_cache(tmp_path).holdings() == {}


# ---------------------------------------------------------------------------- PPSPP


def test_cacher_fills_over_ppspp_and_serves_from_disk(tmp_path: Path) -> None:
    """The cache is the chunk store of a PPSPP StaticContent: the cacher downloads from a
    seeder (verified by the endpoint, re-checked by the cache), then a CSC downloads the
    same content from the cacher, read from disk; after a restart it serves again."""
    vod = Vod(size=100 * CS + 7)
    seeder = Endpoint()
    seeder.add_swarm(
        vod.params,
        StaticContent(vod.tree, MemoryChunkStore(CS, vod.data), ChunkSet([(0, vod.n - 1)])),
    )
    cache = open_cache(tmp_path)
    cached = cache.open_static(vod.params)
    assert cached.tree is not None
    cacher = Endpoint()
    cacher.add_swarm(vod.params, StaticContent(cached.tree, cached, cached.have))
    net = SimNet()
    net.add(("10.0.0.1", 1), seeder)
    net.add(("10.0.0.2", 1), cacher)
    cacher.connect(vod.params.swarm_id, ("10.0.0.1", 1), 0.0)
    net.run(30, stop=lambda: cached.have.contains_range(0, vod.n - 1))
    assert cached.have == ChunkSet([(0, vod.n - 1)])
    cache.close()

    cache = open_cache(tmp_path)
    reopened = cache.get(vod.params.swarm_id)
    assert reopened is not None and reopened.tree is not None
    cacher = Endpoint()
    cacher.add_swarm(vod.params, StaticContent(reopened.tree, reopened, reopened.have))
    csc = Endpoint()
    store = MemoryChunkStore(CS)
    csc.add_swarm(vod.params, StaticContent(HashTree.for_root(vod.params.swarm_id, CS, 2), store))
    net = SimNet()
    net.add(("10.0.0.2", 1), cacher)
    net.add(("10.0.0.3", 1), csc)
    csc.connect(vod.params.swarm_id, ("10.0.0.2", 1), 0.0)
    done = net.events[("10.0.0.3", 1)]
    net.run(30, stop=lambda: any(isinstance(e, DownloadComplete) for e in done))
    assert store.content() == vod.data


# ---------------------------------------------------------------------------- live

SIGNER = LiveSigner.generate(LiveSignatureAlgorithm.ECDSAP256SHA256)
OTHER_SIGNER = LiveSigner.generate(LiveSignatureAlgorithm.ECDSAP256SHA256)


def live_params(signer: LiveSigner = SIGNER) -> SwarmParameters:
    return SwarmParameters(
        signer.swarm_id,
        IntegrityMethod.UNIFIED_MERKLE,
        MerkleHashFunction.SHA256,
        ChunkAddressing.CHUNK_RANGE32,
        CS,
        signer.swarm_id[0],
        64,
    )


def live_source(chunks: int, signer: LiveSigner = SIGNER, fill: int = 0) -> LiveSourceContent:
    src = LiveSourceContent(live_params(signer), signer, chunks_per_signature=8, window=None)
    for i in range(chunks):
        src.add_chunk(bytes([(i + fill) % 256]) * CS, 1000.0 + i)
    return src


def store_live(swarm: CachedSwarm, src: LiveSourceContent, chunk: int, now: float = 0.0) -> object:
    assert src.unified is not None
    munro = src.unified.munro_for(chunk)
    assert munro is not None
    _, _, uncles = src.unified.integrity_for(chunk)
    return swarm.store_live(chunk, src.read_chunk(chunk), munro, uncles, now)


def test_live_chunks_verified_by_signature(tmp_path: Path) -> None:
    src = live_source(32)
    cache = open_cache(tmp_path)
    swarm = cache.open_live(live_params(), chunks_per_signature=8)
    for c in range(8, 20):
        assert store_live(swarm, src, c) is True
    assert swarm.have == ChunkSet([(8, 19)])
    assert swarm.read_chunk(12) == bytes([12]) * CS
    # A munro signed by somebody else (over other bytes) is refused, then a chunk whose
    # bytes changed under the genuine munro.
    assert src.unified is not None
    forged = live_source(32, OTHER_SIGNER, fill=7)
    assert forged.unified is not None
    fm = forged.unified.munro_for(24)
    assert fm is not None
    _, _, forged_uncles = forged.unified.integrity_for(24)
    assert swarm.store_live(24, forged.read_chunk(24), fm, forged_uncles, 0.0) is False
    munro = src.unified.munro_for(24)
    assert munro is not None
    _, _, uncles = src.unified.integrity_for(24)
    assert swarm.store_live(24, bytes(CS), munro, uncles, 0.0) is False
    assert 24 not in swarm.have


def test_live_cache_survives_a_restart(tmp_path: Path) -> None:
    src = live_source(40)
    cache = open_cache(tmp_path)
    swarm = cache.open_live(live_params(), chunks_per_signature=8)
    for c in range(0, 20):
        assert store_live(swarm, src, c) is True
    cache.commit()
    for c in range(20, 24):  # uncommitted, under a munro the committed file already holds
        assert store_live(swarm, src, c) is True
    again = open_cache(tmp_path)
    s2 = again.get(live_params().swarm_id)
    assert s2 is not None and s2.verifier is not None
    assert s2.have == ChunkSet([(0, 23)])
    assert s2.read_chunk(21) == bytes([21]) * CS
    # It can serve them with their signed munro and uncles (§6.1.2.3).
    munro, _signed, uncles = s2.verifier.integrity_for(21)
    assert (munro.start, munro.end) == (16, 23) and len(uncles) == 3


def test_live_ring_keeps_the_window(tmp_path: Path) -> None:
    src = live_source(200)
    cache = open_cache(tmp_path)
    swarm = cache.open_live(live_params(), chunks_per_signature=8, window=32)
    for c in range(0, 100):
        assert store_live(swarm, src, c) is True
    assert swarm.have == ChunkSet([(68, 99)])
    assert cache.used_bytes == 32 * CS
    assert store_live(swarm, src, 50) is None  # behind the window
    for c in (68, 80, 99):
        assert swarm.read_chunk(c) == bytes([c % 256]) * CS
    assert (swarm.directory / "data").stat().st_size <= 32 * CS


# ---------------------------------------------------------------------------- properties


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("store"), st.integers(0, 40)),
            st.tuples(st.just("evict"), st.integers(0, 40)),
            st.tuples(st.just("commit"), st.just(0)),
            st.tuples(st.just("reopen"), st.just(0)),
            st.tuples(st.just("crash"), st.just(0)),
        ),
        max_size=40,
    )
)
def test_cache_invariants(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]]
) -> None:
    """Whatever happens, every chunk the cache holds reads back as the original, the limit
    holds, and the byte count matches what is held."""
    vod = Vod()
    root = tmp_path_factory.mktemp("cache")
    limit = 12 * CS
    cache = ChunkCache(root, limit, policy=CachePolicy(limit, block_chunks=4), durable=False)
    swarm = cache.open_static(vod.params)
    committed = ChunkSet()
    for t, (op, c) in enumerate(ops):
        now = float(t)
        if op == "store":
            assert swarm.store(c, vod.chunk(c), now, vod.uncles(c)) is True
        elif op == "evict":
            swarm.evict(c, c + 3, now)
        elif op == "commit":
            cache.commit()
            committed = swarm.have.copy()
        else:
            if op == "reopen":
                cache.close()
                committed = swarm.have.copy()
            # "crash": files left as they are, no commit
            before = swarm.have.copy()
            cache = ChunkCache(
                root, limit, policy=CachePolicy(limit, block_chunks=4), durable=False, now=now
            )
            got = cache.get(vod.params.swarm_id)
            assert got is not None
            swarm = got
            # Nothing appears from nowhere: a chunk evicted after the last commit may come
            # back after a crash (its bytes are intact until the next commit), no other.
            assert swarm.have.difference(before.union(committed)).is_empty()
            committed = swarm.have.copy()
        assert cache.used_bytes <= limit
        assert cache.used_bytes == sum(swarm.range_bytes(s, e) for s, e in swarm.have)
        for x in swarm.have.chunks():
            assert swarm.read_chunk(x) == vod.chunk(x)
    assert os.path.isdir(root)


# ---------------------------------------------------------------------------- policy decisions

A, B, C = b"\xaa" * 32, b"\xbb" * 32, b"\xcc" * 32
K = 4  # chunks per block in these tests


def policy(**kw: float) -> CachePolicy:
    return CachePolicy(1 << 30, block_chunks=K, head_chunks=K, **kw)  # type: ignore[arg-type]


def first_victims(
    p: CachePolicy, holdings: dict[bytes, ChunkSet], blocks: int, now: float
) -> list[tuple[bytes, int, int]]:
    return p.victims(holdings, {sid: CS for sid in holdings}, blocks * K * CS, now)


def test_policy_lru_over_swarms_and_ranges() -> None:
    p = policy()
    p.record_insert(A, 0, 7, 10.0)
    p.record_insert(B, 0, 7, 20.0)
    p.record_access(A, 4, 5, 30.0)  # A's second block was served recently
    holdings = {A: ChunkSet([(0, 7)]), B: ChunkSet([(0, 7)])}
    assert first_victims(p, holdings, 1, 40.0) == [(A, 0, 3)]
    assert first_victims(p, holdings, 3, 40.0) == [(A, 0, 3), (B, 0, 3), (B, 4, 7)]


def test_policy_popularity_outlives_recency() -> None:
    p = policy()
    p.record_insert(A, 8, 11, 50.0)  # popular, used a bit longer ago
    p.record_insert(B, 8, 11, 60.0)  # nobody watches it
    p.on_global_info([SwarmPopularity(A.hex(), viewers=100, join_rate=5.0)], 55.0)
    holdings = {A: ChunkSet([(8, 11)]), B: ChunkSet([(8, 11)])}
    assert first_victims(p, holdings, 1, 70.0) == [(B, 8, 11)]
    # Stale global info (older than info_ttl) lends nothing: plain LRU again.
    assert first_victims(p, holdings, 1, 55.0 + p.info_ttl + 1) == [(A, 8, 11)]


def test_policy_keeps_the_head_of_hot_channels_longest() -> None:
    p = policy()
    p.record_insert(A, 0, 11, 0.0)  # hot VoD: head block 0..3 is the oldest of all
    p.record_insert(C, 0, 11, 100.0)  # cold, recent
    p.on_global_info([SwarmPopularity(A.hex(), viewers=1)], 100.0)
    holdings = {A: ChunkSet([(0, 11)]), C: ChunkSet([(0, 11)])}
    order = first_victims(p, holdings, 6, 101.0)
    assert order[-1] == (A, 0, 3)
    assert (A, 0, 3) not in first_victims(p, holdings, 5, 101.0)
    # A cold channel's head has no such protection.
    p2 = policy()
    p2.record_insert(A, 0, 11, 0.0)
    assert first_victims(p2, {A: ChunkSet([(0, 11)])}, 1, 1.0) == [(A, 0, 3)]


def test_policy_live_head_is_the_live_edge() -> None:
    p = policy()
    p.register(A, live=True)
    p.record_insert(A, 100, 111, 0.0)
    p.on_global_info([SwarmPopularity(A.hex(), viewers=3)], 0.0)
    order = first_victims(p, {A: ChunkSet([(100, 111)])}, 3, 1.0)
    assert order[-1] == (A, 108, 111)  # the newest chunks go last


def test_policy_push_hints_make_the_prefetch_plan() -> None:
    p = policy()
    p.register(C, live=True)
    p.register(B, live=False, chunk_size=CS, bytes_per_second=50_000)
    p.on_push_hints(
        [
            PushHint(A.hex(), 0, 15, priority=1, expires_in=30),
            PushHint(B.hex(), 0, 2, unit=HintUnit.SECONDS, priority=5, expires_in=30),
            PushHint(C.hex(), 0, 31, priority=3, expires_in=30),
        ],
        0.0,
    )
    plan = p.prefetch_plan({A: ChunkSet([(0, 3), (8, 9)])}, 1.0)
    assert [x.swarm_id for x in plan] == [B, C, A]  # by priority
    assert plan[0].ranges == [(0, 146)]  # 3 s at 50 kB/s in 1 KiB chunks
    assert plan[1].follow_live and plan[1].head_chunks == 32
    assert plan[2].ranges == [(4, 7), (10, 15)]  # only what is missing
    # Hints expire; a fully held head needs nothing.
    assert p.prefetch_plan({A: ChunkSet([(0, 15)])}, 31.0) == []
    assert [x.swarm_id for x in p.prefetch_plan({A: ChunkSet([(0, 15)])}, 1.0)] == [B, C]
    # A hinted head is kept longest while the hint lasts, as far as the hint says.
    assert p.head_chunks_of(A, 1.0) == 16 and p.head_chunks_of(A, 31.0) == K


def test_policy_admission() -> None:
    p = CachePolicy(100 * CS, admission_threshold=0.9, admit_after_misses=2, miss_window=60)
    assert p.admit(A, 10 * CS, 0.0)  # room to spare: everything goes in
    assert not p.admit(A, 95 * CS, 0.0)  # nearly full: a cold one-off is refused
    p.record_miss(A, 1.0)
    assert not p.admit(A, 95 * CS, 2.0)
    p.record_miss(A, 3.0)
    assert p.admit(A, 95 * CS, 4.0)  # asked for twice within the window
    assert not p.admit(A, 95 * CS, 200.0)  # ... long ago now
    p.on_global_info([SwarmPopularity(B.hex(), viewers=2)], 0.0)
    assert p.admit(B, 95 * CS, 1.0)  # hot
    p.on_push_hints([PushHint(C.hex(), 0, 7)], 0.0)
    assert p.admit(C, 95 * CS, 1.0)  # hinted


@settings(max_examples=60, deadline=None)
@given(
    held=st.dictionaries(
        st.sampled_from([A, B, C]),
        st.lists(st.tuples(st.integers(0, 60), st.integers(0, 8)), min_size=1, max_size=4),
        min_size=1,
    ),
    uses=st.lists(
        st.tuples(st.sampled_from([A, B, C]), st.integers(0, 60), st.floats(0, 100)),
        max_size=10,
    ),
    need_blocks=st.integers(1, 30),
    viewers=st.integers(0, 5),
)
def test_policy_victims_are_held_distinct_and_enough(
    held: dict[bytes, list[tuple[int, int]]],
    uses: list[tuple[bytes, int, float]],
    need_blocks: int,
    viewers: int,
) -> None:
    p = policy()
    holdings = {sid: ChunkSet((s, s + n) for s, n in rs) for sid, rs in held.items()}
    for sid, c, t in uses:
        p.record_access(sid, c, c, t)
    p.on_global_info([SwarmPopularity(A.hex(), viewers=viewers)], 50.0)
    need = need_blocks * K * CS
    out = p.victims(holdings, {sid: CS for sid in holdings}, need, 100.0)
    seen = {sid: ChunkSet() for sid in holdings}
    for sid, s, e in out:
        assert holdings[sid].contains_range(s, e)
        assert not seen[sid].overlaps(s, e)
        seen[sid].add(s, e)
    total = sum(h.count for h in holdings.values()) * CS
    assert sum(x.count for x in seen.values()) * CS >= min(need, total)


def test_cacher_follows_a_live_stream_and_serves_it_after_a_restart(tmp_path: Path) -> None:
    """Live over PPSPP: the cacher's endpoint verifies the source's chunks into the cache
    (CachedLiveContent); after a restart a viewer tunes in at the cacher and verifies
    every chunk against the signed munros the cache kept (§6.1.2)."""
    params = live_params()
    source = Endpoint()
    src = LiveSourceContent(params, SIGNER, chunks_per_signature=8, window=None)
    src_swarm = source.add_swarm(params, src, PickPolicy.IN_ORDER)
    cache = open_cache(tmp_path)
    cached = cache.open_live(params, chunks_per_signature=8, window=64)
    cacher = Endpoint()
    content = cached.content()
    assert isinstance(content, CachedLiveContent)
    cacher.add_swarm(params, content, PickPolicy.IN_ORDER)
    net = SimNet()
    net.add(("10.0.0.1", 1), source)
    net.add(("10.0.0.2", 1), cacher)
    for i in range(16):
        src_swarm.publish(src.add_chunk(bytes([i]) * CS, 1000.0 + i))
    cacher.connect(params.swarm_id, ("10.0.0.1", 1), 0.0)
    net.run(1.0)
    for i in range(16, 40):
        src_swarm.publish(src.add_chunk(bytes([i]) * CS, 1000.0 + i))
        net.run(net.now + 0.05)
    net.run(net.now + 1.0)
    assert cached.have.contains_range(8, 39)  # from its tune-in point to the live edge
    cache.close()

    cache = open_cache(tmp_path)
    reopened = cache.get(params.swarm_id)
    assert reopened is not None
    assert reopened.have.contains_range(8, 39)
    cacher = Endpoint()
    cacher.add_swarm(params, reopened.content(), PickPolicy.IN_ORDER)
    played: dict[int, bytes] = {}
    viewer_content = LiveContent(params, 8, deliver=played.__setitem__)
    viewer = Endpoint()
    viewer.add_swarm(params, viewer_content, PickPolicy.IN_ORDER)
    net = SimNet()
    net.add(("10.0.0.2", 1), cacher)
    net.add(("10.0.0.3", 1), viewer)
    viewer.connect(params.swarm_id, ("10.0.0.2", 1), 0.0)
    net.run(2.0, stop=lambda: 39 in played)
    assert sorted(played) == list(range(32, 40))  # tuned in at the newest munro
    assert all(played[c] == bytes([c]) * CS for c in played)
