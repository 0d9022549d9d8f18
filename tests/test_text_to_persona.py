"""Text-to-Persona: request building, response validation, and one shard end to end against the
fake OpenAI endpoint (real HTTP, real LLMGateway)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pyarrow as pa
import pytest

from fake_openai import FakeOpenAIServer, FakeReply
from personahub.tasks.core.checkpoint import StageCheckpoint
from personahub.tasks.core.run_context import RunContext
from personahub.tasks.core.stage import RowRange, StageRef
from personahub.tasks.llm.stage import run_llm_shard
from personahub.tasks.llm.gateway import ChatResult, LLMGateway
from personahub.tasks.personas.filters import DEFAULT_OPTIONS
from personahub.tasks.llm.templates import load_template
from personahub.tasks.core.store import Store
from personahub.tasks.personas.text_to_persona import (
    build_request,
    normalise_persona,
    persona_id_for,
    TextToPersona,
    validate_persona,
)

GOOD = "A coral reef ecologist who monitors bleaching events"


def result(
    data=None, *, text: str | None = "raw", error: str | None = None, parse_error: str | None = None, finish: str = "stop"
) -> ChatResult:
    return ChatResult("k", text, data, parse_error, error, "fake-model", finish, 10, 5, False)


# --- validation --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "res, reason",
    [
        (result(text=None, error="HTTP 400 from http://x/v1: bad"), "llm_error"),
        (result(None, text="not json", parse_error="no JSON object"), "unparseable"),
        (result({"name": "no persona key"}), "missing_persona"),
        (result({"persona": "   "}), "missing_persona"),
        (result({"persona": 42}), "missing_persona"),
        (result(["a list", "not an object"]), "missing_persona"),
        (result({"persona": "Sorry"}), "too_short"),
        (result({"persona": '"   A chef.   "'}), "too_short"),  # quotes and spaces do not count
        (result({"persona": "A " + "very " * 200 + "long persona"}), "too_long"),
        (result(None, text='{"persona": "A nurse who', parse_error="cut", finish="length"), "truncated"),
        (result({"persona": "A ... who ... who is likely to read this text"}), "placeholder"),
        (result({"persona": "A {persona} who is likely to read this text"}), "placeholder"),
        # The persona text filters (tasks/personas/filters.check_persona), one per kind of junk:
        (result({"persona": "I'm sorry, but I can't infer a persona from this text."}), "refusal"),
        (result({"persona": "Dr. Elizabeth Anne Montgomery"}), "name_only"),
        (result({"persona": "This article discusses how coral reefs bleach."}), "summary"),
        (result({"persona": "Anonymous User (3rd-day-freshman) at 10:29 AM on Friday"}), "boilerplate"),
        (result({"persona": "A 64 GB reporting replica of a 16-core machine"}), "not_a_person"),
        (result({"persona": "A simple, simple person"}), "generic"),
    ],
)
def test_validate_rejections(res: ChatResult, reason: str) -> None:
    assert validate_persona(res, "Some source text about reefs.") == (None, reason)


def test_validate_rejects_copies_of_the_demonstration() -> None:
    from personahub.tasks.personas.text_to_persona import example_personas

    copies = example_personas(load_template("text_to_persona"))
    assert copies, "the shipped template has a demonstration to guard against"
    copied = next(iter(copies)).upper()  # case does not make it new
    assert validate_persona(result({"persona": copied}), "text", copies) == (None, "copies_example")
    assert validate_persona(result({"persona": GOOD}), "text", copies) == (GOOD, None)


def test_validate_echo_of_source_text() -> None:
    sentence = "A marine biologist who has spent twenty years studying the coral reefs of the Pacific Ocean."
    assert len(sentence) >= 80
    source = f"Intro.\n{sentence.upper()}\nMore text."
    assert validate_persona(result({"persona": sentence}), source) == (None, "echoes_text")
    # A short persona that happens to occur in the text is fine (< 80 chars).
    short = "A marine biologist who studies coral reefs"
    assert validate_persona(result({"persona": short}), f"{short} is here.") == (short, None)


def test_validate_passes_filter_options() -> None:
    from personahub.tasks.personas.filters import PersonaFilterOptions

    spanish = "Un biólogo marino que estudia los arrecifes de coral"
    assert validate_persona(result({"persona": spanish}), "text") == (spanish, None)  # any language by default
    english_only = PersonaFilterOptions(languages=("en",))
    assert validate_persona(result({"persona": spanish}), "text", options=english_only) == (None, "language")
    assert validate_persona(result({"persona": GOOD}), "text", options=english_only) == (GOOD, None)


def test_validate_ok_normalises() -> None:
    persona, reason = validate_persona(result({"persona": f'  "{GOOD}\n  in the Pacific."  '}), "unrelated text")
    assert reason is None
    assert persona == f"{GOOD} in the Pacific."
    assert len(persona) <= DEFAULT_OPTIONS.max_chars
    assert normalise_persona(persona) == persona


# --- requests ----------------------------------------------------------------------------------
def user_excerpt(messages) -> str:
    content = dict((role, c) for role, c in messages)["user"]
    return re.search(r'"""\n(.*)\n"""', content, re.DOTALL).group(1)


def test_build_request_short_text_unchanged() -> None:
    template = load_template("text_to_persona")
    params = {"temperature": 0.7, "max_tokens": 96}
    req = build_request(template, "A short text.", "like", 100, params)
    assert user_excerpt(req.messages) == "A short text."
    assert "likely to like" in req.messages[-1][1]
    assert req.template == template.ref and "@" in req.template
    assert dict(req.params) == params
    assert req.json_schema == template.output_schema
    assert req.schema_name == "persona"


def test_build_request_truncates_long_text() -> None:
    template = load_template("text_to_persona")
    text = " ".join(f"word{i}" for i in range(2000))
    req = build_request(template, text, "read", 100, {})
    excerpt = user_excerpt(req.messages)
    assert excerpt.endswith(" …")
    assert len(excerpt) <= 102
    assert text.startswith(excerpt[:-2])
    assert excerpt[:-2].split(" ")[-1] in text.split(" ")  # cut at a word boundary
    assert "word1999" not in req.messages[-1][1]


def test_build_request_unknown_relation() -> None:
    with pytest.raises(ValueError, match="relation 'admire'"):
        build_request(load_template("text_to_persona"), "text", "admire", 100, {})


# --- a shard end to end ------------------------------------------------------------------------
DOCS = {
    "good": "DOC-GOOD: coral reefs bleach when the sea warms; divers count the damage each spring.",
    "junk": "DOC-JUNK: a recipe for sourdough bread with a long cold proof.",
    "refuse": "DOC-REFUSE: an essay that the model refuses to characterise.",
    "error": "DOC-ERROR: a document the endpoint rejects with HTTP 400.",
}


def responder(body: dict) -> FakeReply:
    content = body["messages"][-1]["content"]
    relation = "reader" if "likely to read" in content else "fan"
    if "DOC-GOOD" in content:
        return FakeReply(content=json.dumps({"persona": f"{GOOD}, a {relation} of field reports"}), prompt_tokens=50, completion_tokens=12)
    if "DOC-JUNK" in content:
        return FakeReply(content="I think this is about bread, honestly.")
    if "DOC-REFUSE" in content:
        return FakeReply(content=json.dumps({"persona": "Sorry"}))
    if "DOC-ERROR" in content:
        return FakeReply.error(400, "this request is not acceptable")
    raise AssertionError(f"unexpected prompt: {content[:200]}")


def run(coro, timeout: float = 20.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def run_shard(server: FakeOpenAIServer, store: Store, checkpoint: StageCheckpoint, docs_file: str) -> dict:
    """One shard through the generic LLM shard path; its counts, reasons and usage as written."""
    gateway = LLMGateway(base_url=server.base_url, model=None, store=store, max_retries=1, timeout_s=5.0, max_concurrency=4)
    ref = StageRef(RunContext(store.url, None, checkpoint.run_id), checkpoint.stage, checkpoint.params)
    rows = store.read_parquet(docs_file).num_rows
    async with gateway:
        await run_llm_shard(TextToPersona(checkpoint.params), ref, "s00000", RowRange(docs_file, 0, rows), gateway)
    entry = checkpoint.done_shards()["s00000"]
    return {"counts": entry.counts.__dict__, "reasons": entry.extra["reasons"], "usage": entry.extra["usage"]}


def test_text_to_persona_shard(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "store"))
    rows = [{"doc_id": f"id-{k}", "source": f"/corpus/{k}.txt", "text": text} for k, text in DOCS.items()]
    store.write_parquet("runs/r1/crawl/data/s00000.parquet", pa.Table.from_pylist(rows))
    params = {"template": "text_to_persona", "relations": ["read", "like"], "max_doc_chars": 2000,
              "sampling": {"temperature": 0.7, "max_tokens": 96}}
    checkpoint = StageCheckpoint(store, "r1", "text_to_persona", params)
    template = load_template("text_to_persona")

    with FakeOpenAIServer(responder) as server:
        out = run(run_shard(server, store, checkpoint, "runs/r1/crawl/data/s00000.parquet"))
        assert server.calls == 8  # 4 documents x 2 relations, the 400s not retried
        assert all(b["response_format"]["type"] == "json_schema" for b in server.requests)
        assert all(b["temperature"] == 0.7 and b["max_tokens"] == 96 for b in server.requests)

        counts = out["counts"]
        assert counts == {"rows_in": 8, "rows_out": 2, "filtered": 0, "quarantined": 6}
        assert counts["rows_in"] == counts["rows_out"] + counts["filtered"] + counts["quarantined"]
        assert out["reasons"] == {"llm_error": 2, "unparseable": 2, "too_short": 2}
        assert out["usage"]["calls"] == 8 and out["usage"]["failures"] == 2

        entry = checkpoint.done_shards()["s00000"]
        personas = store.read_parquet(entry.files["data"]).to_pylist()
        quarantine = store.read_parquet(entry.files["quarantine"]).to_pylist()

        assert sorted(p["relation"] for p in personas) == ["like", "read"]
        for p in personas:
            assert p["doc_id"] == "id-good" and p["source"] == "/corpus/good.txt"
            assert p["persona"].startswith(GOOD)
            assert p["persona_id"] == persona_id_for(p["persona"])
            assert p["model"] == "fake-model"
            assert p["template"] == template.ref and "@" in p["template"]
            assert json.loads(p["params"]) == {"temperature": 0.7, "max_tokens": 96}
            assert (p["prompt_tokens"], p["completion_tokens"]) == (50, 12)
            assert p["cached"] is False
        by_rel = {p["relation"]: p["persona"] for p in personas}
        assert "a reader of" in by_rel["read"] and "a fan of" in by_rel["like"]

        got = sorted((q["doc_id"], q["relation"], q["reason"].split(":")[0]) for q in quarantine)
        assert got == [
            ("id-error", "like", "llm_error"), ("id-error", "read", "llm_error"),
            ("id-junk", "like", "unparseable"), ("id-junk", "read", "unparseable"),
            ("id-refuse", "like", "too_short"), ("id-refuse", "read", "too_short"),
        ]
        for q in quarantine:
            assert q["template"] == template.ref and q["source"] == f"/corpus/{q['doc_id'][3:]}.txt"
            if q["doc_id"] == "id-error":
                assert "HTTP 400" in q["reason"] and "not acceptable" in q["reason"] and q["response"] is None
            elif q["doc_id"] == "id-junk":
                assert q["response"] == "I think this is about bread, honestly." and q["model"] == "fake-model"
            else:
                assert json.loads(q["response"]) == {"persona": "Sorry"}

        # A rerun answers every paid-for call from the cache; only the failed calls go out again.
        again = run(run_shard(server, store, checkpoint, "runs/r1/crawl/data/s00000.parquet"))
        assert server.calls == 10
        assert again["counts"] == counts and again["reasons"] == out["reasons"]
        assert again["usage"]["cache_hits"] == 6 and again["usage"]["calls"] == 2
        personas2 = store.read_parquet(entry.files["data"]).to_pylist()
        assert all(p["cached"] for p in personas2)
        assert [p["persona_id"] for p in personas2] == [p["persona_id"] for p in personas]
        assert [(p["prompt_tokens"], p["completion_tokens"]) for p in personas2] == [(50, 12), (50, 12)]
