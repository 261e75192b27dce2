"""The tracker overlay usage at a tracker node (docs/usages.md, draft-xiao-ppsp-reload-
distributed-tracker-03 §3-§6): the PEER-BATCH derived-fetch rule and the values a connection
tracker stores and reads.

Two halves, one place:

* **Responsible node** — :class:`SwarmPeersRule`, registered on the node's
  :class:`reload.storage.DataStore` with :func:`install_swarm_peers_rule`. A connection tracker
  that reports many swarms at once Stores one PEER-BATCH per responsible node (Resource-ID =
  that node's Node-ID) instead of one SWARM-PEERS per swarm; FIND still needs one Fetch of
  SWARM-PEERS at H(swarm). So the node answering that Fetch adds, per connection tracker, the
  peers the PEER-BATCH entries it holds (originals and replicas, so a successor that took over
  a dead node's range answers too) list for the swarm. Per connection tracker the newest
  entry wins (storage_time, RFC 6940 §6.2: the writer's own clock, and all entries of one
  connection tracker are written by that tracker), so a later SWARM-PEERS Store overrides a
  batch and a later batch overrides older single Stores. A derived entry cannot carry its
  writer's signature (that covers the whole batch at another Resource-ID): it goes out with
  the empty signature of synthesized data (§7.4.2.2) and is vouched for by the responsible
  node's signature on the FetchAns — in the tracker overlay only trackers are enrolled.
* **Connection tracker** — conversions between the PPSP-TP model (:mod:`ppsp.tracker.messages`)
  and :class:`PeerRecord`, the dictionary entries it Stores, and :func:`read_swarm_peers`,
  which turns a FetchAns into records, skipping (and logging) what does not decode: a value in
  the overlay is hostile input like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ppsp.tracker.messages import PeerAddress, PeerInfo, PeerMode, Role
from reload.messages import DataValue, DictionaryEntry, StoredData
from reload.storage import DataStore, synthetic_signature
from reload.usages.kinds import PEER_BATCH, SWARM_PEERS, swarm_peers_resource, tracker_key
from reload.usages.values import (
    MAX_ADDRS,
    MAX_RANGES,
    PeerBatch,
    PeerRecord,
    PeerStatus,
    SwarmPeers,
    UsageDecodeError,
)

__all__ = [
    "SwarmPeersRule",
    "info_of",
    "install_swarm_peers_rule",
    "install_usage_rules",
    "peer_batch_entry",
    "peer_status_entry",
    "read_swarm_peers",
    "record_of",
    "swarm_bytes",
    "swarm_peers_entry",
]

log = logging.getLogger(__name__)

_ROLE_NAMES = {Role.CACHER: "cacher", Role.CSC: "csc", Role.SOURCE: "source"}
_ROLES = {name: role for role, name in _ROLE_NAMES.items()}
_HEX = frozenset("0123456789abcdef")


# --- PPSP-TP model <-> PeerRecord -----------------------------------------------------------


def swarm_bytes(swarm_id: str) -> bytes:
    """The PPSPP swarm ID bytes a PPSP-TP swarm ID string names: the inverse of
    :func:`ppsp.tracker.messages.swarm_id_hex` (lowercase hex). Any other string (RFC 7846
    §3.1 swarm IDs are opaque strings) stands for its UTF-8 bytes."""
    if swarm_id and len(swarm_id) % 2 == 0 and _HEX.issuperset(swarm_id):
        return bytes.fromhex(swarm_id)
    return swarm_id.encode("utf-8")


def record_of(
    info: PeerInfo,
    mode: PeerMode,
    ranges: Iterable[tuple[int, int]] | None,
    updated: float,
) -> PeerRecord | None:
    """The PeerRecord of one swarm member; None when it has no address a record can carry
    (a record must let the finder reach the peer).

    A peer without a role is a viewer: "csc". Chunk ranges beyond :data:`MAX_RANGES` are left
    out (the record then claims fewer chunks than held, never more); None (not enumerated)
    gives no ranges, which for a seeder means "everything" as in the tracker (RFC 7846 seeder).
    """
    addrs: list[tuple[str, int, str]] = []
    for address in info.addresses:
        if len(addrs) >= MAX_ADDRS:
            break
        # PPSPP runs over UDP (RFC 7574 §1); PeerAddress carries no transport.
        candidate = (address.ip, address.port, "udp")
        try:
            PeerRecord(info.peer_id, addrs=(candidate,))
        except ValueError:
            continue  # not an IP address (a name, garbage): a record carries IPs only
        addrs.append(candidate)
    if not addrs:
        return None
    runs: tuple[tuple[int, int], ...] = ()
    if ranges is not None:
        runs = tuple((int(s), int(e)) for s, e in _first(ranges, MAX_RANGES))
    try:
        return PeerRecord(
            peer=info.peer_id,
            role=_ROLE_NAMES.get(info.role, "csc") if info.role is not None else "csc",
            area=info.area,
            addrs=tuple(addrs),
            mode="seeder" if mode is PeerMode.SEEDER else "leecher",
            ranges=runs,
            updated=updated,
        )
    except ValueError as exc:  # an identifier the record format bounds tighter
        log.debug("peer %s cannot be published: %s", info.peer_id, exc)
        return None


def _first(items: Iterable[tuple[int, int]], count: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for item in items:
        if len(out) >= count:
            break
        out.append(item)
    return out


def info_of(record: PeerRecord) -> PeerInfo:
    """The PPSP-TP PeerInfo (RFC 7846 §3.2 ppsp_tp_peer_info_t) a FIND lists for a record."""
    return PeerInfo(
        record.peer,
        [PeerAddress(ip, port) for ip, port, _ in record.addrs],
        _ROLES.get(record.role),
        record.area,
    )


# --- the entries a connection tracker Stores --------------------------------------------------


def swarm_peers_entry(node_id: bytes, records: Sequence[PeerRecord]) -> DictionaryEntry:
    """The SWARM-PEERS dictionary entry of connection tracker ``node_id`` (an empty list says
    "none of my peers is in this swarm any more" and overrides its older entries)."""
    value = SwarmPeers(tracker_key(node_id), tuple(records)).encode()
    return DictionaryEntry(tracker_key(node_id), DataValue(True, value))


def peer_batch_entry(
    node_id: bytes, swarms: Mapping[bytes, Sequence[PeerRecord]]
) -> DictionaryEntry:
    """The PEER-BATCH dictionary entry of connection tracker ``node_id``: its peers of every
    listed swarm (an empty list withdraws the swarm, as in :func:`swarm_peers_entry`)."""
    value = PeerBatch(tracker_key(node_id), {s: tuple(r) for s, r in swarms.items()}).encode()
    return DictionaryEntry(tracker_key(node_id), DataValue(True, value))


def peer_status_entry(
    node_id: bytes, peer_id: str, state: str, swarms: int, updated: float
) -> DictionaryEntry:
    """The PEER-STATUS dictionary entry (draft-xiao §5: where a peer's status is kept — the
    key says which connection tracker has it)."""
    value = PeerStatus(peer_id, tracker_key(node_id), state, swarms, updated).encode()
    return DictionaryEntry(tracker_key(node_id), DataValue(True, value))


def read_swarm_peers(
    values: Iterable[StoredData], *, skip: bytes | None = None
) -> tuple[dict[bytes, tuple[PeerRecord, ...]], int]:
    """The records of a SWARM-PEERS FetchAns, per connection tracker Node-ID, and how many
    values were malformed (skipped and logged). ``skip`` leaves out one tracker's own entry
    (its local state is fresher). A value whose ``tracker`` is not its dictionary key is
    malformed: NODE-KEY-MATCH binds the key, not the CBOR inside."""
    out: dict[bytes, tuple[PeerRecord, ...]] = {}
    bad = 0
    for data in values:
        entry = data.value
        if not isinstance(entry, DictionaryEntry) or not entry.value.exists:
            continue
        if skip is not None and entry.key == skip:
            continue
        try:
            decoded = SwarmPeers.decode(entry.value.value)
        except UsageDecodeError as exc:
            bad += 1
            log.warning("ignoring a malformed SWARM-PEERS value of %s: %s", entry.key.hex(), exc)
            continue
        if decoded.tracker != entry.key:
            bad += 1
            log.warning("ignoring a SWARM-PEERS value stored under another tracker's key")
            continue
        out[entry.key] = decoded.peers
    return out, bad


# --- the responsible node: SWARM-PEERS answers include PEER-BATCH entries ----------------------


@dataclass(slots=True)
class _Batch:
    """One decoded PEER-BATCH entry: its records by the SWARM-PEERS Resource-ID of each swarm,
    and the SwarmPeers encodings built from it so far."""

    storage_time: int
    by_resource: dict[bytes, tuple[PeerRecord, ...]]
    encoded: dict[bytes, bytes] = field(default_factory=dict)


class SwarmPeersRule:
    """The derived fetch of SWARM-PEERS (see the module doc), a
    :data:`reload.storage.DerivedFetch`.

    Decoded batches are kept per (Resource-ID, dictionary key) and storage_time, so a Fetch
    costs a dictionary lookup per batch held; a batch is decoded once per version. A batch
    that does not decode, or whose ``tracker`` is not its key, contributes nothing (logged).
    """

    def __init__(self) -> None:
        self._batches: dict[tuple[bytes, bytes], _Batch] = {}
        #: Batches that did not decode (for tests and logs).
        self.malformed = 0

    def __call__(
        self, store: DataStore, resource: bytes, values: list[StoredData], now: float
    ) -> list[StoredData]:
        held = store.kind_values(PEER_BATCH, now)
        if not held and not self._batches:
            return values
        best: dict[bytes, StoredData] = {}
        for data in values:
            if isinstance(data.value, DictionaryEntry):
                best[data.value.key] = data
        live: set[tuple[bytes, bytes]] = set()
        for batch_resource, data in held:
            entry = data.value
            if not isinstance(entry, DictionaryEntry) or not entry.value.exists:
                continue
            key = (batch_resource, entry.key)
            live.add(key)
            batch = self._batches.get(key)
            if batch is None or batch.storage_time != data.storage_time:
                batch = self._decode(store, entry, data.storage_time)
                self._batches[key] = batch
            records = batch.by_resource.get(resource)
            if records is None:
                continue
            current = best.get(entry.key)
            if current is not None and current.storage_time >= data.storage_time:
                continue  # the connection tracker wrote something newer since
            encoded = batch.encoded.get(resource)
            if encoded is None:
                encoded = SwarmPeers(entry.key, records).encode()
                batch.encoded[resource] = encoded
            best[entry.key] = StoredData(
                data.storage_time,
                data.lifetime,
                DictionaryEntry(entry.key, DataValue(True, encoded)),
                synthetic_signature(),
            )
        for gone in [k for k in self._batches if k not in live]:
            del self._batches[gone]
        return [best[k] for k in sorted(best)]

    def _decode(self, store: DataStore, entry: DictionaryEntry, storage_time: int) -> _Batch:
        try:
            batch = PeerBatch.decode(entry.value.value)
            if batch.tracker != entry.key:
                raise UsageDecodeError("tracker is not the dictionary key")
        except UsageDecodeError as exc:
            self.malformed += 1
            log.warning("ignoring a malformed PEER-BATCH value of %s: %s", entry.key.hex(), exc)
            return _Batch(storage_time, {})
        function = store.resource_id_function
        by_resource = {
            swarm_peers_resource(swarm, function): records
            for swarm, records in batch.swarms.items()
        }
        return _Batch(storage_time, by_resource)


def install_swarm_peers_rule(store: DataStore) -> SwarmPeersRule:
    """Register the SWARM-PEERS derived fetch on a node's DataStore (tracker overlay nodes,
    and one-overlay nodes, which carry the tracker Kinds too)."""
    rule = SwarmPeersRule()
    store.set_derived_fetch(SWARM_PEERS, rule)
    return rule


def install_usage_rules(kind_ids: Iterable[int], store: DataStore) -> SwarmPeersRule | None:
    """What every node of an overlay declaring the tracker Kinds must do, whatever else it
    runs (a plain ``p2pcdn overlay`` node of a tracker or one-overlay overlay is a responsible
    node like any tracker): answer SWARM-PEERS Fetches with the PEER-BATCH entries it holds."""
    declared = set(kind_ids)
    if SWARM_PEERS in declared and PEER_BATCH in declared:
        return install_swarm_peers_rule(store)
    return None
