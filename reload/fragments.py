"""RELOAD fragmentation and reassembly (RFC 6940 §6.7).

Any node on the path may cut a message into fragments that fit the next overlay link; only
the final destination puts them back together. Every fragment carries a full copy of the
forwarding header (fixed part, Via List, Destination List, forwarding options), with the
``fragment`` field (bit 31 always set, bit 30 = last fragment, low 24 bits = offset of this
piece in the data after the forwarding header) and ``length`` (the size of *this* fragment).

This module touches only the 38-byte fixed part of the forwarding header (§6.3.2), with
``struct``, the documented fast path: the fields it needs sit at fixed offsets, and a
forwarding node refragmenting a message must not pay for a full decode. ``reload.wire`` is
the normative definition of the header; the offsets below are the same fields, and the
property test ``test_fragment_fast_path_equals_the_normative_codec``
(tests/test_reload_links.py) proves that what this module reads and rewrites agrees with
``reload.wire.decode_forwarding_header`` on every header it builds.

Reassembly is hostile-input code: buffers are bounded per message (``max_message_size``), in
number of messages in progress and in total bytes; incomplete messages expire after the
maximum request lifetime (15 s, §6.7); a fragment that contradicts bytes already received
(overlap with different content) discards the whole message. Each fragment costs a bisection
over the pieces held (only those it can overlap are compared) and a merge into the list of
received spans; the message is assembled once, when the spans cover it.
"""

from __future__ import annotations

import logging
import struct
from bisect import bisect_left, bisect_right, insort
from collections import OrderedDict
from dataclasses import dataclass, field

# relo_token and the unfragmented fragment field (§6.3.2) are the message model's.
from reload.messages import FORWARDING_HEADER_SIZE
from reload.messages import RELO_TOKEN as RELO_TOKEN
from reload.messages import UNFRAGMENTED as UNFRAGMENTED

log = logging.getLogger(__name__)

#: §6.3.2: size of the fixed part of the forwarding header (this module's name for it).
FIXED_HEADER_SIZE = FORWARDING_HEADER_SIZE
#: §6.7: the fragment field's high bit (always set), last-fragment bit and offset.
FRAGMENT_HIGH_BIT = 0x80000000
LAST_FRAGMENT_BIT = 0x40000000
OFFSET_MASK = 0x00FFFFFF
#: §6.7: fragments are at most PMTU − 32 bytes, leaving room for the Via List to grow.
VIA_LIST_ALLOWANCE = 32
#: §6.7: each fragment MUST carry at least 256 bytes of the message body.
MIN_FRAGMENT_BODY = 256
#: §6.7, §6.2.1: incomplete messages are dropped after the maximum request lifetime.
REASSEMBLY_TIMEOUT = 15.0
#: Overlay default max-message-size (§11.1), bounding one reassembled message.
DEFAULT_MAX_MESSAGE_SIZE = 5000

# §6.3.2 fixed part: relo_token(4) overlay(4) configuration_sequence(2) version(1) ttl(1)
# fragment(4) length(4) transaction_id(8) max_response_length(4) via_list_length(2)
# destination_list_length(2) options_length(2).
_FIXED = struct.Struct("!IIHBBIIQIHHH")
_FRAGMENT_AT = 12  # byte offset of the fragment field
_FRAGMENT_AND_LENGTH = struct.Struct("!II")


class FragmentError(ValueError):
    """A message or fragment whose forwarding header cannot be used for (re)fragmentation."""


@dataclass(frozen=True, slots=True)
class FragmentInfo:
    """What fragmentation needs from a forwarding header (§6.3.2)."""

    transaction_id: int
    is_last: bool
    offset: int
    length: int
    header_length: int

    @property
    def is_whole(self) -> bool:
        """An unfragmented message: the only, hence last, fragment at offset 0 (§6.7)."""
        return self.is_last and self.offset == 0


def parse_fragment_info(message: bytes) -> FragmentInfo:
    """Read the fragmentation-relevant fields of a message's forwarding header.

    Raises :class:`FragmentError` unless the buffer starts with a plausible header whose
    ``length`` equals the buffer's size and whose lists fit inside it.
    """
    if len(message) < FIXED_HEADER_SIZE:
        raise FragmentError(f"{len(message)} bytes is shorter than the forwarding header")
    (token, _overlay, _seq, _version, _ttl, fragment, length, transaction_id, _mrl, via_len,
     dest_len, opt_len) = _FIXED.unpack_from(message)  # fmt: skip
    if token != RELO_TOKEN:
        raise FragmentError(f"relo_token {token:#010x} is not RELO")
    if not fragment & FRAGMENT_HIGH_BIT:
        # §6.7: messages with the high bit clear SHOULD be discarded, never reassembled.
        raise FragmentError("fragment field high bit is clear")
    if length != len(message):
        raise FragmentError(f"length field {length} != {len(message)} bytes received")
    header_length = FIXED_HEADER_SIZE + via_len + dest_len + opt_len
    if header_length > length:
        raise FragmentError("via/destination/options lists overrun the message")
    return FragmentInfo(
        transaction_id=transaction_id,
        is_last=bool(fragment & LAST_FRAGMENT_BIT),
        offset=fragment & OFFSET_MASK,
        length=length,
        header_length=header_length,
    )


