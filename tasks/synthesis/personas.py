"""Which personas a synthesis run uses: a seeded sample of a hub version or of persona files.

Every persona gets a key from its id and the seed (tasks/core/sampling.py); the run takes the n
smallest, in key order, after the optional hop / relation / origin filters. So the first n personas
of a run with --n 40 are exactly the personas of the same run with --n 20, and raising --n only
adds rows. The scan is streamed file by file and keeps at most n candidates: memory is bounded by
n and one file's batch, not by the hub.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from personahub.tasks.core.checkpoint import ShardCounts, StageCheckpoint
from personahub.tasks.core.sampling import seeded_keys
from personahub.tasks.core.stage import ONE_SHARD, StageRef
from personahub.tasks.core.store import Store

SELECTED_SCHEMA = pa.schema([
    ("persona_id", pa.string()),
    ("persona", pa.string()),
    ("hop", pa.int32()),
    ("relation", pa.string()),
    ("origin", pa.string()),
    ("position", pa.int64()),  # 0, 1, 2, ...: the persona's place in the seeded order
])
_OPTIONAL = {"hop": pa.int32(), "relation": pa.string(), "origin": pa.string()}
BATCH_ROWS = 65_536


class PersonaSelection(BaseModel):
    """How many personas, in which seeded order, and which ones qualify."""

    n: int = Field(20, ge=1, description="Personas to synthesize from (the first n of the seeded order)")
    seed: int = Field(0, description="Seed of the persona order")
    hops: list[int] = Field(default_factory=list, description="Only personas at these graph hops (empty = all)")
    relations: list[str] = Field(default_factory=list, description="Only these relations (read, write, ...; empty = all)")
    origins: list[str] = Field(default_factory=list, description="Only these origins (text_to_persona, "
                               "persona_to_persona; empty = all)")
    query: str | None = Field(None, description="Only the personas closest to this text (e.g. 'healthcare workers'), "
                              "by cosine over the hub's stored vectors")
    query_k: int = Field(1000, ge=1, description="How many of the closest personas a query admits")


def persona_keys(persona_ids: Sequence[str], seed: int) -> np.ndarray:
    """The seeded order's key of each persona: ids of any form are hashed first, so a file's own ids
    (integers, UUIDs) sort as uniformly as a hub's sha256 ones."""
    hexed = [hashlib.sha256(str(pid).encode("utf-8")).hexdigest() for pid in persona_ids]
    return seeded_keys(hexed, f"personahub-synthesis-{seed}")


def _normalised(table: pa.Table) -> pa.Table:
    """persona_id, persona and the optional graph columns (null where a file lacks them)."""
    columns = [table.column("persona_id").cast(pa.string()), table.column("persona").cast(pa.string())]
    for name, kind in _OPTIONAL.items():
        columns.append(table.column(name).cast(kind) if name in table.column_names else pa.nulls(table.num_rows, kind))
    return pa.Table.from_arrays(columns, names=["persona_id", "persona", *_OPTIONAL])


def _qualifies(table: pa.Table, selection: PersonaSelection) -> tuple[pa.Array, dict[str, int]]:
    """The rows passing the filters, and how many each filter dropped (first failing filter counts)."""
    keep = pa.array(np.ones(table.num_rows, dtype=bool))
    dropped: dict[str, int] = {}
    for name, wanted in (("hop", selection.hops), ("relation", selection.relations), ("origin", selection.origins)):
        if not wanted:
            continue
        ok = pc.fill_null(pc.is_in(table.column(name), value_set=pa.array(wanted, table.column(name).type)), False)
        n = pc.sum(pc.and_(keep, pc.invert(ok))).as_py() or 0
        if n:
            dropped[f"not_{name}"] = n
        keep = pc.and_(keep, ok)
    return keep, dropped


