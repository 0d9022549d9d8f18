"""Prompt templates are data: one YAML file per task and mode under prompts/.

A template's version is the hash of its file's bytes, so any edit changes the LLM cache key of
every call made with it, and old responses are never reused for a new prompt.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
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
        version=hashlib.sha256(raw).hexdigest()[:12],
        mode=data.get("mode", "zero-shot"),
        system=data.get("system", "") or "",
        user=data["user"],
        params=dict(data.get("params") or {}),
        output_schema=data.get("output_schema"),
        examples=tuple(examples),
        extra={k: v for k, v in data.items() if k not in known},
    )


@lru_cache(maxsize=64)
def load_template(name: str) -> PromptTemplate:
    """The template prompts/<name>.yaml shipped with the package."""
    path = resources.files("personahub.prompts").joinpath(f"{name}.yaml")
    if not path.is_file():
        raise FileNotFoundError(f"no prompt template named {name!r} (looked for {path})")
    return parse_template(path.read_bytes(), str(path))
