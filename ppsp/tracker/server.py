"""The tracker daemon: a thin asyncio adapter around one sans-IO :class:`Tracker` (DESIGN §3).

It serves the same tracker over every transport at once:

- RFC 7846 JSON over HTTP/1.1 and HTTPS (aiohttp), POST on any path;
- the binary encoding (DESIGN §4) over UDP, with reassembly, a response cache for
  retransmitted requests and fragmented responses;
- the binary encoding over TCP, framed by the header's length field.

The adapter owns the sockets and the clock and nothing else: it feeds decoded requests to
:meth:`Tracker.handle`, drives :meth:`Tracker.next_timer` / :meth:`Tracker.handle_timer`, and
delivers what the tracker says first (:meth:`Tracker.pop_outgoing`: push hints, global info)
over the binary transport each peer last used. Every network input is treated as hostile:
sizes are checked before reading or parsing, every table is bounded, and no input ends in
anything but a PPSP-TP error response, a dropped datagram or a closed connection.

Request rates (issue 3: 20,000 binary FINDs per second on one core) shape the request path: a
whole request datagram is handled after one unpack of its header; TCP is a protocol that
answers the frames of one read in one write; the codecs are given memos of what they built
before (the tracker's peer entries, requests seen before), which give the same bytes; and
serving raises the cyclic garbage collector's thresholds (:func:`tune_gc`; put back when the
last server of the process closes). No request is logged above DEBUG. ``docs/performance.md`` has the figures.

Overlay mode (``config.overlay``; :mod:`ppsp.tracker.overlay`, docs/tracker.md): the tracker is
also a peer of a RELOAD tracker overlay. Every request is still handled synchronously by the
tracker; a FIND (or a LEECH JOIN) whose answer needs the overlay's peers of a swarm not cached
is answered when they are fetched, from a task, over whichever transport it came (responses
are matched by transaction ID, so a TCP answer may overtake another). A standalone tracker
takes exactly the synchronous path.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import gc
import ipaddress
import json
import logging
import socket
import ssl
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from aiohttp import web

from interop import capture
from ppsp.linkemu import wrap_datagram, wrap_stream
from ppsp.tracker import binary, json_codec
from ppsp.tracker.config import ConfigError, TrackerDaemonConfig
from ppsp.tracker.messages import (
    Connect,
    ErrorCode,
    Find,
    GlobalInfoMessage,
    Message,
    PushHintMessage,
    Request,
    Response,
    ResponseType,
    StatQuery,
    StatReport,
    TrackerError,
)
from ppsp.tracker.state import Tracker

if TYPE_CHECKING:
    from ppsp.tracker.overlay import TrackerOverlay

log = logging.getLogger(__name__)
#: What the overlay gives for a request whose answer needs a Fetch (overlay mode).
LateResponse = Coroutine[Any, Any, Response]

Address = tuple[str, int]
OutgoingMessage = PushHintMessage | GlobalInfoMessage
REQUEST_TYPES = (Connect, Find, StatReport, StatQuery)
#: The header (draft-gu-02 §5.2.1) unpacked in one call on the UDP hot path.
_UNPACK_HEADER = binary.HEADER_STRUCT.unpack_from
_REQUEST_BYTE = 0x08  # draft-gu-02 §5.2.1.1: first method octet of a request

#: Seconds between housekeeping passes (reassembly timeouts, response cache expiry).
HOUSEKEEPING_INTERVAL = 1.0
#: aiohttp's grace period for requests in progress when the daemon stops.
HTTP_SHUTDOWN_TIMEOUT = 5.0
#: Read-only view of one swarm over HTTP GET (:meth:`TrackerServer.view`).
VIEW_PATH = "/x-p2pcdn/view"
#: UDP socket buffers: a 10,000-swarm batch arrives as ~750 datagrams in a burst.
SOCKET_BUFFER = 8 * 1024 * 1024
#: Fragmented UDP messages go out in bursts of this many datagrams, this many seconds apart.
UDP_BURST = 64
UDP_BURST_GAP = 0.001
#: Paced messages in flight; beyond this a response waits for the client's retransmission.
MAX_PACED_SENDS = 256
#: TCP: answers to frames that arrived together go out in one write of up to about this much.
_TCP_BATCH = 64 * 1024

URL_SCHEMES = {"http": "http", "https": "https", "udp": "ppsp-udp", "tcp": "ppsp-tcp"}

#: The cyclic garbage collector's thresholds once a tracker serves (process-wide; never
#: lowered). Each request leaves some ten container objects in the replay caches for a while,
#: and at the default 700 the collector ran every ~70 requests and through the whole heap
#: every few thousand: measured ~8 µs per FIND and ~17 µs per CONNECT, 1-2 µs with these.
#: Garbage without cycles goes at once as ever; cycles wait for up to 50,000 net allocations.
GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    """Raise the collector's thresholds to at least :data:`GC_THRESHOLDS`."""
    current = gc.get_threshold()
    wanted = tuple(max(c, w) for c, w in zip(current, GC_THRESHOLDS, strict=True))
    if wanted != current:
        gc.set_threshold(*wanted)


# Servers running in this process, and the thresholds from before the first of them: the last
# to close puts them back (unless somebody else changed them meanwhile).
_gc_users = 0
_gc_before: tuple[int, ...] = ()
_gc_tuned: tuple[int, ...] = ()


