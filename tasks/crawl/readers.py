"""Readers: one function per input format, each yielding Records from one file.

A reader never raises for bad content: a record it cannot read comes back with `error` (quarantined
with that reason, the reason's first word being a short code such as "undecodable"), a record it
reads but should not keep comes back with `skip` (filtered, counted by that code, e.g. "revisit").
It reads incrementally, so memory is bounded by one record (`max_record_bytes`), not by the file.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec


@dataclass(frozen=True)
class ReaderOptions:
    text_field: str = "text"  # JSONL / Parquet column holding the text
    max_record_bytes: int = 10_000_000  # a larger record is quarantined ("over_cap"), never loaded whole


@dataclass(frozen=True)
class Record:
    source: str  # the file (or URL list) it came from
    record: int  # offset of the record in its source: line, row or WARC record number; -1 = whole file
    text: str | None  # the document's text, before clean-up; None with error or skip
    source_id: str | None = None  # the record's own id (RedPajama/FineWeb/Dolma "id", WARC-Record-ID)
    title: str | None = None
    url: str | None = None  # the document's own URL (WARC-Target-URI, a JSONL "url", a fetched URL)
    metadata: dict[str, Any] = field(default_factory=dict)  # JSON-able fields kept from the record
    fetched_at: str | None = None  # WARC-Date or HTTP fetch time; None = crawl time
    error: str | None = None  # quarantine reason: "<code>: <detail>"
    skip: str | None = None  # filter reason: "<code>[: <detail>]"


def decode_text(raw: bytes) -> str:
    """UTF-8 text of a plain-text file; raises ValueError for binary content."""
    if b"\x00" in raw[:8192]:
        raise ValueError("binary content (NUL bytes)")
    return raw.decode("utf-8-sig")


def read_text_file(url: str, options: ReaderOptions) -> Iterator[Record]:
    with fsspec.open(url, "rb") as fh:
        raw = fh.read(options.max_record_bytes + 1)
    if len(raw) > options.max_record_bytes:
        yield Record(url, 0, None, error=f"over_cap: file larger than {options.max_record_bytes} bytes")
        return
    try:
        text = decode_text(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        yield Record(url, 0, None, error=f"undecodable: {exc.__class__.__name__}: {str(exc)[:120]}")
        return
    title = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("# ")), None)
    yield Record(url, 0, text, title=title)


def read_jsonl(url: str, options: ReaderOptions) -> Iterator[Record]:
    with fsspec.open(url, "rb") as raw_fh:
        stream = gzip.GzipFile(fileobj=raw_fh) if url.lower().endswith(".gz") else raw_fh
        try:
            for number, line in enumerate(io.BufferedReader(stream)):
                if not line.strip():
                    continue
                yield jsonl_record(url, number, line, options.text_field)
        except (OSError, EOFError, zlib.error) as exc:  # truncated or corrupt gzip: keep what was read
            yield Record(url, -1, None, error=f"unreadable: {exc.__class__.__name__}: {str(exc)[:120]}")


def jsonl_record(url: str, number: int, line: bytes, text_field: str) -> Record:
    if number == 0:
        line = line.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark is not part of the JSON
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return Record(url, number, None, error=f"invalid_json: {str(exc)[:120]}")
    if not isinstance(obj, dict):
        return Record(url, number, None, error="invalid_json: record is not an object")
    text = obj.get(text_field)
    if not isinstance(text, str):
        return Record(url, number, None, error=f"no_text: no string field {text_field!r}")
    source_id = obj.get("id")
    title = obj.get("title")
    return Record(
        url,
        number,
        text,
        source_id=str(source_id) if source_id is not None else None,
        title=title if isinstance(title, str) else None,
    )


Reader = Callable[[str, ReaderOptions], Iterator[Record]]

# Suffix → reader; the first match wins, so compound suffixes (".jsonl.gz") come before short ones.
READERS: list[tuple[tuple[str, ...], Reader]] = [
    ((".txt", ".md", ".markdown"), read_text_file),
    ((".jsonl", ".jsonl.gz", ".ndjson"), read_jsonl),
]


def supported_suffixes() -> tuple[str, ...]:
    return tuple(s for suffixes, _ in READERS for s in suffixes)


def read_records(url: str, options: ReaderOptions = ReaderOptions()) -> Iterator[Record]:
    """Records of one file, by its suffix."""
    lower = url.lower()
    for suffixes, reader in READERS:
        if lower.endswith(suffixes):
            return reader(url, options)
    raise ValueError(f"no reader for {url!r} (supported: {', '.join(supported_suffixes())})")
