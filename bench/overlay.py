"""Benchmark of the RELOAD overlay (issue 5): the simulation and real sockets.

Simulation (:func:`reload.sim.run_simulation`, virtual time, the same sans-IO node code):

* mean and p99 **hops** of a Fetch for N = 100, 1,000 and 10,000 peers (quick: 100 and 1,000),
  no churn, one simulated minute of fetches, against Chord's ½·log2 N; the target is
  mean ≤ ½·log2 N + 1. N = 100 builds the ring through the protocol's joins (§10.5), larger
  N through the simulator's oracle (a stabilized ring), see reload/sim.py;
* **fetch success rate and latency under churn** of 10 % of N per minute (half crashes, half
  Leaves, each replaced by a joining node) for 30 simulated minutes (quick: 5 minutes),
  N = 1,000 (quick: 100), of values stored one stabilization interval before churn starts;
  target 100 %;
* **wall time of the 10,000-node run** (target ≤ 5 minutes; not in quick mode).

The hops runs are plotted to ``docs/overlay-hops.png`` (mean and p99 hops against N on a log2
axis, with ½·log2 N and ½·log2 N + 1). The list of N comes from ``BENCH_OVERLAY_SIZES``
(comma-separated, e.g. ``100,300``) when set; ``python -m bench.overlay --sizes 100,300``
runs only the hops runs and the plot (``--plot PATH`` writes elsewhere).

Real sockets (:class:`reload.aio.OverlayNode` on 127.0.0.1, DTLS links, ECDSA P-256
certificates from a CA made here, one process and event loop):

* **stores/s and fetches/s against one node**: a client peer of a 5-node overlay sends Store
  (then Fetch) requests for one Resource-ID whose responsible peer is another node, one
  request outstanding at a time and then 8 at a time; each Store is also replicated by the
  responsible peer to its two successors (§10.4);
* **fetch latency through a 20-node overlay**: every node stores a value at its own
  Resource-ID, then random nodes fetch random values; median and p99 latency and mean hops.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import row
from reload import security
from reload.access import chord_resource_id
from reload.aio import DEFAULT_KINDS, LAB_KIND, OverlayNode
from reload.links import LinkConfig
from reload.messages import DataValue
from reload.node import NodeConfig
from reload.sim import SimReport, run_simulation

OVERLAY = "bench.p2pcdn.test"
SOCKET_SECONDS = 3.0
PLOT = Path(__file__).resolve().parent.parent / "docs" / "overlay-hops.png"
SIZES_ENV = "BENCH_OVERLAY_SIZES"


def _hop_bound(n: int) -> float:
    return 0.5 * math.log2(n) + 1


# ---------------------------------------------------------------------------------- sockets


class _Lab:
    def __init__(self, count: int) -> None:
        self.ca_key, self.ca_cert = security.create_overlay_ca(OVERLAY)
        self.creds: list[tuple[str, bytes, security.PrivateKey, Any]] = []
        for i in range(count):
            node_ids = security.random_node_ids(1)
            key = security.generate_private_key()
            user = f"bench{i}@{OVERLAY}"
            cert = security.issue_node_certificate(
                self.ca_key, self.ca_cert, key.public_key(), node_ids, user, OVERLAY
            )
            self.creds.append((user, node_ids[0], key, cert))

    def node(self, i: int, bootstrap: list[tuple[str, int]], data_dir: Path) -> OverlayNode:
        _user, node_id, key, cert = self.creds[i]
        link_config = LinkConfig(OVERLAY, cert, key, trust_roots=(self.ca_cert,))
        node_config = NodeConfig(OVERLAY, kinds=DEFAULT_KINDS)
        return OverlayNode(
            node_config,
            link_config,
            security.Signer(key, cert, node_id),
            bootstrap=bootstrap,
            data_dir=data_dir,
            keepalive=5.0,
        )

    def resource(self, i: int) -> bytes:
        return chord_resource_id(self.creds[i][0].encode())


async def _overlay(lab: _Lab, count: int, directory: Path) -> list[OverlayNode]:
    first = lab.node(0, [], directory / "n0")
    await first.start()
    assert first.address is not None
    nodes = [first]
    for i in range(1, count):
        node = lab.node(i, [first.address], directory / f"n{i}")
        await node.start()
        nodes.append(node)
    await asyncio.sleep(1.0)  # let the late Updates settle
    return nodes


def _responsible(nodes: list[OverlayNode], resource: bytes) -> bytes:
    ids = sorted(n.node_id for n in nodes)
    return next((i for i in ids if i >= resource), ids[0])


async def _rate(client: OverlayNode, make: Any, window: int, seconds: float) -> float:
    done = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await make()
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(window)))
    return done / (time.monotonic() - started)


async def _one_node_rates(seconds: float) -> dict[str, float]:
    lab = _Lab(5)
    with tempfile.TemporaryDirectory() as tmp:
        nodes = await _overlay(lab, 5, Path(tmp))
        try:
            index = next(
                i for i, n in enumerate(nodes) if _responsible(nodes, lab.resource(i)) != n.node_id
            )
            client, resource = nodes[index], lab.resource(index)
            counter = iter(range(1 << 30))

            async def store() -> None:
                await asyncio.sleep(0.002)  # storage_time is in ms and must grow (§7.4.1.1)
                await client.store(resource, LAB_KIND, [DataValue(True, b"%d" % next(counter))])

            async def fetch() -> None:
                await client.fetch(resource, LAB_KIND)

            return {
                "store1": await _rate(client, store, 1, seconds),
                "fetch1": await _rate(client, fetch, 1, seconds),
                "fetch8": await _rate(client, fetch, 8, seconds),
            }
        finally:
            for node in nodes:
                await node.abort()


async def _twenty_node_latency(fetches: int) -> tuple[list[float], list[int], float]:
    lab = _Lab(20)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        nodes = await _overlay(lab, 20, Path(tmp))
        built = time.monotonic() - started
        try:
            for i, node in enumerate(nodes):
                await node.store(lab.resource(i), LAB_KIND, [DataValue(True, b"v%d" % i)])
            rng = random.Random(5)
            latencies: list[float] = []
            hops: list[int] = []
            for _ in range(fetches):
                reader = rng.choice(nodes)
                target = rng.randrange(len(nodes))
                t0 = time.perf_counter()
                value = await reader.fetch_single(lab.resource(target), LAB_KIND)
                latencies.append(time.perf_counter() - t0)
                hops.append(reader.last_hops)
                if value != b"v%d" % target:
                    raise AssertionError("fetch returned the wrong value")
            return latencies, hops, built
        finally:
            for node in nodes:
                await node.abort()


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


# ------------------------------------------------------------------------------- simulation


def _sizes(quick: bool) -> tuple[int, ...]:
    """The N of the hops runs: ``BENCH_OVERLAY_SIZES`` when set, else by mode."""
    text = os.environ.get(SIZES_ENV, "").strip()
    if text:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
        if not sizes or min(sizes) < 2:
            raise ValueError(f"{SIZES_ENV}: give N >= 2, comma-separated")
        return sizes
    return (100, 1000) if quick else (100, 1000, 10_000)


def _hops_rows(
    sizes: tuple[int, ...],
) -> tuple[list[dict[str, Any]], list[str], dict[int, SimReport]]:
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    reports: dict[int, SimReport] = {}
    for n in sizes:
        report = run_simulation(n, churn=0.0, minutes=1.0, seed=1)
        reports[n] = report
        bound = _hop_bound(n)
        rows.append(row(f"sim N={n}: mean hops", report.mean_hops, "hops", f"<= {bound:.2f}"))
        rows.append(row(f"sim N={n}: p99 hops", report.p99_hops, "hops"))
        rows.append(row(f"sim N={n}: 1/2 log2 N (Chord)", 0.5 * math.log2(n), "hops"))
        if n == 10_000:
            rows.append(row("sim N=10000: wall time", report.wall_time, "s", "<= 300"))
        notes.append(f"sim N={n}: " + "; ".join(report.lines()[1:]))
    return rows, notes, reports


def plot_hops(reports: dict[int, SimReport], path: Path = PLOT) -> Path:
    """Mean and p99 hops against N (log2 axis) with Chord's ½·log2 N and the target
    ½·log2 N + 1, as a PNG at ``path`` (matplotlib, Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(reports)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.plot(sizes, [reports[n].mean_hops for n in sizes], "o-", label="mean hops")
    ax.plot(sizes, [reports[n].p99_hops for n in sizes], "s--", label="p99 hops")
    ax.plot(sizes, [0.5 * math.log2(n) for n in sizes], ":", label="½·log2 N (Chord)")
    ax.plot(sizes, [_hop_bound(n) for n in sizes], "-.", label="½·log2 N + 1 (target)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
    ax.set_xlabel("peers N")
    ax.set_ylabel("overlay hops of a Fetch")
    ax.set_title("CHORD-RELOAD hops in the simulation (no churn)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _sim_rows(quick: bool) -> tuple[list[dict[str, Any]], list[str], dict[int, SimReport]]:
    rows, notes, reports = _hops_rows(_sizes(quick))
    try:
        notes.append(f"hops plot: {plot_hops(reports)}")
    except ImportError:
        notes.append("hops plot skipped: matplotlib is not installed (pip install -e .[dev])")
    churn_n, minutes = (100, 5.0) if quick else (1000, 30.0)
    churn = run_simulation(churn_n, churn=10.0, minutes=minutes, seed=2)
    rows += [
        row(
            f"sim N={churn_n}, 10 %/min churn, {minutes:g} min: fetch success",
            100 * churn.success_rate,
            "%",
            "100",
        ),
        row(f"sim N={churn_n} churn: mean fetch latency", 1000 * churn.mean_latency, "ms"),
        row(f"sim N={churn_n} churn: p99 fetch latency", 1000 * churn.p99_latency, "ms"),
        row(f"sim N={churn_n} churn: mean hops", churn.mean_hops, "hops"),
        row(f"sim N={churn_n} churn: wall time", churn.wall_time, "s"),
    ]
    notes.append("churn run: " + "; ".join(churn.lines()))
    return rows, notes, reports


def run(quick: bool = False) -> dict[str, Any]:
    """Measure; return ``{"name": "overlay", "rows": [...], "notes": [...]}``."""
    rows, notes, _ = _sim_rows(quick)
    seconds = 1.0 if quick else SOCKET_SECONDS
    rates = asyncio.run(_one_node_rates(seconds))
    rows += [
        row("DTLS: stores/s, one outstanding (1 hop, replicated x3)", rates["store1"], "stores/s"),
        row("DTLS: fetches/s, one outstanding (1 hop)", rates["fetch1"], "fetches/s"),
        row("DTLS: fetches/s, 8 outstanding (1 hop)", rates["fetch8"], "fetches/s"),
    ]
    latencies, hops, built = asyncio.run(_twenty_node_latency(30 if quick else 100))
    rows += [
        row(
            "20-node DTLS overlay: median fetch latency", 1000 * statistics.median(latencies), "ms"
        ),
        row("20-node DTLS overlay: p99 fetch latency", 1000 * _p99(latencies), "ms"),
        row("20-node DTLS overlay: mean hops", statistics.fmean(hops), "hops"),
        row("20-node DTLS overlay: build time (sequential joins)", built, "s"),
    ]
    notes += [
        "hops = the answer's Via List length + 1 (reload.node.RequestDone.hops)",
        "real sockets: one process, one event loop, 127.0.0.1, DTLS-UDP-SR-NO-ICE; Simple "
        "Reliability is stop-and-wait with a 10 ms pause after each ack (§6.6.3.1), which "
        "bounds the per-link message rate",
    ]
    return {"name": "overlay", "rows": rows, "notes": notes}


def main(argv: list[str] | None = None) -> int:
    """Only the hops runs and their plot (``python -m bench.overlay --sizes 100,300``)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--sizes", default="100,1000,10000", help="comma-separated N list")
    parser.add_argument("--plot", type=Path, default=PLOT, help=f"PNG to write ({PLOT})")
    args = parser.parse_args(argv)
    os.environ[SIZES_ENV] = args.sizes
    rows, _notes, reports = _hops_rows(_sizes(quick=False))
    for entry in rows:
        print(f"{entry['metric']}: {entry['value']:.2f} {entry['unit']}")
    print(f"plot: {plot_hops(reports, args.plot)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
