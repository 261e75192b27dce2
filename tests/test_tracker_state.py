"""The sans-IO tracker (ppsp.tracker.state) against RFC 7846 §2.3, §4.1 Table 6, §4.3 and our
P2P CDN policies (DESIGN §1: F2 availability, F3 peer selection, F4 push hints, F5 global info)."""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppsp.peer.ranges import ChunkSet
from ppsp.tracker.messages import (
    Action,
    AddressType,
    AvailabilityDelta,
    Connect,
    ErrorCode,
    Find,
    GlobalInfoMessage,
    HintUnit,
    PeerAddress,
    PeerMode,
    PeerNum,
    PushHintMessage,
    Request,
    Response,
    ResponseType,
    Role,
    StatQuery,
    StatReport,
    StreamStats,
    SwarmAction,
    SwarmAvailability,
)
from ppsp.tracker.state import PeerState, Tracker, TrackerConfig, TrackerState

OK = ResponseType.SUCCESSFUL
FAILED = ResponseType.FAILED
SEEDER = PeerMode.SEEDER
LEECH = PeerMode.LEECH
JOIN = Action.JOIN
LEAVE = Action.LEAVE
SRC = ("192.0.2.7", 40000)


def sid(n: int) -> str:
    """A swarm ID as the tracker sees PPSPP's: hex of a SHA-256 root hash."""
    return hashlib.sha256(str(n).encode()).hexdigest()


A, B, C = sid(1), sid(2), sid(3)
_tids = itertools.count(1)


def tid() -> str:
    return str(next(_tids))


def make(now: float = 0.0, seed: int = 0, **cfg: object) -> Tracker:
    return Tracker(TrackerConfig(**cfg), now, rng=random.Random(seed))  # type: ignore[arg-type]


def connect(
    t: Tracker,
    peer: str,
    *actions: tuple[str, Action, PeerMode],
    now: float = 1.0,
    source: tuple[str, int] = SRC,
    **kw: object,
) -> Response:
    req = Connect(peer, tid(), [SwarmAction(*a) for a in actions], **kw)  # type: ignore[arg-type]
    return t.handle(req, source, now)


def find(t: Tracker, peer: str, swarm: str, now: float = 1.0, **kw: object) -> Response:
    return t.handle(Find(peer, tid(), swarm, **kw), SRC, now)  # type: ignore[arg-type]


def report(t: Tracker, peer: str, now: float = 1.0, **kw: object) -> Response:
    return t.handle(StatReport(peer, tid(), **kw), SRC, now)  # type: ignore[arg-type]


def ids(resp: Response, i: int = 0) -> list[str]:
    peers = resp.swarm_results[i].peers
    assert peers is not None
    return [p.peer_id for p in peers]


def failed_with(resp: Response, code: ErrorCode) -> bool:
    """§4.3: an error is response_type 1, the code, and an empty body."""
    return (
        resp.response_type is FAILED
        and resp.error_code is code
        and resp.peer_address is None
        and not resp.swarm_results
    )


def avail(swarm: str, *ranges: tuple[int, int], mode: PeerMode = SEEDER) -> SwarmAvailability:
    return SwarmAvailability(swarm, mode, Role.CACHER, list(ranges))


# ---------------------------------------------------------------------------- §2.3 machines


def test_tracker_state_machine_init_started_terminated() -> None:
    t = make()
    states = [t.state]
    assert connect(t, "p1", (A, JOIN, LEECH)).response_type is OK
    states.append(t.state)
    assert connect(t, "p1", (A, LEAVE, LEECH)).response_type is OK
    states.append(t.state)
    # Figure 4: the last peer gone → TERMINATED (transient) → INIT.
    assert states == [TrackerState.INIT, TrackerState.STARTED, TrackerState.INIT]
    assert t.stats()["tracker_terminations"] == 1


def test_leech_connect_registers_tracks_and_gets_a_peer_list() -> None:
    t = make()
    connect(t, "seed", (A, JOIN, SEEDER), peer_addresses=[PeerAddress("198.51.100.1", 7000)])
    resp = connect(t, "leech", (A, JOIN, LEECH), source=("203.0.113.5", 5555))
    assert resp.response_type is OK and resp.error_code is ErrorCode.NO_ERROR
    assert t.peer_state("leech") is PeerState.TRACKING
    # §4.1.1: the requester's reflexive address, and for LEECH a peer list with addresses.
    assert resp.peer_address == PeerAddress("203.0.113.5", 5555, type=AddressType.REFLEXIVE)
    (result,) = resp.swarm_results
    assert result.swarm_id == A and result.result is OK
    assert result.peers is not None and [p.peer_id for p in result.peers] == ["seed"]
    assert result.peers[0].addresses == [PeerAddress("198.51.100.1", 7000)]


def test_peer_without_declared_address_is_listed_at_its_source() -> None:
    t = make()
    connect(t, "seed", (A, JOIN, SEEDER), source=("198.51.100.9", 6000))
    resp = connect(t, "leech", (A, JOIN, LEECH))
    assert resp.swarm_results[0].peers is not None
    (info,) = resp.swarm_results[0].peers
    assert info.addresses == [PeerAddress("198.51.100.9", 6000, type=AddressType.REFLEXIVE)]


def test_seeder_connect_gets_a_peer_list_only_with_peer_num() -> None:
    t = make()
    connect(t, "l1", (A, JOIN, LEECH))
    resp = connect(t, "s1", (A, JOIN, SEEDER), (B, JOIN, SEEDER))
    assert [r.result for r in resp.swarm_results] == [OK, OK]
    assert all(r.peers is None for r in resp.swarm_results)
    resp = connect(t, "s2", (A, JOIN, SEEDER), peer_num=PeerNum(5))
    assert sorted(ids(resp)) == ["l1", "s1"]


def test_register_only_connect_waits_in_peer_registered_until_init_timer() -> None:
    t = make(init_timer=30.0, track_timer=120.0)
    resp = connect(t, "c1", now=0.0, role=Role.CACHER, area="x")
    assert resp.response_type is OK and resp.swarm_results == []
    assert t.peer_state("c1") is PeerState.PEER_REGISTERED
    assert t.stats()["peers_by_state"] == {"PEER_REGISTERED": 1, "TRACKING": 0}
    assert t.next_timer() is not None and t.next_timer() <= 30.0  # type: ignore[operator]
    t.handle_timer(29.0)
    assert t.peer_state("c1") is PeerState.PEER_REGISTERED
    t.handle_timer(30.0)  # the init timer expired: the registration is deleted
    assert t.peer_state("c1") is None
    assert t.stats()["expired"] == 1


def test_stat_report_moves_peer_registered_to_tracking_with_the_track_timer() -> None:
    t = make(init_timer=30.0, track_timer=120.0)
    connect(t, "c1", now=0.0, role=Role.CACHER)
    assert report(t, "c1", now=10.0).response_type is OK  # a keep-alive (§4.1.3)
    assert t.peer_state("c1") is PeerState.TRACKING
    t.handle_timer(100.0)
    assert t.peer_state("c1") is PeerState.TRACKING
    t.handle_timer(130.0)
    assert t.peer_state("c1") is None


