"""``p2pcdn portal``: run the content portal (docs/portal.md).

::

    p2pcdn portal [--listen 127.0.0.1:8080] [--token TOKEN | --token-file FILE] [--state FILE]

Prints the portal's URL as the first line of stdout as soon as it listens, and, when no token
was given (``--token``, ``--token-file`` or ``P2PCDN_PORTAL_TOKEN``), a second line
``token: TOKEN`` with the publish token it generated. Serves until SIGINT or SIGTERM (exit
status 0), then writes the state file one last time.

:mod:`lab.cli` registers the subcommand and imports this module only when it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Final

from lab.cli import (
    EXIT_FAILURE,
    EXIT_OK,
    UsageError,
    _on_signals,
    _print_stdout,
    format_address,
    parse_address,
    run_coroutine,
)
from portal.server import PortalServer, PortalStateFileError, generate_token

log = logging.getLogger("portal")

TOKEN_ENV: Final = "P2PCDN_PORTAL_TOKEN"
DEFAULT_LISTEN: Final = "127.0.0.1:8080"
#: A token file is a few bytes; anything much bigger is the wrong file.
MAX_TOKEN_FILE: Final = 4096


def _listen(text: str) -> tuple[str, int]:
    try:
        return parse_address(text, allow_port_zero=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid HOST:PORT {text!r}: {exc}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        type=_listen,
        default=_listen(DEFAULT_LISTEN),
        help=f"HTTP listener (default {DEFAULT_LISTEN}; port 0 picks a free port)",
    )
    token = parser.add_mutually_exclusive_group()
    token.add_argument(
        "--token", metavar="TOKEN", help="publish token (visible in ps: prefer --token-file)"
    )
    token.add_argument(
        "--token-file", metavar="FILE", type=Path, help="read the publish token from FILE"
    )
    parser.add_argument(
        "--state",
        metavar="FILE",
        type=Path,
        help="keep the channels in this JSON file across restarts (default: in memory only)",
    )


def resolve_token(args: argparse.Namespace) -> tuple[str, bool]:
    """The publish token and whether it was generated (flag, file, environment, or new)."""
    if args.token is not None:
        token = str(args.token).strip()
        if not token:
            raise UsageError("--token must not be empty")
        return token, False
    if args.token_file is not None:
        path: Path = args.token_file
        try:
            with path.open("rb") as handle:
                raw = handle.read(MAX_TOKEN_FILE + 1)
        except OSError as exc:
            raise UsageError(f"cannot read the token file {path}: {exc.strerror}") from None
        if len(raw) > MAX_TOKEN_FILE:
            raise UsageError(f"the token file {path} is larger than {MAX_TOKEN_FILE} bytes")
        try:
            token = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise UsageError(f"the token file {path} is not UTF-8 text") from None
        if not token or any(char.isspace() for char in token):
            raise UsageError(f"the token file {path} must hold one token on one line")
        return token, False
    env = os.environ.get(TOKEN_ENV, "").strip()
    if env:
        return env, False
    return generate_token(), True


def run(args: argparse.Namespace) -> int:
    token, generated = resolve_token(args)
    host, port = args.listen
    return run_coroutine(_serve(token, generated, host, port, args.state))


async def _serve(token: str, generated: bool, host: str, port: int, state: Path | None) -> int:
    server = PortalServer(token, state_file=state)
    stop = asyncio.Event()
    with _on_signals(lambda _signum: stop.set()):
        try:
            address = await server.start(host, port)
        except PortalStateFileError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return EXIT_FAILURE
        try:
            _print_stdout(server.url)
            if generated:
                _print_stdout(f"token: {token}")
            log.info("portal at %s", format_address(address))
            await stop.wait()
        finally:
            await server.close()
    return EXIT_OK
