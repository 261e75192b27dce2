"""Merkle hash trees (RFC 7574 §5) against a naive reference and the libswift trace."""

from __future__ import annotations

import contextlib
import hashlib
import random
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppsp.peer import merkle
from ppsp.peer.bins import bin_to_range, range_to_bin
from ppsp.peer.merkle import HashTree, TreeFileError
from ppsp.peer.messages import MerkleHashFunction
from ppsp.peer.ranges import ChunkSet

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces" / "libswift"
STATIC_PCAP = TRACES / "libswift_static_200000B.pcap"
ALL_HF = list(MerkleHashFunction)


def content(nbytes: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(nbytes)


def libswift_content() -> bytes:
    """The trace's content: SHA-256(counter as 8-byte big-endian) for counter = 0, 1, ..."""
    blocks = (hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(200000 // 32 + 1))
    return b"".join(blocks)[:200000]


def naive_nodes(data: bytes, cs: int, hf: MerkleHashFunction) -> dict[int, bytes]:
    """Every node hash by bin, straight from §5.1, level by level, no bin arithmetic."""
    h = getattr(hashlib, hf.hashlib_name)
    zero = bytes(hf.digest_size)
    chunks = [data[i : i + cs] for i in range(0, len(data), cs)]
    width = 1
    while width < len(chunks):
        width *= 2
    level = [h(c).digest() for c in chunks] + [zero] * (width - len(chunks))
    bins = [2 * i for i in range(width)]
    out = dict(zip(bins, level, strict=True))
    while len(level) > 1:
        nxt = []
        nbins = []
        for k in range(0, len(level), 2):
            a, b = level[k], level[k + 1]
            nxt.append(zero if a == zero and b == zero else h(a + b).digest())
            nbins.append((bins[k] + bins[k + 1]) // 2)  # §4.2
        level, bins = nxt, nbins
        out.update(zip(bins, level, strict=True))
    return out


def naive_root(data: bytes, cs: int, hf: MerkleHashFunction) -> bytes:
    nodes = naive_nodes(data, cs, hf)
    return nodes[max(nodes, key=lambda b: (b + 1) & -(b + 1))]


def chunks_of(data: bytes, cs: int) -> list[bytes]:
    return [data[i : i + cs] for i in range(0, len(data), cs)]


def send(seed: HashTree, leech: HashTree, chunk: int, acked: ChunkSet, data: bytes) -> bool:
    """One DATA datagram as our sender builds it: peaks if needed, uncles, then the chunk."""
    integrity = [(b, seed.hash_at(b)) for b in seed.uncles_to_send(chunk, acked)]
    hashes = [(b, h) for b, h in integrity if h is not None]
    assert len(hashes) == len(integrity)
    if leech.num_chunks is None:
        assert leech.offer_peaks(hashes)
    for b, h in hashes:
        leech.offer_hash(b, h)
    ok = leech.verify_chunk(chunk, data)
    if ok:
        acked.add(chunk)
    return ok


# ---------------------------------------------------------------------------- construction


@pytest.mark.parametrize("hf", ALL_HF)
@pytest.mark.parametrize(
    "nbytes", [1, 64, 100, 128, 192, 200, 256, 300, 512, 1024, 1025, 64 * 17 - 5]
)
def test_root_matches_reference(hf: MerkleHashFunction, nbytes: int, tmp_path: Path) -> None:
    # chunk size 64: sizes give 1, 2, 2, 2, 3, 4, 4, 5, 8, 16, 17, 17 chunks, short and full
    # last chunks.
    data = content(nbytes, nbytes)
    tree = HashTree.from_content(data, 64, hf)
    nodes = naive_nodes(data, 64, hf)
    assert tree.root_hash == naive_root(data, 64, hf)
    assert tree.num_chunks == -(-nbytes // 64)
    assert tree.content_length == nbytes
    assert tree.all_verified()
    for b, h in nodes.items():
        assert tree.hash_at(b) == h, b
    f = tmp_path / "content"
    f.write_bytes(data)
    assert HashTree.from_file(f, 64, hf).root_hash == tree.root_hash


def test_from_file_streams_across_buffer_edges(tmp_path: Path) -> None:
    # 1 MiB read buffer is not a multiple of 1000-byte chunks' file size; odd chunk size
    # makes chunks straddle reads.
    data = content((1 << 20) + 4321, 3)
    f = tmp_path / "content"
    f.write_bytes(data)
    t = HashTree.from_file(f, 1000, MerkleHashFunction.SHA256)
    assert t.root_hash == HashTree.from_content(data, 1000, MerkleHashFunction.SHA256).root_hash


def test_libswift_root_hash() -> None:
    tree = HashTree.from_content(libswift_content(), 1024, MerkleHashFunction.SHA1)
    assert tree.root_hash.hex() == "026bf5bed2c08204b6f0765acd1429068a874ee6"
    assert tree.num_chunks == 196 and tree.chunk_length(195) == 320
    assert tree.height == 8
    # 196 = 128 + 64 + 4: the three HAVEs the seeder sends in frame 2.
    assert [bin_to_range(b) for b in tree.peak_bins()] == [(0, 127), (128, 191), (192, 195)]


def test_empty_content_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        HashTree.from_content(b"", 1024, MerkleHashFunction.SHA1)
    f = tmp_path / "empty"
    f.write_bytes(b"")
    with pytest.raises(ValueError):
        HashTree.from_file(f, 1024, MerkleHashFunction.SHA1)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        HashTree.for_root(b"x" * 19, 1024, MerkleHashFunction.SHA1)
    with pytest.raises(ValueError):
        HashTree.for_root(b"x" * 20, 0, MerkleHashFunction.SHA1)
    with pytest.raises(ValueError):
        HashTree.for_root(b"x" * 20, 1024, 9)
    with pytest.raises(ValueError):
        HashTree.for_root(b"x" * 20, 1024, MerkleHashFunction.SHA1, 4, content_length=9999)


# ---------------------------------------------------------------------------- peaks, uncles


def test_figure4_peaks_and_uncles() -> None:
    # §5.6.1 Figure 4: 7162 bytes in 1 KiB chunks, peaks 3, 9, 12.
    tree = HashTree.from_content(content(7162), 1024, MerkleHashFunction.SHA256)
    assert tree.num_chunks == 7
    assert tree.peak_bins() == [3, 9, 12]
    assert [b for b, _ in tree.peaks()] == [3, 9, 12]
    # Uncles stop below the covering peak: chunk 4 (bin 8) only needs its sibling 10 once
    # peak 9 is known; chunk 6 is itself a peak.
    assert tree.uncle_bins(4) == [10]
    assert tree.uncle_bins(6) == []
    assert tree.uncle_bins(0) == [2, 5]
    with pytest.raises(IndexError):
        tree.uncle_bins(7)


def test_figure3_uncles_full_tree() -> None:
    # §5.2 with a full 8-chunk tree, the peak is the root: chunk 4's uncles are 10, 13, 3.
    tree = HashTree.from_content(content(8 * 16), 16, MerkleHashFunction.SHA1)
    assert tree.uncle_bins(4) == [10, 13, 3]


def test_table1_progressive_download() -> None:
    # §5.5 Table 1: hashes sent for a progressive download of 8 chunks, 7 in total.
    tree = HashTree.from_content(content(8 * 16), 16, MerkleHashFunction.SHA256)
    acked = ChunkSet()
    sent: list[list[int]] = []
    for c in range(8):
        sent.append(tree.uncles_to_send(c, acked, include_peaks=False))
        acked.add(c)
    assert [sorted(s) for s in sent] == [[2, 5, 11], [], [6], [], [10, 13], [], [14], []]
    assert sum(map(len, sent)) == 7
    # Wire order is height descending (§5.4).
    assert sent[0] == [11, 5, 2]


def test_uncles_to_send_needs_size() -> None:
    t = HashTree.for_root(bytes(20), 1024, MerkleHashFunction.SHA1)
    assert t.peak_bins() == [] and t.peaks() == []
    with pytest.raises(ValueError):
        t.uncle_bins(0)


# ---------------------------------------------------------------------------- libswift trace


def _udp_payloads(path: Path) -> Iterator[tuple[int, bytes]]:
    raw = path.read_bytes()
    (magic,) = struct.unpack_from("<I", raw)
    assert magic == 0xA1B2C3D4
    assert struct.unpack_from("<I", raw, 20)[0] == 1  # Ethernet
    off = 24
    while off < len(raw):
        incl = struct.unpack_from("<I", raw, off + 8)[0]
        pkt = raw[off + 16 : off + 16 + incl]
        off += 16 + incl
        ip = pkt[14:]
        udp = ip[(ip[0] & 15) * 4 :]
        yield struct.unpack_from(">H", udp)[0], udp[8:]


def _messages(payload: bytes) -> Iterator[tuple[str, int, int, bytes]]:
    """Just enough of RFC 7574 §8 (chunk32, SHA-1) to walk libswift's datagrams."""
    i = 4
    while i < len(payload):
        t = payload[i]
        i += 1
        if t == 0:  # HANDSHAKE: source channel, options up to End
            i += 4
            while payload[i] != 0xFF:
                code = payload[i]
                i += 1
                if code == 2:
                    i += 2 + struct.unpack_from(">H", payload, i)[0]
                elif code == 8:
                    i += 1 + payload[i]
                else:
                    i += 1
            i += 1
        elif t in (3, 8, 9):  # HAVE, REQUEST, CANCEL
            s, e = struct.unpack_from(">II", payload, i)
            i += 8
            yield {3: "HAVE", 8: "REQUEST", 9: "CANCEL"}[t], s, e, b""
        elif t == 2:  # ACK
            s, e = struct.unpack_from(">II", payload, i)
            i += 16
            yield "ACK", s, e, b""
        elif t == 4:  # INTEGRITY
            s, e = struct.unpack_from(">II", payload, i)
            yield "INTEGRITY", s, e, payload[i + 8 : i + 28]
            i += 28
        elif t == 1:  # DATA: last in the datagram
            s, e = struct.unpack_from(">II", payload, i)
            yield "DATA", s, e, payload[i + 16 :]
            return
        elif t == 6:  # PEX_REQ
            pass
        else:
            raise AssertionError(f"unexpected message type {t}")


@pytest.mark.skipif(not STATIC_PCAP.exists(), reason="libswift trace not available")
def test_libswift_trace_integrity_and_leecher() -> None:
    data = libswift_content()
    seed = HashTree.from_content(data, 1024, MerkleHashFunction.SHA1)
    leech = HashTree.for_root(seed.root_hash, 1024, MerkleHashFunction.SHA1)
    acked = ChunkSet()  # what the libswift leecher acknowledged so far
    datagrams_with_data = 0
    n_integrity = 0
    verified = ChunkSet()
    for sport, payload in _udp_payloads(STATIC_PCAP):
        msgs = list(_messages(payload))
        if sport != 20200:
            for kind, s, e, _ in msgs:
                if kind == "HAVE":
                    acked.add(s, e)
            continue
        integrity = [(range_to_bin(s, e), h) for k, s, e, h in msgs if k == "INTEGRITY"]
        for b, h in integrity:
            assert seed.hash_at(b) == h  # every hash libswift sent is our tree's node
        n_integrity += len(integrity)
        for kind, s, e, body in msgs:
            if kind != "DATA":
                continue
            assert s == e
            datagrams_with_data += 1
            if datagrams_with_data == 1:
                # Frame 4: peaks left to right, then chunk 0's uncles from the top down to
                # (not including) its peak — exactly our wire order for a fresh receiver.
                assert [b for b, _ in integrity] == seed.uncles_to_send(0, ChunkSet())
                assert leech.verify_chunk(0, body) is False  # size unknown before peaks
                assert leech.offer_peaks(integrity)
                assert leech.num_chunks == 196 and leech.content_length is None
            for b, h in integrity:
                leech.offer_hash(b, h)
            assert leech.verify_chunk(s, body), s
            verified.add(s)
    assert n_integrity == 351 and datagrams_with_data == 196
    assert verified.intervals() == [(0, 195)]
    assert leech.content_length == 200000
    assert leech.all_verified() and leech.offered_count() == 0


@pytest.mark.skipif(not STATIC_PCAP.exists(), reason="libswift trace not available")
def test_libswift_uncle_choice_for_acked_receiver() -> None:
    # Frames 6 and 22: the receiver had acknowledged only chunk 0; libswift sent uncles
    # up to the first node whose parent covers chunk 0, as uncles_to_send does.
    seed = HashTree.from_content(libswift_content(), 1024, MerkleHashFunction.SHA1)
    acked = ChunkSet([(0, 0)])
    want = {
        32: [(48, 63), (40, 47), (36, 39), (34, 35), (33, 33)],
        48: [(32, 47), (56, 63), (52, 55), (50, 51), (49, 49)],
        50: [(32, 47), (56, 63), (52, 55), (48, 49), (51, 51)],
    }
    for chunk, ranges in want.items():
        got = [bin_to_range(b) for b in seed.uncles_to_send(chunk, acked)]
        assert got == ranges


# ---------------------------------------------------------------------------- verification


@pytest.mark.parametrize("hf", ALL_HF)
@pytest.mark.parametrize("nchunks", [1, 2, 3, 4, 5, 8, 9, 31, 33])
def test_download_in_order_with_size_detection(hf: MerkleHashFunction, nchunks: int) -> None:
    cs = 32
    data = content(cs * nchunks - 7, nchunks)  # short last chunk
    seed = HashTree.from_content(data, cs, hf)
    leech = HashTree.for_root(seed.root_hash, cs, hf)
    acked = ChunkSet()
    for i, chunk in enumerate(chunks_of(data, cs)):
        assert send(seed, leech, i, acked, chunk)
    assert leech.num_chunks == nchunks
    assert leech.content_length == len(data)
    assert leech.all_verified()
    for b in range(2 * (1 << (leech.height or 0)) - 1):
        assert leech.hash_at(b) == seed.hash_at(b)


@pytest.mark.parametrize("hf", [MerkleHashFunction.SHA1, MerkleHashFunction.SHA256])
def test_download_random_order_known_size(hf: MerkleHashFunction) -> None:
    cs = 16
    data = content(16 * 37 + 3, 5)
    seed = HashTree.from_content(data, cs, hf)
    leech = HashTree.for_root(seed.root_hash, cs, hf, content_length=len(data))
    assert leech.num_chunks == 38
    order = list(range(38))
    random.Random(1).shuffle(order)
    acked = ChunkSet()
    pieces = chunks_of(data, cs)
    for i in order:
        assert send(seed, leech, i, acked, pieces[i])
    assert leech.all_verified() and leech.content_length == len(data)


def test_full_uncle_path_to_root_also_verifies() -> None:
    # A sender that ignores §5.6 and sends uncles up to the root, to a receiver that got
    # the size from metadata.
    data = content(7 * 50)
    seed = HashTree.from_content(data, 50, MerkleHashFunction.SHA256)
    leech = HashTree.for_root(seed.root_hash, 50, MerkleHashFunction.SHA256, num_chunks=7)
    b, layer = 8, 0  # chunk 4
    while b != seed.root_bin:
        sib = b ^ (2 << layer)
        h = seed.hash_at(sib)
        assert h is not None
        leech.offer_hash(sib, h)
        b = (b | (1 << layer)) & ~(2 << layer)
        layer += 1
    assert leech.verify_chunk(4, data[200:250])
    assert leech.is_verified(9) and leech.is_verified(11) and leech.is_verified(3)


def test_known_size_with_peaks_as_plain_integrity() -> None:
    # Size from metadata, sender sends libswift's layout (peaks, then uncles up to the peak)
    # and the receiver just offers every INTEGRITY hash: the peaks get checked on demand.
    data = content(100 * 11 + 1)
    seed = HashTree.from_content(data, 100, MerkleHashFunction.SHA1)
    leech = HashTree.for_root(seed.root_hash, 100, MerkleHashFunction.SHA1, num_chunks=12)
    bins = seed.uncles_to_send(3, ChunkSet())
    assert bins[:2] == seed.peak_bins() == [7, 19]
    for b in bins:
        leech.offer_hash(b, bytes(20) if b == 19 else seed.hash_at(b) or b"")
    # Chunk 3's walk ends at peak 7, whose parent needs the incomplete node 23: only the
    # peaks can vouch for 7. With a wrong peak 19 they fail and the offered peaks are dropped.
    assert not leech.verify_chunk(3, data[300:400])
    assert leech.hash_at(19) is None and leech.hash_at(7) is None
    assert not leech.is_verified(7)
    for b in bins:
        leech.offer_hash(b, seed.hash_at(b) or b"")
    assert leech.verify_chunk(3, data[300:400])
    assert leech.is_verified(7) and leech.is_verified(19) and leech.is_verified(23)
    assert leech.offered_count() == 0
    # Chunk 9 is verified without any peak hash: from below, past the empty node 27, to 7.
    leech2 = HashTree.for_root(seed.root_hash, 100, MerkleHashFunction.SHA1, num_chunks=12)
    uncles = {b: seed.hash_at(b) or b"" for b in seed.uncle_bins(9)}
    uncles[7] = seed.hash_at(7) or b""
    assert leech2.verify_chunk(9, data[900:1000], uncles)


def test_tampered_chunk_rejected() -> None:
    data = content(1024 * 5)
    seed = HashTree.from_content(data, 1024, MerkleHashFunction.SHA1)
    leech = HashTree.for_root(seed.root_hash, 1024, MerkleHashFunction.SHA1, num_chunks=5)
    for b in seed.uncles_to_send(2, ChunkSet()):
        h = seed.hash_at(b)
        assert h is not None
        leech.offer_hash(b, h)
    bad = bytearray(data[2048:3072])
    bad[100] ^= 1
    assert not leech.verify_chunk(2, bytes(bad))
    assert not leech.is_verified(4)
    # The honest sender resends its uncles; the real chunk then verifies.
    for b in seed.uncles_to_send(2, ChunkSet()):
        h = seed.hash_at(b)
        assert h is not None
        leech.offer_hash(b, h)
    assert leech.verify_chunk(2, data[2048:3072])
    # Now on the hot path (leaf 6 = chunk 3 was a verified sibling): a bad chunk 3 fails.
    assert leech.is_verified(6)
    assert not leech.verify_chunk(3, bytes(1024))
    assert leech.verify_chunk(3, data[3072:4096])


def test_tampered_offered_hash_does_not_poison() -> None:
    data = content(64 * 8)
    seed = HashTree.from_content(data, 64, MerkleHashFunction.SHA256)
    leech = HashTree.for_root(seed.root_hash, 64, MerkleHashFunction.SHA256, num_chunks=8)
    honest = {b: seed.hash_at(b) for b in seed.uncle_bins(0)}
    for b, h in honest.items():
        assert h is not None
        leech.offer_hash(b, h)
    leech.offer_hash(5, bytes(32))  # an attacker's wrong uncle for node 5
    assert leech.offered_count() == 3
    assert not leech.verify_chunk(0, data[:64])
    # The hashes used by the failed attempt are gone; nothing became verified.
    assert leech.offered_count() == 0
    assert not any(leech.is_verified(b) for b in (0, 1, 2, 3, 5, 11))
    assert leech.hash_at(5) is None
    # Honest hashes afterwards still work.
    for b, h in honest.items():
        assert h is not None
        leech.offer_hash(b, h)
    assert leech.verify_chunk(0, data[:64])
    assert leech.is_verified(11) and leech.hash_at(5) == seed.hash_at(5)
    # Offers for verified nodes are ignored, so a late wrong hash cannot replace them.
    leech.offer_hash(5, bytes(32))
    assert leech.hash_at(5) == seed.hash_at(5) and leech.offered_count() == 0


def test_missing_uncle_keeps_offers() -> None:
    data = content(64 * 8)
    seed = HashTree.from_content(data, 64, MerkleHashFunction.SHA1)
    leech = HashTree.for_root(seed.root_hash, 64, MerkleHashFunction.SHA1, num_chunks=8)
    h2 = seed.hash_at(2)
    assert h2 is not None
    leech.offer_hash(2, h2)
    assert not leech.verify_chunk(0, data[:64])  # node 5 and 11 missing
    assert leech.offered_count() == 1  # nothing proven wrong: keep it
    for b in (5, 11):
        h = seed.hash_at(b)
        assert h is not None
        leech.offer_hash(b, h)
    assert leech.verify_chunk(0, data[:64])


def test_datagram_uncles_take_precedence_over_offers() -> None:
    data = content(64 * 4)
    seed = HashTree.from_content(data, 64, MerkleHashFunction.SHA1)
    leech = HashTree.for_root(seed.root_hash, 64, MerkleHashFunction.SHA1, num_chunks=4)
    leech.offer_hash(2, bytes(20))  # stale junk from another peer
    uncles = {b: seed.hash_at(b) or b"" for b in seed.uncle_bins(0)}
    assert leech.verify_chunk(0, data[:64], uncles)
    assert leech.is_verified(2) and leech.offered_count() == 0


def test_chunk_length_rules() -> None:
    data = content(100 * 3 + 40)
    seed = HashTree.from_content(data, 100, MerkleHashFunction.SHA1)
    leech = HashTree.for_root(seed.root_hash, 100, MerkleHashFunction.SHA1, num_chunks=4)
    for b in seed.uncles_to_send(3, ChunkSet(), include_peaks=False):
        h = seed.hash_at(b)
        assert h is not None
        leech.offer_hash(b, h)
    assert not leech.verify_chunk(3, data[300:340] + b"\0")  # last chunk, wrong length
    assert not leech.verify_chunk(3, b"")
    assert not leech.verify_chunk(4, b"x")  # past the end
    assert not leech.verify_chunk(-1, b"x")
    assert leech.content_length is None and leech.chunk_length(3) is None
    for b in seed.uncles_to_send(3, ChunkSet(), include_peaks=False):
        h = seed.hash_at(b)
        assert h is not None
        leech.offer_hash(b, h)
    assert leech.verify_chunk(3, data[300:340])
    assert leech.content_length == 340 and leech.chunk_length(3) == 40
    # Only the last chunk may be short.
    assert not leech.verify_chunk(0, data[:99])
    assert not leech.verify_chunk(0, data[:101] + b"x")
    # With the content length known, a last chunk of another length is refused up front.
    t2 = HashTree.for_root(seed.root_hash, 100, MerkleHashFunction.SHA1, content_length=340)
    assert not t2.verify_chunk(3, data[300:339])


def test_memoryview_chunks() -> None:
    data = content(64 * 3)
    seed = HashTree.from_content(memoryview(data), 64, MerkleHashFunction.SHA256)
    leech = HashTree.for_root(seed.root_hash, 64, MerkleHashFunction.SHA256, num_chunks=3)
    uncles = {b: seed.hash_at(b) or b"" for b in seed.uncle_bins(1)}
    uncles.update({b: h for b, h in seed.peaks()})
    assert leech.verify_chunk(1, memoryview(data)[64:128], uncles)


def test_verified_log() -> None:
    data = content(64 * 4)
    seed = HashTree.from_content(data, 64, MerkleHashFunction.SHA1)
    leech = HashTree.for_root(seed.root_hash, 64, MerkleHashFunction.SHA1)
    leech.verified_log = []
    assert leech.offer_peaks(seed.peaks())
    assert leech.verified_log == []  # 4 chunks: the single peak is the root, known already
    uncles = {b: seed.hash_at(b) or b"" for b in seed.uncle_bins(0)}
    assert leech.verify_chunk(0, data[:64], uncles)
    assert sorted(leech.verified_log) == [0, 1, 2, 5]


# ---------------------------------------------------------------------------- size detection


def test_offer_peaks_rules() -> None:
    data = content(1024 * 196 - 704)
    seed = HashTree.from_content(data, 1024, MerkleHashFunction.SHA1)
    peaks = seed.peaks()
    root = seed.root_hash

    def fresh() -> HashTree:
        return HashTree.for_root(root, 1024, MerkleHashFunction.SHA1)

    t = fresh()
    assert t.verify_chunk(0, data[:1024]) is False  # no size, no verification
    assert not t.offer_peaks([])
    assert not t.offer_peaks(peaks[:2])  # too few: root mismatch
    assert not t.offer_peaks([peaks[0], peaks[2], peaks[1]])  # not a left-to-right tiling
    tampered = [peaks[0], (peaks[1][0], bytes(20)), peaks[2]]
    assert not t.offer_peaks(tampered)
    assert t.num_chunks is None
    # Peaks followed by uncles (libswift's layout): the uncles are ignored here.
    uncle = seed.uncle_bins(0)[-1]
    assert t.offer_peaks([*peaks, (uncle, seed.hash_at(uncle) or b"")])
    assert t.num_chunks == 196 and t.content_length is None
    assert all(t.is_verified(b) for b, _ in peaks)
    # Once the size is known, only the same peaks are accepted.
    assert t.offer_peaks(peaks)
    assert not t.offer_peaks(peaks[:1])
    # A size from metadata must agree.
    t2 = HashTree.for_root(root, 1024, MerkleHashFunction.SHA1, num_chunks=195)
    assert not t2.offer_peaks(peaks)


def test_single_chunk_content() -> None:
    data = b"tiny"
    seed = HashTree.from_content(data, 1024, MerkleHashFunction.SHA256)
    assert seed.root_hash == hashlib.sha256(data).digest()
    assert seed.height == 0 and seed.peak_bins() == [0] and seed.uncle_bins(0) == []
    leech = HashTree.for_root(seed.root_hash, 1024, MerkleHashFunction.SHA256)
    assert leech.offer_peaks(seed.peaks())
    assert leech.verify_chunk(0, data) and leech.content_length == 4


def test_size_inflation_is_capped() -> None:
    # §5.6 caveat: a single "peak" equal to the root hash checks out for any power-of-two
    # size, so the size learnt from untrusted peaks is capped by max_chunks.
    data = content(64 * 4)
    seed = HashTree.from_content(data, 64, MerkleHashFunction.SHA1)
    t = HashTree.for_root(seed.root_hash, 64, MerkleHashFunction.SHA1, max_chunks=1 << 10)
    assert not t.offer_peaks([(range_to_bin(0, (1 << 20) - 1), seed.root_hash)])
    assert t.num_chunks is None


def test_empty_nodes_are_known_zero() -> None:
    t = HashTree.for_root(bytes(32), 1024, MerkleHashFunction.SHA256, num_chunks=5)
    # 5 chunks -> 8 leaves; leaves 5..7 (bins 10, 12, 14) and node 13 are empty.
    for b in (10, 12, 14, 13):
        assert t.is_verified(b) and t.hash_at(b) == bytes(32)
    assert not t.is_verified(8) and not t.is_verified(9) and not t.is_verified(11)
    assert t.is_verified(7)  # the root
    assert not t.is_verified(15) and not t.is_verified(-1)


def test_offer_hash_validation_and_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    t = HashTree.for_root(bytes(20), 1024, MerkleHashFunction.SHA1)
    with pytest.raises(ValueError):
        t.offer_hash(2, bytes(32))
    with pytest.raises(ValueError):
        t.offer_hash(-2, bytes(20))
    monkeypatch.setattr(merkle, "_MAX_OFFERED", 3)
    for b in range(5):
        t.offer_hash(b, bytes([b]) * 20)
    assert t.offered_count() == 3
    assert t.hash_at(0) is None and t.hash_at(4) == bytes([4]) * 20
    # Learning the size drops offers outside the tree.
    t.set_num_chunks(1)
    assert t.offered_count() == 0


def test_set_size_conflicts() -> None:
    t = HashTree.for_root(bytes(20), 1000, MerkleHashFunction.SHA1, content_length=2500)
    assert t.num_chunks == 3
    t.set_num_chunks(3)
    t.set_content_length(2500)
    with pytest.raises(ValueError):
        t.set_num_chunks(4)
    with pytest.raises(ValueError):
        t.set_content_length(2600)
    with pytest.raises(ValueError):
        t.set_num_chunks(0)
    with pytest.raises(ValueError):
        t.restore_verified(99, bytes(20))
    u = HashTree.for_root(bytes(20), 1000, MerkleHashFunction.SHA1)
    with pytest.raises(ValueError):
        u.restore_verified(0, bytes(20))
    with pytest.raises(IndexError):
        u.chunk_length(0)


def test_absorb() -> None:
    data = content(64 * 6)
    seed = HashTree.from_content(data, 64, MerkleHashFunction.SHA1)
    a = HashTree.for_root(seed.root_hash, 64, MerkleHashFunction.SHA1)
    a.absorb(HashTree.for_root(seed.root_hash, 64, MerkleHashFunction.SHA1))
    assert a.num_chunks is None
    a.absorb(seed)  # fresh tree: takes the arrays wholesale
    assert a.all_verified() and a.content_length == len(data)
    b = HashTree.for_root(seed.root_hash, 64, MerkleHashFunction.SHA1, num_chunks=6)
    c = HashTree.for_root(seed.root_hash, 64, MerkleHashFunction.SHA1, num_chunks=6)
    peaks = dict(seed.peaks())
    assert b.verify_chunk(
        0, data[:64], {x: seed.hash_at(x) or b"" for x in seed.uncle_bins(0)} | peaks
    )
    assert c.verify_chunk(
        5, data[320:], {x: seed.hash_at(x) or b"" for x in seed.uncle_bins(5)} | peaks
    )
    b.absorb(c)  # node-by-node merge
    assert b.verified_leaf_count() == 4  # chunks 0, 1 (sibling), 4 (sibling), 5
    assert b.is_verified(10) and b.is_verified(0)
    with pytest.raises(ValueError):
        b.absorb(HashTree.for_root(bytes(20), 64, MerkleHashFunction.SHA1))


# ---------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("hf", ALL_HF)
def test_save_load_round_trip(hf: MerkleHashFunction, tmp_path: Path) -> None:
    data = content(1000 * 13 + 1)
    seed = HashTree.from_content(data, 1000, hf)
    p = tmp_path / "tree"
    seed.save(p)
    back = HashTree.load(p, root_hash=seed.root_hash, hash_function=hf, chunk_size=1000)
    assert back.root_hash == seed.root_hash and back.all_verified()
    assert back.content_length == len(data) and back.num_chunks == 14
    for b in range(2 * 16 - 1):
        assert back.hash_at(b) == seed.hash_at(b)
    # A partially verified leecher tree round-trips too, unverified nodes staying so.
    leech = HashTree.for_root(seed.root_hash, 1000, hf)
    assert leech.offer_peaks(seed.peaks())
    assert leech.verify_chunk(
        0, data[:1000], {b: seed.hash_at(b) or b"" for b in seed.uncle_bins(0)}
    )
    leech.save(p)
    back = HashTree.load(p)
    assert back.num_chunks == 14 and back.content_length is None
    assert [back.is_verified(b) for b in range(31)] == [leech.is_verified(b) for b in range(31)]
    assert back.verify_chunk(1, data[1000:2000])  # hot path after reload
    # Size still unknown: header and root only.
    HashTree.for_root(seed.root_hash, 1000, hf).save(p)
    assert HashTree.load(p).num_chunks is None


def test_load_rejects_damage(tmp_path: Path) -> None:
    seed = HashTree.from_content(content(5000), 1000, MerkleHashFunction.SHA256)
    good = seed.to_bytes()
    p = tmp_path / "t"
    for i in (0, 9, 12, 20, 40, len(good) // 2, len(good) - 1):
        bad = bytearray(good)
        bad[i] ^= 0x40
        p.write_bytes(bytes(bad))
        with pytest.raises(TreeFileError):
            HashTree.load(p)
    for cut in (0, 10, 30, len(good) - 1):
        with pytest.raises(TreeFileError):
            HashTree.from_bytes(good[:cut])
    with pytest.raises(TreeFileError):
        HashTree.from_bytes(good + b"\0")
    with pytest.raises(TreeFileError):
        HashTree.from_bytes(good, root_hash=bytes(32))
    with pytest.raises(TreeFileError):
        HashTree.from_bytes(good, chunk_size=1024)
    with pytest.raises(TreeFileError):
        HashTree.from_bytes(good, hash_function=MerkleHashFunction.SHA1)
    with pytest.raises(OSError):
        HashTree.load(tmp_path / "missing")


def _resealed(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


def test_load_rejects_inconsistent_but_checksummed() -> None:
    seed = HashTree.from_content(content(5000), 1000, MerkleHashFunction.SHA1)
    body = bytearray(seed.to_bytes()[:-32])
    bad_root = bytearray(body)
    bad_root[34] ^= 1  # header root hash no longer matches the root node
    with pytest.raises(TreeFileError):
        HashTree.from_bytes(_resealed(bytes(bad_root)))
    bad_flag = bytearray(body)
    bad_flag[30 + 20 + 3] = 7  # a verified flag that is neither 0 nor 1
    with pytest.raises(TreeFileError):
        HashTree.from_bytes(_resealed(bytes(bad_flag)))
    bad_len = bytearray(body)
    struct.pack_into(">Q", bad_len, 22, 1)  # content length 1 with 5 chunks of 1000
    with pytest.raises(TreeFileError):
        HashTree.from_bytes(_resealed(bytes(bad_len)))
    huge = bytearray(body)
    struct.pack_into(">Q", huge, 14, 1 << 60)  # absurd size must not allocate
    with pytest.raises(TreeFileError):
        HashTree.from_bytes(_resealed(bytes(huge)))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_fuzz_from_bytes_random(raw: bytes) -> None:
    with contextlib.suppress(TreeFileError):
        HashTree.from_bytes(raw)


_VALID = HashTree.from_content(content(300), 100, MerkleHashFunction.SHA1).to_bytes()


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), max_size=4),
    st.integers(0, len(_VALID)),
    st.booleans(),
)
def test_fuzz_from_bytes_mutated(edits: list[tuple[int, int]], cut: int, reseal: bool) -> None:
    raw = bytearray(_VALID)
    for pos, val in edits:
        raw[pos] = val
    body = bytes(raw[: max(0, cut - 32)]) if cut < len(_VALID) else bytes(raw[:-32])
    blob = _resealed(body) if reseal else bytes(raw[:cut])
    try:
        t = HashTree.from_bytes(blob)
    except TreeFileError:
        return
    # Whatever loads is self-consistent.
    assert t.root_bin is None or t.is_verified(t.root_bin)


def test_check_chunk_tri_state() -> None:
    # None = cannot be checked yet (says nothing against the sender); False = proven bad.
    data = content(64 * 4)
    seed = HashTree.from_content(data, 64, MerkleHashFunction.SHA1)
    leech = HashTree.for_root(seed.root_hash, 64, MerkleHashFunction.SHA1)
    assert leech.check_chunk(0, data[:64]) is None  # size unknown
    leech.set_num_chunks(4)
    assert leech.check_chunk(0, data[:64]) is None  # uncles missing
    assert leech.check_chunk(0, data[:63]) is False  # wrong length
    uncles = {b: seed.hash_at(b) or b"" for b in seed.uncle_bins(0)}
    assert leech.check_chunk(0, bytes(64), uncles) is False  # mismatch
    assert leech.check_chunk(0, data[:64], uncles) is True
