"""Crawl memory and throughput: peak RSS and MB/s of the `crawl` flow on a generated corpus.

Generates (seeded, streamed to disk, reused on the next run when the parameters match) two corpora:

- JSONL: `--jsonl-mb` MB of uncompressed JSON Lines over `--jsonl-files` files (every third one
  .jsonl.gz), documents of 1-20 KB of English-like text (sentences of common English words), with
  ~3 % exact duplicates (across and within files), ~0.5 % too-short documents, one 2-4 MB document
  per file and one 11 MB line (over max_record_bytes: quarantined without being loaded);
- WARC: `--warc-mb` MB (uncompressed) of .warc.gz over `--warc-files` files written with warcio's
  WARCWriter: a warcinfo record, then HTML responses (nav, cookie banner, article paragraphs,
  related links, footer; ~2 % duplicate pages at other URLs), revisit records, image/jpeg
  responses and 404 pages.

Each corpus is then crawled by the real flow (`personahub.flows.crawl.crawl`, as `personahub crawl`
runs it) in a child process with a fresh store and PREFECT_HOME, so the RSS is the crawl's alone.
The parent samples /proc every 0.2 s: the crawl process's RSS (and its kernel high-water mark,
VmHWM) and the sum over its process tree (Prefect's ephemeral API server is a child process), and
which stage is running (the first of crawl → crawl_dedup_partition → crawl_dedup whose manifest is
not written yet; "start" is Prefect's start-up before the first stage), so the peak is attributed
to a stage. `--small-jsonl-mb` / `--small-warc-mb` run the same on a smaller corpus first, to show
whether memory grows with the corpus. Throughput (MB/s) is over the flow's time (the
`personahub.flows.crawl` import excluded, Prefect's start-up included).

    .venv/bin/python bench/crawl_memory.py           # 200 MB + 2 GB JSONL, 60 MB + 600 MB WARC (~10 min)
    .venv/bin/python bench/crawl_memory.py --only jsonl --small-jsonl-mb 0 --batch-rows 500 \
        --bytes-per-bucket 32000000                  # the memory knobs of CrawlFlowParams / CrawlParams
    .venv/bin/python bench/crawl_memory.py --jsonl-mb 100 --warc-mb 20 --small-jsonl-mb 0 --small-warc-mb 0

Options: --out DIR (default /tmp/personahub-bench-crawl: data/ is kept and reused when the sizes and
seed match, work/ (store, PREFECT_HOME) is deleted after each run), --clean (also delete the
generated data at the end), --only jsonl|warc, --seed N, --rows-per-bucket / --bytes-per-bucket /
--batch-rows (flow parameters), --partition-batch-rows N (what-if: patches the default batch size
of dedup_exact.partition_shard, which the flow does not expose, in the child process only),
--trace FILE (RSS samples per run), --generate-only. Prints Markdown tables to stdout.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

MB = 1_000_000
GEN_VERSION = 1  # bump when the generator changes: the cached corpus is regenerated

WORDS = """
the of and to a in is it you that he was for on are with as his they be at one have this from or had by
not word but what some we can out other were all there when up use your how said an each she which do
their time if will way about many then them write would like so these her long make thing see him two
has look more day could go come did number sound no most people my over know water than call first who
may down side been now find any new work part take get place made live where after back little only
round man year came show every good me give our under name very through just form sentence great think
say help low line differ turn cause much mean before move right boy old too same tell does set three want
air well also play small end put home read hand port large spell add even land here must big high such
follow act why ask men change went light kind off need house picture try us again animal point mother
world near build self earth father head stand own page should country found answer school grow study
still learn plant cover food sun four between state keep eye never last let thought city tree cross farm
hard start might story saw far sea draw left late run while press close night real life few north open
seem together next white children begin got walk example ease paper group always music those both mark
often letter until mile river car feet care second book carry took science eat room friend began idea
fish mountain stop once base hear horse cut sure watch color face wood main enough plain girl usual
young ready above ever red list though feel talk bird soon body dog family direct pose leave song measure
door product black short numeral class wind question happen complete ship area half rock order fire south
problem piece told knew pass since top whole king space heard best hour better true during hundred five
remember step early hold west ground interest reach fast verb sing listen six table travel less morning
ten simple several vowel toward war lay against pattern slow center love person money serve appear road
map rain rule govern pull cold notice voice unit power town fine certain fly fall lead cry dark machine
note wait plan figure star box noun field rest correct able pound done beauty drive stood contain front
teach week final gave green oh quick develop ocean warm free minute strong special mind behind clear tail
produce fact street inch multiply nothing course stay wheel full force blue object decide surface deep
moon island foot system busy test record boat common gold possible plane stead dry wonder laugh thousand
ago ran check game shape equate hot miss brought heat snow tire bring yes distant fill east paint language
among council budget committee harbour report village market engine season policy museum garden library
café naïve résumé
""".split()


# --- text ----------------------------------------------------------------------------------------
class TextGen:
    """English-like text: a pool of sentences of Zipf-weighted common words, assembled by numpy."""

    def __init__(self, seed: int, pool: int = 30_000):
        rnd = random.Random(seed)
        weights = [1.0 / (rank + 5) for rank in range(len(WORDS))]
        sentences = []
        for _ in range(pool):
            words = rnd.choices(WORDS, weights, k=rnd.randint(6, 24))
            if rnd.random() < 0.4:
                words[rnd.randint(1, len(words) - 2)] += ","
            end = "?" if rnd.random() < 0.05 else "."
            sentences.append(" ".join(words).capitalize() + end)
        self.sentences = sentences
        self.mean_len = sum(len(s) + 1 for s in sentences) / len(sentences)
        self.rng = np.random.default_rng(seed)

    def text(self, n_bytes: int) -> str:
        """About n_bytes of paragraphs (3-8 sentences each)."""
        n = max(1, int(n_bytes / self.mean_len))
        idx = self.rng.integers(0, len(self.sentences), n).tolist()
        cuts = np.cumsum(self.rng.integers(3, 9, n // 3 + 1)).tolist()
        paragraphs, start = [], 0
        s = self.sentences
        for cut in cuts:
            if start >= n:
                break
            paragraphs.append(" ".join([s[i] for i in idx[start:cut]]))
            start = cut
        return "\n\n".join(paragraphs)

    def title(self) -> str:
        return self.sentences[int(self.rng.integers(0, len(self.sentences)))][:60].rstrip(" ,.?").title()


# --- JSONL corpus --------------------------------------------------------------------------------
def generate_jsonl(out: Path, total_mb: float, n_files: int, seed: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    gen = TextGen(seed)
    rng = gen.rng
    reservoir: list[str] = []
    per_file = int(total_mb * MB / n_files)
    stats = {"files": 0, "docs": 0, "dupes": 0, "raw_bytes": 0, "disk_bytes": 0}
    for f in range(n_files):
        gz = f % 3 == 2
        path = out / f"part-{f:03d}.jsonl{'.gz' if gz else ''}"
        raw = open(path, "wb")
        fh = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) if gz else raw
        written = n = 0
        long_at = int(rng.integers(100, 1000))
        over_cap_at = 500 if f == n_files // 2 else -1
        buf: list[bytes] = []
        while written < per_file:
            u = rng.random()
            if n == long_at:
                text = gen.text(int(rng.integers(2_000_000, 4_000_000)))  # a long document
            elif n == over_cap_at:
                text = gen.text(11_000_000)  # over max_record_bytes: quarantined unread
            elif u < 0.03 and reservoir:
                text = reservoir[int(rng.integers(0, len(reservoir)))]  # exact duplicate
                stats["dupes"] += 1
            elif u < 0.035:
                text = "Short note."  # filtered: too_short
            else:
                text = gen.text(int(rng.integers(1_000, 20_000)))
                if len(reservoir) < 2000:
                    reservoir.append(text)
                elif rng.random() < 0.05:
                    reservoir[int(rng.integers(0, 2000))] = text
            rec = {"id": f"f{f}-{n}", "url": f"https://site{n % 97}.example.org/{f}/{n}", "title": gen.title(),
                   "text": text, "meta": {"timestamp": f"2024-{1 + n % 12:02d}-{1 + n % 28:02d}", "source": "synthetic",
                                          "tokens": len(text) // 5}}
            line = (json.dumps(rec, ensure_ascii=False) + "\n").encode()
            buf.append(line)
            written += len(line)
            n += 1
            if len(buf) >= 256:
                fh.write(b"".join(buf))
                buf = []
        fh.write(b"".join(buf))
        if gz:
            fh.close()
        raw.close()
        stats["files"] += 1
        stats["docs"] += n
        stats["raw_bytes"] += written
        stats["disk_bytes"] += path.stat().st_size
        print(f"  {path.name}: {n} docs, {written / MB:.0f} MB, {path.stat().st_size / MB:.0f} MB on disk", file=sys.stderr)
    return stats


# --- WARC corpus ---------------------------------------------------------------------------------
NAV = ["Home", "News", "World", "Business", "Science", "Culture", "Sport", "Opinion", "Travel", "About us"]


def html_page(gen: TextGen, title: str, body: str, n: int) -> str:
    paras = "\n".join(f"<p>{p}</p>" for p in body.split("\n\n"))
    nav = "".join(f'<li><a href="/{x.lower().replace(" ", "-")}/">{x}</a></li>' for x in NAV)
    related = "".join(f'<li><a href="/story/{n + k}">{gen.title()}</a></li>' for k in range(1, 6))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{title} | Example Media</title><link rel=\"stylesheet\" href=\"/static/site.css\">"
        "<script>window.dataLayer=window.dataLayer||[];function gtag(){dataLayer.push(arguments);}</script>"
        f"</head><body><header><a class=\"logo\" href=\"/\">Example Media</a><nav><ul>{nav}</ul></nav>"
        "<form class=\"search\"><input name=\"q\" placeholder=\"Search\"><button>Search</button></form></header>"
        "<div class=\"cookie-banner\"><p>We use cookies to improve your experience.</p><button>Accept all</button></div>"
        f"<main><article><h1>{title}</h1><p class=\"byline\">By Staff Writer · 12 March 2024</p>{paras}"
        "<div class=\"share\">Share this article: <a href=\"#\">Facebook</a> <a href=\"#\">Twitter</a></div></article>"
        f"<aside><h3>Related stories</h3><ul>{related}</ul></aside></main>"
        "<footer><ul><li><a href=\"/privacy\">Privacy policy</a></li><li><a href=\"/terms\">Terms of use</a></li>"
        "<li><a href=\"/contact\">Contact</a></li></ul><p>© 2024 Example Media. All rights reserved.</p></footer>"
        "</body></html>\n"
    )


def generate_warc(out: Path, total_mb: float, n_files: int, seed: int) -> dict:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    out.mkdir(parents=True, exist_ok=True)
    gen = TextGen(seed + 1)
    rng = gen.rng
    per_file = int(total_mb * MB / n_files)
    stats = {"files": 0, "docs": 0, "dupes": 0, "raw_bytes": 0, "disk_bytes": 0, "records": {}}
    seen: list[tuple[str, str, bytes]] = []  # (url, date, body) of earlier pages: revisits and duplicates
    page = 0
    for f in range(n_files):
        path = out / f"crawl-{f:03d}.warc.gz"
        with open(path, "wb") as fh:
            writer = WARCWriter(fh, gzip=True)
            writer.write_record(writer.create_warcinfo_record(path.name, {"software": "personahub bench", "format": "WARC/1.1"}))
            written = 0
            while written < per_file:
                page += 1
                url = f"https://news{page % 53}.example.com/story/{page}"
                date = f"2024-03-{1 + page % 28:02d}T{page % 24:02d}:00:00Z"
                u = rng.random()
                if u < 0.05 and seen:  # revisit of an earlier capture
                    ref_url, ref_date, ref_body = seen[int(rng.integers(0, len(seen)))]
                    digest = "sha1:" + hashlib.sha1(ref_body).hexdigest()
                    headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
                    rec = writer.create_revisit_record(ref_url, digest, ref_url, ref_date, http_headers=headers)
                    kind, size = "revisit", 200
                elif u < 0.15:  # an image
                    body = rng.bytes(int(rng.integers(2_000, 30_000)))
                    headers = StatusAndHeaders("200 OK", [("Content-Type", "image/jpeg")], protocol="HTTP/1.1")
                    rec = writer.create_warc_record(url.replace("/story/", "/img/") + ".jpg", "response",
                                                    payload=io.BytesIO(body), http_headers=headers)
                    kind, size = "image", len(body)
                elif u < 0.17:  # a 404
                    body = b"<html><body><h1>Not found</h1></body></html>"
                    headers = StatusAndHeaders("404 Not Found", [("Content-Type", "text/html")], protocol="HTTP/1.1")
                    rec = writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers)
                    kind, size = "404", len(body)
                else:
                    if u < 0.19 and seen:  # the same page at another URL: an exact duplicate document
                        body = seen[int(rng.integers(0, len(seen)))][2]
                        stats["dupes"] += 1
                    else:
                        body = html_page(gen, gen.title(), gen.text(int(rng.integers(1_000, 20_000))), page).encode()
                        if len(seen) < 500:
                            seen.append((url, date, body))
                        elif rng.random() < 0.05:
                            seen[int(rng.integers(0, 500))] = (url, date, body)
                    headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                                          ("Content-Length", str(len(body)))], protocol="HTTP/1.1")
                    rec = writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers,
                                                    warc_headers_dict={"WARC-Date": date})
                    kind, size = "html", len(body)
                    stats["docs"] += 1
                writer.write_record(rec)
                stats["records"][kind] = stats["records"].get(kind, 0) + 1
                written += size + 400
        stats["files"] += 1
        stats["raw_bytes"] += _gunzipped_size(path)
        stats["disk_bytes"] += path.stat().st_size
        print(f"  {path.name}: {path.stat().st_size / MB:.0f} MB on disk", file=sys.stderr)
    return stats


def _gunzipped_size(path: Path) -> int:
    n = 0
    with gzip.open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            n += len(chunk)
    return n


def ensure_corpus(kind: str, root: Path, mb: float, files: int, seed: int) -> dict:
    """Generate the corpus unless the same one (kind, size, files, seed, generator) is already there."""
    key = {"kind": kind, "mb": mb, "files": files, "seed": seed, "version": GEN_VERSION}
    folder = root / f"{kind}-{mb:g}mb-{files}f-s{seed}"
    stamp = folder / "corpus.json"
    if stamp.exists():
        meta = json.loads(stamp.read_text())
        if meta.get("key") == key:
            print(f"reusing {folder}", file=sys.stderr)
            return {**meta["stats"], "path": str(folder), "generate_s": meta["generate_s"], "reused": True}
    shutil.rmtree(folder, ignore_errors=True)
    print(f"generating {kind} corpus: {mb:g} MB in {files} files → {folder}", file=sys.stderr)
    started = time.monotonic()
    gen = generate_jsonl if kind == "jsonl" else generate_warc
    stats = gen(folder / "files", mb, files, seed)
    seconds = time.monotonic() - started
    stamp.write_text(json.dumps({"key": key, "stats": stats, "generate_s": seconds}))
    return {**stats, "path": str(folder), "generate_s": seconds, "reused": False}


# --- running the crawl in a child process --------------------------------------------------------
CHILD = r"""
import json, os, sys, time
started = time.monotonic()
from personahub.flows.crawl import CrawlFlowParams, crawl
if os.environ.get("BENCH_PARTITION_BATCH_ROWS"):  # what-if only: partition_shard's batch_rows default
    from personahub.tasks.dedup import exact as dedup_exact
    dedup_exact.partition_shard.__defaults__ = (int(os.environ["BENCH_PARTITION_BATCH_ROWS"]),)
