"""What every reader yields (Record) and the options readers share: the crawl's one record type,
kept apart so that the readers and the URL fetcher (one of the readers) both import it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
