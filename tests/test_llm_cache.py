"""The response cache's segments: many answers per object, a global lookup, a bounded loss on a
kill, merging, and entries of the per-call layout of earlier versions."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fake_openai import FakeOpenAIServer
from personahub.tasks.core.store import Store
from personahub.tasks.llm.cache import CACHE_FORMAT, ResponseCache
from personahub.tasks.llm.gateway import ChatRequest, LLMGateway, cache_key

SEGMENTS = "cache/llm/segments"


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def requests(n: int, start: int = 0) -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"question {i}"}], template="t@v1")
            for i in range(start, start + n)]


def gateway(server: FakeOpenAIServer, store: Store, **kw) -> LLMGateway:
    return LLMGateway(base_url=server.base_url, model="fake-model", store=store, max_retries=1, timeout_s=5.0, **kw)


def entry(text: str) -> dict:
    return {"format": CACHE_FORMAT, "model": "m", "template": "t@v1", "text": text}


def segment_keys(root: Path) -> list[list[str]]:
    """The keys of each segment file on disk, read with pyarrow alone."""
    return [pq.read_table(path, columns=["key"])["key"].to_pylist()
            for path in sorted((root / SEGMENTS).glob("*.parquet"))]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


def test_a_batch_is_written_as_segments_of_flush_every_answers(server, root):
    store = Store(str(root))
    results = run(gateway(server, store, cache_flush_every=5).chat_many(requests(23)))
    assert all(r.ok and not r.cached for r in results) and server.calls == 23
    segments = segment_keys(root)
    assert len(segments) == math.ceil(23 / 5)  # four full segments and the batch's tail
    assert sorted(len(keys) for keys in segments) == [3, 5, 5, 5, 5]
    assert sorted(k for keys in segments for k in keys) == sorted(r.key for r in results)
    assert all(keys == sorted(keys) for keys in segments)
    assert not [p for p in root.rglob("*.json")]  # no object per call

    again = run(gateway(server, Store(str(root))).chat_many(requests(23)))
    assert all(r.cached for r in again) and server.calls == 23
    assert [r.text for r in again] == [r.text for r in results]


def test_an_answer_from_another_shard_is_not_paid_again(server, root):
    first = run(gateway(server, Store(str(root))).chat_many(requests(4)))
    second = run(gateway(server, Store(str(root))).chat_many(requests(4, start=2)))  # overlaps by two
    assert server.calls == 6
    assert [r.cached for r in second] == [True, True, False, False]
    assert [r.text for r in second[:2]] == [r.text for r in first[2:]]


def test_a_single_chat_is_looked_up_in_the_segments(server, root):
    run(gateway(server, Store(str(root))).chat_many(requests(3)))
    one = run(gateway(server, Store(str(root))).chat(requests(3)[1]))
    assert one.cached and server.calls == 3


def test_old_answers_are_flushed_by_age(server, root):
    run(gateway(server, Store(str(root)), cache_flush_every=1000, cache_flush_seconds=0).chat_many(requests(4)))
    assert sorted(len(keys) for keys in segment_keys(root)) == [1, 1, 1, 1]


def test_a_kill_loses_only_the_unflushed_answers(root):
    cache = ResponseCache(Store(str(root)), flush_every=3, flush_seconds=3600)
    keys = [f"{i:064x}" for i in range(7)]

    async def answer_all() -> None:
        for i, key in enumerate(keys):
            await cache.write(key, entry(f"answer {i}"))
        # killed here: no flush at the end of the batch

    run(answer_all())
    assert [len(k) for k in segment_keys(root)] == [3, 3]
    survivor = ResponseCache(Store(str(root)))
    found = [run(survivor.read(key)) for key in keys]
    assert [e["text"] if e else None for e in found] == [f"answer {i}" for i in range(6)] + [None]


def test_merging_keeps_every_entry_once(root):
    store = Store(str(root))
    cache = ResponseCache(store, flush_every=1, flush_seconds=3600)

    async def write_all() -> None:
        for i in range(10):
            await cache.write(f"{i:064x}", entry(f"answer {i}"))
        await cache.write(f"{3:064x}", entry("answer 3"))  # the same answer in a second segment

    real_compact = cache.compact
    cache.compact = lambda at=0: 0  # type: ignore[method-assign]  # keep the ten segments for now
    run(write_all())
    assert len(segment_keys(root)) == 11
    assert real_compact(at=12) == 0  # below the threshold nothing moves
    assert real_compact(at=4) == 11
    merged = segment_keys(root)
    assert merged == [sorted(f"{i:064x}" for i in range(10))]
    reader = ResponseCache(Store(str(root)))
    assert [run(reader.read(f"{i:064x}"))["text"] for i in range(10)] == [f"answer {i}" for i in range(10)]


def test_a_segment_merged_away_during_a_lookup_is_found_in_the_merged_one(root):
    store = Store(str(root))
    writer = ResponseCache(store, flush_every=1)
    run(writer.write("a" * 64, entry("kept")))

    class StaleListing(Store):
        """Lists a segment that a concurrent merge has deleted, the first time only."""
        listed = 0

        def list(self, rel: str) -> list[str]:
            self.listed += 1
            real = super().list(rel)
            return [f"{SEGMENTS}/20260101T000000-gone.parquet"] if self.listed == 1 else real

    reader = ResponseCache(StaleListing(str(root)))
    assert run(reader.read("a" * 64))["text"] == "kept"


def test_entries_of_the_per_call_layout_are_still_read(server, root):
    store = Store(str(root))
    req = requests(1)[0]
    key = cache_key("fake-model", req)
    store.write_json(f"cache/llm/{key[:2]}/{key}.json", entry("from an earlier version"))
    result = run(gateway(server, store).chat(req))
    assert result.cached and result.text == "from an earlier version" and server.calls == 0


def test_an_unreadable_segment_is_a_miss(server, root):
    store = Store(str(root))
    store.write_bytes(f"{SEGMENTS}/20260101T000000-broken.parquet", b"not parquet")
    result = run(gateway(server, store).chat(requests(1)[0]))
    assert result.ok and not result.cached and server.calls == 1
    again = run(gateway(server, Store(str(root))).chat(requests(1)[0]))  # the broken one is still there
    assert again.cached and again.text == result.text and server.calls == 1
