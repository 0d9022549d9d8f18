"""One concurrency bound per endpoint, shared by every shard in flight in this process.

Prefect runs each async task on its own event loop in a worker thread, so an asyncio.Semaphore
cannot be shared between shards. `SharedLimit` can: coroutines on any loop wait for a slot, and a
slot freed on one loop wakes a waiter on another. With one bound per endpoint, a shard finishing
its last requests leaves its slots to the next shard's requests, and the endpoint does not idle
while work remains. (On Dask each worker process has its own bound.)

The bound adapts to the endpoint (AIMD, as TCP's congestion window): a 429 halves the requests
allowed in flight (once per `cooldown_s`, so one burst of 429s is one decrease), and each run of
as many successes as the current bound adds one slot back, up to the configured number.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque

log = logging.getLogger(__name__)


class SharedLimit:
    """A counting semaphore for coroutines on any number of event loops (threads), whose bound
    moves between 1 and `slots` with the endpoint's 429s (congested / succeeded)."""

    def __init__(self, slots: int, cooldown_s: float = 1.0):
        if slots < 1:
            raise ValueError("a limit needs at least one slot")
        self.slots = slots
        self.current = slots  # the bound in force now
        self.lowest = slots
        self.cooldown_s = cooldown_s
        self._in_use = 0
        self._successes = 0
        self._last_decrease = float("-inf")
        self._lock = threading.Lock()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._in_use

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._in_use < self.current and not self._waiters:
                self._in_use += 1
                return
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            with self._lock:
                try:
                    self._waiters.remove((loop, waiter))
                    return_slot = False
                except ValueError:
                    # _wake popped us. If the slot reached us (the task was cancelled just
                    # after), give it back; if it did not, _grant will see the cancelled waiter.
                    return_slot = not waiter.cancelled()
            if return_slot:
                self.release()
            raise

    def release(self) -> None:
        """Free a slot, then hand free slots to the oldest waiters whose loops still run."""
        with self._lock:
            self._in_use -= 1
        self._wake()

    def _wake(self) -> None:
        while True:
            with self._lock:
                if not self._waiters or self._in_use >= self.current:
                    return
                loop, waiter = self._waiters.popleft()
                self._in_use += 1
            try:
                loop.call_soon_threadsafe(self._grant, waiter)
            except RuntimeError:  # that loop is closed: its waiter is gone, try the next
                with self._lock:
                    self._in_use -= 1

    def _grant(self, waiter: asyncio.Future[None]) -> None:
        # Runs on the waiter's loop. A waiter cancelled after it was popped passes the slot on.
        if waiter.done():
            self.release()
        else:
            waiter.set_result(None)

    def congested(self) -> None:
        """The endpoint answered 429: halve the bound (multiplicative decrease)."""
        with self._lock:
            now = time.monotonic()
            if now - self._last_decrease < self.cooldown_s or self.current == 1:
                return
            before, self.current = self.current, max(1, self.current // 2)
            self.lowest = min(self.lowest, self.current)
            self._last_decrease, self._successes = now, 0
        log.warning("rate limited (429): requests in flight lowered from %d to %d", before, self.current)

    def succeeded(self) -> None:
        """A call went through: after `current` of them in a row, one more slot (additive increase)."""
        with self._lock:
            if self.current >= self.slots:
                return
            self._successes += 1
            if self._successes < self.current:
                return
            self.current, self._successes = self.current + 1, 0
        self._wake()

    async def __aenter__(self) -> "SharedLimit":
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


_limits: dict[tuple[str, int], SharedLimit] = {}
_limits_lock = threading.Lock()


def limit_for(endpoint: str, slots: int) -> SharedLimit:
    """The process's bound for requests to `endpoint` with this many slots."""
    with _limits_lock:
        limit = _limits.get((endpoint, slots))
        if limit is None:
            limit = _limits[(endpoint, slots)] = SharedLimit(slots)
        return limit
