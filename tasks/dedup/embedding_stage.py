"""Embedding dedup (cosine >= 0.9 by default; 0.5 for a stricter hub), after MinHash.

1. embed (one task per persona shard): vectors from the OpenAI-compatible /v1/embeddings endpoint
   (the embedded all-MiniLM-L6-v2 server by default) through the LLM gateway, stored as Parquet
   (kind "vectors": persona_id, rank, float16 vector; float16 halves the hub's index and moves
   cosines by < 1e-3; the search reads the stored values, so a rerun decides identically).
2. select (one task): near-duplicate pairs by tasks/vector_search.near_pairs (exact below a size,
   k-means inverted lists above, recall >= 0.99), resolved by dedup_keep.select exactly as MinHash's are; the
   removed personas are written with the kept persona and their cosine (kind "removed").
Then dedup_apply drops them from each shard.

Incremental: the hub's stored vectors are streamed as queries against an index of the new
personas only, so the hub is neither re-embedded nor re-indexed, and hub-hub pairs never form.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from personahub.tasks.dedup import keep as dedup_keep

from personahub.tasks.dedup import minhash

from personahub.tasks.dedup import vector_search
from personahub.tasks.core.checkpoint import ShardCounts, StageCheckpoint
from personahub.tasks.dedup.removed import removed_table
from personahub.tasks.llm.endpoint_breaker import retry_unless_endpoint_down
from personahub.tasks.llm.gateway import LLMGateway, l2_normalise
from personahub.tasks.core.stage import StageRef
from personahub.tasks.core.store import Store

EMBED_BATCH_ROWS = 4_096
QUERY_CHUNK_ROWS = 65_536


def vector_schema(dim: int) -> pa.Schema:
    return pa.schema([pa.field("persona_id", pa.string()), pa.field("rank", pa.uint64()),
                      pa.field("vector", pa.binary(2 * dim))])


def to_float32(column: pa.Array | pa.ChunkedArray, dim: int) -> np.ndarray:
    """Stored float16 vectors → float32 rows, renormalised (rounding moves the norm by ~1e-4)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(arr) == 0:
        return np.zeros((0, dim), np.float32)
    raw = np.frombuffer(arr.buffers()[1], dtype=np.float16, count=len(arr) * dim, offset=arr.offset * 2 * dim)
    return l2_normalise(raw.reshape(len(arr), dim).astype(np.float32))


def embed_shard(checkpoint: StageCheckpoint, store: Store, shard_id: str, source_file: str, gateway: LLMGateway,
                model: str, batch_size: int, dim: int, text_column: str = "persona",
                batch_rows: int = EMBED_BATCH_ROWS) -> dict[str, Any]:
    rows = 0
    usage = None
    with store.fs.open(store.full(source_file), "rb") as fh:
        parquet = pq.ParquetFile(fh)
        columns = [text_column] + minhash.rank_columns(parquet.schema_arrow.names)
        with checkpoint.open_shard(shard_id, {"vectors": vector_schema(dim)}) as shard:
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
                result = gateway.embed_many(batch.column(text_column).to_pylist(), model=model, batch_size=batch_size)
                vectors = np.asarray(result.vectors, np.float32)
                if vectors.shape != (batch.num_rows, dim):
                    raise ValueError(f"{model} returned vectors of shape {vectors.shape}, expected ({batch.num_rows}, {dim})")
                ranks = minhash.batch_rank_keys(batch)
                shard.write("vectors", pa.table({
                    "persona_id": batch.column("persona_id"),
                    "rank": pa.array(ranks, pa.uint64()),
                    "vector": pa.FixedSizeBinaryArray.from_buffers(
                        pa.binary(2 * dim), len(ranks), [None, pa.py_buffer(vectors.astype(np.float16).tobytes())]),
                }, schema=vector_schema(dim)))
                rows += batch.num_rows
                usage = result.usage if usage is None else usage + result.usage
            shard.counts = ShardCounts(rows_in=rows, rows_out=rows)
            shard.extra = {"usage": usage.as_dict() if usage is not None else {}}
    return {"shard_id": shard_id, "counts": shard.counts.__dict__, "usage": shard.extra["usage"]}


@dataclass(frozen=True)
class VectorInput:
    vectors: str
    shard_id: str
    rows: int
    fixed: bool


def _load(store: Store, inputs: Sequence[VectorInput], dim: int) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    vectors, ranks, ids = [], [], []
    for inp in inputs:
        t = store.read_parquet(inp.vectors)
        vectors.append(to_float32(t.column("vector"), dim))
        r = t.column("rank").to_numpy()
        ranks.append(dedup_keep.tiered(r, inp.fixed))
        ids.append(t.column("persona_id").combine_chunks())
    if not vectors:
        return np.zeros((0, dim), np.float32), np.zeros(0, np.uint64), pa.array([], pa.string())
    return np.concatenate(vectors), np.concatenate(ranks), pa.concat_arrays(ids)


