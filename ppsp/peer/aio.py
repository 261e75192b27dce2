"""asyncio adapter for the sans-IO PPSPP endpoint (DESIGN §3): UDP sockets, timers, files.

Public API (stable; the CLI, benchmarks and the demo use it):

- :func:`serve_seed` — serve a file as a static swarm; returns a :class:`SeederHandle`.
- :func:`download` — fetch a static swarm from peers into a file, verified chunk by chunk.
- :func:`serve_live_source` / :func:`download_live` — live swarms (RFC 7574 §6).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from interop import capture
from ppsp.linkemu import wrap_datagram
from ppsp.peer.content import (
    DEFAULT_CHUNKS_PER_SIGNATURE,
    DEFAULT_LIVE_WINDOW,
    LiveContent,
    LiveSourceContent,
    StaticContent,
    SwarmParameters,
)
from ppsp.peer.endpoint import (
    ChannelClosed,
    ChannelEstablished,
    DownloadComplete,
    Endpoint,
    Event,
    IntegrityFailed,
)
from ppsp.peer.live import LiveSigner, LiveVerifier
from ppsp.peer.merkle import HashTree
from ppsp.peer.messages import IntegrityMethod, LiveSignatureAlgorithm, MerkleHashFunction
from ppsp.peer.picker import PickPolicy
from ppsp.peer.storage import DownloadStorage, SeedStorage

log = logging.getLogger(__name__)

Address = tuple[str, int]
#: progress(bytes_done, bytes_total or None if unknown yet)
ProgressCallback = Callable[[int, int | None], None]
T = TypeVar("T")

#: Socket buffers: a loopback burst of a full congestion window must not be dropped by the
#: kernel before the event loop reads it.
SOCKET_BUFFER = 8 * 1024 * 1024


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when it is installed (DESIGN §3: ~4× the datagram rate of the
    stdlib loop), else on the standard asyncio loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    result: T = uvloop.run(main)
    return result


class DownloadError(Exception):
    """A download that did not complete; ``str()`` is a one-line reason for the user."""


class NoPeerAnswered(DownloadError):
    """No peer answered the handshake."""


class IntegrityFailure(DownloadError):
    """Content failed verification and no peer supplied a verifiable copy."""


class DownloadTimeout(DownloadError):
    """The overall download timeout expired."""


@dataclass
class DownloadResult:
    path: Path
    size: int
    seconds: float
    peers_used: int


@dataclass
class _Tally:
    """What a download saw of its channels, to explain a failure in one line."""

    established: int = 0
    integrity: int = 0
    reason: str = ""


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, node: PeerNode) -> None:
        self.node = node

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        node = self.node
        cap = capture.active()
        if cap is not None and node.local is not None:
            cap.udp((addr[0], addr[1]), node.local, data)
        try:
            node.endpoint.receive(data, (addr[0], addr[1]), node.loop.time())
        except Exception:  # a bug must not take the daemon down; the datagram is dropped
            log.exception("error handling a datagram from %s", addr)
        if not node.flush_scheduled:
            node.flush_scheduled = True
            node.loop.call_soon(node.flush)

    def error_received(self, exc: Exception) -> None:
        log.debug("socket error: %s", exc)


_IP_MTU = getattr(socket, "IP_MTU", 14)  # Linux values where the module lacks the names
_IPV6_MTU = getattr(socket, "IPV6_MTU", 24)
_mtu_cache: dict[str, int] = {}


def path_mtu(addr: Address) -> int:
    """The kernel's path MTU towards ``addr`` (RFC 7574 §8.1): a connected UDP socket reads the
    route's MTU (65536 on loopback, 1500 on Ethernet). 1500 if the kernel will not say."""
    host = addr[0]
    cached = _mtu_cache.get(host)
    if cached is not None:
        return cached
    mtu = 1500
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(addr)
            if family == socket.AF_INET6:
                mtu = probe.getsockopt(socket.IPPROTO_IPV6, _IPV6_MTU)
            else:
                mtu = probe.getsockopt(socket.IPPROTO_IP, _IP_MTU)
    except OSError:
        pass
    if len(_mtu_cache) < 4096:
        _mtu_cache[host] = mtu
    return mtu


