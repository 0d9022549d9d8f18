"""Persona-to-Persona: expand the hop-0 personas for `hops` rounds into a graph (METHOD.md, step 2).

Each hop is two checkpointed stages: p2p_frontier_h<N> chooses which personas to expand (the new
ones of the previous hop, not already expanded nor in the published hub, at most max_new_per_hop by
a seeded hash), and persona_to_persona_h<N> asks the LLM for k related personas of each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from personahub.flows.stage_runner import manifest_digest, run_stage, stage_report
from personahub.tasks.personas import frontier as persona_frontier
from personahub.tasks.personas import persona_to_persona
from personahub.tasks.llm.templates import load_template
from personahub.tasks.core.run_context import RunContext


class GraphParams(BaseModel):
    hops: int = Field(6, ge=0, le=20, description="Persona-to-Persona rounds (six degrees of separation)")
    k: int = Field(3, ge=1, le=8, description="Related personas asked for per persona")
    max_new_per_hop: int = Field(32, ge=1, description="Personas expanded per hop at most (seeded sample)")
    seed: int = Field(0, description="Seed of the frontier sample")
    personas_per_shard: int = Field(200, ge=1, description="Personas per expansion task")


def data_files(manifest: dict[str, Any], kind: str = "data") -> list[str]:
    return [s["files"][kind] for s in manifest["shards"] if s["rows"].get(kind, 0) > 0]


def persona_graph_stages(
    ctx: RunContext, hop0: dict[str, Any], params: GraphParams, llm: Callable[[int], dict[str, Any]], model: str,
    hub_ids: set[str], hub_version: str | None, llm_shard_parallelism: int, filters: dict[str, Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run every hop; returns (the node manifests of hops 1.., the stage reports)."""
    template = load_template("persona_to_persona")
    store = ctx.store
    seen = set(hub_ids)  # personas never expanded (again): the hub's and every earlier hop's
    candidates = hop0
    manifests: list[dict[str, Any]] = []
    reports: list[dict[str, Any]] = []
    for hop in range(1, params.hops + 1):
        candidate_files = data_files(candidates)
        exclude = set(seen)
        seen |= persona_frontier.read_ids(store, candidate_files)  # found by now: not "new" at later hops
        frontier_stage = f"p2p_frontier_h{hop}"
        frontier_params = {"hop": hop, "input": manifest_digest(candidates), "hub_version": hub_version,
                           "max_new": params.max_new_per_hop, "seed": params.seed, "per_shard": params.personas_per_shard}
        checkpoint = ctx.checkpoint(frontier_stage, frontier_params)
        if checkpoint.is_complete():
            frontier = checkpoint.manifest()
            reports.append(stage_report(frontier_stage, frontier, [], True))
        else:
            table = persona_frontier.select_frontier(store, candidate_files, exclude, params.max_new_per_hop, params.seed, hop)
            total = persona_frontier.candidate_count(store, candidate_files)
            frontier = persona_frontier.write_frontier(checkpoint, table, params.personas_per_shard, total)
            reports.append(stage_report(frontier_stage, frontier, [{}] * len(frontier["shards"]), False))
        if frontier["totals"]["rows_out"] == 0:
            break
        stage = f"persona_to_persona_h{hop}"
        stage_params = {"template": template.name, "template_ref": template.ref, "hop": hop, "k": params.k,
                        "sampling": dict(template.params), "model": model, "filters": filters,
                        "input": manifest_digest(frontier)}
        shards = {s["id"]: (s["files"]["data"],) for s in frontier["shards"] if s["rows"].get("data", 0) > 0}
        expanded, ran, skipped = run_stage(
            stage, ctx.checkpoint(stage, stage_params), shards,
            lambda sid, a: persona_to_persona.persona_to_persona_task.submit(ctx, stage_params, sid, *a, llm(len(shards))),
            batch=llm_shard_parallelism)
        reports.append(stage_report(stage, expanded, ran, skipped))
        manifests.append(expanded)
        candidates = expanded
    return manifests, reports


def combined_manifest(manifests: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Several stages' data as one upstream for dedup: shard ids prefixed so they stay unique."""
    return {"shards": [{**s, "id": f"{prefix}-{s['id']}"} for prefix, m in manifests for s in m["shards"]]}
