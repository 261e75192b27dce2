"""The RFC 7846 JSON codec (ppsp.tracker.json_codec): the §3 grammar, every example of §4, the
extension members, and hostile input."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppsp.tracker import json_codec as jc
from ppsp.tracker.messages import (
    Action,
    AddressType,
    AvailabilityDelta,
    Connect,
    ErrorCode,
    Find,
    HintUnit,
    PeerAddress,
    PeerInfo,
    PeerMode,
    PeerNum,
    PushHint,
    Request,
    Response,
    ResponseType,
    Role,
    StatQuery,
    StatReport,
    StreamStats,
    SwarmAction,
    SwarmAvailability,
    SwarmPopularity,
    SwarmResult,
    TrackerError,
)
from tests import tracker_strategies as ts

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROOT = "PPSPTrackerProtocol"


# --- RFC 7846's examples, copied from the RFC text -------------------------------------------

# §4.1.1.1, first example: a SEEDER (re)starts sharing two swarms
RFC_CONNECT_SEEDER = b"""\
{
  "PPSPTrackerProtocol": {
    "version":              1,
    "request_type":         "CONNECT",
    "transaction_id":       "12345",
    "peer_id":              "656164657220",
    "connect":{
        "peer_addr": {
               "ip_address": {
                    "address_type":     "ipv4",
                    "address":          "192.0.2.2"
               },
               "port":         80,
               "priority":     1,
               "type":         "HOST",
               "connection":   "wired",
               "asn":          "45645"
        },
        "swarm_action": [{
            "swarm_id":       "1111",
            "action":         "JOIN",
            "peer_mode":      "SEEDER"
        },
        {
            "swarm_id":       "2222",
            "action":         "JOIN",
            "peer_mode":      "SEEDER"
        }]
    }
  }
}
"""

# §4.1.1.1, second example: a LEECH joins one swarm
RFC_CONNECT_LEECH = b"""\
{
  "PPSPTrackerProtocol": {
    "version":               1,
    "request_type":          "CONNECT",
    "transaction_id":        "12345.0",
    "peer_id":               "656164657221",
    "connect":{
        "peer_num": {
            "peer_count":        5,
            "ability_nat":       "STUN",
            "concurrent_links":  "5",
            "online_time":       "200",
            "upload_bandwidth":  "600"
         },
         "peer_addr": [{
               "ip_address": {
                    "address_type":     "ipv4",
                    "address":          "192.0.2.2"
               },
               "port":         80,
               "priority":     1,
               "type":         "HOST",
               "connection":   "wired",
               "asn":          "3256546"
         },
         {
               "ip_address":{
                   "address_type":     "ipv6",
                   "address":          "2001:db8::2"
               },
               "port":         80,
               "priority":     2,
               "type":         "HOST",
               "connection":   "wireless",
               "asn":          "34563456",
               "peer_protocol": "PPSP-PP"
         }],
         "swarm_action": {
            "swarm_id":       "1111",
            "action":         "JOIN",
            "peer_mode":      "LEECH"
         }
    }
  }
}
"""

# §4.1.1.1, third example: channel switch, LEAVE one swarm and JOIN another
RFC_CONNECT_SWITCH = b"""\
{
  "PPSPTrackerProtocol": {
    "version":              1,
    "request_type":         "CONNECT",
    "transaction_id":       "12345",
    "peer_id":              "656164657221",
    "connect":{
        "peer_num": {
            "peer_count":        5,
            "ability_nat":       "STUN",
            "concurrent_links":  "5",
            "online_time":       "200",
            "upload_bandwidth":  "600"
        },
        "swarm_action": [{
            "swarm_id":          "1111",
            "action":            "LEAVE",
            "peer_mode":         "LEECH"
        },
        {
            "swarm_id":          "2222",
            "action":            "JOIN",
            "peer_mode":         "LEECH"
        }]
    }
  }
}
"""

# §4.1.1.1, fourth example: the response to the channel switch
RFC_CONNECT_RESPONSE = b"""\
{
  "PPSPTrackerProtocol": {
    "version":               1,
    "response_type":         0,
    "error_code":            0,
    "transaction_id":        "12345",
    "peer_addr": {
        "ip_address": {
            "address_type":     "ipv4",
            "address":          "198.51.100.1"
        },
        "port":          80,
        "priority":      1,
        "asn":           "64496"
   },
   "swarm_result": {
        "swarm_id":        "2222",
        "result":          0,
        "peer_group": {
            "peer_info": [{
                "peer_id":    "956264622298",
                "peer_addr": {
                    "ip_address": {
                        "address_type":     "ipv4",
                        "address":          "198.51.100.22"
                    },
                    "port":          80,
                    "priority":      2,
                    "type":          "REFLEXIVE",
                    "connection":    "wired",
                    "asn":           "64496",
                    "peer_protocol": "PPSP-PP"
                }
            },
            {
                "peer_id":    "3332001256741",
                "peer_addr": {
                    "ip_address": {
                        "address_type":     "ipv4",
                        "address":          "198.51.100.201"
                    },
                    "port":          80,
                    "priority":      2,
                    "type":          "REFLEXIVE",
                    "connection":    "wired",
                    "asn":           "64496",
                    "peer_protocol": "PPSP-PP"
                }
            }]
          }
       }
   }
}
"""

# §4.1.2.1: FIND, swarm_id and peer_num directly in the request
RFC_FIND = b"""\
{
  "PPSPTrackerProtocol": {
      "version":             1,
      "request_type":        "FIND",
      "transaction_id":      "12345",
      "peer_id":             "656164657221",
      "swarm_id":            "1111",
      "peer_num": {
          "peer_count":        5,
          "ability_nat":       "STUN",
          "concurrent_links":  "5",
          "online_time":       "200",
          "upload_bandwidth":  "600"
      }
  }
}
"""

# §4.1.2.1: the FIND response
RFC_FIND_RESPONSE = b"""\
{
  "PPSPTrackerProtocol": {
      "version":             1,
      "response_type":       0,
      "error_code":          0,
      "transaction_id":      "12345",
      "swarm_result": {
          "swarm_id":        "1111",
          "result":          0,
          "peer_group": {
              "peer_info": [{
                  "peer_id":    "656164657221",
                  "peer_addr": {
                      "ip_address": {
                          "address_type":     "ipv4",
                          "address":          "198.51.100.1"
                      },
                      "port":          80,
                      "priority":      1,
                      "type":          "REFLEXIVE",
                      "connection":    "wireless",
                      "asn":           "64496"
                  }
              },
              {
                  "peer_id":    "956264622298",
                  "peer_addr": {
                      "ip_address": {
                          "address_type":     "ipv4",
                          "address":          "198.51.100.22"
                      },
                      "port":          80,
                      "priority":      1,
                      "type":          "REFLEXIVE",
                      "connection":    "wireless",
                      "asn":           "64496"
                  }
              },
              {
                  "peer_id":    "3332001256741",
                  "peer_addr": {
                      "ip_address": {
                          "address_type":     "ipv4",
                          "address":          "198.51.100.201"
                      },
                      "port":          80,
                      "priority":      1,
                      "type":          "REFLEXIVE",
                      "connection":    "wireless",
                      "asn":           "64496"
                  }
              }]
          }
      }
  }
}
"""

# §4.1.3.1: STAT_REPORT, with "Stat" and one object for stat<1..*>
RFC_STAT_REPORT = b"""\
{
  "PPSPTrackerProtocol": {
      "version":             1,
      "request_type":        "STAT_REPORT",
      "transaction_id":      "12345",
      "peer_id":             "656164657221",
      "stat_report": {
          "type":  "STREAM_STATS",
          "Stat": {
                "swarm_id":              "1111",
                "uploaded_bytes":        512,
                "downloaded_bytes":      768,
                "available_bandwidth":   1024000,
                "concurrent_links":      5
          }
      }
  }
}
"""

# §4.1.3.1: the STAT_REPORT response
RFC_STAT_REPORT_RESPONSE = b"""\
{
  "PPSPTrackerProtocol": {
      "version":              1,
      "response_type":        0,
      "error_code":           0,
      "transaction_id":       "12345",
      "swarm_result": {
          "swarm_id":     "1111",
          "result":       0
      }
  }
}
"""


_LEECH_PEER_NUM = PeerNum(5, "STUN", 5, 200, 600)


def _reflexive(ip: str, priority: int, connection: str, protocol: str | None) -> PeerAddress:
    return PeerAddress(ip, 80, priority, AddressType.REFLEXIVE, connection, "64496", protocol)


RFC_REQUESTS: list[tuple[bytes, Request]] = [
    (
        RFC_CONNECT_SEEDER,
        Connect(
            "656164657220",
            "12345",
            [
                SwarmAction("1111", Action.JOIN, PeerMode.SEEDER),
                SwarmAction("2222", Action.JOIN, PeerMode.SEEDER),
            ],
            peer_addresses=[PeerAddress("192.0.2.2", 80, 1, AddressType.HOST, "wired", "45645")],
        ),
    ),
    (
        RFC_CONNECT_LEECH,
        Connect(
            "656164657221",
            "12345.0",
            [SwarmAction("1111", Action.JOIN, PeerMode.LEECH)],
            peer_num=_LEECH_PEER_NUM,
            peer_addresses=[
                PeerAddress("192.0.2.2", 80, 1, AddressType.HOST, "wired", "3256546"),
                PeerAddress(
                    "2001:db8::2", 80, 2, AddressType.HOST, "wireless", "34563456", "PPSP-PP"
                ),
            ],
        ),
    ),
    (
        RFC_CONNECT_SWITCH,
        Connect(
            "656164657221",
            "12345",
            [
                SwarmAction("1111", Action.LEAVE, PeerMode.LEECH),
                SwarmAction("2222", Action.JOIN, PeerMode.LEECH),
            ],
            peer_num=_LEECH_PEER_NUM,
        ),
    ),
    (RFC_FIND, Find("656164657221", "12345", "1111", _LEECH_PEER_NUM)),
    (
        RFC_STAT_REPORT,
        StatReport("656164657221", "12345", [StreamStats("1111", 512, 768, 1024000, 5)]),
    ),
]

RFC_RESPONSES: list[tuple[bytes, Response]] = [
    (
        RFC_CONNECT_RESPONSE,
        Response(
            "12345",
            peer_address=PeerAddress("198.51.100.1", 80, 1, AddressType.HOST, asn="64496"),
            swarm_results=[
                SwarmResult(
                    "2222",
                    ResponseType.SUCCESSFUL,
                    [
                        PeerInfo(
                            "956264622298", [_reflexive("198.51.100.22", 2, "wired", "PPSP-PP")]
                        ),
                        PeerInfo(
                            "3332001256741", [_reflexive("198.51.100.201", 2, "wired", "PPSP-PP")]
                        ),
                    ],
                )
            ],
        ),
    ),
    (
        RFC_FIND_RESPONSE,
        Response(
            "12345",
            swarm_results=[
                SwarmResult(
                    "1111",
                    ResponseType.SUCCESSFUL,
                    [
                        PeerInfo("656164657221", [_reflexive("198.51.100.1", 1, "wireless", None)]),
                        PeerInfo(
                            "956264622298", [_reflexive("198.51.100.22", 1, "wireless", None)]
                        ),
                        PeerInfo(
                            "3332001256741", [_reflexive("198.51.100.201", 1, "wireless", None)]
                        ),
                    ],
                )
            ],
        ),
    ),
    (RFC_STAT_REPORT_RESPONSE, Response("12345", swarm_results=[SwarmResult("1111")])),
]


@pytest.mark.parametrize(("body", "expected"), RFC_REQUESTS)
def test_rfc_request_examples_decode(body: bytes, expected: Request) -> None:
    assert jc.decode_request(body) == expected


@pytest.mark.parametrize(("body", "expected"), RFC_RESPONSES)
def test_rfc_response_examples_decode(body: bytes, expected: Response) -> None:
    assert jc.decode_response(body) == expected


@pytest.mark.parametrize(("body", "expected"), RFC_REQUESTS)
def test_rfc_request_examples_reencode_to_the_grammar(body: bytes, expected: Request) -> None:
    # What we emit for an example is the grammar form and reads back the same.
    out = jc.encode_request(expected)
    assert jc.decode_request(out) == expected
    msg = _msg(out)
    if isinstance(expected, Find):
        assert "swarm_id" not in msg and msg["find"]["swarm_id"] == "1111"
    if isinstance(expected, Connect):
        assert isinstance(msg["connect"]["swarm_action"], list)
        if expected.peer_addresses:
            assert isinstance(msg["connect"]["peer_addr"], list)
    if isinstance(expected, StatReport):
        assert isinstance(msg["stat_report"]["stat"], list) and "Stat" not in msg["stat_report"]


@pytest.mark.parametrize(("body", "expected"), RFC_RESPONSES)
def test_rfc_response_examples_reencode_to_the_grammar(body: bytes, expected: Response) -> None:
    out = jc.encode_response(expected)
    assert jc.decode_response(out) == expected
    msg = _msg(out)
    assert isinstance(msg["swarm_result"], list)
    for result in msg["swarm_result"]:
        for info in result.get("peer_group", {}).get("peer_info", []):
            assert isinstance(info["peer_addr"], dict)  # §3.2.4: one peer_addr per peer_info
    if expected.peer_address is not None:
        assert msg["peer_addr"]["type"] == "HOST"  # the example left the mandatory type out


# --- helpers ---------------------------------------------------------------------------------


def _msg(body: bytes) -> dict[str, Any]:
    doc = json.loads(body)
    assert list(doc) == [ROOT]
    msg = doc[ROOT]
    assert isinstance(msg, dict)
    return msg


def _body(msg: dict[str, Any]) -> bytes:
    return json.dumps({ROOT: msg}).encode()


def _request_error(body: bytes, limits: jc.JsonLimits = jc.DEFAULT_LIMITS) -> TrackerError:
    with pytest.raises(TrackerError) as info:
        jc.decode_request(body, limits=limits)
    return info.value


def _response_error(body: bytes) -> TrackerError:
    with pytest.raises(TrackerError) as info:
        jc.decode_response(body)
    return info.value


def _edit(
    body: bytes, path: tuple[str | int, ...], value: Any = ..., *, drop: bool = False
) -> bytes:
    """``body`` with the member at ``path`` (below the root object) replaced or removed."""
    doc = json.loads(body)
    node: Any = doc[ROOT]
    for step in path[:-1]:
        node = node[step]
    if drop:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return json.dumps(doc).encode()


A_CONNECT = Connect(
    "peer-1",
    "tx-1",
    [SwarmAction("aa" * 32, Action.JOIN, PeerMode.LEECH)],
    PeerNum(5, "STUN", 3, 100, 800),
    [PeerAddress("192.0.2.7", 7000, 1, AddressType.HOST, "wired", "64496", "PPSP-PP")],
    Role.CSC,
    "area-1",
    [SwarmAvailability("aa" * 32, PeerMode.LEECH, Role.CSC, [(0, 99)])],
)
A_FIND = Find("peer-1", "tx-2", "aa" * 32, PeerNum(10), "area-1", [(100, 199)])
A_STAT_REPORT = StatReport(
    "peer-1",
    "tx-3",
    [StreamStats("aa" * 32, 1, 2, 3, 4)],
    [SwarmAvailability("bb" * 32, ranges=[(0, 9)])],
    [AvailabilityDelta("aa" * 32, [(10, 19)], [(0, 4)])],
)
A_STAT_QUERY = StatQuery("peer-1", "tx-4", ["aa" * 32, "bb" * 32])
A_RESPONSE = Response(
    "tx-2",
    peer_address=PeerAddress("203.0.113.9", 40000, 0, AddressType.REFLEXIVE),
    swarm_results=[
        SwarmResult(
            "aa" * 32,
            ResponseType.SUCCESSFUL,
            [
                PeerInfo(
                    "cacher-1",
                    [
                        PeerAddress("198.51.100.5", 7000, 2),
                        PeerAddress("2001:db8::5", 7000, 1),
                    ],
                    Role.CACHER,
                    "area-1",
                    [(0, 1023)],
                ),
                PeerInfo("csc-9", [PeerAddress("198.51.100.9", 7001)]),
            ],
        )
    ],
    push_hints=[PushHint("cc" * 32, 0, 63, HintUnit.CHUNKS, 2, 30.0)],
    global_info=[SwarmPopularity("cc" * 32, 1200, 35.5, [(512, 600)])],
)


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("req", [A_CONNECT, A_FIND, A_STAT_REPORT, A_STAT_QUERY])
def test_request_round_trip(req: Request) -> None:
    assert jc.decode_request(jc.encode_request(req)) == req


def test_response_round_trip() -> None:
    assert jc.decode_response(jc.encode_response(A_RESPONSE)) == A_RESPONSE


@PROPERTY
@given(ts.requests)
def test_any_request_round_trips(req: Request) -> None:
    assert jc.decode_request(jc.encode_request(req)) == req


@PROPERTY
@given(ts.responses())
def test_any_response_round_trips(resp: Response) -> None:
    assert jc.decode_response(jc.encode_response(resp)) == resp


def test_find_encodes_to_the_grammar() -> None:
    assert jc.encode_request(Find("p", "t", "s", PeerNum(5))) == (
        b'{"PPSPTrackerProtocol":{"version":1,"request_type":"FIND","transaction_id":"t",'
        b'"peer_id":"p","find":{"swarm_id":"s","peer_num":{"peer_count":5}}}}'
    )


def test_error_response_has_an_empty_body() -> None:
    # §4.3: an error is response_type 1, the code, and no peer_addr or swarm_result.
    body = jc.encode_response(Response.error("t-9", ErrorCode.FORBIDDEN_ACTION))
    assert json.loads(body) == {
        ROOT: {"version": 1, "response_type": 1, "error_code": 3, "transaction_id": "t-9"}
    }
    decoded = jc.decode_response(body)
    assert (decoded.response_type, decoded.error_code) == (ResponseType.FAILED, 3)


def test_body_is_ascii_json_even_for_unicode_ids() -> None:
    req = Find("pëer-☃", "t", "swarm-😀")
    body = jc.encode_request(req)
    assert body.isascii()
    assert jc.decode_request(body) == req


def test_peer_with_several_addresses_is_several_peer_info_elements() -> None:
    # §3.2.4: a peer_info has one peer_addr; our extension members ride on the first.
    infos = _msg(jc.encode_response(A_RESPONSE))["swarm_result"][0]["peer_group"]["peer_info"]
    assert [i["peer_id"] for i in infos] == ["cacher-1", "cacher-1", "csc-9"]
    assert infos[0][jc.X_ROLE] == "CACHER" and infos[0][jc.X_RANGES] == [[0, 1023]]
    assert not any(k.startswith(jc.EXTENSION_PREFIX) for k in infos[1])
    assert [i["peer_addr"]["ip_address"]["address_type"] for i in infos] == ["ipv4", "ipv6", "ipv4"]


def test_peer_info_entries_of_one_peer_are_merged_in_order() -> None:
    body = jc.encode_response(A_RESPONSE)
    doc = json.loads(body)
    infos = doc[ROOT]["swarm_result"][0]["peer_group"]["peer_info"]
    infos[0], infos[2] = infos[2], infos[0]  # csc-9, cacher-1 (2nd address), cacher-1 (1st)
    peers = jc.decode_response(json.dumps(doc).encode()).swarm_results[0].peers
    assert peers is not None
    assert [p.peer_id for p in peers] == ["csc-9", "cacher-1"]
    assert [a.ip for a in peers[1].addresses] == ["2001:db8::5", "198.51.100.5"]
    assert peers[1].role is Role.CACHER and peers[1].ranges == [(0, 1023)]


def test_empty_peer_list_is_an_empty_peer_group() -> None:
    # A FIND response MUST carry a peer_group (§4.1.2) even when there is nobody to list.
    resp = Response("t", swarm_results=[SwarmResult("s", ResponseType.SUCCESSFUL, [])])
    body = jc.encode_response(resp)
    assert _msg(body)["swarm_result"][0]["peer_group"] == {"peer_info": []}
    assert jc.decode_response(body) == resp


def test_keep_alive_stat_report_has_no_statistics_group() -> None:
    # §4.1.3: a STAT_REPORT without a statistics group is a keep-alive.
    body = jc.encode_request(StatReport("p", "t"))
    assert "stat_report" not in _msg(body)
    assert jc.decode_request(body) == StatReport("p", "t")


def test_stat_query_uses_its_own_request_type() -> None:
    msg = _msg(jc.encode_request(A_STAT_QUERY))
    assert msg["request_type"] == "STAT_QUERY"
    assert msg[jc.X_STAT_QUERY] == {"swarm_id": ["aa" * 32, "bb" * 32]}
    bare = _body({k: v for k, v in msg.items() if k != jc.X_STAT_QUERY})
    assert jc.decode_request(bare) == StatQuery("peer-1", "tx-4", [])  # all swarms


# --- what a plain RFC 7846 tracker sees ------------------------------------------------------

# Every member RFC 7846 §3 defines.
RFC_MEMBERS = {
    ROOT, "version", "request_type", "transaction_id", "peer_id", "connect", "find",
    "stat_report", "peer_num", "peer_addr", "swarm_action", "swarm_id", "action", "peer_mode",
    "peer_count", "ability_nat", "concurrent_links", "online_time", "upload_bandwidth",
    "ip_address", "address_type", "address", "port", "priority", "type", "connection", "asn",
    "peer_protocol", "stat", "uploaded_bytes", "downloaded_bytes", "available_bandwidth",
    "response_type", "error_code", "swarm_result", "result", "peer_group", "peer_info",
}  # fmt: skip


def _foreign_members(node: Any) -> list[str]:
    """Members that are neither RFC 7846's nor prefixed (a prefixed member's inside is ours)."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key.startswith(jc.EXTENSION_PREFIX):
                continue
            if key not in RFC_MEMBERS:
                found.append(key)
            found += _foreign_members(value)
    elif isinstance(node, list):
        for item in node:
            found += _foreign_members(item)
    return found


