"""The content portal's HTTP service: a thin aiohttp adapter around :class:`PortalState`.

DESIGN §1 (the content portal row): the portal lists channels as a JSON API and as an HTML
page people use. The API is the "Portal HTTP API" of notes/usages-design.md, the contract the
source's client (``portal/portal_client.py``) is written against; docs/portal.md is its
reference:

- ``GET /api/v1/channels`` → ``{"channels": [channel, ...]}``;
  ``GET /api/v1/channels/NAME`` → the channel, or 404;
- ``POST /api/v1/channels`` (``Authorization: Bearer TOKEN``) publishes: 201 for a new
  channel, 200 for an update; ``DELETE /api/v1/channels/NAME`` (bearer) → 204;
- ``POST /api/v1/channels/NAME/viewers`` ``{"viewer": ..., "watching": ...}`` → 204, the
  heartbeat of a CSC; viewers who send none for 30 s stop counting;
- ``GET /`` the page: the channel list with live/VoD badges, bitrates and viewer counts,
  refreshed every 2 s by ``/static/portal.js`` (plain JavaScript, no external resources).

This module owns the sockets, the clock and the state file; validation and the registry are
sans-IO in :mod:`portal.state`. Every error is ``{"error": "..."}`` with a 4xx status: a bad
body, a wrong type, an unknown member or a name with path characters is a 400, a body over
64 KiB a 413 (refused on its Content-Length before a byte is read when it has one).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import json
import logging
import os
import secrets
import socket
import string
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from portal.state import (
    MAX_BODY,
    LimitExceeded,
    NotFound,
    PortalState,
    ValidationError,
    check_name,
    decode_json,
    parse_channel,
    parse_heartbeat,
)

log = logging.getLogger("portal")

Address = tuple[str, int]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

API: Final = "/api/v1"
STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
#: The files under /static/ (nothing else there is served).
STATIC_FILES: Final = {
    "portal.js": "text/javascript",
    "portal.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
#: Seconds between passes that forget expired viewers (counts never include them anyway).
EXPIRE_INTERVAL: Final = 5.0
#: aiohttp's grace period for requests in progress when the portal stops.
SHUTDOWN_TIMEOUT: Final = 5.0
#: The page may load its own script and style and talk to its own API, nothing else.
PAGE_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
REALM: Final = 'Bearer realm="p2pcdn-portal"'


class PortalStateFileError(Exception):
    """The state file exists but cannot be read as a portal state file."""


def generate_token() -> str:
    """A fresh publish token: 192 random bits, URL-safe."""
    return secrets.token_urlsafe(24)


class PortalServer:
    """The portal: one :class:`PortalState`, its HTTP listener and its state file."""

    def __init__(
        self,
        token: str,
        *,
        state_file: Path | None = None,
        state: PortalState | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not token:
            raise ValueError("the publish token must not be empty")
        self._token = token.encode("utf-8")
        self.state_file = state_file
        self.state = state if state is not None else PortalState()
        self.clock = clock
        self._runner: web.AppRunner | None = None
        self._expirer: asyncio.Task[None] | None = None
        self._save_lock = asyncio.Lock()
        self._saved_generation = self.state.generation
        self.address: Address | None = None

    @property
    def url(self) -> str:
        """``http://HOST:PORT/`` of the listener (after :meth:`start`)."""
        if self.address is None:
            raise RuntimeError("the portal is not started")
        host, port = self.address
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    # -- life cycle ---------------------------------------------------------------------

    def load_state(self) -> int:
        """Read the state file, if there is one; returns the number of channels loaded."""
        path = self.state_file
        if path is None or not path.exists():
            return 0
        try:
            data = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_no_constant)
            problems = self.state.load(data)
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise PortalStateFileError(f"cannot load the state file {path}: {exc}") from None
        for problem in problems:
            log.warning("state file %s: %s (skipped)", path, problem)
        self._saved_generation = self.state.generation
        log.info("loaded %d channel(s) from %s", len(self.state), path)
        return len(self.state)

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._errors])
        app.router.add_get("/", self._page)
        app.router.add_get("/static/{file}", self._static)
        app.router.add_get(f"{API}/channels", self._list)
        app.router.add_post(f"{API}/channels", self._publish)
        app.router.add_get(API + "/channels/{name}", self._get)
        app.router.add_delete(API + "/channels/{name}", self._delete)
        app.router.add_post(API + "/channels/{name}/viewers", self._heartbeat)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Address:
        """Load the state file and listen on ``host:port`` (0 picks a free port)."""
        self.load_state()
        access = logging.getLogger("portal.access")
        runner = web.AppRunner(
            self.build_app(),
            # The page polls every 2 s per open browser: requests are logged at -vv only.
            access_log=access if log.isEnabledFor(logging.DEBUG) else None,
            handle_signals=False,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
        await runner.setup()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.setblocking(False)
            site = web.SockSite(runner, sock)
            await site.start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        name = sock.getsockname()
        self.address = (str(name[0]), int(name[1]))
        self._runner = runner
        self._expirer = asyncio.ensure_future(self._expire_loop())
        log.info("portal listening on %s (%d channel(s))", self.url, len(self.state))
        return self.address

    async def close(self) -> None:
        """Stop listening, let requests in progress finish, and write the state file."""
        if self._expirer is not None:
            self._expirer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expirer
            self._expirer = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.save()
        log.info("portal stopped")

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_INTERVAL)
            dropped = self.state.expire(self.clock())
            if dropped:
                log.debug("forgot %d silent viewer(s)", dropped)

    # -- persistence --------------------------------------------------------------------

    async def save(self) -> None:
        """Write the state file if the channels changed since the last write.

        Written through before a publish or delete is answered, so a portal killed right
        after a 2xx still comes back with that channel; concurrent changes share a write.
        """
        if self.state_file is None:
            return
        async with self._save_lock:
            generation = self.state.generation
            if generation == self._saved_generation:
                return
            data = json.dumps(self.state.to_json(), indent=1).encode("utf-8")
            try:
                await asyncio.to_thread(write_atomic, self.state_file, data)
            except OSError as exc:
                log.error("cannot write the state file %s: %s", self.state_file, exc)
                return
            self._saved_generation = generation

    # -- middleware and helpers ---------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every error as ``{"error": ...}`` JSON, HTTP errors of aiohttp's router included."""
        try:
            return await handler(request)
        except ValidationError as exc:
            return _error(400, str(exc))
        except NotFound as exc:
            return _error(404, f"no channel {exc.args[0]!r}" if exc.args else "not found")
        except LimitExceeded as exc:
            return _error(409, str(exc))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {
                key: value
                for key, value in exc.headers.items()
                if key.lower() in ("allow", "www-authenticate")
            }
            if exc.status != 413:
                return _error(exc.status, exc.reason, headers)
            response = _error(413, f"body larger than {MAX_BODY} bytes")
            # The rest of the body is not wanted: close instead of draining it for keep-alive.
            response.force_close()
            return response

    def _authorize(self, request: web.Request) -> None:
        """Bearer token (RFC 6750 §2.1), compared in constant time."""
        header = request.headers.get("Authorization", "")
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            log.info("publish request without a token from %s", request.remote)
            raise _unauthorized("a bearer token is required", None)
        given = credentials.strip().encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, self._token):
            log.warning("publish request with a wrong token from %s", request.remote)
            raise _unauthorized("wrong token", 'error="invalid_token"')

    async def _body(self, request: web.Request) -> Any:
        length = request.content_length
        if length is not None and length > MAX_BODY:
            # Refused on the header alone, before a byte of the body is read.
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=length)
        return decode_json(await request.read())  # read() enforces MAX_BODY when chunked

    # -- the API ------------------------------------------------------------------------

    async def _list(self, request: web.Request) -> web.StreamResponse:
        return _json({"channels": self.state.channels(self.clock())})

    async def _get(self, request: web.Request) -> web.StreamResponse:
        name = check_name(request.match_info["name"])
        return _json(self.state.get(name, self.clock()))

    async def _publish(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request)
        spec = parse_channel(await self._body(request))
        channel, created = self.state.publish(spec, self.clock())
        await self.save()
        log.info(
            "%s channel %s (%s, swarm %s…) from %s",
            "published" if created else "updated",
            spec.name,
            "live" if spec.live else "VoD",
            spec.swarm_id[:16],
            request.remote,
        )
        return _json({"channel": channel}, status=201 if created else 200)

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request)
        name = check_name(request.match_info["name"])
        self.state.delete(name)
        await self.save()
        log.info("deleted channel %s (from %s)", name, request.remote)
        return web.Response(status=204)

    async def _heartbeat(self, request: web.Request) -> web.StreamResponse:
        name = check_name(request.match_info["name"])
        viewer, watching = parse_heartbeat(await self._body(request))
        self.state.heartbeat(name, viewer, watching, self.clock())
        log.debug("viewer %s %s %s", viewer, "watches" if watching else "left", name)
        return web.Response(status=204, headers={"Cache-Control": "no-store"})

    # -- the page -----------------------------------------------------------------------

    async def _page(self, request: web.Request) -> web.StreamResponse:
        channels = self.state.channels(self.clock())
        body = render_page(channels)
        return web.Response(
            text=body, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS
        )

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["file"]
        content_type = STATIC_FILES.get(name)
        if content_type is None:
            raise web.HTTPNotFound()
        body = await asyncio.to_thread((STATIC_DIR / name).read_bytes)
        return web.Response(
            body=body,
            content_type=content_type,
            charset=None if content_type.startswith("image/") else "utf-8",
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"},
        )


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers={"Cache-Control": "no-store"})


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _unauthorized(message: str, error: str | None) -> web.HTTPUnauthorized:
    challenge = REALM if error is None else f"{REALM}, {error}"
    return web.HTTPUnauthorized(reason=message, headers={"WWW-Authenticate": challenge})


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a reader (or a restart after a crash) sees the
    old file or the new one, never a part: write a temporary file beside it, flush it to
    disk, rename it over the old one, and flush the directory entry."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# -- HTML rendering (the same markup as portal.js renders on every refresh) -----------------

