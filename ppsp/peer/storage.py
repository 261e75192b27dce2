"""File-backed content storage for PPSPP peers: seeding a file and downloading into one.

:class:`SeedStorage` serves a complete file. Its Merkle tree (§5.1) is kept in a sidecar file
next to it (or in a cache directory) and reused while the content file's size and
``mtime_ns`` are unchanged, so a restarted seeder does not rehash; otherwise the file is
rehashed in a streaming way and the sidecar rewritten.

:class:`DownloadStorage` writes verified chunks at ``chunk * chunk_size`` with ``pwrite``.
A resume sidecar lets a restarted leecher continue: a checksummed snapshot (hash tree plus
the chunks held) followed by an append-only journal of what changed since (chunks written,
Merkle nodes verified, size learnt). Journal batches carry a CRC; replay stops at the first
damaged one, and chunks named only in the journal are re-checked against their (now known)
leaf hashes, since their data may not have reached the disk before a crash.
:meth:`DownloadStorage.finish` truncates the file to the content length and turns the
download into a seed (its tree becomes the seed sidecar; nothing is rehashed).

Everything on the data path is a ``pread``/``pwrite`` on a file descriptor that stays open,
plus a few list appends.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import zlib
from pathlib import Path
from types import TracebackType

from .merkle import HashTree, TreeFileError
from .messages import MerkleHashFunction
from .ranges import ChunkSet

__all__ = ["DownloadStorage", "SeedStorage", "StorageError", "sidecar_path"]

log = logging.getLogger(__name__)


class StorageError(OSError):
    """Content storage that cannot be used as asked (content changed, incomplete, ...)."""


def sidecar_path(
    path: Path,
    hash_function: MerkleHashFunction | int,
    chunk_size: int,
    kind: str,
    cache_dir: Path | None = None,
) -> Path:
    """Where the ``kind`` sidecar (``mhash`` or ``resume``) of content file ``path`` lives.

    Next to the file as ``<name>.ppsp-<hash>-<chunk size>.<kind>``; in ``cache_dir`` the name
    also carries a digest of the file's absolute path, so equal names do not collide.
    """
    hf = MerkleHashFunction(hash_function)
    suffix = f".ppsp-{hf.hashlib_name}-{chunk_size}.{kind}"
    if cache_dir is None:
        return path.with_name(path.name + suffix)
    tag = hashlib.sha256(os.fsencode(path.resolve())).hexdigest()[:16]
    return cache_dir / f"{path.name}.{tag}{suffix}"


def _atomic_write(target: Path, parts: list[bytes | bytearray], durable: bool = True) -> None:
    """Replace ``target`` atomically; ``durable`` also survives a power cut (fsync), which a
    mid-download compaction skips: it must only survive the process being killed, and an
    fsync there stalls the data path for tens of milliseconds."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            for p in parts:
                f.write(p)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- seed sidecar
# magic, version, content size, content mtime_ns, CRC-32 of the preceding fields; then the
# serialized hash tree (which carries its own SHA-256).
_SEED_MAGIC = b"PPSPSEED"
_SEED_HEADER = struct.Struct(">8sBQQ")
_CRC = struct.Struct(">I")


def _seed_sidecar_bytes(tree: HashTree, size: int, mtime_ns: int) -> list[bytes | bytearray]:
    head = _SEED_HEADER.pack(_SEED_MAGIC, 1, size, mtime_ns)
    return [head, _CRC.pack(zlib.crc32(head)), tree.to_bytes()]


def _read_seed_sidecar(
    sidecar: Path, st: os.stat_result, chunk_size: int, hf: MerkleHashFunction
) -> HashTree | None:
    """The tree in ``sidecar`` if it is intact and describes the file with stat ``st``."""
    try:
        raw = sidecar.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read hash tree sidecar %s: %s", sidecar, exc)
        return None
    hl = _SEED_HEADER.size
    if len(raw) < hl + _CRC.size:
        log.warning("hash tree sidecar %s is truncated; rehashing", sidecar)
        return None
    magic, version, size, mtime_ns = _SEED_HEADER.unpack_from(raw)
    (crc,) = _CRC.unpack_from(raw, hl)
    if magic != _SEED_MAGIC or version != 1 or crc != zlib.crc32(raw[:hl]):
        log.warning("hash tree sidecar %s is damaged; rehashing", sidecar)
        return None
    if size != st.st_size or mtime_ns != st.st_mtime_ns:
        log.info("content changed since %s was written; rehashing", sidecar)
        return None
    try:
        tree = HashTree.from_bytes(
            memoryview(raw)[hl + _CRC.size :], hash_function=hf, chunk_size=chunk_size
        )
    except TreeFileError as exc:
        log.warning("hash tree sidecar %s is damaged (%s); rehashing", sidecar, exc)
        return None
    if tree.content_length != size or not tree.all_verified():
        log.warning("hash tree sidecar %s does not cover the content; rehashing", sidecar)
        return None
    return tree


