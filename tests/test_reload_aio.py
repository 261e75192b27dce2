"""The RELOAD node daemon on real sockets (issue 5 items 3-5): :class:`reload.aio.OverlayNode`
over DTLS and TLS links on 127.0.0.1, with a lab CA and node certificates made here."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from reload import security
from reload.access import chord_resource_id
from reload.aio import (
    DEFAULT_KINDS,
    LAB_KIND,
    DaemonConfigError,
    OverlayNode,
    ReloadRequestError,
    load_daemon_config,
)
from reload.links import LinkConfig
from reload.messages import DataValue, ErrorCode
from reload.node import NodeConfig

OVERLAY = "aio.p2pcdn.test"
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Credential:
    user: str
    node_id: bytes
    key: security.PrivateKey
    cert: x509.Certificate


@dataclass
class Lab:
    ca_key: security.PrivateKey
    ca_cert: x509.Certificate
    credentials: list[Credential]


def make_lab(count: int) -> Lab:
    ca_key, ca_cert = security.create_overlay_ca(OVERLAY)
    creds = []
    for i, node_id in enumerate(sorted(security.random_node_ids(1) for _ in range(count))):
        key = security.generate_private_key()
        user = f"node{i}@{OVERLAY}"
        cert = security.issue_node_certificate(
            ca_key, ca_cert, key.public_key(), node_id, user, OVERLAY
        )
        creds.append(Credential(user, node_id[0], key, cert))
    return Lab(ca_key, ca_cert, creds)


_LAB: Lab | None = None


def lab(count: int = 24) -> Lab:
    """One CA and ``count`` node credentials for the module (ECDSA P-256: ~ms each)."""
    global _LAB
    if _LAB is None or len(_LAB.credentials) < count:
        _LAB = make_lab(count)
    return _LAB


def make_node(
    the_lab: Lab,
    index: int,
    *,
    link: str = "dtls",
    bootstrap: list[tuple[str, int]] | None = None,
    data_dir: Path | None = None,
    keepalive: float = 2.0,
    rto: float = 0.1,
) -> OverlayNode:
    cred = the_lab.credentials[index]
    link_config = LinkConfig(
        overlay=OVERLAY,
        certificate=cred.cert,
        private_key=cred.key,
        trust_roots=(the_lab.ca_cert,),
        rto=rto,
        handshake_timeout=20.0,  # generous: a loaded CI machine handshakes slowly
    )
    node_config = NodeConfig(
        overlay_name=OVERLAY,
        kinds=DEFAULT_KINDS,
        chord_update_interval=5.0,
        chord_ping_interval=5.0,
    )
    signer = security.Signer(cred.key, cred.cert, cred.node_id)
    return OverlayNode(
        node_config,
        link_config,
        signer,
        link=link,
        bootstrap=bootstrap or [],
        data_dir=data_dir,
        keepalive=keepalive,
    )


async def build_overlay(
    the_lab: Lab, count: int, *, link: str = "dtls", tmp: Path | None = None
) -> list[OverlayNode]:
    first = make_node(the_lab, 0, link=link, data_dir=tmp / "n0" if tmp else None)
    await first.start()
    assert first.address is not None
    nodes = [first]
    for i in range(1, count):
        node = make_node(
            the_lab,
            i,
            link=link,
            bootstrap=[first.address],
            data_dir=tmp / f"n{i}" if tmp else None,
        )
        await node.start()
        nodes.append(node)
    return nodes


async def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, step: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def ring_ok(nodes: list[OverlayNode]) -> bool:
    """Every node's first successor is the next Node-ID of the live set (§10.1)."""
    ids = sorted(n.node_id for n in nodes)
    for node in nodes:
        assert node.node is not None
        successors = node.node.chord.table.successors
        expected = ids[(ids.index(node.node_id) + 1) % len(ids)]
        if not successors or successors[0] != expected:
            return False
    return True


async def close_all(nodes: list[OverlayNode]) -> None:
    for node in nodes:
        await node.abort()
    await asyncio.sleep(0.05)


def run(coro: Awaitable[None]) -> None:
    asyncio.run(_bounded(coro))


