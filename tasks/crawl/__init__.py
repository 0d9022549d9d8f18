"""Crawl: turn input files into document shards with provenance.

Foundation scope: plain text, Markdown and JSON Lines (optionally .gz) on any fsspec path, with
globs. Every record becomes a document row, a filtered row (empty) or a quarantined row (with the
reason); nothing disappears. Files are read one record at a time, so memory is bounded by the shard.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any, Iterator

import fsspec
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from personahub.tasks.checkpoint import ShardCounts, StageCheckpoint
from personahub.tasks.crawl.clean import normalise_text
from personahub.tasks.crawl.readers import ReaderOptions, read_records, supported_suffixes
from personahub.tasks.run_context import RunContext

DOCUMENT_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("record", pa.int64()),
        ("source_id", pa.string()),
        ("title", pa.string()),
        ("text", pa.string()),
        ("n_bytes", pa.int64()),
        ("fetched_at", pa.string()),
    ]
)
QUARANTINE_SCHEMA = pa.schema(
    [("source", pa.string()), ("record", pa.int64()), ("reason", pa.string()), ("sample", pa.string())]
)


def expand_sources(sources: list[str]) -> list[str]:
    """Every supported file under the given paths/globs/directories, as full URLs, sorted."""
    found: set[str] = set()
    for source in sources:
        fs, _ = fsspec.core.url_to_fs(source)
        protocol = fsspec.core.split_protocol(source)[0]
        matches = fs.glob(source) if any(ch in source for ch in "*?[") else [fs._strip_protocol(source)]
        for match in matches:
            if fs.isdir(match):
                files = fs.find(match)
            elif fs.exists(match):
                files = [match]
            else:
                raise FileNotFoundError(f"crawl source {source!r} matches nothing")
            for path in files:
                if path.lower().endswith(supported_suffixes()) and not path.rsplit("/", 1)[-1].startswith("."):
                    found.add(f"{protocol}://{path}" if protocol else path)
    if not found:
        raise FileNotFoundError(f"no supported files ({', '.join(supported_suffixes())}) under {sources}")
    return sorted(found)


def doc_id_for(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def plan_shards(files: list[str], files_per_shard: int) -> list[list[str]]:
    """Group the sorted file list into crawl shards (each one task)."""
    return [files[i : i + files_per_shard] for i in range(0, len(files), files_per_shard)]


def crawl_shard(
    checkpoint: StageCheckpoint,
    shard_id: str,
    files: list[str],
    *,
    text_field: str = "text",
    min_chars: int = 1,
) -> dict[str, Any]:
    """Read the shard's files and write its document and quarantine tables."""
    fetched_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    docs: list[dict[str, Any]] = []
    quarantined: list[dict[str, Any]] = []
    seen_in = filtered = 0
    for url in files:
        for rec in read_records(url, ReaderOptions(text_field=text_field)):
            seen_in += 1
            if rec.error is not None:
                quarantined.append({"source": url, "record": rec.record, "reason": rec.error, "sample": None})
                continue
            text = normalise_text(rec.text or "")
            if len(text) < min_chars:
                filtered += 1
                continue
            docs.append(
                {
                    "doc_id": doc_id_for(text),
                    "source": url,
                    "record": rec.record,
                    "source_id": rec.source_id,
                    "title": rec.title,
                    "text": text,
                    "n_bytes": len(text.encode("utf-8")),
                    "fetched_at": fetched_at,
                }
            )
    counts = ShardCounts(rows_in=seen_in, rows_out=len(docs), filtered=filtered, quarantined=len(quarantined))
    tables = {
        "data": pa.Table.from_pylist(docs, schema=DOCUMENT_SCHEMA),
        "quarantine": pa.Table.from_pylist(quarantined, schema=QUARANTINE_SCHEMA),
    }
    entry = checkpoint.write_shard(shard_id, tables, counts, extra={"files": files})
    return {"shard_id": shard_id, "counts": entry.counts.__dict__}


@task(name="crawl-shard", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def crawl_task(ctx: RunContext, params: dict[str, Any], shard_id: str, files: list[str]) -> dict[str, Any]:
    """Prefect task: one crawl shard (a group of input files)."""
    checkpoint = ctx.checkpoint("crawl", params)
    return crawl_shard(checkpoint, shard_id, files, text_field=params["text_field"], min_chars=params["min_chars"])
