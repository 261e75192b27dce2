"""The second process of the tracker benchmark (:mod:`bench.tracker`): load generator and timer.

``python -m bench.tracker_load load ...`` drives a running tracker daemon (``p2pcdn
tracker``) from outside its process, the way the issue asks ("load from a second process on
loopback"). It first registers a population, 100 cachers and 900 viewers (CSCs) in 100 swarms,
so that FIND does real peer selection. Then it sends CONNECT, FIND and STAT_REPORT requests for
fixed times: binary over UDP, binary over TCP, and RFC 7846 JSON over HTTP/1.1. Last, it sends
the 10,000-swarm batch availability report end to end.

To keep the generator from being the bottleneck, it uses no event loop and no client library
on the hot path. Every request is encoded before the timing starts. Sending one only writes a
fresh transaction ID into its bytes (binary header octets 8-15, or a fixed-width decimal
in the JSON). The generator keeps many requests outstanding: a window of datagrams, pipelined
TCP connections, and many keep-alive HTTP connections. The tracker's CPU time (from
``/proc/PID/stat``) and the generator's own CPU time are reported for every timing window, so a
reader can tell which process was saturated.

``python -m bench.tracker_load batch ...`` times the batch report in this process: the
sans-IO :class:`~ppsp.tracker.state.Tracker` and the codecs, with no sockets.

Output: one JSON object per line on stdout (``"kind"`` says which), ending with
``{"kind": "done"}``. A failure is ``{"kind": "error", "error": ...}`` and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import hashlib
import itertools
import json
import os
import selectors
import socket
import statistics
import struct
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ppsp.tracker import binary, json_codec
from ppsp.tracker.client import (
    JsonHttpTrackerClient,
    TcpTrackerClient,
    TrackerClient,
    TrackerClientError,
    UdpTrackerClient,
    parse_tracker_url,
)
from ppsp.tracker.messages import (
    Action,
    AvailabilityDelta,
    Connect,
    Find,
    PeerAddress,
    PeerMode,
    PeerNum,
    Request,
    Response,
    ResponseType,
    Role,
    StatReport,
    StreamStats,
    SwarmAction,
    SwarmAvailability,
)
from ppsp.tracker.state import Tracker, TrackerConfig

Address = tuple[str, int]

# -- the population (issue 3: "e.g. 1,000 peers in 100 swarms") ------------------------------

SWARMS = 100
CACHERS = 100
VIEWERS = 900
#: Each cacher holds this many swarms, so every swarm has CACHERS * this / SWARMS cachers.
SWARMS_PER_CACHER = 10
AREAS = ("area-0", "area-1", "area-2", "area-3")
#: Peers a FIND asks for (RFC 7846 §3.2.7: "should be less than 30").
FIND_PEERS = 20

#: Binary header fields read on the hot path: token, method, transaction ID, fragment, length
#: (draft-gu-02 §5.2.1; the layout is binary.HEADER).
_HEAD = struct.Struct(">I2xHQII")
_TID = struct.Struct(">Q")
_TID_OFFSET = 8
_SUCCESSFUL = int(binary.Method.SUCCESSFUL)
_RESPONSE_BYTE = 0x88  # method octet 0: 0x88 for responses, 0x08 for requests
_LAST = binary.LAST_FRAGMENT
#: Transaction IDs are written as 19 decimal digits in JSON so that a request's length (and
#: Content-Length) does not change from one request to the next.
FIRST_TID = 10**18
PLACEHOLDER_TID = str(FIRST_TID)
#: Every request of the run gets its own transaction ID (RFC 7846 §4.3: a repeated one is a
#: retransmission, which the tracker answers from its cache without doing the work again).
_TIDS = itertools.count(FIRST_TID + 1)
#: Outstanding requests: datagrams in flight, per TCP connection and per HTTP connection.
UDP_WINDOW = 64
TCP_CONNECTIONS = 4
TCP_WINDOW = 16
HTTP_CONNECTIONS = 16
HTTP_WINDOW = 1
#: A UDP request unanswered this long is sent again, and lost after MAX_TRIES sendings.
#: Loopback answers in a millisecond, but on a shared machine the tracker can be descheduled.
LOSS_TIMEOUT = 1.0
MAX_TRIES = 3
#: A finite phase (population, per-swarm reporting) that takes longer than this has failed.
PHASE_LIMIT = 120.0
#: Every this many successful responses one is decoded in full and its peer list counted.
SAMPLE_EVERY = 64
RECV_SIZE = 256 * 1024
SOCKET_BUFFER = 4 * 1024 * 1024
MAX_HTTP_HEAD = 16 * 1024
MAX_HTTP_BODY = 16 * 1024 * 1024


class LoadError(RuntimeError):
    """The tracker did not behave as the workload needs: the measurement would be invalid."""


def _hex(label: str, i: int, length: int = 64) -> str:
    return hashlib.sha256(f"p2pcdn-bench-{label}-{i}".encode()).hexdigest()[:length]


def swarm_id(i: int, label: str = "swarm") -> str:
    """A swarm ID as our peers write them: the hex of a SHA-256 root hash."""
    return _hex(label, i)


def peer_id(label: str, i: int) -> str:
    """A peer ID: 128 random-looking bits in hex, like a UUID without dashes."""
    return _hex(label, i, 32)


def emit(kind: str, **fields: Any) -> None:
    print(json.dumps({"kind": kind, **fields}), flush=True)


# -- requests encoded ahead of time ---------------------------------------------------------


class Template:
    """One request, encoded for both wires with a placeholder transaction ID; sending it only
    writes a fresh transaction ID into the bytes."""

    __slots__ = ("_binary", "_http_head", "_json_prefix", "_json_suffix", "request")

    def __init__(self, request: Request, http_host: str | None) -> None:
        self.request = replace(request, transaction_id=PLACEHOLDER_TID)
        self._binary = bytearray(binary.encode(self.request, max_fragment=binary.MAX_MESSAGE)[0])
        self._json_prefix = self._json_suffix = self._http_head = b""
        if http_host is not None:
            body = json_codec.encode_request(self.request)
            quoted = f'"{PLACEHOLDER_TID}"'.encode()
            if body.count(quoted) != 1:
                raise LoadError("cannot place the transaction ID in the JSON request")
            self._json_prefix, self._json_suffix = body.split(quoted)
            self._http_head = (
                f"POST / HTTP/1.1\r\nHost: {http_host}\r\n"
                f"Content-Type: {json_codec.CONTENT_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()

    def binary(self, tid: int) -> bytes:
        _TID.pack_into(self._binary, _TID_OFFSET, tid)
        return bytes(self._binary)

    def http(self, tid: int) -> bytes:
        return b'%s%s"%d"%s' % (self._http_head, self._json_prefix, tid, self._json_suffix)


class Workload:
    """What a phase sends: items (each one request at a time) spread over lanes (the UDP
    socket, or connections), each lane's items in turn. In a ``stateful`` workload an item's
    next request depends on the answer to its last one; the tracker answers each lane in
    order, so that holds as long as every lane has more items than requests outstanding
    (:meth:`check_window`)."""

    name = "workload"
    stateful = False

    def __init__(self, items: Sequence[int], lanes: int, *, cyclic: bool) -> None:
        self.cyclic = cyclic
        self._lanes: list[collections.deque[int]] = [collections.deque() for _ in range(lanes)]
        for n, item in enumerate(items):
            self._lanes[n % lanes].append(item)

    def check_window(self, window: int) -> None:
        if self.stateful and any(len(queue) <= window for queue in self._lanes):
            raise LoadError(f"{self.name}: a lane has no more items than {window} outstanding")

    def next_item(self, lane: int) -> int | None:
        queue = self._lanes[lane]
        if not queue:
            return None
        item = queue.popleft()
        if self.cyclic:
            queue.append(item)
        return item

    def template(self, item: int) -> Template:
        raise NotImplementedError

    def answered(self, item: int, ok: bool) -> None:
        """A response came: a stateful workload updates what it knows about ``item``."""

    def lost(self, item: int) -> None:
        """No response came: a stateful workload can no longer tell ``item``'s state."""
        if self.stateful:
            self.retire(item)

    def retire(self, item: int) -> None:
        for queue in self._lanes:
            if item in queue:
                queue.remove(item)


