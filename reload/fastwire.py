"""Hand-written ``struct`` codec for the RELOAD message path (RFC 6940 §6.3, §7; DESIGN §3).

:mod:`reload.wire` is the normative definition (Construct, one structure per RFC structure);
this module encodes and decodes the same bytes without Construct's per-field interpretation,
which costs milliseconds on a Store of a 64 KiB segment or a Fetch answer of a hundred
dictionary entries. It covers what the data path carries:

* the forwarding header (§6.3.2) with its Destination lists (§6.3.2.2) and options (§6.3.2.3);
* MessageContents (§6.3.3) with its extensions, and the SecurityBlock (§6.3.4);
* the bodies of Ping (§6.5.3), Store (§7.4.1), Fetch (§7.4.2), StatReq (§7.4.3.1), Find
  (§7.4.4), Join, Leave and Update (§6.4.2) and the Error response (§6.3.3.1), with StoredData
  (§7), StoredDataSpecifier (§7.4.2.1) and the three data models (§7.2).

Every other body (Attach, AppAttach, Probe, RouteQueryReq, StatAns, ConfigUpdateReq) is
encoded and decoded by the Construct definition in :mod:`reload.wire`, inside the envelope
this module handles.

The results equal :mod:`reload.wire`'s Construct functions for every input, errors included:
the same bytes on encode, the same model on decode, :class:`ReloadEncodeError` where Construct
refuses a value, and for malformed input the same exception class —
:class:`UnknownKindError` with the same Kind-ID when Construct meets an unknown Kind first,
:class:`ReloadDecodeError` otherwise. The parse order is Construct's: fields left to right, a
length prefix checked against the bytes left before its contents are read, every vector and
length-delimited select filled exactly (``tests/test_reload_fastwire.py`` proves it with
hypothesis, on random and mutated messages).

Encoders append the pieces of a message to a list and join once at the end, so a 64 KiB value
is copied into the output once; decoders slice the input directly. The last few decoded
MessageContents are remembered with their bytes, so that re-encoding one (to verify its
signature, §6.3.4, or to forward the message) returns the bytes received without rebuilding.
"""

from __future__ import annotations

import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from reload.messages import (
    DEFAULT_DATA_MODELS,
    DEFAULT_NODE_ID_LENGTH,
    FORWARDING_HEADER_SIZE,
    RELO_TOKEN,
    ArrayEntry,
    ArrayRange,
    CompressedDestination,
    ConfigUpdateAns,
    DataModel,
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
    GenericCertificate,
    JoinAns,
    JoinReq,
    LeaveAns,
    LeaveReq,
    Message,
    MessageBody,
    MessageCode,
    MessageContents,
    MessageExtension,
    NodeDestination,
    OpaqueDestination,
    PingAns,
    PingReq,
    ReloadDecodeError,
    ReloadEncodeError,
    ResourceDestination,
    RouteQueryAns,
    SecurityBlock,
    Signature,
    SignatureAndHashAlgorithm,
    SignerIdentity,
    SignerIdentityType,
    StatReq,
    StoreAns,
    StoredData,
    StoredDataSpecifier,
    StoredDataValue,
    StoreKindData,
    StoreKindResponse,
    StoreReq,
    UnknownKindError,
    UpdateAns,
    UpdateReq,
)

__all__ = [
    "decode_contents",
    "decode_forwarding_header",
    "decode_message",
    "decode_security_block",
    "decode_stored_data",
    "encode_contents",
    "encode_forwarding_header",
    "encode_message",
    "encode_security_block",
    "encode_signature",
    "encode_signer_identity",
    "encode_stored_data",
    "encode_stored_data_value",
]

#: §11.1: node-id-length is between 16 and 20 bytes.
_MIN_NODE_ID_LENGTH = 16
_MAX_NODE_ID_LENGTH = 20

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I32_PAIR = struct.Struct(">ii")  # §7.4.2.1 ArrayRange: int32 first, last
_U16_U32 = struct.Struct(">HI")  # MessageContents: message_code, message_body length
_U32_U64 = struct.Struct(">IQ")  # kind, generation(_counter)
_U64_U32 = struct.Struct(">QI")  # StoredData storage_time, lifetime
_U64_U64 = struct.Struct(">QQ")  # PingAns
_U16_U8 = struct.Struct(">HB")  # MessageExtension type, critical
#: §6.3.4 SignerIdentity of a cert_hash type: identity_type, length, hash_alg, hash length.
_IDENTITY_HEAD = struct.Struct(">BHBB")
#: §6.3.2 fixed part: relo_token overlay configuration_sequence version ttl fragment length
#: transaction_id max_response_length via_list_length destination_list_length options_length.
_HEADER = struct.Struct(">IIHBBIIQIHHH")
assert _HEADER.size == FORWARDING_HEADER_SIZE

# The model's enums as plain ints: cheaper to compare and hash than IntEnum members.
_SINGLE = DataModel.SINGLE
_ARRAY = DataModel.ARRAY
_DICTIONARY = DataModel.DICTIONARY
_CERT_HASH = int(SignerIdentityType.CERT_HASH)
_CERT_HASH_NODE_ID = int(SignerIdentityType.CERT_HASH_NODE_ID)
_IDENTITY_NONE = int(SignerIdentityType.NONE)
_ERROR_CODES: Mapping[int, ErrorCode] = {int(c): c for c in ErrorCode}


# --- §6.3.4: the MessageContents as received ------------------------------------------------
#
# The message signature covers the MessageContents (§6.3.4), so the destination encodes the
# contents it just decoded to verify them, and a forwarding node encodes the message it just
# decoded to send it on. The decoder remembers the bytes of the last few MessageContents it
# produced; encoding one of those very objects (frozen, so unchanged) returns the bytes
# received. They are what encoding would produce: the codec is canonical, every decoded
# message re-encodes to its own bytes (tests/test_reload_wire.py fuzzes that), and §6.3.4
# wants the signature checked over the contents as received anyway.

_RECENT_CONTENTS = 8
#: Larger contents are not remembered: the memory held stays below 8 × 2 × 1 MiB.
_RECENT_MAX_BYTES = 1 << 20
_recent: OrderedDict[int, tuple[MessageContents, int, bytes]] = OrderedDict()
_recent_lock = threading.Lock()


def _remember(contents: MessageContents, nid: int, raw: bytes) -> None:
    # keyed by id(); the entry holds the object, so the id cannot be reused while it is kept
    if len(raw) > _RECENT_MAX_BYTES:
        return
    with _recent_lock:
        _recent[id(contents)] = (contents, nid, raw)
        if len(_recent) > _RECENT_CONTENTS:
            _recent.popitem(last=False)


