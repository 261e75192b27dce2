"""File-backed seeding and downloading: sidecar reuse, resume, crash recovery, finish."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppsp.peer import storage as storage_mod
from ppsp.peer.merkle import HashTree
from ppsp.peer.messages import MerkleHashFunction
from ppsp.peer.ranges import ChunkSet
from ppsp.peer.storage import DownloadStorage, SeedStorage, StorageError, sidecar_path

SHA1 = MerkleHashFunction.SHA1
SHA256 = MerkleHashFunction.SHA256
CS = 256


def make_file(path: Path, nbytes: int, seed: int = 0) -> bytes:
    data = random.Random(seed).randbytes(nbytes)
    path.write_bytes(data)
    return data


def count_from_file(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every full hashing pass over a content file."""
    calls: list[Path] = []
    real: Callable[..., HashTree] = HashTree.from_file.__func__  # type: ignore[attr-defined]

    def spy(cls: type[HashTree], path: Path, chunk_size: int, hf: MerkleHashFunction) -> HashTree:
        calls.append(Path(path))
        return real(cls, path, chunk_size, hf)

    monkeypatch.setattr(HashTree, "from_file", classmethod(spy))
    return calls


def forbid_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> HashTree:
        raise AssertionError("content file was rehashed")

    monkeypatch.setattr(HashTree, "from_file", boom)


def deliver(seed: SeedStorage, dl: DownloadStorage, chunk: int, acked: ChunkSet) -> None:
    """One chunk from seed to downloader as a DATA datagram would carry it."""
    uncles = {b: seed.tree.hash_at(b) or b"" for b in seed.tree.uncles_to_send(chunk, acked)}
    if dl.tree.num_chunks is None:
        assert dl.tree.offer_peaks(list(uncles.items()))
    data = seed.read_chunk(chunk)
    assert dl.tree.verify_chunk(chunk, data, uncles)
    dl.write_chunk(chunk, data)
    acked.add(chunk)


# ---------------------------------------------------------------------------- seeding


def test_seed_open_reads_chunks(tmp_path: Path) -> None:
    f = tmp_path / "movie.bin"
    data = make_file(f, CS * 10 + 17)
    with SeedStorage.open(f, CS, SHA256) as s:
        assert s.tree.root_hash == HashTree.from_content(data, CS, SHA256).root_hash
        assert s.num_chunks == 11 and s.content_length == len(data)
        assert s.have.intervals() == [(0, 10)]
        assert s.read_chunk(0) == data[:CS]
        assert s.read_chunk(10) == data[CS * 10 :]
        with pytest.raises(IndexError):
            s.read_chunk(11)
        s.write_chunk(3, b"ignored")  # a seed has everything; the file is untouched
        assert f.read_bytes() == data
        with pytest.raises(IndexError):
            s.write_chunk(11, b"")
        assert s.sidecar == tmp_path / f"movie.bin.ppsp-sha256-{CS}.mhash"
        assert s.sidecar.exists()


def test_seed_restart_reuses_sidecar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c"
    make_file(f, CS * 7)
    calls = count_from_file(monkeypatch)
    with SeedStorage.open(f, CS, SHA1) as s:
        root = s.tree.root_hash
    assert calls == [f]
    forbid_hashing(monkeypatch)
    with SeedStorage.open(f, CS, SHA1) as s:
        assert s.tree.root_hash == root and s.tree.all_verified()
        assert s.read_chunk(6) == f.read_bytes()[CS * 6 :]


def test_seed_sidecar_is_per_hash_and_chunk_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "c"
    make_file(f, 5000)
    calls = count_from_file(monkeypatch)
    SeedStorage.open(f, 1024, SHA1).close()
    SeedStorage.open(f, 1024, SHA256).close()
    SeedStorage.open(f, 512, SHA1).close()
    SeedStorage.open(f, 1024, SHA1).close()
    assert len(calls) == 3


