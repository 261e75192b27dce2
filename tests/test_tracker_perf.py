"""The tracker's fast paths (issue 3's request-rate targets) behave exactly like the plain ones:
the encode and decode memos of both codecs give the same bytes and messages (and the same
errors) as the codecs without them and as the normative Construct definition; FIND's cached
rankings give the same answers as ranking afresh; the daemon's lean UDP path and its TCP
protocol answer, refuse and close as the request path always did."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import replace
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppsp.tracker import binary, json_codec, server
from ppsp.tracker.binary import HEADER_SIZE, MAX_MESSAGE, Method
from ppsp.tracker.client import TcpTrackerClient, UdpTrackerClient
from ppsp.tracker.config import Limits, TrackerDaemonConfig
from ppsp.tracker.messages import (
    Action,
    AvailabilityDelta,
    Connect,
    ErrorCode,
    Find,
    Message,
    PeerAddress,
    PeerInfo,
    PeerMode,
    PeerNum,
    PushHint,
    PushHintMessage,
    Request,
    Response,
    ResponseType,
    Role,
    StatReport,
    StreamStats,
    SwarmAction,
    SwarmAvailability,
    SwarmResult,
    TrackerError,
)
from ppsp.tracker.state import Tracker, TrackerConfig
from tests import tracker_strategies as ts

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NORMATIVE = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

T = TypeVar("T")
M = TypeVar("M", bound=Message)
U64 = st.integers(0, 2**64 - 1)


def with_tid(strategy: st.SearchStrategy[M]) -> st.SearchStrategy[M]:
    """The binary header's transaction ID is a 64-bit number, written in decimal."""
    return st.tuples(strategy, U64).map(lambda m: replace(m[0], transaction_id=str(m[1])))


responses = with_tid(ts.responses())
requests = with_tid(ts.requests)


def outcome(call: Any, *args: Any, **kwargs: Any) -> Any:
    """What a codec call gives: its result, or the code and text of the error it raised."""
    try:
        return call(*args, **kwargs)
    except TrackerError as exc:
        return ("error", exc.code, str(exc), exc.transaction_id)


# -- binary: EncodeMemo ---------------------------------------------------------------------


@PROPERTY
@given(responses, st.integers(HEADER_SIZE + 8, 2000))
def test_encode_memo_gives_the_same_bytes(msg: Response, max_fragment: int) -> None:
    memo = binary.EncodeMemo()
    plain = binary.encode(msg, max_fragment=max_fragment)
    assert binary.encode(msg, max_fragment=max_fragment, memo=memo) == plain
    assert binary.encode(msg, max_fragment=max_fragment, memo=memo) == plain  # from the memo


@NORMATIVE
@given(responses)
def test_encode_memo_is_byte_equal_to_construct(msg: Response) -> None:
    memo = binary.EncodeMemo()
    binary.encode(msg, memo=memo)
    (data,) = binary.encode(msg, max_fragment=MAX_MESSAGE, memo=memo)
    assert data == binary.build(msg)
    assert binary.parse(data) == msg


def listed(*peers: PeerInfo, **fields: Any) -> Response:
    return Response("7", swarm_results=[SwarmResult("s", peers=list(peers))], **fields)


@pytest.mark.parametrize(
    "msg",
    [
        listed(PeerInfo("p", [PeerAddress("not an address", 1)])),
        listed(PeerInfo("p", [PeerAddress("10.0.0.1", 70_000)])),
        listed(PeerInfo("p", [PeerAddress("10.0.0.1", 1)] * (binary.MAX_ADDRESSES + 1))),
        listed(*[PeerInfo("p", [PeerAddress("10.0.0.1", 1)])] * (binary.MAX_PEERS + 1)),
        listed(PeerInfo("p" * 2000, [PeerAddress("10.0.0.1", 1)])),
        listed(peer_address=PeerAddress("fe80::1%eth0", 1)),
        listed(push_hints=[PushHint("s", 0, 1, expires_in=float("nan"))]),
        Response("8", ResponseType.FAILED, ErrorCode.NO_ERROR),
        Response("not a number"),
    ],
)
def test_encode_memo_refuses_what_the_codec_refuses(msg: Response) -> None:
    memo = binary.EncodeMemo()
    plain = outcome(binary.encode, msg)
    assert plain[0] == "error"
    assert outcome(binary.encode, msg, memo=memo) == plain
    assert outcome(binary.encode, msg, memo=memo) == plain
    assert len(memo) <= 1  # at most the valid reflexive address; nothing that failed


