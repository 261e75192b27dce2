"""The normative RELOAD codec (reload.wire) against RFC 6940 §6.3's layouts, with round trips
and fuzzing of every structure and every method body."""

from __future__ import annotations

import contextlib
import ipaddress
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reload import wire
from reload.messages import (
    DEFAULT_DATA_MODELS,
    FORWARDING_HEADER_SIZE,
    RELO_TOKEN,
    UNFRAGMENTED,
    AppAttachAns,
    AppAttachReq,
    ArrayEntry,
    ArrayEntryMeta,
    ArrayRange,
    AttachAns,
    AttachReq,
    ChordLeaveData,
    ChordRouteQueryAns,
    ChordUpdate,
    CompressedDestination,
    ConfigUpdateAns,
    ConfigUpdateReq,
    DataModel,
    DataValue,
    Destination,
    DictionaryEntry,
    DictionaryEntryMeta,
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
    IceExtension,
    IpAddressPort,
    JoinAns,
    JoinReq,
    LeaveAns,
    LeaveReq,
    Message,
    MessageBody,
    MessageCode,
    MessageContents,
    MessageExtension,
    MetaData,
    MetaDataValue,
    NodeDestination,
    OpaqueDestination,
    PingAns,
    PingReq,
    ProbeAns,
    ProbeInformation,
    ProbeReq,
    ReloadDecodeError,
    ReloadEncodeError,
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
    StoredDataValue,
    StoredMetaData,
    StoreKindData,
    StoreKindResponse,
    StoreReq,
    UnknownKindError,
    UpdateAns,
    UpdateReq,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUND = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PRIVATE_KIND = 0xF0000001
MODELS = {**DEFAULT_DATA_MODELS, PRIVATE_KIND: DataModel.SINGLE}


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# --- strategies -----------------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 2**64 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
small = st.binary(max_size=24)


def node_ids(n: int = 16) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


resource_ids = st.binary(max_size=40)

destinations: st.SearchStrategy[Destination] = st.one_of(
    st.builds(NodeDestination, node_ids()),
    st.builds(ResourceDestination, resource_ids),
    st.builds(OpaqueDestination, small),
    st.builds(CompressedDestination, st.integers(0x8000, 0xFFFF)),
)
options = st.builds(ForwardingOption, u8, u8, small)
headers = st.builds(
    ForwardingHeader,
    overlay=u32,
    configuration_sequence=u16,
    ttl=u8,
    transaction_id=u64,
    max_response_length=u32,
    via_list=st.lists(destinations, max_size=3).map(tuple),
    destination_list=st.lists(destinations, min_size=1, max_size=3).map(tuple),
    options=st.lists(options, max_size=2).map(tuple),
    version=u8,
)
identities = st.one_of(
    st.just(SignerIdentity(3)),
    st.builds(SignerIdentity, st.sampled_from([1, 2]), u8, st.binary(max_size=64)),
)
signatures = st.builds(
    Signature, st.builds(SignatureAndHashAlgorithm, u8, u8), identities, st.binary(max_size=80)
)
security_blocks = st.builds(
    SecurityBlock,
    st.lists(st.builds(GenericCertificate, u8, st.binary(max_size=60)), max_size=2).map(tuple),
    signatures,
)
data_values = st.builds(DataValue, st.booleans(), small)


def values_of(model: DataModel) -> st.SearchStrategy[StoredDataValue]:
    if model is DataModel.SINGLE:
        return data_values
    if model is DataModel.ARRAY:
        return st.builds(ArrayEntry, u32, data_values)
    return st.builds(DictionaryEntry, small, data_values)


def metas_of(model: DataModel) -> st.SearchStrategy[MetaDataValue]:
    meta = st.builds(MetaData, st.booleans(), u32, u8, st.binary(max_size=32))
    if model is DataModel.SINGLE:
        return meta
    if model is DataModel.ARRAY:
        return st.builds(ArrayEntryMeta, u32, meta)
    return st.builds(DictionaryEntryMeta, small, meta)


kinds = st.sampled_from(sorted(MODELS))


@st.composite
def stored_data_for(draw: st.DrawFn, kind: int) -> StoredData:
    value = draw(values_of(MODELS[kind]))
    return StoredData(draw(u64), draw(u32), value, draw(signatures))


@st.composite
def store_kind_data(draw: st.DrawFn) -> StoreKindData:
    kind = draw(kinds)
    values = draw(st.lists(stored_data_for(kind), max_size=2))
    return StoreKindData(kind, draw(u64), tuple(values))


@st.composite
def fetch_kind_responses(draw: st.DrawFn) -> FetchKindResponse:
    k = draw(store_kind_data())
    return FetchKindResponse(k.kind, k.generation_counter, k.values)


@st.composite
def stat_kind_responses(draw: st.DrawFn) -> StatKindResponse:
    kind = draw(kinds)
    metas = draw(st.lists(metas_of(MODELS[kind]), max_size=2))
    values = tuple(StoredMetaData(draw(u64), draw(u32), m) for m in metas)
    return StatKindResponse(kind, draw(u64), values)


@st.composite
def specifiers(draw: st.DrawFn) -> StoredDataSpecifier:
    kind = draw(kinds)
    model = MODELS[kind]
    if model is DataModel.ARRAY:
        ranges = draw(st.lists(st.builds(ArrayRange, i32, i32), max_size=3))
        return StoredDataSpecifier(kind, draw(u64), indices=tuple(ranges))
    if model is DataModel.DICTIONARY:
        return StoredDataSpecifier(kind, draw(u64), keys=tuple(draw(st.lists(small, max_size=3))))
    return StoredDataSpecifier(kind, draw(u64))


addresses = st.one_of(
    st.builds(ipaddress.IPv4Address, u32),
    st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1)),
)
addr_ports = st.builds(IpAddressPort, addresses, u16)


