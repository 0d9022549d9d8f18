"""MinHash LSH dedup (word 1-grams, 128 permutations, Jaccard 0.9), in three sharded steps.

1. sketch (one task per persona shard): signatures, exact word sets and rank keys are stored as
   Parquet next to the personas (kind "sketches"); each (persona, band) key is written to one of P
   partition files (kinds "bands_pNNNN"), P a power of two, by the key's top bits.
2. pairs (one task per partition): the candidate pairs are a join of band keys: the partition's
   rows sorted by key, each run of equal keys a bucket. Memory is one partition.
3. select (one task): every candidate is verified on the exact word sets (Jaccard >= threshold), the
   verified pairs grouped and resolved by dedup_keep.select; the removed personas are written with
   the kept persona they duplicate and their Jaccard (kind "removed", the audit table).
Then dedup_apply drops the removed rows from each shard.

Incremental: the existing hub's sketches and band files (stored with its version) join the same
steps as extra, "fixed" inputs: hub personas are never removed, hub-hub pairs are never formed, so
nothing of the hub is recomputed. Partitions by top bits make a hub partitioned into 2^h files
joinable with a run partitioned into 2^k.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from personahub.tasks.dedup import keep as dedup_keep

from personahub.tasks.dedup import minhash
from personahub.tasks.dedup.removed import removed_table
from personahub.tasks.core.checkpoint import ShardCounts, StageCheckpoint
from personahub.tasks.core.stage import StageRef
from personahub.tasks.core.store import Store, incompressible

# Band rows per partition (16 bytes each plus sort buffers): ~0.2 GB of arrays in the pairs step.
BAND_ROWS_PER_PARTITION = 8_000_000
# A bucket's members are paired with its first (lowest-ranked) member and with the WINDOW members
# ranked just before them: all pairs for buckets up to WINDOW + 1 members, linear beyond (a bucket of
# 10,000 exact copies would otherwise make 50M pairs).
WINDOW = 32
SKETCH_BATCH_ROWS = 50_000
JACCARD_CHUNK = 1 << 20  # pairs per verification chunk when verifying on several threads

SKETCH_SCHEMA = pa.schema([
    pa.field("persona_id", pa.string()),
    incompressible(pa.field("rank", pa.uint64())),  # minhash.rank_keys without the tier bit, set on reading
    incompressible(pa.field("signature", pa.binary(4 * minhash.NUM_PERM))),
    pa.field("words", pa.list_(pa.uint64())),
])
BAND_SCHEMA = pa.schema([incompressible(pa.field("key", pa.uint64())), incompressible(pa.field("rank", pa.uint64())),
                         pa.field("row", pa.uint32())])
PAIR_SCHEMA = pa.schema([pa.field("a", pa.uint32()), pa.field("b", pa.uint32())])


@dataclass(frozen=True)
class SketchInput:
    """One shard of sketches in a dedup: its global node offset and whether it is the fixed hub."""

    sketches: str
    bands: dict[int, str]  # partition -> band file
    partition_bits: int
    offset: int
    rows: int
    fixed: bool


def partition_bits(total_rows: int, bands: int, rows_per_partition: int = BAND_ROWS_PER_PARTITION) -> int:
    return max(0, math.ceil(math.log2(max(1, total_rows * bands / rows_per_partition))))


def partition_kind(partition: int) -> str:
    return f"bands_p{partition:05d}"


def _partition_of(keys: np.ndarray, bits: int) -> np.ndarray:
    return (keys >> np.uint64(64 - bits)).astype(np.int64) if bits else np.zeros(len(keys), np.int64)


# --- step 1: sketches --------------------------------------------------------------------------
def sketch_shard(checkpoint: StageCheckpoint, store: Store, shard_id: str, source_file: str, banding: minhash.Banding,
                 bits: int, text_column: str = "persona", batch_rows: int = SKETCH_BATCH_ROWS) -> dict[str, Any]:
    """Signatures, word sets and partitioned band keys of one persona shard, a batch at a time."""
    rows = empty = 0
    with store.fs.open(store.full(source_file), "rb") as fh:
        parquet = pq.ParquetFile(fh)
        columns = [text_column] + minhash.rank_columns(parquet.schema_arrow.names)
        with checkpoint.open_shard(shard_id, {"sketches": SKETCH_SCHEMA}, any_kind_schema=BAND_SCHEMA) as shard:
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
                ranks = minhash.batch_rank_keys(batch)
                sk = minhash.sketch(batch.column(text_column), banding)
                words = pa.ListArray.from_arrays(pa.array(sk.set_offsets, pa.int64()).cast(pa.int32()),
                                                 pa.array(sk.set_values, pa.uint64()))
                shard.write("sketches", pa.table({
                    "persona_id": batch.column("persona_id"),
                    "rank": pa.array(ranks, pa.uint64()),
                    "signature": pa.FixedSizeBinaryArray.from_buffers(
                        pa.binary(4 * minhash.NUM_PERM), len(ranks), [None, pa.py_buffer(sk.signatures.tobytes())]),
                    "words": words,
                }, schema=SKETCH_SCHEMA))
                # A persona without words is never a candidate (all of them would collide).
                live = np.flatnonzero(~sk.empty)
                keys = sk.band_keys[live].ravel()
                node = np.repeat(live + rows, banding.bands).astype(np.uint32)
                rank = np.repeat(ranks[live], banding.bands)
                part = _partition_of(keys, bits)
                order = np.argsort(part, kind="stable")
                bounds = np.searchsorted(part[order], np.arange((1 << bits) + 1))
                for p in range(1 << bits):
                    sel = order[bounds[p]:bounds[p + 1]]
                    # sorted by key here, in parallel, so the pairs step merges sorted runs
                    sel = sel[np.argsort(keys[sel], kind="stable")]
                    if len(sel):
                        shard.write(partition_kind(p), pa.table({"key": keys[sel], "rank": rank[sel], "row": node[sel]},
                                                                schema=BAND_SCHEMA))
                rows += batch.num_rows
                empty += int(sk.empty.sum())
            shard.counts = ShardCounts(rows_in=rows, rows_out=rows)
            shard.extra = {"no_words": empty}
    return {"shard_id": shard_id, "counts": shard.counts.__dict__}


# --- step 2: candidate pairs -------------------------------------------------------------------
@numba.njit(nogil=True, cache=True)
def _bucket_pairs(keys, nodes, fixed, window, out_a, out_b):  # pragma: no cover - compiled
    """Pairs within runs of equal keys (rows sorted by key, then rank); returns how many. With
    empty outputs it only counts, so the caller can size them (count, allocate, fill)."""
    fill = out_a.shape[0] > 0
    n = keys.shape[0]
    count = 0
    s = 0
    while s < n:
        e = s + 1
        while e < n and keys[e] == keys[s]:
            e += 1
        for i in range(s + 1, e):
            lo = max(s, i - window)
            # the window of members ranked just before i, and the bucket's first member if outside it
            for j in range(lo - 1 if lo > s else lo, i):
                src = s if j == lo - 1 else j
                if fixed[src] and fixed[i]:
                    continue
                if fill:
                    out_a[count] = nodes[src]
                    out_b[count] = nodes[i]
                count += 1
        s = e
    return count


def bucket_pairs(keys: np.ndarray, ranks: np.ndarray, nodes: np.ndarray, fixed: np.ndarray,
                 window: int = WINDOW) -> np.ndarray:
    """Candidate pairs (packed a << 32 | b, a the earlier-ranked node), unique, from band rows."""
    # The sketch step wrote each file sorted by key: a stable sort merges those runs (timsort).
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    # Most keys are unique (a band shared by nobody): only rows in buckets of 2+ go further.
    same = sorted_keys[1:] == sorted_keys[:-1]
    shared = np.zeros(len(keys), np.bool_)
    shared[1:] |= same
    shared[:-1] |= same
    rows = order[shared]
    rows = rows[np.lexsort((nodes[rows], ranks[rows], keys[rows]))]
    k, nd, fx = keys[rows], nodes[rows].astype(np.uint32), fixed[rows]
    none = np.zeros(0, np.uint32)
    a = np.empty(_bucket_pairs(k, nd, fx, window, none, none), np.uint32)
    b = np.empty_like(a)
    _bucket_pairs(k, nd, fx, window, a, b)
    return dedup_keep.unique((a.astype(np.uint64) << np.uint64(32)) | b.astype(np.uint64))


def _read_partition(store: Store, inputs: Sequence[SketchInput], partition: int, bits: int) -> tuple[np.ndarray, ...]:
    """All band rows of one partition (of 2^bits) across inputs, with global nodes and tiers."""
    keys, ranks, nodes, fixed = [], [], [], []
    for inp in inputs:
        if inp.partition_bits >= bits:  # the input's finer partitions that fall in this one
            shift = inp.partition_bits - bits
            parts = range(partition << shift, (partition + 1) << shift)
        else:  # a coarser input partition: read it and keep this partition's keys
            parts = [partition >> (bits - inp.partition_bits)]
        for p in parts:
            path = inp.bands.get(p)
            if path is None:
                continue
            t = store.read_parquet(path)
            k = t.column("key").to_numpy()
            keep = _partition_of(k, bits) == partition if inp.partition_bits < bits else slice(None)
            k = k[keep]
            r = t.column("rank").to_numpy()[keep]
            keys.append(k)
            ranks.append(dedup_keep.tiered(r, inp.fixed))
            nodes.append(t.column("row").to_numpy()[keep].astype(np.int64) + inp.offset)
            fixed.append(np.full(len(k), inp.fixed))
    if not keys:
        return tuple(np.zeros(0, t) for t in (np.uint64, np.uint64, np.int64, np.bool_))
    return np.concatenate(keys), np.concatenate(ranks), np.concatenate(nodes), np.concatenate(fixed)


def pairs_partition(checkpoint: StageCheckpoint, store: Store, partition: int, bits: int,
                    inputs: Sequence[SketchInput]) -> dict[str, Any]:
    keys, ranks, nodes, fixed = _read_partition(store, inputs, partition, bits)
    packed = bucket_pairs(keys, ranks, nodes, fixed)
    table = pa.table({"a": (packed >> np.uint64(32)).astype(np.uint32), "b": (packed & np.uint64(0xFFFFFFFF)).astype(np.uint32)},
                     schema=PAIR_SCHEMA)
    checkpoint.write_shard(f"p{partition:05d}", {"pairs": table},
                           ShardCounts(rows_in=len(packed), rows_out=len(packed)), extra={"band_rows": len(keys)})
    return {"partition": partition, "band_rows": len(keys), "pairs": len(packed)}


# --- step 3: verify and select -----------------------------------------------------------------
@numba.njit(nogil=True, cache=True)
def _jaccard(a, b, offsets, values):  # pragma: no cover - compiled
    out = np.empty(a.shape[0], np.float32)
    for p in range(a.shape[0]):
        i, i_end = offsets[a[p]], offsets[a[p] + 1]
        j, j_end = offsets[b[p]], offsets[b[p] + 1]
        union = (i_end - i) + (j_end - j)
        inter = 0
        while i < i_end and j < j_end:
            if values[i] == values[j]:
                inter += 1
                i += 1
                j += 1
            elif values[i] < values[j]:
                i += 1
            else:
                j += 1
        union -= inter
        out[p] = inter / union if union else np.float32(1.0)
    return out


def jaccard(a: np.ndarray, b: np.ndarray, offsets: np.ndarray, values: np.ndarray, threads: int = 1) -> np.ndarray:
    """Exact Jaccard of word sets a[i], b[i] (indices into a CSR of sorted distinct word hashes),
    in `threads` chunks at once (the compiled loop releases the GIL)."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    if threads <= 1 or len(a) < 2 * JACCARD_CHUNK:
        return _jaccard(a, b, offsets, values)
    out = np.empty(len(a), np.float32)

    def chunk(start: int) -> None:
        out[start : start + JACCARD_CHUNK] = _jaccard(a[start : start + JACCARD_CHUNK], b[start : start + JACCARD_CHUNK],
                                                      offsets, values)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(chunk, range(0, len(a), JACCARD_CHUNK)))
    return out


