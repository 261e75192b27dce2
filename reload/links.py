"""RELOAD overlay links (RFC 6940 §6.6): TLS/TCP with framing, DTLS/UDP with Simple Reliability.

Layers, bottom up, each sans-IO (bytes in, bytes out, time injected):

* the secure channel — a pyOpenSSL ``SSL.Connection`` on memory BIOs (DESIGN §3): DTLS 1.2
  with cookie exchange and a 1200-byte MTU for DTLS-UDP-SR-NO-ICE (link type 3, §6.6.6), TLS
  1.2/1.3 for TLS-TCP-FH-NO-ICE (link type 4, §6.6.5). Both sides present certificates and
  verify the peer's against the overlay's trust roots (or accept a self-signed one when the
  overlay permits it); then the peer's certificate must carry the Node-ID we meant to reach
  (§6.6: "the peer MUST verify that the Node-ID ... matches").
* :class:`FrameLayer` — the framing header (§6.6.2): data frames with per-connection sequence
  numbers, acks with the received bitmask, and over DTLS the stop-and-wait sender of Simple
  Reliability (§6.6.3.1): one unacknowledged message, RTO 500 ms doubled on each retry, a new
  sequence number per retry, at most 5 transmissions, 10 ms after an ack before the next.
* :class:`DtlsLink` / :class:`TlsLink` — the two glued together, reporting
  :class:`Connected`, :class:`MessageReceived`, :class:`MessageTooLarge` and
  :class:`LinkFailed` events; and thin asyncio adapters (``connect_dtls`` / ``serve_dtls`` /
  ``connect_tls`` / ``serve_tls``).

The framing header is written here with ``struct``: the documented fast path, every data frame
and ack of a link goes through it (DESIGN §3). ``reload.wire`` holds the normative Construct
definition of FramedMessage; the frames are its model classes (``FramedData``, ``FramedAck``),
and the property test ``test_framing_fast_path_equals_the_normative_codec``
(tests/test_reload_links.py) proves encoder and decoder byte-equal to it on every frame. Node-IDs
in certificates and the self-signed rules come from ``reload.security``. Links carry whole RELOAD
messages as opaque bytes: decoding, signatures, fragmentation (``reload.fragments``) and
end-to-end reliability (``reload.transactions``) are the node's business.

Receiver duplicates: Simple Reliability gives every retransmission a new sequence number, so a
message whose ack was lost is delivered twice, and nothing on the wire tells the receiver. The
RFC leaves this to the end-to-end layer (§6.2.1: duplicate requests are answered from the
response cache, a second response matches no pending transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import hashlib
import hmac
import logging
import secrets
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from OpenSSL import SSL, crypto

from interop import capture
from ppsp.linkemu import wrap_datagram, wrap_stream
from reload import security
from reload.fragments import DEFAULT_MAX_MESSAGE_SIZE as DEFAULT_MAX_MESSAGE_SIZE
from reload.messages import FramedAck, FramedData, FramedMessageType, OverlayLinkType

log = logging.getLogger(__name__)

#: OverlayLinkType values (§6.5.1.1, registry §14.10), the message model's.
LINK_TYPE_DTLS_UDP_SR_NO_ICE = OverlayLinkType.DTLS_UDP_SR_NO_ICE
LINK_TYPE_TLS_TCP_FH_NO_ICE = OverlayLinkType.TLS_TCP_FH_NO_ICE
#: FramedMessageType (§6.6.2), the message model's.
FRAME_DATA = FramedMessageType.DATA
FRAME_ACK = FramedMessageType.ACK
#: §6.6.2: message<0..2^24-1>.
MAX_FRAMED_MESSAGE = (1 << 24) - 1
#: DTLS record MTU (DESIGN §3); RELOAD fragments to fit (§6.7).
DTLS_MTU = 1200
#: §6.6.3.1 static RTO, retries, and the pause after an ack.
DEFAULT_RTO = 0.5
MAX_TRANSMISSIONS = 5
ACK_GAP = 0.010
#: Messages queued on one link before send() refuses more.
MAX_SEND_QUEUE = 256
#: A link that is not connected after this long is failed.
HANDSHAKE_TIMEOUT = 30.0
#: §6.6.5: over TCP an unacknowledged frame this old means the link failed ("RECOMMENDED
#: that such a connection be retained for 30 seconds").
TCP_ACK_TIMEOUT = 30.0
#: Frames remembered for the TCP ack timeout (older ones count as acknowledged).
MAX_UNACKED_TRACKED = 1024
#: After MessageTooLarge, how long the node has to send its error before the link closes.
TOO_LARGE_GRACE = 1.0

_DATA_HEADER = struct.Struct("!BI")  # type, sequence; then the 24-bit length
_ACK = struct.Struct("!BII")  # type, ack_sequence, received
_DTLS_RECORD_HEADER = struct.Struct("!BHH6sH")  # type, version, epoch, sequence, length

# OpenSSL verify errors we may accept in self-signed mode (depth 0 only).
_X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT = 18
#: OpenSSL's DTLS1_2_VERSION (pyOpenSSL does not export it).
_DTLS1_2_VERSION = 0xFEFD
#: SSL_OP_NO_QUERY_MTU (we set the MTU ourselves) and SSL_OP_COOKIE_EXCHANGE (RFC 6347
#: HelloVerifyRequest); pyOpenSSL types them as optional, OpenSSL always has them.
_OP_NO_QUERY_MTU = 0x00001000
_OP_COOKIE_EXCHANGE = 0x00002000


#: Private keys a TLS/DTLS endpoint can use (what pyOpenSSL accepts).
PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | dsa.DSAPrivateKey
)


class FramingError(ValueError):
    """Bytes that are not a FramedMessage (§6.6.2)."""


class LinkError(RuntimeError):
    """A link that cannot take a message (closed, queue full, message too large)."""


# ------------------------------------------------------------------------- framing header


#: The frames are the message model's FramedMessage classes (§6.6.2), under the names this
#: module has always used for them.
DataFrame = FramedData
AckFrame = FramedAck
Frame = FramedData | FramedAck


def encode_data_frame(sequence: int, message: bytes) -> bytes:
    """``data(128) + sequence(4) + message<0..2^24-1>`` (§6.6.2)."""
    if len(message) > MAX_FRAMED_MESSAGE:
        raise FramingError(f"{len(message)} bytes do not fit message<0..2^24-1>")
    return _DATA_HEADER.pack(FRAME_DATA, sequence & 0xFFFFFFFF) + len(message).to_bytes(3) + message


def encode_ack_frame(ack_sequence: int, received: int) -> bytes:
    """``ack(129) + ack_sequence(4) + received(4)`` (§6.6.2)."""
    return _ACK.pack(FRAME_ACK, ack_sequence & 0xFFFFFFFF, received & 0xFFFFFFFF)


def decode_frame(record: bytes) -> Frame:
    """Decode exactly one FramedMessage (one DTLS record); FramingError otherwise."""
    frame, used = decode_frame_prefix(record)
    if frame is None:
        raise FramingError(f"truncated frame ({len(record)} bytes)")
    if used != len(record):
        raise FramingError(f"{len(record) - used} bytes after the frame")
    return frame


def decode_frame_prefix(buf: bytes) -> tuple[Frame | None, int]:
    """Decode the frame at the start of a stream; ``(None, 0)`` if more bytes are needed."""
    if not buf:
        return None, 0
    kind = buf[0]
    if kind == FRAME_DATA:
        if len(buf) < 8:
            return None, 0
        _, sequence = _DATA_HEADER.unpack_from(buf)
        length = int.from_bytes(buf[5:8])
        if len(buf) < 8 + length:
            return None, 0
        return DataFrame(sequence, bytes(buf[8 : 8 + length])), 8 + length
    if kind == FRAME_ACK:
        if len(buf) < _ACK.size:
            return None, 0
        _, ack_sequence, received = _ACK.unpack_from(buf)
        return AckFrame(ack_sequence, received), _ACK.size
    raise FramingError(f"unknown FramedMessageType {kind}")


def data_frame_length(buf: bytes) -> int | None:
    """The message length a stream's next data frame announces, once its header is in."""
    if len(buf) >= 8 and buf[0] == FRAME_DATA:
        return int.from_bytes(buf[5:8])
    return None


