"""Configuration of the tracker daemon (``p2pcdn tracker``): a TOML file, overridden by flags.

The file (every section and key optional; ``docs/tracker.md`` is the reference)::

    [listen]                 # HOST:PORT; port 0 picks a free port
    http = "127.0.0.1:7846"  # RFC 7846 JSON over HTTP/1.1
    https = "0.0.0.0:7847"   # ... over TLS (RFC 7846 §4: MUST support https)
    cert = "tracker.crt"     # PEM certificate chain for https (paths relative to the file)
    key = "tracker.key"      # PEM private key for https
    udp = "127.0.0.1:7846"   # binary encoding over UDP
    tcp = "127.0.0.1:7847"   # binary encoding over TCP

    [limits]                 # the daemon's own limits, and the tracker state's (TrackerConfig)
    max_http_body = 16777216
    ...

    [timers]                 # the tracker state's timers in seconds (TrackerConfig)
    ...

    [logging]
    level = "info"           # warning (default), info, debug
    file = "tracker.log"     # default: stderr

    [overlay]                # overlay mode (draft-xiao): a peer of a RELOAD tracker overlay
    daemon = "node.toml"     # the RELOAD daemon configuration (as for p2pcdn overlay --config)
    lifetime = 60            # ... and the OverlaySettings by field name

Keys of ``[timers]`` and ``[limits]`` that are not the daemon's go to
:class:`ppsp.tracker.state.TrackerConfig` by field name, so the state's tunables need no copy
here; an unknown key is an error, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import logging
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ppsp.tracker.binary import MAX_MESSAGE
from ppsp.tracker.json_codec import DEFAULT_LIMITS
from ppsp.tracker.state import TrackerConfig

Address = tuple[str, int]

#: No port is registered for PPSP-TP; 7846 recalls the RFC. Loopback unless configured.
DEFAULT_PORT = 7846
DEFAULT_HOST = "127.0.0.1"
LOG_LEVELS = {"warning": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}


class ConfigError(ValueError):
    """A configuration file or flag that cannot be used; the message names the key."""


@dataclass(slots=True)
class Limits:
    """The daemon's limits on hostile input (the tracker state has its own, in
    :class:`TrackerConfig`). Sizes in bytes, times in seconds."""

    #: HTTP request body, checked against Content-Length before reading (the JSON codec's
    #: own bound, which lets a 10,000-swarm batch availability report through).
    max_http_body: int = DEFAULT_LIMITS.max_body
    #: Idle HTTP keep-alive connections are closed after this.
    http_keepalive: float = 75.0
    #: A reassembled binary message (UDP or TCP), header included; at most 16 MiB, what the
    #: fragment field's 24-bit offset allows.
    max_message: int = 8 * 1024 * 1024
    #: Binary messages being reassembled at once, over all sources and per source (a source
    #: beyond its share only crowds out itself), and the bytes they may hold in total.
    max_pending_fragments: int = 64
    max_pending_per_source: int = 8
    reassembly_buffer: int = 32 * 1024 * 1024
    #: draft-gu-02 §5.2.3: fragments of a message not completed in time are dropped.
    reassembly_timeout: float = 15.0
    #: Largest fragment the tracker sends over UDP (draft-gu-02 §5.2.3: PMTU − 32).
    udp_max_fragment: int = 1400
    #: UDP responses kept for retransmitted requests (idempotent transaction IDs, RFC 7846
    #: §4.3): how many, how many bytes in total, and for how long.
    response_cache_entries: int = 4096
    response_cache_bytes: int = 32 * 1024 * 1024
    response_cache_seconds: float = 30.0
    #: TCP: open connections, frame size (header included), idle time, unsent bytes.
    max_tcp_connections: int = 1024
    max_tcp_frame: int = 1024 * 1024
    tcp_idle_timeout: float = 300.0
    tcp_write_buffer: int = 4 * 1024 * 1024
    #: Largest fragment the tracker sends over TCP.
    tcp_max_fragment: int = 64 * 1024
    #: Peers whose binary transport is remembered for tracker-initiated messages.
    max_routes: int = 100_000


@dataclass(slots=True)
class OverlaySettings:
    """``[overlay]``: the tracker in overlay mode (docs/tracker.md, :mod:`ppsp.tracker.overlay`).
    Times in seconds."""

    #: The RELOAD daemon configuration (TOML, as for ``p2pcdn overlay --config``).
    daemon: Path
    #: Lifetime of the stored entries (RFC 6940 §7.4.1.1); refreshed every third of it.
    lifetime: int = 60
    #: A swarm is Stored at most once per this interval (changes in between coalesce).
    coalesce: float = 0.2
    #: Fetched swarms are reused for FINDs during this long.
    fetch_cache: float = 1.0
    #: A FIND waits at most this long for the overlay, then answers from local state.
    fetch_timeout: float = 2.0
    #: A Store that takes longer is given up (and retried at the next flush).
    store_timeout: float = 10.0
    #: Changed swarms (one pass) from which they go as one PEER-BATCH per responsible node.
    batch_threshold: int = 8
    #: Peers of one swarm this tracker publishes at most (sources and cachers first).
    max_records: int = 200
    #: Largest PEER-BATCH value; a bigger batch is Stored in parts (see :func:`batch_parts`).
    batch_budget: int = 96 * 1024
    #: Publish PEER-STATUS (xiao §5) for every registered peer.
    peer_status: bool = True
    #: How long a peer's PEER-STATUS lives (refreshed at half of it).
    status_lifetime: int = 300

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work."""
        if self.lifetime < 3:
            raise ValueError("lifetime must be at least 3 seconds")
        if self.status_lifetime < 2:
            raise ValueError("status_lifetime must be at least 2 seconds")
        for name in ("coalesce", "fetch_cache"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("fetch_timeout", "store_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.batch_threshold < 1 or self.max_records < 1 or self.batch_budget < 1024:
            raise ValueError("batch_threshold, max_records ≥ 1 and batch_budget ≥ 1024")


@dataclass(slots=True)
class TrackerDaemonConfig:
    """Everything ``p2pcdn tracker`` needs. ``None`` for a listener means not served."""

    http: Address | None = None
    https: Address | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    udp: Address | None = None
    tcp: Address | None = None
    limits: Limits = field(default_factory=Limits)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    log_level: int = logging.WARNING
    log_file: Path | None = None
    #: Overlay mode (draft-xiao): the tracker is a peer of a RELOAD tracker overlay.
    overlay: OverlaySettings | None = None

    @property
    def listeners(self) -> dict[str, Address]:
        """The configured listen addresses by transport (http, https, udp, tcp)."""
        found = {"http": self.http, "https": self.https, "udp": self.udp, "tcp": self.tcp}
        return {name: addr for name, addr in found.items() if addr is not None}

    def with_defaults(self) -> TrackerDaemonConfig:
        """With no listener configured at all, serve every transport but HTTPS (which needs
        a certificate) on loopback: HTTP and UDP on :data:`DEFAULT_PORT`, TCP on the next
        port (HTTP holds the TCP port of that number)."""
        if self.listeners:
            return self
        default = (DEFAULT_HOST, DEFAULT_PORT)
        return dataclasses.replace(
            self, http=default, udp=default, tcp=(DEFAULT_HOST, DEFAULT_PORT + 1)
        )

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a combination that cannot run."""
        if self.https is not None and (self.cert_file is None or self.key_file is None):
            raise ConfigError("https needs a certificate and a key (cert and key, or --cert/--key)")
        if self.https is None and (self.cert_file is not None or self.key_file is not None):
            raise ConfigError("cert/key given but no https listen address")
        for name, path in (("cert", self.cert_file), ("key", self.key_file)):
            if path is not None and not path.is_file():
                raise ConfigError(f"{name} file {str(path)!r} does not exist")
        if self.overlay is not None:
            try:
                self.overlay.validate()
            except ValueError as exc:
                raise ConfigError(f"[overlay] {exc}") from None
            if not self.overlay.daemon.is_file():
                raise ConfigError(
                    f"overlay daemon file {str(self.overlay.daemon)!r} does not exist"
                )


# ---------------------------------------------------------------------------- parsing

_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def parse_listen_address(text: str) -> Address:
    """``HOST:PORT`` (IPv6 as ``[ADDR]:PORT``, RFC 3986 §3.2.2); port 0 picks a free port.
    Raises :class:`ConfigError`."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ConfigError(f"invalid address {text!r}: expected [IPv6]:PORT")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"invalid address {text!r}: {host!r} is not IPv6") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ConfigError(f"invalid address {text!r}: expected HOST:PORT")
        if ":" in host:
            raise ConfigError(f"invalid address {text!r}: put IPv6 in brackets, [ADDR]:PORT")
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ConfigError(f"invalid address {text!r}: bad IPv4 address") from None
        elif not _HOSTNAME_RE.match(host):
            raise ConfigError(f"invalid address {text!r}: bad host name")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"invalid address {text!r}: port must be 0-65535")
    return host, int(port_text)


def _coerce(section: str, key: str, value: object, default: object) -> Any:
    """Check a TOML value against the type of the default it replaces."""
    where = f"[{section}] {key}"
    if isinstance(default, enum.Enum):
        # An enum setting (e.g. unregistered_error) is written as its value: 3 or "JOIN".
        try:
            return type(default)(value)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in type(default))
            raise ConfigError(f"{where}: one of {choices}, got {value!r}") from None
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if value < 0:
            raise ConfigError(f"{where}: must not be negative")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        number = float(value)
        if not math.isfinite(number) or number < 0:
            raise ConfigError(f"{where}: must be a finite number >= 0")
        if number == 0 and default > 0:
            raise ConfigError(f"{where}: must be positive")
        return number
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if default is None and isinstance(value, str | int | float | bool):
        return value  # an optional setting: TrackerConfig validates it
    raise ConfigError(f"{where}: cannot be set from a file")


