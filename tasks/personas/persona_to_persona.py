"""Persona-to-Persona: ask the LLM who is in a close relationship with each persona of a frontier.

One request per parent persona asks for k related personas, each with its relation type (patient,
colleague, supplier, ...). A shard of one hop writes three tables:

* ``data`` (NODE_SCHEMA): one row per kept child, i.e. per (parent, child) occurrence; the same
  persona reached from two parents is two rows (exact dedup downstream keeps one). The schema is
  Text-to-Persona's PERSONA_SCHEMA, so hop-0 and hop-N tables concatenate; ``doc_id``/``source``
  are the root document's, carried down every chain.
* ``edges`` (EDGE_SCHEMA): one row per node: parent_id -> child_id with the relation.
* ``quarantine`` (QUARANTINE_SCHEMA): failed responses and rejected children, with their reason and
  raw text, never dropped silently.

Counting (ShardCounts, rows_in = rows_out + filtered + quarantined):

* rows_in = every child item the model returned (items beyond k included) + one per failed
  response (llm_error, unparseable, truncated, no_personas). A response cut off by max_tokens
  keeps its complete items (the cut-off one is lost); it is "truncated" only when none was.
* rows_out = kept children (= node rows = edge rows).
* filtered = items beyond the first k ("beyond_k") + repeats of an earlier item of the same
  response ("duplicate_in_response"): not errors, so not quarantined.
* quarantined = failed responses + rejected children: "missing_persona" (an item with no persona
  text), "same_as_parent", or the reason code of persona_filters.check_persona.
* ``reasons`` counts both filtered and quarantined rows by reason: sum(reasons) = filtered +
  quarantined.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from personahub.tasks.llm.requests import ChatRequest, ChatResult
from personahub.tasks.llm.stage import LLMStage, Outcome
from personahub.tasks.llm.json_parsing import parse_json_lenient
from personahub.tasks.personas.filters import PersonaFilterOptions, check_persona
from personahub.tasks.llm.templates import PromptTemplate
from personahub.tasks.personas.text_to_persona import PERSONA_SCHEMA, normalise_persona, persona_id_for

ORIGIN = "persona_to_persona"

# Same columns, in the same order, as Text-to-Persona's rows: hop 0 and hop N concatenate.
NODE_SCHEMA = PERSONA_SCHEMA
EDGE_SCHEMA = pa.schema(
    [
        ("parent_id", pa.string()),
        ("child_id", pa.string()),
        ("relation", pa.string()),
        ("hop", pa.int32()),  # the child's hop
        ("model", pa.string()),
        ("template", pa.string()),
    ]
)
QUARANTINE_SCHEMA = pa.schema(
    [
        ("parent_id", pa.string()),
        ("doc_id", pa.string()),
        ("hop", pa.int32()),  # the hop the rejected child would have had
        ("relation", pa.string()),  # None for a failed response
        ("reason", pa.string()),  # "llm_error: <message>" for failed calls, else a reason code
        ("response", pa.string()),  # the raw response (failed response) or the raw child item
        ("model", pa.string()),
        ("template", pa.string()),
    ]
)

UNSPECIFIED = "unspecified"
MAX_RELATION_CHARS = 40
_LIST_KEYS = ("personas", "people", "persons", "related", "related_personas", "results", "items")
_PERSONA_KEYS = ("persona", "description", "person")
_RELATION_KEYS = ("relation", "relationship", "relation_type", "relationship_type", "role")


# --- requests ------------------------------------------------------------------------------------
def max_k(template: PromptTemplate) -> int:
    """The largest k the template's output schema allows (its personas array's maxItems)."""
    try:
        return int(template.output_schema["properties"]["personas"]["maxItems"])
    except (TypeError, KeyError, ValueError):
        return 8


def build_request(template: PromptTemplate, persona: str, k: int, params: Mapping[str, Any]) -> ChatRequest:
    """The chat request asking for k personas related to `persona`."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, not {k!r}")
    if k > max_k(template):
        # A structured-output grammar would cap the list silently below what was asked for.
        raise ValueError(f"k={k} exceeds the {max_k(template)} personas template {template.name} allows")
    return ChatRequest(
        messages=template.render(persona=normalise_persona(persona), k=k),
        template=template.ref,
        params=dict(params),
        json_schema=template.output_schema,
        schema_name="related_personas",
    )


