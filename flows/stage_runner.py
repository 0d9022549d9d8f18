"""How a flow runs one checkpointed stage, shared by every flow.

A stage is a set of shard tasks plus a StageCheckpoint: finished stages are skipped, finished shards
are not rerun, and each stage reports its counts (in = out + filtered + quarantined), the reasons
rows were filtered or quarantined, and what it spent on the LLM.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import get_run_logger

from personahub.tasks.dedup import exact as dedup_exact
from personahub.tasks.core.checkpoint import StageCheckpoint, params_hash
from personahub.tasks.core.run_context import RunContext

# Tasks in flight per flow process. Shard tasks are CPU-bound on this project's reference machine (2
# cores); more threads add memory (one batch each), not speed: 4 → 2 cut the crawl's peak RSS from
# 1.25 GB to 0.87 GB on 2 GB of JSONL at the same MB/s (BENCHMARKS.md). Past one machine, Dask sets it.
TASK_WORKERS = 2


def manifest_digest(manifest: dict[str, Any]) -> str:
    """A downstream stage depends on exactly which upstream shards and rows it read."""
    return params_hash({"shards": [[s["id"], s["files"], s["rows"]] for s in manifest["shards"]]})


def run_stage(
    name: str,
    checkpoint: StageCheckpoint,
    shards: dict[str, tuple[Any, ...]],
    submit: Callable[[str, tuple[Any, ...]], Any],
    batch: int,
) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
    """Run the shards a checkpoint lacks, `batch` at a time, then finalize it.

    A stage is skipped only when its manifest matches its parameters and lists exactly these
    shards: a new input file adds a shard, which runs while the others stay done.
    Returns (manifest, results of the shards run now, skipped).
    """
    logger = get_run_logger()
    manifest = checkpoint.manifest() if checkpoint.is_complete() else None
    if manifest is not None and {s["id"] for s in manifest["shards"]} == set(shards):
        logger.info("%s: complete, skipped (%s)", name, checkpoint.store.uri(checkpoint.prefix))
        return manifest, [], True
    done = checkpoint.done_shards()
    todo = [sid for sid in shards if sid not in done]
    logger.info("%s: %d shards, %d already done, %d to run", name, len(shards), len(shards) - len(todo), len(todo))
    results: list[dict[str, Any]] = []
    for start in range(0, len(todo), batch):
        futures = [submit(sid, shards[sid]) for sid in todo[start : start + batch]]
        results.extend(f.result() for f in futures)
    return checkpoint.finalize(expected_shards=shards.keys()), results, False


def run_exact_dedup(
    ctx: RunContext,
    stage: str,
    upstream: dict[str, Any],
    spec: str,
    rows_per_bucket: int,
    prefilter: dedup_exact.BucketFilter | None = None,
    extra_params: dict[str, Any] | None = None,
    min_buckets: int = 1,
) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
    """Exact dedup of an upstream stage's data in two passes (partition by key, then per bucket).

    A bucket is read whole in pass 2, so its size bounds memory: at most rows_per_bucket rows, and
    at least min_buckets buckets (callers that know their bytes ask for more).
    """
    inputs = {s["id"]: (s["files"]["data"],) for s in upstream["shards"] if s["rows"].get("data", 0) > 0}
    total = sum(s["rows"].get("data", 0) for s in upstream["shards"])
    n_buckets = max(min_buckets, dedup_exact.bucket_count(total, rows_per_bucket))
    part_params = {"spec": spec, "n_buckets": n_buckets, "input": manifest_digest(upstream)}
    part_stage = f"{stage}_partition"
    parts, _, _ = run_stage(
        part_stage, ctx.checkpoint(part_stage, part_params), inputs,
        lambda sid, a: dedup_exact.partition_task.submit(ctx, part_stage, part_params, sid, *a), batch=8)
    buckets = {b: (fs,) for b, fs in dedup_exact.files_by_bucket(parts).items()}
    params = {"spec": spec, "input": manifest_digest(parts), **(extra_params or {})}
    return run_stage(
        stage, ctx.checkpoint(stage, params), buckets,
        lambda sid, a: dedup_exact.dedup_bucket_task.submit(ctx, stage, params, sid, *a, prefilter), batch=8)


def stage_report(stage: str, manifest: dict[str, Any], ran: list[dict[str, Any]], skipped: bool) -> dict[str, Any]:
    """Counts, reasons and LLM usage of a stage, summed over its shards whichever run made them."""
    totals = manifest["totals"]
    reasons: dict[str, int] = {}
    usage: dict[str, int] = {}
    for shard in manifest["shards"]:
        extra = shard.get("extra") or {}
        for reason, n in extra.get("reasons", {}).items():
            reasons[reason] = reasons.get(reason, 0) + n
        for key, n in extra.get("usage", {}).items():
            usage[key] = usage.get(key, 0) + n
    return {
        "stage": stage,
        "skipped": skipped,
        "shards": totals["shards"],
        "shards_run": len(ran),
        "counts": {k: totals[k] for k in ("rows_in", "rows_out", "filtered", "quarantined")},
        "reasons": dict(sorted(reasons.items())),
        "usage": usage,
        "_ran": ran,
    }


def stages_markdown(stages: list[dict[str, Any]]) -> list[str]:
    """The per-stage table shared by the flows' artifacts."""
    lines = [
        "| stage | shards (run now) | in | out | filtered | quarantined | reasons | LLM calls | tokens |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in stages:
        c = s["counts"]
        reasons = ", ".join(f"{k}: {v}" for k, v in s["reasons"].items()) or "-"
        run_now = "skipped" if s["skipped"] else s["shards_run"]
        u = s["usage"]
        calls, tokens = (u.get("calls", 0), u.get("total_tokens", 0)) if u else ("-", "-")
        lines.append(f"| {s['stage']} | {s['shards']} ({run_now}) | {c['rows_in']} | {c['rows_out']} | {c['filtered']} "
                     f"| {c['quarantined']} | {reasons} | {calls} | {tokens} |")
    return lines
