"""The RELOAD overlay configuration document (RFC 6940 §11.1) and ConfigUpdate (§6.5.4).

What this module does:

* :func:`parse_overlay_configuration` reads an ``application/p2p-overlay+xml`` document (one
  ``<overlay>`` holding one or more ``<configuration>`` elements, each optionally followed by a
  ``<signature>``) into :class:`OverlayDocument`. The parser is pyexpat driven directly, so it
  can refuse a DOCTYPE (hence every entity, internal or external: billion laughs, XXE), bound
  the document size, the nesting depth and the element count, and record the exact byte span
  of each ``<configuration>`` and ``<kind>`` element — §11.1 signs those spans as binary blobs.
* :func:`generate` writes namespaced XML that parses back equal, signing each ``<kind>``
  element and then each ``<configuration>`` element over the exact bytes it emits.
* :func:`verify_signature` checks the configuration and kind-block signatures.
* :func:`check_sequence` is the configuration-sequence rule of §6.3.2.1 (mod 65535, with the
  65535 ConfigUpdate exception), and :class:`ConfigurationState` applies ConfigUpdate requests
  (§6.5.4.2): a newer, correctly signed configuration (type config) or signed kind-blocks from
  an allowed kind-signer (type kind).

Signing is injected, so this module does not depend on the message-security code:

* ``sign(data) -> bytes`` returns the signature bytes for ``data`` (for RFC 6940 a
  SecurityBlock encoded by the wire codec, §6.3.4); we base64 it into ``<signature>``.
* ``verify(data, signature) -> bytes | None`` returns the Node-ID of the signer when the
  signature over ``data`` is valid, otherwise ``None``. The Node-ID is what §11.1's
  configuration-signer and kind-signer elements name, so we need it, not just a yes/no.

Values we do not model are kept: foreign-namespace elements and attributes (§11.1.1
``foreign-elements``/``foreign-attributes``) inside ``<configuration>`` and ``<kind>`` are
preserved as :class:`ForeignElement` trees and written back. Text between child elements of a
foreign element (XML "tail" text) is not preserved.
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from xml.parsers import expat

from cryptography import x509

from reload.messages import ErrorCode

BASE_NS = "urn:ietf:params:xml:ns:p2p:config-base"
CHORD_NS = "urn:ietf:params:xml:ns:p2p:config-chord"

CONTENT_TYPE = "application/p2p-overlay+xml"

# Limits on hostile or runaway documents. A ConfigUpdate carries at most 2^24-1 bytes
# (§6.5.4.1); a real configuration is a few KiB, so 1 MiB is generous.
MAX_DOCUMENT_SIZE = 1 << 20
MAX_DEPTH = 16
MAX_ELEMENTS = 10_000
MAX_ATTRIBUTES = 32
MAX_SIGNATURES = 8
MAX_KINDS = 1024  # Kinds a ConfigurationState learns from ConfigUpdate type kind

# §6.3.2.1: sequence numbers increase mod 65535; 65535 itself is the "accept regardless"
# marker of a ConfigUpdate request, so a configuration's own sequence is 0..65534 (§11.1).
SEQUENCE_MODULUS = 65535
SEQUENCE_WILDCARD = 65535

# §14.6 (IANA): Kind-IDs 0xF0000001-0xFFFFFFFE are private use; our usages declare theirs here.
PRIVATE_KIND_ID_MIN = 0xF0000001
PRIVATE_KIND_ID_MAX = 0xFFFFFFFE

# §14.6 registry of Kind names (plus SIP-REGISTRATION, RFC 7904), used to resolve name=.
REGISTERED_KIND_IDS: dict[str, int] = {
    "SIP-REGISTRATION": 0x1,
    "TURN-SERVICE": 0x2,
    "CERTIFICATE_BY_NODE": 0x3,
    "CERTIFICATE_BY_USER": 0x10,
}

DEFAULT_PORT = 6084
DEFAULT_TOPOLOGY_PLUGIN = "CHORD-RELOAD"

Sign = Callable[[bytes], bytes]
Verify = Callable[[bytes, bytes], bytes | None]


class ConfigError(ValueError):
    """A configuration document that is malformed, hostile, or violates §11.1."""


class ConfigSignatureError(ConfigError):
    """A configuration or kind-block signature that is missing, invalid or by a wrong signer."""


# The error codes this module produces are the message model's :class:`ErrorCode`
# (§6.3.3.1, §14.9): Error_Forbidden, Error_Incompatible_with_Overlay, Error_Config_Too_Old,
# Error_Config_Too_New and Error_Invalid_Message.


class ConfigUpdateError(ConfigError):
    """A ConfigUpdate request we refuse; ``code`` is the error to answer with (§6.5.4.2)."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(f"{code.name}: {reason}")
        self.code = code
        self.reason = reason


class ConfigUpdateType(enum.IntEnum):
    """ConfigUpdateType (§6.5.4.1)."""

    CONFIG = 1
    KIND = 2


class DataModel(enum.StrEnum):
    """The data-model values of §11.1.1 (extensions are kept as plain strings)."""

    SINGLE = "SINGLE"
    ARRAY = "ARRAY"
    DICTIONARY = "DICTIONARY"


class AccessControl(enum.StrEnum):
    """The access-control values of §11.1.1 (extensions are kept as plain strings)."""

    USER_MATCH = "USER-MATCH"
    NODE_MATCH = "NODE-MATCH"
    USER_NODE_MATCH = "USER-NODE-MATCH"
    NODE_MULTIPLE = "NODE-MULTIPLE"


@dataclass(frozen=True)
class ForeignElement:
    """An extension element in a namespace other than config-base/config-chord (§11.1.1
    ``foreign-elements``), kept so that a configuration we pass on loses nothing.
    ``attributes`` holds ``(namespace, name, value)``; the namespace is "" when unqualified."""

    namespace: str
    name: str
    attributes: tuple[tuple[str, str, str], ...] = ()
    text: str = ""
    children: tuple[ForeignElement, ...] = ()


@dataclass(frozen=True)
class BootstrapNode:
    """A bootstrap-node element (§11.1): an IPv4/IPv6 address and a port (default 6084)."""

    address: str
    port: int = DEFAULT_PORT


