"""The object store every stage reads and writes: a local directory or any fsspec URL (s3://…).

Writes are atomic: on a local filesystem a file is written under a temporary name and renamed; on an
object store each object is one PUT, which is atomic by itself. Readers therefore never see half a file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from typing import Any, Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

PARQUET_COMPRESSION = "zstd"


UNCOMPRESSED = {b"compression": b"none"}


def incompressible(field: pa.Field) -> pa.Field:
    """Mark a column of random bits (hashes, signatures): zstd would spend time finding nothing."""
    return field.with_metadata(UNCOMPRESSED)


def compression_of(schema: pa.Schema) -> str | dict[str, str]:
    """zstd, except for the columns marked incompressible."""
    raw = [f.name for f in schema if f.metadata and f.metadata.get(b"compression") == b"none"]
    if not raw:
        return PARQUET_COMPRESSION
    return {f.name: ("none" if f.name in raw else PARQUET_COMPRESSION) for f in schema}


class Store:
    """A root URL plus an fsspec filesystem; every path given to it is relative to the root."""

    def __init__(self, url: str, *, s3_endpoint_url: str | None = None, storage_options: dict[str, Any] | None = None):
        options = dict(storage_options or {})
        protocol = fsspec.core.split_protocol(url)[0] or "file"
        if protocol in ("s3", "s3a"):
            if s3_endpoint_url:
                options.setdefault("client_kwargs", {}).setdefault("endpoint_url", s3_endpoint_url)
            # s3fs otherwise answers exists/ls from listings cached earlier in the process, which go
            # stale as soon as another worker (or another Store on the same bucket) writes: a resumed
            # stage would then miss finished shards or see deleted ones.
            options.setdefault("use_listings_cache", False)
        self.url = url
        self.protocol = protocol
        self.fs, root = fsspec.core.url_to_fs(url, **options)
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)
        if self.is_local:
            self.fs.makedirs(self.root, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Any) -> "Store":
        return cls(settings.store, s3_endpoint_url=settings.resolved_s3_endpoint())

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # --- paths -------------------------------------------------------------------------------
    def full(self, rel: str) -> str:
        return f"{self.root}/{rel.lstrip('/')}" if rel else self.root

    def uri(self, rel: str = "") -> str:
        """A user-facing location (what to print): s3://bucket/key or an absolute local path."""
        path = self.full(rel)
        return path if self.is_local else f"{self.protocol}://{path}"

    # --- bytes -------------------------------------------------------------------------------
    @staticmethod
    @contextlib.contextmanager
    def _local_atomic(path: str) -> Iterator[str]:
        """A temporary name beside `path`, renamed onto it when the block succeeds; a failed block
        leaves neither the temporary file nor a changed `path` behind."""
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        try:
            yield tmp
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise

    def write_bytes(self, rel: str, data: bytes) -> None:
        path = self.full(rel)
        if self.is_local:
            with self._local_atomic(path) as tmp, open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        else:
            self.fs.pipe_file(path, data)

    def create(self, rel: str, data: bytes) -> bool:
        """Write `rel` only if it does not exist yet, atomically; False when it already did.

        Locally O_EXCL; on S3 a conditional PUT (If-None-Match: *, honoured by AWS, MinIO and moto),
        so of two processes racing for the same name exactly one wins.
        """
        path = self.full(rel)
        if self.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            return True
        try:
            self.fs.pipe_file(path, data, IfNoneMatch="*")
        except FileExistsError:  # s3fs's mapping of 412 Precondition Failed
            return False
        return True

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.full(rel))

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.full(rel))

    def delete(self, rel: str, recursive: bool = False) -> None:
        if self.exists(rel):
            self.fs.rm(self.full(rel), recursive=recursive)

    def list(self, rel: str) -> list[str]:
        """Relative paths of the files directly under `rel` (empty when it does not exist)."""
        return list(self.sizes(rel))

    def sizes(self, rel: str) -> dict[str, int]:
        """Like `list`, with each file's size in bytes (one listing call)."""
        path = self.full(rel)
        self.fs.invalidate_cache(path)  # before exists(): a cached listing may predate our writes
        if not self.fs.exists(path):
            return {}
        prefix = f"{rel.strip('/')}/" if rel.strip("/") else ""
        out = {}
        for entry in self.fs.ls(path, detail=True):
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if entry["type"] == "file" and not (name.startswith(".") and name.endswith(".tmp")):
                out[f"{prefix}{name}"] = int(entry.get("size") or 0)
        return dict(sorted(out.items()))

    def subdirs(self, rel: str) -> list[str]:
        """Names of the folders directly under `rel` (on an object store: the common prefixes)."""
        path = self.full(rel)
        self.fs.invalidate_cache(path)
        if not self.fs.exists(path):
            return []
        return sorted(entry["name"].rstrip("/").rsplit("/", 1)[-1]
                      for entry in self.fs.ls(path, detail=True) if entry["type"] == "directory")

    # --- JSON --------------------------------------------------------------------------------
    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    # --- Parquet -----------------------------------------------------------------------------
    def write_parquet(self, rel: str, table: pa.Table) -> int:
        """Write one Parquet object (zstd) atomically; returns its size in bytes."""
        buf = io.BytesIO()
        pq.write_table(table, buf, compression=compression_of(table.schema))
        data = buf.getvalue()
        self.write_bytes(rel, data)
        return len(data)

    @contextlib.contextmanager
    def parquet_writer(self, rel: str, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
        """Stream row groups into one Parquet object, so memory holds a batch, not the file.

        Atomic like write_bytes: on local disk a temporary file renamed at the end; on an object
        store one multipart upload that becomes visible only when it completes, and is aborted
        (never committed) if the block raises.
        """
        path = self.full(rel)
        if self.is_local:
            with self._local_atomic(path) as tmp:
                with pq.ParquetWriter(tmp, schema, compression=compression_of(schema)) as writer:
                    yield writer
            return
        fh = self.fs.open(path, "wb")
        try:
            with pq.ParquetWriter(fh, schema, compression=compression_of(schema)) as writer:
                yield writer
        except BaseException:
            discard = getattr(fh, "discard", None)  # s3fs: abort the multipart upload
            if discard is not None:
                discard()
                fh.closed = True  # or garbage collection "closes" it again and flushes a discarded buffer
            raise
        fh.close()

    def read_parquet(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        with self.fs.open(self.full(rel), "rb") as fh:
            return pq.read_table(fh, columns=columns)

    def read_parquet_rows(self, rel: str, start: int, stop: int, columns: list[str] | None = None) -> pa.Table:
        """Rows [start, stop) of a Parquet object, reading only the row groups that hold them."""
        with self.fs.open(self.full(rel), "rb") as fh:
            parquet = pq.ParquetFile(fh)
            groups, first, offset = [], 0, 0
            for i in range(parquet.num_row_groups):
                n = parquet.metadata.row_group(i).num_rows
                if offset + n > start and offset < stop:
                    if not groups:
                        first = offset
                    groups.append(i)
                offset += n
            if not groups:
                return parquet.schema_arrow.empty_table().select(columns) if columns else parquet.schema_arrow.empty_table()
            return parquet.read_row_groups(groups, columns=columns).slice(start - first, stop - start)

    def iter_parquet(self, rels: list[str], columns: list[str] | None = None) -> Iterator[pa.Table]:
        for rel in rels:
            yield self.read_parquet(rel, columns=columns)
