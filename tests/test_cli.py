"""Tests for the ``p2pcdn`` command line (lab.cli).

The protocol engine is replaced by fakes of the :mod:`ppsp.peer.aio` API, so these tests pin
down the front itself: parsing, validation messages, output, exit codes and signal handling.
One test, marked slow, runs the real engine end to end in separate processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import os
import selectors
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lab.cli as cli
from lab.progress import parse_summary
from ppsp.peer import aio
from ppsp.peer.messages import IntegrityMethod, LiveSignatureAlgorithm, MerkleHashFunction

REPO = Path(__file__).resolve().parent.parent
SHA256_ID = "ab" * 32
SHA1_ID = "cd" * 20


# -- fakes of the aio API -----------------------------------------------------------------


class FakeHandle:
    def __init__(self, swarm_id: bytes, address: aio.Address) -> None:
        self.swarm_id = swarm_id
        self.address = address
        self.close_calls = 0
        self._closed: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self._closed is None:
            self._closed = asyncio.Event()
        return self._closed

    def close(self) -> None:
        self.close_calls += 1
        self._event().set()

    async def wait_closed(self) -> None:
        await self._event().wait()


class FakeEngine:
    """Records calls; ``download_outcome`` is a DownloadResult to return or an exception."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.download_outcome: aio.DownloadResult | BaseException | None = None
        self.progress_steps: list[tuple[int, int | None]] = []
        self.live_payload = b""
        self.handle: FakeHandle | None = None
        self.serve_error: BaseException | None = None

    async def serve_seed(self, path: Path, **kwargs: Any) -> FakeHandle:
        self.calls.append(("serve_seed", {"path": path, **kwargs}))
        if self.serve_error is not None:
            raise self.serve_error
        return self._self_closing_handle(bytes(range(32)), ("127.0.0.1", 45678))

    async def serve_live_source(self, source: Any, **kwargs: Any) -> FakeHandle:
        self.calls.append(("serve_live_source", {"source": source, **kwargs}))
        return self._self_closing_handle(b"\x0d" + bytes(64), ("::1", 45679))

    def _self_closing_handle(self, swarm_id: bytes, address: aio.Address) -> FakeHandle:
        # Closes by itself shortly, as a live source does at the end of its input.
        handle = FakeHandle(swarm_id, address)
        asyncio.get_running_loop().call_later(0.02, handle._event().set)
        self.handle = handle
        return handle

    async def download(
        self, swarm_id: bytes, peers: list[aio.Address], out: Path, **kwargs: Any
    ) -> aio.DownloadResult:
        self.calls.append(
            ("download", {"swarm_id": swarm_id, "peers": peers, "out": out, **kwargs})
        )
        progress = kwargs.get("progress")
        for done, total in self.progress_steps:
            if progress is not None:
                progress(done, total)
        outcome = self.download_outcome
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome is None:
            outcome = aio.DownloadResult(Path(out), 4 * 1024 * 1024, 0.5, 1)
        return outcome

    async def download_live(
        self, swarm_id: bytes, peers: list[aio.Address], out: BinaryIO, **kwargs: Any
    ) -> int:
        self.calls.append(("download_live", {"swarm_id": swarm_id, "peers": peers, **kwargs}))
        if isinstance(self.download_outcome, BaseException):
            raise self.download_outcome
        out.write(self.live_payload)
        return len(self.live_payload)

    def only_call(self, name: str) -> dict[str, Any]:
        matching = [kwargs for called, kwargs in self.calls if called == name]
        assert len(matching) == 1, self.calls
        return matching[0]


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    fake = FakeEngine()
    monkeypatch.setattr(aio, "serve_seed", fake.serve_seed)
    monkeypatch.setattr(aio, "download", fake.download)
    monkeypatch.setattr(aio, "serve_live_source", fake.serve_live_source)
    monkeypatch.setattr(aio, "download_live", fake.download_live)
    return fake


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def get_args(tmp_path: Path, *extra: str, swarm: str = SHA256_ID) -> list[str]:
    return ["get", swarm, "--peer", "127.0.0.1:7777", "-o", str(tmp_path / "out.bin"), *extra]


