"""Segments of content (reload/usages/content.py): cutting with proofs, and verification
against the root hash (VoD) or the live injector's signatures."""

from __future__ import annotations

import dataclasses
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppsp.peer.content import LiveSourceContent, SwarmParameters
from ppsp.peer.live import LiveSigner
from ppsp.peer.merkle import HashTree
from ppsp.peer.messages import ChunkAddressing, IntegrityMethod, MerkleHashFunction
from reload.usages import ChunkSignature, ContentMeta, ContentSegment, MunroSignature
from reload.usages.content import (
    LiveSegmenter,
    SegmentVerificationError,
    live_meta,
    live_segment,
    segments_of,
    verify_segment,
    vod_meta,
    vod_segment,
)

SIGNER = LiveSigner.generate()  # ECDSA P-256, our live source's default
OTHER = LiveSigner.generate()
MIB = 1 << 20


def vod(
    data: bytes, chunk_size: int = 1024, segment_chunks: int = 64
) -> tuple[ContentMeta, HashTree, list[ContentSegment]]:
    tree = HashTree.from_content(data, chunk_size, MerkleHashFunction.SHA256)
    meta = vod_meta(tree, "movie", "alice@lab", segment_chunks=segment_chunks, created=1.0)
    return meta, tree, list(segments_of(meta, tree, data))


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# --- VoD ------------------------------------------------------------------------------------


def test_every_segment_of_a_mib_verifies_and_reassembles() -> None:
    data = random.Random(1).randbytes(MIB)
    meta, _tree, segments = vod(data)
    assert meta.segments == 16 and len(segments) == 16
    assert all(len(s.proof) == 4 for s in segments)  # 1024 chunks: height 10, segment layer 6
    out = b"".join(b"".join(verify_segment(meta, s)) for s in segments)
    assert out == data
    # What travels is the CBOR value: verify the decoded form too.
    again = ContentSegment.decode(segments[7].encode())
    assert b"".join(verify_segment(ContentMeta.decode(meta.encode()), again)) == segments[7].data


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=1, max_value=6000),
    st.sampled_from([1, 7, 64]),
    st.sampled_from([1, 2, 4, 16]),
    st.sampled_from([MerkleHashFunction.SHA1, MerkleHashFunction.SHA256]),
)
def test_segments_verify_for_any_size_and_geometry(
    length: int, chunk_size: int, segment_chunks: int, hf: MerkleHashFunction
) -> None:
    # Short last chunk, short last segment, content smaller than one segment: the verifier's
    # padding must be exactly HashTree's (§5.1).
    data = random.Random(length).randbytes(length)
    tree = HashTree.from_content(data, chunk_size, hf)
    meta = vod_meta(tree, "c", "u", segment_chunks=segment_chunks, created=0.0)
    segments = list(segments_of(meta, tree, lambda off, size: data[off : off + size]))
    assert b"".join(b"".join(verify_segment(meta, s)) for s in segments) == data


def test_tampered_vod_segments_are_refused() -> None:
    data = random.Random(2).randbytes(MIB)
    meta, _tree, segments = vod(data)
    seg = segments[5]
    bad = [
        dataclasses.replace(seg, data=flip(seg.data, 12345)),  # a flipped bit
        dataclasses.replace(seg, data=seg.data[:-1]),  # short data
        dataclasses.replace(seg, data=seg.data + b"x"),
        dataclasses.replace(seg, proof=(flip(seg.proof[0], 3), *seg.proof[1:])),  # wrong proof
        dataclasses.replace(seg, proof=seg.proof[:-1]),  # proof too short
        dataclasses.replace(seg, proof=(*seg.proof, seg.proof[0])),  # and too long
        dataclasses.replace(seg, index=6, first_chunk=6 * 64),  # another index's place
        dataclasses.replace(seg, index=6),  # index and first chunk disagree
        dataclasses.replace(seg, data=segments[6].data),  # another segment's data
        dataclasses.replace(seg, channel="other"),
        dataclasses.replace(seg, index=16, first_chunk=16 * 64),  # past the end
        dataclasses.replace(seg, proof=tuple(p[:20] for p in seg.proof)),  # wrong digest size
    ]
    for segment in bad:
        with pytest.raises(SegmentVerificationError):
            verify_segment(meta, segment)
    # A meta of other content does not accept these segments.
    other, _, _ = vod(flip(data, 7))
    with pytest.raises(SegmentVerificationError):
        verify_segment(other, seg)


def test_vod_segment_refuses_wrong_input() -> None:
    data = random.Random(3).randbytes(10_000)
    meta, tree, _ = vod(data, segment_chunks=4)
    with pytest.raises(ValueError):
        vod_segment(meta, tree, 0, data[:100])
    with pytest.raises(ValueError):
        vod_segment(meta, tree, 3, data[:4096])  # segment 3 is the short last one
    with pytest.raises(ValueError):
        vod_segment(meta, tree, 9, b"")


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=0, max_value=20),
    st.integers(min_value=0, max_value=1400),
    st.binary(max_size=1500),
    st.lists(st.binary(min_size=1, max_size=40), max_size=6),
)
def test_fuzz_vod_verification_gives_typed_errors(
    index: int, first: int, data: bytes, proof: list[bytes]
) -> None:
    meta = vod_meta(
        HashTree.from_content(b"z" * 5000, 256, MerkleHashFunction.SHA256),
        "c",
        "u",
        segment_chunks=4,
    )
    try:
        verify_segment(meta, ContentSegment("c", index, first, data, tuple(proof)))
    except SegmentVerificationError:
        return
    pytest.fail("a random segment verified")


