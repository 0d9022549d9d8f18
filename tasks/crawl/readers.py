"""Readers: one function per input format, each yielding Records from one file.

A reader never raises for bad content: a record it cannot read comes back with `error` (quarantined
with that reason, the reason's first word being a short code such as "undecodable"), a record it
reads but should not keep comes back with `skip` (filtered, counted by that code, e.g. "revisit").
It reads incrementally, so memory is bounded by one record (`max_record_bytes`), not by the file.

Formats and reason codes (error → quarantined, skip → filtered):

- text / Markdown (.txt .md .markdown): the whole file is one record. Decoding: UTF-8, else the
  detected legacy encoding (html.decode_bytes). error "undecodable" (binary: NUL bytes or control
  characters; no encoding fits), "over_cap" (file larger than max_record_bytes). An empty file gives
  Record(text="") for the stage to count as empty.
- HTML (.html .htm .xhtml): one record; charset from <meta> or detection, main text extracted with
  trafilatura (html.extract_html); `title` from <title>. error "undecodable", "over_cap",
  "empty_after_extraction", "extraction_failed".
- JSON Lines (.jsonl .ndjson, optionally .gz): one record per line (record = line number), text from
  `text_field`, `id` → source_id, `url` (or metadata.url) → url, `title` (or metadata.title) → title,
  every other field → metadata (a nested "metadata"/"meta" object is merged into it; values over
  2,000 JSON characters are dropped and named in metadata["_dropped"]). Lines are read with a size
  limit: a longer line is quarantined "over_cap" and skipped without being loaded. error
  "invalid_json", "no_text", "over_cap", "unreadable" (corrupt or truncated gzip; the records before
  the damage are kept).
- Parquet (.parquet): streamed in batches (record = row number); columns as for JSON Lines (a
  "metadata" struct or JSON string is merged into metadata). A file without the text column gives
  one Record(record=-1, error="no_text: …"); null text → "no_text", longer text → "over_cap",
  an unreadable file → "unreadable".
- WARC / WET / ARC (.warc .warc.gz .wet .wet.gz .warc.wet.gz .arc .arc.gz; gzip found by its magic
  bytes): record = index of the WARC record in the file, url = WARC-Target-URI (without <...>),
  fetched_at = WARC-Date, source_id = WARC-Record-ID. Only response, resource and conversion records
  are documents and count as input; warcinfo, request and metadata records are not documents and are
  not yielded at all (they would only inflate the filtered count). Revisits are yielded as skip
  "revisit" (the payload lives in another record). Responses: HTTP status other than 200 → skip
  "http_status: N"; HTML (text/html, application/xhtml+xml, or untyped but sniffed as HTML) →
  extract_html with the HTTP charset; text/plain → decoded text; anything else → skip
  "non_html: <type>". Resource records outside http(s)/ftp (e.g. wget's metadata:// logs) → skip
  "not_document". WET conversion records (text/plain) → their text, with the identified language
  in metadata. A truncated or corrupt file yields the records before the damage, then one
  Record(record=-1, error="unreadable: …"); a file that is not WARC gives "unreadable: not a WARC file".
"""

from __future__ import annotations

import datetime as _dt
import decimal
import gzip
import io
import json
import math
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import fsspec

from personahub.tasks.crawl.fetch import read_url_list  # a file of http(s) URLs, fetched politely
from personahub.tasks.crawl.html import (
    UndecodableError,
    charset_from_content_type,
    decode_bytes,
    extract_html,
)
from personahub.tasks.crawl.records import ReaderOptions, Record

MAX_METADATA_VALUE_CHARS = 2000  # a longer metadata value (as JSON) is dropped, its name kept in "_dropped"
NESTED_METADATA_KEYS = ("metadata", "meta")  # Dolma "metadata", RedPajama / Pile "meta": merged into metadata
PARQUET_BATCH_ROWS = 256
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
TEXT_TYPES = frozenset({"text/plain"})


