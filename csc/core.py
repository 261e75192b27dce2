"""The content sharing client's logic (DESIGN §1 CSC; flows F3 and F4), sans-IO with injected
time (DESIGN §3).

A viewer changes channel (*zap*). :class:`CscCore` decides what the asyncio adapter
(:mod:`csc.client`) does about it, and keeps the accounts:

1. **Sources, cacher first.** The channel's swarm is looked up at the tracker with the CSC's
   area as locality hint (RFC 7846 §4.1.2 FIND; our tracker lists same-area cachers first).
   Cachers already met on earlier channels are contacted at the zap, before the tracker
   answers: a cacher that holds the new channel pushes its head right after the PPSPP
   handshake (RFC 7574 §3.7, docs/cacher.md "Early push"), so the picture starts about one
   round trip after the zap. Then the peers the tracker names are connected in parallel
   (one PPSPP endpoint, several channels in the swarm, §3.11): when a cacher is named, from
   the first frame on (or ``peer_delay`` after the zap), so that they do not compete with
   the pushed head. The source is the rescue (3.), unless nobody else holds the channel.
2. **Only verified chunks play.** The adapter reports a chunk only once PPSPP verified it
   (Merkle, §5; live signatures, §6.1) or a storage overlay segment verified against the
   swarm (reload.usages.content.verify_segment); the core feeds those, and nothing else, to
   the :class:`~csc.playback.PlaybackSession`. A peer whose chunk failed verification was
   dropped by the endpoint (§3, §12.1) and is never connected again on this channel.
3. **Rescue when starving.** When no peer delivered a new chunk for ``starvation_timeout``
   seconds while chunks are still missing, the CSC falls back to the storage overlay
   (segments fetched and verified there), or to the source's own PPSPP address, and asks the
   tracker again for peers — LiveSky's rescue of a starving viewer by the edge server. The
   rescue stops as soon as a peer delivers again.
4. **Accounts.** Per channel visit: the startup delay (zap → first frame), the handshake
   round trip, stalls, play and stall time, and the bytes of every chunk by the origin that
   delivered it first (cacher, peer, storage overlay, source). Over the session: Q1 = play /
   (play + stall) and Q2 = 1 − visits that stalled / visits (LiveSky §4.4; each channel
   visit counts as one viewer of that channel).

The adapter calls the ``on_*`` methods with the time and carries out the :data:`Action`
objects they return; :meth:`CscCore.next_timer` says when to call
:meth:`CscCore.handle_timer`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Final

from csc.playback import FirstFrame, PlaybackSession, PlaybackState, Resumed, Stalled, q1, q2
from ppsp.peer.ranges import ChunkSet

__all__ = [
    "Action",
    "ChannelError",
    "ChannelInfo",
    "ChannelReport",
    "ConnectPeer",
    "CscCore",
    "DropPeer",
    "FindPeers",
    "Origin",
    "PeerCandidate",
    "StartRescue",
    "parse_address",
]

Address = tuple[str, int]

#: Bitrate assumed for a channel the portal gives none for (bits per second of media).
DEFAULT_BITRATE: Final = 500_000
#: Bytes buffered before the first frame (and after a stall) when no duration is set. The
#: first frame needs the first chunks, not a deep buffer: 8 chunks of 1 KiB fit the first
#: flight of a pushing cacher (PUSH_INITIAL_WINDOW = 10 datagrams, docs/cacher.md), so fast
#: channel change can start in one round trip (0.16 s of media at 400 kbit/s).
DEFAULT_STARTUP_BYTES: Final = 8192
#: No new chunk from any peer for this long while chunks are missing: rescue.
DEFAULT_STARVATION_TIMEOUT: Final = 2.0
#: While starving, the tracker is asked again for peers this often.
DEFAULT_REFIND_INTERVAL: Final = 2.0
#: Peers wait this long after the zap while a cacher the tracker named delivers the head
#: (or until the first frame, if sooner): "cacher first, then peers in parallel".
DEFAULT_PEER_DELAY: Final = 0.25
#: Bound on remembered cachers and on peers per channel (hostile tracker answers).
MAX_KNOWN_CACHERS: Final = 16
MAX_PEERS_PER_CHANNEL: Final = 64
#: Stall events kept per channel visit in its report.
MAX_STALLS_REPORTED: Final = 100


class ChannelError(ValueError):
    """A portal channel description the CSC cannot use; the message names the member."""


class Origin(enum.StrEnum):
    """Where a chunk came from (bytes are accounted per origin)."""

    CACHER = "cacher"
    PEER = "peer"
    OVERLAY = "overlay"  # the storage overlay (RELOAD), segments verified against the swarm
    SOURCE = "source"


def parse_address(text: str) -> Address:
    """``HOST:PORT`` or ``[IPv6]:PORT`` (the portal's ``sources`` form)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"not HOST:PORT: {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"port out of range: {text!r}")
    return host, number


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """What the CSC needs of a portal channel (docs/portal.md, the channel object)."""

    name: str
    live: bool
    swarm_id: bytes
    chunk_size: int
    integrity: str
    hash: str = "sha256"
    trackers: tuple[str, ...] = ()
    title: str = ""
    bitrate: int | None = None  # bits per second (the portal speaks kbit/s)
    length: int | None = None
    source_user: str = ""
    storage_overlay: str | None = None
    segment_chunks: int = 64
    sources: tuple[Address, ...] = ()

    @property
    def num_chunks(self) -> int | None:
        """VoD: chunks in the content when its length is known."""
        if self.live or self.length is None:
            return None
        return max(1, math.ceil(self.length / self.chunk_size))

    def chunk_bytes(self, chunk: int) -> int:
        """The size of ``chunk`` (the last chunk of a VoD may be short)."""
        if self.length is not None and not self.live:
            return max(0, min(self.chunk_size, self.length - chunk * self.chunk_size))
        return self.chunk_size

    @classmethod
    def from_json(cls, data: Any) -> ChannelInfo:
        """Parse the portal's channel object (``GET /api/v1/channels[/NAME]``); the portal
        validated it, but the CSC trusts nothing it reads off the network."""
        if isinstance(data, dict) and isinstance(data.get("channel"), dict):
            data = data["channel"]  # the publish answer's wrapping
        if not isinstance(data, dict):
            raise ChannelError("a channel is a JSON object")

        def member(name: str, kind: type, default: Any = ...) -> Any:
            value = data.get(name, default)
            if value is ...:
                raise ChannelError(f"channel member {name!r} is missing")
            if value is None or value is default:
                return value
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
                raise ChannelError(f"channel member {name!r} has the wrong type")
            return value

        name = member("name", str)
        try:
            swarm_id = bytes.fromhex(member("swarm_id", str))
        except ValueError:
            raise ChannelError("channel member 'swarm_id' is not hex") from None
        if not swarm_id:
            raise ChannelError("channel member 'swarm_id' is empty")
        chunk_size = member("chunk_size", int)
        if not 0 < chunk_size <= 16 << 20:
            raise ChannelError("channel member 'chunk_size' is out of range")
        live = data.get("live")
        if not isinstance(live, bool):
            raise ChannelError("channel member 'live' is not true or false")
        trackers = member("trackers", list, [])
        if not all(isinstance(t, str) for t in trackers):
            raise ChannelError("channel member 'trackers' is not a list of URLs")
        sources_raw = member("sources", list, [])
        try:
            sources = tuple(parse_address(s) for s in sources_raw if isinstance(s, str))
        except ValueError as exc:
            raise ChannelError(f"channel member 'sources': {exc}") from None
        kbits = member("bitrate", int, None)
        length = member("length", int, None)
        segment_chunks = member("segment_chunks", int, 64) or 64
        if segment_chunks <= 0 or segment_chunks & (segment_chunks - 1):
            raise ChannelError("channel member 'segment_chunks' is not a power of two")
        return cls(
            name=name,
            live=live,
            swarm_id=swarm_id,
            chunk_size=chunk_size,
            integrity=member("integrity", str),
            hash=member("hash", str, "") or "sha256",
            trackers=tuple(trackers[:16]),
            title=member("title", str, "") or "",
            bitrate=kbits * 1000 if kbits else None,
            length=length if length is None or length >= 0 else None,
            source_user=member("source_user", str, "") or "",
            storage_overlay=member("storage_overlay", str, None),
            segment_chunks=segment_chunks,
            sources=sources[:16],
        )


# -- actions (what the adapter does) -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerCandidate:
    """A PPSPP peer of the swarm, from the tracker (or the portal's source addresses)."""

    addr: Address
    origin: Origin
    peer_id: str = ""
    #: A cacher or viewer of another area (the tracker's area attribute differs from ours):
    #: a remote cacher is used only when no cacher of our area is named, a remote viewer only
    #: when nobody of our area is named; both when starving — locality, as LiveSky kept
    #: traffic inside the ISP.
    remote: bool = False


@dataclass(frozen=True, slots=True)
class ConnectPeer:
    """Open a PPSPP channel to ``addr`` in the current channel's swarm (RFC 7574 §3.1)."""

    channel: str
    addr: Address
    origin: Origin


@dataclass(frozen=True, slots=True)
class FindPeers:
    """Ask the channel's trackers for peers (RFC 7846 §4.1.2 FIND with the CSC's area)."""

    channel: str


@dataclass(frozen=True, slots=True)
class DropPeer:
    """Close the PPSPP channel to ``addr`` (§8.4): it delivered nothing while we starved. A
    peer that died silently would otherwise hold its place until PPSPP's dead-peer timeout
    (§3.12, minutes); a later FIND may name it again and it is reconnected then."""

    channel: str
    addr: Address


@dataclass(frozen=True, slots=True)
class StartRescue:
    """Peers starve us: fetch segments from the storage overlay (see
    :meth:`CscCore.rescue_segments`)."""

    channel: str


Action = ConnectPeer | DropPeer | FindPeers | StartRescue


# -- reports ---------------------------------------------------------------------------------


@dataclass(slots=True)
class ChannelReport:
    """One channel visit, from the zap to the zap away."""

    channel: str
    live: bool
    zap_time: float
    startup_delay: float | None = None
    #: Zap to the first PPSPP channel established (one round trip plus the tracker, if the
    #: cacher was not known yet); startup_delay / this is the start in round trips.
    handshake_delay: float | None = None
    play_time: float = 0.0
    stall_time: float = 0.0
    stalls: int = 0
    ended: bool = False
    chunks: int = 0
    bytes: dict[Origin, int] = field(default_factory=lambda: {o: 0 for o in Origin})
    peers: int = 0
    dropped: list[str] = field(default_factory=list)
    rescues: int = 0
    #: Bytes per serving peer and the origin it was accounted as (None: the storage overlay).
    by_peer: dict[tuple[Address | None, Origin], int] = field(default_factory=dict)
    #: When playback stalled (seconds after the zap) and for how long; the first
    #: MAX_STALLS_REPORTED of them: what a lab lines up across viewers.
    stall_events: list[tuple[float, float | None]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "live": self.live,
            "startup_delay": self.startup_delay,
            "handshake_delay": self.handshake_delay,
            "play_time": round(self.play_time, 6),
            "stall_time": round(self.stall_time, 6),
            "stalls": self.stalls,
            "ended": self.ended,
            "chunks": self.chunks,
            "bytes": {o.value: n for o, n in self.bytes.items()},
            "peers": self.peers,
            "dropped": list(self.dropped),
            "rescues": self.rescues,
            "bytes_by_peer": _by_peer_json(self.by_peer),
            "stall_events": [
                [round(at, 3), None if length is None else round(length, 3)]
                for at, length in self.stall_events
            ],
        }


def _by_peer_json(by_peer: dict[tuple[Address | None, Origin], int]) -> list[dict[str, Any]]:
    """``[{"addr": "ip:port" or None, "role": origin, "bytes": n}]``, most bytes first."""
    return [
        {
            "addr": None if addr is None else f"{addr[0]}:{addr[1]}",
            "role": origin.value,
            "bytes": n,
        }
        for (addr, origin), n in sorted(by_peer.items(), key=lambda item: -item[1])
    ]


# -- the core --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Visit:
    info: ChannelInfo
    playback: PlaybackSession
    report: ChannelReport
    held: ChunkSet = field(default_factory=ChunkSet)
    peers: dict[Address, Origin] = field(default_factory=dict)  # connected or connecting
    #: When each peer was connected, or last delivered a new chunk.
    last_from: dict[Address, float] = field(default_factory=dict)
    bad: set[Address] = field(default_factory=set)  # sent a chunk that failed verification
    sources: set[Address] = field(default_factory=set)  # the tracker's SOURCE-role peers
    named_peers: bool = False  # a tracker named a cacher or peer of the swarm
    named_cacher: bool = False  # a tracker named a cacher of the swarm
    named_local: bool = False  # a tracker named a cacher or viewer of our area
    held_back: list[PeerCandidate] = field(default_factory=list)  # peers after the cacher
    #: Other areas' cachers and viewers held back for a starving moment (locality).
    remote: list[PeerCandidate] = field(default_factory=list)
    last_peer_chunk: float = 0.0
    rescuing: bool = False
    next_find: float = math.inf
    segments_inflight: set[int] = field(default_factory=set)
    start_known: bool = True  # live: False until the tune-in point is known
    complete: bool = False  # PPSPP downloaded the whole VoD


class CscCore:
    """One viewer across channel changes; see the module docstring."""

    def __init__(
        self,
        *,
        startup_seconds: float | None = None,
        startup_bytes: int | None = None,
        starvation_timeout: float = DEFAULT_STARVATION_TIMEOUT,
        refind_interval: float = DEFAULT_REFIND_INTERVAL,
        default_bitrate: int = DEFAULT_BITRATE,
        overlay: bool = False,
        peer_delay: float = DEFAULT_PEER_DELAY,
    ) -> None:
        if starvation_timeout <= 0 or refind_interval <= 0 or default_bitrate <= 0:
            raise ValueError("timeouts and the bitrate must be positive")
        if startup_seconds is None and startup_bytes is None:
            startup_bytes = DEFAULT_STARTUP_BYTES
        #: The startup threshold: media seconds, bytes, or both (the larger counts).
        self.startup_seconds = startup_seconds
        self.startup_bytes = startup_bytes
        self.starvation_timeout = starvation_timeout
        self.refind_interval = refind_interval
        self.default_bitrate = default_bitrate
        self.peer_delay = peer_delay
        #: Whether a storage overlay is at hand for rescue (the adapter clears it when the
        #: overlay node cannot be used).
        self.overlay = overlay
        #: Cachers met so far (tracker role CACHER), most recent last: contacted at every zap.
        self.cachers: list[Address] = []
        self.visits: list[_Visit] = []
        self.current: _Visit | None = None

    # -- channel changes

    def zap(self, info: ChannelInfo, now: float) -> list[Action]:
        """Change to ``info``'s channel: leave the current one, connect the cachers we know,
        ask the tracker."""
        self.leave(now)
        bitrate = info.bitrate or self.default_bitrate
        playback = PlaybackSession(
            bitrate,
            info.chunk_size,
            startup_seconds=self.startup_seconds,
            startup_bytes=self.startup_bytes,
        )
        n = info.num_chunks
        playback.zap(info.name, now, end_chunk=None if n is None else n - 1)
        visit = _Visit(info, playback, ChannelReport(info.name, info.live, now))
        visit.last_peer_chunk = now
        visit.start_known = not info.live
        self.visits.append(visit)
        self.current = visit
        actions: list[Action] = []
        # Fast channel change (F4): the cachers we know may push the head right after the
        # handshake; do not wait for the tracker to name them again.
        for addr in reversed(self.cachers):
            actions.extend(self._connect(visit, PeerCandidate(addr, Origin.CACHER), now))
        actions.append(FindPeers(info.name))
        return actions

    def leave(self, now: float) -> None:
        """Stop watching the current channel (zap away, or the end of the session)."""
        visit = self.current
        if visit is None:
            return
        visit.playback.stop(now)
        self._settle(visit)
        self.current = None

    # -- input from the adapter

    def on_peers(self, channel: str, peers: list[PeerCandidate], now: float) -> list[Action]:
        """The tracker's peer list (or the portal's source addresses): cachers first."""
        visit = self._visit(channel)
        if visit is None:
            return []
        actions: list[Action] = []
        ordered = sorted(peers, key=lambda p: (p.origin is not Origin.CACHER, p.remote))
        local_cacher = visit.named_cacher or any(
            p.origin is Origin.CACHER and not p.remote for p in peers
        )
        local_anyone = (
            local_cacher
            or visit.named_local
            or any(not p.remote and p.origin is not Origin.SOURCE for p in peers)
        )
        visit.named_local = local_anyone
        for peer in ordered:
            held = local_cacher if peer.origin is Origin.CACHER else local_anyone
            if peer.remote and held:
                # Our area serves; another area's cacher or viewer is kept for a starving
                # moment.
                if peer not in visit.remote and len(visit.remote) < MAX_PEERS_PER_CHANNEL:
                    visit.remote.append(peer)
                continue
            if peer.origin is Origin.SOURCE:
                # The source is the rescue, not a peer (LiveSky: the CDN serves, the origin
                # rescues): it is connected when the others starve us, or when there is
                # nobody else at all.
                if len(visit.sources) < MAX_PEERS_PER_CHANNEL:
                    visit.sources.add(peer.addr)
                continue
            if peer.origin is Origin.CACHER:
                visit.named_cacher = True
                if not peer.remote:  # only our area's cachers are contacted at every zap
                    if peer.addr in self.cachers:
                        self.cachers.remove(peer.addr)
                    self.cachers.append(peer.addr)
                    del self.cachers[:-MAX_KNOWN_CACHERS]
            elif not self._peers_open(visit, now):
                # Fast channel change (F4): the head comes from the cacher, pushed with its
                # handshake reply; peers asked for it too would only compete with that.
                if peer not in visit.held_back and len(visit.held_back) < MAX_PEERS_PER_CHANNEL:
                    visit.held_back.append(peer)
                continue
            actions.extend(self._connect(visit, peer, now))
        if any(p.origin is not Origin.SOURCE for p in peers):
            visit.named_peers = True
        elif not visit.named_peers and not visit.report.chunks:
            # Nobody but the source holds the channel (a cacher contacted on a hunch at the
            # zap is no evidence: the tracker did not name it): the source serves now.
            actions.extend(self._rescue_by_source(visit, now))
        return actions

    def on_channel_up(self, channel: str, addr: Address, now: float) -> None:
        """A PPSPP channel to ``addr`` completed its handshake (§3.1)."""
        visit = self._visit(channel)
        if visit is None:
            return
        if visit.report.handshake_delay is None:
            visit.report.handshake_delay = now - visit.report.zap_time
        visit.report.peers += 1

    def on_peer_gone(
        self, channel: str, addr: Address, reason: str, now: float, *, integrity: bool = False
    ) -> None:
        """A PPSPP channel closed; ``integrity``: the peer sent a chunk that failed
        verification (it is never connected again on this channel)."""
        visit = self._visit(channel)
        if visit is None:
            return
        visit.peers.pop(addr, None)
        visit.last_from.pop(addr, None)
        if integrity:
            visit.bad.add(addr)
            visit.report.dropped.append(f"{addr[0]}:{addr[1]}: {reason}")

    def on_chunk(self, channel: str, chunk: int, addr: Address, now: float) -> bool:
        """PPSPP verified ``chunk`` from ``addr``; returns whether it was new."""
        visit = self._visit(channel)
        if visit is None:
            return False
        visit.last_peer_chunk = now
        if visit.rescuing:
            visit.rescuing = False  # peers deliver again: the rescue ends
            visit.next_find = math.inf
        if addr in visit.peers:
            visit.last_from[addr] = now
        origin = visit.peers.get(addr)
        if origin is None:
            known = addr in visit.info.sources or addr in visit.sources
            origin = Origin.SOURCE if known else Origin.PEER
        return self._take(visit, chunk, visit.info.chunk_bytes(chunk), origin, now, addr)

    def on_segment(self, channel: str, index: int, chunks: list[bytes], now: float) -> int:
        """The storage overlay's segment ``index``, verified; returns the chunks it added."""
        visit = self._visit(channel)
        if visit is None:
            return 0
        visit.segments_inflight.discard(index)
        first = index * visit.info.segment_chunks
        added = 0
        for i, data in enumerate(chunks):
            added += self._take(visit, first + i, len(data), Origin.OVERLAY, now)
        return added

    def on_segment_failed(self, channel: str, index: int, now: float) -> list[Action]:
        """The storage overlay could not give segment ``index``: use the source instead."""
        visit = self._visit(channel)
        if visit is None:
            return []
        visit.segments_inflight.discard(index)
        return self._rescue_by_source(visit, now)

    def on_overlay_unusable(self, now: float) -> list[Action]:
        """The storage overlay node cannot be used at all (join failed, no meta)."""
        self.overlay = False
        visit = self.current
        if visit is None or not visit.rescuing:
            return []
        return self._rescue_by_source(visit, now)

    def on_complete(self, channel: str, now: float) -> None:
        """PPSPP holds the whole VoD (its size came with the peak hashes, RFC 7574 §5.6):
        nothing is missing even when the portal did not give the length."""
        visit = self._visit(channel)
        if visit is not None:
            visit.complete = True
            visit.rescuing = False
            visit.next_find = math.inf

    def on_live_start(self, channel: str, start_chunk: int, now: float) -> None:
        """Live: the tune-in point is known (§6.1.2.4: the munro of the newest chunk)."""
        visit = self._visit(channel)
        if visit is None or visit.start_known:
            return
        visit.start_known = True
        visit.playback.set_start(start_chunk, now)
        # Chunks verified before the tune-in point was known play from it on.
        last = visit.held.last
        if last is not None and last >= start_chunk:
            for run in visit.held.intervals():
                for chunk in range(max(run.start, start_chunk), run.end + 1):
                    visit.playback.on_chunk(chunk, now)
        self._pop_events(visit)

    # -- rescue (LiveSky: the edge server rescues a starving viewer)

    def rescuing(self, channel: str) -> bool:
        visit = self._visit(channel)
        return visit is not None and visit.rescuing

    def rescue_segments(self, channel: str, limit: int) -> list[int]:
        """Storage overlay segments to fetch now (VoD): those holding the first missing
        chunks from the start, not in flight yet; empty when the rescue is over."""
        visit = self._visit(channel)
        if visit is None or not visit.rescuing or visit.info.live or limit <= 0:
            return []
        n = visit.info.num_chunks
        if n is None:
            return []
        out: list[int] = []
        per = visit.info.segment_chunks
        chunk = visit.held.first_missing(0)
        bound = math.ceil(n / per)
        while chunk is not None and chunk < n and len(visit.segments_inflight) < limit:
            index = chunk // per
            if index >= bound:
                break
            if index not in visit.segments_inflight:
                visit.segments_inflight.add(index)
                out.append(index)
            chunk = visit.held.first_missing((index + 1) * per)
        return out

    # -- time

    def next_timer(self) -> float | None:
        visit = self.current
        if visit is None:
            return None
        times = [visit.next_find]
        if visit.held_back:
            released = visit.report.startup_delay is not None or visit.rescuing
            times.append(visit.report.zap_time if released else self._peers_at(visit))
        playback = visit.playback.next_timer()
        if playback is not None:
            times.append(playback)
        if not visit.rescuing and self._needs_more(visit):
            times.append(visit.last_peer_chunk + self.starvation_timeout)
        when = min(times)
        return None if math.isinf(when) else when

    def handle_timer(self, now: float) -> list[Action]:
        visit = self.current
        if visit is None:
            return []
        visit.playback.handle_timer(now)
        self._pop_events(visit)
        actions: list[Action] = []
        if visit.held_back and self._peers_open(visit, now):
            held, visit.held_back = visit.held_back, []
            for peer in held:
                actions.extend(self._connect(visit, peer, now))
        if (
            not visit.rescuing
            and self._needs_more(visit)
            and now - visit.last_peer_chunk >= self.starvation_timeout - 1e-9
        ):
            visit.rescuing = True
            visit.report.rescues += 1
            visit.next_find = now + self.refind_interval
            since = now - self.starvation_timeout
            for addr, last in list(visit.last_from.items()):
                if last <= since + 1e-9:
                    actions.append(DropPeer(visit.info.name, addr))
            actions.append(FindPeers(visit.info.name))
            remote, visit.remote = visit.remote, []
            for peer in remote:  # other areas before the storage overlay or the source
                actions.extend(self._connect(visit, peer, now))
            if self.overlay and not visit.info.live and visit.info.source_user:
                actions.append(StartRescue(visit.info.name))
            else:
                actions.extend(self._rescue_by_source(visit, now))
        elif visit.rescuing and now >= visit.next_find:
            visit.next_find = now + self.refind_interval
            actions.append(FindPeers(visit.info.name))
        return actions

    # -- results

    def state(self) -> PlaybackState:
        return PlaybackState.IDLE if self.current is None else self.current.playback.state

    def ended(self) -> bool:
        """The current VoD played to its end."""
        return self.current is not None and self.current.playback.state is PlaybackState.ENDED

    def reports(self) -> list[ChannelReport]:
        for visit in self.visits:
            self._settle(visit)
        return [v.report for v in self.visits]

    def summary(self) -> dict[str, Any]:
        """Q1, Q2 and bytes by origin over every visit, with the per-visit reports."""
        reports = self.reports()
        sessions = [v.playback for v in self.visits]
        total = {o.value: sum(r.bytes[o] for r in reports) for o in Origin}
        by_peer: dict[tuple[Address | None, Origin], int] = {}
        for r in reports:
            for key, n in r.by_peer.items():
                by_peer[key] = by_peer.get(key, 0) + n
        delays = [r.startup_delay for r in reports if r.startup_delay is not None]
        return {
            "channels": [r.to_json() for r in reports],
            "startup_delays": delays,
            "q1": q1(sessions),
            "q2": q2(sessions),
            "play_time": sum(s.play_time for s in sessions),
            "stall_time": sum(s.stall_time for s in sessions),
            "bytes": total,
            "bytes_by_peer": _by_peer_json(by_peer),
        }

    # -- internals

    def _visit(self, channel: str) -> _Visit | None:
        visit = self.current
        if visit is None or visit.info.name != channel:
            return None  # a late event of a channel we left
        return visit

    def _peers_at(self, visit: _Visit) -> float:
        return visit.report.zap_time + self.peer_delay

    def _peers_open(self, visit: _Visit, now: float) -> bool:
        """Whether plain peers may be connected: no cacher named, the first frame shown,
        starving, or ``peer_delay`` after the zap."""
        return (
            not visit.named_cacher
            or visit.report.startup_delay is not None
            or visit.rescuing
            or now >= self._peers_at(visit) - 1e-9
        )

    def _connect(self, visit: _Visit, peer: PeerCandidate, now: float) -> list[ConnectPeer]:
        if peer.addr in visit.peers or peer.addr in visit.bad:
            return []
        if len(visit.peers) >= MAX_PEERS_PER_CHANNEL:
            return []
        visit.peers[peer.addr] = peer.origin
        visit.last_from[peer.addr] = now
        return [ConnectPeer(visit.info.name, peer.addr, peer.origin)]

    def _rescue_by_source(self, visit: _Visit, now: float) -> list[Action]:
        actions: list[Action] = []
        for addr in (*visit.info.sources, *sorted(visit.sources)):
            actions.extend(self._connect(visit, PeerCandidate(addr, Origin.SOURCE), now))
        return actions

    def _needs_more(self, visit: _Visit) -> bool:
        if visit.info.live:
            return True
        if visit.complete:
            return False
        n = visit.info.num_chunks
        return n is None or not visit.held.contains_range(0, n - 1)

    def _take(
        self,
        visit: _Visit,
        chunk: int,
        size: int,
        origin: Origin,
        now: float,
        addr: Address | None = None,
    ) -> bool:
        n = visit.info.num_chunks
        if chunk < 0 or (n is not None and chunk >= n) or chunk in visit.held:
            return False
        visit.held.add(chunk, chunk)
        visit.report.chunks += 1
        visit.report.bytes[origin] += size
        key = (addr, origin)
        visit.report.by_peer[key] = visit.report.by_peer.get(key, 0) + size
        if visit.rescuing and not self._needs_more(visit):
            visit.rescuing = False  # everything is here: the rescue is over
            visit.next_find = math.inf
        if visit.start_known:  # live: nothing plays before the tune-in point is known
            visit.playback.on_chunk(chunk, now)
            self._pop_events(visit)
        return True

    def _pop_events(self, visit: _Visit) -> None:
        for event in visit.playback.pop_events():
            report = visit.report
            if isinstance(event, FirstFrame):
                report.startup_delay = event.startup_delay
            elif isinstance(event, Stalled) and len(report.stall_events) < MAX_STALLS_REPORTED:
                report.stall_events.append((event.at - report.zap_time, None))
            elif isinstance(event, Resumed) and report.stall_events:
                at, length = report.stall_events[-1]
                if length is None:
                    report.stall_events[-1] = (at, event.stall_time)

    def _settle(self, visit: _Visit) -> None:
        (record,) = visit.playback.records
        report = visit.report
        report.play_time = record.play_time
        report.stall_time = record.stall_time
        report.stalls = record.stalls
        report.ended = record.ended
        report.startup_delay = record.startup_delay
