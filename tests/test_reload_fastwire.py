"""The struct fast path (reload.fastwire) is byte-equal to the Construct definition (reload.wire).

Both directions, every message body (those fastwire leaves to Construct included, inside its
envelope), both NodeId lengths, each data model and known/unknown Kinds; random, mutated and
truncated bytes: both codecs return the same model or raise the same class —
:class:`UnknownKindError` naming the same Kind, else :class:`ReloadDecodeError` — and on
encode the same bytes or :class:`ReloadEncodeError` (DESIGN §3, RFC 6940 §6.3, §7).
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from reload import fastwire, fragments, security, wire
from reload.messages import (
    DEFAULT_DATA_MODELS,
    FORWARDING_HEADER_SIZE,
    UNFRAGMENTED,
    ArrayEntry,
    ArrayRange,
    CompressedDestination,
    DataModel,
    DataValue,
    DictionaryEntry,
    FetchAns,
    FetchKindResponse,
    FetchReq,
    FindReq,
    ForwardingHeader,
    ForwardingOption,
    GenericCertificate,
    JoinReq,
    Message,
    MessageBody,
    MessageContents,
    MessageExtension,
    NodeDestination,
    OpaqueDestination,
    PingReq,
    ReloadDecodeError,
    ReloadEncodeError,
    ResourceDestination,
    SecurityBlock,
    Signature,
    SignatureAndHashAlgorithm,
    SignerIdentity,
    SignerIdentityType,
    StoreAns,
    StoredData,
    StoredDataSpecifier,
    StoredDataValue,
    StoreKindData,
    StoreKindResponse,
    StoreReq,
    UnknownKindError,
)
from tests.test_reload_wire import (
    BODIES,
    MODELS,
    headers,
    messages,
    security_blocks,
    signatures,
    values_of,
)

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Outcome = tuple[str, Any]


def outcome(fn: Callable[..., Any], *args: Any) -> Outcome:
    """What a codec call gives: its value or the error class (any other exception escapes)."""
    try:
        return ("ok", fn(*args))
    except UnknownKindError as exc:
        return ("unknown-kind", exc.kinds)
    except ReloadDecodeError:
        return ("decode-error", None)
    except ReloadEncodeError:
        return ("encode-error", None)


def same(fast: Callable[..., Any], construct: Callable[..., Any], *args: Any) -> Outcome:
    result = outcome(fast, *args)
    assert result == outcome(construct, *args)
    return result


# --- encode: same bytes -------------------------------------------------------------------


@PROPERTY
@given(messages)
def test_message_encoding_is_byte_equal(msg: Message) -> None:
    kind, data = same(fastwire.encode_message, wire.encode_message_construct, msg)
    assert kind == "ok"
    assert same(fastwire.decode_message, wire.decode_message_construct, data, 16, MODELS) == (
        "ok",
        msg,
    )


@pytest.mark.parametrize("cls", sorted(BODIES, key=repr))
@FEW
@given(data=st.data())
def test_every_body_is_byte_equal(cls: type, data: st.DataObject) -> None:
    body: MessageBody = data.draw(BODIES[cls])
    contents = MessageContents(body)
    kind, encoded = same(fastwire.encode_contents, wire.encode_contents_construct, contents)
    assert kind == "ok"
    assert same(fastwire.decode_contents, wire.decode_contents_construct, encoded, 16, MODELS) == (
        "ok",
        contents,
    )


@FEW
@given(headers, st.integers(0, 100_000))
def test_forwarding_header_is_byte_equal(header: ForwardingHeader, payload: int) -> None:
    kind, encoded = same(
        fastwire.encode_forwarding_header, wire.encode_forwarding_header_construct, header, payload
    )
    assert kind == "ok"
    padded = encoded + bytes(payload)
    result = same(
        fastwire.decode_forwarding_header, wire.decode_forwarding_header_construct, padded
    )
    assert result == ("ok", (header, len(encoded)))


@FEW
@given(security_blocks)
def test_security_block_and_signature_are_byte_equal(block: SecurityBlock) -> None:
    kind, encoded = same(
        fastwire.encode_security_block, wire.encode_security_block_construct, block
    )
    assert kind == "ok"
    assert same(fastwire.decode_security_block, wire.decode_security_block_construct, encoded)[
        1
    ] == (block)
    same(fastwire.encode_signature, wire.encode_signature_construct, block.signature)
    identity = block.signature.identity
    same(fastwire.encode_signer_identity, wire.encode_signer_identity_construct, identity)


@FEW
@given(st.sampled_from(list(DataModel)), st.data())
def test_stored_data_is_byte_equal(model: DataModel, data: st.DataObject) -> None:
    value = data.draw(values_of(model))
    stored = StoredData(data.draw(st.integers(0, 2**64 - 1)), 7, value, data.draw(signatures))
    same(fastwire.encode_stored_data_value, wire.encode_stored_data_value_construct, value)
    kind, encoded = same(fastwire.encode_stored_data, wire.encode_stored_data_construct, stored)
    assert kind == "ok"
    for m in DataModel:  # the right model decodes it; another one may or may not
        result = same(fastwire.decode_stored_data, wire.decode_stored_data_construct, encoded, m)
        if m is model:
            assert result == ("ok", stored)


@FEW
@given(messages)
def test_node_id_length_20(msg: Message) -> None:
    # 16-byte NodeIds in a 20-byte overlay: both refuse them, or both encode the same
    same(fastwire.encode_message, wire.encode_message_construct, msg, 20)
    long_id = NodeDestination(bytes(range(20)))
    msg20 = Message(
        ForwardingHeader(1, 2, 3, 4, via_list=(long_id,), destination_list=(long_id,)),
        MessageContents(JoinReq(bytes(20), b"x")),
        msg.security_block,
    )
    kind, encoded = same(fastwire.encode_message, wire.encode_message_construct, msg20, 20)
    assert kind == "ok"
    assert same(fastwire.decode_message, wire.decode_message_construct, encoded, 20)[1] == msg20
    same(fastwire.decode_message, wire.decode_message_construct, encoded, 16)


# --- encode: the same refusals ------------------------------------------------------------

#: Integers just inside and just outside the fields' ranges, byte strings around the limits.
wide_u8 = st.sampled_from([-1, 0, 255, 256])
wide_u16 = st.sampled_from([-1, 0, 0xFFFF, 0x10000])
wide_u32 = st.sampled_from([-1, 0, 2**32 - 1, 2**32])
wide_u64 = st.sampled_from([-1, 0, 2**64 - 1, 2**64])
wide_i32 = st.sampled_from([-(2**31) - 1, -(2**31), 2**31 - 1, 2**31])
edge_bytes = st.sampled_from([0, 1, 15, 16, 17, 20, 253, 254, 255, 256]).map(bytes)
wide_bool = st.sampled_from([False, True, 2])

wild_destinations = st.one_of(
    st.builds(NodeDestination, edge_bytes),
    st.builds(ResourceDestination, edge_bytes),
    st.builds(OpaqueDestination, edge_bytes),
    st.builds(CompressedDestination, st.sampled_from([0, 0x7FFF, 0x8000, 0xFFFF, 0x10000])),
)
wild_headers = st.builds(
    ForwardingHeader,
    overlay=wide_u32,
    configuration_sequence=wide_u16,
    ttl=wide_u8,
    transaction_id=wide_u64,
    max_response_length=wide_u32,
    via_list=st.lists(wild_destinations, max_size=2).map(tuple),
    destination_list=st.lists(wild_destinations, max_size=2).map(tuple),
    options=st.lists(st.builds(ForwardingOption, wide_u8, wide_u8, edge_bytes), max_size=2).map(
        tuple
    ),
    fragment=wide_u32,
    version=wide_u8,
)
wild_identities = st.builds(SignerIdentity, st.sampled_from([0, 1, 2, 3, 4]), wide_u8, edge_bytes)
wild_signatures = st.builds(
    Signature, st.builds(SignatureAndHashAlgorithm, wide_u8, wide_u8), wild_identities, edge_bytes
)
wild_data_values = st.builds(DataValue, wide_bool, edge_bytes)
wild_values = st.one_of(
    wild_data_values,
    st.builds(ArrayEntry, wide_u32, wild_data_values),
    st.builds(DictionaryEntry, edge_bytes, wild_data_values),
)
wild_stored = st.builds(StoredData, wide_u64, wide_u32, wild_values, wild_signatures)
wild_kind_data = st.builds(
    StoreKindData, st.sampled_from([1, 2, 3, 2**32]), wide_u64, st.lists(wild_stored, max_size=2)
).map(lambda k: StoreKindData(k.kind, k.generation_counter, tuple(k.values)))
wild_specifiers = st.builds(
    StoredDataSpecifier,
    wide_u32,
    wide_u64,
    st.none() | st.lists(st.builds(ArrayRange, wide_i32, wide_i32), max_size=2).map(tuple),
    st.none() | st.lists(edge_bytes, max_size=2).map(tuple),
)
wild_bodies: st.SearchStrategy[MessageBody] = st.one_of(
    st.builds(StoreReq, edge_bytes, wide_u8, st.lists(wild_kind_data, max_size=2).map(tuple)),
    st.builds(
        StoreAns,
        st.lists(
            st.builds(
                StoreKindResponse, wide_u32, wide_u64, st.lists(edge_bytes, max_size=2).map(tuple)
            ),
            max_size=2,
        ).map(tuple),
    ),
    st.builds(FetchReq, edge_bytes, st.lists(wild_specifiers, max_size=2).map(tuple)),
    st.builds(
        FetchAns,
        st.lists(
            st.builds(
                FetchKindResponse, wide_u32, wide_u64, st.lists(wild_stored, max_size=2).map(tuple)
            ),
            max_size=2,
        ).map(tuple),
    ),
    st.builds(FindReq, edge_bytes, st.lists(wide_u32, max_size=70).map(tuple)),
    st.builds(JoinReq, edge_bytes, edge_bytes),
    st.builds(PingReq, st.sampled_from([0, 0xFFFF, 0x10000]).map(bytes)),
    *BODIES.values(),
)
wild_messages = st.builds(
    Message,
    wild_headers,
    st.builds(
        MessageContents,
        wild_bodies,
        st.lists(st.builds(MessageExtension, wide_u16, wide_bool, edge_bytes), max_size=2).map(
            tuple
        ),
    ),
    st.builds(
        SecurityBlock,
        st.lists(st.builds(GenericCertificate, wide_u8, edge_bytes), max_size=2).map(tuple),
        wild_signatures,
    ),
)


@PROPERTY
@given(wild_messages)
def test_out_of_range_values_are_refused_alike(msg: Message) -> None:
    kind, encoded = same(fastwire.encode_message, wire.encode_message_construct, msg)
    same(fastwire.encode_contents, wire.encode_contents_construct, msg.contents)
    same(fastwire.encode_security_block, wire.encode_security_block_construct, msg.security_block)
    same(fastwire.encode_forwarding_header, wire.encode_forwarding_header_construct, msg.header, 9)
    if kind == "ok":
        same(fastwire.decode_message, wire.decode_message_construct, encoded, 16, MODELS)


@FEW
@given(wild_stored)
def test_out_of_range_stored_data_is_refused_alike(stored: StoredData) -> None:
    same(fastwire.encode_stored_data, wire.encode_stored_data_construct, stored)
    same(fastwire.encode_stored_data_value, wire.encode_stored_data_value_construct, stored.value)
    same(fastwire.encode_signature, wire.encode_signature_construct, stored.signature)


def test_long_signer_identity_hash_needs_a_two_byte_length() -> None:
    # 255-byte hash: the SignerIdentity length (uint16) is 257
    identity = SignerIdentity(1, 4, bytes(255))
    assert fastwire.encode_signer_identity(identity) == wire.encode_signer_identity_construct(
        identity
    )
    assert fastwire.encode_signer_identity(identity)[:3] == b"\x01\x01\x01"


# --- decode: same model or same error class -------------------------------------------------


def decoders_agree(data: bytes, models: dict[int, DataModel]) -> None:
    same(fastwire.decode_message, wire.decode_message_construct, data, 16, models)
    same(fastwire.decode_forwarding_header, wire.decode_forwarding_header_construct, data)
    body = data[FORWARDING_HEADER_SIZE:]
    same(fastwire.decode_contents, wire.decode_contents_construct, body, 16, models)
    same(fastwire.decode_security_block, wire.decode_security_block_construct, body)
    for model in DataModel:
        same(fastwire.decode_stored_data, wire.decode_stored_data_construct, body, model)


def _patch_length(data: bytearray) -> bytes:
    if len(data) >= 20:
        data[16:20] = len(data).to_bytes(4, "big")
    return bytes(data)


#: Data model maps missing some Kinds, so that Kinds are unknown in different places.
partial_models = st.sets(st.sampled_from(sorted(MODELS))).map(
    lambda known: {k: MODELS[k] for k in known}
)


@PROPERTY
@given(messages, st.data())
def test_mutated_messages_decode_alike(msg: Message, data: st.DataObject) -> None:
    encoded = bytearray(wire.encode_message_construct(msg))
    kind = data.draw(st.sampled_from(["set", "flip", "truncate", "extend", "splice", "none"]))
    if kind == "set":
        # length fields and type codes near their limits: one byte set to a small value or
        # moved by one (e.g. a TLV length one off a NodeId, a StoredData shorter than 12)
        for _ in range(data.draw(st.integers(1, 2))):
            i = data.draw(st.integers(FORWARDING_HEADER_SIZE - 6, len(encoded) - 1))
            near = [(encoded[i] + 1) % 256, (encoded[i] - 1) % 256]
            encoded[i] = data.draw(st.sampled_from([0, 1, 2, 3, 4, 11, 12, 13, *near]))
    elif kind == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(FORWARDING_HEADER_SIZE - 18, len(encoded) - 1))
            encoded[i] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        del encoded[data.draw(st.integers(0, len(encoded) - 1)) :]
    elif kind == "extend":
        encoded += data.draw(st.binary(min_size=1, max_size=8))
    elif kind == "splice":
        i = data.draw(st.integers(0, len(encoded)))
        encoded[i:i] = data.draw(st.binary(min_size=1, max_size=4))
    mutated = _patch_length(encoded)
    decoders_agree(mutated, data.draw(st.sampled_from([MODELS, {}]) | partial_models))


@PROPERTY
@given(st.binary(max_size=200), st.binary(min_size=1, max_size=200))
def test_random_bytes_decode_alike(data: bytes, tail: bytes) -> None:
    decoders_agree(data, MODELS)
    # a valid fixed header in front, so that the parsers get past the length checks
    head = bytearray(wire.encode_forwarding_header_construct(ForwardingHeader(1, 1, 1, 1), 0))
    head[32:38] = tail[:6].ljust(6, b"\0")
    decoders_agree(_patch_length(head + tail), MODELS)


@FEW
@given(st.lists(st.sampled_from(sorted(MODELS)), min_size=1, max_size=3), partial_models)
def test_unknown_kinds_are_named_alike(kinds: list[int], models: dict[int, DataModel]) -> None:
    assume(any(k not in models for k in kinds))
    signature = Signature(SignatureAndHashAlgorithm(4, 3), SignerIdentity(3), b"")
    stored: dict[DataModel, StoredDataValue] = {
        DataModel.SINGLE: DataValue(True, b"v"),
        DataModel.ARRAY: ArrayEntry(1, DataValue(True, b"v")),
        DataModel.DICTIONARY: DictionaryEntry(b"k", DataValue(True, b"v")),
    }
    kind_data = tuple(
        StoreKindData(k, 0, (StoredData(1, 2, stored[MODELS[k]], signature),)) for k in kinds
    )
    specs = tuple(StoredDataSpecifier(k) for k in kinds if MODELS[k] is DataModel.SINGLE)
    block = SecurityBlock((), signature)
    header = ForwardingHeader(1, 1, 1, 1, destination_list=(NodeDestination(bytes(16)),))
    for body in (
        StoreReq(b"r", 0, kind_data),
        FetchAns(tuple(FetchKindResponse(k.kind, 0, k.values) for k in kind_data)),
        FetchReq(b"r", specs),
    ):
        encoded = wire.encode_message_construct(Message(header, MessageContents(body), block))
        decoders_agree(encoded, models)


def test_default_data_models_are_used_without_a_map() -> None:
    body = StoreReq(
        b"r",
        0,
        (
            StoreKindData(
                1,
                0,
                (
                    StoredData(
                        1,
                        2,
                        DictionaryEntry(b"k", DataValue(True, b"v")),
                        Signature(SignatureAndHashAlgorithm(4, 3), SignerIdentity(3), b""),
                    ),
                ),
            ),
        ),
    )
    contents = MessageContents(body)
    encoded = fastwire.encode_contents(contents)
    assert DEFAULT_DATA_MODELS[1] is DataModel.DICTIONARY
    assert fastwire.decode_contents(encoded) == contents == wire.decode_contents(encoded)


def test_node_id_length_is_checked_like_construct() -> None:
    header = ForwardingHeader(1, 1, 1, 1)
    for bad in (15, 21):
        with pytest.raises(ValueError):
            fastwire.encode_forwarding_header(header, 0, bad)
        with pytest.raises(ValueError):
            wire.encode_forwarding_header_construct(header, 0, bad)


def test_wire_module_delegates_to_the_fast_path() -> None:
    # the public reload.wire functions are the fast ones, with the same results
    msg = Message(
        ForwardingHeader(7, 1, 9, 99, destination_list=(ResourceDestination(b"r"),)),
        MessageContents(PingReq(b"pad")),
        SecurityBlock((), Signature(SignatureAndHashAlgorithm(4, 3), SignerIdentity(3), b"")),
    )
    encoded = wire.encode_message(msg)
    assert encoded == wire.encode_message_construct(msg) == fastwire.encode_message(msg)
    assert wire.decode_message(encoded) == msg


# --- every single-byte mutation of representative messages ----------------------------------

_SIG = Signature(SignatureAndHashAlgorithm(4, 3), SignerIdentity(1, 4, b"\x07" * 3), b"\x05\x06")
_STORED = {
    1: StoredData(5, 6, DictionaryEntry(b"ky", DataValue(True, b"val")), _SIG),
    2: StoredData(5, 6, DataValue(False, b"v"), _SIG),
    3: StoredData(5, 6, ArrayEntry(2, DataValue(True, b"")), _SIG),
}
_KIND_DATA = tuple(StoreKindData(k, 9, (v,)) for k, v in _STORED.items())
REPRESENTATIVE: dict[str, MessageBody] = {
    "store": StoreReq(b"res", 1, _KIND_DATA),
    "fetch-ans": FetchAns(tuple(FetchKindResponse(k.kind, 3, k.values) for k in _KIND_DATA)),
    "fetch-req": FetchReq(
        b"res",
        (
            StoredDataSpecifier(2, 1),
            StoredDataSpecifier(3, 1, indices=(ArrayRange(0, 4),)),
            StoredDataSpecifier(1, 1, keys=(b"a", b"")),
        ),
    ),
    "store-ans": StoreAns((StoreKindResponse(1, 2, (bytes(16), bytes(range(16)))),)),
    "find": FindReq(b"r", (1, 2)),
    "join": JoinReq(bytes(16), b"os"),
    "ping": PingReq(b"p"),
}


@pytest.mark.parametrize("name", sorted(REPRESENTATIVE))
def test_every_single_byte_mutation_decodes_alike(name: str) -> None:
    header = ForwardingHeader(
        1,
        2,
        3,
        4,
        via_list=(
            NodeDestination(bytes(range(16))),
            ResourceDestination(b"rr"),
            OpaqueDestination(b""),
            CompressedDestination(0x8001),
        ),
        destination_list=(NodeDestination(bytes(16)),),
        options=(ForwardingOption(1, 2, b"o"),),
    )
    contents = MessageContents(REPRESENTATIVE[name], (MessageExtension(1, True, b"e"),))
    block = SecurityBlock((GenericCertificate(0, b"cert"),), _SIG)
    encoded = wire.encode_message_construct(Message(header, contents, block))
    assert fastwire.encode_message(Message(header, contents, block)) == encoded
    start = 32  # the list lengths of the fixed part, then everything after it
    for i in range(start, len(encoded)):
        byte = encoded[i]
        for value in {0, 1, 2, 3, 4, 11, 12, 13, 16, 17, (byte + 1) % 256, (byte - 1) % 256}:
            if value == byte:
                continue
            mutated = bytearray(encoded)
            mutated[i] = value
            for models in (MODELS, {2: DataModel.SINGLE}):
                same(
                    fastwire.decode_message,
                    wire.decode_message_construct,
                    bytes(mutated),
                    16,
                    models,
                )


# --- signatures on the message path (reload.security caches) ---------------------------------

OVERLAY = "fastwire.test"


@pytest.fixture(scope="module")
def credentials() -> tuple[security.Signer, x509.Certificate]:
    ca_key, ca_cert = security.create_overlay_ca(OVERLAY)
    key = security.generate_private_key("ecdsa-p256")
    node = bytes(range(16))
    cert = security.issue_node_certificate(ca_key, ca_cert, key.public_key(), [node], "u", OVERLAY)
    return security.Signer(key, cert, node), ca_cert


@pytest.fixture
def crypto_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The inputs of the public-key verifications a Verifier really makes."""
    calls: list[bytes] = []
    real = security.Verifier._verify_value

    def counting(cert: x509.Certificate, to_verify: bytes, signature: Signature) -> None:
        calls.append(to_verify)
        real(cert, to_verify, signature)

    monkeypatch.setattr(security.Verifier, "_verify_value", staticmethod(counting))
    return calls


