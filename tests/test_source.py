"""The content source server (portal/source.py, portal/source_cli.py, portal/portal_client.py):
the sans-IO Store pipeline and live segment assembly without sockets; then on 127.0.0.1 a
publish into a 4-node storage overlay (TLS links) with a standalone tracker and a portal test
double, a live channel, and the CLI's exit status when the portal refuses the token."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from lab import cli
from portal.portal_client import (
    Channel,
    PortalAuthError,
    PortalError,
    PortalTimeout,
    parse_answer,
    publish_channel,
    publish_url,
)
from portal.source import (
    META,
    LiveStream,
    PublishError,
    SegmentAssembler,
    Source,
    SourceOptions,
    StorePipeline,
    generated_stream,
    is_transient,
    open_storage_overlay,
    publish_vod,
    run_live,
    run_pipeline,
)
from ppsp.peer import aio as ppspp
from ppsp.peer.live import LiveSigner, UnifiedMerkleInjector
from ppsp.tracker.client import open_client
from ppsp.tracker.config import TrackerDaemonConfig
from ppsp.tracker.messages import Action, PeerMode, Role, SwarmAction, swarm_id_hex
from ppsp.tracker.server import TrackerServer, serve
from reload.aio import OverlayNode, ReloadRequestError, load_daemon_config
from reload.messages import ErrorCode
from reload.usages.client import ContentNotFoundError, ContentStore
from reload.usages.config import add_daemon, make_overlay_dir
from reload.usages.content import live_meta, live_segment, verify_segment

OVERLAY = "source.p2pcdn.test"
SOURCE_USER = f"source@{OVERLAY}"
TOKEN = "s3cret-token"

# ---------------------------------------------------------------------------------------------
# The Store pipeline, sans-IO
# ---------------------------------------------------------------------------------------------


def vod_pipeline(segments: int, **kwargs: Any) -> StorePipeline[int | str]:
    pipeline: StorePipeline[int | str] = StorePipeline(**kwargs)
    for i in range(segments):
        pipeline.add(i, 100)
    pipeline.add(META, 10, barrier=True)
    pipeline.close()
    return pipeline


def test_vod_order_segments_first_meta_last_within_the_concurrency_bound() -> None:
    pipeline = vod_pipeline(5, max_in_flight=2)
    assert pipeline.ready(0.0) == [0, 1]
    assert pipeline.ready(0.0) == []  # the bound: two in flight
    pipeline.succeeded(1)
    assert pipeline.ready(0.0) == [2]
    for key in (0, 2):
        pipeline.succeeded(key)
    assert pipeline.ready(0.0) == [3, 4]
    pipeline.succeeded(3)
    assert pipeline.ready(0.0) == []  # the meta waits for every segment
    pipeline.succeeded(4)
    assert pipeline.ready(0.0) == [META]
    assert not pipeline.done
    pipeline.succeeded(META)
    assert pipeline.done
    assert pipeline.stats.stored == 6 and pipeline.stats.bytes_stored == 510
    assert pipeline.stats.sent == 6 and pipeline.stats.retries == 0


def test_live_order_meta_first_then_segments() -> None:
    pipeline: StorePipeline[int | str] = StorePipeline(max_in_flight=4)
    pipeline.add(META, 10, barrier=True)
    pipeline.add(0, 100)
    pipeline.add(1, 100)
    assert pipeline.ready(0.0) == [META]  # nothing after a barrier before it is stored
    assert pipeline.ready(0.0) == []
    pipeline.succeeded(META)
    assert pipeline.ready(0.0) == [0, 1]
    pipeline.succeeded(0)
    pipeline.succeeded(1)
    assert not pipeline.done  # live: not closed, more segments may come
    pipeline.add(2, 100)
    assert pipeline.ready(0.0) == [2]
    pipeline.succeeded(2)
    pipeline.close()
    assert pipeline.done


def test_transient_failures_back_off_then_succeed() -> None:
    pipeline = vod_pipeline(1, backoff=1.0, rng=random.Random(1))
    assert pipeline.ready(0.0) == [0]
    pipeline.failed(0, 10.0, transient=True, reason="timeout")
    retry_at = pipeline.next_timer()
    assert retry_at is not None and 10.5 <= retry_at <= 11.0  # 1 s with jitter in [½, 1]
    assert pipeline.ready(10.1) == []
    assert pipeline.ready(retry_at) == [0]
    pipeline.failed(0, 20.0, transient=True, reason="timeout")
    second = pipeline.next_timer()
    assert second is not None and 21.0 <= second <= 22.0  # doubled
    assert pipeline.ready(second) == [0]
    pipeline.succeeded(0)
    assert pipeline.ready(second) == [META]
    pipeline.succeeded(META)
    assert pipeline.done and pipeline.stats.retries == 2 and pipeline.stats.sent == 4


def test_give_up_after_the_last_attempt_and_at_once_on_a_permanent_error() -> None:
    pipeline = vod_pipeline(2, max_attempts=2, backoff=0.0)
    assert pipeline.ready(0.0) == [0, 1]
    pipeline.failed(0, 0.0, transient=True, reason="timeout")
    assert pipeline.error is None
    assert pipeline.ready(0.0) == [0]
    pipeline.failed(0, 0.0, transient=True, reason="timeout again")
    assert pipeline.error is not None and "2 attempts" in pipeline.error
    assert pipeline.ready(0.0) == [] and not pipeline.done

    pipeline = vod_pipeline(2)
    pipeline.ready(0.0)
    pipeline.failed(1, 0.0, transient=False, reason="Error_Forbidden")
    assert pipeline.error is not None and "permanent" in pipeline.error
    assert "Error_Forbidden" in pipeline.error


def test_live_queue_is_bounded_oldest_segments_dropped_never_the_meta() -> None:
    dropped: list[int | str] = []
    pipeline: StorePipeline[int | str] = StorePipeline(
        max_in_flight=1, max_queued=3, on_drop=dropped.append
    )
    pipeline.add(META, 10, barrier=True)
    assert pipeline.ready(0.0) == [META]
    for i in range(6):
        pipeline.add(i, 100)
    assert dropped == [0, 1, 2]
    assert pipeline.pending == 4  # the meta in flight and three segments
    pipeline.succeeded(META)
    assert pipeline.ready(0.0) == [3]
    assert pipeline.stats.dropped == 3


def test_pipeline_refuses_misuse() -> None:
    pipeline = vod_pipeline(1)
    with pytest.raises(RuntimeError):
        pipeline.add(7, 1)  # closed
    with pytest.raises(KeyError):
        pipeline.succeeded(0)  # not in flight
    open_pipeline: StorePipeline[int] = StorePipeline()
    open_pipeline.add(1, 1)
    with pytest.raises(ValueError):
        open_pipeline.add(1, 1)
    with pytest.raises(ValueError):
        StorePipeline(max_in_flight=0)


@settings(max_examples=150, deadline=None)
@given(
    segments=st.integers(0, 30),
    limit=st.integers(1, 5),
    outcomes=st.lists(st.sampled_from(["ok", "transient", "permanent"]), max_size=200),
)
def test_any_outcome_sequence_keeps_the_invariants(
    segments: int, limit: int, outcomes: list[str]
) -> None:
    """Whatever the overlay answers: never more than ``limit`` in flight, the meta only after
    every segment, and the pipeline either finishes, fails, or still has work — in bounded
    steps."""
    pipeline = vod_pipeline(segments, max_in_flight=limit, max_attempts=3, backoff=0.0)
    stored: set[int | str] = set()
    flying: list[int | str] = []
    answers = iter(outcomes)
    for _step in range(10 * (segments + 2) * 3):  # bounded
        flying += pipeline.ready(0.0)
        assert len(flying) == pipeline.in_flight <= limit
        if not flying:
            break
        key = flying.pop(0)
        if key == META:
            assert stored == set(range(segments))
        outcome = next(answers, "ok")
        if outcome == "ok":
            pipeline.succeeded(key)
            stored.add(key)
        else:
            pipeline.failed(key, 0.0, transient=outcome == "transient", reason=outcome)
        if pipeline.error is not None:
            assert pipeline.ready(0.0) == []
            return
    assert pipeline.done and stored == {*range(segments), META}


def test_transient_and_permanent_errors() -> None:
    assert is_transient(ReloadRequestError(ErrorCode.REQUEST_TIMEOUT))
    assert is_transient(ConnectionResetError())
    assert is_transient(TimeoutError())
    assert not is_transient(ReloadRequestError(ErrorCode.FORBIDDEN))
    assert not is_transient(ReloadRequestError(ErrorCode.DATA_TOO_LARGE))
    assert not is_transient(ValueError("bug"))


def test_run_pipeline_retries_a_flaky_store_and_stops_on_a_refused_one() -> None:
    async def scenario() -> None:
        calls: list[int | str] = []
        failures = {2: 2}  # segment 2 times out twice

        async def flaky(key: int | str) -> None:
            calls.append(key)
            await asyncio.sleep(0.001)
            if isinstance(key, int) and failures.get(key, 0) > 0:
                failures[key] -= 1
                raise ReloadRequestError(ErrorCode.REQUEST_TIMEOUT)

        pipeline = vod_pipeline(4, max_in_flight=3, backoff=0.01)
        await asyncio.wait_for(run_pipeline(pipeline, flaky), 5)
        assert pipeline.done and calls.count(2) == 3 and calls[-1] == META
        assert pipeline.stats.retries == 2

        async def refused(key: int | str) -> None:
            raise ReloadRequestError(ErrorCode.FORBIDDEN, b"not your namespace")

        with pytest.raises(PublishError, match="not your namespace"):
            await asyncio.wait_for(run_pipeline(vod_pipeline(3), refused), 5)

    asyncio.run(scenario())


# ---------------------------------------------------------------------------------------------
# Live segment assembly, sans-IO
# ---------------------------------------------------------------------------------------------


def test_segments_of_whole_munros_verify_including_the_short_last_one() -> None:
    signer = LiveSigner.generate()
    injector = UnifiedMerkleInjector(signer, chunks_per_signature=4, chunk_size=64)
    assembler = SegmentAssembler(segment_chunks=8, munro_chunks=4)
    meta = live_meta(
        signer.swarm_id, "live", SOURCE_USER, chunk_size=64, segment_chunks=8, munro_chunks=4
    )
    chunks = [bytes([i]) * 64 for i in range(21)]  # 2 full segments, then 5 chunks
    parts = []
    for i, chunk in enumerate(chunks):
        assembler.add_chunk(i, chunk)
        for munro in injector.add_chunk(i, chunk, 1000.0 + i):
            parts += assembler.add_munro(munro)
    assert [p.index for p in parts] == [0, 1]
    for munro in injector.flush(2000.0):
        parts += assembler.add_munro(munro)
    parts += assembler.end(len(chunks))
    assert [p.index for p in parts] == [0, 1, 2]
    assert [len(p.chunks) for p in parts] == [8, 8, 5]
    got = []
    for part in parts:
        segment = live_segment(meta, part.index, part.chunks, part.munros)
        got += verify_segment(meta, segment)
    assert got == chunks
    assert assembler.end(len(chunks)) == []  # nothing twice


def test_assembler_waits_for_every_munro_and_refuses_bad_geometry() -> None:
    signer = LiveSigner.generate()
    injector = UnifiedMerkleInjector(signer, chunks_per_signature=2, chunk_size=8)
    assembler = SegmentAssembler(segment_chunks=4, munro_chunks=2)
    munros = []
    for i in range(4):
        assembler.add_chunk(i, bytes(8))
        munros += injector.add_chunk(i, bytes(8), 1.0)
    assert assembler.add_munro(munros[1]) == []  # the first munro is missing
    assert [p.index for p in assembler.add_munro(munros[0])] == [0]
    with pytest.raises(ValueError):
        SegmentAssembler(segment_chunks=6, munro_chunks=4)


def test_live_stream_keeps_only_a_window_and_the_segment_in_progress() -> None:
    async def scenario() -> None:
        stream = await LiveStream.start(
            ("127.0.0.1", 0), chunk_size=32, segment_chunks=16, munro_chunks=4, window=64
        )
        try:
            emitted = []
            for i in range(1000):
                emitted += stream.add_chunk(i.to_bytes(4, "big") * 8, 1000.0 + i / 100)
                assert len(stream.content.store.chunks) <= 64  # the discard window (§6.2)
                assert stream.segmenter.held < 16  # only the segment in progress
            assert [p.index for p in emitted] == list(range(1000 // 16))
            assert stream.swarm_id == stream.handle.swarm_id
        finally:
            stream.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


# ---------------------------------------------------------------------------------------------
# The portal client against a test double
# ---------------------------------------------------------------------------------------------


@dataclass
class PortalDouble:
    """A tiny portal: checks the bearer token, records each channel POSTed."""

    token: str = TOKEN
    status: int | None = None  # force an answer
    delay: float = 0.0
    body: bytes | None = None
    channels: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.delay:
            await asyncio.sleep(self.delay)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "unauthorized"}, status=401)
        if self.status is not None:
            return web.Response(status=self.status, text="portal is down")
        channel = await request.json()
        self.channels.append(channel)
        if self.body is not None:
            return web.Response(body=self.body, content_type="application/json")
        return web.json_response({"ok": True, "name": channel["name"]}, status=201)


@asynccontextmanager
async def portal_double(double: PortalDouble) -> AsyncIterator[PortalDouble]:
    app = web.Application()
    app.router.add_post("/api/v1/channels", double.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    double.url = f"http://{host}:{port}/"
    try:
        yield double
    finally:
        await runner.cleanup()


CHANNEL = Channel("movie", False, "ab" * 32, ["ppsp-udp://127.0.0.1:1"], 1024, "merkle", "sha256")


def test_portal_client_posts_with_the_token_and_reports_each_failure_clearly() -> None:
    async def scenario() -> None:
        async with portal_double(PortalDouble()) as double:
            answer = await publish_channel(double.url, TOKEN, CHANNEL)
            assert answer == {"ok": True, "name": "movie"}
            assert double.channels == [CHANNEL.to_json()]
            with pytest.raises(PortalAuthError) as auth:
                await publish_channel(double.url, "wrong", CHANNEL)
            assert auth.value.status == 401 and "token" in str(auth.value)
            double.status = 503
            with pytest.raises(PortalError) as down:
                await publish_channel(double.url, TOKEN, CHANNEL)
            assert down.value.status == 503 and "portal is down" in str(down.value)
            double.status, double.body = None, b"<html>"
            with pytest.raises(PortalError, match="not JSON"):
                await publish_channel(double.url, TOKEN, CHANNEL)
            double.body, double.delay = None, 0.6
            with pytest.raises(PortalTimeout):
                await publish_channel(double.url, TOKEN, CHANNEL, timeout=0.1)
        with pytest.raises(PortalError, match="unreachable"):
            await publish_channel(double.url, TOKEN, CHANNEL, timeout=2.0)

    asyncio.run(asyncio.wait_for(scenario(), 20))


@settings(max_examples=300, deadline=None)
@given(status=st.integers(100, 599), body=st.binary(max_size=300))
def test_fuzz_portal_answers_give_a_dict_or_a_typed_error(status: int, body: bytes) -> None:
    try:
        answer = parse_answer("http://p/api/v1/channels", status, body)
    except PortalAuthError as exc:
        assert status in (401, 403) and exc.status == status
    except PortalError as exc:
        assert exc.status == status
        assert all(c.isprintable() for c in str(exc))  # nothing hostile reaches the terminal
    else:
        assert 200 <= status < 300 and isinstance(answer, dict)


def test_portal_answer_edge_cases() -> None:
    assert parse_answer("u", 204, b"") == {}
    assert parse_answer("u", 200, b'{"a": 1}') == {"a": 1}
    with pytest.raises(PortalError, match="not an object"):
        parse_answer("u", 200, b"[1]")
    with pytest.raises(PortalError, match="not JSON"):
        parse_answer("u", 200, b"[" * 100_000)  # nesting deeper than the parser's recursion
    with pytest.raises(PortalError, match="HTTP 500: boom"):
        parse_answer("u", 500, b"boom\x1b[2J")


def test_publish_url() -> None:
    assert publish_url("http://p:8080") == "http://p:8080/api/v1/channels"
    assert publish_url("https://p/cdn/") == "https://p/cdn/api/v1/channels"
    with pytest.raises(ValueError):
        publish_url("ftp://p/")


# ---------------------------------------------------------------------------------------------
# On 127.0.0.1: a storage overlay, a tracker and the portal double
# ---------------------------------------------------------------------------------------------


async def start_overlay(paths: Sequence[Path]) -> list[OverlayNode]:
    nodes: list[OverlayNode] = []
    try:
        for path in paths:  # node 0 creates the overlay, the others join through it
            node = OverlayNode.from_config(load_daemon_config(path))
            await node.start(join_timeout=15.0)
            nodes.append(node)
    except BaseException:
        for node in nodes:
            await node.abort()
        raise
    return nodes


@asynccontextmanager
async def lab(tmp_path: Path, nodes: int = 4) -> AsyncIterator[tuple[list[OverlayNode], Path]]:
    """A storage overlay of ``nodes`` peers (TLS links) and the source's daemon TOML."""
    paths = make_overlay_dir(tmp_path, OVERLAY, nodes, "storage", link="tls")
    # The source is a RELOAD client (RFC 6940 §3.2.1): it stores through its attached peer
    # and is responsible for nothing, so stopping it loses nothing.
    source_toml = add_daemon(tmp_path, "source", SOURCE_USER, link="tls", client=True)
    host, port = load_daemon_config(paths[0]).listen
    source_toml.write_text(source_toml.read_text() + f'bootstrap = ["{host}:{port}"]\n')
    overlay = await start_overlay(paths)
    try:
        yield overlay, source_toml
    finally:
        for node in overlay:
            await node.abort()


