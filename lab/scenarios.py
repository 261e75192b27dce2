"""Lab scenarios: what runs on a topology once its network is built (:mod:`lab.runner`).

A :class:`Scenario` has four steps the runner calls in order: :meth:`~Scenario.validate`
(before anything is created: does the topology have the roles it needs?),
:meth:`~Scenario.setup` (configurations, certificates, daemons started on their hosts),
:meth:`~Scenario.run` (the measured part) and :meth:`~Scenario.collect` (turn the daemons'
output into metrics, :mod:`lab.metrics`). Teardown is the runner's, always.

Shipped scenarios (:data:`SCENARIOS`):

* ``connectivity`` — a UDP echo server on every host and an echo client on every host probing
  all the others through the link emulator: the measured RTT matrix against the topology's.
  Needs no CDN daemon; the lab's self-test.
* ``fast-channel-change`` — the whole CDN (tracker, portal, storage overlay, source publishing
  VoD channels, one cacher per area, CSCs zapping) twice: cachers pushing the head chunks
  (F4) and cachers that do not; startup delays, Q1/Q2, stalls and bytes by origin.
* ``flash-crowd`` (viewers arriving on one channel within a short window), ``churn`` (10 %
  of the viewers of a live channel leaving and joining per minute), ``cacher-restart`` (a
  cacher killed and restarted mid-zap), ``node-kill`` (a tracker-overlay node and a storage
  overlay node killed mid-zap), ``area-locality`` (share of bytes served inside the viewer's
  area) — issue 9 item 2, built on ``fast-channel-change``'s daemons.

Every CDN scenario's results carry, per phase, the share of bytes served inside the viewer's
area (from the CSCs' bytes per serving peer), the storage overlay fetches' hops when the CSCs
rescued from it, and the tracker messages (each tracker's statistics, logged when it stops).

``python -m lab.scenarios echo-server|echo-client …`` are the probes of ``connectivity``;
``python -m lab.scenarios overlay-probe DAEMON.toml USER CHANNEL…`` fetches channels from the
storage overlay through a fresh RELOAD node (``node-kill``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import secrets
import socket
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

from csc.core import DEFAULT_STARTUP_BYTES
from lab import metrics
from lab.topology import Topology, TopologyError

if TYPE_CHECKING:
    from lab.runner import Daemon, LabRun

ECHO_PORT: Final = 9900


class Scenario:
    """Base class; subclasses set :attr:`name`, :attr:`roles` and override the steps."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: Roles the topology must have at least one host of.
    roles: ClassVar[frozenset[str]] = frozenset()
    #: False for a declared scenario not written yet: refused before anything is built.
    implemented: ClassVar[bool] = True

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        #: The topology's ``[scenario]`` table, then command-line overrides.
        self.options: dict[str, Any] = dict(options or {})

    def option(self, key: str, default: Any) -> Any:
        value = self.options.get(key, default)
        if type(value) is not type(default) and not (
            isinstance(default, float) and isinstance(value, int)
        ):
            raise TopologyError(f"[scenario] {key} = {value!r}: expected {type(default).__name__}")
        return value

    def validate(self, topology: Topology) -> None:
        """:class:`TopologyError` when this scenario cannot run on ``topology``."""
        if not self.implemented:
            raise TopologyError(f"scenario {self.name!r} is not written yet (issue 9 item 2)")
        missing = sorted(r for r in self.roles if not topology.with_role(r))
        if missing:
            raise TopologyError(
                f"scenario {self.name!r} needs a host with role(s) {', '.join(missing)} "
                f"in topology {topology.name!r}"
            )

    def setup(self, run: LabRun) -> None:
        """Write configurations and start the daemons."""

    def run(self, run: LabRun) -> None:
        """The measured part."""

    def collect(self, run: LabRun, outputs: Mapping[str, list[str]]) -> dict[str, Any]:
        """Metrics from the daemons' stdout lines (by daemon name)."""
        return {"scenario": self.name, "topology": run.topology.name}


# -- connectivity -------------------------------------------------------------------------------


class Connectivity(Scenario):
    name = "connectivity"
    description = "UDP echo between every pair of hosts through the link emulation"

    def setup(self, run: LabRun) -> None:
        start_echo_servers(run, list(run.topology.hosts), self.option("echo_seconds", 120.0))

    def run(self, run: LabRun) -> None:
        count = self.option("probes", 5)
        clients = []
        for host in run.topology.hosts:
            targets = [run.address(h) for h in run.topology.hosts if h != host]
            clients.append(
                run.start_command(
                    f"probe-{host}",
                    host,
                    lab_command("echo-client", "--port", str(ECHO_PORT), "--count", str(count))
                    + targets,
                    required=False,
                )
            )
        statuses = run.wait_for(clients, timeout=60.0, what="probing")
        failed = [name for name, status in statuses.items() if status != 0]
        if failed:
            raise RuntimeError(f"echo probes failed: {', '.join(failed)}")

    def collect(self, run: LabRun, outputs: Mapping[str, list[str]]) -> dict[str, Any]:
        by_address = {str(h.address): h.name for h in run.topology.hosts.values()}
        pairs = []
        for host in run.topology.hosts:
            for line in outputs.get(f"probe-{host}", []):
                record = _json_line(line)
                if record is None or "target" not in record:
                    continue
                dst = by_address[record["target"]]
                expected = run.topology.path(host, dst).delay + run.topology.path(dst, host).delay
                pairs.append(
                    {
                        "src": host,
                        "dst": dst,
                        "expected_rtt": expected,
                        "rtt_min": record["rtt_min"],
                        "rtt_median": record["rtt_median"],
                        "received": record["received"],
                        "sent": record["sent"],
                    }
                )
        return {
            "scenario": self.name,
            "topology": run.topology.name,
            "netem": run.values.get("netem"),
            "pairs": pairs,
        }


# -- fast channel change ------------------------------------------------------------------------

TRACKER_HTTP, TRACKER_UDP, TRACKER_TCP = 7845, 7846, 7847
PORTAL_PORT: Final = 8080
OVERLAY_BASE_PORT: Final = 6100
CACHER_PORT: Final = 7100
OVERLAY_NAME: Final = "storage.lab.p2pcdn"
SOURCE_USER: Final = f"source@{OVERLAY_NAME}"


