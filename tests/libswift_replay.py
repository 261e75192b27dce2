"""Replaying the captured libswift traces against our sans-IO PPSPP endpoint.

The captures in ``../shared/traces/libswift/`` (see its README) record one real libswift peer
talking to another. Here one side of a capture is played back at its recorded times while
our :class:`~ppsp.peer.endpoint.Endpoint` takes the place of the other side. A channel ID is
the only thing that differs between the recorded peer's conversation and ours (each side picks
its own, RFC 7574 §3.11), so a replayed datagram gets its first four bytes — the destination
channel (§8.3) — rewritten to our endpoint's channel ID; everything else is sent as recorded.

This module holds the trace facts, the replay driver and an independent, libswift-like Merkle
verifier (§5.2, §5.6) that checks what our seeder sends without sharing any code with our
own :class:`~ppsp.peer.merkle.HashTree`.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from interop.pcapfile import PcapPacket, read_pcap
from ppsp.peer import wire
from ppsp.peer.content import MemoryChunkStore, StaticContent, SwarmParameters
from ppsp.peer.endpoint import Endpoint, Event
from ppsp.peer.merkle import HashTree
from ppsp.peer.messages import (
    ChunkAddressing,
    Data,
    Datagram,
    Integrity,
    IntegrityMethod,
    MerkleHashFunction,
    WireContext,
)
from ppsp.peer.ranges import ChunkSet

Address = tuple[str, int]

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces" / "libswift"
STATIC = TRACES / "libswift_static_200000B.pcap"
PROBES = TRACES / "libswift_handshake_probes.pcap"

#: The two libswift peers of the static capture (traces/README).
SEEDER: Address = ("127.0.0.1", 20200)
LEECHER: Address = ("127.0.0.1", 20201)
#: The swarm of both captures: root hash of a SHA-1 Merkle tree over 1 KiB chunks.
SWARM_ID = bytes.fromhex("026bf5bed2c08204b6f0765acd1429068a874ee6")
CHUNK_SIZE = 1024
CONTENT_SIZE = 200000
NUM_CHUNKS = 196
CONTENT_SHA256 = "58392635ad291988798e2725e571c51407ccc080721af16e525908a92c7036e8"
#: What libswift's handshake fixes for the codecs: chunk32 ranges (option 6 = 2), SHA-1.
LIBSWIFT = WireContext(ChunkAddressing.CHUNK_RANGE32, hash_size=20)
#: Channel IDs the two recorded peers chose (frames 1 and 2 of the static capture).
RECORDED_LEECHER_CHANNEL = 0x9ECFD7CA
RECORDED_SEEDER_CHANNEL = 0x9E7E243A


@cache
def packets(path: Path) -> tuple[PcapPacket, ...]:
    """Every UDP datagram of a capture, in capture order (frame ``n`` is index ``n - 1``)."""
    return tuple(read_pcap(path))


@cache
def trace_content() -> bytes:
    """The documented content: SHA-256(counter as 8-byte big-endian), concatenated, cut."""
    stream = b"".join(hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(6250))
    return stream[:CONTENT_SIZE]


def chunk_of(chunk: int) -> bytes:
    return trace_content()[chunk * CHUNK_SIZE : (chunk + 1) * CHUNK_SIZE]


def swarm_parameters() -> SwarmParameters:
    """The libswift swarm's metadata (§3.1): SHA-1 Merkle, chunk32 ranges, 1 KiB chunks."""
    return SwarmParameters(
        SWARM_ID,
        IntegrityMethod.MERKLE,
        MerkleHashFunction.SHA1,
        ChunkAddressing.CHUNK_RANGE32,
        CHUNK_SIZE,
    )


def with_channel(payload: bytes, channel: int) -> bytes:
    """``payload`` addressed to ``channel`` instead of the recorded peer's channel (§8.3)."""
    return channel.to_bytes(4, "big") + payload[4:]


def parse(data: bytes) -> Datagram:
    """Decode with the normative Construct codec, as a libswift-configured peer would."""
    return wire.parse_datagram(data, LIBSWIFT)


def fixed_ids(*ids: int) -> Callable[[], int]:
    """A channel ID source handing out ``ids`` in turn, then 0x70000001, 0x70000002, …"""
    rest = itertools.count(0x70000001)
    it = itertools.chain(ids, rest)
    return lambda: next(it)


