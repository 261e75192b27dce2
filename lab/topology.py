"""Lab topologies: hosts, bridges and links read from TOML, validated with clear errors.

A topology is a tree of **bridges** (Ethernet segments) joined by **links**, with every
**host** attached to one bridge. Each host becomes a network namespace, each attachment a veth
pair into its bridge, and the whole tree one IPv4 subnet (``10.X.0.0/16``), so no routing is
needed. Delay, jitter, loss and rate are set per attachment and per link:

* the **attachment** of a host (its ``delay``, ``jitter``, ``loss``, ``rate``) applies to every
  packet entering or leaving that host, like a netem/tbf qdisc on both ends of its veth pair;
* a **link** between two bridges applies to every packet crossing it.

The one-way delay from host A to host B is therefore A's attachment delay + the delays of the
links on the bridge path + B's attachment delay (:meth:`Topology.path`). Example::

    name = "two-areas"

    [[bridge]]
    name = "core"
    [[bridge]]
    name = "area-a"

    [[link]]
    a = "core"
    b = "area-a"
    delay = "40ms"
    rate = "100mbit"

    [[host]]
    name = "core"
    bridge = "core"
    roles = ["tracker", "portal", "source", "storage"]

    [[host]]
    name = "viewer-a1"
    bridge = "area-a"
    area = "a"
    roles = ["csc"]
    delay = "5ms"
    rate = "20mbit"

Units: durations ``us``/``ms``/``s`` (a plain number is milliseconds), rates
``bit``/``kbit``/``mbit``/``gbit`` (a plain number is bit/s), loss ``0.5%`` or ``0.005``.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

#: Roles a host may carry; the scenario decides which daemons each role starts.
ROLES: Final = frozenset({"tracker", "portal", "source", "storage", "cacher", "csc"})
#: Host and bridge names: short, lower case, usable in namespace names and file names.
NAME_RE: Final = re.compile(r"^[a-z][a-z0-9-]{0,19}$")
MAX_HOSTS: Final = 200
MAX_BRIDGES: Final = 50
#: The lab's address block: private (RFC 1918), one /16 per run.
DEFAULT_SUBNET: Final = "10.231.0.0/16"

_DURATION = re.compile(r"^([0-9]*\.?[0-9]+)\s*(us|ms|s)?$")
_RATE = re.compile(r"^([0-9]*\.?[0-9]+)\s*(bit|kbit|mbit|gbit)?$")
_DURATION_UNITS: Final = {"us": 1e-6, "ms": 1e-3, "s": 1.0, None: 1e-3}
_RATE_UNITS: Final = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, None: 1.0}


class TopologyError(ValueError):
    """A topology that cannot be used; the message names the file's offending entry."""


@dataclass(frozen=True)
class LinkParams:
    """Impairment of one attachment or link: one-way ``delay`` and ± ``jitter`` (seconds),
    ``loss`` probability (0–1) and ``rate`` (bit/s, 0 = unlimited)."""

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    rate: float = 0.0

    def __add__(self, other: LinkParams) -> LinkParams:
        """In series: delays and jitters add, losses compound, the slowest rate wins."""
        rates = [r for r in (self.rate, other.rate) if r > 0]
        return LinkParams(
            delay=self.delay + other.delay,
            jitter=self.jitter + other.jitter,
            loss=1.0 - (1.0 - self.loss) * (1.0 - other.loss),
            rate=min(rates) if rates else 0.0,
        )

    @property
    def impaired(self) -> bool:
        """Whether delay, jitter or loss is set (what netem or the emulator must do)."""
        return self.delay > 0 or self.jitter > 0 or self.loss > 0


@dataclass(frozen=True)
class Bridge:
    name: str
    index: int


@dataclass(frozen=True)
class Link:
    """A link between two bridges."""

    a: str
    b: str
    params: LinkParams
    index: int


@dataclass(frozen=True)
class Host:
    name: str
    bridge: str
    roles: tuple[str, ...]
    area: str
    params: LinkParams
    index: int
    address: ipaddress.IPv4Address


