"""CHORD-RELOAD (RFC 6940 §10) as a sans-IO core: ring arithmetic, the Neighbor and Finger
Tables, routing decisions, replica sets, and the join/update/leave/stabilization logic as pure
decisions that return actions for the node to perform.

Nothing here sends a message or reads a clock. :class:`ChordTable` is the routing state of one
peer (§10.1): the peers it is connected to, from which it derives the Neighbor Table (the
closest successors and predecessors, §10.7) and the Finger Table (finger i is the first peer at
or after n + 2^(bits-i), valid only inside [n + 2^(bits-i), n + 2^(bits-i+1) - 1], §10.5,
§10.7.4.2). :class:`ChordTopology` wraps a table with the protocol: what to do on an Update,
a Leave, a Join, a lost connection or a timer, each answered with a list of
:data:`ChordAction` dataclasses (send this Attach, this Update, hand these resources over...).

Node-IDs and Resource-IDs are ``bytes`` of the overlay's node-id-length (16 by default, so the
ring is mod 2^128, §10.1); internally they are ints, and the table keeps its peers sorted by
clockwise distance from itself so that every lookup is a bisection.

The structures of §10.7-§10.9 (ChordUpdate, ChordLeaveData, ChordRouteQueryAns) are the
dataclasses of :mod:`reload.messages` with their codec in :mod:`reload.wire`; this module builds
and reads them but never encodes.
"""

from __future__ import annotations

import bisect
import enum
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from reload.access import chord_resource_id
from reload.config import OverlayConfiguration
from reload.messages import (
    ChordLeaveData,
    ChordLeaveType,
    ChordRouteQueryAns,
    ChordUpdate,
    ChordUpdateType,
)

DEFAULT_NODE_ID_LENGTH = 16
DEFAULT_UPDATE_INTERVAL = 600.0  # §10.7.4.1: "about every ten minutes" (chord-update-interval)
DEFAULT_PING_INTERVAL = 3600.0  # §10.7.4.2: chord-ping-interval default
SUCCESSOR_HOLD_DOWN = 30.0  # §10.7.1: successor replacement hold-down time
ATTACH_TIMEOUT = 30.0  # how long a pending Attach blocks a new one to the same peer (ours)
JOIN_STEP_TIMEOUT = 30.0  # a join step that gets no answer falls back (ours, see JoinState)
MIN_NEIGHBORS = 3  # §10.7: at least three predecessors and three successors
MIN_FINGERS = 16  # §10.7.4.3: grow the Finger Table to 16 entries
MAX_FINGERS = 128  # §10.7.4.3: be capable of 128 entries


# ---------------------------------------------------------------------------------------------
# Ring arithmetic (§10.1: all arithmetic modulo 2^k, k the Node-ID length in bits)
# ---------------------------------------------------------------------------------------------


def resource_id(name: bytes) -> bytes:
    """Resource-ID of a Resource Name (§10.2): SHA-1 truncated to the high-order 128 bits."""
    return chord_resource_id(name)


def _int(node_id: bytes) -> int:
    return int.from_bytes(node_id, "big")


def _bytes(value: int, length: int) -> bytes:
    return value.to_bytes(length, "big")


def _between(a: int, x: int, b: int, closed_left: bool, closed_right: bool) -> bool:
    """x in the ring interval from a clockwise to b; (a, a) is the ring minus a, and an
    interval from a to a closed at either end is the whole ring (the Chord convention, so a
    peer alone is responsible for everything)."""
    if x == a:
        return closed_left or (a == b and closed_right)
    if x == b:
        return closed_right or (a == b and closed_left)
    if a < b:
        return a < x < b
    if a > b:
        return x > a or x < b
    return True  # a == b, x distinct from both


def between(
    a: bytes, x: bytes, b: bytes, *, closed_left: bool = False, closed_right: bool = False
) -> bool:
    """Whether ``x`` lies on the ring interval from ``a`` clockwise to ``b``.

    Open (a, b) by default; ``closed_right=True`` gives (a, b], the interval of §10.1's
    responsibility (a peer x is responsible for k when k is in (predecessor, x]). The ring
    wraps through 0, so (2^128-2, 1) holds 2^128-1 and 0. The three IDs must have one length.
    """
    if not len(a) == len(x) == len(b):
        raise ValueError("ring interval over IDs of different lengths")
    return _between(_int(a), _int(x), _int(b), closed_left, closed_right)


def distance(a: bytes, b: bytes) -> int:
    """Clockwise distance from ``a`` to ``b`` on the ring: (b - a) mod 2^(8·len)."""
    if len(a) != len(b):
        raise ValueError("ring distance between IDs of different lengths")
    return (_int(b) - _int(a)) % (1 << (8 * len(a)))


def add(node_id: bytes, offset: int) -> bytes:
    """``node_id + offset`` on the ring (e.g. n+1, the Resource-ID JN Attaches to, §10.5)."""
    bits = 8 * len(node_id)
    return _bytes((_int(node_id) + offset) % (1 << bits), len(node_id))


def finger_target(node_id: bytes, i: int) -> bytes:
    """The i'th finger's target n + 2^(bits-i) (§10.5, i counted from 1 = half the ring)."""
    bits = 8 * len(node_id)
    if not 1 <= i <= bits:
        raise ValueError(f"finger index {i} outside 1..{bits}")
    return add(node_id, 1 << (bits - i))


