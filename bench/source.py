"""Benchmark of the content source server (portal/source.py, issue 6): publish throughput into
a storage overlay, and segment fetch latency from a node that is not the source.

Set-up, all on 127.0.0.1: a storage overlay of 10 RELOAD peers (4 with ``--quick``), each its
own ``p2pcdn overlay`` process with TLS links (``reload.usages.config.make_overlay_dir``:
the storage Kinds, ``max-message-size`` raised for 64 KiB segments). The source runs in this
process as a RELOAD client (RFC 6940 §3.2.1) attached to one peer, and publishes a 20 MiB
file (2 MiB quick) of 1 KiB chunks in 64-chunk segments (:func:`portal.source.publish_vod`):
the figure is the wall time of the Store phase (every segment and CONTENT-META, replicated
by the overlay), not the hashing. It is measured with the default 8 Stores in flight and
with 1, to show what the pipeline's concurrency buys. A second client (the reader, attached
to another peer) then fetches every segment one after the other with
:meth:`reload.usages.client.ContentStore.get_segment` (Fetch routed to the responsible peer,
decode, verification against the root hash): median and p95 of those latencies.

The peers share this machine's 2 cores with the source and the reader, so the figures are a
lower bound of what separate hosts would do.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from bench.common import MIB, generate_file, python_module_command, row, spawn
from portal.source import SourceOptions, publish_vod
from reload.aio import OverlayNode, load_daemon_config
from reload.usages.client import ContentStore
from reload.usages.config import add_daemon, make_overlay_dir

OVERLAY = "bench-source.p2pcdn"
SOURCE_USER = f"source@{OVERLAY}"


@contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` while the block runs (children inherit it)."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _client_toml(root: Path, name: str, user: str, attach: tuple[str, int]) -> Path:
    """A client daemon TOML (RFC 6940 §3.2.1) attached through ``attach``."""
    path = add_daemon(root, name, user, link="tls", client=True)
    path.write_text(path.read_text() + f'bootstrap = ["{attach[0]}:{attach[1]}"]\n')
    return path


async def _measure(
    root: Path, content: Path, peers: list[Path], size: int
) -> tuple[dict[int, float], list[float]]:
    attach = [load_daemon_config(p).listen for p in peers]
    source_toml = _client_toml(root, "source", SOURCE_USER, attach[0])
    throughput: dict[int, float] = {}
    for concurrency in (8, 1):
        options = SourceOptions(
            name=f"movie-{concurrency}", overlay=source_toml, concurrency=concurrency
        )
        source = await publish_vod(content, options)
        report = source.report
        await source.close()
        if report.stats.stored != report.segments + 1:
            raise RuntimeError(f"stored {report.stats.stored} of {report.segments + 1} values")
        throughput[concurrency] = size / MIB / report.seconds
    reader_toml = _client_toml(root, "reader", f"reader@{OVERLAY}", attach[-1])
    reader_node = OverlayNode.from_config(load_daemon_config(reader_toml))
    await reader_node.start(join_timeout=30.0)
    latencies: list[float] = []
    try:
        reader = ContentStore(reader_node, f"reader@{OVERLAY}")
        meta = await reader.get_meta(SOURCE_USER, "movie-8")
        assert meta.segments is not None
        for index in range(meta.segments):
            started = time.perf_counter()
            chunks = await reader.get_segment(meta, index)
            latencies.append(time.perf_counter() - started)
            if not chunks:
                raise RuntimeError(f"segment {index} is empty")
    finally:
        await reader_node.close()
    return throughput, latencies


def run(quick: bool = False) -> dict[str, Any]:
    nodes = 4 if quick else 10
    size = 2 * MIB if quick else 20 * MIB
    with tempfile.TemporaryDirectory(prefix="bench-source-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        peers = make_overlay_dir(root / "overlay", OVERLAY, nodes, "storage", link="tls")
        content = root / "content.bin"
        generate_file(content, size)
        started = time.perf_counter()
        children = []
        # TLS links under uvloop fail (reload/links.py asserts an asyncio.Transport, which
        # uvloop's is not): the peers run on the stdlib loop until that is fixed.
        stack.enter_context(_environment("P2PCDN_LOOP", "asyncio"))
        for i, toml in enumerate(peers):
            child = stack.enter_context(
                spawn(
                    python_module_command("lab.cli", "overlay", "--config", str(toml)),
                    root,
                    root / f"peer{i}.log",
                )
            )
            if i == 0:
                child.read_line(30.0)  # node 0 created the overlay: the others join it
            children.append(child)
        for child in children[1:]:
            child.read_line(60.0)  # its Node-ID: joined
        joined = time.perf_counter() - started
        time.sleep(2.0)  # a stabilization round, so replicas go to settled successors
        throughput, latencies = asyncio.run(
            asyncio.wait_for(_measure(root / "overlay", content, peers, size), 300)
        )
    p95 = statistics.quantiles(latencies, n=20)[-1] if len(latencies) >= 2 else latencies[0]
    mb = size // MIB
    rows = [
        row(f"publish {mb} MiB, {nodes} peers, 8 Stores in flight", throughput[8], "MiB/s"),
        row(f"publish {mb} MiB, {nodes} peers, 1 Store in flight", throughput[1], "MiB/s"),
        row("segment fetch (64 KiB, verified), median", statistics.median(latencies) * 1e3, "ms"),
        row("segment fetch (64 KiB, verified), p95", p95 * 1e3, "ms"),
    ]
    return {
        "rows": rows,
        "notes": [
            f"{nodes} `p2pcdn overlay` processes (TLS links) joined in {joined:.1f} s; source "
            f"and reader are RELOAD clients in the benchmark process; {len(latencies)} "
            "segments fetched one after the other",
        ],
    }
