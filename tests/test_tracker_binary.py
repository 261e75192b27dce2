"""The binary PPSP-TP encoding (ppsp.tracker.binary): round trips, the struct codec against the
normative Construct definition, fragmentation and reassembly, fuzzing, and the hex examples of
docs/ppsp-tp-binary.md."""

from __future__ import annotations

import hashlib
import random
import re
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppsp.tracker import binary
from ppsp.tracker.binary import HEADER_SIZE, MAX_MESSAGE, Method, TlvType
from ppsp.tracker.messages import (
    Action,
    AddressType,
    AvailabilityDelta,
    Connect,
    ErrorCode,
    Find,
    GlobalInfoMessage,
    HintUnit,
    Message,
    PeerAddress,
    PeerInfo,
    PeerMode,
    PeerNum,
    PushHint,
    PushHintMessage,
    Response,
    ResponseType,
    Role,
    StatQuery,
    StatReport,
    StreamStats,
    SwarmAction,
    SwarmAvailability,
    SwarmPopularity,
    SwarmResult,
    TrackerError,
)
from tests import tracker_strategies as ts

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# The Construct codec takes milliseconds per message: fewer examples where it runs.
NORMATIVE = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DOC = Path(__file__).resolve().parent.parent / "docs" / "ppsp-tp-binary.md"

U64 = st.integers(0, 2**64 - 1)
M = TypeVar("M", bound=Message)


def with_tid(strategy: st.SearchStrategy[M]) -> st.SearchStrategy[M]:
    """The shared strategies draw any text as transaction ID; the binary header carries a
    64-bit number, which the model writes in decimal."""
    return st.tuples(strategy, U64).map(lambda m: replace(m[0], transaction_id=str(m[1])))


#: Chunk ranges beyond 32 bits, which the shared strategies leave out (the W bit).
wide_ranges = ts.chunk_ranges(max_chunk=2**64 - 1)


@st.composite
def wide_messages(draw: st.DrawFn) -> Message:
    swarm = draw(ts.swarm_ids)
    kind = draw(st.sampled_from(["find", "availability", "delta", "popularity"]))
    tid = str(draw(U64))
    if kind == "find":
        return Find("p", tid, swarm, ranges=draw(wide_ranges))
    if kind == "availability":
        return StatReport(
            "p", tid, availability=[SwarmAvailability(swarm, ranges=draw(wide_ranges))]
        )
    if kind == "delta":
        delta = AvailabilityDelta(swarm, draw(wide_ranges), draw(wide_ranges))
        return StatReport("p", tid, deltas=[delta])
    return GlobalInfoMessage(tid, [SwarmPopularity(swarm, rarest=draw(wide_ranges))])


messages: st.SearchStrategy[Message] = st.one_of(
    with_tid(ts.requests),
    with_tid(ts.responses()),
    with_tid(ts.push_hint_messages),
    with_tid(ts.global_info_messages),
    wide_messages(),
)


def whole(msg: Message, tid: int | None = None) -> bytes:
    (data,) = binary.encode(msg, tid, MAX_MESSAGE)
    return data


def code_of(call: Any, *args: Any) -> ErrorCode | Message:
    """What a decoder makes of some bytes: the message, or the error code it raised."""
    try:
        result: Message = call(*args)
    except TrackerError as exc:
        return exc.code
    return result


# --- round trips and the normative definition ------------------------------------------------


@PROPERTY
@given(messages)
def test_round_trip(msg: Message) -> None:
    data = whole(msg)
    header = binary.peek_header(data)
    assert header.length == len(data)
    assert header.transaction_id == int(msg.transaction_id)
    assert not header.fragmented
    assert binary.decode(data) == msg


@NORMATIVE
@given(messages)
def test_struct_codec_is_byte_equal_to_construct(msg: Message) -> None:
    data = whole(msg)
    assert binary.build(msg) == data
    assert binary.parse(data) == msg


@pytest.mark.parametrize(
    "msg",
    [
        Connect("p", "1", []),
        Find("p", "2", "s"),
        StatReport("p", "3"),
        StatQuery("p", "4"),
        Response("5"),
        Response.error("6", ErrorCode.FORBIDDEN_ACTION),
        PushHintMessage("7", []),
        GlobalInfoMessage("8", []),
    ],
)
def test_smallest_messages(msg: Message) -> None:
    data = whole(msg)
    assert binary.decode(data) == msg
    assert binary.parse(data) == msg
    assert binary.build(msg) == data


def test_method_codes() -> None:
    cases: list[tuple[Message, int]] = [
        (Connect("p", "1", []), 0x0800),
        (Find("p", "1", "s"), 0x0805),
        (StatQuery("p", "1"), 0x0807),
        (StatReport("p", "1"), 0x0808),
        (PushHintMessage("1", []), 0x0820),
        (GlobalInfoMessage("1", []), 0x0821),
        (Response("1"), 0x8800),
    ]
    for msg, method in cases:
        header = binary.peek_header(whole(msg))
        assert header.method == method
        assert header.is_request == (method != 0x8800)
        assert header.is_response == (method == 0x8800)


#: The mapping table of docs/ppsp-tp-binary.md ("Error mapping").
ERROR_TABLE = {
    ErrorCode.BAD_REQUEST: 0x88F0,
    ErrorCode.UNSUPPORTED_VERSION: 0x88F1,
    ErrorCode.FORBIDDEN_ACTION: 0x8810,
    ErrorCode.INTERNAL_SERVER_ERROR: 0x88F4,
    ErrorCode.SERVICE_UNAVAILABLE: 0x88F3,
    ErrorCode.AUTHENTICATION_REQUIRED: 0x8812,
}


