"""Readers: every format, every bad input, bounded memory — on files the tests write, and on the shared real web text."""

from __future__ import annotations

import gzip
import io
import json
import os
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from personahub.tasks.crawl.html import decode_bytes, extract_html, normalise_encoding
from personahub.tasks.crawl.readers import READERS, ReaderOptions, read_records, supported_suffixes

SHARED_DATA = Path(os.environ.get("PERSONAHUB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
WEBTEXT = SHARED_DATA / "webtext"
needs_shared = pytest.mark.skipif(not WEBTEXT.is_dir(), reason=f"shared data not found at {WEBTEXT}")

ARTICLE = "<p>" + "The lighthouse keeper wrote about storms, ships and the long winter nights on the island. " * 6 + "</p>"
SOSEKI = (
    "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。"
    "何でも薄暗いじめじめした所でニャーニャー泣いていた事だけは記憶している。"
)
GERMAN = "Die Gemüsebrühe schmeckt süß und würzig, sagte der Bäcker aus München. Größere Töpfe für die Straße. "


def page(title: str, body: str, head: str = "") -> str:
    nav = "<nav><ul><li><a href='/'>Home</a></li><li><a href='/about'>About us</a></li></ul></nav>"
    cookie = "<div class='cookie-banner'>We use cookies. OK</div>"
    return (
        f"<!DOCTYPE html><html><head>{head}<title>{title}</title></head><body>{cookie}{nav}"
        f"<article><h1>{title}</h1>{body}</article><footer>(c) 2024 Example Corp - Impressum</footer></body></html>"
    )


# --- HTML decoding and extraction ---------------------------------------------------------------
@pytest.mark.parametrize(
    "head, declared",
    [('<meta charset="Shift_JIS">', None), ('<meta http-equiv="Content-Type" content="text/html; charset=shift_jis">', None),
     ("", "Shift_JIS"), ("", None)],
    ids=["meta-charset", "http-equiv", "http-header", "detected"],
)
def test_shift_jis_page(head: str, declared: str | None) -> None:
    raw = page("吾輩は猫である", f"<p>{SOSEKI * 3}</p>", head).encode("shift_jis")
    out = extract_html(raw, declared_encoding=declared)
    assert out.error is None and out.encoding == "cp932"
    assert out.title == "吾輩は猫である" and SOSEKI[:20] in out.text


@pytest.mark.parametrize("encoding", ["cp1252", "latin-1"])
def test_legacy_german_page(encoding: str) -> None:
    raw = page("Über die Brühe", f"<p>{GERMAN * 5}</p>").encode(encoding)
    out = extract_html(raw)
    assert out.encoding == "cp1252" and out.title == "Über die Brühe" and "Gemüsebrühe schmeckt süß" in out.text


def test_extraction_drops_boilerplate_and_empty_pages_are_errors() -> None:
    out = extract_html(page("Keeper", ARTICLE).encode())
    assert "lighthouse keeper" in out.text and "cookies" not in out.text and "Impressum" not in out.text
    empty = extract_html(b"<html><head><title>Nothing</title><script>var x = 1;</script></head><body> </body></html>")
    assert empty.text is None and empty.error.startswith("empty_after_extraction") and empty.title == "Nothing"
    assert extract_html(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR").error.startswith("undecodable")


def test_extraction_runs_one_at_a_time_across_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Concurrent trafilatura.extract() calls crash lxml (SIGSEGV seen in CI); the crawl's threads must take turns."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import trafilatura

    real_extract = trafilatura.extract
    inside, most = 0, 0
    guard = threading.Lock()

    def counting_extract(*args, **kwargs):
        nonlocal inside, most
        with guard:
            inside += 1
            most = max(most, inside)
        time.sleep(0.01)  # widen the window in which a second thread would enter
        try:
            return real_extract(*args, **kwargs)
        finally:
            with guard:
                inside -= 1

    monkeypatch.setattr(trafilatura, "extract", counting_extract)
    raw = page("Keeper", ARTICLE).encode()
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda _: extract_html(raw), range(16)))
    assert all("lighthouse keeper" in out.text for out in outs)
    assert most == 1


def test_decoding_rules() -> None:
    assert decode_bytes("naïve".encode()) == ("naïve", "utf-8")
    # A page that says ISO-8859-1 but is UTF-8: valid UTF-8 wins.
    assert decode_bytes("Grüße".encode(), "iso-8859-1") == ("Grüße", "utf-8")
    assert decode_bytes("café".encode("latin-1")) == ("café", "cp1252")  # short Latin-1 is not Big5
    stray = (GERMAN * 20).encode() + b"caf\xe9 " + (GERMAN * 5).encode()  # one cp1252 byte in UTF-8
    text, codec = decode_bytes(stray, "iso-8859-1")
    assert codec == "utf-8" and "Gemüsebrühe" in text and text.count("\ufffd") == 1
    assert decode_bytes(SOSEKI.encode("euc-jp"))[0] == SOSEKI
    assert decode_bytes("BOM".encode("utf-16"))[0] == "BOM"
    assert [normalise_encoding(x) for x in ("ISO-8859-1", "x-sjis", "GB2312", "utf8", "bogus")] == [
        "cp1252", "cp932", "gb18030", "utf-8", None,
    ]
    with pytest.raises(ValueError, match="binary"):
        decode_bytes(b"ELF\x00\x01\x02" * 100)


# --- text and HTML files ----------------------------------------------------------------------------
def test_text_files_legacy_binary_empty_and_cap(tmp_path: Path) -> None:
    (tmp_path / "legacy.txt").write_bytes((GERMAN * 3).encode("cp1252"))
    (rec,) = read_records(str(tmp_path / "legacy.txt"))
    assert rec.error is None and "Gemüsebrühe" in rec.text and rec.metadata["encoding"] == "cp1252"
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 64)
    (rec,) = read_records(str(tmp_path / "binary.txt"))
    assert rec.text is None and rec.error.startswith("undecodable: binary")
    (tmp_path / "empty.txt").write_bytes(b"")
    (rec,) = read_records(str(tmp_path / "empty.txt"))
    assert rec.error is None and rec.text == ""
    (tmp_path / "big.md").write_bytes(b"# Title\n" + b"x" * 2000)
    (rec,) = read_records(str(tmp_path / "big.md"), ReaderOptions(max_record_bytes=1000))
    assert rec.error.startswith("over_cap")


