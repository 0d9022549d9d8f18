"""The two dedup stages as checkpointed sub-stages, shared by build-hub and the `dedup` flow.

MinHash (tasks/dedup/minhash_stage.py): minhash_sketch (per shard) → minhash_pairs (per band partition)
→ minhash_select (one task) → minhash (per shard: the kept rows).
Embeddings (tasks/dedup/embedding_stage.py): embed (per shard) → embedding_select → embedding_dedup.

Each sub-stage has its own manifest, so a killed run resumes at the sub-stage and shard it stopped
in. With a hub index (the previous hub version's stored sketches, band files and vectors), new
personas are deduplicated against the hub without recomputing it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from prefect import task
from prefect.cache_policies import NO_CACHE

from personahub.flows.stage_runner import run
from personahub.tasks.core.checkpoint import Manifest, StageCheckpoint
from personahub.tasks.core.run_context import RunContext
from personahub.tasks.core.stage import Stage, StageReport, StageResult
from personahub.tasks.dedup import apply as dedup_apply
from personahub.tasks.dedup import embedding_stage, minhash, minhash_stage
from personahub.tasks.hub import publish
from personahub.tasks.hub.publish import publish_task
from personahub.tasks.llm.endpoint_breaker import retry_unless_endpoint_down
from personahub.tasks.llm.gateway import LLMGateway


class MinHashParams(BaseModel):
    threshold: float = Field(minhash.THRESHOLD, gt=0, le=1, description="Jaccard of word 1-gram sets at or above which personas are duplicates")
    min_candidate_probability: float = Field(
        minhash.MIN_CANDIDATE_PROBABILITY, gt=0, lt=1,
        description="LSH banding: a pair exactly at the threshold becomes a candidate with at least this probability")
    bands: int | None = Field(None, ge=1, description="Override the banding (bands x rows <= 128)")
    rows: int | None = Field(None, ge=1)

    def banding(self) -> minhash.Banding:
        if self.bands and self.rows:
            return minhash.Banding(self.bands, self.rows)
        return minhash.choose_banding(self.threshold, minhash.NUM_PERM, self.min_candidate_probability)


def sketch_inputs(manifest: Manifest, fixed: bool, offset: int = 0) -> list[minhash_stage.SketchInput]:
    """The sketch stage's shards as join inputs, numbered from `offset` in shard-id order."""
    inputs = []
    bits = manifest.params["partition_bits"]
    for s in sorted(manifest.shards, key=lambda s: s.id):
        bands = {int(kind.removeprefix("bands_p")): path for kind, path in s.files.items() if kind.startswith("bands_p")}
        rows = s.rows_of("sketches")
        inputs.append(minhash_stage.SketchInput(s.files["sketches"], bands, bits, offset, rows, fixed))
        offset += rows
    return inputs


def hub_sketch_inputs(index: dict[str, Any] | None, offset: int) -> list[minhash_stage.SketchInput]:
    if not index:
        return []
    out = []
    for s in index["shards"]:
        bands = {int(p): path for p, path in s["bands"].items()}
        bits = s.get("partition_bits", index["partition_bits"])
        out.append(minhash_stage.SketchInput(s["sketches"], bands, bits, offset, s["rows"], True))
        offset += s["rows"]
    return out


@dataclass(frozen=True)
class HubBase:
    """The hub version a run deduplicates against: its personas are kept, new duplicates of them dropped.

    With reuse (the default) its stored index (sketches, band files, vectors) is used as is; without
    it, or where the version has no index for a stage (hubs published before the index existed, or
    with another banding or embedding model), its personas are sketched / embedded again as fixed
    inputs: the same decision, computed from scratch.
    """

    ref: str
    version: str
    manifest: dict[str, Any]  # the version's hub manifest, as published
    index: dict[str, Any]
    upstream: Manifest  # the version's persona parts as an upstream
    reuse: bool = True

    @classmethod
    def of(cls, manifest: dict[str, Any] | None, reuse: bool = True) -> "HubBase | None":
        if manifest is None:
            return None
        parts = Manifest.of_files("hub", [(p["file"], p["rows"]) for p in manifest["parts"]], prefix="hub")
        return cls(f"{manifest['hub']}/{manifest['version']}", manifest["version"], manifest,
                   publish.dedup_index(manifest) or {}, parts, reuse)

    def stored(self, stage: str) -> dict[str, Any] | None:
        return self.index.get(stage) if self.reuse else None


