"""Tests for ppsp.peer.live: live keys and signatures, Sign All, the Unified Merkle Tree,
NTP timestamps, the Live Discard Window and secure tune-in (RFC 7574 §6)."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppsp.peer.live import (
    FORGET_SWEEP_CHUNKS,
    DiscardWindow,
    InvalidSwarmId,
    LiveSigner,
    LiveVerifier,
    SignAllInjector,
    SignAllVerifier,
    UnifiedMerkleInjector,
    UnifiedMerkleVerifier,
    encode_chunk_spec,
    forget_munros_before,
    forget_nodes_before,
    ntp_timestamp,
    tune_in_point,
    unix_time_from_ntp,
)
from ppsp.peer.messages import (
    ChunkAddressing,
    DecodeError,
    EncodeError,
    Integrity,
    LiveSignatureAlgorithm,
    MerkleHashFunction,
    SignedIntegrity,
    signature_size_for,
)

ALGORITHMS = list(LiveSignatureAlgorithm)
NOW = 1_795_294_699.25  # 2026, as in the libswift traces
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def signers() -> dict[LiveSignatureAlgorithm, LiveSigner]:
    return {alg: LiveSigner.generate(alg) for alg in ALGORITHMS}


@pytest.fixture(scope="module")
def p256(signers: dict[LiveSignatureAlgorithm, LiveSigner]) -> LiveSigner:
    return signers[LiveSignatureAlgorithm.ECDSAP256SHA256]


# --- keys, swarm IDs and signatures (§6.1, §8.9) --------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.name)
def test_sign_verify_all_algorithms(
    signers: dict[LiveSignatureAlgorithm, LiveSigner], algorithm: LiveSignatureAlgorithm
) -> None:
    signer = signers[algorithm]
    verifier = LiveVerifier.from_swarm_id(signer.swarm_id)
    assert verifier.algorithm is algorithm
    signature = signer.sign(b"munro")
    assert len(signature) == signer.signature_size == verifier.signature_size
    # The wire codec derives the SIGNED_INTEGRITY signature length from the swarm ID.
    assert signature_size_for(algorithm, signer.swarm_id) == len(signature)
    assert verifier.verify(b"munro", signature)
    assert not verifier.verify(b"munrO", signature)
    tampered = bytearray(signature)
    tampered[len(tampered) // 2] ^= 0x01
    assert not verifier.verify(b"munro", bytes(tampered))
    assert not verifier.verify(b"munro", signature[:-1])
    assert not verifier.verify(b"munro", signature + b"\x00")


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.name)
def test_other_key_does_not_verify(
    signers: dict[LiveSignatureAlgorithm, LiveSigner], algorithm: LiveSignatureAlgorithm
) -> None:
    other = LiveSigner.generate(algorithm)  # same signature size, different key
    assert not signers[algorithm].verifier.verify(b"x", other.sign(b"x"))


def test_ecdsa_swarm_id_and_signature_format(p256: LiveSigner) -> None:
    # RFC 6605 §4: swarm ID = 13 ‖ x ‖ y; signature = r ‖ s, 32 bytes each, not DER.
    swarm_id = p256.swarm_id
    assert swarm_id[0] == 13 and len(swarm_id) == 65
    x = int.from_bytes(swarm_id[1:33], "big")
    y = int.from_bytes(swarm_id[33:], "big")
    public_key = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    signature = p256.sign(b"data")
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    public_key.verify(encode_dss_signature(r, s), b"data", ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize(
    ("algorithm", "hash_algorithm"),
    [
        (LiveSignatureAlgorithm.RSASHA1, hashes.SHA1()),
        (LiveSignatureAlgorithm.RSASHA256, hashes.SHA256()),
    ],
)
def test_rsa_swarm_id_and_signature_format(
    signers: dict[LiveSignatureAlgorithm, LiveSigner],
    algorithm: LiveSignatureAlgorithm,
    hash_algorithm: hashes.HashAlgorithm,
) -> None:
    # RFC 3110 §2: exponent length (1 byte), exponent 65537, 2048-bit modulus.
    signer = signers[algorithm]
    swarm_id = signer.swarm_id
    assert swarm_id[:5] == bytes([algorithm, 3, 0x01, 0x00, 0x01])
    assert len(swarm_id) == 5 + 256
    n = int.from_bytes(swarm_id[5:], "big")
    public_key = rsa.RSAPublicNumbers(65537, n).public_key()
    public_key.verify(signer.sign(b"data"), b"data", padding.PKCS1v15(), hash_algorithm)


def test_rsa_long_exponent_form_round_trips() -> None:
    # An exponent longer than 255 bytes takes the "0 + two-byte length" form (RFC 3110 §2).
    # A public key only needs e < n, so an arbitrary odd 4096-bit n will do.
    n = (1 << 4095) | 0xF00D
    e = (1 << (8 * 300 - 1)) | 1
    verifier = LiveVerifier(
        LiveSignatureAlgorithm.RSASHA256, rsa.RSAPublicNumbers(e, n).public_key()
    )
    swarm_id = verifier.swarm_id
    assert swarm_id[:4] == bytes([8, 0, 0x01, 0x2C])  # 300 = 0x012c
    parsed = LiveVerifier.from_swarm_id(swarm_id)
    assert parsed.swarm_id == swarm_id
    assert parsed.signature_size == 512 == signature_size_for(8, swarm_id)
    # The long form for a short exponent is not canonical and is refused.
    with pytest.raises(InvalidSwarmId, match="long form"):
        LiveVerifier.from_swarm_id(bytes([8, 0, 0, 3, 1, 0, 1]) + n.to_bytes(512, "big"))


@pytest.mark.parametrize(
    ("swarm_id", "reason"),
    [
        (b"", "too short"),
        (b"\x0d", "too short"),
        (b"\x03" + bytes(64), "unsupported"),
        (b"\x0d" + bytes(63), "64"),
        (b"\x0e" + bytes(64), "96"),
        (b"\x0d" + b"\x01" * 64, "curve"),
        (b"\x08\x03\x01\x00\x01", "truncated"),
        (b"\x08\x00\x01", "truncated"),
        (b"\x08\x05\x01\x00\x01", "truncated"),
        (b"\x08\x03\x00\x00\x01" + b"\xff" * 64, "leading zero"),
        (b"\x08\x03\x01\x00\x01" + b"\x00" + b"\xff" * 64, "leading zero"),
        (b"\x08\x03\x01\x00\x01" + b"\xff" * 32, "out of range"),
        (b"\x08\x01\x02" + b"\xff" * 64, "invalid RSA"),  # e = 2 is not a valid exponent
    ],
)
def test_malformed_swarm_ids(swarm_id: bytes, reason: str) -> None:
    with pytest.raises(InvalidSwarmId, match=reason):
        LiveVerifier.from_swarm_id(swarm_id)
    assert issubclass(InvalidSwarmId, DecodeError) and issubclass(InvalidSwarmId, ValueError)


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_swarm_id_random(data: bytes) -> None:
    try:
        verifier = LiveVerifier.from_swarm_id(data)
    except DecodeError:
        return
    assert verifier.swarm_id == data


@FUZZ
@given(st.data())
def test_fuzz_swarm_id_mutated(
    signers: dict[LiveSignatureAlgorithm, LiveSigner], data: st.DataObject
) -> None:
    signer = signers[data.draw(st.sampled_from(ALGORITHMS))]
    swarm_id = bytearray(signer.swarm_id)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "extend"]))
        if op == "flip" and swarm_id:
            i = data.draw(st.integers(0, len(swarm_id) - 1))
            swarm_id[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del swarm_id[data.draw(st.integers(0, len(swarm_id))) :]
        else:
            swarm_id += data.draw(st.binary(min_size=1, max_size=8))
    try:
        verifier = LiveVerifier.from_swarm_id(bytes(swarm_id))
    except DecodeError:
        return
    # Whatever parses is canonical, and a signature by the real key fails under another key.
    assert verifier.swarm_id == bytes(swarm_id)
    if bytes(swarm_id) != signer.swarm_id:
        assert not verifier.verify(b"x", signer.sign(b"x"))


@FUZZ
@given(data=st.binary(max_size=64), signature=st.binary(max_size=300))
def test_fuzz_verify_random_signatures(
    signers: dict[LiveSignatureAlgorithm, LiveSigner], data: bytes, signature: bytes
) -> None:
    for signer in signers.values():
        assert signer.verifier.verify(data, signature) is False


def test_ecdsa_signature_with_out_of_range_scalars_is_rejected(p256: LiveSigner) -> None:
    assert not p256.verifier.verify(b"x", b"\xff" * 64)
    assert not p256.verifier.verify(b"x", bytes(64))


def test_generate_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        LiveSigner.generate(3)  # type: ignore[arg-type]  # DSA: not a PPSPP algorithm
    with pytest.raises(ValueError):
        LiveSigner.generate(LiveSignatureAlgorithm.RSASHA256, rsa_bits=256)


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.name)
def test_key_save_and_load(
    signers: dict[LiveSignatureAlgorithm, LiveSigner],
    algorithm: LiveSignatureAlgorithm,
    tmp_path: Path,
) -> None:
    signer = signers[algorithm]
    path = tmp_path / "live.pem"
    signer.save(path)
    assert path.stat().st_mode & 0o077 == 0
    loaded = LiveSigner.load(path)
    # Same algorithm (RSASHA1 must not come back as RSASHA256) and same key.
    assert loaded.algorithm is algorithm
    assert loaded.swarm_id == signer.swarm_id
    assert signer.verifier.verify(b"x", loaded.sign(b"x"))


def test_load_plain_pem_and_override(signers: dict[LiveSignatureAlgorithm, LiveSigner]) -> None:
    pem = signers[LiveSignatureAlgorithm.RSASHA1].to_pem()
    plain = pem[pem.index(b"-----BEGIN") :]
    assert LiveSigner.from_pem(plain).algorithm is LiveSignatureAlgorithm.RSASHA256
    assert (
        LiveSigner.from_pem(plain, LiveSignatureAlgorithm.RSASHA1).swarm_id
        == signers[LiveSignatureAlgorithm.RSASHA1].swarm_id
    )
    ec_pem = signers[LiveSignatureAlgorithm.ECDSAP384SHA384].to_pem()
    ec_plain = ec_pem[ec_pem.index(b"-----BEGIN") :]
    assert LiveSigner.from_pem(ec_plain).algorithm is LiveSignatureAlgorithm.ECDSAP384SHA384
    with pytest.raises(ValueError):
        LiveSigner.from_pem(plain, LiveSignatureAlgorithm.ECDSAP256SHA256)
    with pytest.raises(ValueError):
        LiveSigner.from_pem(ec_plain, LiveSignatureAlgorithm.ECDSAP256SHA256)


# --- NTP timestamps -------------------------------------------------------------------------


def test_ntp_timestamp_known_values() -> None:
    assert ntp_timestamp(0.0) == 2_208_988_800 << 32
    assert ntp_timestamp(1.5) == ((2_208_988_801 << 32) | 0x80000000)
    assert ntp_timestamp(-2_208_988_800.0) == 0
    assert unix_time_from_ntp(2_208_988_800 << 32) == 0.0
    with pytest.raises(ValueError):
        ntp_timestamp(-2_208_988_801.0)
    with pytest.raises(ValueError):
        ntp_timestamp(2_085_978_496.0)  # 2036-02-07: era 1
    with pytest.raises(ValueError):
        unix_time_from_ntp(1 << 64)


@FUZZ
@given(st.floats(min_value=0, max_value=2_085_978_495.0))
def test_ntp_round_trip(t: float) -> None:
    assert abs(unix_time_from_ntp(ntp_timestamp(t)) - t) <= 1e-6


# --- chunk specifications -------------------------------------------------------------------


def test_encode_chunk_spec() -> None:
    assert encode_chunk_spec(ChunkAddressing.CHUNK_RANGE32, 3, 5) == bytes.fromhex(
        "0000000300000005"
    )
    assert encode_chunk_spec(ChunkAddressing.CHUNK_RANGE64, 3, 5) == struct.pack(">QQ", 3, 5)
    assert encode_chunk_spec(ChunkAddressing.BYTE_RANGE64, 1024, 2047) == struct.pack(
        ">QQ", 1024, 2047
    )
    # §4.2 Figure 2: chunk 0 = bin 0, chunk 1 = bin 2, C0..C1 = 1, C0..C3 = 3, C4..C7 = 11.
    for (start, end), bin_number in {
        (0, 0): 0,
        (1, 1): 2,
        (0, 1): 1,
        (0, 3): 3,
        (4, 7): 11,
    }.items():
        assert encode_chunk_spec(ChunkAddressing.BIN32, start, end) == struct.pack(">I", bin_number)
        assert encode_chunk_spec(ChunkAddressing.BIN64, start, end) == struct.pack(">Q", bin_number)
    assert encode_chunk_spec(ChunkAddressing.BIN32, 0, (1 << 31) - 1) == b"\x7f\xff\xff\xff"


@pytest.mark.parametrize(
    ("cam", "start", "end"),
    [
        (ChunkAddressing.BIN32, 1, 2),  # not aligned
        (ChunkAddressing.BIN32, 0, 2),  # not a power of two
        (ChunkAddressing.BIN32, 1 << 31, 1 << 31),  # bin 2^32: too wide for 32 bits
        (ChunkAddressing.CHUNK_RANGE32, 0, 1 << 32),
        (ChunkAddressing.CHUNK_RANGE32, 5, 4),
        (ChunkAddressing.CHUNK_RANGE64, -1, 4),
    ],
)
def test_encode_chunk_spec_errors(cam: ChunkAddressing, start: int, end: int) -> None:
    with pytest.raises(EncodeError):
        encode_chunk_spec(cam, start, end)


@FUZZ
@given(st.integers(0, 30), st.integers(0, 1 << 20))
def test_bin_number_matches_brief_formula(layer: int, k: int) -> None:
    start = k << layer
    (b,) = struct.unpack(
        ">Q", encode_chunk_spec(ChunkAddressing.BIN64, start, start + (1 << layer) - 1)
    )
    # bin b of layer L covers chunks (b >> (L+1)) << L … + 2^L − 1, and has L trailing ones.
    assert (b >> (layer + 1)) << layer == start
    assert (b + 1) & -(b + 1) == 1 << layer


# --- Sign All (§6.1.1) ----------------------------------------------------------------------


@pytest.mark.parametrize("cam", list(ChunkAddressing), ids=lambda c: c.name)
def test_sign_all_round_trip(p256: LiveSigner, cam: ChunkAddressing) -> None:
    injector = SignAllInjector(p256, cam, chunk_size=1024)
    verifier = SignAllVerifier(LiveVerifier.from_swarm_id(p256.swarm_id), cam, chunk_size=1024)
    chunk = bytes(range(256)) * 4
    si = injector.add_chunk(7, chunk, NOW)
    assert isinstance(si, SignedIntegrity)
    if cam is ChunkAddressing.BYTE_RANGE64:
        assert (si.start, si.end) == (7 * 1024, 8 * 1024 - 1)
    else:
        assert (si.start, si.end) == (7, 7)
    assert abs(unix_time_from_ntp(si.timestamp) - NOW) < 1e-6
    assert verifier.verify(si.start, si.end, si.timestamp, si.signature, chunk)
    # Tampered chunk, signature, timestamp or chunk specification are all rejected.
    assert not verifier.verify(si.start, si.end, si.timestamp, si.signature, chunk[:-1] + b"\x00")
    bad = bytes([si.signature[0] ^ 1]) + si.signature[1:]
    assert not verifier.verify(si.start, si.end, si.timestamp, bad, chunk)
    assert not verifier.verify(si.start, si.end, si.timestamp + 1, si.signature, chunk)
    width = si.end - si.start + 1
    assert not verifier.verify(si.start + width, si.end + width, si.timestamp, si.signature, chunk)


def test_sign_all_signs_spec_timestamp_chunk(p256: LiveSigner) -> None:
    # §6.1.1: the plaintext is chunk spec ‖ 64-bit NTP timestamp ‖ chunk, in that order.
    # Build a signature independently of SignAllInjector and check the verifier takes it.
    timestamp = ntp_timestamp(NOW)
    plaintext = struct.pack(">II", 9, 9) + struct.pack(">Q", timestamp) + b"chunk nine"
    signature = p256.sign(plaintext)
    verifier = SignAllVerifier(p256.verifier)
    assert verifier.verify(9, 9, timestamp, signature, b"chunk nine")
    si = SignAllInjector(p256).add_chunk(9, b"chunk nine", NOW)
    assert p256.verifier.verify(plaintext, si.signature)
    # Bins: the spec is the 4-byte bin number (chunk 9 = bin 18).
    plaintext_bin = struct.pack(">I", 18) + struct.pack(">Q", timestamp) + b"chunk nine"
    si_bin = SignAllInjector(p256, ChunkAddressing.BIN32).add_chunk(9, b"chunk nine", NOW)
    assert p256.verifier.verify(plaintext_bin, si_bin.signature)


def test_sign_all_max_age(p256: LiveSigner) -> None:
    si = SignAllInjector(p256).add_chunk(0, b"c", NOW)
    verifier = SignAllVerifier(p256.verifier, max_age=5.0)
    assert verifier.verify(0, 0, si.timestamp, si.signature, b"c", now=NOW + 4)
    assert not verifier.verify(0, 0, si.timestamp, si.signature, b"c", now=NOW + 6)


def test_byte_ranges_need_chunk_size(p256: LiveSigner) -> None:
    with pytest.raises(ValueError):
        SignAllInjector(p256, ChunkAddressing.BYTE_RANGE64)
    injector = SignAllInjector(p256, ChunkAddressing.BYTE_RANGE64, chunk_size=4)
    short = injector.add_chunk(2, b"abc", NOW)  # a short chunk covers only its own bytes
    assert (short.start, short.end) == (8, 10)
    with pytest.raises(ValueError):
        injector.add_chunk(2, b"abcde", NOW)


@FUZZ
@given(
    start=st.integers(-5, 1 << 65),
    end=st.integers(-5, 1 << 65),
    timestamp=st.integers(-5, 1 << 65),
    signature=st.binary(max_size=80),
    data=st.binary(max_size=32),
    cam=st.sampled_from(list(ChunkAddressing)),
)
def test_fuzz_sign_all_verifier(
    p256: LiveSigner,
    start: int,
    end: int,
    timestamp: int,
    signature: bytes,
    data: bytes,
    cam: ChunkAddressing,
) -> None:
    verifier = SignAllVerifier(p256.verifier, cam, chunk_size=1024)
    assert verifier.verify(start, end, timestamp, signature, data) is False


# --- Unified Merkle Tree (§6.1.2) -----------------------------------------------------------


def _chunk(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(8, "big")).digest() * 32


def _tree(
    signer: LiveSigner,
    n: int = 4,
    cam: ChunkAddressing = ChunkAddressing.CHUNK_RANGE32,
    hash_function: MerkleHashFunction = MerkleHashFunction.SHA256,
    chunk_size: int | None = None,
    max_age: float | None = None,
) -> tuple[UnifiedMerkleInjector, UnifiedMerkleVerifier]:
    injector = UnifiedMerkleInjector(signer, cam, hash_function, n, chunk_size=chunk_size)
    verifier = UnifiedMerkleVerifier(
        LiveVerifier.from_swarm_id(signer.swarm_id),
        cam,
        hash_function,
        n,
        chunk_size=chunk_size,
        max_age=max_age,
    )
    return injector, verifier


def _deliver(
    verifier: UnifiedMerkleVerifier,
    integrity: tuple[Integrity, SignedIntegrity, list[Integrity]],
    *,
    munro: bool = True,
    now: float | None = None,
) -> bool:
    munro_integrity, signed, uncles = integrity
    ok = True
    if munro:
        ok = verifier.offer_signed_munro(
            signed.start, signed.end, munro_integrity.hash, signed.timestamp, signed.signature, now
        )
    for uncle in uncles:
        verifier.offer_hash(uncle.start, uncle.end, uncle.hash)
    return ok


def test_munro_is_signed_when_complete(p256: LiveSigner) -> None:
    injector, _ = _tree(p256, n=4)
    assert injector.add_chunk(0, _chunk(0), NOW) == []
    assert injector.add_chunk(2, _chunk(2), NOW) == []
    assert injector.add_chunk(1, _chunk(1), NOW) == []
    assert injector.signed_end() is None
    (munro,) = injector.add_chunk(3, _chunk(3), NOW + 1)
    assert (munro.start, munro.end) == (0, 3)
    h = [hashlib.sha256(_chunk(i)).digest() for i in range(4)]
    expected = hashlib.sha256(
        hashlib.sha256(h[0] + h[1]).digest() + hashlib.sha256(h[2] + h[3]).digest()
    ).digest()
    assert munro.munro_hash == expected
    # §6.1.2.2: signature over munro spec ‖ NTP timestamp ‖ munro hash.
    plaintext = struct.pack(">II", 0, 3) + struct.pack(">Q", munro.timestamp) + expected
    assert p256.verifier.verify(plaintext, munro.signature)
    assert injector.signed_end() == 3
    with pytest.raises(ValueError):
        injector.add_chunk(1, _chunk(1), NOW)  # already signed


def test_integrity_for_order_and_content(p256: LiveSigner) -> None:
    injector, _ = _tree(p256, n=8)
    for i in range(8, 16):
        injector.add_chunk(i, _chunk(i), NOW)
    munro_integrity, signed, uncles = injector.integrity_for(13)
    assert (munro_integrity.start, munro_integrity.end) == (8, 15)
    assert (signed.start, signed.end) == (8, 15)
    # Uncles of chunk 13 within munro 8..15, highest first, sibling (chunk 12) last (§5.4).
    assert [(u.start, u.end) for u in uncles] == [(8, 11), (14, 15), (12, 12)]
    assert uncles[-1].hash == hashlib.sha256(_chunk(12)).digest()
    with pytest.raises(LookupError):
        injector.integrity_for(16)


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.name)
def test_unified_merkle_end_to_end(
    signers: dict[LiveSignatureAlgorithm, LiveSigner], algorithm: LiveSignatureAlgorithm
) -> None:
    injector, verifier = _tree(signers[algorithm], n=4)
    for i in range(12):
        injector.add_chunk(i, _chunk(i), NOW)
    for i in (5, 0, 11, 6):
        assert _deliver(verifier, injector.integrity_for(i))
        assert verifier.verify_chunk(i, _chunk(i))
    assert verifier.rightmost_signed_munro() == (8, 11)


@pytest.mark.parametrize(
    "cam", [ChunkAddressing.BIN32, ChunkAddressing.BYTE_RANGE64, ChunkAddressing.CHUNK_RANGE64]
)
def test_unified_merkle_other_cams(p256: LiveSigner, cam: ChunkAddressing) -> None:
    injector, verifier = _tree(p256, n=4, cam=cam, chunk_size=1024)
    for i in range(8):
        injector.add_chunk(i, _chunk(i), NOW)
    munro_integrity, signed, uncles = injector.integrity_for(6)
    if cam is ChunkAddressing.BYTE_RANGE64:
        assert (signed.start, signed.end) == (4096, 8191)
        assert (uncles[-1].start, uncles[-1].end) == (7 * 1024, 8 * 1024 - 1)
    assert _deliver(verifier, (munro_integrity, signed, uncles))
    assert verifier.verify_chunk(6, _chunk(6))
    assert not verifier.verify_chunk(7, _chunk(6))


def test_unified_merkle_sha1(p256: LiveSigner) -> None:
    injector, verifier = _tree(p256, n=2, hash_function=MerkleHashFunction.SHA1)
    injector.add_chunk(0, b"a", NOW)
    (munro,) = injector.add_chunk(1, b"b", NOW)
    assert len(munro.munro_hash) == 20
    assert _deliver(verifier, injector.integrity_for(1))
    assert verifier.verify_chunk(1, b"b")


def test_later_chunks_need_fewer_uncles(p256: LiveSigner) -> None:
    # §5.3: hashes learnt while verifying one chunk verify its neighbours.
    injector, verifier = _tree(p256, n=8)
    for i in range(8):
        injector.add_chunk(i, _chunk(i), NOW)
    assert _deliver(verifier, injector.integrity_for(2))
    assert verifier.verify_chunk(2, _chunk(2))
    # Chunk 3's sibling (chunk 2) and uncle (0..1) are now known: no INTEGRITY needed.
    assert verifier.verify_chunk(3, _chunk(3))
    # Chunk 4 needs only its sibling (chunk 5) and 6..7; 0..3 was computed on the way up.
    _, _, uncles = injector.integrity_for(4)
    for uncle in uncles:
        if (uncle.start, uncle.end) != (0, 3):
            verifier.offer_hash(uncle.start, uncle.end, uncle.hash)
    assert verifier.verify_chunk(4, _chunk(4))
    assert not verifier.verify_chunk(3, _chunk(4))


def test_relaying_peer_can_serve_verified_chunks(p256: LiveSigner) -> None:
    injector, peer = _tree(p256, n=4)
    _, downstream = _tree(p256, n=4)
    for i in range(4):
        injector.add_chunk(i, _chunk(i), NOW)
    assert _deliver(peer, injector.integrity_for(1))
    assert peer.verify_chunk(1, _chunk(1))
    relayed = peer.integrity_for(1)
    assert relayed == injector.integrity_for(1)
    assert _deliver(downstream, relayed)
    assert downstream.verify_chunk(1, _chunk(1))
    with pytest.raises(LookupError):
        peer.integrity_for(2)  # the peer never learnt chunk 3's hash


def test_forged_munro_rejected(p256: LiveSigner) -> None:
    injector, verifier = _tree(p256, n=4)
    for i in range(4):
        injector.add_chunk(i, _chunk(i), NOW)
    munro_integrity, signed, uncles = injector.integrity_for(0)
    forged_hash = bytes([munro_integrity.hash[0] ^ 1]) + munro_integrity.hash[1:]
    args = (signed.start, signed.end, munro_integrity.hash, signed.timestamp, signed.signature)
    assert not verifier.offer_signed_munro(0, 3, forged_hash, signed.timestamp, signed.signature)
    assert not verifier.offer_signed_munro(0, 3, args[2], signed.timestamp + 1, signed.signature)
    assert not verifier.offer_signed_munro(4, 7, args[2], signed.timestamp, signed.signature)
    assert not verifier.offer_signed_munro(0, 1, args[2], signed.timestamp, signed.signature)
    # A munro signed by another key (an attacker's "injector") is refused too.
    mallory = LiveSigner.generate(LiveSignatureAlgorithm.ECDSAP256SHA256)
    evil, _ = _tree(mallory, n=4)
    for i in range(4):
        evil.add_chunk(i, b"evil", NOW)
    evil_munro, evil_signed, evil_uncles = evil.integrity_for(0)
    assert not _deliver(verifier, (evil_munro, evil_signed, evil_uncles))
    assert not verifier.verify_chunk(0, b"evil")
    assert verifier.rightmost_signed_munro() is None
    # The genuine one still works afterwards.
    assert verifier.offer_signed_munro(*args)
    for uncle in uncles:
        verifier.offer_hash(uncle.start, uncle.end, uncle.hash)
    assert verifier.verify_chunk(0, _chunk(0))


def test_second_signed_hash_for_same_munro_refused(p256: LiveSigner) -> None:
    injector, verifier = _tree(p256, n=2)
    injector.add_chunk(0, b"a", NOW)
    injector.add_chunk(1, b"b", NOW)
    m, s, _ = injector.integrity_for(0)
    assert verifier.offer_signed_munro(s.start, s.end, m.hash, s.timestamp, s.signature)
    assert verifier.offer_signed_munro(s.start, s.end, m.hash, s.timestamp, s.signature)
    # The same (compromised or buggy) key signing a different hash for munro 0..1.
    other_hash = hashlib.sha256(b"other").digest()
    plaintext = struct.pack(">II", 0, 1) + struct.pack(">Q", s.timestamp) + other_hash
    assert not verifier.offer_signed_munro(0, 1, other_hash, s.timestamp, p256.sign(plaintext))


def test_chunk_not_under_signed_munro_rejected(p256: LiveSigner) -> None:
    injector, verifier = _tree(p256, n=4)
    for i in range(8):
        injector.add_chunk(i, _chunk(i), NOW)
    assert _deliver(verifier, injector.integrity_for(0))
    # Munro 4..7 was never offered: its uncles are refused and chunk 5 does not verify.
    _, _, uncles = injector.integrity_for(5)
    assert not any(verifier.offer_hash(u.start, u.end, u.hash) for u in uncles)
    assert not verifier.verify_chunk(5, _chunk(5))
    assert verifier.verify_chunk(0, _chunk(0))
    assert not verifier.is_signed(5) and verifier.is_signed(3)


def test_tampered_chunk_and_uncle_rejected(p256: LiveSigner) -> None:
    injector, verifier = _tree(p256, n=4)
    for i in range(4):
        injector.add_chunk(i, _chunk(i), NOW)
    munro_integrity, signed, uncles = injector.integrity_for(2)
    assert not verifier.offer_hash(0, 2, uncles[0].hash)  # not a subtree
    assert not verifier.offer_hash(0, 1, uncles[0].hash[:-1])  # wrong length
    bad_uncles = [Integrity(u.start, u.end, bytes(32)) for u in uncles]
    _deliver(verifier, (munro_integrity, signed, bad_uncles))
    assert not verifier.verify_chunk(2, _chunk(2))
    # The right uncles replace the bad candidates; a tampered DATA still fails, and does not
    # spoil the good uncles for the genuine chunk arriving later (e.g. from another peer).
    _deliver(verifier, (munro_integrity, signed, uncles))
    assert not verifier.verify_chunk(2, _chunk(2)[:-1] + b"!")
    assert verifier.verify_chunk(2, _chunk(2))
    # Once trusted, a hash cannot be overwritten by a forged INTEGRITY.
    assert not verifier.offer_hash(uncles[-1].start, uncles[-1].end, bytes(32))
    assert verifier.verify_chunk(3, _chunk(3))


def test_munro_timestamp_too_old_rejected(p256: LiveSigner) -> None:
    injector, verifier = _tree(p256, n=2, max_age=30.0)
    injector.add_chunk(0, b"a", NOW)
    injector.add_chunk(1, b"b", NOW)
    integrity = injector.integrity_for(0)
    assert not _deliver(verifier, integrity, now=NOW + 31)  # §6.1.2.4: MUST discard
    assert _deliver(verifier, integrity, now=NOW + 29)


def test_flush_signs_partial_munro(p256: LiveSigner) -> None:
    injector, verifier = _tree(p256, n=4)
    for i in range(6):
        injector.add_chunk(i, _chunk(i), NOW)
    (last,) = injector.flush(NOW)
    assert (last.start, last.end) == (4, 7)
    # Chunks 6 and 7 are empty leaves; their parent is the empty hash (§5.1).
    _, _, uncles = injector.integrity_for(5)
    assert uncles[0].hash == bytes(32)
    assert _deliver(verifier, injector.integrity_for(5))
    assert verifier.verify_chunk(5, _chunk(5))
    assert injector.flush(NOW) == []


def test_forget_before(p256: LiveSigner) -> None:
    injector, verifier = _tree(p256, n=2)
    for i in range(6):
        injector.add_chunk(i, _chunk(i), NOW)
        if i % 2:
            assert _deliver(verifier, injector.integrity_for(i))
            assert verifier.verify_chunk(i, _chunk(i))
    injector.forget_before(4)
    verifier.forget_before(4)
    with pytest.raises(LookupError):
        injector.integrity_for(3)
    assert injector.integrity_for(4)[1].start == 4
    assert not verifier.is_signed(3) and verifier.is_signed(5)
    assert not verifier.verify_chunk(3, _chunk(3))
    assert verifier.verify_chunk(5, _chunk(5))
    assert verifier.rightmost_signed_munro() == (4, 5)


@pytest.mark.parametrize("n", [0, 1, 3, 6])
def test_chunks_per_signature_must_be_power_of_two(p256: LiveSigner, n: int) -> None:
    with pytest.raises(ValueError):
        UnifiedMerkleInjector(p256, chunks_per_signature=n)
    with pytest.raises(ValueError):
        UnifiedMerkleVerifier(p256.verifier, chunks_per_signature=n)


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["munro", "hash", "chunk"]),
            st.integers(-2, 40),
            st.integers(-2, 40),
            st.binary(max_size=70),
            st.integers(-1, (1 << 64) + 1),
        ),
        max_size=12,
    )
)
def test_fuzz_unified_merkle_verifier(
    p256: LiveSigner, ops: list[tuple[str, int, int, bytes, int]]
) -> None:
    # Garbage from a peer never raises and never makes an unsigned chunk verify.
    verifier = UnifiedMerkleVerifier(p256.verifier, chunks_per_signature=4)
    for kind, start, end, blob, number in ops:
        if kind == "munro":
            assert not verifier.offer_signed_munro(start, end, blob[:32], number, blob)
        elif kind == "hash":
            assert not verifier.offer_hash(start, end, blob)
        else:
            assert not verifier.verify_chunk(start, blob)
    assert verifier.rightmost_signed_munro() is None
    assert tune_in_point(verifier) is None


# --- secure tune-in (§6.1.2.4) --------------------------------------------------------------


def test_tune_in_point_and_have_clipping(p256: LiveSigner) -> None:
    injector, verifier = _tree(p256, n=4)
    assert tune_in_point(verifier) is None
    assert verifier.clip_have(0, 100) is None
    for i in range(16):
        injector.add_chunk(i, _chunk(i), NOW + i)
    # A joining peer learns the rightmost signed munro from its peers (3rd/4th datagram).
    assert injector.rightmost_signed_munro() == (12, 15)
    rightmost = injector.rightmost_munro()
    assert rightmost is not None and (rightmost.start, rightmost.end) == (12, 15)
    m, s = injector.munro_messages(rightmost)
    assert verifier.offer_signed_munro(s.start, s.end, m.hash, s.timestamp, s.signature)
    older = injector.munro_for(5)
    assert older is not None
    m, s = injector.munro_messages(older)
    assert verifier.offer_signed_munro(s.start, s.end, m.hash, s.timestamp, s.signature)
    assert tune_in_point(verifier) == 12
    assert verifier.rightmost_munro() == rightmost
    # HAVEs beyond the signed munros are not trusted.
    assert verifier.clip_have(10, 40) == (10, 15)
    assert verifier.clip_have(16, 40) is None


# --- Live Discard Window (§6.2, §7.9) -------------------------------------------------------


def test_discard_window_slides() -> None:
    window = DiscardWindow(10)
    assert window.slide(5) == []
    assert window.in_window(0)
    assert window.slide(12) == [(0, 2)]  # keeps 3..12: ten chunks ending at the latest
    assert not window.in_window(2) and window.in_window(3) and window.in_window(20)
    assert window.slide(11) == []  # never slides back
    assert window.slide(12) == []
    assert window.slide(30) == [(3, 20)]
    assert window.low == 21 and window.latest == 30


def test_discard_window_filters_peer_haves() -> None:
    peer = DiscardWindow.from_option(4, ChunkAddressing.CHUNK_RANGE32)
    peer.slide(9)
    assert peer.clip_ranges([(0, 3), (4, 7), (8, 9)]) == [(6, 7), (8, 9)]
    assert peer.clip(0, 5) is None


def test_discard_window_never() -> None:
    for cam in ChunkAddressing:
        never = (1 << (8 * cam.width)) - 1
        window = DiscardWindow.from_option(never, cam)
        assert window.size is None
        assert window.slide(1 << 30) == []
        assert window.in_window(0)
        assert window.option_value(cam) == never
    assert DiscardWindow(100).option_value(ChunkAddressing.CHUNK_RANGE32) == 100
    with pytest.raises(ValueError):
        DiscardWindow.from_option(1 << 32, ChunkAddressing.CHUNK_RANGE32)
    with pytest.raises(ValueError):
        DiscardWindow(0)
    assert DiscardWindow.from_option(0, ChunkAddressing.CHUNK_RANGE32).size == 1


@FUZZ
@given(st.integers(1, 50), st.lists(st.integers(0, 500), max_size=30))
def test_discard_window_invariants(size: int, latests: list[int]) -> None:
    window = DiscardWindow(size)
    dropped: list[tuple[int, int]] = []
    for latest in latests:
        dropped += window.slide(latest)
    if window.latest is not None:
        top = window.latest
        assert all(window.in_window(c) for c in range(max(0, top - size + 1), top + 1))
        assert not window.in_window(top - size)
        # Everything dropped is contiguous from 0, without overlap.
        expected = 0
        for start, end in dropped:
            assert start == expected and end >= start
            expected = end + 1
        assert expected == window.low


# -- forgetting what left the live discard window (§6.2) --------------------------------------


class _CountingDict(dict[tuple[int, int], bytes]):
    """Counts whole-table iterations."""

    scans = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        type(self).scans += 1
        return super().__iter__()


@settings(max_examples=200, deadline=None)
@given(
    nodes=st.sets(st.tuples(st.integers(0, 12), st.integers(0, 3000)), max_size=300),
    late=st.sets(st.tuples(st.integers(0, 12), st.integers(0, 3000)), max_size=20),
    steps=st.lists(st.integers(0, 40), min_size=1, max_size=60),
)
def test_forgetting_nodes_incrementally_equals_a_scan(
    nodes: set[tuple[int, int]], late: set[tuple[int, int]], steps: list[int]
) -> None:
    table = dict.fromkeys(nodes, b"")
    old = 0
    for i, step in enumerate(steps):
        new = old + step
        if i == len(steps) // 2:
            table.update(dict.fromkeys(late, b""))  # nodes offered after the window moved
        forget_nodes_before(table, old, new)
        old = new
        # Nothing wholly before the bound that the last sweep could have missed stays ...
        expected = {k for k in table if (k[1] + 1) << k[0] <= new}
        late_kept = {k for k in expected if k in late}
        assert expected == late_kept  # ... except late offers, until the next sweep
    forget_nodes_before(table, old, old + FORGET_SWEEP_CHUNKS)  # a sweep
    assert not [k for k in table if (k[1] + 1) << k[0] <= old + FORGET_SWEEP_CHUNKS]


def test_forgetting_one_chunk_does_not_scan_the_table() -> None:
    # 24 lab viewers with 8,192-chunk windows saturated two cores when every chunk the window
    # moved scanned every trusted node.
    table = _CountingDict({(0, c): b"" for c in range(100, 8292)})
    table.update({(3, c): b"" for c in range(12, 1037)})
    for chunk in range(101, 1000):
        forget_nodes_before(table, chunk - 1, chunk)
    assert _CountingDict.scans == 0
    assert min(c for h, c in table if h == 0) == 999 and (3, 123) not in table
    munros = {k: b"" for k in range(10, 600)}
    forget_munros_before(munros, 4, 0, 200)  # munros of 16 chunks: 0..11 wholly before 200
    assert min(munros) == 12
