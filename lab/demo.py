"""``python -m lab.demo`` (what ``make demo`` runs): the whole CDN on loopback, measured.

No root, no configuration: every "host" of a small topology is its own 127.0.x.y address and
the one-way delays between hosts are applied by our userspace link emulator
(``ppsp/linkemu.py``, ``P2PCDN_LINK_EMULATION`` rules from the topology, as the lab does when
the kernel has no netem)::

    core 127.0.B.10      3-node tracker overlay, portal, 5-node storage overlay,
                         sources: 3 VoD channels (ch1..ch3) and 2 live channels (live1, live2)
      │ 35 ms
      ├── area a: cacher-a 127.0.(B+1).10, viewers-a 127.0.(B+1).11 (5 ms from the cacher)
      └── area b: cacher-b 127.0.(B+2).10, viewers-b 127.0.(B+2).11

The run is the lab's fast-channel-change scenario (:class:`lab.scenarios.FastChannelChange`:
configurations, certificates, daemons, phases, metrics) on a :class:`LoopbackRun`, the lab
runner without namespaces. Differences: the tracker is a RELOAD tracker overlay of three
nodes (the source on node 0, each area's cacher and viewers on their own node, so FINDs cross
the overlay), two live channels join the three VoD channels, and the viewers of an area are
:class:`csc.client.CscClient` objects in one process (``python -m lab.demo viewers``) instead
of one process each: the demo must run on 2 cores in well under 90 s.

Two of the lab's three phases: **push** (cachers with ``push_head = 64``; one warm-up viewer per
area makes the channels hot, the tracker sends push hints, the cachers prefetch the heads) and
**no-push** (fresh cachers, empty caches, ``push_head = 0``, no warm-up; they still act on
the hints that come as the viewers watch). The table at the end
gives the channel-change startup delays (median, p95, per area), Q1, Q2 and the bytes by
origin. Exit status: 0 when every phase worked (every viewer reported, metrics sane, nothing
left running), 1 otherwise, 130 on Ctrl-C; every process and the temporary directory are
removed in every case.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import random
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from lab import metrics, netns
from lab.runner import Daemon, LabError, LabRun, RunResult
from lab.scenarios import (
    OVERLAY_BASE_PORT,
    PORTAL_PORT,
    TRACKER_HTTP,
    TRACKER_TCP,
    TRACKER_UDP,
    FastChannelChange,
    _rebind,
    cacher_rtt,
    csc_reports,
    wait_portal,
)
from lab.topology import Host, Topology, parse

REPO: Final = Path(__file__).resolve().parent.parent
#: One-way delays of the demo topology: a viewer to its area's cacher, an area to the core.
VIEWER_DELAY_MS: Final = 5
AREA_TO_CORE_MS: Final = 35
TRACKER_OVERLAY_NAME: Final = "trackers.demo.p2pcdn"
TRACKER_OVERLAY_PORT: Final = 6300
#: The environment variable marking the demo's processes (the lab's is P2PCDN_LAB_RUN).
MARKER_VARIABLE: Final = "P2PCDN_DEMO_RUN"
#: Seconds a daemon has to exit after SIGTERM before SIGKILL.
STOP_GRACE: Final = 3.0
#: Port step between the tracker overlay's trackers (HTTP, UDP, TCP at +0, +1, +2).
TRACKER_PORT_STEP: Final = 10

DEFAULTS: Final[dict[str, Any]] = {
    "channels": 3,  # VoD channels ch1..chN
    "channel_bytes": 256 * 1024,
    "live_channels": 2,  # live1..liveN
    "bitrate": 400,  # kbit/s of the live channels
    "tracker_nodes": 3,
    "storage_nodes_per_host": 5,
    "viewers_per_area": 5,
    "visits": 4,  # channels each viewer visits
    "dwell": 1.5,  # seconds on each channel
    "settle": 1.0,
    "push_head": 64,
    "hint_interval": 1.0,
}


def demo_topology(base: int) -> Topology:
    """The demo's five hosts, core on 127.0.``base``.10, area a on 127.0.``base+1``.x, area b
    on 127.0.``base+2``.x. Parsed like a lab topology file (so paths and delays are the lab's),
    then moved to loopback addresses."""
    hosts: list[dict[str, Any]] = [
        {
            "name": "core",
            "bridge": "core",
            "area": "core",
            "roles": ["tracker", "portal", "source", "storage"],
        }
    ]
    for area in ("a", "b"):
        hosts.append({"name": f"cacher-{area}", "bridge": f"area-{area}", "area": area,
                      "roles": ["cacher"]})  # fmt: skip
        hosts.append({"name": f"viewers-{area}", "bridge": f"area-{area}", "area": area,
                      "roles": ["csc"], "delay": f"{VIEWER_DELAY_MS}ms"})  # fmt: skip
    topology = parse(
        {
            "name": "demo",
            "description": "make demo: the whole CDN on loopback, two areas around a core",
            "bridge": [{"name": "core"}, {"name": "area-a"}, {"name": "area-b"}],
            "link": [
                {"a": "core", "b": f"area-{area}", "delay": f"{AREA_TO_CORE_MS}ms"}
                for area in ("a", "b")
            ],
            "host": hosts,
        },
        "demo topology",
    )
    bridge_octet = {"core": base, "area-a": base + 1, "area-b": base + 2}
    slots: dict[str, int] = {}
    moved: dict[str, Host] = {}
    for name, host in topology.hosts.items():
        slot = slots.get(host.bridge, 10)
        slots[host.bridge] = slot + 1
        address = ipaddress.IPv4Address(f"127.0.{bridge_octet[host.bridge]}.{slot}")
        moved[name] = dataclasses.replace(host, address=address)
    return dataclasses.replace(topology, hosts=moved)


def _ports_free(address: str, ports: Sequence[int]) -> bool:
    for port in ports:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as probe:
                try:
                    probe.bind((address, port))
                except OSError:
                    return False
    return True


def pick_base(tracker_nodes: int, attempts: int = 20) -> int:
    """A third octet for the core whose fixed ports are free on all three /24s (another demo
    or a test may be running on this machine)."""
    rng = random.Random()
    ports = [PORTAL_PORT, OVERLAY_BASE_PORT, TRACKER_OVERLAY_PORT]
    for i in range(tracker_nodes):
        step = i * TRACKER_PORT_STEP
        ports += [TRACKER_HTTP + step, TRACKER_UDP + step, TRACKER_TCP + step]
    for _ in range(attempts):
        base = rng.randrange(100, 250)
        if all(_ports_free(f"127.0.{base + k}.10", ports) for k in range(3)):
            return base
    raise LabError("no free loopback addresses for the demo (127.0.100-252.x all in use?)")


# -- the lab runner on loopback ---------------------------------------------------------------


class LoopbackNetwork(netns.Network):
    """The lab's :class:`~lab.netns.Network` without namespaces: processes run on this host,
    each daemon binding its host's loopback address, delays from the emulator rules that
    :meth:`~lab.netns.Network.environment` gives every process (rate is not emulated)."""

    def __init__(self, topology: Topology, registry: netns.Registry) -> None:
        super().__init__(topology, registry, netem=False, tbf=True)

    def exec_argv(self, host: str, argv: Sequence[str]) -> list[str]:
        return list(argv)

    def environment(self, host: str) -> dict[str, str]:
        """The lab's emulation rules, with the demo's own process marker: ``p2pcdn lab
        cleanup`` (run by lab tests, maybe right now) kills processes with the lab's."""
        env = super().environment(host)
        env.pop(netns.RUN_VARIABLE, None)
        env[MARKER_VARIABLE] = f"{self.prefix}-{host}"
        return env

    def build(self) -> None:
        self.built = True

    def teardown(self) -> list[str]:
        """Kill what is left of the run's processes (found by the environment marker) and
        say which could not be."""
        netns.kill_pids(demo_pids(self.prefix), grace=2.0)
        return [f"process {p}" for p in demo_pids(self.prefix)]


def demo_pids(prefix: str) -> list[int]:
    """Processes whose environment carries ``P2PCDN_DEMO_RUN=<prefix>-…``: the run's daemons
    and their children."""
    marker = f"{MARKER_VARIABLE}={prefix}-".encode()
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(item.startswith(marker) for item in environ.split(b"\0")) and netns._alive(
            int(entry.name)
        ):
            found.append(int(entry.name))
    return found


class LoopbackRun(LabRun):
    """:class:`~lab.runner.LabRun` on a :class:`LoopbackNetwork`: no root needed."""

    def __init__(
        self,
        topology: Topology,
        scenario: FastChannelChange,
        out_dir: Path,
        *,
        progress: Callable[[str], None] | None = None,
        write_outputs: bool = False,
    ) -> None:
        super().__init__(topology, scenario, out_dir, netem=False, progress=progress)
        self.prefix = f"demo{secrets.token_hex(3)}"  # not the lab's p2cdnXXXX: not its runs
        self.registry = netns.Registry(self.prefix, out_dir / "registry.json")
        self.registry.paths = [out_dir / "registry.json"]  # not /run: no root here
        self.write_outputs = write_outputs

    def _setup(self) -> None:
        self.scenario.validate(self.topology)
        self.values["netem"] = False
        self.network = LoopbackNetwork(self.topology, self.registry)
        self._write_run(RunResult("running", self.out_dir))
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.scenario.setup(self)

    def bound_elsewhere(self) -> dict[str, list[str]]:
        """Sockets of each host's daemons (by process group) not on that host's address."""
        groups = {d.pid: d.host for d in self.daemons.values() if d.running}
        wrong: dict[str, list[str]] = {}
        if shutil.which("ss") is None:  # iproute2 missing: nothing to check with
            return wrong
        out = netns.run(["ss", "-Hlntup"], check=False).stdout
        for line in out.splitlines():
            words = line.split()
            if len(words) < 5:
                continue
            for pid in {int(p) for p in re.findall(r"pid=(\d+)", line)}:
                try:
                    group = os.getpgid(pid)
                except ProcessLookupError:
                    continue
                host = groups.get(group)
                if host is None:
                    continue
                if words[4].rsplit(":", 1)[0].strip("[]") != self.address(host):
                    wrong.setdefault(host, []).append(f"{words[0]} {words[4]}")
        return wrong

    def _stop_daemons(self) -> None:
        """Stop in waves, each wave at once (the runner stops one daemon after the other):
        viewers, cachers and sources, then trackers and the portal, then the storage overlay.
        SIGTERM, SIGKILL after :data:`STOP_GRACE` seconds."""
        waves: list[list[Daemon]] = [[], [], []]
        for daemon in self.daemons.values():
            wave = 2 if daemon.name.startswith("storage-") else 0
            if daemon.name.startswith(("tracker-", "portal")):
                wave = 1
            waves[wave].append(daemon)
        for members in waves:
            running = [d for d in members if d.running]
            for daemon in running:
                daemon.stopping = True
                daemon.signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE
            for daemon in running:
                if daemon.wait_exit(max(0.0, deadline - time.monotonic())) is None:
                    daemon.signal(signal.SIGKILL)
                    daemon.wait_exit(5.0)

    def _collect(self) -> dict[str, Any]:
        outputs = {name: d.stdout_lines() for name, d in self.daemons.items()}
        data = self.scenario.collect(self, outputs)
        if self.write_outputs:
            metrics.write_outputs(self.out_dir, data)
        return data


# -- the scenario ---------------------------------------------------------------------------------


class WholeCdn(FastChannelChange):
    """The fast-channel-change scenario with a tracker overlay, live channels and in-process
    viewers (module docstring)."""

    name = "demo"
    description = "the whole CDN on loopback: push vs no push, two areas"

    def __init__(self, options: Mapping[str, Any], say: Callable[[str], None]) -> None:
        super().__init__({**DEFAULTS, **options})
        self.say = say

    def phases(self) -> list[tuple[str, int]]:
        """Push and no push (the lab's third phase, plain caches, is left to the lab: the
        demo stays under a minute)."""
        return [p for p in super().phases() if p[0] in ("push", "no-push")]

    # set-up

    def _start_tracker(self, run: LabRun) -> None:
        """A tracker overlay (RELOAD, draft-xiao kinds) of ``tracker_nodes`` trackers on the
        core host: node 0 serves the sources, node 1 area a, node 2 area b."""
        from reload import security
        from reload.usages.config import make_overlay_dir, overlay_xml

        core = run.topology.with_role("tracker")[0].name
        addr = run.address(core)
        count = self.option("tracker_nodes", 3)
        root = run.config_dir / "trackers"
        tomls = make_overlay_dir(
            root, TRACKER_OVERLAY_NAME, count, "tracker", TRACKER_OVERLAY_PORT, bootstrap_count=1
        )
        first = (addr, TRACKER_OVERLAY_PORT)
        ca = security.load_certificate(root / "ca" / "ca.pem")
        (root / "overlay.xml").write_bytes(
            overlay_xml(TRACKER_OVERLAY_NAME, "tracker", [ca], [first])
        )
        urls, trackers = [], []
        for i, toml in enumerate(tomls):
            _rebind(toml, addr, TRACKER_OVERLAY_PORT + i, first)
            step = i * TRACKER_PORT_STEP
            config = run.host_dir(core) / f"tracker-{i}.toml"
            config.write_text(
                "[listen]\n"
                f'http = "{addr}:{TRACKER_HTTP + step}"\nudp = "{addr}:{TRACKER_UDP + step}"\n'
                f'tcp = "{addr}:{TRACKER_TCP + step}"\n'
                f"[timers]\nhint_interval = {float(self.option('hint_interval', 1.0))}\n"
                f'[overlay]\ndaemon = "{toml}"\n'
                '[logging]\nlevel = "info"\n'
            )
            trackers.append(run.start(f"tracker-{i}", core, ["tracker", "--config", str(config)]))
            if i == 0:  # it creates the overlay: the others join through it
                trackers[0].wait_lines(3, timeout=60.0)
            urls.append(f"ppsp-udp://{addr}:{TRACKER_UDP + step}")
        for tracker in trackers[1:]:
            tracker.wait_lines(3, timeout=60.0)
        run.values["trackers"] = urls
        run.values["tracker"] = urls[0]
        self.say(f"tracker overlay up: {count} trackers ({', '.join(urls)})")

    def _start_portal(self, run: LabRun) -> None:
        super()._start_portal(run)
        self.say(f"portal up: {run.values['portal']}  (open it in a browser while the demo runs)")

    def _storage_overlay(self, run: LabRun) -> None:
        super()._storage_overlay(run)
        nodes = self.option("storage_nodes_per_host", 5)
        self.say(f"storage overlay up: {nodes} RELOAD nodes")

    def _publish(self, run: LabRun) -> None:
        source_host = run.topology.with_role("source")[0].name
        lives = [
            self._start_live(
                run, f"live{i + 1}", self.option("bitrate", 400), OVERLAY_BASE_PORT + 80 + i
            )
            for i in range(self.option("live_channels", 2))
        ]
        super()._publish(run)  # the VoD sources, meanwhile the live ones start
        for live in lives:
            live.wait_lines(2, timeout=120.0)
        names = [f"live{i + 1}" for i in range(len(lives))]
        wait_portal(run, source_host, names, timeout=60.0)
        run.values["channels"] = [*run.values["channels"], *names]
        self.say(f"published: {', '.join(run.values['channels'])}")

    def _tracker_of(self, run: LabRun, host: Any) -> str:
        urls: list[str] = run.values["trackers"]
        areas = run.topology.areas()
        areas = [a for a in areas if a != "core"]
        index = 1 + areas.index(host.area) if host.area in areas else 0
        return urls[index % len(urls)]

    # the measured part

    def _viewers(
        self, run: LabRun, name: str, host: Host, count: int, visits: int, dwell: float
    ) -> Any:
        argv = [sys.executable, "-m", "lab.demo", "viewers", "--portal", run.values["portal"]]
        argv += ["--area", host.area, "--listen", run.address(host.name)]
        argv += ["--tracker", self._tracker_of(run, host), "--count", str(count)]
        argv += ["--visits", str(visits), "--dwell", str(dwell), *run.values["channels"]]
        return run.start_command(name, host.name, argv, required=False)

    def _wait(self, run: LabRun, viewers: list[Any], seconds: float, what: str) -> None:
        statuses = run.wait_for(viewers, timeout=30.0 + seconds * 2, what=what)
        failed = [name for name, status in statuses.items() if status != 0]
        if failed:
            raise LabError(f"viewers failed: {', '.join(failed)}")

    def run(self, run: LabRun) -> None:
        dwell = self.option("dwell", 1.5)
        settle = self.option("settle", 1.0)
        per_area = self.option("viewers_per_area", 5)
        channels = run.values["channels"]
        visits = min(self.option("visits", 4), len(channels))
        hosts = run.topology.with_role("csc")
        for phase, push_head in self.phases():
            cachers = self._start_cachers(run, phase, push_head)
            self.say(f"phase {phase}: {len(cachers)} fresh cachers up (push_head = {push_head})")
            run.sleep(settle)
            if push_head:
                warmups = [
                    self._viewers(run, f"warmup-{h.name}-{phase}", h, 1, len(channels), 0.6)
                    for h in hosts
                ]
                self._wait(run, warmups, 0.6 * len(channels), f"warm-up ({phase})")
                self.say(
                    f"phase {phase}: warm-up viewers made {len(channels)} channels hot; "
                    "the trackers hint the cachers, which prefetch the heads"
                )
                run.sleep(settle)
            self.say(
                f"phase {phase}: {per_area * len(hosts)} viewers zapping "
                f"{visits} channels each, {dwell:g} s per channel"
            )
            viewers = [
                self._viewers(run, f"viewers-{h.name}-{phase}", h, per_area, visits, dwell)
                for h in hosts
            ]
            run.sleep(min(1.0, dwell / 2))
            run.values.setdefault("bound_elsewhere", {}).update(run.bound_elsewhere())
            self._wait(run, viewers, dwell * visits + per_area * 0.2, f"zapping ({phase})")
            reports = sum(1 for v in viewers for line in v.stdout_lines() if '"channels"' in line)
            self.say(f"phase {phase}: done, {reports} viewer reports")
            for cacher in cachers:  # the next phase starts with fresh cachers
                cacher.stop()

    def collect(self, run: LabRun, outputs: Mapping[str, list[str]]) -> dict[str, Any]:
        phases = {
            phase: csc_reports(run.topology, outputs, phase, prefix="viewers")
            for phase, _ in self.phases()
        }
        data = metrics.aggregate_csc(self.name, run.topology.name, phases)
        for phase, reports in phases.items():
            data["phases"][phase]["areas"] = {
                area: metrics.phase_metrics([r for r in reports if r["area"] == area])
                for area in sorted({str(r["area"]) for r in reports})
            }
            data["phases"][phase]["startup"] = startup_groups(reports)
        # Speed-ups of push over no push, of the channel changes (not the first tune-ins).
        speedups: dict[str, dict[str, float]] = {}
        data["push_speedup"] = speedups
        for group in ("VoD", "live", "all"):
            for key in ("median", "p95"):
                rows = {p: data["phases"][p]["startup"].get(group, {}) for p in data["phases"]}
                push, plain = rows.get("push", {}).get(key), rows.get("no-push", {}).get(key)
                if push and plain:
                    speedups.setdefault(group, {})[key] = plain / push
        for key in ("median", "p95"):
            data.pop(f"push_speedup_{key}", None)
            if key in speedups.get("all", {}):
                data[f"push_speedup_{key}"] = speedups["all"][key]
        data["targets"] = metrics.push_targets(data, cacher_rtt(run.topology))
        data["bound_elsewhere"] = run.values.get("bound_elsewhere", {})
        data["expected_viewers"] = self.option("viewers_per_area", 5) * len(
            run.topology.with_role("csc")
        )
        data["channels"] = run.values.get("channels", [])
        return data


def startup_groups(reports: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Startup delays of the channel *changes* (every visit but a viewer's first, which also
    registers it at its tracker: reported as ``first tune-in``), by group: each area, VoD and
    live channels, all; count, median and p95 (seconds)."""
    groups: dict[str, list[float]] = {}
    missing: dict[str, int] = {}

    def add(group: str, delay: Any) -> None:
        groups.setdefault(group, [])
        if isinstance(delay, int | float):
            groups[group].append(float(delay))
        else:
            missing[group] = missing.get(group, 0) + 1

    for report in sorted(reports, key=lambda r: str(r["area"])):
        channels = report.get("channels", [])
        for i, channel in enumerate(channels):
            delay = channel.get("startup_delay")
            if i == 0:
                add("first tune-in", delay)
                continue
            add(f"area {report['area']}", delay)
            add("live" if channel.get("live") else "VoD", delay)
            add("all", delay)
    order = [*sorted(g for g in groups if g.startswith("area ")), "VoD", "live", "all"]
    order.append("first tune-in")
    return {
        group: {
            "changes": len(groups.get(group, [])) + missing.get(group, 0),
            "no_first_frame": missing.get(group, 0),
            "median": metrics.percentile(groups.get(group, []), 0.5),
            "p95": metrics.percentile(groups.get(group, []), 0.95),
        }
        for group in order
        if group in groups
    }


# -- the report -------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value * 1000:.1f} ms"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


PHASE_TITLES: Final = {"push": "with push hints", "no-push": "without push hints"}


def report_lines(data: Mapping[str, Any]) -> list[str]:
    """The table printed at the end of the demo."""
    lines = [
        "Channel-change startup delay (zap → first frame), Q1 and Q2 per area:",
        "",
        f"  {'phase':<19} {'viewers':<13} {'changes':>7} {'median':>9} {'p95':>9} "
        f"{'Q1':>6} {'Q2':>6}",
    ]
    for name, phase in data["phases"].items():
        areas = phase.get("areas", {})
        for i, (group, row) in enumerate(phase["startup"].items()):
            title = PHASE_TITLES.get(name, name) if i == 0 else ""
            quality = areas.get(group.removeprefix("area "), phase) if group != "VoD" else None
            if group in ("live", "first tune-in"):
                quality = None
            q1 = _ratio(quality["q1"]) if quality else ""
            q2 = _ratio(quality["q2"]) if quality else ""
            line = (
                f"  {title:<19} {group:<13} {row['changes']:>7} {_ms(row['median']):>9} "
                f"{_ms(row['p95']):>9} {q1:>6} {q2:>6}"
            )
            lines.append(line.rstrip())
    speedups = data.get("push_speedup", {})
    if speedups:
        parts = [
            f"{group} median {values.get('median', 0.0):.1f}×, p95 {values.get('p95', 0.0):.1f}×"
            for group, values in speedups.items()
        ]
        lines += ["", "  Speed-up with push hints (time without / time with): " + "; ".join(parts)]
    lines += [
        "  Q1 = play / (play + stall); Q2 = 1 − viewers who stalled / viewers (LiveSky §4.4).",
        "",
        "Bytes the viewers received, by origin:",
        "",
    ]
    lines.append(
        f"  {'phase':<19} "
        + " ".join(f"{metrics.ORIGIN_LABELS[o]:>15}" for o in metrics.ORIGINS)
        + f" {'cachers + peers':>15}"
    )
    for name, phase in data["phases"].items():
        share = phase["bytes_share"]
        cells = [f"{share.get(o, 0.0) * 100:>14.1f}%" for o in metrics.ORIGINS]
        edge = (share.get("cacher", 0.0) + share.get("peer", 0.0)) * 100
        lines.append(
            f"  {PHASE_TITLES.get(name, name):<19} " + " ".join(cells) + f" {edge:>14.1f}%"
        )
    return lines


def problems(data: Mapping[str, Any]) -> list[str]:
    """What makes the run a failure: the lab's sanity checks and every viewer's report."""
    found = metrics.sanity_problems(data)
    for name, phase in data.get("phases", {}).items():
        if phase["viewers"] != data.get("expected_viewers"):
            found.append(f"{name}: {phase['viewers']} of {data.get('expected_viewers')} reports")
    return found


# -- the viewers process --------------------------------------------------------------------------


async def _run_viewers(args: argparse.Namespace) -> int:
    from csc.client import CscClient, CscError
    from csc.config import CscConfig

    names: list[str] = list(args.names)

    async def one(i: int) -> dict[str, Any]:
        await asyncio.sleep(i * args.stagger)
        config = CscConfig(
            portal=args.portal,
            area=args.area,
            trackers=tuple(args.tracker),
            listen=(args.listen, 0),
            peer_id=f"viewer-{args.area}-{i}-{os.getpid()}",
        ).check()
        # Two viewers per starting channel (the second can get chunks from the first, a peer),
        # pairs two channels apart from the first live one: every viewer sees VoD and live.
        start = (min(3, len(names) - 1) + 2 * (i // 2)) % len(names)
        order = [*names[start:], *names[:start]][: args.visits]
        client = CscClient(config)
        try:
            await client.start()
            summary = await client.zap(order, args.dwell)
        finally:
            await client.close()
        summary["viewer"] = i
        print(json.dumps(summary, sort_keys=True), flush=True)
        return summary

    results = await asyncio.gather(*(one(i) for i in range(args.count)), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    for exc in failed:
        kind = "error" if isinstance(exc, CscError | OSError) else type(exc).__name__
        print(f"viewer {kind}: {exc}", file=sys.stderr, flush=True)
    return 1 if failed else 0


def viewers_main(argv: Sequence[str]) -> int:
    """``python -m lab.demo viewers``: ``--count`` CSCs in this process zapping ``NAMES``
    (each from its own start channel), one JSON report line each."""
    from lab.cli import run_coroutine

    parser = argparse.ArgumentParser(prog="python -m lab.demo viewers")
    parser.add_argument("--portal", required=True)
    parser.add_argument("--area", required=True)
    parser.add_argument("--listen", required=True, help="the address to bind (port 0)")
    parser.add_argument("--tracker", action="append", default=[])
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--visits", type=int, default=4)
    parser.add_argument("--dwell", type=float, default=1.5)
    parser.add_argument("--stagger", type=float, default=0.2)
    parser.add_argument("names", nargs="+")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    return run_coroutine(_run_viewers(args))


# -- main -------------------------------------------------------------------------------------------


def run_demo(
    options: Mapping[str, Any],
    out_dir: Path,
    *,
    say: Callable[[str], None],
    write_outputs: bool = False,
) -> tuple[RunResult, dict[str, Any]]:
    """One demo run in ``out_dir``: the lab's result and the summary (JSON-able)."""
    scenario = WholeCdn(options, say)
    base = pick_base(scenario.option("tracker_nodes", 3))
    topology = demo_topology(base)

    def progress(text: str) -> None:
        if text.startswith("started "):
            say(text)

    run = LoopbackRun(topology, scenario, out_dir, progress=progress, write_outputs=write_outputs)
    say(f"run {run.prefix}: hosts " + ", ".join(
        f"{h.name} {h.address}" for h in topology.hosts.values()
    ) + f"; viewers {VIEWER_DELAY_MS} ms from their cacher, "
        f"{VIEWER_DELAY_MS + AREA_TO_CORE_MS} ms from the core (one way)")  # fmt: skip
    result = run.execute()
    summary: dict[str, Any] = {
        "status": result.status,
        "error": result.error,
        "teardown_problems": result.teardown_problems,
        "seconds": round(result.seconds, 2),
        "prefix": run.prefix,
        "options": dict(scenario.options),
        "metrics": result.metrics,
        "problems": problems(result.metrics) if result.status == "ok" else [],
    }
    if result.status != "ok":
        for daemon in run.daemons.values():
            if daemon.required and not daemon.stopping and daemon.returncode not in (None, 0):
                say(
                    f"{daemon.name} exited {daemon.returncode}: "
                    + " | ".join(daemon.stderr_tail(3))
                )
    return result, summary


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["viewers"]:
        return viewers_main(arguments[1:])
    parser = argparse.ArgumentParser(
        prog="python -m lab.demo",
        description="The whole CDN on loopback: fast channel change with and without push.",
    )
    parser.add_argument("--viewers-per-area", type=int, default=DEFAULTS["viewers_per_area"])
    parser.add_argument("--dwell", type=float, default=DEFAULTS["dwell"])
    parser.add_argument("--visits", type=int, default=DEFAULTS["visits"])
    parser.add_argument("--json", type=Path, help="also write the summary (JSON) here")
    parser.add_argument(
        "--out", type=Path, help="keep logs, configurations, results.json, plots and report.md here"
    )
    args = parser.parse_args(arguments)
    options = {
        "viewers_per_area": args.viewers_per_area,
        "dwell": args.dwell,
        "visits": args.visits,
    }
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:5.1f} s] {text}", flush=True)

    print(
        "p2pcdn demo: the whole CDN on loopback — tracker overlay, storage overlay, portal, "
        "source, cachers in two areas, viewers zapping",
        flush=True,
    )
    temporary = None
    if args.out is None:
        temporary = tempfile.mkdtemp(prefix="p2pcdn-demo-")
        out_dir = Path(temporary)
    else:
        out_dir = args.out
    try:
        try:
            result, summary = run_demo(
                options, out_dir, say=say, write_outputs=args.out is not None
            )
        except KeyboardInterrupt:
            print("demo interrupted", file=sys.stderr)
            return 130
        if args.json is not None:
            args.json.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
        if result.status == "interrupted":
            print(f"demo {result.error}; everything stopped", file=sys.stderr)
            return 130
        if result.status != "ok":
            print(f"demo failed: {result.error}", file=sys.stderr)
            return 1
        print()
        for line in report_lines(summary["metrics"]):
            print(line)
        print()
        if result.teardown_problems:
            print(
                f"demo failed: left running: {', '.join(result.teardown_problems)}", file=sys.stderr
            )
            return 1
        if summary["problems"]:
            print(f"demo failed: {'; '.join(summary['problems'])}", file=sys.stderr)
            return 1
        print(f"demo OK in {time.monotonic() - started:.1f} s; every process stopped")
        return 0
    finally:
        if temporary is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(temporary)


if __name__ == "__main__":
    sys.exit(main())
