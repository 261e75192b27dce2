"""``p2pcdn dissect`` (interop.dissect): the libswift traces, captures of our own PPSPP,
PPSP-TP binary and RELOAD messages written with interop.pcapfile, per-channel PPSPP context,
TCP reassembly, --json, and hostile captures (truncated packets and files, wrong ports,
garbage) reported as malformed while the dissection goes on."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("scapy", reason="scapy is the interop extra")

from interop import dissect
from interop.pcapfile import PcapPacket, write_pcap
from lab import cli
from ppsp.peer import wire as ppspp_wire
from ppsp.peer.messages import (
    ChunkAddressing,
    Data,
    Datagram,
    Handshake,
    HandshakeOptions,
    Have,
    Integrity,
    MerkleHashFunction,
    Request,
    WireContext,
)
from ppsp.tracker import binary
from reload import wire as reload_wire
from tests.test_reload_tshark import _payloads, _sent, _tcp_frame, _write_tcp, _write_udp
from tests.test_tracker_binary import DOC_EXAMPLES, doc_examples

LIBSWIFT = Path(__file__).resolve().parents[2] / "shared/traces/libswift"
needs_traces = pytest.mark.skipif(not LIBSWIFT.exists(), reason="no captured traces")
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
A, B = "127.0.0.1", "127.0.0.2"


def run_cli(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    parser = cli.build_parser()
    args = parser.parse_args(["dissect", *argv])
    code = dissect.run(args, out, err)
    return code, out.getvalue() + err.getvalue()


def json_lines(*argv: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    code, text = run_cli(*argv, "--json")
    assert code == 0, text
    objects = [json.loads(line) for line in text.splitlines()]
    summary = objects.pop()["summary"]
    assert isinstance(summary, dict)
    return objects, summary


# --- the libswift traces ---------------------------------------------------------------------


@needs_traces
def test_libswift_trace_with_channel_contexts() -> None:
    path = LIBSWIFT / "libswift_static_200000B.pcap"
    records, summary = dissect.dissect_file(path, port_map={20200: "ppspp"})
    assert summary["frames"] == 411 and summary["malformed"] == 0
    assert summary["packets"] == {"ppspp": 411, "ppsptp": 0, "reload": 0, "other": 0}
    # The seeder's INTEGRITY hashes are SHA-1 because both handshakes said so (option 4 = 0):
    # without the per-channel context they would be read as SHA-256 and be malformed.
    with_data = [r for r in records if "DATA" in r.summary]
    assert len(with_data) == 196  # one DATA per chunk
    first = with_data[0].as_json()
    messages = first["messages"][0]["fields"]["messages"]
    integrity = next(m for m in messages if m["layer"] == "PPSPP INTEGRITY")
    assert len(integrity["fields"]["hash"]) == 40
    assert integrity["fields"]["ctx"]["hash_size"] == 20
    assert "context: chunk32, hash 20 B, sig 64 B" in with_data[0].notes
    # Without the context, the same datagram is malformed.
    default, _ = dissect.dissect_file(path, proto="ppspp")
    assert default[with_data[0].frame - 1].malformed == []
    assert records[0].summary.startswith(
        "PPSPP ch 0x00000000 HANDSHAKE(ver 1, min 1, swarm 026bf5be"
    )
    assert records[-1].summary.endswith("HANDSHAKE(close)")


@needs_traces
def test_libswift_trace_text_output() -> None:
    code, text = run_cli(str(LIBSWIFT / "libswift_static_200000B.pcap"), "--proto", "ppspp")
    assert code == 0
    assert text.startswith(
        "Frame 1: 0.000000 s  127.0.0.1:20201 → 127.0.0.1:20200  UDP  PPSPP  85 bytes\n"
    )
    assert "            Option 4 merkle_hash_tree_function: SHA-1\n" in text
    assert "            HAVE 0-127\n" in text
    assert text.rstrip().endswith(
        "411 frames: PPSPP 411, PPSP-TP 0, RELOAD 0, other 0; malformed 0"
    )


@needs_traces
def test_libswift_trace_on_its_own_ports_is_not_ours() -> None:
    _records, summary = dissect.dissect_file(LIBSWIFT / "libswift_handshake_probes.pcap")
    assert summary["packets"]["other"] == 12 and summary["malformed"] == 0
    records, summary = dissect.dissect_file(
        LIBSWIFT / "libswift_handshake_probes.pcap", port_map={20200: "ppspp"}
    )
    assert summary["malformed"] == 0
    refused = [r for r in records if r.summary.endswith("HANDSHAKE(close)")]
    assert [r.frame for r in refused] == [10, 12]


# --- our own PPSPP: the context of one side applies to what is sent to it ---------------------


def ppspp_capture(path: Path, *, skip_handshakes: bool = False) -> list[bytes]:
    """A leecher (A:40000) and a seeder (B:7777) that agree on SHA-512 Merkle trees and
    64-bit bins: the INTEGRITY and DATA datagrams only parse with that context."""
    options = HandshakeOptions(
        version=1,
        minimum_version=1,
        swarm_id=bytes(range(64)),
        integrity_method=1,
        merkle_hash_function=MerkleHashFunction.SHA512,
        chunk_addressing=ChunkAddressing.BIN64,
    )
    ctx = WireContext(ChunkAddressing.BIN64, hash_size=64)
    first = ppspp_wire.build_datagram(Datagram(0, [Handshake(0xA, options)]))
    reply = ppspp_wire.build_datagram(
        Datagram(0xA, [Handshake(0xB, options), Have(0, 7)]), WireContext()
    )
    request = ppspp_wire.build_datagram(Datagram(0xB, [Request(0, 1)]), ctx)
    data = ppspp_wire.build_datagram(
        Datagram(
            0xA, [Integrity(2, 3, bytes(64)), Integrity(1, 1, bytes(64)), Data(0, 0, 5, b"x" * 100)]
        ),
        ctx,
    )
    payloads = [(A, 40000, B, 7777, first), (B, 7777, A, 40000, reply)]
    if skip_handshakes:
        payloads = []
    payloads += [(A, 40000, B, 7777, request), (B, 7777, A, 40000, data)]
    write_pcap(
        path,
        [PcapPacket(float(i), s, sp, d, dp, p) for i, (s, sp, d, dp, p) in enumerate(payloads)],
    )
    return [p[-1] for p in payloads]


def test_ppspp_context_from_each_sides_handshake(tmp_path: Path) -> None:
    path = tmp_path / "ppspp.pcap"
    ppspp_capture(path)
    records, summary = dissect.dissect_file(path)
    assert summary["packets"]["ppspp"] == 4 and summary["malformed"] == 0
    assert records[2].summary == "PPSPP ch 0x0000000b REQUEST bin 1 (0-1)"
    assert records[3].summary.startswith("PPSPP ch 0x0000000a INTEGRITY bin 5 (2-3) 00000000…")
    assert records[3].summary.endswith("DATA bin 0 (0) (100 B)")
    # A capture that starts after the handshakes cannot know the context: malformed, reported.
    late = tmp_path / "late.pcap"
    ppspp_capture(late, skip_handshakes=True)
    records, summary = dissect.dissect_file(late)
    assert summary["malformed"] == 1
    assert records[1].malformed and records[1].summary.endswith("[malformed]")
    # The 8-byte bin of the REQUEST happens to fit a 32-bit chunk range: read, but not as a bin.
    assert records[0].summary == "PPSPP ch 0x0000000b REQUEST 0-1"


# --- PPSP-TP binary over UDP and TCP ----------------------------------------------------------


def test_ppsptp_over_udp_with_fragments(tmp_path: Path) -> None:
    examples = doc_examples()
    fragments = binary.encode(DOC_EXAMPLES["find-response"], max_fragment=80)
    payloads = [examples["find"], *fragments, examples["connect"], examples["push-hint"]]
    path = tmp_path / "tracker.pcap"
    write_pcap(path, [PcapPacket(float(i), A, 40000, B, 7846, p) for i, p in enumerate(payloads)])
    records, summary = dissect.dissect_file(path)
    assert summary["packets"]["ppsptp"] == len(payloads) and summary["malformed"] == 0
    assert records[0].summary.startswith("PPSP-TP FIND tid 81985529216486895 peer=csc-17")
    assert all("fragment @" in r.summary for r in records[1 : 1 + len(fragments)])
    assert any("PPSP-TP fragment at offset" in n for n in records[1].notes)
    assert records[-2].summary.startswith("PPSP-TP CONNECT tid 2 peer=csc-17 LEAVE a4aa02ef…")
    assert "push 8b9c668e… 0-255" in records[-1].summary


def tcp_capture(path: Path, port: int, chunks: list[tuple[bool, bytes]]) -> None:
    """A TCP connection A:40000 -> B:port, one segment per chunk (True: client to server)."""
    c_seq, s_seq = 1000, 5000
    frames = [
        _tcp_frame(A, 40000, B, port, c_seq, 0, 0x02, b""),
        _tcp_frame(B, port, A, 40000, s_seq, c_seq + 1, 0x12, b""),
    ]
    c_seq, s_seq = c_seq + 1, s_seq + 1
    for outbound, payload in chunks:
        if outbound:
            frames.append(_tcp_frame(A, 40000, B, port, c_seq, s_seq, 0x18, payload))
            c_seq += len(payload)
        else:
            frames.append(_tcp_frame(B, port, A, 40000, s_seq, c_seq, 0x18, payload))
            s_seq += len(payload)
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 228))
        for i, frame in enumerate(frames):
            f.write(struct.pack("<IIII", i, 0, len(frame), len(frame)))
            f.write(frame)


def test_ppsptp_over_tcp_is_reassembled(tmp_path: Path) -> None:
    ex = doc_examples()
    find, connect, response = ex["find"], ex["connect"], ex["find-response"]
    path = tmp_path / "tcp.pcap"
    tcp_capture(
        path,
        7846,
        [
            (True, find + connect),  # two messages in one segment
            (False, response[:30]),  # one message in two segments
            (False, response[30:]),
        ],
    )
    records, summary = dissect.dissect_file(path)
    assert summary["malformed"] == 0 and summary["packets"]["ppsptp"] == 5
    both = records[2]
    assert len(both.packets) == 2
    assert "FIND" in both.summary and "; PPSP-TP CONNECT" in both.summary
    assert records[3].packets == [] and "segment of a PPSP-TP message" in records[3].summary
    assert records[4].summary.startswith("PPSP-TP SUCCESSFUL tid 81985529216486895")


def test_ppsptp_stream_with_a_bad_token_is_malformed(tmp_path: Path) -> None:
    path = tmp_path / "bad.pcap"
    tcp_capture(path, 7846, [(True, b"GET / HTTP/1.1\r\n\r\n"), (True, doc_examples()["find"])])
    records, _summary = dissect.dissect_file(path)
    assert "bad token" in records[2].malformed[0]
    # The stream cannot be resynchronised byte-wise; the next segment starts a message.
    assert records[3].summary.startswith("PPSP-TP FIND") and not records[3].malformed


# --- RELOAD over UDP and TCP ------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_reload_captures(tmp_path: Path, transport: str) -> None:
    path = tmp_path / f"reload-{transport}.pcap"
    frames = _payloads(_sent())
    (_write_udp if transport == "udp" else _write_tcp)(path, frames)
    objects, summary = json_lines(str(path))
    assert summary["malformed"] == 0
    assert summary["packets"]["reload"] == len(frames) + (3 if transport == "tcp" else 0)
    text = "\n".join(str(o["summary"]) for o in objects)
    for name in ("PingReq", "PingAns", "StoreReq", "FetchAns", "JoinReq", "UpdateReq", "Error"):
        assert f"RELOAD {name} tid 0x" in text, name
    assert "RELOAD-framing ack 7 received 0xc0000000" in text
    ping = next(o for o in objects if "PingAns" in str(o["summary"]))
    body = ping["messages"][0]["payload"]["fields"]["message_body"]
    assert body["fields"]["time_ms"] == 1_790_000_000_123


def test_reload_fragment_is_noted_not_malformed(tmp_path: Path) -> None:
    from reload.fragments import fragment
    from reload.messages import FramedData, Message, MessageContents, PingReq

    small = _sent()[-4].message
    msg = Message(small.header, MessageContents(PingReq(bytes(3000))), small.security_block)
    pieces = fragment(reload_wire.encode_message(msg), 1200)
    assert len(pieces) >= 2
    path = tmp_path / "frag.pcap"
    write_pcap(
        path,
        [
            PcapPacket(float(i), A, 40000, B, 6084, reload_wire.encode_framing(FramedData(i, p)))
            for i, p in enumerate(pieces)
        ],
    )
    records, summary = dissect.dissect_file(path)
    assert summary["malformed"] == 0
    assert all(any("RELOAD fragment" in n for n in r.notes) for r in records)


# --- hostile captures -------------------------------------------------------------------------


def hostile_capture(path: Path) -> None:
    good = ppspp_wire.build_datagram(Datagram(1, [Have(0, 3)]))
    reload_frame = _payloads(_sent())[0][1]
    packets = [
        PcapPacket(0.0, A, 40000, B, 7777, good),  # 1 fine
        PcapPacket(0.1, A, 40000, B, 7777, b"\x00\x01"),  # 2 too short for a channel ID
        PcapPacket(0.2, A, 40000, B, 7777, good + b"\x0e"),  # 3 unknown message type 14
        PcapPacket(0.3, A, 40000, B, 7846, good),  # 4 PPSPP sent to the tracker port
        PcapPacket(0.4, A, 40000, B, 7777, doc_examples()["find"]),  # 5 PPSP-TP to PPSPP port
        PcapPacket(0.5, A, 40000, B, 6084, b"\x80garbage!"),  # 6 garbage framing
        PcapPacket(0.6, A, 40000, B, 6084, reload_frame[:-5]),  # 7 truncated RELOAD frame
        PcapPacket(0.7, A, 40000, B, 9999, b"hello"),  # 8 not ours
        PcapPacket(0.8, A, 40000, B, 7777, good),  # 9 cut by the snapshot length below
        PcapPacket(0.9, A, 40000, B, 7846, doc_examples()["find"][:-1]),  # 10 one byte short
    ]
    write_pcap(path, packets)
    # Cut frame 9 to 30 bytes as a capture with a small snaplen would.
    raw = bytearray(path.read_bytes())
    off = 24
    for _ in range(8):
        off += 16 + struct.unpack_from("<I", raw, off + 8)[0]
    incl = struct.unpack_from("<I", raw, off + 8)[0]
    struct.pack_into("<I", raw, off + 8, 30)
    raw[off + 16 + 30 : off + 16 + incl] = b""
    # ... and end the file in the middle of a record.
    path.write_bytes(bytes(raw) + struct.pack("<IIII", 1, 0, 100, 100) + b"\x45\x00")


def test_hostile_capture_is_reported_and_the_dissection_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "hostile.pcap"
    hostile_capture(path)
    records, summary = dissect.dissect_file(path)
    assert summary["frames"] == 10
    bad = {r.frame: r.malformed[0] for r in records if r.malformed}
    # Frame 5 reads as valid PPSPP (a DATA takes any bytes): a note says what it looks like.
    assert sorted(bad) == [2, 3, 4, 6, 7, 9, 10]
    assert any("looks like PPSP-TP" in n for n in records[4].notes)
    assert "length field 116, datagram of 115 bytes" in bad[10]
    assert "no 4-byte channel ID" in bad[2]
    assert "unknown message type 14" in bad[3]
    assert "token" in bad[4] or "header" in bad[4]
    assert "truncated: captured 2 of 13 payload bytes" in bad[9]
    assert records[7].protocol == "other" and not records[7].malformed
    assert summary["malformed"] == 7
    assert summary["problems"] == ["truncated pcap file: frame 11 has 2 of 100 bytes"]
    code, text = run_cli(str(path))
    assert code == 0
    assert "    [Malformed: datagram of 2 bytes has no 4-byte channel ID (§8.3)]" in text
    assert text.rstrip().endswith(
        "malformed 7\nnote: truncated pcap file: frame 11 has 2 of 100 bytes"
    )


def test_unreadable_files_exit_1(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pcap"
    assert run_cli(str(missing))[0] == 1
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture file at all")
    code, text = run_cli(str(junk))
    assert code == 1 and "not a pcap file" in text
    empty = tmp_path / "empty.pcap"
    write_pcap(empty, [])
    assert run_cli(str(empty)) == (
        0,
        "0 frames: PPSPP 0, PPSP-TP 0, RELOAD 0, other 0; malformed 0\n",
    )


def test_bad_port_map_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap"
    write_pcap(path, [])
    code, text = run_cli(str(path), "--port-map", "http=80")
    assert code == 2 and "PROTO=PORT" in text


def test_json_objects_are_stable(tmp_path: Path) -> None:
    path = tmp_path / "ppspp.pcap"
    ppspp_capture(path)
    objects, summary = json_lines(str(path), "--port-map", "ppspp=40000")
    assert summary == {
        "frames": 4,
        "packets": {"ppspp": 4, "ppsptp": 0, "reload": 0, "other": 0},
        "malformed": 0,
        "problems": [],
    }
    first = objects[0]
    assert list(first) == [
        "frame", "time", "relative_time", "length", "captured", "src", "sport", "dst", "dport",
        "transport", "protocol", "summary", "malformed", "notes", "messages",
    ]  # fmt: skip
    assert (first["frame"], first["src"], first["dport"], first["transport"]) == (1, A, 7777, "udp")
    handshake = first["messages"][0]["fields"]["messages"][0]
    assert handshake["layer"] == "PPSPP HANDSHAKE"
    assert handshake["fields"]["source_channel"] == 0xA
    assert [o["fields"]["code"] for o in handshake["fields"]["options"]] == [0, 1, 2, 3, 4, 6, 255]


def test_cli_main_runs_dissect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ppspp.pcap"
    ppspp_capture(path)
    assert cli.main(["dissect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Frame 4:" in out and "INTEGRITY bin 5 (2-3)" in out


def test_p2pcdn_startup_does_not_import_scapy() -> None:
    code = "import sys, lab.cli; lab.cli.build_parser(); print('scapy' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"


@PROPERTY
@given(
    st.binary(max_size=120), st.sampled_from([7777, 7846, 6084]), st.sampled_from(["udp", "tcp"])
)
def test_garbage_payloads_never_stop_the_dissector(
    payload: bytes, port: int, transport: str
) -> None:
    d = dissect.Dissector()
    if transport == "udp":
        from interop.pcapfile import _ip_frame

        frame = _ip_frame(PcapPacket(0.0, A, 40000, B, port, payload), 228, 1)
    else:
        frame = _tcp_frame(A, 40000, B, port, 1, 0, 0x18, payload)
    rec = d.dissect(dissect.RawFrame(1, 0.0, 228, frame, len(frame)))
    assert rec.protocol in ("ppspp", "ppsptp", "reload", "other")
    json.dumps(rec.as_json())
    assert not any(m.startswith("dissector error") for m in rec.malformed), rec.malformed
    if rec.malformed:
        assert d.malformed == 1


@PROPERTY
@given(st.binary(max_size=200))
def test_garbage_files(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    path = tmp_path_factory.mktemp("garbage") / "g.pcap"
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1) + raw)
    records, summary = dissect.dissect_file(path)
    assert summary["frames"] == len(records)


def test_pcapng_files(tmp_path: Path) -> None:
    from scapy.layers.inet import IP, UDP
    from scapy.utils import wrpcapng

    datagrams = [ppspp_wire.build_datagram(Datagram(i, [Have(0, i)])) for i in range(1, 6)]
    packets = [IP(src=A, dst=B) / UDP(sport=40000, dport=7777) / d for d in datagrams]
    whole = tmp_path / "whole.pcapng"
    wrpcapng(str(whole), packets)
    records, summary = dissect.dissect_file(whole)
    assert summary["packets"]["ppspp"] == 5 and summary["problems"] == []
    assert [r.summary for r in records][-1] == "PPSPP ch 0x00000005 HAVE 0-5"
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(whole.read_bytes()[:-30])
    records, summary = dissect.dissect_file(cut)
    assert len(records) == 4 and summary["malformed"] == 0
    assert summary["problems"][0].startswith("truncated pcapng file")
    assert run_cli(str(cut))[0] == 0