# -- top level ----------------------------------------------------------------------------


def test_help_lists_commands_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run_cli(capsys, "--help")
    assert code == 0
    for name in ("seed", "get", "live-source"):
        assert name in out
    assert "exit status" in out
    assert "no peer answered" in out and "integrity failure" in out and "timed out" in out


def test_get_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run_cli(capsys, "get", "--help")
    assert code == 0
    assert f"{cli.EXIT_NO_PEER}    get: no peer answered" in out
    assert f"{cli.EXIT_INTEGRITY}    get: integrity failure" in out
    assert f"{cli.EXIT_TIMEOUT}    get: timed out" in out
    assert "--timeout" in out and "--peer" in out and "--live" in out


def test_exit_codes_are_distinct_per_download_error() -> None:
    codes = [code for _cls, code in cli.DOWNLOAD_EXIT_CODES]
    assert len(set(codes)) == len(codes) == 3
    assert not set(codes) & {cli.EXIT_OK, cli.EXIT_FAILURE, cli.EXIT_USAGE}


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run_cli(capsys, "--version")
    assert code == 0
    assert out.startswith("p2pcdn ")
    assert cli.version() in out and cli.version() != "unknown"


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_cli(capsys)
    assert code == cli.EXIT_USAGE
    assert "usage: p2pcdn" in err


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_cli(
        capsys, "get", SHA256_ID, "--peer", "127.0.0.1:1", "-o", "x", "--bogus"
    )
    assert code == cli.EXIT_USAGE
    assert "--bogus" in err


@pytest.mark.parametrize(
    ("argv", "verbosity"),
    [
        (["seed", "f"], 0),
        (["-v", "seed", "f"], 1),
        (["seed", "f", "-v"], 1),
        (["-vv", "seed", "f"], 2),
        (["seed", "-vv", "f"], 2),
    ],
)
def test_verbose_before_or_after_the_command(argv: list[str], verbosity: int) -> None:
    assert cli.build_parser().parse_args(argv).verbose == verbosity


def test_registering_a_command_adds_a_subcommand(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "COMMANDS", dict(cli.COMMANDS))

    def arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config")

    @cli.command("example", help="an example daemon", arguments=arguments)
    def run_example(args: argparse.Namespace) -> int:
        return 42 if args.config == "t.toml" else 0

    assert cli.main(["example", "--config", "t.toml"]) == 42
    with pytest.raises(ValueError, match="twice"):
        cli.command("example", help="again", arguments=arguments)(run_example)


# -- HOST:PORT ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:7777", ("127.0.0.1", 7777)),
        ("[::1]:7777", ("::1", 7777)),
        ("[2001:db8::1]:1", ("2001:db8::1", 1)),
        ("[fe80::1%eth0]:9", ("fe80::1%eth0", 9)),
        ("localhost:65535", ("localhost", 65535)),
        ("peer-1.example.org:80", ("peer-1.example.org", 80)),
        (" 10.0.0.2:5 ", ("10.0.0.2", 5)),
    ],
)
def test_parse_address_accepts(text: str, address: aio.Address) -> None:
    assert cli.parse_address(text) == address


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("127.0.0.1", "HOST:PORT"),
        ("::1:7777", "brackets"),
        ("2001:db8::1:80", "brackets"),
        ("[::1]7777", "':PORT'"),
        ("[::1:7777", "']'"),
        ("[zz::1]:7777", "not an IPv6 address"),
        ("300.1.1.1:7777", "not an IPv4 address"),
        ("1.2.3:7777", "not an IPv4 address"),
        (":7777", "missing host"),
        ("host:", "not a number"),
        ("host:http", "not a number"),
        ("host:-1", "not a number"),
        ("host:65536", "out of range"),
        ("host:0", "out of range 1-65535"),
        ("bad_host!:80", "not a valid host name"),
    ],
)
def test_parse_address_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        cli.parse_address(text)


