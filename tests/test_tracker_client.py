"""The tracker client library (ppsp.tracker.client) against fake trackers on 127.0.0.1 that
misbehave on purpose: lost datagrams, fragmented and reordered answers, errors, unsolicited
pushes, broken connections, foreign responses. The real daemon is in test_tracker_server.py."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest
from aiohttp import web

from ppsp.tracker import binary, json_codec
from ppsp.tracker.client import (
    JsonHttpTrackerClient,
    PushMessage,
    TcpTrackerClient,
    TrackerConnectionError,
    TrackerProtocolError,
    TrackerRequestError,
    TrackerTimeout,
    UdpTrackerClient,
    new_transaction_id,
    open_client,
    parse_tracker_url,
)
from ppsp.tracker.messages import (
    Action,
    Connect,
    ErrorCode,
    Find,
    GlobalInfoMessage,
    PeerMode,
    PushHint,
    PushHintMessage,
    Request,
    Response,
    StatQuery,
    StatReport,
    SwarmAction,
    SwarmPopularity,
    SwarmResult,
)

T = TypeVar("T")
Address = tuple[str, int]
SWARM = "ab" * 32
HINT = PushHint(SWARM, 0, 63, priority=2)


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def ok(request: Request, **fields: Any) -> Response:
    return Response(request.transaction_id, **fields)


# -- URLs and transaction IDs ----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "scheme", "addr"),
    [
        ("http://tracker.example/announce", "http", ("tracker.example", 80)),
        ("https://tracker.example:8443/", "https", ("tracker.example", 8443)),
        ("HTTPS://tracker.example", "https", ("tracker.example", 443)),
        ("ppsp-udp://127.0.0.1:7846", "ppsp-udp", ("127.0.0.1", 7846)),
        ("ppsp-tcp://[::1]:7847", "ppsp-tcp", ("::1", 7847)),
        ("ppsp-udp://tracker.example:7846/", "ppsp-udp", ("tracker.example", 7846)),
    ],
)
def test_tracker_url_forms(url: str, scheme: str, addr: Address) -> None:
    assert parse_tracker_url(url) == (scheme, addr)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://tracker.example/", "unsupported"),
        ("tracker.example:7846", "unsupported"),
        ("ppsp-udp://tracker.example", "needs a port"),
        ("ppsp-tcp://tracker.example:7847/path", "no path"),
        ("ppsp-udp://:7846", "no host"),
        ("ppsp-udp://tracker.example:99999", "out of range"),
    ],
)
def test_unusable_tracker_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_client(url, "p")


def test_open_client_picks_the_transport_by_scheme() -> None:
    assert isinstance(open_client("http://h/x", "p"), JsonHttpTrackerClient)
    assert isinstance(open_client("https://h/x", "p"), JsonHttpTrackerClient)
    udp = open_client("ppsp-udp://127.0.0.1:9", "p", timeout=3)
    assert isinstance(udp, UdpTrackerClient)
    assert (udp.addr, udp.timeout, udp.peer_id) == (("127.0.0.1", 9), 3, "p")
    assert isinstance(open_client("ppsp-tcp://127.0.0.1:9", "p"), TcpTrackerClient)


def test_transaction_ids_are_random_64_bit_decimals() -> None:
    ids = {new_transaction_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.isdigit() and int(i) < 2**64 and str(int(i)) == i for i in ids)
    assert max(int(i) for i in ids) > 2**60  # drawn from the whole range


# -- UDP ---------------------------------------------------------------------------------


class FakeUdpTracker(asyncio.DatagramProtocol):
    """Records every datagram; ``answer(request, source)`` decides what to send back."""

    def __init__(self, answer: Callable[[FakeUdpTracker, bytes, Address], None]) -> None:
        self.answer = answer
        self.received: list[tuple[float, bytes]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.reassembler = binary.Reassembler()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append((asyncio.get_running_loop().time(), data))
        self.answer(self, data, (addr[0], addr[1]))

    def send(self, data: bytes, addr: Address) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    def request(self, data: bytes, source: Address) -> Request | None:
        message = self.reassembler.feed(data, source, 0.0)
        assert message is None or isinstance(message, Connect | Find | StatReport | StatQuery)
        return message


@contextlib.asynccontextmanager
async def fake_udp(
    answer: Callable[[FakeUdpTracker, bytes, Address], None],
) -> AsyncIterator[FakeUdpTracker]:
    loop = asyncio.get_running_loop()
    transport, fake = await loop.create_datagram_endpoint(
        lambda: FakeUdpTracker(answer), local_addr=("127.0.0.1", 0)
    )
    try:
        yield fake
    finally:
        transport.close()


def address_of(fake: FakeUdpTracker) -> Address:
    assert fake.transport is not None
    host, port = fake.transport.get_extra_info("sockname")[:2]
    return host, port


def test_udp_retransmits_with_backoff_and_the_same_transaction_id() -> None:
    def answer_third_copy(fake: FakeUdpTracker, data: bytes, source: Address) -> None:
        request = fake.request(data, source)
        if request is not None and len(fake.received) == 3:
            fake.send(binary.encode(ok(request))[0], source)

    async def main() -> None:
        async with fake_udp(answer_third_copy) as fake:
            client = UdpTrackerClient(address_of(fake), "p", initial_rto=0.05, max_rto=1.0)
            async with client:
                response = await client.find(SWARM)
            times = [t for t, _ in fake.received]
            ids = {binary.peek_header(d).transaction_id for _, d in fake.received}
            assert len(times) == 3
            assert ids == {int(response.transaction_id)}
            first, second = times[1] - times[0], times[2] - times[1]
            assert 0.04 <= first < 0.09
            assert 0.09 <= second < 0.2  # doubled

    run(main())


def test_udp_times_out_after_its_deadline() -> None:
    async def main() -> None:
        async with fake_udp(lambda fake, data, source: None) as fake:
            client = UdpTrackerClient(
                address_of(fake), "p", timeout=0.5, initial_rto=0.05, max_rto=0.1
            )
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(TrackerTimeout):
                await client.find(SWARM)
            assert 0.45 <= loop.time() - started < 1.0
            # 0.05, then every 0.1 s (the ceiling) until 0.5 s: about six copies.
            assert 5 <= len(fake.received) <= 8
            await client.close()

    run(main())


def test_udp_reassembles_a_fragmented_reordered_and_duplicated_response() -> None:
    results = [SwarmResult(f"{i:064x}") for i in range(200)]

    def answer(fake: FakeUdpTracker, data: bytes, source: Address) -> None:
        request = fake.request(data, source)
        if request is None:
            return
        fragments = binary.encode(ok(request, swarm_results=results), max_fragment=300)
        assert len(fragments) > 10
        shuffled = fragments + fragments[:3]
        random.Random(7).shuffle(shuffled)
        for fragment in shuffled:
            fake.send(fragment, source)

    async def main() -> None:
        async with fake_udp(answer) as fake:
            async with UdpTrackerClient(address_of(fake), "p") as client:
                response = await client.connect(
                    [SwarmAction(r.swarm_id, Action.JOIN, PeerMode.SEEDER) for r in results]
                )
            assert response.swarm_results == results

    run(main())


def test_udp_sends_a_big_request_as_fragments_under_the_mtu() -> None:
    def answer(fake: FakeUdpTracker, data: bytes, source: Address) -> None:
        request = fake.request(data, source)
        if request is not None:
            fake.send(binary.encode(ok(request))[0], source)

    async def main() -> None:
        async with fake_udp(answer) as fake:
            async with UdpTrackerClient(address_of(fake), "p", max_fragment=500) as client:
                actions = [
                    SwarmAction(f"{i:064x}", Action.JOIN, PeerMode.SEEDER) for i in range(300)
                ]
                await client.connect(actions)
            sizes = [len(d) for _, d in fake.received]
            assert len(sizes) > 10
            assert max(sizes) <= 500
            assert client.datagrams_sent == len(sizes)

    run(main())


@pytest.mark.parametrize("code", [ErrorCode.FORBIDDEN_ACTION, ErrorCode.AUTHENTICATION_REQUIRED])
def test_failed_response_raises_with_the_error_code(code: ErrorCode) -> None:
    def answer(fake: FakeUdpTracker, data: bytes, source: Address) -> None:
        request = fake.request(data, source)
        if request is not None:
            fake.send(binary.error_response(request.transaction_id, code), source)

    async def main() -> None:
        async with fake_udp(answer) as fake, UdpTrackerClient(address_of(fake), "p") as client:
            with pytest.raises(TrackerRequestError) as failed:
                await client.stat_report()
            assert failed.value.code == code
            assert failed.value.response is not None

    run(main())


def test_an_error_without_a_transaction_id_fails_the_only_request() -> None:
    def answer(fake: FakeUdpTracker, data: bytes, source: Address) -> None:
        fake.send(binary.error_response(0, ErrorCode.BAD_REQUEST), source)

    async def main() -> None:
        async with fake_udp(answer) as fake, UdpTrackerClient(address_of(fake), "p") as client:
            with pytest.raises(TrackerRequestError) as failed:
                await client.find(SWARM)
            assert failed.value.code == ErrorCode.BAD_REQUEST

    run(main())


def test_udp_ignores_garbage_and_foreign_responses_and_takes_unsolicited_pushes() -> None:
    def answer(fake: FakeUdpTracker, data: bytes, source: Address) -> None:
        request = fake.request(data, source)
        if request is None:
            return
        fake.send(b"garbage", source)
        fake.send(binary.encode(Response("12345"))[0], source)  # another transaction
        fake.send(binary.encode(PushHintMessage("1", [HINT]))[0], source)
        fake.send(binary.encode(ok(request))[0], source)

    async def main() -> None:
        pushed: list[PushMessage] = []
        async with (
            fake_udp(answer) as fake,
            UdpTrackerClient(address_of(fake), "p", on_push=pushed.append) as client,
        ):
            await client.find(SWARM)
            assert pushed == [PushHintMessage("1", [HINT])]
            # The socket stays open between requests: the tracker can speak first.
            assert client.local_address is not None
            info = GlobalInfoMessage("2", [SwarmPopularity(SWARM, viewers=9)])
            fake.send(binary.encode(info)[0], client.local_address)
            for _ in range(100):
                if len(pushed) == 2:
                    break
                await asyncio.sleep(0.01)
            assert pushed[1] == info

    run(main())


def test_a_failing_on_push_callback_does_not_break_the_client() -> None:
    def answer(fake: FakeUdpTracker, data: bytes, source: Address) -> None:
        request = fake.request(data, source)
        if request is not None:
            fake.send(binary.encode(PushHintMessage("1", [HINT]))[0], source)
            fake.send(binary.encode(ok(request, push_hints=[HINT]))[0], source)

    def explode(message: PushMessage) -> None:
        raise RuntimeError("application bug")

    async def main() -> None:
        async with (
            fake_udp(answer) as fake,
            UdpTrackerClient(address_of(fake), "p", on_push=explode) as client,
        ):
            response = await client.find(SWARM)
            assert response.push_hints == [HINT]

    run(main())


# -- TCP ---------------------------------------------------------------------------------


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def fake_tcp(handler: Handler) -> AsyncIterator[tuple[Address, list[int]]]:
    """A TCP tracker running ``handler`` per connection; yields its address and a list that
    counts connections."""
    connections: list[int] = []

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    try:
        yield (host, port), connections
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> Request:
    head = await reader.readexactly(24)
    body = await reader.readexactly(binary.peek_header(head).length - 24)
    message = binary.decode(head + body)
    assert isinstance(message, Connect | Find | StatReport | StatQuery)
    return message


def test_tcp_push_first_then_answers_in_any_order() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(binary.encode(PushHintMessage("5", [HINT]))[0])  # the tracker speaks first
        first = await read_request(reader)
        second = await read_request(reader)
        # Answered out of order: the client matches by transaction ID.
        writer.write(binary.encode(ok(second, swarm_results=[SwarmResult("b" * 64)]))[0])
        writer.write(binary.encode(ok(first, swarm_results=[SwarmResult("a" * 64)]))[0])
        await reader.read()

    async def main() -> None:
        pushed: list[PushMessage] = []
        async with fake_tcp(handler) as (addr, _):
            async with TcpTrackerClient(addr, "p", on_push=pushed.append) as client:
                one, two = await asyncio.gather(client.find("a" * 64), client.find("b" * 64))
            assert one.swarm_results[0].swarm_id == "a" * 64
            assert two.swarm_results[0].swarm_id == "b" * 64
            assert pushed == [PushHintMessage("5", [HINT])]

    run(main())


def test_tcp_broken_connection_fails_the_request_and_the_next_one_reconnects() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        if isinstance(request, Find):
            return  # hang up without answering
        writer.write(binary.encode(ok(request))[0])
        await writer.drain()

    async def main() -> None:
        async with fake_tcp(handler) as (addr, connections):
            async with TcpTrackerClient(addr, "p") as client:
                with pytest.raises(TrackerConnectionError):
                    await client.find(SWARM)
                response = await client.stat_report()
                assert response.error_code == ErrorCode.NO_ERROR
            assert len(connections) == 2

    run(main())


def test_tcp_bad_frame_from_the_tracker_is_a_protocol_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        await reader.read()

    async def main() -> None:
        async with fake_tcp(handler) as (addr, _), TcpTrackerClient(addr, "p") as client:
            with pytest.raises(TrackerProtocolError):
                await client.find(SWARM)

    run(main())


def test_tcp_silence_is_a_timeout_and_refusal_a_connection_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async def main() -> None:
        async with fake_tcp(handler) as (addr, _):
            async with TcpTrackerClient(addr, "p", timeout=0.2) as client:
                with pytest.raises(TrackerTimeout):
                    await client.find(SWARM)
            free = addr
        with pytest.raises(TrackerConnectionError):
            await TcpTrackerClient(free, "p").find(SWARM)

    run(main())


# -- HTTP --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def fake_http(
    respond: Callable[[web.Request, bytes], web.Response],
) -> AsyncIterator[str]:
    async def handle(request: web.Request) -> web.Response:
        return respond(request, await request.read())

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def ppsp(response: Response, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=json_codec.encode_response(response),
        headers={"Content-Type": json_codec.CONTENT_TYPE},
    )


def test_http_posts_the_request_with_the_media_type_to_the_url_path() -> None:
    seen: list[tuple[str, str, str, Request]] = []

    def respond(request: web.Request, body: bytes) -> web.Response:
        decoded = json_codec.decode_request(body)
        seen.append((request.method, request.path, request.headers["Content-Type"], decoded))
        assert json_codec.content_type_matches(request.headers["Accept"])
        return ppsp(ok(decoded))

    async def main() -> None:
        async with (
            fake_http(respond) as url,
            JsonHttpTrackerClient(url + "/video_1", "peer-7") as client,
        ):
            await client.connect([SwarmAction(SWARM, Action.JOIN, PeerMode.LEECH)])
            await client.find(SWARM)
        (method, path, ctype, connect), (_, _, _, find) = seen
        assert (method, path, ctype) == ("POST", "/video_1", json_codec.CONTENT_TYPE)
        assert isinstance(connect, Connect) and connect.peer_id == "peer-7"
        assert isinstance(find, Find) and find.swarm_id == SWARM
        assert connect.transaction_id != find.transaction_id

    run(main())


def test_http_piggy_backed_hints_reach_on_push_and_stay_in_the_response() -> None:
    def respond(request: web.Request, body: bytes) -> web.Response:
        decoded = json_codec.decode_request(body)
        return ppsp(ok(decoded, push_hints=[HINT]))

    async def main() -> None:
        pushed: list[PushMessage] = []
        async with (
            fake_http(respond) as url,
            JsonHttpTrackerClient(url, "p", on_push=pushed.append) as client,
        ):
            response = await client.stat_report()
        assert response.push_hints == [HINT]
        assert pushed == [PushHintMessage(response.transaction_id, [HINT])]

    run(main())


def test_http_failures() -> None:
    mode: list[str] = []

    def respond(request: web.Request, body: bytes) -> web.Response:
        decoded = json_codec.decode_request(body)
        if mode[-1] == "error":
            # RFC 7846 examples: HTTP 200 with the error in the body.
            return ppsp(Response.error(decoded.transaction_id, ErrorCode.FORBIDDEN_ACTION))
        if mode[-1] == "foreign":
            return ppsp(Response("999"))
        if mode[-1] == "not found":
            return web.Response(status=404, text="no tracker here")
        return web.Response(status=200, text="<html>hello</html>")

    async def main() -> None:
        async with fake_http(respond) as url, JsonHttpTrackerClient(url, "p") as client:
            mode.append("error")
            with pytest.raises(TrackerRequestError) as failed:
                await client.find(SWARM)
            assert failed.value.code == ErrorCode.FORBIDDEN_ACTION
            mode.append("foreign")
            with pytest.raises(TrackerProtocolError, match="999"):
                await client.find(SWARM)
            mode.append("not found")
            with pytest.raises(TrackerProtocolError, match="404"):
                await client.find(SWARM)
            mode.append("html")
            with pytest.raises(TrackerProtocolError, match="undecodable"):
                await client.find(SWARM)
            free = url
        with pytest.raises(TrackerConnectionError):
            await JsonHttpTrackerClient(free, "p").find(SWARM)

    run(main())


def test_http_silence_is_a_timeout() -> None:
    async def main() -> None:
        async def slow(request: web.Request) -> web.Response:
            await asyncio.sleep(5)
            return web.Response()

        app = web.Application()
        app.router.add_post("/", slow)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
        try:
            async with JsonHttpTrackerClient(url, "p", timeout=0.2) as client:
                with pytest.raises(TrackerTimeout):
                    await client.find(SWARM)
        finally:
            await runner.cleanup()

    run(main())
