"""Overlay configurations for the p2pcdn usages (RFC 6940 §11.1, docs/usages.md), and a lab
set-up of a whole overlay in a directory (CA, node certificates, overlay.xml, daemon TOMLs).

* :func:`usage_kinds` — the Kind descriptions a tracker overlay, a storage overlay, or one
  overlay doing both (one-overlay mode: both sets of Kinds, nothing else) declares.
* :func:`overlay_configuration` / :func:`overlay_xml` — the configuration document, with
  ``max-message-size`` raised so a Fetch answer carrying one segment fits (RFC 6940's default,
  5000 bytes, would not hold a single 64 KiB segment).
* :func:`make_overlay_dir` / :func:`add_daemon` — what ``p2pcdn ca init/issue`` and a
  hand-written overlay.xml and daemon TOML would give, for tests, the demo and benchmarks;
  the daemons then run with ``p2pcdn overlay --config nodeN/daemon.toml`` or in-process with
  ``OverlayNode.from_config(load_daemon_config(path))``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from reload import security
from reload.config import BootstrapNode, KindDescription, OverlayConfiguration, generate
from reload.usages.content import DEFAULT_SEGMENT_CHUNKS
from reload.usages.kinds import (
    CONTENT_META,
    CONTENT_SEGMENT,
    PEER_BATCH,
    PEER_STATUS,
    SWARM_PEERS,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_TRACKERS",
    "ROLES",
    "add_daemon",
    "make_overlay_dir",
    "max_message_size_for",
    "overlay_configuration",
    "overlay_xml",
    "segment_max_size",
    "usage_kinds",
]

ROLES: Final = ("tracker", "storage", "both")
DEFAULT_CHUNK_SIZE: Final = 1024
#: Connection trackers that may hold an entry at one Resource-ID (max-count of the tracker
#: Kinds): a Fetch of SWARM-PEERS answers with all of them in one message.
MAX_TRACKERS: Final = 64
#: Largest SWARM-PEERS entry: about 100 peer records; a tracker reports its best peers for a
#: swarm, not all of them, so that a Fetch of every tracker's entry stays one message.
SWARM_PEERS_MAX_SIZE: Final = 16384
PEER_STATUS_MAX_SIZE: Final = 1024
CONTENT_META_MAX_SIZE: Final = 8192
#: Room in a message beyond the stored value: Forwarding Header, via list, the StoredData
#: signature with its SignerIdentity and the certificates a Store carries (§6.3.4, §7.4.1).
MESSAGE_HEADROOM: Final = 16384
#: Per chunk of a Sign All segment (§6.1.1): an RSA-2048 signature, timestamp, bin, CBOR.
_SIGNED_PER_CHUNK: Final = 256 + 16


def segment_max_size(
    segment_chunks: int = DEFAULT_SEGMENT_CHUNKS, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> int:
    """max-size of CONTENT-SEGMENT: the chunks, a signature per chunk (the worst case, Sign
    All), proof and CBOR framing."""
    return segment_chunks * (chunk_size + _SIGNED_PER_CHUNK) + 4096


def max_message_size_for(
    segment_chunks: int = DEFAULT_SEGMENT_CHUNKS, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> int:
    """max-message-size (§11.1) that fits a Store or Fetch answer of one segment: the
    segment's max-size plus headroom, rounded up to a power of two (131072 by default)."""
    need = segment_max_size(segment_chunks, chunk_size) + MESSAGE_HEADROOM
    return 1 << (need - 1).bit_length()