@pytest.mark.parametrize(("code", "method"), ERROR_TABLE.items())
def test_error_responses(code: ErrorCode, method: int) -> None:
    data = binary.error_response(77, code)
    assert data == struct.pack(">IBBHQII", 0xD0505374, 1, 0, method, 77, 0xC0000000, 24)
    assert whole(Response.error("77", code)) == data
    assert binary.decode(data) == Response("77", ResponseType.FAILED, code)
    assert binary.error_response("77", code) == data


@pytest.mark.parametrize(
    ("method", "code"),
    [
        (0x88F2, ErrorCode.BAD_REQUEST),  # MESSAGE NOT SUPPORTED
        (0x8811, ErrorCode.FORBIDDEN_ACTION),  # OBJECT NOT FOUND
        (0x8813, ErrorCode.AUTHENTICATION_REQUIRED),  # PAYMENT REQUIRED
    ],
)
def test_gu_codes_without_an_rfc_7846_code_are_understood(method: int, code: ErrorCode) -> None:
    data = struct.pack(">IBBHQII", 0xD0505374, 1, 0, method, 5, 0xC0000000, 24)
    assert binary.decode(data) == Response("5", ResponseType.FAILED, code)


@pytest.mark.parametrize(
    "response",
    [
        Response("1", ResponseType.FAILED, ErrorCode.NO_ERROR),
        Response("1", ResponseType.SUCCESSFUL, ErrorCode.BAD_REQUEST),
    ],
)
def test_response_type_and_error_code_must_agree(response: Response) -> None:
    with pytest.raises(TrackerError):
        binary.encode(response)
    with pytest.raises(TrackerError):
        binary.build(response)


def test_failed_response_keeps_its_body() -> None:
    # §4.3 sends errors without a body, but a body is carried if the model has one.
    response = Response(
        "9", ResponseType.FAILED, ErrorCode.FORBIDDEN_ACTION, swarm_results=[SwarmResult("aa")]
    )
    assert binary.decode(whole(response)) == response


# --- transaction IDs ---------------------------------------------------------------------------


@pytest.mark.parametrize("tid", ["", "abc", "-1", "01", " 1", "1 ", "+1", "1_0", "١٢", str(2**64)])
def test_transaction_id_must_be_decimal_u64(tid: str) -> None:
    with pytest.raises(TrackerError):
        binary.encode(Find("p", tid, "s"))
    with pytest.raises(TrackerError):
        binary.build(Find("p", tid, "s"))


def test_transaction_id_argument_overrides_the_model() -> None:
    msg = Find("p", "not a number", "s")
    data = whole(msg, 2**64 - 1)
    assert binary.peek_header(data).transaction_id == 2**64 - 1
    assert binary.decode(data) == replace(msg, transaction_id=str(2**64 - 1))
    assert binary.build(msg, 2**64 - 1) == data
    with pytest.raises(TrackerError):
        binary.encode(msg, 2**64)
    with pytest.raises(TrackerError):
        binary.encode(msg, -1)


# --- IDs, ranges, fields -----------------------------------------------------------------------


def tlvs_of(data: bytes) -> list[tuple[int, bytes]]:
    """The top-level TLVs of a whole message."""
    out = []
    p = HEADER_SIZE
    while p < len(data):
        t, n = struct.unpack_from(">HI", data, p)
        out.append((t, data[p + 6 : p + 6 + n]))
        p += 6 + n
    assert p == len(data)
    return out


def test_swarm_id_of_a_root_hash_takes_32_bytes() -> None:
    root = hashlib.sha256(b"content").hexdigest()
    data = whole(Find("p", "1", root))
    value = dict(tlvs_of(data))[TlvType.SWARM_ID]
    assert value == b"\x80\x20" + bytes.fromhex(root)


@pytest.mark.parametrize(
    ("swarm_id", "raw"),
    [
        ("abc", b"\x00\x03abc"),  # odd length: text
        ("ABCD", b"\x00\x04ABCD"),  # upper case: text, since hex() could not give it back
        ("ab", b"\x80\x01\xab"),
        ("", b"\x00\x00"),
        ("é", b"\x00\x02\xc3\xa9"),
    ],
)
def test_id_forms(swarm_id: str, raw: bytes) -> None:
    data = whole(Find("p", "1", swarm_id))
    assert dict(tlvs_of(data))[TlvType.SWARM_ID] == raw
    assert binary.decode(data).swarm_id == swarm_id  # type: ignore[union-attr]


def test_text_form_of_hex_id_is_accepted() -> None:
    data = bytearray(whole(Find("p", "1", "x0")))
    i = data.index(b"\x00\x02x0")
    data[i + 2 : i + 4] = b"a0"  # now "a0" sent as text: not what we send, still valid
    assert binary.decode(bytes(data)).swarm_id == "a0"  # type: ignore[union-attr]


def test_id_length_bounded() -> None:
    binary.encode(Find("p", "1", "x" * 1024))
    with pytest.raises(TrackerError):
        binary.encode(Find("p", "1", "x" * 1025))
    with pytest.raises(TrackerError):
        binary.encode(Find("p", "1", "ab" * 1025))
    data = whole(Find("p", "1", "x" * 1024))
    # grow the ID by one byte (length field and message length adjusted)
    i = data.index(b"\x04\x00" + b"x")
    grown = data[:i] + b"\x04\x01" + data[i + 2 :] + b""
    grown = grown.replace(b"x" * 1024, b"x" * 1025)
    grown = fix_lengths(grown, TlvType.SWARM_ID, +1)
    with pytest.raises(TrackerError):
        binary.decode(grown)
    with pytest.raises(TrackerError):
        binary.parse(grown)


