"""The content portal (portal.state, portal.server, ``p2pcdn portal``): validation of every
body (hypothesis-fuzzed: hostile input ends in 400/413, never in a 500), the registry with an
injected clock (viewer expiry, limits), the HTTP API on 127.0.0.1 against the "Portal HTTP API"
contract, the state file across a restart, and the command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lab.cli as cli
from portal.server import PortalServer, PortalStateFileError, render_page, write_atomic
from portal.state import (
    CHANNEL_FIELDS,
    MAX_BODY,
    VIEWER_TTL,
    ChannelSpec,
    LimitExceeded,
    NotFound,
    PortalState,
    ValidationError,
    check_name,
    decode_json,
    parse_channel,
    parse_heartbeat,
)

REPO = Path(__file__).resolve().parent.parent
TOKEN = "s3cret-token"
T = TypeVar("T")


def body(**changes: Any) -> dict[str, Any]:
    """A complete publish body of the contract, with ``changes`` applied (None deletes)."""
    out: dict[str, Any] = {
        "name": "news-1",
        "title": "News, all day",
        "live": True,
        "swarm_id": "AB" * 32,
        "trackers": ["ppsp-udp://127.0.0.1:7846", "http://127.0.0.1:7846/"],
        "chunk_size": 1024,
        "integrity": "unified-merkle-ecdsa-p256",
        "hash": "sha256",
        "bitrate": 512,
        "length": None,
        "source_user": "source1",
        "storage_overlay": "storage.p2pcdn",
        "segment_chunks": 64,
        "cipm": 2,
    }
    for key, value in changes.items():
        if value is None and key not in ("bitrate", "length", "storage_overlay", "cipm"):
            out.pop(key, None)
        else:
            out[key] = value
    return out


# -- validation ---------------------------------------------------------------------------


def test_parse_channel_accepts_the_contract_body() -> None:
    spec = parse_channel(body())
    assert spec.name == "news-1" and spec.live is True
    assert spec.swarm_id == "ab" * 32  # normalised to lower case
    assert spec.trackers == ("ppsp-udp://127.0.0.1:7846", "http://127.0.0.1:7846/")
    assert (spec.chunk_size, spec.bitrate, spec.cipm, spec.segment_chunks) == (1024, 512, 2, 64)
    assert spec.to_json()["trackers"] == list(spec.trackers)
    assert set(spec.to_json()) == CHANNEL_FIELDS


def test_parse_channel_minimal_body_gets_defaults() -> None:
    spec = parse_channel(
        {"name": "vod", "live": False, "swarm_id": "00ff", "chunk_size": 1024, "integrity": "m"}
    )
    assert spec.title == "vod"  # an absent title shows the name
    assert (spec.trackers, spec.bitrate, spec.length, spec.segment_chunks) == ((), None, None, 64)
    assert parse_channel(body(title="")).title == "news-1"


def test_parse_channel_accepts_the_source_clients_sources() -> None:
    spec = parse_channel(body(sources=["127.0.0.1:7000", "[::1]:7001", "src.example:1"]))
    assert spec.sources == ("127.0.0.1:7000", "[::1]:7001", "src.example:1")
    with pytest.raises(ValidationError):
        parse_channel(body(sources=["127.0.0.1"]))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": None}, "missing member 'name'"),
        ({"live": None}, "missing member 'live'"),
        ({"colour": "red"}, "unknown member"),
        ({"live": 1}, "'live' must be true or false"),
        ({"live": "true"}, "'live' must be true or false"),
        ({"chunk_size": True}, "'chunk_size' must be an integer"),
        ({"chunk_size": 1024.0}, "'chunk_size' must be an integer"),
        ({"chunk_size": "1024"}, "'chunk_size' must be an integer"),
        ({"chunk_size": 0}, "'chunk_size' must be in"),
        ({"chunk_size": 10**30}, "'chunk_size' must be in"),
        ({"bitrate": -1}, "'bitrate' must be in"),
        ({"cipm": 256}, "'cipm' must be in"),
        ({"segment_chunks": 48}, "power of two"),
        ({"swarm_id": "abc"}, "'swarm_id'"),
        ({"swarm_id": "zz"}, "'swarm_id'"),
        ({"swarm_id": ""}, "'swarm_id'"),
        ({"swarm_id": 12}, "'swarm_id'"),
        ({"trackers": "ppsp-udp://h:1"}, "'trackers' must be a list"),
        ({"trackers": ["not a url"]}, "tracker must be a URL"),
        ({"trackers": ["http://a b"]}, "tracker must be a URL"),
        ({"trackers": ["ppsp-udp://h:1"] * 17}, "at most 16 trackers"),
        ({"title": "a\nb"}, "control character"),
        ({"title": "\ud800"}, "control character"),
        ({"title": "x" * 201}, "'title' must be"),
        ({"title": 5}, "'title' must be a string"),
        ({"integrity": "Merkle SHA"}, "'integrity'"),
        ({"hash": "SHA/256"}, "'hash'"),
        ({"storage_overlay": 7}, "'storage_overlay' must be a string"),
    ],
)
def test_parse_channel_refuses(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(")):
        parse_channel(body(**changes))


@pytest.mark.parametrize(
    "name",
    ["", "..", "../etc", "a/b", "a\\b", ".hidden", "-x", "a..b", "a b", "é", "x" * 65, "a%2Fb"],
)
def test_channel_names_with_path_characters_are_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="'name'"):
        parse_channel(body(name=name))
    with pytest.raises(ValidationError):
        check_name(name)


@pytest.mark.parametrize("name", ["a", "news-1", "Ch_2.hd", "x" * 64, "9"])
def test_channel_names_accepted(name: str) -> None:
    assert parse_channel(body(name=name)).name == name


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b"{", "not JSON"),
        (b"", "not JSON"),
        (b'{"a": NaN}', "NaN is not a JSON number"),
        (b"[" * 50_000 + b"]" * 50_000, "nested too deeply|body larger"),
        (b"[" * 20_000, "nested too deeply|not JSON"),
        (b" " * (MAX_BODY + 1), "body larger"),
    ],
)
def test_decode_json_refuses(raw: bytes, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        decode_json(raw)


def test_parse_heartbeat() -> None:
    assert parse_heartbeat({"viewer": "csc-1", "watching": True}) == ("csc-1", True)
    bad: object
    for bad in (
        [],
        {"viewer": "v"},
        {"viewer": "", "watching": True},
        {"viewer": 1, "watching": True},
        {"viewer": "v", "watching": 1},
        {"viewer": "v", "watching": True, "x": 1},
        {"viewer": "v" * 129, "watching": True},
    ):
        with pytest.raises(ValidationError):
            parse_heartbeat(bad)


# Any JSON value, and values of the right shape with one member replaced by anything.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(member=st.sampled_from([*sorted(CHANNEL_FIELDS), "extra"]), value=json_values)
def test_fuzz_parse_channel_one_member(member: str, value: Any) -> None:
    data = body()
    data[member] = value
    try:
        spec = parse_channel(data)
    except ValidationError:
        return
    assert isinstance(spec, ChannelSpec)
    # What validates can be stored and served: JSON-encodable as strict UTF-8.
    json.dumps(spec.to_json(), ensure_ascii=False).encode("utf-8")
    assert parse_channel(spec.to_json()) == spec


@settings(max_examples=300, deadline=None)
@given(value=json_values)
def test_fuzz_parse_channel_and_heartbeat_any_value(value: Any) -> None:
    for parse in (parse_channel, parse_heartbeat):
        with contextlib.suppress(ValidationError):
            parse(value)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode()))
def test_fuzz_decode_json_bytes(raw: bytes) -> None:
    try:
        decoded = decode_json(raw)
    except ValidationError:
        return
    with contextlib.suppress(ValidationError):
        parse_channel(decoded)


# -- the registry (sans-IO, injected time) --------------------------------------------------


def test_state_publish_update_delete() -> None:
    state = PortalState()
    channel, created = state.publish(parse_channel(body()), now=100.0)
    assert created and channel["published"] == 100.0 and channel["viewers"] == 0
    channel, created = state.publish(parse_channel(body(title="Renamed")), now=200.0)
    assert not created and channel["title"] == "Renamed" and channel["published"] == 200.0
    assert len(state) == 1 and "news-1" in state
    state.delete("news-1")
    assert len(state) == 0
    with pytest.raises(NotFound):
        state.delete("news-1")
    with pytest.raises(NotFound):
        state.get("news-1", 0.0)


def test_state_channels_sorted_and_limited() -> None:
    state = PortalState(max_channels=3)
    for name in ("c", "a", "b"):
        state.publish(parse_channel(body(name=name)), now=1.0)
    assert [c["name"] for c in state.channels(1.0)] == ["a", "b", "c"]
    with pytest.raises(LimitExceeded):
        state.publish(parse_channel(body(name="d")), now=1.0)
    state.publish(parse_channel(body(name="a", title="updated")), now=2.0)  # update: no limit
    state.delete("a")
    state.publish(parse_channel(body(name="d")), now=3.0)


def test_state_viewers_expire_after_the_ttl() -> None:
    state = PortalState()
    state.publish(parse_channel(body()), now=0.0)
    state.heartbeat("news-1", "v1", True, now=0.0)
    state.heartbeat("news-1", "v2", True, now=10.0)
    state.heartbeat("news-1", "v1", True, now=10.0)  # the same viewer counts once
    assert state.viewer_count("news-1", 10.0) == 2
    state.heartbeat("news-1", "v1", True, now=25.0)
    assert state.viewer_count("news-1", 10.0 + VIEWER_TTL) == 2
    assert state.viewer_count("news-1", 10.0 + VIEWER_TTL + 0.1) == 1  # v2 silent > 30 s
    assert state.get("news-1", 10.0 + VIEWER_TTL + 0.1)["viewers"] == 1
    assert state.expire(10.0 + VIEWER_TTL + 0.1) == 1 and state.viewer_total == 1
    state.heartbeat("news-1", "v1", False, now=26.0)  # watching: false leaves at once
    assert state.viewer_count("news-1", 26.0) == 0 and state.viewer_total == 0
    with pytest.raises(NotFound):
        state.heartbeat("nope", "v1", True, now=0.0)


def test_state_viewer_limit_counts_expired_viewers_out() -> None:
    state = PortalState(max_viewers=2)
    state.publish(parse_channel(body()), now=0.0)
    state.heartbeat("news-1", "a", True, now=0.0)
    state.heartbeat("news-1", "b", True, now=0.0)
    with pytest.raises(LimitExceeded):
        state.heartbeat("news-1", "c", True, now=1.0)
    state.heartbeat("news-1", "a", True, now=1.0)  # a known viewer is still refreshed
    state.heartbeat("news-1", "c", True, now=VIEWER_TTL + 0.5)  # "b" expired: room again
    assert state.viewer_count("news-1", VIEWER_TTL + 0.5) == 2
    state.delete("news-1")
    assert state.viewer_total == 0


def test_state_round_trip_and_load_skips_bad_entries() -> None:
    state = PortalState()
    state.publish(parse_channel(body(name="a")), now=5.0)
    state.publish(parse_channel(body(name="b", live=False, bitrate=None)), now=6.0)
    state.heartbeat("a", "v", True, now=6.0)
    saved = json.loads(json.dumps(state.to_json()))
    restored = PortalState()
    assert restored.load(saved) == []
    assert restored.channels(6.0)[0] == {**state.channels(6.0)[0], "viewers": 0}
    assert restored.channels(6.0)[1] == state.channels(6.0)[1]
    saved["channels"].append({"channel": {"name": "../x"}, "published": 1.0})
    saved["channels"].append({"channel": body(name="c"), "published": "yesterday"})
    saved["channels"].append(7)
    problems = PortalState().load(saved)
    assert len(problems) == 3 and all(p.startswith("entry ") for p in problems)
    invalid: list[object] = [{}, [], {"version": 2, "channels": []}, {"version": 1, "channels": {}}]
    for document in invalid:
        with pytest.raises(ValidationError):
            PortalState().load(document)


def test_render_page_escapes_everything() -> None:
    state = PortalState()
    state.publish(parse_channel(body(title="<script>alert(1)</script> & co")), now=0.0)
    page = render_page(state.channels(0.0))
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page
    assert 'data-channel="news-1"' in page and '<span class="badge live">LIVE</span>' in page
    assert '<td class="bitrate">512 kbit/s</td>' in page
    assert f'<code title="{"ab" * 32}">abababab…ababab</code>' in page
    assert 'class="empty"' in page
    assert 'class="empty visible"' in render_page([])


def test_write_atomic_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"
    write_atomic(path, b"one")
    write_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]


# -- the HTTP API on 127.0.0.1 ----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        async with asyncio.timeout(60):
            return await coro

    return asyncio.run(main())


@contextlib.asynccontextmanager
async def portal(
    state_file: Path | None = None, clock: Callable[[], float] | None = None
) -> AsyncIterator[tuple[PortalServer, aiohttp.ClientSession]]:
    server = PortalServer(TOKEN, state_file=state_file, clock=clock or Clock())
    await server.start("127.0.0.1", 0)
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with aiohttp.ClientSession(base_url=server.url, timeout=timeout) as session:
            yield server, session
    finally:
        await server.close()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def publish(
    session: aiohttp.ClientSession, data: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with session.post(
        "/api/v1/channels", json=data, headers=AUTH if headers is None else headers
    ) as response:
        return response.status, await response.json(content_type=None)


def test_http_publish_list_get_update_delete() -> None:
    async def scenario() -> None:
        async with portal() as (_server, session):
            status, answer = await publish(session, body())
            assert status == 201
            assert answer["channel"]["name"] == "news-1"
            assert answer["channel"]["viewers"] == 0
            assert answer["channel"]["published"] == 1_000_000.0
            status, answer = await publish(session, body(title="Now updated"))
            assert status == 200 and answer["channel"]["title"] == "Now updated"
            await publish(session, body(name="film", live=False, bitrate=None, length=99))
            async with session.get("/api/v1/channels") as response:
                assert response.status == 200
                assert response.headers["Cache-Control"] == "no-store"
                listed = (await response.json())["channels"]
            assert [c["name"] for c in listed] == ["film", "news-1"]
            assert listed[0]["live"] is False and listed[0]["length"] == 99
            async with session.get("/api/v1/channels/news-1") as response:
                assert response.status == 200
                assert (await response.json())["title"] == "Now updated"
            async with session.get("/api/v1/channels/nothing") as response:
                assert response.status == 404
                assert "nothing" in (await response.json())["error"]
            async with session.delete("/api/v1/channels/news-1") as response:
                assert response.status == 401
            async with session.delete("/api/v1/channels/news-1", headers=AUTH) as response:
                assert response.status == 204
            async with session.delete("/api/v1/channels/news-1", headers=AUTH) as response:
                assert response.status == 404
            async with session.get("/api/v1/channels") as response:
                assert [c["name"] for c in (await response.json())["channels"]] == ["film"]

    run(scenario())


def test_http_token_is_required_and_checked() -> None:
    async def scenario() -> None:
        async with portal() as (server, session):
            for headers in (
                {},
                {"Authorization": "Bearer"},
                {"Authorization": f"Basic {TOKEN}"},
                {"Authorization": "Bearer wrong"},
                {"Authorization": f"Bearer {TOKEN}x"},
                {"Authorization": f"Bearer {TOKEN[:-1]}"},
            ):
                async with session.post(
                    "/api/v1/channels", json=body(), headers=headers
                ) as response:
                    assert response.status == 401, headers
                    assert response.headers["WWW-Authenticate"].startswith("Bearer realm=")
                    assert "error" in await response.json()
            assert len(server.state) == 0
            status, _ = await publish(session, body(), {"Authorization": f"bearer  {TOKEN} "})
            assert status == 201

    run(scenario())


def test_http_hostile_bodies_are_4xx() -> None:
    async def scenario() -> None:
        async with portal() as (server, session):
            cases: list[tuple[bytes, int]] = [
                (b"not json", 400),
                (b"[1, 2]", 400),
                (b'{"name": "x"}', 400),
                (json.dumps(body(name="../../etc/passwd")).encode(), 400),
                (json.dumps(body(extra=1)).encode(), 400),
                (json.dumps(body(chunk_size="big")).encode(), 400),
                (b"\xc3\x28", 400),
                (b"[" * 40_000, 400),
                (b" " * (MAX_BODY + 1), 413),
            ]
            for raw, expected in cases:
                async with session.post("/api/v1/channels", data=raw, headers=AUTH) as response:
                    assert response.status == expected, raw[:40]
                    assert "error" in await response.json()

            async def chunked() -> AsyncIterator[bytes]:
                for _ in range(20):  # 80 KiB without a Content-Length
                    yield b" " * 4096

            async with session.post("/api/v1/channels", data=chunked(), headers=AUTH) as response:
                assert response.status == 413
            # A Content-Length over the limit is refused before the body is read.
            assert server.address is not None
            reader, writer = await asyncio.open_connection(*server.address)
            writer.write(
                b"POST /api/v1/channels HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + TOKEN.encode()
                + f"\r\nContent-Length: {10 * MAX_BODY}\r\n\r\n{{}}".encode()
            )
            answer = await asyncio.wait_for(reader.readuntil(b'bytes"}'), 10)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 413 ")
            assert answer.endswith(b'{"error": "body larger than 65536 bytes"}')
            async with session.put("/api/v1/channels", data=b"{}") as response:
                assert response.status == 405 and "Allow" in response.headers
            async with session.get("/api/v1/channels/..%2F..%2Fetc") as response:
                assert response.status in (400, 404)
            async with session.get("/api/v1/channels/a%20b") as response:
                assert response.status == 400
            async with session.get("/static/../server.py") as response:
                assert response.status == 404
            assert len(server.state) == 0

    run(scenario())


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    raw=st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.tuples(st.sampled_from(sorted(CHANNEL_FIELDS)), json_values).map(
            lambda kv: json.dumps({**body(), kv[0]: kv[1]}).encode()
        ),
    )
)
def test_fuzz_http_never_500(raw: bytes) -> None:
    async def scenario() -> None:
        async with portal() as (_server, session):
            for path, headers in (
                ("/api/v1/channels", AUTH),
                ("/api/v1/channels/x/viewers", {}),
            ):
                async with session.post(path, data=raw, headers=headers) as response:
                    assert response.status in (200, 201, 204, 400, 404), response.status

    run(scenario())


def test_http_viewer_heartbeats_count_and_expire() -> None:
    clock = Clock()

    async def beat(session: aiohttp.ClientSession, name: str, viewer: str, on: bool) -> int:
        async with session.post(
            f"/api/v1/channels/{name}/viewers", json={"viewer": viewer, "watching": on}
        ) as response:
            return response.status

    async def viewers(session: aiohttp.ClientSession) -> int:
        async with session.get("/api/v1/channels/news-1") as response:
            return int((await response.json())["viewers"])

    async def scenario() -> None:
        async with portal(clock=clock) as (_server, session):
            await publish(session, body())
            assert await beat(session, "news-1", "csc-a", True) == 204
            assert await beat(session, "news-1", "csc-b", True) == 204
            assert await viewers(session) == 2
            clock.now += 20
            assert await beat(session, "news-1", "csc-a", True) == 204
            clock.now += 15  # csc-b silent for 35 s: no longer counted
            assert await viewers(session) == 1
            assert await beat(session, "news-1", "csc-a", False) == 204
            assert await viewers(session) == 0
            assert await beat(session, "unknown", "csc-a", True) == 404
            assert await beat(session, "bad..name", "csc-a", True) == 400
            async with session.post(
                "/api/v1/channels/news-1/viewers", json={"viewer": "x", "watching": "yes"}
            ) as response:
                assert response.status == 400

    run(scenario())


def test_http_page_and_static_files() -> None:
    async def scenario() -> None:
        async with portal() as (_server, session):
            await publish(session, body(title="Evening <News>"))
            async with session.get("/") as response:
                assert response.status == 200
                assert response.content_type == "text/html"
                csp = response.headers["Content-Security-Policy"]
                assert "default-src 'none'" in csp and "script-src 'self'" in csp
                page = await response.text()
            assert "Evening &lt;News&gt;" in page and 'data-channel="news-1"' in page
            assert "http://" not in page.replace("ppsp-udp://", "").split("<tbody>")[0]
            for name, kind in (("portal.js", "text/javascript"), ("portal.css", "text/css")):
                async with session.get(f"/static/{name}") as response:
                    assert response.status == 200 and response.content_type == kind
                    text = await response.text()
                    assert "http://" not in text and "https://" not in text  # nothing external
            async with session.get("/static/index.html") as response:
                assert response.status == 404

    run(scenario())


def test_state_file_survives_a_restart(tmp_path: Path) -> None:
    state_file = tmp_path / "portal.json"

    async def scenario() -> None:
        async with portal(state_file) as (_server, session):
            await publish(session, body(name="a"))
            await publish(session, body(name="b", live=False))
            # Written through before the answer: a portal killed now keeps both.
            saved = json.loads(state_file.read_text())
            assert [c["channel"]["name"] for c in saved["channels"]] == ["a", "b"]
            async with session.delete("/api/v1/channels/a", headers=AUTH) as response:
                assert response.status == 204
        async with portal(state_file) as (_server, session):
            async with session.get("/api/v1/channels") as response:
                listed = (await response.json())["channels"]
            assert [c["name"] for c in listed] == ["b"]
            assert listed[0]["live"] is False and listed[0]["viewers"] == 0

    run(scenario())
    assert [p.name for p in tmp_path.iterdir()] == ["portal.json"]


def test_corrupt_state_file_is_refused(tmp_path: Path) -> None:
    state_file = tmp_path / "portal.json"
    for content in (b"{not json", b'{"version": 9}', b"\xff"):
        state_file.write_bytes(content)
        server = PortalServer(TOKEN, state_file=state_file)
        with pytest.raises(PortalStateFileError, match=r"portal\.json"):
            server.load_state()
    assert state_file.read_bytes() == b"\xff"  # never overwritten


# -- the command line ---------------------------------------------------------------------


def read_line(stream: Any, timeout: float) -> str:
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"no output within {timeout} s")
    line: bytes = stream.readline()
    return line.decode().rstrip("\n")


@contextlib.contextmanager
def portal_process(*argv: str, env: dict[str, str] | None = None) -> Iterator[Any]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab.cli", "portal", "--listen", "127.0.0.1:0", *argv],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
        env={**os.environ, **(env or {})},
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


def http(method: str, url: str, data: Any = None, token: str | None = None) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url, method=method, data=None if data is None else json.dumps(data).encode()
    )
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cli_serves_until_signal_and_keeps_state(tmp_path: Path, signum: signal.Signals) -> None:
    state_file = tmp_path / "state.json"
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    args = ("--token-file", str(token_file), "--state", str(state_file))
    with portal_process(*args) as proc:
        url = read_line(proc.stdout, 20)
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        assert http("POST", url + "api/v1/channels", body(), token="file-token") == 201
        assert http("POST", url + "api/v1/channels", body(), token="wrong") == 401
        proc.send_signal(signum)
        assert proc.wait(timeout=15) == 0
        assert proc.stdout.read() == b""  # no token line: it was given
    assert json.loads(state_file.read_text())["channels"][0]["channel"]["name"] == "news-1"
    with portal_process(*args) as proc:
        url = read_line(proc.stdout, 20)
        import urllib.request

        with urllib.request.urlopen(url + "api/v1/channels/news-1", timeout=10) as response:
            assert json.loads(response.read())["title"] == "News, all day"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


def test_cli_generates_a_token_or_takes_the_environment() -> None:
    with portal_process(env={"P2PCDN_PORTAL_TOKEN": ""}) as proc:
        url = read_line(proc.stdout, 20)
        line = read_line(proc.stdout, 5)
        assert line.startswith("token: ")
        token = line.removeprefix("token: ")
        assert len(token) >= 32
        assert http("POST", url + "api/v1/channels", body(), token=token) == 201
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    with portal_process(env={"P2PCDN_PORTAL_TOKEN": "env-token"}) as proc:
        url = read_line(proc.stdout, 20)
        assert http("POST", url + "api/v1/channels", body(), token="env-token") == 201
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert proc.stdout.read() == b""


def test_cli_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["portal", "--token", " "]) == cli.EXIT_USAGE
    assert "--token must not be empty" in capsys.readouterr().err
    assert cli.main(["portal", "--token-file", str(tmp_path / "missing")]) == cli.EXIT_USAGE
    assert "cannot read the token file" in capsys.readouterr().err
    two = tmp_path / "two"
    two.write_text("a b\n")
    assert cli.main(["portal", "--token-file", str(two)]) == cli.EXIT_USAGE
    assert "one token on one line" in capsys.readouterr().err
    assert cli.main(["portal", "--listen", "nowhere"]) == cli.EXIT_USAGE
    assert cli.main(["portal", "--token", "a", "--token-file", str(two)]) == cli.EXIT_USAGE
    bad_state = tmp_path / "state.json"
    bad_state.write_text("{")
    code = cli.main(
        ["portal", "--listen", "127.0.0.1:0", "--token", "t", "--state", str(bad_state)]
    )
    assert code == cli.EXIT_FAILURE
    assert "cannot load the state file" in capsys.readouterr().err
    assert cli.main(["portal", "--help"]) == 0
    assert "--token-file" in capsys.readouterr().out


# -- the source's client (portal/portal_client.py) against the real portal ------------------


def test_source_client_publishes_to_the_portal(monkeypatch: pytest.MonkeyPatch) -> None:
    from portal import portal_client

    assert portal_client.PUBLISH_PATH == "api/v1/channels"  # the contract's path
    channel = portal_client.Channel(
        name="movie",
        live=False,
        swarm_id="ab" * 32,
        trackers=["ppsp-udp://127.0.0.1:7846"],
        chunk_size=1024,
        integrity="merkle",
        hash="sha256",
        length=2 * 1024 * 1024,
        source_user="source1",
        sources=["127.0.0.1:7000"],
    )

    async def scenario() -> None:
        async with portal() as (server, session):
            answer = await portal_client.publish_channel(server.url, TOKEN, channel)
            assert answer["channel"]["name"] == "movie"
            assert answer["channel"]["title"] == "movie"
            assert answer["channel"]["sources"] == ["127.0.0.1:7000"]
            with pytest.raises(portal_client.PortalAuthError):
                await portal_client.publish_channel(server.url, "wrong", channel)
            async with session.get("/api/v1/channels/movie") as response:
                listed = await response.json()
            assert listed["swarm_id"] == "ab" * 32 and listed["length"] == 2 * 1024 * 1024

    run(scenario())
