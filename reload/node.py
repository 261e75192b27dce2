"""A RELOAD peer (RFC 6940) as a sans-IO core: routing, transactions, CHORD-RELOAD, storage.

:class:`ReloadNode` puts the pieces of :mod:`reload` together (DESIGN.md §3: no sockets, no
clock; time is injected). The embedding code (the asyncio daemon, or the in-memory network of
:mod:`reload.sim`) feeds it whole RELOAD messages received on direct links
(:meth:`ReloadNode.receive`), link events (:meth:`~ReloadNode.link_up`,
:meth:`~ReloadNode.link_down`) and timers (:meth:`~ReloadNode.next_timer`,
:meth:`~ReloadNode.handle_timer`), and performs the :data:`Action` list
:meth:`~ReloadNode.pop_actions` returns: send these bytes to that neighbour, open or close a
link, and events for the application (joined, a request finished, a peer is gone, a message
was dropped and why).

What it implements, with the RFC sections the code cites:

* Forwarding (§6.1, §6.2): Destination List processing, symmetric recursive routing (every
  node that forwards appends the previous hop to the Via List; a response's Destination List
  is the request's Via List reversed, §6.2.2), TTL decrement and Error_TTL_Exceeded
  (§6.3.2), end-to-end retransmission and duplicate suppression (§6.2.1,
  :mod:`reload.transactions`), a signature on every message, verified only at the
  destination (§6.3.4).
* CHORD-RELOAD (§10) through :class:`reload.topology.chord.ChordTopology`, whose decisions
  (Attach, Join, Update, Leave, hand-over, replicate) this node carries out.
* Storage (§7) through :class:`reload.storage.DataStore`: Store/Fetch/Stat/Find served by the
  responsible peer with the Kind's access policy and limits, replication to the two
  successors (§10.4), hand-over to a joining peer (§10.5 step 6), re-replication when the
  replica set changes (§10.7.3) and dropping data this peer no longer replicates. A Fetch
  addressed to a Node-ID (``fetch(..., at=node_id)``) is answered from that node's store,
  replicas included.
* Request checks: the destination verifies the signature, then applies
  :func:`reload.transactions.check_configuration_sequence` and
  :func:`reload.transactions.check_request_contents` (the rules
  :func:`reload.transactions.check_request` applies to raw messages). A message naming a
  Kind whose data model this node does not know cannot be decoded; it is still forwarded
  with only its forwarding header rewritten, and its destination answers
  Error_Unknown_Kind listing every unknown Kind (§7.4.1.2).
* Clients (§4.2, ``NodeConfig.client``): a client attaches to the peer responsible for its
  Node-ID through a bootstrap peer (§4.2.1), sends everything through it, forwards nothing,
  stores nothing and serves only Ping and Probe; peers never route a Resource-ID to a
  directly connected node that is not a ring peer.

Decisions the RFC leaves to us:

* ``now`` is wall-clock seconds since 1970 (``time.time()`` in the daemon, a virtual clock
  that starts at a fixed date in the simulation), because stored data lifetimes are persisted
  (:mod:`reload.storage`).
* Links come from Attach without ICE (link types 3/4, DESIGN.md §4): the initiator of an
  Attach opens the link to the answerer's first candidate (:class:`OpenLink`) once it has the
  AttachAns; messages for a node whose link is expected are queued until it is up.
* The responsible peer answers a Store once it has applied it and sent the replica Stores
  (§10.4); it does not wait for the replicas' answers. Replica Stores (and the hand-over of
  §10.5 step 6) are accepted only from a ring peer we are connected to; their StoredData
  signatures are not re-verified (the responsible peer verified them).
* Objects instead of bytes (``wire_format=False``): the simulation passes :class:`Message`
  objects between nodes instead of their encoding, and signs a deterministic serialization
  of the MessageContents (its ``repr``) instead of the wire encoding, which costs ~0.9 ms per
  hop in interpreted Construct. Everything else (routing, checks, signatures, storage) is
  the same code. The daemon always uses the wire format.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import random
import struct
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from reload import wire
from reload.access import chord_resource_id
from reload.config import KindDescription, OverlayConfiguration
from reload.messages import (
    DEFAULT_DATA_MODELS,
    ArrayEntry,
    ArrayRange,
    AttachAns,
    AttachReq,
    ChordUpdate,
    DataModel,
    DataValue,
    Destination,
    ErrorCode,
    ErrorResponse,
    FetchAns,
    FetchReq,
    FindAns,
    FindReq,
    ForwardingHeader,
    ForwardingOptionFlag,
    GenericCertificate,
    HashAlgorithm,
    IceCandidate,
    IpAddressPort,
    JoinAns,
    JoinReq,
    LeaveAns,
    LeaveReq,
    Message,
    MessageBody,
    MessageCode,
    MessageContents,
    NodeDestination,
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
    SignatureAlgorithm,
    SignatureAndHashAlgorithm,
    SignerIdentity,
    SignerIdentityType,
    StatAns,
    StatReq,
    StoreAns,
    StoredData,
    StoredDataSpecifier,
    StoredDataValue,
    StoreKindData,
    StoreReq,
    UnknownKindError,
    UpdateAns,
    UpdateReq,
)
from reload.security import (
    SignatureError,
    message_signature_prefix,
    stored_data_signature_prefix,
)
from reload.security import Signer as PkiSigner
from reload.security import Verifier as PkiVerifier
from reload.storage import DataStore, StorageError
from reload.topology import chord
from reload.transactions import (
    ResponseCache,
    Retransmit,
    TransactionError,
    TransactionFailed,
    TransactionManager,
    check_configuration_sequence,
    check_request_contents,
    check_ttl,
    overlay_hash,
    unknown_kind,
    unknown_kinds_in,
)

__all__ = [
    "Action",
    "CloseLink",
    "Identity",
    "Joined",
    "MessageDropped",
    "NodeConfig",
    "OpenLink",
    "PeerDown",
    "PkiSecurity",
    "ReloadNode",
    "RequestDone",
    "SecurityContext",
    "SendMessage",
    "SimAuthority",
    "SimSecurity",
    "resource_id",
    "single_value",
]

log = logging.getLogger(__name__)

#: How long a message waits for the link to its next hop that an Attach promised (ours).
LINK_WAIT = 30.0
#: Messages queued per node whose link is expected (ours; bounds memory).
MAX_QUEUED_PER_PEER = 64
#: How often data outside this peer's replica range is dropped (ours; §10.7.3 says "MAY").
MAINTENANCE_INTERVAL = 60.0
#: How long a client waits before attaching again after a failed attempt (ours).
CLIENT_RETRY = 5.0
#: A hand-over or replica Store that failed is sent again after this, doubled per attempt
#: up to TRANSFER_RETRY_MAX (ours: §10.5 step 6 and §10.4 say nothing of failures, but the
#: data must reach its new holder before anyone may drop it, §10.7.3).
TRANSFER_RETRY = 2.0
TRANSFER_RETRY_MAX = 60.0


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeConfig:
    """What a node needs of the overlay configuration (§11.1) and of its own setup."""

    overlay_name: str
    node_id_length: int = 16
    kinds: tuple[KindDescription, ...] = ()
    configuration_sequence: int = 0
    initial_ttl: int = 100  # §11.1 initial-ttl
    max_message_size: int = 5000  # §11.1 max-message-size
    overlay_reliability_timer: float = 3.0  # §6.2.1, §11.1 overlay-reliability-timer (s)
    chord_update_interval: float = chord.DEFAULT_UPDATE_INTERVAL  # §10.7.4.1
    chord_ping_interval: float = chord.DEFAULT_PING_INTERVAL  # §10.7.4.2
    chord_reactive: bool = True  # §10.7.1 chord-reactive
    successors: int = chord.MIN_NEIGHBORS
    predecessors: int = chord.MIN_NEIGHBORS
    fingers: int = chord.MIN_FINGERS
    replication: int = 3  # §10.4: the responsible peer and its two successors
    #: §10.7.1 successor replacement hold-down time ("defaults to 30 seconds") before new
    #: replicas are made after a successor failed.
    successor_hold_down: float = chord.SUCCESSOR_HOLD_DOWN
    #: This node's address, offered as its candidate in Attach (link types 3/4, no ICE).
    address: IpAddressPort | None = None
    link_type: int = 4  # TLS-TCP-FH-NO-ICE (§6.5.1.1)
    default_lifetime: int = 3600  # s, lifetime of values stored through the client API
    #: A client (§4.2, §4.2.1), not a peer: it attaches to the peer responsible for its own
    #: Node-ID and sends everything through it; it routes nothing, stores nothing and never
    #: enters a Routing Table.
    client: bool = False

    @classmethod
    def from_overlay_configuration(
        cls, configuration: OverlayConfiguration, **overrides: object
    ) -> NodeConfig:
        """The node settings an overlay configuration document gives (§11.1)."""
        c = configuration
        values: dict[str, object] = {
            "overlay_name": c.instance_name,
            "node_id_length": c.node_id_length,
            "kinds": tuple(c.kinds),
            "configuration_sequence": c.sequence,
            "initial_ttl": c.initial_ttl,
            "max_message_size": c.max_message_size,
            "overlay_reliability_timer": c.overlay_reliability_timer / 1000.0,
            "chord_update_interval": float(
                c.chord_update_interval or chord.DEFAULT_UPDATE_INTERVAL
            ),
            "chord_ping_interval": float(c.chord_ping_interval or chord.DEFAULT_PING_INTERVAL),
            "chord_reactive": c.chord_reactive,
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Security
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified signer (§6.3.4): what the access policies (§7.3) and the node read."""

    node_ids: tuple[bytes, ...]
    user_name: str | None
    node_id: bytes | None


