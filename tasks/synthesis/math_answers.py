"""Final answers of math solutions: extracted from the text, compared by meaning, counted.

A solution's final answer is the last `\\boxed{...}` (LaTeX, braces balanced), else what follows
GSM8K's `####`, else the last "the answer is ...". Two answers are the same when math-verify
(Hugging Face's answer checker, on sympy) says so: 0.5, 1/2 and \\frac{1}{2} agree, 72 and 72.0
agree, string equality would say otherwise. `agreement` groups a problem's answers by that
equivalence: the largest group is the majority answer, its size the k of "k of n solvers agree".
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from math_verify import parse, verify

# With its timeouts off (below) math-verify warns on every call; the reason is known, the warning noise.
for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).setLevel(logging.ERROR)

_HASHES = re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)
_ANSWER_IS = re.compile(r"(?:final answer|the answer)\s*(?:is|:)\s*:?\s*(.+?)(?:\.\s|\.?$|\n)", re.IGNORECASE | re.MULTILINE)


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed")
    while start >= 0:
        brace = text.find("{", start)
        if brace < 0:
            return None
        depth = 0
        for i in range(brace, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[brace + 1 : i].strip()
        start = text.rfind("\\boxed", 0, start)  # unbalanced (cut off): try an earlier one
    return None


def extract_answer(solution: str) -> str | None:
    """The solution's final answer as written, or None when it states none."""
    boxed = _last_boxed(solution)
    if boxed:
        return boxed
    hashes = _HASHES.findall(solution)
    if hashes:
        return hashes[-1].strip()
    stated = _ANSWER_IS.findall(solution)
    if stated:
        return stated[-1].strip().strip("$").strip()
    return None


def _parsed(answer: str) -> list:
    # In $...$ math-verify reads the answer as LaTeX (fractions, roots, sets); plain text as an expression.
    # Its own timeouts use SIGALRM, which only the main thread has: off, since Prefect runs tasks in threads.
    return parse(f"${answer}$", parsing_timeout=None) or parse(answer, parsing_timeout=None)  # type: ignore[arg-type]


def equivalent(a: str, b: str) -> bool:
    """Whether two final answers mean the same (math-verify; exact text as a fallback)."""
    if a.strip() == b.strip():
        return True
    left, right = _parsed(a), _parsed(b)
    if not left or not right:
        return False
    return bool(verify(left, right, timeout_seconds=None))


@dataclass(frozen=True)
class Agreement:
    majority: str | None  # the answer of the largest group (None: no solver gave an answer)
    k: int  # solvers in that group
    n: int  # solvers asked


def agreement(answers: Sequence[str | None]) -> Agreement:
    """Group the answers by equivalence (each joins the first group it matches) and return the
    largest group; a tie goes to the group formed first."""
    groups: list[list[str]] = []
    for answer in answers:
        if answer is None:
            continue
        for group in groups:
            if equivalent(group[0], answer):
                group.append(answer)
                break
        else:
            groups.append([answer])
    if not groups:
        return Agreement(None, 0, len(answers))
    best = max(groups, key=len)
    return Agreement(best[0], len(best), len(answers))
