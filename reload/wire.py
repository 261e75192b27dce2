"""The normative RELOAD wire format (RFC 6940 §6.3-§6.6, §7, §10) as Construct definitions.

This module is meant to be read next to the RFC: one Construct per structure of the RFC's
presentation language, in the RFC's words and order. The rest of the stack uses the
dataclasses of :mod:`reload.messages`; :func:`encode_message` and :func:`decode_message`
convert between the two, and the ``encode_*``/``decode_*`` helpers expose the sub-structures
other modules need on their own (the signature inputs of §6.3.4 and §7.1, the framing header of
§6.6.2, the forwarding header a forwarding peer rewrites).

The message path runs on the hand ``struct`` codec of :mod:`reload.fastwire` (DESIGN §3):
:func:`encode_message`, :func:`decode_message` and the helpers next to them delegate there,
and each has a ``*_construct`` twin here that does the same work with the Construct
definitions. ``tests/test_reload_fastwire.py`` proves the two byte-equal, errors included.

Encoding rules (§6.3.1): big-endian integers; a ``<0..2^N-1>`` vector carries a length prefix of
the fewest bytes that hold 2^N-1 (:func:`opaque`, :func:`vector`); ``[n]`` arrays have none.
A NodeId is NodeIdLength bytes (16 by default, the overlay configuration's ``node-id-length``);
every Construct reads it as the parse/build parameter ``node_id_length``.

What the wire does not say: §7.2 leaves the data model of StoredData, StoredDataSpecifier and
StoredMetaData to the Kind, so the decoder takes ``data_models`` (Kind-ID → :class:`DataModel`,
from the configuration, :data:`~reload.messages.DEFAULT_DATA_MODELS` by default) and raises
:class:`~reload.messages.UnknownKindError` for a Kind it does not know; the encoder takes the
model from the value's class.

The DESIGN §3 Construct traps are avoided: every Switch over a code point the RFC closes has
``default=Error`` (those it declares extensible — ProbeInformation, ConfigUpdateReq — keep the
unknown value as opaque bytes, still bounded by their length field); every vector and every
length-delimited select ends with ``Terminated`` inside its length prefix, so a truncated or
over-long element is an error rather than a silently dropped tail; the header's length field is
checked against the datagram before parsing. Nothing here is compiled: the lambdas that
find a Kind's data model would not compile, and RELOAD is a control plane.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from construct import (
    Bytes,
    Computed,
    Const,
    Construct,
    ConstructError,
    Error,
    ExplicitError,
    ExprValidator,
    FixedSized,
    FocusedSeq,
    GreedyBytes,
    GreedyRange,
    IfThenElse,
    Int8ub,
    Int16ub,
    Int24ub,
    Int32sb,
    Int32ub,
    Int64ub,
    Pass,
    Peek,
    Prefixed,
    Struct,
    Switch,
    Terminated,
    obj_,
    this,
)

from reload import fastwire
from reload.messages import (
    DEFAULT_DATA_MODELS,
    DEFAULT_NODE_ID_LENGTH,
    FORWARDING_HEADER_SIZE,
    RELO_TOKEN,
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
    DataModel,
    DataValue,
    Destination,
    DestinationType,
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
    FramedMessage,
    FramedMessageType,
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
    ProbeInformationType,
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
    SignerIdentityType,
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

__all__ = [
    "DESTINATION",
    "FORWARDING_HEADER",
    "FRAMED_MESSAGE",
    "MESSAGE",
    "MESSAGE_CONTENTS",
    "SECURITY_BLOCK",
    "SIGNER_IDENTITY",
    "STORED_DATA",
    "decode_body_construct",
    "decode_chord_leave_data",
    "decode_chord_route_query_ans",
    "decode_chord_update",
    "decode_contents",
    "decode_contents_construct",
    "decode_forwarding_header",
    "decode_forwarding_header_construct",
    "decode_framing",
    "decode_message",
    "decode_message_construct",
    "decode_security_block",
    "decode_security_block_construct",
    "decode_stored_data",
    "decode_stored_data_construct",
    "encode_chord_leave_data",
    "encode_chord_route_query_ans",
    "encode_chord_update",
    "encode_contents",
    "encode_contents_construct",
    "encode_destination",
    "encode_forwarding_header",
    "encode_forwarding_header_construct",
    "encode_framing",
    "encode_message",
    "encode_message_construct",
    "encode_security_block",
    "encode_security_block_construct",
    "encode_signature",
    "encode_signature_construct",
    "encode_signer_identity",
    "encode_signer_identity_construct",
    "encode_stored_data",
    "encode_stored_data_construct",
    "encode_stored_data_value",
    "encode_stored_data_value_construct",
    "framed_size",
]

#: §11.1: node-id-length is between 16 and 20 bytes.
MIN_NODE_ID_LENGTH = 16
MAX_NODE_ID_LENGTH = 20


# ---------------------------------------------------------------------------------------------
# §6.3.1 presentation language helpers
# ---------------------------------------------------------------------------------------------


def opaque(length_field: Construct) -> Construct:
    """``opaque x<0..2^N-1>``: the byte count in ``length_field``, then the bytes (§6.3.1)."""
    return Prefixed(length_field, GreedyBytes)


def vector(length_field: Construct, element: Construct) -> Construct:
    """``T x<0..2^N-1>``: the byte count, then whole elements (§6.3.1).

    GreedyRange alone would stop at a truncated element and drop it; Terminated makes that an
    error (DESIGN §3 traps).
    """
    return Prefixed(length_field, FocusedSeq("items", "items" / GreedyRange(element), Terminated))


def exactly(length_field: Construct, subcon: Construct) -> Construct:
    """A length field followed by a structure that must fill exactly that many bytes (the TLV
    selects of §6.3.1 IpAddressPort, §6.3.2.2 Destination, §6.3.4 SignerIdentity...).

    ``subcon`` sits one context level down: it sees the enclosing struct's fields as ``this._``.
    """
    return Prefixed(length_field, FocusedSeq("value", "value" / subcon, Terminated))


#: TLS Boolean: enum { false(0), true(1) }; other values are malformed.
BOOLEAN = ExprValidator(Int8ub, obj_ <= 1)

#: §6.3.1: NodeId is a fixed NodeIdLength-byte array, a configuration parameter.
NODE_ID = Bytes(this._params.node_id_length)
#: §6.3.1: ResourceId is opaque<0..2^8-1>.
RESOURCE_ID = opaque(Int8ub)

IPV4_ADDR_PORT = Struct("addr" / Bytes(4), "port" / Int16ub)  # §6.3.1
IPV6_ADDR_PORT = Struct("addr" / Bytes(16), "port" / Int16ub)  # §6.3.1
#: §6.3.1: type and length come first whatever the type, so unknown types could be skipped;
#: no RELOAD structure allows them though, so they are a parsing error (§6.3.1 last paragraph).
IP_ADDRESS_PORT = Struct(
    "type" / Int8ub,
    "value"
    / exactly(Int8ub, Switch(this._.type, {1: IPV4_ADDR_PORT, 2: IPV6_ADDR_PORT}, default=Error)),
)


# ---------------------------------------------------------------------------------------------
# §6.3.2 forwarding header
# ---------------------------------------------------------------------------------------------

#: §6.3.2.2 DestinationData, selected by the enclosing Destination's type.
DESTINATION_DATA = Switch(
    this._.type,
    {
        DestinationType.NODE.value: NODE_ID,
        DestinationType.RESOURCE.value: RESOURCE_ID,  # its own 1-byte length inside the TLV
        DestinationType.OPAQUE_ID_TYPE.value: opaque(Int8ub),
    },
    default=Error,
)
FULL_DESTINATION = Struct("type" / Int8ub, "destination_data" / exactly(Int8ub, DESTINATION_DATA))


def _compressed(ctx: Any) -> bool:
    # §6.3.2.2: a first bit of 1 means the 2-byte compressed form. At the end of the input
    # Peek yields None: parse the full form, which then reports the truncation.
    first = ctx.first_byte
    return first is not None and first >= 0x80


#: §6.3.2.2: either ``uint16 opaque_id`` with the top bit 1, or the type/length/data TLV.
DESTINATION = Struct(
    "first_byte" / Peek(Int8ub),
    "destination" / IfThenElse(_compressed, Int16ub, FULL_DESTINATION),
)
DESTINATION_LIST = FocusedSeq("items", "items" / GreedyRange(DESTINATION), Terminated)

#: §6.3.2.3: unknown option types are allowed, so the value stays opaque.
FORWARDING_OPTION = Struct("type" / Int8ub, "flags" / Int8ub, "value" / opaque(Int16ub))
FORWARDING_OPTIONS = FocusedSeq("items", "items" / GreedyRange(FORWARDING_OPTION), Terminated)

#: §6.3.2: 38 fixed bytes, then the three lists whose byte lengths the fixed part gives.
FORWARDING_HEADER = Struct(
    "relo_token" / Const(RELO_TOKEN, Int32ub),
    "overlay" / Int32ub,
    "configuration_sequence" / Int16ub,
    "version" / Int8ub,
    "ttl" / Int8ub,
    "fragment" / Int32ub,
    "length" / Int32ub,
    "transaction_id" / Int64ub,
    "max_response_length" / Int32ub,
    "via_list_length" / Int16ub,
    "destination_list_length" / Int16ub,
    "options_length" / Int16ub,
    "via_list" / FixedSized(this.via_list_length, DESTINATION_LIST),
    "destination_list" / FixedSized(this.destination_list_length, DESTINATION_LIST),
    "options" / FixedSized(this.options_length, FORWARDING_OPTIONS),
)


# ---------------------------------------------------------------------------------------------
# §6.3.4 security block
# ---------------------------------------------------------------------------------------------

GENERIC_CERTIFICATE = Struct("type" / Int8ub, "certificate" / opaque(Int16ub))
#: RFC 5246 §7.4.1.4.1 SignatureAndHashAlgorithm.
SIGNATURE_AND_HASH_ALGORITHM = Struct("hash" / Int8ub, "signature" / Int8ub)
#: SignerIdentityValue for cert_hash and cert_hash_node_id (same layout, different input).
CERT_HASH = Struct("hash_alg" / Int8ub, "hash" / opaque(Int8ub))
SIGNER_IDENTITY = Struct(
    "identity_type" / Int8ub,
    "identity"
    / exactly(
        Int16ub,
        Switch(
            this._.identity_type,
            {
                SignerIdentityType.CERT_HASH.value: CERT_HASH,
                SignerIdentityType.CERT_HASH_NODE_ID.value: CERT_HASH,
                SignerIdentityType.NONE.value: Pass,  # empty
            },
            default=Error,
        ),
    ),
)
SIGNATURE = Struct(
    "algorithm" / SIGNATURE_AND_HASH_ALGORITHM,
    "identity" / SIGNER_IDENTITY,
    "signature_value" / opaque(Int16ub),
)
SECURITY_BLOCK = Struct(
    "certificates" / vector(Int16ub, GENERIC_CERTIFICATE),
    "signature" / SIGNATURE,
)


# ---------------------------------------------------------------------------------------------
# §7 storage structures; the data model comes from the Kind (§7.2)
# ---------------------------------------------------------------------------------------------


class _UnknownKind(ExplicitError):  # type: ignore[misc]
    """Raised inside the parser for a Kind without a known data model. An ExplicitError so
    that GreedyRange passes it on instead of ending the vector there."""

    def __init__(self, kind: int | None) -> None:
        super().__init__(f"no data model known for Kind-ID {kind}")
        self.kind = kind


def _find(ctx: Any, key: str) -> Any:
    while ctx is not None:
        if key in ctx:
            return ctx[key]
        ctx = ctx.get("_")
    return None


def _data_model(ctx: Any) -> str | None:
    """The data model of the enclosing Kind: when building, the ``model`` the encoder put in
    the container; when parsing, the nearest enclosing ``kind`` field looked up in the
    ``data_models`` parameter."""
    if ctx._building:
        model: str | None = _find(ctx, "model")
        return model
    kind = _find(ctx, "kind")
    models: Mapping[int, str] = ctx._params.data_models
    return models.get(kind) if kind is not None else None


class _UnknownKindConstruct(Construct):  # type: ignore[misc]
    def _parse(self, stream: Any, context: Any, path: str) -> Any:
        raise _UnknownKind(_find(context, "kind"))

    def _build(self, obj: Any, stream: Any, context: Any, path: str) -> Any:
        raise _UnknownKind(_find(context, "kind"))


UNKNOWN_KIND = _UnknownKindConstruct()

DATA_VALUE = Struct("exists" / BOOLEAN, "value" / opaque(Int32ub))  # §7.2
ARRAY_ENTRY = Struct("index" / Int32ub, "value" / DATA_VALUE)  # §7.2.2
DICTIONARY_ENTRY = Struct("key" / opaque(Int16ub), "value" / DATA_VALUE)  # §7.2.3
#: §7.2 StoredDataValue: select (DataModel).
STORED_DATA_VALUE = Switch(
    _data_model,
    {"SINGLE": DATA_VALUE, "ARRAY": ARRAY_ENTRY, "DICTIONARY": DICTIONARY_ENTRY},
    default=UNKNOWN_KIND,
)
#: §7: length counts the bytes after itself.
STORED_DATA = Prefixed(
    Int32ub,
    Struct(
        "storage_time" / Int64ub,
        "lifetime" / Int32ub,
        "value" / STORED_DATA_VALUE,
        "signature" / SIGNATURE,
        Terminated,
    ),
)

STORE_KIND_DATA = Struct(  # §7.4.1.1
    "kind" / Int32ub,
    "generation_counter" / Int64ub,
    "values" / vector(Int32ub, STORED_DATA),
)
STORE_REQ = Struct(  # §7.4.1.1
    "resource" / RESOURCE_ID,
    "replica_number" / Int8ub,
    "kind_data" / vector(Int32ub, STORE_KIND_DATA),
)
STORE_KIND_RESPONSE = Struct(  # §7.4.1.2
    "kind" / Int32ub,
    "generation_counter" / Int64ub,
    "replicas" / vector(Int16ub, NODE_ID),
)
STORE_ANS = Struct("kind_responses" / vector(Int16ub, STORE_KIND_RESPONSE))  # §7.4.1.2

ARRAY_RANGE = Struct("first" / Int32sb, "last" / Int32sb)  # §7.4.2.1: int32
DICTIONARY_KEY = opaque(Int16ub)  # §7.2.3
STORED_DATA_SPECIFIER = Struct(  # §7.4.2.1
    "kind" / Int32ub,
    "generation" / Int64ub,
    "model_specifier"
    / exactly(
        Int16ub,
        Switch(
            _data_model,
            {
                "SINGLE": Pass,
                "ARRAY": vector(Int16ub, ARRAY_RANGE),
                "DICTIONARY": vector(Int16ub, DICTIONARY_KEY),
            },
            default=UNKNOWN_KIND,
        ),
    ),
)
FETCH_REQ = Struct(  # §7.4.2.1; StatReq (§7.4.3.1) is identical
    "resource" / RESOURCE_ID,
    "specifiers" / vector(Int16ub, STORED_DATA_SPECIFIER),
)
FETCH_KIND_RESPONSE = Struct(  # §7.4.2.2
    "kind" / Int32ub,
    "generation" / Int64ub,
    "values" / vector(Int32ub, STORED_DATA),
)
FETCH_ANS = Struct("kind_responses" / vector(Int32ub, FETCH_KIND_RESPONSE))  # §7.4.2.2

META_DATA = Struct(  # §7.4.3.2
    "exists" / BOOLEAN,
    "value_length" / Int32ub,
    "hash_algorithm" / Int8ub,
    "hash_value" / opaque(Int8ub),
)
ARRAY_ENTRY_META = Struct("index" / Int32ub, "value" / META_DATA)  # §7.4.3.2
DICTIONARY_ENTRY_META = Struct("key" / DICTIONARY_KEY, "value" / META_DATA)  # §7.4.3.2
#: §7.4.3.2: "the same as the corresponding fields in StoredData", so the first uint32
#: (value_length) counts the bytes after itself like StoredData's length (Wireshark agrees).
STORED_META_DATA = Prefixed(
    Int32ub,
    Struct(
        "storage_time" / Int64ub,
        "lifetime" / Int32ub,
        "metadata"
        / Switch(
            _data_model,
            {"SINGLE": META_DATA, "ARRAY": ARRAY_ENTRY_META, "DICTIONARY": DICTIONARY_ENTRY_META},
            default=UNKNOWN_KIND,
        ),
        Terminated,
    ),
)
STAT_KIND_RESPONSE = Struct(  # §7.4.3.2
    "kind" / Int32ub,
    "generation" / Int64ub,
    "values" / vector(Int32ub, STORED_META_DATA),
)
STAT_ANS = Struct("kind_responses" / vector(Int32ub, STAT_KIND_RESPONSE))  # §7.4.3.2

FIND_REQ = Struct("resource" / RESOURCE_ID, "kinds" / vector(Int8ub, Int32ub))  # §7.4.4.1
FIND_KIND_DATA = Struct("kind" / Int32ub, "closest" / RESOURCE_ID)  # §7.4.4.2
FIND_ANS = Struct("results" / vector(Int16ub, FIND_KIND_DATA))  # §7.4.4.2


# ---------------------------------------------------------------------------------------------
# §6.4.2 overlay management and §6.5 forwarding-layer method bodies
# ---------------------------------------------------------------------------------------------

JOIN_REQ = Struct("joining_peer_id" / NODE_ID, "overlay_specific_data" / opaque(Int16ub))
JOIN_ANS = Struct("overlay_specific_data" / opaque(Int16ub))  # §6.4.2.1
LEAVE_REQ = Struct("leaving_peer_id" / NODE_ID, "overlay_specific_data" / opaque(Int16ub))
LEAVE_ANS = Struct()  # §6.4.2.2: "LeaveAns is an empty message"
#: §6.4.2.3: Update is completely overlay specific; the topology plug-in parses it.
UPDATE_REQ = Struct("data" / GreedyBytes)
UPDATE_ANS = Struct("data" / GreedyBytes)
ROUTE_QUERY_REQ = Struct(  # §6.4.2.4.1
    "send_update" / BOOLEAN,
    "destination" / DESTINATION,
    "overlay_specific_data" / opaque(Int16ub),
)
ROUTE_QUERY_ANS = Struct("data" / GreedyBytes)  # §6.4.2.4.2: overlay specific

PROBE_REQ = Struct("requested_info" / vector(Int8ub, Int8ub))  # §6.4.2.5.1
#: §6.4.2.5.2: "This structure allows for unknown option types": they stay opaque.
PROBE_INFORMATION = Struct(
    "type" / Int8ub,
    "value"
    / exactly(
        Int8ub,
        Switch(
            this._.type,
            {t.value: Int32ub for t in ProbeInformationType},
            default=GreedyBytes,
        ),
    ),
)
PROBE_ANS = Struct("probe_info" / vector(Int16ub, PROBE_INFORMATION))  # §6.4.2.5.2

ICE_EXTENSION = Struct("name" / opaque(Int16ub), "value" / opaque(Int16ub))  # §6.5.1.1
ICE_CANDIDATE = Struct(  # §6.5.1.1
    "addr_port" / IP_ADDRESS_PORT,
    "overlay_link" / Int8ub,
    "foundation" / opaque(Int8ub),
    "priority" / Int32ub,
    "type" / Int8ub,
    "rel_addr_port"
    / Switch(this.type, {1: Pass, 2: IP_ADDRESS_PORT, 4: IP_ADDRESS_PORT}, default=Error),
    "extensions" / vector(Int16ub, ICE_EXTENSION),
)
ATTACH_REQ_ANS = Struct(  # §6.5.1.1
    "ufrag" / opaque(Int8ub),
    "password" / opaque(Int8ub),
    "role" / opaque(Int8ub),
    "candidates" / vector(Int16ub, ICE_CANDIDATE),
    "send_update" / BOOLEAN,
)
APP_ATTACH_REQ_ANS = Struct(  # §6.5.2.1, §6.5.2.2: request and answer share the layout
    "ufrag" / opaque(Int8ub),
    "password" / opaque(Int8ub),
    "application" / Int16ub,
    "role" / opaque(Int8ub),
    "candidates" / vector(Int16ub, ICE_CANDIDATE),
)
PING_REQ = Struct("padding" / opaque(Int16ub))  # §6.5.3.1
PING_ANS = Struct("response_id" / Int64ub, "time" / Int64ub)  # §6.5.3.2
#: §6.5.4.1: length is 32 bits "to facilitate easy conversion"; unknown types are allowed.
CONFIG_UPDATE_REQ = Struct(
    "type" / Int8ub,
    "data"
    / exactly(
        Int32ub,
        Switch(
            this._.type,
            {
                ConfigUpdateType.CONFIG.value: opaque(Int24ub),  # config_data<0..2^24-1>
                ConfigUpdateType.KIND.value: vector(Int24ub, opaque(Int16ub)),  # KindDescription
            },
            default=GreedyBytes,
        ),
    ),
)
CONFIG_UPDATE_ANS = Struct()  # §6.5.4.2
ERROR_RESPONSE = Struct("error_code" / Int16ub, "error_info" / opaque(Int16ub))  # §6.3.3.1


# ---------------------------------------------------------------------------------------------
# §10 CHORD-RELOAD overlay-specific structures (inside UpdateReq, LeaveReq, RouteQueryAns)
# ---------------------------------------------------------------------------------------------

NODE_ID_LIST = vector(Int16ub, NODE_ID)  # NodeId x<0..2^16-1>
CHORD_UPDATE = Struct(  # §10.7
    "uptime" / Int32ub,
    "type" / Int8ub,
    "lists"
    / Switch(
        this.type,
        {
            ChordUpdateType.PEER_READY.value: Pass,
            ChordUpdateType.NEIGHBORS.value: Struct(
                "predecessors" / NODE_ID_LIST, "successors" / NODE_ID_LIST
            ),
            ChordUpdateType.FULL.value: Struct(
                "predecessors" / NODE_ID_LIST,
                "successors" / NODE_ID_LIST,
                "fingers" / NODE_ID_LIST,
            ),
        },
        default=Error,
    ),
    Terminated,
)
CHORD_LEAVE_DATA = Struct(  # §10.9: from_succ carries successors, from_pred predecessors
    "type" / Int8ub,
    "node_ids"
    / Switch(
        this.type,
        {
            ChordLeaveType.FROM_SUCC.value: NODE_ID_LIST,
            ChordLeaveType.FROM_PRED.value: NODE_ID_LIST,
        },
        default=Error,
    ),
    Terminated,
)
CHORD_ROUTE_QUERY_ANS = Struct("next_peer" / NODE_ID, Terminated)  # §10.8


# ---------------------------------------------------------------------------------------------
# §6.3.3 message contents, §6.3 message
# ---------------------------------------------------------------------------------------------

_BODIES: dict[int, Construct] = {
    MessageCode.PROBE_REQ: PROBE_REQ,
    MessageCode.PROBE_ANS: PROBE_ANS,
    MessageCode.ATTACH_REQ: ATTACH_REQ_ANS,
    MessageCode.ATTACH_ANS: ATTACH_REQ_ANS,
    MessageCode.STORE_REQ: STORE_REQ,
    MessageCode.STORE_ANS: STORE_ANS,
    MessageCode.FETCH_REQ: FETCH_REQ,
    MessageCode.FETCH_ANS: FETCH_ANS,
    MessageCode.FIND_REQ: FIND_REQ,
    MessageCode.FIND_ANS: FIND_ANS,
    MessageCode.JOIN_REQ: JOIN_REQ,
    MessageCode.JOIN_ANS: JOIN_ANS,
    MessageCode.LEAVE_REQ: LEAVE_REQ,
    MessageCode.LEAVE_ANS: LEAVE_ANS,
    MessageCode.UPDATE_REQ: UPDATE_REQ,
    MessageCode.UPDATE_ANS: UPDATE_ANS,
    MessageCode.ROUTE_QUERY_REQ: ROUTE_QUERY_REQ,
    MessageCode.ROUTE_QUERY_ANS: ROUTE_QUERY_ANS,
    MessageCode.PING_REQ: PING_REQ,
    MessageCode.PING_ANS: PING_ANS,
    MessageCode.STAT_REQ: FETCH_REQ,
    MessageCode.STAT_ANS: STAT_ANS,
    MessageCode.APP_ATTACH_REQ: APP_ATTACH_REQ_ANS,
    MessageCode.APP_ATTACH_ANS: APP_ATTACH_REQ_ANS,
    MessageCode.CONFIG_UPDATE_REQ: CONFIG_UPDATE_REQ,
    MessageCode.CONFIG_UPDATE_ANS: CONFIG_UPDATE_ANS,
    MessageCode.ERROR: ERROR_RESPONSE,
}

#: §6.3.3: message_body selected by message_code; unassigned codes are malformed.
MESSAGE_BODY = Switch(this._.message_code, {int(k): v for k, v in _BODIES.items()}, default=Error)
MESSAGE_EXTENSION = Struct(  # §6.3.3
    "type" / Int16ub,
    "critical" / BOOLEAN,
    "extension_contents" / opaque(Int32ub),
)
MESSAGE_CONTENTS = Struct(  # §6.3.3
    "message_code" / Int16ub,
    "message_body" / exactly(Int32ub, MESSAGE_BODY),
    "extensions" / vector(Int32ub, MESSAGE_EXTENSION),
)
#: §6.3: Forwarding Header, Message Contents, Security Block, and nothing after.
MESSAGE = Struct(
    "header" / FORWARDING_HEADER,
    "contents" / MESSAGE_CONTENTS,
    "security_block" / SECURITY_BLOCK,
    Terminated,
)


# ---------------------------------------------------------------------------------------------
# §6.6.2 framing header (per hop, on the overlay link)
# ---------------------------------------------------------------------------------------------

FRAMED_MESSAGE = Struct(
    "type" / Int8ub,
    "frame"
    / Switch(
        this.type,
        {
            FramedMessageType.DATA.value: Struct("sequence" / Int32ub, "message" / opaque(Int24ub)),
            FramedMessageType.ACK.value: Struct("ack_sequence" / Int32ub, "received" / Int32ub),
        },
        default=Error,
    ),
    Terminated,
)


# =============================================================================================
# Model <-> Construct containers
# =============================================================================================


def _params(
    node_id_length: int, data_models: Mapping[int, DataModel] | None = None
) -> dict[str, Any]:
    if not MIN_NODE_ID_LENGTH <= node_id_length <= MAX_NODE_ID_LENGTH:
        raise ValueError(f"NodeIdLength {node_id_length} outside 16..20 (§11.1)")
    models = DEFAULT_DATA_MODELS if data_models is None else data_models
    return {
        "node_id_length": node_id_length,
        "data_models": {kind: model.value for kind, model in models.items()},
    }


# --- §6.3.1, §6.3.2 ---------------------------------------------------------------------------


def _ip_to(a: IpAddressPort) -> dict[str, Any]:
    addr = ipaddress.ip_address(a.address)
    return {"type": 1 if addr.version == 4 else 2, "value": {"addr": addr.packed, "port": a.port}}


def _ip_from(c: Any) -> IpAddressPort:
    return IpAddressPort(ipaddress.ip_address(c.value.addr), c.value.port)


def _dest_to(d: Destination) -> dict[str, Any]:
    if isinstance(d, CompressedDestination):
        if not 0x8000 <= d.opaque_id <= 0xFFFF:
            raise ReloadEncodeError(f"compressed destination {d.opaque_id:#x} needs top bit 1")
        return {"first_byte": d.opaque_id >> 8, "destination": d.opaque_id}
    if isinstance(d, NodeDestination):
        t, data = DestinationType.NODE, d.node_id
    elif isinstance(d, ResourceDestination):
        t, data = DestinationType.RESOURCE, d.resource_id
    elif isinstance(d, OpaqueDestination):
        t, data = DestinationType.OPAQUE_ID_TYPE, d.opaque_id
    else:
        raise ReloadEncodeError(f"not a Destination: {d!r}")
    return {"first_byte": int(t), "destination": {"type": int(t), "destination_data": data}}


def _dest_from(c: Any) -> Destination:
    d = c.destination
    if isinstance(d, int):
        return CompressedDestination(d)
    if d.type == DestinationType.NODE:
        return NodeDestination(d.destination_data)
    if d.type == DestinationType.RESOURCE:
        return ResourceDestination(d.destination_data)
    return OpaqueDestination(d.destination_data)


def _option_to(o: ForwardingOption) -> dict[str, Any]:
    return {"type": o.type, "flags": o.flags, "value": o.value}


def _header_from(c: Any) -> ForwardingHeader:
    return ForwardingHeader(
        overlay=c.overlay,
        configuration_sequence=c.configuration_sequence,
        ttl=c.ttl,
        transaction_id=c.transaction_id,
        max_response_length=c.max_response_length,
        via_list=tuple(_dest_from(d) for d in c.via_list),
        destination_list=tuple(_dest_from(d) for d in c.destination_list),
        options=tuple(ForwardingOption(o.type, o.flags, o.value) for o in c.options),
        fragment=c.fragment,
        version=c.version,
    )


# --- §6.3.4 -------------------------------------------------------------------------------


def _identity_to(i: SignerIdentity) -> dict[str, Any]:
    if i.identity_type in (SignerIdentityType.CERT_HASH, SignerIdentityType.CERT_HASH_NODE_ID):
        value: Any = {"hash_alg": i.hash_alg, "hash": i.hash}
    elif i.identity_type == SignerIdentityType.NONE:
        if i.hash_alg or i.hash:
            raise ReloadEncodeError("SignerIdentity none carries no hash (§6.3.4)")
        value = None
    else:
        raise ReloadEncodeError(f"unknown SignerIdentityType {i.identity_type}")
    return {"identity_type": i.identity_type, "identity": value}


def _identity_from(c: Any) -> SignerIdentity:
    if c.identity is None:
        return SignerIdentity(c.identity_type)
    return SignerIdentity(c.identity_type, c.identity.hash_alg, c.identity.hash)


def _signature_to(s: Signature) -> dict[str, Any]:
    return {
        "algorithm": {"hash": s.algorithm.hash, "signature": s.algorithm.signature},
        "identity": _identity_to(s.identity),
        "signature_value": s.signature_value,
    }


def _signature_from(c: Any) -> Signature:
    return Signature(
        SignatureAndHashAlgorithm(c.algorithm.hash, c.algorithm.signature),
        _identity_from(c.identity),
        c.signature_value,
    )


def _security_to(b: SecurityBlock) -> dict[str, Any]:
    return {
        "certificates": [{"type": g.type, "certificate": g.certificate} for g in b.certificates],
        "signature": _signature_to(b.signature),
    }


def _security_from(c: Any) -> SecurityBlock:
    certs = tuple(GenericCertificate(g.type, g.certificate) for g in c.certificates)
    return SecurityBlock(certs, _signature_from(c.signature))


# --- §7 -------------------------------------------------------------------------------------


def _data_value_to(v: DataValue) -> dict[str, Any]:
    return {"exists": int(v.exists), "value": v.value}


def _data_value_from(c: Any) -> DataValue:
    return DataValue(bool(c.exists), c.value)


def _value_to(v: StoredDataValue) -> tuple[str, dict[str, Any]]:
    if isinstance(v, DataValue):
        return DataModel.SINGLE.value, _data_value_to(v)
    if isinstance(v, ArrayEntry):
        return DataModel.ARRAY.value, {"index": v.index, "value": _data_value_to(v.value)}
    if isinstance(v, DictionaryEntry):
        return DataModel.DICTIONARY.value, {"key": v.key, "value": _data_value_to(v.value)}
    raise ReloadEncodeError(f"not a StoredDataValue: {v!r}")


def _value_from(c: Any) -> StoredDataValue:
    if "index" in c:
        return ArrayEntry(c.index, _data_value_from(c.value))
    if "key" in c:
        return DictionaryEntry(c.key, _data_value_from(c.value))
    return _data_value_from(c)


def _stored_data_to(s: StoredData) -> dict[str, Any]:
    model, value = _value_to(s.value)
    return {
        "model": model,
        "storage_time": s.storage_time,
        "lifetime": s.lifetime,
        "value": value,
        "signature": _signature_to(s.signature),
    }


def _stored_data_from(c: Any) -> StoredData:
    return StoredData(
        c.storage_time, c.lifetime, _value_from(c.value), _signature_from(c.signature)
    )


def _values_model(kind: int, values: tuple[Any, ...], key: str) -> None:
    models = {v[key] for v in values}
    if len(models) > 1:
        raise ReloadEncodeError(f"Kind-ID {kind:#x} mixes data models {sorted(models)} (§7.2)")


def _stored_list_to(kind: int, values: tuple[StoredData, ...]) -> list[dict[str, Any]]:
    out = [_stored_data_to(s) for s in values]
    _values_model(kind, tuple(out), "model")
    return out


def _specifier_to(s: StoredDataSpecifier) -> dict[str, Any]:
    if s.indices is not None and s.keys is not None:
        raise ReloadEncodeError("a StoredDataSpecifier has indices or keys, not both (§7.4.2.1)")
    spec: list[Any] | None
    if s.indices is not None:
        model, spec = "ARRAY", [{"first": r.first, "last": r.last} for r in s.indices]
    elif s.keys is not None:
        model, spec = "DICTIONARY", list(s.keys)
    else:
        model, spec = "SINGLE", None
    return {"kind": s.kind, "generation": s.generation, "model": model, "model_specifier": spec}


def _specifier_from(c: Any, model: str | None) -> StoredDataSpecifier:
    # The parser chose the layout by the same Kind model, so ``model`` is known here.
    spec = c.model_specifier
    if model == DataModel.ARRAY.value:
        indices = tuple(ArrayRange(r.first, r.last) for r in spec)
        return StoredDataSpecifier(c.kind, c.generation, indices=indices)
    if model == DataModel.DICTIONARY.value:
        return StoredDataSpecifier(c.kind, c.generation, keys=tuple(spec))
    return StoredDataSpecifier(c.kind, c.generation)


def _meta_to(m: MetaData) -> dict[str, Any]:
    return {
        "exists": int(m.exists),
        "value_length": m.value_length,
        "hash_algorithm": m.hash_algorithm,
        "hash_value": m.hash_value,
    }


def _meta_from(c: Any) -> MetaData:
    return MetaData(bool(c.exists), c.value_length, c.hash_algorithm, c.hash_value)


def _metadata_value_to(v: MetaDataValue) -> tuple[str, dict[str, Any]]:
    if isinstance(v, MetaData):
        return "SINGLE", _meta_to(v)
    if isinstance(v, ArrayEntryMeta):
        return "ARRAY", {"index": v.index, "value": _meta_to(v.value)}
    if isinstance(v, DictionaryEntryMeta):
        return "DICTIONARY", {"key": v.key, "value": _meta_to(v.value)}
    raise ReloadEncodeError(f"not a MetaDataValue: {v!r}")


def _metadata_value_from(c: Any) -> MetaDataValue:
    if "index" in c:
        return ArrayEntryMeta(c.index, _meta_from(c.value))
    if "key" in c:
        return DictionaryEntryMeta(c.key, _meta_from(c.value))
    return _meta_from(c)


def _stored_meta_to(s: StoredMetaData) -> dict[str, Any]:
    model, value = _metadata_value_to(s.metadata)
    return {
        "model": model,
        "storage_time": s.storage_time,
        "lifetime": s.lifetime,
        "metadata": value,
    }


# --- §6.5.1 ---------------------------------------------------------------------------------


def _candidate_to(c: IceCandidate) -> dict[str, Any]:
    if (c.type == 1) != (c.rel_addr_port is None):
        raise ReloadEncodeError("rel_addr_port is present exactly for srflx and relay (§6.5.1.1)")
    return {
        "addr_port": _ip_to(c.addr_port),
        "overlay_link": c.overlay_link,
        "foundation": c.foundation,
        "priority": c.priority,
        "type": c.type,
        "rel_addr_port": None if c.rel_addr_port is None else _ip_to(c.rel_addr_port),
        "extensions": [{"name": e.name, "value": e.value} for e in c.extensions],
    }


def _candidate_from(c: Any) -> IceCandidate:
    return IceCandidate(
        addr_port=_ip_from(c.addr_port),
        overlay_link=c.overlay_link,
        foundation=c.foundation,
        priority=c.priority,
        type=c.type,
        rel_addr_port=None if c.rel_addr_port is None else _ip_from(c.rel_addr_port),
        extensions=tuple(IceExtension(e.name, e.value) for e in c.extensions),
    )


# --- bodies ---------------------------------------------------------------------------------


def _body_to(b: MessageBody) -> dict[str, Any]:
    if isinstance(b, ProbeReq):
        return {"requested_info": list(b.requested_info)}
    if isinstance(b, ProbeAns):
        return {"probe_info": [{"type": p.type, "value": p.value} for p in b.probe_info]}
    if isinstance(b, AttachReq | AttachAns):
        return {
            "ufrag": b.ufrag,
            "password": b.password,
            "role": b.role,
            "candidates": [_candidate_to(c) for c in b.candidates],
            "send_update": int(b.send_update),
        }
    if isinstance(b, AppAttachReq | AppAttachAns):
        return {
            "ufrag": b.ufrag,
            "password": b.password,
            "application": b.application,
            "role": b.role,
            "candidates": [_candidate_to(c) for c in b.candidates],
        }
    if isinstance(b, StoreReq):
        kind_data = [
            {
                "kind": k.kind,
                "generation_counter": k.generation_counter,
                "values": _stored_list_to(k.kind, k.values),
            }
            for k in b.kind_data
        ]
        return {"resource": b.resource, "replica_number": b.replica_number, "kind_data": kind_data}
    if isinstance(b, StoreAns):
        return {
            "kind_responses": [
                {
                    "kind": r.kind,
                    "generation_counter": r.generation_counter,
                    "replicas": list(r.replicas),
                }
                for r in b.kind_responses
            ]
        }
    if isinstance(b, FetchReq | StatReq):
        return {"resource": b.resource, "specifiers": [_specifier_to(s) for s in b.specifiers]}
    if isinstance(b, FetchAns):
        return {
            "kind_responses": [
                {
                    "kind": r.kind,
                    "generation": r.generation,
                    "values": _stored_list_to(r.kind, r.values),
                }
                for r in b.kind_responses
            ]
        }
    if isinstance(b, StatAns):
        responses = []
        for r in b.kind_responses:
            values = [_stored_meta_to(v) for v in r.values]
            _values_model(r.kind, tuple(values), "model")
            responses.append({"kind": r.kind, "generation": r.generation, "values": values})
        return {"kind_responses": responses}
    if isinstance(b, FindReq):
        return {"resource": b.resource, "kinds": list(b.kinds)}
    if isinstance(b, FindAns):
        return {"results": [{"kind": r.kind, "closest": r.closest} for r in b.results]}
    if isinstance(b, JoinReq):
        return {
            "joining_peer_id": b.joining_peer_id,
            "overlay_specific_data": b.overlay_specific_data,
        }
    if isinstance(b, JoinAns):
        return {"overlay_specific_data": b.overlay_specific_data}
    if isinstance(b, LeaveReq):
        return {
            "leaving_peer_id": b.leaving_peer_id,
            "overlay_specific_data": b.overlay_specific_data,
        }
    if isinstance(b, LeaveAns | ConfigUpdateAns):
        return {}
    if isinstance(b, UpdateReq | UpdateAns | RouteQueryAns):
        return {"data": b.data}
    if isinstance(b, RouteQueryReq):
        return {
            "send_update": int(b.send_update),
            "destination": _dest_to(b.destination),
            "overlay_specific_data": b.overlay_specific_data,
        }
    if isinstance(b, PingReq):
        return {"padding": b.padding}
    if isinstance(b, PingAns):
        return {"response_id": b.response_id, "time": b.time}
    if isinstance(b, ConfigUpdateReq):
        if b.type == ConfigUpdateType.KIND:
            if b.config_data:
                raise ReloadEncodeError("a kind ConfigUpdateReq carries kinds, not config_data")
            data: Any = list(b.kinds)
        else:
            if b.kinds:
                raise ReloadEncodeError("only a kind ConfigUpdateReq carries kinds (§6.5.4.1)")
            data = b.config_data
        return {"type": b.type, "data": data}
    if isinstance(b, ErrorResponse):
        return {"error_code": b.error_code, "error_info": b.error_info}
    raise ReloadEncodeError(f"not a RELOAD message body: {b!r}")


def _probe_info_from(c: Any) -> ProbeInformation:
    return ProbeInformation(c.type, c.value)


def _body_from(code: int, c: Any, models: Mapping[int, str]) -> MessageBody:
    if code == MessageCode.PROBE_REQ:
        return ProbeReq(tuple(c.requested_info))
    if code == MessageCode.PROBE_ANS:
        return ProbeAns(tuple(_probe_info_from(p) for p in c.probe_info))
    if code in (MessageCode.ATTACH_REQ, MessageCode.ATTACH_ANS):
        cls = AttachReq if code == MessageCode.ATTACH_REQ else AttachAns
        return cls(
            c.ufrag,
            c.password,
            c.role,
            tuple(_candidate_from(x) for x in c.candidates),
            bool(c.send_update),
        )
    if code in (MessageCode.APP_ATTACH_REQ, MessageCode.APP_ATTACH_ANS):
        app = AppAttachReq if code == MessageCode.APP_ATTACH_REQ else AppAttachAns
        return app(
            c.ufrag,
            c.password,
            c.application,
            c.role,
            tuple(_candidate_from(x) for x in c.candidates),
        )
    if code == MessageCode.STORE_REQ:
        kind_data = tuple(
            StoreKindData(
                k.kind, k.generation_counter, tuple(_stored_data_from(v) for v in k["values"])
            )
            for k in c.kind_data
        )
        return StoreReq(c.resource, c.replica_number, kind_data)
    if code == MessageCode.STORE_ANS:
        return StoreAns(
            tuple(
                StoreKindResponse(r.kind, r.generation_counter, tuple(r.replicas))
                for r in c.kind_responses
            )
        )
    if code in (MessageCode.FETCH_REQ, MessageCode.STAT_REQ):
        specs = [_specifier_from(s, models.get(s.kind)) for s in c.specifiers]
        req = FetchReq if code == MessageCode.FETCH_REQ else StatReq
        return req(c.resource, tuple(specs))
    if code == MessageCode.FETCH_ANS:
        return FetchAns(
            tuple(
                FetchKindResponse(
                    r.kind, r.generation, tuple(_stored_data_from(v) for v in r["values"])
                )
                for r in c.kind_responses
            )
        )
    if code == MessageCode.STAT_ANS:
        return StatAns(
            tuple(
                StatKindResponse(
                    r.kind,
                    r.generation,
                    tuple(
                        StoredMetaData(
                            v.storage_time,
                            v.lifetime,
                            _metadata_value_from(v.metadata),
                        )
                        for v in r["values"]
                    ),
                )
                for r in c.kind_responses
            )
        )
    if code == MessageCode.FIND_REQ:
        return FindReq(c.resource, tuple(c.kinds))
    if code == MessageCode.FIND_ANS:
        return FindAns(tuple(FindKindData(r.kind, r.closest) for r in c.results))
    if code == MessageCode.JOIN_REQ:
        return JoinReq(c.joining_peer_id, c.overlay_specific_data)
    if code == MessageCode.JOIN_ANS:
        return JoinAns(c.overlay_specific_data)
    if code == MessageCode.LEAVE_REQ:
        return LeaveReq(c.leaving_peer_id, c.overlay_specific_data)
    if code == MessageCode.LEAVE_ANS:
        return LeaveAns()
    if code == MessageCode.UPDATE_REQ:
        return UpdateReq(c.data)
    if code == MessageCode.UPDATE_ANS:
        return UpdateAns(c.data)
    if code == MessageCode.ROUTE_QUERY_REQ:
        return RouteQueryReq(
            bool(c.send_update), _dest_from(c.destination), c.overlay_specific_data
        )
    if code == MessageCode.ROUTE_QUERY_ANS:
        return RouteQueryAns(c.data)
    if code == MessageCode.PING_REQ:
        return PingReq(c.padding)
    if code == MessageCode.PING_ANS:
        return PingAns(c.response_id, c.time)
    if code == MessageCode.CONFIG_UPDATE_REQ:
        if c.type == ConfigUpdateType.KIND:
            return ConfigUpdateReq(c.type, kinds=tuple(c.data))
        return ConfigUpdateReq(c.type, config_data=c.data)
    if code == MessageCode.CONFIG_UPDATE_ANS:
        return ConfigUpdateAns()
    if code == MessageCode.ERROR:
        known = c.error_code in ErrorCode._value2member_map_
        return ErrorResponse(ErrorCode(c.error_code) if known else c.error_code, c.error_info)
    raise ReloadDecodeError(f"unknown message code {code:#x}")  # unreachable: Switch default=Error


def _contents_to(m: MessageContents) -> dict[str, Any]:
    return {
        "message_code": int(m.message_code),
        "message_body": _body_to(m.body),
        "extensions": [
            {
                "type": e.type,
                "critical": int(e.critical),
                "extension_contents": e.extension_contents,
            }
            for e in m.extensions
        ],
    }


def _contents_from(c: Any, models: Mapping[int, str]) -> MessageContents:
    body = _body_from(c.message_code, c.message_body, models)
    extensions = tuple(
        MessageExtension(e.type, bool(e.critical), e.extension_contents) for e in c.extensions
    )
    return MessageContents(body, extensions)


# =============================================================================================
# Public API
# =============================================================================================


def _build(construct: Construct, obj: Any, what: str, params: dict[str, Any]) -> bytes:
    try:
        data: bytes = construct.build(obj, **params)
    except _UnknownKind as exc:  # a model the encoder put there itself: cannot happen
        raise ReloadEncodeError(str(exc)) from exc
    except ConstructError as exc:
        raise ReloadEncodeError(f"cannot encode {what}: {exc}") from exc
    return data


def _parse(construct: Construct, data: bytes, what: str, params: dict[str, Any]) -> Any:
    try:
        return construct.parse(data, **params)
    except _UnknownKind as exc:
        raise UnknownKindError(() if exc.kind is None else (exc.kind,)) from exc
    except ConstructError as exc:
        raise ReloadDecodeError(f"malformed {what}: {exc}") from exc


def encode_destination(d: Destination, node_id_length: int = DEFAULT_NODE_ID_LENGTH) -> bytes:
    """The wire form of one Destination (§6.3.2.2)."""
    return _build(DESTINATION, _dest_to(d), "Destination", _params(node_id_length))


def encode_forwarding_header_construct(
    header: ForwardingHeader, payload_length: int, node_id_length: int = DEFAULT_NODE_ID_LENGTH
) -> bytes:
    """The forwarding header (§6.3.2) of a message whose contents and security block (or
    fragment of them) take ``payload_length`` bytes: the length field is computed."""
    params = _params(node_id_length)
    via = [_dest_to(d) for d in header.via_list]
    dest = [_dest_to(d) for d in header.destination_list]
    options = [_option_to(o) for o in header.options]
    via_len = len(_build(DESTINATION_LIST, via, "via list", params))
    dest_len = len(_build(DESTINATION_LIST, dest, "destination list", params))
    opt_len = len(_build(FORWARDING_OPTIONS, options, "forwarding options", params))
    if max(via_len, dest_len, opt_len) > 0xFFFF:
        raise ReloadEncodeError("a forwarding header list exceeds 65535 bytes (§6.3.2)")
    length = FORWARDING_HEADER_SIZE + via_len + dest_len + opt_len + payload_length
    obj = {
        "overlay": header.overlay,
        "configuration_sequence": header.configuration_sequence,
        "version": header.version,
        "ttl": header.ttl,
        "fragment": header.fragment,
        "length": length,
        "transaction_id": header.transaction_id,
        "max_response_length": header.max_response_length,
        "via_list_length": via_len,
        "destination_list_length": dest_len,
        "options_length": opt_len,
        "via_list": via,
        "destination_list": dest,
        "options": options,
    }
    return _build(FORWARDING_HEADER, obj, "forwarding header", params)


def _check_length(data: bytes) -> None:
    n = len(data)
    if n < FORWARDING_HEADER_SIZE:
        raise ReloadDecodeError(f"{n} bytes: shorter than the 38-byte forwarding header (§6.3.2)")
    token = int.from_bytes(data[0:4], "big")
    if token != RELO_TOKEN:
        raise ReloadDecodeError(f"relo_token {token:#010x} is not 0xd2454c4f (§6.3.2)")
    length = int.from_bytes(data[16:20], "big")
    if length != n:
        raise ReloadDecodeError(f"length field says {length} bytes, the message has {n} (§6.3.2)")
    fragment = int.from_bytes(data[12:16], "big")
    if not fragment & 0x80000000:
        raise ReloadDecodeError(f"fragment field {fragment:#010x}: bit 31 must be 1 (§6.3.2)")


def decode_forwarding_header_construct(
    data: bytes, node_id_length: int = DEFAULT_NODE_ID_LENGTH
) -> tuple[ForwardingHeader, int]:
    """Decode the forwarding header of the message (or fragment) ``data``; return it and the
    offset where the message contents (or the fragment's bytes) start.

    The length field must equal ``len(data)`` and relo_token must be right (§6.3.2); the
    version is returned for the caller to reject. Raises :class:`ReloadDecodeError`.
    """
    data = bytes(data)
    params = _params(node_id_length)
    _check_length(data)
    lists = sum(int.from_bytes(data[i : i + 2], "big") for i in (32, 34, 36))
    end = FORWARDING_HEADER_SIZE + lists
    if end > len(data):
        raise ReloadDecodeError(
            f"forwarding header lists run past the message end ({end} > {len(data)})"
        )
    c = _parse(FORWARDING_HEADER, data[:end], "forwarding header", params)
    return _header_from(c), end


def encode_contents_construct(
    contents: MessageContents, node_id_length: int = DEFAULT_NODE_ID_LENGTH
) -> bytes:
    """MessageContents (§6.3.3) on the wire: part of the message signature input (§6.3.4)."""
    return _build(
        MESSAGE_CONTENTS, _contents_to(contents), "MessageContents", _params(node_id_length)
    )


def decode_contents_construct(
    data: bytes,
    node_id_length: int = DEFAULT_NODE_ID_LENGTH,
    data_models: Mapping[int, DataModel] | None = None,
) -> MessageContents:
    """Decode a MessageContents that fills ``data`` exactly (§6.3.3)."""
    params = _params(node_id_length, data_models)
    c = _parse(
        FocusedSeq("c", "c" / MESSAGE_CONTENTS, Terminated), bytes(data), "MessageContents", params
    )
    return _contents_from(c, params["data_models"])


def encode_signer_identity_construct(identity: SignerIdentity) -> bytes:
    """SignerIdentity (§6.3.4) on the wire: the tail of the signature inputs (§6.3.4, §7.1)."""
    return _build(
        SIGNER_IDENTITY, _identity_to(identity), "SignerIdentity", _params(DEFAULT_NODE_ID_LENGTH)
    )


def encode_signature_construct(signature: Signature) -> bytes:
    """Signature (§6.3.4) on the wire."""
    return _build(SIGNATURE, _signature_to(signature), "Signature", _params(DEFAULT_NODE_ID_LENGTH))


def encode_security_block_construct(block: SecurityBlock) -> bytes:
    """SecurityBlock (§6.3.4) on the wire."""
    return _build(
        SECURITY_BLOCK, _security_to(block), "SecurityBlock", _params(DEFAULT_NODE_ID_LENGTH)
    )


def decode_security_block_construct(data: bytes) -> SecurityBlock:
    """Decode a SecurityBlock that fills ``data`` exactly (§6.3.4)."""
    c = _parse(
        FocusedSeq("b", "b" / SECURITY_BLOCK, Terminated),
        bytes(data),
        "SecurityBlock",
        _params(DEFAULT_NODE_ID_LENGTH),
    )
    return _security_from(c)


def encode_stored_data_value_construct(value: StoredDataValue) -> bytes:
    """StoredDataValue (§7.2) on the wire, the model taken from the value's class.

    It is part of the StoredData signature input (§7.1), where an ArrayEntry's index is
    zeroed: pass ``ArrayEntry(0, ...)`` for that.
    """
    model, obj = _value_to(value)
    construct = {"SINGLE": DATA_VALUE, "ARRAY": ARRAY_ENTRY, "DICTIONARY": DICTIONARY_ENTRY}[model]
    return _build(construct, obj, "StoredDataValue", _params(DEFAULT_NODE_ID_LENGTH))


def encode_stored_data_construct(data: StoredData) -> bytes:
    """StoredData (§7) on the wire, its length field included."""
    return _build(STORED_DATA, _stored_data_to(data), "StoredData", _params(DEFAULT_NODE_ID_LENGTH))


def decode_stored_data_construct(data: bytes, model: DataModel) -> StoredData:
    """Decode a StoredData (length field included) that fills ``data``, of data model ``model``."""
    params = _params(DEFAULT_NODE_ID_LENGTH, {0: model})
    wrapped = Struct("kind" / Computed(0), "stored" / STORED_DATA, Terminated)
    c = _parse(wrapped, bytes(data), "StoredData", params)
    return _stored_data_from(c.stored)


def encode_message_construct(msg: Message, node_id_length: int = DEFAULT_NODE_ID_LENGTH) -> bytes:
    """The wire form of a whole message (§6.3); the header's length field is computed.

    Raises :class:`ReloadEncodeError` for a value that does not fit its field.
    """
    contents = encode_contents_construct(msg.contents, node_id_length)
    security = encode_security_block_construct(msg.security_block)
    header = encode_forwarding_header_construct(
        msg.header, len(contents) + len(security), node_id_length
    )
    return header + contents + security


def decode_message_construct(
    data: bytes,
    node_id_length: int = DEFAULT_NODE_ID_LENGTH,
    data_models: Mapping[int, DataModel] | None = None,
) -> Message:
    """Decode a whole, unfragmented message (§6.3), the body according to its message code.

    Checks before parsing that relo_token is right, that the length field equals
    ``len(data)`` and that this is not a fragment (reassemble first, §6.7). ``data_models``
    gives the data model of each Kind-ID (§7.2), default :data:`DEFAULT_DATA_MODELS`.
    Raises :class:`ReloadDecodeError` (:class:`UnknownKindError` for a Kind-ID without one).
    """
    data = bytes(data)
    params = _params(node_id_length, data_models)
    _check_length(data)
    fragment = int.from_bytes(data[12:16], "big")
    if fragment & 0x40FFFFFF != 0x40000000:
        raise ReloadDecodeError(f"fragment {fragment:#010x}: reassemble before decoding (§6.7)")
    c = _parse(MESSAGE, data, "message", params)
    return Message(
        _header_from(c.header),
        _contents_from(c.contents, params["data_models"]),
        _security_from(c.security_block),
    )


def decode_body_construct(
    code: int, body: bytes, node_id_length: int, data_models: Mapping[int, DataModel]
) -> MessageBody:
    """Decode a message_body of ``code`` (§6.3.3) that fills ``body``, with
    :data:`MESSAGE_BODY`: what :mod:`reload.fastwire` uses for the bodies it does not cover.
    Raises :class:`ReloadDecodeError` (:class:`UnknownKindError` for an unknown Kind)."""
    params = _params(node_id_length, data_models)
    wrapped = Struct(
        "message_code" / Computed(code),
        "message_body" / FocusedSeq("value", "value" / MESSAGE_BODY, Terminated),
    )
    c = _parse(wrapped, bytes(body), "message body", params)
    return _body_from(code, c.message_body, params["data_models"])


# --- the message path: reload.fastwire, byte-equal to the *_construct functions above --------


def encode_forwarding_header(
    header: ForwardingHeader, payload_length: int, node_id_length: int = DEFAULT_NODE_ID_LENGTH
) -> bytes:
    """The forwarding header (§6.3.2) of a message whose contents and security block (or
    fragment of them) take ``payload_length`` bytes: the length field is computed."""
    return fastwire.encode_forwarding_header(header, payload_length, node_id_length)


def decode_forwarding_header(
    data: bytes, node_id_length: int = DEFAULT_NODE_ID_LENGTH
) -> tuple[ForwardingHeader, int]:
    """Decode the forwarding header of the message (or fragment) ``data``; return it and the
    offset where the message contents (or the fragment's bytes) start.

    The length field must equal ``len(data)`` and relo_token must be right (§6.3.2); the
    version is returned for the caller to reject. Raises :class:`ReloadDecodeError`.
    """
    return fastwire.decode_forwarding_header(data, node_id_length)


def encode_contents(
    contents: MessageContents, node_id_length: int = DEFAULT_NODE_ID_LENGTH
) -> bytes:
    """MessageContents (§6.3.3) on the wire: part of the message signature input (§6.3.4)."""
    return fastwire.encode_contents(contents, node_id_length)


def decode_contents(
    data: bytes,
    node_id_length: int = DEFAULT_NODE_ID_LENGTH,
    data_models: Mapping[int, DataModel] | None = None,
) -> MessageContents:
    """Decode a MessageContents that fills ``data`` exactly (§6.3.3)."""
    return fastwire.decode_contents(data, node_id_length, data_models)


def encode_signer_identity(identity: SignerIdentity) -> bytes:
    """SignerIdentity (§6.3.4) on the wire: the tail of the signature inputs (§6.3.4, §7.1)."""
    return fastwire.encode_signer_identity(identity)


def encode_signature(signature: Signature) -> bytes:
    """Signature (§6.3.4) on the wire."""
    return fastwire.encode_signature(signature)


def encode_security_block(block: SecurityBlock) -> bytes:
    """SecurityBlock (§6.3.4) on the wire."""
    return fastwire.encode_security_block(block)


def decode_security_block(data: bytes) -> SecurityBlock:
    """Decode a SecurityBlock that fills ``data`` exactly (§6.3.4)."""
    return fastwire.decode_security_block(data)


def encode_stored_data_value(value: StoredDataValue) -> bytes:
    """StoredDataValue (§7.2) on the wire, the model taken from the value's class.

    It is part of the StoredData signature input (§7.1), where an ArrayEntry's index is
    zeroed: pass ``ArrayEntry(0, ...)`` for that.
    """
    return fastwire.encode_stored_data_value(value)


def encode_stored_data(data: StoredData) -> bytes:
    """StoredData (§7) on the wire, its length field included."""
    return fastwire.encode_stored_data(data)


def decode_stored_data(data: bytes, model: DataModel) -> StoredData:
    """Decode a StoredData (length field included) that fills ``data``, of data model ``model``."""
    return fastwire.decode_stored_data(data, model)


def encode_message(msg: Message, node_id_length: int = DEFAULT_NODE_ID_LENGTH) -> bytes:
    """The wire form of a whole message (§6.3); the header's length field is computed.

    Raises :class:`ReloadEncodeError` for a value that does not fit its field.
    """
    return fastwire.encode_message(msg, node_id_length)


def decode_message(
    data: bytes,
    node_id_length: int = DEFAULT_NODE_ID_LENGTH,
    data_models: Mapping[int, DataModel] | None = None,
) -> Message:
    """Decode a whole, unfragmented message (§6.3), the body according to its message code.

    Checks before parsing that relo_token is right, that the length field equals
    ``len(data)`` and that this is not a fragment (reassemble first, §6.7). ``data_models``
    gives the data model of each Kind-ID (§7.2), default :data:`DEFAULT_DATA_MODELS`.
    Raises :class:`ReloadDecodeError` (:class:`UnknownKindError` for a Kind-ID without one).
    """
    return fastwire.decode_message(data, node_id_length, data_models)


def encode_framing(frame: FramedMessage) -> bytes:
    """The framing header (§6.6.2) and, for data, the message it carries."""
    if isinstance(frame, FramedData):
        obj: dict[str, Any] = {
            "type": FramedMessageType.DATA.value,
            "frame": {"sequence": frame.sequence, "message": frame.message},
        }
    elif isinstance(frame, FramedAck):
        obj = {
            "type": FramedMessageType.ACK.value,
            "frame": {"ack_sequence": frame.ack_sequence, "received": frame.received},
        }
    else:
        raise ReloadEncodeError(f"not a framed message: {frame!r}")
    return _build(FRAMED_MESSAGE, obj, "framed message", _params(DEFAULT_NODE_ID_LENGTH))


def decode_framing(data: bytes) -> FramedMessage:
    """Decode one framed message that fills ``data`` exactly (a datagram, or a frame cut from
    a stream with :func:`framed_size`). Raises :class:`ReloadDecodeError`."""
    c = _parse(FRAMED_MESSAGE, bytes(data), "framed message", _params(DEFAULT_NODE_ID_LENGTH))
    if c.type == FramedMessageType.DATA:
        return FramedData(c.frame.sequence, c.frame.message)
    return FramedAck(c.frame.ack_sequence, c.frame.received)


def framed_size(buffer: bytes) -> int | None:
    """Bytes the frame at the start of a stream ``buffer`` takes, or None until enough bytes
    arrived to tell (TLS-TCP-FH, §6.6.2). Raises :class:`ReloadDecodeError` on an unknown type."""
    if not buffer:
        return None
    if buffer[0] == FramedMessageType.ACK:
        return 9
    if buffer[0] == FramedMessageType.DATA:
        return None if len(buffer) < 8 else 8 + int.from_bytes(buffer[5:8], "big")
    raise ReloadDecodeError(f"unknown framed message type {buffer[0]} (§6.6.2)")


# --- §10 CHORD-RELOAD ------------------------------------------------------------------------


def encode_chord_update(update: ChordUpdate, node_id_length: int = DEFAULT_NODE_ID_LENGTH) -> bytes:
    """ChordUpdate (§10.7): the bytes of an :class:`~reload.messages.UpdateReq`'s ``data``."""
    lists: Any
    if update.type == ChordUpdateType.PEER_READY:
        if update.predecessors or update.successors or update.fingers:
            raise ReloadEncodeError("a peer_ready ChordUpdate carries no lists (§10.7)")
        lists = None
    elif update.type == ChordUpdateType.NEIGHBORS:
        if update.fingers:
            raise ReloadEncodeError("a neighbors ChordUpdate carries no fingers (§10.7)")
        lists = {"predecessors": list(update.predecessors), "successors": list(update.successors)}
    elif update.type == ChordUpdateType.FULL:
        lists = {
            "predecessors": list(update.predecessors),
            "successors": list(update.successors),
            "fingers": list(update.fingers),
        }
    else:
        raise ReloadEncodeError(f"unknown ChordUpdateType {update.type}")
    obj = {"uptime": update.uptime, "type": update.type, "lists": lists}
    return _build(CHORD_UPDATE, obj, "ChordUpdate", _params(node_id_length))


def decode_chord_update(data: bytes, node_id_length: int = DEFAULT_NODE_ID_LENGTH) -> ChordUpdate:
    """Decode a ChordUpdate that fills ``data`` (§10.7). Raises :class:`ReloadDecodeError`."""
    c = _parse(CHORD_UPDATE, bytes(data), "ChordUpdate", _params(node_id_length))
    if c.lists is None:
        return ChordUpdate(c.uptime, c.type)
    return ChordUpdate(
        c.uptime,
        c.type,
        tuple(c.lists.predecessors),
        tuple(c.lists.successors),
        tuple(c.lists.get("fingers", ())),
    )


def encode_chord_leave_data(
    leave: ChordLeaveData, node_id_length: int = DEFAULT_NODE_ID_LENGTH
) -> bytes:
    """ChordLeaveData (§10.9): a :class:`~reload.messages.LeaveReq`'s overlay_specific_data."""
    obj = {"type": leave.type, "node_ids": list(leave.node_ids)}
    return _build(CHORD_LEAVE_DATA, obj, "ChordLeaveData", _params(node_id_length))


def decode_chord_leave_data(
    data: bytes, node_id_length: int = DEFAULT_NODE_ID_LENGTH
) -> ChordLeaveData:
    """Decode a ChordLeaveData that fills ``data`` (§10.9). Raises :class:`ReloadDecodeError`."""
    c = _parse(CHORD_LEAVE_DATA, bytes(data), "ChordLeaveData", _params(node_id_length))
    return ChordLeaveData(c.type, tuple(c.node_ids))


def encode_chord_route_query_ans(
    answer: ChordRouteQueryAns, node_id_length: int = DEFAULT_NODE_ID_LENGTH
) -> bytes:
    """ChordRouteQueryAns (§10.8): a :class:`~reload.messages.RouteQueryAns`'s ``data``."""
    obj = {"next_peer": answer.next_peer}
    return _build(CHORD_ROUTE_QUERY_ANS, obj, "ChordRouteQueryAns", _params(node_id_length))


def decode_chord_route_query_ans(
    data: bytes, node_id_length: int = DEFAULT_NODE_ID_LENGTH
) -> ChordRouteQueryAns:
    """Decode a ChordRouteQueryAns that fills ``data`` (§10.8)."""
    c = _parse(CHORD_ROUTE_QUERY_ANS, bytes(data), "ChordRouteQueryAns", _params(node_id_length))
    return ChordRouteQueryAns(c.next_peer)