def _recalled(contents: MessageContents, nid: int) -> bytes | None:
    entry = _recent.get(id(contents))
    if entry is not None and entry[0] is contents and entry[1] == nid:
        return entry[2]
    return None


def _check_node_id_length(node_id_length: int) -> None:
    # reload.wire._params raises the same ValueError.
    if not _MIN_NODE_ID_LENGTH <= node_id_length <= _MAX_NODE_ID_LENGTH:
        raise ValueError(f"NodeIdLength {node_id_length} outside 16..20 (§11.1)")


def _models(data_models: Mapping[int, DataModel] | None) -> Mapping[int, DataModel]:
    return DEFAULT_DATA_MODELS if data_models is None else data_models


# =============================================================================================
# Decoding. Every reader takes the input, an offset and the end of the enclosing length-
# delimited region, and returns (value, offset after it); it never reads past ``end``.
# =============================================================================================


def _short(what: str, off: int) -> ReloadDecodeError:
    return ReloadDecodeError(f"malformed {what} at byte {off}: runs past its enclosing length")


def _bad(what: str, off: int) -> ReloadDecodeError:
    return ReloadDecodeError(f"malformed {what} at byte {off}")


def _opaque8(buf: bytes, off: int, end: int, what: str) -> tuple[bytes, int]:
    """``opaque x<0..2^8-1>`` (§6.3.1)."""
    if off >= end:
        raise _short(what, off)
    stop = off + 1 + buf[off]
    if stop > end:
        raise _short(what, off)
    return buf[off + 1 : stop], stop


def _opaque16(buf: bytes, off: int, end: int, what: str) -> tuple[bytes, int]:
    """``opaque x<0..2^16-1>`` (§6.3.1)."""
    if off + 2 > end:
        raise _short(what, off)
    stop = off + 2 + ((buf[off] << 8) | buf[off + 1])
    if stop > end:
        raise _short(what, off)
    return buf[off + 2 : stop], stop


def _opaque32(buf: bytes, off: int, end: int, what: str) -> tuple[bytes, int]:
    """``opaque x<0..2^32-1>`` (§6.3.1)."""
    if off + 4 > end:
        raise _short(what, off)
    stop = off + 4 + _U32.unpack_from(buf, off)[0]
    if stop > end:
        raise _short(what, off)
    return buf[off + 4 : stop], stop


def _vector_end(buf: bytes, off: int, end: int, size: int, what: str) -> tuple[int, int]:
    """The byte-count prefix of a ``T x<0..2^N-1>`` vector (§6.3.1): (first element, end)."""
    if off + size > end:
        raise _short(what, off)
    n = int.from_bytes(buf[off : off + size], "big")
    start = off + size
    stop = start + n
    if stop > end:
        raise _short(what, off)
    return start, stop


def _node_id(buf: bytes, off: int, end: int, nid: int, what: str) -> tuple[bytes, int]:
    stop = off + nid
    if stop > end:
        raise _short(what, off)
    return buf[off:stop], stop


# --- §6.3.2 forwarding header ----------------------------------------------------------------


def _destination(buf: bytes, off: int, end: int, nid: int) -> tuple[Destination, int]:
    """§6.3.2.2 Destination: the 2-byte compressed form (top bit 1) or type/length/data."""
    if off >= end:
        raise _short("Destination", off)
    first = buf[off]
    if off + 2 > end:
        raise _short("Destination", off)
    if first >= 0x80:
        return CompressedDestination((first << 8) | buf[off + 1]), off + 2
    start = off + 2
    stop = start + buf[off + 1]
    if stop > end:
        raise _short("Destination", off)
    if first == 1:  # node: NodeId, filling the TLV exactly
        if stop - start != nid:
            raise _bad("node Destination", off)
        return NodeDestination(buf[start:stop]), stop
    if first in (2, 3):  # resource: ResourceId; opaque_id_type: opaque<0..2^8-1>
        if start == stop or start + 1 + buf[start] != stop:
            raise _bad("Destination", off)
        data = buf[start + 1 : stop]
        return (ResourceDestination(data) if first == 2 else OpaqueDestination(data)), stop
    raise _bad(f"Destination (unknown type {first})", off)


def _destination_list(buf: bytes, off: int, end: int, nid: int) -> tuple[Destination, ...]:
    out = []
    while off < end:
        d, off = _destination(buf, off, end, nid)
        out.append(d)
    return tuple(out)


def _options(buf: bytes, off: int, end: int) -> tuple[ForwardingOption, ...]:
    """§6.3.2.3 ForwardingOption: type, flags, opaque<0..2^16-1> (unknown types allowed)."""
    out = []
    while off < end:
        if off + 2 > end:
            raise _short("ForwardingOption", off)
        t, flags = buf[off], buf[off + 1]
        value, off = _opaque16(buf, off + 2, end, "ForwardingOption")
        out.append(ForwardingOption(t, flags, value))
    return tuple(out)


def _header(buf: bytes, end: int, nid: int) -> tuple[ForwardingHeader, int]:
    """§6.3.2: the 38-byte fixed part, then the three lists whose lengths it gives. The
    caller has checked relo_token and that at least 38 bytes are there."""
    (
        _token,
        overlay,
        configuration_sequence,
        version,
        ttl,
        fragment,
        _length,
        transaction_id,
        max_response_length,
        via_len,
        dest_len,
        opt_len,
    ) = _HEADER.unpack_from(buf, 0)
    via_end = FORWARDING_HEADER_SIZE + via_len
    if via_end > end:
        raise _short("via list", FORWARDING_HEADER_SIZE)
    via = _destination_list(buf, FORWARDING_HEADER_SIZE, via_end, nid)
    dest_end = via_end + dest_len
    if dest_end > end:
        raise _short("destination list", via_end)
    dest = _destination_list(buf, via_end, dest_end, nid)
    opt_end = dest_end + opt_len
    if opt_end > end:
        raise _short("forwarding options", dest_end)
    options = _options(buf, dest_end, opt_end)
    header = ForwardingHeader(
        overlay=overlay,
        configuration_sequence=configuration_sequence,
        ttl=ttl,
        transaction_id=transaction_id,
        max_response_length=max_response_length,
        via_list=via,
        destination_list=dest,
        options=options,
        fragment=fragment,
        version=version,
    )
    return header, opt_end


