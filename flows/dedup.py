"""The `dedup` flow: both dedup stages on persona sets users already have (JSONL, JSON, Parquet).

persona_input (one shard per file) → MinHash stage → embedding stage, each checkpointed like every
other stage, under runs/<run_id>/. With `hub`, the personas are deduplicated against that
hub's latest version (its stored sketches and vectors), as a nightly refresh does.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from personahub.flows.dedup_stages import EmbeddingParams, HubBase, MinHashParams, dedup_stages, publish_deduplicated
from personahub.flows.stage_runner import task_runner, run
from personahub.tasks.core.report import stages_markdown
from personahub.tasks.personas import input_files as persona_input
from personahub.tasks.crawl import plan_sources_task
from personahub.tasks.hub import publish
from personahub.tasks.core.checkpoint import params_hash
from personahub.tasks.core.stage import Stage
from personahub.tasks.core.run_context import RunContext
from personahub.tasks.core.settings import load_settings


class DedupFlowParams(BaseModel):
    paths: list[str] = Field(description="Persona files, directories or globs (.jsonl[.gz], .json, .parquet; any fsspec URL)")
    text_column: str | None = Field(None, description="Column with the persona text (default: persona, else text)")
    minhash: MinHashParams = MinHashParams()
    embedding: EmbeddingParams = EmbeddingParams()
    hub: str | None = Field(None, description="Dedup against this hub's latest version (if it has one): its personas "
                            "are kept and new duplicates of them dropped")
    publish: bool = Field(False, description="Publish the kept personas as the hub's next version (with its dedup index)")
    reuse_hub_index: bool = Field(True, description="Use the hub's stored sketches and vectors (False: recompute them)")
    run_id: str | None = None
    store: str | None = Field(None, description="Store URL (default: settings)")
    embedding_base_url: str | None = Field(None, description="OpenAI-compatible /v1 for embeddings (default: embedded model)")
    embedding_model: str | None = None


def dedup_run_id(params: DedupFlowParams, shard_ids: list[str]) -> str:
    return "dedup-" + params_hash({"shards": sorted(shard_ids), "text_column": params.text_column,
                                   "minhash": params.minhash, "embedding": params.embedding,
                                   "hub": params.hub, "reuse_hub_index": params.reuse_hub_index})[:12]


@flow(name="dedup", log_prints=True, task_runner=task_runner())
def dedup(params: DedupFlowParams) -> dict[str, Any]:
    """Deduplicate persona files: MinHash (Jaccard), then embeddings (cosine); counts per stage."""
    settings = load_settings(store=params.store, embedding_base_url=params.embedding_base_url,
                             embedding_model=params.embedding_model)
    shards = plan_sources_task(params.paths, persona_input.FORMATS)
    run_id = params.run_id or dedup_run_id(params, list(shards))
    ctx = RunContext(settings.store, settings.resolved_s3_endpoint(), run_id)
    logger = get_run_logger()
    logger.info("run %s in %s", run_id, ctx.store.uri(f"runs/{run_id}"))

    personas = run(ctx, Stage("persona_input", {"text_column": params.text_column}, shards, persona_input.read_task))
    reports = [personas.report()]

    if params.publish and not params.hub:
        raise ValueError("publish needs a hub name")
    base = HubBase.of(publish.base_version_task(ctx, params.hub), reuse=params.reuse_hub_index)
    final, dedup_reports, index_parts = dedup_stages(ctx, settings, personas.manifest, params.minhash, params.embedding, base)
    reports.extend(dedup_reports)
    version = None
    if params.publish:
        lineage = {"run_id": run_id, "stages": {r.stage: asdict(r.counts) for r in reports}}
        version = publish_deduplicated(ctx, params.hub, final, base, index_parts, lineage)["version"]
    summary = {
        "run_id": run_id,
        "run": ctx.store.uri(f"runs/{run_id}"),
        "input": reports[0].counts.rows_in,
        "kept": final.totals.rows_out,
        "kept_files": [ctx.store.uri(f) for f in final.files()],
        "hub": params.hub,
        "base_version": base.version if base else None,
        "version": version,
        "stages": [r.as_dict() for r in reports],
    }
    create_markdown_artifact(key="dedup-summary", markdown="\n".join(
        [f"# Dedup `{run_id}`: {summary['input']} personas in, {summary['kept']} kept", ""] + stages_markdown(summary["stages"])),
        description="dedup counts")
    return summary