@dataclass
class KindDescription:
    """A kind element (§11.1): either ``kind_id`` (private space) or ``name`` (IANA name).

    ``signature`` is the decoded kind-signature over ``raw``, the exact bytes of the kind
    element as read (``raw`` is empty for a description built in code). Neither takes part
    in equality: two descriptions are equal when they describe the same Kind.
    """

    data_model: str
    access_control: str
    max_count: int
    max_size: int
    kind_id: int | None = None
    name: str | None = None
    max_node_multiple: int | None = None
    extensions: tuple[ForeignElement, ...] = ()
    signature: bytes | None = field(default=None, compare=False)
    raw: bytes = field(default=b"", compare=False, repr=False)

    def __post_init__(self) -> None:
        _validate_kind(self)

    @property
    def key(self) -> int | str:
        """What identifies this Kind in an overlay: its Kind-ID, or its name."""
        return self.kind_id if self.kind_id is not None else str(self.name)

    def resolved_kind_id(self) -> int | None:
        """The Kind-ID: the id attribute, or the IANA registration of the name (§14.6)."""
        if self.kind_id is not None:
            return self.kind_id
        return REGISTERED_KIND_IDS.get(str(self.name))


@dataclass
class OverlayConfiguration:
    """One configuration element (§11.1), with the RFC's defaults for absent elements."""

    instance_name: str
    sequence: int = 0
    expiration: datetime | None = None
    topology_plugin: str = DEFAULT_TOPOLOGY_PLUGIN
    node_id_length: int = 16
    root_certs: list[bytes] = field(default_factory=list)  # DER
    enrollment_servers: list[str] = field(default_factory=list)
    self_signed_permitted: bool = False
    self_signed_digest: str = "sha1"
    bootstrap_nodes: list[BootstrapNode] = field(default_factory=list)
    turn_density: int | None = None
    clients_permitted: bool = True
    no_ice: bool = False
    chord_update_interval: int | None = None
    chord_ping_interval: int | None = None
    chord_reactive: bool = True
    shared_secret: str | None = None
    max_message_size: int = 5000
    initial_ttl: int = 100
    overlay_reliability_timer: int = 3000
    overlay_link_protocols: list[str] = field(default_factory=list)  # empty: "TLS" (§11.1)
    configuration_signers: list[str] = field(default_factory=list)  # Node-IDs, lower hex
    kind_signers: list[str] = field(default_factory=list)
    bad_nodes: list[str] = field(default_factory=list)
    mandatory_extensions: list[str] = field(default_factory=list)
    kinds: list[KindDescription] = field(default_factory=list)
    extensions: tuple[ForeignElement, ...] = ()
    extension_attributes: tuple[tuple[str, str, str], ...] = ()

    def __post_init__(self) -> None:
        _validate_configuration(self)

    def effective_link_protocols(self) -> list[str]:
        """The permitted overlay link protocols; "TLS" (TLS and DTLS) when none is listed."""
        return list(self.overlay_link_protocols) or ["TLS"]

    def unsupported_extensions(self, supported: Iterable[str]) -> list[str]:
        """The mandatory-extension namespaces not in ``supported``: if any, §11.1 says a node
        must not join (or must leave) the overlay."""
        have = set(supported)
        return [ns for ns in self.mandatory_extensions if ns not in have]

    def is_expired(self, now: datetime) -> bool:
        """Whether ``now`` (timezone-aware) is past the expiration attribute."""
        return self.expiration is not None and now >= self.expiration

    def kind(self, key: int | str) -> KindDescription | None:
        """The required kind with this Kind-ID or name."""
        for kind in self.kinds:
            if kind.key == key or kind.resolved_kind_id() == key:
                return kind
        return None


@dataclass
class ConfigurationEntry:
    """A configuration element as read: the model, its exact bytes (what the signature
    covers, §11.1), and the decoded signature elements that followed it ("Each configuration
    element MAY be followed by signature elements"; one valid signature suffices)."""

    configuration: OverlayConfiguration
    raw: bytes
    signatures: list[bytes] = field(default_factory=list)

    @property
    def signature(self) -> bytes | None:
        """The first signature, if any."""
        return self.signatures[0] if self.signatures else None


@dataclass
class OverlayDocument:
    """A whole overlay element: one entry per configuration element, in document order."""

    entries: list[ConfigurationEntry]

    def find(self, instance_name: str) -> ConfigurationEntry | None:
        """The entry for the overlay called ``instance_name``."""
        for entry in self.entries:
            if entry.configuration.instance_name == instance_name:
                return entry
        return None

    @property
    def configurations(self) -> list[OverlayConfiguration]:
        return [entry.configuration for entry in self.entries]


# ---------------------------------------------------------------------------------------------
# Validation of the model (shared by parse and by code that builds configurations).

_HEX_RE = re.compile(r"[0-9a-f]+")
_NAME_RE = re.compile(r"[^\s<>&\"']+")


def _validate_kind(kind: KindDescription) -> None:
    if (kind.kind_id is None) == (kind.name is None):
        raise ConfigError("a kind has exactly one of the id and name attributes (§11.1)")
    if kind.kind_id is not None and not 0 < kind.kind_id < 0xFFFFFFFF:
        raise ConfigError(f"Kind-ID {kind.kind_id} is not a valid uint32 Kind-ID")
    if kind.name is not None and not _NAME_RE.fullmatch(kind.name):
        raise ConfigError(f"kind name {kind.name!r} is not a token")
    for label, value in (("max-count", kind.max_count), ("max-size", kind.max_size)):
        if not 0 <= value <= 0x7FFFFFFF:
            raise ConfigError(f"{label} {value} out of range")
    if not _NAME_RE.fullmatch(kind.data_model) or not _NAME_RE.fullmatch(kind.access_control):
        raise ConfigError("data-model and access-control are tokens")
    if kind.access_control == AccessControl.NODE_MULTIPLE and kind.max_node_multiple is None:
        raise ConfigError("NODE-MULTIPLE needs max-node-multiple (§11.1)")
    if kind.max_node_multiple is not None and not 0 < kind.max_node_multiple <= 0x7FFFFFFF:
        raise ConfigError("max-node-multiple must be an integer greater than 0 (§11.1)")