class ReceivedWindow:
    """The 32 most recent sequence numbers received, for the ack bitmask (§6.6.2).

    For an ack of sequence N, bit (N − M) — value ``1 << (N − M)`` — is set for every
    previously received M with N − 32 < M < N. (The RFC says "the N-M bit" without fixing
    the bit order; we count from the least significant bit, so bit 0 is never used.)
    """

    def __init__(self) -> None:
        self._recent: deque[int] = deque(maxlen=32)

    def ack_for(self, sequence: int) -> int:
        """The received bitmask for an ack of ``sequence``; then remember ``sequence``."""
        received = 0
        for previous in self._recent:
            distance = (sequence - previous) & 0xFFFFFFFF
            if 0 < distance < 32:
                received |= 1 << distance
        self._recent.append(sequence)
        return received


def acked_sequences(ack: AckFrame) -> set[int]:
    """Every sequence number an ack reports as received."""
    seqs = {ack.ack_sequence}
    for bit in range(1, 32):
        if ack.received >> bit & 1:
            seqs.add((ack.ack_sequence - bit) & 0xFFFFFFFF)
    return seqs


@dataclass
class _Outstanding:
    message: bytes
    sequences: set[int]
    transmissions: int
    rto: float
    deadline: float


class FrameLayer:
    """Framing header and (``reliable=True``) Simple Reliability's stop-and-wait sender.

    Feed decoded records with :meth:`receive_record`; take frames to put on the secure
    channel from :meth:`frames_to_send`. Over TCP (``reliable=False``) every message is sent
    at once and acks are produced but only measure the link (§6.6.5).
    """

    def __init__(
        self,
        *,
        reliable: bool,
        rto: float = DEFAULT_RTO,
        max_transmissions: int = MAX_TRANSMISSIONS,
        max_queue: int = MAX_SEND_QUEUE,
        ack_gap: float = ACK_GAP,
        tcp_ack_timeout: float = TCP_ACK_TIMEOUT,
    ) -> None:
        self.reliable = reliable
        self.tcp_ack_timeout = tcp_ack_timeout
        self._unacked: dict[int, float] = {}  # TCP: sequence -> time sent
        self.rto = rto
        self.max_transmissions = max_transmissions
        self.max_queue = max_queue
        self.ack_gap = ack_gap
        self._next_sequence = 0  # §6.6.2: "Initially, the value is zero"
        self._queue: deque[bytes] = deque()
        self._out: list[bytes] = []
        self._outstanding: _Outstanding | None = None
        self._quiet_until = 0.0
        self._window = ReceivedWindow()
        self.failed: str | None = None
        self.retransmissions = 0

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing unacknowledged."""
        return not self._queue and self._outstanding is None

    def send(self, message: bytes, now: float) -> None:
        if len(self._queue) >= self.max_queue:
            raise LinkError(f"send queue full ({self.max_queue} messages)")
        if len(message) > MAX_FRAMED_MESSAGE:
            raise LinkError(f"{len(message)} bytes do not fit a frame")
        self._queue.append(message)
        self._pump(now)

    def _take_sequence(self) -> int:
        sequence = self._next_sequence
        self._next_sequence = (self._next_sequence + 1) & 0xFFFFFFFF
        return sequence

    def _pump(self, now: float) -> None:
        if not self.reliable:
            while self._queue:
                sequence = self._take_sequence()
                self._out.append(encode_data_frame(sequence, self._queue.popleft()))
                if len(self._unacked) < MAX_UNACKED_TRACKED:
                    self._unacked[sequence] = now
            return
        if self._outstanding is None and self._queue and now >= self._quiet_until:
            message = self._queue.popleft()
            sequence = self._take_sequence()
            self._outstanding = _Outstanding(message, {sequence}, 1, self.rto, now + self.rto)
            self._out.append(encode_data_frame(sequence, message))

    def receive_record(self, record: bytes, now: float) -> list[bytes]:
        """Process one FramedMessage; return the message it delivers, if any."""
        return self.receive_frame(decode_frame(record), now)

    def receive_frame(self, frame: Frame, now: float) -> list[bytes]:
        if isinstance(frame, DataFrame):
            # §6.6.2: "the receiver ... SHOULD immediately send an ACK message".
            self._out.append(encode_ack_frame(frame.sequence, self._window.ack_for(frame.sequence)))
            return [frame.message]
        acked = acked_sequences(frame)
        for sequence in acked & self._unacked.keys():
            del self._unacked[sequence]
        outstanding = self._outstanding
        if outstanding is not None and outstanding.sequences & acked:
            self._outstanding = None
            self._quiet_until = now + self.ack_gap  # §6.6.3.1: wait 10 ms after an ACK
        return []

    def frames_to_send(self, now: float) -> list[bytes]:
        self._pump(now)
        out, self._out = self._out, []
        return out

    def next_timer(self) -> float | None:
        if self._outstanding is not None:
            return self._outstanding.deadline
        if self._queue and self.reliable:
            return self._quiet_until
        if self._unacked:
            return min(self._unacked.values()) + self.tcp_ack_timeout
        return None

    def handle_timer(self, now: float) -> None:
        if self._unacked and now >= min(self._unacked.values()) + self.tcp_ack_timeout:
            # §6.6.5: the framing header's acks detect a dead TCP link long before TCP does.
            self.failed = f"no ack within {self.tcp_ack_timeout:g} s"
            self._unacked.clear()
            return
        outstanding = self._outstanding
        if outstanding is not None and now >= outstanding.deadline:
            if outstanding.transmissions >= self.max_transmissions:
                # §6.6.3.1: after 5 transmissions the sender SHOULD close the connection.
                self.failed = f"no ack after {outstanding.transmissions} transmissions"
                self._outstanding = None
                return
            sequence = self._take_sequence()  # §6.6.3.1: a new sequence number per retry
            outstanding.sequences.add(sequence)
            outstanding.transmissions += 1
            outstanding.rto *= 2  # §6.6.3.1: "MUST double the time to wait"
            outstanding.deadline = now + outstanding.rto
            self.retransmissions += 1
            self._out.append(encode_data_frame(sequence, outstanding.message))
        self._pump(now)


# ------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """What a node needs to open links in one overlay."""

    overlay: str
    certificate: x509.Certificate
    private_key: PrivateKey
    trust_roots: tuple[x509.Certificate, ...] = ()
    self_signed_permitted: bool = False
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    rto: float = DEFAULT_RTO
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    mtu: int = DTLS_MTU
    node_id_length: int = 16
    self_signed_digest: str = "sha256"
    cookie_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))


def node_ids_in_certificate(cert: x509.Certificate, config: LinkConfig) -> list[bytes]:
    """Node-IDs a certificate carries for the link's overlay (SAN URIs, §11.3)."""
    return security.node_ids_from_certificate(cert, config.overlay, config.node_id_length)


