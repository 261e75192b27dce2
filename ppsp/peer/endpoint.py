"""The PPSPP endpoint: many swarms and channels on one UDP socket (RFC 7574 §3.11), sans-IO.

Feed it ``receive(data, addr, now)``; ask it ``datagrams_to_send(now)``, ``next_timer()``,
``handle_timer(now)``; read what happened from ``pop_events()``. Time is injected (seconds,
any monotonic origin); ``wall_clock_offset`` turns it into the wall clock that DATA
timestamps carry (§8.6), so that a peer's one-way delay samples make sense.

A seeder may push the head chunks of a swarm to every new peer right after the handshake
(``push_head``, DESIGN F4 fast channel change, RFC 7574 §3.7 push model; docs/cacher.md).

Every datagram is hostile until checked: it is dropped unless it is at least a channel ID
long, names a channel we opened *with the address it comes from*, and decodes. A peer that
sends a malformed datagram or a chunk that fails verification is dropped (§3); the endpoint
keeps serving everybody else.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ppsp.peer import fastwire
from ppsp.peer.bins import bin_to_range, bins_covering, range_to_bin
from ppsp.peer.channel import PEX_RECENT, Address, Channel, ChannelState
from ppsp.peer.content import LiveContent, SwarmContent, SwarmParameters
from ppsp.peer.membership import MembershipPolicy, is_internal_address, normalize_address
from ppsp.peer.messages import (
    Ack,
    Cancel,
    Data,
    DecodeError,
    Handshake,
    HandshakeOptions,
    Have,
    Integrity,
    IntegrityMethod,
    Message,
    Request,
    SignedIntegrity,
    WireContext,
    signature_size_for,
)
from ppsp.peer.picker import ChunkPicker, PickPolicy
from ppsp.peer.ranges import ChunkRange, ChunkSet

log = logging.getLogger(__name__)

#: The protocol version we speak (§7.2); libswift's "version 1" is the same number.
PROTOCOL_VERSION = 1
#: Bounds (hostile input): channels per endpoint, channels per swarm.
MAX_CHANNELS = 4096
MAX_CHANNELS_PER_SWARM = 512
#: RFC 7574 §8.1 recommends 1024-byte chunks; the Chunk Size option is sent only otherwise,
#: because libswift silently drops a handshake that carries option 9 (traces/README).
DEFAULT_CHUNK_SIZE = 1024
#: Path MTU assumed when nobody tells us better: Ethernet's.
DEFAULT_PATH_MTU = 1500
#: Every message type of §8.2 Table 7, for the Supported Messages option (§7.10).
ALL_MESSAGE_TYPES = set(range(14))
#: Most PEX_REScert messages in one PEX reply (the path MTU may allow fewer).
MAX_PEX_CERTIFICATES = 8
#: An address that completed a three-way handshake with us (§3.1 step 7) within this long is
#: taken as validated: a new channel from it may be pushed to from our reply on (see
#: :meth:`Endpoint.address_validated`).
VALIDATED_ADDRESS_LIFETIME = 300.0
#: Bound on the validated-address memory (hostile input, oldest forgotten first).
MAX_VALIDATED_ADDRESSES = 4096


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class ChannelEstablished:
    swarm_id: bytes
    addr: Address
    channel: int


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    swarm_id: bytes
    addr: Address
    channel: int
    reason: str
    was_established: bool


@dataclass(frozen=True, slots=True)
class IntegrityFailed:
    """A chunk from ``addr`` failed verification; it was not stored and the peer was dropped."""

    swarm_id: bytes
    addr: Address
    chunk: int


@dataclass(frozen=True, slots=True)
class DownloadComplete:
    swarm_id: bytes


@dataclass(frozen=True, slots=True)
class PeerDiscovered:
    """A PEX response (§3.10) named a peer of the swarm."""

    swarm_id: bytes
    addr: Address


Event = ChannelEstablished | ChannelClosed | IntegrityFailed | DownloadComplete | PeerDiscovered


# ---------------------------------------------------------------------------- swarm


class Swarm:
    """One swarm known to the endpoint: its parameters, content, and the channels in it."""

    def __init__(
        self,
        endpoint: Endpoint,
        params: SwarmParameters,
        content: SwarmContent,
        policy: PickPolicy = PickPolicy.RAREST_FIRST,
    ) -> None:
        self.endpoint = endpoint
        self.params = params
        self.content = content
        if params.is_live:
            policy = PickPolicy.IN_ORDER  # a stream is played in order from the tune-in point
        self.picker = ChunkPicker(policy)
        #: Chunks requested from some peer and not yet received.
        self.pending = ChunkSet()
        self.channels: set[Channel] = set()
        self.new_chunks: list[int] = []
        self.completed = content.complete
        self.peers_heard: dict[Address, float] = {}
        #: §12.2: when set, PEX uses membership certificates only (PEX_REScert), never bare
        #: PEX_RESv4/v6 addresses; when None, PEX_REScerts received are ignored.
        self.membership: MembershipPolicy | None = None
        #: Chunks to push to a new peer right after the handshake (DESIGN F4); None takes the
        #: endpoint's ``push_head``, 0 pushes nothing.
        self.push_head: int | None = None
        signature_size = 64
        if params.live_signature_algorithm is not None and params.is_live:
            signature_size = signature_size_for(params.live_signature_algorithm, params.swarm_id)
        self.wire_conversion = (
            params.chunk_addressing.is_bin or params.chunk_addressing.is_byte_range
        )
        self.wire_context = WireContext(
            params.chunk_addressing,
            params.hash_function.digest_size,
            signature_size,
            params.chunk_size,
        )

    @property
    def swarm_id(self) -> bytes:
        return self.params.swarm_id

    # -- handshake (§3.1, §7)

    def handshake_options(self, *, initiator: bool) -> HandshakeOptions:
        p = self.params
        opts = HandshakeOptions(
            version=PROTOCOL_VERSION,
            minimum_version=PROTOCOL_VERSION,
            swarm_id=p.swarm_id if initiator else None,
            integrity_method=p.integrity_method,
            chunk_addressing=p.chunk_addressing,
        )
        if initiator:
            # §7.10. Only the initiator sends it: a lone option 8 at the end of a handshake
            # is safe with libswift (traces/README, probe C), but libswift's option 8 parser
            # drains 20 bytes, which would swallow the HAVEs that follow a reply.
            opts.supported_messages = HandshakeOptions.bitmap_for(ALL_MESSAGE_TYPES)
        if p.integrity_method in (IntegrityMethod.MERKLE, IntegrityMethod.UNIFIED_MERKLE):
            opts.merkle_hash_function = p.hash_function
        if p.is_live:
            opts.live_signature_algorithm = p.live_signature_algorithm
            opts.live_discard_window = p.live_discard_window
        if p.chunk_size != DEFAULT_CHUNK_SIZE:
            opts.chunk_size = p.chunk_size
        return opts

    def initiating_handshake(self, channel: Channel) -> bytes:
        hs = Handshake(channel.local_id, self.handshake_options(initiator=True))
        return fastwire.encode_datagram(0, [hs], WireContext())

    def check_options(self, opts: HandshakeOptions, *, initiator: bool) -> str:
        """Why the peer's handshake options are unacceptable for this swarm, or ``""``.

        Absent options take the RFC 7574 defaults (§7, Table 8), except that libswift omits
        none of the ones it uses.
        """
        p = self.params
        if opts.minimum_version is not None and opts.minimum_version > PROTOCOL_VERSION:
            return f"minimum version {opts.minimum_version} > {PROTOCOL_VERSION}"
        if opts.version is not None and opts.version < PROTOCOL_VERSION:
            return f"version {opts.version} not supported"
        if initiator and opts.swarm_id != p.swarm_id:
            return "wrong swarm"
        if opts.integrity_method is not None and opts.integrity_method != p.integrity_method:
            return f"content integrity method {opts.integrity_method} != {p.integrity_method}"
        if (
            opts.merkle_hash_function is not None
            and p.integrity_method != IntegrityMethod.SIGN_ALL
            and opts.merkle_hash_function != p.hash_function
        ):
            return f"merkle hash function {opts.merkle_hash_function} != {int(p.hash_function)}"
        cam = opts.chunk_addressing if opts.chunk_addressing is not None else 2
        if cam != p.chunk_addressing:
            return f"chunk addressing {cam} != {int(p.chunk_addressing)}"
        size = opts.chunk_size if opts.chunk_size is not None else DEFAULT_CHUNK_SIZE
        if size != p.chunk_size:
            return f"chunk size {size} != {p.chunk_size}"
        if (
            p.is_live
            and opts.live_signature_algorithm is not None
            and opts.live_signature_algorithm != p.live_signature_algorithm
        ):
            return "live signature algorithm differs"
        return ""

    # -- push of the head chunks (DESIGN F4; RFC 7574 §3.7 push model)

    @property
    def effective_push_head(self) -> int:
        n = self.push_head if self.push_head is not None else self.endpoint.push_head
        return max(0, n)

    def head_ranges(self, count: int) -> list[tuple[int, int]]:
        """The chunks to push to a new peer: of the ``count`` head chunks, those we hold.

        VoD: chunks 0..count-1, where playback starts. Live: the newest ``count`` chunks at
        the live edge, where a viewer tunes in (§6.1.2.4); each goes with its signed munro or
        signature, so the viewer verifies them like any other (§6.1).
        """
        have = self.content.have
        if count <= 0 or have.is_empty():
            return []
        if self.params.is_live:
            last = have.last
            assert last is not None
            lo, hi = max(0, last - count + 1), last
        else:
            lo, hi = 0, count - 1
            n = self.content.num_chunks
            if n is not None:
                hi = min(hi, n - 1)
        if hi < lo:
            return []
        wanted = ChunkSet([(lo, hi)])
        return [(r.start, r.end) for r in wanted.intersection(have).intervals()]

    def have_messages(self, limit: int = 256) -> list[Message]:
        return [Have(s, e) for s, e in self.content.have.intervals()[:limit]]

    # -- downloading

    def pick(self, channel: Channel, want: int) -> list[ChunkRange]:
        content = self.content
        if isinstance(content, LiveContent):
            if content.position is None:
                return []
            self.picker.position = content.position
        # Lazily: the picker looks at the other peers' maps only when it has something to
        # rank (rarest first), not on every flush of a peer that offers nothing new.
        others = (c.peer_have for c in self.channels if c is not channel and c.is_open)
        picks = self.picker.pick(channel.peer_have, self.content.have, self.pending, want, others)
        n = self.content.num_chunks
        if n is None:
            return picks
        return [ChunkRange(s, min(e, n - 1)) for s, e in picks if s < n]

    def chunk_verified(self, chunk: int, source: Channel) -> None:
        # ``pending`` keeps the chunk: the picker subtracts ``have`` anyway (cheaper).
        self.new_chunks.append(chunk)
        self.endpoint.dirty_swarms.add(self)
        if not self.completed and self.content.complete:
            self.completed = True
            self.endpoint.events.append(DownloadComplete(self.swarm_id))

    def announce_new_chunks(self) -> None:
        """HAVE for freshly verified chunks to every peer that lacks them (§3.3)."""
        if not self.new_chunks:
            return
        chunks = sorted(self.new_chunks)
        self.new_chunks = []
        runs: list[tuple[int, int]] = []
        start = prev = chunks[0]
        for c in chunks[1:]:
            if c > prev + 1:
                runs.append((start, prev))
                start = c
            prev = c
        runs.append((start, prev))
        have = self.content.have
        for s, e in runs:
            cov = have.covering_interval(e) or ChunkRange(s, e)
            for ch in self.channels:
                if ch.state is ChannelState.CLOSED or ch.peer_have.contains_range(s, e):
                    continue
                if ch.acks_due:
                    continue  # the ACK datagram carries a HAVE already
                ch.have_due.append((cov[0], cov[1]))
                self.endpoint.dirty.add(ch)

    def peer_has(self, start: int, end: int) -> None:
        content = self.content
        if isinstance(content, LiveContent) and content.position is None:
            # §6.1.2.4 tune-in: start at the munro of the newest chunk the peer offers.
            self.picker.position = content.tune_in(end)
        if not self.completed:
            self.wake_pickers()

    def publish(self, ranges: list[tuple[int, int]]) -> None:
        """New chunks at the live source (§6): announce them to every peer."""
        for s, e in ranges:
            self.new_chunks.extend(range(s, e + 1))
        if ranges:
            self.endpoint.dirty_swarms.add(self)

    def wake_pickers(self) -> None:
        for ch in self.channels:
            if ch.is_open:
                self.endpoint.dirty.add(ch)

    def recent_peers(self, now: float, window: float, exclude: Address) -> list[Address]:
        return [
            ch.addr
            for ch in self.channels
            if ch.is_open and ch.addr != exclude and now - ch.last_receive <= window
        ][:32]

    # -- peer address exchange with membership certificates (§3.10, §12.2)

    def wall_clock(self, now: float) -> float:
        """Wall-clock seconds since the epoch at the injected time ``now`` (certificate time)."""
        return now + self.endpoint.wall_clock_offset

    def pex_certificates(self, requester: Address, now: float) -> list[bytes]:
        """Membership certificates to answer a PEX_REQ from ``requester`` (§3.10.1, §8.13).

        Our own certificate, then certificates of peers we heard from in the last 60 s
        (§3.10.1 MUST), never the requester's, and no internal addresses for a requester
        with a public one (§8.13).
        """
        policy = self.membership
        if policy is None:
            return []
        alive = [
            ch.addr for ch in self.channels if ch.is_open and now - ch.last_receive <= PEX_RECENT
        ]
        return policy.certificates_for_pex(
            requester,
            MAX_PEX_CERTIFICATES,
            now=self.wall_clock(now),
            alive=alive,
            public_only=not is_internal_address(requester[0]),
        )

    def take_certificate(self, der: bytes, source: Address, now: float) -> Address | None:
        """A PEX_REScert from ``source``: the peer it certifies, announced as
        :class:`PeerDiscovered` (unless it is ``source`` itself or us) and kept for further
        PEX; None if there is no membership policy or the certificate does not verify."""
        policy = self.membership
        if policy is None:
            return None  # §3.10: without a trust anchor a certificate proves nothing
        addr = policy.receive_certificate(der, source, self.wall_clock(now))
        if addr is not None and addr not in (normalize_address(source), policy.own_address):
            self.endpoint.peer_discovered(self, addr)
        return addr

    # -- chunk specification conversions

    def bin_of(self, start: int, end: int) -> int:
        if self.params.chunk_addressing.is_byte_range:
            size = self.params.chunk_size
            start, end = start // size, end // size
        return range_to_bin(start, end)

    def to_wire(self, msgs: list[Message]) -> list[Message]:
        """Express chunk-unit messages in the channel's CAM (§4): bins can only name aligned
        power-of-two blocks, so a range becomes several messages; byte ranges count bytes."""
        cam = self.params.chunk_addressing
        if cam.is_bin:
            out: list[Message] = []
            for m in msgs:
                if isinstance(m, (Have, Request, Cancel)):
                    out.extend(type(m)(*bin_to_range(b)) for b in bins_covering(m.start, m.end))
                elif isinstance(m, Ack):
                    out.extend(
                        Ack(*bin_to_range(b), m.delay_sample) for b in bins_covering(m.start, m.end)
                    )
                else:
                    out.append(m)
            return out
        if cam.is_byte_range:
            return [self._to_bytes(m) for m in msgs]
        return msgs

    def from_byte_ranges(self, msgs: list[Message]) -> list[Message]:
        """Express 64-bit byte-range messages (CAM 1, §4.3) in chunks, as the channel works."""
        size = self.params.chunk_size
        out: list[Message] = []
        for m in msgs:
            if isinstance(m, (Have, Request, Cancel, Ack, Integrity, SignedIntegrity)):
                s, e = m.start // size, m.end // size
                if isinstance(m, Ack):
                    m = Ack(s, e, m.delay_sample)
                elif isinstance(m, Integrity):
                    m = Integrity(s, e, m.hash)
                elif isinstance(m, SignedIntegrity):
                    pass  # its signature covers the byte-range form; live content converts
                else:
                    m = type(m)(s, e)
            elif isinstance(m, Data):
                if m.start % size:
                    continue  # not a whole chunk: unusable, skip it
                m = Data(m.start // size, m.start // size, m.timestamp, m.payload)
            out.append(m)
        return out

    def _to_bytes(self, msg: Message) -> Message:
        size = self.params.chunk_size
        if isinstance(msg, (Have, Request, Cancel, Ack, Integrity)):
            s, e = msg.start * size, msg.end * size + size - 1
            if isinstance(msg, Ack):
                return Ack(s, e, msg.delay_sample)
            if isinstance(msg, Integrity):
                return Integrity(s, e, msg.hash)
            return type(msg)(s, e)
        return msg


# ---------------------------------------------------------------------------- endpoint


class Endpoint:
    """See the module docstring."""

    def __init__(
        self,
        *,
        wall_clock_offset: float = 0.0,
        channel_id_source: Callable[[], int] | None = None,
        path_mtu: Callable[[Address], int] | None = None,
        push_head: int = 0,
    ) -> None:
        self.wall_clock_offset = wall_clock_offset
        #: Default for :attr:`Swarm.push_head`: head chunks pushed to every new peer.
        self.push_head = push_head
        #: Addresses that completed a handshake (§3.1), with the time: see address_validated.
        self.validated: OrderedDict[Address, float] = OrderedDict()
        #: The path MTU towards a peer (§8.1); the adapter asks the kernel, tests inject it.
        self.path_mtu: Callable[[Address], int] = path_mtu or (lambda _addr: DEFAULT_PATH_MTU)
        self._new_id = channel_id_source or (lambda: secrets.randbits(32))
        self.swarms: dict[bytes, Swarm] = {}
        self.channels: dict[int, Channel] = {}
        self.by_peer: dict[tuple[Address, int], Channel] = {}
        self.dirty: set[Channel] = set()
        self.dirty_swarms: set[Swarm] = set()
        #: Channel timers: a heap of (deadline, tie-break, channel) entries; an entry is live
        #: while ``_timer_at[channel]`` equals its deadline (older entries are skipped when
        #: they come up). Channels whose deadline may have moved (they received, sent or ran
        #: their timer) wait in ``_touched`` until the next look at the timers, so a datagram
        #: costs O(log channels) there, not a scan of every channel.
        self._timers: list[tuple[float, int, Channel]] = []
        self._timer_at: dict[Channel, float] = {}
        self._touched: set[Channel] = set()
        self._timer_seq = itertools.count()
        self.events: list[Event] = []
        self.outbox: list[tuple[bytes, Address]] = []
        self.stats_dropped = 0
        #: The holding area of chunks not verifiable yet (channel.HOLD_MAX_CHUNKS): bytes
        #: held now over all channels (bounded by HOLD_MAX_ENDPOINT_BYTES), chunks ever held,
        #: verified later, and dropped (evicted, expired, superseded or refused).
        self.held_bytes = 0
        self.stats_held = 0
        self.stats_held_verified = 0
        self.stats_held_dropped = 0
        #: Pushed chunks resent early because later ones were acknowledged (fast repair).
        self.stats_fast_repairs = 0

    # -- swarms and channels

    def add_swarm(
        self,
        params: SwarmParameters,
        content: SwarmContent,
        policy: PickPolicy = PickPolicy.RAREST_FIRST,
        *,
        push_head: int | None = None,
    ) -> Swarm:
        swarm = Swarm(self, params, content, policy)
        swarm.push_head = push_head
        self.swarms[params.swarm_id] = swarm
        return swarm

    def remove_swarm(self, swarm_id: bytes) -> None:
        swarm = self.swarms.pop(swarm_id, None)
        if swarm is not None:
            for ch in list(swarm.channels):
                ch.close("swarm removed", notify_peer=True)

    def connect(self, swarm_id: bytes, addr: Address, now: float) -> Channel:
        """Open a channel to ``addr`` in the swarm: send the initiating HANDSHAKE (§3.1)."""
        swarm = self.swarms[swarm_id]
        ch = Channel(self, swarm, self._allocate_id(), addr, initiator=True, now=now)
        self._register(ch)
        ch.on_timer(now, self.outbox)
        return ch

    def _allocate_id(self) -> int:
        while True:
            cid = self._new_id() & 0xFFFFFFFF
            if cid and cid not in self.channels:
                return cid

    def _register(self, ch: Channel) -> None:
        self.channels[ch.local_id] = ch
        ch.swarm.channels.add(ch)
        self._touched.add(ch)

    def channel_established(self, ch: Channel) -> None:
        if ch.remote_id:
            self.by_peer[(ch.addr, ch.remote_id)] = ch
        self.events.append(ChannelEstablished(ch.swarm.swarm_id, ch.addr, ch.local_id))
        # §3.1 steps 3 and 7: the peer answered on the channel ID we chose, so it really
        # listens at this address.
        validated = self.validated
        validated[ch.addr] = ch.last_receive
        validated.move_to_end(ch.addr)
        while len(validated) > MAX_VALIDATED_ADDRESSES:
            validated.popitem(last=False)
        if not ch.initiator and not ch.push_started:
            # §3.1 step 7: heavy payload may now go to the peer: push the head chunks.
            ch.start_push(ch.swarm.head_ranges(ch.swarm.effective_push_head))

    def address_validated(self, addr: Address, now: float) -> bool:
        """Whether a new channel from ``addr`` may be pushed to before its three-way
        handshake completes: the address completed a handshake with us, or sent on an
        established channel, within VALIDATED_ADDRESS_LIFETIME.

        §3.1 forbids heavy payload before the third datagram so that a spoofed handshake
        cannot turn us into an amplifier (§12.1). A viewer zapping channels at a cacher opens
        each new channel from an address that already proved itself on an earlier one, so
        waiting for the third datagram only costs the round trip fast channel change is
        about. The residual risk is bounded: a spoofer can aim at most one unconfirmed push
        (``push_head`` chunks, under LEDBAT) at a validated address at a time, and half-open
        channels expire after HALF_OPEN_TIMEOUT.
        """
        seen = self.validated.get(addr)
        fresh = seen is not None and now - seen <= VALIDATED_ADDRESS_LIFETIME
        for c in self.channels.values():
            if c.addr != addr:
                continue
            if c.early_push and c.state is ChannelState.REPLIED:
                return False  # one unconfirmed push at a time
            if c.state is ChannelState.ESTABLISHED and now - c.last_receive <= (
                VALIDATED_ADDRESS_LIFETIME
            ):
                fresh = True  # still talking to us on another channel
        return fresh

    def channel_closed(self, ch: Channel, reason: str) -> None:
        self.channels.pop(ch.local_id, None)
        if self.by_peer.get((ch.addr, ch.remote_id)) is ch:
            del self.by_peer[(ch.addr, ch.remote_id)]
        ch.swarm.channels.discard(ch)
        self.dirty.discard(ch)
        self._touched.discard(ch)
        self._timer_at.pop(ch, None)
        was = ch.handshake_attempts == 0 or ch.remote_id != 0
        self.events.append(ChannelClosed(ch.swarm.swarm_id, ch.addr, ch.local_id, reason, was))
        log.info("channel %08x to %s closed: %s", ch.local_id, ch.addr, reason)

    def integrity_failure(self, ch: Channel, chunk: int) -> None:
        self.events.append(IntegrityFailed(ch.swarm.swarm_id, ch.addr, chunk))

    def peer_discovered(self, swarm: Swarm, addr: Address) -> None:
        self.events.append(PeerDiscovered(swarm.swarm_id, addr))

    def send_raw(self, data: bytes, addr: Address) -> None:
        self.outbox.append((data, addr))

    def pop_events(self) -> list[Event]:
        events, self.events = self.events, []
        return events

    def iter_channels(self) -> Iterator[Channel]:
        return iter(list(self.channels.values()))

    # -- input

    def receive(self, data: bytes | memoryview, addr: Address, now: float) -> None:
        """Take one UDP datagram from ``addr``."""
        if len(data) < 4:
            self.stats_dropped += 1
            return
        channel_id = int.from_bytes(data[:4], "big")
        if channel_id == 0:
            self._on_initiation(data, addr, now)
            return
        ch = self.channels.get(channel_id)
        if ch is None or ch.addr != addr:
            self.stats_dropped += 1  # not a channel of ours with that peer
            return
        self._touched.add(ch)
        try:
            messages = fastwire.decode_datagram(data, ch.ctx).messages
        except DecodeError as exc:
            partial = exc.partial.messages if exc.partial is not None else []
            if partial:
                ch.on_messages(partial, now)
            ch.close(f"malformed datagram: {exc}")
            return
        ch.on_messages(messages, now)

    def _on_initiation(self, data: bytes | memoryview, addr: Address, now: float) -> None:
        try:
            messages = fastwire.decode_datagram(data, WireContext()).messages
        except DecodeError:
            self.stats_dropped += 1
            return
        if not messages or not isinstance(messages[0], Handshake):
            self.stats_dropped += 1
            return
        hs = messages[0]
        if hs.is_close:
            # libswift refuses a handshake by a HANDSHAKE with source channel 0 sent to
            # channel 0 (traces/README, probes E and F): end our pending handshake to addr.
            for ch in list(self.channels.values()):
                if ch.addr == addr and ch.state is ChannelState.HANDSHAKE_SENT:
                    ch.close("peer refused the handshake")
            return
        swarm = self.swarms.get(hs.options.swarm_id or b"")
        if swarm is None:
            self.stats_dropped += 1  # §3.1: unknown swarm, no reply at all
            return
        existing = self.by_peer.get((addr, hs.source_channel))
        if existing is not None and existing.is_open:
            self.outbox.append((self._reply(existing), addr))  # a retransmitted handshake
            return
        problem = swarm.check_options(hs.options, initiator=True)
        if problem:
            log.info("refusing handshake from %s: %s", addr, problem)
            # Tell the initiator at once instead of letting it time out (§8.4 close).
            self.outbox.append(
                (fastwire.encode_datagram(hs.source_channel, [Handshake(0)], WireContext()), addr)
            )
            return
        if len(self.channels) >= MAX_CHANNELS or len(swarm.channels) >= MAX_CHANNELS_PER_SWARM:
            # Full: make room by giving up the oldest half-open channel (§3.1 step 3 never
            # came), so a flood of handshakes cannot lock real peers out.
            half_open = [c for c in swarm.channels if c.state is ChannelState.REPLIED]
            if not half_open:
                self.stats_dropped += 1
                return
            min(half_open, key=lambda c: c.created).close("evicted: handshake not confirmed")
        ch = Channel(self, swarm, self._allocate_id(), addr, initiator=False, now=now)
        ch.remote_id = hs.source_channel
        ch.peer_handshake(hs.options)
        early = bool(swarm.effective_push_head) and self.address_validated(addr, now)
        self._register(ch)
        self.by_peer[(addr, hs.source_channel)] = ch
        self.outbox.append((self._reply(ch), addr))
        if early and ch.self_contained_ok:
            # Fast channel change on a jittery or lossy path: the reply also leads every
            # pushed datagram, each with the hashes its chunks need (Channel.self_contained_ok),
            # so that whichever arrives first establishes the channel (§3.1 step 2) and
            # verifies against the root hash alone (§5.3, §5.6); losing the reply's own
            # datagram costs nothing. Only to a peer that announced Supported Messages
            # (§7.10): libswift does not, and takes a DATA to run to the end of the datagram.
            ch.reply = self._reply_messages(ch)
        ch.last_send = now
        rest = messages[1:]
        if rest:
            ch.state = ChannelState.ESTABLISHED  # processing them must not count as step 3
            ch.on_messages(rest, now)
            if ch.is_open:
                ch.state = ChannelState.REPLIED
        if ch.is_open and early:
            # Fast channel change (DESIGN F4): the peer's address is proven, so the head
            # chunks follow our reply at once (after the HAVEs it sent, which they skip).
            ch.early_push = True
            ch.start_push(swarm.head_ranges(swarm.effective_push_head))

    def _reply_messages(self, ch: Channel) -> list[Message]:
        hs = Handshake(ch.local_id, ch.swarm.handshake_options(initiator=False))
        return [hs, *ch.swarm.to_wire(ch.swarm.have_messages())]

    def _reply(self, ch: Channel) -> bytes:
        return fastwire.encode_datagram(ch.remote_id, self._reply_messages(ch), ch.ctx)

    # -- output and timers

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out = self.outbox
        self.outbox = []
        if self.dirty_swarms:
            for swarm in self.dirty_swarms:
                swarm.announce_new_chunks()
            self.dirty_swarms.clear()
        if self.dirty:
            dirty = self.dirty
            self.dirty = set()
            self._touched.update(dirty)
            for ch in dirty:
                ch.flush(now, out)
        if self.outbox:
            out.extend(self.outbox)
            self.outbox = []
        return out

    def _sync_timers(self) -> None:
        """Queue the current deadline of every channel touched since the last look."""
        touched = self._touched
        if touched:
            timer_at = self._timer_at
            timers = self._timers
            channels = self.channels
            seq = self._timer_seq
            for ch in touched:
                if channels.get(ch.local_id) is not ch:
                    continue  # closed meanwhile
                when = ch.next_deadline()
                if timer_at.get(ch) != when:
                    timer_at[ch] = when
                    heapq.heappush(timers, (when, next(seq), ch))
            touched.clear()
            if len(timers) > 4 * len(timer_at) + 256:
                # Mostly superseded entries: rebuild from the live ones.
                self._timers = [(when, next(seq), ch) for ch, when in timer_at.items()]
                heapq.heapify(self._timers)

    def next_timer(self) -> float | None:
        if not self.channels:
            return None
        self._sync_timers()
        timers = self._timers
        timer_at = self._timer_at
        while timers and timer_at.get(timers[0][2]) != timers[0][0]:
            heapq.heappop(timers)  # superseded or closed
        return timers[0][0] if timers else None

    def handle_timer(self, now: float) -> None:
        self._sync_timers()
        timers = self._timers
        timer_at = self._timer_at
        due: list[Channel] = []
        while timers and timers[0][0] <= now:
            when, _, ch = heapq.heappop(timers)
            if timer_at.get(ch) == when:
                del timer_at[ch]
                due.append(ch)
        touched = self._touched
        for ch in due:
            if ch.next_deadline() <= now:
                ch.on_timer(now, self.outbox)
            touched.add(ch)