def _validate_configuration(config: OverlayConfiguration) -> None:
    if not config.instance_name or not _NAME_RE.fullmatch(config.instance_name):
        raise ConfigError("instance-name must be a non-empty name without spaces (§11.1)")
    if not 0 <= config.sequence < SEQUENCE_MODULUS:
        raise ConfigError(f"sequence {config.sequence} not in 0..65534 (§11.1)")
    if config.expiration is not None and config.expiration.utcoffset() is None:
        raise ConfigError("expiration must carry a time zone (UTC, §11.1)")
    if not 16 <= config.node_id_length <= 20:
        raise ConfigError(f"node-id-length {config.node_id_length} not in 16..20 (§11.1)")
    if not 0 < config.max_message_size <= 0xFFFFFFFF:
        raise ConfigError("max-message-size out of range")
    if not 0 < config.initial_ttl <= 255:  # §6.3.2: the TTL field is a uint8
        raise ConfigError(f"initial-ttl {config.initial_ttl} not in 1..255")
    if not 200 <= config.overlay_reliability_timer <= 0x7FFFFFFF:
        raise ConfigError("overlay-reliability-timer must be at least 200 ms (§11.1)")
    if config.turn_density is not None and not 0 <= config.turn_density <= 255:
        raise ConfigError("turn-density is an unsignedByte")
    for label, interval in (
        ("chord-update-interval", config.chord_update_interval),
        ("chord-ping-interval", config.chord_ping_interval),
    ):
        if interval is not None and not 0 < interval <= 0x7FFFFFFF:
            raise ConfigError(f"{label} must be positive")
    for node in config.bootstrap_nodes:
        try:
            ipaddress.ip_address(node.address)
        except ValueError as exc:
            raise ConfigError(f"bootstrap-node address {node.address!r} is not an IP") from exc
        if not 0 < node.port <= 0xFFFF:
            raise ConfigError(f"bootstrap-node port {node.port} out of range")
    for label, ids in (
        ("configuration-signer", config.configuration_signers),
        ("kind-signer", config.kind_signers),
        ("bad-node", config.bad_nodes),
    ):
        for node_id in ids:
            if not _HEX_RE.fullmatch(node_id) or len(node_id) % 2 or len(node_id) > 64:
                raise ConfigError(f"{label} {node_id!r} is not a lower-case hex Node-ID")
    for token_list in (
        config.enrollment_servers,
        config.overlay_link_protocols,
        config.mandatory_extensions,
        [config.topology_plugin, config.self_signed_digest],
    ):
        for token in token_list:
            if not _NAME_RE.fullmatch(token):
                raise ConfigError(f"{token!r} is not a token")
    for kind in config.kinds:
        _validate_kind(kind)  # again: fields may have been assigned since construction
    keys = [kind.key for kind in config.kinds]
    if len(set(keys)) != len(keys):
        raise ConfigError("a Kind is declared twice in required-kinds")


# ---------------------------------------------------------------------------------------------
# The hardened XML reader.


@dataclass
class _Node:
    namespace: str
    name: str
    attributes: dict[tuple[str, str], str]
    start: int
    end: int = 0
    text_parts: list[str] = field(default_factory=list)
    children: list[_Node] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


class _Refused(Exception):
    """Raised inside expat handlers to stop parsing a hostile document."""


def _split_name(qualified: str) -> tuple[str, str]:
    # namespace_separator=" ": "uri local" when namespaced, "local" otherwise. URIs may not
    # contain spaces, but a hostile one might: local names never do, so split at the last.
    namespace, _, local = qualified.rpartition(" ")
    return namespace, local


def _start_tag_end(data: bytes, start: int) -> int:
    """Offset just past the '>' of the start tag at ``start`` ('>' may occur in quotes)."""
    quote = 0
    for index in range(start + 1, len(data)):
        byte = data[index]
        if quote:
            if byte == quote:
                quote = 0
        elif byte in (0x22, 0x27):
            quote = byte
        elif byte == 0x3E:
            return index + 1
    raise ConfigError("unterminated start tag")


def _parse_xml(data: bytes, max_size: int) -> _Node:
    """Parse ``data`` into a _Node tree, refusing DTDs, entities and oversized documents."""
    if len(data) > max_size:
        raise ConfigError(f"document of {len(data)} bytes exceeds the {max_size}-byte limit")
    parser = expat.ParserCreate(encoding="UTF-8", namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    stack: list[_Node] = []
    roots: list[_Node] = []
    count = 0

    def refuse(*_args: object) -> None:
        raise _Refused("DOCTYPE, entity and notation declarations are refused")

    def refuse_external(*_args: object) -> int:
        raise _Refused("external entities are refused")

    def xml_decl(_version: str | None, encoding: str | None, _standalone: int) -> None:
        # §11.1: the file MUST use UTF-8.
        if encoding is not None and encoding.lower() not in ("utf-8", "utf8"):
            raise _Refused(f"encoding {encoding!r} is not UTF-8 (§11.1)")

    def start(qualified: str, attributes: dict[str, str]) -> None:
        nonlocal count
        count += 1
        if count > MAX_ELEMENTS:
            raise _Refused(f"more than {MAX_ELEMENTS} elements")
        if len(stack) >= MAX_DEPTH:
            raise _Refused(f"elements nested deeper than {MAX_DEPTH}")
        if len(attributes) > MAX_ATTRIBUTES:
            raise _Refused(f"more than {MAX_ATTRIBUTES} attributes on one element")
        namespace, local = _split_name(qualified)
        node = _Node(
            namespace,
            local,
            {_split_name(key): value for key, value in attributes.items()},
            parser.CurrentByteIndex,
        )
        (stack[-1].children if stack else roots).append(node)
        stack.append(node)

    def end(_qualified: str) -> None:
        node = stack.pop()
        tag_end = _start_tag_end(data, node.start)
        if data[tag_end - 2 : tag_end] == b"/>":
            node.end = tag_end
        else:
            node.end = data.index(b">", parser.CurrentByteIndex) + 1

    def text(chunk: str) -> None:
        if stack:
            stack[-1].text_parts.append(chunk)

    parser.XmlDeclHandler = xml_decl
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.NotationDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse_external
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    try:
        parser.Parse(data, True)
    except _Refused as exc:
        raise ConfigError(f"hostile XML refused: {exc}") from None
    except expat.ExpatError as exc:
        raise ConfigError(f"malformed XML: {exc}") from None
    except ValueError as exc:  # e.g. index() failing on a torn end tag
        raise ConfigError(f"malformed XML: {exc}") from None
    if len(roots) != 1:
        raise ConfigError("no root element")
    return roots[0]


# ---------------------------------------------------------------------------------------------
# From the tree to the model.

_BASE_NAMESPACES = (BASE_NS, "")  # the grammar's local:* (no namespace) is ours too


def _is_base(node: _Node, name: str) -> bool:
    return node.namespace in _BASE_NAMESPACES and node.name == name


def _token(node: _Node) -> str:
    # xsd:string with the whitespace the RFC example puts around values: collapse it.
    return " ".join(node.text.split())


def _int(text: str, label: str) -> int:
    value = text.strip()
    if not re.fullmatch(r"[+-]?[0-9]{1,19}", value):
        raise ConfigError(f"{label}: {value!r} is not an integer")
    return int(value)


def _bool(text: str, label: str) -> bool:
    # §11.1: xsd:boolean has the lexical forms "true"/"1" and "false"/"0".
    value = text.strip()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise ConfigError(f"{label}: {value!r} is not an xsd:boolean")


def _base64(text: str, label: str) -> bytes:
    compact = "".join(text.split())
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"{label}: not base64") from exc