class SecurityContext(Protocol):
    """How a node signs and verifies (§6.3.4, §7.1). ``data`` is always the signature input
    without the SignerIdentity; the implementation appends it, as §6.3.4 requires."""

    def sign(self, data: bytes) -> Signature: ...

    def certificates(self) -> list[bytes]: ...

    def verify(
        self, data: bytes, signature: Signature, certificates: Sequence[bytes], now: float
    ) -> Identity:
        """The signer, or :class:`reload.security.SignatureError`."""
        ...


class PkiSecurity:
    """The real thing: :class:`reload.security.Signer` and :class:`~reload.security.Verifier`
    (X.509 certificates with Node-IDs, RSASSA-PKCS1-v1_5 or ECDSA with SHA-256)."""

    def __init__(self, signer: PkiSigner, verifier: PkiVerifier) -> None:
        self.signer = signer
        self.verifier = verifier

    def sign(self, data: bytes) -> Signature:
        return self.signer.sign(data, SignerIdentityType.CERT_HASH)

    def certificates(self) -> list[bytes]:
        return self.signer.certificates

    def verify(
        self, data: bytes, signature: Signature, certificates: Sequence[bytes], now: float
    ) -> Identity:
        moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
        v = self.verifier.verify(data, signature, certificates, now=moment)
        return Identity(v.node_ids, v.user_name, v.node_id)


class SimAuthority:
    """The enrollment authority of a simulated overlay (simulation only, never for real use).

    It hands out :class:`SimSecurity` contexts whose "certificate" is ``b"SIMCERT" ‖ Node-ID
    ‖ user name`` and whose "signature" is a BLAKE2b MAC over the same signature input a real
    signature covers, keyed with a per-node key derived from the authority's secret. Any code
    holding the authority could forge, which is fine inside one simulation process: the point
    is that tampered or misattributed messages still fail verification, at the cost of a hash
    instead of an RSA/ECDSA operation, so 10,000 nodes run the same node code.
    """

    def __init__(self, secret: bytes, node_id_length: int = 16) -> None:
        self.secret = secret
        self.node_id_length = node_id_length

    def key(self, certificate: bytes) -> bytes:
        return hashlib.blake2b(certificate, key=self.secret[:64], digest_size=32).digest()

    def context(self, node_id: bytes, user_name: str | None = None) -> SimSecurity:
        return SimSecurity(self, node_id, user_name if user_name is not None else node_id.hex())


_SIM_CERT = b"SIMCERT"


class SimSecurity:
    """A :class:`SecurityContext` for the simulation (see :class:`SimAuthority`)."""

    def __init__(self, authority: SimAuthority, node_id: bytes, user_name: str) -> None:
        self.authority = authority
        self.node_id = node_id
        self.user_name = user_name
        self.certificate = _SIM_CERT + node_id + user_name.encode("utf-8")
        self._key = authority.key(self.certificate)
        digest = hashlib.sha256(self.certificate).digest()
        self.identity = SignerIdentity(SignerIdentityType.CERT_HASH, HashAlgorithm.SHA256, digest)
        # SignerIdentity on the wire (§6.3.4): type(1) length(2) hash_alg(1) hash<0..255>
        self._identity_bytes = struct.pack(">BHBB", 1, 34, HashAlgorithm.SHA256, 32) + digest

    def sign(self, data: bytes) -> Signature:
        mac = hashlib.blake2b(data + self._identity_bytes, key=self._key, digest_size=16)
        return Signature(
            SignatureAndHashAlgorithm(HashAlgorithm.SHA256, SignatureAlgorithm.ECDSA),
            self.identity,
            mac.digest(),
        )

    def certificates(self) -> list[bytes]:
        return [self.certificate]

    def verify(
        self, data: bytes, signature: Signature, certificates: Sequence[bytes], now: float
    ) -> Identity:
        identity = signature.identity
        for cert in certificates:
            if not cert.startswith(_SIM_CERT):
                continue
            if hashlib.sha256(cert).digest() != identity.hash:
                continue
            length = self.authority.node_id_length
            node_id = cert[len(_SIM_CERT) : len(_SIM_CERT) + length]
            user = cert[len(_SIM_CERT) + length :].decode("utf-8", "replace")
            key = self.authority.key(cert)
            encoded = struct.pack(">BHBB", identity.identity_type, 34, identity.hash_alg, 32)
            expected = hashlib.blake2b(data + encoded + identity.hash, key=key, digest_size=16)
            if expected.digest() != signature.signature_value:
                raise SignatureError("bad-signature", "simulated signature does not verify")
            return Identity((node_id,), user, node_id)
        raise SignatureError("unknown-signer", "no certificate matches SignerIdentity")


# ---------------------------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendMessage:
    """Send a whole RELOAD message to the directly connected node ``peer_id``. ``data`` is
    its encoding; in object mode (``wire_format=False``, the simulation) ``data`` is empty
    and ``message`` carries it."""

    peer_id: bytes
    data: bytes
    message: Message | None = None


@dataclass(frozen=True, slots=True)
class OpenLink:
    """Open an overlay link to ``peer_id`` at ``address`` (the AttachAns candidate; None when
    it gave none, e.g. in the simulation); call :meth:`ReloadNode.link_up` when it is up."""

    peer_id: bytes
    address: IpAddressPort | None


@dataclass(frozen=True, slots=True)
class CloseLink:
    """Close the link to ``peer_id`` (after a Leave)."""

    peer_id: bytes


@dataclass(frozen=True, slots=True)
class Joined:
    """The node is part of the ring (§10.5 step 9); ``admitting_peer`` is None for the first
    peer of an overlay."""

    admitting_peer: bytes | None


@dataclass(frozen=True, slots=True)
class RequestDone:
    """A client request finished. ``answer`` is the answer body (StoreAns, FetchAns, StatAns,
    FindAns, PingAns, RouteQueryAns...) or None; ``error`` the ErrorCode when it failed
    (Error_Request_Timeout when no answer came, §6.2.1) with ``error_info``. ``hops`` is the
    number of overlay hops the answer travelled (its Via List length + 1); ``latency`` the
    time from the first transmission to the answer."""

    handle: int
    answer: MessageBody | None
    error: ErrorCode | None = None
    error_info: bytes = b""
    hops: int = 0
    latency: float = 0.0
    #: The Node-ID that signed the answer (the responsible peer of a Ping to a Resource-ID).
    responder: bytes = b""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class PeerDown:
    """The link to ``peer_id`` is gone and it left the Routing Table (§10.7.1)."""

    peer_id: bytes


@dataclass(frozen=True, slots=True)
class MessageDropped:
    """A message from ``peer_id`` was dropped (malformed, forged, unroutable...)."""

    peer_id: bytes | None
    reason: str


Action = SendMessage | OpenLink | CloseLink | Joined | RequestDone | PeerDown | MessageDropped


# ---------------------------------------------------------------------------------------------
# Internal state
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Request:
    """A request this node originated (§6.2.1), its purpose and its client handle."""

    message: Message
    purpose: str
    started: float
    handle: int | None = None
    target: bytes = b""  # Attach: the Resource-ID attached to; transfer: the receiver
    transfer: StoreReq | None = None  # hand-over or replica Store (§10.5 step 6, §10.4)
    attempts: int = 0  # transfers: how many times it was sent before


@dataclass(slots=True)
class _Queued:
    deadline: float
    messages: list[Message] = field(default_factory=list)


def _wildcard(length: int) -> bytes:
    return b"\xff" * length


# The same ChordUpdate goes to every neighbour and the same bytes arrive at each of them: the
# codec is pure, so its results are memoized (bounded), which matters at 10,000 simulated nodes.
_UPDATE_CACHE_SIZE = 4096
_encoded_updates: dict[tuple[ChordUpdate, int], bytes] = {}
_decoded_updates: dict[tuple[bytes, int], ChordUpdate] = {}


def _encode_update(update: ChordUpdate, node_id_length: int) -> bytes:
    key = (update, node_id_length)
    data = _encoded_updates.get(key)
    if data is None:
        data = wire.encode_chord_update(update, node_id_length)
        if len(_encoded_updates) >= _UPDATE_CACHE_SIZE:
            _encoded_updates.clear()
        _encoded_updates[key] = data
    return data


def _decode_update(data: bytes, node_id_length: int) -> ChordUpdate:
    """:func:`reload.wire.decode_chord_update`, memoized; raises ReloadDecodeError."""
    key = (bytes(data), node_id_length)
    update = _decoded_updates.get(key)
    if update is None:
        update = wire.decode_chord_update(data, node_id_length)
        if len(_decoded_updates) >= _UPDATE_CACHE_SIZE:
            _decoded_updates.clear()
        _decoded_updates[key] = update
    return update


# ---------------------------------------------------------------------------------------------
# The node
# ---------------------------------------------------------------------------------------------


