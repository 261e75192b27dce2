"""Helpers shared by the benchmarks: result rows, machine description, test content, and child
processes that are always reaped, with their own CPU time measured."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import platform
import random
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


def row(metric: str, value: float, unit: str, target: str | None = None) -> dict[str, Any]:
    """One line of a benchmark's result table."""
    entry: dict[str, Any] = {"metric": metric, "value": float(value), "unit": unit}
    if target:
        entry["target"] = target
    return entry


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def machine_info() -> dict[str, Any]:
    """What the figures depend on: CPUs, Python, event loop, and the code's git revision."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }
    with contextlib.suppress(AttributeError, OSError):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    try:
        import uvloop

        info["uvloop"] = str(getattr(uvloop, "__version__", "present"))
    except ImportError:
        info["uvloop"] = None
    info["event_loop"] = (
        "asyncio" if os.environ.get("P2PCDN_LOOP", "").lower() == "asyncio" or not info["uvloop"]
        else "uvloop"
    )  # fmt: skip
    info["git"] = _git_revision()
    return info


def _git_revision() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def generate_file(path: Path, size: int, seed: int = 7574) -> str:
    """Write ``size`` reproducible pseudo-random bytes (incompressible, like media) to
    ``path``; returns their SHA-256 in hex."""
    rng = random.Random(seed)
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            block = rng.randbytes(min(left, MIB))
            f.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(MIB):
            digest.update(block)
    return digest.hexdigest()


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port that was free a moment ago (for programs that cannot bind port 0 and tell)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def python_module_command(module: str, *args: str) -> list[str]:
    """``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def child_env() -> dict[str, str]:
    """The environment for our own children: the repository importable from anywhere."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


# -- child processes ----------------------------------------------------------------------

_LIVE: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        _stop(proc, grace=0.5)


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
    _LIVE.discard(proc)


@dataclass
class Finished:
    """How a child ended: exit status, wall-clock and CPU seconds (user + system)."""

    returncode: int
    wall: float
    cpu: float
    stderr: str


class Child:
    """A child process with stdout on a pipe (read line by line with a deadline) and stderr
    in a file (no pipe to fill up); killed when the ``with`` block ends, however it ends."""

    def __init__(
        self, argv: Sequence[str], cwd: Path, stderr_path: Path, *, read_stdout: bool = True
    ) -> None:
        self.argv = list(argv)
        self.stderr_path = stderr_path
        self._stderr: IO[bytes] = stderr_path.open("wb")
        self.started = time.perf_counter()
        self.proc: subprocess.Popen[bytes] = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            # A child whose stdout nobody reads must not block on a full pipe.
            stdout=subprocess.PIPE if read_stdout else subprocess.DEVNULL,
            stderr=self._stderr,
            bufsize=0,
        )
        _LIVE.add(self.proc)
        self._buffer = b""

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        _stop(self.proc, grace=3.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()

    def stderr_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            text = self.stderr_path.read_text(errors="replace").strip().splitlines()
            return " | ".join(text[-lines:])
        return ""

    def read_line(self, timeout: float) -> str:
        """The next line of stdout; raises :class:`RuntimeError` on timeout or exit."""
        if self.proc.stdout is None:
            raise RuntimeError("this child's stdout is not read")
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(
                        f"{self.argv[0]}: no output within {timeout:g} s: {self.stderr_tail()}"
                    )
                if not selector.select(left):
                    continue
                data = os.read(self.proc.stdout.fileno(), 65536)
                if not data:
                    self.proc.wait(timeout=5)
                    raise RuntimeError(
                        f"{' '.join(self.argv[:4])} exited with status "
                        f"{self.proc.returncode}: {self.stderr_tail()}"
                    )
                self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode(errors="replace").rstrip("\r")

    def wait(self, timeout: float) -> Finished:
        """Wait for the child to exit and measure the CPU time it used (its own rusage, from
        ``wait4``, so other children running meanwhile do not count). Kills it on timeout."""
        deadline = time.monotonic() + timeout
        pid = self.proc.pid
        while True:
            waited_pid, status, usage = os.wait4(pid, os.WNOHANG)
            if waited_pid == pid:
                break
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(
                    f"{' '.join(self.argv[:4])} did not finish within {timeout:g} s: "
                    f"{self.stderr_tail()}"
                )
            time.sleep(0.005)
        wall = time.perf_counter() - self.started
        # Tell Popen the child is reaped, so it neither waits again nor warns.
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        _LIVE.discard(self.proc)
        self._stderr.flush()
        return Finished(
            returncode=self.proc.returncode,
            wall=wall,
            cpu=_cpu_seconds(usage),
            stderr=self.stderr_path.read_text(errors="replace"),
        )


def _cpu_seconds(usage: resource.struct_rusage) -> float:
    return float(usage.ru_utime + usage.ru_stime)


@contextlib.contextmanager
def spawn(
    argv: Sequence[str], cwd: Path, stderr_path: Path, *, read_stdout: bool = True
) -> Iterator[Child]:
    child = Child(argv, cwd, stderr_path, read_stdout=read_stdout)
    try:
        yield child
    finally:
        child.close()
