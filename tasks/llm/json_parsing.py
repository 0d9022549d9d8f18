"""Lenient parsing of JSON from model answers.

Small models wrap JSON in ``` fences, add prose around it, use single quotes, trailing commas or
Python's True/False/None. This finds the first JSON object or array that survives those repairs.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

_FENCE = re.compile(r"```[ \t]*[A-Za-z0-9_-]*[ \t]*\r?\n?(.*?)(?:```|$)", re.DOTALL)
_CLOSERS = {"{": "}", "[": "]"}
_MAX_CANDIDATES = 25


def _balanced_block(text: str, start: int) -> str | None:
    """The bracket block opening at text[start], matched with a stack and aware of "..." and '...'
    strings and backslash escapes; None when the text ends first (truncated output)."""
    stack: list[str] = []
    quote: str | None = None
    escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
            continue
        if ch in "\"'":
            # An apostrophe inside a bare word ("don't") is not a quote in single-quoted Python dicts.
            if ch == "'" and i > 0 and text[i - 1].isalnum():
                continue
            quote = ch
        elif ch in _CLOSERS:
            stack.append(_CLOSERS[ch])
        elif ch in "}]":
            if not stack or ch != stack.pop():
                return None
            if not stack:
                return text[start : i + 1]
    return None


def _outside_strings(text: str, fn) -> str:
    """Apply fn to the parts of text outside "..." and '...' strings (for the repairs below)."""
    parts = re.split(r'("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')', text)
    return "".join(part if i % 2 else fn(part) for i, part in enumerate(parts))


def _parse_block(block: str) -> Any:
    try:
        return json.loads(block)
    except json.JSONDecodeError as exc:
        first_error = exc
    # Trailing commas: the most common small-model slip.
    repaired = _outside_strings(block, lambda s: re.sub(r",(\s*[}\]])", r"\1", s))
    try:
        return json.loads(repaired)
    except json.JSONDecodeError:
        pass
    # Single quotes / Python literals: read it as a Python literal with JSON's words translated.
    pythonic = _outside_strings(
        block, lambda s: re.sub(r"\b(true|false|null)\b", lambda m: {"true": "True", "false": "False", "null": "None"}[m.group(1)], s)
    )
    try:
        value = ast.literal_eval(pythonic)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(f"not valid JSON ({first_error.msg} at line {first_error.lineno} column {first_error.colno})") from None
    if not isinstance(value, (dict, list)):
        raise ValueError("not a JSON object or array")
    # Round-trip to plain JSON types (tuples → lists, non-str keys → str).
    return json.loads(json.dumps(value, default=str))


def parse_json_lenient(text: str) -> Any:
    """The JSON object or array in a model's answer, tolerating what small models add: ``` fences,
    prose before or after, single quotes, trailing commas, Python True/False/None. Raises ValueError
    with a short reason when there is none."""
    if text is None or not text.strip():
        raise ValueError("empty response")
    stripped = text.strip()
    try:
        value = json.loads(stripped)
        if isinstance(value, (dict, list)):
            return value
    except (ValueError, RecursionError):
        pass
    fence = _FENCE.search(stripped)
    candidates_text = [fence.group(1)] if fence and fence.group(1).strip() else []
    candidates_text.append(stripped)
    first_error: str | None = None
    truncated = False
    for body in candidates_text:
        tried = 0
        for match in re.finditer(r"[{\[]", body):
            if tried >= _MAX_CANDIDATES:
                break
            tried += 1
            block = _balanced_block(body, match.start())
            if block is None:
                truncated = True
                continue
            try:
                return _parse_block(block)
            except ValueError as exc:
                first_error = first_error or str(exc)
            except RecursionError:
                first_error = first_error or "JSON nested too deeply"
    if first_error:
        raise ValueError(first_error)
    if truncated:
        raise ValueError("no complete JSON object or array (output truncated?)")
    raise ValueError("no JSON object or array in the response")
