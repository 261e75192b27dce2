"""Benchmark of the RELOAD base protocol (RFC 6940): message security, link handshakes, Ping.

What is measured, each figure the median of three timed rounds:

* messages/s to **sign + encode** and to **decode + verify** a Store request carrying 1 KiB of
  data (one SINGLE StoredData, §7.4.1.1) and a Fetch answer returning it (§7.4.2.2), once with
  RSA-2048 (RSASSA-PKCS1-v1_5 with SHA-256, the mandatory algorithm, §6.3.4) and once with
  ECDSA P-256 node certificates. Sign + encode of a Store signs the StoredData (§7.1) and the
  message (§6.3.4) and encodes it with :mod:`reload.wire`; of a Fetch answer, the stored value
  is already signed, so it signs the message only. Decode + verify is what the receiving node
  does: :func:`reload.transactions.check_request` (size, header, version, TTL, configuration
  sequence, decode, message signature, and for the Store the StoredData signature and the
  NODE-MATCH access check), plus, for the Fetch answer, the StoredData signature the
  requester MUST verify (§7.4.2.2). The verifier's certificate cache is warm, as in a running
  node.
* DTLS (DTLS-UDP-SR-NO-ICE, DTLS 1.2 with cookie exchange) and TLS (TLS-TCP-FH-NO-ICE,
  TLS 1.3) **handshakes/s** between two :mod:`reload.links` asyncio endpoints on 127.0.0.1,
  one handshake after the other, mutual certificate authentication and the Node-ID check
  included (ECDSA P-256 certificates).
* **Ping round trips/s** over one DTLS link on 127.0.0.1: the client signs and encodes a
  PingReq, the server checks it (:func:`check_request`), signs and sends a PingAns, the client
  checks that, then sends the next Ping (one outstanding at a time). Simple Reliability
  (§6.6.3.1) waits 10 ms after each ack before the next data frame, which bounds this figure.
"""

from __future__ import annotations

import asyncio
import functools
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bench.common import row
from reload import links, security, wire
from reload.access import chord_resource_id
from reload.links import LinkConfig, LinkConnection
from reload.messages import (
    DataModel,
    DataValue,
    FetchAns,
    FetchKindResponse,
    ForwardingHeader,
    GenericCertificate,
    Message,
    MessageBody,
    MessageContents,
    NodeDestination,
    PingAns,
    PingReq,
    SecurityBlock,
    StoredData,
    StoreKindData,
    StoreReq,
)
from reload.security import Signer, Verifier
from reload.transactions import CheckParams, ErrorReply, KindRules, check_request, overlay_hash

OVERLAY = "bench.p2pcdn"
NODE_A = bytes.fromhex("0a" * 16)
NODE_B = bytes.fromhex("0b" * 16)
KIND = 0xF0000001  # SINGLE, NODE-MATCH
RESOURCE = chord_resource_id(NODE_A)  # NODE-MATCH lets NODE_A write here (§7.3.2)
ROUNDS = 3
PARAMS = CheckParams(
    overlay=overlay_hash(OVERLAY),
    configuration_sequence=1,
    kinds={KIND: KindRules(DataModel.SINGLE, "NODE-MATCH")},
)


@dataclass(frozen=True)
class Credentials:
    ca: Any
    by_key: dict[str, Signer]  # NODE_A's credential per key type
    server: Signer  # NODE_B, ECDSA


def _credentials() -> Credentials:
    ca_key, ca_cert = security.create_overlay_ca(OVERLAY)

    def node(node_id: bytes, key_type: str) -> Signer:
        key = security.generate_private_key(key_type)
        cert = security.issue_node_certificate(
            ca_key, ca_cert, key.public_key(), [node_id], "bench", OVERLAY
        )
        return Signer(key, cert, node_id)

    return Credentials(
        ca_cert,
        {kt: node(NODE_A, kt) for kt in ("rsa-2048", "ecdsa-p256")},
        node(NODE_B, "ecdsa-p256"),
    )


def _rate(fn: Callable[[], object], seconds: float) -> float:
    """Median over ROUNDS of calls per second, each round running ``fn`` for ``seconds``."""
    rates = []
    for _ in range(ROUNDS):
        n = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            fn()
            n += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        rates.append(n / (now - start))
    return statistics.median(rates)


# ------------------------------------------------------------------- messages (§6.3.4, §7.1)


def _header(transaction_id: int = 1) -> ForwardingHeader:
    return ForwardingHeader(
        overlay=PARAMS.overlay,
        configuration_sequence=PARAMS.configuration_sequence,
        ttl=99,
        transaction_id=transaction_id,
        via_list=(NodeDestination(NODE_A),),
        destination_list=(NodeDestination(NODE_B),),
    )