@asynccontextmanager
async def tracker() -> AsyncIterator[TrackerServer]:
    server = await serve(TrackerDaemonConfig(udp=("127.0.0.1", 0)))
    try:
        yield server
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)


def run(coro: Callable[[], Awaitable[None]], timeout: float = 60) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro(), timeout)

    asyncio.run(bounded())


def test_publish_a_file_into_the_storage_overlay_tracker_and_portal(tmp_path: Path) -> None:
    content = random.Random(6).randbytes(2 * 1024 * 1024 + 777)  # 33 segments, the last short
    path = tmp_path / "movie.bin"
    path.write_bytes(content)

    async def scenario() -> None:
        async with (
            lab(tmp_path) as (overlay, source_toml),
            tracker() as tracker_server,
            portal_double(PortalDouble()) as portal,
        ):
            tracker_url = tracker_server.urls[0]
            options = SourceOptions(
                name="movie",
                title="A movie",
                overlay=source_toml,
                trackers=[tracker_url],
                portal=portal.url,
                portal_token=TOKEN,
            )
            source = await publish_vod(path, options)
            try:
                report = source.report
                assert report.bytes == len(content) and report.segments == 33
                assert report.stats.stored == 34  # every segment and the meta
                assert report.user == SOURCE_USER and report.seconds > 0
                assert report.trackers == [tracker_url] and report.portal == portal.url

                # Another node of the overlay fetches the meta and every segment, verified.
                reader = ContentStore(overlay[3], f"node3@{OVERLAY}")
                meta = await reader.get_meta(SOURCE_USER, "movie", swarm=report.swarm_id)
                assert meta.length == len(content) and meta.title == "A movie"
                assert meta.trackers == (tracker_url,)
                assert meta.segments == 33
                chunks = []
                for index in range(33):
                    chunks += await reader.get_segment(meta, index)
                assert b"".join(chunks) == content

                # The tracker lists the source as a seeder with its PPSPP address.
                swarm = swarm_id_hex(report.swarm_id)
                async with open_client(tracker_url, "viewer-1") as viewer:
                    # RFC 7846 §4.1: a peer CONNECTs (here: joins as leecher) before FIND.
                    await viewer.connect([SwarmAction(swarm, Action.JOIN, PeerMode.LEECH)])
                    found = await viewer.find(swarm)
                peers = found.swarm_results[0].peers or []
                assert [p.role for p in peers] == [Role.SOURCE]
                assert report.address is not None
                assert (peers[0].addresses[0].ip, peers[0].addresses[0].port) == report.address

                # The portal got the channel with the DESIGN §1 fields and the token.
                assert len(portal.channels) == 1
                channel = portal.channels[0]
                assert channel["name"] == "movie" and channel["live"] is False
                assert channel["swarm_id"] == report.swarm_id.hex()
                assert channel["trackers"] == [tracker_url]
                assert channel["chunk_size"] == 1024 and channel["integrity"] == "merkle"
                assert channel["source_user"] == SOURCE_USER

                # PPSPP from the source gives the same bytes.
                out = tmp_path / "download.bin"
                await ppspp.download(report.swarm_id, [report.address], out, timeout=20)
                assert out.read_bytes() == content
            finally:
                await source.close()

    run(scenario, 90)


