"""Transfer benchmark: a file over PPSPP on 127.0.0.1 between separate processes.

Our seeder (``python -m lab.cli seed``) serves a generated file and our leecher
(``python -m lab.cli get``) fetches it, with 1 KiB chunks and SHA-1 and SHA-256 Merkle trees,
several runs each. Reported per hash function: the median throughput over the transfer
itself (the leecher's own summary line), the median throughput over the leecher's whole
process life (start-up included), and the leecher's CPU seconds per MiB (user + system of the
leecher process alone, from ``wait4``). Every output is checked by SHA-256.

When ``SWIFT_BIN`` names a libswift ``swift`` binary, the same file also goes libswift →
libswift, libswift → ours and ours → libswift (SHA-1, 1 KiB chunks: libswift's only
configuration, see shared/traces/README.md), and each is given as a ratio to libswift →
libswift, all measured over whole process lives so the comparison is like for like.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    MIB,
    REPO,
    Child,
    Finished,
    free_udp_port,
    generate_file,
    median,
    python_module_command,
    row,
    sha256_file,
    spawn,
)
from lab.progress import parse_summary

SIZE = 50 * MIB
QUICK_SIZE = 8 * MIB
RUNS = 3
CHUNK_SIZE = 1024
#: (hash, mtu): the kernel's path MTU (65536 on loopback: several DATA per datagram, RFC 7574
#: §8.6), and 1500, one chunk per datagram as libswift sends them.
LEGS: tuple[tuple[str, int | None], ...] = (("sha1", None), ("sha256", None), ("sha1", 1500))

#: DESIGN §6, measured on this machine kind: libswift → libswift, 1 KiB chunks, SHA-1, loopback.
LIBSWIFT_REFERENCE_MIBPS = 19.0
LIBSWIFT_REFERENCE_CPU_PER_50MIB = 2.1
TARGET_RATIO = 2.0
TARGET_CPU_PER_MIB = 0.05

SEEDER_START_TIMEOUT = 120.0  # hashing 50 MiB before the first line is printed


@dataclass
class Run:
    size: int
    #: Seconds of the transfer as the leecher measured it, or None if it did not say.
    transfer_seconds: float | None
    finished: Finished

    @property
    def wall_mibps(self) -> float:
        return self.size / MIB / self.finished.wall

    @property
    def transfer_mibps(self) -> float | None:
        if not self.transfer_seconds:
            return None
        return self.size / MIB / self.transfer_seconds

    @property
    def cpu_per_mib(self) -> float:
        return self.finished.cpu / (self.size / MIB)


class Leg:
    """One seeder → leecher pairing, run several times against one seeder process."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.workdir = workdir
        self.runs: list[Run] = []

    def median_wall_mibps(self) -> float:
        return median([r.wall_mibps for r in self.runs])

    def median_cpu_per_mib(self) -> float:
        return median([r.cpu_per_mib for r in self.runs])

    def median_transfer_mibps(self) -> float | None:
        figures = [r.transfer_mibps for r in self.runs]
        known = [f for f in figures if f is not None]
        return median(known) if len(known) == len(figures) else None

    def describe_runs(self) -> str:
        parts = []
        for r in self.runs:
            transfer = r.transfer_mibps
            head = f"{transfer:.1f} MiB/s, " if transfer is not None else ""
            parts.append(
                f"{head}{r.wall_mibps:.1f} MiB/s incl. start-up, {r.cpu_per_mib:.3f} CPU-s/MiB"
            )
        return f"{self.name} runs: " + "; ".join(parts)


# -- seeders ------------------------------------------------------------------------------


def _our_seeder(
    source: Path, hash_name: str, workdir: Path, mtu: int | None = None
) -> AbstractContextManager[Child]:
    argv = python_module_command(
        "lab.cli", "seed", str(source), "--listen", "127.0.0.1:0",
        "--hash", hash_name, "--chunk-size", str(CHUNK_SIZE),
        *(["--mtu", str(mtu)] if mtu else []),
    )  # fmt: skip
    return spawn(argv, cwd=REPO, stderr_path=workdir / f"seed-{hash_name}-{mtu}.err")


def _start_our_seeder(child: Child) -> tuple[str, str]:
    """(swarm ID hex, HOST:PORT) from the first two lines the seeder prints."""
    swarm_id = child.read_line(SEEDER_START_TIMEOUT).strip()
    address = child.read_line(10).strip()
    if not re.fullmatch(r"[0-9a-f]+", swarm_id):
        raise RuntimeError(f"seeder printed {swarm_id!r} where the swarm ID was expected")
    return swarm_id, address