def test_find_in_peer_registered_moves_to_tracking() -> None:
    t = make()
    connect(t, "s", (A, JOIN, SEEDER))
    connect(t, "p", now=0.0)
    resp = find(t, "p", A, now=1.0)
    assert resp.response_type is OK and ids(resp) == ["s"]
    assert t.peer_state("p") is PeerState.TRACKING  # §2.3.1 step 2b


def test_track_timer_expiry_cleans_every_swarm_and_deletes() -> None:
    t = make(track_timer=120.0)
    connect(t, "s", (A, JOIN, SEEDER), (B, JOIN, SEEDER), now=0.0)
    connect(t, "l", (A, JOIN, LEECH), now=50.0)
    assert t.next_timer() == 120.0
    t.handle_timer(120.0)  # (D)
    assert t.peer_state("s") is None
    assert t.peers_of(A) == {"l": LEECH}
    assert t.peers_of(B) == {}
    assert t.stats()["swarms"] == 1
    t.check_invariants()


@pytest.mark.parametrize("keepalive", ["find", "stat_report", "connect", "stat_query"])
def test_valid_requests_reset_the_track_timer(keepalive: str) -> None:
    t = make(track_timer=120.0)
    connect(t, "s", (A, JOIN, SEEDER), now=0.0)
    connect(t, "l", (A, JOIN, LEECH), now=0.0)
    if keepalive == "find":
        assert find(t, "l", A, now=100.0).response_type is OK
    elif keepalive == "stat_report":
        assert report(t, "l", now=100.0).response_type is OK
    elif keepalive == "connect":
        assert connect(t, "l", now=100.0).response_type is OK  # an action-less CONNECT
    else:
        assert t.handle(StatQuery("l", tid()), SRC, 100.0).response_type is OK
    t.handle_timer(150.0)
    assert t.peer_state("s") is None
    assert t.peer_state("l") is PeerState.TRACKING
    t.handle_timer(220.0)
    assert t.peer_state("l") is None
    assert t.state is TrackerState.INIT


def test_next_timer_is_none_when_idle() -> None:
    t = make()
    assert t.next_timer() is None
    connect(t, "p", (A, JOIN, LEECH), now=0.0)
    t.handle_timer(1e6)
    assert t.next_timer() is None


# ---------------------------------------------------------------------------- §2.3.2 errors


def test_a_connect_with_only_invalid_actions_from_start_is_refused() -> None:
    t = make()
    resp = connect(t, "p", (A, LEAVE, LEECH))
    assert failed_with(resp, ErrorCode.FORBIDDEN_ACTION)
    assert t.peer_state("p") is None and t.state is TrackerState.INIT


def test_a_connect_with_only_invalid_actions_deletes_a_peer_registered_peer() -> None:
    t = make()
    connect(t, "p")
    assert t.peer_state("p") is PeerState.PEER_REGISTERED
    resp = connect(t, "p", (A, JOIN, LEECH), (B, JOIN, LEECH))  # (A): two LEECH JOINs
    assert failed_with(resp, ErrorCode.FORBIDDEN_ACTION)
    assert t.peer_state("p") is None


@pytest.mark.parametrize("request_kind", ["find", "stat_report", "stat_query"])
@pytest.mark.parametrize("code", [ErrorCode.FORBIDDEN_ACTION, ErrorCode.AUTHENTICATION_REQUIRED])
def test_unregistered_peer_id_gets_03_or_06(request_kind: str, code: ErrorCode) -> None:
    t = make(unregistered_error=code)
    connect(t, "s", (A, JOIN, SEEDER))
    if request_kind == "find":
        resp = find(t, "ghost", A)
    elif request_kind == "stat_report":
        resp = report(t, "ghost")
    else:
        resp = t.handle(StatQuery("ghost", tid()), SRC, 1.0)
    assert failed_with(resp, code)  # (B)
    assert t.peer_state("ghost") is None


@pytest.mark.parametrize("peer_id", ["", "x" * 257])
def test_malformed_peer_id_is_refused(peer_id: str) -> None:
    t = make()
    assert failed_with(connect(t, peer_id, (A, JOIN, LEECH)), ErrorCode.FORBIDDEN_ACTION)
    assert t.stats()["peers"] == 0


def test_unsupported_version_gets_02() -> None:
    t = make()
    req = Connect("p", tid(), [SwarmAction(A, JOIN, LEECH)], version=2)
    assert failed_with(t.handle(req, SRC, 0.0), ErrorCode.UNSUPPORTED_VERSION)
    assert t.peer_state("p") is None


def test_find_for_an_unknown_swarm_is_an_error_and_does_not_reset_the_timer() -> None:
    t = make(track_timer=120.0)
    connect(t, "l", (A, JOIN, LEECH), now=0.0)
    assert failed_with(find(t, "l", B, now=100.0), ErrorCode.FORBIDDEN_ACTION)  # (C)
    assert t.peer_state("l") is PeerState.TRACKING  # stays
    t.handle_timer(121.0)
    assert t.peer_state("l") is None  # the failed FIND did not reset the track timer


def test_stat_report_for_a_swarm_not_joined_is_refused_atomically() -> None:
    t = make()
    connect(t, "c", (A, JOIN, SEEDER), availability=[avail(A, (0, 9))])
    resp = report(
        t,
        "c",
        stats=[StreamStats(B, uploaded_bytes=5)],
        deltas=[AvailabilityDelta(A, cached=[(10, 19)])],
    )
    assert failed_with(resp, ErrorCode.FORBIDDEN_ACTION)  # (C)
    assert t.availability("c", A) == ChunkSet([(0, 9)])  # nothing applied
    resp = report(t, "c", stats=[StreamStats(A, uploaded_bytes=5)])
    assert resp.response_type is OK
    assert [(r.swarm_id, r.result) for r in resp.swarm_results] == [(A, OK)]


# ---------------------------------------------------------------------------- Table 6


def test_table6_leech_leave_from_start_is_invalid() -> None:
    t = make()
    assert failed_with(connect(t, "p", (A, LEAVE, LEECH)), ErrorCode.FORBIDDEN_ACTION)
    assert t.peer_state("p") is None


def test_table6_leech_join_and_leave_from_start_is_invalid() -> None:
    t = make()
    resp = connect(t, "p", (A, JOIN, LEECH), (B, LEAVE, LEECH))
    assert failed_with(resp, ErrorCode.FORBIDDEN_ACTION)
    assert t.peer_state("p") is None


def test_table6_leech_leave_from_tracking_terminates() -> None:
    t = make()
    connect(t, "s", (A, JOIN, SEEDER))
    connect(t, "p", (A, JOIN, LEECH))
    resp = connect(t, "p", (A, LEAVE, LEECH))
    assert resp.response_type is OK and resp.swarm_results[0].result is OK
    assert t.peer_state("p") is None  # final state TERMINATE
    assert t.peers_of(A) == {"s": SEEDER}


