"""RFC 7574 protocol features of the sans-IO endpoint, driven over SimNet (virtual time):
PEX (§3.10), CHOKE/UNCHOKE (§3.9), CANCEL and HAVE as implicit cancel (§3.8), keep-alives and
dead peers (§3.12), handshake retransmission and idempotence (§3.1, §8.2), rarest-first
picking (§9.1), several swarms on one endpoint (§3.11).

Scripted behaviour (a seeder that chokes, a peer that cancels) is produced by injecting
hand-built datagrams into SimNet with the right channel IDs: the endpoints under test only see
the wire.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from ppsp.peer import fastwire
from ppsp.peer.channel import (
    DEAD_PEER_DATAGRAMS,
    DEAD_PEER_TIMEOUT,
    HANDSHAKE_RETRY,
    KEEPALIVE_INTERVAL,
    PEX_RECENT,
    Channel,
)
from ppsp.peer.content import MemoryChunkStore, StaticContent, SwarmParameters
from ppsp.peer.endpoint import (
    ChannelClosed,
    ChannelEstablished,
    DownloadComplete,
    Endpoint,
    PeerDiscovered,
)
from ppsp.peer.merkle import HashTree
from ppsp.peer.messages import (
    Ack,
    Cancel,
    Choke,
    ChunkAddressing,
    Data,
    DecodeError,
    Handshake,
    HandshakeOptions,
    Have,
    IntegrityMethod,
    MerkleHashFunction,
    Message,
    PexReq,
    PexResV4,
    PexResV6,
    Request,
    Unchoke,
    WireContext,
)
from ppsp.peer.picker import ChunkPicker, PickPolicy
from ppsp.peer.ranges import ChunkRange, ChunkSet
from ppsp.peer.simnet import SimNet

Address = tuple[str, int]

SEEDER: Address = ("10.0.0.1", 7000)
LEECHER: Address = ("10.0.0.3", 7000)
RAW: Address = ("10.0.0.99", 7099)
CHUNK = 1024
#: Float slack for virtual-time differences.
EPS = 1e-6


# ---------------------------------------------------------------------------- helpers


def make_content(size: int, seed: int = 0) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed.to_bytes(4, "big") + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def swarm_params(data: bytes) -> SwarmParameters:
    tree = HashTree.from_content(data, CHUNK, MerkleHashFunction.SHA256)
    return SwarmParameters(
        tree.root_hash,
        IntegrityMethod.MERKLE,
        MerkleHashFunction.SHA256,
        ChunkAddressing.CHUNK_RANGE32,
        CHUNK,
    )


def add_seed(ep: Endpoint, data: bytes, have: tuple[int, int] | None = None) -> SwarmParameters:
    """Make ``ep`` serve ``data`` (or only the chunks ``have``) as a static swarm."""
    tree = HashTree.from_content(data, CHUNK, MerkleHashFunction.SHA256)
    n = tree.num_chunks
    assert n is not None
    params = swarm_params(data)
    ep.add_swarm(
        params,
        StaticContent(tree, MemoryChunkStore(CHUNK, data), ChunkSet([have or (0, n - 1)])),
    )
    return params


def add_leech(ep: Endpoint, params: SwarmParameters) -> tuple[StaticContent, MemoryChunkStore]:
    tree = HashTree.for_root(params.swarm_id, CHUNK, params.hash_function)
    store = MemoryChunkStore(CHUNK)
    content = StaticContent(tree, store)
    ep.add_swarm(params, content)
    return content, store


def seeder(data: bytes) -> tuple[Endpoint, SwarmParameters]:
    ep = Endpoint()
    return ep, add_seed(ep, data)


def leecher(params: SwarmParameters) -> tuple[Endpoint, StaticContent, MemoryChunkStore]:
    ep = Endpoint()
    content, store = add_leech(ep, params)
    return ep, content, store


def only_channel(ep: Endpoint, addr: Address | None = None) -> Channel:
    chans = [ch for ch in ep.channels.values() if addr is None or ch.addr == addr]
    assert len(chans) == 1, chans
    return chans[0]


def initiating_handshake(swarm_id: bytes, source_channel: int) -> bytes:
    """What a libswift-like peer sends to channel 0 to join a SHA-256 chunk32 swarm (§3.1)."""
    opts = HandshakeOptions(
        version=1,
        minimum_version=1,
        swarm_id=swarm_id,
        integrity_method=IntegrityMethod.MERKLE,
        merkle_hash_function=MerkleHashFunction.SHA256,
        chunk_addressing=ChunkAddressing.CHUNK_RANGE32,
    )
    return fastwire.encode_datagram(0, [Handshake(source_channel, opts)], WireContext())


@dataclass(frozen=True, slots=True)
class Sent:
    time: float
    src: Address
    dst: Address
    data: bytes


class Tap:
    """Records every datagram SimNet carries; optionally drops some or calls a hook for the
    datagrams addressed to a scripted (endpoint-less) peer."""

    def __init__(self, net: SimNet) -> None:
        self.net = net
        self.log: list[Sent] = []
        self.drop: Callable[[bytes, Address, Address], bool] | None = None
        self.hooks: dict[Address, Callable[[bytes, Address], None]] = {}
        net.tap = self

    def __call__(self, data: bytes, src: Address, dst: Address) -> bytes | None:
        self.log.append(Sent(self.net.now, src, dst, data))
        hook = self.hooks.get(dst)
        if hook is not None:
            hook(data, src)
        if self.drop is not None and self.drop(data, src, dst):
            return None
        return data

    def between(self, src: Address, dst: Address, since: float = -1.0) -> list[Sent]:
        return [s for s in self.log if s.src == src and s.dst == dst and s.time >= since]

    def messages(self, src: Address, dst: Address, since: float = -1.0) -> list[Message]:
        return [m for s in self.between(src, dst, since) for m in decode(s.data)]


def decode(data: bytes, ctx: WireContext | None = None) -> list[Message]:
    try:
        return fastwire.decode_datagram(data, ctx or WireContext()).messages
    except DecodeError as exc:  # pragma: no cover - the endpoints only send valid datagrams
        raise AssertionError(f"an endpoint sent a malformed datagram: {exc}") from exc


def has_data(data: bytes) -> bool:
    return any(isinstance(m, Data) for m in decode(data))


def complete(net: SimNet, addr: Address, swarm_id: bytes | None = None) -> Callable[[], bool]:
    def check() -> bool:
        return any(
            isinstance(e, DownloadComplete) and swarm_id in (None, e.swarm_id)
            for e in net.events[addr]
        )

    return check


# ---------------------------------------------------------------------------- PEX (§3.10)


def test_pex_lists_recent_peers_v4_and_v6_but_not_the_requester() -> None:
    net = SimNet()
    tap = Tap(net)
    data = make_content(6 * CHUNK)
    s, params = seeder(data)
    net.add(SEEDER, s)
    a, b, c6 = ("10.0.0.11", 7001), ("10.0.0.12", 7002), ("2001:db8::13", 7003)
    for addr in (a, b, c6):
        ep, _, _ = leecher(params)
        net.add(addr, ep)
        ep.connect(params.swarm_id, SEEDER, 0.0)
    net.run(2.0)
    assert all(complete(net, addr)() for addr in (a, b, c6))

    a_at_s = only_channel(s, a)

    def ask_for_peers() -> float:
        asked = net.now
        req = fastwire.encode_datagram(a_at_s.local_id, [PexReq()])
        net.inject(req, a, SEEDER)
        net.run(net.now + 0.1)
        return asked

    asked = ask_for_peers()
    answers = [m for m in tap.messages(SEEDER, a, asked) if isinstance(m, (PexResV4, PexResV6))]
    assert {(type(m), str(m.address), m.port) for m in answers} == {
        (PexResV4, b[0], b[1]),
        (PexResV6, c6[0], c6[1]),
    }
    discovered = {e.addr for e in net.events[a] if isinstance(e, PeerDiscovered)}
    assert discovered == {b, c6}
    assert all(
        e.swarm_id == params.swarm_id for e in net.events[a] if isinstance(e, PeerDiscovered)
    )

    # §3.10: only peers heard from in the last 60 s. b goes silent (without a close); its
    # channel at the seeder stays open (not dead yet) but b is no longer given out.
    del net.nodes[b]
    net.run(net.now + PEX_RECENT + 5)
    assert only_channel(s, b).is_open
    asked = ask_for_peers()
    answers = [m for m in tap.messages(SEEDER, a, asked) if isinstance(m, (PexResV4, PexResV6))]
    assert [(str(m.address), m.port) for m in answers] == [c6]


def test_pex_request_from_a_lone_peer_gets_no_addresses() -> None:
    net = SimNet()
    tap = Tap(net)
    s, params = seeder(make_content(4 * CHUNK))
    net.add(SEEDER, s)
    lee, _, _ = leecher(params)
    net.add(LEECHER, lee)
    lee.connect(params.swarm_id, SEEDER, 0.0)
    net.run(1.0)
    at_s = only_channel(s, LEECHER)
    asked = net.now
    net.inject(fastwire.encode_datagram(at_s.local_id, [PexReq()]), LEECHER, SEEDER)
    net.run(net.now + 0.1)
    assert not [m for m in tap.messages(SEEDER, LEECHER, asked) if isinstance(m, PexResV4)]
    assert not [e for e in net.events[LEECHER] if isinstance(e, PeerDiscovered)]


# ---------------------------------------------------------------------------- CHOKE (§3.9)


def test_choked_leecher_stops_requesting_and_resumes_after_unchoke() -> None:
    net = SimNet()
    tap = Tap(net)
    data = make_content(300 * CHUNK)
    s, params = seeder(data)
    net.add(SEEDER, s)
    lee, content, store = leecher(params)
    net.add(LEECHER, lee)
    lch = lee.connect(params.swarm_id, SEEDER, 0.0)
    net.run(20.0, stop=lambda: content.have.count >= 30)
    assert 30 <= content.have.count < 300
    assert lch.outstanding_count > 0

    # The seeder chokes the leecher and (honouring its own CHOKE) sends no more DATA.
    tap.drop = lambda d, src, _dst: src == SEEDER and has_data(d)
    net.inject(fastwire.encode_datagram(lch.local_id, [Choke()]), SEEDER, LEECHER)
    net.run(net.now + 0.05)
    assert lch.peer_choked_us
    # Outstanding requests went back to the picker: nothing is pending at the choked peer.
    swarm = lee.swarms[params.swarm_id]
    assert lch.outstanding_count == 0
    assert swarm.pending.difference(content.have).is_empty()
    choked_at = net.now
    held = content.have.count

    # §3.9: a HAVE from the choking peer does not unchoke.
    net.inject(fastwire.encode_datagram(lch.local_id, [Have(0, 299)]), SEEDER, LEECHER)
    net.run(net.now + 5.0)
    assert not [m for m in tap.messages(LEECHER, SEEDER, choked_at) if isinstance(m, Request)]
    assert content.have.count == held
    assert lch.is_open

    tap.drop = None
    unchoked_at = net.now
    net.inject(fastwire.encode_datagram(lch.local_id, [Unchoke()]), SEEDER, LEECHER)
    net.run(net.now + 30.0, stop=complete(net, LEECHER))
    assert not lch.peer_choked_us
    assert [m for m in tap.messages(LEECHER, SEEDER, unchoked_at) if isinstance(m, Request)]
    assert store.content() == data


# ---------------------------------------------------------------------------- CANCEL (§3.8)


def _raw_join(net: SimNet, tap: Tap, swarm_id: bytes, source_channel: int = 77) -> int:
    """Handshake from the scripted peer RAW to SEEDER; returns the seeder's channel ID."""
    replies: list[bytes] = []
    tap.hooks[RAW] = lambda d, _src: replies.append(d)
    net.inject(initiating_handshake(swarm_id, source_channel), RAW, SEEDER)
    net.run(net.now + 0.05)
    assert replies, "the seeder did not answer the handshake"
    hs = decode(replies[0])[0]
    assert isinstance(hs, Handshake) and hs.source_channel
    assert int.from_bytes(replies[0][:4], "big") == source_channel
    return hs.source_channel


