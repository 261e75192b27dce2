"""CHORD-RELOAD topology core (reload.topology.chord) against RFC 6940 §10: ring intervals,
responsibility, routing convergence, replica sets, fingers, and the join/update/leave logic
driven through a small synchronous in-memory driver."""

from __future__ import annotations

import bisect
import contextlib
import itertools
import math
import random
from collections import deque
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reload import wire
from reload.access import chord_resource_id
from reload.config import OverlayConfiguration
from reload.messages import (
    ChordLeaveData,
    ChordLeaveType,
    ChordRouteQueryAns,
    ChordUpdate,
    ChordUpdateType,
    ReloadDecodeError,
)
from reload.topology.chord import (
    AnswerJoin,
    ChordAction,
    ChordTable,
    ChordTopology,
    HandOver,
    JoinCompleted,
    JoinState,
    Rejoin,
    Replicate,
    SendAttach,
    SendJoin,
    SendLeave,
    SendUpdate,
    add,
    between,
    distance,
    finger_target,
    resource_id,
)

MOD = 1 << 128


def nid(value: int, length: int = 16) -> bytes:
    return (value % (1 << (8 * length))).to_bytes(length, "big")


def val(node_id: bytes) -> int:
    return int.from_bytes(node_id, "big")


# ---------------------------------------------------------------------------------------------
# Ring arithmetic
# ---------------------------------------------------------------------------------------------


def brute_between(a: int, x: int, b: int, mod: int, closed_left: bool, closed_right: bool) -> bool:
    """Walk clockwise from a to b (the model): a full turn when a == b."""
    steps = (b - a) % mod or mod
    points = {(a + s) % mod for s in range(1, steps)}
    if closed_left:
        points.add(a)
    if closed_right:
        points.add(b)
    return x in points


@settings(max_examples=300)
@given(
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 255),
    st.booleans(),
    st.booleans(),
)
def test_between_matches_brute_force_on_a_small_ring(
    a: int, x: int, b: int, closed_left: bool, closed_right: bool
) -> None:
    # one-byte IDs: a 256-point ring walked exhaustively, wrap-around and 0 included
    got = between(bytes([a]), bytes([x]), bytes([b]), closed_left=closed_left,
                  closed_right=closed_right)  # fmt: skip
    assert got == brute_between(a, x, b, 256, closed_left, closed_right)


def test_between_wraps_through_zero() -> None:
    top = nid(MOD - 2)
    assert between(top, nid(MOD - 1), nid(1))
    assert between(top, nid(0), nid(1))
    assert not between(top, nid(1), nid(1))
    assert between(top, nid(1), nid(1), closed_right=True)
    assert not between(top, nid(5), nid(1), closed_right=True)
    # (a, a) is everything but a; (a, a] the whole ring
    assert between(nid(7), nid(3), nid(7))
    assert not between(nid(7), nid(7), nid(7))
    assert between(nid(7), nid(7), nid(7), closed_right=True)
    with pytest.raises(ValueError):
        between(nid(1), nid(2, 20), nid(3))


@given(st.integers(0, MOD - 1), st.integers(0, MOD - 1))
def test_distance_is_clockwise_and_complements(a: int, b: int) -> None:
    d = distance(nid(a), nid(b))
    assert 0 <= d < MOD
    assert (a + d) % MOD == b
    assert add(nid(a), d) == nid(b)
    if a != b:
        assert d + distance(nid(b), nid(a)) == MOD


def test_resource_id_is_truncated_sha1() -> None:
    # §10.2; SHA-1("abc") = a9993e36 4706816a ba3e2571 7850c26c 9cd0d89d
    assert resource_id(b"abc") == bytes.fromhex("a9993e364706816aba3e25717850c26c")
    assert resource_id(b"abc") == chord_resource_id(b"abc")


def test_finger_targets_halve_the_ring() -> None:
    n = nid(MOD - 1)
    assert finger_target(n, 1) == nid(MOD - 1 + (1 << 127))  # half way round, wrapping
    assert finger_target(n, 128) == nid(0)
    table = ChordTable(nid(10), fingers=20)
    targets = table.finger_targets()
    assert sorted(targets) == list(range(1, 21))
    assert all(distance(nid(10), t) == 1 << (128 - i) for i, t in targets.items())
    with pytest.raises(ValueError):
        finger_target(n, 0)


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


def test_table_parameters_are_checked() -> None:
    with pytest.raises(ValueError):
        ChordTable(nid(1), successors=2)
    with pytest.raises(ValueError):
        ChordTable(nid(1), fingers=129)
    with pytest.raises(ValueError):
        ChordTable(bytes(8))


def test_neighbor_sets_and_responsibility() -> None:
    me = nid(1000)
    t = ChordTable(me)
    assert t.responsible_for(nid(5)) and t.next_hop(nid(5)) is None  # alone: everything
    for v in (1100, 1200, 1300, 1400, 900, 800, 700, 600, MOD - 5):
        t.peer_up(nid(v))
    assert t.successors == (nid(1100), nid(1200), nid(1300))
    assert t.predecessors == (nid(900), nid(800), nid(700))
    assert t.peer_up(me).new_successors == t.successors  # never enters itself
    assert me not in t.peers
    # §10.1: responsible for (900, 1000]
    assert t.responsible_for(nid(1000)) and t.responsible_for(nid(901))
    assert not t.responsible_for(nid(900)) and not t.responsible_for(nid(1001))
    assert not t.responsible_for(nid(0))
    # §10.7.3: still in the replica set while fewer than three predecessors lie between
    assert t.in_replica_range(nid(701)) and not t.in_replica_range(nid(700))