class SeedStorage:
    """A complete content file served by chunk, with its Merkle tree."""

    __slots__ = ("_chunk_size", "_fd", "_last", "_n", "have", "path", "sidecar", "tree")

    def __init__(self, path: Path, fd: int, tree: HashTree, sidecar: Path) -> None:
        """Use :meth:`open`."""
        n = tree.num_chunks
        length = tree.content_length
        assert n is not None and length is not None
        self.path = path
        self.sidecar = sidecar
        self.tree = tree
        #: Every chunk (a seed has them all); a ChunkSet so callers treat seeds and
        #: downloads alike.
        self.have = ChunkSet([(0, n - 1)])
        self._fd = fd
        self._n = n
        self._chunk_size = tree.chunk_size
        self._last = length - (n - 1) * tree.chunk_size

    @classmethod
    def open(
        cls,
        path: Path,
        chunk_size: int,
        hash_function: MerkleHashFunction | int,
        *,
        cache_dir: Path | None = None,
    ) -> SeedStorage:
        """Open ``path`` for seeding: reuse the sidecar tree if it matches the file's size and
        mtime, else hash the file (streaming) and rewrite the sidecar.

        An unwritable sidecar location only costs a rehash next time (logged).
        """
        path = Path(path)
        hf = MerkleHashFunction(hash_function)
        sidecar = sidecar_path(path, hf, chunk_size, "mhash", cache_dir)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            st = os.fstat(fd)
            if st.st_size == 0:
                raise StorageError(f"{path} is empty: nothing to seed")
            tree = _read_seed_sidecar(sidecar, st, chunk_size, hf)
            if tree is None:
                tree, st = _hash_stable(path, fd, chunk_size, hf)
                try:
                    _atomic_write(sidecar, _seed_sidecar_bytes(tree, st.st_size, st.st_mtime_ns))
                except OSError as exc:
                    log.warning("cannot write hash tree sidecar %s: %s", sidecar, exc)
            return cls(path, fd, tree, sidecar)
        except BaseException:
            os.close(fd)
            raise

    @property
    def num_chunks(self) -> int:
        return self._n

    @property
    def content_length(self) -> int:
        return (self._n - 1) * self._chunk_size + self._last

    def read_chunk(self, chunk: int) -> bytes:
        """The bytes of ``chunk`` (the last one may be short)."""
        if not 0 <= chunk < self._n:
            raise IndexError(f"chunk {chunk} is not in the content ({self._n} chunks)")
        size = self._chunk_size if chunk != self._n - 1 else self._last
        data = os.pread(self._fd, size, chunk * self._chunk_size)
        if len(data) != size:
            raise StorageError(f"{self.path} shrank while seeding (chunk {chunk})")
        return data

    def write_chunk(self, chunk: int, data: bytes | bytearray | memoryview) -> None:
        """A seed holds every chunk already: nothing to write. Present so a seed and a
        download can sit behind the same read/write interface."""
        if not 0 <= chunk < self._n:
            raise IndexError(f"chunk {chunk} is not in the content ({self._n} chunks)")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SeedStorage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _hash_stable(
    path: Path, fd: int, chunk_size: int, hf: MerkleHashFunction
) -> tuple[HashTree, os.stat_result]:
    """Hash the file, retrying if it changes meanwhile (the tree must match the stat)."""
    for _ in range(3):
        before = os.fstat(fd)
        tree = HashTree.from_file(path, chunk_size, hf)
        after = os.fstat(fd)
        if (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns) and (
            tree.content_length == after.st_size
        ):
            return tree, after
    raise StorageError(f"{path} keeps changing while being hashed")


