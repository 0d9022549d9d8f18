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
                  store=str(tmp_path / "store"), llm_base_url=server.base_url, embedding_base_url=server.base_url, sandbox_timeout_s=3,
                  diversity={"enabled": False})
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


# --- tools: the code parses, defines the function, imports in the sandbox --------------------

# Per persona: the implementation the fake model writes, and where it must end up.
IMPLEMENTATIONS = [
    ("```python\nimport json\n\ndef get_tide_table(harbour, day):\n    return {'harbour': harbour, 'day': day}\n```", "data"),
    ("```python\ndef get_tide_table(harbour, day)\n    return 1\n```", "syntax_error"),
    ("```python\ndef get_tide_table(port):\n    return port\n```", "argument_mismatch"),
    ("```python\ndef tide(harbour, day):\n    return 1\n```", "missing_function"),
    ("```python\nimport tidal_magic_pkg\n\ndef get_tide_table(harbour, day):\n    return tidal_magic_pkg.get(harbour)\n```",
     "missing_dependency"),
    ("```python\nimport undeclared_xyz_mod\n\ndef get_tide_table(harbour, day):\n    return 1\n```", "undeclared_import"),
    ("```python\nraise RuntimeError('broken at import')\n\ndef get_tide_table(harbour, day):\n    return 1\n```", "import_error"),
    ("Sorry, I cannot write code.", "no_code"),
    # Top-level code that phones home: the sandbox refuses the socket, so the import fails.
    ("```python\nimport urllib.request\nurllib.request.urlopen('http://127.0.0.1:9/')\n\ndef get_tide_table(harbour, day):\n"
     "    return 1\n```", "import_error"),
]


def tools_responder(body: dict) -> FakeReply:
    prompt = body["messages"][-1]["content"]
    if prompt.startswith("Implement this tool interface"):
        index = int(re.search(r"Tide table lookup (\d+)", prompt).group(1))
        return FakeReply(content=IMPLEMENTATIONS[index][0])
    i = persona_index(body)
    return FakeReply(content=json.dumps({
        "name": f"Tide table lookup {i}", "description": f"Returns the next tides for harbour number {i}.",
        "function_name": "get_tide_table",
        "input_args": {"harbour": {"type": "string", "description": "Harbour name"},
                       "day": {"type": "string", "description": "ISO date"}},
        "return": {"type": "object", "description": "Times and heights"},
        # Only the fifth declares a package that is not installed here; a service name is never looked up.
        "dependencies": ["requests", "NOAA tides API", *(["tidal-magic-pkg"] if i == 4 else [])]}))


def test_tool_implementations_are_checked_in_the_sandbox(server, tmp_path: Path) -> None:
    personas = write_personas(tmp_path / "personas.parquet", len(IMPLEMENTATIONS))
    server.responder = tools_responder
    summary = synthesize(SynthesizeParams(use_case="tools", mode="zero-shot", personas=[str(personas)],
                                          selection=PersonaSelection(n=len(IMPLEMENTATIONS)), sandbox_timeout_s=5,
                                          store=str(tmp_path / "store"), llm_base_url=server.base_url, embedding_base_url=server.base_url))
    store = Store(str(tmp_path / "store"))
    where = {}
    for row in dataset_rows(store, summary):
        where[row["persona_id"]] = "data"
    for row in run_rows(store, summary["run_id"], "implement_tools", "unverified"):
        where[row["persona_id"]] = "missing_dependency"
        assert json.loads(row["checks"])["missing"] == ["tidal_magic_pkg"], "named, not installed"
    for row in run_rows(store, summary["run_id"], "implement_tools", "quarantine"):
        where[row["persona_id"]] = row["reason"].split(":")[0]
    assert where == {f"p{i:04d}": expected for i, (_, expected) in enumerate(IMPLEMENTATIONS)}
    good = dataset_rows(store, summary)[0]
    assert "def get_tide_table(harbour, day)" in good["implementation"]
    assert json.loads(good["checks"]) == {"missing": [], "parameters": ["harbour", "day"], "status": "ok"}

    tools = store.read_json(f"runs/{summary['run_id']}/report.json")["tools"]
    n = len(IMPLEMENTATIONS)
    assert tools["asked"] == n and tools["parsed"] == n - 2 and tools["defines_function"] == n - 4
    assert tools["imports"] == 1 and tools["missing_dependencies"] == {"tidal_magic_pkg": 1}


