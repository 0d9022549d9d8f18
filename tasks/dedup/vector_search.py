"""Pairs of unit vectors at cosine >= threshold: exact for small sets, clustered lists for large ones.

Exact (n < exact_below): a blocked matrix multiply (memory: one block of scores; a self-join
computes only the upper triangle of blocks).

Clustered (n >= exact_below): spherical k-means (faiss, on a seeded sample of TRAIN_PER_LIST rows
per list) splits base into `nlist` inverted lists, each vector in the list of its nearest centroid;
the lists are a list-ordered copy of base (the index: n x d float32, like faiss IndexIVFFlat). A
query is compared with the members of some of its nearest lists by one matrix multiply per list
(BLAS); faiss's own IVF range_search scans list by list per query, several times slower here at
the same lists scanned. Which lists a query probes is adaptive:

    list L is probed  iff  L is among the query's `nprobe` nearest centroids, and
                           s(q, c) - s(q, L) <= margin * sqrt(2 - 2 * threshold) * |mu_L - mu_c|

with c the query's nearest list and s the centroid inner product. The bound is Voronoi geometry:
a member x of L is closer to mu_L than to mu_c, so a query within cosine t of x satisfies the
inequality with margin = 1 (exact, but it probes most lists in 384 d); perturbations do not point
at the boundary, so a fraction of it suffices. Queries deep inside their list probe one or two
lists, those near a boundary probe many, which scans fewer vectors than a fixed nprobe at equal
recall. A self-join finds a pair from either end (i probes j's list or j probes i's).

Every candidate from the float32 products (>= threshold - SLACK) is recomputed in float64 (exact
products of the float32 inputs) and kept iff it clears the threshold; the returned cosine is that
value as float32. So the result does not depend on how the blocks were cut, and the exact and the
clustered paths agree on every pair they both return.

Defaults (default_nlist, default_nprobe, MARGIN) were chosen with bench/embedding_search.py on
sentence-embedding-like data with planted near-duplicates; recall against exact search and times
are in BENCHMARKS.md ("Dedup: embedding near-duplicate search").

Determinism: the k-means sample, its seed and the thread count (faiss.omp_get_max_threads) fix the
centroids; assignment, probing and the float64 recheck are deterministic, and the output is sorted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import faiss
import numpy as np

EXACT_BELOW = 50_000
TRAIN_PER_LIST = 64
KMEANS_ITER = 20
# float32 products of unit vectors in <= 1024 d are within ~1e-6 of the exact value: candidates
# within SLACK below the threshold are rechecked in float64 rather than dropped
SLACK = 1e-5
# scores of one matrix multiply at most (64 MB of float32)
SCORE_CELLS = 1 << 24
MARGIN = 0.4


def default_nlist(n: int) -> int:
    return max(1, min(n // 39, int(2 * math.sqrt(n))))  # faiss wants >= 39 training points per list


def default_nprobe(threshold: float, nlist: int) -> int:
    return min(nlist, 16 if threshold >= 0.8 else 32 if threshold >= 0.6 else 64)


def _empty() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)


def _finish(qa: list[np.ndarray], ba: list[np.ndarray], sa: list[np.ndarray], self_join: bool
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not qa:
        return _empty()
    q, b, s = np.concatenate(qa).astype(np.int64), np.concatenate(ba).astype(np.int64), np.concatenate(sa)
    if self_join:  # a pair may be found from either end: keep it once, as i < j
        q, b = np.minimum(q, b), np.maximum(q, b)
    width = int(b.max()) + 1 if len(b) else 1
    key = q * width + b  # one sort key: faster than a lexsort of two
    order = np.argsort(key, kind="stable")
    key, s = key[order], s[order]
    if self_join and len(key):
        first = np.ones(len(key), np.bool_)
        first[1:] = key[1:] != key[:-1]
        key, s = key[first], s[first]
    return key // width, key % width, s.astype(np.float32)


def _matches(queries: np.ndarray, members: np.ndarray, threshold: float, skip: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, col, cosine) of query x member pairs at cosine >= threshold. A product within SLACK of
    the threshold is decided by the float64 product (exact for float32 inputs), so whether a pair is
    returned does not depend on how the blocks were cut. skip: per query row, the member columns
    <= skip[row] are dropped (the lower triangle of a self-join block; -1 keeps all)."""
    rows, cols, sims = [], [], []
    step = max(1, SCORE_CELLS // max(1, len(members)))
    for start in range(0, len(queries), step):
        q = queries[start:start + step]
        scores = q @ members.T
        r, c = np.nonzero(scores >= threshold - SLACK)
        if skip is not None:
            keep = c > skip[start + r]
            r, c = r[keep], c[keep]
        if len(r) == 0:
            continue
        s = scores[r, c]
        near = np.flatnonzero(s < threshold + SLACK)
        if len(near):
            exact = np.einsum("ij,ij->i", q[r[near]].astype(np.float64), members[c[near]].astype(np.float64))
            s[near] = exact.astype(np.float32)
            keep = np.ones(len(r), np.bool_)
            keep[near] = exact >= threshold
            r, c, s = r[keep], c[keep], s[keep]
        rows.append(r + start)
        cols.append(c)
        sims.append(s)
    if not rows:
        return _empty()
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(sims)


def _exact_self(base: np.ndarray, threshold: float, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    qa, ba, sa = [], [], []
    step = max(1, min(chunk, SCORE_CELLS // max(1, len(base))))
    for start in range(0, len(base), step):
        # rows start.. against columns start..: each unordered pair once, in the upper triangle
        block = base[start:start + step]
        r, c, s = _matches(block, base[start:], threshold, skip=np.arange(len(block)))
        qa.append(r + start)
        ba.append(c + start)
        sa.append(s)
    return _finish(qa, ba, sa, self_join=False)


def _exact_queries(base: np.ndarray, queries: Iterable[tuple[int, np.ndarray]], threshold: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    qa, ba, sa = [], [], []
    for offset, block in queries:
        r, c, s = _matches(np.ascontiguousarray(block, np.float32), base, threshold)
        qa.append(r + offset)
        ba.append(c)
        sa.append(s)
    return _finish(qa, ba, sa, self_join=False)


class _Lists:
    """Inverted lists over base: centroids, the list-ordered copy of base and the probe rule."""

    def __init__(self, base: np.ndarray, nlist: int, seed: int, chunk: int, threshold: float, nprobe: int,
                 margin: float, self_probes: bool) -> None:
        n, d = base.shape
        nlist = max(1, min(nlist, n))
        rng = np.random.default_rng(seed)
        sample = base[np.sort(rng.choice(n, min(n, nlist * TRAIN_PER_LIST), replace=False))]
        kmeans = faiss.Kmeans(d, nlist, niter=KMEANS_ITER, seed=seed, spherical=True,
                              max_points_per_centroid=TRAIN_PER_LIST, verbose=False)
        kmeans.train(sample)
        del sample
        centroids = np.ascontiguousarray(kmeans.centroids, np.float32)
        self.nlist = nlist
        self.nprobe = min(nprobe, nlist)
        self.reach = margin * math.sqrt(max(0.0, 2.0 - 2.0 * threshold))
        self.quantizer = faiss.IndexFlatIP(d)
        self.quantizer.add(centroids)
        # |mu_a - mu_b| of the unit centroids: the scale of the margin between lists a and b
        self.spread = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * (centroids @ centroids.T))).astype(np.float32)
        # One pass assigns base; a self-join keeps the probes of its rows from the same pass (a
        # row's own list is then always its first probe, and there is no second assignment).
        primary = np.empty(n, np.int64)
        probe_rows, probe_lists = [], []
        for start in range(0, n, chunk):
            scores, lists = self.quantizer.search(base[start:start + chunk], self.nprobe if self_probes else 1)
            primary[start:start + len(lists)] = lists[:, 0]
            if self_probes:
                rows, probed = self._rule(scores, lists)
                probe_rows.append((rows + start).astype(np.int32))
                probe_lists.append(probed.astype(np.int32))
        self.self_probes = (np.concatenate(probe_rows), np.concatenate(probe_lists)) if self_probes else None
        self.order = np.argsort(primary, kind="stable")
        self.bounds = np.searchsorted(primary[self.order], np.arange(nlist + 1))
        self.vectors = base[self.order]

    def _rule(self, scores: np.ndarray, lists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if math.isinf(self.reach):
            keep = np.ones(lists.shape, np.bool_)
        else:
            keep = scores[:, :1] - scores <= self.reach * self.spread[lists[:, :1], lists]
        keep[:, 0] = True  # the nearest list, whatever rounding did to its gap
        rows, ranks = np.nonzero(keep)
        return rows, lists[rows, ranks]

    def probes(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, list) of every list a row of block probes (see the module docstring)."""
        return self._rule(*self.quantizer.search(block, self.nprobe))

    def search(self, block: np.ndarray, rows: np.ndarray, lists: np.ndarray, threshold: float, self_join: bool = False
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pairs (row of block, base index, cosine) over the given (row, list) probes. self_join:
        block is the list-ordered copy, and a list's own members meet each other once (i < j)."""
        by_list = np.argsort(lists, kind="stable")
        rows, lists = rows[by_list], lists[by_list]
        starts = np.searchsorted(lists, np.arange(self.nlist + 1))
        qa, ba, sa = [], [], []
        for lst in np.flatnonzero(np.diff(starts)):
            lo, hi = self.bounds[lst], self.bounds[lst + 1]
            if hi == lo:
                continue
            probing = rows[starts[lst]:starts[lst + 1]]
            skip = np.where((probing >= lo) & (probing < hi), probing - lo, -1) if self_join else None
            r, c, s = _matches(block[probing], self.vectors[lo:hi], threshold, skip)
            qa.append(probing[r])
            ba.append(self.order[lo + c])
            sa.append(s)
        if not qa:
            return _empty()
        return np.concatenate(qa), np.concatenate(ba), np.concatenate(sa)


def _clustered(base: np.ndarray, queries: Iterable[tuple[int, np.ndarray]] | None, threshold: float,
               nlist: int, nprobe: int, margin: float, seed: int, chunk: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    index = _Lists(base, nlist, seed, chunk, threshold, nprobe, margin, self_probes=queries is None)
    if index.self_probes is not None:
        # Self-join: every row's probes are known, so one pass over the lists meets each list with
        # all its queries, in as few multiplies as possible.
        # Queries are gathered from the list-ordered copy: a list's queries are mostly its own
        # members and its neighbours', contiguous there.
        rows, lists = index.self_probes
        position = np.empty(len(base), np.int64)
        position[index.order] = np.arange(len(base))
        q, b, s = index.search(index.vectors, position[rows], lists, threshold, self_join=True)
        return _finish([index.order[q]], [b], [s], self_join=True)
    qa, ba, sa = [], [], []
    for offset, block in _rechunk(queries or [], chunk):
        q, b, s = index.search(block, *index.probes(block), threshold)
        qa.append(q + offset)
        ba.append(b)
        sa.append(s)
    return _finish(qa, ba, sa, self_join=False)


def _rechunk(queries: Iterable[tuple[int, np.ndarray]], chunk: int) -> Iterator[tuple[int, np.ndarray]]:
    for offset, block in queries:
        block = np.ascontiguousarray(block, np.float32)
        for start in range(0, len(block), chunk):
            yield offset + start, block[start:start + chunk]


def near_pairs(base: np.ndarray, threshold: float, *, queries: Iterable[tuple[int, np.ndarray]] | None = None,
               exact_below: int = EXACT_BELOW, nlist: int | None = None, nprobe: int | None = None,
               margin: float | None = None, seed: int = 0, chunk: int = 65_536
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query index, base index, cosine) of every pair at cosine >= threshold, sorted by both indices.

    base: (n, d) unit rows. Without `queries`, a self-join of base: each unordered pair once, i < j.
    With `queries`: (offset, block) chunks streamed against base (memory: base, its index and one
    chunk), query index = offset + row. Exact below `exact_below` base rows; above, clustered lists
    (nlist / nprobe / margin default to default_nlist / default_nprobe / MARGIN; margin =
    inf gives a plain nprobe-nearest-lists IVF). Cosines are exact; every pair clears the threshold.
    """
    base = np.ascontiguousarray(base, np.float32)
    n = len(base)
    if n == 0:
        return _empty()
    if n < exact_below:
        if queries is None:
            return _exact_self(base, threshold, chunk)
        return _exact_queries(base, _rechunk(queries, chunk), threshold)
    nlist = nlist or default_nlist(n)
    return _clustered(base, queries, threshold, nlist, nprobe or default_nprobe(threshold, nlist),
                      MARGIN if margin is None else margin, seed, chunk)
