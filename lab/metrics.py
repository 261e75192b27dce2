"""Lab metrics: aggregate the daemons' JSON reports; write results JSON, plots and a report.

* :func:`aggregate_csc` — from the CSCs' ``--json`` reports (csc/cli.py), per phase of a
  scenario: the startup-delay distribution (CDF, median, p95), Q1 = play / (play + stall),
  Q2 = 1 − viewers who stalled / viewers (LiveSky §4.4), stall events, channel changes without
  a first frame, and bytes by origin (cacher, peer, storage overlay, source).
* :func:`write_outputs` — ``results.json``, PNG plots (matplotlib, Agg backend) and
  ``report.md``, the file a person reads first.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

#: Origins of bytes as the CSC accounts them (csc/core.py Origin), in report order.
ORIGINS: Final = ("cacher", "peer", "overlay", "source")
ORIGIN_LABELS: Final = {
    "cacher": "cacher",
    "peer": "peer",
    "overlay": "storage overlay",
    "source": "source",
}


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The ``fraction`` quantile by linear interpolation (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def cdf(values: Sequence[float]) -> list[tuple[float, float]]:
    """Points (value, share of values ≤ it) of the empirical CDF."""
    ordered = sorted(values)
    n = len(ordered)
    return [(v, (i + 1) / n) for i, v in enumerate(ordered)]


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def locality(reports: Sequence[Mapping[str, Any]], area_of: Mapping[str, str]) -> dict[str, Any]:
    """Share of the bytes the viewers received from inside their own area: each report's
    ``bytes_by_peer`` (csc/core.py), the serving address mapped to its host's area by
    ``area_of`` (IP → area). The storage overlay (no address) and unknown addresses count as
    outside. Overall and per viewer area."""
    inside = outside = 0
    by_area: dict[str, dict[str, int]] = {}
    by_role: dict[str, dict[str, int]] = {}
    for report in reports:
        viewer = str(report.get("area", ""))
        area = by_area.setdefault(viewer, {"inside": 0, "outside": 0})
        for entry in report.get("bytes_by_peer", []) or []:
            n = int(_number(entry.get("bytes")))
            addr = entry.get("addr")
            ip = str(addr).rsplit(":", 1)[0] if isinstance(addr, str) else None
            where = "inside" if ip is not None and area_of.get(ip) == viewer else "outside"
            area[where] += n
            role = by_role.setdefault(str(entry.get("role", "?")), {"inside": 0, "outside": 0})
            role[where] += n
            if where == "inside":
                inside += n
            else:
                outside += n
    total = inside + outside
    return {
        "inside_bytes": inside,
        "outside_bytes": outside,
        "inside_share": inside / total if total else None,
        "by_area": {
            a: {**v, "share": v["inside"] / (v["inside"] + v["outside"])}
            for a, v in sorted(by_area.items())
            if v["inside"] + v["outside"]
        },
        "by_role": by_role,
    }


def phase_metrics(
    reports: Sequence[Mapping[str, Any]], area_of: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Metrics of one phase from its CSC reports (one per CSC process); with ``area_of``
    (IP → area), the share of bytes served inside the viewer's area (:func:`locality`)."""
    delays: list[float] = []
    # A viewer's first channel is its tune-in: it also registers at the tracker and learns its
    # area's cacher there (one round trip to the core). The later ones are channel changes,
    # which go straight to the cacher the viewer knows (F4); the targets are about those.
    tune_ins: list[float] = []
    changes: list[float] = []
    handshakes: list[float] = []
    no_first_frame = 0
    stall_events = 0
    play = stall = 0.0
    stalled_viewers = 0
    by_origin = dict.fromkeys(ORIGINS, 0)
    by_area: dict[str, dict[str, int]] = {}
    for report in reports:
        channels = report.get("channels", [])
        viewer_stalls = 0
        for index, channel in enumerate(channels):
            delay = channel.get("startup_delay")
            if isinstance(delay, int | float):
                delays.append(float(delay))
                (changes if index else tune_ins).append(float(delay))
            else:
                no_first_frame += 1
            handshake = channel.get("handshake_delay")
            if isinstance(handshake, int | float):
                handshakes.append(float(handshake))
            viewer_stalls += int(_number(channel.get("stalls")))
        stall_events += viewer_stalls
        stalled_viewers += 1 if viewer_stalls else 0
        play += _number(report.get("play_time"))
        stall += _number(report.get("stall_time"))
        area = by_area.setdefault(str(report.get("area", "")), dict.fromkeys(ORIGINS, 0))
        for origin, count in dict(report.get("bytes", {})).items():
            by_origin[origin] = by_origin.get(origin, 0) + int(_number(count))
            area[origin] = area.get(origin, 0) + int(_number(count))
    viewers = len(reports)
    total = sum(by_origin.values())
    hops = [int(h) for r in reports for h in r.get("overlay_hops", []) or []]
    extra: dict[str, Any] = {}
    if area_of is not None:
        extra["locality"] = locality(reports, area_of)
    return {
        **extra,
        "overlay_hops": {
            "fetches": len(hops),
            "mean": sum(hops) / len(hops) if hops else None,
            "max": max(hops) if hops else None,
        },
        "viewers": viewers,
        "channel_changes": len(delays) + no_first_frame,
        "no_first_frame": no_first_frame,
        "startup_delays": sorted(delays),
        "startup_delay_median": percentile(delays, 0.5),
        "startup_delay_p95": percentile(delays, 0.95),
        "startup_delay_cdf": cdf(delays),
        "tune_in_delays": sorted(tune_ins),
        "tune_in_delay_median": percentile(tune_ins, 0.5),
        "tune_in_delay_p95": percentile(tune_ins, 0.95),
        "change_delays": sorted(changes),
        "change_delay_median": percentile(changes, 0.5),
        "change_delay_p95": percentile(changes, 0.95),
        "change_delay_cdf": cdf(changes),
        "handshake_delay_median": percentile(handshakes, 0.5),
        "q1": play / (play + stall) if play + stall > 0 else None,
        "q2": 1.0 - stalled_viewers / viewers if viewers else None,
        "play_time": play,
        "stall_time": stall,
        "stall_events": stall_events,
        "bytes_by_origin": by_origin,
        "bytes_share": {o: (n / total if total else 0.0) for o, n in by_origin.items()},
        "bytes_by_area": by_area,
    }