def test_table6_channel_switch_is_leave_old_and_join_new_in_one_connect() -> None:
    t = make()
    connect(t, "s", (A, JOIN, SEEDER), (B, JOIN, SEEDER))
    connect(t, "p", (A, JOIN, LEECH), area="x")
    connect(t, "q", (A, JOIN, LEECH), area="x")
    assert t.popularity(A) is not None and t.popularity(A).viewers == 2  # type: ignore[union-attr]
    resp = connect(t, "p", (A, LEAVE, LEECH), (B, JOIN, LEECH))
    assert resp.response_type is OK
    assert [(r.swarm_id, r.result) for r in resp.swarm_results] == [(A, OK), (B, OK)]
    assert resp.swarm_results[0].peers is None
    assert ids(resp, 1) == ["s"]  # a peer list for the new channel
    assert t.swarms_of("p") == {B: LEECH}
    assert t.peer_state("p") is PeerState.TRACKING
    assert t.popularity(A).viewers == 1  # type: ignore[union-attr]
    assert t.popularity(B).viewers == 1  # type: ignore[union-attr]
    t.check_invariants()  # per-area viewer counts included


@pytest.mark.parametrize(
    "actions",
    [
        [(C, JOIN, LEECH)],  # a JOIN without a LEAVE while TRACKING
        [(A, LEAVE, LEECH), (B, JOIN, LEECH), (C, JOIN, LEECH)],  # two JOINs
        [(B, LEAVE, LEECH), (C, JOIN, LEECH)],  # leaving a swarm it is not in
        [(A, LEAVE, LEECH), (A, JOIN, LEECH)],  # the same swarm twice
    ],
)
def test_table6_other_leech_combinations_while_tracking_are_invalid(
    actions: list[tuple[str, Action, PeerMode]],
) -> None:
    t = make(track_timer=120.0)
    connect(t, "s", (B, JOIN, SEEDER), (C, JOIN, SEEDER), now=0.0)
    connect(t, "p", (A, JOIN, LEECH), now=0.0)
    resp = connect(t, "p", *actions, now=50.0)
    assert resp.response_type is FAILED and resp.error_code in (
        ErrorCode.FORBIDDEN_ACTION,
        ErrorCode.BAD_REQUEST,
    )
    assert t.peer_state("p") is PeerState.TRACKING  # (C): the peer stays
    assert t.swarms_of("p") == {A: LEECH}


def test_table6_n_seeder_join_from_start_is_valid() -> None:
    t = make()
    swarms = [sid(n) for n in range(20)]
    resp = connect(t, "src", *[(s, JOIN, SEEDER) for s in swarms])
    assert [r.result for r in resp.swarm_results] == [OK] * 20
    assert t.swarms_of("src") == dict.fromkeys(swarms, SEEDER)


def test_table6_n_seeder_join_while_tracking_is_invalid() -> None:
    t = make(track_timer=120.0)
    connect(t, "src", (A, JOIN, SEEDER), now=0.0)
    resp = connect(t, "src", (B, JOIN, SEEDER), (C, JOIN, SEEDER), now=100.0)
    assert failed_with(resp, ErrorCode.FORBIDDEN_ACTION)
    assert t.swarms_of("src") == {A: SEEDER}
    t.handle_timer(121.0)  # not reset by the invalid CONNECT
    assert t.peer_state("src") is None


def test_table6_n_seeder_leave_while_tracking() -> None:
    t = make()
    connect(t, "src", (A, JOIN, SEEDER), (B, JOIN, SEEDER), (C, JOIN, SEEDER))
    resp = connect(t, "src", (A, LEAVE, SEEDER), (B, LEAVE, SEEDER))
    assert [r.result for r in resp.swarm_results] == [OK, OK]
    assert t.swarms_of("src") == {C: SEEDER}
    assert t.peer_state("src") is PeerState.TRACKING
    connect(t, "src", (C, LEAVE, SEEDER))
    assert t.peer_state("src") is None  # left everything: TERMINATE


def test_partly_invalid_connect_succeeds_with_failed_results() -> None:
    t = make()
    connect(t, "src", (A, JOIN, SEEDER))
    # LEAVE A is valid, LEAVE B is not (never joined), JOIN C is Table 6's invalid row.
    resp = connect(t, "src", (A, LEAVE, SEEDER), (B, LEAVE, SEEDER), (C, JOIN, SEEDER))
    assert resp.response_type is OK
    assert [(r.swarm_id, r.result) for r in resp.swarm_results] == [
        (A, OK),
        (B, FAILED),
        (C, FAILED),
    ]
    assert all(r.peers is None for r in resp.swarm_results)
    assert t.peer_state("src") is None  # it left its only swarm


def test_mixed_modes_from_start() -> None:
    t = make()
    resp = connect(t, "p", (A, JOIN, LEECH), (B, JOIN, SEEDER), (C, JOIN, SEEDER))
    assert [r.result for r in resp.swarm_results] == [OK, OK, OK]
    assert resp.swarm_results[0].peers == []  # LEECH: a (here empty) peer list
    assert t.swarms_of("p") == {A: LEECH, B: SEEDER, C: SEEDER}


# ---------------------------------------------------------------------------- §4.3 replays


def test_replayed_transaction_gets_the_identical_response_without_reapplying() -> None:
    t = make()
    connect(t, "s", (A, JOIN, SEEDER), (B, JOIN, SEEDER))
    req = Connect("p", "77", [SwarmAction(A, JOIN, LEECH)])
    first = t.handle(req, SRC, 1.0)
    switch = Connect("p", "78", [SwarmAction(A, LEAVE, LEECH), SwarmAction(B, JOIN, LEECH)])
    second = t.handle(switch, SRC, 2.0)
    assert second.response_type is OK
    # A retransmission of either (same peer ID, transaction ID, content) is answered as before
    # and changes nothing: re-running the JOIN would now fail, the switch would now fail.
    copy = Connect("p", "77", [SwarmAction(A, JOIN, LEECH)])
    assert t.handle(copy, SRC, 3.0) is first
    assert t.handle(switch, SRC, 3.0) is second
    assert t.swarms_of("p") == {B: LEECH}
    assert t.popularity(B).join_rate == pytest.approx(1.0)  # type: ignore[union-attr]
    assert t.stats()["replays"] == 2


def test_replay_after_terminate_is_still_answered() -> None:
    t = make()
    connect(t, "p", (A, JOIN, LEECH))
    leave = Connect("p", "9", [SwarmAction(A, LEAVE, LEECH)])
    first = t.handle(leave, SRC, 2.0)
    assert t.peer_state("p") is None
    assert t.handle(leave, SRC, 2.5) is first


def test_reused_transaction_id_with_different_content_is_a_bad_request() -> None:
    t = make()
    t.handle(Connect("p", "5", [SwarmAction(A, JOIN, LEECH)]), SRC, 1.0)
    resp = t.handle(Connect("p", "5", [SwarmAction(B, JOIN, LEECH)]), SRC, 1.5)
    assert failed_with(resp, ErrorCode.BAD_REQUEST)
    assert t.swarms_of("p") == {A: LEECH}