def fix_lengths(data: bytes, tlv_type: int, delta: int) -> bytes:
    """Adjust the message length and the length of the first TLV of ``tlv_type`` by delta."""
    out = bytearray(data)
    p = HEADER_SIZE
    while p < len(out):
        t, n = struct.unpack_from(">HI", out, p)
        if t == tlv_type:
            struct.pack_into(">I", out, p + 2, n + delta)
            break
        p += 6 + n
    struct.pack_into(">I", out, 20, len(out))
    return bytes(out)


def test_range_width() -> None:
    narrow = dict(tlvs_of(whole(Find("p", "1", "s", ranges=[(0, 2**32 - 1)]))))
    assert narrow[TlvType.RANGES] == b"\x00\x01" + struct.pack(">II", 0, 2**32 - 1)
    wide = dict(tlvs_of(whole(Find("p", "1", "s", ranges=[(1, 2), (0, 2**32)]))))
    assert wide[TlvType.RANGES] == b"\x80\x02" + struct.pack(">QQQQ", 1, 2, 0, 2**32)
    empty = dict(tlvs_of(whole(Find("p", "1", "s", ranges=[]))))
    assert empty[TlvType.RANGES] == b"\x00\x00"


def test_64_bit_list_of_small_numbers_is_accepted() -> None:
    data = whole(Find("p", "1", "s", ranges=[(3, 4)]))
    i = data.index(b"\x00\x01" + struct.pack(">II", 3, 4))
    longer = data[:i] + b"\x80\x01" + struct.pack(">QQ", 3, 4)
    longer = fix_lengths(longer, TlvType.RANGES, 8)
    assert binary.decode(longer) == Find("p", "1", "s", ranges=[(3, 4)])
    assert binary.parse(longer) == Find("p", "1", "s", ranges=[(3, 4)])


@pytest.mark.parametrize(
    "ranges", [[(5, 4)], [(-1, 3)], [(0, 2**64)], [(0, 1)] * 0x8000, [(0, 1.5)]]
)
def test_bad_ranges_are_not_encoded(ranges: Any) -> None:
    with pytest.raises(TrackerError):
        binary.encode(Find("p", "1", "s", ranges=ranges))


def test_inverted_range_is_not_decoded() -> None:
    data = whole(Find("p", "1", "s", ranges=[(4, 5)]))
    bad = data.replace(struct.pack(">II", 4, 5), struct.pack(">II", 5, 4))
    assert code_of(binary.decode, bad) == ErrorCode.BAD_REQUEST
    assert code_of(binary.parse, bad) == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize(
    "msg",
    [
        Find("p", "1", "s", area="x" * 256),
        Find("p", "1", "s", peer_num=PeerNum(-1)),
        Find("p", "1", "s", peer_num=PeerNum(2**32)),
        Connect("p", "1", [], peer_addresses=[PeerAddress("1.2.3.4", 70000)]),
        Connect("p", "1", [], peer_addresses=[PeerAddress("1.2.3.4", 1, -1)]),
        Connect("p", "1", [], peer_addresses=[PeerAddress("not an address", 1)]),
        Connect("p", "1", [], peer_addresses=[PeerAddress("fe80::1%eth0", 1)]),
        Connect("p", "1", [], peer_addresses=[PeerAddress("1.2.3.4", 1)] * 17),
        Connect("p", "1", [SwarmAction("s", "JUMP", PeerMode.LEECH)]),  # type: ignore[arg-type]
        Connect("p", "1", [], role="KING"),  # type: ignore[arg-type]
        PushHintMessage("1", [PushHint("s", 0, 1, expires_in=float("nan"))]),
        PushHintMessage("1", [PushHint("s", 0, 1, expires_in=-1.0)]),
        GlobalInfoMessage("1", [SwarmPopularity("s", join_rate=float("inf"))]),
        Response("1", swarm_results=[SwarmResult("s", peers=[PeerInfo("q")] * 1025)]),
        Find(17, "1", "s"),  # type: ignore[arg-type]
        Find("p", "1", "s", version=256),
    ],
)
def test_unencodable_models(msg: Message) -> None:
    with pytest.raises(TrackerError):
        binary.encode(msg)
    with pytest.raises(TrackerError):
        binary.build(msg)


def test_peer_group_absent_and_empty_differ() -> None:
    absent = Response("1", swarm_results=[SwarmResult("s", peers=None)])
    empty = Response("1", swarm_results=[SwarmResult("s", peers=[])])
    assert binary.decode(whole(absent)) == absent
    assert binary.decode(whole(empty)) == empty
    assert whole(absent) != whole(empty)


# --- TLV rules -----------------------------------------------------------------------------


def with_tlv(data: bytes, t: int, value: bytes) -> bytes:
    """``data`` with one more top-level TLV at the end (message length adjusted)."""
    out = bytearray(data + struct.pack(">HI", t, len(value)) + value)
    struct.pack_into(">I", out, 20, len(out))
    return bytes(out)


def test_unknown_optional_tlv_is_skipped() -> None:
    msg = Find("p", "1", "s")
    data = with_tlv(whole(msg), 0xFFFE, b"whatever")
    assert binary.decode(data) == msg
    assert binary.parse(data) == msg


def test_known_extension_tlv_out_of_place_is_skipped() -> None:
    msg = Find("p", "1", "s")
    data = with_tlv(whole(msg), TlvType.PUSH_HINT, b"\x01")  # a TLV only responses carry
    assert binary.decode(data) == msg
    assert binary.parse(data) == msg


@pytest.mark.parametrize("t", [0x0009, 0x7FFF, TlvType.SWARM_RESULT, TlvType.STREAM_STATS])
def test_unknown_or_misplaced_required_tlv_is_refused(t: int) -> None:
    data = with_tlv(whole(Find("p", "1", "s")), t, b"\x00\x00")
    assert code_of(binary.decode, data) == ErrorCode.BAD_REQUEST
    assert code_of(binary.parse, data) == ErrorCode.BAD_REQUEST


