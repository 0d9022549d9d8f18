"""The LLM stage base: a stage says how a row becomes requests and how a response becomes rows or
rejects; `llm_shard_task` does the rest for every LLM stage, once.

A subclass (Text-to-Persona, Persona-to-Persona, each synthesis use case) sets its name, the input
columns it reads and the tables it writes, and implements two methods, in the spirit of curator's
prompt/parse and distilabel's format_input/format_output:

* ``requests(row) -> list[ChatRequest]``: the calls one input row needs;
* ``parse(row, results) -> Outcome``: what their answers give: output rows by kind, rejects (each
  with a ``reason``, quarantined with the raw text, never dropped) and filtered reasons.

The shard task reads the shard's rows, sends every request of the shard through one gateway call
(so the gateway's concurrency bound, cache and breaker apply to all of them), hands each row its
results, checks the counts (rows_in = rows_out + filtered + quarantined), and writes the shard with
its reasons and token usage. Templates come from prompts/<task>/<mode>.yaml.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from personahub.tasks.core.checkpoint import ShardCounts
from personahub.tasks.core.stage import RowRange, Stage, StageRef
from personahub.tasks.llm.endpoint_breaker import retry_unless_endpoint_down
from personahub.tasks.llm.gateway import LLMGateway
from personahub.tasks.llm.requests import ChatRequest, ChatResult
from personahub.tasks.llm.templates import PromptTemplate, load_template

DATA = "data"
QUARANTINE = "quarantine"


@dataclass
class Outcome:
    """What one input row's responses gave. `rows_in` counts the items the row stands for (a
    request, or each child a response listed); each ends kept (in `rows`), filtered (a reason in
    `filtered`) or quarantined (one of `rejects`)."""

    rows_in: int
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    filtered: dict[str, int] = field(default_factory=dict)

    def keep(self, kind: str, row: dict[str, Any]) -> None:
        self.rows.setdefault(kind, []).append(row)

    def filter(self, reason: str) -> None:
        self.filtered[reason] = self.filtered.get(reason, 0) + 1


def llm_stage_params(template: PromptTemplate, sampling: dict[str, Any], model: str, filters: dict[str, Any]) -> dict[str, Any]:
    """What every LLM stage's parameters hold: a change to any of them reruns the stage."""
    return {"template": template.name, "template_ref": template.ref, "mode": template.mode, "sampling": sampling,
            "model": model, "filters": filters}


def reason_code(reason: str) -> str:
    """"llm_error: HTTP 400 from …" → "llm_error": what reasons are counted by."""
    return reason.split(":", 1)[0]


class LLMStage(ABC):
    """One LLM stage's two methods and what it reads and writes; built from its parameters."""

    name: ClassVar[str]  # the task's name in Prefect's UI
    template_task: ClassVar[str]  # prompts/<template_task>/<mode>.yaml
    columns: ClassVar[list[str]]  # input columns read
    outputs: ClassVar[dict[str, pa.Schema]]  # kind → schema of the rows kept ("data" first)
    quarantine: ClassVar[pa.Schema]  # schema of the rejects
    default_mode: ClassVar[str] = "few-shot"  # the prompt mode when the parameters name none

    def __init__(self, params: Mapping[str, Any]):
        self.params = dict(params)
        self.template: PromptTemplate = load_template(self.template_task, self.params.get("mode") or self.default_mode)
        self.sampling: dict[str, Any] = dict(self.params.get("sampling") or self.template.params)

    @abstractmethod
    def requests(self, row: dict[str, Any]) -> list[ChatRequest]:
        """The calls one input row needs."""

    @abstractmethod
    def parse(self, row: dict[str, Any], results: list[ChatResult]) -> Outcome:
        """What the answers to `requests(row)` give (same order)."""

    @classmethod
    def stage(cls, name: str, params: Mapping[str, Any], inputs: Mapping[str, RowRange], llm: Any,
              window: int) -> Stage[RowRange]:
        """This LLM stage as a Stage: the one shard task, named for it in Prefect's UI
        (text-to-persona, ...), on `inputs`, calling the endpoint `llm` (a mapping or a Deferred one)."""
        return Stage(name, params, inputs, llm_shard_task.with_options(name=cls.name), {"llm": llm, "kind": cls},
                     window=window)

    def llm_error(self, result: ChatResult) -> str:
        """A failed call's quarantine reason, with the (secret-free) error kept for the reader."""
        return f"llm_error: {(result.error or '')[:300]}"


async def run_llm_shard(stage: LLMStage, ref: StageRef, shard_id: str, source: RowRange,
                        gateway: LLMGateway) -> ShardCounts:
    """Read the shard's rows, ask for all of their requests, parse, count and write the shard."""
    table = ref.store.read_parquet_rows(source.file, source.start, source.stop, columns=stage.columns)
    rows = table.to_pylist()
    per_row = [stage.requests(row) for row in rows]
    results = await gateway.chat_many([request for requests in per_row for request in requests])
    kept: dict[str, list[dict[str, Any]]] = {kind: [] for kind in stage.outputs}
    rejects: list[dict[str, Any]] = []
    reasons: dict[str, int] = {}
    rows_in = filtered = 0
    offset = 0
    for row, requests in zip(rows, per_row):
        outcome = stage.parse(row, results[offset : offset + len(requests)])
        offset += len(requests)
        rows_in += outcome.rows_in
        for kind, out in outcome.rows.items():
            kept[kind].extend(out)
        rejects.extend(outcome.rejects)
        for reason, n in outcome.filtered.items():
            filtered += n
            reasons[reason] = reasons.get(reason, 0) + n
        for reject in outcome.rejects:
            code = reason_code(reject["reason"])
            reasons[code] = reasons.get(code, 0) + 1
    counts = ShardCounts(rows_in=rows_in, rows_out=len(kept[DATA]), filtered=filtered, quarantined=len(rejects))
    tables = {kind: pa.Table.from_pylist(out, schema=stage.outputs[kind]) for kind, out in kept.items()}
    tables[QUARANTINE] = pa.Table.from_pylist(rejects, schema=stage.quarantine)
    ref.checkpoint.write_shard(shard_id, tables, counts,
                               extra={"usage": gateway.usage.as_dict(), "reasons": dict(sorted(reasons.items())),
                                      "input_rows": len(rows)})
    return counts


@task(name="llm-shard", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE,
      retry_condition_fn=retry_unless_endpoint_down)
async def llm_shard_task(stage: StageRef, shard_id: str, source: RowRange, *, llm: Mapping[str, Any],
                         kind: type[LLMStage]) -> dict[str, Any]:
    """Prefect task: one shard of an LLM stage. `llm` holds base_url, model and concurrency (never a
    key: the worker's own settings supply it); `kind` is the LLMStage subclass."""
    async with LLMGateway.for_worker(llm, stage.store) as gateway:
        counts = await run_llm_shard(kind(stage.params), stage, shard_id, source, gateway)
    return {"shard_id": shard_id, "counts": counts.__dict__}
