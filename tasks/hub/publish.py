"""Publish: turn a run's final persona shards into a numbered, immutable hub version.

Layout under the store:
    hubs/<hub>/v0001/personas/part-00000.parquet …   nodes of the persona graph (hop, parent_id, doc_id)
    hubs/<hub>/v0001/edges/part-00000.parquet …      Persona-to-Persona edges (parent, child, relation)
    hubs/<hub>/v0001/sources.parquet    the input files this version's run read (url, file_id)
    hubs/<hub>/v0001/manifest.json      (written after every part)
    hubs/<hub>/latest.json              (pointer, written last)
A version folder without manifest.json is an interrupted publish and is never pointed to. A
publisher claims its number first (an exclusive .claim object), so two runs publishing at once take
two numbers instead of writing into one folder.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from prefect import task
from prefect.cache_policies import NO_CACHE

from personahub.tasks.core.checkpoint import ShardCounts
from personahub.tasks.core.run_context import RunContext
from personahub.tasks.core.stage import StageRef
from personahub.tasks.core.store import Store
from personahub.tasks.hub.index import write_index

HUB_COLUMNS = ["persona_id", "persona", "hop", "origin", "parent_id", "relation", "doc_id", "source", "model",
               "template", "params"]
_VERSION = re.compile(r"^v(\d{4,})$")


def hub_prefix(hub: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", hub):
        raise ValueError(f"hub name {hub!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return f"hubs/{hub}"


def hub_versions(store: Store, hub: str) -> list[str]:
    """Published (manifest present) versions of a hub, oldest first."""
    prefix = hub_prefix(hub)
    path = store.full(prefix)
    if not store.fs.exists(path):
        return []
    store.fs.invalidate_cache(path)
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in store.fs.ls(path, detail=False)]
    versions = sorted((n for n in names if _VERSION.match(n)), key=lambda n: int(n[1:]))
    return [v for v in versions if store.exists(f"{prefix}/{v}/manifest.json")]


def next_version(store: Store, hub: str) -> str:
    prefix = hub_prefix(hub)
    path = store.full(prefix)
    taken = []
    if store.fs.exists(path):
        store.fs.invalidate_cache(path)
        taken = [p.rstrip("/").rsplit("/", 1)[-1] for p in store.fs.ls(path, detail=False)]
    numbers = [int(m.group(1)) for m in map(_VERSION.match, taken) if m]
    return f"v{(max(numbers) + 1 if numbers else 1):04d}"


def _copy_parts(store: Store, sources: list[str], prefix: str, columns: list[str] | None) -> tuple[list[dict[str, Any]], int]:
    parts, total = [], 0
    for index, source in enumerate(sources):
        table = store.read_parquet(source)
        if columns is not None:
            table = table.select([c for c in columns if c in table.column_names])
        rel = f"{prefix}/part-{index:05d}.parquet"
        store.write_parquet(rel, table)
        parts.append({"file": rel, "rows": table.num_rows})
        total += table.num_rows
    return parts, total


def publish_hub(
    store: Store, hub: str, run_id: str, persona_files: list[str], lineage: dict[str, Any],
    edge_files: list[str] | None = None, previous: dict[str, Any] | None = None,
    index: Callable[[str, dict[str, Any] | None], dict[str, Any]] | None = None,
    sources: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Copy the final shards into a new hub version; returns the version's manifest.

    With `previous` (the version this run was deduplicated against), the new version holds the
    previous version's personas and edges too, by reference (parts are immutable), so a refresh
    adds to the hub instead of replacing it. `index(prefix, previous_index)` writes the version's
    dedup index (tasks/hub/index.py) and returns its manifest entry. `sources` (url → file id) are
    the files the run read; seen_source_ids() gathers them over all versions for a refresh.
    """
    version, prefix = claim_version(store, hub, run_id)
    parts, total = _copy_parts(store, persona_files, f"{prefix}/personas", HUB_COLUMNS)
    edge_parts, edges = _copy_parts(store, edge_files or [], f"{prefix}/edges", None)
    if previous is not None:
        parts = previous["parts"] + parts
        total += previous["personas"]
        edge_parts = previous.get("edge_parts", []) + edge_parts
        edges += previous.get("edges", 0)
    manifest = {
        "hub": hub,
        "version": version,
        "run_id": run_id,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "personas": total,
        "parts": parts,
        "edges": edges,
        "edge_parts": edge_parts,
        "columns": HUB_COLUMNS,
        "previous": previous["version"] if previous is not None else None,
        "lineage": lineage,
    }
    if index is not None:
        manifest["index"] = index(f"{prefix}/index", (previous or {}).get("index"))
    if sources is not None:
        table = pa.table({"url": list(sources), "file_id": list(sources.values())})
        store.write_parquet(f"{prefix}/sources.parquet", table)
        manifest["sources"] = {"file": f"{prefix}/sources.parquet", "files": table.num_rows}
    store.write_json(f"{prefix}/manifest.json", manifest)
    current = latest_manifest(store, hub)
    if current is None or int(current["version"][1:]) < int(version[1:]):  # a slower, older publish never moves it back
        store.write_json(f"{hub_prefix(hub)}/latest.json", {"version": version, "manifest": f"{prefix}/manifest.json"})
    return manifest


def claim_version(store: Store, hub: str, run_id: str) -> tuple[str, str]:
    """The next free version number, claimed exclusively: (version, its folder)."""
    while True:
        version = next_version(store, hub)
        prefix = f"{hub_prefix(hub)}/{version}"
        if store.create(f"{prefix}/.claim", run_id.encode()):
            return version, prefix


