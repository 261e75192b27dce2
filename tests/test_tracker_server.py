"""The tracker daemon (ppsp.tracker.server, config, the ``p2pcdn tracker`` command) over real
sockets on 127.0.0.1: every transport at once, hostile input on each, the UDP response cache,
batch reports of 10,000 swarms, tracker-initiated push hints, timers, and the configuration."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import ipaddress
import os
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lab.cli as cli
from ppsp.tracker import binary, json_codec
from ppsp.tracker.client import (
    JsonHttpTrackerClient,
    PushMessage,
    TcpTrackerClient,
    TrackerConnectionError,
    TrackerRequestError,
    UdpTrackerClient,
    new_transaction_id,
    open_client,
)
from ppsp.tracker.config import (
    ConfigError,
    Limits,
    TrackerDaemonConfig,
    config_from_dict,
    load_config,
)
from ppsp.tracker.messages import (
    Action,
    Connect,
    ErrorCode,
    Find,
    PeerAddress,
    PeerMode,
    PushHintMessage,
    Response,
    ResponseType,
    Role,
    SwarmAction,
    SwarmAvailability,
)
from ppsp.tracker.server import TrackerServer, _UdpRoute, serve
from ppsp.tracker.state import TrackerConfig

REPO = Path(__file__).resolve().parent.parent
LOCAL = ("127.0.0.1", 0)
T = TypeVar("T")
Address = tuple[str, int]


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def swarm(n: int) -> str:
    """A swarm ID as the system makes them: the hex of a 32-byte root hash."""
    return f"{n:064x}"


def all_transports(**limits: Any) -> TrackerDaemonConfig:
    return TrackerDaemonConfig(
        http=LOCAL, udp=LOCAL, tcp=LOCAL, limits=dataclasses.replace(Limits(), **limits)
    )


@contextlib.asynccontextmanager
async def running(config: TrackerDaemonConfig | None = None) -> AsyncIterator[TrackerServer]:
    server = await serve(config or all_transports())
    try:
        yield server
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 10)
    assert server.counters.internal_errors == 0


def seeder_join(*ids: str) -> list[SwarmAction]:
    return [SwarmAction(sid, Action.JOIN, PeerMode.SEEDER) for sid in ids]


class RawUdp(asyncio.DatagramProtocol):
    """A bare UDP socket for sending hand-made datagrams and reading what comes back."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls, remote: Address) -> RawUdp:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_datagram_endpoint(cls, remote_addr=remote)
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait(data)

    def send(self, *datagrams: bytes) -> None:
        assert self.transport is not None
        for datagram in datagrams:
            self.transport.sendto(datagram)

    async def recv(self, timeout: float = 2.0) -> bytes:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def recv_message(self) -> list[bytes]:
        """The datagrams of one (possibly fragmented) message."""
        datagrams = [await self.recv()]
        while not binary.peek_header(datagrams[-1]).last:
            datagrams.append(await self.recv())
        return datagrams

    async def nothing(self, wait: float = 0.15) -> bool:
        """True when nothing arrives within ``wait`` seconds."""
        try:
            await asyncio.wait_for(self.queue.get(), wait)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def connect_request(peer_id: str, *ids: str, tid: str | None = None) -> Connect:
    return Connect(peer_id, tid or new_transaction_id(), seeder_join(*ids))


# -- listeners --------------------------------------------------------------------------


def test_every_transport_binds_a_real_port_and_reports_its_url() -> None:
    async def main() -> None:
        async with running() as server:
            assert set(server.addresses) == {"http", "udp", "tcp"}
            for host, port in server.addresses.values():
                assert host == "127.0.0.1"
                assert 0 < port < 65536
            http, udp, tcp = server.urls
            assert http == f"http://127.0.0.1:{server.addresses['http'][1]}"
            assert udp == f"ppsp-udp://127.0.0.1:{server.addresses['udp'][1]}"
            assert tcp == f"ppsp-tcp://127.0.0.1:{server.addresses['tcp'][1]}"

    run(main())


