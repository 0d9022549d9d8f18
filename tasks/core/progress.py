"""Live progress of a flow's stages, for whoever watches this process (the CLI's rich bars).

The stage runner reports each stage's shards (started, one finished, finished); every gateway in
the process adds its calls, cache hits and tokens to one set of counters. A watcher reads both;
nothing here blocks or fails a run, and with no watcher it costs a lock and an addition. Shards
run on Dask report from the flow's process when they finish; their calls are counted in the
workers, so the call counters only move for shards run here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


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


def count_llm(calls: int = 0, cache_hits: int = 0, tokens: int = 0) -> None:
    with _lock:
        _llm.calls += calls
        _llm.cache_hits += cache_hits
        _llm.tokens += tokens


def llm_counters() -> LLMCounters:
    with _lock:
        return LLMCounters(_llm.calls, _llm.cache_hits, _llm.tokens)


def watch(listener: Listener) -> Callable[[], None]:
    """Call `listener` on every stage event of this process; returns the function that stops it."""
    with _lock:
        _listeners.append(listener)

    def stop() -> None:
        with _lock:
            if listener in _listeners:
                _listeners.remove(listener)

    return stop


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