imported = time.monotonic()
params = CrawlFlowParams(**json.loads(sys.argv[1]))
summary = crawl(params)
done = time.monotonic()
print("BENCH-RESULT " + json.dumps({"import_s": imported - started, "flow_s": done - imported,
      "stages": summary["stages"], "documents": summary["documents"]}), flush=True)
"""

STAGES = ("crawl", "crawl_dedup_partition", "crawl_dedup")


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def _rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in kB; (0, 0) once it is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def _stage(store: Path) -> str:
    """The running stage: the first whose manifest (written when it ends) is not there yet."""
    runs = list(store.glob("runs/*"))
    if not runs:
        return "start"
    for name in STAGES:
        if not any((run / name / "manifest.json").exists() for run in runs):
            return name
    return "done"


def run_crawl(files: str, work: Path, flow_params: dict, trace: Path | None = None,
              partition_batch_rows: int | None = None) -> dict:
    """Crawl `files` in a child process; wall time, peak RSS (process, tree, per stage), counts."""
    store, prefect_home = work / "store", work / "prefect"
    for d in (store, prefect_home):
        shutil.rmtree(d, ignore_errors=True)
    prefect_home.mkdir(parents=True)
    env = {**os.environ, "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_HOME": str(prefect_home)}
    if partition_batch_rows:
        env["BENCH_PARTITION_BATCH_ROWS"] = str(partition_batch_rows)
    params = {"sources": [files], "store": str(store), **flow_params}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(params)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: dict = {"proc_peak_kb": 0, "tree_peak_kb": 0, "stage_peak_kb": {}, "stage_tree_peak_kb": {}, "tree_max_procs": 0}
    stdout: list[str] = []
    stderr: list[str] = []
    readers = [threading.Thread(target=lambda s=s, b=b: b.extend(s), daemon=True)
               for s, b in ((proc.stdout, stdout), (proc.stderr, stderr))]
    for t in readers:
        t.start()
    stop = threading.Event()

    trace_fh = open(trace, "w") if trace else None

    def sample() -> None:
        while not stop.is_set():
            kids = _children()
            tree, todo = [], [proc.pid]
            while todo:
                pid = todo.pop()
                tree.append(pid)
                todo.extend(kids.get(pid, []))
            rss, hwm = _rss_kb(proc.pid)
            total = rss + sum(_rss_kb(p)[0] for p in tree[1:])
            stage = _stage(store)
            out["proc_peak_kb"] = max(out["proc_peak_kb"], hwm, rss)
            out["tree_peak_kb"] = max(out["tree_peak_kb"], total)
            out["tree_max_procs"] = max(out["tree_max_procs"], len(tree))
            out["stage_peak_kb"][stage] = max(out["stage_peak_kb"].get(stage, 0), rss)
            out["stage_tree_peak_kb"][stage] = max(out["stage_tree_peak_kb"].get(stage, 0), total)
            if trace_fh:
                trace_fh.write(f"{time.monotonic() - started:.1f}\t{stage}\t{rss // 1024}\t{total // 1024}\n")
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    stop.set()
    sampler.join()
    if trace_fh:
        trace_fh.close()
    for t in readers:
        t.join()
    # ru_maxrss of wait4: the largest of the child and its waited-for descendants (kB on Linux)
    out["wait4_maxrss_kb"] = usage.ru_maxrss
    out["proc_peak_kb"] = max(out["proc_peak_kb"], usage.ru_maxrss)
    out["wall_s"] = wall
    out["returncode"] = proc.returncode
    result = next((json.loads(line.split(" ", 1)[1]) for line in stdout if line.startswith("BENCH-RESULT ")), None)
    if proc.returncode != 0 or result is None:
        sys.stderr.write("".join(stderr[-60:]))
        raise SystemExit(f"crawl child failed (exit {proc.returncode})")
    out.update(result)
    out["store_mb"] = sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) / MB
    for d in (store, prefect_home):
        shutil.rmtree(d, ignore_errors=True)
    return out


# --- report --------------------------------------------------------------------------------------
def row(label: str, corpus: dict, run: dict) -> dict:
    read, dedup = run["stages"]
    return {
        "corpus": label,
        "files": corpus["files"],
        "MB on disk": corpus["disk_bytes"] / MB,
        "MB uncompressed": corpus["raw_bytes"] / MB,
        "docs in": read["counts"]["rows_in"],
        "docs kept (pass 1)": read["counts"]["rows_out"],
        "docs out (deduped)": dedup["counts"]["rows_out"],
        "duplicates": dedup["reasons"].get("duplicate", 0),
        "flow s": run["flow_s"],
        "process s": run["wall_s"],
        "MB/s on disk": corpus["disk_bytes"] / MB / run["flow_s"],
        "MB/s uncompressed": corpus["raw_bytes"] / MB / run["flow_s"],
        "peak RSS crawl process MB": run["proc_peak_kb"] * 1024 / MB,
        "peak RSS process tree MB": run["tree_peak_kb"] * 1024 / MB,
        "_run": run,
        "_read": read,
    }


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def markdown(rows: list[dict]) -> str:
    cols = [c for c in rows[0] if not c.startswith("_")]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    lines += ["", "Peak RSS of the crawl process by stage (MB; process tree in brackets):", "",
              "| corpus | " + " | ".join(("start",) + STAGES) + " | store MB | reasons (pass 1) |",
              "|---|" + "---|" * (len(STAGES) + 3)]
    for r in rows:
        run = r["_run"]
        cells = [f"{run['stage_peak_kb'].get(s, 0) * 1024 / MB:,.0f} ({run['stage_tree_peak_kb'].get(s, 0) * 1024 / MB:,.0f})"
                 for s in ("start",) + STAGES]
        reasons = ", ".join(f"{k}: {v}" for k, v in r["_read"]["reasons"].items()) or "-"
        lines.append(f"| {r['corpus']} | " + " | ".join(cells) + f" | {run['store_mb']:,.0f} | {reasons} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/personahub-bench-crawl"))
    ap.add_argument("--jsonl-mb", type=float, default=2000, help="uncompressed MB of JSON Lines (0 = skip)")
    ap.add_argument("--jsonl-files", type=int, default=8)
    ap.add_argument("--warc-mb", type=float, default=600, help="uncompressed MB of WARC (0 = skip)")
    ap.add_argument("--warc-files", type=int, default=4)
    ap.add_argument("--small-jsonl-mb", type=float, default=200, help="also crawl a corpus this small (0 = no)")
    ap.add_argument("--small-warc-mb", type=float, default=60, help="also crawl a WARC corpus this small (0 = no)")
    ap.add_argument("--only", choices=["jsonl", "warc"], help="run one format only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows-per-bucket", type=int, help="CrawlFlowParams.rows_per_bucket (default: the flow's)")
    ap.add_argument("--bytes-per-bucket", type=int, help="CrawlFlowParams.bytes_per_bucket (default: the flow's)")
    ap.add_argument("--batch-rows", type=int, help="CrawlParams.batch_rows (default: the flow's)")
    ap.add_argument("--partition-batch-rows", type=int,
                    help="what-if: patch dedup_exact.partition_shard's batch_rows default (10,000) in the child")
    ap.add_argument("--trace", type=Path, help="write the RSS samples (s, stage, MB, tree MB) of each run to TRACE.<n>.tsv")
    ap.add_argument("--generate-only", action="store_true", help="generate (or check) the corpora and stop")
    ap.add_argument("--clean", action="store_true", help="delete the generated corpora at the end")
    args = ap.parse_args()

    flow_params: dict = {}
    if args.rows_per_bucket:
        flow_params["rows_per_bucket"] = args.rows_per_bucket
    if args.bytes_per_bucket:
        flow_params["bytes_per_bucket"] = args.bytes_per_bucket
    if args.batch_rows:
        flow_params["crawl"] = {"batch_rows": args.batch_rows}

    plan = []  # (label, kind, MB, files)
    for kind, small, full, files in (("jsonl", args.small_jsonl_mb, args.jsonl_mb, args.jsonl_files),
                                     ("warc", args.small_warc_mb, args.warc_mb, args.warc_files)):
        if args.only and args.only != kind:
            continue
        for mb in (small, full):
            if mb:
                plan.append((f"{kind.upper()} {mb:g} MB", kind, mb, files))

    data = args.out / "data"
    data.mkdir(parents=True, exist_ok=True)
    corpora = {label: ensure_corpus(kind, data, mb, files, args.seed) for label, kind, mb, files in plan}
    for label, c in corpora.items():
        print(f"{label}: {c['docs']} documents generated ({c['dupes']} duplicates), "
              f"{c['raw_bytes'] / MB:.0f} MB, {c['disk_bytes'] / MB:.0f} MB on disk, "
              + ("reused" if c["reused"] else f"generated in {c['generate_s']:.0f} s"), file=sys.stderr)
    if args.generate_only:
        return

    rows = []
    for n, (label, kind, mb, files) in enumerate(plan):
        print(f"crawling {label} …", file=sys.stderr)
        trace = args.trace.with_suffix(f".{n}.tsv") if args.trace else None
        run = run_crawl(str(Path(corpora[label]["path"]) / "files"), args.out / "work", flow_params, trace,
                        args.partition_batch_rows)
        rows.append(row(label, corpora[label], run))
        r = rows[-1]
        print(f"  {r['flow s']:.0f} s, {r['MB/s uncompressed']:.1f} MB/s, peak RSS {r['peak RSS crawl process MB']:.0f} MB "
              f"(tree {r['peak RSS process tree MB']:.0f} MB, {run['tree_max_procs']} processes)", file=sys.stderr)

    patched = f"; partition_shard batch_rows patched to {args.partition_batch_rows}" if args.partition_batch_rows else ""
    print(f"Flow parameters: {json.dumps(flow_params) if flow_params else 'defaults'}{patched}; "
          f"python {sys.version.split()[0]}, {os.cpu_count()} cores\n")
    print(markdown(rows))
    if args.clean:
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