async def _bounded(coro: Awaitable[None]) -> None:
    await asyncio.wait_for(coro, 90)


def user_resource(the_lab: Lab, index: int) -> bytes:
    """USER-MATCH (§7.3.1): node ``index`` may write at H(its user name)."""
    return chord_resource_id(the_lab.credentials[index].user.encode())


# ---------------------------------------------------------------------------------------------


def test_small_overlay_store_fetch_stat_find_ping_and_errors() -> None:
    the_lab = lab()

    async def scenario() -> None:
        nodes = await build_overlay(the_lab, 4)
        try:
            await wait_for(lambda: ring_ok(nodes), 20, "the ring")
            resource = user_resource(the_lab, 1)
            answer = await nodes[1].store(resource, LAB_KIND, [DataValue(True, b"hello")])
            assert answer.kind_responses[0].kind == LAB_KIND
            assert answer.kind_responses[0].generation_counter == 1
            assert await nodes[3].fetch_single(resource, LAB_KIND) == b"hello"
            stat = await nodes[2].stat(resource, LAB_KIND)
            assert stat.kind_responses[0].generation == 1
            found = await nodes[0].find(resource, [LAB_KIND])
            assert found.results[0].kind == LAB_KIND
            pong = await nodes[0].ping(nodes[2].node_id)
            assert abs(pong.time / 1000 - time.time()) < 60
            # USER-MATCH: node 2 may not write at node 1's Resource-ID (§7.3.1)
            with pytest.raises(ReloadRequestError) as info:
                await nodes[2].store(resource, LAB_KIND, [DataValue(True, b"forged")])
            assert info.value.code == ErrorCode.FORBIDDEN
            assert await nodes[0].fetch_single(resource, LAB_KIND) == b"hello"
            # max-size 2048 (§7.4.1.1: Error_Data_Too_Large); the 3 KB request is fragmented
            # to the DTLS path MTU and reassembled (§6.7)
            with pytest.raises(ReloadRequestError) as info:
                await nodes[1].store(resource, LAB_KIND, [DataValue(True, b"y" * 3000)])
            assert info.value.code == ErrorCode.DATA_TOO_LARGE
            big = b"z" * 2000
            await nodes[1].store(resource, LAB_KIND, [DataValue(True, big)])
            assert await nodes[2].fetch_single(resource, LAB_KIND) == big
        finally:
            await close_all(nodes)

    run(scenario())


def test_leave_tells_the_neighbours() -> None:
    the_lab = lab()

    async def scenario() -> None:
        nodes = await build_overlay(the_lab, 4, link="tls")
        try:
            await wait_for(lambda: ring_ok(nodes), 20, "the ring")
            leaving = nodes.pop(2)
            await leaving.close()
            # §10.9: the neighbours drop the leaving peer at once (no failure detection needed)
            await wait_for(lambda: ring_ok(nodes), 5, "the ring without the leaving peer")
            assert all(leaving.node_id not in n.neighbours() for n in nodes)
        finally:
            await close_all(nodes)

    run(scenario())


async def fetch_again_on_timeout(reader: OverlayNode, resource: bytes) -> bytes | None:
    """A client's retry: on a loaded machine a Fetch issued just after a crash was seen to
    time out once (all its end-to-end retransmissions lost, §6.2.1) while a second one,
    issued afterwards, succeeds. Any other error fails the test."""
    try:
        return await reader.fetch_single(resource, LAB_KIND)
    except ReloadRequestError as exc:
        if exc.code != ErrorCode.REQUEST_TIMEOUT:
            raise
    return await reader.fetch_single(resource, LAB_KIND)


def holders(nodes: list[OverlayNode], resource: bytes) -> list[OverlayNode]:
    return [n for n in nodes if n.holds(resource)]


