"""The portal's page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
driven by selenium; no browser is ever downloaded): ``p2pcdn portal`` on 127.0.0.1, three
channels published through the API, the page shows them with their badges, bitrates and
viewer counts, picks up a new viewer heartbeat by itself (the 2 s refresh, no reload), and the
test saves a screenshot under its tmp dir (and to docs/portal-screenshot.png when
P2PCDN_UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = REPO / "docs" / "portal-screenshot.png"
TOKEN = "browser-test-token"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium "
    "(apt-get install chromium chromium-driver; .ci/run installs them)",
)

#: Three channels as a source would publish them: two VoD, one live.
CHANNELS: list[dict[str, Any]] = [
    {
        "name": "big-buck-bunny",
        "title": "Big Buck Bunny (1080p)",
        "live": False,
        "swarm_id": "9f" + "3c5a1e07" * 4 + "d2b4e6",
        "trackers": ["ppsp-udp://127.0.0.1:7846"],
        "chunk_size": 1024,
        "integrity": "merkle-sha256",
        "hash": "sha256",
        "bitrate": 4500,
        "length": 276_134_947,
        "source_user": "source1",
        "storage_overlay": "storage.p2pcdn",
        "segment_chunks": 64,
        "cipm": 2,
    },
    {
        "name": "lecture-01",
        "title": "Lecture 1: P2P streaming",
        "live": False,
        "swarm_id": "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567",
        "trackers": ["ppsp-udp://127.0.0.1:7846", "http://127.0.0.1:7846/"],
        "chunk_size": 1024,
        "integrity": "merkle-sha1",
        "hash": "sha1",
        "bitrate": None,
        "length": 52_428_800,
        "source_user": "source1",
        "storage_overlay": "storage.p2pcdn",
        "segment_chunks": 64,
        "cipm": 2,
    },
    {
        "name": "news-live",
        "title": "News 24 (live)",
        "live": True,
        "swarm_id": "3059301306072a8648ce3d020106082a8648ce3d03010703420004" + "ab" * 64,
        "trackers": ["ppsp-udp://127.0.0.1:7846"],
        "chunk_size": 1024,
        "integrity": "unified-merkle-ecdsa-p256",
        "hash": "sha256",
        "bitrate": 512,
        "length": None,
        "source_user": "source1",
        "storage_overlay": "storage.p2pcdn",
        "segment_chunks": 64,
        "cipm": 2,
    },
]


def read_line(stream: Any, timeout: float) -> str:
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"no output within {timeout} s")
    line: bytes = stream.readline()
    return line.decode().rstrip("\n")


@contextlib.contextmanager
def portal_process() -> Iterator[str]:
    """``p2pcdn portal`` on a free port of 127.0.0.1; yields its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab.cli", "portal", "--listen", "127.0.0.1:0", "--token", TOKEN],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        bufsize=0,
    )
    try:
        yield read_line(proc.stdout, 20)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


def post(url: str, data: Any, token: str | None = None) -> int:
    request = urllib.request.Request(url, method="POST", data=json.dumps(data).encode())
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@contextlib.contextmanager
def chromium(profile: Path, log: Path) -> Iterator[Any]:
    """Debian's Chromium through Debian's chromedriver: headless, no sandbox (root in a
    container), no network activity of its own, an empty profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not CHROMEDRIVER.exists():
        pytest.fail(f"{CHROMIUM} is installed but {CHROMEDRIVER} is not (chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,560",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(log))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(30)
        driver.set_script_timeout(10)
        yield driver
    finally:
        driver.quit()


#: The channel table as the page shows it, read in one script run: the page redraws the table
#: every 2 s, so element handles held across calls would go stale.
ROWS_JS = """
return Array.from(document.querySelectorAll('#channels tbody tr')).map(tr => [
    tr.dataset.channel,
    Object.fromEntries(Array.from(tr.cells).map(td => [td.className, td.innerText])),
]);
"""


def rows(driver: Any) -> dict[str, dict[str, str]]:
    """Channel name → cell class → the cell's rendered text."""
    snapshot = driver.execute_script(ROWS_JS)
    return {str(name): {str(k): str(v) for k, v in cells.items()} for name, cells in snapshot}


