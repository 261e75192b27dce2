"""The CSC playback buffer model (csc/playback.py): startup, stalls, channel changes, Q1/Q2."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csc.playback import (
    FirstFrame,
    PlaybackSession,
    PlaybackState,
    Resumed,
    Stalled,
    q1,
    q2,
)

RATE = 400_000  # bit/s, LiveSky's stream rate
CS = 1024
CHUNK_S = CS * 8 / RATE  # 0.02048 s of media per chunk


def session(startup: float = 0.5, **kw: float) -> PlaybackSession:
    return PlaybackSession(RATE, CS, startup_seconds=startup, **kw)  # type: ignore[arg-type]


def state(s: PlaybackSession) -> PlaybackState:
    """The state, read through a call: it changes behind mypy's narrowing."""
    return s.state


def feed(s: PlaybackSession, chunks: range | list[int], at: float) -> None:
    for c in chunks:
        s.on_chunk(c, at)


def test_startup_delay_is_zap_to_first_frame() -> None:
    s = session(0.5)  # 0.5 s of media = 25 chunks (24.4 rounded up)
    s.zap("news", 10.0)
    feed(s, range(24), 10.05)
    assert state(s) is PlaybackState.STARTING
    feed(s, [24], 10.1)
    assert state(s) is PlaybackState.PLAYING
    (first,) = s.pop_events()
    assert isinstance(first, FirstFrame) and (first.channel, first.at) == ("news", 10.1)
    assert first.startup_delay == pytest.approx(0.1)
    assert s.records[0].startup_delay == pytest.approx(0.1)


def test_startup_threshold_in_bytes() -> None:
    s = PlaybackSession(RATE, CS, startup_bytes=10 * CS)
    s.zap("a", 0.0)
    feed(s, range(9), 0.1)
    assert state(s) is PlaybackState.STARTING
    feed(s, [9], 0.2)
    assert state(s) is PlaybackState.PLAYING


def test_stall_and_rebuffer() -> None:
    s = session(0.5, rebuffer_seconds=0.2)
    s.zap("a", 0.0)
    feed(s, range(25), 1.0)  # first frame at 1.0 with 25 chunks = 0.512 s of media
    timer = s.next_timer()
    assert timer == pytest.approx(1.0 + 25 * CHUNK_S)
    dry = float(timer or 0.0)
    s.advance(2.0)
    assert state(s) is PlaybackState.STALLED
    feed(s, range(25, 34), 2.5)  # 9 chunks = 0.184 s < 0.2 s rebuffer threshold
    assert state(s) is PlaybackState.STALLED
    feed(s, [34], 2.6)
    assert state(s) is PlaybackState.PLAYING
    events = s.pop_events()
    assert [type(e) for e in events] == [FirstFrame, Stalled, Resumed]
    stalled, resumed = events[1], events[2]
    assert isinstance(stalled, Stalled) and stalled.at == pytest.approx(dry)
    assert isinstance(resumed, Resumed) and resumed.at == 2.6
    assert resumed.stall_time == pytest.approx(2.6 - dry)
    s.advance(2.6 + 10 * CHUNK_S)
    rec = s.records[0]
    assert rec.stalls == 1
    assert rec.stall_time == pytest.approx(2.6 - dry)
    assert rec.play_time == pytest.approx(35 * CHUNK_S)
    assert s.q1 == pytest.approx(rec.play_time / (rec.play_time + rec.stall_time))
    assert s.stalled


def test_playback_needs_contiguous_chunks() -> None:
    s = session(0.1)  # 5 chunks
    s.zap("a", 0.0)
    feed(s, [0, 1, 3, 4, 5, 6, 7], 0.1)  # chunk 2 missing
    assert state(s) is PlaybackState.STARTING
    feed(s, [2], 0.2)
    assert state(s) is PlaybackState.PLAYING
    s.advance(0.2 + 8 * CHUNK_S + 0.01)
    assert state(s) is PlaybackState.STALLED
    assert s.play_time == pytest.approx(8 * CHUNK_S)


