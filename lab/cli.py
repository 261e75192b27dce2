"""The ``p2pcdn`` command line: a thin front over :mod:`ppsp.peer.aio` and, later, the daemons.

This module only parses arguments, prints results and maps failures to exit codes; protocol
work lives in :mod:`ppsp`. Each subcommand is a :class:`Command` — a function that adds its
arguments and a function that runs it — registered with the :func:`command` decorator, so a
new role (``tracker``, ``cacher``, ``portal``…) is one small block at the end of this file.

Output conventions, relied on by scripts, ``bench/`` and ``lab/demo.py``:

- ``seed`` and ``live-source`` print the swarm ID in hex as the first line of stdout and the
  bound ``HOST:PORT`` as the second, flushed as soon as they are known;
- ``get`` prints a progress bar on stderr when stderr is a terminal and always ends with one
  summary line on stderr (:func:`lab.progress.format_summary`) unless ``--quiet``;
- failures are one ``error: …`` line on stderr and a documented exit code (:data:`EXIT_CODES`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import ipaddress
import logging
import math
import os
import re
import signal
import socket
import sys
import textwrap
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final, TypeVar

from lab.progress import ProgressBar, format_summary
from ppsp.peer import aio
from ppsp.peer.messages import IntegrityMethod, LiveSignatureAlgorithm, MerkleHashFunction

log = logging.getLogger("lab.cli")

T = TypeVar("T")

# -- exit codes ---------------------------------------------------------------------------

EXIT_OK = 0
#: Anything else that went wrong at run time: unreadable file, address in use, engine error.
EXIT_FAILURE = 1
#: Bad command line (argparse's own convention).
EXIT_USAGE = 2
EXIT_NO_PEER = 3
EXIT_INTEGRITY = 4
EXIT_TIMEOUT = 5
#: 128 + signal number, the shell's convention for a process ended by a signal.
EXIT_SIGINT = 128 + int(signal.SIGINT)
EXIT_SIGTERM = 128 + int(signal.SIGTERM)

#: Exit code of each download failure, most specific class first.
DOWNLOAD_EXIT_CODES: tuple[tuple[type[aio.DownloadError], int], ...] = (
    (aio.NoPeerAnswered, EXIT_NO_PEER),
    (aio.IntegrityFailure, EXIT_INTEGRITY),
    (aio.DownloadTimeout, EXIT_TIMEOUT),
)

EXIT_CODES_HELP = f"""\
exit status:
  {EXIT_OK}    success (seed, live-source: stopped by SIGINT/SIGTERM or end of input)
  {EXIT_FAILURE}    run-time failure (address in use, I/O error, other download error)
  {EXIT_USAGE}    bad command line (unknown option, malformed swarm ID or HOST:PORT,
       FILE missing, host name that does not resolve)
  {EXIT_NO_PEER}    get: no peer answered
  {EXIT_INTEGRITY}    get: integrity failure (no peer supplied content matching the swarm ID)
  {EXIT_TIMEOUT}    get: timed out (--timeout)
  {EXIT_SIGINT}  get: interrupted by SIGINT (Ctrl-C); {EXIT_SIGTERM} by SIGTERM
"""

# -- option values ------------------------------------------------------------------------

HASH_FUNCTIONS: dict[str, MerkleHashFunction] = {f.hashlib_name: f for f in MerkleHashFunction}
DEFAULT_HASH = "sha256"  # RFC 7574 §7.6 default Merkle hash function

INTEGRITY_METHODS: dict[str, IntegrityMethod] = {
    "unified": IntegrityMethod.UNIFIED_MERKLE,  # RFC 7574 §6.1.2, §7.5: the live default
    "sign-all": IntegrityMethod.SIGN_ALL,  # RFC 7574 §6.1.1
}
SIGNATURE_ALGORITHMS: dict[str, LiveSignatureAlgorithm] = {
    "ecdsa-p256": LiveSignatureAlgorithm.ECDSAP256SHA256,
    "ecdsa-p384": LiveSignatureAlgorithm.ECDSAP384SHA384,
    "rsa-sha256": LiveSignatureAlgorithm.RSASHA256,
    "rsa-sha1": LiveSignatureAlgorithm.RSASHA1,
}

DEFAULT_PORT = 7777
#: Loopback by default: serving to other hosts is an explicit choice (``--listen 0.0.0.0:7777``).
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"
DEFAULT_CHUNK_SIZE = 1024  # RFC 7574 §8.1 recommended chunk size
DEFAULT_TIMEOUT = 60.0
#: A chunk and its DATA header must fit one UDP datagram over IPv4 (RFC 7574 §8.1, §8.6):
#: 65507 bytes of UDP payload minus the channel ID (4), the message type (1), a 64-bit chunk
#: specification (16, the widest CAM) and the timestamp (8).
MAX_CHUNK_SIZE = 65507 - 4 - 1 - 16 - 8

# -- errors -------------------------------------------------------------------------------


class UsageError(Exception):
    """A command line that parses but does not make sense (exit status 2)."""


class Interrupted(Exception):
    """A blocking command was stopped by a signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# -- argument types (argparse ``type=`` callables; their errors become usage errors) -------

Address = aio.Address

_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def parse_address(text: str, *, allow_port_zero: bool = False) -> Address:
    """Parse ``HOST:PORT``; an IPv6 host must be in brackets (``[::1]:7777``, RFC 3986 §3.2.2).

    Raises :class:`ValueError` with a message meant for the user.
    """
    text = text.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError("missing ']' after the IPv6 address")
        host, rest = text[1:close], text[close + 1 :]
        if not rest.startswith(":"):
            raise ValueError("expected ':PORT' after ']'")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError("expected HOST:PORT")
        if ":" in host:
            raise ValueError("put an IPv6 address in brackets: [ADDRESS]:PORT")
        if not host:
            raise ValueError("missing host before ':'")
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"{host!r} is not an IPv4 address") from None
        elif not _HOSTNAME_RE.match(host):
            raise ValueError(f"{host!r} is not a valid host name")
    if not port_text.isdigit():
        raise ValueError(f"port {port_text!r} is not a number")
    port = int(port_text)
    lowest = 0 if allow_port_zero else 1
    if not lowest <= port <= 65535:
        raise ValueError(f"port {port} is out of range {lowest}-65535")
    return host, port


