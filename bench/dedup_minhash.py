"""MinHash dedup, side by side: datasketch per-record MinHash + MinHashLSH vs personahub's stage.

    python bench/dedup_minhash.py all --n 1000000 [--datasketch-n 100000] [--set generated|real]

Each side runs in its own process, so its peak RSS is its own. Inputs (written once, reused):
- generated: personas made from the words of ../shared/data/personahub/personas_1000.json (a real
  persona as a template, ~40% of its words replaced), 10% of them with 1-3 planted variants
  (upper/lower case, reordered words, punctuation, one word edited or dropped);
- real: the 1,000 real personas scaled with edits: each persona plus variants with 0-4 words
  edited / dropped / reordered, to n rows (dense groups of near-copies).
Truth: every pair at Jaccard >= 0.9 of exact word sets, found through a deliberately permissive LSH
(21 bands x 6 rows, every pair in every bucket: P(miss) at Jaccard 0.9 = (1 - 0.9^6)^21 = 1.2e-7),
then verified exactly. (4-row bands put tens of thousands of template siblings in one bucket.)
Ours: the stage's own functions (sketch per shard, pairs per partition, verify + keep-first, apply
per shard) on 2 threads as the flow runs them. Recall = verified pairs found / true pairs.
datasketch: MinHash per record (update per word), MinHashLSH(threshold=0.9, num_perm=128) insert
then query per record, candidates verified on the same exact word sets.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SHARED = Path(os.environ.get("PERSONAHUB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
REAL = SHARED / "personahub" / "personas_1000.json"
SHARD_ROWS = 100_000
THRESHOLD = 0.9


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- inputs ------------------------------------------------------------------------------------
def _variant(words: list[str], rng: random.Random, vocab: list[str]) -> str:
    kind = rng.randrange(5)
    w = list(words)
    if kind == 0:
        return " ".join(w).upper() if rng.random() < 0.5 else " ".join(w).lower()
    if kind == 1:
        rng.shuffle(w)
        return " ".join(w)
    if kind == 2:
        return ", ".join(w) + "!"
    if kind == 3:
        w[rng.randrange(len(w))] = rng.choice(vocab)
        return " ".join(w)
    if len(w) > 3:
        del w[rng.randrange(len(w))]
    return " ".join(w)


def generate(n: int, kind: str, out: Path, seed: int = 0) -> None:
    real = json.loads(REAL.read_text())
    vocab = sorted({w for p in real for w in p.split()})
    rng = random.Random(seed)
    rows: list[str] = []
    if kind == "generated":
        while len(rows) < n:
            words = rng.choice(real).split()
            words = [rng.choice(vocab) if rng.random() < 0.4 else x for x in words]
            rows.append(" ".join(words))
            if rng.random() < 0.10:
                for _ in range(rng.randint(1, 3)):
                    rows.append(_variant(words, rng, vocab))
    else:
        per = max(1, n // len(real))
        for p in real:
            words = p.split()
            rows.append(p)
            for _ in range(per - 1):
                w = list(words)
                for _ in range(rng.randint(0, 4)):
                    w = _variant(w, rng, vocab).split()
                rows.append(" ".join(w))
    rows = rows[:n]
    rng.shuffle(rows)
    out.mkdir(parents=True, exist_ok=True)
    for k, start in enumerate(range(0, n, SHARD_ROWS)):
        chunk = rows[start:start + SHARD_ROWS]
        pq.write_table(pa.table({"persona_id": [f"g{start + i:09d}" for i in range(len(chunk))], "persona": chunk}),
                       out / f"shard-{k:05d}.parquet")


def shard_files(data: Path) -> list[Path]:
    return sorted(data.glob("shard-*.parquet"))


# --- truth -------------------------------------------------------------------------------------
def truth_pairs(data: Path, limit: int | None) -> np.ndarray:
    """Packed (a << 32 | b) pairs at Jaccard >= 0.9 among the first `limit` rows."""
    from personahub.tasks.dedup import minhash_stage as dedup_minhash
    from personahub.tasks.dedup import keep as dedup_keep
    from personahub.tasks.dedup import minhash

    texts = _texts(data, limit)
    banding = minhash.Banding(21, 6)
    sk = minhash.sketch(texts, banding)
    n = len(texts)
    keys = sk.band_keys.ravel()
    nodes = np.repeat(np.arange(n), banding.bands)
    live = ~np.repeat(sk.empty, banding.bands)
    packed = dedup_minhash.bucket_pairs(keys[live], np.zeros(live.sum(), np.uint64), nodes[live],
                                        np.zeros(live.sum(), bool), window=1 << 30)
    a, b = (packed >> np.uint64(32)).astype(np.int64), (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)
    sims = dedup_minhash.jaccard(a, b, sk.set_offsets, sk.set_values)
    keep = sims >= THRESHOLD
    lo, hi = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    return dedup_keep.unique((lo.astype(np.uint64) << np.uint64(32)) | hi.astype(np.uint64))


def _texts(data: Path, limit: int | None) -> list[str]:
    texts: list[str] = []
    for f in shard_files(data):
        texts.extend(pq.read_table(f, columns=["persona"]).column("persona").to_pylist())
        if limit and len(texts) >= limit:
            break
    return texts[:limit] if limit else texts


# --- ours --------------------------------------------------------------------------------------
def run_ours(data: Path, work: Path, threads: int = 2) -> dict:
    from personahub.tasks.dedup import apply as dedup_apply
    from personahub.tasks.dedup import keep as dedup_keep
    from personahub.tasks.dedup import minhash_stage as dedup_minhash
    from personahub.tasks.dedup import minhash
    from personahub.tasks.core.checkpoint import StageCheckpoint
    from personahub.tasks.core.store import Store

    store = Store(str(data.parent))  # the inputs are store-relative, as in a flow
    shutil.rmtree(data.parent / "runs" / work.name, ignore_errors=True)
    files = [f"{data.name}/{f.name}" for f in shard_files(data)]
    n = sum(pq.ParquetFile(data.parent / f).metadata.num_rows for f in files)
    banding = minhash.choose_banding(THRESHOLD)
    bits = dedup_minhash.partition_bits(n, banding.bands)
    started = time.perf_counter()
    timings = {}
    with ThreadPoolExecutor(threads) as pool:
        ck = StageCheckpoint(store, work.name, "minhash_sketch", {})
        list(pool.map(lambda f: dedup_minhash.sketch_shard(ck, store, Path(f).stem, f, banding, bits), files))
        sketches = ck.finalize()
        timings["sketch_s"] = time.perf_counter() - started
        inputs, offset = [], 0
        for s in sorted(sketches.shards, key=lambda s: s.id):
            bands = {int(k.removeprefix("bands_p")): p for k, p in s.files.items() if k.startswith("bands_p")}
            inputs.append(dedup_minhash.SketchInput(s.files["sketches"], bands, bits, offset, s.rows_of("sketches"), False))
            offset += s.rows_of("sketches")
        t = time.perf_counter()
        ckp = StageCheckpoint(store, work.name, "minhash_pairs", {})
        list(pool.map(lambda p: dedup_minhash.pairs_partition(ckp, store, p, bits, inputs), range(1 << bits)))
        pairs = ckp.finalize()
        timings["pairs_s"] = time.perf_counter() - t
        t = time.perf_counter()
        cks = StageCheckpoint(store, work.name, "minhash_select", {})
        result = dedup_minhash.select_all(cks, store, inputs, [s.files["pairs"] for s in pairs.shards], THRESHOLD)
        removed_file = cks.finalize().only_shard().file("removed")
        timings["select_s"] = time.perf_counter() - t
        t = time.perf_counter()
        cka = StageCheckpoint(store, work.name, "minhash", {})
        list(pool.map(lambda f: dedup_apply.apply_removals(cka, store, Path(f).stem, f, removed_file, "dup"), files))
        timings["apply_s"] = time.perf_counter() - t
    elapsed = time.perf_counter() - started
    peak = peak_rss_mb()  # the stage's own; the recall bookkeeping below is not part of it
    # the verified pairs, for recall (outside the timing)
    packed = dedup_minhash.read_pairs(store, [s.files["pairs"] for s in pairs.shards])
    a, b = (packed >> np.uint64(32)).astype(np.int64), (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)
    nodes, ia, ib = dedup_minhash.node_index(a, b, n)
    nd = dedup_minhash.load_nodes(store, inputs, nodes)
    sims = dedup_minhash.jaccard(ia, ib, nd.set_offsets, nd.set_values, threads=threads)
    ok = sims >= THRESHOLD
    lo, hi = np.minimum(a[ok], b[ok]), np.maximum(a[ok], b[ok])
    found = dedup_keep.unique((lo.astype(np.uint64) << np.uint64(32)) | hi.astype(np.uint64))
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "found.npy", found)
    return {"side": "personahub", "n": n, "seconds": elapsed, "personas_per_s": n / elapsed, **timings,
            "candidates": result["candidates"], "verified_pairs": result["verified_pairs"],
            "removed": result["counts"]["filtered"], "banding": f"{banding.bands}x{banding.rows}",
            "partitions": 1 << bits, "peak_rss_mb": peak, "found_file": str(work / "found.npy")}


# --- datasketch --------------------------------------------------------------------------------
def run_datasketch(data: Path, limit: int, work: Path) -> dict:
    from datasketch import MinHash, MinHashLSH

    from personahub.tasks.dedup import keep as dedup_keep
    from personahub.tasks.dedup import minhash_stage as dedup_minhash
    from personahub.tasks.dedup import minhash

    texts = _texts(data, limit)
    started = time.perf_counter()
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=128)
    sigs = []
    for i, text in enumerate(texts):
        m = MinHash(num_perm=128)
        for w in set(re.findall(r"\w+", text.lower())):  # plain Python, as a datasketch user tokenises
            m.update(w.encode("utf-8"))
        lsh.insert(i, m)
        sigs.append(m)
    candidates = set()
    for i, m in enumerate(sigs):
        for j in lsh.query(m):
            if j != i:
                candidates.add((min(i, j), max(i, j)))
    elapsed = time.perf_counter() - started
    sk = minhash.sketch(texts, minhash.Banding(1, 1))
    cand = np.array(sorted(candidates), np.int64).reshape(-1, 2)
    sims = dedup_minhash.jaccard(cand[:, 0], cand[:, 1], sk.set_offsets, sk.set_values) if len(cand) else np.zeros(0)
    ok = cand[sims >= THRESHOLD]
    found = dedup_keep.unique((ok[:, 0].astype(np.uint64) << np.uint64(32)) | ok[:, 1].astype(np.uint64))
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "found_datasketch.npy", found)
    b, r = lsh.b, lsh.r
    return {"side": "datasketch", "n": len(texts), "seconds": elapsed, "personas_per_s": len(texts) / elapsed,
            "candidates": len(candidates), "banding": f"{b}x{r}", "peak_rss_mb": peak_rss_mb(),
            "found_file": str(work / "found_datasketch.npy")}


def recall(found_file: str, truth: np.ndarray) -> tuple[float, float]:
    """(pair recall, group recall). Pair recall: true pairs that are verified candidate pairs.
    Group recall: true pairs whose two personas end in one group of verified pairs, i.e. the dedup
    sees them as duplicates; ours pairs a big bucket's members with its first member and a window
    (not all n^2 pairs), so for large groups of copies only the second measure is meaningful."""
    from personahub.tasks.dedup import keep as dedup_keep

    found = np.load(found_file)  # pairs outside the truth's rows simply do not match
    if not len(truth):
        return 1.0, 1.0
    a, b = (found >> np.uint64(32)).astype(np.int64), (found & np.uint64(0xFFFFFFFF)).astype(np.int64)
    ta, tb = (truth >> np.uint64(32)).astype(np.int64), (truth & np.uint64(0xFFFFFFFF)).astype(np.int64)
    n = int(max(a.max(initial=0), b.max(initial=0), ta.max(), tb.max())) + 1
    group = dedup_keep.select(np.zeros(n, np.uint64), a, b, np.ones(len(a), np.float32)).group
    return float(np.isin(truth, found).mean()), float((group[ta] == group[tb]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["all", "generate", "ours", "datasketch", "truth"])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--set", choices=["generated", "real"], default="generated")
    ap.add_argument("--datasketch-n", type=int, default=100_000)
    ap.add_argument("--truth-n", type=int, default=200_000, help="rows whose true pairs measure our recall")
    ap.add_argument("--root", type=Path, default=Path("/tmp/personahub-bench-dedup"))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    data = args.root / f"{args.set}-{args.n}"
    work = args.root / f"work-{args.set}-{args.n}"
    if args.what == "generate" or (args.what == "all" and not shard_files(data)):
        t = time.perf_counter()
        generate(args.n, args.set, data)
        print(f"generated {args.n} {args.set} personas in {time.perf_counter() - t:.0f} s -> {data}", flush=True)
    if args.what == "ours":
        print(json.dumps(run_ours(data, work)))
        return
    if args.what == "datasketch":
        print(json.dumps(run_datasketch(data, args.datasketch_n, work)))
        return
    if args.what == "truth":
        limit = None if args.datasketch_n >= args.n else args.datasketch_n
        t = time.perf_counter()
        truth = truth_pairs(data, limit)
        np.save(work / f"truth-{limit or args.n}.npy", truth)
        print(json.dumps({"side": "truth", "pairs": int(len(truth)), "seconds": time.perf_counter() - t}))
        return
    if args.what != "all":
        return
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    for side in ("ours", "datasketch"):
        cmd = [sys.executable, __file__, side, "--n", str(args.n), "--set", args.set, "--datasketch-n",
               str(args.datasketch_n), "--root", str(args.root)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results[side] = json.loads(out)
        print(json.dumps(results[side]), flush=True)
    # Truth is quadratic in bucket sizes: for ours it is taken on the first truth_n rows (node ids
    # 0..truth_n-1 of the full run), a sample of the pairs the full run had to find.
    truth_n = min(args.n, args.truth_n)
    truth_full = truth_pairs(data, truth_n)
    truth_ds = truth_pairs(data, results["datasketch"]["n"])
    results["ours"]["truth_rows"] = truth_n
    results["ours"]["true_pairs"] = int(len(truth_full))
    results["ours"]["recall"], results["ours"]["group_recall"] = recall(results["ours"]["found_file"], truth_full)
    results["datasketch"]["true_pairs"] = int(len(truth_ds))
    results["datasketch"]["recall"], results["datasketch"]["group_recall"] = recall(results["datasketch"]["found_file"], truth_ds)
    print("\n| side | personas | banding | personas/s | seconds | peak RSS MB | true pairs (rows) | pair recall | group recall |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results.values():
        print(f"| {r['side']} | {r['n']:,} | {r['banding']} | {r['personas_per_s']:,.0f} | {r['seconds']:.1f} | "
              f"{r['peak_rss_mb']:,.0f} | {r['true_pairs']:,} ({r.get('truth_rows', r['n']):,}) | {r['recall']:.4f} | {r['group_recall']:.4f} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
