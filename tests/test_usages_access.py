"""The usages' access control policies NODE-KEY-MATCH and USER-PREFIX-MATCH (reload/access.py,
docs/usages.md), alone and as the DataStore applies them to a Store."""

from __future__ import annotations

from dataclasses import dataclass

from reload.access import AccessPolicy, check_access, chord_resource_id
from reload.config import KindDescription
from reload.messages import (
    DataValue,
    DictionaryEntry,
    ErrorCode,
    HashAlgorithm,
    Signature,
    SignatureAndHashAlgorithm,
    SignerIdentity,
    SignerIdentityType,
    StoreAns,
    StoredData,
    StoreKindData,
    StoreReq,
)
from reload.storage import DataStore, StorageError
from reload.usages import (
    CONTENT_SEGMENT,
    SWARM_PEERS,
    content_segment_key,
    content_segment_resource,
    swarm_peers_resource,
    tracker_key,
)


@dataclass(frozen=True)
class FakeSigner:
    user_name: str | None
    node_id: bytes | None


N_T1 = bytes(range(16))
N_T2 = bytes(range(16, 32))
T1 = FakeSigner("tracker1@lab", N_T1)
T2 = FakeSigner("tracker2@lab", N_T2)
ALICE = FakeSigner("alice@lab", N_T1)
MALLORY = FakeSigner("mallory@lab", N_T2)
SWARM = b"\x11" * 32
R_SWARM = swarm_peers_resource(SWARM)
R_SEG = content_segment_resource("alice@lab", "movie", 3)
K_SEG = content_segment_key("movie", 3)


def test_node_key_match_allows_only_own_entry_at_any_resource() -> None:
    p = AccessPolicy.NODE_KEY_MATCH
    assert check_access(p, R_SWARM, T1, dictionary_key=N_T1)
    assert check_access(p, b"\x00" * 16, T1, dictionary_key=N_T1)  # any Resource-ID
    denied = check_access(p, R_SWARM, T2, dictionary_key=N_T1)  # another tracker's entry
    assert not denied and denied.error_code == ErrorCode.FORBIDDEN
    assert "not the signer's Node-ID" in denied.reason
    assert not check_access(p, R_SWARM, T1)  # not a dictionary value
    assert not check_access(p, R_SWARM, FakeSigner("x", None), dictionary_key=N_T1)


def test_user_prefix_match_gives_each_user_a_namespace() -> None:
    p = "USER-PREFIX-MATCH"  # the name a configuration document carries
    assert check_access(p, R_SEG, ALICE, dictionary_key=K_SEG)
    # Mallory signs for Alice's segment: refused.
    forged = check_access(p, R_SEG, MALLORY, dictionary_key=K_SEG)
    assert not forged and forged.error_code == ErrorCode.FORBIDDEN
    # Alice's key at another resource (a key that does not name the resource): refused.
    assert not check_access(p, R_SEG, ALICE, dictionary_key=content_segment_key("movie", 4))
    # Mallory's own namespace is hers.
    r_mallory = content_segment_resource("mallory@lab", "movie", 3)
    assert check_access(p, r_mallory, MALLORY, dictionary_key=K_SEG)
    assert not check_access(p, R_SEG, FakeSigner(None, N_T1), dictionary_key=K_SEG)
    assert not check_access(p, R_SEG, ALICE)


def test_user_prefix_match_refuses_a_user_name_with_the_separator() -> None:
    # "alice@lab/movie" ‖ "/" ‖ "3" == "alice@lab" ‖ "/" ‖ "movie/3": same Resource-ID.
    sneaky = FakeSigner("alice@lab/movie", N_T2)
    assert chord_resource_id(b"alice@lab/movie/3") == R_SEG
    decision = check_access("USER-PREFIX-MATCH", R_SEG, sneaky, dictionary_key=b"3")
    assert not decision and "'/'" in decision.reason


# --- through the DataStore ------------------------------------------------------------------

KINDS = [
    KindDescription("DICTIONARY", "NODE-KEY-MATCH", 64, 4096, kind_id=SWARM_PEERS),
    KindDescription("DICTIONARY", "USER-PREFIX-MATCH", 1, 4096, kind_id=CONTENT_SEGMENT),
]
SIG = Signature(
    SignatureAndHashAlgorithm(HashAlgorithm.SHA256, 1),
    SignerIdentity(SignerIdentityType.CERT_HASH, HashAlgorithm.SHA256, b"h" * 32),
    b"signature",
)
T0 = 1_700_000_000.0


def _store(
    store: DataStore, resource: bytes, kind: int, key: bytes, signer: FakeSigner
) -> StoreAns | StorageError:
    data = StoredData(int(T0 * 1000), 60, DictionaryEntry(key, DataValue(True, b"v")), SIG)
    req = StoreReq(resource, 0, (StoreKindData(kind, 0, (data,)),))
    return store.store(req, signer, T0, value_signer=lambda _d: signer)


def test_datastore_applies_the_policies_and_refuses_forged_writers() -> None:
    store = DataStore(kinds=KINDS)
    assert isinstance(_store(store, R_SWARM, SWARM_PEERS, tracker_key(N_T1), T1), StoreAns)
    assert isinstance(_store(store, R_SWARM, SWARM_PEERS, tracker_key(N_T2), T2), StoreAns)
    # Tracker 2 tries to overwrite tracker 1's entry.
    forged = _store(store, R_SWARM, SWARM_PEERS, tracker_key(N_T1), T2)
    assert isinstance(forged, StorageError) and forged.code == ErrorCode.FORBIDDEN
    assert isinstance(_store(store, R_SEG, CONTENT_SEGMENT, K_SEG, ALICE), StoreAns)
    forged = _store(store, R_SEG, CONTENT_SEGMENT, K_SEG, MALLORY)
    assert isinstance(forged, StorageError) and forged.code == ErrorCode.FORBIDDEN