# ---------------------------------------------------------------------------- resume sidecar
# magic, snapshot length, snapshot, SHA-256 of the snapshot; then journal batches:
# b"J", payload length, CRC-32 of the payload, payload. Snapshot = tree length, tree bytes,
# run count, runs (start, end). Journal records: b"N" bin hash | b"C" chunk | b"S" num_chunks
# | b"L" content_length (all integers 8 bytes big-endian).
_RESUME_MAGIC = b"PPSPRSM\x01"
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_BATCH = struct.Struct(">cII")
_REC = struct.Struct(">cQ")
_RUN = struct.Struct(">QQ")

#: Journal records are buffered and appended in batches of this many chunks.
_JOURNAL_EVERY = 64
#: The journal is folded into a new snapshot once it outgrows the snapshot and this size.
_MIN_COMPACT = 1 << 20


class DownloadStorage:
    """Verified chunks of a download, written into the content file as they arrive."""

    __slots__ = (
        "_chunk_size",
        "_fd",
        "_journal_bytes",
        "_journal_fd",
        "_pending",
        "_pending_chunks",
        "_snapshot_len",
        "_written_cl",
        "_written_n",
        "cache_dir",
        "have",
        "path",
        "resume_path",
        "tree",
    )

    def __init__(self, path: Path, tree: HashTree, resume_path: Path, fd: int) -> None:
        """Use :meth:`create`."""
        self.path = path
        self.tree = tree
        self.resume_path = resume_path
        self.cache_dir: Path | None = None
        #: Chunks verified and written.
        self.have = ChunkSet()
        self._fd = fd
        self._chunk_size = tree.chunk_size
        self._journal_fd = -1
        self._pending: list[bytes] = []
        self._pending_chunks = 0
        self._journal_bytes = 0
        self._snapshot_len = 0
        self._written_n = tree.num_chunks
        self._written_cl = tree.content_length

    @classmethod
    def create(
        cls, path: Path, tree: HashTree, *, cache_dir: Path | None = None
    ) -> DownloadStorage:
        """Open (or create) ``path`` for downloading the content of ``tree``.

        If a resume sidecar for the same root hash exists, the chunks it records are taken
        as held and its verified hashes are merged into ``tree`` (in place). A sidecar that
        is damaged or belongs to other content is discarded and the download starts over.
        """
        path = Path(path)
        resume = sidecar_path(path, tree.hash_function, tree.chunk_size, "resume", cache_dir)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            self = cls(path, tree, resume, fd)
            self.cache_dir = cache_dir
            resumed = self._resume()
            if not resumed:
                self.have.clear()
            # A fresh snapshot either way: it folds a replayed journal in, and records what
            # the caller's tree already knew.
            self._checkpoint(sync_data=resumed)
            tree.verified_log = []
            return self
        except BaseException:
            os.close(fd)
            raise

    # ------------------------------------------------------------------ data path

    def write_chunk(self, chunk: int, data: bytes | bytearray | memoryview) -> None:
        """Store ``chunk``, which the caller has just verified against the tree."""
        if chunk in self.have:
            return
        if not self.tree.is_verified(chunk << 1):
            raise ValueError(f"chunk {chunk} is not verified; refusing to store it")
        n = self.tree.num_chunks
        assert n is not None  # is_verified implies a known size
        if len(data) != self._chunk_size and chunk != n - 1:
            raise ValueError(f"chunk {chunk} has {len(data)} bytes, not {self._chunk_size}")
        written = os.pwrite(self._fd, data, chunk * self._chunk_size)
        if written != len(data):
            raise StorageError(f"short write of chunk {chunk} to {self.path}")
        self.have.add(chunk)
        self._pending.append(_REC.pack(b"C", chunk))
        self._pending_chunks += 1
        if self._pending_chunks >= _JOURNAL_EVERY:
            self.flush()

    def read_chunk(self, chunk: int) -> bytes:
        """The bytes of a stored chunk; :class:`KeyError` if it is not held."""
        if chunk not in self.have:
            raise KeyError(f"chunk {chunk} is not stored")
        size = self.tree.chunk_length(chunk)
        if size is None:  # last chunk held but length unknown cannot happen: it sets it
            raise StorageError("length of the last chunk is unknown")
        data = os.pread(self._fd, size, chunk * self._chunk_size)
        if len(data) != size:
            raise StorageError(f"{self.path} is shorter than its chunks")
        return data

    def is_complete(self) -> bool:
        n = self.tree.num_chunks
        return n is not None and self.have.count == n and self.tree.content_length is not None

    # ------------------------------------------------------------------ persistence

    def flush(self) -> None:
        """Append what changed since the last flush to the resume journal."""
        tree = self.tree
        recs: list[bytes] = []
        if tree.num_chunks != self._written_n and tree.num_chunks is not None:
            recs.append(_REC.pack(b"S", tree.num_chunks))
            self._written_n = tree.num_chunks
        if tree.content_length != self._written_cl and tree.content_length is not None:
            recs.append(_REC.pack(b"L", tree.content_length))
            self._written_cl = tree.content_length
        vlog = tree.verified_log
        if vlog:
            for b in vlog:
                h = tree.hash_at(b)
                if h is not None and tree.is_verified(b):
                    recs.append(_REC.pack(b"N", b) + h)
            vlog.clear()
        recs.extend(self._pending)
        self._pending.clear()
        self._pending_chunks = 0
        if not recs:
            return
        payload = b"".join(recs)
        batch = _BATCH.pack(b"J", len(payload), zlib.crc32(payload)) + payload
        os.write(self._journal_fd, batch)
        self._journal_bytes += len(batch)
        if self._journal_bytes > max(self._snapshot_len, _MIN_COMPACT):
            self._checkpoint(sync_data=False, durable=False)

    def checkpoint(self) -> None:
        """Make everything held durable: fsync the content, write a fresh snapshot."""
        if self.tree.verified_log:
            self.tree.verified_log.clear()
        self._pending.clear()
        self._pending_chunks = 0
        self._checkpoint(sync_data=True)

    def _checkpoint(self, sync_data: bool, durable: bool = True) -> None:
        if sync_data:
            os.fsync(self._fd)
        tree_bytes = self.tree.to_bytes()
        runs = [_RUN.pack(s, e) for s, e in self.have]
        snapshot = b"".join([_U32.pack(len(tree_bytes)), tree_bytes, _U64.pack(len(runs)), *runs])
        _atomic_write(
            self.resume_path,
            [_RESUME_MAGIC, _U64.pack(len(snapshot)), snapshot, hashlib.sha256(snapshot).digest()],
            durable,
        )
        self._snapshot_len = len(snapshot)
        self._written_n = self.tree.num_chunks
        self._written_cl = self.tree.content_length
        self._open_journal()

    def _open_journal(self) -> None:
        if self._journal_fd >= 0:
            os.close(self._journal_fd)
        self._journal_fd = os.open(
            self.resume_path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        )
        self._journal_bytes = os.fstat(self._journal_fd).st_size - (
            len(_RESUME_MAGIC) + _U64.size + self._snapshot_len + 32
        )

    def _resume(self) -> bool:
        """Load the resume sidecar into ``tree`` and ``have``; False if there is none usable."""
        try:
            raw = self.resume_path.read_bytes()
        except FileNotFoundError:
            return False
        try:
            snap_tree, runs, journal_start = _parse_snapshot(raw, self.tree)
            self.tree.absorb(snap_tree)
        except (TreeFileError, ValueError) as exc:
            log.warning("discarding resume state %s: %s", self.resume_path, exc)
            return False
        for s, e in runs:
            self.have.add(s, e)
        self._snapshot_len = journal_start - len(_RESUME_MAGIC) - _U64.size - 32
        journal_chunks, valid_end = self._replay(raw, journal_start)
        if valid_end != len(raw):
            log.warning("resume journal %s has a damaged tail; dropping it", self.resume_path)
            os.truncate(self.resume_path, valid_end)
        recheck = 0
        for c in journal_chunks:
            if c in self.have:
                continue
            size = self.tree.chunk_length(c) if self.tree.num_chunks is not None else None
            if size is None:
                continue
            data = os.pread(self._fd, size, c * self._chunk_size)
            if self.tree.verify_chunk(c, data):
                self.have.add(c)
            else:
                recheck += 1
        if recheck:
            log.warning("%d journaled chunks did not survive on disk; will refetch", recheck)
        return True

    def _replay(self, raw: bytes, pos: int) -> tuple[list[int], int]:
        """Apply journal batches from ``pos``; returns the chunks named and the end of the
        last intact batch."""
        tree = self.tree
        ds = tree.digest_size
        chunks: list[int] = []
        end = len(raw)
        while pos + _BATCH.size <= end:
            tag, plen, crc = _BATCH.unpack_from(raw, pos)
            body_at = pos + _BATCH.size
            if tag != b"J" or body_at + plen > end:
                break
            payload = raw[body_at : body_at + plen]
            if zlib.crc32(payload) != crc:
                break
            try:
                _apply_records(tree, payload, ds, chunks)
            except (ValueError, IndexError, struct.error) as exc:
                log.warning("bad resume journal record in %s: %s", self.resume_path, exc)
                break
            pos = body_at + plen
        return chunks, pos

    # ------------------------------------------------------------------ completion

    def finish(self, cache_dir: Path | None = None) -> SeedStorage:
        """Complete the download: truncate the file to the content length, turn the resume
        state into a seed sidecar, and reopen the file as a :class:`SeedStorage`."""
        if not self.is_complete():
            raise StorageError(f"download of {self.path} is not complete")
        length = self.tree.content_length
        assert length is not None
        if cache_dir is None:
            cache_dir = self.cache_dir
        os.ftruncate(self._fd, length)
        os.fsync(self._fd)
        st = os.fstat(self._fd)
        sidecar = sidecar_path(
            self.path, self.tree.hash_function, self.tree.chunk_size, "mhash", cache_dir
        )
        self.tree.verified_log = None
        _atomic_write(sidecar, _seed_sidecar_bytes(self.tree, st.st_size, st.st_mtime_ns))
        self._close_fds()
        self.resume_path.unlink(missing_ok=True)
        return SeedStorage.open(
            self.path, self.tree.chunk_size, self.tree.hash_function, cache_dir=cache_dir
        )

    def close(self) -> None:
        """Checkpoint and release the files; a later :meth:`create` resumes."""
        if self._fd < 0:
            return
        try:
            self.checkpoint()
        finally:
            self._close_fds()

    def _close_fds(self) -> None:
        self.tree.verified_log = None  # nobody drains it any more
        for fd in (self._journal_fd, self._fd):
            if fd >= 0:
                os.close(fd)
        self._journal_fd = self._fd = -1

    def __enter__(self) -> DownloadStorage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _parse_snapshot(raw: bytes, tree: HashTree) -> tuple[HashTree, list[tuple[int, int]], int]:
    """Check and split the snapshot of a resume sidecar for ``tree``'s content."""
    head = len(_RESUME_MAGIC) + _U64.size
    if len(raw) < head or raw[: len(_RESUME_MAGIC)] != _RESUME_MAGIC:
        raise TreeFileError("not a resume file")
    (slen,) = _U64.unpack_from(raw, len(_RESUME_MAGIC))
    if head + slen + 32 > len(raw):
        raise TreeFileError("resume snapshot is truncated")
    snap = raw[head : head + slen]
    if hashlib.sha256(snap).digest() != raw[head + slen : head + slen + 32]:
        raise TreeFileError("resume snapshot checksum mismatch")
    if len(snap) < _U32.size:
        raise TreeFileError("resume snapshot is truncated")
    (tlen,) = _U32.unpack_from(snap)
    tree_end = _U32.size + tlen
    if tree_end + _U64.size > len(snap):
        raise TreeFileError("resume snapshot is truncated")
    snap_tree = HashTree.from_bytes(
        memoryview(snap)[_U32.size : tree_end],
        root_hash=tree.root_hash,
        hash_function=tree.hash_function,
        chunk_size=tree.chunk_size,
    )
    (nruns,) = _U64.unpack_from(snap, tree_end)
    if tree_end + _U64.size + nruns * _RUN.size != len(snap):
        raise TreeFileError("resume snapshot has the wrong length")
    runs = [_RUN.unpack_from(snap, tree_end + _U64.size + k * _RUN.size) for k in range(nruns)]
    n = snap_tree.num_chunks
    for s, e in runs:
        if s > e or n is None or e >= n:
            raise TreeFileError("resume snapshot holds chunks outside the content")
    return snap_tree, runs, head + slen + 32


def _apply_records(tree: HashTree, payload: bytes, ds: int, chunks: list[int]) -> None:
    pos = 0
    end = len(payload)
    while pos < end:
        tag, value = _REC.unpack_from(payload, pos)
        pos += _REC.size
        if tag == b"N":
            if pos + ds > end:
                raise ValueError("truncated node record")
            tree.restore_verified(value, payload[pos : pos + ds])
            pos += ds
        elif tag == b"C":
            chunks.append(value)
        elif tag == b"S":
            tree.set_num_chunks(value)
        elif tag == b"L":
            tree.set_content_length(value)
        else:
            raise ValueError(f"unknown record {tag!r}")