def test_responsibility_wraps_through_zero() -> None:
    t = ChordTable(nid(5))
    for v in (MOD - 10, 100, 200):
        t.peer_up(nid(v))
    assert t.predecessors[0] == nid(MOD - 10)
    assert t.responsible_for(nid(0)) and t.responsible_for(nid(MOD - 9))
    assert not t.responsible_for(nid(MOD - 10)) and not t.responsible_for(nid(6))


def test_peer_down_reports_changes() -> None:
    t = ChordTable(nid(0))
    for v in (10, 20, 30, 40, -10, -20, -30, -40):
        t.peer_up(nid(v))
    change = t.peer_down(nid(10))
    assert change.successor_changed and change.replica_set_changed
    assert not change.predecessor_changed
    assert change.lost_neighbors == {nid(10)}
    assert change.new_neighbors == {nid(40)}
    assert t.successors == (nid(20), nid(30), nid(40))
    change = t.peer_down(nid(-10))
    assert change.predecessor_changed and not change.successor_changed
    assert t.predecessors == (nid(-20), nid(-30), nid(-40))
    unchanged = t.peer_down(nid(12345))
    assert not unchanged.neighbors_changed and not unchanged.fingers_changed


def test_fingers_take_first_peer_in_their_valid_range() -> None:
    me = nid(0)
    t = ChordTable(me, fingers=16)
    half = 1 << 127
    t.peer_up(nid(half + 5))  # finger 1 range [2^127, 2^128)
    t.peer_up(nid(half + 3))
    t.peer_up(nid((1 << 125) + 1))  # finger 3
    t.peer_up(nid((1 << 124) - 1))  # just below finger 4's range: finger 5
    for v in (1, 2, 3):  # successors next door, so no finger range is theirs
        t.peer_up(nid(v))
    assert t.fingers == {1: nid(half + 3), 3: nid((1 << 125) + 1), 5: nid((1 << 124) - 1)}
    assert t.finger_ids() == tuple(sorted(t.finger_ids()))
    todo = t.fingers_to_fix()
    assert 1 not in todo and 2 in todo and 4 in todo
    rng = random.Random(4)
    for i in (2, 4, 16):
        target = t.random_in_finger_range(i, rng)
        assert 1 << (128 - i) <= distance(me, target) < 1 << (129 - i)


def test_fingers_to_fix_skips_ranges_the_successors_cover() -> None:
    t = ChordTable(nid(0), fingers=20)
    for v in (1, 2, 3):  # successors next door: every finger range is beyond them
        t.peer_up(nid(v))
    assert len(t.fingers_to_fix()) == 20
    far = ChordTable(nid(0), fingers=20)
    for v in (1 << 126, (1 << 126) + 1, (1 << 126) + 2):
        far.peer_up(nid(v))
    # the third successor is at 2^126+2: ranges of fingers 3..20 lie before it
    assert far.fingers_to_fix() == (1,)


def test_replica_set_from_the_responsible_peer() -> None:
    t = ChordTable(nid(100))
    assert t.replica_set(nid(50)) == (nid(100),)
    t.peer_up(nid(200))
    assert t.replica_set(nid(50)) == (nid(100), nid(200))  # two-peer ring
    for v in (300, 400, 50):
        t.peer_up(nid(v))
    assert t.replica_set(nid(60)) == (nid(100), nid(200), nid(300))
    assert t.replica_number(nid(60), nid(300)) == 2
    assert t.replica_number(nid(60), nid(400)) is None
    # not responsible: the best guess from the known peers
    assert t.replica_set(nid(250)) == (nid(300), nid(400), nid(50))


def test_resources_to_hand_over() -> None:
    t = ChordTable(nid(1000))
    resources = [nid(v) for v in (850, 901, 950, 951, 1000, 1100)]
    t.peer_up(nid(900))
    # a node joining at 950 takes (900, 950]
    assert t.resources_to_hand_over(nid(950), resources) == (nid(901), nid(950))
    assert t.resources_to_hand_over(nid(1050), resources) == ()  # not between pred and us
    alone = ChordTable(nid(1000))
    got = alone.resources_to_hand_over(nid(950), resources)
    # alone we hold the ring: the new peer takes everything but (950, 1000]
    assert set(got) == {nid(850), nid(901), nid(950), nid(1100)}


def test_next_hop_rules() -> None:
    t = ChordTable(nid(0))
    for v in (10, 20, 30, 1 << 127, 1 << 126, -10, -20, -30):
        t.peer_up(nid(v))
    assert t.next_hop(nid(-5)) is None  # responsible: (-10, 0]
    assert t.next_hop(nid(20)) == nid(20)  # connected to that Node-ID
    assert t.next_hop(nid(25)) == nid(20)  # largest in (self, k]
    assert t.next_hop(nid(5)) == nid(10)  # none in (self, k]: smallest after k
    assert t.next_hop(nid((1 << 126) + 99)) == nid(1 << 126)
    t.connection_up(nid(3))  # a joining node, not a ring peer
    assert t.next_hop(nid(3)) == nid(3)
    assert nid(3) not in t.routing_table() and nid(3) in t.connections()
    assert t.next_hop(nid(4)) == nid(10)
    assert t.route_query(nid(25)) == ChordRouteQueryAns(nid(20))
    assert t.route_query(nid(-1)) == ChordRouteQueryAns(nid(0))