def _cancel_test(cancel: Callable[[int, int], Message]) -> tuple[list[tuple[float, int]], float]:
    net = SimNet()
    tap = Tap(net)
    data = make_content(200 * CHUNK)
    s, params = seeder(data)
    net.add(SEEDER, s)
    chan = _raw_join(net, tap, params.swarm_id)
    received: list[tuple[float, int]] = []
    cancelled_at: list[float] = []

    def on_datagram(d: bytes, _src: Address) -> None:
        reply: list[Message] = []
        for m in decode(d):
            if isinstance(m, Data):
                received.append((net.now, m.start))
                if not cancelled_at:
                    # In the datagram before the ACK: the seeder handles it first.
                    reply.append(cancel(20, 199))
                    cancelled_at.append(net.now + net.delay)
                reply.append(Ack(m.start, m.end, 1000))
        if reply:
            net.inject(fastwire.encode_datagram(chan, reply), RAW, SEEDER)

    tap.hooks[RAW] = on_datagram
    net.inject(fastwire.encode_datagram(chan, [Request(0, 199)]), RAW, SEEDER)
    net.run(net.now + 10.0)
    assert cancelled_at
    return received, cancelled_at[0]


def test_cancel_stops_the_seeder_sending_cancelled_chunks() -> None:
    received, cancelled_at = _cancel_test(Cancel)
    after = [c for t, c in received if t >= cancelled_at]
    assert all(c < 20 for c in after), after
    got = {c for _, c in received}
    assert set(range(20)) <= got, "chunks still wanted were not all served"
    assert len(got - set(range(20))) < 180, "the CANCEL had no effect"


