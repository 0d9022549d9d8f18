"""Persona sets users already have (JSONL, JSON, Parquet) as persona shards for the dedup stages.

One shard per file, streamed in batches (a .json array is parsed whole: use JSONL for big sets). The persona text comes from a `persona` column, else
`text` (or the column named); a JSON array of strings counts as personas. The id comes from
`persona_id` or `id` when present, else it is a hash of the text, so the same input always gives
the same ids. Other columns are kept. Rows without usable text are quarantined with the reason.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Iterator
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from personahub.tasks.core.checkpoint import ShardCounts, StageCheckpoint
from personahub.tasks.core.stage import StageRef

BATCH_ROWS = 50_000
TEXT_COLUMNS = ("persona", "text")
ID_COLUMNS = ("persona_id", "id")
QUARANTINE_SCHEMA = pa.schema([pa.field("source", pa.string()), pa.field("row", pa.int64()),
                               pa.field("reason", pa.string()), pa.field("value", pa.string())])
FORMATS = (".jsonl", ".jsonl.gz", ".ndjson", ".json", ".parquet")


class PersonaInputError(ValueError):
    """A file that cannot be read as personas at all (unknown format, no text column)."""


def persona_id_of(text: str) -> str:
    return hashlib.sha1(" ".join(text.split()).encode("utf-8")).hexdigest()[:16]


def _json_rows(fh: io.BufferedIOBase, path: str) -> Iterator[list[Any]]:
    raw = gzip.GzipFile(fileobj=fh) if path.endswith(".gz") else fh
    if path.endswith(".json"):
        data = json.load(raw)
        if not isinstance(data, list):
            raise PersonaInputError(f"{path}: a .json file must hold an array of personas")
        for start in range(0, len(data), BATCH_ROWS):
            yield data[start:start + BATCH_ROWS]
        return
    batch: list[Any] = []
    for line in io.TextIOWrapper(raw, encoding="utf-8", errors="replace"):
        if line.strip():
            try:
                batch.append(json.loads(line))
            except json.JSONDecodeError as exc:
                batch.append(_BadLine("invalid_json", f"{exc.msg}: {line[:200]}"))
        if len(batch) >= BATCH_ROWS:
            yield batch
            batch = []
    if batch:
        yield batch


class _BadLine:
    def __init__(self, reason: str, value: str):
        self.reason, self.value = reason, value


def read_records(path: str, fh: io.BufferedIOBase) -> Iterator[list[Any]]:
    if path.endswith(".parquet"):
        for batch in pq.ParquetFile(fh).iter_batches(batch_size=BATCH_ROWS):
            yield batch.to_pylist()
    elif path.endswith(FORMATS):
        yield from _json_rows(fh, path)
    else:
        raise PersonaInputError(f"{path}: unknown persona file type (want one of {', '.join(FORMATS)})")


def _text_column(row: dict[str, Any], text_column: str | None) -> str | None:
    if text_column:
        return text_column
    return next((c for c in TEXT_COLUMNS if c in row), None)


def read_persona_shard(checkpoint: StageCheckpoint, shard_id: str, path: str, text_column: str | None = None) -> dict[str, Any]:
    """One input file → a persona shard (persona_id, persona, source, row, other columns as JSON)."""
    rows = kept = 0
    reasons: dict[str, int] = {}
    schema = pa.schema([pa.field("persona_id", pa.string()), pa.field("persona", pa.string()), pa.field("source", pa.string()),
                        pa.field("row", pa.int64()), pa.field("extra", pa.string())])
    with fsspec.open(path, "rb") as fh, checkpoint.open_shard(shard_id, {"data": schema, "quarantine": QUARANTINE_SCHEMA}) as shard:
        for batch in read_records(path, fh):
            good: list[dict[str, Any]] = []
            bad: list[dict[str, Any]] = []
            for item in batch:
                row, rows = rows, rows + 1
                reason, value, text, ident, extra = _parse(item, text_column)
                if reason:
                    reasons[reason] = reasons.get(reason, 0) + 1
                    bad.append({"source": path, "row": row, "reason": reason, "value": value})
                    continue
                good.append({"persona_id": ident or persona_id_of(text), "persona": text, "source": path, "row": row,
                             "extra": json.dumps(extra, ensure_ascii=False, default=str) if extra else None})
            shard.write("data", pa.Table.from_pylist(good, schema=schema))
            shard.write("quarantine", pa.Table.from_pylist(bad, schema=QUARANTINE_SCHEMA))
            kept += len(good)
        shard.counts = ShardCounts(rows_in=rows, rows_out=kept, quarantined=rows - kept)
        shard.extra = {"reasons": reasons}
    return {"shard_id": shard_id, "counts": shard.counts.__dict__}


def _parse(item: Any, text_column: str | None) -> tuple[str | None, str | None, str, str | None, dict[str, Any]]:
    """(quarantine reason, offending value, text, id, other columns)."""
    if isinstance(item, _BadLine):
        return item.reason, item.value, "", None, {}
    if isinstance(item, str):  # a JSON array (or JSONL) of bare strings
        item = {text_column or "persona": item}
    if not isinstance(item, dict):
        return "not_a_record", json.dumps(item)[:200], "", None, {}
    column = _text_column(item, text_column)
    if column is None or column not in item:
        return "no_text_column", json.dumps(item, default=str)[:200], "", None, {}
    text = item[column]
    if not isinstance(text, str):
        return "text_not_a_string", json.dumps(text, default=str)[:200], "", None, {}
    if not text.strip():
        return "empty_text", text, "", None, {}
    ident = next((str(item[c]) for c in ID_COLUMNS if item.get(c) is not None), None)
    extra = {k: v for k, v in item.items() if k != column and k not in ID_COLUMNS}
    return None, None, text.strip(), ident, extra


@task(name="persona-input", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def read_task(stage: StageRef, shard_id: str, path: str) -> dict[str, Any]:
    return read_persona_shard(stage.checkpoint, shard_id, path, stage.params.get("text_column"))

