"""Tests for ppsp.peer.ledbat: the LEDBAT sender controller (RFC 6817, RFC 7574 §8.15)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppsp.peer.ledbat import Ledbat, one_way_delay_sample

MSS = 1024
MiB = 1024 * 1024


def ack_window(cc: Ledbat, delay_us: int, now: float) -> None:
    """Acknowledge one full window, one chunk per ACK (as libswift does)."""
    for _ in range(max(1, cc.cwnd // MSS)):
        cc.on_ack(MSS, delay_us, now)


def test_initial_state() -> None:
    cc = Ledbat()
    assert cc.cwnd == 2 * MSS  # INIT_CWND = 2 (RFC 6817 §2.5)
    assert cc.in_slow_start
    assert cc.base_delay_us is None
    assert cc.rto() == 1.0  # RFC 6298 §2.1
    assert cc.can_send(0) and cc.can_send(2 * MSS - 1) and not cc.can_send(2 * MSS)


def test_congestion_avoidance_grows_one_mss_per_rtt_with_low_delay() -> None:
    cc = Ledbat(slow_start=False)
    now = 0.0
    windows = [cc.cwnd]
    for _ in range(20):
        now += 0.01
        ack_window(cc, 3000, now)
        windows.append(cc.cwnd)
    growth = [b - a for a, b in itertools.pairwise(windows)]
    # Zero queuing delay: off_target = 1, so GAIN·MSS·acked/cwnd per window of ACKs: at most
    # one MSS per RTT (no faster than TCP), and close to it over many RTTs.
    assert all(0.5 * MSS < g <= MSS for g in growth), growth
    assert 0.85 * 20 * MSS < windows[-1] - windows[0] <= 20 * MSS
    assert cc.queuing_delay == 0.0


def test_slow_start_doubles_until_delay_signal() -> None:
    cc = Ledbat()
    now = 0.0
    for _ in range(5):
        before = cc.cwnd
        now += 0.001
        ack_window(cc, 500, now)
        assert cc.cwnd == 2 * before
    assert cc.in_slow_start
    # Queuing delay reaches TARGET/2 (once the MIN filter's CURRENT_FILTER = 4 samples all
    # show it): slow start ends, growth becomes additive.
    for _ in range(4):
        cc.on_ack(MSS, 500 + 60_000, now)
    assert not cc.in_slow_start
    before = cc.cwnd
    ack_window(cc, 500 + 60_000, now + 0.1)
    assert before < cc.cwnd < before + MSS


def test_shrinks_when_delay_above_target() -> None:
    cc = Ledbat(slow_start=False)
    now = 0.0
    for _ in range(30):
        now += 0.01
        ack_window(cc, 1000, now)
    grown = cc.cwnd
    assert grown > 20 * MSS
    # Queuing delay of 200 ms = 2·TARGET: off_target = −1, cwnd falls by ~1 MSS per window.
    now += 0.01
    ack_window(cc, 1000 + 200_000, now)
    assert cc.queuing_delay == pytest.approx(0.2)
    assert grown - 1.5 * MSS < cc.cwnd < grown - 0.5 * MSS
    for _ in range(100):
        now += 0.01
        ack_window(cc, 1000 + 200_000, now)
    assert cc.cwnd == 2 * MSS  # MIN_CWND floor


def test_steady_at_target() -> None:
    cc = Ledbat(slow_start=False)
    cc.on_ack(MSS, 1000, 0.0)
    for _ in range(4):  # fill the CURRENT_FILTER with exactly TARGET of queuing delay
        cc.on_ack(MSS, 1000 + 100_000, 0.01)
    before = cc.cwnd
    for _ in range(50):
        cc.on_ack(MSS, 1000 + 100_000, 0.02)
    assert cc.cwnd == before
    assert cc.queuing_delay == pytest.approx(cc.target)


def test_target_is_tunable_for_live() -> None:
    # RFC 7574 §8.15: a live deployer may raise TARGET for a more aggressive stream.
    default, aggressive = Ledbat(slow_start=False), Ledbat(slow_start=False, target=0.5)
    change = {}
    for cc in (default, aggressive):
        for _ in range(20):
            ack_window(cc, 1000, 0.01)
        for _ in range(4):
            cc.on_ack(MSS, 1000 + 200_000, 0.02)
        start = cc.cwnd
        ack_window(cc, 1000 + 200_000, 0.02)
        change[cc.target] = cc.cwnd - start
    assert change[0.1] < 0 < change[0.5]


def test_halves_on_loss_once_per_rtt() -> None:
    cc = Ledbat()
    cc.on_rtt_sample(0.05, 0.0)
    for i in range(6):
        ack_window(cc, 0, 0.01 * i)
    big = cc.cwnd
    cc.on_loss(1.0)
    assert cc.cwnd == big // 2
    assert not cc.in_slow_start
    cc.on_loss(1.02)  # same RTT: no second reduction (RFC 6817 §2.4.2)
    assert cc.cwnd == big // 2
    cc.on_loss(1.06)
    assert cc.cwnd == big // 4
    for t in range(20):
        cc.on_loss(2.0 + t)
    assert cc.cwnd == 2 * MSS


def test_timeout_collapses_to_one_mss_and_backs_off() -> None:
    cc = Ledbat(min_rto=0.2)
    cc.on_rtt_sample(0.1, 0.0)
    for i in range(5):
        ack_window(cc, 0, 0.01 * i)
    big = cc.cwnd
    rto = cc.rto()
    cc.on_timeout(1.0)
    assert cc.cwnd == MSS
    assert not cc.can_send(MSS)
    assert cc.rto() == pytest.approx(2 * rto)  # RFC 6298 §5.5
    # Recovery: slow start back towards half the old window, then additive growth.
    assert cc.in_slow_start
    cc.on_ack(MSS, 0, 3.0)
    assert cc.cwnd == 2 * MSS
    for i in range(10):
        ack_window(cc, 0, 3.0 + 0.01 * i)
    # 4 windows of slow start reach ssthresh = 32 KiB, then 6 of at most 1 MSS each.
    assert big // 2 <= cc.cwnd <= big // 2 + 6 * MSS
    assert not cc.in_slow_start
    cc.on_timeout(4.0)
    cc.on_timeout(5.0)
    assert cc.rto() == pytest.approx(8 * rto)
    cc.on_rtt_sample(0.1, 6.0)
    assert cc.rto() < rto + 1e-9  # a fresh sample ends the back-off (RFC 6298 §5.7)


def test_timeout_without_slow_start_stays_additive() -> None:
    cc = Ledbat(slow_start=False)
    ack_window(cc, 0, 0.0)
    cc.on_timeout(1.0)
    assert cc.cwnd == MSS and not cc.in_slow_start
    cc.on_ack(MSS, 0, 1.1)
    cc.on_ack(MSS, 0, 1.1)
    assert cc.cwnd < 3 * MSS


def test_base_delay_tracks_minimum_over_base_history_minutes() -> None:
    cc = Ledbat(base_history=10)
    cc.on_ack(MSS, 5000, 0.0)
    cc.on_ack(MSS, 4000, 30.0)  # a lower sample in the same minute lowers it at once
    assert cc.base_delay_us == 4000
    # The path's base delay rises (route change) from minute 1 on: the old minimum is kept
    # until it leaves the BASE_HISTORY window, and meanwhile shows up as queuing delay.
    for minute in range(1, 10):
        for _ in range(4):  # CURRENT_FILTER samples
            cc.on_ack(MSS, 8000, 60.0 * minute + 1)
        assert cc.base_delay_us == 4000
        assert cc.queuing_delay == pytest.approx(0.004)
    cc.on_ack(MSS, 8000, 60.0 * 10 + 1)
    assert cc.base_delay_us == 8000
    assert cc.queuing_delay == 0.0
    # A drop is taken immediately.
    cc.on_ack(MSS, 7000, 60.0 * 10 + 2)
    assert cc.base_delay_us == 7000


def test_base_history_ring_keeps_each_minutes_minimum() -> None:
    cc = Ledbat(base_history=3)
    for minute, delay in enumerate([900, 300, 500, 700, 800]):
        cc.on_ack(MSS, delay + 50, 60.0 * minute)
        cc.on_ack(MSS, delay, 60.0 * minute + 30)
    # Minutes 2, 3, 4 remain: min(500, 700, 800).
    assert cc.base_delay_us == 500


def test_current_delay_filter_ignores_a_single_delay_spike() -> None:
    # FILTER = MIN over CURRENT_FILTER samples (RFC 6817 §2.4.2): one late packet (noise)
    # does not read as queuing; CURRENT_FILTER of them in a row do.
    cc = Ledbat(current_filter=4)
    for _ in range(4):
        cc.on_ack(MSS, 1000, 0.0)
    cc.on_ack(MSS, 51_000, 0.1)
    assert cc.queuing_delay == 0.0
    for _ in range(2):
        cc.on_ack(MSS, 51_000, 0.1)
    assert cc.queuing_delay == 0.0
    cc.on_ack(MSS, 51_000, 0.1)
    assert cc.queuing_delay == pytest.approx(0.05)
    cc.on_ack(MSS, 1000, 0.2)  # a fast packet shows the queue has drained
    assert cc.queuing_delay == 0.0


def test_negative_delay_samples_from_unsynchronised_clocks() -> None:
    # The receiver's clock is 10 s behind: samples are "negative" and wrap in 64 bits.
    sent_us = 1_795_294_699_000_000
    cc = Ledbat()
    sample = one_way_delay_sample(sent_us, sent_us - 10_000_000 + 300)
    assert sample > 1 << 63
    cc.on_ack(MSS, sample, 0.0)
    for _ in range(4):
        cc.on_ack(MSS, one_way_delay_sample(sent_us, sent_us - 10_000_000 + 20_300), 0.1)
    assert cc.base_delay_us == -10_000_000 + 300
    assert cc.queuing_delay == pytest.approx(0.02)


def test_one_way_delay_sample() -> None:
    assert one_way_delay_sample(1000, 1250) == 250
    assert one_way_delay_sample(1250, 1000) == (1 << 64) - 250


def test_flight_size_caps_growth() -> None:
    # RFC 6817 §2.4.2: cwnd ≤ flightsize + ALLOWED_INCREASE·MSS (no growth while idle).
    cc = Ledbat()
    for _ in range(100):
        cc.on_ack(MSS, 0, 0.0, flight_size=2 * MSS)
    assert cc.cwnd == 3 * MSS


def test_max_cwnd_cap_is_configurable() -> None:
    cc = Ledbat()
    for i in range(20):
        ack_window(cc, 0, 0.001 * i)
    assert cc.cwnd == 4 * MiB
    small = Ledbat(max_cwnd=64 * 1024)
    for i in range(20):
        ack_window(small, 0, 0.001 * i)
    assert small.cwnd == 64 * 1024


def _time_to_rate(cc: Ledbat, rtt: float, rate: float, limit: float) -> float:
    """Simulated time until the window sustains ``rate`` bytes/s on a path of ``rtt``
    with no queue (one-way delay constant), ACKing each chunk."""
    now = 0.0
    while cc.cwnd / rtt < rate:
        assert now < limit, f"cwnd stuck at {cc.cwnd} after {now:.4f} s"
        now += rtt
        ack_window(cc, 50, now)
    return now


@pytest.mark.parametrize("slow_start", [True, False])
def test_reaches_50_mib_per_s_on_100_us_rtt(slow_start: bool) -> None:
    cc = Ledbat(slow_start=slow_start)
    assert _time_to_rate(cc, 100e-6, 50 * MiB, limit=0.01) <= 0.001


def test_reaches_50_mib_per_s_on_2_ms_effective_rtt() -> None:
    # In Python the effective RTT includes event-loop latency: a few ms, not 100 µs.
    cc = Ledbat()
    assert _time_to_rate(cc, 2e-3, 50 * MiB, limit=0.1) <= 0.02


def test_rto_computation() -> None:
    cc = Ledbat(min_rto=0.2, max_rto=60.0)
    cc.on_rtt_sample(0.1, 0.0)
    # First sample: SRTT = R, RTTVAR = R/2, RTO = SRTT + 4·RTTVAR (RFC 6298 §2.2).
    assert cc.srtt == pytest.approx(0.1)
    assert cc.rto() == pytest.approx(0.3)
    cc.on_rtt_sample(0.3, 0.1)
    # RTTVAR = 3/4·0.05 + 1/4·|0.1 − 0.3| = 0.0875; SRTT = 7/8·0.1 + 1/8·0.3 = 0.125.
    assert cc.srtt == pytest.approx(0.125)
    assert cc.rto() == pytest.approx(0.125 + 4 * 0.0875)
    fast = Ledbat(min_rto=0.2)
    for i in range(20):
        fast.on_rtt_sample(0.0001, i)
    assert fast.rto() == 0.2  # clamped to min_rto
    slow = Ledbat(max_rto=5.0)
    slow.on_rtt_sample(3.0, 0.0)
    assert slow.rto() == 5.0
    for _ in range(30):
        slow.on_timeout(1.0)
    assert slow.rto() == 5.0
    slow.on_rtt_sample(-1.0, 2.0)  # nonsense samples are ignored
    assert slow.srtt == pytest.approx(3.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mss": 0},
        {"target": 0},
        {"gain": 0},
        {"base_history": 0},
        {"current_filter": 0},
        {"min_cwnd": 0},
        {"max_cwnd": 1000},
        {"min_rto": 2.0},
    ],
)
def test_rejects_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Ledbat(**kwargs)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ack", "loss", "timeout", "rtt"]),
            st.integers(0, 64 * 1024),
            st.integers(0, (1 << 64) - 1),
            st.floats(0, 0.5),
        ),
        max_size=60,
    )
)
def test_invariants_under_random_events(events: list[tuple[str, int, int, float]]) -> None:
    cc = Ledbat()
    now = 0.0
    for kind, nbytes, delay, dt in events:
        now += dt
        if kind == "ack":
            cc.on_ack(nbytes, delay, now)
            assert 2 * MSS <= cc.cwnd <= 4 * MiB
        elif kind == "loss":
            cc.on_loss(now)
        elif kind == "timeout":
            cc.on_timeout(now)
            assert cc.cwnd == MSS
        else:
            cc.on_rtt_sample(dt, now)
        assert MSS <= cc.cwnd <= 4 * MiB
        assert 0.2 <= cc.rto() <= 60.0
