"""``python -m bench [--quick] [--only NAME]``: run the benchmarks, print a table, save JSON.

Results go to ``bench/results/<name>-<UTC timestamp>.json`` (one file per benchmark) and the
whole run to ``bench/results/latest.json``, each with a description of the machine. A
benchmark module that is missing (not written yet) or that fails is reported in the table
and the JSON, and the others still run; the exit status is 1 if any benchmark failed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import signal
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench.common import machine_info

BENCHMARKS = (
    "codec",
    "structures",
    "transfer",
    "tracker",
    "reload",
    "overlay",
    "source",
    "tracker_overlay",
    "reload_codec",
    "fcc",
    "cacher_capacity",
)
RESULTS = Path(__file__).resolve().parent / "results"


def run_benchmark(name: str, quick: bool) -> dict[str, Any]:
    """Import ``bench.<name>`` and run it; never raises (but for KeyboardInterrupt)."""
    started = time.perf_counter()
    entry: dict[str, Any] = {"name": name, "status": "ok", "rows": [], "notes": []}
    try:
        module = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"bench.{name}":
            entry.update(status="missing", error=f"bench/{name}.py does not exist yet")
        else:
            entry.update(status="failed", error=f"import failed: {exc}")
            entry["traceback"] = traceback.format_exc()
        return entry
    except Exception as exc:
        entry.update(status="failed", error=f"import failed: {type(exc).__name__}: {exc}")
        entry["traceback"] = traceback.format_exc()
        return entry
    try:
        result = module.run(quick=quick)
        problem = validate(result)
        if problem:
            entry.update(status="failed", error=f"invalid result: {problem}")
        else:
            entry.update(rows=result["rows"], notes=list(result.get("notes", [])))
    except Exception as exc:
        entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        entry["traceback"] = traceback.format_exc()
    entry["seconds"] = round(time.perf_counter() - started, 3)
    return entry


def validate(result: object) -> str | None:
    """Why ``result`` does not follow the benchmark contract (bench/__init__.py), or None."""
    if not isinstance(result, dict):
        return f"run() returned {type(result).__name__}, not dict"
    rows = result.get("rows")
    if not isinstance(rows, list):
        return "'rows' is not a list"
    for i, item in enumerate(rows):
        if not isinstance(item, dict):
            return f"row {i} is not a dict"
        if not isinstance(item.get("metric"), str) or not isinstance(item.get("unit"), str):
            return f"row {i} lacks a 'metric' or 'unit' string"
        value = item.get("value")
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"row {i} ({item.get('metric')}) has a non-numeric value"
    notes = result.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        return "'notes' is not a list of strings"
    return None


def format_value(value: float) -> str:
    """Enough digits to compare, no more: 1,234,567 / 123.4 / 12.34 / 0.0421."""
    if not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1 or value == 0:
        return f"{value:.2f}"
    return f"{value:.3g}"


def render_table(results: list[dict[str, Any]]) -> str:
    lines: list[list[str]] = [["benchmark", "metric", "value", "unit", "target"]]
    for entry in results:
        if entry["status"] != "ok":
            lines.append([entry["name"], f"{entry['status'].upper()}: {entry.get('error', '')}"])
            continue
        for item in entry["rows"]:
            lines.append(
                [
                    entry["name"],
                    item["metric"],
                    format_value(float(item["value"])),
                    item["unit"],
                    str(item.get("target", "")),
                ]
            )
    widths = [0] * 5
    for line in lines:
        if len(line) == 5:
            widths = [max(w, len(cell)) for w, cell in zip(widths, line, strict=True)]
    widths[0] = max(len(line[0]) for line in lines)
    out = []
    for n, line in enumerate(lines):
        if len(line) == 5:
            cells = [
                cell.rjust(widths[i]) if i == 2 and n else cell.ljust(widths[i])
                for i, cell in enumerate(line)
            ]
            out.append("  ".join(cells).rstrip())
        else:
            out.append(f"{line[0].ljust(widths[0])}  {line[1]}")
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    for entry in results:
        for note in entry.get("notes", []):
            out.append(f"[{entry['name']}] {note}")
    return "\n".join(out)


def save(results: list[dict[str, Any]], run_info: dict[str, Any], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = run_info["started"].replace("-", "").replace(":", "")
    written = []
    for entry in results:
        path = directory / f"{entry['name']}-{stamp}.json"
        path.write_text(json.dumps({**run_info, "result": entry}, indent=2) + "\n")
        written.append(path)
    latest = directory / "latest.json"
    latest.write_text(json.dumps({**run_info, "results": results}, indent=2) + "\n")
    written.append(latest)
    return written


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C, so every benchmark's `finally` kills its child processes.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smaller workloads, for a smoke test (seconds)"
    )
    parser.add_argument(
        "--only",
        metavar="NAME",
        action="append",
        choices=BENCHMARKS,
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--results",
        metavar="DIR",
        type=Path,
        default=RESULTS,
        help="where to write the JSON (default bench/results)",
    )
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)

    names = [name for name in BENCHMARKS if not args.only or name in args.only]
    run_info: dict[str, Any] = {
        "started": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "quick": args.quick,
        "machine": machine_info(),
    }
    machine = run_info["machine"]
    print(
        f"p2pcdn benchmarks{' (quick)' if args.quick else ''}: {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}, event loop {machine['event_loop']}, "
        f"git {machine['git'] or 'unknown'}",
        flush=True,
    )
    results = []
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        entry = run_benchmark(name, args.quick)
        if entry["status"] == "failed" and "traceback" in entry:
            print(entry["traceback"], file=sys.stderr)
        results.append(entry)
    print(render_table(results))
    if not args.no_save:
        written = save(results, run_info, args.results)
        print(f"results: {', '.join(str(p) for p in written)}")
    return 1 if any(entry["status"] == "failed" for entry in results) else 0


if __name__ == "__main__":
    sys.exit(main())
