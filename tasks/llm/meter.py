"""What one invocation's LLM calls have cost so far, summed over every process that makes them.

A flow's chat gateways may run in its own process or in Dask workers. Each process keeps its own
counters for the invocation and publishes them, at most once a second and when a gateway closes, as
one small JSON file under `runs/<run_id>/meter/<invocation>/` in the run's store; reading the
folder gives the invocation's totals. The run's budget checks those totals before every paid call,
so a budget holds across workers, and the CLI's progress shows the workers' calls as they happen.
Another process's counts are at most a second (plus its calls in flight) behind.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any, Mapping

from personahub.tasks.core import progress
from personahub.tasks.core.store import Store
from personahub.tasks.llm.requests import Usage

PUBLISH_EVERY_S = 1.0  # how stale another process's counts may be; also how often the folder is re-read


def meter_path(run_id: str, invocation: str) -> str:
    return f"runs/{run_id}/meter/{invocation}"


class InvocationMeter:
    """This process's counters for one invocation, published to the store, plus the other processes'."""

    def __init__(self, store: Store | None, path: str):
        self.store = store
        self.path = path.strip("/")
        self.name = f"{uuid.uuid4().hex}.json"  # this process's file
        self.own = Usage()
        self._others = Usage()
        self._lock = threading.Lock()
        self._published_at = 0.0
        self._dirty = False
        self._read_at = float("-inf")

    def add(self, **deltas: int) -> None:
        """Count a gateway's deltas (Usage fields) here, and publish them when a second has passed."""
        with self._lock:
            self.own = self.own + Usage(**deltas)
            self._dirty = True
            due = time.monotonic() - self._published_at >= PUBLISH_EVERY_S
        if due:
            self.publish()

    def publish(self) -> None:
        """Write this process's counters (when they changed). A failed write is not an error: the
        counts are still kept here and written next time."""
        with self._lock:
            if not self._dirty or self.store is None:
                return
            own, self._dirty, self._published_at = self.own.copy(), False, time.monotonic()
        try:
            self.store.write_json(f"{self.path}/{self.name}", asdict(own))
        except Exception:  # noqa: BLE001 - metering must never fail a call
            with self._lock:
                self._dirty = True

    def others(self) -> Usage:
        """The other processes' published counters (re-read at most once a second)."""
        with self._lock:
            if time.monotonic() - self._read_at < PUBLISH_EVERY_S:
                return self._others
            self._read_at = time.monotonic()
        if self.store is None:
            return Usage()
        total = Usage()
        try:
            names = [p for p in self.store.list(self.path) if not p.endswith(f"/{self.name}")]
        except Exception:  # noqa: BLE001 - an unreadable folder counts as nothing yet
            names = []
        for rel in names:
            try:
                total = total + Usage.from_dict(json.loads(self.store.read_bytes(rel)))
            except Exception:  # noqa: BLE001 - a file being replaced is read next time
                continue
        with self._lock:
            self._others = total
        return total

    def total(self) -> Usage:
        with self._lock:
            own = self.own.copy()
        return own + self.others()


_METERS: dict[tuple[str, str], InvocationMeter] = {}
_LOCK = threading.Lock()


def meter_for(spec: Mapping[str, Any] | None, store: Store | None) -> InvocationMeter | None:
    """The process's meter for a flow's spend spec (its "meter" path), or None without one. Without
    a store it counts this process only."""
    path = (spec or {}).get("meter")
    if not path:
        return None
    key = (store.uri("") if store is not None else "", path)
    with _LOCK:
        meter = _METERS.get(key)
        if meter is None:
            meter = _METERS[key] = InvocationMeter(store, path)
        return meter


@contextlib.contextmanager
def others_in_progress(spec: Mapping[str, Any], store: Store) -> Iterator[InvocationMeter | None]:
    """While the block runs, this process's progress counters include the calls the invocation's
    other processes (Dask workers) have published; this process's own are counted already."""
    meter = meter_for(spec, store)
    if meter is None:
        yield None
        return

    def others() -> progress.LLMCounters:
        spent = meter.others()
        return progress.LLMCounters(spent.calls, spent.cache_hits, spent.total_tokens)

    remove = progress.add_source(others)
    try:
        yield meter
    finally:
        remove()