def _check_length(data: bytes) -> None:
    """§6.3.2: at least the fixed header, the right relo_token, a length field equal to
    ``len(data)`` and bit 31 of the fragment field set. Raises :class:`ReloadDecodeError`."""
    n = len(data)
    if n < FORWARDING_HEADER_SIZE:
        raise ReloadDecodeError(f"{n} bytes: shorter than the 38-byte forwarding header (§6.3.2)")
    token = _U32.unpack_from(data, 0)[0]
    if token != RELO_TOKEN:
        raise ReloadDecodeError(f"relo_token {token:#010x} is not 0xd2454c4f (§6.3.2)")
    length = _U32.unpack_from(data, 16)[0]
    if length != n:
        raise ReloadDecodeError(f"length field says {length} bytes, the message has {n} (§6.3.2)")
    fragment = _U32.unpack_from(data, 12)[0]
    if not fragment & 0x80000000:
        raise ReloadDecodeError(f"fragment field {fragment:#010x}: bit 31 must be 1 (§6.3.2)")


# --- §6.3.4 security block -------------------------------------------------------------------


def _signature(buf: bytes, off: int, end: int) -> tuple[Signature, int]:
    """§6.3.4 Signature: SignatureAndHashAlgorithm, SignerIdentity, signature_value."""
    if off + 5 > end:
        raise _short("Signature", off)
    hash_alg, sig_alg, identity_type = buf[off], buf[off + 1], buf[off + 2]
    start = off + 5
    stop = start + ((buf[off + 3] << 8) | buf[off + 4])
    if stop > end:
        raise _short("SignerIdentity", off + 2)
    if identity_type in (_CERT_HASH, _CERT_HASH_NODE_ID):
        if start >= stop:
            raise _short("SignerIdentity", start)
        h, after = _opaque8(buf, start + 1, stop, "SignerIdentity hash")
        if after != stop:
            raise _bad("SignerIdentity", start)
        identity = SignerIdentity(identity_type, buf[start], h)
    elif identity_type == _IDENTITY_NONE:
        if start != stop:
            raise _bad("SignerIdentity none", start)
        identity = SignerIdentity(identity_type)
    else:
        raise _bad(f"SignerIdentity (unknown type {identity_type})", off + 2)
    value, off = _opaque16(buf, stop, end, "signature_value")
    return Signature(SignatureAndHashAlgorithm(hash_alg, sig_alg), identity, value), off


def _security_block(buf: bytes, off: int, end: int) -> tuple[SecurityBlock, int]:
    """§6.3.4 SecurityBlock: GenericCertificate certificates<0..2^16-1>, Signature."""
    pos, stop = _vector_end(buf, off, end, 2, "certificates")
    certs = []
    while pos < stop:
        t = buf[pos]
        cert, pos = _opaque16(buf, pos + 1, stop, "GenericCertificate")
        certs.append(GenericCertificate(t, cert))
    signature, off = _signature(buf, stop, end)
    return SecurityBlock(tuple(certs), signature), off


# --- §7 storage structures -------------------------------------------------------------------


def _data_value(buf: bytes, off: int, end: int) -> tuple[DataValue, int]:
    """§7.2 DataValue: Boolean exists, opaque value<0..2^32-1>."""
    if off >= end:
        raise _short("DataValue", off)
    exists = buf[off]
    if exists > 1:
        raise _bad("DataValue exists (not a Boolean)", off)
    value, off = _opaque32(buf, off + 1, end, "DataValue")
    return DataValue(bool(exists), value), off


def _stored_value(buf: bytes, off: int, end: int, model: DataModel) -> tuple[StoredDataValue, int]:
    """§7.2 StoredDataValue, selected by the Kind's data model."""
    if model is _DICTIONARY:
        key, off = _opaque16(buf, off, end, "DictionaryEntry key")
        value, off = _data_value(buf, off, end)
        return DictionaryEntry(key, value), off
    if model is _ARRAY:
        if off + 4 > end:
            raise _short("ArrayEntry", off)
        index = _U32.unpack_from(buf, off)[0]
        value, off = _data_value(buf, off + 4, end)
        return ArrayEntry(index, value), off
    return _data_value(buf, off, end)


def _stored_data(
    buf: bytes, off: int, end: int, kind: int, model: DataModel | None
) -> tuple[StoredData, int]:
    """§7 StoredData: uint32 length (of what follows), storage_time, lifetime, value,
    signature. The data model is the enclosing Kind's (§7.2)."""
    if off + 4 > end:
        raise _short("StoredData", off)
    start = off + 4
    stop = start + _U32.unpack_from(buf, off)[0]
    if stop > end:
        raise _short("StoredData", off)
    if start + 12 > stop:
        raise _short("StoredData", start)
    storage_time, lifetime = _U64_U32.unpack_from(buf, start)
    if model is None:
        raise UnknownKindError((kind,))
    value, pos = _stored_value(buf, start + 12, stop, model)
    signature, pos = _signature(buf, pos, stop)
    if pos != stop:
        raise _bad("StoredData (bytes after the signature)", pos)
    return StoredData(storage_time, lifetime, value, signature), stop


def _stored_data_list(
    buf: bytes, off: int, end: int, kind: int, model: DataModel | None
) -> tuple[tuple[StoredData, ...], int]:
    """``StoredData values<0..2^32-1>`` (§7.4.1.1, §7.4.2.2)."""
    pos, stop = _vector_end(buf, off, end, 4, "StoredData values")
    values = []
    while pos < stop:
        value, pos = _stored_data(buf, pos, stop, kind, model)
        values.append(value)
    return tuple(values), stop


def _specifier(
    buf: bytes, off: int, end: int, models: Mapping[int, DataModel]
) -> tuple[StoredDataSpecifier, int]:
    """§7.4.2.1 StoredDataSpecifier: kind, generation, then the model's selector inside a
    uint16 length."""
    if off + 14 > end:
        raise _short("StoredDataSpecifier", off)
    kind, generation = _U32_U64.unpack_from(buf, off)
    start = off + 14
    stop = start + _U16.unpack_from(buf, off + 12)[0]
    if stop > end:
        raise _short("StoredDataSpecifier", off)
    model = models.get(kind)
    if model is None:
        raise UnknownKindError((kind,))
    if model is _SINGLE:
        if start != stop:
            raise _bad("StoredDataSpecifier (single value carries no selector)", start)
        return StoredDataSpecifier(kind, generation), stop
    pos, vstop = _vector_end(buf, start, stop, 2, "StoredDataSpecifier selector")
    if vstop != stop:
        raise _bad("StoredDataSpecifier (bytes after the selector)", vstop)
    if model is _ARRAY:
        indices = []
        while pos < vstop:
            if pos + 8 > vstop:
                raise _short("ArrayRange", pos)
            first, last = _I32_PAIR.unpack_from(buf, pos)
            indices.append(ArrayRange(first, last))
            pos += 8
        return StoredDataSpecifier(kind, generation, indices=tuple(indices)), stop
    keys = []
    while pos < vstop:
        key, pos = _opaque16(buf, pos, vstop, "DictionaryKey")
        keys.append(key)
    return StoredDataSpecifier(kind, generation, keys=tuple(keys)), stop


