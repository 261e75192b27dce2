"""The usages' Kind-IDs, Resource-ID rules and CBOR values (reload.usages, docs/usages.md)."""

from __future__ import annotations

import contextlib
import hashlib

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reload.config import PRIVATE_KIND_ID_MAX, PRIVATE_KIND_ID_MIN
from reload.usages import (
    CONTENT_META,
    CONTENT_SEGMENT,
    KIND_NAMES,
    PEER_BATCH,
    PEER_STATUS,
    STORAGE_KINDS,
    SWARM_PEERS,
    TRACKER_KINDS,
    ChunkSignature,
    ContentMeta,
    ContentSegment,
    MunroSignature,
    PeerBatch,
    PeerRecord,
    PeerStatus,
    SwarmPeers,
    UsageDecodeError,
    content_meta_key,
    content_meta_resource,
    content_segment_key,
    content_segment_resource,
    peer_batch_resource,
    peer_status_resource,
    swarm_peers_resource,
    tracker_key,
)
from reload.usages.values import MAX_ADDRS, MAX_RANGES

NODE = bytes(range(16))
ROOT = hashlib.sha256(b"root").digest()


def h(name: bytes) -> bytes:
    return hashlib.sha1(name).digest()[:16]


def record(peer: str = "peer-1") -> PeerRecord:
    return PeerRecord(
        peer=peer,
        role="cacher",
        area="eu-west",
        addrs=(("127.0.0.1", 6778, "udp"), ("::1", 6779, "tcp")),
        mode="seeder",
        ranges=((0, 99), (200, 299)),
        updated=1_700_000_000.5,
    )


def vod_meta() -> ContentMeta:
    return ContentMeta(
        channel="movie",
        source="alice@lab.p2pcdn",
        live=False,
        swarm=ROOT,
        chunk_size=1024,
        segment_chunks=64,
        length=100_000,
        chunks=98,
        cipm=1,
        title="A movie",
        trackers=("udp://127.0.0.1:6969",),
        sources=(("127.0.0.1", 7000),),
        created=1_700_000_000.0,
    )


# --- Kind-IDs and Resource-IDs --------------------------------------------------------------


def test_kind_ids_are_private_distinct_and_named() -> None:
    kinds = TRACKER_KINDS + STORAGE_KINDS
    assert len(set(kinds)) == 5
    assert all(PRIVATE_KIND_ID_MIN <= k <= PRIVATE_KIND_ID_MAX for k in kinds)
    assert KIND_NAMES[SWARM_PEERS] == "SWARM-PEERS"
    assert KIND_NAMES[CONTENT_SEGMENT] == "CONTENT-SEGMENT"
    assert (SWARM_PEERS, PEER_BATCH, PEER_STATUS) == (0xF0000001, 0xF0000002, 0xF0000003)
    assert (CONTENT_META, CONTENT_SEGMENT) == (0xF0000010, 0xF0000011)


def test_resource_ids_hash_the_resource_names() -> None:
    assert swarm_peers_resource(ROOT) == h(ROOT)
    assert peer_status_resource("peer-ü") == h("peer-ü".encode())
    assert content_meta_resource("alice", "movie") == h(b"alice/movie")
    assert content_segment_resource("alice", "movie", 12) == h(b"alice/movie/12")
    assert content_meta_key("movie") == b"movie"
    assert content_segment_key("movie", 12) == b"movie/12"
    # PEER-BATCH: the responsible node's own Node-ID, unhashed; tracker keys likewise.
    assert peer_batch_resource(NODE) == NODE
    assert tracker_key(NODE) == NODE
    # Another overlay hash is honoured.
    assert content_meta_resource("a", "b", lambda n: n) == b"a/b"


@pytest.mark.parametrize(
    "bad",
    ["", "a/b", "x\n", "é" * 200],
)
def test_names_with_separator_control_or_oversize_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        content_meta_resource("alice", bad)
    with pytest.raises(ValueError):
        content_segment_resource(bad, "movie", 0)


def test_segment_index_must_be_a_natural_number() -> None:
    for bad in (-1, True, 1 << 63):
        with pytest.raises(ValueError):
            content_segment_key("movie", bad)
    with pytest.raises(ValueError):
        swarm_peers_resource(b"")


# --- round trips ---------------------------------------------------------------------------


def test_peer_record_round_trip_and_shape() -> None:
    rec = record()
    item = cbor2.loads(rec.encode())
    assert item["v"] == 1 and item["role"] == "cacher" and item["addrs"][1] == ["::1", 6779, "tcp"]
    assert PeerRecord.decode(rec.encode()) == rec


