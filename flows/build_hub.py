"""build-hub: documents → Text-to-Persona → dedup → a versioned hub of personas.

Each stage is a set of Prefect tasks over shards with a checkpoint under runs/<run_id>/<stage>/; a
stage whose manifest matches its parameters is skipped, and inside a stage only the shards without
a done entry run. LLM responses are cached by content, so even a redone shard pays for nothing twice.
Later issues replace a stage's body (full crawler, Persona-to-Persona, MinHash/embedding dedup,
quality filters), not this shape.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.asyncutils import run_coro_as_sync
from pydantic import BaseModel, Field

from personahub.flows.crawl import crawl_stages
from personahub.flows.stage_runner import manifest_digest, run_exact_dedup, run_stage, stage_report, stages_markdown
from personahub.tasks import publish, text_to_persona
from personahub.tasks.checkpoint import params_hash
from personahub.tasks.crawl import CrawlParams
from personahub.tasks.llm_gateway import LLMGateway, Usage
from personahub.tasks.prompt_templates import load_template
from personahub.tasks.run_context import RunContext
from personahub.tasks.settings import Settings, load_settings

Relation = Literal["read", "write", "like", "dislike"]


def demo_corpus() -> str:
    """The documents shipped with the package, so a fresh install has input."""
    from importlib import resources

    return str(resources.files("personahub.corpus").joinpath("demo"))


class BuildHubParams(BaseModel):
    """Parameters of a hub build; the Prefect UI renders them as a form."""

    corpus: list[str] = Field(default_factory=lambda: [demo_corpus()], description="Files, directories or globs (any fsspec URL)")
    hub: str = Field("default", description="Hub name: versions go to hubs/<hub>/vNNNN")
    run_id: str | None = Field(None, description="Checkpoint folder; unset = derived from the parameters, so a rerun resumes")
    relations: list[Relation] = Field(default_factory=lambda: ["read"], description="Text-to-Persona relations")
    crawl: CrawlParams = Field(default_factory=CrawlParams, description="How documents are read and filtered")
    max_docs: int | None = Field(None, ge=1, description="Build from a seeded sample of at most this many documents")
    seed: int = Field(0, description="Seed of the max_docs sample")
    max_doc_chars: int = Field(2000, ge=200, description="Document characters sent to the LLM (small-model context budget)")
    temperature: float | None = Field(None, ge=0, le=2, description="Override the template's temperature")
    max_tokens: int | None = Field(None, ge=8, description="Override the template's max_tokens")
    rows_per_bucket: int = Field(200_000, ge=1, description="Rows per dedup bucket (bounds dedup memory)")
    llm_shard_parallelism: int = Field(2, ge=1, description="LLM shards in flight; requests split the concurrency between them")
    store: str | None = Field(None, description="Override the store URL (settings.store)")
    llm_base_url: str | None = Field(None, description="Override the LLM endpoint; unset and unconfigured = embedded model")
    llm_model: str | None = Field(None, description="Override the model name")


def resolve_model(settings: Settings) -> str:
    """The model name that goes into cache keys and provenance, known before any stage runs."""
    if settings.llm_model:
        return settings.llm_model
    if not settings.llm_base_url:
        from personahub.tasks.llama_server import MODEL_ALIAS

        return MODEL_ALIAS

    async def ask() -> str:
        async with LLMGateway.from_settings(settings, store=None) as gateway:
            return await gateway.model_name()

    return run_coro_as_sync(ask())


def run_id_for(params: BuildHubParams) -> str:
    """A run id from what the build computes, so rerunning it resumes. The corpus is left out: a
    rerun with one new file reuses every finished shard and pays only for the new documents."""
    keys = params.model_dump(exclude={"run_id", "store", "llm_shard_parallelism", "corpus"})
    return f"hub-{params.hub}-{params_hash(keys)[:10]}"


@contextlib.contextmanager
def llm_endpoint(settings: Settings, needed: bool) -> Iterator[str | None]:
    """The configured endpoint, or the embedded server for the duration of the block.

    The embedded server is started only when a stage really has LLM work left, so a rerun of a
    finished build starts nothing.
    """
    if settings.llm_base_url or not needed:
        yield settings.llm_base_url
        return
    from personahub.tasks.llama_server import EmbeddedLLMServer

    logger = get_run_logger()
    with EmbeddedLLMServer(settings, log=logger.info) as server:
        logger.info("embedded model %s serving at %s", server.model, server.base_url)
        yield server.base_url


@flow(name="build-hub", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=4))
def build_hub(params: BuildHubParams = BuildHubParams()) -> dict[str, Any]:
    """Build (or resume) a hub version from the corpus in `params`."""
    settings = load_settings(store=params.store, llm_base_url=params.llm_base_url, llm_model=params.llm_model)
    run_id = params.run_id or run_id_for(params)
    ctx = RunContext(settings.store, settings.resolved_s3_endpoint(), run_id)
    store = ctx.store
    logger = get_run_logger()
    logger.info("run %s in %s", run_id, store.uri(f"runs/{run_id}"))
    stages: list[dict[str, Any]] = []

    # 1. crawl: input files → document shards, deduplicated across the crawl
    docs_manifest, crawl_reports = crawl_stages(ctx, params.corpus, params.crawl, params.max_docs, params.seed,
                                                params.rows_per_bucket)
    stages.extend(crawl_reports)

    # 2. Text-to-Persona: documents → personas (LLM)
    template = load_template("text_to_persona")
    sampling = dict(template.params)
    sampling.update({k: v for k, v in (("temperature", params.temperature), ("max_tokens", params.max_tokens)) if v is not None})
    doc_files = {s["id"]: (s["files"]["data"],) for s in docs_manifest["shards"] if s["rows"].get("data", 0) > 0}
    t2p_base = {"template": template.name, "template_ref": template.ref, "relations": list(params.relations),
                "max_doc_chars": params.max_doc_chars, "sampling": sampling, "input": manifest_digest(docs_manifest)}
    model = resolve_model(settings)
    t2p_params = {**t2p_base, "model": model}
    t2p_checkpoint = ctx.checkpoint("text_to_persona", t2p_params)
    needs_llm = not t2p_checkpoint.is_complete() and bool(doc_files)
    with llm_endpoint(settings, needs_llm) as base_url:
        llm = {"base_url": base_url, "model": model,
               "concurrency": max(1, math.ceil(settings.llm_max_concurrency / params.llm_shard_parallelism))}
        personas_manifest, ran, skipped = run_stage(
            "text_to_persona", t2p_checkpoint, doc_files,
            lambda sid, a: text_to_persona.text_to_persona_task.submit(ctx, t2p_params, sid, *a, llm),
            batch=params.llm_shard_parallelism)
    stages.append(stage_report("text_to_persona", personas_manifest, ran, skipped))

    # 3. exact dedup on persona_id, two passes: partition by id, then dedup each bucket
    dedup_manifest, ran, skipped = run_exact_dedup(ctx, "dedup_exact", personas_manifest, "personas", params.rows_per_bucket)
    stages.append(stage_report("dedup_exact", dedup_manifest, ran, skipped))

    # 4. publish: a new hub version, once per finished run
    publish_checkpoint = ctx.checkpoint("publish", {"hub": params.hub, "input": manifest_digest(dedup_manifest)})
    if publish_checkpoint.is_complete():
        hub_manifest = publish_checkpoint.manifest()["summary"]["hub_manifest"]
    else:
        final_files = [s["files"]["data"] for s in dedup_manifest["shards"] if s["rows"].get("data", 0) > 0]
        lineage = {"run_id": run_id, "model": model, "template": template.ref,
                   "stages": {s["stage"]: s["counts"] for s in stages}}
        hub_manifest = publish.publish_hub(store, params.hub, run_id, final_files, lineage)
        publish_checkpoint.finalize(expected_shards=[], summary={"hub_manifest": hub_manifest})

    summary = {
        "run_id": run_id,
        "run": store.uri(f"runs/{run_id}"),
        "hub": params.hub,
        "version": hub_manifest["version"],
        "hub_path": store.uri(f"hubs/{params.hub}/{hub_manifest['version']}"),
        "personas": hub_manifest["personas"],
        "model": model,
        "stages": stages,
        "llm_this_run": _usage_of([r for s in stages for r in s.pop("_ran")]),
    }
    create_markdown_artifact(key="build-hub-summary", markdown=summary_markdown(summary), description="build-hub counts")
    return summary


def _usage_of(results: list[dict[str, Any]]) -> dict[str, int]:
    """Token and call totals of the shard tasks run now (skipped work costs nothing)."""
    fields = Usage.__dataclass_fields__
    usages = [Usage(**{k: v for k, v in r["usage"].items() if k in fields}) for r in results if "usage" in r]
    return Usage.merge(usages).as_dict()


def summary_markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# Hub `{summary['hub']}` {summary['version']}: {summary['personas']} personas",
        f"Run `{summary['run_id']}`, model `{summary['model']}`, hub at `{summary['hub_path']}`.",
        "",
        *stages_markdown(summary["stages"]),
    ]
    u = summary["llm_this_run"]
    lines += ["", f"LLM this run: {u['calls']} new calls, {u['cache_hits']} cache hits, "
              f"{u['prompt_tokens']} prompt + {u['completion_tokens']} completion tokens, {u['failures']} failures."]
    return "\n".join(lines)