# --- bodies (each fills [off, end) exactly, or raises) ---------------------------------------

_BodyDecoder = Callable[[bytes, int, int, int, Mapping[int, DataModel]], MessageBody]


def _expect_end(pos: int, end: int, what: str) -> None:
    if pos != end:
        raise _bad(f"{what} (bytes after the body)", pos)


def _store_req(
    buf: bytes, off: int, end: int, nid: int, models: Mapping[int, DataModel]
) -> StoreReq:
    """§7.4.1.1 StoreReq: resource, replica_number, StoreKindData kind_data<0..2^32-1>."""
    resource, off = _opaque8(buf, off, end, "StoreReq resource")
    if off >= end:
        raise _short("StoreReq", off)
    replica_number = buf[off]
    pos, stop = _vector_end(buf, off + 1, end, 4, "StoreReq kind_data")
    kind_data = []
    while pos < stop:
        if pos + 12 > stop:
            raise _short("StoreKindData", pos)
        kind, generation = _U32_U64.unpack_from(buf, pos)
        values, pos = _stored_data_list(buf, pos + 12, stop, kind, models.get(kind))
        kind_data.append(StoreKindData(kind, generation, values))
    _expect_end(stop, end, "StoreReq")
    return StoreReq(resource, replica_number, tuple(kind_data))


def _store_ans(
    buf: bytes, off: int, end: int, nid: int, models: Mapping[int, DataModel]
) -> StoreAns:
    """§7.4.1.2 StoreAns: StoreKindResponse kind_responses<0..2^16-1>."""
    pos, stop = _vector_end(buf, off, end, 2, "StoreAns kind_responses")
    responses = []
    while pos < stop:
        if pos + 12 > stop:
            raise _short("StoreKindResponse", pos)
        kind, generation = _U32_U64.unpack_from(buf, pos)
        rpos, rstop = _vector_end(buf, pos + 12, stop, 2, "StoreKindResponse replicas")
        replicas = []
        while rpos < rstop:
            replica, rpos = _node_id(buf, rpos, rstop, nid, "replica NodeId")
            replicas.append(replica)
        responses.append(StoreKindResponse(kind, generation, tuple(replicas)))
        pos = rstop
    _expect_end(stop, end, "StoreAns")
    return StoreAns(tuple(responses))


def _fetch_req(
    buf: bytes, off: int, end: int, nid: int, models: Mapping[int, DataModel]
) -> FetchReq:
    resource, specifiers = _specifiers(buf, off, end, models)
    return FetchReq(resource, specifiers)


def _stat_req(buf: bytes, off: int, end: int, nid: int, models: Mapping[int, DataModel]) -> StatReq:
    resource, specifiers = _specifiers(buf, off, end, models)
    return StatReq(resource, specifiers)


def _specifiers(
    buf: bytes, off: int, end: int, models: Mapping[int, DataModel]
) -> tuple[bytes, tuple[StoredDataSpecifier, ...]]:
    """§7.4.2.1 FetchReq (and §7.4.3.1 StatReq): resource, specifiers<0..2^16-1>."""
    resource, off = _opaque8(buf, off, end, "FetchReq resource")
    pos, stop = _vector_end(buf, off, end, 2, "FetchReq specifiers")
    specifiers = []
    while pos < stop:
        specifier, pos = _specifier(buf, pos, stop, models)
        specifiers.append(specifier)
    _expect_end(stop, end, "FetchReq")
    return resource, tuple(specifiers)


def _fetch_ans(
    buf: bytes, off: int, end: int, nid: int, models: Mapping[int, DataModel]
) -> FetchAns:
    """§7.4.2.2 FetchAns: FetchKindResponse kind_responses<0..2^32-1>."""
    pos, stop = _vector_end(buf, off, end, 4, "FetchAns kind_responses")
    responses = []
    while pos < stop:
        if pos + 12 > stop:
            raise _short("FetchKindResponse", pos)
        kind, generation = _U32_U64.unpack_from(buf, pos)
        values, pos = _stored_data_list(buf, pos + 12, stop, kind, models.get(kind))
        responses.append(FetchKindResponse(kind, generation, values))
    _expect_end(stop, end, "FetchAns")
    return FetchAns(tuple(responses))


def _find_req(buf: bytes, off: int, end: int, nid: int, models: Mapping[int, DataModel]) -> FindReq:
    """§7.4.4.1 FindReq: resource, KindId kinds<0..2^8-1>."""
    resource, off = _opaque8(buf, off, end, "FindReq resource")
    pos, stop = _vector_end(buf, off, end, 1, "FindReq kinds")
    if (stop - pos) % 4:
        raise _bad("FindReq kinds", pos)
    kinds = struct.unpack_from(f">{(stop - pos) // 4}I", buf, pos)
    _expect_end(stop, end, "FindReq")
    return FindReq(resource, kinds)


def _find_ans(buf: bytes, off: int, end: int, nid: int, models: Mapping[int, DataModel]) -> FindAns:
    """§7.4.4.2 FindAns: FindKindData results<0..2^16-1>."""
    pos, stop = _vector_end(buf, off, end, 2, "FindAns results")
    results = []
    while pos < stop:
        if pos + 4 > stop:
            raise _short("FindKindData", pos)
        kind = _U32.unpack_from(buf, pos)[0]
        closest, pos = _opaque8(buf, pos + 4, stop, "FindKindData closest")
        results.append(FindKindData(kind, closest))
    _expect_end(stop, end, "FindAns")
    return FindAns(tuple(results))


def _join_req(buf: bytes, off: int, end: int, nid: int, models: Mapping[int, DataModel]) -> JoinReq:
    peer, off = _node_id(buf, off, end, nid, "JoinReq joining_peer_id")
    data, off = _opaque16(buf, off, end, "JoinReq overlay_specific_data")
    _expect_end(off, end, "JoinReq")
    return JoinReq(peer, data)


def _join_ans(buf: bytes, off: int, end: int, nid: int, models: Mapping[int, DataModel]) -> JoinAns:
    data, off = _opaque16(buf, off, end, "JoinAns overlay_specific_data")
    _expect_end(off, end, "JoinAns")
    return JoinAns(data)


