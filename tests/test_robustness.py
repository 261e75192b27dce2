"""Hostile input and faults against the PPSPP engine (RFC 7574 §3: silence is the only error
signal; a peer that misbehaves is dropped and everybody else keeps being served).

- a real seeder on 127.0.0.1 flooded with 100,000 junk datagrams while it serves a download;
- hypothesis: ``Endpoint.receive`` never raises, whatever arrives from wherever, and nothing
  unverified is ever stored;
- a seeder that sends a chunk failing verification is dropped;
- bounds on what one peer can make an endpoint hold or compute.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppsp.peer import aio, fastwire
from ppsp.peer.bins import bin_to_range
from ppsp.peer.channel import (
    DEAD_PEER_TIMEOUT,
    MAX_HAVE_INTERVALS,
    MAX_QUEUED_REQUESTS,
    Channel,
    ChannelState,
)
from ppsp.peer.content import MemoryChunkStore, StaticContent, SwarmParameters
from ppsp.peer.endpoint import (
    MAX_CHANNELS_PER_SWARM,
    ChannelClosed,
    ChannelEstablished,
    DownloadComplete,
    Endpoint,
    IntegrityFailed,
)
from ppsp.peer.merkle import HashTree
from ppsp.peer.messages import (
    Ack,
    Cancel,
    Choke,
    ChunkAddressing,
    Data,
    EncodeError,
    Handshake,
    HandshakeOptions,
    Have,
    Integrity,
    IntegrityMethod,
    MerkleHashFunction,
    Message,
    PexReq,
    PexResCert,
    PexResV4,
    PexResV6,
    Request,
    SignedIntegrity,
    Unchoke,
    WireContext,
)
from ppsp.peer.ranges import ChunkSet
from ppsp.peer.simnet import SimNet

Address = tuple[str, int]
SEEDER: Address = ("10.0.0.1", 7000)
SEEDER2: Address = ("10.0.0.2", 7000)
LEECHER: Address = ("10.0.0.3", 7000)
LEECHER2: Address = ("10.0.0.4", 7000)
STRANGER: Address = ("10.0.0.66", 6666)
CHUNK = 1024
HF = MerkleHashFunction.SHA256

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def make_content(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def seed_endpoint(data: bytes) -> tuple[Endpoint, SwarmParameters, MemoryChunkStore]:
    tree = HashTree.from_content(data, CHUNK, HF)
    n = tree.num_chunks
    assert n is not None
    params = SwarmParameters(
        tree.root_hash, IntegrityMethod.MERKLE, HF, ChunkAddressing.CHUNK_RANGE32, CHUNK
    )
    store = MemoryChunkStore(CHUNK, data)
    ep = Endpoint()
    ep.add_swarm(params, StaticContent(tree, store, ChunkSet([(0, n - 1)])))
    return ep, params, store


def leech_endpoint(params: SwarmParameters) -> tuple[Endpoint, StaticContent, MemoryChunkStore]:
    tree = HashTree.for_root(params.swarm_id, CHUNK, HF)
    store = MemoryChunkStore(CHUNK)
    content = StaticContent(tree, store)
    ep = Endpoint()
    ep.add_swarm(params, content)
    return ep, content, store


def completed(net: SimNet, addr: Address) -> Callable[[], bool]:
    return lambda: any(isinstance(e, DownloadComplete) for e in net.events[addr])


def only_channel(ep: Endpoint, addr: Address) -> Channel:
    chans = [ch for ch in ep.channels.values() if ch.addr == addr]
    assert len(chans) == 1, chans
    return chans[0]


def initiating_handshake(swarm_id: bytes, source_channel: int) -> bytes:
    opts = HandshakeOptions(
        version=1,
        minimum_version=1,
        swarm_id=swarm_id,
        integrity_method=IntegrityMethod.MERKLE,
        merkle_hash_function=HF,
        chunk_addressing=ChunkAddressing.CHUNK_RANGE32,
    )
    return fastwire.encode_datagram(0, [Handshake(source_channel, opts)], WireContext())


# ---------------------------------------------------------------------------- the flood


FLOOD_COUNT = 100_000
FLOOD_SECONDS = 40.0
#: Datagrams per event-loop pass. The flood runs as fast as the shared loop lets it; much
#: larger batches outrun the seeder's reads and the kernel, not the engine, drops the junk.
FLOOD_BATCH = 16


class Junk:
    """The flood's datagrams: five kinds, equally often (see the test's docstring)."""

    def __init__(self, swarm_id: bytes, data: bytes, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        template = initiating_handshake(swarm_id, 0x01020304)
        at = template.index(swarm_id)
        self.hs_head, self.hs_tail = template[:at], template[at + len(swarm_id) :]
        tree = HashTree.from_content(data[: 64 * CHUNK], CHUNK, HF)
        uncles = [Integrity(2, 3, tree.hash_at(5) or b""), Integrity(1, 1, tree.hash_at(2) or b"")]
        self.real = [
            template,  # the real swarm's handshake: any truncation of it is malformed
            fastwire.encode_datagram(0x11223344, [*uncles, Data(0, 0, 123, data[:CHUNK])]),
            fastwire.encode_datagram(0x11223344, [Have(0, 63), Ack(0, 0, 5), Request(64, 127)]),
            fastwire.encode_datagram(0x11223344, [Cancel(3, 9), Choke(), Unchoke(), PexReq()]),
        ]

    def __call__(self) -> bytes:
        rng = self.rng
        kind = rng.randrange(5)
        if kind == 0:  # pure random, 0..1500 bytes
            return rng.randbytes(rng.randrange(1501))
        if kind == 1:  # a well-formed initiating handshake for a swarm nobody has
            head = bytearray(self.hs_head)
            head[5:9] = rng.randbytes(4)  # the source channel
            return bytes(head) + rng.randbytes(32) + self.hs_tail
        if kind == 2:  # random bytes after channel 0
            return b"\0\0\0\0" + rng.randbytes(rng.randrange(1497))
        if kind == 3:  # a random channel and a plausible message
            t = rng.randrange(14)
            body = rng.randrange(1100) if t == 1 else rng.randrange(60)
            return rng.randbytes(4) + bytes([t]) + rng.randbytes(body)
        real = rng.choice(self.real)  # a truncated copy of a real datagram
        return real[: rng.randrange(len(real))]


@pytest.mark.slow
def test_download_survives_a_flood_of_junk_datagrams(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While a download runs, another socket sends the seeder 100,000 datagrams as fast as it
    can (stopping after 40 s at most): pure random 0–1500 bytes; valid channel-0 handshakes for
    random swarm IDs; random bytes after channel 0; random channel IDs with plausible message
    types; truncated copies of real messages. The download completes intact and the seeder
    then serves a second one."""
    caplog.set_level(logging.ERROR)
    size = 4 * 1024 * 1024
    data = make_content(size, seed=42)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()

    @dataclass
    class Stats:
        sent: int = 0
        at_start: int = 0
        at_done: int = 0
        dropped: int = 0
        channels_after: int = 0
        elapsed: float = 0.0
        results: list[aio.DownloadResult] = field(default_factory=list)

    stats = Stats()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        seed = await aio.serve_seed(src, ("127.0.0.1", 0))
        junk = Junk(seed.swarm_id, data)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)

        async def flood() -> None:
            deadline = loop.time() + FLOOD_SECONDS
            while stats.sent < FLOOD_COUNT and loop.time() < deadline:
                for _ in range(FLOOD_BATCH):
                    try:
                        sock.sendto(junk(), seed.address)
                    except BlockingIOError:
                        break
                    stats.sent += 1
                await asyncio.sleep(0)

        started = time.monotonic()
        try:
            flooding = asyncio.create_task(flood())
            await asyncio.sleep(0.05)
            stats.at_start = stats.sent
            stats.results.append(
                await aio.download(seed.swarm_id, [seed.address], tmp_path / "one.bin", timeout=50)
            )
            stats.at_done = stats.sent
            await flooding
            stats.results.append(
                await aio.download(seed.swarm_id, [seed.address], tmp_path / "two.bin", timeout=20)
            )
            stats.dropped = seed.node.endpoint.stats_dropped
            stats.channels_after = len(seed.node.endpoint.channels)
        finally:
            stats.elapsed = time.monotonic() - started
            sock.close()
            seed.close()

    aio.run(main())  # uvloop when installed, as the daemons run
    assert hashlib.sha256((tmp_path / "one.bin").read_bytes()).hexdigest() == digest
    assert hashlib.sha256((tmp_path / "two.bin").read_bytes()).hexdigest() == digest
    assert [r.size for r in stats.results] == [size, size]
    assert stats.sent == FLOOD_COUNT
    # The flood was on when the download started and kept going while it ran.
    assert 0 < stats.at_start < stats.at_done, (stats.at_start, stats.at_done)
    assert stats.at_start < FLOOD_COUNT // 2
    # The seeder's engine saw the junk and dropped it (the kernel may drop a share too).
    assert stats.dropped > FLOOD_COUNT // 10, stats.dropped
    assert stats.channels_after <= 1  # no junk channel survives; the last download's is closing
    assert stats.elapsed < 55
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[0].getMessage()


