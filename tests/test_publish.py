"""Publish: numbered immutable hub versions, manifest after parts, latest.json last."""

from __future__ import annotations

import pyarrow as pa
import pytest

from personahub.tasks.hub.publish import (
    HUB_COLUMNS,
    hub_prefix,
    hub_versions,
    latest_manifest,
    next_version,
    publish_hub,
    sample_personas,
)
from personahub.tasks.core.store import Store
from personahub.tasks.personas.text_to_persona import PERSONA_SCHEMA, persona_id_for


def write_shards(store: Store, run: str, sizes: list[int]) -> list[str]:
    paths = []
    n = 0
    for i, size in enumerate(sizes):
        rows = []
        for _ in range(size):
            persona = f"A persona number {n} who publishes things."
            rows.append(
                {
                    "persona_id": persona_id_for(persona), "persona": persona, "relation": "read",
                    "doc_id": f"d{n:04d}", "source": "src.txt", "model": "m", "template": "t@v",
                    "params": "{}", "prompt_tokens": 3, "completion_tokens": 4, "cached": False,
                }
            )
            n += 1
        path = f"runs/{run}/dedup_exact/data/b{i:05d}.parquet"
        store.write_parquet(path, pa.Table.from_pylist(rows, schema=PERSONA_SCHEMA))
        paths.append(path)
    return paths


def test_publish_versions(store: Store) -> None:
    assert hub_versions(store, "demo") == []
    assert next_version(store, "demo") == "v0001"
    assert latest_manifest(store, "demo") is None

    files = write_shards(store, "r1", [3, 2])
    m1 = publish_hub(store, "demo", "r1", files, {"crawl": "runs/r1/crawl/manifest.json"})
    assert m1["version"] == "v0001" and m1["hub"] == "demo" and m1["run_id"] == "r1"
    assert m1["personas"] == 5
    assert [p["rows"] for p in m1["parts"]] == [3, 2]
    assert [p["file"] for p in m1["parts"]] == [
        "hubs/demo/v0001/personas/part-00000.parquet",
        "hubs/demo/v0001/personas/part-00001.parquet",
    ]
    assert m1["lineage"] == {"crawl": "runs/r1/crawl/manifest.json"}
    part = store.read_parquet(m1["parts"][0]["file"])
    assert part.column_names == HUB_COLUMNS  # token/cache columns are not published
    assert part.num_rows == 3
    assert store.read_json("hubs/demo/v0001/manifest.json") == m1
    assert store.read_json("hubs/demo/latest.json") == {
        "version": "v0001", "manifest": "hubs/demo/v0001/manifest.json"
    }

    m2 = publish_hub(store, "demo", "r2", write_shards(store, "r2", [4]), {})
    assert m2["version"] == "v0002"
    assert hub_versions(store, "demo") == ["v0001", "v0002"]
    assert latest_manifest(store, "demo") == m2
    assert store.read_json("hubs/demo/v0001/manifest.json") == m1  # old version untouched

    # Another hub in the same store is independent.
    assert publish_hub(store, "other", "r2", files, {})["version"] == "v0001"
    assert hub_versions(store, "demo") == ["v0001", "v0002"]


def test_interrupted_publish_is_skipped(store: Store) -> None:
    files = write_shards(store, "r1", [2])
    publish_hub(store, "demo", "r1", files, {})
    m2 = publish_hub(store, "demo", "r1", files, {})
    # A publish killed after its first part: a version folder without manifest.json.
    store.write_parquet("hubs/demo/v0003/personas/part-00000.parquet", store.read_parquet(files[0]))
    assert hub_versions(store, "demo") == ["v0001", "v0002"]
    assert latest_manifest(store, "demo") == m2
    assert next_version(store, "demo") == "v0004"  # the interrupted number is never reused
    m4 = publish_hub(store, "demo", "r1", files, {})
    assert m4["version"] == "v0004"
    assert hub_versions(store, "demo") == ["v0001", "v0002", "v0004"]
    assert latest_manifest(store, "demo")["version"] == "v0004"


def test_non_version_entries_are_ignored(tmp_path) -> None:
    store = Store(str(tmp_path / "store"))
    store.write_json("hubs/demo/notes/manifest.json", {})
    store.write_json("hubs/demo/v12/manifest.json", {})  # fewer than 4 digits: not a version name
    assert hub_versions(store, "demo") == []
    assert next_version(store, "demo") == "v0001"


@pytest.mark.parametrize("name", ["", "../evil", "a/b", "-leading", ".hidden", "sp ace", "x" * 65])
def test_invalid_hub_name(tmp_path, name: str) -> None:
    store = Store(str(tmp_path / "store"))
    with pytest.raises(ValueError, match="hub name"):
        hub_prefix(name)
    with pytest.raises(ValueError):
        publish_hub(store, name, "r1", [], {})
    assert not store.exists("hubs")


def test_valid_hub_names() -> None:
    assert hub_prefix("demo") == "hubs/demo"
    assert hub_prefix("My_Hub-2.1") == "hubs/My_Hub-2.1"


def test_sample_personas(store: Store) -> None:
    manifest = publish_hub(store, "demo", "r1", write_shards(store, "r1", [2, 3, 4]), {})
    assert manifest["personas"] == 9
    rows = sample_personas(store, manifest, 4)  # spans two parts
    assert len(rows) == 4
    assert set(rows[0]) == {"persona_id", "persona", "relation"}
    assert [r["persona"] for r in rows] == [f"A persona number {i} who publishes things." for i in range(4)]
    assert len(sample_personas(store, manifest, 100)) == 9
    assert sample_personas(store, manifest, 0) == []