def test_transaction_ids_are_per_peer_and_expire() -> None:
    t = make(transaction_window=10.0)
    connect(t, "s", (A, JOIN, SEEDER))
    r1 = t.handle(Connect("p", "1", [SwarmAction(A, JOIN, LEECH)]), SRC, 1.0)
    r2 = t.handle(Connect("q", "1", [SwarmAction(A, JOIN, LEECH)]), SRC, 1.0)
    assert r1 is not r2 and sorted(t.peers_of(A)) == ["p", "q", "s"]
    f1 = t.handle(Find("p", "2", A), SRC, 2.0)
    assert t.handle(Find("p", "2", A), SRC, 11.0) is f1
    assert t.handle(Find("p", "2", A), SRC, 12.5) is not f1  # outside the window: anew


def test_transaction_cache_is_bounded() -> None:
    t = make(max_transactions=3)
    connect(t, "s", (A, JOIN, SEEDER))
    first = t.handle(Find("s", "f0", A), SRC, 1.0)
    for n in range(1, 5):
        t.handle(Find("s", f"f{n}", A), SRC, 1.0)
    assert t.stats()["transactions_cached"] == 3
    assert t.handle(Find("s", "f0", A), SRC, 1.0) is not first


def test_transaction_cache_is_bounded_by_the_swarms_it_holds() -> None:
    t = make(max_transaction_swarms=25)
    batch = [avail(sid(n), (0, 1)) for n in range(10)]
    first = t.handle(Connect("c1", "1", [], availability=batch), SRC, 1.0)
    assert t.handle(Connect("c1", "1", [], availability=batch), SRC, 1.0) is first
    t.handle(Connect("c2", "1", [], availability=batch), SRC, 1.0)
    t.handle(Connect("c3", "1", [], availability=batch), SRC, 1.0)  # 33 > 25: c1's goes
    assert t.stats()["transactions_cached"] == 2
    again = t.handle(Connect("c1", "1", [], availability=batch), SRC, 1.0)
    assert again is not first and failed_with(again, ErrorCode.FORBIDDEN_ACTION)


# ---------------------------------------------------------------------------- availability


def test_batch_connect_with_availability_and_an_implicit_join() -> None:
    t = make()
    resp = connect(
        t,
        "c",
        (A, JOIN, SEEDER),
        role=Role.CACHER,
        area="x",
        availability=[avail(A, (0, 99)), avail(B, (5, 9), (20, 29))],
    )
    assert [(r.swarm_id, r.result) for r in resp.swarm_results] == [(A, OK), (B, OK)]
    assert t.availability("c", A) == ChunkSet([(0, 99)])
    assert t.availability("c", B) == ChunkSet([(5, 9), (20, 29)])
    assert t.swarms_of("c") == {A: SEEDER, B: SEEDER}
    t.check_invariants()


def test_availability_ranges_are_normalised() -> None:
    t = make()
    connect(t, "c", availability=[avail(A, (10, 19), (0, 5), (6, 9), (15, 30))])
    assert t.availability("c", A) == ChunkSet([(0, 30)])
    t.check_invariants()


def test_connect_availability_while_tracking_is_refused_per_table6() -> None:
    t = make()
    connect(t, "c", availability=[avail(A, (0, 9))])
    assert t.peer_state("c") is PeerState.TRACKING
    resp = connect(t, "c", availability=[avail(B, (0, 9))])
    assert failed_with(resp, ErrorCode.FORBIDDEN_ACTION)
    assert t.swarms_of("c") == {A: SEEDER}


def test_a_reconnecting_cacher_whose_state_was_lost_is_at_start_again() -> None:
    t = make(track_timer=60.0)
    batch = [avail(sid(n), (0, 63)) for n in range(50)]
    connect(t, "c", now=0.0, role=Role.CACHER, availability=batch)
    t.handle_timer(61.0)
    assert t.peer_state("c") is None
    resp = connect(t, "c", now=70.0, role=Role.CACHER, availability=batch)
    assert resp.response_type is OK and len(t.swarms_of("c")) == 50


def test_stat_report_snapshot_replaces_what_the_tracker_knows() -> None:
    t = make()
    connect(t, "p", (A, JOIN, LEECH), (B, JOIN, SEEDER), (C, JOIN, SEEDER))
    D = sid(4)
    resp = report(
        t,
        "p",
        availability=[avail(B, (0, 4)), avail(D, (7, 8))],  # a resync while TRACKING
    )
    assert resp.response_type is OK and resp.swarm_results == []
    # C (SEEDER, not listed) is left; A (LEECH, not listed) stays with nothing known;
    # D joins; B gets exactly the listed ranges.
    assert t.swarms_of("p") == {A: LEECH, B: SEEDER, D: SEEDER}
    assert t.availability("p", B) == ChunkSet([(0, 4)])
    assert t.availability("p", D) == ChunkSet([(7, 8)])
    assert t.availability("p", A) == ChunkSet()
    report(t, "p", availability=[avail(B, (2, 3), mode=LEECH)])
    assert t.swarms_of("p") == {A: LEECH, B: LEECH}
    assert t.availability("p", B) == ChunkSet([(2, 3)])
    t.check_invariants()


def test_deltas_add_and_remove_chunks_and_join_or_leave() -> None:
    t = make()
    connect(t, "c", role=Role.CACHER, availability=[avail(A, (0, 9))])
    report(
        t,
        "c",
        deltas=[
            AvailabilityDelta(A, cached=[(10, 19), (30, 39)], evicted=[(0, 4)]),
            AvailabilityDelta(B, cached=[(100, 109)]),  # pull-through of a new swarm
            AvailabilityDelta(C, evicted=[(0, 5)]),  # nothing known there: ignored
        ],
    )
    assert t.availability("c", A) == ChunkSet([(5, 19), (30, 39)])
    assert t.swarms_of("c") == {A: SEEDER, B: SEEDER}
    t.check_invariants()
    report(t, "c", deltas=[AvailabilityDelta(B, evicted=[(0, 200)])])
    assert t.swarms_of("c") == {A: SEEDER}  # a seeder holding nothing leaves
    assert t.peer_state("c") is PeerState.TRACKING  # reports never terminate
    report(t, "c", deltas=[AvailabilityDelta(A, evicted=[(0, 100)])])
    assert t.swarms_of("c") == {} and t.peer_state("c") is PeerState.TRACKING
    t.check_invariants()


def test_first_delta_on_an_unenumerated_seeder_starts_exact_tracking() -> None:
    t = make()
    connect(t, "s", (A, JOIN, SEEDER))
    assert t.availability("s", A) is None
    report(t, "s", deltas=[AvailabilityDelta(A, cached=[(0, 9)])])
    assert t.availability("s", A) == ChunkSet([(0, 9)])
    t.check_invariants()


@pytest.mark.parametrize(
    "ranges",
    [[(5, 4)], [(-1, 3)], [(0, 2**32)], [(n, n) for n in range(0, 20, 2)]],
)
def test_bad_availability_ranges(ranges: list[tuple[int, int]]) -> None:
    t = make(max_ranges_per_swarm=8)
    resp = connect(t, "c", (A, JOIN, SEEDER), availability=[avail(A, *ranges)])
    assert failed_with(resp, ErrorCode.BAD_REQUEST)
    connect(t, "c", (B, JOIN, SEEDER))
    assert failed_with(report(t, "c", availability=[avail(A, *ranges)]), ErrorCode.BAD_REQUEST)
    resp = report(t, "c", deltas=[AvailabilityDelta(B, cached=ranges)])
    assert failed_with(resp, ErrorCode.BAD_REQUEST)
    assert t.swarms_of("c") == {B: SEEDER}


