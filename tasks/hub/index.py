"""The dedup index stored with a hub version, so the next run dedups against the hub without
recomputing it: the MinHash sketches and band files and the embedding vectors of exactly the
personas the version holds.

    hubs/<hub>/vNNNN/index/minhash/<shard>/sketches.parquet, bands_pNNNNN.parquet
    hubs/<hub>/vNNNN/index/embedding/<shard>.parquet

A run's sketch and vector shards cover every persona it deduplicated; publishing keeps the rows of
the personas that survived both stages (band rows renumbered to the kept rows). A version's index
lists its own shards plus the previous version's, by reference: files are immutable, so nothing
is copied forward.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from personahub.tasks.core.checkpoint import Manifest
from personahub.tasks.core.store import Store
from personahub.tasks.dedup.removed import removed_rows


def _survivors(n: int, removed: np.ndarray) -> np.ndarray:
    keep = np.ones(n, np.bool_)
    keep[removed] = False
    return np.flatnonzero(keep)


def write_index(store: Store, prefix: str, minhash_part: dict[str, Any], embedding_part: dict[str, Any] | None,
                previous: dict[str, Any] | None) -> dict[str, Any]:
    """Write this run's index shards under `prefix` and return the version's index manifest."""
    sketches: Manifest = minhash_part["sketches"]
    mh_removed = minhash_part["decision"].only_shard().file("removed")
    emb_removed = embedding_part["decision"].only_shard().file("removed") if embedding_part else None
    vectors_of = {s.id: s for s in embedding_part["vectors"].shards} if embedding_part else {}
    bits = sketches.params["partition_bits"]
    mh_shards, emb_shards = [], []
    for shard in sorted(sketches.shards, key=lambda s: s.id):
        sid, n = shard.id, shard.rows_of("sketches")
        after_minhash = _survivors(n, removed_rows(store, mh_removed, sid))
        kept = after_minhash
        if emb_removed is not None:
            kept_in_emb = _survivors(len(after_minhash), removed_rows(store, emb_removed, sid))
            kept = after_minhash[kept_in_emb]
            vec = vectors_of.get(sid)  # none when MinHash left the shard empty
            if vec is not None and len(kept_in_emb):
                table = store.read_parquet(vec.file("vectors")).take(pa.array(kept_in_emb))
                path = f"{prefix}/embedding/{sid}.parquet"
                store.write_parquet(path, table)
                emb_shards.append({"id": sid, "vectors": path, "rows": table.num_rows})
        table = store.read_parquet(shard.file("sketches")).take(pa.array(kept))
        base = f"{prefix}/minhash/{sid}"
        store.write_parquet(f"{base}/sketches.parquet", table)
        bands: dict[str, str] = {}
        for kind, path in sorted(shard.files.items()):
            if not kind.startswith("bands_p"):
                continue
            t = store.read_parquet(path)
            rows = t.column("row").to_numpy().astype(np.int64)
            pos = np.searchsorted(kept, rows)
            hit = (pos < len(kept)) & (kept[np.minimum(pos, len(kept) - 1)] == rows) if len(kept) else np.zeros(len(rows), bool)
            if not hit.any():
                continue
            t = t.filter(pa.array(hit)).set_column(2, "row", pa.array(pos[hit].astype(np.uint32)))
            bands[str(int(kind.removeprefix("bands_p")))] = f"{base}/{kind}.parquet"
            store.write_parquet(bands[str(int(kind.removeprefix("bands_p")))], t)
        mh_shards.append({"sketches": f"{base}/sketches.parquet", "bands": bands, "rows": table.num_rows,
                          "partition_bits": bits})
    prev_mh = (previous or {}).get("minhash") or {}
    prev_emb = (previous or {}).get("embedding") or {}
    index: dict[str, Any] = {"minhash": {
        "banding": minhash_part["banding"], "partition_bits": bits,
        "shards": prev_mh.get("shards", []) + mh_shards,
    }}
    index["minhash"]["rows"] = sum(s["rows"] for s in index["minhash"]["shards"])
    if embedding_part:
        if prev_emb and prev_emb.get("model") != embedding_part["model"]:
            prev_emb = {}  # vectors of another model cannot be searched together; the hub's older part is not indexed
        index["embedding"] = {"model": embedding_part["model"], "dim": embedding_part["dim"],
                              "shards": prev_emb.get("shards", []) + emb_shards}
    return index
