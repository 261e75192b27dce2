"""The sans-IO PPSPP endpoint end to end over an in-memory network with virtual time."""

from __future__ import annotations

import hashlib

import pytest

from ppsp.peer.content import MemoryChunkStore, StaticContent, SwarmParameters
from ppsp.peer.endpoint import (
    ChannelClosed,
    ChannelEstablished,
    DownloadComplete,
    Endpoint,
    IntegrityFailed,
)
from ppsp.peer.merkle import HashTree
from ppsp.peer.messages import ChunkAddressing, IntegrityMethod, MerkleHashFunction
from ppsp.peer.ranges import ChunkSet
from ppsp.peer.simnet import SimNet

SEEDER = ("10.0.0.1", 7000)
SEEDER2 = ("10.0.0.2", 7000)
LEECHER = ("10.0.0.3", 7000)


def make_content(size: int, seed: int = 0) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed.to_bytes(4, "big") + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def seeder(
    data: bytes,
    hf: MerkleHashFunction = MerkleHashFunction.SHA256,
    cam: ChunkAddressing = ChunkAddressing.CHUNK_RANGE32,
    chunk_size: int = 1024,
) -> tuple[Endpoint, SwarmParameters]:
    tree = HashTree.from_content(data, chunk_size, hf)
    params = SwarmParameters(tree.root_hash, IntegrityMethod.MERKLE, hf, cam, chunk_size)
    ep = Endpoint()
    n = tree.num_chunks
    assert n is not None
    ep.add_swarm(
        params, StaticContent(tree, MemoryChunkStore(chunk_size, data), ChunkSet([(0, n - 1)]))
    )
    return ep, params


def leecher(params: SwarmParameters) -> tuple[Endpoint, StaticContent, MemoryChunkStore]:
    tree = HashTree.for_root(params.swarm_id, params.chunk_size, params.hash_function)
    store = MemoryChunkStore(params.chunk_size)
    content = StaticContent(tree, store)
    ep = Endpoint()
    ep.add_swarm(params, content)
    return ep, content, store


def download(
    net: SimNet, lee: Endpoint, swarm_id: bytes, peers: list[tuple[str, int]], until: float = 60
) -> None:
    for p in peers:
        lee.connect(swarm_id, p, net.now)
    net.run(until, stop=lambda: any(isinstance(e, DownloadComplete) for e in net.events[LEECHER]))


@pytest.mark.parametrize("hf", list(MerkleHashFunction))
def test_download_every_hash_function(hf: MerkleHashFunction) -> None:
    data = make_content(300 * 1024 + 123)
    net = SimNet()
    seed_ep, params = seeder(data, hf)
    net.add(SEEDER, seed_ep)
    lee, content, store = leecher(params)
    net.add(LEECHER, lee)
    download(net, lee, params.swarm_id, [SEEDER])
    assert content.complete
    assert store.content() == data
    assert content.tree.content_length == len(data)


@pytest.mark.parametrize("cam", list(ChunkAddressing))
def test_download_every_chunk_addressing_method(cam: ChunkAddressing) -> None:
    data = make_content(77 * 1024 + 5)
    net = SimNet()
    seed_ep, params = seeder(data, MerkleHashFunction.SHA1, cam)
    net.add(SEEDER, seed_ep)
    lee, content, store = leecher(params)
    net.add(LEECHER, lee)
    download(net, lee, params.swarm_id, [SEEDER])
    assert content.complete, cam
    assert store.content() == data


def test_download_with_loss_completes() -> None:
    data = make_content(200 * 1024)
    net = SimNet(loss=0.1, seed=7)
    seed_ep, params = seeder(data)
    net.add(SEEDER, seed_ep)
    lee, content, store = leecher(params)
    net.add(LEECHER, lee)
    download(net, lee, params.swarm_id, [SEEDER], until=300)
    assert content.complete
    assert store.content() == data


def test_two_seeders_both_serve() -> None:
    data = make_content(400 * 1024)
    net = SimNet()
    s1, params = seeder(data)
    s2, _ = seeder(data)
    net.add(SEEDER, s1)
    net.add(SEEDER2, s2)
    lee, _content, store = leecher(params)
    net.add(LEECHER, lee)
    download(net, lee, params.swarm_id, [SEEDER, SEEDER2])
    assert store.content() == data
    served = [sum(ch.bytes_sent for ch in ep.channels.values()) for ep in (s1, s2)]
    assert all(b > 0 for b in served), served