class OracleStore(MemoryChunkStore):
    """A chunk store that records any write whose bytes differ from the documented content:
    a leecher must never store what it has not verified (§5.2)."""

    def __init__(self) -> None:
        super().__init__(CHUNK_SIZE)
        self.bad_writes: list[int] = []
        self.writes = 0

    def write_chunk(self, chunk: int, data: bytes | memoryview) -> None:
        self.writes += 1
        if bytes(data) != chunk_of(chunk):
            self.bad_writes.append(chunk)
        super().write_chunk(chunk, data)


def leecher_endpoint(channel_id: int) -> tuple[Endpoint, StaticContent, OracleStore]:
    """Our leecher for the libswift swarm, knowing only the root hash: no content size, so
    the size comes from the peak hashes (automatic size detection, §5.6)."""
    tree = HashTree.for_root(SWARM_ID, CHUNK_SIZE, MerkleHashFunction.SHA1)
    store = OracleStore()
    content = StaticContent(tree, store)
    ep = Endpoint(channel_id_source=fixed_ids(channel_id))
    ep.add_swarm(swarm_parameters(), content)
    return ep, content, store


def seeder_endpoint(*channel_ids: int) -> Endpoint:
    """Our seeder of the trace content, with the libswift swarm's parameters."""
    data = trace_content()
    tree = HashTree.from_content(data, CHUNK_SIZE, MerkleHashFunction.SHA1)
    assert tree.root_hash == SWARM_ID
    ep = Endpoint(channel_id_source=fixed_ids(*channel_ids))
    have = ChunkSet([(0, NUM_CHUNKS - 1)])
    ep.add_swarm(swarm_parameters(), StaticContent(tree, MemoryChunkStore(CHUNK_SIZE, data), have))
    return ep


@dataclass(slots=True)
class Sent:
    """One datagram our endpoint sent: when, to whom, and which replayed frame (1-based;
    0 for none) was the last one delivered before it."""

    time: float
    frame: int
    data: bytes
    addr: Address


@dataclass
class Replay:
    """Drives an endpoint in virtual time taken from a capture: timers fire when due, every
    datagram the endpoint wants to send is collected, events are kept."""

    endpoint: Endpoint
    now: float
    sent: list[Sent] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    frame: int = 0

    def _collect(self, now: float) -> None:
        for data, addr in self.endpoint.datagrams_to_send(now):
            self.sent.append(Sent(now, self.frame, bytes(data), addr))
        self.events.extend(self.endpoint.pop_events())

    def advance(self, until: float) -> None:
        """Let time pass up to ``until``, firing every timer due meanwhile."""
        while True:
            t = self.endpoint.next_timer()
            if t is None or t > until:
                break
            self.now = max(self.now, t)
            self.endpoint.handle_timer(self.now)
            self._collect(self.now)
        self.now = max(self.now, until)

    def deliver(self, data: bytes, addr: Address, at: float, frame: int = 0) -> list[Sent]:
        """Deliver one datagram from ``addr`` at time ``at``; return what the endpoint sent
        in response (after the timers that were due before it)."""
        self.advance(at)
        self.frame = frame
        before = len(self.sent)
        self.endpoint.receive(data, addr, self.now)
        self._collect(self.now)
        return self.sent[before:]

    def flush(self) -> list[Sent]:
        before = len(self.sent)
        self._collect(self.now)
        return self.sent[before:]


# ---------------------------------------------------------------------------- verifier


