"""Persona-to-Persona: the template, request building, lenient response parsing, and hop shards end
to end against the fake OpenAI endpoint (real HTTP, real LLMGateway, real checkpoint)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pyarrow as pa
import pytest

from fake_openai import FakeOpenAIServer, FakeReply
from personahub.tasks.core.checkpoint import StageCheckpoint
from personahub.tasks.llm.gateway import ChatResult, LLMGateway
from personahub.tasks.personas.persona_to_persona import (
    EDGE_SCHEMA,
    NODE_SCHEMA,
    QUARANTINE_SCHEMA,
    build_request,
    example_personas,
    filter_options_from,
    parse_related,
    PersonaToPersona,
)
from personahub.tasks.personas.filters import PersonaFilterOptions
from personahub.tasks.llm.templates import load_template
from personahub.tasks.core.run_context import RunContext
from personahub.tasks.core.stage import RowRange, StageRef
from personahub.tasks.llm.stage import llm_shard_task, run_llm_shard
from personahub.tasks.core.store import Store
from personahub.tasks.personas.text_to_persona import PERSONA_SCHEMA, normalise_persona, persona_id_for

TEMPLATE = load_template("persona_to_persona")
SAMPLING = {"temperature": 0.8, "max_tokens": 256}


def result(data=None, *, text: str | None = "raw", error: str | None = None, finish: str = "stop") -> ChatResult:
    return ChatResult("k", text, data, None if data is not None else "no JSON", error, "fake-model", finish, 10, 5, False)


def run(coro, timeout: float = 20.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer() as srv:
        yield srv


# --- the template --------------------------------------------------------------------------------
def test_template_shape() -> None:
    assert TEMPLATE.ref == f"persona_to_persona@{TEMPLATE.version}" and len(TEMPLATE.version) == 12
    assert TEMPLATE.mode == "few-shot" and len(TEMPLATE.examples) == 1
    schema = TEMPLATE.output_schema
    items = schema["properties"]["personas"]
    assert schema["required"] == ["personas"] and (items["minItems"], items["maxItems"]) == (1, 8)
    assert items["items"]["required"] == ["persona", "relation"]
    assert TEMPLATE.params["temperature"] == 0.8 and TEMPLATE.params["max_tokens"] >= 200
    # The demonstration answers its own k with valid items, and they are guarded against as copies.
    example = TEMPLATE.examples[0]
    answer = json.loads(example["answer"])["personas"]
    assert len(answer) == example["vars"]["k"]
    assert all(20 <= len(a["persona"]) <= 300 and len(a["relation"]) <= 40 for a in answer)
    copies = example_personas(TEMPLATE)
    assert {normalise_persona(a["persona"]).lower() for a in answer} <= copies
    assert normalise_persona(example["vars"]["persona"]).lower() in copies


def test_build_request() -> None:
    parent = "A school bus driver who knows every child on the route by name."
    req = build_request(TEMPLATE, f"  {parent}\n ", 5, SAMPLING)
    roles = [role for role, _ in req.messages]
    assert roles == ["system", "user", "assistant", "user"]
    last = req.messages[-1][1]
    assert f"Person: {parent}" in last and "Name 5 different people" in last
    assert parent not in req.messages[1][1] and "Name 3 different people" in req.messages[1][1]  # the demo's own vars
    assert req.messages[2][1] == TEMPLATE.examples[0]["answer"].strip()
    assert req.template == TEMPLATE.ref and dict(req.params) == SAMPLING
    assert req.json_schema == TEMPLATE.output_schema and req.schema_name == "related_personas"
    for bad in (0, 9, -1):
        with pytest.raises(ValueError, match="k"):
            build_request(TEMPLATE, parent, bad, SAMPLING)


# --- parsing ---------------------------------------------------------------------------------------
A = "A night-shift pharmacist who fills the clinic's prescriptions before dawn."
B = "A hospital porter who wheels patients between wards and knows every corridor."
C = "A medical-supplies rep who visits the ward each month with new dressings."


@pytest.mark.parametrize(
    "res, k, want",
    [
        (result({"personas": [{"persona": A, "relation": "Colleague"}, {"persona": B, "relation": "co-worker"}]}), 3,
         ([(A, "colleague"), (B, "co-worker")], None)),
        (result([A, {"persona": B, "relationship": "  Family   Member. "}]), 3, ([(A, "unspecified"), (B, "family member")], None)),
        (result({"personas": [A, B, C]}), 2, ([(A, "unspecified"), (B, "unspecified")], None)),  # at most k
        (result({"persona": f'  "{A}" ', "relation": "supplier"}), 3, ([(A, "supplier")], None)),  # one object
        (result({"relatives": [{"person": C, "role": "supplier"}]}), 3, ([(C, "supplier")], None)),
        (result({"personas": [{"persona": A, "relation": "x" * 60}]}), 1, ([(A, "x" * 40)], None)),
        (result({"personas": [{"persona": A, "relation": 7}]}), 1, ([(A, "unspecified")], None)),
        (result(text=None, error="HTTP 400 from http://x/v1: bad"), 3, ([], "llm_error")),
        (result(None, text="I'm sorry, I can't help with that."), 3, ([], "unparseable")),
        (result(None, text='{"personas": [{"persona": "A nurse wh', finish="length"), 3, ([], "truncated")),
        (result({"personas": []}), 3, ([], "no_personas")),
        (result({"personas": [42, {"name": "no persona key"}]}), 3, ([], "no_personas")),
        (result({"answer": "nothing useful"}), 3, ([], "no_personas")),
        # Cut off by max_tokens: the complete items are kept, the cut one is lost.
        (result({"persona": A, "relation": "x"}, finish="length",
                text='{"personas": [{"persona": "%s", "relation": "x"}, {"persona": "%s"}, {"persona": "A nur' % (A, B)),
         3, ([(A, "x"), (B, "unspecified")], None)),
        (result({"persona": A}, finish="length", text='[{"persona": "%s"}, {"pers' % A), 3, ([(A, "unspecified")], None)),
    ],
)
def test_parse_related(res: ChatResult, k: int, want) -> None:
    assert parse_related(res, k) == want


# --- one hop end to end --------------------------------------------------------------------------
def child(tag: str, i: int) -> str:
    return f"A {tag} helper number {i} who works closely with the person every single day."


PARENTS = {
    "good1": "A pediatric nurse who gives flu injections to children and keeps them calm.",
    "good2": "A long-haul truck driver who hauls fresh produce across the country at night.",
    "messy": "A village baker who opens at four in the morning and knows everyone's order.",
    "junk": "A marathon coach who plans weekly long runs for amateur club members.",
    "error": "A court interpreter who translates witness testimony from Portuguese.",
    "trunc": "A beekeeper who sells honey at the Saturday farmers' market.",
    "empty": "A museum conservator who restores water-damaged medieval manuscripts.",
}
K = 6
EXAMPLE_COPY = json.loads(TEMPLATE.examples[0]["answer"])["personas"][0]["persona"]
MESSY = [
    A,  # a bare string: kept, relation "unspecified"
    {"persona": "  " + A.upper() + " ", "relation": "supplier"},  # same id as item 0: duplicate_in_response
    {"persona": PARENTS["messy"].lower(), "relation": "self"},  # same_as_parent
    {"persona": "Sorry", "relation": "none"},  # check_persona: too short
    {"name": "no persona"},  # missing_persona
    {"persona": EXAMPLE_COPY, "relation": "crew member"},  # check_persona: copies the demonstration
    {"persona": B, "relation": "neighbour"},  # beyond k = 6
    {"persona": C, "relation": "supplier"},  # beyond k
]


def parent_of(body: dict) -> str:
    content = body["messages"][-1]["content"]
    return next(key for key, text in PARENTS.items() if f"Person: {text}" in content)


def responder(body: dict) -> FakeReply:
    key = parent_of(body)
    k = int(body["messages"][-1]["content"].split("Name ", 1)[1].split(" ", 1)[0])
    if key.startswith("good"):
        items = [{"persona": child(key, i), "relation": ["patient", "colleague", "supplier"][i % 3]} for i in range(k)]
        return FakeReply(content=json.dumps({"personas": items}), prompt_tokens=100, completion_tokens=61)
    if key == "messy":
        return FakeReply(content="Here you go:\n```json\n" + json.dumps(MESSY) + "\n```")
    if key == "junk":
        return FakeReply(content="I'm sorry, but I can't describe people.")
    if key == "error":
        return FakeReply.error(400, "this request is not acceptable")
    if key == "trunc":
        return FakeReply(content='{"personas": [{"persona": "A beekeeper\'s neighbour who', finish_reason="length")
    return FakeReply(content='{"personas": []}')


def frontier_table(keys: list[str], hop: int = 0) -> pa.Table:
    rows = [{"persona_id": persona_id_for(PARENTS[k]), "persona": PARENTS[k], "doc_id": f"doc-{k}",
             "source": f"/corpus/{k}.txt", "hop": hop} for k in keys]
    return pa.Table.from_pylist(rows)


def gateway_for(server: FakeOpenAIServer, store: Store) -> LLMGateway:
    return LLMGateway(base_url=server.base_url, model=None, store=store, max_retries=0, timeout_s=5.0, max_concurrency=4)


async def shard(server, store, checkpoint, frontier_file, hop=1, k=K, options=PersonaFilterOptions()) -> dict:
    """One frontier shard through the generic LLM shard path; its counts, reasons and usage as written."""
    params = {"template": TEMPLATE.name, "hop": hop, "k": k, "sampling": SAMPLING, "filters": options.as_dict()}
    ref = StageRef(RunContext(store.url, None, checkpoint.run_id), checkpoint.stage, checkpoint.params)
    rows = store.read_parquet(frontier_file).num_rows
    async with gateway_for(server, store) as gateway:
        await run_llm_shard(PersonaToPersona(params), ref, "f00000", RowRange(frontier_file, 0, rows), gateway)
    entry = checkpoint.done_shards()["f00000"]
    return {"counts": entry.counts.__dict__, "reasons": entry.extra["reasons"], "usage": entry.extra["usage"]}


def test_hop_shard(server: FakeOpenAIServer, tmp_path: Path) -> None:
    server.reset(responder)
    store = Store(str(tmp_path / "store"))
    frontier = frontier_table(list(PARENTS))
    store.write_parquet("runs/r1/p2p_frontier_h1/data/f00000.parquet", frontier)
    checkpoint = StageCheckpoint(store, "r1", "persona_to_persona_h1", {"template": TEMPLATE.name, "hop": 1, "k": K})

    out = run(shard(server, store, checkpoint, "runs/r1/p2p_frontier_h1/data/f00000.parquet"))
    assert server.calls == len(PARENTS)
    assert all(b["response_format"]["type"] == "json_schema" for b in server.requests)
    assert all(b["temperature"] == 0.8 and b["max_tokens"] == 256 for b in server.requests)

    # 6 + 6 + 8 items and 4 failed responses in; 13 kept, 3 filtered, 8 quarantined.
    counts = out["counts"]
    assert counts == {"rows_in": 24, "rows_out": 13, "filtered": 3, "quarantined": 8}
    assert out["reasons"] == {
        "llm_error": 1, "unparseable": 1, "truncated": 1, "no_personas": 1,
        "duplicate_in_response": 1, "beyond_k": 2,
        "same_as_parent": 1, "too_short": 1, "missing_persona": 1, "copies_example": 1,
    }
    assert sum(out["reasons"].values()) == counts["filtered"] + counts["quarantined"]
    assert out["usage"]["calls"] == 7 and out["usage"]["failures"] == 1

    entry = checkpoint.done_shards()["f00000"]
    assert entry.extra["reasons"] == out["reasons"] and entry.extra["input_rows"] == len(PARENTS)
    assert entry.rows == {"data": 13, "edges": 13, "quarantine": 8}
    nodes_t = store.read_parquet(entry.files["data"])
    edges_t = store.read_parquet(entry.files["edges"])
    quarantine_t = store.read_parquet(entry.files["quarantine"])
    assert nodes_t.schema.equals(NODE_SCHEMA) and NODE_SCHEMA.equals(PERSONA_SCHEMA)
    assert edges_t.schema.equals(EDGE_SCHEMA) and quarantine_t.schema.equals(QUARANTINE_SCHEMA)
    nodes, edges, quarantine = nodes_t.to_pylist(), edges_t.to_pylist(), quarantine_t.to_pylist()

    # Graph consistency: every edge goes from a frontier persona to a node of this shard, one per node.
    frontier_ids = set(frontier.column("persona_id").to_pylist())
    node_ids = {n["persona_id"] for n in nodes}
    assert all(e["parent_id"] in frontier_ids and e["child_id"] in node_ids for e in edges)
    assert sorted((n["parent_id"], n["persona_id"], n["relation"]) for n in nodes) == sorted(
        (e["parent_id"], e["child_id"], e["relation"]) for e in edges
    )
    assert all(e["hop"] == 1 and e["model"] == "fake-model" and e["template"] == TEMPLATE.ref for e in edges)

    # Provenance: root document carried from the parent, hop, origin, model, template, params.
    parent_doc = {persona_id_for(text): key for key, text in PARENTS.items()}
    for n in nodes:
        key = parent_doc[n["parent_id"]]
        assert (n["doc_id"], n["source"]) == (f"doc-{key}", f"/corpus/{key}.txt")
        assert (n["hop"], n["origin"], n["model"], n["template"]) == (1, "persona_to_persona", "fake-model", TEMPLATE.ref)
        assert json.loads(n["params"]) == SAMPLING and n["cached"] is False
        assert n["persona_id"] == persona_id_for(n["persona"]) and n["persona"] == normalise_persona(n["persona"])
    good1 = [n for n in nodes if n["parent_id"] == persona_id_for(PARENTS["good1"])]
    assert [n["persona"] for n in good1] == [child("good1", i) for i in range(K)]
    assert [n["relation"] for n in good1] == ["patient", "colleague", "supplier"] * 2
    # A call's tokens are split among its kept children: the column sums to what the calls cost.
    assert sum(n["prompt_tokens"] for n in good1) == 100 and sum(n["completion_tokens"] for n in good1) == 61
    messy = [n for n in nodes if n["parent_id"] == persona_id_for(PARENTS["messy"])]
    assert [(n["persona"], n["relation"]) for n in messy] == [(A, "unspecified")]

    # Quarantine: one row per failed response (raw response kept) or rejected child (raw item kept).
    by_reason = {q["reason"].split(":")[0]: q for q in quarantine}
    assert set(by_reason) == {"llm_error", "unparseable", "truncated", "no_personas",
                              "same_as_parent", "too_short", "missing_persona", "copies_example"}
    assert "HTTP 400" in by_reason["llm_error"]["reason"] and by_reason["llm_error"]["response"] is None
    assert by_reason["unparseable"]["response"] == "I'm sorry, but I can't describe people."
    assert by_reason["truncated"]["parent_id"] == persona_id_for(PARENTS["trunc"])
    assert by_reason["no_personas"]["doc_id"] == "doc-empty"
    assert json.loads(by_reason["same_as_parent"]["response"]) == MESSY[2]
    assert by_reason["same_as_parent"]["relation"] == "self"
    assert json.loads(by_reason["missing_persona"]["response"]) == {"name": "no persona"}
    assert json.loads(by_reason["copies_example"]["response"])["persona"] == EXAMPLE_COPY
    for q in quarantine:
        assert q["hop"] == 1 and q["template"] == TEMPLATE.ref and q["parent_id"] in frontier_ids

    # A rerun answers every paid-for call from the cache; only the failed call goes out again.
    again = run(shard(server, store, checkpoint, "runs/r1/p2p_frontier_h1/data/f00000.parquet"))
    assert server.calls == len(PARENTS) + 1
    assert again["usage"]["cache_hits"] == len(PARENTS) - 1 and again["usage"]["calls"] == 1
    assert again["counts"] == counts and again["reasons"] == out["reasons"]
    nodes2 = store.read_parquet(checkpoint.done_shards()["f00000"].files["data"]).to_pylist()
    assert all(n["cached"] for n in nodes2)
    assert [n["persona_id"] for n in nodes2] == [n["persona_id"] for n in nodes]


def test_two_hops_chain_and_cached_rerun(server: FakeOpenAIServer, tmp_path: Path) -> None:
    """Hop 2 expands hop 1's nodes: the root document follows the chain; a rerun makes no call."""
    def chain(body: dict) -> FakeReply:
        content = body["messages"][-1]["content"]
        person = content.split("Person: ", 1)[1].split("\n", 1)[0]
        n = int(content.split("Name ", 1)[1].split(" ", 1)[0])
        items = [{"persona": f"{person[:-1]}, and {i} more friend{'s' * (i != 1)} of theirs.", "relation": "friend"}
                 for i in range(n)]
        return FakeReply(content=json.dumps({"personas": items}))

    server.reset(chain)
    store = Store(str(tmp_path / "store"))
    store.write_parquet("runs/r2/f1.parquet", frontier_table(["good1", "good2"]))

    async def both_hops() -> list[dict]:
        outs = []
        for hop, frontier in ((1, "runs/r2/f1.parquet"), (2, "runs/r2/f2.parquet")):
            if hop == 2:  # the new personas of hop 1 are the next frontier
                store.write_parquet(frontier, store.read_parquet(outs[-1]["files"]["data"]))
            cp = StageCheckpoint(store, "r2", f"persona_to_persona_h{hop}", {"hop": hop, "k": 2})
            out = await shard(server, store, cp, frontier, hop=hop, k=2)
            outs.append({**out, "files": cp.done_shards()["f00000"].files})
        return outs

    first = run(both_hops())
    assert server.calls == 2 + 4
    assert [o["counts"]["rows_out"] for o in first] == [4, 8]
    hop1 = {n["persona_id"]: n for n in store.read_parquet(first[0]["files"]["data"]).to_pylist()}
    hop2 = store.read_parquet(first[1]["files"]["data"]).to_pylist()
    edges2 = store.read_parquet(first[1]["files"]["edges"]).to_pylist()
    assert all(e["parent_id"] in hop1 and e["hop"] == 2 for e in edges2)
    for n in hop2:
        parent = hop1[n["parent_id"]]
        assert n["hop"] == 2 and parent["hop"] == 1
        assert (n["doc_id"], n["source"]) == (parent["doc_id"], parent["source"])
        assert n["doc_id"] in {"doc-good1", "doc-good2"}

    calls = server.calls
    second = run(both_hops())
    assert server.calls == calls, "a rerun of the same shards makes no new call"
    assert [o["usage"]["calls"] for o in second] == [0, 0] and [o["usage"]["cache_hits"] for o in second] == [2, 4]
    assert [o["counts"] for o in second] == [o["counts"] for o in first]


