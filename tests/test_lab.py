"""The namespace lab (lab/): topology validation, link emulation rules, namespaces with tbf,
teardown after success, failure, a dead daemon and SIGTERM, cleanup of leftovers, and the CI
topology's fast-channel-change scenario end to end.

Namespace tests need root and iproute2 (CI runs as root); they are skipped, with the reason,
only when either is missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lab import lab_cli, metrics, netns, scenarios
from lab.runner import LabRun
from lab.topology import Topology, TopologyError, load, parse, shipped
from ppsp import linkemu

REPO = Path(__file__).resolve().parent.parent
HAVE_LAB = os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("tc") is not None
needs_namespaces = pytest.mark.skipif(
    not HAVE_LAB, reason="needs root and iproute2 (ip, tc) for network namespaces"
)


def minimal(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "t",
        "bridge": [{"name": "core"}, {"name": "edge"}],
        "link": [{"a": "core", "b": "edge", "delay": "10ms", "rate": "20mbit"}],
        "host": [
            {"name": "h1", "bridge": "core", "roles": ["tracker"]},
            {"name": "h2", "bridge": "edge", "delay": "5ms", "rate": "4mbit"},
            {"name": "h3", "bridge": "edge"},
        ],
    }
    doc.update(overrides)
    return doc


def assert_clean(prefix: str) -> None:
    """Nothing of the run is left: namespace, link in this namespace, or process."""
    assert [n for n in netns.list_namespaces() if n.startswith(prefix)] == []
    assert netns.root_links(prefix) == []
    assert [p for p in netns.marked_pids(prefix) if netns._alive(p)] == []


# -- topology -------------------------------------------------------------------------------------


def test_topology_parse_and_paths() -> None:
    topo = parse(minimal())
    assert list(topo.hosts) == ["h1", "h2", "h3"]
    addresses = [h.address for h in topo.hosts.values()]
    assert len(set(addresses)) == 3
    assert all(a in topo.subnet and a.is_private and str(a).startswith("10.") for a in addresses)
    assert topo.with_role("tracker")[0].name == "h1"
    assert topo.hosts["h2"].area == "edge"  # the bridge when no area is given
    # One-way h2 → h1: h2's attachment 5 ms + the link 10 ms; rate the slowest on the way.
    path = topo.path("h2", "h1")
    assert path.delay == pytest.approx(0.015)
    assert path.rate == 4e6
    assert topo.path("h3", "h1").delay == pytest.approx(0.010)
    assert topo.path("h2", "h3").delay == pytest.approx(0.005)
    assert topo.path("h1", "h2") == topo.path("h2", "h1")


def test_shipped_topologies_are_valid() -> None:
    found = shipped()
    assert {"ci6", "areas"} <= set(found)
    ci6 = load(found["ci6"])
    assert len(ci6.hosts) == 6
    assert len(ci6.with_role("cacher")) == 2 and len(ci6.areas()) == 3
    areas = load(found["areas"])
    for csc in areas.with_role("csc"):
        cacher = next(h for h in areas.with_role("cacher") if h.area == csc.area)
        core = areas.with_role("tracker")[0]
        assert areas.path(csc.name, cacher.name).delay == pytest.approx(0.005)
        assert areas.path(csc.name, core.name).delay == pytest.approx(0.040)
    for name in ("ci6", "areas"):
        topo = load(found[name])
        scenarios.get(str(topo.settings["name"])).validate(topo)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"host": [{"name": "x", "bridge": "nowhere"}]}, "bridge 'nowhere' is not defined"),
        ({"host": [{"name": "x", "bridge": "core", "roles": ["chef"]}]}, "unknown role(s) chef"),
        ({"host": [{"name": "Bad_Name", "bridge": "core"}]}, "name 'Bad_Name' must be"),
        ({"host": [{"name": "x", "bridge": "core", "delay": "fast"}]}, "is not a duration"),
        ({"host": [{"name": "x", "bridge": "core", "loss": "120%"}]}, "out of range 0-100"),
        ({"host": [{"name": "x", "bridge": "core", "rate": "lots"}]}, "is not a rate"),
        ({"host": [{"name": "x", "bridge": "core", "colour": 1}]}, "unknown key(s) 'colour'"),
        (
            {"host": [{"name": "x", "bridge": "core", "delay": "1ms", "jitter": "2ms"}]},
            "jitter must not exceed the delay",
        ),
        (
            {"host": [{"name": "x", "bridge": "core"}, {"name": "x", "bridge": "core"}]},
            "duplicate host name",
        ),
        ({"host": []}, "no host"),
        ({"subnet": "192.168.0.0/16"}, "must be inside 10.0.0.0/8"),
        ({"link": []}, "bridges are not all connected"),
        (
            {
                "bridge": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
                "link": [{"a": "a", "b": "b"}, {"a": "b", "b": "c"}, {"a": "c", "b": "a"}],
                "host": [{"name": "x", "bridge": "a"}],
            },
            "makes a loop",
        ),
        ({"link": [{"a": "core", "b": "core"}]}, "to itself"),
    ],
)
def test_topology_errors_are_clear(change: dict[str, Any], message: str) -> None:
    with pytest.raises(TopologyError) as info:
        parse(minimal(**change), "bad.toml")
    assert str(info.value).startswith("bad.toml: ")
    assert message in str(info.value)


def test_load_reports_bad_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("name = \n")
    with pytest.raises(TopologyError, match="not valid TOML"):
        load(path)
    with pytest.raises(TopologyError, match="No such file"):
        load(tmp_path / "missing.toml")


# -- link emulation rules -------------------------------------------------------------------------


def test_emulation_rules_match_the_topology() -> None:
    topo = parse(
        minimal(
            host=[
                {"name": "h1", "bridge": "core"},
                {"name": "h2", "bridge": "edge", "delay": "5ms", "jitter": "1ms", "loss": "1%"},
                {"name": "h3", "bridge": "edge"},
                {"name": "h4", "bridge": "core"},
            ]
        )
    )
    rules = linkemu.parse_rules("; ".join(netns.emulation_rules(topo, "h2")))
    by_host = {str(r.network.network_address): r for r in rules}
    assert set(by_host) == {str(topo.hosts[h].address) for h in ("h1", "h3", "h4")}
    for name in ("h1", "h3", "h4"):
        rule, path = by_host[str(topo.hosts[name].address)], topo.path("h2", name)
        assert rule.network.prefixlen == 32
        assert rule.delay == pytest.approx(path.delay)
        assert rule.jitter == pytest.approx(0.001)
        assert rule.loss == pytest.approx(0.01)
        assert rule.rate == 0  # rate is tbf's, in the kernel
    # h1 and h4 share a bridge with no impairment: no rule between them.
    h1_rules = linkemu.parse_rules("; ".join(netns.emulation_rules(topo, "h1")))
    assert str(topo.hosts["h4"].address) not in {str(r.network.network_address) for r in h1_rules}
    # The environment carries them only when netem is missing.
    registry = netns.Registry("p2cdn0000")
    assert "P2PCDN_LINK_EMULATION" in netns.Network(topo, registry).environment("h2")
    no_tbf = netns.Network(topo, registry, tbf=False).environment("h2")["P2PCDN_LINK_EMULATION"]
    rates = {str(r.network.network_address): r.rate for r in linkemu.parse_rules(no_tbf)}
    assert rates[str(topo.hosts["h1"].address)] == 20e6  # the link's rate, across it
    assert rates[str(topo.hosts["h3"].address)] == 0  # same bridge, no rate
    with_netem = netns.Network(topo, registry, netem=True).environment("h2")
    assert with_netem == {netns.RUN_VARIABLE: "p2cdn0000-h2"}


# -- the command line without namespaces ---------------------------------------------------------


def test_lab_refuses_without_root(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def not_root() -> netns.Capabilities:
        return netns.Capabilities(root=False, ip="/usr/sbin/ip", tc=None)

    monkeypatch.setattr(netns, "probe", not_root)
    from lab.cli import main

    ci6 = str(shipped()["ci6"])
    assert main(["lab", "run", ci6, "--scenario", "connectivity"]) == lab_cli.EXIT_UNAVAILABLE
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: p2pcdn lab: must run as root (network namespaces need CAP_NET_ADMIN); "
        "'tc' (iproute2) is not installed"
    ]
    assert main(["lab", "cleanup"]) == lab_cli.EXIT_UNAVAILABLE
    assert main(["lab", "check"]) == lab_cli.EXIT_UNAVAILABLE
    out = capsys.readouterr().out
    assert "root:   no" in out and "tc:     missing" in out


def test_lab_run_rejects_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from lab.cli import main

    ci6 = str(shipped()["ci6"])
    assert main(["lab", "run", ci6, "--scenario", "nope"]) == lab_cli.EXIT_USAGE
    assert "unknown scenario 'nope'" in capsys.readouterr().err
    bad = tmp_path / "t.toml"
    bad.write_text('name = "t"\n[[bridge]]\nname = "b"\n[[host]]\nname = "h"\nbridge = "b"\n')
    assert main(["lab", "run", str(bad), "--scenario", "fast-channel-change"]) == 2
    assert "needs a host with role(s) cacher, csc, portal" in capsys.readouterr().err


def test_metrics_aggregate_and_report(tmp_path: Path) -> None:
    def report(delays: list[float | None], stalls: int, area: str) -> dict[str, Any]:
        return {
            "area": area,
            "channels": [{"startup_delay": d, "stalls": stalls} for d in delays],
            "play_time": 9.0,
            "stall_time": 1.0 if stalls else 0.0,
            "bytes": {"cacher": 800, "peer": 100, "overlay": 0, "source": 100},
        }

    data = metrics.aggregate_csc(
        "fast-channel-change",
        "t",
        {
            "push": [report([0.01, 0.02], 0, "a"), report([0.03, None], 1, "b")],
            "no-push": [report([0.2, 0.3], 0, "a")],
            "no-hints": [report([0.5, 0.6], 0, "a")],
        },
    )
    push = data["phases"]["push"]
    assert push["startup_delays"] == [0.01, 0.02, 0.03]
    assert push["no_first_frame"] == 1 and push["channel_changes"] == 4
    assert push["q1"] == pytest.approx(18 / 19)
    assert push["q2"] == pytest.approx(0.5)
    assert push["bytes_share"]["cacher"] == pytest.approx(0.8)
    assert push["startup_delay_cdf"][-1] == (0.03, 1.0)
    # The first channel of each viewer is its tune-in; the targets are about the changes.
    assert push["tune_in_delays"] == [0.01, 0.03] and push["change_delays"] == [0.02]
    assert data["phases"]["no-push"]["change_delay_p95"] == pytest.approx(0.3)
    assert data["push_speedups_p95"] == {
        "no-push": pytest.approx(0.3 / 0.02),
        "no-hints": pytest.approx(0.6 / 0.02),
    }
    # "Without push" is the CDN without F4 when that phase ran.
    assert data["push_baseline"] == "no-hints"
    assert data["push_speedup_p95"] == pytest.approx(0.6 / 0.02)
    assert metrics.sanity_problems(data) == []
    data["targets"] = metrics.push_targets(data, {"csc-a": 0.010, "csc-b": 0.030, "c": 0.02})
    assert data["targets"]["push_p95"]["bound"] == pytest.approx(0.030)
    assert data["targets"]["push_p95"]["value"] == pytest.approx(0.02)
    assert data["targets"]["push_p95"]["met"] is True
    assert data["targets"]["push_speedup_p95"]["met"] is True
    paths = metrics.write_outputs(tmp_path, data)
    names = {p.name for p in paths}
    assert {"report.md", "results.json", "startup_delay_cdf.png", "bytes_by_origin.png"} <= names
    assert (tmp_path / "startup_delay_cdf.png").read_bytes()[:4] == b"\x89PNG"
    text = (tmp_path / "report.md").read_text()
    assert "| push | 2 | 4 | 1 | 20.0 ms / 20.0 ms | 20.0 ms / 29.0 ms |" in text
    assert "- no-push (cachers prefetch the hinted heads but do not push them): 15.0×" in text
    assert "than without (no-hints) at p95: 30.0×, met" in text
    assert "= 30.0 ms: met" in text
    broken = metrics.aggregate_csc("x", "t", {"push": []})
    assert metrics.sanity_problems(broken) == ["push: no CSC report"]


def test_machine_load_is_sampled_and_reported(tmp_path: Path) -> None:
    from lab.runner import MachineLoad

    with MachineLoad(interval=0.05) as load:
        end = time.monotonic() + 0.4
        while time.monotonic() < end:  # keep one core busy for 0.4 s
            pass
    summary = load.summary()
    assert summary["samples"] >= 3 and summary["cores"] == os.cpu_count()
    assert 0.0 < summary["cpu_busy_mean"] <= 1.0 and summary["load1_max"] >= 0.0
    data = metrics.aggregate_csc("x", "t", {"push": []})
    data["machine"] = summary
    text = "\n".join(metrics.report_lines(data))
    assert f"shares its {os.cpu_count()} cores): CPU busy" in text


def test_push_bound_uses_measured_rtt_and_first_frame() -> None:
    topo = load(shipped()["areas"])
    first_frame = 8 * (1024 + 64) * 8 / 50e6  # 8 chunks at the viewer's 50 Mbit/s link
    bounds = scenarios.cacher_rtt(topo, {"csc-a1": 0.0113})
    assert bounds["csc-a1"] == pytest.approx(0.0113 + first_frame)
    assert bounds["csc-b2"] == pytest.approx(0.010 + first_frame)  # the topology's 5 + 5 ms
    assert set(bounds) == {h.name for h in topo.with_role("csc")}


def test_locality_and_tracker_messages(tmp_path: Path) -> None:
    def report(area: str, by_peer: list[tuple[str | None, str, int]]) -> dict[str, Any]:
        return {
            "area": area,
            "channels": [{"startup_delay": 0.02, "stalls": 0}],
            "play_time": 5.0,
            "stall_time": 0.0,
            "bytes": {"cacher": sum(n for _, _, n in by_peer)},
            "bytes_by_peer": [{"addr": a, "role": r, "bytes": n} for a, r, n in by_peer],
            "overlay_hops": [2, 3] if area == "b" else [],
        }

    area_of = {"10.0.1.10": "a", "10.0.1.11": "a", "10.0.2.10": "b", "10.0.0.10": "core"}
    reports = [
        report("a", [("10.0.1.10:7100", "cacher", 700), ("10.0.2.10:7100", "cacher", 100)]),
        report("a", [("10.0.1.11:4000", "peer", 100), ("10.0.0.10:5000", "source", 100)]),
        report("b", [("10.0.2.10:7100", "cacher", 900), (None, "overlay", 100)]),
    ]
    data = metrics.aggregate_csc("area-locality", "t", {"locality": reports}, area_of)
    phase = data["phases"]["locality"]
    loc = phase["locality"]
    assert (loc["inside_bytes"], loc["outside_bytes"]) == (1700, 300)
    assert loc["inside_share"] == pytest.approx(0.85)
    assert loc["by_area"]["a"]["share"] == pytest.approx(0.8)
    assert loc["by_area"]["b"]["share"] == pytest.approx(0.9)
    assert loc["by_role"]["cacher"] == {"inside": 1600, "outside": 100}
    assert phase["overlay_hops"] == {"fetches": 2, "mean": 2.5, "max": 3}
    stats = {
        "tracker": {
            "requests": 9,
            "daemon": {
                "finds": 4,
                "connects": 3,
                "stat_reports": 2,
                "batch_reports": 1,
                "swarm_reports": 4,
            },
            "overlay": {
                "peer_batch_stores": 2,
                "swarm_peers_stores": 5,
                "fetches": 1,
                "fetch_failures": 0,
                "overlay_answers": 1,
            },
        },
        "tracker-1": {"requests": 1, "daemon": {"finds": 1}},
    }
    messages = metrics.tracker_messages(stats)
    assert messages["trackers"]["tracker"]["batch_reports"] == 1
    assert messages["trackers"]["tracker"]["overlay_peer_batch_stores"] == 2
    assert "overlay_fetches" not in messages["trackers"]["tracker-1"]
    assert messages["total"]["finds"] == 5 and messages["total"]["requests"] == 10
    data["tracker_messages"] = messages
    data["targets"] = {"locality": {"what": "inside", "value": 0.85, "bound": 0.8, "met": True}}
    metrics.write_outputs(tmp_path, data)
    text = (tmp_path / "report.md").read_text()
    assert "| locality | 1700 | 300 | 85.0 % | a: 80.0 %, b: 90.0 % |" in text
    assert "| tracker | 1 | 3 | 4 |" in text
    assert "inside: 0.8500 ≥ 0.8: met" in text
    assert "2 fetch(es), mean 2.50 hops, max 3" in text


class _Started:
    """A daemon that started: the storage overlay setup only waits for its first lines."""

    def wait_lines(self, count: int, timeout: float) -> list[str]:
        return ["ready"] * count


class _ConfigOnlyRun(LabRun):
    """A LabRun that writes configurations but builds no namespace and starts nothing."""

    def __init__(self, topology: Topology, out_dir: Path) -> None:
        super().__init__(topology, scenarios.get("fast-channel-change", {}), out_dir)
        self.hosts = {name: f"127.0.0.{i + 2}" for i, name in enumerate(topology.hosts)}
        self.started: list[tuple[str, str, list[str]]] = []

    def address(self, host: str) -> str:
        return self.hosts[host]

    def start(self, name: str, host: str, args: Any, **_: Any) -> Any:
        self.started.append((name, host, list(args)))
        return _Started()


def test_cachers_join_the_storage_overlay_as_clients(tmp_path: Path) -> None:
    # A cacher only reads segments from the storage overlay. Joined as a RELOAD peer after
    # the sources had published, it took over part of the ring (RFC 6940 §10.5): on the
    # areas topology, ch2's segments 2 and 6 were "not found" at every replica, so every
    # viewer stalled on its second channel. It must be a client (§3.2.1, §4.2) that attaches
    # through the overlay's first node and stores nothing.
    from reload.aio import load_daemon_config

    topo = load(shipped()["ci6"])
    run = _ConfigOnlyRun(topo, tmp_path)
    scenario = scenarios.get("fast-channel-change", {})
    assert isinstance(scenario, scenarios.FastChannelChange)
    scenario._storage_overlay(run)
    storage = [entry for entry in run.started if entry[0].startswith("storage-")]
    assert len(storage) == 2 * len(topo.with_role("storage"))
    bootstrap = run.values["overlay_bootstrap"]
    cachers = topo.with_role("cacher")
    assert cachers
    for host in cachers:
        config = load_daemon_config(Path(run.values[f"overlay-{host.name}"]))
        assert config.client, f"{host.name}'s overlay node would join as a peer"
        assert config.bootstrap == [bootstrap]
        assert config.listen[0] == run.address(host.name)
    for _, _, args in storage:  # the storage nodes stay peers: they hold the segments
        assert not load_daemon_config(Path(args[-1])).client


def test_relative_out_dir_gives_absolute_config_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `lab run ... --out lab-out/x` wrote the storage overlay's daemon.toml into cacher.toml
    # as a relative path, which the cacher resolved against cacher.toml's own directory:
    # every cacher died at start.
    monkeypatch.chdir(tmp_path)
    run = LabRun(load(shipped()["ci6"]), scenarios.get("fast-channel-change", {}), Path("out"))
    assert run.out_dir == tmp_path / "out"
    assert run.config_dir.is_absolute() and run.logs_dir.is_absolute()
    assert run.host_dir("core").is_absolute()


def test_every_declared_scenario_is_written() -> None:
    topo = load(shipped()["areas"])
    for name, cls in scenarios.SCENARIOS.items():
        assert cls.implemented, name
        scenarios.get(name).validate(topo)


# -- namespaces ------------------------------------------------------------------------------------


def in_ns(network: netns.Network, host: str, code: str, timeout: float = 20.0) -> str:
    argv = network.exec_argv(host, [sys.executable, "-c", code])
    return netns.run(argv, timeout=timeout).stdout


@needs_namespaces
def test_three_hosts_tbf_link_echo_and_clean_teardown(tmp_path: Path) -> None:
    topo = parse(minimal())
    registry = netns.Registry(netns.new_prefix(), tmp_path / "registry.json")
    network = netns.Network(topo, registry)
    try:
        network.build()
        assert {network.namespace(h) for h in topo.hosts} <= set(netns.list_namespaces())
        assert "tbf" in network.qdiscs("h2") and "rate 4Mbit" in network.qdiscs("h2")
        assert "tbf" not in network.qdiscs("h3")
        # UDP echo h1 → h3 across the bridge link.
        server = subprocess.Popen(
            network.exec_argv(
                "h3",
                [
                    sys.executable,
                    "-m",
                    "lab.scenarios",
                    "echo-server",
                    network.address("h3"),
                    "9901",
                    "--seconds",
                    "20",
                ],
            ),
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(REPO), **network.environment("h3")),
        )
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            out = netns.run(
                network.exec_argv(
                    "h1",
                    [
                        sys.executable,
                        "-m",
                        "lab.scenarios",
                        "echo-client",
                        "--port",
                        "9901",
                        "--count",
                        "3",
                        network.address("h3"),
                    ],
                ),
                timeout=30,
            ).stdout
            assert '"received": 3' in out
        finally:
            server.kill()
            server.wait(timeout=10)
        # tbf limits h2's link to 4 Mbit/s: 300 kB take ≥ 0.5 s (they take ms unlimited).
        receiver = subprocess.Popen(
            network.exec_argv(
                "h2",
                [
                    sys.executable,
                    "-c",
                    "import socket,time\n"
                    f"s=socket.create_server(({network.address('h2')!r},9902));print('up',flush=True)\n"
                    "c,_=s.accept();n=0;t=time.monotonic()\n"
                    "while (b:=c.recv(65536)):n+=len(b)\n"
                    "print(n,time.monotonic()-t,flush=True)\n",
                ],
            ),
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert receiver.stdout is not None and receiver.stdout.readline().strip() == "up"
            in_ns(
                network,
                "h1",
                "import socket\n"
                f"c=socket.create_connection(({network.address('h2')!r},9902),timeout=10)\n"
                "c.sendall(bytes(300000));c.close()\n",
            )
            received, seconds = receiver.stdout.readline().split()
            assert int(received) == 300000
            assert float(seconds) >= 0.45
        finally:
            receiver.kill()
            receiver.wait(timeout=10)
    finally:
        problems = network.teardown()
    assert problems == []
    assert_clean(registry.prefix)
    assert not (netns.STATE_DIR / f"{registry.prefix}.json").exists()


@needs_namespaces
def test_failure_mid_setup_tears_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    topo = parse(minimal())
    registry = netns.Registry(netns.new_prefix(), tmp_path / "registry.json")
    network = netns.Network(topo, registry)
    original = netns.Network._add_host
    calls = []

    def flaky(self: netns.Network, host: Any) -> None:
        calls.append(host.name)
        if len(calls) == 2:
            raise netns.CommandError("injected failure")
        original(self, host)

    monkeypatch.setattr(netns.Network, "_add_host", flaky)
    with pytest.raises(netns.CommandError, match="injected"):
        network.build()
    assert network.namespace("h1") in netns.list_namespaces()  # it was half built
    assert network.teardown() == []
    assert_clean(registry.prefix)


class _Failing(scenarios.Connectivity):
    """Starts its echo servers, then fails in the middle of the run."""

    def run(self, run: LabRun) -> None:
        run.sleep(0.2)
        run.values["sockets"] = run.sockets("h1")
        run.values["bound_elsewhere"] = run.bound_elsewhere()
        raise RuntimeError("injected mid-run failure")


class _DyingDaemon(scenarios.Scenario):
    name = "dying"

    def setup(self, run: LabRun) -> None:
        run.start_command("short", "h1", [sys.executable, "-c", "import time; time.sleep(0.3)"])

    def run(self, run: LabRun) -> None:
        run.sleep(20.0)  # interrupted by the daemon's death


@needs_namespaces
def test_failed_run_and_dead_daemon_leave_nothing(tmp_path: Path) -> None:
    topo = parse(minimal())
    run = LabRun(topo, _Failing({"echo_seconds": 60.0}), tmp_path / "fail")
    result = run.execute()
    assert result.status == "failed" and "injected mid-run failure" in (result.error or "")
    assert result.teardown_problems == []
    assert all(not d.running for d in run.daemons.values()) and len(run.daemons) == 3
    # The echo servers bound their host's lab address and nothing else.
    assert ("udp", f"{run.address('h1')}:{scenarios.ECHO_PORT}") in run.values["sockets"]
    assert run.values["bound_elsewhere"] == {}
    assert_clean(run.prefix)

    started = time.monotonic()
    run = LabRun(topo, _DyingDaemon(), tmp_path / "die")
    result = run.execute()
    assert time.monotonic() - started < 15
    assert result.status == "failed"
    assert result.error is not None and "short on h1 exited with status 0" in result.error
    assert_clean(run.prefix)
    assert '"status": "failed"' in (tmp_path / "die" / "run.json").read_text()


@needs_namespaces
def test_emulated_delay_shows_in_udp_echo(tmp_path: Path) -> None:
    topo = parse(
        {
            "name": "delay",
            "bridge": [{"name": "lan"}],
            "host": [
                {"name": "near", "bridge": "lan"},
                {"name": "far", "bridge": "lan", "delay": "20ms"},
            ],
        }
    )
    run = LabRun(topo, scenarios.get("connectivity", {"probes": 4}), tmp_path)
    result = run.execute()
    assert result.ok, result.error
    pairs = {(p["src"], p["dst"]): p for p in result.metrics["pairs"]}
    for pair in pairs.values():
        assert pair["received"] == 4
        # 20 ms each way (both ends emulate, as the daemons do): RTT ≥ 40 ms, and not much more.
        assert pair["expected_rtt"] == pytest.approx(0.040)
        assert 0.040 <= pair["rtt_min"] < 0.080
    assert (tmp_path / "report.md").exists() and (tmp_path / "rtt.png").exists()
    assert_clean(run.prefix)


@needs_namespaces
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_tears_down(tmp_path: Path, signum: signal.Signals) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lab.cli",
            "lab",
            "run",
            str(shipped()["ci6"]),
            "--scenario",
            "connectivity",
            "--set",
            "probes=400",
            "--out",
            str(out),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        prefix = ""
        while time.monotonic() < deadline:  # bounded by the deadline
            line = proc.stderr.readline()
            if "with prefix" in line:
                prefix = line.split("with prefix ")[1].split()[0]
            if "started probe-" in line or not line:
                break
        assert prefix, "the run did not start"
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == 128 + signum
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert_clean(prefix)
    assert '"status": "interrupted"' in (out / "run.json").read_text()


@needs_namespaces
def test_cleanup_finds_leftovers() -> None:
    # A run killed outright leaves its namespace and process: `lab cleanup` removes both.
    leftover = f"{netns.new_prefix()}-host"
    netns.run(["ip", "netns", "add", leftover])
    sleeper = subprocess.Popen(
        ["ip", "netns", "exec", leftover, "sleep", "60"],
        env=dict(os.environ, **{netns.RUN_VARIABLE: leftover}),
    )
    try:
        report = netns.cleanup(only=leftover)
        assert leftover in report.namespaces and sleeper.pid in report.processes
        assert sleeper.wait(timeout=10) != 0
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait(timeout=10)
    assert_clean(leftover[:9])


@needs_namespaces
def test_cleanup_leaves_a_run_in_progress_alone() -> None:
    prefix = netns.new_prefix()
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    registry = netns.Registry(prefix, owner=owner.pid)
    try:
        registry.add_namespace(f"{prefix}-busy")
        netns.run(["ip", "netns", "add", f"{prefix}-busy"])
        assert prefix in netns.active_runs()
        report = netns.cleanup()
        assert prefix in report.skipped and f"{prefix}-busy" in netns.list_namespaces()
        assert f"left run {prefix} alone: it is still running" in report.lines()
        report = netns.cleanup(force=True, only=prefix)
        assert f"{prefix}-busy" in report.namespaces
    finally:
        owner.kill()
        owner.wait(timeout=10)
        netns.run(["ip", "netns", "del", f"{prefix}-busy"], check=False)
        registry.remove()
    assert_clean(prefix)


def _cdn_daemons_exist() -> bool:
    return all((REPO / p).exists() for p in ("cacher/daemon.py", "csc/client.py"))


@needs_namespaces
@pytest.mark.slow
@pytest.mark.skipif(not _cdn_daemons_exist(), reason="the cacher and CSC daemons are not there yet")
def test_ci6_fast_channel_change_end_to_end(tmp_path: Path) -> None:
    topo: Topology = load(shipped()["ci6"])
    scenario = scenarios.get("fast-channel-change", topo.settings)
    started = time.monotonic()
    run = LabRun(topo, scenario, tmp_path)
    result = run.execute()
    elapsed = time.monotonic() - started
    assert result.ok, f"{result.error}; logs in {tmp_path / 'logs'}"
    assert elapsed <= 180
    data = result.metrics
    assert set(data["phases"]) == {"push", "no-push", "no-hints"}
    assert metrics.sanity_problems(data) == []
    for phase in data["phases"].values():
        assert phase["viewers"] == len(topo.with_role("csc"))
        assert phase["channel_changes"] == phase["viewers"] * scenario.option("channels", 4)
    for name in ("report.md", "results.json", "startup_delay_cdf.png", "bytes_by_origin.png"):
        assert (tmp_path / name).stat().st_size > 0
    # Locality from the CSCs' bytes per serving peer; tracker messages from its stop log.
    for phase in data["phases"].values():
        assert 0.0 <= phase["locality"]["inside_share"] <= 1.0
    total = data["tracker_messages"]["total"]
    assert total["finds"] > 0 and total["batch_reports"] + total["swarm_reports"] > 0
    assert_clean(run.prefix)


@needs_namespaces
@pytest.mark.slow
@pytest.mark.skipif(not _cdn_daemons_exist(), reason="the cacher and CSC daemons are not there yet")
def test_ci6_node_kill(tmp_path: Path) -> None:
    topo = load(shipped()["ci6"])
    settings = {k: v for k, v in topo.settings.items() if k != "name"}
    # Longer than the CSC's starvation timeout (2 s): a fresh viewer may first be given peers
    # that were registered at the killed tracker and left since (their entries stay in the
    # tracker overlay for its lifetime); the rescue by the source must fit in one channel.
    settings["dwell"] = 4.0
    run = LabRun(topo, scenarios.get("node-kill", settings), tmp_path)
    result = run.execute()
    assert result.ok, f"{result.error}; logs in {tmp_path / 'logs'}"
    data = result.metrics
    assert run.daemons["tracker-2"].returncode == -signal.SIGKILL
    assert run.daemons["storage-1"].returncode == -signal.SIGKILL
    assert metrics.sanity_problems(data) == []
    kills = data["node_kill"]
    # Viewers keep playing: every channel change after the kill reaches its first frame.
    assert kills["after"]["total"] > 0 and kills["after"]["ok"] == kills["after"]["total"]
    assert data["phases"]["after"]["q1"] >= 0.9
    # The surviving viewer tracker answered FINDs with peers from the tracker overlay, and
    # the storage overlay still serves every segment after its node died.
    assert data["tracker_messages"]["trackers"]["tracker-1"]["overlay_overlay_answers"] > 0
    probe = data["overlay_probe"][-1]
    assert probe["fetches"] > 0 and probe["ok"] >= 0.9 * probe["fetches"]
    assert "Killed (SIGKILL)" in (tmp_path / "report.md").read_text()
    assert_clean(run.prefix)


@needs_namespaces
@pytest.mark.slow
@pytest.mark.skipif(not _cdn_daemons_exist(), reason="the cacher and CSC daemons are not there yet")
def test_ci6_cacher_restart(tmp_path: Path) -> None:
    topo = load(shipped()["ci6"])
    settings = {k: v for k, v in topo.settings.items() if k != "name"}
    run = LabRun(topo, scenarios.get("cacher-restart", settings), tmp_path)
    result = run.execute()
    assert result.ok, f"{result.error}; logs in {tmp_path / 'logs'}"
    data = result.metrics
    assert data["killed"] == "cacher-cacher-a-restart"
    assert run.daemons["cacher-cacher-a-restart"].returncode == -signal.SIGKILL
    # The restarted cacher kept its on-disk cache and told the tracker in one batch report.
    assert data["restored_swarms"] >= 1
    assert metrics.sanity_problems(data) == []
    assert "restored" in (tmp_path / "report.md").read_text()
    assert_clean(run.prefix)