def test_unknown_tlvs_bounded() -> None:
    data = whole(Find("p", "1", "s"))
    for _ in range(binary.MAX_UNKNOWN_TLVS):
        data = with_tlv(data, 0xFFF0, b"")
    assert binary.decode(data) == Find("p", "1", "s")
    data = with_tlv(data, 0xFFF0, b"")
    assert code_of(binary.decode, data) == ErrorCode.BAD_REQUEST
    assert code_of(binary.parse, data) == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize(
    ("t", "value"),
    [
        (TlvType.PEER_ID, b"\x00\x01q"),  # a second peer ID
        (TlvType.SWARM_ID, b"\x00\x01t"),  # a FIND names one swarm
        (TlvType.AREA, b"x"),
        (TlvType.RANGES, b"\x00\x00"),
    ],
)
def test_repeated_single_tlv_is_refused(t: int, value: bytes) -> None:
    data = with_tlv(whole(Find("p", "1", "s", area="a", ranges=[])), t, value)
    assert code_of(binary.decode, data) == ErrorCode.BAD_REQUEST
    assert code_of(binary.parse, data) == ErrorCode.BAD_REQUEST


def without_tlv(data: bytes, t: int) -> bytes:
    out = data[:HEADER_SIZE] + b"".join(
        struct.pack(">HI", u, len(v)) + v for u, v in tlvs_of(data) if u != t
    )
    return out[:20] + struct.pack(">I", len(out)) + out[24:]


@pytest.mark.parametrize(
    ("msg", "t"),
    [
        (Find("p", "1", "s"), TlvType.PEER_ID),
        (Find("p", "1", "s"), TlvType.SWARM_ID),
        (Connect("p", "1", []), TlvType.PEER_ID),
        (StatReport("p", "1"), TlvType.PEER_ID),
        (StatQuery("p", "1"), TlvType.PEER_ID),
    ],
)
def test_missing_required_tlv_is_refused(msg: Message, t: int) -> None:
    data = without_tlv(whole(msg), t)
    assert code_of(binary.decode, data) == ErrorCode.BAD_REQUEST
    assert code_of(binary.parse, data) == ErrorCode.BAD_REQUEST


def test_tlv_order_is_free() -> None:
    msg = Find("p", "1", "s", PeerNum(3), "a", [(0, 1)])
    data = whole(msg)
    reordered = data[:HEADER_SIZE] + b"".join(
        struct.pack(">HI", t, len(v)) + v for t, v in reversed(tlvs_of(data))
    )
    assert reordered != data
    assert binary.decode(reordered) == msg
    assert binary.parse(reordered) == msg


def test_peer_info_without_peer_group_is_refused() -> None:
    response = Response("1", swarm_results=[SwarmResult("s", peers=[PeerInfo("q")])])
    data = bytearray(whole(response))
    flags_at = HEADER_SIZE + 6 + 1
    assert data[flags_at] == 1
    data[flags_at] = 0
    assert code_of(binary.decode, bytes(data)) == ErrorCode.BAD_REQUEST
    assert code_of(binary.parse, bytes(data)) == ErrorCode.BAD_REQUEST


#: Between them, every TLV type with every optional field present.
EVERY_TLV: list[Message] = [
    Connect(
        "p",
        "1",
        [SwarmAction("aa", Action.JOIN, PeerMode.SEEDER)],
        PeerNum(1, "STUN", 2, 3, 4),
        [PeerAddress("::1", 1, 2, AddressType.PROXY, "wired", "AS1", "PPSP-PP")],
        Role.SOURCE,
        "a",
        [SwarmAvailability("bb", ranges=[(1, 2)])],
    ),
    Find("p", "1", "s", ranges=[(0, 2**40)]),
    StatReport(
        "p", "1", [StreamStats("cc", 1, 2, 3, 4)], deltas=[AvailabilityDelta("dd", [(1, 1)])]
    ),
    StatQuery("p", "1", ["ee", "ff"]),
    Response(
        "1",
        peer_address=PeerAddress("1.2.3.4", 5),
        swarm_results=[
            SwarmResult("s", peers=[PeerInfo("q", [PeerAddress("1.1.1.1", 1)], Role.CSC, "b", [])])
        ],
        push_hints=[PushHint("s", 1, 2)],
        global_info=[SwarmPopularity("s", 1, 0.5, [(3, 4)])],
    ),
]
TOP_LEVEL = [
    (i, j)
    for i, msg in enumerate(EVERY_TLV)
    for j, (t, _) in enumerate(tlvs_of(whole(msg)))
    if t != TlvType.AREA  # its text is the whole value: one byte more is another area
]


def with_value(data: bytes, j: int, value: bytes) -> bytes:
    """``data`` with the value of its ``j``-th TLV replaced (lengths adjusted)."""
    items = tlvs_of(data)
    items[j] = (items[j][0], value)
    out = data[:HEADER_SIZE] + b"".join(struct.pack(">HI", t, len(v)) + v for t, v in items)
    return out[:20] + struct.pack(">I", len(out)) + out[24:]


@pytest.mark.parametrize(("i", "j"), TOP_LEVEL)
def test_value_must_be_consumed_exactly(i: int, j: int) -> None:
    data = whole(EVERY_TLV[i])
    value = tlvs_of(data)[j][1]
    assert binary.decode(with_value(data, j, value)) == EVERY_TLV[i]
    for changed in (value + b"\x00", value[:-1]):
        bad = with_value(data, j, changed)
        assert code_of(binary.decode, bad) == ErrorCode.BAD_REQUEST, changed
        assert code_of(binary.parse, bad) == ErrorCode.BAD_REQUEST, changed