# --- judge --------------------------------------------------------------------------------------

def judge_responder(body: dict) -> FakeReply:
    schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("name")
    if schema != "scores":
        return FakeReply(content=json.dumps({"prompt": f"Persona {persona_index(body)}: help me plan my day at the harbour."}))
    i = int(re.search(r"Persona (\d+):", body["messages"][-1]["content"]).group(1))
    if i == 3:
        return FakeReply(content=json.dumps({"plausible": 5}))  # a criterion missing: not a grade
    return FakeReply(content=json.dumps({"plausible": [5, 4, 1][i], "clear": [5, 3, 2][i]}))


def test_the_judge_scores_every_item_and_filters_by_its_mean(server, tmp_path: Path) -> None:
    personas = write_personas(tmp_path / "personas.parquet", 4)
    server.responder = judge_responder
    summary = synthesize(SynthesizeParams(use_case="instructions", mode="zero-shot", personas=[str(personas)], judge=True,
                                          min_judge_score=3, selection=PersonaSelection(n=4),
                                          store=str(tmp_path / "store"), llm_base_url=server.base_url, embedding_base_url=server.base_url))
    store = Store(str(tmp_path / "store"))
    kept = {r["persona_id"]: r for r in dataset_rows(store, summary)}
    assert {k: v["judge_score"] for k, v in kept.items()} == {"p0000": 5.0, "p0001": 3.5}
    assert json.loads(kept["p0001"]["judge_scores"]) == {"clear": 3, "plausible": 4}
    assert [r["persona_id"] for r in run_rows(store, summary["run_id"], "judge", "unverified")] == ["p0002"]
    rejected = run_rows(store, summary["run_id"], "judge", "quarantine")
    assert [(r["persona_id"], r["reason"].split(":")[0]) for r in rejected] == [("p0003", "schema_invalid")]
    judge = store.read_json(f"runs/{summary['run_id']}/report.json")["judge"]
    assert judge == {"judged": 3, "kept": 2, "mean": round((5 + 3.5 + 1.5) / 3, 3), "scores": {"1.5": 1, "3.5": 1, "5.0": 1}}
    criteria = server.requests[-1]["messages"][-1]["content"]
    assert "- plausible:" in criteria and "- clear:" in criteria


# --- decontamination against real test sets -----------------------------------------------------

def independent_13gram_share(text: str, reference: str) -> float:
    """The share of the text's word 13-grams found in the reference, computed without the module."""
    def grams(t: str) -> set[tuple[str, ...]]:
        w = re.findall(r"\w+", t.lower())
        return {tuple(w[i:i + 13]) for i in range(len(w) - 12)}
    mine = grams(text)
    return len(mine & grams(reference)) / len(mine) if mine else 0.0


@pytest.mark.skipif(not (SHARED_DATA / "math" / "gsm8k_test.jsonl").exists(), reason="../shared/data/math not present")
def test_a_copied_gsm8k_question_is_caught_and_a_paraphrase_is_not(server, tmp_path: Path) -> None:
    gsm8k = SHARED_DATA / "math" / "gsm8k_test.jsonl"
    math500 = SHARED_DATA / "math" / "MATH500_test_prm800k_split.jsonl"
    questions = [json.loads(line)["question"] for line in gsm8k.read_text().splitlines()[:50]]
    copied = questions[7]
    paraphrase = ("A woman keeps ducks whose daily output is sixteen eggs; three go into her breakfast and four into "
                  "muffins for friends, and each remaining egg fetches two dollars at the market. Find her daily income.")
    original = "A harbour pilot guides 4 ships in the morning and 5 in the afternoon, six days a week. How many in a week?"
    # The expected shares, computed independently of the module: the copy is all shared, the others share none.
    reference_text = "\n".join(questions)
    assert independent_13gram_share(copied, reference_text) == 1.0
    assert independent_13gram_share(paraphrase, gsm8k.read_text()) == 0.0
    texts = [copied, paraphrase, original]
    server.responder = lambda body: FakeReply(content=json.dumps({"problem": texts[persona_index(body)]}))
    personas = write_personas(tmp_path / "personas.parquet", 3)
    common = dict(use_case="math", mode="zero-shot", personas=[str(personas)], solve=False,
                  selection=PersonaSelection(n=3), store=str(tmp_path / "store"), llm_base_url=server.base_url, embedding_base_url=server.base_url)
    references = [str(gsm8k), f"{math500}#problem"]
    summary = synthesize(SynthesizeParams(**common, decontamination=Decontamination(references=references)))
    store = Store(str(tmp_path / "store"))
    assert sorted(r["text"] for r in dataset_rows(store, summary)) == sorted([paraphrase, original])
    assert all(r["contamination"] == 0.0 for r in dataset_rows(store, summary))
    dropped = run_rows(store, summary["run_id"], "decontaminate", "contaminated")
    assert [(r["text"], r["contamination"]) for r in dropped] == [(copied, 1.0)]
    report = store.read_json(f"runs/{summary['run_id']}/report.json")["decontamination"]
    assert (report["checked"], report["contaminated"], report["flagged_kept"], report["n"]) == (3, 1, 0, 13)

    kept = synthesize(SynthesizeParams(**common, decontamination=Decontamination(references=references, drop=False)))
    flagged = {r["text"]: r["contamination"] for r in dataset_rows(store, kept)}
    assert flagged == {copied: 1.0, paraphrase: 0.0, original: 0.0}
    assert store.read_json(f"runs/{kept['run_id']}/report.json")["decontamination"]["flagged_kept"] == 1


