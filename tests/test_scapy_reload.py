"""The scapy RELOAD layers (interop.scapy_reload) decode what reload.wire builds: the framing
header, the forwarding header, the message contents (method names, the cheap bodies) and the
security block, compared field by field with the model; fragments keep their data raw; hostile
bytes never crash the layers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("scapy", reason="scapy is the interop extra")

from scapy.layers.inet import IP, TCP, UDP

from interop import scapy_reload as layers
from reload import wire
from reload.fragments import fragment
from reload.messages import (
    ErrorResponse,
    FetchReq,
    FindReq,
    ForwardingHeader,
    FramedData,
    JoinAns,
    JoinReq,
    LeaveReq,
    Message,
    MessageContents,
    NodeDestination,
    PingAns,
    PingReq,
    SecurityBlock,
    StoreAns,
    StoreReq,
    UpdateReq,
)
from tests.test_reload_tshark import ACKS, NODE_A, NODE_B, SIGNATURE, _sent

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MESSAGES = [s.message for s in _sent()]


def framed(msg: Message, sequence: int = 1, node_id_length: int = 16) -> bytes:
    return wire.encode_framing(FramedData(sequence, wire.encode_message(msg, node_id_length)))


def check_body(layer: Any, body: object) -> None:
    """The body fields scapy decoded equal the model's."""
    b = layer
    if isinstance(body, PingReq):
        assert bytes(b.padding) == body.padding
    elif isinstance(body, PingAns):
        assert (b.response_id, b.time_ms) == (body.response_id, body.time)
    elif isinstance(body, ErrorResponse):
        assert b.error_code == body.error_code
        assert bytes(b.error_info) == body.error_info
    elif isinstance(body, JoinReq):
        assert bytes(b.joining_peer_id) == body.joining_peer_id
        assert bytes(b.overlay_specific_data) == body.overlay_specific_data
    elif isinstance(body, JoinAns):
        assert bytes(b.overlay_specific_data) == body.overlay_specific_data
    elif isinstance(body, LeaveReq):
        assert bytes(b.leaving_peer_id) == body.leaving_peer_id
    elif isinstance(body, UpdateReq):
        update = wire.decode_chord_update(body.data)
        assert (b.uptime, b.type) == (update.uptime, update.type)
        if update.type != 1:
            assert tuple(b.predecessors) == update.predecessors
            assert tuple(b.successors) == update.successors
        if update.type == 3:
            assert tuple(b.fingers) == update.fingers
    elif isinstance(body, StoreReq):
        assert bytes(b.resource) == body.resource
        assert b.replica_number == body.replica_number
        got = [(k.kind, k.generation_counter, bytes(k.values)) for k in b.kind_data]
        want = [
            (k.kind, k.generation_counter, b"".join(wire.encode_stored_data(v) for v in k.values))
            for k in body.kind_data
        ]
        assert got == want
    elif isinstance(body, StoreAns):
        answers = [(k.kind, k.generation_counter, tuple(k.replicas)) for k in b.kind_responses]
        assert answers == [(k.kind, k.generation_counter, k.replicas) for k in body.kind_responses]
    elif isinstance(body, FetchReq):
        assert bytes(b.resource) == body.resource
        specifiers = [(s.kind, s.generation) for s in b.specifiers]
        assert specifiers == [(s.kind, s.generation) for s in body.specifiers]
    elif isinstance(body, FindReq):
        assert bytes(b.resource) == body.resource
        assert list(b.kinds) == list(body.kinds)


@pytest.mark.parametrize("index", range(len(MESSAGES)))
def test_every_method_decodes_like_the_codec(index: int) -> None:
    msg = MESSAGES[index]
    data = framed(msg, sequence=index + 1)
    layer = layers.RELOADFraming(data)
    assert bytes(layer) == data
    assert (layer.type, layer.sequence, layer.length) == (128, index + 1, len(data) - 8)
    reload_layer = layer[layers.RELOAD]
    assert wire.decode_message(wire.encode_message(msg)) == msg  # the oracle itself
    assert layers.forwarding_header_model(reload_layer) == msg.header
    assert layers.security_block_model(reload_layer) == msg.security_block
    assert reload_layer.message_code == msg.contents.message_code
    assert reload_layer.body_length == len(wire.encode_contents(msg.contents)) - 10
    name = layers.METHOD_NAMES[msg.contents.message_code]
    assert reload_layer.mysummary().startswith(f"RELOAD {name} tid 0x")
    body = msg.contents.body
    if reload_layer.body_length:
        check_body(reload_layer.message_body, body)


def test_the_cheap_bodies_are_decoded() -> None:
    decoded = {
        type(m.contents.body).__name__: type(
            layers.RELOADFraming(framed(m))[layers.RELOAD].message_body
        ).__name__
        for m in MESSAGES
    }
    for body in ("PingReq", "PingAns", "StoreReq", "StoreAns", "FetchReq", "FetchAns",
                 "StatReq", "FindReq", "FindAns", "JoinReq", "LeaveReq", "UpdateReq",
                 "ErrorResponse"):  # fmt: skip
        assert decoded[body] != "RELOADRawBody", body
    assert decoded["AttachReq"] == "RELOADRawBody"  # ICE candidates: shown raw


