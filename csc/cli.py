"""``p2pcdn csc``: the content sharing client on the command line (docs/csc.md)::

    p2pcdn csc --portal URL [options] watch NAME [--seconds S]
    p2pcdn csc --portal URL [options] zap NAME [NAME ...] [--dwell S]

Prints, per channel change, the startup delay (zap → first frame), and at the end Q1, Q2
(LiveSky §4.4) and the bytes by origin; ``--json`` prints one JSON object instead. SIGINT or
SIGTERM ends the session early: the CSC leaves the channel (portal heartbeat, tracker
LEAVE), closes its sockets and prints the report of what it watched, exit status 0.

:mod:`lab.cli` registers the subcommand and imports this module only when it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from csc.client import CscClient, CscError
from csc.config import CscConfig, CscConfigError, load_config, parse_address
from csc.core import Origin
from lab.cli import EXIT_FAILURE, EXIT_OK, UsageError, _on_signals, _print_stdout, run_coroutine

log = logging.getLogger("csc")

_ORIGIN_NAMES = {
    Origin.CACHER: "cacher",
    Origin.PEER: "peer",
    Origin.OVERLAY: "storage overlay",
    Origin.SOURCE: "source",
}


def _listen(text: str) -> tuple[str, int]:
    try:
        return parse_address(text)
    except CscConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"seconds out of range (0, 86400]: {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", type=Path, help="CSC TOML file ([csc])")
    parser.add_argument("--portal", metavar="URL", help="the content portal, http://HOST:PORT/")
    parser.add_argument("--area", help="locality hint for the tracker (same-area cachers first)")
    parser.add_argument(
        "--tracker",
        metavar="URL",
        action="append",
        help="tracker to use instead of the channel's (repeatable; ppsp-udp://, ppsp-tcp://, "
        "http://)",
    )
    parser.add_argument(
        "--listen", metavar="HOST:PORT", type=_listen, help="PPSPP UDP address (default port 0)"
    )
    parser.add_argument(
        "--storage-overlay",
        metavar="DAEMON.toml",
        type=Path,
        help="RELOAD daemon TOML of a storage overlay client node, for the rescue",
    )
    parser.add_argument(
        "--startup",
        metavar="S",
        type=_seconds,
        help="seconds of media buffered before the first frame and after a stall",
    )
    parser.add_argument(
        "--startup-bytes",
        metavar="N",
        type=int,
        help="bytes buffered before the first frame (default 8192 when --startup is not given)",
    )
    parser.add_argument(
        "--starvation-timeout",
        metavar="S",
        type=_seconds,
        help="no chunk from peers for this long: rescue from the storage overlay or source",
    )
    parser.add_argument(
        "--bitrate", metavar="KBPS", type=int, help="bitrate when the portal gives none"
    )
    parser.add_argument("--peer-id", metavar="ID", help="PPSP-TP peer ID (default: random)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument(
        "--digest",
        action="store_true",
        help="keep each VoD channel's verified chunks and report the SHA-256 of its content "
        "(sha256: null when incomplete); for tests, costs the content's size in memory",
    )
    actions = parser.add_subparsers(dest="csc_action", metavar="ACTION", required=True)
    watch = actions.add_parser("watch", help="watch one channel")
    watch.add_argument("name", metavar="NAME")
    watch.add_argument(
        "--seconds",
        type=_seconds,
        help="stop after S seconds (default: a VoD to its end; live: 30 s)",
    )
    zap = actions.add_parser("zap", help="visit channels in order")
    zap.add_argument("names", metavar="NAME", nargs="+")
    zap.add_argument(
        "--dwell", type=_seconds, default=5.0, help="seconds on each channel (default 5)"
    )


def config_from_args(args: argparse.Namespace) -> CscConfig:
    """The configuration file (if any) with the flags applied over it, checked."""
    try:
        config = load_config(args.config) if args.config is not None else CscConfig()
        overrides: dict[str, Any] = {
            "portal": args.portal,
            "area": args.area,
            "trackers": tuple(args.tracker) if args.tracker else None,
            "listen": args.listen,
            "storage_overlay": args.storage_overlay,
            "startup": args.startup,
            "startup_bytes": args.startup_bytes,
            "starvation_timeout": args.starvation_timeout,
            "bitrate": args.bitrate,
            "peer_id": args.peer_id,
        }
        for key, value in overrides.items():
            if value is not None:
                setattr(config, key, value)
        return config.check()
    except CscConfigError as exc:
        raise UsageError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if getattr(args, "verbose", 0) <= 0:
        logging.getLogger("csc").setLevel(config.log_level)
    return run_coroutine(_session(config, args))


async def _session(config: CscConfig, args: argparse.Namespace) -> int:
    printed: list[str] = []

    def visited(report: dict[str, Any]) -> None:
        if not args.json:
            printed.append(report["channel"])
            _print_stdout(format_channel(report))  # per channel change, as it happens

    client = CscClient(config, on_visit=visited, keep_content=args.digest)
    stop = asyncio.Event()
    summary: dict[str, Any] | None = None
    with _on_signals(lambda _signum: stop.set()):
        try:
            await client.start()
            if args.csc_action == "watch":
                work = asyncio.ensure_future(client.watch(args.name, args.seconds))
            else:
                work = asyncio.ensure_future(client.zap(list(args.names), args.dwell))
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if work.done():
                summary = work.result()
            else:
                log.info("stopped by a signal")
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
                summary = client.finish()
        except CscError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return EXIT_FAILURE
        except OSError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return EXIT_FAILURE
        finally:
            await client.close()
    if args.digest:
        for ch in summary["channels"]:
            content = client.content_of(ch["channel"])
            ch["sha256"] = None if content is None else hashlib.sha256(content).hexdigest()
    if args.json:
        _print_stdout(json.dumps(summary, sort_keys=True))
    else:
        for ch in summary["channels"][len(printed) :]:  # a visit a signal cut short
            _print_stdout(format_channel(ch))
        for line in format_totals(summary):
            _print_stdout(line)
    return EXIT_OK


def format_channel(ch: dict[str, Any]) -> str:
    """One line for one channel visit (ChannelReport.to_json)."""
    delay = ch["startup_delay"]
    start = "no first frame" if delay is None else f"startup delay {delay * 1000:.1f} ms"
    parts = [f"{ch['channel']}: {start}"]
    if ch["handshake_delay"] is not None:
        parts.append(f"first handshake {ch['handshake_delay'] * 1000:.1f} ms")
    parts.append(f"played {ch['play_time']:.2f} s, stalls {ch['stalls']}")
    parts.append("bytes " + " ".join(f"{o.value}={ch['bytes'][o.value]}" for o in _ORIGIN_NAMES))
    if ch["dropped"]:
        parts.append(f"dropped {len(ch['dropped'])} peer(s)")
    if ch["rescues"]:
        parts.append(f"rescued {ch['rescues']}x")
    return ", ".join(parts)


def format_totals(summary: dict[str, Any]) -> list[str]:
    """The session's lines: Q1, Q2 and the bytes by origin."""
    lines: list[str] = []
    visits = len(summary["channels"])
    stalled = sum(1 for ch in summary["channels"] if ch["stalls"])
    lines.append(
        f"Q1 = {summary['q1']:.4f} (play {summary['play_time']:.2f} s, "
        f"stall {summary['stall_time']:.2f} s)"
    )
    lines.append(f"Q2 = {summary['q2']:.4f} ({stalled} of {visits} channel visits stalled)")
    total = sum(summary["bytes"].values())
    shares = []
    for origin, name in _ORIGIN_NAMES.items():
        n = summary["bytes"][origin.value]
        share = f" ({100 * n / total:.1f}%)" if total else ""
        shares.append(f"{name} {n}{share}")
    lines.append("bytes by origin: " + ", ".join(shares))
    return lines


def format_report(summary: dict[str, Any]) -> list[str]:
    """The whole report: one line per channel visit, then the session's lines."""
    return [format_channel(ch) for ch in summary["channels"]] + format_totals(summary)
