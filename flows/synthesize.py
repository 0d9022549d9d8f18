"""synthesize: personas → one use case's items in one prompt mode (METHOD.md, "Persona-driven synthesis").

    personas (a hub version, or persona files → persona_input)
      → select_personas (the first n in seeded order, after the hop / relation / origin filters)
      → [persona-enhanced mode: demo_documents → demo_text_to_persona]
      → synthesize_<use case> (LLM: one request per persona; items, or quarantined answers with a reason)
      → [math: solve_math (several solvers, program-of-thought in the sandbox; k-of-n agreement)]
      → [tools: implement_tools (code per interface, checked by ast and an import in the sandbox)]
      → [judge (optional: scores on the use case's criteria)]
      → [decontaminate (when reference test sets are given: n-gram overlap)]
      → dataset (the run's items, runs/<run_id>/dataset/) and report.json beside it

The run id hashes what the items depend on except n, so raising --n reuses the run: the first n
personas are the same, their calls come from the cache, and only the new personas are paid for.
Each stage after synthesis reads the previous stage's items and passes on the ones it keeps, with
its own columns filled (answer and agreement, implementation, judge scores, contamination); what it
holds back stays readable in its `unverified` / `contaminated` table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from personahub.flows.run_controls import (EXECUTION_FIELDS, BudgetCost, BudgetTokens, EmbeddingModel, Fresh,
                                           LLMBaseUrl, LLMModel, MaxTokens, StoreUrl, Temperature)
from personahub.flows.stage_runner import task_runner, hold_run, reuse_summary, run
from personahub.tasks.core.checkpoint import params_hash
from personahub.tasks.core.run_context import RunContext
from personahub.tasks.core.settings import Settings, load_settings
from personahub.tasks.core.stage import Deferred, Stage, StageReport, StageResult, row_ranges
from personahub.tasks.crawl import plan_sources_task
from personahub.tasks.llm import estimate
from personahub.tasks.llm.budget import price_for, run_cost, spend_spec
from personahub.tasks.llm.meter import others_in_progress
from personahub.tasks.llm.gateway import Usage
from personahub.tasks.llm.stage import llm_stage_params
from personahub.tasks.llm.templates import PromptTemplate, load_template
from personahub.tasks.personas import input_files as persona_input
from personahub.tasks.personas.text_to_persona import TextToPersona
from personahub.tasks.serving.endpoint import LLMEndpoint, resolve_model
from personahub.tasks.synthesis import demos as demo_files
from personahub.tasks.synthesis import personas as persona_selection
from personahub.tasks.synthesis import dataset as dataset_stage
from personahub.tasks.synthesis.diversity import DiversityParams, diversity_task
from personahub.tasks.synthesis.persona_query import query_task
from personahub.tasks.synthesis import report as quality_report
from personahub.tasks.synthesis.conversations import ConversationTurn
from personahub.tasks.synthesis.decontamination import Decontamination, decontaminate_task, split_reference
from personahub.tasks.synthesis.judge import JudgeItems
from personahub.tasks.synthesis.math_solutions import DEFAULT_SOLVERS, SolveMath, SolverSpec, solver_templates
from personahub.tasks.synthesis.stage import Synthesize
from personahub.tasks.synthesis.tool_implementations import ImplementTools
from personahub.tasks.synthesis.use_cases import MODES, USE_CASES, SynthesisParamsError, use_case

DEMO_MAX_CHARS = 2000  # a demonstration's text sent to Text-to-Persona


class SynthesizeParams(BaseModel):
    """Parameters of a synthesis run; the Prefect UI renders them as a form."""

    use_case: str = Field(..., description=f"One of {', '.join(USE_CASES)}")
    mode: str = Field("few-shot", description=f"Prompt mode: {', '.join(MODES)}")
    selection: persona_selection.PersonaSelection = Field(default_factory=persona_selection.PersonaSelection)
    hub: str = Field("default", description="Hub whose personas are used (unless persona files are given)")
    hub_version: str | None = Field(None, description="Hub version, e.g. v0003 (default: latest)")
    personas: list[str] = Field(default_factory=list, description="Persona files instead of a hub (JSONL, JSON "
                                "array such as Persona Hub's, Parquet; files, directories, globs, any fsspec URL)")
    text_column: str | None = Field(None, description="Persona files' text column (default: persona, else text)")
    variables: dict[str, str] = Field(default_factory=dict, description="Template variables: math topic and level, "
                                      "logic variant (general, spatial, trick), npc world (the game's description)")
    demos: str | None = Field(None, description="Demonstrations file (JSONL of {output, vars}); default: the "
                              "use case's shipped prompts/<use case>/demos.jsonl")
    temperature: Temperature = None
    max_tokens: MaxTokens = None
    solve: bool = Field(True, description="math: solve each problem with the solvers; keep those they agree on")
    solvers: list[SolverSpec] = Field(default_factory=lambda: [s.model_copy() for s in DEFAULT_SOLVERS],
                                      description="math: the solvers (chain-of-thought / program-of-thought, seed)")
    min_agreement: int = Field(2, ge=1, description="math: solvers that must agree on the answer to keep a problem")
    implement: bool = Field(True, description="tools: write each interface's code and check it in the sandbox")
    sandbox_timeout_s: float = Field(10.0, gt=0, description="Wall-clock limit of one sandboxed program")
    sandbox_memory_mb: int = Field(512, ge=64, description="Address-space limit of one sandboxed program")
    turns: int = Field(0, ge=0, description="instructions: user turns of a conversation (0: the prompt alone; N: the "
                       "prompt and N-1 follow-ups by the persona, each answered by the assistant)")
    assistant_model: str | None = Field(None, description="Conversations: the assistant's model on the same endpoint "
                                        "(default: the run's model)")
    judge: bool = Field(False, description="Grade every item with the LLM judge on its use case's criteria")
    min_judge_score: float = Field(0.0, ge=0, le=5, description="Judge: the lowest mean score kept")
    decontamination: Decontamination = Field(default_factory=Decontamination)
    diversity: DiversityParams = Field(default_factory=DiversityParams)
    shard_rows: int = Field(500, ge=1, description="Personas per synthesis shard (one task, one checkpoint entry)")
    llm_shard_parallelism: int = Field(3, ge=1, description="LLM shards in flight; they share one request bound")
    budget_tokens: BudgetTokens = None
    budget_cost: BudgetCost = None
    dry_run: bool = Field(False, description="Estimate the run's calls and tokens (from the selection and the "
                          "cache) and stop before any LLM call")
    fresh: Fresh = False
    run_id: str | None = Field(None, description="Checkpoint folder; unset = derived from the parameters but n")
    store: StoreUrl = None
    llm_base_url: LLMBaseUrl = None
    llm_model: LLMModel = None
    embedding_base_url: str | None = Field(None, description="Override the embeddings endpoint (diversity); unset and "
                                           "unconfigured = embedded model")
    embedding_model: EmbeddingModel = None


def synthesis_run_id(params: SynthesizeParams, source: str) -> str:
    """A run id from what the items depend on, except n (raising n resumes the run) and where the
    run executes; `source` names the personas (hub version, or the persona files' shard ids)."""
    keys = params.model_dump(exclude=EXECUTION_FIELDS | {"shard_rows", "personas",
                                      "hub", "hub_version", "llm_base_url",
                                      "embedding_base_url"})
    keys["selection"].pop("n")
    return f"syn-{params.use_case}-{params_hash({**keys, 'source': source})[:10]}"


def template_variables(params: SynthesizeParams, template: PromptTemplate) -> dict[str, str]:
    """The use case's variables with their defaults, the user's values over them; a required one
    that is missing, or a variant the template does not define, is an error before anything runs."""
    case = use_case(params.use_case)
    unknown = sorted(set(params.variables) - set(case.variables) - set(case.required))
    if unknown:
        raise SynthesisParamsError(f"{case.name} takes no variable {', '.join(unknown)} "
                         f"(it takes: {', '.join([*case.variables, *case.required]) or 'none'})")
    missing = [name for name in case.required if not (params.variables.get(name) or "").strip()]
    if missing:
        raise SynthesisParamsError(f"{case.name} needs {', '.join(missing)} (e.g. --world-file or --var world=...)")
    values = {**case.variables, **params.variables}
    variants = template.extra.get("variants")
    if variants is not None and values.get("variant") not in variants:
        raise SynthesisParamsError(f"{case.name} has no variant {values.get('variant')!r} "
                                   f"(its variants: {', '.join(variants)})")
    return values


@dataclass(frozen=True)
class PersonaSource:
    """Where a run's personas come from: `name` goes into the run id; either the persona files to
    read into shards (`file_shards`, shard id → file) or a hub version's part files (`hub_files`),
    with its stored embedding index (`embedding_index`: model, dim, vector shards) if it has one."""

    name: str
    file_shards: dict[str, str] = field(default_factory=dict)
    hub_files: list[str] = field(default_factory=list)
    embedding_index: dict[str, Any] | None = None


def persona_source(settings: Settings, params: SynthesizeParams) -> PersonaSource:
    """The persona files' shards (named by path, size and mtime), or the hub version's parts
    (`latest` resolved, so a new version makes a new run)."""
    if params.personas:
        shards = plan_sources_task(params.personas, persona_input.FORMATS)
        return PersonaSource("files:" + params_hash({"shards": sorted(shards)})[:12], file_shards=shards)
    version, files, index = persona_selection.hub_parts_task(settings.store, settings.resolved_s3_endpoint(),
                                                             params.hub, params.hub_version)
    return PersonaSource(f"hub:{params.hub}/{version}", hub_files=files, embedding_index=index)


@flow(name="synthesize", log_prints=True, task_runner=task_runner())
def synthesize(params: SynthesizeParams) -> dict[str, Any]:
    """Synthesize one use case's items from personas in one prompt mode; resumable, cached."""
    started = time.monotonic()
    case = use_case(params.use_case)
    template = load_template(case.name, params.mode)  # an unknown mode fails here, before any work
    variables = template_variables(params, template)
    settings = load_settings(store=params.store, llm_base_url=params.llm_base_url, llm_model=params.llm_model,
                             embedding_base_url=params.embedding_base_url, embedding_model=params.embedding_model)
    model = resolve_model(settings)
    demos = demo_files.load_demos(case, params.demos) if params.mode != "zero-shot" else []
    if case.name == "math" and params.solve and params.min_agreement > len(params.solvers):
        raise SynthesisParamsError(f"min_agreement {params.min_agreement} exceeds the {len(params.solvers)} solvers")

    # 1. personas: a hub version or persona files, then the run's seeded selection
    source = persona_source(settings, params)
    run_id = params.run_id or synthesis_run_id(params, source.name)
    run_ctx = RunContext(settings.store, settings.resolved_s3_endpoint(), run_id)
    spend = spend_spec(run_id, params.budget_tokens, params.budget_cost, settings.llm_prices, model)  # refused before any call
    with hold_run(run_ctx, params.fresh):
        get_run_logger().info("synthesis run %s in %s", run_id, run_ctx.store.uri(f"runs/{run_id}"))
        reports: list[StageReport] = []
        files = source.hub_files
        if source.file_shards:
            read = run(run_ctx, Stage("persona_input", {"text_column": params.text_column}, source.file_shards,
                                      persona_input.read_task))
            files = read.manifest.files()
            reports.append(read.report())
        query_matches = None
        if params.selection.query:
            matched = query_personas(run_ctx, settings, params.selection, source)
            reports.append(matched.report())
            query_matches = matched.manifest.files()
        selected = run(run_ctx, Stage.one_shard(
            "select_personas", {"selection": params.selection.model_dump(), "source": source.name, "files": files},
            persona_selection.select_task, files=files, query_matches=query_matches))
        reports.append(selected.report())

        sampling = dict(template.params)
        sampling.update({k: v for k, v in (("temperature", params.temperature), ("max_tokens", params.max_tokens)) if v is not None})
        if params.dry_run:  # what the run would call, from the selection and the cache; nothing is asked
            return synthesis_estimate(run_ctx, params, case.name, template, sampling, model, variables, demos,
                                      selected.manifest.files())
        with LLMEndpoint(settings) as endpoint, others_in_progress(spend, run_ctx.store):
            llm = Deferred(lambda: {"base_url": endpoint.base_url, "model": model, "concurrency": settings.llm_max_concurrency,
                                "spend": spend})

            # 2. persona-enhanced mode: each demonstration's persona, inferred by Text-to-Persona
            demo_rows = [{"answer": d.answer, "persona": None} for d in demos]
            if params.mode == "persona-enhanced":
                demo_rows, demo_reports = demo_personas(run_ctx, demos, params.demos or "shipped", llm, model)
                reports.extend(demo_reports)

            # 3. the use case itself, in shards of shard_rows personas
            synthesis_params = {**llm_stage_params(template, sampling, model, {}), "use_case": case.name,
                                "variables": variables, "demos": demo_rows}
            items = run(run_ctx, Synthesize.stage(
                f"synthesize_{case.name}", {**synthesis_params, "input": selected.manifest.digest()},
                row_ranges(selected.manifest, params.shard_rows, prefix="items"), llm, params.llm_shard_parallelism))
            reports.append(items.report())
            stages = [items]

            # 4. decontamination first (it costs no call, and a copied test question is worth no solver's)
            if params.decontamination.references:
                stages.append(run(run_ctx, Stage(
                    "decontaminate", {"decontamination": params.decontamination.model_dump(),
                                      "references": reference_fingerprint(params.decontamination.references),
                                      "input": stages[-1].manifest.digest()},
                    row_ranges(stages[-1].manifest, params.shard_rows, prefix="decon"), decontaminate_task)))

            # 5. conversations: the persona's prompt answered, then its follow-ups, one half-turn per stage
            if case.name == "instructions" and params.turns:
                assistant = params.assistant_model or model
                assistant_llm = Deferred(lambda: {**llm(), "model": assistant})
                for turn in range(1, params.turns + 1):
                    for role in (("user",) if turn > 1 else ()) + ("assistant",):
                        half = load_template("conversation", role)
                        stages.append(run(run_ctx, ConversationTurn.stage(
                            f"conversation_{role}_{turn}",
                            {**llm_stage_params(half, dict(half.params), assistant if role == "assistant" else model, {}),
                             "input": stages[-1].manifest.digest()},
                            row_ranges(stages[-1].manifest, params.shard_rows, prefix=f"{role[0]}{turn}-"),
                            assistant_llm if role == "assistant" else llm, params.llm_shard_parallelism)))

            # 6. the stages that verify and grade what was written
            sandbox = {"timeout_s": params.sandbox_timeout_s, "memory_mb": params.sandbox_memory_mb}
            if case.name == "math" and params.solve:
                stages.append(run(run_ctx, SolveMath.stage(
                    "solve_math", {"solvers": [s.model_dump() for s in params.solvers],
                                   "templates": solver_templates(params.solvers), "min_agreement": params.min_agreement,
                                   "sandbox": sandbox, "model": model, "input": stages[-1].manifest.digest()},
                    row_ranges(stages[-1].manifest, params.shard_rows, prefix="solve"), llm, params.llm_shard_parallelism)))
            if case.name == "tools" and params.implement:
                impl = load_template("tool_implementation", "zero-shot")
                stages.append(run(run_ctx, ImplementTools.stage(
                    "implement_tools", {**llm_stage_params(impl, dict(impl.params), model, {}), "sandbox": sandbox,
                                        "input": stages[-1].manifest.digest()},
                    row_ranges(stages[-1].manifest, params.shard_rows, prefix="impl"), llm, params.llm_shard_parallelism)))
            if params.judge:
                judge = load_template("judge", "zero-shot")
                stages.append(run(run_ctx, JudgeItems.stage(
                    "judge", {**llm_stage_params(judge, dict(judge.params), model, {}), "use_case": case.name,
                              "min_score": params.min_judge_score, "input": stages[-1].manifest.digest()},
                    row_ranges(stages[-1].manifest, params.shard_rows, prefix="judge"), llm, params.llm_shard_parallelism)))
            reports.extend(stage.report() for stage in stages[1:])
            final = run(run_ctx, Stage("dataset", {"use_case": case.name, "input": stages[-1].manifest.digest()},
                                       row_ranges(stages[-1].manifest, params.shard_rows, prefix="part-"),
                                       dataset_stage.copy_rows_task))

            # 7. diversity (Figure 10): persona pairs near each target similarity, their greedy outputs compared
            diverse = None
            if params.diversity.enabled:
                from personahub.tasks.serving.embedding_server import EmbeddingEndpoint  # torch loads only when it runs

                with EmbeddingEndpoint(settings) as embedder:
                    embeddings = Deferred(lambda: embedder.worker_config())
                    diverse = run(run_ctx, Stage.one_shard(
                        "diversity", {"diversity": params.diversity.model_dump(), "selection": params.selection.model_dump(),
                                      "synthesis": synthesis_params, "embedding_model": embedder.model,
                                      "source": source.name, "dataset": final.manifest.digest()},
                        diversity_task, files=files, hub_index=source.embedding_index, llm=llm,
                        embeddings=embeddings, dataset_files=final.manifest.files()))
                reports.append(diverse.report())

        usage_now = Usage.merge([Usage.from_dict(r.usage_now) for r in reports]).as_dict()
        summary = {
            "run_id": run_id,
            "run": run_ctx.store.uri(f"runs/{run_id}"),
            "use_case": case.name,
            "mode": template.mode,
            "template": template.ref,
            "model": model,
            "source": source.name,
            "personas": selected.manifest.totals.rows_out,
            "items": final.manifest.totals.rows_out,
            "generated": items.manifest.totals.rows_out,
            "quarantined": items.manifest.totals.quarantined,
            "generated_files": items.manifest.files(),
            "dataset_path": run_ctx.store.uri(f"runs/{run_id}/dataset"),
            "dataset_files": final.manifest.files(),
            "stages": [r.as_dict() for r in reports],
            "llm_this_run": usage_now,
            "cost_usd": run_cost(settings.llm_prices, model, usage_now),
            "elapsed_s": round(time.monotonic() - started, 1),
            "reused": reuse_summary(reports),
            "params": params.model_dump(exclude={"llm_base_url", "embedding_base_url", "store"}),
        }
        manifests = {s.manifest.stage: s.manifest for s in [*stages, *([diverse] if diverse else [])]}
        report = quality_report.build_report(run_ctx.store, summary, manifests)
        quality_report.write_report(run_ctx.store, run_id, report, manifests.get("diversity"))
        summary["report"] = run_ctx.store.uri(quality_report.report_path(run_id))
        create_markdown_artifact(key=f"synthesize-{case.name}-report", markdown=quality_report.markdown(report),
                                 description="synthesis quality report: validity, verification, decontamination, spread")
        return summary


def synthesis_estimate(run_ctx: RunContext, params: SynthesizeParams, case: str, template: Any,
                       sampling: dict[str, Any], model: str, variables: dict[str, str], demos: list[Any],
                       selected_files: list[str]) -> dict[str, Any]:
    """--dry-run: the synthesis stage's calls exactly (its requests built and looked up in the
    cache), the later stages' as upper bounds (every item valid)."""
    store = run_ctx.store
    estimates: list[estimate.StageEstimate] = []
    if params.mode == "persona-enhanced":  # the demonstrations' personas are not known yet
        t2p = load_template("text_to_persona", TextToPersona.default_mode)
        estimates.append(estimate.bound("demo_text_to_persona", len(demos), int(t2p.params.get("max_tokens") or 0)))
    stage = Synthesize({**llm_stage_params(template, sampling, model, {}), "use_case": case, "variables": variables,
                        "demos": [{"answer": d.answer, "persona": None} for d in demos]})
    rows = [row for f in selected_files for row in store.read_parquet(f, columns=Synthesize.columns).to_pylist()]
    estimates.append(estimate.estimate_requests(f"synthesize_{case}", store, model,
                                                (r for row in rows for r in stage.requests(row)),
                                                exact=params.mode != "persona-enhanced"))
    items = len(rows)

    def per_item(name: str, task: str, mode: str, calls: int) -> None:
        estimates.append(estimate.bound(name, items * calls, int(load_template(task, mode).params.get("max_tokens") or 0)))

    if case == "instructions" and params.turns:
        per_item("conversation_assistant", "conversation", "assistant", params.turns)
        if params.turns > 1:
            per_item("conversation_user", "conversation", "user", params.turns - 1)
    if case == "math" and params.solve:
        for kind in sorted({s.kind for s in params.solvers}):
            per_item(f"solve_math ({kind})", "math_solution", kind, sum(s.kind == kind for s in params.solvers))
    if case == "tools" and params.implement:
        per_item("implement_tools", "tool_implementation", "zero-shot", 1)
    if params.judge:
        per_item("judge", "judge", "zero-shot", 1)
    if params.diversity.enabled:
        pairs = len(params.diversity.targets) * params.diversity.pairs * 2
        estimates.append(estimate.bound("diversity", pairs, int(sampling.get("max_tokens") or 0)))
    price = price_for(load_settings(store=params.store).llm_prices, model)
    return {**estimate.dry_run_summary(run_ctx.run_id, model, f"{case}, {template.mode}, {items} personas", estimates, price),
            "use_case": case, "mode": template.mode, "personas": items}


def reference_fingerprint(references: list[str]) -> list[str]:
    """The reference files by path, size and modification time: a changed test set reruns the check."""
    paths = [split_reference(r)[0] for r in references]
    return sorted(plan_sources_task(paths, persona_input.FORMATS))


def query_personas(run_ctx: RunContext, settings: Settings, selection: persona_selection.PersonaSelection,
                   source: PersonaSource) -> StageResult:
    """The top query_k personas of the hub version by cosine to the text query, from its stored vectors."""
    from personahub.tasks.serving.embedding_server import EmbeddingEndpoint  # torch loads only when it runs

    index = source.embedding_index
    if not index or not index.get("shards"):
        raise SynthesisParamsError(f"a text query needs a hub version with stored embedding vectors; {source.name} has "
                                   "none (persona files, or a hub built with embedding dedup off)")
    with EmbeddingEndpoint(settings) as embedder:
        if embedder.model != index["model"]:
            raise SynthesisParamsError(f"{source.name}'s vectors are from {index['model']!r}, the embedding endpoint "
                                       f"serves {embedder.model!r}: a query needs the model that made them")
        return run(run_ctx, Stage.one_shard(
            "query_personas", {"query": selection.query, "k": selection.query_k, "source": source.name,
                               "model": embedder.model},
            query_task, index=index, embeddings=Deferred(lambda: embedder.worker_config())))


def demo_personas(run_ctx: RunContext, demos: list[demo_files.Demo], source: str, llm: Deferred,
                  model: str) -> tuple[list[dict[str, Any]], list[StageReport]]:
    """The demonstrations with the personas Text-to-Persona inferred for them (relation "write").
    A demonstration whose persona was quarantined is left out; none left is an error."""
    documents = run(run_ctx, Stage.one_shard("demo_documents", {"demos": [d.answer for d in demos], "source": source},
                                             demo_files.demo_documents_task, demos=demos, source=source))
    t2p_template = load_template("text_to_persona", TextToPersona.default_mode)
    inferred = run(run_ctx, TextToPersona.stage(
        "demo_text_to_persona", {**llm_stage_params(t2p_template, dict(t2p_template.params), model, {}),
                                 "relations": ["write"], "max_doc_chars": DEMO_MAX_CHARS,
                                 "input": documents.manifest.digest()},
        row_ranges(documents.manifest, len(demos)), llm, 1))
    personas = demo_files.demo_personas_task(run_ctx, inferred.manifest.files())
    rows = [{"answer": d.answer, "persona": personas[d.doc_id]} for d in demos if d.doc_id in personas]
    if not rows:
        reasons = inferred.report().reasons
        raise SynthesisParamsError(f"Text-to-Persona gave no demonstration a persona ({reasons}); use other demonstrations "
                         "(--demos) or the few-shot mode")
    return rows, [documents.report(), inferred.report()]
