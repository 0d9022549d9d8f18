"""The stage contract: a stage is one object, and what it did is one typed result.

A `Stage` names itself, its parameters, its input shards and the Prefect task that makes one shard,
once; flows/stage_runner.py runs it against its checkpoint under runs/<run_id>/<stage>/. The task
gets a `StageRef` (small, picklable, secret-free: it travels to Dask workers) and opens the same
checkpoint from it, so a stage's folder is named in exactly one place.

Every shard task has one signature: ``task(stage: StageRef, shard_id: str, input, **shared)``;
`input` is that shard's own input (a file, a list of files, a partition number) and `shared` what
every shard gets alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, TypeVar

from personahub.tasks.core.checkpoint import Manifest, ShardCounts, StageCheckpoint, canonical_params
from personahub.tasks.core.run_context import RunContext
from personahub.tasks.core.store import Store

I = TypeVar("I")

ONE_SHARD = "all"
# CPU-bound shards in flight: the reference machine has 2 cores, and more shards add memory (one
# batch each), not speed: 4 → 2 cut the crawl's peak RSS from 1.25 GB to 0.87 GB on 2 GB of JSONL at
# the same MB/s (BENCHMARKS.md).
CPU_WINDOW = 2  # the shard id of a stage that reads all of its inputs at once (a selection)


@dataclass(frozen=True)
class StageRef:
    """What a shard task needs to find its stage: the run, the stage's name and its parameters."""

    run: RunContext
    name: str
    params: Mapping[str, Any]

    @property
    def checkpoint(self) -> StageCheckpoint:
        return StageCheckpoint(self.run.store, self.run.run_id, self.name, self.params)

    @property
    def store(self) -> Store:
        return self.run.store


class Deferred:
    """A shared argument computed once, only if a shard of the stage runs (the embedded server's
    URL: a rerun whose LLM stages are all done starts no server)."""

    def __init__(self, make: Callable[[], Any]):
        self._make = make

    def __call__(self) -> Any:
        if not hasattr(self, "_value"):
            self._value = self._make()
        return self._value


@dataclass(frozen=True)
class Stage(Generic[I]):
    """One checkpointed stage: `task` runs once per entry of `inputs` (shard id → its input).

    `window` bounds the shards in flight; the runner refills it as each one finishes. `shared`
    goes to every shard as keyword arguments; it must follow from `params` and the inputs (it is
    not hashed), e.g. the endpoint's URL or a selection's input list.
    """

    name: str
    params: Mapping[str, Any]
    inputs: Mapping[str, I]
    task: Any  # a prefect Task: task.submit(StageRef, shard_id, input, **shared)
    shared: Mapping[str, Any] = field(default_factory=dict)
    window: int = CPU_WINDOW

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", canonical_params(self.params))
        if self.window < 1:
            raise ValueError(f"{self.name}: window must be at least 1")

    @classmethod
    def one_shard(cls, name: str, params: Mapping[str, Any], task: Any, **shared: Any) -> "Stage[None]":
        """A stage whose one task reads every input (given in `shared`)."""
        return cls(name, params, {ONE_SHARD: None}, task, shared, window=1)

    def ref(self, run: RunContext) -> StageRef:
        return StageRef(run, self.name, self.params)

    def shared_values(self) -> dict[str, Any]:
        """`shared` with its Deferred values computed (called before the first shard is submitted)."""
        return {k: v() if isinstance(v, Deferred) else v for k, v in self.shared.items()}


@dataclass(frozen=True)
class StageReport:
    """A stage's counts, reasons and LLM usage, summed over its shards whichever run made them;
    `usage_now` only over the shards this run made (what this run paid for)."""

    stage: str
    skipped: bool
    shards: int
    shards_run: int
    counts: ShardCounts
    reasons: dict[str, int]
    usage: dict[str, int]
    usage_now: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        """The JSON of a flow's summary."""
        return {"stage": self.stage, "skipped": self.skipped, "shards": self.shards, "shards_run": self.shards_run,
                "counts": asdict(self.counts), "reasons": self.reasons, "usage": self.usage}


@dataclass(frozen=True)
class StageResult:
    """What running a stage gave: its manifest, the shards run now, and whether it was skipped."""

    manifest: Manifest
    run_now: tuple[str, ...] = ()
    skipped: bool = False

    def report(self) -> StageReport:
        now = set(self.run_now)
        usage_now: dict[str, int] = {}
        for shard in self.manifest.shards:
            if shard.id in now:
                for key, n in (shard.extra.get("usage") or {}).items():
                    usage_now[key] = usage_now.get(key, 0) + n
        return StageReport(
            stage=self.manifest.stage,
            skipped=self.skipped,
            shards=len(self.manifest.shards),
            shards_run=len(self.run_now),
            counts=self.manifest.totals,
            reasons=dict(sorted(self.manifest.extra_sums("reasons").items())),
            usage=self.manifest.extra_sums("usage"),
            usage_now=usage_now,
        )


@dataclass(frozen=True)
class RowRange:
    """Rows [start, stop) of one upstream file: the input of a shard cut to its own size (an LLM
    shard of a few thousand documents from a crawl bucket of 200,000)."""

    file: str
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def row_ranges(upstream: Manifest, rows_per_shard: int, kind: str = "data", prefix: str | None = None) -> dict[str, RowRange]:
    """The upstream's `kind` rows cut into shards of at most rows_per_shard rows, in shard-id order.

    Shard ids: with `prefix`, prefix00000, prefix00001, ... across the whole upstream; without, an
    upstream shard that fits keeps its id and a larger one becomes <id>-0000, <id>-0001, ...
    """
    if rows_per_shard < 1:
        raise ValueError("rows_per_shard must be at least 1")
    out: dict[str, RowRange] = {}
    for shard in sorted(upstream.shards, key=lambda s: s.id):
        n = shard.rows_of(kind)
        if n == 0:
            continue
        pieces = range(0, n, rows_per_shard)
        for i, start in enumerate(pieces):
            if prefix is not None:
                sid = f"{prefix}{len(out):05d}"
            else:
                sid = shard.id if len(pieces) == 1 else f"{shard.id}-{i:04d}"
            out[sid] = RowRange(shard.files[kind], start, min(n, start + rows_per_shard))
    return out
