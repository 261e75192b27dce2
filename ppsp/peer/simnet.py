"""An in-memory network with virtual time that drives sans-IO PPSPP endpoints (DESIGN §3, §5):
for tests and for studying the protocol without sockets."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable

from ppsp.peer.endpoint import Endpoint, Event

Address = tuple[str, int]


class SimNet:
    """Delivers datagrams between endpoints after ``delay`` seconds, losing a share ``loss``."""

    def __init__(self, delay: float = 0.005, loss: float = 0.0, seed: int = 1) -> None:
        self.delay = delay
        self.loss = loss
        self.rng = random.Random(seed)
        self.now = 0.0
        self.nodes: dict[Address, Endpoint] = {}
        self.events: dict[Address, list[Event]] = {}
        self.queue: list[tuple[float, int, bytes, Address, Address]] = []
        self.seq = 0
        self.delivered = 0
        #: Optional tap: called with (data, src, dst); returning None drops the datagram.
        self.tap: Callable[[bytes, Address, Address], bytes | None] | None = None

    def add(self, addr: Address, endpoint: Endpoint) -> Endpoint:
        self.nodes[addr] = endpoint
        self.events[addr] = []
        return endpoint

    def inject(self, data: bytes, src: Address, dst: Address) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (self.now + self.delay, self.seq, data, src, dst))

    def _collect(self) -> None:
        for addr, ep in self.nodes.items():
            for data, dst in ep.datagrams_to_send(self.now):
                if self.loss and self.rng.random() < self.loss:
                    continue
                if self.tap is not None:
                    tapped = self.tap(data, addr, dst)
                    if tapped is None:
                        continue
                    data = tapped
                self.inject(data, addr, dst)
            self.events[addr].extend(ep.pop_events())

    def run(self, until: float, stop: Callable[[], bool] | None = None) -> None:
        """Advance virtual time to ``until`` or until ``stop()`` is true."""
        self._collect()
        while True:
            if stop is not None and stop():
                return
            timers = [t for t in (ep.next_timer() for ep in self.nodes.values()) if t is not None]
            next_timer = min(timers) if timers else float("inf")
            next_packet = self.queue[0][0] if self.queue else float("inf")
            t = min(next_timer, next_packet)
            if t > until:
                self.now = until
                return
            self.now = max(self.now, t)
            if next_packet <= next_timer:
                _, _, data, src, dst = heapq.heappop(self.queue)
                ep = self.nodes.get(dst)
                if ep is not None:
                    ep.receive(data, src, self.now)
                    self.delivered += 1
            else:
                for ep in self.nodes.values():
                    nt = ep.next_timer()
                    if nt is not None and nt <= self.now:
                        ep.handle_timer(self.now)
            self._collect()
