"""Which personas a dedup stage keeps, given its verified near-duplicate pairs.

Both dedup stages (MinHash, embeddings) end the same way: a list of pairs whose similarity was
verified to be >= the threshold. The pairs are grouped with union-find (a group is a connected
component; it is what the audit table reports), and in each group the personas are visited in rank
order (see minhash.rank_keys: existing hub first, then lowest hop, then a hash of the id), keeping a
persona unless it is a verified duplicate of a persona already kept. The first persona of a group
is its representative; every removed persona is recorded against the kept persona it duplicates.

Why not "keep only the representative of each component": components chain. A ~ N ~ B with A and
B unrelated (a persona halfway between two others) would delete B, and a nightly refresh whose new
persona bridged two hub personas would have to delete one of them. Keep-first deletes only verified
duplicates, and because hub personas rank first, deduplicating new personas against the hub gives
exactly what deduplicating hub + new from scratch gives (tests/test_dedup_incremental.py). For the
usual group (near-copies of one persona, all similar to each other) both rules keep one persona.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np


# Set on the rank of every persona that is not in the hub yet, so hub personas sort first.
TIER_BIT = np.uint64(1 << 63)


def tiered(ranks: np.ndarray, fixed: bool) -> np.ndarray:
    """Ranks (minhash.rank_keys) in keep order: a hub input's (`fixed`) as they are, a new one's after them."""
    return ranks if fixed else ranks | TIER_BIT


def unique(values: np.ndarray, *, sorted_runs: bool = False) -> np.ndarray:
    """Sorted distinct values. numpy >= 2.3's np.unique hashes integers, ~10x slower than sorting here.
    `sorted_runs`: the values are a concatenation of sorted arrays; timsort merges the runs (66M pairs
    from 32 partitions: 3.6 s instead of 12.4 s)."""
    values = np.sort(values, kind="stable" if sorted_runs else None)
    if len(values) < 2:
        return values
    keep = np.empty(len(values), np.bool_)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


@dataclass
class Selection:
    kept: np.ndarray  # bool (n,)
    duplicate_of: np.ndarray  # int64 (n,): the kept node a removed node duplicates, -1 if kept
    similarity: np.ndarray  # float32 (n,): similarity to duplicate_of (nan if kept)
    group: np.ndarray  # int64 (n,): the group's representative (lowest rank), the node itself if alone

    @property
    def removed(self) -> np.ndarray:
        return np.flatnonzero(~self.kept)


@numba.njit(nogil=True, cache=True)
def _find(parent, x):  # pragma: no cover - compiled
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:  # path compression
        nxt = parent[x]
        parent[x] = root
        x = nxt
    return root


@numba.njit(nogil=True, cache=True)
def _groups(n, a, b, order_pos):  # pragma: no cover - compiled
    """Union-find over the pairs; each root is the member with the lowest rank position."""
    parent = np.arange(n)
    for i in range(a.shape[0]):
        ra = _find(parent, a[i])
        rb = _find(parent, b[i])
        if ra != rb:
            if order_pos[ra] < order_pos[rb]:
                parent[rb] = ra
            else:
                parent[ra] = rb
    out = np.empty(n, np.int64)
    for x in range(n):
        out[x] = _find(parent, x)
    return out


@numba.njit(nogil=True, cache=True)
def _keep_first(order, nbr_offsets, nbrs, nbr_sims, fixed, kept, dup_of, dup_sim):  # pragma: no cover
    """Visit nodes in rank order; a node is removed if an earlier-ranked neighbour was kept."""
    for v in order:
        if fixed[v]:
            continue
        best = -1
        best_sim = np.float32(0.0)
        for j in range(nbr_offsets[v], nbr_offsets[v + 1]):
            u = nbrs[j]
            # neighbours are sorted by rank, so the first kept one is the lowest-ranked kept one
            if kept[u]:
                best = u
                best_sim = nbr_sims[j]
                break
        if best >= 0:
            kept[v] = False
            dup_of[v] = best
            dup_sim[v] = best_sim


def select(rank: np.ndarray, a: np.ndarray, b: np.ndarray, similarity: np.ndarray,
           fixed: np.ndarray | None = None) -> Selection:
    """Keep-first selection over verified pairs (a[i], b[i]) of nodes 0..n-1.

    `rank`: uint64 per node, lowest kept first (ties broken by node index). `fixed`: nodes that are
    kept whatever their pairs say (the existing hub in an incremental run); pairs between two fixed
    nodes are ignored.
    """
    n = len(rank)
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    similarity = np.asarray(similarity, np.float32)
    fixed = np.zeros(n, np.bool_) if fixed is None else np.asarray(fixed, np.bool_)
    order = np.lexsort((np.arange(n), rank))
    pos = np.empty(n, np.int64)
    pos[order] = np.arange(n)
    # Orient every pair from the earlier-ranked node to the later one; drop self and fixed-fixed pairs.
    useful = (a != b) & ~(fixed[a] & fixed[b])
    a, b, similarity = a[useful], b[useful], similarity[useful]
    swap = pos[a] > pos[b]
    early = np.where(swap, b, a)
    late = np.where(swap, a, b)
    # Neighbour lists of each late node, its earlier neighbours sorted by their rank.
    by = np.lexsort((pos[early], late))
    early, late, sims = early[by], late[by], similarity[by]
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(late, minlength=n), out=offsets[1:])
    kept = np.ones(n, np.bool_)
    dup_of = np.full(n, -1, np.int64)
    dup_sim = np.full(n, np.nan, np.float32)
    _keep_first(order, offsets, early, sims, fixed, kept, dup_of, dup_sim)
    group = _groups(n, early, late, pos)
    return Selection(kept, dup_of, dup_sim, group)