def _node_id(text: str, label: str) -> str:
    value = text.strip().lower()
    if not _HEX_RE.fullmatch(value) or len(value) % 2:
        raise ConfigError(f"{label}: {value!r} is not a hex Node-ID")
    return value


def _datetime(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ConfigError(f"expiration {text!r} is not an RFC 3339 date-time") from exc
    if value.utcoffset() is None:
        raise ConfigError("expiration must be in UTC (§11.1)")
    return value.astimezone(UTC)


def _foreign(node: _Node) -> ForeignElement:
    return ForeignElement(
        namespace=node.namespace,
        name=node.name,
        attributes=tuple(
            sorted((ns, name, value) for (ns, name), value in node.attributes.items())
        ),
        text=node.text.strip(),
        children=tuple(_foreign(child) for child in node.children),
    )


def _is_foreign(node: _Node) -> bool:
    return node.namespace not in (*_BASE_NAMESPACES, CHORD_NS)


def _kind_from_node(node: _Node, data: bytes) -> KindDescription:
    values: dict[str, str] = {}
    extensions: list[ForeignElement] = []
    for child in node.children:
        if _is_foreign(child):
            extensions.append(_foreign(child))
        elif (
            child.name
            in ("data-model", "access-control", "max-count", "max-size", "max-node-multiple")
            and child.namespace in _BASE_NAMESPACES
        ):
            if child.name in values:
                raise ConfigError(f"kind: {child.name} given twice")
            values[child.name] = _token(child)
        # other base/chord names are not in the grammar of a kind; ignored
    for required in ("data-model", "access-control", "max-count", "max-size"):
        if required not in values:
            raise ConfigError(f"kind: {required} is mandatory (§11.1)")
    kind_id_text = node.attributes.get(("", "id"))
    name = node.attributes.get(("", "name"))
    data_model = values["data-model"]
    access_control = values["access-control"]
    return KindDescription(
        data_model=DataModel(data_model)
        if data_model in DataModel.__members__.values()
        else data_model,
        access_control=AccessControl(access_control)
        if access_control in AccessControl.__members__.values()
        else access_control,
        max_count=_int(values["max-count"], "max-count"),
        max_size=_int(values["max-size"], "max-size"),
        kind_id=None if kind_id_text is None else _int(kind_id_text, "kind id"),
        name=None if name is None else name.strip(),
        max_node_multiple=_int(values["max-node-multiple"], "max-node-multiple")
        if "max-node-multiple" in values
        else None,
        extensions=tuple(extensions),
        raw=data[node.start : node.end],
    )


def _kind_block(node: _Node, data: bytes) -> KindDescription:
    kinds = [c for c in node.children if _is_base(c, "kind")]
    signatures = [c for c in node.children if _is_base(c, "kind-signature")]
    if len(kinds) != 1 or len(signatures) > 1:
        raise ConfigError("a kind-block holds one kind and at most one kind-signature")
    kind = _kind_from_node(kinds[0], data)
    if signatures:
        kind.signature = _base64(signatures[0].text, "kind-signature")
    return kind


_SINGLE_INT = {
    "node-id-length": "node_id_length",
    "max-message-size": "max_message_size",
    "initial-ttl": "initial_ttl",
    "overlay-reliability-timer": "overlay_reliability_timer",
    "turn-density": "turn_density",
}
_SINGLE_BOOL = {"clients-permitted": "clients_permitted", "no-ice": "no_ice"}
_CHORD = {
    "chord-update-interval": "chord_update_interval",
    "chord-ping-interval": "chord_ping_interval",
}


def _configuration_from_node(node: _Node, data: bytes) -> OverlayConfiguration:
    instance_name = node.attributes.get(("", "instance-name"))
    if instance_name is None:
        raise ConfigError("configuration without instance-name (§11.1)")
    values: dict[str, object] = {"instance_name": instance_name.strip()}
    if ("", "sequence") in node.attributes:
        values["sequence"] = _int(node.attributes[("", "sequence")], "sequence")
    if ("", "expiration") in node.attributes:
        values["expiration"] = _datetime(node.attributes[("", "expiration")])
    values["extension_attributes"] = tuple(
        sorted((ns, name, value) for (ns, name), value in node.attributes.items() if ns)
    )
    lists: dict[str, list[object]] = {}
    extensions: list[ForeignElement] = []
    seen: set[str] = set()

    def once(name: str) -> None:
        if name in seen:
            raise ConfigError(f"{name} may occur only once (§11.1.1)")
        seen.add(name)

    for child in node.children:
        name = child.name
        if child.namespace == CHORD_NS:
            once(name)
            if name in _CHORD:
                values[_CHORD[name]] = _int(child.text, name)
            elif name == "chord-reactive":
                values["chord_reactive"] = _bool(child.text, name)
            continue  # unknown chord parameters: not ours to interpret
        if _is_foreign(child):
            extensions.append(_foreign(child))
            continue
        if name in ("topology-plugin", "topology-plug-in"):  # §11.1 prose vs. grammar
            once("topology-plugin")
            values["topology_plugin"] = _token(child)
        elif name in _SINGLE_INT:
            once(name)
            values[_SINGLE_INT[name]] = _int(child.text, name)
        elif name in _SINGLE_BOOL:
            once(name)
            values[_SINGLE_BOOL[name]] = _bool(child.text, name)
        elif name == "self-signed-permitted":
            once(name)
            values["self_signed_permitted"] = _bool(child.text, name)
            digest = child.attributes.get(("", "digest"))
            if digest is not None:
                values["self_signed_digest"] = digest.strip()
        elif name == "shared-secret":
            once(name)
            values["shared_secret"] = child.text.strip()
        elif name == "root-cert":
            lists.setdefault("root_certs", []).append(_base64(child.text, name))
        elif name == "enrollment-server":
            lists.setdefault("enrollment_servers", []).append(_token(child))
        elif name == "overlay-link-protocol":
            lists.setdefault("overlay_link_protocols", []).append(_token(child))
        elif name == "mandatory-extension":
            lists.setdefault("mandatory_extensions", []).append(_token(child))
        elif name in ("configuration-signer", "kind-signer", "bad-node"):
            attr = {
                "configuration-signer": "configuration_signers",
                "kind-signer": "kind_signers",
                "bad-node": "bad_nodes",
            }[name]
            lists.setdefault(attr, []).append(_node_id(child.text, name))
        elif name == "bootstrap-node":
            address = child.attributes.get(("", "address"))
            if address is None:
                raise ConfigError("bootstrap-node without address (§11.1)")
            port_text = child.attributes.get(("", "port"))
            try:
                address = str(ipaddress.ip_address(address.strip()))
            except ValueError as exc:
                raise ConfigError(f"bootstrap-node address {address!r} is not an IP") from exc
            port = DEFAULT_PORT if port_text is None else _int(port_text, "port")
            lists.setdefault("bootstrap_nodes", []).append(BootstrapNode(address, port))
        elif name == "required-kinds":
            once(name)
            lists["kinds"] = [
                _kind_block(block, data)
                for block in child.children
                if _is_base(block, "kind-block")
            ]
        else:
            # A config-base element this version of the grammar does not define: kept as an
            # extension so it survives a generate() and a newer reader can use it.
            extensions.append(_foreign(child))
    values.update(lists)
    values["extensions"] = tuple(extensions)
    try:
        return OverlayConfiguration(**values)  # type: ignore[arg-type]
    except TypeError as exc:  # pragma: no cover - values are built from known keys
        raise ConfigError(str(exc)) from exc


def parse_overlay_configuration(
    xml_bytes: bytes, *, max_size: int = MAX_DOCUMENT_SIZE
) -> OverlayDocument:
    """Parse an overlay configuration document (§11.1).

    Each configuration element becomes a :class:`ConfigurationEntry` with its exact bytes and
    the signature element that follows it (§11.1: "Each configuration element MAY be followed
    by signature elements"; we keep the first). Raises :class:`ConfigError` for anything
    malformed or hostile, and nothing else.
    """
    root = _parse_xml(xml_bytes, max_size)
    if not _is_base(root, "overlay") or root.namespace != BASE_NS:
        raise ConfigError("the root element must be config-base's overlay (§11.1.1)")
    entries: list[ConfigurationEntry] = []
    current: ConfigurationEntry | None = None
    for child in root.children:
        if _is_base(child, "configuration"):
            current = ConfigurationEntry(
                _configuration_from_node(child, xml_bytes), xml_bytes[child.start : child.end]
            )
            entries.append(current)
        elif _is_base(child, "signature"):
            if current is None:
                raise ConfigError("signature element before any configuration")
            if len(current.signatures) >= MAX_SIGNATURES:
                raise ConfigError(f"more than {MAX_SIGNATURES} signatures on a configuration")
            current.signatures.append(_base64(child.text, "signature"))
    if not entries:
        raise ConfigError("overlay element without configuration (§11.1.1)")
    return OverlayDocument(entries)


def parse_kind_block(xml_bytes: bytes, *, max_size: int = 1 << 16) -> KindDescription:
    """Parse one kind-block production as carried by ConfigUpdate type kind (§6.5.4.1):
    UTF-8 with config-base as the default namespace (an undeclared one is read as such)."""
    root = _parse_xml(xml_bytes, max_size)
    if not _is_base(root, "kind-block"):
        raise ConfigError("expected a kind-block element")
    return _kind_block(root, xml_bytes)


# ---------------------------------------------------------------------------------------------
# Generation. We write the XML text ourselves so that the bytes we sign are the bytes we emit.


# Characters XML 1.0 cannot carry at all, even escaped (XML 1.0 §2.2).
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _escape(text: str) -> str:
    if _NOT_XML_CHAR.search(text):
        raise ConfigError(f"{text!r} holds a character XML cannot carry")
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("\r", "&#13;")
        .replace("\t", "&#9;")
        .replace("\n", "&#10;")
    )


