"""Solutions of synthesized math problems, as a stage of its own (METHOD.md: "solutions as a
separate stage"): several independent solvers per problem, their final answers compared by
meaning, and only problems on which enough solvers agree kept as verified.

By default three solvers: two chain-of-thought solvers with different seeds, and one
program-of-thought solver whose Python runs in the sandbox (the last line it prints is its
answer). Each solver is one request, so each is cached on its own: adding a solver pays only for
the new one. A problem whose majority answer has at least `min_agreement` solvers behind it is
kept with `answer`, `agreement` (k) and `solvers` (n); one below is written to the stage's
`unverified` table and counted as filtered (low_agreement), so it stays readable but is not in the
dataset. A failed call quarantines the problem (llm_error), so an outage never passes for a
disagreement.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from personahub.tasks.llm.requests import ChatRequest, ChatResult
from personahub.tasks.llm.stage import LLMStage, Outcome
from personahub.tasks.llm.templates import PromptTemplate, load_template
from personahub.tasks.synthesis.code_blocks import python_code
from personahub.tasks.synthesis.math_answers import agreement, extract_answer
from personahub.tasks.synthesis.sandbox import SandboxLimits, run_python
from personahub.tasks.synthesis.stage import ITEM_SCHEMA, REJECT_SCHEMA, UNVERIFIED, reject

SolverKind = Literal["chain-of-thought", "program-of-thought"]
TEMPLATE_TASK = "math_solution"
# A final answer is a number or an expression; a longer "answer" is a solver that never concluded,
# and comparing it symbolically could take sympy arbitrarily long.
MAX_ANSWER_CHARS = 200


class SolverSpec(BaseModel):
    """One solver: how it solves (its template, prompts/math_solution/<kind>.yaml) and its seed."""

    kind: SolverKind = Field(..., description="chain-of-thought or program-of-thought")
    seed: int = Field(..., description="Sampling seed: solvers of one kind differ by it")

    @property
    def label(self) -> str:
        return f"{self.kind}#{self.seed}"


DEFAULT_SOLVERS = [SolverSpec(kind="chain-of-thought", seed=1), SolverSpec(kind="chain-of-thought", seed=2),
                   SolverSpec(kind="program-of-thought", seed=3)]


def solver_templates(solvers: list[SolverSpec]) -> dict[str, str]:
    """kind → template ref, for the stage's parameters (an edited template reruns the stage)."""
    return {kind: load_template(TEMPLATE_TASK, kind).ref for kind in sorted({s.kind for s in solvers})}


@dataclass(frozen=True)
class Solution:
    solver: str
    answer: str | None
    text: str
    program_output: str | None = None  # program-of-thought: what the program printed
    program_error: str | None = None  # why the program gave no answer

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _short(answer: str | None) -> str | None:
    answer = (answer or "").strip()
    return answer if answer and len(answer) <= MAX_ANSWER_CHARS else None


def run_program(text: str, limits: SandboxLimits) -> tuple[str | None, str | None, str | None]:
    """A program-of-thought answer: (answer, program output, error). The answer is a \\boxed{} it
    printed, else its last non-empty line."""
    code = python_code(text)
    if code is None:
        return None, None, "no_program"
    result = run_python(code, limits)
    if result.timed_out:
        return None, result.stdout[-500:], "timeout"
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        return None, result.stdout[-500:], f"error: {last[:300]}"
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if not lines:
        return None, "", "no_output"
    return _short(extract_answer(result.stdout) or lines[-1]), result.stdout[-500:], None


class SolveMath(LLMStage):
    """Parameters (hashed into the checkpoint): solvers ([{kind, seed}]), templates (kind → ref),
    min_agreement, sandbox ({timeout_s, memory_mb}), model, and the input's digest."""

    name = "solve-math"
    template_task = TEMPLATE_TASK
    default_mode = "chain-of-thought"
    columns = ITEM_SCHEMA.names
    outputs = {"data": ITEM_SCHEMA, UNVERIFIED: ITEM_SCHEMA}
    quarantine = REJECT_SCHEMA

    def __init__(self, params: Mapping[str, Any]):
        super().__init__(params)
        self.solvers = [SolverSpec(**s) for s in self.params["solvers"]]
        if not self.solvers:
            raise ValueError("solve-math needs at least one solver")
        self.templates: dict[str, PromptTemplate] = {s.kind: load_template(TEMPLATE_TASK, s.kind) for s in self.solvers}
        self.min_agreement = int(self.params.get("min_agreement", 2))
        self.limits = SandboxLimits(**(self.params.get("sandbox") or {}))

    def requests(self, row: dict[str, Any]) -> list[ChatRequest]:
        out = []
        for solver in self.solvers:
            template = self.templates[solver.kind]
            out.append(ChatRequest(messages=template.render(problem=row["text"]), template=template.ref,
                                   params={**template.params, "seed": solver.seed}))
        return out

    def solution(self, solver: SolverSpec, result: ChatResult) -> Solution:
        text = result.text or ""
        if solver.kind == "program-of-thought":
            answer, output, error = run_program(text, self.limits)
            return Solution(solver.label, answer, text, output, error)
        return Solution(solver.label, _short(extract_answer(text)), text)

    def parse(self, row: dict[str, Any], results: list[ChatResult]) -> Outcome:
        outcome = Outcome(rows_in=1)
        for solver, result in zip(self.solvers, results):
            if result.error is not None:
                outcome.rejects.append(reject(row, row["use_case"], "solve", self.llm_error(result), row["text"],
                                              result.model, self.templates[solver.kind].ref))
                return outcome
        solutions = [self.solution(solver, result) for solver, result in zip(self.solvers, results)]
        agreed = agreement([s.answer for s in solutions])
        solved = {**row, "answer": agreed.majority, "agreement": agreed.k, "solvers": agreed.n,
                  "solutions": json.dumps([s.as_dict() for s in solutions], ensure_ascii=False)}
        if agreed.k >= self.min_agreement:
            outcome.keep("data", solved)
        else:
            outcome.keep(UNVERIFIED, solved)
            outcome.filter("low_agreement")
        return outcome