def test_have_acts_as_an_implicit_cancel() -> None:
    # §3.8: a HAVE for requested chunks cancels the requests.
    received, cancelled_at = _cancel_test(Have)
    after = [c for t, c in received if t >= cancelled_at]
    assert all(c < 20 for c in after), after
    got = {c for _, c in received}
    assert set(range(20)) <= got
    assert len(got - set(range(20))) < 180


# ---------------------------------------------------------------------------- keep-alive, dead peer (§3.12)


def test_keepalive_after_interval_of_silence() -> None:
    net = SimNet()
    tap = Tap(net)
    s, params = seeder(make_content(10 * CHUNK))
    net.add(SEEDER, s)
    lee, _, _ = leecher(params)
    net.add(LEECHER, lee)
    lch = lee.connect(params.swarm_id, SEEDER, 0.0)
    net.run(2.0, stop=complete(net, LEECHER))
    assert complete(net, LEECHER)()
    net.run(net.now + 2 * KEEPALIVE_INTERVAL + 1)
    for src, dst, remote in ((LEECHER, SEEDER, lch.remote_id), (SEEDER, LEECHER, lch.local_id)):
        sent = tap.between(src, dst)
        keepalives = [i for i, x in enumerate(sent) if len(x.data) == 4]
        assert len(keepalives) >= 2, (src, [len(x.data) for x in sent])
        first = keepalives[0]
        assert sent[first].data == remote.to_bytes(4, "big")  # §8.14: only the channel ID
        silence = sent[first].time - sent[first - 1].time
        assert KEEPALIVE_INTERVAL - EPS <= silence < KEEPALIVE_INTERVAL + 1, silence
        gap = sent[keepalives[1]].time - sent[first].time
        assert KEEPALIVE_INTERVAL - EPS <= gap < KEEPALIVE_INTERVAL + 1, gap
    assert lch.is_open


