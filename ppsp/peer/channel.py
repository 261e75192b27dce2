"""One PPSPP channel: the association of this peer with one remote peer in one swarm (§3.11).

Sans-IO (DESIGN §3): :meth:`Channel.on_messages` takes decoded messages and the injected
time; :meth:`Channel.flush` appends the datagrams to send. The channel implements both
roles at once — it serves what the peer REQUESTs and requests what the picker chooses — so
a peer that is downloading is also uploading (§3).
"""

from __future__ import annotations

import enum
import ipaddress
import logging
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, cast

from ppsp.peer import fastwire
from ppsp.peer.content import PeerHashes, SwarmContent
from ppsp.peer.ledbat import Ledbat
from ppsp.peer.membership import is_internal_address
from ppsp.peer.messages import (
    Ack,
    Cancel,
    Choke,
    Data,
    Handshake,
    HandshakeOptions,
    Have,
    Integrity,
    Message,
    MessageType,
    PexReq,
    PexResCert,
    PexResV4,
    PexResV6,
    Request,
    SignedIntegrity,
    Unchoke,
    WireContext,
)
from ppsp.peer.ranges import ChunkSet

if TYPE_CHECKING:
    from ppsp.peer.endpoint import Endpoint, Swarm

log = logging.getLogger(__name__)

Address = tuple[str, int]

#: §3.12 and Table 8: a peer is dead after this long without a datagram from it ...
DEAD_PEER_TIMEOUT = 180.0
#: ... provided we sent it at least this many datagrams meanwhile.
DEAD_PEER_DATAGRAMS = 3
#: §3.12: keep-alives keep the channel open while there is nothing else to say.
KEEPALIVE_INTERVAL = 20.0
#: Handshake retransmission: first retry after this, doubling, until the caller gives up.
HANDSHAKE_RETRY = 0.5
#: Bounds on what a peer can make us hold (hostile input, DEVELOPERS "limits on every queue").
MAX_QUEUED_REQUESTS = 4096
MAX_HAVE_INTERVALS = 1 << 16
#: Request window (chunks outstanding at one peer): start, floor, ceiling.
REQUEST_WINDOW_START = 64
REQUEST_WINDOW_MIN = 8
REQUEST_WINDOW_MAX = 4096
#: A batch of requested chunks that has not fully arrived this long after the last DATA from
#: the peer is requested again (possibly elsewhere).
REQUEST_STALL = 1.0
#: A channel we answered whose initiator never confirmed it (§3.1 step 3) is given up after
#: this long, so half-open channels cannot hold the swarm's channel slots.
HALF_OPEN_TIMEOUT = 10.0
#: PEX (§3.10): only peers heard from within this window are given out.
PEX_RECENT = 60.0
#: Bytes of the control datagram left to other messages when PEX_REScerts fill it.
PEX_CONTROL_RESERVE = 160
#: Push of the head chunks (DESIGN F4, docs/cacher.md "Push"): the initial LEDBAT window, in
#: datagrams, of a channel that pushes. RFC 6817 §2.4.2 says INIT_CWND SHOULD be 2; a cacher
#: close to its viewers opens with up to this many, as TCP may with RFC 6928's IW10, so that
#: the first chunks of a channel arrive in one round trip. LEDBAT rules from the first ACK on.
PUSH_INITIAL_WINDOW = 10


#: Holding area for DATA that cannot be verified *yet* (RFC 7574 §5.3: the hashes that prove a
#: chunk may travel in another datagram, and §3.1 lets DATA overtake the handshake reply that
#: brings them on a jittery path). Such a chunk is kept, never stored or delivered, and checked
#: again when hashes, a signed munro or the reply arrive. Bounds per channel and per endpoint
#: (hostile input: DATA nobody can verify must not grow memory); the oldest goes first.
HOLD_MAX_CHUNKS = 64
HOLD_MAX_BYTES = 128 * 1024
HOLD_MAX_ENDPOINT_BYTES = 2 * 1024 * 1024
#: A held chunk still unverifiable after this long is dropped: its hashes are not coming.
HOLD_TIMEOUT = 1.0
#: Fast repair of a lost pushed datagram (RFC 7574 §3.6 leaves retransmission to the
#: implementation; the rule is RACK's, RFC 8985 §6.2): a pushed chunk still unacknowledged
#: when one sent after it was ACKed is taken as lost once it has been in flight for the
#: smoothed RTT plus a reordering window of this share of it, and resent at once instead of at
#: the RTO (200 ms or more). The window keeps link jitter from resending chunks that are late.
FAST_REPAIR_REORDER_SHARE = 0.5


#: IPv6 + UDP headers: what a datagram must leave of the path MTU (RFC 8200, RFC 768).
IP_UDP_OVERHEAD = 48
#: Most DATA messages we put in one datagram (§8.6), however large the path MTU.
MAX_DATA_PER_DATAGRAM = 16


def _wire_size(msgs: list[Integrity | SignedIntegrity], ctx: WireContext) -> int:
    """Bytes the INTEGRITY / SIGNED_INTEGRITY messages take on the wire (§8.8, §8.9)."""
    spec = ctx.chunk_addressing.spec_size
    total = 0
    for m in msgs:
        total += 1 + spec + (ctx.hash_size if type(m) is Integrity else 8 + ctx.signature_size)
    return total


class ChannelState(enum.Enum):
    HANDSHAKE_SENT = "handshake-sent"  # we initiated; waiting for the reply
    REPLIED = "replied"  # we answered; no datagram on our channel ID yet (§3.1 step 3)
    ESTABLISHED = "established"
    CLOSED = "closed"