def usage_kinds(
    role: str,
    *,
    segment_chunks: int = DEFAULT_SEGMENT_CHUNKS,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> list[KindDescription]:
    """The Kinds an overlay of ``role`` declares: "tracker", "storage" or "both"."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    message = max_message_size_for(segment_chunks, chunk_size)
    tracker = [
        KindDescription(
            "DICTIONARY", "NODE-KEY-MATCH", MAX_TRACKERS, SWARM_PEERS_MAX_SIZE, kind_id=SWARM_PEERS
        ),
        KindDescription(
            "DICTIONARY",
            "NODE-KEY-MATCH",
            MAX_TRACKERS,
            message - MESSAGE_HEADROOM,
            kind_id=PEER_BATCH,
        ),
        KindDescription(
            "DICTIONARY", "NODE-KEY-MATCH", MAX_TRACKERS, PEER_STATUS_MAX_SIZE, kind_id=PEER_STATUS
        ),
    ]
    storage = [
        KindDescription(
            "DICTIONARY", "USER-PREFIX-MATCH", 1, CONTENT_META_MAX_SIZE, kind_id=CONTENT_META
        ),
        KindDescription(
            "DICTIONARY",
            "USER-PREFIX-MATCH",
            1,
            segment_max_size(segment_chunks, chunk_size),
            kind_id=CONTENT_SEGMENT,
        ),
    ]
    if role == "tracker":
        return tracker
    if role == "storage":
        return storage
    return tracker + storage


def overlay_configuration(
    name: str,
    role: str,
    root_certs: Sequence[x509.Certificate],
    bootstrap: Sequence[tuple[str, int]] = (),
    *,
    segment_chunks: int = DEFAULT_SEGMENT_CHUNKS,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chord_update_interval: int | None = None,
    chord_ping_interval: int | None = None,
) -> OverlayConfiguration:
    """The configuration element of a usage overlay: Kinds of ``role``, raised
    ``max-message-size``, the CA as root-cert, and the bootstrap nodes."""
    return OverlayConfiguration(
        instance_name=name,
        root_certs=[c.public_bytes(serialization.Encoding.DER) for c in root_certs],
        bootstrap_nodes=[BootstrapNode(host, port) for host, port in bootstrap],
        max_message_size=max_message_size_for(segment_chunks, chunk_size),
        chord_update_interval=chord_update_interval,
        chord_ping_interval=chord_ping_interval,
        kinds=usage_kinds(role, segment_chunks=segment_chunks, chunk_size=chunk_size),
    )


def overlay_xml(
    name: str,
    role: str,
    root_certs: Sequence[x509.Certificate],
    bootstrap: Sequence[tuple[str, int]] = (),
    *,
    segment_chunks: int = DEFAULT_SEGMENT_CHUNKS,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chord_update_interval: int | None = None,
    chord_ping_interval: int | None = None,
) -> bytes:
    """:func:`overlay_configuration` written as an overlay configuration document (unsigned:
    the lab trusts the file it wrote; §11.1 signatures are reload.config's business). The
    overlay-link-protocol list is left out: its default, "TLS", permits TLS and DTLS."""
    config = overlay_configuration(
        name,
        role,
        root_certs,
        bootstrap,
        segment_chunks=segment_chunks,
        chunk_size=chunk_size,
        chord_update_interval=chord_update_interval,
        chord_ping_interval=chord_ping_interval,
    )
    return generate(config)


# --- lab set-up ----------------------------------------------------------------------------


def _free_ports(count: int, link: str, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free right now on ``host`` (bound together, then released)."""
    kind = socket.SOCK_STREAM if link == "tls" else socket.SOCK_DGRAM
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, kind))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
    return ports


