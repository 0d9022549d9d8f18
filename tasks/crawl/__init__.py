"""Crawl: every source a user has, streamed into document shards with provenance.

Pass 1 (stage "crawl") reads one group of input files per shard (a large file alone, small ones
together: group_files): a reader turns each file into Records (readers.py, fetch.py for URL lists),
clean.py normalises and filters each text, and the shard's documents and quarantined rows are
streamed to Parquet in batches, so memory is bounded by a batch and a record. A shard's id hashes
its files' paths, sizes and modification times, and the groups' cuts depend on each file alone, so
a rerun with one new file runs one new shard: the new file's group. Pass 2 (stage "crawl_dedup", in the flow) removes exact duplicates across the whole
crawl by doc_id and applies the optional seeded sample (`max_docs`).

Every input record ends up kept, filtered (with a reason code) or quarantined (with its reason):
rows_in = rows_out + filtered + quarantined, per shard and per stage.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from collections.abc import Iterator
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from personahub.tasks.core.checkpoint import ShardCounts, StageCheckpoint
from personahub.tasks.core.sampling import seeded_keys
from personahub.tasks.crawl.clean import CleanOptions, clean_document
from personahub.tasks.crawl.readers import Record, ReaderOptions, read_records, supported_suffixes
from personahub.tasks.core.run_context import RunContext
from personahub.tasks.core.stage import StageRef

DOCUMENT_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("record", pa.int64()),
        ("source_id", pa.string()),
        ("url", pa.string()),
        ("title", pa.string()),
        ("language", pa.string()),
        ("language_score", pa.float32()),
        ("text", pa.string()),
        ("n_bytes", pa.int64()),
        ("fetched_at", pa.string()),
        ("metadata", pa.string()),  # JSON object of the fields kept from the record
    ]
)
QUARANTINE_SCHEMA = pa.schema(
    [("source", pa.string()), ("record", pa.int64()), ("url", pa.string()), ("reason", pa.string()), ("sample", pa.string())]
)


class CrawlParams(BaseModel):
    """What the crawl computes (sources aside): changing any of these recrawls every file."""

    text_field: str = Field("text", description="Text field of JSONL / Parquet records")
    languages: list[str] = Field(default_factory=list, description="Keep only these ISO 639-1 languages (empty = all)")
    min_chars: int = Field(50, ge=0, description="Shorter documents are filtered (too_short)")
    max_chars: int = Field(5_000_000, ge=1, description="Longer documents are quarantined (over_cap)")
    max_record_bytes: int = Field(10_000_000, ge=1024, description="Larger raw records are quarantined unread")
    strip_gutenberg: bool = Field(True, description="Remove Project Gutenberg headers and licences")
    strip_boilerplate: bool = Field(True, description="Remove short cookie/share/navigation lines")
    batch_rows: int = Field(500, ge=1, description="Documents per Parquet row group written (bounds memory with max_chars)")

    def reader_options(self) -> ReaderOptions:
        return ReaderOptions(text_field=self.text_field, max_record_bytes=self.max_record_bytes)

    def clean_options(self) -> CleanOptions:
        return CleanOptions(min_chars=self.min_chars, max_chars=self.max_chars, languages=tuple(self.languages),
                            strip_gutenberg=self.strip_gutenberg, strip_boilerplate=self.strip_boilerplate)


def expand_sources(sources: list[str], suffixes: tuple[str, ...] | None = None) -> list[str]:
    """Every supported file (by default: that a crawl reader takes) under the given paths, globs and
    directories (any fsspec URL), sorted."""
    found: set[str] = set()
    suffixes = suffixes or supported_suffixes()
    for source in sources:
        fs, _ = fsspec.core.url_to_fs(source)
        protocol = fsspec.core.split_protocol(source)[0]
        matches = fs.glob(source) if any(ch in source for ch in "*?[") else [fs._strip_protocol(source)]
        if not matches:
            raise FileNotFoundError(f"crawl source {source!r} matches nothing")
        for match in matches:
            if fs.isdir(match):
                files = fs.find(match)
            elif fs.exists(match):
                files = [match]
            else:
                raise FileNotFoundError(f"crawl source {source!r} matches nothing")
            for path in files:
                if path.lower().endswith(suffixes) and not path.rsplit("/", 1)[-1].startswith("."):
                    found.add(f"{protocol}://{path}" if protocol and protocol != "file" else path)
    if not found:
        raise FileNotFoundError(f"no supported files ({', '.join(suffixes)}) under {sources}")
    return sorted(found)


@task(name="plan-shards", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def plan_sources_task(sources: list[str], suffixes: tuple[str, ...] | None = None) -> dict[str, str]:
    """Prefect task: shard id → file for every supported file under `sources` (it lists the store)."""
    return plan_shards(expand_sources(sources, suffixes))


@task(name="plan-crawl-shards", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def plan_crawl_task(sources: list[str], shard_bytes: int) -> dict[str, list[str]]:
    """Prefect task: shard id → the input files it reads, small files grouped (group_files)."""
    return group_files(expand_sources(sources), shard_bytes)


@task(name="list-source-files", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def source_files_task(sources: list[str]) -> dict[str, str]:
    """Prefect task: every file a crawl of `sources` reads → its id (path, size, mtime), which a hub
    version records so a later refresh knows what it has seen."""
    return {url: file_id for url, (file_id, _size) in _file_ids(expand_sources(sources)).items()}


def _file_ids(files: list[str]) -> dict[str, tuple[str, int]]:
    """File → (its id from path, size and mtime, its size)."""
    out = {}
    for url in files:
        fs, path = fsspec.core.url_to_fs(url)
        info = fs.info(path)
        stamp = info.get("mtime") or info.get("LastModified") or info.get("ETag") or ""
        out[url] = (hashlib.sha256(f"{url}\0{info.get('size')}\0{stamp}".encode()).hexdigest()[:20],
                    int(info.get("size") or 0))
    return out


def plan_shards(files: list[str]) -> dict[str, str]:
    """Shard id → file: one shard per file, its id from the file's path, size and mtime."""
    ids = _file_ids(files)
    return dict(sorted(((ids[url][0], url) for url in files), key=lambda kv: kv[1]))


