"""The usages on a real storage overlay (127.0.0.1, TLS links), built with make_overlay_dir and
started in-process from its daemon TOMLs; and ContentStore's replica retry against a fake node."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from ppsp.peer.merkle import HashTree
from ppsp.peer.messages import MerkleHashFunction
from reload.aio import OverlayNode, ReloadRequestError, load_daemon_config
from reload.config import parse_overlay_configuration
from reload.messages import (
    DataValue,
    DictionaryEntry,
    ErrorCode,
    FetchAns,
    FetchKindResponse,
    FetchReq,
    HashAlgorithm,
    Signature,
    SignatureAndHashAlgorithm,
    SignerIdentity,
    SignerIdentityType,
    StoreAns,
    StoredData,
    StoredDataSpecifier,
    StoredDataValue,
)
from reload.storage import StorageError
from reload.usages import (
    CONTENT_META,
    CONTENT_SEGMENT,
    PEER_BATCH,
    SWARM_PEERS,
    ContentSegment,
    content_meta_key,
    content_meta_resource,
    content_segment_key,
    content_segment_resource,
)
from reload.usages.client import ContentNotFoundError, ContentStore, ReplicasExhaustedError
from reload.usages.config import (
    add_daemon,
    make_overlay_dir,
    max_message_size_for,
    segment_max_size,
    usage_kinds,
)
from reload.usages.content import segments_of, vod_meta

OVERLAY = "usages.p2pcdn.test"
SOURCE = f"node0@{OVERLAY}"


def content(size: int, seed: int = 1) -> tuple[bytes, HashTree]:
    data = random.Random(seed).randbytes(size)
    return data, HashTree.from_content(data, 1024, MerkleHashFunction.SHA256)


# --- configuration ---------------------------------------------------------------------------


def test_usage_kinds_by_role() -> None:
    ids = {role: [k.kind_id for k in usage_kinds(role)] for role in ("tracker", "storage", "both")}
    assert ids["tracker"][:2] == [SWARM_PEERS, PEER_BATCH]
    assert ids["storage"] == [CONTENT_META, CONTENT_SEGMENT]
    assert ids["both"] == ids["tracker"] + ids["storage"]  # one-overlay mode
    with pytest.raises(ValueError):
        usage_kinds("cache")
    seg = next(k for k in usage_kinds("storage") if k.kind_id == CONTENT_SEGMENT)
    assert seg.access_control == "USER-PREFIX-MATCH" and seg.data_model == "DICTIONARY"
    assert seg.max_size == segment_max_size() >= 64 * 1024
    assert max_message_size_for() == 131072 >= segment_max_size() + 16384
    assert max_message_size_for(256, 1024) > 256 * 1024


def test_make_overlay_dir_writes_what_the_daemon_reads(tmp_path: Path) -> None:
    paths = make_overlay_dir(tmp_path, OVERLAY, 4, "both", base_port=47000)
    assert [p.parent.name for p in paths] == ["node0", "node1", "node2", "node3"]
    config = parse_overlay_configuration((tmp_path / "overlay.xml").read_bytes()).entries[0]
    overlay = config.configuration
    assert overlay.instance_name == OVERLAY
    assert overlay.max_message_size == 131072
    assert [k.kind_id for k in overlay.kinds] == [k.kind_id for k in usage_kinds("both")]
    assert [(b.address, b.port) for b in overlay.bootstrap_nodes] == [
        ("127.0.0.1", 47000),
        ("127.0.0.1", 47001),
        ("127.0.0.1", 47002),
    ]
    daemon = load_daemon_config(paths[3])
    assert daemon.listen == ("127.0.0.1", 47003) and daemon.link == "tls"
    assert daemon.certificate.exists() and daemon.key.exists() and daemon.ca is not None
    node = OverlayNode.from_config(daemon)  # certificates, CA and overlay.xml agree
    assert node.bootstrap == [("127.0.0.1", p) for p in (47000, 47001, 47002)]
    first = OverlayNode.from_config(load_daemon_config(paths[0]))
    assert first.bootstrap == []  # node 0 creates the overlay
    assert (tmp_path / "ca" / "nodes.json").exists()
    # A source joining as a client (RFC 6940 §3.2.1) with its own user name.
    attach = [("127.0.0.1", 47001)]
    toml = add_daemon(tmp_path, "source", "source@lab", client=True, bootstrap=attach)
    source = load_daemon_config(toml)
    assert source.client and source.bootstrap == attach
    node_users = json.loads((tmp_path / "ca" / "nodes.json").read_text())
    assert set(node_users) == {f"node{i}@{OVERLAY}" for i in range(4)} | {"source@lab"}


# --- a real storage overlay ------------------------------------------------------------------


async def start_overlay(paths: Sequence[Path]) -> list[OverlayNode]:
    nodes: list[OverlayNode] = []
    for path in paths:  # node 0 creates the overlay, the others join through it
        node = OverlayNode.from_config(load_daemon_config(path))
        await node.start(join_timeout=15.0)
        nodes.append(node)
    return nodes


async def wait_replicated(nodes: Sequence[OverlayNode], resource: bytes, count: int) -> None:
    for _ in range(100):  # bounded: 5 s
        if sum(n.holds(resource) for n in nodes) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the value was not replicated")


def corrupt_fetches(node: OverlayNode) -> None:
    """Make ``node`` serve every stored value with one bit flipped (a faulty storage node)."""
    assert node.node is not None
    store = node.node.store_
    real = store.fetch

    def fetch(req: FetchReq, now: float) -> FetchAns | StorageError:
        answer = real(req, now)
        if not isinstance(answer, FetchAns):
            return answer
        responses = []
        for response in answer.kind_responses:
            values = []
            for data in response.values:
                value = data.value
                if isinstance(value, DictionaryEntry) and value.value.exists:
                    raw = bytearray(value.value.value)
                    raw[len(raw) // 2] ^= 0x01  # inside the chunks
                    value = DictionaryEntry(value.key, DataValue(True, bytes(raw)))
                values.append(dataclasses.replace(data, value=value))
            responses.append(dataclasses.replace(response, values=tuple(values)))
        return FetchAns(tuple(responses))

    store.fetch = fetch  # type: ignore[method-assign]


def test_storage_overlay_stores_fetches_verifies_and_falls_back_to_a_replica(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Segments of 64 KiB: over TLS one framed message spans several TLS records.
    async def run() -> None:
        paths = make_overlay_dir(tmp_path, OVERLAY, 3, "storage", link="tls")
        nodes = await start_overlay(paths)
        try:
            data, tree = content(3 * 64 * 1024 - 100)  # three 64 KiB segments, the last short
            meta = vod_meta(tree, "movie", SOURCE)
            source = ContentStore(nodes[0], SOURCE, timeout=10.0)
            await source.put_meta(meta)
            segments = list(segments_of(meta, tree, data))
            for segment in segments:
                await source.put_segment(segment)
            assert len(segments[0].encode()) > 64 * 1024  # more than 5000-byte messages allow

            # Another node reads the meta and every segment, verified.
            reader = ContentStore(nodes[2], f"node2@{OVERLAY}")
            got = await reader.get_meta(SOURCE, "movie", swarm=tree.root_hash)
            assert got == meta
            chunks = [c for i in range(3) for c in await reader.get_segment(got, i)]
            assert b"".join(chunks) == data

            # A forged writer: node 1 (user node1@...) writes into node 0's namespace.
            forged = dataclasses.replace(segments[1], data=bytes(len(segments[1].data)))
            entry = DictionaryEntry(
                content_segment_key("movie", 1), DataValue(True, forged.encode())
            )
            with pytest.raises(ReloadRequestError) as refused:
                await nodes[1].store(
                    content_segment_resource(SOURCE, "movie", 1), CONTENT_SEGMENT, [entry]
                )
            assert refused.value.code == ErrorCode.FORBIDDEN
            assert b"".join(await reader.get_segment(got, 1)) == segments[1].data

            # The responsible peer of segment 2 turns faulty: the reader catches it and takes
            # the segment from a replica.
            resource = content_segment_resource(SOURCE, "movie", 2)
            await wait_replicated(nodes, resource, 3)
            replicas = await nodes[0].replica_set(resource)
            assert len(replicas) == 3
            by_id = {n.node_id: n for n in nodes}
            corrupt_fetches(by_id[replicas[0]])
            reader_node = next(n for n in nodes if n.node_id != replicas[0])
            reading = ContentStore(reader_node, "reader")
            with caplog.at_level(logging.WARNING, logger="reload.usages.client"):
                again = await reading.get_segment(meta, 2)
            assert b"".join(again) == segments[2].data
            assert reading.bad_nodes[0] == replicas[0]
            assert replicas[0].hex() in caplog.text
        finally:
            for node in nodes:
                await node.close()

    asyncio.run(asyncio.wait_for(run(), 60))


def test_a_segment_crosses_dtls_links_fragmented(tmp_path: Path) -> None:
    # Over DTLS a 64 KiB segment is fragmented to the path MTU (RFC 6940 §6.7) and sent with
    # Simple Reliability, one fragment at a time (§6.6.3.1): slow, so one segment only.
    async def run() -> None:
        paths = make_overlay_dir(tmp_path, OVERLAY, 3, "storage", link="dtls")
        nodes = await start_overlay(paths)
        try:
            data, tree = content(64 * 1024, seed=4)
            meta = vod_meta(tree, "clip", SOURCE)
            source = ContentStore(nodes[0], SOURCE)
            await source.put_meta(meta)
            await source.put_segment(next(iter(segments_of(meta, tree, data))))
            reader = ContentStore(nodes[1], f"node1@{OVERLAY}")
            got = await reader.get_meta(SOURCE, "clip")
            assert b"".join(await reader.get_segment(got, 0)) == data
        finally:
            for node in nodes:
                await node.close()

    asyncio.run(asyncio.wait_for(run(), 60))


# --- the replica retry against a fake node ---------------------------------------------------

SIG = Signature(
    SignatureAndHashAlgorithm(HashAlgorithm.SHA256, 1),
    SignerIdentity(SignerIdentityType.CERT_HASH, HashAlgorithm.SHA256, b"h" * 32),
    b"signature",
)
N1, N2, N3 = (bytes([i]) * 16 for i in (1, 2, 3))


class FakeNode:
    """Holds one raw value per Node-ID; the routed Fetch reaches N1, the responsible peer."""

    def __init__(self, held: dict[bytes, bytes | None], timeouts: Sequence[bytes] = ()) -> None:
        self.held = held
        self.timeouts = set(timeouts)
        self.asked: list[bytes | None] = []
        self.stored: list[tuple[bytes, int, StoredDataValue]] = []

    async def store(
        self,
        resource_id: bytes,
        kind_id: int,
        values: Sequence[StoredDataValue],
        *,
        lifetime: int | None = None,
        generation: int = 0,
        timeout: float | None = None,
    ) -> StoreAns:
        self.stored.extend((resource_id, kind_id, v) for v in values)
        return StoreAns(())

    async def fetch(
        self,
        resource_id: bytes,
        specifiers: Sequence[StoredDataSpecifier] | int,
        *,
        at: bytes | None = None,
        timeout: float | None = None,
    ) -> FetchAns:
        self.asked.append(at)
        target = at or N1
        if target in self.timeouts:
            raise ReloadRequestError(ErrorCode.REQUEST_TIMEOUT, b"no answer")
        assert not isinstance(specifiers, int)
        spec = specifiers[0]
        assert spec.keys is not None
        raw = self.held.get(target)
        values: tuple[StoredData, ...] = ()
        if raw is not None:
            entry = DictionaryEntry(spec.keys[0], DataValue(True, raw))
            values = (StoredData(0, 60, entry, SIG),)
        return FetchAns((FetchKindResponse(spec.kind, 1, values),))

    async def replica_set(
        self, resource_id: bytes, *, count: int | None = None, timeout: float = 1.0
    ) -> list[bytes]:
        return [N1, N2, N3]


def test_client_retries_at_replicas_after_a_bad_value() -> None:
    data, tree = content(5000, seed=2)
    meta = vod_meta(tree, "clip", "alice", segment_chunks=4)
    seg = list(segments_of(meta, tree, data))[1]
    bad = dataclasses.replace(seg, data=bytes(len(seg.data))).encode()

    async def run() -> None:
        node = FakeNode({N1: bad, N2: b"\xff garbage", N3: seg.encode()})
        store = ContentStore(node, "bob")
        assert b"".join(await store.get_segment(meta, 1)) == seg.data
        assert node.asked == [None, N2, N3]
        assert store.bad_nodes == [N1, N2]

        node = FakeNode({N1: seg.encode()})
        assert b"".join(await ContentStore(node, "bob").get_segment(meta, 1)) == seg.data
        assert node.asked == [None]  # a good first answer costs one Fetch

        node = FakeNode({N1: None, N2: seg.encode()}, timeouts=[N3])
        assert b"".join(await ContentStore(node, "bob").get_segment(meta, 1)) == seg.data

        with pytest.raises(ReplicasExhaustedError):
            await ContentStore(FakeNode({N1: bad, N2: bad, N3: bad}), "bob").get_segment(meta, 1)
        with pytest.raises(ContentNotFoundError) as missing:
            await ContentStore(FakeNode({}, timeouts=[N3]), "bob").get_segment(meta, 1)
        assert not isinstance(missing.value, ReplicasExhaustedError)
        # Another index's segment at this Resource-ID is not accepted either.
        wrong = FakeNode({N1: next(iter(segments_of(meta, tree, data))).encode()})
        with pytest.raises(ReplicasExhaustedError):
            await ContentStore(wrong, "bob").get_segment(meta, 1)

        # Meta: checked against the expected swarm ID.
        node = FakeNode(
            {N1: dataclasses.replace(meta, swarm=b"\x00" * 32).encode(), N2: meta.encode()}
        )
        assert await ContentStore(node, "bob").get_meta("alice", "clip", swarm=meta.swarm) == meta
        assert node.asked == [None, N2]

    asyncio.run(asyncio.wait_for(run(), 10))


def test_client_writes_in_its_own_namespace() -> None:
    data, tree = content(5000, seed=3)
    meta = vod_meta(tree, "clip", "alice", segment_chunks=4)

    async def run() -> None:
        node = FakeNode({})
        store = ContentStore(node, "alice", lifetime=600)
        await store.put_meta(meta)
        seg = next(iter(segments_of(meta, tree, data)))
        await store.put_segment(seg)
        (r1, k1, v1), (r2, k2, v2) = node.stored
        assert (r1, k1) == (content_meta_resource("alice", "clip"), CONTENT_META)
        assert isinstance(v1, DictionaryEntry) and v1.key == content_meta_key("clip")
        assert (r2, k2) == (content_segment_resource("alice", "clip", 0), CONTENT_SEGMENT)
        assert isinstance(v2, DictionaryEntry) and ContentSegment.decode(v2.value.value) == seg
        with pytest.raises(ValueError):
            await ContentStore(node, "mallory").put_meta(meta)  # not mallory's content

    asyncio.run(asyncio.wait_for(run(), 10))
