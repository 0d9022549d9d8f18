"""Near-duplicate vector search: exact path, IVF recall, query streaming."""

from __future__ import annotations

import numpy as np

from personahub.tasks.vector_search import near_pairs


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


def test_exact_self_join_finds_planted_pairs_once() -> None:
    v, pairs = planted(2_000)
    a, b, s = near_pairs(v, 0.9)
    assert set(zip(a.tolist(), b.tolist())) == pairs
    assert (a < b).all() and (s >= 0.9).all()
    assert np.allclose(s, np.einsum("ij,ij->i", v[a], v[b]), atol=1e-6)


def test_lower_threshold_is_a_superset() -> None:
    v, _ = planted(1_000, d=8)
    hi = set(zip(*[x.tolist() for x in near_pairs(v, 0.9)[:2]]))
    lo = set(zip(*[x.tolist() for x in near_pairs(v, 0.5)[:2]]))
    assert hi < lo


def test_streamed_queries_equal_the_cross_part_of_a_self_join() -> None:
    v, _ = planted(1_500)
    base, hub = v[:700], v[700:]
    q, b, _ = near_pairs(base, 0.9, queries=[(0, hub[:400]), (400, hub[400:])])
    a, c, _ = near_pairs(v, 0.9)
    cross = {(j - 700, i) for i, j in zip(a.tolist(), c.tolist()) if i < 700 <= j}
    assert set(zip(q.tolist(), b.tolist())) == cross


def test_ivf_recall_and_determinism() -> None:
    v, pairs = planted(20_000, copies=1_000)
    a, b, _ = near_pairs(v, 0.9, exact_below=0)
    found = set(zip(a.tolist(), b.tolist()))
    assert len(found & pairs) / len(pairs) >= 0.99
    again = near_pairs(v, 0.9, exact_below=0)
    assert (again[0] == a).all() and (again[1] == b).all()
