"""Configuration of the content sharing client (``p2pcdn csc``): a TOML file, overridden by
flags (DESIGN §3 daemons). docs/csc.md is the reference; paths are relative to the file::

    [csc]
    portal = "http://127.0.0.1:8080/"          # the content portal (channel list)
    area = "east"                              # locality hint for the tracker's FIND
    trackers = ["ppsp-udp://127.0.0.1:7846"]   # instead of the channel's trackers (optional)
    listen = "127.0.0.1:0"                     # PPSPP (UDP); port 0 picks one
    storage_overlay = "overlay/csc.toml"       # RELOAD daemon TOML for the rescue (optional)
    startup_bytes = 8192                       # bytes buffered before the first frame
    startup = 0.5                              # or seconds of media (the larger counts)
    starvation_timeout = 2.0                   # no chunk from peers this long: rescue
    bitrate = 500                              # kbit/s when the portal gives none
    heartbeat = 5.0                            # portal viewer heartbeats (< 30 s)
    peer_id = "csc-1"                          # default: random
    log_level = "warning"                      # warning, info, debug

Every key is optional; an unknown key is an error, never ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csc.core import DEFAULT_STARVATION_TIMEOUT
from lab import toml_values
from ppsp.tracker.client import parse_tracker_url

Address = tuple[str, int]

LOG_LEVELS = {"warning": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}
DEFAULT_LISTEN: Address = ("127.0.0.1", 0)


class CscConfigError(ValueError):
    """A configuration file or flag that cannot be used; the message names the key."""


@dataclass(slots=True)
class CscConfig:
    """Everything the CSC needs; see the module docstring for the meaning of each."""

    portal: str | None = None
    area: str | None = None
    trackers: tuple[str, ...] = ()
    listen: Address = DEFAULT_LISTEN
    storage_overlay: Path | None = None
    startup: float | None = None
    startup_bytes: int | None = None
    starvation_timeout: float = DEFAULT_STARVATION_TIMEOUT
    bitrate: int = 500
    heartbeat: float = 5.0
    peer_id: str | None = None
    log_level: int = logging.WARNING

    def check(self) -> CscConfig:
        """Validate the values (after flags were applied); returns self."""
        if not self.portal:
            raise CscConfigError("portal is required (--portal URL or portal = in [csc])")
        if not self.portal.startswith(("http://", "https://")):
            raise CscConfigError(f"portal: {self.portal!r} is not an http(s):// URL")
        for url in self.trackers:
            try:
                parse_tracker_url(url)
            except ValueError as exc:
                raise CscConfigError(f"trackers: {exc}") from None
        if self.startup is not None and not 0 < self.startup <= 60:
            raise CscConfigError("startup must be between 0 and 60 seconds")
        if self.startup_bytes is not None and not 0 < self.startup_bytes <= 1 << 30:
            raise CscConfigError("startup_bytes must be between 1 and 1073741824")
        if not 0.05 <= self.starvation_timeout <= 600:
            raise CscConfigError("starvation_timeout must be between 0.05 and 600 seconds")
        if not 0 < self.bitrate <= 100_000_000:
            raise CscConfigError("bitrate must be between 1 and 100000000 kbit/s")
        if not 0.1 <= self.heartbeat <= 25:
            # The portal forgets a viewer 30 s after its last heartbeat (docs/portal.md).
            raise CscConfigError("heartbeat must be between 0.1 and 25 seconds")
        if self.peer_id is not None and not 0 < len(self.peer_id) <= 128:
            raise CscConfigError("peer_id must be 1 to 128 characters")
        if self.area is not None and not 0 < len(self.area) <= 64:
            raise CscConfigError("area must be 1 to 64 characters")
        return self


def parse_address(text: str, key: str = "listen") -> Address:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6); port 0 picks a free port."""
    return toml_values.address(text, key, CscConfigError)


def _str(table: dict[str, Any], key: str) -> str | None:
    return toml_values.string(table, key, CscConfigError)


def _strings(table: dict[str, Any], key: str) -> tuple[str, ...]:
    return toml_values.strings(table, key, CscConfigError)


def _number(table: dict[str, Any], key: str, default: float) -> float:
    return toml_values.number(table, key, default, CscConfigError)


def _int(table: dict[str, Any], key: str) -> int | None:
    return toml_values.integer(table, key, None, CscConfigError)


KNOWN_KEYS = frozenset(f.name for f in dataclasses.fields(CscConfig))


def config_from_table(table: dict[str, Any], base: Path = Path()) -> CscConfig:
    """A :class:`CscConfig` from the ``[csc]`` table; relative paths against ``base``."""
    unknown = set(table) - KNOWN_KEYS
    if unknown:
        raise CscConfigError(f"unknown key(s) in [csc]: {', '.join(sorted(unknown))}")
    listen = _str(table, "listen")
    overlay = _str(table, "storage_overlay")
    level = (_str(table, "log_level") or "warning").lower()
    if level not in LOG_LEVELS:
        raise CscConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
    bitrate = table.get("bitrate", 500)
    if isinstance(bitrate, bool) or not isinstance(bitrate, int):
        raise CscConfigError("bitrate must be an integer (kbit/s)")
    return CscConfig(
        portal=_str(table, "portal"),
        area=_str(table, "area"),
        trackers=_strings(table, "trackers"),
        listen=parse_address(listen) if listen is not None else DEFAULT_LISTEN,
        storage_overlay=base / overlay if overlay is not None else None,
        startup=None if "startup" not in table else _number(table, "startup", 0.0),
        startup_bytes=_int(table, "startup_bytes"),
        starvation_timeout=_number(table, "starvation_timeout", DEFAULT_STARVATION_TIMEOUT),
        bitrate=bitrate,
        heartbeat=_number(table, "heartbeat", 5.0),
        peer_id=_str(table, "peer_id"),
        log_level=LOG_LEVELS[level],
    )


def load_config(path: Path) -> CscConfig:
    """Read a CSC TOML file (not yet checked: apply flags, then :meth:`CscConfig.check`)."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise CscConfigError(f"cannot read {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CscConfigError(f"{path}: {exc}") from None
    extra = set(raw) - {"csc"}
    if extra:
        raise CscConfigError(f"{path}: unknown section(s) {', '.join(sorted(extra))}")
    table = raw.get("csc", {})
    if not isinstance(table, dict):
        raise CscConfigError(f"{path}: [csc] must be a table")
    return config_from_table(table, Path(path).resolve().parent)