# --- diversity (Figure 10) ----------------------------------------------------------------------

def test_pairs_are_drawn_near_each_target_similarity() -> None:
    import numpy as np

    from personahub.tasks.synthesis.diversity import mean_pairwise_cosine, pick_pairs

    # Unit vectors at known angles from e1: cos(a_i - a_j) is each pair's similarity.
    angles = np.arccos([1.0, 0.8, 0.6, 0.4])
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    pairs = pick_pairs(vectors, [0.8, 0.4], tolerance=0.01, per_target=5, seed=0)
    expected = {(i, j): float(np.cos(angles[i] - angles[j])) for i in range(4) for j in range(i + 1, 4)}
    assert {(t, i, j) for t, i, j, _ in pairs} == {(t, i, j) for (i, j), c in expected.items() for t in (0.8, 0.4)
                                                  if abs(c - t) <= 0.01}
    assert all(abs(c - expected[(i, j)]) < 1e-5 for _, i, j, c in pairs)
    rng = np.random.default_rng(1)
    many = rng.normal(size=(40, 8))
    many /= np.linalg.norm(many, axis=1, keepdims=True)
    brute = (many @ many.T)[np.triu_indices(40, k=1)].mean()
    assert abs(mean_pairwise_cosine(many) - brute) < 1e-4


def test_hub_vectors_are_read_from_the_stored_index(tmp_path: Path) -> None:
    import numpy as np

    from personahub.tasks.dedup.embedding_stage import vector_schema
    from personahub.tasks.synthesis.diversity import hub_vectors

    store = Store(str(tmp_path / "store"))
    vectors = np.eye(3, 4, dtype=np.float16)
    table = pa.Table.from_pylist([{"persona_id": f"p{i}", "rank": i, "vector": vectors[i].tobytes()} for i in range(3)],
                                 schema=vector_schema(4))
    store.write_parquet("hubs/h/v0001/index/embedding/s0.parquet", table)
    index = {"model": "m", "dim": 4, "shards": [{"id": "s0", "vectors": "hubs/h/v0001/index/embedding/s0.parquet", "rows": 3}]}
    found = hub_vectors(store, index, {"p0", "p2", "nobody"}, "m")
    assert sorted(found) == ["p0", "p2"] and np.allclose(found["p2"], [0, 0, 1, 0])
    assert hub_vectors(store, index, {"p0"}, "another-model") == {}, "another model's vectors are not comparable"


