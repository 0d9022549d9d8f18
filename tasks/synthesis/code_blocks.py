"""The Python program in an LLM's answer: the first ```python block, else the first fenced block,
else the whole answer when it parses as Python. Finding it never runs it (sandbox.py does)."""

from __future__ import annotations

import ast
import re

_FENCED = re.compile(r"```[ \t]*(python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.IGNORECASE | re.DOTALL)


def python_code(answer: str) -> str | None:
    """The program, or None when the answer holds none."""
    blocks = _FENCED.findall(answer or "")
    tagged = [code for lang, code in blocks if lang]
    for code in tagged or [code for _, code in blocks]:
        if code.strip():
            return code.strip() + "\n"
    text = (answer or "").strip()
    if not text:
        return None
    try:
        ast.parse(text)
    except SyntaxError:
        return None
    return text + "\n"