# ---------------------------------------------------------------------------- fuzzing receive


DATA = make_content(37 * CHUNK + 211, seed=3)
N_CHUNKS = 38


@functools.cache
def reference_capture() -> dict[Address, list[bytes]]:
    """Every datagram of one complete download of DATA, by sender: real INTEGRITY + DATA for
    every chunk, to mutate and replay against a victim that lacks those chunks."""
    net = SimNet()
    seeder, params, _ = seed_endpoint(DATA)
    leecher, content, _ = leech_endpoint(params)
    net.add(SEEDER, seeder)
    net.add(LEECHER, leecher)
    out: dict[Address, list[bytes]] = {SEEDER: [], LEECHER: []}

    def record(d: bytes, src: Address, _dst: Address) -> bytes:
        out[src].append(d)
        return d

    net.tap = record
    leecher.connect(params.swarm_id, SEEDER, 0.0)
    net.run(10.0, stop=lambda: content.complete)
    assert content.complete
    return out


@functools.cache
def self_contained_data() -> list[bytes]:
    """For every chunk of DATA, a datagram a receiver knowing only the root can verify: the
    peaks and all the chunk's uncles (§5.4, §5.6), then the DATA. Mutated, they test what a
    receiver does with a chunk that *can* be checked and fails."""
    tree = HashTree.from_content(DATA, CHUNK, HF)
    out: list[bytes] = []
    for c in range(N_CHUNKS):
        msgs: list[Message] = []
        for b in tree.uncles_to_send(c, ChunkSet(), include_peaks=True):
            h = tree.hash_at(b)
            assert h is not None
            msgs.append(Integrity(*bin_to_range(b), h))
        msgs.append(Data(c, c, 1, DATA[c * CHUNK : (c + 1) * CHUNK]))
        out.append(fastwire.encode_datagram(0x0BAD0BAD, msgs, WireContext()))
    return out


