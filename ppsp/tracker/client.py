"""PPSP-TP client library: what cachers and CSCs use to talk to a tracker (RFC 7846 §4).

One API, three transports, picked by URL with :func:`open_client`:

- ``http://HOST:PORT/PATH`` and ``https://HOST:PORT/PATH`` — RFC 7846 JSON, POSTed to the URL
  (:class:`JsonHttpTrackerClient`);
- ``ppsp-udp://HOST:PORT`` — the binary encoding (DESIGN §4) over UDP, with retransmission
  (:class:`UdpTrackerClient`);
- ``ppsp-tcp://HOST:PORT`` — the binary encoding over one TCP connection
  (:class:`TcpTrackerClient`).

Every request gets a fresh transaction ID (a random 64-bit number written in decimal, so the
binary header's 64-bit field carries it as is) and a retransmission reuses it, which RFC 7846
§4.3 allows: the tracker must accept a repeated transaction ID. A FAILED response raises
:class:`TrackerRequestError` with the RFC error code.

Push hints and global info (our extensions, DESIGN §1 F4/F5) reach ``on_push`` whichever way
they travel: spoken first by the tracker over UDP or TCP, or piggy-backed on a response (the
only way over HTTP). A response still carries its piggy-backed hints as well.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
import ssl as ssl_module
import urllib.parse
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

import aiohttp

from interop import capture
from ppsp.linkemu import wrap_datagram
from ppsp.tracker import binary, json_codec
from ppsp.tracker.messages import (
    AvailabilityDelta,
    ChunkRanges,
    Connect,
    ErrorCode,
    Find,
    GlobalInfoMessage,
    PeerAddress,
    PeerNum,
    PushHintMessage,
    Request,
    Response,
    ResponseType,
    Role,
    StatQuery,
    StatReport,
    StreamStats,
    SwarmAction,
    SwarmAvailability,
    TrackerError,
)

log = logging.getLogger(__name__)

Address = tuple[str, int]
PushMessage = PushHintMessage | GlobalInfoMessage
#: Called with every push hint / global info message, in the order they arrive.
PushCallback = Callable[[PushMessage], object]

DEFAULT_TIMEOUT = 10.0
#: UDP retransmission (RFC 7846 §4.3 leaves the policy open; these follow the usual
#: request/response practice of RFC 8085 §3.1.3: start near a second, back off exponentially).
INITIAL_RTO = 0.5
MAX_RTO = 4.0
#: Fragments on UDP stay under a 1500-byte Ethernet MTU with IP and UDP headers (draft-gu-02
#: §5.2.3: fragments no larger than the path MTU minus 32).
UDP_MAX_FRAGMENT = 1400
#: TCP needs no fragmentation for the path, but a frame stays well under a tracker's frame
#: limit (server default 1 MiB), so a 10,000-swarm batch travels as a few dozen frames.
TCP_MAX_FRAGMENT = 64 * 1024
#: Largest binary message (reassembled) or TCP frame the client accepts from a tracker.
MAX_MESSAGE = 16 * 1024 * 1024
#: Largest HTTP response body read.
MAX_HTTP_BODY = 16 * 1024 * 1024

URL_SCHEMES = ("http", "https", "ppsp-udp", "ppsp-tcp")
#: UDP socket buffers: the response to a 10,000-swarm batch is hundreds of datagrams.
SOCKET_BUFFER = 4 * 1024 * 1024
#: Fragmented UDP requests go out in bursts of this many datagrams, this many seconds apart.
UDP_BURST = 64
UDP_BURST_GAP = 0.001


class TrackerClientError(Exception):
    """A request that did not get a successful PPSP-TP response."""


class TrackerRequestError(TrackerClientError):
    """The tracker answered FAILED (RFC 7846 §4.3); ``code`` is its error code."""

    def __init__(self, code: ErrorCode, response: Response | None = None) -> None:
        super().__init__(f"tracker answered error {code.value:02d} ({code.name})")
        self.code = code
        self.response = response


class TrackerTimeout(TrackerClientError, TimeoutError):
    """No response within the client's timeout (after retransmissions, over UDP)."""


