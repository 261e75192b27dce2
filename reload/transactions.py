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
(``error_code(2) + error_info<0..2^16-1>``); the node encodes and signs them with
``reload.wire``. Time is injected everywhere (seconds, any monotonic origin).
"""

from __future__ import annotations

import logging
import struct
from collections import OrderedDict
from dataclasses import dataclass
from enum import IntEnum
from typing import Generic, TypeVar

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


class ErrorCode(IntEnum):
    """RELOAD error codes (§6.3.3.1, registry §14.9)."""

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

    Comparison is modulo 2^16 "as in TCP"; 65535 on a ConfigUpdate is always accepted. An
    older sequence gets Error_Config_Too_Old (and the node MUST also send a ConfigUpdate),
    a newer one Error_Config_Too_New.
    """
    received &= 0xFFFF
    own &= 0xFFFF
    if received == own or (received == 0xFFFF and is_config_update):
        return None
    if (received - own) & 0xFFFF >= 0x8000:
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