def _strip_extensions(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: _strip_extensions(v)
            for k, v in node.items()
            if not k.startswith(jc.EXTENSION_PREFIX)
        }
    if isinstance(node, list):
        return [_strip_extensions(v) for v in node]
    return node


@PROPERTY
@given(st.one_of(ts.connects, ts.finds, ts.stat_reports))
def test_extensions_are_only_prefixed_members(req: Request) -> None:
    body = jc.encode_request(req)
    assert _foreign_members(json.loads(body)) == []
    # Without our members the body is still the same RFC 7846 request, extensions unset.
    plain = jc.decode_request(json.dumps(_strip_extensions(json.loads(body))).encode())
    if isinstance(req, Connect):
        assert plain == Connect(
            req.peer_id, req.transaction_id, req.swarm_actions, req.peer_num, req.peer_addresses
        )
    elif isinstance(req, Find):
        assert plain == Find(req.peer_id, req.transaction_id, req.swarm_id, req.peer_num)
    else:
        assert isinstance(req, StatReport)
        assert plain == StatReport(req.peer_id, req.transaction_id, req.stats)


@PROPERTY
@given(ts.responses())
def test_response_extensions_are_only_prefixed_members(resp: Response) -> None:
    body = jc.encode_response(resp)
    assert _foreign_members(json.loads(body)) == []
    plain = jc.decode_response(json.dumps(_strip_extensions(json.loads(body))).encode())
    assert plain.push_hints == [] and plain.global_info == []
    assert [r.swarm_id for r in plain.swarm_results] == [r.swarm_id for r in resp.swarm_results]
    for result in plain.swarm_results:
        for peer in result.peers or []:
            assert (peer.role, peer.area, peer.ranges) == (None, None, None)