class TrackerConnectionError(TrackerClientError, ConnectionError):
    """The tracker could not be reached or the connection broke."""


class TrackerProtocolError(TrackerClientError):
    """The tracker answered something that is not a valid PPSP-TP response."""


def new_transaction_id() -> str:
    """A fresh transaction ID: a random 64-bit number in decimal (fits the binary header)."""
    return str(secrets.randbits(64))


class TrackerClient(abc.ABC):
    """The tracker API of a cacher or a CSC. Subclasses implement :meth:`_exchange`: send one
    request and return the tracker's response to it."""

    def __init__(
        self, peer_id: str, *, timeout: float = DEFAULT_TIMEOUT, on_push: PushCallback | None = None
    ) -> None:
        self.peer_id = peer_id
        self.timeout = timeout
        self.on_push = on_push

    # -- the RFC 7846 requests and our extensions --------------------------------------

    async def connect(
        self,
        swarm_actions: Sequence[SwarmAction] = (),
        *,
        peer_num: PeerNum | None = None,
        peer_addresses: Sequence[PeerAddress] = (),
        role: Role | None = None,
        area: str | None = None,
        availability: Sequence[SwarmAvailability] = (),
    ) -> Response:
        """CONNECT (RFC 7846 §4.1.1): JOIN/LEAVE swarms; with ``availability``, our batch
        availability report of everything the peer holds."""
        return await self.request(
            Connect(
                self.peer_id,
                new_transaction_id(),
                list(swarm_actions),
                peer_num=peer_num,
                peer_addresses=list(peer_addresses),
                role=role,
                area=area,
                availability=list(availability),
            )
        )

    async def find(
        self,
        swarm_id: str,
        *,
        peer_num: PeerNum | None = None,
        area: str | None = None,
        ranges: ChunkRanges | None = None,
    ) -> Response:
        """FIND (RFC 7846 §4.1.2): a fresh peer list for ``swarm_id``."""
        return await self.request(
            Find(
                self.peer_id,
                new_transaction_id(),
                swarm_id,
                peer_num=peer_num,
                area=area,
                ranges=ranges,
            )
        )

    async def stat_report(
        self,
        stats: Sequence[StreamStats] = (),
        *,
        availability: Sequence[SwarmAvailability] = (),
        deltas: Sequence[AvailabilityDelta] = (),
    ) -> Response:
        """STAT_REPORT (RFC 7846 §4.1.3); with nothing in it, the keep-alive that resets the
        tracker's track timer."""
        return await self.request(
            StatReport(
                self.peer_id,
                new_transaction_id(),
                stats=list(stats),
                availability=list(availability),
                deltas=list(deltas),
            )
        )

    async def stat_query(self, swarm_ids: Sequence[str] = ()) -> Response:
        """Our STAT_QUERY: global info on ``swarm_ids`` (every swarm tracked when empty)."""
        return await self.request(StatQuery(self.peer_id, new_transaction_id(), list(swarm_ids)))

    async def request(self, request: Request) -> Response:
        """Send any request; return its SUCCESSFUL response or raise
        :class:`TrackerRequestError` (FAILED), :class:`TrackerTimeout`,
        :class:`TrackerConnectionError` or :class:`TrackerProtocolError`."""
        response = await self._exchange(request)
        self._deliver_piggybacked(response)
        if response.response_type != ResponseType.SUCCESSFUL:
            code = response.error_code
            if code == ErrorCode.NO_ERROR:  # FAILED without a reason: RFC 7846 §4.3 gives none
                code = ErrorCode.INTERNAL_SERVER_ERROR
            raise TrackerRequestError(code, response)
        return response

    @abc.abstractmethod
    async def _exchange(self, request: Request) -> Response:
        """Send ``request`` and return the response carrying its transaction ID."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connection or socket; the client can be used again afterwards."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- push hints and global info ----------------------------------------------------

    def _push(self, message: PushMessage) -> None:
        if self.on_push is None:
            return
        try:
            self.on_push(message)
        except Exception:  # the application's bug must not break the transport
            log.exception("on_push callback failed")

    def _deliver_piggybacked(self, response: Response) -> None:
        if response.push_hints:
            self._push(PushHintMessage(response.transaction_id, list(response.push_hints)))
        if response.global_info:
            self._push(GlobalInfoMessage(response.transaction_id, list(response.global_info)))


def _check_response(request: Request, response: Response) -> Response:
    """A response belongs to the request with the same transaction ID (RFC 7846 §3.3.4). A
    tracker that could not decode the request cannot know the ID, so an error response with
    an empty one (0 in binary) is accepted too."""
    if response.transaction_id == request.transaction_id:
        return response
    if response.response_type == ResponseType.FAILED and response.transaction_id in ("", "0"):
        return response  # JSON's empty ID, or the binary error_response's 0
    raise TrackerProtocolError(
        f"response for transaction {response.transaction_id!r}, expected {request.transaction_id!r}"
    )


# ---------------------------------------------------------------------------- JSON over HTTP


class JsonHttpTrackerClient(TrackerClient):
    """RFC 7846 JSON POSTed over HTTP/1.1 or HTTPS (§4) to ``url``; one keep-alive session.

    ``ssl`` is passed to aiohttp: ``None`` verifies against the system trust store, an
    :class:`ssl.SSLContext` pins a CA (e.g. a test certificate), ``False`` skips verification.
    """

    def __init__(
        self,
        url: str,
        peer_id: str,
        *,
        ssl: ssl_module.SSLContext | bool | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        on_push: PushCallback | None = None,
    ) -> None:
        super().__init__(peer_id, timeout=timeout, on_push=on_push)
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url
        self.ssl: ssl_module.SSLContext | bool = True if ssl is None else ssl
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"Accept": json_codec.CONTENT_TYPE},
            )
        return self._session

    async def _exchange(self, request: Request) -> Response:
        body = json_codec.encode_request(request)
        # A keep-alive connection the server closed in the meantime fails once on reuse;
        # resending with the same transaction ID is safe (RFC 7846 §4.3).
        for attempt in (1, 2):
            try:
                return await self._post(request, body)
            except TimeoutError as exc:  # aiohttp's ServerTimeoutError is one too
                raise TrackerTimeout(f"{self.url}: no response in {self.timeout:g} s") from exc
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if attempt == 2:
                    raise TrackerConnectionError(f"{self.url}: {exc}") from exc
                log.debug("retrying %s after %s", self.url, exc)
            except aiohttp.ClientError as exc:
                raise TrackerConnectionError(f"{self.url}: {exc}") from exc
        raise AssertionError("unreachable")

    async def _post(self, request: Request, body: bytes) -> Response:
        session = self._get_session()
        async with session.post(
            self.url, data=body, headers={"Content-Type": json_codec.CONTENT_TYPE}, ssl=self.ssl
        ) as reply:
            if reply.content_length is not None and reply.content_length > MAX_HTTP_BODY:
                raise TrackerProtocolError(f"response of {reply.content_length} bytes: too big")
            # StreamReader.read(n) returns what is buffered, not n bytes: read to the end,
            # but never more than the limit (a chunked reply has no Content-Length).
            chunks: list[bytes] = []
            size = 0
            async for chunk in reply.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > MAX_HTTP_BODY:
                    raise TrackerProtocolError("response body too big")
                chunks.append(chunk)
            data = b"".join(chunks)
            try:
                response = json_codec.decode_response(data)
            except TrackerError as exc:
                # RFC 7846 trackers answer 200 with the status in JSON; anything else that is
                # not PPSP-TP is an HTTP-level failure.
                if reply.status != 200:
                    raise TrackerProtocolError(f"HTTP {reply.status} {reply.reason}") from exc
                raise TrackerProtocolError(f"undecodable response: {exc}") from exc
            return _check_response(request, response)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# ---------------------------------------------------------------------------- binary


class _BinaryClient(TrackerClient):
    """Shared by the UDP and TCP clients: matching responses to requests by transaction ID,
    reassembly of fragmented messages, and dispatch of tracker-initiated messages."""

    source: Address

    def __init__(
        self,
        addr: Address,
        peer_id: str,
        *,
        timeout: float,
        on_push: PushCallback | None,
        max_message: int,
    ) -> None:
        super().__init__(peer_id, timeout=timeout, on_push=on_push)
        self.addr = addr
        self.source = addr
        self._pending: dict[str, asyncio.Future[Response]] = {}
        self._reassembler = binary.Reassembler(max_message=max_message)

    def _received(self, data: bytes, now: float) -> None:
        """One datagram or TCP frame from the tracker."""
        self._reassembler.expire(now)
        try:
            message = self._reassembler.feed(data, self.source, now)
        except TrackerError as exc:
            log.debug("undecodable message from tracker %s: %s", self.addr, exc)
            return
        if message is None:
            return
        if isinstance(message, Response):
            future = self._pending.get(message.transaction_id)
            if (
                future is None
                and message.response_type == ResponseType.FAILED
                and message.transaction_id in ("", "0")
                and len(self._pending) == 1
            ):
                # A tracker that could not read the transaction ID answers 0 (error_response):
                # meaningful only while one request is outstanding.
                future = next(iter(self._pending.values()))
            if future is not None and not future.done():
                future.set_result(message)
            else:
                log.debug("response for unknown transaction %s", message.transaction_id)
        elif isinstance(message, PushHintMessage | GlobalInfoMessage):
            self._push(message)
        else:
            log.debug("ignoring a %s from tracker %s", type(message).__name__, self.addr)

    def _fail_pending(self, exc: BaseException) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(exc)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, client: UdpTrackerClient) -> None:
        self.client = client

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        client = self.client
        if capture.active() is not None:
            capture.received_datagram(client._transport, data, addr)
        try:
            client._received(data, asyncio.get_running_loop().time())
        except Exception:
            log.exception("error handling a datagram from the tracker")

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: retransmission or the timeout decide.
        log.debug("UDP error from tracker: %s", exc)


class UdpTrackerClient(_BinaryClient):
    """The binary encoding over UDP (DESIGN §4). A request is sent as fragments of at most
    ``max_fragment`` bytes and retransmitted, with the same transaction ID, after
    ``initial_rto`` seconds, doubling up to ``max_rto``, until ``timeout``. The socket stays
    open between requests so the tracker can speak first (push hints) to its address."""

    def __init__(
        self,
        addr: Address,
        peer_id: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        on_push: PushCallback | None = None,
        initial_rto: float = INITIAL_RTO,
        max_rto: float = MAX_RTO,
        max_fragment: int = UDP_MAX_FRAGMENT,
        local_addr: Address | None = None,
    ) -> None:
        super().__init__(addr, peer_id, timeout=timeout, on_push=on_push, max_message=MAX_MESSAGE)
        if not 0 < initial_rto <= max_rto:
            raise ValueError("need 0 < initial_rto <= max_rto")
        self.initial_rto = initial_rto
        self.max_rto = max_rto
        self.max_fragment = max_fragment
        self.local_addr = local_addr
        self._transport: asyncio.DatagramTransport | None = None
        self._opening: asyncio.Lock | None = None
        #: Datagrams sent, retransmissions included (for tests and statistics).
        self.datagrams_sent = 0

    @property
    def local_address(self) -> Address | None:
        """The bound local address, once open (where the tracker sends push hints)."""
        if self._transport is None:
            return None
        sockname = self._transport.get_extra_info("sockname")
        return (str(sockname[0]), int(sockname[1]))

    async def open(self) -> None:
        """Open the socket now (it opens on the first request otherwise)."""
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._transport is not None:
                return
            loop = asyncio.get_running_loop()
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(self),
                    remote_addr=self.addr,
                    local_addr=self.local_addr,
                )
            except OSError as exc:
                raise TrackerConnectionError(f"ppsp-udp://{_fmt(self.addr)}: {exc}") from exc
            sock = transport.get_extra_info("socket")
            if sock is not None:
                _tune_buffers(sock, SOCKET_BUFFER)
            # Link emulation and --pcap wrap it only when configured (ppsp.linkemu, capture).
            self._transport = capture.tap_datagram(wrap_datagram(transport))
            peer = transport.get_extra_info("peername")
            if peer is not None:
                # Responses come from the resolved address; reassembly is keyed by it.
                self.source = (str(peer[0]), int(peer[1]))

    async def _exchange(self, request: Request) -> Response:
        await self.open()
        transport = self._transport
        assert transport is not None
        fragments = binary.encode(request, max_fragment=self.max_fragment)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Response] = loop.create_future()
        self._pending[request.transaction_id] = future
        deadline = loop.time() + self.timeout
        rto = self.initial_rto
        try:
            while True:
                await self._send_paced(transport, fragments)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                done, _ = await asyncio.wait({future}, timeout=min(rto, remaining))
                if done:
                    return _check_response(request, future.result())
                rto = min(rto * 2, self.max_rto)
                if loop.time() >= deadline:
                    break
        finally:
            self._pending.pop(request.transaction_id, None)
            if not future.done():
                future.cancel()
        raise TrackerTimeout(f"ppsp-udp://{_fmt(self.addr)}: no response in {self.timeout:g} s")

    async def _send_paced(
        self, transport: asyncio.DatagramTransport, fragments: list[bytes]
    ) -> None:
        # Bursts of UDP_BURST datagrams, UDP_BURST_GAP apart: a 10,000-swarm batch is ~750
        # datagrams, more than a default socket buffer at the tracker holds at once.
        for start in range(0, len(fragments), UDP_BURST):
            if start:
                await asyncio.sleep(UDP_BURST_GAP)
            for fragment in fragments[start : start + UDP_BURST]:
                transport.sendto(fragment)
                self.datagrams_sent += 1

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._fail_pending(TrackerConnectionError("client closed"))


class TcpTrackerClient(_BinaryClient):
    """The binary encoding over one TCP connection, framed by the 24-byte header's length
    field (DESIGN §4). Several requests may be outstanding; the connection is opened on the
    first request and reopened after it breaks. Tracker-initiated messages arriving on it go
    to ``on_push``."""

    def __init__(
        self,
        addr: Address,
        peer_id: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        on_push: PushCallback | None = None,
        max_fragment: int = TCP_MAX_FRAGMENT,
        max_frame: int = MAX_MESSAGE,
    ) -> None:
        super().__init__(addr, peer_id, timeout=timeout, on_push=on_push, max_message=MAX_MESSAGE)
        self.max_fragment = max_fragment
        self.max_frame = max_frame
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._opening: asyncio.Lock | None = None

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def open(self) -> None:
        """Connect now (it connects on the first request otherwise)."""
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self.connected:
                return
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(*self.addr), timeout=self.timeout
                )
            except TimeoutError as exc:
                raise TrackerTimeout(f"ppsp-tcp://{_fmt(self.addr)}: connect timed out") from exc
            except OSError as exc:
                raise TrackerConnectionError(f"ppsp-tcp://{_fmt(self.addr)}: {exc}") from exc
            self._writer = writer
            peer = writer.get_extra_info("peername")
            if peer is not None:
                self.source = (str(peer[0]), int(peer[1]))
            self._reader_task = asyncio.create_task(self._read_frames(reader, writer))

    async def _read_frames(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        reason: BaseException = TrackerConnectionError("connection closed by the tracker")
        try:
            while True:
                frame = await read_frame(reader, self.max_frame)
                if frame is None:
                    break
                if capture.active() is not None:
                    capture.received_stream(writer.transport, frame)
                self._received(frame, loop.time())
        except TrackerError as exc:
            reason = TrackerProtocolError(f"bad frame from tracker: {exc}")
        except (OSError, asyncio.IncompleteReadError) as exc:
            reason = TrackerConnectionError(f"connection to tracker broke: {exc}")
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()
            self._fail_pending(reason)

    async def _exchange(self, request: Request) -> Response:
        await self.open()
        writer = self._writer
        assert writer is not None
        frames = binary.encode(request, max_fragment=self.max_fragment)
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[request.transaction_id] = future
        try:
            async with asyncio.timeout(self.timeout):
                writer.writelines(frames)
                if capture.active() is not None:
                    capture.sent_stream(writer.transport, b"".join(frames))
                await writer.drain()
                return _check_response(request, await future)
        except TrackerClientError:
            raise  # set by the reader: the connection broke or the tracker spoke garbage
        except TimeoutError as exc:
            raise TrackerTimeout(
                f"ppsp-tcp://{_fmt(self.addr)}: no response in {self.timeout:g} s"
            ) from exc
        except OSError as exc:
            raise TrackerConnectionError(f"ppsp-tcp://{_fmt(self.addr)}: {exc}") from exc
        finally:
            self._pending.pop(request.transaction_id, None)

    async def close(self) -> None:
        writer, task = self._writer, self._reader_task
        self._writer = None
        self._reader_task = None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_pending(TrackerConnectionError("client closed"))


async def read_frame(reader: asyncio.StreamReader, max_frame: int) -> bytes | None:
    """Read one binary PPSP-TP frame from a TCP stream: the 24-byte header first, then the
    rest up to the header's message length (draft-gu-02 §5.2.1: the length includes the
    header). Returns ``None`` at a clean end of stream; raises :class:`TrackerError` for a
    header that cannot be a frame, without reading any further (the stream is then lost)."""
    try:
        head = await reader.readexactly(binary.HEADER_SIZE)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    header = binary.peek_header(head)
    length = header.length
    if not binary.HEADER_SIZE <= length <= max_frame:
        raise TrackerError(f"frame length {length} outside {binary.HEADER_SIZE}-{max_frame}")
    if length == binary.HEADER_SIZE:
        return head
    return head + await reader.readexactly(length - binary.HEADER_SIZE)


# ---------------------------------------------------------------------------- URLs


def parse_tracker_url(url: str) -> tuple[str, Address]:
    """Split a tracker URL into its scheme and ``(host, port)``; the port is required for the
    binary schemes and defaults to 80/443 for HTTP(S). Raises :class:`ValueError`."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in URL_SCHEMES:
        raise ValueError(
            f"unsupported tracker URL {url!r}: use http://, https://, ppsp-udp:// or ppsp-tcp://"
        )
    host = parts.hostname
    if not host:
        raise ValueError(f"tracker URL {url!r} has no host")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"tracker URL {url!r}: {exc}") from None
    if port is None:
        if scheme in ("ppsp-udp", "ppsp-tcp"):
            raise ValueError(f"tracker URL {url!r} needs a port ({scheme}://HOST:PORT)")
        port = 443 if scheme == "https" else 80
    if scheme in ("ppsp-udp", "ppsp-tcp") and parts.path not in ("", "/"):
        raise ValueError(f"tracker URL {url!r}: {scheme} URLs have no path")
    return scheme, (host, port)


