"""The removed file: what a dedup stage removed, and why.

Both select stages (MinHash, embeddings) write one (`removed/all.parquet`); applying the decision
(tasks/dedup/apply.py) and the hub's index (tasks/hub/index.py) read it back by shard. Its rows are
the audit a user reads: which persona went, which kept persona it duplicates, how similar they are.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from personahub.tasks.core.store import Store
from personahub.tasks.dedup.keep import Selection

REMOVED_SCHEMA = pa.schema([
    pa.field("shard", pa.string()),  # the input shard and row of the removed persona (for applying)
    pa.field("row", pa.int64()),
    pa.field("persona_id", pa.string()),
    pa.field("duplicate_of", pa.string()),  # the kept persona it duplicates
    pa.field("similarity", pa.float32()),  # Jaccard of their word sets (or cosine, embedding stage)
    pa.field("group", pa.string()),  # the group's representative
])


def removed_table(selection: Selection, persona_ids: pa.Array, nodes: np.ndarray,
                  shard_of: list[tuple[int, str]]) -> pa.Table:
    """The audit rows of the removed nodes. nodes: each index's position in the inputs (global row);
    shard_of: (first global row, shard id) of each input whose rows can be removed, sorted."""
    removed = selection.removed
    starts = np.array([o for o, _ in shard_of], np.int64)
    global_rows = nodes[removed]
    which = np.searchsorted(starts, global_rows, side="right") - 1
    shard_ids = pa.array([sid for _, sid in shard_of], pa.string())
    return pa.table({
        "shard": shard_ids.take(pa.array(which)),
        "row": pa.array(global_rows - starts[which], pa.int64()),
        "persona_id": persona_ids.take(pa.array(removed)),
        "duplicate_of": persona_ids.take(pa.array(selection.duplicate_of[removed])),
        "similarity": pa.array(selection.similarity[removed], pa.float32()),
        "group": persona_ids.take(pa.array(selection.group[removed])),
    }, schema=REMOVED_SCHEMA)


def removed_rows(store: Store, removed_file: str, shard_id: str) -> np.ndarray:
    """Rows of `shard_id` the decision removed, sorted."""
    with store.fs.open(store.full(removed_file), "rb") as fh:
        table = pq.read_table(fh, columns=["shard", "row"], filters=[("shard", "=", shard_id)])
    return np.sort(table.column("row").to_numpy())
