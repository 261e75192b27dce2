"""``--pcap PATH`` (interop/capture.py): daemons record what they send and receive, and the
capture reads back with our pcap reader, our codecs and tshark."""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from interop import capture
from interop.pcapfile import read_pcap
from lab.cli import CAPTURING_COMMANDS, build_parser
from ppsp.peer import wire
from ppsp.peer.messages import Handshake, WireContext
from reload.aio import LAB_KIND
from tests.test_reload_aio import build_overlay, close_all, lab, ring_ok, wait_for

TSHARK = shutil.which("tshark")


@pytest.fixture(autouse=True)
def _no_capture() -> Iterator[None]:
    capture.stop()
    yield
    capture.stop()


def test_udp_records_read_back_exactly(tmp_path: Path) -> None:
    path = tmp_path / "u.pcap"
    cap = capture.start(path)
    cap.udp(("127.0.0.1", 4000), ("127.0.0.2", 7777), b"hello", now=1000.25)
    cap.udp(("::1", 4001), ("::1", 7777), b"", now=1000.5)
    capture.stop()
    packets = list(read_pcap(path))
    assert [(p.src, p.sport, p.dst, p.dport, p.payload) for p in packets] == [
        ("127.0.0.1", 4000, "127.0.0.2", 7777, b"hello"),
        ("::1", 4001, "::1", 7777, b""),
    ]
    assert packets[0].timestamp == pytest.approx(1000.25)


