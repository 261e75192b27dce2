"""Live streaming end to end (RFC 7574 §6): a signing source and viewers."""

from __future__ import annotations

import asyncio
import io
import os
import time

import pytest

from ppsp.peer import aio
from ppsp.peer.content import LiveContent, LiveSourceContent, SwarmParameters
from ppsp.peer.endpoint import Endpoint, IntegrityFailed, Swarm
from ppsp.peer.live import LiveSigner
from ppsp.peer.messages import (
    ChunkAddressing,
    IntegrityMethod,
    LiveSignatureAlgorithm,
    MerkleHashFunction,
)
from ppsp.peer.picker import PickPolicy
from ppsp.peer.simnet import SimNet

SOURCE = ("10.0.0.1", 7000)
VIEWER = ("10.0.0.2", 7000)
SIGNERS = {alg: LiveSigner.generate(alg) for alg in (LiveSignatureAlgorithm.ECDSAP256SHA256,)}


def live_params(method: IntegrityMethod, signer: LiveSigner) -> SwarmParameters:
    return SwarmParameters(
        signer.swarm_id,
        method,
        MerkleHashFunction.SHA256,
        ChunkAddressing.CHUNK_RANGE32,
        1024,
        signer.swarm_id[0],
        8192,
    )


def setup(
    method: IntegrityMethod, loss: float = 0.0
) -> tuple[SimNet, Swarm, LiveSourceContent, LiveContent, list[bytes]]:
    signer = SIGNERS[LiveSignatureAlgorithm.ECDSAP256SHA256]
    params = live_params(method, signer)
    net = SimNet(loss=loss, seed=5)
    source = Endpoint()
    src_content = LiveSourceContent(params, signer)
    swarm = source.add_swarm(params, src_content, PickPolicy.IN_ORDER)
    net.add(SOURCE, source)
    played: list[bytes] = []
    viewer_content = LiveContent(params, deliver=lambda _c, d: played.append(d))
    viewer = Endpoint()
    viewer.add_swarm(params, viewer_content, PickPolicy.IN_ORDER)
    net.add(VIEWER, viewer)
    viewer.connect(params.swarm_id, SOURCE, 0.0)
    net.run(0.1)
    return net, swarm, src_content, viewer_content, played


@pytest.mark.parametrize("method", [IntegrityMethod.UNIFIED_MERKLE, IntegrityMethod.SIGN_ALL])
@pytest.mark.parametrize("loss", [0.0, 0.05])
def test_viewer_plays_the_stream_in_order(method: IntegrityMethod, loss: float) -> None:
    net, swarm, src, _viewer, played = setup(method, loss)
    stream = [os.urandom(1024) for _ in range(200)]
    for i, chunk in enumerate(stream):
        swarm.publish(src.add_chunk(chunk, time.time()))
        net.run(net.now + 0.01)
        if i == 199:
            swarm.publish(src.end(time.time()))
    net.run(net.now + 30, stop=lambda: len(played) == len(stream))
    assert played == stream


def test_late_viewer_tunes_in_at_the_live_edge() -> None:
    signer = SIGNERS[LiveSignatureAlgorithm.ECDSAP256SHA256]
    params = live_params(IntegrityMethod.UNIFIED_MERKLE, signer)
    net = SimNet()
    source = Endpoint()
    src = LiveSourceContent(params, signer)
    swarm = source.add_swarm(params, src, PickPolicy.IN_ORDER)
    net.add(SOURCE, source)
    for _ in range(100):  # 100 chunks: munros 0..5 signed (16 chunks each)
        swarm.publish(src.add_chunk(os.urandom(1024), time.time()))
    played: list[int] = []
    viewer_content = LiveContent(params, deliver=lambda c, _d: played.append(c))
    viewer = Endpoint()
    viewer.add_swarm(params, viewer_content, PickPolicy.IN_ORDER)
    net.add(VIEWER, viewer)
    viewer.connect(params.swarm_id, SOURCE, 0.0)
    net.run(2.0)
    # §6.1.2.4: start at the rightmost signed munro, not at chunk 0.
    assert played and played[0] == 80
    assert played == list(range(80, 96))