def _leave_req(
    buf: bytes, off: int, end: int, nid: int, models: Mapping[int, DataModel]
) -> LeaveReq:
    peer, off = _node_id(buf, off, end, nid, "LeaveReq leaving_peer_id")
    data, off = _opaque16(buf, off, end, "LeaveReq overlay_specific_data")
    _expect_end(off, end, "LeaveReq")
    return LeaveReq(peer, data)


def _leave_ans(
    buf: bytes, off: int, end: int, nid: int, models: Mapping[int, DataModel]
) -> LeaveAns:
    _expect_end(off, end, "LeaveAns")
    return LeaveAns()


def _config_update_ans(
    buf: bytes, off: int, end: int, nid: int, models: Mapping[int, DataModel]
) -> ConfigUpdateAns:
    _expect_end(off, end, "ConfigUpdateAns")
    return ConfigUpdateAns()


def _update_req(
    buf: bytes, off: int, end: int, nid: int, models: Mapping[int, DataModel]
) -> UpdateReq:
    return UpdateReq(buf[off:end])  # §6.4.2.3: overlay specific, opaque here


def _update_ans(
    buf: bytes, off: int, end: int, nid: int, models: Mapping[int, DataModel]
) -> UpdateAns:
    return UpdateAns(buf[off:end])


def _route_query_ans(
    buf: bytes, off: int, end: int, nid: int, models: Mapping[int, DataModel]
) -> RouteQueryAns:
    return RouteQueryAns(buf[off:end])  # §6.4.2.4.2: overlay specific


def _ping_req(buf: bytes, off: int, end: int, nid: int, models: Mapping[int, DataModel]) -> PingReq:
    padding, off = _opaque16(buf, off, end, "PingReq padding")  # §6.5.3.1
    _expect_end(off, end, "PingReq")
    return PingReq(padding)


def _ping_ans(buf: bytes, off: int, end: int, nid: int, models: Mapping[int, DataModel]) -> PingAns:
    if off + 16 > end:  # §6.5.3.2: uint64 response_id, uint64 time
        raise _short("PingAns", off)
    response_id, time = _U64_U64.unpack_from(buf, off)
    _expect_end(off + 16, end, "PingAns")
    return PingAns(response_id, time)


def _error(
    buf: bytes, off: int, end: int, nid: int, models: Mapping[int, DataModel]
) -> ErrorResponse:
    """§6.3.3.1 ErrorResponse: uint16 error_code, opaque error_info<0..2^16-1>."""
    if off + 2 > end:
        raise _short("ErrorResponse", off)
    code = _U16.unpack_from(buf, off)[0]
    info, off = _opaque16(buf, off + 2, end, "ErrorResponse error_info")
    _expect_end(off, end, "ErrorResponse")
    return ErrorResponse(_ERROR_CODES.get(code, code), info)


_BODY_DECODERS: dict[int, _BodyDecoder] = {
    int(MessageCode.STORE_REQ): _store_req,
    int(MessageCode.STORE_ANS): _store_ans,
    int(MessageCode.FETCH_REQ): _fetch_req,
    int(MessageCode.FETCH_ANS): _fetch_ans,
    int(MessageCode.STAT_REQ): _stat_req,
    int(MessageCode.FIND_REQ): _find_req,
    int(MessageCode.FIND_ANS): _find_ans,
    int(MessageCode.JOIN_REQ): _join_req,
    int(MessageCode.JOIN_ANS): _join_ans,
    int(MessageCode.LEAVE_REQ): _leave_req,
    int(MessageCode.LEAVE_ANS): _leave_ans,
    int(MessageCode.UPDATE_REQ): _update_req,
    int(MessageCode.UPDATE_ANS): _update_ans,
    int(MessageCode.ROUTE_QUERY_ANS): _route_query_ans,
    int(MessageCode.PING_REQ): _ping_req,
    int(MessageCode.PING_ANS): _ping_ans,
    int(MessageCode.CONFIG_UPDATE_ANS): _config_update_ans,
    int(MessageCode.ERROR): _error,
}


def _contents(
    buf: bytes, off: int, end: int, nid: int, models: Mapping[int, DataModel]
) -> tuple[MessageContents, int]:
    """§6.3.3 MessageContents: message_code, message_body<0..2^32-1>, extensions."""
    if off + 6 > end:
        raise _short("MessageContents", off)
    code, body_len = _U16_U32.unpack_from(buf, off)
    start = off + 6
    stop = start + body_len
    if stop > end:
        raise _short("message_body", off + 2)
    decoder = _BODY_DECODERS.get(code)
    if decoder is not None:
        body = decoder(buf, start, stop, nid, models)
    else:
        from reload import wire  # the bodies this module leaves to Construct

        body = wire.decode_body_construct(code, buf[start:stop], nid, models)
    pos, estop = _vector_end(buf, stop, end, 4, "extensions")
    extensions = []
    while pos < estop:
        if pos + 3 > estop:
            raise _short("MessageExtension", pos)
        ext_type, critical = _U16_U8.unpack_from(buf, pos)
        if critical > 1:
            raise _bad("MessageExtension critical (not a Boolean)", pos + 2)
        ext, pos = _opaque32(buf, pos + 3, estop, "MessageExtension")
        extensions.append(MessageExtension(ext_type, bool(critical), ext))
    return MessageContents(body, tuple(extensions)), estop


# --- public decoders -------------------------------------------------------------------------


def decode_forwarding_header(
    data: bytes, node_id_length: int = DEFAULT_NODE_ID_LENGTH
) -> tuple[ForwardingHeader, int]:
    """:func:`reload.wire.decode_forwarding_header`: the forwarding header of a message or
    fragment and the offset where what follows it starts (§6.3.2)."""
    data = bytes(data)
    _check_node_id_length(node_id_length)
    _check_length(data)
    lists = sum(_U16.unpack_from(data, i)[0] for i in (32, 34, 36))
    end = FORWARDING_HEADER_SIZE + lists
    if end > len(data):
        raise ReloadDecodeError(
            f"forwarding header lists run past the message end ({end} > {len(data)})"
        )
    return _header(data, end, node_id_length)


def decode_message(
    data: bytes,
    node_id_length: int = DEFAULT_NODE_ID_LENGTH,
    data_models: Mapping[int, DataModel] | None = None,
) -> Message:
    """:func:`reload.wire.decode_message`: a whole, unfragmented message (§6.3)."""
    data = bytes(data)
    _check_node_id_length(node_id_length)
    models = _models(data_models)
    _check_length(data)
    fragment = _U32.unpack_from(data, 12)[0]
    if fragment & 0x40FFFFFF != 0x40000000:
        raise ReloadDecodeError(f"fragment {fragment:#010x}: reassemble before decoding (§6.7)")
    end = len(data)
    header, start = _header(data, end, node_id_length)
    contents, off = _contents(data, start, end, node_id_length, models)
    block, after = _security_block(data, off, end)
    if after != end:
        raise _bad("message (bytes after the security block)", after)
    if off - start <= _RECENT_MAX_BYTES:
        _remember(contents, node_id_length, data[start:off])
    return Message(header, contents, block)