@st.composite
def candidates(draw: st.DrawFn) -> IceCandidate:
    ctype = draw(st.sampled_from([1, 2, 4]))
    return IceCandidate(
        addr_port=draw(addr_ports),
        overlay_link=draw(u8),
        foundation=draw(small),
        priority=draw(u32),
        type=ctype,
        rel_addr_port=None if ctype == 1 else draw(addr_ports),
        extensions=tuple(draw(st.lists(st.builds(IceExtension, small, small), max_size=2))),
    )


cand_lists = st.lists(candidates(), max_size=2).map(tuple)
probe_infos = st.one_of(
    st.builds(ProbeInformation, st.sampled_from([1, 2, 3]), u32),
    st.builds(ProbeInformation, st.integers(4, 255), small),
)

#: One strategy per method body class: the round-trip test is parametrized over all of them.
BODIES: dict[Any, st.SearchStrategy[Any]] = {
    ProbeReq: st.builds(ProbeReq, st.lists(u8, max_size=4).map(tuple)),
    ProbeAns: st.builds(ProbeAns, st.lists(probe_infos, max_size=3).map(tuple)),
    AttachReq: st.builds(AttachReq, small, small, small, cand_lists, st.booleans()),
    AttachAns: st.builds(AttachAns, small, small, small, cand_lists, st.booleans()),
    StoreReq: st.builds(
        StoreReq, resource_ids, u8, st.lists(store_kind_data(), max_size=2).map(tuple)
    ),
    StoreAns: st.builds(
        StoreAns,
        st.lists(
            st.builds(StoreKindResponse, u32, u64, st.lists(node_ids(), max_size=3).map(tuple)),
            max_size=2,
        ).map(tuple),
    ),
    FetchReq: st.builds(FetchReq, resource_ids, st.lists(specifiers(), max_size=3).map(tuple)),
    FetchAns: st.builds(FetchAns, st.lists(fetch_kind_responses(), max_size=2).map(tuple)),
    StatReq: st.builds(StatReq, resource_ids, st.lists(specifiers(), max_size=3).map(tuple)),
    StatAns: st.builds(StatAns, st.lists(stat_kind_responses(), max_size=2).map(tuple)),
    FindReq: st.builds(FindReq, resource_ids, st.lists(u32, max_size=4).map(tuple)),
    FindAns: st.builds(
        FindAns, st.lists(st.builds(FindKindData, u32, resource_ids), max_size=3).map(tuple)
    ),
    JoinReq: st.builds(JoinReq, node_ids(), small),
    JoinAns: st.builds(JoinAns, small),
    LeaveReq: st.builds(LeaveReq, node_ids(), small),
    LeaveAns: st.just(LeaveAns()),
    UpdateReq: st.builds(UpdateReq, small),
    UpdateAns: st.builds(UpdateAns, small),
    RouteQueryReq: st.builds(RouteQueryReq, st.booleans(), destinations, small),
    RouteQueryAns: st.builds(RouteQueryAns, small),
    PingReq: st.builds(PingReq, st.binary(max_size=100)),
    PingAns: st.builds(PingAns, u64, u64),
    AppAttachReq: st.builds(AppAttachReq, small, small, u16, small, cand_lists),
    AppAttachAns: st.builds(AppAttachAns, small, small, u16, small, cand_lists),
    ConfigUpdateReq: st.one_of(
        st.builds(ConfigUpdateReq, st.just(1), config_data=st.binary(max_size=60)),
        st.builds(ConfigUpdateReq, st.just(2), kinds=st.lists(small, max_size=3).map(tuple)),
        st.builds(ConfigUpdateReq, st.integers(3, 255), config_data=small),
    ),
    ConfigUpdateAns: st.just(ConfigUpdateAns()),
    ErrorResponse: st.builds(ErrorResponse, u16, small),
}