_PAGE: Final = string.Template((STATIC_DIR / "index.html").read_text(encoding="utf-8"))


def format_bitrate(kbps: int | None) -> str:
    if kbps is None:
        return "—"
    if kbps < 1000:
        return f"{kbps} kbit/s"
    return f"{kbps / 1000:.1f} Mbit/s"


def format_size(size: int) -> str:
    if size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} B"


def short_swarm(swarm_id: str) -> str:
    """Both ends of a long swarm ID: a live swarm ID is a DER public key (RFC 7574 §6.1) whose
    first bytes are the same for every key of a type, so the tail tells channels apart."""
    return swarm_id if len(swarm_id) <= 16 else f"{swarm_id[:8]}…{swarm_id[-6:]}"


def render_row(channel: dict[str, Any]) -> str:
    esc = html.escape
    name = str(channel["name"])
    badge = (
        '<span class="badge live">LIVE</span>'
        if channel["live"]
        else '<span class="badge vod">VoD</span>'
    )
    trackers = "<br>".join(esc(url) for url in channel["trackers"]) or "—"
    swarm = str(channel["swarm_id"])
    return (
        f'<tr data-channel="{esc(name)}">'
        f'<td class="name"><span class="title">{esc(str(channel["title"]))}</span>'
        f'<span class="id">{esc(name)}</span></td>'
        f'<td class="kind">{badge}</td>'
        f'<td class="bitrate">{esc(format_bitrate(channel["bitrate"]))}</td>'
        f'<td class="viewers">{int(channel["viewers"])}</td>'
        f'<td class="swarm"><code title="{esc(swarm)}">{esc(short_swarm(swarm))}</code></td>'
        f'<td class="chunks">{esc(format_size(int(channel["chunk_size"])))}'
        f'<span class="integrity">{esc(str(channel["integrity"]))}</span></td>'
        f'<td class="tracker">{trackers}</td>'
        "</tr>"
    )


def render_page(channels: list[dict[str, Any]]) -> str:
    """The page with the channel list as of now (the script keeps it current)."""
    viewers = sum(int(channel["viewers"]) for channel in channels)
    return _PAGE.substitute(
        rows="\n".join(render_row(channel) for channel in channels),
        status=html.escape(f"{len(channels)} channel(s) · {viewers} viewer(s)"),
        empty="" if channels else " visible",
    )
