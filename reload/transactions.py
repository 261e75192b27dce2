"""RELOAD end-to-end transactions (RFC 6940 §6.2.1) and error responses (§6.3.3.1), sans-IO.

Two halves of the same rule:

* :class:`TransactionManager` — the originator's side. A request is retransmitted with the same
  transaction ID every ``overlay-reliability-timer`` (3000 ms by default) until a response
  arrives, at most 5 transmissions in all; when the timer of the fifth fires the transaction
  fails with Error_Request_Timeout. Responses are matched by transaction ID.
* :class:`ResponseCache` — the destination's side. Retransmissions of a request received
  within the maximum request lifetime (15 s) get the same answer again without processing the
  request twice (the RFC asks for "semantically equivalent" answers; replaying ours is the
  simplest way to give one, and the only safe one for Store).

The error helpers return ``(error_code, error_info)`` pairs for an ErrorResponse
(``error_code(2) + error_info<0..2^16-1>``). The checks a node makes on a received message
return the decoded message or an :class:`ErrorReply` with the RFC's error:

* :func:`check_request` — at the destination: max-message-size (§6.6), version and TTL
  (§6.3.2), configuration sequence (§6.3.2.1), decoding (unknown Kinds, §7.4.1.2), the
  message signature (§6.3.4), critical options and extensions (§6.3.2.3, §6.3.3), and for a
  Store the StoredData signatures and the access control policy (§7.4.1.1, §7.3);
* :func:`check_forwarding` — on the path: size, version and the TTL rule of §6.3.2;
* :func:`build_error_response` turns the refusal into a signed ErrorResponse addressed back
  along the reversed Via List (§6.3.3.1).

Time is injected everywhere (seconds, any monotonic origin; certificate validity at a
``datetime``).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import struct
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Generic, TypeVar

from reload import config, wire
from reload.access import ResourceIdFunction, check_access, chord_resource_id
from reload.messages import (
    RELOAD_VERSION,
    ArrayEntry,
    CertificateType,
    DataModel,
    DictionaryEntry,
    ErrorResponse,
    FetchReq,
    FindReq,
    ForwardingHeader,
    ForwardingOptionFlag,
    GenericCertificate,
    Message,
    MessageCode,
    MessageContents,
    ReloadDecodeError,
    SecurityBlock,
    StatReq,
    StoreReq,
    UnknownKindError,
)

# ErrorCode is the message model's (§6.3.3.1); re-exported for callers of this module.
from reload.messages import ErrorCode as ErrorCode
from reload.security import (
    SignatureError,
    Signer,
    VerifiedSigner,
    Verifier,
    message_signature_prefix,
    stored_data_signature_prefix,
)

log = logging.getLogger(__name__)

#: §6.2.1 / §11.1 overlay-reliability-timer default.
OVERLAY_RELIABILITY_TIMER = 3.0
#: §6.2.1: "up to 4 times, for a total of 5 messages".
MAX_TRANSMISSIONS = 5
#: §6.2.1: maximum request lifetime.
MAX_REQUEST_LIFETIME = 15.0
#: Our bounds on pending state (hostile or overloaded overlays).
MAX_PENDING_TRANSACTIONS = 1024
MAX_CACHED_RESPONSES = 4096
#: §6.3.3.1: error_info<0..2^16-1>.
MAX_ERROR_INFO = 0xFFFF
#: §7.4.1.2: error_info of Error_Unknown_Kind is KindId unknown_kinds<0..2^8-1>.
MAX_UNKNOWN_KINDS = 0xFF // 4

C = TypeVar("C")


#: An ErrorResponse body before encoding: (error_code, error_info).
ErrorInfo = tuple[ErrorCode, bytes]


class TransactionError(ValueError):
    """Misuse of the transaction layer (duplicate transaction ID, too many pending)."""


# ------------------------------------------------------------------------ originator side


@dataclass(frozen=True, slots=True)
class Retransmit:
    """Send ``message`` again (same bytes, same transaction ID, §6.2.1)."""

    transaction_id: int
    message: bytes
    transmission: int  # 2..MAX_TRANSMISSIONS


@dataclass(frozen=True, slots=True)
class TransactionFailed(Generic[C]):
    """No response after the fifth transmission's timer: Error_Request_Timeout (§6.2.1)."""

    transaction_id: int
    context: C
    error: ErrorInfo


