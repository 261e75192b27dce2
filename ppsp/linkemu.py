"""A userspace link emulator: delay, jitter, loss and rate per destination prefix.

The lab's kernels have ``tc tbf`` but no ``netem`` (DESIGN §5), so the delays, jitter and loss
that fast channel change is measured under are applied by our own transports instead: every
datagram or stream write goes through :meth:`LinkEmulator.schedule`, which answers when it is
delivered (or that it is lost), and a thin asyncio wrapper sends it at that time.

The core is sans-IO with injected time and an injected random generator, so tests replay it
exactly. Rules match the destination address by longest prefix, like a routing table; a
destination no rule matches is sent at once. Delay is one-way, applied by the sender: a lab
that configures both ends gets an RTT of twice the delay.

Configuration text (the ``P2PCDN_LINK_EMULATION`` environment variable, or a file named by
it with ``@path``), one rule per ``;``::

    10.1.0.0/16 delay=5ms jitter=1ms loss=0.5% rate=20mbit ; 0.0.0.0/0 delay=40ms
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import random
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

log = logging.getLogger(__name__)

#: The environment variable daemons read their emulation rules from.
ENVIRONMENT_VARIABLE: Final = "P2PCDN_LINK_EMULATION"
#: Seed of the emulator's random generator (loss and jitter), for repeatable lab runs.
SEED_VARIABLE: Final = "P2PCDN_LINK_EMULATION_SEED"

#: Bound on datagrams held back at once per emulator (a queue limit, like netem's ``limit``):
#: beyond it datagrams are dropped, as a full router queue would.
MAX_QUEUED: Final = 100_000
MAX_RULES: Final = 1024

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class LinkEmulationError(ValueError):
    """A link emulation rule that cannot be parsed."""


@dataclass(frozen=True)
class LinkRule:
    """How packets to ``network`` are treated: one-way ``delay`` and uniform ``jitter`` (both
    seconds), ``loss`` probability (0–1, datagrams only: a stream's bytes are never lost), and
    ``rate`` in bits per second (0 = unlimited) serialising what is sent to that prefix."""

    network: IPNetwork
    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    rate: float = 0.0

    def __post_init__(self) -> None:
        if not (self.delay >= 0 and self.jitter >= 0 and self.rate >= 0):
            raise LinkEmulationError("delay, jitter and rate must not be negative")
        if not 0.0 <= self.loss <= 1.0:
            raise LinkEmulationError("loss must be between 0 and 100 %")


_DURATION = re.compile(r"^([0-9]*\.?[0-9]+)(us|ms|s)?$")
_RATE = re.compile(r"^([0-9]*\.?[0-9]+)(bit|kbit|mbit|gbit)?$")
_UNITS: Final = {"us": 1e-6, "ms": 1e-3, "s": 1.0, None: 1e-3}
_RATE_UNITS: Final = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, None: 1.0}


def _duration(text: str) -> float:
    m = _DURATION.match(text)
    if m is None:
        raise LinkEmulationError(f"{text!r} is not a duration (e.g. 5ms, 0.2s, 300us)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_rules(text: str) -> list[LinkRule]:
    """Parse rules (module docstring): ``PREFIX key=value …`` separated by ``;`` or lines."""
    rules: list[LinkRule] = []
    for part in re.split(r"[;\n]", text):
        words = part.split()
        if not words or words[0].startswith("#"):
            continue
        try:
            network = ipaddress.ip_network(words[0], strict=False)
        except ValueError:
            raise LinkEmulationError(f"{words[0]!r} is not an address prefix") from None
        params: dict[str, float] = {}
        for word in words[1:]:
            key, sep, value = word.partition("=")
            if not sep:
                raise LinkEmulationError(f"{word!r}: expected key=value")
            if key in ("delay", "jitter"):
                params[key] = _duration(value)
            elif key == "loss":
                number = value.removesuffix("%")
                try:
                    params["loss"] = float(number) / (100.0 if value.endswith("%") else 1.0)
                except ValueError:
                    raise LinkEmulationError(f"{value!r} is not a loss rate") from None
            elif key == "rate":
                m = _RATE.match(value)
                if m is None:
                    raise LinkEmulationError(f"{value!r} is not a rate (e.g. 20mbit)")
                params["rate"] = float(m.group(1)) * _RATE_UNITS[m.group(2)]
            else:
                raise LinkEmulationError(f"unknown link parameter {key!r}")
        rules.append(LinkRule(network, **params))
        if len(rules) > MAX_RULES:
            raise LinkEmulationError(f"more than {MAX_RULES} rules")
    return rules


@dataclass
class _LinkState:
    rule: LinkRule
    #: When the emulated link finishes sending what it was given (rate), per direction.
    busy_until: float = 0.0


@dataclass
class LinkEmulator:
    """The sans-IO core: rules, per-rule link state and the random generator."""

    rules: list[LinkRule]
    rng: random.Random = field(default_factory=random.Random)
    queued: int = 0
    dropped: int = 0
    delivered: int = 0

    def __post_init__(self) -> None:
        # Longest prefix first: the first match is the most specific rule.
        self.rules = sorted(self.rules, key=lambda r: r.network.prefixlen, reverse=True)
        self._links = [_LinkState(rule) for rule in self.rules]
        self._match: dict[str, _LinkState | None] = {}

    def link_for(self, host: str) -> _LinkState | None:
        """The link state whose rule matches ``host`` (an IP address string), or None."""
        try:
            return self._match[host]
        except KeyError:
            pass
        found: _LinkState | None = None
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            address = None
        if address is not None:
            for link in self._links:
                if address.version == link.rule.network.version and address in link.rule.network:
                    found = link
                    break
        if len(self._match) < 65536:
            self._match[host] = found
        return found

    def schedule(self, host: str, size: int, now: float, *, reliable: bool = False) -> float | None:
        """When ``size`` bytes sent now to ``host`` arrive: ``now`` for an unemulated
        destination, a later time, or None when the datagram is lost (never for ``reliable``
        stream bytes, which TCP would retransmit: they are only delayed)."""
        link = self.link_for(host)
        if link is None:
            return now
        rule = link.rule
        if not reliable and (
            (rule.loss > 0.0 and self.rng.random() < rule.loss) or self.queued >= MAX_QUEUED
        ):
            self.dropped += 1
            return None
        start = now
        if rule.rate > 0.0:
            # tbf-like serialisation: the link sends one packet after the other.
            start = max(now, link.busy_until)
            link.busy_until = start + size * 8.0 / rule.rate
            start = link.busy_until
        at = start + rule.delay
        if rule.jitter > 0.0:
            at += self.rng.uniform(-rule.jitter, rule.jitter)
            at = max(at, now)
        return at


def from_environment(environ: dict[str, str] | None = None) -> LinkEmulator | None:
    """The emulator configured by ``P2PCDN_LINK_EMULATION`` (rules, or ``@file``), or None."""
    env = os.environ if environ is None else environ
    text = env.get(ENVIRONMENT_VARIABLE, "").strip()
    if not text:
        return None
    if text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise LinkEmulationError(f"{ENVIRONMENT_VARIABLE}: {exc}") from None
    rules = parse_rules(text)
    if not rules:
        return None
    seed = env.get(SEED_VARIABLE)
    return LinkEmulator(rules, random.Random(seed))


_configured: LinkEmulator | None = None
_loaded = False


def configure(rules: Iterable[LinkRule] | None, seed: int | str | None = None) -> None:
    """Set (or with None clear) the emulator every transport created afterwards uses; the
    in-process form of the environment variable, for tests and benchmarks."""
    global _configured, _loaded
    _loaded = True
    _configured = None if rules is None else LinkEmulator(list(rules), random.Random(seed))


def current() -> LinkEmulator | None:
    """The process's emulator: :func:`configure`'s, else the environment's (read once)."""
    global _configured, _loaded
    if not _loaded:
        _loaded = True
        _configured = from_environment()
        if _configured is not None:
            log.info(
                "link emulation: %d rules from %s", len(_configured.rules), ENVIRONMENT_VARIABLE
            )
    return _configured


class EmulatedDatagramTransport:
    """Wraps an ``asyncio.DatagramTransport``: ``sendto`` goes through the emulator; every
    other attribute is the wrapped transport's."""

    def __init__(self, transport: Any, emulator: LinkEmulator) -> None:
        self._transport = transport
        self._emulator = emulator
        self._loop = asyncio.get_running_loop()

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        host = addr[0] if addr is not None else self._peer_host()
        emulator = self._emulator
        now = self._loop.time()
        at = emulator.schedule(str(host), len(data), now) if host is not None else now
        if at is None:
            return
        if at <= now:
            self._transport.sendto(data, addr)
            return
        emulator.queued += 1
        self._loop.call_at(at, self._deliver, bytes(data), addr)

    def _peer_host(self) -> str | None:
        peer = self._transport.get_extra_info("peername")
        return str(peer[0]) if peer else None

    def _deliver(self, data: bytes, addr: Any) -> None:
        self._emulator.queued -= 1
        self._emulator.delivered += 1
        if not self._transport.is_closing():
            self._transport.sendto(data, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class EmulatedStreamTransport:
    """Wraps a stream transport: ``write`` is delayed, never reordered nor lost (a FIFO
    drained by one timer: asyncio does not order timers that fall due at the same time)."""

    def __init__(self, transport: Any, emulator: LinkEmulator) -> None:
        self._transport = transport
        self._emulator = emulator
        self._loop = asyncio.get_running_loop()
        self._last = 0.0
        self._pending: deque[tuple[float, bytes]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._close_pending = False
        peer = transport.get_extra_info("peername")
        self._host = str(peer[0]) if peer else ""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        now = self._loop.time()
        at = self._emulator.schedule(self._host, len(data), now, reliable=True)
        assert at is not None  # reliable bytes are never lost
        at = max(at, self._last)  # a byte stream keeps its order
        self._last = at
        if at <= now and not self._pending:
            self._transport.write(data)
            return
        self._emulator.queued += 1
        self._pending.append((at, bytes(data)))
        if self._timer is None:
            self._timer = self._loop.call_at(self._pending[0][0], self._drain)

    def _drain(self) -> None:
        self._timer = None
        now = self._loop.time()
        while self._pending and self._pending[0][0] <= now:
            _, data = self._pending.popleft()
            self._emulator.queued -= 1
            self._emulator.delivered += 1
            if not self._transport.is_closing():
                self._transport.write(data)
        if self._pending:
            self._timer = self._loop.call_at(self._pending[0][0], self._drain)
        elif self._close_pending:
            self._transport.close()

    def close(self) -> None:
        """Close after the delayed bytes are written, as a kernel flushes on close."""
        if self._pending:
            self._close_pending = True
        else:
            self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def wrap_datagram(transport: Any) -> Any:
    """``transport`` itself when no emulation is configured (no cost), else a wrapper."""
    emulator = current()
    return transport if emulator is None else EmulatedDatagramTransport(transport, emulator)


def wrap_stream(transport: Any) -> Any:
    """Like :func:`wrap_datagram` for a stream transport."""
    emulator = current()
    return transport if emulator is None else EmulatedStreamTransport(transport, emulator)
