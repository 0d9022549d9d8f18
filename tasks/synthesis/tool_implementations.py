"""Implementations of synthesized tool interfaces (METHOD.md, "tools"): one request per interface
for its Python code, then checks that never run the code outside the sandbox.

In order: the answer holds a program (no_code); it parses (syntax_error); it defines the
interface's function_name at module level (missing_function) with the declared input arguments as
its parameters (argument_mismatch); then, in the sandbox, the module imports and the function is
there (import_error, timeout, undeclared_import: it imports a module that is neither installed nor
declared). Each of those quarantines the tool with its reason. A tool whose code is sound but one
of whose declared packages is not installed here is reported, never installed: it goes to the
`unverified` table, counted as filtered (missing_dependency), with the names in `checks`.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from typing import Any

from personahub.tasks.llm.requests import ChatRequest, ChatResult
from personahub.tasks.llm.stage import LLMStage, Outcome
from personahub.tasks.synthesis.code_blocks import python_code
from personahub.tasks.synthesis.sandbox import SandboxLimits, run_python
from personahub.tasks.synthesis.stage import ITEM_SCHEMA, REJECT_SCHEMA, UNVERIFIED, reject

_PACKAGE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")  # "requests", "scikit-learn"; not "Google Maps API"

# Runs in the sandbox: import the module (execute its top level), look the function up, and report
# as one JSON line. The source and names arrive as literals; nothing here calls the function.
_HARNESS = '''
import importlib.util, inspect, json
SOURCE = {source!r}
FUNCTION = {function!r}
PACKAGES = {packages!r}
def find(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
report = {{"missing": [p for p in PACKAGES if not find(p)]}}
namespace = {{"__name__": "tool"}}
try:
    exec(compile(SOURCE, "tool.py", "exec"), namespace)
except ModuleNotFoundError as exc:
    report.update(status="module_not_found", module=(exc.name or "").split(".")[0])
except BaseException as exc:
    report.update(status="import_error", error=(type(exc).__name__ + ": " + str(exc))[:300])
else:
    function = namespace.get(FUNCTION)
    if callable(function):
        report.update(status="ok", parameters=list(inspect.signature(function).parameters))
    else:
        report.update(status="missing_function")
print(json.dumps(report))
'''


def module_name(dependency: str) -> str | None:
    """The importable name a declared dependency stands for ("scikit-learn" → "scikit_learn"), or
    None when it names a service rather than a package."""
    dependency = dependency.strip()
    if not _PACKAGE.match(dependency):
        return None
    return dependency.split(".")[0].replace("-", "_").lower()


def static_reason(code: str, function: str, arguments: list[str]) -> str | None:
    """Why the code cannot be the interface's implementation, judged from its syntax tree alone."""
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return f"syntax_error: line {exc.lineno}: {exc.msg}"
    defined = [node for node in tree.body
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == function]
    if not defined:
        return f"missing_function: no module-level def {function}"
    args = defined[-1].args
    names = [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]
    if set(names) != set(arguments):
        return f"argument_mismatch: def {function}({', '.join(names)}) for declared ({', '.join(arguments)})"
    return None


def check_in_sandbox(code: str, function: str, packages: list[str], limits: SandboxLimits) -> dict[str, Any]:
    """Import the module in the sandbox; its report ({status, parameters | module | error, missing})."""
    result = run_python(_HARNESS.format(source=code, function=function, packages=packages), limits)
    if result.timed_out:
        return {"status": "timeout", "missing": []}
    lines = result.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        last = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        return {"status": "import_error", "error": last[:300], "missing": []}


class ImplementTools(LLMStage):
    """Parameters (hashed into the checkpoint): mode, template_ref, sampling, model, sandbox
    ({timeout_s, memory_mb}), and the input's digest."""

    name = "implement-tools"
    template_task = "tool_implementation"
    default_mode = "zero-shot"
    columns = ITEM_SCHEMA.names
    outputs = {"data": ITEM_SCHEMA, UNVERIFIED: ITEM_SCHEMA}
    quarantine = REJECT_SCHEMA

    def __init__(self, params: Mapping[str, Any]):
        super().__init__(params)
        self.limits = SandboxLimits(**(self.params.get("sandbox") or {}))

    def requests(self, row: dict[str, Any]) -> list[ChatRequest]:
        interface = json.dumps(json.loads(row["output"]), indent=2, ensure_ascii=False)
        return [ChatRequest(messages=self.template.render(interface=interface), template=self.template.ref,
                            params=self.sampling)]

    def verdict(self, row: dict[str, Any], text: str) -> tuple[str | None, str | None, dict[str, Any]]:
        """(code, reason to quarantine or None, the sandbox's report)."""
        code = python_code(text)
        if code is None:
            return None, "no_code", {}
        interface = json.loads(row["output"])
        function = interface["function_name"]
        reason = static_reason(code, function, list(interface.get("input_args") or {}))
        if reason is not None:
            return code, reason, {}
        declared = [m for m in map(module_name, interface.get("dependencies") or []) if m]
        report = check_in_sandbox(code, function, declared, self.limits)
        status = report["status"]
        if status == "module_not_found" and report["module"] not in declared:
            return code, f"undeclared_import: {report['module']}", report
        if status == "module_not_found":
            report["missing"] = sorted({*report["missing"], report["module"]})
        elif status != "ok":
            return code, status + (f": {report['error']}" if report.get("error") else ""), report
        return code, None, report

    def parse(self, row: dict[str, Any], results: list[ChatResult]) -> Outcome:
        outcome = Outcome(rows_in=1)
        result = results[0]
        if result.error is not None:
            code, reason, report = None, self.llm_error(result), {}
        else:
            code, reason, report = self.verdict(row, result.text or "")
        if reason is not None:
            outcome.rejects.append(reject(row, row["use_case"], "implement", reason, result.text, result.model,
                                          self.template.ref))
            return outcome
        implemented = {**row, "implementation": code, "checks": json.dumps(report, sort_keys=True)}
        if report["missing"]:
            outcome.keep(UNVERIFIED, implemented)
            outcome.filter("missing_dependency")
        else:
            outcome.keep("data", implemented)
        return outcome