def test_a_port_in_use_fails_the_start_and_releases_the_rest() -> None:
    async def main() -> None:
        async with running(TrackerDaemonConfig(udp=LOCAL)) as first:
            udp_port = first.addresses["udp"][1]
            with pytest.raises(OSError, match=f"ppsp-udp://127.0.0.1:{udp_port}"):
                await serve(TrackerDaemonConfig(http=LOCAL, udp=("127.0.0.1", udp_port)))
        # The HTTP socket the failed daemon bound first is closed: no task or socket is left
        # behind (the loop would warn about it at exit).

    run(main())


@pytest.mark.parametrize("transport", ["http", "udp", "tcp"])
def test_connect_find_stat_report_stat_query_through_each_client(transport: str) -> None:
    async def main() -> None:
        async with running() as server:
            url = server.urls[["http", "udp", "tcp"].index(transport)]
            seeder = open_client(url, "seeder-1")
            viewer = open_client(url, "viewer-1")
            async with seeder, viewer:
                sid = swarm(1)
                joined = await seeder.connect(
                    seeder_join(sid), peer_addresses=[PeerAddress("127.0.0.1", 7001)]
                )
                assert [r.swarm_id for r in joined.swarm_results] == [sid]
                assert joined.peer_address is not None  # the reflexive address (§4.1.1)
                assert joined.peer_address.ip == "127.0.0.1"

                watching = await viewer.connect([SwarmAction(sid, Action.JOIN, PeerMode.LEECH)])
                peers = watching.swarm_results[0].peers
                assert peers is not None
                assert [(p.peer_id, p.addresses[0].port) for p in peers] == [("seeder-1", 7001)]

                found = await viewer.find(sid)
                found_peers = found.swarm_results[0].peers
                assert found_peers is not None
                assert [p.peer_id for p in found_peers] == ["seeder-1"]

                report = await viewer.stat_report()
                assert report.response_type == ResponseType.SUCCESSFUL

                query = await viewer.stat_query([sid])
                assert [(p.swarm_id, p.viewers) for p in query.global_info] == [(sid, 1)]

                with pytest.raises(TrackerRequestError) as failed:
                    await viewer.find(swarm(99))  # a swarm nobody is in: §2.3.2 (C)
                assert failed.value.code == ErrorCode.FORBIDDEN_ACTION
            counted = server.counters
            assert getattr(counted, f"{transport}_requests") == 6
            assert server.tracker.peers_of(sid) == {
                "seeder-1": PeerMode.SEEDER,
                "viewer-1": PeerMode.LEECH,
            }

    run(main())