@dataclass
class Topology:
    """A validated topology; build one with :func:`load` or :func:`parse`."""

    name: str
    subnet: ipaddress.IPv4Network
    bridges: dict[str, Bridge]
    links: list[Link]
    hosts: dict[str, Host]
    description: str = ""
    #: Free-form settings for scenarios (the file's ``[scenario]`` table).
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def prefixlen(self) -> int:
        return self.subnet.prefixlen

    def with_role(self, role: str) -> list[Host]:
        """Hosts carrying ``role``, in file order."""
        return [h for h in self.hosts.values() if role in h.roles]

    def areas(self) -> list[str]:
        """Distinct areas, in file order."""
        return list(dict.fromkeys(h.area for h in self.hosts.values()))

    def bridge_path(self, a: str, b: str) -> list[Link]:
        """The links between bridges ``a`` and ``b`` (a tree: the path is unique)."""
        if a == b:
            return []
        previous: dict[str, tuple[str, Link]] = {}
        queue = deque([a])
        seen = {a}
        while queue:  # bounded: each bridge is queued once
            here = queue.popleft()
            for link in self.links:
                if here not in (link.a, link.b):
                    continue
                there = link.b if here == link.a else link.a
                if there in seen:
                    continue
                seen.add(there)
                previous[there] = (here, link)
                queue.append(there)
        if b not in seen:
            raise TopologyError(f"bridge {b!r} is not reachable from {a!r}")
        path: list[Link] = []
        node = b
        while node != a:
            node, link = previous[node]
            path.append(link)
        path.reverse()
        return path

    def path(self, src: str, dst: str) -> LinkParams:
        """End-to-end impairment from host ``src`` to host ``dst`` (module docstring)."""
        a, b = self.hosts[src], self.hosts[dst]
        total = a.params
        for link in self.bridge_path(a.bridge, b.bridge):
            total = total + link.params
        return total + b.params