def decode_contents(
    data: bytes,
    node_id_length: int = DEFAULT_NODE_ID_LENGTH,
    data_models: Mapping[int, DataModel] | None = None,
) -> MessageContents:
    """:func:`reload.wire.decode_contents`: a MessageContents filling ``data`` (§6.3.3)."""
    data = bytes(data)
    _check_node_id_length(node_id_length)
    contents, off = _contents(data, 0, len(data), node_id_length, _models(data_models))
    if off != len(data):
        raise _bad("MessageContents (bytes after it)", off)
    _remember(contents, node_id_length, data)
    return contents


def decode_security_block(data: bytes) -> SecurityBlock:
    """:func:`reload.wire.decode_security_block`: a SecurityBlock filling ``data`` (§6.3.4)."""
    data = bytes(data)
    block, off = _security_block(data, 0, len(data))
    if off != len(data):
        raise _bad("SecurityBlock (bytes after it)", off)
    return block


def decode_stored_data(data: bytes, model: DataModel) -> StoredData:
    """:func:`reload.wire.decode_stored_data`: a StoredData of data model ``model`` (§7)."""
    data = bytes(data)
    stored, off = _stored_data(data, 0, len(data), 0, DataModel(model))
    if off != len(data):
        raise _bad("StoredData (bytes after it)", off)
    return stored


# =============================================================================================
# Encoding. Every writer appends the pieces of its structure to ``out`` and returns how many
# bytes they take; a length prefix is a placeholder filled once the contents are written.
# =============================================================================================

_Out = list[bytes]


def _too_long(what: str, n: int, limit: int) -> ReloadEncodeError:
    return ReloadEncodeError(f"cannot encode {what}: {n} bytes exceed {limit}")


def _put_opaque8(out: _Out, data: bytes, what: str) -> int:
    n = len(data)
    if n > 0xFF:
        raise _too_long(what, n, 0xFF)
    out.append(bytes((n,)))
    out.append(data)
    return n + 1


def _put_opaque16(out: _Out, data: bytes, what: str) -> int:
    n = len(data)
    if n > 0xFFFF:
        raise _too_long(what, n, 0xFFFF)
    out.append(_U16.pack(n))
    out.append(data)
    return n + 2


def _put_opaque32(out: _Out, data: bytes, what: str) -> int:
    n = len(data)
    if n > 0xFFFFFFFF:
        raise _too_long(what, n, 0xFFFFFFFF)
    out.append(_U32.pack(n))
    out.append(data)
    return n + 4


def _fill_prefix(out: _Out, at: int, n: int, size: int, what: str) -> int:
    """Put the byte count ``n`` of a vector in the placeholder ``out[at]`` (§6.3.1)."""
    if n >= 1 << (8 * size):
        raise _too_long(what, n, (1 << (8 * size)) - 1)
    out[at] = n.to_bytes(size, "big")
    return n + size


def _bool(value: bool | int, what: str) -> int:
    b = int(value)  # Construct builds int(field): 0 and 1 only (a TLS Boolean)
    if b not in (0, 1):
        raise ReloadEncodeError(f"cannot encode {what}: {b} is not a Boolean")
    return b


def _put_node_id(out: _Out, node_id: bytes, nid: int, what: str) -> int:
    if len(node_id) != nid:
        raise ReloadEncodeError(f"cannot encode {what}: {len(node_id)} bytes, not {nid}")
    out.append(node_id)
    return nid


# --- §6.3.2 ----------------------------------------------------------------------------------


def _put_destination(out: _Out, d: Destination, nid: int) -> int:
    """§6.3.2.2 Destination."""
    if isinstance(d, NodeDestination):
        if len(d.node_id) != nid:
            raise ReloadEncodeError(f"node Destination of {len(d.node_id)} bytes, not {nid}")
        out.append(bytes((1, nid)))
        out.append(d.node_id)
        return nid + 2
    if isinstance(d, ResourceDestination | OpaqueDestination):
        data = d.resource_id if isinstance(d, ResourceDestination) else d.opaque_id
        n = len(data)
        if n > 0xFE:  # its own length byte inside the 1-byte TLV length
            raise _too_long("Destination", n, 0xFE)
        out.append(bytes((2 if isinstance(d, ResourceDestination) else 3, n + 1, n)))
        out.append(data)
        return n + 3
    if isinstance(d, CompressedDestination):
        if not 0x8000 <= d.opaque_id <= 0xFFFF:
            raise ReloadEncodeError(f"compressed destination {d.opaque_id:#x} needs top bit 1")
        out.append(_U16.pack(d.opaque_id))
        return 2
    raise ReloadEncodeError(f"not a Destination: {d!r}")


def _put_header(out: _Out, header: ForwardingHeader, payload_length: int, nid: int) -> int:
    at = len(out)
    out.append(b"")
    via = 0
    for d in header.via_list:
        via += _put_destination(out, d, nid)
    dest = 0
    for d in header.destination_list:
        dest += _put_destination(out, d, nid)
    opt = 0
    for o in header.options:
        out.append(bytes((o.type, o.flags)))
        opt += 2 + _put_opaque16(out, o.value, "forwarding option")
    if max(via, dest, opt) > 0xFFFF:
        raise ReloadEncodeError("a forwarding header list exceeds 65535 bytes (§6.3.2)")
    size = FORWARDING_HEADER_SIZE + via + dest + opt
    out[at] = _HEADER.pack(
        RELO_TOKEN,
        header.overlay,
        header.configuration_sequence,
        header.version,
        header.ttl,
        header.fragment,
        size + payload_length,
        header.transaction_id,
        header.max_response_length,
        via,
        dest,
        opt,
    )
    return size


# --- §6.3.4 ----------------------------------------------------------------------------------


def _put_identity(out: _Out, i: SignerIdentity) -> int:
    """§6.3.4 SignerIdentity: type, uint16 length, SignerIdentityValue."""
    t = i.identity_type
    if t in (_CERT_HASH, _CERT_HASH_NODE_ID):
        n = len(i.hash)
        if n > 0xFF:
            raise _too_long("SignerIdentity hash", n, 0xFF)
        out.append(_IDENTITY_HEAD.pack(t, n + 2, i.hash_alg, n))
        out.append(i.hash)
        return n + 5
    if t == _IDENTITY_NONE:
        if i.hash_alg or i.hash:
            raise ReloadEncodeError("SignerIdentity none carries no hash (§6.3.4)")
        out.append(b"\x03\x00\x00")
        return 3
    raise ReloadEncodeError(f"unknown SignerIdentityType {t}")


