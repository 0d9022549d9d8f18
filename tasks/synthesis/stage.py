"""Persona-driven synthesis as an LLM stage: one request per persona, one item or one quarantined
answer back.

The use case (use_cases.py) gives the schema and checks, prompts/<use case>/<mode>.yaml the prompt;
the demonstrations and the template variables arrive resolved in the stage's parameters, so they
are hashed into its checkpoint and, through the rendered messages, into every cache key. An answer
is kept only when it parsed, meets the use case's schema and passes its checks; otherwise it is
quarantined with the reason and the raw text.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jsonschema
import pyarrow as pa

from personahub.tasks.llm.requests import ChatRequest, ChatResult
from personahub.tasks.llm.stage import LLMStage, Outcome
from personahub.tasks.synthesis.use_cases import UseCase, use_case

ITEM_SCHEMA = pa.schema([
    ("item_id", pa.string()),
    ("persona_id", pa.string()),
    ("persona", pa.string()),
    ("position", pa.int64()),  # the persona's place in the run's seeded order
    ("use_case", pa.string()),
    ("mode", pa.string()),
    ("text", pa.string()),  # the use case's main field (problem, prompt, article, ...)
    ("output", pa.string()),  # every parsed field, as a JSON object
    ("variables", pa.string()),  # the template variables (topic, level, variant, world), JSON
    ("model", pa.string()),
    ("template", pa.string()),
    ("params", pa.string()),  # sampling parameters, JSON
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("cached", pa.bool_()),
    # Filled by the stages after synthesis (null until then, or for other use cases):
    ("answer", pa.string()),  # math: the majority final answer of the solvers
    ("agreement", pa.int64()),  # math: solvers whose answers agree with it (the k of "k of n")
    ("solvers", pa.int64()),  # math: solvers asked (the n)
    ("solutions", pa.string()),  # math: each solver's solution, answer and (program) output, JSON
    ("implementation", pa.string()),  # tools: the function's code, checked in the sandbox
    ("checks", pa.string()),  # tools: what the sandbox found (parameters, missing dependencies), JSON
    ("judge_score", pa.float64()),  # the judge's mean score over its criteria
    ("judge_scores", pa.string()),  # criterion → score, JSON
    ("contamination", pa.float64()),  # share of the item's n-grams found in the reference test sets
    ("conversation", pa.string()),  # instructions with turns: [{role, content}, ...], the prompt first, JSON
])
REJECT_SCHEMA = pa.schema([
    ("persona_id", pa.string()),
    ("position", pa.int64()),
    ("use_case", pa.string()),
    ("mode", pa.string()),
    ("reason", pa.string()),
    ("response", pa.string()),
    ("model", pa.string()),
    ("template", pa.string()),
])


def reject(row: Mapping[str, Any], use_case_name: str, mode: str, reason: str, response: str | None, model: str,
           template: str) -> dict[str, Any]:
    """One quarantined answer (REJECT_SCHEMA): whose it was, the stage's mode, why, and the raw text."""
    return {"persona_id": row["persona_id"], "position": row["position"], "use_case": use_case_name, "mode": mode,
            "reason": reason, "response": response, "model": model, "template": template}


def item_id_for(use_case_name: str, mode: str, template: str, persona_id: str) -> str:
    return hashlib.sha256(f"{use_case_name}\0{mode}\0{template}\0{persona_id}".encode()).hexdigest()[:20]


# The table where a verifying stage (solve_math, implement_tools, judge) keeps what it holds back.
UNVERIFIED = "unverified"

COPY_NGRAM = 8  # an item sharing a run of this many words with a demonstration copied it


def word_ngrams(text: str, n: int = COPY_NGRAM) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@lru_cache(maxsize=None)
def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(use_case(name).schema)


def answer_reason(case: UseCase, result: ChatResult) -> str | None:
    """Why a completed call's answer is not a usable item (None when it is): the parse, the schema,
    the use case's own checks, in that order."""
    if result.data is None:
        return "truncated" if result.finish_reason == "length" else "unparseable"
    errors = sorted(_validator(case.name).iter_errors(result.data), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        where = "/".join(map(str, errors[0].absolute_path)) or "answer"
        return f"schema_invalid: {where}: {errors[0].message[:200]}"
    return case.check(result.data) if case.check else None


class Synthesize(LLMStage):
    """One use case in one prompt mode over the run's personas.

    Parameters (hashed into the checkpoint): use_case, mode, variables, demos (each {answer, persona}),
    sampling (None = the template's), and the selection's digest (set by the flow).
    """

    name = "synthesize"
    columns = ["persona_id", "persona", "position"]
    outputs = {"data": ITEM_SCHEMA}
    quarantine = REJECT_SCHEMA

    def __init__(self, params: Mapping[str, Any]):
        self.case = use_case(params["use_case"])
        self.template_task = self.case.name
        super().__init__(params)
        self.mode = self.template.mode
        self.variables: dict[str, str] = dict(self.params.get("variables") or {})
        self.render_vars = dict(self.variables)
        if "variants" in self.template.extra:  # logic: the variant's instruction, defined in the template
            variants = self.template.extra["variants"]
            variant = self.variables.get("variant", "general")
            if variant not in variants:
                raise ValueError(f"variant {variant!r} is not one of {sorted(variants)} in {self.template.name}")
            self.render_vars["variant_instruction"] = variants[variant]
        self.demos: list[dict[str, Any]] = list(self.params.get("demos") or [])
        # A small model copies its demonstrations (seen: the beekeeper demo back, word for word).
        self.demo_ngrams: set[tuple[str, ...]] = set()
        for demo in self.demos:
            self.demo_ngrams |= word_ngrams(self.case.text_of(json.loads(demo["answer"])))
        self.params_json = json.dumps(self.sampling, sort_keys=True)
        self.variables_json = json.dumps(self.variables, sort_keys=True)

    def requests(self, row: dict[str, Any]) -> list[ChatRequest]:
        return [ChatRequest(messages=self.template.render(persona=row["persona"], demos=self.demos, **self.render_vars),
                            template=self.template.ref, params=self.sampling, json_schema=self.case.schema,
                            schema_name=self.case.name)]

    def parse(self, row: dict[str, Any], results: list[ChatResult]) -> Outcome:
        outcome = Outcome(rows_in=1)
        result = results[0]
        reason = self.llm_error(result) if result.error is not None else answer_reason(self.case, result)
        if reason is None and self.demo_ngrams & word_ngrams(self.case.text_of(result.data)):
            reason = "copies_demonstration"
        if reason is not None:
            outcome.rejects.append(reject(row, self.case.name, self.mode, reason, result.text, result.model,
                                          self.template.ref))
            return outcome
        outcome.keep("data", {
            "item_id": item_id_for(self.case.name, self.mode, self.template.ref, row["persona_id"]),
            "persona_id": row["persona_id"], "persona": row["persona"], "position": row["position"],
            "use_case": self.case.name, "mode": self.mode, "text": self.case.text_of(result.data),
            "output": json.dumps(result.data, ensure_ascii=False, sort_keys=True), "variables": self.variables_json,
            "model": result.model, "template": self.template.ref, "params": self.params_json,
            "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "cached": result.cached,
        })
        return outcome