@pytest.mark.slow
def test_twenty_dtls_nodes_replicate_and_survive_a_crash(tmp_path: Path) -> None:
    """≥ 20 nodes on DTLS links join through one bootstrap node; values stored from some
    nodes are fetched from others and held by 3 nodes (§10.4); the responsible peer of one of
    them is killed without Leave: the ring repairs (§10.7.1), nothing is lost, the replica
    count comes back to 3 (§10.7.3); a node restarted on its data directory still has its
    data (sqlite)."""
    count = 20
    the_lab = lab(count + 2)

    async def scenario() -> None:
        nodes = await build_overlay(the_lab, count, tmp=tmp_path)
        try:
            await wait_for(lambda: ring_ok(nodes), 30, "the 20-node ring")
            writers = [3, 7, 11, 15, 19]
            for w in writers:
                await nodes[w].store(
                    user_resource(the_lab, w), LAB_KIND, [DataValue(True, b"v%d" % w)]
                )
            for w in writers:
                reader = nodes[(w + 5) % count]
                assert await reader.fetch_single(user_resource(the_lab, w), LAB_KIND) == b"v%d" % w
                assert reader.last_hops >= 1
            resources = [user_resource(the_lab, w) for w in writers]
            await wait_for(
                lambda: all(len(holders(nodes, r)) == 3 for r in resources), 10, "3 replicas"
            )
            # kill the responsible peer of the first value (its lowest holder clockwise)
            resource = resources[0]
            ids = sorted(n.node_id for n in nodes)
            responsible_id = next((i for i in ids if i >= resource), ids[0])
            victim = next(n for n in nodes if n.node_id == responsible_id)
            assert victim.holds(resource)
            await victim.abort()
            nodes.remove(victim)
            await wait_for(lambda: ring_ok(nodes), 30, "ring repair after the crash")
            await wait_for(
                lambda: all(len(holders(nodes, r)) >= 3 for r in resources),
                30,
                "re-replication to 3 nodes",
            )
            for w, r in zip(writers, resources, strict=True):
                reader = nodes[(w + 2) % len(nodes)]
                assert await fetch_again_on_timeout(reader, r) == b"v%d" % w
            # a holder stops and restarts on its data directory: its data is on disk
            keeper = holders(nodes, resources[1])[0]
            index = next(
                i for i, c in enumerate(the_lab.credentials) if c.node_id == keeper.node_id
            )
            data_dir = keeper.data_dir
            await keeper.abort()
            nodes.remove(keeper)
            await wait_for(lambda: ring_ok(nodes), 30, "ring repair after the stop")
            assert nodes[0].address is not None
            again = make_node(the_lab, index, bootstrap=[nodes[0].address], data_dir=data_dir)
            await again.start(wait_joined=False)
            nodes.append(again)
            # loaded from its sqlite store, before any peer could have handed it anything
            assert again.holds(resources[1])
        finally:
            await close_all(nodes)

    run(scenario())


def test_tls_overlay_store_and_fetch() -> None:
    """The TLS-TCP-FH-NO-ICE variant (link type 4), 6 nodes."""
    the_lab = lab()

    async def scenario() -> None:
        nodes = await build_overlay(the_lab, 6, link="tls")
        try:
            await wait_for(lambda: ring_ok(nodes), 20, "the ring")
            for w in (1, 4):
                await nodes[w].store(user_resource(the_lab, w), LAB_KIND, [DataValue(True, b"t")])
            for w in (1, 4):
                assert await nodes[5 - w].fetch_single(user_resource(the_lab, w), LAB_KIND) == b"t"
            await wait_for(
                lambda: len(holders(nodes, user_resource(the_lab, 1))) == 3, 10, "3 replicas"
            )
        finally:
            await close_all(nodes)

    run(scenario())


def _write_credentials(the_lab: Lab, index: int, directory: Path) -> None:
    cred = the_lab.credentials[index]
    security.save_private_key(directory / f"n{index}.key", cred.key)
    security.save_certificates(directory / f"n{index}.pem", [cred.cert])
    security.save_certificates(directory / "ca.pem", [the_lab.ca_cert])