class FastChannelChange(Scenario):
    name = "fast-channel-change"
    description = (
        "CSCs zap through VoD channels served by their area's cacher, once with the head "
        "chunks pushed after the handshake (F4) and once without"
    )
    roles = frozenset({"tracker", "portal", "source", "storage", "cacher", "csc"})

    #: Phases whose cachers ignore the tracker's push hints (``follow_hints = false``): the
    #: CDN without F4, cachers filling on misses only.
    PLAIN_CACHE_PHASES: ClassVar[frozenset[str]] = frozenset({"no-hints"})

    def phases(self) -> list[tuple[str, int]]:
        """(phase name, cacher push_head) in run order: F4 whole (hints, prefetch, push);
        hints and prefetch without the push; neither (a plain cache)."""
        phases = [("push", self.option("push_head", 64)), ("no-push", 0), ("no-hints", 0)]
        only = self.options.get("phase")
        return [p for p in phases if only in (None, p[0])]

    def setup(self, run: LabRun) -> None:
        self._start_tracker(run)
        self._start_portal(run)
        self._storage_overlay(run)
        self._publish(run)

    def _start_tracker(self, run: LabRun) -> None:
        """One standalone tracker on the first tracker host; its URL in ``values["tracker"]``."""
        core = run.topology.with_role("tracker")[0].name
        addr = run.address(core)
        config = run.host_dir(core) / "tracker.toml"
        config.write_text(
            "[listen]\n"
            f'http = "{addr}:{TRACKER_HTTP}"\nudp = "{addr}:{TRACKER_UDP}"\n'
            f'tcp = "{addr}:{TRACKER_TCP}"\n'
            "[timers]\n"
            # Push hints every second rather than 10 s, so that a short run sees them.
            f"hint_interval = {float(self.option('hint_interval', 1.0))}\n"
            '[logging]\nlevel = "info"\n'
        )
        tracker = run.start("tracker", core, ["tracker", "--config", str(config)])
        tracker.wait_lines(3, timeout=30.0)
        run.values["tracker"] = f"ppsp-udp://{addr}:{TRACKER_UDP}"

    def _start_portal(self, run: LabRun) -> None:
        """The portal with a generated publish token (``values["portal"]``, ``["portal_token"]``)."""
        portal_host = run.topology.with_role("portal")[0].name
        token = secrets.token_hex(16)
        token_file = run.host_dir(portal_host) / "portal.token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        portal = run.start(
            "portal",
            portal_host,
            [
                "portal",
                "--listen",
                f"{run.address(portal_host)}:{PORTAL_PORT}",
                "--token-file",
                str(token_file),
            ],
        )
        run.values["portal"] = portal.wait_lines(1, timeout=30.0)[0].strip()
        run.values["portal_token"] = token

    def _storage_overlay(self, run: LabRun) -> None:
        """Storage overlay: certificates and daemon TOMLs (reload.usages.config), bound to the
        lab addresses; its nodes on the storage hosts, then one node each for the source and
        the cachers (they start with their daemons)."""
        from reload import security
        from reload.usages.config import add_daemon, make_overlay_dir, overlay_xml

        topo = run.topology
        storage_hosts = topo.with_role("storage")
        per_host = self.option("storage_nodes_per_host", 2)
        root = run.config_dir / "overlay"
        count = per_host * len(storage_hosts)
        tomls = make_overlay_dir(
            root,
            OVERLAY_NAME,
            count,
            "storage",
            base_port=OVERLAY_BASE_PORT,
            bootstrap_count=1,
        )
        placement = [storage_hosts[i // per_host].name for i in range(count)]
        first = (run.address(placement[0]), OVERLAY_BASE_PORT)
        ca = security.load_certificate(root / "ca" / "ca.pem")
        (root / "overlay.xml").write_bytes(overlay_xml(OVERLAY_NAME, "storage", [ca], [first]))
        for i, (toml, host) in enumerate(zip(tomls, placement, strict=True)):
            _rebind(toml, run.address(host), OVERLAY_BASE_PORT + i, first)
        nodes = []
        for i, (toml, host) in enumerate(zip(tomls, placement, strict=True)):
            nodes.append(run.start(f"storage-{i}", host, ["overlay", "--config", str(toml)]))
            if i == 0:  # it creates the overlay: the others join through it
                nodes[0].wait_lines(2, timeout=60.0)
        for node in nodes[1:]:
            node.wait_lines(2, timeout=60.0)
        run.values["overlay_bootstrap"] = first
        for host in topo.with_role("cacher"):
            # A cacher only reads from the storage overlay (docs/cacher.md), so it joins as a
            # RELOAD client (RFC 6940 §3.2.1), never as a peer: a peer joining after the
            # sources published takes over part of the ring (§10.5), and the segments whose
            # replicas it became failed to fill; and cachers restart between phases.
            toml = add_daemon(
                root,
                f"cacher-{host.name}",
                f"{host.name}@{OVERLAY_NAME}",
                port=OVERLAY_BASE_PORT + 91,
                client=True,
                bootstrap=[first],
            )
            _rebind(toml, run.address(host.name), OVERLAY_BASE_PORT + 91, first)
            run.values[f"overlay-{host.name}"] = toml

    def _publish(self, run: LabRun) -> None:
        from reload.usages.config import add_daemon

        topo = run.topology
        source_host = topo.with_role("source")[0].name
        channels = self.option("channels", 4)
        size = self.option("channel_bytes", 1 << 20)
        names = [f"ch{i + 1}" for i in range(channels)]
        sources = []
        for i, name in enumerate(names):
            # One overlay node per source process, all with the source's user name: the
            # content namespace is the user name, not the node.
            port = OVERLAY_BASE_PORT + 50 + i
            first = run.values["overlay_bootstrap"]
            toml = add_daemon(
                run.config_dir / "overlay",
                f"source-{name}",
                SOURCE_USER,
                port=port,
                bootstrap=[first],
            )
            _rebind(toml, run.address(source_host), port, first)
            content = run.host_dir(source_host) / f"{name}.bin"
            content.write_bytes(secrets.token_bytes(size))
            sources.append(
                run.start(
                    f"source-{name}",
                    source_host,
                    [
                        "source",
                        "publish",
                        str(content),
                        "--name",
                        name,
                        "--overlay",
                        str(toml),
                        "--tracker",
                        run.values["tracker"],
                        "--portal",
                        run.values["portal"],
                        "--listen",
                        f"{run.address(source_host)}:0",
                    ],
                    env={"P2PCDN_PORTAL_TOKEN": run.values["portal_token"]},
                )
            )
        for source in sources:
            source.wait_lines(2, timeout=120.0)
        run.values["channels"] = names
        wait_portal(run, source_host, run.values["channels"], timeout=120.0)

    def _start_live(self, run: LabRun, name: str, bitrate: int, port: int) -> Daemon:
        """``p2pcdn source live`` (a generated stream at ``bitrate`` kbit/s) as channel
        ``name``, with its own storage overlay node on ``port``; started, not yet waited for
        (it prints two lines when published)."""
        from reload.usages.config import add_daemon

        source_host = run.topology.with_role("source")[0].name
        first = run.values["overlay_bootstrap"]
        toml = add_daemon(
            run.config_dir / "overlay", f"source-{name}", SOURCE_USER, port=port, bootstrap=[first]
        )
        _rebind(toml, run.address(source_host), port, first)
        args = ["source", "live", "--name", name, "--bitrate", str(bitrate)]
        args += ["--overlay", str(toml), "--tracker", run.values["tracker"]]
        args += ["--portal", run.values["portal"], "--listen", f"{run.address(source_host)}:0"]
        return run.start(
            f"source-{name}",
            source_host,
            args,
            env={"P2PCDN_PORTAL_TOKEN": run.values["portal_token"]},
        )

    def _tracker_of(self, run: LabRun, host: Any) -> str:
        """The tracker URL the cacher on ``host`` registers at."""
        return str(run.values["tracker"])

    def _start_cachers(self, run: LabRun, phase: str, push_head: int) -> list[Any]:
        cachers = []
        for host in run.topology.with_role("cacher"):
            directory = run.host_dir(host.name) / f"cacher-{phase}"
            directory.mkdir(parents=True, exist_ok=True)
            config = directory / "cacher.toml"
            config.write_text(
                "[cacher]\n"
                f"tracker = {json.dumps(self._tracker_of(run, host))}\n"
                f"area = {json.dumps(host.area)}\n"
                f"listen = {json.dumps(f'{run.address(host.name)}:{CACHER_PORT}')}\n"
                f"cache_dir = {json.dumps(str(directory / 'cache'))}\n"
                f"storage_overlay = {json.dumps(str(run.values[f'overlay-{host.name}']))}\n"
                f"sources = [{json.dumps(SOURCE_USER)}]\n"
                f"portal = {json.dumps(run.values['portal'])}\n"
                f"push_head = {push_head}\n"
                f"follow_hints = {str(phase not in self.PLAIN_CACHE_PHASES).lower()}\n"
            )
            if phase in self.PLAIN_CACHE_PHASES:
                # A plain cache carries the channels it is configured with (pull-through),
                # as an edge cache of a CDN without F4 does.
                channels = [f"{SOURCE_USER}/{name}" for name in run.values.get("channels", [])]
                with config.open("a") as f:
                    f.write(f"channels = {json.dumps(channels)}\n")
            cacher = run.start(
                f"cacher-{host.name}-{phase}", host.name, ["cacher", "--config", str(config)]
            )
            cachers.append(cacher)
        for cacher in cachers:
            cacher.wait_lines(1, timeout=60.0)
        return cachers

    def run(self, run: LabRun) -> None:
        dwell = self.option("dwell", 3.0)
        settle = self.option("settle", 2.0)
        for phase, push_head in self.phases():
            cachers = self._start_cachers(run, phase, push_head)
            run.sleep(settle)
            if phase not in self.PLAIN_CACHE_PHASES:
                # The tracker hints the cachers with the channels viewers watch (F4): one
                # unmeasured viewer per area makes them hot, then the cachers prefetch.
                self._warm_up(run, phase, 1.0)
                run.sleep(settle)
            if push_head and "cacher_rtt" not in run.values:
                run.values["cacher_rtt"] = self._measure_cacher_rtt(run)
            hosts = run.topology.with_role("csc")
            # Independent viewers zap at independent moments: spread over one dwell, viewer k
            # of n starts k/n of a dwell after the first. Zapping in the same millisecond
            # would measure the CPU queue of a whole lab on one machine, not the network.
            spread = dwell if self.option("stagger", True) else 0.0
            started = time.monotonic()
            viewers = []
            for k, h in enumerate(hosts):
                run.sleep(max(0.0, started + spread * k / len(hosts) - time.monotonic()))
                viewers.append(self._zap(run, f"csc-{h.name}-{phase}", h.name, h.area, dwell))
            run.sleep(min(1.0, dwell / 2))
            # Every daemon binds its host's lab address, never another (issue 9).
            run.values.setdefault("bound_elsewhere", {}).update(run.bound_elsewhere())
            self._wait_viewers(run, viewers, dwell, f"zapping ({phase})")
            for cacher in cachers:  # the next phase starts with fresh cachers
                cacher.stop()

    def _measure_cacher_rtt(self, run: LabRun) -> dict[str, float]:
        """The median RTT from each CSC host to its area's cacher host, measured with UDP
        echoes through the link emulator as the daemons send (the RTT of the targets)."""
        cachers = run.topology.with_role("cacher")
        pairs = {  # the first cacher of the area, as cacher_rtt takes it
            csc.name: next(c.name for c in cachers if c.area == csc.area)
            for csc in run.topology.with_role("csc")
            if any(c.area == csc.area for c in cachers)
        }
        servers = start_echo_servers(run, sorted(set(pairs.values())), 60.0)
        count = str(self.option("rtt_probes", 20))
        probes = {
            csc: run.start_command(
                f"rtt-{csc}",
                csc,
                lab_command(
                    "echo-client", run.address(cacher), "--port", f"{ECHO_PORT}", "-c", count
                ),
                required=False,
            )
            for csc, cacher in pairs.items()
        }
        run.wait_for(list(probes.values()), timeout=60.0, what="measuring the RTT to the cachers")
        for server in servers:
            server.stop()
        measured: dict[str, float] = {}
        for csc, probe in probes.items():
            for line in probe.stdout_lines():
                record = _json_line(line)
                if record is not None and record.get("rtt_median") is not None:
                    measured[csc] = float(record["rtt_median"])
        return measured

    def _zap(self, run: LabRun, name: str, host: str, area: str, dwell: float) -> Daemon:
        args = ["csc", "--portal", run.values["portal"], "--area", area]
        args += [*run.values.get("csc_args", [])]  # e.g. --tracker URL (node-kill)
        args += ["--listen", f"{run.address(host)}:0", "--json", "zap", *run.values["channels"]]
        return run.start(name, host, [*args, "--dwell", str(dwell)], required=False)

    def _warm_up(self, run: LabRun, phase: str, dwell: float) -> None:
        """One unmeasured viewer per area watches the channels, so the tracker knows them as
        hot and hints the cachers, which prefetch their heads (F4); waits until it is done."""
        first_per_area = {h.area: h for h in run.topology.with_role("csc")}
        warmups = [
            self._zap(run, f"warmup-{h.name}-{phase}", h.name, h.area, dwell)
            for h in first_per_area.values()
        ]
        self._wait_viewers(run, warmups, dwell, f"warm-up ({phase})")

    def _wait_viewers(self, run: LabRun, viewers: list[Daemon], dwell: float, what: str) -> None:
        timeout = 30.0 + dwell * len(run.values["channels"]) * 3
        statuses = run.wait_for(viewers, timeout=timeout, what=what)
        failed = [name for name, status in statuses.items() if status != 0]
        if failed:
            raise RuntimeError(f"CSC(s) failed: {', '.join(failed)}")

    def collect(self, run: LabRun, outputs: Mapping[str, list[str]]) -> dict[str, Any]:
        phases = {phase: csc_reports(run.topology, outputs, phase) for phase, _ in self.phases()}
        data = metrics.aggregate_csc(self.name, run.topology.name, phases, area_of(run.topology))
        measured = run.values.get("cacher_rtt")
        data["cacher_rtt_measured"] = measured
        data["targets"] = metrics.push_targets(data, cacher_rtt(run.topology, measured))
        data["bound_elsewhere"] = run.values.get("bound_elsewhere", {})
        data["netem"] = run.values.get("netem")
        data["tracker_messages"] = metrics.tracker_messages(tracker_stats(run))
        return data


def area_of(topology: Topology) -> dict[str, str]:
    """Every host's lab address → its area (the locality metric's map)."""
    return {str(h.address): h.area for h in topology.hosts.values()}


def tracker_stats(run: LabRun) -> dict[str, dict[str, Any]]:
    """The statistics each tracker daemon logged when it stopped (``tracker stats: {json}`` on
    stderr, ppsp/tracker/server.py), by daemon name; a tracker killed by SIGKILL has none."""
    out: dict[str, dict[str, Any]] = {}
    for name, daemon in run.daemons.items():
        if not re.fullmatch(r"tracker(-\d+)?", name):
            continue
        try:
            text = daemon.err_path.read_text(errors="replace")
        except OSError:
            continue
        for line in reversed(text.splitlines()):
            _, marker, rest = line.partition("tracker stats: ")
            if marker:
                with contextlib.suppress(ValueError):
                    value = json.loads(rest)
                    if isinstance(value, dict):
                        out[name] = value
                break
    return out


def csc_reports(
    topology: Topology, outputs: Mapping[str, list[str]], phase: str, prefix: str = "csc"
) -> list[dict[str, Any]]:
    """The CSC session reports (``p2pcdn csc --json``) of ``phase`` in the daemons' stdout,
    tagged with their host and area. Daemons are named PREFIX-HOST-PHASE, or PREFIX-HOST-PHASE-N
    for several per host; a daemon running several viewers prints one report line each."""
    reports = []
    for host in topology.with_role("csc"):
        pattern = re.compile(
            rf"^{re.escape(prefix)}-{re.escape(host.name)}-{re.escape(phase)}(-\d+)?$"
        )
        for name in sorted(n for n in outputs if pattern.match(n)):
            for line in outputs[name]:
                record = _json_line(line)
                if record is not None and "channels" in record:
                    record["host"], record["area"] = host.name, host.area
                    reports.append(record)
    return reports


def cacher_rtt(
    topology: Topology,
    measured: Mapping[str, float] | None = None,
    chunks: int = DEFAULT_STARTUP_BYTES // 1024,
) -> dict[str, float]:
    """Per CSC host with a cacher in its area: the RTT to that cacher (``measured`` where
    given, else the topology's delays) plus the time to send the ``chunks`` 1 KiB chunks of
    the first frame (the CSC's default startup threshold, with headers) at the path's rate:
    the issue's "RTT to the cacher + first-chunk time"."""
    out: dict[str, float] = {}
    for csc in topology.with_role("csc"):
        cachers = [h for h in topology.with_role("cacher") if h.area == csc.area]
        if not cachers:
            continue
        there = topology.path(csc.name, cachers[0].name)
        back = topology.path(cachers[0].name, csc.name)
        first_frame = chunks * (1024 + 64) * 8 / back.rate if back.rate else 0.0
        rtt = (measured or {}).get(csc.name, there.delay + back.delay)
        out[csc.name] = rtt + first_frame
    return out


def wait_portal(run: LabRun, host: str, names: list[str], timeout: float) -> None:
    """Poll the portal's channel list from ``host`` until it lists every one of ``names``."""
    from lab import netns

    code = (
        "import json,sys,urllib.request\n"
        f"d=json.load(urllib.request.urlopen({run.values['portal']!r}.rstrip('/')"
        "+'/api/v1/channels',timeout=5))\n"
        "items=d.get('channels',d) if isinstance(d,dict) else d\n"
        "print(' '.join(str(c.get('name')) for c in items))\n"
    )
    deadline = time.monotonic() + timeout
    while True:  # bounded by the deadline
        run.check()
        result = netns.run(
            run.net.exec_argv(host, [sys.executable, "-c", code]), timeout=15.0, check=False
        )
        listed = set(result.stdout.split())
        if set(names) <= listed:
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(f"the portal lists {sorted(listed)}, not {names}")
        run.sleep(0.5)


def _rebind(toml: Path, address: str, port: int, bootstrap: tuple[str, int]) -> None:
    """Point a daemon TOML written for 127.0.0.1 at its lab address and bootstrap node."""
    lines = []
    for line in toml.read_text().splitlines():
        if line.startswith("listen ="):
            line = f'listen = "{address}:{port}"'
        elif line.startswith("bootstrap ="):
            line = f'bootstrap = ["{bootstrap[0]}:{bootstrap[1]}"]'
        lines.append(line)
    toml.write_text("\n".join(lines) + "\n")


# -- the other CDN scenarios (issue 9 item 2) ------------------------------------------------------


class FlashCrowd(FastChannelChange):
    """Viewers arriving on one channel within a short window (LiveSky's largest event, scaled
    down): ``viewers_per_host`` CSC processes per CSC host, arrivals spread evenly over
    ``window`` seconds, each watching for ``watch`` seconds."""

    name = "flash-crowd"
    description = "viewers arriving on one channel within a short window; startup, Q1, Q2"

    def phases(self) -> list[tuple[str, int]]:
        return [("crowd", self.option("push_head", 64))]

    def run(self, run: LabRun) -> None:
        per_host = self.option("viewers_per_host", 3)
        window = self.option("window", 10.0)
        watch = self.option("watch", 5.0)
        phase, push_head = self.phases()[0]
        self._start_cachers(run, phase, push_head)
        run.sleep(self.option("settle", 2.0))
        hosts = run.topology.with_role("csc")
        arrivals = [(i, h) for i in range(per_host) for h in hosts]
        channel = run.values["channels"][0]
        started = time.monotonic()
        viewers = []
        for k, (i, host) in enumerate(arrivals):
            at = started + window * k / max(1, len(arrivals))
            run.sleep(max(0.0, at - time.monotonic()))
            args = ["csc", "--portal", run.values["portal"], "--area", host.area]
            args += ["--listen", f"{run.address(host.name)}:0", "--json"]
            args += ["watch", channel, "--seconds", str(watch)]
            viewers.append(
                run.start(f"csc-{host.name}-{phase}-{i}", host.name, args, required=False)
            )
        run.values["bound_elsewhere"] = run.bound_elsewhere()
        run.values["arrivals"] = {"viewers": len(arrivals), "window": window}
        self._wait_viewers(run, viewers, watch, f"watching ({phase})")

    def collect(self, run: LabRun, outputs: Mapping[str, list[str]]) -> dict[str, Any]:
        data = super().collect(run, outputs)
        data.pop("targets", None)
        data["arrivals"] = run.values.get("arrivals")
        return data


class Churn(FastChannelChange):
    """Viewers of a live channel leaving and joining at ``churn`` (share of the viewers per
    minute, default 10 %) for ``minutes``: every leave is a CSC stopped by SIGTERM (it prints
    its report), every join a new CSC on the same host. Q1 and Q2 over all sessions."""

    name = "churn"
    description = "10 %/minute of the viewers of a live channel leaving and joining; Q1 and Q2"

    def phases(self) -> list[tuple[str, int]]:
        return [("churn", self.option("push_head", 64))]

    def setup(self, run: LabRun) -> None:
        super().setup(run)
        live = self._start_live(run, "live", self.option("bitrate", 400), OVERLAY_BASE_PORT + 80)
        live.wait_lines(2, timeout=120.0)
        wait_portal(run, run.topology.with_role("source")[0].name, ["live"], timeout=60.0)

    def run(self, run: LabRun) -> None:
        per_host = self.option("viewers_per_host", 2)
        minutes = self.option("minutes", 3.0)
        churn = self.option("churn", 0.10)
        phase, push_head = self.phases()[0]
        self._start_cachers(run, phase, push_head)
        run.sleep(self.option("settle", 2.0))
        hosts = run.topology.with_role("csc")
        population = per_host * len(hosts)
        serial = 0
        watching: list[Daemon] = []

        def join(host: Any) -> None:
            nonlocal serial
            args = ["csc", "--portal", run.values["portal"], "--area", host.area]
            args += ["--listen", f"{run.address(host.name)}:0", "--json"]
            # A live player keeps a few seconds of media buffered (the default 8 KiB are 0.16 s
            # at 400 kbit/s, less than one signed munro of the live source: a stall per munro).
            args += ["--startup", str(self.option("startup", 2.0))]
            args += ["watch", "live", "--seconds", str(minutes * 60 + 120)]
            name = f"csc-{host.name}-{phase}-{serial}"
            serial += 1
            watching.append(run.start(name, host.name, args, required=False))

        for i in range(population):
            join(hosts[i % len(hosts)])
            run.sleep(0.2)
        interval = 60.0 / (churn * population) if churn > 0 else minutes * 60
        end = time.monotonic() + minutes * 60
        events = 0
        while time.monotonic() + interval <= end:  # bounded by ``end``
            run.sleep(interval)
            leaving = watching.pop(0)  # the longest-watching viewer leaves ...
            leaving.stop()
            join(run.topology.hosts[leaving.host])  # ... and a newcomer joins on its host
            events += 1
        run.sleep(max(0.0, end - time.monotonic()))
        run.values["bound_elsewhere"] = run.bound_elsewhere()
        for viewer in watching:
            viewer.stop()
        run.values["churn"] = {
            "population": population,
            "per_minute": churn,
            "minutes": minutes,
            "leave_join_events": events,
            "sessions": serial,
        }

    def collect(self, run: LabRun, outputs: Mapping[str, list[str]]) -> dict[str, Any]:
        data = super().collect(run, outputs)
        data["churn"] = run.values.get("churn")
        phase = data["phases"].get("churn", {})
        rate = (data["churn"] or {}).get("per_minute", 0.0) * 100
        data["targets"] = {
            f"churn_{key}": {
                "what": f"{key.upper()} under {rate:.0f} %/minute churn",
                "value": phase[key],
                "bound": metrics.CHURN_TARGET,
                "met": phase[key] >= metrics.CHURN_TARGET,
            }
            for key in ("q1", "q2")
            if data["churn"] and phase.get(key) is not None
        }
        return data


class CacherRestart(FastChannelChange):
    """The first area's cacher is killed (SIGKILL) while its CSCs zap, and restarted with the
    same configuration and on-disk cache: the viewers keep playing (switching to peers or the
    source, DESIGN F5) and the restarted cacher's batch report restores the tracker's view."""

    name = "cacher-restart"
    description = "a cacher killed (SIGKILL) mid-zap and restarted; Q1, Q2 and its batch report"

    def phases(self) -> list[tuple[str, int]]:
        return [("restart", self.option("push_head", 64))]

    def run(self, run: LabRun) -> None:
        dwell = self.option("dwell", 3.0)
        settle = self.option("settle", 2.0)
        down = self.option("down_seconds", 1.0)
        phase, push_head = self.phases()[0]
        cachers = self._start_cachers(run, phase, push_head)
        run.sleep(settle)
        self._warm_up(run, phase, 1.0)
        run.sleep(settle)
        viewers = [
            self._zap(run, f"csc-{h.name}-{phase}", h.name, h.area, dwell)
            for h in run.topology.with_role("csc")
        ]
        run.sleep(dwell * 1.5)  # in the middle of the second channel
        victim = cachers[0]
        victim.kill()
        run.values["killed"] = victim.name
        run.sleep(down)
        restarted = run.respawn(victim, f"{victim.name}-restarted")
        started = time.monotonic()
        restarted.wait_lines(1, timeout=60.0)
        run.values["restart_seconds"] = time.monotonic() - started
        self._wait_viewers(run, viewers, dwell, f"zapping ({phase})")
        deadline = time.monotonic() + 15.0
        while _batch_report_swarms(restarted.err_path) is None:  # bounded by the deadline
            if time.monotonic() >= deadline:
                break
            run.sleep(0.2)
        run.values["restored_swarms"] = _batch_report_swarms(restarted.err_path)
        for cacher in (*cachers[1:], restarted):
            cacher.stop()

    def collect(self, run: LabRun, outputs: Mapping[str, list[str]]) -> dict[str, Any]:
        data = super().collect(run, outputs)
        data.pop("targets", None)
        for key in ("killed", "restart_seconds", "restored_swarms"):
            data[key] = run.values.get(key)
        return data


def _batch_report_swarms(stderr: Path) -> int | None:
    """Swarms in the first batch availability report a cacher logged (its stderr), or None."""
    try:
        text = stderr.read_text(errors="replace")
    except OSError:
        return None
    match = re.search(r"batch availability report.*?: (\d+) swarm\(s\)", text)
    return int(match.group(1)) if match else None


TRACKER_OVERLAY_NAME: Final = "trackers.lab.p2pcdn"
TRACKER_OVERLAY_PORT: Final = 6300
#: Tracker node i listens on the PPSP-TP ports + TRACKER_PORT_STEP * i.
TRACKER_PORT_STEP: Final = 10


class NodeKill(FastChannelChange):
    """A tracker overlay of ``trackers`` nodes (overlay mode, docs/tracker.md): the sources and
    cachers use node 0 (a cacher has one tracker, and its push hints come from the viewers its
    tracker sees), the viewers nodes 0, 1 and 2 (the CSC asks every tracker it is given at
    once, so a dead one costs it nothing but a timeout); node 1 and 2 know the cachers only
    through the overlay. While the CSCs zap, tracker node 2 and storage node ``kill_storage``
    are killed (SIGKILL); then fresh viewers, which know no cacher yet, zap through the
    survivors. A RELOAD client node fetches every channel's segments from the storage overlay
    before the kill and after it (hops, success)."""

    name = "node-kill"
    description = "a tracker node and a storage node killed (SIGKILL) mid-zap; Q1, Q2, fetches"

    def phases(self) -> list[tuple[str, int]]:
        push = self.option("push_head", 64)
        return [("kill", push), ("after", push)]

    def _start_tracker(self, run: LabRun) -> None:
        from reload import security
        from reload.usages.config import make_overlay_dir, overlay_xml

        count = self.option("trackers", 3)
        if count < 3:
            raise TopologyError("node-kill needs trackers >= 3")
        host = run.topology.with_role("tracker")[0].name
        addr = run.address(host)
        root = run.config_dir / "tracker-overlay"
        tomls = make_overlay_dir(
            root,
            TRACKER_OVERLAY_NAME,
            count,
            "tracker",
            base_port=TRACKER_OVERLAY_PORT,
            bootstrap_count=1,
        )
        first = (addr, TRACKER_OVERLAY_PORT)
        ca = security.load_certificate(root / "ca" / "ca.pem")
        (root / "overlay.xml").write_bytes(
            overlay_xml(TRACKER_OVERLAY_NAME, "tracker", [ca], [first])
        )
        urls = []
        for i, toml in enumerate(tomls):
            _rebind(toml, addr, TRACKER_OVERLAY_PORT + i, first)
            step = TRACKER_PORT_STEP * i
            config = run.host_dir(host) / f"tracker-{i}.toml"
            config.write_text(
                "[listen]\n"
                f'http = "{addr}:{TRACKER_HTTP + step}"\nudp = "{addr}:{TRACKER_UDP + step}"\n'
                f'tcp = "{addr}:{TRACKER_TCP + step}"\n'
                f"[timers]\nhint_interval = {float(self.option('hint_interval', 1.0))}\n"
                '[logging]\nlevel = "info"\n'
                f"[overlay]\ndaemon = {json.dumps(str(toml))}\n"
            )
            name = "tracker" if i == 0 else f"tracker-{i}"
            tracker = run.start(name, host, ["tracker", "--config", str(config)])
            tracker.wait_lines(3, timeout=60.0)  # node 0 creates the overlay: the rest join it
            urls.append(f"ppsp-udp://{addr}:{TRACKER_UDP + step}")
        run.values["tracker"] = urls[0]
        run.values["trackers"] = urls
        run.values["csc_args"] = [a for url in urls[:3] for a in ("--tracker", url)]

    def run(self, run: LabRun) -> None:
        dwell = self.option("dwell", 3.0)
        settle = self.option("settle", 2.0)
        victim_index = self.option("kill_storage", 1)
        cachers = self._start_cachers(run, "kill", self.option("push_head", 64))
        run.sleep(settle)
        self._warm_up(run, "kill", 1.0)
        run.values["overlay_probe"] = [overlay_probe(run, "before the kill", 0)]
        viewers = [
            self._zap(run, f"csc-{h.name}-kill", h.name, h.area, dwell)
            for h in run.topology.with_role("csc")
        ]
        started = time.monotonic()
        run.sleep(dwell * 1.5)  # in the middle of the second channel
        killed = []
        tracker = run.daemons[f"tracker-{self.option('trackers', 3) - 1}"]
        tracker.kill()
        killed.append(f"{tracker.name} (a viewer tracker)")
        storage = run.daemons.get(f"storage-{victim_index}")
        if storage is None:
            raise TopologyError(f"node-kill: no storage-{victim_index} to kill")
        storage.kill()
        killed.append(storage.name)
        at = time.monotonic() - started
        run.values["bound_elsewhere"] = run.bound_elsewhere()
        self._wait_viewers(run, viewers, dwell, "zapping (kill)")
        # Fresh viewers: no cacher known, their FINDs go to the surviving tracker 1 only.
        late = [
            self._zap(run, f"csc-{h.name}-after", h.name, h.area, dwell)
            for h in run.topology.with_role("csc")
        ]
        self._wait_viewers(run, late, dwell, "zapping (after)")
        run.values["overlay_probe"].append(overlay_probe(run, "after the kill", 1))
        for cacher in cachers:
            cacher.stop()
        run.values["node_kill"] = {
            "at": at,
            "killed": killed,
            "dwell": dwell,
            "csc_trackers": run.values["trackers"][:3],
            "connection_tracker": run.values["tracker"],
        }

    def collect(self, run: LabRun, outputs: Mapping[str, list[str]]) -> dict[str, Any]:
        data = super().collect(run, outputs)
        data.pop("targets", None)
        data["overlay_probe"] = run.values.get("overlay_probe")
        info = run.values.get("node_kill")
        if info is not None:
            before = {"ok": 0, "total": 0, "cacher_bytes": 0}
            after = {"ok": 0, "total": 0, "cacher_bytes": 0}
            for phase in ("kill", "after"):
                for report in csc_reports(run.topology, outputs, phase):
                    for i, channel in enumerate(report.get("channels", [])):
                        # Channel i of the kill phase starts at i × dwell; the kill lands in
                        # the second: it and everything later count as after.
                        side = (
                            after
                            if phase == "after" or (i + 1) * info["dwell"] > info["at"]
                            else before
                        )
                        side["total"] += 1
                        side["ok"] += channel.get("startup_delay") is not None
                        side["cacher_bytes"] += int(channel.get("bytes", {}).get("cacher", 0))
            data["node_kill"] = {**info, "before": before, "after": after}
        return data


class AreaLocality(FastChannelChange):
    """Every CSC zaps with its area as the tracker's locality hint; the area cachers are warmed
    first (one viewer per area visits every channel, so the cacher holds them and the tracker
    knows it). The metric: the share of the bytes the viewers received from a host of their own
    area (cacher or peer), from each CSC's bytes per serving peer; target ≥ 80 %."""

    name = "area-locality"
    description = "share of the bytes served from inside the viewer's area (target 80 %)"

    def phases(self) -> list[tuple[str, int]]:
        return [("locality", self.option("push_head", 64))]

    def run(self, run: LabRun) -> None:
        dwell = self.option("dwell", 3.0)
        settle = self.option("settle", 2.0)
        phase, push_head = self.phases()[0]
        cachers = self._start_cachers(run, phase, push_head)
        run.sleep(settle)
        self._warm_up(run, phase, self.option("warm_dwell", 2.0))
        run.sleep(settle)
        viewers = [
            self._zap(run, f"csc-{h.name}-{phase}", h.name, h.area, dwell)
            for h in run.topology.with_role("csc")
        ]
        run.sleep(min(1.0, dwell / 2))
        run.values["bound_elsewhere"] = run.bound_elsewhere()
        self._wait_viewers(run, viewers, dwell, f"zapping ({phase})")
        for cacher in cachers:
            cacher.stop()

    def collect(self, run: LabRun, outputs: Mapping[str, list[str]]) -> dict[str, Any]:
        data = super().collect(run, outputs)
        share = data["phases"]["locality"].get("locality", {}).get("inside_share")
        data["targets"] = {}
        if share is not None:
            data["targets"]["locality"] = {
                "what": "share of bytes served inside the viewer's area",
                "value": share,
                "bound": metrics.LOCALITY_TARGET,
                "met": share >= metrics.LOCALITY_TARGET,
            }
        return data


def overlay_probe(run: LabRun, when: str, serial: int) -> dict[str, Any]:
    """Fetch every channel's CONTENT-META and segments from the storage overlay through a fresh
    RELOAD client node on the first CSC host (``python -m lab.scenarios overlay-probe``): how
    many fetches succeed and their hops. Bounded (60 s)."""
    from reload.usages.config import add_daemon

    host = run.topology.with_role("csc")[0].name
    port = OVERLAY_BASE_PORT + 95 + serial
    first = run.values["overlay_bootstrap"]
    toml = add_daemon(
        run.config_dir / "overlay",
        f"probe-{serial}",
        f"probe{serial}@{OVERLAY_NAME}",
        port=port,
        client=True,  # a peer joining would take over segments it does not hold (§10.5)
        bootstrap=[first],
    )
    _rebind(toml, run.address(host), port, first)
    probe = run.start_command(
        f"probe-overlay-{serial}",
        host,
        lab_command("overlay-probe", str(toml), SOURCE_USER, *run.values["channels"]),
        required=False,
    )
    run.wait_for([probe], timeout=90.0, what=f"overlay probe ({when})")
    record: dict[str, Any] = {"when": when, "fetches": 0, "ok": 0}
    for line in probe.stdout_lines():
        value = _json_line(line)
        if value is not None:
            record.update(value)
    return record


async def _overlay_probe(toml: str, user: str, channels: list[str]) -> dict[str, Any]:
    from reload.aio import OverlayNode, load_daemon_config
    from reload.usages.client import ContentStore

    node = OverlayNode.from_config(load_daemon_config(Path(toml)))
    await node.start(join_timeout=30.0)
    store = ContentStore(node, "probe", timeout=5.0)
    hops: list[int] = []
    fetches = ok = 0
    try:
        for channel in channels:
            fetches += 1
            try:
                meta = await store.get_meta(user, channel)
            except Exception:  # not found, replicas exhausted, timeouts: counted
                continue
            ok += 1
            hops.append(node.last_hops)
            segments = -(-(meta.chunks or 0) // meta.segment_chunks)
            for index in range(segments):
                fetches += 1
                try:
                    await store.get_segment(meta, index)
                except Exception:  # counted
                    continue
                ok += 1
                hops.append(node.last_hops)
    finally:
        await asyncio.wait_for(node.close(), 10.0)
    return {
        "fetches": fetches,
        "ok": ok,
        "hops_mean": sum(hops) / len(hops) if hops else None,
        "hops_max": max(hops) if hops else None,
        "hops": hops,
    }


SCENARIOS: Final[dict[str, type[Scenario]]] = {
    cls.name: cls
    for cls in (
        Connectivity,
        FastChannelChange,
        FlashCrowd,
        Churn,
        CacherRestart,
        NodeKill,
        AreaLocality,
    )
}


def get(name: str, options: Mapping[str, Any] | None = None) -> Scenario:
    """The scenario called ``name``; :class:`KeyError` listing the known ones."""
    try:
        cls = SCENARIOS[name]
    except KeyError:
        raise KeyError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})") from None
    return cls(options)


def _json_line(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# -- the echo probes (run inside the namespaces) --------------------------------------------------


def lab_command(*args: str) -> list[str]:
    """The command line of this module's ``main`` with ``args``, run on a lab host."""
    return [sys.executable, "-m", "lab.scenarios", *args]


def start_echo_servers(run: LabRun, hosts: list[str], seconds: float) -> list[Daemon]:
    """An echo server (:func:`echo_server`) on each of ``hosts``, up for ``seconds``; waits
    until each is ready."""
    servers = [
        run.start_command(
            f"echo-{host}",
            host,
            lab_command(
                "echo-server", run.address(host), str(ECHO_PORT), "--seconds", str(seconds)
            ),
        )
        for host in hosts
    ]
    for server in servers:
        server.wait_lines(1, timeout=15.0)
    return servers


def echo_server(address: str, port: int, seconds: float) -> int:
    """Answer every UDP datagram with itself for ``seconds``, the answers sent through the link
    emulator like the daemons' (so an echo's RTT is the topology's); prints ``ready``."""
    return asyncio.run(_echo_server(address, port, seconds))


async def _echo_server(address: str, port: int, seconds: float) -> int:
    from ppsp.linkemu import wrap_datagram

    loop = asyncio.get_running_loop()
    holder: list[Any] = []

    class Protocol(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
            holder[0].sendto(data, addr)

    raw, _ = await loop.create_datagram_endpoint(Protocol, local_addr=(address, port))
    holder.append(wrap_datagram(raw))
    print("ready", flush=True)
    try:
        await asyncio.sleep(seconds)
    finally:
        raw.close()
    return 0


async def echo_probe(
    targets: list[str], port: int, count: int, timeout: float = 2.0
) -> list[dict[str, Any]]:
    """Send ``count`` datagrams to each target's echo server through the link emulator
    (ppsp/linkemu.py, as the daemons do) and time the answers; one record per target."""
    from ppsp.linkemu import wrap_datagram

    loop = asyncio.get_running_loop()
    answers: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue()

    class Protocol(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
            answers.put_nowait((data, loop.time()))

    raw, _ = await loop.create_datagram_endpoint(Protocol, family=socket.AF_INET)
    transport = wrap_datagram(raw)
    records = []
    try:
        for target in targets:
            rtts: list[float] = []
            for i in range(count):
                token = f"{target} {i} {secrets.token_hex(4)}".encode()
                sent = loop.time()
                transport.sendto(token, (target, port))
                deadline = sent + timeout
                while True:  # bounded by the deadline
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        data, at = await asyncio.wait_for(answers.get(), left)
                    except TimeoutError:
                        break
                    if data == token:
                        rtts.append(at - sent)
                        break
            records.append(
                {
                    "target": target,
                    "sent": count,
                    "received": len(rtts),
                    "rtt_min": min(rtts) if rtts else None,
                    "rtt_median": statistics.median(rtts) if rtts else None,
                }
            )
    finally:
        raw.close()
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.scenarios")
    actions = parser.add_subparsers(dest="action", required=True)
    server = actions.add_parser("echo-server")
    server.add_argument("address")
    server.add_argument("port", type=int)
    server.add_argument("--seconds", type=float, default=60.0)
    client = actions.add_parser("echo-client")
    client.add_argument("targets", nargs="+")
    client.add_argument("--port", type=int, default=ECHO_PORT)
    client.add_argument("-c", "--count", type=int, default=5)
    probe = actions.add_parser("overlay-probe")
    probe.add_argument("daemon_toml")
    probe.add_argument("user")
    probe.add_argument("channels", nargs="+")
    args = parser.parse_args(argv)
    if args.action == "echo-server":
        return echo_server(args.address, args.port, args.seconds)
    if args.action == "overlay-probe":
        result = asyncio.run(
            asyncio.wait_for(_overlay_probe(args.daemon_toml, args.user, args.channels), 80.0)
        )
        print(json.dumps(result), flush=True)
        return 0
    records = asyncio.run(echo_probe(args.targets, args.port, args.count))
    for record in records:
        print(json.dumps(record), flush=True)
    return 0 if all(r["received"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