def select_personas(store: Store, files: Sequence[str], selection: PersonaSelection,
                    only: frozenset[str] | None = None) -> tuple[pa.Table, ShardCounts, dict[str, int]]:
    """The first selection.n qualifying personas of `files` in seeded order, with the counts
    (rows_in = scanned, rows_out = selected, filtered = the rest, by reason). `only`: the ids a
    text query admitted (None: no query)."""
    best: pa.Table | None = None
    best_keys = np.empty(0, dtype=np.uint64)
    reasons: dict[str, int] = {}
    rows_in = 0
    for path in files:
        with store.fs.open(store.full(path), "rb") as fh:
            parquet = pq.ParquetFile(fh)
            wanted = [c for c in ("persona_id", "persona", *_OPTIONAL) if c in parquet.schema_arrow.names]
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=wanted):
                table = _normalised(pa.Table.from_batches([batch]))
                rows_in += table.num_rows
                keep, dropped = _qualifies(table, selection)
                if only is not None:
                    matches = pc.is_in(table.column("persona_id"), value_set=pa.array(sorted(only), pa.string()))
                    n = pc.sum(pc.and_(keep, pc.invert(matches))).as_py() or 0
                    if n:
                        dropped["not_matching_query"] = n
                    keep = pc.and_(keep, matches)
                for reason, n in dropped.items():
                    reasons[reason] = reasons.get(reason, 0) + n
                table = table.filter(keep)
                keys = persona_keys(table.column("persona_id").to_pylist(), selection.seed)
                best = table if best is None else pa.concat_tables([best, table])
                best_keys = np.concatenate([best_keys, keys])
                # The same persona in two files (or twice in one) is one persona. Its copies share
                # its key, so looking among the candidates is enough: a copy of an evicted persona
                # is evicted with it (counted as not sampled), and memory stays n + a batch.
                ids = best.column("persona_id").to_pylist()
                first = {pid: i for i, pid in reversed(list(enumerate(ids)))}
                if len(first) < len(ids):
                    reasons["duplicate_id"] = reasons.get("duplicate_id", 0) + len(ids) - len(first)
                    unique = np.array(sorted(first.values()), dtype=np.int64)
                    best, best_keys = best.take(pa.array(unique)), best_keys[unique]
                if len(best_keys) > selection.n:
                    top = np.argpartition(best_keys, selection.n - 1)[: selection.n]
                    best, best_keys = best.take(pa.array(top)), best_keys[top]
    if best is None or best.num_rows == 0:
        empty = pa.Table.from_pylist([], schema=SELECTED_SCHEMA)
        return empty, ShardCounts(rows_in=rows_in, rows_out=0, filtered=rows_in), reasons
    order = np.argsort(best_keys, kind="stable")
    chosen = best.take(pa.array(order)).append_column("position", pa.array(np.arange(len(order), dtype=np.int64)))
    not_sampled = rows_in - chosen.num_rows - sum(reasons.values())
    if not_sampled:
        reasons["not_sampled"] = not_sampled
    return chosen.cast(SELECTED_SCHEMA), ShardCounts(rows_in=rows_in, rows_out=chosen.num_rows,
                                                      filtered=rows_in - chosen.num_rows), reasons


def write_selection(checkpoint: StageCheckpoint, store: Store, files: Sequence[str], selection: PersonaSelection,
                    only: frozenset[str] | None = None) -> dict[str, Any]:
    table, counts, reasons = select_personas(store, files, selection, only)
    checkpoint.write_shard(ONE_SHARD, {"data": table}, counts, extra={"reasons": dict(sorted(reasons.items()))})
    return {"shard_id": ONE_SHARD, "counts": counts.__dict__}


@task(name="select-personas", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def select_task(stage: StageRef, shard_id: str, _input: None, *, files: list[str],
                query_matches: list[str] | None = None) -> dict[str, Any]:
    """Prefect task: the run's personas, in seeded order, from every persona file of its source
    (only those in the query's match files, when the run has a text query)."""
    only = None
    if query_matches is not None:
        only = frozenset(pid for f in query_matches for pid in stage.store.read_parquet(f, columns=["persona_id"])
                         .column("persona_id").to_pylist())
    return write_selection(stage.checkpoint, stage.store, files, PersonaSelection(**stage.params["selection"]), only)


@task(name="hub-parts", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def hub_parts_task(store_url: str, s3_endpoint_url: str | None, hub: str,
                   version: str | None) -> tuple[str, list[str], dict[str, Any] | None]:
    """Prefect task: (the version, its persona part files, its stored embedding index or None) of a
    hub version (None = latest)."""
    from personahub.tasks.hub import publish

    store = Store(store_url, s3_endpoint_url=s3_endpoint_url)
    manifest = publish.version_manifest(store, hub, version)
    index = (manifest.get("index") or {}).get("embedding")
    return manifest["version"], [part["file"] for part in manifest["parts"]], index