def test_encode_memo_knows_objects_not_values() -> None:
    """A new object gets its own bytes, even right after an equal-looking one."""
    memo = binary.EncodeMemo()
    first = PeerInfo("p", [PeerAddress("10.0.0.1", 1)], Role.CACHER)
    moved = PeerInfo("p", [PeerAddress("10.0.0.2", 2)], Role.CACHER)
    for peer in (first, moved, first):
        msg = listed(peer)
        assert binary.encode(msg, memo=memo) == binary.encode(msg)


def test_encode_memo_is_bounded() -> None:
    memo = binary.EncodeMemo(max_entries=3)
    peers = [PeerInfo(f"p{i}", [PeerAddress("10.0.0.1", 1000 + i)]) for i in range(10)]
    msg = listed(*peers, peer_address=PeerAddress("10.0.0.9", 9))
    for _ in range(3):
        assert binary.encode(msg, memo=memo) == binary.encode(msg)
        assert len(memo) <= 3
    with pytest.raises(ValueError):
        binary.EncodeMemo(max_entries=0)


def test_value_caches_are_bounded_and_exact() -> None:
    """IDs and addresses are cached by their string: more of them than the caches hold still
    encode exactly as the Construct definition builds them."""
    count = binary._CACHE_ENTRIES + 10
    peers = [
        PeerInfo(f"{i:032x}", [PeerAddress(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 1)])
        for i in range(count)
    ]
    for start in range(0, count, 1000):
        msg = listed(*peers[start : start + 1000])
        assert binary.encode(msg, max_fragment=MAX_MESSAGE) == [binary.build(msg)]
    assert len(binary._ID_CACHE) <= binary._CACHE_ENTRIES
    assert len(binary._ADDRESS_CACHE) <= binary._CACHE_ENTRIES


# -- binary: DecodeMemo ---------------------------------------------------------------------


@PROPERTY
@given(requests, U64, U64)
def test_decode_memo_gives_the_same_messages(msg: Request, tid1: int, tid2: int) -> None:
    memo = binary.DecodeMemo(max_size=MAX_MESSAGE)
    (first,) = binary.encode(msg, tid1, MAX_MESSAGE)
    (second,) = binary.encode(msg, tid2, MAX_MESSAGE)
    a = binary.decode(first, memo=memo)
    assert a == binary.decode(first)
    b = binary.decode(second, memo=memo)  # a copy of the first with the new transaction ID
    assert b == binary.decode(second)
    assert b.transaction_id == str(tid2)
    if tid1 != tid2:
        assert a.transaction_id == str(tid1)  # the first message is not touched


def mutated(data: bytes, rnd: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rnd.randint(1, 3)):
        out[rnd.randrange(len(out))] = rnd.randrange(256)
    return bytes(out)


@PROPERTY
@given(requests, st.randoms(use_true_random=False))
def test_decode_memo_refuses_what_decode_refuses(msg: Request, rnd: random.Random) -> None:
    memo = binary.DecodeMemo(max_size=MAX_MESSAGE)
    (data,) = binary.encode(msg, 5, MAX_MESSAGE)
    binary.decode(data, memo=memo)
    for _ in range(5):
        bad = mutated(data, rnd)
        expected = outcome(binary.decode, bad)
        assert outcome(binary.decode, bad, memo=memo) == expected
        assert outcome(binary.decode, bad, memo=memo) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decode_memo_fuzz(data: bytes) -> None:
    memo = binary.DecodeMemo()
    expected = outcome(binary.decode, data)
    assert outcome(binary.decode, data, memo=memo) == expected
    assert outcome(binary.decode, data, memo=memo) == expected


