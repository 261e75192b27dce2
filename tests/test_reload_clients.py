"""RELOAD clients (RFC 6940 §4.2, §4.2.1), the replica fetch API (Fetch at a Node-ID, the
replica set learnt with Pings), Error_Unknown_Kind end to end (§7.4.1.2) and the determinism of
``p2pcdn overlay sim`` across hash seeds."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reload import security, wire
from reload.aio import LAB_KIND, DaemonConfigError, OverlayNode, load_daemon_config
from reload.messages import (
    DataValue,
    ErrorCode,
    FetchAns,
    FetchReq,
    MessageContents,
    NodeDestination,
    ProbeAns,
    ProbeInformationType,
    ResourceDestination,
    StatReq,
    StoredData,
    StoredDataSpecifier,
    StoreKindData,
    StoreReq,
)
from reload.node import RequestDone, SendMessage
from reload.sim import SIM_KIND, SimNetwork, run_simulation
from reload.transactions import (
    ErrorReply,
    check_request,
    parse_unknown_kinds,
    request_kind_ids,
    unknown_kinds_in,
)
from tests import test_reload_errors as errors
from tests.test_reload_aio import close_all, lab, make_node, run, user_resource, wait_for

REPO = Path(__file__).resolve().parent.parent
UNKNOWN_A = 0xF00000A1
UNKNOWN_B = 0xF00000B2


def _values(done: RequestDone | None) -> list[bytes]:
    assert done is not None and done.ok, done
    assert isinstance(done.answer, FetchAns)
    return [
        v.value.value
        for kr in done.answer.kind_responses
        for v in kr.values
        if isinstance(v.value, DataValue) and v.value.exists
    ]


def _overlay(peers: int, seed: int, *, wire_format: bool = False) -> SimNetwork:
    net = SimNetwork(seed, wire_format=wire_format)
    net.create()
    for _ in range(peers - 1):
        net.join()
        net.run_for(2.0)
    net.run_for(30.0)
    assert net.ring_ok()
    return net


def _in_any_table(net: SimNetwork, node_id: bytes) -> list[bytes]:
    """The peers whose Routing Table (successors, predecessors, fingers) names ``node_id``."""
    found = []
    for peer in sorted(net.joined & net.alive):
        table = net.nodes[peer].chord.table
        if node_id in table.peers or node_id in table.routing_table():
            found.append(peer)
    return found


# --- clients in the simulation ------------------------------------------------------------------


def test_client_attaches_to_its_responsible_peer_and_stores_and_fetches_through_it() -> None:
    net = _overlay(12, seed=21)
    peers = sorted(net.joined)
    client = net.add_client(peers[:2])
    net.run_for(5.0)
    cid = client.node_id
    # §4.2.1: attached to the peer responsible for the client's Node-ID
    assert net.clients[cid] == net.responsible(cid)
    assert client.joined and client.attached_peer == net.responsible(cid)
    # the client stores at H(its user name) through its peer, a peer fetches it
    resource = net.user_resource(cid)
    store = net.store_value(cid, resource, b"from a client")
    net.run_for(3.0)
    stored = net.result(cid, store)
    assert stored is not None and stored.ok, stored
    reader = next(p for p in peers if p != net.responsible(resource))
    fetch = net.fetch_value(reader, resource)
    net.run_for(3.0)
    assert _values(net.result(reader, fetch)) == [b"from a client"]
    # and the client fetches what a peer stored
    owner = peers[3]
    other = net.user_resource(owner)
    net.store_value(owner, other, b"from a peer")
    net.run_for(3.0)
    fetch = net.fetch_value(cid, other)
    net.run_for(3.0)
    assert _values(net.result(cid, fetch)) == [b"from a peer"]
    # a client is responsible for nothing, stores nothing and is in nobody's Routing Table
    assert not client.store_.resource_ids()
    assert _in_any_table(net, cid) == []
    assert net.ring_ok()
    for peer in peers:
        assert cid not in net.nodes[peer].chord.table.successors
        assert cid not in net.nodes[peer].chord.table.fingers.values()


def test_messages_for_the_client_node_id_reach_it_through_its_peer() -> None:
    net = _overlay(10, seed=22)
    client = net.add_client()
    net.run_for(5.0)
    cid = client.node_id
    attached = net.clients[cid]
    assert attached is not None
    # a peer without a link to the client sends a Probe to the client's Node-ID (§6.4.2.5)
    sender = next(p for p in sorted(net.joined) if cid not in net.nodes[p].links)
    handle = net.request(sender, lambda n: n.probe(cid, net.now))
    net.run_for(3.0)
    done = net.result(sender, handle)
    assert done is not None and done.ok and isinstance(done.answer, ProbeAns)
    assert done.responder == cid and done.hops >= 2
    shares = [
        i.value for i in done.answer.probe_info if i.type == ProbeInformationType.RESPONSIBLE_SET
    ]
    assert shares == [0]  # responsible for nothing (§4.2)


def test_a_client_refuses_peer_work() -> None:
    net = _overlay(6, seed=23)
    client = net.add_client()
    net.run_for(5.0)
    cid = client.node_id
    peer = sorted(net.joined)[0]
    # a Fetch addressed to the client's Node-ID: a client stores nothing (§4.2)
    handle = net.fetch_value(peer, net.user_resource(peer), at=cid)
    net.run_for(3.0)
    done = net.result(peer, handle)
    assert done is not None and done.error == ErrorCode.FORBIDDEN


def test_a_client_cannot_write_replicas() -> None:
    net = _overlay(6, seed=30)
    client = net.add_client()
    net.run_for(5.0)
    cid = client.node_id
    attached = net.clients[cid]
    assert attached is not None
    # a replica Store (§10.4) skips the access policy, so only ring peers may send one
    owner = sorted(net.joined)[0]
    resource = net.user_resource(owner)
    store = _two_unknown_kind_store(net, cid, resource)
    replica = StoreReq(resource, 1, store.kind_data[1:2])  # the known Kind only
    handle = net.request(
        cid, lambda n: n._client_request(replica, (NodeDestination(attached),), net.now)
    )
    net.run_for(3.0)
    done = net.result(cid, handle)
    assert done is not None and done.error == ErrorCode.FORBIDDEN
    assert not net.nodes[attached].holds(resource)


def test_client_reattaches_when_its_peer_dies_and_keeps_working() -> None:
    net = _overlay(12, seed=24)
    peers = sorted(net.joined)
    client = net.add_client(peers[:3])
    net.run_for(5.0)
    cid = client.node_id
    first = net.clients[cid]
    assert first is not None
    resource = net.user_resource(cid)
    net.store_value(cid, resource, b"before")
    net.run_for(3.0)
    net.crash(first)
    net.run_for(40.0)  # failure detection, ring repair, re-attachment
    second = net.clients[cid]
    assert second is not None and second != first and second in net.alive
    assert second == net.responsible(cid)
    fetch = net.fetch_value(cid, resource)
    net.run_for(3.0)
    assert _values(net.result(cid, fetch)) == [b"before"]
    store = net.store_value(cid, resource, b"after")
    net.run_for(3.0)
    done = net.result(cid, store)
    assert done is not None and done.ok, done
    assert _in_any_table(net, cid) == []


def test_client_whose_only_link_dies_falls_back_on_another_bootstrap_peer() -> None:
    net = _overlay(10, seed=25)
    peers = sorted(net.joined)
    probe = net.new_node_id()
    # a client whose responsible peer is its first bootstrap peer: one link only
    responsible = net.responsible(probe)
    other = next(p for p in peers if p != responsible)
    client = net.add_node(probe, client=True)
    net.clients[probe] = None
    client.join(responsible, net.now)
    client.join(other, net.now)
    net._after(client)
    net.run_for(5.0)
    assert net.clients[probe] == responsible and client.links == {responsible}
    net.crash(responsible)
    net.run_for(60.0)
    assert net.clients[probe] == net.responsible(probe) != responsible


def test_simulation_with_clients() -> None:
    report = run_simulation(30, churn=10.0, minutes=1.0, seed=9, stores=10, clients=5)
    assert report.clients == 5
    assert report.client_fetches > 0
    assert report.client_fetches_ok == report.client_fetches
    assert report.success_rate == 1.0
    assert any(line.startswith("clients: 5") for line in report.lines())


# --- replica fetch API ----------------------------------------------------------------------


def test_fetch_at_each_replica_returns_the_value() -> None:
    net = _overlay(10, seed=26)
    writer = sorted(net.joined)[4]
    resource = net.user_resource(writer)
    handle = net.store_value(writer, resource, b"replicated")
    net.run_for(5.0)
    done = net.result(writer, handle)
    assert done is not None and done.ok
    replicas = net.replica_set(resource, 3)
    assert len(replicas) == 3
    reader = next(p for p in sorted(net.joined) if p not in replicas)
    for replica in replicas:
        fetch = net.fetch_value(reader, resource, at=replica)
        net.run_for(3.0)
        result = net.result(reader, fetch)
        assert _values(result) == [b"replicated"]
        assert result is not None and result.responder == replica
    # a node outside the replica set holds nothing: the Fetch is answered there, not routed
    # to the responsible peer
    fetch = net.fetch_value(writer, resource, at=reader)
    net.run_for(3.0)
    result = net.result(writer, fetch)
    assert result is not None and result.responder == reader and _values(result) == []


def test_fetch_at_a_node_id_of_the_wrong_length_is_refused() -> None:
    net = _overlay(2, seed=27)
    node = net.nodes[sorted(net.joined)[0]]
    with pytest.raises(ValueError):
        node.fetch(bytes(16), [StoredDataSpecifier(SIM_KIND)], net.now, at=b"short")


# --- Error_Unknown_Kind end to end (§7.4.1.2) -----------------------------------------------------


def _two_unknown_kind_store(net: SimNetwork, origin: bytes, resource: bytes) -> StoreReq:
    node = net.nodes[origin]
    storage_time = int(net.now * 1000)
    kind_data = []
    for kind in (UNKNOWN_A, SIM_KIND, UNKNOWN_B):
        value = DataValue(True, b"x")
        signature = node._sign_value(resource, kind, storage_time, value)
        kind_data.append(StoreKindData(kind, 0, (StoredData(storage_time, 60, value, signature),)))
    return StoreReq(resource, 0, tuple(kind_data))


@pytest.mark.parametrize("wire_format", [True, False])
def test_store_and_fetch_of_unknown_kinds_get_every_unknown_kind(wire_format: bool) -> None:
    net = _overlay(4, seed=28, wire_format=wire_format)
    origin = sorted(net.joined)[0]
    resource = next(
        net.user_resource(p)
        for p in sorted(net.joined)
        if net.responsible(net.user_resource(p)) != origin
    )
    node = net.nodes[origin]
    store = node._client_request(
        _two_unknown_kind_store(net, origin, resource), (ResourceDestination(resource),), net.now
    )
    specs = tuple(StoredDataSpecifier(k) for k in (UNKNOWN_B, SIM_KIND, UNKNOWN_A))
    fetch = node._client_request(
        FetchReq(resource, specs), (ResourceDestination(resource),), net.now
    )
    net._after(node)
    net.run_for(3.0)  # far less than the 15 s of a timeout (§6.2.1)
    stored, fetched = net.result(origin, store), net.result(origin, fetch)
    assert stored is not None and stored.error == ErrorCode.UNKNOWN_KIND
    assert parse_unknown_kinds(stored.error_info) == [UNKNOWN_A, UNKNOWN_B]
    assert fetched is not None and fetched.error == ErrorCode.UNKNOWN_KIND
    assert parse_unknown_kinds(fetched.error_info) == [UNKNOWN_B, UNKNOWN_A]


def test_a_message_with_an_unknown_kind_is_forwarded_unchanged() -> None:
    net = _overlay(3, seed=29, wire_format=True)
    a, b, c = sorted(net.joined)
    node_a, node_b = net.nodes[a], net.nodes[b]
    request = node_a._build(
        _two_unknown_kind_store(net, a, net.user_resource(a)), (NodeDestination(c),), 99
    )
    data = wire.encode_message(request)
    node_b.pop_actions()
    node_b.receive(a, data, net.now)  # b is on the path from a to c
    sends = [x for x in node_b.pop_actions() if isinstance(x, SendMessage)]
    assert len(sends) == 1 and sends[0].peer_id == c
    forwarded = sends[0].data
    header, start = wire.decode_forwarding_header(forwarded)
    _, original_start = wire.decode_forwarding_header(data)
    assert header.via_list == (NodeDestination(a),)
    assert header.destination_list == (NodeDestination(c),)  # c removes its own entry
    assert header.ttl == request.header.ttl - 1
    assert forwarded[start:] == data[original_start:]  # contents and signature untouched


def test_check_request_lists_every_unknown_kind_of_store_fetch_and_stat() -> None:
    ca = security.create_overlay_ca(errors.OVERLAY)
    alice = errors._signer(ca, errors.NODE_A, "alice")
    verifier = security.Verifier([ca[1]], errors.OVERLAY)
    data = DataValue(True, b"v")
    kind_data = tuple(
        StoreKindData(kind, 0, (errors.stored(alice, errors.OWN_RESOURCE, kind, data),))
        for kind in (UNKNOWN_A, errors.SINGLE_KIND, UNKNOWN_B, UNKNOWN_A)
    )
    specs = tuple(StoredDataSpecifier(k) for k in (UNKNOWN_B, errors.SINGLE_KIND, UNKNOWN_A))
    for body in (
        StoreReq(errors.OWN_RESOURCE, 0, kind_data),
        FetchReq(errors.OWN_RESOURCE, specs),
        StatReq(errors.OWN_RESOURCE, specs),
    ):
        reply = check_request(errors.raw(errors.message(alice, body)), errors.PARAMS, verifier)
        assert isinstance(reply, ErrorReply) and reply.code == ErrorCode.UNKNOWN_KIND
        assert sorted(parse_unknown_kinds(reply.info)) == [UNKNOWN_A, UNKNOWN_B]


@given(
    st.lists(st.integers(0, 2**32 - 1), max_size=6),
    st.lists(st.binary(max_size=40), max_size=6),
)
@settings(max_examples=60, deadline=None)
def test_request_kind_ids_reads_the_kinds_of_any_fetch(kinds: list[int], keys: list[bytes]) -> None:
    specs = tuple(
        StoredDataSpecifier(kind, 7, keys=tuple(keys[: i % 3]) if i % 2 else None)
        for i, kind in enumerate(kinds)
    )
    contents = wire.encode_contents(MessageContents(FetchReq(bytes(16), specs)))
    assert request_kind_ids(contents) == kinds
    known = set(kinds[:1])
    assert unknown_kinds_in(contents, known) == [k for k in dict.fromkeys(kinds) if k not in known]
    with pytest.raises(ValueError):
        request_kind_ids(contents[:-5])  # one byte of the body missing (4: extensions)


# --- determinism --------------------------------------------------------------------------------


def _sim_output(hash_seed: str) -> list[str]:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    args = ["overlay", "sim", "--nodes", "50", "--churn", "10", "--minutes", "3", "--seed", "4"]
    proc = subprocess.run(
        [sys.executable, "-m", "lab.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    return [line for line in proc.stdout.splitlines() if not line.startswith("wall time")]


def test_overlay_sim_output_does_not_depend_on_the_hash_seed() -> None:
    first, second = _sim_output("1"), _sim_output("2")
    assert len(first) >= 5 and first[0].startswith("nodes 50")
    assert first == second


# --- real sockets -------------------------------------------------------------------------------


def test_daemon_config_client_key(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    path.write_text('certificate = "c.pem"\nkey = "k.pem"\nclient = true\n')
    with pytest.raises(DaemonConfigError):
        load_daemon_config(path)  # a client needs bootstrap nodes
    path.write_text(
        'certificate = "c.pem"\nkey = "k.pem"\nclient = true\nbootstrap = ["127.0.0.1:7000"]\n'
    )
    assert load_daemon_config(path).client
    path.write_text('certificate = "c.pem"\nkey = "k.pem"\nclient = "yes"\n')
    with pytest.raises(DaemonConfigError):
        load_daemon_config(path)


def test_dtls_client_stores_and_fetches_and_replica_fetch() -> None:
    the_lab = lab()

    async def scenario() -> None:
        nodes: list[OverlayNode] = []
        try:
            first = make_node(the_lab, 0)
            await first.start()
            assert first.address is not None
            nodes.append(first)
            for i in range(1, 5):
                node = make_node(the_lab, i, bootstrap=[first.address])
                await node.start()
                nodes.append(node)
            await asyncio.sleep(0.5)
            client = make_node(the_lab, 5, bootstrap=[first.address])
            client._node_config = dataclasses.replace(client._node_config, client=True)
            await client.start()
            nodes.append(client)
            assert client.node is not None and client.node.client
            peers = nodes[:5]
            ids = sorted(n.node_id for n in peers)
            cid = client.node_id
            expected = next((i for i in ids if i >= cid), ids[0])
            await wait_for(
                lambda: client.node is not None and client.node.attached_peer == expected,
                10,
                "the client to attach to its responsible peer",
            )
            resource = user_resource(the_lab, 5)
            await client.store(resource, LAB_KIND, [DataValue(True, b"client value")])
            assert await peers[1].fetch_single(resource, LAB_KIND) == b"client value"
            assert await client.fetch_single(resource, LAB_KIND) == b"client value"
            for peer in peers:
                assert peer.node is not None
                assert cid not in peer.node.chord.table.routing_table()
            assert not client.holds(resource)
            # the replica set, learnt with Pings, and a Fetch at each replica (§10.4)
            replicas = await client.replica_set(resource)
            start = next((j for j, i in enumerate(ids) if i >= resource), 0)
            assert replicas == [ids[(start + k) % len(ids)] for k in range(3)]
            for replica in replicas:
                answer = await client.fetch(resource, LAB_KIND, at=replica)
                values = [v.value.value for kr in answer.kind_responses for v in kr.values]
                assert values == [b"client value"]
        finally:
            await close_all(nodes)

    run(scenario())