def test_error_summary_names_the_code() -> None:
    error = next(m for m in MESSAGES if isinstance(m.contents.body, ErrorResponse))
    summary = layers.RELOADFraming(framed(error))[layers.RELOAD].mysummary()
    assert summary.startswith("RELOAD Error tid ")
    assert " Error_Config_Too_Old 'seq 3 < 4' [1 cert(s)" in summary


def test_ack_frames() -> None:
    for ack in ACKS:
        layer = layers.RELOADFraming(wire.encode_framing(ack))
        assert (layer.type, layer.ack_sequence, layer.received) == (
            129,
            ack.ack_sequence,
            ack.received,
        )
        assert (
            layer.mysummary()
            == f"RELOAD-framing ack {ack.ack_sequence} received {ack.received:#010x}"
        )


def test_fragments_keep_their_body_raw() -> None:
    big = Message(
        ForwardingHeader(0x1234, 1, 100, 77, destination_list=(NodeDestination(NODE_B),)),
        MessageContents(PingReq(bytes(3000))),
        SecurityBlock((), SIGNATURE),
    )
    pieces = fragment(wire.encode_message(big), 1200)
    assert len(pieces) > 2
    for piece in pieces:
        layer = layers.RELOAD(piece)
        assert bytes(layer) == piece
        header = layers.forwarding_header_model(layer)
        assert header.transaction_id == 77 and header.destination_list == (NodeDestination(NODE_B),)
    first, last = layers.RELOAD(pieces[0]), layers.RELOAD(pieces[-1])
    assert first.last_fragment == 0 and last.last_fragment == 1 and last.fragment_offset > 0
    assert "fragment @0" in first.mysummary()


def test_node_id_length_from_the_context() -> None:
    node = bytes(range(20))
    msg = Message(
        ForwardingHeader(1, 1, 100, 5, destination_list=(NodeDestination(node),)),
        MessageContents(JoinReq(node, b"x")),
        SecurityBlock((), SIGNATURE),
    )
    data = framed(msg, node_id_length=20)
    with layers.reload_context(20):
        layer = layers.RELOADFraming(data)
    assert bytes(layer[layers.RELOAD].message_body.joining_peer_id) == node


def test_bound_to_udp_and_tcp_6084() -> None:
    data = framed(MESSAGES[0])
    udp = IP(bytes(IP(dst="127.0.0.1") / UDP(sport=6084, dport=40000) / data))
    assert udp.haslayer(layers.RELOAD)
    tcp = IP(bytes(IP(dst="127.0.0.1") / TCP(sport=40000, dport=6084) / data))
    assert tcp[layers.RELOAD].transaction_id == MESSAGES[0].header.transaction_id


# --- hostile input ---------------------------------------------------------------------------


def dissect_safely(data: bytes) -> None:
    """Building the layers from hostile bytes either works or raises inside scapy's own field
    decoding (too short for a fixed field); under UDP the same bytes become Raw."""
    frame = bytes(IP(dst="127.0.0.1") / UDP(sport=6084, dport=6084) / data)
    pkt = IP(frame)  # must not raise
    assert bytes(pkt[UDP].payload) == data


@PROPERTY
@given(st.sampled_from(MESSAGES), st.data())
def test_mutated_and_truncated_messages(msg: Message, data: st.DataObject) -> None:
    raw = bytearray(framed(msg))
    cut = data.draw(st.integers(0, len(raw)))
    dissect_safely(bytes(raw[:cut]))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] = data.draw(st.integers(0, 255))
    dissect_safely(bytes(raw))


@PROPERTY
@given(st.binary(max_size=200))
def test_random_bytes(raw: bytes) -> None:
    dissect_safely(raw)
    dissect_safely(b"\x80\x00\x00\x00\x01" + len(raw).to_bytes(3, "big") + raw)


def test_join_ans_and_node_ids_in_summary() -> None:
    msg = Message(
        ForwardingHeader(1, 1, 100, 5, destination_list=(NodeDestination(NODE_A),)),
        MessageContents(JoinAns(b"")),
        SecurityBlock((), SIGNATURE),
    )
    summary = layers.RELOADFraming(framed(msg))[layers.RELOAD].mysummary()
    assert summary == (
        "RELOAD JoinAns tid 0x0000000000000005 ttl 100 to node 0a0a0a0a… [0 cert(s), signer cert_hash]"
    )


def test_layers_built_by_hand_decode_with_the_codec() -> None:
    built = layers.RELOADFraming(sequence=3) / layers.RELOAD(
        overlay=5,
        transaction_id=9,
        destination_list=[layers.RELOADDestination(type=1, data=NODE_B)],
        message_code=0x17,
        message_body=layers.RELOADPingReq(padding=b"abc"),
        identity_type=3,
    )
    frame = wire.decode_framing(bytes(built))
    assert isinstance(frame, FramedData) and frame.sequence == 3
    msg = wire.decode_message(frame.message)
    assert msg.contents.body == PingReq(b"abc")
    assert msg.header.destination_list == (NodeDestination(NODE_B),)
    assert (msg.header.overlay, msg.header.transaction_id) == (5, 9)