def _acquire_gc() -> None:
    global _gc_users, _gc_before, _gc_tuned
    if not _gc_users:
        _gc_before = gc.get_threshold()
        tune_gc()
        _gc_tuned = gc.get_threshold()
    _gc_users += 1


def _release_gc() -> None:
    global _gc_users
    _gc_users -= 1
    if not _gc_users and gc.get_threshold() == _gc_tuned:
        gc.set_threshold(*_gc_before)


def format_url(transport: str, addr: Address) -> str:
    """The URL a client opens for a bound listener (see :func:`ppsp.tracker.client.open_client`)."""
    host = addr[0]
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    return f"{URL_SCHEMES[transport]}://{host}:{addr[1]}"


@dataclass
class Counters:
    """What the daemon saw, for logs, tests and the benchmark."""

    http_requests: int = 0
    udp_requests: int = 0
    tcp_requests: int = 0
    undecodable: int = 0
    udp_ignored: int = 0
    udp_retransmissions_answered: int = 0
    tcp_connections_refused: int = 0
    udp_pacing_dropped: int = 0
    pushed: int = 0
    push_undeliverable: int = 0
    internal_errors: int = 0
    #: Requests by kind; CONNECT / STAT_REPORT reporting the chunks of several swarms (a batch
    #: availability report) against per-swarm ones (one swarm's report, or a JOIN / LEAVE).
    finds: int = 0
    connects: int = 0
    stat_reports: int = 0
    batch_reports: int = 0
    swarm_reports: int = 0


# ---------------------------------------------------------------------------- routes


class _UdpRoute:
    """A peer reached over UDP at ``addr``."""

    __slots__ = ("addr", "service")

    def __init__(self, service: _UdpService, addr: Address) -> None:
        self.service = service
        self.addr = addr

    def send(self, message: OutgoingMessage) -> bool:
        return self.service.send_message(message, self.addr)

    def alive(self) -> bool:
        return self.service.transport is not None


class _TcpRoute:
    """A peer reached over an open TCP connection."""

    __slots__ = ("connection",)

    def __init__(self, connection: _TcpConnection) -> None:
        self.connection = connection

    def send(self, message: OutgoingMessage) -> bool:
        return self.connection.send_message(message)

    def alive(self) -> bool:
        return not self.connection.closed


Route = _UdpRoute | _TcpRoute


def _same_route(a: Route, b: Route) -> bool:
    """The same way to the peer (then the route already held is kept)."""
    if isinstance(a, _UdpRoute):
        return isinstance(b, _UdpRoute) and a.service is b.service and a.addr == b.addr
    return isinstance(b, _TcpRoute) and a.connection is b.connection


# ---------------------------------------------------------------------------- the server


