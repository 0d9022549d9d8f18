"""Tool interfaces (METHOD.md, "Tools"): what the tools use case's answers must be, checked with
jsonschema, and their conversion to and from the OpenAI function-calling format.

An interface names the tool, says what it does, and declares a Python function: its name, its
arguments (each a JSON-schema property: type and description, plus enum / items / properties where
needed), its return value and the packages it depends on. `to_openai_tool` gives what an
OpenAI-compatible endpoint takes in `tools=[...]`; `from_openai_tool` reads one back, and
`bfcl_to_openai` turns a Berkeley Function-Calling Leaderboard function (its "dict" / "float" /
Java and JavaScript type names) into that format, so real published schemas can be checked the
same way.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Mapping
from typing import Any

import jsonschema

JSON_TYPES = ["string", "number", "integer", "boolean", "array", "object", "null"]
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ARG = {
    "type": "object",
    "properties": {"type": {"enum": JSON_TYPES}, "description": {"type": "string", "minLength": 1}},
    "required": ["type", "description"],
}
INTERFACE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 3, "maxLength": 120},
        "description": {"type": "string", "minLength": 20, "maxLength": 2000},
        "function_name": {"type": "string", "pattern": _IDENTIFIER.pattern, "maxLength": 64},
        "input_args": {"type": "object", "additionalProperties": _ARG},
        "required": {"type": "array", "items": {"type": "string"}},
        "return": _ARG,
        "dependencies": {"type": "array", "items": {"type": "string", "minLength": 1}},
    },
    "required": ["name", "description", "function_name", "input_args", "return", "dependencies"],
}
_VALIDATOR = jsonschema.Draft202012Validator(INTERFACE_SCHEMA)
# check_schema builds this validator on every call; one is enough (8,726 BFCL schemas: 40 s → a few).
_META = jsonschema.Draft202012Validator(jsonschema.Draft202012Validator.META_SCHEMA)


def schema_error(schema: Any) -> str | None:
    """Why `schema` is not a JSON schema (Draft 2020-12), or None when it is one."""
    error = jsonschema.exceptions.best_match(_META.iter_errors(schema))
    return None if error is None else error.message


def interface_errors(interface: Any) -> list[str]:
    """Why `interface` is not a usable tool interface (empty when it is): schema errors first
    (path: message), then the names: a Python function name and argument names that are
    identifiers and not keywords, `required` naming declared arguments only."""
    errors = [f"{'/'.join(map(str, e.absolute_path)) or 'interface'}: {e.message}"
              for e in sorted(_VALIDATOR.iter_errors(interface), key=lambda e: list(map(str, e.absolute_path)))]
    if errors:
        return errors
    if keyword.iskeyword(interface["function_name"]):
        errors.append(f"function_name: {interface['function_name']!r} is a Python keyword")
    for arg in interface["input_args"]:
        if not arg.isidentifier() or keyword.iskeyword(arg):  # Python's rule: "año" is a name, "from" is not
            errors.append(f"input_args: {arg!r} is not a Python argument name")
    unknown = sorted(set(interface.get("required", [])) - set(interface["input_args"]))
    if unknown:
        errors.append(f"required: {', '.join(unknown)} not among input_args")
    problem = schema_error(to_openai_tool(interface)["function"]["parameters"])
    if problem is not None:
        errors.append(f"input_args: not a JSON schema ({problem})")
    return errors


def to_openai_tool(interface: Mapping[str, Any]) -> dict[str, Any]:
    """The interface in OpenAI's function-calling format (`tools=[...]` of a chat request). Every
    argument is required unless the interface lists `required`."""
    args = dict(interface["input_args"])
    return {
        "type": "function",
        "function": {
            "name": interface["function_name"],
            "description": interface["description"],
            "parameters": {"type": "object", "properties": args,
                           "required": list(interface.get("required", list(args)))},
        },
    }


def from_openai_tool(tool: Mapping[str, Any], dependencies: list[str] | None = None) -> dict[str, Any]:
    """An interface from an OpenAI tool (or its bare "function" part). The return value is not part
    of that format: it is declared as an object the caller must describe."""
    function = tool.get("function", tool)
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    return {
        "name": function["name"],
        "description": function.get("description", ""),
        "function_name": function["name"],
        "input_args": dict(parameters.get("properties") or {}),
        "required": list(parameters.get("required") or []),
        "return": {"type": "object", "description": "not declared in the OpenAI format"},
        "dependencies": list(dependencies or []),
    }


# BFCL's type names (Python-ish, Java, JavaScript) → JSON schema types, as its own harness maps them.
_BFCL_TYPES = {
    "dict": "object", "float": "number", "tuple": "array", "double": "number", "long": "integer", "int": "integer",
    "integer": "integer", "short": "integer", "byte": "integer", "char": "string", "str": "string", "bool": "boolean",
    "list": "array", "arraylist": "array", "hashmap": "object", "map": "object", "set": "array", "bigint": "integer",
}


def _bfcl_schema(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_bfcl_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            if value == "any":
                continue  # JSON schema says "any type" by leaving the keyword out
            lowered = value.lower()
            out[key] = lowered if lowered in JSON_TYPES else _BFCL_TYPES.get(lowered, "string")
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: _bfcl_schema(prop) for name, prop in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf"):
            out[key] = _bfcl_schema(value)
        else:
            out[key] = value
    return out


def bfcl_to_openai(function: Mapping[str, Any]) -> dict[str, Any]:
    """A BFCL function definition as an OpenAI tool."""
    return {"type": "function", "function": {"name": function["name"], "description": function.get("description", ""),
                                             "parameters": _bfcl_schema(function.get("parameters") or {})}}
