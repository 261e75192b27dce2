"""The RELOAD message model (RFC 6940 §6.3-§6.6, §7, §10): one dataclass per structure.

The normative wire definition is the Construct module :mod:`reload.wire`; it decodes to and
encodes from these classes, so the rest of the stack (security, transactions, links, topology,
storage) never handles bytes of a message it did not sign or send.

A :class:`Message` is the RFC's three parts (§6.3): the :class:`ForwardingHeader`, the
:class:`MessageContents` (the method's body dataclass plus extensions) and the
:class:`SecurityBlock`. The message code is not a field: it is the ``CODE`` of the body's
class, so a body can never be paired with the wrong code (§6.3.3: requests odd, the answer is
the request code + 1, 0xFFFF is an error).

Code points the RFC declares extensible ("this structure may be extended") are plain ``int``
fields; the enums below name the values the RFC defines. Node-IDs, Resource-IDs and all opaque
vectors are ``bytes``.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "DEFAULT_DATA_MODELS",
    "DEFAULT_NODE_ID_LENGTH",
    "FORWARDING_HEADER_SIZE",
    "RELOAD_VERSION",
    "RELO_TOKEN",
    "UNFRAGMENTED",
    "AddressType",
    "AppAttachAns",
    "AppAttachReq",
    "ArrayEntry",
    "ArrayEntryMeta",
    "ArrayRange",
    "AttachAns",
    "AttachReq",
    "AttachReqAns",
    "CandType",
    "CertificateType",
    "ChordLeaveData",
    "ChordLeaveType",
    "ChordRouteQueryAns",
    "ChordUpdate",
    "ChordUpdateType",
    "CompressedDestination",
    "ConfigUpdateAns",
    "ConfigUpdateReq",
    "ConfigUpdateType",
    "DataModel",
    "DataValue",
    "Destination",
    "DestinationType",
    "DictionaryEntry",
    "DictionaryEntryMeta",
    "ErrorCode",
    "ErrorResponse",
    "FetchAns",
    "FetchKindResponse",
    "FetchReq",
    "FindAns",
    "FindKindData",
    "FindReq",
    "ForwardingHeader",
    "ForwardingOption",
    "ForwardingOptionFlag",
    "FramedAck",
    "FramedData",
    "FramedMessage",
    "FramedMessageType",
    "GenericCertificate",
    "HashAlgorithm",
    "IceCandidate",
    "IceExtension",
    "IpAddressPort",
    "JoinAns",
    "JoinReq",
    "LeaveAns",
    "LeaveReq",
    "Message",
    "MessageBody",
    "MessageCode",
    "MessageContents",
    "MessageExtension",
    "MetaData",
    "MetaDataValue",
    "NodeDestination",
    "OpaqueDestination",
    "OverlayLinkType",
    "PingAns",
    "PingReq",
    "ProbeAns",
    "ProbeInformation",
    "ProbeInformationType",
    "ProbeReq",
    "ReloadDecodeError",
    "ReloadEncodeError",
    "ResourceDestination",
    "RouteQueryAns",
    "RouteQueryReq",
    "SecurityBlock",
    "Signature",
    "SignatureAlgorithm",
    "SignatureAndHashAlgorithm",
    "SignerIdentity",
    "SignerIdentityType",
    "StatAns",
    "StatKindResponse",
    "StatReq",
    "StoreAns",
    "StoreKindData",
    "StoreKindResponse",
    "StoreReq",
    "StoredData",
    "StoredDataSpecifier",
    "StoredDataValue",
    "StoredMetaData",
    "UnknownKindError",
    "UpdateAns",
    "UpdateReq",
]


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class ReloadDecodeError(ValueError):
    """Bytes that are not a well-formed RELOAD structure (RFC 6940 §6.3).

    The codec raises only this for malformed input, so a link or node drops the message with
    one ``except`` (§6.3.2.2: an unknown type in a select is a parsing error, the message is
    discarded with no response).
    """


class UnknownKindError(ReloadDecodeError):
    """A Store/Fetch/Stat structure names a Kind-ID whose data model the decoder was not told.

    StoredData and StoredDataSpecifier have no data-model tag on the wire (§7.2: "the actual
    data model is known from the Kind"), so such a message cannot be decoded; §7.4.1.1 wants
    Error_Unknown_Kind with the Kind-IDs in ``kinds``.
    """

    def __init__(self, kinds: tuple[int, ...]) -> None:
        super().__init__(f"unknown Kind-ID(s) {', '.join(hex(k) for k in kinds)} (§7.4)")
        self.kinds = kinds


class ReloadEncodeError(ValueError):
    """A model value that cannot be put on the wire (out of its field's range, or too long)."""


# ---------------------------------------------------------------------------------------------
# Constants (§6.3.2)
# ---------------------------------------------------------------------------------------------

#: §6.3.2: "RELO" with the high bit of the first byte set.
RELO_TOKEN = 0xD2454C4F
#: §6.3.2: version 1.0 times 10.
RELOAD_VERSION = 0x0A
#: §6.3.2: fragment field of an unfragmented message (bit 31 always 1, bit 30 last fragment).
UNFRAGMENTED = 0xC0000000
#: §6.3.2: bytes of the forwarding header before the via list.
FORWARDING_HEADER_SIZE = 38
#: §6.3.1 / §11.1 node-id-length default (16 bytes, 128 bits).
DEFAULT_NODE_ID_LENGTH = 16


# ---------------------------------------------------------------------------------------------
# Code points
# ---------------------------------------------------------------------------------------------


class MessageCode(enum.IntEnum):
    """message_code values (§6.3.3, §14.8): requests odd, answer = request + 1."""

    PROBE_REQ = 0x01
    PROBE_ANS = 0x02
    ATTACH_REQ = 0x03
    ATTACH_ANS = 0x04
    STORE_REQ = 0x07
    STORE_ANS = 0x08
    FETCH_REQ = 0x09
    FETCH_ANS = 0x0A
    FIND_REQ = 0x0D
    FIND_ANS = 0x0E
    JOIN_REQ = 0x0F
    JOIN_ANS = 0x10
    LEAVE_REQ = 0x11
    LEAVE_ANS = 0x12
    UPDATE_REQ = 0x13
    UPDATE_ANS = 0x14
    ROUTE_QUERY_REQ = 0x15
    ROUTE_QUERY_ANS = 0x16
    PING_REQ = 0x17
    PING_ANS = 0x18
    STAT_REQ = 0x19
    STAT_ANS = 0x1A
    APP_ATTACH_REQ = 0x1D
    APP_ATTACH_ANS = 0x1E
    CONFIG_UPDATE_REQ = 0x21
    CONFIG_UPDATE_ANS = 0x22
    ERROR = 0xFFFF

    @property
    def is_request(self) -> bool:
        return self != MessageCode.ERROR and self % 2 == 1


class ErrorCode(enum.IntEnum):
    """Error codes (§6.3.3.1, §14.9)."""

    FORBIDDEN = 0x02
    NOT_FOUND = 0x03
    REQUEST_TIMEOUT = 0x04
    GENERATION_COUNTER_TOO_LOW = 0x05
    INCOMPATIBLE_WITH_OVERLAY = 0x06
    UNSUPPORTED_FORWARDING_OPTION = 0x07
    DATA_TOO_LARGE = 0x08
    DATA_TOO_OLD = 0x09
    TTL_EXCEEDED = 0x0A
    MESSAGE_TOO_LARGE = 0x0B
    UNKNOWN_KIND = 0x0C
    UNKNOWN_EXTENSION = 0x0D
    RESPONSE_TOO_LARGE = 0x0E
    CONFIG_TOO_OLD = 0x0F
    CONFIG_TOO_NEW = 0x10
    IN_PROGRESS = 0x11
    EXP_A = 0x12
    EXP_B = 0x13
    INVALID_MESSAGE = 0x14


class DestinationType(enum.IntEnum):
    """DestinationType (§6.3.2.2); 128-255 are not allowed (the compressed form's top bit)."""

    NODE = 1
    RESOURCE = 2
    OPAQUE_ID_TYPE = 3


class ForwardingOptionFlag(enum.IntFlag):
    """ForwardingOption flags (§6.3.2.3)."""

    FORWARD_CRITICAL = 0x01
    DESTINATION_CRITICAL = 0x02
    RESPONSE_COPY = 0x04


class AddressType(enum.IntEnum):
    """AddressType of an IpAddressPort (§6.3.1)."""

    IPV4_ADDRESS = 1
    IPV6_ADDRESS = 2


class OverlayLinkType(enum.IntEnum):
    """OverlayLinkType (§6.5.1.1, §14.10)."""

    DTLS_UDP_SR = 1
    DTLS_UDP_SR_NO_ICE = 3
    TLS_TCP_FH_NO_ICE = 4


class CandType(enum.IntEnum):
    """ICE candidate type (§6.5.1.1); 3 is reserved."""

    HOST = 1
    SRFLX = 2
    RELAY = 4


class ProbeInformationType(enum.IntEnum):
    """ProbeInformationType (§6.4.2.5.1)."""

    RESPONSIBLE_SET = 1
    NUM_RESOURCES = 2
    UPTIME = 3


class ConfigUpdateType(enum.IntEnum):
    """ConfigUpdateType (§6.5.4.1)."""

    CONFIG = 1
    KIND = 2


class SignerIdentityType(enum.IntEnum):
    """SignerIdentityType (§6.3.4)."""

    CERT_HASH = 1
    CERT_HASH_NODE_ID = 2
    NONE = 3


class HashAlgorithm(enum.IntEnum):
    """TLS HashAlgorithm registry values used by SignatureAndHashAlgorithm (§6.3.4)."""

    NONE = 0
    MD5 = 1
    SHA1 = 2
    SHA224 = 3
    SHA256 = 4
    SHA384 = 5
    SHA512 = 6


class SignatureAlgorithm(enum.IntEnum):
    """TLS SignatureAlgorithm registry values (§6.3.4; RSA = RSASSA-PKCS1-v1_5, the MTI)."""

    ANONYMOUS = 0
    RSA = 1
    DSA = 2
    ECDSA = 3


class CertificateType(enum.IntEnum):
    """GenericCertificate type (RFC 6091): X.509 is the one RFC 6940 defines."""

    X509 = 0
    OPENPGP = 1


class DataModel(enum.Enum):
    """The data models of §7.2. They never appear on the wire: a Kind's definition fixes it."""

    SINGLE = "SINGLE"
    ARRAY = "ARRAY"
    DICTIONARY = "DICTIONARY"


#: Data models of the Kinds RFC 6940 and RFC 7904 register (§14.6); an overlay configuration
#: adds its own kinds (§11.1 kind-block) on top of these.
DEFAULT_DATA_MODELS: dict[int, DataModel] = {
    0x1: DataModel.DICTIONARY,  # SIP-REGISTRATION (RFC 7904 §3)
    0x2: DataModel.SINGLE,  # TURN-SERVICE (§9)
    0x3: DataModel.ARRAY,  # CERTIFICATE_BY_NODE (§8)
    0x10: DataModel.ARRAY,  # CERTIFICATE_BY_USER (§8)
}


class FramedMessageType(enum.IntEnum):
    """FramedMessageType of the overlay link framing header (§6.6.2)."""

    DATA = 128
    ACK = 129


# ---------------------------------------------------------------------------------------------
# §6.3.1 common structures, §6.3.2 forwarding header
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IpAddressPort:
    """IpAddressPort (§6.3.1): an IPv4 or IPv6 address and a port."""

    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int


@dataclass(frozen=True, slots=True)
class NodeDestination:
    """A Destination of type node (§6.3.2.2): a Node-ID of NodeIdLength bytes."""

    node_id: bytes


@dataclass(frozen=True, slots=True)
class ResourceDestination:
    """A Destination of type resource (§6.3.2.2): a Resource-ID (opaque<0..2^8-1>)."""

    resource_id: bytes


@dataclass(frozen=True, slots=True)
class OpaqueDestination:
    """A Destination of type opaque_id_type (§6.3.2.2): opaque<0..2^8-1>."""

    opaque_id: bytes


@dataclass(frozen=True, slots=True)
class CompressedDestination:
    """The 2-byte compressed Destination (§6.3.2.2): a uint16 whose top bit is 1.

    §6.3.2.2 says to treat it as an opaque_id of those two bytes; the codec keeps the form so
    that a decoded message re-encodes byte for byte.
    """

    opaque_id: int


Destination = NodeDestination | ResourceDestination | OpaqueDestination | CompressedDestination


@dataclass(frozen=True, slots=True)
class ForwardingOption:
    """ForwardingOption (§6.3.2.3): unknown types are allowed, so the value stays opaque."""

    type: int
    flags: int
    value: bytes = b""


@dataclass(frozen=True, slots=True)
class ForwardingHeader:
    """ForwardingHeader (§6.3.2) without relo_token and length.

    relo_token is a constant and length is computed by the encoder (the whole message); the
    decoder checks both. ``version`` is decoded whatever its value so that a node can see it
    and reject the message (§6.3.2: "Nodes MUST reject messages with other versions").
    """

    overlay: int
    configuration_sequence: int
    ttl: int
    transaction_id: int
    max_response_length: int = 0
    via_list: tuple[Destination, ...] = ()
    destination_list: tuple[Destination, ...] = ()
    options: tuple[ForwardingOption, ...] = ()
    fragment: int = UNFRAGMENTED
    version: int = RELOAD_VERSION

    @property
    def is_fragment(self) -> bool:
        """True unless this is the whole message: last-fragment bit set and offset 0 (§6.7)."""
        return self.fragment & 0x40FFFFFF != 0x40000000


# ---------------------------------------------------------------------------------------------
# §6.3.4 security block
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GenericCertificate:
    """GenericCertificate (§6.3.4): RFC 6091 type and the DER certificate."""

    type: int
    certificate: bytes


@dataclass(frozen=True, slots=True)
class SignatureAndHashAlgorithm:
    """TLS SignatureAndHashAlgorithm (RFC 5246 §7.4.1.4.1): hash first, then signature."""

    hash: int = HashAlgorithm.SHA256
    signature: int = SignatureAlgorithm.RSA


@dataclass(frozen=True, slots=True)
class SignerIdentity:
    """SignerIdentity (§6.3.4). cert_hash and cert_hash_node_id carry ``hash_alg`` and
    ``hash``; none carries nothing (both must then be their defaults)."""

    identity_type: int
    hash_alg: int = 0
    hash: bytes = b""


@dataclass(frozen=True, slots=True)
class Signature:
    """Signature (§6.3.4): algorithm, signer identity, signature value."""

    algorithm: SignatureAndHashAlgorithm
    identity: SignerIdentity
    signature_value: bytes


@dataclass(frozen=True, slots=True)
class SecurityBlock:
    """SecurityBlock (§6.3.4): a bucket of certificates and the message signature."""

    certificates: tuple[GenericCertificate, ...]
    signature: Signature


# ---------------------------------------------------------------------------------------------
# §7 storage structures
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataValue:
    """DataValue (§7.2): the SINGLE data model's value; ``exists=False`` deletes."""

    exists: bool
    value: bytes = b""


@dataclass(frozen=True, slots=True)
class ArrayEntry:
    """ArrayEntry (§7.2.2): index 0xffffffff in a Store means append."""

    index: int
    value: DataValue


@dataclass(frozen=True, slots=True)
class DictionaryEntry:
    """DictionaryEntry (§7.2.3): DictionaryKey<0..2^16-1> and its value."""

    key: bytes
    value: DataValue


StoredDataValue = DataValue | ArrayEntry | DictionaryEntry


@dataclass(frozen=True, slots=True)
class StoredData:
    """StoredData (§7): the length field is computed by the encoder."""

    storage_time: int
    lifetime: int
    value: StoredDataValue
    signature: Signature


@dataclass(frozen=True, slots=True)
class StoreKindData:
    """StoreKindData (§7.4.1.1)."""

    kind: int
    generation_counter: int
    values: tuple[StoredData, ...]


@dataclass(frozen=True, slots=True)
class StoreKindResponse:
    """StoreKindResponse (§7.4.1.2): replicas is a list of Node-IDs."""

    kind: int
    generation_counter: int
    replicas: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class ArrayRange:
    """ArrayRange (§7.4.2.1): int32 first and last index, inclusive."""

    first: int
    last: int


@dataclass(frozen=True, slots=True)
class StoredDataSpecifier:
    """StoredDataSpecifier (§7.4.2.1).

    ``indices`` is set for an ARRAY Kind, ``keys`` for a DICTIONARY Kind (empty = all keys),
    neither for SINGLE; the decoder fills the one the Kind's data model says.
    """

    kind: int
    generation: int = 0
    indices: tuple[ArrayRange, ...] | None = None
    keys: tuple[bytes, ...] | None = None


@dataclass(frozen=True, slots=True)
class FetchKindResponse:
    """FetchKindResponse (§7.4.2.2)."""

    kind: int
    generation: int
    values: tuple[StoredData, ...]


@dataclass(frozen=True, slots=True)
class MetaData:
    """MetaData (§7.4.3.2): what Stat reports instead of a value."""

    exists: bool
    value_length: int
    hash_algorithm: int
    hash_value: bytes


@dataclass(frozen=True, slots=True)
class ArrayEntryMeta:
    """ArrayEntryMeta (§7.4.3.2)."""

    index: int
    value: MetaData


@dataclass(frozen=True, slots=True)
class DictionaryEntryMeta:
    """DictionaryEntryMeta (§7.4.3.2)."""

    key: bytes
    value: MetaData


MetaDataValue = MetaData | ArrayEntryMeta | DictionaryEntryMeta


@dataclass(frozen=True, slots=True)
class StoredMetaData:
    """StoredMetaData (§7.4.3.2) without its first field.

    §7.4.3.2 names that uint32 ``value_length`` but says the fields "are the same as the
    corresponding fields in StoredData", whose first field is the length of the rest of the
    structure (§7); Wireshark reads it so too. The encoder computes it as that length; the
    stored value's length is :attr:`MetaData.value_length`.
    """

    storage_time: int
    lifetime: int
    metadata: MetaDataValue


@dataclass(frozen=True, slots=True)
class StatKindResponse:
    """StatKindResponse (§7.4.3.2)."""

    kind: int
    generation: int
    values: tuple[StoredMetaData, ...]


@dataclass(frozen=True, slots=True)
class FindKindData:
    """FindKindData (§7.4.4.2): the closest Resource-ID stored for a Kind."""

    kind: int
    closest: bytes


# ---------------------------------------------------------------------------------------------
# §6.4, §6.5, §7.4 method bodies. ``CODE`` is the message_code (§14.8).
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProbeReq:
    """ProbeReq (§6.4.2.5.1): the ProbeInformationTypes wanted."""

    CODE: ClassVar[int] = MessageCode.PROBE_REQ
    requested_info: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ProbeInformation:
    """ProbeInformation (§6.4.2.5.2): the defined types carry a uint32 ``value``; an unknown
    type (the structure allows them) carries its raw bytes."""

    type: int
    value: int | bytes


@dataclass(frozen=True, slots=True)
class ProbeAns:
    """ProbeAns (§6.4.2.5.2)."""

    CODE: ClassVar[int] = MessageCode.PROBE_ANS
    probe_info: tuple[ProbeInformation, ...] = ()


@dataclass(frozen=True, slots=True)
class IceExtension:
    """IceExtension (§6.5.1.1): name and value, both opaque<0..2^16-1>."""

    name: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class IceCandidate:
    """IceCandidate (§6.5.1.1): ``rel_addr_port`` is present exactly for srflx and relay."""

    addr_port: IpAddressPort
    overlay_link: int
    foundation: bytes
    priority: int
    type: int
    rel_addr_port: IpAddressPort | None = None
    extensions: tuple[IceExtension, ...] = ()


@dataclass(frozen=True, slots=True)
class AttachReqAns:
    """AttachReqAns (§6.5.1): the same structure is the request and the answer."""

    CODE: ClassVar[int] = 0
    ufrag: bytes
    password: bytes
    role: bytes
    candidates: tuple[IceCandidate, ...] = ()
    send_update: bool = False


@dataclass(frozen=True, slots=True)
class AttachReq(AttachReqAns):
    """Attach request (§6.5.1.1); role "passive" (§6.5.1.1)."""

    CODE: ClassVar[int] = MessageCode.ATTACH_REQ


@dataclass(frozen=True, slots=True)
class AttachAns(AttachReqAns):
    """Attach answer (§6.5.1.2); role "active"."""

    CODE: ClassVar[int] = MessageCode.ATTACH_ANS


@dataclass(frozen=True, slots=True)
class _AppAttach:
    CODE: ClassVar[int] = 0
    ufrag: bytes
    password: bytes
    application: int
    role: bytes
    candidates: tuple[IceCandidate, ...] = ()


@dataclass(frozen=True, slots=True)
class AppAttachReq(_AppAttach):
    """AppAttachReq (§6.5.2.1): application is the Application-ID (§14.5)."""

    CODE: ClassVar[int] = MessageCode.APP_ATTACH_REQ


@dataclass(frozen=True, slots=True)
class AppAttachAns(_AppAttach):
    """AppAttachAns (§6.5.2.2)."""

    CODE: ClassVar[int] = MessageCode.APP_ATTACH_ANS


@dataclass(frozen=True, slots=True)
class StoreReq:
    """StoreReq (§7.4.1.1); replica_number 0 is the original."""

    CODE: ClassVar[int] = MessageCode.STORE_REQ
    resource: bytes
    replica_number: int
    kind_data: tuple[StoreKindData, ...]


@dataclass(frozen=True, slots=True)
class StoreAns:
    """StoreAns (§7.4.1.2)."""

    CODE: ClassVar[int] = MessageCode.STORE_ANS
    kind_responses: tuple[StoreKindResponse, ...]


@dataclass(frozen=True, slots=True)
class FetchReq:
    """FetchReq (§7.4.2.1)."""

    CODE: ClassVar[int] = MessageCode.FETCH_REQ
    resource: bytes
    specifiers: tuple[StoredDataSpecifier, ...]


@dataclass(frozen=True, slots=True)
class FetchAns:
    """FetchAns (§7.4.2.2)."""

    CODE: ClassVar[int] = MessageCode.FETCH_ANS
    kind_responses: tuple[FetchKindResponse, ...]


@dataclass(frozen=True, slots=True)
class StatReq:
    """StatReq (§7.4.3.1): identical to FetchReq."""

    CODE: ClassVar[int] = MessageCode.STAT_REQ
    resource: bytes
    specifiers: tuple[StoredDataSpecifier, ...]


@dataclass(frozen=True, slots=True)
class StatAns:
    """StatAns (§7.4.3.2)."""

    CODE: ClassVar[int] = MessageCode.STAT_ANS
    kind_responses: tuple[StatKindResponse, ...]


@dataclass(frozen=True, slots=True)
class FindReq:
    """FindReq (§7.4.4.1)."""

    CODE: ClassVar[int] = MessageCode.FIND_REQ
    resource: bytes
    kinds: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class FindAns:
    """FindAns (§7.4.4.2)."""

    CODE: ClassVar[int] = MessageCode.FIND_ANS
    results: tuple[FindKindData, ...]


@dataclass(frozen=True, slots=True)
class JoinReq:
    """JoinReq (§6.4.2.1)."""

    CODE: ClassVar[int] = MessageCode.JOIN_REQ
    joining_peer_id: bytes
    overlay_specific_data: bytes = b""


@dataclass(frozen=True, slots=True)
class JoinAns:
    """JoinAns (§6.4.2.1)."""

    CODE: ClassVar[int] = MessageCode.JOIN_ANS
    overlay_specific_data: bytes = b""


@dataclass(frozen=True, slots=True)
class LeaveReq:
    """LeaveReq (§6.4.2.2); CHORD-RELOAD puts a ChordLeaveData in overlay_specific_data."""

    CODE: ClassVar[int] = MessageCode.LEAVE_REQ
    leaving_peer_id: bytes
    overlay_specific_data: bytes = b""


@dataclass(frozen=True, slots=True)
class LeaveAns:
    """LeaveAns (§6.4.2.2): an empty message."""

    CODE: ClassVar[int] = MessageCode.LEAVE_ANS


@dataclass(frozen=True, slots=True)
class UpdateReq:
    """UpdateReq (§6.4.2.3): completely overlay specific (CHORD-RELOAD: ChordUpdate, §10.7),
    kept as the raw message_body here."""

    CODE: ClassVar[int] = MessageCode.UPDATE_REQ
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class UpdateAns:
    """UpdateAns (§6.4.2.3): success or an error; any bytes are overlay specific."""

    CODE: ClassVar[int] = MessageCode.UPDATE_ANS
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class RouteQueryReq:
    """RouteQueryReq (§6.4.2.4.1)."""

    CODE: ClassVar[int] = MessageCode.ROUTE_QUERY_REQ
    send_update: bool
    destination: Destination
    overlay_specific_data: bytes = b""


@dataclass(frozen=True, slots=True)
class RouteQueryAns:
    """RouteQueryAns (§6.4.2.4.2): overlay specific (CHORD-RELOAD: next_peer, §10.8), raw."""

    CODE: ClassVar[int] = MessageCode.ROUTE_QUERY_ANS
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class PingReq:
    """PingReq (§6.5.3.1): up to 65535 bytes of padding."""

    CODE: ClassVar[int] = MessageCode.PING_REQ
    padding: bytes = b""


@dataclass(frozen=True, slots=True)
class PingAns:
    """PingAns (§6.5.3.2): response_id and time in ms since 1970."""

    CODE: ClassVar[int] = MessageCode.PING_ANS
    response_id: int
    time: int


@dataclass(frozen=True, slots=True)
class ConfigUpdateReq:
    """ConfigUpdateReq (§6.5.4.1).

    type config carries ``config_data``; type kind carries ``kinds`` (KindDescription XML
    kind-blocks). An unknown type (the structure allows them) keeps its raw bytes in
    ``config_data``.
    """

    CODE: ClassVar[int] = MessageCode.CONFIG_UPDATE_REQ
    type: int
    config_data: bytes = b""
    kinds: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class ConfigUpdateAns:
    """ConfigUpdateAns (§6.5.4.2): empty."""

    CODE: ClassVar[int] = MessageCode.CONFIG_UPDATE_ANS


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """ErrorResponse (§6.3.3.1), message_code 0xFFFF. error_info is UTF-8 text unless the
    code says otherwise (Error_Unknown_Kind: a KindId list, §7.4.1.1)."""

    CODE: ClassVar[int] = MessageCode.ERROR
    error_code: int
    error_info: bytes = b""


MessageBody = (
    ProbeReq
    | ProbeAns
    | AttachReq
    | AttachAns
    | StoreReq
    | StoreAns
    | FetchReq
    | FetchAns
    | StatReq
    | StatAns
    | FindReq
    | FindAns
    | JoinReq
    | JoinAns
    | LeaveReq
    | LeaveAns
    | UpdateReq
    | UpdateAns
    | RouteQueryReq
    | RouteQueryAns
    | PingReq
    | PingAns
    | AppAttachReq
    | AppAttachAns
    | ConfigUpdateReq
    | ConfigUpdateAns
    | ErrorResponse
)


@dataclass(frozen=True, slots=True)
class MessageExtension:
    """MessageExtension (§6.3.3)."""

    type: int
    critical: bool
    extension_contents: bytes = b""


@dataclass(frozen=True, slots=True)
class MessageContents:
    """MessageContents (§6.3.3): message_code is ``body.CODE``."""

    body: MessageBody
    extensions: tuple[MessageExtension, ...] = ()

    @property
    def message_code(self) -> int:
        return self.body.CODE


@dataclass(frozen=True, slots=True)
class Message:
    """A whole RELOAD message (§6.3): forwarding header, contents, security block."""

    header: ForwardingHeader
    contents: MessageContents
    security_block: SecurityBlock


# ---------------------------------------------------------------------------------------------
# §10 CHORD-RELOAD overlay-specific data (carried opaquely by Update, Leave and RouteQuery)
# ---------------------------------------------------------------------------------------------


class ChordUpdateType(enum.IntEnum):
    """ChordUpdateType (§10.7)."""

    PEER_READY = 1
    NEIGHBORS = 2
    FULL = 3


@dataclass(frozen=True, slots=True)
class ChordUpdate:
    """ChordUpdate (§10.7), the UpdateReq body of CHORD-RELOAD.

    peer_ready carries no lists, neighbors the predecessors and successors, full also the
    fingers; the encoder refuses lists the type does not carry.
    """

    uptime: int
    type: int
    predecessors: tuple[bytes, ...] = ()
    successors: tuple[bytes, ...] = ()
    fingers: tuple[bytes, ...] = ()


class ChordLeaveType(enum.IntEnum):
    """ChordLeaveType (§10.9)."""

    FROM_SUCC = 1
    FROM_PRED = 2


@dataclass(frozen=True, slots=True)
class ChordLeaveData:
    """ChordLeaveData (§10.9), the LeaveReq overlay_specific_data of CHORD-RELOAD: from_succ
    carries the leaving peer's successors, from_pred its predecessors, in ``node_ids``."""

    type: int
    node_ids: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class ChordRouteQueryAns:
    """ChordRouteQueryAns (§10.8): the peer the responder would route to next."""

    next_peer: bytes


# ---------------------------------------------------------------------------------------------
# §6.6.2 framing header
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FramedData:
    """A data frame (type 128): sequence number and one (fragment of a) message."""

    sequence: int
    message: bytes


@dataclass(frozen=True, slots=True)
class FramedAck:
    """An ack frame (type 129): ``received`` is the bitmask of which of the 32 sequence
    numbers before ack_sequence were received; its bit order is the link's business
    (§6.6.3.1)."""

    ack_sequence: int
    received: int


FramedMessage = FramedData | FramedAck