def node_index(a: np.ndarray, b: np.ndarray, total: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct nodes of pairs (a, b) of global rows < total, sorted, and each pair's nodes as
    indices into them. One pass over a mask and a dense map: at 10M rows and 133M endpoints 2 s,
    where unique + searchsorted took 60 s."""
    mask = np.zeros(total, np.bool_)
    mask[a] = True
    mask[b] = True
    nodes = np.flatnonzero(mask)
    index = np.cumsum(mask, dtype=np.int64 if len(nodes) >= 2**31 else np.int32) - 1
    return nodes, index[a], index[b]


@dataclass
class NodeData:
    """Persona id, rank and word set of the nodes a selection needs, by compact index."""

    nodes: np.ndarray  # global node ids, sorted
    persona_id: pa.Array
    rank: np.ndarray
    fixed: np.ndarray
    set_offsets: np.ndarray
    set_values: np.ndarray


def load_nodes(store: Store, inputs: Sequence[SketchInput], nodes: np.ndarray, columns: Iterable[str] = ("persona_id", "rank", "words")) -> NodeData:
    """Read only the rows of `nodes` (sorted global ids) from the sketch files they live in."""
    ids: list[pa.Array] = []
    ranks, fixed, offsets, values = [], [], [np.zeros(1, np.int64)], []
    total = 0
    for inp in inputs:
        lo, hi = np.searchsorted(nodes, [inp.offset, inp.offset + inp.rows])
        if lo == hi:
            continue
        rows = pa.array(nodes[lo:hi] - inp.offset)
        t = store.read_parquet(inp.sketches, columns=list(columns)).take(rows)
        ids.append(t.column("persona_id").combine_chunks())
        r = t.column("rank").to_numpy()
        ranks.append(dedup_keep.tiered(r, inp.fixed))
        fixed.append(np.full(len(r), inp.fixed))
        words = t.column("words").combine_chunks()
        offs = words.offsets.to_numpy().astype(np.int64)
        offsets.append(offs[1:] - offs[0] + total)
        flat = words.values.to_numpy()[offs[0]:offs[-1]]
        values.append(flat)
        total += len(flat)
    cat = (lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt))
    persona_ids = pa.concat_arrays(ids) if ids else pa.array([], pa.string())
    return NodeData(nodes, persona_ids, cat(ranks, np.uint64), cat(fixed, np.bool_), np.concatenate(offsets),
                    cat(values, np.uint64))


def read_pairs(store: Store, files: Sequence[str]) -> np.ndarray:
    parts = []
    for f in files:
        t = store.read_parquet(f)
        parts.append((t.column("a").to_numpy().astype(np.uint64) << np.uint64(32)) | t.column("b").to_numpy().astype(np.uint64))
    # each partition's pairs are unique and sorted; a pair can recur across partitions (other bands)
    return dedup_keep.unique(np.concatenate(parts), sorted_runs=True) if parts else np.zeros(0, np.uint64)


def select_all(checkpoint: StageCheckpoint, store: Store, inputs: Sequence[SketchInput], pair_files: Sequence[str],
               threshold: float) -> dict[str, Any]:
    """Verify every candidate pair on its word sets and decide what is removed (one shard, "all")."""
    packed = read_pairs(store, pair_files)
    a_glob = (packed >> np.uint64(32)).astype(np.int64)
    b_glob = (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)
    nodes, a, b = node_index(a_glob, b_glob, max((inp.offset + inp.rows for inp in inputs), default=0))
    del a_glob, b_glob
    data = load_nodes(store, inputs, nodes)
    sims = jaccard(a, b, data.set_offsets, data.set_values, threads=os.cpu_count() or 1)
    verified = sims >= np.float32(threshold)
    selection = dedup_keep.select(data.rank, a[verified], b[verified], sims[verified], fixed=data.fixed)
    new_inputs = [(inp.offset, inp.sketches) for inp in inputs if not inp.fixed]
    shard_of = [(offset, _shard_id_of(path)) for offset, path in new_inputs]
    removed = removed_table(selection, data.persona_id, data.nodes, shard_of)
    total_new = sum(inp.rows for inp in inputs if not inp.fixed)
    counts = ShardCounts(rows_in=total_new, rows_out=total_new - removed.num_rows, filtered=removed.num_rows)
    extra = {"candidates": int(len(packed)), "verified_pairs": int(verified.sum()), "reasons": {"near_duplicate": removed.num_rows},
             "groups": int(len(dedup_keep.unique(selection.group[selection.removed])))}
    checkpoint.write_shard("all", {"removed": removed}, counts, extra=extra)
    return {"counts": counts.__dict__, **extra}


def _shard_id_of(sketch_path: str) -> str:
    return sketch_path.rsplit("/", 1)[-1].removesuffix(".parquet")


# --- Prefect tasks -----------------------------------------------------------------------------
@task(name="minhash-sketch", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def sketch_task(stage: StageRef, shard_id: str, source_file: str) -> dict[str, Any]:
    banding = minhash.Banding(**stage.params["banding"])
    return sketch_shard(stage.checkpoint, stage.store, shard_id, source_file, banding, stage.params["partition_bits"])


@task(name="minhash-pairs", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def pairs_task(stage: StageRef, shard_id: str, partition: int, *, inputs: list[SketchInput]) -> dict[str, Any]:
    return pairs_partition(stage.checkpoint, stage.store, partition, stage.params["partition_bits"], inputs)


@task(name="minhash-select", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def select_task(stage: StageRef, shard_id: str, _input: None, *, inputs: list[SketchInput],
                pair_files: list[str]) -> dict[str, Any]:
    return select_all(stage.checkpoint, stage.store, inputs, pair_files, stage.params["threshold"])
