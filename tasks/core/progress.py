"""Live progress of a flow's stages, for whoever watches this process (the CLI's rich bars).

The stage runner reports each stage's shards (started, one finished, finished); every gateway in
the process adds its calls, cache hits and tokens to one set of counters, and a flow adds sources
of the calls made elsewhere (its Dask workers', read from the invocation's meter). A watcher reads
both; nothing here blocks or fails a run, and with no watcher it costs a lock and an addition.
Shards run on Dask report from the flow's process when they finish.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LLMCounters:
    calls: int = 0
    cache_hits: int = 0
    tokens: int = 0


@dataclass
class StageProgress:
    stage: str
    shards: int
    shards_done: int
    started: float = field(default_factory=time.monotonic)
    finished: bool = False
    llm_at_start: LLMCounters = field(default_factory=LLMCounters)


Listener = Callable[[StageProgress], None]

_lock = threading.Lock()
_llm = LLMCounters()
_listeners: list[Listener] = []
_sources: list[Callable[[], LLMCounters]] = []


def count_llm(calls: int = 0, cache_hits: int = 0, tokens: int = 0) -> None:
    with _lock:
        _llm.calls += calls
        _llm.cache_hits += cache_hits
        _llm.tokens += tokens


def llm_counters() -> LLMCounters:
    """This process's counts plus every added source's (calls made in other processes)."""
    with _lock:
        total = LLMCounters(_llm.calls, _llm.cache_hits, _llm.tokens)
        sources = list(_sources)
    for source in sources:
        try:
            more = source()
        except Exception:  # noqa: BLE001 - a display must never fail a run
            continue
        total = LLMCounters(total.calls + more.calls, total.cache_hits + more.cache_hits, total.tokens + more.tokens)
    return total


def _registered(items: list, item: Any) -> Callable[[], None]:
    """Add `item` to `items` (under the lock); returns the function that takes it out again."""
    with _lock:
        items.append(item)

    def remove() -> None:
        with _lock:
            if item in items:
                items.remove(item)

    return remove


def add_source(source: Callable[[], LLMCounters]) -> Callable[[], None]:
    """Count `source`'s calls too (calls this process's gateways do not see); returns its remover."""
    return _registered(_sources, source)


def watch(listener: Listener) -> Callable[[], None]:
    """Call `listener` on every stage event of this process; returns the function that stops it."""
    return _registered(_listeners, listener)


def _emit(progress: StageProgress) -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener(progress)
        except Exception:  # noqa: BLE001 - a display must never fail a run
            pass


def stage_started(stage: str, shards: int, shards_done: int) -> StageProgress:
    progress = StageProgress(stage, shards, shards_done, llm_at_start=llm_counters())
    _emit(progress)
    return progress


def shard_finished(progress: StageProgress) -> None:
    progress.shards_done += 1
    _emit(progress)


def stage_finished(progress: StageProgress) -> None:
    progress.finished = True
    _emit(progress)
