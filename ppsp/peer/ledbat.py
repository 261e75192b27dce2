"""LEDBAT sender-side congestion control for PPSPP (RFC 6817; RFC 7574 §8.15), sans-IO.

PPSPP carries LEDBAT's inputs on the wire: each DATA has the sender's µs timestamp (§8.6),
each ACK the one-way delay sample the receiver computed from it (§8.7). The channel feeds
this controller with those samples, RTT samples, losses and timeouts, and asks
:meth:`Ledbat.can_send` before sending. Time is injected (seconds, any monotonic origin).

The per-ACK path (:meth:`Ledbat.on_ack`) touches a handful of slots and two fixed-size lists
and allocates nothing, since it runs once per ACK on the data path.
"""

from __future__ import annotations

__all__ = ["Ledbat", "one_way_delay_sample"]

_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1
_NO_SAMPLE = 1 << 64  # larger than any (sign-corrected) delay sample


def one_way_delay_sample(data_timestamp_us: int, now_us: int) -> int:
    """The ACK's one-way delay sample (RFC 7574 §8.7): receive time minus the DATA's send
    timestamp, in µs, as the unsigned 64-bit field carries it.

    The peers' clocks are not synchronised, so the value includes an arbitrary offset and
    may be "negative"; it wraps modulo 2^64, and :meth:`Ledbat.on_ack` undoes the wrap. Only
    differences between samples matter (RFC 6817 §2.3).
    """
    return (now_us - data_timestamp_us) % _U64