def test_surplus_peers_are_neither_neighbors_nor_fingers() -> None:
    t = ChordTable(nid(0), fingers=1)
    for v in (1, 2, 3, 4, 5, -1, -2, -3):
        t.peer_up(nid(v))
    assert t.surplus_peers() == (nid(4), nid(5))


# ---------------------------------------------------------------------------------------------
# Routing converges on correct tables
# ---------------------------------------------------------------------------------------------


def build_correct_tables(ids: list[int], fingers: int) -> dict[int, ChordTable]:
    ring = sorted(ids)
    n = len(ring)
    tables: dict[int, ChordTable] = {}
    for pos, me in enumerate(ring):
        t = ChordTable(nid(me), fingers=fingers)
        for k in (1, 2, 3):
            t.peer_up(nid(ring[(pos + k) % n]))
            t.peer_up(nid(ring[(pos - k) % n]))
        for i in range(1, fingers + 1):
            target = (me + (1 << (128 - i))) % MOD
            j = bisect.bisect_left(ring, target) % n
            t.peer_up(nid(ring[j]))
        tables[me] = t
    return tables


def responsible(ring: list[int], key: int) -> int:
    return ring[bisect.bisect_left(ring, key) % len(ring)]


def route(tables: dict[int, ChordTable], start: int, key: bytes) -> tuple[int, int]:
    node, hops = start, 0
    for _ in range(64):  # bounded: a loop is a failure
        hop = tables[node].next_hop(key)
        if hop is None:
            return node, hops
        node, hops = val(hop), hops + 1
    raise AssertionError("routing loop")


def test_greedy_routing_reaches_the_responsible_peer_in_log_n_hops() -> None:
    rng = random.Random(1)
    n = 1000
    ring = sorted({rng.getrandbits(128) for _ in range(n)})
    tables = build_correct_tables(ring, fingers=16)
    # every table agrees with the oracle on its neighbors and responsibility
    for pos in (0, 1, len(ring) - 1, 500):
        t = tables[ring[pos]]
        assert t.successors[0] == nid(ring[(pos + 1) % len(ring)])
        assert t.predecessors[2] == nid(ring[(pos - 3) % len(ring)])
    total, worst = 0, 0
    trials = 2000
    for _ in range(trials):
        key = rng.getrandbits(128)
        start = rng.choice(ring)
        end, hops = route(tables, start, nid(key))
        assert end == responsible(ring, key)
        assert tables[end].responsible_for(nid(key))
        total += hops
        worst = max(worst, hops)
    mean = total / trials
    assert mean <= 0.5 * math.log2(n) + 1, mean
    assert worst <= 2 * math.log2(n), worst


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, MOD - 1), min_size=1, max_size=40, unique=True), st.data())
def test_routing_always_terminates_at_the_responsible_peer(
    ids: list[int], data: st.DataObject
) -> None:
    ring = sorted(ids)
    tables = build_correct_tables(ring, fingers=8)
    key = data.draw(st.integers(0, MOD - 1))
    start = data.draw(st.sampled_from(ring))
    end, _ = route(tables, start, nid(key))
    assert end == responsible(ring, key)


# ---------------------------------------------------------------------------------------------
# Wire structures of §10.7-§10.9 (codec in reload.wire)
# ---------------------------------------------------------------------------------------------

ids16 = st.binary(min_size=16, max_size=16)
id_lists = st.lists(ids16, max_size=6).map(tuple)


@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from(list(ChordUpdateType)),
    id_lists,
    id_lists,
    id_lists,
)
def test_chord_update_round_trip(
    uptime: int,
    kind: ChordUpdateType,
    preds: tuple[bytes, ...],
    succs: tuple[bytes, ...],
    fingers: tuple[bytes, ...],
) -> None:
    if kind == ChordUpdateType.PEER_READY:
        update = ChordUpdate(uptime, kind)
    elif kind == ChordUpdateType.NEIGHBORS:
        update = ChordUpdate(uptime, kind, preds, succs)
    else:
        update = ChordUpdate(uptime, kind, preds, succs, fingers)
    data = wire.encode_chord_update(update)
    assert data[:5] == uptime.to_bytes(4, "big") + bytes([kind])
    assert wire.decode_chord_update(data) == update


@given(st.sampled_from(list(ChordLeaveType)), id_lists)
def test_chord_leave_and_route_query_round_trip(
    kind: ChordLeaveType, node_ids: tuple[bytes, ...]
) -> None:
    leave = ChordLeaveData(kind, node_ids)
    data = wire.encode_chord_leave_data(leave)
    assert data[0] == kind and int.from_bytes(data[1:3], "big") == 16 * len(node_ids)
    assert wire.decode_chord_leave_data(data) == leave
    if node_ids:
        ans = ChordRouteQueryAns(node_ids[0])
        assert wire.decode_chord_route_query_ans(wire.encode_chord_route_query_ans(ans)) == ans


@given(st.binary(max_size=80))
def test_chord_structures_fuzz_cleanly(data: bytes) -> None:
    # random bytes: a clean ReloadDecodeError, or a value that re-encodes to the same bytes
    with contextlib.suppress(ReloadDecodeError):
        assert wire.encode_chord_update(wire.decode_chord_update(data)) == data
    with contextlib.suppress(ReloadDecodeError):
        assert wire.encode_chord_leave_data(wire.decode_chord_leave_data(data)) == data
    with contextlib.suppress(ReloadDecodeError):
        answer = wire.decode_chord_route_query_ans(data)
        assert wire.encode_chord_route_query_ans(answer) == data