def test_decode_memo_keeps_small_requests_only_and_is_bounded() -> None:
    memo = binary.DecodeMemo(max_entries=2, max_size=200)
    finds = [binary.encode(Find(f"p{i}", "1", "s"))[0] for i in range(5)]
    for data in finds * 2:
        assert binary.decode(data, memo=memo) == binary.decode(data)
        assert len(memo) <= 2
    big = binary.encode(Find("p", "1", "s" * 300))[0]
    response = binary.encode(Response("1"))[0]
    memo.clear()
    binary.decode(big, memo=memo)
    binary.decode(response, memo=memo)
    assert len(memo) == 0
    with pytest.raises(ValueError):
        binary.DecodeMemo(max_size=10)


# -- JSON: EncodeMemo -----------------------------------------------------------------------


@PROPERTY
@given(ts.responses())
def test_json_memo_gives_the_same_body(msg: Response) -> None:
    memo = json_codec.EncodeMemo()
    plain = json_codec.encode_response(msg)
    assert json_codec.encode_response(msg, memo=memo) == plain
    assert json_codec.encode_response(msg, memo=memo) == plain
    assert json_codec.decode_response(plain) == msg


def test_json_memo_refuses_what_the_codec_refuses_and_is_bounded() -> None:
    memo = json_codec.EncodeMemo(max_entries=2)
    bad = listed(PeerInfo("p", []))
    with pytest.raises(TrackerError) as plain:
        json_codec.encode_response(bad)
    with pytest.raises(TrackerError) as memoized:
        json_codec.encode_response(bad, memo=memo)
    assert (memoized.value.code, str(memoized.value)) == (plain.value.code, str(plain.value))
    peers = [
        PeerInfo(f"p{i}", [PeerAddress("::1", i), PeerAddress("10.0.0.1", i)]) for i in range(6)
    ]
    msg = listed(*peers, peer_address=PeerAddress("10.0.0.9", 9))
    for _ in range(2):
        assert json_codec.encode_response(msg, memo=memo) == json_codec.encode_response(msg)
        assert len(memo) <= 2


# -- the tracker: FIND's cached rankings ----------------------------------------------------


def random_request(rnd: random.Random, step: int, peers: int, swarms: int) -> Request:
    """A random request of a small population: joins, leaves, availability reports, FINDs."""

    def ranges() -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        at = rnd.randrange(40)
        for _ in range(rnd.randrange(4)):
            start = at + rnd.randrange(15)
            out.append((start, start + rnd.randrange(25)))
            at = out[-1][1] + 2
        return out

    peer = f"peer-{rnd.randrange(peers)}"
    swarm = f"swarm-{rnd.randrange(swarms)}"
    tid = str(step)
    kind = rnd.random()
    if kind < 0.25:
        mode = rnd.choice([PeerMode.SEEDER, PeerMode.LEECH])
        action = rnd.choice([Action.JOIN, Action.JOIN, Action.LEAVE])
        return Connect(
            peer,
            tid,
            [SwarmAction(swarm, action, mode)],
            role=rnd.choice([Role.CACHER, Role.CSC, None]),
            area=rnd.choice(["a", "b", None]),
            availability=[SwarmAvailability(swarm, mode, Role.CACHER, ranges())]
            if rnd.random() < 0.7
            else [],
        )
    if kind < 0.45:
        delta = AvailabilityDelta(swarm, ranges(), ranges() if rnd.random() < 0.5 else [])
        return StatReport(peer, tid, deltas=[delta])
    if kind < 0.5:
        snapshot = [SwarmAvailability(swarm, PeerMode.SEEDER, Role.CACHER, ranges())]
        return StatReport(peer, tid, availability=snapshot)
    wanted = rnd.choice([[(0, 20)], [(10, 30)], [(0, 5), (40, 60)], ranges()])
    return Find(peer, tid, swarm, PeerNum(rnd.randrange(1, 12)), rnd.choice(["a", None]), wanted)


