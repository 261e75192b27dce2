"""RELOAD end-to-end transactions (RFC 6940 §6.2.1) and error responses: reload.transactions."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reload.links import FrameLayer
from reload.transactions import (
    CacheState,
    ErrorCode,
    ResponseCache,
    Retransmit,
    TransactionError,
    TransactionFailed,
    TransactionManager,
    bad_signature,
    check_configuration_sequence,
    check_ttl,
    forbidden_store,
    message_too_large,
    parse_unknown_kinds,
    request_timeout,
    unknown_kind,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------- originator (§6.2.1)


def run_timers(
    manager: TransactionManager[str], until: float
) -> list[tuple[float, Retransmit | TransactionFailed[str]]]:
    seen: list[tuple[float, Retransmit | TransactionFailed[str]]] = []
    while (deadline := manager.next_timer()) is not None and deadline <= until:
        seen += [(deadline, e) for e in manager.handle_timer(deadline)]
    return seen


def test_retransmission_schedule_and_timeout() -> None:
    manager: TransactionManager[str] = TransactionManager()
    manager.start(0xABC, b"request bytes", 100.0, "ctx")
    assert manager.handle_timer(102.999) == []
    events = run_timers(manager, 1000.0)
    retransmits = [(t, e) for t, e in events if isinstance(e, Retransmit)]
    # first transmission at 100 (by the caller), then every 3 s: 4 more = 5 in all
    assert [t for t, _ in retransmits] == pytest.approx([103.0, 106.0, 109.0, 112.0])
    assert [e.transmission for _, e in retransmits] == [2, 3, 4, 5]
    assert all(e.message == b"request bytes" and e.transaction_id == 0xABC for _, e in retransmits)
    (when, failed) = events[-1]
    assert isinstance(failed, TransactionFailed)
    # "After the timer for the fifth transmission fires, the message MUST be considered to
    # have failed" — 3 s after the fifth copy.
    assert when == pytest.approx(115.0)
    assert failed.context == "ctx" and failed.transaction_id == 0xABC
    assert failed.error[0] is ErrorCode.REQUEST_TIMEOUT and int(failed.error[0]) == 0x04
    assert len(manager) == 0 and manager.next_timer() is None


def test_response_matched_by_transaction_id() -> None:
    manager: TransactionManager[str] = TransactionManager(reliability_timer=1.0)
    manager.start(1, b"one", 0.0, "first")
    manager.start(2, b"two", 0.0, "second")
    assert manager.response_received(3) is None  # unknown transaction: dropped
    assert manager.response_received(2) == "second"
    assert manager.response_received(2) is None  # a duplicate response matches nothing
    events = manager.handle_timer(1.0)
    assert [(type(e), e.transaction_id) for e in events] == [(Retransmit, 1)]
    assert 1 in manager and 2 not in manager


def test_response_after_retransmission_stops_timer() -> None:
    manager: TransactionManager[str] = TransactionManager()
    manager.start(5, b"x", 0.0, "ctx")
    assert len(manager.handle_timer(3.0)) == 1
    assert manager.response_received(5) == "ctx"
    assert manager.next_timer() is None
    assert manager.handle_timer(100.0) == []


def test_pending_transactions_are_bounded_and_unique() -> None:
    manager: TransactionManager[int] = TransactionManager(max_pending=2)
    manager.start(1, b"a", 0.0, 1)
    with pytest.raises(TransactionError):
        manager.start(1, b"a", 0.0, 1)
    manager.start(2, b"b", 0.0, 2)
    with pytest.raises(TransactionError):
        manager.start(3, b"c", 0.0, 3)
    assert manager.cancel(1) and not manager.cancel(1)
    manager.start(3, b"c", 0.0, 3)
    assert len(manager) == 2


# -------------------------------------------------------------- destination (§6.2.1)


def test_duplicate_request_gets_the_same_answer_without_reprocessing() -> None:
    cache = ResponseCache()
    assert cache.check(77, 0.0) == (CacheState.NEW, None)
    assert cache.check(77, 0.5) == (CacheState.IN_PROGRESS, None)  # still being processed
    cache.record(77, b"the answer", 1.0)
    assert cache.check(77, 3.0) == (CacheState.ANSWERED, b"the answer")
    assert cache.check(77, 14.9) == (CacheState.ANSWERED, b"the answer")
    # beyond the 15 s maximum request lifetime it is a new request again
    assert cache.check(77, 15.0) == (CacheState.NEW, None)


def test_response_cache_is_bounded_and_expires() -> None:
    cache = ResponseCache(max_entries=3)
    for tid in range(5):
        cache.check(tid, float(tid))
        cache.record(tid, b"r%d" % tid, float(tid))
    assert len(cache) == 3
    assert cache.check(4, 5.0) == (CacheState.ANSWERED, b"r4")
    assert cache.check(0, 5.0)[0] is CacheState.NEW  # the oldest was forgotten
    assert cache.next_timer() == pytest.approx(15.0 + 3)  # 3, 4 and the new 0 are left
    cache.expire(100.0)
    assert len(cache) == 0 and cache.next_timer() is None


def test_record_after_expiry_is_ignored() -> None:
    cache = ResponseCache()
    cache.check(9, 0.0)
    cache.record(9, b"late", 20.0)
    assert cache.check(9, 20.0) == (CacheState.NEW, None)


def test_end_to_end_over_lossy_link_processes_each_request_once() -> None:
    """§6.2.1 over §6.6.3: link retransmissions may deliver a request twice (lost ack); the
    destination's response cache answers the copy without processing it again, and the
    originator's transaction manager ignores the second answer."""
    rng = random.Random(7)
    link_ab, link_ba = FrameLayer(reliable=True), FrameLayer(reliable=True)
    link_ab_peer, link_ba_peer = FrameLayer(reliable=True), FrameLayer(reliable=True)
    originator: TransactionManager[int] = TransactionManager()
    cache = ResponseCache()
    processed: list[int] = []
    answered: list[int] = []
    duplicates = 0
    now = 0.0
    for tid in range(40):
        request = struct.pack("!Q", tid)
        originator.start(tid, request, now, tid)
        link_ab.send(request, now)
    for _ in range(20000):
        if not len(originator) or link_ab.failed or link_ba.failed:
            break
        for frame in link_ab.frames_to_send(now):
            if rng.random() < 0.1:
                continue
            for request in link_ab_peer.receive_record(frame, now):
                (tid,) = struct.unpack("!Q", request)
                state, cached = cache.check(tid, now)
                if state is CacheState.NEW:
                    processed.append(tid)
                    cache.record(tid, request, now)
                    link_ba.send(request, now)
                else:
                    duplicates += 1
                    if state is CacheState.ANSWERED and cached is not None:
                        link_ba.send(cached, now)
        for frame in link_ab_peer.frames_to_send(now):  # acks back to the originator
            if rng.random() >= 0.1:
                link_ab.receive_record(frame, now)
        for frame in link_ba.frames_to_send(now):
            if rng.random() < 0.1:
                continue
            for response in link_ba_peer.receive_record(frame, now):
                (tid,) = struct.unpack("!Q", response)
                if originator.response_received(tid) is not None:
                    answered.append(tid)
        for frame in link_ba_peer.frames_to_send(now):
            if rng.random() >= 0.1:
                link_ba.receive_record(frame, now)
        now += 0.05
        for layer in (link_ab, link_ba):
            layer.handle_timer(now)
        for event in originator.handle_timer(now):
            if isinstance(event, Retransmit):
                link_ab.send(event.message, now)
    assert sorted(processed) == list(range(40))  # each request processed exactly once
    assert sorted(answered) == list(range(40))  # each transaction completed exactly once
    assert duplicates > 0  # the loss did produce copies for the cache to absorb


