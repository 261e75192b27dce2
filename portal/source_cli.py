"""``p2pcdn source publish|live``: the command line of the content source server
(:mod:`portal.source`; docs/source.md is the manual).

:mod:`lab.cli` calls :func:`register` with itself at import time, so the subcommand shares the
CLI's conventions (argument types, exit codes, signal handling, output) without this module
importing :mod:`lab.cli` — which, run as ``python -m lab.cli``, would be a second copy of it.

Output (relied on by scripts and tests): the swarm ID in hex is the first line of stdout and
the PPSPP ``HOST:PORT`` the second, flushed as soon as they are known; then the summary
lines. Progress (a bar on a terminal) and errors go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import stat
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

log = logging.getLogger(__name__)

#: The CLI module (lab.cli), handed over by :func:`register`.
_cli: Any = None

TOKEN_ENV = "P2PCDN_PORTAL_TOKEN"

EPILOG = f"""\
exit status:
  0    publish: stopped by SIGINT/SIGTERM after publishing, or --exit-after-publish;
       live: end of input, --duration, or SIGINT/SIGTERM
  1    run-time failure: a Store kept failing or was refused, the tracker refused or did not
       answer, the portal refused the token (401/403) or failed, I/O error
  2    bad command line or configuration (unreadable FILE, bad daemon TOML, bad URL)
  130  interrupted by SIGINT before the publication finished; 143 by SIGTERM

The portal token may also come from the environment variable {TOKEN_ENV}
(command lines are visible to other users of the machine).

examples:
  p2pcdn source publish movie.mp4 --name movie --overlay source.toml \\
      --tracker ppsp-udp://127.0.0.1:7846 --portal http://127.0.0.1:8080 --portal-token T
  p2pcdn source live --name news --bitrate 512 --overlay source.toml \\
      --tracker http://127.0.0.1:7846/
  ffmpeg -i cam -f mpegts - | p2pcdn source live --name cam --input - --bitrate 2000