# ---------------------------------------------------------------------------------------------
# The routing table of one peer
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TableChange:
    """What a change of the peer set did to the Neighbor and Finger Tables.

    Lists are closest first (successors clockwise, predecessors counter-clockwise).
    """

    old_successors: tuple[bytes, ...]
    new_successors: tuple[bytes, ...]
    old_predecessors: tuple[bytes, ...]
    new_predecessors: tuple[bytes, ...]
    old_fingers: tuple[bytes, ...]
    new_fingers: tuple[bytes, ...]

    @property
    def neighbors_changed(self) -> bool:
        return (
            self.old_successors != self.new_successors
            or self.old_predecessors != self.new_predecessors
        )

    @property
    def fingers_changed(self) -> bool:
        return self.old_fingers != self.new_fingers

    @property
    def successor_changed(self) -> bool:
        """The immediate successor is another peer (or none)."""
        return self.old_successors[:1] != self.new_successors[:1]

    @property
    def predecessor_changed(self) -> bool:
        """The immediate predecessor changed: the range of responsible IDs did (§10.7.3)."""
        return self.old_predecessors[:1] != self.new_predecessors[:1]

    @property
    def replica_set_changed(self) -> bool:
        """The two successors that hold this peer's replicas changed (§10.4, §10.7.3)."""
        return self.old_successors[:2] != self.new_successors[:2]

    @property
    def lost_neighbors(self) -> frozenset[bytes]:
        old = set(self.old_successors) | set(self.old_predecessors)
        return frozenset(old - set(self.new_successors) - set(self.new_predecessors))

    @property
    def new_neighbors(self) -> frozenset[bytes]:
        new = set(self.new_successors) | set(self.new_predecessors)
        return frozenset(new - set(self.old_successors) - set(self.old_predecessors))


