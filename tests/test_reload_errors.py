"""Error-path conformance (issue 4 item 5): each refusal gets the RFC 6940 error, and tshark
decodes each ErrorResponse we send.

:func:`reload.transactions.check_request` and :func:`~reload.transactions.check_forwarding`
are fed real signed messages (ECDSA P-256 node certificates from a test overlay CA) that break
one rule each: max-message-size (§6.6), version (§6.3.2), TTL (§6.3.2), configuration
sequence (§6.3.2.1), message signature (§6.3.4), unknown Kind (§7.4.1.2), StoredData
signature and access control policy (§7.4.1.1, §7.3), critical extensions and forwarding
options (§6.3.3, §6.3.2.3). :func:`~reload.transactions.build_error_response` answers each;
the answers go into a UDP capture that tshark's RELOAD dissector must decode without a
malformed packet and with ``reload.error_response.code`` equal to ours (the capture and field
checks are tests/test_reload_tshark.py's, imported).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reload import security, wire
from reload.access import chord_resource_id
from reload.config import KindDescription, OverlayConfiguration
from reload.messages import (
    ArrayEntry,
    ConfigUpdateReq,
    ConfigUpdateType,
    DataModel,
    DataValue,
    Destination,
    DictionaryEntry,
    ErrorCode,
    ErrorResponse,
    FetchReq,
    FindReq,
    ForwardingHeader,
    ForwardingOption,
    ForwardingOptionFlag,
    GenericCertificate,
    Message,
    MessageBody,
    MessageContents,
    MessageExtension,
    NodeDestination,
    PingAns,
    PingReq,
    SecurityBlock,
    StoredData,
    StoredDataSpecifier,
    StoreKindData,
    StoreReq,
)
from reload.security import Signer, Verifier
from reload.transactions import (
    CheckParams,
    ErrorReply,
    KindRules,
    build_error_response,
    check_forwarding,
    check_request,
    overlay_hash,
    parse_unknown_kinds,
)
from tests.test_reload_tshark import TSHARK, Sent, _check, _payloads, _tshark, _write_udp

OVERLAY = "errors.p2pcdn"
NODE_A = bytes.fromhex("0a" * 16)  # the requester (signs the requests)
NODE_B = bytes.fromhex("0b" * 16)  # a peer on the path (in the Via List)
NODE_C = bytes.fromhex("0c" * 16)  # this node (signs the error responses)
SINGLE_KIND = 0xF0000001  # NODE-MATCH
DICT_KIND = 0xF0000002  # USER-NODE-MATCH
ARRAY_KIND = 0xF0000003  # USER-MATCH
UNKNOWN_KIND = 0xF00000FF
SEQUENCE = 4
STORAGE_TIME = 1_790_000_000_000
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PARAMS = CheckParams(
    overlay=overlay_hash(OVERLAY),
    configuration_sequence=SEQUENCE,
    kinds={
        SINGLE_KIND: KindRules(DataModel.SINGLE, "NODE-MATCH"),
        DICT_KIND: KindRules(DataModel.DICTIONARY, "USER-NODE-MATCH"),
        ARRAY_KIND: KindRules(DataModel.ARRAY, "USER-MATCH"),
    },
)
#: Resource-IDs the requester may write under each policy (§7.3).
OWN_RESOURCE = chord_resource_id(NODE_A)  # NODE-MATCH
USER_RESOURCE = chord_resource_id(b"alice")  # USER-MATCH, USER-NODE-MATCH


@dataclasses.dataclass(frozen=True)
class Pki:
    ca: x509.Certificate
    alice: Signer  # NODE_A, user "alice"
    node: Signer  # NODE_C, this node
    stranger: Signer  # NODE_A, certified by another CA

    def verifier(self) -> Verifier:
        return Verifier([self.ca], OVERLAY)


def _signer(ca: tuple[security.PrivateKey, x509.Certificate], node_id: bytes, user: str) -> Signer:
    key = security.generate_private_key("ecdsa-p256")
    cert = security.issue_node_certificate(ca[0], ca[1], key.public_key(), [node_id], user, OVERLAY)
    return Signer(key, cert, node_id)


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca = security.create_overlay_ca(OVERLAY)
    other = security.create_overlay_ca(OVERLAY)
    return Pki(
        ca[1],
        _signer(ca, NODE_A, "alice"),
        _signer(ca, NODE_C, "node"),
        _signer(other, NODE_A, "x"),
    )


# --------------------------------------------------------------------- message building


def stored(
    signer: Signer, resource: bytes, kind: int, value: DataValue | ArrayEntry | DictionaryEntry
) -> StoredData:
    """A StoredData signed as §7.1 says (an array index is zeroed in the input, §7.4.2.1)."""
    signed_value = ArrayEntry(0, value.value) if isinstance(value, ArrayEntry) else value
    prefix = security.stored_data_signature_prefix(
        resource, kind, STORAGE_TIME, wire.encode_stored_data_value(signed_value)
    )
    return StoredData(STORAGE_TIME, 3600, value, signer.sign(prefix))


def store_req(signer: Signer, resource: bytes = OWN_RESOURCE, kind: int = SINGLE_KIND) -> StoreReq:
    """An original Store of 1 KiB under ``kind``, in the Kind's data model."""
    data = DataValue(True, bytes(1024))
    value: DataValue | ArrayEntry | DictionaryEntry = data
    if kind == ARRAY_KIND:
        value = ArrayEntry(0xFFFFFFFF, data)  # append (§7.2.2)
    elif kind == DICT_KIND:
        value = DictionaryEntry(signer.node_id, data)
    return StoreReq(
        resource, 0, (StoreKindData(kind, 0, (stored(signer, resource, kind, value),)),)
    )


