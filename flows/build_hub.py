"""build-hub: documents → Text-to-Persona → dedup → a versioned hub of personas.

Each stage is a set of Prefect tasks over shards with a checkpoint under runs/<run_id>/<stage>/; a
stage whose manifest matches its parameters is skipped, and inside a stage only the shards without
a done entry run. LLM responses are cached by content, so even a redone shard pays for nothing twice.
Later issues replace a stage's body (full crawler, Persona-to-Persona, MinHash/embedding dedup,
quality filters), not this shape.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from personahub.flows.crawl import crawl_stages
from personahub.flows.dedup_stages import EmbeddingParams, HubBase, MinHashParams, dedup_stages, publish_deduplicated
from personahub.flows.persona_graph import GraphParams, persona_graph_estimate, persona_graph_stages
from personahub.flows.run_controls import (EXECUTION_FIELDS, BudgetCost, BudgetTokens, EmbeddingModel, Fresh,
                                           LLMBaseUrl, LLMModel, MaxTokens, StoreUrl, Temperature)
from personahub.flows.stage_runner import task_runner, hold_run, reuse_summary, run
from personahub.tasks.core.checkpoint import Manifest, params_hash
from personahub.tasks.core.run_context import RunContext
from personahub.tasks.core.settings import load_settings
from personahub.tasks.core.stage import Deferred, StageReport, row_ranges
from personahub.tasks.llm.stage import llm_stage_params
from personahub.tasks.serving.endpoint import LLMEndpoint, resolve_model
from personahub.tasks.crawl import CrawlParams, source_files_task as crawl_source_files
from personahub.tasks.hub import publish
from personahub.tasks.hub import report as build_report
from personahub.tasks.llm import estimate
from personahub.tasks.llm.budget import price_for, run_cost, spend_spec
from personahub.tasks.llm.meter import others_in_progress
from personahub.tasks.llm.gateway import Usage
from personahub.tasks.llm.templates import load_template
from personahub.tasks.personas.persona_to_persona import PersonaToPersona
from personahub.tasks.personas.text_to_persona import TextToPersona

Relation = Literal["read", "write", "like", "dislike"]


def demo_corpus() -> str:
    """The documents shipped with the package, so a fresh install has input."""
    from importlib import resources

    return str(resources.files("personahub.corpus").joinpath("demo"))


class BuildHubParams(BaseModel):
    """Parameters of a hub build; the Prefect UI renders them as a form."""

    corpus: list[str] = Field(default_factory=lambda: [demo_corpus()], description="Files, directories or globs (any fsspec URL)")
    hub: str = Field("default", description="Hub name: versions go to hubs/<hub>/vNNNN")
    budget_tokens: BudgetTokens = None
    budget_cost: BudgetCost = None
    fresh: Fresh = False
    run_id: str | None = Field(None, description="Checkpoint folder; unset = derived from the parameters, so a rerun resumes")
    dry_run: bool = Field(False, description="Crawl (no LLM call), then estimate the LLM calls and tokens of the "
                          "rest from the documents, the checkpoints and the cache, and stop before any call")
    relations: list[Relation] = Field(default_factory=lambda: ["read", "write", "like", "dislike"],
                                      description="Text-to-Persona relations")
    crawl: CrawlParams = Field(default_factory=CrawlParams, description="How documents are read and filtered")
    max_docs: int | None = Field(None, ge=1, description="Build from a seeded sample of at most this many documents")
    seed: int = Field(0, description="Seed of the max_docs sample")
    max_doc_tokens: int = Field(512, ge=64, description="Token budget of the document excerpt sent to the LLM "
                                "(≈4 characters a token; longer documents are truncated at a word boundary)")
    graph: GraphParams = Field(default_factory=GraphParams, description="Persona-to-Persona expansion")
    filters: dict[str, Any] = Field(default_factory=dict, description="Persona quality filter options "
                                    "(PersonaFilterOptions fields, e.g. {\"languages\": [\"en\"], \"min_words\": 5})")
    temperature: Temperature = None
    max_tokens: MaxTokens = None
    rows_per_bucket: int = Field(200_000, ge=1, description="Rows per dedup bucket of the crawl (bounds its memory)")
    crawl_shard_bytes: int = Field(32_000_000, ge=1, description="Input bytes per crawl shard, about: small files "
                                   "are grouped, a larger file is a shard of its own")
    minhash: MinHashParams = Field(default_factory=MinHashParams, description="MinHash dedup (Jaccard of word 1-grams)")
    embedding: EmbeddingParams = Field(default_factory=EmbeddingParams, description="Embedding dedup (cosine)")
    llm_shard_docs: int = Field(2000, ge=1, description="Documents per Text-to-Persona shard (one task, one checkpoint "
                                "entry; bounds its memory); a larger crawl bucket is cut into several")
    llm_shard_parallelism: int = Field(3, ge=1, description="LLM shards in flight (the flow runs 4 "
                                       "threads); they share one request bound (settings.llm_max_concurrency)")
    store: StoreUrl = None
    llm_base_url: LLMBaseUrl = None
    llm_model: LLMModel = None
    embedding_base_url: str | None = Field(None, description="Override the embeddings endpoint; unset and unconfigured = embedded model")
    embedding_model: EmbeddingModel = None


def run_id_for(params: BuildHubParams) -> str:
    """A run id from what the build computes, so rerunning it resumes. The corpus is left out: a
    rerun with one new file reuses every finished shard and pays only for the new documents."""
    keys = params.model_dump(exclude=EXECUTION_FIELDS | {"llm_shard_docs", "crawl_shard_bytes", "corpus"})
    return f"hub-{params.hub}-{params_hash(keys)[:10]}"


CHARS_PER_TOKEN = 4  # English text under BPE tokenizers; a budget, not an exact count


def filter_options(values: dict[str, Any]) -> dict[str, Any]:
    """The filter options in force, in full, so a changed default changes the stages' parameters."""
    from personahub.tasks.personas.filters import PersonaFilterOptions

    return PersonaFilterOptions.from_dict(dict(values)).as_dict()