def _with_fragment(header: bytes, fragment: int, length: int) -> bytes:
    out = bytearray(header)
    _FRAGMENT_AND_LENGTH.pack_into(out, _FRAGMENT_AT, fragment, length)
    return bytes(out)


def fragment(message: bytes, path_mtu: int) -> list[bytes]:
    """Split ``message`` (or an already fragmented piece) for a link with ``path_mtu`` (§6.7).

    Returns ``[message]`` unchanged when it already fits in PMTU − 32 bytes, or when the
    forwarding header leaves room for less than 256 bytes of body per fragment (§6.7: then
    RELOAD does not fragment and IP fragmentation happens instead). Otherwise the body is cut
    into equal-sized pieces, each with a copy of the full forwarding header; offsets are
    relative to the original message, so refragmenting a fragment works the same way.
    """
    info = parse_fragment_info(message)
    limit = path_mtu - VIA_LIST_ALLOWANCE
    if len(message) <= limit:
        return [message]
    room = limit - info.header_length
    if room < MIN_FRAGMENT_BODY:
        return [message]
    header = message[: info.header_length]
    body = message[info.header_length :]
    count = -(-len(body) // room)
    size = -(-len(body) // count)  # equal-sized pieces, §6.7 "SHOULD be split into equal..."
    if info.offset + len(body) > OFFSET_MASK + 1:
        raise FragmentError("message body exceeds the 24-bit fragment offset space")
    pieces: list[bytes] = []
    for start in range(0, len(body), size):
        chunk = body[start : start + size]
        last = info.is_last and start + size >= len(body)
        value = FRAGMENT_HIGH_BIT | (LAST_FRAGMENT_BIT if last else 0) | (info.offset + start)
        pieces.append(_with_fragment(header, value, info.header_length + len(chunk)) + chunk)
    return pieces


@dataclass
class _Partial:
    header: bytes
    first_seen: float
    pieces: dict[int, bytes] = field(default_factory=dict)
    total: int | None = None  # body size, known once the last fragment arrived
    stored: int = 0
    #: The pieces' offsets in order, and the longest piece: the pieces a new one can overlap
    #: are found by bisection instead of comparing it with every piece held.
    starts: list[int] = field(default_factory=list)
    longest: int = 0
    #: The body bytes received, as sorted disjoint [start, end) spans (adjacent ones merged):
    #: the message is complete when one span covers [0, total).
    spans: list[tuple[int, int]] = field(default_factory=list)


def _add_span(spans: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """``spans`` with [start, end) added, overlapping and adjacent spans merged."""
    if start >= end:
        return spans
    out: list[tuple[int, int]] = []
    placed = False
    for lo, hi in spans:
        if hi < start:
            out.append((lo, hi))
        elif end < lo:
            if not placed:
                out.append((start, end))
                placed = True
            out.append((lo, hi))
        else:
            start, end = min(lo, start), max(hi, end)
    if not placed:
        out.append((start, end))
    return out


class Reassembler:
    """Holding buffers for fragmented messages at their destination (§6.7), sans-IO.

    ``receive(message, now)`` returns the whole message once every byte of its body has
    arrived (an unfragmented message comes straight back) and ``None`` meanwhile. Fragments
    are keyed by transaction ID (§6.3.2: "used in reassembly"). ``handle_timer(now)`` drops
    messages older than ``timeout``.
    """

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_pending: int = 64,
        max_buffered_bytes: int = 1 << 20,
        timeout: float = REASSEMBLY_TIMEOUT,
    ) -> None:
        self.max_message_size = max_message_size
        self.max_pending = max_pending
        self.max_buffered_bytes = max_buffered_bytes
        self.timeout = timeout
        self._partials: dict[int, _Partial] = {}
        # Recently completed transaction IDs, so late duplicate fragments do not start a
        # new holding buffer (bounded, forgotten after ``timeout``).
        self._completed: OrderedDict[int, float] = OrderedDict()
        self._buffered = 0
        self.dropped = 0

    @property
    def pending(self) -> int:
        return len(self._partials)

    @property
    def buffered_bytes(self) -> int:
        return self._buffered

    def receive(self, message: bytes, now: float) -> bytes | None:
        """Feed one message or fragment; return the reassembled message when complete.

        Raises :class:`FragmentError` for a header unusable for reassembly; a fragment that
        breaks a limit or contradicts earlier ones is dropped (logged) and ``None`` returned.
        """
        info = parse_fragment_info(message)
        if info.is_whole:
            return message
        self.handle_timer(now)
        if info.transaction_id in self._completed:
            log.debug("reassembly: late fragment of completed %#018x", info.transaction_id)
            return None
        body = message[info.header_length :]
        end = info.offset + len(body)
        if end > self.max_message_size:
            self._drop(info.transaction_id, f"fragment ends at {end} > max-message-size")
            return None
        partial = self._partials.get(info.transaction_id)
        if partial is None:
            if len(self._partials) >= self.max_pending:
                self.dropped += 1
                log.info("reassembly: %d messages pending, dropping fragment", self.max_pending)
                return None
            partial = _Partial(header=message[: info.header_length], first_seen=now)
            self._partials[info.transaction_id] = partial
        if info.is_last:
            if partial.total is not None and partial.total != end:
                self._drop(info.transaction_id, "two different last fragments")
                return None
            partial.total = end
        if partial.total is not None and end > partial.total:
            self._drop(info.transaction_id, "fragment beyond the last fragment")
            return None
        if not self._store(partial, info.offset, body):
            self._drop(info.transaction_id, "overlapping fragment with different content")
            return None
        if self._buffered > self.max_buffered_bytes:
            self._drop(info.transaction_id, "reassembly buffers full")
            return None
        if info.offset == 0:
            partial.header = message[: info.header_length]
        return self._complete(info.transaction_id, partial)

    def _store(self, partial: _Partial, offset: int, body: bytes) -> bool:
        """Add a piece; False if it contradicts bytes already held. Duplicates are no-ops."""
        end = offset + len(body)
        # a piece overlapping [offset, end) starts before end and after offset - longest
        first = bisect_right(partial.starts, offset - partial.longest)
        for start in partial.starts[first : bisect_left(partial.starts, end)]:
            piece = partial.pieces[start]
            lo, hi = max(start, offset), min(start + len(piece), end)
            if lo < hi and piece[lo - start : hi - start] != body[lo - offset : hi - offset]:
                return False
        existing = partial.pieces.get(offset)
        if existing is not None and len(existing) >= len(body):
            return True
        if existing is not None:
            partial.stored -= len(existing)
            self._buffered -= len(existing)
        else:
            insort(partial.starts, offset)
        partial.pieces[offset] = body
        partial.longest = max(partial.longest, len(body))
        partial.spans = _add_span(partial.spans, offset, end)
        partial.stored += len(body)
        self._buffered += len(body)
        return True

    def _complete(self, transaction_id: int, partial: _Partial) -> bytes | None:
        if partial.total is None:
            return None
        if partial.total and not (
            partial.spans and partial.spans[0][0] == 0 and partial.spans[0][1] >= partial.total
        ):
            return None  # a hole in [0, total): wait for more fragments
        out = bytearray(partial.total)
        for start, piece in partial.pieces.items():
            out[start : start + len(piece)] = piece
        self._forget(transaction_id)
        self._completed[transaction_id] = partial.first_seen
        while len(self._completed) > 4 * self.max_pending:
            self._completed.popitem(last=False)
        header = partial.header
        return _with_fragment(header, UNFRAGMENTED, len(header) + len(out)) + bytes(out)

    def _forget(self, transaction_id: int) -> None:
        partial = self._partials.pop(transaction_id, None)
        if partial is not None:
            self._buffered -= partial.stored

    def _drop(self, transaction_id: int, reason: str) -> None:
        self.dropped += 1
        log.info("reassembly: dropping transaction %#018x: %s", transaction_id, reason)
        self._forget(transaction_id)

    def next_timer(self) -> float | None:
        if not self._partials:
            return None
        return min(p.first_seen for p in self._partials.values()) + self.timeout

    def handle_timer(self, now: float) -> None:
        """Drop messages still incomplete ``timeout`` seconds after their first fragment."""
        expired = [t for t, p in self._partials.items() if now >= p.first_seen + self.timeout]
        for transaction_id in expired:
            self._drop(transaction_id, "reassembly timeout")
        while self._completed:
            transaction_id, seen = next(iter(self._completed.items()))
            if now < seen + self.timeout:
                break
            del self._completed[transaction_id]
