"""Final-answer extraction and equivalence on real solutions (GSM8K, MATH-500 in ../shared/data)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from personahub.tasks.synthesis.math_answers import agreement, equivalent, extract_answer

MATH = Path(os.environ.get("PERSONAHUB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "math"


def rows(name: str, n: int) -> list[dict]:
    with (MATH / name).open() as fh:
        return [json.loads(line) for _, line in zip(range(n), fh)]


@pytest.mark.skipif(not (MATH / "MATH500_test_prm800k_split.jsonl").is_file(), reason=f"MATH-500 not found at {MATH}")
def test_math500_solutions_give_their_published_answer() -> None:
    """The boxed answer of each reference solution means the dataset's own answer field."""
    data = rows("MATH500_test_prm800k_split.jsonl", 200)
    extracted = [extract_answer(r["solution"]) for r in data]
    assert all(a is not None for a in extracted)
    same = sum(equivalent(a, r["answer"]) for a, r in zip(extracted, data))
    assert same >= 190, f"{same} of 200"
    # and not every answer matches any other: the neighbour's answer is mostly different
    shifted = sum(equivalent(a, r["answer"]) for a, r in zip(extracted, data[1:]))
    assert shifted <= 20, f"{shifted} of 199 neighbours matched"


@pytest.mark.skipif(not (MATH / "gsm8k_test.jsonl").is_file(), reason=f"GSM8K not found at {MATH}")
def test_gsm8k_answers_after_the_hashes() -> None:
    data = rows("gsm8k_test.jsonl", 300)
    for r in data:
        published = r["answer"].rsplit("####", 1)[1].strip()
        assert extract_answer(r["answer"]) == published
        assert equivalent(extract_answer(f"So she makes this much. The answer is {published}."), published)


@pytest.mark.parametrize("a, b, same", [
    ("0.5", "\\frac{1}{2}", True), ("1/2", "\\dfrac{1}{2}", True), ("72", "72.0", True), ("\\sqrt{4}", "2", True),
    ("x^2+2x+1", "(x+1)^2", True), ("3", "4", False), ("\\frac{1}{3}", "0.33", False),
])
def test_equivalence_is_by_meaning(a: str, b: str, same: bool) -> None:
    assert equivalent(a, b) is same


def test_extraction_forms() -> None:
    assert extract_answer("so \\boxed{\\frac{3}{4}} and later \\boxed{7}") == "7", "the last boxed answer"
    assert extract_answer("nested \\boxed{\\frac{1}{\\sqrt{2}}}") == "\\frac{1}{\\sqrt{2}}"
    assert extract_answer("Therefore the final answer is: $42$.") == "42"
    assert extract_answer("I could not solve it.") is None


def test_two_of_three_agree() -> None:
    result = agreement(["\\frac{1}{2}", "0.5", "3"])
    assert (result.k, result.n) == (2, 3) and equivalent(result.majority, "1/2")
    assert agreement(["1", "2", "3"]).k == 1, "no two agree"
    assert agreement([None, None, "5"]) .k == 1 and agreement([None, None]).majority is None


def test_equivalence_works_off_the_main_thread() -> None:
    """Prefect runs tasks in threads, where math-verify's SIGALRM timeouts would raise."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(equivalent, "0.5", "\\frac{1}{2}").result() is True