def message(
    signer: Signer,
    body: MessageBody,
    *,
    via: tuple[Destination, ...] = (NodeDestination(NODE_B), NodeDestination(NODE_A)),
    extensions: tuple[MessageExtension, ...] = (),
    **header: int | tuple[ForwardingOption, ...],
) -> Message:
    """A request from NODE_A to NODE_C through NODE_B, signed by ``signer`` (§6.3.4)."""
    fields: dict[str, object] = {
        "overlay": PARAMS.overlay,
        "configuration_sequence": SEQUENCE,
        "ttl": 98,
        "transaction_id": 0x0123456789ABCDEF,
        "via_list": via,
        "destination_list": (NodeDestination(NODE_C),),
        **header,
    }
    forwarding = ForwardingHeader(**fields)  # type: ignore[arg-type]
    contents = MessageContents(body, extensions)
    prefix = security.message_signature_prefix(
        forwarding.overlay, forwarding.transaction_id, wire.encode_contents(contents)
    )
    block = SecurityBlock((GenericCertificate(0, signer.der),), signer.sign(prefix))
    return Message(forwarding, contents, block)


def raw(msg: Message) -> bytes:
    return wire.encode_message(msg)


def refused(result: Message | ForwardingHeader | ErrorReply) -> ErrorReply:
    assert isinstance(result, ErrorReply), f"accepted: {result!r}"
    return result


# ---------------------------------------------------------------- the accepted baseline


def test_valid_requests_pass_every_check(pki: Pki) -> None:
    ok = [
        message(pki.alice, store_req(pki.alice)),
        message(pki.alice, store_req(pki.alice, USER_RESOURCE, ARRAY_KIND)),
        message(pki.alice, PingReq(b"x")),
        message(pki.alice, FindReq(OWN_RESOURCE, (SINGLE_KIND, DICT_KIND))),
        message(pki.alice, FetchReq(OWN_RESOURCE, (StoredDataSpecifier(SINGLE_KIND),))),
    ]
    dictionary = stored(
        pki.alice, USER_RESOURCE, DICT_KIND, DictionaryEntry(NODE_A, DataValue(True, b"v"))
    )
    ok.append(
        message(
            pki.alice, StoreReq(USER_RESOURCE, 0, (StoreKindData(DICT_KIND, 0, (dictionary,)),))
        )
    )
    for msg in ok:
        assert check_request(raw(msg), PARAMS, pki.verifier()) == msg
        assert check_forwarding(raw(msg), PARAMS) == msg.header