@pytest.mark.parametrize("seed", range(8))
def test_cached_rankings_answer_as_fresh_ones(seed: int) -> None:
    """Two trackers with the same random generator; one forgets every ranking before each
    request. Their answers must agree, and the kept rankings must match the holders."""
    rnd = random.Random(seed)
    config = TrackerConfig(find_scan_limit=rnd.choice([4, 32]), max_find_peers=10)
    kept = Tracker(config, 0.0, rng=random.Random(seed))
    fresh = Tracker(config, 0.0, rng=random.Random(seed))
    finds = 0
    for step in range(600):
        request = random_request(rnd, step, peers=25, swarms=3)
        source = ("127.0.0.1", 5000 + step % 3)
        fresh._rankings.clear()
        answer = kept.handle(request, source, step * 0.01)
        assert answer == fresh.handle(request, source, step * 0.01), (step, request)
        if isinstance(request, Find) and answer.response_type is ResponseType.SUCCESSFUL:
            finds += 1
        if step % 100 == 99:
            kept.check_invariants()
    kept.check_invariants()
    assert finds > 50
    assert kept._rankings  # the cache was used


def test_find_survives_a_member_that_lost_its_chunks() -> None:
    """A cacher whose chunks the tracker no longer knows (a snapshot without ranges) must
    rank as holding none of them: ranking it against another cacher of the requester's area
    once made FIND fail with 04 (its chunk bounds were stale)."""
    tracker = Tracker(TrackerConfig(), 0.0, rng=random.Random(1))
    cacher = Connect(
        "cacher",
        "1",
        [SwarmAction("s", Action.JOIN, PeerMode.SEEDER)],
        role=Role.CACHER,
        area="a",
        availability=[SwarmAvailability("s", ranges=[(0, 9), (20, 29)])],
    )
    other = replace(cacher, peer_id="other")
    viewer = Connect("viewer", "1", [SwarmAction("s", Action.JOIN, PeerMode.LEECH)], area="a")
    for request in (cacher, other, viewer):
        answer = tracker.handle(request, ("10.0.0.1", 1), 0.0)
        assert answer.response_type is ResponseType.SUCCESSFUL
    # The snapshot lists the swarm without ranges: "not enumerated" from now on.
    snapshot = StatReport("cacher", "2", availability=[SwarmAvailability("s")])
    assert tracker.handle(snapshot, ("10.0.0.1", 1), 1.0).error_code is ErrorCode.NO_ERROR
    answer = tracker.handle(Find("viewer", "2", "s", ranges=[(0, 5)]), ("10.0.0.2", 1), 2.0)
    assert answer.error_code is ErrorCode.NO_ERROR
    (result,) = answer.swarm_results
    # Both are cachers of the viewer's area; the one holding the chunks first.
    assert [p.peer_id for p in result.peers or []] == ["other", "cacher"]
    tracker.check_invariants()


# -- the daemon ---------------------------------------------------------------------------

LOCAL = ("127.0.0.1", 0)


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


@contextlib.asynccontextmanager
async def running(**limits: Any) -> AsyncIterator[server.TrackerServer]:
    config = TrackerDaemonConfig(
        udp=LOCAL, tcp=LOCAL, limits=dataclasses.replace(Limits(), **limits)
    )
    daemon = await server.serve(config)
    try:
        yield daemon
    finally:
        daemon.close()
        await asyncio.wait_for(daemon.wait_closed(), 10)
    assert daemon.counters.internal_errors == 0


@contextlib.contextmanager
def gc_thresholds(*values: int) -> Iterator[None]:
    saved = gc.get_threshold()
    gc.set_threshold(*values)
    try:
        yield
    finally:
        gc.set_threshold(*saved)