class ChordTable:
    """The Neighbor Table and Finger Table of one CHORD-RELOAD peer (§10.1, §10.7).

    The table holds the set of peers this peer has a connection to and that are part of the
    ring (:meth:`peer_up`/:meth:`peer_down`); the neighbor set is the ``successors`` closest
    peers clockwise and the ``predecessors`` closest counter-clockwise, and finger i is the
    first peer at or after n + 2^(bits-i) when it lies in finger i's valid range (§10.7.4.2).
    The Routing Table is the union of both tables (§10.3). Other connected nodes that are not
    ring peers (a Joining Node before its Join, clients) are recorded with
    :meth:`connection_up` so that messages for their Node-ID go straight to them (§10.3).
    """

    def __init__(
        self,
        self_id: bytes,
        node_id_length: int = DEFAULT_NODE_ID_LENGTH,
        successors: int = MIN_NEIGHBORS,
        predecessors: int = MIN_NEIGHBORS,
        fingers: int = MIN_FINGERS,
    ) -> None:
        if len(self_id) != node_id_length:
            raise ValueError(f"Node-ID of {len(self_id)} bytes, overlay uses {node_id_length}")
        if successors < MIN_NEIGHBORS or predecessors < MIN_NEIGHBORS:
            raise ValueError("CHORD-RELOAD keeps at least three successors and predecessors")
        bits = 8 * node_id_length
        if not 1 <= fingers <= min(MAX_FINGERS, bits):
            raise ValueError(f"finger table size {fingers} outside 1..{min(MAX_FINGERS, bits)}")
        self.self_id = self_id
        self.node_id_length = node_id_length
        self.bits = bits
        self.modulus = 1 << bits
        self.successor_count = successors
        self.predecessor_count = predecessors
        self.finger_count = fingers
        self._self = _int(self_id)
        self._dists: list[int] = []  # clockwise distances of ring peers, sorted
        self._by_dist: dict[int, bytes] = {}
        self._connections: set[bytes] = set()  # non-peer direct connections (§10.3)
        self._succ: tuple[int, ...] = ()
        self._pred: tuple[int, ...] = ()
        self._fingers: dict[int, int] = {}  # finger index i -> clockwise distance
        self._routing: list[int] = []  # sorted distances of neighbors ∪ fingers

    # --- conversions ---------------------------------------------------------------------

    def _dist(self, node_id: bytes) -> int:
        if len(node_id) != self.node_id_length:
            raise ValueError(f"ID of {len(node_id)} bytes, overlay uses {self.node_id_length}")
        return (_int(node_id) - self._self) % self.modulus

    def _id(self, dist: int) -> bytes:
        return self._by_dist[dist]

    # --- views ---------------------------------------------------------------------------

    @property
    def successors(self) -> tuple[bytes, ...]:
        """The successor set, closest first (§10.7)."""
        return tuple(self._id(d) for d in self._succ)

    @property
    def predecessors(self) -> tuple[bytes, ...]:
        """The predecessor set, closest first (§10.7)."""
        return tuple(self._id(d) for d in self._pred)

    @property
    def neighbors(self) -> frozenset[bytes]:
        """The Neighbor Table: successors ∪ predecessors (one peer may be both in a small
        ring)."""
        return frozenset(self._id(d) for d in (*self._succ, *self._pred))

    @property
    def fingers(self) -> dict[int, bytes]:
        """Valid Finger Table entries, by index i (1 = the peer about half the ring away)."""
        return {i: self._id(d) for i, d in sorted(self._fingers.items())}

    def finger_ids(self) -> tuple[bytes, ...]:
        """The distinct finger peers in numerically ascending order, as a full ChordUpdate
        carries them (§10.7)."""
        return tuple(sorted({self._id(d) for d in self._fingers.values()}))

    def routing_table(self) -> tuple[bytes, ...]:
        """The Routing Table (§10.3): neighbors ∪ fingers, clockwise from this peer."""
        return tuple(self._id(d) for d in self._routing)

    @property
    def peers(self) -> tuple[bytes, ...]:
        """Every ring peer this table is connected to, clockwise from this peer."""
        return tuple(self._id(d) for d in self._dists)

    def connections(self) -> frozenset[bytes]:
        """The Connection Table: ring peers and other directly connected nodes."""
        return frozenset(self._by_dist.values()) | self._connections

    def surplus_peers(self) -> tuple[bytes, ...]:
        """Connected ring peers that are neither neighbors nor fingers: the node may close
        these connections."""
        used = set(self._routing)
        return tuple(self._id(d) for d in self._dists if d not in used)

    def is_peer(self, node_id: bytes) -> bool:
        return self._dist(node_id) in self._by_dist and node_id != self.self_id

    def is_connected(self, node_id: bytes) -> bool:
        return node_id in self._connections or self.is_peer(node_id)

    # --- changes -------------------------------------------------------------------------

    def _snapshot(self) -> tuple[tuple[bytes, ...], tuple[bytes, ...], tuple[bytes, ...]]:
        return self.successors, self.predecessors, self.finger_ids()

    def _change(
        self, before: tuple[tuple[bytes, ...], tuple[bytes, ...], tuple[bytes, ...]]
    ) -> TableChange:
        succ, pred, fingers = self._snapshot()
        return TableChange(before[0], succ, before[1], pred, before[2], fingers)

    def _recompute(self) -> None:
        dists = self._dists
        self._succ = tuple(dists[: self.successor_count])
        self._pred = tuple(reversed(dists[-self.predecessor_count :])) if dists else ()
        fingers: dict[int, int] = {}
        for i in range(1, self.finger_count + 1):
            target = 1 << (self.bits - i)
            j = bisect.bisect_left(dists, target)
            # §10.7.4.2: finger i is valid in [n + 2^(bits-i), n + 2^(bits-i+1) - 1]
            if j < len(dists) and dists[j] < 2 * target:
                fingers[i] = dists[j]
        self._fingers = fingers
        self._routing = sorted({*self._succ, *self._pred, *fingers.values()})

    def peer_up(self, node_id: bytes) -> TableChange:
        """A ring peer is connected (Attach done and it is a peer): it enters the Routing
        Table where it fits (§10.5 step 4, §10.7.3)."""
        before = self._snapshot()
        d = self._dist(node_id)
        if d != 0 and d not in self._by_dist:  # §10.7.3: never enter ourselves
            bisect.insort(self._dists, d)
            self._by_dist[d] = node_id
            self._connections.discard(node_id)
            self._recompute()
        return self._change(before)

    def peer_down(self, node_id: bytes) -> TableChange:
        """The connection to a node is lost or it left (§10.7.1, §10.7.2, §10.9): every
        reference goes and the best remaining peers take its places."""
        before = self._snapshot()
        self._connections.discard(node_id)
        d = self._dist(node_id)
        if d in self._by_dist:
            del self._by_dist[d]
            self._dists.pop(bisect.bisect_left(self._dists, d))
            self._recompute()
        return self._change(before)

    def connection_up(self, node_id: bytes) -> None:
        """A node that is not (yet) a ring peer is directly connected (§10.5 step 3: the
        Attaches of a Joining Node fill Connection Tables, not Routing Tables)."""
        if node_id != self.self_id and not self.is_peer(node_id):
            self._connections.add(node_id)

    # --- decisions -----------------------------------------------------------------------

    def responsible_for(self, resource: bytes) -> bool:
        """§10.1: peer x is responsible for k when k is in (p, x], p its predecessor; a peer
        without predecessors is alone and responsible for the whole ring."""
        if not self._pred:
            return True
        k = self._dist(resource)
        # in distance coordinates x is 0 and p is self._pred[0]; (p, x] is (p, modulus)∪{0}
        return k == 0 or k > self._pred[0]

    def next_hop(
        self, destination: bytes, avoid: bytes | None = None, *, resource: bool = False
    ) -> bytes | None:
        """The next hop toward ``destination`` (§10.3), or None to deliver here.

        A directly connected node with that Node-ID gets the message even when it is not in
        the ring yet (a Joining Node, §10.5) — unless ``resource`` says the destination is a
        Resource-ID: a node that is not a ring peer (a client, §4.2) is responsible for no
        Resource-ID, not even one equal to its Node-ID. Otherwise a responsible peer keeps
        it, and anything else goes to the Routing Table's peer with the largest Node-ID in
        (self, k], or, if none lies there, the one with the smallest Node-ID after k.

        ``avoid`` (the node a message came from) is not chosen while another Routing Table
        peer remains: it sent the message to us because its own table has nothing nearer,
        so handing it back only loops until the TTL runs out. That happens when our table
        still lists a crashed peer whose Node-ID has just come back as a Joining Node, which
        routes everything through us (§10.5).
        """
        k = self._dist(destination)
        if k != 0 and (k in self._by_dist or (not resource and destination in self._connections)):
            return destination
        if self.responsible_for(destination):
            return None
        routing = self._routing
        j = bisect.bisect_right(routing, k) - 1
        hop = routing[j] if j >= 0 else routing[0]
        if avoid is not None and len(routing) > 1 and hop == self._dist(avoid):
            rest = [d for d in routing if d != hop]  # rare: no need for a faster search
            j = bisect.bisect_right(rest, k) - 1
            hop = rest[j] if j >= 0 else rest[0]
        return self._id(hop)

    def route_query(self, destination: bytes) -> ChordRouteQueryAns:
        """The ChordRouteQueryAns (§10.8): the peer this one would route to next; itself when
        it would deliver the message locally."""
        hop = self.next_hop(destination)
        return ChordRouteQueryAns(self.self_id if hop is None else hop)

    def replica_set(self, resource: bytes) -> tuple[bytes, ...]:
        """[responsible peer, successor 1, successor 2] for ``resource`` (§10.4).

        Exact when this peer is responsible (its own two successors); otherwise the best
        guess from this peer's view: the first known peer at or after the Resource-ID and the
        next two known peers after it. Shorter when the ring has fewer than three peers.
        """
        if self.responsible_for(resource):
            chain = [self.self_id, *(self._id(d) for d in self._succ[:2])]
        else:
            k = self._dist(resource)
            known = self._routing
            j = bisect.bisect_left(known, k)
            ordered = [*(self._id(d) for d in known[j:]), self.self_id]
            ordered += [self._id(d) for d in known[:j]]
            chain = ordered[:3]
        out: list[bytes] = []
        for node in chain:
            if node not in out:
                out.append(node)
        return tuple(out)

    def replica_number(self, resource: bytes, holder: bytes) -> int | None:
        """The replica_number (§10.4) ``holder`` gets for ``resource`` in this peer's replica
        set: 0 for the responsible peer, 1 and 2 for its successors, None if not in it."""
        chain = self.replica_set(resource)
        return chain.index(holder) if holder in chain else None

    def in_replica_range(self, resource: bytes) -> bool:
        """Whether this peer should still hold data for ``resource`` (§10.7.3): it is
        responsible or one of the two successors of the responsible peer, i.e. fewer than
        three predecessors lie between the Resource-ID and this peer. Unknown (fewer than
        three predecessors known) counts as kept."""
        if len(self._pred) < 3:
            return True
        k = self._dist(resource)
        return k == 0 or k > self._pred[2]

    def resources_to_hand_over(
        self, new_peer: bytes, my_resources: Iterable[bytes]
    ) -> tuple[bytes, ...]:
        """Of ``my_resources``, those a peer joining at ``new_peer`` becomes responsible for
        (§10.5 step 6): the ones in (current predecessor, new_peer]. Nothing when the new peer
        does not fall between the predecessor and this peer."""
        n = self._dist(new_peer)
        if n == 0:
            return ()
        low = self._pred[0] if self._pred else 0
        if self._pred and not n > low:
            return ()  # new_peer outside (predecessor, self): it takes none of our range
        out = []
        for r in my_resources:
            k = self._dist(r)
            # k in (low, n] in distance coordinates; with no predecessor low is 0 (= self)
            if (k > low and k <= n) if self._pred else (0 < k <= n):
                out.append(r)
        return tuple(out)

    def finger_targets(self) -> dict[int, bytes]:
        """Every finger's target n + 2^(bits-i) (§10.5), by index i."""
        return {
            i: _bytes((self._self + (1 << (self.bits - i))) % self.modulus, self.node_id_length)
            for i in range(1, self.finger_count + 1)
        }

    def fingers_to_fix(self) -> tuple[int, ...]:
        """Indices of invalid Finger Table entries (§10.7.4.2): no connected peer in the
        range. Ranges closer than the farthest successor are served by the neighbor set and
        are not worth a search (§10.7.4.3's sizing rule), so they are left out."""
        last_succ = self._succ[-1] if self._succ else None
        out = []
        for i in range(1, self.finger_count + 1):
            if i in self._fingers:
                continue
            top = (1 << (self.bits - i + 1)) - 1
            if last_succ is not None and top <= last_succ:
                continue
            out.append(i)
        return tuple(out)

    def random_in_finger_range(self, i: int, rng: random.Random) -> bytes:
        """A Node-ID drawn uniformly from finger i's valid range (§10.7.4.2: random
        selection minimizes the effect of churn)."""
        low = 1 << (self.bits - i)
        offset = rng.randrange(low, 2 * low)
        return _bytes((self._self + offset) % self.modulus, self.node_id_length)

    def would_be_neighbor(self, node_id: bytes) -> bool:
        """Whether a peer not yet in the table would enter the Neighbor Table (§10.7.3: a
        peer closer than the entries there, or a table not full)."""
        d = self._dist(node_id)
        if d == 0 or d in self._by_dist:
            return False
        dists = self._dists
        if len(dists) < self.successor_count + self.predecessor_count:
            return True
        return d < self._succ[-1] or d > self._pred[-1]

    def misses_neighbors(
        self, other: bytes, predecessors: Iterable[bytes], successors: Iterable[bytes]
    ) -> bool:
        """Whether the neighbor set ``other`` announced lacks a peer of ours (this peer or one
        of its neighbors) that is closer to ``other`` than its farthest announced successor or
        predecessor, or that would fill a list shorter than ours."""
        o = _int(other)
        m = self.modulus
        succ = [(_int(n) - o) % m for n in successors]
        pred = [(o - _int(n)) % m for n in predecessors]
        announced = {*succ, *(m - d for d in pred)}  # both as clockwise distances from other
        for node in (self.self_id, *self.neighbors):
            d = (_int(node) - o) % m
            if d == 0 or d in announced:
                continue
            if len(succ) < self.successor_count or d < max(succ):
                return True
            if len(pred) < self.predecessor_count or m - d < max(pred):
                return True
        return False

    def would_fill_finger(self, node_id: bytes) -> bool:
        """Whether a peer not in the table lies in an empty finger range or closer to its
        finger's target than the current entry (§10.7.4.2 Alternative 2)."""
        d = self._dist(node_id)
        if d == 0 or d in self._by_dist:
            return False
        i = self.bits - d.bit_length() + 1  # d in [2^(bits-i), 2^(bits-i+1))
        if i > self.finger_count:
            return False
        current = self._fingers.get(i)
        return current is None or d < current


