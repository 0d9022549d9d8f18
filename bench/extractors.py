"""HTML main-text extractors and WARC readers, measured on the shared real web text.

Prints two Markdown tables (and, with --samples, the start of a few outputs for a look at boilerplate):

1. HTML extraction on webtext/html/trafilatura_cache (110 real pages, with the manifest's "with" /
   "without" snippets: text that belongs to the main content and boilerplate that must not appear)
   and on the HTML responses of webtext/warc/*. Every page is decoded once with
   personahub.tasks.crawl.html.decode_bytes; the timing covers extraction only (parse + extract),
   one core. Candidates: trafilatura (as configured in html.main_text, and with fast=True),
   resiliparse html2text with main_content=True, and resiliparse without main_content (all
   visible text: the boilerplate baseline).
2. WARC reading: records/s of warcio and fastwarc over webtext/warc/* (every record, HTTP headers
   parsed, payload read), with their own gzip and through Python's gzip module (which is how the
   reader detects a truncated .warc.gz); then personahub's own read_records end to end.

    .venv/bin/python bench/extractors.py [--data ../shared/data] [--repeat 3] [--samples]
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from personahub.tasks.crawl.html import charset_from_content_type, decode_bytes, meta_charset


def norm(text: str) -> str:
    return " ".join(text.split())


def trafilatura_default(html: str, url: str | None) -> str | None:
    from personahub.tasks.crawl.html import main_text

    return main_text(html, url)


def trafilatura_fast(html: str, url: str | None) -> str | None:
    import trafilatura

    return trafilatura.extract(html, url=url, fast=True, include_comments=False, include_tables=True)


def resiliparse_main(html: str, url: str | None) -> str | None:
    from resiliparse.extract.html2text import extract_plain_text

    return extract_plain_text(html, main_content=True, preserve_formatting=True, alt_texts=False, comments=False)


def resiliparse_all(html: str, url: str | None) -> str | None:
    from resiliparse.extract.html2text import extract_plain_text

    return extract_plain_text(html, main_content=False, preserve_formatting=True, alt_texts=False)


EXTRACTORS: dict[str, Callable[[str, str | None], str | None]] = {
    "trafilatura 2.x (chosen config)": trafilatura_default,
    "trafilatura fast=True": trafilatura_fast,
    "resiliparse main_content=True": resiliparse_main,
    "resiliparse all text (baseline)": resiliparse_all,
}


def load_cache_pages(data: Path) -> list[dict]:
    manifest = data / "webtext/html/trafilatura_manifest.jsonl"
    pages = []
    for line in manifest.read_text().splitlines():
        entry = json.loads(line)
        raw = (data / "webtext" / entry["path"]).read_bytes()
        html, _ = decode_bytes(raw, meta_charset(raw))
        pages.append({"html": html, "url": entry["url"], "with": entry.get("with", []), "without": entry.get("without", [])})
    return pages


def load_warc_pages(data: Path) -> list[dict]:
    from warcio.archiveiterator import ArchiveIterator

    pages = []
    for path in sorted((data / "webtext/warc").glob("*.warc*")):
        with open(path, "rb") as fh:
            for rec in ArchiveIterator(fh):
                if rec.rec_type != "response" or rec.http_headers is None:
                    continue
                ctype = rec.http_headers.get_header("Content-Type") or ""
                if "html" not in ctype or rec.http_headers.get_statuscode() != "200":
                    continue
                raw = rec.content_stream().read()
                html, _ = decode_bytes(raw, charset_from_content_type(ctype), meta_charset(raw))
                url = (rec.rec_headers.get_header("WARC-Target-URI") or "").strip("<>")
                pages.append({"html": html, "url": url})
    return pages


def measure_extractor(fn, pages: list[dict], repeat: int) -> dict:
    outputs, slowest = [], 0.0
    for p in pages:  # warm-up (imports, caches), the outputs and the slowest page
        started = time.perf_counter()
        outputs.append(fn(p["html"], p["url"]))
        slowest = max(slowest, time.perf_counter() - started)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        for p in pages:
            fn(p["html"], p["url"])
        times.append(time.perf_counter() - started)
    texts = [norm(o or "") for o in outputs]
    row = {
        "pages/s": len(pages) / statistics.median(times),
        "slowest ms": 1000 * slowest,
        "empty %": 100 * sum(1 for t in texts if not t) / len(pages),
        "mean chars": statistics.mean(len(t) for t in texts),
        "outputs": outputs,
    }
    if all("with" in p for p in pages):
        found = [norm(s) in t for p, t in zip(pages, texts) for s in p["with"]]
        leaked = [norm(s) in t for p, t in zip(pages, texts) for s in p["without"]]
        row["with kept %"] = 100 * sum(found) / len(found)
        row["boilerplate leaked %"] = 100 * sum(leaked) / len(leaked)
    return row


def warc_records_warcio(path: Path, python_gzip: bool) -> int:
    from warcio.archiveiterator import ArchiveIterator

    n = 0
    with open(path, "rb") as fh:
        stream = gzip.GzipFile(fileobj=fh) if python_gzip and path.suffix == ".gz" else fh
        for rec in ArchiveIterator(stream):
            if rec.http_headers is not None:
                rec.http_headers.get_header("Content-Type")
            rec.content_stream().read()
            n += 1
    return n


def warc_records_fastwarc(path: Path, python_gzip: bool) -> int:
    from fastwarc.warc import ArchiveIterator

    n = 0
    with open(path, "rb") as fh:
        stream = io.BufferedReader(gzip.GzipFile(fileobj=fh)) if python_gzip and path.suffix == ".gz" else fh
        for rec in ArchiveIterator(stream, auto_decode="content"):  # "transfer" fails on pywb's de-chunked bodies
            rec.http_content_type
            rec.reader.read()
            n += 1
    return n


def measure_warc(data: Path, repeat: int) -> list[tuple[str, int, float]]:
    files = sorted((data / "webtext/warc").glob("*.warc*"))
    rows = []
    for name, fn in [("warcio", warc_records_warcio), ("fastwarc", warc_records_fastwarc)]:
        for python_gzip in (False, True):
            n = sum(fn(f, python_gzip) for f in files)  # warm-up
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                for f in files:
                    fn(f, python_gzip)
                times.append(time.perf_counter() - started)
            label = f"{name} ({'Python gzip' if python_gzip else 'own gzip'})"
            rows.append((label, n, n / statistics.median(times)))
    return rows


def measure_reader(data: Path, repeat: int) -> tuple[int, int, float, float]:
    """personahub's own read_records over webtext/warc: (yielded records, documents, records/s, MB/s)."""
    from personahub.tasks.crawl.readers import read_records, supported_suffixes

    files = [p for p in sorted((data / "webtext/warc").iterdir()) if p.name.lower().endswith(supported_suffixes())]
    size = sum(p.stat().st_size for p in files)
    recs = [r for p in files for r in read_records(str(p))]
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        for p in files:
            for _ in read_records(str(p)):
                pass
        times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    return len(recs), sum(1 for r in recs if r.text), len(recs) / seconds, size / 1e6 / seconds