def test_port_zero_only_for_listening() -> None:
    assert cli.parse_address("127.0.0.1:0", allow_port_zero=True) == ("127.0.0.1", 0)
    with pytest.raises(ValueError):
        cli.parse_address("127.0.0.1:0")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_parse_address_fuzz_raises_only_value_error(text: str) -> None:
    try:
        host, port = cli.parse_address(text, allow_port_zero=True)
    except ValueError:
        return
    assert 0 <= port <= 65535 and host


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(str),
        st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?(\.[a-z][a-z0-9]{0,8}){0,3}", fullmatch=True),
    ),
    st.integers(min_value=1, max_value=65535),
)
def test_format_address_reads_back(host: str, port: int) -> None:
    assert cli.parse_address(cli.format_address((host, port))) == (host, port)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_swarm_id_parser_fuzz(text: str) -> None:
    try:
        value = cli.swarm_id_type(text)
    except argparse.ArgumentTypeError:
        return
    assert value.hex() == text.strip().lower()


# -- get: validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("swarm", "message"),
    [
        ("xyz", "invalid swarm ID 'xyz': not hexadecimal"),
        ("abc", "odd number of hex digits"),
        ("", "empty"),
        ("ab" * 20, "must be 64 hex digits for sha256, got 40 (a sha1 root hash? add --hash sha1)"),
        ("ab" * 31, "must be 64 hex digits for sha256, got 62"),
    ],
)
def test_get_rejects_bad_swarm_ids(
    engine: FakeEngine, capsys: pytest.CaptureFixture[str], tmp_path: Path, swarm: str, message: str
) -> None:
    code, out, err = run_cli(capsys, *get_args(tmp_path, swarm=swarm))
    assert code == cli.EXIT_USAGE
    assert message in err
    assert "usage: p2pcdn get" in err
    assert out == ""
    assert engine.calls == []


def test_get_swarm_id_length_follows_hash(
    engine: FakeEngine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _out, err = run_cli(capsys, *get_args(tmp_path, "--hash", "sha512", swarm=SHA256_ID))
    assert code == cli.EXIT_USAGE
    assert "128 hex digits for sha512, got 64" in err and "--hash sha256" in err
    code, _out, _err = run_cli(capsys, *get_args(tmp_path, "--hash", "sha512", swarm="EF" * 64))
    assert code == 0
    assert engine.only_call("download")["swarm_id"] == bytes.fromhex("ef" * 64)


@pytest.mark.parametrize(
    ("peer", "message"),
    [
        ("::1:7777", "put an IPv6 address in brackets"),
        ("127.0.0.1", "expected HOST:PORT"),
        ("127.0.0.1:0", "port 0 is out of range 1-65535"),
        ("127.0.0.1:99999", "port 99999 is out of range"),
    ],
)
def test_get_rejects_bad_peers(
    engine: FakeEngine, capsys: pytest.CaptureFixture[str], tmp_path: Path, peer: str, message: str
) -> None:
    code, _out, err = run_cli(capsys, "get", SHA256_ID, "--peer", peer, "-o", str(tmp_path / "o"))
    assert code == cli.EXIT_USAGE
    assert f"argument --peer: invalid address {peer!r}: {message}" in err
    assert engine.calls == []


def test_get_requires_peer_and_output(
    engine: FakeEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = run_cli(capsys, "get", SHA256_ID, "-o", "x")
    assert code == cli.EXIT_USAGE and "--peer" in err
    code, _out, err = run_cli(capsys, "get", SHA256_ID, "--peer", "127.0.0.1:1")
    assert code == cli.EXIT_USAGE and "-o" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--chunk-size", "0"], "invalid chunk size '0': must be 1-"),
        (["--chunk-size", "1k"], "invalid chunk size '1k': not an integer"),
        (["--chunk-size", "70000"], "must be 1-65478 bytes"),
        (["--timeout", "0"], "invalid timeout '0': must be a positive number of seconds"),
        (["--timeout", "-5"], "must be a positive number"),
        (["--timeout", "nan"], "must be a positive number"),
        (["--timeout", "soon"], "not a number"),
        (["--hash", "md5"], "invalid choice: 'md5'"),
        (["--integrity", "unified"], "--integrity applies to --live only"),
    ],
)
def test_get_rejects_bad_options(
    engine: FakeEngine,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    extra: list[str],
    message: str,
) -> None:
    code, _out, err = run_cli(capsys, *get_args(tmp_path, *extra))
    assert code == cli.EXIT_USAGE
    assert message in err
    assert engine.calls == []


