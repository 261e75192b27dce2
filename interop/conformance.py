"""PPSPP conformance checks against any peer: ``p2pcdn conformance``.

The tool plays an RFC 7574 leecher against a peer that seeds a swarm and checks what the peer
does, one check per behaviour, each citing the RFC section it verifies (docs/conformance.md
lists them). Two groups:

* **trace-based** checks send the six handshake variants that were probed against libswift,
  the reference peer (../shared/traces/libswift/libswift_handshake_probes.pcap, probes A-F),
  rewritten for the target's swarm, and compare the answer with what RFC 7574 requires. The
  libswift column of the table says what libswift answered in the trace.
* **live** checks run a session over UDP: handshake with and without optional options, the
  reply's contents, HAVE after the handshake, REQUEST → INTEGRITY + DATA, the DATA verified
  against the swarm's Merkle root (the swarm ID), ACK handling, an unknown swarm, a bad option,
  keep-alive, explicit close, a repeated and an out-of-range REQUEST.

Datagrams are built and parsed with our normative codec (:mod:`ppsp.peer.wire`), never with
scapy. Every wait has a deadline; the peer's datagrams are parsed defensively (a malformed one
fails the check that waited for it, it never stops the run).

``p2pcdn conformance --self`` starts our own seeder (:func:`ppsp.peer.aio.serve_seed`) on
127.0.0.1 with generated content and runs the suite against it.

Exit code: 0 when every required check passed, 1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import hashlib
import ipaddress
import json
import secrets
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ppsp.peer import wire
from ppsp.peer.messages import (
    Ack,
    ChunkAddressing,
    Data,
    Datagram,
    DecodeError,
    EncodeError,
    Handshake,
    HandshakeOptions,
    Have,
    Integrity,
    IntegrityMethod,
    MerkleHashFunction,
    Message,
    Request,
    SignedIntegrity,
    WireContext,
)

__all__ = [
    "LIBSWIFT_PROBES",
    "CheckResult",
    "Report",
    "Status",
    "Target",
    "add_arguments",
    "format_table",
    "run",
    "run_checks",
    "run_self",
    "verify_chunk",
]

DEFAULT_CHUNK_SIZE = 1024
HASH_NAMES = {"sha1": MerkleHashFunction.SHA1, "sha256": MerkleHashFunction.SHA256}
#: At most this many datagrams are read in one wait, however long it is.
MAX_DATAGRAMS_PER_WAIT = 20_000
MAX_DATAGRAM = 65_535


class Status(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


@dataclass
class CheckResult:
    """The outcome of one check."""

    name: str
    section: str  # RFC 7574 section(s)
    title: str
    required: bool
    status: Status
    detail: str = ""
    libswift: str = ""  # what libswift did in the traces (trace-based checks only)


@dataclass(frozen=True)
class Target:
    """The peer under test and the swarm metadata a peer must know beforehand (§3.1)."""

    host: str
    port: int
    swarm_id: bytes
    hash_function: MerkleHashFunction = MerkleHashFunction.SHA256
    chunk_size: int = DEFAULT_CHUNK_SIZE
    timeout: float = 3.0  # for an answer the peer must send
    quiet: float = 1.0  # for a silence the peer must keep

    @property
    def uses_defaults(self) -> bool:
        """The swarm uses RFC 7574's defaults (§7, Table 8): options may be left out."""
        return (
            self.hash_function is MerkleHashFunction.SHA256
            and self.chunk_size == DEFAULT_CHUNK_SIZE
        )

    def context(self) -> WireContext:
        return WireContext(
            ChunkAddressing.CHUNK_RANGE32, self.hash_function.digest_size, 64, self.chunk_size
        )

    def options(self, **changes: Any) -> HandshakeOptions:
        """The initiator's options, as libswift sends them (probe A): version, minimum
        version, swarm ID, CIPM Merkle, hash function, 32-bit chunk ranges; option 9 only when
        the chunk size is not the default (DESIGN §4)."""
        opts = HandshakeOptions(
            version=1,
            minimum_version=1,
            swarm_id=self.swarm_id,
            integrity_method=IntegrityMethod.MERKLE,
            merkle_hash_function=self.hash_function,
            chunk_addressing=ChunkAddressing.CHUNK_RANGE32,
            chunk_size=None if self.chunk_size == DEFAULT_CHUNK_SIZE else self.chunk_size,
        )
        for k, v in changes.items():
            setattr(opts, k, v)
        return opts