def test_forged_chunk_is_rejected_and_sender_dropped() -> None:
    net, swarm, src, viewer, played = setup(IntegrityMethod.UNIFIED_MERKLE)

    def tamper(data: bytes, s: tuple[str, int], d: tuple[str, int]) -> bytes | None:
        if s == SOURCE and len(data) > 1000:
            return data[:-1] + bytes([data[-1] ^ 0x55])
        return data

    net.tap = tamper
    for _ in range(32):
        swarm.publish(src.add_chunk(os.urandom(1024), time.time()))
    net.run(net.now + 2)
    assert not played
    assert viewer.have.is_empty()
    assert any(isinstance(e, IntegrityFailed) for e in net.events[VIEWER])


def test_stranger_signature_does_not_verify() -> None:
    """A source with another key cannot feed viewers of this swarm ID (§6.1)."""
    honest = SIGNERS[LiveSignatureAlgorithm.ECDSAP256SHA256]
    params = live_params(IntegrityMethod.UNIFIED_MERKLE, honest)
    impostor = LiveSourceContent(params, LiveSigner.generate())
    net = SimNet()
    source = Endpoint()
    swarm = source.add_swarm(params, impostor, PickPolicy.IN_ORDER)
    net.add(SOURCE, source)
    played: list[bytes] = []
    viewer = Endpoint()
    viewer.add_swarm(params, LiveContent(params, deliver=lambda _c, d: played.append(d)))
    net.add(VIEWER, viewer)
    viewer.connect(params.swarm_id, SOURCE, 0.0)
    net.run(0.1)
    for _ in range(32):
        swarm.publish(impostor.add_chunk(os.urandom(1024), time.time()))
    net.run(2.0)
    assert not played


@pytest.mark.parametrize("method", [IntegrityMethod.UNIFIED_MERKLE, IntegrityMethod.SIGN_ALL])
def test_live_over_udp_sockets(method: IntegrityMethod) -> None:
    async def main() -> tuple[int, bytes, bytes]:
        data = os.urandom(100 * 1024 + 33)
        reader = asyncio.StreamReader()
        handle = await aio.serve_live_source(reader, integrity_method=method)
        out = io.BytesIO()
        task = asyncio.create_task(
            aio.download_live(handle.swarm_id, [handle.address], out, method, timeout=5)
        )
        await asyncio.sleep(0.1)
        for i in range(0, len(data), 4096):
            reader.feed_data(data[i : i + 4096])
            await asyncio.sleep(0.002)
        reader.feed_eof()
        n = await asyncio.wait_for(task, 20)
        await asyncio.wait_for(handle.wait_closed(), 20)
        return n, out.getvalue(), data

    n, got, data = asyncio.run(main())
    assert n == len(data)
    assert got == data


@pytest.mark.parametrize(
    "algorithm",
    [
        LiveSignatureAlgorithm.ECDSAP256SHA256,
        LiveSignatureAlgorithm.ECDSAP384SHA384,
        LiveSignatureAlgorithm.RSASHA256,
        LiveSignatureAlgorithm.RSASHA1,
    ],
)
def test_every_live_signature_algorithm(algorithm: LiveSignatureAlgorithm) -> None:
    """§6.1 and §7.7: the swarm ID carries the algorithm and key; the signature size on the
    wire follows from it (§8.9), for ECDSA and RSA alike."""
    signer = SIGNERS.get(algorithm) or LiveSigner.generate(algorithm)
    params = live_params(IntegrityMethod.UNIFIED_MERKLE, signer)
    net = SimNet()
    source = Endpoint()
    src = LiveSourceContent(params, signer)
    swarm = source.add_swarm(params, src, PickPolicy.IN_ORDER)
    net.add(SOURCE, source)
    played: list[bytes] = []
    viewer = Endpoint()
    viewer.add_swarm(params, LiveContent(params, deliver=lambda _c, d: played.append(d)))
    net.add(VIEWER, viewer)
    viewer.connect(params.swarm_id, SOURCE, 0.0)
    net.run(0.1)
    stream = [os.urandom(1024) for _ in range(48)]
    for chunk in stream:  # as a live source produces them
        swarm.publish(src.add_chunk(chunk, time.time()))
        net.run(net.now + 0.01)
    net.run(net.now + 5.0, stop=lambda: len(played) == len(stream))
    assert played == stream
