"""Keep-first selection over verified pairs."""

from __future__ import annotations

import numpy as np

from personahub.tasks.dedup import keep as dedup_keep


def test_a_group_of_copies_keeps_its_lowest_ranked_member() -> None:
    rank = np.array([30, 10, 20], np.uint64)
    sel = dedup_keep.select(rank, [0, 0, 1], [1, 2, 2], [0.95, 0.92, 0.97])
    assert sel.kept.tolist() == [False, True, False]
    assert sel.duplicate_of.tolist() == [1, -1, 1]
    assert np.isclose(sel.similarity[0], 0.95) and np.isclose(sel.similarity[2], 0.97)
    assert sel.group.tolist() == [1, 1, 1]


def test_a_chain_does_not_delete_the_unrelated_end() -> None:
    # A ~ N ~ B, A and B unrelated: N goes, A and B stay (one component, two kept)
    rank = np.array([1, 2, 3], np.uint64)  # A, N, B
    sel = dedup_keep.select(rank, [0, 1], [1, 2], [0.91, 0.91])
    assert sel.kept.tolist() == [True, False, True]
    assert sel.group.tolist() == [0, 0, 0]


def test_fixed_nodes_are_kept_and_their_pairs_ignored() -> None:
    rank = np.array([5, 1, 2], np.uint64)
    fixed = np.array([True, True, False])
    sel = dedup_keep.select(rank, [0, 1], [1, 2], [0.99, 0.95], fixed=fixed)
    assert sel.kept.tolist() == [True, True, False]
    assert sel.duplicate_of[2] == 1


def test_the_decision_does_not_depend_on_pair_or_node_order() -> None:
    rng = np.random.default_rng(0)
    n = 300
    rank = rng.permutation(n).astype(np.uint64)
    a, b = rng.integers(0, n, 400), rng.integers(0, n, 400)
    sims = rng.uniform(0.9, 1, 400).astype(np.float32)
    first = dedup_keep.select(rank, a, b, sims)
    order = rng.permutation(400)
    second = dedup_keep.select(rank, b[order], a[order], sims[order])
    assert (first.kept == second.kept).all() and (first.duplicate_of == second.duplicate_of).all()
    # relabel the nodes: the same personas are kept
    perm = rng.permutation(n)
    inv = np.argsort(perm)
    third = dedup_keep.select(rank[inv], perm[a], perm[b], sims)
    assert (third.kept[perm] == first.kept).all()
