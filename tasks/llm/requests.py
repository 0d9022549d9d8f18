"""What goes into the LLM gateway and what comes out: chat requests and results, embedding results,
token usage, and the gateway's own error."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np


def _normalise_messages(messages: Any) -> tuple[tuple[str, str], ...]:
    out = []
    for message in messages:
        if isinstance(message, Mapping):
            role, content = message["role"], message["content"]
        else:
            role, content = message
        if not isinstance(role, str) or not isinstance(content, str):
            raise TypeError("each message needs a str role and a str content")
        out.append((role, content))
    if not out:
        raise ValueError("a chat request needs at least one message")
    return tuple(out)


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion. `messages` may be given as [{"role", "content"}, ...] (what
    PromptTemplate.render returns) or as (role, content) pairs; it is stored as a tuple of pairs."""

    messages: tuple[tuple[str, str], ...]
    template: str  # "<template name>@<template version>": part of the cache key
    params: Mapping[str, Any] = field(default_factory=dict)  # temperature, max_tokens, top_p, seed, ...
    json_schema: Mapping[str, Any] | None = None  # desired output shape; None = free text
    schema_name: str = "output"

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", _normalise_messages(self.messages))
        object.__setattr__(self, "params", dict(self.params or {}))

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]


@dataclass
class ChatResult:
    key: str  # cache key (sha256 hex)
    text: str | None  # raw completion text; None when the call failed
    data: Any | None  # parsed JSON when json_schema was given and parsing succeeded
    parse_error: str | None  # why lenient parsing failed (text is kept)
    error: str | None  # final failure after retries, e.g. "HTTP 400 from http://host/v1: ..."
    model: str
    finish_reason: str | None
    prompt_tokens: int  # for a cache hit: what the original call cost
    completion_tokens: int
    cached: bool

    @property
    def ok(self) -> bool:
        """The call produced text (and, when a schema was asked for, that text parsed)."""
        return self.error is None and self.text is not None and self.parse_error is None


@dataclass
class Usage:
    """What a gateway (or a stage) spent. `calls`: requests sent to the endpoint (a request's
    retries count once here, and each in `retries`); `cache_hits`: requests answered without a
    call (from the cache, or by an identical request in flight at the same time); `failures`:
    results that carry an error. Tokens are those of new calls only: what this run paid for."""

    calls: int = 0
    cache_hits: int = 0
    failures: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: "Usage") -> "Usage":
        """Add `other` into self (in place) and return self."""
        for name in _USAGE_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def __add__(self, other: "Usage") -> "Usage":
        return self.copy().add(other)

    def __sub__(self, other: "Usage") -> "Usage":
        """What was spent since `other` (a copy taken earlier): a stage's share of a shared gateway."""
        return Usage(**{name: getattr(self, name) - getattr(other, name) for name in _USAGE_FIELDS})

    def copy(self) -> "Usage":
        return Usage(**asdict(self))

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total_tokens": self.total_tokens}

    @classmethod
    def from_dict(cls, values: Mapping[str, int]) -> "Usage":
        """A Usage from its as_dict() form (derived keys such as total_tokens are left out)."""
        return cls(**{name: int(values.get(name, 0)) for name in _USAGE_FIELDS})

    @classmethod
    def merge(cls, usages: Sequence["Usage"]) -> "Usage":
        total = cls()
        for usage in usages:
            total.add(usage)
        return total


_USAGE_FIELDS = ("calls", "cache_hits", "failures", "retries", "prompt_tokens", "completion_tokens")


class LLMError(RuntimeError):
    """A failure the gateway could not turn into a result (e.g. no model name); secret-free."""


@dataclass
class EmbeddingResult:
    """Vectors of `embed_many`'s texts, in their order: float32 (n, dim), each row of unit length
    (a zero vector stays zero); (0, 0) for no texts. `usage`: what this one call spent."""

    vectors: np.ndarray
    model: str
    usage: Usage

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])
