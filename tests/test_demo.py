"""``make demo`` (lab/demo.py) at a reduced size, in a subprocess as a person runs it: the
report's structure, push beating no push at the median of the channel changes, bytes served by
cachers and peers, and nothing left behind (no process, no temporary directory)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lab import demo

REPO = Path(__file__).resolve().parent.parent
#: Bound on the reduced run (the full demo targets ≤ 90 s on 2 cores; this machine is shared).
TIMEOUT = 240.0


def test_demo_topology_is_loopback_with_area_delays() -> None:
    topology = demo.demo_topology(120)
    addresses = {h.name: str(h.address) for h in topology.hosts.values()}
    assert addresses["core"] == "127.0.120.10"
    assert addresses["cacher-a"].startswith("127.0.121.")
    assert addresses["viewers-b"].startswith("127.0.122.")
    assert topology.path("viewers-a", "cacher-a").delay == pytest.approx(0.005)
    assert topology.path("viewers-a", "core").delay == pytest.approx(0.040)
    assert topology.path("viewers-a", "cacher-b").delay == pytest.approx(0.075)


def test_startup_groups_leave_out_the_first_tune_in() -> None:
    def visit(channel: str, delay: float | None, live: bool = False) -> dict[str, Any]:
        return {"channel": channel, "startup_delay": delay, "live": live}

    reports = [
        {"area": "a", "channels": [visit("ch1", 0.5), visit("ch2", 0.01), visit("l", 0.03, True)]},
        {"area": "b", "channels": [visit("ch2", 0.4), visit("ch1", None)]},
    ]
    groups = demo.startup_groups(reports)
    assert list(groups) == ["area a", "area b", "VoD", "live", "all", "first tune-in"]
    assert groups["first tune-in"]["changes"] == 2
    assert groups["first tune-in"]["median"] == pytest.approx(0.45)
    assert groups["all"]["changes"] == 3
    assert groups["all"]["no_first_frame"] == 1
    assert groups["all"]["median"] == pytest.approx(0.02)
    assert groups["live"]["median"] == pytest.approx(0.03)
    assert groups["area b"]["median"] is None


@pytest.mark.slow
def test_demo_runs_the_whole_cdn(tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch), PYTHONPATH=str(REPO))
    argv = [sys.executable, "-m", "lab.demo", "--viewers-per-area", "2", "--dwell", "1.0"]
    argv += ["--visits", "3", "--json", str(summary_path)]
    result = subprocess.run(
        argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]

    # What a person sees: the portal URL early, progress, the table, the byte shares.
    lines = result.stdout.splitlines()
    portal = [i for i, line in enumerate(lines) if re.search(r"portal up: http://127\.0\.", line)]
    table = lines.index("Channel-change startup delay (zap → first frame), Q1 and Q2 per area:")
    assert portal and portal[0] < table
    assert any("phase push:" in line for line in lines[:table])
    assert any(line.strip().startswith("with push hints") for line in lines[table:])
    assert any(line.strip().startswith("without push hints") for line in lines[table:])
    assert "Bytes the viewers received, by origin:" in lines
    assert lines[-1].startswith("demo OK")

    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "ok" and not summary["problems"]
    assert not summary["teardown_problems"]
    data = summary["metrics"]
    assert data["channels"] == ["ch1", "ch2", "ch3", "live1", "live2"]
    assert set(data["phases"]) == {"push", "no-push"}
    for phase in data["phases"].values():
        assert phase["viewers"] == 4
        startup = phase["startup"]
        assert {"area a", "area b", "VoD", "live", "all", "first tune-in"} <= set(startup)
        assert startup["all"]["changes"] == 4 * 2  # 3 visits each, the first is a tune-in
        assert 0 < startup["all"]["median"] <= startup["all"]["p95"] < 10
        assert set(phase["areas"]) == {"a", "b"}
        for quality in (phase, *phase["areas"].values()):
            assert 0.0 <= quality["q1"] <= 1.0 and 0.0 <= quality["q2"] <= 1.0
        served = phase["bytes_by_origin"]
        assert served["cacher"] + served["peer"] > 0
    push = data["phases"]["push"]["startup"]["all"]["median"]
    plain = data["phases"]["no-push"]["startup"]["all"]["median"]
    assert push < plain, (push, plain)
    assert data["push_speedup_median"] == pytest.approx(plain / push)

    # Nothing left behind.
    assert demo.demo_pids(summary["prefix"]) == []
    assert list(scratch.iterdir()) == []
    core = re.search(r"core (127\.0\.\d+)\.10", result.stdout)
    assert core is not None
    if shutil.which("ss") is not None:  # no socket left on the demo's core addresses
        out = subprocess.run(["ss", "-Hlntu"], capture_output=True, text=True, check=False)
        assert f"{core.group(1)}." not in out.stdout


def _default_sigint() -> None:
    # A shell's background job inherits SIGINT ignored; Ctrl-C reaches a foreground demo.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_demo_ctrl_c_stops_everything(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    log = tmp_path / "demo.out"
    env = dict(os.environ, TMPDIR=str(scratch), PYTHONPATH=str(REPO))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lab.demo"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_default_sigint,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90.0
        while "storage overlay up" not in log.read_text():  # bounded by the deadline
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        prefix = re.search(r"run (demo[0-9a-f]+):", log.read_text())
        assert prefix is not None
        assert demo.demo_pids(prefix.group(1))  # its daemons are running ...
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60.0) == 130, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10.0)
    assert "interrupted" in log.read_text()
    assert demo.demo_pids(prefix.group(1)) == []  # ... and none is left
    assert list(scratch.iterdir()) == []