def test_a_verified_signature_is_not_verified_again(
    credentials: tuple[security.Signer, x509.Certificate], crypto_calls: list[bytes]
) -> None:
    signer, ca_cert = credentials
    verifier = security.Verifier([ca_cert], OVERLAY)
    data = security.message_signature_prefix(1, 2, b"contents")
    signature = signer.sign(data)
    for _ in range(3):
        assert verifier.verify(data, signature, [signer.der]).node_id == signer.node_id
    assert len(crypto_calls) == 1
    # other bytes under the same signature: checked, and refused (§6.3.4)
    with pytest.raises(security.SignatureError) as caught:
        verifier.verify(data + b"x", signature, [signer.der])
    assert caught.value.reason == "bad-signature"
    assert len(crypto_calls) == 2
    # so is a value altered inside the signature
    forged = Signature(signature.algorithm, signature.identity, signature.signature_value[::-1])
    with pytest.raises(security.SignatureError):
        verifier.verify(data, forged, [signer.der])


def test_a_remembered_signature_still_gets_the_validity_check(
    credentials: tuple[security.Signer, x509.Certificate],
) -> None:
    signer, ca_cert = credentials
    verifier = security.Verifier([ca_cert], OVERLAY)
    data = b"stored data input"
    signature = signer.sign(data)
    verifier.verify(data, signature, [signer.der])
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=20 * 365)
    with pytest.raises(security.SignatureError) as caught:
        verifier.verify(data, signature, [signer.der], now=later)
    assert caught.value.reason == "expired"
    # and an untrusting verifier does not share what another one remembered
    stranger = security.Verifier([security.create_overlay_ca("other.test")[1]], OVERLAY)
    with pytest.raises(security.SignatureError) as caught:
        stranger.verify(data, signature, [signer.der])
    assert caught.value.reason == "untrusted"