# ------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Connected:
    peer_node_id: bytes
    peer_certificate: x509.Certificate


@dataclass(frozen=True, slots=True)
class MessageReceived:
    message: bytes


@dataclass(frozen=True, slots=True)
class MessageTooLarge:
    """§6.6: the peer sent more than max-message-size. The node SHOULD answer with
    Error_Message_Too_Large (send it, then call ``close()``); the link closes on its own
    after a short grace period otherwise."""

    size: int
    message_prefix: bytes  # as much of the message as arrived (forwarding header, if any)


@dataclass(frozen=True, slots=True)
class LinkFailed:
    reason: str


LinkEvent = Connected | MessageReceived | MessageTooLarge | LinkFailed


class LinkState(enum.Enum):
    HANDSHAKING = "handshaking"
    CONNECTED = "connected"
    CLOSING = "closing"  # message too large: one last send, then closed
    CLOSED = "closed"


# ----------------------------------------------------------------------------- the links


def _link_of(conn: SSL.Connection) -> Link:
    link = conn.get_app_data()
    assert isinstance(link, Link)
    return link


@functools.lru_cache(maxsize=32)
def _make_context(config: LinkConfig, *, dtls: bool) -> SSL.Context:
    """One SSL context per (overlay identity, link type), shared by its links: the
    certificate, key and trust store load once. Callbacks find their link via app data."""
    ctx = SSL.Context(SSL.DTLS_METHOD if dtls else SSL.TLS_METHOD)
    if dtls:
        ctx.set_min_proto_version(_DTLS1_2_VERSION)
        ctx.set_options(_OP_NO_QUERY_MTU | _OP_COOKIE_EXCHANGE)
        ctx.set_cookie_generate_callback(lambda conn: _link_of(conn)._cookie())
        ctx.set_cookie_verify_callback(
            lambda conn, cookie: hmac.compare_digest(cookie, _link_of(conn)._cookie())
        )
    else:
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.use_certificate(config.certificate)
    ctx.use_privatekey(config.private_key)
    ctx.check_privatekey()
    store = ctx.get_cert_store()
    assert store is not None
    for root in config.trust_roots:
        store.add_cert(crypto.X509.from_cryptography(root))

    def verify(conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int, ok: int) -> bool:
        if ok:
            return True
        if (
            config.self_signed_permitted
            and depth == 0
            and errnum == _X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
        ):
            return True  # signature checked after the handshake (_check_peer)
        _link_of(conn)._verify_errors.append(f"certificate verify error {errnum} at depth {depth}")
        return False

    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
    return ctx


