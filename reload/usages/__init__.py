"""The p2pcdn RELOAD usages (docs/usages.md): the tracker overlay Kinds (SWARM-PEERS,
PEER-BATCH, PEER-STATUS, after draft-xiao-ppsp-reload-distributed-tracker) and the storage
overlay Kinds (CONTENT-META, CONTENT-SEGMENT), their CBOR values, Resource-ID rules, segment
verification, overlay configuration and a content client.

One concept, one place: every other module imports Kind-IDs, codecs and Resource-ID rules
from here.
"""

from reload.usages.kinds import (
    CONTENT_META,
    CONTENT_SEGMENT,
    KIND_NAMES,
    PEER_BATCH,
    PEER_STATUS,
    STORAGE_KINDS,
    SWARM_PEERS,
    TRACKER_KINDS,
    check_channel,
    check_user_name,
    content_meta_key,
    content_meta_resource,
    content_segment_key,
    content_segment_resource,
    peer_batch_resource,
    peer_status_resource,
    swarm_peers_resource,
    tracker_key,
)
from reload.usages.values import (
    ChunkSignature,
    ContentMeta,
    ContentSegment,
    MunroSignature,
    PeerBatch,
    PeerRecord,
    PeerStatus,
    SwarmPeers,
    UsageDecodeError,
)

__all__ = [
    "CONTENT_META",
    "CONTENT_SEGMENT",
    "KIND_NAMES",
    "PEER_BATCH",
    "PEER_STATUS",
    "STORAGE_KINDS",
    "SWARM_PEERS",
    "TRACKER_KINDS",
    "ChunkSignature",
    "ContentMeta",
    "ContentSegment",
    "MunroSignature",
    "PeerBatch",
    "PeerRecord",
    "PeerStatus",
    "SwarmPeers",
    "UsageDecodeError",
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