def test_the_remembered_signatures_are_bounded(
    credentials: tuple[security.Signer, x509.Certificate], crypto_calls: list[bytes]
) -> None:
    signer, ca_cert = credentials
    verifier = security.Verifier([ca_cert], OVERLAY, verified_cache_size=2)
    inputs = [b"a", b"b", b"c"]
    signatures = [signer.sign(d) for d in inputs]
    for d, s in zip(inputs, signatures, strict=True):
        verifier.verify(d, s, [signer.der])
    assert len(crypto_calls) == 3
    verifier.verify(inputs[2], signatures[2], [signer.der])  # still remembered
    assert len(crypto_calls) == 3
    verifier.verify(inputs[0], signatures[0], [signer.der])  # the oldest was forgotten
    assert len(crypto_calls) == 4


def test_large_signature_inputs_are_always_verified(
    credentials: tuple[security.Signer, x509.Certificate], crypto_calls: list[bytes]
) -> None:
    signer, ca_cert = credentials
    verifier = security.Verifier([ca_cert], OVERLAY)
    data = bytes(security.MAX_CACHED_SIGNATURE_INPUT)
    signature = signer.sign(data)
    verifier.verify(data, signature, [signer.der])
    verifier.verify(data, signature, [signer.der])
    assert len(crypto_calls) == 2