def test_silent_peer_is_declared_dead_after_three_minutes() -> None:
    net = SimNet()
    tap = Tap(net)
    s, params = seeder(make_content(10 * CHUNK))
    net.add(SEEDER, s)
    lee, _, _ = leecher(params)
    net.add(LEECHER, lee)
    lee.connect(params.swarm_id, SEEDER, 0.0)
    net.run(1.0)
    assert any(isinstance(e, ChannelEstablished) for e in net.events[LEECHER])
    del net.nodes[SEEDER]  # gone without a close
    last_heard = tap.between(SEEDER, LEECHER)[-1].time + net.delay

    def closed() -> bool:
        return any(isinstance(e, ChannelClosed) for e in net.events[LEECHER])

    net.run(600.0, stop=closed)
    assert closed()
    event = next(e for e in net.events[LEECHER] if isinstance(e, ChannelClosed))
    assert "dead" in event.reason
    waited = net.now - last_heard
    assert DEAD_PEER_TIMEOUT < waited <= DEAD_PEER_TIMEOUT + KEEPALIVE_INTERVAL + 1, waited
    sent_meanwhile = tap.between(LEECHER, SEEDER, last_heard)
    assert len(sent_meanwhile) >= DEAD_PEER_DATAGRAMS
    assert not lee.channels
    # §3.12: once dead, nothing more is sent to the peer.
    net.run(net.now + 100)
    assert len(tap.between(LEECHER, SEEDER, last_heard)) == len(sent_meanwhile)


