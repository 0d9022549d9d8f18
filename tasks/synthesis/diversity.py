"""Diversity as in the paper's Figure 10: do personas that differ give outputs that differ?

From a pool of the run's source personas (the first `pool` of the run's seeded order, so the
run's own personas are in it), persona pairs are drawn whose cosine similarity is near each target
(0.4, 0.6, 0.8 by default, within `tolerance`). The persona vectors come from the hub's stored
index when the source is a hub version that has one (no re-embedding); personas it lacks, and
persona files, are embedded. Each persona of a pair writes the use case's item with greedy
decoding (temperature 0, so the output depends on the persona alone), and the pair's outputs are
embedded and compared. A pair whose output failed to parse is left out and counted.

Also the spread of the run's dataset: the mean cosine similarity over all pairs of its items.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from personahub.tasks.core.checkpoint import ShardCounts
from personahub.tasks.core.stage import ONE_SHARD, StageRef
from personahub.tasks.core.store import Store
from personahub.tasks.dedup.embedding_stage import to_float32
from personahub.tasks.llm.endpoint_breaker import retry_unless_endpoint_down
from personahub.tasks.llm.gateway import LLMGateway
from personahub.tasks.synthesis.personas import PersonaSelection, select_personas
from personahub.tasks.synthesis.stage import Synthesize, answer_reason

PAIR_SCHEMA = pa.schema([
    ("target", pa.float64()),
    ("persona_a", pa.string()),
    ("persona_b", pa.string()),
    ("persona_similarity", pa.float64()),
    ("output_similarity", pa.float64()),
    ("output_a", pa.string()),
    ("output_b", pa.string()),
])


class DiversityParams(BaseModel):
    enabled: bool = Field(True, description="Measure diversity (Figure 10): persona-pair vs output-pair similarity")
    targets: list[float] = Field(default_factory=lambda: [0.4, 0.6, 0.8], description="Persona-pair cosine targets")
    tolerance: float = Field(0.05, gt=0, le=0.5, description="How far from its target a pair's similarity may be")
    pairs: int = Field(3, ge=1, description="Pairs per target")
    pool: int = Field(300, ge=2, description="Personas the pairs are drawn from (the first of the run's order)")


def hub_vectors(store: Store, index: Mapping[str, Any] | None, wanted: set[str], model: str) -> dict[str, np.ndarray]:
    """Stored vectors of the wanted personas from a hub version's embedding index (one shard read
    at a time), when the index was made with `model`."""
    if not index or index.get("model") != model:
        return {}
    found: dict[str, np.ndarray] = {}
    for shard in index["shards"]:
        table = store.read_parquet(shard["vectors"], columns=["persona_id", "vector"])
        ids = table.column("persona_id").to_pylist()
        hits = [i for i, pid in enumerate(ids) if pid in wanted]
        if hits:
            vectors = to_float32(table.column("vector").take(pa.array(hits)), int(index["dim"]))
            found.update({ids[i]: vectors[j] for j, i in enumerate(hits)})
    return found


def pick_pairs(vectors: np.ndarray, targets: Sequence[float], tolerance: float, per_target: int,
               seed: int) -> list[tuple[float, int, int, float]]:
    """(target, i, j, cosine) for up to `per_target` pairs near each target, drawn with `seed`."""
    sims = vectors @ vectors.T
    upper = np.triu_indices(len(vectors), k=1)
    values = sims[upper]
    rng = np.random.default_rng(seed)
    out = []
    for target in targets:
        near = np.flatnonzero(np.abs(values - target) <= tolerance)
        for k in rng.permutation(near)[:per_target]:
            out.append((float(target), int(upper[0][k]), int(upper[1][k]), float(values[k])))
    return out


def mean_pairwise_cosine(vectors: np.ndarray) -> float | None:
    """Mean cosine over all pairs of unit vectors: (|sum|^2 - n) / (n (n - 1)), without the n x n matrix."""
    n = len(vectors)
    if n < 2:
        return None
    total = vectors.astype(np.float64).sum(axis=0)
    return round(float((total @ total - n) / (n * (n - 1))), 4)


async def measure(stage: StageRef, files: list[str], hub_index: Mapping[str, Any] | None, llm: Mapping[str, Any],
                  embeddings: Mapping[str, Any], dataset_files: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    params = stage.params
    settings = DiversityParams(**params["diversity"])
    selection = PersonaSelection(**{**params["selection"], "n": settings.pool})
    pool, _, _ = select_personas(stage.store, files, selection)
    ids, texts = pool.column("persona_id").to_pylist(), pool.column("persona").to_pylist()
    async with LLMGateway.for_worker(embeddings, stage.store) as embedder:
        stored = hub_vectors(stage.store, hub_index, set(ids), embeddings["model"])
        missing = [i for i, pid in enumerate(ids) if pid not in stored]
        embedded = (await embedder.aembed_many([texts[i] for i in missing], model=embeddings["model"])).vectors
        by_id = {**stored, **{ids[i]: embedded[j] for j, i in enumerate(missing)}}
        vectors = np.stack([by_id[pid] for pid in ids]) if ids else np.zeros((0, 1), np.float32)
        pairs = pick_pairs(vectors, settings.targets, settings.tolerance, settings.pairs, selection.seed)
        synth = Synthesize({**params["synthesis"], "sampling": {**params["synthesis"]["sampling"], "temperature": 0.0}})
        people = sorted({i for _, a, b, _ in pairs for i in (a, b)})
        requests = [synth.requests({"persona_id": ids[i], "persona": texts[i], "position": i})[0] for i in people]
        async with LLMGateway.for_worker(llm, stage.store) as writer:
            results = await writer.chat_many(requests)
        outputs = {i: (synth.case.text_of(r.data) if r.error is None and answer_reason(synth.case, r) is None else None)
                   for i, r in zip(people, results)}
        usable = [i for i in people if outputs[i]]
        out_vectors = (await embedder.aembed_many([outputs[i] for i in usable], model=embeddings["model"])).vectors
        out_of = {i: out_vectors[k] for k, i in enumerate(usable)}
        dataset = [t or "" for f in dataset_files for t in stage.store.read_parquet(f, columns=["text"]).column("text").to_pylist()]
        spread = mean_pairwise_cosine((await embedder.aembed_many(dataset, model=embeddings["model"])).vectors) \
            if len(dataset) >= 2 else None
    rows = [{"target": t, "persona_a": ids[a], "persona_b": ids[b], "persona_similarity": round(s, 4),
             "output_similarity": round(float(out_of[a] @ out_of[b]), 4), "output_a": outputs[a], "output_b": outputs[b]}
            for t, a, b, s in pairs if a in out_of and b in out_of]
    extra = {"pool": len(ids), "from_hub_index": len(stored), "pairs_drawn": len(pairs),
             "pairs_without_output": len(pairs) - len(rows), "dataset_mean_cosine": spread,
             "usage": (writer.usage + embedder.usage).as_dict()}
    return rows, extra


@task(name="diversity", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE,
      retry_condition_fn=retry_unless_endpoint_down)
async def diversity_task(stage: StageRef, shard_id: str, _input: None, *, files: list[str],
                         hub_index: Mapping[str, Any] | None, llm: Mapping[str, Any], embeddings: Mapping[str, Any],
                         dataset_files: list[str]) -> dict[str, Any]:
    """Prefect task: Figure 10's pairs and the dataset's spread, written as one shard."""
    rows, extra = await measure(stage, files, hub_index, llm, embeddings, dataset_files)
    counts = ShardCounts(rows_in=extra["pairs_drawn"], rows_out=len(rows), filtered=extra["pairs_without_output"])
    stage.checkpoint.write_shard(ONE_SHARD, {"data": pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)}, counts,
                                 extra={**extra, "reasons": {"no_output": extra["pairs_without_output"]}
                                        if extra["pairs_without_output"] else {}})
    return {"shard_id": ONE_SHARD, "counts": counts.__dict__}


def summarise(rows: list[dict[str, Any]], targets: Sequence[float]) -> list[dict[str, Any]]:
    """Per target: the pairs found and their mean persona and output similarity."""
    out = []
    for target in targets:
        mine = [r for r in rows if r["target"] == target]
        mean = (lambda key: round(sum(r[key] for r in mine) / len(mine), 4) if mine else None)
        out.append({"target": target, "pairs": len(mine), "persona_similarity": mean("persona_similarity"),
                    "output_similarity": mean("output_similarity")})
    return out


def plot(rows: list[dict[str, Any]], title: str) -> bytes:
    """Figure 10 as a PNG: output-pair against persona-pair similarity, one point per pair."""
    import io

    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    x = [r["persona_similarity"] for r in rows]
    y = [r["output_similarity"] for r in rows]
    ax.scatter(x, y, s=24, alpha=0.8)
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("persona-pair cosine similarity")
    ax.set_ylabel("output-pair cosine similarity")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def pair_rows(store: Store, files: list[str]) -> list[dict[str, Any]]:
    return [r for f in files for r in store.read_parquet(f).to_pylist()]
