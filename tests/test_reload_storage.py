"""RELOAD storage (RFC 6940 §7): reload/storage.py."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reload import wire
from reload.access import chord_resource_id, node_multiple_resource_id
from reload.config import KindDescription
from reload.messages import (
    ArrayEntry,
    ArrayEntryMeta,
    ArrayRange,
    DataValue,
    DictionaryEntry,
    DictionaryEntryMeta,
    ErrorCode,
    FetchAns,
    FetchReq,
    FindAns,
    FindReq,
    HashAlgorithm,
    MetaData,
    Signature,
    SignatureAndHashAlgorithm,
    SignerIdentity,
    SignerIdentityType,
    StatAns,
    StatReq,
    StoreAns,
    StoredData,
    StoredDataSpecifier,
    StoredDataValue,
    StoreKindData,
    StoreReq,
)
from reload.storage import (
    APPEND_INDEX,
    DataStore,
    StorageError,
    StoragePersistenceError,
    decode_unknown_kinds,
    encode_store_ans,
    encode_unknown_kinds,
)

K_SINGLE = 0xF0000001  # SINGLE, USER-MATCH
K_ARRAY = 0xF0000002  # ARRAY, USER-MATCH, max-count 5
K_DICT = 0xF0000003  # DICTIONARY, USER-NODE-MATCH, max-count 3
K_NODE = 0xF0000004  # SINGLE, NODE-MATCH
K_MULTI = 0xF0000005  # SINGLE, NODE-MULTIPLE (3)
K_OPEN_DICT = 0xF0000006  # DICTIONARY, USER-MATCH, max-count 100 (for the model test)
UNKNOWN = 0xF00000AA

KINDS = [
    KindDescription("SINGLE", "USER-MATCH", 1, 100, kind_id=K_SINGLE),
    KindDescription("ARRAY", "USER-MATCH", 5, 100, kind_id=K_ARRAY),
    KindDescription("DICTIONARY", "USER-NODE-MATCH", 3, 100, kind_id=K_DICT),
    KindDescription("SINGLE", "NODE-MATCH", 1, 100, kind_id=K_NODE),
    KindDescription("SINGLE", "NODE-MULTIPLE", 1, 100, kind_id=K_MULTI, max_node_multiple=3),
    KindDescription("DICTIONARY", "USER-MATCH", 100, 100, kind_id=K_OPEN_DICT),
]


@dataclass(frozen=True)
class FakeSigner:
    """What check_access reads of a VerifiedSigner."""

    user_name: str | None
    node_id: bytes | None


N_ALICE = bytes(range(16))
N_BOB = bytes(range(16, 32))
ALICE = FakeSigner("alice", N_ALICE)
BOB = FakeSigner("bob", N_BOB)
R_ALICE = chord_resource_id(b"alice")
R_BOB = chord_resource_id(b"bob")
SIG = Signature(
    SignatureAndHashAlgorithm(HashAlgorithm.SHA256, 1),
    SignerIdentity(SignerIdentityType.CERT_HASH, HashAlgorithm.SHA256, b"h" * 32),
    b"signature",
)
T0 = 1_700_000_000.0  # wall-clock seconds
MS0 = 1_700_000_000_000  # storage_time, ms


def sd(value: StoredDataValue, t: int = MS0, lifetime: int = 100) -> StoredData:
    return StoredData(t, lifetime, value, SIG)


def single(v: bytes, t: int = MS0, lifetime: int = 100, exists: bool = True) -> StoredData:
    return sd(DataValue(exists, v), t, lifetime)


def req(
    resource: bytes, *kinds: tuple[int, tuple[StoredData, ...]], gc: int = 0, replica: int = 0
) -> StoreReq:
    return StoreReq(resource, replica, tuple(StoreKindData(k, gc, v) for k, v in kinds))


def ok(result: StoreAns | StorageError) -> StoreAns:
    assert isinstance(result, StoreAns), result
    return result


def err(result: object, code: ErrorCode) -> StorageError:
    assert isinstance(result, StorageError), result
    assert result.code == code, result
    return result


def fetch(
    store: DataStore, resource: bytes, spec: StoredDataSpecifier, now: float = T0
) -> tuple[int, tuple[StoredData, ...]]:
    answer = store.fetch(FetchReq(resource, (spec,)), now)
    assert isinstance(answer, FetchAns), answer
    (response,) = answer.kind_responses
    assert response.kind == spec.kind
    return response.generation, response.values


@pytest.fixture
def store() -> DataStore:
    return DataStore(kinds=KINDS)


# --- data models ------------------------------------------------------------------------------


def test_single_store_overwrite_and_generation(store: DataStore) -> None:
    answer = ok(store.store(req(R_ALICE, (K_SINGLE, (single(b"one"),))), ALICE, T0))
    assert answer.kind_responses[0].kind == K_SINGLE
    assert answer.kind_responses[0].generation_counter == 1
    ok(store.store(req(R_ALICE, (K_SINGLE, (single(b"two", MS0 + 1),))), ALICE, T0 + 1))
    generation, values = fetch(store, R_ALICE, StoredDataSpecifier(K_SINGLE))
    assert generation == 2
    assert values[0].value == DataValue(True, b"two")
    assert values[0].signature == SIG
    assert values[0].lifetime == 100  # stored at T0+1, fetched at T0: full lifetime remains


def test_single_missing_is_synthesized(store: DataStore) -> None:
    generation, values = fetch(store, R_ALICE, StoredDataSpecifier(K_SINGLE))
    assert generation == 0
    (value,) = values
    assert value.value == DataValue(False)
    assert value.signature.identity.identity_type == SignerIdentityType.NONE
    assert (value.signature.algorithm.hash, value.signature.algorithm.signature) == (0, 0)
    assert value.signature.signature_value == b""


def test_array_append_explicit_index_and_gaps(store: DataStore) -> None:
    values = (
        sd(ArrayEntry(APPEND_INDEX, DataValue(True, b"a"))),
        sd(ArrayEntry(APPEND_INDEX, DataValue(True, b"b"))),
        sd(ArrayEntry(4, DataValue(True, b"e"))),
    )
    answer = ok(store.store(req(R_ALICE, (K_ARRAY, values)), ALICE, T0))
    assert answer.kind_responses[0].generation_counter == 1  # one increment per Kind
    ok(
        store.store(
            req(R_ALICE, (K_ARRAY, (sd(ArrayEntry(APPEND_INDEX, DataValue(True, b"f"))),))),
            ALICE,
            T0,
        )
    )
    _, got = fetch(store, R_ALICE, StoredDataSpecifier(K_ARRAY, indices=(ArrayRange(0, -1),)))
    entries = [v.value for v in got]
    assert entries == [
        ArrayEntry(0, DataValue(True, b"a")),
        ArrayEntry(1, DataValue(True, b"b")),
        ArrayEntry(2, DataValue(False)),
        ArrayEntry(3, DataValue(False)),
        ArrayEntry(4, DataValue(True, b"e")),
        ArrayEntry(5, DataValue(True, b"f")),  # appended after the highest index
    ]
    assert got[2].signature.identity.identity_type == SignerIdentityType.NONE
    _, got = fetch(
        store,
        R_ALICE,
        StoredDataSpecifier(K_ARRAY, indices=(ArrayRange(1, 1), ArrayRange(5, 0xFFFFFFFF))),
    )
    assert [v.value for v in got] == [
        ArrayEntry(1, DataValue(True, b"b")),
        ArrayEntry(5, DataValue(True, b"f")),
    ]
    _, got = fetch(store, R_ALICE, StoredDataSpecifier(K_ARRAY, indices=(ArrayRange(3, 100),)))
    assert [v.value.index for v in got if isinstance(v.value, ArrayEntry)] == [3, 4, 5]


def test_array_bad_ranges(store: DataStore) -> None:
    ok(store.store(req(R_ALICE, (K_ARRAY, (sd(ArrayEntry(0, DataValue(True, b"a"))),))), ALICE, T0))
    for ranges in [(ArrayRange(2, 1),), (ArrayRange(0, 3), ArrayRange(3, 4)), (ArrayRange(-5, 0),)]:
        spec = StoredDataSpecifier(K_ARRAY, indices=ranges)
        err(store.fetch(FetchReq(R_ALICE, (spec,)), T0), ErrorCode.INVALID_MESSAGE)


def test_sparse_array_does_not_synthesize_huge_ranges(store: DataStore) -> None:
    values = (
        sd(ArrayEntry(0, DataValue(True, b"a"))),
        sd(ArrayEntry(3_000_000_000, DataValue(True, b"z"))),
    )
    ok(store.store(req(R_ALICE, (K_ARRAY, values)), ALICE, T0))
    _, got = fetch(store, R_ALICE, StoredDataSpecifier(K_ARRAY, indices=(ArrayRange(0, -1),)))
    assert [v.value.index for v in got if isinstance(v.value, ArrayEntry)] == [0, 3_000_000_000]


def test_dictionary_wildcard_and_keys(store: DataStore) -> None:
    value = sd(DictionaryEntry(N_ALICE, DataValue(True, b"contact")))
    ok(store.store(req(R_ALICE, (K_DICT, (value,))), ALICE, T0))
    _, got = fetch(store, R_ALICE, StoredDataSpecifier(K_DICT, keys=()))
    assert [v.value for v in got] == [DictionaryEntry(N_ALICE, DataValue(True, b"contact"))]
    _, got = fetch(store, R_ALICE, StoredDataSpecifier(K_DICT, keys=(b"missing", N_ALICE)))
    assert [v.value for v in got] == [
        DictionaryEntry(b"missing", DataValue(False)),
        DictionaryEntry(N_ALICE, DataValue(True, b"contact")),
    ]
    assert got[0].signature.identity.identity_type == SignerIdentityType.NONE


# --- generation counters -----------------------------------------------------------------------


def test_generation_counter_must_match_for_originals(store: DataStore) -> None:
    ok(store.store(req(R_ALICE, (K_SINGLE, (single(b"1"),))), ALICE, T0))
    ok(store.store(req(R_ALICE, (K_SINGLE, (single(b"2", MS0 + 1),)), gc=1), ALICE, T0))
    assert store.generation(R_ALICE, K_SINGLE) == 2
    failure = err(
        store.store(req(R_ALICE, (K_SINGLE, (single(b"3", MS0 + 2),)), gc=1), ALICE, T0),
        ErrorCode.GENERATION_COUNTER_TOO_LOW,
    )
    assert failure.answer is not None
    assert failure.answer.kind_responses[0].generation_counter == 2
    assert failure.answer.kind_responses[0].replicas == ()
    parsed = wire.STORE_ANS.parse(failure.info, node_id_length=16, data_models={})
    assert [(r.kind, r.generation_counter) for r in parsed.kind_responses] == [(K_SINGLE, 2)]
    _, values = fetch(store, R_ALICE, StoredDataSpecifier(K_SINGLE))
    assert values[0].value == DataValue(True, b"2")


def test_encode_store_ans_matches_codec() -> None:
    from reload.messages import StoreKindResponse

    answer = StoreAns((StoreKindResponse(7, 9, (N_ALICE, N_BOB)), StoreKindResponse(8, 1)))
    built = wire.STORE_ANS.build(
        {
            "kind_responses": [
                {"kind": 7, "generation_counter": 9, "replicas": [N_ALICE, N_BOB]},
                {"kind": 8, "generation_counter": 1, "replicas": []},
            ]
        },
        node_id_length=16,
        data_models={},
    )
    assert encode_store_ans(answer) == built


def test_replica_store_takes_the_message_generation(store: DataStore) -> None:
    ok(store.store(req(R_ALICE, (K_SINGLE, (single(b"1"),)), gc=41, replica=1), BOB, T0))
    assert store.generation(R_ALICE, K_SINGLE) == 41
    ok(store.store(req(R_ALICE, (K_SINGLE, (single(b"2", MS0 + 1),)), gc=7, replica=2), BOB, T0))
    assert store.generation(R_ALICE, K_SINGLE) == 7  # not checked, just set
    err(
        store.store(req(R_ALICE, (K_SINGLE, (single(b"3", MS0 + 2),)), gc=0, replica=1), BOB, T0),
        ErrorCode.INVALID_MESSAGE,
    )


def test_fetch_with_current_generation_returns_no_values(store: DataStore) -> None:
    ok(store.store(req(R_ALICE, (K_SINGLE, (single(b"1"),))), ALICE, T0))
    generation, values = fetch(store, R_ALICE, StoredDataSpecifier(K_SINGLE, generation=1))
    assert (generation, values) == (1, ())
    generation, values = fetch(store, R_ALICE, StoredDataSpecifier(K_SINGLE, generation=5))
    assert len(values) == 1


# --- delete, expiry ------------------------------------------------------------------------------


def test_delete_keeps_tombstone_until_lifetime_ends(store: DataStore) -> None:
    ok(store.store(req(R_ALICE, (K_SINGLE, (single(b"v", lifetime=10),))), ALICE, T0))
    tomb = single(b"", MS0 + 1, lifetime=50, exists=False)
    ok(store.store(req(R_ALICE, (K_SINGLE, (tomb,))), ALICE, T0 + 1))
    _, values = fetch(store, R_ALICE, StoredDataSpecifier(K_SINGLE), now=T0 + 20)
    assert values[0].value == DataValue(False)
    assert values[0].signature == SIG  # a signed tombstone, not a synthesized value
    assert values[0].lifetime == 31  # remaining lifetime
    # The tombstone blocks a replay of the old value (§7.4.1.3).
    err(
        store.store(req(R_ALICE, (K_SINGLE, (single(b"v"),))), ALICE, T0 + 20),
        ErrorCode.DATA_TOO_OLD,
    )
    assert store.next_expiry() == T0 + 51
    assert store.expire(T0 + 50) == 0
    assert store.expire(T0 + 51) == 1
    assert store.resource_ids() == []
    assert store.generation(R_ALICE, K_SINGLE) == 0
    assert store.next_expiry() is None
    assert (store.total_bytes, store.entry_count) == (0, 0)


def test_expiry_with_injected_time(store: DataStore) -> None:
    ok(
        store.store(
            req(
                R_ALICE,
                (
                    K_OPEN_DICT,
                    (
                        sd(DictionaryEntry(b"a", DataValue(True, b"1")), lifetime=5),
                        sd(DictionaryEntry(b"b", DataValue(True, b"22")), lifetime=9),
                    ),
                ),
            ),
            ALICE,
            T0,
        )
    )
    assert store.entry_count == 2 and store.total_bytes == 1 + 1 + 2 + 1
    assert store.next_expiry() == T0 + 5
    _, got = fetch(store, R_ALICE, StoredDataSpecifier(K_OPEN_DICT, keys=()), now=T0 + 6)
    assert [v.value.key for v in got if isinstance(v.value, DictionaryEntry)] == [b"b"]
    assert got[0].lifetime == 3
    assert store.next_expiry() == T0 + 9
    assert store.expire(T0 + 100) == 1
    assert store.entry_count == 0


# --- error paths -------------------------------------------------------------------------------


def test_unknown_kind_lists_every_unknown_kind(store: DataStore) -> None:
    request = req(R_ALICE, (K_SINGLE, (single(b"x"),)), (UNKNOWN, ()), (UNKNOWN + 1, ()))
    failure = err(store.store(request, ALICE, T0), ErrorCode.UNKNOWN_KIND)
    assert failure.unknown_kinds == (UNKNOWN, UNKNOWN + 1)
    assert decode_unknown_kinds(failure.info) == (UNKNOWN, UNKNOWN + 1)
    assert store.resource_ids() == []
    spec = StoredDataSpecifier(UNKNOWN)
    err(store.fetch(FetchReq(R_ALICE, (spec,)), T0), ErrorCode.UNKNOWN_KIND)
    err(store.stat(StatReq(R_ALICE, (spec,)), T0), ErrorCode.UNKNOWN_KIND)
    err(store.find(FindReq(R_ALICE, (UNKNOWN,))), ErrorCode.UNKNOWN_KIND)


def test_unknown_kinds_encoding_round_trip_and_limit() -> None:
    assert encode_unknown_kinds([1, 2]) == b"\x08\x00\x00\x00\x01\x00\x00\x00\x02"
    assert len(decode_unknown_kinds(encode_unknown_kinds(range(100)))) == 63
    with pytest.raises(ValueError):
        decode_unknown_kinds(b"\x05abcde")


def test_duplicate_kind_and_wrong_model(store: DataStore) -> None:
    dup = req(R_ALICE, (K_SINGLE, (single(b"x"),)), (K_SINGLE, (single(b"y"),)))
    err(store.store(dup, ALICE, T0), ErrorCode.INVALID_MESSAGE)
    wrong = req(R_ALICE, (K_ARRAY, (single(b"x"),)))
    err(store.store(wrong, ALICE, T0), ErrorCode.INVALID_MESSAGE)


def test_forbidden_writer(store: DataStore) -> None:
    failure = err(
        store.store(req(R_ALICE, (K_SINGLE, (single(b"x"),))), BOB, T0), ErrorCode.FORBIDDEN
    )
    assert "USER-MATCH" in failure.reason
    assert failure.info == failure.reason.encode()


def test_anonymous_signature_is_forbidden(store: DataStore) -> None:
    anonymous = StoredData(
        MS0,
        100,
        DataValue(True, b"x"),
        Signature(SignatureAndHashAlgorithm(0, 0), SignerIdentity(SignerIdentityType.NONE), b""),
    )
    err(store.store(req(R_ALICE, (K_SINGLE, (anonymous,))), ALICE, T0), ErrorCode.FORBIDDEN)


def test_size_and_count_limits(store: DataStore) -> None:
    err(
        store.store(req(R_ALICE, (K_SINGLE, (single(b"x" * 101),))), ALICE, T0),
        ErrorCode.DATA_TOO_LARGE,
    )
    ok(store.store(req(R_ALICE, (K_SINGLE, (single(b"x" * 100),))), ALICE, T0))
    six = tuple(sd(ArrayEntry(i, DataValue(True, b"v"))) for i in range(6))
    err(store.store(req(R_ALICE, (K_ARRAY, six)), ALICE, T0), ErrorCode.DATA_TOO_LARGE)
    ok(store.store(req(R_ALICE, (K_ARRAY, six[:5])), ALICE, T0))
    # Overwriting an existing index does not grow the count.
    ok(
        store.store(
            req(R_ALICE, (K_ARRAY, (sd(ArrayEntry(4, DataValue(False)), MS0 + 1),))), ALICE, T0
        )
    )


def test_node_wide_bounds() -> None:
    small = DataStore(kinds=KINDS, max_bytes=10, max_entries=2)
    ok(small.store(req(R_ALICE, (K_SINGLE, (single(b"x" * 10),))), ALICE, T0))
    err(
        small.store(
            req(R_ALICE, (K_ARRAY, (sd(ArrayEntry(0, DataValue(True, b"y"))),))), ALICE, T0
        ),
        ErrorCode.DATA_TOO_LARGE,
    )
    ok(small.store(req(R_ALICE, (K_ARRAY, (sd(ArrayEntry(0, DataValue(True, b""))),))), ALICE, T0))
    err(
        small.store(req(R_ALICE, (K_ARRAY, (sd(ArrayEntry(1, DataValue(True, b""))),))), ALICE, T0),
        ErrorCode.DATA_TOO_LARGE,
    )


def test_data_too_old_and_lifetime_zero(store: DataStore) -> None:
    ok(store.store(req(R_ALICE, (K_SINGLE, (single(b"new", MS0 + 10),))), ALICE, T0))
    err(
        store.store(req(R_ALICE, (K_SINGLE, (single(b"old", MS0),))), ALICE, T0),
        ErrorCode.DATA_TOO_OLD,
    )
    err(
        store.store(req(R_ALICE, (K_SINGLE, (single(b"same", MS0 + 10),))), ALICE, T0),
        ErrorCode.DATA_TOO_OLD,
    )
    err(
        store.store(req(R_ALICE, (K_SINGLE, (single(b"z", MS0 + 11, lifetime=0),))), ALICE, T0),
        ErrorCode.INVALID_MESSAGE,
    )
    # A replica store may repeat the storage_time (idempotent re-replication), not go back.
    ok(store.store(req(R_ALICE, (K_SINGLE, (single(b"new", MS0 + 10),)), gc=3, replica=1), BOB, T0))
    err(
        store.store(req(R_ALICE, (K_SINGLE, (single(b"old", MS0),)), gc=3, replica=1), BOB, T0),
        ErrorCode.DATA_TOO_OLD,
    )


# --- access policies through check_access ------------------------------------------------------


def test_node_match_and_node_multiple(store: DataStore) -> None:
    r_node = chord_resource_id(N_ALICE)
    ok(store.store(req(r_node, (K_NODE, (single(b"x"),))), ALICE, T0))
    err(store.store(req(r_node, (K_NODE, (single(b"y", MS0 + 1),))), BOB, T0), ErrorCode.FORBIDDEN)
    r_multi = node_multiple_resource_id(N_BOB, 3, chord_resource_id)
    ok(store.store(req(r_multi, (K_MULTI, (single(b"turn"),))), BOB, T0))
    r_too_far = node_multiple_resource_id(N_BOB, 4, chord_resource_id)
    err(store.store(req(r_too_far, (K_MULTI, (single(b"turn"),))), BOB, T0), ErrorCode.FORBIDDEN)


def test_user_node_match_needs_the_signers_node_id_as_key(store: DataStore) -> None:
    bad = sd(DictionaryEntry(N_BOB, DataValue(True, b"x")))
    err(store.store(req(R_ALICE, (K_DICT, (bad,))), ALICE, T0), ErrorCode.FORBIDDEN)


def test_value_signer_and_request_signer_both_checked(store: DataStore) -> None:
    request = req(R_ALICE, (K_SINGLE, (single(b"x"),)))
    # Alice wrote the value but Bob signed the original StoreReq: §7.3 wants both to conform.
    err(store.store(request, BOB, T0, value_signer=lambda _: ALICE), ErrorCode.FORBIDDEN)
    err(store.store(request, ALICE, T0, value_signer=lambda _: BOB), ErrorCode.FORBIDDEN)
    err(store.store(request, ALICE, T0, value_signer=lambda _: None), ErrorCode.FORBIDDEN)
    ok(store.store(request, ALICE, T0, value_signer=lambda _: ALICE))


def test_replica_checks_value_signer_not_request_signer(store: DataStore) -> None:
    request = req(R_ALICE, (K_SINGLE, (single(b"x"),)), gc=1, replica=1)
    err(store.store(request, BOB, T0, value_signer=lambda _: BOB), ErrorCode.FORBIDDEN)
    ok(store.store(request, BOB, T0, value_signer=lambda _: ALICE))
    other = DataStore(kinds=KINDS)
    ok(other.store(request, BOB, T0))  # no value signers given: trust the responsible peer


def test_store_answer_lists_replicas(store: DataStore) -> None:
    answer = ok(
        store.store(req(R_ALICE, (K_SINGLE, (single(b"x"),))), ALICE, T0, replicas=(N_BOB,))
    )
    assert answer.kind_responses[0].replicas == (N_BOB,)


# --- atomicity ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        (K_ARRAY, tuple(sd(ArrayEntry(i, DataValue(True, b"v"))) for i in range(6))),  # max-count
        (K_DICT, (sd(DictionaryEntry(N_BOB, DataValue(True, b"x"))),)),  # forbidden
        (K_ARRAY, (sd(ArrayEntry(0, DataValue(True, b"v" * 101))),)),  # max-size
    ],
)
def test_one_bad_kind_stores_nothing(
    store: DataStore, bad: tuple[int, tuple[StoredData, ...]]
) -> None:
    ok(store.store(req(R_ALICE, (K_SINGLE, (single(b"before"),))), ALICE, T0))
    kind, values = bad
    request = req(
        R_ALICE,
        (K_SINGLE, (single(b"after", MS0 + 1),)),
        (kind, values),
    )
    failure = store.store(request, ALICE, T0)
    assert isinstance(failure, StorageError)
    assert failure.code in (ErrorCode.DATA_TOO_LARGE, ErrorCode.FORBIDDEN)
    generation, got = fetch(store, R_ALICE, StoredDataSpecifier(K_SINGLE))
    assert generation == 1
    assert got[0].value == DataValue(True, b"before")
    assert store.generation(R_ALICE, kind) == 0
    assert store.entry_count == 1


# --- stat, find --------------------------------------------------------------------------------


def test_stat_reports_metadata(store: DataStore) -> None:
    import hashlib

    ok(
        store.store(
            req(R_ALICE, (K_DICT, (sd(DictionaryEntry(N_ALICE, DataValue(True, b"abc"))),))),
            ALICE,
            T0,
        )
    )
    spec = StoredDataSpecifier(K_DICT, keys=(N_ALICE, b"gone"))
    answer = store.stat(StatReq(R_ALICE, (spec,)), T0 + 1)
    assert isinstance(answer, StatAns)
    (response,) = answer.kind_responses
    assert response.generation == 1
    first, second = response.values
    assert first.storage_time == MS0 and first.lifetime == 99
    digest = hashlib.sha256(b"\x00\x00\x00\x03abc").digest()
    assert first.metadata == DictionaryEntryMeta(
        N_ALICE, MetaData(True, 3, HashAlgorithm.SHA256, digest)
    )
    assert second.metadata == DictionaryEntryMeta(b"gone", MetaData(False, 0, 0, b""))
    ok(store.store(req(R_ALICE, (K_ARRAY, (sd(ArrayEntry(1, DataValue(True, b"q"))),))), ALICE, T0))
    answer = store.stat(
        StatReq(R_ALICE, (StoredDataSpecifier(K_ARRAY, indices=(ArrayRange(0, 1),)),)), T0
    )
    assert isinstance(answer, StatAns)
    metas = [v.metadata for v in answer.kind_responses[0].values]
    assert isinstance(metas[0], ArrayEntryMeta) and not metas[0].value.exists
    assert isinstance(metas[1], ArrayEntryMeta) and metas[1].value.value_length == 1


def test_find_closest_resource_at_or_above(store: DataStore) -> None:
    ids = sorted([R_ALICE, R_BOB])
    signer = {R_ALICE: ALICE, R_BOB: BOB}
    for r in ids:
        ok(store.store(req(r, (K_SINGLE, (single(b"x"),))), signer[r], T0))
    answer = store.find(FindReq(bytes(16), (K_SINGLE, K_ARRAY)))
    assert isinstance(answer, FindAns)
    assert [(d.kind, d.closest) for d in answer.results] == [(K_SINGLE, ids[0]), (K_ARRAY, b"")]
    after_first = (int.from_bytes(ids[0], "big") + 1).to_bytes(16, "big")
    answer = store.find(FindReq(after_first, (K_SINGLE,)))
    assert isinstance(answer, FindAns) and answer.results[0].closest == ids[1]
    answer = store.find(FindReq(ids[1], (K_SINGLE,)))
    assert isinstance(answer, FindAns) and answer.results[0].closest == ids[1]
    beyond = (int.from_bytes(ids[1], "big") + 1).to_bytes(16, "big")
    answer = store.find(FindReq(beyond, (K_SINGLE,)))
    assert isinstance(answer, FindAns) and answer.results[0].closest == b""
    err(store.find(FindReq(bytes(16), (K_SINGLE, K_SINGLE))), ErrorCode.INVALID_MESSAGE)
    # A resource holding only a tombstone is not found.
    tomb = single(b"", MS0 + 1, exists=False)
    ok(store.store(req(ids[0], (K_SINGLE, (tomb,))), signer[ids[0]], T0))
    answer = store.find(FindReq(bytes(16), (K_SINGLE,)), T0)
    assert isinstance(answer, FindAns) and answer.results[0].closest == ids[1]


# --- replication and migration helpers ---------------------------------------------------------


def test_replicate_gives_two_replica_stores_with_remaining_lifetime(store: DataStore) -> None:
    ok(store.store(req(R_ALICE, (K_SINGLE, (single(b"x", lifetime=100),))), ALICE, T0))
    ok(store.store(req(R_ALICE, (K_ARRAY, (sd(ArrayEntry(2, DataValue(True, b"y"))),))), ALICE, T0))
    first, second = store.replicate(R_ALICE, T0 + 30)
    assert (first.replica_number, second.replica_number) == (1, 2)
    assert first.kind_data == second.kind_data
    kinds = {kd.kind: kd for kd in first.kind_data}
    assert set(kinds) == {K_SINGLE, K_ARRAY}
    assert kinds[K_SINGLE].generation_counter == 1
    assert kinds[K_SINGLE].values[0].lifetime == 70
    only = store.replicate(R_ALICE, T0, kinds=[K_ARRAY])
    assert [kd.kind for kd in only[0].kind_data] == [K_ARRAY]
    assert store.replicate(R_BOB, T0) == []
    # The replica accepts them (twice: idempotent), with our generation counters.
    replica = DataStore(kinds=KINDS)
    for _ in range(2):
        ok(replica.store(first, BOB, T0 + 30, value_signer=lambda _: ALICE))
    assert replica.generation(R_ALICE, K_SINGLE) == 1
    assert replica.next_expiry() == T0 + 100


def test_resources_in_ring_ranges_export_and_drop(store: DataStore) -> None:
    resources = {}
    for i in (1, 5, 9):
        name = f"user{i}"
        rid = chord_resource_id(name.encode())
        resources[rid] = FakeSigner(name, None)
        ok(store.store(req(rid, (K_SINGLE, (single(b"x"),))), resources[rid], T0))
    ids = sorted(resources)
    assert store.resources_in(ids[0], ids[2]) == ids[1:]
    assert store.resources_in(ids[1], ids[0]) == [ids[0], ids[2]]  # wraps past zero
    assert store.resources_in(ids[2], ids[2]) == ids  # single node: the whole ring
    exported = store.export(ids[1:], T0 + 10)
    assert [r.resource for r in exported] == ids[1:]
    assert all(r.replica_number == 1 for r in exported)
    assert exported[0].kind_data[0].values[0].lifetime == 90
    with pytest.raises(ValueError):
        store.export(ids, T0, replica_number=0)
    store.drop(ids[1:])
    assert store.resource_ids() == ids[:1]
    assert store.entry_count == 1
    assert store.export(ids[1:], T0) == []
    assert store.next_expiry() == T0 + 100


# --- persistence -------------------------------------------------------------------------------


def test_persistence_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    first = DataStore.open(path, KINDS)
    ok(first.store(req(R_ALICE, (K_SINGLE, (single(b"v1"),))), ALICE, T0))
    ok(first.store(req(R_ALICE, (K_SINGLE, (single(b"v2", MS0 + 1),))), ALICE, T0))
    ok(
        first.store(
            req(R_ALICE, (K_ARRAY, (sd(ArrayEntry(APPEND_INDEX, DataValue(True, b"a"))),))),
            ALICE,
            T0,
        )
    )
    ok(
        first.store(
            req(R_ALICE, (K_DICT, (sd(DictionaryEntry(N_ALICE, DataValue(False)), lifetime=500),))),
            ALICE,
            T0,
        )
    )
    ok(first.store(req(R_BOB, (K_SINGLE, (single(b"short", lifetime=5),))), BOB, T0))
    first.close()

    second = DataStore.open(path, KINDS)
    assert second.recovered_from is None
    assert second.generation(R_ALICE, K_SINGLE) == 2
    _, values = fetch(second, R_ALICE, StoredDataSpecifier(K_SINGLE))
    assert values[0].value == DataValue(True, b"v2") and values[0].signature == SIG
    _, values = fetch(second, R_ALICE, StoredDataSpecifier(K_ARRAY, indices=(ArrayRange(0, -1),)))
    assert [v.value for v in values] == [ArrayEntry(0, DataValue(True, b"a"))]
    _, values = fetch(second, R_ALICE, StoredDataSpecifier(K_DICT, keys=()))
    assert values[0].value == DictionaryEntry(N_ALICE, DataValue(False))  # the tombstone
    assert values[0].signature == SIG
    assert second.entry_count == 4
    # Expiry, drop and later stores are persisted too.
    assert second.expire(T0 + 6) == 1
    second.drop([R_ALICE])
    second.close()
    third = DataStore.open(path, KINDS)
    assert third.resource_ids() == []
    assert third.generation(R_ALICE, K_SINGLE) == 0
    third.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_corrupt_database_gives_a_fresh_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store.db"
    path.write_bytes(b"this is not an sqlite database" * 100)
    store = DataStore.open(path, KINDS)
    assert store.recovered_from is not None
    assert "discarding storage database" in caplog.text
    assert (tmp_path / "store.db.corrupt").exists()
    ok(store.store(req(R_ALICE, (K_SINGLE, (single(b"x"),))), ALICE, T0))
    store.close()
    again = DataStore.open(path, KINDS)
    assert again.recovered_from is None and again.resource_ids() == [R_ALICE]
    again.close()


def test_foreign_or_damaged_rows_give_a_fresh_store(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE t (x)")
    store = DataStore.open(foreign, KINDS)
    assert store.recovered_from is not None and store.resource_ids() == []
    store.close()

    damaged = tmp_path / "damaged.db"
    good = DataStore.open(damaged, KINDS)
    ok(good.store(req(R_ALICE, (K_SINGLE, (single(b"x"),))), ALICE, T0))
    good.close()
    with sqlite3.connect(damaged) as db:
        db.execute("UPDATE items SET stored = x'00000003ffff'")
    reopened = DataStore.open(damaged, KINDS)
    assert reopened.recovered_from is not None and reopened.resource_ids() == []
    reopened.close()


def test_kind_lookup_function_follows_configuration() -> None:
    table = {k.kind_id: k for k in KINDS}
    store = DataStore(kinds=table.get)
    ok(store.store(req(R_ALICE, (K_SINGLE, (single(b"x"),))), ALICE, T0))
    del table[K_SINGLE]  # a ConfigUpdate that removed the Kind
    err(
        store.fetch(FetchReq(R_ALICE, (StoredDataSpecifier(K_SINGLE),)), T0), ErrorCode.UNKNOWN_KIND
    )


# --- property: random store/fetch sequences against a dict model -------------------------------

_KEYS = st.sampled_from([b"a", b"b", b"c", b"d"])
_OPS = st.lists(
    st.tuples(
        st.sampled_from(["store", "delete", "stale", "tick"]),
        _KEYS,
        st.binary(max_size=8),
        st.integers(min_value=1, max_value=20),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS)
def test_random_sequences_match_a_dict_model(ops: list[tuple[str, bytes, bytes, int]]) -> None:
    store = DataStore(kinds=KINDS)
    model: dict[bytes, tuple[bool, bytes, int, float]] = {}  # key → exists, value, time, expires
    now = T0
    clock = MS0
    generation = 0
    for op, key, value, lifetime in ops:
        if op == "tick":
            now += lifetime
            continue
        clock += 1
        stamp = clock if op != "stale" else MS0 - 1
        exists = op != "delete"
        data = sd(
            DictionaryEntry(key, DataValue(exists, value if exists else b"")), stamp, lifetime
        )
        result = store.store(req(R_ALICE, (K_OPEN_DICT, (data,))), ALICE, now)
        live = {k: v for k, v in model.items() if v[3] > now}
        if key in live and stamp <= live[key][2]:
            err(result, ErrorCode.DATA_TOO_OLD)
        else:
            answer = ok(result)
            generation = generation + 1 if live else 1
            assert answer.kind_responses[0].generation_counter == generation
            live[key] = (exists, value if exists else b"", stamp, now + lifetime)
        model = live
        got_generation, got = fetch(store, R_ALICE, StoredDataSpecifier(K_OPEN_DICT, keys=()), now)
        assert got_generation == (generation if model else 0)
        if not model:
            generation = 0
        assert {
            v.value.key: (v.value.value.exists, v.value.value.value, v.storage_time)
            for v in got
            if isinstance(v.value, DictionaryEntry)
        } == {k: v[:3] for k, v in model.items()}
        assert store.entry_count == len(model)


def test_failed_disk_write_leaves_memory_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = DataStore.open(path, KINDS)
    ok(store.store(req(R_ALICE, (K_SINGLE, (single(b"v1", lifetime=5),))), ALICE, T0))
    store.close()
    store = DataStore.open(path, KINDS)
    assert store._db is not None
    store._db.close()
    store._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    with pytest.raises(StoragePersistenceError):
        store.store(req(R_ALICE, (K_SINGLE, (single(b"v2", MS0 + 1),))), ALICE, T0)
    _, values = fetch(store, R_ALICE, StoredDataSpecifier(K_SINGLE))
    assert values[0].value == DataValue(True, b"v1")
    assert store.generation(R_ALICE, K_SINGLE) == 1
    assert store.expire(T0 + 5) == 1  # expiry in memory still works; the rows expire on reload
    store.close()
    reopened = DataStore.open(path, KINDS)
    assert reopened.resource_ids() == [R_ALICE]
    assert reopened.expire(T0 + 5) == 1
    reopened.close()