def _issue(root: Path, prefix: Path, user: str) -> bytes:
    """A key and certificate (PREFIX.key, PREFIX.pem) issued by ROOT/ca, as ``p2pcdn ca
    issue`` writes them, recorded in ca/nodes.json; returns the Node-ID."""
    ca_dir = root / "ca"
    ca_key = security.load_private_key(ca_dir / "ca.key")
    ca_cert = security.load_certificate(ca_dir / "ca.pem")
    overlay = security.overlay_of_ca(ca_cert)
    node_ids = security.random_node_ids(1)
    key = security.generate_private_key()
    cert = security.issue_node_certificate(
        ca_key, ca_cert, key.public_key(), node_ids, user, overlay
    )
    prefix.parent.mkdir(parents=True, exist_ok=True)
    security.save_private_key(prefix.with_name(prefix.name + ".key"), key)
    security.save_certificates(prefix.with_name(prefix.name + ".pem"), [cert])
    registry_path = ca_dir / "nodes.json"
    registry: dict[str, list[str]] = (
        json.loads(registry_path.read_text()) if registry_path.exists() else {}
    )
    registry[user] = [i.hex() for i in node_ids]
    registry_path.write_text(json.dumps(registry, indent=2, sort_keys=True) + "\n")
    return node_ids[0]


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def add_daemon(
    root: Path,
    name: str,
    user: str,
    *,
    port: int = 0,
    link: str = "tls",
    client: bool = False,
    keepalive: float = 2.0,
    creates_overlay: bool = False,
    bootstrap: Sequence[tuple[str, int]] = (),
) -> Path:
    """Issue a certificate for ``user`` and write ROOT/NAME/daemon.toml for a node of the
    overlay in ``root`` (made by :func:`make_overlay_dir`); ``port`` 0 picks a free port.
    ``client`` writes ``client = true`` (RFC 6940 §3.2.1; needs daemon support for it).
    ``creates_overlay`` lists the node itself as its only bootstrap node, so it creates the
    overlay instead of joining through the configuration's bootstrap nodes (§11.4);
    ``bootstrap`` lists the nodes to join through instead of the configuration's (a client
    needs them in its TOML: the peer it attaches to)."""
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    _issue(root, directory / "node", user)
    if port == 0:
        port = _free_ports(1, link)[0]
    lines = [
        "[overlay]",
        'certificate = "node.pem"',
        'key = "node.key"',
        'ca = "../ca/ca.pem"',
        'configuration = "../overlay.xml"',
        f"listen = {_toml_string(f'127.0.0.1:{port}')}",
        f"link = {_toml_string(link)}",
        'data_dir = "data"',
        f"keepalive = {keepalive}",
    ]
    if creates_overlay:
        bootstrap = [("127.0.0.1", port)]
    if bootstrap:
        listed = ", ".join(_toml_string(f"{host}:{number}") for host, number in bootstrap)
        lines.append(f"bootstrap = [{listed}]")
    if client:
        lines.append("client = true")
    path = directory / "daemon.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_overlay_dir(
    root: Path,
    overlay_name: str,
    nodes: int,
    role: str,
    base_port: int = 0,
    link: str = "tls",
    *,
    bootstrap_count: int = 3,
    segment_chunks: int = DEFAULT_SEGMENT_CHUNKS,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chord_update_interval: int | None = None,
    chord_ping_interval: int | None = None,
) -> list[Path]:
    """Lay out a whole overlay under ``root`` and return the daemon TOML of each node:

    ``ca/`` (ca.key, ca.pem, nodes.json — as ``p2pcdn ca init/issue`` makes it),
    ``overlay.xml`` (the Kinds of ``role``, raised max-message-size, the CA as root-cert, the
    first ``bootstrap_count`` nodes as bootstrap nodes), and ``nodeI/`` (node.key, node.pem,
    daemon.toml, data/) for I in 0..nodes-1, user ``nodeI@<overlay_name>``, listening on
    127.0.0.1:base_port+I (free ports when ``base_port`` is 0). Start node 0 first: its TOML
    names itself as its only bootstrap node, so it creates the overlay; the others join
    through the first bootstrap node that answers. (To restart node 0 into a running
    overlay, give it another node with ``--bootstrap``.)
    """
    if nodes < 1:
        raise ValueError("an overlay has at least one node")
    if link not in ("tls", "dtls"):
        raise ValueError("link must be 'tls' or 'dtls'")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    root.mkdir(parents=True, exist_ok=True)
    ca_dir = root / "ca"
    ca_dir.mkdir(exist_ok=True)
    ca_key, ca_cert = security.create_overlay_ca(overlay_name)
    security.save_private_key(ca_dir / "ca.key", ca_key)
    security.save_certificates(ca_dir / "ca.pem", [ca_cert])
    ports = _free_ports(nodes, link) if base_port == 0 else [base_port + i for i in range(nodes)]
    bootstrap = [("127.0.0.1", p) for p in ports[: max(1, bootstrap_count)]]
    (root / "overlay.xml").write_bytes(
        overlay_xml(
            overlay_name,
            role,
            [ca_cert],
            bootstrap,
            segment_chunks=segment_chunks,
            chunk_size=chunk_size,
            chord_update_interval=chord_update_interval,
            chord_ping_interval=chord_ping_interval,
        )
    )
    return [
        add_daemon(
            root,
            f"node{i}",
            f"node{i}@{overlay_name}",
            port=ports[i],
            link=link,
            creates_overlay=i == 0,
        )
        for i in range(nodes)
    ]
