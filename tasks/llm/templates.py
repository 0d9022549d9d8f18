"""Prompt templates are data: one YAML file per task and mode, prompts/<task>/<mode>.yaml.

A template's version is the hash of what the file says (its YAML data, canonical JSON: comments and
layout do not count), so an edit to a prompt, an example or a parameter changes the LLM cache key
of every call made with it, and old responses are never reused for a new prompt.

Modes (METHOD.md): zero-shot, few-shot, persona-enhanced few-shot. A new use case or mode is a new
file; `load_template(task, mode)` finds it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
import os
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

import jinja2
import yaml

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: str
    mode: str
    system: str
    user: str
    params: dict[str, Any] = field(default_factory=dict)
    output_schema: dict[str, Any] | None = None
    # Few-shot demonstrations: each renders the user template with its own variables, followed by
    # its answer as an assistant turn.
    examples: tuple[dict[str, Any], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        """`name@version`, the template's part of the LLM cache key and of every row's provenance."""
        return f"{self.name}@{self.version}"

    def render(self, **variables: Any) -> list[dict[str, str]]:
        """Chat messages for one call; a missing variable raises instead of rendering blank."""
        messages = []
        if self.system.strip():
            messages.append({"role": "system", "content": _ENV.from_string(self.system).render(**variables).strip()})
        user = _ENV.from_string(self.user)
        for example in self.examples:
            messages.append({"role": "user", "content": user.render(**{**variables, **example["vars"]}).strip()})
            messages.append({"role": "assistant", "content": example["answer"].strip()})
        messages.append({"role": "user", "content": user.render(**variables).strip()})
        return messages


def parse_template(raw: bytes, source: str) -> PromptTemplate:
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ValueError(f"prompt template {source} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"prompt template {source} is not a YAML mapping")
    missing = [key for key in ("name", "user") if not data.get(key)]
    if missing:
        raise ValueError(f"prompt template {source} lacks {', '.join(missing)}")
    known = {"name", "mode", "system", "user", "params", "output_schema", "description", "examples"}
    examples = data.get("examples") or []
    if not isinstance(examples, list) or not all(
        isinstance(e, dict) and isinstance(e.get("vars"), dict) and isinstance(e.get("answer"), str) for e in examples
    ):
        raise ValueError(f"prompt template {source}: examples must be a list of {{vars: mapping, answer: text}}")
    return PromptTemplate(
        name=data["name"],
        version=hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()[:12],
        mode=data.get("mode", "zero-shot"),
        system=data.get("system", "") or "",
        user=data["user"],
        params=dict(data.get("params") or {}),
        output_schema=data.get("output_schema"),
        examples=tuple(examples),
        extra={k: v for k, v in data.items() if k not in known},
    )


# A folder laid out like prompts/ whose files take precedence over the shipped ones (a user's own
# prompts, a new mode), read by every process that loads templates, workers included.
PROMPTS_DIR_ENV = "PERSONAHUB_PROMPTS_DIR"


def template_file(task: str, mode: str) -> Traversable:
    """Where prompts/<task>/<mode>.yaml is read from: $PERSONAHUB_PROMPTS_DIR when it has the file,
    else the package."""
    override = os.environ.get(PROMPTS_DIR_ENV)
    if override and (Path(override) / task / f"{mode}.yaml").is_file():
        return Path(override) / task / f"{mode}.yaml"
    return resources.files("personahub.prompts").joinpath(task, f"{mode}.yaml")


def load_template(task: str, mode: str = "few-shot") -> PromptTemplate:
    """The template for (task, mode); it must declare that mode. The file is read on every call
    (a few KB) and parsed once per content, so an edited file takes effect at once."""
    path = template_file(task, mode)
    if not path.is_file():
        shipped = resources.files("personahub.prompts").joinpath(task)
        modes = sorted(p.name.removesuffix(".yaml") for p in shipped.iterdir() if p.name.endswith(".yaml")) \
            if shipped.is_dir() else []
        raise FileNotFoundError(f"no prompt template for task {task!r} in mode {mode!r} (looked for {path}; "
                                f"modes there: {', '.join(modes) or 'none'})")
    template = _parse_cached(path.read_bytes(), str(path))
    if template.mode != mode:
        raise ValueError(f"{path} says mode {template.mode!r}, but its file name says {mode!r}")
    return template


@lru_cache(maxsize=64)
def _parse_cached(raw: bytes, source: str) -> PromptTemplate:
    return parse_template(raw, source)