def test_live_peers_are_kept_alive_for_long() -> None:
    net = SimNet()
    s, params = seeder(make_content(10 * CHUNK))
    net.add(SEEDER, s)
    lee, _, _ = leecher(params)
    net.add(LEECHER, lee)
    lch = lee.connect(params.swarm_id, SEEDER, 0.0)
    net.run(3 * DEAD_PEER_TIMEOUT)
    assert lch.is_open
    assert only_channel(s).is_open
    assert not any(isinstance(e, ChannelClosed) for e in net.events[LEECHER] + net.events[SEEDER])


# ---------------------------------------------------------------------------- handshake (§3.1, §8.2)


def test_lost_handshake_is_retransmitted() -> None:
    net = SimNet()
    tap = Tap(net)
    data = make_content(20 * CHUNK)
    s, params = seeder(data)
    net.add(SEEDER, s)
    lee, _, store = leecher(params)
    net.add(LEECHER, lee)
    dropped: list[float] = []

    def drop_first_handshake(d: bytes, src: Address, _dst: Address) -> bool:
        if src == LEECHER and d[:4] == b"\0\0\0\0" and not dropped:
            dropped.append(net.now)
            return True
        return False

    tap.drop = drop_first_handshake
    lee.connect(params.swarm_id, SEEDER, 0.0)
    net.run(10.0, stop=complete(net, LEECHER))
    assert dropped
    initiations = [x for x in tap.between(LEECHER, SEEDER) if x.data[:4] == b"\0\0\0\0"]
    assert len(initiations) == 2
    assert initiations[1].data == initiations[0].data  # same channel, same options
    assert HANDSHAKE_RETRY <= initiations[1].time - initiations[0].time <= 4 * HANDSHAKE_RETRY
    assert store.content() == data