@dataclass
class Report:
    target: Target
    results: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every required check passed (skipped ones do not count against)."""
        return all(r.status is not Status.FAIL for r in self.results if r.required)

    def to_json(self) -> dict[str, Any]:
        return {
            "peer": f"{self.target.host}:{self.target.port}",
            "swarm": self.target.swarm_id.hex(),
            "hash": self.target.hash_function.hashlib_name,
            "chunk_size": self.target.chunk_size,
            "passed": self.passed,
            "checks": [{**asdict(r), "status": str(r.status)} for r in self.results],
        }


# ---------------------------------------------------------------------------------- Merkle


def _hasher(fn: MerkleHashFunction) -> Callable[[bytes], bytes]:
    name = fn.hashlib_name

    def h(data: bytes) -> bytes:
        return hashlib.new(name, data).digest()

    return h


def verify_chunk(
    chunk: int,
    data: bytes,
    hashes: dict[tuple[int, int], bytes],
    root: bytes,
    hash_function: MerkleHashFunction,
) -> bool:
    """Whether ``data`` is chunk ``chunk`` of the swarm whose root hash is ``root`` (§5.1,
    §5.2), given the hashes known, keyed by their inclusive chunk range: those of INTEGRITY
    messages (sibling, uncles, peaks of §5.6) and those of chunks verified before.

    The chunk's leaf hash is combined with its sibling, then with its uncles, up to the root.
    A sibling not sent whole is computed from the known hashes inside it; a subtree that no
    known hash touches is empty, past the end of the content: the all-zero hash (§5.1). On
    success the hashes on the path are added to ``hashes``: they are verified now.
    """
    h = _hasher(hash_function)
    zero = bytes(hash_function.digest_size)
    known = sorted(hashes)

    def touched(s: int, e: int) -> bool:  # a known hash lies inside: not an empty subtree
        return any(s <= a and b <= e for a, b in known)

    def node(s: int, e: int, depth: int) -> bytes | None:
        got = hashes.get((s, e))
        if got is not None:
            return got
        if not touched(s, e):
            return zero
        if s == e or depth > 64:
            return None
        mid = s + (e - s + 1) // 2
        left, right = node(s, mid - 1, depth + 1), node(mid, e, depth + 1)
        if left is None or right is None:
            return None
        return zero if left == zero and right == zero else h(left + right)

    path: dict[tuple[int, int], bytes] = {(chunk, chunk): h(data)}
    current = path[(chunk, chunk)]
    start, end = chunk, chunk
    for _ in range(64):
        if current == root and start == 0:
            hashes.update(path)
            return True
        width = end - start + 1
        if (start // width) % 2 == 0:
            sibling = node(start + width, end + width, 0)
            if sibling is None:
                return False
            current = h(current + sibling)
            end += width
        else:
            sibling = node(start - width, start - 1, 0)
            if sibling is None:
                return False
            current = h(sibling + current)
            start -= width
        path[(start, end)] = current
    return False


# ---------------------------------------------------------------------------------- session


class Outcome(enum.StrEnum):
    ACCEPTED = "accepted"
    CLOSED = "refused with an explicit close"
    SILENT = "no answer"


class Session:
    """One channel from a fresh UDP port to the peer."""

    def __init__(self, target: Target) -> None:
        self.target = target
        family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        self.addr = (target.host, target.port)
        self.channel = secrets.randbelow(0xFFFFFFFE) + 1
        self.remote = 0
        self.ctx = target.context()
        self.received: list[Datagram] = []
        self.malformed: list[str] = []
        self.hashes: dict[tuple[int, int], bytes] = {}
        self.reply: Handshake | None = None

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.addr)

    def send_messages(self, msgs: list[Message], channel: int | None = None) -> None:
        chan = self.remote if channel is None else channel
        self.send(wire.build_datagram(Datagram(chan, msgs), self.ctx))

    def handshake_bytes(self, opts: HandshakeOptions) -> bytes:
        return wire.build_datagram(Datagram(0, [Handshake(self.channel, opts)]))

    def _parse(self, data: bytes) -> Datagram | None:
        if len(data) < 4:
            self.malformed.append(f"{len(data)}-byte datagram")
            return None
        channel = int.from_bytes(data[:4], "big")
        if channel not in (self.channel, 0):
            return None  # not for us (§3.1.1 step 3: discard)
        try:
            dgram = wire.parse_datagram(data, self.ctx)
        except DecodeError as exc:
            self.malformed.append(str(exc))
            if exc.partial is None:
                return None
            dgram = exc.partial
        for m in dgram.messages:
            if isinstance(m, Integrity):
                self.hashes[(m.start, m.end)] = bytes(m.hash)
            if isinstance(m, Handshake) and m.source_channel != 0 and self.reply is None:
                self.reply = m
                self.remote = m.source_channel
                try:
                    self.ctx = self.ctx.updated_by(m.options)
                except DecodeError as exc:
                    self.malformed.append(f"reply handshake: {exc}")
        return dgram

    def wait(self, until: Callable[[Datagram], bool] | None, timeout: float) -> list[Datagram]:
        """Datagrams for us until one satisfies ``until`` or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        got: list[Datagram] = []
        for _ in range(MAX_DATAGRAMS_PER_WAIT):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.sock.settimeout(left)
            try:
                data, addr = self.sock.recvfrom(MAX_DATAGRAM)
            except TimeoutError:
                break
            except ConnectionRefusedError:  # ICMP port unreachable: nobody listens
                continue
            if addr[1] != self.addr[1] or _host(addr[0]) != _host(self.addr[0]):
                continue  # not from the peer under test
            dgram = self._parse(data)
            if dgram is None:
                continue
            got.append(dgram)
            self.received.append(dgram)
            if until is not None and until(dgram):
                break
        return got

    def handshake(
        self,
        opts: HandshakeOptions | None = None,
        raw: bytes | None = None,
        *,
        refusal_expected: bool = False,
    ) -> Outcome:
        """Send an initiating handshake (§3.1.1 step 1) and classify the answer. When the
        peer must refuse, ``quiet`` seconds of silence are enough."""
        self.send(raw if raw is not None else self.handshake_bytes(opts or self.target.options()))
        wait = self.target.quiet if refusal_expected else self.target.timeout
        got = self.wait(_is_handshake, wait)
        for d in got:
            for m in d.messages:
                if isinstance(m, Handshake):
                    return Outcome.ACCEPTED if m.source_channel else Outcome.CLOSED
        return Outcome.SILENT

    def messages(self, dgrams: list[Datagram] | None = None) -> Iterator[Message]:
        for d in self.received if dgrams is None else dgrams:
            yield from d.messages

    def data_for(self, chunk: int, dgrams: list[Datagram] | None = None) -> Data | None:
        for m in self.messages(dgrams):
            if isinstance(m, Data) and m.start <= chunk <= m.end:
                return m
        return None


