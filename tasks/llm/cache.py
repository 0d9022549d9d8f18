"""The content-addressed LLM response cache, written as segments: many answers per object.

A key is the sha256 of everything that determines the answer (model, messages, sampling parameters,
template version, output schema; for embeddings the model and the batch's texts in order), so a
rerun never pays for the same call twice and an edited prompt misses exactly the calls it changes.
Entries hold the raw answer: parsing is redone on every read.

One object per call would cost one PUT per call (10^9 PUTs at the paper's scale, and S3 caps PUTs
per prefix), so answers are buffered and written together as one Parquet segment
(`<prefix>/segments/<time>-<id>.parquet`: key, kind, entry as JSON, sorted by key) when the buffer
holds `flush_every` answers or FLUSH_BYTES, when its first answer is `flush_seconds` old, and at the
end of every gateway batch (one LLM shard). A kill therefore loses only the unflushed answers of the
batches in flight. The lookup stays global: a batch's keys are looked up in every segment before
its calls are made (one read of each segment's key column; entries only from segments that hold a
hit), so a request answered by another shard, stage or run is never paid again. Segments are merged
once there are COMPACT_AT of them, so a lookup reads a bounded number of objects. Entries written
by earlier versions (one JSON object per call under `<prefix>/<key[:2]>/`) are still read.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from personahub.tasks.core.store import Store
from personahub.tasks.llm.requests import ChatRequest

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
# Part of every embedding cache key: bump it when what an entry holds changes meaning.
EMBEDDING_CACHE_FORMAT = 1

SEGMENT_SCHEMA = pa.schema([("key", pa.string()), ("kind", pa.string()), ("entry", pa.string())])
FLUSH_EVERY = 500  # answers per segment (settings.llm_cache_flush_every)
FLUSH_SECONDS = 60.0  # the oldest unflushed answer's age that forces a flush (settings.llm_cache_flush_seconds)
FLUSH_BYTES = 32 << 20  # embedding entries are large (a 256-text batch is ~0.5 MB): bound the buffer
COMPACT_AT = 64  # segments in the store before a flush merges the small ones
MERGED_BYTES = 32 << 20  # a merged segment's size bound (its rows are held in memory while merging)
READ_THREADS = 8  # segments read at once during a lookup (object-store latency, not CPU)


def cache_key(model: str, req: ChatRequest) -> str:
    """sha256 of the canonical JSON of everything that determines the response. The model is part
    of it because the embedded and a remote endpoint answer the same prompt differently."""
    payload = {
        "model": model,
        "messages": [list(m) for m in req.messages],
        "params": dict(req.params),
        "template": req.template,
        "json_schema": req.json_schema,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def embedding_cache_key(model: str, texts: Sequence[str]) -> str:
    """sha256 of one embedding request: model + the batch's texts, in order, + the entry format.
    "kind" keeps it apart from every chat key."""
    payload = {"kind": "embeddings", "format": EMBEDDING_CACHE_FORMAT, "model": model, "input": list(texts)}
    canonical = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def valid_entry(entry: Any, kind: str) -> bool:
    """Whether `entry` is a usable cached answer of `kind` ("chat" or "embeddings")."""
    if not isinstance(entry, dict):
        return False
    if kind == "embeddings":
        return (entry.get("kind") == "embeddings" and entry.get("format") == EMBEDDING_CACHE_FORMAT
                and isinstance(entry.get("vectors"), str) and isinstance(entry.get("count"), int)
                and isinstance(entry.get("dim"), int))
    return entry.get("format") == CACHE_FORMAT and isinstance(entry.get("text"), str)


def segment_table(entries: Iterable[tuple[str, str, str]]) -> pa.Table:
    """(key, kind, entry JSON) rows as one segment, sorted by key."""
    rows = sorted(entries)
    return pa.table({"key": [r[0] for r in rows], "kind": [r[1] for r in rows], "entry": [r[2] for r in rows]},
                    schema=SEGMENT_SCHEMA)


class ResponseCache:
    """Entries under `prefix` of a store (none without a store: every read misses).

    Thread-safe: one gateway may serve batches from several threads and event loops at once."""

    def __init__(self, store: Store | None, prefix: str = "cache/llm", scrub: Callable[[str], str] = str, *,
                 flush_every: int = FLUSH_EVERY, flush_seconds: float = FLUSH_SECONDS):
        if flush_every < 1 or flush_seconds < 0:
            raise ValueError("flush_every must be at least 1 and flush_seconds at least 0")
        self.store = store
        self.prefix = prefix.strip("/")
        self.segments = f"{self.prefix}/segments"
        self.flush_every = int(flush_every)
        self.flush_seconds = float(flush_seconds)
        self._clean = scrub  # what a logged error passes through (it may quote a URL with a key)
        self._lock = threading.Lock()
        self._buffer: dict[str, tuple[str, str]] = {}  # key → (kind, entry JSON), not yet written
        self._buffer_bytes = 0
        self._buffer_since = 0.0
        # key → entry JSON found in the segments (None: looked up, absent), for the batches in flight
        self._found: dict[str, str | None] = {}
        self._legacy: bool | None = None  # whether per-call entries of earlier versions exist
        self.objects_written = 0  # segments this cache wrote (merges included)

    def _wrote(self) -> None:
        with self._lock:
            self.objects_written += 1

    def legacy_path(self, key: str) -> str:
        return f"{self.prefix}/{key[:2]}/{key}.json"

    # --- lookup ---------------------------------------------------------------------------------
    async def prefetch(self, keys: Iterable[str]) -> None:
        """Look `keys` up in every segment, so that `read` answers them without another object
        read. Call it once per batch, before its calls; `release` forgets them afterwards."""
        if self.store is None:
            return
        with self._lock:
            wanted = {k for k in keys if k not in self._buffer and k not in self._found}
        if not wanted:
            return
        found = await asyncio.to_thread(self._lookup, wanted)
        with self._lock:
            self._found.update({key: found.get(key) for key in wanted})

    def release(self, keys: Iterable[str]) -> None:
        """Forget what `prefetch` found for `keys` (a batch is done): memory follows the batches in
        flight, not every answer ever read."""
        with self._lock:
            for key in keys:
                self._found.pop(key, None)

    def _lookup(self, wanted: set[str]) -> dict[str, str]:
        """Entries of `wanted` keys from every segment in the store. A segment merged away while we
        read (a concurrent compaction) is replaced by the merged one, found by listing again."""
        value_set = pa.array(sorted(wanted), pa.string())
        found: dict[str, str] = {}
        seen: set[str] = set()
        with concurrent.futures.ThreadPoolExecutor(READ_THREADS, thread_name_prefix="cache-read") as pool:
            for _ in range(3):
                paths = [p for p in self.store.list(self.segments) if p.endswith(".parquet") and p not in seen]
                if not paths:
                    break
                seen.update(paths)
                vanished = False
                for hits in pool.map(lambda p: self._segment_hits(p, value_set), paths):
                    if hits is None:
                        vanished = True
                    else:
                        found.update(hits)
                if not vanished or len(found) == len(wanted):
                    break
        return found

    def _segment_hits(self, path: str, value_set: pa.Array) -> dict[str, str] | None:
        """The entries of one segment whose keys are in `value_set` (None: the segment is gone)."""
        try:
            keys = self.store.read_parquet(path, columns=["key"])["key"]
            mask = pc.is_in(keys, value_set=value_set)
            if not pc.any(mask).as_py():
                return {}
            table = self.store.read_parquet(path, columns=["key", "entry"]).filter(mask)
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - an unreadable segment is a miss, not a failure
            log.warning("ignoring unreadable LLM cache segment %s: %s", path, self._clean(str(exc)))
            return {}
        return dict(zip(table["key"].to_pylist(), table["entry"].to_pylist()))

    async def read(self, key: str, *, kind: str = "chat") -> dict[str, Any] | None:
        """The entry for `key`, or None: absent, unreadable or not a valid entry of `kind` (a miss).
        Answers from this cache's buffer, from what `prefetch` found, else from an entry of an
        earlier version; a key never prefetched is looked up in the segments first."""
        if self.store is None:
            return None
        with self._lock:
            looked_up = key in self._buffer or key in self._found
        if not looked_up:
            await self.prefetch([key])
        with self._lock:
            raw = self._buffer[key][1] if key in self._buffer else self._found.get(key)
        if raw is not None:
            try:
                entry = json.loads(raw)
            except ValueError:
                entry = None
        else:
            entry = await asyncio.to_thread(self._read_legacy, key)
        return entry if valid_entry(entry, kind) else None

    def _read_legacy(self, key: str) -> Any:
        if self._legacy is None:
            # Listed once: a store with no per-call entries (any store this version made) is not
            # asked for one object per miss.
            self._legacy = any(len(name) == 2 for name in self.store.subdirs(self.prefix))
        if not self._legacy:
            return None
        path = self.legacy_path(key)
        try:
            return self.store.read_json(path)
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - an unreadable entry is a miss, not a failure
            log.warning("ignoring unreadable LLM cache entry %s: %s", path, type(exc).__name__)
            return None

    # --- writing --------------------------------------------------------------------------------
    async def write(self, key: str, entry: dict[str, Any]) -> None:
        """Buffer an entry; write the buffer as a segment when it is full or old. A failed write is
        logged (the answer is still good) and never raised."""
        if self.store is None:
            return
        raw = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        kind = str(entry.get("kind") or "chat")
        with self._lock:
            if not self._buffer:
                self._buffer_since = time.monotonic()
            if key not in self._buffer:
                self._buffer[key] = (kind, raw)
                self._buffer_bytes += len(raw)
            due = (len(self._buffer) >= self.flush_every or self._buffer_bytes >= FLUSH_BYTES
                   or time.monotonic() - self._buffer_since >= self.flush_seconds)
        if due:
            await self.flush()

    async def flush(self) -> None:
        """Write every buffered entry as one segment (nothing when the buffer is empty)."""
        if self.store is None:
            return
        with self._lock:
            pending, self._buffer, self._buffer_bytes = self._buffer, {}, 0
        if not pending:
            return
        # Shielded: a cancelled batch still keeps the answers it paid for.
        await asyncio.shield(asyncio.to_thread(self._write_segment, pending))

    def _write_segment(self, pending: dict[str, tuple[str, str]]) -> None:
        path = f"{self.segments}/{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex}.parquet"
        try:
            self.store.write_parquet(path, segment_table((k, kind, raw) for k, (kind, raw) in pending.items()))
            self._wrote()
        except Exception as exc:  # noqa: BLE001 - the answers are still good; the next run pays again
            log.warning("could not write LLM cache segment %s (%d answers): %s", path, len(pending),
                        self._clean(str(exc)))
            return
        try:
            self.compact()
        except Exception as exc:  # noqa: BLE001 - a failed merge leaves every segment readable
            log.warning("could not merge LLM cache segments: %s", self._clean(str(exc)))

    def compact(self, at: int = COMPACT_AT) -> int:
        """Merge small segments once the store holds `at` or more; returns segments removed.

        The merged segment is written before its sources are deleted, so a reader always finds
        every entry (in a source, in the merged segment, or in both). Two writers merging at once
        both succeed: they duplicate entries, which the next merge drops."""
        sizes = {p: n for p, n in self.store.sizes(self.segments).items() if p.endswith(".parquet")}
        if len(sizes) < at:
            return 0
        small = [p for p, n in sizes.items() if n < MERGED_BYTES // 2]
        removed = 0
        group: list[str] = []
        total = 0
        for path in small + [None]:  # oldest first (names start with their time)
            if path is not None and total + sizes[path] <= MERGED_BYTES:
                group.append(path)
                total += sizes[path]
                continue
            if len(group) > 1:
                removed += self._merge(group)
            group, total = ([path], sizes[path]) if path is not None else ([], 0)
        return removed

    def _merge(self, paths: list[str]) -> int:
        tables: list[pa.Table] = []
        read: list[str] = []
        for path in paths:
            try:
                tables.append(self.store.read_parquet(path).select(SEGMENT_SCHEMA.names).cast(SEGMENT_SCHEMA))
            except FileNotFoundError:
                continue  # merged by another writer meanwhile
            read.append(path)
        if len(read) < 2:
            return 0
        # In Arrow, not Python objects: a merge holds up to MERGED_BYTES of segments.
        table = pa.concat_tables(tables).sort_by("key")
        keys = table["key"].combine_chunks()
        if len(keys) > 1:
            repeated = pc.equal(keys.slice(1), keys.slice(0, len(keys) - 1))
            table = table.filter(pa.concat_arrays([pa.array([True]), pc.invert(repeated)]))
        path = f"{self.segments}/{read[0].rsplit('/', 1)[-1].split('-', 1)[0]}-merged-{uuid.uuid4().hex}.parquet"
        self.store.write_parquet(path, table)
        self._wrote()
        for source in read:
            try:
                self.store.delete(source)
            except FileNotFoundError:
                pass
        return len(read)