def _escape_text(text: str) -> str:
    if _NOT_XML_CHAR.search(text):
        raise ConfigError(f"{text!r} holds a character XML cannot carry")
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")
    )


def _element(name: str, text: str) -> str:
    return f"<{name}>{_escape_text(text)}</{name}>"


def _foreign_xml(element: ForeignElement, depth: int = 0) -> str:
    # Each foreign element declares its own namespace, so its text is self-contained: the
    # same bytes are valid inside any configuration and inside a ConfigUpdate kind-block.
    prefix = f"x{depth}"
    prefixes: dict[str, str] = {element.namespace: prefix} if element.namespace else {}
    attrs: list[str] = []
    for ns, name, value in element.attributes:
        if ns and ns not in prefixes:
            prefixes[ns] = f"x{depth}a{len(prefixes)}"
        qualified = f"{prefixes[ns]}:{name}" if ns else name
        attrs.append(f' {qualified}="{_escape(value)}"')
    declarations = "".join(f' xmlns:{p}="{_escape(ns)}"' for ns, p in prefixes.items())
    if not element.namespace:
        declarations = ' xmlns=""' + declarations
    tag = f"{prefix}:{element.name}" if element.namespace else element.name
    inner = _escape_text(element.text) + "".join(
        _foreign_xml(child, depth + 1) for child in element.children
    )
    return f"<{tag}{declarations}{''.join(attrs)}>{inner}</{tag}>"