@pytest.mark.parametrize("i", range(len(EVERY_TLV)))
def test_every_single_byte_change_decodes_alike(i: int) -> None:
    """Both codecs agree on every message one byte away from a valid one."""
    data = whole(EVERY_TLV[i])
    for at in range(len(data)):
        for byte in (0x00, 0x01, 0x04, 0x06, 0x80, 0xFF, data[at] ^ 0x01):
            changed = data[:at] + bytes([byte]) + data[at + 1 :]
            assert code_of(binary.decode, changed) == code_of(binary.parse, changed), (at, byte)


# --- header checks (draft-gu-02 §5.2.4) ------------------------------------------------------


def test_header_checks() -> None:
    data = whole(Find("p", "1", "s"))
    assert code_of(binary.decode, data[:23]) == ErrorCode.BAD_REQUEST
    assert code_of(binary.decode, b"\x00" + data[1:]) == ErrorCode.BAD_REQUEST  # token
    assert code_of(binary.decode, data + b"\x00") == ErrorCode.BAD_REQUEST  # length
    assert code_of(binary.decode, data[:-1]) == ErrorCode.BAD_REQUEST
    v2 = data[:4] + b"\x02" + data[5:]
    assert code_of(binary.decode, v2) == ErrorCode.UNSUPPORTED_VERSION
    assert code_of(binary.parse, v2) == ErrorCode.UNSUPPORTED_VERSION
    for method in (0x0801, 0x0806, 0x0830, 0x8801, 0x0000):
        other = data[:6] + struct.pack(">H", method) + data[8:]
        assert code_of(binary.decode, other) == ErrorCode.BAD_REQUEST
        assert code_of(binary.parse, other) == ErrorCode.BAD_REQUEST
    fragment = data[:16] + struct.pack(">I", 0x80000000) + data[20:]
    assert code_of(binary.decode, fragment) == ErrorCode.BAD_REQUEST
    reserved = data[:5] + b"\x7f" + data[6:]  # reserved octet: ignored
    assert binary.decode(reserved) == Find("p", "1", "s")


def test_errors_carry_the_transaction_id_once_read() -> None:
    data = whole(Find("p", "99", "s"))
    with pytest.raises(TrackerError) as err:
        binary.decode(data[:-1])  # shorter than its length field: the header was still read
    assert err.value.transaction_id == "99"
    for decoder in (binary.decode, binary.parse):
        with pytest.raises(TrackerError) as err:
            decoder(fix_lengths(data[:-1], TlvType.SWARM_ID, -1))  # an ID cut short
        assert err.value.transaction_id == "99"
    with pytest.raises(TrackerError) as err:
        binary.Reassembler().feed(data[:4] + b"\x07" + data[5:], "x", 0.0)
    assert (err.value.code, err.value.transaction_id) == (ErrorCode.UNSUPPORTED_VERSION, "99")
    for short_or_not_ours in (data[:23], b"\x00" + data[1:]):
        with pytest.raises(TrackerError) as err:
            binary.decode(short_or_not_ours)
        assert err.value.transaction_id is None


def test_version_other_than_1_is_encoded_and_refused() -> None:
    data = whole(Find("p", "1", "s", version=3))
    assert data[4] == 3
    assert code_of(binary.decode, data) == ErrorCode.UNSUPPORTED_VERSION


def test_peek_header() -> None:
    fragments = binary.encode(Find("p", "12", "s" * 100), max_fragment=64)
    assert len(fragments) > 2
    first = binary.peek_header(fragments[0])
    assert (first.version, first.method, first.transaction_id) == (1, Method.FIND, 12)
    assert first.offset == 0 and not first.last and first.fragmented
    assert first.length == len(fragments[0]) <= 64
    assert binary.is_request(first) and not binary.is_last_fragment(first)
    last = binary.peek_header(fragments[-1])
    assert last.last and last.fragmented and last.offset > 0
    assert binary.is_last_fragment(last)
    response = binary.peek_header(binary.error_response(12, ErrorCode.BAD_REQUEST))
    assert not binary.is_request(response) and binary.is_last_fragment(response)
    assert binary.peek_header(fragments[1] + b"more").length == len(fragments[1])
    with pytest.raises(TrackerError):
        binary.peek_header(fragments[0][:23])
    with pytest.raises(TrackerError):
        binary.peek_header(fragments[0][:20] + struct.pack(">I", 23))


# --- fragmentation and reassembly (draft-gu-02 §5.2.3) --------------------------------------


def check_fragments(fragments: list[bytes], max_fragment: int) -> bytes:
    """The fragments are well-formed; return the body they carry."""
    body = b""
    for i, fragment in enumerate(fragments):
        header = binary.peek_header(fragment)
        assert header.length == len(fragment) <= max_fragment
        assert header.fragment & 0x80000000
        assert header.fragment & 0x3F000000 == 0
        assert header.last == (i == len(fragments) - 1)
        assert header.offset == len(body)
        body += fragment[HEADER_SIZE:]
    sizes = {len(f) for f in fragments[:-1]}
    assert len(sizes) <= 1  # equal-sized fragments (gu-02 §5.2.3)
    return body