def test_tune_gc_raises_thresholds_and_never_lowers_them() -> None:
    with gc_thresholds(700, 10, 10):
        server.tune_gc()
        assert gc.get_threshold() == server.GC_THRESHOLDS
    with gc_thresholds(10**6, 5, 100):
        server.tune_gc()
        assert gc.get_threshold() == (10**6, server.GC_THRESHOLDS[1], 100)


def test_serving_tunes_gc_until_the_last_server_closes() -> None:
    async def main() -> None:
        async with running() as first:
            assert gc.get_threshold() == server.GC_THRESHOLDS
            async with running():
                pass
            assert gc.get_threshold() == server.GC_THRESHOLDS  # the first still serves
            first.close()
            assert gc.get_threshold() == (700, 10, 10)

    with gc_thresholds(700, 10, 10):
        run(main())
        assert gc.get_threshold() == (700, 10, 10)


class Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait(data)


async def udp_socket(remote: tuple[str, int]) -> tuple[asyncio.DatagramTransport, Datagrams]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Datagrams, remote_addr=remote)
    return transport, protocol


def find_bytes(peer: str, swarm: str, tid: int) -> bytes:
    return binary.encode(Find(peer, "0", swarm, PeerNum(5), ranges=[(0, 9)]), tid)[0]


def test_udp_whole_requests_are_answered_cached_and_refused_as_before() -> None:
    async def main() -> None:
        async with running() as daemon:
            addr = daemon.addresses["udp"]
            async with UdpTrackerClient(addr, "cacher") as cacher:
                await cacher.connect(
                    [SwarmAction("s", Action.JOIN, PeerMode.SEEDER)],
                    role=Role.CACHER,
                    availability=[SwarmAvailability("s", ranges=[(0, 99)])],
                )
            transport, protocol = await udp_socket(addr)
            try:
                # Unregistered: the tracker's error, over the lean path.
                transport.sendto(find_bytes("viewer", "s", 11))
                refused = await asyncio.wait_for(protocol.queue.get(), 2)
                header = binary.peek_header(refused)
                assert (header.transaction_id, header.method) == (
                    11,
                    Method.MESSAGE_FORBIDDEN,
                )
                # A registered viewer: the same FIND bytes twice give the same answer,
                # the second from the response cache (RFC 7846 §4.3).
                join = Connect("viewer", "12", [SwarmAction("s", Action.JOIN, PeerMode.LEECH)])
                transport.sendto(binary.encode(join)[0])
                await asyncio.wait_for(protocol.queue.get(), 2)
                transport.sendto(find_bytes("viewer", "s", 13))
                answer = await asyncio.wait_for(protocol.queue.get(), 2)
                transport.sendto(find_bytes("viewer", "s", 13))
                assert await asyncio.wait_for(protocol.queue.get(), 2) == answer
                assert daemon.counters.udp_retransmissions_answered == 1
                found = binary.decode(answer)
                assert isinstance(found, Response)
                assert [p.peer_id for p in found.swarm_results[0].peers or []] == ["cacher"]
                # A new transaction ID with the same bytes: decoded from the memo, and
                # answered afresh.
                transport.sendto(find_bytes("viewer", "s", 14))
                again = binary.decode(await asyncio.wait_for(protocol.queue.get(), 2))
                assert isinstance(again, Response) and again.transaction_id == "14"
                assert again.swarm_results == found.swarm_results
                # A malformed body: 01 with the transaction ID; version 2: 02.
                bad = bytearray(find_bytes("viewer", "s", 15))
                bad[24:26] = b"\x00\x09"  # an unknown required TLV type
                transport.sendto(bytes(bad))
                header = binary.peek_header(await asyncio.wait_for(protocol.queue.get(), 2))
                assert (header.transaction_id, header.method) == (15, Method.INVALID_SYNTAX)
                bad = bytearray(find_bytes("viewer", "s", 16))
                bad[4] = 2
                transport.sendto(bytes(bad))
                header = binary.peek_header(await asyncio.wait_for(protocol.queue.get(), 2))
                assert (header.transaction_id, header.method) == (
                    16,
                    Method.VERSION_NOT_SUPPORTED,
                )
                # A tracker-initiated message sent to the tracker: ignored.
                ignored = daemon.counters.udp_ignored
                transport.sendto(binary.encode(PushHintMessage("17", []))[0])
                transport.sendto(binary.encode(Response("18"))[0])
                transport.sendto(b"\xd0\x50\x53\x74 not a message")
                await asyncio.sleep(0.1)
                assert protocol.queue.empty()
                assert daemon.counters.udp_ignored == ignored + 3
                assert daemon.counters.undecodable == 2
            finally:
                transport.close()

    run(main())


