"""Live streaming integrity for PPSPP (RFC 7574 §6), sans-IO.

What a live swarm needs beyond the static Merkle tree:

* the injector's key pair, whose public half *is* the swarm ID (§6.1): a DNSSEC algorithm
  number followed by the DNSKEY-format public key, and signatures in RRSIG format (§8.9);
* "Sign All" (§6.1.1): one signature per chunk, over chunk specification ‖ NTP timestamp ‖
  chunk;
* the "Unified Merkle Tree" (§6.1.2, mandatory to implement): one signature per munro, the
  root of a subtree of ``NCHUNKS_PER_SIG`` chunks, and ordinary Merkle verification of each
  chunk against its signed munro;
* the Live Discard Window (§6.2, §7.9) and secure tune-in (§6.1.2.4).

Units: every method that takes values straight from a message (``offer_*``,
:meth:`SignAllVerifier.verify`) takes them in the units of the channel's chunk addressing
method, exactly as :mod:`ppsp.peer.messages` carries them (chunks for chunk ranges and bins,
bytes for 64-bit byte ranges); every other chunk argument or result is a chunk index. Byte
ranges need the fixed ``chunk_size`` to convert.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from ppsp.peer.messages import (
    ChunkAddressing,
    DecodeError,
    EncodeError,
    Integrity,
    LiveSignatureAlgorithm,
    MerkleHashFunction,
    SignedIntegrity,
)

__all__ = [
    "DEFAULT_CHUNKS_PER_SIGNATURE",
    "DiscardWindow",
    "InvalidSwarmId",
    "LiveSigner",
    "LiveVerifier",
    "SignAllInjector",
    "SignAllVerifier",
    "SignedMunro",
    "UnifiedMerkleInjector",
    "UnifiedMerkleVerifier",
    "encode_chunk_spec",
    "ntp_timestamp",
    "tune_in_point",
    "unix_time_from_ntp",
]

#: NCHUNKS_PER_SIG used when the caller does not choose one (§6.1.2.1 leaves it to the
#: deployer; 16 signs every 16 KiB at the default 1 KiB chunk size).
DEFAULT_CHUNKS_PER_SIGNATURE = 16


class InvalidSwarmId(DecodeError):
    """A live swarm ID that is not an algorithm number plus a valid DNSKEY public key (§6.1)."""


# --------------------------------------------------------------------------------------------
# Keys and signatures (§6.1, §7.7, §8.9)
# --------------------------------------------------------------------------------------------

_EC_CURVES: dict[LiveSignatureAlgorithm, tuple[type[ec.EllipticCurve], int]] = {
    # RFC 6605 §4: the public key is x ‖ y and the signature r ‖ s, each a fixed-width
    # big-endian integer of the curve's size.
    LiveSignatureAlgorithm.ECDSAP256SHA256: (ec.SECP256R1, 32),
    LiveSignatureAlgorithm.ECDSAP384SHA384: (ec.SECP384R1, 48),
}

_RSA_MIN_BITS = 512  # smaller moduli are factorable in hours; no DNSSEC signer uses them
_RSA_MAX_BITS = 4096  # RFC 3110 §2 limits exponent and modulus to 4096 bits each
_PEM_ALGORITHM_LABEL = b"PPSPP-Live-Signature-Algorithm: "


def _hash_for(algorithm: LiveSignatureAlgorithm) -> hashes.HashAlgorithm:
    if algorithm is LiveSignatureAlgorithm.RSASHA1:
        return hashes.SHA1()
    if algorithm is LiveSignatureAlgorithm.ECDSAP384SHA384:
        return hashes.SHA384()
    return hashes.SHA256()


def _as_algorithm(algorithm: int) -> LiveSignatureAlgorithm:
    try:
        return LiveSignatureAlgorithm(algorithm)
    except ValueError:
        raise ValueError(f"unsupported live signature algorithm {algorithm}") from None


def _dnskey_rsa(key: rsa.RSAPublicKey) -> bytes:
    # RFC 3110 §2: exponent length (one byte, or zero then two bytes), exponent, modulus;
    # both without leading zero bytes.
    numbers = key.public_numbers()
    exponent = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
    modulus = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
    if len(exponent) <= 255:
        prefix = bytes([len(exponent)])
    else:
        prefix = b"\x00" + len(exponent).to_bytes(2, "big")
    return prefix + exponent + modulus


def _dnskey_ec(key: ec.EllipticCurvePublicKey) -> bytes:
    # RFC 6605 §4: uncompressed point without the 0x04 prefix.
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )[1:]


class LiveVerifier:
    """Checks injector signatures with the public key carried in a live swarm ID (§6.1)."""

    __slots__ = ("_hash", "_public_key", "algorithm", "signature_size", "swarm_id")

    def __init__(
        self,
        algorithm: LiveSignatureAlgorithm,
        public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    ) -> None:
        self.algorithm = algorithm
        self._public_key = public_key
        self._hash = _hash_for(algorithm)
        if isinstance(public_key, rsa.RSAPublicKey):
            if algorithm in _EC_CURVES:
                raise ValueError(f"{algorithm.name} needs an EC key, got RSA")
            dnskey = _dnskey_rsa(public_key)
            self.signature_size = (public_key.key_size + 7) // 8
        else:
            curve, width = _EC_CURVES.get(algorithm, (None, 0))
            if curve is None or not isinstance(public_key.curve, curve):
                raise ValueError(f"{algorithm.name} does not match curve {public_key.curve.name}")
            dnskey = _dnskey_ec(public_key)
            self.signature_size = 2 * width
        self.swarm_id = bytes([algorithm]) + dnskey

    @classmethod
    def from_swarm_id(cls, swarm_id: bytes) -> LiveVerifier:
        """Parse a live swarm ID; raise :class:`InvalidSwarmId` if it is malformed."""
        if len(swarm_id) < 2:
            raise InvalidSwarmId("live swarm ID too short")
        try:
            algorithm = LiveSignatureAlgorithm(swarm_id[0])
        except ValueError:
            raise InvalidSwarmId(f"unsupported live signature algorithm {swarm_id[0]}") from None
        key = bytes(swarm_id[1:])
        public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
        if algorithm in _EC_CURVES:
            curve, width = _EC_CURVES[algorithm]
            if len(key) != 2 * width:
                raise InvalidSwarmId(
                    f"{algorithm.name} public key is {len(key)} bytes, expected {2 * width}"
                )
            try:
                public_key = ec.EllipticCurvePublicKey.from_encoded_point(curve(), b"\x04" + key)
            except ValueError as exc:
                raise InvalidSwarmId(f"{algorithm.name} public key is not on the curve") from exc
        else:
            public_key = cls._parse_rsa(key)
        verifier = cls(algorithm, public_key)
        if verifier.swarm_id != bytes(swarm_id):  # pragma: no cover - parse is canonical
            raise InvalidSwarmId("live swarm ID is not in canonical DNSKEY form")
        return verifier

    @staticmethod
    def _parse_rsa(key: bytes) -> rsa.RSAPublicKey:
        # RFC 3110 §2, checked strictly so that the signature size the wire codec derives
        # from the swarm ID (messages.signature_size_for) is the key's real size.
        if key[0] == 0:
            if len(key) < 3:
                raise InvalidSwarmId("truncated RSA exponent length")
            exp_len, offset = int.from_bytes(key[1:3], "big"), 3
            if exp_len <= 255:
                raise InvalidSwarmId("RSA exponent length uses the long form needlessly")
        else:
            exp_len, offset = key[0], 1
        exponent = key[offset : offset + exp_len]
        modulus = key[offset + exp_len :]
        if len(exponent) != exp_len or not modulus:
            raise InvalidSwarmId("truncated RSA public key")
        if exponent[0] == 0 or modulus[0] == 0:
            raise InvalidSwarmId("RSA exponent or modulus has a leading zero byte (RFC 3110)")
        e, n = int.from_bytes(exponent, "big"), int.from_bytes(modulus, "big")
        if not _RSA_MIN_BITS <= n.bit_length() <= _RSA_MAX_BITS or e.bit_length() > _RSA_MAX_BITS:
            raise InvalidSwarmId(f"RSA modulus of {n.bit_length()} bits is out of range")
        try:
            return rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError as exc:
            raise InvalidSwarmId(f"invalid RSA public key: {exc}") from exc

    def verify(self, data: bytes, signature: bytes | memoryview) -> bool:
        """True if ``signature`` (RRSIG format, §8.9) signs ``data`` with this swarm's key."""
        if len(signature) != self.signature_size:
            return False
        try:
            if isinstance(self._public_key, rsa.RSAPublicKey):
                self._public_key.verify(bytes(signature), data, padding.PKCS1v15(), self._hash)
            else:
                width = self.signature_size // 2
                r = int.from_bytes(signature[:width], "big")
                s = int.from_bytes(signature[width:], "big")
                self._public_key.verify(encode_dss_signature(r, s), data, ec.ECDSA(self._hash))
        except (InvalidSignature, ValueError):
            return False
        return True


