"""The PPSPP message model (RFC 7574 §7, §8): one dataclass per message type.

Both codecs — the normative Construct definition in :mod:`ppsp.peer.wire` and the hand
``struct`` fast path in :mod:`ppsp.peer.fastwire` — decode to and encode from these classes,
so the rest of the stack never sees bytes.

Chunk specifications (§4) are carried as an inclusive ``start, end`` pair in the units of the
channel's chunk addressing method (CAM): chunks for chunk ranges *and for bins* (a bin always
denotes an aligned chunk range, so the codec converts; the conversion is bijective, see
:mod:`ppsp.peer.bins`), bytes for 64-bit byte ranges. :class:`WireContext` tells a codec the
CAM and the hash and signature sizes that the handshake fixed, since the wire carries no
lengths for them (§8.4–§8.11).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field


class DecodeError(ValueError):
    """A datagram or message that does not follow RFC 7574's wire format.

    Every codec raises only this for malformed input, so a daemon can drop the datagram
    (and, per §3, stop talking to the peer) with a single ``except``. ``partial`` holds the
    messages decoded before the bad one: §8.3 says to process them and discard the rest.
    """

    def __init__(self, message: str, partial: Datagram | None = None) -> None:
        super().__init__(message)
        self.partial = partial


class EncodeError(ValueError):
    """A message that cannot be put on the wire (a value out of its field's range)."""


class MessageType(enum.IntEnum):
    """Message type codes, RFC 7574 §8.2 Table 7."""

    HANDSHAKE = 0
    DATA = 1
    ACK = 2
    HAVE = 3
    INTEGRITY = 4
    PEX_RESV4 = 5
    PEX_REQ = 6
    SIGNED_INTEGRITY = 7
    REQUEST = 8
    CANCEL = 9
    CHOKE = 10
    UNCHOKE = 11
    PEX_RESV6 = 12
    PEX_RESCERT = 13


class ChunkAddressing(enum.IntEnum):
    """Chunk Addressing Method (CAM), option 6, RFC 7574 §7.6."""

    BIN32 = 0
    BYTE_RANGE64 = 1
    CHUNK_RANGE32 = 2
    BIN64 = 3
    CHUNK_RANGE64 = 4

    @property
    def spec_size(self) -> int:
        """Bytes a chunk specification takes on the wire (§4)."""
        return _SPEC_SIZE[self]

    @property
    def is_bin(self) -> bool:
        return self in (ChunkAddressing.BIN32, ChunkAddressing.BIN64)

    @property
    def is_byte_range(self) -> bool:
        return self is ChunkAddressing.BYTE_RANGE64

    @property
    def width(self) -> int:
        """Width in bytes of one number of this CAM (also the Live Discard Window width, §7.9)."""
        return 4 if self in (ChunkAddressing.BIN32, ChunkAddressing.CHUNK_RANGE32) else 8


_SPEC_SIZE = {
    ChunkAddressing.BIN32: 4,
    ChunkAddressing.BYTE_RANGE64: 16,
    ChunkAddressing.CHUNK_RANGE32: 8,
    ChunkAddressing.BIN64: 8,
    ChunkAddressing.CHUNK_RANGE64: 16,
}


class IntegrityMethod(enum.IntEnum):
    """Content Integrity Protection Method (CIPM), option 3, RFC 7574 §7.5."""

    NONE = 0
    MERKLE = 1
    SIGN_ALL = 2
    UNIFIED_MERKLE = 3


class MerkleHashFunction(enum.IntEnum):
    """Merkle Hash Tree Function, option 4, RFC 7574 §7.6 (digest sizes in :attr:`digest_size`)."""

    SHA1 = 0
    SHA224 = 1
    SHA256 = 2
    SHA384 = 3
    SHA512 = 4

    @property
    def digest_size(self) -> int:
        return (20, 28, 32, 48, 64)[self]

    @property
    def hashlib_name(self) -> str:
        return ("sha1", "sha224", "sha256", "sha384", "sha512")[self]


class LiveSignatureAlgorithm(enum.IntEnum):
    """Live Signature Algorithm, option 5: DNSSEC algorithm numbers (RFC 7574 §7.7, RFC 4034)."""

    RSASHA1 = 5
    RSASHA256 = 8
    ECDSAP256SHA256 = 13
    ECDSAP384SHA384 = 14


class OptionCode(enum.IntEnum):
    """HANDSHAKE protocol option codes, RFC 7574 §7 Table 2."""

    VERSION = 0
    MINIMUM_VERSION = 1
    SWARM_ID = 2
    INTEGRITY_METHOD = 3
    MERKLE_HASH_FUNCTION = 4
    LIVE_SIGNATURE_ALGORITHM = 5
    CHUNK_ADDRESSING = 6
    LIVE_DISCARD_WINDOW = 7
    SUPPORTED_MESSAGES = 8
    CHUNK_SIZE = 9
    END = 255


#: Chunk Size option value meaning "variable chunk size" (§7.10).
VARIABLE_CHUNK_SIZE = 0xFFFFFFFF


@dataclass(slots=True)
class HandshakeOptions:
    """The protocol options of a HANDSHAKE (§7); ``None`` means "not present".

    On the wire the options are ordered by code with End last (§7); the codecs keep that
    order, which is also what libswift sends, so re-encoding a decoded handshake is
    byte-exact.
    """

    version: int | None = None
    minimum_version: int | None = None
    swarm_id: bytes | None = None
    integrity_method: IntegrityMethod | int | None = None
    merkle_hash_function: MerkleHashFunction | int | None = None
    live_signature_algorithm: LiveSignatureAlgorithm | int | None = None
    chunk_addressing: ChunkAddressing | int | None = None
    live_discard_window: int | None = None
    #: Raw bitmap of option 8 (§7.10): bit X from the left set = message type X supported.
    supported_messages: bytes | None = None
    chunk_size: int | None = None

    def supported_message_types(self) -> set[int] | None:
        """The message types the Supported Messages bitmap announces, or None if absent."""
        if self.supported_messages is None:
            return None
        return {
            i * 8 + bit
            for i, byte in enumerate(self.supported_messages)
            for bit in range(8)
            if byte & (0x80 >> bit)
        }

    @staticmethod
    def bitmap_for(types: set[int]) -> bytes:
        """Encode a set of message types as the option 8 bitmap, truncated after its last
        non-zero byte (§7.10)."""
        if not types:
            return b""
        out = bytearray(max(types) // 8 + 1)
        for t in types:
            out[t // 8] |= 0x80 >> (t % 8)
        return bytes(out)


@dataclass(slots=True)
class Handshake:
    """HANDSHAKE (§8.4). ``source_channel == 0`` is an explicit close (§8.4, §3.1)."""

    source_channel: int
    options: HandshakeOptions = field(default_factory=HandshakeOptions)

    @property
    def is_close(self) -> bool:
        return self.source_channel == 0


@dataclass(slots=True)
class Data:
    """DATA (§8.6): chunk specification, 64-bit sender timestamp (µs), the chunk bytes."""

    start: int
    end: int
    timestamp: int
    payload: bytes | memoryview


@dataclass(slots=True)
class Ack:
    """ACK (§8.7): chunk specification and the 64-bit one-way delay sample (µs) for LEDBAT."""

    start: int
    end: int
    delay_sample: int


@dataclass(slots=True)
class Have:
    """HAVE (§8.5)."""

    start: int
    end: int


@dataclass(slots=True)
class Integrity:
    """INTEGRITY (§8.8): the hash of the Merkle node whose leaves are the chunk specification."""

    start: int
    end: int
    hash: bytes


@dataclass(slots=True)
class PexResV4:
    """PEX_RESv4 (§8.13)."""

    address: ipaddress.IPv4Address
    port: int


@dataclass(slots=True)
class PexReq:
    """PEX_REQ (§8.13)."""


@dataclass(slots=True)
class SignedIntegrity:
    """SIGNED_INTEGRITY (§8.9): chunk specification, 64-bit NTP timestamp, signature."""

    start: int
    end: int
    timestamp: int
    signature: bytes


@dataclass(slots=True)
class Request:
    """REQUEST (§8.10)."""

    start: int
    end: int


@dataclass(slots=True)
class Cancel:
    """CANCEL (§8.11)."""

    start: int
    end: int


@dataclass(slots=True)
class Choke:
    """CHOKE (§8.12)."""


@dataclass(slots=True)
class Unchoke:
    """UNCHOKE (§8.12)."""


@dataclass(slots=True)
class PexResV6:
    """PEX_RESv6 (§8.13)."""

    address: ipaddress.IPv6Address
    port: int


@dataclass(slots=True)
class PexResCert:
    """PEX_REScert (§8.13): a DER-encoded X.509 membership certificate (§12.2.1)."""

    certificate: bytes


Message = (
    Handshake
    | Data
    | Ack
    | Have
    | Integrity
    | PexResV4
    | PexReq
    | SignedIntegrity
    | Request
    | Cancel
    | Choke
    | Unchoke
    | PexResV6
    | PexResCert
)

MESSAGE_CLASSES: dict[MessageType, type[Message]] = {
    MessageType.HANDSHAKE: Handshake,
    MessageType.DATA: Data,
    MessageType.ACK: Ack,
    MessageType.HAVE: Have,
    MessageType.INTEGRITY: Integrity,
    MessageType.PEX_RESV4: PexResV4,
    MessageType.PEX_REQ: PexReq,
    MessageType.SIGNED_INTEGRITY: SignedIntegrity,
    MessageType.REQUEST: Request,
    MessageType.CANCEL: Cancel,
    MessageType.CHOKE: Choke,
    MessageType.UNCHOKE: Unchoke,
    MessageType.PEX_RESV6: PexResV6,
    MessageType.PEX_RESCERT: PexResCert,
}
MESSAGE_TYPES: dict[type[Message], MessageType] = {v: k for k, v in MESSAGE_CLASSES.items()}


@dataclass(slots=True)
class Datagram:
    """A PPSPP datagram (§8.3): the destination channel ID and the messages, in order.

    A datagram with no messages is a keep-alive (§8.14).
    """

    channel: int
    messages: list[Message] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class WireContext:
    """What a codec must know that the wire does not say: fixed by the channel's handshake.

    ``hash_size`` is the Merkle hash function's digest size (INTEGRITY, §8.8);
    ``signature_size`` the live signature algorithm's signature size (SIGNED_INTEGRITY, §8.9);
    ``chunk_size`` the swarm's fixed chunk size, or None when unknown or variable: with it, a
    datagram may carry several DATA messages (§8.6), each taking exactly its chunks' bytes.
    """

    chunk_addressing: ChunkAddressing = ChunkAddressing.CHUNK_RANGE32
    hash_size: int = 32
    signature_size: int = 64
    chunk_size: int | None = None

    def data_length(self, start: int, end: int) -> int | None:
        """Bytes the chunks ``start..end`` of a DATA take when more messages follow it in the
        datagram (§8.6: several DATA only with a fixed chunk size), or None when unknown."""
        if self.chunk_size is None or end < start:
            return None
        if self.chunk_addressing is ChunkAddressing.BYTE_RANGE64:
            return end - start + 1
        return (end - start + 1) * self.chunk_size

    def updated_by(self, options: HandshakeOptions) -> WireContext:
        """The context that applies after a HANDSHAKE carrying ``options`` (§7: a message
        following a handshake in the same datagram uses the handshake's CAM and sizes)."""
        cam = self.chunk_addressing
        if options.chunk_addressing is not None:
            try:
                cam = ChunkAddressing(options.chunk_addressing)
            except ValueError as exc:
                raise DecodeError(
                    f"unknown chunk addressing method {options.chunk_addressing}"
                ) from exc
        hash_size = self.hash_size
        if options.merkle_hash_function is not None:
            try:
                hash_size = MerkleHashFunction(options.merkle_hash_function).digest_size
            except ValueError as exc:
                raise DecodeError(
                    f"unknown merkle hash function {options.merkle_hash_function}"
                ) from exc
        signature_size = self.signature_size
        if options.live_signature_algorithm is not None and options.swarm_id is not None:
            signature_size = signature_size_for(options.live_signature_algorithm, options.swarm_id)
        chunk_size = self.chunk_size
        if options.chunk_size is not None:
            chunk_size = None if options.chunk_size == VARIABLE_CHUNK_SIZE else options.chunk_size
        if (cam, hash_size, signature_size, chunk_size) == (
            self.chunk_addressing,
            self.hash_size,
            self.signature_size,
            self.chunk_size,
        ):
            return self
        return WireContext(cam, hash_size, signature_size, chunk_size)


def signature_size_for(algorithm: int, swarm_id: bytes) -> int:
    """Signature size of a live swarm (§8.9): fixed for ECDSA (RFC 6605), the modulus length
    of the swarm's RSA public key (RFC 3110 DNSKEY format inside the swarm ID, §6.1)."""
    if algorithm == LiveSignatureAlgorithm.ECDSAP256SHA256:
        return 64
    if algorithm == LiveSignatureAlgorithm.ECDSAP384SHA384:
        return 96
    if algorithm in (LiveSignatureAlgorithm.RSASHA1, LiveSignatureAlgorithm.RSASHA256):
        # Swarm ID = algorithm(1) + DNSKEY public key (RFC 3110 §2): exponent length in one
        # byte (or 0 then two bytes), exponent, modulus.
        key = swarm_id[1:]
        if not key:
            raise DecodeError("live swarm ID carries no RSA key")
        if key[0] == 0:
            if len(key) < 3:
                raise DecodeError("truncated RSA key in live swarm ID")
            exp_len, off = int.from_bytes(key[1:3], "big"), 3
        else:
            exp_len, off = key[0], 1
        modulus = len(key) - off - exp_len
        if modulus <= 0:
            raise DecodeError("RSA key in live swarm ID has no modulus")
        return modulus
    raise DecodeError(f"unsupported live signature algorithm {algorithm}")
