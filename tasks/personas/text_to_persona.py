"""Text-to-Persona: ask the LLM who would read / write / like / dislike each document.

One request per (document, relation). A response that is not a usable persona is quarantined with
its reason and the raw text, never dropped. Every persona row carries its provenance: source
document, relation, model, template name and version, sampling parameters and token usage.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from personahub.tasks.llm.requests import ChatRequest, ChatResult
from personahub.tasks.llm.stage import LLMStage, Outcome
from personahub.tasks.personas.filters import (
    DEFAULT_OPTIONS,
    PersonaFilterOptions,
    check_persona,
    normalise_persona,
)
from personahub.tasks.llm.templates import PromptTemplate

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


class TextToPersona(LLMStage):
    """Text-to-Persona as an LLM stage: one request per (document, relation).

    Parameters (hashed into the checkpoint): relations, max_doc_chars, sampling, filters, mode.
    """

    name = "text-to-persona"
    template_task = "text_to_persona"
    columns = ["doc_id", "source", "text"]
    outputs = {"data": PERSONA_SCHEMA}
    quarantine = REJECT_SCHEMA

    def __init__(self, params: Mapping[str, Any]):
        super().__init__(params)
        self.relations: list[str] = list(self.params["relations"])
        self.max_doc_chars = int(self.params["max_doc_chars"])
        self.options = PersonaFilterOptions.from_dict(dict(self.params.get("filters") or {}))
        self.copies = example_personas(self.template)
        self.params_json = json.dumps(self.sampling, sort_keys=True)

    def requests(self, row: dict[str, Any]) -> list[ChatRequest]:
        return [build_request(self.template, row["text"], relation, self.max_doc_chars, self.sampling)
                for relation in self.relations]

    def parse(self, row: dict[str, Any], results: list[ChatResult]) -> Outcome:
        outcome = Outcome(rows_in=len(results))
        for relation, result in zip(self.relations, results):
            # Echoes are looked for in what the model saw, not in the whole (possibly huge) document.
            persona, reason = validate_persona(result, row["text"][: self.max_doc_chars], self.copies, self.options)
            if persona is None:
                outcome.rejects.append({
                    "doc_id": row["doc_id"], "source": row["source"], "relation": relation,
                    "reason": self.llm_error(result) if result.error is not None else reason,
                    "response": result.text, "model": result.model, "template": self.template.ref,
                })
                continue
            outcome.keep("data", {
                "persona_id": persona_id_for(persona), "persona": persona, "hop": 0, "origin": "text_to_persona",
                "parent_id": None, "relation": relation, "doc_id": row["doc_id"], "source": row["source"],
                "model": result.model, "template": self.template.ref, "params": self.params_json,
                "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                "cached": result.cached,
            })
        return outcome
