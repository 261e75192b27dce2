"""Client of the content portal's publish API: how a source announces a channel (DESIGN.md §1,
flow F1's last step: source → portal).

The portal itself arrives with issue 7; this module fixes the contract it implements, so the
source can be built and tested now (against a test double):

``POST <portal>/api/v1/channels`` with ``Authorization: Bearer <token>`` (RFC 6750 §2.1) and a
JSON body, one :class:`Channel` (:meth:`Channel.to_json`). The portal creates the channel or
replaces the one of that name, and answers ``200`` or ``201`` with a JSON object (its view of
the channel). ``401``/``403`` mean a missing or wrong token; any other status is an error.

The channel's fields are the portal row of DESIGN.md §1 — name, live/VoD, swarm ID, tracker
URLs, chunk size, integrity method, bitrate — plus what a viewer needs to reach the content
without the source: the Merkle hash function, the content length, and where the content sits
in the storage overlay (the source's user name: CONTENT-META is at H("<user>/<channel>"),
docs/usages.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

__all__ = [
    "PUBLISH_PATH",
    "Channel",
    "PortalAuthError",
    "PortalError",
    "PortalTimeout",
    "parse_answer",
    "publish_channel",
    "publish_url",
]

#: Where the publish API lives under the portal's base URL.
PUBLISH_PATH = "api/v1/channels"
DEFAULT_TIMEOUT = 10.0
#: The portal's answer is a small JSON object; anything bigger is not the portal.
MAX_RESPONSE = 1 << 20


class PortalError(Exception):
    """The portal did not accept the channel; ``status`` is the HTTP status when it answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PortalAuthError(PortalError):
    """401/403: the bearer token is missing, wrong or not allowed to publish."""


class PortalTimeout(PortalError, TimeoutError):
    """No answer within the timeout."""


@dataclass(slots=True)
class Channel:
    """One channel as the portal lists it (DESIGN.md §1 portal row)."""

    name: str
    live: bool
    #: The PPSPP swarm ID in hex: the Merkle root hash (VoD, RFC 7574 §5.1) or the live
    #: source's public key swarm ID (§6.1).
    swarm_id: str
    trackers: list[str]
    chunk_size: int
    #: "merkle" (VoD) or the live integrity method: "unified-merkle" / "sign-all".
    integrity: str
    #: The Merkle hash function (RFC 7574 §7.6): "sha1", "sha256", ...
    hash: str
    #: kbit/s: given for live, estimated (or None) for VoD.
    bitrate: int | None = None
    title: str = ""
    #: VoD content length in bytes (None for live).
    length: int | None = None
    #: The storage overlay location: CONTENT-META at H("<source_user>/<name>").
    source_user: str = ""
    #: PPSPP addresses of the source ("HOST:PORT"), for a viewer with no tracker at hand.
    sources: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def publish_url(portal: str) -> str:
    """``<portal>/api/v1/channels``; raises :class:`ValueError` for a URL that is not http(s)."""
    parts = urllib.parse.urlsplit(portal)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"portal URL {portal!r}: give http://HOST[:PORT][/PATH] or https://…")
    base = portal if portal.endswith("/") else portal + "/"
    return urllib.parse.urljoin(base, PUBLISH_PATH)


def parse_answer(url: str, status: int, body: bytes) -> dict[str, Any]:
    """The portal's answer to a publish: its JSON object on 2xx (``{}`` for an empty body);
    raises :class:`PortalAuthError` (401/403) or :class:`PortalError` for anything else."""
    if status in (401, 403):
        raise PortalAuthError(
            f"portal {url} refused the token (HTTP {status}): check --portal-token", status
        )
    if not 200 <= status < 300:
        # Printable characters only: the text ends up on the user's terminal.
        text = body[:200].decode("utf-8", "replace")
        reason = "".join(c if c.isprintable() else " " for c in text).strip()
        detail = f": {reason}" if reason else ""
        raise PortalError(f"portal {url} answered HTTP {status}{detail}", status)
    if len(body) > MAX_RESPONSE:
        raise PortalError(f"portal {url} answered more than {MAX_RESPONSE} bytes", status)
    if not body.strip():
        return {}
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise PortalError(f"portal {url} answered something that is not JSON", status) from None
    if not isinstance(answer, dict):
        raise PortalError(f"portal {url} answered JSON that is not an object", status)
    return answer


async def _read_bounded(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The body up to ``limit`` bytes (a hostile server must not grow our memory)."""
    parts: list[bytes] = []
    got = 0
    while got < limit:  # bounded: every pass reads ≥ 1 byte or ends
        part = await stream.read(min(65536, limit - got))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


async def publish_channel(
    portal: str,
    token: str,
    channel: Channel,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    session: aiohttp.ClientSession | None = None,
) -> dict[str, Any]:
    """POST ``channel`` to the portal's publish API; returns the portal's JSON answer.

    Raises :class:`PortalAuthError` (401/403), :class:`PortalTimeout`, or :class:`PortalError`
    (another status, an unreachable portal, an answer that is not a JSON object)."""
    url = publish_url(portal)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    own = session is None
    client = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
    try:
        async with asyncio.timeout(timeout):
            async with client.post(url, json=channel.to_json(), headers=headers) as response:
                body = await _read_bounded(response.content, MAX_RESPONSE + 1)
                status = response.status
    except TimeoutError:
        raise PortalTimeout(f"portal {url} did not answer within {timeout:g} s") from None
    except aiohttp.ClientError as exc:
        raise PortalError(f"portal {url} unreachable: {exc or type(exc).__name__}") from None
    finally:
        if own:
            await client.close()
    answer = parse_answer(url, status, body)
    log.info("published channel %s to %s (HTTP %d)", channel.name, url, status)
    return answer