class TrackerServer:
    """One :class:`Tracker` served over HTTP(S), UDP and TCP. Create with :func:`serve`.

    ``addresses`` maps each transport (``http``, ``https``, ``udp``, ``tcp``) to the address
    it is bound to (a real port when 0 was asked); ``urls`` are the matching client URLs.
    """

    def __init__(
        self,
        config: TrackerDaemonConfig,
        tracker: Tracker | None = None,
        overlay: TrackerOverlay | None = None,
    ) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.tracker = tracker if tracker is not None else Tracker(config.tracker, self.loop.time())
        #: Overlay mode (docs/tracker.md): FIND answers merge the tracker overlay's peers, and
        #: membership changes are published there. None: a standalone tracker, whose request
        #: path is exactly the synchronous one.
        self.overlay = overlay
        self._late: set[asyncio.Task[None]] = set()  # answers waiting for the overlay
        self.addresses: dict[str, Address] = {}
        self.counters = Counters()
        #: peer ID → the binary transport it last used (tracker-initiated messages go there).
        self._routes: collections.OrderedDict[str, Route] = collections.OrderedDict()
        self._udp: _UdpService | None = None
        self._tcp_server: asyncio.Server | None = None
        self._tcp_connections: set[_TcpConnection] = set()
        self._http_runner: web.AppRunner | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._housekeeping: asyncio.TimerHandle | None = None
        self._flush_scheduled = False
        self._closing = False
        self._gc_acquired = False  # this server counts in _gc_users
        self._closed = asyncio.Event()
        self._close_task: asyncio.Task[None] | None = None
        self._json_limits = dataclasses.replace(
            json_codec.DEFAULT_LIMITS, max_body=config.limits.max_http_body
        )
        #: Encoded peer entries of the tracker's responses, built once per peer (the tracker
        #: never mutates a response or the PeerInfo it lists; a changed peer gets a new one).
        self.binary_memo = binary.EncodeMemo()
        self.json_memo = json_codec.EncodeMemo()
        #: Requests seen before, by their bytes: the tracker never mutates a request.
        self.decode_memo = binary.DecodeMemo()

    @property
    def urls(self) -> list[str]:
        """Client URLs of the bound listeners, in the order http, https, udp, tcp."""
        order = ("http", "https", "udp", "tcp")
        return [format_url(t, self.addresses[t]) for t in order if t in self.addresses]

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Bind every configured listener; on failure, release what was bound and raise."""
        config = self.config
        try:
            if config.http is not None:
                self.addresses["http"] = await self._start_http(config.http, None)
            if config.https is not None:
                self.addresses["https"] = await self._start_http(config.https, self._tls())
            if config.udp is not None:
                self.addresses["udp"] = await self._start_udp(config.udp)
            if config.tcp is not None:
                self.addresses["tcp"] = await self._start_tcp(config.tcp)
        except BaseException:
            self.close()
            await self.wait_closed()
            raise
        self._arm_timer()
        self._housekeeping = self.loop.call_later(HOUSEKEEPING_INTERVAL, self._housekeep)
        _acquire_gc()
        self._gc_acquired = True
        log.info("tracker serving on %s", ", ".join(self.urls) or "nothing")

    def close(self) -> None:
        """Stop serving: listeners and connections close, timers stop. Idempotent."""
        if self._closing:
            return
        self._closing = True
        log.info("tracker stats: %s", json.dumps(self.stats(), sort_keys=True, default=str))
        if self._gc_acquired:
            self._gc_acquired = False
            _release_gc()
        for handle in (self._timer, self._housekeeping):
            if handle is not None:
                handle.cancel()
        self._timer = self._housekeeping = None
        if self._udp is not None:
            self._udp.close()
        if self._tcp_server is not None:
            self._tcp_server.close()
        for connection in list(self._tcp_connections):
            connection.abort()
        self._routes.clear()
        for task in list(self._late):
            task.cancel()
        self._close_task = self.loop.create_task(self._finish_close())

    async def _finish_close(self) -> None:
        try:
            if self.overlay is not None:
                await self.overlay.close()  # Leave (RFC 6940 §10.9), unless already stopped
            if self._http_runner is not None:
                await self._http_runner.cleanup()
            if self._tcp_server is not None:
                await self._tcp_server.wait_closed()
        except Exception:
            log.exception("error while closing the tracker")
        finally:
            self._closed.set()

    async def wait_closed(self) -> None:
        """Wait until :meth:`close` has released everything."""
        await self._closed.wait()

    # -- listeners ----------------------------------------------------------------------

    def _tls(self) -> ssl.SSLContext:
        cert, key = self.config.cert_file, self.config.key_file
        if cert is None or key is None:
            raise ConfigError("https needs a certificate and a key")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 7525 §3.1.1
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load certificate {cert} / key {key}: {exc}") from None
        return context

    async def _start_http(self, addr: Address, tls: ssl.SSLContext | None) -> Address:
        limits = self.config.limits
        if self._http_runner is None:
            app = web.Application(client_max_size=limits.max_http_body)
            # RFC 7846 examples POST to arbitrary paths (§4.1: "POST .../video_1"): every path.
            app.router.add_route("*", "/{path:.*}", self._http_request)
            runner = web.AppRunner(
                app,
                access_log=None,
                keepalive_timeout=limits.http_keepalive,
                handle_signals=False,
                shutdown_timeout=HTTP_SHUTDOWN_TIMEOUT,
            )
            await runner.setup()
            self._http_runner = runner
        sock = _bind(addr, socket.SOCK_STREAM, "https" if tls is not None else "http")
        bound = _sockname(sock)
        site = web.SockSite(self._http_runner, sock, ssl_context=tls)
        try:
            await site.start()
        except BaseException:
            sock.close()
            raise
        return bound

    async def _start_udp(self, addr: Address) -> Address:
        sock = _bind(addr, socket.SOCK_DGRAM, "udp")
        tune_buffers(sock, SOCKET_BUFFER)
        service = _UdpService(self)
        try:
            await self.loop.create_datagram_endpoint(lambda: service, sock=sock)
        except BaseException:
            sock.close()
            raise
        self._udp = service
        return _sockname(sock)

    async def _start_tcp(self, addr: Address) -> Address:
        sock = _bind(addr, socket.SOCK_STREAM, "tcp")
        try:
            server = await self.loop.create_server(lambda: _TcpConnection(self), sock=sock)
        except BaseException:
            sock.close()
            raise
        self._tcp_server = server
        return _sockname(sock)

    # -- the common request path --------------------------------------------------------

    def handle(self, request: Request, source: Address, route: Route | None) -> Response:
        """Run one decoded request through the tracker; a failure inside the tracker is an
        Internal Server Error (RFC 7846 §4.3, code 04), never a crash of the daemon."""
        now = self.loop.time()
        counters = self.counters
        if isinstance(request, Find):
            counters.finds += 1
        else:
            if isinstance(request, Connect):
                counters.connects += 1
                swarms = len(request.availability) or min(1, len(request.swarm_actions))
            elif isinstance(request, StatReport):
                counters.stat_reports += 1
                swarms = len(request.stats) + len(request.availability) + len(request.deltas)
            else:
                swarms = 0
            if swarms > 1:
                counters.batch_reports += 1
            elif swarms:
                counters.swarm_reports += 1
        try:
            response = self.tracker.handle(request, source, now)
        except TrackerError as exc:
            response = Response.error(request.transaction_id, exc.code)
        except Exception:
            self.counters.internal_errors += 1
            log.exception("tracker failed on %s from %s", type(request).__name__, source)
            response = Response.error(request.transaction_id, ErrorCode.INTERNAL_SERVER_ERROR)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s from %s (%s): %s %02d",
                type(request).__name__,
                request.peer_id,
                source,
                response.response_type.name,
                response.error_code,
            )
        # Only a request the tracker accepted moves a peer's route, so a request that merely
        # claims someone's peer ID cannot divert that peer's push hints.
        if route is not None and response.response_type == ResponseType.SUCCESSFUL:
            self._remember_route(request.peer_id, route)
        self._schedule_flush()
        if self.overlay is not None:
            self.overlay.poke()
        return response

    def complete(
        self, request: Request, response: Response, source: Address
    ) -> Response | LateResponse:
        """Overlay mode: the answer to send for ``request`` — ``response`` merged with the
        overlay's peers when they are at hand, else a coroutine that fetches them (the caller
        runs it with :meth:`later`). Standalone: ``response``."""
        overlay = self.overlay
        if overlay is None:
            return response
        try:
            return overlay.augment(request, response, source)
        except Exception:
            self.counters.internal_errors += 1
            log.exception("tracker overlay failed on %s", type(request).__name__)
            return response

    def later(self, work: Coroutine[Any, Any, None]) -> None:
        """Run an answer that waits for the overlay (cancelled when the server closes)."""
        if self._closing:
            work.close()
            return
        task = self.loop.create_task(work)
        self._late.add(task)
        task.add_done_callback(self._late.discard)

    async def settle(self, late: LateResponse, fallback: Response) -> Response:
        """The answer a late (overlay) response gives; ``fallback`` (the local answer) if
        producing it fails — the overlay never turns a good answer into an error."""
        try:
            return await late
        except Exception:
            self.counters.internal_errors += 1
            log.exception("tracker overlay failed to merge an answer")
            return fallback

    def _remember_route(self, peer_id: str, route: Route) -> None:
        routes = self._routes
        known = routes.get(peer_id)
        if known is None:
            routes[peer_id] = route
            while len(routes) > self.config.limits.max_routes:
                routes.popitem(last=False)
            return
        if known is not route and not _same_route(known, route):
            routes[peer_id] = route
        routes.move_to_end(peer_id)

    def _forget_connection(self, connection: _TcpConnection) -> None:
        stale = [
            peer_id
            for peer_id, route in self._routes.items()
            if isinstance(route, _TcpRoute) and route.connection is connection
        ]
        for peer_id in stale:
            del self._routes[peer_id]

    # -- timers and tracker-initiated messages ------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and not self._closing:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Send what the tracker wants to say first, then re-arm its timer."""
        self._flush_scheduled = False
        if self._closing:
            return
        try:
            outgoing = self.tracker.pop_outgoing()
        except Exception:
            log.exception("tracker failed to produce its outgoing messages")
            outgoing = []
        for peer_id, message in outgoing:
            route = self._routes.get(peer_id)
            if route is None or not route.alive():
                # An HTTP-only peer gets its hints piggy-backed on its next response.
                self.counters.push_undeliverable += 1
                continue
            if route.send(message):
                self.counters.pushed += 1
            else:
                self.counters.push_undeliverable += 1
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self._closing:
            return
        when = self.tracker.next_timer()
        if when is None:
            return
        if self._timer is not None and self._timer_at <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        try:
            self.tracker.handle_timer(self.loop.time())
        except Exception:
            log.exception("error in the tracker's timers")
        if self.overlay is not None:
            self.overlay.poke()  # expired peers left their swarms
        self._flush()

    def _housekeep(self) -> None:
        now = self.loop.time()
        if self._udp is not None:
            self._udp.housekeep(now)
        for connection in self._tcp_connections:
            connection.reassembler.expire(now)
        if not self._closing:
            self._housekeeping = self.loop.call_later(HOUSEKEEPING_INTERVAL, self._housekeep)

    # -- HTTP(S): RFC 7846 §4 -------------------------------------------------------------

    async def _http_request(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.path == VIEW_PATH:
            return web.json_response(self.view(request.query.get("swarm", "")))
        if request.method != "POST":
            # RFC 7846 §4: requests are POSTs.
            return web.Response(
                status=405, headers={"Allow": "POST"}, text="PPSP-TP requests are POSTs\n"
            )
        limit = self.config.limits.max_http_body
        length = request.content_length
        if length is not None and length > limit:
            # Refused on the header alone, before a byte of the body is read.
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=length)
        # The media type MUST be application/ppsp-tracker+json (RFC 7846 §4), but a missing
        # or generic type is accepted: the body decides (Postel, and curl's default).
        body = await request.read()  # bounded by client_max_size for chunked bodies too
        self.counters.http_requests += 1
        try:
            decoded = json_codec.decode_request(body, limits=self._json_limits)
        except TrackerError as exc:
            self.counters.undecodable += 1
            # §4.1.1: a response carries the request's transaction ID, when it could be read.
            response = Response.error(exc.transaction_id or "", exc.code)
        else:
            peer = request.transport.get_extra_info("peername") if request.transport else None
            source = (
                (str(peer[0]), int(peer[1]))
                if isinstance(peer, tuple) and len(peer) >= 2
                else (request.remote or "", 0)
            )
            response = self.handle(decoded, source, None)
            if self.overlay is not None:
                answer = self.complete(decoded, response, source)
                if not isinstance(answer, Response):
                    answer = await self.settle(answer, response)
                response = answer
            if response.response_type == ResponseType.SUCCESSFUL:
                response = self._piggyback(decoded.peer_id, response)
        try:
            payload = json_codec.encode_response(response, memo=self.json_memo)
        except Exception:
            log.exception("cannot encode a response to %s", response.transaction_id)
            self.counters.internal_errors += 1
            error = Response.error(response.transaction_id, ErrorCode.INTERNAL_SERVER_ERROR)
            payload = json_codec.encode_response(error)
        # RFC 7846 §4.1 examples: HTTP 200 with the PPSP-TP status in the JSON body.
        return web.Response(
            status=200, body=payload, headers={"Content-Type": json_codec.CONTENT_TYPE}
        )

    def view(self, swarm_id: str) -> dict[str, Any]:
        """The tracker's view of one swarm, read-only (``GET /x-p2pcdn/view?swarm=HEX`` on the
        HTTP listener; tests and operators): each member's mode, role, area and the chunk
        ranges it reported (F2), and the swarm's popularity (F5)."""
        tracker = self.tracker
        members: dict[str, Any] = {}
        for peer_id, mode in tracker.peers_of(swarm_id).items():
            held = tracker.availability(peer_id, swarm_id)
            members[peer_id] = {
                "mode": mode.value,
                "ranges": None if held is None else [[r.start, r.end] for r in held],
            }
        popularity = tracker.popularity(swarm_id, self.loop.time())
        return {
            "swarm_id": swarm_id,
            "peers": members,
            "viewers": None if popularity is None else popularity.viewers,
            "join_rate": None if popularity is None else popularity.join_rate,
        }

    def _piggyback(self, peer_id: str, response: Response) -> Response:
        """A cacher's active push hints ride on its HTTP responses: the tracker cannot speak
        first over HTTP, and a plain RFC 7846 client ignores the members (§4.4)."""
        try:
            hints = self.tracker.hints_for(peer_id, self.loop.time())
        except Exception:
            log.exception("tracker failed to produce hints for %s", peer_id)
            return response
        if not hints:
            return response
        # The tracker shares response objects with its replay cache: never mutate one.
        return dataclasses.replace(response, push_hints=[*response.push_hints, *hints])

    # -- TCP ------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The tracker's statistics and the daemon's counters."""
        out = dict(self.tracker.stats())
        out["daemon"] = dict(vars(self.counters))
        if self.overlay is not None:
            out["overlay"] = dataclasses.asdict(self.overlay.counters)
        out["daemon"]["tcp_connections"] = len(self._tcp_connections)
        out["daemon"]["routes"] = len(self._routes)
        if self._udp is not None:
            out["daemon"]["udp_cached_responses"] = len(self._udp.cache)
        return out


