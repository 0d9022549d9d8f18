"""The dedup flow and `personahub dedup`: both stages, thresholds, shard order, incremental == full."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from personahub.cli import app
from personahub.flows.dedup import DedupFlowParams, dedup
from personahub.tasks.core.store import Store

BASE = [
    "A retired marine biologist who volunteers at the coastal aquarium and writes about coral reef restoration",
    "A high school chemistry teacher who coaches the debate team and bakes sourdough bread on weekends",
    "A freelance translator of Portuguese poetry who lives in Lisbon and collects vintage typewriters",
    "A night shift nurse in a pediatric ward who studies sign language to talk with deaf patients",
    "A civil engineer designing earthquake resistant bridges in Chile who mentors young women in STEM",
    "A beekeeper in rural Vermont who sells honey at the farmers market and blogs about pollinator decline",
    "A data journalist investigating housing prices who teaches spreadsheet workshops at the public library",
    "A professional cellist in a touring orchestra who composes film scores between concert seasons",
]


def variants(text: str) -> dict[str, str]:
    words = text.split()
    reordered = list(words)
    random.Random(len(text)).shuffle(reordered)
    edited = words[: len(words) // 2] + ["indeed"] + words[len(words) // 2:]  # one word inserted: Jaccard n/(n+1) >= 0.93
    return {"case": text.upper(), "reorder": " ".join(reordered), "punct": text.replace(" who ", ", who ") + ".",
            "edit": " ".join(edited)}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rows_with_variants() -> list[dict]:
    rows = []
    for i, text in enumerate(BASE):
        rows.append({"id": f"b{i}", "persona": text})
        for kind, v in variants(text).items():
            rows.append({"id": f"b{i}-{kind}", "persona": v})
    return rows


def kept_ids(summary: dict, store: Store) -> set[str]:
    ids: set[str] = set()
    for f in summary["kept_files"]:
        rel = f.removeprefix(store.uri()).lstrip("/")
        ids.update(store.read_parquet(rel, columns=["persona_id"]).column("persona_id").to_pylist())
    return ids


def run(tmp_path: Path, server, paths: list[Path], **kw) -> tuple[dict, Store]:
    store_dir = kw.pop("store_dir", tmp_path / "store")
    params = DedupFlowParams(paths=[str(p) for p in paths], store=str(store_dir), embedding_base_url=server.base_url, **kw)
    return dedup(params), Store(str(store_dir))


def stage(summary: dict, name: str) -> dict:
    return next(s for s in summary["stages"] if s["stage"] == name)


def test_near_duplicates_are_removed_at_09_and_edits_kept_at_099(server, tmp_path):
    src = write_jsonl(tmp_path / "in" / "personas.jsonl", rows_with_variants())
    summary, store = run(tmp_path, server, [src], embedding={"enabled": False})
    kept = kept_ids(summary, store)
    assert sorted(k.split("-")[0] for k in kept) == sorted(f"b{i}" for i in range(len(BASE))), \
        "one persona of each group stays: case, reordering, punctuation and one inserted word all go at 0.9"
    mh = stage(summary, "minhash")
    assert mh["counts"]["filtered"] == 4 * len(BASE) and mh["reasons"] == {"near_duplicate_minhash": 4 * len(BASE)}

    removed = store.read_parquet(stage_file(store, summary, "minhash_select", "removed"))
    kept3 = next(k for k in kept if k.split("-")[0] == "b3")
    rows = {r["persona_id"]: r for r in removed.to_pylist()}
    for pid in {"b3", "b3-reorder", "b3-case", "b3-punct"} - {kept3}:
        assert rows[pid]["duplicate_of"] == kept3 and rows[pid]["group"] == kept3
        assert rows[pid]["similarity"] == pytest.approx(1.0)

    strict, store = run(tmp_path, server, [src], embedding={"enabled": False}, minhash={"threshold": 0.99},
                        store_dir=tmp_path / "strict")
    kept = kept_ids(strict, store)
    assert len(kept) == 2 * len(BASE), "at 0.99 the edited persona stays beside one of its identical-word-set group"
    assert sum(k.endswith("-edit") for k in kept) == len(BASE)


def stage_file(store: Store, summary: dict, stage_name: str, kind: str) -> str:
    manifest = store.read_json(f"runs/{summary['run_id']}/{stage_name}/manifest.json")
    return manifest["shards"][0]["files"][kind]


def test_lower_embedding_threshold_removes_more(server, tmp_path):
    rows = [{"id": f"b{i}", "persona": t} for i, t in enumerate(BASE)]
    rows += [{"id": "near", "persona": BASE[0] + " projects"},  # fake-embedding cosine 0.97, Jaccard < 1
             {"id": "loose", "persona": BASE[1].replace("bakes sourdough bread", "grows tomatoes")}]  # cosine 0.77
    src = write_jsonl(tmp_path / "in" / "p.jsonl", rows)
    at_09, _ = run(tmp_path, server, [src], minhash={"threshold": 1.0})
    at_05, _ = run(tmp_path, server, [src], minhash={"threshold": 1.0}, embedding={"threshold": 0.5},
                   store_dir=tmp_path / "s05")
    removed_09 = stage(at_09, "embedding_dedup")["counts"]["filtered"]
    removed_05 = stage(at_05, "embedding_dedup")["counts"]["filtered"]
    assert removed_09 == 1 and removed_05 >= 2


def test_embedding_batch_size_comes_from_settings_unless_the_run_sets_it(server, tmp_path, monkeypatch):
    rows = [{"id": f"b{i}", "persona": t} for i, t in enumerate(BASE)]
    src = write_jsonl(tmp_path / "in" / "p.jsonl", rows)
    monkeypatch.setenv("PERSONAHUB_EMBEDDING_BATCH_SIZE", "3")
    server.reset()
    run(tmp_path, server, [src], minhash={"threshold": 1.0})
    sizes = [len(r["input"]) for r in server.embedding_requests if isinstance(r["input"], list)]
    assert max(sizes) == 3 and sum(sizes) >= len(BASE)
    server.reset()
    run(tmp_path, server, [src], minhash={"threshold": 1.0}, embedding={"batch_size": 5}, store_dir=tmp_path / "s5")
    sizes = [len(r["input"]) for r in server.embedding_requests if isinstance(r["input"], list)]
    assert max(sizes) == 5


def test_the_same_input_keeps_the_same_personas_in_any_shard_order(server, tmp_path):
    rows = rows_with_variants()
    first = [write_jsonl(tmp_path / "a" / f"part{k}.jsonl", rows[k::3]) for k in range(3)]
    shuffled = list(rows)
    random.Random(7).shuffle(shuffled)
    second = [write_jsonl(tmp_path / "b" / f"x{k}.jsonl", shuffled[k * 9:(k + 1) * 9]) for k in range(5)]
    one, store_one = run(tmp_path, server, first, store_dir=tmp_path / "s1")
    two, store_two = run(tmp_path, server, second, store_dir=tmp_path / "s2")
    assert kept_ids(one, store_one) == kept_ids(two, store_two)
    assert stage(one, "persona_input")["shards"] == 3 and stage(two, "persona_input")["shards"] == 5


def test_incremental_dedup_equals_a_full_re_dedup_of_hub_and_new(server, tmp_path):
    rows = rows_with_variants()
    hub_rows, new_rows = rows[:20], rows[20:]
    new_rows += [{"id": "copy-of-hub", "persona": BASE[0].lower() + "!"},
                 {"id": "fresh", "persona": "A glassblower in Murano who restores antique chandeliers for churches"}]
    hub_src = write_jsonl(tmp_path / "hub" / "hub.jsonl", hub_rows)
    new_src = write_jsonl(tmp_path / "new" / "new.jsonl", new_rows)
    first, store = run(tmp_path, server, [hub_src], hub="h", publish=True)
    assert first["version"] == "v0001"
    again, _ = run(tmp_path, server, [hub_src], hub="h", publish=True)
    assert again["version"] == "v0001", "a finished run is not published twice"
    hub_ids = kept_ids(first, store)

    incremental, _ = run(tmp_path, server, [new_src], hub="h")
    full, _ = run(tmp_path, server, [new_src], hub="h", reuse_hub_index=False)
    assert kept_ids(incremental, store) == kept_ids(full, store)
    assert "copy-of-hub" not in kept_ids(incremental, store) and "fresh" in kept_ids(incremental, store)
    assert not hub_ids & kept_ids(incremental, store)
    # the incremental run read the stored index; the full one sketched and embedded the hub again
    assert "minhash_sketch_hub" not in {s["stage"] for s in incremental["stages"]}
    assert {"minhash_sketch_hub", "embed_hub"} <= {s["stage"] for s in full["stages"]}

    published, _ = run(tmp_path, server, [new_src], hub="h", publish=True)
    manifest = store.read_json("hubs/h/v0002/manifest.json")
    assert manifest["personas"] == len(hub_ids) + len(kept_ids(incremental, store)), "v2 = v1 + the new kept personas"
    assert manifest["previous"] == "v0001" and len(manifest["index"]["minhash"]["shards"]) == 2


def test_cli_prints_kept_and_removed_per_stage_and_quarantines_bad_rows(server, tmp_path):
    rows = rows_with_variants() + [{"id": "x", "persona": ""}, {"id": "y", "text": 7}, {"id": "z"}]
    src = write_jsonl(tmp_path / "in" / "p.jsonl", rows)
    (tmp_path / "in" / "p.jsonl").write_text((tmp_path / "in" / "p.jsonl").read_text() + "{not json\n")
    parquet_src = tmp_path / "in2" / "more.parquet"
    parquet_src.parent.mkdir()
    import pyarrow as pa

    pq.write_table(pa.table({"text": ["A lighthouse keeper who paints seabirds", "a LIGHTHOUSE keeper who paints seabirds"]}),
                   parquet_src)
    result = CliRunner().invoke(app, ["dedup", str(src), str(parquet_src), "--store", str(tmp_path / "store"),
                                      "--embedding-base-url", server.base_url])
    assert result.exit_code == 0, result.output
    assert "minhash: kept" in result.output and "embedding_dedup: kept" in result.output
    assert "quarantined" in result.output
    manifests = list((tmp_path / "store" / "runs").glob("*/persona_input/manifest.json"))
    assert len(manifests) == 1
    manifest = json.loads(manifests[0].read_text())
    reasons = {k: v for s in manifest["shards"] for k, v in s["extra"]["reasons"].items()}
    assert reasons == {"empty_text": 1, "text_not_a_string": 1, "no_text_column": 1, "invalid_json": 1}