def sign_message(signer: Signer, body: MessageBody, transaction_id: int = 1) -> bytes:
    """A message signed by ``signer`` (§6.3.4), its certificate in the bucket, on the wire."""
    header = _header(transaction_id)
    contents = MessageContents(body)
    prefix = security.message_signature_prefix(
        header.overlay, header.transaction_id, wire.encode_contents(contents)
    )
    block = SecurityBlock((GenericCertificate(0, signer.der),), signer.sign(prefix))
    return wire.encode_message(Message(header, contents, block))


def _value_prefix(value: DataValue, storage_time: int) -> bytes:
    return security.stored_data_signature_prefix(
        RESOURCE, KIND, storage_time, wire.encode_stored_data_value(value)
    )


def sign_stored(signer: Signer, value: DataValue, storage_time: int) -> StoredData:
    """A StoredData signed as §7.1 says."""
    return StoredData(storage_time, 3600, value, signer.sign(_value_prefix(value, storage_time)))


def sign_store(signer: Signer, payload: bytes) -> bytes:
    """Sign + encode a Store request: the StoredData (§7.1), then the message (§6.3.4)."""
    data = sign_stored(signer, DataValue(True, payload), 1_790_000_000_000)
    return sign_message(signer, StoreReq(RESOURCE, 0, (StoreKindData(KIND, 0, (data,)),)))


def check(raw: bytes, verifier: Verifier) -> Message:
    result = check_request(raw, PARAMS, verifier)
    if isinstance(result, ErrorReply):
        raise AssertionError(f"benchmark message refused: {result.reason}")
    return result


def check_fetch_answer(raw: bytes, verifier: Verifier) -> Message:
    """What a requester does with a FetchAns: check the message, verify each value (§7.4.2.2)."""
    msg = check(raw, verifier)
    bucket = [c.certificate for c in msg.security_block.certificates]
    body = msg.contents.body
    assert isinstance(body, FetchAns)
    for response in body.kind_responses:
        for data in response.values:
            assert isinstance(data.value, DataValue)
            verifier.verify(_value_prefix(data.value, data.storage_time), data.signature, bucket)
    return msg


def _message_rows(creds: Credentials, seconds: float) -> list[dict[str, Any]]:
    rows = []
    payload = bytes(range(256)) * 4  # 1 KiB
    verifier = Verifier([creds.ca], OVERLAY)
    for key_type, signer in creds.by_key.items():
        label = "RSA-2048" if key_type == "rsa-2048" else "ECDSA P-256"
        stored = sign_stored(signer, DataValue(True, payload), 1_790_000_000_000)
        answer = FetchAns((FetchKindResponse(KIND, 1, (stored,)),))
        store_raw = sign_store(signer, payload)
        answer_raw = sign_message(signer, answer)
        check(store_raw, verifier)  # measure only correct work (and warm the cache)
        check_fetch_answer(answer_raw, verifier)
        cases: list[tuple[str, Callable[[], object]]] = [
            (f"Store 1 KiB sign+encode, {label}", functools.partial(sign_store, signer, payload)),
            (f"Store 1 KiB decode+verify, {label}", functools.partial(check, store_raw, verifier)),
            (
                f"FetchAns 1 KiB sign+encode, {label}",
                functools.partial(sign_message, signer, answer),
            ),
            (
                f"FetchAns 1 KiB decode+verify, {label}",
                functools.partial(check_fetch_answer, answer_raw, verifier),
            ),
        ]
        for metric, fn in cases:
            rows.append(row(metric, _rate(fn, seconds), "messages/s"))
    # The codec alone, to split the figures above into Construct work and cryptography.
    store = wire.decode_message(store_raw, data_models=PARAMS.data_models)
    codec: list[tuple[str, Callable[[], object]]] = [
        ("Store 1 KiB encode only (reload.wire)", functools.partial(wire.encode_message, store)),
        (
            "Store 1 KiB decode only (reload.wire)",
            functools.partial(wire.decode_message, store_raw, data_models=PARAMS.data_models),
        ),
    ]
    for metric, fn in codec:
        rows.append(row(metric, _rate(fn, seconds), "messages/s"))
    return rows


# --------------------------------------------------------------------- links (§6.6)


def _link_configs(creds: Credentials) -> tuple[LinkConfig, LinkConfig]:
    client = creds.by_key["ecdsa-p256"]
    return (
        LinkConfig(OVERLAY, client.cert, client.key, (creds.ca,)),
        LinkConfig(OVERLAY, creds.server.cert, creds.server.key, (creds.ca,)),
    )