class Link:
    """One overlay link to one peer, sans-IO. See :class:`DtlsLink` and :class:`TlsLink`."""

    link_type: int
    _dtls: bool

    def __init__(
        self,
        config: LinkConfig,
        *,
        initiator: bool,
        now: float,
        expected_node_id: bytes | None = None,
        peer_address: object = None,
    ) -> None:
        self.config = config
        self.initiator = initiator
        self.expected_node_id = expected_node_id
        self.peer_address = peer_address
        self.peer_node_id: bytes | None = None
        self.state = LinkState.HANDSHAKING
        self._now = now
        self._started = now
        self._events: list[LinkEvent] = []
        self._verify_errors: list[str] = []
        self._close_at: float | None = None
        self.frames = FrameLayer(reliable=self._dtls, rto=config.rto)
        self.dropped = 0  # records that failed to decode, logged and ignored
        #: Sees every plaintext frame sent (True) or record/stream bytes received (False):
        #: the adapters record them for ``--pcap`` (interop/capture.py).
        self.tap: Callable[[bool, bytes], None] | None = None
        self._conn = SSL.Connection(_make_context(config, dtls=self._dtls), None)
        self._conn.set_app_data(self)
        if initiator:
            self._conn.set_connect_state()
        else:
            self._conn.set_accept_state()
        if self._dtls:
            self._conn.set_ciphertext_mtu(config.mtu)
        self._pending_plaintext: list[bytes] = []
        self._handshake()

    # -- public API

    @property
    def usable(self) -> bool:
        """Connected, or closing after MessageTooLarge with its error still to deliver."""
        return self.state in (LinkState.CONNECTED, LinkState.CLOSING)

    def send(self, message: bytes, now: float | None = None) -> None:
        """Queue one RELOAD message for the peer (sent once the handshake completes)."""
        if now is not None:
            self._now = now
        if self.state is LinkState.CLOSED:
            raise LinkError("link is closed")
        if len(message) > self.config.max_message_size:
            raise LinkError(
                f"{len(message)} bytes > max-message-size {self.config.max_message_size}"
            )
        self.frames.send(message, self._now)
        self._flush_frames()

    def pop_events(self) -> list[LinkEvent]:
        events, self._events = self._events, []
        return events

    def close(self, reason: str = "closed locally") -> None:
        if self.state is LinkState.CLOSED:
            return
        self._flush_frames()
        with contextlib.suppress(SSL.Error):
            self._conn.shutdown()
        self._fail(reason)

    def next_timer(self) -> float | None:
        if self.state is LinkState.CLOSED:
            return None
        timers: list[float] = []
        if self.state is LinkState.HANDSHAKING:
            timers.append(self._started + self.config.handshake_timeout)
            if self._dtls:
                timeout = self._conn.DTLSv1_get_timeout()
                if timeout is not None:
                    timers.append(self._now + timeout)
        frame_timer = self.frames.next_timer()
        if frame_timer is not None:
            timers.append(frame_timer)
        if self._close_at is not None:
            timers.append(self._close_at)
        return min(timers, default=None)

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self.state is LinkState.CLOSED:
            return
        if self._close_at is not None and now >= self._close_at:
            self.close("message too large")
            return
        if self.state is LinkState.HANDSHAKING:
            if now >= self._started + self.config.handshake_timeout:
                self._fail("handshake timeout")
                return
            if self._dtls:
                # OpenSSL keeps DTLS handshake timers on its own clock; this only asks it to
                # retransmit a flight if that clock says so.
                self._conn.DTLSv1_handle_timeout()
            return
        self.frames.handle_timer(now)
        if self.frames.failed is not None:
            self.close(self.frames.failed)
            return
        self._flush_frames()

    # -- internals shared by both link types

    def _cookie(self) -> bytes:
        """A DTLS cookie bound to the peer's address (stateless against spoofed floods)."""
        peer = repr(self.peer_address).encode()
        return hmac.new(self.config.cookie_secret, peer, hashlib.sha256).digest()[:16]

    def _fail(self, reason: str) -> None:
        if self.state is LinkState.CLOSED:
            return
        self.state = LinkState.CLOSED
        log.info("link to %s closed: %s", self.peer_address, reason)
        self._events.append(LinkFailed(reason))

    def _handshake(self) -> None:
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            return
        except SSL.Error as exc:
            detail = "; ".join(self._verify_errors) or str(exc)
            self._fail(f"handshake failed: {detail}")
            return
        self._check_peer()

    def _check_peer(self) -> None:
        peer = self._conn.get_peer_certificate()
        if peer is None:
            self.close("peer sent no certificate")
            return
        cert = peer.to_cryptography()
        node_ids = node_ids_in_certificate(cert, self.config)
        if not node_ids:
            self.close(f"peer certificate carries no Node-ID for overlay {self.config.overlay}")
            return
        if self.config.self_signed_permitted and cert.issuer == cert.subject:
            # §11.3.1: a self-signed certificate's Node-IDs must derive from its public key.
            try:
                for node_id in node_ids:
                    security.check_self_signed(
                        cert, node_id, self.config.self_signed_digest, self.config.overlay
                    )
            except security.SecurityError as exc:
                self.close(f"bad self-signed certificate: {exc}")
                return
        if self.expected_node_id is not None and self.expected_node_id not in node_ids:
            self.close(
                f"peer Node-ID {node_ids[0].hex()} is not the expected "
                f"{self.expected_node_id.hex()}"
            )
            return
        self.peer_node_id = (
            self.expected_node_id if self.expected_node_id is not None else node_ids[0]
        )
        self.state = LinkState.CONNECTED
        self._events.append(Connected(self.peer_node_id, cert))
        self._flush_frames()

    def _flush_frames(self) -> None:
        if self.state not in (LinkState.CONNECTED, LinkState.CLOSING):
            return
        for frame in self.frames.frames_to_send(self._now):
            try:
                if self.tap is not None:
                    self.tap(True, frame)
                if self._dtls:
                    self._conn.send(frame)  # one frame, one DTLS record (§6.6.2)
                else:
                    # pyOpenSSL sets SSL_MODE_ENABLE_PARTIAL_WRITE, so one SSL_write writes
                    # at most one 16 KiB record: a larger TLS frame needs sendall's loop.
                    self._conn.sendall(frame)
            except SSL.Error as exc:
                self._fail(f"TLS write failed: {exc!r}")
                return

    def _read_plaintext(self) -> list[bytes]:
        """Drain decrypted records (DTLS) or stream bytes (TLS) from the secure channel."""
        records: list[bytes] = []
        while self.state is not LinkState.CLOSED:
            try:
                records.append(self._conn.recv(65536))
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self._fail("peer closed the link")
                break
            except SSL.Error as exc:
                detail = "; ".join(self._verify_errors) or repr(exc)
                self._fail(f"secure channel error: {detail}")
                break
        return records

    def _feed(self, data: bytes, now: float) -> list[bytes]:
        self._now = now
        if self.state is LinkState.CLOSED:
            return []
        try:
            self._conn.bio_write(data)
        except SSL.Error as exc:
            self._fail(f"cannot take input: {exc!r}")
            return []
        if self.state is LinkState.HANDSHAKING:
            self._handshake()
        if not self.usable:  # (re-read: the handshake may have changed the state)
            return []
        return self._read_plaintext()

    def _deliver(self, message: bytes) -> None:
        if self.state is LinkState.CONNECTED:
            self._events.append(MessageReceived(message))

    def _too_large(self, size: int, prefix: bytes) -> None:
        """§6.6: refuse a message over max-message-size and close after the error."""
        if self.state is not LinkState.CONNECTED:
            return
        log.info("link to %s: %d-byte message > max-message-size", self.peer_address, size)
        self.state = LinkState.CLOSING
        self._close_at = self._now + TOO_LARGE_GRACE
        self._events.append(MessageTooLarge(size, prefix[:64]))

    def _ciphertext_out(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            try:
                chunks.append(self._conn.bio_read(65536))
            except SSL.WantReadError:
                break
        return b"".join(chunks)


def _looks_like_dtls(datagram: bytes) -> bool:
    """A DTLS record header: content type 20–25 and a DTLS version (0xFEFF or 0xFEFD)."""
    return (
        len(datagram) >= _DTLS_RECORD_HEADER.size
        and 20 <= datagram[0] <= 25
        and datagram[1] == 0xFE
        and datagram[2] in (0xFD, 0xFF)
    )


class DtlsLink(Link):
    """DTLS-UDP-SR-NO-ICE (link type 3, §6.6.6): DTLS 1.2 over UDP with Simple Reliability."""

    link_type = LINK_TYPE_DTLS_UDP_SR_NO_ICE
    _dtls = True

    def receive_datagram(self, datagram: bytes, now: float) -> None:
        if not _looks_like_dtls(datagram):
            # Cheap hygiene before OpenSSL (which drops such datagrams without a word).
            self.dropped += 1
            log.info("link to %s: dropping a datagram that is not DTLS", self.peer_address)
            return
        for record in self._feed(datagram, now):
            if self.tap is not None:
                self.tap(False, record)
            try:
                frame = decode_frame(record)
            except FramingError as exc:
                self.dropped += 1
                log.info("link to %s: dropping record: %s", self.peer_address, exc)
                continue
            if isinstance(frame, DataFrame) and len(frame.message) > self.config.max_message_size:
                self._too_large(len(frame.message), frame.message)
                continue
            for message in self.frames.receive_frame(frame, now):
                self._deliver(message)
        self._flush_frames()

    @property
    def path_mtu(self) -> int:
        """Largest RELOAD message (or fragment) that fits one datagram once connected: the
        DTLS cleartext MTU minus the 8-byte data framing header. Pass it to
        ``reload.fragments.fragment`` (§6.7); larger messages still go out, IP-fragmented."""
        try:
            cleartext = self._conn.get_cleartext_mtu()
        except (SSL.Error, ValueError):  # not negotiated yet
            cleartext = self.config.mtu - 64
        return cleartext - _DATA_HEADER.size - 3

    def datagrams_to_send(self) -> list[bytes]:
        """Ciphertext datagrams, each at most the MTU (records packed, never split)."""
        data = self._ciphertext_out()
        datagrams: list[bytes] = []
        current = b""
        pos = 0
        while pos < len(data):
            if len(data) - pos < _DTLS_RECORD_HEADER.size:
                record = data[pos:]
            else:
                length = _DTLS_RECORD_HEADER.unpack_from(data, pos)[4]
                record = data[pos : pos + _DTLS_RECORD_HEADER.size + length]
            pos += len(record)
            if current and len(current) + len(record) > self.config.mtu:
                datagrams.append(current)
                current = b""
            current += record
        if current:
            datagrams.append(current)
        return datagrams


class TlsLink(Link):
    """TLS-TCP-FH-NO-ICE (link type 4, §6.6.5): TLS over TCP with the framing header."""

    link_type = LINK_TYPE_TLS_TCP_FH_NO_ICE
    _dtls = False

    def __init__(
        self,
        config: LinkConfig,
        *,
        initiator: bool,
        now: float,
        expected_node_id: bytes | None = None,
        peer_address: object = None,
    ) -> None:
        self._stream = bytearray()
        super().__init__(
            config,
            initiator=initiator,
            now=now,
            expected_node_id=expected_node_id,
            peer_address=peer_address,
        )

    def receive_stream(self, data: bytes, now: float) -> None:
        for chunk in self._feed(data, now):
            if self.tap is not None:
                self.tap(False, chunk)
            self._stream += chunk
        while self.state is LinkState.CONNECTED and self._stream:
            announced = data_frame_length(bytes(self._stream[:8]))
            if announced is not None and announced > self.config.max_message_size:
                # §6.6: may be refused before the whole message has arrived.
                self._too_large(announced, bytes(self._stream[8:]))
                self._stream.clear()
                break
            try:
                frame, used = decode_frame_prefix(bytes(self._stream))
            except FramingError as exc:
                # A byte stream cannot resynchronise after a bad frame type.
                self.close(f"framing error: {exc}")
                break
            if frame is None:
                break
            del self._stream[:used]
            for message in self.frames.receive_frame(frame, now):
                self._deliver(message)
        self._flush_frames()

    def data_to_send(self) -> bytes:
        return self._ciphertext_out()


# ---------------------------------------------------------------------- asyncio adapters


class LinkClosedError(ConnectionError):
    """The link failed or was closed; ``args[0]`` is the reason."""


class LinkConnection:
    """An asyncio handle on one sans-IO link, driven by the event loop's clock."""

    def __init__(self, link: Link, write: Callable[[Link], None]) -> None:
        self.link = link
        self._write = write
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._messages: asyncio.Queue[bytes | LinkFailed] = asyncio.Queue(maxsize=1024)
        self.connected: asyncio.Future[bytes] = self._loop.create_future()
        self.closed: asyncio.Future[str] = self._loop.create_future()
        self.on_message_too_large: Callable[[LinkConnection, MessageTooLarge], None] | None = None

    @property
    def peer_node_id(self) -> bytes | None:
        return self.link.peer_node_id

    def now(self) -> float:
        return self._loop.time()

    def service(self) -> None:
        """Flush output, dispatch events, rearm the timer (after every input)."""
        self._write(self.link)
        for event in self.link.pop_events():
            if isinstance(event, Connected):
                if not self.connected.done():
                    self.connected.set_result(event.peer_node_id)
            elif isinstance(event, MessageReceived):
                if self._messages.full():
                    log.warning("link to %s: receive queue full", self.link.peer_address)
                else:
                    self._messages.put_nowait(event.message)
            elif isinstance(event, MessageTooLarge):
                if self.on_message_too_large is not None:
                    self.on_message_too_large(self, event)
            else:
                if not self.connected.done():
                    self.connected.set_exception(LinkClosedError(event.reason))
                if not self.closed.done():
                    self.closed.set_result(event.reason)
                with contextlib.suppress(asyncio.QueueFull):
                    self._messages.put_nowait(event)
        self._write(self.link)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.link.next_timer()
        if deadline is not None:
            self._timer = self._loop.call_at(max(deadline, self.now()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.link.handle_timer(self.now())
        self.service()

    def send(self, message: bytes) -> None:
        self.link.send(message, self.now())
        self.service()

    async def receive(self) -> bytes:
        item = await self._messages.get()
        if isinstance(item, LinkFailed):
            self._messages.put_nowait(item)  # keep reporting the failure
            raise LinkClosedError(item.reason)
        return item

    def close(self) -> None:
        self.link.close()
        self.service()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _capture_tap(transport: Any, peer: Any, *, stream: bool) -> Callable[[bool, bytes], None]:
    """Records a link's plaintext frames on its real addresses when ``--pcap`` is active
    (interop/capture.py): the ciphertext on the wire would show nothing of RELOAD."""
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    local = (str(sockname[0]), int(sockname[1])) if sockname else ("0.0.0.0", 0)
    remote = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else ("0.0.0.0", 0)

    def tap(sent: bool, data: bytes) -> None:
        cap = capture.active()
        if cap is None:
            return
        src, dst = (local, remote) if sent else (remote, local)
        if stream:
            cap.tcp(src, dst, data)
        else:
            cap.udp(src, dst, data)

    return tap


class _DtlsProtocol(asyncio.DatagramProtocol):
    """One UDP socket carrying DTLS links, demultiplexed by peer address."""

    def __init__(
        self,
        config: LinkConfig,
        on_link: Callable[[LinkConnection], None] | None,
    ) -> None:
        self.config = config
        self.on_link = on_link
        self.transport: asyncio.DatagramTransport | None = None
        self.links: dict[Any, LinkConnection] = {}
        self.max_links = 1024

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # No isinstance check: CPython 3.11's selector datagram transport does not subclass
        # asyncio.DatagramTransport (the assert used to fail in every DTLS socket's callback).
        # Link emulation (ppsp.linkemu): the lab's delay/jitter/loss when the kernel has no netem.
        self.transport = cast(asyncio.DatagramTransport, wrap_datagram(transport))

    def _write(self, link: Link) -> None:
        assert isinstance(link, DtlsLink)
        if self.transport is None:
            return
        for datagram in link.datagrams_to_send():
            self.transport.sendto(datagram, link.peer_address)  # type: ignore[arg-type]

    def open(self, addr: Any, expected_node_id: bytes | None, *, initiator: bool) -> LinkConnection:
        loop = asyncio.get_running_loop()
        link = DtlsLink(
            self.config,
            initiator=initiator,
            now=loop.time(),
            expected_node_id=expected_node_id,
            peer_address=addr,
        )
        link.tap = _capture_tap(self.transport, addr, stream=False)
        conn = LinkConnection(link, self._write)
        self.links[addr] = conn
        conn.closed.add_done_callback(lambda _: self._forget(addr, conn))
        return conn

    def _forget(self, addr: Any, conn: LinkConnection) -> None:
        if self.links.get(addr) is conn:
            del self.links[addr]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        conn = self.links.get(addr)
        if conn is None:
            if self.on_link is None or len(self.links) >= self.max_links:
                return
            conn = self.open(addr, None, initiator=False)
            self.on_link(conn)
        link = conn.link
        assert isinstance(link, DtlsLink)
        link.receive_datagram(data, conn.now())
        conn.service()

    def close(self) -> None:
        for conn in list(self.links.values()):
            conn.close()
        if self.transport is not None:
            self.transport.close()


class DtlsEndpoint:
    """A UDP socket for DTLS links: ``serve_dtls`` accepts, ``connect`` initiates."""

    def __init__(self, protocol: _DtlsProtocol) -> None:
        self._protocol = protocol

    @property
    def address(self) -> tuple[str, int]:
        assert self._protocol.transport is not None
        host, port = self._protocol.transport.get_extra_info("sockname")[:2]
        return host, port

    async def connect(
        self, addr: tuple[str, int], expected_node_id: bytes | None
    ) -> LinkConnection:
        conn = self._protocol.open(addr, expected_node_id, initiator=True)
        conn.service()
        await conn.connected
        return conn

    def close(self) -> None:
        self._protocol.close()


async def serve_dtls(
    config: LinkConfig,
    on_link: Callable[[LinkConnection], None],
    host: str = "127.0.0.1",
    port: int = 0,
) -> DtlsEndpoint:
    """Listen for DTLS-UDP-SR-NO-ICE links; ``on_link`` gets each new (handshaking) link."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _DtlsProtocol(config, on_link), local_addr=(host, port)
    )
    protocol.transport = wrap_datagram(transport)  # connection_made runs later (call_soon)
    return DtlsEndpoint(protocol)


async def connect_dtls(
    config: LinkConfig,
    addr: tuple[str, int],
    expected_node_id: bytes | None,
    local_host: str = "127.0.0.1",
) -> LinkConnection:
    """Open a DTLS link from a fresh UDP socket; returns once connected (or raises)."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _DtlsProtocol(config, None), local_addr=(local_host, 0)
    )
    protocol.transport = wrap_datagram(transport)
    conn = protocol.open(addr, expected_node_id, initiator=True)
    conn.closed.add_done_callback(lambda _: protocol.close())
    conn.service()
    await conn.connected
    return conn


class _TlsProtocol(asyncio.Protocol):
    def __init__(
        self,
        config: LinkConfig,
        *,
        initiator: bool,
        expected_node_id: bytes | None,
        on_link: Callable[[LinkConnection], None] | None,
    ) -> None:
        self.config = config
        self.initiator = initiator
        self.expected_node_id = expected_node_id
        self.on_link = on_link
        self.transport: asyncio.Transport | None = None
        self.conn: LinkConnection | None = None

    def _write(self, link: Link) -> None:
        assert isinstance(link, TlsLink)
        data = link.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
        if link.state is LinkState.CLOSED and self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # No isinstance check: uvloop's TCP transport does not subclass asyncio.Transport.
        self.transport = wrap_stream(cast(asyncio.Transport, transport))
        loop = asyncio.get_running_loop()
        link = TlsLink(
            self.config,
            initiator=self.initiator,
            now=loop.time(),
            expected_node_id=self.expected_node_id,
            peer_address=transport.get_extra_info("peername"),
        )
        link.tap = _capture_tap(transport, link.peer_address, stream=True)
        self.conn = LinkConnection(link, self._write)
        if self.on_link is not None:
            self.on_link(self.conn)
        self.conn.service()

    def data_received(self, data: bytes) -> None:
        assert self.conn is not None
        link = self.conn.link
        assert isinstance(link, TlsLink)
        link.receive_stream(data, self.conn.now())
        self.conn.service()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.conn.link._fail(
                f"TCP connection lost: {exc!r}" if exc else "TCP connection closed"
            )
            self.conn.service()


async def serve_tls(
    config: LinkConfig,
    on_link: Callable[[LinkConnection], None],
    host: str = "127.0.0.1",
    port: int = 0,
) -> asyncio.Server:
    """Listen for TLS-TCP-FH-NO-ICE links; ``on_link`` gets each new (handshaking) link."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: _TlsProtocol(config, initiator=False, expected_node_id=None, on_link=on_link),
        host,
        port,
    )


async def connect_tls(
    config: LinkConfig, addr: tuple[str, int], expected_node_id: bytes | None
) -> LinkConnection:
    """Open a TLS link over TCP; returns once connected (or raises LinkClosedError)."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(
        lambda: _TlsProtocol(
            config, initiator=True, expected_node_id=expected_node_id, on_link=None
        ),
        addr[0],
        addr[1],
    )
    assert protocol.conn is not None
    await protocol.conn.connected
    return protocol.conn