@dataclass
class Stage:
    """A seeder and a leecher over SimNet, stopped at some phase of their channel."""

    net: SimNet
    seeder: Endpoint
    seed_store: MemoryChunkStore
    leecher: Endpoint
    content: StaticContent
    store: MemoryChunkStore
    params: SwarmParameters
    captured: list[tuple[Address, bytes]]

    def channel(self, victim: str) -> Channel | None:
        ep, peer = (self.seeder, LEECHER) if victim == "seeder" else (self.leecher, SEEDER)
        chans = [ch for ch in ep.channels.values() if ch.addr == peer]
        return chans[0] if chans else None


def stage(phase: str) -> Stage:
    """``replied``: the seeder answered, the leecher's next datagram is lost (§3.1 step 3 not
    done); ``sent``: the leecher's handshake is on its way; ``established``: both sides
    established, nothing transferred; ``midway``: some chunks transferred."""
    net = SimNet()
    seeder, params, seed_store = seed_endpoint(DATA)
    leecher, content, store = leech_endpoint(params)
    net.add(SEEDER, seeder)
    net.add(LEECHER, leecher)
    captured: list[tuple[Address, bytes]] = []
    handshakes = [0]

    def tap(d: bytes, src: Address, _dst: Address) -> bytes | None:
        captured.append((src, d))
        if phase == "replied" and src == LEECHER:
            handshakes[0] += 1
            return d if handshakes[0] == 1 else None
        return d

    net.tap = tap
    leecher.connect(params.swarm_id, SEEDER, 0.0)
    if phase == "sent":
        pass  # the handshake waits in the leecher's outbox
    elif phase == "midway":
        net.run(5.0, stop=lambda: content.have.count >= 6)
    else:
        # SimNet's 5 ms per hop: the reply is back at 10 ms, the leecher's REQUESTs reach the
        # seeder at 15 ms (step 3), its first DATA reaches the leecher at 20 ms.
        net.run(0.0175 if phase == "established" else 0.012)

    def record(d: bytes, src: Address, _dst: Address) -> bytes:
        captured.append((src, d))
        return d

    net.tap = record
    s = Stage(net, seeder, seed_store, leecher, content, store, params, captured)
    at_seeder, at_leecher = s.channel("seeder"), s.channel("leecher")
    assert at_leecher is not None
    expected = {
        "sent": (None, ChannelState.HANDSHAKE_SENT),
        "replied": (ChannelState.REPLIED, ChannelState.ESTABLISHED),
        "established": (ChannelState.ESTABLISHED, ChannelState.ESTABLISHED),
        "midway": (ChannelState.ESTABLISHED, ChannelState.ESTABLISHED),
    }[phase]
    assert (at_seeder.state if at_seeder else None, at_leecher.state) == expected
    if phase == "midway":
        assert 6 <= content.have.count < N_CHUNKS
    return s


