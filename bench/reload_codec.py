"""Benchmark of the RELOAD message codec (RFC 6940 §6.3, §7) and message signatures (§6.3.4).

Encode + decode of one whole message, in µs, with the hand ``struct`` fast path
(:mod:`reload.fastwire`, what :func:`reload.wire.encode_message` and
:func:`reload.wire.decode_message` run) and with the normative Construct definition
(``reload.wire.*_construct``), on four messages a storage/tracker overlay carries:

* a PingReq (§6.5.3.1), the keep-alive;
* a StoreReq of one 64 KiB CONTENT-SEGMENT value (a DICTIONARY entry, §7.4.1.1), the unit of
  publishing into the storage overlay;
* a FetchAns of 100 DICTIONARY entries of 150 bytes (§7.4.2.2), a tracker overlay peer list;
* an UpdateReq carrying a CHORD-RELOAD full update (§10.7), 5 predecessors, 5 successors and
  16 fingers.

Every message carries a real security block (an ECDSA P-256 node certificate and signature),
and every StoredData its signature. Then the cost of the signatures themselves, ECDSA P-256:
signing a message (§6.3.4), verifying it the first time (public-key operation and chain check)
and verifying it again (the :class:`reload.security.Verifier` remembers verified signatures, so
a value fetched again costs a hash and the chain check). Each figure is the median of five
timed repetitions.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

from cryptography import x509

from bench.common import row
from reload import fastwire, security, wire
from reload.messages import (
    DEFAULT_DATA_MODELS,
    ChordUpdate,
    ChordUpdateType,
    DataModel,
    DataValue,
    DictionaryEntry,
    FetchAns,
    FetchKindResponse,
    ForwardingHeader,
    GenericCertificate,
    Message,
    MessageBody,
    MessageContents,
    NodeDestination,
    PingReq,
    ResourceDestination,
    SecurityBlock,
    StoredData,
    StoreKindData,
    StoreReq,
    UpdateReq,
)
from reload.security import Signer, Verifier

OVERLAY = "bench-codec.p2pcdn"
OVERLAY_ID = 0x5EED1234
NODE_A = bytes.fromhex("0a" * 16)
NODE_B = bytes.fromhex("0b" * 16)
RESOURCE = bytes.fromhex("11" * 16)
KIND = 0xF0000011  # a DICTIONARY Kind, as CONTENT-SEGMENT and the tracker's peer lists
MODELS = {**DEFAULT_DATA_MODELS, KIND: DataModel.DICTIONARY}
STORAGE_TIME = 1_790_000_000_000

Op = Callable[[], object]


def _timed(fn: Op, seconds: float, repeats: int = 5) -> float:
    """Median µs per call over ``repeats`` timings of about ``seconds`` each."""
    n = 1
    while True:  # calibrate the loop count to the wanted duration
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds / 4:
            break
        n *= 4
    n = max(1, int(n * seconds / max(elapsed, 1e-9)))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(samples)


def _credentials() -> tuple[Signer, x509.Certificate]:
    """A node credential (ECDSA P-256) and the overlay CA that issued it (§11.3)."""
    ca_key, ca_cert = security.create_overlay_ca(OVERLAY)
    key = security.generate_private_key("ecdsa-p256")
    cert = security.issue_node_certificate(
        ca_key, ca_cert, key.public_key(), [NODE_A], "bench", OVERLAY
    )
    return Signer(key, cert, NODE_A), ca_cert


def _stored(signer: Signer, key: bytes, value: bytes) -> StoredData:
    """A DICTIONARY StoredData signed as §7.1 says."""
    entry = DictionaryEntry(key, DataValue(True, value))
    prefix = security.stored_data_signature_prefix(
        RESOURCE, KIND, STORAGE_TIME, wire.encode_stored_data_value(entry)
    )
    return StoredData(STORAGE_TIME, 3600, entry, signer.sign(prefix))


def _message(signer: Signer, body: MessageBody) -> Message:
    header = ForwardingHeader(
        overlay=OVERLAY_ID,
        configuration_sequence=1,
        ttl=99,
        transaction_id=0x0123456789ABCDEF,
        via_list=(NodeDestination(NODE_A),),
        destination_list=(ResourceDestination(RESOURCE),),
    )
    contents = MessageContents(body)
    prefix = security.message_signature_prefix(
        OVERLAY_ID, header.transaction_id, wire.encode_contents(contents)
    )
    block = SecurityBlock((GenericCertificate(0, signer.der),), signer.sign(prefix))
    return Message(header, contents, block)


def _samples(signer: Signer) -> dict[str, Message]:
    ids = [bytes([i]) * 16 for i in range(26)]
    update = wire.encode_chord_update(
        ChordUpdate(3600, ChordUpdateType.FULL, tuple(ids[:5]), tuple(ids[5:10]), tuple(ids[10:]))
    )
    segment = _stored(signer, b"channel/42", bytes(range(256)) * 256)
    peers = tuple(_stored(signer, b"peer-%03d" % i, bytes(150)) for i in range(100))
    return {
        "Ping": _message(signer, PingReq()),
        "StoreReq 64 KiB": _message(
            signer, StoreReq(RESOURCE, 0, (StoreKindData(KIND, 0, (segment,)),))
        ),
        "FetchAns 100 dict entries": _message(
            signer, FetchAns((FetchKindResponse(KIND, 1, peers),))
        ),
        "Update (Chord full)": _message(signer, UpdateReq(update)),
    }


def _codec_rows(
    samples: dict[str, Message], seconds: float
) -> tuple[list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for name, msg in samples.items():
        data = wire.encode_message_construct(msg)
        # measure only correct work: both codecs give these bytes and this message back
        assert fastwire.encode_message(msg) == data
        assert fastwire.decode_message(data, 16, MODELS) == msg
        assert wire.decode_message_construct(data, 16, MODELS) == msg
        figures: dict[str, float] = {}
        for codec, encode, decode in (
            ("fastwire", fastwire.encode_message, fastwire.decode_message),
            ("Construct", wire.encode_message_construct, wire.decode_message_construct),
        ):
            enc = _timed(functools.partial(encode, msg), seconds)
            dec = _timed(functools.partial(decode, data, 16, MODELS), seconds)
            figures[codec] = enc + dec
            rows.append(row(f"{name} ({len(data)} B) encode, {codec}", enc, "µs/message"))
            rows.append(row(f"{name} ({len(data)} B) decode, {codec}", dec, "µs/message"))
            rows.append(row(f"{name} ({len(data)} B) encode+decode, {codec}", enc + dec, "µs"))
        speedup = figures["Construct"] / figures["fastwire"]
        rows.append(row(f"{name} encode+decode speed-up, fastwire vs Construct", speedup, "x"))
        notes.append(
            f"{name}: encode+decode {figures['fastwire']:.1f} µs with fastwire, "
            f"{figures['Construct']:.1f} µs with Construct ({speedup:.0f}x)"
        )
    return rows, notes


def _signature_rows(
    signer: Signer, ca_cert: x509.Certificate, samples: dict[str, Message], seconds: float
) -> list[dict[str, Any]]:
    rows = []
    msg = samples["Ping"]
    prefix = security.message_signature_prefix(
        OVERLAY_ID, msg.header.transaction_id, wire.encode_contents(msg.contents)
    )
    signature = signer.sign(prefix)
    bucket = [signer.der]
    cold = Verifier([ca_cert], OVERLAY, verified_cache_size=0)
    warm = Verifier([ca_cert], OVERLAY)
    warm.verify(prefix, signature, bucket)
    rows.append(
        row("sign a Ping (ECDSA P-256)", _timed(lambda: signer.sign(prefix), seconds), "µs")
    )
    rows.append(
        row(
            "verify a Ping, first time (ECDSA P-256, chain check)",
            _timed(lambda: cold.verify(prefix, signature, bucket), seconds),
            "µs",
        )
    )
    rows.append(
        row(
            "verify a Ping again (remembered signature, chain check)",
            _timed(lambda: warm.verify(prefix, signature, bucket), seconds),
            "µs",
        )
    )
    return rows


def run(quick: bool = False) -> dict[str, Any]:
    """Measure; return ``{"name": "reload_codec", "rows": [...], "notes": [...]}``."""
    seconds = 0.05 if quick else 0.3
    signer, ca_cert = _credentials()
    samples = _samples(signer)
    rows, notes = _codec_rows(samples, seconds)
    rows += _signature_rows(signer, ca_cert, samples, seconds)
    return {"name": "reload_codec", "rows": rows, "notes": notes}