# ------------------------------------------------------------- error responses (§6.3.3.1)


def test_ttl_exceeded() -> None:
    assert check_ttl(5) is None
    code, info = check_ttl(0) or (None, b"")
    assert code is ErrorCode.TTL_EXCEEDED and code is not None and int(code) == 0x0A and info


@pytest.mark.parametrize(
    ("received", "own", "expected"),
    [
        (7, 7, None),
        (6, 7, ErrorCode.CONFIG_TOO_OLD),
        (8, 7, ErrorCode.CONFIG_TOO_NEW),
        (65534, 2, ErrorCode.CONFIG_TOO_OLD),  # modulo arithmetic "as in TCP": 65534 < 2
        (2, 65534, ErrorCode.CONFIG_TOO_NEW),
        (65535, 7, ErrorCode.CONFIG_TOO_OLD),  # 65535 outside a ConfigUpdate: plain mod 2^16
    ],
)
def test_configuration_sequence(received: int, own: int, expected: ErrorCode | None) -> None:
    result = check_configuration_sequence(received, own)
    assert (result[0] if result else None) == expected


def test_configuration_sequence_65535_config_update_always_accepted() -> None:
    assert check_configuration_sequence(65535, 12, is_config_update=True) is None
    assert check_configuration_sequence(11, 12, is_config_update=True) is not None


def test_error_codes_match_the_registry() -> None:
    # §14.9 values
    assert message_too_large(6000, 5000)[0] == 0x0B
    assert b"6000" in message_too_large(6000, 5000)[1]
    assert bad_signature()[0] is ErrorCode.FORBIDDEN and int(ErrorCode.FORBIDDEN) == 0x02
    assert forbidden_store("USER-MATCH failed") == (ErrorCode.FORBIDDEN, b"USER-MATCH failed")
    assert request_timeout()[0] == 0x04
    assert (ErrorCode.CONFIG_TOO_OLD, ErrorCode.CONFIG_TOO_NEW) == (0x0F, 0x10)
    assert (ErrorCode.UNKNOWN_KIND, ErrorCode.INVALID_MESSAGE) == (0x0C, 0x14)


def test_unknown_kind_error_info_bytes() -> None:
    # KindId unknown_kinds<0..2^8-1>: 1-byte length in bytes, then uint32 Kind-IDs (§7.4.1.2)
    code, info = unknown_kind([0xF0000001, 0x10, 0xF0000001])
    assert code is ErrorCode.UNKNOWN_KIND
    assert info == bytes.fromhex("08 f0000001 00000010")
    assert parse_unknown_kinds(info) == [0xF0000001, 0x10]


def test_unknown_kind_list_is_bounded() -> None:
    _, info = unknown_kind(list(range(100)))
    assert info[0] == 252 and len(parse_unknown_kinds(info)) == 63
    with pytest.raises(ValueError):
        unknown_kind([2**32])


@FUZZ
@given(st.lists(st.integers(0, 2**32 - 1), max_size=80))
def test_unknown_kind_round_trip(kinds: list[int]) -> None:
    _, info = unknown_kind(kinds)
    assert parse_unknown_kinds(info) == list(dict.fromkeys(kinds))[:63]


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_parse_unknown_kinds(data: bytes) -> None:
    try:
        kinds = parse_unknown_kinds(data)
    except ValueError:
        return
    assert unknown_kind(kinds)[1] == data or len(set(kinds)) != len(kinds)