def _add_unknown_members(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _add_unknown_members(v) for k, v in node.items()}
        out["future_member"] = {"nested": [1, "two", None, {"x": 3.5}]}
        out["Swarm_Action"] = "not ours"
        return out
    if isinstance(node, list):
        return [_add_unknown_members(v) for v in node]
    return node


@PROPERTY
@given(ts.requests)
def test_unknown_members_are_ignored_in_requests(req: Request) -> None:
    # §4.4: unknown members anywhere, including inside our own extension objects.
    body = json.dumps(_add_unknown_members(json.loads(jc.encode_request(req)))).encode()
    assert jc.decode_request(body) == req


@PROPERTY
@given(ts.responses())
def test_unknown_members_are_ignored_in_responses(resp: Response) -> None:
    body = json.dumps(_add_unknown_members(json.loads(jc.encode_response(resp)))).encode()
    assert jc.decode_response(body) == resp


# --- accepted variants -----------------------------------------------------------------------


def test_find_in_both_forms() -> None:
    grammar = jc.encode_request(A_FIND)
    msg = _msg(grammar)
    find = msg.pop("find")
    example_form = _body({**msg, **find})  # §4.1.2.1: swarm_id, peer_num in the request
    assert jc.decode_request(example_form) == jc.decode_request(grammar) == A_FIND