"""


def register(cli: ModuleType) -> None:
    """Add ``p2pcdn source`` to the CLI module ``cli`` (lab.cli)."""
    global _cli
    _cli = cli
    cli.command(
        "source",
        help="publish content: VoD file or live stream (storage overlay, tracker, portal)",
        description="The content source server (flow F1): `publish` cuts a file into chunks, "
        "builds its Merkle tree, stores metadata and segments in the storage overlay, "
        "registers at the trackers as seeder, serves it over PPSPP and publishes the channel "
        "to the portal; `live` does the same for a live stream (stdin, a file or a generated "
        "stream) signed with the Unified Merkle Tree (RFC 7574 §6.1.2).",
        arguments=_arguments,
        epilog=EPILOG,
    )(run)


# -- arguments ------------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser) -> None:
    cli = _cli
    parser.add_argument("--name", required=True, help="channel name (no '/')")
    parser.add_argument("--title", default="", help="human-readable title for the portal")
    parser.add_argument(
        "--overlay",
        metavar="DAEMON.toml",
        type=Path,
        help="daemon configuration of the source's node in the storage overlay "
        "(docs/overlay.md; its certificate's user name is the content namespace)",
    )
    parser.add_argument(
        "--tracker",
        metavar="URL",
        action="append",
        default=[],
        dest="trackers",
        help="register here as seeder (repeatable): http(s)://… (RFC 7846 JSON), "
        "ppsp-udp://HOST:PORT or ppsp-tcp://HOST:PORT (binary)",
    )
    parser.add_argument("--portal", metavar="URL", help="publish the channel to this portal")
    parser.add_argument(
        "--portal-token",
        metavar="TOKEN",
        default=os.environ.get(TOKEN_ENV),
        help=f"bearer token for the portal's publish API (default ${TOKEN_ENV})",
    )
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        type=cli.listen_address_type,
        default=cli.parse_address("127.0.0.1:0", allow_port_zero=True),
        help="UDP address to serve PPSPP on (default 127.0.0.1:0, a free port)",
    )
    parser.add_argument(
        "--chunk-size",
        metavar="N",
        type=cli.chunk_size_type,
        default=cli.DEFAULT_CHUNK_SIZE,
        help=f"chunk size in bytes (default {cli.DEFAULT_CHUNK_SIZE}, RFC 7574 §8.1)",
    )
    parser.add_argument(
        "--segment-chunks",
        metavar="S",
        type=int,
        default=64,
        help="chunks per stored segment, a power of two (default 64; the overlay's "
        "max-message-size must fit S × chunk size, docs/usages.md)",
    )
    parser.add_argument(
        "--concurrency",
        metavar="N",
        type=int,
        default=8,
        help="Stores in flight at once (default 8)",
    )
    parser.add_argument(
        "--lifetime",
        metavar="S",
        type=int,
        help="lifetime of stored values in seconds (default: a day for VoD, an hour for live); "
        "the source Stores them again every half lifetime while it runs",
    )
    parser.add_argument(
        "--join-timeout",
        metavar="S",
        type=cli.seconds_type,
        default=60.0,
        help="give up joining the storage overlay after S seconds (default 60)",
    )


def _arguments(parser: argparse.ArgumentParser) -> None:
    cli = _cli
    actions = parser.add_subparsers(dest="source_action", metavar="ACTION", required=True)
    publish = actions.add_parser(
        "publish",
        help="publish a file (VoD)",
        description="Publish FILE as a VoD channel and serve it until SIGINT or SIGTERM.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    publish.add_argument("file", metavar="FILE", type=Path, help="the content to publish")
    _common(publish)
    publish.add_argument(
        "--hash",
        choices=list(cli.HASH_FUNCTIONS),
        default=cli.DEFAULT_HASH,
        metavar="NAME",
        help=f"Merkle hash function: {', '.join(cli.HASH_FUNCTIONS)} (default {cli.DEFAULT_HASH})",
    )
    publish.add_argument(
        "--exit-after-publish",
        action="store_true",
        help="exit once published instead of serving (the overlay keeps the content)",
    )
    live = actions.add_parser(
        "live",
        help="publish a live stream",
        description="Publish a live channel: stdin (--input -), a file played at --bitrate, "
        "or a generated stream at --bitrate when no input is given.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(live)
    live.add_argument(
        "--bitrate",
        metavar="KBPS",
        type=int,
        help="stream bitrate in kbit/s: paces a generated stream or a file, and tells viewers",
    )
    live.add_argument(
        "--input",
        metavar="-|FILE",
        help="the stream: '-' for stdin (read as it comes), a file (played at --bitrate); "
        "none: a generated stream at --bitrate",
    )
    live.add_argument(
        "--duration",
        metavar="S",
        type=cli.seconds_type,
        help="stop after S seconds (default: until end of input or SIGINT)",
    )
    live.add_argument(
        "--munro-chunks",
        metavar="N",
        type=int,
        default=16,
        help="chunks per signed munro, a power of two ≥ 2 (default 16, RFC 7574 §6.1.2.1)",
    )


# -- running --------------------------------------------------------------------------------


def _options(args: argparse.Namespace, live: bool) -> Any:
    from portal.source import SourceOptions

    cli = _cli
    if args.overlay is not None and not args.overlay.is_file():
        raise cli.UsageError(f"--overlay {str(args.overlay)!r}: no such file")
    options = SourceOptions(
        name=args.name,
        title=args.title,
        overlay=args.overlay,
        trackers=list(args.trackers),
        portal=args.portal,
        portal_token=args.portal_token,
        chunk_size=args.chunk_size,
        segment_chunks=args.segment_chunks,
        listen=cli.resolve(args.listen),
        concurrency=args.concurrency,
        join_timeout=args.join_timeout,
        lifetime=args.lifetime,
    )
    if args.lifetime is not None and args.lifetime < 2:
        raise cli.UsageError("--lifetime must be at least 2 seconds")
    if live:
        options.bitrate = args.bitrate
        options.munro_chunks = args.munro_chunks
        if args.bitrate is not None and args.bitrate <= 0:
            raise cli.UsageError("--bitrate must be a positive number of kbit/s")
        m = args.munro_chunks
        if m < 2 or m & (m - 1):
            raise cli.UsageError("--munro-chunks must be a power of two ≥ 2")
        if args.segment_chunks % m:
            raise cli.UsageError("--segment-chunks must be a multiple of --munro-chunks")
    else:
        options.hash_function = cli.HASH_FUNCTIONS[args.hash]
    try:
        options.check()
    except ValueError as exc:
        raise cli.UsageError(str(exc)) from None
    return options


def run(args: argparse.Namespace) -> int:
    cli = _cli
    live = args.source_action == "live"
    options = _options(args, live)
    if not live:
        path: Path = args.file
        if not path.is_file():
            reason = "no such file" if not path.exists() else "not a regular file"
            raise cli.UsageError(f"cannot publish {str(path)!r}: {reason}")
        if not os.access(path, os.R_OK):
            raise cli.UsageError(f"cannot publish {str(path)!r}: permission denied")
        return int(cli.run_coroutine(_guard(_publish(path, options, args.exit_after_publish))))
    if args.input is None and args.bitrate is None:
        raise cli.UsageError("a generated stream needs --bitrate (or give --input)")
    return int(cli.run_coroutine(_guard(_live(options, args.input, args.duration))))


async def _guard(coro: Any) -> int:
    """Map the source's failures to one ``error: …`` line and exit status 1 (or 2)."""
    from portal.portal_client import PortalError
    from portal.source import PublishError
    from ppsp.tracker.client import TrackerClientError
    from reload.aio import DaemonConfigError, ReloadRequestError

    cli = _cli
    try:
        return int(await coro)
    except DaemonConfigError as exc:
        raise cli.UsageError(f"--overlay: {exc}") from None
    except PortalError as exc:
        return _error(f"portal: {exc}")
    except TrackerClientError as exc:
        return _error(f"tracker: {exc}")
    except (PublishError, ReloadRequestError) as exc:
        return _error(f"storage overlay: {exc}")
    except ConnectionError as exc:
        return _error(f"storage overlay: {exc}")


