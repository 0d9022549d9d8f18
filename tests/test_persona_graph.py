"""Persona-to-Persona in the hub flow on the fake server: hop limits, frontier caps, a consistent
graph, no re-expansion of hub personas, and `personas show` back to the document."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from personahub.flows.build_hub import BuildHubParams, build_hub
from personahub.flows.persona_graph import GraphParams
from personahub.tasks.core.store import Store

LONG = " The volunteers met at the harbour office and planned the spring survey of the salt marsh."


def corpus(root: Path, n: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"doc{i}.txt").write_text(f"Survey log {i}: counted {i * 11} redshanks and {i + 3} curlews at dawn." + LONG)
    return root


def hub_tables(store: Store, summary: dict) -> tuple[list[dict], list[dict]]:
    manifest = store.read_json(f"hubs/{summary['hub']}/{summary['version']}/manifest.json")
    nodes = [r for p in manifest["parts"] for r in store.read_parquet(p["file"]).to_pylist()]
    edges = [r for p in manifest["edge_parts"] for r in store.read_parquet(p["file"]).to_pylist()]
    return nodes, edges


def test_graph_hops_caps_and_consistency(server, tmp_path: Path) -> None:
    graph = GraphParams(hops=3, k=2, max_new_per_hop=3, seed=7)
    params = BuildHubParams(corpus=[str(corpus(tmp_path / "c"))], store=str(tmp_path / "store"),
                            llm_base_url=server.base_url, embedding_base_url=server.base_url, relations=["read", "write"], graph=graph)
    summary = build_hub(params)

    by_stage = {s["stage"]: s for s in summary["stages"]}
    for stage in summary["stages"]:
        c = stage["counts"]
        assert c["rows_in"] == c["rows_out"] + c["filtered"] + c["quarantined"], stage
    for hop in (1, 2, 3):
        assert by_stage[f"p2p_frontier_h{hop}"]["counts"]["rows_out"] <= 3, "the frontier cap holds"
    assert "p2p_frontier_h4" not in by_stage, "the hop limit holds"
    calls = server.calls
    assert calls <= 4 * 2 + 3 * 3, "LLM calls: one per (document, relation), one per expanded persona"

    store = Store(str(tmp_path / "store"))
    nodes, edges = hub_tables(store, summary)
    ids = {n["persona_id"] for n in nodes}
    assert max(n["hop"] for n in nodes) <= 3 and any(n["hop"] > 0 for n in nodes)
    assert len(ids) == len(nodes), "one row per persona after dedup"
    assert edges, "expansion produced edges"
    for e in edges:
        assert e["parent_id"] in ids and e["child_id"] in ids, e
    for n in nodes:
        if n["hop"] == 0:
            assert n["parent_id"] is None and n["doc_id"] and n["origin"] == "text_to_persona"
        else:
            assert n["parent_id"] in ids and n["origin"] == "persona_to_persona" and n["doc_id"], n

    again = build_hub(params)
    assert server.calls == calls and again["llm_this_run"]["calls"] == 0, "a rerun pays for nothing"

    from personahub.cli import app

    deepest = max(nodes, key=lambda n: n["hop"])
    shown = CliRunner().invoke(app, ["personas", "show", deepest["persona_id"], "--store", str(tmp_path / "store")])
    assert shown.exit_code == 0, shown.output
    assert deepest["persona"] in shown.output and "document" in shown.output and "Survey log" in shown.output
    assert shown.output.count("hop ") == deepest["hop"] + 1, "the whole chain back to hop 0"


def test_hub_personas_are_not_expanded_again(server, tmp_path: Path) -> None:
    docs = corpus(tmp_path / "c", 2)
    first = BuildHubParams(corpus=[str(docs)], store=str(tmp_path / "store"), llm_base_url=server.base_url, embedding_base_url=server.base_url,
                           relations=["read"], graph=GraphParams(hops=1, k=2, max_new_per_hop=10))
    build_hub(first)
    # Another run (another k) over the same documents finds the same hop-0 personas, all in the hub.
    second = build_hub(first.model_copy(update={"graph": GraphParams(hops=1, k=3, max_new_per_hop=10)}))
    frontier = next(s for s in second["stages"] if s["stage"] == "p2p_frontier_h1")
    assert frontier["counts"]["rows_out"] == 0 and frontier["counts"]["filtered"] > 0


def test_filter_options_reach_both_llm_stages(server, tmp_path: Path) -> None:
    """A build parameter tightens the filters of Text-to-Persona and Persona-to-Persona alike."""
    params = BuildHubParams(corpus=[str(corpus(tmp_path / "c", 2))], store=str(tmp_path / "store"),
                            llm_base_url=server.base_url, embedding_base_url=server.base_url, relations=["read"],
                            graph=GraphParams(hops=1, k=2, max_new_per_hop=4), filters={"min_words": 200})
    summary = build_hub(params)
    by_stage = {s["stage"]: s for s in summary["stages"]}
    assert by_stage["text_to_persona"]["counts"]["rows_out"] == 0
    assert by_stage["text_to_persona"]["reasons"] == {"too_short": 2}
    assert summary["personas"] == 0
