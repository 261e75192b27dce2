"""Benchmark of the PPSPP data structures: ChunkSet (chunk availability) and Merkle checks.

``run()`` returns ``{"name": "structures", "rows": [...], "notes": [...]}``; each row is one
metric in operations per second. The Merkle rows compare against plain ``hashlib`` on the
same chunks in the same run, so the ratio shows the tree's own overhead.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ppsp.peer.live import forget_nodes_before
from ppsp.peer.merkle import HashTree
from ppsp.peer.messages import MerkleHashFunction
from ppsp.peer.ranges import ChunkSet
from ppsp.peer.storage import DownloadStorage

CHUNK = 1024


def _rate(count: int, fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    return count / dt if dt > 0 else float("inf")


def _chunkset_rows(n: int) -> tuple[list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    rng = random.Random(1)
    order = list(range(n))
    rng.shuffle(order)

    def in_order() -> None:
        cs = ChunkSet()
        for c in range(n):
            cs.add(c)

    rows.append(
        {
            "metric": f"ChunkSet.add in order ({n} chunks)",
            "value": _rate(n, in_order),
            "unit": "ops/s",
        }
    )

    half = ChunkSet()
    peak_runs = 0

    def random_order() -> None:
        nonlocal peak_runs
        cs = ChunkSet()
        for i, c in enumerate(order):
            cs.add(c)
            if i == n // 2:
                peak_runs = len(cs)

    rows.append(
        {
            "metric": f"ChunkSet.add random order ({n} chunks)",
            "value": _rate(n, random_order),
            "unit": "ops/s",
        }
    )
    for c in order[: n // 2]:
        half.add(c)
    probes = [rng.randrange(n) for _ in range(min(n, 200_000))]

    def membership() -> None:
        for c in probes:
            _ = c in half

    rows.append(
        {
            "metric": f"ChunkSet membership ({len(half)} runs)",
            "value": _rate(len(probes), membership),
            "unit": "ops/s",
        }
    )

    def covering() -> None:
        for c in probes:
            half.covering_interval(c)

    rows.append(
        {
            "metric": f"ChunkSet.covering_interval ({len(half)} runs)",
            "value": _rate(len(probes), covering),
            "unit": "ops/s",
        }
    )
    notes = [f"random-order add peaks at {peak_runs} runs half way (n/4 expected)"]
    return rows, notes


def _merkle_rows(nchunks: int, hf: MerkleHashFunction) -> list[dict[str, Any]]:
    data = os.urandom(nchunks * CHUNK)
    mv = memoryview(data)
    chunks = [mv[i * CHUNK : (i + 1) * CHUNK] for i in range(nchunks)]
    seed = HashTree.from_content(data, CHUNK, hf)
    name = hf.name
    new = getattr(hashlib, hf.hashlib_name)

    def baseline() -> None:
        for c in chunks:
            new(c).digest()

    def hot() -> None:
        # Every leaf verified already: the in-order case where the chunk's hash arrived as
        # the previous chunk's uncle. One hash, one compare.
        for i, c in enumerate(chunks):
            seed.verify_chunk(i, c)

    # A leecher downloading in order: INTEGRITY hashes offered as they would arrive, then
    # the chunk checked. Uncle lists are prepared outside the timed loop.
    acked = ChunkSet()
    plan: list[list[tuple[int, bytes]]] = []
    for i in range(nchunks):
        plan.append([(b, seed.hash_at(b) or b"") for b in seed.uncles_to_send(i, acked)])
        acked.add(i)
    leech = HashTree.for_root(seed.root_hash, CHUNK, hf)

    def download() -> None:
        offer = leech.offer_hash
        verify = leech.verify_chunk
        for i, c in enumerate(chunks):
            hashes = plan[i]
            if i == 0:
                leech.offer_peaks(hashes)
            for b, h in hashes:
                offer(b, h)
            if not verify(i, c):
                raise RuntimeError(f"chunk {i} failed to verify")

    def build() -> None:
        HashTree.from_content(data, CHUNK, hf)

    def store() -> None:
        # The leecher's tree is complete now: measure only the storage bookkeeping + pwrite.
        with tempfile.TemporaryDirectory() as tmp:
            dl = DownloadStorage.create(Path(tmp) / "content", leech)
            write = dl.write_chunk
            for i, c in enumerate(chunks):
                write(i, c)
            dl.close()

    return [
        {
            "metric": f"hashlib {name} of 1 KiB (baseline)",
            "value": _rate(nchunks, baseline),
            "unit": "ops/s",
        },
        {
            "metric": f"Merkle {name} verify_chunk, hot path",
            "value": _rate(nchunks, hot),
            "unit": "chunks/s",
        },
        {
            "metric": f"Merkle {name} in-order download (offer uncles + verify)",
            "value": _rate(nchunks, download),
            "unit": "chunks/s",
        },
        {
            "metric": f"Merkle {name} build tree from content",
            "value": _rate(nchunks, build),
            "unit": "chunks/s",
        },
        {
            "metric": f"DownloadStorage.write_chunk ({name} tree, incl. resume journal)",
            "value": _rate(nchunks, store),
            "unit": "chunks/s",
        },
    ]


def _live_window_rows(window: int, slides: int) -> list[dict[str, Any]]:
    """A live viewer's discard window (RFC 7574 §6.2) moving one chunk at a time over a table
    of the trusted tree nodes of ``window`` chunks: forgetting what left it, incrementally
    (ppsp.peer.live.forget_nodes_before) against a scan of the whole table per chunk (how it
    was done before; 24 lab viewers with 8,192-chunk windows saturated two cores)."""

    def nodes(first: int, last: int) -> dict[tuple[int, int], bytes]:
        table: dict[tuple[int, int], bytes] = {}
        height = 0
        while (last >> height) > (first >> height) or height < 14:
            for index in range(first >> height, (last >> height) + 1):
                table[(height, index)] = b""
            height += 1
        return table

    def scan(table: dict[tuple[int, int], bytes], chunk: int) -> None:
        for key in [k for k in table if (k[1] + 1) << k[0] <= chunk]:
            del table[key]

    def slide(forget: Callable[[dict[tuple[int, int], bytes], int, int], None]) -> float:
        table = nodes(0, window - 1)
        t0 = time.perf_counter()
        for step in range(1, slides + 1):
            table[(0, window - 1 + step)] = b""  # the newest chunk arrives ...
            forget(table, step - 1, step)  # ... and the oldest leaves the window
        return slides / (time.perf_counter() - t0)

    incremental = slide(forget_nodes_before)
    full = slide(lambda table, _old, new: scan(table, new))
    return [
        {
            "metric": f"live window slide ({window} chunks): incremental forgetting",
            "value": incremental,
            "unit": "chunks/s",
        },
        {
            "metric": f"live window slide ({window} chunks): whole-table scan (before)",
            "value": full,
            "unit": "chunks/s",
        },
        {
            "metric": "live window slide: incremental / scan",
            "value": incremental / full,
            "unit": "x",
        },
    ]


def run(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark; ``quick`` uses 10x smaller sizes (a second or two)."""
    n = 100_000 if quick else 1_000_000
    nchunks = 8192 if quick else 65536
    rows, notes = _chunkset_rows(n)
    for hf in (MerkleHashFunction.SHA1, MerkleHashFunction.SHA256):
        rows.extend(_merkle_rows(nchunks, hf))
    notes.append(f"Merkle rows: {nchunks} chunks of {CHUNK} B ({nchunks * CHUNK >> 20} MiB)")
    rows.extend(_live_window_rows(8192, 500 if quick else 2000))
    return {"name": "structures", "rows": rows, "notes": notes}


if __name__ == "__main__":
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