def seen_source_ids(store: Store, hub: str) -> set[str]:
    """The ids of every input file any published version of the hub has read."""
    seen: set[str] = set()
    for version in hub_versions(store, hub):
        manifest = store.read_json(f"{hub_prefix(hub)}/{version}/manifest.json")
        if manifest.get("sources"):
            seen.update(store.read_parquet(manifest["sources"]["file"], columns=["file_id"]).column("file_id").to_pylist())
    return seen


@task(name="publish", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def publish_task(stage: StageRef, shard_id: str, _input: None, *, files: list[str], rows: int, lineage: dict[str, Any],
                 edge_files: list[str], base: dict[str, Any] | None, index_parts: dict[str, Any],
                 sources: dict[str, str] | None = None) -> dict[str, Any]:
    """Prefect task: the kept personas (files, `rows` in all) as the hub's next version over `base`,
    with the dedup index; the version's manifest is the shard's extra, so a rerun returns it instead
    of publishing again."""
    store = stage.store
    manifest = publish_hub(
        store, stage.params["hub"], stage.run.run_id, files, lineage, edge_files, previous=base,
        index=lambda prefix, previous: write_index(store, prefix, index_parts["minhash"], index_parts.get("embedding"),
                                                   previous), sources=sources)
    stage.checkpoint.write_shard(shard_id, {}, ShardCounts(rows_in=rows, rows_out=rows), extra={"hub_manifest": manifest})
    return {"version": manifest["version"]}


@task(name="hub-base-version", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def base_version_task(run: RunContext, hub: str | None) -> dict[str, Any] | None:
    """Prefect task: the hub version this run deduplicates against (None without a hub)."""
    return base_version(run.store, hub, run.run_id) if hub else None


def base_version(store: Store, hub: str, run_id: str) -> dict[str, Any] | None:
    """The hub as a run found it: the latest version published by another run (a rerun must not
    treat its own output as the existing hub)."""
    for version in reversed(hub_versions(store, hub)):
        manifest = store.read_json(f"{hub_prefix(hub)}/{version}/manifest.json")
        if manifest["run_id"] != run_id:
            return manifest
    return None


def dedup_index(manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    """A version's stored dedup index, each part tagged with the version it belongs to."""
    if manifest is None or not manifest.get("index"):
        return None
    ref = f"{manifest['hub']}/{manifest['version']}"
    return {name: {**part, "ref": ref} for name, part in manifest["index"].items() if part}


def latest_manifest(store: Store, hub: str) -> dict[str, Any] | None:
    pointer = f"{hub_prefix(hub)}/latest.json"
    if not store.exists(pointer):
        return None
    return store.read_json(store.read_json(pointer)["manifest"])


def version_manifest(store: Store, hub: str, version: str | None = None) -> dict[str, Any]:
    """A published version's manifest (None = latest); a clear error when there is none."""
    if version is None:
        manifest = latest_manifest(store, hub)
        if manifest is None:
            raise FileNotFoundError(f"hub {hub!r} has no published version in {store.uri(hub_prefix(hub))}: "
                                    "build one first (personahub build) or give persona files")
        return manifest
    path = f"{hub_prefix(hub)}/{version}/manifest.json"
    if not store.exists(path):
        known = ", ".join(hub_versions(store, hub)) or "none"
        raise FileNotFoundError(f"hub {hub!r} has no version {version!r} (published: {known})")
    return store.read_json(path)


def sample_personas(store: Store, manifest: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """The first n personas of a hub version (for the CLI's summary)."""
    rows: list[dict[str, Any]] = []
    for part in manifest["parts"]:
        if len(rows) >= n:
            break
        table: pa.Table = store.read_parquet(part["file"], columns=["persona_id", "persona", "relation"])
        rows.extend(table.slice(0, n - len(rows)).to_pylist())
    return rows


def find_personas(store: Store, manifest: dict[str, Any], persona_ids: set[str]) -> dict[str, dict[str, Any]]:
    """Rows of the given persona ids in a hub version (a scan of its parts: fine for a lookup)."""
    found: dict[str, dict[str, Any]] = {}
    for part in manifest["parts"]:
        table = store.read_parquet(part["file"])
        mask = pa.compute.is_in(table.column("persona_id"), value_set=pa.array(sorted(persona_ids), pa.string()))
        for row in table.filter(mask).to_pylist():
            found.setdefault(row["persona_id"], row)
    return found


def persona_chain(store: Store, manifest: dict[str, Any], persona_id: str, max_hops: int = 64) -> list[dict[str, Any]]:
    """The persona and its ancestors up to the hop-0 persona inferred from a document."""
    chain: list[dict[str, Any]] = []
    current: str | None = persona_id
    while current is not None and len(chain) <= max_hops:
        row = find_personas(store, manifest, {current}).get(current)
        if row is None:
            break
        chain.append(row)
        current = row.get("parent_id")
    return chain


def find_document(store: Store, run_id: str, doc_id: str) -> dict[str, Any] | None:
    """The crawled document a persona came from, from the run's crawl_dedup shards."""
    path = f"runs/{run_id}/crawl_dedup/manifest.json"
    if not store.exists(path):
        return None
    for shard in store.read_json(path)["shards"]:
        if not shard["rows"].get("data"):
            continue
        table = store.read_parquet(shard["files"]["data"], columns=["doc_id", "source", "record", "url", "title", "text"])
        rows = table.filter(pa.compute.equal(table.column("doc_id"), doc_id)).to_pylist()
        if rows:
            return rows[0]
    return None