u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
small = st.integers(0, N_CHUNKS + 2)
#: Chunk specifications: mostly near the content, some anywhere (reversed ones included).
specs = st.one_of(st.tuples(small, small), st.tuples(small, u32), st.tuples(u32, u32))


def _options() -> st.SearchStrategy[HandshakeOptions]:
    byte = st.integers(0, 255)
    return st.builds(
        HandshakeOptions,
        version=st.none() | byte,
        minimum_version=st.none() | byte,
        swarm_id=st.none() | st.binary(max_size=40),
        integrity_method=st.none() | st.integers(0, 3),
        merkle_hash_function=st.none() | st.integers(0, 4),
        chunk_addressing=st.none() | st.just(2),
        supported_messages=st.none() | st.binary(max_size=3),
        chunk_size=st.none() | st.sampled_from([1024, 512, 2**32 - 1]),
    )


def _message() -> st.SearchStrategy[Message]:
    real_chunk = st.integers(0, N_CHUNKS - 1).map(lambda c: DATA[c * CHUNK : (c + 1) * CHUNK])
    return st.one_of(
        st.builds(Handshake, u32, _options()),
        st.builds(
            lambda s, ts, p: Data(s[0], s[1], ts, p),
            specs,
            u64,
            st.binary(max_size=CHUNK + 10) | real_chunk,
        ),
        st.builds(lambda s, d: Ack(s[0], s[1], d), specs, u64),
        st.builds(lambda s: Have(*s), specs),
        st.builds(
            lambda s, h: Integrity(s[0], s[1], h), specs, st.binary(min_size=32, max_size=32)
        ),
        st.builds(PexResV4, st.ip_addresses(v=4), st.integers(0, 65535)),
        st.just(PexReq()),
        st.builds(
            lambda s, ts, sig: SignedIntegrity(s[0], s[1], ts, sig),
            specs,
            u64,
            st.binary(min_size=64, max_size=64),
        ),
        st.builds(lambda s: Request(*s), specs),
        st.builds(lambda s: Cancel(*s), specs),
        st.just(Choke()),
        st.just(Unchoke()),
        st.builds(PexResV6, st.ip_addresses(v=6), st.integers(0, 65535)),
        st.builds(PexResCert, st.binary(max_size=64)),
    )


