"""What a swarm's content is to a channel: chunks to read and serve, and integrity to check.

The channel (:mod:`ppsp.peer.channel`) is the same for static and live swarms; everything
that depends on the content integrity protection method (RFC 7574 §5, §6) lives behind
:class:`SwarmContent`: which INTEGRITY / SIGNED_INTEGRITY messages must precede a DATA (§5.4,
§6.1.2.3), how received hashes are taken, and how a received chunk is verified before it is
stored (§5.2). Nothing unverified is ever written, served or reported in a HAVE.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ppsp.peer.bins import bin_layer, bin_to_range, parent, range_to_bin
from ppsp.peer.live import (
    DiscardWindow,
    LiveSigner,
    LiveVerifier,
    SignAllInjector,
    SignAllVerifier,
    UnifiedMerkleInjector,
    UnifiedMerkleVerifier,
    forget_munros_before,
)
from ppsp.peer.merkle import HashTree
from ppsp.peer.messages import (
    ChunkAddressing,
    Integrity,
    IntegrityMethod,
    MerkleHashFunction,
    SignedIntegrity,
)
from ppsp.peer.ranges import ChunkSet


@dataclass(frozen=True, slots=True)
class SwarmParameters:
    """The swarm metadata both peers must agree on (§3.1): fixed per swarm."""

    swarm_id: bytes
    integrity_method: IntegrityMethod = IntegrityMethod.MERKLE
    hash_function: MerkleHashFunction = MerkleHashFunction.SHA256
    chunk_addressing: ChunkAddressing = ChunkAddressing.CHUNK_RANGE32
    chunk_size: int = 1024
    live_signature_algorithm: int | None = None
    live_discard_window: int | None = None

    @property
    def is_live(self) -> bool:
        return self.integrity_method in (IntegrityMethod.SIGN_ALL, IntegrityMethod.UNIFIED_MERKLE)


class PeerHashes:
    """What one peer can already know of our hash tree, so that only the hashes it lacks are
    sent (§5.3, §5.4).

    ``known`` holds bins whose hash the peer has or will have: sent in an INTEGRITY, or
    computable from DATA we sent (a leaf, and every node whose two children are known). It
    is cleared when DATA is lost, since the hashes may have been lost with it. ``have`` is the
    peer's acknowledged chunks: a peer that verified a chunk under a node's parent knows the
    node (it is on that chunk's path or one of its uncles, §5.2).

    Both kinds of knowledge are upward closed along a chunk's uncle path: once one uncle is
    known, every higher one is too, so a sender can stop at the first known uncle.
    """

    __slots__ = ("have", "known")

    def __init__(self, have: ChunkSet) -> None:
        self.have = have
        self.known: set[int] = set()

    def knows(self, b: int, own: bool = False) -> bool:
        """Whether the peer holds the hash of node ``b``; ``own=True`` asks for a chunk under
        ``b`` itself, which is what a signed munro needs (§6.1.2: known only with its
        signature)."""
        if b in self.known:
            return True
        if not own:
            b = parent(b)
        layer = bin_layer(b)
        start = (b >> (layer + 1)) << layer
        return self.have.overlaps(start, start + (1 << layer) - 1)

    def sent_data(self, chunk: int) -> None:
        """DATA for ``chunk`` went out: its leaf, and complete subtrees above it, are known."""
        known = self.known
        b = chunk << 1
        layer = 0
        while True:
            known.add(b)
            if b ^ (2 << layer) not in known:
                return
            b = (b | (1 << layer)) & ~(2 << layer)
            layer += 1


class SwarmContent(Protocol):
    """The content of one swarm as the channel sees it."""

    have: ChunkSet

    @property
    def num_chunks(self) -> int | None: ...

    @property
    def complete(self) -> bool: ...

    def read_chunk(self, chunk: int) -> bytes | memoryview: ...

    def integrity_for(self, chunk: int, peer: PeerHashes) -> list[Integrity | SignedIntegrity]:
        """The INTEGRITY / SIGNED_INTEGRITY messages to put before DATA(chunk), in wire order,
        leaving out what ``peer`` knows and recording what is sent."""
        ...

    def accept_integrity(self, messages: list[Integrity]) -> bool: ...

    def accept_signed_integrity(self, message: SignedIntegrity) -> bool: ...

    def verify_and_store(self, chunk: int, data: bytes | memoryview) -> bool | None:
        """True: verified and stored. False: fails verification (drop the sender).
        None: cannot be checked yet, hashes are missing (drop the chunk, not the peer)."""
        ...


class ChunkWriter(Protocol):
    def write_chunk(self, chunk: int, data: bytes | memoryview) -> None: ...

    def read_chunk(self, chunk: int) -> bytes | memoryview: ...


class StaticContent:
    """A static (VoD/file) swarm protected by a Merkle hash tree (§5).

    ``storage`` reads (and for a download, writes) chunk bytes; ``tree`` is complete for a
    seeder and only knows its root for a leecher until peak hashes arrive (§5.6).
    """

    def __init__(self, tree: HashTree, storage: ChunkWriter, have: ChunkSet | None = None) -> None:
        self._peaks: list[tuple[int, int]] | None = None
        self.tree = tree
        # A DownloadStorage records what it wrote in the very set we announce from.
        self._storage_tracks_have = have is not None and getattr(storage, "have", None) is have
        self.storage = storage
        self.have = have if have is not None else ChunkSet()

    @property
    def num_chunks(self) -> int | None:
        return self.tree.num_chunks

    @property
    def complete(self) -> bool:
        n = self.tree.num_chunks
        return n is not None and self.have.contains_range(0, n - 1) if n else False

    def read_chunk(self, chunk: int) -> bytes | memoryview:
        return self.storage.read_chunk(chunk)

    def integrity_for(self, chunk: int, peer: PeerHashes) -> list[Integrity | SignedIntegrity]:
        # §5.4 and §5.6: the peaks first (they let a leecher that only has the root hash learn
        # the content size), then the uncles up to the chunk's peak, highest first — the
        # order libswift sends and expects. What the peer knows is left out (§5.3).
        tree = self.tree
        known = peer.known
        out: list[Integrity | SignedIntegrity] = []
        if peer.have.is_empty():
            for b in tree.peak_bins():
                if b not in known:
                    known.add(b)
                    out.append(_integrity(tree, b))
        peak = self._peak_of(chunk)
        b = chunk << 1
        layer = 0
        uncles: list[int] = []
        while b != peak:
            uncle = b ^ (2 << layer)
            if peer.knows(uncle):
                break  # and so every higher uncle (PeerHashes)
            uncles.append(uncle)
            known.add(uncle)
            b = (b | (1 << layer)) & ~(2 << layer)
            layer += 1
        for uncle in reversed(uncles):
            out.append(_integrity(tree, uncle))
        peer.sent_data(chunk)
        return out

    def _peak_of(self, chunk: int) -> int:
        peaks = self._peaks
        if peaks is None:
            peaks = self._peaks = [(bin_to_range(b)[1], b) for b in self.tree.peak_bins()]
        for last, b in peaks:
            if chunk <= last:
                return b
        raise IndexError(f"chunk {chunk} is beyond the content")

    def accept_integrity(self, messages: list[Integrity]) -> bool:
        """Take untrusted hashes; ``False`` only for hashes no honest peer sends.

        Until the size is known, a leading run of INTEGRITY messages that tile the content
        from chunk 0 with strictly shrinking aligned blocks are the peaks (§5.6). A run that
        does not hash up to the root is not held against the sender: a datagram that lost
        its peaks to the network starts with uncles that can look like one.
        """
        tree = self.tree
        digest_size = tree.hash_function.digest_size
        offered: list[tuple[int, bytes]] = []
        for m in messages:
            try:
                b = range_to_bin(m.start, m.end)
            except ValueError:
                return False  # §5: every Merkle node is an aligned power-of-two block
            if len(m.hash) != digest_size:
                return False
            offered.append((b, m.hash))
        if tree.num_chunks is None and offered:
            tree.offer_peaks(offered)
        for b, h in offered:
            tree.offer_hash(b, h)
        return True

    def accept_signed_integrity(self, message: SignedIntegrity) -> bool:
        return False  # SIGNED_INTEGRITY has no place in a static swarm (§6)

    def verify_and_store(self, chunk: int, data: bytes | memoryview) -> bool | None:
        if chunk in self.have:
            return True
        ok = self.tree.check_chunk(chunk, data)
        if not ok:
            return ok
        self.storage.write_chunk(chunk, data)
        if not self._storage_tracks_have:
            self.have.add(chunk, chunk)
        return True


def _integrity(tree: HashTree, b: int) -> Integrity:
    start, end = bin_to_range(b)
    h = tree.hash_at(b)
    assert h is not None, "a seeder holds every hash of its tree"
    return Integrity(start, end, h)


class MemoryChunkStore:
    """Chunks in memory: for tests, simulations and small live windows."""

    def __init__(self, chunk_size: int, data: bytes = b"") -> None:
        self.chunk_size = chunk_size
        self.chunks: dict[int, bytes] = {
            i: data[off : off + chunk_size] for i, off in enumerate(range(0, len(data), chunk_size))
        }

    def read_chunk(self, chunk: int) -> bytes | memoryview:
        return self.chunks[chunk]

    def write_chunk(self, chunk: int, data: bytes | memoryview) -> None:
        self.chunks[chunk] = bytes(data)

    def content(self) -> bytes:
        return b"".join(self.chunks[i] for i in sorted(self.chunks))


# ---------------------------------------------------------------------------- live (§6)

#: Default NCHUNKS_PER_SIG (§6.1.2.1, Table 8 leaves it to the deployment).
DEFAULT_CHUNKS_PER_SIGNATURE = 16
#: Default live discard window in chunks (§6.2): 8 MiB of 1 KiB chunks.
DEFAULT_LIVE_WINDOW = 8192
#: Bound on munro INTEGRITYs waiting for their SIGNED_INTEGRITY, and on Sign All signatures
#: waiting for their DATA (hostile input must not grow memory).
MAX_UNPAIRED = 256


class _LiveBase:
    """Chunk ring, availability and discard window shared by the live source and viewers."""

    def __init__(self, params: SwarmParameters, window: int | None) -> None:
        self.params = params
        self.have = ChunkSet()
        self.store = MemoryChunkStore(params.chunk_size)
        self.window = DiscardWindow(window)
        self.ended = False

    @property
    def num_chunks(self) -> int | None:
        return None  # a live stream has no size (§6)

    @property
    def complete(self) -> bool:
        return False

    def read_chunk(self, chunk: int) -> bytes | memoryview:
        return self.store.read_chunk(chunk)

    def _slide(self, latest: int) -> None:
        # §6.2: chunks left of the window are forgotten, and no longer announced.
        for start, end in self.window.slide(latest):
            self.have.remove(start, end)
            for c in range(start, end + 1):
                self.store.chunks.pop(c, None)
            self._forget_before(end + 1)

    def _forget_before(self, chunk: int) -> None:
        pass

    def _integrity_um(
        self,
        chunk: int,
        messages: tuple[Integrity, SignedIntegrity, list[Integrity]],
        peer: PeerHashes,
    ) -> list[Integrity | SignedIntegrity]:
        munro, signed, uncles = messages
        out: list[Integrity | SignedIntegrity] = []
        b = range_to_bin(munro.start, munro.end)
        if not peer.knows(b, own=True):
            peer.known.add(b)
            out += [munro, signed]
        for u in uncles:
            b = range_to_bin(u.start, u.end)
            if not peer.knows(b):
                peer.known.add(b)
                out.append(u)
        peer.sent_data(chunk)
        return out


class LiveSourceContent(_LiveBase):
    """The injector of a live swarm (§6): signs what it adds, announces only signed chunks."""

    def __init__(
        self,
        params: SwarmParameters,
        signer: LiveSigner,
        chunks_per_signature: int = DEFAULT_CHUNKS_PER_SIGNATURE,
        window: int | None = DEFAULT_LIVE_WINDOW,
    ) -> None:
        super().__init__(params, window)
        cam, size = params.chunk_addressing, params.chunk_size
        self.unified: UnifiedMerkleInjector | None = None
        self.sign_all: SignAllInjector | None = None
        if params.integrity_method == IntegrityMethod.UNIFIED_MERKLE:
            self.unified = UnifiedMerkleInjector(
                signer, cam, params.hash_function, chunks_per_signature, chunk_size=size
            )
        else:
            self.sign_all = SignAllInjector(signer, cam, chunk_size=size)
        self.signatures: dict[int, SignedIntegrity] = {}
        self._signatures_forgotten = 0
        self.next_chunk = 0
        self.last_chunk_length = 0

    def add_chunk(self, data: bytes, wall_time: float) -> list[tuple[int, int]]:
        """Append the next chunk of the stream; returns chunk ranges that became announceable."""
        index = self.next_chunk
        self.next_chunk += 1
        self.store.write_chunk(index, data)
        self.last_chunk_length = len(data)
        if self.sign_all is not None:
            self.signatures[index] = self.sign_all.add_chunk(index, data, wall_time)
            self.have.add(index, index)
            self._slide(index)
            return [(index, index)]
        assert self.unified is not None
        out = [(m.start, min(m.end, index)) for m in self.unified.add_chunk(index, data, wall_time)]
        for s, e in out:
            self.have.add(s, e)
        self._slide(index)
        return out

    def end(self, wall_time: float) -> list[tuple[int, int]]:
        """End of the stream: sign the last, partial munro (its missing leaves are empty)."""
        self.ended = True
        if self.unified is None or self.next_chunk == 0:
            return []
        out = [(m.start, min(m.end, self.next_chunk - 1)) for m in self.unified.flush(wall_time)]
        for s, e in out:
            self.have.add(s, e)
        return out

    def _forget_before(self, chunk: int) -> None:
        if self.unified is not None:
            self.unified.forget_before(chunk)
        # Sign All (§6.1.1): one signature per chunk, keyed by chunk.
        old, self._signatures_forgotten = self._signatures_forgotten, chunk
        forget_munros_before(self.signatures, 0, old, chunk)

    def integrity_for(self, chunk: int, peer: PeerHashes) -> list[Integrity | SignedIntegrity]:
        if self.unified is not None:
            return self._integrity_um(chunk, self.unified.integrity_for(chunk), peer)
        return [self.signatures[chunk]]  # §6.1.1: every DATA comes with its signature

    def accept_integrity(self, messages: list[Integrity]) -> bool:
        return True  # the injector trusts only itself; hashes from peers are ignored

    def accept_signed_integrity(self, message: SignedIntegrity) -> bool:
        return True

    def verify_and_store(self, chunk: int, data: bytes | memoryview) -> bool | None:
        return None  # nobody feeds the injector; whatever comes is ignored


class LiveContent(_LiveBase):
    """A viewer of a live swarm: verifies every chunk against the injector's signatures
    (§6.1) before storing, relaying or playing it, and delivers the stream in order."""

    def __init__(
        self,
        params: SwarmParameters,
        chunks_per_signature: int = DEFAULT_CHUNKS_PER_SIGNATURE,
        window: int | None = DEFAULT_LIVE_WINDOW,
        deliver: Callable[[int, bytes], None] | None = None,
    ) -> None:
        super().__init__(params, window)
        verifier = LiveVerifier.from_swarm_id(params.swarm_id)
        cam, size = params.chunk_addressing, params.chunk_size
        self.unified: UnifiedMerkleVerifier | None = None
        self.sign_all: SignAllVerifier | None = None
        if params.integrity_method == IntegrityMethod.UNIFIED_MERKLE:
            self.unified = UnifiedMerkleVerifier(
                verifier, cam, params.hash_function, chunks_per_signature, chunk_size=size
            )
        else:
            self.sign_all = SignAllVerifier(verifier, cam, chunk_size=size)
        self.chunks_per_signature = chunks_per_signature
        self.munro_candidates: dict[tuple[int, int], bytes] = {}
        self.signatures: dict[tuple[int, int], SignedIntegrity] = {}
        self.deliver = deliver
        #: Next chunk to deliver (the playback position); set at tune-in (§6.1.2.4).
        self.position: int | None = None

    def tune_in(self, latest: int) -> int:
        """Start playback at the munro holding ``latest`` (the peer's newest chunk)."""
        if self.position is None:
            # Unified Merkle: verification needs the munro's signature, so start at a munro
            # boundary. Sign All could start anywhere; the same boundary gives it a startup
            # buffer of up to one munro's worth of chunks.
            n = self.chunks_per_signature
            self.position = latest - latest % n
        return self.position

    def accept_integrity(self, messages: list[Integrity]) -> bool:
        for m in messages:
            if self.unified is None:
                return False  # Sign All has no INTEGRITY messages (§6.1.1)
            if not self.unified.offer_hash(m.start, m.end, m.hash):
                # §6.1.2.3: a munro hash travels in an INTEGRITY just before its
                # SIGNED_INTEGRITY; keep it (bounded) until the signature arrives.
                if len(self.munro_candidates) >= MAX_UNPAIRED:
                    self.munro_candidates.clear()
                self.munro_candidates[(m.start, m.end)] = m.hash
        return True

    def accept_signed_integrity(self, message: SignedIntegrity) -> bool:
        key = (message.start, message.end)
        if self.unified is None:
            if len(self.signatures) >= MAX_UNPAIRED:
                self.signatures.clear()
            self.signatures[key] = message
            return True
        munro_hash = self.munro_candidates.pop(key, None)
        if munro_hash is None:
            return False
        return self.unified.offer_signed_munro(
            message.start, message.end, munro_hash, message.timestamp, message.signature
        )

    def verify_and_store(self, chunk: int, data: bytes | memoryview) -> bool | None:
        if chunk in self.have:
            return True
        ok: bool | None
        if self.unified is not None:
            ok = self.unified.check_chunk(chunk, data)
        else:
            assert self.sign_all is not None
            sig = self.signatures.pop((chunk, chunk), None) or self.signatures.pop(
                _byte_key(chunk, len(data), self.params), None
            )
            if sig is None:
                return None  # its SIGNED_INTEGRITY was lost on the way
            ok = self.sign_all.verify(sig.start, sig.end, sig.timestamp, sig.signature, data)
        if not ok:
            return ok
        self.store.write_chunk(chunk, data)
        self.have.add(chunk, chunk)
        self._play()
        self._slide(chunk)
        return True

    def _play(self) -> None:
        if self.position is None or self.deliver is None:
            return
        while self.position in self.have:
            self.deliver(self.position, bytes(self.store.read_chunk(self.position)))
            self.position += 1

    def _forget_before(self, chunk: int) -> None:
        if self.unified is not None:
            self.unified.forget_before(chunk)

    def integrity_for(self, chunk: int, peer: PeerHashes) -> list[Integrity | SignedIntegrity]:
        if self.unified is not None:
            return self._integrity_um(chunk, self.unified.integrity_for(chunk), peer)
        raise LookupError("a Sign All viewer does not keep signatures to relay")


def _byte_key(chunk: int, length: int, params: SwarmParameters) -> tuple[int, int]:
    start = chunk * params.chunk_size
    return (start, start + length - 1)