def _host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host.split("%")[0]))
    except ValueError:
        return host


def _is_handshake(d: Datagram) -> bool:
    return any(isinstance(m, Handshake) for m in d.messages)


def _has_data(chunk: int) -> Callable[[Datagram], bool]:
    return lambda d: any(isinstance(m, Data) and m.start <= chunk <= m.end for m in d.messages)


@contextmanager
def _session(target: Target) -> Iterator[Session]:
    s = Session(target)
    try:
        yield s
    finally:
        s.close()


# ---------------------------------------------------------------------------------- checks


#: libswift's answers to the probes (traces/README, libswift_handshake_probes.pcap).
LIBSWIFT_PROBES = {
    "A": "accepted (frames 1-2)",
    "B": "silently dropped (frame 3): libswift does not know option 9",
    "C": "accepted (frames 5-6)",
    "D": "accepted by accident (frames 7-8)",
    "E": "refused with an explicit close (frames 9-10)",
    "F": "refused with an explicit close (frames 11-12)",
}

_CLOSE_NOTE = (
    "; RFC 7574 §3.1.1 step 2 says to send nothing back, an explicit close is tolerated "
    "(libswift and p2pcdn send one)"
)


class Suite:
    """The checks, run in order against one target."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.results: list[CheckResult] = []
        self.chunks: int | None = None  # number of chunks, learnt from HAVE

    def add(
        self,
        name: str,
        section: str,
        title: str,
        ok: bool | None,
        detail: str = "",
        *,
        required: bool = True,
        libswift: str = "",
    ) -> bool:
        status = Status.SKIP if ok is None else Status.PASS if ok else Status.FAIL
        self.results.append(CheckResult(name, section, title, required, status, detail, libswift))
        return bool(ok)

    # -- trace-based: the libswift handshake probes

    def probes(self) -> None:
        t = self.target
        other_hash = (
            MerkleHashFunction.SHA256
            if t.hash_function is not MerkleHashFunction.SHA256
            else MerkleHashFunction.SHA1
        )
        size = t.chunk_size
        variants: list[tuple[str, str, str, HandshakeOptions, bool]] = [
            ("A", "§3.1.1, §7", "libswift's own handshake", t.options(), True),
            ("B", "§7.11", "with Chunk Size (option 9)", t.options(chunk_size=size), True),
            (
                "C",
                "§7.10",
                "with Supported Messages (option 8)",
                t.options(supported_messages=b"\xff\xff"),
                True,
            ),
            (
                "D",
                "§7.10, §7.11",
                "with options 8 and 9",
                t.options(supported_messages=b"\xff\xff", chunk_size=size),
                True,
            ),
            (
                "E",
                "§3.1, §7.6",
                f"with another hash function ({other_hash.hashlib_name})",
                t.options(merkle_hash_function=other_hash),
                False,
            ),
            (
                "F",
                "§3.1, §7.8",
                "with 64-bit chunk ranges (CAM 4)",
                t.options(chunk_addressing=ChunkAddressing.CHUNK_RANGE64),
                False,
            ),
        ]
        for letter, section, title, opts, accept in variants:
            with _session(t) as s:
                outcome = s.handshake(opts, refusal_expected=not accept)
                name = f"probe-{letter}"
                full = f"handshake probe {letter}: {title}"
                if accept:
                    ok = outcome is Outcome.ACCEPTED
                    self.add(
                        name,
                        section,
                        full,
                        ok,
                        f"{outcome}; RFC: accept",
                        libswift=LIBSWIFT_PROBES[letter],
                    )
                elif letter == "F" and outcome is Outcome.ACCEPTED:
                    # §7.8: 64-bit chunk ranges MUST be supported; a peer may accept if its
                    # reply says it speaks them.
                    cam = s.reply.options.chunk_addressing if s.reply is not None else None
                    ok = cam == ChunkAddressing.CHUNK_RANGE64
                    self.add(
                        name,
                        section,
                        full,
                        ok,
                        f"accepted, reply CAM {cam}",
                        libswift=LIBSWIFT_PROBES[letter],
                    )
                else:
                    ok = outcome is not Outcome.ACCEPTED
                    detail = f"{outcome}; RFC: refuse (the swarm's metadata differs)"
                    if outcome is Outcome.CLOSED:
                        detail += _CLOSE_NOTE
                    self.add(name, section, full, ok, detail, libswift=LIBSWIFT_PROBES[letter])

    # -- live session

    def session(self) -> None:
        t = self.target
        with _session(t) as s:
            outcome = s.handshake()
            first = list(s.received)
            if not self.add(
                "handshake",
                "§3.1.1, §8.4",
                "handshake answered by a reply HANDSHAKE on our channel",
                outcome is Outcome.ACCEPTED,
                str(outcome),
            ):
                return
            self.reply_contents(s, first)
            s.wait(None, min(t.quiet, 0.3))  # more HAVEs may follow the reply
            self.haves(s)
            self.request(s)
            self.ack(s)
            self.repeated(s)
            self.out_of_range(s)
            self.keep_alive(s)
            self.explicit_close(s)

    def reply_contents(self, s: Session, first: list[Datagram]) -> None:
        reply = s.reply
        assert reply is not None
        o = reply.options
        chan_ok = all(d.channel == s.channel for d in first if _is_handshake(d))
        self.add(
            "reply-channel",
            "§3.1.1 step 2, §8.3",
            "reply is sent to the initiator's channel",
            chan_ok,
            f"our channel {s.channel:#010x}",
        )
        self.add(
            "reply-version",
            "§7.2",
            "reply carries Version 1 (first option)",
            o.version == 1,
            f"version {o.version}",
        )
        self.add(
            "reply-swarm",
            "§7.4",
            "swarm ID in the reply, if any, is ours",
            o.swarm_id is None or o.swarm_id == self.target.swarm_id,
            "absent (allowed)" if o.swarm_id is None else o.swarm_id.hex(),
        )
        self.add(
            "reply-cipm",
            "§7.5",
            "integrity method in the reply, if any, is Merkle (1)",
            o.integrity_method in (None, IntegrityMethod.MERKLE),
            f"CIPM {o.integrity_method}",
        )
        self.add(
            "reply-hash",
            "§7.6",
            "hash function in the reply, if any, is the swarm's",
            o.merkle_hash_function in (None, self.target.hash_function),
            f"hash function {o.merkle_hash_function}",
        )
        self.add(
            "reply-cam",
            "§7.8",
            "chunk addressing in the reply, if any, echoes ours (32-bit chunk ranges)",
            o.chunk_addressing in (None, ChunkAddressing.CHUNK_RANGE32),
            f"CAM {o.chunk_addressing}",
        )
        heavy = [
            type(m).__name__
            for d in first
            for m in d.messages
            if isinstance(m, Data | SignedIntegrity)
        ]
        self.add(
            "reply-no-heavy-payload",
            "§3.1.1 step 2, §12.1",
            "no DATA or SIGNED_INTEGRITY before the handshake completes",
            not heavy,
            ", ".join(heavy) or "none",
        )

    def haves(self, s: Session) -> None:
        haves = [m for m in s.messages() if isinstance(m, Have)]
        if haves:
            self.chunks = max(h.end for h in haves) + 1
        self.add(
            "have-after-handshake",
            "§3.1.1 step 2, §3.2",
            "HAVE messages announce the chunks the seeder holds",
            bool(haves),
            ", ".join(f"{h.start}-{h.end}" for h in haves[:8]) or "no HAVE",
        )

    def _fetch(
        self, s: Session, chunk: int, before: list[Message] | None = None, *, ack: bool = True
    ) -> Data | None:
        """REQUEST one chunk and wait for its DATA; ACK it (§3.4: MUST on UDP), as a real
        leecher does, so that the peer's congestion window (LEDBAT, §8.15) opens again."""
        s.send_messages([*(before or []), Request(chunk, chunk)])
        got = s.wait(_has_data(chunk), self.target.timeout)
        data = s.data_for(chunk, got)
        if data is not None and ack:
            s.send_messages([Ack(data.start, data.end, 1000)])
        return data

    def request(self, s: Session) -> None:
        t = self.target
        mark = len(s.received)
        data = self._fetch(s, 0, ack=False)  # the ACK check ACKs it
        self.add(
            "request-data",
            "§3.3, §3.7, §8.6, §8.10",
            "REQUEST for chunk 0 answered with DATA",
            data is not None,
            "DATA 0 received" if data is not None else "no DATA",
        )
        if data is None:
            self.add(
                "integrity-before-data",
                "§5.3, §5.4",
                "INTEGRITY hashes precede DATA",
                None,
                "no DATA",
            )
            self.add(
                "data-verifies",
                "§5.1, §5.2",
                "DATA verifies against the swarm's root hash",
                None,
                "no DATA",
            )
            return
        order = [m for m in s.messages(s.received[mark:]) if isinstance(m, Integrity | Data)]
        first_data = next(i for i, m in enumerate(order) if isinstance(m, Data))
        ints = [m for m in order[:first_data] if isinstance(m, Integrity)]
        single = self.chunks == 1
        self.add(
            "integrity-before-data",
            "§5.3, §5.4",
            "INTEGRITY hashes precede the first DATA",
            bool(ints) or single,
            f"{len(ints)} INTEGRITY before DATA",
        )
        ok = verify_chunk(0, bytes(data.payload), s.hashes, t.swarm_id, t.hash_function)
        self.add(
            "data-verifies",
            "§5.1, §5.2",
            "DATA 0 verifies against the swarm's root hash",
            ok,
            f"{len(data.payload)} bytes, {len(s.hashes)} hashes known",
        )
        size_ok = len(data.payload) == t.chunk_size or (
            self.chunks == 1 and 0 < len(data.payload) <= t.chunk_size
        )
        self.add(
            "data-chunk-size",
            "§8.1, §8.6",
            "DATA carries one chunk of the swarm's chunk size",
            size_ok,
            f"{len(data.payload)} bytes, chunk size {t.chunk_size}",
        )

    def _next_chunk(self, k: int) -> int | None:
        if self.chunks is None or k >= self.chunks:
            return None
        return k

    def _chunk_or_first(self, k: int) -> int:
        """Chunk ``k`` if the seeder has it, else chunk 0 (served again: still a REQUEST)."""
        chunk = self._next_chunk(k)
        return 0 if chunk is None else chunk

    def ack(self, s: Session) -> None:
        chunk = self._next_chunk(1)
        if chunk is None:
            self.add(
                "ack-handling",
                "§3.4, §8.7",
                "after ACK of chunk 0, chunk 1 is served and 0 not resent",
                None,
                "fewer than 2 chunks",
            )
            return
        mark = len(s.received)
        data = self._fetch(s, chunk, [Ack(0, 0, 1000)])
        s.wait(None, min(self.target.quiet, 0.3))
        resent = [
            m
            for m in s.messages(s.received[mark:])
            if isinstance(m, Data) and m.start <= 0 <= m.end
        ]
        ok = (
            data is not None
            and not resent
            and verify_chunk(
                chunk,
                bytes(data.payload),
                s.hashes,
                self.target.swarm_id,
                self.target.hash_function,
            )
        )
        self.add(
            "ack-handling",
            "§3.4, §8.7",
            "after ACK of chunk 0, chunk 1 is served (verified) and chunk 0 not resent",
            ok,
            f"DATA {chunk}: {'yes' if data else 'no'}; chunk 0 resent {len(resent)} times",
        )

    def repeated(self, s: Session) -> None:
        chunk = self._next_chunk(2)
        if chunk is None:
            self.add(
                "repeated-request",
                "§8.2",
                "a repeated REQUEST is served",
                None,
                "fewer than 3 chunks",
            )
            return
        s.send_messages([Request(chunk, chunk)])
        s.send_messages([Request(chunk, chunk)])
        got = s.wait(_has_data(chunk), self.target.timeout)
        data = s.data_for(chunk, got)
        if data is not None:
            s.send_messages([Ack(data.start, data.end, 1000)])
        self.add(
            "repeated-request",
            "§8.2",
            "a REQUEST sent twice (duplicates are harmless) is served",
            data is not None,
            "DATA received" if data is not None else "no DATA",
        )

    def out_of_range(self, s: Session) -> None:
        beyond = (self.chunks or 0) + 1000 if self.chunks is not None else 0x7FFFFFF0
        s.send_messages([Request(beyond, beyond)])
        got = s.wait(_has_data(beyond), self.target.quiet)
        bad = s.data_for(beyond, got)
        self.add(
            "out-of-range-request",
            "§3.7, §3",
            "REQUEST for a chunk the seeder does not have gets no DATA",
            bad is None,
            f"chunk {beyond}: {'DATA sent' if bad else 'no DATA'}",
        )

    def keep_alive(self, s: Session) -> None:
        chunk = self._chunk_or_first(3)
        s.send(s.remote.to_bytes(4, "big"))  # §8.14: the channel ID alone
        s.wait(None, min(self.target.quiet, 0.3))
        data = self._fetch(s, chunk)
        self.add(
            "keep-alive",
            "§3.12, §8.14",
            "a keep-alive (channel ID only) is accepted; the channel stays open",
            data is not None,
            f"REQUEST {chunk} after keep-alive: {'served' if data else 'not served'}",
        )

    def explicit_close(self, s: Session) -> None:
        chunk = self._chunk_or_first(4)
        s.send_messages([Handshake(0, HandshakeOptions(version=1))])
        s.wait(None, min(self.target.quiet, 0.2))
        mark = len(s.received)
        s.send_messages([Request(chunk, chunk)])
        s.wait(_has_data(chunk), self.target.quiet)
        data = s.data_for(chunk, s.received[mark:])
        self.add(
            "explicit-close",
            "§3.1.1 step 8, §8.4",
            "after our HANDSHAKE with source channel 0, REQUESTs on the channel go unanswered",
            data is None,
            "channel closed" if data is None else "DATA still sent after close",
        )

    # -- separate sessions

    def minimal_handshake(self) -> None:
        t = self.target
        if not t.uses_defaults:
            self.add(
                "handshake-minimal",
                "§3.1.1, §7",
                "handshake with only Version, Minimum Version and Swarm ID",
                None,
                "the swarm does not use the defaults of §7 (SHA-256, 1024-byte chunks)",
            )
            return
        with _session(t) as s:
            outcome = s.handshake(
                HandshakeOptions(version=1, minimum_version=1, swarm_id=t.swarm_id)
            )
        self.add(
            "handshake-minimal",
            "§3.1.1, §7",
            "handshake with only Version, Minimum Version and Swarm ID (defaults apply)",
            outcome is Outcome.ACCEPTED,
            str(outcome),
        )

    def retransmitted_handshake(self) -> None:
        with _session(self.target) as s:
            first = s.handshake()
            remote = s.remote
            s.reply = None
            second = s.handshake()
        ok = first is Outcome.ACCEPTED and second is Outcome.ACCEPTED and s.remote == remote
        self.add(
            "handshake-retransmitted",
            "§3.1.1 step 5, §8.2",
            "a retransmitted handshake gets the same channel",
            ok,
            f"{first} then {second}; channels {remote:#010x}, {s.remote:#010x}",
            required=False,
            libswift="same reply twice (frames 2 and 4)",
        )

    def unknown_swarm(self) -> None:
        t = self.target
        other = bytes(b ^ 0x5A for b in t.swarm_id) or b"\x00"
        with _session(t) as s:
            s.send(s.handshake_bytes(t.options(swarm_id=other)))
            got = s.wait(_is_handshake, t.quiet)
        self.add(
            "unknown-swarm",
            "§3.1.1 step 2",
            "handshake for a swarm the peer does not have gets no answer",
            not got,
            "no answer" if not got else f"{len(got)} datagram(s) sent back",
        )

    def bad_option(self) -> None:
        t = self.target
        with _session(t) as s:
            good = s.handshake_bytes(t.options())
            # Option 10 is unassigned (§7 Table 2): its length is unknown, so the handshake
            # cannot be parsed. Put it before End.
            raw = good[:-1] + b"\x0a\x01\xff"
            outcome = s.handshake(raw=raw, refusal_expected=True)
        detail = str(outcome)
        if outcome is Outcome.CLOSED:
            detail += _CLOSE_NOTE
        self.add(
            "bad-option",
            "§3, §3.1.1 step 2, §7",
            "handshake with an unassigned option (code 10) is refused",
            outcome is not Outcome.ACCEPTED,
            detail,
        )