@st.composite
def hostile_datagrams(draw: st.DrawFn, victim_channel: int, captured: list[bytes]) -> bytes:
    """One datagram: random bytes, a mutated copy of a real one, or well-formed messages with
    hostile values, addressed to the victim's channel (or to channel 0, or anywhere)."""
    channel = draw(st.sampled_from([victim_channel, victim_channel, 0]) | u32)
    head = channel.to_bytes(4, "big")
    kind = draw(st.sampled_from(["random", "mutated", "messages", "messages"]))
    if kind == "random":
        return head + draw(st.binary(max_size=200))
    if kind == "mutated" and captured:
        real = bytearray(draw(st.sampled_from(captured)))
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["flip", "truncate", "insert", "chop"]))
            if op == "flip" and len(real) > 4:
                i = draw(st.integers(4, len(real) - 1))
                real[i] ^= draw(st.integers(1, 255))
            elif op == "truncate" and len(real) > 4:
                del real[draw(st.integers(4, len(real) - 1)) :]
            elif op == "insert":
                i = draw(st.integers(4, max(4, len(real))))
                real[i:i] = draw(st.binary(min_size=1, max_size=9))
            elif op == "chop" and len(real) > 5:
                i = draw(st.integers(4, len(real) - 1))
                del real[i : i + draw(st.integers(1, 40))]
        return head + bytes(real[4:])
    msgs = draw(st.lists(_message(), min_size=0, max_size=6))
    # §8.6: DATA runs to the end of the datagram, so at most one, last.
    data = [m for m in msgs if isinstance(m, Data)]
    msgs = [m for m in msgs if not isinstance(m, Data)] + data[:1]
    try:
        return fastwire.encode_datagram(channel, msgs, WireContext())
    except EncodeError:
        return head + b"\xff"


def check_invariants(s: Stage) -> None:
    """Nothing stored changes and nothing unverified is stored."""
    for i in range(N_CHUNKS):
        assert s.seed_store.read_chunk(i) == DATA[i * CHUNK : (i + 1) * CHUNK]
    seed_content = s.seeder.swarms[s.params.swarm_id].content
    assert seed_content.have == ChunkSet([(0, N_CHUNKS - 1)])
    for i, chunk in s.store.chunks.items():
        assert chunk == DATA[i * CHUNK : (i + 1) * CHUNK], f"unverified chunk {i} stored"
    for i in s.content.have.chunks():
        assert i in s.store.chunks
    for addr in (SEEDER, LEECHER):
        for e in s.net.events[addr]:
            if isinstance(e, ChannelClosed):
                assert e.reason


def feed(s: Stage, victim: str, datagrams: list[bytes], from_peer: bool) -> None:
    ep, peer = (s.seeder, LEECHER) if victim == "seeder" else (s.leecher, SEEDER)
    src = peer if from_peer else STRANGER
    for d in datagrams:
        ep.receive(d, src, s.net.now)  # must not raise
        s.net.run(s.net.now + 0.01)
    s.net.run(s.net.now + 2.0)  # flushes and timers must not raise either
    check_invariants(s)


@settings(FUZZ)
@given(
    phase=st.sampled_from(["replied", "established", "midway"]),
    from_peer=st.booleans(),
    data=st.data(),
)
def test_seeder_receive_never_raises(phase: str, from_peer: bool, data: st.DataObject) -> None:
    s = stage(phase)
    ch = s.channel("seeder")
    assert ch is not None
    captured = [d for src, d in s.captured if src == LEECHER] + reference_capture()[LEECHER]
    dgrams = data.draw(st.lists(hostile_datagrams(ch.local_id, captured), min_size=1, max_size=4))
    feed(s, "seeder", dgrams, from_peer)
    # The seeder keeps serving: a newcomer downloads everything.
    newcomer, content, store = leech_endpoint(s.params)
    s.net.add(LEECHER2, newcomer)
    newcomer.connect(s.params.swarm_id, SEEDER, s.net.now)
    s.net.run(s.net.now + 20.0, stop=completed(s.net, LEECHER2))
    assert content.complete
    assert store.content() == DATA


@settings(FUZZ)
@given(
    phase=st.sampled_from(["sent", "established", "midway"]),
    from_peer=st.booleans(),
    data=st.data(),
)
def test_leecher_receive_never_raises(phase: str, from_peer: bool, data: st.DataObject) -> None:
    s = stage(phase)
    ch = s.channel("leecher")
    assert ch is not None
    captured = [d for src, d in s.captured if src == SEEDER] + reference_capture()[SEEDER]
    captured += self_contained_data()
    dgrams = data.draw(st.lists(hostile_datagrams(ch.local_id, captured), min_size=1, max_size=4))
    feed(s, "leecher", dgrams, from_peer)
    # The leecher keeps working: from a second, untouched seeder it completes, and what it
    # has is exactly the content. A forged reply can leave it a channel that is silently
    # dead; that costs up to the dead-peer timeout (§3.12, and see the stall test below).
    other, _, _ = seed_endpoint(DATA)
    s.net.add(SEEDER2, other)
    s.leecher.connect(s.params.swarm_id, SEEDER2, s.net.now)
    s.net.run(s.net.now + DEAD_PEER_TIMEOUT + 60.0, stop=lambda: s.content.complete)
    assert s.content.complete
    assert s.store.content() == DATA