@flow(name="build-hub", log_prints=True, task_runner=task_runner())
def build_hub(params: BuildHubParams = BuildHubParams()) -> dict[str, Any]:
    """Build (or resume) a hub version from the corpus in `params`."""
    started = time.monotonic()
    settings = load_settings(store=params.store, llm_base_url=params.llm_base_url, llm_model=params.llm_model,
                             embedding_base_url=params.embedding_base_url, embedding_model=params.embedding_model)
    run_id = params.run_id or run_id_for(params)
    run_ctx = RunContext(settings.store, settings.resolved_s3_endpoint(), run_id)
    with hold_run(run_ctx, params.fresh):
        store = run_ctx.store
        get_run_logger().info("run %s in %s", run_id, store.uri(f"runs/{run_id}"))
        base = HubBase.of(publish.base_version_task(run_ctx, params.hub))
        filters = filter_options(params.filters)
        model = resolve_model(settings)
        spend = spend_spec(run_id, params.budget_tokens, params.budget_cost, settings.llm_prices, model)  # refused before any call
        reports: list[StageReport] = []

        # 1. crawl: input files → document shards, deduplicated across the crawl (the files are
        # recorded in the version, so a refresh knows what it has seen)
        sources = crawl_source_files(params.corpus)
        docs, crawl_reports = crawl_stages(run_ctx, params.corpus, params.crawl, params.max_docs, params.seed,
                                           params.rows_per_bucket, shard_bytes=params.crawl_shard_bytes)
        reports.extend(crawl_reports)

        with LLMEndpoint(settings) as endpoint, others_in_progress(spend, store):
            # Every LLM shard in flight shares the endpoint's one concurrency bound (the gateway's). The
            # URL is asked for only when a shard runs: a rerun whose LLM stages are done starts no server.
            llm = Deferred(lambda: {"base_url": endpoint.base_url, "model": model, "concurrency": settings.llm_max_concurrency,
                                "spend": spend})

            # 2. Text-to-Persona: documents → personas (LLM), in shards of llm_shard_docs documents
            t2p_template = load_template("text_to_persona", TextToPersona.default_mode)
            sampling = dict(t2p_template.params)
            sampling.update({k: v for k, v in (("temperature", params.temperature), ("max_tokens", params.max_tokens)) if v is not None})
            t2p_stage = TextToPersona.stage(
                "text_to_persona", {**llm_stage_params(t2p_template, sampling, model, filters),
                                    "relations": list(params.relations),
                                    "max_doc_chars": params.max_doc_tokens * CHARS_PER_TOKEN, "input": docs.digest()},
                row_ranges(docs, params.llm_shard_docs), llm, params.llm_shard_parallelism)
            p2p_template = load_template("persona_to_persona", PersonaToPersona.default_mode)
            p2p_params = llm_stage_params(p2p_template, dict(p2p_template.params), model, filters)
            if params.dry_run:  # what the LLM stages would call, from the documents, checkpoints and cache
                return build_estimate(run_ctx, params, settings, model, docs, t2p_stage, p2p_params,
                                      base.version if base else None)
            personas = run(run_ctx, t2p_stage)
            reports.append(personas.report())

            # 3. Persona-to-Persona: `hops` rounds of related personas, a graph of nodes and edges
            graph, graph_reports = persona_graph_stages(
                run_ctx, personas.manifest, params.graph, llm, p2p_params,
                base.upstream.files() if base else [], base.version if base else None, params.llm_shard_parallelism)
            reports.extend(graph_reports)

        # 4. MinHash then embedding dedup of every node (the lowest hop is kept), against the hub as this run found it
        nodes = Manifest.combine("nodes", [("h0", personas.manifest)] + [(f"h{i + 1}", m) for i, m in enumerate(graph)])
        kept, dedup_reports, index_parts = dedup_stages(run_ctx, settings, nodes, params.minhash, params.embedding, base)
        reports.extend(dedup_reports)

        # 5. publish: a new hub version (the base version's personas + this run's), once per finished run
        lineage = {"run_id": run_id, "model": model, "template": t2p_template.ref,
                   "stages": {r.stage: asdict(r.counts) for r in reports}}
        hub_manifest = publish_deduplicated(run_ctx, params.hub, kept, base, index_parts, lineage,
                                            [f for m in graph for f in m.files("edges")], sources)

        usage_now = Usage.merge([Usage.from_dict(r.usage_now) for r in reports]).as_dict()
        summary = {
            "run_id": run_id,
            "run": store.uri(f"runs/{run_id}"),
            "hub": params.hub,
            "version": hub_manifest["version"],
            "hub_path": store.uri(f"hubs/{params.hub}/{hub_manifest['version']}"),
            "personas": hub_manifest["personas"],
            "model": model,
            "stages": [r.as_dict() for r in reports],
            "llm_this_run": usage_now,
            "cost_usd": run_cost(settings.llm_prices, model, usage_now),
            "reused": reuse_summary(reports),
        }
        report = build_report.build_report(
            summary, {"personas": filters, "minhash": params.minhash.model_dump(), "embedding": params.embedding.model_dump()},
            time.monotonic() - started, settings.llm_prices)
        build_report.write_report(store, report)
        summary["report"] = store.uri(build_report.report_path(run_id))
        create_markdown_artifact(key="build-hub-summary", markdown=build_report.markdown(report),
                                 description="build-hub report: counts, dedup, filters, tokens, cost, time")
        return summary


def build_estimate(run_ctx: RunContext, params: BuildHubParams, settings: Any, model: str, docs: Manifest,
                   t2p_stage: Any, p2p_params: dict[str, Any], hub_version: str | None) -> dict[str, Any]:
    """--dry-run after the crawl: Text-to-Persona exactly (each document's requests against the
    checkpoint and the cache), the hops exactly where their parents are checkpointed, else bounds.
    The embedding dedup's calls go to the embeddings endpoint and are not counted."""
    t2p = estimate.estimate_llm_stage(run_ctx, t2p_stage, TextToPersona, model)
    hop0 = estimate.finished(run_ctx, t2p_stage)
    hops = persona_graph_estimate(run_ctx, hop0, docs.totals.rows_out * len(params.relations), params.graph,
                                  p2p_params, hub_version, model)
    what = f"{docs.totals.rows_out} documents, {params.graph.hops} hops"
    return {**estimate.dry_run_summary(run_ctx.run_id, model, what, [t2p, *hops], price_for(settings.llm_prices, model)),
            "documents": docs.totals.rows_out}