bodies: st.SearchStrategy[MessageBody] = st.one_of(*BODIES.values())
extensions = st.lists(st.builds(MessageExtension, u16, st.booleans(), small), max_size=2).map(tuple)
messages = st.builds(
    Message, headers, st.builds(MessageContents, bodies, extensions), security_blocks
)


# --- round trips ----------------------------------------------------------------------------


def test_every_method_has_a_body_strategy() -> None:
    # Every message code of §14.8 (and the error) has a model class covered here.
    codes = {cls.CODE for cls in BODIES}
    assert codes == set(MessageCode)


@pytest.mark.parametrize("cls", list(BODIES), ids=lambda c: c.__name__)
@ROUND
@given(data=st.data())
def test_body_round_trip(cls: type, data: st.DataObject) -> None:
    body = data.draw(BODIES[cls])
    msg = Message(
        data.draw(headers), MessageContents(body, data.draw(extensions)), data.draw(security_blocks)
    )
    encoded = wire.encode_message(msg)
    decoded = wire.decode_message(encoded, data_models=MODELS)
    assert decoded == msg
    assert type(decoded.contents.body) is cls
    assert wire.encode_message(decoded) == encoded
    assert int.from_bytes(encoded[16:20], "big") == len(encoded)
    # MessageContents alone (the signature input, §6.3.4) decodes back to the same contents.
    contents = wire.encode_contents(msg.contents)
    assert contents in encoded
    assert wire.decode_contents(contents, data_models=MODELS) == msg.contents


@ROUND
@given(messages)
def test_message_round_trip_node_id_length_20(msg: Message) -> None:
    # NodeIdLength is a configuration parameter (§6.3.1, §11.1): re-draw node IDs at 20 bytes.
    def widen(d: Destination) -> Destination:
        return NodeDestination(d.node_id + b"\x00" * 4) if isinstance(d, NodeDestination) else d

    header = ForwardingHeader(
        msg.header.overlay,
        msg.header.configuration_sequence,
        msg.header.ttl,
        msg.header.transaction_id,
        destination_list=tuple(widen(d) for d in msg.header.destination_list),
    )
    wide = Message(header, MessageContents(PingReq(b"x")), msg.security_block)
    encoded = wire.encode_message(wide, node_id_length=20)
    assert wire.decode_message(encoded, node_id_length=20) == wide
    if any(isinstance(d, NodeDestination) for d in header.destination_list):
        with pytest.raises(ReloadDecodeError):
            wire.decode_message(encoded, node_id_length=16)


@ROUND
@given(headers, st.integers(0, 1000))
def test_forwarding_header_round_trip(header: ForwardingHeader, payload: int) -> None:
    encoded = wire.encode_forwarding_header(header, payload)
    assert int.from_bytes(encoded[16:20], "big") == len(encoded) + payload
    decoded, end = wire.decode_forwarding_header(encoded + b"\x00" * payload)
    assert decoded == header
    assert end == len(encoded)