def test_get_output_checks(
    engine: FakeEngine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    base = ["get", SHA256_ID, "--peer", "127.0.0.1:7777", "-o"]
    code, _out, err = run_cli(capsys, *base, "-")
    assert code == cli.EXIT_USAGE and "works with --live only" in err
    code, _out, err = run_cli(capsys, *base, str(tmp_path))
    assert code == cli.EXIT_USAGE and "is a directory" in err
    code, _out, err = run_cli(capsys, *base, str(tmp_path / "missing" / "f"))
    assert code == cli.EXIT_USAGE and "does not exist" in err
    assert engine.calls == []


def test_get_resolves_host_names_once(
    engine: FakeEngine,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fake_getaddrinfo(host: str, port: int, **_kw: Any) -> list[Any]:
        if host == "peer.example":
            return [(0, 0, 0, "", ("192.0.2.7", port))]
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    code, _out, _err = run_cli(
        capsys, "get", SHA256_ID, "--peer", "peer.example:7000", "--peer", "[::1]:7001",
        "-o", str(tmp_path / "o"),
    )  # fmt: skip
    assert code == 0
    assert engine.only_call("download")["peers"] == [("192.0.2.7", 7000), ("::1", 7001)]
    code, _out, err = run_cli(
        capsys, *get_args(tmp_path)[:2], "--peer", "nowhere.invalid:1", "-o", "o"
    )
    assert code == cli.EXIT_USAGE
    assert "cannot resolve host 'nowhere.invalid': Name or service not known" in err


def test_get_names_each_peer_once(
    engine: FakeEngine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _out, _err = run_cli(capsys, *get_args(tmp_path, "--peer", "127.0.0.1:7777"))
    assert code == 0
    assert engine.only_call("download")["peers"] == [("127.0.0.1", 7777)]


@settings(max_examples=150, deadline=None)
@given(
    swarm=st.text(max_size=70),
    peer=st.text(max_size=30),
    extra=st.lists(
        st.sampled_from(["--hash", "sha1", "--live", "-q", "--timeout", "x", "-o", "-"])
    ),
)
def test_get_command_line_fuzz_gives_an_exit_status(
    swarm: str, peer: str, extra: list[str]
) -> None:
    # Whatever the user types, the front answers with a status, never a traceback.
    fake = FakeEngine()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(aio, "download", fake.download)
        patch.setattr(aio, "download_live", fake.download_live)
        patch.setattr(socket, "getaddrinfo", _no_dns)
        patch.setattr(sys, "stdout", io.TextIOWrapper(io.BytesIO()))
        with contextlib.redirect_stderr(io.StringIO()):
            code = cli.main(["get", swarm, "--peer", peer, "-o", os.devnull, *extra])
    assert code in (cli.EXIT_OK, cli.EXIT_USAGE)


def _no_dns(host: str, *_args: Any, **_kwargs: Any) -> list[Any]:
    raise socket.gaierror(-2, "Name or service not known")


# -- get: running -------------------------------------------------------------------------


def test_get_passes_options_to_download(
    engine: FakeEngine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _out, _err = run_cli(
        capsys,
        *get_args(tmp_path, "--hash", "sha1", "--chunk-size", "4096", "--timeout", "7.5", swarm=SHA1_ID),
        "--peer", "[::1]:7778",
    )  # fmt: skip
    assert code == 0
    call = engine.only_call("download")
    assert call["swarm_id"] == bytes.fromhex(SHA1_ID)
    assert call["peers"] == [("127.0.0.1", 7777), ("::1", 7778)]
    assert call["out"] == tmp_path / "out.bin"
    assert call["hash_function"] is MerkleHashFunction.SHA1
    assert call["chunk_size"] == 4096
    assert call["timeout"] == 7.5


def test_get_defaults(
    engine: FakeEngine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert run_cli(capsys, *get_args(tmp_path))[0] == 0
    call = engine.only_call("download")
    assert call["hash_function"] is MerkleHashFunction.SHA256
    assert call["chunk_size"] == 1024
    assert call["timeout"] == 60.0


def test_get_success_prints_summary_without_bar_when_not_a_tty(
    engine: FakeEngine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    engine.download_outcome = aio.DownloadResult(tmp_path / "out.bin", 8 * 1024 * 1024, 2.0, 2)
    engine.progress_steps = [(1024, 8 * 1024 * 1024)]
    code, out, err = run_cli(capsys, *get_args(tmp_path))
    assert code == 0
    assert out == ""
    assert "\r" not in err
    assert err.count("\n") == 1
    assert parse_summary(err) == (8 * 1024 * 1024, 2.0)
    assert "4.00 MiB/s" in err and "verified (sha256 Merkle)" in err and "2 peers" in err
    # No terminal: the engine is not even asked to report progress.
    assert engine.only_call("download")["progress"] is None


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_get_draws_progress_bar_on_a_tty(
    engine: FakeEngine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    engine.progress_steps = [
        (0, None),
        (1024 * 1024, 4 * 1024 * 1024),
        (4 * 1024 * 1024, 4 * 1024 * 1024),
    ]
    assert cli.main(get_args(tmp_path)) == 0
    text = tty.getvalue()
    assert "\r" in text and "100%" in text
    final = text.split("\r")[-1]
    assert final.startswith("4194304 bytes (4.00 MiB) in 0.500 s, 8.00 MiB/s")
    assert final.endswith("\n") and final.count("\n") == 1


def test_get_quiet_prints_nothing(
    engine: FakeEngine,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(capsys, *get_args(tmp_path, "--quiet"))
    assert (code, out, err) == (0, "", "")
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    engine.progress_steps = [(1, 2)]
    assert cli.main(get_args(tmp_path, "-q")) == 0
    assert tty.getvalue() == ""
    assert engine.calls[-1][1]["progress"] is None


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (aio.NoPeerAnswered(""), cli.EXIT_NO_PEER, "error: no peer answered"),
        (
            aio.NoPeerAnswered("no peer answered within 9 s (127.0.0.1:7777)"),
            cli.EXIT_NO_PEER,
            "error: no peer answered within 9 s (127.0.0.1:7777)",
        ),
        (
            aio.IntegrityFailure("chunk 17 failed\nverification"),
            cli.EXIT_INTEGRITY,
            "error: integrity failure: chunk 17 failed verification",
        ),
        (
            aio.IntegrityFailure("Integrity failure: bad root"),
            cli.EXIT_INTEGRITY,
            "error: Integrity failure: bad root",
        ),
        (aio.DownloadTimeout(""), cli.EXIT_TIMEOUT, "error: timed out after 9 s"),
        (
            aio.DownloadTimeout("timed out after 9.0 s"),
            cli.EXIT_TIMEOUT,
            "error: timed out after 9 s",
        ),
        (
            aio.DownloadTimeout("412 of 1000 chunks"),
            cli.EXIT_TIMEOUT,
            "error: timed out after 9 s: 412 of 1000 chunks",
        ),
        (
            aio.DownloadError("all peers went away"),
            cli.EXIT_FAILURE,
            "error: download failed: all peers went away",
        ),
    ],
)
def test_get_failures_map_to_exit_codes(
    engine: FakeEngine,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    error: aio.DownloadError,
    code: int,
    line: str,
) -> None:
    engine.download_outcome = error
    result, out, err = run_cli(capsys, *get_args(tmp_path, "--timeout", "9"))
    assert result == code
    assert out == ""
    assert err == line + "\n"


def test_get_failure_erases_the_bar_first(
    engine: FakeEngine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    engine.progress_steps = [(512 * 1024, 4 * 1024 * 1024)]
    engine.download_outcome = aio.DownloadTimeout("timed out after 60 s")
    assert cli.main(get_args(tmp_path)) == cli.EXIT_TIMEOUT
    text = tty.getvalue()
    assert text.endswith("\rerror: timed out after 60 s\n")
    assert text.split("\r")[-2].strip() == ""


def test_unexpected_engine_error_is_one_line(
    engine: FakeEngine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    engine.download_outcome = NotImplementedError("engine not ready")
    code, _out, err = run_cli(capsys, *get_args(tmp_path))
    assert code == cli.EXIT_FAILURE
    assert err == "error: NotImplementedError: engine not ready (run with -v for the traceback)\n"


def test_os_error_is_a_failure(
    engine: FakeEngine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    engine.download_outcome = PermissionError(13, "Permission denied", str(tmp_path / "out.bin"))
    code, _out, err = run_cli(capsys, *get_args(tmp_path))
    assert code == cli.EXIT_FAILURE
    assert err.startswith("error: [Errno 13] Permission denied")


# -- get --live ---------------------------------------------------------------------------


def test_get_live_to_stdout(engine: FakeEngine, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    engine.live_payload = b"\x00\xffstream bytes"
    code = cli.main(["get", "--live", "0d" + "11" * 64, "--peer", "127.0.0.1:7777", "-o", "-"])
    out, err = capsysbinary.readouterr()
    assert code == 0
    assert out == b"\x00\xffstream bytes"
    assert b"live stream ended" in err
    call = engine.only_call("download_live")
    assert call["swarm_id"] == bytes.fromhex("0d" + "11" * 64)
    assert call["integrity_method"] is IntegrityMethod.UNIFIED_MERKLE


def test_get_live_to_file_with_options(
    engine: FakeEngine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    engine.live_payload = b"x" * 3000
    out_path = tmp_path / "live.ts"
    code, _out, err = run_cli(
        capsys, "get", "--live", "0d1234", "--peer", "127.0.0.1:1", "-o", str(out_path),
        "--integrity", "sign-all", "--chunk-size", "8192", "--timeout", "3",
    )  # fmt: skip
    assert code == 0
    assert out_path.read_bytes() == b"x" * 3000
    assert parse_summary(err) is not None and parse_summary(err).size == 3000  # type: ignore[union-attr]
    call = engine.only_call("download_live")
    assert call["integrity_method"] is IntegrityMethod.SIGN_ALL
    assert (call["chunk_size"], call["timeout"]) == (8192, 3.0)


def test_get_live_rejects_hash(engine: FakeEngine, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_cli(
        capsys, "get", "--live", "0d12", "--peer", "127.0.0.1:1", "-o", "-", "--hash", "sha1"
    )
    assert code == cli.EXIT_USAGE
    assert "--hash applies to static swarms" in err


def test_get_live_failure_exit_code(
    engine: FakeEngine, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    engine.download_outcome = aio.NoPeerAnswered("")
    code = cli.main(["get", "--live", "0d12", "--peer", "127.0.0.1:1", "-o", "-"])
    assert code == cli.EXIT_NO_PEER
    assert capsysbinary.readouterr().err == b"error: no peer answered\n"


# -- seed and live-source -----------------------------------------------------------------


def test_seed_prints_swarm_id_then_address(
    engine: FakeEngine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    content = tmp_path / "content.bin"
    content.write_bytes(b"hello")
    code, out, _err = run_cli(
        capsys,
        "seed",
        str(content),
        "--listen",
        "127.0.0.1:0",
        "--hash",
        "sha1",
        "--chunk-size",
        "2048",
    )
    assert code == 0
    assert out.splitlines() == [bytes(range(32)).hex(), "127.0.0.1:45678"]
    call = engine.only_call("serve_seed")
    assert call["path"] == content
    assert call["listen"] == ("127.0.0.1", 0)
    assert call["hash_function"] is MerkleHashFunction.SHA1
    assert call["chunk_size"] == 2048
    assert engine.handle is not None and engine.handle.close_calls == 1


def test_seed_default_listen_is_loopback_7777(
    engine: FakeEngine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    content = tmp_path / "c"
    content.write_bytes(b"x")
    assert run_cli(capsys, "seed", str(content))[0] == 0
    call = engine.only_call("serve_seed")
    assert call["listen"] == ("127.0.0.1", 7777)
    assert call["hash_function"] is MerkleHashFunction.SHA256


def test_seed_missing_file(
    engine: FakeEngine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run_cli(capsys, "seed", str(tmp_path / "nope"))
    assert code == cli.EXIT_USAGE
    assert "no such file" in err and out == ""
    code, _out, err = run_cli(capsys, "seed", str(tmp_path))
    assert code == cli.EXIT_USAGE and "not a regular file" in err
    assert engine.calls == []


def test_seed_address_in_use(
    engine: FakeEngine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    content = tmp_path / "c"
    content.write_bytes(b"x")
    engine.serve_error = OSError(98, "Address already in use")
    code, out, err = run_cli(capsys, "seed", str(content))
    assert code == cli.EXIT_FAILURE
    assert out == ""
    assert err == "error: [Errno 98] Address already in use\n"


def test_live_source_options_and_output(
    engine: FakeEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _err = run_cli(
        capsys, "live-source", "--listen", "[::1]:0", "--integrity", "sign-all",
        "--algorithm", "rsa-sha256", "--chunk-size", "512",
    )  # fmt: skip
    assert code == 0
    assert out.splitlines() == [(b"\x0d" + bytes(64)).hex(), "[::1]:45679"]
    call = engine.only_call("serve_live_source")
    assert call["listen"] == ("::1", 0)
    assert call["integrity_method"] is IntegrityMethod.SIGN_ALL
    assert call["algorithm"] is LiveSignatureAlgorithm.RSASHA256
    assert call["chunk_size"] == 512
    assert call["source"] is sys.stdin.buffer


def test_live_source_defaults(engine: FakeEngine, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "live-source")[0] == 0
    call = engine.only_call("serve_live_source")
    assert call["integrity_method"] is IntegrityMethod.UNIFIED_MERKLE
    assert call["algorithm"] is LiveSignatureAlgorithm.ECDSAP256SHA256
    assert call["listen"] == ("127.0.0.1", 7777)


# -- signals, in a child process (a stray signal must never hit the test runner) ----------

FAKE_SEED_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from ppsp.peer import aio
    import lab.cli as cli

    class Handle:
        swarm_id = bytes(range(32))
        address = ("127.0.0.1", 45678)
        def __init__(self):
            self.event = asyncio.Event()
        def close(self):
            print("closed", file=sys.stderr, flush=True)
            self.event.set()
        async def wait_closed(self):
            await self.event.wait()

    async def serve_seed(path, **kwargs):
        return Handle()

    async def download(swarm_id, peers, out, **kwargs):
        print("downloading", file=sys.stderr, flush=True)
        await asyncio.sleep(30)

    aio.serve_seed = serve_seed
    aio.download = download
    sys.exit(cli.main(sys.argv[1:]))
    """
)


def read_line(stream: Any, timeout: float) -> str:
    """One line from a child's pipe, or fail after ``timeout`` seconds."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"no output within {timeout} s")
    line: bytes = stream.readline()
    return line.decode().rstrip("\n")


@contextlib.contextmanager
def child(*argv: str, script: str | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m lab.cli ARGV`` (or ``python -c SCRIPT ARGV``) in the repository, killed on
    the way out whatever happens."""
    command = [sys.executable, "-c", script] if script else [sys.executable, "-m", "lab.cli"]
    proc = subprocess.Popen(
        [*command, *argv],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,  # unbuffered: read_line must not pull a second line out of select's sight
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_seed_stops_cleanly_on_signal(tmp_path: Path, signum: signal.Signals) -> None:
    content = tmp_path / "c"
    content.write_bytes(b"x")
    with child("seed", str(content), "--listen", "127.0.0.1:0", script=FAKE_SEED_CHILD) as proc:
        assert read_line(proc.stdout, 20) == bytes(range(32)).hex()
        assert read_line(proc.stdout, 5) == "127.0.0.1:45678"
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None
        assert "closed" in proc.stderr.read().decode()


def test_seed_survives_a_closed_stdout(tmp_path: Path) -> None:
    # `ID=$(p2pcdn seed f | head -1)`: the reader leaves after the swarm ID; keep serving.
    content = tmp_path / "c"
    content.write_bytes(b"x")
    with child("seed", str(content), script=FAKE_SEED_CHILD) as proc:
        assert proc.stdout is not None
        assert read_line(proc.stdout, 20) == bytes(range(32)).hex()
        proc.stdout.close()
        time.sleep(0.3)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, cli.EXIT_SIGINT), (signal.SIGTERM, cli.EXIT_SIGTERM)]
)
def test_get_interrupted_by_signal(tmp_path: Path, signum: signal.Signals, code: int) -> None:
    argv = get_args(tmp_path)
    with child(*argv, script=FAKE_SEED_CHILD) as proc:
        assert read_line(proc.stderr, 20) == "downloading"
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == code
        assert proc.stderr is not None
        assert proc.stderr.read().decode() == "error: interrupted\n"


# -- the real engine, end to end ----------------------------------------------------------

# The content of traces/libswift/libswift_static_200000B.pcap (shared/traces/README.md):
# SHA-256(counter as 8-byte big-endian) for counter = 0, 1, …, truncated to 200000 bytes.
LIBSWIFT_CONTENT_SIZE = 200_000
LIBSWIFT_ROOT_HASH_SHA1 = "026bf5bed2c08204b6f0765acd1429068a874ee6"
LIBSWIFT_CONTENT_SHA256 = "58392635ad291988798e2725e571c51407ccc080721af16e525908a92c7036e8"


def libswift_trace_content() -> bytes:
    blocks = (
        hashlib.sha256(i.to_bytes(8, "big")).digest()
        for i in range(LIBSWIFT_CONTENT_SIZE // 32 + 1)
    )
    return b"".join(blocks)[:LIBSWIFT_CONTENT_SIZE]


@pytest.mark.slow
def test_end_to_end_seed_and_get_processes(tmp_path: Path) -> None:
    """`p2pcdn seed` and `p2pcdn get` as separate processes on 127.0.0.1, with the content
    libswift served in the captured trace: the swarm ID must be libswift's root hash (same
    SHA-1 Merkle tree, 1 KiB chunks) and the download must be byte-exact."""
    content = libswift_trace_content()
    assert hashlib.sha256(content).hexdigest() == LIBSWIFT_CONTENT_SHA256
    source = tmp_path / "content.bin"
    source.write_bytes(content)
    out = tmp_path / "copy.bin"
    with child("seed", str(source), "--listen", "127.0.0.1:0", "--hash", "sha1") as seeder:
        assert seeder.stdout is not None and seeder.stderr is not None
        swarm_id = read_line(seeder.stdout, 30)
        address = read_line(seeder.stdout, 5)
        assert swarm_id == LIBSWIFT_ROOT_HASH_SHA1
        assert address.startswith("127.0.0.1:")
        getter = subprocess.run(
            [sys.executable, "-m", "lab.cli", "get", swarm_id, "--peer", address,
             "-o", str(out), "--hash", "sha1", "--timeout", "20"],
            cwd=REPO, capture_output=True, timeout=60,
        )  # fmt: skip
        assert getter.returncode == 0, getter.stderr.decode()
        assert hashlib.sha256(out.read_bytes()).hexdigest() == LIBSWIFT_CONTENT_SHA256
        summary = parse_summary(getter.stderr.decode())
        assert summary is not None and summary.size == LIBSWIFT_CONTENT_SIZE
        seeder.send_signal(signal.SIGINT)
        assert seeder.wait(timeout=10) == 0, seeder.stderr.read().decode()