def test_signer_identity_is_the_certificate_hash(
    credentials: tuple[security.Signer, x509.Certificate],
) -> None:
    signer, _ = credentials
    der = signer.der
    assert signer.identity(SignerIdentityType.CERT_HASH) == SignerIdentity(
        1, 4, hashlib.sha256(der).digest()
    )
    assert signer.identity(SignerIdentityType.CERT_HASH_NODE_ID) == SignerIdentity(
        2, 4, hashlib.sha256(signer.node_id + der).digest()
    )
    for _ in range(2):  # the remembered identity signs the same input as a fresh one
        signature = signer.sign(b"data", SignerIdentityType.CERT_HASH_NODE_ID)
        assert signature.identity.identity_type == SignerIdentityType.CERT_HASH_NODE_ID
        key = signer.cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        key.verify(
            signature.signature_value,
            b"data" + fastwire.encode_signer_identity(signature.identity),
            ec.ECDSA(hashes.SHA256()),
        )


# --- reassembly (reload.fragments, §6.7): the same results as the straightforward algorithm --


class _QuadraticReassembler(fragments.Reassembler):
    """The reassembler as first written: every piece compared with every other, the whole
    message rebuilt after each fragment. The reference the indexed one must agree with."""

    def _store(self, partial: Any, offset: int, body: bytes) -> bool:
        end = offset + len(body)
        for start, piece in partial.pieces.items():
            lo, hi = max(start, offset), min(start + len(piece), end)
            if lo < hi and piece[lo - start : hi - start] != body[lo - offset : hi - offset]:
                return False
        existing = partial.pieces.get(offset)
        if existing is not None and len(existing) >= len(body):
            return True
        if existing is not None:
            partial.stored -= len(existing)
            self._buffered -= len(existing)
        partial.pieces[offset] = body
        partial.stored += len(body)
        self._buffered += len(body)
        return True

    def _complete(self, transaction_id: int, partial: Any) -> bytes | None:
        if partial.total is None:
            return None
        out = bytearray(partial.total)
        covered = bytearray(partial.total)
        for start, piece in partial.pieces.items():
            out[start : start + len(piece)] = piece
            covered[start : start + len(piece)] = b"\x01" * len(piece)
        if 0 in covered:
            return None
        self._forget(transaction_id)
        self._completed[transaction_id] = partial.first_seen
        while len(self._completed) > 4 * self.max_pending:
            self._completed.popitem(last=False)
        header = partial.header
        return fragments._with_fragment(header, UNFRAGMENTED, len(header) + len(out)) + bytes(out)


