"""Near-duplicate search over n x 384-d vectors: time, recall against exact search, peak RSS.

    python bench/embedding_search.py --n 1000000 --out /tmp/bench-embedding-search/1m-0.9.json
    python bench/embedding_search.py --n 100000 --threshold 0.5
    python bench/embedding_search.py --n 100000 --method faiss-ivf --nlist 632 --nprobe 8
    python bench/embedding_search.py --n 100000 --vectors real.npy   # any (n, d) float32 .npy instead

Vectors (seeded) imitate sentence embeddings rather than isotropic noise:
- n / 200 topics (5,000 at 1M), their centroids mixing a direction shared by all (as MiniLM
  vectors share one: unrelated pairs at cosine ~0-0.3), one of n / 10,000 super-topics, and their
  own direction; topic sizes lognormal (some lists are much fuller than others);
- items = centroid + anisotropic noise (a power-law spectrum in a random basis, effective dimension
  ~75 like MiniLM's ~60), at noise levels giving within-topic cosines ~0.5-0.8;
- 10 % of the originals get 1-3 copies (~17 % of the rows), each at a cosine to its original drawn
  uniformly from 0.85-0.99 with the same anisotropic noise, so many true pairs lie near 0.9.
Measured (1,000 rows against 100,000): random pairs 5/50/95 % at cosine -0.01/0.14/0.31, nearest
neighbour median 0.82, 10th neighbour 0.75; all-MiniLM-L6-v2 on 12,000 real persona / tool-use
sentences: -0.06/0.09/0.42, 0.80, 0.67.

Method (--method): "ours" = tasks/dedup/vector_search.near_pairs on the clustered path (exact_below=0;
training included in the time); "exact" = its exact path; "faiss-ivf" = faiss IndexIVFFlat
(inner product, same spherical k-means sample) range_search of every row at the threshold;
"faiss-hnsw" = IndexHNSWFlat (M 32, efSearch --ef) k-nearest (--k) of every row, filtered.
Recall: the rows of a seeded sample (--queries) are searched exactly against all n (a matrix
multiply); recall = share of those true pairs (i, j) that the method returned, from either end.
Peak RSS (ru_maxrss) is read before the exact check, so it is generation + search.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import time
from pathlib import Path

import faiss
import numpy as np

from personahub.tasks.dedup.vector_search import (TRAIN_PER_LIST, MARGIN, default_nlist, default_nprobe,
                                            near_pairs)

BLOCK = 65_536


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def generate(n: int, dim: int = 384, seed: int = 0, topic_size: int = 200, dup_share: float = 0.1,
             decay: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n_topics = max(1, n // topic_size)
    n_supers = max(1, n_topics // 50)
    shared = unit(rng.standard_normal(dim))
    supers = unit(rng.standard_normal((n_supers, dim)))
    own = unit(rng.standard_normal((n_topics, dim)))
    centroids = unit(np.sqrt(0.2) * shared + np.sqrt(0.25) * supers[rng.integers(0, n_supers, n_topics)]
                     + np.sqrt(0.55) * own).astype(np.float32)
    spectrum = np.arange(1, dim + 1) ** (-decay / 2)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    mix = (spectrum[:, None] / np.linalg.norm(spectrum) * basis.T).astype(np.float32)  # E|z @ mix|^2 = 1
    popularity = rng.lognormal(0, 1, n_topics)
    popularity /= popularity.sum()
    n_groups = int(round(n * dup_share / (1 + 2 * dup_share)))
    copies = rng.integers(1, 4, n_groups)
    n_orig = n - int(copies.sum())
    out = np.empty((n, dim), np.float32)
    place = rng.permutation(n)  # row k of the generation order is stored at place[k]: shuffled, no copy
    for s in range(0, n_orig, BLOCK):
        m = min(BLOCK, n_orig - s)
        topic = rng.choice(n_topics, m, p=popularity)
        sigma = np.sqrt(rng.uniform(0.25, 1.0, m)).astype(np.float32)[:, None]
        noise = rng.standard_normal((m, dim), dtype=np.float32) @ mix
        out[place[s:s + m]] = unit(centroids[topic] + sigma * noise)
    sources = np.repeat(rng.choice(n_orig, n_groups, replace=False), copies)
    for s in range(0, len(sources), BLOCK):
        x = out[place[sources[s:s + BLOCK]]]
        cos = rng.uniform(0.85, 0.99, len(x)).astype(np.float32)[:, None]
        noise = rng.standard_normal((len(x), dim), dtype=np.float32) @ mix
        noise = unit(noise - (noise * x).sum(1, keepdims=True) * x)  # orthogonal to x: exact cosine
        out[place[n_orig + s:n_orig + s + len(x)]] = unit(cos * x + np.sqrt(1 - cos * cos) * noise)
    return out


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _train_sample(vectors: np.ndarray, nlist: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return vectors[np.sort(rng.choice(len(vectors), min(len(vectors), nlist * TRAIN_PER_LIST), replace=False))]


def faiss_ivf(vectors: np.ndarray, threshold: float, nlist: int, nprobe: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    d = vectors.shape[1]
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed, index.cp.spherical, index.cp.niter = seed, True, 20
    index.cp.max_points_per_centroid = TRAIN_PER_LIST
    index.train(_train_sample(vectors, nlist, seed))
    index.add(vectors)
    index.nprobe = nprobe
    qa, ba = [], []
    for s in range(0, len(vectors), BLOCK):
        lims, _, ids = index.range_search(vectors[s:s + BLOCK], threshold - 1e-5)
        qa.append(s + np.repeat(np.arange(len(lims) - 1), np.diff(lims.astype(np.int64))))
        ba.append(ids)
    return _pairs(vectors, threshold, np.concatenate(qa), np.concatenate(ba))


def faiss_hnsw(vectors: np.ndarray, threshold: float, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
    index = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.add(vectors)
    index.hnsw.efSearch = max(ef, k)
    qa, ba = [], []
    for s in range(0, len(vectors), BLOCK):
        sims, ids = index.search(vectors[s:s + BLOCK], k)
        r, c = np.nonzero(sims >= threshold - 1e-5)
        qa.append(s + r)
        ba.append(ids[r, c])
    return _pairs(vectors, threshold, np.concatenate(qa), np.concatenate(ba))


def _pairs(vectors: np.ndarray, threshold: float, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = (a != b) & (b >= 0)
    a, b = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    key = np.unique(a.astype(np.int64) * len(vectors) + b)
    a, b = key // len(vectors), key % len(vectors)
    cos = np.einsum("ij,ij->i", vectors[a].astype(np.float64), vectors[b].astype(np.float64))
    return a[cos >= threshold], b[cos >= threshold]


def truth_pairs(vectors: np.ndarray, sample: np.ndarray, threshold: float) -> np.ndarray:
    """Keys min(i, j) * n + max(i, j) of every pair at cosine >= threshold with i in sample."""
    n = len(vectors)
    keys = [np.zeros(0, np.int64)]
    for s in range(0, len(sample), 256):
        rows = sample[s:s + 256]
        scores = vectors[rows] @ vectors.T
        scores[np.arange(len(rows)), rows] = -1
        r, c = np.nonzero(scores >= threshold - 1e-5)
        cos = np.einsum("ij,ij->i", vectors[rows[r]].astype(np.float64), vectors[c].astype(np.float64))
        r, c = rows[r][cos >= threshold], c[cos >= threshold]
        keys.append(np.minimum(r, c).astype(np.int64) * n + np.maximum(r, c))
    return np.unique(np.concatenate(keys))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--method", choices=["ours", "exact", "faiss-ivf", "faiss-hnsw"], default="ours")
    ap.add_argument("--nlist", type=int)
    ap.add_argument("--nprobe", type=int)
    ap.add_argument("--margin", type=float, help="ours: probe margin (inf: plain nprobe nearest lists)")
    ap.add_argument("--k", type=int, default=16, help="faiss-hnsw: neighbours per row")
    ap.add_argument("--ef", type=int, default=64, help="faiss-hnsw: efSearch")
    ap.add_argument("--queries", type=int, default=5_000, help="sampled rows checked by exact search")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--topic-size", type=int, default=200, help="generated: mean rows per topic")
    ap.add_argument("--decay", type=float, default=1.0, help="generated: noise spectrum k^-decay (0: isotropic)")
    ap.add_argument("--vectors", type=Path, help="an (n, d) float32 .npy of unit rows instead of generated ones")
    ap.add_argument("--out", type=Path, help="JSON results")
    args = ap.parse_args()

    t = time.perf_counter()
    if args.vectors:
        vectors = np.ascontiguousarray(unit(np.load(args.vectors).astype(np.float32)))
    else:
        vectors = generate(args.n, args.dim, args.seed, topic_size=args.topic_size, decay=args.decay)
    n = len(vectors)
    generate_s = time.perf_counter() - t
    rss_before = rss_mb()
    nlist = args.nlist or default_nlist(n)
    nprobe = args.nprobe or default_nprobe(args.threshold, nlist)
    margin = MARGIN if args.margin is None else args.margin
    load = os.getloadavg()[0]
    t = time.perf_counter()
    if args.method in ("ours", "exact"):
        a, b, _ = near_pairs(vectors, args.threshold, exact_below=0 if args.method == "ours" else n + 1,
                             nlist=nlist, nprobe=nprobe, margin=margin, seed=args.seed)
    elif args.method == "faiss-ivf":
        a, b = faiss_ivf(vectors, args.threshold, nlist, nprobe, args.seed)
    else:
        a, b = faiss_hnsw(vectors, args.threshold, args.k, args.ef)
    search_s = time.perf_counter() - t
    peak = peak_rss_mb()
    load_after = os.getloadavg()[0]

    t = time.perf_counter()
    sample = np.sort(np.random.default_rng(args.seed + 1).choice(n, min(n, args.queries), replace=False))
    truth = truth_pairs(vectors, sample, args.threshold)
    found_keys = a.astype(np.int64) * n + b
    found = np.isin(truth, found_keys)
    recall = float(found.mean()) if len(truth) else 1.0
    missed = truth[~found]
    missed_cos = np.einsum("ij,ij->i", vectors[missed // n], vectors[missed % n]) if len(missed) else np.zeros(0)
    result = {
        "method": args.method, "n": n, "dim": vectors.shape[1], "threshold": args.threshold,
        "vectors": str(args.vectors) if args.vectors else f"generated (topic size {args.topic_size}, decay {args.decay})",
        "nlist": nlist if args.method in ("ours", "faiss-ivf") else None,
        "nprobe": nprobe if args.method in ("ours", "faiss-ivf") else None,
        "margin": margin if args.method == "ours" else None,
        "hnsw_k_ef": [args.k, args.ef] if args.method == "faiss-hnsw" else None,
        "search_s": round(search_s, 1), "pairs": int(len(a)),
        "pairs_sha1": hashlib.sha1(a.astype(np.int64).tobytes() + b.astype(np.int64).tobytes()).hexdigest(),
        "recall": round(recall, 4), "sample_rows": int(len(sample)), "sample_true_pairs": int(len(truth)),
        "missed_cosines": [round(float(c), 4) for c in np.sort(missed_cos)[:20]],
        "peak_rss_mb": round(peak), "rss_before_search_mb": round(rss_before),
        "generate_s": round(generate_s, 1), "check_s": round(time.perf_counter() - t, 1),
        "load_1min_before_after": [round(load, 2), round(load_after, 2)],
        "threads": faiss.omp_get_max_threads(), "seed": args.seed,
    }
    print(json.dumps(result))
    print(f"{args.method}: n={n} t={args.threshold} nlist={result['nlist']} nprobe={result['nprobe']} "
          f"margin={result['margin']}: {search_s:.1f} s, recall {recall:.4f} "
          f"({int(found.sum())}/{len(truth)} sampled true pairs), {len(a)} pairs, peak RSS {peak:.0f} MB, "
          f"load {load:.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
