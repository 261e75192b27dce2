"""CBOR value formats of the p2pcdn usages (docs/usages.md), with bounded, typed decoders.

Each value is a CBOR map (RFC 8949) with text keys and ``"v": 1``; members a decoder does not
know are ignored, so a later version can add members without a new Kind. Encoding is the
deterministic form of RFC 8949 §4.2 (cbor2 ``canonical``): one value, one byte string, which
keeps stored values comparable and the examples in docs/usages.md reproducible.

Decoding never trusts its input: a value comes from whoever stored it in the overlay. Every
decoder checks the input size, rejects trailing bytes, checks every member's type, range and
count, and raises :class:`UsageDecodeError` (a ValueError) for anything else — never a
cbor2, Type or Key error. The counts are bounded before anything is built from them.
"""

from __future__ import annotations

import io
import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Self

import cbor2

__all__ = [
    "HASH_NAMES",
    "LIVE_SIGNING",
    "MAX_ADDRS",
    "MAX_BATCH_SWARMS",
    "MAX_PEERS",
    "MAX_RANGES",
    "MAX_VALUE_SIZE",
    "ROLES",
    "VERSION",
    "ChunkSignature",
    "ContentMeta",
    "ContentSegment",
    "MunroSignature",
    "PeerBatch",
    "PeerRecord",
    "PeerStatus",
    "SwarmPeers",
    "UsageDecodeError",
]

VERSION: Final = 1
#: Largest encoded value a decoder accepts at all (a Kind's max-size is usually far lower).
MAX_VALUE_SIZE: Final = 1 << 24
MAX_ADDRS: Final = 8
MAX_RANGES: Final = 1024
MAX_PEERS: Final = 4096
MAX_BATCH_SWARMS: Final = 65536
MAX_SWARM_ID: Final = 1024  # a live swarm ID with a 4096-bit RSA key is ~520 bytes
MAX_NODE_ID: Final = 64
MAX_TEXT: Final = 1024
MAX_PROOF: Final = 64  # uncle hashes: one per tree level above the segment
MAX_SIGNED: Final = 1 << 16
MAX_LIST: Final = 16  # trackers, sources

ROLES: Final = ("cacher", "csc", "source")
MODES: Final = ("seeder", "leecher")
TRANSPORTS: Final = ("udp", "tcp")
#: PPSPP Merkle hash function names (RFC 7574 §7.6), as :class:`MerkleHashFunction` spells them.
HASH_NAMES: Final = ("sha1", "sha224", "sha256", "sha384", "sha512")
LIVE_SIGNING: Final = ("unified-merkle", "sign-all")
_U64: Final = 1 << 64


class UsageDecodeError(ValueError):
    """A usage value that is not valid CBOR, not the expected map, or out of bounds."""


# --- low-level checks (raise ValueError; decode() turns them into UsageDecodeError) -------


def _int(value: object, what: str, low: int = 0, high: int = _U64 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} must be an integer in {low}..{high}")
    return value


def _opt_int(value: object, what: str, low: int = 0, high: int = _U64 - 1) -> int | None:
    return None if value is None else _int(value, what, low, high)


