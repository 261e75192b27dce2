"""Benchmark of the PPSPP codecs: datagrams per second to parse and to build.

Compares, within one run, the hand ``struct`` fast path (:mod:`ppsp.peer.fastwire`), the
normative Construct definition interpreted, and the same compiled by Construct
(:mod:`ppsp.peer.wire`), on a DATA datagram with a 1 KiB chunk and on a control datagram
(REQUEST + ACK + HAVE). Each figure is the median of at least five timed repetitions.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from ppsp.peer import fastwire, wire
from ppsp.peer.messages import Ack, Data, Datagram, Have, Message, Request, WireContext

CTX = WireContext()  # RFC 7574 defaults: 32-bit chunk ranges, SHA-256
CHANNEL = 0x9E7E243A


def _samples() -> dict[str, Datagram]:
    payload = bytes(range(256)) * 4
    control: list[Message] = [Request(32, 63), Ack(31, 31, 250), Have(0, 31)]
    return {
        "DATA 1 KiB": Datagram(CHANNEL, [Data(31, 31, 1_795_294_708_884_000, payload)]),
        "REQUEST+ACK+HAVE": Datagram(CHANNEL, control),
    }


def _rate(fn: Op, seconds: float, repeats: int) -> float:
    """Median calls per second over ``repeats`` timings of about ``seconds`` each."""
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
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


Op = Callable[[], object]


def _codecs(dgram: Datagram, data: bytes) -> dict[str, tuple[Op, Op]]:
    """(parse, build) per codec, bound to one sample datagram."""

    def fast_parse() -> object:
        return fastwire.decode_datagram(data, CTX)

    def fast_build() -> object:
        return fastwire.encode_datagram(dgram.channel, dgram.messages, CTX)

    def interp_parse() -> object:
        return wire.parse_datagram(data, CTX)

    def interp_build() -> object:
        return wire.build_datagram(dgram, CTX)

    def comp_parse() -> object:
        return wire.parse_datagram(data, CTX, compiled=True)

    def comp_build() -> object:
        return wire.build_datagram(dgram, CTX, compiled=True)

    codecs: dict[str, tuple[Op, Op]] = {
        "fastwire (struct)": (fast_parse, fast_build),
        "Construct interpreted": (interp_parse, interp_build),
        "Construct compiled": (comp_parse, comp_build),
    }
    scapy = _scapy_codec(dgram, data)
    if scapy is not None:
        codecs["scapy"] = scapy
    return codecs


def _scapy_codec(dgram: Datagram, data: bytes) -> tuple[Op, Op] | None:
    """scapy's (parse, build) through our interop layer, if scapy is installed; parse is
    dissection to fields, build is assembly from a layer tree, as scapy users do."""
    try:
        from interop.scapy_ppspp import PPSPP
    except ImportError:
        return None
    packet = PPSPP(data)

    def parse() -> object:
        return PPSPP(data).messages

    def build() -> object:
        return bytes(packet.copy())

    return parse, build


def run(quick: bool = False) -> dict[str, Any]:
    """Measure; return ``{"name": "codec", "rows": [...], "notes": [...]}``."""
    seconds = 0.03 if quick else 0.2
    repeats = 5
    rows: list[dict[str, Any]] = []
    results: dict[tuple[str, str, str], float] = {}
    for kind, dgram in _samples().items():
        data = wire.build_datagram(dgram, CTX)
        codecs = _codecs(dgram, data)
        for codec, (parse, build) in codecs.items():
            if codec == "scapy":
                assert build() == data  # measure only correct work
            else:
                assert parse() == dgram and build() == data
            for op, fn in (("parse", parse), ("build", build)):
                rate = _rate(fn, seconds, repeats)
                results[(codec, op, kind)] = rate
                rows.append(
                    {"metric": f"{op} {kind}, {codec}", "value": rate, "unit": "datagrams/s"}
                )
    # the specialised hot builder the data path uses
    payload = bytes(1024)
    rate = _rate(
        lambda: fastwire.encode_data(CHANNEL, 31, 31, 1_795_294_708_884_000, payload, CTX),
        seconds,
        repeats,
    )
    rows.append(
        {"metric": "build DATA 1 KiB, fastwire.encode_data", "value": rate, "unit": "datagrams/s"}
    )

    notes = []
    for kind in _samples():
        for op in ("parse", "build"):
            fast = results[("fastwire (struct)", op, kind)]
            interp = results[("Construct interpreted", op, kind)]
            comp = results[("Construct compiled", op, kind)]
            line = (
                f"{op} {kind}: fastwire {1e6 / fast:.1f} µs, Construct compiled "
                f"{1e6 / comp:.1f} µs ({fast / comp:.0f}x slower), interpreted "
                f"{1e6 / interp:.1f} µs ({fast / interp:.0f}x slower)"
            )
            scapy = results.get(("scapy", op, kind))
            if scapy:
                line += f", scapy {1e6 / scapy:.1f} µs ({fast / scapy:.0f}x slower)"
            notes.append(line)
    notes += [
        "Construct compiled parsing runs behind a length check (DESIGN §3 trap); HANDSHAKE "
        "is always parsed interpreted.",
        "scapy: interop/scapy_ppspp.py (every message and option); parse = dissection into "
        "fields, build = bytes() of a copied layer tree.",
        f"medians of {repeats} repetitions of ~{seconds * 1000:.0f} ms each; context "
        "32-bit chunk ranges, SHA-256.",
    ]
    return {"name": "codec", "rows": rows, "notes": notes}


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2, ensure_ascii=False))
