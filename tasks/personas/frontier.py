"""The frontier of a Persona-to-Persona hop: which personas are expanded next.

Only personas found in the previous hop are candidates; one already expanded in this run, or
already in the published hub, is not expanded again; and at most `max_new` are taken, chosen by a
seeded hash of their id (bottom-k), so a run's size is predictable and reruns choose the same ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from personahub.tasks.core.sampling import seeded_keys
from personahub.tasks.core.checkpoint import ShardCounts, StageCheckpoint
from personahub.tasks.core.store import Store

FRONTIER_COLUMNS = ["persona_id", "persona", "doc_id", "source", "hop"]


def hop_key(persona_ids: list[str], seed: int, hop: int) -> np.ndarray:
    """A seeded key per persona (tasks/core/sampling.py), different at each hop."""
    return seeded_keys(persona_ids, f"personahub-frontier-{seed}-{hop}")


def read_ids(store: Store, files: list[str]) -> set[str]:
    ids: set[str] = set()
    for f in files:
        ids.update(store.read_parquet(f, columns=["persona_id"]).column("persona_id").to_pylist())
    return ids


def select_frontier(
    store: Store, candidate_files: list[str], exclude: set[str], max_new: int, seed: int, hop: int
) -> pa.Table:
    """Distinct candidates not in `exclude`, at most max_new of them (seeded), in persona_id order."""
    parts = [store.read_parquet(f, columns=FRONTIER_COLUMNS) for f in candidate_files]
    if not parts:
        return pa.table({c: pa.array([], pa.string()) for c in FRONTIER_COLUMNS})
    table = pa.concat_tables(parts).sort_by([("persona_id", "ascending"), ("doc_id", "ascending")])
    ids = table.column("persona_id").to_pylist()
    keep = [i for i in range(len(ids)) if (i == 0 or ids[i] != ids[i - 1]) and ids[i] not in exclude]
    table = table.take(pa.array(keep, pa.int64()))
    if table.num_rows > max_new:
        keys = hop_key(table.column("persona_id").to_pylist(), seed, hop)
        threshold = np.partition(keys, max_new - 1)[max_new - 1]
        table = table.filter(pa.array(keys <= threshold))
    return table


def write_frontier(checkpoint: StageCheckpoint, table: pa.Table, per_shard: int, candidates: int) -> dict[str, Any]:
    """The frontier as shards of per_shard personas; the counts say how many candidates were cut."""
    n_shards = max(1, -(-table.num_rows // per_shard))
    for i in range(n_shards):
        part = table.slice(i * per_shard, per_shard)
        rows_in = part.num_rows + (candidates - table.num_rows if i == 0 else 0)
        checkpoint.write_shard(f"f{i:05d}", {"data": part}, ShardCounts(rows_in=rows_in, rows_out=part.num_rows,
                                                                          filtered=rows_in - part.num_rows),
                               extra={"reasons": {"not_expanded": rows_in - part.num_rows} if rows_in > part.num_rows else {}})
    return checkpoint.finalize(expected_shards=[f"f{i:05d}" for i in range(n_shards)])


def candidate_count(store: Store, files: list[str]) -> int:
    return sum(store.read_parquet(f, columns=["persona_id"]).num_rows for f in files)