# A file costs a task at least this much, however small: opening and listing it. It caps a group of
# empty or tiny files at about shard_bytes / 4 KB files.
FILE_COST_BYTES = 4096


def group_files(files: list[str], shard_bytes: int) -> dict[str, list[str]]:
    """Shard id → files: the files in path order, cut into groups of about shard_bytes input bytes.

    A task per small file would cost the flow more than the file (one Prefect task run and one
    manifest entry each, ~50 KB of the flow's memory apiece), so small files share a shard. The cuts
    are content-defined, as in rsync's or restic's chunking: a group ends after a file with a
    probability of its size / shard_bytes, decided by a hash of the file's path alone. Adding or
    changing a file therefore changes only the group it falls in (a new cut may split that group in
    two); every other shard keeps its id and stays done. A file of shard_bytes or more is a shard of
    its own and keeps the id plan_shards gives it, as does any group of one file.
    """
    if shard_bytes < 1:
        raise ValueError("shard_bytes must be at least 1")
    ids = _file_ids(files)
    groups: list[list[str]] = [[]]
    for url in sorted(ids):
        groups[-1].append(url)
        cost = max(ids[url][1], FILE_COST_BYTES)
        draw = int.from_bytes(hashlib.sha256(f"personahub-crawl-cut\0{url}".encode()).digest()[:8], "big") / 2**64
        if draw * shard_bytes < cost:
            groups.append([])
    shards: dict[str, list[str]] = {}
    for group in groups:
        if len(group) == 1:
            shards[ids[group[0]][0]] = group
        elif group:
            members = "\0".join(ids[url][0] for url in group)
            shards["g" + hashlib.sha256(members.encode()).hexdigest()[:19]] = group
    return shards