@settings(FUZZ)
@given(junk=st.binary(max_size=120), hs_swarm=st.booleans(), data=st.data())
def test_channel_zero_junk_never_raises(junk: bytes, hs_swarm: bool, data: st.DataObject) -> None:
    s = stage("established")
    if hs_swarm:
        # A real handshake for the swarm followed by hostile messages (§3.1 allows HAVE etc.).
        tail = data.draw(st.lists(_message(), max_size=4))
        tail = [m for m in tail if not isinstance(m, Data)]
        with contextlib.suppress(EncodeError):
            junk = (
                initiating_handshake(s.params.swarm_id, 99)
                + fastwire.encode_datagram(0, tail, WireContext())[4:]
            )
    dgram = b"\0\0\0\0" + junk if not junk.startswith(b"\0\0\0\0") else junk
    for ep in (s.seeder, s.leecher):
        ep.receive(dgram, STRANGER, s.net.now)
    s.net.run(s.net.now + 2.0)
    check_invariants(s)


def test_reversed_and_huge_ranges_are_harmless() -> None:
    """Regression: a HAVE or ACK with end < start, and ranges up to 2^32-1, in every state."""
    hostile: list[Message] = [
        Have(5, 3),
        Ack(5, 3, 0),
        Request(5, 3),
        Cancel(5, 3),
        Integrity(5, 3, b"\0" * 32),
        Have(0, 2**32 - 1),
        Ack(0, 2**32 - 1, 0),
        Request(0, 2**32 - 1),
        Request(2**32 - 2, 2**32 - 1),
        Cancel(0, 2**32 - 1),
        Data(2**32 - 1, 2**32 - 1, 0, b"x" * CHUNK),
        Data(5, 3, 0, b"x" * CHUNK),
    ]
    for msg in hostile:
        for victim in ("seeder", "leecher"):
            s = stage("midway")
            ch = s.channel(victim)
            assert ch is not None
            feed(s, victim, [fastwire.encode_datagram(ch.local_id, [msg])], from_peer=True)


# ---------------------------------------------------------------------------- bad DATA


class CorruptStore(MemoryChunkStore):
    """Serves every chunk with one byte flipped."""

    def read_chunk(self, chunk: int) -> bytes | memoryview:
        raw = bytearray(super().read_chunk(chunk))
        raw[0] ^= 0x80
        return bytes(raw)


def test_seeder_sending_unverifiable_data_is_dropped_and_others_keep_working() -> None:
    data = make_content(120 * CHUNK, seed=9)
    net = SimNet()
    good, params, _ = seed_endpoint(data)
    bad, _, _ = seed_endpoint(data)
    bad_content = bad.swarms[params.swarm_id].content
    assert isinstance(bad_content, StaticContent)
    bad_content.storage = CorruptStore(CHUNK, data)
    net.add(SEEDER, good)
    net.add(SEEDER2, bad)
    lee, content, store = leech_endpoint(params)
    net.add(LEECHER, lee)
    # A second leecher downloads from the first one while it is being attacked.
    lee2, content2, store2 = leech_endpoint(params)
    net.add(LEECHER2, lee2)
    lee.connect(params.swarm_id, SEEDER2, 0.0)
    lee.connect(params.swarm_id, SEEDER, 0.0)
    lee2.connect(params.swarm_id, LEECHER, 0.0)
    net.run(30.0, stop=lambda: content.complete and content2.complete)

    assert store.content() == data
    assert store2.content() == data
    failed = [e for e in net.events[LEECHER] if isinstance(e, IntegrityFailed)]
    assert failed and all(e.addr == SEEDER2 and e.swarm_id == params.swarm_id for e in failed)
    closed = [e for e in net.events[LEECHER] if isinstance(e, ChannelClosed)]
    assert [e.addr for e in closed] == [SEEDER2]
    assert "verification" in closed[0].reason
    assert not [ch for ch in lee.channels.values() if ch.addr == SEEDER2]
    assert only_channel(lee, SEEDER).state is ChannelState.ESTABLISHED
    assert only_channel(lee, LEECHER2).state is ChannelState.ESTABLISHED
    # Nothing the bad seeder sent was stored, even for an instant: every write was verified.
    assert all(store.chunks[i] == data[i * CHUNK : (i + 1) * CHUNK] for i in store.chunks)