def _put_signature(out: _Out, s: Signature) -> int:
    """§6.3.4 Signature: algorithm, identity, signature_value<0..2^16-1>."""
    out.append(bytes((s.algorithm.hash, s.algorithm.signature)))
    n = _put_identity(out, s.identity)
    return 2 + n + _put_opaque16(out, s.signature_value, "signature_value")


def _put_security_block(out: _Out, b: SecurityBlock) -> int:
    at = len(out)
    out.append(b"")
    n = 0
    for cert in b.certificates:
        out.append(bytes((cert.type,)))
        n += 1 + _put_opaque16(out, cert.certificate, "certificate")
    n = _fill_prefix(out, at, n, 2, "certificates")
    return n + _put_signature(out, b.signature)


# --- §7 --------------------------------------------------------------------------------------


def _put_data_value(out: _Out, v: DataValue) -> int:
    value = v.value
    n = len(value)
    if n > 0xFFFFFFFF:
        raise _too_long("DataValue", n, 0xFFFFFFFF)
    out.append(bytes((_bool(v.exists, "DataValue exists"),)) + _U32.pack(n))
    out.append(value)
    return n + 5


def _model_of(v: StoredDataValue) -> DataModel:
    if isinstance(v, DataValue):
        return _SINGLE
    if isinstance(v, ArrayEntry):
        return _ARRAY
    if isinstance(v, DictionaryEntry):
        return _DICTIONARY
    raise ReloadEncodeError(f"not a StoredDataValue: {v!r}")


def _put_value(out: _Out, v: StoredDataValue) -> int:
    """§7.2 StoredDataValue of the value's data model."""
    if isinstance(v, DictionaryEntry):
        return _put_opaque16(out, v.key, "DictionaryEntry key") + _put_data_value(out, v.value)
    if isinstance(v, ArrayEntry):
        out.append(_U32.pack(v.index))
        return 4 + _put_data_value(out, v.value)
    if isinstance(v, DataValue):
        return _put_data_value(out, v)
    raise ReloadEncodeError(f"not a StoredDataValue: {v!r}")


def _put_stored_data(out: _Out, s: StoredData) -> int:
    """§7 StoredData, its uint32 length counting the bytes after itself."""
    at = len(out)
    out.append(b"")
    out.append(_U64_U32.pack(s.storage_time, s.lifetime))
    n = 12 + _put_value(out, s.value)
    n += _put_signature(out, s.signature)
    return _fill_prefix(out, at, n, 4, "StoredData")


def _put_stored_list(out: _Out, kind: int, values: tuple[StoredData, ...]) -> int:
    """``StoredData values<0..2^32-1>``; one Kind holds one data model (§7.2)."""
    if len(values) > 1 and len({_model_of(s.value) for s in values}) > 1:
        models = sorted({_model_of(s.value).value for s in values})
        raise ReloadEncodeError(f"Kind-ID {kind:#x} mixes data models {models} (§7.2)")
    at = len(out)
    out.append(b"")
    n = 0
    for s in values:
        n += _put_stored_data(out, s)
    return _fill_prefix(out, at, n, 4, "StoredData values")


def _put_specifier(out: _Out, s: StoredDataSpecifier) -> int:
    """§7.4.2.1 StoredDataSpecifier."""
    if s.indices is not None and s.keys is not None:
        raise ReloadEncodeError("a StoredDataSpecifier has indices or keys, not both (§7.4.2.1)")
    out.append(_U32_U64.pack(s.kind, s.generation))
    at = len(out)
    out.append(b"")
    n = 0
    if s.indices is not None or s.keys is not None:
        inner = len(out)
        out.append(b"")
        if s.indices is not None:
            for r in s.indices:
                out.append(_I32_PAIR.pack(r.first, r.last))
                n += 8
        else:
            for key in s.keys or ():
                n += _put_opaque16(out, key, "DictionaryKey")
        n = _fill_prefix(out, inner, n, 2, "StoredDataSpecifier selector")
    return 12 + _fill_prefix(out, at, n, 2, "StoredDataSpecifier")


# --- bodies ----------------------------------------------------------------------------------


def _enc_store_req(out: _Out, b: Any, nid: int) -> int:
    n = _put_opaque8(out, b.resource, "ResourceId")
    out.append(bytes((b.replica_number,)))
    at = len(out)
    out.append(b"")
    k = 0
    for kd in b.kind_data:
        out.append(_U32_U64.pack(kd.kind, kd.generation_counter))
        k += 12 + _put_stored_list(out, kd.kind, kd.values)
    return n + 1 + _fill_prefix(out, at, k, 4, "StoreReq kind_data")


def _enc_store_ans(out: _Out, b: Any, nid: int) -> int:
    at = len(out)
    out.append(b"")
    n = 0
    for r in b.kind_responses:
        out.append(_U32_U64.pack(r.kind, r.generation_counter))
        rat = len(out)
        out.append(b"")
        m = 0
        for replica in r.replicas:
            m += _put_node_id(out, replica, nid, "replica NodeId")
        n += 12 + _fill_prefix(out, rat, m, 2, "StoreKindResponse replicas")
    return _fill_prefix(out, at, n, 2, "StoreAns kind_responses")


def _enc_fetch_req(out: _Out, b: Any, nid: int) -> int:
    n = _put_opaque8(out, b.resource, "ResourceId")
    at = len(out)
    out.append(b"")
    m = 0
    for s in b.specifiers:
        m += _put_specifier(out, s)
    return n + _fill_prefix(out, at, m, 2, "FetchReq specifiers")


def _enc_fetch_ans(out: _Out, b: Any, nid: int) -> int:
    at = len(out)
    out.append(b"")
    n = 0
    for r in b.kind_responses:
        out.append(_U32_U64.pack(r.kind, r.generation))
        n += 12 + _put_stored_list(out, r.kind, r.values)
    return _fill_prefix(out, at, n, 4, "FetchAns kind_responses")


def _enc_find_req(out: _Out, b: Any, nid: int) -> int:
    n = _put_opaque8(out, b.resource, "ResourceId")
    at = len(out)
    out.append(b"")
    for kind in b.kinds:
        out.append(_U32.pack(kind))
    return n + _fill_prefix(out, at, 4 * len(b.kinds), 1, "FindReq kinds")


