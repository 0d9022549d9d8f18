"""The stages after synthesis on the fake server: math solutions (three solvers, the program in the
sandbox, the 2-of-3 rule), tool implementations (ast and sandbox checks), the judge, and
decontamination against real test sets (../shared/data/math); with the report they write."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fake_openai import FakeReply
from personahub.flows.synthesize import SynthesizeParams, synthesize
from personahub.tasks.core.store import Store
from personahub.tasks.synthesis.decontamination import Decontamination
from personahub.tasks.synthesis.personas import PersonaSelection

SHARED_DATA = Path(os.environ.get("PERSONAHUB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
_PERSONA = re.compile(r"Persona (\d+):")


def write_personas(path: Path, n: int) -> Path:
    rows = [{"persona_id": f"p{i:04d}", "persona": f"Persona {i}: a harbour pilot who counts ships and tides every day."}
            for i in range(n)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def persona_index(body: dict) -> int:
    return int(_PERSONA.search(body["messages"][-1]["content"]).group(1))


def run_rows(store: Store, run_id: str, stage: str, kind: str = "data") -> list[dict]:
    manifest = store.read_json(f"runs/{run_id}/{stage}/manifest.json")
    return [r for s in manifest["shards"] if s["rows"].get(kind)
            for r in store.read_parquet(s["files"][kind]).to_pylist()]


def dataset_rows(store: Store, summary: dict) -> list[dict]:
    return sorted((r for f in summary["dataset_files"] for r in store.read_parquet(f).to_pylist()), key=lambda r: r["position"])


# --- math: three solvers, 2 of 3 -------------------------------------------------------------

PROBLEMS = [f"Problem {i}: a pilot guides {i + 3} ships a day through the harbour for two weeks. How many ships?" for i in range(5)]
# Per problem: (chain-of-thought seed 1, chain-of-thought seed 2, program-of-thought) answers.
SOLUTIONS = [
    ("Each day ... so \\boxed{12}.", "Adding up, the answer is \\boxed{12.0}", "```python\nprint(3 * 4)\n```"),
    ("\\boxed{\\frac{1}{2}}", "So \\boxed{0.5}", "```python\nraise ValueError('no idea')\n```"),  # 0.5 = 1/2; program fails
    ("\\boxed{7}", "\\boxed{9}", "```python\nprint(11)\n```"),  # nobody agrees
    ("\\boxed{42}", "The answer is 42.", "```python\nwhile True:\n    pass\n```"),  # the program runs past its time
    ("I am not sure.", "\\boxed{5}", "```python\nimport os\nprint(os.environ.get('PERSONAHUB_LLM_API_KEY', 5))\n```"),
]


def math_responder(body: dict) -> FakeReply:
    system = body["messages"][0]["content"]
    if "careful mathematician" in system or "short Python 3 program" in system:
        problem = int(re.search(r"Problem (\d+):", body["messages"][-1]["content"]).group(1))
        cot1, cot2, pot = SOLUTIONS[problem]
        if "short Python 3 program" in system:
            return FakeReply(content=pot)
        return FakeReply(content=cot1 if body["seed"] == 1 else cot2)
    return FakeReply(content=json.dumps({"problem": PROBLEMS[persona_index(body)]}))


def test_math_problems_are_solved_three_ways_and_kept_when_two_agree(server, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PERSONAHUB_LLM_API_KEY", "sk-secret-never-in-a-sandbox")
    personas = write_personas(tmp_path / "personas.parquet", 5)
    server.responder = math_responder
    common = dict(use_case="math", mode="zero-shot", personas=[str(personas)], selection=PersonaSelection(n=5),
                  store=str(tmp_path / "store"), llm_base_url=server.base_url, sandbox_timeout_s=3)
    summary = synthesize(SynthesizeParams(**common))
    store = Store(str(tmp_path / "store"))
    assert server.calls == 5 + 5 * 3, "one call per problem and solver"
    kept = {r["text"].split(":")[0]: r for r in dataset_rows(store, summary)}
    assert sorted(kept) == ["Problem 0", "Problem 1", "Problem 3", "Problem 4"]
    assert (kept["Problem 0"]["agreement"], kept["Problem 0"]["solvers"]) == (3, 3)
    assert kept["Problem 1"]["agreement"] == 2 and kept["Problem 1"]["answer"] in ("\\frac{1}{2}", "0.5")
    assert kept["Problem 3"]["answer"] == "42" and kept["Problem 3"]["agreement"] == 2
    program = json.loads(kept["Problem 3"]["solutions"])[2]
    assert program["solver"] == "program-of-thought#3" and program["program_error"] == "timeout"
    assert json.loads(kept["Problem 1"]["solutions"])[2]["program_error"].startswith("error: ValueError: no idea")
    # The program read its environment: the key set above never reached it, so it printed its default
    # and agreed with the second solver (a leaked key would have left the problem at 1 of 3).
    assert kept["Problem 4"]["answer"] == "5" and json.loads(kept["Problem 4"]["solutions"])[2]["answer"] == "5"
    assert "sk-secret" not in json.dumps(run_rows(store, summary["run_id"], "solve_math"))

    unverified = run_rows(store, summary["run_id"], "solve_math", "unverified")
    assert [r["text"].split(":")[0] for r in unverified] == ["Problem 2"] and unverified[0]["agreement"] == 1
    report = store.read_json(f"runs/{summary['run_id']}/report.json")
    assert report["math"]["agreement"] == {"3 of 3": 1, "2 of 3": 3, "1 of 3": 1}
    assert (report["math"]["verified"], report["math"]["unverified"]) == (4, 1)
    solve = next(s for s in report["stages"] if s["stage"] == "solve_math")
    assert solve["reconciles"] and solve["counts"]["filtered"] == 1 and solve["reasons"] == {"low_agreement": 1}
    assert report["counts"]["items"] == 4

    before = server.calls
    stricter = synthesize(SynthesizeParams(**common, min_agreement=3))
    assert server.calls == before, "a stricter filter is answered from the cache"
    assert [r["text"].split(":")[0] for r in dataset_rows(store, stricter)] == ["Problem 0"]
    with pytest.raises(ValueError, match="exceeds the 3 solvers"):
        synthesize(SynthesizeParams(**common, min_agreement=4))
