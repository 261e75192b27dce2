"""``python -m lab.demo`` (what ``make demo`` runs): a PPSPP transfer on 127.0.0.1, explained.

Generates a 4 MiB file in a temporary directory, starts ``p2pcdn seed`` on it as a separate
process, downloads it with ``p2pcdn get`` (the CLI's own code path, in this process),
verifies the copy and prints a short report. Interim: the full CDN demo (portal, tracker,
cacher, CSCs) replaces it once those exist.
"""

from __future__ import annotations

import hashlib
import os
import random
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lab import cli
from lab.progress import format_bytes, mib_per_second

REPO = Path(__file__).resolve().parent.parent
SIZE = 4 * 1024 * 1024
START_TIMEOUT = 15.0
DOWNLOAD_TIMEOUT = 15.0


class DemoError(Exception):
    pass


def _read_line(proc: subprocess.Popen[bytes], deadline: float) -> str:
    """A line of the seeder's stdout, or :class:`DemoError` at the deadline or its exit."""
    assert proc.stdout is not None
    data = b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise DemoError(f"the seeder printed nothing within {START_TIMEOUT:g} s")
            if not selector.select(left):
                continue
            byte = os.read(proc.stdout.fileno(), 1)  # one byte: never read past the line
            if not byte:
                proc.wait(timeout=5)
                raise DemoError(f"the seeder exited with status {proc.returncode}")
            data += byte
    return data.decode().strip()


def _stop(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGINT, as Ctrl-C would; kill if it does not stop. Returns its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    return proc.returncode


def run_demo(workdir: Path) -> None:
    source = workdir / "content.bin"
    copy = workdir / "download.bin"
    content = random.Random(7574).randbytes(SIZE)
    source.write_bytes(content)
    digest = hashlib.sha256(content).hexdigest()

    print("p2pcdn demo: one file over PPSPP (RFC 7574) between two processes on 127.0.0.1")
    print(f"  content    {format_bytes(SIZE)} of random bytes in {source}")
    seeder_log = (workdir / "seeder.log").open("wb")
    seeder = subprocess.Popen(
        [sys.executable, "-m", "lab.cli", "seed", str(source), "--listen", "127.0.0.1:0"],
        cwd=REPO,  # `-m lab.cli` must import this checkout, wherever the demo was started
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=seeder_log,
        bufsize=0,
    )
    try:
        try:
            deadline = time.monotonic() + START_TIMEOUT
            swarm_id = _read_line(seeder, deadline)
            address = _read_line(seeder, deadline)
        except DemoError as exc:
            seeder_log.flush()
            detail = (workdir / "seeder.log").read_text(errors="replace").strip()
            last = detail.splitlines()[-1] if detail else "no message"
            raise DemoError(f"{exc}: {last}") from None
        print(f"  seeder     p2pcdn seed content.bin  (pid {seeder.pid}, listening on {address})")
        print(f"  swarm ID   {swarm_id}")
        print("             = root hash of the file's SHA-256 Merkle tree, 1024-byte chunks")
        print(f"  download   p2pcdn get {swarm_id[:12]}… --peer {address} -o download.bin")
        sys.stdout.flush()
        started = time.perf_counter()
        status = cli.main(
            ["get", swarm_id, "--peer", address, "-o", str(copy),
             "--timeout", f"{DOWNLOAD_TIMEOUT:g}"]
        )  # fmt: skip
        seconds = time.perf_counter() - started
        if status != 0:
            raise DemoError(f"p2pcdn get failed with exit status {status}")
    finally:
        seeder_status = _stop(seeder)
        seeder_log.close()
    received = copy.read_bytes()
    ok = hashlib.sha256(received).hexdigest() == digest
    print(
        f"  result     {format_bytes(len(received))} in {seconds:.2f} s, "
        f"{mib_per_second(len(received), seconds):.1f} MiB/s"
    )
    print(f"  integrity  SHA-256 of the copy {'matches' if ok else 'DOES NOT match'} the original")
    if not ok:
        raise DemoError("the downloaded copy differs from the original")
    if seeder_status != 0:
        raise DemoError(f"the seeder did not stop cleanly (exit status {seeder_status})")
    print("  seeder     stopped with Ctrl-C (SIGINT), exit status 0")
    print("demo OK")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="p2pcdn-demo-") as tmp:
        try:
            run_demo(Path(tmp))
        except DemoError as exc:
            print(f"demo failed: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