def test_params_from_configuration() -> None:
    config = OverlayConfiguration(
        OVERLAY,
        sequence=7,
        max_message_size=9000,
        initial_ttl=50,
        kinds=[
            KindDescription("SINGLE", "NODE-MATCH", 1, 100, kind_id=SINGLE_KIND),
            KindDescription("ARRAY", "USER-MATCH", 4, 100, name="CERTIFICATE_BY_NODE"),
            KindDescription("QUEUE", "NODE-MATCH", 1, 100, kind_id=DICT_KIND),  # not §7.2's
        ],
    )
    params = CheckParams.from_configuration(config)
    assert (params.configuration_sequence, params.max_message_size, params.initial_ttl) == (
        7,
        9000,
        50,
    )
    assert params.overlay == overlay_hash(OVERLAY)
    assert params.data_models == {SINGLE_KIND: DataModel.SINGLE, 0x3: DataModel.ARRAY}


def test_overlay_hash_is_the_low_32_bits_of_sha1() -> None:
    # §6.3.2: SHA-1("errors.p2pcdn") = ...; its last four bytes, big-endian.
    import hashlib

    digest = hashlib.sha1(OVERLAY.encode()).digest()
    assert overlay_hash(OVERLAY) == int.from_bytes(digest, "big") & 0xFFFFFFFF


# ------------------------------------------------------------------------ each error


def test_message_too_large(pki: Pki) -> None:
    msg = message(pki.alice, store_req(pki.alice))
    small = dataclasses.replace(PARAMS, max_message_size=len(raw(msg)) - 1)
    for result in (
        check_request(raw(msg), small, pki.verifier()),
        check_forwarding(raw(msg), small),
    ):
        reply = refused(result)
        assert reply.code is ErrorCode.MESSAGE_TOO_LARGE and int(reply.code) == 0x0B
        assert reply.close_link and reply.header == msg.header  # §6.6: answer, then close
        assert str(len(raw(msg))).encode() in reply.info
    # Bytes that are not even a forwarding header: refused, with nobody to answer.
    reply = refused(check_request(b"\x00" * 6000, PARAMS, pki.verifier()))
    assert reply.code is ErrorCode.MESSAGE_TOO_LARGE and reply.header is None


def test_invalid_message(pki: Pki) -> None:
    reply = refused(check_request(b"not a RELOAD message", PARAMS, pki.verifier()))
    assert reply.code is ErrorCode.INVALID_MESSAGE and reply.header is None and reply.discard
    good = raw(message(pki.alice, PingReq(b"abc")))
    start = wire.decode_forwarding_header(good)[1]
    broken = bytearray(good)
    broken[start : start + 2] = b"\x00\x05"  # message_code 5: no such method (§6.3.3)
    reply = refused(check_request(bytes(broken), PARAMS, pki.verifier()))
    assert reply.code is ErrorCode.INVALID_MESSAGE and reply.header is not None
    assert reply.header.transaction_id == 0x0123456789ABCDEF


def test_other_version_is_rejected(pki: Pki) -> None:
    msg = message(pki.alice, PingReq(), version=0x0B)
    reply = refused(check_request(raw(msg), PARAMS, pki.verifier()))
    assert reply.code is ErrorCode.INVALID_MESSAGE and b"0x0b" in reply.info
    assert refused(check_forwarding(raw(msg), PARAMS)).code is ErrorCode.INVALID_MESSAGE


def test_ttl_exceeded(pki: Pki) -> None:
    spent = message(pki.alice, PingReq(), ttl=0)
    # §6.3.2: TTL 0 and not for this node: not propagated, Error_TTL_Exceeded ...
    reply = refused(check_forwarding(raw(spent), PARAMS))
    assert reply.code is ErrorCode.TTL_EXCEEDED and int(reply.code) == 0x0A
    # ... but a message that reached its destination with TTL 0 is processed.
    assert check_request(raw(spent), PARAMS, pki.verifier()) == spent
    # A TTL above initial-ttl is discarded with Error_TTL_Exceeded everywhere.
    inflated = raw(message(pki.alice, PingReq(), ttl=PARAMS.initial_ttl + 1))
    assert refused(check_forwarding(inflated, PARAMS)).code is ErrorCode.TTL_EXCEEDED
    assert refused(check_request(inflated, PARAMS, pki.verifier())).code is ErrorCode.TTL_EXCEEDED