def test_corrupt_seeder_is_dropped_and_good_one_completes() -> None:
    data = make_content(100 * 1024)
    bad = bytearray(data)
    bad[5 * 1024 + 3] ^= 0xFF
    net = SimNet()
    good_ep, params = seeder(data)
    bad_ep, _ = seeder(data)
    # The bad seeder computed its tree from good data but serves tampered bytes.
    swarm = bad_ep.swarms[params.swarm_id]
    assert isinstance(swarm.content, StaticContent)
    swarm.content.storage = MemoryChunkStore(1024, bytes(bad))
    net.add(SEEDER, good_ep)
    net.add(SEEDER2, bad_ep)
    lee, _content, store = leecher(params)
    net.add(LEECHER, lee)
    download(net, lee, params.swarm_id, [SEEDER2, SEEDER])
    assert store.content() == data
    failures = [e for e in net.events[LEECHER] if isinstance(e, IntegrityFailed)]
    assert failures and all(f.addr == SEEDER2 for f in failures)
    assert all(ch.addr != SEEDER2 for ch in lee.channels.values())


def test_unknown_swarm_gets_no_reply() -> None:
    data = make_content(10 * 1024)
    net = SimNet()
    seed_ep, _params = seeder(data)
    net.add(SEEDER, seed_ep)
    _other, _ = seeder(make_content(10 * 1024, seed=9))
    lee, _content, _ = leecher(SwarmParameters(hashlib.sha256(b"x").digest()))
    net.add(LEECHER, lee)
    lee.connect(hashlib.sha256(b"x").digest(), SEEDER, 0.0)
    net.run(10)
    assert not seed_ep.channels
    assert not any(isinstance(e, ChannelEstablished) for e in net.events[LEECHER])


def test_mismatched_hash_function_is_refused_at_once() -> None:
    data = make_content(10 * 1024)
    net = SimNet()
    seed_ep, params = seeder(data, MerkleHashFunction.SHA256)
    net.add(SEEDER, seed_ep)
    wrong = SwarmParameters(params.swarm_id, IntegrityMethod.MERKLE, MerkleHashFunction.SHA1)
    lee = Endpoint()
    tree = HashTree.for_root(params.swarm_id, 1024, MerkleHashFunction.SHA256)
    lee.add_swarm(wrong, StaticContent(tree, MemoryChunkStore(1024)))
    net.add(LEECHER, lee)
    lee.connect(params.swarm_id, SEEDER, 0.0)
    net.run(1.0)
    closed = [e for e in net.events[LEECHER] if isinstance(e, ChannelClosed)]
    assert closed and "refused" in closed[0].reason


def test_garbage_does_not_disturb_a_download() -> None:
    data = make_content(150 * 1024)
    net = SimNet()
    seed_ep, params = seeder(data)
    net.add(SEEDER, seed_ep)
    lee, _content, store = leecher(params)
    net.add(LEECHER, lee)
    rng = __import__("random").Random(3)
    attacker = ("10.0.0.66", 6666)
    for _ in range(2000):
        n = rng.randrange(0, 80)
        payload = bytes(rng.randrange(256) for _ in range(n))
        if rng.random() < 0.3:
            payload = b"\0\0\0\0" + payload
        net.inject(payload, attacker, SEEDER)
    download(net, lee, params.swarm_id, [SEEDER])
    assert store.content() == data
    assert seed_ep.stats_dropped > 0


def test_dead_peer_detected_after_three_minutes() -> None:
    data = make_content(50 * 1024)
    net = SimNet()
    seed_ep, params = seeder(data)
    net.add(SEEDER, seed_ep)
    lee, _content, _ = leecher(params)
    net.add(LEECHER, lee)
    lee.connect(params.swarm_id, SEEDER, 0.0)
    net.run(0.05)
    assert any(isinstance(e, ChannelEstablished) for e in net.events[LEECHER])
    del net.nodes[SEEDER]  # the seeder vanishes without a close
    net.run(170)
    assert lee.channels, "declared dead too early"
    net.run(400)
    closed = [e for e in net.events[LEECHER] if isinstance(e, ChannelClosed)]
    assert closed and "dead" in closed[0].reason


