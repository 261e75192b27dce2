"""The CSC's playback buffer model (DESIGN §1: CSC; flow F3, F4), sans-IO with injected time.

A viewer watches one channel at a time. Verified chunks (RFC 7574: only chunks that passed
the Merkle or live signature check are ever handed over, see :meth:`PlaybackSession.on_chunk`)
fill a buffer; once the buffer ahead of the playhead holds the *startup threshold* (bytes or
seconds of media) the first frame shows and the playhead advances in real time at the
channel's bitrate. When it catches up with the first missing chunk, playback *stalls* until
the *rebuffer threshold* is buffered again. A channel change (*zap*) empties the buffer and
starts over: the *startup delay* is the time from the zap to the first frame.

Quality over a session, as LiveSky (§4.4) measures it:

- Q1 = play time / (play time + stall time): how smoothly the viewer watched (time spent
  waiting for the first frame after a zap is startup delay, reported separately, not stall);
- Q2 = 1 − viewers who stalled / viewers: the share of viewers who never stalled
  (:func:`q2`, over many sessions).

Time is seconds on any monotonic origin, passed in; :meth:`PlaybackSession.next_timer` says
when the playhead would run dry, so a driver can wake up exactly then.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from ppsp.peer.ranges import ChunkSet

__all__ = [
    "ChannelRecord",
    "FirstFrame",
    "PlaybackSession",
    "PlaybackState",
    "Resumed",
    "Stalled",
    "q1",
    "q2",
]


class PlaybackState(enum.Enum):
    IDLE = "idle"  # no channel yet
    STARTING = "starting"  # zapped; buffering up to the startup threshold
    PLAYING = "playing"
    STALLED = "stalled"  # ran dry; buffering up to the rebuffer threshold
    ENDED = "ended"  # played the last chunk of a VoD


@dataclass(frozen=True, slots=True)
class FirstFrame:
    channel: str
    at: float
    startup_delay: float


@dataclass(frozen=True, slots=True)
class Stalled:
    channel: str
    at: float


@dataclass(frozen=True, slots=True)
class Resumed:
    channel: str
    at: float
    stall_time: float


Event = FirstFrame | Stalled | Resumed


@dataclass(slots=True)
class ChannelRecord:
    """One channel watched: from the zap to it until the zap away (or the end)."""

    channel: str
    zap_time: float
    first_frame: float | None = None
    play_time: float = 0.0
    stall_time: float = 0.0
    stalls: int = 0
    ended: bool = False
    left_at: float | None = None

    @property
    def startup_delay(self) -> float | None:
        """Zap to first frame, or None if it never started."""
        return None if self.first_frame is None else self.first_frame - self.zap_time


@dataclass(slots=True)
class _Channel:
    record: ChannelRecord
    start_chunk: int
    end_chunk: int | None  # last chunk of a VoD; None for live
    received: ChunkSet = field(default_factory=ChunkSet)
    playhead: float = 0.0  # media seconds since start_chunk
    stall_start: float = 0.0


class PlaybackSession:
    """One viewer's playback across channel changes; see the module docstring.

    ``bitrate`` is in bits per second of media, ``chunk_size`` in bytes (a chunk is
    ``chunk_size · 8 / bitrate`` seconds of media). The startup threshold is
    ``startup_seconds`` of media or ``startup_bytes`` (the larger if both are given); the
    rebuffer threshold after a stall defaults to the startup threshold.
    """

    def __init__(
        self,
        bitrate: float,
        chunk_size: int = 1024,
        *,
        startup_seconds: float | None = None,
        startup_bytes: int | None = None,
        rebuffer_seconds: float | None = None,
    ) -> None:
        if bitrate <= 0 or chunk_size <= 0:
            raise ValueError("bitrate and chunk size must be positive")
        self.bitrate = bitrate
        self.chunk_size = chunk_size
        self.chunk_seconds = chunk_size * 8 / bitrate
        threshold = 0.0
        if startup_seconds is not None:
            threshold = max(threshold, startup_seconds)
        if startup_bytes is not None:
            threshold = max(threshold, startup_bytes * 8 / bitrate)
        if startup_seconds is None and startup_bytes is None:
            threshold = self.chunk_seconds  # one chunk: the smallest thing that plays
        # At least one chunk: the first frame needs data.
        self.startup_threshold = max(threshold, self.chunk_seconds)
        self.rebuffer_threshold = (
            max(rebuffer_seconds, self.chunk_seconds)
            if rebuffer_seconds is not None
            else self.startup_threshold
        )
        self.state = PlaybackState.IDLE
        self.records: list[ChannelRecord] = []
        self.events: list[Event] = []
        self._ch: _Channel | None = None
        self._t: float | None = None

    # -- channel changes

    def zap(
        self, channel: str, now: float, *, start_chunk: int = 0, end_chunk: int | None = None
    ) -> None:
        """Change to ``channel``: playback starts at ``start_chunk`` (VoD: 0; live: the
        tune-in point, RFC 7574 §6.1.2.4) and, for a VoD, ends after ``end_chunk``."""
        self._leave(now)
        record = ChannelRecord(channel, now)
        self.records.append(record)
        self._ch = _Channel(record, start_chunk, end_chunk)
        self.state = PlaybackState.STARTING
        self._t = now

    def stop(self, now: float) -> None:
        """The viewer stops watching (end of the session)."""
        self._leave(now)
        self._ch = None
        self.state = PlaybackState.IDLE

    def _leave(self, now: float) -> None:
        if self._ch is not None:
            self.advance(now)
            self._ch.record.left_at = now

    # -- input

    def on_chunk(self, chunk: int, now: float) -> None:
        """A *verified* chunk of the current channel arrived (never feed unverified ones:
        the model plays whatever it is given)."""
        ch = self._ch
        if ch is None:
            return
        self.advance(now)
        if chunk < ch.start_chunk or (ch.end_chunk is not None and chunk > ch.end_chunk):
            return
        ch.received.add(chunk, chunk)
        self._maybe_start(now)

    def set_start(self, start_chunk: int, now: float) -> None:
        """Live: the tune-in point became known after the zap (the first signed munro)."""
        ch = self._ch
        if ch is None or self.state is not PlaybackState.STARTING:
            return
        ch.start_chunk = start_chunk
        if start_chunk > 0:
            ch.received.remove(0, start_chunk - 1)
        self._maybe_start(now)

    # -- time

    def next_timer(self) -> float | None:
        """When the playhead runs dry (or the VoD ends) if nothing arrives before."""
        ch = self._ch
        if ch is None or self.state is not PlaybackState.PLAYING or self._t is None:
            return None
        return self._t + self._buffered_until(ch) - ch.playhead

    def handle_timer(self, now: float) -> None:
        self.advance(now)

    def advance(self, now: float) -> None:
        """Move the model to time ``now``: play, run dry, stall."""
        ch = self._ch
        if ch is None or self._t is None:
            self._t = now if self._t is None else max(self._t, now)
            return
        rec = ch.record
        for _ in range(4):  # at most PLAYING → STALLED/ENDED per call, bounded anyway
            dt = now - self._t
            if dt <= 0:
                return
            if self.state is PlaybackState.PLAYING:
                ahead = self._buffered_until(ch) - ch.playhead
                if ahead >= dt:
                    ch.playhead += dt
                    rec.play_time += dt
                    self._t = now
                    if ahead == dt and self._at_end(ch):
                        self._end()
                    return
                ch.playhead += ahead
                rec.play_time += ahead
                self._t += ahead
                if self._at_end(ch):
                    self._end()
                    continue
                self.state = PlaybackState.STALLED
                rec.stalls += 1
                ch.stall_start = self._t
                self.events.append(Stalled(rec.channel, self._t))
            elif self.state is PlaybackState.STALLED:
                rec.stall_time += dt
                self._t = now
                return
            else:
                self._t = now
                return

    def pop_events(self) -> list[Event]:
        events, self.events = self.events, []
        return events

    # -- internals

    def _buffered_until(self, ch: _Channel) -> float:
        """Media seconds (from the channel's start) of contiguous data from the playhead."""
        chunk = ch.start_chunk + math.floor(ch.playhead / self.chunk_seconds + 1e-9)
        run = ch.received.covering_interval(chunk)
        if run is None:
            return ch.playhead
        return (run[1] - ch.start_chunk + 1) * self.chunk_seconds

    def _at_end(self, ch: _Channel) -> bool:
        if ch.end_chunk is None:
            return False
        end = (ch.end_chunk - ch.start_chunk + 1) * self.chunk_seconds
        return ch.playhead >= end - 1e-9

    def _end(self) -> None:
        assert self._ch is not None
        self.state = PlaybackState.ENDED
        self._ch.record.ended = True

    def _maybe_start(self, now: float) -> None:
        ch = self._ch
        assert ch is not None
        if self.state is PlaybackState.STARTING:
            threshold = self.startup_threshold
        elif self.state is PlaybackState.STALLED:
            threshold = self.rebuffer_threshold
        else:
            return
        ahead = self._buffered_until(ch) - ch.playhead
        all_there = ch.end_chunk is not None and ch.received.contains_range(
            ch.start_chunk + math.floor(ch.playhead / self.chunk_seconds + 1e-9), ch.end_chunk
        )
        if ahead + 1e-9 < threshold and not all_there:
            return
        rec = ch.record
        if self.state is PlaybackState.STARTING:
            rec.first_frame = now
            self.events.append(FirstFrame(rec.channel, now, now - rec.zap_time))
        else:
            self.events.append(Resumed(rec.channel, now, now - ch.stall_start))
        self.state = PlaybackState.PLAYING

    # -- results

    @property
    def play_time(self) -> float:
        return sum(r.play_time for r in self.records)

    @property
    def stall_time(self) -> float:
        return sum(r.stall_time for r in self.records)

    @property
    def stalled(self) -> bool:
        """Whether the viewer stalled at least once in the session (for Q2)."""
        return any(r.stalls for r in self.records)

    @property
    def q1(self) -> float:
        """Play time / (play time + stall time) over the session; 1.0 before any."""
        total = self.play_time + self.stall_time
        return 1.0 if total <= 0 else self.play_time / total

    def startup_delays(self) -> list[float]:
        """Startup delay of every channel change that reached its first frame."""
        return [d for d in (r.startup_delay for r in self.records) if d is not None]


def q1(sessions: Iterable[PlaybackSession]) -> float:
    """Q1 over many viewers: their play time over their play + stall time (LiveSky §4.4)."""
    items = list(sessions)
    play = sum(s.play_time for s in items)
    stall = sum(s.stall_time for s in items)
    return 1.0 if play + stall <= 0 else play / (play + stall)


def q2(sessions: Iterable[PlaybackSession]) -> float:
    """Q2 = 1 − viewers who stalled / viewers (LiveSky §4.4); 1.0 for no viewers."""
    items = list(sessions)
    if not items:
        return 1.0
    return 1.0 - sum(1 for s in items if s.stalled) / len(items)