# ---------------------------------------------------------------------------- UDP


class _CachedResponse(NamedTuple):
    # A tuple of atoms: the cyclic garbage collector stops tracking it, so thousands of cached
    # responses add nothing to its passes.
    fragments: tuple[bytes, ...]
    size: int
    expires: float


# A NamedTuple made without its generated __new__ (a Python function), once per request.
_new_cached = tuple.__new__


class _UdpService(asyncio.DatagramProtocol):
    """Binary PPSP-TP over UDP. A retransmitted request (same source and transaction ID,
    RFC 7846 §4.3) is answered from the response cache, byte for byte, without running it
    through the tracker again."""

    def __init__(self, server: TrackerServer) -> None:
        self.server = server
        limits = server.config.limits
        self.limits = limits
        self.reassembler = binary.Reassembler(
            max_pending=limits.max_pending_fragments,
            max_message=limits.max_message,
            timeout=limits.reassembly_timeout,
            max_per_source=limits.max_pending_per_source,
            max_buffered=limits.reassembly_buffer,
        )
        self.cache: collections.OrderedDict[tuple[Address, int], _CachedResponse] = (
            collections.OrderedDict()
        )
        self.cache_bytes = 0
        self._route_to: dict[Address, _UdpRoute] = {}  # one route object per source
        self.transport: asyncio.DatagramTransport | None = None
        self.paced = 0  # messages being sent in paced bursts

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport.
        # Link emulation and --pcap wrap it only when configured (ppsp.linkemu, capture).
        self.transport = cast(
            asyncio.DatagramTransport, capture.tap_datagram(wrap_datagram(transport))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP socket error: %s", exc)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if capture.active() is not None:
            capture.received_datagram(self.transport, data, addr)
        try:
            self._datagram(data, (str(addr[0]), int(addr[1])))
        except Exception:  # a bug must not take the daemon down; the datagram is dropped
            self.server.counters.internal_errors += 1
            log.exception("error handling a datagram from %s", addr)

    def _datagram(self, data: bytes, source: Address) -> None:
        server = self.server
        if self.transport is None:
            return
        # Lean path for what nearly every datagram is, a whole request: one unpack of the
        # header instead of peek_header, the reassembler's checks and decode's. Anything else
        # (fragments, responses, garbage, oversize) takes the general path below, which
        # treats a whole request exactly like this.
        size = len(data)
        if size >= binary.HEADER_SIZE:
            token, _, _, method, tid, fragment, length = _UNPACK_HEADER(data)
            if (
                length == size
                and fragment == binary.UNFRAGMENTED
                and token == binary.TOKEN
                and method >> 8 == _REQUEST_BYTE
                and size <= self.limits.max_message
            ):
                now = server.loop.time()
                key = (source, tid)
                cached = self.cache.get(key)
                if cached is not None and cached.expires > now:
                    server.counters.udp_retransmissions_answered += 1
                    self._send(cached.fragments, source)
                    return
                try:
                    request = binary.decode(data, memo=server.decode_memo)
                except TrackerError as exc:
                    server.counters.undecodable += 1
                    self._send([binary.error_response(tid, exc.code)], source)
                    return
                self._answer(request, key, now)
                return
        try:
            header = binary.peek_header(data)
        except TrackerError:
            # Not PPSP-TP (wrong token, too short): no transaction ID to answer, and
            # answering garbage would make the tracker a reflector. Dropped.
            server.counters.udp_ignored += 1
            return
        if not binary.is_request(header):
            server.counters.udp_ignored += 1  # responses and pushes go the other way
            return
        now = server.loop.time()
        key = (source, header.transaction_id)
        cached = self.cache.get(key)
        if cached is not None and cached.expires > now:
            # Resend once per retransmitted request: on its last fragment, the one that
            # would have completed it.
            if binary.is_last_fragment(header):
                server.counters.udp_retransmissions_answered += 1
                self._send(cached.fragments, source)
            return
        try:
            message = self.reassembler.feed(data, source, now)
        except TrackerError as exc:
            server.counters.undecodable += 1
            self._send([binary.error_response(header.transaction_id, exc.code)], source)
            return
        if message is None:
            return  # more fragments to come
        self._answer(message, key, now)

    def _answer(self, message: Message, key: tuple[Address, int], now: float) -> None:
        """Run a whole message that arrived as a request through the tracker; send and cache
        the response (``key``: the source and the header's transaction ID)."""
        server = self.server
        if not isinstance(message, REQUEST_TYPES):
            server.counters.udp_ignored += 1
            return
        source = key[0]
        server.counters.udp_requests += 1
        route = self._route_to.get(source)
        if route is None:
            if len(self._route_to) >= server.config.limits.max_routes:
                self._route_to.clear()
            route = self._route_to[source] = _UdpRoute(self, source)
        response = server.handle(message, source, route)
        if server.overlay is not None:
            answer = server.complete(message, response, source)
            if not isinstance(answer, Response):
                server.later(self._answer_later(answer, response, key))
                return
            response = answer
        self._reply(response, key, now)

    async def _answer_later(
        self, late: LateResponse, fallback: Response, key: tuple[Address, int]
    ) -> None:
        response = await self.server.settle(late, fallback)
        self._reply(response, key, self.server.loop.time())

    def _reply(self, response: Response, key: tuple[Address, int], now: float) -> None:
        server = self.server
        source, tid = key
        try:
            fragments = binary.encode(
                response,
                transaction_id=tid,
                max_fragment=self.limits.udp_max_fragment,
                memo=server.binary_memo,
            )
        except Exception:
            server.counters.internal_errors += 1
            log.exception("cannot encode a response for %s", source)
            fragments = [binary.error_response(tid, ErrorCode.INTERNAL_SERVER_ERROR)]
        self._remember(key, fragments, now)
        self._send(fragments, source)

    def _send(self, fragments: Sequence[bytes], addr: Address) -> None:
        """Send a message's fragments, paced: a burst of :data:`UDP_BURST` now and the rest
        in later bursts, so that a big response does not overflow the receiver's socket
        buffer (a datagram dropped there costs the whole message a retransmission)."""
        transport = self.transport
        if transport is None:
            return
        for fragment in fragments[:UDP_BURST]:
            transport.sendto(fragment, addr)
        if len(fragments) > UDP_BURST:
            if self.paced >= MAX_PACED_SENDS:
                self.server.counters.udp_pacing_dropped += 1
                return  # the client retransmits and is answered from the cache
            self.paced += 1
            self.server.loop.call_later(UDP_BURST_GAP, self._send_rest, fragments, UDP_BURST, addr)

    def _send_rest(self, fragments: Sequence[bytes], start: int, addr: Address) -> None:
        transport = self.transport
        if transport is None:
            self.paced -= 1
            return
        end = start + UDP_BURST
        for fragment in fragments[start:end]:
            transport.sendto(fragment, addr)
        if end < len(fragments):
            self.server.loop.call_later(UDP_BURST_GAP, self._send_rest, fragments, end, addr)
        else:
            self.paced -= 1

    def send_message(self, message: OutgoingMessage, addr: Address) -> bool:
        if self.transport is None:
            return False
        try:
            fragments = binary.encode(message, max_fragment=self.limits.udp_max_fragment)
        except Exception:
            log.exception("cannot encode a %s", type(message).__name__)
            return False
        self._send(fragments, addr)
        return True

    def _remember(self, key: tuple[Address, int], fragments: list[bytes], now: float) -> None:
        limits = self.limits
        size = len(fragments[0]) if len(fragments) == 1 else sum(map(len, fragments))
        most, biggest = limits.response_cache_entries, limits.response_cache_bytes
        if size > biggest or most == 0:
            return
        cache = self.cache
        old = cache.pop(key, None)
        total = self.cache_bytes + size
        if old is not None:
            total -= old.size
        cache[key] = _new_cached(
            _CachedResponse, (tuple(fragments), size, now + limits.response_cache_seconds)
        )
        while len(cache) > most or total > biggest:
            _, evicted = cache.popitem(last=False)
            total -= evicted.size
        self.cache_bytes = total

    def housekeep(self, now: float) -> None:
        self.reassembler.expire(now)
        # Entries were inserted in time order with one lifetime, so the oldest expire first.
        while self.cache:
            key, entry = next(iter(self.cache.items()))
            if entry.expires > now:
                break
            del self.cache[key]
            self.cache_bytes -= entry.size


# ---------------------------------------------------------------------------- TCP


class _TcpConnection(asyncio.Protocol):
    """One binary PPSP-TP connection: frames in, responses and tracker-initiated messages
    out. Closed when idle for ``tcp_idle_timeout``, on a frame that cannot be one, or when
    the peer does not read what it is sent (``tcp_write_buffer``).

    A protocol, not a stream reader: the frames that arrive together are answered together
    in one write, with no task switch or timeout object per frame. Flow control is the
    stream's: when the transport's buffer passes its high-water mark, the connection stops
    answering and reading until it drains (and is closed if that takes the idle timeout)."""

    def __init__(self, server: TrackerServer) -> None:
        self.server = server
        self.limits = server.config.limits
        self.transport: asyncio.Transport | None = None
        self.peer: Address = ("", 0)
        # One peer per connection: its own small reassembly state, bounded like a source's
        # share of the UDP one.
        self.reassembler = binary.Reassembler(
            max_pending=self.limits.max_pending_per_source,
            max_message=self.limits.max_message,
            timeout=self.limits.reassembly_timeout,
            max_per_source=self.limits.max_pending_per_source,
            max_buffered=self.limits.max_message,
        )
        self.route = _TcpRoute(self)
        self.closed = False
        self._buffer = bytearray()
        self._paused = False  # the transport's buffer is above its high-water mark
        self._since = 0.0  # when the connection last made progress (a frame, a drain)
        self._idle: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, capture.tap_stream(wrap_stream(transport)))
        server = self.server
        if server._closing or len(server._tcp_connections) >= self.limits.max_tcp_connections:
            server.counters.tcp_connections_refused += 1
            self.closed = True
            transport.close()
            return
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        server._tcp_connections.add(self)
        self._since = server.loop.time()
        self._idle = server.loop.call_at(self._since + self.limits.tcp_idle_timeout, self._check)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.debug("TCP connection from %s broke: %s", self.peer, exc)
        self.closed = True
        self._stop_timer()
        server = self.server
        if self in server._tcp_connections:
            server._tcp_connections.discard(self)
            server._forget_connection(self)

    def data_received(self, data: bytes) -> None:
        if capture.active() is not None:
            capture.received_stream(self.transport, data)
        self._buffer += data
        try:
            self._frames()
        except Exception:  # a bug must not take the daemon down; the connection goes
            self.server.counters.internal_errors += 1
            log.exception("error handling TCP data from %s", self.peer)
            self.abort()

    def eof_received(self) -> bool:
        # A clean end between frames, or a truncated frame: either way nothing more can be
        # answered; what was answered is still sent (close, not abort).
        if self._buffer:
            log.debug("TCP connection from %s ended inside a frame", self.peer)
        self.abort()
        return True

    def pause_writing(self) -> None:
        self._paused = True
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()
            self._since = self.server.loop.time()

    def resume_writing(self) -> None:
        self._paused = False
        if self.transport is None or self.closed:
            return
        self._since = self.server.loop.time()
        self.data_received(b"")  # frames left over when writing paused
        if not self._paused and not self.closed:
            self.transport.resume_reading()

    # -- frames ----------------------------------------------------------------------------

    def _frames(self) -> None:
        """Answer every whole frame in the buffer (up to a write pause) in one write."""
        buffer = self._buffer
        limits = self.limits
        out: list[bytes] = []
        queued = 0
        pos = 0
        try:
            while not self._paused and not self.closed and len(buffer) - pos >= binary.HEADER_SIZE:
                # draft-gu-02 §5.2.1: the length field frames the stream; a header that
                # cannot start a frame leaves no way to resynchronise.
                token, _, _, method, tid, fragment, length = _UNPACK_HEADER(buffer, pos)
                if (
                    token != binary.TOKEN
                    or not binary.HEADER_SIZE <= length <= limits.max_tcp_frame
                ):
                    self.server.counters.undecodable += 1
                    log.debug(
                        "closing TCP connection from %s: token %#010x, frame length %d",
                        self.peer,
                        token,
                        length,
                    )
                    self._flush(out)
                    self.abort()
                    return
                if len(buffer) - pos < length:
                    break
                frame = bytes(buffer[pos : pos + length])
                pos += length
                if method >> 8 != _REQUEST_BYTE:
                    continue  # responses and pushes go the other way
                for answer in self._frame(frame, tid, fragment):
                    out.append(answer)
                    queued += len(answer)
                if queued >= _TCP_BATCH:
                    self._flush(out)  # may pause writing: the rest waits for the drain
                    out = []
                    queued = 0
        finally:
            if pos:
                del buffer[:pos]
                self._since = self.server.loop.time()  # a frame came: not idle
        self._flush(out)

    def _frame(self, frame: bytes, tid: int, fragment: int) -> list[bytes]:
        """The frames that answer one request frame (none while a message is incomplete)."""
        server = self.server
        try:
            if fragment == binary.UNFRAGMENTED and len(frame) <= self.limits.max_message:
                # What the reassembler does with a whole message.
                message: Message | None = binary.decode(frame, memo=server.decode_memo)
            else:
                message = self.reassembler.feed(frame, self.peer, server.loop.time())
        except TrackerError as exc:
            server.counters.undecodable += 1
            return [binary.error_response(tid, exc.code)]
        if message is None or not isinstance(message, REQUEST_TYPES):
            return []
        server.counters.tcp_requests += 1
        response = server.handle(message, self.peer, self.route)
        if server.overlay is not None:
            answer = server.complete(message, response, self.peer)
            if not isinstance(answer, Response):
                server.later(self._frame_later(answer, response, tid))
                return []  # answered when the overlay has: clients match transaction IDs
            response = answer
        return self._encode(response, tid)

    async def _frame_later(self, late: LateResponse, fallback: Response, tid: int) -> None:
        response = await self.server.settle(late, fallback)
        self._write(self._encode(response, tid))

    def _encode(self, response: Response, tid: int) -> list[bytes]:
        server = self.server
        try:
            return binary.encode(
                response,
                transaction_id=tid,
                max_fragment=self.limits.tcp_max_fragment,
                memo=server.binary_memo,
            )
        except Exception:
            server.counters.internal_errors += 1
            log.exception("cannot encode a response for %s", self.peer)
            return [binary.error_response(tid, ErrorCode.INTERNAL_SERVER_ERROR)]

    def _flush(self, frames: list[bytes]) -> None:
        if frames:
            self._write(frames)

    def _write(self, frames: list[bytes]) -> bool:
        transport = self.transport
        if self.closed or transport is None:
            return False
        transport.writelines(frames)
        if transport.get_write_buffer_size() > self.limits.tcp_write_buffer:
            log.info("closing TCP connection from %s: it does not read", self.peer)
            self.abort(drop=True)
            return False
        return True

    def send_message(self, message: OutgoingMessage) -> bool:
        """The tracker speaks first on an open connection (DESIGN §4)."""
        try:
            frames = binary.encode(message, max_fragment=self.limits.tcp_max_fragment)
        except Exception:
            log.exception("cannot encode a %s", type(message).__name__)
            return False
        return self._write(frames)

    # -- life --------------------------------------------------------------------------------

    def _check(self) -> None:
        """The idle timer: no frame completed (or no drain) for ``tcp_idle_timeout``."""
        self._idle = None
        if self.closed:
            return
        now = self.server.loop.time()
        due = self._since + self.limits.tcp_idle_timeout
        if now >= due:
            if self._paused:
                # It has not read our answers for that long: what is unsent goes too.
                log.info("closing TCP connection from %s: it does not read", self.peer)
                self.abort(drop=True)
            else:
                log.debug("closing idle TCP connection from %s", self.peer)
                self.abort()
            return
        self._idle = self.server.loop.call_at(due, self._check)

    def _stop_timer(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def abort(self, *, drop: bool = False) -> None:
        """Close the connection: what is already written is still sent, unless ``drop``
        (a peer that does not read would otherwise hold its buffers for ever)."""
        if self.closed:
            return
        self.closed = True
        self._stop_timer()
        transport = self.transport
        if transport is not None:
            if drop:
                transport.abort()
                return
            transport.close()
            if transport.get_write_buffer_size():
                # Still sending: give the peer the idle timeout to read it, no more.
                self.server.loop.call_later(self.limits.tcp_idle_timeout, transport.abort)


# ---------------------------------------------------------------------------- helpers


def _bind(addr: Address, kind: socket.SocketKind, transport: str) -> socket.socket:
    """A socket bound to ``addr`` (a host name resolves to its first address). An
    :class:`OSError` names the listener that failed."""
    try:
        infos = socket.getaddrinfo(addr[0], addr[1], type=kind, flags=socket.AI_PASSIVE)
        family, _, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {format_url(transport, addr)}: {exc}") from exc
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        message = f"cannot listen on {format_url(transport, addr)}: {exc.strerror or exc}"
        raise OSError(exc.errno, message) from exc
    except BaseException:
        sock.close()
        raise
    return sock


def tune_buffers(sock: socket.socket, size: int) -> None:
    """Raise a UDP socket's buffers to ``size`` where allowed (beyond ``rmem_max`` only as
    root, with the *BUFFORCE options)."""
    for option, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, force, size)  # SO_RCVBUFFORCE / SO_SNDBUFFORCE
        with contextlib.suppress(OSError):
            if sock.getsockopt(socket.SOL_SOCKET, option) < size:
                sock.setsockopt(socket.SOL_SOCKET, option, size)