def run_checks(target: Target) -> Report:
    """Run every check against ``target``; never raises for what the peer does."""
    suite = Suite(target)
    steps: list[tuple[str, Callable[[], None]]] = [
        ("probes", suite.probes),
        ("session", suite.session),
        ("handshake-minimal", suite.minimal_handshake),
        ("handshake-retransmitted", suite.retransmitted_handshake),
        ("unknown-swarm", suite.unknown_swarm),
        ("bad-option", suite.bad_option),
    ]
    for name, step in steps:
        try:
            step()
        except (OSError, EncodeError, DecodeError) as exc:
            suite.add(name, "-", f"{name} could not run", False, f"{type(exc).__name__}: {exc}")
    return Report(target, suite.results)


# ---------------------------------------------------------------------------------- --self


@contextmanager
def own_seeder(
    hash_function: MerkleHashFunction = MerkleHashFunction.SHA256,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    size: int = 50_000,
    timeout: float = 30.0,
) -> Iterator[tuple[str, int, bytes]]:
    """Our seeder (ppsp.peer.aio.serve_seed) on 127.0.0.1 with ``size`` generated bytes, run
    on an event loop in a thread; yields (host, port, swarm ID)."""
    from ppsp.peer import aio

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="conformance-seeder", daemon=True)
    thread.start()
    with tempfile.TemporaryDirectory(prefix="p2pcdn-conformance-") as tmp:
        path = Path(tmp) / "content.bin"
        # Deterministic content, like the libswift trace's: SHA-256 of a counter.
        path.write_bytes(
            b"".join(hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(size // 32 + 1))[
                :size
            ]
        )
        handle = asyncio.run_coroutine_threadsafe(
            aio.serve_seed(path, ("127.0.0.1", 0), hash_function, chunk_size), loop
        ).result(timeout)
        try:
            host, port = handle.address[0], handle.address[1]
            yield str(host), int(port), handle.swarm_id
        finally:

            async def stop() -> None:
                handle.close()
                await asyncio.wait_for(handle.wait_closed(), timeout)

            try:
                asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(timeout)
                if not thread.is_alive():
                    loop.close()


def run_self(
    hash_function: MerkleHashFunction = MerkleHashFunction.SHA256,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    timeout: float = 3.0,
    quiet: float = 1.0,
) -> Report:
    """The suite against our own seeder (``p2pcdn conformance --self``)."""
    with own_seeder(hash_function, chunk_size) as (host, port, swarm):
        target = Target(host, port, swarm, hash_function, chunk_size, timeout, quiet)
        return run_checks(target)


# ---------------------------------------------------------------------------------- output


def format_table(report: Report) -> str:
    """The pass/fail/skip table, one line per check, then the verdict."""
    rows = [("STATUS", "CHECK", "RFC 7574", "REQ", "WHAT", "DETAIL")]
    for r in report.results:
        detail = r.detail + (f" [libswift: {r.libswift}]" if r.libswift else "")
        rows.append(
            (r.status.upper(), r.name, r.section, "yes" if r.required else "no", r.title, detail)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for row in rows:
        head = "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4]))
        lines.append(f"{head}  {row[4]}: {row[5]}" if row is not rows[0] else f"{head}  {row[4]}")
    counts = {s: sum(1 for r in report.results if r.status is s) for s in Status}
    t = report.target
    verdict = "CONFORMANT" if report.passed else "NOT CONFORMANT"
    lines.append("")
    lines.append(
        f"{t.host}:{t.port} swarm {t.swarm_id.hex()} ({t.hash_function.hashlib_name}, "
        f"{t.chunk_size}-byte chunks): {counts[Status.PASS]} passed, {counts[Status.FAIL]} "
        f"failed, {counts[Status.SKIP]} skipped: {verdict}"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- CLI


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0 or value > 600:
        raise argparse.ArgumentTypeError(f"{text}: want a number of seconds in (0, 600]")
    return value


def _chunk_size(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 0xFFFFFFFE:
        raise argparse.ArgumentTypeError(f"{text}: not a chunk size")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--peer", metavar="HOST:PORT", help="the PPSPP peer to check")
    target.add_argument(
        "--self",
        dest="self_test",
        action="store_true",
        help="start our own seeder on 127.0.0.1 with generated content and check it",
    )
    parser.add_argument("--swarm", metavar="ID", help="swarm ID (root hash) in hex; with --peer")
    parser.add_argument(
        "--hash",
        choices=sorted(HASH_NAMES),
        default="sha256",
        help="Merkle hash function (default sha256)",
    )
    parser.add_argument(
        "--chunk-size",
        type=_chunk_size,
        default=DEFAULT_CHUNK_SIZE,
        metavar="N",
        help="chunk size in bytes (default 1024)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive,
        default=3.0,
        metavar="S",
        help="seconds to wait for an answer the peer must send (default 3)",
    )
    parser.add_argument(
        "--quiet",
        type=_positive,
        default=1.0,
        metavar="S",
        help="seconds of silence that count as no answer (default 1)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def _parse_peer(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT")
    host = host.strip("[]")
    p = int(port)
    if not 0 < p < 65536:
        raise ValueError(f"port {p} out of range")
    infos = socket.getaddrinfo(host, p, type=socket.SOCK_DGRAM)
    return str(infos[0][4][0]), p


def run(args: argparse.Namespace) -> int:
    """``p2pcdn conformance``: 0 when every required check passed, 1 if not, 2 for usage."""
    hash_function = HASH_NAMES[args.hash]
    if args.self_test:
        report = run_self(hash_function, args.chunk_size, args.timeout, args.quiet)
    else:
        if not args.swarm:
            print("p2pcdn conformance: --peer needs --swarm ID", file=sys.stderr)
            return 2
        try:
            swarm = bytes.fromhex(args.swarm)
            host, port = _parse_peer(args.peer)
        except (ValueError, OSError) as exc:
            print(f"p2pcdn conformance: {exc}", file=sys.stderr)
            return 2
        if len(swarm) != hash_function.digest_size:
            print(
                f"p2pcdn conformance: a {args.hash} swarm ID has {hash_function.digest_size} "
                f"bytes, not {len(swarm)}",
                file=sys.stderr,
            )
            return 2
        report = run_checks(
            Target(host, port, swarm, hash_function, args.chunk_size, args.timeout, args.quiet)
        )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_table(report))
    return 0 if report.passed else 1
