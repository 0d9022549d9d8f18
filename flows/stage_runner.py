"""How a flow runs one checkpointed stage (tasks/core/stage.py), shared by every flow.

Finished stages are skipped, finished shards are not rerun, and the shards that run go through a
window that refills as each one finishes: a slow shard never holds back the next ones.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Iterator
from typing import Any

from prefect import get_run_logger
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from personahub.tasks.core import progress
from personahub.tasks.core.checkpoint import Manifest
from personahub.tasks.core.run_context import RunContext
from personahub.tasks.core.run_lock import RunLock
from personahub.tasks.core.stage import Stage, StageReport, StageResult
from personahub.tasks.dedup import exact as dedup_exact

# Threads of a flow process's task runner: room for the CPU-bound shards (each stage's window, 2 by
# default: tasks/core/stage.py) plus LLM shards, which mostly wait on the endpoint and run a window of
# llm_shard_parallelism. Past one machine, Dask sets it.
TASK_WORKERS = 4


def task_runner(dask_address: str | None = None) -> TaskRunner:
    """Where a flow's shard tasks run: threads of the flow's process, or the dask.distributed
    cluster at `dask_address` (else settings.dask_address) through prefect-dask. The tasks are the
    same either way: they get a RunContext and open the store themselves."""
    from personahub.tasks.core.settings import load_settings

    address = dask_address or load_settings().dask_address
    if address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=address)
    return ThreadPoolTaskRunner(max_workers=TASK_WORKERS)


@contextlib.contextmanager
def hold_run(run_ctx: RunContext, fresh: bool = False) -> Iterator[RunLock]:
    """Hold the run id's lock for a flow's body; with `fresh`, drop its checkpoints first.

    A second run on the same id is refused (RunLocked); a killed run's lock is taken over, which
    is how a rerun or a Prefect retry of a crashed flow run resumes. `fresh` recomputes every stage;
    LLM answers still come from the cache, which is keyed by content, not by run.
    """
    logger = get_run_logger()
    with RunLock(run_ctx.store, run_ctx.run_id) as lock:
        if lock.took_over is not None:
            logger.warning("run %s: took over the lock of process %d on %s (gone or silent)", run_ctx.run_id,
                           lock.took_over.pid, lock.took_over.host)
        if fresh:
            for stage in run_ctx.store.subdirs(f"runs/{run_ctx.run_id}"):
                run_ctx.store.delete(f"runs/{run_ctx.run_id}/{stage}", recursive=True)
            logger.info("run %s: --fresh, checkpoints removed", run_ctx.run_id)
        yield lock


def reuse_summary(reports: list[StageReport]) -> dict[str, int]:
    """What this run took from earlier work: finished shards skipped, and calls answered by the cache."""
    shards = sum(r.shards for r in reports)
    run_now = sum(r.shards_run for r in reports)
    return {"shards": shards, "shards_reused": shards - run_now,
            "cache_hits": sum(int(r.usage_now.get("cache_hits", 0)) for r in reports)}


def run(run_ctx: RunContext, stage: Stage[Any]) -> StageResult:
    """Run the shards the stage's checkpoint lacks, at most `stage.window` at a time, then finalize it.

    A stage is skipped only when its manifest matches its parameters and lists exactly these
    shards: a new input file adds a shard, which runs while the others stay done.
    """
    logger = get_run_logger()
    ref = stage.ref(run_ctx)
    checkpoint = ref.checkpoint
    manifest = checkpoint.complete_manifest()
    if manifest is not None and {s.id for s in manifest.shards} == set(stage.inputs):
        logger.info("%s: complete, skipped (%s)", stage.name, checkpoint.store.uri(checkpoint.prefix))
        progress.stage_finished(progress.stage_started(stage.name, len(stage.inputs), len(stage.inputs)))
        return StageResult(manifest, (), True)
    done = checkpoint.done_shards()
    todo = [sid for sid in stage.inputs if sid not in done]
    logger.info("%s: %d shards, %d already done, %d to run", stage.name, len(stage.inputs),
                len(stage.inputs) - len(todo), len(todo))
    finished: queue.Queue[Any] = queue.Queue()
    waiting = iter(todo)
    in_flight = 0
    failure: BaseException | None = None
    shared = stage.shared_values() if todo else {}
    watched = progress.stage_started(stage.name, len(stage.inputs), len(stage.inputs) - len(todo))
    artifact = _progress_artifact(stage.name, watched)

    def submit_next() -> bool:
        sid = next(waiting, None)
        if sid is None:
            return False
        future = stage.task.submit(ref, sid, stage.inputs[sid], **shared)
        future.add_done_callback(finished.put)
        return True

    while in_flight < stage.window and submit_next():
        in_flight += 1
    while in_flight:
        future = finished.get()
        in_flight -= 1
        try:
            future.result()
        except BaseException as exc:  # noqa: BLE001 - the shards in flight finish (and stay done) first
            failure = failure or exc
        else:
            progress.shard_finished(watched)
            _update_artifact(artifact, watched)
        if failure is None and submit_next():
            in_flight += 1
    progress.stage_finished(watched)
    if failure is not None:
        raise failure
    return StageResult(checkpoint.finalize(expected_shards=stage.inputs.keys()), tuple(todo), False)


def _progress_artifact(name: str, watched: progress.StageProgress) -> Any:
    """A Prefect progress artifact per stage run (the UI's bar); None where it cannot be made."""
    if watched.shards < 2:  # one shard: done or not, a bar says nothing the task state does not
        return None
    try:
        from prefect.artifacts import create_progress_artifact

        return create_progress_artifact(100.0 * watched.shards_done / watched.shards, key=_artifact_key(name),
                                        description=f"{name}: shards done of {watched.shards}")
    except Exception:  # noqa: BLE001 - progress is for watching; a run never fails on it
        return None


def _update_artifact(artifact: Any, watched: progress.StageProgress) -> None:
    if artifact is None:
        return
    try:
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(artifact, 100.0 * watched.shards_done / watched.shards)
    except Exception:  # noqa: BLE001
        pass


def _artifact_key(name: str) -> str:
    return "progress-" + "".join(c if c.isalnum() else "-" for c in name.lower())


def run_exact_dedup(
    run_ctx: RunContext,
    name: str,
    upstream: Manifest,
    spec: str,
    rows_per_bucket: int,
    prefilter: dedup_exact.BucketFilter | None = None,
    extra_params: dict[str, Any] | None = None,
    min_buckets: int = 1,
) -> StageResult:
    """Exact dedup of an upstream stage's data in two passes (partition by key, then per bucket).

    A bucket is read whole in pass 2, so its size bounds memory: at most rows_per_bucket rows, and
    at least min_buckets buckets (callers that know their bytes ask for more).
    """
    n_buckets = max(min_buckets, dedup_exact.bucket_count(upstream.rows(), rows_per_bucket))
    parts = run(run_ctx, Stage(f"{name}_partition", {"spec": spec, "n_buckets": n_buckets, "input": upstream.digest()},
                               upstream.inputs(), dedup_exact.partition_task))
    buckets = dedup_exact.files_by_bucket(parts.manifest)
    params = {"spec": spec, "input": parts.manifest.digest(), **(extra_params or {})}
    return run(run_ctx, Stage(name, params, buckets, dedup_exact.dedup_bucket_task, {"prefilter": prefilter}))