def test_unanswered_handshake_backs_off_without_spinning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: once the backoff (32 s) exceeded KEEPALIVE_INTERVAL, a channel still in
    HANDSHAKE_SENT had a keep-alive deadline on_timer never acted on, and the timer fired
    forever at one instant (in aio: a busy loop ~51 s after connecting to a silent peer)."""
    net = SimNet()
    tap = Tap(net)
    params = swarm_params(make_content(4 * CHUNK))
    lee, _, _ = leecher(params)
    net.add(LEECHER, lee)
    calls = [0]
    real = lee.handle_timer

    def counting(now: float) -> None:
        calls[0] += 1
        real(now)

    monkeypatch.setattr(lee, "handle_timer", counting)
    lee.connect(params.swarm_id, SEEDER, 0.0)  # nobody is at SEEDER
    net.run(2 * DEAD_PEER_TIMEOUT + 60, stop=lambda: calls[0] > 1000)
    assert calls[0] <= 1000, f"timer fired {calls[0]} times by t={net.now:.1f}s"
    sends = [x.time for x in tap.between(LEECHER, SEEDER)]
    gaps = [b - a for a, b in itertools.pairwise(sends)]
    assert gaps == sorted(gaps), "retransmissions do not back off"
    # An initiator that never hears back gives up (§3.12: dead after 3 minutes).
    assert not lee.channels


def test_duplicate_handshake_gets_the_same_reply() -> None:
    net = SimNet()
    tap = Tap(net)
    s, params = seeder(make_content(20 * CHUNK))
    net.add(SEEDER, s)
    replies: list[bytes] = []
    tap.hooks[RAW] = lambda d, _src: replies.append(d)
    hello = initiating_handshake(params.swarm_id, 4242)
    net.inject(hello, RAW, SEEDER)
    net.run(0.1)
    net.inject(hello, RAW, SEEDER)  # a retransmission (the reply was "lost")
    net.run(0.2)
    assert len(replies) == 2
    assert replies[1] == replies[0]
    first = decode(replies[0])[0]
    assert isinstance(first, Handshake)
    assert len(s.channels) == 1
    # Even after the three-way handshake completed, a late duplicate is answered the same.
    net.inject(fastwire.encode_datagram(first.source_channel, []), RAW, SEEDER)
    net.inject(hello, RAW, SEEDER)
    net.run(0.3)
    assert len(replies) == 3
    assert replies[2] == replies[0]
    assert len(s.channels) == 1


def test_duplicate_handshake_reply_is_harmless() -> None:
    net = SimNet()
    tap = Tap(net)
    data = make_content(30 * CHUNK)
    s, params = seeder(data)
    net.add(SEEDER, s)
    lee, _, store = leecher(params)
    net.add(LEECHER, lee)
    copies: list[bytes] = []

    def duplicate_reply(d: bytes, src: Address, dst: Address) -> bool:
        if src == SEEDER and not copies and any(isinstance(m, Handshake) for m in decode(d)):
            copies.append(d)
            net.inject(d, src, dst)
        return False

    tap.drop = duplicate_reply
    lee.connect(params.swarm_id, SEEDER, 0.0)
    net.run(5.0, stop=complete(net, LEECHER))
    assert copies
    assert store.content() == data
    assert len(lee.channels) == 1
    assert len([e for e in net.events[LEECHER] if isinstance(e, ChannelEstablished)]) == 1


# ---------------------------------------------------------------------------- chunk picking (§9.1)


def test_picker_rarest_first_takes_the_run_fewest_peers_hold() -> None:
    picker = ChunkPicker(PickPolicy.RAREST_FIRST)
    offered = ChunkSet([(0, 99)])
    others = [ChunkSet([(0, 49)]), ChunkSet([(0, 24)])]
    assert picker.pick(offered, ChunkSet(), ChunkSet(), 10, others) == [ChunkRange(50, 59)]
    assert picker.pick(offered, ChunkSet(), ChunkSet(), 60, others) == [
        ChunkRange(50, 99),
        ChunkRange(25, 34),
    ]
    # Equal rarity: lowest first.
    offered = ChunkSet([(0, 9), (20, 29)])
    picks = picker.pick(offered, ChunkSet(), ChunkSet(), 100, [ChunkSet([(5, 24)])])
    assert picks == [ChunkRange(0, 4), ChunkRange(25, 29), ChunkRange(5, 9), ChunkRange(20, 24)]


def test_picker_skips_held_and_pending_chunks_and_respects_the_limit() -> None:
    picker = ChunkPicker(PickPolicy.RAREST_FIRST)
    offered = ChunkSet([(0, 99)])
    have = ChunkSet([(0, 9)])
    pending = ChunkSet([(10, 19), (50, 59)])
    picks = picker.pick(offered, have, pending, 45, [])
    assert picks == [ChunkRange(20, 49), ChunkRange(60, 74)]
    assert picker.pick(offered, have, pending, 0, []) == []
    assert picker.pick(ChunkSet(), have, pending, 10, []) == []
    assert picker.pick(ChunkSet([(0, 9)]), have, pending, 10, []) == []


def test_picker_in_order_starts_at_the_playback_position() -> None:
    picker = ChunkPicker(PickPolicy.IN_ORDER)
    picker.position = 15
    offered = ChunkSet([(0, 99)])
    have = ChunkSet([(15, 17)])
    # Rarity does not matter for streams: in order from the position.
    others = [ChunkSet([(0, 40)]), ChunkSet([(0, 40)])]
    assert picker.pick(offered, have, ChunkSet(), 5, others) == [ChunkRange(18, 22)]
    assert picker.pick(offered, have, ChunkSet([(18, 19)]), 3, others) == [ChunkRange(20, 22)]
    picker.position = 200
    assert picker.pick(offered, have, ChunkSet(), 5, others) == []


def test_rarest_first_across_three_peers() -> None:
    net = SimNet()
    tap = Tap(net)
    data = make_content(100 * CHUNK)
    peers = {
        ("10.0.1.1", 7000): (0, 99),  # everything: 50..99 only here
        ("10.0.1.2", 7000): (0, 49),
        ("10.0.1.3", 7000): (0, 24),  # 0..24 everywhere
    }
    params = swarm_params(data)
    for addr, have in peers.items():
        ep = Endpoint()
        add_seed(ep, data, have)
        net.add(addr, ep)
    lee, content, store = leecher(params)
    net.add(LEECHER, lee)

    # Every peer's handshake reply carries a CHOKE after its HAVEs: the leecher learns all the
    # availability before it may request anything.
    def choke_in_reply(d: bytes, src: Address, dst: Address) -> bool:
        if src in peers and any(isinstance(m, Handshake) for m in decode(d)):
            net.inject(d + bytes([10]), src, dst)
            return True
        return False

    tap.drop = choke_in_reply
    for addr in peers:
        lee.connect(params.swarm_id, addr, 0.0)
    net.run(0.5)
    tap.drop = None
    assert len(lee.channels) == 3
    assert all(ch.peer_choked_us for ch in lee.channels.values())
    assert not [
        m for s in tap.log if s.src == LEECHER for m in decode(s.data) if isinstance(m, Request)
    ]

    full = ("10.0.1.1", 7000)
    unchoked_at = net.now
    net.inject(
        fastwire.encode_datagram(only_channel(lee, full).local_id, [Unchoke()]), full, LEECHER
    )
    net.run(net.now + 0.006)
    first = next(x for x in tap.between(LEECHER, full, unchoked_at) if decode(x.data))
    requests = [m for m in decode(first.data) if isinstance(m, Request)]
    assert requests, decode(first.data)
    # The chunks only this peer holds come first, then those two peers hold; none of the
    # chunks every peer holds while rarer ones remain.
    assert (requests[0].start, requests[0].end) == (50, 99)
    asked = [c for r in requests for c in range(r.start, r.end + 1)]
    assert min(asked) >= 25

    for addr in peers:
        if addr != full:
            ch = only_channel(lee, addr)
            net.inject(fastwire.encode_datagram(ch.local_id, [Unchoke()]), addr, LEECHER)
    net.run(net.now + 20.0, stop=complete(net, LEECHER))
    assert content.complete
    assert store.content() == data


# ---------------------------------------------------------------------------- several swarms (§3.11)


def test_two_swarms_from_one_seeder_endpoint_concurrently() -> None:
    net = SimNet()
    tap = Tap(net)
    d1, d2 = make_content(120 * CHUNK, seed=1), make_content(90 * CHUNK + 17, seed=2)
    s = Endpoint()
    p1, p2 = add_seed(s, d1), add_seed(s, d2)
    net.add(SEEDER, s)
    lee = Endpoint()
    c1, st1 = add_leech(lee, p1)
    c2, st2 = add_leech(lee, p2)
    net.add(LEECHER, lee)
    ch1 = lee.connect(p1.swarm_id, SEEDER, 0.0)
    ch2 = lee.connect(p2.swarm_id, SEEDER, 0.0)
    net.run(0.05)
    at_seeder = [ch for ch in s.channels.values() if ch.addr == LEECHER]
    assert {ch.swarm.swarm_id for ch in at_seeder} == {p1.swarm_id, p2.swarm_id}
    assert len({ch.local_id for ch in at_seeder}) == 2

    net.run(
        30.0,
        stop=lambda: (
            complete(net, LEECHER, p1.swarm_id)() and complete(net, LEECHER, p2.swarm_id)()
        ),
    )
    assert c1.complete and c2.complete
    assert st1.content() == d1
    assert st2.content() == d2
    # Concurrent, not one after the other: DATA of each swarm arrived while the other's flowed.
    times: dict[int, list[float]] = {ch1.local_id: [], ch2.local_id: []}
    for x in tap.between(SEEDER, LEECHER):
        cid = int.from_bytes(x.data[:4], "big")
        if cid in times and has_data(x.data):
            times[cid].append(x.time)
    t1, t2 = times[ch1.local_id], times[ch2.local_id]
    assert t1 and t2
    assert t1[0] < t2[-1] and t2[0] < t1[-1]