# ---------------------------------------------------------------------------------------------
# Actions the node performs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendAttach:
    """Send an AttachReq to ``resource_id``: source-routed through ``via`` when set (a new
    neighbor learnt from ``via``, §10.6), routed conventionally otherwise (fingers, the
    Admitting Peer). ``send_update`` sets the AttachReqAns flag asking for an Update (§10.5
    step 2). When it succeeds with a peer, call :meth:`ChordTopology.on_attached`."""

    resource_id: bytes
    via: bytes | None = None
    send_update: bool = False


@dataclass(frozen=True, slots=True)
class SendUpdate:
    """Send an UpdateReq carrying ``update`` to the peer ``to`` (§10.7)."""

    to: bytes
    update: ChordUpdate

    @property
    def kind(self) -> ChordUpdateType:
        return ChordUpdateType(self.update.type)


@dataclass(frozen=True, slots=True)
class SendJoin:
    """Send a JoinReq to the Admitting Peer ``to`` (§10.5 step 5); report the answer with
    :meth:`ChordTopology.on_join_answer`."""

    to: bytes


@dataclass(frozen=True, slots=True)
class AnswerJoin:
    """Answer the JoinReq of ``to``: success, or an error (Error_Forbidden) when it does not
    join between this peer's predecessor and itself."""

    to: bytes
    accepted: bool


