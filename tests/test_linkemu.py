"""The userspace link emulator (ppsp/linkemu.py): rules, the sans-IO schedule, the wrappers."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ppsp import linkemu
from ppsp.linkemu import LinkEmulationError, LinkEmulator, LinkRule, parse_rules


@pytest.fixture(autouse=True)
def _no_emulation() -> Iterator[None]:
    linkemu.configure(None)
    yield
    linkemu.configure(None)


def test_parse_rules_units_and_prefixes() -> None:
    rules = parse_rules("10.1.0.0/16 delay=5ms jitter=300us loss=0.5% rate=20mbit; ::1 delay=1s")
    assert rules[0] == LinkRule(
        ipaddress.ip_network("10.1.0.0/16"), delay=0.005, jitter=0.0003, loss=0.005, rate=20e6
    )
    assert rules[1].network == ipaddress.ip_network("::1/128") and rules[1].delay == 1.0
    assert parse_rules("# nothing\n\n") == []


@pytest.mark.parametrize(
    "text",
    [
        "10.0.0.0/8 delay=fast",
        "not-a-prefix delay=1ms",
        "10.0.0.0/8 colour=red",
        "10.0.0.0/8 loss=150%",
        "10.0.0.0/8 delay",
        "10.0.0.0/8 rate=lots",
    ],
)
def test_bad_rules_are_refused_with_a_reason(text: str) -> None:
    with pytest.raises(LinkEmulationError):
        parse_rules(text)


@given(st.text(max_size=80))
def test_parser_never_raises_anything_but_its_error(text: str) -> None:
    with contextlib.suppress(LinkEmulationError):
        parse_rules(text)


def test_longest_prefix_wins_and_unmatched_is_immediate() -> None:
    emu = LinkEmulator(parse_rules("10.0.0.0/8 delay=40ms; 10.1.0.0/16 delay=5ms"))
    assert emu.schedule("10.1.2.3", 100, 1.0) == pytest.approx(1.005)
    assert emu.schedule("10.9.2.3", 100, 1.0) == pytest.approx(1.040)
    assert emu.schedule("192.0.2.1", 100, 1.0) == 1.0
    assert emu.schedule("not-an-address", 100, 1.0) == 1.0


def test_loss_rate_is_the_configured_one_and_streams_are_never_lost() -> None:
    emu = LinkEmulator(parse_rules("0.0.0.0/0 loss=20%"), random.Random(7))
    lost = sum(emu.schedule("192.0.2.1", 10, 0.0) is None for _ in range(10_000))
    assert 1_800 < lost < 2_200
    assert all(emu.schedule("192.0.2.1", 10, 0.0, reliable=True) is not None for _ in range(500))


def test_jitter_stays_within_bounds_and_never_before_now() -> None:
    emu = LinkEmulator(parse_rules("0.0.0.0/0 delay=10ms jitter=4ms"), random.Random(1))
    times = [emu.schedule("192.0.2.1", 10, 5.0) for _ in range(2_000)]
    assert all(t is not None and 5.006 - 1e-9 <= t <= 5.014 + 1e-9 for t in times)
    assert len({round(t or 0, 6) for t in times}) > 100  # it does jitter


def test_rate_serialises_packets() -> None:
    # 8 kbit/s: 1000 bytes take one second on the link.
    emu = LinkEmulator(parse_rules("0.0.0.0/0 rate=8kbit"))
    assert emu.schedule("192.0.2.1", 1000, 0.0) == pytest.approx(1.0)
    assert emu.schedule("192.0.2.1", 1000, 0.0) == pytest.approx(2.0)
    assert emu.schedule("192.0.2.1", 500, 10.0) == pytest.approx(10.5)


def test_environment_configuration(tmp_path: Path) -> None:
    assert linkemu.from_environment({}) is None
    emu = linkemu.from_environment({linkemu.ENVIRONMENT_VARIABLE: "127.0.0.0/8 delay=3ms"})
    assert emu is not None and emu.schedule("127.0.0.1", 1, 0.0) == pytest.approx(0.003)
    rules = tmp_path / "links.txt"
    rules.write_text("127.0.0.0/8 delay=7ms\n")
    emu = linkemu.from_environment({linkemu.ENVIRONMENT_VARIABLE: f"@{rules}"})
    assert emu is not None and emu.schedule("127.0.0.1", 1, 0.0) == pytest.approx(0.007)
    with pytest.raises(LinkEmulationError):
        linkemu.from_environment({linkemu.ENVIRONMENT_VARIABLE: f"@{tmp_path / 'missing'}"})


class _Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.put_nowait((data, asyncio.get_running_loop().time()))


async def _test_wrapped_udp_transport_delays_each_datagram() -> None:
    loop = asyncio.get_running_loop()
    echo_t, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    recv = _Receiver()
    raw, _ = await loop.create_datagram_endpoint(lambda: recv, local_addr=("127.0.0.1", 0))
    linkemu.configure(parse_rules("127.0.0.0/8 delay=60ms"))
    sender = linkemu.wrap_datagram(raw)
    assert sender is not raw
    try:
        sent = loop.time()
        sender.sendto(b"ping", echo_t.get_extra_info("sockname"))
        data, at = await asyncio.wait_for(recv.got.get(), 5)
        assert data == b"ping" and at - sent >= 0.055  # one way emulated, the echo is not
    finally:
        raw.close()
        echo_t.close()


async def _test_no_emulation_returns_the_transport_itself() -> None:
    loop = asyncio.get_running_loop()
    raw, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    try:
        assert linkemu.wrap_datagram(raw) is raw
        assert linkemu.wrap_stream(raw) is raw
    finally:
        raw.close()


async def _test_stream_writes_keep_order_under_jitter() -> None:
    received = bytearray()
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.extend(await reader.readexactly(200 * 4))
        done.set()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    linkemu.configure(parse_rules("127.0.0.0/8 delay=5ms jitter=5ms"), seed=3)
    _reader, writer = await asyncio.open_connection(host, port)
    wrapped = linkemu.wrap_stream(writer.transport)
    for i in range(200):
        wrapped.write(i.to_bytes(4, "big"))
    await asyncio.wait_for(done.wait(), 5)
    assert bytes(received) == b"".join(i.to_bytes(4, "big") for i in range(200))
    writer.close()
    server.close()
    await server.wait_closed()


async def _test_ppspp_download_completes_through_loss_and_delay(tmp_path: Path) -> None:
    from ppsp.peer.aio import download, serve_seed

    content = random.Random(5).randbytes(300 * 1024 + 17)
    source = tmp_path / "content.bin"
    source.write_bytes(content)
    # 5 % loss and 5 ms each way on loopback: retransmission and LEDBAT must cope.
    linkemu.configure(parse_rules("127.0.0.0/8 delay=5ms jitter=1ms loss=5%"), seed=11)
    seeder = await serve_seed(source)
    try:
        out = tmp_path / "out.bin"
        await asyncio.wait_for(download(seeder.swarm_id, [seeder.address], out), 60)
        assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(content).digest()
        emu = linkemu.current()
        assert emu is not None and emu.dropped > 0 and emu.delivered > 0
    finally:
        seeder.close()


def test_wrapped_udp_transport_delays_each_datagram() -> None:
    asyncio.run(_test_wrapped_udp_transport_delays_each_datagram())


def test_no_emulation_returns_the_transport_itself() -> None:
    asyncio.run(_test_no_emulation_returns_the_transport_itself())


def test_stream_writes_keep_order_under_jitter() -> None:
    asyncio.run(_test_stream_writes_keep_order_under_jitter())


def test_ppspp_download_completes_through_loss_and_delay(tmp_path: Path) -> None:
    asyncio.run(_test_ppspp_download_completes_through_loss_and_delay(tmp_path))
