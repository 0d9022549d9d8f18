"""Personas by a text query ("healthcare workers"), answered from a hub version's stored embedding
vectors: the query is embedded once with the model that made the index, and the top k personas by
cosine are the candidates the run's seeded selection draws from. The hub is never re-embedded, and
the scan holds one vector shard and the k best at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from personahub.tasks.core.checkpoint import ShardCounts
from personahub.tasks.core.stage import ONE_SHARD, StageRef
from personahub.tasks.core.store import Store
from personahub.tasks.dedup.embedding_stage import to_float32
from personahub.tasks.llm.endpoint_breaker import retry_unless_endpoint_down
from personahub.tasks.llm.gateway import LLMGateway

MATCH_SCHEMA = pa.schema([("persona_id", pa.string()), ("score", pa.float32()), ("rank", pa.int64())])


def top_k(store: Store, index: Mapping[str, Any], query: np.ndarray, k: int) -> tuple[list[str], np.ndarray, int]:
    """(persona ids, cosines) of the k stored vectors closest to the unit vector `query`, best
    first, and how many vectors were scanned."""
    best_ids: list[str] = []
    best = np.empty(0, np.float32)
    scanned = 0
    for shard in index["shards"]:
        table = store.read_parquet(shard["vectors"], columns=["persona_id", "vector"])
        scores = to_float32(table.column("vector"), int(index["dim"])) @ query
        scanned += len(scores)
        ids = best_ids + table.column("persona_id").to_pylist()
        scores = np.concatenate([best, scores])
        keep = np.argsort(-scores, kind="stable")[:k]
        best_ids, best = [ids[i] for i in keep], scores[keep]
    return best_ids, best, scanned


@task(name="query-personas", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE,
      retry_condition_fn=retry_unless_endpoint_down)
async def query_task(stage: StageRef, shard_id: str, _input: None, *, index: Mapping[str, Any],
                     embeddings: Mapping[str, Any]) -> dict[str, Any]:
    """Prefect task: the query's top k personas of the hub version, as one shard."""
    query, k = stage.params["query"], int(stage.params["k"])
    async with LLMGateway.for_worker(embeddings, stage.store) as gateway:
        result = await gateway.aembed_many([query], model=embeddings["model"])
    ids, scores, scanned = top_k(stage.store, index, result.vectors[0], k)
    table = pa.Table.from_pylist([{"persona_id": pid, "score": float(s), "rank": i} for i, (pid, s) in enumerate(zip(ids, scores))],
                                 schema=MATCH_SCHEMA)
    counts = ShardCounts(rows_in=scanned, rows_out=len(ids), filtered=scanned - len(ids))
    stage.checkpoint.write_shard(ONE_SHARD, {"data": table}, counts,
                                 extra={"reasons": {"not_in_top_k": scanned - len(ids)} if scanned > len(ids) else {},
                                        "usage": gateway.usage.as_dict()})
    return {"shard_id": ONE_SHARD, "counts": counts.__dict__}