def test_swarm_peers_round_trip() -> None:
    value = SwarmPeers(NODE, (record("a"), record("b")))
    assert SwarmPeers.decode(value.encode()) == value
    assert SwarmPeers.decode(SwarmPeers(NODE).encode()).peers == ()


def test_peer_batch_round_trip() -> None:
    value = PeerBatch(NODE, {ROOT: (record(),), b"\x0d" + bytes(64): ()})
    back = PeerBatch.decode(value.encode())
    assert back.tracker == NODE and dict(back.swarms) == dict(value.swarms)


def test_peer_status_round_trip() -> None:
    value = PeerStatus("peer-1", NODE, "online", 3, 1_700_000_000.25)
    assert PeerStatus.decode(value.encode()) == value


def test_content_meta_round_trip_vod_and_live() -> None:
    meta = vod_meta()
    assert ContentMeta.decode(meta.encode()) == meta
    assert meta.segments == 2
    live = ContentMeta(
        channel="tv",
        source="alice",
        live=True,
        swarm=b"\x0d" + bytes(64),
        segment_chunks=64,
        bitrate=512,
        live_signing="unified-merkle",
        munro_chunks=16,
    )
    assert ContentMeta.decode(live.encode()) == live
    assert live.segments is None


def test_content_segment_round_trip_both_signature_forms() -> None:
    vod = ContentSegment("movie", 1, 64, b"x" * 100, proof=(ROOT, ROOT))
    assert ContentSegment.decode(vod.encode()) == vod
    munros = (MunroSignature(15, ROOT, 1 << 60, b"s" * 64),)
    live = ContentSegment("tv", 0, 0, b"y" * 16384, signed=munros)
    assert ContentSegment.decode(live.encode()) == live
    chunks = (ChunkSignature(0, 1 << 60, b"s" * 64), ChunkSignature(2, 1 << 60, b"t" * 64))
    sign_all = ContentSegment("tv", 0, 0, b"z" * 2048, signed=chunks)
    assert ContentSegment.decode(sign_all.encode()) == sign_all


def test_encoding_is_deterministic_and_versioned() -> None:
    assert record().encode() == record().encode()
    item = cbor2.loads(vod_meta().encode())
    assert item["v"] == 1
    keys = [k.encode() for k in item]
    assert keys == sorted(keys, key=lambda k: (len(k), k))  # RFC 8949 §4.2 (length-first)


def test_unknown_members_are_ignored() -> None:
    item = cbor2.loads(PeerStatus("p", NODE).encode())
    item["future"] = [1, 2, 3]
    assert PeerStatus.decode(cbor2.dumps(item)) == PeerStatus("p", NODE)


# --- refusals ------------------------------------------------------------------------------


def _tweak(value: bytes, **members: object) -> bytes:
    item = cbor2.loads(value)
    item.update(members)
    return cbor2.dumps(item)


@pytest.mark.parametrize(
    "members",
    [
        {"v": 2},
        {"v": True},
        {"v": 1.0},
        {"role": "king"},
        {"mode": "both"},
        {"addrs": [["not-an-ip", 1, "udp"]]},
        {"addrs": [["127.0.0.1", 70000, "udp"]]},
        {"addrs": [["127.0.0.1", 1, "sctp"]]},
        {"addrs": [["127.0.0.1", 1]]},
        {"addrs": [["127.0.0.1", 1, "udp"]] * (MAX_ADDRS + 1)},
        {"ranges": [[5, 4]]},
        {"ranges": [[-1, 4]]},
        {"ranges": [[0, 1]] * (MAX_RANGES + 1)},
        {"updated": float("nan")},
        {"updated": "yesterday"},
        {"peer": ""},
        {"peer": 7},
    ],
)
def test_peer_record_refusals(members: dict[str, object]) -> None:
    with pytest.raises(UsageDecodeError):
        PeerRecord.decode(_tweak(record().encode(), **members))


def test_meta_refusals() -> None:
    meta = vod_meta().encode()
    for members in (
        {"chunks": 99},  # not ceil(length / chunk_size)
        {"swarm": b"short"},  # not a SHA-256 root hash
        {"segment_chunks": 48},  # not a power of two
        {"hash": "md5"},
        {"live": 1},
        {"length": None},
        {"live": True, "live_signing": "unified-merkle", "munro_chunks": 128},  # 64 % 128
        {"live": True, "live_signing": None},
    ):
        with pytest.raises(UsageDecodeError):
            ContentMeta.decode(_tweak(meta, **members))