def test_vod_end_is_not_a_stall() -> None:
    s = session(1.0)
    s.zap("film", 0.0, end_chunk=9)  # shorter than the startup threshold
    feed(s, range(10), 0.3)
    assert state(s) is PlaybackState.PLAYING  # everything is there: no need to wait
    s.advance(5.0)
    assert state(s) is PlaybackState.ENDED
    assert not s.stalled and s.stall_time == 0
    assert s.play_time == pytest.approx(10 * CHUNK_S)
    assert s.next_timer() is None


def test_channel_changes_and_live_tune_in() -> None:
    s = session(0.1)
    s.zap("a", 0.0)
    feed(s, range(5), 0.05)
    s.advance(1.0)  # stalls at 0.05 + 5 chunks
    s.zap("live", 1.0, start_chunk=5000)
    feed(s, range(4990, 5000), 1.01)  # before the tune-in point: useless
    assert state(s) is PlaybackState.STARTING
    feed(s, range(5000, 5005), 1.02)
    s.zap("b", 1.5)
    s.on_chunk(0, 1.6)  # startup threshold 0.1 s needs 5 chunks
    s.stop(2.0)
    assert [r.channel for r in s.records] == ["a", "live", "b"]
    assert s.startup_delays() == [pytest.approx(0.05), pytest.approx(0.02)]
    assert s.records[2].startup_delay is None
    assert s.records[0].stall_time == pytest.approx(1.0 - 0.05 - 5 * CHUNK_S)
    assert s.records[1].left_at == 1.5


def test_live_tune_in_point_learnt_after_the_zap() -> None:
    s = session(0.1)
    s.zap("live", 0.0)
    feed(s, range(96, 100), 0.1)
    s.set_start(96, 0.1)
    assert state(s) is PlaybackState.STARTING
    s.on_chunk(100, 0.12)
    assert state(s) is PlaybackState.PLAYING and s.startup_delays() == [pytest.approx(0.12)]


def test_q1_q2_over_viewers() -> None:
    smooth, choppy, idle = session(0.1), session(0.1), session(0.1)
    for s in (smooth, choppy):
        s.zap("a", 0.0)
    feed(smooth, range(100), 0.1)
    feed(choppy, range(5), 0.1)
    for s in (smooth, choppy, idle):
        s.advance(1.0)
    assert smooth.q1 == 1.0 and not smooth.stalled
    assert 0 < choppy.q1 < 1 and choppy.stalled
    assert q2([smooth, choppy, idle]) == pytest.approx(2 / 3)
    assert q2([]) == 1.0
    total_play = smooth.play_time + choppy.play_time
    assert q1([smooth, choppy]) == pytest.approx(total_play / (total_play + choppy.stall_time))


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        PlaybackSession(0)
    with pytest.raises(ValueError):
        PlaybackSession(RATE, 0)


@settings(max_examples=100, deadline=None)
@given(
    arrivals=st.lists(
        st.tuples(st.integers(0, 60), st.floats(0.0, 3.0, allow_nan=False)), max_size=80
    ),
    startup=st.floats(0.0, 0.6, allow_nan=False),
    end=st.floats(0.0, 4.0, allow_nan=False),
)
def test_time_is_accounted_for(
    arrivals: list[tuple[int, float]], startup: float, end: float
) -> None:
    """Whatever the arrival schedule: startup wait + play + stall = the time watched; the
    playhead never passes the media received; Q1 stays in [0, 1]."""
    s = session(startup)
    s.zap("x", 0.0)
    got: set[int] = set()
    for chunk, t in sorted(arrivals, key=lambda a: a[1]):
        s.on_chunk(chunk, t)
        got.add(chunk)
    last = max([t for _, t in arrivals] + [end])
    s.advance(last)
    rec = s.records[0]
    waited = (rec.first_frame if rec.first_frame is not None else last) - rec.zap_time
    assert waited + rec.play_time + rec.stall_time == pytest.approx(last, abs=1e-6)
    contiguous = 0
    while contiguous in got:
        contiguous += 1
    assert rec.play_time <= contiguous * CHUNK_S + 1e-9
    assert 0.0 <= s.q1 <= 1.0
    if rec.first_frame is None:
        assert rec.play_time == 0 and rec.stall_time == 0