def _enc_find_ans(out: _Out, b: Any, nid: int) -> int:
    at = len(out)
    out.append(b"")
    n = 0
    for r in b.results:
        out.append(_U32.pack(r.kind))
        n += 4 + _put_opaque8(out, r.closest, "FindKindData closest")
    return _fill_prefix(out, at, n, 2, "FindAns results")


def _enc_join_req(out: _Out, b: Any, nid: int) -> int:
    n = _put_node_id(out, b.joining_peer_id, nid, "joining_peer_id")
    return n + _put_opaque16(out, b.overlay_specific_data, "overlay_specific_data")


def _enc_leave_req(out: _Out, b: Any, nid: int) -> int:
    n = _put_node_id(out, b.leaving_peer_id, nid, "leaving_peer_id")
    return n + _put_opaque16(out, b.overlay_specific_data, "overlay_specific_data")


def _enc_opaque16_body(field: str) -> Callable[[_Out, Any, int], int]:
    def encode(out: _Out, b: Any, nid: int) -> int:
        return _put_opaque16(out, getattr(b, field), field)

    return encode


def _enc_empty(out: _Out, b: Any, nid: int) -> int:
    return 0


def _enc_data(out: _Out, b: Any, nid: int) -> int:
    out.append(b.data)
    return len(b.data)


def _enc_ping_ans(out: _Out, b: Any, nid: int) -> int:
    out.append(_U64_U64.pack(b.response_id, b.time))
    return 16


def _enc_error(out: _Out, b: Any, nid: int) -> int:
    out.append(_U16.pack(b.error_code))
    return 2 + _put_opaque16(out, b.error_info, "error_info")


_BODY_ENCODERS: dict[type, Callable[[_Out, Any, int], int]] = {
    StoreReq: _enc_store_req,
    StoreAns: _enc_store_ans,
    FetchReq: _enc_fetch_req,
    StatReq: _enc_fetch_req,
    FetchAns: _enc_fetch_ans,
    FindReq: _enc_find_req,
    FindAns: _enc_find_ans,
    JoinReq: _enc_join_req,
    JoinAns: _enc_opaque16_body("overlay_specific_data"),
    LeaveReq: _enc_leave_req,
    LeaveAns: _enc_empty,
    ConfigUpdateAns: _enc_empty,
    UpdateReq: _enc_data,
    UpdateAns: _enc_data,
    RouteQueryAns: _enc_data,
    PingReq: _enc_opaque16_body("padding"),
    PingAns: _enc_ping_ans,
    ErrorResponse: _enc_error,
}


def _put_contents(out: _Out, contents: MessageContents, nid: int) -> int:
    """§6.3.3 MessageContents: message_code, message_body<0..2^32-1>, extensions."""
    raw = _recalled(contents, nid)
    if raw is not None:
        out.append(raw)
        return len(raw)
    body = contents.body
    encoder = _BODY_ENCODERS.get(type(body))
    if encoder is None:
        from reload import wire  # the bodies this module leaves to Construct

        data = wire.encode_contents_construct(contents, nid)
        out.append(data)
        return len(data)
    at = len(out)
    out.append(b"")
    n = encoder(out, body, nid)
    if n > 0xFFFFFFFF:
        raise _too_long("message_body", n, 0xFFFFFFFF)
    out[at] = _U16_U32.pack(body.CODE, n)
    eat = len(out)
    out.append(b"")
    m = 0
    for e in contents.extensions:
        out.append(_U16_U8.pack(e.type, _bool(e.critical, "MessageExtension critical")))
        m += 3 + _put_opaque32(out, e.extension_contents, "extension_contents")
    return 6 + n + _fill_prefix(out, eat, m, 4, "extensions")


# --- public encoders -------------------------------------------------------------------------


def _encoded(build: Callable[[_Out], object]) -> bytes:
    out: _Out = []
    try:
        build(out)
    except ReloadEncodeError:
        raise
    except (struct.error, OverflowError, TypeError, ValueError) as exc:
        # an integer outside its field (struct.pack, bytes((n,)), int.to_bytes)
        raise ReloadEncodeError(f"cannot encode: {exc}") from exc
    return b"".join(out)


def _put_message(out: _Out, msg: Message, nid: int) -> int:
    out.append(b"")  # the forwarding header, once the length of what follows is known
    n = _put_contents(out, msg.contents, nid)
    n += _put_security_block(out, msg.security_block)
    head: _Out = []
    size = _put_header(head, msg.header, n, nid)
    out[0] = b"".join(head)
    return size + n


def encode_message(msg: Message, node_id_length: int = DEFAULT_NODE_ID_LENGTH) -> bytes:
    """:func:`reload.wire.encode_message`: a whole message (§6.3), length field computed."""
    _check_node_id_length(node_id_length)
    return _encoded(lambda out: _put_message(out, msg, node_id_length))


def encode_forwarding_header(
    header: ForwardingHeader, payload_length: int, node_id_length: int = DEFAULT_NODE_ID_LENGTH
) -> bytes:
    """:func:`reload.wire.encode_forwarding_header` (§6.3.2)."""
    _check_node_id_length(node_id_length)
    return _encoded(lambda out: _put_header(out, header, payload_length, node_id_length))


def encode_contents(
    contents: MessageContents, node_id_length: int = DEFAULT_NODE_ID_LENGTH
) -> bytes:
    """:func:`reload.wire.encode_contents` (§6.3.3): part of the signature input (§6.3.4)."""
    _check_node_id_length(node_id_length)
    return _encoded(lambda out: _put_contents(out, contents, node_id_length))


def encode_security_block(block: SecurityBlock) -> bytes:
    """:func:`reload.wire.encode_security_block` (§6.3.4)."""
    return _encoded(lambda out: _put_security_block(out, block))


def encode_signer_identity(identity: SignerIdentity) -> bytes:
    """:func:`reload.wire.encode_signer_identity` (§6.3.4): the tail of a signature input."""
    return _encoded(lambda out: _put_identity(out, identity))


def encode_signature(signature: Signature) -> bytes:
    """:func:`reload.wire.encode_signature` (§6.3.4)."""
    return _encoded(lambda out: _put_signature(out, signature))


def encode_stored_data_value(value: StoredDataValue) -> bytes:
    """:func:`reload.wire.encode_stored_data_value` (§7.2): part of the StoredData signature
    input (§7.1)."""
    return _encoded(lambda out: _put_value(out, value))


def encode_stored_data(data: StoredData) -> bytes:
    """:func:`reload.wire.encode_stored_data` (§7), its length field included."""
    return _encoded(lambda out: _put_stored_data(out, data))