def test_stat_and_Stat_single_or_array() -> None:
    msg = _msg(jc.encode_request(StatReport("p", "t", [StreamStats("s", 1, 2, 3, 4)])))
    stat = msg["stat_report"]["stat"][0]
    for group in (
        {"type": "STREAM_STATS", "stat": [stat]},
        {"type": "STREAM_STATS", "stat": stat},
        {"type": "STREAM_STATS", "Stat": [stat]},
        {"type": "STREAM_STATS", "Stat": stat},
    ):
        got = jc.decode_request(_body({**msg, "stat_report": group}))
        assert isinstance(got, StatReport) and got.stats == [StreamStats("s", 1, 2, 3, 4)]


def test_unknown_stat_type_is_a_keep_alive() -> None:
    # §3.2.5 lets other property types be defined; one we do not know is skipped.
    msg = _msg(jc.encode_request(StatReport("p", "t")))
    group = {"type": "PEER_REPUTATION", "stat": [{"score": "high"}]}
    assert jc.decode_request(_body({**msg, "stat_report": group})) == StatReport("p", "t")


def test_numbers_as_strings() -> None:
    # §4.1.1.1 writes concurrent_links, online_time, upload_bandwidth as strings.
    body = _edit(jc.encode_request(A_CONNECT), ("connect", "peer_num", "peer_count"), "5")
    body = _edit(body, ("connect", "peer_addr", 0, "port"), "7000")
    body = _edit(body, ("version",), "1")
    assert jc.decode_request(body) == A_CONNECT
    resp = _edit(
        jc.encode_response(Response.error("t", ErrorCode.BAD_REQUEST)), ("error_code",), "01"
    )
    # §3.3.2 writes response types as 0x00 and 0x01.
    resp = _edit(resp, ("response_type",), "0x01")
    assert jc.decode_response(resp) == Response.error("t", ErrorCode.BAD_REQUEST)