def test_a_running_source_stores_its_content_again_before_it_expires(tmp_path: Path) -> None:
    """RFC 6940 §7.4.1: a value lives for its lifetime only. With a 2 s lifetime, content whose
    source keeps running is still there after 3.5 s; content published without refresh is
    gone (so the test shows the refresh is what keeps it)."""
    path = tmp_path / "short.bin"
    content = os.urandom(100_000)  # two segments
    path.write_bytes(content)

    async def scenario() -> None:
        async with lab(tmp_path, nodes=3) as (overlay, source_toml):
            node, user = await open_storage_overlay(source_toml)
            try:
                kept = await publish_vod(
                    path, SourceOptions(name="kept", lifetime=2), node=node, user=user
                )
                gone = await publish_vod(
                    path,
                    SourceOptions(name="gone", lifetime=2),
                    node=node,
                    user=user,
                    refresh=False,
                )
                await asyncio.sleep(3.5)
                assert kept.refreshes >= 2
                reader = ContentStore(overlay[1], f"node1@{OVERLAY}")
                meta = await reader.get_meta(SOURCE_USER, "kept")
                got = [c for i in range(2) for c in await reader.get_segment(meta, i)]
                assert b"".join(got) == content
                with pytest.raises(ContentNotFoundError):
                    await reader.get_meta(SOURCE_USER, "gone")
                await kept.close()
                await gone.close()
            finally:
                await node.close()

    run(scenario, 60)


