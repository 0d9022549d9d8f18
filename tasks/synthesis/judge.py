"""The optional judge (METHOD.md, "Persona-driven synthesis"): an LLM grades each item on criteria
its use case names in prompts/judge/zero-shot.yaml, 1 to 5 each.

The answer's schema asks for exactly those criteria as integers, so a reply that is not a full set
of scores is quarantined (unparseable, schema_invalid), never guessed. `judge_scores` keeps every
criterion's score, `judge_score` their mean; an item under `min_score` goes to the stage's
`unverified` table, counted as filtered (low_judge_score).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jsonschema

from personahub.tasks.llm.requests import ChatRequest, ChatResult
from personahub.tasks.llm.stage import LLMStage, Outcome
from personahub.tasks.synthesis.stage import ITEM_SCHEMA, REJECT_SCHEMA, UNVERIFIED, reject



def scores_schema(criteria: Mapping[str, str]) -> dict[str, Any]:
    return {"type": "object", "properties": {name: {"type": "integer", "minimum": 1, "maximum": 5} for name in criteria},
            "required": list(criteria)}


class JudgeItems(LLMStage):
    """Parameters (hashed into the checkpoint): use_case, mode, template_ref, sampling, model,
    min_score, and the input's digest."""

    name = "judge"
    template_task = "judge"
    default_mode = "zero-shot"
    columns = ITEM_SCHEMA.names
    outputs = {"data": ITEM_SCHEMA, UNVERIFIED: ITEM_SCHEMA}
    quarantine = REJECT_SCHEMA

    def __init__(self, params: Mapping[str, Any]):
        super().__init__(params)
        use_case = self.params["use_case"]
        criteria = (self.template.extra.get("criteria") or {}).get(use_case)
        if not criteria:
            raise ValueError(f"{self.template.name} names no criteria for {use_case}")
        self.criteria: dict[str, str] = dict(criteria)
        self.schema = scores_schema(self.criteria)
        self.validator = jsonschema.Draft202012Validator(self.schema)
        self.min_score = float(self.params.get("min_score") or 0)

    def requests(self, row: dict[str, Any]) -> list[ChatRequest]:
        item = json.dumps(json.loads(row["output"]), indent=1, ensure_ascii=False)
        messages = self.template.render(persona=row["persona"], use_case=row["use_case"], item=item, criteria=self.criteria)
        return [ChatRequest(messages=messages, template=self.template.ref, params=self.sampling,
                            json_schema=self.schema, schema_name="scores")]

    def reason(self, result: ChatResult) -> str | None:
        if result.error is not None:
            return self.llm_error(result)
        if result.data is None:
            return "truncated" if result.finish_reason == "length" else "unparseable"
        error = next(iter(self.validator.iter_errors(result.data)), None)
        return None if error is None else f"schema_invalid: {error.message[:200]}"

    def parse(self, row: dict[str, Any], results: list[ChatResult]) -> Outcome:
        outcome = Outcome(rows_in=1)
        result = results[0]
        reason = self.reason(result)
        if reason is not None:
            outcome.rejects.append(reject(row, row["use_case"], "judge", reason, result.text, result.model,
                                          self.template.ref))
            return outcome
        scores = {name: int(result.data[name]) for name in self.criteria}
        judged = {**row, "judge_scores": json.dumps(scores, sort_keys=True),
                  "judge_score": sum(scores.values()) / len(scores)}
        if judged["judge_score"] >= self.min_score:
            outcome.keep("data", judged)
        else:
            outcome.keep(UNVERIFIED, judged)
            outcome.filter("low_judge_score")
        return outcome