@pytest.mark.parametrize(
    ("sequence", "expected"),
    [
        (SEQUENCE - 1, ErrorCode.CONFIG_TOO_OLD),
        (SEQUENCE + 1, ErrorCode.CONFIG_TOO_NEW),
        (65535, ErrorCode.CONFIG_TOO_OLD),  # the wildcard outside a ConfigUpdate
        (65534, ErrorCode.CONFIG_TOO_OLD),  # mod-65535 arithmetic: 65534 precedes 4
    ],
)
def test_configuration_sequence(pki: Pki, sequence: int, expected: ErrorCode) -> None:
    msg = message(pki.alice, PingReq(), configuration_sequence=sequence)
    reply = refused(check_request(raw(msg), PARAMS, pki.verifier()))
    assert reply.code is expected
    # Answers are not checked against our sequence (§6.3.2.1 speaks of requests).
    answer = message(pki.alice, PingAns(1, 2), configuration_sequence=sequence)
    assert check_request(raw(answer), PARAMS, pki.verifier()) == answer


def test_config_update_with_65535_passes_the_sequence_check(pki: Pki) -> None:
    body = ConfigUpdateReq(ConfigUpdateType.KIND, kinds=(b"<kind/>",))
    msg = message(pki.alice, body, configuration_sequence=65535)
    assert check_request(raw(msg), PARAMS, pki.verifier()) == msg


def test_bad_signature_is_forbidden(pki: Pki) -> None:
    msg = message(pki.alice, PingReq(b"payload"))
    signature = msg.security_block.signature
    value = bytearray(signature.signature_value)
    value[-1] ^= 0x01
    forged = dataclasses.replace(
        msg,
        security_block=SecurityBlock(
            msg.security_block.certificates,
            dataclasses.replace(signature, signature_value=bytes(value)),
        ),
    )
    tampered = dataclasses.replace(msg, contents=MessageContents(PingReq(b"PAYLOAD")))
    untrusted = message(pki.stranger, PingReq())
    for bad in (forged, tampered, untrusted):
        reply = refused(check_request(raw(bad), PARAMS, pki.verifier()))
        assert reply.code is ErrorCode.FORBIDDEN and int(reply.code) == 0x02
        assert reply.discard  # §6.3.4: the RFC would rather drop it


def test_unknown_kind(pki: Pki) -> None:
    store = store_req(pki.alice, kind=UNKNOWN_KIND)
    reply = refused(check_request(raw(message(pki.alice, store)), PARAMS, pki.verifier()))
    assert reply.code is ErrorCode.UNKNOWN_KIND and int(reply.code) == 0x0C
    assert parse_unknown_kinds(reply.info) == [UNKNOWN_KIND]  # KindId list, §7.4.1.2
    fetch = FetchReq(OWN_RESOURCE, (StoredDataSpecifier(UNKNOWN_KIND),))
    reply = refused(check_request(raw(message(pki.alice, fetch)), PARAMS, pki.verifier()))
    assert reply.code is ErrorCode.UNKNOWN_KIND
    find = FindReq(OWN_RESOURCE, (SINGLE_KIND, UNKNOWN_KIND, 0xF0000042))
    reply = refused(check_request(raw(message(pki.alice, find)), PARAMS, pki.verifier()))
    assert parse_unknown_kinds(reply.info) == [UNKNOWN_KIND, 0xF0000042]  # all of them


