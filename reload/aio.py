"""The RELOAD node daemon: one sans-IO :class:`reload.node.ReloadNode` driven by asyncio over
real DTLS/TLS overlay links (RFC 6940), and its client API.

:class:`OverlayNode` is the thin adapter DESIGN.md §3 asks for. It

* listens for overlay links on one address: DTLS-UDP-SR-NO-ICE (link type 3, the default) or
  TLS-TCP-FH-NO-ICE (link type 4) through :mod:`reload.links`, which authenticates both ends
  with the overlay's certificates and checks the peer's Node-ID (§6.6);
* carries out the node's actions: :class:`~reload.node.OpenLink` opens a link to the
  AttachAns candidate (§6.5.1, no ICE) with the expected Node-ID, :class:`~reload.node.SendMessage`
  sends over a link to that neighbour, fragmenting to the DTLS path MTU (§6.7), and
  :class:`~reload.node.CloseLink` closes a link once what was queued on it is acknowledged;
* feeds every received message, reassembled (§6.7), to :meth:`ReloadNode.receive`, link
  failures to :meth:`ReloadNode.link_down` and runs the node's timers;
* persists stored data in ``data_dir/store.sqlite`` (:mod:`reload.storage`), so a restarted
  node still has it;
* leaves cleanly (§10.9: Leave to the neighbours) on :meth:`OverlayNode.close`.

Decisions the RFC leaves open (also in docs/overlay.md):

* Outgoing links use a socket of their own (an ephemeral port): two nodes that open links to
  each other at the same moment then get two independent links instead of two handshakes
  colliding on one address pair. A node may so hold several links to one neighbour; it sends
  on the newest usable one and reports the neighbour down only when the last one fails.
* Joining (§10.5, §11.4): the bootstrap nodes are addresses; the daemon opens a link to the
  first that answers, learns its Node-ID from its certificate, and joins through it. With no
  bootstrap node the daemon creates the overlay (it is its first peer).
* Keep-alive: Simple Reliability (§6.6.3.1) notices a dead neighbour only when it sends to it,
  and CHORD-RELOAD's default ping interval is an hour (§10.7.4.2). The daemon pings every
  neighbour it has a link to every ``keepalive`` seconds (a RELOAD Ping, §6.5.3), so a
  crashed neighbour's link fails after the link's retransmissions and the ring repairs
  (§10.7.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from reload import security
from reload.config import (
    DEFAULT_PORT,
    KindDescription,
    OverlayConfiguration,
    parse_overlay_configuration,
)
from reload.fragments import FragmentError, Reassembler, fragment
from reload.links import (
    DtlsEndpoint,
    DtlsLink,
    LinkClosedError,
    LinkConfig,
    LinkConnection,
    LinkError,
    connect_dtls,
    connect_tls,
    serve_dtls,
    serve_tls,
)
from reload.messages import (
    DataValue,
    ErrorCode,
    FetchAns,
    FindAns,
    IpAddressPort,
    MessageBody,
    PingAns,
    StatAns,
    StoreAns,
    StoredDataSpecifier,
    StoredDataValue,
)
from reload.node import (
    CloseLink,
    Joined,
    MessageDropped,
    NodeConfig,
    OpenLink,
    PeerDown,
    PkiSecurity,
    ReloadNode,
    RequestDone,
    SendMessage,
)
from reload.topology import chord

__all__ = [
    "DEFAULT_KINDS",
    "LAB_KIND",
    "DaemonConfig",
    "DaemonConfigError",
    "OverlayNode",
    "ReloadRequestError",
    "load_daemon_config",
]

log = logging.getLogger(__name__)

#: The Kind a daemon without an overlay configuration document stores: SINGLE, USER-MATCH
#: (a node writes at H(its user name), §7.3.1), in the private Kind-ID range (DESIGN.md §4).
LAB_KIND = 0xF00000FF
DEFAULT_KINDS = (KindDescription("SINGLE", "USER-MATCH", 1, 2048, kind_id=LAB_KIND),)
#: How long a client request may take: the node's own timeout is 5 transmissions of the
#: overlay reliability timer (§6.2.1); this bounds the wait should the node be stopped.
CLIENT_TIMEOUT = 60.0
#: How long :meth:`OverlayNode.replica_set` waits for each Ping (the node's own timeout is
#: 5 transmissions of the overlay reliability timer, §6.2.1).
REPLICA_TIMEOUT = 15.0
#: How long a Leave may take to be acknowledged before the links close anyway.
LEAVE_GRACE = 2.0


class ReloadRequestError(Exception):
    """A client request failed; ``code`` is the RELOAD ErrorCode (§6.3.3.1), Error_Request_
    Timeout when no answer came (§6.2.1)."""

    def __init__(self, code: ErrorCode, info: bytes = b"") -> None:
        text = info.decode("utf-8", "replace") if info else ""
        super().__init__(f"{code.name}{': ' + text if text else ''}")
        self.code = code
        self.info = info


class DaemonConfigError(ValueError):
    """A daemon configuration file that cannot be used."""


# ---------------------------------------------------------------------------------------------
# Daemon configuration (TOML)
# ---------------------------------------------------------------------------------------------


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, DEFAULT_PORT
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise DaemonConfigError(f"{text!r} is not an IP address and port") from None
    if not 0 <= number <= 0xFFFF:
        raise DaemonConfigError(f"port {number} out of range")
    return host, number


@dataclass
class DaemonConfig:
    """The daemon's own settings (docs/overlay.md): where it listens, with which link type,
    its credentials, the overlay configuration document, bootstrap nodes and data directory."""

    certificate: Path
    key: Path
    ca: Path | None = None
    configuration: Path | None = None
    overlay_name: str | None = None
    listen: tuple[str, int] = ("127.0.0.1", DEFAULT_PORT)
    link: str = "dtls"
    bootstrap: list[tuple[str, int]] = field(default_factory=list)
    data_dir: Path | None = None
    keepalive: float = 15.0
    log_level: str = "WARNING"
    #: A client (RFC 6940 §4.2), not a peer: attaches through a bootstrap node, no routing
    #: or storage.
    client: bool = False


def load_daemon_config(path: Path) -> DaemonConfig:
    """Read a daemon configuration (TOML, keys at top level or under ``[overlay]``); relative
    paths are relative to the file's directory."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DaemonConfigError(f"{path}: {exc}") from None
    table = raw.get("overlay", raw)
    if not isinstance(table, dict):
        raise DaemonConfigError("[overlay] must be a table")
    base = path.parent

    def file(key: str, required: bool = False) -> Path | None:
        value = table.get(key)
        if value is None:
            if required:
                raise DaemonConfigError(f"{path}: '{key}' is required")
            return None
        if not isinstance(value, str):
            raise DaemonConfigError(f"{path}: '{key}' must be a path")
        return base / value

    known = {f.name for f in dataclasses.fields(DaemonConfig)} | {"data-dir"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise DaemonConfigError(f"{path}: unknown keys {', '.join(unknown)}")
    certificate, key = file("certificate", True), file("key", True)
    assert certificate is not None and key is not None
    link = str(table.get("link", "dtls")).lower()
    if link not in ("dtls", "tls"):
        raise DaemonConfigError(f"{path}: link must be 'dtls' or 'tls'")
    bootstrap = table.get("bootstrap", [])
    if not isinstance(bootstrap, list) or not all(isinstance(b, str) for b in bootstrap):
        raise DaemonConfigError(f"{path}: bootstrap must be a list of 'HOST:PORT' strings")
    data_dir = table.get("data_dir", table.get("data-dir"))
    keepalive = table.get("keepalive", 15.0)
    if not isinstance(keepalive, int | float) or keepalive <= 0:
        raise DaemonConfigError(f"{path}: keepalive must be a positive number of seconds")
    overlay_name = table.get("overlay_name")
    client = table.get("client", False)
    if not isinstance(client, bool):
        raise DaemonConfigError(f"{path}: client must be true or false")
    if client and not bootstrap:
        raise DaemonConfigError(f"{path}: a client needs bootstrap nodes")
    return DaemonConfig(
        certificate=certificate,
        key=key,
        ca=file("ca"),
        configuration=file("configuration"),
        overlay_name=str(overlay_name) if overlay_name is not None else None,
        listen=_address(str(table.get("listen", f"127.0.0.1:{DEFAULT_PORT}"))),
        link=link,
        bootstrap=[_address(b) for b in bootstrap],
        data_dir=base / str(data_dir) if data_dir is not None else None,
        keepalive=float(keepalive),
        log_level=str(table.get("log_level", "WARNING")).upper(),
        client=client,
    )


# ---------------------------------------------------------------------------------------------
# The node
# ---------------------------------------------------------------------------------------------


class OverlayNode:
    """One RELOAD peer on real sockets. Build it, ``await start()``, use the client API,
    ``await close()`` (Leave) or ``await abort()`` (a crash: sockets closed, nothing sent)."""

    def __init__(
        self,
        node_config: NodeConfig,
        link_config: LinkConfig,
        signer: security.Signer,
        *,
        verifier: security.Verifier | None = None,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        link: str = "dtls",
        bootstrap: Sequence[tuple[str, int]] = (),
        data_dir: Path | None = None,
        keepalive: float = 15.0,
    ) -> None:
        if link not in ("dtls", "tls"):
            raise ValueError("link must be 'dtls' or 'tls'")
        self.node_id = signer.node_id
        self.link_config = link_config
        self.link_type = link
        self.listen = listen
        self.bootstrap = list(bootstrap)
        self.data_dir = data_dir
        self.keepalive = keepalive
        self.verifier = verifier or security.Verifier(
            link_config.trust_roots,
            link_config.overlay,
            link_config.self_signed_permitted,
            self_signed_digest=link_config.self_signed_digest,
            node_id_length=node_config.node_id_length,
        )
        self._security = PkiSecurity(signer, self.verifier)
        self._node_config = node_config
        self.node: ReloadNode | None = None
        self.address: tuple[str, int] | None = None
        self._dtls: DtlsEndpoint | None = None
        self._tls: asyncio.Server | None = None
        self._links: dict[bytes, list[LinkConnection]] = {}
        self._conns: set[LinkConnection] = set()
        self._opening: set[bytes] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: dict[int, asyncio.Future[RequestDone]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._keepalive_task: asyncio.Task[None] | None = None
        self._last_heard: dict[bytes, float] = {}
        self._keepalive_pings: dict[int, bytes] = {}  # handle -> neighbour
        self._reconnecting = False
        self.joined = asyncio.Event()
        #: Overlay hops the last answer to a client request travelled (Via List + 1).
        self.last_hops = 0
        self._stopped = False
        #: Called with the sans-IO node as soon as :meth:`start` creates it, before any
        #: message arrives: where a usage registers its rules (reload.usages).
        self.on_node: list[Callable[[ReloadNode], object]] = []

    # --- life cycle ---------------------------------------------------------------------

    @property
    def _n(self) -> ReloadNode:
        if self.node is None:
            raise RuntimeError("the node is not started")
        return self.node

    async def start(self, *, join_timeout: float = 30.0, wait_joined: bool = True) -> None:
        """Listen, then create the overlay (no bootstrap node) or join it through the first
        bootstrap node that answers (§11.4); returns once joined (§10.5 step 9), or at once
        with ``wait_joined=False`` (then await :attr:`joined`)."""
        host, port = self.listen
        if self.link_type == "dtls":
            self._dtls = await serve_dtls(self.link_config, self._on_incoming, host, port)
            self.address = self._dtls.address
        else:
            self._tls = await serve_tls(self.link_config, self._on_incoming, host, port)
            self.address = self._tls.sockets[0].getsockname()[:2]
        assert self.address is not None
        config = dataclasses.replace(
            self._node_config,
            address=IpAddressPort(ipaddress.ip_address(self.address[0]), self.address[1]),
            link_type=3 if self.link_type == "dtls" else 4,
        )
        store_path = None
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            store_path = self.data_dir / "store.sqlite"
        self.node = ReloadNode(
            self.node_id, config, self._security, time.time(), store_path=store_path
        )
        for hook in self.on_node:
            hook(self.node)
        if self.keepalive > 0:
            self._keepalive_task = asyncio.ensure_future(self._keepalive_loop())
        if not self.bootstrap:
            if config.client:
                raise ConnectionError("a client needs a bootstrap node (RFC 6940 §4.2.1)")
            self.node.join(None, time.time())
            self._service()
        else:
            await self._join_through_bootstrap()
        if wait_joined:
            await asyncio.wait_for(self.joined.wait(), join_timeout)

    async def _join_through_bootstrap(self) -> None:
        errors: list[str] = []
        for address in self.bootstrap:
            if address == self.address:
                continue
            try:
                conn = await self._connect(address, None)
            except (OSError, LinkClosedError, TimeoutError) as exc:
                errors.append(f"{address[0]}:{address[1]}: {exc}")
                continue
            peer = conn.peer_node_id
            assert peer is not None
            self._register(conn, peer)
            where = IpAddressPort(ipaddress.ip_address(address[0]), address[1])
            self._n.join(peer, time.time(), where)
            self._service()
            return
        raise ConnectionError("no bootstrap node answered: " + "; ".join(errors))

    async def _reconnect_client(self) -> None:
        """A client without any link (its attached peer and the bootstrap peers it knew are
        gone) starts over through the configured bootstrap addresses (§4.2.1, §11.4)."""
        try:
            await self._join_through_bootstrap()
        except ConnectionError as exc:
            log.info("%s: client cannot reconnect: %s", self.node_id.hex()[:8], exc)
        finally:
            self._reconnecting = False

    async def close(self) -> None:
        """Leave the overlay (§10.9) and close every link and socket."""
        if self._stopped:
            return
        if self.node is not None and self.node.joined:
            self.node.leave(time.time())
            self._service()
            await self._drain(LEAVE_GRACE)
        self._shutdown(abrupt=False)

    async def abort(self) -> None:
        """Stop as a crash would: no Leave, sockets closed without a word to the peers."""
        self._shutdown(abrupt=True)

    def _shutdown(self, *, abrupt: bool) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
        for conn in list(self._conns):
            if abrupt:
                _abort_connection(conn)
            conn.close()
        if self._dtls is not None:
            if abrupt:
                transport = self._dtls._protocol.transport
                if transport is not None:
                    transport.abort()
            self._dtls.close()
        if self._tls is not None:
            self._tls.close()
        for task in list(self._tasks):
            task.cancel()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ReloadRequestError(ErrorCode.REQUEST_TIMEOUT, b"stopped"))
        self._pending.clear()
        if self.node is not None:
            self.node.store_.close()

    async def _drain(self, timeout: float) -> None:
        """Wait until every link has delivered what was queued on it (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(c.link.frames.idle or not c.link.usable for c in self._conns):
                return
            await asyncio.sleep(0.02)

    # --- links --------------------------------------------------------------------------

    async def _connect(self, address: tuple[str, int], expected: bytes | None) -> LinkConnection:
        if self.link_type == "dtls":
            coro = connect_dtls(self.link_config, address, expected, local_host=self.listen[0])
        else:
            coro = connect_tls(self.link_config, address, expected)
        return await asyncio.wait_for(coro, self.link_config.handshake_timeout)

    def _on_incoming(self, conn: LinkConnection) -> None:
        if self._stopped:
            conn.close()
            return
        self._spawn(self._accept(conn))

    async def _accept(self, conn: LinkConnection) -> None:
        self._conns.add(conn)
        try:
            peer = await conn.connected
        except LinkClosedError as exc:
            log.info("incoming link failed: %s", exc)
            self._conns.discard(conn)
            return
        self._register(conn, peer)

    def _register(self, conn: LinkConnection, peer: bytes) -> None:
        """A link to ``peer`` is up: read from it and tell the node, also when an older link
        to the same Node-ID is still listed (it may be a dead peer's, and the node may be
        waiting for this link to finish an Attach)."""
        self._conns.add(conn)
        self._links.setdefault(peer, []).append(conn)
        self._spawn(self._reader(conn, peer))
        if self.node is not None and not self._stopped:
            self.node.link_up(peer, time.time())
            self._service()

    async def _reader(self, conn: LinkConnection, peer: bytes) -> None:
        reassembler = Reassembler(max_message_size=self._n.config.max_message_size)
        try:
            while True:
                data = await conn.receive()
                try:
                    whole = reassembler.receive(data, time.time())
                except FragmentError as exc:
                    log.info("dropping a message from %s: %s", peer.hex()[:8], exc)
                    continue
                if whole is None or self._stopped:
                    continue
                self._last_heard[peer] = time.monotonic()
                self._n.receive(peer, whole, time.time())
                self._service()
        except LinkClosedError as exc:
            log.info("link to %s closed: %s", peer.hex()[:8], exc)
        finally:
            self._unregister(conn, peer)

    def _unregister(self, conn: LinkConnection, peer: bytes) -> None:
        self._conns.discard(conn)
        conns = self._links.get(peer)
        if conns is None or conn not in conns:
            return
        conns.remove(conn)
        if conns:
            return
        del self._links[peer]
        self._last_heard.pop(peer, None)
        if self.node is not None and not self._stopped:
            self.node.link_down(peer, time.time())
            self._service()

    def _link_to(self, peer: bytes) -> LinkConnection | None:
        for conn in reversed(self._links.get(peer, [])):
            if conn.link.usable:
                return conn
        return None

    async def _open(self, peer: bytes, address: tuple[str, int]) -> None:
        try:
            conn = await self._connect(address, peer)
        except (OSError, LinkClosedError, TimeoutError) as exc:
            log.info("cannot open a link to %s at %s: %s", peer.hex()[:8], address, exc)
            self._opening.discard(peer)
            if self.node is not None and not self._stopped and peer not in self._links:
                self.node.link_down(peer, time.time())
                self._service()
            return
        self._opening.discard(peer)
        if self._stopped:
            conn.close()
            return
        self._register(conn, peer)

    async def _close_after_drain(self, conns: list[LinkConnection]) -> None:
        deadline = time.monotonic() + LEAVE_GRACE
        while time.monotonic() < deadline and any(
            c.link.usable and not c.link.frames.idle for c in conns
        ):
            await asyncio.sleep(0.02)
        for conn in conns:
            conn.close()

    # --- driving the sans-IO node ---------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _service(self) -> None:
        """Carry out the node's actions and rearm its timer (after every input)."""
        node = self.node
        if node is None or self._stopped:
            return
        for action in node.pop_actions():
            if isinstance(action, SendMessage):
                self._send(action.peer_id, action.data)
            elif isinstance(action, OpenLink):
                self._open_link(action)
            elif isinstance(action, CloseLink):
                conns = self._links.pop(action.peer_id, [])
                if conns:
                    self._spawn(self._close_after_drain(conns))
            elif isinstance(action, RequestDone):
                self._keepalive_pings.pop(action.handle, None)
                future = self._pending.pop(action.handle, None)
                if future is not None and not future.done():
                    future.set_result(action)
            elif isinstance(action, Joined):
                log.info("%s joined the overlay", self.node_id.hex())
                self.joined.set()
            elif isinstance(action, PeerDown):
                log.info("%s: neighbour %s is down", self.node_id.hex()[:8], action.peer_id.hex())
            elif isinstance(action, MessageDropped):
                log.debug("%s: dropped: %s", self.node_id.hex()[:8], action.reason)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = node.next_timer()
        if when is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, when - time.time()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.node is None or self._stopped:
            return
        self.node.handle_timer(time.time())
        self._service()

    def _send(self, peer: bytes, data: bytes) -> None:
        conn = self._link_to(peer)
        if conn is None:
            log.info("no link to %s for a message", peer.hex()[:8])
            return
        pieces = [data]
        if isinstance(conn.link, DtlsLink):
            try:
                pieces = fragment(data, conn.link.path_mtu)  # §6.7
            except FragmentError as exc:
                log.warning("cannot fragment a message: %s", exc)
                return
        try:
            for piece in pieces:
                conn.send(piece)
        except LinkError as exc:
            log.info("send to %s failed: %s", peer.hex()[:8], exc)

    def _open_link(self, action: OpenLink) -> None:
        peer = action.peer_id
        if self._link_to(peer) is not None:
            self._n.link_up(peer, time.time())
            return
        if peer in self._opening:
            return
        if action.address is None:
            log.info("no address to open a link to %s", peer.hex()[:8])
            self._n.link_down(peer, time.time())
            return
        self._opening.add(peer)
        address = (str(action.address.address), action.address.port)
        self._spawn(self._open(peer, address))

    async def _keepalive_loop(self) -> None:
        """Ping the neighbours not heard from for ``keepalive`` seconds, one Ping at a time
        each (see the module documentation): the traffic is the point, not the answer."""
        while True:
            await asyncio.sleep(self.keepalive / 2)
            if self.node is None or self._stopped:
                continue
            if self.node.client and not self._links and not self._opening:
                if not self._reconnecting:
                    self._reconnecting = True
                    self._spawn(self._reconnect_client())
                continue
            if not self.node.joined:
                continue
            quiet_since = time.monotonic() - self.keepalive
            waiting = set(self._keepalive_pings.values())
            for peer in sorted(self._links):
                if peer in waiting or self._last_heard.get(peer, 0.0) > quiet_since:
                    continue
                self._keepalive_pings[self.node.ping(peer, time.time())] = peer
            self._service()

    # --- client API -----------------------------------------------------------------------

    async def _request_done(self, handle: int, timeout: float | None) -> RequestDone:
        future: asyncio.Future[RequestDone] = asyncio.get_running_loop().create_future()
        self._pending[handle] = future
        self._service()
        try:
            done = await asyncio.wait_for(future, timeout or CLIENT_TIMEOUT)
        except TimeoutError:
            self._pending.pop(handle, None)
            raise ReloadRequestError(ErrorCode.REQUEST_TIMEOUT, b"no answer") from None
        if done.error is not None:
            raise ReloadRequestError(done.error, done.error_info)
        assert done.answer is not None
        self.last_hops = done.hops
        return done

    async def _request(self, handle: int, timeout: float | None) -> MessageBody:
        done = await self._request_done(handle, timeout)
        assert done.answer is not None
        return done.answer

    async def store(
        self,
        resource_id: bytes,
        kind_id: int,
        values: Sequence[StoredDataValue],
        *,
        lifetime: int | None = None,
        generation: int = 0,
        timeout: float | None = None,
    ) -> StoreAns:
        """Store signed ``values`` of Kind ``kind_id`` at ``resource_id`` (§7.4.1)."""
        handle = self._n.store(
            resource_id, kind_id, values, time.time(), lifetime=lifetime, generation=generation
        )
        answer = await self._request(handle, timeout)
        assert isinstance(answer, StoreAns)
        return answer

    async def fetch(
        self,
        resource_id: bytes,
        specifiers: Sequence[StoredDataSpecifier] | int,
        *,
        at: bytes | None = None,
        timeout: float | None = None,
    ) -> FetchAns:
        """Fetch (§7.4.2); an int is a Kind-ID fetched whole (SINGLE, or every key/index).
        With ``at``, the Fetch goes to the node with that Node-ID, which answers from its
        own store, replicas included (a replica of :meth:`replica_set`)."""
        specs = [self._n.whole_kind(specifiers)] if isinstance(specifiers, int) else specifiers
        handle = self._n.fetch(resource_id, specs, time.time(), at=at)
        answer = await self._request(handle, timeout)
        assert isinstance(answer, FetchAns)
        return answer

    async def replica_set(
        self, resource_id: bytes, *, count: int | None = None, timeout: float = REPLICA_TIMEOUT
    ) -> list[bytes]:
        """The Node-IDs that should hold ``resource_id``: the responsible peer and its
        successors (§10.4; ``count`` defaults to the overlay's replication, 3), learnt with
        Pings: the responsible peer answers a Ping to the Resource-ID, the successor of a
        peer N answers a Ping to N+1 (§10.3). Each Ping waits at most ``timeout`` seconds;
        the list is shorter when the ring is, or when a Ping fails."""
        wanted = count if count is not None else self._n.config.replication
        chain: list[bytes] = []
        target = resource_id
        for _ in range(max(0, wanted)):
            try:
                done = await self._request_done(self._n.ping(target, time.time()), timeout)
            except ReloadRequestError as exc:
                log.info("replica_set: Ping to %s failed: %s", target.hex()[:8], exc)
                break
            if not done.responder or done.responder in chain:
                break  # the ring has fewer peers than asked for
            chain.append(done.responder)
            target = chord.add(done.responder, 1)
        return chain

    async def fetch_single(
        self, resource_id: bytes, kind_id: int, *, timeout: float | None = None
    ) -> bytes | None:
        """The value of a SINGLE Kind at ``resource_id``, None when absent or deleted."""
        answer = await self.fetch(resource_id, kind_id, timeout=timeout)
        for response in answer.kind_responses:
            for data in response.values:
                if isinstance(data.value, DataValue) and data.value.exists:
                    return data.value.value
        return None

    async def stat(
        self,
        resource_id: bytes,
        specifiers: Sequence[StoredDataSpecifier] | int,
        *,
        timeout: float | None = None,
    ) -> StatAns:
        """Stat (§7.4.3)."""
        specs = [self._n.whole_kind(specifiers)] if isinstance(specifiers, int) else specifiers
        answer = await self._request(self._n.stat(resource_id, specs, time.time()), timeout)
        assert isinstance(answer, StatAns)
        return answer

    async def find(
        self, resource_id: bytes, kinds: Sequence[int], *, timeout: float | None = None
    ) -> FindAns:
        """Find (§7.4.4)."""
        answer = await self._request(self._n.find(resource_id, kinds, time.time()), timeout)
        assert isinstance(answer, FindAns)
        return answer

    async def ping(self, destination: bytes, *, timeout: float | None = None) -> PingAns:
        """Ping (§6.5.3) the peer responsible for ``destination`` (a Node-ID or Resource-ID)."""
        answer = await self._request(self._n.ping(destination, time.time()), timeout)
        assert isinstance(answer, PingAns)
        return answer

    # --- introspection ------------------------------------------------------------------

    def neighbours(self) -> list[bytes]:
        """Node-IDs this node has a link to."""
        return sorted(self._links)

    def holds(self, resource_id: bytes) -> bool:
        """Whether this node stores anything (original or replica) at ``resource_id``."""
        return self._n.holds(resource_id)

    # --- construction from a daemon configuration --------------------------------------

    @classmethod
    def from_config(cls, config: DaemonConfig) -> OverlayNode:
        """Build a node from a :class:`DaemonConfig` (the ``p2pcdn overlay`` daemon)."""
        overlay: OverlayConfiguration | None = None
        if config.configuration is not None:
            try:
                document = parse_overlay_configuration(config.configuration.read_bytes())
            except Exception as exc:
                raise DaemonConfigError(f"{config.configuration}: {exc}") from None
            entries = document.entries
            if config.overlay_name is not None:
                found = document.find(config.overlay_name)
                entries = [found] if found is not None else []
            if not entries:
                raise DaemonConfigError(f"no configuration for overlay {config.overlay_name}")
            overlay = entries[0].configuration
        name = overlay.instance_name if overlay is not None else config.overlay_name
        roots: list[x509.Certificate] = []
        if config.ca is not None:
            roots.extend(security.load_certificates(config.ca))
        if overlay is not None:
            roots.extend(x509.load_der_x509_certificate(der) for der in overlay.root_certs)
        if name is None:
            if not roots:
                raise DaemonConfigError("give overlay_name, a configuration or a ca")
            name = security.overlay_of_ca(roots[0])
        key = security.load_private_key(config.key)
        cert = security.load_certificate(config.certificate)
        length = overlay.node_id_length if overlay is not None else 16
        node_ids = security.node_ids_from_certificate(cert, name, length)
        if not node_ids:
            raise DaemonConfigError(f"{config.certificate} carries no Node-ID for {name}")
        signer = security.Signer(key, cert, node_ids[0])
        self_signed = overlay.self_signed_permitted if overlay is not None else False
        digest = overlay.self_signed_digest if overlay is not None else "sha256"
        link_config = LinkConfig(
            overlay=name,
            certificate=cert,
            private_key=key,
            trust_roots=tuple(roots),
            self_signed_permitted=self_signed,
            self_signed_digest=digest,
            max_message_size=overlay.max_message_size if overlay is not None else 5000,
            node_id_length=length,
        )
        if overlay is not None:
            node_config = NodeConfig.from_overlay_configuration(overlay)
            if not node_config.kinds:
                node_config = dataclasses.replace(node_config, kinds=DEFAULT_KINDS)
        else:
            node_config = NodeConfig(overlay_name=name, kinds=DEFAULT_KINDS)
        if config.client:
            node_config = dataclasses.replace(node_config, client=True)
        bootstrap = list(config.bootstrap)
        if not bootstrap and overlay is not None:
            bootstrap = [(b.address, b.port) for b in overlay.bootstrap_nodes]
        if config.listen in bootstrap:
            # the first peer lists itself as a bootstrap node: it creates the overlay unless
            # another bootstrap node answers
            bootstrap = [b for b in bootstrap if b != config.listen]
        return cls(
            node_config,
            link_config,
            signer,
            listen=config.listen,
            link=config.link,
            bootstrap=bootstrap,
            data_dir=config.data_dir,
            keepalive=config.keepalive,
        )


def _abort_connection(conn: LinkConnection) -> None:
    """Close a link's socket without sending anything (a simulated crash): nothing the link
    writes afterwards (close_notify) reaches the wire."""
    protocol = getattr(conn._write, "__self__", None)
    transport = getattr(protocol, "transport", None)
    conn._write = _write_nothing
    with contextlib.suppress(Exception):
        if transport is not None:
            transport.abort()


def _write_nothing(_link: Any) -> None:
    return None
