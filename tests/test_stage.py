"""The stage contract: typed manifests and their lookups, row ranges, the refilling runner, the
endpoint's shared concurrency bound."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from personahub.flows.stage_runner import run
from personahub.tasks.core.checkpoint import CheckpointError, Manifest, ShardCounts, ShardRecord
from personahub.tasks.core.run_context import RunContext
from personahub.tasks.core.stage import Deferred, RowRange, Stage, StageRef, row_ranges
from personahub.tasks.core.store import Store
from personahub.tasks.llm.concurrency import SharedLimit, limit_for


def shard(sid: str, rows: int, kind: str = "data", made_by: str = "p1") -> ShardRecord:
    return ShardRecord(sid, {kind: f"runs/r/s/{kind}/{sid}.parquet"}, {kind: rows}, ShardCounts(rows, rows),
                       params_hash=made_by)


# --- Manifest ------------------------------------------------------------------------------------
def test_manifest_lookups_skip_empty_shards_and_follow_shard_ids() -> None:
    m = Manifest((shard("s2", 3), shard("s0", 0), shard("s1", 5)), stage="s")
    assert m.inputs() == {"s1": "runs/r/s/data/s1.parquet", "s2": "runs/r/s/data/s2.parquet"}
    assert m.files() == ["runs/r/s/data/s1.parquet", "runs/r/s/data/s2.parquet"]
    assert m.rows() == 8 and m.rows("edges") == 0 and m.files("edges") == []
    assert m.totals == ShardCounts(8, 8)
    with pytest.raises(CheckpointError, match="3 shards"):
        m.only_shard()
    assert Manifest.from_json(m.to_json()) == m


def test_digest_follows_files_rows_and_the_parameters_that_made_them() -> None:
    base = Manifest((shard("a", 2), shard("b", 3)))
    assert base.digest() == Manifest((shard("a", 2), shard("b", 3))).digest()
    assert base.digest() != Manifest((shard("a", 2), shard("b", 4))).digest()
    assert base.digest() != Manifest((shard("a", 2),)).digest()
    # the same files rewritten by the stage with other parameters: downstream must not skip
    assert base.digest() != Manifest((shard("a", 2), shard("b", 3, made_by="p2"))).digest()


def test_combine_and_of_files() -> None:
    nodes = Manifest.combine("nodes", [("h0", Manifest((shard("s1", 2),))), ("h1", Manifest((shard("f00000", 1),)))])
    assert [s.id for s in nodes.shards] == ["h0-s1", "h1-f00000"] and nodes.rows() == 3
    parts = Manifest.of_files("hub", [("hubs/x/v1/p0.parquet", 4), ("hubs/x/v1/p1.parquet", 0)], prefix="hub")
    assert parts.inputs() == {"hub00000": "hubs/x/v1/p0.parquet"} and parts.rows() == 4


# --- row ranges ----------------------------------------------------------------------------------
def test_row_ranges_cut_large_shards_and_keep_small_ones() -> None:
    m = Manifest((shard("big", 5), shard("empty", 0), shard("small", 2)))
    assert row_ranges(m, 2) == {
        "big-0000": RowRange("runs/r/s/data/big.parquet", 0, 2),
        "big-0001": RowRange("runs/r/s/data/big.parquet", 2, 4),
        "big-0002": RowRange("runs/r/s/data/big.parquet", 4, 5),
        "small": RowRange("runs/r/s/data/small.parquet", 0, 2),
    }
    assert list(row_ranges(m, 3, prefix="f")) == ["f00000", "f00001", "f00002"]
    assert sum(r.rows for r in row_ranges(m, 3).values()) == 7


def test_read_parquet_rows_reads_the_range_across_row_groups(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    table = pa.table({"i": list(range(23)), "s": [f"row {i}" for i in range(23)]})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=5)
    assert pq.ParquetFile(tmp_path / "t.parquet").num_row_groups == 5
    for start, stop in [(0, 23), (0, 1), (4, 6), (5, 10), (7, 19), (22, 23), (10, 10)]:
        got = store.read_parquet_rows("t.parquet", start, stop, columns=["i"])
        assert got.column("i").to_pylist() == list(range(start, stop))
    assert store.read_parquet_rows("t.parquet", 30, 40).num_rows == 0


# --- the runner ----------------------------------------------------------------------------------
RELEASE = threading.Event()
MADE: list[int] = []  # how often the Deferred argument was computed (flow parameters are copies)


@task(name="test-shard", cache_policy=NO_CACHE)
def gated_task(stage: StageRef, shard_id: str, rows: int, *, note: str) -> dict:
    """The "slow" shard waits until the last shard has started: only a window that refills lets
    that happen (a barrier of two would wait on the slow shard forever)."""
    if shard_id == "slow":
        assert RELEASE.wait(60), "the last shard never started while the slow one ran"
    if shard_id == "last":
        RELEASE.set()
    stage.checkpoint.write_shard(shard_id, {"data": pa.table({"n": list(range(rows))})}, ShardCounts(rows, rows),
                                 extra={"note": note})
    return {}


@flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
def one_stage(store_url: str) -> tuple:
    ctx = RunContext(store_url, None, "r1")
    stage = Stage("gated", {"p": 1}, {"slow": 2, "a": 1, "b": 3, "last": 1}, gated_task,
                  {"note": Deferred(lambda: MADE.append(1) or "computed")}, window=2)
    first = run(ctx, stage)
    second = run(ctx, stage)
    return first, second


def test_the_window_refills_and_a_complete_stage_is_skipped(tmp_path: Path) -> None:
    RELEASE.clear()
    MADE.clear()
    first, second = one_stage(str(tmp_path / "store"))
    assert not first.skipped and sorted(first.run_now) == ["a", "b", "last", "slow"]
    assert first.manifest.rows() == 7 and [s.id for s in first.manifest.shards] == ["a", "b", "last", "slow"]
    assert {s.extra["note"] for s in first.manifest.shards} == {"computed"}
    assert second.skipped and second.run_now == () and second.manifest == first.manifest
    assert MADE == [1], "the Deferred argument is computed once, and not at all for a skipped stage"
    report = first.report()
    assert (report.shards, report.shards_run, report.counts) == (4, 4, ShardCounts(7, 7))


# --- the shared concurrency bound ----------------------------------------------------------------
def test_one_limit_bounds_coroutines_on_several_event_loops() -> None:
    limit = SharedLimit(3)
    active = peak = 0
    lock = threading.Lock()

    async def call() -> None:
        nonlocal active, peak
        async with limit:
            with lock:
                active += 1
                peak = max(peak, active)
            await asyncio.sleep(0.01)
            with lock:
                active -= 1

    async def many() -> None:
        await asyncio.gather(*(call() for _ in range(20)))

    threads = [threading.Thread(target=asyncio.run, args=(many(),)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert peak <= 3 and limit.in_use == 0
    assert peak == 3, "60 waiting calls fill every slot"


def test_cancelled_waiters_give_their_slot_back() -> None:
    limit = SharedLimit(1)

    async def scenario() -> None:
        await limit.acquire()
        waiters = [asyncio.create_task(limit.acquire()) for _ in range(3)]
        await asyncio.sleep(0)
        waiters[0].cancel()
        limit.release()  # the slot goes to waiter 1 (waiter 0 was cancelled)
        await asyncio.sleep(0.01)
        waiters[2].cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        assert waiters[1].done() and not waiters[1].cancelled()
        limit.release()

    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert limit.in_use == 0


def test_limits_are_per_endpoint_and_size() -> None:
    assert limit_for("http://a/v1", 4) is limit_for("http://a/v1", 4)
    assert limit_for("http://a/v1", 4) is not limit_for("http://b/v1", 4)
    assert limit_for("http://a/v1", 4).slots == 4


# --- the report ----------------------------------------------------------------------------------
def test_markdown_and_terminal_tables_show_the_same_rows() -> None:
    from rich.console import Console

    from personahub.tasks.core.report import stages_markdown, stages_table

    stages = [
        {"stage": "crawl", "skipped": False, "shards": 3, "shards_run": 2, "reasons": {"too_short": 4},
         "counts": {"rows_in": 10, "rows_out": 6, "filtered": 4, "quarantined": 0}, "usage": {}},
        {"stage": "text_to_persona", "skipped": True, "shards": 1, "shards_run": 0, "reasons": {},
         "counts": {"rows_in": 6, "rows_out": 5, "filtered": 0, "quarantined": 1},
         "usage": {"calls": 6, "total_tokens": 900}},
    ]
    md = stages_markdown(stages)
    assert md[2] == "| crawl | 3 (2) | 10 | 6 | 4 | 0 | too_short: 4 | - | - |"
    assert md[3] == "| text_to_persona | 1 (skipped) | 6 | 5 | 0 | 1 | - | 6 | 900 |"
    console = Console(width=200, record=True)
    console.print(stages_table(stages))
    text = console.export_text()
    for cell in ("crawl", "3 (2)", "too_short: 4", "1 (skipped)", "900"):
        assert cell in text


FAIL_ONCE: set[str] = set()


@task(name="test-flaky-shard", cache_policy=NO_CACHE)
def flaky_task(stage: StageRef, shard_id: str, rows: int) -> dict:
    if shard_id in FAIL_ONCE:
        FAIL_ONCE.discard(shard_id)
        raise RuntimeError(f"{shard_id} broke")
    stage.checkpoint.write_shard(shard_id, {"data": pa.table({"n": list(range(rows))})}, ShardCounts(rows, rows))
    return {}


@flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
def flaky_stage(store_url: str) -> object:
    return run(RunContext(store_url, None, "r2"), Stage("flaky", {}, {"s1": 1, "s2": 2, "s3": 3, "s4": 4}, flaky_task))


def test_a_failed_shard_stops_the_stage_and_a_rerun_runs_only_it(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    FAIL_ONCE.clear()
    FAIL_ONCE.add("s2")
    with pytest.raises(RuntimeError, match="s2 broke"):
        flaky_stage(url)
    ref = StageRef(RunContext(url, None, "r2"), "flaky", {})
    done = set(ref.checkpoint.done_shards())
    assert "s2" not in done and ref.checkpoint.manifest() is None, "no manifest while a shard is missing"
    again = flaky_stage(url)
    assert set(again.run_now) == {"s1", "s2", "s3", "s4"} - done and again.manifest.rows() == 10


def test_an_llm_stage_runs_the_one_shard_task_under_its_own_name() -> None:
    from personahub.tasks.llm.stage import llm_shard_task
    from personahub.tasks.personas.persona_to_persona import PersonaToPersona
    from personahub.tasks.personas.text_to_persona import TextToPersona

    t2p = TextToPersona.stage("text_to_persona", {"p": 1}, {"s": RowRange("f", 0, 1)}, {"base_url": "u"}, 3)
    p2p = PersonaToPersona.stage("persona_to_persona_h1", {}, {}, {"base_url": "u"}, 2)
    assert (t2p.task.name, p2p.task.name) == ("text-to-persona", "persona-to-persona")
    assert t2p.task.fn is p2p.task.fn is llm_shard_task.fn
    assert t2p.shared == {"llm": {"base_url": "u"}, "kind": TextToPersona} and t2p.window == 3