# ---------------------------------------------------------------------------- FIND


def _swarm_for_selection(t: Tracker) -> None:
    """Swarm A: cachers in areas x and y, chunk holders, plain seeders, leechers."""
    connect(t, "cx", (A, JOIN, SEEDER), role=Role.CACHER, area="x", availability=[avail(A)])
    connect(t, "cy", (A, JOIN, SEEDER), role=Role.CACHER, area="y", availability=[avail(A)])
    connect(t, "h50", (A, JOIN, LEECH), role=Role.CSC, availability=[avail(A, (0, 149))])
    connect(t, "h10", (A, JOIN, LEECH), role=Role.CSC, availability=[avail(A, (0, 109))])
    connect(t, "h30", (A, JOIN, LEECH), role=Role.CSC, availability=[avail(A, (0, 129))])
    connect(t, "none", (A, JOIN, LEECH), role=Role.CSC, availability=[avail(A, (0, 50))])
    connect(t, "seed1", (A, JOIN, SEEDER))
    connect(t, "seed2", (A, JOIN, SEEDER))
    connect(t, "leech1", (A, JOIN, LEECH))
    connect(t, "leech2", (A, JOIN, LEECH))


def test_find_order_area_cachers_then_chunk_holders_then_seeders_then_leechers() -> None:
    t = make()
    _swarm_for_selection(t)
    connect(t, "me", (B, JOIN, LEECH), area="x")
    resp = find(t, "me", A, ranges=[(100, 199)], peer_num=PeerNum(29))
    got = ids(resp)
    assert got[0] == "cx"  # same-area cacher (its chunks are not enumerated)
    assert got[1:4] == ["h50", "h30", "h10"]  # most overlap with 100..199 first
    assert set(got[4:7]) == {"cy", "seed1", "seed2"}  # the other seeders
    assert set(got[7:]) == {"none", "leech1", "leech2"}
    assert "me" not in got


def test_find_never_returns_the_requester_and_respects_peer_count() -> None:
    t = make(max_find_peers=4)
    _swarm_for_selection(t)
    resp = find(t, "h50", A, peer_num=PeerNum(3))
    assert len(ids(resp)) == 3 and "h50" not in ids(resp)
    resp = find(t, "h50", A, peer_num=PeerNum(25))
    assert len(ids(resp)) == 4  # capped by max_find_peers
    resp = find(t, "h50", A)
    assert len(ids(resp)) == 4
    resp = find(t, "h50", A, peer_num=PeerNum(0))
    assert ids(resp) == []


def test_find_area_hint_overrides_the_peer_area() -> None:
    t = make()
    _swarm_for_selection(t)
    connect(t, "me", (B, JOIN, LEECH), area="x")
    assert ids(find(t, "me", A, area="y"))[0] == "cy"
    assert ids(find(t, "me", A))[0] == "cx"


def test_find_lists_the_requesters_area_first_among_plain_peers() -> None:
    t = make(seed=7, max_find_peers=4, area_scan_limit=64)
    for n in range(30):
        connect(t, f"far{n}", (A, JOIN, LEECH), area="y")
    for n in range(3):
        connect(t, f"near{n}", (A, JOIN, LEECH), area="x")
    connect(t, "seed", (A, JOIN, SEEDER), area="y")
    connect(t, "me", (B, JOIN, LEECH), area="x")
    for _ in range(5):  # whatever the random rotation
        got = ids(find(t, "me", A))
        assert got[0] == "seed"  # seeders still come before leechers
        assert set(got[1:]) == {"near0", "near1", "near2"}
    # Without an area the list is the plain random sample.
    connect(t, "nowhere", (B, JOIN, LEECH))
    assert len(ids(find(t, "nowhere", A))) == 4


def test_find_is_deterministic_for_a_seeded_rng_and_spreads_load() -> None:
    lists = []
    for _ in range(2):
        t = make(seed=42, max_find_peers=3)
        for n in range(20):
            connect(t, f"s{n}", (A, JOIN, SEEDER))
        lists.append([ids(find(t, "s0", A)) for _ in range(10)])
    assert lists[0] == lists[1]
    # Different FINDs get different samples: the load spreads over the swarm.
    assert len({tuple(x) for x in lists[0]}) > 1
    assert len({p for x in lists[0] for p in x}) > 6


def test_find_scans_a_bounded_window_of_holders() -> None:
    t = make(find_scan_limit=4, max_find_peers=10)
    for n in range(12):
        connect(t, f"h{n}", (A, JOIN, LEECH), availability=[avail(A, (0, 10 + n), mode=LEECH)])
    got = ids(find(t, "h0", A, ranges=[(0, 100)]))
    assert len(got) == 10 and "h0" not in got
    # Only 4 holders were ranked by overlap; they come first, best first.
    overlaps = [int(p[1:]) for p in got[:4]]
    assert overlaps == sorted(overlaps, reverse=True)


def test_find_with_multi_run_holders_counts_overlap_exactly() -> None:
    t = make()
    connect(t, "a", (A, JOIN, SEEDER), availability=[avail(A, (0, 9), (20, 29), (40, 49))])
    connect(t, "b", (A, JOIN, SEEDER), availability=[avail(A, (0, 24))])
    connect(t, "me", (A, JOIN, LEECH))
    # 0..49: a holds 30 chunks, b 25.
    assert ids(find(t, "me", A, ranges=[(0, 49)])) == ["a", "b"]
    # 15..44 and 100..101: a holds 10+5 = 15, b holds 10.
    assert ids(find(t, "me", A, ranges=[(15, 44), (100, 101)])) == ["a", "b"]
    # 0..24: b holds 25, a 15.
    assert ids(find(t, "me", A, ranges=[(0, 24)])) == ["b", "a"]


@pytest.mark.parametrize("ranges", [[(3, 2)], [(-1, 0)], [(n, n) for n in range(65)]])
def test_find_with_bad_ranges_is_a_bad_request(ranges: list[tuple[int, int]]) -> None:
    t = make()
    connect(t, "s", (A, JOIN, SEEDER))
    assert failed_with(find(t, "s", A, ranges=ranges), ErrorCode.BAD_REQUEST)


# ---------------------------------------------------------------------------- popularity


def test_viewers_count_csc_leechers_only() -> None:
    t = make()
    connect(t, "v1", (A, JOIN, LEECH), role=Role.CSC)
    connect(t, "v2", (A, JOIN, LEECH))  # no role declared: a plain RFC peer watching
    connect(t, "c", (A, JOIN, LEECH), role=Role.CACHER)  # a cacher filling its cache
    connect(t, "s", (A, JOIN, SEEDER), role=Role.CSC)
    pop = t.popularity(A)
    assert pop is not None and pop.viewers == 2