def test_diversity_pairs_are_written_with_greedy_decoding_and_plotted(server, tmp_path: Path) -> None:
    import numpy as np

    from fake_openai import fake_embedding

    rows = [{"persona_id": f"p{i:04d}", "persona": f"Persona {i}: " + " ".join(["pilot", "baker", "nurse", "farmer"][: 1 + i % 4])
             + f" of the {['north', 'south'][i % 2]} harbour"} for i in range(8)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "personas.parquet")
    server.responder = lambda body: FakeReply(content=json.dumps(
        {"prompt": f"Persona {persona_index(body)} asks: how do I plan a day at the harbour number {persona_index(body) % 3}?"}))
    summary = synthesize(SynthesizeParams(
        use_case="instructions", mode="zero-shot", personas=[str(tmp_path / "personas.parquet")],
        selection=PersonaSelection(n=4), store=str(tmp_path / "store"), llm_base_url=server.base_url, embedding_base_url=server.base_url,
        diversity={"targets": [0.5], "tolerance": 0.5, "pairs": 3, "pool": 8}))
    store = Store(str(tmp_path / "store"))
    report = store.read_json(f"runs/{summary['run_id']}/report.json")
    d = report["diversity"]
    assert d["pool"] == 8 and d["from_hub_index"] == 0 and len(d["pairs"]) == 3 and d["targets"][0]["pairs"] == 3
    greedy = [r for r in server.requests if r.get("temperature") == 0.0]
    assert greedy, "the pairs' outputs are written with greedy decoding"
    pairs = run_rows(store, summary["run_id"], "diversity")
    for pair in pairs:  # both similarities, recomputed from the fake server's own embedding function
        a, b = (next(r["persona"] for r in rows if r["persona_id"] == pair[k]) for k in ("persona_a", "persona_b"))
        assert abs(pair["persona_similarity"] - float(np.dot(fake_embedding(a), fake_embedding(b)))) < 1e-3
        assert abs(pair["output_similarity"] - float(np.dot(fake_embedding(pair["output_a"]),
                                                            fake_embedding(pair["output_b"])))) < 1e-3
    assert store.read_bytes(d["plot"]).startswith(b"\x89PNG\r\n\x1a\n")
    items = [r["text"] for r in dataset_rows(store, summary)]
    vectors = np.array([fake_embedding(t) for t in items])
    brute = (vectors @ vectors.T)[np.triu_indices(len(items), k=1)].mean()
    assert abs(report["spread"]["mean_pairwise_cosine"] - brute) < 1e-3
    calls = server.calls
    synthesize(SynthesizeParams(
        use_case="instructions", mode="zero-shot", personas=[str(tmp_path / "personas.parquet")],
        selection=PersonaSelection(n=4), store=str(tmp_path / "store"), llm_base_url=server.base_url, embedding_base_url=server.base_url,
        diversity={"targets": [0.5], "tolerance": 0.5, "pairs": 3, "pool": 8}))
    assert server.calls == calls, "a rerun makes no call"


# --- personas by a text query over the hub's stored vectors -------------------------------------

def test_a_text_query_selects_from_the_hubs_stored_vectors(server, tmp_path: Path) -> None:
    import numpy as np

    from fake_openai import fake_embedding
    from personahub.tasks.dedup.embedding_stage import vector_schema
    from personahub.tasks.hub.publish import HUB_COLUMNS, publish_hub
    from personahub.tasks.serving.embedding_server import EMBEDDING_MODEL_ALIAS
    from personahub.tasks.synthesis.use_cases import SynthesisParamsError

    texts = ["A hospital nurse who cares for patients on the night shift.",
             "A hospital pharmacist who checks the patients' medication.",
             "A nurse in a rural clinic who vaccinates patients.",
             "A carpenter who builds oak staircases.",
             "A sailor who races small boats on the lake.",
             "A baker who makes sourdough bread every morning.",
             "A physiotherapist who helps hospital patients walk again.",
             "A chess coach who trains teenagers for tournaments."]
    store = Store(str(tmp_path / "store"))
    rows = [{"persona_id": f"h{i}", "persona": t, "hop": 0, "relation": "read", "origin": "text_to_persona"}
            for i, t in enumerate(texts)]
    table = pa.Table.from_pylist([{c: r.get(c) for c in HUB_COLUMNS} for r in rows],
                                 schema=pa.schema([(c, pa.int32() if c == "hop" else pa.string()) for c in HUB_COLUMNS]))
    pq.write_table(table, tmp_path / "store" / "src.parquet")
    dim = len(fake_embedding("x"))

    def index(prefix: str, previous: dict | None) -> dict:
        vectors = [{"persona_id": r["persona_id"], "rank": i,
                    "vector": np.asarray(fake_embedding(r["persona"]), np.float16).tobytes()} for i, r in enumerate(rows)]
        store.write_parquet(f"{prefix}/embedding/s0.parquet", pa.Table.from_pylist(vectors, schema=vector_schema(dim)))
        return {"embedding": {"model": EMBEDDING_MODEL_ALIAS, "dim": dim,
                              "shards": [{"id": "s0", "vectors": f"{prefix}/embedding/s0.parquet", "rows": len(rows)}]}}

    publish_hub(store, "default", "run-x", ["src.parquet"], lineage={}, index=index)
    server.responder = responder_for_prompts
    query = "hospital patients nurse"
    # The expected matches, from the fake server's embedding function directly.
    q = np.asarray(fake_embedding(query))
    expected = {rows[i]["persona_id"] for i in np.argsort([-(q @ np.asarray(fake_embedding(t))) for t in texts])[:3]}
    common = dict(use_case="instructions", mode="zero-shot", store=str(tmp_path / "store"), solve=False,
                  llm_base_url=server.base_url, embedding_base_url=server.base_url, diversity={"enabled": False})
    summary = synthesize(SynthesizeParams(**common, selection=PersonaSelection(n=2, query=query, query_k=3)))
    picked = {r["persona_id"] for r in dataset_rows(store, summary)}
    assert len(picked) == 2 and picked <= expected
    matched = run_rows(store, summary["run_id"], "query_personas")
    assert {r["persona_id"] for r in matched} == expected and matched[0]["score"] >= matched[-1]["score"]
    select = next(s for s in summary["stages"] if s["stage"] == "select_personas")
    assert select["reasons"]["not_matching_query"] == len(texts) - 3
    with pytest.raises(SynthesisParamsError, match="needs a hub version with stored embedding vectors"):
        synthesize(SynthesizeParams(**{**common, "personas": [str(tmp_path / "store" / "src.parquet")]},
                                    selection=PersonaSelection(n=2, query=query)))


