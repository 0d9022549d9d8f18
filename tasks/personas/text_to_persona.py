"""Text-to-Persona: ask the LLM who would read / write / like / dislike each document.

One request per (document, relation). A response that is not a usable persona is quarantined with
its reason and the raw text, never dropped. Every persona row carries its provenance: source
document, relation, model, template name and version, sampling parameters and token usage.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from personahub.tasks.core.checkpoint import ShardCounts, StageCheckpoint
from personahub.tasks.llm.endpoint_breaker import retry_unless_endpoint_down
from personahub.tasks.llm.gateway import ChatRequest, ChatResult, LLMGateway
from personahub.tasks.personas.filters import (
    DEFAULT_OPTIONS,
    PersonaFilterOptions,
    check_persona,
    normalise_persona,
)
from personahub.tasks.llm.templates import PromptTemplate, load_template
from personahub.tasks.core.run_context import RunContext
from personahub.tasks.core.store import Store

PERSONA_SCHEMA = pa.schema(
    [
        ("persona_id", pa.string()),
        ("persona", pa.string()),
        ("hop", pa.int32()),  # graph position: Text-to-Persona personas are hop 0
        ("origin", pa.string()),
        ("parent_id", pa.string()),  # None at hop 0: the parent is the document
        ("relation", pa.string()),
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("model", pa.string()),
        ("template", pa.string()),
        ("params", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("cached", pa.bool_()),
    ]
)
REJECT_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("relation", pa.string()),
        ("reason", pa.string()),
        ("response", pa.string()),
        ("model", pa.string()),
        ("template", pa.string()),
    ]
)

def persona_id_for(text: str) -> str:
    """Stable id of a persona's text: case and spacing do not make a new persona."""
    return hashlib.sha256(normalise_persona(text).lower().encode("utf-8")).hexdigest()[:20]


def build_request(template: PromptTemplate, text: str, relation: str, max_doc_chars: int, params: dict[str, Any]) -> ChatRequest:
    phrases: dict[str, str] = template.extra.get("relations", {})
    if relation not in phrases:
        raise ValueError(f"relation {relation!r} is not one of {sorted(phrases)} in template {template.name}")
    # Truncating by characters keeps the prompt inside a small model's per-slot context.
    excerpt = text if len(text) <= max_doc_chars else text[:max_doc_chars].rsplit(" ", 1)[0] + " …"
    return ChatRequest(
        messages=template.render(text=excerpt, relation_phrase=phrases[relation]),
        template=template.ref,
        params=params,
        json_schema=template.output_schema,
        schema_name="persona",
    )


def example_personas(template: PromptTemplate) -> frozenset[str]:
    """The demonstrations' personas, lower-cased: a small model tends to copy them."""
    out = set()
    for example in template.examples:
        try:
            out.add(normalise_persona(json.loads(example["answer"])["persona"]).lower())
        except (ValueError, KeyError, TypeError):
            continue
    return frozenset(out)


def validate_persona(
    result: ChatResult,
    source_text: str,
    examples: frozenset[str] = frozenset(),
    options: PersonaFilterOptions = DEFAULT_OPTIONS,
) -> tuple[str | None, str | None]:
    """(persona, None) when usable, else (None, reason).

    The response checks are here (llm_error, truncated, unparseable, missing_persona); the persona
    text goes through tasks.persona_filters.check_persona, whose reason codes (too_short, refusal,
    echoes_text, not_a_person, ...) the stage counts per shard."""
    if result.error is not None:
        return None, "llm_error"
    if result.data is None:
        # A reply cut off by max_tokens is not junk from the model but a budget problem: say so.
        return None, "truncated" if result.finish_reason == "length" else "unparseable"
    value = result.data.get("persona") if isinstance(result.data, dict) else None
    if not isinstance(value, str) or not value.strip():
        return None, "missing_persona"
    persona = normalise_persona(value)
    reason = check_persona(persona, source_text=source_text, examples=examples, options=options)
    if reason is not None:
        return None, reason
    return persona, None