@dataclass(frozen=True, slots=True)
class HandOver:
    """Store the data of ``resource_ids`` at ``to``, the peer now responsible for them
    (§10.5 step 6). The node MAY then forget what it does not hold as a replica."""

    resource_ids: tuple[bytes, ...]
    to: bytes


@dataclass(frozen=True, slots=True)
class Replicate:
    """Send a Store with ``replica_number`` for every resource this peer is responsible for to
    ``to``, a new member of its replica set (§10.4, §10.7.3)."""

    to: bytes
    replica_number: int


@dataclass(frozen=True, slots=True)
class SendLeave:
    """Send a LeaveReq with ``data`` as overlay_specific_data to the neighbor ``to``
    (§10.9)."""

    to: bytes
    data: ChordLeaveData


@dataclass(frozen=True, slots=True)
class Rejoin:
    """Connectivity to every successor is lost: behave as if joining again (§10.7.1)."""


@dataclass(frozen=True, slots=True)
class JoinCompleted:
    """This node is part of the ring (§10.5 step 9 done); ``admitting_peer`` admitted it, or
    is None for the first peer of an overlay."""

    admitting_peer: bytes | None


ChordAction = (
    SendAttach
    | SendUpdate
    | SendJoin
    | AnswerJoin
    | HandOver
    | Replicate
    | SendLeave
    | Rejoin
    | JoinCompleted
)


class JoinState(enum.Enum):
    """Where a Joining Node is in §10.5."""

    IDLE = "idle"  # not started
    ATTACHING_AP = "attaching-ap"  # step 2: Attach to n+1 sent, AP's Update awaited
    ATTACHING_NEIGHBORS = "attaching-neighbors"  # step 3: Attaches to neighbors outstanding
    JOIN_SENT = "join-sent"  # step 5: JoinReq sent
    AWAITING_AP_UPDATE = "awaiting-ap-update"  # step 7: JoinAns received
    JOINED = "joined"


# ---------------------------------------------------------------------------------------------
# The protocol logic
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Timers:
    update_at: float
    ping_at: float
    replicate_at: float | None = None
    join_step_at: float | None = None
    attaching: dict[bytes, float] = field(default_factory=dict)  # pending Attach -> deadline


