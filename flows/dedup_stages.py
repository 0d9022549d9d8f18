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

from personahub.flows.stage_runner import manifest_digest, run_stage, stage_report
from personahub.tasks.dedup import apply as dedup_apply
from personahub.tasks.dedup import embedding_stage as dedup_embedding
from personahub.tasks.dedup import minhash_stage as dedup_minhash
from personahub.tasks.hub import index as hub_index
from personahub.tasks.dedup import minhash
from personahub.tasks.hub import publish
from personahub.tasks.llm.gateway import LLMGateway
from personahub.tasks.core.run_context import RunContext


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


def data_shards(manifest: dict[str, Any]) -> dict[str, str]:
    """Shard id → data file of the shards with rows, sorted by id (node numbering follows it)."""
    return {s["id"]: s["files"]["data"] for s in sorted(manifest["shards"], key=lambda s: s["id"])
            if s["rows"].get("data", 0) > 0}


def sketch_inputs(manifest: dict[str, Any], fixed: bool, offset: int = 0) -> list[dedup_minhash.SketchInput]:
    """The sketch stage's shards as join inputs, numbered from `offset` in shard-id order."""
    inputs = []
    bits = manifest["params"]["partition_bits"]
    for s in sorted(manifest["shards"], key=lambda s: s["id"]):
        bands = {int(kind.removeprefix("bands_p")): path for kind, path in s["files"].items() if kind.startswith("bands_p")}
        rows = s["rows"].get("sketches", 0)
        inputs.append(dedup_minhash.SketchInput(s["files"]["sketches"], bands, bits, offset, rows, fixed))
        offset += rows
    return inputs


def hub_sketch_inputs(index: dict[str, Any] | None, offset: int) -> list[dedup_minhash.SketchInput]:
    if not index:
        return []
    out = []
    for s in index["shards"]:
        bands = {int(p): path for p, path in s["bands"].items()}
        bits = s.get("partition_bits", index["partition_bits"])
        out.append(dedup_minhash.SketchInput(s["sketches"], bands, bits, offset, s["rows"], True))
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
    index: dict[str, Any]
    upstream: dict[str, Any]  # the version's persona parts as an upstream manifest
    reuse: bool = True

    @classmethod
    def of(cls, manifest: dict[str, Any] | None, reuse: bool = True) -> "HubBase | None":
        if manifest is None:
            return None
        shards = [{"id": f"hub{i:05d}", "files": {"data": p["file"]}, "rows": {"data": p["rows"]}}
                  for i, p in enumerate(manifest["parts"])]
        return cls(f"{manifest['hub']}/{manifest['version']}", publish.dedup_index(manifest) or {}, {"shards": shards}, reuse)

    def stored(self, stage: str) -> dict[str, Any] | None:
        return self.index.get(stage) if self.reuse else None


