"""Smoke tests of the fast-channel-change and cacher-capacity benchmarks (bench/fcc.py,
bench/cacher_capacity.py) at a tiny size: the result structure, and that push beats no push in
round trips. No timing thresholds: only orderings that hold by a whole round trip."""

from __future__ import annotations

import asyncio
import statistics

import pytest

from bench import cacher_capacity, fcc
from bench.__main__ import validate

#: A delay that dwarfs this loaded machine's scheduling noise, without jitter (reordering
#: costs the push a retransmission timeout: bench/fcc.py notes).
DELAY = 0.05
LOAD = (0.0, 0.0, 0.0)


@pytest.mark.slow
def test_fcc_push_beats_no_push_in_round_trips() -> None:
    conditions = (("loopback", 0.0, 0.0), ("wan", DELAY, 0.0))
    results = asyncio.run(fcc.measure(3, 1, conditions))
    assert set(results) == {"loopback", "wan"}
    for legs in results.values():
        assert set(legs) == set(fcc.LEGS)
        assert [len(legs[leg]) for leg in fcc.LEGS] == [3, 1, 3, 3]
        for zaps in legs.values():
            assert all(z.ok and z.established is not None for z in zaps)
        # Structure of the push: early to a validated address, after the third datagram on a
        # first contact, not at all without push.
        assert all(z.early_push and z.chunks_pushed == fcc.PUSH_HEAD for z in legs["push_warm"])
        first = legs["push_first_contact"]
        assert all(not z.early_push and z.chunks_pushed == fcc.PUSH_HEAD for z in first)
        assert all(z.chunks_pushed == 0 for z in legs["nopush_warm"])
        # Cold: nothing can go early; the REQUEST is held until the segment is filled.
        assert not any(z.early_push for z in legs["nopush_cold"])

    wan = results["wan"]
    rtt = statistics.median(z.established or 0.0 for z in wan["nopush_warm"])
    assert rtt >= 2 * DELAY

    def round_trips(leg: str) -> float:
        return statistics.median(z.first_frame[8] for z in wan[leg]) / rtt

    # Push to a viewer already talking to the cacher: about one round trip; every other leg
    # needs at least one more.
    assert round_trips("push_warm") + 0.5 < round_trips("push_first_contact")
    assert round_trips("push_warm") + 0.5 < round_trips("nopush_warm")
    assert round_trips("push_warm") + 0.5 < round_trips("nopush_cold")

    summary = fcc.summarize(results)
    assert set(summary["conditions"]) == {"loopback", "wan"}
    th = summary["conditions"]["wan"]["thresholds"][8]
    assert th["ratio_nopush_warm"] > 1.0 and th["ratio_nopush_cold"] > 1.0
    result = fcc.report(results, 3, 1, 1.0, LOAD)
    assert validate(result) is None
    assert result["name"] == "fcc" and result["notes"]


@pytest.mark.slow
def test_cacher_capacity_runs_a_tiny_ramp() -> None:
    steps = cacher_capacity.measure((4,), duration=2.0, processes=1)
    assert [s["n"] for s in steps] == [4]
    step = steps[0]
    assert 0.0 <= step["q1_min"] <= step["q1_median"] <= 1.0
    assert 0.0 <= step["q1"] <= 1.0
    assert step["never_started"] == 0
    assert step["mbit_s"] > 0 and step["cacher_cpu_pct"] >= 0
    assert len(step["viewer_cpu_pct"]) == 1
    result = cacher_capacity.report(steps, (4,), 2.0, 1.0, LOAD)
    assert validate(result) is None
    assert result["rows"][0]["metric"].startswith("largest N")


@pytest.mark.slow
def test_fcc_topology_leg_compares_with_a_far_core() -> None:
    topo = asyncio.run(fcc.measure_topology(3))
    assert list(topo) == list(fcc.TOPOLOGY_LEGS)
    for zaps in topo.values():
        assert len(zaps) == 3
        assert all(z.ok and z.established is not None for z in zaps)
    assert all(z.early_push and z.chunks_pushed == fcc.PUSH_HEAD for z in topo["push_warm"])
    assert all(z.chunks_pushed == 0 for z in topo["nopush_warm"])
    assert not any(z.early_push for z in topo["nopush_cold"])

    def median(leg: str, what: str = "first_frame") -> float:
        zaps = topo[leg]
        if what == "established":
            return statistics.median(z.established or 0.0 for z in zaps)
        return statistics.median(z.first_frame[8] for z in zaps)

    # The emulated topology: 2 x 5 ms to the cacher, 2 x 40 ms to the source at the core.
    rtt, rtt_core = median("nopush_warm", "established"), median("no_cacher", "established")
    assert rtt >= 2 * fcc.AREA_DELAY and rtt_core >= 2 * fcc.CORE_DELAY
    assert rtt_core > rtt + fcc.CORE_DELAY
    # A cold fill crosses the core's round trip; without a cacher, the handshake and the
    # REQUEST both do (orderings by a whole core round trip, no timing threshold).
    push = median("push_warm")
    assert push + 2 * fcc.CORE_DELAY <= median("nopush_cold")
    assert push + 2 * rtt_core <= median("no_cacher")

    results = {fcc.TOPOLOGY: topo}
    summary = fcc.summarize(results)
    th = summary["conditions"][fcc.TOPOLOGY]["thresholds"][8]
    assert th["ratio_no_cacher"] > th["ratio_nopush_cold"] > 1.0
    result = fcc.report(results, 3, 0, 1.0, LOAD)
    assert validate(result) is None
    assert any("no cacher" in r["metric"] for r in result["rows"])
