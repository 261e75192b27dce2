"""The PPSPP conformance tool (interop/conformance.py, ``p2pcdn conformance``).

It must pass fully against our own seeder, fail the right checks against a peer that breaks
RFC 7574, survive a silent or garbage-sending peer, and verify libswift's own chunks against
the swarm ID with the INTEGRITY hashes of the trace.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interop import conformance
from interop.conformance import Report, Status, Target, run_checks, run_self, verify_chunk
from interop.pcapfile import read_pcap
from lab import cli
from ppsp.peer import wire
from ppsp.peer.messages import (
    Data,
    Datagram,
    DecodeError,
    Handshake,
    HandshakeOptions,
    Have,
    Integrity,
    MerkleHashFunction,
    Message,
    Request,
    WireContext,
)

Addr = tuple[str, int]
TRACES = Path(__file__).resolve().parent.parent.parent / "shared" / "traces" / "libswift"
STATIC = TRACES / "libswift_static_200000B.pcap"
LIBSWIFT_SWARM = bytes.fromhex("026bf5bed2c08204b6f0765acd1429068a874ee6")

#: Every behaviour the brief asks the tool to check, by check name.
EXPECTED_CHECKS = {
    "probe-A", "probe-B", "probe-C", "probe-D", "probe-E", "probe-F",
    "handshake", "handshake-minimal", "reply-channel", "reply-version", "reply-swarm",
    "reply-cipm", "reply-hash", "reply-cam", "reply-no-heavy-payload", "have-after-handshake",
    "request-data", "integrity-before-data", "data-verifies", "data-chunk-size", "ack-handling",
    "unknown-swarm", "bad-option", "keep-alive", "explicit-close", "repeated-request",
    "out-of-range-request", "handshake-retransmitted",
}  # fmt: skip


@pytest.fixture(scope="module")
def self_report() -> Report:
    return run_self(timeout=3.0, quiet=0.3)


def test_self_passes_fully(self_report: Report) -> None:
    report = self_report
    failed = [(r.name, r.detail) for r in report.results if r.status is not Status.PASS]
    assert failed == []
    assert {r.name for r in report.results} == EXPECTED_CHECKS
    assert report.passed
    assert all(r.section.startswith("§") for r in report.results)


def test_self_sha1_with_a_chunk_size_option() -> None:
    # SHA-1 (libswift's hash) and 4096-byte chunks: option 9 in every handshake, the
    # minimal-handshake check is skipped (the swarm does not use the defaults).
    report = run_self(MerkleHashFunction.SHA1, 4096, timeout=3.0, quiet=0.3)
    status = {r.name: r.status for r in report.results}
    assert status.pop("handshake-minimal") is Status.SKIP
    assert set(status.values()) == {Status.PASS}, report.results
    assert report.passed


def test_cli_self_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["conformance", "--self", "--json", "--quiet", "0.3"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["passed"] is True
    assert {c["name"] for c in out["checks"]} == EXPECTED_CHECKS
    assert {c["status"] for c in out["checks"]} == {"pass"}


def test_cli_table(
    self_report: Report, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conformance, "run_self", lambda *args: self_report)
    code = cli.main(["conformance", "--self", "--quiet", "0.3"])
    text = capsys.readouterr().out
    assert code == 0
    assert text.splitlines()[0].split()[:3] == ["STATUS", "CHECK", "RFC"]
    assert "probe-B" in text and "[libswift: silently dropped" in text
    assert text.rstrip().endswith("CONFORMANT") and "NOT CONFORMANT" not in text


@pytest.mark.parametrize(
    "argv",
    [
        ["conformance", "--peer", "127.0.0.1:7777"],  # no --swarm
        ["conformance", "--peer", "127.0.0.1:7777", "--swarm", "zz"],
        ["conformance", "--peer", "127.0.0.1:7777", "--swarm", "00" * 20],  # sha256 wants 32
        ["conformance", "--peer", "nocolon", "--swarm", "00" * 32],
    ],
)
def test_cli_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert "p2pcdn conformance" in capsys.readouterr().err


# ---------------------------------------------------------------------------- fake peers


@contextlib.contextmanager
def fake_peer(answer: Callable[[bytes, Addr], list[bytes]]) -> Iterator[tuple[str, int]]:
    """A UDP peer on 127.0.0.1 that sends back ``answer(datagram, sender)`` to every one."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            for out in answer(data, addr):
                sock.sendto(out, addr)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()
    finally:
        stop.set()
        thread.join(5)
        sock.close()


SWARM = hashlib.sha256(b"some swarm").digest()
CHANNELS: dict[Addr, int] = {}


def sloppy(data: bytes, addr: Addr) -> list[bytes]:
    """A peer that accepts any swarm and any options, sends DATA in its handshake reply and
    serves chunks whose bytes do not match any hash."""
    try:
        dgram = wire.parse_datagram(data)
    except DecodeError:
        return []
    out = []
    for m in dgram.messages:
        if isinstance(m, Handshake) and m.source_channel:
            CHANNELS[addr] = m.source_channel
            reply = Datagram(
                m.source_channel,
                [Handshake(0x77, HandshakeOptions(version=1)), Have(0, 9), Data(5, 5, 0, b"x")],
            )
            out.append(wire.build_datagram(reply))
        if isinstance(m, Request) and m.start < 10:
            c = m.start
            msgs: list[Message] = [Integrity(c ^ 1, c ^ 1, bytes(32)), Data(c, c, 0, b"bad" * 300)]
            out.append(wire.build_datagram(Datagram(CHANNELS.get(addr, 0), msgs)))
    return out


