"""The scapy PPSP-TP binary layers (interop.scapy_ppsptp) decode like the normative Construct
definition and the fast struct codec of ppsp.tracker.binary: the examples of
docs/ppsp-tp-binary.md, generated messages of every method, fragments; hostile bytes give a
malformed verdict (the same as the codec's), never a crash."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("scapy", reason="scapy is the interop extra")

from scapy.layers.inet import IP, TCP, UDP

from interop import scapy_ppsptp as layers
from ppsp.tracker import binary
from ppsp.tracker.messages import (
    AvailabilityDelta,
    GlobalInfoMessage,
    Message,
    StatQuery,
    StatReport,
    StreamStats,
    SwarmAvailability,
    SwarmPopularity,
    TrackerError,
)
from tests.test_tracker_binary import DOC_EXAMPLES, SWARM_1, SWARM_2, doc_examples
from tests.tracker_strategies import (
    global_info_messages,
    push_hint_messages,
    requests,
    responses,
)

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
messages = st.one_of(requests, responses(), push_hint_messages, global_info_messages)


def scapy_model(data: bytes) -> Message:
    layer = layers.PPSPTP(data)
    assert bytes(layer) == data  # the layer re-encodes byte-exactly
    return layers.to_model(layer, data)


@pytest.mark.parametrize("name", sorted(DOC_EXAMPLES))
def test_documented_examples(name: str) -> None:
    data = doc_examples()[name]
    assert scapy_model(data) == DOC_EXAMPLES[name] == binary.parse(data) == binary.decode(data)


def test_find_example_fields_and_summary() -> None:
    layer = layers.PPSPTP(doc_examples()["find"])
    assert (layer.token, layer.version, layer.method, layer.length) == (0xD0505374, 1, 0x0805, 116)
    assert (layer.fragment_bit, layer.last_fragment, layer.fragment_offset) == (1, 1, 0)
    types = [t.type for t in layer.tlvs]
    assert types == [0x0001, 0x0002, 0x0004, 0x8002, 0x8003]
    swarm = layer.tlvs[1].value
    assert (swarm.raw, swarm.length, layers.id_text(swarm)) == (1, 32, SWARM_1)
    assert layer.summary() == (
        "PPSP-TP FIND tid 81985529216486895 peer=csc-17 swarm=a4aa02ef… peer_num=2 area=paris"
        " ranges=0-63"
    )


def test_find_response_nests_peer_info_tlvs() -> None:
    layer = layers.PPSPTP(doc_examples()["find-response"])
    result = layer.tlvs[1].value
    assert isinstance(result, layers.PPSPTPSwarmResult)
    peers = [t.value for t in result.tlvs]
    assert [layers.id_text(p.peer_id) for p in peers] == ["cacher-3", "csc-23"]
    cacher_addr = peers[0].tlvs[0].value
    assert (cacher_addr.address, cacher_addr.port, cacher_addr.priority) == (
        "203.0.113.10",
        7000,
        10,
    )
    assert peers[1].tlvs[0].value.address == "2001:db8::23"
    assert "result a4aa02ef… SUCCESSFUL 2 peer(s)" in layer.summary()


def test_extension_bodies() -> None:
    report = StatReport(
        "cacher-1",
        "9",
        [StreamStats(SWARM_1, 1, 2, 3, 4)],
        [SwarmAvailability(SWARM_2, ranges=[(0, 2**40)])],  # 64-bit range list (W = 1)
        [AvailabilityDelta(SWARM_1, [(5, 6)], [(7, 8)])],
    )
    data = binary.build(report)
    assert scapy_model(data) == report
    layer = layers.PPSPTP(data)
    availability = layer.tlvs[2].value
    assert availability.ranges.wide == 1 and availability.ranges.ranges[0].end == 2**40
    assert "delta a4aa02ef… +5-6 -7-8" in layer.summary()
    query = StatQuery("cacher-1", "10", [SWARM_1, SWARM_2])
    assert scapy_model(binary.build(query)) == query
    info = GlobalInfoMessage("11", [SwarmPopularity(SWARM_1, 12, 1.5, [(3, 4)])])
    assert scapy_model(binary.build(info)) == info


@PROPERTY
@given(messages)
def test_every_method_decodes_alike(msg: Message) -> None:
    data = binary.build(msg, 77)
    assert binary.encode(msg, 77, binary.MAX_MESSAGE) == [data]
    assert scapy_model(data) == binary.parse(data) == binary.decode(data)


def test_fragments_keep_their_data_raw() -> None:
    msg = DOC_EXAMPLES["find-response"]
    fragments = binary.encode(msg, max_fragment=64)
    assert len(fragments) > 2
    body = b""
    for i, fragment in enumerate(fragments):
        layer = layers.PPSPTP(fragment)
        assert bytes(layer) == fragment
        assert not layer.is_whole or len(fragments) == 1
        assert layer.last_fragment == (i == len(fragments) - 1)
        assert layer.fragment_offset == len(body)
        body += layer.fragment_data
        assert "fragment @" in layer.summary()
        with pytest.raises(TrackerError, match="fragment"):
            layers.to_model(layer, fragment)
    assert body == doc_examples()["find-response"][binary.HEADER_SIZE :]


def test_bound_to_udp_and_tcp_7846() -> None:
    data = doc_examples()["connect"]
    udp = IP(bytes(IP(dst="127.0.0.1") / UDP(sport=5000, dport=7846) / data))
    assert layers.to_model(udp[layers.PPSPTP]) == DOC_EXAMPLES["connect"]
    tcp = IP(bytes(IP(dst="127.0.0.1") / TCP(sport=7846, dport=5000) / data))
    assert tcp[layers.PPSPTP].method == 0x0800


def test_built_by_hand() -> None:
    layer = layers.PPSPTP(
        method=0x0807,
        transaction_id=5,
        tlvs=[layers.PPSPTPTlv(type=1, value=layers.PPSPTPId(value=b"p"))],
    )
    assert binary.parse(bytes(layer)) == StatQuery("p", "5")


# --- hostile input ---------------------------------------------------------------------------


def verdict_agrees(data: bytes) -> None:
    try:
        expected: Message | None = binary.parse(data)
    except TrackerError:
        expected = None
    try:
        layer = layers.PPSPTP(data)  # a hostile message may confuse scapy, never crash it
    except Exception as exc:  # scapy raises on a header shorter than its fixed fields
        assert len(data) < binary.HEADER_SIZE, exc
        assert expected is None
        return
    if expected is None:
        with pytest.raises(TrackerError):
            layers.to_model(layer, data)
    else:
        assert layers.to_model(layer, data) == expected


@PROPERTY
@given(messages, st.data())
def test_mutated_and_truncated_messages(msg: Message, data: st.DataObject) -> None:
    raw = bytearray(binary.build(msg, 3))
    cut = data.draw(st.integers(0, len(raw)))
    verdict_agrees(bytes(raw[:cut]))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] = data.draw(st.integers(0, 255))
    verdict_agrees(bytes(raw))


@PROPERTY
@given(st.binary(max_size=120))
def test_random_bytes_after_a_header(tail: bytes) -> None:
    head = bytes.fromhex("d050537401000805") + bytes(8) + bytes.fromhex("c0000000")
    verdict_agrees(head + (24 + len(tail)).to_bytes(4, "big") + tail)
    verdict_agrees(tail)