def _defaults(cls: Any) -> dict[str, object]:
    """Field name → default value of a dataclass (fields without a default are skipped)."""
    out: dict[str, object] = {}
    instance = cls()
    for f in dataclasses.fields(cls):
        out[f.name] = getattr(instance, f.name)
    return out


def _table(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value


def config_from_dict(data: dict[str, Any], base_dir: Path | None = None) -> TrackerDaemonConfig:
    """Build a configuration from parsed TOML; relative file names are resolved against
    ``base_dir`` (the configuration file's directory). Raises :class:`ConfigError`."""
    unknown = set(data) - {"listen", "limits", "timers", "logging", "overlay"}
    if unknown:
        raise ConfigError(f"unknown section(s): {', '.join(sorted(unknown))}")
    config = TrackerDaemonConfig()
    base = base_dir or Path(".")

    listen = _table(data, "listen")
    for key, value in listen.items():
        if key in ("http", "https", "udp", "tcp"):
            if not isinstance(value, str):
                raise ConfigError(f'[listen] {key}: expected "HOST:PORT", got {value!r}')
            try:
                setattr(config, key, parse_listen_address(value))
            except ConfigError as exc:
                raise ConfigError(f"[listen] {key}: {exc}") from None
        elif key in ("cert", "key"):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"[listen] {key}: expected a file name")
            setattr(config, f"{key}_file", base / Path(value).expanduser())
        else:
            raise ConfigError(f"[listen] unknown key {key!r}")

    limits_defaults = _defaults(Limits)
    tracker_defaults = _defaults(TrackerConfig)
    tracker_values: dict[str, Any] = {}
    for section in ("limits", "timers"):
        for key, value in _table(data, section).items():
            if section == "limits" and key in limits_defaults:
                default = limits_defaults[key]
                setattr(config.limits, key, _coerce(section, key, value, default))
            elif key in tracker_defaults:
                tracker_values[key] = _coerce(section, key, value, tracker_defaults[key])
            else:
                raise ConfigError(f"[{section}] unknown key {key!r}")
    _check_limits(config.limits)
    if tracker_values:
        try:
            config.tracker = TrackerConfig(**tracker_values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"tracker settings: {exc}") from None

    logging_table = _table(data, "logging")
    for key, value in logging_table.items():
        if key == "level":
            if not isinstance(value, str) or value.lower() not in LOG_LEVELS:
                raise ConfigError(f"[logging] level: one of {', '.join(LOG_LEVELS)}")
            config.log_level = LOG_LEVELS[value.lower()]
        elif key == "file":
            if not isinstance(value, str) or not value:
                raise ConfigError("[logging] file: expected a file name")
            config.log_file = base / Path(value).expanduser()
        else:
            raise ConfigError(f"[logging] unknown key {key!r}")
    if "overlay" in data:
        config.overlay = _overlay_settings(_table(data, "overlay"), base)
    return config