@PROPERTY
@given(
    st.integers(300, 4000),
    st.sampled_from([576, 700, 1200]),
    st.data(),
)
def test_reassembly_agrees_with_the_quadratic_reference(
    size: int, mtu: int, data: st.DataObject
) -> None:
    header = ForwardingHeader(1, 2, 3, data.draw(st.integers(0, 3)))
    body = PingReq(data.draw(st.binary(min_size=size, max_size=size)))
    raw = wire.encode_message(Message(header, MessageContents(body), _BLOCK))
    pieces = fragments.fragment(raw, mtu)
    # refragment some pieces for a smaller MTU (other boundaries, §6.7), repeat some
    for _ in range(data.draw(st.integers(0, 2))):
        i = data.draw(st.integers(0, len(pieces) - 1))
        pieces[i : i + 1] = fragments.fragment(pieces[i], data.draw(st.sampled_from([320, 400])))
    pieces += data.draw(st.lists(st.sampled_from(pieces), max_size=3))
    corrupted = data.draw(st.booleans())
    if corrupted:  # one piece contradicting the others
        i = data.draw(st.integers(0, len(pieces) - 1))
        mutated = bytearray(pieces[i])
        j = data.draw(st.integers(0, len(mutated) - 1))
        mutated[j] ^= 0x55
        pieces[i] = bytes(mutated)
    order = data.draw(st.permutations(pieces))
    new, old = fragments.Reassembler(), _QuadraticReassembler()
    results = []
    for piece in order:
        got = [outcome_of(r.receive, piece) for r in (new, old)]
        assert got[0] == got[1]
        results.append(got[0])
    assert (new.dropped, new.pending, new.buffered_bytes) == (
        old.dropped,
        old.pending,
        old.buffered_bytes,
    )
    if not corrupted:  # every byte arrived: the message came out
        assert ("ok", raw) in results