def _kind_xml(kind: KindDescription) -> bytes:
    ident = (
        f'id="{kind.kind_id}"' if kind.kind_id is not None else f'name="{_escape(str(kind.name))}"'
    )
    parts = [
        f"<kind {ident}>",
        _element("data-model", str(kind.data_model)),
        _element("access-control", str(kind.access_control)),
        _element("max-count", str(kind.max_count)),
        _element("max-size", str(kind.max_size)),
    ]
    if kind.max_node_multiple is not None:
        parts.append(_element("max-node-multiple", str(kind.max_node_multiple)))
    parts.extend(_foreign_xml(ext) for ext in kind.extensions)
    # Laid out to sit inside <required-kinds>; whitespace between elements is not content,
    # but it is part of the signed bytes, so the layout is fixed.
    return ("\n          ".join(parts) + "\n        </kind>").encode()


def generate_kind_block(kind: KindDescription, kind_sign: Sign | None = None) -> bytes:
    """The kind-block for ConfigUpdate type kind (§6.5.4.1), signed with ``kind_sign``
    over the kind element's bytes (§11.1); without it, the kind's stored signature."""
    kind_bytes = _kind_xml(kind)
    signature = kind_sign(kind_bytes) if kind_sign is not None else kind.signature
    block = b"<kind-block>\n        " + kind_bytes
    if signature is not None:
        signature_b64 = base64.b64encode(signature)
        block += b"\n        <kind-signature>" + signature_b64 + b"</kind-signature>"
    return block + b"\n      </kind-block>"