def _error(message: str) -> int:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return int(_cli.EXIT_FAILURE)


async def _publish(path: Path, options: Any, exit_after: bool) -> int:
    from lab.progress import ProgressBar
    from portal.source import Source, publish_vod

    cli = _cli
    bar = ProgressBar(sys.stderr, label="storing ")
    received: list[int] = []
    stop = asyncio.Event()

    def serving(source: Source) -> None:
        bar.clear()
        cli._print_stdout(source.report.swarm_id.hex())
        assert source.report.address is not None
        cli._print_stdout(cli.format_address(source.report.address))

    task = asyncio.ensure_future(
        publish_vod(path, options, progress=bar if bar.is_tty else None, on_serving=serving)
    )

    def on_signal(signum: int) -> None:
        received.append(signum)
        stop.set()
        task.cancel()

    with cli._on_signals(on_signal):
        try:
            source = await task
        except asyncio.CancelledError:
            bar.clear()
            if received:
                raise cli.Interrupted(received[0]) from None
            raise
        except BaseException:
            bar.clear()
            raise
        bar.clear()
        try:
            for line in source.report.lines():
                cli._print_stdout(line)
            if not exit_after:
                if sys.stderr.isatty():
                    print("serving; Ctrl-C stops", file=sys.stderr)
                await _wait_stop(source, stop)
        finally:
            await source.close()
    return int(cli.EXIT_OK)


async def _wait_stop(source: Any, stop: asyncio.Event) -> None:
    assert source.server is not None
    closed = asyncio.ensure_future(source.server.wait_closed())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({closed, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        closed.cancel()
        stopping.cancel()


async def _stdin() -> BinaryIO | asyncio.StreamReader:
    """Standard input for a live stream: a non-blocking reader on a pipe or terminal (so
    Ctrl-C never waits for the producer), the file object itself when it is a regular file."""
    if stat.S_ISREG(os.fstat(sys.stdin.fileno()).st_mode):
        return sys.stdin.buffer
    reader = asyncio.StreamReader(limit=1 << 20)
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    return reader


async def _live(options: Any, input_name: str | None, duration: float | None) -> int:
    from portal.source import Source, run_live

    cli = _cli
    stop = asyncio.Event()
    stream: BinaryIO | asyncio.StreamReader | None = None
    with contextlib.ExitStack() as files:
        if input_name == "-":
            stream = await _stdin()
        elif input_name is not None:
            try:
                stream = files.enter_context(open(input_name, "rb"))
            except OSError as exc:
                raise cli.UsageError(f"--input {input_name!r}: {exc.strerror}") from None

        def started(source: Source) -> None:
            cli._print_stdout(source.report.swarm_id.hex())
            assert source.report.address is not None
            cli._print_stdout(cli.format_address(source.report.address))

        with cli._on_signals(lambda _signum: stop.set()):
            report = await run_live(
                options,
                input_stream=stream,
                pace=None if input_name != "-" else False,
                duration=duration,
                stop=stop,
                on_started=started,
            )
    for line in report.lines():
        cli._print_stdout(line)
    return int(cli.EXIT_OK)