async def personas_for_documents(
    gateway: LLMGateway,
    template: PromptTemplate,
    docs: pa.Table,
    relations: list[str],
    max_doc_chars: int,
    params: dict[str, Any],
    options: PersonaFilterOptions = DEFAULT_OPTIONS,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Persona rows and rejected rows for a table of documents."""
    rows = docs.select(["doc_id", "source", "text"]).to_pylist()
    jobs = [(doc, relation) for doc in rows for relation in relations]
    requests = [build_request(template, doc["text"], rel, max_doc_chars, params) for doc, rel in jobs]
    results = await gateway.chat_many(requests)
    params_json = json.dumps(params, sort_keys=True)
    copies = example_personas(template)
    personas: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    for (doc, relation), result in zip(jobs, results):
        # Echoes are looked for in what the model saw, not in the whole (possibly huge) document.
        persona, reason = validate_persona(result, doc["text"][:max_doc_chars], copies, options)
        if persona is None:
            rejected.append(
                {
                    "doc_id": doc["doc_id"],
                    "source": doc["source"],
                    "relation": relation,
                    "reason": reason if result.error is None else f"llm_error: {result.error[:300]}",
                    "response": result.text,
                    "model": result.model,
                    "template": template.ref,
                }
            )
            continue
        personas.append(
            {
                "persona_id": persona_id_for(persona),
                "persona": persona,
                "hop": 0,
                "origin": "text_to_persona",
                "parent_id": None,
                "relation": relation,
                "doc_id": doc["doc_id"],
                "source": doc["source"],
                "model": result.model,
                "template": template.ref,
                "params": params_json,
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "cached": result.cached,
            }
        )
    return personas, rejected


async def text_to_persona_shard(
    checkpoint: StageCheckpoint,
    store: Store,
    gateway: LLMGateway,
    template: PromptTemplate,
    shard_id: str,
    docs_file: str,
    relations: list[str],
    max_doc_chars: int,
    params: dict[str, Any],
    options: PersonaFilterOptions = DEFAULT_OPTIONS,
) -> dict[str, Any]:
    """Persona and quarantine tables for one document shard; returns counts and token usage."""
    docs = store.read_parquet(docs_file, columns=["doc_id", "source", "text"])
    personas, rejected = await personas_for_documents(gateway, template, docs, relations, max_doc_chars, params, options)
    counts = ShardCounts(
        rows_in=docs.num_rows * len(relations), rows_out=len(personas), filtered=0, quarantined=len(rejected)
    )
    reasons: dict[str, int] = {}
    for row in rejected:
        key = row["reason"].split(":", 1)[0]
        reasons[key] = reasons.get(key, 0) + 1
    usage = gateway.usage.as_dict()
    checkpoint.write_shard(
        shard_id,
        {
            "data": pa.Table.from_pylist(personas, schema=PERSONA_SCHEMA),
            "quarantine": pa.Table.from_pylist(rejected, schema=REJECT_SCHEMA),
        },
        counts,
        extra={"usage": usage, "reasons": reasons},
    )
    return {"shard_id": shard_id, "counts": counts.__dict__, "usage": usage, "reasons": reasons}


@task(name="text-to-persona", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE,
      retry_condition_fn=retry_unless_endpoint_down)
async def text_to_persona_task(
    ctx: RunContext, params: dict[str, Any], shard_id: str, docs_file: str, llm: dict[str, Any]
) -> dict[str, Any]:
    """Prefect task: personas for one document shard. `llm` holds base_url, model and concurrency
    (never a key: the worker's own settings supply it)."""
    template = load_template(params["template"])
    gateway = LLMGateway.for_worker(llm, ctx.store)
    async with gateway:
        return await text_to_persona_shard(
            ctx.checkpoint("text_to_persona", params),
            ctx.store,
            gateway,
            template,
            shard_id,
            docs_file,
            params["relations"],
            params["max_doc_chars"],
            params["sampling"],
            PersonaFilterOptions.from_dict(dict(params.get("filters") or {})),
        )