@PROPERTY
@given(messages, st.integers(HEADER_SIZE + 8, 400), st.randoms(use_true_random=False))
def test_fragments_reassemble_in_any_order(
    msg: Message, max_fragment: int, rnd: random.Random
) -> None:
    fragments = binary.encode(msg, max_fragment=max_fragment)
    body = check_fragments(fragments, max_fragment)
    assert body == whole(msg)[HEADER_SIZE:]
    if len(fragments) == 1:
        assert binary.peek_header(fragments[0]).fragment == binary.UNFRAGMENTED
    sent = fragments + rnd.sample(fragments, rnd.randint(0, len(fragments)))
    rnd.shuffle(sent)
    reassembler = binary.Reassembler()
    results = [reassembler.feed(f, "src", 0.0) for f in sent]
    done = [m for m in results if m is not None]
    assert done[0] == msg
    # duplicates arriving after completion start a new message, never a second copy early
    assert results.index(done[0]) >= len(fragments) - 1


def batch(swarms: int, seed: int = 1) -> Connect:
    rnd = random.Random(seed)
    availability = []
    for _ in range(swarms):
        swarm_id = rnd.randbytes(32).hex()
        start = rnd.randrange(1000)
        ranges = [(start, start + 99), (start + 200, start + 299), (start + 1000, start + 4999)]
        availability.append(SwarmAvailability(swarm_id, PeerMode.SEEDER, Role.CACHER, ranges))
    return Connect("cacher-1", "123456789", [], role=Role.CACHER, availability=availability)


def test_batch_of_10000_swarms_over_udp() -> None:
    msg = batch(10_000)
    fragments = binary.encode(msg)  # UDP: 1400-byte fragments
    check_fragments(fragments, 1400)
    assert len(fragments) > 400
    rnd = random.Random(7)
    sent = fragments + rnd.sample(fragments, 100)
    rnd.shuffle(sent)
    reassembler = binary.Reassembler()
    results = []
    for fragment in sent:
        message = reassembler.feed(fragment, ("192.0.2.1", 4000), 1.0)
        if message is not None:
            results.append(message)
    assert results == [msg]
    assert reassembler.pending <= 1  # duplicates after completion may start a new one


def test_batch_of_10000_swarms_over_tcp() -> None:
    msg = batch(10_000)
    (frame,) = binary.encode(msg, max_fragment=MAX_MESSAGE)
    header = binary.peek_header(frame)
    assert header.length == len(frame) > 600_000
    assert header.fragment == binary.UNFRAGMENTED
    assert binary.decode(frame) == msg
    assert binary.Reassembler().feed(frame, "tcp", 0.0) == msg


def test_message_size_bounded() -> None:
    huge = Connect("p", "1", [], availability=[SwarmAvailability("x" * 1024)] * 16_300)
    with pytest.raises(TrackerError):
        binary.encode(huge)
    with pytest.raises(ValueError):
        binary.encode(Find("p", "1", "s"), max_fragment=HEADER_SIZE)


def fragments_of(msg: Message, max_fragment: int = 100) -> list[bytes]:
    fragments = binary.encode(msg, max_fragment=max_fragment)
    assert len(fragments) >= 3
    return fragments


BIG = Find("p", "42", "s" * 250)


def test_reassembly_keyed_by_source_and_transaction() -> None:
    reassembler = binary.Reassembler()
    a = fragments_of(BIG)
    b = fragments_of(replace(BIG, transaction_id="43"))
    for fa, fb in zip(a[:-1], b[:-1], strict=True):
        assert reassembler.feed(fa, "x", 0.0) is None
        assert reassembler.feed(fb, "x", 0.0) is None
        assert reassembler.feed(fa, "y", 0.0) is None
    assert reassembler.pending == 3
    assert reassembler.feed(b[-1], "x", 0.0) == replace(BIG, transaction_id="43")
    assert reassembler.feed(a[-1], "y", 0.0) == BIG
    assert reassembler.feed(a[-1], "x", 0.0) == BIG
    assert reassembler.pending == 0
    assert reassembler.buffered == 0


def test_reassembly_timeout() -> None:
    reassembler = binary.Reassembler(timeout=15.0)
    fragments = fragments_of(BIG)
    reassembler.feed(fragments[0], "x", 100.0)
    assert reassembler.expire(115.0) == 0
    assert reassembler.pending == 1
    assert reassembler.expire(115.1) == 1
    assert reassembler.pending == 0 and reassembler.buffered == 0
    # the rest alone cannot complete it any more
    assert all(reassembler.feed(f, "x", 116.0) is None for f in fragments[1:])
    # a late fragment after the timeout restarts the message instead of completing it
    reassembler = binary.Reassembler(timeout=15.0)
    for f in fragments[:-1]:
        reassembler.feed(f, "x", 0.0)
    assert reassembler.feed(fragments[-1], "x", 20.0) is None
    assert reassembler.pending == 1


def test_reassembly_pending_bounded() -> None:
    reassembler = binary.Reassembler(max_pending=4, max_per_source=2)
    first = [fragments_of(replace(BIG, transaction_id=str(i)))[0] for i in range(6)]
    for i, source in enumerate("aabb"):
        assert reassembler.feed(first[i], source, 0.0) is None
    assert reassembler.pending == 4
    with pytest.raises(TrackerError) as err:
        reassembler.feed(first[4], "c", 0.0)
    assert err.value.code == ErrorCode.SERVICE_UNAVAILABLE
    # a source over its own share pushes out its oldest message, not another source's
    assert reassembler.feed(first[4], "a", 0.0) is None
    assert reassembler.pending == 4
    rest = fragments_of(replace(BIG, transaction_id="0"))[1:]
    assert all(reassembler.feed(f, "a", 0.0) is None for f in rest)  # message 0 was dropped
    # after the timeout, old messages make room
    assert reassembler.feed(first[5], "c", 16.0) is None
    assert reassembler.pending == 1


