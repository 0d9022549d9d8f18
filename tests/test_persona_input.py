"""persona_input: persona files users already have → persona shards, bad rows quarantined with reasons."""

from __future__ import annotations

import json
from pathlib import Path

from personahub.tasks.core.checkpoint import StageCheckpoint
from personahub.tasks.personas.input_files import persona_id_of, read_persona_shard
from personahub.tasks.core.store import Store


def read(tmp_path: Path, source: Path, text_column: str | None = None) -> tuple[list[dict], list[dict], dict]:
    store = Store(str(tmp_path / "store"))
    checkpoint = StageCheckpoint(store, "run", "persona_input", {"text_column": text_column})
    result = read_persona_shard(checkpoint, "s0", str(source), text_column)
    shard = checkpoint.finalize().only_shard()
    data = store.read_parquet(shard.file("data")).to_pylist()
    quarantine = store.read_parquet(shard.file("quarantine")).to_pylist()
    return data, quarantine, result["counts"]


def test_jsonl_rows_ids_and_every_quarantine_reason(tmp_path: Path) -> None:
    lines = [json.dumps({"id": 7, "persona": "  A potter in Kyoto  ", "lang": "en"}),
             json.dumps({"text": "A surveyor of old canals"}),
             json.dumps({"persona": "   "}),
             json.dumps({"persona": ["not", "text"]}),
             json.dumps({"name": "no text here"}),
             json.dumps(42),
             "{broken json"]
    source = tmp_path / "p.jsonl"
    source.write_text("\n".join(lines) + "\n")
    data, quarantine, counts = read(tmp_path, source)
    assert [(r["persona_id"], r["persona"], r["row"]) for r in data] == [
        ("7", "A potter in Kyoto", 0), (persona_id_of("A surveyor of old canals"), "A surveyor of old canals", 1)]
    assert json.loads(data[0]["extra"]) == {"lang": "en"}
    assert [r["reason"] for r in quarantine] == ["empty_text", "text_not_a_string", "no_text_column", "not_a_record",
                                                "invalid_json"]
    assert counts == {"rows_in": 7, "rows_out": 2, "filtered": 0, "quarantined": 5}


def test_a_json_array_of_strings_is_personas_whatever_the_text_column(tmp_path: Path) -> None:
    source = tmp_path / "p.json"
    source.write_text(json.dumps(["A glassblower in Murano", "A night nurse"]))
    for column in (None, "text"):
        data, quarantine, _ = read(tmp_path / str(column), source, column)
        assert [r["persona"] for r in data] == ["A glassblower in Murano", "A night nurse"] and not quarantine