def test_seed_modified_file_rehashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c"
    make_file(f, CS * 4, seed=1)
    with SeedStorage.open(f, CS, SHA1) as s:
        old_root = s.tree.root_hash
    calls = count_from_file(monkeypatch)
    # Same size, new content, new mtime.
    new = make_file(f, CS * 4, seed=2)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with SeedStorage.open(f, CS, SHA1) as s:
        assert s.tree.root_hash == HashTree.from_content(new, CS, SHA1).root_hash
        assert s.tree.root_hash != old_root
    assert calls == [f]
    # Touching only the mtime also rehashes (size + mtime_ns are the key).
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000))
    SeedStorage.open(f, CS, SHA1).close()
    assert len(calls) == 2


@pytest.mark.parametrize("damage", ["flip_tree", "flip_header", "truncate", "garbage", "empty"])
def test_seed_corrupted_sidecar_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    f = tmp_path / "c"
    data = make_file(f, CS * 9 + 1)
    SeedStorage.open(f, CS, SHA256).close()
    side = sidecar_path(f, SHA256, CS, "mhash")
    raw = bytearray(side.read_bytes())
    if damage == "flip_tree":
        raw[len(raw) // 2] ^= 0xFF
    elif damage == "flip_header":
        raw[10] ^= 0x01
    elif damage == "truncate":
        raw = raw[: len(raw) - 5]
    elif damage == "garbage":
        raw = bytearray(os.urandom(len(raw)))
    else:
        raw = bytearray()
    side.write_bytes(bytes(raw))
    calls = count_from_file(monkeypatch)
    with SeedStorage.open(f, CS, SHA256) as s:
        assert s.tree.root_hash == HashTree.from_content(data, CS, SHA256).root_hash
    assert calls == [f]
    # The rebuilt sidecar is good again.
    forbid_hashing(monkeypatch)
    SeedStorage.open(f, CS, SHA256).close()


def test_seed_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    content_dir = tmp_path / "ro"
    content_dir.mkdir()
    cache = tmp_path / "cache"
    cache.mkdir()
    f = content_dir / "c"
    make_file(f, 3000)
    with SeedStorage.open(f, 1024, SHA1, cache_dir=cache) as s:
        assert s.sidecar.parent == cache
    assert list(content_dir.iterdir()) == [f]
    forbid_hashing(monkeypatch)
    SeedStorage.open(f, 1024, SHA1, cache_dir=cache).close()


def test_seed_unwritable_sidecar_still_serves(tmp_path: Path) -> None:
    f = tmp_path / "c"
    data = make_file(f, 3000)
    with SeedStorage.open(f, 1024, SHA1, cache_dir=tmp_path / "does-not-exist") as s:
        assert s.read_chunk(2) == data[2048:]


def test_seed_empty_or_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "empty"
    f.write_bytes(b"")
    with pytest.raises(StorageError):
        SeedStorage.open(f, 1024, SHA1)
    with pytest.raises(FileNotFoundError):
        SeedStorage.open(tmp_path / "nope", 1024, SHA1)


def test_seed_file_shrunk_under_us(tmp_path: Path) -> None:
    f = tmp_path / "c"
    make_file(f, 4096)
    with SeedStorage.open(f, 1024, SHA1) as s:
        os.truncate(f, 2000)
        with pytest.raises(StorageError):
            s.read_chunk(3)


# ---------------------------------------------------------------------------- downloading


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[tuple[SeedStorage, bytes]]:
    src = tmp_path / "src"
    src.mkdir()
    data = make_file(src / "content", CS * 40 + 99, seed=5)
    s = SeedStorage.open(src / "content", CS, SHA1)
    yield s, data
    s.close()


def test_download_resume_finish(
    tmp_path: Path, seeded: tuple[SeedStorage, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    seed, data = seeded
    target = tmp_path / "dl"
    acked = ChunkSet()
    tree = HashTree.for_root(seed.tree.root_hash, CS, SHA1)
    dl = DownloadStorage.create(target, tree)
    assert dl.tree is tree and dl.have.is_empty()
    for c in range(20):
        deliver(seed, dl, c, acked)
    assert dl.read_chunk(7) == data[7 * CS : 8 * CS]
    with pytest.raises(KeyError):
        dl.read_chunk(30)
    verified_before = [tree.is_verified(b) for b in range(127)]
    dl.close()

    # Restart: a fresh tree knowing only the root gets the size and every verified node.
    tree2 = HashTree.for_root(seed.tree.root_hash, CS, SHA1)
    dl = DownloadStorage.create(target, tree2)
    assert dl.tree is tree2
    assert dl.have.intervals() == [(0, 19)]
    assert tree2.num_chunks == 41
    assert [tree2.is_verified(b) for b in range(127)] == verified_before
    for c in range(20, 41):
        deliver(seed, dl, c, acked)
    assert dl.is_complete()
    resume = dl.resume_path
    forbid_hashing(monkeypatch)
    with dl.finish() as seeding:
        assert seeding.tree.root_hash == seed.tree.root_hash
        assert seeding.read_chunk(40) == data[40 * CS :]
    assert target.read_bytes() == data
    assert not resume.exists()
    assert sidecar_path(target, SHA1, CS, "mhash").exists()


def test_download_out_of_order_resume(tmp_path: Path, seeded: tuple[SeedStorage, bytes]) -> None:
    seed, data = seeded
    target = tmp_path / "dl"
    order = list(range(41))
    random.Random(3).shuffle(order)
    acked = ChunkSet()
    dl = DownloadStorage.create(
        target, HashTree.for_root(seed.tree.root_hash, CS, SHA1, num_chunks=41)
    )
    for c in order[:25]:
        deliver(seed, dl, c, acked)
    dl.close()
    dl = DownloadStorage.create(target, HashTree.for_root(seed.tree.root_hash, CS, SHA1))
    assert dl.have == ChunkSet((c, c) for c in order[:25])
    for c in order[25:]:
        deliver(seed, dl, c, acked)
    dl.finish().close()
    assert target.read_bytes() == data


def crash(dl: DownloadStorage) -> None:
    """Stop without checkpointing, as a killed process would (after the journal flush)."""
    dl._close_fds()


def test_crash_recovery_from_journal(tmp_path: Path, seeded: tuple[SeedStorage, bytes]) -> None:
    seed, data = seeded
    target = tmp_path / "dl"
    acked = ChunkSet()
    dl = DownloadStorage.create(target, HashTree.for_root(seed.tree.root_hash, CS, SHA1))
    for c in range(10):
        deliver(seed, dl, c, acked)
    dl.flush()  # journal: size, nodes, chunks 0..9
    for c in range(10, 13):
        deliver(seed, dl, c, acked)  # buffered, never flushed
    crash(dl)
    tree = HashTree.for_root(seed.tree.root_hash, CS, SHA1)
    dl = DownloadStorage.create(target, tree)
    assert dl.have.intervals() == [(0, 9)]
    assert tree.num_chunks == 41
    # Chunk 13's leaf was a verified sibling, but chunks 10..12 were never journaled.
    assert not tree.is_verified(2 * 12) and 12 not in dl.have
    acked2 = ChunkSet([(0, 9)])
    for c in range(10, 41):
        deliver(seed, dl, c, acked2)
    dl.finish().close()
    assert target.read_bytes() == data


def test_journal_chunk_with_bad_disk_data_is_dropped(
    tmp_path: Path, seeded: tuple[SeedStorage, bytes]
) -> None:
    seed, _ = seeded
    target = tmp_path / "dl"
    acked = ChunkSet()
    dl = DownloadStorage.create(target, HashTree.for_root(seed.tree.root_hash, CS, SHA1))
    for c in range(6):
        deliver(seed, dl, c, acked)
    dl.flush()
    crash(dl)
    # Chunk 4's bytes never made it to disk (e.g. an OS crash before writeback).
    with open(target, "r+b") as f:
        f.seek(4 * CS)
        f.write(bytes(CS))
    dl = DownloadStorage.create(target, HashTree.for_root(seed.tree.root_hash, CS, SHA1))
    assert dl.have.intervals() == [(0, 3), (5, 5)]
    dl.close()


def test_damaged_journal_tail_is_dropped(tmp_path: Path, seeded: tuple[SeedStorage, bytes]) -> None:
    seed, _ = seeded
    target = tmp_path / "dl"
    acked = ChunkSet()
    dl = DownloadStorage.create(target, HashTree.for_root(seed.tree.root_hash, CS, SHA1))
    for c in range(4):
        deliver(seed, dl, c, acked)
    dl.flush()
    for c in range(4, 8):
        deliver(seed, dl, c, acked)
    dl.flush()
    crash(dl)
    raw = dl.resume_path.read_bytes()
    # Tear the last batch in half, as a crash mid-write would.
    dl.resume_path.write_bytes(raw[:-30])
    dl = DownloadStorage.create(target, HashTree.for_root(seed.tree.root_hash, CS, SHA1))
    assert dl.have.intervals() == [(0, 3)]
    # Appending after the cut works and survives another restart.
    deliver(seed, dl, 4, ChunkSet([(0, 3)]))
    dl.flush()
    crash(dl)
    dl = DownloadStorage.create(target, HashTree.for_root(seed.tree.root_hash, CS, SHA1))
    assert dl.have.intervals() == [(0, 4)]
    dl.close()


@pytest.mark.parametrize("damage", ["snapshot", "magic", "garbage", "other_root"])
def test_bad_resume_state_starts_over(
    tmp_path: Path, seeded: tuple[SeedStorage, bytes], damage: str
) -> None:
    seed, _ = seeded
    target = tmp_path / "dl"
    acked = ChunkSet()
    dl = DownloadStorage.create(target, HashTree.for_root(seed.tree.root_hash, CS, SHA1))
    for c in range(5):
        deliver(seed, dl, c, acked)
    dl.close()
    raw = bytearray(dl.resume_path.read_bytes())
    root = seed.tree.root_hash
    if damage == "snapshot":
        raw[40] ^= 0xFF
    elif damage == "magic":
        raw[0] ^= 0xFF
    elif damage == "garbage":
        raw = bytearray(b"\x00" * 10)
    else:
        root = bytes(20)
    dl.resume_path.write_bytes(bytes(raw))
    dl = DownloadStorage.create(target, HashTree.for_root(root, CS, SHA1))
    assert dl.have.is_empty()
    assert dl.tree.num_chunks is None
    dl.close()
    # The discarded state was replaced by a valid fresh one.
    with DownloadStorage.create(target, HashTree.for_root(root, CS, SHA1)) as dl:
        assert dl.have.is_empty()


def test_compaction_keeps_resume_working(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage_mod, "_MIN_COMPACT", 64)
    monkeypatch.setattr(storage_mod, "_JOURNAL_EVERY", 2)
    checkpoints: list[bool] = []
    real = DownloadStorage._checkpoint

    def spy(self: DownloadStorage, sync_data: bool, durable: bool = True) -> None:
        checkpoints.append(sync_data)
        real(self, sync_data, durable)

    monkeypatch.setattr(DownloadStorage, "_checkpoint", spy)
    src = tmp_path / "src"
    data = make_file(src, CS * 64, seed=9)
    target = tmp_path / "dl"
    with SeedStorage.open(src, CS, SHA1) as seed:
        acked = ChunkSet()
        dl = DownloadStorage.create(target, HashTree.for_root(seed.tree.root_hash, CS, SHA1))
        assert checkpoints == [False]  # the initial, empty snapshot
        for c in range(60):
            deliver(seed, dl, c, acked)
        # The journal outgrew the snapshot: it was folded into a new one (not fsynced: it
        # must survive the process being killed, which the page cache does).
        assert len(checkpoints) > 1
        crash(dl)
        dl = DownloadStorage.create(target, HashTree.for_root(seed.tree.root_hash, CS, SHA1))
        assert dl.have.intervals() == [(0, 59)]  # 60 chunks = 30 full batches, all flushed
        for r in dl.have.missing(0, 63):
            for x in r.chunks():
                deliver(seed, dl, x, dl.have.copy())
        dl.finish().close()
    assert target.read_bytes() == data


def test_write_chunk_guards(tmp_path: Path, seeded: tuple[SeedStorage, bytes]) -> None:
    seed, data = seeded
    dl = DownloadStorage.create(
        tmp_path / "dl", HashTree.for_root(seed.tree.root_hash, CS, SHA1, num_chunks=41)
    )
    with pytest.raises(ValueError):
        dl.write_chunk(3, data[3 * CS : 4 * CS])  # not verified
    deliver(seed, dl, 0, ChunkSet())
    assert dl.tree.is_verified(2)  # chunk 1's leaf came as chunk 0's sibling
    with pytest.raises(ValueError):
        dl.write_chunk(1, data[CS : 2 * CS - 1])  # wrong length
    dl.write_chunk(0, b"ignored: already held")
    assert dl.read_chunk(0) == data[:CS]
    with pytest.raises(StorageError):
        dl.finish()
    dl.close()
    dl.close()  # idempotent


def test_download_storage_cache_dir(tmp_path: Path, seeded: tuple[SeedStorage, bytes]) -> None:
    seed, data = seeded
    state = tmp_path / "state"
    state.mkdir()
    target = tmp_path / "dl"
    dl = DownloadStorage.create(
        target, HashTree.for_root(seed.tree.root_hash, CS, SHA1), cache_dir=state
    )
    assert dl.resume_path.parent == state
    acked = ChunkSet()
    for c in range(41):
        deliver(seed, dl, c, acked)
    with dl.finish() as s:
        assert s.sidecar.parent == state
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dl", "src", "state"]
    assert target.read_bytes() == data


def test_crash_after_last_chunk_keeps_content_length(
    tmp_path: Path, seeded: tuple[SeedStorage, bytes]
) -> None:
    seed, data = seeded
    target = tmp_path / "dl"
    dl = DownloadStorage.create(target, HashTree.for_root(seed.tree.root_hash, CS, SHA1))
    acked = ChunkSet()
    for c in [40, *range(40)]:
        deliver(seed, dl, c, acked)
    assert dl.tree.content_length == len(data)
    dl.flush()
    crash(dl)
    tree = HashTree.for_root(seed.tree.root_hash, CS, SHA1)
    dl = DownloadStorage.create(target, tree)
    assert tree.content_length == len(data) and dl.is_complete()
    assert dl.read_chunk(40) == data[40 * CS :]
    dl.finish().close()
    assert target.read_bytes() == data


_FUZZ_CACHE: dict[str, bytes] = {}


def _valid_resume_bytes(tmp: Path, seed: SeedStorage) -> bytes:
    if "raw" not in _FUZZ_CACHE:
        dl = DownloadStorage.create(tmp / "base", HashTree.for_root(seed.tree.root_hash, CS, SHA1))
        acked = ChunkSet()
        for c in range(6):
            deliver(seed, dl, c, acked)
        dl.checkpoint()
        for c in range(6, 9):
            deliver(seed, dl, c, acked)
        dl.flush()
        crash(dl)
        _FUZZ_CACHE["raw"] = dl.resume_path.read_bytes()
        _FUZZ_CACHE["content"] = (tmp / "base").read_bytes()
    return _FUZZ_CACHE["raw"]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=3),
    st.one_of(st.none(), st.integers(0, 1 << 16)),
)
def test_fuzz_resume_file(
    tmp_path_factory: pytest.TempPathFactory,
    edits: list[tuple[int, int]],
    cut: int | None,
) -> None:
    # Whatever the resume file holds, create() either resumes or starts over, and never
    # claims a chunk whose bytes on disk are not the verified ones.
    tmp = tmp_path_factory.mktemp("fuzz")
    src = tmp / "src"
    data = make_file(src, CS * 40 + 99, seed=5)
    with SeedStorage.open(src, CS, SHA1) as seed:
        raw = bytearray(_valid_resume_bytes(tmp_path_factory.mktemp("base"), seed))
        for pos, val in edits:
            raw[pos % len(raw)] = val
        if cut is not None:
            raw = raw[: cut % (len(raw) + 1)]
        target = tmp / "dl"
        target.write_bytes(_FUZZ_CACHE["content"])
        sidecar_path(target, SHA1, CS, "resume").write_bytes(bytes(raw))
        tree = HashTree.for_root(seed.tree.root_hash, CS, SHA1)
        dl = DownloadStorage.create(target, tree)
        try:
            assert dl.have.count <= 9
            for c in dl.have.chunks():
                assert dl.read_chunk(c) == data[c * CS : (c + 1) * CS]
        finally:
            dl.close()