def _libswift_seeder(
    swift: str, source: Path, port: int, workdir: Path
) -> AbstractContextManager[Child]:
    argv = [swift, "-f", str(source), "-l", f"127.0.0.1:{port}"]
    return spawn(argv, cwd=workdir, stderr_path=workdir / "swift-seed.err")


def _start_libswift_seeder(child: Child) -> str:
    """libswift prints ``Root hash: <40 hex>`` on stdout once the file is hashed."""
    for _ in range(50):
        line = child.read_line(SEEDER_START_TIMEOUT)
        match = re.search(r"\b([0-9a-fA-F]{40})\b", line)
        if match:
            return match.group(1).lower()
    raise RuntimeError("libswift seeder printed no root hash")


# -- leechers -----------------------------------------------------------------------------


def _leecher_timeout(size: int) -> float:
    """Generous: 1 MiB/s plus start-up. A benchmark must end, not measure patience."""
    return 30.0 + size / MIB


def _our_leecher(
    swarm_id: str, address: str, hash_name: str, size: int, expect_sha256: str, rundir: Path
) -> Run:
    out = rundir / "out.bin"
    timeout = _leecher_timeout(size)
    argv = python_module_command(
        "lab.cli", "get", swarm_id, "--peer", address, "-o", str(out),
        "--hash", hash_name, "--chunk-size", str(CHUNK_SIZE), "--timeout", f"{timeout:g}",
    )  # fmt: skip
    with spawn(argv, cwd=REPO, stderr_path=rundir / "get.err", read_stdout=False) as child:
        finished = child.wait(timeout + 30)
    if finished.returncode != 0:
        raise RuntimeError(
            f"leecher exited with status {finished.returncode}: {finished.stderr.strip()[-300:]}"
        )
    _check_output(out, expect_sha256)
    summary = parse_summary(finished.stderr)
    return Run(size, summary.seconds if summary else None, finished)


def _libswift_leecher(
    swift: str, root_hash: str, port: int, size: int, expect_sha256: str, rundir: Path
) -> Run:
    # -o is libswift's destination directory; it names the file after the root hash. It
    # leaves by itself when the download is complete, checked once a second, so its figures
    # carry up to a second of slack (documented in docs/performance.md).
    argv = [swift, "-t", f"127.0.0.1:{port}", "-h", root_hash, "-o", str(rundir)]
    with spawn(argv, cwd=rundir, stderr_path=rundir / "swift-get.err", read_stdout=False) as child:
        finished = child.wait(_leecher_timeout(size) + 30)
    if finished.returncode != 0:
        raise RuntimeError(
            f"libswift leecher exited with status {finished.returncode}: "
            f"{finished.stderr.strip()[-300:]}"
        )
    _check_output(_libswift_output(rundir, root_hash), expect_sha256)
    return Run(size, None, finished)


def _libswift_output(rundir: Path, root_hash: str) -> Path:
    named = rundir / root_hash
    if named.is_file():
        return named
    # Defensive: another libswift version may name it otherwise; take the content file.
    candidates = [
        p for p in rundir.iterdir()
        if p.is_file() and p.suffix not in (".mhash", ".mbinmap", ".err")
    ]  # fmt: skip
    if not candidates:
        raise RuntimeError(f"libswift wrote no output file in {rundir}")
    return max(candidates, key=lambda p: p.stat().st_size)


def _check_output(path: Path, expect_sha256: str) -> None:
    if not path.is_file():
        raise RuntimeError(f"no output file {path}")
    got = sha256_file(path)
    if got != expect_sha256:
        raise RuntimeError(f"output differs from the source (SHA-256 {got[:16]}…)")


def _startup_cpu(workdir: Path) -> float:
    """CPU seconds of a leecher process that starts, imports everything and exits without
    transferring (``get --help``): the fixed cost inside every leecher's CPU figure."""
    samples = []
    for i in range(RUNS):
        argv = python_module_command("lab.cli", "get", "--help")
        err = workdir / f"startup-{i}.err"
        with spawn(argv, cwd=REPO, stderr_path=err, read_stdout=False) as child:
            finished = child.wait(60)
        if finished.returncode != 0:
            raise RuntimeError(f"`p2pcdn get --help` exited with status {finished.returncode}")
        samples.append(finished.cpu)
    return median(samples)