class ReloadNode:
    """One RELOAD peer (sans-IO). See the module documentation."""

    def __init__(
        self,
        node_id: bytes,
        config: NodeConfig,
        security: SecurityContext,
        now: float,
        *,
        store_path: Path | str | None = None,
        rng: random.Random | None = None,
        wire_format: bool = True,
    ) -> None:
        if len(node_id) != config.node_id_length:
            raise ValueError("Node-ID length does not match the overlay's node-id-length")
        self.node_id = node_id
        self.config = config
        self.security = security
        self.rng = rng if rng is not None else random.Random()
        self.wire_format = wire_format
        self.overlay = overlay_hash(config.overlay_name)
        self.chord = chord.ChordTopology(
            node_id,
            now,
            node_id_length=config.node_id_length,
            successors=config.successors,
            predecessors=config.predecessors,
            fingers=config.fingers,
            update_interval=config.chord_update_interval,
            ping_interval=config.chord_ping_interval,
            reactive=config.chord_reactive,
            hold_down=config.successor_hold_down,
            rng=self.rng,
        )
        self.store_ = DataStore(config.node_id_length, config.kinds, store_path)
        self._models: dict[int, DataModel] = {}
        for kind in config.kinds:
            kind_id = kind.resolved_kind_id()
            if kind_id is not None:
                self._models[kind_id] = DataModel(kind.data_model)
        self.transactions: TransactionManager[int] = TransactionManager(
            reliability_timer=config.overlay_reliability_timer
        )
        self.responses = ResponseCache()
        self._answers: OrderedDict[int, Message] = OrderedDict()
        self._requests: dict[int, _Request] = {}
        self._actions: list[Action] = []
        self.links: set[bytes] = set()
        self._queued: dict[bytes, _Queued] = {}
        self._connecting: dict[bytes, float] = {}  # peers we open a link to after AttachAns
        #: Peers that asked for our Update (send_update, §10.5 step 2) in an Attach although
        #: we hold a link to them: a restarted node with the same Node-ID whose old link we
        #: have not yet seen fail. The Update is sent again when the new link comes up.
        self._update_on_link: dict[bytes, float] = {}
        self._join_requests: dict[bytes, tuple[Message, bytes]] = {}  # JN -> (JoinReq, prev)
        self._bootstrap: bytes | None = None
        self._known_kinds = frozenset(self._models)
        #: A client's bootstrap peers, in the order they are tried (§4.2.1, §11.4).
        self._bootstraps: list[tuple[bytes, IpAddressPort | None]] = []
        #: A client's attached peer: the peer responsible for its Node-ID (§4.2.1).
        self.attached_peer: bytes | None = None
        self._client_attaching = False
        self._client_dialing: set[bytes] = set()  # bootstrap peers a link is being opened to
        self._client_dial_next = 0
        self._client_dial_failures = 0
        self._client_retry_at: float | None = None
        self._client_refresh_at: float | None = None
        self._next_handle = 1
        self._maintenance_at = now + MAINTENANCE_INTERVAL
        #: hand-over and replica Stores (§10.5 step 6, §10.4) not yet answered with a
        #: StoreAns, by Resource-ID: the peers that have yet to acknowledge. Data in here is
        #: never dropped (§10.7.3), else a Store lost under delay or refused (the receiver
        #: did not know us as a peer yet) takes the only copy with it.
        self._unacked: dict[bytes, set[bytes]] = {}
        #: failed transfers to send again: (Resource-ID, receiver) -> (due, request, attempts)
        self._resend: dict[tuple[bytes, bytes], tuple[float, StoreReq, int]] = {}
        #: the predecessors seen at the last maintenance (§10.7.3: drop only after the
        #: ring near us stayed unchanged for a whole maintenance period)
        self._drop_view: tuple[bytes, ...] | None = None
        self._left = False
        self.joined_at: float | None = None
        #: Counters for tests and the simulation.
        self.stats: dict[str, int] = {}

    # --- public API: events in ---------------------------------------------------------------

    def link_up(self, peer_id: bytes, now: float) -> None:
        """A link to ``peer_id`` (authenticated as that Node-ID) is up."""
        if peer_id == self.node_id:
            return
        if self.client:
            self._client_link_up(peer_id, now)
            return
        self.links.add(peer_id)
        queued = self._queued.pop(peer_id, None)
        update_due = self._update_on_link.pop(peer_id, None)
        if peer_id in self._connecting:
            del self._connecting[peer_id]
            self._run(self.chord.on_attached(peer_id, now), now)
        elif not self.chord.table.is_peer(peer_id):
            self.chord.table.connection_up(peer_id)
        if queued is not None:
            for msg in queued.messages:
                self._transmit(peer_id, msg, now)
        if update_due is not None and update_due > now:
            # the Update we sent at the Attach went down the dead incarnation's link
            self._run(self.chord.on_attach_request(peer_id, True, now), now)
        if self._bootstrap == peer_id and self.chord.state == chord.JoinState.IDLE:
            self._run(self.chord.start_join(now), now)

    def link_down(self, peer_id: bytes, now: float) -> None:
        """The link to ``peer_id`` failed or was closed (§10.7.1: a failed neighbour); also
        a link that could not be opened."""
        if self.client:
            self._client_link_down(peer_id, now)
            return
        was = peer_id in self.links
        self.links.discard(peer_id)
        self._connecting.pop(peer_id, None)
        self._queued.pop(peer_id, None)
        if self._left:
            return
        if was or self.chord.table.is_connected(peer_id):
            actions = self.chord.on_connection_lost(peer_id, now)
            self._run(actions, now)
            self._actions.append(PeerDown(peer_id))

    def receive(self, peer_id: bytes, data: bytes, now: float) -> None:
        """A whole (reassembled) RELOAD message from the directly connected ``peer_id``."""
        if len(data) > self.config.max_message_size:
            self._drop(peer_id, f"message of {len(data)} bytes exceeds max-message-size")
            return
        try:
            msg = wire.decode_message(data, self.config.node_id_length, self._data_models())
        except UnknownKindError:
            self._receive_unknown_kind(peer_id, data, now)
            return
        except ReloadDecodeError as exc:
            self._drop(peer_id, f"malformed message: {exc}")
            return
        self.receive_message(peer_id, msg, now)

    def _receive_unknown_kind(self, peer_id: bytes, data: bytes, now: float) -> None:
        """A message naming a Kind whose data model this node does not know cannot be
        decoded, but it must still be forwarded (a node that forwards does not look at the
        contents, §6.3.2) and, at its destination, answered with Error_Unknown_Kind listing
        every unknown Kind (§7.4.1.2) rather than left to time out. The forwarding header is
        read and rewritten (TTL, Via List, §6.1.2, §6.3.2); the rest travels unchanged."""
        try:
            header, start = wire.decode_forwarding_header(data, self.config.node_id_length)
        except ReloadDecodeError as exc:
            self._drop(peer_id, f"malformed message: {exc}")
            return
        if header.overlay != self.overlay or header.version != 0x0A or self._left:
            self._drop(peer_id, "message for another overlay or version")
            return
        code = int.from_bytes(data[start : start + 2], "big")
        is_request = code != MessageCode.ERROR and code % 2 == 1
        dests = self._strip_me(header.destination_list)
        step = self._next_step(dests, peer_id)
        if step is None or isinstance(step, str):
            if not is_request:
                self._drop(peer_id, "a response naming an unknown Kind")
            elif step is None:
                unknown = unknown_kinds_in(data[start:], self._known_kinds)
                if not unknown:
                    self._drop(peer_id, "malformed message: unreadable Kind list")
                    return
                kind_error = unknown_kind(unknown)
                self._error(header, peer_id, kind_error[0], kind_error[1], now)
            else:
                self._error(header, peer_id, ErrorCode.NOT_FOUND, step, now)
            return
        ttl_error = check_ttl(header.ttl)  # §6.3.2
        if ttl_error is not None:
            if is_request:
                self._error(header, peer_id, ttl_error[0], ttl_error[1], now)
            else:
                self._drop(peer_id, "response TTL exceeded")
            return
        if step not in self.links:
            self._drop(peer_id, "no link to the next hop of an undecodable message")
            return
        header = replace(
            header,
            ttl=header.ttl - 1,
            via_list=(*header.via_list, NodeDestination(peer_id)),
            destination_list=dests,
        )
        payload = data[start:]
        try:
            encoded = wire.encode_forwarding_header(
                header, len(payload), self.config.node_id_length
            )
        except ReloadEncodeError as exc:
            self._drop(peer_id, f"cannot forward: {exc}")
            return
        self._count("forwarded")
        self._count("sent")
        self._actions.append(SendMessage(step, encoded + payload))

    def receive_message(self, peer_id: bytes, msg: Message, now: float) -> None:
        """The object-mode entry point (the simulation's fast path); :meth:`receive` decodes
        and calls it."""
        if self._left:
            return
        h = msg.header
        if h.overlay != self.overlay:
            self._drop(peer_id, "message for another overlay")
            return
        if h.version != 0x0A:  # §6.3.2: "Nodes MUST reject messages with other versions"
            self._drop(peer_id, f"unsupported RELOAD version {h.version:#04x}")
            return
        if h.ttl > self.config.initial_ttl and _is_request(msg):
            # §6.3.2: a TTL above initial-ttl is discarded with Error_TTL_Exceeded (the rule
            # of reload.transactions.check_request and check_forwarding)
            text = f"TTL {h.ttl} > initial-ttl {self.config.initial_ttl}"
            self._error(msg, peer_id, ErrorCode.TTL_EXCEEDED, text, now)
            return
        self._route(msg, peer_id, now)

    # --- public API: actions out, timers --------------------------------------------------

    def pop_actions(self) -> list[Action]:
        """The actions accumulated since the last call, in order."""
        actions, self._actions = self._actions, []
        return actions

    def next_timer(self) -> float | None:
        """When :meth:`handle_timer` next has work."""
        if self._left:
            return None
        candidates = [self._maintenance_at]
        timers = (
            self.chord.next_timer(),
            self.transactions.next_timer(),
            self.store_.next_expiry(),
        )
        if self.client:  # no topology, no storage (§4.2)
            timers = (
                self.transactions.next_timer(),
                self._client_retry_at,
                self._client_refresh_at,
            )
        for t in timers:
            if t is not None:
                candidates.append(t)
        candidates.extend(q.deadline for q in self._queued.values())
        if not self.client:
            candidates.extend(due for due, _, _ in self._resend.values())
        return min(candidates)

    def handle_timer(self, now: float) -> None:
        """Run what is due: retransmissions and timeouts (§6.2.1), Chord maintenance
        (§10.7.4), expiry (§7.4.1.3), dropping data outside the replica range (§10.7.3)."""
        if self._left:
            return
        for event in self.transactions.handle_timer(now):
            if isinstance(event, Retransmit):
                request = self._requests.get(event.transaction_id)
                if request is not None:
                    self._count("retransmissions")
                    self._route(request.message, None, now)
            elif isinstance(event, TransactionFailed):
                self._fail(event.transaction_id, ErrorCode.REQUEST_TIMEOUT, b"", now)
        for peer, queued in list(self._queued.items()):
            if queued.deadline <= now:
                del self._queued[peer]
        for peer, deadline in list(self._update_on_link.items()):
            if deadline <= now:
                del self._update_on_link[peer]
        if self.client:
            if self._maintenance_at <= now:
                self._maintenance_at = now + MAINTENANCE_INTERVAL
            self._client_timer(now)
            return
        self._run(self.chord.handle_timer(now), now)
        self._resend_transfers(now)
        self.store_.expire(now)
        if self._maintenance_at <= now:
            self._maintenance_at = now + MAINTENANCE_INTERVAL
            self._drop_foreign_data()

    # --- public API: join and leave -------------------------------------------------------

    def join(
        self, bootstrap_peer_id: bytes | None, now: float, address: IpAddressPort | None = None
    ) -> None:
        """Join the overlay through ``bootstrap_peer_id`` (§10.5, §11.4), or create it when
        None (the first peer). Without a link to the bootstrap node yet, an :class:`OpenLink`
        is emitted and the join starts on :meth:`link_up`.

        A client (``NodeConfig.client``) needs a bootstrap peer: it attaches to the peer
        responsible for its Node-ID through it (§4.2.1) instead of joining; every call adds
        a bootstrap peer it may fall back on (:meth:`add_bootstrap`)."""
        if self.client:
            if bootstrap_peer_id is None:
                raise ValueError("a client cannot create an overlay: give a bootstrap peer")
            self.add_bootstrap(bootstrap_peer_id, address)
            if bootstrap_peer_id in self.links:
                self._client_attach(now)
            elif not self.links and not self._client_dialing:
                # the first bootstrap peer; the others are fallbacks
                self._client_dialing.add(bootstrap_peer_id)
                self._actions.append(OpenLink(bootstrap_peer_id, address))
            return
        if bootstrap_peer_id is None:
            self._run(self.chord.create(now), now)
            return
        self._bootstrap = bootstrap_peer_id
        if bootstrap_peer_id in self.links:
            self._run(self.chord.start_join(now), now)
        else:
            self._actions.append(OpenLink(bootstrap_peer_id, address))

    def leave(self, now: float) -> None:
        """Leave the overlay (§10.9): a LeaveReq to every neighbour, then close the links. A
        client, which is in nobody's Neighbor Table, only closes its links."""
        if not self.client:
            self._run(self.chord.leave(now), now)
        for peer in sorted(self.links):
            self._actions.append(CloseLink(peer))
        self._left = True

    @property
    def joined(self) -> bool:
        """A peer is in the ring (§10.5 step 9); a client is attached to a peer (§4.2.1)."""
        if self.client:
            return self.attached_peer is not None
        return self.chord.joined

    @property
    def client(self) -> bool:
        return self.config.client

    def add_bootstrap(self, peer_id: bytes, address: IpAddressPort | None = None) -> None:
        """A bootstrap peer a client may attach through when its attached peer fails."""
        if peer_id == self.node_id:
            return
        self._bootstraps = [(p, a) for p, a in self._bootstraps if p != peer_id]
        self._bootstraps.append((peer_id, address))

    # --- public API: client requests ------------------------------------------------------

    def store(
        self,
        resource_id: bytes,
        kind_id: int,
        values: Sequence[StoredDataValue],
        now: float,
        *,
        lifetime: int | None = None,
        generation: int = 0,
    ) -> int:
        """Store ``values`` of Kind ``kind_id`` at ``resource_id`` (§7.4.1); each value is
        signed by this node (§7.1). Returns the handle of the :class:`RequestDone`."""
        storage_time = int(now * 1000)
        life = lifetime if lifetime is not None else self.config.default_lifetime
        stored = tuple(
            StoredData(
                storage_time, life, v, self._sign_value(resource_id, kind_id, storage_time, v)
            )
            for v in values
        )
        req = StoreReq(resource_id, 0, (StoreKindData(kind_id, generation, stored),))
        return self._client_request(req, (ResourceDestination(resource_id),), now)

    def fetch(
        self,
        resource_id: bytes,
        specifiers: Sequence[StoredDataSpecifier],
        now: float,
        *,
        at: bytes | None = None,
    ) -> int:
        """Fetch (§7.4.2) from the peer responsible for ``resource_id``, or, with ``at``, from
        the node with that Node-ID (the Destination List is that Node-ID, §6.3.2.2): it
        answers from its own store, replicas included (§10.4), which is how a reader checks
        each replica (a value that fails verification at one replica, say)."""
        destination: Destination = ResourceDestination(resource_id)
        if at is not None:
            if len(at) != self.config.node_id_length:
                raise ValueError("Node-ID of the wrong length")
            destination = NodeDestination(at)
        return self._client_request(FetchReq(resource_id, tuple(specifiers)), (destination,), now)

    def stat(
        self, resource_id: bytes, specifiers: Sequence[StoredDataSpecifier], now: float
    ) -> int:
        """Stat (§7.4.3)."""
        return self._client_request(
            StatReq(resource_id, tuple(specifiers)), (ResourceDestination(resource_id),), now
        )

    def find(self, resource_id: bytes, kinds: Sequence[int], now: float) -> int:
        """Find (§7.4.4)."""
        return self._client_request(
            FindReq(resource_id, tuple(kinds)), (ResourceDestination(resource_id),), now
        )

    def ping(self, destination: bytes, now: float) -> int:
        """Ping (§6.5.3) the node ``destination`` when it is directly connected (a keep-alive),
        else the peer responsible for ``destination`` as a Resource-ID (§10.3)."""
        target: Destination = ResourceDestination(destination)
        if destination in self.links:
            target = NodeDestination(destination)
        return self._client_request(PingReq(), (target,), now)

    def route_query(self, peer_id: bytes, destination: bytes, now: float) -> int:
        """RouteQuery (§6.4.2.4): ask ``peer_id`` where it would route ``destination``."""
        body = RouteQueryReq(False, ResourceDestination(destination))
        return self._client_request(body, (NodeDestination(peer_id),), now)

    def probe(self, peer_id: bytes, now: float) -> int:
        """Probe (§6.4.2.5) ``peer_id`` for its responsible set, resource count and uptime."""
        info = tuple(int(t) for t in ProbeInformationType)
        return self._client_request(ProbeReq(info), (NodeDestination(peer_id),), now)

    # --- message construction -------------------------------------------------------------

    def _data_models(self) -> dict[int, DataModel]:
        return {**DEFAULT_DATA_MODELS, **self._models}

    def whole_kind(self, kind_id: int) -> StoredDataSpecifier:
        """A specifier selecting every value of ``kind_id`` (§7.4.2.1) by the Kind's data
        model: all keys of a DICTIONARY, indices 0 to 0xFFFFFFFF of an ARRAY. A bare
        specifier would be encoded as SINGLE, which a DICTIONARY Kind cannot parse."""
        model = self._data_models().get(kind_id, DataModel.SINGLE)
        if model is DataModel.DICTIONARY:
            return StoredDataSpecifier(kind_id, keys=())
        if model is DataModel.ARRAY:
            return StoredDataSpecifier(kind_id, indices=(ArrayRange(0, -1),))
        return StoredDataSpecifier(kind_id)

    def _contents_bytes(self, contents: MessageContents) -> bytes:
        if self.wire_format:
            return wire.encode_contents(contents, self.config.node_id_length)
        return repr(contents).encode()

    def _sign_value(
        self, resource_id: bytes, kind_id: int, storage_time: int, value: StoredDataValue
    ) -> Signature:
        return self.security.sign(self._value_input(resource_id, kind_id, storage_time, value))

    def _value_input(
        self, resource_id: bytes, kind_id: int, storage_time: int, value: StoredDataValue
    ) -> bytes:
        if isinstance(value, ArrayEntry):
            value = replace(value, index=0)  # §7.1: the array index is zeroed for signing
        encoded = wire.encode_stored_data_value(value) if self.wire_format else repr(value).encode()
        return stored_data_signature_prefix(resource_id, kind_id, storage_time, encoded)

    def _build(
        self,
        body: MessageBody,
        destinations: tuple[Destination, ...],
        transaction_id: int,
    ) -> Message:
        contents = MessageContents(body)
        header = ForwardingHeader(
            overlay=self.overlay,
            configuration_sequence=self.config.configuration_sequence,
            ttl=self.config.initial_ttl,
            transaction_id=transaction_id,
            destination_list=destinations,
        )
        # §6.3.4: every message is signed over overlay ‖ transaction_id ‖ MessageContents
        data = message_signature_prefix(
            self.overlay, transaction_id, self._contents_bytes(contents)
        )
        signature = self.security.sign(data)
        certs = tuple(GenericCertificate(0, c) for c in self.security.certificates())
        return Message(header, contents, SecurityBlock(certs, signature))

    def _new_request(
        self,
        body: MessageBody,
        destinations: tuple[Destination, ...],
        purpose: str,
        now: float,
        *,
        handle: int | None = None,
        target: bytes = b"",
        transfer: StoreReq | None = None,
        attempts: int = 0,
    ) -> int:
        transaction_id = self.rng.getrandbits(64)
        while transaction_id in self._requests:
            transaction_id = self.rng.getrandbits(64)
        msg = self._build(body, destinations, transaction_id)
        try:
            self.transactions.start(transaction_id, b"", now, transaction_id)
        except TransactionError as exc:
            self._count("requests_refused")
            log.warning("%s: request not sent: %s", self.node_id.hex()[:8], exc)
            if handle is not None:
                self._actions.append(
                    RequestDone(handle, None, ErrorCode.REQUEST_TIMEOUT, str(exc).encode())
                )
            if transfer is not None:
                self._transfer_failed(transfer, target, attempts, now)
            return transaction_id
        self._requests[transaction_id] = _Request(
            msg, purpose, now, handle, target, transfer, attempts
        )
        self._route(msg, None, now)
        return transaction_id

    def _client_request(
        self, body: MessageBody, destinations: tuple[Destination, ...], now: float
    ) -> int:
        handle = self._next_handle
        self._next_handle += 1
        self._new_request(body, destinations, "client", now, handle=handle)
        return handle

    def _answer(
        self, request: Message | ForwardingHeader, prev: bytes | None, body: MessageBody, now: float
    ) -> None:
        """Send the answer to ``request`` (§6.2.2): the Destination List is the request's
        Via List, completed with the hop it came from, reversed. Only the request's
        forwarding header is needed (a request that could not be decoded is answered too)."""
        header = request.header if isinstance(request, Message) else request
        via = header.via_list
        if prev is not None:
            via = (*via, NodeDestination(prev))
        response = self._build(body, tuple(reversed(via)), header.transaction_id)
        self._answers[header.transaction_id] = response
        while len(self._answers) > self.responses.max_entries:
            self._answers.popitem(last=False)
        self.responses.record(header.transaction_id, b"", now)
        self._route(response, None, now)

    def _error(
        self,
        request: Message | ForwardingHeader,
        prev: bytes | None,
        code: ErrorCode,
        info: bytes | str,
        now: float,
    ) -> None:
        if isinstance(info, str):
            info = info.encode("utf-8")[:0xFFFF]
        self._count(f"error_{code.name.lower()}")
        self._answer(request, prev, ErrorResponse(int(code), info), now)

    # --- forwarding (§6.1.2, §6.2) --------------------------------------------------------

    def _is_me(self, d: Destination) -> bool:
        return isinstance(d, NodeDestination) and d.node_id == self.node_id

    def _route(self, msg: Message, prev: bytes | None, now: float) -> None:
        """Deliver ``msg`` here or forward it one hop (§6.1.2). ``prev`` is the node it came
        from, None for a message this node sends."""
        h = msg.header
        dests = self._strip_me(h.destination_list)
        if h.options and prev is not None:
            # §6.3.2.3: we understand no forwarding option; one that is critical to a node
            # that forwards is refused here, one critical at the destination by
            # reload.transactions.check_request_contents (requests) or below (responses)
            flag = ForwardingOptionFlag.DESTINATION_CRITICAL
            if dests:
                flag = ForwardingOptionFlag.FORWARD_CRITICAL
            is_request = _is_request(msg)
            if any(o.flags & flag for o in h.options) and (dests or not is_request):
                if is_request:
                    self._error(
                        msg,
                        prev,
                        ErrorCode.UNSUPPORTED_FORWARDING_OPTION,
                        "unsupported critical forwarding option",
                        now,
                    )
                else:
                    self._drop(prev, "response with an unsupported critical forwarding option")
                return
        step = self._next_step(dests, prev)
        if step is None:
            self._deliver(msg, prev, now)
            return
        if isinstance(step, str):
            self._unroutable(msg, prev, step, now)
            return
        next_hop = step
        if prev is not None:
            # §6.3.2: every node that forwards decrements the TTL; at zero it answers
            # Error_TTL_Exceeded instead of forwarding
            ttl_error = check_ttl(h.ttl)
            if ttl_error is not None:
                if _is_request(msg):
                    self._error(msg, prev, ttl_error[0], ttl_error[1], now)
                else:
                    self._drop(prev, "response TTL exceeded")
                return
            h = replace(
                h,
                ttl=h.ttl - 1,
                via_list=(*h.via_list, NodeDestination(prev)),
                destination_list=dests,
            )
            msg = replace(msg, header=h)
            self._count("forwarded")
        elif dests is not h.destination_list:
            msg = replace(msg, header=replace(h, destination_list=dests))
        self._transmit(next_hop, msg, now)

    def _strip_me(self, dests: tuple[Destination, ...]) -> tuple[Destination, ...]:
        while dests and self._is_me(dests[0]):
            dests = dests[1:]  # §6.1.2: an entry naming this node is removed
        return dests

    def _next_step(self, dests: tuple[Destination, ...], prev: bytes | None) -> bytes | str | None:
        """Where a message with the Destination List ``dests`` (this node's entries already
        removed) goes (§6.1.2): None to deliver it here, the next hop's Node-ID, or why it
        cannot be routed."""
        if not dests:
            return None
        first = dests[0]
        if self.client and prev is not None:
            # §4.2: a client routes nothing for others; only messages addressed to it (its
            # entries removed above) are for it
            return "a client does not forward messages"
        if isinstance(first, NodeDestination):
            target = first.node_id
            if target == _wildcard(self.config.node_id_length):
                return None  # §6.1.1: wildcard is consumed locally
            if target in self.links or target in self._queued or target in self._connecting:
                return target
            hop = self._client_hop() if self.client else self._next_hop(target)
            return hop if hop is not None else f"no route to Node-ID {target.hex()}"
        if isinstance(first, ResourceDestination):
            if len(first.resource_id) != self.config.node_id_length:
                return "Resource-ID of the wrong length"
            if self.client:  # a client is responsible for nothing (§4.2): its peer routes
                hop = self._client_hop()
                return hop if hop is not None else "the client has no link to a peer"
            hop = self._next_hop(first.resource_id, avoid=prev)
            if hop is None:
                if len(dests) == 1:
                    return None  # §10.3: this peer is responsible
                return "a resource must end the Destination List"
            return hop
        return "compressed/opaque destinations are not supported"

    def _next_hop(self, destination: bytes, avoid: bytes | None = None) -> bytes | None:
        """§10.3 through the Chord table, not back to ``avoid`` (the previous hop) while
        there is another choice; a node that is not yet in the ring sends through its
        admitting or bootstrap peer. The table's Resource-ID routing never picks a
        directly connected node that is not a ring peer (a client, a Joining Node): it is
        responsible for nothing (§4.2, §10.3)."""
        table = self.chord.table
        hop = table.next_hop(destination, avoid, resource=True)
        if hop is not None and hop not in self.links and hop not in self._queued:
            # the table lists a peer whose link is gone: forget it (§10.7.1) and retry
            table.peer_down(hop)
            hop = table.next_hop(destination, avoid, resource=True)
        if hop is None and not self.chord.joined:
            for candidate in (self.chord.admitting_peer, self._bootstrap):
                if candidate is not None and candidate in self.links:
                    return candidate
            return next(iter(sorted(self.links)), None)
        return hop

    def _transmit(self, peer: bytes, msg: Message, now: float) -> None:
        if peer not in self.links:
            queued = self._queued.get(peer)
            if queued is None:
                queued = self._queued[peer] = _Queued(0.0)
            if len(queued.messages) < MAX_QUEUED_PER_PEER:
                queued.messages.append(msg)
            queued.deadline = max(queued.deadline, now + LINK_WAIT)
            return
        self._count("sent")
        if self.wire_format:
            try:
                data = wire.encode_message(msg, self.config.node_id_length)
            except ReloadEncodeError as exc:
                log.error("cannot encode message: %s", exc)
                return
            self._actions.append(SendMessage(peer, data))
        else:
            self._actions.append(SendMessage(peer, b"", msg))

    def _unroutable(self, msg: Message, prev: bytes | None, reason: str, now: float) -> None:
        if _is_request(msg) and prev is not None:
            self._error(msg, prev, ErrorCode.NOT_FOUND, reason, now)
        else:
            self._drop(prev, reason)

    def _drop(self, peer: bytes | None, reason: str) -> None:
        self._count("dropped")
        log.info(
            "%s: dropped a message from %s: %s",
            self.node_id.hex()[:8],
            peer.hex()[:8] if peer else "self",
            reason,
        )
        self._actions.append(MessageDropped(peer, reason))

    def _count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1

    # --- local delivery -------------------------------------------------------------------

    def _verify(self, msg: Message, now: float) -> Identity | None:
        """§6.3.4: the destination verifies the signature over overlay ‖ transaction_id ‖
        MessageContents with the certificates of the security block."""
        block = msg.security_block
        data = message_signature_prefix(
            msg.header.overlay, msg.header.transaction_id, self._contents_bytes(msg.contents)
        )
        try:
            return self.security.verify(
                data, block.signature, [c.certificate for c in block.certificates], now
            )
        except SignatureError as exc:
            self._drop(None, f"bad signature: {exc}")
            return None
        except (ReloadEncodeError, ValueError) as exc:
            self._drop(None, f"cannot check signature: {exc}")
            return None

    def _deliver(self, msg: Message, prev: bytes | None, now: float) -> None:
        code = msg.contents.body.CODE
        if code % 2 == 0 or code == 0xFFFF:
            self._deliver_response(msg, prev, now)
            return
        transaction_id = msg.header.transaction_id
        if prev is not None:
            state, _ = self.responses.check(transaction_id, now)
            if state.name == "ANSWERED":
                cached = self._answers.get(transaction_id)
                if cached is not None:
                    # §6.2.1: the same answer again, but along this copy's reversed Via List:
                    # the retransmission may have taken another path because a node of the
                    # first one failed (the signature does not cover the forwarding header)
                    self._count("duplicates_answered")
                    via = (*msg.header.via_list, NodeDestination(prev))
                    header = replace(cached.header, destination_list=tuple(reversed(via)))
                    self._route(replace(cached, header=header), None, now)
                return
            if state.name == "IN_PROGRESS":
                self._count("duplicates_dropped")
                return
        identity = self._verify(msg, now)
        if identity is None:
            # a forged copy must not make the genuine request look like a duplicate
            self.responses.forget(transaction_id)
            return
        # The request checks of reload.transactions.check_request, on the decoded message:
        # configuration sequence (§6.3.2.1), critical options and extensions (§6.3.2.3,
        # §6.3.3), Error_Unknown_Kind listing every unknown Kind (§7.4.1.2). Ours verifies
        # the signature first (above) so that a forged copy never produces an answer.
        error = check_configuration_sequence(
            msg.header.configuration_sequence,
            self.config.configuration_sequence,
            is_config_update=code == MessageCode.CONFIG_UPDATE_REQ,
        ) or check_request_contents(msg, self._known_kinds)
        if error is not None:
            self._error(msg, prev, error[0], error[1], now)
            return
        self._count("requests_served")
        self._serve(msg, prev, identity, now)

    def _deliver_response(self, msg: Message, prev: bytes | None, now: float) -> None:
        transaction_id = msg.header.transaction_id
        request = self._requests.get(transaction_id)
        if request is None:
            self._count("stale_responses")
            return
        identity = self._verify(msg, now)
        if identity is None:
            return
        self.transactions.response_received(transaction_id)
        del self._requests[transaction_id]
        body = msg.contents.body
        hops = len(msg.header.via_list) + 1
        responder = identity.node_id or b""
        if request.purpose == "client" and request.handle is not None:
            if isinstance(body, ErrorResponse):
                done = RequestDone(
                    request.handle,
                    None,
                    _error_code(body.error_code),
                    body.error_info,
                    hops,
                    now - request.started,
                    responder,
                )
            else:
                done = RequestDone(
                    request.handle, body, None, b"", hops, now - request.started, responder
                )
            self._actions.append(done)
            return
        self._internal_response(request, body, responder, now)

    def _fail(self, transaction_id: int, code: ErrorCode, info: bytes, now: float) -> None:
        request = self._requests.pop(transaction_id, None)
        if request is None:
            return
        if request.purpose == "client" and request.handle is not None:
            self._actions.append(
                RequestDone(request.handle, None, code, info, 0, now - request.started)
            )
            return
        self._internal_response(request, ErrorResponse(int(code), info), b"", now)

    def _internal_response(
        self, request: _Request, body: MessageBody, responder: bytes, now: float
    ) -> None:
        """Answers to the requests the node sends for CHORD-RELOAD and replication."""
        failed = isinstance(body, ErrorResponse)
        if request.purpose == "attach":
            if failed or not isinstance(body, AttachAns) or not responder:
                self._run(self.chord.on_attach_failed(request.target, now), now)
                return
            if responder == self.node_id:
                self._run(self.chord.on_attach_failed(request.target, now), now)
                return
            if responder in self.links:
                self._run(self.chord.on_attached(responder, now), now)
                return
            self._connecting[responder] = now + LINK_WAIT
            address = body.candidates[0].addr_port if body.candidates else None
            self._actions.append(OpenLink(responder, address))
        elif request.purpose == "client-attach":
            self._client_attached(body, failed, responder, now)
        elif request.purpose == "join":
            admitting = request.target
            self._run(self.chord.on_join_answer(admitting, not failed, now), now)
        elif request.purpose == "replica" and request.transfer is not None:
            if failed or not isinstance(body, StoreAns):
                self._count("replica_store_failed")
                self._transfer_failed(request.transfer, request.target, request.attempts, now)
            else:
                self._transfer_done(request.transfer.resource, request.target)

    # --- hand-over and replica transfers (§10.5 step 6, §10.4, §10.7.3) -----------------

    def _transfer(self, req: StoreReq, peer: bytes, now: float, attempts: int = 0) -> None:
        """Send a hand-over or replica Store to ``peer`` and remember it until its StoreAns:
        until then this peer keeps the data whatever its range (§10.7.3 allows dropping
        only what the new holders have)."""
        self._unacked.setdefault(req.resource, set()).add(peer)
        self._resend.pop((req.resource, peer), None)
        self._new_request(
            req,
            (NodeDestination(peer),),
            "replica",
            now,
            target=peer,
            transfer=req,
            attempts=attempts,
        )

    def _transfer_done(self, resource: bytes, peer: bytes) -> None:
        waiting = self._unacked.get(resource)
        if waiting is not None:
            waiting.discard(peer)
            if not waiting:
                del self._unacked[resource]
        self._resend.pop((resource, peer), None)

    def _transfer_failed(self, req: StoreReq, peer: bytes, attempts: int, now: float) -> None:
        """A transfer got an error or no answer (a 64 KiB Store under delay, a receiver still
        joining that does not know us as a peer yet and answers Error_Forbidden): send it
        again later, with backoff. The data stays here meanwhile."""
        delay = min(TRANSFER_RETRY * (2**attempts), TRANSFER_RETRY_MAX)
        self._resend[(req.resource, peer)] = (now + delay, req, attempts + 1)

    def _resend_transfers(self, now: float) -> None:
        """Send the failed transfers that are due again. A receiver that left the resource's
        replica set in our view (§10.4: it left the ring, or nearer peers joined) is owed
        nothing any more; while we hold data outside our own replica range, the peer now
        responsible for it in our view gets it instead (§10.5 step 6), so that giving up
        never leaves the data with nobody."""
        for key, (due, req, attempts) in sorted(self._resend.items()):
            if due > now:
                continue
            resource, peer = key
            del self._resend[key]
            self._transfer_done(resource, peer)
            table = self.chord.table
            if not self.chord.joined:
                continue
            number = req.replica_number
            if not (table.is_peer(peer) and table.replica_number(resource, peer) is not None):
                chain = table.replica_set(resource)
                if table.in_replica_range(resource) or not chain or not table.is_peer(chain[0]):
                    continue  # ours to keep (we are a holder), or nobody to give it to
                peer, number = chain[0], 1
                attempts = 0
            kinds = [kd.kind for kd in req.kind_data]
            fresh = self.store_.export([resource], now, replica_number=number, kinds=kinds)
            if fresh:
                self._count("transfers_resent")
                self._transfer(fresh[0], peer, now, attempts)

    # --- serving requests -----------------------------------------------------------------

    def _serve(self, msg: Message, prev: bytes | None, who: Identity, now: float) -> None:
        body = msg.contents.body
        sender = who.node_id or b""
        if self.client and not isinstance(body, PingReq | ProbeReq):
            # §4.2: a client has no routing or storage responsibilities; it answers Ping and
            # Probe (its own liveness) and nothing a peer is asked for
            self._error(msg, prev, ErrorCode.FORBIDDEN, "a client is not a peer", now)
            return
        if isinstance(body, AttachReq):
            self._serve_attach(msg, prev, body, sender, now)
        elif isinstance(body, StoreReq):
            self._serve_store(msg, prev, body, who, now)
        elif isinstance(body, FetchReq):
            self._storage_answer(msg, prev, self.store_.fetch(body, now), now)
        elif isinstance(body, StatReq):
            self._storage_answer(msg, prev, self.store_.stat(body, now), now)
        elif isinstance(body, FindReq):
            self._storage_answer(msg, prev, self.store_.find(body, now), now)
        elif isinstance(body, JoinReq):
            self._serve_join(msg, prev, body, sender, now)
        elif isinstance(body, UpdateReq):
            self._serve_update(msg, prev, body, sender, now)
        elif isinstance(body, LeaveReq):
            self._serve_leave(msg, prev, body, sender, now)
        elif isinstance(body, RouteQueryReq):
            self._serve_route_query(msg, prev, body, sender, now)
        elif isinstance(body, PingReq):
            self._answer(msg, prev, PingAns(self.rng.getrandbits(64), int(now * 1000)), now)
        elif isinstance(body, ProbeReq):
            self._serve_probe(msg, prev, body, now)
        else:
            self._error(msg, prev, ErrorCode.FORBIDDEN, "method not supported", now)

    def _serve_attach(
        self, msg: Message, prev: bytes | None, body: AttachReq, sender: bytes, now: float
    ) -> None:
        """§6.5.1: answer with our candidate; the initiator opens the link (no ICE)."""
        if not sender or sender == self.node_id:
            self._error(msg, prev, ErrorCode.FORBIDDEN, "Attach from ourselves", now)
            return
        candidates: tuple[IceCandidate, ...] = ()
        if self.config.address is not None:
            candidates = (IceCandidate(self.config.address, self.config.link_type, b"1", 1, 1),)
        answer = AttachAns(b"", b"", b"passive", candidates, False)
        self._answer(msg, prev, answer, now)
        if sender in self.links:
            if body.send_update:
                # The initiator opens a link only when it has none to us (§6.5.1.6 without
                # ICE): an Attach from a Node-ID we think we are linked to, asking for our
                # Update, is a node that restarted before we noticed its crash. Our Update
                # below goes down the old link and is lost; repeat it on the new one.
                self._update_on_link[sender] = now + LINK_WAIT
        elif sender not in self._queued:
            self._queued[sender] = _Queued(now + LINK_WAIT)
        self._run(self.chord.on_attach_request(sender, body.send_update, now), now)

    def _serve_join(
        self, msg: Message, prev: bytes | None, body: JoinReq, sender: bytes, now: float
    ) -> None:
        if body.joining_peer_id != sender:
            self._error(msg, prev, ErrorCode.FORBIDDEN, "JoinReq for another Node-ID", now)
            return
        self._join_requests[sender] = (msg, prev or b"")
        self._run(self.chord.on_join(sender, self.store_.resource_ids(), now), now)
        self._join_requests.pop(sender, None)

    def _serve_update(
        self, msg: Message, prev: bytes | None, body: UpdateReq, sender: bytes, now: float
    ) -> None:
        try:
            update = _decode_update(body.data, self.config.node_id_length)
        except ReloadDecodeError as exc:
            self._error(msg, prev, ErrorCode.INVALID_MESSAGE, f"bad ChordUpdate: {exc}", now)
            return
        self._answer(msg, prev, UpdateAns(), now)
        if sender in self.links:
            self._run(self.chord.on_update(sender, update, now), now)

    def _serve_leave(
        self, msg: Message, prev: bytes | None, body: LeaveReq, sender: bytes, now: float
    ) -> None:
        if body.leaving_peer_id != sender:
            self._error(msg, prev, ErrorCode.FORBIDDEN, "LeaveReq for another Node-ID", now)
            return
        try:
            data = wire.decode_chord_leave_data(
                body.overlay_specific_data, self.config.node_id_length
            )
        except ReloadDecodeError as exc:
            self._error(msg, prev, ErrorCode.INVALID_MESSAGE, f"bad ChordLeaveData: {exc}", now)
            return
        self._answer(msg, prev, LeaveAns(), now)
        self.links.discard(sender)
        actions = self.chord.on_leave(sender, data, now)
        self._run(actions, now)
        self._actions.append(PeerDown(sender))

    def _serve_route_query(
        self, msg: Message, prev: bytes | None, body: RouteQueryReq, sender: bytes, now: float
    ) -> None:
        d = body.destination
        target = d.node_id if isinstance(d, NodeDestination) else None
        if isinstance(d, ResourceDestination):
            target = d.resource_id
        if target is None or len(target) != self.config.node_id_length:
            self._error(msg, prev, ErrorCode.INVALID_MESSAGE, "unsupported destination", now)
            return
        answer, actions = self.chord.on_route_query(sender, target, body.send_update, now)
        data = wire.encode_chord_route_query_ans(answer, self.config.node_id_length)
        self._answer(msg, prev, RouteQueryAns(data), now)
        self._run(actions, now)

    def _serve_probe(self, msg: Message, prev: bytes | None, body: ProbeReq, now: float) -> None:
        """§6.4.2.5: responsible_set is the fraction of the ring this peer is responsible
        for, scaled to 2^32; num_resources and uptime are counts."""
        infos = []
        for t in body.requested_info:
            if t == ProbeInformationType.RESPONSIBLE_SET:
                preds = self.chord.table.predecessors
                if self.client:
                    share = 0  # §4.2: a client is responsible for nothing
                elif preds:
                    modulus = 1 << (8 * self.config.node_id_length)
                    span = int.from_bytes(self.node_id, "big") - int.from_bytes(preds[0], "big")
                    share = (span % modulus) * (1 << 32) // modulus
                else:
                    share = (1 << 32) - 1
                infos.append(ProbeInformation(t, min(share, 0xFFFFFFFF)))
            elif t == ProbeInformationType.NUM_RESOURCES:
                infos.append(ProbeInformation(t, len(self.store_.resource_ids())))
            elif t == ProbeInformationType.UPTIME:
                infos.append(ProbeInformation(t, self.chord.uptime(now)))
        self._answer(msg, prev, ProbeAns(tuple(infos)), now)

    def _storage_answer(
        self,
        msg: Message,
        prev: bytes | None,
        result: FetchAns | StatAns | FindAns | StoreAns | StorageError,
        now: float,
    ) -> None:
        if isinstance(result, StorageError):
            info = result.info if result.info else result.reason.encode()[:0xFFFF]
            self._error(msg, prev, result.code, info, now)
        else:
            self._answer(msg, prev, result, now)

    def _serve_store(
        self, msg: Message, prev: bytes | None, body: StoreReq, who: Identity, now: float
    ) -> None:
        """§7.4.1: an original store is checked against the Kind's policy and limits with the
        verified signers of the request and of every value (§7.1), then replicated to our two
        successors (§10.4). A replica store is accepted from a ring peer of our Routing Table
        only: not from a client or Joining Node we have a link to (§4.2), since a replica is
        not checked against the access policy again."""
        if body.replica_number != 0:
            sender = who.node_id
            if sender is None or not self.chord.table.is_peer(sender):
                self._error(msg, prev, ErrorCode.FORBIDDEN, "replica store from a stranger", now)
                return
            result = self.store_.store(body, who, now)
            self._storage_answer(msg, prev, result, now)
            if isinstance(result, StoreAns) and self.chord.joined:
                self._pass_on(body, sender, now)
            return
        certs = [c.certificate for c in msg.security_block.certificates]
        signers: dict[int, Identity | None] = {}
        for kd in body.kind_data:
            for value in kd.values:
                data = self._value_input(body.resource, kd.kind, value.storage_time, value.value)
                try:
                    signers[id(value)] = self.security.verify(data, value.signature, certs, now)
                except SignatureError as exc:
                    self._count("bad_value_signature")
                    self._error(msg, prev, ErrorCode.FORBIDDEN, f"StoredData signature: {exc}", now)
                    return
        replicas = tuple(self.chord.table.successors[: self.config.replication - 1])
        result = self.store_.store(
            body,
            who,
            now,
            value_signer=lambda v: signers.get(id(v)),
            replicas=(self.node_id, *replicas),
        )
        self._storage_answer(msg, prev, result, now)
        if isinstance(result, StoreAns):
            kinds = [kd.kind for kd in body.kind_data]
            for number, peer in enumerate(replicas, start=1):
                for req in self.store_.export(
                    [body.resource], now, replica_number=number, kinds=kinds
                ):
                    self._transfer(req, peer, now)

    def _pass_on(self, body: StoreReq, sender: bytes, now: float) -> None:
        """A replica store we accepted after our join completed. Normally it comes from the
        responsible peer and we are one of its successors (§10.4): nothing to do. Otherwise
        it is a hand-over (§10.5 step 6) that came late (lost and sent again, or its sender
        got it late itself) and the peers that should have had it from us did not:

        * we are responsible: our replicas went out at the join without it, so our
          successors get it now (§10.4);
        * a peer nearer the Resource-ID joined meanwhile: we admitted it (or learnt of it)
          before we had the data, so we hand it over now, as step 6 would have.

        Never back to the sender (which has it), so views that briefly disagree do not send
        the data to and fro."""
        table = self.chord.table
        kinds = [kd.kind for kd in body.kind_data]
        targets: list[tuple[bytes, int]] = []
        if table.responsible_for(body.resource):
            successors = table.successors[: self.config.replication - 1]
            targets = [(peer, n) for n, peer in enumerate(successors, start=1)]
        else:
            chain = table.replica_set(body.resource)
            if chain[:1] == (sender,):
                return  # from the responsible peer: an ordinary replica
            if chain and chain[0] != self.node_id and table.is_peer(chain[0]):
                targets = [(chain[0], 1)]
        for peer, number in targets:
            if peer == sender:
                continue
            self._count("transfers_passed_on")
            for req in self.store_.export([body.resource], now, replica_number=number, kinds=kinds):
                self._transfer(req, peer, now)

    # --- CHORD-RELOAD actions ---------------------------------------------------------------

    def _run(self, actions: Iterable[chord.ChordAction], now: float) -> None:
        for action in actions:
            if isinstance(action, chord.SendAttach):
                dests: tuple[Destination, ...] = (ResourceDestination(action.resource_id),)
                if action.via is not None and action.via != self.node_id:
                    dests = (NodeDestination(action.via), *dests)  # §10.6: through the sender
                body = AttachReq(b"", b"", b"active", self._candidates(), action.send_update)
                self._new_request(body, dests, "attach", now, target=action.resource_id)
            elif isinstance(action, chord.SendUpdate):
                data = _encode_update(action.update, self.config.node_id_length)
                self._new_request(UpdateReq(data), (NodeDestination(action.to),), "update", now)
            elif isinstance(action, chord.SendJoin):
                self._new_request(
                    JoinReq(self.node_id),
                    (NodeDestination(action.to),),
                    "join",
                    now,
                    target=action.to,
                )
            elif isinstance(action, chord.AnswerJoin):
                pending = self._join_requests.get(action.to)
                if pending is not None:
                    request, prev = pending
                    if action.accepted:
                        self._answer(request, prev or None, JoinAns(), now)
                    else:
                        self._error(
                            request,
                            prev or None,
                            ErrorCode.FORBIDDEN,
                            "not between our predecessor and us",
                            now,
                        )
            elif isinstance(action, chord.HandOver):
                # §10.5 step 6: the new responsible peer gets the data as a replica store so it
                # takes our generation counters (reload.storage.DataStore.export)
                for req in self.store_.export(action.resource_ids, now, replica_number=1):
                    self._transfer(req, action.to, now)
            elif isinstance(action, chord.Replicate):
                mine = [
                    r for r in self.store_.resource_ids() if self.chord.table.responsible_for(r)
                ]
                for req in self.store_.export(mine, now, replica_number=action.replica_number):
                    self._transfer(req, action.to, now)
            elif isinstance(action, chord.SendLeave):
                data = wire.encode_chord_leave_data(action.data, self.config.node_id_length)
                self._new_request(
                    LeaveReq(self.node_id, data), (NodeDestination(action.to),), "leave", now
                )
            elif isinstance(action, chord.Rejoin):
                self._count("rejoins")
                if self.links:
                    self.chord.state = chord.JoinState.IDLE
                    self._run(self.chord.start_join(now), now)
            elif isinstance(action, chord.JoinCompleted):
                self.joined_at = now
                self._actions.append(Joined(action.admitting_peer))

    # --- clients (§4.2, §4.2.1) ------------------------------------------------------------

    def _client_hop(self) -> bytes | None:
        """A client sends everything through its attached peer; before it has one (or after
        it failed) through a bootstrap peer it has a link to."""
        if self.attached_peer is not None and self.attached_peer in self.links:
            return self.attached_peer
        for peer, _address in self._bootstraps:
            if peer in self.links:
                return peer
        return next(iter(sorted(self.links)), None)

    def _client_link_up(self, peer_id: bytes, now: float) -> None:
        self.links.add(peer_id)
        self._client_dialing.discard(peer_id)
        self._client_dial_failures = 0
        queued = self._queued.pop(peer_id, None)
        if peer_id in self._connecting:
            del self._connecting[peer_id]  # the link to the answerer of our Attach
            self._client_set_attached(peer_id, now)
        if queued is not None:
            for msg in queued.messages:
                self._transmit(peer_id, msg, now)
        if self.attached_peer is None:
            self._client_attach(now)

    def _client_link_down(self, peer_id: bytes, now: float) -> None:
        was = peer_id in self.links
        self.links.discard(peer_id)
        self._queued.pop(peer_id, None)
        opening = self._connecting.pop(peer_id, None) is not None
        dialing = peer_id in self._client_dialing
        self._client_dialing.discard(peer_id)
        if self._left:
            return
        if was:
            self._actions.append(PeerDown(peer_id))
        if peer_id == self.attached_peer:
            self.attached_peer = None
        if self.attached_peer is not None:
            return
        if dialing:
            self._client_dial_failures += 1
        if opening or (dialing and self._client_dial_failures >= len(self._bootstraps)):
            # the answerer of our Attach, or every bootstrap peer, could not be reached: try
            # again a little later rather than at once
            self._client_dial_failures = 0
            self._client_retry_at = now + CLIENT_RETRY
            return
        self._client_attach(now)

    def _client_attach(self, now: float) -> None:
        """§4.2.1 (first option): connect to the peer responsible for our Node-ID, so that
        messages for our Node-ID reach us through it. An Attach to our Node-ID as a
        Resource-ID goes through a peer we have a link to, which routes it to the
        responsible peer; we open a link to the answerer (no ICE, DESIGN.md §4). Without any
        link, one is opened to the next bootstrap peer first."""
        if self._left or self._client_attaching:
            return
        if self._client_hop() is None:
            if self._client_dialing or not self._bootstraps:
                return
            peer, address = self._bootstraps[self._client_dial_next % len(self._bootstraps)]
            self._client_dial_next += 1
            self._client_dialing.add(peer)
            self._actions.append(OpenLink(peer, address))
            return
        self._client_attaching = True
        self._client_retry_at = None
        body = AttachReq(b"", b"", b"active", self._candidates(), False)
        self._new_request(body, (ResourceDestination(self.node_id),), "client-attach", now)

    def _client_attached(
        self, body: MessageBody, failed: bool, responder: bytes, now: float
    ) -> None:
        self._client_attaching = False
        if failed or not isinstance(body, AttachAns) or not responder:
            self._client_retry_at = now + CLIENT_RETRY
            return
        if responder == self.node_id:
            self._client_retry_at = now + CLIENT_RETRY
            return
        address = body.candidates[0].addr_port if body.candidates else None
        if address is not None:
            self.add_bootstrap(responder, address)  # one more peer to fall back on
        if responder in self.links:
            self._client_set_attached(responder, now)
            return
        self._connecting[responder] = now + LINK_WAIT
        self._actions.append(OpenLink(responder, address))

    def _client_set_attached(self, peer: bytes, now: float) -> None:
        changed = peer != self.attached_peer
        self.attached_peer = peer
        self._client_retry_at = None
        self._client_refresh_at = now + self.config.chord_update_interval
        if self.joined_at is None:
            self.joined_at = now
        if changed:
            self._actions.append(Joined(peer))

    def _client_timer(self, now: float) -> None:
        if self._client_retry_at is not None and self._client_retry_at <= now:
            self._client_retry_at = None
            if self.attached_peer is None:
                self._client_attach(now)
        if self._client_refresh_at is not None and self._client_refresh_at <= now:
            # §4.2.1: the peer responsible for our Node-ID changes when peers join or leave
            # near it; clients get no Updates from us, so they ask again every
            # chord-update-interval (the answerer becomes the attached peer)
            self._client_refresh_at = now + self.config.chord_update_interval
            if self.attached_peer is not None:
                self._client_attach(now)

    def _candidates(self) -> tuple[IceCandidate, ...]:
        if self.config.address is None:
            return ()
        return (IceCandidate(self.config.address, self.config.link_type, b"1", 1, 1),)

    def _drop_foreign_data(self) -> None:
        """§10.7.3: data for which this peer is neither responsible nor one of the two
        replicas may be dropped (once the new holders have it: we wait a maintenance period
        after a change, and the table must know three predecessors)."""
        if not self.chord.joined:
            return
        table = self.chord.table
        view = table.predecessors
        if view != self._drop_view:
            # the ring near us changed since the last maintenance: the hand-overs and
            # replicas it caused may still be on their way; look again next period
            self._drop_view = view
            return
        foreign = [
            r
            for r in self.store_.resource_ids()
            if not table.in_replica_range(r) and not self._unacked.get(r)
        ]
        if foreign:
            self.store_.drop(foreign)

    # --- introspection ----------------------------------------------------------------------

    def holds(self, resource_id: bytes) -> bool:
        """Whether this node stores anything for ``resource_id``."""
        return resource_id in set(self.store_.resource_ids())


def _is_request(msg: Message) -> bool:
    """Requests have odd message codes; 0xFFFF (odd too) is the ErrorResponse (§6.3.3)."""
    code = msg.contents.body.CODE
    return code != MessageCode.ERROR and code % 2 == 1


def _error_code(code: int) -> ErrorCode:
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.INVALID_MESSAGE


def single_value(value: bytes) -> DataValue:
    """A SINGLE-model value (§7.2.1), for callers of :meth:`ReloadNode.store`."""
    return DataValue(True, value)


def resource_id(name: bytes) -> bytes:
    """CHORD-RELOAD Resource-ID of a Resource Name (§10.2)."""
    return chord_resource_id(name)
