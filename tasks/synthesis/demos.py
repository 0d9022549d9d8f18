"""Demonstrations for the few-shot and persona-enhanced modes: a JSONL file, one per line, each an
answer of the use case (`output`, meeting its schema) with the template variables it was written
for (`vars`, optional). prompts/<use case>/demos.jsonl ships defaults written for this project; a
user points to their own file (real user prompts for the instructions use case, say).

For the persona-enhanced mode each demonstration's persona is inferred by the Text-to-Persona stage
(relation "write": who would have written it), so the demonstrations become rows of a small
document table in the run, `demo_documents`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import fsspec
import jsonschema
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from personahub.tasks.core.checkpoint import ShardCounts
from personahub.tasks.core.run_context import RunContext
from personahub.tasks.core.stage import ONE_SHARD, StageRef
from personahub.tasks.synthesis.use_cases import SynthesisParamsError, UseCase

DOCUMENT_SCHEMA = pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("text", pa.string()),
                             ("answer", pa.string())])


class DemoError(SynthesisParamsError):
    """A demonstrations file that cannot be used (unreadable, empty, or answers off the schema)."""


@dataclass(frozen=True)
class Demo:
    answer: str  # the output as the JSON the model is asked to write
    text: str  # the use case's main text of it (what Text-to-Persona reads)
    doc_id: str


def shipped_demos(case: UseCase) -> str:
    return str(resources.files("personahub.prompts").joinpath(case.name, "demos.jsonl"))


def load_demos(case: UseCase, path: str | None = None) -> list[Demo]:
    """The demonstrations of `path` (default: the shipped ones), each checked against the use case's
    schema: a demonstration the stage would quarantine would teach the model the wrong format."""
    path = path or shipped_demos(case)
    validator = jsonschema.Draft202012Validator(case.schema)
    demos = []
    with fsspec.open(path, "rt", encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DemoError(f"{path}:{number}: not JSON ({exc.msg})") from exc
            output = row.get("output") if isinstance(row, dict) else None
            error = next(iter(validator.iter_errors(output)), None)
            if error is not None:
                raise DemoError(f"{path}:{number}: the demonstration's output does not meet the {case.name} "
                                f"schema: {error.message[:200]}")
            text = case.text_of(output)
            demos.append(Demo(json.dumps(output, ensure_ascii=False), text,
                              hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]))
    if not demos:
        raise DemoError(f"{path}: no demonstrations")
    return demos


@task(name="demo-documents", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def demo_documents_task(stage: StageRef, shard_id: str, _input: None, *, demos: list[Demo], source: str) -> dict[str, Any]:
    """Prefect task: the demonstrations as a document table, the input of Text-to-Persona."""
    rows = [{"doc_id": d.doc_id, "source": source, "text": d.text, "answer": d.answer} for d in demos]
    counts = ShardCounts(rows_in=len(rows), rows_out=len(rows))
    stage.checkpoint.write_shard(ONE_SHARD, {"data": pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA)}, counts)
    return {"shard_id": ONE_SHARD, "counts": counts.__dict__}


@task(name="demo-personas", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def demo_personas_task(run: RunContext, files: list[str]) -> dict[str, str]:
    """Prefect task: doc_id → the persona Text-to-Persona inferred for that demonstration."""
    out: dict[str, str] = {}
    for path in files:
        for row in run.store.read_parquet(path, columns=["doc_id", "persona"]).to_pylist():
            out.setdefault(row["doc_id"], row["persona"])
    return out