def test_store_forbidden_by_the_access_policy(pki: Pki) -> None:
    verifier = pki.verifier()
    # NODE-MATCH: H(Node-ID) must be the Resource-ID.
    elsewhere = store_req(pki.alice, resource=chord_resource_id(NODE_B))
    reply = refused(check_request(raw(message(pki.alice, elsewhere)), PARAMS, verifier))
    assert reply.code is ErrorCode.FORBIDDEN and b"NODE-MATCH" in reply.info
    # USER-NODE-MATCH: the dictionary key must be the signer's Node-ID.
    value = stored(pki.alice, USER_RESOURCE, DICT_KIND, DictionaryEntry(NODE_B, DataValue(True)))
    other_key = StoreReq(USER_RESOURCE, 0, (StoreKindData(DICT_KIND, 0, (value,)),))
    reply = refused(check_request(raw(message(pki.alice, other_key)), PARAMS, verifier))
    assert reply.code is ErrorCode.FORBIDDEN and b"USER-NODE-MATCH" in reply.info
    # An original store is also checked against the StoreReq's signer (§7.3) ...
    by_node = message(pki.node, store_req(pki.alice))
    reply = refused(check_request(raw(by_node), PARAMS, verifier))
    assert reply.code is ErrorCode.FORBIDDEN
    # ... a replica store only against the StoredData signers.
    replica = dataclasses.replace(store_req(pki.alice), replica_number=1)
    assert isinstance(check_request(raw(message(pki.node, replica)), PARAMS, verifier), Message)


def test_stored_data_signature_must_verify(pki: Pki) -> None:
    good = store_req(pki.alice)
    value = good.kind_data[0].values[0]
    # Signed over another Resource-ID: the §7.1 input does not match.
    moved = dataclasses.replace(
        value, signature=stored(pki.alice, USER_RESOURCE, SINGLE_KIND, value.value).signature
    )
    bad = StoreReq(OWN_RESOURCE, 0, (StoreKindData(SINGLE_KIND, 0, (moved,)),))
    reply = refused(check_request(raw(message(pki.alice, bad)), PARAMS, pki.verifier()))
    assert reply.code is ErrorCode.FORBIDDEN and b"StoredData" in reply.info


def test_critical_extension_and_forwarding_option(pki: Pki) -> None:
    ext = message(pki.alice, PingReq(), extensions=(MessageExtension(9, True, b"?"),))
    reply = refused(check_request(raw(ext), PARAMS, pki.verifier()))
    assert reply.code is ErrorCode.UNKNOWN_EXTENSION
    optional = message(pki.alice, PingReq(), extensions=(MessageExtension(9, False, b"?"),))
    assert check_request(raw(optional), PARAMS, pki.verifier()) == optional
    option = ForwardingOption(7, ForwardingOptionFlag.DESTINATION_CRITICAL, b"")
    opt = message(pki.alice, PingReq(), options=(option,))
    reply = refused(check_request(raw(opt), PARAMS, pki.verifier()))
    assert reply.code is ErrorCode.UNSUPPORTED_FORWARDING_OPTION


# ---------------------------------------------------------------- the error response


def _error_cases(pki: Pki) -> list[tuple[str, bytes, CheckParams]]:
    """One refused request per error (name, bytes, parameters it is checked with)."""
    ping = message(pki.alice, PingReq())
    return [
        ("too large", raw(ping), dataclasses.replace(PARAMS, max_message_size=100)),
        ("version", raw(message(pki.alice, PingReq(), version=0x0B)), PARAMS),
        ("ttl", raw(message(pki.alice, PingReq(), ttl=101)), PARAMS),
        ("too old", raw(message(pki.alice, PingReq(), configuration_sequence=3)), PARAMS),
        ("too new", raw(message(pki.alice, PingReq(), configuration_sequence=5)), PARAMS),
        ("signature", raw(message(pki.stranger, PingReq())), PARAMS),
        ("unknown kind", raw(message(pki.alice, store_req(pki.alice, kind=UNKNOWN_KIND))), PARAMS),
        (
            "forbidden",
            raw(message(pki.alice, store_req(pki.alice, chord_resource_id(b"x")))),
            PARAMS,
        ),
    ]


EXPECTED = {
    "too large": ErrorCode.MESSAGE_TOO_LARGE,
    "version": ErrorCode.INVALID_MESSAGE,
    "ttl": ErrorCode.TTL_EXCEEDED,
    "too old": ErrorCode.CONFIG_TOO_OLD,
    "too new": ErrorCode.CONFIG_TOO_NEW,
    "signature": ErrorCode.FORBIDDEN,
    "unknown kind": ErrorCode.UNKNOWN_KIND,
    "forbidden": ErrorCode.FORBIDDEN,
}