def _sketch(ctx: RunContext, stage: str, upstream: dict[str, Any], banding: minhash.Banding, bits: int,
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    params = {"num_perm": minhash.NUM_PERM, "seed": minhash.SEED, "banding": banding.__dict__,
              "partition_bits": bits, "input": manifest_digest(upstream)}
    manifest, ran, skipped = run_stage(
        stage, ctx.checkpoint(stage, params), {sid: (f,) for sid, f in data_shards(upstream).items()},
        lambda sid, a: dedup_minhash.sketch_task.submit(ctx, stage, params, sid, *a), batch=8)
    return manifest, stage_report(stage, manifest, ran, skipped)


def minhash_stages(ctx: RunContext, upstream: dict[str, Any], params: MinHashParams,
                   hub: HubBase | None = None) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """Run the MinHash dedup of an upstream stage's persona shards (against `hub` if given).

    Returns (manifest of the kept personas, stage reports, what the hub index needs: the sketch
    manifest, the decision and the banding).
    """
    total = sum(s["rows"].get("data", 0) for s in upstream["shards"])
    stored = hub.stored("minhash") if hub else None
    banding = minhash.Banding(**stored["banding"]) if stored else params.banding()  # keys join only under one banding
    hub_rows = sum(s["rows"].get("data", 0) for s in hub.upstream["shards"]) if hub else 0
    bits = dedup_minhash.partition_bits(total + hub_rows, banding.bands)
    sketches, report = _sketch(ctx, "minhash_sketch", upstream, banding, bits)
    reports = [report]
    inputs = sketch_inputs(sketches, fixed=False)
    if stored:
        inputs += hub_sketch_inputs(stored, offset=sum(i.rows for i in inputs))
    elif hub:
        hub_sketches, report = _sketch(ctx, "minhash_sketch_hub", hub.upstream, banding, bits)
        reports.append(report)
        inputs += sketch_inputs(hub_sketches, fixed=True, offset=sum(i.rows for i in inputs))

    hub_ref = {"hub": hub.ref if hub else None, "hub_reused": bool(stored)}
    pair_params = {"partition_bits": bits, "window": dedup_minhash.WINDOW, "input": manifest_digest(sketches), **hub_ref}
    pairs, ran, skipped = run_stage(
        "minhash_pairs", ctx.checkpoint("minhash_pairs", pair_params), {f"p{p:05d}": (p,) for p in range(1 << bits)},
        lambda sid, a: dedup_minhash.pairs_task.submit(ctx, "minhash_pairs", pair_params, a[0], inputs), batch=8)
    reports.append(stage_report("minhash_pairs", pairs, ran, skipped))

    select_params = {"threshold": params.threshold, "input": manifest_digest(pairs), **hub_ref}
    pair_files = [s["files"]["pairs"] for s in pairs["shards"]]
    decision, ran, skipped = run_stage(
        "minhash_select", ctx.checkpoint("minhash_select", select_params), {"all": ()},
        lambda sid, a: dedup_minhash.select_task.submit(ctx, "minhash_select", select_params, inputs, pair_files), batch=1)
    reports.append(stage_report("minhash_select", decision, ran, skipped))

    removed_file = decision["shards"][0]["files"]["removed"]
    kept, ran, skipped = apply_stage(ctx, "minhash", upstream, decision, removed_file, "near_duplicate_minhash")
    reports.append(stage_report("minhash", kept, ran, skipped))
    return kept, reports, {"sketches": sketches, "decision": decision, "banding": banding.__dict__}


def apply_stage(ctx: RunContext, stage: str, upstream: dict[str, Any], decision: dict[str, Any], removed_file: str,
                reason: str) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
    """Every upstream shard minus the rows the decision removed (shards keep their ids)."""
    params = {"input": manifest_digest(upstream), "decision": manifest_digest(decision)}
    return run_stage(
        stage, ctx.checkpoint(stage, params), {sid: (f,) for sid, f in data_shards(upstream).items()},
        lambda sid, a: dedup_apply.apply_task.submit(ctx, stage, params, sid, a[0], removed_file, reason), batch=8)


class EmbeddingParams(BaseModel):
    enabled: bool = Field(True, description="Run the embedding stage after MinHash")
    threshold: float = Field(0.9, gt=-1, le=1, description="Cosine at or above which personas are duplicates (0.5: a stricter hub)")
    batch_size: int | None = Field(None, ge=1, le=2048,
                                   description="Texts per /v1/embeddings request (default: settings.embedding_batch_size)")
    exact_below: int | None = Field(None, ge=0, description="Exact search below this many personas (default: vector_search's)")


def vector_inputs(manifest: dict[str, Any], fixed: bool) -> list[dedup_embedding.VectorInput]:
    return [dedup_embedding.VectorInput(s["files"]["vectors"], s["id"], s["rows"].get("vectors", 0), fixed)
            for s in sorted(manifest["shards"], key=lambda s: s["id"])]


def hub_vector_inputs(index: dict[str, Any] | None) -> list[dedup_embedding.VectorInput]:
    if not index:
        return []
    return [dedup_embedding.VectorInput(s["vectors"], s["id"], s["rows"], True) for s in index["shards"]]


def _embed(ctx: RunContext, stage: str, upstream: dict[str, Any], batch_size: int, llm: dict[str, Any],
           dim: int) -> tuple[dict[str, Any], dict[str, Any]]:
    embed_params = {"model": llm["model"], "dim": dim, "batch_size": batch_size, "input": manifest_digest(upstream)}
    manifest, ran, skipped = run_stage(
        stage, ctx.checkpoint(stage, embed_params), {sid: (f,) for sid, f in data_shards(upstream).items()},
        lambda sid, a: dedup_embedding.embed_task.submit(ctx, stage, embed_params, sid, a[0], llm), batch=2)
    return manifest, stage_report(stage, manifest, ran, skipped)


def embedding_stages(ctx: RunContext, upstream: dict[str, Any], params: EmbeddingParams, endpoint: Any,
                     settings: Any, hub: HubBase | None = None,
                     ) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """Run the embedding dedup of an upstream stage's persona shards (against `hub` if given)."""
    model = endpoint.model
    stored = hub.stored("embedding") if hub else None
    if stored and stored["model"] != model:
        stored = None  # another model's vectors: the hub is embedded again with this one
    llm = {"base_url": None, "model": model, "concurrency": settings.embedding_max_concurrency, "purpose": "embeddings"}
    todo = data_shards(upstream) or (hub is not None and not stored)
    if todo:
        llm["base_url"] = endpoint.base_url
    dim = stored["dim"] if stored else (embedding_dim(ctx, llm) if todo else 0)
    batch_size = params.batch_size or settings.embedding_batch_size
    vectors, report = _embed(ctx, "embed", upstream, batch_size, llm, dim)
    reports = [report]
    inputs = vector_inputs(vectors, fixed=False)
    if stored:
        inputs += hub_vector_inputs(stored)
    elif hub:
        hub_vectors, report = _embed(ctx, "embed_hub", hub.upstream, batch_size, llm, dim)
        reports.append(report)
        inputs += vector_inputs(hub_vectors, fixed=True)

    search = {} if params.exact_below is None else {"exact_below": params.exact_below}
    select_params = {"threshold": params.threshold, "dim": dim, "search": search, "input": manifest_digest(vectors),
                     "hub": hub.ref if hub else None, "hub_reused": bool(stored)}
    decision, ran, skipped = run_stage(
        "embedding_select", ctx.checkpoint("embedding_select", select_params), {"all": ()},
        lambda sid, a: dedup_embedding.select_task.submit(ctx, "embedding_select", select_params, inputs), batch=1)
    reports.append(stage_report("embedding_select", decision, ran, skipped))

    kept, ran, skipped = apply_stage(ctx, "embedding_dedup", upstream, decision,
                                     decision["shards"][0]["files"]["removed"], "near_duplicate_embedding")
    reports.append(stage_report("embedding_dedup", kept, ran, skipped))
    return kept, reports, {"vectors": vectors, "decision": decision, "model": model, "dim": dim}


def embedding_dim(ctx: RunContext, llm: dict[str, Any]) -> int:
    """The endpoint's vector size, from one (cached) embedding."""
    gateway = LLMGateway.for_worker(llm, ctx.store)
    return int(np.asarray(gateway.embed_many(["dimension probe"], model=llm["model"]).vectors).shape[1])


def dedup_stages(ctx: RunContext, settings: Any, upstream: dict[str, Any], minhash_params: MinHashParams,
                 embedding_params: EmbeddingParams, hub: HubBase | None = None,
                 ) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """MinHash then (if enabled) embeddings; returns (kept personas' manifest, reports, index parts)."""
    kept, reports, mh_index = minhash_stages(ctx, upstream, minhash_params, hub)
    index: dict[str, Any] = {"minhash": mh_index}
    if embedding_params.enabled:
        from personahub.tasks.serving.embedding_server import EmbeddingEndpoint  # torch loads only when the stage runs

        with EmbeddingEndpoint(settings) as endpoint:
            kept, more, emb_index = embedding_stages(ctx, kept, embedding_params, endpoint, settings, hub)
        reports.extend(more)
        index["embedding"] = emb_index
    return kept, reports, index


def publish_deduplicated(ctx: RunContext, hub: str, run_id: str, kept: dict[str, Any], base: dict[str, Any] | None,
                         index_parts: dict[str, Any], lineage: dict[str, Any],
                         edge_files: list[str] | None = None) -> dict[str, Any]:
    """The kept personas as the hub's next version (base's personas + these, with the dedup index),
    once per finished run: a rerun returns the version it already published."""
    checkpoint = ctx.checkpoint("publish", {"hub": hub, "input": manifest_digest(kept),
                                            "base": base["version"] if base else None})
    if checkpoint.is_complete():
        return checkpoint.manifest()["summary"]["hub_manifest"]
    store = ctx.store
    files = [s["files"]["data"] for s in sorted(kept["shards"], key=lambda s: s["id"]) if s["rows"].get("data", 0) > 0]
    hub_manifest = publish.publish_hub(
        store, hub, run_id, files, lineage, edge_files, previous=base,
        index=lambda prefix, previous: hub_index.write_index(store, prefix, index_parts["minhash"],
                                                             index_parts.get("embedding"), previous))
    checkpoint.finalize(expected_shards=[], summary={"hub_manifest": hub_manifest})
    return hub_manifest
