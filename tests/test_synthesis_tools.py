"""Tool interfaces: jsonschema validation and the OpenAI function-calling format, on real published
schemas (BFCL) and real Persona Hub tool rows from ../shared/data."""

from __future__ import annotations

import glob
import json
import keyword
import os
import re
from pathlib import Path

import jsonschema
import pytest

from personahub.tasks.llm.json_parsing import parse_json_lenient
from personahub.tasks.synthesis.tools import bfcl_to_openai, from_openai_tool, interface_errors, to_openai_tool

SHARED_DATA = Path(os.environ.get("PERSONAHUB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
BFCL = SHARED_DATA / "tools" / "bfcl"
PERSONA_HUB_TOOLS = SHARED_DATA / "personahub" / "tool_first2500.jsonl"

GOOD = {"name": "Tide table lookup", "description": "Returns the next high and low tides for a harbour.",
        "function_name": "get_tide_table",
        "input_args": {"harbour": {"type": "string", "description": "Name of the harbour"},
                       "days": {"type": "integer", "description": "Days ahead", "minimum": 1}},
        "return": {"type": "object", "description": "Times and heights of the next tides"},
        "dependencies": ["requests"]}


def test_a_good_interface_converts_to_an_openai_tool() -> None:
    assert interface_errors(GOOD) == []
    tool = to_openai_tool(GOOD)
    assert tool == {"type": "function", "function": {
        "name": "get_tide_table", "description": GOOD["description"],
        "parameters": {"type": "object", "properties": GOOD["input_args"], "required": ["harbour", "days"]}}}
    jsonschema.Draft202012Validator.check_schema(tool["function"]["parameters"])
    assert interface_errors(from_openai_tool(tool, ["requests"])) == []


@pytest.mark.parametrize("change, message", [
    ({"function_name": "class"}, "Python keyword"),
    ({"function_name": "get tides"}, "function_name: 'get tides' does not match"),
    ({"input_args": {"2nd": {"type": "string", "description": "x"}}}, "'2nd' is not a Python argument name"),
    ({"input_args": {"harbour": {"type": "text", "description": "x"}}}, "input_args/harbour/type"),
    ({"input_args": "harbour"}, "input_args: 'harbour' is not of type 'object'"),
    ({"required": ["harbour", "tide"]}, "required: tide not among input_args"),
    ({"dependencies": "requests"}, "dependencies: 'requests' is not of type 'array'"),
])
def test_broken_interfaces_say_what_is_wrong(change: dict, message: str) -> None:
    errors = interface_errors({**GOOD, **change})
    assert errors and message in errors[0], errors


def test_a_missing_field_is_named() -> None:
    broken = {k: v for k, v in GOOD.items() if k != "return"}
    assert interface_errors(broken) == ["interface: 'return' is a required property"]


def bfcl_functions() -> list[dict]:
    return [fn for path in sorted(glob.glob(str(BFCL / "BFCL_v4_*.json"))) for line in open(path)
            for fn in (json.loads(line).get("function") or [])]


@pytest.mark.skipif(not BFCL.is_dir(), reason=f"BFCL schemas not found at {BFCL}")
def test_every_bfcl_function_becomes_a_valid_openai_tool() -> None:
    functions = bfcl_functions()
    assert len(functions) > 5000
    for fn in functions:
        tool = bfcl_to_openai(fn)
        jsonschema.Draft202012Validator.check_schema(tool["function"]["parameters"])  # raises when not a schema
        assert set(tool["function"]["parameters"].get("properties", {})) == set(fn["parameters"].get("properties", {}))


@pytest.mark.skipif(not BFCL.is_dir(), reason=f"BFCL schemas not found at {BFCL}")
def test_bfcl_functions_as_interfaces() -> None:
    """A BFCL function read back as an interface is valid unless its name is not a Python
    identifier (module.function names), an argument is a Python keyword ("from") or lacks a type or a
    description: counted here straight from the BFCL JSON, not by the validator."""
    identifier = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
    expected_ok = actual_ok = 0
    for fn in bfcl_functions():
        props = fn["parameters"].get("properties", {})
        typed = all(isinstance(p.get("type"), str) and p["type"] != "any" and p.get("description") for p in props.values())
        typed = typed and not any(keyword.iskeyword(name) for name in props)
        expected_ok += bool(identifier.match(fn["name"]) and typed and len(fn.get("description", "")) >= 20)
        actual_ok += not interface_errors(from_openai_tool(bfcl_to_openai(fn)))
    assert actual_ok == expected_ok and actual_ok > 5000


@pytest.mark.skipif(not PERSONA_HUB_TOOLS.is_file(), reason=f"Persona Hub tool rows not found at {PERSONA_HUB_TOOLS}")
def test_persona_hub_tool_rows_get_a_reason_each() -> None:
    """The released Persona Hub tools name their dependencies `depend` and give input_args as text
    more often than not: as answers to our prompt, each is rejected with a reason, none crashes."""
    rows = [json.loads(line) for line in PERSONA_HUB_TOOLS.open()]
    assert len(rows) == 2500
    without_dependencies = rejected = 0
    for row in rows:
        text = row["synthesized text"]
        try:
            text = json.loads(text)  # the released rows hold the answer as a JSON string
        except json.JSONDecodeError:
            pass
        try:
            answer = parse_json_lenient(text) if isinstance(text, str) else text
        except ValueError:
            answer = None
        errors = interface_errors(answer)
        rejected += bool(errors)
        if isinstance(answer, dict) and "dependencies" not in answer:
            without_dependencies += 1
            assert "interface: 'dependencies' is a required property" in errors
    assert without_dependencies > 2400 and rejected == 2500
