"""One concurrency bound per endpoint, shared by every shard in flight in this process.

Prefect runs each async task on its own event loop in a worker thread, so an asyncio.Semaphore
cannot be shared between shards. `SharedLimit` can: coroutines on any loop wait for a slot, and a
slot freed on one loop wakes a waiter on another. With one bound per endpoint, a shard finishing
its last requests leaves its slots to the next shard's requests, and the endpoint does not idle
while work remains. (On Dask each worker process has its own bound.)
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque


class SharedLimit:
    """A counting semaphore for coroutines on any number of event loops (threads)."""

    def __init__(self, slots: int):
        if slots < 1:
            raise ValueError("a limit needs at least one slot")
        self.slots = slots
        self._free = slots
        self._lock = threading.Lock()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    @property
    def in_use(self) -> int:
        with self._lock:
            return self.slots - self._free

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
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
                    # release() popped us. If the slot reached us (the task was cancelled just
                    # after), give it back; if it did not, _grant will see the cancelled waiter.
                    return_slot = not waiter.cancelled()
            if return_slot:
                self.release()
            raise

    def release(self) -> None:
        """Free a slot: hand it to the oldest waiter whose loop still runs, else keep it."""
        while True:
            with self._lock:
                if not self._waiters:
                    self._free += 1
                    return
                loop, waiter = self._waiters.popleft()
            try:
                loop.call_soon_threadsafe(self._grant, waiter)
                return
            except RuntimeError:  # that loop is closed: its waiter is gone, try the next
                continue

    def _grant(self, waiter: asyncio.Future[None]) -> None:
        # Runs on the waiter's loop. A waiter cancelled after it was popped passes the slot on.
        if waiter.done():
            self.release()
        else:
            waiter.set_result(None)

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
