"""Persona-driven synthesis on the fake server: persona selection, each use case's parsing and
quarantine reasons, the three prompt modes, resume and the --n growth rule."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fake_openai import FakeReply, persona_sentence
from personahub.flows.synthesize import SynthesizeParams, synthesize
from personahub.tasks.core.store import Store
from personahub.tasks.synthesis.personas import PersonaSelection, select_personas
from personahub.tasks.synthesis.use_cases import check_math_problem

NO_DIVERSITY = {"enabled": False}  # its greedy calls are counted in test_synthesis_verify.py
# Only the generation stage, so the calls counted are its own (the later stages: test_synthesis_verify.py).
GENERATION_ONLY = dict(solve=False, implement=False, diversity=NO_DIVERSITY)
SHARED_DATA = Path(os.environ.get("PERSONAHUB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

GOOD = {
    "math": {"problem": "A beekeeper has 14 hives and each produces 9 kg of honey. She sells jars of 0.45 kg. "
                        "How many jars can she fill?"},
    "logic": {"problem": "Three bakers each bake one bread: rye, spelt or wheat. The rye baker is not Ann. "
                         "Ben bakes spelt. Who bakes what?"},
    "instructions": {"prompt": "Help me plan a week of meals for a family of four on a tight budget."},
    "knowledge": {"title": "How tides work", "article": "Tides are the regular rise and fall of the sea. " * 6},
    "npc": {"name": "Orla", "species": "Elf", "role": "Ferry pilot",
            "background": "Orla ferried pilgrims across the glass lake for forty years.",
            "interaction": "She charges players in stories instead of coins."},
    "tools": {"name": "Tide table lookup", "description": "Returns the next high and low tides for a harbour.",
              "function_name": "get_tide_table",
              "input_args": {"harbour": {"type": "string", "description": "Name of the harbour"}},
              "return": {"type": "object", "description": "Times and heights of the next tides"},
              "dependencies": ["requests"]},
}
# One broken answer per use case, with the reason code it must be quarantined under.
BAD = {
    "math": ({"problem": "A farmer has 3 fields of 4 hectares each. How many hectares? Answer: 12 hectares in all."},
             "contains_solution"),
    "logic": ({"problem": "Too short."}, "schema_invalid"),
    "instructions": ({"question": "Where is my parcel?"}, "schema_invalid"),
    "knowledge": ({"title": "Tides"}, "schema_invalid"),
    "npc": ({"name": "Orla", "species": "Elf"}, "schema_invalid"),
    "tools": ({**GOOD["tools"], "function_name": "class"}, "invalid_interface"),
}


def write_personas(path: Path, n: int) -> Path:
    rows = [{"persona_id": f"p{i:04d}", "persona": f"Persona {i}: " + persona_sentence(hashlib.sha256(str(i).encode()).digest()), "hop": i % 3,
             "relation": ["read", "write"][i % 2], "origin": "text_to_persona" if i % 3 == 0 else "persona_to_persona"}
            for i in range(n)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def responder_for(case: str, bad_personas: set[str]):
    def respond(body: dict) -> FakeReply:
        schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("name")
        if schema == "persona":  # Text-to-Persona on the demonstrations (persona-enhanced mode)
            return FakeReply(content=json.dumps({"persona": "A retired harbour master who writes about the sea for a local paper."}))
        prompt = body["messages"][-1]["content"]
        answer = BAD[case][0] if any(p in prompt for p in bad_personas) else GOOD[case]
        return FakeReply(content=json.dumps(answer))

    return respond


def items_of(store: Store, summary: dict) -> list[dict]:
    return sorted((r for f in summary["generated_files"] for r in store.read_parquet(f).to_pylist()), key=lambda r: r["position"])


def quarantine_of(store: Store, summary: dict, case: str) -> list[dict]:
    manifest = store.read_json(f"runs/{summary['run_id']}/synthesize_{case}/manifest.json")
    return [r for s in manifest["shards"] if s["rows"].get("quarantine")
            for r in store.read_parquet(s["files"]["quarantine"]).to_pylist()]


# --- persona selection ---------------------------------------------------------------------------
def test_selection_is_a_seeded_prefix_and_filters(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "store"))
    write_personas(tmp_path / "store" / "a.parquet", 200)
    write_personas(tmp_path / "store" / "b.parquet", 50)  # the same ids p0000..p0049 again: one persona each

    small, counts, reasons = select_personas(store, ["a.parquet", "b.parquet"], PersonaSelection(n=10, seed=1))
    large, counts_large, _ = select_personas(store, ["a.parquet", "b.parquet"], PersonaSelection(n=40, seed=1))
    assert small.column("persona_id").to_pylist() == large.column("persona_id").to_pylist()[:10], \
        "the first n personas of a larger run are the smaller run's"
    assert small.column("position").to_pylist() == list(range(10))
    assert counts.rows_in == 250 and counts.rows_out == 10 and counts.filtered == 240
    assert set(reasons) <= {"duplicate_id", "not_sampled"} and sum(reasons.values()) == 240
    assert len(set(large.column("persona_id").to_pylist())) == 40, "a persona in two files is selected once"
    both, _, _ = select_personas(store, ["a.parquet", "b.parquet"], PersonaSelection(n=1000, seed=1))
    assert sorted(both.column("persona_id").to_pylist()) == [f"p{i:04d}" for i in range(200)]

    every, _, _ = select_personas(store, ["a.parquet"], PersonaSelection(n=1000, seed=1))
    assert sorted(every.column("persona_id").to_pylist()) == [f"p{i:04d}" for i in range(200)]
    other, _, _ = select_personas(store, ["a.parquet"], PersonaSelection(n=10, seed=2))
    assert other.column("persona_id").to_pylist() != small.column("persona_id").to_pylist()

    hop0, c0, r0 = select_personas(store, ["a.parquet"], PersonaSelection(n=1000, hops=[0], relations=["read"]))
    expected = {f"p{i:04d}" for i in range(200) if i % 3 == 0 and i % 2 == 0}
    assert set(hop0.column("persona_id").to_pylist()) == expected
    assert c0.rows_in == c0.rows_out + c0.filtered and r0["not_hop"] == 200 - 67


def test_selection_reads_files_without_graph_columns(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    pq.write_table(pa.table({"persona_id": ["x", "y"], "persona": ["A nurse.", "A pilot."]}), tmp_path / "p.parquet")
    table, counts, _ = select_personas(store, ["p.parquet"], PersonaSelection(n=5))
    assert sorted(table.column("persona").to_pylist()) == ["A nurse.", "A pilot."]
    assert table.column("hop").null_count == 2 and counts.rows_out == 2


# --- use-case checks on real data ----------------------------------------------------------------
@pytest.mark.skipif(not (SHARED_DATA / "math" / "gsm8k_test.jsonl").is_file(), reason="shared math data not found")
def test_math_check_on_real_gsm8k() -> None:
    rows = [json.loads(line) for line in (SHARED_DATA / "math" / "gsm8k_test.jsonl").open()][:300]
    questions = [check_math_problem({"problem": r["question"]}) for r in rows]
    with_answers = [check_math_problem({"problem": r["question"] + "\n" + r["answer"]}) for r in rows]
    assert sum(q is None for q in questions) >= 290, "real problems without their solution pass"
    assert all(w == "contains_solution" for w in with_answers), "every GSM8K solution ends in '#### n'"


def test_math_check_sub_problems() -> None:
    two = "A baker sells loaves.\n1. How many loaves does she sell in a week?\n2. What is her income?"
    three = two + "\n3. What is her profit?"
    assert check_math_problem({"problem": two}) is None
    assert check_math_problem({"problem": three}) == "too_many_subproblems"
    assert check_math_problem({"problem": "Find x such that 2x = 6. The answer is: 3"}) == "contains_solution"


# --- the flow on the fake server -----------------------------------------------------------------
@pytest.mark.parametrize("case", list(GOOD))
def test_each_use_case_keeps_good_answers_and_quarantines_bad_ones(server, tmp_path: Path, case: str) -> None:
    personas = write_personas(tmp_path / "personas.parquet", 12)
    persona_texts = pq.read_table(personas).column("persona").to_pylist()
    bad = set(persona_texts[::3])
    server.responder = responder_for(case, bad)
    variables = {"world": "A desert of singing dunes where caravans trade in water."} if case == "npc" else {}
    summary = synthesize(SynthesizeParams(**GENERATION_ONLY, use_case=case, mode="few-shot", personas=[str(personas)],
                                          selection=PersonaSelection(n=12), variables=variables,
                                          store=str(tmp_path / "store"), llm_base_url=server.base_url))
    store = Store(str(tmp_path / "store"))
    items, rejects = items_of(store, summary), quarantine_of(store, summary, case)
    assert server.calls == 12
    assert {r["persona"] for r in items} == set(persona_texts) - bad
    assert len(rejects) == len(bad) and {r["reason"].split(":")[0] for r in rejects} == {BAD[case][1]}
    stage = summary["stages"][-1]
    c = stage["counts"]
    assert c["rows_in"] == 12 == c["rows_out"] + c["filtered"] + c["quarantined"]
    item = items[0]
    assert json.loads(item["output"]) == GOOD[case] and item["use_case"] == case and item["mode"] == "few-shot"
    assert item["template"].startswith(f"{case}@") and item["model"] and item["prompt_tokens"] > 0
    prompt = server.requests[0]["messages"][-1]["content"]
    assert "Example 1:" in prompt and "Example 2:" in prompt, "few-shot shows the shipped demonstrations"
    if case == "npc":
        assert "singing dunes" in prompt


def test_rerun_pays_nothing_and_raising_n_pays_only_for_new_personas(server, tmp_path: Path) -> None:
    personas = write_personas(tmp_path / "personas.parquet", 30)
    server.responder = responder_for("instructions", set())
    common = dict(use_case="instructions", mode="zero-shot", personas=[str(personas)], diversity=NO_DIVERSITY,
                  store=str(tmp_path / "store"), llm_base_url=server.base_url)
    first = synthesize(SynthesizeParams(**common, selection=PersonaSelection(n=6)))
    store = Store(str(tmp_path / "store"))
    first_ids = [r["persona_id"] for r in items_of(store, first)]
    assert server.calls == 6 and "Example" not in server.requests[0]["messages"][-1]["content"]
    again = synthesize(SynthesizeParams(**common, selection=PersonaSelection(n=6)))
    assert server.calls == 6 and again["llm_this_run"]["calls"] == 0, "a rerun makes no call"
    assert again["run_id"] == first["run_id"]
    grown = synthesize(SynthesizeParams(**common, selection=PersonaSelection(n=10)))
    assert server.calls == 10 and grown["llm_this_run"]["calls"] == 4, "only the 4 new personas are asked"
    assert grown["run_id"] == first["run_id"], "n is not part of the run id"
    assert [r["persona_id"] for r in items_of(store, grown)][:6] == first_ids
    assert again["reused"]["shards_reused"] == again["reused"]["shards"] > 0

    fresh = synthesize(SynthesizeParams(**common, selection=PersonaSelection(n=10), fresh=True))
    assert fresh["run_id"] == first["run_id"] and server.calls == 10, "--fresh recomputes from the cache"
    assert fresh["reused"]["shards_reused"] == 0 and fresh["reused"]["cache_hits"] == 10
    assert [r["persona_id"] for r in items_of(store, fresh)] == [r["persona_id"] for r in items_of(store, grown)]


def test_a_run_id_in_use_is_refused_before_any_call(server, tmp_path: Path) -> None:
    from personahub.tasks.core.run_lock import RunLock, RunLocked

    personas = write_personas(tmp_path / "personas.parquet", 4)
    server.responder = responder_for("instructions", set())
    params = SynthesizeParams(use_case="instructions", mode="zero-shot", personas=[str(personas)], run_id="busy",
                              diversity=NO_DIVERSITY, store=str(tmp_path / "store"), llm_base_url=server.base_url,
                              selection=PersonaSelection(n=4))
    with RunLock(Store(str(tmp_path / "store")), "busy"):  # this (live) process holds it
        with pytest.raises(RunLocked, match="run busy is in use"):
            synthesize(params)
    assert server.calls == 0
    assert synthesize(params)["items"] == 4  # free again once released


def test_persona_enhanced_infers_the_demonstrations_personas_first(server, tmp_path: Path) -> None:
    personas = write_personas(tmp_path / "personas.parquet", 4)
    server.responder = responder_for("math", set())
    summary = synthesize(SynthesizeParams(**GENERATION_ONLY, use_case="math", mode="persona-enhanced", personas=[str(personas)],
                                          selection=PersonaSelection(n=4), variables={"topic": "geometry"},
                                          store=str(tmp_path / "store"), llm_base_url=server.base_url))
    stages = [s["stage"] for s in summary["stages"]]
    assert stages == ["persona_input", "select_personas", "demo_documents", "demo_text_to_persona", "synthesize_math"]
    assert server.calls == 2 + 4, "one Text-to-Persona call per shipped demonstration, then one per persona"
    prompt = server.requests[-1]["messages"][-1]["content"]
    assert prompt.count("Persona: A retired harbour master") == 2 and "in geometry" in prompt
    assert summary["items"] == 4


def test_an_answer_copying_a_demonstration_is_quarantined(server, tmp_path: Path) -> None:
    personas = write_personas(tmp_path / "personas.parquet", 2)
    demo = json.loads((Path(__file__).resolve().parents[1] / "prompts" / "math" / "demos.jsonl").read_text().splitlines()[0])
    copied = {"problem": "Here is one: " + " ".join(demo["output"]["problem"].split()[:12]) + " and so on, how far?"}
    server.responder = lambda body: FakeReply(content=json.dumps(copied))
    summary = synthesize(SynthesizeParams(**GENERATION_ONLY, use_case="math", mode="few-shot", personas=[str(personas)],
                                          selection=PersonaSelection(n=2), store=str(tmp_path / "store"),
                                          llm_base_url=server.base_url))
    assert summary["items"] == 0 and summary["stages"][-1]["reasons"] == {"copies_demonstration": 2}
    zero = synthesize(SynthesizeParams(**GENERATION_ONLY, use_case="math", mode="zero-shot", personas=[str(personas)],
                                       selection=PersonaSelection(n=2), store=str(tmp_path / "store"),
                                       llm_base_url=server.base_url))
    assert zero["items"] == 2, "without demonstrations there is nothing to copy"


def test_bad_parameters_fail_before_any_call(server, tmp_path: Path) -> None:
    personas = write_personas(tmp_path / "personas.parquet", 3)
    common = dict(personas=[str(personas)], store=str(tmp_path / "store"), llm_base_url=server.base_url,
                  diversity=NO_DIVERSITY)
    with pytest.raises(ValueError, match="needs world"):
        synthesize(SynthesizeParams(use_case="npc", **common))
    with pytest.raises(ValueError, match="takes no variable colour"):
        synthesize(SynthesizeParams(use_case="math", variables={"colour": "red"}, **common))
    with pytest.raises(ValueError, match="no variant 'riddle'"):
        synthesize(SynthesizeParams(use_case="logic", variables={"variant": "riddle"}, **common))
    with pytest.raises(FileNotFoundError, match="mode 'two-shot'"):
        synthesize(SynthesizeParams(use_case="math", mode="two-shot", **common))
    with pytest.raises(FileNotFoundError, match="no published version"):
        synthesize(SynthesizeParams(**GENERATION_ONLY, use_case="math", store=str(tmp_path / "empty"), llm_base_url=server.base_url))
    assert server.calls == 0


def test_cli_synthesize(server, tmp_path: Path) -> None:
    from personahub.cli import app

    personas = write_personas(tmp_path / "personas.parquet", 5)
    server.responder = responder_for("logic", set())
    result = CliRunner().invoke(app, ["synthesize", "--use-case", "logic", "--mode", "zero-shot", "--n", "5",
                                      "--var", "variant=spatial", "--personas", str(personas),
                                      "--store", str(tmp_path / "store"), "--llm-base-url", server.base_url,
                                      "--embedding-base-url", server.base_url])
    assert result.exit_code == 0, result.output
    assert "5 logic items (zero-shot) from 5 personas (5 valid, 0 quarantined)" in result.output
    calls = server.calls
    dry = CliRunner().invoke(app, ["synthesize", "--use-case", "logic", "--mode", "zero-shot", "--n", "7",
                                   "--var", "variant=spatial", "--personas", str(personas), "--dry-run",
                                   "--store", str(tmp_path / "store"), "--llm-base-url", server.base_url])
    assert dry.exit_code == 0 and server.calls == calls, dry.output
    assert "no LLM call made" in dry.output and re.search(r"synthesize_logic\s+0\s+5\s", dry.output), dry.output
    assert "positions, directions" in server.requests[0]["messages"][0]["content"], "the spatial variant's instruction"
    run_id = next(line.split("personahub report ")[1].split(";")[0] for line in result.output.splitlines()
                  if "personahub report " in line)

    shown = CliRunner().invoke(app, ["report", run_id, "--store", str(tmp_path / "store")])
    assert shown.exit_code == 0, shown.output
    assert "5 of 5 answers valid (100%)" in shown.output and "| synthesize_logic | 5 | 5 | 0 | 0 |" in shown.output
    jsonl = CliRunner().invoke(app, ["export", run_id, "--format", "jsonl", "--out", str(tmp_path / "out.jsonl"),
                                     "--store", str(tmp_path / "store")])
    assert jsonl.exit_code == 0, jsonl.output
    exported = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(exported) == 5 and all(row["output"] == GOOD["logic"] for row in exported)
    assert "answer" not in exported[0], "columns no item filled are left out"
    hf = CliRunner().invoke(app, ["export", run_id, "--format", "hf", "--out", str(tmp_path / "hf"),
                                  "--store", str(tmp_path / "store")])
    assert hf.exit_code == 0, hf.output
    import datasets

    loaded = datasets.load_dataset(str(tmp_path / "hf"), split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert loaded.num_rows == 5 and sorted(loaded["persona_id"]) == sorted(r["persona_id"] for r in exported)
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "fake-model" in card and "logic@" in card and "in this dataset: 5" in card
    unknown = CliRunner().invoke(app, ["report", "syn-nope", "--store", str(tmp_path / "store")])
    assert unknown.exit_code == 2 and "no report at" in unknown.output
    missing = CliRunner().invoke(app, ["synthesize", "--use-case", "npc", "--personas", str(personas),
                                       "--store", str(tmp_path / "store"), "--llm-base-url", server.base_url])
    assert missing.exit_code == 2 and "npc needs world" in missing.output and "Traceback" not in missing.output


def test_hub_personas_are_read_from_the_latest_version(server, tmp_path: Path) -> None:
    """A hub version as the source: its parts are read, and the run id names the version."""
    from personahub.tasks.hub.publish import HUB_COLUMNS, publish_hub

    store = Store(str(tmp_path / "store"))
    rows = pq.read_table(write_personas(tmp_path / "p.parquet", 8)).to_pylist()
    table = pa.Table.from_pylist([{c: r.get(c) for c in HUB_COLUMNS} for r in rows],
                                 schema=pa.schema([(c, pa.int32() if c == "hop" else pa.string()) for c in HUB_COLUMNS]))
    pq.write_table(table, tmp_path / "store" / "src.parquet")
    publish_hub(store, "default", "run-x", ["src.parquet"], lineage={})
    server.responder = responder_for("instructions", set())
    summary = synthesize(SynthesizeParams(**GENERATION_ONLY, use_case="instructions", mode="zero-shot", selection=PersonaSelection(n=3),
                                          store=str(tmp_path / "store"), llm_base_url=server.base_url))
    assert summary["source"] == "hub:default/v0001" and summary["items"] == 3
    assert {r["persona_id"] for r in items_of(store, summary)} <= {r["persona_id"] for r in rows}


def test_a_budget_stops_the_run_and_a_larger_one_finishes_it_as_an_unbounded_run(server, tmp_path: Path,
                                                                                  monkeypatch) -> None:
    from personahub.tasks.llm.budget import BudgetError, BudgetExhausted

    personas = write_personas(tmp_path / "personas.parquet", 12)

    def respond(body: dict) -> FakeReply:  # every call costs exactly 100 tokens
        return FakeReply(content=json.dumps(GOOD["instructions"]), prompt_tokens=60, completion_tokens=40)

    server.responder = respond
    common = dict(use_case="instructions", mode="zero-shot", personas=[str(personas)], diversity=NO_DIVERSITY,
                  llm_base_url=server.base_url, selection=PersonaSelection(n=12), shard_rows=2,
                  llm_shard_parallelism=1)
    unbounded = synthesize(SynthesizeParams(**common, store=str(tmp_path / "unbounded")))
    assert server.calls == 12
    server.reset(respond)

    bounded = SynthesizeParams(**common, store=str(tmp_path / "store"), budget_tokens=450)
    with pytest.raises(BudgetExhausted, match="450 tokens"):
        synthesize(bounded)
    stopped_at = server.calls
    # Concurrency 8 per endpoint: the shard that crosses the limit finishes its calls in flight.
    assert 5 <= stopped_at < 12
    store = Store(str(tmp_path / "store"))
    run_id = unbounded["run_id"]
    done = store.list(f"runs/{run_id}/synthesize_instructions/_done")
    assert 0 < len(done) < 6, "finished shards are kept, the rest is left to the resume"

    resumed = synthesize(SynthesizeParams(**{**bounded.model_dump(), "budget_tokens": 10_000}))
    assert server.calls == 12, "the resume pays only for what the stopped run had not received"
    assert resumed["run_id"] == run_id
    assert items_of(store, resumed) == items_of(Store(str(tmp_path / "unbounded")), unbounded)

    with pytest.raises(BudgetError, match="price"):
        synthesize(SynthesizeParams(**common, store=str(tmp_path / "store"), budget_cost=0.01))
    monkeypatch.setenv("PERSONAHUB_LLM_PRICES", json.dumps({"fake-model": {"prompt": 1.0, "completion": 2.0}}))
    server.reset(respond)
    priced = synthesize(SynthesizeParams(**common, store=str(tmp_path / "priced"), budget_cost=1.0))
    assert server.calls == 12 and priced["cost_usd"] == pytest.approx(12 * (60 * 1.0 + 40 * 2.0) / 1e6)
    with pytest.raises(BudgetExhausted, match="cost budget"):
        synthesize(SynthesizeParams(**common, store=str(tmp_path / "priced-bounded"), budget_cost=0.0005))


def test_a_dry_run_estimates_the_calls_from_the_cache_and_makes_none(server, tmp_path: Path) -> None:
    personas = write_personas(tmp_path / "personas.parquet", 10)
    server.responder = responder_for("math", set())
    common = dict(use_case="math", mode="zero-shot", personas=[str(personas)], store=str(tmp_path / "store"),
                  llm_base_url=server.base_url, diversity=NO_DIVERSITY)
    first = synthesize(SynthesizeParams(**common, solve=False, selection=PersonaSelection(n=4)))
    asked = [r for r in server.requests if "messages" in r]
    assert server.calls == 4 and len(asked) == 4
    server.requests.clear()

    dry = synthesize(SynthesizeParams(**common, selection=PersonaSelection(n=10), dry_run=True))
    assert server.calls == 4, "a dry run asks nothing"
    assert dry["dry_run"] and dry["personas"] == 10  # (another run id: it solves; the cache is the store's)
    assert first["items"] == 4
    gen, *solvers = dry["estimates"]
    assert (gen["stage"], gen["calls"], gen["cached"], gen["exact"]) == ("synthesize_math", 6, 4, True)
    # Prompt tokens from the requests the real run sends for the same 6 personas, characters / 4.
    synthesize(SynthesizeParams(**common, solve=False, selection=PersonaSelection(n=10)))
    sent = [r for r in server.requests if "messages" in r]
    assert len(sent) == 6
    assert gen["prompt_tokens"] == sum(len(m["content"]) for r in sent for m in r["messages"]) // 4
    assert gen["completion_tokens_max"] == 6 * sent[0]["max_tokens"]
    # The three solvers, per item at most: two chain-of-thought and one program-of-thought.
    assert {e["stage"]: e["calls"] for e in solvers} == {"solve_math (chain-of-thought)": 20,
                                                         "solve_math (program-of-thought)": 10}
    assert not any(e["exact"] for e in solvers) and dry["total"]["exact"] is False