def example_personas(template: PromptTemplate) -> frozenset[str]:
    """Every persona of the demonstrations (the given ones and their answers), normalised and
    lower-cased: a small model copies them."""
    out: set[str] = set()
    for example in template.examples:
        given = example.get("vars", {}).get("persona")
        if isinstance(given, str):
            out.add(normalise_persona(given).lower())
        try:
            answer = json.loads(example["answer"])
        except (ValueError, KeyError, TypeError):
            continue
        for item in _items_of(answer) or []:
            persona, _ = _item_pair(item)
            if persona:
                out.add(persona.lower())
    return frozenset(out)


# --- responses -----------------------------------------------------------------------------------
def _items_of(data: Any) -> list[Any] | None:
    """The list of child items in a parsed response, leniently; None when there is none."""
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        return None
    for key in _LIST_KEYS:
        if isinstance(data.get(key), list):
            return data[key]
        if isinstance(data.get(key), (str, dict)):
            return [data[key]]  # {"personas": "A ..."}: one child where a list was asked for
    if any(isinstance(data.get(key), str) for key in _PERSONA_KEYS):
        return [data]  # a single child object instead of a list
    lists = [v for v in data.values() if isinstance(v, list)]
    if len(lists) == 1:  # {"relatives": [...]}: one list under another name
        return lists[0]
    return None


def normalise_relation(value: Any) -> str:
    """Lower-case, single-spaced, at most 40 characters; "unspecified" when absent."""
    if not isinstance(value, str):
        return UNSPECIFIED
    text = re.sub(r"\s+", " ", value).strip().strip("\"'“”.,;:").strip().lower()
    if len(text) > MAX_RELATION_CHARS:
        text = text[:MAX_RELATION_CHARS].rsplit(" ", 1)[0].strip() or text[:MAX_RELATION_CHARS]
    return text or UNSPECIFIED


def _item_pair(item: Any) -> tuple[str | None, str]:
    """(normalised persona or None, relation) of one child item: a string or an object."""
    if isinstance(item, str):
        return normalise_persona(item) or None, UNSPECIFIED
    if isinstance(item, dict):
        persona = next((item[k] for k in _PERSONA_KEYS if isinstance(item.get(k), str)), None)
        relation = next((item[k] for k in _RELATION_KEYS if isinstance(item.get(k), str)), None)
        return (normalise_persona(persona) or None) if persona else None, normalise_relation(relation)
    return None, UNSPECIFIED


def _salvage_truncated(text: str) -> list[Any] | None:
    """The complete items of a list cut off by max_tokens: the text up to its last "}" with the
    list and object closed again ('{"personas": [{...}, {...}, {"pers' -> two items)."""
    end = text.rfind("}")
    if end < 0:
        return None
    try:
        return _items_of(parse_json_lenient(text[: end + 1] + "]}"))
    except ValueError:
        return None


def _response_items(result: ChatResult) -> tuple[list[Any], str | None]:
    """All child items of a response (uncapped), or a response-level reason."""
    if result.error is not None:
        return [], "llm_error"
    items = _items_of(result.data) if result.data is not None else None
    if result.finish_reason == "length" and result.text:
        # The lenient parser alone would return just the first complete item of a cut-off list.
        items = _salvage_truncated(result.text) or items
    if items is None:
        if result.data is not None:
            return [], "no_personas"  # JSON, but no persona list in it
        if result.finish_reason == "length":
            return [], "truncated"  # cut off by max_tokens before one item was complete
        return [], "unparseable"
    if not items:
        return [], "no_personas"
    return items, None


def parse_related(result: ChatResult, k: int) -> tuple[list[tuple[str, str]], str | None]:
    """The usable (persona, relation) pairs among the first k items of a response, or ([], reason)
    with reason llm_error, unparseable, truncated or no_personas. Lenient: {"personas": [...]}, a
    bare list, a single object, items that are strings (relation "unspecified")."""
    items, reason = _response_items(result)
    if reason is not None:
        return [], reason
    pairs = [(p, r) for p, r in map(_item_pair, items[:k]) if p]
    return (pairs, None) if pairs else ([], "no_personas")


def _raw(item: Any) -> str:
    return item if isinstance(item, str) else json.dumps(item, ensure_ascii=False, default=str)