def test_join_rate_over_the_window() -> None:
    t = make(popularity_window=60.0)
    connect(t, "s", (A, JOIN, SEEDER), now=0.0)
    for n in range(6):
        connect(t, f"v{n}", (A, JOIN, LEECH), now=float(n))
    pop = t.popularity(A, now=10.0)
    assert pop is not None and pop.join_rate == pytest.approx(6.0)  # joins per minute
    assert t.popularity(A, now=62.5).join_rate == pytest.approx(3.0)  # type: ignore[union-attr]
    assert t.popularity(A, now=100.0).join_rate == 0.0  # type: ignore[union-attr]


def test_rarest_chunks_are_the_ranges_held_by_the_fewest_peers() -> None:
    t = make()
    connect(t, "a", (A, JOIN, SEEDER), availability=[avail(A, (0, 99))])
    connect(t, "b", (A, JOIN, SEEDER), availability=[avail(A, (0, 49), (80, 89), (200, 209))])
    connect(t, "c", (A, JOIN, SEEDER), availability=[avail(A, (0, 59), (200, 209))])
    connect(t, "d", (A, JOIN, SEEDER))  # chunks not enumerated: not counted
    # Coverage: 0-49: 3, 50-59: 2, 60-79: 1, 80-89: 2, 90-99: 1, 100-199: none, 200-209: 2.
    pop = t.popularity(A)
    assert pop is not None and pop.rarest == [(60, 79), (90, 99)]
    report(t, "b", deltas=[AvailabilityDelta(A, cached=[(60, 79)])])
    assert t.popularity(A).rarest == [(90, 99)]  # type: ignore[union-attr]
    connect(t, "a", (A, LEAVE, SEEDER))
    # Coverage now: 0-49: 2, 50-59: 1, 60-79: 1, 80-89: 1, 200-209: 2.
    assert t.popularity(A).rarest == [(50, 89)]  # type: ignore[union-attr]
    t2 = make(rarest_max_ranges=2)
    connect(t2, "a", availability=[avail(A, *[(n * 10, n * 10 + 1) for n in range(5)])])
    assert t2.popularity(A).rarest == [(0, 1), (10, 11)]  # type: ignore[union-attr]


def test_stat_query_returns_global_info() -> None:
    t = make()
    connect(t, "s", (A, JOIN, SEEDER), (B, JOIN, SEEDER), availability=[avail(A, (0, 9))])
    connect(t, "v1", (A, JOIN, LEECH))
    connect(t, "v2", (A, JOIN, LEECH))
    connect(t, "v3", (B, JOIN, LEECH))
    resp = t.handle(StatQuery("v1", tid(), [B, C]), SRC, 2.0)
    assert resp.response_type is OK
    assert [(p.swarm_id, p.viewers) for p in resp.global_info] == [(B, 1)]
    resp = t.handle(StatQuery("v1", tid()), SRC, 2.0)  # all: the top swarms, hottest first
    assert [(p.swarm_id, p.viewers) for p in resp.global_info] == [(A, 2), (B, 1)]
    assert resp.global_info[0].rarest == [(0, 9)]
    assert resp.global_info[0].join_rate == pytest.approx(2.0)


# ---------------------------------------------------------------------------- push hints


def _hot_channels(t: Tracker, now: float = 1.0) -> None:
    """Area x watches A (3 viewers) and B (1); area y watches C."""
    connect(t, "src", (A, JOIN, SEEDER), (B, JOIN, SEEDER), (C, JOIN, SEEDER), now=now)
    for n in range(3):
        connect(t, f"xa{n}", (A, JOIN, LEECH), area="x", role=Role.CSC, now=now)
    connect(t, "xb", (B, JOIN, LEECH), area="x", role=Role.CSC, now=now)
    connect(t, "yc", (C, JOIN, LEECH), area="y", role=Role.CSC, now=now)


def test_push_hints_go_to_area_cachers_that_lack_the_head() -> None:
    t = make(hint_top_k=5, hint_head_chunks=64, hint_expiry=60.0)
    _hot_channels(t)
    connect(t, "cx", role=Role.CACHER, area="x")  # empty cache
    connect(t, "cx2", role=Role.CACHER, area="x", availability=[avail(A, (0, 63))])
    connect(t, "cz", role=Role.CACHER, area="z")  # nobody watches in z
    assert t.update_push_hints(now=2.0) == 3
    out = t.pop_outgoing()
    assert t.pop_outgoing() == []
    by_peer = {pid: msg for pid, msg in out}
    assert set(by_peer) == {"cx", "cx2"}
    msg = by_peer["cx"]
    assert isinstance(msg, PushHintMessage)
    assert 0 <= int(msg.transaction_id) < 2**64  # binary transports carry it as 64 bits
    assert [(h.swarm_id, h.head_start, h.head_end, h.unit) for h in msg.hints] == [
        (A, 0, 63, HintUnit.CHUNKS),
        (B, 0, 63, HintUnit.CHUNKS),
    ]
    assert msg.hints[0].priority > msg.hints[1].priority  # hotter first and higher
    msg2 = by_peer["cx2"]
    assert isinstance(msg2, PushHintMessage)
    assert [h.swarm_id for h in msg2.hints] == [B]  # it already holds A's head
    # Active hints are pushed once, then piggy-backed until they expire or are satisfied.
    assert t.update_push_hints(now=3.0) == 0
    hints = t.hints_for("cx", now=12.0)
    assert [h.swarm_id for h in hints] == [A, B]
    assert hints[0].expires_in == pytest.approx(50.0)
    report(t, "cx", now=13.0, deltas=[AvailabilityDelta(A, cached=[(0, 100)])])
    assert [h.swarm_id for h in t.hints_for("cx", now=14.0)] == [B]
    assert t.hints_for("cx", now=62.0) == []  # expired
    assert t.hints_for("nobody") == []


def test_push_hint_ranking_uses_viewers_and_join_rate_per_area() -> None:
    t = make(hint_top_k=1, popularity_window=60.0)
    connect(t, "src", (A, JOIN, SEEDER), (B, JOIN, SEEDER), now=0.0)
    # A: two long-standing viewers; B: one viewer but a surge of joins (switchers).
    connect(t, "a1", (A, JOIN, LEECH), area="x", now=0.0)
    connect(t, "a2", (A, JOIN, LEECH), area="x", now=0.0)
    for n in range(3):
        connect(t, f"b{n}", (B, JOIN, LEECH), area="x", now=100.0)
        if n < 2:
            connect(t, f"b{n}", (B, LEAVE, LEECH), now=100.0)
    connect(t, "cx", role=Role.CACHER, area="x", now=100.0)
    t.update_push_hints(now=100.0)
    ((_, msg),) = t.pop_outgoing()
    assert isinstance(msg, PushHintMessage)
    # A scores 2 viewers + 0 joins/min; B 1 viewer + 3 joins/min.
    assert [h.swarm_id for h in msg.hints] == [B]