@ROUND
@given(security_blocks)
def test_security_block_round_trip(block: SecurityBlock) -> None:
    encoded = wire.encode_security_block(block)
    assert wire.decode_security_block(encoded) == block
    assert encoded.endswith(
        wire.encode_signer_identity(block.signature.identity)
        + struct.pack(">H", len(block.signature.signature_value))
        + block.signature.signature_value
    )


@ROUND
@given(st.sampled_from(list(DataModel)), st.data())
def test_stored_data_round_trip(model: DataModel, data: st.DataObject) -> None:
    value = data.draw(values_of(model))
    sd = StoredData(data.draw(u64), data.draw(u32), value, data.draw(signatures))
    encoded = wire.encode_stored_data(sd)
    # §7: length counts the bytes after itself.
    assert int.from_bytes(encoded[:4], "big") == len(encoded) - 4
    assert wire.decode_stored_data(encoded, model) == sd
    assert wire.encode_stored_data_value(value) in encoded


@ROUND
@given(
    st.one_of(st.builds(FramedData, u32, st.binary(max_size=200)), st.builds(FramedAck, u32, u32))
)
def test_framing_round_trip(frame: FramedData | FramedAck) -> None:
    encoded = wire.encode_framing(frame)
    assert wire.decode_framing(encoded) == frame
    assert wire.framed_size(encoded) == len(encoded)
    assert wire.framed_size(encoded + b"\x80rest") == len(encoded)


node_lists = st.lists(node_ids(), max_size=3).map(tuple)
chord_updates = st.one_of(
    st.builds(ChordUpdate, u32, st.just(1)),
    st.builds(ChordUpdate, u32, st.just(2), node_lists, node_lists),
    st.builds(ChordUpdate, u32, st.just(3), node_lists, node_lists, node_lists),
)


@ROUND
@given(chord_updates, st.builds(ChordLeaveData, st.sampled_from([1, 2]), node_lists), node_ids())
def test_chord_structures_round_trip(
    update: ChordUpdate, leave: ChordLeaveData, next_peer: bytes
) -> None:
    data = wire.encode_chord_update(update)
    assert wire.decode_chord_update(data) == update
    # §10.7: uptime(4), type(1), then NodeId<0..2^16-1> lists.
    assert data[:5] == struct.pack(">IB", update.uptime, update.type)
    lists = {1: 0, 2: 2, 3: 3}[update.type]  # peer_ready, neighbors, full
    carried = (update.predecessors, update.successors, update.fingers)[:lists]
    assert len(data) == 5 + sum(2 + 16 * len(x) for x in carried)
    leave_data = wire.encode_chord_leave_data(leave)
    assert wire.decode_chord_leave_data(leave_data) == leave
    answer = wire.encode_chord_route_query_ans(ChordRouteQueryAns(next_peer))
    assert answer == next_peer
    assert wire.decode_chord_route_query_ans(answer) == ChordRouteQueryAns(next_peer)


def test_chord_structure_errors() -> None:
    with pytest.raises(ReloadEncodeError):
        wire.encode_chord_update(ChordUpdate(1, 1, (NODE_A,)))  # peer_ready has no lists
    with pytest.raises(ReloadEncodeError):
        wire.encode_chord_update(ChordUpdate(1, 2, fingers=(NODE_A,)))
    with pytest.raises(ReloadEncodeError):
        wire.encode_chord_update(ChordUpdate(1, 9))
    with pytest.raises(ReloadDecodeError):
        wire.decode_chord_update(h("00000001 04"))  # unknown type
    with pytest.raises(ReloadDecodeError):
        wire.decode_chord_update(h("00000001 01 00"))  # trailing byte
    with pytest.raises(ReloadDecodeError):
        wire.decode_chord_leave_data(h("03 0000"))
    with pytest.raises(ReloadDecodeError):
        wire.decode_chord_route_query_ans(NODE_A[:15])


# --- RFC layout spot checks -----------------------------------------------------------------

NODE_A = bytes(range(16))
SIG_NONE = Signature(SignatureAndHashAlgorithm(4, 1), SignerIdentity(3), b"")