# --- live -----------------------------------------------------------------------------------


def stream(n: int, last: int = 1024) -> list[bytes]:
    rng = random.Random(n)
    return [rng.randbytes(1024) for _ in range(n - 1)] + [rng.randbytes(last)]


def segment_live(
    meta: ContentMeta, chunks: list[bytes], signer: LiveSigner = SIGNER
) -> list[ContentSegment]:
    segmenter = LiveSegmenter(meta, signer)
    out: list[ContentSegment] = []
    for i, chunk in enumerate(chunks):
        out.extend(segmenter.add_chunk(chunk, 1_700_000_000.0 + i))
    out.extend(segmenter.flush(1_700_000_100.0))
    return out


@pytest.mark.parametrize("signing", ["unified-merkle", "sign-all"])
@pytest.mark.parametrize(
    "cam", [ChunkAddressing.CHUNK_RANGE32, ChunkAddressing.BIN32, ChunkAddressing.BYTE_RANGE64]
)
def test_live_segments_verify_with_the_swarm_public_key(signing: str, cam: ChunkAddressing) -> None:
    meta = live_meta(SIGNER.swarm_id, "tv", "alice@lab", signing=signing, cam=cam, created=0.0)
    chunks = stream(64 * 2 + 20, last=300)  # two full segments and a short, padded third
    segments = segment_live(meta, chunks)
    assert [s.index for s in segments] == [0, 1, 2]
    assert [len(s.signed) for s in segments] == (
        [4, 4, 2] if signing == "unified-merkle" else [64, 64, 20]
    )
    got = [c for s in segments for c in verify_segment(meta, ContentSegment.decode(s.encode()))]
    assert got == chunks


def test_munros_the_ppspp_live_source_signed_verify() -> None:
    # The signatures PPSPP sends (LiveSourceContent, the live source's injector) are the ones
    # a segment carries: the verifier checks the same bytes.
    params = SwarmParameters(
        swarm_id=SIGNER.swarm_id,
        integrity_method=IntegrityMethod.UNIFIED_MERKLE,
        live_signature_algorithm=SIGNER.swarm_id[0],
    )
    source = LiveSourceContent(params, SIGNER, 16, window=None)
    chunks = stream(64)
    for chunk in chunks:
        source.add_chunk(chunk, 1_700_000_000.0)
    assert source.unified is not None
    munros = [source.unified.munro_for(c) for c in range(0, 64, 16)]
    assert all(m is not None for m in munros)
    meta = live_meta(SIGNER.swarm_id, "tv", "alice@lab", created=0.0)
    segment = live_segment(meta, 0, chunks, [m for m in munros if m is not None])
    assert verify_segment(meta, segment) == chunks


@pytest.mark.parametrize("signing", ["unified-merkle", "sign-all"])
def test_tampered_live_segments_are_refused(signing: str) -> None:
    meta = live_meta(SIGNER.swarm_id, "tv", "alice@lab", signing=signing, created=0.0)
    chunks = stream(64)
    seg = segment_live(meta, chunks)[0]
    other_meta = dataclasses.replace(meta, swarm=OTHER.swarm_id)
    by_other = segment_live(other_meta, chunks, OTHER)[0]
    first = seg.signed[0]
    wrong_bin: MunroSignature | ChunkSignature
    wrong_time: MunroSignature | ChunkSignature
    if isinstance(first, MunroSignature):
        wrong_bin = dataclasses.replace(first, bin=first.bin + 32)
        wrong_time = dataclasses.replace(first, timestamp=first.timestamp + 1)
    else:
        assert isinstance(first, ChunkSignature)
        wrong_bin = dataclasses.replace(first, bin=first.bin + 2)
        wrong_time = dataclasses.replace(first, timestamp=first.timestamp + 1)
    bad = [
        dataclasses.replace(seg, data=flip(seg.data, 999)),
        dataclasses.replace(seg, data=seg.data[:-1024]),  # a chunk missing
        dataclasses.replace(seg, signed=by_other.signed),  # another injector's signatures
        dataclasses.replace(seg, signed=seg.signed[:-1]),
        dataclasses.replace(seg, signed=(wrong_bin, *seg.signed[1:])),
        dataclasses.replace(seg, signed=(wrong_time, *seg.signed[1:])),
        dataclasses.replace(seg, data=b""),
        dataclasses.replace(seg, index=1, first_chunk=64),  # replayed at another index
    ]
    for segment in bad:
        with pytest.raises(SegmentVerificationError):
            verify_segment(meta, segment)
    with pytest.raises(SegmentVerificationError):  # a swarm ID that is no public key
        verify_segment(dataclasses.replace(meta, swarm=b"\x0d\x01"), seg)


def test_live_segmenter_refuses_a_foreign_signer_and_oversized_chunks() -> None:
    meta = live_meta(SIGNER.swarm_id, "tv", "alice@lab", created=0.0)
    with pytest.raises(ValueError):
        LiveSegmenter(meta, OTHER)
    with pytest.raises(ValueError):
        LiveSegmenter(meta, SIGNER).add_chunk(os.urandom(1025), 0.0)