def format_address(address: Address) -> str:
    """``HOST:PORT``, with brackets around an IPv6 host so :func:`parse_address` reads it back."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _argtype(name: str, parse: Callable[[str], T]) -> Callable[[str], T]:
    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"invalid {name} {text!r}: {exc}") from None

    convert.__name__ = name  # argparse names the type in some messages
    return convert


def _parse_hex(text: str) -> bytes:
    value = text.strip().lower()
    if not value:
        raise ValueError("empty")
    if not re.fullmatch(r"[0-9a-f]+", value):
        raise ValueError("not hexadecimal")
    if len(value) % 2:
        raise ValueError(f"odd number of hex digits ({len(value)})")
    return bytes.fromhex(value)


def _parse_chunk_size(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise ValueError("not an integer") from None
    if not 1 <= value <= MAX_CHUNK_SIZE:
        raise ValueError(f"must be 1-{MAX_CHUNK_SIZE} bytes")
    return value


def _parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise ValueError("must be a positive number of seconds")
    return value


swarm_id_type = _argtype("swarm ID", _parse_hex)
peer_address_type = _argtype("address", parse_address)
listen_address_type = _argtype("address", lambda text: parse_address(text, allow_port_zero=True))
chunk_size_type = _argtype("chunk size", _parse_chunk_size)
seconds_type = _argtype("timeout", _parse_seconds)


def check_swarm_id(swarm_id: bytes, hash_name: str) -> None:
    """A static swarm ID is the Merkle root hash (RFC 7574 §5.1), so its length is
    the hash function's digest size. Raises :class:`UsageError` naming a hash that fits."""
    function = HASH_FUNCTIONS[hash_name]
    if len(swarm_id) == function.digest_size:
        return
    message = (
        f"swarm ID must be {function.digest_size * 2} hex digits for {hash_name}, "
        f"got {len(swarm_id) * 2}"
    )
    fits = [name for name, f in HASH_FUNCTIONS.items() if f.digest_size == len(swarm_id)]
    if fits:
        message += f" (a {fits[0]} root hash? add --hash {fits[0]})"
    raise UsageError(message)


def resolve(address: Address) -> Address:
    """Turn a host name into an IP address once, up front: the endpoint matches datagrams to
    peers by source address, which is always numeric. Raises :class:`UsageError`."""
    host, port = address
    try:
        ipaddress.ip_address(host)
        return address
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise UsageError(f"cannot resolve host {host!r}: {exc.strerror}") from None
    sockaddr = infos[0][4]
    return str(sockaddr[0]), int(sockaddr[1])


# -- the command registry -----------------------------------------------------------------

RunFunction = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """One ``p2pcdn`` subcommand."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: RunFunction
    description: str = ""
    epilog: str = ""


COMMANDS: dict[str, Command] = {}


def command(
    name: str,
    *,
    help: str,
    arguments: Callable[[argparse.ArgumentParser], None],
    description: str = "",
    epilog: str = "",
) -> Callable[[RunFunction], RunFunction]:
    """Register the decorated function as the ``p2pcdn NAME`` subcommand."""

    def register(run: RunFunction) -> RunFunction:
        if name in COMMANDS:
            raise ValueError(f"subcommand {name!r} registered twice")
        COMMANDS[name] = Command(name, help, arguments, run, description or help, epilog)
        return run

    return register


def version() -> str:
    """The installed package version, or the source tree's when running from a checkout."""
    try:
        return importlib.metadata.version("p2pcdn")
    except importlib.metadata.PackageNotFoundError:
        pass
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    with contextlib.suppress(OSError):
        match = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.MULTILINE)
        if match:
            return match.group(1)
    return "unknown"