def outcome_of(receive: Callable[[bytes, float], bytes | None], piece: bytes) -> Outcome:
    try:
        return ("ok", receive(piece, 0.0))
    except fragments.FragmentError:
        return ("fragment-error", None)


_BLOCK = SecurityBlock((), Signature(SignatureAndHashAlgorithm(4, 3), SignerIdentity(3), b""))


def test_reassembly_in_any_order_gives_the_message_once() -> None:
    raw = wire.encode_message(
        Message(ForwardingHeader(1, 2, 3, 4), MessageContents(PingReq(bytes(5000))), _BLOCK)
    )
    pieces = fragments.fragment(raw, 1200)
    assert len(pieces) > 4
    for order in (pieces, pieces[::-1], pieces[1::2] + pieces[::2]):
        reassembler = fragments.Reassembler(max_message_size=10_000)
        out = [reassembler.receive(p, 0.0) for p in order]
        assert out[:-1] == [None] * (len(pieces) - 1)
        assert out[-1] == raw
        assert reassembler.pending == 0 and reassembler.buffered_bytes == 0


# --- the MessageContents as received (§6.3.4) -------------------------------------------------


@FEW
@given(messages)
def test_decoded_contents_encode_to_the_bytes_received(msg: Message) -> None:
    data = fastwire.encode_message(msg)
    decoded = fastwire.decode_message(data, 16, MODELS)
    contents = fastwire.encode_contents(decoded.contents)
    assert contents == wire.encode_contents_construct(decoded.contents)
    assert data == fastwire.encode_message(decoded) == wire.encode_message_construct(decoded)
    start = len(fastwire.encode_forwarding_header(decoded.header, 0))
    assert data[start : start + len(contents)] == contents
    # not for another NodeId length: that one is encoded (and refused) afresh
    assert outcome(fastwire.encode_contents, decoded.contents, 20) == outcome(
        wire.encode_contents_construct, decoded.contents, 20
    )


def test_only_the_latest_decoded_contents_are_remembered() -> None:
    block = _BLOCK
    decoded = []
    for i in range(40):
        msg = Message(ForwardingHeader(1, 2, 3, i), MessageContents(PingReq(b"%d" % i)), block)
        decoded.append(fastwire.decode_message(fastwire.encode_message(msg)))
    assert len(fastwire._recent) <= fastwire._RECENT_CONTENTS
    for d in decoded:  # remembered or not, the same bytes
        assert fastwire.encode_contents(d.contents) == wire.encode_contents_construct(d.contents)
