"""RELOAD storage for one node (RFC 6940 §7): the data store, its checks, replication and
migration decisions, and persistence.

A :class:`DataStore` holds, per (Resource-ID, Kind-ID), the Kind's data in its data model
(§7.2): SINGLE (one StoredData), ARRAY (index → StoredData) or DICTIONARY (key → StoredData),
and the generation counter of that (resource, Kind) (§7.4.1.1). It is sans-IO (DESIGN.md §3):
the node verifies signatures, routes, and sends the messages; this module answers
Store/Fetch/Stat/Find bodies and says *what* to send when replicating (§10.4) or when the ring
changes (§10.7.3). Nothing here reads a clock.

Decisions (the RFC leaves these to the implementation or is ambiguous):

* ``now`` is wall-clock seconds since 1970 (``time.time()``), not a monotonic clock: expiry
  times are persisted, and a restarted node must age the data it reloads correctly.
* Lifetime counts from when *this* node received the value (§7.4.1.1: a node re-storing data
  "MUST adjust the lifetime value downward to reflect the amount of time the value was stored
  at the peer"), so a value expires at ``now + lifetime``, not at ``storage_time + lifetime``
  (storage_time is the writer's clock, which may be skewed). Fetch, Stat and the
  replication/export helpers report the *remaining* lifetime. A lifetime of 0 is refused with
  Error_Invalid_Message: the value would expire on arrival.
* Generation counter (§7.4.1.1): an original store whose generation_counter is nonzero must
  *equal* the stored counter (the RFC's MUST, "similar to the HTTP ETag"); otherwise the whole
  request fails with Error_Generation_Counter_Too_Low, whose error_info is a StoreAns with the
  current counters and empty replica lists (§7.4.1.2). A successful original store that
  carries at least one value increments the counter of that Kind by exactly 1. A replica
  store sets the counter to the message's value without checking it, and a replica store with
  a counter of 0 is refused with Error_Invalid_Message ("Replica Stores MUST NOT use a
  generation counter of 0").
* Order of the Store checks (§7.4.1.1's list): a Kind-ID twice (Error_Invalid_Message), unknown
  Kinds (Error_Unknown_Kind, all of them listed), then per value: data model, the empty
  signature, the access policy (Error_Forbidden), max-size (Error_Data_Too_Large) and lifetime;
  then the generation counters of the whole request; then, value by value on a copy,
  storage_time (Error_Data_Too_Old) and max-count; last the node-wide bounds. The first
  failure answers and nothing is stored.
* Access control (§7.3): for an original store (replica_number 0) both the signer of every
  StoredData and the signer of the StoreReq must satisfy the Kind's policy. For a replica
  store (replica_number ≠ 0) only the StoredData signers are checked: the StoreReq comes from
  the responsible peer, whose plausibility (it is our predecessor and responsible for the
  Resource-ID, §10.4) is a topology question the node answers before calling :meth:`store`.
  The node passes the StoredData signers it verified through ``value_signer``; without it an
  original store takes the StoreReq signer as every value's signer (a node storing its own
  data) and a replica store checks no value signer (the responsible peer checked them when it
  accepted the original store). Values signed with identity type "none" or algorithm {0, 0}
  are refused with Error_Forbidden (§7.4.1.1: only synthesized data may use them).
* storage_time (§7.4.1.1: "greater than that of any values which would be replaced"): an
  original store must be strictly newer than the value it replaces (else Error_Data_Too_Old);
  a replica store may also carry an *equal* storage_time, so that re-replication and data
  migration of unchanged data is idempotent.
* Limits: ``max-size`` bounds the length of each DataValue's value; ``max-count`` bounds the
  number of values held for a (resource, Kind) after the store, tombstones included (they
  occupy storage until their lifetime ends; a delete of an existing value replaces it and so
  never grows the count). The RFC defines one code for both, Error_Data_Too_Large; the node-wide
  bounds (``max_bytes``, ``max_entries``) answer it too.
* Deletion (§7.4.1.3) stores a value with exists=False: it is kept, fetched, replicated and
  counted like any value until its lifetime ends (a tombstone).
* Arrays: a store at index 0xffffffff appends after the highest index held (tombstones
  included). Fetch synthesizes nonexistent values (§7.4.2.2: identity "none", algorithm {0, 0},
  empty signature) for the gaps of a requested range, but only when the range it answers spans
  at most :data:`MAX_SYNTHESIZED_RANGE` indices; beyond that only the stored values are
  returned, so a sparse array cannot make one Fetch synthesize billions of entries. An
  ArrayRange's last index of 0xffffffff (-1 as the wire's int32) means the final element.
* Find (§7.4.4): for each Kind, the smallest Resource-ID held (with at least one value that
  exists) that is ≥ the requested one, without wrapping round the ring, so that the walk
  R_n+1 = nearest(1 + R_n) ends; none gives an empty Resource-ID.
* Stat hashes the value with SHA-256 "including its 4 leading length bytes" (§7.4.3.2).
* Persistence: sqlite3 in WAL mode with ``synchronous=NORMAL`` (every successful store, delete,
  expiry and drop is committed before the call returns; durable across a process crash, the
  last commits may be lost on power loss). A StoredData is kept as its wire encoding
  (:func:`reload.wire.encode_stored_data`). A database that cannot be opened or read (corrupt
  file, foreign schema, undecodable row) is logged, moved aside as ``<name>.corrupt`` and
  replaced by a fresh, empty store; :attr:`DataStore.recovered_from` says why.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import math
import sqlite3
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from reload import wire
from reload.access import ResourceIdFunction, Signer, check_access, chord_resource_id
from reload.config import KindDescription
from reload.messages import (
    ArrayEntry,
    ArrayEntryMeta,
    ArrayRange,
    DataModel,
    DataValue,
    DictionaryEntry,
    DictionaryEntryMeta,
    ErrorCode,
    FetchAns,
    FetchKindResponse,
    FetchReq,
    FindAns,
    FindKindData,
    FindReq,
    HashAlgorithm,
    MetaData,
    MetaDataValue,
    ReloadDecodeError,
    Signature,
    SignatureAndHashAlgorithm,
    SignerIdentity,
    SignerIdentityType,
    StatAns,
    StatKindResponse,
    StatReq,
    StoreAns,
    StoredData,
    StoredDataSpecifier,
    StoredDataValue,
    StoredMetaData,
    StoreKindData,
    StoreKindResponse,
    StoreReq,
)
from reload.transactions import parse_unknown_kinds, unknown_kind

__all__ = [
    "APPEND_INDEX",
    "MAX_SYNTHESIZED_RANGE",
    "DataStore",
    "DerivedFetch",
    "KindLookup",
    "StorageError",
    "StoragePersistenceError",
    "decode_unknown_kinds",
    "encode_store_ans",
    "encode_unknown_kinds",
    "synthetic_signature",
]

_log = logging.getLogger(__name__)

#: §7.4.1.1: a store at this array index appends.
APPEND_INDEX: Final = 0xFFFFFFFF
#: The highest index an array can hold (0xffffffff is the append marker).
_MAX_ARRAY_INDEX: Final = 0xFFFFFFFE
#: Fetch synthesizes gap values only for a range of at most this many indices (see module doc).
MAX_SYNTHESIZED_RANGE: Final = 4096
#: Kind-IDs an Error_Unknown_Kind error_info can carry: KindId unknown_kinds<0..2^8-1>.
#: user_version of our sqlite schema; another value is a foreign database.
_SCHEMA_VERSION: Final = 1

#: Looks up a Kind's description by Kind-ID (``OverlayConfiguration.kind`` fits).
KindLookup = Callable[[int], KindDescription | None]
#: A usage's derived fetch for one Kind (:meth:`DataStore.set_derived_fetch`): called with the
#: store, the Resource-ID, the values a Fetch of that Kind selected there and ``now``; returns
#: the values to answer with. It may read the store (:meth:`DataStore.kind_values`), never
#: change it.
DerivedFetch = Callable[["DataStore", bytes, list[StoredData], float], list[StoredData]]

_Key = int | bytes  # b"" for SINGLE, the index for ARRAY, the key for DICTIONARY


def synthetic_signature() -> Signature:
    """The empty signature of a synthesized nonexistent value (§7.4.2.2): identity type
    "none", SignatureAndHashAlgorithm {0, 0}, zero-length signature value."""
    return Signature(
        SignatureAndHashAlgorithm(hash=HashAlgorithm.NONE, signature=0),
        SignerIdentity(SignerIdentityType.NONE),
        b"",
    )


def encode_unknown_kinds(kinds: Sequence[int]) -> bytes:
    """error_info of Error_Unknown_Kind (§7.4.1.2); see :func:`reload.transactions.unknown_kind`."""
    return unknown_kind(list(kinds))[1]


def decode_unknown_kinds(info: bytes) -> tuple[int, ...]:
    """The Kind-IDs of an Error_Unknown_Kind error_info."""
    try:
        return tuple(parse_unknown_kinds(info))
    except ValueError as exc:
        raise ReloadDecodeError(f"{exc} (§7.4.1.2)") from exc


def encode_store_ans(answer: StoreAns) -> bytes:
    """A StoreAns body (§7.4.1.2), the error_info of Error_Generation_Counter_Too_Low.

    Written with struct because reload.wire exposes no body-only encoder; the test suite
    checks it byte for byte against the codec's STORE_ANS definition.
    """
    parts = []
    for response in answer.kind_responses:
        replicas = b"".join(response.replicas)
        parts.append(
            struct.pack(">IQH", response.kind, response.generation_counter, len(replicas))
            + replicas
        )
    body = b"".join(parts)
    return struct.pack(">H", len(body)) + body


@dataclass(frozen=True, slots=True)
class StorageError:
    """A refused request: the ErrorResponse (§6.3.3.1) the node answers with.

    ``info`` is the error_info on the wire: the unknown Kind-ID list for Error_Unknown_Kind,
    a StoreAns for Error_Generation_Counter_Too_Low, UTF-8 ``reason`` otherwise.
    """

    code: ErrorCode
    reason: str
    info: bytes = b""
    unknown_kinds: tuple[int, ...] = ()
    answer: StoreAns | None = None

    @classmethod
    def text(cls, code: ErrorCode, reason: str) -> StorageError:
        return cls(code, reason, reason.encode("utf-8")[:0xFFFF])


class StoragePersistenceError(OSError):
    """The sqlite database refused a write; the in-memory store is unchanged."""


@dataclass(slots=True)
class _Entry:
    data: StoredData
    expires: float  # wall-clock seconds: received time + lifetime


@dataclass(slots=True)
class _KindState:
    model: DataModel
    generation: int = 0
    entries: dict[_Key, _Entry] = field(default_factory=dict)


def _data_value(value: StoredDataValue) -> DataValue:
    return value if isinstance(value, DataValue) else value.value


def _entry_size(key: _Key, data: StoredData) -> int:
    """What an entry costs against ``max_bytes``: its value and its dictionary key."""
    return len(_data_value(data.value).value) + (len(key) if isinstance(key, bytes) else 0)


def _model_of(value: StoredDataValue) -> DataModel:
    if isinstance(value, DataValue):
        return DataModel.SINGLE
    if isinstance(value, ArrayEntry):
        return DataModel.ARRAY
    return DataModel.DICTIONARY


def _key_blob(key: _Key) -> bytes:
    return struct.pack(">I", key) if isinstance(key, int) else key


def _remaining(entry: _Entry, now: float) -> int:
    """Seconds of lifetime left, never more than the value arrived with (clock steps back)."""
    return min(entry.data.lifetime, max(0, math.ceil(entry.expires - now)))


class DataStore:
    """The stored data of one node (§7), optionally persisted to sqlite (``path``).

    ``kinds`` is the overlay's Kind descriptions (an iterable) or a lookup function such as
    ``OverlayConfiguration.kind`` (consulted on every request, so ConfigUpdate takes effect).
    ``max_bytes`` and ``max_entries`` bound what the whole node holds.
    """

    def __init__(
        self,
        node_id_length: int = 16,
        kinds: Iterable[KindDescription] | KindLookup = (),
        path: Path | str | None = None,
        *,
        resource_id_function: ResourceIdFunction = chord_resource_id,
        max_bytes: int = 256 * 1024 * 1024,
        max_entries: int = 1_000_000,
    ) -> None:
        self.node_id_length = node_id_length
        if callable(kinds):
            self._lookup: KindLookup = kinds
        else:
            table = {k.resolved_kind_id(): k for k in kinds}
            self._lookup = table.get
        self.resource_id_function = resource_id_function
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._data: dict[bytes, dict[int, _KindState]] = {}
        self._heap: list[tuple[float, bytes, int, _Key]] = []
        self.total_bytes = 0
        self.entry_count = 0
        self.path = Path(path) if path is not None else None
        #: Why the database at ``path`` was discarded on open (None: it was fine or new).
        self.recovered_from: str | None = None
        self._db: sqlite3.Connection | None = None
        self._derived: dict[int, DerivedFetch] = {}
        if self.path is not None:
            self._open_database(self.path)

    @classmethod
    def open(
        cls,
        path: Path | str,
        kinds: Iterable[KindDescription] | KindLookup = (),
        node_id_length: int = 16,
        *,
        resource_id_function: ResourceIdFunction = chord_resource_id,
        max_bytes: int = 256 * 1024 * 1024,
        max_entries: int = 1_000_000,
    ) -> DataStore:
        """The store persisted at ``path``, with the data, generation counters and tombstones
        it had (a new or corrupt file gives an empty store)."""
        return cls(
            node_id_length,
            kinds,
            path,
            resource_id_function=resource_id_function,
            max_bytes=max_bytes,
            max_entries=max_entries,
        )

    def close(self) -> None:
        """Close the database (the in-memory store stays usable, unpersisted)."""
        if self._db is not None:
            self._db.close()
            self._db = None

    # -----------------------------------------------------------------------------------------
    # Kinds
    # -----------------------------------------------------------------------------------------

    def _kind(self, kind_id: int) -> tuple[KindDescription, DataModel] | None:
        description = self._lookup(kind_id)
        if description is None:
            return None
        try:
            return description, DataModel(description.data_model)
        except ValueError:  # a data-model extension we do not implement: an unknown Kind
            return None

    def _unknown(self, kind_ids: Iterable[int]) -> StorageError | None:
        unknown = tuple(dict.fromkeys(k for k in kind_ids if self._kind(k) is None))
        if not unknown:
            return None
        reason = f"unknown Kind-ID(s) {', '.join(hex(k) for k in unknown)}"
        return StorageError(
            ErrorCode.UNKNOWN_KIND, reason, encode_unknown_kinds(unknown), unknown_kinds=unknown
        )

    # -----------------------------------------------------------------------------------------
    # Store (§7.4.1)
    # -----------------------------------------------------------------------------------------

    def store(
        self,
        req: StoreReq,
        signer: Signer,
        now: float,
        *,
        value_signer: Callable[[StoredData], Signer | None] | None = None,
        replicas: Sequence[bytes] = (),
    ) -> StoreAns | StorageError:
        """Apply a StoreReq atomically (§7.4.1.1: all Kinds or none).

        ``signer`` is the verified signer of the StoreReq, ``value_signer`` gives the verified
        signer of each StoredData (see the module doc), ``replicas`` the Node-IDs the answer
        lists as the replica set (§7.4.1.2).
        """
        self.expire(now)
        seen: set[int] = set()
        for kd in req.kind_data:
            if kd.kind in seen:  # §7.4.1.1: "The same Kind-ID MUST NOT be used twice"
                return StorageError.text(
                    ErrorCode.INVALID_MESSAGE, f"Kind-ID {kd.kind:#x} appears twice"
                )
            seen.add(kd.kind)
        unknown = self._unknown(kd.kind for kd in req.kind_data)
        if unknown is not None:
            return unknown
        replica = req.replica_number != 0
        for kd in req.kind_data:
            description, model = self._kind_checked(kd.kind)
            failure = self._check_values(
                req.resource, kd, description, model, signer, replica, value_signer
            )
            if failure is not None:
                return failure
        failure = self._check_generations(req)
        if failure is not None:
            return failure

        # All structural and authorization checks passed: build the new state of every Kind
        # on copies, so a failure below leaves the store untouched (§7.4.1.1 atomicity).
        new_states: list[tuple[int, _KindState, list[_Key]]] = []
        bytes_delta = 0
        entries_delta = 0
        for kd in req.kind_data:
            description, model = self._kind_checked(kd.kind)
            old = self._data.get(req.resource, {}).get(kd.kind)
            state = _KindState(
                model, old.generation if old else 0, dict(old.entries) if old else {}
            )
            changed: list[_Key] = []
            for value in kd.values:
                result = self._apply_value(state, value, description, replica, now)
                if isinstance(result, StorageError):
                    return result
                key, previous = result
                new = state.entries[key]
                bytes_delta += _entry_size(key, new.data)
                if previous is not None:
                    bytes_delta -= _entry_size(key, previous.data)
                else:
                    entries_delta += 1
                changed.append(key)
            if len(state.entries) > description.max_count:
                return StorageError.text(
                    ErrorCode.DATA_TOO_LARGE,
                    f"Kind-ID {kd.kind:#x} would hold {len(state.entries)} values, "
                    f"max-count is {description.max_count}",
                )
            if replica:
                state.generation = kd.generation_counter
            elif kd.values:
                state.generation += 1
            new_states.append((kd.kind, state, changed))
        if self.total_bytes + bytes_delta > self.max_bytes:
            return StorageError.text(ErrorCode.DATA_TOO_LARGE, "the node's storage is full")
        if self.entry_count + entries_delta > self.max_entries:
            return StorageError.text(ErrorCode.DATA_TOO_LARGE, "the node holds too many values")

        self._persist_store(req.resource, new_states)
        kinds = self._data.setdefault(req.resource, {})
        for kind_id, state, changed in new_states:
            kinds[kind_id] = state
            for key in changed:
                heapq.heappush(self._heap, (state.entries[key].expires, req.resource, kind_id, key))
        self.total_bytes += bytes_delta
        self.entry_count += entries_delta
        return StoreAns(
            tuple(
                StoreKindResponse(kind_id, state.generation, tuple(replicas))
                for kind_id, state, _ in new_states
            )
        )

    def _kind_checked(self, kind_id: int) -> tuple[KindDescription, DataModel]:
        found = self._kind(kind_id)
        assert found is not None  # checked by _unknown first
        return found

    def _check_values(
        self,
        resource: bytes,
        kd: StoreKindData,
        description: KindDescription,
        model: DataModel,
        signer: Signer,
        replica: bool,
        value_signer: Callable[[StoredData], Signer | None] | None,
    ) -> StorageError | None:
        """Data model, signatures' form and access policy of every value of one Kind."""
        for value in kd.values:
            if _model_of(value.value) is not model:
                return StorageError.text(
                    ErrorCode.INVALID_MESSAGE,
                    f"Kind-ID {kd.kind:#x} is {model.value}, not {_model_of(value.value).value}",
                )
            sig = value.signature
            if sig.identity.identity_type == SignerIdentityType.NONE or (
                sig.algorithm.hash,
                sig.algorithm.signature,
            ) == (0, 0):
                # §7.4.1.1: only synthesized data may carry the empty signature.
                return StorageError.text(
                    ErrorCode.FORBIDDEN, "stored data signed with identity none / {0, 0}"
                )
            key = value.value.key if isinstance(value.value, DictionaryEntry) else None
            signers: list[Signer] = []
            if value_signer is not None:
                value_signer_found = value_signer(value)
                if value_signer_found is None:
                    return StorageError.text(ErrorCode.FORBIDDEN, "stored data has no signer")
                signers.append(value_signer_found)
            elif not replica:
                signers.append(signer)
            if not replica and value_signer is not None:
                signers.append(signer)  # §7.3: the StoreReq signer too, for originals
            for who in signers:
                decision = check_access(
                    description.access_control,
                    resource,
                    who,
                    resource_id_function=self.resource_id_function,
                    dictionary_key=key,
                    max_node_multiple=description.max_node_multiple,
                )
                if not decision:
                    return StorageError.text(ErrorCode.FORBIDDEN, decision.reason)
            data_value = _data_value(value.value)
            if len(data_value.value) > description.max_size:
                return StorageError.text(
                    ErrorCode.DATA_TOO_LARGE,
                    f"value of {len(data_value.value)} bytes, max-size is {description.max_size}",
                )
            if value.lifetime == 0:
                return StorageError.text(
                    ErrorCode.INVALID_MESSAGE, "lifetime 0: expired on arrival"
                )
        return None

    def _check_generations(self, req: StoreReq) -> StorageError | None:
        """§7.4.1.1 generation counters, for the whole request."""
        stored = self._data.get(req.resource, {})
        if req.replica_number != 0:
            for kd in req.kind_data:
                if kd.generation_counter == 0:
                    return StorageError.text(
                        ErrorCode.INVALID_MESSAGE, "a replica store with generation counter 0"
                    )
            return None
        current = {
            kd.kind: stored[kd.kind].generation if kd.kind in stored else 0 for kd in req.kind_data
        }
        if all(kd.generation_counter in (0, current[kd.kind]) for kd in req.kind_data):
            return None
        answer = StoreAns(tuple(StoreKindResponse(k, g) for k, g in current.items()))
        return StorageError(
            ErrorCode.GENERATION_COUNTER_TOO_LOW,
            "generation counter does not match the stored one",
            encode_store_ans(answer),
            answer=answer,
        )

    def _apply_value(
        self,
        state: _KindState,
        value: StoredData,
        description: KindDescription,
        replica: bool,
        now: float,
    ) -> tuple[_Key, _Entry | None] | StorageError:
        """Put one value into a working copy; returns its key and the entry it replaced."""
        key: _Key
        if isinstance(value.value, ArrayEntry):
            index = value.value.index
            if index == APPEND_INDEX:
                # §7.4.1.1: "places the new value at the end of the array"; the stored
                # StoredData carries the real index (the signature covers index 0).
                ints = [k for k in state.entries if isinstance(k, int)]
                index = max(ints) + 1 if ints else 0
                if index > _MAX_ARRAY_INDEX:
                    return StorageError.text(ErrorCode.DATA_TOO_LARGE, "the array is full")
                value = replace(value, value=ArrayEntry(index, value.value.value))
            key = index
        elif isinstance(value.value, DictionaryEntry):
            key = value.value.key
        else:
            key = b""
        previous = state.entries.get(key)
        if previous is not None:
            older = value.storage_time < previous.data.storage_time
            same = value.storage_time == previous.data.storage_time
            if older or (same and not replica):
                return StorageError.text(
                    ErrorCode.DATA_TOO_OLD,
                    f"storage_time {value.storage_time} is not newer than the stored "
                    f"{previous.data.storage_time}",
                )
        state.entries[key] = _Entry(value, now + value.lifetime)
        return key, previous

    # -----------------------------------------------------------------------------------------
    # Fetch (§7.4.2), Stat (§7.4.3), Find (§7.4.4)
    # -----------------------------------------------------------------------------------------

    def fetch(self, req: FetchReq, now: float) -> FetchAns | StorageError:
        """The values the specifiers select, one FetchKindResponse per specifier (§7.4.2.2),
        passed through the Kind's derived fetch when a usage registered one."""
        selected = self._select(req.resource, req.specifiers, now)
        if isinstance(selected, StorageError):
            return selected
        if self._derived:
            for i, (spec, (kind, generation, values)) in enumerate(
                zip(req.specifiers, selected, strict=True)
            ):
                rule = self._derived.get(kind)
                # A conditional fetch (§7.4.2.1: nonzero generation) is about the stored
                # values alone; derived values carry no generation of their own.
                if rule is not None and spec.generation == 0:
                    selected[i] = (kind, generation, self._derive(rule, req.resource, values, now))
        return FetchAns(
            tuple(
                FetchKindResponse(kind, generation, tuple(values))
                for kind, generation, values in selected
            )
        )

    # -----------------------------------------------------------------------------------------
    # Derived fetch: a usage's rule adds values of one Kind from other data the node holds
    # -----------------------------------------------------------------------------------------

    def set_derived_fetch(self, kind_id: int, rule: DerivedFetch | None) -> None:
        """Register (None: remove) the usage rule that answers Fetches of ``kind_id``.

        The core knows no usage: a usage whose answer is computed from more than the values
        stored at the Resource-ID registers that computation here (docs/usages.md: SWARM-PEERS
        answers include the PEER-BATCH entries the node holds). Stat, Find, replication and
        migration see only the stored values."""
        if rule is None:
            self._derived.pop(kind_id, None)
        else:
            self._derived[kind_id] = rule

    def _derive(
        self, rule: DerivedFetch, resource: bytes, values: list[StoredData], now: float
    ) -> list[StoredData]:
        try:
            return list(rule(self, resource, values, now))
        except Exception:  # a usage's bug must not take Fetch down: the stored values stand
            _log.exception("derived fetch failed at %s", resource.hex())
            return values

    def kind_values(self, kind_id: int, now: float) -> list[tuple[bytes, StoredData]]:
        """Every live value of ``kind_id`` this node holds (originals and replicas) with its
        Resource-ID and remaining lifetime, tombstones included, in Resource-ID order."""
        self.expire(now)
        out: list[tuple[bytes, StoredData]] = []
        for resource in sorted(r for r, kinds in self._data.items() if kind_id in kinds):
            state = self._data[resource][kind_id]
            for key in sorted(state.entries, key=_sort_key):
                out.append((resource, _reported(state.entries[key], now)))
        return out

    def stat(self, req: StatReq, now: float) -> StatAns | StorageError:
        """Metadata of what Fetch would return (§7.4.3.2)."""
        selected = self._select(req.resource, req.specifiers, now)
        if isinstance(selected, StorageError):
            return selected
        return StatAns(
            tuple(
                StatKindResponse(kind, generation, tuple(_meta(v) for v in values))
                for kind, generation, values in selected
            )
        )

    def _select(
        self, resource: bytes, specifiers: Sequence[StoredDataSpecifier], now: float
    ) -> list[tuple[int, int, list[StoredData]]] | StorageError:
        self.expire(now)
        unknown = self._unknown(s.kind for s in specifiers)
        if unknown is not None:  # §7.4.2.1: SHOULD reject unknown Kinds
            return unknown
        out: list[tuple[int, int, list[StoredData]]] = []
        for spec in specifiers:
            _, model = self._kind_checked(spec.kind)
            state = self._data.get(resource, {}).get(spec.kind)
            generation = state.generation if state else 0
            if spec.generation != 0 and spec.generation == generation:
                out.append((spec.kind, generation, []))  # §7.4.2.1: the requester is current
                continue
            entries = state.entries if state else {}
            values: list[_Entry | StoredDataValue]
            if model is DataModel.SINGLE:
                values = [entries.get(b"", DataValue(False))]
            elif model is DataModel.ARRAY:
                array = _select_array(entries, spec.indices)
                if isinstance(array, StorageError):
                    return array
                values = array
            else:
                if spec.keys:
                    values = [
                        entries.get(k, DictionaryEntry(k, DataValue(False)))
                        for k in dict.fromkeys(spec.keys)
                    ]
                else:  # §7.4.2.1: no keys is a wildcard fetch
                    values = [
                        entries[k] for k in sorted(k for k in entries if isinstance(k, bytes))
                    ]
            out.append((spec.kind, generation, [_reported(v, now) for v in values]))
        return out

    def find(self, req: FindReq, now: float | None = None) -> FindAns | StorageError:
        """For each Kind, the smallest Resource-ID held ≥ ``req.resource`` (see module doc)."""
        if now is not None:
            self.expire(now)
        if len(set(req.kinds)) != len(req.kinds):  # §7.4.4.1: each Kind-ID only once
            return StorageError.text(ErrorCode.INVALID_MESSAGE, "a Kind-ID appears twice")
        unknown = self._unknown(req.kinds)
        if unknown is not None:
            return unknown
        results = []
        for kind in req.kinds:
            candidates = [
                resource
                for resource, kinds in self._data.items()
                if kind in kinds
                and resource >= req.resource
                and len(resource) == len(req.resource)
                and any(_data_value(e.data.value).exists for e in kinds[kind].entries.values())
            ]
            results.append(FindKindData(kind, min(candidates) if candidates else b""))
        return FindAns(tuple(results))

    # -----------------------------------------------------------------------------------------
    # Expiry (§7.4.1.3: tombstones age out like any value)
    # -----------------------------------------------------------------------------------------

    def next_expiry(self) -> float | None:
        """When the next value expires (for the node's timer), or None."""
        while self._heap:
            expires, resource, kind, key = self._heap[0]
            entry = self._data.get(resource, {}).get(kind)
            current = entry.entries.get(key) if entry else None
            if current is not None and current.expires == expires:
                return expires
            heapq.heappop(self._heap)  # superseded by a later store, or dropped
        return None

    def expire(self, now: float) -> int:
        """Remove every value whose lifetime has ended; returns how many."""
        removed: list[tuple[bytes, int, _Key]] = []
        while (expires := self.next_expiry()) is not None and expires <= now:
            _, resource, kind, key = heapq.heappop(self._heap)
            kinds = self._data[resource]
            state = kinds[kind]
            entry = state.entries.pop(key)
            self.total_bytes -= _entry_size(key, entry.data)
            self.entry_count -= 1
            removed.append((resource, kind, key))
            if not state.entries:  # no data left: the generation counter goes too
                del kinds[kind]
                if not kinds:
                    del self._data[resource]
        if removed and self._db is not None:
            try:
                self._write(
                    lambda db: (
                        db.executemany(
                            "DELETE FROM items WHERE resource=? AND kind=? AND key=?",
                            [(r, k, _key_blob(key)) for r, k, key in removed],
                        ),
                        db.execute(
                            "DELETE FROM generations WHERE NOT EXISTS (SELECT 1 FROM items "
                            "WHERE items.resource=generations.resource "
                            "AND items.kind=generations.kind)"
                        ),
                    )
                )
            except StoragePersistenceError:
                # Harmless: the rows carry their expiry time, so a reload expires them again.
                _log.warning("expired values stay on disk until the next expiry after reload")
        return len(removed)

    # -----------------------------------------------------------------------------------------
    # Replication (§10.4) and migration (§10.7.3) decisions
    # -----------------------------------------------------------------------------------------

    def resource_ids(self) -> list[bytes]:
        """Every Resource-ID held, sorted."""
        return sorted(self._data)

    def resources_in(self, start_exclusive: bytes, end_inclusive: bytes) -> list[bytes]:
        """The Resource-IDs held in the ring interval (start, end] (§10.1: a peer is
        responsible for (predecessor, self]); start == end is the whole ring."""
        if start_exclusive == end_inclusive:
            return self.resource_ids()
        start = int.from_bytes(start_exclusive, "big")
        end = int.from_bytes(end_inclusive, "big")
        out = []
        for resource in sorted(self._data):
            r = int.from_bytes(resource, "big")
            inside = start < r <= end if start < end else (r > start or r <= end)
            if inside:
                out.append(resource)
        return out

    def export(
        self,
        resource_ids: Iterable[bytes],
        now: float,
        *,
        replica_number: int = 1,
        kinds: Iterable[int] | None = None,
    ) -> list[StoreReq]:
        """StoreReqs that hand the data of ``resource_ids`` to another peer: a new responsible
        peer after a join or a leave, or a new replica (§10.7.3).

        They are replica stores (replica_number ≠ 0) so that the receiver takes our
        generation counters and does not re-run the StoreReq-signer access check against us
        (we are not the writer); each value keeps its writer's signature, and its lifetime is
        what remains of it here (§7.4.1.1).
        """
        if replica_number == 0:
            raise ValueError("exported data is a replica store: replica_number must be nonzero")
        wanted = set(kinds) if kinds is not None else None
        self.expire(now)
        out = []
        for resource in resource_ids:
            held = self._data.get(resource)
            if not held:
                continue
            kind_data = []
            for kind_id in sorted(held):
                if wanted is not None and kind_id not in wanted:
                    continue
                state = held[kind_id]
                values = tuple(
                    replace(e.data, lifetime=_remaining(e, now))
                    for _, e in sorted(state.entries.items(), key=lambda item: _sort_key(item[0]))
                    if _remaining(e, now) > 0
                )
                if values:
                    kind_data.append(StoreKindData(kind_id, state.generation, values))
            if kind_data:
                out.append(StoreReq(resource, replica_number, tuple(kind_data)))
        return out

    def replicate(
        self, resource_id: bytes, now: float, kinds: Iterable[int] | None = None
    ) -> list[StoreReq]:
        """§10.4: after an original store, the responsible peer Stores the data to its
        successor (replica_number 1) and that peer's successor (replica_number 2). Returns
        those two requests (none if nothing is held); the node addresses them."""
        wanted = list(kinds) if kinds is not None else None
        exported = self.export([resource_id], now, replica_number=1, kinds=wanted)
        if not exported:
            return []
        first = exported[0]
        return [first, replace(first, replica_number=2)]

    def drop(self, resource_ids: Iterable[bytes]) -> None:
        """Forget these resources (e.g. once a new responsible peer and its replicas hold
        them, §10.7.3); their heap entries go stale and are skipped."""
        dropped = [r for r in dict.fromkeys(resource_ids) if r in self._data]
        if not dropped:
            return
        if self._db is not None:
            self._write(
                lambda db: (
                    db.executemany("DELETE FROM items WHERE resource=?", [(r,) for r in dropped]),
                    db.executemany(
                        "DELETE FROM generations WHERE resource=?", [(r,) for r in dropped]
                    ),
                )
            )
        for resource in dropped:
            for state in self._data.pop(resource).values():
                for key, entry in state.entries.items():
                    self.total_bytes -= _entry_size(key, entry.data)
                    self.entry_count -= 1

    def generation(self, resource_id: bytes, kind_id: int) -> int:
        """The generation counter of (resource, Kind); 0 when nothing is held."""
        state = self._data.get(resource_id, {}).get(kind_id)
        return state.generation if state else 0

    # -----------------------------------------------------------------------------------------
    # Persistence (sqlite3, WAL)
    # -----------------------------------------------------------------------------------------

    def _open_database(self, path: Path) -> None:
        try:
            self._db = self._connect_and_load(path)
        except (sqlite3.Error, ReloadDecodeError, ValueError, struct.error) as exc:
            self.recovered_from = f"{type(exc).__name__}: {exc}"
            _log.error("discarding storage database %s: %s", path, self.recovered_from)
            self._reset_memory()
            for suffix in ("", "-wal", "-shm"):
                victim = Path(str(path) + suffix)
                if victim.exists():
                    victim.replace(Path(str(path) + suffix + ".corrupt"))
            self._db = self._connect_and_load(path)

    def _reset_memory(self) -> None:
        self._data.clear()
        self._heap.clear()
        self.total_bytes = 0
        self.entry_count = 0

    def _connect_and_load(self, path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(str(path), isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            if version == 0 and not tables:
                db.executescript(
                    "BEGIN;"
                    "CREATE TABLE items (resource BLOB NOT NULL, kind INTEGER NOT NULL,"
                    " key BLOB NOT NULL, model TEXT NOT NULL, stored BLOB NOT NULL,"
                    " expires REAL NOT NULL, PRIMARY KEY (resource, kind, key));"
                    "CREATE TABLE generations (resource BLOB NOT NULL, kind INTEGER NOT NULL,"
                    " model TEXT NOT NULL, counter INTEGER NOT NULL,"
                    " PRIMARY KEY (resource, kind));"
                    f"PRAGMA user_version={_SCHEMA_VERSION};"
                    "COMMIT;"
                )
            elif version != _SCHEMA_VERSION:
                raise ValueError(f"not a p2pcdn storage database (user_version {version})")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            self._load(db)
        except BaseException:
            db.close()
            raise
        return db

    def _load(self, db: sqlite3.Connection) -> None:
        for resource, kind, model_name, counter in db.execute(
            "SELECT resource, kind, model, counter FROM generations"
        ):
            self._data.setdefault(bytes(resource), {})[int(kind)] = _KindState(
                DataModel(model_name), int(counter)
            )
        for resource, kind, key_blob, model_name, blob, expires in db.execute(
            "SELECT resource, kind, key, model, stored, expires FROM items"
        ):
            model = DataModel(model_name)
            data = wire.decode_stored_data(bytes(blob), model)
            key: _Key
            if model is DataModel.ARRAY:
                (key,) = struct.unpack(">I", bytes(key_blob))
            else:
                key = bytes(key_blob)
            state = self._data.get(bytes(resource), {}).get(int(kind))
            if state is None or state.model is not model or _model_of(data.value) is not model:
                raise ValueError("an item without its generation counter or of another model")
            state.entries[key] = _Entry(data, float(expires))
            heapq.heappush(self._heap, (float(expires), bytes(resource), int(kind), key))
            self.total_bytes += _entry_size(key, data)
            self.entry_count += 1
        for resource in [r for r, kinds in self._data.items() if not kinds]:
            del self._data[resource]
        for kinds in self._data.values():
            for kind_id in [k for k, s in kinds.items() if not s.entries]:
                del kinds[kind_id]  # a counter whose data is gone (an interrupted expiry)

    def _write(self, work: Callable[[sqlite3.Connection], object]) -> None:
        """Run ``work`` in one transaction; on failure roll back and raise."""
        db = self._db
        if db is None:
            return
        try:
            db.execute("BEGIN IMMEDIATE")
            work(db)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            _log.error("storage database write failed: %s", exc)
            raise StoragePersistenceError(str(exc)) from exc

    def _persist_store(
        self, resource: bytes, states: list[tuple[int, _KindState, list[_Key]]]
    ) -> None:
        if self._db is None:
            return
        generation_rows = [(resource, k, s.model.value, s.generation) for k, s, _ in states]
        item_rows = [
            (
                resource,
                kind_id,
                _key_blob(key),
                state.model.value,
                wire.encode_stored_data(state.entries[key].data),
                state.entries[key].expires,
            )
            for kind_id, state, changed in states
            for key in dict.fromkeys(changed)
        ]
        self._write(
            lambda db: (
                db.executemany(
                    "INSERT OR REPLACE INTO generations VALUES (?, ?, ?, ?)", generation_rows
                ),
                db.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?)", item_rows),
            )
        )


def _sort_key(key: _Key) -> tuple[int, bytes]:
    return (key, b"") if isinstance(key, int) else (0, key)


def _select_array(
    entries: dict[_Key, _Entry], ranges: tuple[ArrayRange, ...] | None
) -> list[_Entry | StoredDataValue] | StorageError:
    """The array values a list of ArrayRanges selects (§7.4.2.1); None selects all."""
    indices = sorted(k for k in entries if isinstance(k, int))
    if ranges is None:
        return [entries[i] for i in indices]
    if not indices:
        return []
    final = indices[-1]
    spans: list[tuple[int, int]] = []
    for r in ranges:
        last = final if r.last in (-1, APPEND_INDEX) else r.last
        first = r.first
        if first < 0 or last < 0 or first > last:
            return StorageError.text(ErrorCode.INVALID_MESSAGE, f"bad ArrayRange {r}")
        spans.append((first, last))
    ordered = sorted(spans)
    for (_, a_last), (b_first, _) in itertools.pairwise(ordered):
        if b_first <= a_last:  # §7.4.2.1: ranges "MUST NOT overlap"
            return StorageError.text(ErrorCode.INVALID_MESSAGE, "ArrayRanges overlap")
    out: list[_Entry | StoredDataValue] = []
    for first, last in spans:
        last = min(last, final)
        if first > last:
            continue
        if last - first + 1 <= MAX_SYNTHESIZED_RANGE:
            out.extend(
                entries.get(i, ArrayEntry(i, DataValue(False))) for i in range(first, last + 1)
            )
        else:
            out.extend(entries[i] for i in indices if first <= i <= last)
    return out


def _reported(value: _Entry | StoredDataValue, now: float) -> StoredData:
    """A stored value as answered (remaining lifetime), or a synthesized nonexistent one."""
    if isinstance(value, _Entry):
        return replace(value.data, lifetime=_remaining(value, now))
    return StoredData(0, 0, value, synthetic_signature())


def _meta(data: StoredData) -> StoredMetaData:
    """StoredMetaData of a value (§7.4.3.2): SHA-256 over the value with its length bytes."""
    value = _data_value(data.value)
    synthesized = data.signature.identity.identity_type == SignerIdentityType.NONE
    if synthesized:
        meta = MetaData(False, 0, HashAlgorithm.NONE, b"")
    else:
        digest = hashlib.sha256(struct.pack(">I", len(value.value)) + value.value).digest()
        meta = MetaData(value.exists, len(value.value), HashAlgorithm.SHA256, digest)
    metadata: MetaDataValue
    if isinstance(data.value, ArrayEntry):
        metadata = ArrayEntryMeta(data.value.index, meta)
    elif isinstance(data.value, DictionaryEntry):
        metadata = DictionaryEntryMeta(data.value.key, meta)
    else:
        metadata = meta
    return StoredMetaData(data.storage_time, data.lifetime, metadata)
