"""Kind-IDs of the p2pcdn usages and their Resource Name → Resource-ID rules (docs/usages.md).

Every Kind lives in the private Kind-ID range of RFC 6940 §14.6 (0xF0000001–0xFFFFFFFE).
The tracker overlay (after draft-xiao-ppsp-reload-distributed-tracker) holds SWARM-PEERS,
PEER-BATCH and PEER-STATUS; the storage overlay (after draft-zong-ppsp-reload-p2p-cdn-style
content storage) holds CONTENT-META and CONTENT-SEGMENT. One-overlay mode declares all five in
one overlay: the Kind-IDs are distinct, so nothing else changes.

Resource-IDs are ``H(Resource Name)`` with H the overlay's hash (RFC 6940 §7.3; CHORD-RELOAD's
is SHA-1 truncated to 128 bits, §10.2, :func:`reload.access.chord_resource_id`), except
PEER-BATCH, whose Resource-ID *is* the Node-ID of the tracker responsible for the batch (a Chord
peer is responsible for its own Node-ID, §10), so that one Store reaches exactly that node.

Names are checked here, once: a source user name and a channel name contain no "/" (it
separates them in the Resource Name, and USER-PREFIX-MATCH relies on that split being unique,
see :mod:`reload.access`).
"""

from __future__ import annotations

from typing import Final

from reload.access import ResourceIdFunction, chord_resource_id

__all__ = [
    "CONTENT_META",
    "CONTENT_SEGMENT",
    "KIND_NAMES",
    "MAX_NAME_BYTES",
    "PEER_BATCH",
    "PEER_STATUS",
    "STORAGE_KINDS",
    "SWARM_PEERS",
    "TRACKER_KINDS",
    "check_channel",
    "check_user_name",
    "content_meta_key",
    "content_meta_resource",
    "content_segment_key",
    "content_segment_resource",
    "peer_batch_resource",
    "peer_status_resource",
    "swarm_peers_resource",
    "tracker_key",
]

#: Tracker overlay: the peers a connection tracker knows for a swarm (dictionary key: the
#: connection tracker's Node-ID), at H(swarm ID).
SWARM_PEERS: Final = 0xF0000001
#: Tracker overlay: one connection tracker's batch availability report for every swarm a
#: responsible tracker node is responsible for, at Resource-ID = that node's Node-ID.
PEER_BATCH: Final = 0xF0000002
#: Tracker overlay: a PPSP peer's status (draft-xiao §4: peer status), at H(PPSP-TP Peer-ID).
PEER_STATUS: Final = 0xF0000003
#: Storage overlay: a channel's content metadata, at H("<source user>/<channel>").
CONTENT_META: Final = 0xF0000010
#: Storage overlay: one segment of chunks, at H("<source user>/<channel>/<segment index>").
CONTENT_SEGMENT: Final = 0xF0000011

KIND_NAMES: Final[dict[int, str]] = {
    SWARM_PEERS: "SWARM-PEERS",
    PEER_BATCH: "PEER-BATCH",
    PEER_STATUS: "PEER-STATUS",
    CONTENT_META: "CONTENT-META",
    CONTENT_SEGMENT: "CONTENT-SEGMENT",
}
TRACKER_KINDS: Final = (SWARM_PEERS, PEER_BATCH, PEER_STATUS)
STORAGE_KINDS: Final = (CONTENT_META, CONTENT_SEGMENT)

#: Longest user or channel name (UTF-8 bytes): a Resource Name stays far below any limit.
MAX_NAME_BYTES: Final = 255


def _check_name(name: str, what: str) -> bytes:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} must be a non-empty string")
    if "/" in name:
        raise ValueError(f"{what} {name!r} contains '/', the Resource Name separator")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise ValueError(f"{what} {name!r} contains a control character")
    encoded = name.encode("utf-8")
    if len(encoded) > MAX_NAME_BYTES:
        raise ValueError(f"{what} is longer than {MAX_NAME_BYTES} bytes")
    return encoded


def check_user_name(user: str) -> str:
    """A source user name usable in a content Resource Name (raises ValueError)."""
    _check_name(user, "user name")
    return user


def check_channel(channel: str) -> str:
    """A channel name usable in a content Resource Name (raises ValueError)."""
    _check_name(channel, "channel name")
    return channel


def _check_index(index: int) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 1 << 63:
        raise ValueError(f"segment index {index!r} is not an integer in 0..2^63-1")
    return index


# --- tracker overlay ---------------------------------------------------------------------


def swarm_peers_resource(
    swarm_id: bytes, resource_id_function: ResourceIdFunction = chord_resource_id
) -> bytes:
    """SWARM-PEERS Resource-ID: H(swarm ID), the swarm ID being the PPSPP swarm ID bytes (root
    hash for static content, the live public key swarm ID for live, RFC 7574 §6.1)."""
    if not swarm_id:
        raise ValueError("empty swarm ID")
    return resource_id_function(bytes(swarm_id))


def peer_batch_resource(responsible_node_id: bytes) -> bytes:
    """PEER-BATCH Resource-ID: the responsible tracker's own Node-ID (no hashing: a Chord peer
    is responsible for its own Node-ID, RFC 6940 §10.3)."""
    if not responsible_node_id:
        raise ValueError("empty Node-ID")
    return bytes(responsible_node_id)


def peer_status_resource(
    peer_id: str, resource_id_function: ResourceIdFunction = chord_resource_id
) -> bytes:
    """PEER-STATUS Resource-ID: H(PPSP-TP Peer-ID in UTF-8)."""
    if not peer_id:
        raise ValueError("empty Peer-ID")
    return resource_id_function(peer_id.encode("utf-8"))


def tracker_key(node_id: bytes) -> bytes:
    """Dictionary key of the three tracker Kinds: the writing connection tracker's Node-ID
    (NODE-KEY-MATCH checks it against the signer's certificate)."""
    if not node_id:
        raise ValueError("empty Node-ID")
    return bytes(node_id)


# --- storage overlay ---------------------------------------------------------------------


def content_meta_key(channel: str) -> bytes:
    """CONTENT-META dictionary key: the channel name (UTF-8)."""
    return _check_name(channel, "channel name")


def content_segment_key(channel: str, index: int) -> bytes:
    """CONTENT-SEGMENT dictionary key: "<channel>/<segment index>" (UTF-8, decimal index)."""
    return _check_name(channel, "channel name") + b"/" + str(_check_index(index)).encode()


def _user_prefixed(user: str, key: bytes) -> bytes:
    # The Resource Name USER-PREFIX-MATCH checks: user name ‖ "/" ‖ dictionary key.
    return _check_name(user, "user name") + b"/" + key


def content_meta_resource(
    user: str, channel: str, resource_id_function: ResourceIdFunction = chord_resource_id
) -> bytes:
    """CONTENT-META Resource-ID: H("<source user>/<channel>")."""
    return resource_id_function(_user_prefixed(user, content_meta_key(channel)))


def content_segment_resource(
    user: str,
    channel: str,
    index: int,
    resource_id_function: ResourceIdFunction = chord_resource_id,
) -> bytes:
    """CONTENT-SEGMENT Resource-ID: H("<source user>/<channel>/<segment index>")."""
    return resource_id_function(_user_prefixed(user, content_segment_key(channel, index)))