def _overlay_settings(table: dict[str, Any], base: Path) -> OverlaySettings:
    """``[overlay]``: ``daemon`` (the RELOAD daemon TOML) and the OverlaySettings by name."""
    daemon = table.get("daemon")
    if not isinstance(daemon, str) or not daemon:
        raise ConfigError("[overlay] daemon: expected the RELOAD daemon configuration file")
    settings = OverlaySettings(base / Path(daemon).expanduser())
    defaults = _defaults_of(settings)
    for key, value in table.items():
        if key == "daemon":
            continue
        if key not in defaults:
            raise ConfigError(f"[overlay] unknown key {key!r}")
        setattr(settings, key, _coerce("overlay", key, value, defaults[key]))
    try:
        settings.validate()
    except ValueError as exc:
        raise ConfigError(f"[overlay] {exc}") from None
    return settings


def _defaults_of(instance: Any) -> dict[str, object]:
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)}


def _check_limits(limits: Limits) -> None:
    # Bounds that keep the daemon working, not policy: a fragment must hold the 24-byte
    # header and more, and a UDP datagram is at most 65507 bytes of payload.
    if not 64 <= limits.udp_max_fragment <= 65507:
        raise ConfigError("[limits] udp_max_fragment: must be 64-65507")
    if not 64 <= limits.tcp_max_fragment <= limits.max_tcp_frame:
        raise ConfigError("[limits] tcp_max_fragment: must be 64 to max_tcp_frame")
    if not 64 <= limits.max_message <= MAX_MESSAGE:
        raise ConfigError(f"[limits] max_message: must be 64-{MAX_MESSAGE}")
    for name in (
        "max_http_body",
        "max_tcp_frame",
        "max_tcp_connections",
        "max_pending_fragments",
        "max_pending_per_source",
        "reassembly_buffer",
        "max_routes",
    ):
        if getattr(limits, name) < 1:
            raise ConfigError(f"[limits] {name}: must be at least 1")


def load_config(path: Path) -> TrackerDaemonConfig:
    """Read a TOML configuration file. Raises :class:`ConfigError` with the file name."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {str(path)!r} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        return config_from_dict(data, path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
