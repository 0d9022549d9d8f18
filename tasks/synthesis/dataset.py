"""A synthesis run's dataset and its export.

The `dataset` stage copies the items the last verifying stage kept to runs/<run_id>/dataset/, so a
run's dataset has one place whatever stages ran. `export_run` writes it out for training:

* jsonl: one JSON object per item, `output` as an object, columns a run never filled left out;
* hf: a folder Hugging Face `datasets` loads (`load_dataset(folder)`): data/train-*.parquet and a
  README.md dataset card (model, templates, counts, filters), its YAML header naming the files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from prefect import task
from prefect.cache_policies import NO_CACHE

from personahub.tasks.core.checkpoint import ShardCounts
from personahub.tasks.core.stage import RowRange, StageRef
from personahub.tasks.core.store import Store
from personahub.tasks.core.report import report_path
from personahub.tasks.synthesis.report import KIND
from personahub.tasks.synthesis.stage import ITEM_SCHEMA

ExportFormat = Literal["jsonl", "hf"]
JSON_COLUMNS = ("output", "variables", "params", "solutions", "judge_scores", "checks")


@task(name="dataset", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def copy_rows_task(stage: StageRef, shard_id: str, source: RowRange) -> dict[str, Any]:
    """Prefect task: one part of the run's dataset, the last stage's kept items as they are."""
    table = stage.store.read_parquet_rows(source.file, source.start, source.stop).select(ITEM_SCHEMA.names)
    counts = ShardCounts(rows_in=table.num_rows, rows_out=table.num_rows)
    stage.checkpoint.write_shard(shard_id, {"data": table.cast(ITEM_SCHEMA)}, counts)
    return {"shard_id": shard_id, "counts": counts.__dict__}


class ExportError(ValueError):
    """A run that cannot be exported (no such run, no report yet)."""


def run_report(store: Store, run_id: str) -> dict[str, Any]:
    if not store.exists(report_path(run_id)):
        raise ExportError(f"no synthesis report at {store.uri(report_path(run_id))}: is {run_id!r} a finished synthesis run?")
    report = store.read_json(report_path(run_id))
    if report.get("kind", KIND) != KIND:
        raise ExportError(f"{run_id!r} is a {report['kind']} run, not a synthesis run: it has no dataset to export")
    return report


def dataset_table(store: Store, report: dict[str, Any]) -> pa.Table:
    """The run's items, without the columns no item has a value in."""
    tables = [store.read_parquet(f) for f in report["dataset_files"]]
    table = pa.concat_tables(tables) if tables else ITEM_SCHEMA.empty_table()
    keep = [name for name in table.column_names if table.num_rows == 0 or pc.count(table[name]).as_py() > 0]
    return table.select(keep)


def _json_ready(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (json.loads(v) if k in JSON_COLUMNS and isinstance(v, str) else v) for k, v in row.items()}


def dataset_card(report: dict[str, Any], rows: int) -> str:
    c = report["counts"]
    filters = report.get("filters") or {}
    header = ["---", "configs:", "- config_name: default", "  data_files:", "  - split: train", "    path: data/train-*.parquet",
              "tags:", "- synthetic", "- personas", f"- {report['use_case']}", "---", ""]
    lines = [
        f"# personahub synthesis run `{report['run_id']}`",
        "",
        f"{rows} {report['use_case']} items written by `{report['model']}` in {report['mode']} mode from "
        f"{c['personas']} personas of `{report['source']}`, with the method of *Scaling Synthetic Data Creation with "
        "1,000,000,000 Personas* (Tencent AI Lab, 2024).",
        "",
        "## Templates",
        *[f"- `{t}`" for t in report["templates"]],
        "",
        "## Counts",
        f"- personas: {c['personas']}; generated and valid: {c['generated']}; quarantined: {c['quarantined']}; "
        f"in this dataset: {c['items']}",
        *[f"- {s['stage']}: {s['counts']['rows_in']} in, {s['counts']['rows_out']} kept, {s['counts']['filtered']} "
          f"filtered, {s['counts']['quarantined']} quarantined" for s in report["stages"]],
        "",
        "## Filters",
        *([f"- {name}: {value}" for name, value in filters.items()] or ["- none beyond the schema and checks"]),
        "",
        "Each row keeps its persona, the template, model and sampling parameters that wrote it "
        "(`template`, `model`, `params`), and the parsed answer (`output`).",
    ]
    return "\n".join(header + lines) + "\n"


def export_run(store: Store, run_id: str, out: str | Path, fmt: ExportFormat) -> Path:
    """Write the run's dataset to `out` (a .jsonl file, or a folder for hf); the path written."""
    report = run_report(store, run_id)
    table = dataset_table(store, report)
    out = Path(out)
    if fmt == "jsonl":
        path = out if out.suffix == ".jsonl" else out / f"{run_id}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            for row in table.to_pylist():
                fh.write(json.dumps(_json_ready(row), ensure_ascii=False) + "\n")
        tmp.replace(path)
        return path
    if fmt == "hf":
        import datasets

        (out / "data").mkdir(parents=True, exist_ok=True)
        datasets.Dataset(table).to_parquet(str(out / "data" / "train-00000-of-00001.parquet"))
        (out / "README.md").write_text(dataset_card(report, table.num_rows), encoding="utf-8")
        return out
    raise ExportError(f"unknown export format {fmt!r}: jsonl or hf")
