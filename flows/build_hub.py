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
from collections.abc import Callable, Iterator
from typing import Any, Literal

import fsspec
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.asyncutils import run_coro_as_sync
from pydantic import BaseModel, Field

from personahub.tasks import crawl, dedup_exact, publish, text_to_persona
from personahub.tasks.checkpoint import StageCheckpoint, params_hash
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
    text_field: str = Field("text", description="Text field of JSONL records")
    files_per_shard: int = Field(16, ge=1, description="Input files per crawl shard")
    max_doc_chars: int = Field(2000, ge=200, description="Document characters sent to the LLM (small-model context budget)")
    temperature: float | None = Field(None, ge=0, le=2, description="Override the template's temperature")
    max_tokens: int | None = Field(None, ge=8, description="Override the template's max_tokens")
    rows_per_bucket: int = Field(200_000, ge=1, description="Personas per dedup bucket (bounds dedup memory)")
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
    """A run id from what determines the output, so rerunning the same build resumes it."""
    keys = params.model_dump(exclude={"run_id", "store", "llm_shard_parallelism"})
    return f"hub-{params.hub}-{params_hash(keys)[:10]}"


def _input_fingerprint(files: list[str]) -> list[list[Any]]:
    """(path, size, mtime) per input file: a changed file makes the crawl stage stale."""
    out = []
    for url in files:
        fs, path = fsspec.core.url_to_fs(url)
        info = fs.info(path)
        out.append([url, info.get("size"), str(info.get("mtime") or info.get("LastModified") or info.get("ETag"))])
    return out


def _manifest_digest(manifest: dict[str, Any]) -> str:
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

    Returns (manifest, results of the shards run now, skipped).
    """
    logger = get_run_logger()
    if checkpoint.is_complete():
        logger.info("%s: complete, skipped (%s)", name, checkpoint.store.uri(checkpoint.prefix))
        return checkpoint.manifest(), [], True
    done = checkpoint.done_shards()
    todo = [sid for sid in shards if sid not in done]
    logger.info("%s: %d shards, %d already done, %d to run", name, len(shards), len(done), len(todo))
    results: list[dict[str, Any]] = []
    for start in range(0, len(todo), batch):
        futures = [submit(sid, shards[sid]) for sid in todo[start : start + batch]]
        results.extend(f.result() for f in futures)
    return checkpoint.finalize(expected_shards=shards.keys()), results, False


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

    # 1. crawl: input files → document shards
    files = crawl.expand_sources(params.corpus)
    groups = crawl.plan_shards(files, params.files_per_shard)
    crawl_params = {"inputs": _input_fingerprint(files), "files_per_shard": params.files_per_shard,
                    "text_field": params.text_field, "min_chars": 1}
    crawl_shards = {f"{i:05d}": (group,) for i, group in enumerate(groups)}
    docs_manifest, ran, skipped = run_stage(
        "crawl", ctx.checkpoint("crawl", crawl_params), crawl_shards,
        lambda sid, a: crawl.crawl_task.submit(ctx, crawl_params, sid, *a), batch=len(crawl_shards))
    stages.append(_report("crawl", docs_manifest, ran, skipped))

    # 2. Text-to-Persona: documents → personas (LLM)
    template = load_template("text_to_persona")
    sampling = dict(template.params)
    sampling.update({k: v for k, v in (("temperature", params.temperature), ("max_tokens", params.max_tokens)) if v is not None})
    doc_files = {s["id"]: (s["files"]["data"],) for s in docs_manifest["shards"] if s["rows"].get("data", 0) > 0}
    t2p_base = {"template": template.name, "template_ref": template.ref, "relations": list(params.relations),
                "max_doc_chars": params.max_doc_chars, "sampling": sampling, "input": _manifest_digest(docs_manifest)}
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
    stages.append(_report("text_to_persona", personas_manifest, ran, skipped))

    # 3. exact dedup, two passes: partition by persona_id, then dedup each bucket
    persona_files = {s["id"]: (s["files"]["data"],) for s in personas_manifest["shards"] if s["rows"].get("data", 0) > 0}
    total = sum(s["rows"].get("data", 0) for s in personas_manifest["shards"])
    part_params = {"n_buckets": dedup_exact.bucket_count(total, params.rows_per_bucket), "input": _manifest_digest(personas_manifest)}
    parts_manifest, ran, skipped = run_stage(
        "dedup_exact_partition", ctx.checkpoint("dedup_exact_partition", part_params), persona_files,
        lambda sid, a: dedup_exact.partition_task.submit(ctx, part_params, sid, *a), batch=8)
    buckets = {b: (fs,) for b, fs in dedup_exact.files_by_bucket(parts_manifest).items()}
    dedup_params = {"keep": "smallest (persona_id, doc_id, relation, source, persona)", "input": _manifest_digest(parts_manifest)}
    dedup_manifest, ran, skipped = run_stage(
        "dedup_exact", ctx.checkpoint("dedup_exact", dedup_params), buckets,
        lambda sid, a: dedup_exact.dedup_bucket_task.submit(ctx, dedup_params, sid, *a), batch=8)
    stages.append(_report("dedup_exact", dedup_manifest, ran, skipped))

    # 4. publish: a new hub version, once per finished run
    publish_checkpoint = ctx.checkpoint("publish", {"hub": params.hub, "input": _manifest_digest(dedup_manifest)})
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


def _report(stage: str, manifest: dict[str, Any], ran: list[dict[str, Any]], skipped: bool) -> dict[str, Any]:
    totals = manifest["totals"]
    rejected: dict[str, int] = {}
    usage: dict[str, int] = {}
    for shard in manifest["shards"]:
        extra = shard.get("extra") or {}
        for reason, n in extra.get("rejected", {}).items():
            rejected[reason] = rejected.get(reason, 0) + n
        for key, n in extra.get("usage", {}).items():
            usage[key] = usage.get(key, 0) + n
    return {
        "stage": stage,
        "skipped": skipped,
        "shards": totals["shards"],
        "shards_run": len(ran),
        "counts": {k: totals[k] for k in ("rows_in", "rows_out", "filtered", "quarantined")},
        "rejected": rejected,
        "usage": usage,  # what the stage's shards spent, whichever run made them
        "_ran": ran,
    }


def summary_markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# Hub `{summary['hub']}` {summary['version']}: {summary['personas']} personas",
        f"Run `{summary['run_id']}`, model `{summary['model']}`, hub at `{summary['hub_path']}`.",
        "",
        "| stage | shards (run now) | in | out | filtered | quarantined | rejected by reason | LLM calls | tokens |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary["stages"]:
        c = s["counts"]
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(s["rejected"].items())) or "-"
        run_now = "skipped" if s["skipped"] else s["shards_run"]
        u = s["usage"]
        calls, tokens = (u.get("calls", 0), u.get("total_tokens", 0)) if u else ("-", "-")
        lines.append(f"| {s['stage']} | {s['shards']} ({run_now}) | {c['rows_in']} | {c['rows_out']} | {c['filtered']} "
                     f"| {c['quarantined']} | {reasons} | {calls} | {tokens} |")
    u = summary["llm_this_run"]
    lines += ["", f"LLM this run: {u['calls']} new calls, {u['cache_hits']} cache hits, "
              f"{u['prompt_tokens']} prompt + {u['completion_tokens']} completion tokens, {u['failures']} failures."]
    return "\n".join(lines)
