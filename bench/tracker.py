"""Tracker benchmark (issue 3): PPSP-TP request rates and the batch availability report.

1. **Requests per second** for CONNECT, FIND and STAT_REPORT, for binary over UDP, binary
   over TCP and RFC 7846 JSON over HTTP/1.1. The tracker daemon (``python -m lab.cli
   tracker``) runs in its own process, pinned to one core. The load comes from a second process
   (:mod:`bench.tracker_load`) pinned to the other core. That process keeps many requests
   outstanding and sends requests encoded in advance, so it can outrun the tracker; its own
   CPU time is reported too. First it loads the tracker with 1,000 peers (100 cachers, 900
   viewers) in 100 swarms, so that FIND really selects peers. Each figure is the median of 3
   timed windows, interleaved over the configurations.
2. **The batch availability report**: one CONNECT carrying 10,000 swarms with their chunk
   ranges, as a cacher sends on reconnect. It is compared with reporting one swarm per message
   (10,000 messages). The benchmark gives bytes on the wire (binary and JSON), messages and UDP
   datagrams, the sans-IO ``Tracker.handle`` time measured in a separate process (median of 3),
   and the time end to end to the daemon over UDP, TCP and HTTP.

``docs/performance.md`` describes the method and records the figures. Only 127.0.0.1 is used.
Every child process is killed at the end.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import REPO, Child, median, python_module_command, row, spawn

#: Module attributes the benchmark relies on; checked first, so that a tracker module that is
#: missing or renamed gives one clear message instead of a traceback from a child process.
REQUIRED: dict[str, tuple[str, ...]] = {
    "ppsp.tracker.messages": ("Connect", "Find", "StatReport", "SwarmAvailability", "Response"),
    "ppsp.tracker.binary": ("encode", "decode", "Reassembler", "Method", "LAST_FRAGMENT"),
    "ppsp.tracker.json_codec": ("encode_request", "decode_request", "decode_response"),
    "ppsp.tracker.state": ("Tracker", "TrackerConfig"),
    "ppsp.tracker.server": ("serve",),
    "ppsp.tracker.client": ("UdpTrackerClient", "TcpTrackerClient", "JsonHttpTrackerClient"),
    "lab.cli": ("cmd_tracker", "run_coroutine"),
}

REPS = 3
SECONDS, QUICK_SECONDS = 1.5, 0.25  # measured per sample
WARMUP, QUICK_WARMUP = 0.25, 0.1  # unmeasured per sample
SWARMS = 10_000  # in the batch report
TRANSPORTS = (("udp", "binary UDP"), ("tcp", "binary TCP"), ("http", "JSON HTTP"))
REQUESTS = ("CONNECT", "FIND", "STAT_REPORT")
TARGETS = {("FIND", "udp"): "≥ 20,000", ("FIND", "tcp"): "≥ 20,000", ("FIND", "http"): "≥ 3,000"}
TARGET_BATCH_MS = 100.0
TARGET_MESSAGE_RATIO = 0.01
FIND_PEERS = 20  # bench.tracker_load.FIND_PEERS (not imported: it pulls in the tracker)

#: Time limits: a benchmark must end, not measure patience.
START_TIMEOUT = 60.0
LINE_TIMEOUT = 180.0

#: Runs a command pinned to one CPU: the affinity is set, then the command is exec'd in the
#: same process (same PID, so its CPU time is measured by wait4 as usual, and every thread it
#: starts later inherits the affinity).
_PIN = (
    "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])}); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
)


def check_modules() -> None:
    """Raise :class:`RuntimeError` naming every required module or name that is missing."""
    missing = []
    for module_name, names in REQUIRED.items():
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            missing.append(f"{module_name} ({type(exc).__name__}: {exc})")
            continue
        missing.extend(f"{module_name}.{n}" for n in names if not hasattr(module, n))
    if missing:
        raise RuntimeError("the tracker is not ready to benchmark; missing: " + ", ".join(missing))


def _cpus() -> tuple[int | None, int | None]:
    """(tracker CPU, load generator CPU), or (None, None) when fewer than two are usable."""
    try:
        usable = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None, None
    if len(usable) < 2:
        return None, None
    return usable[0], usable[1]


def _pinned(cpu: int | None, module: str, *args: str) -> list[str]:
    if cpu is None:
        return python_module_command(module, *args)
    return [sys.executable, "-c", _PIN, str(cpu), "-m", module, *args]


def _affinity(pid: int) -> str:
    with contextlib.suppress(OSError):
        return ",".join(str(c) for c in sorted(os.sched_getaffinity(pid)))
    return "?"


def _lines(child: Child, what: str) -> Iterator[dict[str, Any]]:
    """The JSON lines a :mod:`bench.tracker_load` process prints, up to ``done``."""
    while True:
        line = child.read_line(LINE_TIMEOUT)
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            raise RuntimeError(f"{what}: unexpected output {line[:200]!r}") from None
        if item.get("kind") == "done":
            return
        if item.get("kind") == "error":
            raise RuntimeError(f"{what}: {item.get('error')}")
        yield item


# -- the two runs ---------------------------------------------------------------------------


def _batch_in_process(workdir: Path, cpu: int | None) -> list[dict[str, Any]]:
    argv = _pinned(cpu, "bench.tracker_load", "batch", "--swarms", str(SWARMS),
                   "--reps", str(REPS))  # fmt: skip
    with spawn(argv, cwd=REPO, stderr_path=workdir / "batch.err") as child:
        items = list(_lines(child, "in-process batch timing"))
        finished = child.wait(60)
    if finished.returncode != 0:
        raise RuntimeError(f"in-process batch timing exited with status {finished.returncode}")
    return items


def _tracker_config(workdir: Path) -> Path:
    """The daemon's defaults, except timers long enough that no registration expires while the
    benchmark runs (RFC 7846 leaves timer values open, §2.3)."""
    path = workdir / "tracker.toml"
    path.write_text("[timers]\ntrack_timer = 3600.0\ninit_timer = 600.0\n")
    return path


def _read_urls(child: Child) -> dict[str, str]:
    urls: dict[str, str] = {}
    prefixes = {"http://": "http", "ppsp-udp://": "udp", "ppsp-tcp://": "tcp"}
    for _ in range(20):
        line = child.read_line(START_TIMEOUT).strip()
        for prefix, name in prefixes.items():
            if line.startswith(prefix):
                urls[name] = line
        if len(urls) == len(prefixes):
            return urls
    raise RuntimeError(f"the tracker printed no {' / '.join(prefixes)} URL among its first lines")


def _against_daemon(
    workdir: Path, cpus: tuple[int | None, int | None], quick: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    tracker_cpu, load_cpu = cpus
    info: dict[str, Any] = {}
    tracker_argv = _pinned(
        tracker_cpu, "lab.cli", "tracker", "--config", str(_tracker_config(workdir)),
        "--http", "127.0.0.1:0", "--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0",
    )  # fmt: skip
    with spawn(tracker_argv, cwd=REPO, stderr_path=workdir / "tracker.err") as tracker:
        urls = _read_urls(tracker)
        info["tracker_affinity"] = _affinity(tracker.proc.pid)
        load_argv = _pinned(
            load_cpu, "bench.tracker_load", "load",
            "--http", urls["http"], "--udp", urls["udp"], "--tcp", urls["tcp"],
            "--tracker-pid", str(tracker.proc.pid),
            "--seconds", str(QUICK_SECONDS if quick else SECONDS),
            "--warmup", str(QUICK_WARMUP if quick else WARMUP),
            "--reps", str(REPS), "--per-swarm-reps", str(1 if quick else REPS),
            "--swarms", str(SWARMS),
        )  # fmt: skip
        with spawn(load_argv, cwd=REPO, stderr_path=workdir / "load.err") as load:
            items: list[dict[str, Any]] = []
            for item in _lines(load, "load generator"):
                if not items:  # it has exec'd and pinned itself by now
                    info["load_affinity"] = _affinity(load.proc.pid)
                items.append(item)
            finished = load.wait(60)
            info["load_cpu"] = finished.cpu
        # SIGTERM: the daemon closes cleanly and exits 0; wait4 gives its total CPU time.
        tracker.proc.terminate()
        stopped = tracker.wait(30)
        info["tracker_cpu"] = stopped.cpu
        info["tracker_status"] = stopped.returncode
    return items, info


# -- the result table -----------------------------------------------------------------------


def _group(items: list[dict[str, Any]], kind: str, *keys: str) -> dict[Any, list[dict[str, Any]]]:
    """Samples of one kind by the values of ``keys`` (a tuple, or the value of a single key)."""
    groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        if item.get("kind") == kind:
            key = item[keys[0]] if len(keys) == 1 else tuple(item[k] for k in keys)
            groups[key].append(item)
    return groups


def _med(samples: list[dict[str, Any]], fn: Callable[[dict[str, Any]], float | None]) -> float:
    values = [v for v in (fn(s) for s in samples) if v is not None]
    return median(values) if values else float("nan")


def _rate_rows(items: list[dict[str, Any]], rows: list[dict[str, Any]], notes: list[str]) -> None:
    rates = _group(items, "rate", "request", "transport")
    cpu_rows = []
    problems = []
    for transport, label in TRANSPORTS:
        generator_us, generator_busy, tracker_busy = [], [], []
        for request in REQUESTS:
            samples = rates.get((request, transport), [])
            if not samples:
                raise RuntimeError(f"no samples for {request} over {label}")
            for s in samples:
                if s["errors"] or s["lost"]:
                    problems.append(
                        f"{request} over {label}, run {s['rep']}: {s['errors']} error "
                        f"responses {s['error_codes']}, {s['lost']} lost"
                    )
            rate = _med(samples, lambda s: s["ok"] / s["seconds"])
            rows.append(
                row(f"{request}/s, {label}", rate, "req/s", TARGETS.get((request, transport)))
            )
            cpu_us = _med(samples, lambda s: _per(s["tracker_cpu"], s["ok"], 1e6))
            cpu_rows.append(row(f"tracker CPU per {request}, {label}", cpu_us, "µs"))
            generator_us.append(_med(samples, lambda s: _per(s["generator_cpu"], s["ok"], 1e6)))
            generator_busy.append(_med(samples, lambda s: s["generator_cpu"] / s["seconds"]))
            tracker_busy.append(_med(samples, lambda s: _per(s["tracker_cpu"], s["seconds"], 1)))
            if request == "FIND":
                peers = _med(samples, lambda s: s["peers"])
                notes.append(f"FIND over {label}: {peers:.1f} peers per answer on average")
        notes.append(
            f"{label}: tracker busy {_pct(tracker_busy)} of the measured time, load generator "
            f"busy {_pct(generator_busy)} at {min(generator_us):.0f}-{max(generator_us):.0f} µs "
            f"CPU per request (it could send ~{1e6 / max(generator_us):,.0f} requests/s)"
        )
    rows.extend(cpu_rows)
    retransmitted = sum(s.get("retransmitted", 0) for group in rates.values() for s in group)
    if retransmitted:
        notes.append(f"{retransmitted} UDP requests were retransmitted (same transaction ID)")
    if problems:
        notes.extend(problems)
        bad = sum(s["errors"] + s["lost"] for group in rates.values() for s in group)
        good = sum(s["ok"] for group in rates.values() for s in group)
        if bad > 0.005 * (good + bad):
            raise RuntimeError(f"{bad} of {good + bad} requests failed: " + "; ".join(problems))


def _per(value: float | None, count: float, scale: float) -> float | None:
    return None if value is None or not count else value / count * scale


def _pct(values: list[float]) -> str:
    finite = [v for v in values if v == v]  # drop NaN (no /proc figures)
    if not finite:
        return "?"
    low, high = min(finite), max(finite)
    return f"{low:.0%}" if round(low, 2) == round(high, 2) else f"{low:.0%}-{high:.0%}"


def _batch_rows(
    batch: list[dict[str, Any]],
    items: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    notes: list[str],
) -> None:
    sizes = next(i for i in batch if i["kind"] == "batch_sizes")
    single = next(i for i in batch if i["kind"] == "per_swarm_sizes")
    timed = [i for i in batch if i["kind"] == "batch_in_process"]
    n = sizes["swarms"]
    messages = single["messages"]

    rows.append(row(f"batch of {n:,} swarms: messages", 1, "msg"))
    rows.append(row("  per-swarm reporting: messages", messages, "msg"))
    rows.append(
        row("  batch ÷ per-swarm messages", 1 / messages, "ratio", f"≤ {TARGET_MESSAGE_RATIO:g}")
    )
    rows.append(row("  batch: UDP datagrams (1,400 B fragments)", sizes["udp_datagrams"], "dgram"))
    rows.append(
        row("  batch ÷ per-swarm UDP datagrams", sizes["udp_datagrams"] / messages, "ratio")
    )
    rows.append(row("  batch: bytes, binary", sizes["binary_bytes"], "B"))
    rows.append(row("  per-swarm: bytes, binary", single["binary_bytes"], "B"))
    rows.append(row("  batch: bytes, JSON (HTTP body)", sizes["json_bytes"], "B"))
    rows.append(row("  per-swarm: bytes, JSON (HTTP bodies)", single["json_bytes"], "B"))

    def ms(key: str) -> float:
        return _med(timed, lambda s: s[key] * 1e3)

    target = f"≤ {TARGET_BATCH_MS:g}"
    rows.append(row("  batch: Tracker.handle, CPU", ms("handle_cpu"), "ms", target))
    rows.append(row("  batch: Tracker.handle, wall clock", ms("handle_wall"), "ms", target))
    rows.append(row("  batch: reassemble + decode binary, CPU", ms("decode_cpu"), "ms"))
    rows.append(row("  batch: decode JSON, CPU", ms("json_decode_cpu"), "ms"))
    rows.append(row("  batch: encode the answer, binary, CPU", ms("encode_cpu"), "ms"))
    total = _med(timed, lambda s: (s["decode_cpu"] + s["handle_cpu"] + s["encode_cpu"]) * 1e3)
    rows.append(row("  batch: decode + handle + encode, binary, CPU", total, "ms"))
    rows.append(row("  per-swarm: Tracker.handle ×10,000, CPU", ms("per_swarm_handle_cpu"), "ms"))
    rows.append(row("  per-swarm: decode binary ×10,000, CPU", ms("per_swarm_decode_cpu"), "ms"))

    e2e = _group(items, "batch_e2e", "transport")
    for transport, label in TRANSPORTS:
        samples = e2e.get(transport)
        if samples:
            value = _med(samples, lambda s: s["seconds"] * 1e3)
            rows.append(row(f"  batch end to end, {label} (client library)", value, "ms"))
    per_swarm = _group(items, "per_swarm_e2e", "transport")
    for transport, label in TRANSPORTS:
        samples = per_swarm.get(transport)
        if samples:
            value = _med(samples, lambda s: s["seconds"] * 1e3)
            rows.append(row(f"  per-swarm end to end, {label} (pipelined)", value, "ms"))
    udp_e2e = e2e.get("udp", [])
    if udp_e2e:
        sent = [s.get("datagrams_sent", 0) for s in udp_e2e]
        notes.append(
            f"batch end to end over UDP: the client sent {min(sent)}-{max(sent)} datagrams for "
            f"{sizes['udp_datagrams']} fragments (more means retransmissions); the time runs "
            f"from the client call to the verified answer (client encoding and decoding "
            f"included)"
        )
    for failure in (i for i in items if i["kind"] == "batch_e2e_failed"):
        notes.append(f"batch end to end over {failure['transport']} FAILED: {failure['error']}")

    answer = median([s["response_binary_bytes"] for s in timed])
    datagrams = median([s["response_datagrams"] for s in timed])
    notes.append(
        f"batch report: N SEEDER JOIN (RFC 7846 Table 6) with each swarm's chunk ranges "
        f"(2 per swarm) in the availability extension; SHA-256 swarm IDs. Binary with the "
        f"availability entries alone (implicit JOIN, binary only): "
        f"{sizes['binary_implicit_bytes']:,} B. Over TCP: {sizes['tcp_frames']} frames of "
        f"64 KiB. The tracker's answer lists every swarm: {answer:,.0f} B binary, "
        f"{datagrams:.0f} datagrams"
    )
    notes.append(
        f"per-swarm reporting: a CONNECT for the first swarm, then a STAT_REPORT with an "
        f"availability delta per swarm (Table 6 forbids a second SEEDER JOIN CONNECT while "
        f"TRACKING); one-swarm CONNECTs would be {single['binary_connect_bytes']} B binary, "
        f"{single['json_connect_bytes']} B JSON each. Tracker.handle is timed in its own "
        f"process on a fresh tracker (a reconnect after a tracker restart), median of "
        f"{len(timed)}; CPU is that process's time, wall clock includes other load"
    )


def run(quick: bool = False) -> dict[str, Any]:
    check_modules()
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    cpus = _cpus()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="p2pcdn-bench-tracker-") as tmp:
        workdir = Path(tmp)
        batch = _batch_in_process(workdir, cpus[1])
        items, info = _against_daemon(workdir, cpus, quick)
    _rate_rows(items, rows, notes)
    _batch_rows(batch, items, rows, notes)
    populated = next((i for i in items if i["kind"] == "populated"), None)
    if populated:
        notes.insert(
            0,
            f"population: {populated['cachers']} cachers (10 swarms each, chunk ranges, 4 areas) "
            f"and {populated['viewers']} viewers in {populated['swarms']} swarms. CONNECT is a "
            f"channel switch (LEAVE + JOIN, answered with a peer list); FIND asks for "
            f"{FIND_PEERS} peers with a chunk-range hint; STAT_REPORT carries STREAM_STATS",
        )
    seconds = QUICK_SECONDS if quick else SECONDS
    if cpus[0] is None:
        placement = "not pinned (fewer than 2 usable CPUs)"
    else:
        placement = (
            f"tracker pinned to CPU {info['tracker_affinity']}, load generator to CPU "
            f"{info.get('load_affinity', '?')} (os.sched_setaffinity)"
        )
    notes.insert(
        0,
        f"{placement}; {seconds:g} s windows after {QUICK_WARMUP if quick else WARMUP:g} s "
        f"warm-up, medians of {REPS}; load average {load[0]:.2f} at the start (a shared "
        f"machine lowers the requests/s; CPU per request is much less affected)",
    )
    notes.append(
        f"tracker process: {info['tracker_cpu']:.1f} CPU-s in all, exit status "
        f"{info['tracker_status']}; load generator: {info['load_cpu']:.1f} CPU-s"
    )
    return {"name": "tracker", "rows": rows, "notes": notes}
