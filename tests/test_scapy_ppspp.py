"""The first scapy PPSPP layers agree with the normative codec on libswift's datagrams."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("scapy", reason="scapy is the interop extra")

import interop.scapy_ppspp as layers
from interop.pcapfile import read_pcap
from ppsp.peer import fastwire
from ppsp.peer.messages import Ack, Data, Have, Integrity, Request, WireContext

TRACE = Path(__file__).resolve().parents[2] / "shared/traces/libswift/libswift_static_200000B.pcap"
SHA1_CHUNK32 = WireContext(hash_size=20)


@pytest.mark.skipif(not TRACE.exists(), reason="no captured traces")
def test_every_data_path_datagram_dissects_like_the_codec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layers, "INTEGRITY_HASH_SIZE", 20)  # libswift's SHA-1 trees
    checked = 0
    for packet in read_pcap(TRACE):
        ours = fastwire.decode_datagram(packet.payload, SHA1_CHUNK32)
        if any(not isinstance(m, (Data, Ack, Have, Integrity, Request)) for m in ours.messages):
            continue  # handshakes and PEX: not in the first cut of the layers
        dissected = layers.PPSPP(packet.payload)
        assert bytes(dissected) == packet.payload
        assert dissected.channel == ours.channel
        assert len(dissected.messages) == len(ours.messages)
        for layer, msg in zip(dissected.messages, ours.messages, strict=True):
            assert isinstance(msg, (Data, Ack, Have, Integrity, Request))
            assert (layer.start, layer.end) == (msg.start, msg.end)
            if isinstance(msg, Data):
                assert layer.chunk == bytes(msg.payload) and layer.timestamp == msg.timestamp
            elif isinstance(msg, Integrity):
                assert layer.hash == msg.hash
            elif isinstance(msg, Ack):
                assert layer.delay_sample == msg.delay_sample
        if len(ours.messages) > 1:
            assert dissected.summary().startswith(f"PPSPP channel {ours.channel:08x}: ")
        checked += 1
    assert checked > 350