#: The commands that talk on the network and so take ``--pcap PATH`` (interop/capture.py).
CAPTURING_COMMANDS: Final = frozenset(
    {"seed", "get", "live-source", "tracker", "overlay", "cacher", "csc", "source"}
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2pcdn",
        description="p2pcdn: a P2P CDN on PPSPP (RFC 7574), PPSP-TP (RFC 7846) and RELOAD.",
        epilog=EXIT_CODES_HELP + "\nThe user manual is docs/manual.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"p2pcdn {version()} (Python {sys.version.split()[0]})",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log to stderr: -v progress of the protocol, -vv debugging detail",
    )
    # The same option on every subcommand, so `p2pcdn get … -v` works too; SUPPRESS keeps a
    # subcommand from resetting a -v given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        sub = subparsers.add_parser(
            cmd.name,
            help=cmd.help,
            description=textwrap.fill(cmd.description, width=79),
            epilog=cmd.epilog or None,
            parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        cmd.add_arguments(sub)
        if cmd.name in CAPTURING_COMMANDS:
            sub.add_argument(
                "--pcap",
                metavar="PATH",
                type=Path,
                help="record what this daemon sends and receives (PPSPP, PPSP-TP, RELOAD "
                "frames in plaintext) as a pcap file for tshark or p2pcdn dissect",
            )
        sub.set_defaults(_run=cmd.run, _parser=sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``p2pcdn`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else 1)
    _configure_logging(args.verbose)
    sub: argparse.ArgumentParser = args._parser
    pcap: Path | None = getattr(args, "pcap", None)
    try:
        if pcap is not None:
            from interop import capture

            capture.start(pcap)
        return int(args._run(args))
    except UsageError as exc:
        sub.print_usage(sys.stderr)
        print(f"{sub.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Interrupted as exc:
        print("error: interrupted", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_SIGINT
    except OSError as exc:
        log.debug("failure", exc_info=True)
        print(f"error: {_one_line(str(exc)) or type(exc).__name__}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:
        # A bug or an unfinished engine: one line for the user, the traceback with -v.
        log.info("unexpected error", exc_info=True)
        hint = "" if args.verbose else " (run with -v for the traceback)"
        detail = _one_line(str(exc))
        print(f"error: {type(exc).__name__}{': ' if detail else ''}{detail}{hint}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        if pcap is not None:
            from interop import capture

            capture.stop()


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    root.setLevel(level)


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- running coroutines -------------------------------------------------------------------


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (DESIGN §3: ~4x the datagram rate of the stdlib loop), unless
    ``P2PCDN_LOOP=asyncio`` asks for the stdlib loop (for comparisons and debugging)."""
    if os.environ.get("P2PCDN_LOOP", "").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a fresh event loop (uvloop when available)."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(coro)


@contextlib.contextmanager
def _on_signals(handler: Callable[[int], None]) -> Iterator[None]:
    """Route SIGINT and SIGTERM to ``handler`` while the block runs, where the loop allows it
    (only the main thread of a Unix process may install signal handlers)."""
    loop = asyncio.get_running_loop()
    installed: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, handler, signum)
        except (NotImplementedError, RuntimeError, ValueError):
            continue
        installed.append(signum)
    try:
        yield
    finally:
        for installed_signum in installed:
            loop.remove_signal_handler(installed_signum)


async def _abort_on_signal(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro``; a SIGINT/SIGTERM cancels it and raises :class:`Interrupted`."""
    task = asyncio.ensure_future(coro)
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        task.cancel()

    with _on_signals(on_signal):
        try:
            return await task
        except asyncio.CancelledError:
            if received:
                raise Interrupted(received[0]) from None
            raise


async def _serve_until_stopped(handle: aio.SeederHandle, stop: asyncio.Event) -> int:
    """Wait for a signal (clean stop, exit 0) or for the handle to close by itself (a live
    source at end of input: exit 0; an engine failure: its exception propagates)."""
    closed = asyncio.ensure_future(handle.wait_closed())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({closed, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        handle.close()
        try:
            await asyncio.wait_for(closed, timeout=10)
        except TimeoutError:
            log.warning("the server did not close within 10 s; exiting anyway")
    return EXIT_OK


def _print_stdout(line: str) -> None:
    """Print a line on stdout, flushed; a reader that went away (``| head -1``) must not stop
    a seeder, so a broken pipe silences stdout instead of failing."""
    try:
        print(line, flush=True)
    except (BrokenPipeError, ValueError):
        _silence_stdout()


def _print_download_error(exc: aio.DownloadError, timeout: float) -> int:
    """The one-line reason and the exit code for a failed download."""
    detail = _one_line(str(exc))
    if isinstance(exc, aio.NoPeerAnswered):
        canonical = "no peer answered"
    elif isinstance(exc, aio.IntegrityFailure):
        canonical = "integrity failure"
    elif isinstance(exc, aio.DownloadTimeout):
        canonical = f"timed out after {timeout:g} s"
    else:
        canonical = "download failed"
    if not detail or detail.lower().startswith(canonical.lower()):
        message = detail or canonical
    elif isinstance(exc, aio.DownloadTimeout) and detail.lower().startswith("timed out"):
        message = canonical
    else:
        message = f"{canonical}: {detail}"
    print(f"error: {message}", file=sys.stderr)
    for cls, code in DOWNLOAD_EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_FAILURE


# -- p2pcdn seed --------------------------------------------------------------------------


def _add_listen(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        type=listen_address_type,
        default=parse_address(DEFAULT_LISTEN),
        help=f"UDP address to serve on (default {DEFAULT_LISTEN}; port 0 picks a free port; "
        "IPv6 as [ADDRESS]:PORT; 0.0.0.0 serves other hosts)",
    )


def _add_chunk_size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--chunk-size",
        metavar="N",
        type=chunk_size_type,
        default=DEFAULT_CHUNK_SIZE,
        help=f"chunk size in bytes (default {DEFAULT_CHUNK_SIZE}, RFC 7574 §8.1); "
        "seeder and downloader must agree",
    )


def _add_hash(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--hash",
        choices=list(HASH_FUNCTIONS),
        default=default,
        metavar="NAME",
        help=f"Merkle hash function: {', '.join(HASH_FUNCTIONS)} (default {DEFAULT_HASH}; "
        "libswift uses sha1)",
    )


def _seed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", type=Path, help="the file to serve")
    _add_listen(parser)
    _add_hash(parser, DEFAULT_HASH)
    _add_chunk_size(parser)
    parser.add_argument(
        "--mtu",
        type=int,
        metavar="BYTES",
        help="largest datagram to send, IP header included (default: the path MTU the kernel "
        "reports; on loopback several DATA messages then share a datagram, RFC 7574 §8.6; "
        "1500 sends one chunk per datagram, as libswift does)",
    )


@command(
    "seed",
    help="serve a file as a static swarm",
    description="Serve FILE over PPSPP as a static swarm (RFC 7574 §5.1: Merkle hash tree). "
    "Prints the swarm ID (the root hash, hex) as the first line of stdout and the listening "
    "HOST:PORT as the second, then serves until SIGINT or SIGTERM (exit status 0).",
    arguments=_seed_arguments,
    epilog="example:\n  p2pcdn seed movie.mp4 --listen 127.0.0.1:7777\n",
)
def cmd_seed(args: argparse.Namespace) -> int:
    path: Path = args.file
    if not path.is_file():
        reason = "no such file" if not path.exists() else "not a regular file"
        raise UsageError(f"cannot seed {str(path)!r}: {reason}")
    if not os.access(path, os.R_OK):
        raise UsageError(f"cannot seed {str(path)!r}: permission denied")
    listen = resolve(args.listen)
    if args.mtu is not None and not 576 <= args.mtu <= 65536:
        raise UsageError(f"--mtu {args.mtu}: give 576 to 65536 bytes")
    return run_coroutine(_seed(path, listen, args.hash, args.chunk_size, args.mtu))


async def _seed(
    path: Path, listen: Address, hash_name: str, chunk_size: int, mtu: int | None = None
) -> int:
    stop = asyncio.Event()
    # Signals are routed before hashing starts, so Ctrl-C during a long hash still ends cleanly.
    with _on_signals(lambda _signum: stop.set()):
        handle = await aio.serve_seed(
            path,
            listen=listen,
            hash_function=HASH_FUNCTIONS[hash_name],
            chunk_size=chunk_size,
            mtu=mtu,
        )
        where = format_address(handle.address)
        _print_stdout(handle.swarm_id.hex())
        _print_stdout(where)
        if sys.stderr.isatty():
            options = "" if hash_name == DEFAULT_HASH else f" --hash {hash_name}"
            if chunk_size != DEFAULT_CHUNK_SIZE:
                options += f" --chunk-size {chunk_size}"
            print(
                f"seeding {path} ({path.stat().st_size} bytes, {hash_name} Merkle tree, "
                f"{chunk_size}-byte chunks) on {where}; Ctrl-C stops\n"
                f"download with: p2pcdn get {handle.swarm_id.hex()} --peer {where}{options} "
                f"-o FILE",
                file=sys.stderr,
            )
        log.info("seeding %s as swarm %s on %s", path, handle.swarm_id.hex(), where)
        return await _serve_until_stopped(handle, stop)


# -- p2pcdn get ---------------------------------------------------------------------------


def _get_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "swarm_id",
        metavar="SWARM_ID",
        type=swarm_id_type,
        help="swarm ID in hex: the root hash (static) or the source's public key (--live)",
    )
    parser.add_argument(
        "--peer",
        metavar="HOST:PORT",
        type=peer_address_type,
        action="append",
        required=True,
        dest="peers",
        help="a peer to download from (repeat for several; IPv6 as [ADDRESS]:PORT)",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        required=True,
        help="where to write the content (overwritten); '-' is stdout, with --live only",
    )
    parser.add_argument("--live", action="store_true", help="follow a live swarm (RFC 7574 §6)")
    _add_hash(parser, None)
    parser.add_argument(
        "--integrity",
        choices=list(INTEGRITY_METHODS),
        default=None,
        help="live content integrity method (default unified; --live only)",
    )
    _add_chunk_size(parser)
    parser.add_argument(
        "--timeout",
        metavar="S",
        type=seconds_type,
        default=DEFAULT_TIMEOUT,
        help=f"give up after S seconds (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bar and no summary line; errors are still printed",
    )


@command(
    "get",
    help="download a swarm from peers",
    description="Download a swarm from the given peers, verifying every chunk against the "
    "swarm ID, into PATH. Shows a progress bar on stderr when stderr is a terminal and ends "
    "with a one-line summary (size, seconds, MiB/s).",
    arguments=_get_arguments,
    epilog=EXIT_CODES_HELP + "\nexamples:\n"
    "  p2pcdn get 4b2e…9a01 --peer 127.0.0.1:7777 -o movie.mp4\n"
    "  p2pcdn get --live 3059…e2c1 --peer [::1]:7777 -o - | mpv -\n",
)
def cmd_get(args: argparse.Namespace) -> int:
    # The same peer named twice (or by name and by address) is one peer.
    peers = list(dict.fromkeys(resolve(peer) for peer in args.peers))
    if args.live:
        if args.hash is not None:
            raise UsageError("--hash applies to static swarms; a live swarm ID is a public key")
        return _get_live(args, peers)
    if args.integrity is not None:
        raise UsageError("--integrity applies to --live only")
    hash_name: str = args.hash or DEFAULT_HASH
    check_swarm_id(args.swarm_id, hash_name)
    if args.output == "-":
        raise UsageError("-o - (stdout) works with --live only; give a file PATH")
    out = Path(args.output)
    _check_output(out)
    bar = None if args.quiet else ProgressBar(sys.stderr)
    try:
        result = run_coroutine(
            _abort_on_signal(
                aio.download(
                    args.swarm_id,
                    peers,
                    out,
                    hash_function=HASH_FUNCTIONS[hash_name],
                    chunk_size=args.chunk_size,
                    timeout=args.timeout,
                    progress=bar if bar is not None and bar.is_tty else None,
                )
            )
        )
    except aio.DownloadError as exc:
        if bar is not None:
            bar.clear()
        return _print_download_error(exc, args.timeout)
    except BaseException:
        if bar is not None:
            bar.clear()
        raise
    if bar is not None:
        peers_used = f"{result.peers_used} peer{'s' if result.peers_used != 1 else ''}"
        bar.finish(
            format_summary(
                result.size, result.seconds, f"verified ({hash_name} Merkle), {peers_used}"
            )
        )
    return EXIT_OK


def _check_output(out: Path) -> None:
    if out.is_dir():
        raise UsageError(f"output {str(out)!r} is a directory; give a file path")
    parent = out.parent
    if not parent.is_dir():
        raise UsageError(f"output directory {str(parent)!r} does not exist")


def _get_live(args: argparse.Namespace, peers: list[Address]) -> int:
    method = INTEGRITY_METHODS[args.integrity or "unified"]
    bar = None if args.quiet else ProgressBar(sys.stderr)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if args.output == "-":
            out: BinaryIO = sys.stdout.buffer
        else:
            path = Path(args.output)
            _check_output(path)
            out = stack.enter_context(path.open("wb"))
        try:
            size = run_coroutine(
                _abort_on_signal(
                    aio.download_live(
                        args.swarm_id,
                        peers,
                        out,
                        integrity_method=method,
                        chunk_size=args.chunk_size,
                        timeout=args.timeout,
                        progress=bar if bar is not None and bar.is_tty else None,
                    )
                )
            )
            out.flush()
        except aio.DownloadError as exc:
            if bar is not None:
                bar.clear()
            return _print_download_error(exc, args.timeout)
        except BrokenPipeError:
            # The reader of stdout went away (a player closed): the user is done watching.
            if bar is not None:
                bar.clear()
            _silence_stdout()
            return EXIT_OK
        except BaseException:
            if bar is not None:
                bar.clear()
            raise
    if bar is not None:
        bar.finish(format_summary(size, time.monotonic() - started, "live stream ended"))
    return EXIT_OK


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null, so writes (and the flush at exit) to a closed pipe vanish."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


# -- p2pcdn live-source -------------------------------------------------------------------


def _live_source_arguments(parser: argparse.ArgumentParser) -> None:
    _add_listen(parser)
    parser.add_argument(
        "--integrity",
        choices=list(INTEGRITY_METHODS),
        default="unified",
        help="content integrity method (default unified: RFC 7574 §6.1.2 unified Merkle "
        "tree, one signature per munro; sign-all: §6.1.1, a signature per chunk)",
    )
    parser.add_argument(
        "--algorithm",
        choices=list(SIGNATURE_ALGORITHMS),
        default="ecdsa-p256",
        help="signature algorithm of the source's key (default ecdsa-p256, RFC 7574 §7.7)",
    )
    _add_chunk_size(parser)


@command(
    "live-source",
    help="serve stdin as a live stream",
    description="Serve standard input as a live swarm, signing the content with a fresh key "
    "(RFC 7574 §6.1). Prints the swarm ID (the public key, hex) as the first line of stdout "
    "and the listening HOST:PORT as the second; serves until end of input has been "
    "delivered, or until SIGINT or SIGTERM.",
    arguments=_live_source_arguments,
    epilog="example:\n  ffmpeg -i cam.mp4 -f mpegts - | p2pcdn live-source --listen 127.0.0.1:7777\n",
)
def cmd_live_source(args: argparse.Namespace) -> int:
    listen = resolve(args.listen)
    if sys.stdin.isatty():
        print("reading the stream from the terminal; pipe content in instead", file=sys.stderr)
    return run_coroutine(
        _live_source(
            listen,
            INTEGRITY_METHODS[args.integrity],
            SIGNATURE_ALGORITHMS[args.algorithm],
            args.chunk_size,
        )
    )


async def _live_source(
    listen: Address,
    method: IntegrityMethod,
    algorithm: LiveSignatureAlgorithm,
    chunk_size: int,
) -> int:
    stop = asyncio.Event()
    with _on_signals(lambda _signum: stop.set()):
        handle = await aio.serve_live_source(
            sys.stdin.buffer,
            listen=listen,
            integrity_method=method,
            algorithm=algorithm,
            chunk_size=chunk_size,
        )
        where = format_address(handle.address)
        _print_stdout(handle.swarm_id.hex())
        _print_stdout(where)
        log.info("live source %s on %s", handle.swarm_id.hex(), where)
        return await _serve_until_stopped(handle, stop)


# -- p2pcdn tracker -----------------------------------------------------------------------


def _tracker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        help="TOML configuration (docs/tracker.md); the flags below override it",
    )
    for name, what in (
        ("http", "RFC 7846 JSON over HTTP"),
        ("https", "RFC 7846 JSON over HTTPS (needs --cert and --key)"),
        ("udp", "binary PPSP-TP over UDP"),
        ("tcp", "binary PPSP-TP over TCP"),
    ):
        parser.add_argument(
            f"--{name}",
            metavar="HOST:PORT",
            type=listen_address_type,
            help=f"serve {what} (port 0 picks a free port)",
        )
    parser.add_argument("--cert", metavar="FILE", type=Path, help="PEM certificate chain for https")
    parser.add_argument("--key", metavar="FILE", type=Path, help="PEM private key for https")
    parser.add_argument(
        "--overlay",
        metavar="DAEMON.toml",
        type=Path,
        help="overlay mode: join the RELOAD tracker overlay as the node this daemon "
        "configuration describes (as for p2pcdn overlay --config; docs/tracker.md)",
    )


@command(
    "tracker",
    help="run a PPSP-TP tracker (RFC 7846)",
    description="Run a PPSP-TP tracker serving RFC 7846 JSON over HTTP(S) and the binary "
    "encoding over UDP and TCP at once. Prints the URL of every listener on stdout, one per "
    "line (http://…, https://…, ppsp-udp://…, ppsp-tcp://…), then serves until SIGINT or "
    "SIGTERM (exit status 0). With no listener configured it serves http and udp on "
    "127.0.0.1:7846 and tcp on 127.0.0.1:7847.",
    arguments=_tracker_arguments,
    epilog="examples:\n"
    "  p2pcdn tracker --http 127.0.0.1:7846 --udp 127.0.0.1:7846 --tcp 127.0.0.1:7847\n"
    "  p2pcdn tracker --config tracker.toml -v\n",
)
def cmd_tracker(args: argparse.Namespace) -> int:
    # Imported here: the tracker pulls in aiohttp, which the other subcommands do not need.
    from ppsp.tracker.config import ConfigError, TrackerDaemonConfig, load_config

    try:
        config = load_config(args.config) if args.config is not None else TrackerDaemonConfig()
        for name in ("http", "https", "udp", "tcp"):
            if getattr(args, name) is not None:
                setattr(config, name, getattr(args, name))
        if args.cert is not None:
            config.cert_file = args.cert
        if args.key is not None:
            config.key_file = args.key
        if args.overlay is not None:
            from ppsp.tracker.config import OverlaySettings

            settings = config.overlay or OverlaySettings(args.overlay)
            settings.daemon = args.overlay  # the flag wins over the file's [overlay] daemon
            config.overlay = settings
        config = config.with_defaults()
        config.validate()
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if not args.verbose:  # -v on the command line wins over the file's level
        logging.getLogger().setLevel(config.log_level)
    if config.log_file is not None:
        handler = logging.FileHandler(config.log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
    return run_coroutine(_tracker(config))


async def _tracker(config: Any) -> int:
    from ppsp.tracker.config import ConfigError
    from ppsp.tracker.server import serve

    stop = asyncio.Event()
    with _on_signals(lambda _signum: stop.set()):
        try:
            server = await serve(config)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        for url in server.urls:
            _print_stdout(url)
        closed = asyncio.ensure_future(server.wait_closed())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({closed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            server.close()
            try:
                await asyncio.wait_for(closed, timeout=10)
            except TimeoutError:
                log.warning("the tracker did not close within 10 s; exiting anyway")
    return EXIT_OK


# -- p2pcdn portal (portal/cli.py, imported when used: it pulls in aiohttp) -----------------


def _portal_arguments(parser: argparse.ArgumentParser) -> None:
    from portal.cli import add_arguments

    add_arguments(parser)


@command(
    "portal",
    help="run the content portal (channel list: JSON API and web page)",
    description="Run the content portal: sources publish channels with a bearer token, viewers "
    "read the list and send heartbeats, and a web page lists the channels (docs/portal.md). "
    "Prints the URL on the first line of stdout (and a generated token on the second when "
    "none is given), then serves until SIGINT or SIGTERM.",
    arguments=_portal_arguments,
    epilog="token: --token, else --token-file, else $P2PCDN_PORTAL_TOKEN, else generated.\n"
    "example:\n  p2pcdn portal --listen 127.0.0.1:8080 --token-file portal.token --state p.json\n",
)
def cmd_portal(args: argparse.Namespace) -> int:
    from portal.cli import run

    return run(args)


# -- p2pcdn dissect (interop/dissect.py: its scapy imports wait until a dissection starts) ---


def _dissect_arguments(parser: argparse.ArgumentParser) -> None:
    from interop.dissect import add_arguments

    add_arguments(parser)


@command(
    "dissect",
    help="print a Wireshark-style dissection of a PPSPP / PPSP-TP / RELOAD capture",
    description="Dissect a pcap or pcapng capture: one tree per frame (frame number, time, "
    "addresses, protocol, message tree) for PPSPP (with per-channel handshake context), "
    "PPSP-TP binary and RELOAD, then packets per protocol and the malformed count "
    "(docs/dissect.md). Malformed packets are reported, never fatal: exit 1 only when the "
    "file cannot be read.",
    arguments=_dissect_arguments,
    epilog="examples:\n  p2pcdn dissect capture.pcap\n"
    "  p2pcdn dissect libswift.pcap --port-map ppspp=20200 --json\n",
)
def cmd_dissect(args: argparse.Namespace) -> int:
    from interop.dissect import run

    return run(args)


# -- p2pcdn wireshark install (interop/wireshark_install.py) -------------------------------


def _wireshark_arguments(parser: argparse.ArgumentParser) -> None:
    from interop.wireshark_install import add_arguments

    add_arguments(parser)


@command(
    "wireshark",
    help="install the PPSPP and PPSP-TP Lua dissectors into Wireshark",
    description="`p2pcdn wireshark install [--dir D]` copies the Lua dissectors of "
    "interop/wireshark/ into Wireshark's personal Lua plugin folder (or D) and prints where "
    "(interop/wireshark/README.md).",
    arguments=_wireshark_arguments,
    epilog="example:\n  p2pcdn wireshark install\n",
)
def cmd_wireshark(args: argparse.Namespace) -> int:
    from interop.wireshark_install import run

    return run(args)


# -- p2pcdn conformance (interop/conformance.py) -----------------------------------------------


def _conformance_arguments(parser: argparse.ArgumentParser) -> None:
    from interop.conformance import add_arguments

    add_arguments(parser)


@command(
    "conformance",
    help="check a PPSPP peer against RFC 7574 (pass/fail table)",
    description="Run trace-based checks (the libswift handshake probes A-F) and live checks "
    "over UDP (handshake, HAVE, REQUEST/INTEGRITY/DATA, Merkle verification, ACK, keep-alive, "
    "close, bad input) against a PPSPP peer seeding a swarm, and print a pass/fail/skip table "
    "with the RFC 7574 section of each check (docs/conformance.md). Exit 0 only when every "
    "required check passes. --self checks our own seeder on 127.0.0.1.",
    arguments=_conformance_arguments,
    epilog="examples:\n  p2pcdn conformance --self\n"
    "  p2pcdn conformance --peer 127.0.0.1:20200 --hash sha1 \\\n"
    "      --swarm 026bf5bed2c08204b6f0765acd1429068a874ee6\n",
)
def cmd_conformance(args: argparse.Namespace) -> int:
    from interop.conformance import run

    return run(args)


# -- p2pcdn ca ----------------------------------------------------------------------------


def _ca_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="ca_action", metavar="ACTION", required=True)
    init = actions.add_parser(
        "init",
        help="create an overlay CA (DIR/ca.key 0600, DIR/ca.pem)",
        description="Create the enrollment CA of a RELOAD overlay (RFC 6940 §11.3): a "
        "self-signed root certificate for the configuration's root-cert list.",
    )
    init.add_argument("--overlay", required=True, metavar="NAME", help="overlay name")
    init.add_argument("--dir", required=True, type=Path, metavar="DIR", help="CA directory")
    init.add_argument(
        "--key-type", choices=["ecdsa-p256", "rsa-2048"], default="ecdsa-p256", help="CA key"
    )
    issue = actions.add_parser(
        "issue",
        help="issue a node certificate with Node-IDs in its SAN",
        description="Generate a node key and issue its certificate (RFC 6940 §11.3): one "
        "reload:// URI per Node-ID and the user name as rfc822Name. Writes PREFIX.key (0600) "
        "and PREFIX.pem and prints each Node-ID in hex, one per line. A user issued again "
        "gets the same random Node-IDs (DIR/nodes.json), as §11.3 recommends.",
    )
    issue.add_argument("--dir", required=True, type=Path, metavar="DIR", help="CA directory")
    issue.add_argument("--user", required=True, metavar="NAME", help="user name (rfc822Name)")
    which = issue.add_mutually_exclusive_group()
    which.add_argument(
        "--node-id",
        action="append",
        type=_argtype("Node-ID", _parse_hex),
        metavar="HEX",
        help="a Node-ID to certify (repeatable)",
    )
    which.add_argument(
        "--random-node-ids", type=int, metavar="N", help="certify N random Node-IDs (default 1)"
    )
    issue.add_argument(
        "--node-id-length", type=int, default=16, metavar="BYTES", help="16-20 (default 16)"
    )
    issue.add_argument(
        "--key-type", choices=["ecdsa-p256", "rsa-2048"], default="ecdsa-p256", help="node key"
    )
    issue.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    issue.add_argument(
        "--out", required=True, type=Path, metavar="PREFIX", help="writes PREFIX.key, .pem"
    )


@command(
    "ca",
    help="RELOAD lab enrollment: overlay CA and node certificates",
    description="Lab enrollment for RELOAD overlays (RFC 6940 §11.3, docs/reload-security.md).",
    arguments=_ca_arguments,
    epilog="examples:\n"
    "  p2pcdn ca init --overlay lab.p2pcdn --dir ca/\n"
    "  p2pcdn ca issue --dir ca/ --user alice@lab.p2pcdn --out nodes/alice\n",
)
def cmd_ca(args: argparse.Namespace) -> int:
    # Imported here: only this subcommand needs cryptography's X.509 builders.
    from reload.security import CertificateError

    try:
        if args.ca_action == "init":
            return _ca_init(args)
        return _ca_issue(args)
    except CertificateError as exc:
        raise UsageError(str(exc)) from None


def _ca_init(args: argparse.Namespace) -> int:
    from reload import security

    directory: Path = args.dir
    directory.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = directory / "ca.key", directory / "ca.pem"
    if key_path.exists():
        raise FileExistsError(f"{key_path} exists; refusing to replace an overlay CA")
    key, cert = security.create_overlay_ca(args.overlay, args.key_type)
    security.save_private_key(key_path, key)
    security.save_certificates(cert_path, [cert])
    _print_stdout(str(cert_path))
    return EXIT_OK


def _ca_issue(args: argparse.Namespace) -> int:
    import datetime
    import json

    from reload import security

    directory: Path = args.dir
    ca_key = security.load_private_key(directory / "ca.key")
    ca_cert = security.load_certificate(directory / "ca.pem")
    overlay = security.overlay_of_ca(ca_cert)
    registry_path = directory / "nodes.json"
    registry: dict[str, list[str]] = (
        json.loads(registry_path.read_text()) if registry_path.exists() else {}
    )
    if args.node_id:
        node_ids: list[bytes] = list(args.node_id)
        for user, ids in registry.items():
            taken = {bytes.fromhex(i) for i in ids} & set(node_ids)
            if user != args.user and taken:
                raise UsageError(f"Node-ID {min(taken).hex()} is already issued to {user}")
    else:
        count = 1 if args.random_node_ids is None else args.random_node_ids
        known = [bytes.fromhex(i) for i in registry.get(args.user, [])]
        if len(known) == count and all(len(i) == args.node_id_length for i in known):
            node_ids = known  # §11.3: a returning user gets the same Node-IDs
        else:
            node_ids = security.random_node_ids(count, args.node_id_length)
    if args.days < 1:
        raise UsageError("--days must be at least 1")
    key = security.generate_private_key(args.key_type)
    cert = security.issue_node_certificate(
        ca_key,
        ca_cert,
        key.public_key(),
        node_ids,
        args.user,
        overlay,
        valid_for=datetime.timedelta(days=args.days),
    )
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    security.save_private_key(out.with_name(out.name + ".key"), key)
    security.save_certificates(out.with_name(out.name + ".pem"), [cert])
    registry[args.user] = [n.hex() for n in node_ids]
    registry_path.write_text(json.dumps(registry, indent=1, sort_keys=True) + "\n")
    for node_id in node_ids:
        _print_stdout(node_id.hex())
    return EXIT_OK


# -- p2pcdn overlay -----------------------------------------------------------------------


def _overlay_daemon_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """The daemon's options; ``default`` is SUPPRESS on the ``run`` action so that options
    given before it (``p2pcdn overlay --config F run``) are not reset."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        default=default,
        help="daemon configuration (TOML, docs/overlay.md); the flags below override it",
    )
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        type=listen_address_type,
        default=default,
        help="address for overlay links (port 0 picks a free port)",
    )
    parser.add_argument(
        "--link", choices=["dtls", "tls"], default=default, help="link type (default dtls)"
    )
    parser.add_argument(
        "--bootstrap",
        metavar="HOST:PORT",
        action="append",
        type=peer_address_type,
        default=default,
        help="a bootstrap node (repeatable; none: create the overlay)",
    )
    parser.add_argument(
        "--data-dir", metavar="DIR", type=Path, default=default, help="stored data (sqlite)"
    )


def _overlay_arguments(parser: argparse.ArgumentParser) -> None:
    _overlay_daemon_options(parser, None)
    actions = parser.add_subparsers(dest="overlay_action", metavar="ACTION")
    run = actions.add_parser(
        "run",
        help="run a RELOAD node (the default action)",
        description="Run a RELOAD peer: listen for DTLS or TLS overlay links, join through "
        "the bootstrap nodes (or create the overlay), store and route for the overlay until "
        "SIGINT or SIGTERM, then leave it cleanly (RFC 6940 §10.9).",
    )
    _overlay_daemon_options(run, argparse.SUPPRESS)
    sim = actions.add_parser(
        "sim",
        help="simulate an overlay in memory (virtual time, no sockets)",
        description="Run N RELOAD peers (the same node code as the daemon) on an in-memory "
        "network with virtual time and 10-50 ms links: store values from random nodes, wait "
        "one stabilization interval, then churn (nodes leave or crash and new ones join) while "
        "random nodes fetch the values. Prints mean and p99 hops, fetch success rate, fetch "
        "latency and the wall time (reload/sim.py).",
    )
    sim.add_argument("--nodes", type=int, required=True, metavar="N", help="number of peers")
    sim.add_argument(
        "--churn",
        type=float,
        default=0.0,
        metavar="PERCENT_PER_MINUTE",
        help="percent of N leaving (or crashing) and joining per minute (default 0)",
    )
    sim.add_argument(
        "--minutes", type=float, default=5.0, metavar="M", help="simulated minutes (default 5)"
    )
    sim.add_argument("--seed", type=int, default=1, metavar="S", help="random seed (default 1)")
    sim.add_argument(
        "--clients",
        type=int,
        default=0,
        metavar="K",
        help="also attach K clients (RFC 6940 §4.2.1) that do their share of the fetches",
    )


@command(
    "overlay",
    help="run a RELOAD overlay node (RFC 6940, CHORD-RELOAD)",
    description="Run a RELOAD overlay node (`p2pcdn overlay [run] --config overlay.toml`): "
    "prints its Node-ID in hex and its HOST:PORT once it has joined the overlay, then serves "
    "until SIGINT or SIGTERM and leaves the overlay cleanly (exit status 0). docs/overlay.md "
    "describes the configuration.",
    arguments=_overlay_arguments,
    epilog="examples:\n"
    "  p2pcdn overlay --config overlay.toml\n"
    "  p2pcdn overlay run --config node2.toml --bootstrap 127.0.0.1:6084 -v\n"
    "  p2pcdn overlay sim --nodes 1000 --churn 10 --minutes 30 --seed 1\n",
)
def cmd_overlay(args: argparse.Namespace) -> int:
    action = getattr(args, "overlay_action", None)
    if action in (None, "run"):
        return _overlay_run(args)
    if action == "sim":
        return _overlay_sim(args)
    raise UsageError(f"unknown overlay action {action!r}")


def _overlay_run(args: argparse.Namespace) -> int:
    # Imported here: only this subcommand needs the RELOAD stack.
    from reload.aio import DaemonConfigError, load_daemon_config

    if args.config is None:
        raise UsageError("--config FILE is required (certificate and key, docs/overlay.md)")
    try:
        config = load_daemon_config(args.config)
    except DaemonConfigError as exc:
        raise UsageError(str(exc)) from None
    if args.listen is not None:
        config.listen = args.listen
    if args.link is not None:
        config.link = args.link
    if args.bootstrap:
        config.bootstrap = list(args.bootstrap)
    if args.data_dir is not None:
        config.data_dir = args.data_dir
    if not args.verbose:  # -v on the command line wins over the file's level
        logging.getLogger().setLevel(config.log_level)
    return run_coroutine(_overlay(config))


def _overlay_sim(args: argparse.Namespace) -> int:
    from reload.sim import run_simulation

    if args.nodes < 1:
        raise UsageError("--nodes must be at least 1")
    if args.churn < 0 or args.minutes < 0:
        raise UsageError("--churn and --minutes must not be negative")
    if args.clients < 0:
        raise UsageError("--clients must not be negative")
    report = run_simulation(
        args.nodes,
        clients=args.clients,
        churn=args.churn,
        minutes=args.minutes,
        seed=args.seed,
        progress=lambda text: log.info("sim: %s", text),
    )
    for line in report.lines():
        _print_stdout(line)
    return EXIT_OK


async def _overlay(config: Any) -> int:
    from reload.aio import DaemonConfigError, OverlayNode

    stop = asyncio.Event()
    with _on_signals(lambda _signum: stop.set()):
        try:
            node = OverlayNode.from_config(config)
        except DaemonConfigError as exc:
            raise UsageError(str(exc)) from None
        # The usages' rules for the Kinds this overlay declares (docs/usages.md).
        from reload.usages.tracker import install_usage_rules

        node.on_node.append(
            lambda n: install_usage_rules(
                (k for k in (d.resolved_kind_id() for d in n.config.kinds) if k is not None),
                n.store_,
            )
        )
        starting = asyncio.ensure_future(node.start(join_timeout=60.0))
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()  # a failed join raises here
                assert node.address is not None
                _print_stdout(node.node_id.hex())
                _print_stdout(format_address(node.address))
                await stopping
        finally:
            starting.cancel()
            stopping.cancel()
            await node.close()
    return EXIT_OK


# -- p2pcdn cacher (cacher/cli.py, imported when used) -------------------------------------


def _cacher_arguments(parser: argparse.ArgumentParser) -> None:
    from cacher.cli import add_arguments

    add_arguments(parser)


@command(
    "cacher",
    help="run a cacher (cache near CSCs: push hints, pull-through from the storage overlay)",
    description="Run a cacher: registers at the tracker (binary PPSP-TP) with its batch "
    "availability report, prefetches on push hints, fills misses from the storage overlay "
    "(verified), serves CSCs over PPSPP pushing the head chunks (docs/cacher.md). Prints its "
    "PPSPP HOST:PORT on the first line of stdout, then serves until SIGINT or SIGTERM.",
    arguments=_cacher_arguments,
    epilog="example:\n  p2pcdn cacher --config cacher.toml -v\n",
)
def cmd_cacher(args: argparse.Namespace) -> int:
    from cacher.cli import run

    return run(args)


# -- p2pcdn csc (csc/cli.py, imported when used) --------------------------------------------


def _csc_arguments(parser: argparse.ArgumentParser) -> None:
    from csc.cli import add_arguments

    add_arguments(parser)


@command(
    "csc",
    help="content sharing client: watch a channel or zap through channels",
    description="Watch channels listed by the portal: tracker FIND with the area, PPSPP from "
    "the cacher and peers, rescue from the storage overlay or source when peers starve; "
    "prints startup delays, Q1, Q2 and bytes by origin (docs/csc.md).",
    arguments=_csc_arguments,
    epilog="example:\n  p2pcdn csc --portal http://127.0.0.1:8080/ zap news film --dwell 10\n",
)
def cmd_csc(args: argparse.Namespace) -> int:
    from csc.cli import run

    return run(args)


# -- p2pcdn lab (lab/lab_cli.py, imported when used) -----------------------------------------


def _lab_arguments(parser: argparse.ArgumentParser) -> None:
    from lab.lab_cli import add_arguments

    add_arguments(parser)


@command(
    "lab",
    help="network-namespace lab: run scenarios on topologies (root; docs/lab.md)",
    description="Run the CDN on hosts emulated by network namespaces: `lab run TOPOLOGY.toml "
    "[--scenario NAME] [--out DIR]`, `lab cleanup` after a killed run, `lab check`.",
    arguments=_lab_arguments,
)
def cmd_lab(args: argparse.Namespace) -> int:
    from lab.lab_cli import run

    return run(args)


# -- p2pcdn source: portal/source_cli.py (it gets this module, so it never imports lab.cli) ----
from portal.source_cli import register as _register_source  # noqa: E402

_register_source(sys.modules[__name__])

if __name__ == "__main__":
    # `python -m lab.cli` runs this file as __main__, and the subcommand modules import
    # lab.cli: a second copy whose UsageError this copy would not catch. Run that one.
    from lab import cli as _canonical

    sys.exit(_canonical.main())
