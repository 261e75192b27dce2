"""scapy layers for RELOAD (RFC 6940): the overlay link framing header (§6.6.2), the forwarding
header (§6.3.2), the message contents (§6.3.3) and the security block (§6.3.4).

The normative definition is the Construct code of :mod:`reload.wire`; these layers follow its
names. :class:`RELOADFraming` is what travels on our links (types 3 DTLS-UDP-SR-NO-ICE and 4
TLS-TCP-FH-NO-ICE, once the (D)TLS record layer is removed, as in our ``--pcap`` captures): a
data frame (type 128, sequence, 24-bit length, the message) or an ack frame (type 129,
ack_sequence, the received bitmask). :class:`RELOAD` is the message: the 38-byte fixed part of
the forwarding header, the via and destination lists, the forwarding options, then the message
code with the method names of §14.8 and the body, decoded where that is cheap (Ping, Join,
Leave, Update with CHORD-RELOAD's ChordUpdate, Store, Fetch, Stat, Find, Error; the stored
values themselves stay raw: their layout depends on the Kind's data model), the message
extensions, and the security block (certificates, the signature algorithm, the signer identity
and the signature value). A fragment (§6.7) keeps its body raw.

The Node-ID length is a configuration parameter (§11.1, 16 to 20 bytes, 16 by default):
:func:`reload_context` sets it for the dissections inside its block.

Bound to UDP and TCP port 6084 (RELOAD's registered port, ``p2pcdn`` default).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from scapy.fields import (
    BitField,
    ByteEnumField,
    ByteField,
    ConditionalField,
    FieldLenField,
    FieldListField,
    FlagsField,
    IntField,
    LongField,
    PacketLenField,
    PacketListField,
    ShortEnumField,
    ShortField,
    StrField,
    StrLenField,
    ThreeBytesField,
    XIntField,
    XLongField,
    XShortField,
    XStrField,
    XStrFixedLenField,
    XStrLenField,
)
from scapy.layers.inet import TCP, UDP
from scapy.packet import Packet, Raw, bind_layers

from reload.messages import (
    DEFAULT_NODE_ID_LENGTH,
    RELO_TOKEN,
    CompressedDestination,
    Destination,
    ErrorCode,
    ForwardingHeader,
    ForwardingOption,
    GenericCertificate,
    MessageCode,
    NodeDestination,
    OpaqueDestination,
    ResourceDestination,
    SecurityBlock,
    Signature,
    SignatureAndHashAlgorithm,
    SignerIdentity,
)

__all__ = [
    "DEFAULT_PORT",
    "ERROR_NAMES",
    "METHOD_NAMES",
    "RELOAD",
    "RELOADDestination",
    "RELOADFraming",
    "forwarding_header_model",
    "reload_context",
    "security_block_model",
]

#: RELOAD's registered port (RFC 6940 §14.2), the ``p2pcdn overlay`` default.
DEFAULT_PORT = 6084

_METHODS = {
    0x01: "Probe",
    0x03: "Attach",
    0x07: "Store",
    0x09: "Fetch",
    0x0D: "Find",
    0x0F: "Join",
    0x11: "Leave",
    0x13: "Update",
    0x15: "RouteQuery",
    0x17: "Ping",
    0x19: "Stat",
    0x1D: "AppAttach",
    0x21: "ConfigUpdate",
    0x23: "exp_a",
    0x25: "exp_b",
}
#: message_code names (§14.8): a request is odd, its answer the next even code.
METHOD_NAMES: dict[int, str] = {
    **{code: f"{name}Req" for code, name in _METHODS.items()},
    **{code + 1: f"{name}Ans" for code, name in _METHODS.items()},
    0xFFFF: "Error",
}
#: Error codes (§14.9).
ERROR_NAMES = {int(c): f"Error_{c.name.title()}" for c in ErrorCode}
_FRAME_TYPES = {128: "data", 129: "ack"}
_DESTINATION_TYPES = {1: "node", 2: "resource", 3: "opaque_id_type"}
_HASH_ALGORITHMS = {
    0: "none",
    1: "md5",
    2: "sha1",
    3: "sha224",
    4: "sha256",
    5: "sha384",
    6: "sha512",
}
_SIGNATURE_ALGORITHMS = {0: "anonymous", 1: "rsa", 2: "dsa", 3: "ecdsa"}
_IDENTITY_TYPES = {1: "cert_hash", 2: "cert_hash_node_id", 3: "none"}
_CERTIFICATE_TYPES = {0: "X.509", 1: "OpenPGP"}
_CHORD_UPDATE_TYPES = {1: "peer_ready", 2: "neighbors", 3: "full"}
_KIND_NAMES = {
    0x1: "SIP-REGISTRATION",
    0x2: "TURN-SERVICE",
    0x3: "CERTIFICATE_BY_NODE",
    0x10: "CERTIFICATE_BY_USER",
    0xF0000001: "SWARM-PEERS",
    0xF0000002: "PEER-BATCH",
    0xF0000003: "PEER-STATUS",
    0xF0000010: "CONTENT-META",
    0xF0000011: "CONTENT-SEGMENT",
}
_MAX_ITEMS = 1 << 20

_NODE_ID_LENGTH: ContextVar[int] = ContextVar("reload_node_id_length", default=16)


@contextlib.contextmanager
def reload_context(node_id_length: int = DEFAULT_NODE_ID_LENGTH) -> Iterator[None]:
    """Dissect RELOAD messages inside the block with this Node-ID length (§11.1)."""
    token = _NODE_ID_LENGTH.set(node_id_length)
    try:
        yield
    finally:
        _NODE_ID_LENGTH.reset(token)


def _node_len(_pkt: Packet | None = None) -> int:
    return _NODE_ID_LENGTH.get()


class _Part(Packet):
    """A part of known length: what follows it is the next part, not its payload."""

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s


def _short(data: bytes) -> str:
    return data[:4].hex() + "…" if len(data) > 6 else data.hex()


# §6.3.2.2 destinations, §6.3.2.3 forwarding options -------------------------------------------


class RELOADDestination(_Part):
    """A full Destination (§6.3.2.2): type, length, data (node: a NodeId; resource and
    opaque_id_type: the id with its own 1-byte length)."""

    name = "Destination"
    fields_desc = [
        ByteEnumField("type", 1, _DESTINATION_TYPES),
        FieldLenField("length", None, length_of="data", fmt="B"),
        XStrLenField("data", b"", length_from=lambda p: p.length),
    ]

    def mysummary(self) -> str:
        kind = _DESTINATION_TYPES.get(self.type, str(self.type))
        data = bytes(self.data)
        return f"{kind} {_short(data[1:] if self.type in (2, 3) else data)}"


class RELOADCompressedDestination(_Part):
    """A compressed Destination (§6.3.2.2): 16 bits, the first one set."""

    name = "Destination (compressed)"
    fields_desc = [XShortField("opaque_id", 0x8000)]

    def mysummary(self) -> str:
        return f"compressed {self.opaque_id:#06x}"


def _destination(s: bytes, _parent: Packet | None = None) -> Packet:
    if s and s[0] >= 0x80:
        return RELOADCompressedDestination(s)
    return RELOADDestination(s)


class RELOADForwardingOption(_Part):
    name = "ForwardingOption"
    fields_desc = [
        ByteField("type", 0),
        FlagsField("flags", 0, 8, ["FORWARD_CRITICAL", "DESTINATION_CRITICAL", "RESPONSE_COPY"]),
        FieldLenField("length", None, length_of="value", fmt="!H"),
        XStrLenField("value", b"", length_from=lambda p: p.length),
    ]


# §6.3.4 security block -----------------------------------------------------------------------


class RELOADCertificate(_Part):
    name = "GenericCertificate"
    fields_desc = [
        ByteEnumField("type", 0, _CERTIFICATE_TYPES),
        FieldLenField("length", None, length_of="certificate", fmt="!H"),
        XStrLenField("certificate", b"", length_from=lambda p: p.length),
    ]


class RELOADCertHash(_Part):
    name = "SignerIdentityValue"
    fields_desc = [
        ByteEnumField("hash_alg", 4, _HASH_ALGORITHMS),
        FieldLenField("length", None, length_of="hash", fmt="B"),
        XStrLenField("hash", b"", length_from=lambda p: p.length),
    ]


class RELOADMessageExtension(_Part):
    name = "MessageExtension"
    fields_desc = [
        ShortField("type", 0),
        ByteField("critical", 0),
        FieldLenField("length", None, length_of="extension_contents", fmt="!I"),
        XStrLenField("extension_contents", b"", length_from=lambda p: p.length),
    ]


# §6.4, §6.5, §7.4 message bodies (the cheap ones) ----------------------------------------------


class _Body(Packet):
    """A message body: it fills message_body exactly (left-over bytes become Padding)."""


class RELOADPingReq(_Body):
    name = "PingReq"
    fields_desc = [
        FieldLenField("padding_length", None, length_of="padding", fmt="!H"),
        XStrLenField("padding", b"", length_from=lambda p: p.padding_length),
    ]


class RELOADPingAns(_Body):
    name = "PingAns"
    fields_desc = [XLongField("response_id", 0), LongField("time_ms", 0)]  # "time" is scapy's


class RELOADErrorResponse(_Body):
    name = "ErrorResponse"
    fields_desc = [
        ShortEnumField("error_code", 0x14, ERROR_NAMES),
        FieldLenField("info_length", None, length_of="error_info", fmt="!H"),
        StrLenField("error_info", b"", length_from=lambda p: p.info_length),
    ]


def _node_id_field(name: str) -> XStrFixedLenField:
    return XStrFixedLenField(name, b"", length_from=_node_len)


def _osd_fields() -> list[Any]:
    return [
        FieldLenField("osd_length", None, length_of="overlay_specific_data", fmt="!H"),
        XStrLenField("overlay_specific_data", b"", length_from=lambda p: p.osd_length),
    ]


class RELOADJoinReq(_Body):
    name = "JoinReq"
    fields_desc = [_node_id_field("joining_peer_id"), *_osd_fields()]


class RELOADJoinAns(_Body):
    name = "JoinAns"
    fields_desc = _osd_fields()


class RELOADLeaveReq(_Body):
    name = "LeaveReq"
    fields_desc = [_node_id_field("leaving_peer_id"), *_osd_fields()]


class RELOADEmpty(_Body):
    name = "empty body"


def _length_field(name: str) -> Callable[[Packet], int]:
    def length(p: Packet) -> int:
        return int(p.getfieldval(name))

    return length


def _node_list(name: str) -> list[Any]:
    return [
        FieldLenField(f"{name}_length", None, length_of=name, fmt="!H"),
        FieldListField(
            name,
            [],
            XStrFixedLenField("", b"", length_from=_node_len),
            length_from=_length_field(f"{name}_length"),
            max_count=_MAX_ITEMS,
        ),
    ]


class RELOADChordUpdate(_Body):
    """UpdateReq of CHORD-RELOAD (§10.7): uptime, type, then the neighbour lists."""

    name = "UpdateReq (ChordUpdate)"
    fields_desc = [
        IntField("uptime", 0),
        ByteEnumField("type", 1, _CHORD_UPDATE_TYPES),
        *[ConditionalField(f, lambda p: p.type in (2, 3)) for f in _node_list("predecessors")],
        *[ConditionalField(f, lambda p: p.type in (2, 3)) for f in _node_list("successors")],
        *[ConditionalField(f, lambda p: p.type == 3) for f in _node_list("fingers")],
    ]


class RELOADRawBody(_Body):
    """A body kept as bytes (overlay specific, or not decoded here)."""

    name = "message_body"
    fields_desc = [XStrField("data", b"")]


def _resource_fields() -> list[Any]:
    return [
        FieldLenField("resource_length", None, length_of="resource", fmt="B"),
        XStrLenField("resource", b"", length_from=lambda p: p.resource_length),
    ]


class RELOADStoreKindData(_Part):
    name = "StoreKindData"
    fields_desc = [
        XIntField("kind", 0),
        LongField("generation_counter", 0),
        FieldLenField("values_length", None, length_of="values", fmt="!I"),
        XStrLenField("values", b"", length_from=lambda p: p.values_length),
    ]

    def mysummary(self) -> str:
        return f"kind {_kind(self.kind)}"


def _kind(kind: int) -> str:
    name = _KIND_NAMES.get(kind)
    return f"{kind:#x} ({name})" if name else f"{kind:#x}"


class RELOADStoreReq(_Body):
    name = "StoreReq"
    fields_desc = [
        *_resource_fields(),
        ByteField("replica_number", 0),
        FieldLenField("kind_data_length", None, length_of="kind_data", fmt="!I"),
        PacketListField(
            "kind_data",
            [],
            RELOADStoreKindData,
            length_from=lambda p: p.kind_data_length,
            max_count=_MAX_ITEMS,
        ),
    ]


class RELOADStoreKindResponse(_Part):
    name = "StoreKindResponse"
    fields_desc = [
        XIntField("kind", 0),
        LongField("generation_counter", 0),
        *_node_list("replicas"),
    ]


class RELOADStoreAns(_Body):
    name = "StoreAns"
    fields_desc = [
        FieldLenField("kind_responses_length", None, length_of="kind_responses", fmt="!H"),
        PacketListField(
            "kind_responses",
            [],
            RELOADStoreKindResponse,
            length_from=lambda p: p.kind_responses_length,
            max_count=_MAX_ITEMS,
        ),
    ]


class RELOADStoredDataSpecifier(_Part):
    name = "StoredDataSpecifier"
    fields_desc = [
        XIntField("kind", 0),
        LongField("generation", 0),
        FieldLenField("length", None, length_of="model_specifier", fmt="!H"),
        XStrLenField("model_specifier", b"", length_from=lambda p: p.length),
    ]


class RELOADFetchReq(_Body):
    """FetchReq (§7.4.2.1); StatReq (§7.4.3.1) has the same layout."""

    name = "FetchReq"
    fields_desc = [
        *_resource_fields(),
        FieldLenField("specifiers_length", None, length_of="specifiers", fmt="!H"),
        PacketListField(
            "specifiers",
            [],
            RELOADStoredDataSpecifier,
            length_from=lambda p: p.specifiers_length,
            max_count=_MAX_ITEMS,
        ),
    ]


class RELOADFetchKindResponse(_Part):
    """FetchKindResponse (§7.4.2.2); StatKindResponse (§7.4.3.2) has the same outer layout."""

    name = "FetchKindResponse"
    fields_desc = [
        XIntField("kind", 0),
        LongField("generation", 0),
        FieldLenField("values_length", None, length_of="values", fmt="!I"),
        XStrLenField("values", b"", length_from=lambda p: p.values_length),
    ]


class RELOADFetchAns(_Body):
    """FetchAns (§7.4.2.2); StatAns (§7.4.3.2) has the same outer layout."""

    name = "FetchAns"
    fields_desc = [
        FieldLenField("kind_responses_length", None, length_of="kind_responses", fmt="!I"),
        PacketListField(
            "kind_responses",
            [],
            RELOADFetchKindResponse,
            length_from=lambda p: p.kind_responses_length,
            max_count=_MAX_ITEMS,
        ),
    ]


class RELOADFindReq(_Body):
    name = "FindReq"
    fields_desc = [
        *_resource_fields(),
        FieldLenField("kinds_length", None, length_of="kinds", fmt="B"),
        FieldListField(
            "kinds", [], XIntField("", 0), length_from=lambda p: p.kinds_length, max_count=64
        ),
    ]


class RELOADFindKindData(_Part):
    name = "FindKindData"
    fields_desc = [XIntField("kind", 0), *_resource_fields()]


class RELOADFindAns(_Body):
    name = "FindAns"
    fields_desc = [
        FieldLenField("results_length", None, length_of="results", fmt="!H"),
        PacketListField(
            "results",
            [],
            RELOADFindKindData,
            length_from=lambda p: p.results_length,
            max_count=_MAX_ITEMS,
        ),
    ]


_BODIES: dict[int, type[Packet]] = {
    MessageCode.STORE_REQ: RELOADStoreReq,
    MessageCode.STORE_ANS: RELOADStoreAns,
    MessageCode.FETCH_REQ: RELOADFetchReq,
    MessageCode.FETCH_ANS: RELOADFetchAns,
    MessageCode.STAT_REQ: RELOADFetchReq,
    MessageCode.STAT_ANS: RELOADFetchAns,
    MessageCode.FIND_REQ: RELOADFindReq,
    MessageCode.FIND_ANS: RELOADFindAns,
    MessageCode.JOIN_REQ: RELOADJoinReq,
    MessageCode.JOIN_ANS: RELOADJoinAns,
    MessageCode.LEAVE_REQ: RELOADLeaveReq,
    MessageCode.LEAVE_ANS: RELOADEmpty,
    MessageCode.UPDATE_REQ: RELOADChordUpdate,
    MessageCode.PING_REQ: RELOADPingReq,
    MessageCode.PING_ANS: RELOADPingAns,
    MessageCode.CONFIG_UPDATE_ANS: RELOADEmpty,
    MessageCode.ERROR: RELOADErrorResponse,
}


def _body(s: bytes, _parent: Packet | None = None) -> Packet:
    code = _parent.message_code if _parent is not None else -1
    cls = _BODIES.get(code, RELOADRawBody)
    try:
        p = cls(s)
    except Exception:  # not the layout the code promises: keep the bytes
        return RELOADRawBody(s)
    if cls is RELOADChordUpdate and p.lastlayer() is not p:
        return RELOADRawBody(s)  # an Update that is not a ChordUpdate: overlay specific
    return p


# §6.3 the message ------------------------------------------------------------------------------


def _whole(p: Packet) -> bool:
    return bool(p.fragment_offset == 0 and p.last_fragment)


def _w(field: Any) -> ConditionalField:
    return ConditionalField(field, _whole)


class RELOAD(Packet):
    """A RELOAD message (§6.3): forwarding header, message contents, security block."""

    name = "RELOAD"
    fields_desc = [
        # §6.3.2 forwarding header, 38 fixed bytes
        XIntField("relo_token", RELO_TOKEN),
        XIntField("overlay", 0),
        ShortField("configuration_sequence", 0),
        ByteEnumField("version", 0x0A, {0x0A: "1.0"}),
        ByteField("ttl", 100),
        BitField("fragment_bit", 1, 1),
        BitField("last_fragment", 1, 1),
        BitField("fragment_reserved", 0, 6),
        BitField("fragment_offset", 0, 24),
        IntField("length", None),
        XLongField("transaction_id", 0),
        IntField("max_response_length", 0),
        FieldLenField("via_list_length", None, length_of="via_list", fmt="!H"),
        FieldLenField("destination_list_length", None, length_of="destination_list", fmt="!H"),
        FieldLenField("options_length", None, length_of="options", fmt="!H"),
        PacketListField(
            "via_list", [], _destination, length_from=lambda p: p.via_list_length, max_count=4096
        ),
        PacketListField(
            "destination_list",
            [],
            _destination,
            length_from=lambda p: p.destination_list_length,
            max_count=4096,
        ),
        PacketListField(
            "options",
            [],
            RELOADForwardingOption,
            length_from=lambda p: p.options_length,
            max_count=4096,
        ),
        # §6.3.3 message contents
        _w(ShortEnumField("message_code", 0x17, METHOD_NAMES)),
        _w(FieldLenField("body_length", None, length_of="message_body", fmt="!I")),
        _w(
            PacketLenField(
                "message_body",
                None,  # type: ignore[arg-type]
                _body,
                length_from=lambda p: p.body_length,
            )
        ),
        _w(FieldLenField("extensions_length", None, length_of="extensions", fmt="!I")),
        _w(
            PacketListField(
                "extensions",
                [],
                RELOADMessageExtension,
                length_from=lambda p: p.extensions_length,
                max_count=4096,
            )
        ),
        # §6.3.4 security block
        _w(FieldLenField("certificates_length", None, length_of="certificates", fmt="!H")),
        _w(
            PacketListField(
                "certificates",
                [],
                RELOADCertificate,
                length_from=lambda p: p.certificates_length,
                max_count=4096,
            )
        ),
        _w(ByteEnumField("hash_algorithm", 4, _HASH_ALGORITHMS)),
        _w(ByteEnumField("signature_algorithm", 1, _SIGNATURE_ALGORITHMS)),
        _w(ByteEnumField("identity_type", 3, _IDENTITY_TYPES)),
        _w(FieldLenField("identity_length", None, length_of="identity", fmt="!H")),
        _w(
            PacketLenField(
                "identity",
                None,  # type: ignore[arg-type]
                RELOADCertHash,
                length_from=lambda p: p.identity_length,
            )
        ),
        _w(FieldLenField("signature_length", None, length_of="signature_value", fmt="!H")),
        _w(XStrLenField("signature_value", b"", length_from=lambda p: p.signature_length)),
        # §6.7: a fragment's bytes, raw until reassembled
        ConditionalField(StrField("fragment_data", b""), lambda p: not _whole(p)),
    ]

    def post_build(self, pkt: bytes, pay: bytes) -> bytes:
        if self.length is None:
            pkt = pkt[:16] + struct.pack(">I", len(pkt)) + pkt[20:]
        return pkt + pay

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s

    def mysummary(self) -> str:
        tid = f"tid {self.transaction_id:#018x}"
        if not _whole(self):
            return f"RELOAD fragment @{self.fragment_offset} {tid}"
        code = METHOD_NAMES.get(self.message_code, f"code {self.message_code:#06x}")
        text = f"RELOAD {code} {tid} ttl {self.ttl}"
        if self.destination_list:
            text += f" to {self.destination_list[-1].mysummary()}"
        body = self.message_body
        if isinstance(body, RELOADErrorResponse):
            text += f" {ERROR_NAMES.get(body.error_code, body.error_code)}"
            text += f" {bytes(body.error_info).decode('utf-8', 'replace')!r}"
        elif isinstance(body, (RELOADStoreReq, RELOADFetchReq, RELOADFindReq)):
            text += f" resource {_short(bytes(body.resource))}"
        signer = _IDENTITY_TYPES.get(self.identity_type, str(self.identity_type))
        return f"{text} [{len(self.certificates)} cert(s), signer {signer}]"


class RELOADFraming(Packet):
    """The framing header of an overlay link (§6.6.2): a data frame carries a message."""

    name = "RELOAD framing"
    fields_desc = [
        ByteEnumField("type", 128, _FRAME_TYPES),
        ConditionalField(IntField("sequence", 0), lambda p: p.type == 128),
        ConditionalField(
            ThreeBytesField("length", None),  # type: ignore[arg-type]
            lambda p: p.type == 128,
        ),
        ConditionalField(IntField("ack_sequence", 0), lambda p: p.type != 128),
        ConditionalField(XIntField("received", 0), lambda p: p.type != 128),
    ]

    def post_build(self, pkt: bytes, pay: bytes) -> bytes:
        if self.type == 128 and self.length is None:
            pkt = pkt[:5] + len(pay).to_bytes(3, "big") + pkt[8:]
        return pkt + pay

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        if self.type == 128 and self.length is not None:
            return s[: self.length], s[self.length :]
        return b"", s

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        if self.type == 128 and payload[:4] == RELO_TOKEN.to_bytes(4, "big"):
            return RELOAD
        return Raw

    def mysummary(self) -> str:
        if self.type == 128:
            return f"RELOAD-framing data seq {self.sequence}"
        if self.type == 129:
            return f"RELOAD-framing ack {self.ack_sequence} received {self.received:#010x}"
        return f"RELOAD-framing type {self.type}"


bind_layers(UDP, RELOADFraming, dport=DEFAULT_PORT)
bind_layers(UDP, RELOADFraming, sport=DEFAULT_PORT)
bind_layers(TCP, RELOADFraming, dport=DEFAULT_PORT)
bind_layers(TCP, RELOADFraming, sport=DEFAULT_PORT)


# ---------------------------------------------------------------------------------------------
# Layer -> model (the cross-check with reload.wire)
# ---------------------------------------------------------------------------------------------


def _destination_model(d: Packet) -> Destination:
    if isinstance(d, RELOADCompressedDestination):
        return CompressedDestination(d.opaque_id)
    data = bytes(d.data)
    if d.type == 1:
        return NodeDestination(data)
    if d.type in (2, 3) and data and data[0] == len(data) - 1:
        return ResourceDestination(data[1:]) if d.type == 2 else OpaqueDestination(data[1:])
    raise ValueError(f"malformed destination {d.type}: {data.hex()}")


def forwarding_header_model(pkt: Packet) -> ForwardingHeader:
    """The model of a :class:`RELOAD` layer's forwarding header."""
    fragment = (
        (pkt.fragment_bit << 31)
        | (pkt.last_fragment << 30)
        | (pkt.fragment_reserved << 24)
        | pkt.fragment_offset
    )
    return ForwardingHeader(
        overlay=pkt.overlay,
        configuration_sequence=pkt.configuration_sequence,
        ttl=pkt.ttl,
        transaction_id=pkt.transaction_id,
        max_response_length=pkt.max_response_length,
        via_list=tuple(_destination_model(d) for d in pkt.via_list),
        destination_list=tuple(_destination_model(d) for d in pkt.destination_list),
        options=tuple(ForwardingOption(o.type, int(o.flags), bytes(o.value)) for o in pkt.options),
        fragment=fragment,
        version=pkt.version,
    )


def security_block_model(pkt: Packet) -> SecurityBlock:
    """The model of a :class:`RELOAD` layer's security block."""
    identity = pkt.identity
    if pkt.identity_type in (1, 2) and isinstance(identity, RELOADCertHash):
        signer = SignerIdentity(pkt.identity_type, identity.hash_alg, bytes(identity.hash))
    else:
        signer = SignerIdentity(pkt.identity_type)
    return SecurityBlock(
        tuple(GenericCertificate(c.type, bytes(c.certificate)) for c in pkt.certificates),
        Signature(
            SignatureAndHashAlgorithm(pkt.hash_algorithm, pkt.signature_algorithm),
            signer,
            bytes(pkt.signature_value),
        ),
    )