def _responses(pki: Pki) -> list[tuple[str, ErrorReply, Message]]:
    out = []
    for name, data, params in _error_cases(pki):
        reply = refused(check_request(data, params, pki.verifier()))
        assert reply.code is EXPECTED[name], name
        assert reply.header is not None
        answer = build_error_response(reply.header, reply.code, reply.info, pki.node)
        out.append((name, reply, wire.decode_message(answer)))
    return out


def test_error_response_is_addressed_back_and_signed(pki: Pki) -> None:
    request = message(pki.alice, PingReq(), configuration_sequence=3)
    reply = refused(check_request(raw(request), PARAMS, pki.verifier()))
    answer_bytes = build_error_response(
        request, reply.code, reply.info, pki.node, configuration_sequence=SEQUENCE, ttl=100
    )
    answer = wire.decode_message(answer_bytes)
    # §6.3.3.1: same transaction; the Destination List is the Via List reversed (§6.2.2).
    assert answer.header.transaction_id == request.header.transaction_id
    assert answer.header.destination_list == (NodeDestination(NODE_A), NodeDestination(NODE_B))
    assert answer.header.via_list == () and answer.header.configuration_sequence == SEQUENCE
    assert answer.contents.body == ErrorResponse(int(ErrorCode.CONFIG_TOO_OLD), reply.info)
    # It passes the checks of the node it goes to, signature included (§6.3.4).
    assert check_request(answer_bytes, PARAMS, pki.verifier()) == answer
    with pytest.raises(ValueError):
        build_error_response(request, ErrorCode.FORBIDDEN, bytes(0x10000), pki.node)


def test_every_error_gets_its_code(pki: Pki) -> None:
    responses = _responses(pki)
    assert {name for name, _, _ in responses} == set(EXPECTED)
    for name, reply, answer in responses:
        body = answer.contents.body
        assert isinstance(body, ErrorResponse)
        assert (body.error_code, body.error_info) == (int(EXPECTED[name]), reply.info), name


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
def test_tshark_decodes_every_error_response(tmp_path: Path, pki: Pki) -> None:
    """Each ErrorResponse, framed and sent as UDP, decodes in Wireshark's RELOAD dissector
    with no malformed packet or expert warning and reload.error_response.code equal to ours
    (tests/test_reload_tshark.py's _check compares it and the header fields)."""
    sent = [
        Sent(answer, sequence, False, None, answer.header.destination_list[0])
        for sequence, (_, _, answer) in enumerate(_responses(pki), start=1)
    ]
    path = tmp_path / "reload-errors.pcap"
    _write_udp(path, _payloads(sent))
    rows = _tshark(path)
    _check(rows, sent)
    codes = [row["reload.error_response.code"] for row in rows if row["reload.message.code"]]
    assert [int(c[0], 0) for c in codes] == [int(EXPECTED[name]) for name in EXPECTED]


# -------------------------------------------------------------------------- fuzzing


def _clean_verdict(result: object) -> None:
    """What a check returns for any input: the message (or header), or a well-formed refusal."""
    assert isinstance(result, Message | ErrorReply | ForwardingHeader)
    if isinstance(result, ErrorReply):
        assert isinstance(result.code, ErrorCode) and len(result.info) <= 0xFFFF


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_random_bytes_get_a_clean_verdict(data: bytes) -> None:
    _clean_verdict(check_request(data, PARAMS, Verifier([], OVERLAY)))
    _clean_verdict(check_forwarding(data, PARAMS))


@pytest.fixture(scope="module")
def signed_store(pki: Pki) -> bytes:
    return raw(message(pki.alice, store_req(pki.alice)))


@FUZZ
@given(st.data())
def test_fuzz_mutated_messages_get_a_clean_verdict(
    pki: Pki, signed_store: bytes, data: st.DataObject
) -> None:
    mutated = bytearray(signed_store)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(mutated) - 1))
        mutated[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(mutated)))
    candidate = bytes(mutated[:cut]) if data.draw(st.booleans()) else bytes(mutated)
    verifier = pki.verifier()
    result = check_request(candidate, PARAMS, verifier)
    _clean_verdict(result)
    if candidate != signed_store:
        # A changed byte either breaks a check or lies outside what the signature covers.
        assert isinstance(result, ErrorReply) or result == wire.decode_message(
            candidate, data_models=PARAMS.data_models
        )