def test_segment_refusals() -> None:
    seg = ContentSegment("movie", 0, 0, b"abc").encode()
    for members in (
        {"data": "abc"},
        {"index": -1},
        {"proof": [b""]},
        {"proof": [b"x" * 32] * 65},
        {"signed": [[1, 2]]},
        {"signed": [[1, b"h", 3, b"s"], [1, 3, b"s"]]},  # mixed forms
    ):
        with pytest.raises(UsageDecodeError):
            ContentSegment.decode(_tweak(seg, **members))


def test_framing_refusals() -> None:
    value = PeerStatus("p", NODE).encode()
    for data in (b"", value + b"\x00", b"\x80", cbor2.dumps([1]), cbor2.dumps({"v": 1})):
        with pytest.raises(UsageDecodeError):
            PeerStatus.decode(data)
    with pytest.raises(UsageDecodeError):
        PeerStatus.decode(value, max_size=len(value) - 1)
    with pytest.raises(UsageDecodeError):
        SwarmPeers.decode(b"\x81" * 5000 + b"\x00")  # nesting beyond cbor2's depth bound


def test_constructors_refuse_what_decoders_refuse() -> None:
    with pytest.raises(ValueError):
        PeerRecord("p", role="king")
    with pytest.raises(ValueError):
        SwarmPeers(b"")
    with pytest.raises(ValueError):
        mixed = (MunroSignature(1, b"h", 1, b"s"), ChunkSignature(0, 1, b"s"))
        ContentSegment("c", 0, 0, b"", signed=mixed)


# --- fuzz ----------------------------------------------------------------------------------

DECODERS = (PeerRecord, SwarmPeers, PeerBatch, PeerStatus, ContentMeta, ContentSegment)

cbor_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 64), max_value=(1 << 64) - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=40)
)
cbor_items = st.recursive(
    cbor_leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.binary(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_raw_bytes_give_typed_errors(data: bytes) -> None:
    for decoder in DECODERS:
        with contextlib.suppress(UsageDecodeError):
            decoder.decode(data)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(DECODERS),
    st.dictionaries(
        st.sampled_from(
            [
                "peer",
                "role",
                "area",
                "addrs",
                "mode",
                "ranges",
                "updated",
                "tracker",
                "peers",
                "swarms",
                "state",
                "channel",
                "source",
                "live",
                "swarm",
                "hash",
                "chunk_size",
                "segment_chunks",
                "length",
                "chunks",
                "index",
                "first_chunk",
                "data",
                "proof",
                "signed",
                "trackers",
                "sources",
                "cam",
                "munro_chunks",
                "live_signing",
            ]
        ),
        cbor_items,
        max_size=10,
    ),
)
def test_fuzz_wellformed_maps_give_typed_errors(
    decoder: type[PeerRecord], members: dict[str, object]
) -> None:
    data = cbor2.dumps({"v": 1, **members})
    try:
        value = decoder.decode(data)
    except UsageDecodeError:
        return
    assert decoder.decode(value.encode()) == value  # whatever is accepted re-encodes


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=60), st.integers(min_value=0, max_value=400))
def test_fuzz_mutated_valid_values(noise: bytes, at: int) -> None:
    good = SwarmPeers(NODE, (record(),)).encode()
    at = min(at, len(good))
    data = good[:at] + noise + good[at + len(noise) :]
    with contextlib.suppress(UsageDecodeError):
        SwarmPeers.decode(data)


def test_the_examples_in_docs_usages_md_are_what_the_code_encodes() -> None:
    import re
    from pathlib import Path

    from reload.usages.content import verify_segment

    text = (Path(__file__).resolve().parent.parent / "docs" / "usages.md").read_text()
    blocks = re.findall(r"```\n([0-9a-f\n]+)\n```", text)
    decoders = (
        SwarmPeers.decode,
        PeerBatch.decode,
        PeerStatus.decode,
        ContentMeta.decode,
        ContentSegment.decode,
    )
    assert len(blocks) == len(decoders)
    values: list[object] = []
    for block, decoder in zip(blocks, decoders, strict=True):
        raw = bytes.fromhex(block.replace("\n", ""))
        value = decoder(raw)
        assert value.encode() == raw
        values.append(value)
    meta, segment = values[3], values[4]
    assert isinstance(meta, ContentMeta) and isinstance(segment, ContentSegment)
    assert b"".join(verify_segment(meta, segment)) == b"Hello, P2P CDN! "
    assert content_meta_resource(meta.source, meta.channel).hex() in text
    assert content_segment_resource(meta.source, meta.channel, 1).hex() in text
    assert swarm_peers_resource(meta.swarm).hex() in text