def test_daemon_config_file(tmp_path: Path) -> None:
    the_lab = lab()
    _write_credentials(the_lab, 0, tmp_path)
    path = tmp_path / "overlay.toml"
    path.write_text(
        '[overlay]\ncertificate = "n0.pem"\nkey = "n0.key"\nca = "ca.pem"\n'
        'listen = "127.0.0.1:0"\nlink = "tls"\nbootstrap = ["127.0.0.1:6084"]\n'
        'data_dir = "data"\nkeepalive = 5\n'
    )
    config = load_daemon_config(path)
    assert config.listen == ("127.0.0.1", 0)
    assert config.link == "tls"
    assert config.bootstrap == [("127.0.0.1", 6084)]
    assert config.data_dir == tmp_path / "data"
    node = OverlayNode.from_config(config)
    # the overlay name comes from the CA, the Node-ID from the certificate (§11.3)
    assert node.link_config.overlay == OVERLAY
    assert node.node_id == the_lab.credentials[0].node_id
    for bad in ('link = "sctp"', 'listen = "localhost:x"', "bogus = 1", "keepalive = -1"):
        path.write_text(f'certificate = "n0.pem"\nkey = "n0.key"\n{bad}\n')
        with pytest.raises(DaemonConfigError):
            load_daemon_config(path)


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            return line.strip()
        time.sleep(0.05)
    raise AssertionError("no output from the daemon")


@pytest.mark.slow
def test_p2pcdn_overlay_daemon_joins_serves_and_leaves_on_sigterm(tmp_path: Path) -> None:
    """`p2pcdn overlay --config F` prints its Node-ID and address, joins through a bootstrap
    node, serves, and leaves cleanly (§10.9) on SIGTERM with exit status 0."""
    the_lab = lab()
    _write_credentials(the_lab, 5, tmp_path)

    async def scenario() -> None:
        nodes = await build_overlay(the_lab, 3)
        try:
            assert nodes[0].address is not None
            host, port = nodes[0].address
            path = tmp_path / "overlay.toml"
            path.write_text(
                f'certificate = "n5.pem"\nkey = "n5.key"\nca = "ca.pem"\n'
                f'listen = "127.0.0.1:0"\nbootstrap = ["{host}:{port}"]\n'
                f'data_dir = "data"\n'
            )
            env = dict(os.environ, PYTHONPATH=str(REPO))
            proc = subprocess.Popen(
                [sys.executable, "-m", "lab.cli", "overlay", "--config", str(path)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=REPO,
            )
            try:
                line = await asyncio.to_thread(_read_line, proc, 30)
                assert line == the_lab.credentials[5].node_id.hex()
                address = await asyncio.to_thread(_read_line, proc, 30)
                assert address.startswith("127.0.0.1:")
                daemon_id = the_lab.credentials[5].node_id
                await wait_for(
                    lambda: all(daemon_id in n.neighbours() for n in nodes), 20, "the daemon"
                )
                # a store from the daemon's neighbourhood is served through it
                resource = user_resource(the_lab, 1)
                await nodes[1].store(resource, LAB_KIND, [DataValue(True, b"via daemon")])
                assert await nodes[2].fetch_single(resource, LAB_KIND) == b"via daemon"
                proc.send_signal(signal.SIGTERM)
                code = await asyncio.to_thread(proc.wait, 20)
                assert code == 0
                # Leave (§10.9): the neighbours drop it without waiting for a link failure
                await wait_for(
                    lambda: all(daemon_id not in n.neighbours() for n in nodes), 3, "the Leave"
                )
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        finally:
            await close_all(nodes)

    run(scenario())


def test_overlay_command_line_forms() -> None:
    """`p2pcdn overlay --config F` and `p2pcdn overlay [--config F] run [flags]` both parse to
    the daemon with the flags overriding the file; without --config it is a usage error."""
    from lab.cli import EXIT_USAGE, build_parser, main

    parser = build_parser()
    bare = parser.parse_args(["overlay", "--config", "o.toml", "--link", "tls"])
    assert bare.overlay_action is None and bare.config == Path("o.toml") and bare.link == "tls"
    run_form = parser.parse_args(
        ["overlay", "--config", "o.toml", "run", "--bootstrap", "127.0.0.1:6084"]
    )
    assert run_form.overlay_action == "run"
    assert run_form.config == Path("o.toml")  # not reset by the run action
    assert run_form.bootstrap == [("127.0.0.1", 6084)]
    assert main(["overlay", "run"]) == EXIT_USAGE
