"""The stage contract: how every stage records its output so that a killed build resumes cleanly.

Layout under the store, for one stage of one run::

    runs/<run_id>/<stage>/<kind>/<shard_id>.parquet   one Parquet object (zstd) per output kind
    runs/<run_id>/<stage>/_done/<shard_id>.json       the shard's entry, written after its Parquet
    runs/<run_id>/<stage>/manifest.json               written last, by finalize(), from the entries

Every object is written atomically (see Store), so the order of writes is the commit protocol: a
shard counts as done only once its entry exists, and the stage only once its manifest exists. Both
carry the hash of the stage's parameters, so output made with other parameters never counts.
Every shard's counts must reconcile: rows_in = rows_out + filtered + quarantined.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import PurePath
from typing import Any

import pyarrow as pa
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from personahub.tasks.core.store import Store

MANIFEST = "manifest.json"
DONE_DIR = "_done"
# Shard ids and kinds become object names: keep them to one safe path segment. A leading "." is
# refused because Store.list hides dot-files (its temporary names).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Kinds are folder names beside manifest.json and _done/: no dots or leading "_" keeps them apart.
_KIND = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class CheckpointError(RuntimeError):
    """A stage's output breaks the contract (counts that do not add up, shards missing)."""


class CountsMismatch(CheckpointError, ValueError):
    """A stage reported counts that do not reconcile: rows would be lost or invented silently."""


class StageIncomplete(CheckpointError):
    """A stage is finalized or read before all of its shards are done."""


# --- parameters --------------------------------------------------------------------------------
def _canonical(value: Any) -> Any:
    """Plain JSON values with a stable order, so equal parameters always hash equally."""
    if isinstance(value, BaseModel):
        return _canonical(value.model_dump(mode="json"))
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        # Set order depends on the process's hash seed: sort by the items' JSON text.
        items = [_canonical(v) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, enum.Enum):
        return _canonical(value.value)
    if isinstance(value, PurePath):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    # datetimes, dataclasses, Decimals…; raises on objects without a JSON form rather than
    # hashing a repr() that may hold a memory address.
    return _canonical(to_jsonable_python(value))