def test_asn_as_a_number() -> None:
    body = _edit(jc.encode_request(A_CONNECT), ("connect", "peer_addr", 0, "asn"), 64496)
    assert jc.decode_request(body) == A_CONNECT


def test_peer_addr_variants() -> None:
    resp = Response(
        "t", swarm_results=[SwarmResult("s", peers=[PeerInfo("p", [PeerAddress("192.0.2.1", 1)])])]
    )
    body = jc.encode_response(resp)
    addr = _msg(body)["swarm_result"][0]["peer_group"]["peer_info"][0]["peer_addr"]
    as_array = _edit(body, ("swarm_result", 0, "peer_group", "peer_info", 0, "peer_addr"), [addr])
    assert jc.decode_response(as_array) == resp
    one_info = _edit(
        body, ("swarm_result", 0, "peer_group", "peer_info"), {"peer_id": "p", "peer_addr": addr}
    )
    assert jc.decode_response(one_info) == resp
    # The response's own peer_addr (the requester's address) as an array of one.
    with_own = _edit(body, ("peer_addr",), [addr])
    assert jc.decode_response(with_own).peer_address == PeerAddress("192.0.2.1", 1)


def test_enumerations_ignore_case_and_addresses_are_canonical() -> None:
    body = jc.encode_request(A_CONNECT)
    body = _edit(body, ("connect", "swarm_action", 0, "action"), "join")
    body = _edit(body, ("connect", "swarm_action", 0, "peer_mode"), "Leech")
    body = _edit(
        body,
        ("connect", "peer_addr", 0, "ip_address"),
        {"address_type": "IPv6", "address": "2001:DB8:0:0::7"},
    )
    got = jc.decode_request(body)
    assert isinstance(got, Connect)
    assert got.swarm_actions == A_CONNECT.swarm_actions
    assert got.peer_addresses[0].ip == "2001:db8::7"  # RFC 5952


def test_byte_order_mark_is_ignored() -> None:
    assert jc.decode_request(b"\xef\xbb\xbf" + jc.encode_request(A_FIND)) == A_FIND


def test_content_type() -> None:
    assert jc.CONTENT_TYPE == "application/ppsp-tracker+json"
    assert jc.content_type_matches("application/ppsp-tracker+json")
    assert jc.content_type_matches("Application/PPSP-Tracker+JSON; charset=utf-8")
    assert not jc.content_type_matches("application/json")
    assert not jc.content_type_matches(None)


# --- bad input and its error code ------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe{}",  # not UTF-8
        b'{"PPSPTrackerProtocol": {"version": 1,',  # truncated
        b"[]",
        b'"PPSPTrackerProtocol"',
        b"{}",
        b'{"PPSPTrackerProtocol": []}',
        b'{"PPSPTrackerProtocol": null}',
        b'{"PPSPTrackerProtocol": {"version": NaN}}',
        b'{"ppsptrackerprotocol": {"version": 1}}',
        b'{"PPSPTrackerProtocol": {"version": 1}} trailing',
        '{"PPSPTrackerProtocol": {"version": 1}}'.encode("utf-16"),
    ],
)
def test_not_a_ppsp_tp_message_is_bad_request(body: bytes) -> None:
    assert _request_error(body).code is ErrorCode.BAD_REQUEST
    assert _response_error(body).code is ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("version", [0, 2, 255, "2", -1, 2**70])
def test_other_versions_are_unsupported(version: object) -> None:
    # §4.3: 02, checked before anything else (another version may look different).
    body = _body({"version": version, "transaction_id": "t-5", "whatever": []})
    err = _request_error(body)
    assert (err.code, err.transaction_id) == (ErrorCode.UNSUPPORTED_VERSION, "t-5")
    assert _response_error(body).code is ErrorCode.UNSUPPORTED_VERSION


@pytest.mark.parametrize("version", [None, "one", 1.0, True, [1], "1.0"])
def test_unreadable_version_is_bad_request(version: object) -> None:
    body = _edit(jc.encode_request(A_FIND), ("version",), version)
    assert _request_error(body).code is ErrorCode.BAD_REQUEST


def test_error_carries_the_transaction_id_when_readable() -> None:
    body = _edit(jc.encode_request(A_FIND), ("find", "peer_num", "peer_count"), -1)
    assert _request_error(body).transaction_id == "tx-2"
    body = _edit(jc.encode_request(A_FIND), ("transaction_id",), 17)
    assert _request_error(body).transaction_id is None
    assert _request_error(b"{").transaction_id is None


MANDATORY_CONNECT = [
    ("version",),
    ("request_type",),
    ("transaction_id",),
    ("peer_id",),
    ("connect",),
    ("connect", "swarm_action"),
    ("connect", "swarm_action", 0, "swarm_id"),
    ("connect", "swarm_action", 0, "action"),
    ("connect", "swarm_action", 0, "peer_mode"),
    ("connect", "peer_num", "peer_count"),
    ("connect", "peer_addr", 0, "ip_address"),
    ("connect", "peer_addr", 0, "ip_address", "address_type"),
    ("connect", "peer_addr", 0, "ip_address", "address"),
    ("connect", "peer_addr", 0, "port"),
    ("connect", "peer_addr", 0, "priority"),
    (jc.X_AVAILABILITY, 0, "swarm_id"),
]


@pytest.mark.parametrize("path", MANDATORY_CONNECT)
def test_connect_without_a_mandatory_member(path: tuple[str | int, ...]) -> None:
    assert _request_error(_edit(jc.encode_request(A_CONNECT), path, drop=True)).code == 1