def frames(data: bytes) -> list[bytes]:
    out = []
    while data:
        length = binary.peek_header(data).length
        out.append(data[:length])
        data = data[length:]
    return out


def test_tcp_answers_pipelined_frames_in_order() -> None:
    async def main() -> None:
        async with running() as daemon:
            addr = daemon.addresses["tcp"]
            async with TcpTrackerClient(addr, "cacher") as cacher:
                await cacher.connect([SwarmAction("s", Action.JOIN, PeerMode.SEEDER)])
            reader, writer = await asyncio.open_connection(*addr)
            join = Connect("v", "1", [SwarmAction("s", Action.JOIN, PeerMode.LEECH)])
            stream = [binary.encode(join)[0]]
            stream += [find_bytes("v", "s", tid) for tid in range(2, 40)]
            stream.append(binary.encode(StatReport("v", "40", [StreamStats("s")]))[0])
            # Everything at once, split at awkward places.
            data = b"".join(stream)
            for cut in range(0, len(data), 777):
                writer.write(data[cut : cut + 777])
                await writer.drain()
            answers: list[Message] = []
            while len(answers) < len(stream):
                head = await asyncio.wait_for(reader.readexactly(HEADER_SIZE), 2)
                body = await reader.readexactly(binary.peek_header(head).length - HEADER_SIZE)
                answers.append(binary.decode(head + body))
            assert [a.transaction_id for a in answers] == [str(t) for t in range(1, 41)]
            assert all(isinstance(a, Response) and a.error_code == 0 for a in answers)
            assert daemon.counters.tcp_requests == 41  # with the cacher's CONNECT
            writer.close()

    run(main())


def test_tcp_peer_that_does_not_read_is_cut_off() -> None:
    """It sends FIND after FIND and never reads: the daemon stops reading it once its answers
    back up, and drops the connection when they have not drained for the idle timeout. Other
    peers are served meanwhile."""

    async def main() -> None:
        async with running(tcp_idle_timeout=0.5) as daemon:
            addr = daemon.addresses["tcp"]
            for i in range(30):  # answers of 30 peers: ~2 kB each
                async with TcpTrackerClient(addr, f"cacher-{i}") as cacher:
                    await cacher.connect([SwarmAction("s0", Action.JOIN, PeerMode.SEEDER)])
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_connect(sock, addr)
            join = Connect("v", "1", [SwarmAction("s0", Action.JOIN, PeerMode.LEECH)])
            await loop.sock_sendall(sock, binary.encode(join)[0])
            find = Find("v", "0", "s0", PeerNum(30))
            flood = b"".join(binary.encode(find, tid)[0] for tid in range(2, 20_002))
            sent = 0
            deadline = loop.time() + 10
            with contextlib.suppress(OSError):  # the daemon resets the connection
                while sent < len(flood) and loop.time() < deadline:
                    try:
                        sent += sock.send(flood[sent : sent + 65536])
                    except BlockingIOError:
                        await asyncio.sleep(0.02)
            # Meanwhile another peer is served.
            async with TcpTrackerClient(addr, "other") as other:
                await other.connect([SwarmAction("s1", Action.JOIN, PeerMode.SEEDER)])
            for _ in range(50):
                if not any(c.peer[1] == sock.getsockname()[1] for c in daemon._tcp_connections):
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the connection that does not read is still open")
            assert daemon.counters.tcp_requests < 20_000  # it stopped reading the flood
            sock.close()

    run(main())
