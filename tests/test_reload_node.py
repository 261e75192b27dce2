"""Tests for the sans-IO RELOAD node (reload/node.py): wire-format message exchange, forged
and malformed input, access control on Store, TTL, PKI signatures."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from reload import security, wire
from reload.access import chord_resource_id
from reload.config import OverlayConfiguration
from reload.messages import (
    DataValue,
    ErrorCode,
    ErrorResponse,
    FetchAns,
    ForwardingOption,
    Message,
    MessageContents,
    NodeDestination,
    PingReq,
    ProbeAns,
    RouteQueryAns,
    StoreAns,
    StoredDataSpecifier,
)
from reload.node import (
    Action,
    Joined,
    MessageDropped,
    NodeConfig,
    OpenLink,
    PkiSecurity,
    ReloadNode,
    RequestDone,
    SendMessage,
    SimAuthority,
)
from reload.sim import SIM_EPOCH, SIM_KIND, SimNetwork, sim_node_config

OVERLAY = "node-test.p2pcdn"


def _values(done: RequestDone | None) -> list[bytes]:
    assert done is not None and done.ok, done
    assert isinstance(done.answer, FetchAns)
    return [
        v.value.value
        for kr in done.answer.kind_responses
        for v in kr.values
        if isinstance(v.value, DataValue) and v.value.exists
    ]


def _wire_net(nodes: int, seed: int = 7) -> SimNetwork:
    net = SimNetwork(seed, wire_format=True)
    net.create()
    for _ in range(nodes - 1):
        net.join()
        net.run_for(3.0)
    net.run_for(30.0)
    return net


def test_two_nodes_on_the_wire_join_store_and_fetch() -> None:
    net = _wire_net(2)
    a, b = sorted(net.joined)
    assert len(net.joined) == 2 and net.ring_ok()
    assert net.nodes[a].chord.table.successors[0] == b
    resource = net.user_resource(b)
    store = net.store_value(b, resource, b"hello")
    net.run_for(2.0)
    stored = net.result(b, store)
    assert stored is not None and stored.ok and isinstance(stored.answer, StoreAns)
    # the responsible peer reports itself and its successor as the replica set (§10.4)
    assert set(stored.answer.kind_responses[0].replicas) == {a, b}
    fetch = net.fetch_value(a, resource)
    net.run_for(2.0)
    assert _values(net.result(a, fetch)) == [b"hello"]
    assert net.nodes[a].holds(resource) and net.nodes[b].holds(resource)
    assert not net.dropped


def _first_send(actions: list[Action]) -> SendMessage:
    sends = [a for a in actions if isinstance(a, SendMessage)]
    assert sends
    return sends[0]


def test_malformed_and_forged_messages_are_dropped() -> None:
    net = _wire_net(2)
    a, b = sorted(net.joined)
    node_a, node_b = net.nodes[a], net.nodes[b]
    node_b.pop_actions()
    # random bytes: a decode error, logged and reported, nothing sent back
    node_b.receive(a, b"\xd2\x45\x4c\x4f" + bytes(60), net.now)
    actions = node_b.pop_actions()
    dropped = [x for x in actions if isinstance(x, MessageDropped)]
    assert dropped and "malformed" in dropped[0].reason
    assert not [x for x in actions if isinstance(x, SendMessage)]
    # a well-formed Ping whose contents were changed after signing (§6.3.4): bad signature
    genuine = node_a._build(PingReq(b"x"), (NodeDestination(b),), 12345)
    forged = dataclasses.replace(genuine, contents=MessageContents(PingReq(b"y")))
    node_b.receive(a, wire.encode_message(forged), net.now)
    actions = node_b.pop_actions()
    dropped = [x for x in actions if isinstance(x, MessageDropped)]
    assert dropped and "signature" in dropped[0].reason
    assert not [x for x in actions if isinstance(x, SendMessage)]
    # the genuine one is answered
    node_b.receive(a, wire.encode_message(genuine), net.now)
    assert [x for x in node_b.pop_actions() if isinstance(x, SendMessage)]
    # and a message for another overlay is dropped too
    other = dataclasses.replace(
        genuine, header=dataclasses.replace(genuine.header, overlay=genuine.header.overlay ^ 1)
    )
    node_b.receive(a, wire.encode_message(other), net.now)
    assert [x for x in node_b.pop_actions() if isinstance(x, MessageDropped)]


def test_a_node_cannot_overwrite_data_it_is_not_authorized_for() -> None:
    net = _wire_net(3)
    owner, intruder, _ = sorted(net.joined)
    resource = net.user_resource(owner)  # USER-MATCH: only the owner's user name hashes here
    first = net.store_value(owner, resource, b"original")
    net.run_for(2.0)
    assert (done := net.result(owner, first)) is not None and done.ok
    attack = net.store_value(intruder, resource, b"overwritten")
    net.run_for(2.0)
    refused = net.result(intruder, attack)
    assert refused is not None and refused.error == ErrorCode.FORBIDDEN
    # nor delete it (a store with exists=False is a delete, §7.4.1.3)
    node = net.nodes[intruder]
    delete = node.store(resource, SIM_KIND, [DataValue(False)], net.now)
    net._after(node)
    net.run_for(2.0)
    refused = net.result(intruder, delete)
    assert refused is not None and refused.error == ErrorCode.FORBIDDEN
    check = net.fetch_value(intruder, resource)
    net.run_for(2.0)
    assert _values(net.result(intruder, check)) == [b"original"]


def test_ttl_exceeded_is_answered_with_the_error() -> None:
    net = SimNetwork(11)
    net.create()
    for _ in range(59):
        net.join()
        net.run_for(2.0)
    net.run_for(30.0)
    origin = min(net.joined, key=lambda n: len(net.nodes[n].links))
    node = net.nodes[origin]
    rng = random.Random(3)
    for _ in range(200):  # a Resource-ID whose responsible peer is not a direct neighbour
        target = rng.randbytes(16)
        if net.responsible(target) not in node.links | {origin}:
            break
    else:
        pytest.fail("every peer is a direct neighbour")
    node.config = dataclasses.replace(node.config, initial_ttl=0)
    handle = node.ping(target, net.now)
    net._after(node)
    net.run_for(5.0)
    done = net.result(origin, handle)
    assert done is not None and done.error == ErrorCode.TTL_EXCEEDED
    # with the normal TTL the same Ping arrives
    node.config = dataclasses.replace(node.config, initial_ttl=100)
    handle = node.ping(target, net.now)
    net._after(node)
    net.run_for(5.0)
    done = net.result(origin, handle)
    assert done is not None and done.ok and done.hops >= 2


def test_duplicate_request_is_answered_from_the_cache() -> None:
    net = _wire_net(2)
    a, b = sorted(net.joined)
    node_a, node_b = net.nodes[a], net.nodes[b]
    node_b.pop_actions()
    ping = wire.encode_message(node_a._build(PingReq(), (NodeDestination(b),), 777))
    node_b.receive(a, ping, net.now)
    first = _first_send(node_b.pop_actions())
    node_b.receive(a, ping, net.now + 1.0)  # the end-to-end retransmission (§6.2.1)
    again = _first_send(node_b.pop_actions())
    assert again.data == first.data  # the same answer, not a second processing
    assert node_b.stats.get("duplicates_answered") == 1


def test_unanswered_request_times_out_after_five_transmissions() -> None:
    authority = SimAuthority(b"k" * 32)
    node_id = bytes(15) + b"\x01"
    node = ReloadNode(node_id, sim_node_config(), authority.context(node_id), SIM_EPOCH)
    node.join(None, SIM_EPOCH)
    peer = bytes(15) + b"\x02"
    node.link_up(peer, SIM_EPOCH)
    node.pop_actions()
    handle = node.ping(peer, SIM_EPOCH)
    sends = 0
    now = SIM_EPOCH
    done: RequestDone | None = None
    actions = node.pop_actions()
    for _ in range(50):
        sends += sum(isinstance(a, SendMessage) for a in actions)
        when = node.next_timer()
        assert when is not None
        now = when
        node.handle_timer(now)
        actions = node.pop_actions()
        finished = [a for a in actions if isinstance(a, RequestDone)]
        if finished:
            done = finished[0]
            break
    assert done is not None and done.handle == handle
    assert done.error == ErrorCode.REQUEST_TIMEOUT
    assert sends == 5  # §6.2.1: at most five transmissions, 3 s apart
    assert now - SIM_EPOCH == pytest.approx(15.0)


# --- real certificates (PkiSecurity) -----------------------------------------------------------


def _pki_pair() -> tuple[ReloadNode, ReloadNode, bytes, bytes]:
    ca_key, ca_cert = security.create_overlay_ca(OVERLAY, "ecdsa-p256")
    nodes: list[ReloadNode] = []
    ids = [bytes(15) + b"\x10", bytes(15) + b"\x80"]
    users = ["alice@" + OVERLAY, "bob@" + OVERLAY]
    config = sim_node_config(overlay_name=OVERLAY)
    for node_id, user in zip(ids, users, strict=True):
        key = security.generate_private_key("ecdsa-p256")
        cert = security.issue_node_certificate(
            ca_key, ca_cert, key.public_key(), [node_id], user, OVERLAY
        )
        ctx = PkiSecurity(
            security.Signer(key, cert, node_id), security.Verifier([ca_cert], OVERLAY)
        )
        nodes.append(ReloadNode(node_id, config, ctx, SIM_EPOCH, rng=random.Random(len(nodes))))
    return nodes[0], nodes[1], ids[0], ids[1]


def _pump(nodes: dict[bytes, ReloadNode], now: float, rounds: int = 200) -> list[Action]:
    """Deliver everything at once (zero latency) until the nodes are quiet."""
    events: list[Action] = []
    for _ in range(rounds):
        busy = False
        for node_id, node in nodes.items():
            for action in node.pop_actions():
                busy = True
                if isinstance(action, SendMessage):
                    nodes[action.peer_id].receive(node_id, action.data, now)
                elif isinstance(action, OpenLink):
                    node.link_up(action.peer_id, now)
                    nodes[action.peer_id].link_up(node_id, now)
                else:
                    events.append(action)
        if not busy:
            return events
    raise AssertionError("the nodes never went quiet")


def test_pki_signed_join_store_fetch() -> None:
    alice, bob, a, b = _pki_pair()
    nodes = {a: alice, b: bob}
    now = SIM_EPOCH
    alice.join(None, now)
    bob.join(a, now)
    events = _pump(nodes, now)
    for _ in range(20):  # let the join's steps and timers run
        if bob.joined:
            break
        now += 1.0
        for node in nodes.values():
            if (t := node.next_timer()) is not None and t <= now:
                node.handle_timer(now)
        events += _pump(nodes, now)
    assert bob.joined and alice.joined
    assert any(isinstance(e, Joined) for e in events)
    resource = chord_resource_id(("bob@" + OVERLAY).encode())  # USER-MATCH for bob
    handle = bob.store(resource, SIM_KIND, [DataValue(True, b"signed")], now)
    done = [e for e in _pump(nodes, now) if isinstance(e, RequestDone)]
    assert done and done[0].handle == handle and done[0].ok
    handle = alice.fetch(resource, [StoredDataSpecifier(SIM_KIND)], now)
    done = [e for e in _pump(nodes, now) if isinstance(e, RequestDone)]
    assert done and _values(done[0]) == [b"signed"]
    # alice may not write bob's resource
    handle = alice.store(resource, SIM_KIND, [DataValue(True, b"mine")], now)
    done = [e for e in _pump(nodes, now) if isinstance(e, RequestDone)]
    assert done and done[0].error == ErrorCode.FORBIDDEN


def test_message_from_unknown_certificate_is_dropped() -> None:
    _alice, bob, a, b = _pki_pair()
    outsider_authority = SimAuthority(b"o" * 32)
    forger = ReloadNode(
        a, sim_node_config(overlay_name=OVERLAY), outsider_authority.context(a), SIM_EPOCH
    )
    msg: Message = forger._build(PingReq(), (NodeDestination(b),), 99)
    bob.receive(a, wire.encode_message(msg), SIM_EPOCH)
    actions = bob.pop_actions()
    assert [x for x in actions if isinstance(x, MessageDropped)]
    assert not [x for x in actions if isinstance(x, SendMessage)]


def test_route_query_and_probe_answer_from_the_chord_table() -> None:
    net = SimNetwork(12)
    net.create()
    for _ in range(7):
        net.join()
        net.run_for(2.0)
    net.run_for(30.0)
    asker, peer = sorted(net.joined)[:2]
    target = net.user_resource(asker)
    node = net.nodes[asker]
    rq = node.route_query(peer, target, net.now)
    probe = node.probe(peer, net.now)
    net._after(node)
    net.run_for(2.0)
    done = net.result(asker, rq)
    assert done is not None and done.ok and isinstance(done.answer, RouteQueryAns)
    answer = wire.decode_chord_route_query_ans(done.answer.data)
    expected = net.nodes[peer].chord.table.next_hop(target)
    assert answer.next_peer == (peer if expected is None else expected)  # §10.8
    done = net.result(asker, probe)
    assert done is not None and done.ok and isinstance(done.answer, ProbeAns)
    info = {p.type: p.value for p in done.answer.probe_info}
    assert set(info) == {1, 2, 3}
    assert info[2] == len(net.nodes[peer].store_.resource_ids())


def test_stored_data_survives_a_restart(tmp_path: Path) -> None:
    authority = SimAuthority(b"p" * 32)
    node_id = bytes(15) + b"\x42"
    path = tmp_path / "store.sqlite"
    config = sim_node_config()
    node = ReloadNode(node_id, config, authority.context(node_id), SIM_EPOCH, store_path=path)
    node.join(None, SIM_EPOCH)  # alone: responsible for the whole ring
    resource = chord_resource_id(node_id.hex().encode())
    handle = node.store(resource, SIM_KIND, [DataValue(True, b"durable")], SIM_EPOCH)
    done = [a for a in node.pop_actions() if isinstance(a, RequestDone)]
    assert done and done[0].handle == handle and done[0].ok
    node.store_.close()
    again = ReloadNode(node_id, config, authority.context(node_id), SIM_EPOCH + 5, store_path=path)
    again.join(None, SIM_EPOCH + 5)
    handle = again.fetch(resource, [StoredDataSpecifier(SIM_KIND)], SIM_EPOCH + 5)
    done = [a for a in again.pop_actions() if isinstance(a, RequestDone)]
    assert done and _values(done[0]) == [b"durable"]
    again.store_.close()


def test_node_config_from_the_overlay_configuration() -> None:
    kinds = sim_node_config().kinds
    document = OverlayConfiguration(
        "cfg.p2pcdn", sequence=7, initial_ttl=40, overlay_reliability_timer=2000
    )
    document.kinds = list(kinds)
    config = NodeConfig.from_overlay_configuration(document, replication=3)
    assert config.overlay_name == "cfg.p2pcdn" and config.configuration_sequence == 7
    assert config.initial_ttl == 40 and config.overlay_reliability_timer == 2.0
    assert config.kinds == kinds
    assert config.chord_update_interval == 600.0  # §10.7.4.1 default when absent


def test_a_retransmission_on_another_path_gets_the_answer_on_that_path() -> None:
    net = _wire_net(2)
    a, b = sorted(net.joined)
    node_a, node_b = net.nodes[a], net.nodes[b]
    node_b.pop_actions()
    genuine = node_a._build(PingReq(), (NodeDestination(b),), 4242)
    x, y = bytes(16), b"\x01" * 16
    copies = [
        dataclasses.replace(
            genuine, header=dataclasses.replace(genuine.header, via_list=(NodeDestination(v),))
        )
        for v in (x, y)
    ]
    answers = []
    for copy in copies:
        node_b.receive(a, wire.encode_message(copy), net.now)
        sent = _first_send(node_b.pop_actions())
        assert sent.peer_id == a
        answers.append(wire.decode_message(sent.data, 16, node_b._data_models()))
    # §6.2.2: the Destination List is the reversed Via List of the copy being answered
    assert answers[0].header.destination_list == (NodeDestination(a), NodeDestination(x))
    assert answers[1].header.destination_list == (NodeDestination(a), NodeDestination(y))
    assert answers[0].contents == answers[1].contents  # one answer, not two processings
    assert node_b.stats.get("duplicates_answered") == 1


def test_unknown_critical_forwarding_option_is_refused() -> None:
    net = _wire_net(2)
    a, b = sorted(net.joined)
    node_a, node_b = net.nodes[a], net.nodes[b]
    node_b.pop_actions()
    for flags, refused in ((0x00, False), (0x01, False), (0x02, True)):  # §6.3.2.3
        # the signature covers the transaction ID, not the forwarding header (§6.3.4)
        genuine = node_a._build(PingReq(), (NodeDestination(b),), 5151 + flags)
        option = ForwardingOption(0x7F, flags, b"?")
        msg = dataclasses.replace(
            genuine, header=dataclasses.replace(genuine.header, options=(option,))
        )
        node_b.receive(a, wire.encode_message(msg), net.now)
        answer = _first_send(node_b.pop_actions())
        body = wire.decode_message(answer.data, 16, node_b._data_models()).contents.body
        if refused:
            assert isinstance(body, ErrorResponse)
            assert body.error_code == ErrorCode.UNSUPPORTED_FORWARDING_OPTION
        else:
            assert not isinstance(body, ErrorResponse)


def test_ttl_above_initial_ttl_is_refused() -> None:
    net = _wire_net(2)
    a, b = sorted(net.joined)
    node_a, node_b = net.nodes[a], net.nodes[b]
    node_b.pop_actions()
    for ttl, refused in ((100, False), (101, True)):  # §6.3.2: initial-ttl is 100
        signed = node_a._build(PingReq(), (NodeDestination(b),), 6161 + ttl)
        msg = dataclasses.replace(signed, header=dataclasses.replace(signed.header, ttl=ttl))
        node_b.receive(a, wire.encode_message(msg), net.now)
        answer = _first_send(node_b.pop_actions())
        body = wire.decode_message(answer.data, 16, node_b._data_models()).contents.body
        if refused:
            assert isinstance(body, ErrorResponse) and body.error_code == ErrorCode.TTL_EXCEEDED
        else:
            assert not isinstance(body, ErrorResponse)


def test_whole_kind_specifier_follows_the_data_model() -> None:
    """A Kind-ID fetched whole (the client API's int form) must be specified by its data
    model: a bare specifier is SINGLE on the wire, which a DICTIONARY Kind cannot parse."""
    from reload.usages.config import usage_kinds
    from reload.usages.kinds import CONTENT_META, SWARM_PEERS

    authority = SimAuthority(b"w" * 32)
    node_id = bytes(15) + b"\x07"
    config = dataclasses.replace(sim_node_config(), kinds=tuple(usage_kinds("both")))
    node = ReloadNode(node_id, config, authority.context(node_id), SIM_EPOCH)
    assert node.whole_kind(SWARM_PEERS) == StoredDataSpecifier(SWARM_PEERS, keys=())
    assert node.whole_kind(CONTENT_META).keys == ()
    assert node.whole_kind(0xF1234567) == StoredDataSpecifier(0xF1234567)  # undeclared: SINGLE
