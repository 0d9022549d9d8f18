"""The crawl flow: mixed formats in one run, counts that reconcile, determinism, incremental reruns,
seeded sampling and dedup across files."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from personahub.flows.crawl import CrawlFlowParams, crawl
from personahub.tasks.crawl import CrawlParams
from personahub.tasks.core.store import Store

SHARED = Path(os.environ.get("PERSONAHUB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

LONG = " The committee reviewed the proposal in detail and asked for a revised budget by spring."


def write_mixed_corpus(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "notes.md").write_text("# Harbour notes\nThe crane operators logged 412 moves." + LONG)
    (root / "plain.txt").write_text("A plain text note about sourdough hydration and oven spring." + LONG)
    (root / "same_as_plain.txt").write_text("A plain text note about sourdough hydration and oven spring." + LONG)
    (root / "tiny.txt").write_text("too short")
    (root / "empty.txt").write_text("")
    (root / "binary.txt").write_bytes(b"\x00\x01\x02 binary \x00" * 50)
    records = [{"id": f"r{i}", "url": f"https://example.org/{i}", "text": f"Record {i} about tidal energy." + LONG}
               for i in range(5)]
    lines = [json.dumps(r) for r in records] + ["{not json"]
    (root / "records.jsonl.gz").write_bytes(gzip.compress("\n".join(lines).encode()))
    return root


def reconcile(stage: dict) -> None:
    c = stage["counts"]
    assert c["rows_in"] == c["rows_out"] + c["filtered"] + c["quarantined"], stage


def docs_of(store: Store, run_id: str) -> list[dict]:
    manifest = store.read_json(f"runs/{run_id}/crawl_dedup/manifest.json")
    rows = [r for s in manifest["shards"] if s["rows"].get("data") for r in store.read_parquet(s["files"]["data"]).to_pylist()]
    return sorted(rows, key=lambda r: r["doc_id"])


def test_mixed_formats_counts_and_reasons(tmp_path: Path) -> None:
    corpus = write_mixed_corpus(tmp_path / "corpus")
    summary = crawl(CrawlFlowParams(sources=[str(corpus)], store=str(tmp_path / "store")))

    read, dedup = summary["stages"]
    for stage in (read, dedup):
        reconcile(stage)
    assert read["shards"] < 7, "small files share a crawl shard"
    assert read["counts"]["rows_in"] == 12  # 6 single-document files + 6 JSONL lines
    assert read["counts"]["quarantined"] == 3  # the binary file, the broken JSONL line, the empty file
    assert read["reasons"]["undecodable"] == 1 and read["reasons"]["invalid_json"] == 1
    assert read["reasons"]["too_short"] == 1 and read["reasons"]["empty_file"] == 1
    assert dedup["reasons"] == {"duplicate": 1}, "the same text in two files is kept once"
    assert summary["documents"] == 7

    store = Store(str(tmp_path / "store"))
    docs = docs_of(store, summary["run_id"])
    jsonl = [d for d in docs if d["source_id"]]
    assert {d["url"] for d in jsonl} == {f"https://example.org/{i}" for i in range(5)}
    assert all(d["language"] and d["n_bytes"] == len(d["text"].encode()) and d["fetched_at"] for d in docs)


def test_deterministic_and_incremental(tmp_path: Path) -> None:
    corpus = write_mixed_corpus(tmp_path / "corpus")
    one_each = {"shard_bytes": 1}  # every file its own shard, so a new file is a shard of its own
    first = crawl(CrawlFlowParams(sources=[str(corpus)], store=str(tmp_path / "a"), **one_each))
    other = crawl(CrawlFlowParams(sources=[str(corpus)], store=str(tmp_path / "b")))
    docs_a = docs_of(Store(str(tmp_path / "a")), first["run_id"])
    docs_b = docs_of(Store(str(tmp_path / "b")), other["run_id"])
    strip = lambda docs: [{k: v for k, v in d.items() if k != "fetched_at"} for d in docs]  # noqa: E731
    assert strip(docs_a) == strip(docs_b), "same inputs, same documents and doc_ids, however files are grouped"

    (corpus / "new.md").write_text("# New\nA fresh page about glacier monitoring with time-lapse cameras." + LONG)
    again = crawl(CrawlFlowParams(sources=[str(corpus)], store=str(tmp_path / "a"), **one_each))
    read = again["stages"][0]
    assert read["shards"] == 8 and read["shards_run"] == 1, "only the new file is crawled"
    docs_again = docs_of(Store(str(tmp_path / "a")), again["run_id"])
    added = {d["doc_id"] for d in docs_again} - {d["doc_id"] for d in docs_a}
    assert len(docs_again) == len(docs_a) + 1 and len(added) == 1
    assert next(d for d in docs_again if d["doc_id"] in added)["source"].endswith("new.md")


def test_seeded_sample(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "many.jsonl").write_text("\n".join(json.dumps({"text": f"Document number {i} on soil science." + LONG})
                                                 for i in range(40)))
    def sample(seed: int, store: str) -> set[str]:
        summary = crawl(CrawlFlowParams(sources=[str(corpus)], store=str(tmp_path / store), max_docs=10, seed=seed))
        assert summary["documents"] == 10
        assert summary["stages"][1]["reasons"]["sampled_out"] == 30
        return {d["doc_id"] for d in docs_of(Store(str(tmp_path / store)), summary["run_id"])}

    assert sample(1, "s1") == sample(1, "s1b"), "the same seed takes the same sample"
    assert sample(1, "s1") != sample(2, "s2"), "another seed takes another sample"


def test_language_selection(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "en.txt").write_text("The village council met on Tuesday to discuss the new cycle lanes and the budget for the library." + LONG)
    (corpus / "de.txt").write_text("Der Gemeinderat hat am Dienstag über die neuen Radwege und das Budget der Bibliothek beraten. "
                                   "Die Entscheidung wurde auf die nächste Sitzung im Frühjahr vertagt.")
    summary = crawl(CrawlFlowParams(sources=[str(corpus)], store=str(tmp_path / "store"),
                                    crawl=CrawlParams(languages=["de"])))
    docs = docs_of(Store(str(tmp_path / "store")), summary["run_id"])
    assert [d["language"] for d in docs] == ["de"]
    assert summary["stages"][0]["reasons"].get("language") == 1


def test_cli_crawl(tmp_path: Path) -> None:
    from personahub.cli import app

    corpus = write_mixed_corpus(tmp_path / "corpus")
    result = CliRunner().invoke(app, ["crawl", str(corpus), "--store", str(tmp_path / "store")])
    assert result.exit_code == 0, result.output
    assert "7 documents at" in result.output and "quarantined" in result.output and "undecodable" in result.output


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "webtext").is_dir(), reason=f"shared data not found at {SHARED}")
def test_crawl_all_shared_webtext(tmp_path: Path) -> None:
    """Every file under ../shared/data/webtext in one run, mixed formats, counts reconciled."""
    summary = crawl(CrawlFlowParams(sources=[str(SHARED / "webtext")], store=str(tmp_path / "store")))
    read, dedup = summary["stages"]
    reconcile(read)
    reconcile(dedup)
    store = Store(str(tmp_path / "store"))
    manifest = store.read_json(f"runs/{summary['run_id']}/crawl/manifest.json")
    files = {f for s in manifest["shards"] for f in s["extra"]["files"]}
    on_disk = {str(p) for p in (SHARED / "webtext").rglob("*") if p.is_file()}
    assert files == on_disk, f"not ingested: {sorted(on_disk - files)}"
    assert summary["documents"] > 1000
    assert read["reasons"].get("revisit", 0) > 0, "WARC revisits are skipped and counted"



def test_bad_inputs_never_crash_the_run(tmp_path: Path) -> None:
    """The issue's list: a truncated .warc.gz, a binary file named .txt, a 200 MB single line, an
    HTML page in Shift-JIS and an empty file, all in one run."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter
    import io

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)
    for i in range(20):
        body = (f"<html><head><title>Page {i}</title></head><body><article><p>Paragraph {i} about river "
                f"restoration projects and the volunteers who plant willow cuttings along the banks.{LONG}</p>"
                f"</article></body></html>").encode()
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
        writer.write_record(writer.create_warc_record(f"https://example.org/{i}", "response", payload=io.BytesIO(body),
                                                      http_headers=headers))
    data = buf.getvalue()
    (corpus / "cut.warc.gz").write_bytes(data[: int(len(data) * 0.6)])
    (corpus / "binary.txt").write_bytes(bytes(range(256)) * 64)
    with open(corpus / "huge_line.jsonl", "wb") as fh:
        fh.write(json.dumps({"text": "Before the long line: a note on orchard pruning." + LONG}).encode() + b"\n")
        fh.write(b'{"text": "' + b"x" * (200 * 1024 * 1024) + b'"}\n')
        fh.write(json.dumps({"text": "After the long line: a note on cider pressing." + LONG}).encode() + b"\n")
    (corpus / "shift_jis.html").write_bytes(
        ('<html><head><meta charset="shift_jis"><title>京都の庭園</title></head><body><article><p>'
         + "京都の庭園を訪ねる旅行者のための案内です。苔の手入れと石の配置について庭師が説明します。" * 4
         + "</p></article></body></html>").encode("shift_jis"))
    (corpus / "empty.md").write_bytes(b"")

    summary = crawl(CrawlFlowParams(sources=[str(corpus)], store=str(tmp_path / "store")))

    read = summary["stages"][0]
    reconcile(read)
    assert read["reasons"]["unreadable"] == 1, "the truncated WARC is reported once, after its good records"
    assert read["reasons"]["undecodable"] == 1 and read["reasons"]["over_cap"] == 1 and read["reasons"]["empty_file"] == 1
    docs = docs_of(Store(str(tmp_path / "store")), summary["run_id"])
    assert any("京都の庭園" in d["text"] and d["language"] == "ja" for d in docs), "Shift-JIS decoded, not quarantined"
    assert sum(1 for d in docs if d["source"].endswith("cut.warc.gz")) >= 5, "records before the cut are kept"
    assert sum(1 for d in docs if d["source"].endswith("huge_line.jsonl")) == 2, "reading resumes after the long line"
