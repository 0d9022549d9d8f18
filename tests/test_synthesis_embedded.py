"""Synthesis on the real embedded model (llama-server + SmolLM2-135M): structure, not content."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from personahub.flows.synthesize import SynthesizeParams, synthesize
from personahub.tasks.core.store import Store
from personahub.tasks.synthesis.personas import PersonaSelection

PERSONAS = ["A night-shift nurse on a children's ward who keeps careful medication charts.",
            "A beekeeper in a small village who sells honey at the Saturday market.",
            "A club chess coach who prepares openings for teenage players before tournaments."]


@pytest.mark.embedded
@pytest.mark.parametrize("case, mode", [("math", "zero-shot"), ("math", "persona-enhanced"), ("knowledge", "zero-shot"),
                                        ("tools", "zero-shot")])
def test_synthesis_on_the_embedded_model(tmp_path: Path, embedded_model: tuple, case: str, mode: str) -> None:
    personas = tmp_path / "personas.jsonl"
    personas.write_text("".join(json.dumps({"persona": p}) + "\n" for p in PERSONAS))
    # The verifying stages run where they cost least: math's solvers in zero-shot mode, tools' code in zero-shot.
    # Diversity on knowledge only: one pair from the three personas, written greedily, embedded by the embedded model.
    # Few-shot math is not here: SmolLM2 copies its demonstrations often (quarantined as copies_demonstration).
    diversity = {"targets": [0.5], "tolerance": 0.5, "pairs": 1} if case == "knowledge" else {"enabled": False}
    summary = synthesize(SynthesizeParams(use_case=case, mode=mode, personas=[str(personas)], solve=mode == "zero-shot",
                                          diversity=diversity, selection=PersonaSelection(n=2),
                                          store=str(tmp_path / "store")))
    stages = {s["stage"]: s for s in summary["stages"]}
    stage = stages[f"synthesize_{case}"]
    c = stage["counts"]
    assert c["rows_in"] == 2 and c["rows_out"] + c["quarantined"] == 2, "every answer kept or quarantined"
    assert summary["model"] == "SmolLM2-135M-Instruct-Q4_1"
    if mode == "persona-enhanced":
        t2p = next(s for s in summary["stages"] if s["stage"] == "demo_text_to_persona")
        assert t2p["counts"]["rows_out"] >= 1, "at least one demonstration got a persona"
    if case == "math" and mode == "zero-shot":
        # Real items came out (5 calls gave 4 usable problems on this model), not only counts that add up.
        assert c["rows_out"] >= 1, stage["reasons"]
        items = [r for f in summary["generated_files"] for r in Store(str(tmp_path / "store")).read_parquet(f).to_pylist()]
        assert all(len(r["text"]) >= 40 and json.loads(r["output"])["problem"] == r["text"] for r in items)
    if "solve_math" in stages or "implement_tools" in stages:
        verify = stages.get("solve_math") or stages["implement_tools"]
        v = verify["counts"]
        assert v["rows_in"] == c["rows_out"] and v["rows_in"] == v["rows_out"] + v["filtered"] + v["quarantined"]
        report = Store(str(tmp_path / "store")).read_json(f"runs/{summary['run_id']}/report.json")
        if case == "math":
            # Every problem was solved three ways, the program run in the sandbox, and the agreement counted.
            assert sum(report["math"]["agreement"].values()) + v["quarantined"] == v["rows_in"]
            assert all(key.endswith("of 3") for key in report["math"]["agreement"])
        else:
            assert report["tools"]["asked"] == v["rows_in"] and report["tools"]["imports"] == v["rows_out"]
    if case == "knowledge":
        report = Store(str(tmp_path / "store")).read_json(f"runs/{summary['run_id']}/report.json")
        d = report["diversity"]
        assert d["pool"] == len(PERSONAS) and d["pairs_drawn"] == 1
        assert len(d["pairs"]) + d["pairs_without_output"] == 1
        assert Store(str(tmp_path / "store")).read_bytes(d["plot"]).startswith(b"\x89PNG")