class ChordTopology:
    """One CHORD-RELOAD peer's topology logic (§10.5-§10.9), sans-IO.

    Feed it events (``on_*`` methods, :meth:`handle_timer`) with the current time; each
    returns the :data:`ChordAction` list the node must perform, in order. A first peer calls
    :meth:`create`; any other :meth:`start_join`. Updates are only sent once joined (§10.5:
    JN MUST NOT place itself in the overlay before its Attaches to its neighbors are done).
    """

    def __init__(
        self,
        self_id: bytes,
        now: float,
        *,
        node_id_length: int = DEFAULT_NODE_ID_LENGTH,
        successors: int = MIN_NEIGHBORS,
        predecessors: int = MIN_NEIGHBORS,
        fingers: int = MIN_FINGERS,
        update_interval: float = DEFAULT_UPDATE_INTERVAL,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        reactive: bool = True,
        hold_down: float = SUCCESSOR_HOLD_DOWN,
        rng: random.Random | None = None,
    ) -> None:
        self.table = ChordTable(self_id, node_id_length, successors, predecessors, fingers)
        self.self_id = self_id
        self.started = now
        self.update_interval = update_interval
        self.ping_interval = ping_interval
        self.reactive = reactive
        #: §10.7.1 successor replacement hold-down: how long to wait after a successor
        #: failed before making new replicas (lets a briefly lost successor come back).
        self.hold_down = hold_down
        self.rng = rng if rng is not None else random.Random()
        self.state = JoinState.IDLE
        self.admitting_peer: bytes | None = None
        self._pending_neighbors: set[bytes] = set()
        # §10.7.4.1: "randomly offset these Update requests so they do not occur all at once"
        self._timers = _Timers(
            update_at=now + self.rng.uniform(0.0, update_interval),
            ping_at=now + self.rng.uniform(0.0, ping_interval),
        )
        self._replicated_to: tuple[bytes, ...] = ()  # the successors our replicas are on

    @classmethod
    def from_configuration(
        cls,
        self_id: bytes,
        config: OverlayConfiguration,
        now: float,
        *,
        rng: random.Random | None = None,
        fingers: int = MIN_FINGERS,
    ) -> ChordTopology:
        """A topology with the configuration's node-id-length, chord-update-interval,
        chord-ping-interval and chord-reactive (§11.1; absent intervals take §10.7.4's
        defaults)."""
        return cls(
            self_id,
            now,
            node_id_length=config.node_id_length,
            fingers=fingers,
            update_interval=float(config.chord_update_interval or DEFAULT_UPDATE_INTERVAL),
            ping_interval=float(config.chord_ping_interval or DEFAULT_PING_INTERVAL),
            reactive=config.chord_reactive,
            rng=rng,
        )

    # --- ChordUpdate / ChordLeaveData ----------------------------------------------------

    def uptime(self, now: float) -> int:
        return max(0, min(int(now - self.started), 0xFFFFFFFF))

    def build_update(self, kind: ChordUpdateType, now: float) -> ChordUpdate:
        """The ChordUpdate of ``kind`` (§10.7): peer_ready carries nothing, neighbors this
        peer's predecessor and successor sets, full also its fingers in ascending order."""
        if kind == ChordUpdateType.PEER_READY:
            return ChordUpdate(self.uptime(now), kind)
        t = self.table
        if kind == ChordUpdateType.NEIGHBORS:
            return ChordUpdate(self.uptime(now), kind, t.predecessors, t.successors)
        return ChordUpdate(self.uptime(now), kind, t.predecessors, t.successors, t.finger_ids())

    def build_leave(self, to: bytes) -> ChordLeaveData:
        """The ChordLeaveData for neighbor ``to`` (§10.9): a predecessor of ours hears
        from_succ with our successors, anyone else (a successor) from_pred with our
        predecessors."""
        if to in self.table.predecessors:
            return ChordLeaveData(ChordLeaveType.FROM_SUCC, self.table.successors)
        return ChordLeaveData(ChordLeaveType.FROM_PRED, self.table.predecessors)

    # --- helpers -------------------------------------------------------------------------

    @property
    def joined(self) -> bool:
        return self.state == JoinState.JOINED

    def _updates_to(self, targets: Iterable[bytes], now: float) -> list[ChordAction]:
        update = self.build_update(ChordUpdateType.NEIGHBORS, now)
        return [SendUpdate(to, update) for to in sorted(set(targets))]

    def _attach(self, node_id: bytes, via: bytes | None, now: float) -> list[ChordAction]:
        deadline = self._timers.attaching.get(node_id)
        if deadline is not None and deadline > now:
            return []  # one Attach at a time per peer
        if node_id == self.self_id or self.table.is_peer(node_id):
            return []
        self._timers.attaching[node_id] = now + ATTACH_TIMEOUT
        return [SendAttach(node_id, via=via)]

    def _after_change(self, change: TableChange, now: float, failure: bool) -> list[ChordAction]:
        """Reactions to a table change: reactive Updates (§10.7.1, §10.7.3), replicas for
        new replica-set members (§10.4, §10.7.3, with the §10.7.1 hold-down after a failure),
        and Rejoin when every successor is gone (§10.7.1)."""
        if not self.joined:
            return []
        actions: list[ChordAction] = []
        t = self.table
        if change.old_successors and not change.new_successors:
            return [Rejoin()]
        if change.neighbors_changed and self.reactive:
            targets: set[bytes] = set(t.neighbors)
            if change.predecessor_changed:
                # §10.7.1/§10.7.3: a changed range of responsible IDs goes to the whole
                # Connection Table
                targets |= set(t.peers)
            actions += self._updates_to(targets, now)
        if change.predecessor_changed and change.old_predecessors:
            lost = change.old_predecessors[0] not in change.new_predecessors
            if lost:
                # the range grew by the failed predecessor's: our replica set needs it too
                self._replicated_to = ()
        if change.replica_set_changed or not self._replicated_to:
            if failure and change.old_successors[:2] != change.new_successors[:2]:
                # keep the earliest deadline: repeated failures under churn must not postpone
                # the new replicas indefinitely
                due = now + self.hold_down
                pending = self._timers.replicate_at
                self._timers.replicate_at = due if pending is None else min(pending, due)
            else:
                actions += self._replicate()
        return actions

    def _replicate(self) -> list[ChordAction]:
        current = self.table.successors[:2]
        actions: list[ChordAction] = [
            Replicate(node, n)
            for n, node in enumerate(current, start=1)
            if node not in self._replicated_to
        ]
        self._replicated_to = current
        self._timers.replicate_at = None
        return actions

    def _finger_search(self, now: float, all_invalid: bool) -> list[ChordAction]:
        """Alternative 1 of §10.7.4.2: walk the invalid entries from i=1 and pick each with
        probability 0.5, so earlier entries are favoured; Attach to a random Node-ID in its
        range (routed conventionally, §10.6). ``all_invalid`` searches every invalid entry
        (joining, reactive recovery)."""
        actions: list[ChordAction] = []
        for i in self.table.fingers_to_fix():
            if all_invalid or self.rng.random() < 0.5:
                target = self.table.random_in_finger_range(i, self.rng)
                actions.append(SendAttach(target))
                if not all_invalid:
                    break
        return actions

    # --- joining (§10.5), Joining Node's side --------------------------------------------

    def create(self, now: float) -> list[ChordAction]:
        """Be the first peer of a new overlay: alone and responsible for the whole ring."""
        self.state = JoinState.JOINED
        return [JoinCompleted(None)]

    def start_join(self, now: float) -> list[ChordAction]:
        """Step 2 (§10.5): Attach to the Admitting Peer, the one responsible for n+1, asking
        for its Update. Step 1, connecting to a bootstrap node, is the node's."""
        self.state = JoinState.ATTACHING_AP
        self.admitting_peer = None
        self._timers.join_step_at = now + JOIN_STEP_TIMEOUT
        return [SendAttach(add(self.self_id, 1), send_update=True)]

    def _send_join(self, now: float) -> list[ChordAction]:
        if self.admitting_peer is None:
            return self.start_join(now)
        self.state = JoinState.JOIN_SENT
        self._timers.join_step_at = now + JOIN_STEP_TIMEOUT
        return [SendJoin(self.admitting_peer)]

    def _finish_join(self, now: float) -> list[ChordAction]:
        """Step 9: JN Updates every peer in its Neighbor Table."""
        self.state = JoinState.JOINED
        self._timers.join_step_at = None
        self._replicated_to = ()
        actions: list[ChordAction] = [JoinCompleted(self.admitting_peer)]
        actions += self._updates_to(self.table.neighbors, now)
        actions += self._replicate()
        return actions

    def on_attached(self, node_id: bytes, now: float) -> list[ChordAction]:
        """An Attach of ours completed with the peer ``node_id``: it enters the Routing Table
        (§10.5 step 4, §10.7.3)."""
        self._timers.attaching.pop(node_id, None)
        if node_id == self.self_id:
            return []
        if self.state == JoinState.ATTACHING_AP and self.admitting_peer is None:
            self.admitting_peer = node_id  # the answerer of the Attach to n+1 is AP
        change = self.table.peer_up(node_id)
        actions = self._after_change(change, now, failure=False)
        if self.state == JoinState.ATTACHING_NEIGHBORS:
            self._pending_neighbors.discard(node_id)
            if not self._pending_neighbors:
                actions += self._send_join(now)
        return actions

    def on_attach_failed(self, node_id: bytes, now: float) -> list[ChordAction]:
        """An Attach of ours failed: forget it; a Joining Node goes on without that
        neighbor."""
        self._timers.attaching.pop(node_id, None)
        if self.state == JoinState.ATTACHING_AP and self.admitting_peer is None:
            return []  # the node retries through another bootstrap node (its business)
        if self.state == JoinState.ATTACHING_NEIGHBORS:
            self._pending_neighbors.discard(node_id)
            if not self._pending_neighbors:
                return self._send_join(now)
        return []

    def on_join_answer(self, admitting_peer: bytes, ok: bool, now: float) -> list[ChordAction]:
        """The JoinAns (or an error) from AP: wait for its Update labelling us its
        predecessor (step 7), or start again."""
        if self.state != JoinState.JOIN_SENT or admitting_peer != self.admitting_peer:
            return []
        if not ok:
            return self.start_join(now)
        self.state = JoinState.AWAITING_AP_UPDATE
        self._timers.join_step_at = now + JOIN_STEP_TIMEOUT
        return []

    def _joining_update(self, sender: bytes, update: ChordUpdate, now: float) -> list[ChordAction]:
        actions: list[ChordAction] = []
        if self.state == JoinState.ATTACHING_AP and self.admitting_peer is None:
            self.admitting_peer = sender  # AP's Update overtook its AttachAns
        if self.state == JoinState.ATTACHING_AP and sender == self.admitting_peer:
            self._timers.attaching.pop(sender, None)
            self.table.peer_up(sender)
            # step 3: Attach to everyone that belongs in our Neighbor Table, through AP (§10.6)
            for node in (*update.predecessors, *update.successors):
                if self.table.would_be_neighbor(node):
                    self._pending_neighbors.add(node)
                    actions += self._attach(node, sender, now)
            # and to the finger targets, routed conventionally
            actions += self._finger_search(now, all_invalid=True)
            self.state = JoinState.ATTACHING_NEIGHBORS
            self._timers.join_step_at = now + JOIN_STEP_TIMEOUT
            self._pending_neighbors = {
                n for n in self._pending_neighbors if not self.table.is_peer(n)
            }
            if not self._pending_neighbors:
                actions += self._send_join(now)
        elif (
            self.state == JoinState.AWAITING_AP_UPDATE
            and sender == self.admitting_peer
            and self.self_id in update.predecessors
        ):
            actions += self._finish_join(now)
        return actions

    # --- joining (§10.5), Admitting Peer's side ------------------------------------------

    def on_join(
        self, joining_node: bytes, my_resources: Iterable[bytes], now: float
    ) -> list[ChordAction]:
        """A JoinReq from ``joining_node`` (steps 5-8): answer it; hand over the resources it
        is now responsible for; enter it (it becomes our predecessor) and send it and every
        neighbor our new neighbor set. A node that does not fall between our predecessor and
        us is refused.

        A JoinReq from the Node-ID we hold as our predecessor comes from that node restarted
        before we noticed its crash (§10.7.1 failure detection takes a while): its old
        incarnation and the data it held are gone, so it leaves the table first and the
        new one is admitted, and handed its range, like any Joining Node."""
        t = self.table
        if self.joined and t.predecessors[:1] == (joining_node,):
            t.peer_down(joining_node)
        preds = t.predecessors
        fits = joining_node != self.self_id and (
            not preds or between(preds[0], joining_node, self.self_id)
        )
        if not self.joined or not fits:
            return [AnswerJoin(joining_node, False)]
        actions: list[ChordAction] = [AnswerJoin(joining_node, True)]
        moving = t.resources_to_hand_over(joining_node, my_resources)
        if moving:
            actions.append(HandOver(moving, joining_node))
        change = t.peer_up(joining_node)
        # step 7 (JN labelled predecessor) and step 8 (all neighbours, JN included): one
        # neighbors Update each, even without reactive recovery
        targets = set(t.neighbors) | {joining_node}
        if change.predecessor_changed:
            targets |= set(t.peers)
        actions += self._updates_to(targets, now)
        if change.replica_set_changed:
            actions += self._replicate()
        return actions

    def on_attach_request(self, node_id: bytes, send_update: bool, now: float) -> list[ChordAction]:
        """We answered an AttachReq from ``node_id``: it is in the Connection Table only
        (§10.5 step 3: a Joining Node's Attaches fill Connection Tables, not Routing Tables;
        a peer enters ours with its Update). ``send_update`` asks for our Update (§10.5
        step 2)."""
        self.table.connection_up(node_id)
        if not send_update or not self.joined:
            return []
        return [SendUpdate(node_id, self.build_update(ChordUpdateType.NEIGHBORS, now))]

    def on_route_query(
        self, sender: bytes, destination: bytes, send_update: bool, now: float
    ) -> tuple[ChordRouteQueryAns, list[ChordAction]]:
        """A RouteQueryReq (§10.8): the answer, and a full Update to the requester when it
        set send_update (§10.7: full is what a RouteQueryReq asks for)."""
        answer = self.table.route_query(destination)
        if not send_update:
            return answer, []
        return answer, [SendUpdate(sender, self.build_update(ChordUpdateType.FULL, now))]

    # --- Updates (§10.7.3) ---------------------------------------------------------------

    def on_update(self, sender: bytes, update: ChordUpdate, now: float) -> list[ChordAction]:
        """An UpdateReq from ``sender``, a node we are connected to (§10.7.3).

        The sender is a peer (it enters the Routing Table, peer_ready says exactly that).
        Peers it names that would enter our Neighbor Table get an Attach source-routed
        through the sender (§10.6); peers that fill an empty finger range, or sit nearer a
        finger's target than its entry, get a conventional Attach (§10.7.4.2 Alternative 2,
        done at once rather than flagged for the next chord-ping-interval). A sender whose
        own neighbor set visibly lacks peers we know gets our Update back. The table itself changes only when those Attaches
        complete (:meth:`on_attached`).
        """
        if self.state not in (JoinState.JOINED, JoinState.IDLE):
            return self._joining_update(sender, update, now)
        actions: list[ChordAction] = []
        if sender != self.self_id and not self.table.is_peer(sender):
            self._timers.attaching.pop(sender, None)
            actions += self._after_change(self.table.peer_up(sender), now, failure=False)
        for node in (*update.predecessors, *update.successors):
            if self.table.would_be_neighbor(node):
                actions += self._attach(node, sender, now)
            elif self.table.would_fill_finger(node):
                actions += self._attach(node, None, now)
        for node in update.fingers:
            if self.table.would_fill_finger(node) or self.table.would_be_neighbor(node):
                actions += self._attach(node, None, now)
        if (
            self.joined
            and update.type != ChordUpdateType.PEER_READY
            and sender in self.table.neighbors
            and self.table.misses_neighbors(sender, update.predecessors, update.successors)
            and not any(isinstance(a, SendUpdate) and a.to == sender for a in actions)
        ):
            # The sender's neighbor set lacks peers we know belong in it (a run of failed
            # successors it replaced from its fingers, say). §10.7.3 only has Updates sent
            # on our own changes, so it would wait a whole chord-update-interval; our
            # Update now lets it Attach to them. It cannot ping-pong: the sender answers with
            # Attaches, and Updates again only if its table changes.
            actions += self._updates_to([sender], now)
        return actions

    # --- failures and Leave (§10.7.1, §10.7.2, §10.9) ------------------------------------

    def on_connection_lost(self, node_id: bytes, now: float) -> list[ChordAction]:
        """The connection to ``node_id`` is gone (failed pings or requests): remove it
        everywhere and recover (§10.7.1 neighbors, §10.7.2 fingers)."""
        held = [i for i, f in self.table.fingers.items() if f == node_id]
        change = self.table.peer_down(node_id)
        actions = self._after_change(change, now, failure=True)
        if self.state == JoinState.ATTACHING_NEIGHBORS and node_id in self._pending_neighbors:
            actions += self.on_attach_failed(node_id, now)
        if self.joined and self.reactive:
            # §10.7.2: search a new entry for each finger the lost peer held that no other
            # connected peer fills now
            invalid = set(self.table.fingers_to_fix())
            for i in held:
                if i in invalid:
                    actions.append(SendAttach(self.table.random_in_finger_range(i, self.rng)))
        return actions

    def on_leave(self, sender: bytes, data: ChordLeaveData, now: float) -> list[ChordAction]:
        """A LeaveReq from a neighbor (§10.9): as a failure of it (§10.7.1), and its list
        names the peers to Attach to in its place (routed conventionally, the leaver is
        going)."""
        actions = self.on_connection_lost(sender, now)
        for node in data.node_ids:
            if node != sender and self.table.would_be_neighbor(node):
                actions += self._attach(node, None, now)
        return actions

    def leave(self, now: float) -> list[ChordAction]:
        """Leave the overlay (§10.9): a LeaveReq to every neighbor."""
        actions: list[ChordAction] = [
            SendLeave(to, self.build_leave(to)) for to in sorted(self.table.neighbors)
        ]
        self.state = JoinState.IDLE
        return actions

    # --- timers (§10.7.4) ----------------------------------------------------------------

    def next_timer(self) -> float | None:
        """When :meth:`handle_timer` next has something to do."""
        t = self._timers
        candidates = [t.update_at, t.ping_at, *t.attaching.values()]
        if t.replicate_at is not None:
            candidates.append(t.replicate_at)
        if t.join_step_at is not None and not self.joined:
            candidates.append(t.join_step_at)
        return min(candidates)

    def handle_timer(self, now: float) -> list[ChordAction]:
        """Run what is due: the periodic neighbors Update (§10.7.4.1), the finger search
        (§10.7.4.2), replicas after the successor hold-down (§10.7.1), expired Attaches and
        stalled join steps."""
        t = self._timers
        actions: list[ChordAction] = []
        expired = [n for n, deadline in t.attaching.items() if deadline <= now]
        for node in expired:
            actions += self.on_attach_failed(node, now)
        if t.join_step_at is not None and t.join_step_at <= now and not self.joined:
            t.join_step_at = None
            actions += self._join_step_timeout(now)
        if t.replicate_at is not None and t.replicate_at <= now:
            actions += self._replicate() if self.joined else []
            t.replicate_at = None
        if t.update_at <= now:
            t.update_at = now + self.update_interval
            if self.joined:
                actions += self._updates_to(self.table.neighbors, now)
        if t.ping_at <= now:
            t.ping_at = now + self.ping_interval
            if self.joined:
                actions += self._finger_search(now, all_invalid=False)
        return actions

    def _join_step_timeout(self, now: float) -> list[ChordAction]:
        """A join step got no answer in time. Without AP's Update JN goes on with what it
        knows (§10.5 allows filling the Neighbor Table incrementally); without the Join
        answer it starts over; without AP's closing Update it considers itself joined (the
        JoinAns already said so)."""
        if self.state == JoinState.ATTACHING_AP:
            return self._send_join(now)  # restarts the join when AP never answered
        if self.state == JoinState.ATTACHING_NEIGHBORS:
            self._pending_neighbors.clear()
            return self._send_join(now)
        if self.state == JoinState.JOIN_SENT:
            return self.start_join(now)
        if self.state == JoinState.AWAITING_AP_UPDATE:
            return self._finish_join(now)
        return []
