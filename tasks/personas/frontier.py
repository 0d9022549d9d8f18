"""The frontier of a Persona-to-Persona hop: which personas are expanded next.

Only personas found in the previous hop are candidates; one already expanded in this run, or
already in the published hub, is not expanded again; and at most `max_new` are taken, chosen by a
seeded hash of their id (bottom-k), so a run's size is predictable and reruns choose the same ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from personahub.tasks.core.sampling import seeded_keys
from personahub.tasks.core.checkpoint import ShardCounts, StageCheckpoint
from personahub.tasks.core.stage import StageRef
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


def read_candidates(store: Store, files: list[str]) -> pa.Table:
    """The previous hop's personas (the frontier's columns), every file together."""
    parts = [store.read_parquet(f, columns=FRONTIER_COLUMNS) for f in files]
    return pa.concat_tables(parts) if parts else pa.table({c: pa.array([], pa.string()) for c in FRONTIER_COLUMNS})


def select_frontier(candidates: pa.Table, exclude: set[str], max_new: int, seed: int, hop: int) -> pa.Table:
    """Distinct candidates not in `exclude`, at most max_new of them (seeded), in persona_id order."""
    table = candidates.sort_by([("persona_id", "ascending"), ("doc_id", "ascending")])
    ids = table.column("persona_id").to_pylist()
    keep = [i for i in range(len(ids)) if (i == 0 or ids[i] != ids[i - 1]) and ids[i] not in exclude]
    table = table.take(pa.array(keep, pa.int64()))
    if table.num_rows > max_new:
        keys = hop_key(table.column("persona_id").to_pylist(), seed, hop)
        threshold = np.partition(keys, max_new - 1)[max_new - 1]
        table = table.filter(pa.array(keys <= threshold))
    return table


def frontier_shard(checkpoint: StageCheckpoint, store: Store, shard_id: str, candidate_files: list[str],
                   exclude_files: list[str], max_new: int, seed: int, hop: int) -> ShardCounts:
    """The frontier as one shard; its counts say how many candidates were not expanded."""
    candidates = read_candidates(store, candidate_files)
    table = select_frontier(candidates, read_ids(store, exclude_files), max_new, seed, hop)
    cut = candidates.num_rows - table.num_rows
    counts = ShardCounts(rows_in=candidates.num_rows, rows_out=table.num_rows, filtered=cut)
    checkpoint.write_shard(shard_id, {"data": table}, counts, extra={"reasons": {"not_expanded": cut} if cut else {}})
    return counts


@task(name="p2p-frontier", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def frontier_task(stage: StageRef, shard_id: str, _input: None, *, candidate_files: list[str],
                  exclude_files: list[str]) -> dict[str, Any]:
    """Prefect task: who hop `hop` expands, from the previous hop's personas (candidate_files),
    leaving out the hub's and every earlier hop's (exclude_files). params: hop, max_new, seed."""
    p = stage.params
    counts = frontier_shard(stage.checkpoint, stage.store, shard_id, candidate_files, exclude_files,
                            int(p["max_new"]), int(p["seed"]), int(p["hop"]))
    return {"shard_id": shard_id, "counts": counts.__dict__}