# ---------------------------------------------------------------------------------------------
# Protocol logic through a synchronous in-memory driver
# ---------------------------------------------------------------------------------------------


class Ring:
    """Performs the actions of ChordTopology objects at once, in order (no loss); Attach
    and Join reach the peer an oracle says is responsible, among the joined peers."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.nodes: dict[bytes, ChordTopology] = {}
        self.dead: set[bytes] = set()
        self.log: list[tuple[bytes, ChordAction]] = []
        self.resources: dict[bytes, set[bytes]] = {}

    def joined_ids(self) -> list[bytes]:
        return sorted(n for n, t in self.nodes.items() if t.joined and n not in self.dead)

    def responsible(self, key: bytes) -> bytes:
        ring = self.joined_ids()
        return ring[bisect.bisect_left(ring, key) % len(ring)]

    def add(self, node_id: bytes) -> ChordTopology:
        topo = ChordTopology(node_id, self.now, rng=random.Random(val(node_id)))
        self.nodes[node_id] = topo
        self.resources[node_id] = set()
        if len(self.nodes) == 1:
            self.run(node_id, topo.create(self.now))
        else:
            self.run(node_id, topo.start_join(self.now))
        return topo

    def run(self, actor: bytes, actions: Iterable[ChordAction]) -> None:
        queue: deque[tuple[bytes, ChordAction]] = deque((actor, a) for a in actions)
        for _ in range(200_000):  # bounded
            if not queue:
                return
            who, action = queue.popleft()
            if who in self.dead:
                continue
            self.log.append((who, action))
            queue.extend((w, a) for w, a in self.perform(who, action))
        raise AssertionError("actions do not settle")

    def perform(self, who: bytes, action: ChordAction) -> list[tuple[bytes, ChordAction]]:
        me = self.nodes[who]
        now = self.now
        if isinstance(action, SendAttach):
            if action.resource_id in self.nodes and action.resource_id not in self.dead:
                target = action.resource_id  # a Node-ID we learnt about
            else:
                target = self.responsible(action.resource_id)
            if target == who:
                return [(who, a) for a in me.on_attach_failed(action.resource_id, now)]
            out = [
                (target, a)
                for a in self.nodes[target].on_attach_request(who, action.send_update, now)
            ]
            return [(who, a) for a in me.on_attached(target, now)] + out
        if isinstance(action, SendUpdate):
            if action.to in self.dead:
                return [(who, a) for a in me.on_connection_lost(action.to, now)]
            return [
                (action.to, a) for a in self.nodes[action.to].on_update(who, action.update, now)
            ]
        if isinstance(action, SendJoin):
            ap = self.nodes[action.to]
            return [(action.to, a) for a in ap.on_join(who, self.resources[action.to], now)]
        if isinstance(action, AnswerJoin):
            jn = self.nodes[action.to]
            return [(action.to, a) for a in jn.on_join_answer(who, action.accepted, now)]
        if isinstance(action, HandOver):
            self.resources[action.to] |= set(action.resource_ids)
            return []
        if isinstance(action, SendLeave):
            if action.to in self.dead:
                return []
            return [(action.to, a) for a in self.nodes[action.to].on_leave(who, action.data, now)]
        return []  # Replicate, JoinCompleted, Rejoin: recorded in the log

    def kill(self, node_id: bytes) -> None:
        """A crash without Leave: every peer connected to it notices the loss."""
        self.dead.add(node_id)
        for other, topo in self.nodes.items():
            if other not in self.dead and topo.table.is_connected(node_id):
                self.run(other, topo.on_connection_lost(node_id, self.now))

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        for _ in range(10_000):
            due = [
                (t, n)
                for n, topo in self.nodes.items()
                if n not in self.dead and (t := topo.next_timer()) is not None and t <= end
            ]
            if not due:
                break
            when, node = min(due)
            self.now = max(self.now, when)
            self.run(node, self.nodes[node].handle_timer(self.now))
        self.now = end

    def assert_correct_neighbors(self) -> None:
        ring = self.joined_ids()
        n = len(ring)
        for pos, node in enumerate(ring):
            t = self.nodes[node].table
            want = min(3, n - 1)
            assert t.successors[:want] == tuple(ring[(pos + k) % n] for k in range(1, want + 1))
            assert t.predecessors[:want] == tuple(ring[(pos - k) % n] for k in range(1, want + 1))
            for gone in self.dead:
                assert gone not in t.neighbors


def state(topo: ChordTopology) -> JoinState:
    """The join state, read through a call so that mypy does not narrow it across steps."""
    return topo.state


def random_ids(rng: random.Random, n: int) -> list[bytes]:
    return [rng.getrandbits(128).to_bytes(16, "big") for _ in range(n)]


def test_first_peer_is_alone_and_joined() -> None:
    topo = ChordTopology(nid(7), 0.0)
    assert topo.create(0.0) == [JoinCompleted(None)]
    assert topo.joined and topo.table.responsible_for(nid(123))
    assert topo.build_update(ChordUpdateType.PEER_READY, 12.7) == ChordUpdate(12, 1)


def test_join_steps_in_order() -> None:
    net = Ring(1)
    a, b, c, d = (nid(v << 120) for v in (0x10, 0x50, 0x90, 0xD0))
    for x in (a, b, c, d):
        net.add(x)
    # a resource the AP (d) is responsible for and the joining node will take over
    moving = nid((0xC0 << 120) + 1)
    staying = nid((0xC8 << 120) + 1)
    net.resources[d] |= {moving, staying}
    jn = nid(0xC4 << 120)
    net.log.clear()
    topo = net.add(jn)
    mine = [a for w, a in net.log if w == jn]
    # step 2: the first action is the Attach to n+1 asking for AP's Update
    assert mine[0] == SendAttach(add(jn, 1), send_update=True)
    assert topo.admitting_peer == d
    kinds = [type(x).__name__ for x in mine]
    join_at = kinds.index("SendJoin")
    first_update = kinds.index("SendUpdate")
    # §10.5: no Update placing JN in the overlay before its neighbor Attaches and its Join
    assert join_at < first_update
    assert "SendAttach" in kinds[1:join_at]  # step 3, before the Join
    assert mine[join_at] == SendJoin(d)
    ap_actions = [x for w, x in net.log if w == d]
    # step 2's send_update: AP's Update to JN comes first, before JN is in its tables
    assert isinstance(ap_actions[0], SendUpdate) and ap_actions[0].to == jn
    assert jn not in ap_actions[0].update.predecessors
    ap_actions = ap_actions[ap_actions.index(AnswerJoin(jn, True)) :]
    assert HandOver((moving,), jn) in ap_actions  # step 6, only the JN's range
    assert ap_actions.index(HandOver((moving,), jn)) < next(
        i for i, x in enumerate(ap_actions) if isinstance(x, SendUpdate) and x.to == jn
    )
    ap_update = next(x for x in ap_actions if isinstance(x, SendUpdate) and x.to == jn)
    assert ap_update.update.predecessors[0] == jn  # step 7: JN labelled AP's predecessor
    assert JoinCompleted(d) in mine
    assert topo.state == JoinState.JOINED
    assert net.resources[jn] == {moving}
    net.assert_correct_neighbors()


def test_admitting_peer_refuses_a_node_outside_its_range() -> None:
    ap = ChordTopology(nid(100), 0.0)
    ap.create(0.0)
    ap.on_update(nid(50), ChordUpdate(1, ChordUpdateType.PEER_READY), 0.0)
    assert ap.on_join(nid(200), [], 0.0) == [AnswerJoin(nid(200), False)]
    assert ap.on_join(nid(100), [], 0.0) == [AnswerJoin(nid(100), False)]
    assert ap.on_join(nid(70), [], 0.0)[0] == AnswerJoin(nid(70), True)


@pytest.mark.parametrize("seed", [1, 2])
def test_sequential_joins_build_correct_neighbor_tables(seed: int) -> None:
    net = Ring(seed)
    for node in random_ids(net.rng, 30):
        net.add(node)
    assert len(net.joined_ids()) == 30
    net.assert_correct_neighbors()
    # and greedy routing over the tables the protocol built reaches the responsible peer
    for _ in range(100):
        key = net.rng.getrandbits(128).to_bytes(16, "big")
        node = net.rng.choice(net.joined_ids())
        for _hop in range(40):
            hop = net.nodes[node].table.next_hop(key)
            if hop is None:
                break
            node = hop
        assert node == net.responsible(key)


def test_crashes_keep_three_successors_and_predecessors() -> None:
    net = Ring(3)
    for node in random_ids(net.rng, 24):
        net.add(node)
    ring = net.joined_ids()
    # two consecutive peers crash, then one more elsewhere
    for victim in (ring[5], ring[6], ring[15]):
        net.kill(victim)
    net.assert_correct_neighbors()
    for node in net.joined_ids():
        t = net.nodes[node].table
        assert len(t.successors) >= 3 and len(t.predecessors) >= 3


def test_replicas_follow_the_replica_set() -> None:
    net = Ring(5)
    for node in random_ids(net.rng, 12):
        net.add(node)
    ring = net.joined_ids()
    net.log.clear()
    victim = ring[4]
    net.kill(victim)
    pred = ring[3]
    # the predecessor lost a replica holder: it waits for the §10.7.1 hold-down first
    assert not any(isinstance(x, Replicate) for w, x in net.log if w == pred)
    net.advance(31.0)
    reps = [x for w, x in net.log if w == pred and isinstance(x, Replicate)]
    assert Replicate(ring[6], 2) in reps
    # the victim's successor took over the range: its whole replica set gets the data
    succ = ring[5]
    reps = [x for w, x in net.log if w == succ and isinstance(x, Replicate)]
    assert {r.to for r in reps} == {ring[6], ring[7]}


def test_leave_tells_neighbors_and_they_repair() -> None:
    net = Ring(6)
    for node in random_ids(net.rng, 16):
        net.add(node)
    ring = net.joined_ids()
    leaver = net.nodes[ring[8]]
    actions = leaver.leave(net.now)
    assert {a.to for a in actions if isinstance(a, SendLeave)} == set(leaver.table.neighbors)
    to_succ = next(a for a in actions if isinstance(a, SendLeave) and a.to == ring[9])
    to_pred = next(a for a in actions if isinstance(a, SendLeave) and a.to == ring[7])
    assert to_succ.data == ChordLeaveData(ChordLeaveType.FROM_PRED, leaver.table.predecessors)
    assert to_pred.data == ChordLeaveData(ChordLeaveType.FROM_SUCC, leaver.table.successors)
    net.dead.add(ring[8])
    for action in actions:
        assert isinstance(action, SendLeave)
        receiver = net.nodes[action.to]
        net.run(action.to, receiver.on_leave(ring[8], action.data, net.now))
    net.assert_correct_neighbors()


def test_losing_every_successor_asks_for_rejoin() -> None:
    topo = ChordTopology(nid(0), 0.0)
    topo.create(0.0)
    topo.on_update(nid(10), ChordUpdate(0, ChordUpdateType.PEER_READY), 0.0)
    assert topo.on_connection_lost(nid(10), 1.0) == [Rejoin()]


def test_update_from_unknown_neighbors_triggers_source_routed_attaches() -> None:
    topo = ChordTopology(nid(0), 0.0)
    topo.create(0.0)
    update = ChordUpdate(5, ChordUpdateType.NEIGHBORS, (nid(-10),), (nid(20), nid(30)))
    actions = topo.on_update(nid(10), update, 0.0)
    attaches = [a for a in actions if isinstance(a, SendAttach)]
    assert {a.resource_id for a in attaches} == {nid(-10), nid(20), nid(30)}
    assert all(a.via == nid(10) for a in attaches)  # §10.6
    assert topo.table.is_peer(nid(10))
    # the same Update again does not repeat pending Attaches
    again = topo.on_update(nid(10), update, 1.0)
    assert not [a for a in again if isinstance(a, SendAttach)]
    # ... until they time out
    later = topo.handle_timer(40.0)
    assert not [a for a in later if isinstance(a, SendAttach) and a.via is not None]
    retry = topo.on_update(nid(10), update, 41.0)
    assert len([a for a in retry if isinstance(a, SendAttach)]) == 3


def test_periodic_updates_and_finger_search() -> None:
    topo = ChordTopology(nid(0), 0.0, update_interval=600, ping_interval=3600)
    topo.create(0.0)
    for v in (10, 20, 30, -10, -20, -30):
        topo.on_update(nid(v), ChordUpdate(0, ChordUpdateType.PEER_READY), 0.0)
    first = topo.next_timer()
    assert first is not None and 0.0 <= first <= 3600.0
    updates: list[float] = []
    searches = 0
    now = 0.0
    for _ in range(100):
        when = topo.next_timer()
        assert when is not None
        if when > 8000:
            break
        now = when
        for a in topo.handle_timer(now):
            if isinstance(a, SendUpdate):
                updates.append(now)
                assert a.update.type == ChordUpdateType.NEIGHBORS
            if isinstance(a, SendAttach):
                searches += 1
    # six neighbors per round, every 600 s after a random first offset
    rounds = sorted(set(updates))
    assert len(updates) == 6 * len(rounds)
    assert all(abs((b - a) - 600) < 1e-6 for a, b in itertools.pairwise(rounds))
    assert len(rounds) >= 12
    assert searches <= 3  # at most one finger search per chord-ping-interval


def test_full_update_for_route_query_and_attach_update() -> None:
    topo = ChordTopology(nid(0), 100.0)
    topo.create(100.0)
    for v in (10, -10, 1 << 127):
        topo.on_update(nid(v), ChordUpdate(0, ChordUpdateType.PEER_READY), 100.0)
    answer, actions = topo.on_route_query(nid(5), nid(1 << 127), True, 150.0)
    assert answer == ChordRouteQueryAns(nid(1 << 127))
    assert actions == [
        SendUpdate(
            nid(5),
            ChordUpdate(50, ChordUpdateType.FULL, (nid(-10), nid(1 << 127), nid(10)),
                        (nid(10), nid(1 << 127), nid(-10)), (nid(1 << 127),)),
        )
    ]  # fmt: skip
    assert actions[0].kind == ChordUpdateType.FULL  # type: ignore[union-attr]
    on_attach = topo.on_attach_request(nid(3), True, 150.0)
    assert [type(a) for a in on_attach] == [SendUpdate]
    assert topo.table.next_hop(nid(3)) == nid(3) and not topo.table.is_peer(nid(3))


def test_would_be_neighbor_on_both_sides_of_a_full_table() -> None:
    t = ChordTable(nid(0))
    for v in (10, 20, 30, -10, -20, -30):
        t.peer_up(nid(v))
    assert t.would_be_neighbor(nid(25)) and t.would_be_neighbor(nid(-25))
    assert not t.would_be_neighbor(nid(35)) and not t.would_be_neighbor(nid(-35))
    assert not t.would_be_neighbor(nid(10)) and not t.would_be_neighbor(nid(0))
    topo = ChordTopology(nid(0), 0.0)
    topo.create(0.0)
    for v in (10, 20, 30, -10, -20, -30):
        topo.on_update(nid(v), ChordUpdate(0, ChordUpdateType.PEER_READY), 0.0)
    update = ChordUpdate(0, ChordUpdateType.NEIGHBORS, (nid(-15), nid(-40)), (nid(40),))
    actions = topo.on_update(nid(-10), update, 1.0)
    # -15 is a closer predecessor (through the sender, §10.6); -40 is no neighbor but is
    # nearer finger 1's target (2^127) than -30, the entry now: a conventional Attach
    assert [a for a in actions if isinstance(a, SendAttach)] == [
        SendAttach(nid(-15), nid(-10)),
        SendAttach(nid(-40)),
    ]


def test_runs_of_crashes_repair_without_waiting_for_the_update_interval() -> None:
    net = Ring(7)
    for node in random_ids(net.rng, 60):
        net.add(node)
    ring = net.joined_ids()
    # three consecutive peers (a peer loses its whole successor set one by one) and others
    for pos in (10, 11, 12, 30, 44, 45):
        net.kill(ring[pos])
    net.assert_correct_neighbors()  # no time has passed: reactive recovery alone did it
    for node in random_ids(net.rng, 5):
        net.add(node)
    net.assert_correct_neighbors()


def test_a_stale_neighbor_set_gets_an_update_back() -> None:
    topo = ChordTopology(nid(0), 0.0)
    topo.create(0.0)
    for v in (10, 20, 30, -10, -20, -30):
        topo.on_update(nid(v), ChordUpdate(0, ChordUpdateType.PEER_READY), 0.0)
    # -10 announces successors 0, 20, 40: it lacks 10, which we know
    stale = ChordUpdate(0, 2, (nid(-20), nid(-30), nid(-40)), (nid(0), nid(20), nid(40)))
    replies = [a for a in topo.on_update(nid(-10), stale, 1.0) if isinstance(a, SendUpdate)]
    assert [r.to for r in replies] == [nid(-10)]
    assert nid(10) in replies[0].update.successors
    good = ChordUpdate(0, 2, (nid(-20), nid(-30), nid(-40)), (nid(0), nid(10), nid(20)))
    assert not [a for a in topo.on_update(nid(-10), good, 2.0) if isinstance(a, SendUpdate)]
    # a predecessor list that lacks us is stale as well
    left = ChordUpdate(0, 2, (nid(5), nid(-10), nid(-20)), (nid(20), nid(30), nid(40)))
    assert topo.table.misses_neighbors(nid(10), left.predecessors, left.successors)
    assert not topo.table.misses_neighbors(
        nid(10), (nid(0), nid(-10), nid(-20)), (nid(20), nid(30), nid(40))
    )


def test_join_waits_for_every_neighbor_attach_before_the_join() -> None:
    jn_id, ap = nid(1000), nid(1100)
    jn = ChordTopology(jn_id, 0.0, rng=random.Random(1))
    assert jn.start_join(0.0) == [SendAttach(nid(1001), send_update=True)]
    assert jn.on_attached(ap, 0.1) == []  # AP answered the Attach to n+1
    assert jn.admitting_peer == ap and state(jn) == JoinState.ATTACHING_AP
    ap_update = ChordUpdate(
        9, ChordUpdateType.NEIGHBORS, (nid(900), nid(800), nid(700)), (nid(1200), nid(1300))
    )
    actions = jn.on_update(ap, ap_update, 0.2)
    via_ap = {a.resource_id for a in actions if isinstance(a, SendAttach) and a.via == ap}
    assert via_ap == {nid(900), nid(800), nid(700), nid(1200), nid(1300)}
    fingers = [a for a in actions if isinstance(a, SendAttach) and a.via is None]
    assert fingers  # step 3: the finger targets too, routed conventionally
    assert not any(isinstance(a, SendJoin | SendUpdate) for a in actions)
    assert state(jn) == JoinState.ATTACHING_NEIGHBORS
    for node in (nid(900), nid(800), nid(700), nid(1200)):
        assert not any(isinstance(a, SendJoin) for a in jn.on_attached(node, 0.3))
    assert jn.on_attach_failed(nid(1300), 0.4) == [SendJoin(ap)]  # the last one settles it
    assert jn.on_join_answer(ap, True, 0.5) == []
    # an Update from AP that does not yet name JN its predecessor does not finish the join
    assert jn.on_update(ap, ap_update, 0.6) == []
    labelled = ChordUpdate(9, 2, (jn_id, nid(900), nid(800)), (nid(1200), nid(1300)))
    done = jn.on_update(ap, labelled, 0.7)
    assert done[0] == JoinCompleted(ap) and jn.joined
    told = {a.to for a in done if isinstance(a, SendUpdate)}
    assert told == set(jn.table.neighbors) == {nid(900), nid(800), nid(700), ap, nid(1200)}
    assert Replicate(ap, 1) in done and Replicate(nid(1200), 2) in done


def test_join_steps_time_out_into_the_next_step() -> None:
    jn = ChordTopology(nid(1000), 0.0, rng=random.Random(2), update_interval=1e6)
    jn.start_join(0.0)
    jn.on_attached(nid(1100), 0.0)
    when = jn.next_timer()
    assert when is not None and when <= 30.0
    # AP never sent its Update: go on and Join with what we know
    assert SendJoin(nid(1100)) in jn.handle_timer(30.0)
    assert state(jn) == JoinState.JOIN_SENT
    # no JoinAns either: start over at step 2
    assert SendAttach(nid(1001), send_update=True) in jn.handle_timer(60.0)
    assert state(jn) == JoinState.ATTACHING_AP


def test_a_lost_finger_starts_a_search_in_its_range() -> None:
    me = nid(0)
    topo = ChordTopology(me, 0.0, rng=random.Random(3))
    topo.create(0.0)
    for v in (1, 2, 3, -1, -2, -3, (1 << 127) + 5, (1 << 126) + 5):
        topo.on_update(nid(v), ChordUpdate(0, ChordUpdateType.PEER_READY), 0.0)
    # the predecessors sit in finger 1's range too: finger 1 stays valid when it goes
    assert topo.table.fingers[2] == nid((1 << 126) + 5)
    assert not [a for a in topo.on_connection_lost(nid((1 << 127) + 5), 1.0) if a]
    assert topo.table.fingers[1] == nid(-3)
    actions = topo.on_connection_lost(nid((1 << 126) + 5), 2.0)
    targets = [distance(me, a.resource_id) for a in actions if isinstance(a, SendAttach)]
    assert len(targets) == 1 and 1 << 126 <= targets[0] < 1 << 127  # §10.7.2: finger 2
    assert not any(isinstance(a, SendUpdate) for a in actions)  # neighbors unchanged


@settings(max_examples=60)
@given(
    st.integers(0, MOD - 1),
    st.lists(st.integers(0, MOD - 1), max_size=8, unique=True),
    st.integers(0, MOD - 1),
    st.lists(st.integers(0, MOD - 1), max_size=12),
)
def test_responsibility_and_hand_over_match_the_ring_model(
    me: int, others: list[int], newcomer: int, keys: list[int]
) -> None:
    t = ChordTable(nid(me))
    for v in others:
        t.peer_up(nid(v))
    ring = sorted({me, *others})
    for k in [*keys, me, *others]:
        assert t.responsible_for(nid(k)) == (responsible(ring, k) == me)
    mine = [nid(k) for k in keys if t.responsible_for(nid(k))]
    handed = set(t.resources_to_hand_over(nid(newcomer), mine))
    if newcomer in ring:
        assert handed == set()
        return
    t.peer_up(nid(newcomer))
    # exactly what this peer was responsible for and the newcomer is now
    assert handed == {r for r in mine if not t.responsible_for(r)}
    assert all(responsible(sorted([*ring, newcomer]), val(r)) == newcomer for r in handed)


def test_topology_from_the_overlay_configuration() -> None:
    config = OverlayConfiguration(
        "overlay.example", chord_update_interval=120, chord_reactive=False
    )
    topo = ChordTopology.from_configuration(nid(0), config, 0.0, rng=random.Random(1))
    assert topo.update_interval == 120.0 and topo.ping_interval == 3600.0
    assert not topo.reactive
    topo.create(0.0)
    for v in (10, 20, -10):
        topo.on_update(nid(v), ChordUpdate(0, ChordUpdateType.PEER_READY), 0.0)
    # without reactive recovery a lost neighbor is not announced at once
    assert not [a for a in topo.on_connection_lost(nid(10), 1.0) if isinstance(a, SendUpdate)]


# ---------------------------------------------------------------------------------------------
# Restarts and hold-down (C5)
# ---------------------------------------------------------------------------------------------


def test_next_hop_does_not_hand_a_message_back_to_its_sender() -> None:
    t = ChordTable(nid(0))
    for v in (10, 20, 30, 1 << 127, -10, -20, -30):
        t.peer_up(nid(v))
    assert t.next_hop(nid(25)) == nid(20)
    # the previous hop is the peer we would pick: the next best one instead
    assert t.next_hop(nid(25), avoid=nid(20)) == nid(10)
    # nothing in (self, k] but the sender: the smallest after k, as §10.3's fallback
    assert t.next_hop(nid(15), avoid=nid(10)) == nid(20)
    # a sender we would not pick changes nothing; nor does it for a direct destination
    assert t.next_hop(nid(25), avoid=nid(30)) == nid(20)
    assert t.next_hop(nid(20), avoid=nid(20)) == nid(20)
    # a lone peer is still used: there is no other way
    lone = ChordTable(nid(0))
    lone.peer_up(nid(50))
    assert lone.next_hop(nid(40), avoid=nid(50)) == nid(50)


def test_admitting_peer_admits_its_restarted_predecessor_and_hands_its_range_back() -> None:
    ap = ChordTopology(nid(100), 0.0)
    ap.create(0.0)
    ap.on_update(nid(20), ChordUpdate(1, ChordUpdateType.PEER_READY), 0.0)
    ap.on_update(nid(50), ChordUpdate(1, ChordUpdateType.PEER_READY), 0.0)
    assert ap.table.predecessors[0] == nid(50)
    # nid(50) crashed and came back before we noticed: its JoinReq is accepted, and the
    # resources in (20, 50] we hold as its replica go to the new incarnation
    actions = ap.on_join(nid(50), [nid(30), nid(50), nid(70), nid(10)], 1.0)
    assert actions[0] == AnswerJoin(nid(50), True)
    assert HandOver((nid(30), nid(50)), nid(50)) in actions
    assert ap.table.predecessors[0] == nid(50)
    assert any(isinstance(a, SendUpdate) and a.to == nid(50) for a in actions)


@pytest.mark.parametrize("hold_down", [5.0, 30.0])
def test_hold_down_is_a_parameter(hold_down: float) -> None:
    topo = ChordTopology(nid(0), 0.0, hold_down=hold_down)
    topo.create(0.0)
    for v in (10, 20, 30, -10):
        topo.on_update(nid(v), ChordUpdate(1, ChordUpdateType.PEER_READY), 0.0)
    assert topo.table.successors[:2] == (nid(10), nid(20))
    assert not any(isinstance(a, Replicate) for a in topo.on_connection_lost(nid(10), 1.0))
    # a second failure during the hold-down does not postpone the replicas
    assert not any(isinstance(a, Replicate) for a in topo.on_connection_lost(nid(20), 2.0))
    assert not any(isinstance(a, Replicate) for a in topo.handle_timer(1.0 + hold_down - 0.1))
    due = topo.handle_timer(1.0 + hold_down)
    assert [a for a in due if isinstance(a, Replicate)] == [
        Replicate(nid(30), 1),
        Replicate(nid(-10), 2),
    ]
