"""Exact dedup of personas on persona_id (the hash of the normalised text).

Two passes keep memory bounded by one bucket rather than the whole hub, the same shape the MinHash
stage uses: (1) each input shard is split into buckets by persona_id; (2) each bucket is deduplicated
on its own, since equal ids always land in the same bucket. One deterministic representative is kept
per id (smallest doc_id, then relation, source, text) and every other row is recorded as a duplicate.
"""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from prefect import task
from prefect.cache_policies import NO_CACHE

from personahub.tasks.checkpoint import ShardCounts, StageCheckpoint
from personahub.tasks.run_context import RunContext
from personahub.tasks.store import Store

KEEP_ORDER = [
    ("persona_id", "ascending"),
    ("doc_id", "ascending"),
    ("relation", "ascending"),
    ("source", "ascending"),
    ("persona", "ascending"),  # equal ids may differ in case/spacing: the choice must not depend on input order
]


def bucket_count(total_rows: int, rows_per_bucket: int) -> int:
    return max(1, math.ceil(total_rows / max(1, rows_per_bucket)))


def bucket_name(bucket: int) -> str:
    return f"b{bucket:05d}"


def bucket_of(persona_ids: pa.Array, n_buckets: int) -> list[int]:
    # persona_id is a hex sha256 prefix, so its leading bits are uniformly distributed.
    return [int(pid[:8], 16) % n_buckets for pid in persona_ids.to_pylist()]


def partition_shard(
    checkpoint: StageCheckpoint, store: Store, shard_id: str, personas_file: str, n_buckets: int
) -> dict[str, Any]:
    """Pass 1: split one persona shard into per-bucket tables (written as kinds b00000, b00001, …)."""
    table = store.read_parquet(personas_file)
    buckets = pa.array(bucket_of(table.column("persona_id"), n_buckets), type=pa.int32())
    tables = {}
    for bucket in sorted(set(buckets.to_pylist())):
        tables[bucket_name(bucket)] = table.filter(pc.equal(buckets, bucket))
    counts = ShardCounts(rows_in=table.num_rows, rows_out=table.num_rows)
    checkpoint.write_shard(shard_id, tables, counts)
    return {"shard_id": shard_id, "counts": counts.__dict__}


def dedup_bucket(checkpoint: StageCheckpoint, store: Store, bucket_id: str, files: list[str]) -> dict[str, Any]:
    """Pass 2: keep one row per persona_id within a bucket, record the rest as duplicates."""
    parts = [store.read_parquet(f) for f in files]
    table = pa.concat_tables(parts) if parts else None
    if table is None or table.num_rows == 0:
        kept = dupes = pa.table({})
        rows_in = 0
    else:
        table = table.sort_by(KEEP_ORDER)
        ids = table.column("persona_id").to_pylist()
        first = [i == 0 or ids[i] != ids[i - 1] for i in range(len(ids))]
        mask = pa.array(first)
        kept = table.filter(mask)
        kept_doc = dict(zip(kept.column("persona_id").to_pylist(), kept.column("doc_id").to_pylist()))
        dupes = table.filter(pc.invert(mask)).select(["persona_id", "persona", "doc_id", "relation", "source"])
        dupes = dupes.append_column(
            "kept_doc_id", pa.array([kept_doc[pid] for pid in dupes.column("persona_id").to_pylist()], pa.string())
        )
        rows_in = table.num_rows
    counts = ShardCounts(rows_in=rows_in, rows_out=kept.num_rows, filtered=dupes.num_rows)
    checkpoint.write_shard(bucket_id, {"data": kept, "duplicates": dupes}, counts)
    return {"shard_id": bucket_id, "counts": counts.__dict__}


def files_by_bucket(partition_manifest: dict[str, Any]) -> dict[str, list[str]]:
    """Bucket name → the pass-1 files holding it, in shard order."""
    out: dict[str, list[str]] = {}
    for shard in partition_manifest["shards"]:
        for kind, path in sorted(shard["files"].items()):
            out.setdefault(kind, []).append(path)
    return dict(sorted(out.items()))


@task(name="dedup-exact-partition", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def partition_task(ctx: RunContext, params: dict[str, Any], shard_id: str, personas_file: str) -> dict[str, Any]:
    """Prefect task: pass 1 for one persona shard."""
    checkpoint = ctx.checkpoint("dedup_exact_partition", params)
    return partition_shard(checkpoint, ctx.store, shard_id, personas_file, params["n_buckets"])


@task(name="dedup-exact-bucket", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def dedup_bucket_task(ctx: RunContext, params: dict[str, Any], bucket_id: str, files: list[str]) -> dict[str, Any]:
    """Prefect task: pass 2 for one bucket."""
    return dedup_bucket(ctx.checkpoint("dedup_exact", params), ctx.store, bucket_id, files)