@dataclass
class _Pending(Generic[C]):
    message: bytes
    context: C
    transmissions: int
    deadline: float


class TransactionManager(Generic[C]):
    """Requests this node originated and is waiting for answers to (§6.2.1).

    ``start(transaction_id, message, now, context)`` registers a request the caller has just
    sent; ``handle_timer(now)`` returns :class:`Retransmit` and :class:`TransactionFailed`
    events; ``response_received(transaction_id)`` returns the caller's context for a matching
    response (and ends the transaction) or ``None`` for an unknown or duplicate response.
    """

    def __init__(
        self,
        *,
        reliability_timer: float = OVERLAY_RELIABILITY_TIMER,
        max_transmissions: int = MAX_TRANSMISSIONS,
        max_pending: int = MAX_PENDING_TRANSACTIONS,
    ) -> None:
        if max_transmissions < 1:
            raise ValueError("max_transmissions must be at least 1")
        self.reliability_timer = reliability_timer
        self.max_transmissions = max_transmissions
        self.max_pending = max_pending
        self._pending: dict[int, _Pending[C]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, transaction_id: object) -> bool:
        return transaction_id in self._pending

    def start(self, transaction_id: int, message: bytes, now: float, context: C) -> None:
        """Track a request that was just sent for the first time."""
        if transaction_id in self._pending:
            raise TransactionError(f"transaction {transaction_id:#018x} is already pending")
        if len(self._pending) >= self.max_pending:
            raise TransactionError(f"{self.max_pending} transactions already pending")
        self._pending[transaction_id] = _Pending(
            message=message,
            context=context,
            transmissions=1,
            deadline=now + self.reliability_timer,
        )

    def response_received(self, transaction_id: int) -> C | None:
        """End the transaction a response belongs to; ``None`` if no such transaction."""
        pending = self._pending.pop(transaction_id, None)
        return None if pending is None else pending.context

    def cancel(self, transaction_id: int) -> bool:
        return self._pending.pop(transaction_id, None) is not None

    def next_timer(self) -> float | None:
        return min((p.deadline for p in self._pending.values()), default=None)

    def handle_timer(self, now: float) -> list[Retransmit | TransactionFailed[C]]:
        events: list[Retransmit | TransactionFailed[C]] = []
        for transaction_id, pending in list(self._pending.items()):
            if now < pending.deadline:
                continue
            if pending.transmissions >= self.max_transmissions:
                del self._pending[transaction_id]
                events.append(TransactionFailed(transaction_id, pending.context, request_timeout()))
                continue
            pending.transmissions += 1
            pending.deadline = now + self.reliability_timer
            events.append(Retransmit(transaction_id, pending.message, pending.transmissions))
        return events


# ----------------------------------------------------------------------- destination side


class CacheState(IntEnum):
    """What :meth:`ResponseCache.check` says about an incoming request."""

    NEW = 0  # never seen (or forgotten): process it
    IN_PROGRESS = 1  # seen, answer not ready yet: drop this copy, the answer will come
    ANSWERED = 2  # answered: resend the cached answer


@dataclass
class _CacheEntry:
    seen: float
    response: bytes | None