def test_prefect_task_wrapper(server: FakeOpenAIServer, tmp_path: Path) -> None:
    """The generic LLM shard task: params are plain JSON, the checkpoint is the StageRef's, and only
    the shard's own rows are read."""
    server.reset(responder)
    ctx = RunContext(str(tmp_path / "store"), None, "r3")
    ctx.store.write_parquet("runs/r3/f.parquet", frontier_table(["good2", "good1", "good2"], hop=1))
    params = {"template": "persona_to_persona", "template_ref": TEMPLATE.ref, "hop": 2, "k": 3,
              "sampling": SAMPLING, "filters": None}
    llm = {"base_url": server.base_url, "model": "fake-model", "concurrency": 2}
    ref = StageRef(ctx, "persona_to_persona_h2", params)
    out = run(llm_shard_task.fn(ref, "f00007", RowRange("runs/r3/f.parquet", 1, 2), llm=llm, kind=PersonaToPersona))
    assert out["counts"] == {"rows_in": 3, "rows_out": 3, "filtered": 0, "quarantined": 0}
    assert server.calls == 1  # one parent: row 1 of 3
    manifest = ref.checkpoint.finalize(expected_shards=["f00007"])
    assert manifest.to_json()["totals"]["rows"] == {"data": 3, "edges": 3, "quarantine": 0}
    assert manifest.to_json()["totals"]["extra"]["input_rows"] == 1
    nodes = ctx.store.read_parquet(ref.checkpoint.files("data")[0]).to_pylist()
    assert {n["hop"] for n in nodes} == {2} and {n["parent_id"] for n in nodes} == {persona_id_for(PARENTS["good1"])}
    assert filter_options_from(None) == PersonaFilterOptions()
    assert filter_options_from({}) == PersonaFilterOptions()


def test_hop_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="hop"):
        PersonaToPersona({"hop": 0, "k": 3})


def test_filter_options_reach_check_persona(server: FakeOpenAIServer) -> None:
    server.reset(responder)
    options = filter_options_from({"min_words": 30, "skip": ["refusal"]})
    assert options == PersonaFilterOptions(min_words=30, skip=("refusal",))

    stage = PersonaToPersona({"hop": 1, "k": 3, "sampling": SAMPLING, "filters": options.as_dict()})
    parent = frontier_table(["good1"]).to_pylist()[0]

    async def ask():
        async with gateway_for(server, None) as gateway:
            return await gateway.chat_many(stage.requests(parent))

    outcome = stage.parse(parent, run(ask()))
    assert outcome.rows == {} and outcome.filtered == {} and outcome.rows_in == 3
    assert [q["reason"] for q in outcome.rejects] == ["too_short"] * 3
