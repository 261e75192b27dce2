"""Storing and fetching content in the storage overlay (docs/usages.md), on top of
:class:`reload.aio.OverlayNode`.

:class:`ContentStore` writes CONTENT-META and CONTENT-SEGMENT values signed by the node's
credentials (so its certificate's user name must be the source user: USER-PREFIX-MATCH) and
reads them back. A segment is returned only once :func:`verify_segment` accepted it. When the
answer from the responsible peer is missing, malformed or fails verification, the Fetch is
sent again to each replica in turn (the responsible peer's successors, RFC 6940 §10.4, found
with :meth:`OverlayNode.replica_set` and addressed with ``fetch(..., at=Node-ID)``), and the
node that answered with bad data is named in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Final, Protocol, TypeVar

from reload.aio import ReloadRequestError
from reload.messages import (
    DataValue,
    DictionaryEntry,
    FetchAns,
    StoreAns,
    StoredDataSpecifier,
    StoredDataValue,
)
from reload.usages.content import SegmentVerificationError, verify_segment
from reload.usages.kinds import (
    CONTENT_META,
    CONTENT_SEGMENT,
    check_user_name,
    content_meta_key,
    content_meta_resource,
    content_segment_key,
    content_segment_resource,
)
from reload.usages.values import ContentMeta, ContentSegment, UsageDecodeError

__all__ = ["ContentNotFoundError", "ContentStore", "OverlayClient", "ReplicasExhaustedError"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_REJECTED: Final = "(rejected)"


class OverlayClient(Protocol):
    """What :class:`ContentStore` uses of :class:`reload.aio.OverlayNode`."""

    async def store(
        self,
        resource_id: bytes,
        kind_id: int,
        values: Sequence[StoredDataValue],
        *,
        lifetime: int | None = None,
        generation: int = 0,
        timeout: float | None = None,
    ) -> StoreAns: ...

    async def fetch(
        self,
        resource_id: bytes,
        specifiers: Sequence[StoredDataSpecifier] | int,
        *,
        at: bytes | None = None,
        timeout: float | None = None,
    ) -> FetchAns: ...

    async def replica_set(
        self, resource_id: bytes, *, count: int | None = None, timeout: float = ...
    ) -> list[bytes]: ...


class ContentNotFoundError(LookupError):
    """No node holding the resource had the value."""


class ReplicasExhaustedError(ContentNotFoundError):
    """Every node asked answered, but none with a value that verifies."""


def _entry(answer: FetchAns, kind: int, key: bytes) -> bytes | None:
    for response in answer.kind_responses:
        if response.kind != kind:
            continue
        for data in response.values:
            value = data.value
            if isinstance(value, DictionaryEntry) and value.key == key and value.value.exists:
                return value.value.value
    return None


class ContentStore:
    """CONTENT-META and CONTENT-SEGMENT through one overlay node.

    ``user_name`` is the user name of the node's certificate: the namespace it writes in.
    ``lifetime`` (seconds) is what stored values live for (RFC 6940 §7.4.1; None: the node's
    default). ``timeout`` bounds each request.
    """

    def __init__(
        self,
        node: OverlayClient,
        user_name: str,
        *,
        lifetime: int | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.node = node
        self.user_name = check_user_name(user_name)
        self.lifetime = lifetime
        self.timeout = timeout
        #: Node-IDs that answered with data that failed decoding or verification.
        self.bad_nodes: list[bytes] = []

    # --- publishing ----------------------------------------------------------------------

    async def put_meta(self, meta: ContentMeta, *, lifetime: int | None = None) -> StoreAns:
        """Store ``meta`` at H("<user>/<channel>"); its ``source`` must be our user name."""
        if meta.source != self.user_name:
            raise ValueError(f"meta.source is {meta.source!r}, this store is {self.user_name!r}")
        resource = content_meta_resource(self.user_name, meta.channel)
        entry = DictionaryEntry(content_meta_key(meta.channel), DataValue(True, meta.encode()))
        return await self.node.store(
            resource,
            CONTENT_META,
            [entry],
            lifetime=lifetime or self.lifetime,
            timeout=self.timeout,
        )

    async def put_segment(
        self, segment: ContentSegment, *, lifetime: int | None = None
    ) -> StoreAns:
        """Store ``segment`` at H("<user>/<channel>/<index>"); replication is the overlay's."""
        resource = content_segment_resource(self.user_name, segment.channel, segment.index)
        key = content_segment_key(segment.channel, segment.index)
        entry = DictionaryEntry(key, DataValue(True, segment.encode()))
        return await self.node.store(
            resource,
            CONTENT_SEGMENT,
            [entry],
            lifetime=lifetime or self.lifetime,
            timeout=self.timeout,
        )

    # --- fetching ------------------------------------------------------------------------

    async def get_meta(self, user: str, channel: str, *, swarm: bytes | None = None) -> ContentMeta:
        """The CONTENT-META of ``user``'s ``channel``. With ``swarm`` (the swarm ID learnt
        from a trusted place: the portal, a link), a value naming another swarm is treated
        like a corrupt one and the replicas are asked."""
        resource = content_meta_resource(user, channel)
        key = content_meta_key(channel)

        def accept(raw: bytes) -> ContentMeta:
            meta = ContentMeta.decode(raw)
            if meta.channel != channel or meta.source != user:
                raise UsageDecodeError(f"meta of {meta.source}/{meta.channel}")
            if swarm is not None and meta.swarm != swarm:
                raise UsageDecodeError("meta of another swarm")
            return meta

        return await self._fetch_verified(resource, CONTENT_META, key, accept, f"{user}/{channel}")

    async def get_segment(self, meta: ContentMeta, index: int) -> list[bytes]:
        """The chunks of segment ``index`` of ``meta``'s content, verified (root hash or live
        signatures); a bad answer is retried at each replica."""
        resource = content_segment_resource(meta.source, meta.channel, index)
        key = content_segment_key(meta.channel, index)

        def accept(raw: bytes) -> list[bytes]:
            segment = ContentSegment.decode(raw)
            if segment.index != index:
                raise SegmentVerificationError(f"segment {segment.index}, not {index}")
            return verify_segment(meta, segment)

        what = f"{meta.source}/{meta.channel} segment {index}"
        return await self._fetch_verified(resource, CONTENT_SEGMENT, key, accept, what)

    async def _fetch_verified(
        self,
        resource: bytes,
        kind: int,
        key: bytes,
        accept: Callable[[bytes], T],
        what: str,
    ) -> T:
        spec = [StoredDataSpecifier(kind, keys=(key,))]
        problems: list[str] = []
        # First the responsible peer, by ordinary routing.
        outcome = await self._try(resource, spec, kind, key, accept, what, None, problems)
        if outcome is not None:
            return outcome[0]
        try:
            replicas = await self.node.replica_set(resource)
        except ReloadRequestError as exc:
            log.info("replica set of %s unknown: %s", what, exc)
            replicas = []
        if replicas and problems[-1].endswith(_REJECTED):
            # The routed Fetch reached the responsible peer, replicas[0]: name it.
            self.bad_nodes.append(replicas[0])
            log.warning("%s: the responsible peer %s served a bad value", what, replicas[0].hex())
        # Then each replica by Node-ID (§10.4: the responsible peer's successors); bounded by
        # the replica set's length.
        for node_id in replicas[1:]:
            outcome = await self._try(resource, spec, kind, key, accept, what, node_id, problems)
            if outcome is not None:
                return outcome[0]
        if any(p.endswith(_REJECTED) for p in problems):
            raise ReplicasExhaustedError(f"{what}: " + "; ".join(problems))
        raise ContentNotFoundError(f"{what}: " + "; ".join(problems))

    async def _try(
        self,
        resource: bytes,
        spec: list[StoredDataSpecifier],
        kind: int,
        key: bytes,
        accept: Callable[[bytes], T],
        what: str,
        at: bytes | None,
        problems: list[str],
    ) -> tuple[T] | None:
        """One Fetch: (value,) when it verified, else None with the reason in ``problems``."""
        where = "the responsible peer" if at is None else at.hex()
        try:
            answer = await self.node.fetch(resource, spec, at=at, timeout=self.timeout)
        except ReloadRequestError as exc:
            problems.append(f"{where}: {exc}")
            log.info("fetch of %s from %s failed: %s", what, where, exc)
            return None
        raw = _entry(answer, kind, key)
        if raw is None:
            problems.append(f"{where}: not found")
            return None
        try:
            return (accept(raw),)
        except (UsageDecodeError, SegmentVerificationError) as exc:
            problems.append(f"{where}: {exc} {_REJECTED}")
            if at is not None:
                self.bad_nodes.append(at)
            log.warning("%s from %s rejected: %s", what, where, exc)
            return None