@dataclass
class Population:
    """The peers and swarms the tracker is loaded with, and every request template."""

    http_host: str | None
    swarms: list[str] = field(default_factory=lambda: [swarm_id(i) for i in range(SWARMS)])
    cachers: list[str] = field(
        default_factory=lambda: [peer_id("cacher", i) for i in range(CACHERS)]
    )
    viewers: list[str] = field(
        default_factory=lambda: [peer_id("viewer", i) for i in range(VIEWERS)]
    )
    #: 0 while viewer v watches its home swarm, 1 while it watches its alternative one.
    where: list[int] = field(default_factory=lambda: [0] * VIEWERS)
    _templates: dict[str, list[list[Template]]] = field(default_factory=dict)

    def templates(self, kind: str) -> list[list[Template]]:
        """The viewers' requests of one kind, indexed [where][viewer], encoded once."""
        if kind not in self._templates:
            host = self.http_host
            if kind == "FIND":
                found = [Template(self.find(v), host) for v in range(VIEWERS)]
                self._templates[kind] = [found, found]
            elif kind == "CONNECT":
                self._templates[kind] = [
                    [Template(self.channel_switch(v, w), host) for v in range(VIEWERS)]
                    for w in (0, 1)
                ]
            elif kind == "STAT_REPORT":
                self._templates[kind] = [
                    [Template(self.stat_report(v, w), host) for v in range(VIEWERS)] for w in (0, 1)
                ]
            else:
                raise ValueError(f"no such request kind: {kind}")
        return self._templates[kind]

    def cacher_swarms(self, c: int) -> list[int]:
        return [(c % (SWARMS // SWARMS_PER_CACHER)) + j * (SWARMS // SWARMS_PER_CACHER)
                for j in range(SWARMS_PER_CACHER)]  # fmt: skip

    def viewer_swarm(self, v: int, where: int) -> int:
        home = v % SWARMS
        return home if where == 0 else (home + 1) % SWARMS

    def cacher_connect(self, c: int) -> Connect:
        """A cacher's registration: N SEEDER JOIN with its chunk ranges (Table 6 row "N SEEDER
        JOIN from START"), its role and area (our extensions)."""
        entries = [
            SwarmAvailability(
                self.swarms[s], PeerMode.SEEDER, Role.CACHER,
                [(0, 63 + 64 * (c % 4)), (1000 + 100 * (c % 7), 1999)],
            )
            for s in self.cacher_swarms(c)
        ]  # fmt: skip
        return Connect(
            self.cachers[c],
            PLACEHOLDER_TID,
            [SwarmAction(e.swarm_id, Action.JOIN, PeerMode.SEEDER) for e in entries],
            peer_addresses=[PeerAddress("127.0.0.1", 20000 + c)],
            role=Role.CACHER,
            area=AREAS[c % len(AREAS)],
            availability=entries,
        )

    def viewer_connect(self, v: int) -> Connect:
        """A CSC joining its first channel: 1 LEECH JOIN (Table 6), with the chunks it has."""
        sid = self.swarms[self.viewer_swarm(v, 0)]
        return Connect(
            self.viewers[v],
            PLACEHOLDER_TID,
            [SwarmAction(sid, Action.JOIN, PeerMode.LEECH)],
            peer_addresses=[PeerAddress("127.0.0.1", 30000 + v)],
            role=Role.CSC,
            area=AREAS[v % len(AREAS)],
            availability=[SwarmAvailability(sid, PeerMode.LEECH, Role.CSC, [(0, 16 + v % 48)])],
        )

    def channel_switch(self, v: int, where: int) -> Connect:
        """RFC 7846 §4.1.1.1: LEAVE the current swarm and JOIN another in one CONNECT."""
        old = self.swarms[self.viewer_swarm(v, where)]
        new = self.swarms[self.viewer_swarm(v, 1 - where)]
        return Connect(
            self.viewers[v],
            PLACEHOLDER_TID,
            [SwarmAction(old, Action.LEAVE, PeerMode.LEECH),
             SwarmAction(new, Action.JOIN, PeerMode.LEECH)],
        )  # fmt: skip

    def find(self, v: int) -> Find:
        """A FIND with our hints: the chunks wanted (the requester's area is on record)."""
        first = 64 * (v % 8)
        return Find(
            self.viewers[v],
            PLACEHOLDER_TID,
            self.swarms[(v * 7 + 3) % SWARMS],
            peer_num=PeerNum(FIND_PEERS),
            ranges=[(first, first + 63)],
        )

    def stat_report(self, v: int, where: int) -> StatReport:
        """RFC 7846 §4.1.3 STREAM_STATS for the swarm the viewer watches."""
        sid = self.swarms[self.viewer_swarm(v, where)]
        stats = StreamStats(sid, 1_000_000 + v, 50_000_000 + v, 8_000_000, 4 + v % 8)
        return StatReport(self.viewers[v], PLACEHOLDER_TID, stats=[stats])


class Registrations(Workload):
    """Finite: each request once (the population's CONNECTs)."""

    name = "populate"

    def __init__(self, requests: Sequence[Request], lanes: int, http_host: str | None) -> None:
        super().__init__(range(len(requests)), lanes, cyclic=False)
        self._templates = [Template(r, http_host) for r in requests]
        self.failed = 0

    def template(self, item: int) -> Template:
        return self._templates[item]

    def answered(self, item: int, ok: bool) -> None:
        if not ok:
            self.failed += 1


class ViewerLoad(Workload):
    """Cyclic: viewers send CONNECT (channel switches), FIND or STAT_REPORT, round robin."""

    def __init__(self, kind: str, pop: Population, lanes: int) -> None:
        live = [v for v in range(VIEWERS) if v not in RETIRED]
        super().__init__(live, lanes, cyclic=True)
        self.name = kind
        self.pop = pop
        self.stateful = kind == "CONNECT"
        self._by_where = pop.templates(kind)

    def template(self, item: int) -> Template:
        return self._by_where[self.pop.where[item]][item]

    def answered(self, item: int, ok: bool) -> None:
        if not self.stateful:
            return
        if ok:
            self.pop.where[item] ^= 1
        else:
            self.retire(item)

    def retire(self, item: int) -> None:
        super().retire(item)
        RETIRED.add(item)


#: Viewers whose state the generator no longer knows (a lost channel switch): left out of
#: every later phase, so that no request of theirs is invalid for a reason of ours.
RETIRED: set[int] = set()


# -- timing windows -------------------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int | None) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads) from /proc."""
    if pid is None:
        return None
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # fields 14, 15 of proc(5)


@dataclass
class Tally:
    ok: int = 0
    errors: int = 0
    lost: int = 0
    retransmitted: int = 0
    peers: list[int] = field(default_factory=list)
    error_codes: collections.Counter[int] = field(default_factory=collections.Counter)


@dataclass
class Mark:
    at: float
    ok: int
    errors: int
    lost: int
    cpu: float
    tracker_cpu: float | None

    @classmethod
    def take(cls, tally: Tally, tracker_pid: int | None) -> Mark:
        return cls(
            time.perf_counter(), tally.ok, tally.errors, tally.lost, time.process_time(),
            process_cpu(tracker_pid),
        )  # fmt: skip


def window_result(first: Mark, last: Mark, tally: Tally) -> dict[str, Any]:
    seconds = last.at - first.at
    tracker = (
        None
        if first.tracker_cpu is None or last.tracker_cpu is None
        else last.tracker_cpu - first.tracker_cpu
    )
    return {
        "seconds": seconds,
        "ok": last.ok - first.ok,
        "errors": last.errors - first.errors,
        "lost": last.lost - first.lost,
        "retransmitted": tally.retransmitted,
        "generator_cpu": last.cpu - first.cpu,
        "tracker_cpu": tracker,
        "peers": statistics.fmean(tally.peers) if tally.peers else None,
        "error_codes": {str(k): v for k, v in tally.error_codes.items()},
    }


@dataclass
class Timing:
    """When a phase measures: ``warmup`` seconds unmeasured, then ``seconds`` measured; a
    finite phase (``seconds`` None) runs until its workload is done."""

    warmup: float = 0.0
    seconds: float | None = None
    tracker_pid: int | None = None


# -- binary over UDP ------------------------------------------------------------------------


class UdpLoad:
    """One UDP socket, a window of outstanding requests (the tracker answers in order)."""

    def __init__(self, addr: Address) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            self.sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.connect(addr)
        self.sock.settimeout(LOSS_TIMEOUT)

    def close(self) -> None:
        self.sock.close()

    def run(self, work: Workload, timing: Timing, window: int = UDP_WINDOW) -> dict[str, Any]:
        """Keep ``window`` requests outstanding until the time is up (or the workload is
        done), then collect the answers still due, so the next phase finds an idle tracker.
        A request unanswered for :data:`LOSS_TIMEOUT` is sent again with its transaction ID
        (RFC 7846 §4.3), at most :data:`MAX_TRIES` times in all."""
        work.check_window(window)
        sock = self.sock
        tally = Tally()
        inflight: dict[int, list[Any]] = {}  # transaction ID -> [item, bytes, times sent]
        start = time.perf_counter()
        measure_at = start + timing.warmup
        end = measure_at + timing.seconds if timing.seconds is not None else start + PHASE_LIMIT
        first: Mark | None = None
        last: Mark | None = None
        sending = True
        head = _HEAD
        next_item = work.next_item
        template = work.template
        answered = work.answered
        tids = _TIDS
        while True:
            if last is None:
                now = time.perf_counter()
                if first is None and now >= measure_at:
                    first = Mark.take(tally, timing.tracker_pid)
                if now >= end:
                    if timing.seconds is None:
                        raise LoadError(f"{work.name} over UDP did not finish in {PHASE_LIMIT:g} s")
                    last = Mark.take(tally, timing.tracker_pid)
                    sending = False
            while sending and len(inflight) < window:
                item = next_item(0)
                if item is None:
                    sending = False
                    break
                tid = next(tids)
                data = template(item).binary(tid)
                inflight[tid] = [item, data, 1]
                sock.send(data)
            if not inflight:
                if sending:
                    continue
                break
            try:
                data = sock.recv(RECV_SIZE)
            except TimeoutError:
                self._retransmit(inflight, work, tally)
                continue
            if len(data) < binary.HEADER_SIZE:
                continue
            token, method, tid, fragment, _ = head.unpack_from(data)
            if token != binary.TOKEN or method >> 8 != _RESPONSE_BYTE or not fragment & _LAST:
                continue  # pushes from the tracker, and fragments before the last
            entry = inflight.pop(tid, None)
            if entry is None:
                continue  # a second answer to a retransmitted request
            ok = method == _SUCCESSFUL
            answered(entry[0], ok)
            if ok:
                tally.ok += 1
                if tally.ok % SAMPLE_EVERY == 0 and fragment == binary.UNFRAGMENTED:
                    _sample_binary(data, tally)
            else:
                tally.errors += 1
                tally.error_codes[method] += 1
        if last is None:
            last = Mark.take(tally, timing.tracker_pid)
        return window_result(first or last, last, tally)

    def _retransmit(self, inflight: dict[int, list[Any]], work: Workload, tally: Tally) -> None:
        for tid, entry in list(inflight.items()):
            if entry[2] >= MAX_TRIES:
                del inflight[tid]
                work.lost(entry[0])
                tally.lost += 1
            else:
                entry[2] += 1
                tally.retransmitted += 1
                self.sock.send(entry[1])


def _sample_binary(data: bytes, tally: Tally) -> None:
    message = binary.decode(data)
    if isinstance(message, Response) and message.swarm_results:
        peers = message.swarm_results[-1].peers
        if peers is not None:
            tally.peers.append(len(peers))


# -- binary over TCP and JSON over HTTP: lanes of pipelined requests -------------------------


class Lane:
    """One TCP connection with requests outstanding in order."""

    def __init__(self, index: int, addr: Address) -> None:
        self.index = index
        self.sock = socket.create_connection(addr, timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(30)  # sendall never waits forever on a tracker that hangs
        self.buffer = bytearray()
        self.inflight: collections.deque[tuple[int, int]] = collections.deque()
        self.exhausted = False

    def close(self) -> None:
        self.sock.close()


class StreamLoad:
    """Pipelined requests over several connections: binary frames over TCP, or HTTP/1.1
    keep-alive requests carrying RFC 7846 JSON."""

    def __init__(self, addr: Address, connections: int, window: int, *, http: bool) -> None:
        self.addr = addr
        self.connections = connections
        self.window = window
        self.http = http

    @property
    def transport(self) -> str:
        return "http" if self.http else "tcp"

    def run(self, work: Workload, timing: Timing) -> dict[str, Any]:
        """Fill every connection to its window and refill it as answers come, until the time
        is up (or the workload is done); then collect the answers still due."""
        work.check_window(self.window)
        lanes: list[Lane] = []
        selector = selectors.DefaultSelector()
        try:
            for i in range(self.connections):
                lanes.append(Lane(i, self.addr))
                selector.register(lanes[-1].sock, selectors.EVENT_READ, lanes[-1])
            return self._run(work, timing, lanes, selector)
        finally:
            selector.close()
            for lane in lanes:
                lane.close()

    def _fill(self, lane: Lane, work: Workload) -> None:
        out = []
        while len(lane.inflight) < self.window and not lane.exhausted:
            item = work.next_item(lane.index)
            if item is None:
                lane.exhausted = True
                break
            tid = next(_TIDS)
            lane.inflight.append((tid, item))
            template = work.template(item)
            out.append(template.http(tid) if self.http else template.binary(tid))
        if out:
            lane.sock.sendall(b"".join(out))

    def _run(
        self,
        work: Workload,
        timing: Timing,
        lanes: list[Lane],
        selector: selectors.BaseSelector,
    ) -> dict[str, Any]:
        tally = Tally()
        start = time.perf_counter()
        measure_at = start + timing.warmup
        end = measure_at + timing.seconds if timing.seconds is not None else start + PHASE_LIMIT
        first: Mark | None = None
        parse = self._http_responses if self.http else self._frames
        for lane in lanes:
            self._fill(lane, work)
        stopping = False
        while True:
            now = time.perf_counter()
            if first is None and now >= measure_at:
                first = Mark.take(tally, timing.tracker_pid)
            if now >= end and not stopping:
                if timing.seconds is None:
                    raise LoadError(
                        f"{work.name} over {self.transport} did not finish in {PHASE_LIMIT:g} s"
                    )
                stopping = True
                last = Mark.take(tally, timing.tracker_pid)
                for lane in lanes:
                    lane.exhausted = True  # stop sending; collect what is due
            if all(not lane.inflight for lane in lanes) and all(lane.exhausted for lane in lanes):
                break
            events = selector.select(timeout=LOSS_TIMEOUT * 10)
            if not events:
                raise LoadError(f"the tracker stopped answering {work.name} over {self.transport}")
            for key, _ in events:
                lane = key.data
                data = lane.sock.recv(RECV_SIZE)
                if not data:
                    raise LoadError(f"the tracker closed a {self.transport} connection")
                lane.buffer += data
                parse(lane, work, tally)
                if not stopping:
                    self._fill(lane, work)
        if not stopping:
            last = Mark.take(tally, timing.tracker_pid)
        return window_result(first or last, last, tally)

    @staticmethod
    def _frames(lane: Lane, work: Workload, tally: Tally) -> None:
        buf = lane.buffer
        pos = 0
        size = len(buf)
        while size - pos >= binary.HEADER_SIZE:
            token, method, tid, fragment, length = _HEAD.unpack_from(buf, pos)
            if token != binary.TOKEN or not binary.HEADER_SIZE <= length <= binary.MAX_MESSAGE:
                raise LoadError("the tracker sent something that is not a PPSP-TP frame")
            if size - pos < length:
                break
            frame_at = pos
            pos += length
            if method >> 8 != _RESPONSE_BYTE or not fragment & _LAST:
                continue  # the tracker speaking first (push hints), fragments before the last
            if not lane.inflight:
                raise LoadError(f"an answer to transaction {tid}, which is not outstanding")
            expected, item = lane.inflight.popleft()
            if tid != expected:
                raise LoadError(f"response to transaction {tid}, expected {expected}")
            ok = method == _SUCCESSFUL
            work.answered(item, ok)
            if ok:
                tally.ok += 1
                if tally.ok % SAMPLE_EVERY == 0 and fragment == binary.UNFRAGMENTED:
                    _sample_binary(bytes(buf[frame_at:pos]), tally)
            else:
                tally.errors += 1
                tally.error_codes[method] += 1
        del buf[:pos]

    @staticmethod
    def _http_responses(lane: Lane, work: Workload, tally: Tally) -> None:
        buf = lane.buffer
        pos = 0
        while True:
            end_of_head = buf.find(b"\r\n\r\n", pos)
            if end_of_head < 0:
                if len(buf) - pos > MAX_HTTP_HEAD:
                    raise LoadError("HTTP response head too long")
                break
            head = bytes(buf[pos:end_of_head]).lower()
            length = _content_length(head)
            if not 0 <= length <= MAX_HTTP_BODY:
                raise LoadError(f"HTTP response body of {length} bytes")
            body_at = end_of_head + 4
            if len(buf) < body_at + length:
                break
            body = bytes(buf[body_at : body_at + length])
            pos = body_at + length
            if not head.startswith(b"http/1.1 200"):
                raise LoadError(f"HTTP status {head[:40]!r}")
            if not lane.inflight:
                raise LoadError("an HTTP response to no request")
            _, item = lane.inflight.popleft()
            ok = b'"response_type":0' in body
            work.answered(item, ok)
            if ok:
                tally.ok += 1
                if tally.ok % SAMPLE_EVERY == 0:
                    response = json_codec.decode_response(body)
                    if response.swarm_results and response.swarm_results[-1].peers is not None:
                        tally.peers.append(len(response.swarm_results[-1].peers))
            else:
                tally.errors += 1
                code = json_codec.decode_response(body).error_code
                tally.error_codes[int(code)] += 1
        del buf[:pos]


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip() == b"content-length":
            return int(value.strip())
    raise LoadError("HTTP response without Content-Length")


# -- the load mode --------------------------------------------------------------------------


def _address(url: str) -> Address:
    _, (host, port) = parse_tracker_url(url)
    return (host, port)


def populate(udp: UdpLoad, pop: Population) -> dict[str, Any]:
    """Register the cachers (each a batch of 10 SEEDER JOINs with chunk ranges), then the
    viewers (a LEECH JOIN each); every registration must succeed."""
    results = {}
    for name, requests in (
        ("cachers", [pop.cacher_connect(c) for c in range(CACHERS)]),
        ("viewers", [pop.viewer_connect(v) for v in range(VIEWERS)]),
    ):
        work = Registrations(requests, 1, None)
        out = udp.run(work, Timing())
        if out["errors"] or out["lost"]:
            raise LoadError(
                f"registering the {name}: {out['errors']} errors {out['error_codes']}, "
                f"{out['lost']} lost"
            )
        results[name] = out["ok"]
    return results


def load_mode(args: argparse.Namespace) -> None:
    http_addr, udp_addr, tcp_addr = _address(args.http), _address(args.udp), _address(args.tcp)
    pop = Population(http_host=f"{http_addr[0]}:{http_addr[1]}")
    udp = UdpLoad(udp_addr)
    try:
        started = time.perf_counter()
        counts = populate(udp, pop)
        emit("populated", **counts, swarms=SWARMS, seconds=time.perf_counter() - started)
        streams = {
            "tcp": StreamLoad(tcp_addr, TCP_CONNECTIONS, TCP_WINDOW, http=False),
            "http": StreamLoad(http_addr, HTTP_CONNECTIONS, HTTP_WINDOW, http=True),
        }
        timing = Timing(args.warmup, args.seconds, args.tracker_pid)
        # Repetitions outermost: a disturbance from the shared machine spreads over every
        # configuration instead of spoiling one.
        for rep in range(args.reps):
            for transport in ("udp", "tcp", "http"):
                for kind in ("CONNECT", "FIND", "STAT_REPORT"):
                    lanes = 1 if transport == "udp" else streams[transport].connections
                    work = ViewerLoad(kind, pop, lanes)
                    if transport == "udp":
                        out = udp.run(work, timing)
                    else:
                        out = streams[transport].run(work, timing)
                    emit("rate", transport=transport, request=kind, rep=rep, **out,
                         retired=len(RETIRED))  # fmt: skip
        run_per_swarm(udp, streams["tcp"], args)
    finally:
        udp.close()
    batch_end_to_end(args)


# -- the batch availability report ----------------------------------------------------------


def batch_ranges(i: int) -> list[tuple[int, int]]:
    """What a cacher holds of swarm ``i``: the head, and a run further on."""
    return [(0, 63 + i % 64), (1000 + 10 * (i % 50), 1500 + 10 * (i % 50))]


def batch_connect(peer: str, swarms: int, tid: str = "1") -> Connect:
    """The batch availability report a cacher sends on (re)connect: N SEEDER JOIN (RFC 7846
    Table 6, valid from START, so a plain RFC tracker registers the swarms too) with each
    swarm's chunk ranges in the availability extension."""
    entries = [
        SwarmAvailability(swarm_id(i, "batch"), PeerMode.SEEDER, Role.CACHER, batch_ranges(i))
        for i in range(swarms)
    ]
    return Connect(
        peer,
        tid,
        [SwarmAction(e.swarm_id, Action.JOIN, PeerMode.SEEDER) for e in entries],
        peer_addresses=[PeerAddress("127.0.0.1", 40000)],
        role=Role.CACHER,
        area=AREAS[0],
        availability=entries,
    )


def per_swarm_reports(peer: str, swarms: int) -> list[Request]:
    """The same report one swarm per message: a CONNECT for the first swarm, then one
    STAT_REPORT per swarm (an availability delta). RFC 7846 Table 6 makes a second CONNECT
    with a SEEDER JOIN invalid once the peer is TRACKING, so this is how a peer reports one
    swarm at a time."""
    first = batch_connect(peer, 1)
    rest: list[Request] = [
        StatReport(
            peer,
            str(i + 1),
            deltas=[AvailabilityDelta(swarm_id(i, "batch"), cached=batch_ranges(i))],
        )
        for i in range(1, swarms)
    ]
    return [first, *rest]


def _check_batch(response: Response, swarms: int) -> None:
    if response.response_type != ResponseType.SUCCESSFUL:
        raise LoadError(f"the batch report failed: error {response.error_code:02d}")
    good = sum(1 for r in response.swarm_results if r.result == ResponseType.SUCCESSFUL)
    if good != swarms:
        raise LoadError(f"the batch report registered {good} of {swarms} swarms")


def run_per_swarm(udp: UdpLoad, tcp: StreamLoad, args: argparse.Namespace) -> None:
    """The per-swarm reporting end to end: 10,000 messages, pipelined (UDP window, one TCP
    connection), every one answered SUCCESSFUL."""
    for rep in range(args.per_swarm_reps):
        for transport in ("udp", "tcp"):
            requests = per_swarm_reports(peer_id(f"per-swarm-{transport}", rep), args.swarms)
            first = Registrations(requests[:1], 1, None)
            rest = Registrations(requests[1:], 1, None)
            started = time.perf_counter()
            cpu = time.process_time()
            tracker_cpu = process_cpu(args.tracker_pid)
            outs = []
            for work in (first, rest):
                if transport == "udp":
                    outs.append(udp.run(work, Timing()))
                else:
                    single = StreamLoad(tcp.addr, 1, UDP_WINDOW, http=False)
                    outs.append(single.run(work, Timing()))
            seconds = time.perf_counter() - started
            tracker_after = process_cpu(args.tracker_pid)
            errors, lost = sum(o["errors"] for o in outs), sum(o["lost"] for o in outs)
            if errors or lost:
                codes = [o["error_codes"] for o in outs]
                raise LoadError(
                    f"per-swarm reporting over {transport}: {errors} errors {codes}, {lost} lost"
                )
            emit(
                "per_swarm_e2e", transport=transport, rep=rep, messages=len(requests),
                seconds=seconds, generator_cpu=time.process_time() - cpu,
                tracker_cpu=None if tracker_cpu is None or tracker_after is None
                else tracker_after - tracker_cpu,
            )  # fmt: skip


def batch_end_to_end(args: argparse.Namespace) -> None:
    """The batch report through the client library, as a cacher sends it: over UDP
    (fragments, paced), TCP and HTTP; time from the call to the verified response."""
    from lab.cli import run_coroutine

    async def one(transport: str, rep: int) -> dict[str, Any]:
        peer = peer_id(f"batch-{transport}", rep)
        request = batch_connect(peer, args.swarms)
        client: TrackerClient
        if transport == "udp":
            # The first retransmission no sooner than a slow answer could come (the default
            # RTO would resend all ~700 fragments while the tracker is still at work).
            client = UdpTrackerClient(_address(args.udp), peer, timeout=60, initial_rto=5.0,
                                      max_rto=10.0)  # fmt: skip
        elif transport == "tcp":
            client = TcpTrackerClient(_address(args.tcp), peer, timeout=60)
        else:
            client = JsonHttpTrackerClient(args.http, peer, timeout=60)
        tracker_cpu = process_cpu(args.tracker_pid)
        try:
            started = time.perf_counter()
            response = await client.connect(
                request.swarm_actions,
                peer_addresses=request.peer_addresses,
                role=request.role,
                area=request.area,
                availability=request.availability,
            )
            seconds = time.perf_counter() - started
        finally:
            await client.close()
        tracker_after = process_cpu(args.tracker_pid)
        _check_batch(response, args.swarms)
        out: dict[str, Any] = {
            "transport": transport, "rep": rep, "seconds": seconds,
            "tracker_cpu": None if tracker_cpu is None or tracker_after is None
            else tracker_after - tracker_cpu,
        }  # fmt: skip
        if isinstance(client, UdpTrackerClient):
            out["datagrams_sent"] = client.datagrams_sent
        return out

    async def main() -> None:
        failed: set[str] = set()
        for rep in range(args.reps):
            for transport in ("udp", "tcp", "http"):
                if transport in failed:
                    continue
                try:
                    emit("batch_e2e", **await one(transport, rep))
                except (TrackerClientError, LoadError) as exc:
                    # One transport's failure (a client bug, a refused report) is reported
                    # and the others are still measured.
                    failed.add(transport)
                    emit("batch_e2e_failed", transport=transport,
                         error=f"{type(exc).__name__}: {exc}")  # fmt: skip
                await asyncio.sleep(0.05)

    run_coroutine(main())


# -- the batch mode: in-process timings ------------------------------------------------------


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``fn()``, its wall-clock seconds and its CPU seconds (of this single-threaded process)."""
    gc.collect()
    started, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - started, time.process_time() - cpu


def batch_mode(args: argparse.Namespace) -> None:
    swarms = args.swarms
    peer = peer_id("batch-in-process", 0)
    request = batch_connect(peer, swarms, "42")
    udp_fragments = binary.encode(request, max_fragment=binary.DEFAULT_MAX_FRAGMENT)
    tcp_frames = binary.encode(request, max_fragment=64 * 1024)  # the TCP client's fragments
    json_body = json_codec.encode_request(request)
    implicit = binary.encode(replace(request, swarm_actions=[]), max_fragment=binary.MAX_MESSAGE)
    emit(
        "batch_sizes", swarms=swarms,
        binary_bytes=sum(map(len, udp_fragments)), udp_datagrams=len(udp_fragments),
        tcp_bytes=sum(map(len, tcp_frames)), tcp_frames=len(tcp_frames),
        json_bytes=len(json_body), binary_implicit_bytes=sum(map(len, implicit)),
    )  # fmt: skip

    singles = per_swarm_reports(peer, swarms)
    single_wire = [binary.encode(m, max_fragment=binary.DEFAULT_MAX_FRAGMENT) for m in singles]
    if any(len(f) != 1 for f in single_wire):
        raise LoadError("a one-swarm report does not fit one datagram")
    single_bytes = [f[0] for f in single_wire]
    emit(
        "per_swarm_sizes", messages=len(singles),
        binary_bytes=sum(map(len, single_bytes)),
        json_bytes=sum(len(json_codec.encode_request(m)) for m in singles),
        # 10,000 one-swarm CONNECTs (were Table 6 to allow them) would be this many times:
        binary_connect_bytes=len(single_bytes[0]),
        json_connect_bytes=len(json_codec.encode_request(singles[0])),
    )  # fmt: skip

    for rep in range(args.reps):
        times = _time_batch(peer, swarms, udp_fragments, json_body, single_bytes)
        emit("batch_in_process", rep=rep, **times)


def _time_batch(
    peer: str,
    swarms: int,
    udp_fragments: list[bytes],
    json_body: bytes,
    single_bytes: list[bytes],
) -> dict[str, Any]:
    """One repetition of the in-process timings: the tracker's receive path for the batch
    (reassembly and decoding of every fragment), Tracker.handle on a tracker that does not
    know the peer (a cacher reconnecting after a tracker restart), encoding the answer; then
    the same availability one swarm per message, into another fresh tracker."""
    source = ("127.0.0.1", 40000)

    def reassemble() -> Request:
        reassembler = binary.Reassembler(max_message=binary.MAX_MESSAGE)
        message = None
        for fragment in udp_fragments:
            message = reassembler.feed(fragment, source, 0.0)
        if not isinstance(message, Connect):
            raise LoadError("the batch did not reassemble")
        return message

    decoded, decode_wall, decode_cpu = _timed(reassemble)
    _, json_wall, json_cpu = _timed(lambda: json_codec.decode_request(json_body))
    tracker = Tracker(TrackerConfig(), 0.0)
    response, handle_wall, handle_cpu = _timed(lambda: tracker.handle(decoded, source, 0.0))
    _check_batch(response, swarms)
    if len(tracker.swarms_of(peer)) != swarms:
        raise LoadError("the tracker does not hold every swarm of the batch")
    held = tracker.availability(peer, swarm_id(swarms - 1, "batch"))
    if held is None or list(held) != batch_ranges(swarms - 1):
        raise LoadError(f"the tracker holds {held!r} for the last swarm of the batch")
    answer, encode_wall, encode_cpu = _timed(
        lambda: binary.encode(response, max_fragment=binary.DEFAULT_MAX_FRAGMENT)
    )
    _, json_encode_wall, json_encode_cpu = _timed(lambda: json_codec.encode_response(response))

    fresh = Tracker(TrackerConfig(), 0.0)
    messages, single_decode_wall, single_decode_cpu = _timed(
        lambda: [binary.decode(data) for data in single_bytes]
    )
    replies, single_wall, single_cpu = _timed(
        lambda: [fresh.handle(m, source, 0.0) for m in messages]
    )
    if any(r.response_type != ResponseType.SUCCESSFUL for r in replies):
        raise LoadError("a one-swarm report failed")
    if len(fresh.swarms_of(peer)) != swarms:
        raise LoadError("the per-swarm reports did not register every swarm")
    return {
        "handle_wall": handle_wall, "handle_cpu": handle_cpu,
        "decode_wall": decode_wall, "decode_cpu": decode_cpu,
        "json_decode_wall": json_wall, "json_decode_cpu": json_cpu,
        "encode_wall": encode_wall, "encode_cpu": encode_cpu,
        "json_encode_wall": json_encode_wall, "json_encode_cpu": json_encode_cpu,
        "response_binary_bytes": sum(map(len, answer)), "response_datagrams": len(answer),
        "per_swarm_handle_wall": single_wall, "per_swarm_handle_cpu": single_cpu,
        "per_swarm_decode_wall": single_decode_wall, "per_swarm_decode_cpu": single_decode_cpu,
    }  # fmt: skip


# -- command line ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracker_load", description=__doc__)
    sub = parser.add_subparsers(dest="mode", required=True)
    load = sub.add_parser("load", help="drive a running tracker daemon")
    load.add_argument("--http", required=True, metavar="URL")
    load.add_argument("--udp", required=True, metavar="URL")
    load.add_argument("--tcp", required=True, metavar="URL")
    load.add_argument("--tracker-pid", type=int, help="for the tracker's CPU time (/proc)")
    load.add_argument("--seconds", type=float, default=2.0, help="measured time per sample")
    load.add_argument("--warmup", type=float, default=0.25, help="unmeasured time per sample")
    load.add_argument("--reps", type=int, default=3)
    load.add_argument("--swarms", type=int, default=10_000, help="swarms in the batch report")
    load.add_argument(
        "--per-swarm-reps", type=int, default=3, help="runs of the per-swarm reporting"
    )
    batch = sub.add_parser("batch", help="time the batch report in this process")
    batch.add_argument("--swarms", type=int, default=10_000)
    batch.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    if not 1 <= args.reps <= 20 or not 1 <= args.swarms <= 20_000:
        parser.error("--reps must be 1-20 and --swarms 1-20000")
    if args.mode == "load" and (
        not 0 < args.seconds <= 60
        or not 0 <= args.warmup <= 10
        or not 0 <= args.per_swarm_reps <= 20
    ):
        parser.error("--seconds must be in (0, 60], --warmup in [0, 10], --per-swarm-reps 0-20")
    try:
        if args.mode == "load":
            load_mode(args)
        else:
            batch_mode(args)
    except Exception as exc:
        traceback.print_exc()
        emit("error", error=f"{type(exc).__name__}: {exc}")
        return 2
    emit("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