def test_html_file(tmp_path: Path) -> None:
    neko = page("吾輩は猫である", f"<p>{SOSEKI * 3}</p>", '<meta charset="shift_jis">')
    (tmp_path / "a.html").write_bytes(neko.encode("shift_jis"))
    (rec,) = read_records(str(tmp_path / "a.html"))
    assert rec.error is None and rec.title == "吾輩は猫である" and SOSEKI[:10] in rec.text
    (tmp_path / "empty.htm").write_bytes(b"")
    (rec,) = read_records(str(tmp_path / "empty.htm"))
    assert rec.text == "" and rec.error is None
    (tmp_path / "nav.xhtml").write_bytes(b"<html><head><style>p {}</style></head><body><script>x()</script></body></html>")
    (rec,) = read_records(str(tmp_path / "nav.xhtml"))
    assert rec.error.startswith("empty_after_extraction")


# --- JSON Lines ---------------------------------------------------------------------------------
def test_jsonl_keeps_url_and_metadata(tmp_path: Path) -> None:
    rows = [
        {"id": "fw1", "text": "FineWeb text.", "url": "https://a.example/1", "date": "2024-01-01", "dump": "CC-2024"},
        {
            "id": "d1",
            "text": "Dolma text.",
            "source": "cc",
            "metadata": {"url": "https://b.example/", "title": "B", "language": "en", "line_ids": list(range(2000))},
        },
        {"id": 3, "raw_content": "RedPajama text.", "meta": json.dumps({"url": "https://c.example/", "language": "de"})},
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    fw, dolma, rp = read_records(str(path))
    assert (fw.source_id, fw.url) == ("fw1", "https://a.example/1")
    assert fw.metadata == {"date": "2024-01-01", "dump": "CC-2024"}
    assert (dolma.url, dolma.title) == ("https://b.example/", "B")
    assert dolma.metadata == {"source": "cc", "language": "en", "_dropped": ["line_ids"]}  # long values dropped
    assert rp.error.startswith("no_text")
    (*_, rp) = read_records(str(path), ReaderOptions(text_field="raw_content"))
    assert (rp.text, rp.source_id, rp.url, rp.metadata) == ("RedPajama text.", "3", "https://c.example/", {"language": "de"})


def test_jsonl_200mb_line_is_quarantined_with_flat_memory(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as fh:
        fh.write(b'{"id": "before", "text": "first"}\n{"id": "huge", "text": "')
        chunk = b"a" * (1 << 20)
        for _ in range(200):
            fh.write(chunk)
        fh.write(b'"}\n{"id": "after", "text": "last"}\n')
    tracemalloc.start()
    try:
        recs = list(read_records(str(path), ReaderOptions(max_record_bytes=10_000_000)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [r.record for r in recs] == [0, 1, 2]
    assert recs[0].text == "first" and recs[2].source_id == "after" and recs[2].text == "last"
    assert recs[1].error.startswith("over_cap: line of 2097") and recs[1].text is None
    assert peak < 50_000_000, f"peak {peak / 1e6:.0f} MB"


def test_jsonl_line_exactly_at_cap_is_kept(tmp_path: Path) -> None:
    line = json.dumps({"text": "x" * 80}).encode()
    (tmp_path / "cap.jsonl").write_bytes(line + b"\n" + line)
    recs = list(read_records(str(tmp_path / "cap.jsonl"), ReaderOptions(max_record_bytes=len(line))))
    assert [r.error for r in recs] == [None, None]


# --- Parquet ----------------------------------------------------------------------------------
def test_parquet_columns_and_missing_text(tmp_path: Path) -> None:
    table = pa.table(
        {
            "id": ["p0", "p1", "p2"],
            "text": ["zero", None, "two"],
            "url": ["https://x.example/0", None, "https://x.example/2"],
            "score": [0.5, 0.1, 0.9],
            "metadata": [{"lang": "en", "dump": "CC"}, {"lang": "fr", "dump": "CC"}, {"lang": "de", "dump": "CC"}],
        }
    )
    pq.write_table(table, tmp_path / "docs.parquet", row_group_size=2)
    recs = list(read_records(str(tmp_path / "docs.parquet")))
    assert [r.record for r in recs] == [0, 1, 2]
    assert (recs[0].text, recs[0].source_id, recs[0].url) == ("zero", "p0", "https://x.example/0")
    assert recs[0].metadata == {"score": 0.5, "lang": "en", "dump": "CC"}
    assert recs[1].error.startswith("no_text") and recs[2].metadata["lang"] == "de"
    json.dumps([r.metadata for r in recs])  # JSON-able
    pq.write_table(table.drop(["text"]), tmp_path / "notext.parquet")
    (rec,) = read_records(str(tmp_path / "notext.parquet"))
    assert rec.record == -1 and rec.error.startswith("no_text: no column 'text'")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    (rec,) = read_records(str(tmp_path / "junk.parquet"))
    assert rec.record == -1 and rec.error.startswith("unreadable")


# --- WARC -------------------------------------------------------------------------------------
def write_warc(path: Path, *, gzip_records: bool = True, big_image: int = 0) -> None:
    """A small crawl: warcinfo, request + HTML response (Shift-JIS), image, 404, revisit, WET, dns."""
    with open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=gzip_records)
        w.write_record(w.create_warcinfo_record(path.name, {"software": "test"}))

        def response(uri: str, body: bytes, ctype: str, status: str = "200 OK") -> None:
            req = StatusAndHeaders(f"GET {uri} HTTP/1.1", [("Host", "example.com")], is_http_request=True)
            w.write_record(w.create_warc_record(uri, "request", payload=io.BytesIO(b""), http_headers=req))
            http = StatusAndHeaders(status, [("Content-Type", ctype)], protocol="HTTP/1.1")
            w.write_record(w.create_warc_record(uri, "response", payload=io.BytesIO(body), http_headers=http))

        response("https://example.com/", page("Keeper", ARTICLE).encode(), "text/html; charset=utf-8")
        neko = page("吾輩は猫である", f"<p>{SOSEKI * 3}</p>").encode("shift_jis")
        response("https://example.jp/neko", neko, "text/html; charset=Shift_JIS")
        response("https://example.com/logo.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * (big_image or 100), "image/png")
        response("https://example.com/gone", b"<html><body>Not found</body></html>", "text/html", "404 Not Found")
        http = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
        uri = "https://example.com/"
        w.write_record(w.create_revisit_record(uri, "sha1:AAAA", uri, "2024-01-01T00:00:00Z", http_headers=http))
        wet = io.BytesIO(b"Plain WET text of the page.")
        language = {"WARC-Identified-Content-Language": "eng"}
        w.write_record(w.create_warc_record(uri, "conversion", payload=wet, warc_content_type="text/plain", warc_headers_dict=language))
        log = io.BytesIO(b"crawl log")
        w.write_record(w.create_warc_record("metadata://crawler/log.txt", "resource", payload=log, warc_content_type="text/plain"))


def test_warc_documents_skips_and_ignored_records(tmp_path: Path) -> None:
    path = tmp_path / "crawl.warc.gz"
    write_warc(path)
    recs = list(read_records(str(path)))
    kinds = [(r.record, r.error or r.skip or "doc") for r in recs]
    assert kinds == [
        (2, "doc"), (4, "doc"), (6, "non_html: image/png"), (8, "http_status: 404"),
        (9, "revisit"), (10, "doc"), (11, "not_document: metadata resource"),
    ]  # warcinfo (0) and requests (1, 3, …) are not documents and are not yielded
    html, sjis, wet = recs[0], recs[1], recs[5]
    assert html.url == "https://example.com/" and html.title == "Keeper" and "lighthouse keeper" in html.text
    assert html.source_id.startswith("<urn:uuid:") and html.fetched_at and html.metadata["http_status"] == 200
    assert sjis.title == "吾輩は猫である" and SOSEKI[:10] in sjis.text and sjis.metadata["encoding"] == "cp932"
    assert wet.text == "Plain WET text of the page." and wet.metadata["language"] == "eng"
    # The same content uncompressed, and as .wet.
    write_warc(tmp_path / "plain.warc", gzip_records=False)
    assert [(r.record, r.error or r.skip or "doc") for r in read_records(str(tmp_path / "plain.warc"))] == kinds


def test_truncated_and_bad_warcs_are_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "full.warc.gz"
    write_warc(path, big_image=300_000)
    data = path.read_bytes()
    cut = tmp_path / "cut.warc.gz"
    for size in (len(data) - 200, len(data) // 2):  # inside the last record; inside a request record
        cut.write_bytes(data[:size])
        recs = list(read_records(str(cut)))
        assert recs[0].text and recs[-1].record == -1 and recs[-1].error.startswith("unreadable: TruncatedInputError")
        assert sum(r.error is not None for r in recs) == 1
    plain = tmp_path / "full.warc"
    write_warc(plain, gzip_records=False)
    raw = plain.read_bytes()
    at = raw.index(SOSEKI[:5].encode("shift_jis"))  # cut inside the Shift-JIS page's payload
    (tmp_path / "cut.warc").write_bytes(raw[:at])
    recs = list(read_records(str(tmp_path / "cut.warc")))
    assert [r.error or "doc" for r in recs][:1] == ["doc"] and recs[-1].error.startswith("unreadable")
    assert len(recs) == 2  # the cut page is not passed off as a document
    (tmp_path / "text.warc").write_text("this is not a WARC file\n")
    (rec,) = read_records(str(tmp_path / "text.warc"))
    assert rec.error.startswith("unreadable: not a WARC file")
    (tmp_path / "junk.warc.gz").write_bytes(gzip.compress(b"\x00\x01" * 100)[:-10])
    (rec,) = read_records(str(tmp_path / "junk.warc.gz"))
    assert rec.error.startswith("unreadable")
    (tmp_path / "empty.warc").write_bytes(b"")
    (rec,) = read_records(str(tmp_path / "empty.warc"))
    assert rec.text == "" and rec.error is None


def test_warc_memory_is_bounded_by_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "big.warc.gz"
    with open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=True)
        http = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
        huge = b"<html><body><p>" + b"word " * 6_000_000 + b"</p></body></html>"  # 30 MB
        w.write_record(w.create_warc_record("https://big.example/", "response", payload=io.BytesIO(huge), http_headers=http))
        del huge
        small = io.BytesIO(page("Keeper", ARTICLE).encode())
        w.write_record(w.create_warc_record("https://small.example/", "response", payload=small, http_headers=http))
    tracemalloc.start()
    try:
        recs = list(read_records(str(path), ReaderOptions(max_record_bytes=1_000_000)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert recs[0].error.startswith("over_cap") and "lighthouse" in recs[1].text
    assert peak < 20_000_000, f"peak {peak / 1e6:.0f} MB"


def test_arc_file(tmp_path: Path) -> None:
    http = b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n" + page("Old page", ARTICLE).encode()
    version = b"1 0 InternetArchive\nURL IP-address Archive-date Content-type Archive-length\n"
    arc = b"filedesc://t.arc 0.0.0.0 20140101000000 text/plain %d\n%s\n" % (len(version), version)
    arc += b"http://example.com/ 93.184.216.34 20140101000000 text/html %d\n%s\n" % (len(http), http)
    (tmp_path / "t.arc.gz").write_bytes(gzip.compress(arc))
    (rec,) = read_records(str(tmp_path / "t.arc.gz"))
    assert (rec.url, rec.title, rec.fetched_at) == ("http://example.com/", "Old page", "2014-01-01T00:00:00Z")


def test_suffix_table_puts_compound_suffixes_first() -> None:
    seen: list[str] = []
    for suffixes, _ in READERS:
        for suffix in suffixes:
            assert not any(suffix.endswith(earlier) for earlier in seen), f"{suffix} shadowed"
            seen.append(suffix)
    assert {".warc.gz", ".warc.wet.gz", ".parquet", ".html", ".jsonl.gz"} <= set(supported_suffixes())


# --- the shared real web text --------------------------------------------------------------------
@needs_shared
def test_real_warc_files() -> None:
    files = [p for p in sorted((WEBTEXT / "warc").iterdir()) if p.name.lower().endswith(supported_suffixes())]
    assert len(files) >= 8
    for path in files:
        recs = list(read_records(str(path)))
        assert not [r.error for r in recs if r.error], path.name
        if ".wat" in path.name:  # WAT files hold metadata records only: read, no documents
            assert recs == [], path.name
            continue
        assert sum(1 for r in recs if r.text) > 0, path.name
    pywb = list(read_records(str(WEBTEXT / "warc/pywb_iana.warc.gz")))
    assert sum(r.skip == "revisit" for r in pywb) == 123
    assert sum(1 for r in pywb if r.text) == 16  # the 200 HTML responses; js/css/fonts/images are non_html
    dolma = [r for r in read_records(str(WEBTEXT / "warc/dolma_sample-0000.warc.gz")) if r.text]
    assert len(dolma) == 22 and all(r.url.startswith("http") and "<" not in r.url for r in dolma)


@needs_shared
def test_real_html_pages() -> None:
    pages = sorted((WEBTEXT / "html/trafilatura_cache").glob("*.html"))
    recs = [rec for p in pages for rec in read_records(str(p))]
    assert len(recs) == len(pages) >= 100
    assert sum(1 for r in recs if r.text and r.text.strip()) >= 0.9 * len(pages)
    legacy = [r for r in recs if r.metadata.get("encoding") == "cp1252"]
    assert legacy and all("ü" in r.text or "ä" in r.text or "ö" in r.text for r in legacy)


@needs_shared
def test_real_jsonl_and_parquet() -> None:
    recs = list(read_records(str(WEBTEXT / "parquet/wikitext2_valid_test_articles.parquet")))
    assert len(recs) == 122 and all(r.text and r.source_id for r in recs) and recs[0].title == "Homarus gammarus"
    dolma = list(read_records(str(WEBTEXT / "jsonl/dolma_cc_en_head-0091.jsonl")))
    assert dolma and all(r.text and r.url and r.metadata.get("language") == "en" for r in dolma)
    zipped = list(read_records(str(WEBTEXT / "jsonl/dolma_provided_documents_000.jsonl.gz")))
    assert zipped and all(r.text and r.url for r in zipped)
