"""Tests for lab.progress: the terminal progress bar and the transfer summary line."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.progress import (
    MIB,
    ProgressBar,
    format_bytes,
    format_duration,
    format_summary,
    mib_per_second,
    parse_summary,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeTTY(io.StringIO):
    """A StringIO that claims to be a terminal, so the bar decides to draw by itself."""

    def isatty(self) -> bool:
        return True


def last_frame(text: str) -> str:
    """What a terminal shows: the text after the last carriage return on the last line."""
    return text.split("\n")[-1].split("\r")[-1]


def make_bar(
    total: int | None = 10 * MIB, *, tty: bool = True, width: int = 80
) -> tuple[ProgressBar, io.StringIO, FakeClock]:
    stream: io.StringIO = FakeTTY() if tty else io.StringIO()
    clock = FakeClock()
    bar = ProgressBar(stream, total=total, clock=clock, width=width)
    return bar, stream, clock


# -- formatting helpers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.00 KiB"),
        (1536, "1.50 KiB"),
        (50 * MIB, "50.0 MiB"),
        (4 * MIB, "4.00 MiB"),
        (300 * MIB, "300 MiB"),
        (3 * 1024 * MIB, "3.00 GiB"),
    ],
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0:00"), (59.4, "0:59"), (61, "1:01"), (3725, "1:02:05"), (-3, "0:00")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_mib_per_second_handles_zero_time() -> None:
    assert mib_per_second(10 * MIB, 2.0) == 5.0
    assert mib_per_second(10 * MIB, 0.0) == 0.0


def test_summary_line_shape() -> None:
    line = format_summary(4 * MIB, 0.5, "verified (sha256 Merkle)")
    assert line == "4194304 bytes (4.00 MiB) in 0.500 s, 8.00 MiB/s, verified (sha256 Merkle)"


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(min_value=0, max_value=1 << 50),
    seconds=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    # Any one-line detail, even one that mimics a summary, must not fool the parser.
    detail=st.one_of(
        st.text(alphabet=st.characters(blacklist_characters="\r\n"), max_size=30),
        st.just("7 bytes (7 B) in 9.000 s, 0.00 MiB/s"),
    ),
)
def test_parse_summary_reads_back_format_summary(size: int, seconds: float, detail: str) -> None:
    parsed = parse_summary("noise\r[###---]\n" + format_summary(size, seconds, detail) + "\n")
    assert parsed is not None
    assert parsed.size == size
    assert parsed.seconds == pytest.approx(round(seconds, 3), abs=1e-9)


def test_parse_summary_takes_last_and_rejects_garbage() -> None:
    text = format_summary(1, 1.0) + "\n" + format_summary(2, 2.0) + "\n"
    assert parse_summary(text) == (2, 2.0)
    assert parse_summary("error: no peer answered\n") is None


# -- the bar on a terminal ----------------------------------------------------------------


def test_bar_shows_bytes_percent_rate_and_eta() -> None:
    bar, stream, clock = make_bar(10 * MIB)
    bar.update(0, 10 * MIB)
    clock.advance(2.0)
    bar.update(4 * MIB, 10 * MIB)  # 2 MiB/s, 6 MiB to go: 3 s
    frame = last_frame(stream.getvalue())
    assert "4.00 MiB / 10.0 MiB" in frame
    assert "40%" in frame
    assert "2.00 MiB/s" in frame
    assert "ETA 0:03" in frame
    assert "[" in frame and "#" in frame and "-" in frame
    assert len(frame) <= 79


def test_bar_keeps_its_length_to_the_end() -> None:
    bar, stream, clock = make_bar(10 * MIB)
    lengths = set()
    for i in range(1, 11):
        clock.advance(0.5)
        bar.update(i * MIB)
        frame = last_frame(stream.getvalue())
        lengths.add(frame.index("]") - frame.index("["))
    assert "done" in last_frame(stream.getvalue())
    assert len(lengths) == 1  # the bar itself, not just the padded line


def test_bar_fits_narrow_terminals() -> None:
    for width in (20, 40, 60, 200):
        bar, stream, clock = make_bar(10 * MIB, width=width)
        clock.advance(1)
        bar.update(3 * MIB)
        assert 0 < len(last_frame(stream.getvalue())) <= max(20, width - 1)


def test_bar_redraws_at_most_ten_times_a_second() -> None:
    bar, stream, clock = make_bar(100 * MIB)
    for i in range(1000):  # 1000 updates over one second
        bar.update(i * 1024)
        clock.advance(0.001)
    assert 9 <= bar.redraws <= 11
    assert stream.getvalue().count("\r") == bar.redraws


def test_bar_redraws_at_once_on_completion() -> None:
    bar, stream, clock = make_bar(10 * MIB)
    bar.update(1)
    clock.advance(0.01)
    bar.update(10 * MIB)
    assert bar.redraws == 2
    assert "100%" in last_frame(stream.getvalue())
    assert "done" in last_frame(stream.getvalue())


def test_unknown_total_shows_bytes_and_rate_without_bar() -> None:
    bar, stream, clock = make_bar(None)
    clock.advance(1.0)
    bar.update(3 * MIB, None)
    frame = last_frame(stream.getvalue())
    assert "3.00 MiB" in frame
    assert "3.00 MiB/s" in frame
    assert "%" not in frame and "ETA" not in frame and "[" not in frame


def test_total_learned_later_switches_to_the_bar() -> None:
    bar, stream, clock = make_bar(None)
    bar.update(0, None)
    clock.advance(1.0)
    bar.update(1 * MIB, 4 * MIB)
    assert "25%" in last_frame(stream.getvalue())


def test_rate_follows_recent_speed() -> None:
    bar, _stream, clock = make_bar(1000 * MIB)
    done = 0
    for _ in range(100):  # 10 s at 10 MiB/s
        clock.advance(0.1)
        done += MIB
        bar.update(done)
    for _ in range(50):  # then 5 s at 1 MiB/s: the window (3 s) must forget the fast part
        clock.advance(0.1)
        done += MIB // 10
        bar.update(done)
    assert bar.rate() / MIB == pytest.approx(1.0, rel=0.1)


def test_shorter_frame_erases_the_longer_one() -> None:
    bar, stream, clock = make_bar(None)
    bar.label = "a long label for the first frame: "
    clock.advance(1.0)
    bar.update(500 * MIB)
    first = last_frame(stream.getvalue())
    bar.label = ""
    clock.advance(1.0)
    bar.update(500 * MIB)
    second = last_frame(stream.getvalue())
    visible = bar.render()
    assert len(visible) < len(first)
    # The shorter frame is padded with spaces over what is left of the longer one.
    assert second == visible + " " * (len(first) - len(visible))


def test_finish_erases_bar_and_writes_summary_once() -> None:
    bar, stream, clock = make_bar(10 * MIB)
    bar.update(5 * MIB)
    bar.finish("SUMMARY")
    bar.finish("AGAIN")
    out = stream.getvalue()
    assert out.endswith("\rSUMMARY\n")
    assert "AGAIN" not in out
    # Updates after the end draw nothing.
    clock.advance(1)
    bar.update(10 * MIB)
    assert stream.getvalue() == out


def test_finish_without_summary_uses_what_it_saw() -> None:
    bar, stream, clock = make_bar(4 * MIB)
    clock.advance(2.0)
    bar.update(4 * MIB)
    bar.finish()
    assert parse_summary(stream.getvalue()) == (4 * MIB, 2.0)


def test_clear_leaves_an_empty_line_for_an_error() -> None:
    bar, stream, _clock = make_bar(10 * MIB)
    bar.update(1 * MIB)
    bar.clear()
    stream.write("error: no peer answered\n")
    assert last_frame(stream.getvalue().rstrip("\n")) == "error: no peer answered"
    assert stream.getvalue().split("\r")[-2].strip() == ""  # the bar was overwritten


# -- not a terminal -----------------------------------------------------------------------


def test_not_a_tty_writes_only_the_final_line() -> None:
    bar, stream, clock = make_bar(10 * MIB, tty=False)
    for i in range(100):
        clock.advance(0.5)
        bar.update(i * 100_000)
    assert stream.getvalue() == ""
    bar.finish("done line")
    assert stream.getvalue() == "done line\n"


def test_tty_detection_is_safe_on_odd_streams() -> None:
    class Closed(io.StringIO):
        def isatty(self) -> bool:
            raise ValueError("I/O operation on closed file")

    assert ProgressBar(io.StringIO()).is_tty is False
    assert ProgressBar(FakeTTY()).is_tty is True
    assert ProgressBar(Closed()).is_tty is False


def test_bar_is_usable_as_a_progress_callback() -> None:
    bar, stream, _clock = make_bar(10 * MIB)
    bar(1 * MIB, 10 * MIB)
    assert bar.done == 1 * MIB
    assert "10%" in last_frame(stream.getvalue())
