"""FIND latency of a tracker in overlay mode against a standalone tracker (issue 6 benchmark).

One process, one event loop, everything on 127.0.0.1: a standalone tracker and a tracker
overlay of three trackers (RELOAD over TLS links, :func:`reload.usages.config.make_overlay_dir`).
A cacher reports :data:`SWARMS` swarms to one tracker in one batch availability report (one
PEER-BATCH Store per responsible node); a viewer asks another tracker, one FIND at a time over
binary UDP (the client library), so each figure is a request's whole round trip:

* **standalone** — the cacher and the viewer at the same standalone tracker;
* **overlay, cached** — FINDs at the other tracker for swarms it Fetched less than
  ``fetch_cache`` (1 s) ago: the local state and the cached peers are merged at once;
* **overlay, Fetch** — each FIND for a swarm the tracker has not Fetched: one RELOAD Fetch of
  SWARM-PEERS, answered by the responsible node from the PEER-BATCH it holds.

Median and 95th percentile over a bounded count of FINDs (quick: fewer).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import median, row

SWARMS, QUICK_SWARMS = 400, 100
CACHED_FINDS, QUICK_CACHED_FINDS = 400, 100
TIMEOUT = 120.0


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


async def _finds(url: str, peer: str, swarms: list[str], *, twice: bool = False) -> list[float]:
    """Latency of one FIND per swarm (ms); ``twice``: each measured FIND follows an unmeasured
    one for the same swarm (so the overlay has it cached)."""
    from ppsp.tracker.client import open_client

    out = []
    async with open_client(url, peer, timeout=10.0) as client:
        await client.stat_report()  # the socket is open before the first measured FIND
        for swarm in swarms:
            if twice:
                await client.find(swarm)
            started = time.perf_counter()
            response = await client.find(swarm)
            out.append((time.perf_counter() - started) * 1000)
            peers = response.swarm_results[0].peers or []
            if not any(p.peer_id == "cacher" for p in peers):
                raise RuntimeError(f"FIND {swarm[:12]}… did not list the cacher")
    return out


async def _report(url: str, swarms: list[str]) -> None:
    from ppsp.tracker.client import open_client
    from ppsp.tracker.messages import PeerAddress, Role, SwarmAvailability

    async with open_client(url, "cacher", timeout=30.0) as cacher:
        await cacher.connect(
            peer_addresses=[PeerAddress("127.0.0.1", 7100)],
            role=Role.CACHER,
            availability=[SwarmAvailability(s, ranges=[(0, 63)]) for s in swarms],
        )


async def _viewer(url: str, swarm: str) -> None:
    from ppsp.tracker.client import open_client
    from ppsp.tracker.messages import Action, PeerMode, SwarmAction

    async with open_client(url, "viewer", timeout=10.0) as viewer:
        await viewer.connect([SwarmAction(swarm, Action.JOIN, PeerMode.LEECH)])


async def _measure(quick: bool) -> tuple[dict[str, list[float]], dict[str, Any]]:
    from ppsp.tracker.config import OverlaySettings, TrackerDaemonConfig
    from ppsp.tracker.server import TrackerServer, serve
    from reload.usages.config import make_overlay_dir

    count = QUICK_SWARMS if quick else SWARMS
    cached_count = QUICK_CACHED_FINDS if quick else CACHED_FINDS
    swarms = [f"{i:040x}" for i in range(count)]
    results: dict[str, list[float]] = {}
    info: dict[str, Any] = {}

    standalone = await serve(TrackerDaemonConfig(udp=("127.0.0.1", 0)))
    try:
        url = standalone.urls[0]
        await _report(url, swarms)
        await _viewer(url, "ff" * 20)
        await _finds(url, "viewer", swarms[:20])  # warm-up
        results["standalone"] = await _finds(url, "viewer", (swarms * 4)[:cached_count])
    finally:
        standalone.close()
        await standalone.wait_closed()

    with tempfile.TemporaryDirectory(prefix="p2pcdn-bench-") as tmp:
        daemons = make_overlay_dir(Path(tmp), "bench.trackers", 3, "tracker", bootstrap_count=1)
        servers: list[TrackerServer] = []
        try:
            for daemon in daemons:
                settings = OverlaySettings(daemon, coalesce=0.05)
                servers.append(
                    await serve(TrackerDaemonConfig(udp=("127.0.0.1", 0), overlay=settings))
                )
            first, last = servers[0], servers[-1]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # the ring: every tracker knows the others
                if all(s.overlay is not None and len(s.overlay._ring_view()) == 3 for s in servers):
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # the re-publication a ring change causes
            await _report(first.urls[0], swarms)
            assert first.overlay is not None
            overlay = first.overlay
            while time.monotonic() < deadline and (
                overlay.tracker.dirty_swarms or overlay._wake.is_set()
            ):
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            info["membership Stores for the batch"] = (
                overlay.counters.peer_batch_stores + overlay.counters.swarm_peers_stores
            )
            url = last.urls[0]
            await _viewer(url, "ff" * 20)
            results["overlay, Fetch"] = await _finds(url, "viewer", swarms)
            # A swarm FINDed again within fetch_cache (1 s): merged from the cache. Each
            # measured FIND follows an unmeasured one that Fetched, so every one is a hit.
            cached = await _finds(url, "viewer", (swarms * 4)[:cached_count], twice=True)
            results["overlay, cached"] = cached
            assert last.overlay is not None
            info["Fetches"] = last.overlay.counters.fetches
            info["Fetch failures"] = last.overlay.counters.fetch_failures
        finally:
            for server in servers:
                server.close()
            for server in servers:
                await asyncio.wait_for(server.wait_closed(), 10)
    return results, info


def run(quick: bool = False) -> dict[str, Any]:
    results, info = asyncio.run(asyncio.wait_for(_measure(quick), TIMEOUT))
    rows = []
    for name in ("standalone", "overlay, cached", "overlay, Fetch"):
        values = results[name]
        rows.append(row(f"FIND latency, {name}: median", median(values), "ms"))
        rows.append(row(f"FIND latency, {name}: p95", _p95(values), "ms"))
    rows.append(
        row(
            "batch report, 3-tracker overlay: membership Stores",
            info["membership Stores for the batch"],
            "Stores",
            "≤ 3",
        )
    )
    notes = [
        f"{len(results['overlay, Fetch'])} swarms in one batch report at tracker 1; FINDs one "
        f"at a time over binary UDP at tracker 3 (client library, same process and event loop); "
        f"{info['Fetches']} RELOAD Fetches, {info['Fetch failures']} failed; mean of the "
        f"Fetch case {statistics.fmean(results['overlay, Fetch']):.2f} ms",
        "RELOAD over TLS links on 127.0.0.1 (make_overlay_dir); the standalone tracker gets the "
        "same batch report and answers the same FINDs",
    ]
    return {"name": "tracker_overlay", "rows": rows, "notes": notes}