def test_forwarding_header_fixed_part_is_38_bytes() -> None:
    header = ForwardingHeader(
        overlay=0x01020304, configuration_sequence=7, ttl=100, transaction_id=0x1122334455667788
    )
    encoded = wire.encode_forwarding_header(header, payload_length=10)
    assert len(encoded) == FORWARDING_HEADER_SIZE == 38
    assert encoded == h(
        "d2454c4f 01020304 0007 0a 64 c0000000 00000030 1122334455667788 00000000 0000 0000 0000"
    )


def test_unfragmented_fragment_field() -> None:
    # §6.3.2: bit 31 always 1, bit 30 = last fragment, offset 0: 0xC0000000.
    assert UNFRAGMENTED == 0xC0000000
    msg = Message(
        ForwardingHeader(1, 1, 100, 1, destination_list=(NodeDestination(NODE_A),)),
        MessageContents(PingReq()),
        SecurityBlock((), SIG_NONE),
    )
    encoded = wire.encode_message(msg)
    assert encoded[12:16] == h("c0000000")
    assert encoded[:4] == RELO_TOKEN.to_bytes(4, "big") == b"\xd2ELO"
    assert encoded[10] == 0x0A


def test_destination_encodings() -> None:
    # §6.3.2.2: compressed = 2 bytes with the top bit set; else type, length, data.
    assert wire.encode_destination(CompressedDestination(0x8123)) == h("8123")
    assert wire.encode_destination(NodeDestination(NODE_A)) == h("01 10") + NODE_A
    # A ResourceId keeps its own 1-byte length inside the TLV.
    assert wire.encode_destination(ResourceDestination(b"abc")) == h("02 04 03") + b"abc"
    assert wire.encode_destination(OpaqueDestination(b"\x01\x02")) == h("03 03 02 0102")
    with pytest.raises(ReloadEncodeError):
        wire.encode_destination(CompressedDestination(0x7FFF))  # top bit must be 1
    with pytest.raises(ReloadEncodeError):
        wire.encode_destination(NodeDestination(b"short"))


def test_compressed_destination_in_header() -> None:
    header = ForwardingHeader(
        1, 1, 100, 1, destination_list=(CompressedDestination(0x8001), NodeDestination(NODE_A))
    )
    encoded = wire.encode_forwarding_header(header, 0)
    assert encoded[34:36] == h("0014")  # destination_list_length = 2 + 18 bytes
    assert encoded[38:40] == h("8001")
    assert wire.decode_forwarding_header(encoded)[0].destination_list == header.destination_list


def test_ip_address_port_rfc_example() -> None:
    # §6.3.1: 192.0.2.1 port 6084.
    c = wire.IP_ADDRESS_PORT.build(
        {"type": 1, "value": {"addr": ipaddress.IPv4Address("192.0.2.1").packed, "port": 6084}}
    )
    assert c == h("01 06 c0000201 17c4")


def test_message_codes() -> None:
    # §6.3.3: requests odd, answer = request + 1, 0xFFFF error.
    for code in MessageCode:
        if code == MessageCode.ERROR:
            assert int(code) == 0xFFFF and not code.is_request
        elif code.is_request:
            assert MessageCode(code + 1).name == code.name[:-3] + "ANS"
    assert int(ErrorCode.TTL_EXCEEDED) == 0x0A and int(ErrorCode.INVALID_MESSAGE) == 0x14


def test_error_response_layout() -> None:
    contents = MessageContents(ErrorResponse(ErrorCode.CONFIG_TOO_OLD, b"seq"))
    assert wire.encode_contents(contents) == h("ffff 00000007 000f 0003") + b"seq" + h("00000000")
    decoded = wire.decode_contents(wire.encode_contents(contents))
    assert isinstance(decoded.body, ErrorResponse)
    assert decoded.body.error_code is ErrorCode.CONFIG_TOO_OLD