def _sockname(sock: socket.socket) -> Address:
    name = sock.getsockname()
    return (str(name[0]), int(name[1]))


async def serve(
    config: TrackerDaemonConfig,
    tracker: Tracker | None = None,
    *,
    overlay: TrackerOverlay | None = None,
) -> TrackerServer:
    """Start a tracker daemon with ``config`` (``tracker`` to serve an existing
    :class:`Tracker`). Raises :class:`OSError` when a listener cannot bind and
    :class:`ConfigError` for an unusable certificate.

    Overlay mode (``config.overlay``, docs/tracker.md): the tracker's RELOAD node is started
    from the daemon configuration and joins the tracker overlay first (``overlay`` to serve
    with one built already, around ``tracker``, an :class:`~ppsp.tracker.overlay.OverlayTracker`)."""
    if overlay is None and config.overlay is not None:
        # Imported here: a standalone tracker loads no RELOAD code.
        from ppsp.tracker.overlay import OverlayTracker, open_overlay

        if tracker is not None and not isinstance(tracker, OverlayTracker):
            raise ConfigError("overlay mode serves an OverlayTracker")
        loop = asyncio.get_running_loop()
        tracker = tracker if tracker is not None else OverlayTracker(config.tracker, loop.time())
        try:
            overlay = await open_overlay(config.overlay, tracker)
        except (OSError, ValueError, TimeoutError, ConnectionError) as exc:
            raise ConfigError(f"cannot join the tracker overlay: {exc}") from None
    if overlay is not None:
        tracker = overlay.tracker
    server = TrackerServer(config, tracker, overlay)
    try:
        await server.start()
    except BaseException:
        if overlay is not None:
            await overlay.close()
        raise
    if overlay is not None:
        overlay.start()
    return server
