"""Test support for end-to-end CDN tests (tests/test_cdn_overlays.py): daemons of the ``p2pcdn``
CLI as real subprocesses on 127.0.0.1, and an asyncio loop in a thread for in-test overlay nodes.

* :class:`Daemon` — one ``python -m lab.cli ...`` process. Its stdout and stderr go to files
  (never pipes: a chatty daemon cannot block on a full pipe), read back with bounded waits;
  :meth:`Daemon.kill` is a real SIGKILL (no Leave, no goodbye on any socket).
* :class:`Lab` — owns every daemon it started; :meth:`Lab.close` kills what is still running
  and reaps it with a bounded wait, whatever happened before; :meth:`Lab.logs` gives the tail
  of each daemon's output for a failure message.
* :class:`LoopThread` — an event loop running in a daemon thread, so that in-test
  :class:`reload.aio.OverlayNode` peers keep answering Pings and keep-alives between tests
  (and while a test sleeps), and a test calls coroutines on it with :meth:`LoopThread.run`
  under a timeout.
* :func:`node_id_of` — the Node-ID in a lab certificate, to predict the
  responsible peer of a Resource-ID (RFC 6940 §10.1) without asking the overlay.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from reload import security
from reload.aio import load_daemon_config

__all__ = [
    "REPO",
    "Daemon",
    "Lab",
    "LoopThread",
    "node_id_of",
    "wait_until",
]

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")

#: How long a stopped daemon may take to exit before it is killed.
STOP_GRACE = 10.0
#: Lines of each daemon's stderr quoted in a failure report.
LOG_TAIL = 25


def wait_until(condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.1) -> None:
    """Poll ``condition`` until it holds; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:  # bounded by the deadline
        if condition():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


class Daemon:
    """One ``python -m lab.cli ARGS`` process with its output in ``DIR/NAME.out|.err``."""

    def __init__(
        self,
        name: str,
        args: Iterable[str],
        directory: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.args = list(args)
        directory.mkdir(parents=True, exist_ok=True)
        self.out_path = directory / f"{name}.out"
        self.err_path = directory / f"{name}.err"
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", **(env or {}))
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lab.cli", *self.args],
                cwd=REPO,  # -m lab.cli imports this checkout
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,  # a Ctrl-C at the terminal is the test's, not theirs
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def lines(self) -> list[str]:
        """The complete lines the daemon has printed on stdout so far."""
        text = self.out_path.read_text(errors="replace")
        complete = text[: text.rfind("\n") + 1]
        return [line.rstrip("\r") for line in complete.splitlines()]

    def wait_lines(self, count: int, timeout: float) -> list[str]:
        """The first ``count`` stdout lines, waiting at most ``timeout`` seconds; fails at once
        when the daemon exits before printing them."""
        deadline = time.monotonic() + timeout
        while True:  # bounded by the deadline
            lines = self.lines()
            if len(lines) >= count:
                return lines[:count]
            if not self.running:
                raise AssertionError(
                    f"{self.name} exited with status {self.proc.returncode} after "
                    f"{len(lines)} lines:\n{self.tail()}"
                )
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{self.name} printed {len(lines)} of {count} lines in {timeout:g} s:\n"
                    f"{self.tail()}"
                )
            time.sleep(0.05)

    def tail(self, count: int = LOG_TAIL) -> str:
        """The last ``count`` lines of stderr (its log)."""
        try:
            lines = self.err_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"  {self.name}| {line}" for line in lines[-count:])

    def kill(self) -> None:
        """SIGKILL: the process dies at once, its sockets closed by the kernel."""
        if self.running:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_GRACE)

    def stop(self, timeout: float = STOP_GRACE) -> int:
        """SIGTERM (a clean stop: a RELOAD node Leaves, a source LEAVEs its trackers); SIGKILL
        if it has not exited after ``timeout``. Returns the exit status."""
        if self.running:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


class Lab:
    """Every daemon of one test set-up; :meth:`close` leaves no process behind."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.logs_dir = root / "logs"
        self.daemons: list[Daemon] = []

    def start(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> Daemon:
        """Start ``python -m lab.cli ARGS`` as daemon ``name`` (``env`` adds variables)."""
        daemon = Daemon(name, args, self.logs_dir, env)
        self.daemons.append(daemon)
        return daemon

    def logs(self) -> str:
        """The stderr tails of every daemon, for a failure report."""
        parts = []
        for daemon in self.daemons:
            state = "running" if daemon.running else f"exit {daemon.proc.returncode}"
            parts.append(f"--- {daemon.name} (pid {daemon.pid}, {state})\n{daemon.tail()}")
        return "\n".join(parts)

    def close(self) -> None:
        """SIGTERM everything still running, SIGKILL what does not exit in time; reap all."""
        for daemon in self.daemons:
            if daemon.running:
                with contextlib.suppress(ProcessLookupError):
                    daemon.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for daemon in self.daemons:
            try:
                daemon.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                daemon.kill()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def reporting(self) -> Iterator[None]:
        """Print every daemon's log tail (pytest shows it with the failure) when the block
        raises."""
        try:
            yield
        except BaseException:
            print(self.logs(), file=sys.stderr)
            raise


class LoopThread:
    """An asyncio event loop running in its own thread until :meth:`close`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="cdn-lab-loop", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the loop; cancel it and raise TimeoutError after ``timeout``."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no result within {timeout:g} s") from None

    def close(self) -> None:
        """Cancel what still runs on the loop, stop it and join the thread (bounded)."""

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=5.0)

        if self.loop.is_running():
            with contextlib.suppress(TimeoutError, concurrent.futures.TimeoutError):
                asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(10.0)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10.0)
        if not self._thread.is_alive():
            self.loop.close()


def node_id_of(daemon_toml: Path) -> bytes:
    """The Node-ID in the certificate a daemon TOML names (RFC 6940 §11.3)."""
    config = load_daemon_config(daemon_toml)
    certificate = security.load_certificate(config.certificate)
    assert config.ca is not None, "lab daemons name their CA"
    overlay = security.overlay_of_ca(security.load_certificate(config.ca))
    (node_id, *_) = security.node_ids_from_certificate(certificate, overlay, 16)
    return node_id
