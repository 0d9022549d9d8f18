"""The content-addressed LLM response cache: one JSON entry per call under the store.

A key is the sha256 of everything that determines the answer (model, messages, sampling parameters,
template version, output schema; for embeddings the model and the batch's texts in order), so a
rerun never pays for the same call twice and an edited prompt misses exactly the calls it changes.
Entries hold the raw answer: parsing is redone on every read.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any, Sequence

from personahub.tasks.core.store import Store
from personahub.tasks.llm.requests import ChatRequest

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
# Part of every embedding cache key: bump it when what an entry holds changes meaning.
EMBEDDING_CACHE_FORMAT = 1


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


class ResponseCache:
    """Entries under `prefix` of a store (none without a store: every read misses)."""

    def __init__(self, store: Store | None, prefix: str = "cache/llm", scrub: Callable[[str], str] = str):
        self.store = store
        self.prefix = prefix.strip("/")
        self._clean = scrub  # what a logged error passes through (it may quote a URL with a key)

    def path(self, key: str) -> str:
        return f"{self.prefix}/{key[:2]}/{key}.json"

    async def read(self, key: str, *, kind: str = "chat") -> dict[str, Any] | None:
        """The entry for `key`, or None: absent, unreadable or not a valid entry of `kind` (a miss)."""
        if self.store is None:
            return None
        path = self.path(key)
        try:
            # Store I/O is blocking (s3fs, fsync): keep it off the event loop.
            entry = await asyncio.to_thread(self.store.read_json, path)
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - an unreadable entry is a miss, not a failure
            log.warning("ignoring unreadable LLM cache entry %s: %s", path, type(exc).__name__)
            return None
        if not isinstance(entry, dict):
            return None
        if kind == "embeddings":
            valid = (entry.get("kind") == "embeddings" and entry.get("format") == EMBEDDING_CACHE_FORMAT
                     and isinstance(entry.get("vectors"), str) and isinstance(entry.get("count"), int)
                     and isinstance(entry.get("dim"), int))
        else:
            valid = entry.get("format") == CACHE_FORMAT and isinstance(entry.get("text"), str)
        return entry if valid else None

    async def write(self, key: str, entry: dict[str, Any]) -> None:
        """Store an entry; a failed write is logged (the answer is still good) and never raised."""
        if self.store is None:
            return
        try:
            await asyncio.to_thread(self.store.write_json, self.path(key), entry)
        except Exception as exc:  # noqa: BLE001 - the answer is still good; the next run pays again
            log.warning("could not write LLM cache entry %s: %s", self.path(key), self._clean(str(exc)))
