"""Persona-to-Persona: expand the hop-0 personas for `hops` rounds into a graph (METHOD.md, step 2).

Each hop is two checkpointed stages: p2p_frontier_h<N> chooses which personas to expand (the new
ones of the previous hop, not already expanded nor in the published hub, at most max_new_per_hop by
a seeded hash), and persona_to_persona_h<N> asks the LLM for k related personas of each.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from personahub.flows.stage_runner import run
from personahub.tasks.core.checkpoint import Manifest
from personahub.tasks.core.run_context import RunContext
from personahub.tasks.core.stage import Stage, StageReport, row_ranges
from personahub.tasks.personas.frontier import frontier_task
from personahub.tasks.personas.persona_to_persona import PersonaToPersona, stage_name


class GraphParams(BaseModel):
    hops: int = Field(6, ge=0, le=20, description="Persona-to-Persona rounds (six degrees of separation)")
    k: int = Field(3, ge=1, le=8, description="Related personas asked for per persona")
    max_new_per_hop: int = Field(32, ge=1, description="Personas expanded per hop at most (seeded sample)")
    seed: int = Field(0, description="Seed of the frontier sample")
    personas_per_shard: int = Field(200, ge=1, description="Personas per expansion task")


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
            f"p2p_frontier_h{hop}", {"hop": hop, "input": candidates.digest(), "hub_version": hub_version,
                                     "max_new": params.max_new_per_hop, "seed": params.seed},
            frontier_task, candidate_files=candidates.files(), exclude_files=exclude_files))
        reports.append(frontier.report())
        exclude_files = exclude_files + candidates.files()
        if frontier.manifest.totals.rows_out == 0:
            break
        expanded = run(run_ctx, PersonaToPersona.stage(
            stage_name(hop), {**llm_params, "hop": hop, "k": params.k, "input": frontier.manifest.digest()},
            row_ranges(frontier.manifest, params.personas_per_shard, prefix="f"), llm, window))
        reports.append(expanded.report())
        manifests.append(expanded.manifest)
        candidates = expanded.manifest
    return manifests, reports