class ResponseCache:
    """Answers to recent requests, replayed for their retransmissions (§6.2.1), bounded.

    Keys are transaction IDs. Entries live ``lifetime`` seconds (15 s, the maximum request
    lifetime) from the first copy of the request; at most ``max_entries`` are kept, the oldest
    forgotten first.
    """

    def __init__(
        self, *, lifetime: float = MAX_REQUEST_LIFETIME, max_entries: int = MAX_CACHED_RESPONSES
    ) -> None:
        self.lifetime = lifetime
        self.max_entries = max_entries
        self._entries: OrderedDict[int, _CacheEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, transaction_id: int, now: float) -> tuple[CacheState, bytes | None]:
        """Classify a request; a NEW one is recorded as in progress."""
        self.expire(now)
        entry = self._entries.get(transaction_id)
        if entry is None:
            while len(self._entries) >= self.max_entries:
                self._entries.popitem(last=False)
            self._entries[transaction_id] = _CacheEntry(seen=now, response=None)
            return CacheState.NEW, None
        if entry.response is None:
            return CacheState.IN_PROGRESS, None
        return CacheState.ANSWERED, entry.response

    def record(self, transaction_id: int, response: bytes, now: float) -> None:
        """Remember the answer sent for a request (no-op if the request was forgotten)."""
        entry = self._entries.get(transaction_id)
        if entry is not None and now < entry.seen + self.lifetime:
            entry.response = response

    def forget(self, transaction_id: int) -> None:
        self._entries.pop(transaction_id, None)

    def next_timer(self) -> float | None:
        first = next(iter(self._entries.values()), None)
        return None if first is None else first.seen + self.lifetime

    def expire(self, now: float) -> None:
        # Entries are in arrival order, so the oldest are first.
        while self._entries:
            transaction_id, entry = next(iter(self._entries.items()))
            if now < entry.seen + self.lifetime:
                break
            del self._entries[transaction_id]

    handle_timer = expire


# ------------------------------------------------------------------------ error responses


def _info(text: str) -> bytes:
    return text.encode()[:MAX_ERROR_INFO]


def request_timeout() -> ErrorInfo:
    """§6.2.1: no response after the fifth transmission."""
    return ErrorCode.REQUEST_TIMEOUT, _info("no response after 5 transmissions")


def check_ttl(ttl: int) -> ErrorInfo | None:
    """§6.3.2: a message whose TTL reaches zero is not forwarded: Error_TTL_Exceeded.

    ``ttl`` is the value after this node's decrement (a forwarding node decrements first,
    then checks); 0 or less is exceeded.
    """
    if ttl <= 0:
        return ErrorCode.TTL_EXCEEDED, _info("TTL reached zero")
    return None


def check_configuration_sequence(
    received: int, own: int, *, is_config_update: bool = False
) -> ErrorInfo | None:
    """§6.3.2.1: the request's configuration_sequence must equal ours.

    The rule itself (mod-65535 serial arithmetic "as in TCP", 65535 accepted on a
    ConfigUpdate and too old anywhere else) is :func:`reload.config.check_sequence`; this
    turns its verdict into an ErrorResponse body. An older sequence gets
    Error_Config_Too_Old (and the node MUST also send a ConfigUpdate), a newer one
    Error_Config_Too_New.
    """
    verdict = config.check_sequence(own & 0xFFFF, received & 0xFFFF, is_config_update)
    if verdict is None:
        return None
    if verdict == ErrorCode.CONFIG_TOO_OLD:
        return ErrorCode.CONFIG_TOO_OLD, _info(f"configuration sequence {received} < {own}")
    return ErrorCode.CONFIG_TOO_NEW, _info(f"configuration sequence {received} > {own}")


def message_too_large(size: int, max_message_size: int) -> ErrorInfo:
    """§6.6: a message larger than max-message-size; the link is closed afterwards."""
    return ErrorCode.MESSAGE_TOO_LARGE, _info(f"{size} bytes > max-message-size {max_message_size}")


def bad_signature(reason: str = "signature verification failed") -> ErrorInfo:
    """§6.3.4: a message whose signature does not verify is refused with Error_Forbidden."""
    return ErrorCode.FORBIDDEN, _info(reason)


