"""Network namespaces for the lab: hosts, bridges, veth pairs, ``tc``, link emulation rules.

Everything a run creates lives in network namespaces named with the run's prefix
(``p2cdn`` + 4 hex digits, :func:`new_prefix`): one namespace per host, plus one *switch*
namespace holding the bridges and the links between them. No interface is ever created in the
caller's namespace (veth pairs are created directly inside the namespaces), so deleting the
run's namespaces — after killing the processes inside them — removes every link too.

* :func:`probe` tells what the machine can do (root, ``ip``, ``tc``, ``tbf``, ``netem``);
  :func:`require` turns a missing piece into one clear line (:class:`LabUnavailable`).
* :class:`Registry` records what a run creates *before* creating it, in the run directory and
  in :data:`STATE_DIR`, so :meth:`Network.teardown` removes exactly that and
  :func:`cleanup` finds what a killed run left.
* :class:`Network` builds a :class:`lab.topology.Topology`: addresses from its 10.x subnet,
  rate with ``tc tbf``, delay/jitter/loss with ``tc netem`` when the kernel has it — else the
  daemons get :func:`emulation_rules` in ``P2PCDN_LINK_EMULATION`` (ppsp/linkemu.py).

Every subprocess runs with a timeout (:data:`COMMAND_TIMEOUT`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from lab.topology import Host, LinkParams, Topology

log = logging.getLogger(__name__)

#: Every namespace and interface of a lab run starts with this (unique to p2pcdn).
NAME_PREFIX: Final = "p2cdn"
#: A run prefix: NAME_PREFIX and 4 hex digits. Interface names must fit 15 characters.
PREFIX_RE: Final = re.compile(rf"^{NAME_PREFIX}[0-9a-f]{{4}}")
#: Processes a run starts carry ``P2PCDN_LAB_RUN=<prefix>`` in their environment.
RUN_VARIABLE: Final = "P2PCDN_LAB_RUN"
#: Where runs register what they create, for ``p2pcdn lab cleanup``.
STATE_DIR: Final = Path(os.environ.get("P2PCDN_LAB_STATE_DIR", "/run/p2pcdn-lab"))
COMMAND_TIMEOUT: Final = 15.0
#: How long a process gets between SIGTERM and SIGKILL at teardown.
STOP_GRACE: Final = 5.0


class LabUnavailable(RuntimeError):
    """The machine cannot run the lab (not root, ``ip`` or ``tc`` missing)."""


class CommandError(RuntimeError):
    """A command of the lab failed or timed out; the message quotes it and its stderr."""


def run(
    argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (no shell) with a timeout; :class:`CommandError` when it fails."""
    try:
        result = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CommandError(f"timed out after {timeout:g} s: {' '.join(argv)}") from None
    except OSError as exc:
        raise CommandError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise CommandError(
            f"{' '.join(argv)}: exit {result.returncode}: {detail[-1] if detail else ''}"
        )
    return result


def new_prefix() -> str:
    """A fresh run prefix such as ``p2cdn3fa2`` not used by any namespace on the machine."""
    taken = set(list_namespaces()) if shutil.which("ip") else set()
    for _ in range(100):
        prefix = f"{NAME_PREFIX}{secrets.token_hex(2)}"
        if not any(name.startswith(prefix) for name in taken):
            return prefix
    raise LabUnavailable("cannot find an unused run prefix (too many leftover namespaces?)")


# -- what the machine can do --------------------------------------------------------------


@dataclass
class Capabilities:
    """What :func:`probe` found."""

    root: bool
    ip: str | None
    tc: str | None
    tbf: bool = False
    netem: bool = False
    detail: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """What prevents a lab run, one line each (empty when it can run)."""
        out = []
        if not self.root:
            out.append("must run as root (network namespaces need CAP_NET_ADMIN)")
        if self.ip is None:
            out.append("'ip' (iproute2) is not installed")
        if self.tc is None:
            out.append("'tc' (iproute2) is not installed")
        return out

    def lines(self) -> list[str]:
        """The report of ``p2pcdn lab check``."""

        def yes(flag: bool) -> str:
            return "yes" if flag else "no"

        return [
            f"root:   {yes(self.root)}",
            f"ip:     {self.ip or 'missing'}",
            f"tc:     {self.tc or 'missing'}",
            f"tbf:    {yes(self.tbf)} (link rate)",
            f"netem:  {yes(self.netem)} "
            + (
                "(delay/jitter/loss in the kernel)"
                if self.netem
                else "(delay/jitter/loss by p2pcdn's userspace emulator, P2PCDN_LINK_EMULATION)"
            ),
            *self.detail,
        ]