def test_size_bound_stops_recording(tmp_path: Path) -> None:
    cap = capture.PacketCapture(tmp_path / "b.pcap", max_bytes=1000)
    for _ in range(100):
        cap.udp(("127.0.0.1", 1), ("127.0.0.1", 2), b"x" * 100)
    cap.close()
    assert cap.truncated and cap.packets < 10
    assert (tmp_path / "b.pcap").stat().st_size <= 1000


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
def test_tcp_records_are_a_clean_stream_for_tshark(tmp_path: Path) -> None:
    path = tmp_path / "t.pcap"
    cap = capture.start(path)
    a, b = ("127.0.0.1", 40000), ("127.0.0.1", 7846)
    cap.tcp(a, b, b"x" * 100)
    cap.tcp(b, a, b"y" * 10)
    cap.tcp(a, b, b"z" * 70_000)  # cut into two segments
    capture.stop()
    assert TSHARK is not None
    out = subprocess.run(
        [TSHARK, "-n", "-r", str(path), "-T", "fields", "-e", "tcp.seq", "-e", "tcp.len",
         "-e", "tcp.analysis.flags", "-e", "_ws.expert.severity"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    rows = [line.split("\t") for line in out.splitlines()]
    assert [(r[0], r[1]) for r in rows] == [("1", "100"), ("1", "10"), ("101", "65000"),
                                            ("65101", "5000")]  # fmt: skip
    assert all(r[2] == "" for r in rows), rows  # no retransmission/out-of-order analysis


def test_daemon_commands_take_pcap_and_others_do_not() -> None:
    parser = build_parser()
    args = parser.parse_args(["seed", "file.bin", "--pcap", "out.pcap"])
    assert args.pcap == Path("out.pcap")
    assert {"seed", "get", "tracker", "overlay"} <= CAPTURING_COMMANDS
    with pytest.raises(SystemExit):
        parser.parse_args(["ca", "init", "--pcap", "x.pcap"])


def test_ppspp_transfer_is_recorded_both_ways(tmp_path: Path) -> None:
    from ppsp.peer.aio import download, serve_seed

    content = random.Random(3).randbytes(20 * 1024)
    source = tmp_path / "c.bin"
    source.write_bytes(content)
    path = tmp_path / "ppspp.pcap"

    async def scenario() -> tuple[bytes, tuple[str, int]]:
        seeder = await serve_seed(source)
        try:
            capture.start(path)
            await asyncio.wait_for(download(seeder.swarm_id, [seeder.address], tmp_path / "o"), 30)
        finally:
            seeder.close()
            capture.stop()
        return seeder.swarm_id, seeder.address

    swarm_id, seeder_address = asyncio.run(scenario())
    packets = list(read_pcap(path))
    to_seeder = [p for p in packets if (p.dst, p.dport) == seeder_address]
    from_seeder = [p for p in packets if (p.src, p.sport) == seeder_address]
    # Both the seeder's and the leecher's sockets record (one process): each datagram twice.
    assert len(to_seeder) >= 4 and len(from_seeder) >= 4
    first = wire.parse_datagram(to_seeder[0].payload, WireContext())
    handshakes = [m for m in first.messages if isinstance(m, Handshake)]
    assert handshakes and handshakes[0].options.swarm_id == swarm_id


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
def test_reload_tls_frames_are_recorded_in_plaintext_for_tshark(tmp_path: Path) -> None:
    from reload.messages import DataValue
    from tests.test_reload_aio import user_resource

    the_lab = lab()
    path = tmp_path / "reload.pcap"
    ports: list[int] = []

    async def scenario() -> None:
        capture.start(path)
        nodes = await build_overlay(the_lab, 3, link="tls")
        try:
            for node in nodes:
                assert node.address is not None
                ports.append(node.address[1])
            await wait_for(lambda: ring_ok(nodes), 20, "the ring")
            await nodes[1].store(user_resource(the_lab, 1), LAB_KIND, [DataValue(True, b"v")])
            assert await nodes[2].fetch_single(user_resource(the_lab, 1), LAB_KIND) == b"v"
        finally:
            await close_all(nodes)
            capture.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert TSHARK is not None
    decode_as = [arg for port in ports for arg in ("-d", f"tcp.port=={port},reload-framing")]
    result = subprocess.run(
        [TSHARK, "-n", "-r", str(path), *decode_as, "-T", "fields", "-e", "reload.message.code",
         "-e", "_ws.malformed"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    methods = {cell for line in out.splitlines() for cell in line.split("\t")[0].split(",") if cell}
    malformed = [line for line in out.splitlines() if line.split("\t")[-1]]
    assert malformed == []
    # Store (7/8), Fetch (9/10), Join/Update/Attach — at least store and fetch requests.
    assert {"7", "9"} <= methods, methods


def test_tracker_udp_and_tcp_exchanges_are_recorded(tmp_path: Path) -> None:
    from ppsp.tracker import binary
    from ppsp.tracker.client import TcpTrackerClient, TrackerRequestError, UdpTrackerClient
    from ppsp.tracker.config import TrackerDaemonConfig
    from ppsp.tracker.server import serve

    path = tmp_path / "tracker.pcap"
    swarm = "ab" * 32

    async def scenario() -> dict[str, tuple[str, int]]:
        capture.start(path)
        server = await serve(TrackerDaemonConfig(udp=("127.0.0.1", 0), tcp=("127.0.0.1", 0)))
        try:
            # An unregistered peer's FIND is refused (error 03): still one exchange each.
            async with UdpTrackerClient(server.addresses["udp"], "peer-u") as client:
                with pytest.raises(TrackerRequestError):
                    await client.find(swarm)
            async with TcpTrackerClient(server.addresses["tcp"], "peer-t") as client:
                with pytest.raises(TrackerRequestError):
                    await client.find(swarm)
            return dict(server.addresses)
        finally:
            server.close()
            await asyncio.wait_for(server.wait_closed(), 10)
            capture.stop()

    addresses = asyncio.run(asyncio.wait_for(scenario(), 30))
    udp = [p for p in read_pcap(path) if addresses["udp"] in ((p.dst, p.dport), (p.src, p.sport))]
    # Client and server share the process: the request and the answer, each seen twice.
    assert len(udp) == 4
    for packet in udp:
        assert binary.parse(packet.payload) is not None
    if TSHARK is not None:
        lua = Path(__file__).resolve().parent.parent / "interop" / "wireshark" / "ppsptp.lua"
        port_filter = f"tcp.port=={addresses['tcp'][1]} || udp.port=={addresses['udp'][1]}"
        result = subprocess.run(
            [TSHARK, "-n", "-X", f"lua_script:{lua}", "-r", str(path), "-d",
             f"udp.port=={addresses['udp'][1]},ppsptp_udp", "-d",
             f"tcp.port=={addresses['tcp'][1]},ppsptp_tcp", "-Y", port_filter,
             "-T", "fields", "-e", "frame.protocols", "-e", "_ws.malformed"],
            capture_output=True, text=True, timeout=60, env={"HOME": str(tmp_path)},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stdout.splitlines() if "ppsptp" in line]
        assert len(lines) >= 8, result.stdout  # 4 UDP datagrams + 4 TCP messages
        assert all(line.split("\t")[-1] == "" for line in lines)


def test_seed_and_get_commands_write_captures_that_dissect_cleanly(tmp_path: Path) -> None:
    """`p2pcdn seed --pcap` and `p2pcdn get --pcap` as real processes; both captures are read
    by `p2pcdn dissect --json` with per-channel context and nothing malformed."""
    import json
    import sys

    from tests.test_cli import child, read_line

    content = tmp_path / "content.bin"
    content.write_bytes(random.Random(9).randbytes(64 * 1024 + 5))
    seed_pcap, get_pcap = tmp_path / "seed.pcap", tmp_path / "get.pcap"
    with child("seed", str(content), "--listen", "127.0.0.1:0", "--pcap", str(seed_pcap)) as seeder:
        assert seeder.stdout is not None
        swarm = read_line(seeder.stdout, 30)
        address = read_line(seeder.stdout, 10)
        got = subprocess.run(
            [sys.executable, "-m", "lab.cli", "get", swarm, "--peer", address,
             "-o", str(tmp_path / "out.bin"), "--pcap", str(get_pcap)],
            capture_output=True, timeout=60,
        )  # fmt: skip
        assert got.returncode == 0, got.stderr
        seeder.send_signal(2)
        assert seeder.wait(timeout=15) == 0
    assert (tmp_path / "out.bin").read_bytes() == content.read_bytes()
    port = address.rsplit(":", 1)[1]
    for pcap in (seed_pcap, get_pcap):
        out = subprocess.run(
            [sys.executable, "-m", "lab.cli", "dissect", "--json", "--port-map",
             f"ppspp={port}", str(pcap)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        objects = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        summary = objects[-1]["summary"]
        frames = objects[:-1]
        assert summary["malformed"] == 0 and summary["packets"]["ppspp"] == len(frames) >= 6
        assert all(frame["protocol"] == "ppspp" and frame["malformed"] is None for frame in frames)