def test_seeder_dying_silently_midway_does_not_stall_the_download() -> None:
    data = make_content(300 * CHUNK, seed=12)
    slow: list[tuple[int, float]] = []
    for trial in range(10):
        net = SimNet(seed=trial)
        s1, params, _ = seed_endpoint(data)
        s2, _, _ = seed_endpoint(data)
        net.add(SEEDER, s1)
        net.add(SEEDER2, s2)
        lee, content, store = leech_endpoint(params)
        net.add(LEECHER, lee)
        lee.connect(params.swarm_id, SEEDER, 0.0)
        lee.connect(params.swarm_id, SEEDER2, 0.0)
        net.run(10.0, stop=lambda: content.have.count >= 100)  # noqa: B023
        assert 100 <= content.have.count < 300
        died = net.now
        del net.nodes[SEEDER if trial % 2 else SEEDER2]  # gone, without a close
        net.run(died + 30.0, stop=lambda: content.complete)  # noqa: B023
        if not content.complete or net.now - died > 10.0:
            slow.append((trial, net.now - died))
        else:
            assert store.content() == data
    assert not slow, f"(trial, seconds to complete after a seeder died): {slow}"


# ---------------------------------------------------------------------------- bounds


def _raw_peer(n_chunks: int) -> tuple[SimNet, Endpoint, SwarmParameters, Channel, int]:
    """A seeder and a scripted peer (STRANGER) that joined by hand and never ACKs."""
    data = make_content(n_chunks * CHUNK, seed=5)
    net = SimNet()
    seeder, params, _ = seed_endpoint(data)
    net.add(SEEDER, seeder)
    replies: list[bytes] = []

    def record(d: bytes, _src: Address, dst: Address) -> bytes:
        if dst == STRANGER:
            replies.append(d)
        return d

    net.tap = record
    net.inject(initiating_handshake(params.swarm_id, 4711), STRANGER, SEEDER)
    net.run(0.05)
    assert replies
    ch = only_channel(seeder, STRANGER)
    return net, seeder, params, ch, ch.local_id


def _send_all(net: SimNet, ep: Endpoint, channel: int, msgs: list[Message], per: int = 150) -> None:
    for i in range(0, len(msgs), per):
        ep.receive(fastwire.encode_datagram(channel, msgs[i : i + per]), STRANGER, net.now)
    net.run(net.now + 0.01)


def _still_serves(net: SimNet, params: SwarmParameters, n_chunks: int) -> None:
    lee, content, store = leech_endpoint(params)
    net.add(LEECHER, lee)
    lee.connect(params.swarm_id, SEEDER, net.now)
    net.run(net.now + 60.0, stop=lambda: content.complete)
    assert content.complete
    assert store.content() == make_content(n_chunks * CHUNK, seed=5)


def test_hostile_requests_and_haves_stay_bounded() -> None:
    n = 1024
    net, seeder, params, ch, cid = _raw_peer(n)
    rng = random.Random(1)

    # HAVEs (and ACKs) for 100,000 disjoint ranges: the availability map is capped.
    _send_all(net, seeder, cid, [Have(2 * i, 2 * i) for i in range(100_000)])
    assert len(ch.peer_have) <= MAX_HAVE_INTERVALS
    _send_all(net, seeder, cid, [Ack(2 * i + 1, 2 * i + 1, 0) for i in range(100_000, 200_000)])
    assert len(ch.peer_have) <= MAX_HAVE_INTERVALS

    # REQUESTs for huge ranges are clipped to the content.
    _send_all(net, seeder, cid, [Request(0, 2**32 - 1), Request(2**31, 2**32 - 1)])
    assert ch.queued_request_chunks <= n

    # 10,000 REQUEST messages: the queue is capped.
    reqs: list[Message] = []
    for _ in range(10_000):
        s = rng.randrange(n)
        reqs.append(Request(s, s + rng.randrange(2**20)))
    _send_all(net, seeder, cid, reqs)
    assert len(ch.peer_requests) <= MAX_QUEUED_REQUESTS
    assert ch.queued_request_chunks <= MAX_QUEUED_REQUESTS * 64 + n

    # The endpoint keeps working, for this peer's channel and for others.
    net.run(net.now + 5.0)
    assert ch.is_open or ch.close_reason
    _still_serves(net, params, n)