def canonical_params(params: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
    """The parameters as recorded in the manifest (plain JSON)."""
    out = _canonical(params)
    if not isinstance(out, dict):
        raise TypeError(f"stage parameters must be a mapping or pydantic model, not {type(params).__name__}")
    return out


def params_hash(params: Mapping[str, Any] | BaseModel) -> str:
    """sha256 of the canonical JSON of the parameters (sorted keys), first 16 hex characters."""
    text = json.dumps(canonical_params(params), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- records -----------------------------------------------------------------------------------
@dataclass
class ShardCounts:
    """What one shard did with its input rows; every input row ends up in exactly one bucket."""

    rows_in: int
    rows_out: int
    filtered: int = 0
    quarantined: int = 0

    def check(self, what: str = "counts") -> None:
        values = asdict(self)
        negative = {k: v for k, v in values.items() if v < 0}
        if negative:
            raise CountsMismatch(f"{what}: negative counts {negative}")
        accounted = self.rows_out + self.filtered + self.quarantined
        if self.rows_in != accounted:
            raise CountsMismatch(
                f"{what} do not reconcile: rows_in={self.rows_in} but rows_out + filtered + quarantined = "
                f"{self.rows_out} + {self.filtered} + {self.quarantined} = {accounted}"
            )

    def __add__(self, other: ShardCounts) -> ShardCounts:
        return ShardCounts(
            rows_in=self.rows_in + other.rows_in,
            rows_out=self.rows_out + other.rows_out,
            filtered=self.filtered + other.filtered,
            quarantined=self.quarantined + other.quarantined,
        )


@dataclass
class ShardEntry:
    """The durable record that a shard is finished: its files (kind -> store path) and counts."""

    shard_id: str
    files: dict[str, str]
    rows: dict[str, int]
    counts: ShardCounts
    params_hash: str
    extra: dict[str, Any] = field(default_factory=dict)
    finished_at: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ShardEntry:
        data = dict(obj)
        data["counts"] = ShardCounts(**data["counts"])
        return cls(**data)


@dataclass(frozen=True)
class ShardRecord:
    """One shard as a manifest lists it: its files and rows by kind, its counts and extras."""

    id: str
    files: Mapping[str, str]
    rows: Mapping[str, int]
    counts: ShardCounts = field(default_factory=lambda: ShardCounts(0, 0))
    extra: Mapping[str, Any] = field(default_factory=dict)
    params_hash: str = ""  # of the stage that wrote it ("" for files no stage of this run wrote)

    def rows_of(self, kind: str = "data") -> int:
        return int(self.rows.get(kind, 0))

    def file(self, kind: str = "data") -> str:
        if kind not in self.files:
            raise KeyError(f"shard {self.id} has no {kind!r} file (it has {sorted(self.files)})")
        return self.files[kind]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "files": dict(self.files), "rows": dict(self.rows), "counts": asdict(self.counts),
                "extra": dict(self.extra), "params_hash": self.params_hash}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ShardRecord:
        counts = obj.get("counts")
        return cls(obj["id"], dict(obj["files"]), dict(obj["rows"]),
                   ShardCounts(**counts) if counts else ShardCounts(0, 0), dict(obj.get("extra") or {}),
                   obj.get("params_hash", ""))


@dataclass(frozen=True)
class Manifest:
    """A finished stage: its shards (in shard-id order), parameters and totals.

    Downstream stages read it through these lookups, never through its JSON. `Manifest.of_files`
    and `Manifest.combine` make the upstream of a stage that reads files no single stage wrote
    (a hub version's parts, every hop's personas).
    """

    shards: tuple[ShardRecord, ...]
    stage: str = ""
    run_id: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    params_hash: str = ""
    summary: Mapping[str, Any] = field(default_factory=dict)
    created_at: str = ""

    # --- lookups ---------------------------------------------------------------------------
    def inputs(self, kind: str = "data") -> dict[str, str]:
        """Shard id → `kind` file of the shards with rows of that kind, sorted by id."""
        return {s.id: s.files[kind] for s in sorted(self.shards, key=lambda s: s.id) if s.rows_of(kind) > 0}

    def files(self, kind: str = "data") -> list[str]:
        """The `kind` files that hold rows, in shard-id order."""
        return list(self.inputs(kind).values())

    def rows(self, kind: str = "data") -> int:
        return sum(s.rows_of(kind) for s in self.shards)

    @property
    def totals(self) -> ShardCounts:
        total = ShardCounts(0, 0)
        for shard in self.shards:
            total = total + shard.counts
        return total

    def only_shard(self) -> ShardRecord:
        """The shard of a one-shard stage (a selection over all inputs)."""
        if len(self.shards) != 1:
            raise CheckpointError(f"{self.stage} has {len(self.shards)} shards where one was expected")
        return self.shards[0]

    def extra_sums(self, key: str) -> dict[str, int]:
        """Per-name sums of a mapping every shard may keep in its extras (reasons, usage)."""
        out: dict[str, int] = {}
        for shard in self.shards:
            for name, n in (shard.extra.get(key) or {}).items():
                out[name] = out.get(name, 0) + n
        return out

    def digest(self) -> str:
        """What a downstream stage depends on: exactly which shards, files and rows it read, and the
        parameters they were made with (a stage rerun with new parameters rewrites the same files)."""
        return params_hash({"shards": [[s.id, dict(s.files), dict(s.rows), s.params_hash] for s in self.shards]})

    # --- making one ------------------------------------------------------------------------
    @classmethod
    def of_files(cls, stage: str, parts: Sequence[tuple[str, int]], prefix: str = "part") -> Manifest:
        """Data files with their row counts as the shards of an upstream (ids prefix00000, ...)."""
        return cls(tuple(ShardRecord(f"{prefix}{i:05d}", {"data": f}, {"data": n}) for i, (f, n) in enumerate(parts)),
                   stage=stage)

    @classmethod
    def combine(cls, stage: str, parts: Sequence[tuple[str, Manifest]]) -> Manifest:
        """Several stages' shards as one upstream, ids prefixed so they stay unique."""
        return cls(tuple(replace(s, id=f"{prefix}-{s.id}") for prefix, m in parts for s in m.shards), stage=stage)

    def to_json(self) -> dict[str, Any]:
        rows: dict[str, int] = {}
        for shard in self.shards:
            for kind, n in shard.rows.items():
                rows[kind] = rows.get(kind, 0) + n
        return {
            "stage": self.stage,
            "run_id": self.run_id,
            "params": dict(self.params),
            "params_hash": self.params_hash,
            "shards": [s.to_json() for s in self.shards],
            "totals": {**asdict(self.totals), "shards": len(self.shards), "rows": rows,
                       "extra": _sum_numbers(s.extra for s in self.shards)},
            "summary": dict(self.summary),
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Manifest:
        return cls(tuple(ShardRecord.from_json(s) for s in obj["shards"]), obj.get("stage", ""), obj.get("run_id", ""),
                   dict(obj.get("params") or {}), obj.get("params_hash", ""), dict(obj.get("summary") or {}),
                   obj.get("created_at", ""))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _check_name(value: str, what: str, pattern: re.Pattern[str] = _NAME) -> None:
    if not isinstance(value, str) or not pattern.match(value):
        raise ValueError(f"{what} {value!r} must match {pattern.pattern} (it becomes an object name)")


def _sum_numbers(dicts: Iterable[Mapping[str, Any]]) -> dict[str, int | float]:
    """Totals of the numeric top-level values of the shards' extras (e.g. token usage)."""
    out: dict[str, int | float] = {}
    for extra in dicts:
        for key, value in extra.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = out.get(key, 0) + value
    return out


class ShardWriter:
    """The open files of one shard being written (see StageCheckpoint.open_shard)."""

    def __init__(
        self,
        shard_id: str,
        open_kind: Callable[[str, pa.Schema], Any],
        schemas: Mapping[str, pa.Schema],
        any_kind_schema: pa.Schema | None = None,
    ):
        self.shard_id = shard_id
        self._open_kind = open_kind
        self._schemas = dict(schemas)
        self._any_kind_schema = any_kind_schema
        self._writers = {kind: open_kind(kind, schema) for kind, schema in sorted(self._schemas.items())}
        self.rows: dict[str, int] = {kind: 0 for kind in self._writers}
        self.counts: ShardCounts | None = None
        self.extra: dict[str, Any] = {}
        self.entry: ShardEntry | None = None

    def write(self, kind: str, batch: pa.Table | list[dict[str, Any]]) -> None:
        """Append rows (a table or a list of row dicts) to the shard's `kind` file."""
        if kind not in self._writers:
            if self._any_kind_schema is None:
                raise KeyError(f"shard {self.shard_id} has no {kind!r} output (opened: {sorted(self._writers)})")
            _check_name(kind, "table kind", _KIND)
            # Opened on first use: a partition writes only the buckets its rows fall into.
            self._schemas[kind] = self._any_kind_schema
            self._writers[kind] = self._open_kind(kind, self._any_kind_schema)
            self.rows[kind] = 0
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_pylist(batch, schema=self._schemas[kind])
        if table.num_rows:
            self._writers[kind].write_table(table.cast(self._schemas[kind]) if table.schema != self._schemas[kind] else table)
        self.rows[kind] += table.num_rows


# --- the checkpoint ----------------------------------------------------------------------------
class StageCheckpoint:
    """Checkpoint of one stage of one run, bound to the stage's parameters."""

    def __init__(self, store: Store, run_id: str, stage: str, params: Mapping[str, Any] | BaseModel):
        _check_name(run_id, "run_id")
        _check_name(stage, "stage")
        self.store = store
        self.run_id = run_id
        self.stage = stage
        self.params = canonical_params(params)
        self.params_hash = params_hash(self.params)
        self._manifest_cleared = False

    def __repr__(self) -> str:
        return f"StageCheckpoint({self.store.uri(self.prefix)!r}, params_hash={self.params_hash!r})"

    # --- paths -----------------------------------------------------------------------------
    @property
    def prefix(self) -> str:
        return f"runs/{self.run_id}/{self.stage}"

    @property
    def manifest_path(self) -> str:
        return f"{self.prefix}/{MANIFEST}"

    def shard_path(self, shard_id: str, kind: str = "data") -> str:
        return f"{self.prefix}/{kind}/{shard_id}.parquet"

    def entry_path(self, shard_id: str) -> str:
        return f"{self.prefix}/{DONE_DIR}/{shard_id}.json"

    # --- reading state -----------------------------------------------------------------------
    def manifest(self) -> Manifest | None:
        """The stage's manifest as written, whatever parameters it was made with; None if absent."""
        if not self.store.exists(self.manifest_path):
            return None
        return Manifest.from_json(self.store.read_json(self.manifest_path))

    def complete_manifest(self) -> Manifest | None:
        """The manifest when the stage was finalized with these parameters (the caller skips it)."""
        manifest = self.manifest()
        return manifest if manifest is not None and manifest.params_hash == self.params_hash else None

    def is_complete(self) -> bool:
        return self.complete_manifest() is not None

    def done_shards(self) -> dict[str, ShardEntry]:
        """Finished shards made with these parameters, by shard id (sorted)."""
        paths = [p for p in self.store.list(f"{self.prefix}/{DONE_DIR}") if p.endswith(".json")]
        if not paths:
            return {}
        # One batched read: s3fs fetches the entries concurrently instead of one GET at a time.
        blobs = self.store.fs.cat([self.store.full(p) for p in paths])
        done: dict[str, ShardEntry] = {}
        for blob in blobs.values():
            entry = ShardEntry.from_json(json.loads(blob))
            if entry.params_hash == self.params_hash:
                done[entry.shard_id] = entry
        return dict(sorted(done.items()))

    def is_shard_done(self, shard_id: str) -> bool:
        """One shard's entry exists with these parameters (cheaper than done_shards for one id)."""
        _check_name(shard_id, "shard_id")
        path = self.entry_path(shard_id)
        if not self.store.exists(path):
            return False
        return self.store.read_json(path).get("params_hash") == self.params_hash

    # --- writing -----------------------------------------------------------------------------
    def write_shard(
        self,
        shard_id: str,
        tables: Mapping[str, pa.Table],
        counts: ShardCounts,
        extra: Mapping[str, Any] | None = None,
    ) -> ShardEntry:
        """Write a shard's tables (one Parquet object per kind), then its entry, which commits it.

        If the tables include "data" its rows must equal counts.rows_out, and "quarantine" its rows
        must equal counts.quarantined, so what a stage reports is what it wrote. No tables at all is
        allowed: a shard whose rows were all filtered out is still done.
        """
        for kind in tables:
            _check_name(kind, "table kind", _KIND)
        counts.check(f"shard {shard_id} counts")
        with self.open_shard(shard_id, {kind: t.schema for kind, t in tables.items()}) as shard:
            for kind, table in tables.items():
                shard.write(kind, table)
            shard.counts, shard.extra = counts, dict(extra or {})
        return shard.entry

    @contextlib.contextmanager
    def open_shard(
        self, shard_id: str, schemas: Mapping[str, pa.Schema], any_kind_schema: pa.Schema | None = None
    ) -> Iterator["ShardWriter"]:
        """Stream a shard's tables batch by batch; the entry is written when the block ends.

        The caller writes batches with `shard.write(kind, table_or_rows)` and sets `shard.counts`
        (and optionally `shard.extra`) before leaving the block. If the block raises, no file is
        committed and the shard stays not done. The kinds in `schemas` always get a file (empty or
        not); with `any_kind_schema`, other kinds are opened when first written.
        """
        _check_name(shard_id, "shard_id")
        for kind in schemas:
            _check_name(kind, "table kind", _KIND)
        self._invalidate_previous(shard_id)
        with contextlib.ExitStack() as stack:
            def open_kind(kind: str, schema: pa.Schema) -> Any:
                return stack.enter_context(self.store.parquet_writer(self.shard_path(shard_id, kind), schema))

            shard = ShardWriter(shard_id, open_kind, schemas, any_kind_schema)
            yield shard
            if shard.counts is None:
                raise CheckpointError(f"shard {shard_id}: counts were not set before the shard was closed")
            self._check_rows(shard_id, shard.rows, shard.counts)
        # Every file is closed (committed) here; the entry is the commit point of the shard.
        shard.entry = ShardEntry(
            shard_id=shard_id,
            files={kind: self.shard_path(shard_id, kind) for kind in sorted(shard.rows)},
            rows=dict(shard.rows),
            counts=shard.counts,
            params_hash=self.params_hash,
            extra=dict(shard.extra),
            finished_at=_now(),
        )
        self.store.write_json(self.entry_path(shard_id), shard.entry.to_json())

    @staticmethod
    def _check_rows(shard_id: str, rows: Mapping[str, int], counts: ShardCounts) -> None:
        counts.check(f"shard {shard_id} counts")
        expected = {"data": counts.rows_out, "quarantine": counts.quarantined}
        for kind, want in expected.items():
            if kind in rows and rows[kind] != want:
                raise CountsMismatch(f"shard {shard_id}: the {kind!r} table has {rows[kind]} rows but counts say {want}")

    def _invalidate_previous(self, shard_id: str) -> None:
        """Before overwriting a shard, drop what vouches for its old files.

        Otherwise an entry (or manifest) made with other parameters would, on a later run with
        those parameters, certify Parquet files that now hold this run's output.
        """
        if not self._manifest_cleared:
            self.store.delete(self.manifest_path)
            self._manifest_cleared = True
        self.store.delete(self.entry_path(shard_id))

    def finalize(
        self,
        expected_shards: Iterable[str] | None = None,
        summary: Mapping[str, Any] | None = None,
    ) -> Manifest:
        """Write the manifest from the done shards; it is the last object the stage writes.

        With expected_shards, every one of them must be done (StageIncomplete otherwise) and only
        they are listed; without, every shard done with these parameters is listed.
        """
        done = self.done_shards()
        if expected_shards is not None:
            wanted = sorted(set(expected_shards))
            missing = [s for s in wanted if s not in done]
            if missing:
                shown = ", ".join(missing[:10]) + (" …" if len(missing) > 10 else "")
                raise StageIncomplete(
                    f"{self.stage}: {len(missing)} of {len(wanted)} expected shards are not done: {shown}"
                )
            done = {s: done[s] for s in wanted}
        for entry in done.values():
            entry.counts.check(f"shard {entry.shard_id} counts")
        manifest = Manifest(
            tuple(ShardRecord(e.shard_id, e.files, e.rows, e.counts, e.extra, e.params_hash) for e in done.values()),
            stage=self.stage, run_id=self.run_id, params=self.params, params_hash=self.params_hash,
            summary=dict(summary or {}), created_at=_now(),
        )
        manifest.totals.check(f"{self.stage} totals")
        self.store.write_json(self.manifest_path, manifest.to_json())
        return manifest

    # --- downstream ----------------------------------------------------------------------------
    def files(self, kind: str = "data") -> list[str]:
        """Store paths of this stage's `kind` files that hold rows, in shard order; the stage must be
        complete."""
        manifest = self.complete_manifest()
        if manifest is None:
            raise StageIncomplete(
                f"{self.stage} has no manifest for params_hash {self.params_hash} at {self.store.uri(self.prefix)}"
            )
        return manifest.files(kind)