def test_signer_identity_layouts() -> None:
    # §6.3.4: type(1), length(2), then hash_alg and hash<0..255> for the cert hash types.
    assert wire.encode_signer_identity(SignerIdentity(3)) == h("03 0000")
    assert wire.encode_signer_identity(SignerIdentity(1, 4, b"\xaa\xbb")) == h("01 0004 04 02 aabb")
    with pytest.raises(ReloadEncodeError):
        wire.encode_signer_identity(SignerIdentity(3, 4, b"x"))
    with pytest.raises(ReloadEncodeError):
        wire.encode_signer_identity(SignerIdentity(9))


def test_framing_layouts() -> None:
    # §6.6.2: data 128 + sequence + message<0..2^24-1>; ack 129 + ack_sequence + received.
    assert wire.encode_framing(FramedData(5, b"xy")) == h("80 00000005 000002") + b"xy"
    assert wire.encode_framing(FramedAck(5, 0x80000001)) == h("81 00000005 80000001")
    assert wire.framed_size(h("80 000000")) is None
    assert wire.framed_size(b"") is None
    with pytest.raises(ReloadDecodeError):
        wire.framed_size(b"\x82")
    with pytest.raises(ReloadDecodeError):
        wire.decode_framing(h("82 00000005 00000000"))
    with pytest.raises(ReloadDecodeError):
        wire.decode_framing(h("80 00000005 000003") + b"xy")  # truncated message


def test_stat_meta_data_length_counts_the_rest() -> None:
    # §7.4.3.2 StoredMetaData's first field is the length of the rest, as in StoredData.
    body = StatAns((StatKindResponse(2, 1, (StoredMetaData(7, 9, MetaData(True, 3, 4, b"h")),)),))
    encoded = wire.encode_contents(MessageContents(body))
    meta = h("0000000000000007 00000009 01 00000003 04 01") + b"h"
    assert struct.pack(">I", len(meta)) + meta in encoded


# --- decoder checks -------------------------------------------------------------------------


def _ping(**kw: Any) -> bytes:
    header = ForwardingHeader(1, 1, 100, 42, destination_list=(NodeDestination(NODE_A),), **kw)
    return wire.encode_message(
        Message(header, MessageContents(PingReq()), SecurityBlock((), SIG_NONE))
    )


def test_length_field_checked_against_datagram() -> None:
    data = _ping()
    with pytest.raises(ReloadDecodeError, match="length"):
        wire.decode_message(data + b"\x00")
    with pytest.raises(ReloadDecodeError):
        wire.decode_message(data[:-1])
    with pytest.raises(ReloadDecodeError, match="relo_token"):
        wire.decode_message(b"\x00" + data[1:])
    with pytest.raises(ReloadDecodeError, match="38"):
        wire.decode_message(data[:37])


def test_fragment_must_be_reassembled_first() -> None:
    data = _ping(fragment=0x80000000)  # not the last fragment
    with pytest.raises(ReloadDecodeError, match="reassemble"):
        wire.decode_message(data)
    header, _ = wire.decode_forwarding_header(data)  # the header alone decodes
    assert header.is_fragment
    with pytest.raises(ReloadDecodeError, match="bit 31"):
        wire.decode_forwarding_header(_ping(fragment=0x40000000))


def test_version_is_decoded_for_the_node_to_reject() -> None:
    assert wire.decode_message(_ping(version=0x01)).header.version == 0x01


def test_unknown_message_code_is_malformed() -> None:
    data = bytearray(_ping())
    end = FORWARDING_HEADER_SIZE + 18
    data[end : end + 2] = b"\x00\x05"  # 0x05 is unassigned (§14.8)
    with pytest.raises(ReloadDecodeError):
        wire.decode_message(bytes(data))


def test_boolean_other_than_0_or_1_is_malformed() -> None:
    contents = bytearray(
        wire.encode_contents(MessageContents(JoinAns(), (MessageExtension(1, True),)))
    )
    assert contents[-5] == 1  # critical
    contents[-5] = 2
    with pytest.raises(ReloadDecodeError):
        wire.decode_contents(bytes(contents))