def probe() -> Capabilities:
    """Check root, ``ip`` and ``tc``; with all three, try ``tbf`` and ``netem`` on a veth pair
    in a scratch namespace (removed before returning)."""
    caps = Capabilities(root=os.geteuid() == 0, ip=shutil.which("ip"), tc=shutil.which("tc"))
    if caps.problems():
        return caps
    scratch = f"{new_prefix()}-probe"
    try:
        run(["ip", "netns", "add", scratch])
        run(["ip", "-n", scratch, "link", "add", "p0", "type", "veth", "peer", "name", "p1"])
        tbf = ["tc", "-n", scratch, "qdisc", "add", "dev", "p0", "root", "tbf"]
        tbf += ["rate", "1mbit", "burst", "16k", "latency", "50ms"]
        caps.tbf = run(tbf, check=False).returncode == 0
        netem = ["tc", "-n", scratch, "qdisc", "add", "dev", "p1", "root", "netem", "delay", "1ms"]
        caps.netem = run(netem, check=False).returncode == 0
    except CommandError as exc:
        caps.detail.append(f"probe failed: {exc}")
    finally:
        with contextlib.suppress(CommandError):
            run(["ip", "netns", "del", scratch], check=False)
    return caps


def require(caps: Capabilities) -> None:
    """Raise :class:`LabUnavailable` with one line when the lab cannot run here."""
    problems = caps.problems()
    if problems:
        raise LabUnavailable("p2pcdn lab: " + "; ".join(problems))


# -- the registry of what a run created -----------------------------------------------------


class Registry:
    """What one run created, written to disk before each creation (JSON)."""

    def __init__(self, prefix: str, path: Path | None = None, *, owner: int | None = None) -> None:
        self.prefix = prefix
        #: The runner's pid: ``lab cleanup`` leaves the run alone while it lives.
        self.owner = os.getpid() if owner is None else owner
        self.namespaces: list[str] = []
        self.pids: list[int] = []
        self.paths = [STATE_DIR / f"{prefix}.json"]
        if path is not None:
            self.paths.append(path)

    def add_namespace(self, name: str) -> None:
        if not name.startswith(self.prefix):
            raise ValueError(f"namespace {name!r} lacks the run prefix {self.prefix!r}")
        self.namespaces.append(name)
        self.save()

    def add_pid(self, pid: int) -> None:
        self.pids.append(pid)
        self.save()

    def save(self) -> None:
        record = {
            "prefix": self.prefix,
            "owner": self.owner,
            "namespaces": self.namespaces,
            "pids": self.pids,
        }
        text = json.dumps(record, indent=1)
        for path in self.paths:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(text + "\n")
                tmp.replace(path)
            except OSError as exc:  # the namespaces themselves stay findable by prefix
                log.warning("cannot write the lab registry %s: %s", path, exc)

    def remove(self) -> None:
        """Forget the state file once everything is torn down (the run's copy stays)."""
        with contextlib.suppress(OSError):
            self.paths[0].unlink()


# -- processes -------------------------------------------------------------------------------


def list_namespaces() -> list[str]:
    """Names of the machine's network namespaces (``ip netns list``)."""
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def namespace_pids(namespace: str) -> list[int]:
    """Processes inside ``namespace`` (``ip netns pids``)."""
    out = run(["ip", "netns", "pids", namespace], check=False).stdout
    return [int(word) for word in out.split() if word.isdigit()]