def _split_tokens(total: int, n: int) -> list[int]:
    """`total` split into n integers that sum to it (the first ones take the remainder)."""
    base, extra = divmod(total, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


# --- the stage ---------------------------------------------------------------------------------
class PersonaToPersona(LLMStage):
    """One hop of Persona-to-Persona as an LLM stage: one request per parent persona.

    Parameters (hashed into the checkpoint): hop (the children's, >= 1), k, sampling, filters, mode.
    A child's prompt/completion tokens are its call's, split among the call's kept children so that
    summing the column gives what the kept nodes cost (gateway usage has the full spend).
    """

    name = "persona-to-persona"
    template_task = "persona_to_persona"
    columns = ["persona_id", "persona", "doc_id", "source"]
    outputs = {"data": NODE_SCHEMA, "edges": EDGE_SCHEMA}
    quarantine = QUARANTINE_SCHEMA

    def __init__(self, params: Mapping[str, Any]):
        super().__init__(params)
        self.hop = int(self.params["hop"])
        if self.hop < 1:
            raise ValueError(f"Persona-to-Persona produces hop 1 and later, not hop {self.hop}")
        self.k = int(self.params["k"])
        self.options = filter_options_from(self.params.get("filters"))
        self.copies = example_personas(self.template)
        self.params_json = json.dumps(self.sampling, sort_keys=True)

    def requests(self, row: dict[str, Any]) -> list[ChatRequest]:
        return [build_request(self.template, row["persona"], self.k, self.sampling)]

    def parse(self, row: dict[str, Any], results: list[ChatResult]) -> Outcome:
        (result,) = results
        base = {"parent_id": row["persona_id"], "doc_id": row["doc_id"], "hop": self.hop,
                "model": result.model, "template": self.template.ref}
        items, reason = _response_items(result)
        if reason is not None:
            detail = self.llm_error(result) if reason == "llm_error" else reason
            return Outcome(rows_in=1, rejects=[{**base, "relation": None, "reason": detail, "response": result.text}])
        outcome = Outcome(rows_in=len(items))
        seen: set[str] = set()
        kept: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            if index >= self.k:
                outcome.filter("beyond_k")
                continue
            child, relation = _item_pair(item)
            if child is None:
                outcome.rejects.append({**base, "relation": relation, "reason": "missing_persona", "response": _raw(item)})
                continue
            child_id = persona_id_for(child)
            if child_id in seen:  # the first occurrence, kept or quarantined, stands for it
                outcome.filter("duplicate_in_response")
                continue
            seen.add(child_id)
            if child_id == row["persona_id"] or child_id == persona_id_for(row["persona"]):
                why: str | None = "same_as_parent"
            else:
                why = check_persona(child, examples=self.copies, options=self.options)
            if why is not None:
                outcome.rejects.append({**base, "relation": relation, "reason": why, "response": _raw(item)})
                continue
            kept.append({"persona_id": child_id, "persona": child, "relation": relation})
        if not kept:
            return outcome
        prompt_split = _split_tokens(result.prompt_tokens, len(kept))
        completion_split = _split_tokens(result.completion_tokens, len(kept))
        for child, pt, ct in zip(kept, prompt_split, completion_split):
            outcome.keep("data", {
                "persona_id": child["persona_id"], "persona": child["persona"], "hop": self.hop, "origin": ORIGIN,
                "parent_id": row["persona_id"], "relation": child["relation"], "doc_id": row["doc_id"],
                "source": row["source"], "model": result.model, "template": self.template.ref,
                "params": self.params_json, "prompt_tokens": pt, "completion_tokens": ct, "cached": result.cached,
            })
            outcome.keep("edges", {
                "parent_id": row["persona_id"], "child_id": child["persona_id"], "relation": child["relation"],
                "hop": self.hop, "model": result.model, "template": self.template.ref,
            })
        return outcome


def filter_options_from(value: Any) -> PersonaFilterOptions:
    """PersonaFilterOptions from plain JSON (a mapping of its fields), None (defaults) or itself."""
    if isinstance(value, PersonaFilterOptions):
        return value
    if value is not None and not isinstance(value, Mapping):
        raise TypeError(f"filter options must be a mapping, not {type(value).__name__}")
    return PersonaFilterOptions.from_dict(dict(value or {}))


def stage_name(hop: int) -> str:
    return f"persona_to_persona_h{hop}"
