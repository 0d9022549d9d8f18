"""The main job on the real embedded model (llama-server + SmolLM2-135M): structure, not content."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from personahub.flows.build_hub import BuildHubParams, build_hub
from personahub.flows.persona_graph import GraphParams
from personahub.tasks.core.store import Store

DOCS = {
    "nurse.txt": "Fever in toddlers: give fluids, check the temperature every four hours, and call the ward if it stays above 39 C.",
    "chess.md": "# The Caro-Kann\nAfter 1.e4 c6 2.d4 d5, Black gets a solid pawn chain; club players like it against sharp attackers.",
    "bees.txt": "Swarm season checklist: inspect every seven days, look for queen cells on the bottom bars, add supers early.",
}


@pytest.mark.embedded
def test_build_hub_on_the_embedded_model(tmp_path: Path, embedded_model: tuple) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, text in DOCS.items():
        (corpus / name).write_text(text)
    params = BuildHubParams(corpus=[str(corpus)], store=str(tmp_path / "store"),  # all four relations: 12 calls
                            graph=GraphParams(hops=1, k=2, max_new_per_hop=2))

    summary = build_hub(params)

    by_stage = {s["stage"]: s for s in summary["stages"]}
    crawl, t2p, dedup = by_stage["crawl"], by_stage["text_to_persona"], by_stage["embedding_dedup"]
    assert "persona_to_persona_h1" in by_stage or by_stage["p2p_frontier_h1"]["counts"]["rows_out"] == 0
    assert crawl["counts"]["rows_out"] == 3
    assert t2p["counts"]["rows_in"] == 12
    assert t2p["counts"]["rows_out"] + t2p["counts"]["quarantined"] == 12  # every answer kept or quarantined
    # Real personas came out (SmolLM2 gave 34 usable of 36 on the demo corpus), not only counts that add up.
    assert t2p["counts"]["rows_out"] >= 1
    assert summary["model"] == "SmolLM2-135M-Instruct-Q4_1"
    assert summary["llm_this_run"]["calls"] >= 3 and summary["llm_this_run"]["completion_tokens"] > 0
    store = Store(str(tmp_path / "store"))
    manifest = store.read_json(f"hubs/default/{summary['version']}/manifest.json")
    assert manifest["personas"] == dedup["counts"]["rows_out"]
    assert manifest["index"]["embedding"]["model"] == "all-MiniLM-L6-v2" and manifest["index"]["embedding"]["dim"] == 384
    rows = [row for part in manifest["parts"] for row in store.read_parquet(part["file"]).to_pylist()]
    assert rows, "at least one persona reached the hub"
    for row in rows:
        assert row["persona"] and row["model"] == summary["model"] and row["doc_id"]
        # parsed from the model's JSON and normalised: one line, its id the hash of its lower-cased text
        assert "\n" not in row["persona"] and row["persona"] == row["persona"].strip() and len(row["persona"].split()) >= 3
        assert row["persona_id"] == hashlib.sha256(" ".join(row["persona"].split()).lower().encode()).hexdigest()[:20]

    again = build_hub(params)
    assert again["llm_this_run"]["calls"] == 0