class LiveSigner:
    """The live injector's private key: makes the swarm ID and signs (§6.1, §8.9)."""

    __slots__ = ("_hash", "_private_key", "algorithm", "verifier")

    def __init__(
        self,
        algorithm: LiveSignatureAlgorithm,
        private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    ) -> None:
        self.algorithm = algorithm
        self._private_key = private_key
        self._hash = _hash_for(algorithm)
        self.verifier = LiveVerifier(algorithm, private_key.public_key())

    @classmethod
    def generate(
        cls,
        algorithm: LiveSignatureAlgorithm = LiveSignatureAlgorithm.ECDSAP256SHA256,
        *,
        rsa_bits: int = 2048,
    ) -> LiveSigner:
        """A fresh key pair (RSA with public exponent 65537)."""
        algorithm = _as_algorithm(algorithm)
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if algorithm in _EC_CURVES:
            key = ec.generate_private_key(_EC_CURVES[algorithm][0]())
        else:
            if not _RSA_MIN_BITS <= rsa_bits <= _RSA_MAX_BITS:
                raise ValueError(f"RSA key size must be {_RSA_MIN_BITS}..{_RSA_MAX_BITS} bits")
            key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
        return cls(algorithm, key)

    @property
    def swarm_id(self) -> bytes:
        """Algorithm number ‖ DNSKEY public key (§6.1)."""
        return self.verifier.swarm_id

    @property
    def signature_size(self) -> int:
        return self.verifier.signature_size

    def sign(self, data: bytes) -> bytes:
        """Sign ``data``; the result is in RRSIG Signature-field format (§8.9): PKCS#1 v1.5
        for RSA (RFC 3110, RFC 5702), fixed-width r ‖ s for ECDSA (RFC 6605 §4), not DER."""
        if isinstance(self._private_key, rsa.RSAPrivateKey):
            return self._private_key.sign(data, padding.PKCS1v15(), self._hash)
        r, s = decode_dss_signature(self._private_key.sign(data, ec.ECDSA(self._hash)))
        width = self.signature_size // 2
        return r.to_bytes(width, "big") + s.to_bytes(width, "big")

    # -- persistence for `p2pcdn live-source --key` ------------------------------------------

    def to_pem(self) -> bytes:
        """PKCS#8 PEM, preceded by an RFC 7468 §5.2 explanatory line naming the algorithm
        (an RSA key alone does not say whether it signs with SHA-1 or SHA-256, and the
        algorithm is part of the swarm ID)."""
        pem = self._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return _PEM_ALGORITHM_LABEL + str(int(self.algorithm)).encode() + b"\n" + pem

    @classmethod
    def from_pem(cls, data: bytes, algorithm: LiveSignatureAlgorithm | None = None) -> LiveSigner:
        """Load a key written by :meth:`to_pem` (or any unencrypted PEM private key).

        ``algorithm`` overrides the explanatory line; without either, an EC key's curve
        decides and an RSA key defaults to RSASHA256.
        """
        if algorithm is None:
            for line in data.splitlines():
                if line.startswith(_PEM_ALGORITHM_LABEL):
                    try:
                        algorithm = _as_algorithm(int(line[len(_PEM_ALGORITHM_LABEL) :]))
                    except ValueError as exc:
                        raise ValueError(f"bad algorithm line in PEM: {line!r}") from exc
                    break
        key = serialization.load_pem_private_key(data, password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            if algorithm is None:
                for candidate, (curve, _) in _EC_CURVES.items():
                    if isinstance(key.curve, curve):
                        algorithm = candidate
                        break
                else:
                    raise ValueError(f"unsupported curve {key.curve.name}")
            return cls(algorithm, key)
        if isinstance(key, rsa.RSAPrivateKey):
            if algorithm is None:
                algorithm = LiveSignatureAlgorithm.RSASHA256
            if algorithm in _EC_CURVES:
                raise ValueError(f"{algorithm.name} needs an EC key, got RSA")
            return cls(algorithm, key)
        raise ValueError(f"unsupported private key type {type(key).__name__}")

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_pem` to ``path``, readable by the owner only."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.to_pem())

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], algorithm: LiveSignatureAlgorithm | None = None
    ) -> LiveSigner:
        return cls.from_pem(Path(path).read_bytes(), algorithm)


# --------------------------------------------------------------------------------------------
# NTP timestamps (RFC 5905 §6), used in SIGNED_INTEGRITY (§8.9)
# --------------------------------------------------------------------------------------------

_NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
_TWO32 = 1 << 32


def ntp_timestamp(unix_time: float) -> int:
    """64-bit NTP timestamp (era 0: 32-bit seconds since 1900, 32-bit fraction).

    Raises ValueError outside era 0 (before 1900 or from 2036-02-07 on).
    """
    whole = math.floor(unix_time)
    fraction = round((unix_time - whole) * _TWO32)  # exact split: no precision lost
    if fraction == _TWO32:
        whole, fraction = whole + 1, 0
    seconds = whole + _NTP_UNIX_OFFSET
    if not 0 <= seconds < _TWO32:
        raise ValueError(f"time {unix_time} is outside NTP era 0")
    return (seconds << 32) | fraction


def unix_time_from_ntp(timestamp: int) -> float:
    """Unix time of a 64-bit era-0 NTP timestamp."""
    if not 0 <= timestamp < 1 << 64:
        raise ValueError("NTP timestamp must be a 64-bit unsigned integer")
    return (timestamp >> 32) - _NTP_UNIX_OFFSET + (timestamp & (_TWO32 - 1)) / _TWO32


# --------------------------------------------------------------------------------------------
# Chunk specifications as signed (§6.1.1, §6.1.2.2: "the on-the-wire representation")
# --------------------------------------------------------------------------------------------

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_U32X2 = struct.Struct(">II")
_U64X2 = struct.Struct(">QQ")


def encode_chunk_spec(cam: ChunkAddressing, start: int, end: int) -> bytes:
    """The wire form of chunk specification ``start..end`` (inclusive) under ``cam`` (§4).

    ``start``/``end`` are in the CAM's units as :mod:`ppsp.peer.messages` carries them; for
    bins they are an aligned chunk range, turned into its bin number (§4.2): chunks
    ``[k·2^L, (k+1)·2^L − 1]`` are bin ``2^(L+1)·k + 2^L − 1``. Raises EncodeError.
    """
    if start < 0 or end < start:
        raise EncodeError(f"invalid chunk specification {start}..{end}")
    try:
        if cam.is_bin:
            width = end - start + 1
            if width & (width - 1) or start & (width - 1):
                raise EncodeError(f"chunks {start}..{end} are not one bin")
            bin_number = 2 * start + width - 1
            if cam is ChunkAddressing.BIN32:
                if bin_number >= 0xFFFFFFFF:  # all ones means "empty" (§4.2)
                    raise EncodeError(f"chunks {start}..{end} do not fit a 32-bit bin")
                return _U32.pack(bin_number)
            if bin_number >= 0xFFFFFFFFFFFFFFFF:
                raise EncodeError(f"chunks {start}..{end} do not fit a 64-bit bin")
            return _U64.pack(bin_number)
        if cam is ChunkAddressing.CHUNK_RANGE32:
            return _U32X2.pack(start, end)
        return _U64X2.pack(start, end)
    except struct.error as exc:
        raise EncodeError(
            f"chunk specification {start}..{end} out of range for {cam.name}"
        ) from exc


class _Units:
    """Chunk indices ↔ the CAM's wire units (identical except for byte ranges)."""

    __slots__ = ("cam", "chunk_size")

    def __init__(self, cam: ChunkAddressing | int, chunk_size: int | None) -> None:
        self.cam = ChunkAddressing(cam)
        if self.cam.is_byte_range and (chunk_size is None or chunk_size <= 0):
            raise ValueError("64-bit byte ranges need the fixed chunk size")
        self.chunk_size = chunk_size or 0

    def to_wire(self, first: int, last: int, last_length: int | None = None) -> tuple[int, int]:
        if not self.cam.is_byte_range:
            return first, last
        end = (last + 1) * self.chunk_size - 1
        if last_length is not None:
            end = last * self.chunk_size + last_length - 1
        return first * self.chunk_size, end

    def to_chunks(self, start: int, end: int) -> tuple[int, int] | None:
        """The chunks a wire range covers exactly, or None if it splits a chunk."""
        if start < 0 or end < start:
            return None
        if not self.cam.is_byte_range:
            return start, end
        size = self.chunk_size
        if start % size or (end + 1) % size:
            return None
        return start // size, (end + 1) // size - 1

    def signed_payload(self, start: int, end: int, timestamp: int, tail: bytes) -> bytes:
        # §6.1.1 / §6.1.2.2: chunk specification ‖ 64-bit NTP timestamp ‖ chunk or hash.
        return encode_chunk_spec(self.cam, start, end) + _U64.pack(timestamp) + tail


def _fresh(timestamp: int, now: float | None, max_age: float | None) -> bool:
    if now is None or max_age is None:
        return True
    return now - unix_time_from_ntp(timestamp) <= max_age


# --------------------------------------------------------------------------------------------
# Sign All (§6.1.1)
# --------------------------------------------------------------------------------------------


class SignAllInjector:
    """Source side of Sign All: one SIGNED_INTEGRITY per chunk, sent before its DATA."""

    def __init__(
        self,
        signer: LiveSigner,
        cam: ChunkAddressing = ChunkAddressing.CHUNK_RANGE32,
        *,
        chunk_size: int | None = None,
    ) -> None:
        self.signer = signer
        self._units = _Units(cam, chunk_size)

    def add_chunk(self, index: int, data: bytes, now: float) -> SignedIntegrity:
        """Sign chunk ``index``; ``now`` is the wall-clock Unix time of signing (§6.1.1: UTC)."""
        if self._units.cam.is_byte_range and len(data) > self._units.chunk_size:
            raise ValueError(f"chunk of {len(data)} bytes exceeds the chunk size")
        start, end = self._units.to_wire(index, index, len(data))
        timestamp = ntp_timestamp(now)
        payload = self._units.signed_payload(start, end, timestamp, data)
        return SignedIntegrity(start, end, timestamp, self.signer.sign(payload))


class SignAllVerifier:
    """Receiver side of Sign All: checks a chunk against its SIGNED_INTEGRITY.

    The caller must check that the SIGNED_INTEGRITY's chunk specification is the DATA's.
    With ``max_age`` (seconds) and a ``now``, signatures older than that are refused.
    """

    def __init__(
        self,
        verifier: LiveVerifier,
        cam: ChunkAddressing = ChunkAddressing.CHUNK_RANGE32,
        *,
        chunk_size: int | None = None,
        max_age: float | None = None,
    ) -> None:
        self.verifier = verifier
        self.max_age = max_age
        self._units = _Units(cam, chunk_size)

    def verify(
        self,
        start: int,
        end: int,
        timestamp: int,
        signature: bytes,
        data: bytes | memoryview,
        now: float | None = None,
    ) -> bool:
        if not 0 <= timestamp < 1 << 64 or not _fresh(timestamp, now, self.max_age):
            return False
        try:
            payload = self._units.signed_payload(start, end, timestamp, bytes(data))
        except EncodeError:
            return False
        return self.verifier.verify(payload, signature)


# --------------------------------------------------------------------------------------------
# Unified Merkle Tree (§6.1.2)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignedMunro:
    """A signed munro (§6.1.2.1): chunks ``start..end`` (indices), their subtree's root hash,
    the NTP timestamp and the injector's signature over them (§6.1.2.2)."""

    start: int
    end: int
    munro_hash: bytes
    timestamp: int
    signature: bytes


def _hasher(
    hash_function: MerkleHashFunction | int,
) -> tuple[Callable[[bytes | memoryview], Any], int]:
    function = MerkleHashFunction(hash_function)
    return getattr(hashlib, function.hashlib_name), function.digest_size


def _check_chunks_per_signature(n: int) -> int:
    # §6.1.2.1: NCHUNKS_PER_SIG is a fixed power of 2 and larger than 1.
    if n < 2 or n & (n - 1):
        raise ValueError(f"chunks per signature must be a power of 2 ≥ 2, got {n}")
    return n.bit_length() - 1


class _MunroTree:
    """The subtree under one munro: ``levels[h][i]`` is the hash of the i-th node at height h
    (height 0 = chunk hashes, top level = the munro hash alone)."""

    __slots__ = ("levels", "signed")

    def __init__(self, levels: list[list[bytes]], signed: SignedMunro) -> None:
        self.levels = levels
        self.signed = signed


#: Every this many chunks, forgetting scans a whole table once, whatever the bounds say: a
#: node offered after its chunks left the window (a late INTEGRITY) must not stay forever.
FORGET_SWEEP_CHUNKS: Final = 1024


def forget_nodes_before(table: dict[tuple[int, int], Any], old: int, new: int) -> None:
    """Delete the tree nodes (height, index at that height) of ``table`` that lie wholly before
    chunk ``new``, those wholly before ``old`` being gone already (§6.2: what leaves the live
    discard window is forgotten). This runs for every chunk the window moves, so it visits the
    nodes between the two bounds, about two per chunk, not the whole table (a scan per chunk
    cost 2-3 ms with an 8,192-chunk window: 24 viewers saturated two cores); a whole scan is
    made every FORGET_SWEEP_CHUNKS chunks, and when the jump is larger than the table."""
    if new <= old or not table:
        return
    if new - old > len(table) or old // FORGET_SWEEP_CHUNKS != new // FORGET_SWEEP_CHUNKS:
        for key in [k for k in table if (k[1] + 1) << k[0] <= new]:
            del table[key]
        return
    height = 0
    while new >> height:  # heights at which some node can lie wholly before ``new``
        for index in range(old >> height, new >> height):
            table.pop((height, index), None)
        height += 1


def forget_munros_before(table: dict[int, Any], height: int, old: int, new: int) -> None:
    """:func:`forget_nodes_before` for a table keyed by munro number (munros of 2^height
    chunks)."""
    if new <= old or not table:
        return
    if new - old > len(table) or old // FORGET_SWEEP_CHUNKS != new // FORGET_SWEEP_CHUNKS:
        for k in [k for k in table if (k + 1) << height <= new]:
            del table[k]
        return
    for k in range(old >> height, new >> height):
        table.pop(k, None)


class _UnifiedMerkleBase:
    def __init__(
        self,
        cam: ChunkAddressing | int,
        hash_function: MerkleHashFunction | int,
        chunks_per_signature: int,
        chunk_size: int | None,
    ) -> None:
        self._units = _Units(cam, chunk_size)
        self._hash, self.digest_size = _hasher(hash_function)
        self.hash_function = MerkleHashFunction(hash_function)
        self.chunks_per_signature = chunks_per_signature
        self._munro_height = _check_chunks_per_signature(chunks_per_signature)
        self._empty = bytes(self.digest_size)
        #: Everything wholly before this chunk is forgotten (:meth:`forget_before`).
        self._forgotten = 0

    def _parent(self, left: bytes, right: bytes) -> bytes:
        # §5.1: parent = H(left ‖ right), except that two empty children make an empty parent.
        if left == self._empty and right == self._empty:
            return self._empty
        digest: bytes = self._hash(left + right).digest()
        return digest

    def _munro_messages(self, munro: SignedMunro) -> tuple[Integrity, SignedIntegrity]:
        start, end = self._units.to_wire(munro.start, munro.end)
        return (
            Integrity(start, end, munro.munro_hash),
            SignedIntegrity(start, end, munro.timestamp, munro.signature),
        )

    def _uncles(self, chunk: int, levels: Callable[[int, int], bytes | None]) -> list[Integrity]:
        # §5.4 / §6.1.2.3: sibling and uncles up to (not including) the munro, ordered by
        # tree height descending, so the lowest (the chunk's sibling) comes last.
        out: list[Integrity] = []
        offset = chunk & (self.chunks_per_signature - 1)
        base = chunk - offset
        for height in range(self._munro_height - 1, -1, -1):
            sibling = (offset >> height) ^ 1
            h = levels(height, sibling)
            if h is None:
                raise LookupError(f"hash of height {height} sibling of chunk {chunk} unknown")
            first = base + (sibling << height)
            start, end = self._units.to_wire(first, first + (1 << height) - 1)
            out.append(Integrity(start, end, h))
        return out


class UnifiedMerkleInjector(_UnifiedMerkleBase):
    """Source side of the Unified Merkle Tree (§6.1.2).

    Munro k covers chunks ``[k·N, (k+1)·N − 1]`` with N = ``chunks_per_signature``. Per
    §6.1.2.3 the source must not send HAVE for a chunk until :meth:`add_chunk` has returned
    the signed munro covering it (:meth:`signed_end`).
    """

    def __init__(
        self,
        signer: LiveSigner,
        cam: ChunkAddressing = ChunkAddressing.CHUNK_RANGE32,
        hash_function: MerkleHashFunction = MerkleHashFunction.SHA256,
        chunks_per_signature: int = DEFAULT_CHUNKS_PER_SIGNATURE,
        *,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(cam, hash_function, chunks_per_signature, chunk_size)
        self.signer = signer
        self._pending: dict[int, dict[int, bytes]] = {}
        self._munros: dict[int, _MunroTree] = {}
        self._rightmost: int | None = None

    def add_chunk(self, index: int, data: bytes | memoryview, now: float) -> list[SignedMunro]:
        """Add chunk ``index``; returns the munro(s) this completes, signed at ``now``."""
        if index < 0:
            raise ValueError("chunk index must be ≥ 0")
        k = index >> self._munro_height
        if k in self._munros:
            raise ValueError(f"chunk {index} belongs to munro {k}, which is already signed")
        leaves = self._pending.setdefault(k, {})
        leaves[index & (self.chunks_per_signature - 1)] = self._hash(data).digest()
        if len(leaves) < self.chunks_per_signature:
            return []
        del self._pending[k]
        return [self._complete(k, [leaves[i] for i in range(self.chunks_per_signature)], now)]

    def flush(self, now: float) -> list[SignedMunro]:
        """End of the broadcast: sign every incomplete munro, missing chunks counting as empty
        (all-zero) leaves as in the static tree (§5.1)."""
        out = []
        for k in sorted(self._pending):
            leaves = self._pending.pop(k)
            out.append(
                self._complete(
                    k, [leaves.get(i, self._empty) for i in range(self.chunks_per_signature)], now
                )
            )
        return out

    def _complete(self, k: int, leaves: list[bytes], now: float) -> SignedMunro:
        levels = [leaves]
        while len(levels[-1]) > 1:
            below = levels[-1]
            levels.append([self._parent(below[i], below[i + 1]) for i in range(0, len(below), 2)])
        first = k << self._munro_height
        last = first + self.chunks_per_signature - 1
        munro_hash = levels[-1][0]
        timestamp = ntp_timestamp(now)
        start, end = self._units.to_wire(first, last)
        signature = self.signer.sign(self._units.signed_payload(start, end, timestamp, munro_hash))
        signed = SignedMunro(first, last, munro_hash, timestamp, signature)
        self._munros[k] = _MunroTree(levels, signed)
        if self._rightmost is None or k > self._rightmost:
            self._rightmost = k
        return signed

    def munro_for(self, chunk: int) -> SignedMunro | None:
        tree = self._munros.get(chunk >> self._munro_height)
        return None if tree is None else tree.signed

    def rightmost_munro(self) -> SignedMunro | None:
        """The munro to announce at tune-in (§6.1.2.4)."""
        return None if self._rightmost is None else self._munros[self._rightmost].signed

    def rightmost_signed_munro(self) -> tuple[int, int] | None:
        """Chunks of the rightmost signed munro, or None before any."""
        munro = self.rightmost_munro()
        return None if munro is None else (munro.start, munro.end)

    def signed_end(self) -> int | None:
        """Last chunk of the rightmost signed munro: HAVEs may announce up to here."""
        munro = self.rightmost_munro()
        return None if munro is None else munro.end

    def munro_messages(self, munro: SignedMunro) -> tuple[Integrity, SignedIntegrity]:
        """INTEGRITY + SIGNED_INTEGRITY carrying ``munro`` (§6.1.2.3, tune-in §6.1.2.4)."""
        return self._munro_messages(munro)

    def integrity_for(self, chunk: int) -> tuple[Integrity, SignedIntegrity, list[Integrity]]:
        """What precedes DATA(chunk) (§6.1.2.3): the munro INTEGRITY and SIGNED_INTEGRITY,
        then the uncle INTEGRITYs down to the chunk's sibling, highest first. The channel
        drops what the receiver already has (§5.3). Raises LookupError for a chunk not
        under a signed munro."""
        tree = self._munros.get(chunk >> self._munro_height)
        if tree is None:
            raise LookupError(f"chunk {chunk} is not under a signed munro")
        munro_integrity, signed = self._munro_messages(tree.signed)
        levels = tree.levels
        return munro_integrity, signed, self._uncles(chunk, lambda h, i: levels[h][i])

    def forget_before(self, chunk: int) -> None:
        """Drop munros wholly before ``chunk`` (after they left the discard window, §6.2)."""
        old, self._forgotten = self._forgotten, max(self._forgotten, chunk)
        forget_munros_before(self._munros, self._munro_height, old, chunk)
        forget_munros_before(self._pending, self._munro_height, old, chunk)
        if self._rightmost is not None and self._rightmost not in self._munros:
            self._rightmost = max(self._munros, default=None)


class UnifiedMerkleVerifier(_UnifiedMerkleBase):
    """Receiver side of the Unified Merkle Tree (§6.1.2): trusts a munro hash only after its
    signature checks out, and a chunk only if it hashes up to a trusted node.

    Hashes from INTEGRITY messages are kept as untrusted candidates until a chunk verifies
    through them; then they become trusted, so later chunks need fewer uncles (§5.3). A
    candidate that conflicts with a trusted hash is ignored; a newer offer replaces an older
    candidate. A failed check leaves candidates in place: the culprit may be the DATA, not
    the uncles, and a bad candidate is replaced by the next datagram that carries the node.
    """

    def __init__(
        self,
        verifier: LiveVerifier,
        cam: ChunkAddressing = ChunkAddressing.CHUNK_RANGE32,
        hash_function: MerkleHashFunction = MerkleHashFunction.SHA256,
        chunks_per_signature: int = DEFAULT_CHUNKS_PER_SIGNATURE,
        *,
        chunk_size: int | None = None,
        max_age: float | None = None,
    ) -> None:
        super().__init__(cam, hash_function, chunks_per_signature, chunk_size)
        self.verifier = verifier
        #: §6.1.2.4: a signed munro whose timestamp is older than this (seconds) is refused
        #: when ``now`` is passed to :meth:`offer_signed_munro`. ``now`` is wall-clock Unix
        #: time (``time.time()``), since the timestamp is the injector's UTC clock.
        self.max_age = max_age
        self._signed: dict[int, SignedMunro] = {}
        # Node (height, index at that height) → hash.
        self._trusted: dict[tuple[int, int], bytes] = {}
        self._candidates: dict[tuple[int, int], bytes] = {}
        self._rightmost: int | None = None

    def _node(self, start: int, end: int) -> tuple[int, int] | None:
        """The subtree node (height, index) whose leaves are wire range start..end, if any
        at or below munro height."""
        chunks = self._units.to_chunks(start, end)
        if chunks is None:
            return None
        first, last = chunks
        width = last - first + 1
        if width & (width - 1) or first & (width - 1) or width > self.chunks_per_signature:
            return None
        height = width.bit_length() - 1
        return height, first >> height

    def offer_signed_munro(
        self,
        start: int,
        end: int,
        munro_hash: bytes,
        timestamp: int,
        signature: bytes,
        now: float | None = None,
    ) -> bool:
        """A munro INTEGRITY plus its SIGNED_INTEGRITY (§6.1.2.3); True if now trusted.

        The signature is checked before anything is stored; a second, different hash for a
        munro already trusted is refused.
        """
        node = self._node(start, end)
        if node is None or node[0] != self._munro_height:
            return False
        if len(munro_hash) != self.digest_size or not 0 <= timestamp < 1 << 64:
            return False
        if not _fresh(timestamp, now, self.max_age):
            return False  # §6.1.2.4: too old, MUST discard
        k = node[1]
        known = self._signed.get(k)
        if known is not None and known.munro_hash == munro_hash:
            return True
        payload = self._units.signed_payload(start, end, timestamp, bytes(munro_hash))
        if not self.verifier.verify(payload, signature) or known is not None:
            return False
        first = k << self._munro_height
        munro = SignedMunro(
            first,
            first + self.chunks_per_signature - 1,
            bytes(munro_hash),
            timestamp,
            bytes(signature),
        )
        self._signed[k] = munro
        self._trusted[node] = munro.munro_hash
        self._candidates.pop(node, None)
        if self._rightmost is None or k > self._rightmost:
            self._rightmost = k
        return True

    def offer_hash(self, start: int, end: int, h: bytes) -> bool:
        """An INTEGRITY (uncle) hash; True if kept as a candidate.

        Only hashes under an already signed munro are kept: §6.1.2.3 sends the munro's
        INTEGRITY + SIGNED_INTEGRITY before the uncles, and refusing the rest bounds what a
        peer can make us store. (The munro's own INTEGRITY goes to
        :meth:`offer_signed_munro` together with the SIGNED_INTEGRITY that follows it.)
        """
        node = self._node(start, end)
        if node is None or len(h) != self.digest_size or node in self._trusted:
            return False
        if (node[1] << node[0]) >> self._munro_height not in self._signed:
            return False
        self._candidates[node] = bytes(h)
        return True

    def verify_chunk(self, index: int, data: bytes | memoryview) -> bool:
        """True if chunk ``index`` hashes up to its signed munro (§6.1.2.1, §5.2)."""
        return self.check_chunk(index, data) is True

    def check_chunk(self, index: int, data: bytes | memoryview) -> bool | None:
        """As :meth:`verify_chunk`, but None when the chunk cannot be checked *yet* (its munro
        is not signed here, or an uncle is missing): that says nothing against the sender,
        whose hashes may have been lost on the way."""
        if index < 0:
            return False
        if (index >> self._munro_height) not in self._signed:
            return None
        current = self._hash(data).digest()
        height, position = 0, index
        used: list[tuple[tuple[int, int], bytes]] = []
        while True:
            node = (height, position)
            trusted = self._trusted.get(node)
            if trusted is not None:
                if trusted != current:
                    return False
                break
            sibling = (height, position ^ 1)
            sibling_hash = self._trusted.get(sibling) or self._candidates.get(sibling)
            if sibling_hash is None:
                return None
            used.append((node, current))
            used.append((sibling, sibling_hash))
            if position & 1:
                current = self._parent(sibling_hash, current)
            else:
                current = self._parent(current, sibling_hash)
            height, position = height + 1, position >> 1
        for key, value in used:
            self._trusted[key] = value
            self._candidates.pop(key, None)
        return True

    def is_signed(self, chunk: int) -> bool:
        return (chunk >> self._munro_height) in self._signed

    def munro_for(self, chunk: int) -> SignedMunro | None:
        return self._signed.get(chunk >> self._munro_height)

    def rightmost_signed_munro(self) -> tuple[int, int] | None:
        """Chunks of the rightmost signed munro (§6.1.2.4), or None before any."""
        if self._rightmost is None:
            return None
        munro = self._signed[self._rightmost]
        return munro.start, munro.end

    def rightmost_munro(self) -> SignedMunro | None:
        """The rightmost signed munro itself, to relay at tune-in (§6.1.2.4)."""
        return None if self._rightmost is None else self._signed[self._rightmost]

    def munro_messages(self, munro: SignedMunro) -> tuple[Integrity, SignedIntegrity]:
        return self._munro_messages(munro)

    def integrity_for(self, chunk: int) -> tuple[Integrity, SignedIntegrity, list[Integrity]]:
        """As :meth:`UnifiedMerkleInjector.integrity_for`, for a peer relaying a chunk it
        verified (§6.1.2.3: "either the injector or another peer"). Raises LookupError if a
        needed hash is not trusted here."""
        munro = self._signed.get(chunk >> self._munro_height)
        if munro is None:
            raise LookupError(f"chunk {chunk} is not under a signed munro")
        base = (chunk >> self._munro_height) << self._munro_height
        trusted = self._trusted

        def lookup(height: int, index: int) -> bytes | None:
            return trusted.get((height, (base >> height) + index))

        munro_integrity, signed = self._munro_messages(munro)
        return munro_integrity, signed, self._uncles(chunk, lookup)

    def clip_have(self, start: int, end: int) -> tuple[int, int] | None:
        """The part of a peer's HAVE (chunk indices) that signed munros cover (§6.1.2.4:
        availability beyond the rightmost signed munro is not trusted)."""
        rightmost = self.rightmost_signed_munro()
        if rightmost is None or start > rightmost[1]:
            return None
        return start, min(end, rightmost[1])

    def forget_before(self, chunk: int) -> None:
        """Drop munros and hashes wholly before ``chunk`` (§6.2)."""
        old, self._forgotten = self._forgotten, max(self._forgotten, chunk)
        forget_munros_before(self._signed, self._munro_height, old, chunk)
        forget_nodes_before(self._trusted, old, chunk)
        forget_nodes_before(self._candidates, old, chunk)
        if self._rightmost is not None and self._rightmost not in self._signed:
            self._rightmost = max(self._signed, default=None)


def tune_in_point(verifier: UnifiedMerkleVerifier) -> int | None:
    """Where a joining viewer starts (§6.1.2.4): the first chunk of the rightmost signed munro
    it has learnt, or None while it knows none."""
    rightmost = verifier.rightmost_signed_munro()
    return None if rightmost is None else rightmost[0]


# --------------------------------------------------------------------------------------------
# Live Discard Window (§6.2, §7.9)
# --------------------------------------------------------------------------------------------


class DiscardWindow:
    """A sliding window of ``size`` chunks (bytes for byte ranges) ending at the latest
    chunk advertised; ``size=None`` never discards.

    Used for our own store (what to forget as the stream advances) and, per §6.2, over a
    peer's HAVEs with the size that peer announced. §7.9's "how many chunks it caches before
    the last chunk it advertised" is read as: ``size`` chunks including the last one, the
    smaller of the two readings, so we never count on a chunk a peer may have dropped.
    """

    __slots__ = ("_low", "latest", "size")

    def __init__(self, size: int | None) -> None:
        if size is not None and size < 1:
            raise ValueError("discard window must hold at least one chunk")
        self.size = size
        self.latest: int | None = None
        self._low = 0

    @classmethod
    def from_option(cls, value: int, cam: ChunkAddressing) -> DiscardWindow:
        """From a Live Discard Window option value (§7.9): all ones means "never discards"."""
        never = (1 << (8 * cam.width)) - 1
        if not 0 <= value <= never:
            raise ValueError(f"discard window {value} does not fit {cam.width} bytes")
        if value == never:
            return cls(None)
        if value == 0:
            # A zero window would mean the peer keeps nothing; treat it as one chunk
            # rather than refusing the handshake (be liberal in what we accept).
            return cls(1)
        return cls(value)

    def option_value(self, cam: ChunkAddressing) -> int:
        """The Live Discard Window option value to announce (§7.9)."""
        never = (1 << (8 * cam.width)) - 1
        return never if self.size is None else min(self.size, never - 1)

    @property
    def low(self) -> int:
        """First unit still inside the window."""
        return self._low

    def slide(self, latest: int) -> list[tuple[int, int]]:
        """Advance to ``latest`` (the last chunk advertised); returns the ranges that just
        fell out of the window (inclusive, at most one), which should be discarded."""
        if self.latest is not None and latest <= self.latest:
            return []
        self.latest = latest
        if self.size is None:
            return []
        new_low = latest - self.size + 1
        if new_low <= self._low:
            return []
        dropped = (self._low, new_low - 1)
        self._low = new_low
        return [dropped]

    def in_window(self, chunk: int) -> bool:
        """True unless ``chunk`` has slid out of the window. Chunks beyond ``latest`` count as
        in the window: they have not been discarded, only not announced yet."""
        return chunk >= self._low

    def clip(self, start: int, end: int) -> tuple[int, int] | None:
        """The part of ``start..end`` still inside the window, or None."""
        start = max(start, self._low)
        return (start, end) if start <= end else None

    def clip_ranges(self, ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        """A peer's availability (its HAVE ranges) filtered through its window (§6.2)."""
        out = []
        for start, end in ranges:
            clipped = self.clip(start, end)
            if clipped is not None:
                out.append(clipped)
        return out
