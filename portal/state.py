"""The content portal's channel registry: sans-IO, with the clock injected (DESIGN §3).

The portal (DESIGN §1, the content portal row) lists channels — name, live/VoD, swarm ID,
tracker URL(s), chunk size, integrity method, bitrate — and how many viewers watch each. The
source publishes a channel (issue 6, ``portal/portal_client.py``); content sharing clients
(CSCs) read the list and send viewer heartbeats. This module holds that state and validates
every input; :mod:`portal.server` is the thin HTTP adapter around it, and it owns the sockets,
the clock and the state file.

Every body that reaches :func:`parse_channel` or :func:`parse_heartbeat` is hostile: the
functions accept exactly the members of the "Portal HTTP API" contract (unknown members are
refused, so a typo in a publisher is a 400 and not a silently missing field), check each
member's JSON type (``true`` is not an integer, ``1.0`` is not a chunk size), bound every
length and number, and raise :class:`ValidationError` with a message meant for the publisher on
anything else. Every table is bounded (:data:`MAX_CHANNELS`, :data:`MAX_VIEWERS`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

#: At most this many channels; publishing one more is refused (:class:`LimitExceeded`).
MAX_CHANNELS: Final = 10_000
#: Largest request body the portal reads (bytes); the HTTP adapter answers 413 beyond it.
MAX_BODY: Final = 64 * 1024
#: A viewer that sent no heartbeat for this many seconds no longer counts (CSCs send one
#: every few seconds while they play; a crashed CSC drops out of the count by itself).
VIEWER_TTL: Final = 30.0
#: Viewers counted at once over all channels (bounds memory against heartbeat floods).
MAX_VIEWERS: Final = 200_000
#: Version of the state file's layout.
STATE_VERSION: Final = 1

#: A channel name is one URL path segment with no escaping: an ASCII letter or digit, then
#: letters, digits, ``.``, ``_`` and ``-`` (no ``/``, no ``..``, no spaces), 1–64 characters.
NAME_RE: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]|\.(?!\.)){0,63}")
_TOKEN_RE: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_HEX_RE: Final = re.compile(r"(?:[0-9a-fA-F]{2}){1,1024}")
_URL_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,31}://[!-~]{1,480}")
_ADDRESS_RE: Final = re.compile(r"(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,253}):[0-9]{1,5}")

MAX_TITLE: Final = 200
MAX_TRACKERS: Final = 16
MAX_SOURCES: Final = 16
MAX_TEXT: Final = 128
#: Bounds of the numeric members (PPSPP chunk sizes are far below 16 MiB; bitrates in kbit/s).
MAX_CHUNK_SIZE: Final = 16 * 1024 * 1024
MAX_SEGMENT_CHUNKS: Final = 1 << 20
MAX_BITRATE: Final = 100_000_000
MAX_LENGTH: Final = 1 << 62


class ValidationError(ValueError):
    """A request body or a state file entry that does not follow the contract (HTTP 400)."""


class NotFound(LookupError):
    """No channel of that name (HTTP 404)."""


class LimitExceeded(Exception):
    """A table of the portal is full (HTTP 409): too many channels or viewers."""


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """What a source publishes about a channel (the publish body of the portal API)."""

    name: str
    title: str
    live: bool
    #: The swarm ID in lower-case hex: the Merkle root (VoD) or the live public key swarm ID.
    swarm_id: str
    trackers: tuple[str, ...]
    chunk_size: int
    #: PPSPP content integrity protection: "merkle-sha1", "unified-merkle-ecdsa-p256", ….
    integrity: str
    hash: str
    bitrate: int | None
    length: int | None
    source_user: str
    storage_overlay: str | None
    segment_chunks: int
    cipm: int | None
    #: PPSPP addresses of the source ("HOST:PORT"), for a viewer with no tracker at hand (an
    #: addition to the contract that the source's client sends).
    sources: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["trackers"] = list(self.trackers)
        out["sources"] = list(self.sources)
        return out


#: Members of the publish body: name → (required, default when absent).
_OPTIONAL_DEFAULTS: Final[Mapping[str, Any]] = {
    "title": None,  # the name
    "trackers": (),
    "hash": "",
    "bitrate": None,
    "length": None,
    "source_user": "",
    "storage_overlay": None,
    "segment_chunks": 64,  # usages-design: default segment of 64 chunks
    "cipm": None,
    "sources": (),
}
_REQUIRED: Final = ("name", "live", "swarm_id", "chunk_size", "integrity")
CHANNEL_FIELDS: Final = frozenset(_REQUIRED) | frozenset(_OPTIONAL_DEFAULTS)
HEARTBEAT_FIELDS: Final = frozenset({"viewer", "watching"})


# -- validation ---------------------------------------------------------------------------


def decode_json(body: bytes) -> Any:
    """Parse a request body as strict JSON (UTF-8, no NaN/Infinity, bounded nesting).

    Raises :class:`ValidationError` for anything else, never another exception.
    """
    if len(body) > MAX_BODY:
        raise ValidationError(f"body larger than {MAX_BODY} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError("body is not UTF-8") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValidationError:
        raise
    except RecursionError:
        raise ValidationError("JSON nested too deeply") from None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise ValidationError(f"body is not JSON: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValidationError(f"{name} is not a JSON number")


def parse_channel(data: object) -> ChannelSpec:
    """Validate a decoded publish body (the contract's channel object) into a spec."""
    obj = _object(data, CHANNEL_FIELDS, "channel")
    for member in _REQUIRED:
        if member not in obj:
            raise ValidationError(f"missing member {member!r}")
    name = _name(obj["name"])
    title_value = obj.get("title")
    # An absent or empty title shows the name.
    title = _text("title", title_value, MAX_TITLE, empty=True) if title_value is not None else ""
    title = title or name
    live = _bool("live", obj["live"])
    swarm_id = obj["swarm_id"]
    if not isinstance(swarm_id, str) or not _HEX_RE.fullmatch(swarm_id):
        raise ValidationError("'swarm_id' must be hex digits (an even number, 2–2048)")
    trackers_value = obj.get("trackers", ())
    if not isinstance(trackers_value, list | tuple):
        raise ValidationError("'trackers' must be a list of URLs")
    if len(trackers_value) > MAX_TRACKERS:
        raise ValidationError(f"at most {MAX_TRACKERS} trackers")
    trackers = tuple(_url(url) for url in trackers_value)
    sources = _string_list("sources", obj.get("sources", ()), MAX_SOURCES, _ADDRESS_RE)
    segment_chunks = _int("segment_chunks", obj.get("segment_chunks", 64), 1, MAX_SEGMENT_CHUNKS)
    if segment_chunks & (segment_chunks - 1):
        # A segment is aligned to one bin of the Merkle tree (usages-design: power of two).
        raise ValidationError("'segment_chunks' must be a power of two")
    hash_value = obj.get("hash", "")
    if not isinstance(hash_value, str) or (hash_value and not _TOKEN_RE.fullmatch(hash_value)):
        raise ValidationError("'hash' must be a hash function name such as 'sha256'")
    integrity = obj["integrity"]
    if not isinstance(integrity, str) or not _TOKEN_RE.fullmatch(integrity):
        raise ValidationError("'integrity' must be a method name such as 'merkle-sha256'")
    overlay = obj.get("storage_overlay")
    return ChannelSpec(
        name=name,
        title=title,
        live=live,
        swarm_id=swarm_id.lower(),
        trackers=trackers,
        chunk_size=_int("chunk_size", obj["chunk_size"], 1, MAX_CHUNK_SIZE),
        integrity=integrity,
        hash=hash_value,
        bitrate=_optional_int("bitrate", obj.get("bitrate"), 0, MAX_BITRATE),
        length=_optional_int("length", obj.get("length"), 0, MAX_LENGTH),
        source_user=_text("source_user", obj.get("source_user", ""), MAX_TEXT, empty=True),
        storage_overlay=None
        if overlay is None
        else _text("storage_overlay", overlay, MAX_TEXT, empty=True),
        segment_chunks=segment_chunks,
        cipm=_optional_int("cipm", obj.get("cipm"), 0, 255),
        sources=sources,
    )


def parse_heartbeat(data: object) -> tuple[str, bool]:
    """Validate a decoded viewer heartbeat ``{"viewer": str, "watching": bool}``."""
    obj = _object(data, HEARTBEAT_FIELDS, "heartbeat")
    if "viewer" not in obj or "watching" not in obj:
        raise ValidationError("a heartbeat has 'viewer' and 'watching'")
    return _text("viewer", obj["viewer"], MAX_TEXT), _bool("watching", obj["watching"])


def check_name(name: str) -> str:
    """The channel name of a URL path, or :class:`ValidationError`."""
    return _name(name)


def _object(data: object, allowed: frozenset[str], what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValidationError(f"the {what} must be a JSON object")
    unknown = sorted(str(key) for key in data if key not in allowed)
    if unknown:
        shown = ", ".join(repr(key[:40]) for key in unknown[:5])
        raise ValidationError(f"unknown member(s) in the {what}: {shown}")
    return data


def _name(value: object) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise ValidationError(
            "'name' must be 1-64 characters: letters, digits, '.', '_', '-', starting with a "
            "letter or digit (no '/', no '..')"
        )
    return value


def _text(member: str, value: object, limit: int, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{member!r} must be a string")
    if len(value) > limit or (not value and not empty):
        raise ValidationError(f"{member!r} must be {0 if empty else 1}-{limit} characters")
    for char in value:
        # Controls would garble the page and the logs; lone surrogates cannot be stored.
        if unicodedata.category(char) in ("Cc", "Cs"):
            raise ValidationError(f"{member!r} contains a control character")
    return value


def _bool(member: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(f"{member!r} must be true or false")
    return value


def _int(member: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{member!r} must be an integer")
    if not low <= value <= high:
        raise ValidationError(f"{member!r} must be in {low}..{high}")
    return value


def _optional_int(member: str, value: object, low: int, high: int) -> int | None:
    return None if value is None else _int(member, value, low, high)


def _string_list(
    member: str, value: object, limit: int, pattern: re.Pattern[str]
) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or len(value) > limit:
        raise ValidationError(f"{member!r} must be a list of at most {limit} strings")
    for item in value:
        if not isinstance(item, str) or not pattern.fullmatch(item):
            raise ValidationError(f"{member!r}: {str(item)[:40]!r} is not HOST:PORT")
    return tuple(value)


def _url(value: object) -> str:
    if not isinstance(value, str) or not _URL_RE.fullmatch(value):
        raise ValidationError("each tracker must be a URL such as ppsp-udp://HOST:PORT")
    return value


# -- the registry -------------------------------------------------------------------------


@dataclass(slots=True)
class Channel:
    spec: ChannelSpec
    #: Unix time of the latest publication (first publish or update).
    published: float
    #: Viewer → Unix time of its latest heartbeat.
    viewers: dict[str, float] = dataclasses.field(default_factory=dict)


class PortalState:
    """Channels and viewer heartbeats. Every method that depends on time takes ``now``
    (Unix seconds); nothing here reads a clock, opens a file or a socket."""

    def __init__(
        self,
        *,
        max_channels: int = MAX_CHANNELS,
        viewer_ttl: float = VIEWER_TTL,
        max_viewers: int = MAX_VIEWERS,
    ) -> None:
        self.max_channels = max_channels
        self.viewer_ttl = viewer_ttl
        self.max_viewers = max_viewers
        self._channels: dict[str, Channel] = {}
        self._viewer_total = 0
        #: Bumped on every change that the state file holds (not on heartbeats).
        self.generation = 0

    def __len__(self) -> int:
        return len(self._channels)

    def __contains__(self, name: object) -> bool:
        return name in self._channels

    # -- publishing ---------------------------------------------------------------------

    def publish(self, spec: ChannelSpec, now: float) -> tuple[dict[str, Any], bool]:
        """Add or update a channel; returns its JSON object and whether it is new."""
        channel = self._channels.get(spec.name)
        if channel is None:
            if len(self._channels) >= self.max_channels:
                raise LimitExceeded(f"the portal holds {self.max_channels} channels already")
            channel = Channel(spec, now)
            self._channels[spec.name] = channel
            created = True
        else:
            channel.spec = spec
            channel.published = now
            created = False
        self.generation += 1
        return self._json(channel, now), created

    def delete(self, name: str) -> None:
        channel = self._channels.pop(name, None)
        if channel is None:
            raise NotFound(name)
        self._viewer_total -= len(channel.viewers)
        self.generation += 1

    # -- reading ------------------------------------------------------------------------

    def get(self, name: str, now: float) -> dict[str, Any]:
        channel = self._channels.get(name)
        if channel is None:
            raise NotFound(name)
        return self._json(channel, now)

    def channels(self, now: float) -> list[dict[str, Any]]:
        """Every channel's JSON object, sorted by name (a stable order for the page)."""
        return [self._json(self._channels[name], now) for name in sorted(self._channels)]

    def viewer_count(self, name: str, now: float) -> int:
        channel = self._channels.get(name)
        if channel is None:
            raise NotFound(name)
        return self._count(channel, now)

    @property
    def viewer_total(self) -> int:
        """Viewers held (expired ones included until :meth:`expire` runs)."""
        return self._viewer_total

    # -- viewers ------------------------------------------------------------------------

    def heartbeat(self, name: str, viewer: str, watching: bool, now: float) -> None:
        """A CSC says it is (``watching``) or is no longer watching channel ``name``."""
        channel = self._channels.get(name)
        if channel is None:
            raise NotFound(name)
        if not watching:
            if channel.viewers.pop(viewer, None) is not None:
                self._viewer_total -= 1
            return
        if viewer not in channel.viewers:
            if self._viewer_total >= self.max_viewers:
                self.expire(now)
            if self._viewer_total >= self.max_viewers:
                raise LimitExceeded(f"the portal counts {self.max_viewers} viewers already")
            self._viewer_total += 1
        channel.viewers[viewer] = now

    def expire(self, now: float) -> int:
        """Forget viewers silent for longer than the TTL; returns how many."""
        dropped = 0
        for channel in self._channels.values():
            dropped += self._prune(channel, now)
        return dropped

    def _prune(self, channel: Channel, now: float) -> int:
        deadline = now - self.viewer_ttl
        stale = [viewer for viewer, seen in channel.viewers.items() if seen < deadline]
        for viewer in stale:
            del channel.viewers[viewer]
        self._viewer_total -= len(stale)
        return len(stale)

    def _count(self, channel: Channel, now: float) -> int:
        deadline = now - self.viewer_ttl
        return sum(1 for seen in channel.viewers.values() if seen >= deadline)

    def _json(self, channel: Channel, now: float) -> dict[str, Any]:
        out = channel.spec.to_json()
        out["viewers"] = self._count(channel, now)
        out["published"] = channel.published
        return out

    # -- persistence (the adapter writes the bytes) -------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The persistent part of the state: channels, not viewers (they expire anyway)."""
        return {
            "version": STATE_VERSION,
            "channels": [
                {"channel": channel.spec.to_json(), "published": channel.published}
                for channel in self._channels.values()
            ],
        }

    def load(self, data: object) -> list[str]:
        """Replace the channels with those of a :meth:`to_json` document.

        Raises :class:`ValidationError` when the document as a whole is not a state file;
        an entry that does not validate is skipped and described in the returned list.
        """
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ValidationError(f"not a portal state file of version {STATE_VERSION}")
        entries = data.get("channels")
        if not isinstance(entries, list):
            raise ValidationError("the state file has no channel list")
        problems: list[str] = []
        channels: dict[str, Channel] = {}
        for index, entry in enumerate(_bounded(entries, self.max_channels, problems)):
            try:
                if not isinstance(entry, dict):
                    raise ValidationError("not an object")
                spec = parse_channel(entry.get("channel"))
                published = entry.get("published")
                if isinstance(published, bool) or not isinstance(published, int | float):
                    raise ValidationError("'published' is not a number")
            except ValidationError as exc:
                problems.append(f"entry {index}: {exc}")
                continue
            channels[spec.name] = Channel(spec, float(published))
        self._channels = channels
        self._viewer_total = 0
        self.generation += 1
        return problems


def _bounded(entries: list[Any], limit: int, problems: list[str]) -> Iterable[Any]:
    if len(entries) > limit:
        problems.append(f"{len(entries) - limit} channel(s) over the limit of {limit} dropped")
    return entries[:limit]
