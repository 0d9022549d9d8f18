"""Persona-to-Persona: expand the hop-0 personas for `hops` rounds into a graph (METHOD.md, step 2).

Each hop is two checkpointed stages: p2p_frontier_h<N> chooses which personas to expand (the new
ones of the previous hop, not already expanded nor in the published hub, at most max_new_per_hop by
a seeded hash), and persona_to_persona_h<N> asks the LLM for k related personas of each.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from personahub.flows.stage_runner import run
from personahub.tasks.core.checkpoint import Manifest, StageCheckpoint
from personahub.tasks.core.run_context import RunContext
from personahub.tasks.core.stage import RowRange, Stage, StageReport, row_ranges
from personahub.tasks.llm import estimate
from personahub.tasks.personas.frontier import frontier_task
from personahub.tasks.personas.persona_to_persona import PersonaToPersona, stage_name


class GraphParams(BaseModel):
    hops: int = Field(6, ge=0, le=20, description="Persona-to-Persona rounds (six degrees of separation)")
    k: int = Field(3, ge=1, le=8, description="Related personas asked for per persona")
    max_new_per_hop: int = Field(32, ge=1, description="Personas expanded per hop at most (seeded sample)")
    seed: int = Field(0, description="Seed of the frontier sample")
    personas_per_shard: int = Field(200, ge=1, description="Personas per expansion task")


def frontier_name(hop: int) -> str:
    return f"p2p_frontier_h{hop}"


def frontier_params(hop: int, candidates: Manifest, hub_version: str | None, params: GraphParams) -> dict[str, Any]:
    return {"hop": hop, "input": candidates.digest(), "hub_version": hub_version,
            "max_new": params.max_new_per_hop, "seed": params.seed}


def expansion_stage(hop: int, frontier: Manifest, params: GraphParams, llm: Any, llm_params: dict[str, Any],
                    window: int) -> Stage[RowRange]:
    """Hop `hop`'s Persona-to-Persona stage over its frontier."""
    return PersonaToPersona.stage(stage_name(hop), {**llm_params, "hop": hop, "k": params.k, "input": frontier.digest()},
                                  row_ranges(frontier, params.personas_per_shard, prefix="f"), llm, window)


def persona_graph_stages(
    run_ctx: RunContext, hop0: Manifest, params: GraphParams, llm: Any, llm_params: dict[str, Any],
    hub_files: list[str], hub_version: str | None, window: int,
) -> tuple[list[Manifest], list[StageReport]]:
    """Run every hop; returns (the node manifests of hops 1.., the stage reports).

    `llm_params` (template, mode, sampling, model, filters) are part of every hop's parameters."""
    exclude_files = list(hub_files)  # personas never expanded (again): the hub's and every earlier hop's
    candidates = hop0
    manifests: list[Manifest] = []
    reports: list[StageReport] = []
    for hop in range(1, params.hops + 1):
        frontier = run(run_ctx, Stage.one_shard(
            frontier_name(hop), frontier_params(hop, candidates, hub_version, params),
            frontier_task, candidate_files=candidates.files(), exclude_files=exclude_files))
        reports.append(frontier.report())
        exclude_files = exclude_files + candidates.files()
        if frontier.manifest.totals.rows_out == 0:
            break
        expanded = run(run_ctx, expansion_stage(hop, frontier.manifest, params, llm, llm_params, window))
        reports.append(expanded.report())
        manifests.append(expanded.manifest)
        candidates = expanded.manifest
    return manifests, reports


def persona_graph_estimate(
    run_ctx: RunContext, hop0: Manifest | None, hop0_at_most: int, params: GraphParams, llm_params: dict[str, Any],
    hub_version: str | None, model: str,
) -> list[estimate.StageEstimate]:
    """--dry-run of the hops, walking the checkpoints the way the run would: a hop whose frontier
    is checkpointed is estimated exactly (its requests against the cache); past the first hop whose
    parents are not known yet, each hop is a bound, min(max_new_per_hop, k x the previous hop's).

    `hop0` is the finished Text-to-Persona manifest (None when it has still to run), `hop0_at_most`
    the personas it can give at most."""
    max_tokens = int((llm_params.get("sampling") or {}).get("max_tokens") or 0)
    candidates, at_most = hop0, hop0_at_most
    out: list[estimate.StageEstimate] = []
    for hop in range(1, params.hops + 1):
        frontier = None
        if candidates is not None:
            frontier = StageCheckpoint(run_ctx.store, run_ctx.run_id, frontier_name(hop),
                                       frontier_params(hop, candidates, hub_version, params)).complete_manifest()
        if frontier is not None:
            if frontier.totals.rows_out == 0:
                break
            stage = expansion_stage(hop, frontier, params, None, llm_params, 1)
            out.append(estimate.estimate_llm_stage(run_ctx, stage, PersonaToPersona, model))
            candidates = estimate.finished(run_ctx, stage)
            at_most = candidates.totals.rows_out if candidates is not None else params.k * frontier.totals.rows_out
            continue
        expand = min(params.max_new_per_hop, at_most)
        if expand == 0:
            break
        out.append(estimate.bound(stage_name(hop), expand, max_tokens))
        candidates, at_most = None, expand * params.k
    return out