class Channel:
    """State of one channel; see the module docstring."""

    def __init__(
        self,
        endpoint: Endpoint,
        swarm: Swarm,
        local_id: int,
        addr: Address,
        *,
        initiator: bool,
        now: float,
    ) -> None:
        self.endpoint = endpoint
        self.swarm = swarm
        self.local_id = local_id
        self.remote_id = 0
        self.addr = addr
        self.initiator = initiator
        self.state = ChannelState.HANDSHAKE_SENT if initiator else ChannelState.REPLIED
        self.ctx: WireContext = swarm.wire_context
        self.chunk_size = swarm.params.chunk_size
        self.byte_ranges = swarm.params.chunk_addressing.is_byte_range
        self.close_reason = ""

        # What the peer holds (from its HAVEs and ACKs) and what it asked us for.
        self.peer_have = ChunkSet()
        self.peer_requests: deque[list[int]] = deque()
        #: Chunks the peer CANCELled (§3.8), skipped when their turn comes.
        self.cancelled = ChunkSet()
        self.queued_request_chunks = 0
        self.peer_choked_us = False
        #: Push of the head chunks (DESIGN F4): started once per channel; ``early_push`` when
        #: it started before the three-way handshake completed (Endpoint.address_validated).
        self.push_started = False
        self.early_push = False
        self.chunks_pushed = 0
        #: Seeder side of an early push (Endpoint.address_validated) to a peer that announced
        #: Supported Messages (§7.10): every pushed datagram sent before the peer confirms the
        #: channel repeats our HANDSHAKE reply and carries all the hashes its chunks need, so
        #: that it verifies on its own whatever order the datagrams arrive in, and whichever
        #: are lost (§3.1, §5.3). ``reply``: our reply (HANDSHAKE + HAVEs, wire form) that
        #: leads each of them, after going alone first.
        self.self_contained_ok = False
        self.reply: list[Message] | None = None
        #: Send order of the DATA in flight (fast repair) and the newest acknowledged.
        self.send_seq = 0
        self.in_flight_seq: dict[int, int] = {}
        self.highest_acked_seq = 0
        self.repairable: set[int] = set()
        #: When the next pushed chunk may be declared lost (fast repair), or 0; and how many
        #: repaired chunks may go beyond the LEDBAT window (as RFC 5681 §3.2 step 2 resends
        #: the lost segment before the window allows new data).
        self.repair_at = 0.0
        self.repair_credit = 0
        #: Viewer side: chunks that arrived before the hashes that prove them (see
        #: HOLD_MAX_CHUNKS): chunk -> (bytes, arrival time, one-way delay sample in µs).
        self.held: OrderedDict[int, tuple[bytes, float, int]] = OrderedDict()
        self.held_bytes = 0
        #: A chunk verified in the datagram being processed (its path may prove held ones).
        self.chunks_verified_now = False

        # Upload side: DATA in flight, keyed by chunk, with the send time (retransmission, §3.6).
        self.in_flight: dict[int, float] = {}
        self.in_flight_order: deque[tuple[float, int]] = deque()
        self.peer_hashes = PeerHashes(self.peer_have)
        self.ledbat = Ledbat()
        self.srtt: float | None = None
        self.last_loss_reaction = 0.0
        # Several DATA per datagram (§8.1, §8.6): how many fit the path MTU, and the probe.
        self.datagram_budget = endpoint.path_mtu(addr) - IP_UDP_OVERHEAD
        self.max_batch = 1
        self.multi_data_ok: bool | None = None
        self.multi_data_probe: int | None = None

        # Download side.
        #: Chunks requested from this peer (only added to; what arrived is subtracted lazily)
        #: and how many of them are still expected.
        self.outstanding = ChunkSet()
        self.outstanding_count = 0
        self.request_window = REQUEST_WINDOW_START
        #: After a stall, no new REQUESTs here before this time: the chunks given back go to
        #: the other peers first instead of straight back to this silent one.
        self.stalled_until = 0.0
        self.last_data_received = now
        self.acks_due: list[tuple[int, int, int]] = []  # (start, end, delay sample µs)
        self.have_due: list[tuple[int, int]] = []
        self.control_due: list[Message] = []
        self.bytes_received = 0
        self.bytes_sent = 0
        #: Queued chunks the content could no longer read (evicted after they were queued).
        self.unreadable = 0

        # Liveness (§3.12) and handshake retransmission.
        self.created = now
        self.last_receive = now
        self.last_send = now
        self.datagrams_since_receive = 0
        self.handshake_attempts = 0
        self.next_handshake = now

    # ------------------------------------------------------------------ helpers

    @property
    def is_open(self) -> bool:
        return self.state is not ChannelState.CLOSED

    def _ts_us(self, now: float) -> int:
        return int((now + self.endpoint.wall_clock_offset) * 1_000_000)

    def _mark(self) -> None:
        self.endpoint.dirty.add(self)

    def close(self, reason: str, *, notify_peer: bool = False) -> None:
        if self.state is ChannelState.CLOSED:
            return
        if notify_peer and self.remote_id:
            # §8.4: an explicit close is a HANDSHAKE with source channel 0 and only End.
            self.endpoint.send_raw(
                fastwire.encode_datagram(self.remote_id, [Handshake(0)], self.ctx), self.addr
            )
        self.state = ChannelState.CLOSED
        self.close_reason = reason
        self._drop_held(len(self.held))
        self._return_outstanding()
        self.endpoint.channel_closed(self, reason)

    def _return_outstanding(self) -> None:
        if not self.outstanding.is_empty():
            missing = self.outstanding.difference(self.swarm.content.have)
            self.swarm.pending.difference_update(missing)
            self.outstanding = ChunkSet()
            self.outstanding_count = 0
            self.swarm.wake_pickers()

    # ------------------------------------------------------------------ receiving

    def on_messages(self, messages: list[Message], now: float) -> None:
        """Process the messages of one datagram in order (§8.3)."""
        self.last_receive = now
        self.datagrams_since_receive = 0
        if self.state is ChannelState.REPLIED:
            self.state = ChannelState.ESTABLISHED  # §3.1 step 3: the 3-way handshake is done
            self.endpoint.channel_established(self)
        integrity: list[Integrity] = []
        content = self.swarm.content
        if self.byte_ranges:
            messages = self.swarm.from_byte_ranges(messages)
        # Whether this datagram brought what may prove held chunks (hashes, a signed munro,
        # the handshake reply): they are checked again at its end.
        hashes_came = False
        for msg in messages:
            t = type(msg)
            if t is not Integrity and integrity:
                if not content.accept_integrity(integrity):
                    self.close("unusable INTEGRITY hashes")
                    return
                integrity = []
                hashes_came = True
            if t is Data:
                assert isinstance(msg, Data)
                if not self._on_data(msg, now):
                    return
            elif t is Ack:
                assert isinstance(msg, Ack)
                self._on_ack(msg, now)
            elif t is Integrity:
                assert isinstance(msg, Integrity)
                integrity.append(msg)
            elif t is Have:
                assert isinstance(msg, Have)
                self._on_have(msg.start, msg.end)
            elif t is Request:
                assert isinstance(msg, Request)
                self._on_request(msg.start, msg.end)
            elif t is Cancel:
                assert isinstance(msg, Cancel)
                self._cancel(msg.start, msg.end)
            elif t is SignedIntegrity:
                assert isinstance(msg, SignedIntegrity)
                if not content.accept_signed_integrity(msg):
                    self.close("SIGNED_INTEGRITY failed verification")
                    return
                hashes_came = True
            elif t is Handshake:
                assert isinstance(msg, Handshake)
                if msg.is_close:
                    refused = self.state is ChannelState.HANDSHAKE_SENT
                    self.close(
                        "peer refused the handshake" if refused else "peer closed the channel"
                    )
                    return
                hashes_came |= self._on_handshake_reply(msg, now)
                if self.state is ChannelState.CLOSED:
                    return
            elif t is Choke:
                self.peer_choked_us = True
                self._return_outstanding()
            elif t is Unchoke:
                self.peer_choked_us = False
                self._mark()
            elif t is PexReq:
                self._on_pex_request(now)
            elif t in (PexResV4, PexResV6):
                assert isinstance(msg, (PexResV4, PexResV6))
                self.endpoint.peer_discovered(self.swarm, (str(msg.address), msg.port))
            elif t is PexResCert:
                assert isinstance(msg, PexResCert)
                # §12.2.1: a certificate names a peer only once the swarm's membership
                # policy (if any) has verified it; without one it proves nothing.
                self.swarm.take_certificate(msg.certificate, self.addr, now)
        if integrity:
            if not content.accept_integrity(integrity):
                self.close("unusable INTEGRITY hashes")
                return
            hashes_came = True
        if self.held and (hashes_came or self.chunks_verified_now):
            self._retry_held(now)
        self.chunks_verified_now = False

    def peer_handshake(self, options: HandshakeOptions) -> None:
        """Take note of what the peer's HANDSHAKE says about it (§7)."""
        supported = options.supported_message_types()
        if supported is not None and MessageType.DATA in supported and MessageType.ACK in supported:
            per_chunk = self.chunk_size + self.ctx.chunk_addressing.spec_size + 9
            per_chunk += 2 * (1 + self.ctx.chunk_addressing.spec_size + self.ctx.hash_size)
            self.max_batch = max(1, min(MAX_DATA_PER_DATAGRAM, self.datagram_budget // per_chunk))
        self.self_contained_ok = supported is not None and {
            MessageType.HANDSHAKE,
            MessageType.HAVE,
            MessageType.INTEGRITY,
            MessageType.DATA,
            MessageType.ACK,
        } <= set(supported)

    def start_push(self, ranges: list[tuple[int, int]]) -> None:
        """Send ``ranges`` unrequested, ahead of whatever the peer asks (RFC 7574 §3.7: a
        push model "without requests to save round trips").

        The chunks are queued as if the peer had REQUESTed them first, so everything a
        REQUEST gets applies to them: their INTEGRITY uncles or signed munro go first (§5.4,
        §6.1.2.3), LEDBAT paces them, chunks the peer HAVEs or CANCELs are skipped (§3.8),
        and once in flight a REQUEST for them does not send them twice. The window opens at
        PUSH_INITIAL_WINDOW datagrams so that the head arrives in one round trip.
        """
        if self.push_started or self.state is ChannelState.CLOSED:
            return
        self.push_started = True
        if not ranges:
            return
        if not self.in_flight and self.ledbat.srtt is None:
            self.ledbat = Ledbat(init_cwnd=max(2, PUSH_INITIAL_WINDOW))
        for s, e in reversed(ranges):
            self.peer_requests.appendleft([s, e])
            self.queued_request_chunks += e - s + 1
            self.chunks_pushed += e - s + 1
        self._mark()

    def _on_handshake_reply(self, msg: Handshake, now: float) -> bool:
        """Take the peer's HANDSHAKE reply (§3.1 step 2); whether it was new."""
        if self.state is not ChannelState.HANDSHAKE_SENT:
            return False  # a retransmitted or repeated reply; it is idempotent (§8.2)
        problem = self.swarm.check_options(msg.options, initiator=False)
        if problem:
            self.close(f"peer's handshake: {problem}", notify_peer=False)
            return False
        self.peer_handshake(msg.options)
        self.remote_id = msg.source_channel
        self.state = ChannelState.ESTABLISHED
        self.endpoint.channel_established(self)
        self._mark()
        return True

    def _on_data(self, msg: Data, now: float) -> bool:
        content = self.swarm.content
        payload = msg.payload
        size = self.chunk_size
        self.last_data_received = now
        self.stalled_until = 0.0
        delay = max(0, self._ts_us(now) - msg.timestamp)
        start = msg.start
        count = (len(payload) + size - 1) // size if payload else 0
        for i in range(count):
            chunk = start + i
            piece = payload[i * size : (i + 1) * size] if count > 1 else payload
            fresh = chunk not in content.have
            ok = content.verify_and_store(chunk, piece)
            if ok is None:
                # §5.3: the hashes that prove it are in another datagram, not here yet (it
                # overtook them, or they were lost). Hold it; it is not ACKed, so if they
                # never come the sender resends it.
                if fresh:
                    self._hold(chunk, piece, delay, now)
                continue
            if not ok:
                self.endpoint.integrity_failure(self, chunk)
                self.close(f"chunk {chunk} failed verification")
                return False
            self._chunk_arrived(chunk, len(piece), fresh, delay)
        return True

    def _chunk_arrived(self, chunk: int, length: int, fresh: bool, delay: int) -> None:
        """A chunk verified (now or out of the holding area): count it and ACK it (§3.6)."""
        if chunk in self.outstanding:
            # A pushed chunk (§3.7) was never counted as outstanding.
            self.outstanding_count = max(0, self.outstanding_count - 1)
        if fresh:
            self.bytes_received += length
            self.swarm.chunk_verified(chunk, self)
            self.chunks_verified_now = True
        self.acks_due.append((chunk, chunk, delay))
        self.request_window = min(REQUEST_WINDOW_MAX, self.request_window + 1)
        self._mark()

    # -- holding area for chunks that cannot be verified yet (HOLD_MAX_CHUNKS)

    def _hold(self, chunk: int, piece: bytes | memoryview, delay: int, now: float) -> None:
        held = self.held
        ep = self.endpoint
        if chunk in held:
            return  # a duplicate: the first copy waits already
        length = len(piece)
        if length > HOLD_MAX_BYTES:
            ep.stats_held_dropped += 1
            return
        while held and (
            len(held) >= HOLD_MAX_CHUNKS
            or self.held_bytes + length > HOLD_MAX_BYTES
            or ep.held_bytes + length > HOLD_MAX_ENDPOINT_BYTES
        ):
            self._drop_held(1)  # the oldest first
        if ep.held_bytes + length > HOLD_MAX_ENDPOINT_BYTES:
            ep.stats_held_dropped += 1  # other channels fill the endpoint's share
            return
        held[chunk] = (bytes(piece), now, delay)
        self.held_bytes += length
        ep.held_bytes += length
        ep.stats_held += 1

    def _drop_held(self, count: int) -> None:
        """Forget the ``count`` oldest held chunks (never verified, never stored)."""
        held = self.held
        ep = self.endpoint
        for _ in range(min(count, len(held))):
            _chunk, (piece, _t, _d) = held.popitem(last=False)
            self.held_bytes -= len(piece)
            ep.held_bytes -= len(piece)
            ep.stats_held_dropped += 1

    def _expire_held(self, now: float) -> None:
        held = self.held
        n = 0
        for _chunk, (_piece, t, _d) in held.items():
            if now - t < HOLD_TIMEOUT:
                break  # arrival order: the rest are younger
            n += 1
        self._drop_held(n)

    def _retry_held(self, now: float) -> None:
        """Check the held chunks again: hashes, a signed munro or the handshake reply arrived.

        A chunk verified here is stored and ACKed like any other; one that fails is treated
        like any failing DATA (§5.2: the hashes it is checked against are proven by the
        root). Passes repeat while chunks verify, since one verified chunk's path can prove
        the next (in-order push sends each chunk's uncles only once, §5.4); each pass but the
        last verifies at least one chunk, so at most HOLD_MAX_CHUNKS + 1 passes.
        """
        self._expire_held(now)
        content: SwarmContent = self.swarm.content
        ep = self.endpoint
        progress = True
        while progress and self.held and self.state is not ChannelState.CLOSED:
            progress = False
            for chunk, (piece, _t, delay) in list(self.held.items()):
                if chunk in content.have:
                    self._unhold(chunk)  # it came again meanwhile and verified then
                    ep.stats_held_dropped += 1
                    continue
                ok = content.verify_and_store(chunk, piece)
                if ok is None:
                    continue
                self._unhold(chunk)
                if not ok:
                    ep.integrity_failure(self, chunk)
                    self.close(f"chunk {chunk} failed verification")
                    return
                ep.stats_held_verified += 1
                self._chunk_arrived(chunk, len(piece), True, delay)
                progress = True

    def _unhold(self, chunk: int) -> None:
        piece, _t, _d = self.held.pop(chunk)
        self.held_bytes -= len(piece)
        self.endpoint.held_bytes -= len(piece)

    def _on_ack(self, msg: Ack, now: float) -> None:
        start, end = msg.start, msg.end
        if end < start:
            return
        if len(self.peer_have) < MAX_HAVE_INTERVALS:
            self.peer_have.add(start, end)
        acked = 0
        in_flight = self.in_flight
        sample_time: float | None = None
        # Walk whichever is smaller, the range or what is in flight: a hostile ACK of 2^32
        # chunks must cost no more than an honest one.
        if end - start < len(in_flight):
            candidates: list[int] | range = range(start, end + 1)
        else:
            candidates = [c for c in in_flight if start <= c <= end]
        seqs = self.in_flight_seq
        newest = self.highest_acked_seq
        for chunk in candidates:
            sent = in_flight.pop(chunk, None)
            if sent is not None:
                acked += self.chunk_size
                sample_time = sent
                newest = max(newest, seqs.pop(chunk, 0))
        self.highest_acked_seq = newest
        probe = self.multi_data_probe
        if probe is not None and start <= probe <= end and self.multi_data_ok is None:
            self.multi_data_ok = True  # the peer takes several DATA per datagram (§8.6)
        if acked:
            if sample_time is not None:
                rtt = now - sample_time
                self.srtt = rtt if self.srtt is None else 0.875 * self.srtt + 0.125 * rtt
                self.ledbat.on_rtt_sample(rtt, now)
            self.ledbat.on_ack(acked, msg.delay_sample, now)
            if self.state is ChannelState.ESTABLISHED:
                self._fast_repair(now)
        self._mark()

    def _fast_repair(self, now: float) -> None:
        """Resend at once the pushed chunks that FAST_REPAIR_REORDER_SHARE says are lost.

        Only chunks of an unconfirmed early push are watched (``repairable``, at most
        ``push_head``): they all go out at once, and the loss of one of their datagrams (say
        the one with our reply) would otherwise be noticed only at the RTO. Other DATA keeps
        LEDBAT's RTO (RFC 6817). A chunk overtaken but not yet late arms a timer
        (``repair_at``) for the moment it will be.
        """
        repairable = self.repairable
        self.repair_at = 0.0
        if not repairable:
            return
        in_flight = self.in_flight
        seqs = self.in_flight_seq
        srtt = self.srtt
        if srtt is None:
            return  # no ACK yet: nothing overtook anything
        late_after = srtt * (1.0 + FAST_REPAIR_REORDER_SHARE)
        newest = self.highest_acked_seq
        lost: list[int] = []
        for chunk in list(repairable):
            seq = seqs.get(chunk)
            sent = in_flight.get(chunk)
            if seq is None or sent is None:
                repairable.discard(chunk)  # acknowledged
            elif seq < newest:  # a chunk sent after it was acknowledged
                due = sent + late_after
                if now >= due:
                    repairable.discard(chunk)
                    del in_flight[chunk]
                    del seqs[chunk]
                    if chunk not in self.peer_have:
                        lost.append(chunk)
                else:
                    self.repair_at = due if not self.repair_at else min(self.repair_at, due)
        if lost:
            self.endpoint.stats_fast_repairs += len(lost)
            self.repair_credit = len(lost)
            self._requeue_lost(lost, now, self.ledbat.rto())
            self._mark()

    def _on_have(self, start: int, end: int) -> None:
        if end < start or len(self.peer_have) >= MAX_HAVE_INTERVALS:
            return
        self.peer_have.add(start, end)
        # §3.8: a HAVE cancels the peer's REQUESTs to us for what it now has: the send path
        # skips chunks in peer_have, so nothing needs to be searched here.
        self.swarm.peer_has(start, end)
        self._mark()

    def _on_request(self, start: int, end: int) -> None:
        if end < start or self.queued_request_chunks >= MAX_QUEUED_REQUESTS * 64:
            return
        # Only what we hold can be served: clip to it, so a hostile range costs nothing.
        last = self.swarm.content.have.last
        if last is None:
            return
        end = min(end, last)
        if start > end:
            return
        if len(self.peer_requests) >= MAX_QUEUED_REQUESTS:
            return
        if not self.cancelled.is_empty():
            self.cancelled.remove(start, end)  # asked for again
        self.peer_requests.append([start, end])
        self.queued_request_chunks += end - start + 1
        self._mark()

    def _cancel(self, start: int, end: int) -> None:
        """CANCEL (§3.8): the send path skips cancelled chunks, in O(log n) per message
        however many REQUESTs are queued."""
        if end >= start and len(self.cancelled) < MAX_HAVE_INTERVALS:
            self.cancelled.add(start, end)

    def _on_pex_request(self, now: float) -> None:
        swarm = self.swarm
        if swarm.membership is not None:
            # §12.2: where membership certificates are in use, bare addresses (PEX_RESv4/v6,
            # for benign networks only, §3.10.1) are never given out. The replies share one
            # control datagram, so only as many as fit the path MTU (§8.1), at least one.
            budget = self.datagram_budget - PEX_CONTROL_RESERVE
            for i, der in enumerate(swarm.pex_certificates(self.addr, now)):
                size = 3 + len(der)  # §8.13: type, 16-bit size, certificate
                if i and size > budget:
                    break
                budget -= size
                self.control_due.append(PexResCert(der))
            self._mark()
            return
        # §8.13: a requester with a public address must not learn internal ones.
        public_requester = not is_internal_address(self.addr[0])
        for addr in swarm.recent_peers(now, PEX_RECENT, exclude=self.addr):
            if public_requester and is_internal_address(addr[0]):
                continue
            ip = ipaddress.ip_address(addr[0])
            if isinstance(ip, ipaddress.IPv4Address):
                self.control_due.append(PexResV4(ip, addr[1]))
            else:
                self.control_due.append(PexResV6(ip, addr[1]))
        self._mark()

    def request_peers(self) -> None:
        """Ask the peer for other peers of the swarm: queue a PEX_REQ (§3.10.1).

        Sent with the next control datagram, so after the handshake if it is still under
        way; the answers arrive as :class:`~ppsp.peer.endpoint.PeerDiscovered` events.
        """
        if self.state is ChannelState.CLOSED:
            return
        self.control_due.append(PexReq())
        self._mark()

    # ------------------------------------------------------------------ sending

    def flush(self, now: float, out: list[tuple[bytes, Address]]) -> None:
        """Append what this channel has to send now: control, then DATA within the window."""
        if self.state is ChannelState.CLOSED or self.state is ChannelState.HANDSHAKE_SENT:
            return
        ctx = self.ctx
        control: list[Message] = []
        if self.acks_due:
            acks = self.acks_due
            self.acks_due = []
            have = self.swarm.content.have
            # §4.3: HAVE the biggest complete interval around what arrived, then the ACKs.
            last = acks[-1][1]
            cov = have.covering_interval(last)
            if cov is not None:
                control.append(Have(cov[0], cov[1]))
            s0, e0, d0 = acks[0]
            for s, e, d in acks[1:]:
                if s == e0 + 1:
                    e0, d0 = e, d
                else:
                    control.append(Ack(s0, e0, d0))
                    s0, e0, d0 = s, e, d
            control.append(Ack(s0, e0, d0))
        if self.have_due:
            for s, e in self.have_due:
                control.append(Have(s, e))
            self.have_due = []
        if self.control_due:
            control.extend(self.control_due)
            self.control_due = []
        if not self.peer_choked_us:
            control.extend(self._requests(now))
        if control and self.swarm.wire_conversion:
            control = self.swarm.to_wire(control)
        sending = bool(self.peer_requests) and (
            self.state is ChannelState.ESTABLISHED or self.early_push
        )
        if control and sending and self._self_contained():
            self._send_data(now, out, control)  # in the first pushed datagram
            return
        if control:
            self._emit(fastwire.encode_datagram(self.remote_id, control, ctx), out, now)
        if sending:
            self._send_data(now, out)

    def _self_contained(self) -> bool:
        """Whether pushed datagrams must each verify on their own (``self_contained_ok``):
        an early push the peer has not confirmed yet (§3.1 step 3) to a peer of ours."""
        return (
            self.state is ChannelState.REPLIED
            and self.self_contained_ok
            and self.reply is not None
            and not self.byte_ranges
        )

    def _requests(self, now: float) -> list[Message]:
        if now < self.stalled_until:
            return []
        want = self.request_window - self.outstanding_count
        peer_have = self.peer_have
        if want < max(1, self.request_window // 4) or peer_have.is_empty():
            return []
        first, last = peer_have.first, peer_have.last
        if (
            first is not None
            and last is not None
            and self.swarm.content.have.contains_range(first, last)
        ):
            # The peer offers nothing we lack (a seeder's flush, once per ACK): the picker
            # would find nothing, so do not build its sets.
            return []
        picks = self.swarm.pick(self, want)
        msgs: list[Message] = []
        for s, e in picks:
            self.outstanding.add(s, e)
            self.outstanding_count += e - s + 1
            self.swarm.pending.add(s, e)
            msgs.append(Request(s, e))
        return msgs

    def _batch_limit(self) -> int:
        """DATA messages per datagram (§8.6 allows several with a fixed chunk size).

        Several are sent only to a peer that announced the messages it supports (option 8,
        which libswift does not send, and libswift takes a DATA to run to the end of the
        datagram), only as far as the path MTU allows (§8.1), and only after one probe
        datagram of two was acknowledged, as §8.1's PLPMTUD probing suggests.
        """
        if self.multi_data_ok:
            return self.max_batch
        if self.multi_data_ok is None and self.max_batch > 1 and self.multi_data_probe is None:
            return 2
        return 1

    def _next_chunk(self) -> int | None:
        """Take the next chunk to send from the peer's queued REQUESTs (and pushes), skipping
        what we lack, what the peer has (an implicit CANCEL) and what it CANCELled (§3.8);
        None when the queue is empty."""
        requests = self.peer_requests
        have = self.swarm.content.have
        peer_have = self.peer_have
        cancelled = self.cancelled if not self.cancelled.is_empty() else None
        while requests:
            head = requests[0]
            chunk = head[0]
            if chunk not in have:
                # Skip the whole gap at once: a REQUEST over chunks we lack costs nothing.
                gap = have.missing(chunk, head[1])
                skip_to = gap[0][1] + 1 if gap else chunk + 1
                if skip_to > head[1]:
                    requests.popleft()
                    self.queued_request_chunks -= head[1] - chunk + 1
                else:
                    self.queued_request_chunks -= skip_to - chunk
                    head[0] = skip_to
                continue
            skip = None
            if chunk in peer_have:
                skip = peer_have.covering_interval(chunk)  # it has them: implicit CANCEL
            elif cancelled and chunk in cancelled:
                skip = cancelled.covering_interval(chunk)
            if skip is not None:
                last = min(skip[1], head[1])
                if last == head[1]:
                    requests.popleft()
                else:
                    head[0] = last + 1
                self.queued_request_chunks -= last - chunk + 1
                continue
            if chunk == head[1]:
                requests.popleft()
            else:
                head[0] = chunk + 1
            self.queued_request_chunks -= 1
            if chunk in self.in_flight:
                continue
            return chunk
        return None

    def _send_data(
        self, now: float, out: list[tuple[bytes, Address]], lead: list[Message] | None = None
    ) -> None:
        """DATA within the LEDBAT window. ``lead``: control messages to put in front of the
        first datagram."""
        content = self.swarm.content
        ledbat = self.ledbat
        size = self.chunk_size
        in_flight = self.in_flight
        ts = self._ts_us(now)
        remote = self.remote_id
        peer_hashes = self.peer_hashes
        ctx = self.ctx
        byte_ranges = ctx.chunk_addressing.is_byte_range
        limit = 1 if byte_ranges else self._batch_limit()
        batch: list[Message] = []
        batch_chunks: list[int] = []
        batch_bytes = 0
        budget = self.datagram_budget
        spec = ctx.chunk_addressing.spec_size
        contained = self._self_contained()
        reply = self.reply
        #: Self-contained mode: the hashes the datagram under way carries already.
        dgram_known: set[int] = set()
        while ledbat.can_send(len(in_flight) * size) or self.repair_credit:
            chunk = self._next_chunk()
            if chunk is None:
                break
            if self.repair_credit:
                self.repair_credit -= 1
            try:
                payload = content.read_chunk(chunk)
            except KeyError:
                # The chunk left the store after it was queued (a cache eviction): skip it;
                # the peer requests it again, here or elsewhere, when its request times out.
                self.unreadable += 1
                continue
            if contained:
                # Self-contained datagrams (see ``self_contained_ok``): each starts with our
                # reply, HANDSHAKE and HAVEs (the HAVEs let the peer REQUEST the rest, §3.3),
                # then for each chunk the peak hashes (§5.6) and uncles (§5.4) not in this
                # datagram yet, INTEGRITY before DATA (§5.3): it verifies against the root
                # hash alone, whatever the order of arrival, even if the others are lost.
                assert reply is not None
                for _attempt in range(2):
                    fresh = not batch_chunks
                    probe = PeerHashes(ChunkSet())
                    probe.known = set() if fresh else set(dgram_known)
                    integrity = content.integrity_for(chunk, probe)
                    piece = _wire_size(integrity, ctx) + spec + 9 + len(payload)
                    if fresh:
                        # Every datagram starts with our reply; the first has the other
                        # control messages (``lead``) too.
                        head: list[Message] = [*reply, *(lead or [])]
                        piece += len(fastwire.encode_datagram(0, head, ctx)) - 4
                        if piece > budget:
                            break  # too big for the path MTU (§8.1): hashes go incrementally
                        batch = head
                        lead = None
                    elif len(batch_chunks) >= limit or batch_bytes + piece > budget:
                        self._emit_batch(batch, batch_chunks, out, now)
                        batch, batch_chunks, batch_bytes = [], [], 0
                        continue
                    batch.extend(integrity)
                    batch.append(Data(chunk, chunk, ts, payload))
                    batch_chunks.append(chunk)
                    batch_bytes += piece
                    dgram_known = probe.known
                    peer_hashes.known.update(probe.known)
                    self._sent(chunk, now)
                    self.bytes_sent += len(payload)
                    if len(payload) < size:  # §8.6: the short last chunk ends the datagram
                        self._emit_batch(batch, batch_chunks, out, now)
                        batch, batch_chunks, batch_bytes = [], [], 0
                    break
                if chunk in in_flight:
                    continue
                contained = False  # did not fit: this chunk and the rest go the usual way
                if batch_chunks:
                    self._emit_batch(batch, batch_chunks, out, now)
                    batch, batch_chunks, batch_bytes = [], [], 0
            if lead:
                self._emit(fastwire.encode_datagram(remote, lead, ctx), out, now)
                lead = None
            integrity = content.integrity_for(chunk, peer_hashes)
            self._sent(chunk, now)
            self.bytes_sent += len(payload)
            if limit == 1:
                if byte_ranges:
                    s, e = chunk * size, chunk * size + len(payload) - 1
                    integrity = self.swarm.to_wire(integrity)  # type: ignore[assignment,arg-type]
                else:
                    s = e = chunk
                if any(type(m) is SignedIntegrity for m in integrity):
                    msgs: list[Message] = [*integrity, Data(s, e, ts, payload)]
                    dgram = fastwire.encode_datagram(remote, msgs, ctx)
                else:
                    hashes = cast(list[Integrity], integrity)  # no SIGNED_INTEGRITY here
                    dgram = fastwire.encode_integrity_data(remote, hashes, s, e, ts, payload, ctx)
                self._emit(dgram, out, now)
                continue
            piece = _wire_size(integrity, ctx) + spec + 9 + len(payload)
            if batch and (len(batch_chunks) >= limit or batch_bytes + piece > budget):
                self._emit_batch(batch, batch_chunks, out, now)
                batch, batch_chunks, batch_bytes = [], [], 0
            batch.extend(integrity)
            batch.append(Data(chunk, chunk, ts, payload))
            batch_chunks.append(chunk)
            batch_bytes += piece
            if len(payload) < size:  # §8.6: the short last chunk travels alone at the tail
                self._emit_batch(batch, batch_chunks, out, now)
                batch, batch_chunks, batch_bytes = [], [], 0
        if batch_chunks:
            self._emit_batch(batch, batch_chunks, out, now)
        if lead:
            self._emit(fastwire.encode_datagram(remote, lead, ctx), out, now)

    def _sent(self, chunk: int, now: float) -> None:
        """DATA for ``chunk`` goes out now: in flight, in send order (fast repair)."""
        self.in_flight[chunk] = now
        self.in_flight_order.append((now, chunk))
        self.send_seq += 1
        self.in_flight_seq[chunk] = self.send_seq
        if self.state is ChannelState.REPLIED:
            self.repairable.add(chunk)  # an unconfirmed early push: see _fast_repair

    def _emit_batch(
        self, msgs: list[Message], chunks: list[int], out: list[tuple[bytes, Address]], now: float
    ) -> None:
        if len(chunks) > 1 and self.multi_data_ok is None and self.multi_data_probe is None:
            self.multi_data_probe = chunks[-1]
        self._emit(fastwire.encode_datagram(self.remote_id, msgs, self.ctx), out, now)

    def _emit(self, dgram: bytes, out: list[tuple[bytes, Address]], now: float) -> None:
        out.append((dgram, self.addr))
        self.last_send = now
        self.datagrams_since_receive += 1

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float:
        held = self.held
        if held:
            oldest = next(iter(held.values()))[1] + HOLD_TIMEOUT
            if self.state is ChannelState.HANDSHAKE_SENT:
                return min(self.next_handshake, oldest)
            return min(oldest, self._next_deadline())
        return self._next_deadline()

    def _next_deadline(self) -> float:
        if self.state is ChannelState.HANDSHAKE_SENT:
            return self.next_handshake  # no keep-alives before there is a channel
        t = self.last_send + KEEPALIVE_INTERVAL
        if self.state is ChannelState.REPLIED:
            t = min(t, self.created + HALF_OPEN_TIMEOUT)
        order = self.in_flight_order
        while order and self.in_flight.get(order[0][1]) != order[0][0]:
            order.popleft()  # acknowledged meanwhile
        if order:
            t = min(t, order[0][0] + self.ledbat.rto())
        if self.outstanding_count:
            t = min(t, self.last_data_received + REQUEST_STALL)
        if self.stalled_until:
            t = min(t, self.stalled_until)
        if self.repair_at:
            t = min(t, self.repair_at)
        return t

    def on_timer(self, now: float, out: list[tuple[bytes, Address]]) -> None:
        if self.state is ChannelState.CLOSED:
            return
        if self.held:
            self._expire_held(now)
        if (
            now - self.last_receive > DEAD_PEER_TIMEOUT
            and self.datagrams_since_receive >= DEAD_PEER_DATAGRAMS
        ):
            self.close("peer dead: no datagram for 3 minutes (§3.12)")
            return
        if self.state is ChannelState.REPLIED and self.created + HALF_OPEN_TIMEOUT <= now:
            self.close("handshake not confirmed (§3.1 step 3)")
            return
        if self.state is ChannelState.HANDSHAKE_SENT:
            if now >= self.next_handshake:
                self.handshake_attempts += 1
                self.next_handshake = now + HANDSHAKE_RETRY * (2 ** min(self.handshake_attempts, 6))
                self._emit(self.swarm.initiating_handshake(self), out, now)
            return
        if self.repair_at and now >= self.repair_at:
            self._fast_repair(now)
        self._expire_in_flight(now)
        if self.stalled_until and now >= self.stalled_until:
            self.stalled_until = 0.0  # this peer may be asked again
        self._expire_requests(now)
        if self.last_send + KEEPALIVE_INTERVAL <= now:
            self._emit(self.remote_id.to_bytes(4, "big"), out, now)  # §8.14 keep-alive
        self._mark()

    def _expire_in_flight(self, now: float) -> None:
        """DATA not ACKed within the RTO is taken as lost (§3.6 / LEDBAT): shrink the window
        once per round trip and queue the chunks again if the peer still lacks them."""
        order = self.in_flight_order
        if not order:
            return
        rto = self.ledbat.rto()
        lost: list[int] = []
        while order and order[0][0] + rto <= now:
            sent, chunk = order.popleft()
            if self.in_flight.get(chunk) == sent:
                del self.in_flight[chunk]
                self.in_flight_seq.pop(chunk, None)
                if chunk not in self.peer_have:
                    lost.append(chunk)
        if lost and self.state is not ChannelState.ESTABLISHED:
            # An early push (Endpoint.address_validated) not yet confirmed by the peer is
            # sent once, never resent: a spoofed handshake must not keep us sending (§12.1).
            lost = []
        if lost:
            if self.multi_data_ok is None and self.multi_data_probe in lost:
                self.multi_data_ok = False  # the probe got lost: one DATA per datagram
                log.info("%s takes one DATA per datagram", self.addr)
            self._requeue_lost(lost, now, rto)
        # Keep the order deque from growing with entries already ACKed.
        while order and order[0][1] not in self.in_flight:
            order.popleft()

    def _requeue_lost(self, lost: list[int], now: float, rto: float) -> None:
        """Queue lost DATA again, ahead of the REQUESTs, and shrink LEDBAT's window once per
        round trip (RFC 6817 §2.4.1)."""
        if now - self.last_loss_reaction > (self.srtt or rto):
            self.ledbat.on_loss(now)
            self.last_loss_reaction = now
        # Hashes sent with lost DATA may be lost too: the retransmission resends what
        # the peer's acknowledged chunks do not imply.
        self.peer_hashes.known.clear()
        lost.sort()
        run_start = prev = lost[0]
        front: list[list[int]] = []
        for c in lost[1:]:
            if c != prev + 1:
                front.append([run_start, prev])
                run_start = c
            prev = c
        front.append([run_start, prev])
        self.peer_requests.extendleft(reversed(front))
        self.queued_request_chunks += len(lost)

    def _expire_requests(self, now: float) -> None:
        if not self.outstanding_count or self.last_data_received + REQUEST_STALL > now:
            return
        # Nothing arrived for a while: give everything outstanding back to the picker, so it
        # is asked for again (here or at another peer), and request less from this peer.
        self.request_window = max(REQUEST_WINDOW_MIN, self.request_window // 2)
        self.last_data_received = now
        self.stalled_until = now + REQUEST_STALL
        self._return_outstanding()