def _repeat(leg: Leg, runs: int, one_run: Callable[[Path], Run]) -> Leg:
    for i in range(runs):
        rundir = leg.workdir / f"{leg.name.replace('->', '-to-').replace(' ', '-')}-{i}"
        rundir.mkdir()
        try:
            leg.runs.append(one_run(rundir))
        finally:
            shutil.rmtree(rundir, ignore_errors=True)
    return leg


# -- libswift -----------------------------------------------------------------------------


def libswift_binary() -> tuple[str | None, str]:
    """(path, "") when ``SWIFT_BIN`` is a usable libswift CLI, else (None, why not; empty
    when SWIFT_BIN is simply not set)."""
    swift = os.environ.get("SWIFT_BIN", "").strip()
    if not swift:
        return None, ""
    path = shutil.which(swift) or (swift if os.access(swift, os.X_OK) else None)
    if path is None:
        return None, f"SWIFT_BIN={swift} is not an executable"
    try:
        probe = subprocess.run(
            [path, "--help"], capture_output=True, timeout=10, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"SWIFT_BIN={swift} does not run: {exc}"
    usage = (probe.stdout + probe.stderr).decode(errors="replace")
    # libswift has no --help; it answers any unknown option with its usage text.
    needed = ("--file", "--listen", "--tracker", "--hash", "--destdir")
    missing = [option for option in needed if option not in usage]
    if missing:
        return None, f"SWIFT_BIN={swift} does not look like libswift (no {', '.join(missing)})"
    return path, ""


# -- the benchmark ------------------------------------------------------------------------


def run(quick: bool = False) -> dict[str, Any]:
    size = QUICK_SIZE if quick else SIZE
    rows: list[dict[str, Any]] = []
    notes: list[str] = [
        f"{size // MIB} MiB generated file, {CHUNK_SIZE}-byte chunks, 127.0.0.1, {RUNS} runs per "
        "leg, medians; seeder and leecher are separate processes; outputs checked by SHA-256",
        "throughput = size / the leecher's own transfer time; 'incl. start-up' = size / the "
        "leecher process's life (interpreter start and imports included)",
    ]
    failures: list[str] = []
    swift, why_not = libswift_binary()
    with tempfile.TemporaryDirectory(prefix="p2pcdn-bench-") as tmp:
        workdir = Path(tmp)
        source = workdir / "content.bin"
        expect = generate_file(source, size)
        startup: float | None = None
        try:
            startup = _startup_cpu(workdir)
        except RuntimeError as exc:
            failures.append(f"start-up baseline: {exc}")
        ours: dict[str, Leg] = {}
        our_sha1_swarm: str | None = None
        for hash_name, mtu in LEGS:
            leg = Leg(f"ours->ours {hash_name}{f' mtu {mtu}' if mtu else ''}", workdir)
            try:
                with _our_seeder(source, hash_name, workdir, mtu) as seeder:
                    swarm_id, address = _start_our_seeder(seeder)
                    if hash_name == "sha1":
                        our_sha1_swarm = swarm_id
                    _repeat(
                        leg,
                        RUNS,
                        functools.partial(_our_leecher, swarm_id, address, hash_name, size, expect),
                    )
            except RuntimeError as exc:
                failures.append(f"{leg.name}: {exc}")
                continue
            ours[leg.name] = leg
            notes.append(leg.describe_runs())

        libswift_legs: dict[str, Leg] = {}
        if swift is not None:
            libswift_legs = _run_libswift_legs(
                swift, source, size, expect, workdir, our_sha1_swarm, notes, failures
            )

    reference = libswift_legs.get("libswift->libswift")
    for leg in ours.values():
        rows.extend(_our_rows(leg, reference, startup))
    if startup is not None:
        rows.append(row("leecher start-up (get --help)", startup, "CPU-s"))
    if reference is not None:
        rows.extend(_libswift_rows(libswift_legs, reference))
    else:
        notes.append(
            f"libswift not run: set SWIFT_BIN; reference figure from DESIGN §6: "
            f"≈ {LIBSWIFT_REFERENCE_MIBPS:g} MiB/s, ≈ {LIBSWIFT_REFERENCE_CPU_PER_50MIB:g} CPU-s "
            f"per 50 MiB" + (f" ({why_not})" if why_not else "")
        )
    notes.extend(f"FAILED {failure}" for failure in failures)
    if not rows:
        raise RuntimeError("; ".join(failures) or "no transfer completed")
    return {"name": "transfer", "rows": rows, "notes": notes}


def _our_rows(leg: Leg, reference: Leg | None, startup: float | None) -> list[dict[str, Any]]:
    if reference is not None:
        goal = TARGET_RATIO * reference.median_wall_mibps()
        throughput_target = f">= {goal:.1f} ({TARGET_RATIO:g}x libswift, measured)"
    else:
        goal = TARGET_RATIO * LIBSWIFT_REFERENCE_MIBPS
        throughput_target = f">= {goal:.0f} ({TARGET_RATIO:g}x libswift ref)"
    rows = []
    transfer = leg.median_transfer_mibps()
    if transfer is not None:
        rows.append(row(f"{leg.name}: throughput", transfer, "MiB/s", throughput_target))
    rows.append(
        row(
            f"{leg.name}: throughput incl. start-up",
            leg.median_wall_mibps(),
            "MiB/s",
            throughput_target if transfer is None else None,
        )
    )
    rows.append(
        row(
            f"{leg.name}: leecher CPU",
            leg.median_cpu_per_mib(),
            "CPU-s/MiB",
            f"<= {TARGET_CPU_PER_MIB:g}",
        )
    )
    if startup is not None:
        size_mib = leg.runs[0].size / MIB
        net = median([max(0.0, r.finished.cpu - startup) / size_mib for r in leg.runs])
        rows.append(row(f"{leg.name}: leecher CPU excl. start-up", net, "CPU-s/MiB"))
    if reference is not None:
        rows.append(
            row(
                f"{leg.name}: vs libswift->libswift (incl. start-up)",
                leg.median_wall_mibps() / reference.median_wall_mibps(),
                "x",
                f">= {TARGET_RATIO:g}",
            )
        )
    return rows


def _libswift_rows(legs: dict[str, Leg], reference: Leg) -> list[dict[str, Any]]:
    rows = []
    for name, leg in legs.items():
        rows.append(
            row(f"{name} sha1: throughput incl. start-up", leg.median_wall_mibps(), "MiB/s")
        )
        rows.append(row(f"{name} sha1: leecher CPU", leg.median_cpu_per_mib(), "CPU-s/MiB"))
        if leg is not reference:
            ratio = leg.median_wall_mibps() / reference.median_wall_mibps()
            rows.append(row(f"{name} sha1: vs libswift->libswift", ratio, "x"))
    return rows


def _run_libswift_legs(
    swift: str,
    source: Path,
    size: int,
    expect: str,
    workdir: Path,
    our_sha1_swarm: str | None,
    notes: list[str],
    failures: list[str],
) -> dict[str, Leg]:
    legs: dict[str, Leg] = {}
    port = free_udp_port()
    try:
        with _libswift_seeder(swift, source, port, workdir) as seeder:
            root_hash = _start_libswift_seeder(seeder)
            if our_sha1_swarm is not None:
                same = "equals" if our_sha1_swarm == root_hash else "DIFFERS FROM"
                notes.append(f"libswift root hash {root_hash} {same} our SHA-1 swarm ID")
            for name, one_run in (
                (
                    "libswift->libswift",
                    lambda d: _libswift_leecher(swift, root_hash, port, size, expect, d),
                ),
                (
                    "libswift->ours",
                    lambda d: _our_leecher(root_hash, f"127.0.0.1:{port}", "sha1", size, expect, d),
                ),
            ):
                try:
                    legs[name] = _repeat(Leg(name, workdir), RUNS, one_run)
                    notes.append(legs[name].describe_runs())
                except RuntimeError as exc:
                    failures.append(f"{name}: {exc}")
    except RuntimeError as exc:
        failures.append(f"libswift seeder: {exc}")
    try:
        with _our_seeder(source, "sha1", workdir) as seeder:
            swarm_id, address = _start_our_seeder(seeder)
            our_port = int(address.rsplit(":", 1)[1])
            leg = _repeat(
                Leg("ours->libswift", workdir),
                RUNS,
                lambda d: _libswift_leecher(swift, swarm_id, our_port, size, expect, d),
            )
            legs[leg.name] = leg
            notes.append(leg.describe_runs())
    except RuntimeError as exc:
        failures.append(f"ours->libswift: {exc}")
    if "libswift->libswift" not in legs:
        return {}  # no reference, no ratios
    return legs