def test_many_handshakes_from_one_address_are_bounded() -> None:
    net, seeder, params, _, _ = _raw_peer(16)
    for i in range(MAX_CHANNELS_PER_SWARM + 100):
        seeder.receive(initiating_handshake(params.swarm_id, 10_000 + i), STRANGER, net.now)
    assert len(seeder.swarms[params.swarm_id].channels) <= MAX_CHANNELS_PER_SWARM
    assert len(seeder.channels) <= MAX_CHANNELS_PER_SWARM


def test_half_open_channels_do_not_lock_out_real_peers() -> None:
    """Regression: 612 unconfirmed handshakes (§3.1 step 3 never comes) used to fill the
    swarm's 512 channel slots and lock real peers out for 3 minutes."""
    n = 16
    net, seeder, params, _, _ = _raw_peer(n)
    for i in range(MAX_CHANNELS_PER_SWARM + 100):  # ~60 bytes each: a 36 KB attack
        seeder.receive(initiating_handshake(params.swarm_id, 10_000 + i), STRANGER, net.now)
    net.run(net.now + 0.1)
    lee, content, _ = leech_endpoint(params)
    net.add(LEECHER, lee)
    lee.connect(params.swarm_id, SEEDER, net.now)
    net.run(net.now + 30.0, stop=lambda: content.complete)
    assert content.complete


def _time_flood(kind: type[Have] | type[Cancel], queued: int) -> float:
    net, seeder, _, ch, cid = _raw_peer(4096)
    if queued:
        _send_all(net, seeder, cid, [Request(2 * i, 2 * i) for i in range(queued)])
        assert len(ch.peer_requests) >= queued // 2
    flood: list[Message] = [kind(2 * i + 1, 2 * i + 1) for i in range(1500)]
    started = time.perf_counter()
    _send_all(net, seeder, cid, flood)
    return time.perf_counter() - started


@pytest.mark.parametrize("kind", [Have, Cancel])
def test_have_and_cancel_floods_cost_does_not_grow_with_queued_requests(
    kind: type[Have] | type[Cancel],
) -> None:
    """Regression: every HAVE (§3.8 implicit CANCEL) and CANCEL used to rescan the peer's
    whole REQUEST queue, ~2000 steps per 9-byte message with 2048 REQUESTs queued."""
    baseline = _time_flood(kind, 0)
    loaded = _time_flood(kind, 2048)
    assert loaded < max(20 * baseline, 0.1), (baseline, loaded)


def test_established_channel_survives_junk_from_other_addresses() -> None:
    data = make_content(60 * CHUNK, seed=8)
    net = SimNet()
    seeder, params, _ = seed_endpoint(data)
    net.add(SEEDER, seeder)
    lee, content, store = leech_endpoint(params)
    net.add(LEECHER, lee)
    lee.connect(params.swarm_id, SEEDER, 0.0)
    net.run(5.0, stop=lambda: content.have.count >= 10)
    sch = only_channel(seeder, LEECHER)
    lch = only_channel(lee, SEEDER)
    # Spoofed-channel datagrams from a stranger: right channel IDs, wrong address (§3.11).
    for victim, cid in ((seeder, sch.local_id), (lee, lch.local_id)):
        before = victim.stats_dropped
        for msg in (Handshake(0), Choke(), Have(0, 2**32 - 1), Data(0, 0, 0, b"x" * CHUNK)):
            victim.receive(fastwire.encode_datagram(cid, [msg]), STRANGER, net.now)
        assert victim.stats_dropped == before + 4
    assert sch.is_open and lch.is_open and not lch.peer_choked_us
    net.run(30.0, stop=completed(net, LEECHER))
    assert store.content() == data
    assert any(isinstance(e, ChannelEstablished) for e in net.events[LEECHER])