def parse_duration(value: object, what: str) -> float:
    """Seconds from ``"5ms"``, ``"0.2s"``, ``"300us"`` or a number of milliseconds."""
    if isinstance(value, bool):
        raise TopologyError(f"{what}: {value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value) * 1e-3
    else:
        m = _DURATION.match(str(value).strip())
        if m is None:
            raise TopologyError(f"{what}: {value!r} is not a duration (e.g. 5ms, 0.2s)")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if not 0.0 <= seconds <= 10.0:
        raise TopologyError(f"{what}: {value!r} is out of range 0-10 s")
    return seconds


def parse_rate(value: object, what: str) -> float:
    """Bits per second from ``"20mbit"``, ``"512kbit"`` or a number of bit/s."""
    if isinstance(value, bool):
        raise TopologyError(f"{what}: {value!r} is not a rate")
    if isinstance(value, int | float):
        rate = float(value)
    else:
        m = _RATE.match(str(value).strip().lower())
        if m is None:
            raise TopologyError(f"{what}: {value!r} is not a rate (e.g. 20mbit)")
        rate = float(m.group(1)) * _RATE_UNITS[m.group(2)]
    if rate != 0 and not 8e3 <= rate <= 1e11:
        raise TopologyError(f"{what}: rate {value!r} is out of range 8kbit-100gbit (or 0)")
    return rate


def parse_loss(value: object, what: str) -> float:
    """A probability from ``"0.5%"`` or ``0.005``."""
    text = str(value).strip()
    try:
        loss = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        raise TopologyError(f"{what}: {value!r} is not a loss rate (e.g. 0.5%)") from None
    if not 0.0 <= loss < 1.0:
        raise TopologyError(f"{what}: loss {value!r} is out of range 0-100 %")
    return loss


_PARAM_KEYS: Final = frozenset({"delay", "jitter", "loss", "rate"})


def _params(table: Mapping[str, Any], what: str) -> LinkParams:
    params = LinkParams(
        delay=parse_duration(table.get("delay", 0), f"{what} delay"),
        jitter=parse_duration(table.get("jitter", 0), f"{what} jitter"),
        loss=parse_loss(table.get("loss", 0), f"{what} loss"),
        rate=parse_rate(table.get("rate", 0), f"{what} rate"),
    )
    if params.jitter > params.delay:
        raise TopologyError(f"{what}: jitter must not exceed the delay")
    return params


def _check_keys(table: Mapping[str, Any], allowed: frozenset[str], what: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise TopologyError(f"{what}: unknown key(s) {', '.join(map(repr, unknown))}")


def _name(table: Mapping[str, Any], what: str) -> str:
    name = table.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise TopologyError(
            f"{what}: name {name!r} must be 1-20 of a-z, 0-9, '-', starting with a letter"
        )
    return name


def _tables(data: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise TopologyError(f"'{key}' must be an array of tables ([[{key}]])")
    return value


def parse(data: Mapping[str, Any], source: str = "<topology>") -> Topology:
    """Validate a decoded TOML document; :class:`TopologyError` names what is wrong."""
    try:
        return _parse(data)
    except TopologyError as exc:
        raise TopologyError(f"{source}: {exc}") from None


def _parse(data: Mapping[str, Any]) -> Topology:
    _check_keys(
        data,
        frozenset({"name", "description", "subnet", "bridge", "link", "host", "scenario"}),
        "topology",
    )
    name = _name(data, "topology")
    try:
        subnet = ipaddress.IPv4Network(str(data.get("subnet", DEFAULT_SUBNET)))
    except ValueError as exc:
        raise TopologyError(f"subnet: {exc}") from None
    if not subnet.subnet_of(ipaddress.IPv4Network("10.0.0.0/8")) or subnet.prefixlen > 20:
        raise TopologyError(f"subnet {subnet} must be inside 10.0.0.0/8 and at least a /20")

    bridges: dict[str, Bridge] = {}
    for i, table in enumerate(_tables(data, "bridge")):
        what = f"bridge #{i + 1}"
        _check_keys(table, frozenset({"name"}), what)
        bname = _name(table, what)
        if bname in bridges:
            raise TopologyError(f"{what}: duplicate bridge name {bname!r}")
        bridges[bname] = Bridge(bname, len(bridges))
    if not bridges:
        raise TopologyError("no bridge: add at least one [[bridge]]")
    if len(bridges) > MAX_BRIDGES:
        raise TopologyError(f"more than {MAX_BRIDGES} bridges")

    links: list[Link] = []
    # Union-find over bridges: a link that joins two already-connected bridges makes a loop.
    parent = {b: b for b in bridges}

    def root(x: str) -> str:
        while parent[x] != x:  # bounded by the number of bridges
            x = parent[x]
        return x

    for i, table in enumerate(_tables(data, "link")):
        what = f"link #{i + 1}"
        _check_keys(table, frozenset({"a", "b"}) | _PARAM_KEYS, what)
        a, b = table.get("a"), table.get("b")
        for end in (a, b):
            if end not in bridges:
                raise TopologyError(f"{what}: {end!r} is not a bridge (links join bridges)")
        assert isinstance(a, str) and isinstance(b, str)
        if a == b:
            raise TopologyError(f"{what}: joins bridge {a!r} to itself")
        if root(a) == root(b):
            raise TopologyError(f"{what}: {a!r}-{b!r} makes a loop (bridges must form a tree)")
        parent[root(a)] = root(b)
        links.append(Link(a, b, _params(table, what), len(links)))
    roots = {root(b) for b in bridges}
    if len(roots) > 1:
        raise TopologyError(
            "bridges are not all connected: add [[link]] entries joining "
            + " and ".join(sorted({min(b for b in bridges if root(b) == r) for r in roots}))
        )

    hosts: dict[str, Host] = {}
    per_bridge: dict[str, int] = {b: 0 for b in bridges}
    host_tables = _tables(data, "host")
    if not host_tables:
        raise TopologyError("no host: add at least one [[host]]")
    if len(host_tables) > MAX_HOSTS:
        raise TopologyError(f"more than {MAX_HOSTS} hosts")
    for i, table in enumerate(host_tables):
        what = f"host #{i + 1}"
        _check_keys(table, frozenset({"name", "bridge", "roles", "area"}) | _PARAM_KEYS, what)
        hname = _name(table, what)
        what = f"host {hname!r}"
        if hname in hosts:
            raise TopologyError(f"{what}: duplicate host name")
        bridge = table.get("bridge")
        if bridge not in bridges:
            raise TopologyError(f"{what}: bridge {bridge!r} is not defined in [[bridge]]")
        assert isinstance(bridge, str)
        roles = table.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise TopologyError(f"{what}: roles must be a list of strings")
        unknown = sorted(set(roles) - ROLES)
        if unknown:
            raise TopologyError(
                f"{what}: unknown role(s) {', '.join(unknown)} (known: {', '.join(sorted(ROLES))})"
            )
        area = table.get("area", bridge)
        if not isinstance(area, str) or not NAME_RE.match(area):
            raise TopologyError(f"{what}: area {area!r} is not a valid name")
        slot = per_bridge[bridge]
        per_bridge[bridge] += 1
        if slot >= 240:
            raise TopologyError(f"{what}: more than 240 hosts on bridge {bridge!r}")
        address = _address(subnet, bridges[bridge].index, slot)
        hosts[hname] = Host(
            hname, bridge, tuple(roles), area, _params(table, what), len(hosts), address
        )

    settings = data.get("scenario", {})
    if not isinstance(settings, dict):
        raise TopologyError("[scenario] must be a table")
    description = data.get("description", "")
    return Topology(
        name, subnet, bridges, links, hosts, description=str(description), settings=settings
    )


def _address(subnet: ipaddress.IPv4Network, bridge: int, slot: int) -> ipaddress.IPv4Address:
    """Host ``slot`` on bridge ``bridge``: ``10.X.(base + bridge).(10 + slot)`` — each bridge's
    hosts in their own /24 for readability, all inside the run's one L2 subnet."""
    offset = (bridge + 1) * 256 + 10 + slot
    if offset >= subnet.num_addresses - 1:
        raise TopologyError(f"subnet {subnet} is too small for this topology")
    return subnet.network_address + offset


def load(path: Path) -> Topology:
    """Read and validate a topology file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError(f"{path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"{path}: not valid TOML: {exc}") from None
    return parse(data, str(path))


def shipped() -> dict[str, Path]:
    """The topologies shipped in ``lab/topologies/``, by file stem."""
    directory = Path(__file__).resolve().parent / "topologies"
    return {p.stem: p for p in sorted(directory.glob("*.toml"))}