def test_explicit_close_reaches_the_peer() -> None:
    data = make_content(20 * 1024)
    net = SimNet()
    seed_ep, params = seeder(data)
    net.add(SEEDER, seed_ep)
    lee, _, _ = leecher(params)
    net.add(LEECHER, lee)
    ch = lee.connect(params.swarm_id, SEEDER, 0.0)
    net.run(0.05)
    assert seed_ep.channels
    ch.close("done", notify_peer=True)
    net.run(0.2)
    assert not seed_ep.channels
    closed = [e for e in net.events[SEEDER] if isinstance(e, ChannelClosed)]
    assert closed and closed[0].reason == "peer closed the channel"


def test_unverifiable_chunk_is_never_stored() -> None:
    data = make_content(8 * 1024)
    net = SimNet()
    seed_ep, params = seeder(data)
    net.add(SEEDER, seed_ep)
    lee, content, store = leecher(params)
    net.add(LEECHER, lee)

    def corrupt(dgram: bytes, src: tuple[str, int], dst: tuple[str, int]) -> bytes | None:
        if src == SEEDER and len(dgram) > 1000:
            return dgram[:-1] + bytes([dgram[-1] ^ 1])
        return dgram

    net.tap = corrupt
    lee.connect(params.swarm_id, SEEDER, 0.0)
    net.run(5)
    assert not store.chunks
    assert content.have.is_empty()
    assert any(isinstance(e, IntegrityFailed) for e in net.events[LEECHER])


def _count_data(dgram: bytes, ctx_chunk: int = 1024) -> int:
    from ppsp.peer import fastwire
    from ppsp.peer.messages import Data, WireContext

    msgs = fastwire.decode_datagram(dgram, WireContext(chunk_size=ctx_chunk)).messages
    return sum(isinstance(m, Data) for m in msgs)


def _mtu_pair(
    mtu: int,
) -> tuple[SimNet, Endpoint, Endpoint, StaticContent, MemoryChunkStore, bytes]:
    data = make_content(300 * 1024 + 10)
    tree = HashTree.from_content(data, 1024, MerkleHashFunction.SHA256)
    params = SwarmParameters(tree.root_hash)
    seed_ep = Endpoint(path_mtu=lambda _a: mtu)
    seed_ep.add_swarm(
        params, StaticContent(tree, MemoryChunkStore(1024, data), ChunkSet([(0, 300)]))
    )
    lee, content, store = leecher(params)
    net = SimNet()
    net.add(SEEDER, seed_ep)
    net.add(LEECHER, lee)
    return net, seed_ep, lee, content, store, data


def test_several_data_per_datagram_when_the_path_mtu_allows() -> None:
    """§8.1/§8.6: on a large-MTU path a peer that announced its supported messages gets
    several DATA per datagram, after one acknowledged probe of two."""
    net, seed_ep, lee, _content, store, data = _mtu_pair(65536)
    sizes: list[int] = []

    def watch(d: bytes, src: tuple[str, int], dst: tuple[str, int]) -> bytes:
        if src == SEEDER and len(d) > 1000:
            sizes.append(_count_data(d))
        return d

    net.tap = watch
    download(net, lee, params_of(seed_ep), [SEEDER])
    assert store.content() == data
    assert sizes[0] == 2  # the probe
    assert max(sizes) > 2
    (ch,) = seed_ep.channels.values()
    assert ch.multi_data_ok is True


def test_lost_probe_falls_back_to_one_data_per_datagram() -> None:
    net, seed_ep, lee, _content, store, data = _mtu_pair(65536)
    sizes: list[int] = []

    def drop_probe(d: bytes, src: tuple[str, int], dst: tuple[str, int]) -> bytes | None:
        if src == SEEDER and len(d) > 1000:
            n = _count_data(d)
            sizes.append(n)
            if n > 1:
                return None
        return d

    net.tap = drop_probe
    download(net, lee, params_of(seed_ep), [SEEDER])
    assert store.content() == data
    assert sizes.count(2) == 1 and max(sizes[1:]) == 1
    (ch,) = seed_ep.channels.values()
    assert ch.multi_data_ok is False


def test_one_data_per_datagram_on_an_ethernet_mtu() -> None:
    net, seed_ep, lee, _content, store, data = _mtu_pair(1500)
    sizes: list[int] = []

    def watch(d: bytes, src: tuple[str, int], dst: tuple[str, int]) -> bytes:
        if src == SEEDER:
            sizes.append(_count_data(d))
        return d

    net.tap = watch
    download(net, lee, params_of(seed_ep), [SEEDER])
    assert store.content() == data
    assert max(sizes) == 1


def params_of(ep: Endpoint) -> bytes:
    (swarm_id,) = ep.swarms
    return swarm_id
