"""A dependency-free progress bar for terminals, and the one-line transfer summary.

The bar is drawn on one line with carriage returns, at most ~10 times a second, so it can be
fed from a per-chunk callback (:data:`ppsp.peer.aio.ProgressCallback`) without costing more
than a clock read per call. When the stream is not a terminal, nothing is drawn and only the
final line is written, so logs and pipes stay clean.

The summary line has a fixed shape that scripts (and ``bench/transfer.py``) parse with
:func:`parse_summary`; change both together.
"""

from __future__ import annotations

import re
import shutil
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple, TextIO

MIB = 1024 * 1024

#: Seconds between two redraws: ~10 per second is smooth to the eye and cheap.
REDRAW_INTERVAL = 0.1
#: The transfer rate shown while running is measured over this many recent seconds, so it
#: follows changes (congestion control backing off, a peer leaving) instead of averaging them
#: away.
RATE_WINDOW = 3.0


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units with three significant figures, e.g. ``"4.00 MiB"``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(value)} B"
            if abs(value) >= 100:
                return f"{value:.0f} {unit}"
            if abs(value) >= 10:
                return f"{value:.1f} {unit}"
            return f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """``seconds`` as ``M:SS`` or ``H:MM:SS`` (an ETA, so whole seconds are enough)."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


def mib_per_second(size: int, seconds: float) -> float:
    """Throughput in MiB/s; 0 when no time elapsed (a zero-byte or instant transfer)."""
    return size / MIB / seconds if seconds > 0 else 0.0


def format_summary(size: int, seconds: float, detail: str = "") -> str:
    """The final line of a transfer: ``"<size> bytes (<human>) in <s> s, <rate> MiB/s"``.

    ``detail`` is appended after a comma (e.g. ``"verified (sha256 Merkle)"``).
    """
    line = (
        f"{size} bytes ({format_bytes(size)}) in {seconds:.3f} s, "
        f"{mib_per_second(size, seconds):.2f} MiB/s"
    )
    return f"{line}, {detail}" if detail else line


class Summary(NamedTuple):
    size: int
    seconds: float


#: A summary starts a line (or follows the carriage return that erased a progress bar).
_SUMMARY_RE = re.compile(r"(?:^|\r)(\d+) bytes \([^)]*\) in (\d+(?:\.\d+)?) s, ", re.MULTILINE)


def parse_summary(text: str) -> Summary | None:
    """Find the last summary line produced by :func:`format_summary` in ``text``."""
    matches = list(_SUMMARY_RE.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    return Summary(int(last.group(1)), float(last.group(2)))


def _stream_is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        # A closed or exotic stream: treat as not a terminal, never fail a download on it.
        return False


class ProgressBar:
    """Progress of one transfer, drawn on ``stream`` when it is a terminal.

    Call :meth:`update` as often as you like (its signature matches
    :data:`ppsp.peer.aio.ProgressCallback`), then :meth:`finish` with the summary, or
    :meth:`clear` before printing an error. ``is_tty``, ``clock`` and ``width`` exist so tests
    can drive the bar with a fake stream and a fake clock.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        total: int | None = None,
        label: str = "",
        is_tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        width: int | None = None,
        min_interval: float = REDRAW_INTERVAL,
    ) -> None:
        self.stream = stream
        self.total = total
        self.label = label
        self.is_tty = _stream_is_tty(stream) if is_tty is None else is_tty
        self._clock = clock
        self._width = width
        self._min_interval = min_interval
        self.started = clock()
        self.done = 0
        self._last_draw: float | None = None
        self._drawn_len = 0
        self._finished = False
        self._samples: deque[tuple[float, int]] = deque([(self.started, 0)])
        self.redraws = 0

    # -- feeding -------------------------------------------------------------------------

    def update(self, done: int, total: int | None = None) -> None:
        """Record progress; redraw if the last redraw is old enough or the transfer is done."""
        self.done = done
        if total is not None:
            self.total = total
        if not self.is_tty or self._finished:
            return
        now = self._clock()
        complete = self.total is not None and done >= self.total
        if (
            self._last_draw is not None
            and now - self._last_draw < self._min_interval
            and not complete
        ):
            return
        self._sample(now, done)
        self._draw(self.render(now))
        self._last_draw = now

    def __call__(self, done: int, total: int | None) -> None:
        self.update(done, total)

    # -- ending --------------------------------------------------------------------------

    def clear(self) -> None:
        """Erase the bar (if drawn) so the next line starts at column 0 on an empty line."""
        if self.is_tty and self._drawn_len:
            self.stream.write("\r" + " " * self._drawn_len + "\r")
            self.stream.flush()
            self._drawn_len = 0

    def finish(self, summary: str | None = None) -> None:
        """Erase the bar and write the final line (``summary``, or one built from what
        :meth:`update` saw). Idempotent: a second call writes nothing."""
        if self._finished:
            return
        self._finished = True
        self.clear()
        if summary is None:
            summary = format_summary(self.done, self._clock() - self.started)
        self.stream.write(f"{self.label}{summary}\n")
        self.stream.flush()

    # -- drawing -------------------------------------------------------------------------

    def rate(self, now: float | None = None) -> float:
        """Recent throughput in bytes/s over the last :data:`RATE_WINDOW` seconds."""
        if now is None:
            now = self._clock()
        t0, d0 = self._samples[0]
        if now - t0 <= 0:
            return 0.0
        return max(0, self.done - d0) / (now - t0)

    def render(self, now: float | None = None) -> str:
        """The bar's text for the current state, fitted to the terminal width."""
        if now is None:
            now = self._clock()
        rate = self.rate(now)
        speed = f"{rate / MIB:6.2f} MiB/s"
        width = self._width if self._width is not None else shutil.get_terminal_size().columns
        # One column is left free: writing into the last column makes some terminals wrap.
        width = max(20, width - 1)
        if self.total is None or self.total <= 0:
            # Unknown size (e.g. a live stream, or before the peer told us): no bar, no ETA.
            elapsed = format_duration(now - self.started)
            text = f"{self.label}{format_bytes(self.done)}  {speed}  {elapsed}"
            return text[:width]
        fraction = min(1.0, self.done / self.total)
        if self.done >= self.total:
            eta = "done"
        elif rate > 0:
            eta = "ETA " + format_duration((self.total - self.done) / rate)
        else:
            eta = "ETA --:--"
        head = f"{self.label}{format_bytes(self.done)} / {format_bytes(self.total)} "
        # A fixed-width ETA keeps the bar from changing length when it turns into "done".
        tail = f" {fraction * 100:3.0f}%  {speed}  {eta:<8}"
        room = width - len(head) - len(tail) - 2
        if room >= 10:
            filled = int(fraction * room)
            bar = "[" + "#" * filled + "-" * (room - filled) + "]"
            return head + bar + tail
        return (head + tail.lstrip())[:width]

    def _sample(self, now: float, done: int) -> None:
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
            self._samples.popleft()

    def _draw(self, text: str) -> None:
        # Pad with spaces rather than an ANSI erase so any terminal (and `script` logs) work.
        pad = max(0, self._drawn_len - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._drawn_len = len(text)
        self.redraws += 1