@pytest.mark.parametrize(
    "path",
    [("find", "swarm_id"), ("find", "peer_num", "peer_count")],
)
def test_find_without_a_mandatory_member(path: tuple[str | int, ...]) -> None:
    assert _request_error(_edit(jc.encode_request(A_FIND), path, drop=True)).code == 1


@pytest.mark.parametrize(
    "member",
    ["swarm_id", "uploaded_bytes", "downloaded_bytes", "available_bandwidth", "concurrent_links"],
)
def test_stream_stats_without_a_mandatory_member(member: str) -> None:
    body = _edit(jc.encode_request(A_STAT_REPORT), ("stat_report", "stat", 0, member), drop=True)
    assert _request_error(body).code == 1


@pytest.mark.parametrize("path", [("stat_report", "type"), ("stat_report", "stat")])
def test_statistics_group_without_a_mandatory_member(path: tuple[str | int, ...]) -> None:
    assert _request_error(_edit(jc.encode_request(A_STAT_REPORT), path, drop=True)).code == 1


@pytest.mark.parametrize(
    "path",
    [
        ("version",),
        ("response_type",),
        ("error_code",),
        ("transaction_id",),
        ("swarm_result", 0, "swarm_id"),
        ("swarm_result", 0, "result"),
        ("swarm_result", 0, "peer_group", "peer_info"),
        ("swarm_result", 0, "peer_group", "peer_info", 0, "peer_id"),
        ("swarm_result", 0, "peer_group", "peer_info", 0, "peer_addr"),
        ("peer_addr", "ip_address"),
        ("peer_addr", "port"),
        (jc.X_PUSH_HINTS, 0, "head_start"),
        (jc.X_PUSH_HINTS, 0, "swarm_id"),
        (jc.X_GLOBAL_INFO, 0, "swarm_id"),
    ],
)
def test_response_without_a_mandatory_member(path: tuple[str | int, ...]) -> None:
    assert _response_error(_edit(jc.encode_response(A_RESPONSE), path, drop=True)).code == 1


BAD_VALUES: list[tuple[tuple[str | int, ...], object]] = [
    (("request_type",), "connect"),
    (("request_type",), "DISCONNECT"),
    (("request_type",), 1),
    (("transaction_id",), ""),
    (("transaction_id",), 12345),
    (("peer_id",), ""),
    (("peer_id",), None),
    (("peer_id",), ["p"]),
    (("peer_id",), "\ud800"),  # a lone surrogate is not text
    (("connect",), []),
    (("connect",), "x"),
    (("connect", "swarm_action"), []),
    (("connect", "swarm_action"), "1111"),
    (("connect", "swarm_action", 0), "1111"),
    (("connect", "swarm_action", 0, "action"), "JUMP"),
    (("connect", "swarm_action", 0, "peer_mode"), 1),
    (("connect", "swarm_action", 0, "swarm_id"), 1111),
    (("connect", "peer_num"), 5),
    (("connect", "peer_num", "peer_count"), -1),
    (("connect", "peer_num", "peer_count"), 2**32),
    (("connect", "peer_num", "peer_count"), True),
    (("connect", "peer_num", "peer_count"), 5.0),
    (("connect", "peer_num", "peer_count"), "5.0"),
    (("connect", "peer_num", "peer_count"), "1e3"),
    (("connect", "peer_num", "peer_count"), "٥"),  # a digit, but not an ASCII one
    (("connect", "peer_num", "online_time"), "-5"),
    (("connect", "peer_num", "ability_nat"), 1),
    (("connect", "peer_addr", 0, "port"), 65536),
    (("connect", "peer_addr", 0, "port"), -1),
    (("connect", "peer_addr", 0, "port"), "eighty"),
    (("connect", "peer_addr", 0, "priority"), -1),
    (("connect", "peer_addr", 0, "type"), "NAT"),
    (("connect", "peer_addr", 0, "connection"), 5),
    (("connect", "peer_addr", 0, "asn"), -5),
    (("connect", "peer_addr", 0, "ip_address", "address"), "192.0.2.256"),
    (("connect", "peer_addr", 0, "ip_address", "address"), "2001:db8::1"),  # but ipv4
    (("connect", "peer_addr", 0, "ip_address", "address"), "192.000.002.001"),
    (("connect", "peer_addr", 0, "ip_address", "address"), 3221225985),
    (("connect", "peer_addr", 0, "ip_address", "address"), "1" * 100),
    (("connect", "peer_addr", 0, "ip_address", "address_type"), "ipv5"),
    (("connect", "peer_addr", 0, "ip_address", "address_type"), "ipv6"),  # but a v4 address
    (("connect", "peer_addr", 0, "ip_address"), "192.0.2.7"),
    (("connect", "peer_addr"), "192.0.2.7"),
    (("connect", "peer_addr"), [None]),
    (("find",), {"swarm_id": "s"}),  # Table 5: find in a CONNECT
    (("stat_report",), {"type": "STREAM_STATS", "stat": []}),  # Table 5
    ((jc.X_STAT_QUERY,), {}),  # Table 5, for our request type
    ((jc.X_ROLE,), "ROUTER"),
    ((jc.X_AREA,), 7),
    ((jc.X_AREA,), "a" * 257),
    ((jc.X_AVAILABILITY,), {"swarm_id": "s"}),  # ours: arrays only
    ((jc.X_AVAILABILITY, 0, "ranges"), [[5, 4]]),  # end before start
    ((jc.X_AVAILABILITY, 0, "ranges"), [[-1, 4]]),
    ((jc.X_AVAILABILITY, 0, "ranges"), [[0, 2**64]]),
    ((jc.X_AVAILABILITY, 0, "ranges"), [[0, 4, 5]]),
    ((jc.X_AVAILABILITY, 0, "ranges"), [[0, "4"]]),
    ((jc.X_AVAILABILITY, 0, "ranges"), [[0.0, 4]]),
    ((jc.X_AVAILABILITY, 0, "ranges"), [0, 4]),
    ((jc.X_AVAILABILITY, 0, "ranges"), "0-4"),
    ((jc.X_AVAILABILITY, 0, "role"), "cacher?"),
]


