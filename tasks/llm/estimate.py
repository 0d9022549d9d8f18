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

from personahub.tasks.core.checkpoint import Manifest
from personahub.tasks.core.run_context import RunContext
from personahub.tasks.core.stage import RowRange, Stage
from personahub.tasks.core.store import Store
from personahub.tasks.llm.budget import Price
from personahub.tasks.llm.cache import ResponseCache, cache_key
from personahub.tasks.llm.requests import ChatRequest
from personahub.tasks.llm.stage import LLMStage

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
    new, cached, chars, completion = _lookup(store, model, requests)
    return StageEstimate(stage, new, cached, chars // CHARS_PER_TOKEN, completion, exact)


def _lookup(store: Store, model: str, requests: Iterable[ChatRequest]) -> tuple[int, int, int, int]:
    """(new calls, cached calls, the new calls' prompt characters, their max_tokens summed)."""
    unique: dict[str, ChatRequest] = {}
    for request in requests:
        unique.setdefault(cache_key(model, request), request)
    cache = ResponseCache(store, "cache/llm")

    async def answered() -> set[str]:
        await cache.prefetch(unique)
        return {key for key in unique if await cache.read(key) is not None}

    cached = asyncio.run(answered()) if unique else set()
    new = [request for key, request in unique.items() if key not in cached]
    return (len(new), len(cached), sum(len(content) for request in new for _role, content in request.messages),
            sum(int(request.params.get("max_tokens") or 0) for request in new))


def finished(run_ctx: RunContext, stage: Stage[Any]) -> Manifest | None:
    """The stage's manifest when the runner would skip it (same parameters, same shards), else None."""
    manifest = stage.ref(run_ctx).checkpoint.complete_manifest()
    return manifest if manifest is not None and {s.id for s in manifest.shards} == set(stage.inputs) else None


def estimate_llm_stage(run_ctx: RunContext, stage: Stage[RowRange], kind: type[LLMStage], model: str) -> StageEstimate:
    """An LLM stage as the runner would run it: nothing for a finished stage or shard; the other
    shards' requests built from their rows and looked up in the cache, one shard at a time (memory
    is one shard's, as in the run)."""
    if finished(run_ctx, stage) is not None:
        return StageEstimate(stage.name, 0, 0, 0, 0, True)
    done = stage.ref(run_ctx).checkpoint.done_shards()
    llm = kind(stage.params)
    new = cached = chars = completion = 0
    for shard_id, source in stage.inputs.items():
        if shard_id in done:
            continue
        rows = run_ctx.store.read_parquet_rows(source.file, source.start, source.stop, columns=kind.columns).to_pylist()
        n, c, ch, co = _lookup(run_ctx.store, model, (r for row in rows for r in llm.requests(row)))
        new, cached, chars, completion = new + n, cached + c, chars + ch, completion + co
    return StageEstimate(stage.name, new, cached, chars // CHARS_PER_TOKEN, completion, True)


def bound(stage: str, calls: int, max_tokens: int) -> StageEstimate:
    """An upper bound for a stage whose prompts depend on answers not written yet."""
    return StageEstimate(stage, calls, 0, None, calls * max_tokens, False)


def totals(estimates: list[StageEstimate]) -> dict[str, Any]:
    return {"calls_at_most": sum(e.calls for e in estimates), "cached": sum(e.cached for e in estimates),
            "prompt_tokens_known": sum(e.prompt_tokens or 0 for e in estimates),
            "completion_tokens_max": sum(e.completion_tokens_max for e in estimates),
            "exact": all(e.exact for e in estimates)}


def dry_run_summary(run_id: str, model: str, what: str, estimates: list[StageEstimate],
                    price: Price | None) -> dict[str, Any]:
    """A dry run's result, as flows return it and the CLI prints it (`what`: the run in a few words)."""
    total = totals(estimates)
    return {"dry_run": True, "run_id": run_id, "model": model, "what": what,
            "estimates": [e.as_dict() for e in estimates], "total": total,
            # known prompt tokens + every completion at max_tokens (unknown prompts are not priced)
            "cost_usd_max": None if price is None else
            round(price.cost(total["prompt_tokens_known"], total["completion_tokens_max"]), 6)}