def _sketch(run_ctx: RunContext, name: str, upstream: Manifest, banding: minhash.Banding, bits: int) -> StageResult:
    params = {"num_perm": minhash.NUM_PERM, "seed": minhash.SEED, "banding": banding.__dict__,
              "partition_bits": bits, "input": upstream.digest()}
    return run(run_ctx, Stage(name, params, upstream.inputs(), minhash_stage.sketch_task))


def minhash_stages(run_ctx: RunContext, upstream: Manifest, params: MinHashParams,
                   hub: HubBase | None = None) -> tuple[Manifest, list[StageReport], dict[str, Any]]:
    """Run the MinHash dedup of an upstream stage's persona shards (against `hub` if given).

    Returns (manifest of the kept personas, stage reports, what the hub index needs: the sketch
    manifest, the decision and the banding).
    """
    stored = hub.stored("minhash") if hub else None
    banding = minhash.Banding(**stored["banding"]) if stored else params.banding()  # keys join only under one banding
    hub_rows = hub.upstream.rows() if hub else 0
    bits = minhash_stage.partition_bits(upstream.rows() + hub_rows, banding.bands)
    sketches = _sketch(run_ctx, "minhash_sketch", upstream, banding, bits)
    results = [sketches]
    inputs = sketch_inputs(sketches.manifest, fixed=False)
    if stored:
        inputs += hub_sketch_inputs(stored, offset=sum(i.rows for i in inputs))
    elif hub:
        hub_sketches = _sketch(run_ctx, "minhash_sketch_hub", hub.upstream, banding, bits)
        results.append(hub_sketches)
        inputs += sketch_inputs(hub_sketches.manifest, fixed=True, offset=sum(i.rows for i in inputs))

    hub_ref = {"hub": hub.ref if hub else None, "hub_reused": bool(stored)}
    pairs = run(run_ctx, Stage(
        "minhash_pairs", {"partition_bits": bits, "window": minhash_stage.WINDOW, "input": sketches.manifest.digest(), **hub_ref},
        {f"p{p:05d}": p for p in range(1 << bits)}, minhash_stage.pairs_task, {"inputs": inputs}))
    decision = run(run_ctx, Stage.one_shard(
        "minhash_select", {"threshold": params.threshold, "input": pairs.manifest.digest(), **hub_ref},
        minhash_stage.select_task, inputs=inputs, pair_files=[s.files["pairs"] for s in pairs.manifest.shards]))
    kept = apply_stage(run_ctx, "minhash", upstream, decision.manifest, "near_duplicate_minhash")
    results += [pairs, decision, kept]
    index = {"sketches": sketches.manifest, "decision": decision.manifest, "banding": banding.__dict__}
    return kept.manifest, [r.report() for r in results], index


def apply_stage(run_ctx: RunContext, name: str, upstream: Manifest, decision: Manifest, reason: str) -> StageResult:
    """Every upstream shard minus the rows the decision removed (shards keep their ids)."""
    params = {"input": upstream.digest(), "decision": decision.digest()}
    return run(run_ctx, Stage(name, params, upstream.inputs(), dedup_apply.apply_task,
                              {"removed_file": decision.only_shard().file("removed"), "reason": reason}))


class EmbeddingParams(BaseModel):
    enabled: bool = Field(True, description="Run the embedding stage after MinHash")
    threshold: float = Field(0.9, gt=-1, le=1, description="Cosine at or above which personas are duplicates (0.5: a stricter hub)")
    batch_size: int | None = Field(None, ge=1, le=2048,
                                   description="Texts per /v1/embeddings request (default: settings.embedding_batch_size)")
    exact_below: int | None = Field(None, ge=0, description="Exact search below this many personas (default: vector_search's)")


def vector_inputs(manifest: Manifest, fixed: bool) -> list[embedding_stage.VectorInput]:
    return [embedding_stage.VectorInput(s.files["vectors"], s.id, s.rows_of("vectors"), fixed)
            for s in sorted(manifest.shards, key=lambda s: s.id)]


def hub_vector_inputs(index: dict[str, Any] | None) -> list[embedding_stage.VectorInput]:
    if not index:
        return []
    return [embedding_stage.VectorInput(s["vectors"], s["id"], s["rows"], True) for s in index["shards"]]


def _embed(run_ctx: RunContext, name: str, upstream: Manifest, batch_size: int, llm: dict[str, Any],
           dim: int) -> StageResult:
    params = {"model": llm["model"], "dim": dim, "batch_size": batch_size, "input": upstream.digest()}
    return run(run_ctx, Stage(name, params, upstream.inputs(), embedding_stage.embed_task, {"llm": llm}))