def test_timer_runs_the_hint_and_global_info_policies() -> None:
    t = make(hint_interval=10.0, global_info_interval=30.0, track_timer=1000.0)
    _hot_channels(t, now=0.0)
    assert t.next_timer() == 1000.0  # no cachers: no periodic work
    connect(t, "cy", role=Role.CACHER, area="y", now=0.0)
    report(t, "cy", now=0.0)  # TRACKING, so the init timer does not remove it at 30
    assert t.next_timer() == 10.0
    t.handle_timer(10.0)
    out = t.pop_outgoing()
    assert [(p, type(m)) for p, m in out] == [("cy", PushHintMessage)]
    assert t.next_timer() == 20.0
    t.handle_timer(20.0)
    t.handle_timer(30.0)
    out = t.pop_outgoing()
    assert [(p, type(m)) for p, m in out] == [("cy", GlobalInfoMessage)]
    msg = out[0][1]
    assert isinstance(msg, GlobalInfoMessage)
    # The area's top first, then the global top: C (area y), A (3 viewers), B.
    assert [(s.swarm_id, s.viewers) for s in msg.swarms] == [(C, 1), (A, 3), (B, 1)]


def test_outgoing_queue_is_bounded() -> None:
    t = make(max_outgoing=2)
    _hot_channels(t)
    for n in range(5):
        connect(t, f"c{n}", role=Role.CACHER, area="x")
    t.update_push_hints(now=2.0)
    assert len(t.pop_outgoing()) == 2


# ---------------------------------------------------------------------------- bounds


def test_max_peers_gives_service_unavailable() -> None:
    t = make(max_peers=2)
    connect(t, "p1", (A, JOIN, LEECH))
    connect(t, "p2", (A, JOIN, LEECH))
    assert failed_with(connect(t, "p3", (A, JOIN, LEECH)), ErrorCode.SERVICE_UNAVAILABLE)
    assert t.stats()["peers"] == 2


def test_max_swarms_per_peer_fails_the_excess() -> None:
    t = make(max_swarms_per_peer=3)
    resp = connect(
        t,
        "s",
        *[(sid(n), JOIN, SEEDER) for n in range(2)],
        availability=[avail(sid(n), (0, 1)) for n in range(2, 5)],
    )
    assert [r.result for r in resp.swarm_results] == [OK, OK, OK, FAILED, FAILED]
    assert len(t.swarms_of("s")) == 3
    resp = report(t, "s", deltas=[AvailabilityDelta(sid(9), cached=[(0, 1)])])
    assert [(r.swarm_id, r.result) for r in resp.swarm_results] == [(sid(9), FAILED)]
    resp = connect(t, "s", *[(sid(n), JOIN, SEEDER) for n in range(10)])
    assert failed_with(resp, ErrorCode.BAD_REQUEST)  # more actions than a peer may have


def test_max_peers_per_swarm_and_max_swarms() -> None:
    t = make(max_peers_per_swarm=2, max_swarms=2)
    connect(t, "p1", (A, JOIN, LEECH))
    connect(t, "p2", (A, JOIN, LEECH))
    assert failed_with(connect(t, "p3", (A, JOIN, LEECH)), ErrorCode.SERVICE_UNAVAILABLE)
    assert t.peer_state("p3") is None
    resp = connect(t, "s", (B, JOIN, SEEDER), (C, JOIN, SEEDER))
    assert [r.result for r in resp.swarm_results] == [OK, FAILED]  # only 2 swarms in all


def test_bounds_on_addresses_areas_and_queries() -> None:
    t = make(max_addresses=2, max_id_length=8, max_query_swarms=2)
    addrs = [PeerAddress("192.0.2.1", p) for p in range(3)]
    assert failed_with(
        connect(t, "p", (A[:8], JOIN, LEECH), peer_addresses=addrs), ErrorCode.BAD_REQUEST
    )
    assert failed_with(connect(t, "p", ("s", JOIN, LEECH), area="a" * 9), ErrorCode.BAD_REQUEST)
    assert connect(t, "p", ("s", JOIN, LEECH)).response_type is OK
    resp = connect(t, "q", ("x" * 9, JOIN, SEEDER), ("s", JOIN, SEEDER))
    assert [r.result for r in resp.swarm_results] == [FAILED, OK]
    resp = t.handle(StatQuery("p", tid(), ["a", "b", "c"]), SRC, 1.0)
    assert failed_with(resp, ErrorCode.BAD_REQUEST)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        TrackerConfig(track_timer=0)
    with pytest.raises(ValueError):
        TrackerConfig(max_swarms_per_peer=0)
    with pytest.raises(ValueError):
        TrackerConfig(unregistered_error=ErrorCode.BAD_REQUEST)


def test_stats_counts_peers_swarms_and_states() -> None:
    t = make()
    connect(t, "a", (A, JOIN, SEEDER), (B, JOIN, SEEDER))
    connect(t, "b", (A, JOIN, LEECH))
    connect(t, "c", role=Role.CACHER, area="x")
    find(t, "ghost", A)
    s = t.stats()
    assert s["state"] == "STARTED"
    assert (s["peers"], s["swarms"], s["memberships"], s["cachers"]) == (3, 2, 3, 1)
    assert s["peers_by_state"] == {"PEER_REGISTERED": 1, "TRACKING": 2}
    assert s["errors_by_code"] == {3: 1}
    assert s["requests"] == 4


def test_a_10000_swarm_batch_report() -> None:
    t = make()
    swarms = [sid(n) for n in range(10_000)]
    batch = [avail(s, (0, 63), (100, 199), (1000 + n % 50, 2000)) for n, s in enumerate(swarms)]
    resp = connect(
        t,
        "c",
        *[(s, JOIN, SEEDER) for s in swarms],
        now=0.0,
        role=Role.CACHER,
        area="x",
        availability=batch,
    )
    assert resp.response_type is OK
    assert len(resp.swarm_results) == 10_000
    assert all(r.result is OK and r.peers is None for r in resp.swarm_results)
    assert t.stats()["swarms"] == 10_000
    assert t.availability("c", swarms[7]) == ChunkSet([(0, 63), (100, 199), (1007, 2000)])
    # A resync while TRACKING travels as a STAT_REPORT snapshot; drop half the swarms.
    resp = report(t, "c", now=1.0, availability=batch[::2])
    assert resp.response_type is OK and len(t.swarms_of("c")) == 5_000
    # A LEECH asking one of them gets the cacher, which holds the requested chunks.
    connect(t, "v", (swarms[0], JOIN, LEECH), now=1.0, area="x")
    assert ids(find(t, "v", swarms[0], now=1.0, ranges=[(0, 10)])) == ["c"]
    t.handle_timer(1e6)
    assert t.stats()["peers"] == 0 and t.stats()["swarms"] == 0