def doc_id_for(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def _reason_code(reason: str) -> str:
    return reason.split(":", 1)[0].strip()


def crawl_shard(checkpoint: StageCheckpoint, shard_id: str, files: str | list[str], params: CrawlParams) -> dict[str, Any]:
    """Read the shard's files (one, or a group of small ones) into a document shard and a
    quarantine shard, streamed in batches."""
    files = [files] if isinstance(files, str) else list(files)
    crawled_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    clean_options = params.clean_options()
    rows_in = kept = quarantined = text_bytes = 0
    reasons: dict[str, int] = {}
    docs: list[dict[str, Any]] = []
    with checkpoint.open_shard(shard_id, {"data": DOCUMENT_SCHEMA, "quarantine": QUARANTINE_SCHEMA}) as shard:
        for url, rec in ((url, rec) for url in files for rec in _records(url, params)):
            rows_in += 1
            if rec.error is not None:
                shard.write("quarantine", [{"source": url, "record": rec.record, "url": rec.url,
                                            "reason": rec.error, "sample": None}])
                quarantined += 1
                reasons[_reason_code(rec.error)] = reasons.get(_reason_code(rec.error), 0) + 1
                continue
            if rec.skip is not None:
                reasons[_reason_code(rec.skip)] = reasons.get(_reason_code(rec.skip), 0) + 1
                continue
            cleaned = clean_document(rec.text or "", clean_options)
            if cleaned.quarantined is not None:
                shard.write("quarantine", [{"source": url, "record": rec.record, "url": rec.url,
                                            "reason": cleaned.quarantined, "sample": (rec.text or "")[:500]}])
                quarantined += 1
                code = _reason_code(cleaned.quarantined)
                reasons[code] = reasons.get(code, 0) + 1
                continue
            if cleaned.filtered is not None:
                code = _reason_code(cleaned.filtered)
                reasons[code] = reasons.get(code, 0) + 1
                continue
            doc_id = doc_id_for(cleaned.text)  # duplicates are removed across the whole crawl in pass 2
            n_bytes = len(cleaned.text.encode("utf-8"))
            text_bytes += n_bytes
            docs.append({
                "doc_id": doc_id, "source": url, "record": rec.record, "source_id": rec.source_id, "url": rec.url,
                "title": rec.title, "language": cleaned.language, "language_score": cleaned.language_score,
                "text": cleaned.text, "n_bytes": n_bytes,
                "fetched_at": rec.fetched_at or crawled_at,
                "metadata": json.dumps(rec.metadata, sort_keys=True, default=str) if rec.metadata else None,
            })
            kept += 1
            if len(docs) >= params.batch_rows:
                shard.write("data", docs)
                docs = []
        shard.write("data", docs)
        shard.counts = ShardCounts(rows_in=rows_in, rows_out=kept, filtered=rows_in - kept - quarantined,
                                   quarantined=quarantined)
        shard.extra = {"files": files, "reasons": reasons, "text_bytes": text_bytes}
    return {"shard_id": shard_id, "counts": shard.counts.__dict__, "reasons": reasons}


def _records(url: str, params: CrawlParams) -> Iterator[Record]:
    """The file's records; a zero-byte file of any format is one quarantined input, not silence."""
    fs, path = fsspec.core.url_to_fs(url)
    if fs.size(path) == 0:
        yield Record(url, -1, None, error="empty_file: 0 bytes")
        return
    yield from read_records(url, params.reader_options())


# --- pass 2: sampling before the cross-crawl dedup ------------------------------------------------
def sample_keys(doc_ids: list[str], seed: int) -> np.ndarray:
    """A seeded key per document (tasks/core/sampling.py); the max_docs smallest are the sample."""
    return seeded_keys(doc_ids, f"personahub-sample-{seed}")


def sample_threshold(doc_ids: list[str], seed: int, max_docs: int) -> int | None:
    """The largest key kept by a sample of max_docs distinct documents (None = keep all)."""
    keys = np.unique(sample_keys(doc_ids, seed))
    if len(keys) <= max_docs:
        return None
    return int(np.partition(keys, max_docs - 1)[max_docs - 1])


def sample_filter(seed: int, threshold: int | None):
    """A dedup prefilter keeping documents whose sample key is at most `threshold`."""

    def keep(table: pa.Table) -> tuple[pa.Table, dict[str, int]]:
        if threshold is None:
            return table, {}
        keys = sample_keys(table.column("doc_id").to_pylist(), seed)
        mask = pa.array(keys <= np.uint64(threshold))
        out = table.filter(mask)
        dropped = table.num_rows - out.num_rows
        return out, ({"sampled_out": dropped} if dropped else {})

    return keep


@task(name="crawl-sample", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def sample_threshold_task(run: RunContext, doc_files: list[str], seed: int, max_docs: int) -> int | None:
    """Prefect task: the max_docs sample's threshold over the doc_id column of every crawl shard
    (20 bytes a document: what sampling needs)."""
    ids: list[str] = []
    for path in doc_files:
        ids.extend(pc.unique(run.store.read_parquet(path, columns=["doc_id"]).column("doc_id")).to_pylist())
    return sample_threshold(ids, seed, max_docs)


@task(name="crawl-files", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def crawl_task(stage: StageRef, shard_id: str, files: list[str]) -> dict[str, Any]:
    """Prefect task: one group of input files into one document shard."""
    return crawl_shard(stage.checkpoint, shard_id, files, CrawlParams(**stage.params))