class PeerNode:
    """One UDP socket driving one sans-IO :class:`Endpoint` (DESIGN §3 thin adapter)."""

    def __init__(self, mtu: int | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.endpoint = Endpoint(
            wall_clock_offset=time.time() - self.loop.time(),
            path_mtu=path_mtu if mtu is None else lambda addr: min(mtu, path_mtu(addr)),
        )
        self.transport: asyncio.DatagramTransport | None = None
        #: The bound address (for ``--pcap`` records).
        self.local: Address | None = None
        self.flush_scheduled = False
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = float("inf")
        self.listeners: list[Callable[[Event], None]] = []
        #: Resources (open files) to release when the node closes.
        self.on_close: list[Callable[[], None]] = []
        self.closed = asyncio.Event()

    async def start(self, listen: Address) -> Address:
        family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)  # *BUFFORCE, as root
            with contextlib.suppress(OSError):
                if sock.getsockopt(socket.SOL_SOCKET, opt) < SOCKET_BUFFER:
                    sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        sock.bind(listen)
        sock.setblocking(False)
        transport, _ = await self.loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        # Link emulation (ppsp.linkemu) when configured: delay, jitter, loss per destination.
        self.transport = wrap_datagram(transport)
        bound = sock.getsockname()
        self.local = (bound[0], bound[1])
        return self.local

    def flush(self) -> None:
        self.flush_scheduled = False
        transport = self.transport
        if transport is None:
            return
        endpoint = self.endpoint
        now = self.loop.time()
        cap = capture.active()
        for data, addr in endpoint.datagrams_to_send(now):
            transport.sendto(data, addr)
            if cap is not None and self.local is not None:
                cap.udp(self.local, addr, data)
        if endpoint.events:
            for event in endpoint.pop_events():
                for listener in self.listeners:
                    listener(event)
        self._arm_timer()

    def _arm_timer(self) -> None:
        when = self.endpoint.next_timer()
        if when is None:
            return
        if self.timer is not None and self.timer_at <= when:
            return
        if self.timer is not None:
            self.timer.cancel()
        self.timer_at = when
        self.timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        self.timer_at = float("inf")
        try:
            self.endpoint.handle_timer(self.loop.time())
        except Exception:
            log.exception("error in PPSPP timer")
        self.flush()

    def kick(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def close(self) -> None:
        for release in self.on_close:
            release()
        self.on_close.clear()
        for ch in self.endpoint.iter_channels():
            ch.close("shutting down", notify_peer=True)
        if self.transport is not None:
            for data, addr in self.endpoint.datagrams_to_send(self.loop.time()):
                self.transport.sendto(data, addr)
            self.transport.close()
            self.transport = None
        if self.timer is not None:
            self.timer.cancel()
        self.closed.set()


class SeederHandle:
    """A running seeder: ``swarm_id``, ``address`` (the bound host, port), ``close()``."""

    def __init__(self, node: PeerNode, swarm_id: bytes, address: Address) -> None:
        self.node = node
        self.swarm_id = swarm_id
        self.address = address

    def close(self) -> None:
        self.node.close()

    async def wait_closed(self) -> None:
        await self.node.closed.wait()


async def serve_seed(
    path: Path,
    listen: Address = ("127.0.0.1", 0),
    hash_function: MerkleHashFunction = MerkleHashFunction.SHA256,
    chunk_size: int = 1024,
    mtu: int | None = None,
) -> SeederHandle:
    """Hash (or load the persisted hash tree of) ``path`` and serve it over UDP.

    ``mtu`` caps the datagrams sent (default: the kernel's path MTU, RFC 7574 §8.1)."""
    storage = await asyncio.to_thread(SeedStorage.open, Path(path), chunk_size, hash_function)
    tree = storage.tree
    params = SwarmParameters(
        swarm_id=tree.root_hash,
        integrity_method=IntegrityMethod.MERKLE,
        hash_function=hash_function,
        chunk_size=chunk_size,
    )
    node = PeerNode(mtu)
    node.on_close.append(storage.close)
    node.endpoint.add_swarm(params, StaticContent(tree, storage, storage.have))
    address = await node.start(listen)
    log.info("seeding %s as swarm %s on %s:%d", path, tree.root_hash.hex(), *address)
    return SeederHandle(node, tree.root_hash, address)


async def download(
    swarm_id: bytes,
    peers: list[Address],
    out: Path,
    hash_function: MerkleHashFunction = MerkleHashFunction.SHA256,
    chunk_size: int = 1024,
    timeout: float = 60.0,
    progress: ProgressCallback | None = None,
    listen: Address = ("127.0.0.1", 0),
) -> DownloadResult:
    """Download the static swarm ``swarm_id`` into ``out``; raises :class:`DownloadError`."""
    if not peers:
        raise NoPeerAnswered("no peer given")
    if len(swarm_id) != hash_function.digest_size:
        raise DownloadError(
            f"a {hash_function.name} swarm ID has {hash_function.digest_size} bytes, "
            f"not {len(swarm_id)}"
        )
    started = time.monotonic()
    tree = HashTree.for_root(swarm_id, chunk_size, hash_function)
    storage = await asyncio.to_thread(DownloadStorage.create, Path(out), tree)
    content = StaticContent(storage.tree, storage, storage.have)
    params = SwarmParameters(
        swarm_id=swarm_id,
        integrity_method=IntegrityMethod.MERKLE,
        hash_function=hash_function,
        chunk_size=chunk_size,
    )
    node = PeerNode()
    swarm = node.endpoint.add_swarm(params, content)
    done: asyncio.Future[None] = node.loop.create_future()
    state = _Tally()
    used: set[Address] = set()

    def on_event(event: Event) -> None:
        if isinstance(event, ChannelEstablished):
            state.established += 1
            used.add(event.addr)
        elif isinstance(event, IntegrityFailed):
            state.integrity += 1
        elif isinstance(event, ChannelClosed):
            state.reason = event.reason
            if not swarm.channels and not done.done() and not content.complete:
                if state.integrity:
                    exc: DownloadError = IntegrityFailure(
                        f"integrity failure: every peer sent content that failed verification "
                        f"({event.reason})"
                    )
                elif not state.established:
                    exc = NoPeerAnswered(f"no peer answered ({event.reason})")
                else:
                    exc = DownloadError(f"all peers went away ({event.reason})")
                done.set_exception(exc)
        elif isinstance(event, DownloadComplete) and not done.done():
            done.set_result(None)

    node.listeners.append(on_event)
    finished = False
    try:
        await node.start(listen)
        if content.complete:
            done.set_result(None)
        else:
            now = node.loop.time()
            for peer in peers:
                node.endpoint.connect(swarm_id, peer, now)
            node.kick()
        deadline = node.loop.time() + timeout
        while not done.done():
            remaining = deadline - node.loop.time()
            if remaining <= 0:
                if not state.established:
                    raise NoPeerAnswered(
                        f"no peer answered within {timeout:g} s ({', '.join(_fmt(p) for p in peers)})"
                    )
                raise DownloadTimeout(f"timed out after {timeout:g} s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(done), min(remaining, 0.1))
            if progress is not None:
                n = tree.num_chunks
                total = tree.content_length or (n * chunk_size if n else None)
                progress(min(content.have.count * chunk_size, total or 1 << 62), total)
        done.result()
        node.close()
        seed = await asyncio.to_thread(storage.finish)
        finished = True
        size = seed.content_length
        seed.close()
        if progress is not None:
            progress(size, size)
        return DownloadResult(Path(out), size, time.monotonic() - started, len(used))
    finally:
        node.close()
        if not finished:
            # Keep what was verified for the next attempt (resume) and release the files.
            storage.close()


def _fmt(addr: Address) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


class LiveSourceHandle(SeederHandle):
    """A running live source; it closes itself once the stream ended and peers drained."""

    def __init__(self, node: PeerNode, swarm_id: bytes, address: Address) -> None:
        super().__init__(node, swarm_id, address)
        self.pump: asyncio.Task[None] | None = None
        self.chunks = 0

    def close(self) -> None:
        if self.pump is not None:
            self.pump.cancel()
        super().close()


async def _read_chunk(source: asyncio.StreamReader | BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes, fewer only at the end of the stream."""
    if isinstance(source, asyncio.StreamReader):
        try:
            return await source.readexactly(size)
        except asyncio.IncompleteReadError as exc:
            return exc.partial
    parts: list[bytes] = []
    got = 0
    while got < size:
        part = await asyncio.to_thread(source.read, size - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


async def serve_live_source(
    source: asyncio.StreamReader | BinaryIO,
    listen: Address = ("127.0.0.1", 0),
    integrity_method: IntegrityMethod = IntegrityMethod.UNIFIED_MERKLE,
    algorithm: LiveSignatureAlgorithm = LiveSignatureAlgorithm.ECDSAP256SHA256,
    chunk_size: int = 1024,
    *,
    signer: LiveSigner | None = None,
    chunks_per_signature: int = DEFAULT_CHUNKS_PER_SIGNATURE,
    window: int | None = DEFAULT_LIVE_WINDOW,
    drain_timeout: float = 10.0,
) -> LiveSourceHandle:
    """Sign and serve a live stream read from ``source``; ``swarm_id`` is the public key.

    At the end of the stream the source waits (up to ``drain_timeout``) until every viewer
    acknowledged the last chunks, then closes its channels explicitly (§8.4) and itself.
    """
    if integrity_method not in (IntegrityMethod.UNIFIED_MERKLE, IntegrityMethod.SIGN_ALL):
        raise ValueError("a live stream needs Unified Merkle Tree or Sign All (RFC 7574 §6)")
    if signer is None:
        signer = await asyncio.to_thread(LiveSigner.generate, algorithm)
    params = SwarmParameters(
        swarm_id=signer.swarm_id,
        integrity_method=integrity_method,
        hash_function=MerkleHashFunction.SHA256,
        chunk_size=chunk_size,
        live_signature_algorithm=signer.swarm_id[0],
        live_discard_window=window,
    )
    content = LiveSourceContent(params, signer, chunks_per_signature, window)
    node = PeerNode()
    swarm = node.endpoint.add_swarm(params, content, PickPolicy.IN_ORDER)
    address = await node.start(listen)
    handle = LiveSourceHandle(node, signer.swarm_id, address)

    async def pump() -> None:
        while True:
            data = await _read_chunk(source, chunk_size)
            if data:
                swarm.publish(content.add_chunk(data, time.time()))
                handle.chunks += 1
                node.kick()
            if len(data) < chunk_size:
                break
        swarm.publish(content.end(time.time()))
        node.kick()
        last = content.next_chunk - 1
        deadline = node.loop.time() + drain_timeout
        while last >= 0 and node.loop.time() < deadline:
            if all(last in ch.peer_have for ch in swarm.channels if ch.is_open):
                break
            await asyncio.sleep(0.02)
        log.info("live stream ended after %d chunks", content.next_chunk)
        node.close()

    handle.pump = node.loop.create_task(pump())
    log.info("live source %s on %s:%d", signer.swarm_id.hex(), *address)
    return handle


async def download_live(
    swarm_id: bytes,
    peers: list[Address],
    out: BinaryIO,
    integrity_method: IntegrityMethod = IntegrityMethod.UNIFIED_MERKLE,
    chunk_size: int = 1024,
    timeout: float = 60.0,
    progress: ProgressCallback | None = None,
    *,
    chunks_per_signature: int = DEFAULT_CHUNKS_PER_SIGNATURE,
    window: int | None = DEFAULT_LIVE_WINDOW,
    listen: Address = ("127.0.0.1", 0),
) -> int:
    """Follow a live swarm, writing verified chunks in order to ``out``; returns bytes written
    when the source closes the stream (or raises :class:`DownloadError`). ``timeout`` bounds
    the silence: no new chunk for that long ends the download."""
    if not peers:
        raise NoPeerAnswered("no peer given")
    try:
        LiveVerifier.from_swarm_id(swarm_id)
    except ValueError as exc:
        raise DownloadError(f"not a live swarm ID: {exc}") from exc
    written = 0

    def deliver(chunk: int, data: bytes) -> None:
        nonlocal written
        out.write(data)
        written += len(data)

    params = SwarmParameters(
        swarm_id=swarm_id,
        integrity_method=integrity_method,
        hash_function=MerkleHashFunction.SHA256,
        chunk_size=chunk_size,
        live_signature_algorithm=swarm_id[0],
    )
    content = LiveContent(params, chunks_per_signature, window, deliver)
    node = PeerNode()
    swarm = node.endpoint.add_swarm(params, content, PickPolicy.IN_ORDER)
    state = _Tally()
    ended = asyncio.Event()

    def on_event(event: Event) -> None:
        if isinstance(event, ChannelEstablished):
            state.established += 1
        elif isinstance(event, IntegrityFailed):
            state.integrity += 1
        elif isinstance(event, ChannelClosed):
            state.reason = event.reason
            if not swarm.channels:
                ended.set()

    node.listeners.append(on_event)
    await node.start(listen)
    try:
        now = node.loop.time()
        for peer in peers:
            node.endpoint.connect(swarm_id, peer, now)
        node.kick()
        last_written, last_progress = -1, node.loop.time()
        while not ended.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(ended.wait(), 0.1)
            if written != last_written:
                last_written, last_progress = written, node.loop.time()
                if progress is not None:
                    progress(written, None)
            elif node.loop.time() - last_progress > timeout:
                if not state.established:
                    raise NoPeerAnswered(f"no peer answered within {timeout:g} s")
                raise DownloadTimeout(f"no new chunk for {timeout:g} s")
        out.flush()
        if not state.established:
            raise NoPeerAnswered(f"no peer answered ({state.reason})")
        if state.integrity and not written:
            raise IntegrityFailure("integrity failure: the stream failed verification")
        return written
    finally:
        node.close()
