"""Exact dedup: two passes (partition by persona_id bucket, dedup per bucket), one deterministic
representative per persona_id, every other row recorded as a duplicate of it."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from personahub.tasks.core.checkpoint import Manifest, StageCheckpoint
from personahub.tasks.dedup.exact import (
    SPECS,
    bucket_count,
    bucket_name,
    bucket_of,
    dedup_bucket,
    files_by_bucket,
    partition_shard,
)
from personahub.tasks.core.store import Store
from personahub.tasks.personas.text_to_persona import PERSONA_SCHEMA, persona_id_for

N_BUCKETS = 4


def test_persona_id_ignores_case_spacing_and_quotes() -> None:
    base = persona_id_for("A marine biologist who studies coral reefs.")
    assert persona_id_for("a  MARINE biologist\nwho studies coral reefs.") == base
    assert persona_id_for('  "A marine biologist who studies coral reefs."  ') == base
    assert persona_id_for("A marine biologist who studies kelp forests.") != base


def test_bucket_helpers() -> None:
    assert bucket_count(0, 100) == 1
    assert bucket_count(250, 100) == 3
    assert bucket_name(3) == "b00003"
    ids = pa.array([persona_id_for(f"persona number {i}") for i in range(200)])
    buckets = bucket_of(ids, N_BUCKETS)
    assert set(buckets) == set(range(N_BUCKETS))  # 200 uniform hashes fill 4 buckets
    assert bucket_of(ids, N_BUCKETS) == buckets


def row(persona: str, doc_id: str, relation: str = "read", source: str = "src.txt") -> dict:
    return {
        "persona_id": persona_id_for(persona),
        "persona": persona,
        "relation": relation,
        "doc_id": doc_id,
        "source": source,
        "model": "m",
        "template": "text_to_persona@abc",
        "params": "{}",
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "cached": False,
    }


def planted_shards() -> list[list[dict]]:
    """Three persona shards: 30 unique personas plus duplicates planted within and across shards."""
    uniques = [f"A persona number {i} who cares about topic {i * 7}." for i in range(30)]
    shard_a = [row(p, f"d{i:03d}") for i, p in enumerate(uniques[:10])]
    shard_b = [row(p, f"d{i + 10:03d}") for i, p in enumerate(uniques[10:20])]
    shard_c = [row(p, f"d{i + 20:03d}") for i, p in enumerate(uniques[20:])]
    # Across shards: the same persona (other case/spacing) from a smaller doc_id in a later shard.
    shard_c.append(row(uniques[3].upper(), "c000"))  # "c000" < "d003": this one must win
    shard_b.append(row("  " + uniques[3] + " ", "d999"))
    # Same doc_id, different relation: "like" < "read".
    shard_b.append(row(uniques[5], "d005", relation="like"))
    # Same doc_id and relation, different source: "a.txt" < "src.txt".
    shard_c.append(row(uniques[12], "d012", source="a.txt"))
    # Within one shard, larger doc_id: a plain duplicate.
    shard_a.append(row(uniques[25], "z000"))
    shard_a.append(row(uniques[25].lower(), "z001"))
    return [shard_a, shard_b, shard_c]


def run_dedup(store: Store, shards: list[list[dict]], run_id: str) -> tuple[Manifest, pa.Table, pa.Table, list[dict]]:
    inputs = []
    for i, rows in enumerate(shards):
        path = f"inputs/{run_id}/personas-{i}.parquet"
        store.write_parquet(path, pa.Table.from_pylist(rows, schema=PERSONA_SCHEMA))
        inputs.append(path)
    partition = StageCheckpoint(store, run_id, "dedup_exact_partition", {"n_buckets": N_BUCKETS})
    for i, path in enumerate(inputs):
        out = partition_shard(partition, store, f"s{i:05d}", path, N_BUCKETS, "persona_id")
        assert out["counts"]["rows_in"] == out["counts"]["rows_out"] == len(shards[i])
    manifest = partition.finalize([f"s{i:05d}" for i in range(len(inputs))])
    buckets = files_by_bucket(manifest)
    dedup = StageCheckpoint(store, run_id, "dedup_exact", {"n_buckets": N_BUCKETS})
    results = [dedup_bucket(dedup, store, bucket, files, SPECS["personas"]) for bucket, files in buckets.items()]
    final = dedup.finalize(list(buckets))
    kept = pa.concat_tables(store.read_parquet(p) for p in dedup.files("data"))
    dupes = pa.concat_tables(store.read_parquet(p) for p in dedup.files("duplicates") if store.read_parquet(p).num_rows)
    return final, kept, dupes, results


def test_dedup_keeps_one_deterministic_row_per_persona(store: Store) -> None:
    shards = planted_shards()
    total = sum(len(s) for s in shards)
    final, kept, dupes, results = run_dedup(store, shards, "run1")

    assert len(results) >= 2  # several buckets were used
    for r in results:
        c = r["counts"]
        assert c["rows_in"] == c["rows_out"] + c["filtered"] and c["quarantined"] == 0
    totals = final.totals
    assert totals.rows_in == total
    assert totals.rows_out == 30 and totals.filtered == total - 30

    ids = kept.column("persona_id").to_pylist()
    assert len(ids) == len(set(ids)) == 30
    assert dupes.num_rows == total - 30

    # The kept row is the smallest (doc_id, relation, source) among the rows of its persona_id.
    all_rows = [r for s in shards for r in s]
    for k in kept.to_pylist():
        group = [r for r in all_rows if r["persona_id"] == k["persona_id"]]
        best = min(group, key=lambda r: (r["doc_id"], r["relation"], r["source"]))
        assert (k["doc_id"], k["relation"], k["source"]) == (best["doc_id"], best["relation"], best["source"])
    by_id = {k["persona_id"]: k for k in kept.to_pylist()}
    p3 = persona_id_for("A persona number 3 who cares about topic 21.")
    assert by_id[p3]["doc_id"] == "c000"
    p5 = persona_id_for("A persona number 5 who cares about topic 35.")
    assert (by_id[p5]["doc_id"], by_id[p5]["relation"]) == ("d005", "like")
    p12 = persona_id_for("A persona number 12 who cares about topic 84.")
    assert (by_id[p12]["doc_id"], by_id[p12]["source"]) == ("d012", "a.txt")

    # Every duplicate points at its kept row's doc_id.
    assert set(dupes.column_names) >= {"persona_id", "persona", "doc_id", "relation", "source", "kept_doc_id"}
    for d in dupes.to_pylist():
        assert d["kept_doc_id"] == by_id[d["persona_id"]]["doc_id"]
        assert (d["doc_id"], d["relation"], d["source"]) != (
            by_id[d["persona_id"]]["doc_id"], by_id[d["persona_id"]]["relation"], by_id[d["persona_id"]]["source"]
        )
    dupe_ids = sorted(dupes.column("persona_id").to_pylist())
    p25 = persona_id_for("A persona number 25 who cares about topic 175.")
    assert dupe_ids == sorted([p3, p3, p5, p12, p25, p25])


def test_input_shard_order_does_not_change_kept_set(tmp_path) -> None:
    store = Store(str(tmp_path / "store"))  # local only: the s3 path is covered above
    shards = planted_shards()
    _, kept1, dupes1, _ = run_dedup(store, shards, "forward")
    rng = random.Random(3)
    shuffled = [rng.sample(s, len(s)) for s in reversed(shards)]
    _, kept2, dupes2, _ = run_dedup(store, shuffled, "reversed")

    def key(table: pa.Table) -> list[tuple]:
        return sorted(zip(*(table.column(c).to_pylist() for c in ("persona_id", "persona", "doc_id", "relation", "source"))))

    assert key(kept1) == key(kept2)
    assert key(dupes1) == key(dupes2)


def test_files_by_bucket_groups_in_shard_order() -> None:
    manifest = Manifest.from_json({
        "shards": [
            {"id": "s00000", "files": {"b00001": "p/b00001/s00000.parquet", "b00000": "p/b00000/s00000.parquet"}, "rows": {}},
            {"id": "s00001", "files": {"b00001": "p/b00001/s00001.parquet"}, "rows": {}},
            {"id": "s00002", "files": {"b00002": "p/b00002/s00002.parquet", "b00000": "p/b00000/s00002.parquet"}, "rows": {}},
        ]
    })
    assert files_by_bucket(manifest) == {
        "b00000": ["p/b00000/s00000.parquet", "p/b00000/s00002.parquet"],
        "b00001": ["p/b00001/s00000.parquet", "p/b00001/s00001.parquet"],
        "b00002": ["p/b00002/s00002.parquet"],
    }
    assert list(files_by_bucket(manifest)) == ["b00000", "b00001", "b00002"]


def test_partition_puts_equal_ids_in_one_bucket(tmp_path) -> None:
    store = Store(str(tmp_path / "store"))
    rows = [row(f"A persona number {i % 7} who cares.", f"d{i:03d}") for i in range(40)]
    store.write_parquet("in.parquet", pa.Table.from_pylist(rows, schema=PERSONA_SCHEMA))
    checkpoint = StageCheckpoint(store, "run1", "part", {"n_buckets": N_BUCKETS})
    partition_shard(checkpoint, store, "s0", "in.parquet", N_BUCKETS, "persona_id")
    entry = checkpoint.done_shards()["s0"]
    seen: dict[str, str] = {}
    total = 0
    for kind, path in entry.files.items():
        table = store.read_parquet(path)
        total += table.num_rows
        for pid in table.column("persona_id").to_pylist():
            assert seen.setdefault(pid, kind) == kind
            assert bucket_name(int(pid[:8], 16) % N_BUCKETS) == kind
    assert total == 40 and len(seen) == 7


def test_documents_spec_keeps_first_source_and_records_it(tmp_path) -> None:
    store = Store(str(tmp_path / "store"))
    rows = [{"doc_id": "ab" * 10, "source": "b.txt", "record": 0, "url": None, "text": "x"},
            {"doc_id": "ab" * 10, "source": "a.txt", "record": 3, "url": "https://e.org", "text": "x"},
            {"doc_id": "cd" * 10, "source": "c.txt", "record": 0, "url": None, "text": "y"}]
    store.write_parquet("docs.parquet", pa.Table.from_pylist(rows))
    checkpoint = StageCheckpoint(store, "run1", "crawl_dedup", {})
    out = dedup_bucket(checkpoint, store, "b00000", ["docs.parquet"], SPECS["documents"])
    assert out["counts"] == {"rows_in": 3, "rows_out": 2, "filtered": 1, "quarantined": 0}
    assert out["reasons"] == {"duplicate": 1}
    (dupe,) = store.read_parquet(checkpoint.shard_path("b00000", "duplicates")).to_pylist()
    assert (dupe["source"], dupe["kept_source"], dupe["kept_record"]) == ("b.txt", "a.txt", 3)


@pytest.mark.parametrize("n_buckets", [1, 3])
def test_bucket_count_does_not_change_result(tmp_path, n_buckets: int) -> None:
    store = Store(str(tmp_path / "store"))
    rows = [r for s in planted_shards() for r in s]
    store.write_parquet("in.parquet", pa.Table.from_pylist(rows, schema=PERSONA_SCHEMA))
    part = StageCheckpoint(store, "run1", "part", {"n": n_buckets})
    partition_shard(part, store, "s0", "in.parquet", n_buckets, "persona_id")
    dedup = StageCheckpoint(store, "run1", "dedup", {"n": n_buckets})
    kept = 0
    for bucket, files in files_by_bucket(part.finalize()).items():
        kept += dedup_bucket(dedup, store, bucket, files, SPECS["personas"])["counts"]["rows_out"]
    assert kept == 30