class MerkleVerifier:
    """A libswift-like leecher's integrity check, written from RFC 7574 §5 alone.

    Nodes are ``(layer, index)``: node ``(l, i)`` covers chunks ``i·2^l … (i+1)·2^l − 1``.
    Only the root hash is trusted at first. The first INTEGRITY messages that tile the
    content from chunk 0 with strictly shrinking aligned blocks are the peaks (§5.6): they
    are trusted once they hash up to the root (missing leaves count as zero hashes, §5.1),
    which also fixes the number of chunks. A chunk is verified by hashing up from its leaf
    with sibling hashes until a trusted node is reached (§5.2); on a match the path and the
    siblings used become trusted.

    ``per_datagram`` keeps untrusted hashes only for the datagram they came in, so every
    chunk must be verifiable from its own datagram plus what earlier chunks proved: the
    atomic datagram principle (§5.3, §5.4) under in-order delivery.
    """

    def __init__(self, root: bytes, *, per_datagram: bool = True) -> None:
        self.root = root
        self.per_datagram = per_datagram
        self.num_chunks: int | None = None
        self.trusted: dict[tuple[int, int], bytes] = {}
        self.offered: dict[tuple[int, int], bytes] = {}
        self.verified_chunks: dict[int, bytes] = {}
        self.failures: list[str] = []

    @staticmethod
    def _h(data: bytes) -> bytes:
        return hashlib.sha1(data).digest()

    @staticmethod
    def node_of(start: int, end: int) -> tuple[int, int] | None:
        size = end - start + 1
        if size <= 0 or size & (size - 1) or start % size:
            return None
        return size.bit_length() - 1, start // size

    def _height(self) -> int:
        assert self.num_chunks is not None
        return (self.num_chunks - 1).bit_length()

    def _try_peaks(self, run: list[tuple[tuple[int, int], bytes]]) -> None:
        peaks: dict[tuple[int, int], bytes] = {}
        pos, prev = 0, None
        for (layer, index), h in run:
            size = 1 << layer
            if index * size != pos or (prev is not None and size >= prev):
                break
            peaks[(layer, index)] = h
            pos, prev = pos + size, size
        if not peaks:
            return
        n = pos

        def value(layer: int, index: int) -> bytes:
            if index << layer >= n:
                return bytes(20)  # wholly past the end: the empty hash (§5.1)
            if (layer, index) in peaks:
                return peaks[(layer, index)]
            if layer == 0:
                raise KeyError("peaks do not tile the content")
            return self._h(value(layer - 1, 2 * index) + value(layer - 1, 2 * index + 1))

        height = (n - 1).bit_length()
        try:
            root = value(height, 0)
        except KeyError:
            return
        if root == self.root:
            self.num_chunks = n
            self.trusted.update(peaks)
            self.trusted[(height, 0)] = root

    def receive(self, dgram: Datagram) -> None:
        """Take one datagram's INTEGRITY and DATA messages (§5.4: hashes before data)."""
        if self.per_datagram:
            self.offered = {}
        run: list[tuple[tuple[int, int], bytes]] = []
        for m in dgram.messages:
            if isinstance(m, Integrity):
                node = self.node_of(m.start, m.end)
                if node is None:
                    self.failures.append(f"INTEGRITY {m.start}-{m.end} is not a Merkle node")
                    continue
                run.append((node, m.hash))
                if node not in self.trusted:
                    self.offered[node] = m.hash
            elif isinstance(m, Data):
                if self.num_chunks is None and run:
                    self._try_peaks(run)
                run = []
                self._verify(m.start, m.end, bytes(m.payload))

    def _verify(self, start: int, end: int, payload: bytes) -> None:
        if start != end:
            self.failures.append(f"DATA {start}-{end} is not one chunk")
            return
        if self.num_chunks is None:
            self.failures.append(f"DATA {start}: size still unknown, no peaks before it")
            return
        if not 0 <= start < self.num_chunks:
            self.failures.append(f"DATA {start} beyond the content")
            return
        node = (0, start)
        cur = self._h(payload)
        used: list[tuple[tuple[int, int], bytes]] = [(node, cur)]
        while node not in self.trusted:
            layer, index = node
            if layer >= self._height():
                self.failures.append(f"DATA {start}: walked past the root")
                return
            sib = (layer, index ^ 1)
            if sib[1] << layer >= self.num_chunks:
                h: bytes | None = bytes(20)
            else:
                h = self.trusted.get(sib) or self.offered.get(sib)
            if h is None:
                self.failures.append(f"DATA {start}: no hash for node {sib}")
                return
            used.append((sib, h))
            cur = self._h(cur + h) if index % 2 == 0 else self._h(h + cur)
            node = (layer + 1, index // 2)
            used.append((node, cur))
        if self.trusted[node] != cur:
            self.failures.append(f"DATA {start}: hashes to the wrong value at {node}")
            return
        self.trusted.update(used)
        self.verified_chunks[start] = payload

    def content(self) -> bytes:
        assert self.num_chunks is not None
        return b"".join(self.verified_chunks[i] for i in range(self.num_chunks))