def main() -> None:
    default_data = os.environ.get("PERSONAHUB_SHARED_DATA", str(Path(__file__).resolve().parents[2] / "shared/data"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=default_data)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--samples", action="store_true", help="print the start of some outputs")
    args = parser.parse_args()
    data = Path(args.data)

    sets = {"trafilatura_cache": load_cache_pages(data), "warc HTML": load_warc_pages(data)}
    print("## HTML extraction (extraction time only, 1 core)\n")
    print("| set | pages | extractor | pages/s | slowest page ms | empty % | mean chars | with kept % | boilerplate leaked % |")
    print("|---|---|---|---|---|---|---|---|---|")
    results = {}
    for set_name, pages in sets.items():
        for name, fn in EXTRACTORS.items():
            row = measure_extractor(fn, pages, args.repeat)
            results[(set_name, name)] = row
            kept = f"{row['with kept %']:.1f}" if "with kept %" in row else "–"
            leaked = f"{row['boilerplate leaked %']:.1f}" if "boilerplate leaked %" in row else "–"
            print(
                f"| {set_name} | {len(pages)} | {name} | {row['pages/s']:.1f} | {row['slowest ms']:.0f} | {row['empty %']:.1f} "
                f"| {row['mean chars']:.0f} | {kept} | {leaked} |"
            )

    print("\n## WARC reading (all records, HTTP headers parsed, payload read)\n")
    print("| library | records | records/s |")
    print("|---|---|---|")
    for label, n, rate in measure_warc(data, args.repeat):
        print(f"| {label} | {n} | {rate:.0f} |")

    n, docs, rate, mbps = measure_reader(data, args.repeat)
    print("\n## personahub read_records on webtext/warc (WARC parsing + HTML extraction)\n")
    print(f"{n} records yielded ({docs} documents): {rate:.0f} records/s, {mbps:.2f} MB/s of compressed WARC")

    if args.samples:
        for set_name, pages in sets.items():
            for index in range(0, len(pages), max(1, len(pages) // 4)):
                print(f"\n### {set_name} #{index}: {pages[index]['url']}")
                for name in EXTRACTORS:
                    out = results[(set_name, name)]["outputs"][index] or ""
                    print(f"--- {name} ({len(out)} chars)")
                    print(re.sub(r"\n\s*\n", "\n", out[:600]))


if __name__ == "__main__":
    main()
