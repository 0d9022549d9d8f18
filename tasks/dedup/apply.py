"""Drop the personas a dedup stage removed from one input shard (both dedup stages end with it).

The stage's decision is one "removed" table (tasks/dedup/removed.py: shard, row, persona_id, duplicate_of, similarity,
group); each shard streams its rows through it, so memory is a batch plus that shard's removals.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from personahub.tasks.core.checkpoint import ShardCounts, StageCheckpoint
from personahub.tasks.core.stage import StageRef
from personahub.tasks.core.store import Store
from personahub.tasks.dedup.removed import removed_rows

BATCH_ROWS = 20_000


def apply_removals(checkpoint: StageCheckpoint, store: Store, shard_id: str, source_file: str, removed_file: str,
                   reason: str, batch_rows: int = BATCH_ROWS) -> dict[str, Any]:
    drop = removed_rows(store, removed_file, shard_id)
    rows = kept = 0
    with store.fs.open(store.full(source_file), "rb") as fh:
        parquet = pq.ParquetFile(fh)
        with checkpoint.open_shard(shard_id, {"data": parquet.schema_arrow}) as shard:
            for batch in parquet.iter_batches(batch_size=batch_rows):
                lo, hi = np.searchsorted(drop, [rows, rows + batch.num_rows])
                mask = np.ones(batch.num_rows, np.bool_)
                mask[drop[lo:hi] - rows] = False
                table = pa.Table.from_batches([batch]).filter(pa.array(mask))
                shard.write("data", table)
                rows += batch.num_rows
                kept += table.num_rows
            if len(drop) and drop[-1] >= rows:
                raise ValueError(f"{removed_file} removes row {int(drop[-1])} of {shard_id}, which has {rows} rows")
            shard.counts = ShardCounts(rows_in=rows, rows_out=kept, filtered=rows - kept)
            shard.extra = {"reasons": {reason: rows - kept} if rows > kept else {}}
    return {"shard_id": shard_id, "counts": shard.counts.__dict__}


@task(name="dedup-apply", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def apply_task(stage: StageRef, shard_id: str, source_file: str, *, removed_file: str, reason: str) -> dict[str, Any]:
    return apply_removals(stage.checkpoint, stage.store, shard_id, source_file, removed_file, reason)