def forbidden_store(reason: str = "access control policy forbids this store") -> ErrorInfo:
    """§7.4.1.1: a store that fails the Kind's access control policy: Error_Forbidden."""
    return ErrorCode.FORBIDDEN, _info(reason)


def unknown_kind(kind_ids: list[int]) -> ErrorInfo:
    """§7.4.1.2: error_info is ``KindId unknown_kinds<0..2^8-1>`` — every unknown Kind-ID.

    At most 63 Kind-IDs fit the 8-bit length; more are truncated (the requester learns the
    rest on its next attempt).
    """
    kinds = list(dict.fromkeys(kind_ids))[:MAX_UNKNOWN_KINDS]
    for kind in kinds:
        if not 0 <= kind <= 0xFFFFFFFF:
            raise ValueError(f"Kind-ID {kind} out of range")
    body = struct.pack(f"!B{len(kinds)}I", 4 * len(kinds), *kinds)
    return ErrorCode.UNKNOWN_KIND, body


def parse_unknown_kinds(error_info: bytes) -> list[int]:
    """Inverse of :func:`unknown_kind`; raises ValueError on a malformed list."""
    if not error_info or error_info[0] % 4 or len(error_info) != 1 + error_info[0]:
        raise ValueError("malformed unknown_kinds list")
    return list(struct.unpack(f"!{error_info[0] // 4}I", error_info[1:]))


# ------------------------------------------------------------- checks on a received message


def overlay_hash(overlay_name: str) -> int:
    """The forwarding header's ``overlay`` field (§6.3.2): the lower 32 bits of the SHA-1 hash
    of the overlay name (the last four bytes of the big-endian digest)."""
    return int.from_bytes(hashlib.sha1(overlay_name.encode()).digest()[-4:], "big")


@dataclass(frozen=True, slots=True)
class KindRules:
    """What the checks need of one Kind the overlay configuration declares (§11.1 kind-block):
    its data model (§7.2, for decoding) and access control policy (§7.3, for Store)."""

    data_model: DataModel
    access_control: str
    max_node_multiple: int | None = None


