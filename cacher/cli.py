"""``p2pcdn cacher``: run the cacher daemon (docs/cacher.md).

::

    p2pcdn cacher [--config cacher.toml] [--tracker URL] [--area AREA] [--listen HOST:PORT]
                  [--cache-dir DIR] [--cache-size SIZE] [--storage-overlay DAEMON.toml]
                  [--source USER]... [--channel USER/CHANNEL]... [--portal URL]
                  [--push-head N] [--peer-id ID] [-v]

Flags override the file. Prints the PPSPP address (``HOST:PORT``) as the first line of stdout
as soon as it listens, then serves until SIGINT or SIGTERM (exit status 0), after a LEAVE at
the tracker and a last commit of the cache. :mod:`lab.cli` imports this module only when the
subcommand runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from cacher.config import (
    CacherConfig,
    CacherConfigError,
    load_config,
    parse_address,
    parse_size,
)
from lab.cli import EXIT_OK, UsageError, _on_signals, _print_stdout, run_coroutine

log = logging.getLogger("cacher")


def _address(text: str) -> tuple[str, int]:
    try:
        return parse_address(text, "--listen")
    except CacherConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size(text: str) -> int:
    try:
        return parse_size(text, "--cache-size")
    except CacherConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", type=Path, help="cacher TOML configuration")
    parser.add_argument("--tracker", metavar="URL", help="ppsp-udp://HOST:PORT or ppsp-tcp://…")
    parser.add_argument("--area", help="the cacher's area (locality at the tracker)")
    parser.add_argument(
        "--listen", metavar="HOST:PORT", type=_address, help="PPSPP UDP address for CSCs"
    )
    parser.add_argument("--cache-dir", metavar="DIR", type=Path, help="on-disk cache directory")
    parser.add_argument("--cache-size", metavar="SIZE", type=_size, help="e.g. 256MiB")
    parser.add_argument(
        "--storage-overlay",
        metavar="DAEMON.toml",
        type=Path,
        help="RELOAD daemon configuration of the cacher's storage overlay node",
    )
    parser.add_argument(
        "--source", metavar="USER", action="append", help="trusted source user (repeatable)"
    )
    parser.add_argument(
        "--channel", metavar="USER/CHANNEL", action="append", help="channel to know (repeatable)"
    )
    parser.add_argument("--portal", metavar="URL", help="portal base URL (swarm ID → channel)")
    parser.add_argument("--push-head", metavar="N", type=int, help="head chunks pushed (F4)")
    parser.add_argument("--peer-id", metavar="ID", help="PPSP-TP peer ID (default: kept on disk)")


def build_config(args: argparse.Namespace) -> CacherConfig:
    """The configuration file, overridden by the flags, validated."""
    try:
        if args.config is not None:
            config = load_config(args.config)
        elif args.tracker is not None:
            config = CacherConfig(tracker=args.tracker)
        else:
            raise UsageError("give --config FILE or at least --tracker URL")
        for flag, name in (
            ("tracker", "tracker"),
            ("area", "area"),
            ("listen", "listen"),
            ("cache_dir", "cache_dir"),
            ("cache_size", "cache_size"),
            ("storage_overlay", "storage_overlay"),
            ("portal", "portal"),
            ("push_head", "push_head"),
            ("peer_id", "peer_id"),
        ):
            value = getattr(args, flag, None)
            if value is not None:
                setattr(config, name, value)
        if args.source:
            config.sources = tuple(args.source)
        if args.channel:
            config.channels = tuple(args.channel)
        return config.check()
    except CacherConfigError as exc:
        raise UsageError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    config = build_config(args)
    if not args.verbose:  # -v on the command line wins over the file's level
        logging.getLogger().setLevel(config.log_level)
    return run_coroutine(_serve(config))


async def _serve(config: CacherConfig) -> int:
    from cacher.daemon import Cacher  # the RELOAD, PPSPP and tracker stacks

    stop = asyncio.Event()
    with _on_signals(lambda _signum: stop.set()):
        cacher = Cacher(config)
        try:
            await cacher.start()
            host, port = cacher.address
            _print_stdout(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
            await stop.wait()
        finally:
            try:
                await asyncio.wait_for(cacher.close(), timeout=15)
            except TimeoutError:
                log.warning("the cacher did not close within 15 s; exiting anyway")
    return EXIT_OK