def _format_datetime(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _configuration_xml(config: OverlayConfiguration, kind_sign: Sign | None) -> bytes:
    attrs = f' instance-name="{_escape(config.instance_name)}" sequence="{config.sequence}"'
    if config.expiration is not None:
        attrs += f' expiration="{_format_datetime(config.expiration)}"'
    ext_prefixes: dict[str, str] = {}
    for ns, name, value in config.extension_attributes:
        prefix = ext_prefixes.setdefault(ns, f"xa{len(ext_prefixes)}")
        attrs += f' {prefix}:{name}="{_escape(value)}"'
    attrs += "".join(f' xmlns:{p}="{_escape(ns)}"' for ns, p in ext_prefixes.items())
    lines = [
        f"<configuration{attrs}>",
        _element("topology-plugin", config.topology_plugin),
        _element("node-id-length", str(config.node_id_length)),
    ]
    lines += [_element("root-cert", base64.b64encode(der).decode()) for der in config.root_certs]
    lines += [_element("enrollment-server", url) for url in config.enrollment_servers]
    if config.self_signed_permitted or config.self_signed_digest != "sha1":
        value = "true" if config.self_signed_permitted else "false"
        lines.append(
            f'<self-signed-permitted digest="{_escape(config.self_signed_digest)}">'
            f"{value}</self-signed-permitted>"
        )
    lines += [
        f'<bootstrap-node address="{node.address}" port="{node.port}"/>'
        for node in config.bootstrap_nodes
    ]
    if config.turn_density is not None:
        lines.append(_element("turn-density", str(config.turn_density)))
    lines.append(_element("clients-permitted", str(config.clients_permitted).lower()))
    lines.append(_element("no-ice", str(config.no_ice).lower()))
    if config.chord_update_interval is not None:
        lines.append(_element("chord:chord-update-interval", str(config.chord_update_interval)))
    if config.chord_ping_interval is not None:
        lines.append(_element("chord:chord-ping-interval", str(config.chord_ping_interval)))
    lines.append(_element("chord:chord-reactive", str(config.chord_reactive).lower()))
    if config.shared_secret is not None:
        lines.append(_element("shared-secret", config.shared_secret))
    lines += [
        _element("max-message-size", str(config.max_message_size)),
        _element("initial-ttl", str(config.initial_ttl)),
        _element("overlay-reliability-timer", str(config.overlay_reliability_timer)),
    ]
    lines += [_element("overlay-link-protocol", p) for p in config.overlay_link_protocols]
    lines += [_element("configuration-signer", n) for n in config.configuration_signers]
    lines += [_element("kind-signer", n) for n in config.kind_signers]
    lines += [_element("bad-node", n) for n in config.bad_nodes]
    lines += [_element("mandatory-extension", ns) for ns in config.mandatory_extensions]
    lines += [_foreign_xml(ext) for ext in config.extensions]
    body = "\n    ".join(lines).encode()
    if config.kinds:
        blocks = b"".join(
            b"\n      " + generate_kind_block(kind, kind_sign) for kind in config.kinds
        )
        body += b"\n    <required-kinds>" + blocks + b"\n    </required-kinds>"
    return body + b"\n  </configuration>"


def generate(
    config: OverlayConfiguration | Sequence[OverlayConfiguration],
    sign: Sign | None = None,
    *,
    kind_sign: Sign | None = None,
) -> bytes:
    """Write an overlay configuration document (§11.1) holding ``config`` (one or several).

    With ``sign``, each configuration element is followed by a signature element: the base64
    of ``sign(b"<configuration ...</configuration>")`` over exactly the bytes written. With
    ``kind_sign``, each kind element gets a kind-signature the same way (computed first, since
    the kind-block is part of the signed configuration).
    """
    configs = [config] if isinstance(config, OverlayConfiguration) else list(config)
    if not configs:
        raise ConfigError("a document holds at least one configuration")
    out = [
        b'<?xml version="1.0" encoding="UTF-8"?>\n',
        f'<overlay xmlns="{BASE_NS}" xmlns:chord="{CHORD_NS}">'.encode(),
    ]
    for item in configs:
        _validate_configuration(item)
        element = _configuration_xml(item, kind_sign)
        out.append(b"\n  " + element)
        if sign is not None:
            out.append(b"\n  <signature>" + base64.b64encode(sign(element)) + b"</signature>")
    out.append(b"\n</overlay>\n")
    return b"".join(out)


# ---------------------------------------------------------------------------------------------
# Signatures.


def _signed_by(
    verify: Verify,
    data: bytes,
    signatures: Sequence[bytes] | bytes | None,
    allowed: Iterable[str],
    what: str,
    bad_nodes: Iterable[str] = (),
) -> str:
    """The hex Node-ID of an allowed signer of ``data`` among ``signatures``, or raise.

    A signer listed as a bad-node is refused even when it is allowed (§11.1: its certificate
    "MUST NOT be considered valid")."""
    if signatures is None or (not isinstance(signatures, bytes) and not signatures):
        raise ConfigSignatureError(f"{what} is not signed")
    candidates = [signatures] if isinstance(signatures, bytes) else list(signatures)
    allowed_set, bad_set = set(allowed), set(bad_nodes)
    problem = "bad signature"
    for signature in candidates:
        signer = verify(data, signature)
        if signer is None:
            continue
        signer_hex = signer.hex()
        if signer_hex in bad_set:
            problem = f"signer {signer_hex} is a bad-node"
        elif signer_hex not in allowed_set:
            problem = f"signer {signer_hex} is not allowed"
        else:
            return signer_hex
    raise ConfigSignatureError(f"{what}: {problem}")


def verify_kind_signatures(
    config: OverlayConfiguration, verify: Verify, *, kind_signers: Iterable[str] | None = None
) -> dict[int | str, str]:
    """Check every kind-block's signature (§11.1: "Receivers MUST verify the signature prior
    to accepting a kind-block") against ``kind_signers`` (default: the configuration's own
    kind-signer list). Returns the signer Node-ID (hex) of each Kind."""
    allowed = list(config.kind_signers if kind_signers is None else kind_signers)
    signers: dict[int | str, str] = {}
    for kind in config.kinds:
        data = kind.raw or _kind_xml(kind)
        signers[kind.key] = _signed_by(
            verify, data, kind.signature, allowed, f"kind {kind.key}", config.bad_nodes
        )
    return signers


def verify_signature(
    document: OverlayDocument | ConfigurationEntry,
    verify: Verify,
    *,
    configuration_signers: Iterable[str] | None = None,
    bad_nodes: Iterable[str] = (),
    check_kinds: bool = True,
) -> None:
    """Verify the signature of each configuration (or of one entry), and its kind-blocks.

    §11.1: a configuration must be signed by a configuration-signer of the *previous* extant
    configuration; pass that list as ``configuration_signers``. Without it (first contact,
    when the document came over an authenticated channel) the configuration's own list is
    used. Signers in ``bad_nodes`` (the previous configuration's) or in the configuration's own
    bad-node list are refused. Raises :class:`ConfigSignatureError`.
    """
    entries = document.entries if isinstance(document, OverlayDocument) else [document]
    for entry in entries:
        config = entry.configuration
        allowed = list(
            config.configuration_signers if configuration_signers is None else configuration_signers
        )
        _signed_by(
            verify,
            entry.raw,
            entry.signatures,
            allowed,
            f"configuration {config.instance_name}",
            [*bad_nodes, *config.bad_nodes],
        )
        if check_kinds:
            verify_kind_signatures(config, verify)


# ---------------------------------------------------------------------------------------------
# Configuration sequence (§6.3.2.1) and ConfigUpdate (§6.5.4).


def _check_sequence_value(value: int, label: str) -> None:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{label} sequence {value} is not a uint16")


def sequence_newer(candidate: int, current: int) -> bool:
    """Whether ``candidate`` is after ``current`` in mod-65535 serial arithmetic (§6.3.2.1:
    "greater than or less than are interpreted by modulo arithmetic as in TCP")."""
    _check_sequence_value(candidate, "candidate")
    _check_sequence_value(current, "current")
    diff = (candidate - current) % SEQUENCE_MODULUS
    return 0 < diff <= SEQUENCE_MODULUS // 2


def check_sequence(ours: int, theirs: int, is_config_update: bool) -> ErrorCode | None:
    """The configuration_sequence check on a received request (§6.3.2.1).

    ``None`` when the request may be processed. Otherwise CONFIG_TOO_OLD when the sender's
    configuration is older than ours (we must then also send it a ConfigUpdate), or
    CONFIG_TOO_NEW when it is newer (we should fetch the new configuration). A ConfigUpdate
    carrying 65535 is accepted whatever our sequence.
    """
    _check_sequence_value(ours, "our")
    _check_sequence_value(theirs, "their")
    if ours == SEQUENCE_WILDCARD:
        raise ValueError("65535 is not a configuration sequence (§6.3.2.1)")
    if theirs == SEQUENCE_WILDCARD and is_config_update:
        return None
    if theirs == ours:
        return None
    if theirs == SEQUENCE_WILDCARD or not sequence_newer(theirs, ours):
        return ErrorCode.CONFIG_TOO_OLD
    return ErrorCode.CONFIG_TOO_NEW


def next_sequence(sequence: int) -> int:
    """The sequence of the next configuration: 65534 is followed by 0 (§6.3.2.1)."""
    if not 0 <= sequence < SEQUENCE_MODULUS:
        raise ValueError(f"{sequence} is not a configuration sequence")
    return (sequence + 1) % SEQUENCE_MODULUS


class ConfigurationState:
    """The configuration a node runs with, and the ConfigUpdate rules that change it.

    Sans-IO: no clock, no I/O. ``verify`` is the injected signature check (see the module
    docstring). Kinds signed by a kind-signer arrive either in the configuration or in
    ConfigUpdate type kind; ``kinds`` holds all of them with the Node-ID that signed each
    (``None`` for kinds of the initial configuration that carried no kind-signature, which
    were trusted because the operator installed that configuration). ``document`` is the
    signed document we run with, kept to send in a ConfigUpdate to a node whose
    configuration is too old (§6.3.2.1).
    """

    def __init__(
        self, configuration: OverlayConfiguration, verify: Verify, document: bytes | None = None
    ) -> None:
        self.configuration = configuration
        self.verify = verify
        self.document = document
        self.kinds: dict[int | str, tuple[KindDescription, str | None]] = {}
        for kind in configuration.kinds:
            signer: str | None = None
            if kind.signature is not None:
                try:
                    signer = _signed_by(
                        verify,
                        kind.raw or _kind_xml(kind),
                        kind.signature,
                        configuration.kind_signers,
                        f"kind {kind.key}",
                        configuration.bad_nodes,
                    )
                except ConfigSignatureError:
                    continue  # §11.1: verify before accepting; a bad kind is not accepted
            self.kinds[kind.key] = (kind, signer)

    @classmethod
    def load(
        cls,
        xml_bytes: bytes,
        instance_name: str,
        verify: Verify,
        *,
        require_signature: bool = True,
    ) -> ConfigurationState:
        """Start from a configuration document (a file or a configuration server's answer,
        §11.2). With ``require_signature`` the configuration and its kind-blocks must be
        signed by the signers it names itself; raises :class:`ConfigError`."""
        entry = parse_overlay_configuration(xml_bytes).find(instance_name)
        if entry is None:
            raise ConfigError(f"no configuration for overlay {instance_name!r}")
        if require_signature:
            verify_signature(entry, verify)
        return cls(entry.configuration, verify, xml_bytes)

    @property
    def sequence(self) -> int:
        return self.configuration.sequence

    def check_sequence(self, theirs: int, is_config_update: bool) -> ErrorCode | None:
        """:func:`check_sequence` against our current configuration."""
        return check_sequence(self.sequence, theirs, is_config_update)

    def apply_config_update(self, update_type: int, payload: bytes | Sequence[bytes]) -> None:
        """Dispatch a decoded ConfigUpdateReq (§6.5.4.1) by type; raises ConfigUpdateError."""
        if update_type == ConfigUpdateType.CONFIG and isinstance(payload, bytes):
            self.apply_config_data(payload)
        elif update_type == ConfigUpdateType.KIND and not isinstance(payload, bytes):
            self.apply_kinds(payload)
        else:
            raise ConfigUpdateError(
                ErrorCode.INVALID_MESSAGE, f"ConfigUpdate type {update_type} not understood"
            )

    def apply_config_data(self, config_data: bytes) -> OverlayConfiguration:
        """ConfigUpdate type config (§6.5.4.2): accept the configuration for our overlay only
        if its sequence is newer than ours and it is signed by a configuration-signer of our
        current configuration (§11.1), with every kind-block signed by one of its
        kind-signers. Returns the new configuration; raises :class:`ConfigUpdateError`."""
        try:
            document = parse_overlay_configuration(config_data)
        except ConfigError as exc:
            raise ConfigUpdateError(ErrorCode.INVALID_MESSAGE, str(exc)) from exc
        entry = document.find(self.configuration.instance_name)
        if entry is None:
            raise ConfigUpdateError(
                ErrorCode.INCOMPATIBLE_WITH_OVERLAY, "no configuration for our overlay"
            )
        new = entry.configuration
        if not sequence_newer(new.sequence, self.sequence):
            raise ConfigUpdateError(
                ErrorCode.CONFIG_TOO_OLD,
                f"sequence {new.sequence} is not newer than ours ({self.sequence})",
            )
        try:
            verify_signature(
                entry,
                self.verify,
                configuration_signers=self.configuration.configuration_signers,
                bad_nodes=self.configuration.bad_nodes,
                check_kinds=False,
            )
            kind_signers = verify_kind_signatures(new, self.verify)
        except ConfigSignatureError as exc:
            raise ConfigUpdateError(ErrorCode.FORBIDDEN, str(exc)) from exc
        # §11.1: the new configuration overrides what we knew of a Kind, and Kinds signed by
        # a node no longer allowed to sign Kinds are discarded.
        kept = {
            key: value
            for key, value in self.kinds.items()
            if value[1] is not None and value[1] in new.kind_signers
        }
        kept.update({kind.key: (kind, kind_signers[kind.key]) for kind in new.kinds})
        self.configuration = new
        self.kinds = kept
        self.document = config_data
        return new

    def apply_kinds(self, kind_blocks: Sequence[bytes]) -> list[KindDescription]:
        """ConfigUpdate type kind (§6.5.4.2): each kind-block must be signed by a kind-signer
        of the current configuration; a Kind already known from a different signer is
        refused with Error_Forbidden. All-or-nothing. Returns the accepted Kinds."""
        accepted: list[tuple[KindDescription, str]] = []
        for block in kind_blocks:
            try:
                kind = parse_kind_block(block)
            except ConfigError as exc:
                raise ConfigUpdateError(ErrorCode.INVALID_MESSAGE, str(exc)) from exc
            try:
                signer = _signed_by(
                    self.verify,
                    kind.raw,
                    kind.signature,
                    self.configuration.kind_signers,
                    f"kind {kind.key}",
                    self.configuration.bad_nodes,
                )
            except ConfigSignatureError as exc:
                raise ConfigUpdateError(ErrorCode.FORBIDDEN, str(exc)) from exc
            known = self.kinds.get(kind.key)
            if known is not None and known[1] != signer:
                raise ConfigUpdateError(
                    ErrorCode.FORBIDDEN,
                    f"kind {kind.key} is already defined by another signer",
                )
            accepted.append((kind, signer))
        new_keys = {kind.key for kind, _ in accepted} - set(self.kinds)
        if len(self.kinds) + len(new_keys) > MAX_KINDS:
            raise ConfigUpdateError(ErrorCode.FORBIDDEN, f"more than {MAX_KINDS} Kinds")
        for kind, signer in accepted:
            self.kinds[kind.key] = (kind, signer)
        return [kind for kind, _ in accepted]

    def kind(self, key: int | str) -> KindDescription | None:
        """The Kind with this Kind-ID or name, from the configuration or a ConfigUpdate (a
        Kind declared by its IANA name is also found by its registered Kind-ID)."""
        entry = self.kinds.get(key)
        if entry is not None:
            return entry[0]
        for kind, _ in self.kinds.values():
            if kind.resolved_kind_id() == key:
                return kind
        return None


def load_root_certificates(config: OverlayConfiguration) -> list[x509.Certificate]:
    """The root-cert trust anchors (§11.1) as X.509 certificates. Parsing the document does
    not check them (the RFC's own example carries "bad cert"); this does, and raises
    :class:`ConfigError` for one that is not a DER X.509 certificate."""
    certificates = []
    for index, der in enumerate(config.root_certs):
        try:
            certificates.append(x509.load_der_x509_certificate(der))
        except ValueError as exc:
            raise ConfigError(f"root-cert {index} is not an X.509 certificate") from exc
    return certificates


def with_sequence(config: OverlayConfiguration, sequence: int) -> OverlayConfiguration:
    """A copy of ``config`` with another sequence (e.g. :func:`next_sequence`)."""
    return replace(config, sequence=sequence)