@pytest.mark.parametrize(("path", "value"), BAD_VALUES)
def test_connect_with_a_bad_value(path: tuple[str | int, ...], value: object) -> None:
    err = _request_error(_edit(jc.encode_request(A_CONNECT), path, value))
    assert err.code is ErrorCode.BAD_REQUEST


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("find",), "s"),
        (("find", "swarm_id"), ""),
        (("find", "swarm_id"), 1111),
        (("connect",), {"swarm_action": []}),  # Table 5
        ((jc.X_RANGES,), [[3, 2]]),
        ((jc.X_RANGES,), {"start": 0}),
    ],
)
def test_find_with_a_bad_value(path: tuple[str | int, ...], value: object) -> None:
    assert _request_error(_edit(jc.encode_request(A_FIND), path, value)).code == 1


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("stat_report",), [1]),
        (("stat_report", "type"), 1),
        (("stat_report", "stat"), []),
        (("stat_report", "stat"), "x"),
        (("stat_report", "stat", 0, "uploaded_bytes"), -1),
        (("stat_report", "stat", 0, "uploaded_bytes"), 2**63),
        ((jc.X_DELTAS, 0, "cached"), [[9, 1]]),
        ((jc.X_DELTAS, 0, "evicted"), "all"),
        ((jc.X_DELTAS,), [7]),
    ],
)
def test_stat_report_with_a_bad_value(path: tuple[str | int, ...], value: object) -> None:
    assert _request_error(_edit(jc.encode_request(A_STAT_REPORT), path, value)).code == 1


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("response_type",), 2),
        (("response_type",), "SUCCESSFUL"),
        (("error_code",), 7),
        (("error_code",), 3),  # with response_type 0: §3.3.4 says 00
        (("transaction_id",), None),
        (("peer_addr",), []),
        (("swarm_result",), "x"),
        (("swarm_result", 0, "result"), 2),
        (("swarm_result", 0, "peer_group"), []),
        (("swarm_result", 0, "peer_group", "peer_info", 0, "peer_addr"), []),
        (("swarm_result", 0, "peer_group", "peer_info", 0, jc.X_RANGES), [[1]]),
        ((jc.X_PUSH_HINTS, 0, "head_end"), -1),
        ((jc.X_PUSH_HINTS, 0, "head_start"), 64),  # after head_end
        ((jc.X_PUSH_HINTS, 0, "unit"), "BYTES"),
        ((jc.X_PUSH_HINTS, 0, "expires_in"), -1),
        ((jc.X_PUSH_HINTS, 0, "expires_in"), "30"),
        ((jc.X_PUSH_HINTS, 0, "expires_in"), 1e300),
        ((jc.X_GLOBAL_INFO, 0, "join_rate"), True),
        ((jc.X_GLOBAL_INFO, 0, "viewers"), -3),
        ((jc.X_GLOBAL_INFO, 0, "rarest"), [[2, 1]]),
    ],
)
def test_response_with_a_bad_value(path: tuple[str | int, ...], value: object) -> None:
    assert _response_error(_edit(jc.encode_response(A_RESPONSE), path, value)).code == 1


def test_a_response_is_not_a_request_and_back() -> None:
    assert _request_error(jc.encode_response(A_RESPONSE)).code == 1
    assert _response_error(jc.encode_request(A_FIND)).code == 1


def test_empty_transaction_id_only_in_responses() -> None:
    # A tracker that could not read the transaction ID still answers (§4.3).
    assert jc.decode_response(jc.encode_response(Response.error("", ErrorCode.BAD_REQUEST)))
    assert _request_error(_edit(jc.encode_request(A_FIND), ("transaction_id",), "")).code == 1


def test_out_of_range_json_numbers() -> None:
    huge = b'{"PPSPTrackerProtocol": {"version": 1' + b"0" * 5000 + b"}}"
    assert _request_error(huge).code == 1
    inf = jc.encode_response(A_RESPONSE).replace(b'"expires_in":30.0', b'"expires_in":1e999')
    assert b"1e999" in inf
    assert _response_error(inf).code == 1


def test_encoder_refuses_what_the_grammar_cannot_say() -> None:
    with pytest.raises(TrackerError) as info:
        jc.encode_request(Connect("p", "t", []))  # §3.3.3 swarm_action<1..*>
    assert info.value.code is ErrorCode.BAD_REQUEST
    with pytest.raises(TrackerError) as info:
        jc.encode_response(Response("t", swarm_results=[SwarmResult("s", peers=[PeerInfo("p")])]))
    assert info.value.code is ErrorCode.INTERNAL_SERVER_ERROR
    with pytest.raises(TypeError):
        jc.encode_request(A_RESPONSE)  # type: ignore[arg-type]


# --- bounds ----------------------------------------------------------------------------------


def test_body_size_limit() -> None:
    body = jc.encode_request(A_FIND)
    assert jc.decode_request(body, limits=jc.JsonLimits(max_body=len(body))) == A_FIND
    assert _request_error(body, jc.JsonLimits(max_body=len(body) - 1)).code == 1


def _nested(depth: int) -> bytes:
    """A FIND whose unknown member makes the document ``depth`` levels deep."""
    msg = _msg(jc.encode_request(A_FIND))
    msg["future"] = json.loads("[" * (depth - 2) + "]" * (depth - 2))
    return _body(msg)


def test_nesting_depth_limit() -> None:
    assert jc.decode_request(_nested(32)) == A_FIND
    assert _request_error(_nested(33)).code == 1
    assert jc.decode_request(_nested(10), limits=jc.JsonLimits(max_depth=10)) == A_FIND
    assert _request_error(_nested(11), jc.JsonLimits(max_depth=10)).code == 1


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 200_000,
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000,
        b'{"PPSPTrackerProtocol": ' + b"[{" * 50_000,
        b'"' + b"[" * 100_000,
    ],
)
def test_deep_nesting_is_refused_without_recursion(body: bytes) -> None:
    assert _request_error(body).code == 1


def test_brackets_in_strings_do_not_count_as_nesting() -> None:
    for peer_id in ["[" * 200, '\\"[{' * 60, "\\\\" + "[" * 100, '"]]"' * 50]:
        req = Find(peer_id, "t", "s")
        assert jc.decode_request(jc.encode_request(req)) == req


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


_json_text = st.text(st.sampled_from('[]{}"\\ab\u00e9\n'), max_size=8)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | _json_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_json_text, inner, max_size=4),
    max_leaves=40,
)  # fmt: skip


@PROPERTY
@given(json_values, st.integers(1, 12), st.booleans())
def test_depth_check_is_exact(value: Any, max_depth: int, ascii_only: bool) -> None:
    # Strings full of brackets, quotes and backslashes must not fool the pre-parse check.
    body = json.dumps(value, ensure_ascii=ascii_only).encode()
    depth = _depth(value)
    if depth <= max_depth:
        jc._check_depth(body, max_depth)
    else:
        with pytest.raises(TrackerError):
            jc._check_depth(body, max_depth)


