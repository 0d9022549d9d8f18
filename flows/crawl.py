"""crawl: sources → document shards (a large file alone, small files grouped) → exact dedup across
the crawl (+ optional sample).

Runs alone (`personahub crawl`) and as the first stage of build-hub. Sources are not part of the
run id: rerunning with one new file reuses every finished shard and crawls only the new file's
group (about shard_bytes of input), which is the incremental path of the nightly refresh.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from personahub.flows.stage_runner import task_runner, run, run_exact_dedup
from personahub.tasks.core.report import stages_markdown
from personahub.tasks import crawl as crawl_stage
from personahub.tasks.core.checkpoint import Manifest, params_hash
from personahub.tasks.core.stage import Stage, StageReport
from personahub.tasks.core.run_context import RunContext
from personahub.tasks.core.settings import load_settings


class CrawlFlowParams(BaseModel):
    """Parameters of a crawl run; the Prefect UI renders them as a form."""

    sources: list[str] = Field(..., description="Files, directories, globs (any fsspec URL), .urls lists")
    crawl: crawl_stage.CrawlParams = Field(default_factory=crawl_stage.CrawlParams)
    max_docs: int | None = Field(None, ge=1, description="Keep a seeded sample of at most this many documents")
    seed: int = Field(0, description="Seed of the max_docs sample")
    shard_bytes: int = Field(32_000_000, ge=1, description="Input bytes per crawl shard, about: small files are "
                             "grouped, a larger file is a shard of its own (not in the run id: the documents are the same)")
    rows_per_bucket: int = Field(500_000, ge=1, description="Documents per dedup bucket at most")
    bytes_per_bucket: int = Field(128_000_000, ge=1_000_000, description="Text bytes per dedup bucket at most (bounds its memory)")
    run_id: str | None = Field(None, description="Checkpoint folder; unset = derived from the parameters (not the sources)")
    store: str | None = Field(None, description="Override the store URL (settings.store)")


def crawl_run_id(params: CrawlFlowParams) -> str:
    keys = params.model_dump(include={"crawl", "max_docs", "seed"})  # not shard_bytes: same documents
    return f"crawl-{params_hash(keys)[:10]}"


def crawl_stages(
    run_ctx: RunContext, sources: list[str], params: crawl_stage.CrawlParams, max_docs: int | None, seed: int,
    rows_per_bucket: int, bytes_per_bucket: int = 128_000_000, shard_bytes: int = 32_000_000,
) -> tuple[Manifest, list[StageReport]]:
    """Run both crawl passes; returns (the documents' manifest, the stage reports)."""
    files = crawl_stage.plan_crawl_task(sources, shard_bytes)
    read = run(run_ctx, Stage("crawl", params.model_dump(mode="json"), files, crawl_stage.crawl_task))
    threshold = None
    if max_docs is not None:
        threshold = crawl_stage.sample_threshold_task(run_ctx, read.manifest.files(), seed, max_docs)
    text_bytes = sum(s.extra.get("text_bytes", 0) for s in read.manifest.shards)
    docs = run_exact_dedup(
        run_ctx, "crawl_dedup", read.manifest, "documents", rows_per_bucket,
        min_buckets=max(1, -(-text_bytes // bytes_per_bucket)),
        prefilter=crawl_stage.sample_filter(seed, threshold),
        extra_params={"max_docs": max_docs, "seed": seed, "threshold": threshold})
    return docs.manifest, [read.report(), docs.report()]


@flow(name="crawl", log_prints=True, task_runner=task_runner())
def crawl(params: CrawlFlowParams) -> dict[str, Any]:
    """Crawl the sources into deduplicated document shards under runs/<run_id>/crawl_dedup/."""
    settings = load_settings(store=params.store)
    run_id = params.run_id or crawl_run_id(params)
    ctx = RunContext(settings.store, settings.resolved_s3_endpoint(), run_id)
    get_run_logger().info("crawl run %s in %s", run_id, ctx.store.uri(f"runs/{run_id}"))
    manifest, reports = crawl_stages(ctx, params.sources, params.crawl, params.max_docs, params.seed,
                                     params.rows_per_bucket, params.bytes_per_bucket, params.shard_bytes)
    summary = {
        "run_id": run_id,
        "run": ctx.store.uri(f"runs/{run_id}"),
        "documents": manifest.totals.rows_out,
        "documents_path": ctx.store.uri(f"runs/{run_id}/crawl_dedup/data"),
        "stages": [r.as_dict() for r in reports],
    }
    markdown = "\n".join([f"# Crawl `{run_id}`: {summary['documents']} documents", "",
                          f"Documents at `{summary['documents_path']}`.", "", *stages_markdown(summary["stages"])])
    create_markdown_artifact(key="crawl-summary", markdown=markdown, description="crawl counts by stage and reason")
    return summary
