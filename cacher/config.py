"""Configuration of the cacher daemon (``p2pcdn cacher``): a TOML file, overridden by flags.

The file (``docs/cacher.md`` is the reference; paths are relative to the file)::

    [cacher]
    tracker = "ppsp-udp://127.0.0.1:7846"   # binary PPSP-TP (ppsp-udp:// or ppsp-tcp://)
    area = "east"                            # locality the tracker groups cachers and CSCs by
    listen = "127.0.0.1:7100"                # PPSPP (UDP) for CSCs; port 0 picks one
    cache_dir = "cache"                      # chunks/ (the ChunkCache), meta/, peer-id
    cache_size = "256MiB"                    # size limit (bytes, or with KiB/MiB/GiB)
    storage_overlay = "overlay/cacher.toml"  # RELOAD daemon TOML of the cacher's overlay node
    sources = ["source@lab"]                 # source user names whose content is trusted
    channels = ["source@lab/movie"]          # channels known from the start (optional)
    portal = "http://127.0.0.1:8080"         # portal for swarm ID → channel (optional)
    push_head = 64                           # head chunks pushed after the handshake (F4)
    follow_hints = true                      # prefetch what the tracker's push hints name
    readahead = 1                            # segments fetched after the one that missed
    peer_id = "cacher-east-1"                # default: generated once, kept in cache_dir
    keepalive = 20.0                         # seconds between STAT_REPORTs at most
    report_delay = 0.2                       # incremental report coalescing (seconds)
    fsync = true                             # make cache commits durable (fsync)
    log_level = "info"                       # warning, info, debug

Every key is optional except ``tracker``; an unknown key is an error, never ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import toml_values
from ppsp.tracker.client import parse_tracker_url

Address = tuple[str, int]

LOG_LEVELS = {"warning": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}
DEFAULT_LISTEN: Address = ("127.0.0.1", 0)
DEFAULT_CACHE_SIZE = 256 * 1024 * 1024
#: Head chunks pushed to a new CSC (DESIGN F4): 64 KiB of 1 KiB chunks, the tracker's
#: default hinted head (TrackerConfig.hint_head_chunks).
DEFAULT_PUSH_HEAD = 64
_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


class CacherConfigError(ValueError):
    """A configuration file or flag that cannot be used; the message names the key."""


@dataclass(slots=True)
class CacherConfig:
    """Everything the daemon needs; see the module docstring for the meaning of each."""

    tracker: str
    area: str | None = None
    listen: Address = DEFAULT_LISTEN
    cache_dir: Path = Path("cache")
    cache_size: int = DEFAULT_CACHE_SIZE
    storage_overlay: Path | None = None
    sources: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    portal: str | None = None
    push_head: int = DEFAULT_PUSH_HEAD
    #: Act on the tracker's push hints (F4: prefetch hinted VoD heads, follow hinted live
    #: channels); false: a plain cache that fills on misses only.
    follow_hints: bool = True
    readahead: int = 1
    peer_id: str | None = None
    keepalive: float = 20.0
    report_delay: float = 0.2
    fsync: bool = True
    log_level: int = logging.INFO
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> CacherConfig:
        """Validate the values (after flags were applied); returns self."""
        try:
            scheme, _ = parse_tracker_url(self.tracker)
        except ValueError as exc:
            raise CacherConfigError(f"tracker: {exc}") from None
        if scheme not in ("ppsp-udp", "ppsp-tcp"):
            # Push hints need the tracker to speak first: the binary encoding only (DESIGN §4).
            raise CacherConfigError("tracker: a cacher needs a ppsp-udp:// or ppsp-tcp:// URL")
        if self.cache_size <= 0:
            raise CacherConfigError("cache_size must be positive")
        if not 0 <= self.push_head <= 1 << 20:
            raise CacherConfigError("push_head must be between 0 and 1048576 chunks")
        if not 0 <= self.readahead <= 64:
            raise CacherConfigError("readahead must be between 0 and 64 segments")
        if not 0.5 <= self.keepalive <= 3600:
            raise CacherConfigError("keepalive must be between 0.5 and 3600 seconds")
        if not 0 <= self.report_delay <= 60:
            raise CacherConfigError("report_delay must be between 0 and 60 seconds")
        for channel in self.channels:
            user, _, name = channel.partition("/")
            if not user or not name:
                raise CacherConfigError(f"channels: {channel!r} is not USER/CHANNEL")
            if self.sources and user not in self.sources:
                raise CacherConfigError(f"channels: {channel!r} is not from a trusted source")
        if self.peer_id is not None and not 0 < len(self.peer_id) <= 128:
            raise CacherConfigError("peer_id must be 1 to 128 characters")
        return self


def parse_size(value: object, key: str = "cache_size") -> int:
    """Bytes from an integer or a string like ``"64MiB"``."""
    if isinstance(value, bool):
        raise CacherConfigError(f"{key}: not a size")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?i?B)?\s*", value, re.IGNORECASE)
        if match:
            unit = (match.group(2) or "").lower()
            if unit in ("kb", "mb", "gb", "tb"):
                unit = unit[0] + "ib"
            if unit in _UNITS:
                return int(match.group(1)) * _UNITS[unit]
    raise CacherConfigError(f"{key}: {value!r} is not a size (bytes, or e.g. '64MiB')")


def parse_address(text: str, key: str = "listen") -> Address:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6); port 0 picks a free port."""
    return toml_values.address(text, key, CacherConfigError)


