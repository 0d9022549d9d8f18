"""Crawl: turn input files into document shards with provenance.

Foundation scope: plain text, Markdown and JSON Lines (optionally .gz) on any fsspec path, with
globs. Every record becomes a document row, a filtered row (empty) or a quarantined row (with the
reason); nothing disappears. Files are read one record at a time, so memory is bounded by the shard.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import unicodedata
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator

import fsspec
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from personahub.tasks.checkpoint import ShardCounts, StageCheckpoint
from personahub.tasks.run_context import RunContext

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson")
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES

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


@dataclass(frozen=True)
class Record:
    source: str
    record: int
    text: str | None
    source_id: str | None = None
    title: str | None = None
    error: str | None = None


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
                if path.lower().endswith(SUPPORTED_SUFFIXES) and not path.rsplit("/", 1)[-1].startswith("."):
                    found.add(f"{protocol}://{path}" if protocol else path)
    if not found:
        raise FileNotFoundError(f"no supported files ({', '.join(SUPPORTED_SUFFIXES)}) under {sources}")
    return sorted(found)


def normalise_text(text: str) -> str:
    """NFC, unified newlines, no trailing whitespace: the form doc_id is hashed from."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip()


def doc_id_for(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def _decode(raw: bytes) -> str:
    if b"\x00" in raw[:8192]:
        raise ValueError("binary content (NUL bytes)")
    return raw.decode("utf-8-sig")


def read_records(url: str, text_field: str = "text") -> Iterator[Record]:
    """Records of one file; a broken record is yielded with its error, never raised."""
    lower = url.lower()
    if lower.endswith(TEXT_SUFFIXES):
        with fsspec.open(url, "rb") as fh:
            raw = fh.read()
        try:
            text = _decode(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            yield Record(url, 0, None, error=f"undecodable: {exc.__class__.__name__}: {str(exc)[:120]}")
            return
        title = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("# ")), None)
        yield Record(url, 0, text, title=title)
        return
    with fsspec.open(url, "rb") as raw_fh:
        stream = gzip.GzipFile(fileobj=raw_fh) if lower.endswith(".gz") else raw_fh
        try:
            for number, line in enumerate(io.BufferedReader(stream)):
                if not line.strip():
                    continue
                yield _jsonl_record(url, number, line, text_field)
        except (OSError, EOFError, zlib.error) as exc:  # bad gzip: keep what was read, quarantine the rest
            yield Record(url, -1, None, error=f"unreadable: {exc.__class__.__name__}: {str(exc)[:120]}")


def _jsonl_record(url: str, number: int, line: bytes, text_field: str) -> Record:
    if number == 0:
        line = line.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark is not part of the JSON
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return Record(url, number, None, error=f"invalid JSON: {str(exc)[:120]}")
    if not isinstance(obj, dict):
        return Record(url, number, None, error="JSON record is not an object")
    text = obj.get(text_field)
    if not isinstance(text, str):
        return Record(url, number, None, error=f"no string field {text_field!r}")
    source_id = obj.get("id")
    title = obj.get("title")
    return Record(
        url,
        number,
        text,
        source_id=str(source_id) if source_id is not None else None,
        title=title if isinstance(title, str) else None,
    )


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
        for rec in read_records(url, text_field):
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