def _batch_connect(swarms: int) -> Connect:
    ids = [f"{n:064x}" for n in range(swarms)]
    return Connect(
        "cacher-1",
        "batch-1",
        [SwarmAction(s, Action.JOIN, PeerMode.SEEDER) for s in ids],
        role=Role.CACHER,
        area="area-1",
        availability=[SwarmAvailability(s, ranges=[(0, 1023), (4096, 8191)]) for s in ids],
    )


def test_batch_report_of_10000_swarms_passes_default_limits() -> None:
    batch = _batch_connect(10_000)
    body = jc.encode_request(batch)
    assert len(body) < jc.DEFAULT_LIMITS.max_body
    assert jc.decode_request(body) == batch


def test_one_swarm_action_too_many() -> None:
    body = _edit(
        jc.encode_request(A_CONNECT),
        ("connect", "swarm_action"),
        [{"swarm_id": str(n), "action": "JOIN", "peer_mode": "SEEDER"} for n in range(10_001)],
    )
    assert _request_error(body).code == 1


@pytest.mark.parametrize(
    ("field", "limits", "path", "value"),
    [
        ("max_availability", jc.JsonLimits(max_availability=2), (jc.X_AVAILABILITY,), 3),
        ("max_ranges", jc.JsonLimits(max_ranges=2), (jc.X_AVAILABILITY, 0, "ranges"), 3),
        ("max_addresses", jc.JsonLimits(max_addresses=2), ("connect", "peer_addr"), 3),
        ("max_swarm_actions", jc.JsonLimits(max_swarm_actions=2), ("connect", "swarm_action"), 3),
    ],
)
def test_array_limits(
    field: str, limits: jc.JsonLimits, path: tuple[str | int, ...], value: int
) -> None:
    body = jc.encode_request(A_CONNECT)
    element = json.loads(body)[ROOT]
    for step in path:
        element = element[step]
    ok = _edit(body, path, [element[0]] * (value - 1))
    assert jc.decode_request(ok, limits=limits)
    assert "more than" in str(_request_error(_edit(body, path, [element[0]] * value), limits))


def test_default_ranges_limit() -> None:
    ranges = [[2 * n, 2 * n] for n in range(1025)]
    body = _edit(jc.encode_request(A_CONNECT), (jc.X_AVAILABILITY, 0, "ranges"), ranges[:1024])
    assert jc.decode_request(body)
    body = _edit(body, (jc.X_AVAILABILITY, 0, "ranges"), ranges)
    assert _request_error(body).code == 1


def test_id_lengths() -> None:
    assert jc.decode_request(jc.encode_request(Find("p" * 256, "t" * 256, "s" * 2048)))
    for req in (Find("p" * 257, "t", "s"), Find("p", "t" * 257, "s"), Find("p", "t", "s" * 2049)):
        assert _request_error(jc.encode_request(req)).code == 1


def test_chunk_numbers_up_to_64_bits() -> None:
    req = Find("p", "t", "s", ranges=[(0, 2**64 - 1)])
    assert jc.decode_request(jc.encode_request(req)) == req


def test_zone_ids_are_refused() -> None:
    body = _edit(
        jc.encode_request(A_CONNECT),
        ("connect", "peer_addr", 0, "ip_address"),
        {"address_type": "ipv6", "address": "fe80::1%eth0"},
    )
    assert _request_error(body).code == 1


# --- fuzz: hostile input gives TrackerError and nothing else ---------------------------------


def _decode_any(body: bytes) -> None:
    for decode in (jc.decode_request, jc.decode_response):
        try:
            decoded = decode(body)
        except TrackerError as exc:
            assert exc.code in (ErrorCode.BAD_REQUEST, ErrorCode.UNSUPPORTED_VERSION)
        else:
            # Whatever passes must be something we can send again.
            if isinstance(decoded, Response):
                assert jc.decode_response(jc.encode_response(decoded)) == decoded
            else:
                assert jc.decode_request(jc.encode_request(decoded)) == decoded


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(body: bytes) -> None:
    _decode_any(body)


@FUZZ
@given(json_values)
def test_fuzz_random_json(value: Any) -> None:
    _decode_any(json.dumps(value).encode())
    _decode_any(json.dumps({ROOT: value}).encode())


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += _paths(value, (*prefix, index))
    return out


@st.composite
def mutated_bodies(draw: st.DrawFn) -> bytes:
    """A valid body with one node replaced by a random JSON value, or removed."""
    if draw(st.booleans()):
        body = jc.encode_request(draw(ts.requests))
    else:
        body = jc.encode_response(draw(ts.responses()))
    doc = json.loads(body)
    path = draw(st.sampled_from(_paths(doc)[1:]))
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    if draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(json_values)
    return json.dumps(doc).encode()


@FUZZ
@given(mutated_bodies())
def test_fuzz_mutated_structure(body: bytes) -> None:
    _decode_any(body)


@FUZZ
@given(ts.requests | ts.responses(), st.data())
def test_fuzz_mutated_bytes(message: Request | Response, data: st.DataObject) -> None:
    if isinstance(message, Response):
        body = bytearray(jc.encode_response(message))
    else:
        body = bytearray(jc.encode_request(message))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(body) - 1))
        action = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip":
            body[at] = data.draw(st.sampled_from(b'"[]{},:0123456789-.eE\\ u\x00\xff'))
        elif action == "insert":
            body[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        elif action == "delete":
            del body[at]
        else:
            del body[at:]
        if not body:
            break
    _decode_any(bytes(body))


# --- docs/ppsp-tp-json.md --------------------------------------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "ppsp-tp-json.md"


def _doc_examples() -> list[str]:
    return re.findall(r"```json\n(.*?)```", DOC.read_text(), re.S)


def test_doc_examples_decode() -> None:
    examples = _doc_examples()
    assert len(examples) >= 8
    for text in examples:
        msg = json.loads(text)[ROOT]
        if "request_type" in msg:
            req = jc.decode_request(text.encode())
            assert jc.decode_request(jc.encode_request(req)) == req
        else:
            resp = jc.decode_response(text.encode())
            assert jc.decode_response(jc.encode_response(resp)) == resp


def test_doc_lists_every_extension_member() -> None:
    text = DOC.read_text()
    members = [v for k, v in vars(jc).items() if k.startswith("X_") and isinstance(v, str)]
    assert len(members) == 8
    for member in members:
        assert f"`{member}`" in text