def test_reassembly_bytes_bounded() -> None:
    reassembler = binary.Reassembler(max_buffered=250)
    a, b = fragments_of(BIG), fragments_of(replace(BIG, transaction_id="7"))
    for fragment in (a[0], a[1], b[0]):
        assert reassembler.feed(fragment, "x", 0.0) is None
    assert reassembler.buffered == 3 * (len(a[0]) - HEADER_SIZE)
    with pytest.raises(TrackerError) as err:
        reassembler.feed(b[1], "x", 0.0)
    assert err.value.code == ErrorCode.SERVICE_UNAVAILABLE
    # the message that did not fit is dropped, the other one is kept
    assert reassembler.pending == 1
    assert reassembler.buffered == 2 * (len(a[0]) - HEADER_SIZE)


def test_reassembly_message_size_bounded() -> None:
    reassembler = binary.Reassembler(max_message=200)
    fragments = fragments_of(BIG)
    assert len(whole(BIG)) > 200
    with pytest.raises(TrackerError):
        for f in fragments:
            reassembler.feed(f, "x", 0.0)
    assert reassembler.pending == 0
    with pytest.raises(TrackerError):
        reassembler.feed(whole(BIG), "x", 0.0)


def test_overlapping_fragments_that_agree_are_merged() -> None:
    # a retransmission cut differently (another max_fragment) still completes the message
    small, large = fragments_of(BIG, 60), fragments_of(BIG, 150)
    reassembler = binary.Reassembler()
    for f in small[::2]:
        assert reassembler.feed(f, "x", 0.0) is None
    done = [reassembler.feed(f, "x", 0.0) for f in large]
    assert [m for m in done if m is not None] == [BIG]


def test_overlapping_fragments_that_disagree_drop_the_message() -> None:
    fragments = fragments_of(BIG)
    bad = bytearray(fragments[1])
    bad[-1] ^= 0xFF
    reassembler = binary.Reassembler()
    reassembler.feed(fragments[1], "x", 0.0)
    with pytest.raises(TrackerError):
        reassembler.feed(bytes(bad), "x", 0.0)
    assert reassembler.pending == 0 and reassembler.buffered == 0


def refragment(data: bytes, **changes: int) -> bytes:
    """``data`` (a fragment) with header fields changed."""
    header = binary.peek_header(data)
    fields = {
        "version": header.version,
        "method": header.method,
        "fragment": header.fragment,
    }
    fields.update(changes)
    return (
        struct.pack(
            ">IBBHQII",
            binary.TOKEN,
            fields["version"],
            0,
            fields["method"],
            header.transaction_id,
            fields["fragment"],
            header.length,
        )
        + data[HEADER_SIZE:]
    )


def test_inconsistent_fragments_drop_the_message() -> None:
    fragments = fragments_of(BIG)
    cases = [
        refragment(fragments[1], method=Method.CONNECT),
        # a second "last" fragment ending elsewhere
        refragment(fragments[1], fragment=binary.peek_header(fragments[1]).fragment | 0x40000000),
    ]
    for bad in cases:
        reassembler = binary.Reassembler()
        reassembler.feed(fragments[0], "x", 0.0)
        reassembler.feed(fragments[-1], "x", 0.0)
        with pytest.raises(TrackerError):
            reassembler.feed(bad, "x", 0.0)
        assert reassembler.pending == 0
    # a fragment beyond the end the last fragment set
    reassembler = binary.Reassembler()
    reassembler.feed(fragments[1], "x", 0.0)
    beyond = refragment(fragments[0], fragment=0x80000000 | 10_000)
    reassembler.feed(fragments[-1], "x", 0.0)
    with pytest.raises(TrackerError):
        reassembler.feed(beyond, "x", 0.0)
    # a last fragment ending before a held one
    reassembler = binary.Reassembler()
    reassembler.feed(fragments[-2], "x", 0.0)
    early_end = refragment(fragments[0], fragment=0xC0000000 | 1)
    with pytest.raises(TrackerError):
        reassembler.feed(early_end, "x", 0.0)
    assert reassembler.pending == 0


def test_fragment_with_bad_version_or_method_is_refused_before_buffering() -> None:
    fragments = fragments_of(BIG)
    reassembler = binary.Reassembler()
    with pytest.raises(TrackerError) as err:
        reassembler.feed(refragment(fragments[0], version=2), "x", 0.0)
    assert err.value.code == ErrorCode.UNSUPPORTED_VERSION
    with pytest.raises(TrackerError):
        reassembler.feed(refragment(fragments[0], method=0x0801), "x", 0.0)
    assert reassembler.pending == 0


# --- fuzzing: hostile bytes only ever give TrackerError ----------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    assert isinstance(code_of(binary.decode, data), ErrorCode)