def responder_for_prompts(body: dict) -> FakeReply:
    persona = body["messages"][-1]["content"]
    return FakeReply(content=json.dumps({"prompt": f"Please help me with my work today: {persona[-60:]}"}))


# --- conversations ------------------------------------------------------------------------------

def test_the_persona_plays_the_user_for_n_turns(server, tmp_path: Path) -> None:
    personas = write_personas(tmp_path / "personas.parquet", 3)

    def respond(body: dict) -> FakeReply:
        system = body["messages"][0]["content"]
        if system.startswith("You are a helpful, honest assistant"):
            turns = sum(1 for m in body["messages"] if m["role"] == "user")
            if body["model"] != "helper-model":
                return FakeReply(content="wrong model")
            return FakeReply(content=f"Answer {turns}.")
        if system.startswith("You play a person"):
            i = int(re.search(r"Persona (\d+):", system).group(1))
            if i == 2 and "Answer 1." in body["messages"][-1]["content"]:
                return FakeReply(content="   ")  # an empty follow-up quarantines its conversation
            return FakeReply(content=f"Follow-up from persona {i}.")
        return FakeReply(content=json.dumps({"prompt": f"Persona {persona_index(body)} asks how to plan a harbour day."}))

    server.responder = respond
    summary = synthesize(SynthesizeParams(use_case="instructions", mode="zero-shot", personas=[str(personas)], turns=3,
                                          assistant_model="helper-model", selection=PersonaSelection(n=3),
                                          store=str(tmp_path / "store"), llm_base_url=server.base_url,
                                          llm_model="fake-model", diversity={"enabled": False}))
    store = Store(str(tmp_path / "store"))
    done = dataset_rows(store, summary)
    assert sorted(r["persona_id"] for r in done) == ["p0000", "p0001"]
    for row in done:
        i = int(row["persona_id"][1:])
        assert json.loads(row["conversation"]) == [
            {"role": "user", "content": f"Persona {i} asks how to plan a harbour day."},
            {"role": "assistant", "content": "Answer 1."},
            {"role": "user", "content": f"Follow-up from persona {i}."},
            {"role": "assistant", "content": "Answer 2."},
            {"role": "user", "content": f"Follow-up from persona {i}."},
            {"role": "assistant", "content": "Answer 3."}]
    names = [s["stage"] for s in summary["stages"]]
    assert names[-5:] == ["conversation_assistant_1", "conversation_user_2", "conversation_assistant_2",
                          "conversation_user_3", "conversation_assistant_3"]
    rejected = run_rows(store, summary["run_id"], "conversation_user_2", "quarantine")
    assert [(r["persona_id"], r["reason"]) for r in rejected] == [("p0002", "empty_reply")]
    report = store.read_json(f"runs/{summary['run_id']}/report.json")
    assert report["conversations"] == {"turns": 3, "assistant_model": "helper-model", "started": 3, "completed": 2}
