"""The synthesis use cases (METHOD.md, "Persona-driven synthesis"): what each asks for and what a
usable answer holds.

A use case is its prompts (prompts/<name>/<mode>.yaml, one per prompt mode), its demonstrations
(prompts/<name>/demos.jsonl unless the user points to a file), the JSON schema its answers must
meet (also sent to the endpoint), the field that is the item's main text (what decontamination and
diversity read), the template variables a user may set, and the checks beyond the schema. The
checks return a reason code for the quarantine, never repair an answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from personahub.tasks.synthesis import tools

MODES = ("zero-shot", "few-shot", "persona-enhanced")


class SynthesisParamsError(ValueError):
    """A synthesis run asked for something that cannot run (unknown use case, missing variable)."""

Check = Callable[[dict[str, Any]], "str | None"]


@dataclass(frozen=True)
class UseCase:
    name: str
    text_field: str  # the item's main text
    schema: Mapping[str, Any]  # what an answer must be (jsonschema), also sent as the response format
    variables: Mapping[str, str] = field(default_factory=dict)  # user-settable template variable → default
    required: tuple[str, ...] = ()  # variables without a usable default (the NPC's game world)
    check: Check | None = None

    def text_of(self, output: Mapping[str, Any]) -> str:
        return str(output.get(self.text_field) or "")


def _text(min_length: int, max_length: int) -> dict[str, Any]:
    # The bound is also the endpoint's grammar (llama-server turns it into one): a cap below the
    # template's max_tokens (about 4 characters a token) makes a rambling model close its JSON
    # instead of being cut off (SmolLM2 wrote 3 of 3 math answers to the 384-token limit without it).
    return {"type": "string", "minLength": min_length, "maxLength": max_length}


def _object(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties)}


# "Solution:", "Answer: 42", \boxed{}, "####": the problem must come without its solution.
_SOLUTION = re.compile(r"\\boxed\s*\{|^\s*#{4}\s|\b(?:solution|answer)\s*(?:is\s*)?[:=]", re.IGNORECASE | re.MULTILINE)
# Sub-problem markers at a line start: "1.", "2)", "(a)", "b)", "Part 1", "Sub-problem 2".
_SUBPROBLEM = re.compile(r"^\s*(?:\(?[a-h1-9]\)|[1-9]\.\s|part\s+[1-9a-h]\b|sub-?problem\s+[1-9a-h]\b)",
                         re.IGNORECASE | re.MULTILINE)
MAX_SUBPROBLEMS = 2


def check_math_problem(output: dict[str, Any]) -> str | None:
    problem = str(output.get("problem") or "")
    if _SOLUTION.search(problem):
        return "contains_solution"
    if len(_SUBPROBLEM.findall(problem)) > MAX_SUBPROBLEMS:
        return "too_many_subproblems"
    return None


def check_article(output: dict[str, Any]) -> str | None:
    title, article = str(output.get("title") or "").strip(), str(output.get("article") or "").strip()
    if title and article.lower().startswith(title.lower()) and len(article) < len(title) + 50:
        return "article_is_title"
    return None


def check_tool(output: dict[str, Any]) -> str | None:
    errors = tools.interface_errors(output)
    return f"invalid_interface: {errors[0]}" if errors else None


USE_CASES: dict[str, UseCase] = {
    case.name: case
    for case in (
        UseCase("math", "problem", _object(problem=_text(40, 1200)),
                variables={"topic": "", "level": ""}, check=check_math_problem),
        UseCase("logic", "problem", _object(problem=_text(40, 1200)), variables={"variant": "general"}),
        UseCase("instructions", "prompt", _object(prompt=_text(10, 1000))),
        UseCase("knowledge", "article", _object(title=_text(3, 150), article=_text(200, 3000)), check=check_article),
        UseCase("npc", "background",
                _object(name=_text(1, 80), species=_text(1, 80), role=_text(1, 120), background=_text(20, 1000),
                        interaction=_text(10, 1000)),
                required=("world",)),
        UseCase("tools", "description", tools.INTERFACE_SCHEMA, check=check_tool),
    )
}


def use_case(name: str) -> UseCase:
    if name not in USE_CASES:
        raise SynthesisParamsError(f"unknown use case {name!r}: one of {', '.join(USE_CASES)}")
    return USE_CASES[name]