def _str(table: dict[str, Any], key: str) -> str | None:
    return toml_values.string(table, key, CacherConfigError)


def _strings(table: dict[str, Any], key: str) -> tuple[str, ...]:
    return toml_values.strings(table, key, CacherConfigError)


def _number(table: dict[str, Any], key: str, default: float) -> float:
    return toml_values.number(table, key, default, CacherConfigError)


def _int(table: dict[str, Any], key: str, default: int) -> int:
    value = toml_values.integer(table, key, default, CacherConfigError)
    assert value is not None  # a default is given
    return value


KNOWN_KEYS = frozenset(f.name for f in dataclasses.fields(CacherConfig)) - {"extra"}


def config_from_table(table: dict[str, Any], base: Path = Path()) -> CacherConfig:
    """A :class:`CacherConfig` from the ``[cacher]`` table; relative paths against ``base``."""
    unknown = set(table) - KNOWN_KEYS
    if unknown:
        raise CacherConfigError(f"unknown key(s) in [cacher]: {', '.join(sorted(unknown))}")
    tracker = _str(table, "tracker")
    if tracker is None:
        raise CacherConfigError("tracker is required (ppsp-udp://HOST:PORT)")
    listen = _str(table, "listen")
    cache_dir = _str(table, "cache_dir")
    overlay = _str(table, "storage_overlay")
    level = (_str(table, "log_level") or "info").lower()
    if level not in LOG_LEVELS:
        raise CacherConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
    return CacherConfig(
        tracker=tracker,
        area=_str(table, "area"),
        listen=parse_address(listen) if listen is not None else DEFAULT_LISTEN,
        cache_dir=base / cache_dir if cache_dir is not None else base / "cache",
        cache_size=parse_size(table.get("cache_size", DEFAULT_CACHE_SIZE)),
        storage_overlay=base / overlay if overlay is not None else None,
        sources=_strings(table, "sources"),
        channels=_strings(table, "channels"),
        portal=_str(table, "portal"),
        push_head=_int(table, "push_head", DEFAULT_PUSH_HEAD),
        readahead=_int(table, "readahead", 1),
        peer_id=_str(table, "peer_id"),
        keepalive=_number(table, "keepalive", 20.0),
        report_delay=_number(table, "report_delay", 0.2),
        fsync=toml_values.boolean(table, "fsync", True, CacherConfigError),
        follow_hints=toml_values.boolean(table, "follow_hints", True, CacherConfigError),
        log_level=LOG_LEVELS[level],
    )


def load_config(path: Path) -> CacherConfig:
    """Read a cacher TOML file (not yet checked: apply flags, then :meth:`CacherConfig.check`)."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise CacherConfigError(f"cannot read {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CacherConfigError(f"{path}: {exc}") from None
    extra = set(raw) - {"cacher"}
    if extra:
        raise CacherConfigError(f"{path}: unknown section(s) {', '.join(sorted(extra))}")
    table = raw.get("cacher", {})
    if not isinstance(table, dict):
        raise CacherConfigError(f"{path}: [cacher] must be a table")
    return config_from_table(table, Path(path).resolve().parent)