@FUZZ
@given(st.binary(max_size=200))
def test_random_bodies(tail: bytes) -> None:
    """Random bodies behind a valid header, so the TLV parser is what gets fuzzed."""
    for method in (Method.CONNECT, Method.FIND, Method.STAT_REPORT, Method.SUCCESSFUL):
        data = struct.pack(
            ">IBBHQII", binary.TOKEN, 1, 0, method, 1, binary.UNFRAGMENTED, 24 + len(tail)
        )
        result = code_of(binary.decode, data + tail)
        assert isinstance(result, ErrorCode | Message)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid message with bytes changed, inserted or cut; the header's length is usually
    made consistent again so that the damage reaches the body parser."""
    data = bytearray(whole(draw(messages)))
    items = tlvs_of(bytes(data))
    inside_a_value = draw(st.booleans())
    if items and inside_a_value:
        # damage inside one TLV value, its length made consistent: reaches the value layouts
        j = draw(st.integers(0, len(items) - 1))
        value = bytearray(items[j][1])
        i = draw(st.integers(0, len(value)))
        if draw(st.booleans()) or not value:
            value[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif i < len(value):
            value[i] = draw(st.integers(0, 255))
        else:
            del value[-1]
        return with_value(bytes(data), j, bytes(value))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "cut"]))
        i = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[i] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[i : i + draw(st.integers(1, 8))]
    if len(data) >= HEADER_SIZE and draw(st.booleans()):
        data[0:4] = struct.pack(">I", binary.TOKEN)
        data[20:24] = struct.pack(">I", len(data))
    return bytes(data)


@NORMATIVE
@given(mutated())
def test_mutated_messages_decode_alike(data: bytes) -> None:
    fast = code_of(binary.decode, data)
    assert fast == code_of(binary.parse, data)


@PROPERTY
@given(st.lists(mutated(), max_size=6), st.lists(st.binary(max_size=64), max_size=4))
def test_reassembler_fuzz(datagrams: list[bytes], junk: list[bytes]) -> None:
    reassembler = binary.Reassembler(max_pending=4)
    for data in datagrams + junk:
        result = code_of(reassembler.feed, data, "x", 0.0)
        assert result is None or isinstance(result, ErrorCode | Message)
    assert reassembler.pending <= 4


@PROPERTY
@given(messages, st.data())
def test_reassembler_fuzz_fragments(msg: Message, data: st.DataObject) -> None:
    """Damaged fragments of a real message: errors or a message, nothing else; the state
    stays consistent (buffered bytes counted right)."""
    fragments = [bytearray(f) for f in binary.encode(msg, max_fragment=64)]
    for _ in range(data.draw(st.integers(1, 3))):
        f = data.draw(st.sampled_from(fragments))
        i = data.draw(st.integers(0, len(f) - 1))
        f[i] = data.draw(st.integers(0, 255))
    reassembler = binary.Reassembler()
    for f in fragments:
        result = code_of(reassembler.feed, bytes(f), "x", 0.0)
        assert result is None or isinstance(result, ErrorCode | Message)
    held = sum(entry.received for entry in reassembler._pending.values())
    assert reassembler.buffered == held


# --- the hex examples of docs/ppsp-tp-binary.md ------------------------------------------------

SWARM_1 = hashlib.sha256(b"channel-1").hexdigest()
SWARM_2 = hashlib.sha256(b"channel-2").hexdigest()
TID = 0x0123456789ABCDEF

#: The messages the document's examples show, by the name of their example block.
DOC_EXAMPLES: dict[str, Message] = {
    "find": Find("csc-17", str(TID), SWARM_1, PeerNum(2), area="paris", ranges=[(0, 63)]),
    "find-response": Response(
        str(TID),
        peer_address=PeerAddress("198.51.100.7", 6778, type=AddressType.REFLEXIVE),
        swarm_results=[
            SwarmResult(
                SWARM_1,
                ResponseType.SUCCESSFUL,
                [
                    PeerInfo(
                        "cacher-3",
                        [PeerAddress("203.0.113.10", 7000, 10)],
                        Role.CACHER,
                        "paris",
                        [(0, 1023)],
                    ),
                    PeerInfo("csc-23", [PeerAddress("2001:db8::23", 7001)], Role.CSC),
                ],
            )
        ],
    ),
    "connect": Connect(
        "csc-17",
        "2",
        [
            SwarmAction(SWARM_1, Action.LEAVE, PeerMode.LEECH),
            SwarmAction(SWARM_2, Action.JOIN, PeerMode.LEECH),
        ],
        PeerNum(2),
        [PeerAddress("192.0.2.7", 6778)],
        Role.CSC,
        "paris",
    ),
    "push-hint": PushHintMessage(
        "3", [PushHint(SWARM_2, 0, 255, HintUnit.CHUNKS, priority=10, expires_in=60.0)]
    ),
}


def doc_examples() -> dict[str, bytes]:
    """The example blocks of the document: ``<!-- example: NAME -->`` before a fenced block of
    hex bytes, ``#`` starting a comment."""
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- example: ([\w-]+) -->\s*```[^\n]*\n(.*?)```", text, re.S)
    out = {}
    for name, block in blocks:
        hexdigits = "".join(line.split("#", 1)[0] for line in block.splitlines())
        out[name] = bytes.fromhex(hexdigits)
    return out


def test_doc_has_every_example() -> None:
    assert set(doc_examples()) == set(DOC_EXAMPLES)


@pytest.mark.parametrize("name", sorted(DOC_EXAMPLES))
def test_doc_example(name: str) -> None:
    data = doc_examples()[name]
    msg = DOC_EXAMPLES[name]
    assert binary.encode(msg) == [data]
    assert binary.build(msg) == data
    assert binary.decode(data) == msg


def test_doc_tables_match_the_code() -> None:
    """The method and TLV type tables of the document list the codes the module uses."""
    text = DOC.read_text(encoding="utf-8")
    for method in Method:
        assert re.search(rf"\|\s*0x{method.value:04X}\s*\|\s*{method.name}\b", text), method
    for t in TlvType:
        assert re.search(rf"\|\s*0x{t.value:04X}\s*\|\s*{t.name}\b", text), t
    for code, method_code in ERROR_TABLE.items():
        assert re.search(rf"\|\s*0{int(code)}\b[^|\n]*\|\s*0x{method_code:04X}\b", text), code


# --- the contexts of the fast codec are those of the Construct definition --------------------


def test_construct_bodies_allow_the_types_the_fast_codec_allows() -> None:
    def switch_keys(body: Any) -> set[int]:
        tlv = body.subcons[0].subcon.subcon  # "tlvs" / GreedyRange(TLV)
        value = tlv.subcons[1].subcon  # "value" / Exact(Int32ub, Switch)
        return set(value.subcon.cases)

    for method, (context, _) in binary._METHODS.items():
        assert switch_keys(binary.BODIES[method]) == set(context.limits)
