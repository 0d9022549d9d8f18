"""Crawl: every input record becomes a document, a filtered row or a quarantined row with a reason."""

from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path

import pytest

from personahub.tasks.core.checkpoint import StageCheckpoint
from personahub.tasks.crawl import CrawlParams, crawl_shard, doc_id_for, expand_sources, group_files, plan_shards
from personahub.tasks.crawl.clean import normalise_text
from personahub.tasks.crawl.readers import ReaderOptions, read_records
from personahub.tasks.core.store import Store

SHARED_DATA = Path(os.environ.get("PERSONAHUB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def jsonl(rows: list) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def doc_id(text: str) -> str:
    return doc_id_for(normalise_text(text))


def crawl_files(checkpoint: StageCheckpoint, files: list[str], params: CrawlParams) -> dict[str, int]:
    """Crawl each file as its own shard (as the flow does) and sum the counts."""
    totals = {"rows_in": 0, "rows_out": 0, "filtered": 0, "quarantined": 0}
    for shard_id, url in plan_shards(files).items():
        for key, n in crawl_shard(checkpoint, shard_id, url, params)["counts"].items():
            totals[key] += n
    return totals


def shard_rows(store: Store, checkpoint: StageCheckpoint, kind: str) -> list[dict]:
    return [r for e in checkpoint.done_shards().values() for r in store.read_parquet(e.files[kind]).to_pylist()]


def big_jsonl(n: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    return jsonl(
        [{"id": i, "text": f"record {i} " + "".join(rng.choice("abcdefghij ") for _ in range(200))} for i in range(n)]
    )


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A small corpus with one of every case the crawl must handle."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "plain.txt").write_text("Plain text document.\nSecond line.\n")
    (root / "notes.md").write_text("Intro line\n# The Title\n\nBody of the markdown note.\n")
    (root / "empty.txt").write_text("  \n\n")
    (root / "binary.txt").write_bytes(b"\x00\x01\x02binary\x00data")
    (root / "records.jsonl").write_bytes(
        jsonl(
            [
                {"id": "a1", "title": "First", "text": "Alpha document text."},
                b'{"id": "broken", "text": ',  # invalid JSON
                {"id": "a3", "body": "no text field here"},
                [1, 2, 3],  # not an object
                {"id": 7, "text": "Gamma document text."},
                {"id": "a5", "text": ""},  # empty: filtered
            ]
        )
        + b"\n   \n"  # blank lines are not records
    )
    with gzip.open(root / "sub" / "more.jsonl.gz", "wb") as fh:
        fh.write(jsonl([{"id": "g1", "text": "Zipped one."}, {"id": "g2", "text": "Zipped two."}]))
    (root / "ignored.csv").write_text("a,b\n1,2\n")
    (root / ".hidden.txt").write_text("dotfile")
    return root


# --- reading records ---------------------------------------------------------------------------
def test_text_and_markdown(corpus: Path) -> None:
    (rec,) = read_records(str(corpus / "plain.txt"))
    assert rec.error is None and rec.text.startswith("Plain text document.") and rec.title is None
    (md,) = read_records(str(corpus / "notes.md"))
    assert md.title == "The Title"
    assert "Body of the markdown note." in md.text


def test_jsonl_records_and_errors(corpus: Path) -> None:
    recs = list(read_records(str(corpus / "records.jsonl")))
    assert [r.record for r in recs] == [0, 1, 2, 3, 4, 5]
    good, invalid, no_text, not_obj, gamma, empty = recs
    assert (good.source_id, good.title, good.text, good.error) == ("a1", "First", "Alpha document text.", None)
    assert invalid.error.startswith("invalid_json: ")
    assert no_text.error == "no_text: no string field 'text'"
    assert not_obj.error == "invalid_json: record is not an object"
    assert gamma.source_id == "7" and gamma.title is None
    assert empty.error is None and empty.text == ""
    # Another text field name.
    (alt,) = [r for r in read_records(str(corpus / "records.jsonl"), ReaderOptions(text_field="body")) if r.error is None]
    assert alt.text == "no text field here"


def test_gzip_jsonl(corpus: Path) -> None:
    recs = list(read_records(str(corpus / "sub" / "more.jsonl.gz")))
    assert [(r.source_id, r.text) for r in recs] == [("g1", "Zipped one."), ("g2", "Zipped two.")]


def test_binary_txt_is_undecodable(corpus: Path) -> None:
    (rec,) = read_records(str(corpus / "binary.txt"))
    assert rec.text is None and rec.error.startswith("undecodable")


def test_latin1_txt_is_decoded(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("Un caf\u00e9 cr\u00e8me, s'il vous pla\u00eet.".encode("latin-1"))
    (rec,) = read_records(str(path))
    assert rec.error is None and rec.text == "Un caf\u00e9 cr\u00e8me, s'il vous pla\u00eet."


def test_truncated_gzip_keeps_earlier_records(tmp_path: Path) -> None:
    data = gzip.compress(big_jsonl(100))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    recs = list(read_records(str(path)))
    good = [r for r in recs if r.error is None]
    bad = [r for r in recs if r.error is not None]
    assert 10 < len(good) < 100
    assert [r.source_id for r in good] == [str(i) for i in range(len(good))]  # in order, none skipped
    assert len(bad) == 1 and bad[0].error.startswith("unreadable") and bad[0] is recs[-1]


def test_corrupt_gzip_is_quarantined_not_raised(tmp_path: Path) -> None:
    data = bytearray(gzip.compress(big_jsonl(100)))
    for i in range(200, 400):  # flip bytes in the deflate stream: zlib.error, not OSError
        data[i] ^= 0x55
    path = tmp_path / "corrupt.jsonl.gz"
    path.write_bytes(bytes(data))
    recs = list(read_records(str(path)))
    assert recs[-1].error.startswith("unreadable")
    (tmp_path / "notgz.jsonl.gz").write_bytes(b"not gzip at all")
    (rec,) = read_records(str(tmp_path / "notgz.jsonl.gz"))
    assert rec.error.startswith("unreadable: BadGzipFile")


# --- sources -----------------------------------------------------------------------------------
def test_expand_directory_ignores_unsupported_and_dotfiles(corpus: Path) -> None:
    files = expand_sources([str(corpus)])
    names = sorted(Path(f).name for f in files)
    assert names == ["binary.txt", "empty.txt", "more.jsonl.gz", "notes.md", "plain.txt", "records.jsonl"]
    assert files == sorted(files)
    assert all(Path(f).is_absolute() for f in files)


def test_expand_glob_and_file(corpus: Path) -> None:
    assert [Path(f).name for f in expand_sources([str(corpus / "*.jsonl")])] == ["records.jsonl"]
    both = expand_sources([str(corpus / "**" / "*.jsonl*"), str(corpus / "plain.txt"), str(corpus / "plain.txt")])
    assert sorted(Path(f).name for f in both) == ["more.jsonl.gz", "plain.txt", "records.jsonl"]  # deduplicated


def test_expand_missing_path_raises(corpus: Path) -> None:
    with pytest.raises(FileNotFoundError, match="matches nothing"):
        expand_sources([str(corpus), str(corpus / "missing.txt")])
    with pytest.raises(FileNotFoundError, match="no supported files"):
        expand_sources([str(corpus / "ignored.csv")])
    with pytest.raises(FileNotFoundError):
        expand_sources([str(corpus / "*.nothing")])


def test_plan_shards_one_per_file_stable_ids(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("first")
    b.write_text("second")
    plan = plan_shards([str(a), str(b)])
    assert sorted(plan.values()) == [str(a), str(b)]
    assert plan == plan_shards([str(b), str(a)]), "ids do not depend on the order given"
    c = tmp_path / "c.txt"
    c.write_text("third")
    with_c = plan_shards([str(a), str(b), str(c)])
    assert {k: v for k, v in with_c.items() if v != str(c)} == plan, "a new file leaves the other shards alone"
    b.write_text("second, edited")
    assert plan_shards([str(a), str(b)])[next(k for k, v in plan.items() if v == str(a))] == str(a)
    assert set(plan_shards([str(a), str(b)])) != set(plan), "a changed file gets a new shard id"


def write_small_files(root: Path, n: int) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"f{i:04d}.txt").write_text(f"Small file {i} about harbour cranes. " * (1 + i % 20))
    return sorted(str(p) for p in root.iterdir())


def test_group_files_cuts_small_files_into_groups_of_about_shard_bytes(tmp_path: Path) -> None:
    files = write_small_files(tmp_path / "c", 400)
    groups = group_files(files, shard_bytes=40 * 4096)  # every file costs 4 KB: about 40 files a group
    assert [f for g in groups.values() for f in g] == files, "every file once, groups contiguous in path order"
    # 400 files cut with probability 1/40 each: 10 groups expected, 4 standard deviations either side
    assert 2 <= len(groups) <= 30, len(groups)
    assert group_files(list(reversed(files)), 40 * 4096) == groups, "the plan does not depend on the order given"
    one_each = group_files(files, shard_bytes=1)
    assert one_each == {sid: [f] for sid, f in plan_shards(files).items()}, "a file of shard_bytes or more is alone"


def test_group_files_a_new_or_changed_file_changes_only_its_group(tmp_path: Path) -> None:
    files = write_small_files(tmp_path / "c", 400)
    before = group_files(files, 40 * 4096)
    new = tmp_path / "c" / "f0200b.txt"
    new.write_text("A new small file about tide gauges.")
    after = group_files(sorted(files + [str(new)]), 40 * 4096)
    gone, added = set(before) - set(after), set(after) - set(before)
    assert len(gone) == 1 and 1 <= len(added) <= 2, (len(gone), len(added))
    old_group = before[gone.pop()]
    assert sorted(f for sid in added for f in after[sid]) == sorted(old_group + [str(new)])

    Path(files[10]).write_text("edited, and longer than it was before " * 3)
    edited = group_files(files, 40 * 4096)
    changed = [sid for sid in before if sid not in edited]
    assert len(changed) == 1 and files[10] in before[changed[0]], "only the edited file's group gets a new id"


def test_crawling_a_group_equals_crawling_its_files(tmp_path: Path) -> None:
    files = write_small_files(tmp_path / "c", 30)
    store = Store(str(tmp_path / "store"))
    apart = StageCheckpoint(store, "r", "apart", {})
    crawl_files(apart, files, CrawlParams(min_chars=10))
    together = StageCheckpoint(store, "r", "together", {})
    result = crawl_shard(together, "g0", files, CrawlParams(min_chars=10))
    assert result["counts"]["rows_in"] == 30
    key = lambda r: (r["source"], r["record"])  # noqa: E731
    strip = lambda rows: sorted(({k: v for k, v in r.items() if k != "fetched_at"} for r in rows), key=key)  # noqa: E731
    assert strip(shard_rows(store, together, "data")) == strip(shard_rows(store, apart, "data"))
    assert together.done_shards()["g0"].extra["files"] == files


# --- doc ids -----------------------------------------------------------------------------------
def test_doc_id_deterministic() -> None:
    assert doc_id("Hello world\n") == doc_id("Hello world\n")
    assert doc_id("line one\r\nline two\r\n") == doc_id("line one\nline two\n")
    assert doc_id("line one   \nline two") == doc_id("line one\nline two")  # trailing spaces
    assert doc_id("cafe\u0301") == doc_id("caf\u00e9")  # NFC
    assert doc_id("Hello world") != doc_id("Hello world!")
    assert len(doc_id("x")) == 20


# --- shards ------------------------------------------------------------------------------------
def test_crawl_shard_writes_data_and_quarantine(store: Store, corpus: Path) -> None:
    (corpus / "crlf.txt").write_bytes(b"Plain text document.\r\nSecond line.\r\n")
    files = expand_sources([str(corpus)])
    checkpoint = StageCheckpoint(store, "run1", "crawl", {"min_chars": 1})
    counts = crawl_files(checkpoint, files, CrawlParams(min_chars=1))
    # 5 text files (1 record each) + 6 JSONL records + 2 gzip records; crlf.txt repeats plain.txt
    # within its own shard only, so both are kept here (the crawl_dedup pass removes the repeat)
    assert counts == {"rows_in": 13, "rows_out": 7, "filtered": 2, "quarantined": 4}

    docs = shard_rows(store, checkpoint, "data")
    quarantine = shard_rows(store, checkpoint, "quarantine")
    assert len(docs) == 7 and len(quarantine) == 4
    by_name: dict[str, list[dict]] = {}
    for d in docs:
        by_name.setdefault(Path(d["source"]).name, []).append(d)
    assert by_name["notes.md"][0]["title"] == "The Title"
    assert by_name["crlf.txt"][0]["doc_id"] == by_name["plain.txt"][0]["doc_id"]
    assert by_name["crlf.txt"][0]["text"] == "Plain text document.\nSecond line."
    assert [(d["source_id"], d["record"]) for d in by_name["records.jsonl"]] == [("a1", 0), ("7", 4)]
    for d in docs:
        assert d["doc_id"] == doc_id_for(d["text"])
        assert d["n_bytes"] == len(d["text"].encode())
        assert d["fetched_at"] and d["language"]

    reasons = sorted((Path(q["source"]).name, q["record"], q["reason"].split(":")[0]) for q in quarantine)
    assert reasons == [
        ("binary.txt", 0, "undecodable"),
        ("records.jsonl", 1, "invalid_json"),
        ("records.jsonl", 2, "no_text"),
        ("records.jsonl", 3, "invalid_json"),
    ]
    filtered = {}
    for entry in checkpoint.done_shards().values():
        for code, n in entry.extra["reasons"].items():
            filtered[code] = filtered.get(code, 0) + n
    assert filtered == {"undecodable": 1, "invalid_json": 2, "no_text": 1, "empty": 2}


def test_crawl_shard_truncated_gzip_counts(store: Store, tmp_path: Path) -> None:
    data = gzip.compress(big_jsonl(100, seed=1))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    checkpoint = StageCheckpoint(store, "run1", "crawl", {"min_chars": 1})
    counts = crawl_shard(checkpoint, "s00000", str(path), CrawlParams(min_chars=1))["counts"]
    assert counts["quarantined"] == 1 and counts["filtered"] == 0
    assert 10 < counts["rows_out"] < 100
    assert counts["rows_in"] == counts["rows_out"] + 1
    quarantine = store.read_parquet(checkpoint.shard_path("s00000", "quarantine")).to_pylist()
    assert quarantine[0]["reason"].startswith("unreadable") and quarantine[0]["record"] == -1


def test_min_chars_filters_short_documents(tmp_path: Path) -> None:
    (tmp_path / "short.txt").write_text("tiny")
    (tmp_path / "long.txt").write_text("long enough document")
    store = Store(str(tmp_path / "store"))
    checkpoint = StageCheckpoint(store, "run1", "crawl", {"min_chars": 10})
    counts = crawl_files(checkpoint, sorted(str(p) for p in tmp_path.glob("*.txt")), CrawlParams(min_chars=10))
    assert counts == {"rows_in": 2, "rows_out": 1, "filtered": 1, "quarantined": 0}


# --- real third-party data ---------------------------------------------------------------------
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data not found at {SHARED_DATA}")
def test_crawl_shared_data(tmp_path: Path) -> None:
    dolma = SHARED_DATA / "webtext" / "jsonl" / "dolma_cc_en_head-0091.jsonl"
    gutenberg = SHARED_DATA / "webtext" / "text" / "gutenberg"
    if not dolma.is_file() or not gutenberg.is_dir():
        pytest.skip(f"dolma/gutenberg files not found under {SHARED_DATA}")
    books = sorted(str(p) for p in gutenberg.glob("*.txt"))
    assert books
    files = expand_sources([str(dolma), str(gutenberg)])
    assert set(books) <= set(files) and str(dolma) in files

    store = Store(str(tmp_path / "store"))
    checkpoint = StageCheckpoint(store, "run1", "crawl", {"min_chars": 1})
    counts = crawl_files(checkpoint, files, CrawlParams())
    assert counts["rows_out"] > 0
    assert counts["rows_in"] == counts["rows_out"] + counts["filtered"] + counts["quarantined"]

    docs = shard_rows(store, checkpoint, "data")
    per_source: dict[str, int] = {}
    for d in docs:
        per_source[d["source"]] = per_source.get(d["source"], 0) + 1
    for book in books:
        assert per_source.get(book) == 1, book  # one document per book
    assert per_source.get(str(dolma), 0) > 0
    assert all(d["n_bytes"] > 0 for d in docs)