def _exc(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {str(exc)[:120]}"


class TruncatedInputError(OSError):
    """The input ends inside a gzip member (an EOFError, re-raised as this so warcio does not take it for
    a clean end of file)."""


class _ShortReads(io.RawIOBase):
    """A stream whose reads return what one underlying read1 gives (with peek).

    Over a GzipFile this hands out everything decompressed before a truncated or corrupt member, then
    raises: a buffered read(n) would lose the bytes it had collected in the call that hit the damage.
    """

    def __init__(self, fileobj: Any) -> None:
        self._raw_read1 = getattr(fileobj, "read1", fileobj.read)
        self._head = b""

    def _read1(self, size: int) -> bytes:
        try:
            return self._raw_read1(size)
        except EOFError as exc:
            raise TruncatedInputError(f"truncated: {exc}") from exc

    def readable(self) -> bool:
        return True

    def peek(self, size: int) -> bytes:
        while len(self._head) < size and (chunk := self._read1(size - len(self._head))):
            self._head += chunk
        return self._head

    def readinto(self, buffer: Any) -> int:
        if self._head:
            data, self._head = self._head[: len(buffer)], self._head[len(buffer) :]
        else:
            data = self._read1(len(buffer))
        buffer[: len(data)] = data
        return len(data)


# --- plain text and HTML files -------------------------------------------------------------------
def _read_capped(url: str, options: ReaderOptions) -> bytes | Record:
    """The whole file, or the Record that quarantines it (unreadable, or over max_record_bytes)."""
    try:
        with fsspec.open(url, "rb") as fh:
            raw = fh.read(options.max_record_bytes + 1)
    except OSError as exc:
        return Record(url, -1, None, error=f"unreadable: {_exc(exc)}")
    if len(raw) > options.max_record_bytes:
        return Record(url, 0, None, error=f"over_cap: file larger than {options.max_record_bytes} bytes")
    return raw


def read_text_file(url: str, options: ReaderOptions) -> Iterator[Record]:
    raw = _read_capped(url, options)
    if isinstance(raw, Record):
        yield raw
        return
    try:
        text, encoding = decode_bytes(raw)
    except UndecodableError as exc:
        yield Record(url, 0, None, error=f"undecodable: {exc}")
        return
    title = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("# ")), None)
    yield Record(url, 0, text, title=title, metadata={"encoding": encoding} if raw else {})


def read_html_file(url: str, options: ReaderOptions) -> Iterator[Record]:
    raw = _read_capped(url, options)
    if isinstance(raw, Record):
        yield raw
        return
    if not raw.strip():
        yield Record(url, 0, "")  # an empty file: the stage counts it as empty
        return
    page = extract_html(raw)
    metadata = {"encoding": page.encoding} if page.encoding else {}
    yield Record(url, 0, page.text, title=page.title, metadata=metadata, error=page.error)


# --- JSON Lines and Parquet ------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    """value with non-JSON types (dates, decimals, bytes, NaN) turned into JSON-able ones."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (bytes, bytearray)):
        return None
    return str(value)


