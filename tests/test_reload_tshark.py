"""Conformance: Wireshark's RELOAD dissectors decode every message type we build (issue 4 item 5).

A request and an answer of every method of RFC 6940 and an ErrorResponse, each with a
security block (a real DER certificate; placeholder signature bytes, a dissector does not
verify), are framed as overlay link data frames (§6.6.2, reload-framing), followed by ack
frames, and written into two captures on port 6084 between 127.0.0.1 addresses: one as UDP
datagrams (interop.pcapfile.write_pcap), one as a TCP connection whose IPv4/TCP frames this
module writes itself (a classic pcap of raw IPv4, no sockets or capture privileges needed).
tshark must report no malformed packet, no expert warning or error, and field values equal to
ours.

Known dissector quirks (Wireshark 4.0), tolerated by name:

* :data:`QUIRK_VERSION_UNKNOWN` — version 0x0a is shown as "Unknown (0x0a)"; the field value
  is right, so it is compared like any other.
* :data:`QUIRK_SIGNER_IDENTITY_NONE` — SignerIdentity type none (3) raises the expert error
  "Unknown identity type"; it is ignored on the one message signed that way, and only there.
* :data:`QUIRK_TRANSACTION_ID_32_BITS` — the transaction ID is labelled uint32; the field value
  holds all 64 bits, which the test compares.
* :data:`QUIRK_OPAQUE_ID_SHOWN_AS_COMPRESSED` — a Destination of type opaque_id_type (3) is
  labelled "compressed"; its bytes are right.
* :data:`QUIRK_EMPTY_KIND_DESCRIPTION` — an empty KindDescription in a ConfigUpdateReq makes the
  XML sub-dissector report "Packet size limited during capture"; our ConfigUpdates carry
  non-empty kind-blocks, as §6.5.4.1 requires anyway.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from interop.pcapfile import PcapPacket, write_pcap
from reload import wire
from reload.messages import (
    AppAttachAns,
    AppAttachReq,
    ArrayEntry,
    ArrayEntryMeta,
    ArrayRange,
    AttachAns,
    AttachReq,
    ChordLeaveData,
    ChordLeaveType,
    ChordRouteQueryAns,
    ChordUpdate,
    ChordUpdateType,
    CompressedDestination,
    ConfigUpdateAns,
    ConfigUpdateReq,
    ConfigUpdateType,
    DataValue,
    Destination,
    DictionaryEntry,
    ErrorCode,
    ErrorResponse,
    FetchAns,
    FetchKindResponse,
    FetchReq,
    FindAns,
    FindKindData,
    FindReq,
    ForwardingHeader,
    ForwardingOption,
    FramedAck,
    FramedData,
    GenericCertificate,
    IceCandidate,
    IpAddressPort,
    JoinAns,
    JoinReq,
    LeaveAns,
    LeaveReq,
    Message,
    MessageBody,
    MessageContents,
    MetaData,
    NodeDestination,
    OpaqueDestination,
    OverlayLinkType,
    PingAns,
    PingReq,
    ProbeAns,
    ProbeInformation,
    ProbeReq,
    ResourceDestination,
    RouteQueryAns,
    RouteQueryReq,
    SecurityBlock,
    Signature,
    SignatureAndHashAlgorithm,
    SignerIdentity,
    StatAns,
    StatKindResponse,
    StatReq,
    StoreAns,
    StoredData,
    StoredDataSpecifier,
    StoredMetaData,
    StoreKindData,
    StoreKindResponse,
    StoreReq,
    UpdateAns,
    UpdateReq,
)

TSHARK = shutil.which("tshark")
pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")

QUIRK_VERSION_UNKNOWN = "version 0x0a shown as Unknown"
QUIRK_SIGNER_IDENTITY_NONE = "Unknown identity type"  # the expert message it raises
QUIRK_TRANSACTION_ID_32_BITS = "transaction_id labelled uint32"
QUIRK_OPAQUE_ID_SHOWN_AS_COMPRESSED = "opaque_id_type destination labelled compressed"
QUIRK_EMPTY_KIND_DESCRIPTION = "empty KindDescription: XML reports packet size limited"

PORT = 6084
PEER_PORT = 40123
OVERLAY = 0x9A3C5E71  # low 32 bits of SHA-1 of the overlay name (§6.3.2); any value will do
NODE_A = bytes.fromhex("0a" * 16)
NODE_B = bytes.fromhex("0b" * 16)
RESOURCE = bytes.fromhex("5e" * 16)
SIP_REGISTRATION, TURN_SERVICE, CERTIFICATE_BY_NODE = 0x1, 0x2, 0x3

# tshark expert severities (epan/proto.h PI_WARN, PI_ERROR).
PI_WARN = 0x00600000


def _certificate() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "reload-tshark-test")])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    uri = f"reload://{NODE_A.hex()}@example.org/"
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


DER = _certificate()
SIGNATURE = Signature(
    SignatureAndHashAlgorithm(4, 1),  # sha256, rsa: the MTI (§6.3.4)
    SignerIdentity(1, 4, bytes(range(32))),  # cert_hash
    b"\x5a" * 64,  # placeholder: a dissector does not verify
)
UNSIGNED = Signature(SignatureAndHashAlgorithm(4, 1), SignerIdentity(3), b"")
CANDIDATES = (
    IceCandidate(
        IpAddressPort(ipaddress.IPv4Address("127.0.0.1"), PORT),
        OverlayLinkType.TLS_TCP_FH_NO_ICE,
        b"1",
        0x7E0000FF,
        1,
    ),
)


def _stored(value: DataValue | ArrayEntry | DictionaryEntry) -> StoredData:
    return StoredData(1_790_000_000_000, 3600, value, SIGNATURE)


#: CHORD-RELOAD overlay-specific data (§10.7, §10.9): the dissector's default topology plug-in.
UPDATE = ChordUpdate(3600, ChordUpdateType.FULL, (NODE_A,), (NODE_B, NODE_A), (NODE_B,))
LEAVE = ChordLeaveData(ChordLeaveType.FROM_SUCC, (NODE_B,))


def _bodies() -> list[tuple[MessageBody, MessageBody]]:
    """A request and its answer for every method (§6.4, §6.5, §7.4)."""
    cert_entry = _stored(ArrayEntry(0, DataValue(True, DER)))  # CERTIFICATE_BY_NODE holds DER
    # SIP-REGISTRATION is a dictionary keyed by the storing Node-ID (RFC 7904 §3).
    uri = b"sip:alice@example.org"
    sip_data = struct.pack(">H", len(uri)) + uri  # SipRegistration uri (RFC 7904 §3)
    sip = _stored(
        DictionaryEntry(
            NODE_A, DataValue(True, b"\x01" + struct.pack(">H", len(sip_data)) + sip_data)
        )
    )
    # TurnServer (§9): iteration, then an IpAddressPort (127.0.0.1:3478).
    turn = _stored(DataValue(True, b"\x01" + b"\x01\x06\x7f\x00\x00\x01\x0d\x96"))
    meta = MetaData(True, len(DER) + 4, 4, bytes(32))
    return [
        (
            ProbeReq((1, 2, 3)),
            ProbeAns((ProbeInformation(1, 500_000_000), ProbeInformation(3, 60))),
        ),
        (
            AttachReq(b"ufrag", b"password", b"passive", CANDIDATES, True),
            AttachAns(b"ufrag2", b"password2", b"active", CANDIDATES, False),
        ),
        (
            StoreReq(
                RESOURCE,
                0,
                (
                    StoreKindData(CERTIFICATE_BY_NODE, 1, (cert_entry,)),
                    StoreKindData(SIP_REGISTRATION, 2, (sip,)),
                ),
            ),
            StoreAns((StoreKindResponse(CERTIFICATE_BY_NODE, 2, (NODE_B,)),)),
        ),
        (
            FetchReq(
                RESOURCE,
                (
                    StoredDataSpecifier(CERTIFICATE_BY_NODE, 0, indices=(ArrayRange(0, 9),)),
                    StoredDataSpecifier(SIP_REGISTRATION, 0, keys=(NODE_A,)),
                    StoredDataSpecifier(TURN_SERVICE),
                ),
            ),
            FetchAns(
                (
                    FetchKindResponse(CERTIFICATE_BY_NODE, 2, (cert_entry,)),
                    FetchKindResponse(TURN_SERVICE, 1, (turn,)),
                )
            ),
        ),
        (
            StatReq(RESOURCE, (StoredDataSpecifier(CERTIFICATE_BY_NODE, indices=()),)),
            StatAns(
                (
                    StatKindResponse(
                        CERTIFICATE_BY_NODE,
                        2,
                        (StoredMetaData(1_790_000_000_000, 3600, ArrayEntryMeta(0, meta)),),
                    ),
                )
            ),
        ),
        (
            FindReq(RESOURCE, (CERTIFICATE_BY_NODE, SIP_REGISTRATION)),
            FindAns((FindKindData(CERTIFICATE_BY_NODE, RESOURCE),)),
        ),
        (JoinReq(NODE_A), JoinAns()),
        (LeaveReq(NODE_A, wire.encode_chord_leave_data(LEAVE)), LeaveAns()),
        (UpdateReq(wire.encode_chord_update(UPDATE)), UpdateAns()),
        (
            RouteQueryReq(False, ResourceDestination(RESOURCE)),
            RouteQueryAns(wire.encode_chord_route_query_ans(ChordRouteQueryAns(NODE_B))),
        ),
        (RouteQueryReq(True, NodeDestination(NODE_B)), RouteQueryAns(NODE_A)),
        (
            UpdateReq(wire.encode_chord_update(ChordUpdate(5, ChordUpdateType.PEER_READY))),
            UpdateAns(),
        ),
        (PingReq(b"\x00" * 32), PingAns(0x0102030405060708, 1_790_000_000_123)),
        (
            AppAttachReq(b"uf", b"pw", 5060, b"passive", CANDIDATES),
            AppAttachAns(b"uf", b"pw", 5060, b"active", CANDIDATES),
        ),
        (
            ConfigUpdateReq(
                ConfigUpdateType.KIND, kinds=(b'<kind-block><kind name="X"/></kind-block>',)
            ),
            ConfigUpdateAns(),
        ),
    ]


@dataclass
class Sent:
    """One message we put in the capture and what tshark must show for it."""

    message: Message
    sequence: int
    outbound: bool  # request direction: 127.0.0.1:PEER_PORT -> 127.0.0.2:6084
    via: Destination | None
    destination: Destination


def _sent() -> list[Sent]:
    out: list[Sent] = []
    seq = 0
    txid = 0xF1E2D3C4B5A69788  # all 64 bits used (QUIRK_TRANSACTION_ID_32_BITS)
    pairs = [*_bodies(), (PingReq(), ErrorResponse(ErrorCode.CONFIG_TOO_OLD, b"seq 3 < 4"))]
    for i, (request, answer) in enumerate(pairs):
        txid += 1
        via = NodeDestination(NODE_A)
        dest = NodeDestination(NODE_B)
        # Vary the forwarding header: compressed via entries, a resource destination, an
        # opaque-id destination and a forwarding option (§6.3.2.2, §6.3.2.3).
        req_via: Destination = CompressedDestination(0x8000 | i) if i % 3 == 1 else via
        req_dest: Destination = ResourceDestination(RESOURCE) if i % 4 == 2 else dest
        options = (ForwardingOption(7, 0, b"\x01"),) if i % 5 == 3 else ()
        for body, outbound in ((request, True), (answer, False)):
            header = ForwardingHeader(
                overlay=OVERLAY,
                configuration_sequence=4,
                ttl=100 if outbound else 99,
                transaction_id=txid,
                max_response_length=5000 if outbound else 0,
                via_list=(req_via,) if outbound else (),
                # The answer's Destination List is the request's reversed Via List (§6.2).
                destination_list=(req_dest,) if outbound else (req_via,),
                options=options if outbound else (),
            )
            block = SecurityBlock((GenericCertificate(0, DER),), SIGNATURE)
            msg = Message(header, MessageContents(body), block)
            seq += 1
            out.append(
                Sent(msg, seq, outbound, req_via if outbound else None, header.destination_list[0])
            )
    # One message signed with SignerIdentity none (QUIRK_SIGNER_IDENTITY_NONE).
    header = ForwardingHeader(
        OVERLAY, 4, 100, txid + 1, destination_list=(OpaqueDestination(b"\x01\x02\x03"),)
    )
    msg = Message(header, MessageContents(PingReq()), SecurityBlock((), UNSIGNED))
    out.append(Sent(msg, seq + 1, True, None, header.destination_list[0]))
    return out


ACKS = (FramedAck(1, 0), FramedAck(7, 0xC0000000))


# --- capture writing ------------------------------------------------------------------------


def _payloads(sent: list[Sent]) -> list[tuple[bool, bytes]]:
    frames = [
        (s.outbound, wire.encode_framing(FramedData(s.sequence, wire.encode_message(s.message))))
        for s in sent
    ]
    frames += [(False, wire.encode_framing(ack)) for ack in ACKS]
    return frames


CLIENT, SERVER = "127.0.0.1", "127.0.0.2"


def _write_udp(path: Path, frames: list[tuple[bool, bytes]]) -> None:
    packets = [
        PcapPacket(float(i), CLIENT, PEER_PORT, SERVER, PORT, p)
        if outbound
        else PcapPacket(float(i), SERVER, PORT, CLIENT, PEER_PORT, p)
        for i, (outbound, p) in enumerate(frames)
    ]
    write_pcap(path, packets)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _tcp_frame(
    src: str, sport: int, dst: str, dport: int, seq: int, ack: int, flags: int, payload: bytes
) -> bytes:
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    tcp = struct.pack(">HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload
    pseudo = s + d + struct.pack(">xBH", 6, len(tcp))
    tcp = tcp[:16] + struct.pack(">H", _checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, s, d)
    return ip[:10] + struct.pack(">H", _checksum(ip)) + ip[12:] + tcp


SYN, ACK_FLAG, PSH = 0x02, 0x10, 0x08


def _write_tcp(path: Path, frames: list[tuple[bool, bytes]]) -> None:
    """A TCP connection 127.0.0.1:PEER_PORT -> 127.0.0.2:6084: handshake, then one segment per
    framed message (TLS-TCP-FH without the TLS, §6.6.2), as a classic raw-IPv4 pcap."""
    c_seq, s_seq = 1000, 5000
    segments = [
        _tcp_frame(CLIENT, PEER_PORT, SERVER, PORT, c_seq, 0, SYN, b""),
        _tcp_frame(SERVER, PORT, CLIENT, PEER_PORT, s_seq, c_seq + 1, SYN | ACK_FLAG, b""),
        _tcp_frame(CLIENT, PEER_PORT, SERVER, PORT, c_seq + 1, s_seq + 1, ACK_FLAG, b""),
    ]
    c_seq, s_seq = c_seq + 1, s_seq + 1
    for outbound, payload in frames:
        if outbound:
            segments.append(
                _tcp_frame(CLIENT, PEER_PORT, SERVER, PORT, c_seq, s_seq, PSH | ACK_FLAG, payload)
            )
            c_seq += len(payload)
        else:
            segments.append(
                _tcp_frame(SERVER, PORT, CLIENT, PEER_PORT, s_seq, c_seq, PSH | ACK_FLAG, payload)
            )
            s_seq += len(payload)
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 228))  # LINKTYPE_IPV4
        for i, frame in enumerate(segments):
            f.write(struct.pack("<IIII", i, 0, len(frame), len(frame)))
            f.write(frame)


# --- tshark ---------------------------------------------------------------------------------

FIELDS = [
    "frame.number",
    "_ws.malformed",
    "_ws.short",
    "_ws.expert.message",
    "_ws.expert.severity",
    "reload_framing.type",
    "reload_framing.sequence",
    "reload_framing.ack_sequence",
    "reload_framing.received",
    "reload.forwarding.token",
    "reload.forwarding.overlay",
    "reload.forwarding.configuration_sequence",
    "reload.forwarding.version",
    "reload.forwarding.ttl",
    "reload.forwarding.fragment",
    "reload.forwarding.trans_id",
    "reload.forwarding.max_response_length",
    "reload.forwarding.via_list.length",
    "reload.forwarding.destination_list.length",
    "reload.forwarding.options.length",
    "reload.forwarding.destination.compressed_id",
    "reload.destination.data.nodeid",
    "reload.message.code",
    "reload.signature.identity.type",
    "reload.certificate.type",
    "reload.error_response.code",
    "reload.kinddata.kind",
    "reload.ping.response_id",
    "reload.joinreq.joining_peer_id",
    "reload.chordupdate.type",
    "reload.uptime",
    "reload.chordroutequeryans.nodeid",
    "reload.chordleavedata.type",
    "reload.leavereq.leaving_peer_id",
]


def _tshark(path: Path) -> list[dict[str, list[str]]]:
    assert TSHARK is not None
    cmd = [
        TSHARK,
        "-n",
        "-r",
        str(path),
        "-T",
        "fields",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=|",
    ]
    cmd += [arg for f in FIELDS for arg in ("-e", f)]
    # tcp.analyze_sequence_numbers stays on: a wrong segment would raise an expert warning.
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    rows = []
    for line in out.splitlines():
        cells = line.split("\t")
        rows.append({f: (c.split("|") if c else []) for f, c in zip(FIELDS, cells, strict=True)})
    return rows


def _one(row: dict[str, list[str]], field: str) -> int:
    values = row[field]
    assert values, f"{field} missing"
    return int(values[0], 0)


def _check(rows: list[dict[str, list[str]]], sent: list[Sent]) -> None:
    rows = [r for r in rows if r["reload_framing.type"]]  # skip the bare TCP handshake
    assert len(rows) == len(sent) + len(ACKS)
    for row, s in zip(rows, sent, strict=False):
        msg, header = s.message, s.message.header
        where = f"frame {row['frame.number']} ({type(msg.contents.body).__name__})"
        assert not row["_ws.malformed"] and not row["_ws.short"], where
        for text, severity in zip(
            row["_ws.expert.message"], row["_ws.expert.severity"], strict=True
        ):
            if int(severity, 0) < PI_WARN:
                continue
            tolerated = (
                text == QUIRK_SIGNER_IDENTITY_NONE
                and msg.security_block.signature.identity.identity_type == 3
            )
            assert tolerated, f"{where}: expert {text!r}"
        assert _one(row, "reload_framing.type") == 128, where
        assert _one(row, "reload_framing.sequence") == s.sequence, where
        assert _one(row, "reload.forwarding.token") == 0xD2454C4F, where
        assert _one(row, "reload.forwarding.overlay") == header.overlay, where
        assert (
            _one(row, "reload.forwarding.configuration_sequence") == header.configuration_sequence
        )
        assert _one(row, "reload.forwarding.version") == 0x0A, where  # QUIRK_VERSION_UNKNOWN
        assert _one(row, "reload.forwarding.ttl") == header.ttl, where
        assert _one(row, "reload.forwarding.fragment") == 0xC0000000, where
        assert _one(row, "reload.forwarding.trans_id") == header.transaction_id, where
        assert _one(row, "reload.forwarding.max_response_length") == header.max_response_length
        assert _one(row, "reload.message.code") == msg.contents.message_code, where
        assert (
            _one(row, "reload.signature.identity.type")
            == msg.security_block.signature.identity.identity_type
        )
        assert [int(v, 0) for v in row["reload.certificate.type"]] == [
            c.type for c in msg.security_block.certificates
        ], where
        encoded_header = wire.encode_forwarding_header(header, 0)
        assert _one(row, "reload.forwarding.via_list.length") == int.from_bytes(
            encoded_header[32:34], "big"
        )
        assert _one(row, "reload.forwarding.destination_list.length") == int.from_bytes(
            encoded_header[34:36], "big"
        )
        assert _one(row, "reload.forwarding.options.length") == int.from_bytes(
            encoded_header[36:38], "big"
        )
        # Node-IDs of the via and destination lists, in order; compressed IDs apart.
        node_ids = [
            d.node_id.hex()
            for d in (*header.via_list, *header.destination_list)
            if isinstance(d, NodeDestination)
        ]
        extra = row["reload.destination.data.nodeid"][len(node_ids) :]
        assert row["reload.destination.data.nodeid"][: len(node_ids)] == node_ids, where
        body = msg.contents.body
        if isinstance(body, RouteQueryReq) and isinstance(body.destination, NodeDestination):
            assert extra == [body.destination.node_id.hex()]
        compressed = [
            d.opaque_id
            for d in header.via_list + header.destination_list
            if isinstance(d, CompressedDestination)
        ]
        assert [
            int(v, 0) for v in row["reload.forwarding.destination.compressed_id"]
        ] == compressed, where
        if isinstance(body, ErrorResponse):
            assert _one(row, "reload.error_response.code") == body.error_code
        if isinstance(body, StoreReq):
            assert [int(v, 0) for v in row["reload.kinddata.kind"]] == [
                k.kind for k in body.kind_data
            ]
        if isinstance(body, PingAns):
            assert _one(row, "reload.ping.response_id") == body.response_id
        if isinstance(body, UpdateReq):
            update = wire.decode_chord_update(body.data)
            assert _one(row, "reload.chordupdate.type") == update.type, where
            assert _one(row, "reload.uptime") == update.uptime, where
        if isinstance(body, LeaveReq):
            assert row["reload.leavereq.leaving_peer_id"] == [body.leaving_peer_id.hex()]
            leave = wire.decode_chord_leave_data(body.overlay_specific_data)
            assert _one(row, "reload.chordleavedata.type") == leave.type, where
        if isinstance(body, RouteQueryAns):
            assert row["reload.chordroutequeryans.nodeid"] == [body.data.hex()], where
        if isinstance(body, JoinReq):
            assert row["reload.joinreq.joining_peer_id"] == [body.joining_peer_id.hex()]
    for row, ack in zip(rows[len(sent) :], ACKS, strict=True):
        assert not row["_ws.malformed"], row["frame.number"]
        assert _one(row, "reload_framing.type") == 129
        assert _one(row, "reload_framing.ack_sequence") == ack.ack_sequence
        assert _one(row, "reload_framing.received") == ack.received


@pytest.fixture(scope="module")
def sent() -> list[Sent]:
    return _sent()


def test_every_method_is_in_the_capture(sent: list[Sent]) -> None:
    codes = {s.message.contents.message_code for s in sent}
    # 13 methods x (request, answer) + error.
    assert len(codes) == 27
    assert len(sent) >= 2 * 13 + 1
    # Each message we put in a capture also round-trips through our own decoder.
    for s in sent:
        assert wire.decode_message(wire.encode_message(s.message)) == s.message


def test_tshark_decodes_udp(tmp_path: Path, sent: list[Sent]) -> None:
    path = tmp_path / "reload-udp.pcap"
    _write_udp(path, _payloads(sent))
    _check(_tshark(path), sent)


def test_tshark_decodes_tcp(tmp_path: Path, sent: list[Sent]) -> None:
    path = tmp_path / "reload-tcp.pcap"
    _write_tcp(path, _payloads(sent))
    _check(_tshark(path), sent)