def status(driver: Any) -> tuple[str, str]:
    """The status line's text and class."""
    text, cls = driver.execute_script(
        "const s = document.getElementById('status'); return [s.innerText, s.className];"
    )
    return str(text), str(cls)


def test_portal_page_in_headless_chromium(tmp_path: Path) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    profile = tmp_path / "profile"
    profile.mkdir()
    with portal_process() as url, chromium(profile, tmp_path / "chromedriver.log") as driver:
        api = url + "api/v1/channels"
        for channel in CHANNELS:
            assert post(api, channel, token=TOKEN) == 201
        for viewer in ("csc-1", "csc-2"):
            assert post(f"{api}/news-live/viewers", {"viewer": viewer, "watching": True}) == 204

        driver.get(url)
        assert driver.title == "p2pcdn channels"

        def refreshed(count: int) -> Any:
            def check(d: Any) -> bool:
                done = d.execute_script("return Number(document.body.dataset.refreshes || 0)")
                return int(done) >= count and len(rows(d)) == 3

            return check

        # The script's first fetch of the JSON API has redrawn the list.
        WebDriverWait(driver, 15, poll_frequency=0.2).until(refreshed(1))
        table = rows(driver)
        assert list(table) == ["big-buck-bunny", "lecture-01", "news-live"]
        assert table["big-buck-bunny"]["kind"] == "VoD"
        assert table["lecture-01"]["kind"] == "VoD"
        assert table["news-live"]["kind"] == "LIVE"
        assert table["big-buck-bunny"]["name"].splitlines() == [
            "Big Buck Bunny (1080p)",
            "big-buck-bunny",
        ]
        assert table["big-buck-bunny"]["bitrate"] == "4.5 Mbit/s"
        assert table["lecture-01"]["bitrate"] == "—"
        assert table["news-live"]["bitrate"] == "512 kbit/s"
        assert {name: cells["viewers"] for name, cells in table.items()} == {
            "big-buck-bunny": "0",
            "lecture-01": "0",
            "news-live": "2",
        }
        assert table["lecture-01"]["swarm"] == "0a1b2c3d…234567"
        assert table["news-live"]["swarm"] == "30593013…ababab"
        assert table["lecture-01"]["tracker"].splitlines() == [
            "ppsp-udp://127.0.0.1:7846",
            "http://127.0.0.1:7846/",
        ]
        text, cls = status(driver)
        assert "3 channel(s) · 2 viewer(s)" in text and "offline" not in cls

        # A CSC starts watching: the page shows it after a refresh, without a reload.
        for viewer in ("csc-3", "csc-4", "csc-5"):
            assert (
                post(f"{api}/big-buck-bunny/viewers", {"viewer": viewer, "watching": True}) == 204
            )
        assert post(f"{api}/news-live/viewers", {"viewer": "csc-3", "watching": True}) == 204
        marker = driver.execute_script("document.body.dataset.marker = 'same-page'; return 1")
        assert marker == 1
        try:
            WebDriverWait(driver, 10, poll_frequency=0.2).until(
                lambda d: (
                    rows(d)["big-buck-bunny"]["viewers"] == "3"
                    and rows(d)["news-live"]["viewers"] == "3"
                )
            )
        except TimeoutException:
            pytest.fail(f"the page did not refresh the viewer counts: {rows(driver)}")
        assert driver.execute_script("return document.body.dataset.marker") == "same-page"
        assert "3 channel(s) · 6 viewer(s)" in status(driver)[0]

        # The page needed nothing but its own origin, and the browser logged no error.
        severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert severe == []
        loaded = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert loaded and all(str(name).startswith(url) for name in loaded), loaded

        shot = tmp_path / "portal-screenshot.png"
        assert driver.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    # The committed screenshot in docs/ is refreshed on request only, so that a test run
    # leaves the work tree clean: P2PCDN_UPDATE_SCREENSHOTS=1 make test.
    if os.environ.get("P2PCDN_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
        assert os.path.getsize(SCREENSHOT) == len(data)
