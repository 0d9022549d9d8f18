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
@pytest.mark.parametrize("case, mode", [("math", "few-shot"), ("math", "persona-enhanced"), ("knowledge", "zero-shot"),
                                        ("tools", "zero-shot")])
def test_synthesis_on_the_embedded_model(tmp_path: Path, embedded_model: tuple, case: str, mode: str) -> None:
    personas = tmp_path / "personas.jsonl"
    personas.write_text("".join(json.dumps({"persona": p}) + "\n" for p in PERSONAS))
    summary = synthesize(SynthesizeParams(use_case=case, mode=mode, personas=[str(personas)],
                                          selection=PersonaSelection(n=2), store=str(tmp_path / "store")))
    stage = summary["stages"][-1]
    c = stage["counts"]
    assert c["rows_in"] == 2 and c["rows_out"] + c["quarantined"] == 2, "every answer kept or quarantined"
    assert summary["model"] == "SmolLM2-135M-Instruct-Q4_1"
    if mode == "persona-enhanced":
        t2p = next(s for s in summary["stages"] if s["stage"] == "demo_text_to_persona")
        assert t2p["counts"]["rows_out"] >= 1, "at least one demonstration got a persona"
    if case == "math":
        # Real items came out (5 calls gave 4 usable problems on this model), not only counts that add up.
        assert c["rows_out"] >= 1, stage["reasons"]
        items = [r for f in summary["item_files"] for r in Store(str(tmp_path / "store")).read_parquet(f).to_pylist()]
        assert all(len(r["text"]) >= 40 and json.loads(r["output"])["problem"] == r["text"] for r in items)