def test_sloppy_peer_fails_the_right_checks(capsys: pytest.CaptureFixture[str]) -> None:
    with fake_peer(sloppy) as (host, port):
        report = run_checks(Target(host, port, SWARM, timeout=1.0, quiet=0.3))
    status = {r.name: r.status for r in report.results}
    assert not report.passed
    for name in (
        "unknown-swarm",  # answered a swarm it does not have
        "probe-E",  # accepted another hash function
        "probe-F",  # accepted 64-bit chunk ranges without saying so
        "reply-no-heavy-payload",  # DATA in the handshake reply
        "data-verifies",  # garbage chunk
        "data-chunk-size",  # 900-byte chunk, 1024 expected
        "explicit-close",  # still serves after our close
    ):
        assert status[name] is Status.FAIL, name
    assert status["handshake"] is Status.PASS
    assert status["request-data"] is Status.PASS


def test_silent_peer_fails_without_hanging() -> None:
    with fake_peer(lambda data, addr: []) as (host, port):
        report = run_checks(Target(host, port, SWARM, timeout=0.3, quiet=0.2))
    status = {r.name: r.status for r in report.results}
    assert status["handshake"] is Status.FAIL
    assert status["probe-A"] is Status.FAIL
    assert status["unknown-swarm"] is Status.PASS  # silence is right there
    assert not report.passed


def test_garbage_peer_is_reported_not_fatal() -> None:
    with fake_peer(lambda data, addr: [b"\x00", data[::-1], b"\xff" * 7]) as (host, port):
        report = run_checks(Target(host, port, SWARM, timeout=0.3, quiet=0.2))
    assert not report.passed
    assert {r.name: r.status for r in report.results}["handshake"] is Status.FAIL


def test_closed_port_is_a_failure_not_an_exception() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # ICMP port unreachable from now on
    report = run_checks(Target("127.0.0.1", port, SWARM, timeout=0.3, quiet=0.2))
    assert not report.passed


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_session_parses_hostile_datagrams(data: bytes) -> None:
    session = conformance.Session(Target("127.0.0.1", 9, SWARM))
    try:
        session.channel = int.from_bytes(data[:4].ljust(4, b"\0"), "big") or 1
        session._parse(data)  # returns a Datagram or None, never raises
    finally:
        session.close()


# ---------------------------------------------------------------------------- verification


def trace_chunks() -> tuple[dict[tuple[int, int], bytes], dict[int, bytes]]:
    ctx = WireContext(hash_size=20)
    hashes: dict[tuple[int, int], bytes] = {}
    chunks: dict[int, bytes] = {}
    for p in read_pcap(STATIC):
        if p.sport != 20200 or len(p.payload) <= 4:
            continue
        for m in wire.parse_datagram(p.payload, ctx).messages:
            if isinstance(m, Integrity):
                hashes[(m.start, m.end)] = bytes(m.hash)
            if isinstance(m, Data):
                chunks[m.start] = bytes(m.payload)
    return hashes, chunks


@pytest.mark.skipif(not STATIC.is_file(), reason="no libswift traces")
def test_verify_every_libswift_chunk_against_the_swarm_id() -> None:
    hashes, chunks = trace_chunks()
    assert len(chunks) == 196 and len(chunks[195]) == 320
    known = dict(hashes)
    for c in sorted(chunks):
        assert verify_chunk(c, chunks[c], known, LIBSWIFT_SWARM, MerkleHashFunction.SHA1), c
    # A flipped byte, a wrong chunk number or a wrong root never verifies.
    fresh = dict(hashes)
    bad = bytes([chunks[7][0] ^ 1]) + chunks[7][1:]
    assert not verify_chunk(7, bad, fresh, LIBSWIFT_SWARM, MerkleHashFunction.SHA1)
    assert not verify_chunk(8, chunks[7], fresh, LIBSWIFT_SWARM, MerkleHashFunction.SHA1)
    assert not verify_chunk(0, chunks[0], fresh, bytes(20), MerkleHashFunction.SHA1)
    assert fresh == hashes  # failed verifications add nothing


def test_verify_needs_the_left_uncle() -> None:
    h = hashlib.sha256
    leaves = [h(bytes([i])).digest() for i in range(4)]
    n01, n23 = h(leaves[0] + leaves[1]).digest(), h(leaves[2] + leaves[3]).digest()
    root = h(n01 + n23).digest()
    fn = MerkleHashFunction.SHA256
    assert verify_chunk(2, bytes([2]), {(3, 3): leaves[3], (0, 1): n01}, root, fn)
    assert not verify_chunk(2, bytes([2]), {(3, 3): leaves[3]}, root, fn)