@dataclass(frozen=True)
class CheckParams:
    """The overlay parameters a received message is checked against (§6.3.2, §11.1).

    ``kinds`` are the Kinds this node knows: any other Kind-ID in a request is
    Error_Unknown_Kind (§7.4.1.2). ``resource_id_function`` is the overlay's hash for the
    access control policies (§7.3; CHORD-RELOAD's by default).
    """

    overlay: int
    configuration_sequence: int
    max_message_size: int = 5000
    node_id_length: int = 16
    initial_ttl: int = 100
    kinds: Mapping[int, KindRules] = field(default_factory=dict)
    resource_id_function: ResourceIdFunction = chord_resource_id

    def __post_init__(self) -> None:
        # §6.3.2.1: 65535 is the ConfigUpdate wildcard, never a configuration's own sequence.
        if not 0 <= self.configuration_sequence < config.SEQUENCE_WILDCARD:
            raise ValueError(f"configuration sequence {self.configuration_sequence} not 0-65534")

    @classmethod
    def from_configuration(cls, configuration: config.OverlayConfiguration) -> CheckParams:
        """The parameters of an overlay configuration; kinds whose data model is not one of
        §7.2's (an extension) are left out, so requests naming them are Error_Unknown_Kind."""
        kinds: dict[int, KindRules] = {}
        for kind in configuration.kinds:
            kind_id = kind.resolved_kind_id()
            if kind_id is None or kind.data_model not in DataModel.__members__:
                continue
            kinds[kind_id] = KindRules(
                DataModel(kind.data_model), kind.access_control, kind.max_node_multiple
            )
        return cls(
            overlay=overlay_hash(configuration.instance_name),
            configuration_sequence=configuration.sequence,
            max_message_size=configuration.max_message_size,
            node_id_length=configuration.node_id_length,
            initial_ttl=configuration.initial_ttl,
            kinds=kinds,
        )

    @property
    def data_models(self) -> dict[int, DataModel]:
        return {kind: rules.data_model for kind, rules in self.kinds.items()}


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A received message refused, and the ErrorResponse (§6.3.3.1) that answers it.

    ``header`` is the refused message's forwarding header when it could be read (what
    :func:`build_error_response` needs to address the answer); without it there is no one to
    answer and the message is only dropped. ``close_link`` is set for Error_Message_Too_Large
    (§6.6: send the error, then close the link). ``discard`` is set where the RFC advises
    dropping the message without an answer (§6.3.4: a signature that fails; §6.3.2.2: an
    unknown type in a select); the error is what a node that does answer sends.
    """

    code: ErrorCode
    info: bytes
    reason: str
    header: ForwardingHeader | None = None
    close_link: bool = False
    discard: bool = False


def _reply(
    error: ErrorInfo, header: ForwardingHeader | None, reason: str = "", **flags: bool
) -> ErrorReply:
    code, info = error
    return ErrorReply(code, info, reason or info.decode(errors="replace"), header, **flags)


def _check_header(
    raw: bytes, params: CheckParams, *, forwarding: bool
) -> tuple[ForwardingHeader, int] | ErrorReply:
    """The checks a node makes on the forwarding header alone, in the order of §6.6 and
    §6.3.2: size, header, version, TTL. Returns the header and where the contents start."""
    header: ForwardingHeader | None
    start, header_error = 0, ""
    try:
        header, start = wire.decode_forwarding_header(raw, params.node_id_length)
    except ReloadDecodeError as exc:
        header, header_error = None, str(exc)
    if len(raw) > params.max_message_size:
        # §6.6: Error_Message_Too_Large, then close the link; the header (if it is one) says
        # whom to answer.
        return _reply(message_too_large(len(raw), params.max_message_size), header, close_link=True)
    if header is None:
        # Not a forwarding header: nobody to answer (§6.3.2.2: discard).
        return _reply((ErrorCode.INVALID_MESSAGE, _info(header_error)), None, discard=True)
    if header.version != RELOAD_VERSION:
        # §6.3.2: "Nodes MUST reject messages with other versions"; no code is named, and
        # Error_Invalid_Message is the one for "invalid, but it does not fit the others".
        text = f"version {header.version:#04x} is not {RELOAD_VERSION:#04x}"
        return _reply((ErrorCode.INVALID_MESSAGE, _info(text)), header)
    if header.ttl > params.initial_ttl:
        # §6.3.2: a TTL above initial-ttl MUST be discarded with Error_TTL_Exceeded.
        text = f"TTL {header.ttl} > initial-ttl {params.initial_ttl}"
        return _reply((ErrorCode.TTL_EXCEEDED, _info(text)), header)
    if forwarding:
        error = check_ttl(header.ttl)
        if error is not None:
            return _reply(error, header)
    return header, start


def check_forwarding(raw: bytes, params: CheckParams) -> ForwardingHeader | ErrorReply:
    """Check a message this node would forward (it is not on the Destination List's head).

    §6.3.2: size (Error_Message_Too_Large, §6.6), forwarding header, version, and the TTL: a
    message that arrives with TTL 0 and is not for this node, or with a TTL above
    initial-ttl, is not propagated and gets Error_TTL_Exceeded. Intermediate nodes neither
    decode the contents nor verify signatures (§6.3.4).
    """
    checked = _check_header(raw, params, forwarding=True)
    return checked if isinstance(checked, ErrorReply) else checked[0]


def check_request(
    raw: bytes,
    params: CheckParams,
    verifier: Verifier,
    *,
    now: datetime.datetime | None = None,
) -> Message | ErrorReply:
    """Check a whole (reassembled) message addressed to this node; the decoded message, or
    the error to answer with. The checks run in this order:

    1. size (Error_Message_Too_Large, close the link, §6.6); forwarding header readable;
       version 0x0a (§6.3.2); TTL not above initial-ttl (Error_TTL_Exceeded, §6.3.2; a TTL
       of 0 is fine at the destination, see :func:`check_forwarding`);
    2. for a request, configuration_sequence equal to ours (Error_Config_Too_Old/New,
       §6.3.2.1; 65535 on a ConfigUpdate passes);
    3. decode (Error_Unknown_Kind with the Kind-ID for a Store/Fetch/Stat naming a Kind we do
       not know, §7.4.1.2 — the data model is needed to decode, so this comes before the
       signature; Error_Invalid_Message for anything else malformed);
    4. the message signature over ``overlay ‖ transaction_id ‖ MessageContents ‖
       SignerIdentity`` by ``verifier`` at ``now`` (Error_Forbidden, §6.3.4);
    5. critical forwarding options (Error_Unsupported_Forwarding_Option, §6.3.2.3) and
       critical message extensions (Error_Unknown_Extension, §6.3.3): we support none;
    6. Find naming an unknown Kind: Error_Unknown_Kind listing all of them (§7.4.1.2);
    7. Store (§7.4.1.1): each StoredData signature (§7.1) and the Kind's access control
       policy for its signer and, for an original store, the StoreReq's signer (§7.3):
       Error_Forbidden.
    """
    checked = _check_header(raw, params, forwarding=False)
    if isinstance(checked, ErrorReply):
        return checked
    header, start = checked
    code = int.from_bytes(raw[start : start + 2], "big")  # MessageContents.message_code
    is_request = code != MessageCode.ERROR and code % 2 == 1
    if is_request:
        error = check_configuration_sequence(
            header.configuration_sequence,
            params.configuration_sequence,
            is_config_update=code == MessageCode.CONFIG_UPDATE_REQ,
        )
        if error is not None:
            return _reply(error, header)
    try:
        message = wire.decode_message(raw, params.node_id_length, params.data_models)
    except UnknownKindError as exc:
        # §7.4.1.2: the error lists every unknown Kind, not only the first the decoder met
        unknown = unknown_kinds_in(raw[start:], params.kinds) or list(exc.kinds)
        return _reply(unknown_kind(unknown), header, str(exc))
    except ReloadDecodeError as exc:
        return _reply((ErrorCode.INVALID_MESSAGE, _info(str(exc))), header, discard=True)
    block = message.security_block
    bucket = [c.certificate for c in block.certificates if c.type == CertificateType.X509]
    # §6.3.4: the signature covers the MessageContents as received: the bytes between the
    # forwarding header and the security block.
    contents = raw[start : len(raw) - len(wire.encode_security_block(block))]
    signed = message_signature_prefix(header.overlay, header.transaction_id, contents)
    try:
        signer = verifier.verify(signed, block.signature, bucket, now=now)
    except SignatureError as exc:
        return _reply(bad_signature(f"message signature: {exc}"), header, discard=True)
    if not is_request:
        return message
    return _check_semantics(message, signer, params, verifier, bucket, now) or message


def check_request_contents(message: Message, known_kinds: Collection[int]) -> ErrorInfo | None:
    """Steps 5 and 6 of :func:`check_request` on a decoded request whose signature verified:
    the one place these rules live, also used by :class:`reload.node.ReloadNode` (which
    decodes and verifies with its own security context).

    * a forwarding option critical at the destination (Error_Unsupported_Forwarding_Option,
      §6.3.2.3) or a critical message extension (Error_Unknown_Extension, §6.3.3): we support none;
    * a Store, Fetch, Stat or Find naming Kinds not in ``known_kinds``: Error_Unknown_Kind
      listing all of them (§7.4.1.2, §7.4.2, §7.4.3, §7.4.4) — a Store or Fetch object built
      in memory (the simulation) reaches this point although the decoder would have refused
      it.
    """
    header, contents = message.header, message.contents
    for option in header.options:
        if option.flags & ForwardingOptionFlag.DESTINATION_CRITICAL:
            # §6.3.2.3: no forwarding option is defined, so one that is critical at the
            # destination is unsupported (FORWARD_CRITICAL concerns the nodes that forward)
            text = f"critical forwarding option type {option.type}"
            return ErrorCode.UNSUPPORTED_FORWARDING_OPTION, _info(text)
    for extension in contents.extensions:
        if extension.critical:
            # §6.3.3: a critical extension the recipient does not understand.
            text = f"critical extension type {extension.type}"
            return ErrorCode.UNKNOWN_EXTENSION, _info(text)
    body = contents.body
    named: list[int] = []
    if isinstance(body, FindReq):
        named = list(body.kinds)
    elif isinstance(body, StoreReq):
        named = [kind_data.kind for kind_data in body.kind_data]
    elif isinstance(body, FetchReq | StatReq):
        named = [specifier.kind for specifier in body.specifiers]
    unknown = [kind for kind in named if kind not in known_kinds]
    if unknown:
        return unknown_kind(unknown)
    return None


def request_kind_ids(contents: bytes) -> list[int]:
    """The Kind-IDs a StoreReq, FetchReq or StatReq names, in order, read from the
    MessageContents bytes (§6.3.3) without the Kinds' data models: what a node needs to
    answer Error_Unknown_Kind with every unknown Kind (§7.4.1.2) when the decoder stopped at
    the first one it could not parse. Other messages name none. ValueError when malformed.

    StoreReq (§7.4.1.1): resource<0..255>, replica_number, StoreKindData
    kind_data<0..2^32-1>, each kind(4) generation_counter(8) values<0..2^32-1>.
    FetchReq/StatReq (§7.4.2.1, §7.4.3.1): resource<0..255>, StoredDataSpecifier
    specifiers<0..2^16-1>, each kind(4) generation(8) length(2) and that many bytes.
    """
    data = memoryview(contents)
    if len(data) < 6:
        raise ValueError("MessageContents too short")
    code = int.from_bytes(data[0:2], "big")
    length = int.from_bytes(data[2:6], "big")
    body = data[6 : 6 + length]
    if len(body) != length:
        raise ValueError("message_body runs past the contents")
    if code not in (MessageCode.STORE_REQ, MessageCode.FETCH_REQ, MessageCode.STAT_REQ):
        return []

    def take(at: int, size: int) -> int:
        if at + size > len(body):
            raise ValueError("truncated message body")
        return int.from_bytes(body[at : at + size], "big")

    at = 1 + take(0, 1)  # resource<0..255>
    kinds: list[int] = []
    if code == MessageCode.STORE_REQ:
        at += 1  # replica_number
        end = at + 4 + take(at, 4)
        at += 4
        while at < end:
            kinds.append(take(at, 4))
            at += 12
            at += 4 + take(at, 4)  # values<0..2^32-1>
    else:
        end = at + 2 + take(at, 2)
        at += 2
        while at < end:
            kinds.append(take(at, 4))
            at += 12
            at += 2 + take(at, 2)  # the model_specifier's length
    if at != end or end > len(body):
        raise ValueError("kind list does not fill its vector")
    return kinds


def unknown_kinds_in(contents: bytes, known_kinds: Collection[int]) -> list[int]:
    """The Kind-IDs of :func:`request_kind_ids` not in ``known_kinds``; empty when the
    contents cannot be read that way."""
    try:
        kinds = request_kind_ids(contents)
    except ValueError:
        return []
    return [kind for kind in dict.fromkeys(kinds) if kind not in known_kinds]


def _check_semantics(
    message: Message,
    signer: VerifiedSigner,
    params: CheckParams,
    verifier: Verifier,
    bucket: Sequence[bytes],
    now: datetime.datetime | None,
) -> ErrorReply | None:
    """Steps 5-7 of :func:`check_request`, on a decoded request whose signature verified."""
    header, body = message.header, message.contents.body
    error = check_request_contents(message, params.kinds)
    if error is not None:
        return _reply(error, header)
    if isinstance(body, StoreReq):
        return _check_store(body, header, signer, params, verifier, bucket, now)
    return None


def _check_store(
    body: StoreReq,
    header: ForwardingHeader,
    signer: VerifiedSigner,
    params: CheckParams,
    verifier: Verifier,
    bucket: Sequence[bytes],
    now: datetime.datetime | None,
) -> ErrorReply | None:
    """§7.4.1.1: every StoredData signature is valid (§7.1), and its signer — and, for an
    original store (replica_number 0), the StoreReq's signer — may write this Kind at this
    Resource-ID under the Kind's access control policy (§7.3). Else Error_Forbidden."""
    for kind_data in body.kind_data:
        rules = params.kinds.get(kind_data.kind)
        if rules is None:  # the decoder knew its data model from elsewhere
            return _reply(unknown_kind([kind_data.kind]), header)
        for stored in kind_data.values:
            value = stored.value
            # §7.4.2.1: an array index is set to zero before the signature is computed.
            signed_value = ArrayEntry(0, value.value) if isinstance(value, ArrayEntry) else value
            signed = stored_data_signature_prefix(
                body.resource,
                kind_data.kind,
                stored.storage_time,
                wire.encode_stored_data_value(signed_value),
            )
            try:
                value_signer = verifier.verify(signed, stored.signature, bucket, now=now)
            except SignatureError as exc:
                return _reply(forbidden_store(f"StoredData signature: {exc}"), header)
            key = value.key if isinstance(value, DictionaryEntry) else None
            signers = [value_signer] if body.replica_number else [value_signer, signer]
            for who in signers:
                decision = check_access(
                    rules.access_control,
                    body.resource,
                    who,
                    resource_id_function=params.resource_id_function,
                    dictionary_key=key,
                    max_node_multiple=rules.max_node_multiple,
                )
                if not decision:
                    return _reply(forbidden_store(decision.reason), header)
    return None


def build_error_response(
    request: Message | ForwardingHeader,
    code: ErrorCode | int,
    info: bytes,
    signer: Signer,
    *,
    ttl: int = 100,
    configuration_sequence: int | None = None,
    node_id_length: int = 16,
) -> bytes:
    """A signed ErrorResponse (§6.3.3.1) answering ``request`` (the message, or only its
    forwarding header when that is all that could be read), on the wire.

    The answer keeps the transaction ID and overlay; its Destination List is the request's
    Via List reversed (§6.3.3.1, §6.2.2: responses retrace the request's path) and its Via
    List is empty. ``configuration_sequence`` is ours (default: the request's); ``ttl`` the
    overlay's initial-ttl. The signature is ``signer``'s over ``overlay ‖ transaction_id ‖
    MessageContents ‖ SignerIdentity`` (§6.3.4), its certificate in the bucket.
    """
    header = request.header if isinstance(request, Message) else request
    if len(info) > MAX_ERROR_INFO:
        raise ValueError(f"error_info of {len(info)} bytes > {MAX_ERROR_INFO}")
    answer_header = ForwardingHeader(
        overlay=header.overlay,
        configuration_sequence=(
            header.configuration_sequence
            if configuration_sequence is None
            else configuration_sequence
        ),
        ttl=ttl,
        transaction_id=header.transaction_id,
        destination_list=tuple(reversed(header.via_list)),
    )
    contents = MessageContents(ErrorResponse(int(code), info))
    signed = message_signature_prefix(
        header.overlay, header.transaction_id, wire.encode_contents(contents, node_id_length)
    )
    block = SecurityBlock(
        tuple(GenericCertificate(CertificateType.X509, der) for der in signer.certificates),
        signer.sign(signed),
    )
    return wire.encode_message(Message(answer_header, contents, block), node_id_length)