class Ledbat:
    """One LEDBAT sender (RFC 6817 §2.4.2) with RFC 6298 retransmission timer.

    Parameters (RFC 6817 §2.5 names):

    * ``mss`` — bytes of one full datagram's payload as the caller counts bytes in flight;
      the default is RFC 7574's default chunk size, since PPSPP ACKs chunks.
    * ``target`` — TARGET in seconds. RFC 6817 caps it at 100 ms; RFC 7574 §8.15 lets a live
      deployer raise it (or the gain) for a more aggressive stream, so it is not clamped.
    * ``gain`` — GAIN (RFC 6817: MUST be ≤ 1 to ramp up no faster than TCP).
    * ``base_history`` — BASE_HISTORY, minutes of per-minute base delay minima (10).
    * ``current_filter`` — CURRENT_FILTER, samples in the MIN filter for the current delay.
    * ``init_cwnd``/``min_cwnd`` — in MSS (both 2, RFC 6817 §2.5).
    * ``allowed_increase`` — ALLOWED_INCREASE in MSS, applied when :meth:`on_ack` is told the
      flight size (cwnd may not outgrow what the sender actually uses).
    * ``max_cwnd`` — bytes; our cap (default 4 MiB, ≫ 50 MiB/s × a few ms of RTT).
    * ``slow_start`` — start in slow start (see :meth:`on_ack`).
    * ``min_rto``/``max_rto``/``initial_rto`` — retransmission timer bounds (see :meth:`rto`).
    """

    __slots__ = (
        "_backoff",
        "_base",
        "_base_index",
        "_base_min",
        "_base_minute",
        "_current",
        "_current_index",
        "_cwnd",
        "_last_reduction",
        "_queuing_delay_us",
        "_rto",
        "_rttvar",
        "_slow_start",
        "_srtt",
        "_ssthresh",
        "_target_us",
        "allowed_increase",
        "clock_granularity",
        "gain",
        "max_cwnd",
        "max_rto",
        "min_cwnd",
        "min_rto",
        "mss",
        "slow_start_exit",
        "target",
        "use_slow_start",
    )

    def __init__(
        self,
        *,
        mss: int = 1024,
        target: float = 0.100,
        gain: float = 1.0,
        base_history: int = 10,
        current_filter: int = 4,
        init_cwnd: int = 2,
        min_cwnd: int = 2,
        allowed_increase: int = 1,
        max_cwnd: int = 4 * 1024 * 1024,
        slow_start: bool = True,
        slow_start_exit: float = 0.5,
        min_rto: float = 0.2,
        max_rto: float = 60.0,
        initial_rto: float = 1.0,
        clock_granularity: float = 0.001,
    ) -> None:
        if mss <= 0 or target <= 0 or gain <= 0 or base_history < 1 or current_filter < 1:
            raise ValueError("mss, target, gain, base_history and current_filter must be > 0")
        if min_cwnd < 1 or init_cwnd < 1 or allowed_increase <= 0:
            raise ValueError("min_cwnd, init_cwnd and allowed_increase must be ≥ 1")
        if max_cwnd < min_cwnd * mss:
            raise ValueError("max_cwnd must hold at least min_cwnd datagrams")
        if not 0 < min_rto <= initial_rto <= max_rto:
            raise ValueError("need 0 < min_rto ≤ initial_rto ≤ max_rto")
        self.mss = mss
        self.target = target
        self._target_us = target * 1e6
        self.gain = gain
        self.min_cwnd = min_cwnd
        self.allowed_increase = allowed_increase
        self.max_cwnd = max_cwnd
        self.slow_start_exit = slow_start_exit
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.clock_granularity = clock_granularity
        self._cwnd: float = float(min(init_cwnd * mss, max_cwnd))
        self.use_slow_start = slow_start
        self._slow_start = slow_start
        # Slow start also ends at ssthresh (RFC 5681 §3.1), which only a timeout lowers.
        self._ssthresh: float = float(max_cwnd)
        # RFC 6817 §2.4.2 base_delays: one minimum per minute, a ring of BASE_HISTORY slots.
        self._base = [_NO_SAMPLE] * base_history
        self._base_index = 0
        self._base_minute: int | None = None
        self._base_min = _NO_SAMPLE
        # current_delays: a ring of CURRENT_FILTER slots, FILTER() = MIN.
        self._current = [_NO_SAMPLE] * current_filter
        self._current_index = 0
        self._queuing_delay_us = 0
        self._last_reduction = float("-inf")
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._rto = initial_rto
        self._backoff = 1

    # -- state --------------------------------------------------------------------------------

    @property
    def cwnd(self) -> int:
        """Congestion window in bytes."""
        return int(self._cwnd)

    @property
    def in_slow_start(self) -> bool:
        return self._slow_start

    @property
    def base_delay_us(self) -> int | None:
        """Minimum one-way delay over the last BASE_HISTORY minutes (µs, clock offset
        included), or None before the first sample."""
        return None if self._base_min == _NO_SAMPLE else self._base_min

    @property
    def queuing_delay(self) -> float:
        """Latest queuing delay estimate in seconds (RFC 6817 §2.4.2)."""
        return self._queuing_delay_us / 1e6

    @property
    def srtt(self) -> float | None:
        return self._srtt

    def can_send(self, bytes_in_flight: int) -> bool:
        """True if another datagram fits the window (at most one datagram overshoots)."""
        return bytes_in_flight < self._cwnd

    # -- events -------------------------------------------------------------------------------

    def on_ack(
        self,
        bytes_acked: int,
        one_way_delay_us: int,
        now: float,
        flight_size: int | None = None,
    ) -> None:
        """An ACK for ``bytes_acked`` new bytes with its one-way delay sample (§8.7).

        ``flight_size``, if given, is the bytes in flight *before* this ACK (so including the
        acknowledged bytes); RFC 6817 §2.4.2 then caps cwnd at flight + ALLOWED_INCREASE·MSS.

        Start-up: RFC 6817 leaves it open but forbids ramping faster than TCP. While
        ``in_slow_start`` cwnd grows by the bytes acknowledged (TCP slow start, RFC 5681
        §3.1, doubling per RTT), and slow start ends at the first delay signal: a queuing
        delay of ``slow_start_exit``·TARGET, a loss or a timeout. Without this, going from
        2 MSS to the megabytes a fast path needs would take thousands of RTTs.
        """
        delay = one_way_delay_us
        if delay > _I64_MAX:  # undo the unsigned wrap of a "negative" sample
            delay -= _U64

        # update_base_delay: a new slot each minute, else keep the minute's minimum.
        minute = int(now // 60.0)
        base = self._base
        if minute != self._base_minute:
            self._base_minute = minute
            self._base_index = (self._base_index + 1) % len(base)
            base[self._base_index] = delay
            self._base_min = min(base)  # once a minute: the dropped slot may have been the min
        else:
            if delay < base[self._base_index]:
                base[self._base_index] = delay
            if delay < self._base_min:
                self._base_min = delay

        # update_current_delay + FILTER (MIN of the last CURRENT_FILTER samples).
        current = self._current
        current[self._current_index] = delay
        self._current_index = (self._current_index + 1) % len(current)
        queuing_delay = min(current) - self._base_min
        self._queuing_delay_us = queuing_delay

        cwnd = self._cwnd
        if self._slow_start and queuing_delay < self.slow_start_exit * self._target_us:
            cwnd += bytes_acked
            if cwnd >= self._ssthresh:
                self._slow_start = False
        else:
            self._slow_start = False  # first delay signal: congestion avoidance from here
            off_target = (self._target_us - queuing_delay) / self._target_us
            cwnd += self.gain * off_target * bytes_acked * self.mss / cwnd
        if flight_size is not None:
            max_allowed = flight_size + self.allowed_increase * self.mss
            if cwnd > max_allowed:
                cwnd = max_allowed
        floor = self.min_cwnd * self.mss
        if cwnd < floor:
            cwnd = floor
        elif cwnd > self.max_cwnd:
            cwnd = self.max_cwnd
        self._cwnd = cwnd

    def on_loss(self, now: float) -> None:
        """A datagram was lost: halve cwnd, at most once per RTT (RFC 6817 §2.4.2), never
        below MIN_CWND; leaves slow start."""
        rtt = self._srtt if self._srtt is not None else self._rto
        if now - self._last_reduction < rtt:
            return
        self._last_reduction = now
        self._cwnd = min(self._cwnd, max(self._cwnd / 2, self.min_cwnd * self.mss))
        self._slow_start = False

    def on_timeout(self, now: float) -> None:
        """No ACK for an RTO (RFC 6817's CTO): cwnd collapses to 1 MSS (RFC 6817 §2.4.2) and
        the timer backs off (RFC 6298 §5.5). Slow start may climb back to half the old
        window, as TCP does after a timeout (RFC 5681 §3.1), unless slow start is disabled."""
        if self.use_slow_start:
            self._ssthresh = max(self._cwnd / 2, self.min_cwnd * self.mss)
            self._slow_start = True
        self._cwnd = float(self.mss)
        self._last_reduction = now
        self._backoff = min(self._backoff * 2, 1 << 16)

    def on_rtt_sample(self, rtt: float, now: float) -> None:
        """An RTT measurement in seconds (RFC 6298 §2.2–2.3; α = 1/8, β = 1/4, K = 4).

        ``now`` is accepted for symmetry with the other events; the estimator does not age.
        """
        if rtt < 0:
            return
        if self._srtt is None:
            self._srtt = rtt
            self._rttvar = rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt
        self._rto = self._srtt + max(self.clock_granularity, 4 * self._rttvar)
        self._backoff = 1  # RFC 6298 §5.7: a fresh sample ends the back-off

    def rto(self, now: float | None = None) -> float:
        """Retransmission (congestion) timeout in seconds, RFC 6298 clamped to
        [``min_rto``, ``max_rto``] and doubled per unanswered timeout.

        ``min_rto`` defaults to 0.2 s, not RFC 6298 §2.4's 1 s: that floor dates from
        coarse-grained timers, and our paths are CDN-to-viewer paths of a few to tens of ms,
        where a 1 s floor would stall a live stream for a second per tail loss. 200 ms is
        what Linux TCP uses in practice and stays well above a loopback or LAN RTT plus ACK
        processing, so spurious timeouts (which collapse cwnd) stay rare. PPSPP resends are
        idempotent (RFC 7574 §8.2), so an early retransmission costs only bandwidth.
        Before any RTT sample the RTO is ``initial_rto`` (1 s, RFC 6298 §2.1).
        """
        rto = self._rto * self._backoff
        if rto < self.min_rto:
            return self.min_rto
        return rto if rto < self.max_rto else self.max_rto