def test_internal_errors_become_04_not_exceptions(monkeypatch: pytest.MonkeyPatch) -> None:
    t = make()

    def boom(*args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(t, "_find", boom)
    connect(t, "p", (A, JOIN, LEECH))
    assert failed_with(find(t, "p", A), ErrorCode.INTERNAL_SERVER_ERROR)


# ---------------------------------------------------------------------------- hypothesis

PEERS = ["p0", "p1", "p2", "p3", "p4"]
SWARMS = [sid(n) for n in range(3)]
# Mostly valid swarm IDs, sometimes a malformed one.
swarm_ids = st.sampled_from([*SWARMS * 6, ""])
small_ranges = st.lists(
    st.tuples(st.integers(0, 60), st.integers(0, 12)).map(lambda t: (t[0], t[0] + t[1])),
    max_size=4,
)
roles = st.sampled_from([None, Role.CSC, Role.CSC, Role.CACHER, Role.CACHER, Role.SOURCE])
areas = st.sampled_from([None, "x", "x", "x", "y"])
modes = st.sampled_from([SEEDER, LEECH])
tids = st.integers(0, 2**64 - 1).map(str)
entries = st.builds(SwarmAvailability, swarm_ids, modes, st.sampled_from(list(Role)), small_ranges)
# Swarm actions shaped like Table 6's rows (most random combinations are invalid), and random.
action_lists = st.one_of(
    st.builds(lambda s: [SwarmAction(s, JOIN, LEECH)], swarm_ids),
    st.builds(
        lambda a, b: [SwarmAction(a, LEAVE, LEECH), SwarmAction(b, JOIN, LEECH)],
        swarm_ids,
        swarm_ids,
    ),
    st.lists(swarm_ids, max_size=3).map(lambda ss: [SwarmAction(s, JOIN, SEEDER) for s in ss]),
    st.lists(swarm_ids, max_size=2).map(lambda ss: [SwarmAction(s, LEAVE, SEEDER) for s in ss]),
    st.lists(st.builds(SwarmAction, swarm_ids, st.sampled_from([JOIN, LEAVE]), modes), max_size=4),
)
connects = st.builds(
    Connect,
    peer_id=st.sampled_from(PEERS),
    transaction_id=tids,
    swarm_actions=action_lists,
    peer_num=st.none() | st.builds(PeerNum, st.integers(-1, 40)),
    role=roles,
    area=areas,
    availability=st.lists(entries, max_size=3),
)
finds = st.builds(
    Find,
    peer_id=st.sampled_from(PEERS),
    transaction_id=tids,
    swarm_id=swarm_ids,
    peer_num=st.none() | st.builds(PeerNum, st.integers(0, 40)),
    area=areas,
    ranges=st.none() | small_ranges,
)
reports = st.builds(
    StatReport,
    peer_id=st.sampled_from(PEERS),
    transaction_id=tids,
    stats=st.just([]) | st.lists(st.builds(StreamStats, swarm_ids), max_size=2),
    availability=st.lists(entries, max_size=3),
    deltas=st.lists(
        st.builds(AvailabilityDelta, swarm_ids, small_ranges, small_ranges), max_size=3
    ),
)
queries = st.builds(
    StatQuery,
    peer_id=st.sampled_from(PEERS),
    transaction_id=tids,
    swarm_ids=st.lists(swarm_ids, max_size=3),
)


@dataclass
class Step:
    """One event: a request, a replay of the n-th earlier request, a timer tick, or a run of
    the push-hint policy."""

    kind: str
    advance: float
    request: Request | None = None
    replay: int = 0


# Sequences open with registrations (valid Table 6 rows from START), so that later requests
# mostly come from registered peers.
good_swarms = st.sampled_from(SWARMS)
openers = st.builds(
    Step,
    st.just("request"),
    st.just(0.0),
    st.builds(
        Connect,
        peer_id=st.sampled_from(PEERS),
        transaction_id=tids,
        swarm_actions=st.one_of(
            st.builds(lambda s: [SwarmAction(s, JOIN, LEECH)], good_swarms),
            st.lists(good_swarms, min_size=1, max_size=3, unique=True).map(
                lambda ss: [SwarmAction(s, JOIN, SEEDER) for s in ss]
            ),
        ),
        role=roles,
        area=areas,
        availability=st.lists(
            st.builds(
                SwarmAvailability, good_swarms, modes, st.sampled_from(list(Role)), small_ranges
            ),
            max_size=2,
        ),
    ),
)
steps = st.one_of(
    st.builds(
        Step, st.just("request"), st.floats(0, 5), st.one_of(connects, finds, reports, queries)
    ),
    st.builds(Step, st.just("replay"), st.floats(0, 3), replay=st.integers(0, 50)),
    st.builds(Step, st.just("tick"), st.floats(0, 25)),
    st.builds(Step, st.just("hints"), st.floats(0, 5)),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(openers, min_size=3, max_size=6),
    st.lists(steps, min_size=5, max_size=50),
    st.integers(0, 3),
)
def test_random_request_sequences_never_raise_and_keep_invariants(
    opening: list[Step], sequence: list[Step], seed: int
) -> None:
    t = make(
        seed=seed,
        init_timer=20.0,
        track_timer=60.0,
        max_peers=4,
        max_swarms=2,
        max_peers_per_swarm=3,
        max_swarms_per_peer=3,
        max_ranges_per_swarm=6,
        max_find_peers=3,
        find_scan_limit=2,
        hint_head_chunks=8,
        hint_top_k=2,
        hint_interval=15.0,
        global_info_interval=25.0,
        transaction_window=10.0,
        batch_gc_pause=2,
        max_transactions=8,
    )
    now = 0.0
    sent: list[tuple[Request, Response, float]] = []
    for step in opening + sequence:
        now += step.advance
        if step.kind == "request" or (step.kind == "replay" and sent):
            if step.request is not None:
                req = step.request
            else:
                req, earlier, at = sent[step.replay % len(sent)]
            stats_before = t.stats()
            resp = t.handle(req, SRC, now)
            if step.kind == "replay" and resp is earlier:
                # §4.3: a replay changes nothing.
                assert now - at <= 10.0
                after = t.stats()
                assert (after["peers"], after["memberships"]) == (
                    stats_before["peers"],
                    stats_before["memberships"],
                )
            sent.append((req, resp, now))
            assert resp.transaction_id == req.transaction_id
            assert resp.error_code is not ErrorCode.INTERNAL_SERVER_ERROR
            assert (resp.response_type is OK) == (resp.error_code is ErrorCode.NO_ERROR)
            for r in resp.swarm_results:
                if r.peers is not None:
                    assert req.peer_id not in [p.peer_id for p in r.peers]
                    assert len(r.peers) <= 3
        elif step.kind == "tick":
            t.handle_timer(now)
            nxt = t.next_timer()
            assert nxt is None or nxt > now
        elif step.kind == "hints":
            t.update_push_hints(now)
            for pid, msg in t.pop_outgoing():
                assert isinstance(msg, PushHintMessage | GlobalInfoMessage)
                assert t.peer_state(pid) is not None
            for pid in PEERS:
                for hint in t.hints_for(pid, now):
                    assert 0 < hint.expires_in <= 60.0 + 1e-9
        t.check_invariants()
        # The invariant the brief names, through the public view as well:
        # a peer is in a swarm's member list ⇔ the swarm is in the peer's list.
        for pid in PEERS:
            for s in t.swarms_of(pid):
                assert pid in t.peers_of(s)
        for s in SWARMS:
            for pid in t.peers_of(s):
                assert s in t.swarms_of(pid)