def open_client(
    url: str,
    peer_id: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    on_push: PushCallback | None = None,
    ssl: ssl_module.SSLContext | bool | None = None,
) -> TrackerClient:
    """A client for the tracker at ``url``: ``http(s)://HOST[:PORT][/PATH]`` (JSON, RFC 7846),
    ``ppsp-udp://HOST:PORT`` or ``ppsp-tcp://HOST:PORT`` (binary). Nothing is sent until the
    first request. Raises :class:`ValueError` for a URL it cannot use."""
    scheme, addr = parse_tracker_url(url)
    if scheme in ("http", "https"):
        return JsonHttpTrackerClient(url, peer_id, ssl=ssl, timeout=timeout, on_push=on_push)
    if scheme == "ppsp-udp":
        return UdpTrackerClient(addr, peer_id, timeout=timeout, on_push=on_push)
    return TcpTrackerClient(addr, peer_id, timeout=timeout, on_push=on_push)


def _tune_buffers(sock: socket.socket, size: int) -> None:
    """Raise a UDP socket's buffers to ``size`` where allowed (beyond ``rmem_max`` only as
    root, with the *BUFFORCE options)."""
    for option, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, force, size)  # SO_RCVBUFFORCE / SO_SNDBUFFORCE
        with contextlib.suppress(OSError):
            if sock.getsockopt(socket.SOL_SOCKET, option) < size:
                sock.setsockopt(socket.SOL_SOCKET, option, size)


def _fmt(addr: Address) -> str:
    host = addr[0]
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{addr[1]}"
    return f"{host}:{addr[1]}"