def test_every_transport_under_uvloop() -> None:
    """The CLI runs the daemon on uvloop when it is installed (DESIGN §3)."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> list[int]:
        async with running() as server:
            assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
            counts = []
            for i, url in enumerate(server.urls):
                async with open_client(url, f"p{i}") as client:
                    response = await client.connect(seeder_join(*(swarm(n) for n in range(300))))
                counts.append(len(response.swarm_results))
            return counts

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main()) == [300, 300, 300]


# -- HTTP(S) -----------------------------------------------------------------------------


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p2pcdn test tracker")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tracker.crt", directory / "tracker.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_https_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    config = TrackerDaemonConfig(https=LOCAL, cert_file=cert, key_file=key)

    async def main() -> None:
        async with running(config) as server:
            (url,) = server.urls
            assert url.startswith("https://127.0.0.1:")
            trusting = ssl.create_default_context(cafile=str(cert))
            async with JsonHttpTrackerClient(url + "/video_1", "s", ssl=trusting) as client:
                response = await client.connect(seeder_join(swarm(5)))
                assert response.swarm_results[0].result == ResponseType.SUCCESSFUL
            # Without the certificate in its trust store the client refuses the tracker.
            async with JsonHttpTrackerClient(url, "s2") as untrusting:
                with pytest.raises(TrackerConnectionError):
                    await untrusting.connect(seeder_join(swarm(6)))
            assert server.tracker.peers_of(swarm(6)) == {}

    run(main())


def test_an_unusable_certificate_is_a_config_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate\n")
    config = TrackerDaemonConfig(https=LOCAL, cert_file=bogus, key_file=bogus)
    with pytest.raises(ConfigError, match="certificate"):
        run(serve(config))


async def post(
    url: str, body: bytes | Any, headers: dict[str, str] | None = None, method: str = "POST"
) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, data=body, headers=headers or {}) as reply,
    ):
        return reply.status, dict(reply.headers), await reply.read()


def json_body(request: Connect | Find) -> bytes:
    return json_codec.encode_request(request)


def test_malformed_json_gets_http_200_with_rfc_error_01() -> None:
    async def main() -> None:
        async with running() as server:
            http = server.urls[0]
            status, headers, body = await post(http, b"{not json", {"Content-Type": "x"})
            assert status == 200
            assert headers["Content-Type"] == json_codec.CONTENT_TYPE
            response = json_codec.decode_response(body)
            assert (response.response_type, response.error_code) == (
                ResponseType.FAILED,
                ErrorCode.BAD_REQUEST,
            )
            # JSON that is not a valid request: the error carries its transaction ID (§4.1.1).
            partial = b'{"PPSPTrackerProtocol":{"version":1,"transaction_id":"42"}}'
            _, _, body = await post(http, partial)
            response = json_codec.decode_response(body)
            assert (response.transaction_id, response.error_code) == ("42", ErrorCode.BAD_REQUEST)
            # Version 2: 02 Unsupported Version Number (§4.3).
            v2 = json_body(connect_request("p", swarm(1), tid="7")).replace(
                b'"version":1', b'"version":2'
            )
            _, _, body = await post(http, v2)
            response = json_codec.decode_response(body)
            assert (response.transaction_id, response.error_code) == (
                "7",
                ErrorCode.UNSUPPORTED_VERSION,
            )
            assert server.counters.undecodable == 3
            assert server.tracker.stats()["requests"] == 0

    run(main())


def test_only_post_is_allowed() -> None:
    async def main() -> None:
        async with running() as server:
            for method in ("GET", "PUT", "DELETE"):
                status, headers, _ = await post(server.urls[0] + "/x", b"", method=method)
                assert status == 405
                assert headers["Allow"] == "POST"

    run(main())


def test_any_path_and_any_content_type_are_accepted() -> None:
    async def main() -> None:
        async with running() as server:
            http = server.urls[0]
            for i, (path, headers) in enumerate(
                [
                    ("/video_1", {"Content-Type": json_codec.CONTENT_TYPE}),
                    ("/a/b/c?x=1", {"Content-Type": "text/plain"}),
                    ("/", {}),
                ]
            ):
                status, _, body = await post(
                    http + path, json_body(connect_request(f"p{i}", swarm(i))), headers
                )
                assert status == 200
                assert json_codec.decode_response(body).response_type == ResponseType.SUCCESSFUL
            assert len(server.tracker.peers_of(swarm(0))) == 1
            assert len(server.tracker.peers_of(swarm(2))) == 1

    run(main())


def test_oversize_body_is_refused_before_it_is_read() -> None:
    async def main() -> None:
        async with running(all_transports(max_http_body=2000)) as server:
            http = server.urls[0]
            big = json_body(connect_request("p", *(swarm(i) for i in range(40))))
            assert len(big) > 2000
            status, _, _ = await post(http, big)
            assert status == 413

            # Without a Content-Length (chunked), the limit holds while reading.
            async def chunks() -> AsyncIterator[bytes]:
                for start in range(0, len(big), 500):
                    yield big[start : start + 500]

            status, _, _ = await post(http, chunks())
            assert status == 413
            assert server.tracker.stats()["requests"] == 0
            # Smaller requests still pass.
            status, _, body = await post(http, json_body(connect_request("p", swarm(1))))
            assert json_codec.decode_response(body).response_type == ResponseType.SUCCESSFUL

    run(main())


async def http_exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes, target: bytes
) -> tuple[bytes, bytes]:
    writer.write(
        b"POST %s HTTP/1.1\r\nHost: tracker.example.com\r\n"
        b"Content-Type: application/ppsp-tracker+json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (target, len(body), body)
    )
    head = await reader.readuntil(b"\r\n\r\n")
    match = re.search(rb"(?i)content-length: *(\d+)", head)
    assert match is not None
    return head, await reader.readexactly(int(match.group(1)))


def test_http_keep_alive_serves_several_requests_on_one_connection() -> None:
    async def main() -> None:
        async with running() as server:
            reader, writer = await asyncio.open_connection(*server.addresses["http"])
            # RFC 7846 §4.1's example request line has the absolute form of the target.
            targets = [b"/t", b"https://tracker.example.com/video_1", b"/"]
            for i, target in enumerate(targets):
                head, body = await http_exchange(
                    reader, writer, json_body(connect_request(f"k{i}", swarm(i))), target
                )
                assert head.startswith(b"HTTP/1.1 200")
                assert json_codec.decode_response(body).response_type == ResponseType.SUCCESSFUL
            writer.close()
            assert server.counters.http_requests == 3

    run(main())


# -- UDP ---------------------------------------------------------------------------------


def test_udp_garbage_and_truncated_fragments_never_stop_the_daemon() -> None:
    async def main() -> None:
        async with running() as server:
            raw = await RawUdp.open(server.addresses["udp"])
            # Not PPSP-TP at all, or too short for a header: dropped without an answer.
            raw.send(b"", b"hello", os.urandom(100), b"\xd0\x50\x53\x74" + b"\0" * 10)
            assert await raw.nothing()
            # A request header with a broken body: the binary error response, same ID.
            good = binary.encode(connect_request("p", swarm(1), tid="77"))[0]
            broken = good[:24] + b"\x00\x01\xff\xff" + good[28:]
            raw.send(broken)
            answer = binary.peek_header(await raw.recv())
            assert answer.method == binary.Method.INVALID_SYNTAX
            assert answer.transaction_id == 77
            # Length field disagreeing with the datagram: an error too.
            raw.send(good[:-1])
            assert binary.peek_header(await raw.recv()).is_response
            # The first fragment of a fragmented request alone: held, unanswered, expired.
            fragments = binary.encode(
                connect_request("q", *(swarm(i) for i in range(50)), tid="5"), max_fragment=300
            )
            assert len(fragments) > 2
            raw.send(fragments[0])
            assert await raw.nothing()
            # Responses and tracker pushes sent to the tracker are not answered.
            raw.send(binary.encode(Response("9"))[0])
            assert await raw.nothing()
            raw.close()
            async with UdpTrackerClient(server.addresses["udp"], "p") as client:
                response = await client.connect(seeder_join(swarm(1)))
                assert response.response_type == ResponseType.SUCCESSFUL
            assert server.counters.undecodable == 2
            assert server.tracker.stats()["requests"] == 1

    run(main())


def test_retransmitted_udp_request_gets_the_identical_cached_response() -> None:
    async def main() -> None:
        async with running() as server:
            raw = await RawUdp.open(server.addresses["udp"])
            request = binary.encode(connect_request("p", swarm(1), tid="1234"))
            raw.send(*request)
            first = await raw.recv()
            raw.send(*request)
            again = await raw.recv()
            assert again == first
            assert binary.decode(first).transaction_id == "1234"
            stats = server.tracker.stats()
            assert (stats["requests"], stats["replays"]) == (1, 0)  # the tracker ran it once
            assert server.counters.udp_retransmissions_answered == 1

            # A fragmented request, retransmitted whole: one response, not one per fragment.
            big = binary.encode(
                connect_request("q", *(swarm(i) for i in range(60)), tid="99"), max_fragment=400
            )
            assert len(big) > 3
            raw.send(*big)
            first_fragments = await raw.recv_message()
            raw.send(*big)
            assert await raw.recv_message() == first_fragments
            assert await raw.nothing()
            assert server.tracker.stats()["requests"] == 2
            raw.close()

    run(main())


def test_udp_response_cache_is_bounded() -> None:
    async def main() -> None:
        config = all_transports(response_cache_entries=3)
        async with running(config) as server:
            raw = await RawUdp.open(server.addresses["udp"])
            for i in range(6):
                raw.send(*binary.encode(connect_request(f"p{i}", swarm(i), tid=str(i))))
                await raw.recv()
            assert server._udp is not None
            assert len(server._udp.cache) == 3
            # The oldest was evicted: its retransmission runs through the tracker again, which
            # recognises the replay itself (§4.3).
            raw.send(*binary.encode(connect_request("p0", swarm(0), tid="0")))
            await raw.recv()
            assert server.tracker.stats()["replays"] == 1
            raw.close()

    run(main())


def batch(n: int) -> tuple[list[SwarmAction], list[SwarmAvailability]]:
    ids = [swarm(i) for i in range(n)]
    return seeder_join(*ids), [
        SwarmAvailability(sid, ranges=[(0, 99), (200 + i % 50, 400)]) for i, sid in enumerate(ids)
    ]


@pytest.mark.parametrize("transport", ["udp", "tcp", "http"])
def test_batch_report_of_10000_swarms(transport: str) -> None:
    async def main() -> None:
        async with running() as server:
            addr = server.addresses[transport]
            client: UdpTrackerClient | TcpTrackerClient | JsonHttpTrackerClient
            if transport == "udp":
                client = UdpTrackerClient(addr, "cacher-1")
            elif transport == "tcp":
                client = TcpTrackerClient(addr, "cacher-1")
            else:  # the ~0.9 MB JSON answer arrives in many reads
                client = JsonHttpTrackerClient(f"http://{addr[0]}:{addr[1]}/", "cacher-1")
            actions, availability = batch(10_000)
            async with client:
                response = await client.connect(
                    actions, role=Role.CACHER, availability=availability
                )
            assert len(response.swarm_results) == 10_000
            assert all(r.result == ResponseType.SUCCESSFUL for r in response.swarm_results)
            assert len(server.tracker.swarms_of("cacher-1")) == 10_000
            held = server.tracker.availability("cacher-1", swarm(7))
            assert held is not None and held.contains_range(207, 400)
            if isinstance(client, UdpTrackerClient):
                # Fragmented both ways: many datagrams out, a many-fragment response back.
                assert client.datagrams_sent > 100
                assert server._udp is not None
                (cached,) = server._udp.cache.values()
                assert len(cached.fragments) > 50
                assert all(len(f) <= 1400 for f in cached.fragments)

    run(main())


# -- tracker-initiated messages and timers ------------------------------------------------


def fast_hints() -> TrackerDaemonConfig:
    config = all_transports()
    config.tracker = TrackerConfig(hint_interval=0.1, global_info_interval=0.1)
    return config


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_push_hints_reach_a_cacher_that_uses_a_binary_transport(transport: str) -> None:
    async def main() -> None:
        async with running(fast_hints()) as server:
            pushed: asyncio.Queue[PushMessage] = asyncio.Queue()
            cacher = open_client(
                server.urls[["http", "udp", "tcp"].index(transport)],
                "cacher-1",
                on_push=pushed.put_nowait,
            )
            async with cacher:
                await cacher.connect(role=Role.CACHER, area="eu")
                # A viewer in the cacher's area makes a channel hot (over HTTP).
                async with open_client(server.urls[0], "viewer-1") as viewer:
                    await viewer.connect(
                        [SwarmAction(swarm(3), Action.JOIN, PeerMode.LEECH)], area="eu"
                    )
                messages = [await asyncio.wait_for(pushed.get(), 2)]
                with contextlib.suppress(TimeoutError):
                    while not any(isinstance(m, PushHintMessage) for m in messages):
                        messages.append(await asyncio.wait_for(pushed.get(), 2))
            hints = [h for m in messages if isinstance(m, PushHintMessage) for h in m.hints]
            assert [(h.swarm_id, h.head_start) for h in hints] == [(swarm(3), 0)]
            assert server.counters.pushed >= 1

    run(main())


def test_a_refused_request_does_not_move_a_peers_push_route() -> None:
    async def main() -> None:
        async with running() as server:
            udp = server.addresses["udp"]
            async with UdpTrackerClient(udp, "cacher-1") as cacher:
                await cacher.connect(seeder_join(swarm(1)), role=Role.CACHER)
                route = server._routes["cacher-1"]
                assert isinstance(route, _UdpRoute)
                assert route.addr == cacher.local_address
                # Someone else claims the peer ID; the tracker refuses the request (§2.3.2 C).
                async with UdpTrackerClient(udp, "cacher-1") as impostor:
                    with pytest.raises(TrackerRequestError):
                        await impostor.find(swarm(404))
                    route = server._routes["cacher-1"]
                    assert isinstance(route, _UdpRoute)
                    assert route.addr == cacher.local_address
                    # An accepted request moves it (the peer changed address or transport).
                    await impostor.stat_report()
                    route = server._routes["cacher-1"]
                    assert isinstance(route, _UdpRoute)
                    assert route.addr == impostor.local_address

    run(main())


def test_http_cachers_get_their_push_hints_piggy_backed() -> None:
    async def main() -> None:
        async with running(fast_hints()) as server:
            http = server.urls[0]
            async with open_client(http, "cacher-1") as cacher, open_client(http, "v") as viewer:
                # RFC 7846 JSON needs a swarm action in a CONNECT (§3.3.3).
                await cacher.connect(seeder_join(swarm(50)), role=Role.CACHER, area="eu")
                await viewer.connect(
                    [SwarmAction(swarm(3), Action.JOIN, PeerMode.LEECH)], area="eu"
                )
                await asyncio.sleep(0.3)  # a few hint intervals
                response = await cacher.stat_report()
                assert [h.swarm_id for h in response.push_hints] == [swarm(3)]
                # The viewer is no cacher: nothing rides on its responses.
                assert (await viewer.stat_report()).push_hints == []
            assert server.counters.pushed == 0
            assert server.counters.push_undeliverable >= 1  # no binary route to an HTTP peer

    run(main())


def test_track_timer_expiry_is_driven_by_the_daemon() -> None:
    async def main() -> None:
        config = all_transports()
        config.tracker = TrackerConfig(track_timer=0.2, init_timer=0.2)
        async with running(config) as server:
            async with open_client(server.urls[1], "p") as client:
                await client.connect(seeder_join(swarm(1)))
            assert server.tracker.stats()["peers"] == 1
            await asyncio.sleep(0.5)
            stats = server.tracker.stats()
            assert (stats["peers"], stats["expired"]) == (0, 1)

    run(main())


# -- TCP ---------------------------------------------------------------------------------


def test_tcp_bad_frames_close_the_connection_but_bad_bodies_do_not() -> None:
    async def main() -> None:
        async with running(all_transports(max_tcp_frame=4096)) as server:
            addr = server.addresses["tcp"]
            # A header with the wrong token: the stream cannot be resynchronised.
            reader, writer = await asyncio.open_connection(*addr)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await closed_by_peer(reader)
            # A frame longer than the limit: refused on its header.
            reader, writer = await asyncio.open_connection(*addr)
            head = bytearray(binary.encode(connect_request("p", swarm(1)))[0][:24])
            head[20:24] = (10_000).to_bytes(4, "big")
            writer.write(bytes(head))
            assert await closed_by_peer(reader)
            # A well-framed request with a malformed body: an error response, and the
            # connection still serves.
            reader, writer = await asyncio.open_connection(*addr)
            good = binary.encode(connect_request("p", swarm(1), tid="8"))[0]
            writer.write(good[:24] + b"\x00\x01\xff\xff" + good[28:])
            error = await asyncio.wait_for(reader.readexactly(24), 2)
            assert binary.peek_header(error).method == binary.Method.INVALID_SYNTAX
            writer.write(good)
            response = await read_message(reader)
            assert isinstance(response, Response)
            assert response.response_type == ResponseType.SUCCESSFUL
            writer.close()

    run(main())


async def read_message(reader: asyncio.StreamReader) -> object:
    head = await asyncio.wait_for(reader.readexactly(24), 2)
    body = await reader.readexactly(binary.peek_header(head).length - 24)
    return binary.decode(head + body)


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """True once the tracker closes the connection (a reset counts: it closed with our bytes
    unread)."""
    try:
        return await asyncio.wait_for(reader.read(), 2) == b""
    except ConnectionResetError:
        return True


def test_tcp_idle_connections_are_closed() -> None:
    async def main() -> None:
        async with running(all_transports(tcp_idle_timeout=0.2)) as server:
            reader, writer = await asyncio.open_connection(*server.addresses["tcp"])
            writer.write(b"\xd0\x50")  # half a header, then silence
            assert await closed_by_peer(reader)

    run(main())


def test_tcp_connection_limit() -> None:
    async def main() -> None:
        async with running(all_transports(max_tcp_connections=1)) as server:
            addr = server.addresses["tcp"]
            async with TcpTrackerClient(addr, "p") as first:
                await first.connect(seeder_join(swarm(1)))
                reader, _ = await asyncio.open_connection(*addr)
                assert await closed_by_peer(reader)
                assert server.counters.tcp_connections_refused == 1
                await first.find(swarm(1))  # the first connection keeps working

    run(main())


# -- fuzzing: hostile bytes on every transport ------------------------------------------

valid_datagrams = st.sampled_from(
    [
        binary.encode(connect_request("p", swarm(1), tid="3"))[0],
        binary.encode(Find("p", "4", swarm(1)))[0],
    ]
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(valid_datagrams))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@st.composite
def mutated_json(draw: st.DrawFn) -> bytes:
    data = bytearray(json_body(connect_request("p", swarm(1), tid="3")))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.sampled_from(b'{}[]",:0a\\ \xff'))
    return bytes(data[: draw(st.integers(0, len(data)))])


hostile = st.lists(st.binary(max_size=120) | mutated(), min_size=1, max_size=8)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datagrams=hostile)
def test_udp_fuzz_gets_only_clean_error_responses(datagrams: list[bytes]) -> None:
    async def main() -> None:
        async with running(TrackerDaemonConfig(udp=LOCAL)) as server:
            raw = await RawUdp.open(server.addresses["udp"])
            raw.send(*datagrams)
            with contextlib.suppress(TimeoutError):
                while True:
                    answer = await raw.recv(0.05)
                    assert binary.peek_header(answer).is_response
                    assert isinstance(binary.decode(answer), Response)
            raw.close()
            async with UdpTrackerClient(server.addresses["udp"], "after") as client:
                await client.connect(seeder_join(swarm(9)))

    run(main())


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=300) | mutated_json())
def test_http_fuzz_gets_http_200_with_a_ppsp_response(body: bytes) -> None:
    async def main() -> None:
        async with running(TrackerDaemonConfig(http=LOCAL)) as server:
            status, _, answer = await post(server.urls[0], body)
            assert status == 200
            assert isinstance(json_codec.decode_response(answer), Response)

    run(main())


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=hostile.map(b"".join))
def test_tcp_fuzz_never_stops_the_daemon(stream: bytes) -> None:
    async def main() -> None:
        async with running(TrackerDaemonConfig(tcp=LOCAL)) as server:
            reader, writer = await asyncio.open_connection(*server.addresses["tcp"])
            writer.write(stream)
            writer.write_eof()
            try:
                rest = await asyncio.wait_for(reader.read(), 2)  # answers, then the close
            except ConnectionResetError:
                rest = b""  # closed on a bad header with bytes of ours unread
            while rest:
                header = binary.peek_header(rest)
                assert header.is_response
                rest = rest[header.length :]
            writer.close()
            async with TcpTrackerClient(server.addresses["tcp"], "after") as client:
                await client.connect(seeder_join(swarm(9)))

    run(main())


# -- configuration ----------------------------------------------------------------------


def docs_example() -> str:
    text = (REPO / "docs" / "tracker.md").read_text()
    match = re.search(r"```toml\n(.*?)```", text, re.DOTALL)
    assert match is not None, "docs/tracker.md has no tracker.toml example"
    return match.group(1)


def test_the_documented_example_configuration_loads(tmp_path: Path) -> None:
    path = tmp_path / "tracker.toml"
    path.write_text(docs_example())
    config = load_config(path)
    assert config.http == ("127.0.0.1", 7846)
    assert config.udp == ("127.0.0.1", 7846)
    assert config.tcp == ("127.0.0.1", 7847)
    assert config.https == ("0.0.0.0", 7843)
    assert config.cert_file == tmp_path / "tracker.crt"
    assert config.tracker.track_timer == 120.0
    assert config.tracker.max_swarms_per_peer == 20_000
    assert config.limits.max_http_body == 4 * 1024 * 1024


def test_config_maps_timers_and_limits_to_the_tracker_state() -> None:
    config = config_from_dict(
        {
            "listen": {"udp": "[::1]:0", "tcp": "localhost:9000"},
            "timers": {"track_timer": 15, "init_timer": 5.5},
            "limits": {"max_peers_per_swarm": 50, "max_tcp_frame": 65536, "http_keepalive": 5},
            "logging": {"level": "DEBUG"},
        }
    )
    assert config.udp == ("::1", 0)
    assert config.tcp == ("localhost", 9000)
    assert (config.tracker.track_timer, config.tracker.init_timer) == (15.0, 5.5)
    assert config.tracker.max_peers_per_swarm == 50
    assert config.limits.max_tcp_frame == 65536
    assert config.limits.http_keepalive == 5.0
    assert config.log_level == 10
    six = config_from_dict({"limits": {"unregistered_error": 6}})
    assert six.tracker.unregistered_error == ErrorCode.AUTHENTICATION_REQUIRED


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"listen": {"http": "127.0.0.1"}}, r"\[listen\] http: .*HOST:PORT"),
        ({"listen": {"udp": "1.2.3.4:70000"}}, "port"),
        ({"listen": {"udp": "::1:80"}}, "brackets"),
        ({"listen": {"udp": 7846}}, "HOST:PORT"),
        ({"listen": {"quic": "127.0.0.1:1"}}, "unknown key 'quic'"),
        ({"server": {}}, "unknown section"),
        ({"limits": {"max_http_body": "big"}}, "max_http_body: expected an integer"),
        ({"limits": {"max_tcp_frame": -1}}, "must not be negative"),
        ({"limits": {"no_such_limit": 1}}, "unknown key 'no_such_limit'"),
        ({"limits": {"max_message": 2**30}}, "max_message"),
        ({"timers": {"track_timer": 0}}, "track_timer: must be positive"),
        ({"timers": {"track_timer": True}}, "expected a number"),
        ({"timers": {"max_tcp_frame": 5}}, "unknown key"),
        ({"limits": {"unregistered_error": 4}}, "unregistered_error"),
        ({"logging": {"level": "loud"}}, "level"),
        ({"listen": "127.0.0.1:1"}, r"\[listen\] must be a table"),
    ],
)
def test_bad_configuration_is_a_clear_error(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_https_needs_both_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="certificate and a key"):
        TrackerDaemonConfig(https=LOCAL).validate()
    with pytest.raises(ConfigError, match="no https"):
        TrackerDaemonConfig(cert_file=tmp_path / "c").validate()
    with pytest.raises(ConfigError, match="does not exist"):
        TrackerDaemonConfig(
            https=LOCAL, cert_file=tmp_path / "c", key_file=tmp_path / "k"
        ).validate()


def test_no_listener_means_the_loopback_defaults() -> None:
    config = TrackerDaemonConfig().with_defaults()
    assert config.listeners == {
        "http": ("127.0.0.1", 7846),
        "udp": ("127.0.0.1", 7846),
        "tcp": ("127.0.0.1", 7847),
    }
    only_udp = TrackerDaemonConfig(udp=LOCAL).with_defaults()
    assert only_udp.listeners == {"udp": LOCAL}


# -- the command ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[listen\n", "invalid TOML"),
        ('[listen]\nhttp = "nowhere"\n', "HOST:PORT"),
        ("[timers]\ntrack_timer = -1\n", "track_timer"),
    ],
)
def test_cli_bad_config_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, message: str
) -> None:
    path = tmp_path / "tracker.toml"
    path.write_text(toml)
    assert cli.main(["tracker", "--config", str(path)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err
    assert str(path) in err


def test_cli_missing_config_and_https_without_cert_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["tracker", "--config", str(tmp_path / "none.toml")]) == cli.EXIT_USAGE
    assert "not found" in capsys.readouterr().err
    assert cli.main(["tracker", "--https", "127.0.0.1:0"]) == cli.EXIT_USAGE
    assert "certificate and a key" in capsys.readouterr().err


def start_cli(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-m", "lab.cli", "tracker", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cli_prints_its_urls_serves_and_stops_on_a_signal(
    tmp_path: Path, signum: signal.Signals
) -> None:
    config = tmp_path / "tracker.toml"
    config.write_text('[listen]\nhttp = "127.0.0.1:0"\n\n[timers]\ntrack_timer = 30\n')
    proc = start_cli("--config", str(config), "--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0")
    try:
        assert proc.stdout is not None
        urls = [proc.stdout.readline().strip() for _ in range(3)]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", urls[0]), urls
        assert re.fullmatch(r"ppsp-udp://127\.0\.0\.1:\d+", urls[1]), urls
        assert re.fullmatch(r"ppsp-tcp://127\.0\.0\.1:\d+", urls[2]), urls

        async def use(url: str) -> Response:
            async with open_client(url, f"peer-{url[:8]}") as client:
                return await client.connect(seeder_join(swarm(1)))

        for url in urls:
            assert run(use(url)).response_type == ResponseType.SUCCESSFUL
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