def test_a_live_channel_stores_segments_that_verify_with_the_live_signatures(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with lab(tmp_path) as (overlay, source_toml), tracker() as tracker_server:
            options = SourceOptions(
                name="news",
                overlay=source_toml,
                trackers=[tracker_server.urls[0]],
                bitrate=512,
                segment_chunks=32,
            )
            viewer_out = io.BytesIO()
            viewing: list[asyncio.Task[int]] = []

            def started(source: Source) -> None:
                # A PPSPP viewer follows the stream from the source while it runs.
                assert source.report.address is not None
                viewing.append(
                    asyncio.ensure_future(
                        ppspp.download_live(
                            source.report.swarm_id,
                            [source.report.address],
                            viewer_out,
                            timeout=10,
                        )
                    )
                )

            report = await run_live(options, duration=3.0, on_started=started)
            watched = await asyncio.wait_for(viewing[0], 15)
            # The viewer tuned in at some chunk k and then got every chunk to the end.
            got = viewer_out.getvalue()
            assert watched == len(got) >= 64 * 1024
            first = int.from_bytes(got[:8], "big")
            generate = generated_stream(1024)
            expected = b"".join(generate() for _ in range(report.bytes // 1024))
            assert got == expected[first * 1024 :]
            # 3 s at 512 kbit/s: ≈ 187 chunks of 1 KiB, in segments of 32 chunks.
            assert 150 * 1024 <= report.bytes <= 200 * 1024
            assert report.segments >= 5
            assert report.stats.stored == report.segments + 1  # and the meta
            assert report.stats.dropped == 0
            reader = ContentStore(overlay[1], f"node1@{OVERLAY}")
            meta = await reader.get_meta(SOURCE_USER, "news", swarm=report.swarm_id)
            assert meta.live and meta.bitrate == 512 and meta.live_signing == "unified-merkle"
            total = 0
            for index in range(report.segments):
                chunks = await reader.get_segment(meta, index)  # LiveVerifier inside
                assert int.from_bytes(chunks[0][:8], "big") == index * 32  # generated: in order
                total += sum(len(c) for c in chunks)
            assert total == report.bytes

    run(scenario, 60)


def test_cli_exits_non_zero_with_a_clear_error_when_the_portal_refuses_the_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "clip.bin"
    path.write_bytes(os.urandom(5000))

    async def scenario() -> None:
        async with tracker() as tracker_server, portal_double(PortalDouble()) as portal:
            argv = [
                "source",
                "publish",
                str(path),
                "--name",
                "clip",
                "--tracker",
                tracker_server.urls[0],
                "--portal",
                portal.url,
                "--portal-token",
                "wrong-token",
                "--exit-after-publish",
            ]
            code = await asyncio.to_thread(cli.main, argv)
            assert code == cli.EXIT_FAILURE
            assert portal.channels == []
            argv[argv.index("wrong-token")] = TOKEN
            assert await asyncio.to_thread(cli.main, argv) == cli.EXIT_OK
            assert [c["name"] for c in portal.channels] == ["clip"]

    run(scenario, 30)
    captured = capsys.readouterr()
    assert "error: portal:" in captured.err and "refused the token (HTTP 401)" in captured.err
    lines = captured.out.splitlines()
    assert len(lines[0]) == 64 and lines[1].startswith("127.0.0.1:")  # swarm ID, address


def test_cli_usage_errors() -> None:
    assert cli.main(["source", "publish", "/nonexistent/file", "--name", "x"]) == cli.EXIT_USAGE
    assert cli.main(["source", "live", "--name", "x"]) == cli.EXIT_USAGE  # no input, no bitrate
    assert cli.main(["source", "live", "--name", "a/b", "--bitrate", "5"]) == cli.EXIT_USAGE
    assert (
        cli.main(["source", "live", "--name", "x", "--bitrate", "5", "--portal", "http://p/"])
        == cli.EXIT_USAGE
    )  # --portal without a token


def test_cli_live_generated_stream_without_overlay(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["source", "live", "--name", "gen", "--bitrate", "512", "--duration", "0.5"]
    assert cli.main(argv) == cli.EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == lines[2].split()[-1]  # the swarm ID first, and in the summary
    assert lines[1].startswith("127.0.0.1:")
    assert any(line.startswith("content") and "in 1 segment" in line for line in lines)


def test_live_input_is_read_to_its_end_and_a_silent_input_does_not_hold_up_a_stop() -> None:
    async def scenario() -> None:
        options = SourceOptions(name="pipe", segment_chunks=4, munro_chunks=2)
        reader = asyncio.StreamReader()
        reader.feed_data(b"x" * (10 * 1024 + 5))
        reader.feed_eof()
        report = await run_live(options, input_stream=reader)
        assert report.bytes == 10 * 1024 + 5 and report.segments == 3  # 11 chunks: 4 + 4 + 3

        silent = asyncio.StreamReader()  # a producer that never writes
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.2, stop.set)
        started = time.monotonic()
        report = await run_live(options, input_stream=silent, stop=stop)
        assert report.bytes == 0 and time.monotonic() - started < 3

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_cli_live_reads_stdin(tmp_path: Path) -> None:
    data = os.urandom(3000)
    done = subprocess.run(
        [sys.executable, "-m", "lab.cli", "source", "live", "--name", "in", "--input", "-"],
        input=data,
        capture_output=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr.decode()
    out = done.stdout.decode()
    assert "content   3000 bytes in 1 segment" in out


def test_cli_publish_serves_until_sigint_then_exits_zero(tmp_path: Path) -> None:
    path = tmp_path / "clip.bin"
    content = os.urandom(50_000)
    path.write_bytes(content)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab.cli", "source", "publish", str(path), "--name", "clip"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert proc.stdout is not None
        swarm_id = bytes.fromhex(proc.stdout.readline().decode().strip())
        host, port = proc.stdout.readline().decode().strip().rsplit(":", 1)
        out = tmp_path / "got.bin"  # it serves: a PPSPP download gets the file
        asyncio.run(ppspp.download(swarm_id, [(host, int(port))], out, timeout=10))
        assert out.read_bytes() == content
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


def test_channel_json_is_plain_json() -> None:
    assert json.loads(json.dumps(CHANNEL.to_json()))["swarm_id"] == "ab" * 32


def test_cli_live_exits_promptly_on_sigterm_with_a_viewer_that_stopped_acknowledging(
    tmp_path: Path,
) -> None:
    """At the end of its input a live source waits (up to LIVE_DRAIN) for viewers to get the
    last chunk; stopped by a signal it must not: a viewer that vanished would hold it up."""
    from tests.test_cli import child, read_line

    argv = ["source", "live", "--name", "sig", "--bitrate", "512", "--listen", "127.0.0.1:0"]
    with child(*argv) as source:
        assert source.stdout is not None
        swarm = read_line(source.stdout, 30)
        address = read_line(source.stdout, 10)
        with child("get", "--live", swarm, "--peer", address, "-o", str(tmp_path / "v")) as viewer:
            time.sleep(1.5)  # the viewer is receiving the stream
            viewer.kill()  # and vanishes without a word: it acknowledges nothing more
        time.sleep(0.5)
        source.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert source.wait(timeout=20) == 0
        assert time.monotonic() - started < 4.0  # not LIVE_DRAIN (5 s) plus the rest