def marked_pids(prefix: str) -> list[int]:
    """Processes whose environment carries ``P2PCDN_LAB_RUN=<a name starting with prefix>``:
    the daemons of a run, even after their namespace's name is gone."""
    marker = f"{RUN_VARIABLE}={prefix}".encode()
    found: list[int] = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(item.startswith(marker) for item in environ.split(b"\0")):
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes (its parent reaps it)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_pids(pids: Sequence[int], grace: float = STOP_GRACE) -> list[int]:
    """SIGTERM ``pids``, wait up to ``grace`` seconds, SIGKILL the rest; returns the pids
    that were alive."""
    alive = [p for p in pids if p != os.getpid() and _alive(p)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in alive):
        time.sleep(0.05)
    for pid in alive:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(_alive(p) for p in alive):
        time.sleep(0.05)
    return alive


def delete_namespace(name: str) -> None:
    """Kill what runs inside ``name`` and delete it (its interfaces go with it)."""
    kill_pids(namespace_pids(name))
    run(["ip", "netns", "del", name], check=False)


def exec_argv(namespace: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside ``namespace``."""
    return ["ip", "netns", "exec", namespace, *argv]


# -- link emulation rules ----------------------------------------------------------------------


def _micros(seconds: float) -> str:
    return f"{round(seconds * 1e6)}us"


def emulation_rules(topology: Topology, host: str, *, with_rate: bool = False) -> list[str]:
    """The ``P2PCDN_LINK_EMULATION`` rules for ``host``: one ``/32`` per other host with the
    one-way delay, jitter and loss of the path (:meth:`Topology.path`). Rate is left to
    ``tc tbf``, which applies it in the kernel, unless ``with_rate`` (no tbf)."""
    rules = []
    for other in topology.hosts.values():
        if other.name == host:
            continue
        path = topology.path(host, other.name)
        if not (path.impaired or (with_rate and path.rate)):
            continue
        words = [f"{other.address}/32"]
        if path.delay:
            words.append(f"delay={_micros(path.delay)}")
        if path.jitter:
            words.append(f"jitter={_micros(path.jitter)}")
        if path.loss:
            words.append(f"loss={path.loss * 100:.6g}%")
        if with_rate and path.rate:
            words.append(f"rate={int(path.rate)}bit")
        rules.append(" ".join(words))
    return rules


# -- the network --------------------------------------------------------------------------------


class Network:
    """The namespaces, bridges and veth pairs of one run of ``topology``."""

    def __init__(
        self, topology: Topology, registry: Registry, *, netem: bool = False, tbf: bool = True
    ) -> None:
        self.topology = topology
        self.registry = registry
        self.prefix = registry.prefix
        self.netem = netem
        self.tbf = tbf
        self.switch = f"{self.prefix}--switch"
        self.built = False

    def namespace(self, host: str) -> str:
        """The namespace of ``host``."""
        if host not in self.topology.hosts:
            raise KeyError(f"no host {host!r} in topology {self.topology.name!r}")
        return f"{self.prefix}-{host}"

    def interface(self, kind: str, index: int, side: str = "") -> str:
        """An interface name with the run prefix, ≤ 15 characters (IFNAMSIZ - 1)."""
        name = f"{self.prefix}{kind}{index}{side}"
        assert len(name) <= 15, name
        return name

    def address(self, host: str) -> str:
        return str(self.topology.hosts[host].address)

    def exec_argv(self, host: str, argv: Sequence[str]) -> list[str]:
        return exec_argv(self.namespace(host), argv)

    def environment(self, host: str) -> dict[str, str]:
        """Environment for processes on ``host``: the run marker, and the link emulation rules
        when netem is missing."""
        env = {RUN_VARIABLE: f"{self.prefix}-{host}"}
        if not self.netem:
            rules = emulation_rules(self.topology, host, with_rate=not self.tbf)
            if rules:
                env["P2PCDN_LINK_EMULATION"] = "; ".join(rules)
        return env

    def build(self) -> None:
        """Create everything; on failure the caller runs :meth:`teardown` (what was created
        is in the registry)."""
        topo = self.topology
        self._add_namespace(self.switch)
        run(["ip", "-n", self.switch, "link", "set", "lo", "up"])
        for bridge in topo.bridges.values():
            name = self.interface("b", bridge.index)
            # Forward at once: no STP listening/learning delay on a loop-free tree.
            sw = ["ip", "-n", self.switch, "link"]
            run([*sw, "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0"])
            run(["ip", "-n", self.switch, "link", "set", name, "up"])
        for link in topo.links:
            ends = [self.interface("l", link.index, s) for s in ("a", "b")]
            self._veth(ends[0], self.switch, ends[1], self.switch)
            for end, bridge_name in zip(ends, (link.a, link.b), strict=True):
                master = self.interface("b", topo.bridges[bridge_name].index)
                run(["ip", "-n", self.switch, "link", "set", end, "master", master])
                run(["ip", "-n", self.switch, "link", "set", end, "up"])
                self._qdisc(self.switch, end, link.params)
        for host in topo.hosts.values():
            self._add_host(host)
        self.built = True

    def _add_namespace(self, name: str) -> None:
        if name in list_namespaces():  # never adopt (and later delete) a namespace not ours
            raise CommandError(f"namespace {name} exists already")
        self.registry.add_namespace(name)
        run(["ip", "netns", "add", name])

    def _veth(self, a: str, a_ns: str, b: str, b_ns: str) -> None:
        run(
            [
                "ip",
                "link",
                "add",
                a,
                "netns",
                a_ns,
                "type",
                "veth",
                "peer",
                "name",
                b,
                "netns",
                b_ns,
            ]
        )

    def _add_host(self, host: Host) -> None:
        ns = self.namespace(host.name)
        self._add_namespace(ns)
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        inside = self.interface("h", host.index)
        outside = self.interface("s", host.index)
        self._veth(inside, ns, outside, self.switch)
        master = self.interface("b", self.topology.bridges[host.bridge].index)
        run(["ip", "-n", self.switch, "link", "set", outside, "master", master])
        run(["ip", "-n", self.switch, "link", "set", outside, "up"])
        cidr = f"{host.address}/{self.topology.prefixlen}"
        run(["ip", "-n", ns, "addr", "add", cidr, "dev", inside])
        run(["ip", "-n", ns, "link", "set", inside, "up"])
        self._qdisc(ns, inside, host.params)
        self._qdisc(self.switch, outside, host.params)

    def _qdisc(self, ns: str, dev: str, params: LinkParams) -> None:
        """Rate (tbf, or netem's own rate) and, with netem, delay/jitter/loss on ``dev``'s
        egress; without netem those three are left to the emulator (:meth:`environment`)."""
        base = ["tc", "-n", ns, "qdisc", "add", "dev", dev, "root"]
        if self.netem and params.impaired:
            netem = [*base, "netem", "delay", _micros(params.delay)]
            if params.jitter:
                netem.append(_micros(params.jitter))
            if params.loss:
                netem += ["loss", f"{params.loss * 100:.6g}%"]
            if params.rate:
                netem += ["rate", f"{int(params.rate)}bit"]
            run(netem)
        elif params.rate and self.tbf:
            # Burst: 10 ms worth of the rate, at least a few full frames; queue up to 100 ms.
            burst = max(int(params.rate / 8 / 100), 6 * 1514)
            run(
                [
                    *base,
                    "tbf",
                    "rate",
                    f"{int(params.rate)}bit",
                    "burst",
                    str(burst),
                    "latency",
                    "100ms",
                ]
            )

    def qdiscs(self, host: str) -> str:
        """``tc qdisc show`` of ``host``'s interface (for checks and reports)."""
        ns = self.namespace(host)
        dev = self.interface("h", self.topology.hosts[host].index)
        return run(["tc", "-n", ns, "qdisc", "show", "dev", dev]).stdout

    def teardown(self) -> list[str]:
        """Kill the run's processes and delete its namespaces, hosts first; returns what
        could not be removed (empty when clean)."""
        # By the environment marker, not the registry's pids: a reaped daemon's pid may have
        # been reused by a process that is not ours.
        kill_pids(marked_pids(self.prefix))
        for name in reversed(self.registry.namespaces):
            delete_namespace(name)
        leftovers = [n for n in list_namespaces() if n.startswith(self.prefix)]
        for name in leftovers:  # e.g. one whose creation was cut short before registering
            delete_namespace(name)
        problems = [f"namespace {n}" for n in list_namespaces() if n.startswith(self.prefix)]
        problems += [f"process {p}" for p in marked_pids(self.prefix) if _alive(p)]
        problems += [f"link {n}" for n in root_links(self.prefix)]
        if not problems:
            self.registry.remove()
        return problems


def root_links(prefix: str = NAME_PREFIX) -> list[str]:
    """Interfaces in the caller's namespace whose name starts with ``prefix``."""
    result = run(["ip", "-o", "link", "show"], check=False).stdout
    names = []
    for line in result.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return [n for n in names if n.startswith(prefix)]


@dataclass
class CleanupReport:
    processes: list[int] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    #: Prefixes of runs still in progress, left alone.
    skipped: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        skipped = [f"left run {p} alone: it is still running" for p in self.skipped]
        if not (self.processes or self.namespaces or self.links):
            return [*skipped, "nothing to clean up"]
        return [
            *skipped,
            *(f"killed process {p}" for p in self.processes),
            *(f"deleted namespace {n}" for n in self.namespaces),
            *(f"deleted link {n}" for n in self.links),
        ]


def active_runs() -> list[str]:
    """Prefixes of runs whose runner is still alive (their state file names a live owner)."""
    active = []
    with contextlib.suppress(OSError):
        for state in STATE_DIR.glob(f"{NAME_PREFIX}*.json"):
            try:
                record = json.loads(state.read_text())
                owner = int(record["owner"])
                cmdline = Path(f"/proc/{owner}/cmdline").read_bytes()
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if owner != os.getpid() and _alive(owner) and b"python" in cmdline:
                active.append(str(record["prefix"]))
    return active


def cleanup(*, force: bool = False, only: str = NAME_PREFIX) -> CleanupReport:
    """Remove whatever lab runs left behind (``p2pcdn lab cleanup``): their processes (by the
    run marker and by namespace), namespaces and stray links, matched by :data:`PREFIX_RE`.
    Runs still in progress (:func:`active_runs`) are left alone unless ``force``; ``only``
    narrows it to names starting with that (one run's prefix)."""
    report = CleanupReport()
    report.skipped = [] if force else active_runs()

    def ours(name: str) -> bool:
        return (
            PREFIX_RE.match(name) is not None
            and name.startswith(only)
            and not any(name.startswith(p) for p in report.skipped)
        )

    namespaces = [n for n in list_namespaces() if ours(n)]
    pids = {p for p in marked_pids(NAME_PREFIX) if ours(_marker(p))}
    for name in namespaces:
        pids.update(namespace_pids(name))
    report.processes = kill_pids(sorted(pids))
    for name in namespaces:
        delete_namespace(name)
        report.namespaces.append(name)
    for link in root_links():
        if ours(link):
            run(["ip", "link", "del", link], check=False)
            report.links.append(link)
    with contextlib.suppress(OSError):
        for state in STATE_DIR.glob(f"{NAME_PREFIX}*.json"):
            if ours(state.stem):
                state.unlink()
    return report


def _marker(pid: int) -> str:
    """The value of a process's ``P2PCDN_LAB_RUN`` ('' when unreadable)."""
    key = f"{RUN_VARIABLE}=".encode()
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return ""
    for item in environ.split(b"\0"):
        if item.startswith(key):
            return item[len(key) :].decode(errors="replace")
    return ""


@contextlib.contextmanager
def built(topology: Topology, registry: Registry, *, netem: bool) -> Iterator[Network]:
    """Build a network for a ``with`` block and tear it down whatever happens."""
    network = Network(topology, registry, netem=netem)
    try:
        network.build()
        yield network
    finally:
        problems = network.teardown()
        if problems:
            log.error("teardown left: %s", ", ".join(problems))