def aggregate_csc(
    scenario: str,
    topology: str,
    phases: Mapping[str, Sequence[Mapping[str, Any]]],
    area_of: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Results of a CSC scenario, one :func:`phase_metrics` per phase; with a ``push`` phase
    and others, the p95 speed-up of push over each (``push_speedups_p95``) and over the
    baseline (``push_speedup_p95``: ``no-hints`` where it ran), of the channel changes (of
    every startup when no viewer changed channel)."""
    data: dict[str, Any] = {
        "scenario": scenario,
        "topology": topology,
        "phases": {name: phase_metrics(reports, area_of) for name, reports in phases.items()},
    }
    push = _p95_of_changes(data["phases"].get("push", {}))
    speedups = {}
    for name, phase in data["phases"].items():
        other = _p95_of_changes(phase)
        if name != "push" and push and other:
            speedups[name] = other / push
    if speedups:
        # The "without push" is the CDN without F4 (no hints, no prefetch, no push)
        # where that phase ran; else the cacher that prefetches but does not push.
        baseline = PUSH_BASELINE if PUSH_BASELINE in speedups else next(iter(speedups))
        data["push_speedups_p95"] = speedups
        data["push_baseline"] = baseline
        data["push_speedup_p95"] = speedups[baseline]
    return data


#: The phase push is compared with for the issue's "≥ 5× faster than without push".
PUSH_BASELINE: Final = "no-hints"
#: What each comparison phase of the fast-channel-change scenario is, for the report.
PHASE_MEANINGS: Final = {
    "no-push": "cachers prefetch the hinted heads but do not push them",
    "no-hints": (
        "plain caches that carry every channel and fill on misses, no hints, no prefetch, "
        "no push: the CDN without F4"
    ),
}


def _p95_of_changes(phase: Mapping[str, Any]) -> float | None:
    value = phase.get("change_delay_p95")
    return value if value is not None else phase.get("startup_delay_p95")


def push_targets(data: Mapping[str, Any], cacher_rtt: Mapping[str, float]) -> dict[str, Any]:
    """Issue 9's fast-channel-change targets against ``data`` (:func:`aggregate_csc`):
    with push, p95 channel-change startup ≤ 1.5 × (RTT to the cacher + first-chunk time),
    taking the median of that sum over the CSC hosts (``cacher_rtt``); and push ≥ 5× faster
    at p95."""
    targets: dict[str, Any] = {}
    p95 = _p95_of_changes(data.get("phases", {}).get("push", {}))
    if cacher_rtt and p95 is not None:
        bound = 1.5 * float(percentile(list(cacher_rtt.values()), 0.5) or 0.0)
        targets["push_p95"] = {"value": p95, "bound": bound, "met": p95 <= bound}
    speedup = data.get("push_speedup_p95")
    if speedup is not None:
        targets["push_speedup_p95"] = {"value": speedup, "bound": 5.0, "met": speedup >= 5.0}
    return targets


#: Issue 9's locality target: share of bytes served inside the viewer's area.
LOCALITY_TARGET: Final = 0.80
#: Issue 9's churn target: Q1 and Q2 at least this under 10 %/minute churn.
CHURN_TARGET: Final = 0.99


def tracker_messages(stats: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The tracker messages of a run from each tracker's statistics (``tracker stats:`` line
    it logs when it stops, ppsp/tracker/server.py): requests by kind, batch availability
    reports (CONNECT / STAT_REPORT with several swarms' chunks) against per-swarm ones, and the
    overlay's Stores (PEER-BATCH against per-swarm SWARM-PEERS), Fetches and FINDs answered
    from the overlay. Per tracker and summed."""
    keys = ("requests", "finds", "connects", "stat_reports", "batch_reports", "swarm_reports")
    overlay_keys = (
        "peer_batch_stores",
        "swarm_peers_stores",
        "fetches",
        "fetch_failures",
        "overlay_answers",
    )
    per: dict[str, dict[str, int]] = {}
    for name, st in stats.items():
        daemon = st.get("daemon", {}) or {}
        overlay = st.get("overlay", {}) or {}
        row = {k: int(_number(daemon.get(k, st.get(k)))) for k in keys}
        if overlay:
            row.update({f"overlay_{k}": int(_number(overlay.get(k))) for k in overlay_keys})
        per[name] = row
    total: dict[str, int] = {}
    for row in per.values():
        for k, v in row.items():
            total[k] = total.get(k, 0) + v
    return {"trackers": per, "total": total}


def sanity_problems(data: Mapping[str, Any]) -> list[str]:
    """What is missing or impossible in ``data`` (used by tests and the report)."""
    problems = []
    for name, phase in data.get("phases", {}).items():
        if not phase["viewers"]:
            problems.append(f"{name}: no CSC report")
            continue
        if not phase["startup_delays"]:
            problems.append(f"{name}: no channel change reached its first frame")
        if any(d < 0 or d > 600 for d in phase["startup_delays"]):
            problems.append(f"{name}: startup delay out of range")
        for key in ("q1", "q2"):
            value = phase[key]
            if value is None or not 0.0 <= value <= 1.0:
                problems.append(f"{name}: {key} = {value!r} is not in [0, 1]")
        if sum(phase["bytes_by_origin"].values()) <= 0:
            problems.append(f"{name}: no bytes received")
    if "killed" in data and not data.get("restored_swarms"):
        problems.append(f"the restarted {data['killed']} reported no swarm in its batch report")
    for host, sockets in data.get("bound_elsewhere", {}).items():
        problems.append(f"{host}: sockets bound outside the lab address: {', '.join(sockets)}")
    for pair in data.get("pairs", []):
        if not pair["received"]:
            problems.append(f"{pair['src']} → {pair['dst']}: no echo answered")
    return problems


# -- output ----------------------------------------------------------------------------------------


def write_outputs(out_dir: Path, data: Mapping[str, Any]) -> list[Path]:
    """Write ``results.json``, the plots and ``report.md`` into ``out_dir``; their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / "results.json"
    results.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    paths = [results, *plot(out_dir, data)]
    report = out_dir / "report.md"
    report.write_text("\n".join(report_lines(data, [p.name for p in paths[1:]])) + "\n")
    return [report, *paths]


def plot(out_dir: Path, data: Mapping[str, Any]) -> list[Path]:
    """PNG plots of ``data``: startup-delay CDF and bytes by origin per phase, or the RTT of
    every host pair against the topology's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    phases: Mapping[str, Any] = data.get("phases", {})
    if any(p["startup_delays"] for p in phases.values()):
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

        fig, ax = plt.subplots(figsize=(7, 4.2))
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, (name, phase) in enumerate(phases.items()):
            colour = colours[i % len(colours)]  # one colour per phase: solid, then dotted
            curves = [("channel changes", phase.get("change_delays") or [], "-")]
            curves.append(("first tune-ins", phase.get("tune_in_delays") or [], ":"))
            for what, values, style in curves:
                points = cdf(values)
                if points:
                    xs = [p[0] * 1000 for p in points]
                    ys = [p[1] for p in points]
                    ax.step(xs, ys, style, color=colour, where="post", label=f"{name}: {what}")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("startup delay (ms, log scale)")
        ax.set_ylabel("share of startups")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"Startup delay CDF — {data.get('topology', '')}")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
        path = out_dir / "startup_delay_cdf.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    if phases:
        fig, ax = plt.subplots(figsize=(6, 4))
        names = list(phases)
        bottom = [0.0] * len(names)
        for origin in ORIGINS:
            shares = [phases[n]["bytes_share"].get(origin, 0.0) * 100 for n in names]
            ax.bar(names, shares, bottom=bottom, label=ORIGIN_LABELS[origin])
            bottom = [b + s for b, s in zip(bottom, shares, strict=True)]
        ax.set_ylabel("share of bytes (%)")
        ax.set_title("Bytes by origin")
        ax.legend()
        path = out_dir / "bytes_by_origin.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    local = {n: p["locality"] for n, p in phases.items() if p.get("locality", {}).get("by_area")}
    if local:
        fig, ax = plt.subplots(figsize=(6, 4))
        areas = sorted({a for loc in local.values() for a in loc["by_area"]})
        width = 0.8 / len(local)
        for k, (name, loc) in enumerate(local.items()):
            xs = [i + k * width for i in range(len(areas))]
            ys = [loc["by_area"].get(a, {}).get("share", 0.0) * 100 for a in areas]
            ax.bar(xs, ys, width=width, label=name)
        ax.axhline(LOCALITY_TARGET * 100, linestyle="--", color="grey", label="target")
        ax.set_xticks([i + width * (len(local) - 1) / 2 for i in range(len(areas))], areas)
        ax.set_xlabel("viewer's area")
        ax.set_ylabel("bytes served inside the area (%)")
        ax.set_ylim(0, 100)
        ax.set_title("Area locality")
        ax.legend()
        path = out_dir / "locality.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    trackers = data.get("tracker_messages", {}).get("trackers", {})
    if trackers:
        keys = [
            ("finds", "FIND"),
            ("batch_reports", "batch reports"),
            ("swarm_reports", "per-swarm reports"),
            ("overlay_peer_batch_stores", "PEER-BATCH Stores"),
            ("overlay_swarm_peers_stores", "SWARM-PEERS Stores"),
        ]
        keys = [(k, label) for k, label in keys if any(k in row for row in trackers.values())]
        fig, ax = plt.subplots(figsize=(7, 4))
        names = list(trackers)
        width = 0.8 / len(keys)
        for k, (key, label) in enumerate(keys):
            xs = [i + k * width for i in range(len(names))]
            ax.bar(xs, [trackers[n].get(key, 0) for n in names], width=width, label=label)
        ax.set_xticks([i + width * (len(keys) - 1) / 2 for i in range(len(names))], names)
        ax.set_ylabel("messages")
        ax.set_title("Tracker messages")
        ax.legend(fontsize="small")
        path = out_dir / "tracker_messages.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    pairs = [p for p in data.get("pairs", []) if p["rtt_min"] is not None]
    if pairs:
        fig, ax = plt.subplots(figsize=(5, 5))
        expected = [p["expected_rtt"] * 1000 for p in pairs]
        measured = [p["rtt_min"] * 1000 for p in pairs]
        ax.scatter(expected, measured)
        top = max([*expected, *measured, 1.0]) * 1.1
        ax.plot([0, top], [0, top], linestyle="--", color="grey", label="measured = topology")
        ax.set_xlabel("topology RTT (ms)")
        ax.set_ylabel("measured minimum RTT (ms)")
        ax.set_title("RTT between hosts")
        ax.legend()
        path = out_dir / "rtt.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def _share(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _detail_lines(data: Mapping[str, Any]) -> list[str]:
    """Locality, stalls, overlay hops, tracker messages and the failure scenarios' lines."""
    lines: list[str] = []
    phases: Mapping[str, Any] = data.get("phases", {})
    local = {n: p["locality"] for n, p in phases.items() if p.get("locality")}
    if local:
        lines += [
            "",
            f"Bytes served inside the viewer's area (target ≥ {LOCALITY_TARGET * 100:.0f} %; "
            "the storage overlay and the source are outside every area):",
            "",
            "| phase | inside | outside | share inside | per area |",
            "|---|---|---|---|---|",
        ]
        for name, loc in local.items():
            areas = ", ".join(f"{a}: {_share(v['share'])}" for a, v in loc["by_area"].items())
            lines.append(
                f"| {name} | {loc['inside_bytes']} | {loc['outside_bytes']} "
                f"| {_share(loc['inside_share'])} | {areas} |"
            )
    hops = {
        n: p["overlay_hops"] for n, p in phases.items() if p.get("overlay_hops", {}).get("fetches")
    }
    if hops:
        lines += ["", "Storage overlay fetches by the CSCs (rescue) and their RELOAD hops:", ""]
        for name, h in hops.items():
            lines.append(
                f"- {name}: {h['fetches']} fetch(es), mean {h['mean']:.2f} hops, max {h['max']}"
            )
    probe = data.get("overlay_probe")
    if probe:
        lines += [
            "",
            "Storage overlay probe (a RELOAD client node fetching every channel's segments):",
            "",
        ]
        for rec in probe:
            mean = rec.get("hops_mean")
            lines.append(
                f"- {rec.get('when', '?')}: {rec.get('ok', 0)}/{rec.get('fetches', 0)} fetches "
                f"succeeded, hops mean {'—' if mean is None else f'{mean:.2f}'}, "
                f"max {rec.get('hops_max')}"
            )
    messages = data.get("tracker_messages")
    if messages and messages.get("trackers"):
        cols = sorted({k for row in messages["trackers"].values() for k in row})
        lines += [
            "",
            "Tracker messages (batch = a CONNECT or STAT_REPORT reporting the chunks of several "
            "swarms; per-swarm = one swarm's report, JOIN or LEAVE; overlay_* = the tracker "
            "overlay's Stores, Fetches and FINDs answered with overlay peers):",
            "",
            "| tracker | " + " | ".join(cols) + " |",
            "|---|" + "---|" * len(cols),
        ]
        for name, row in messages["trackers"].items():
            lines.append(f"| {name} | " + " | ".join(str(row.get(c, "—")) for c in cols) + " |")
    targets = data.get("targets", {})
    extra = [t for t in ("locality", "churn_q1", "churn_q2") if t in targets]
    if extra:
        lines += ["", "Targets (issue 9):", ""]
        for key in extra:
            t = targets[key]
            lines.append(f"- {t['what']}: {t['value']:.4f} ≥ {t['bound']}: {_met(t['met'])}")
    if data.get("churn"):
        c = data["churn"]
        lines += [
            "",
            f"Churn: {c['population']} viewers, {c['per_minute'] * 100:.0f} %/minute for "
            f"{c['minutes']} min: {c['leave_join_events']} leave+join events, "
            f"{c['sessions']} sessions.",
        ]
    kills = data.get("node_kill")
    if kills:
        lines += [
            "",
            f"Killed (SIGKILL) at {kills['at']:.1f} s into the zaps: "
            + ", ".join(kills["killed"])
            + ".",
            "",
            "| channel changes | before the kill | after the kill |",
            "|---|---|---|",
            f"| reached the first frame | {kills['before']['ok']}/{kills['before']['total']} "
            f"| {kills['after']['ok']}/{kills['after']['total']} |",
            f"| bytes from the cacher | {kills['before']['cacher_bytes']} "
            f"| {kills['after']['cacher_bytes']} |",
            "",
            f"Viewers' trackers: {', '.join(kills['csc_trackers'])}; the cachers' and sources': "
            f"{kills['connection_tracker']}. The other trackers know the cachers only through "
            "the tracker overlay: their FINDs answered with overlay peers are overlay_answers "
            "above (a killed tracker logs no statistics).",
        ]
    return lines


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value * 1000:.1f} ms"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def report_lines(data: Mapping[str, Any], plots: Sequence[str] = ()) -> list[str]:
    """The Markdown report: what ran, the headline numbers, then detail and plots."""
    lines = [
        f"# Lab report: {data.get('scenario', '?')} on {data.get('topology', '?')}",
        "",
    ]
    problems = sanity_problems(data)
    lines.append(
        "**Sanity: all metrics present and in range.**"
        if not problems
        else "**Sanity problems:** " + "; ".join(problems)
    )
    lines.append("")
    phases: Mapping[str, Any] = data.get("phases", {})
    if phases:
        lines += [
            "| phase | viewers | visits | no first frame | channel change: median / p95 "
            "| first tune-in: median / p95 | median first handshake | Q1 | Q2 | stalls |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, p in phases.items():
            change = f"{_ms(p.get('change_delay_median'))} / {_ms(p.get('change_delay_p95'))}"
            tune_in = f"{_ms(p.get('tune_in_delay_median'))} / {_ms(p.get('tune_in_delay_p95'))}"
            lines.append(
                f"| {name} | {p['viewers']} | {p['channel_changes']} | {p['no_first_frame']} "
                f"| {change} | {tune_in} | {_ms(p.get('handshake_delay_median'))} "
                f"| {_ratio(p['q1'])} | {_ratio(p['q2'])} | {p['stall_events']} |"
            )
        lines += [
            "",
            "A viewer's first channel is its tune-in: it registers at the tracker and learns its "
            "area's cacher there, a round trip to the core. Its later channels are channel "
            "changes, which start at the cacher it knows.",
        ]
        if "push_speedup_p95" in data:
            lines += ["", "Push makes the p95 channel-change startup faster than:"]
            for name, ratio in data.get("push_speedups_p95", {}).items():
                meaning = PHASE_MEANINGS.get(name, name)
                lines.append(f"- {name} ({meaning}): {ratio:.1f}×")
        targets = data.get("targets", {})
        if "push_p95" in targets or "push_speedup_p95" in targets:
            lines += ["", "Targets (issue 9):", ""]
            if "push_p95" in targets:
                t = targets["push_p95"]
                lines.append(
                    f"- with push, p95 channel-change startup {_ms(t['value'])} ≤ 1.5 × (RTT "
                    f"to the cacher + first-chunk time) = {_ms(t['bound'])}: "
                    f"{'met' if t['met'] else 'NOT met'}"
                )
            measured = data.get("cacher_rtt_measured")
            if measured:
                rtt = percentile(list(measured.values()), 0.5)
                lines.append(
                    f"  (RTT to the cacher measured with UDP echoes through the link emulation: "
                    f"median {_ms(rtt)} over {len(measured)} viewer hosts; first-chunk time = "
                    f"the first frame's chunks at the access link's rate)"
                )
            if "push_speedup_p95" in targets:
                t = targets["push_speedup_p95"]
                lines.append(
                    f"- push ≥ 5× faster than without ({data.get('push_baseline', 'no-push')}) "
                    f"at p95: {t['value']:.1f}×, {'met' if t['met'] else 'NOT met'}"
                )
        lines += [
            "",
            "Bytes by origin:",
            "",
            "| phase | " + " | ".join(ORIGIN_LABELS[o] for o in ORIGINS) + " |",
            "|---|" + "---|" * len(ORIGINS),
        ]
        for name, p in phases.items():
            cells = [
                f"{p['bytes_by_origin'].get(o, 0)} ({p['bytes_share'].get(o, 0.0) * 100:.1f}%)"
                for o in ORIGINS
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    machine = data.get("machine") or {}
    if machine.get("samples"):
        lines += [
            "",
            f"Machine during the run (every lab host shares its {machine['cores']} cores): CPU "
            f"busy {machine['cpu_busy_mean'] * 100:.0f} % on average, "
            f"{machine['cpu_busy_p90'] * 100:.0f} % at the 90th percentile of "
            f"{machine['samples']} samples; load average up to {machine['load1_max']:.1f}.",
        ]
    lines += _detail_lines(data)
    if "killed" in data:
        lines += [
            "",
            f"Killed {data['killed']} (SIGKILL) mid-zap; restarted it in "
            f"{_ms(data.get('restart_seconds'))}; its batch availability report restored "
            f"{data.get('restored_swarms')} swarm(s) at the tracker.",
        ]
    pairs = data.get("pairs", [])
    if pairs:
        lines += [
            f"Delay, jitter and loss: {'netem' if data.get('netem') else 'userspace emulator'}.",
            "",
            "| from | to | topology RTT | measured min RTT | median | answered |",
            "|---|---|---|---|---|---|",
        ]
        for pair in pairs:
            lines.append(
                f"| {pair['src']} | {pair['dst']} | {_ms(pair['expected_rtt'])} "
                f"| {_ms(pair['rtt_min'])} | {_ms(pair['rtt_median'])} "
                f"| {pair['received']}/{pair['sent']} |"
            )
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({name})" for name in plots]
    lines += [
        "",
        "Files: `results.json` (all numbers), `run.json` (what ran), `logs/` (each daemon's "
        "stdout and stderr), `config/` (generated configurations).",
    ]
    return lines
