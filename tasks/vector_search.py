"""Pairs of unit vectors at cosine >= threshold: exact for small sets, faiss IVF for large ones.

Exact search is a blocked matrix multiply (memory: one block of scores). Above `exact_below`
vectors the base is clustered with k-means (faiss, seeded) into `nlist` lists and every query
scans the `nprobe` lists nearest to it (faiss range_search); near-duplicates at 0.9 share a list
or a neighbouring one, so a few probes find them. Every returned cosine is recomputed exactly in
float32, and every returned pair truly clears the threshold.

Defaults: nlist = 4 * sqrt(n), nprobe = 32 at threshold >= 0.8 and more below it, where the
neighbours of a vector spread over more lists (bench/embedding_search.py measures recall).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import faiss
import numpy as np

EXACT_BELOW = 50_000
BLOCK = 4_096


def default_nlist(n: int) -> int:
    return max(1, min(n // 39, int(4 * math.sqrt(n))))  # faiss wants >= 39 training points per list


def default_nprobe(threshold: float, nlist: int) -> int:
    probes = 32 if threshold >= 0.8 else 64 if threshold >= 0.6 else 128
    return min(nlist, probes)


def _blocks(vectors: np.ndarray, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, len(vectors), chunk):
        yield start, vectors[start:start + chunk]


def _exact(base: np.ndarray, queries: Iterable[tuple[int, np.ndarray]], threshold: float, self_join: bool
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    qa, ba, sa = [], [], []
    for offset, block in queries:
        for start in range(0, len(block), BLOCK):
            q = np.ascontiguousarray(block[start:start + BLOCK], np.float32)
            scores = q @ base.T
            rows, cols = np.nonzero(scores >= threshold)
            qi = rows + offset + start
            if self_join:
                keep = qi < cols
                rows, cols, qi = rows[keep], cols[keep], qi[keep]
            qa.append(qi)
            ba.append(cols)
            sa.append(scores[rows, cols])
    return _concat(qa, ba, sa)


def _ivf(base: np.ndarray, queries: Iterable[tuple[int, np.ndarray]], threshold: float, self_join: bool,
         nlist: int, nprobe: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = base.shape[1]
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.spherical = True  # unit vectors: centroids on the sphere
    train = base
    if len(base) > nlist * 256:  # k-means needs a sample, not the whole set
        train = base[np.random.default_rng(seed).choice(len(base), nlist * 256, replace=False)]
    index.train(np.ascontiguousarray(train))
    index.add(base)
    index.nprobe = nprobe
    qa, ba, sa = [], [], []
    for offset, block in queries:
        block = np.ascontiguousarray(block, np.float32)
        # faiss's range search keeps scores > radius; a hair below the threshold, then exact check
        lims, _, ids = index.range_search(block, threshold - 1e-4)
        counts = np.diff(lims.astype(np.int64))
        qi = np.repeat(np.arange(len(block)), counts)
        bi = ids.astype(np.int64)
        sims = np.einsum("ij,ij->i", block[qi], base[bi])
        keep = sims >= threshold
        qi, bi, sims = qi[keep] + offset, bi[keep], sims[keep]
        if self_join:  # a pair may be found from either end (each probes its own lists): keep both, once
            keep = qi != bi
            qi, bi, sims = np.minimum(qi[keep], bi[keep]), np.maximum(qi[keep], bi[keep]), sims[keep]
        qa.append(qi)
        ba.append(bi)
        sa.append(sims)
    q, b, s = _concat(qa, ba, sa)
    if self_join and len(q):
        first = np.ones(len(q), np.bool_)
        first[1:] = (q[1:] != q[:-1]) | (b[1:] != b[:-1])
        q, b, s = q[first], b[first], s[first]
    return q, b, s


def _concat(qa: list, ba: list, sa: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not qa:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    q, b, s = np.concatenate(qa).astype(np.int64), np.concatenate(ba).astype(np.int64), np.concatenate(sa).astype(np.float32)
    order = np.lexsort((b, q))
    return q[order], b[order], s[order]


def near_pairs(base: np.ndarray, threshold: float, *, queries: Iterable[tuple[int, np.ndarray]] | None = None,
               exact_below: int = EXACT_BELOW, nlist: int | None = None, nprobe: int | None = None,
               seed: int = 0, chunk: int = 16_384) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query index, base index, cosine) of every pair at cosine >= threshold, sorted.

    base: (n, d) float32 unit rows. Without `queries`, a self-join of base: each unordered pair
    once, i < j. With `queries`: (offset, block) chunks streamed against base (memory: base, its
    index and one chunk), query index = offset + row.
    """
    base = np.ascontiguousarray(base, np.float32)
    n = len(base)
    self_join = queries is None
    if n == 0:
        return _concat([], [], [])
    stream = _blocks(base, chunk) if self_join else queries
    if n < exact_below:
        return _exact(base, stream, threshold, self_join)
    nlist = nlist or default_nlist(n)
    return _ivf(base, stream, threshold, self_join, nlist, nprobe or default_nprobe(threshold, nlist), seed)
