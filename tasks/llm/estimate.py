"""What a run would cost before it runs (--dry-run): calls and tokens per LLM stage.

A stage whose requests are known (they depend on the inputs alone) is estimated exactly: its
requests are built as the stage would build them and looked up in the response cache, so only
the calls not answered before count. Prompt tokens are the new requests' characters / 4 (English
under BPE tokenizers, an estimate); completion tokens are at most max_tokens a call. A stage whose
requests depend on earlier answers (solvers of problems not written yet) is an upper bound: every
item valid, every call new, prompt tokens unknown.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any, Iterable

from personahub.tasks.core.store import Store
from personahub.tasks.llm.cache import ResponseCache, cache_key
from personahub.tasks.llm.requests import ChatRequest

CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class StageEstimate:
    stage: str
    calls: int  # new calls (at most, when not exact)
    cached: int  # calls the cache already answers
    prompt_tokens: int | None  # of the new calls; None when the prompts are not known yet
    completion_tokens_max: int
    exact: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_requests(stage: str, store: Store, model: str, requests: Iterable[ChatRequest],
                      exact: bool = True) -> StageEstimate:
    """The calls `requests` would make: identical requests are one call, cached ones none."""
    unique: dict[str, ChatRequest] = {}
    for request in requests:
        unique.setdefault(cache_key(model, request), request)
    cache = ResponseCache(store, "cache/llm")

    async def answered() -> set[str]:
        await cache.prefetch(unique)
        return {key for key in unique if await cache.read(key) is not None}

    cached = asyncio.run(answered()) if unique else set()
    new = [request for key, request in unique.items() if key not in cached]
    return StageEstimate(
        stage, len(new), len(cached),
        sum(len(content) for request in new for _role, content in request.messages) // CHARS_PER_TOKEN,
        sum(int(request.params.get("max_tokens") or 0) for request in new), exact)


def bound(stage: str, calls: int, max_tokens: int) -> StageEstimate:
    """An upper bound for a stage whose prompts depend on answers not written yet."""
    return StageEstimate(stage, calls, 0, None, calls * max_tokens, False)


def totals(estimates: list[StageEstimate]) -> dict[str, Any]:
    return {"calls_at_most": sum(e.calls for e in estimates), "cached": sum(e.cached for e in estimates),
            "prompt_tokens_known": sum(e.prompt_tokens or 0 for e in estimates),
            "completion_tokens_max": sum(e.completion_tokens_max for e in estimates),
            "exact": all(e.exact for e in estimates)}