def record_fields(obj: dict[str, Any], text_field: str) -> tuple[str | None, str | None, str | None, dict[str, Any]]:
    """(source_id, url, title, metadata) of a JSONL object or Parquet row."""
    nested: dict[str, Any] = {}
    for key in NESTED_METADATA_KEYS:
        value = obj.get(key)
        if isinstance(value, str) and value.lstrip().startswith("{"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        if isinstance(value, dict):
            nested.update(value)
    source_id = obj.get("id")
    url = obj.get("url") if isinstance(obj.get("url"), str) else nested.get("url")
    title = obj.get("title") if isinstance(obj.get("title"), str) else nested.get("title")
    metadata: dict[str, Any] = {}
    dropped: list[str] = []
    merged = {k: v for k, v in nested.items() if k not in ("url", "title")}
    merged.update((k, v) for k, v in obj.items() if k not in NESTED_METADATA_KEYS)
    for key, value in merged.items():
        if key in (text_field, "id", "url", "title") or value is None:
            continue
        value = _jsonable(value)
        if not isinstance(value, (str, int, float, bool)) or (isinstance(value, str) and len(value) > 200):
            if len(json.dumps(value, ensure_ascii=False)) > MAX_METADATA_VALUE_CHARS:
                dropped.append(key)
                continue
        metadata[key] = value
    if dropped:
        metadata["_dropped"] = dropped
    return (
        str(source_id) if source_id is not None else None,
        url if isinstance(url, str) else None,
        title if isinstance(title, str) else None,
        metadata,
    )


def read_jsonl(url: str, options: ReaderOptions) -> Iterator[Record]:
    cap = options.max_record_bytes
    number = -1
    try:
        with fsspec.open(url, "rb") as raw_fh:
            stream = gzip.GzipFile(fileobj=raw_fh) if url.lower().endswith(".gz") else raw_fh
            lines = io.BufferedReader(_ShortReads(stream), buffer_size=1 << 16)
            while True:
                line = lines.readline(cap + 1)
                if not line:
                    break
                number += 1
                if len(line) > cap and not line.endswith(b"\n"):
                    skipped = len(line)
                    while (rest := lines.readline(1 << 20)) and not rest.endswith(b"\n"):
                        skipped += len(rest)  # the rest of the line is read in 1 MiB pieces and dropped
                    skipped += len(rest)
                    yield Record(url, number, None, error=f"over_cap: line of {skipped} bytes > {cap}")
                    continue
                if not line.strip():
                    continue
                yield jsonl_record(url, number, line, options.text_field)
    except (OSError, EOFError, zlib.error) as exc:  # truncated or corrupt gzip: keep what was read
        yield Record(url, -1, None, error=f"unreadable: {_exc(exc)}")


def jsonl_record(url: str, number: int, line: bytes, text_field: str) -> Record:
    if number == 0:
        line = line.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark is not part of the JSON
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return Record(url, number, None, error=f"invalid_json: {str(exc)[:120]}")
    except RecursionError:
        return Record(url, number, None, error="invalid_json: nested too deeply")
    if not isinstance(obj, dict):
        return Record(url, number, None, error="invalid_json: record is not an object")
    text = obj.get(text_field)
    if not isinstance(text, str):
        return Record(url, number, None, error=f"no_text: no string field {text_field!r}")
    source_id, doc_url, title, metadata = record_fields(obj, text_field)
    return Record(url, number, text, source_id=source_id, title=title, url=doc_url, metadata=metadata)


def read_parquet(url: str, options: ReaderOptions) -> Iterator[Record]:
    import pyarrow.parquet as pq

    field_name = options.text_field
    row = -1
    try:
        with fsspec.open(url, "rb") as fh:
            parquet = pq.ParquetFile(fh)
            names = parquet.schema_arrow.names
            if field_name not in names:
                shown = ", ".join(names[:20])
                yield Record(url, -1, None, error=f"no_text: no column {field_name!r} (columns: {shown})")
                return
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                for obj in batch.to_pylist():
                    row += 1
                    text = obj.get(field_name)
                    if not isinstance(text, str):
                        yield Record(url, row, None, error=f"no_text: {field_name!r} is {type(text).__name__}")
                        continue
                    cap = options.max_record_bytes
                    if len(text) > cap // 4 and len(text.encode()) > cap:
                        yield Record(url, row, None, error=f"over_cap: text larger than {cap} bytes")
                        continue
                    source_id, doc_url, title, metadata = record_fields(obj, field_name)
                    yield Record(url, row, text, source_id=source_id, title=title, url=doc_url, metadata=metadata)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, … for a damaged file
        yield Record(url, -1, None, error=f"unreadable: {_exc(exc)} (after row {row})")


# --- WARC / WET / ARC ----------------------------------------------------------------------------
def _strip_uri(uri: str | None) -> str | None:
    if uri is None:
        return None
    uri = uri.strip()
    return uri[1:-1] if uri.startswith("<") and uri.endswith(">") else uri or None


def _mime(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _sniff_html(body: bytes) -> bool:
    start = body[:1024].lstrip().lower()
    return start.startswith(b"<!doctype html") or b"<html" in start[:512]


def _warc_document(source: str, index: int, rec: Any, options: ReaderOptions) -> Record | None:
    """The Record for one WARC record, or None for records that are not documents."""
    kind = rec.rec_type
    if kind not in ("response", "resource", "conversion", "revisit"):
        return None  # warcinfo, request, metadata, continuation: not documents, not counted
    headers = rec.rec_headers
    target = _strip_uri(headers.get_header("WARC-Target-URI"))
    base = {
        "source_id": headers.get_header("WARC-Record-ID"),
        "url": target,
        "fetched_at": headers.get_header("WARC-Date"),
    }
    if kind == "revisit":
        return Record(source, index, None, skip="revisit", **base)
    metadata: dict[str, Any] = {"warc_type": kind}
    if language := headers.get_header("WARC-Identified-Content-Language"):
        metadata["language"] = language
    if kind == "response":
        if rec.http_headers is None:  # dns:, whois: … responses carry no HTTP message
            mime = _mime(headers.get_header("Content-Type")) or "unknown"
            return Record(source, index, None, skip=f"non_html: {mime}", **base)
        status = rec.http_headers.get_statuscode()
        metadata["http_status"] = int(status) if status and status.isdigit() else status
        if status != "200":
            return Record(source, index, None, skip=f"http_status: {status}", metadata=metadata, **base)
        content_type = rec.http_headers.get_header("Content-Type")
    else:
        if kind == "resource" and target and not target.lower().startswith(("http:", "https:", "ftp:")):
            return Record(source, index, None, skip=f"not_document: {target.split(':', 1)[0]} resource", **base)
        content_type = headers.get_header("Content-Type")
    mime = _mime(content_type)
    metadata["content_type"] = mime or None
    if mime and mime not in HTML_TYPES and mime not in TEXT_TYPES:
        return Record(source, index, None, skip=f"non_html: {mime}", metadata=metadata, **base)
    cap = options.max_record_bytes
    body = rec.content_stream().read(cap + 1)
    if len(body) > cap:
        return Record(source, index, None, error=f"over_cap: payload larger than {cap} bytes", metadata=metadata, **base)
    if getattr(rec.raw_stream, "limit", 0) > 0 and not rec.raw_stream.read(1):  # an uncompressed file cut here
        raise TruncatedInputError(f"truncated: the file ends inside WARC record {index}")
    if not mime:
        if not _sniff_html(body):
            return Record(source, index, None, skip="non_html: unknown", metadata=metadata, **base)
        mime = "text/html"
    charset = charset_from_content_type(content_type)
    if mime in HTML_TYPES:
        if not body.strip():
            return Record(source, index, "", metadata=metadata, **base)
        page = extract_html(body, url=target, declared_encoding=charset)
        if page.encoding:
            metadata["encoding"] = page.encoding
        return Record(source, index, page.text, title=page.title, metadata=metadata, error=page.error, **base)
    try:
        text, metadata["encoding"] = decode_bytes(body, charset)
    except UndecodableError as exc:
        return Record(source, index, None, error=f"undecodable: {exc}", metadata=metadata, **base)
    return Record(source, index, text, metadata=metadata, **base)


def read_warc(url: str, options: ReaderOptions) -> Iterator[Record]:
    from warcio.archiveiterator import ArchiveIterator

    index = -1
    try:
        with fsspec.open(url, "rb") as raw_fh:
            raw = _ShortReads(raw_fh)
            # Python's gzip, not warcio's: it raises on a truncated or corrupt member, where warcio's
            # own decompressor prints the zlib error and ends the file early without a word.
            stream = _ShortReads(gzip.GzipFile(fileobj=raw)) if raw.peek(2)[:2] == b"\x1f\x8b" else raw
            head = stream.peek(64)[:64].lstrip()
            if not head:
                yield Record(url, -1, "")  # an empty file: the stage counts it as empty
                return
            if not head.startswith((b"WARC/", b"filedesc://")):
                yield Record(url, -1, None, error=f"unreadable: not a WARC file (starts {head[:16]!r})")
                return
            last = None
            for index, rec in enumerate(ArchiveIterator(stream, arc2warc=True)):
                last = rec
                out = _warc_document(url, index, rec, options)
                if out is not None:
                    yield out
            if last is not None and getattr(last.raw_stream, "limit", 0) > 0:  # uncompressed and cut short
                yield Record(url, -1, None, error=f"unreadable: truncated in WARC record {index}")
    except Exception as exc:  # noqa: BLE001 - EOFError, BadGzipFile, zlib.error, ArchiveLoadFailed, …
        yield Record(url, -1, None, error=f"unreadable: {_exc(exc)} (after WARC record {index})")


Reader = Callable[[str, ReaderOptions], Iterator[Record]]

# Suffix → reader; the first match wins, so compound suffixes (".jsonl.gz") come before short ones.
READERS: list[tuple[tuple[str, ...], Reader]] = [
    ((".urls", ".urls.txt"), read_url_list),  # before ".txt"
    # WAT files are WARCs of metadata records: read so they are accounted for, they yield no documents.
    ((".warc.gz", ".warc.wet.gz", ".warc.wat.gz", ".wet.gz", ".wat.gz", ".arc.gz", ".warc", ".wet", ".wat", ".arc"), read_warc),
    ((".jsonl.gz", ".ndjson.gz", ".jsonl", ".ndjson"), read_jsonl),
    ((".parquet",), read_parquet),
    ((".html", ".htm", ".xhtml"), read_html_file),
    ((".txt", ".md", ".markdown"), read_text_file),
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
