"""Near-duplicate vector search: exact path, clustered-list recall, query streaming, determinism."""

from __future__ import annotations

import numpy as np

from personahub.tasks.dedup.vector_search import near_pairs


def planted(n: int, d: int = 64, copies: int = 200, seed: int = 0) -> tuple[np.ndarray, set[tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, d)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    pairs = set()
    for k in range(copies):
        i, j = 2 * k, 2 * k + 1
        noise = rng.normal(size=d).astype(np.float32)
        v[j] = v[i] + 0.25 * noise / np.linalg.norm(noise)
        v[j] /= np.linalg.norm(v[j])
        pairs.add((i, j))
    return v, pairs


def topical(n: int, d: int = 96, topics: int = 100, seed: int = 0) -> np.ndarray:
    """Embedding-like rows: topic centroids around a shared direction, items around them, and a
    copy of every 8th item at a cosine drawn from 0.86-0.99, so many true pairs sit near 0.9."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=d)
    centroids = 0.5 * shared / np.linalg.norm(shared) + rng.normal(size=(topics, d)) / np.sqrt(d)
    v = centroids[rng.integers(0, topics, n)] + rng.uniform(0.4, 0.9, (n, 1)) * rng.normal(size=(n, d)) / np.sqrt(d)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    src = np.arange(0, n // 2, 8)
    dst = n // 2 + np.arange(len(src))
    noise = rng.normal(size=(len(src), d))
    noise -= (noise * v[src]).sum(1, keepdims=True) * v[src]
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    cos = rng.uniform(0.86, 0.99, (len(src), 1))
    v[dst] = cos * v[src] + np.sqrt(1 - cos**2) * noise
    return v.astype(np.float32)


def brute(v: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    s = v.astype(np.float64) @ v.T.astype(np.float64)
    a, b = np.nonzero(np.triu(s >= threshold, 1))
    return set(zip(a.tolist(), b.tolist()))


def test_exact_self_join_finds_planted_pairs_once() -> None:
    v, pairs = planted(2_000)
    a, b, s = near_pairs(v, 0.9)
    assert set(zip(a.tolist(), b.tolist())) == pairs
    assert (a < b).all() and (s >= 0.9).all()
    assert a.dtype == np.int64 and b.dtype == np.int64 and s.dtype == np.float32
    assert np.allclose(s, np.einsum("ij,ij->i", v[a], v[b]), atol=1e-6)


def test_exact_self_join_is_sorted_and_matches_brute_force_at_both_thresholds() -> None:
    v = topical(3_000)
    for threshold in (0.9, 0.5):
        a, b, _ = near_pairs(v, threshold, chunk=700)  # blocks that do not divide n
        assert set(zip(a.tolist(), b.tolist())) == brute(v, threshold)
        assert (np.lexsort((b, a)) == np.arange(len(a))).all()


def test_lower_threshold_is_a_superset() -> None:
    v, _ = planted(1_000, d=8)
    hi = set(zip(*[x.tolist() for x in near_pairs(v, 0.9)[:2]]))
    lo = set(zip(*[x.tolist() for x in near_pairs(v, 0.5)[:2]]))
    assert hi < lo


def test_streamed_queries_equal_the_cross_part_of_a_self_join() -> None:
    v, _ = planted(1_500)
    base, hub = v[:700], v[700:]
    q, b, s = near_pairs(base, 0.9, queries=[(0, hub[:400]), (400, hub[400:])])
    a, c, t = near_pairs(v, 0.9)
    cross = {(j - 700, i): x for i, j, x in zip(a.tolist(), c.tolist(), t.tolist()) if i < 700 <= j}
    assert set(zip(q.tolist(), b.tolist())) == set(cross)
    assert np.allclose(s, [cross[p] for p in zip(q.tolist(), b.tolist())], atol=1e-6)


def test_empty_inputs() -> None:
    v, _ = planted(500, copies=10)
    assert all(len(x) == 0 for x in near_pairs(v[:0], 0.9))
    assert all(len(x) == 0 for x in near_pairs(v, 0.9, queries=[]))
    assert all(len(x) == 0 for x in near_pairs(v, 0.9, queries=[(0, v[:0])], exact_below=0))


def test_clustered_recall_and_determinism() -> None:
    v, pairs = planted(20_000, copies=1_000)
    a, b, s = near_pairs(v, 0.9, exact_below=0)
    found = set(zip(a.tolist(), b.tolist()))
    assert len(found & pairs) / len(pairs) >= 0.99
    assert (a < b).all() and (s >= 0.9).all()
    again = near_pairs(v, 0.9, exact_below=0)
    assert all((x == y).all() for x, y in zip(again, (a, b, s)))


def test_clustered_recall_near_the_threshold_and_streamed_queries() -> None:
    v = topical(12_000)
    exact = near_pairs(v, 0.9)
    truth = set(zip(exact[0].tolist(), exact[1].tolist()))
    a, b, s = near_pairs(v, 0.9, exact_below=0)
    found = set(zip(a.tolist(), b.tolist()))
    assert found <= truth and len(found) / len(truth) >= 0.99
    exact_sims = dict(zip(zip(exact[0].tolist(), exact[1].tolist()), exact[2].tolist()))
    assert np.allclose(s, [exact_sims[p] for p in zip(a.tolist(), b.tolist())], atol=1e-6)
    # streamed: base = the second half, queries = the first half in uneven chunks
    half = len(v) // 2
    q, c, _ = near_pairs(v[half:], 0.9, queries=[(0, v[:5_000]), (5_000, v[5_000:half])], exact_below=0, chunk=2_048)
    cross = {(i, j - half) for i, j in truth if i < half <= j}
    got = set(zip(q.tolist(), c.tolist()))
    assert got <= cross and len(got) / len(cross) >= 0.99


def test_plain_ivf_and_a_lower_threshold_on_the_clustered_path() -> None:
    v = topical(6_000, topics=40)
    hi = near_pairs(v, 0.9, exact_below=0, nlist=64, nprobe=64, margin=float("inf"))
    truth = near_pairs(v, 0.9)
    assert (hi[0] == truth[0]).all() and (hi[1] == truth[1]).all()  # probing every list is exact
    lo = near_pairs(v, 0.5, exact_below=0)
    lo_pairs = set(zip(lo[0].tolist(), lo[1].tolist()))
    assert set(zip(hi[0].tolist(), hi[1].tolist())) <= lo_pairs
    assert len(lo_pairs) / len(brute(v, 0.5)) >= 0.95