def test_unknown_kind() -> None:
    sd = StoredData(1, 2, DataValue(True, b"v"), SIG_NONE)
    store = MessageContents(StoreReq(b"r", 0, (StoreKindData(PRIVATE_KIND, 0, (sd,)),)))
    encoded = wire.encode_contents(store)
    with pytest.raises(UnknownKindError) as info:
        wire.decode_contents(encoded)
    assert info.value.kinds == (PRIVATE_KIND,)
    assert wire.decode_contents(encoded, data_models=MODELS) == store
    fetch = MessageContents(FetchReq(b"r", (StoredDataSpecifier(PRIVATE_KIND),)))
    with pytest.raises(UnknownKindError):
        wire.decode_contents(wire.encode_contents(fetch))
    # The data model decides the layout: ARRAY bytes do not decode as DICTIONARY.
    arr = StoredData(1, 2, ArrayEntry(1, DataValue(True, b"v")), SIG_NONE)
    with pytest.raises(ReloadDecodeError):
        wire.decode_stored_data(wire.encode_stored_data(arr), DataModel.DICTIONARY)


def test_encode_errors() -> None:
    sig = SIG_NONE
    with pytest.raises(ReloadEncodeError):
        wire.encode_contents(MessageContents(PingAns(-1, 0)))
    with pytest.raises(ReloadEncodeError):
        wire.encode_contents(MessageContents(JoinAns(b"x" * 70000)))
    mixed = StoreKindData(
        1,
        0,
        (
            StoredData(1, 1, DataValue(True), sig),
            StoredData(1, 1, ArrayEntry(0, DataValue(True)), sig),
        ),
    )
    with pytest.raises(ReloadEncodeError, match="mixes"):
        wire.encode_contents(MessageContents(StoreReq(b"r", 0, (mixed,))))
    bad_cand = IceCandidate(IpAddressPort(ipaddress.IPv4Address("127.0.0.1"), 1), 4, b"", 1, 2)
    with pytest.raises(ReloadEncodeError):
        wire.encode_contents(MessageContents(AttachReq(b"", b"", b"", (bad_cand,))))
    with pytest.raises(ReloadEncodeError):
        wire.encode_contents(MessageContents(StatReq(b"r", (StoredDataSpecifier(1, 0, (), ()),))))
    with pytest.raises(ValueError):
        wire.decode_message(_ping(), node_id_length=15)


# --- fuzz -----------------------------------------------------------------------------------


def _decoders(data: bytes) -> None:
    for decode in (
        lambda d: wire.decode_message(d, data_models=MODELS),
        wire.decode_forwarding_header,
        lambda d: wire.decode_contents(d, data_models=MODELS),
        wire.decode_security_block,
        wire.decode_framing,
        lambda d: wire.decode_stored_data(d, DataModel.DICTIONARY),
        wire.framed_size,
        wire.decode_chord_update,
        wire.decode_chord_leave_data,
        wire.decode_chord_route_query_ans,
    ):
        with contextlib.suppress(ReloadDecodeError):
            decode(data)


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    _decoders(data)
    _decoders(wire.encode_forwarding_header(ForwardingHeader(1, 1, 1, 1), 0)[:20] + data)


def _patch_length(data: bytearray) -> bytes:
    if len(data) >= 20:
        data[16:20] = len(data).to_bytes(4, "big")
    return bytes(data)


@FUZZ
@given(messages, st.data())
def test_fuzz_mutated_messages(msg: Message, data: st.DataObject) -> None:
    encoded = bytearray(wire.encode_message(msg))
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend", "splice"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(FORWARDING_HEADER_SIZE - 18, len(encoded) - 1))
            encoded[i] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        del encoded[data.draw(st.integers(0, len(encoded) - 1)) :]
    elif kind == "extend":
        encoded += data.draw(st.binary(min_size=1, max_size=8))
    else:
        i = data.draw(st.integers(0, len(encoded)))
        encoded[i:i] = data.draw(st.binary(min_size=1, max_size=4))
    mutated = _patch_length(encoded)
    try:
        decoded = wire.decode_message(mutated, data_models=MODELS)
    except ReloadDecodeError:
        return
    # Whatever decodes re-encodes to the same bytes: no silent truncation or slack. The
    # Construct encoder builds it afresh (reload.fastwire returns the MessageContents it just
    # decoded as received, which relies on this property).
    assert wire.encode_message_construct(decoded) == mutated
    assert wire.encode_message(decoded) == mutated
    _decoders(mutated[FORWARDING_HEADER_SIZE:])