def embedding_stages(run_ctx: RunContext, upstream: Manifest, params: EmbeddingParams, endpoint: Any,
                     settings: Any, hub: HubBase | None = None,
                     ) -> tuple[Manifest, list[StageReport], dict[str, Any]]:
    """Run the embedding dedup of an upstream stage's persona shards (against `hub` if given)."""
    model = endpoint.model
    stored = hub.stored("embedding") if hub else None
    if stored and stored["model"] != model:
        stored = None  # another model's vectors: the hub is embedded again with this one
    llm = {"base_url": None, "model": model, "concurrency": settings.embedding_max_concurrency, "purpose": "embeddings"}
    todo = upstream.inputs() or (hub is not None and not stored)
    if todo:
        llm["base_url"] = endpoint.base_url
    dim = stored["dim"] if stored else (embedding_dim_task(run_ctx, llm) if todo else 0)
    batch_size = params.batch_size or settings.embedding_batch_size
    vectors = _embed(run_ctx, "embed", upstream, batch_size, llm, dim)
    results = [vectors]
    inputs = vector_inputs(vectors.manifest, fixed=False)
    if stored:
        inputs += hub_vector_inputs(stored)
    elif hub:
        hub_vectors = _embed(run_ctx, "embed_hub", hub.upstream, batch_size, llm, dim)
        results.append(hub_vectors)
        inputs += vector_inputs(hub_vectors.manifest, fixed=True)

    search = {} if params.exact_below is None else {"exact_below": params.exact_below}
    decision = run(run_ctx, Stage.one_shard(
        "embedding_select", {"threshold": params.threshold, "dim": dim, "search": search, "input": vectors.manifest.digest(),
                             "hub": hub.ref if hub else None, "hub_reused": bool(stored)},
        embedding_stage.select_task, inputs=inputs))
    kept = apply_stage(run_ctx, "embedding_dedup", upstream, decision.manifest, "near_duplicate_embedding")
    results += [decision, kept]
    index = {"vectors": vectors.manifest, "decision": decision.manifest, "model": model, "dim": dim}
    return kept.manifest, [r.report() for r in results], index


@task(name="embedding-dim", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE,
      retry_condition_fn=retry_unless_endpoint_down)
def embedding_dim_task(run_ctx: RunContext, llm: dict[str, Any]) -> int:
    """Prefect task: the endpoint's vector size, from one (cached) embedding."""
    gateway = LLMGateway.for_worker(llm, run_ctx.store)
    return int(np.asarray(gateway.embed_many(["dimension probe"], model=llm["model"]).vectors).shape[1])


def dedup_stages(run_ctx: RunContext, settings: Any, upstream: Manifest, minhash_params: MinHashParams,
                 embedding_params: EmbeddingParams, hub: HubBase | None = None,
                 ) -> tuple[Manifest, list[StageReport], dict[str, Any]]:
    """MinHash then (if enabled) embeddings; returns (kept personas' manifest, reports, index parts)."""
    kept, reports, mh_index = minhash_stages(run_ctx, upstream, minhash_params, hub)
    index: dict[str, Any] = {"minhash": mh_index}
    if embedding_params.enabled:
        from personahub.tasks.serving.embedding_server import EmbeddingEndpoint  # torch loads only when the stage runs

        with EmbeddingEndpoint(settings) as endpoint:
            kept, more, emb_index = embedding_stages(run_ctx, kept, embedding_params, endpoint, settings, hub)
        reports.extend(more)
        index["embedding"] = emb_index
    return kept, reports, index


def publish_deduplicated(run_ctx: RunContext, hub: str, kept: Manifest, base: HubBase | None,
                         index_parts: dict[str, Any], lineage: dict[str, Any],
                         edge_files: list[str] | None = None, sources: dict[str, str] | None = None) -> dict[str, Any]:
    """The kept personas as the hub's next version (base's personas + these, with the dedup index),
    once per finished run: a rerun returns the version it already published."""
    params = {"hub": hub, "input": kept.digest(), "base": base.version if base else None}
    legacy = StageCheckpoint(run_ctx.store, run_ctx.run_id, "publish", params).complete_manifest()
    if legacy is not None and "hub_manifest" in legacy.summary:  # published before publishing was a stage
        return legacy.summary["hub_manifest"]
    published = run(run_ctx, Stage.one_shard(
        "publish", params, publish_task,
        files=kept.files(), rows=kept.rows(), lineage=lineage, edge_files=edge_files or [], base=base.manifest if base else None,
        index_parts=index_parts, sources=sources))
    return published.manifest.only_shard().extra["hub_manifest"]