def _stream(store: Store, inputs: Sequence[VectorInput], dim: int) -> Iterator[tuple[int, np.ndarray]]:
    offset = 0
    for inp in inputs:
        with store.fs.open(store.full(inp.vectors), "rb") as fh:
            for batch in pq.ParquetFile(fh).iter_batches(batch_size=QUERY_CHUNK_ROWS, columns=["vector"]):
                yield offset, to_float32(batch.column("vector"), dim)
                offset += batch.num_rows


def _hub_ranks_ids(store: Store, inputs: Sequence[VectorInput], wanted: np.ndarray) -> tuple[np.ndarray, pa.Array]:
    """Rank and persona id of the hub rows in `wanted` (sorted indices over the hub inputs)."""
    ranks, ids, offset = [], [], 0
    for inp in inputs:
        lo, hi = np.searchsorted(wanted, [offset, offset + inp.rows])
        if hi > lo:
            t = store.read_parquet(inp.vectors, columns=["persona_id", "rank"]).take(pa.array(wanted[lo:hi] - offset))
            ranks.append(t.column("rank").to_numpy())
            ids.append(t.column("persona_id").combine_chunks())
        offset += inp.rows
    return (np.concatenate(ranks) if ranks else np.zeros(0, np.uint64)), pa.concat_arrays(ids or [pa.array([], pa.string())])


def select_all(checkpoint: StageCheckpoint, store: Store, inputs: Sequence[VectorInput], threshold: float,
               dim: int, search: dict[str, Any] | None = None) -> dict[str, Any]:
    """Find every pair at cosine >= threshold among the new personas and between new and hub ones,
    and decide what is removed (one shard, "all")."""
    new = [i for i in inputs if not i.fixed]
    hub = [i for i in inputs if i.fixed]
    base, ranks, ids = _load(store, new, dim)
    n = len(base)
    a, b, sims = vector_search.near_pairs(base, threshold, **(search or {}))
    hub_pairs = (np.zeros(0, np.int64),) * 2 + (np.zeros(0, np.float32),)
    if hub and n:
        hub_pairs = vector_search.near_pairs(base, threshold, queries=_stream(store, hub, dim), **(search or {}))
    hub_rows = dedup_keep.unique(hub_pairs[0])
    hub_ranks, hub_ids = _hub_ranks_ids(store, hub, hub_rows)
    # nodes: the new personas 0..n-1, then the hub personas that pair with one of them
    all_ranks = np.concatenate([ranks, hub_ranks])
    all_ids = pa.concat_arrays([ids, hub_ids])
    fixed = np.concatenate([np.zeros(n, np.bool_), np.ones(len(hub_rows), np.bool_)])
    pa_ = np.concatenate([a, n + np.searchsorted(hub_rows, hub_pairs[0])])
    pb_ = np.concatenate([b, hub_pairs[1]])
    ps_ = np.concatenate([sims, hub_pairs[2]]).astype(np.float32)
    selection = dedup_keep.select(all_ranks, pa_, pb_, ps_, fixed=fixed)
    starts = np.cumsum([0] + [i.rows for i in new])[:-1]
    table = removed_table(selection, all_ids, np.arange(len(all_ranks)), [(int(o), i.shard_id) for o, i in zip(starts, new)])
    removed = selection.removed
    counts = ShardCounts(rows_in=n, rows_out=n - len(removed), filtered=len(removed))
    extra = {"pairs": int(len(a)), "hub_pairs": int(len(hub_pairs[0])), "reasons": {"near_duplicate": int(len(removed))},
             "groups": int(len(dedup_keep.unique(selection.group[removed])))}
    checkpoint.write_shard("all", {"removed": table}, counts, extra=extra)
    return {"counts": counts.__dict__, **extra}


@task(name="embed", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE,
      retry_condition_fn=retry_unless_endpoint_down)
def embed_task(stage: StageRef, shard_id: str, source_file: str, *, llm: dict[str, Any]) -> dict[str, Any]:
    gateway = LLMGateway.for_worker(llm, stage.store)
    p = stage.params
    return embed_shard(stage.checkpoint, stage.store, shard_id, source_file, gateway, p["model"], p["batch_size"], p["dim"])


@task(name="embedding-select", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def select_task(stage: StageRef, shard_id: str, _input: None, *, inputs: list[VectorInput]) -> dict[str, Any]:
    p = stage.params
    return select_all(stage.checkpoint, stage.store, inputs, p["threshold"], p["dim"], p.get("search"))
