"""The cacher's on-disk cache of verified chunks (DESIGN §1: cacher; flows F2, F3, F4).

One directory per swarm under the cache root, named by a digest of the swarm ID::

    <root>/<sha256(swarm id)[:32]>/
        index.json   what is held: swarm parameters and the chunk ranges (atomically replaced)
        data         chunk bytes: VoD at chunk · chunk size (sparse), live in a ring of
                     ``window`` slots (the live discard window, RFC 7574 §6.2)
        tree         VoD: the Merkle hash tree's trusted nodes (RFC 7574 §5, HashTree format)
        munros.json  live: the signed munros of held chunks with the uncles under them (§6.1.2)
        pending      chunk numbers written since the last commit (intent log)

**Nothing unverified is stored or served.** A VoD chunk is checked against the swarm's root
hash (its swarm ID, §5.1) through the hash tree; a live chunk against a munro whose signature
checks with the key in the swarm ID (§6.1.2). Only then is it written and counted as held.

**Crash consistency.** :meth:`ChunkCache.commit` makes the held set durable in this order:
data (fdatasync) → tree / munros (atomic replace) → index (atomic replace). So the index never
names a chunk whose bytes or hashes could be missing. A chunk stored after the last commit is
first named in ``pending``; after a SIGKILL it is re-verified against the trusted hashes on
disk and adopted, or dropped — never served unverified. Live chunks are all re-verified on
open, since the verifier's state is rebuilt from the signed munros anyway.

The cache is sans-IO in time: every call that changes recency takes ``now`` (seconds, any
monotonic origin), handed to the eviction policy (:mod:`cacher.policy`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import logging
import os
import shutil
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cacher.policy import CachePolicy
from ppsp.peer.bins import bin_to_range, range_to_bin
from ppsp.peer.content import (
    DEFAULT_CHUNKS_PER_SIGNATURE,
    DEFAULT_LIVE_WINDOW,
    LiveContent,
    StaticContent,
    SwarmParameters,
)
from ppsp.peer.live import LiveVerifier, SignedMunro, UnifiedMerkleVerifier
from ppsp.peer.merkle import HashTree, TreeFileError
from ppsp.peer.messages import (
    ChunkAddressing,
    Integrity,
    IntegrityMethod,
    MerkleHashFunction,
)
from ppsp.peer.ranges import ChunkSet
from ppsp.tracker.messages import (
    AvailabilityDelta,
    PeerMode,
    Role,
    SwarmAvailability,
    swarm_id_hex,
)

__all__ = [
    "CacheChange",
    "CacheError",
    "CacheFull",
    "CachedLiveContent",
    "CachedSwarm",
    "ChunkCache",
]

log = logging.getLogger(__name__)

INDEX = "index.json"
DATA = "data"
TREE = "tree"
MUNROS = "munros.json"
PENDING = "pending"
INDEX_FORMAT = "p2pcdn-chunk-cache"
INDEX_VERSION = 1
#: A ``pending`` record: payload length, then the chunk number and (VoD) the bin and hash of
#: each uncle that verified it (§5.2), so that it can be re-verified after a crash against
#: the hash tree last committed. A torn last record is ignored.
_PENDING_LENGTH = struct.Struct(">I")
_PENDING_CHUNK = struct.Struct(">Q")
_PENDING_BIN = struct.Struct(">Q")


class CacheError(Exception):
    """The cache cannot do what was asked (unknown swarm, wrong kind of swarm, ...)."""


class CacheFull(CacheError):
    """No room for a chunk: the policy found nothing it may evict."""


@dataclass(frozen=True, slots=True)
class CacheChange:
    """What changed in one swarm since the last :meth:`ChunkCache.pop_changes`: the input of
    an incremental availability report (DESIGN F2)."""

    swarm_id: bytes
    cached: list[tuple[int, int]]
    evicted: list[tuple[int, int]]

    def to_delta(self) -> AvailabilityDelta:
        return AvailabilityDelta(swarm_id_hex(self.swarm_id), self.cached, self.evicted)


# ---------------------------------------------------------------------------- helpers


def _dir_name(swarm_id: bytes) -> str:
    return hashlib.sha256(swarm_id).hexdigest()[:32]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(target: Path, data: bytes, durable: bool) -> None:
    """Replace ``target`` with ``data``: readers see the old or the new file, never a mix."""
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        if durable:
            os.fsync(f.fileno())
    os.replace(tmp, target)


def _canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


_libc: ctypes.CDLL | None = None
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def _punch_hole(fd: int, offset: int, length: int) -> None:
    """Give the disk blocks of an evicted range back (Linux fallocate(2)); best effort: the
    index no longer names the range, so its bytes are dead either way."""
    global _libc
    if length <= 0:
        return
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        _libc.fallocate(
            ctypes.c_int(fd),
            ctypes.c_int(_FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE),
            ctypes.c_longlong(offset),
            ctypes.c_longlong(length),
        )
    except (OSError, AttributeError):  # pragma: no cover - not Linux / no libc
        pass


def params_to_json(params: SwarmParameters) -> dict[str, Any]:
    return {
        "swarm_id": params.swarm_id.hex(),
        "integrity_method": int(params.integrity_method),
        "hash_function": int(params.hash_function),
        "chunk_addressing": int(params.chunk_addressing),
        "chunk_size": params.chunk_size,
        "live_signature_algorithm": params.live_signature_algorithm,
        "live_discard_window": params.live_discard_window,
    }


def params_from_json(raw: Mapping[str, Any]) -> SwarmParameters:
    return SwarmParameters(
        bytes.fromhex(raw["swarm_id"]),
        IntegrityMethod(raw["integrity_method"]),
        MerkleHashFunction(raw["hash_function"]),
        ChunkAddressing(raw["chunk_addressing"]),
        int(raw["chunk_size"]),
        raw["live_signature_algorithm"],
        raw["live_discard_window"],
    )


# ---------------------------------------------------------------------------- one swarm


class CachedSwarm:
    """The cached chunks of one swarm. Made by :class:`ChunkCache`; see the module docstring.

    Implements the chunk store protocol of :class:`ppsp.peer.content.StaticContent`
    (``read_chunk`` / ``write_chunk`` and a shared ``have``), so a PPSPP endpoint serves
    straight from the cache: ``StaticContent(swarm.tree, swarm, swarm.have)``.
    """

    def __init__(
        self,
        cache: ChunkCache,
        directory: Path,
        params: SwarmParameters,
        *,
        chunks_per_signature: int = DEFAULT_CHUNKS_PER_SIGNATURE,
        window: int = DEFAULT_LIVE_WINDOW,
    ) -> None:
        self.cache = cache
        self.directory = directory
        self.params = params
        self.chunk_size = params.chunk_size
        #: Verified chunks written to ``data``: what we serve and report.
        self.have = ChunkSet()
        #: Chunks written since the last commit (also in ``have``).
        self.uncommitted = ChunkSet()
        self.bytes_held = 0
        self.tree: HashTree | None = None
        self.verifier: UnifiedMerkleVerifier | None = None
        self.chunks_per_signature = chunks_per_signature
        self.window = window
        if params.is_live:
            if params.integrity_method != IntegrityMethod.UNIFIED_MERKLE:
                # Sign All (§6.1.1) signs every chunk: a cache would have to keep one
                # signature per chunk; the Unified Merkle Tree is the live MTI method.
                raise CacheError("only Unified Merkle live swarms can be cached")
            self.verifier = UnifiedMerkleVerifier(
                LiveVerifier.from_swarm_id(params.swarm_id),
                params.chunk_addressing,
                params.hash_function,
                chunks_per_signature,
                chunk_size=params.chunk_size,
            )
        else:
            self.tree = HashTree.for_root(params.swarm_id, params.chunk_size, params.hash_function)
        directory.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(directory / DATA, os.O_RDWR | os.O_CREAT, 0o644)
        self._pending = open(directory / PENDING, "ab")  # noqa: SIM115 - lives with the swarm
        self._tree_dirty = False
        #: Evicted byte ranges of ``data`` whose blocks go back to the disk at the next
        #: commit: only once the index no longer names them (a crash in between must not
        #: leave the index naming a hole).
        self._to_punch: list[tuple[int, int]] = []
        #: Chunks were evicted since the last commit: the index must be rewritten.
        self._evicted_since_commit = False
        cache.policy.register(self.swarm_id, live=params.is_live, chunk_size=params.chunk_size)

    @property
    def swarm_id(self) -> bytes:
        return self.params.swarm_id

    @property
    def is_live(self) -> bool:
        return self.params.is_live

    # -- layout

    def _offset(self, chunk: int) -> int:
        slot = chunk % self.window if self.is_live else chunk
        return slot * self.chunk_size

    def chunk_length(self, chunk: int) -> int:
        if self.tree is not None:
            n = self.tree.chunk_length(chunk)
            if n is not None:
                return n
        return self.chunk_size

    def range_bytes(self, start: int, end: int) -> int:
        """Bytes chunks ``start..end`` take (the short last chunk of a VoD counted exactly)."""
        total = (end - start + 1) * self.chunk_size
        if self.tree is not None and self.tree.num_chunks is not None:
            last = self.tree.num_chunks - 1
            if start <= last <= end:
                total -= self.chunk_size - self.chunk_length(last)
        return total

    # -- integrity input

    def set_content_length(self, content_length: int) -> None:
        """The content length from trusted metadata (the portal / storage overlay, §3.1)."""
        if self.tree is None:
            raise CacheError("a live swarm has no content length")
        self.tree.set_content_length(content_length)
        self._tree_dirty = True

    def offer_integrity(self, messages: Iterable[Integrity]) -> None:
        """Untrusted VoD hashes (peaks, uncles) for chunks to come, as in INTEGRITY (§5.3)."""
        tree = self.tree
        if tree is None:
            raise CacheError("INTEGRITY hashes of a live swarm come with store_live")
        offered: list[tuple[int, bytes]] = []
        for m in messages:
            try:
                offered.append((range_to_bin(m.start, m.end), bytes(m.hash)))
            except ValueError:
                continue
        if tree.num_chunks is None and offered:
            tree.offer_peaks(offered)
        for b, h in offered:
            if len(h) == tree.digest_size:
                tree.offer_hash(b, h)

    # -- storing

    def store(
        self,
        chunk: int,
        data: bytes | memoryview,
        now: float,
        uncles: Mapping[int, bytes] | None = None,
    ) -> bool | None:
        """Verify VoD chunk ``chunk`` against the root hash (§5.2) and cache it.

        True: cached (or held already). False: it fails verification, nothing written.
        None: it cannot be checked yet (hashes missing); offer them and try again.
        Raises :class:`CacheFull` when no room can be made.
        """
        tree = self.tree
        if tree is None:
            raise CacheError("use store_live for a live swarm")
        if chunk in self.have:
            self.cache.policy.record_access(self.swarm_id, chunk, chunk, now)
            return True
        if tree.num_chunks is None and uncles:
            # Size unknown: the peaks lead the hashes, as on the wire (§5.6.2).
            tree.offer_peaks(list(uncles.items()))
        ok = tree.check_chunk(chunk, data, uncles)
        if not ok:
            return ok
        self._tree_dirty = True
        self._write(chunk, data, now)
        return True

    def store_live(
        self,
        chunk: int,
        data: bytes | memoryview,
        munro: SignedMunro,
        uncles: Iterable[Integrity],
        now: float,
    ) -> bool | None:
        """Verify live chunk ``chunk`` (Unified Merkle Tree, §6.1.2) and cache it.

        ``munro`` is the signed munro over the chunk's subtree and ``uncles`` the INTEGRITY
        hashes from the chunk up to it, as a peer sends them (§6.1.2.3). The signature is
        checked with the key in the swarm ID before anything is trusted. Returns as
        :meth:`store`.
        """
        verifier = self.verifier
        if verifier is None:
            raise CacheError("use store for a VoD swarm")
        if chunk in self.have:
            self.cache.policy.record_access(self.swarm_id, chunk, chunk, now)
            return True
        last = self.have.last
        if last is not None and chunk <= last - self.window:
            return None  # behind the window (§6.2): its ring slot holds a newer chunk
        units = verifier._units  # chunk indices ↔ the CAM's wire units (§4)
        start, end = units.to_wire(munro.start, munro.end)
        if not verifier.offer_signed_munro(
            start, end, munro.munro_hash, munro.timestamp, munro.signature
        ):
            return False
        for u in uncles:
            verifier.offer_hash(u.start, u.end, u.hash)
        ok = verifier.check_chunk(chunk, data)
        if not ok:
            return ok
        self._write(chunk, data, now)
        return True

    def write_chunk(self, chunk: int, data: bytes | memoryview) -> None:
        """The store protocol of StaticContent: it calls this after *its* verification
        against the very tree we hold; we check again that the leaf is trusted and matches,
        so that no path into the cache skips verification."""
        tree = self.tree
        if tree is None:
            raise CacheError("live chunks enter through store_live")
        if chunk in self.have:
            return
        if tree.check_chunk(chunk, data) is not True:
            raise CacheError(f"chunk {chunk} does not verify: not cached")
        self._tree_dirty = True
        try:
            self._write(chunk, data, self.cache.clock())
        except CacheFull as exc:
            # Called from inside a PPSPP endpoint: the download goes on, uncached.
            log.warning("cache %s: chunk %d not cached: %s", self.directory, chunk, exc)

    def _write(self, chunk: int, data: bytes | memoryview, now: float) -> None:
        size = len(data)
        if self.is_live:
            self._slide(chunk, now)
        self.cache.make_room(size, now)
        record = bytearray(_PENDING_CHUNK.pack(chunk))
        for b, h in self._uncles_of(chunk):
            record += _PENDING_BIN.pack(b) + h
        self._pending.write(_PENDING_LENGTH.pack(len(record)) + record)
        self._pending.flush()  # to the kernel: survives a SIGKILL (not a power cut)
        os.pwrite(self._fd, data, self._offset(chunk))
        self.have.add(chunk, chunk)
        self.uncommitted.add(chunk, chunk)
        self.bytes_held += size
        self.cache.used_bytes += size
        self.cache.note_cached(self.swarm_id, chunk, chunk)
        self.cache.policy.record_insert(self.swarm_id, chunk, chunk, now)

    def _uncles_of(self, chunk: int) -> list[tuple[int, bytes]]:
        """(bin, hash) of the trusted uncles of a chunk just verified (§5.2, §6.1.2.3)."""
        out: list[tuple[int, bytes]] = []
        tree = self.tree
        if tree is not None:
            for b in tree.uncle_bins(chunk):
                h = tree.hash_at(b)
                if h is not None:
                    out.append((b, h))
            return out
        verifier = self.verifier
        assert verifier is not None
        with contextlib.suppress(LookupError):
            for u in verifier.integrity_for(chunk)[2]:
                chunks = verifier._units.to_chunks(u.start, u.end)
                if chunks is not None:
                    out.append((range_to_bin(*chunks), bytes(u.hash)))
        return out

    def _slide(self, chunk: int, now: float) -> None:
        """Live: a ring slot is reused ``window`` chunks later; what would be overwritten is
        evicted first (§6.2: it left the discard window)."""
        low = chunk - self.window + 1
        first = self.have.first
        if first is not None and first < low:
            self.evict(first, low - 1, now)

    # -- serving over PPSPP

    def content(self) -> StaticContent | CachedLiveContent:
        """The swarm's content for a PPSPP endpoint, backed by this cache: chunks a peer
        sends are verified (by the endpoint, and again here) and cached; chunks a peer
        requests are read from disk."""
        if self.tree is not None:
            return StaticContent(self.tree, self, self.have)
        return CachedLiveContent(self)

    # -- reading

    def read_chunk(self, chunk: int, now: float | None = None) -> bytes:
        """A cached chunk's bytes; :class:`KeyError` for one not held (never unverified).
        Counts as a use of the chunk for the policy, at the cache's latest time or ``now`` if
        later (one record, the same as recording both: the policy keeps the latest)."""
        if chunk not in self.have:
            raise KeyError(chunk)
        cache = self.cache
        params = self.params
        when = cache.clock()
        if now is not None and now > when:
            when = now
        cache.policy.record_access(params.swarm_id, chunk, chunk, when)
        size = self.chunk_size
        tree = self.tree
        n = None if tree is None else tree.chunk_length(chunk)
        if n is None:
            n = size
        # chunk_length and _offset, inline: this is the serving path, once per chunk.
        offset = (chunk % self.window if params.is_live else chunk) * size
        data = os.pread(self._fd, n, offset)
        if len(data) != n:
            raise CacheError(f"chunk {chunk}: data file is short")
        return data

    def touch(self, start: int, end: int, now: float) -> None:
        """Chunks ``start..end`` were served (recency for the policy)."""
        self.cache.policy.record_access(self.swarm_id, start, end, now)

    def munro_for(self, chunk: int) -> SignedMunro | None:
        return None if self.verifier is None else self.verifier.munro_for(chunk)

    # -- evicting

    def evict(self, start: int, end: int, now: float | None = None) -> int:
        """Forget chunks ``start..end``; returns the bytes freed. The index on disk is not
        changed until the next commit, but the chunks are no longer served at once."""
        freed = 0
        gone: list[tuple[int, int]] = []
        for s, e in self.have.intervals():
            lo, hi = max(s, start), min(e, end)
            if lo <= hi:
                gone.append((lo, hi))
        for lo, hi in gone:
            self.have.remove(lo, hi)
            self.uncommitted.remove(lo, hi)
            nbytes = self.range_bytes(lo, hi)
            freed += nbytes
            if not self.is_live:  # a live ring slot is simply overwritten later
                self._to_punch.append((self._offset(lo), nbytes))
            self.cache.note_evicted(self.swarm_id, lo, hi)
            self.cache.policy.record_evict(self.swarm_id, lo, hi)
        if gone:
            self._evicted_since_commit = True
        if self.verifier is not None and gone:
            first = self.have.first
            self.verifier.forget_before(first if first is not None else end + 1)
        self.bytes_held -= freed
        self.cache.used_bytes -= freed
        return freed

    # -- persistence

    def commit(self, durable: bool) -> None:
        """Make the held set durable; see the module docstring for the order."""
        if durable:
            os.fdatasync(self._fd)
        if self.tree is not None and self._tree_dirty:
            _atomic_write(self.directory / TREE, self.tree.to_bytes(), durable)
            self._tree_dirty = False
        if self.verifier is not None:
            _atomic_write(self.directory / MUNROS, self._munros_json(), durable)
        body: dict[str, Any] = {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "params": params_to_json(self.params),
            "chunks_per_signature": self.chunks_per_signature,
            "window": self.window,
            "ranges": [[s, e] for s, e in self.have.intervals()],
        }
        body["checksum"] = hashlib.sha256(_canonical(body)).hexdigest()
        _atomic_write(self.directory / INDEX, _canonical(body), durable)
        # Only now may the intent log be emptied (the index names everything it named) and
        # evicted ranges be given back (the index no longer names them).
        self._pending.truncate(0)
        self._pending.seek(0)
        self.uncommitted = ChunkSet()
        self._evicted_since_commit = False
        for offset, length in self._to_punch:
            if not self.have.overlaps(
                offset // self.chunk_size, (offset + length - 1) // self.chunk_size
            ):
                _punch_hole(self._fd, offset, length)
        self._to_punch = []
        if durable:
            _fsync_dir(self.directory)

    @property
    def needs_commit(self) -> bool:
        return (
            not self.uncommitted.is_empty()
            or self._tree_dirty
            or self._evicted_since_commit
            or bool(self._to_punch)
        )

    def _munros_json(self) -> bytes:
        verifier = self.verifier
        assert verifier is not None
        out: list[dict[str, Any]] = []
        seen: set[int] = set()
        for s, e in self.have.intervals():
            for chunk in range(s, e + 1):
                munro = verifier.munro_for(chunk)
                if munro is None or munro.start in seen:
                    continue
                seen.add(munro.start)
                uncles: dict[tuple[int, int], str] = {}
                for c in range(max(s, munro.start), min(e, munro.end) + 1):
                    with contextlib.suppress(LookupError):
                        for u in verifier.integrity_for(c)[2]:
                            uncles[(u.start, u.end)] = bytes(u.hash).hex()
                out.append(
                    {
                        "start": munro.start,
                        "end": munro.end,
                        "hash": munro.munro_hash.hex(),
                        "timestamp": munro.timestamp,
                        "signature": munro.signature.hex(),
                        "uncles": [[a, b, h] for (a, b), h in sorted(uncles.items())],
                    }
                )
        return json.dumps(out, separators=(",", ":")).encode()

    def load(self, indexed: ChunkSet) -> None:
        """Restore from disk after a restart: trust what the index names (it was written
        after the data and hashes were durable), re-verify what ``pending`` names."""
        pending = self._read_pending()
        if self.tree is not None:
            self._load_static(indexed, pending)
        else:
            self._load_live(indexed, pending)
        self._pending.truncate(0)
        self._pending.seek(0)

    def _read_pending(self) -> list[tuple[int, dict[int, bytes]]]:
        """(chunk, uncles by bin) of every complete record of the intent log."""
        try:
            raw = (self.directory / PENDING).read_bytes()
        except FileNotFoundError:
            return []
        ds = self.params.hash_function.digest_size
        out: list[tuple[int, dict[int, bytes]]] = []
        pos = 0
        while pos + _PENDING_LENGTH.size <= len(raw):
            (length,) = _PENDING_LENGTH.unpack_from(raw, pos)
            pos += _PENDING_LENGTH.size
            body = raw[pos : pos + length]
            pos += length
            if len(body) != length or length < _PENDING_CHUNK.size:
                break  # torn by the crash
            if (length - _PENDING_CHUNK.size) % (_PENDING_BIN.size + ds):
                break
            (chunk,) = _PENDING_CHUNK.unpack_from(body)
            uncles: dict[int, bytes] = {}
            off = _PENDING_CHUNK.size
            while off < length:
                (b,) = _PENDING_BIN.unpack_from(body, off)
                uncles[b] = body[off + _PENDING_BIN.size : off + _PENDING_BIN.size + ds]
                off += _PENDING_BIN.size + ds
            out.append((chunk, uncles))
        return out

    def _load_static(self, indexed: ChunkSet, pending: list[tuple[int, dict[int, bytes]]]) -> None:
        tree = self.tree
        assert tree is not None
        try:
            saved = HashTree.load(
                self.directory / TREE,
                root_hash=self.params.swarm_id,
                hash_function=self.params.hash_function,
                chunk_size=self.chunk_size,
            )
        except (OSError, TreeFileError) as exc:
            if not indexed.is_empty() or pending:
                log.warning(
                    "cache %s: hash tree unusable (%s); dropping the swarm's chunks",
                    self.directory,
                    exc,
                )
            return
        tree.absorb(saved)
        n = tree.num_chunks
        for s, e in indexed.intervals():
            # The index was written after the tree: every chunk it names has a trusted leaf.
            if n is not None and e < n and all(tree.is_verified(c << 1) for c in range(s, e + 1)):
                self._adopt(s, e)
        for chunk, uncles in pending:
            if chunk in self.have or n is None or not 0 <= chunk < n:
                continue
            # The uncles from the log are mere candidates: the chunk must hash up to a node
            # of the committed tree (§5.2), else it is dropped.
            data = os.pread(self._fd, self.chunk_length(chunk), self._offset(chunk))
            if tree.check_chunk(chunk, data, uncles) is True:
                self._tree_dirty = True
                self._adopt(chunk, chunk)
            else:
                log.info(
                    "cache %s: chunk %d written but not verified; dropped", self.directory, chunk
                )

    def _load_live(self, indexed: ChunkSet, pending: list[tuple[int, dict[int, bytes]]]) -> None:
        verifier = self.verifier
        assert verifier is not None
        try:
            munros = json.loads((self.directory / MUNROS).read_bytes())
        except (OSError, ValueError):
            munros = []
        units = verifier._units
        for m in munros if isinstance(munros, list) else []:
            try:
                start, end = units.to_wire(int(m["start"]), int(m["end"]))
                if not verifier.offer_signed_munro(
                    start,
                    end,
                    bytes.fromhex(m["hash"]),
                    int(m["timestamp"]),
                    bytes.fromhex(m["signature"]),
                ):
                    continue
                for a, b, h in m["uncles"]:
                    verifier.offer_hash(int(a), int(b), bytes.fromhex(h))
            except (KeyError, TypeError, ValueError):
                continue
        candidates = ChunkSet(indexed.intervals())
        for chunk, uncles in pending:
            candidates.add(chunk, chunk)
            for b, h in uncles.items():  # candidates only, like any INTEGRITY (§6.1.2.3)
                start, end = units.to_wire(*bin_to_range(b))
                verifier.offer_hash(start, end, h)
        last = candidates.last
        for s, e in candidates.intervals():
            for chunk in range(max(s, 0 if last is None else last - self.window + 1), e + 1):
                data = os.pread(self._fd, self.chunk_size, self._offset(chunk))
                if len(data) == self.chunk_size and verifier.check_chunk(chunk, data) is True:
                    self._adopt(chunk, chunk)

    def _adopt(self, start: int, end: int) -> None:
        self.have.add(start, end)
        nbytes = self.range_bytes(start, end)
        self.bytes_held += nbytes
        self.cache.used_bytes += nbytes

    def close(self) -> None:
        self._pending.close()
        os.close(self._fd)


class CachedLiveContent(LiveContent):
    """A live swarm's content (RFC 7574 §6) kept in a :class:`CachedSwarm`: the PPSPP
    endpoint of the cacher follows the live edge into the cache and serves CSCs from it,
    also right after a restart, with the signed munros kept on disk (§6.1.2.3)."""

    def __init__(self, cached: CachedSwarm) -> None:
        super().__init__(cached.params, cached.chunks_per_signature, window=None)
        assert cached.verifier is not None
        self.cached = cached
        self.unified = cached.verifier  # one verifier: what the cache trusts, we serve
        self.have = cached.have

    def read_chunk(self, chunk: int) -> bytes:
        return self.cached.read_chunk(chunk)

    def verify_and_store(self, chunk: int, data: bytes | memoryview) -> bool | None:
        if chunk in self.have:
            return True
        assert self.unified is not None
        last = self.have.last
        if last is not None and chunk <= last - self.cached.window:
            return None  # behind the cache's window (§6.2): not kept, not the peer's fault
        ok = self.unified.check_chunk(chunk, data)
        if not ok:
            return ok
        try:
            self.cached._write(chunk, data, self.cached.cache.clock())
        except CacheFull as exc:
            log.warning("cache %s: live chunk %d not cached: %s", self.cached.directory, chunk, exc)
            return None
        return True


# ---------------------------------------------------------------------------- the cache


class ChunkCache:
    """Every cached swarm under ``root``, within ``limit_bytes``; see the module docstring.

    ``policy`` decides what to evict when room is needed (:class:`cacher.policy.CachePolicy`
    with the same limit by default). ``durable=False`` skips fsync (tests, tmpfs).
    """

    def __init__(
        self,
        root: Path | str,
        limit_bytes: int,
        *,
        policy: CachePolicy | None = None,
        durable: bool = True,
        now: float = 0.0,
    ) -> None:
        if limit_bytes <= 0:
            raise ValueError("the cache size limit must be positive")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.limit_bytes = limit_bytes
        self.policy = policy if policy is not None else CachePolicy(limit_bytes)
        self.durable = durable
        self.used_bytes = 0
        self.swarms: dict[bytes, CachedSwarm] = {}
        self._now = now
        self._cached: dict[bytes, ChunkSet] = {}
        self._evicted: dict[bytes, ChunkSet] = {}
        self._load_all(now)

    def clock(self) -> float:
        """The latest time the cache was told (for calls that carry none)."""
        return self._now

    def tick(self, now: float) -> None:
        """Tell the cache the time (the daemon calls it from its event loop), for chunks
        written and read through the PPSPP endpoint, which carry no time."""
        self._now = max(self._now, now)

    # -- swarms

    def open_static(
        self, params: SwarmParameters, content_length: int | None = None
    ) -> CachedSwarm:
        """The cache of VoD swarm ``params`` (created empty if new)."""
        if params.is_live:
            raise CacheError("a live swarm: use open_live")
        swarm = self.swarms.get(params.swarm_id)
        if swarm is None:
            swarm = self._create(params)
        if content_length is not None:
            swarm.set_content_length(content_length)
        return swarm

    def open_live(
        self,
        params: SwarmParameters,
        chunks_per_signature: int = DEFAULT_CHUNKS_PER_SIGNATURE,
        window: int | None = None,
    ) -> CachedSwarm:
        """The cache of live swarm ``params``; ``window`` chunks at most (default: the
        swarm's live discard window, §6.2, else DEFAULT_LIVE_WINDOW)."""
        if not params.is_live:
            raise CacheError("a VoD swarm: use open_static")
        swarm = self.swarms.get(params.swarm_id)
        if swarm is None:
            w = window or params.live_discard_window or DEFAULT_LIVE_WINDOW
            swarm = self._create(params, chunks_per_signature=chunks_per_signature, window=w)
        return swarm

    def _create(self, params: SwarmParameters, **kw: int) -> CachedSwarm:
        swarm = CachedSwarm(self, self.root / _dir_name(params.swarm_id), params, **kw)
        self.swarms[params.swarm_id] = swarm
        swarm.commit(self.durable)  # the index exists from the start: the swarm is known
        return swarm

    def get(self, swarm_id: bytes) -> CachedSwarm | None:
        return self.swarms.get(swarm_id)

    def drop_swarm(self, swarm_id: bytes) -> None:
        """Forget a swarm entirely (and its directory)."""
        swarm = self.swarms.pop(swarm_id, None)
        if swarm is None:
            return
        for s, e in swarm.have.intervals():
            self.note_evicted(swarm_id, s, e)
        self.used_bytes -= swarm.bytes_held
        swarm.have.clear()  # an endpoint still holding the content serves none of it
        self.policy.forget(swarm_id)
        swarm.close()
        shutil.rmtree(swarm.directory, ignore_errors=True)

    # -- room

    def admits(self, swarm_id: bytes, now: float) -> bool:
        """Whether a miss-fill of the swarm should be cached (the policy's admission)."""
        return self.policy.admit(swarm_id, self.used_bytes, now)

    def make_room(self, nbytes: int, now: float) -> None:
        """Evict what the policy chooses until ``nbytes`` more fit the limit."""
        self._now = max(self._now, now)
        need = self.used_bytes + nbytes - self.limit_bytes
        if need <= 0:
            return
        holdings = {sid: s.have for sid, s in self.swarms.items()}
        sizes = {sid: s.chunk_size for sid, s in self.swarms.items()}
        for sid, start, end in self.policy.victims(holdings, sizes, need, now):
            swarm = self.swarms.get(sid)
            if swarm is not None:
                swarm.evict(start, end, now)
            if self.used_bytes + nbytes <= self.limit_bytes:
                return
        if self.used_bytes + nbytes > self.limit_bytes:
            raise CacheFull(f"no room for {nbytes} bytes ({self.used_bytes} used)")

    # -- reports (DESIGN F2)

    def holdings(self) -> dict[bytes, ChunkSet]:
        """Every swarm held and its chunks (copies): the batch availability report."""
        return {sid: s.have.copy() for sid, s in self.swarms.items() if not s.have.is_empty()}

    def availability(self) -> list[SwarmAvailability]:
        """:meth:`holdings` in the tracker's model (one batch report on every (re)connect)."""
        return [
            SwarmAvailability(
                swarm_id_hex(sid), PeerMode.SEEDER, Role.CACHER, [(s, e) for s, e in have]
            )
            for sid, have in self.holdings().items()
        ]

    def note_cached(self, swarm_id: bytes, start: int, end: int) -> None:
        self._evicted.get(swarm_id, ChunkSet()).remove(start, end)
        self._cached.setdefault(swarm_id, ChunkSet()).add(start, end)

    def note_evicted(self, swarm_id: bytes, start: int, end: int) -> None:
        cached = self._cached.get(swarm_id)
        if cached is not None:
            cached.remove(start, end)
        self._evicted.setdefault(swarm_id, ChunkSet()).add(start, end)

    def pop_changes(self) -> list[CacheChange]:
        """Ranges cached and evicted since the last call, per swarm (incremental report).
        A chunk cached then evicted in between shows as evicted only, and vice versa."""
        out: list[CacheChange] = []
        for sid in sorted(set(self._cached) | set(self._evicted)):
            cached = self._cached.get(sid, ChunkSet())
            evicted = self._evicted.get(sid, ChunkSet())
            if cached.is_empty() and evicted.is_empty():
                continue
            out.append(CacheChange(sid, [(s, e) for s, e in cached], [(s, e) for s, e in evicted]))
        self._cached.clear()
        self._evicted.clear()
        return out

    # -- persistence

    def commit(self) -> None:
        """Make every swarm's held set durable (call it periodically and before exit)."""
        for swarm in self.swarms.values():
            if swarm.needs_commit:
                swarm.commit(self.durable)

    def close(self) -> None:
        self.commit()
        for swarm in self.swarms.values():
            swarm.close()
        self.swarms.clear()

    def _load_all(self, now: float) -> None:
        for directory in sorted(p for p in self.root.iterdir() if p.is_dir()):
            index = directory / INDEX
            try:
                raw = json.loads(index.read_bytes())
                checksum = raw.pop("checksum")
                if hashlib.sha256(_canonical(raw)).hexdigest() != checksum:
                    raise ValueError("index checksum mismatch")
                if raw.get("format") != INDEX_FORMAT or raw.get("version") != INDEX_VERSION:
                    raise ValueError("not a cache index of this version")
                params = params_from_json(raw["params"])
                indexed = ChunkSet((int(s), int(e)) for s, e in raw["ranges"])
                cps = int(raw["chunks_per_signature"])
                window = int(raw["window"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                # No usable index: nothing in the directory can be trusted or even named.
                log.warning("cache directory %s has no usable index (%s); removed", directory, exc)
                shutil.rmtree(directory, ignore_errors=True)
                continue
            if directory.name != _dir_name(params.swarm_id):
                log.warning("cache directory %s does not match its swarm; removed", directory)
                shutil.rmtree(directory, ignore_errors=True)
                continue
            try:
                swarm = CachedSwarm(
                    self, directory, params, chunks_per_signature=cps, window=window
                )
            except (CacheError, ValueError) as exc:
                log.warning("cache directory %s unusable (%s); removed", directory, exc)
                shutil.rmtree(directory, ignore_errors=True)
                continue
            self.swarms[params.swarm_id] = swarm
            swarm.load(indexed)
            for s, e in swarm.have.intervals():
                self.policy.record_insert(params.swarm_id, s, e, now)
            swarm.commit(self.durable)  # the re-verified pending chunks become indexed
        if self.used_bytes > self.limit_bytes:
            # Chunks adopted from the intent log (or a smaller limit than last time).
            self.make_room(0, now)
            self.commit()
        self._cached.clear()
        self._evicted.clear()
