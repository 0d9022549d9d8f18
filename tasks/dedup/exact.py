"""Exact dedup on a content hash: personas on persona_id, documents on doc_id.

Two passes keep memory bounded by one bucket rather than the whole hub or crawl, the same shape the
MinHash stage uses: (1) each input shard is split into buckets by its key; (2) each bucket is
deduplicated on its own, since equal keys always land in the same bucket. One deterministic
representative is kept per key (the first in a fixed column order, whatever the input order) and
every other row is recorded as a duplicate of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from personahub.tasks.core.checkpoint import Manifest, ShardCounts, StageCheckpoint
from personahub.tasks.core.stage import StageRef
from personahub.tasks.core.store import Store


@dataclass(frozen=True)
class DedupSpec:
    key: str  # rows with equal values here are duplicates (a hex hash, so its bits are uniform)
    order: tuple[str, ...]  # ascending tie-break: the first row in this order is kept
    kept_refs: tuple[str, ...]  # columns of the kept row recorded beside each duplicate as kept_<col>
    dupe_columns: tuple[str, ...]  # columns of a duplicate kept in the duplicates table


SPECS = {
    # Equal persona ids may differ in case/spacing: the text is in the order so the choice is stable.
    # The lowest hop wins, so a persona found both in a document and by expansion keeps its document.
    "personas": DedupSpec("persona_id", ("hop", "doc_id", "relation", "source", "parent_id", "persona"), ("doc_id", "hop"),
                          ("persona_id", "persona", "hop", "doc_id", "relation", "source", "parent_id")),
    "documents": DedupSpec("doc_id", ("source", "record"), ("source", "record"), ("doc_id", "source", "record", "url")),
}

# A filter applied to a bucket before dedup: returns the rows kept and {reason: rows removed}.
BucketFilter = Callable[[pa.Table], tuple[pa.Table, dict[str, int]]]


def bucket_count(total_rows: int, rows_per_bucket: int) -> int:
    return max(1, math.ceil(total_rows / max(1, rows_per_bucket)))


def bucket_name(bucket: int) -> str:
    return f"b{bucket:05d}"


def bucket_of(keys: pa.Array, n_buckets: int) -> list[int]:
    return [int(key[:8], 16) % n_buckets for key in keys.to_pylist()]


def partition_shard(
    checkpoint: StageCheckpoint, store: Store, shard_id: str, source_file: str, n_buckets: int, key: str,
    batch_rows: int = 1_000,
) -> dict[str, Any]:
    """Pass 1: split one shard into per-bucket files (kinds b00000, b00001, …), a row group at a
    time, so memory holds one batch however large the shard."""
    rows = 0
    with store.fs.open(store.full(source_file), "rb") as fh:
        parquet = pq.ParquetFile(fh)
        with checkpoint.open_shard(shard_id, {}, any_kind_schema=parquet.schema_arrow) as shard:
            for batch in parquet.iter_batches(batch_size=batch_rows):
                table = pa.Table.from_batches([batch])
                buckets = pa.array(bucket_of(table.column(key), n_buckets), type=pa.int32())
                for b in sorted(set(buckets.to_pylist())):
                    shard.write(bucket_name(b), table.filter(pc.equal(buckets, b)))
                rows += table.num_rows
            shard.counts = ShardCounts(rows_in=rows, rows_out=rows)
    return {"shard_id": shard_id, "counts": shard.counts.__dict__}


def split_first(table: pa.Table, spec: DedupSpec) -> tuple[pa.Table, pa.Table]:
    """(first row per key, every other row with kept_<ref> columns), independent of input order."""
    table = table.sort_by([(spec.key, "ascending")] + [(c, "ascending") for c in spec.order])
    keys = table.column(spec.key).to_pylist()
    mask = pa.array([i == 0 or keys[i] != keys[i - 1] for i in range(len(keys))], pa.bool_())
    kept = table.filter(mask)
    dupes = table.filter(pc.invert(mask)).select(list(spec.dupe_columns))
    kept_rows = {row[spec.key]: row for row in kept.select([spec.key, *spec.kept_refs]).to_pylist()}
    dupe_keys = dupes.column(spec.key).to_pylist()
    for ref in spec.kept_refs:
        values = [kept_rows[k][ref] for k in dupe_keys]
        dupes = dupes.append_column(f"kept_{ref}", pa.array(values, type=kept.schema.field(ref).type))
    return kept, dupes


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns, in order (absent ones null): files of one bucket may
    come from several stages."""
    arrays = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
              for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def dedup_bucket(
    checkpoint: StageCheckpoint,
    store: Store,
    bucket_id: str,
    files: list[str],
    spec: DedupSpec,
    prefilter: BucketFilter | None = None,
    batch_rows: int = 1_000,
) -> dict[str, Any]:
    """Pass 2: keep one row per key within a bucket, record the rest as duplicates.

    Only the narrow columns the decision needs (key, order, references) are held for the whole
    bucket; the full rows (with their text) are then streamed file by file through the kept set, so
    memory is those narrow columns plus one batch, however much text the bucket holds.
    """
    schemas = []
    for f in files:
        with store.fs.open(store.full(f), "rb") as fh:
            schemas.append(pq.ParquetFile(fh).schema_arrow)
    schema = pa.unify_schemas(schemas, promote_options="default")
    wanted = list(dict.fromkeys([spec.key, *spec.order, *spec.kept_refs, *spec.dupe_columns]))
    narrow_schema = pa.schema([schema.field(c) if c in schema.names else pa.field(c, pa.string()) for c in wanted])
    parts = []
    for index, (f, file_schema) in enumerate(zip(files, schemas)):
        part = _conform(store.read_parquet(f, columns=[c for c in wanted if c in file_schema.names]), narrow_schema)
        part = part.append_column("_file", pa.array([index] * part.num_rows, pa.int32()))
        parts.append(part.append_column("_row", pa.array(range(part.num_rows), pa.int64())))
    table = pa.concat_tables(parts)
    rows_in = table.num_rows
    reasons: dict[str, int] = {}
    if prefilter is not None:
        table, reasons = prefilter(table)
    kept, dupes = split_first(table, spec)
    if dupes.num_rows:
        reasons["duplicate"] = dupes.num_rows
    keep: dict[int, set[int]] = {}
    for file_index, row in zip(kept.column("_file").to_pylist(), kept.column("_row").to_pylist()):
        keep.setdefault(file_index, set()).add(row)
    with checkpoint.open_shard(bucket_id, {"data": schema, "duplicates": dupes.schema}) as shard:
        for index, f in enumerate(files):
            rows = keep.get(index, set())
            if not rows:
                continue
            offset = 0
            with store.fs.open(store.full(f), "rb") as fh:
                for batch in pq.ParquetFile(fh).iter_batches(batch_size=batch_rows):
                    mask = pa.array([offset + i in rows for i in range(batch.num_rows)], pa.bool_())
                    offset += batch.num_rows
                    shard.write("data", _conform(pa.Table.from_batches([batch]).filter(mask), schema))
        shard.write("duplicates", dupes)
        shard.counts = ShardCounts(rows_in=rows_in, rows_out=kept.num_rows, filtered=rows_in - kept.num_rows)
        shard.extra = {"reasons": reasons}
    return {"shard_id": bucket_id, "counts": shard.counts.__dict__, "reasons": reasons}


def files_by_bucket(partition_manifest: Manifest) -> dict[str, list[str]]:
    """Bucket name → the pass-1 files holding it, in shard order."""
    out: dict[str, list[str]] = {}
    for shard in partition_manifest.shards:
        for kind, path in sorted(shard.files.items()):
            out.setdefault(kind, []).append(path)
    return dict(sorted(out.items()))


@task(name="dedup-exact-partition", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def partition_task(stage: StageRef, shard_id: str, source_file: str) -> dict[str, Any]:
    """Prefect task: pass 1 for one shard (params: n_buckets, spec)."""
    spec = SPECS[stage.params["spec"]]
    return partition_shard(stage.checkpoint, stage.store, shard_id, source_file, stage.params["n_buckets"], spec.key)


@task(name="dedup-exact-bucket", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def dedup_bucket_task(
    stage: StageRef, bucket_id: str, files: list[str], *, prefilter: BucketFilter | None = None
) -> dict[str, Any]:
    """Prefect task: pass 2 for one bucket (params: spec)."""
    return dedup_bucket(stage.checkpoint, stage.store, bucket_id, files, SPECS[stage.params["spec"]], prefilter)
