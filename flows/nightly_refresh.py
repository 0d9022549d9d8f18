"""nightly-refresh: the corpus's new files → a new hub version that adds only their personas.

Every hub version records the input files its run read (hubs/<hub>/vNNNN/sources.parquet: url and
an id from path, size and modification time). A refresh lists the corpus, keeps the files no
version has read, and builds from those alone in a run of their own: only they are crawled and
turned into personas, which are deduplicated against the hub's stored index and published on top
of the latest version (its personas by reference, `latest` moved last). A changed file counts as
new; its unchanged documents cost no LLM call (the cache) and their personas are dropped as
duplicates of the hub's. With nothing new, nothing is published, and the summary says so.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from personahub.flows.build_hub import BuildHubParams, build_hub
from personahub.flows.run_controls import EXECUTION_FIELDS
from personahub.tasks.core.checkpoint import params_hash
from personahub.tasks.core.settings import load_settings
from personahub.tasks.core.store import Store
from personahub.tasks.crawl import source_files_task
from personahub.tasks.hub.publish import latest_manifest, seen_source_ids


class RefreshParams(BuildHubParams):
    """A hub build over the corpus's files that no published version has read; the Prefect UI
    renders these as the nightly deployment's form."""


def refresh_run_id(params: RefreshParams, new_files: dict[str, str]) -> str:
    """One run per set of new files: a retried refresh resumes it, the next night's starts anew."""
    keys = params.model_dump(exclude=EXECUTION_FIELDS | {"llm_shard_docs", "crawl_shard_bytes", "corpus"})
    return f"refresh-{params.hub}-{params_hash({**keys, 'files': sorted(new_files.values())})[:10]}"


@flow(name="nightly-refresh", log_prints=True)
def nightly_refresh(params: RefreshParams = RefreshParams()) -> dict[str, Any]:
    """Publish a new hub version from the corpus's unseen files, or nothing when there are none."""
    logger = get_run_logger()
    settings = load_settings(store=params.store)
    store = Store.from_settings(settings)
    listed = source_files_task(params.corpus)
    seen = seen_source_ids(store, params.hub)
    new = {url: file_id for url, file_id in listed.items() if file_id not in seen}
    current = latest_manifest(store, params.hub)
    summary: dict[str, Any] = {"hub": params.hub, "files": len(listed), "new_files": len(new),
                               "previous_version": current["version"] if current else None}
    if not new:
        logger.info("hub %s: all %d files were read by earlier versions; nothing to publish", params.hub, len(listed))
        summary.update(published=False, version=summary["previous_version"],
                       message=f"nothing new: all {len(listed)} files of the corpus were read by earlier versions")
    else:
        logger.info("hub %s: %d of %d files are new", params.hub, len(new), len(listed))
        build = BuildHubParams(**{**params.model_dump(exclude={"corpus", "run_id"}), "corpus": sorted(new),
                                  "run_id": params.run_id or refresh_run_id(params, new)})
        built = build_hub(build)
        if built.get("dry_run"):
            summary.update(built, published=False, message=f"dry run: {len(new)} new files; nothing asked, nothing published")
            return summary
        added = built["personas"] - (current["personas"] if current else 0)
        summary.update(built, published=True, added_personas=added,
                       message=f"{built['version']}: {len(new)} new files, {added} personas added")
    create_markdown_artifact(key="nightly-refresh", markdown=f"# nightly-refresh of hub {params.hub}\n\n{summary['message']}\n",
                             description="what the refresh published")
    return summary
