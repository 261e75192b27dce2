"""The lab runner: set up → configure → start daemons → scenario → collect → tear down.

:class:`LabRun` owns one run of a scenario on a topology. :meth:`LabRun.execute` builds the
network (:mod:`lab.netns`), lets the scenario write configurations and certificates and start
its daemons on their hosts (``ip netns exec``), runs the scenario, collects the daemons' logs
and JSON output into the output directory, computes metrics (:mod:`lab.metrics`), and tears
everything down **always**: after success, after any failure, on Ctrl-C or SIGTERM, and when
a daemon the scenario needs dies (:class:`DaemonDied`).

Output directory layout::

    OUT/run.json            what ran: topology, scenario, prefix, netem or emulator, status
    OUT/registry.json       namespaces and processes the run created
    OUT/config/…            generated configurations and certificates, per host
    OUT/logs/NAME.out|.err  each daemon's stdout and stderr
    OUT/results.json        metrics (lab/metrics.py), OUT/*.png plots, OUT/report.md
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from lab import netns
from lab.topology import Topology

if TYPE_CHECKING:
    from lab.scenarios import Scenario

log = logging.getLogger(__name__)

REPO: Final = Path(__file__).resolve().parent.parent
#: Longest a daemon may take to print what shows it is ready.
READY_TIMEOUT: Final = 60.0


class LabError(RuntimeError):
    """A lab run that could not complete; the message says why in one line."""


class DaemonDied(LabError):
    """A daemon the scenario needs exited; the message quotes its last stderr line."""


class Terminated(BaseException):
    """SIGTERM arrived (a BaseException, like KeyboardInterrupt, so nothing swallows it)."""


class Daemon:
    """One process on a lab host, its stdout and stderr in ``LOGS/NAME.out|.err``."""

    def __init__(
        self,
        name: str,
        host: str,
        argv: Sequence[str],
        logs: Path,
        env: Mapping[str, str],
        *,
        required: bool = True,
    ) -> None:
        self.name = name
        self.host = host
        self.argv = list(argv)
        self.required = required
        self.out_path = logs / f"{name}.out"
        self.err_path = logs / f"{name}.err"
        self.started = time.monotonic()
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=dict(env),
                start_new_session=True,  # its own process group: signals reach its children
            )
        self.pid = self.process.pid
        #: Set when the runner stopped it on purpose (its exit is not a failure).
        self.stopping = False
        #: What :meth:`LabRun.respawn` starts again: the command inside the namespace and the
        #: environment the scenario added.
        self.command: list[str] = []
        self.extra_env: dict[str, str] = {}

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def stdout_lines(self) -> list[str]:
        try:
            return self.out_path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def stderr_tail(self, lines: int = 5) -> list[str]:
        try:
            return self.err_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return []

    def wait_lines(self, count: int, timeout: float = READY_TIMEOUT) -> list[str]:
        """Wait until stdout has ``count`` lines; :class:`DaemonDied` if it exits first,
        :class:`LabError` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:  # bounded by the deadline
            lines = self.stdout_lines()
            if len(lines) >= count:
                return lines
            if not self.running:
                raise self.died()
            if time.monotonic() >= deadline:
                raise LabError(
                    f"{self.name} on {self.host} printed {len(lines)} of {count} lines in "
                    f"{timeout:g} s; stderr: {' | '.join(self.stderr_tail(3))}"
                )
            time.sleep(0.05)

    def wait_exit(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the process to exit; its status or None."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def died(self) -> DaemonDied:
        tail = " | ".join(self.stderr_tail(3)) or "no stderr"
        return DaemonDied(
            f"{self.name} on {self.host} exited with status {self.returncode}: {tail}"
        )

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def stop(self, grace: float = netns.STOP_GRACE) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit status."""
        self.stopping = True
        if self.running:
            self.signal(signal.SIGTERM)
            if self.wait_exit(grace) is None:
                self.signal(signal.SIGKILL)
                self.wait_exit(5.0)
        return self.returncode

    def kill(self) -> None:
        """SIGKILL at once (a crash, for failure scenarios)."""
        self.stopping = True
        self.signal(signal.SIGKILL)
        self.wait_exit(5.0)


@dataclass
class RunResult:
    """What :meth:`LabRun.execute` returns."""

    status: str  # "ok", "failed", "interrupted"
    out_dir: Path
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    teardown_problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok" and not self.teardown_problems


class LabRun:
    """One run of ``scenario`` on ``topology`` with its output in ``out_dir``."""

    def __init__(
        self,
        topology: Topology,
        scenario: Scenario,
        out_dir: Path,
        *,
        netem: bool | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.topology = topology
        self.scenario = scenario
        # Absolute: generated configurations name each other's files, and a daemon resolves
        # a relative path against its own configuration file's directory.
        out_dir = out_dir.absolute()
        self.out_dir = out_dir
        self.config_dir = out_dir / "config"
        self.logs_dir = out_dir / "logs"
        self.prefix = netns.new_prefix()
        self.registry = netns.Registry(self.prefix, out_dir / "registry.json")
        self._netem = netem
        self.network: netns.Network | None = None
        self.daemons: dict[str, Daemon] = {}
        self.progress = progress or (lambda text: log.info("%s", text))
        #: Free-form values scenarios share between their steps (addresses, URLs, tokens).
        self.values: dict[str, Any] = {}

    # -- for scenarios -------------------------------------------------------------------

    @property
    def net(self) -> netns.Network:
        if self.network is None:
            raise LabError("the network is not built yet")
        return self.network

    def address(self, host: str) -> str:
        """The 10.x address of ``host``: the one address its daemons bind."""
        return self.net.address(host)

    def host_dir(self, host: str) -> Path:
        """``OUT/config/HOST``: configurations, certificates and state of ``host``'s daemons."""
        path = self.config_dir / host
        path.mkdir(parents=True, exist_ok=True)
        return path

    def start(
        self,
        name: str,
        host: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        required: bool = True,
    ) -> Daemon:
        """Start ``p2pcdn ARGS`` on ``host`` as daemon ``name`` (unique in the run).
        ``required``: its exit before the runner stops it fails the run."""
        return self.start_command(
            name, host, [sys.executable, "-m", "lab.cli", *args], env=env, required=required
        )

    def start_command(
        self,
        name: str,
        host: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        required: bool = True,
    ) -> Daemon:
        """Start ``command`` on ``host`` (see :meth:`start`)."""
        if name in self.daemons:
            raise LabError(f"daemon name {name!r} used twice")
        argv = self.net.exec_argv(host, command)
        environment = dict(os.environ)
        environment.update(
            PYTHONPATH=str(REPO),
            PYTHONUNBUFFERED="1",
            P2PCDN_LINK_EMULATION_SEED=f"{self.prefix}-{name}",
        )
        environment.pop("P2PCDN_LINK_EMULATION", None)
        environment.update(self.net.environment(host))
        environment.update(env or {})
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        shown = {k: ("…" if "TOKEN" in k else v) for k, v in (env or {}).items()}
        (self.logs_dir / f"{name}.cmd").write_text(
            " ".join(argv) + "\n" + "".join(f"{k}={v}\n" for k, v in shown.items())
        )
        daemon = Daemon(name, host, argv, self.logs_dir, environment, required=required)
        daemon.command, daemon.extra_env = list(command), dict(env or {})
        self.registry.add_pid(daemon.pid)
        self.daemons[name] = daemon
        self.progress(f"started {name} on {host} ({self.address(host)})")
        return daemon

    def respawn(self, daemon: Daemon, name: str) -> Daemon:
        """Start ``daemon``'s command again on its host as ``name`` (after :meth:`Daemon.kill`
        or :meth:`Daemon.stop`: a restart with the same configuration and state on disk)."""
        if daemon.running:
            raise LabError(f"{daemon.name} is still running")
        return self.start_command(
            name, daemon.host, daemon.command, env=daemon.extra_env, required=daemon.required
        )

    def sockets(self, host: str) -> list[tuple[str, str]]:
        """(protocol, local address) of every listening TCP and bound UDP socket in
        ``host``'s namespace (``ss``): what its daemons bind."""
        out = netns.run(self.net.exec_argv(host, ["ss", "-Hlntu"]), check=False).stdout
        found = []
        for line in out.splitlines():
            words = line.split()
            if len(words) >= 5:
                found.append((words[0], words[4]))
        return found

    def bound_elsewhere(self) -> dict[str, list[str]]:
        """Sockets not bound to their host's lab address, by host (empty: all are)."""
        wrong: dict[str, list[str]] = {}
        for host in self.topology.hosts:
            mine = self.address(host)
            for proto, local in self.sockets(host):
                if local.rsplit(":", 1)[0].strip("[]") != mine:
                    wrong.setdefault(host, []).append(f"{proto} {local}")
        return wrong

    def check(self) -> None:
        """:class:`DaemonDied` when a required daemon exited without being stopped."""
        for daemon in self.daemons.values():
            if daemon.required and not daemon.stopping and not daemon.running:
                raise daemon.died()

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` while watching the daemons (:meth:`check` every 0.1 s)."""
        deadline = time.monotonic() + seconds
        while True:  # bounded by the deadline
            self.check()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.1, left))

    def wait_for(
        self, daemons: Sequence[Daemon], timeout: float, what: str = "to finish"
    ) -> dict[str, int]:
        """Wait until every one of ``daemons`` has exited (e.g. CSCs that zap and stop),
        watching the others; their exit statuses."""
        deadline = time.monotonic() + timeout
        while True:  # bounded by the deadline
            if all(not d.running for d in daemons):
                return {d.name: d.returncode or 0 for d in daemons}
            for d in self.daemons.values():
                if d not in daemons and d.required and not d.stopping and not d.running:
                    raise d.died()
            if time.monotonic() >= deadline:
                late = [d.name for d in daemons if d.running]
                raise LabError(f"{', '.join(late)} did not finish {what} within {timeout:g} s")
            time.sleep(0.1)

    # -- the run -------------------------------------------------------------------------

    def execute(self) -> RunResult:
        """Run everything and tear down whatever happens (module docstring)."""
        started = time.monotonic()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        result = RunResult("failed", self.out_dir)
        with _sigterm_raises():
            try:
                try:
                    self._setup()
                    self.progress(f"scenario {self.scenario.name}: running")
                    with MachineLoad() as load:
                        self.scenario.run(self)
                    self.values["machine"] = load.summary()
                    self._stop_daemons()
                    result.status = "ok"
                except KeyboardInterrupt:
                    result.status, result.error = "interrupted", "interrupted (SIGINT)"
                except Terminated:
                    result.status, result.error = "interrupted", "interrupted (SIGTERM)"
                except (
                    LabError,
                    netns.CommandError,
                    netns.LabUnavailable,
                    OSError,
                    ValueError,
                ) as exc:
                    result.error = f"{type(exc).__name__}: {exc}"
                except Exception as exc:  # a bug in a scenario: report it, still tear down
                    log.exception("scenario failed")
                    result.error = f"{type(exc).__name__}: {exc}"
                finally:
                    result.teardown_problems = self._teardown()
                if result.status == "ok":
                    try:
                        result.metrics = self._collect()
                    except Exception as exc:  # a bug in a scenario's collect or the plots
                        log.exception("collecting the results failed")
                        result.status, result.error = "failed", f"collect: {exc}"
            except (KeyboardInterrupt, Terminated):  # a second signal during teardown
                result.status, result.error = "interrupted", "interrupted during teardown"
                result.teardown_problems = self._teardown()
        result.seconds = time.monotonic() - started
        self._write_run(result)
        return result

    def _setup(self) -> None:
        self.scenario.validate(self.topology)
        caps = netns.probe()
        netns.require(caps)
        use_netem = caps.netem if self._netem is None else self._netem and caps.netem
        self.values["netem"] = use_netem
        self.network = netns.Network(self.topology, self.registry, netem=use_netem, tbf=caps.tbf)
        self._write_run(RunResult("running", self.out_dir))
        self.progress(
            f"building {len(self.topology.hosts)} hosts with prefix {self.prefix} "
            f"({'netem' if use_netem else 'userspace link emulation'})"
        )
        self.network.build()
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.scenario.setup(self)

    def _stop_daemons(self) -> None:
        # Reverse start order: clients before the services they use.
        for daemon in reversed(list(self.daemons.values())):
            daemon.stop()

    def _teardown(self) -> list[str]:
        for daemon in reversed(list(self.daemons.values())):
            if daemon.running:
                daemon.stop(grace=2.0)
        if self.network is None:
            network = netns.Network(self.topology, self.registry)
        else:
            network = self.network
        problems = network.teardown()
        if problems:
            self.progress(f"teardown left: {', '.join(problems)}")
        else:
            self.progress("teardown: nothing left")
        return problems

    def _collect(self) -> dict[str, Any]:
        from lab import metrics

        outputs = {name: d.stdout_lines() for name, d in self.daemons.items()}
        data = self.scenario.collect(self, outputs)
        data.setdefault("machine", self.values.get("machine"))
        metrics.write_outputs(self.out_dir, data)
        return data

    def _write_run(self, result: RunResult) -> None:
        info = {
            "topology": self.topology.name,
            "scenario": self.scenario.name,
            "prefix": self.prefix,
            "netem": self.values.get("netem"),
            "status": result.status,
            "error": result.error,
            "teardown_problems": result.teardown_problems,
            "seconds": round(result.seconds, 3),
            "hosts": {
                h.name: {"address": str(h.address), "roles": list(h.roles), "area": h.area}
                for h in self.topology.hosts.values()
            },
            "daemons": {
                name: {"host": d.host, "returncode": d.returncode}
                for name, d in self.daemons.items()
            },
        }
        with contextlib.suppress(OSError):
            (self.out_dir / "run.json").write_text(json.dumps(info, indent=1) + "\n")


class MachineLoad:
    """The machine's CPU use while a scenario runs (every host shares this machine's cores,
    so a saturated CPU shows as stalls and late chunks that no network caused): samples of
    /proc/stat's busy share every ``interval`` seconds, in a thread."""

    def __init__(self, interval: float = 2.0) -> None:
        self.interval = interval
        self.busy: list[float] = []
        self.load1: list[float] = []
        self.series: list[tuple[float, float]] = []  # (Unix time, busy share)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="machine-load", daemon=True)

    def __enter__(self) -> MachineLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    @staticmethod
    def _cpu_times() -> tuple[int, int] | None:
        """(busy, total) jiffies of all CPUs, None where /proc/stat is unreadable."""
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields) - idle, sum(fields)

    def _sample(self) -> None:
        last = self._cpu_times()
        while not self._stop.wait(self.interval):  # until __exit__
            now = self._cpu_times()
            if now is not None and last is not None and now[1] > last[1]:
                self.busy.append((now[0] - last[0]) / (now[1] - last[1]))
                self.series.append((round(time.time(), 3), round(self.busy[-1], 3)))
            last = now
            with contextlib.suppress(OSError):
                self.load1.append(os.getloadavg()[0])

    def summary(self) -> dict[str, Any]:
        busy = sorted(self.busy)
        return {
            "cores": os.cpu_count(),
            "samples": len(busy),
            "cpu_busy_mean": sum(busy) / len(busy) if busy else None,
            "cpu_busy_p90": busy[int(0.9 * (len(busy) - 1))] if busy else None,
            "load1_max": max(self.load1) if self.load1 else None,
            "cpu_busy_series": self.series,
        }


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` (main thread only), so ``finally``
    blocks — the teardown — run as they do for Ctrl-C."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave SIGTERM alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