async def _handshakes(
    connect: Callable[[], Awaitable[LinkConnection]], seconds: float
) -> list[float]:
    rates = []
    for _ in range(ROUNDS):
        n = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            conn = await connect()
            assert conn.peer_node_id == NODE_B
            conn.close()
            n += 1
        rates.append(n / (time.perf_counter() - start))
    return rates


def _close_all(conns: list[LinkConnection]) -> None:
    """Close the server's side of every link; one still handshaking fails its ``connected``
    future, which is read here so that asyncio does not report it as never retrieved."""
    for conn in conns:
        conn.close()
        if conn.connected.done() and not conn.connected.cancelled():
            conn.connected.exception()


async def _dtls_handshakes(creds: Credentials, seconds: float) -> float:
    client, server = _link_configs(creds)
    accepted: list[LinkConnection] = []
    endpoint = await links.serve_dtls(server, accepted.append)
    try:
        rates = await _handshakes(
            lambda: links.connect_dtls(client, endpoint.address, NODE_B), seconds
        )
    finally:
        _close_all(accepted)
        endpoint.close()
    return statistics.median(rates)


async def _tls_handshakes(creds: Credentials, seconds: float) -> float:
    client, server = _link_configs(creds)
    accepted: list[LinkConnection] = []
    listener = await links.serve_tls(server, accepted.append)
    address = listener.sockets[0].getsockname()[:2]
    try:
        rates = await _handshakes(lambda: links.connect_tls(client, address, NODE_B), seconds)
    finally:
        _close_all(accepted)
        listener.close()
    return statistics.median(rates)


async def _ping_round_trips(creds: Credentials, seconds: float) -> float:
    """Signed Ping request/answer pairs over one DTLS link on 127.0.0.1 (§6.5.3)."""
    client_cfg, server_cfg = _link_configs(creds)
    client_signer, server_signer = creds.by_key["ecdsa-p256"], creds.server
    server_verifier = Verifier([creds.ca], OVERLAY)
    client_verifier = Verifier([creds.ca], OVERLAY)
    tasks: list[asyncio.Task[None]] = []

    async def answer(conn: LinkConnection) -> None:
        try:
            while True:
                request = check(await conn.receive(), server_verifier)
                response_id = request.header.transaction_id
                conn.send(sign_message(server_signer, PingAns(response_id, 0), response_id))
        except links.LinkClosedError:
            return

    endpoint = await links.serve_dtls(
        server_cfg, lambda conn: tasks.append(asyncio.create_task(answer(conn)))
    )
    conn = await links.connect_dtls(client_cfg, endpoint.address, NODE_B)
    try:
        rates = []
        transaction_id = 0
        for _ in range(ROUNDS):
            n = 0
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                transaction_id += 1
                conn.send(sign_message(client_signer, PingReq(), transaction_id))
                reply = check(await conn.receive(), client_verifier)
                body = reply.contents.body
                assert isinstance(body, PingAns) and body.response_id == transaction_id
                n += 1
            rates.append(n / (time.perf_counter() - start))
    finally:
        conn.close()
        endpoint.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return statistics.median(rates)


def run(quick: bool = False) -> dict[str, Any]:
    """Measure; return ``{"name": "reload", "rows": [...], "notes": [...]}``."""
    message_seconds = 0.25 if quick else 1.0
    link_seconds = 0.5 if quick else 2.0
    creds = _credentials()
    rows = _message_rows(creds, message_seconds)
    dtls = asyncio.run(_dtls_handshakes(creds, link_seconds))
    tls = asyncio.run(_tls_handshakes(creds, link_seconds))
    ping = asyncio.run(_ping_round_trips(creds, link_seconds))
    rows += [
        row("DTLS handshakes (asyncio, 127.0.0.1, ECDSA P-256)", dtls, "handshakes/s"),
        row("TLS handshakes (asyncio, 127.0.0.1, ECDSA P-256)", tls, "handshakes/s"),
        row("Ping round trips over DTLS (signed, checked)", ping, "round trips/s"),
    ]
    notes = [
        f"each figure: median of {ROUNDS} rounds of {message_seconds:g} s (messages) or "
        f"{link_seconds:g} s (links); one process, one event loop",
        "decode+verify = reload.transactions.check_request (all checks of the destination); "
        "FetchAns also verifies the StoredData signature (§7.4.2.2)",
        "handshakes: reload.links asyncio adapters on 127.0.0.1, client and server in the same "
        "process, sequential, mutual authentication and Node-ID check",
        "Ping: one outstanding at a time; Simple Reliability's 10 ms pause after an ack "
        "(§6.6.3.1) caps it below 100 round trips/s",
    ]
    return {"name": "reload", "rows": rows, "notes": notes}
