"""The nightly refresh on the fake server: only unseen files are crawled and turned into personas,
the new version adds only theirs, a refresh with nothing new publishes nothing."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from personahub.flows.build_hub import BuildHubParams, build_hub
from personahub.flows.nightly_refresh import RefreshParams, nightly_refresh
from personahub.tasks.core.store import Store
from personahub.tasks.hub.publish import hub_versions, version_manifest
from test_build_hub import ONE_HOP0, doc_marker, write_corpus


def persona_rows(store: Store, version: str) -> list[dict]:
    manifest = version_manifest(store, "default", version)
    return [row for part in manifest["parts"] for row in store.read_parquet(part["file"]).to_pylist()]


def test_a_refresh_reads_only_new_files_and_adds_only_their_personas(server, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", 6)
    common = dict(corpus=[str(corpus)], store=str(tmp_path / "store"), llm_base_url=server.base_url,
                  embedding_base_url=server.base_url, **ONE_HOP0)
    first = build_hub(BuildHubParams(**common))
    store = Store(str(tmp_path / "store"))
    v1_rows = persona_rows(store, "v0001")
    assert first["version"] == "v0001" and len(v1_rows) == 6

    calls = server.calls
    nothing = nightly_refresh(RefreshParams(**common))
    assert nothing["published"] is False and nothing["new_files"] == 0 and nothing["files"] == 6
    assert "nothing new" in nothing["message"]
    assert server.calls == calls and hub_versions(store, "default") == ["v0001"]

    for i in (10, 11, 12):  # three new documents
        (corpus / f"doc{i:02d}.txt").write_text(
            f"Field notes {i}: the lighthouse keeper counted {i * 3} passing trawlers and replaced lens gasket {i}.")
    server.requests.clear()
    refreshed = nightly_refresh(RefreshParams(**common))
    assert refreshed["published"] is True and refreshed["new_files"] == 3 and refreshed["version"] == "v0002"
    chat = [r for r in server.requests if "messages" in r]
    assert sorted({doc_marker(r) for r in chat}) == ["Field notes 10", "Field notes 11", "Field notes 12"]
    crawl = next(s for s in refreshed["stages"] if s["stage"] == "crawl")
    assert crawl["counts"]["rows_in"] == 3, "only the new files are crawled"

    v2_rows = persona_rows(store, "v0002")
    v1_ids = {r["persona_id"] for r in v1_rows}
    added = [r for r in v2_rows if r["persona_id"] not in v1_ids]
    assert v1_ids <= {r["persona_id"] for r in v2_rows} and len(added) == 3 == refreshed["added_personas"]
    assert all(Path(r["source"]).name in {"doc10.txt", "doc11.txt", "doc12.txt"} for r in added)
    assert persona_rows(store, "v0001") == v1_rows, "a reader of the previous version sees it unchanged"

    again = nightly_refresh(RefreshParams(**common))
    assert again["published"] is False and hub_versions(store, "default") == ["v0001", "v0002"]

    from personahub.cli import app

    listed = CliRunner().invoke(app, ["hub", "versions", "--store", str(tmp_path / "store"), "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert [(r["version"], r["personas"], r["added"], r["files_read"]) for r in rows] == [
        ("v0001", 6, 6, 6), ("v0002", 9, 3, 3)]