def _float(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite")
    return number


def _text(value: object, what: str, limit: int = MAX_TEXT, empty: bool = False) -> str:
    if not isinstance(value, str) or len(value) > limit or (not value and not empty):
        raise ValueError(f"{what} must be a {'' if empty else 'non-empty '}string ≤ {limit}")
    return value


def _opt_text(value: object, what: str) -> str | None:
    return None if value is None else _text(value, what)


def _choice(value: object, what: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(choices)}")
    assert isinstance(value, str)
    return value


def _bytes(value: object, what: str, low: int = 0, high: int = MAX_VALUE_SIZE) -> bytes:
    if not isinstance(value, bytes) or not low <= len(value) <= high:
        raise ValueError(f"{what} must be a byte string of {low}..{high} bytes")
    return value


def _list(value: object, what: str, limit: int) -> list[Any]:
    if not isinstance(value, list | tuple) or len(value) > limit:
        raise ValueError(f"{what} must be an array of at most {limit} items")
    return list(value)


def _ip(value: object, what: str) -> str:
    text = _text(value, what, 64)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not an IP address") from None
    return text


def _node_id(value: object) -> bytes:
    return _bytes(value, "tracker Node-ID", 1, MAX_NODE_ID)


def _swarm_id(value: object) -> bytes:
    return _bytes(value, "swarm ID", 1, MAX_SWARM_ID)


def _encode(members: Mapping[str, object]) -> bytes:
    return cbor2.dumps({"v": VERSION, **members}, canonical=True)


def _is_version(value: object) -> bool:
    # Exactly the integer 1: not True, not 1.0 (both compare equal to 1 in Python).
    return type(value) is int and value == VERSION


def _load_map(data: bytes | bytearray | memoryview, max_size: int) -> dict[str, Any]:
    """One CBOR item, a map with text keys and "v": 1, and nothing after it."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise UsageDecodeError("a usage value is a byte string")
    raw = bytes(data)
    if len(raw) > max_size:
        raise UsageDecodeError(f"value of {len(raw)} bytes exceeds {max_size}")
    stream = io.BytesIO(raw)
    try:
        item = cbor2.CBORDecoder(stream).decode()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise UsageDecodeError(f"not CBOR: {exc}") from None
    except Exception as exc:  # cbor2's tag decoders may raise anything on hostile input
        raise UsageDecodeError(f"not CBOR: {type(exc).__name__}: {exc}") from None
    if stream.tell() != len(raw):
        raise UsageDecodeError("trailing bytes after the CBOR value")
    if not isinstance(item, dict):
        raise UsageDecodeError("a usage value is a CBOR map")
    if not _is_version(item.get("v")):
        raise UsageDecodeError(f"unsupported value version {item.get('v')!r}")
    return item


class _Value:
    """encode()/decode() around a class's ``_members``/``_from_map``."""

    KIND_NAME: ClassVar[str] = ""

    def _members(self) -> dict[str, object]:
        raise NotImplementedError

    @classmethod
    def _from_map(cls, item: Mapping[str, Any]) -> Self:
        raise NotImplementedError

    def encode(self) -> bytes:
        """The value's deterministic CBOR encoding (RFC 8949 §4.2)."""
        return _encode(self._members())

    @classmethod
    def decode(
        cls, data: bytes | bytearray | memoryview, *, max_size: int = MAX_VALUE_SIZE
    ) -> Self:
        """Decode one value; raises :class:`UsageDecodeError` for anything malformed."""
        item = _load_map(data, max_size)
        try:
            return cls._from_map(item)
        except UsageDecodeError:
            raise
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            raise UsageDecodeError(f"{cls.KIND_NAME or cls.__name__}: {exc}") from None


# --- tracker overlay values ---------------------------------------------------------------


@dataclass(frozen=True)
class PeerRecord(_Value):
    """One PPSP peer as a connection tracker knows it (carried in SWARM-PEERS, PEER-BATCH).

    ``addrs`` are (IP, port, transport) triples, ``ranges`` inclusive chunk ranges the peer
    has (PPSP-TP STAT_REPORT / CONNECT availability, RFC 7846 §5), ``updated`` Unix time.
    """

    peer: str
    role: str = "cacher"
    area: str | None = None
    addrs: tuple[tuple[str, int, str], ...] = ()
    mode: str = "leecher"
    ranges: tuple[tuple[int, int], ...] = ()
    updated: float = 0.0

    KIND_NAME: ClassVar[str] = "PeerRecord"

    def __post_init__(self) -> None:
        _text(self.peer, "Peer-ID")
        _choice(self.role, "role", ROLES)
        _opt_text(self.area, "area")
        _choice(self.mode, "mode", MODES)
        _float(self.updated, "updated")
        if len(self.addrs) > MAX_ADDRS:
            raise ValueError(f"at most {MAX_ADDRS} addresses")
        for addr in self.addrs:
            if len(addr) != 3:
                raise ValueError("an address is [ip, port, transport]")
            _ip(addr[0], "address")
            _int(addr[1], "port", 0, 0xFFFF)
            _choice(addr[2], "transport", TRANSPORTS)
        if len(self.ranges) > MAX_RANGES:
            raise ValueError(f"at most {MAX_RANGES} chunk ranges")
        for rng in self.ranges:
            if len(rng) != 2:
                raise ValueError("a chunk range is [start, end]")
            start = _int(rng[0], "range start")
            if _int(rng[1], "range end") < start:
                raise ValueError("a chunk range ends before it starts")

    def _members(self) -> dict[str, object]:
        return {
            "peer": self.peer,
            "role": self.role,
            "area": self.area,
            "addrs": [list(a) for a in self.addrs],
            "mode": self.mode,
            "ranges": [list(r) for r in self.ranges],
            "updated": self.updated,
        }

    def to_map(self) -> dict[str, object]:
        """The CBOR map this record is inside a SwarmPeers or PeerBatch value."""
        return {"v": VERSION, **self._members()}

    @classmethod
    def from_map(cls, item: object) -> PeerRecord:
        """A record from its decoded CBOR map (raises ValueError)."""
        if not isinstance(item, dict):
            raise ValueError("a peer record is a map")
        if not _is_version(item.get("v")):
            raise ValueError("unsupported peer record version")
        return cls._from_map(item)

    @classmethod
    def _from_map(cls, item: Mapping[str, Any]) -> Self:
        addrs = []
        for addr in _list(item.get("addrs", []), "addrs", MAX_ADDRS):
            parts = _list(addr, "address", 3)
            if len(parts) != 3:
                raise ValueError("an address is [ip, port, transport]")
            addrs.append((parts[0], parts[1], parts[2]))
        ranges = []
        for rng in _list(item.get("ranges", []), "ranges", MAX_RANGES):
            parts = _list(rng, "chunk range", 2)
            if len(parts) != 2:
                raise ValueError("a chunk range is [start, end]")
            ranges.append((parts[0], parts[1]))
        return cls(
            peer=item.get("peer"),  # type: ignore[arg-type]  # checked in __post_init__
            role=item.get("role"),  # type: ignore[arg-type]
            area=item.get("area"),
            addrs=tuple(addrs),
            mode=item.get("mode"),  # type: ignore[arg-type]
            ranges=tuple(ranges),
            updated=_float(item.get("updated"), "updated"),
        )


def _records(value: object, what: str) -> tuple[PeerRecord, ...]:
    return tuple(PeerRecord.from_map(r) for r in _list(value, what, MAX_PEERS))


@dataclass(frozen=True)
class SwarmPeers(_Value):
    """SWARM-PEERS value: the peers one connection tracker (``tracker``) has for a swarm."""

    tracker: bytes
    peers: tuple[PeerRecord, ...] = ()

    KIND_NAME: ClassVar[str] = "SWARM-PEERS"

    def __post_init__(self) -> None:
        _node_id(self.tracker)
        if len(self.peers) > MAX_PEERS:
            raise ValueError(f"at most {MAX_PEERS} peers")

    def _members(self) -> dict[str, object]:
        return {"tracker": self.tracker, "peers": [p.to_map() for p in self.peers]}

    @classmethod
    def _from_map(cls, item: Mapping[str, Any]) -> Self:
        return cls(_node_id(item.get("tracker")), _records(item.get("peers", []), "peers"))


@dataclass(frozen=True)
class PeerBatch(_Value):
    """PEER-BATCH value: one connection tracker's peers for every swarm a responsible tracker
    node is responsible for (one Store per responsible node instead of one per swarm)."""

    tracker: bytes
    swarms: Mapping[bytes, tuple[PeerRecord, ...]] = field(default_factory=dict)

    KIND_NAME: ClassVar[str] = "PEER-BATCH"

    def __post_init__(self) -> None:
        _node_id(self.tracker)
        if len(self.swarms) > MAX_BATCH_SWARMS:
            raise ValueError(f"at most {MAX_BATCH_SWARMS} swarms")
        for swarm, peers in self.swarms.items():
            _swarm_id(swarm)
            if len(peers) > MAX_PEERS:
                raise ValueError(f"at most {MAX_PEERS} peers per swarm")

    def _members(self) -> dict[str, object]:
        return {
            "tracker": self.tracker,
            "swarms": {s: [p.to_map() for p in peers] for s, peers in self.swarms.items()},
        }

    @classmethod
    def _from_map(cls, item: Mapping[str, Any]) -> Self:
        swarms = item.get("swarms", {})
        if not isinstance(swarms, dict) or len(swarms) > MAX_BATCH_SWARMS:
            raise ValueError(f"swarms must be a map of at most {MAX_BATCH_SWARMS} entries")
        return cls(
            _node_id(item.get("tracker")),
            {_swarm_id(s): _records(peers, "peers") for s, peers in swarms.items()},
        )


@dataclass(frozen=True)
class PeerStatus(_Value):
    """PEER-STATUS value: a PPSP peer's status at its connection tracker (draft-xiao §4)."""

    peer: str
    tracker: bytes
    state: str = "online"
    swarms: int = 0
    updated: float = 0.0

    KIND_NAME: ClassVar[str] = "PEER-STATUS"

    def __post_init__(self) -> None:
        _text(self.peer, "Peer-ID")
        _node_id(self.tracker)
        _text(self.state, "state")
        _int(self.swarms, "swarms")
        _float(self.updated, "updated")

    def _members(self) -> dict[str, object]:
        return {
            "peer": self.peer,
            "tracker": self.tracker,
            "state": self.state,
            "swarms": self.swarms,
            "updated": self.updated,
        }

    @classmethod
    def _from_map(cls, item: Mapping[str, Any]) -> Self:
        return cls(
            peer=item.get("peer"),  # type: ignore[arg-type]  # checked in __post_init__
            tracker=_node_id(item.get("tracker")),
            state=item.get("state"),  # type: ignore[arg-type]
            swarms=item.get("swarms"),  # type: ignore[arg-type]
            updated=_float(item.get("updated"), "updated"),
        )


# --- storage overlay values ---------------------------------------------------------------

_DIGEST_SIZES: Final = {"sha1": 20, "sha224": 28, "sha256": 32, "sha384": 48, "sha512": 64}


def _power_of_two(value: int, what: str) -> int:
    if value < 1 or value & (value - 1):
        raise ValueError(f"{what} must be a power of two")
    return value


@dataclass(frozen=True)
class ContentMeta(_Value):
    """CONTENT-META value: what a fetcher needs to locate, verify and play a channel.

    ``swarm`` is the PPSPP swarm ID: the Merkle root hash for VoD (RFC 7574 §5), the live
    public key swarm ID for live (§6.1). ``cam`` (PPSPP chunk addressing method, §7.6) fixes
    the chunk specification inside the bytes a live signature covers (§6.1.1, §6.1.2.2); it
    is a member the shared design did not list, added so live signatures can be checked
    over exactly the bytes PPSPP signs (default 2, 32-bit chunk ranges, our live source's).
    """

    channel: str
    source: str
    live: bool
    swarm: bytes
    hash: str = "sha256"
    chunk_size: int = 1024
    segment_chunks: int = 64
    length: int | None = None
    chunks: int | None = None
    bitrate: int | None = None
    live_signing: str | None = None
    munro_chunks: int | None = None
    cipm: int | None = None
    cam: int = 2
    title: str = ""
    trackers: tuple[str, ...] = ()
    sources: tuple[tuple[str, int], ...] = ()
    created: float = 0.0

    KIND_NAME: ClassVar[str] = "CONTENT-META"

    def __post_init__(self) -> None:
        _text(self.channel, "channel")
        _text(self.source, "source")
        if not isinstance(self.live, bool):
            raise ValueError("live must be a boolean")
        _swarm_id(self.swarm)
        _choice(self.hash, "hash", HASH_NAMES)
        _int(self.chunk_size, "chunk_size", 1, 1 << 24)
        _power_of_two(_int(self.segment_chunks, "segment_chunks", 1, 1 << 16), "segment_chunks")
        _opt_int(self.length, "length", 1)
        _opt_int(self.chunks, "chunks", 1, 1 << 48)
        _opt_int(self.bitrate, "bitrate", 0, 1 << 32)
        _opt_int(self.munro_chunks, "munro_chunks", 2, 1 << 16)
        _opt_int(self.cipm, "cipm", 0, 255)
        _int(self.cam, "cam", 0, 4)
        _text(self.title, "title", empty=True)
        _float(self.created, "created")
        if len(self.trackers) > MAX_LIST or len(self.sources) > MAX_LIST:
            raise ValueError(f"at most {MAX_LIST} trackers and sources")
        for url in self.trackers:
            _text(url, "tracker URL")
        for source in self.sources:
            if len(source) != 2:
                raise ValueError("a source is [ip, port]")
            _ip(source[0], "source address")
            _int(source[1], "source port", 0, 0xFFFF)
        if self.live:
            _choice(self.live_signing, "live_signing", LIVE_SIGNING)
            if self.live_signing == "unified-merkle":
                if self.munro_chunks is None:
                    raise ValueError("unified-merkle live content needs munro_chunks")
                _power_of_two(self.munro_chunks, "munro_chunks")
                if self.segment_chunks % self.munro_chunks:
                    raise ValueError("a live segment is a whole number of munros")
        else:
            if self.length is None or self.chunks is None:
                raise ValueError("VoD content needs length and chunks")
            if -(-self.length // self.chunk_size) != self.chunks:
                raise ValueError("chunks is not ceil(length / chunk_size)")
            if len(self.swarm) != _DIGEST_SIZES[self.hash]:
                raise ValueError(f"a {self.hash} root hash has {_DIGEST_SIZES[self.hash]} bytes")

    @property
    def segments(self) -> int | None:
        """Number of segments of VoD content (None for live)."""
        if self.chunks is None:
            return None
        return -(-self.chunks // self.segment_chunks)

    def _members(self) -> dict[str, object]:
        return {
            "channel": self.channel,
            "source": self.source,
            "live": self.live,
            "swarm": self.swarm,
            "hash": self.hash,
            "chunk_size": self.chunk_size,
            "segment_chunks": self.segment_chunks,
            "length": self.length,
            "chunks": self.chunks,
            "bitrate": self.bitrate,
            "live_signing": self.live_signing,
            "munro_chunks": self.munro_chunks,
            "cipm": self.cipm,
            "cam": self.cam,
            "title": self.title,
            "trackers": list(self.trackers),
            "sources": [list(s) for s in self.sources],
            "created": self.created,
        }

    @classmethod
    def _from_map(cls, item: Mapping[str, Any]) -> Self:
        sources = []
        for source in _list(item.get("sources", []), "sources", MAX_LIST):
            parts = _list(source, "source", 2)
            if len(parts) != 2:
                raise ValueError("a source is [ip, port]")
            sources.append((parts[0], parts[1]))
        g = item.get
        return cls(
            channel=g("channel"),  # type: ignore[arg-type]  # every member checked in
            source=g("source"),  # type: ignore[arg-type]  # __post_init__
            live=g("live"),  # type: ignore[arg-type]
            swarm=g("swarm"),  # type: ignore[arg-type]
            hash=g("hash"),  # type: ignore[arg-type]
            chunk_size=g("chunk_size"),  # type: ignore[arg-type]
            segment_chunks=g("segment_chunks"),  # type: ignore[arg-type]
            length=g("length"),
            chunks=g("chunks"),
            bitrate=g("bitrate"),
            live_signing=g("live_signing"),
            munro_chunks=g("munro_chunks"),
            cipm=g("cipm"),
            cam=g("cam", 2),
            title=g("title", ""),
            trackers=tuple(_list(g("trackers", []), "trackers", MAX_LIST)),
            sources=tuple(sources),
            created=_float(g("created", 0.0), "created"),
        )


@dataclass(frozen=True)
class MunroSignature:
    """A signed munro in a live segment (Unified Merkle Tree, RFC 7574 §6.1.2): the munro's
    bin (§4.2), its hash, the NTP timestamp and the injector's signature (§6.1.2.2)."""

    bin: int
    hash: bytes
    timestamp: int
    signature: bytes


@dataclass(frozen=True)
class ChunkSignature:
    """A signed chunk in a live segment (Sign All, RFC 7574 §6.1.1): the chunk's bin (2·i),
    the NTP timestamp and the injector's signature."""

    bin: int
    timestamp: int
    signature: bytes


def _signed_entry(entry: object) -> MunroSignature | ChunkSignature:
    parts = _list(entry, "signed entry", 4)
    if len(parts) == 4:
        return MunroSignature(
            _int(parts[0], "munro bin"),
            _bytes(parts[1], "munro hash", 1, 64),
            _int(parts[2], "timestamp"),
            _bytes(parts[3], "signature", 1, 1024),
        )
    if len(parts) == 3:
        return ChunkSignature(
            _int(parts[0], "chunk bin"),
            _int(parts[1], "timestamp"),
            _bytes(parts[2], "signature", 1, 1024),
        )
    raise ValueError("a signed entry has 3 (sign-all) or 4 (unified Merkle) members")


@dataclass(frozen=True)
class ContentSegment(_Value):
    """CONTENT-SEGMENT value: ``segment_chunks`` consecutive chunks (the last segment may be
    short) and what verifies them: ``proof`` (VoD: uncle hashes from the segment's sibling
    up to the root, lowest first) or ``signed`` (live: munro or chunk signatures)."""

    channel: str
    index: int
    first_chunk: int
    data: bytes
    proof: tuple[bytes, ...] = ()
    signed: tuple[MunroSignature | ChunkSignature, ...] = ()

    KIND_NAME: ClassVar[str] = "CONTENT-SEGMENT"

    def __post_init__(self) -> None:
        _text(self.channel, "channel")
        _int(self.index, "index")
        _int(self.first_chunk, "first_chunk")
        _bytes(self.data, "data")
        if len(self.proof) > MAX_PROOF:
            raise ValueError(f"at most {MAX_PROOF} proof hashes")
        for h in self.proof:
            _bytes(h, "proof hash", 1, 64)
        if len(self.signed) > MAX_SIGNED:
            raise ValueError(f"at most {MAX_SIGNED} signed entries")
        if len({type(s) for s in self.signed}) > 1:
            raise ValueError("a segment's signed entries are all munros or all chunks")

    def _members(self) -> dict[str, object]:
        signed: list[list[object]] = []
        for s in self.signed:
            if isinstance(s, MunroSignature):
                signed.append([s.bin, s.hash, s.timestamp, s.signature])
            else:
                signed.append([s.bin, s.timestamp, s.signature])
        return {
            "channel": self.channel,
            "index": self.index,
            "first_chunk": self.first_chunk,
            "data": self.data,
            "proof": list(self.proof),
            "signed": signed,
        }

    @classmethod
    def _from_map(cls, item: Mapping[str, Any]) -> Self:
        proof = tuple(
            _bytes(h, "proof hash", 1, 64) for h in _list(item.get("proof", []), "proof", MAX_PROOF)
        )
        signed = tuple(
            _signed_entry(e) for e in _list(item.get("signed", []), "signed", MAX_SIGNED)
        )
        return cls(
            channel=item.get("channel"),  # type: ignore[arg-type]  # checked in __post_init__
            index=item.get("index"),  # type: ignore[arg-type]
            first_chunk=item.get("first_chunk"),  # type: ignore[arg-type]
            data=item.get("data"),  # type: ignore[arg-type]
            proof=proof,
            signed=signed,
        )
