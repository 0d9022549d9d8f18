"""MinHash signatures equal datasketch's; banding, words and rank keys."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest
from datasketch import MinHash

from personahub.tasks.dedup import minhash


def _datasketch(words: set[str]) -> np.ndarray:
    m = MinHash(num_perm=minhash.NUM_PERM, seed=minhash.SEED)
    for w in words:
        m.update(w.encode("utf-8"))
    return m.hashvalues


def test_signatures_equal_datasketch_for_the_same_words() -> None:
    rng = random.Random(3)
    vocab = ["teacher", "jazz", "café", "東京", "naïve", "x", "2024", "a_b"] + [f"w{i}" for i in range(200)]
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 40))) for _ in range(300)]
    texts += ["", "   ", "!!!", None]
    sk = minhash.sketch(texts, minhash.choose_banding())
    for text, signature in zip(texts, sk.signatures):
        words = set(minhash.split_words([text]).vocab)
        assert (signature == _datasketch(words)).all(), text
    assert sk.empty.tolist()[-4:] == [True, True, True, True]


def test_words_are_lower_cased_unicode_word_runs_without_punctuation() -> None:
    words = minhash.split_words(["A Teacher, who loves JAZZ!", "Ünïcode café-résumé; 東京 2024", "", None])
    per_text = [sorted(words.vocab[i] for i in words.ids[words.offsets[k]:words.offsets[k + 1]]) for k in range(4)]
    assert per_text[0] == sorted(["a", "teacher", "who", "loves", "jazz"])
    assert per_text[1] == sorted(["ünïcode", "café", "résumé", "東京", "2024"])
    assert per_text[2] == [] and per_text[3] == []


def test_case_punctuation_and_word_order_do_not_change_the_signature() -> None:
    sk = minhash.sketch(["a nurse who loves chess", "Chess, loves WHO nurse a!", "a nurse who hates chess"],
                        minhash.choose_banding())
    assert (sk.signatures[0] == sk.signatures[1]).all()
    assert not (sk.signatures[0] == sk.signatures[2]).all()


def test_banding_is_chosen_for_recall_at_the_threshold() -> None:
    b = minhash.choose_banding(0.9, 128)
    assert (b.bands, b.rows) == (14, 9)
    assert b.candidate_probability(0.9) >= 0.995 and b.candidate_probability(0.95) > 0.99999
    # one row longer would miss more than 0.5% of the pairs exactly at 0.9
    assert minhash.Banding(128 // 10, 10).candidate_probability(0.9) < 0.995
    assert minhash.choose_banding(0.9, 128, 0.9995) == minhash.Banding(16, 8)
    # datasketch's own choice for 0.9/128 finds far fewer
    assert minhash.Banding(5, 25).candidate_probability(0.9) < 0.35
    assert minhash.choose_banding(0.5).rows < b.rows
    with pytest.raises(ValueError):
        minhash.choose_banding(0.0)


def test_band_keys_collide_exactly_when_a_band_is_equal() -> None:
    sk = minhash.sketch(["one two three", "three two one", "four five six"], minhash.choose_banding())
    assert (sk.band_keys[0] == sk.band_keys[1]).all()
    assert not (sk.band_keys[0] == sk.band_keys[2]).any()
    assert len(np.unique(sk.band_keys[0])) == sk.band_keys.shape[1]  # bands never share keys


def test_rank_keys_order_tier_then_hop_then_id_hash() -> None:
    ids = pa.array(["p1", "p2", "p3"])
    new = minhash.rank_keys(ids, np.array([0, 1, 6]), tier=1)
    hub = minhash.rank_keys(ids, np.array([6, 6, 6]), tier=0)
    assert (hub < new.min()).all()
    assert new[0] < new[1] < new[2]
    assert (minhash.rank_keys(ids, np.array([0, 1, 6])) == new).all()  # deterministic across calls


def test_node_index_maps_pairs_to_their_sorted_distinct_nodes() -> None:
    from personahub.tasks.dedup.minhash_stage import node_index

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 1000, 5000), rng.integers(0, 1000, 5000)
    nodes, ia, ib = node_index(a, b, 1000)
    assert np.array_equal(nodes, np.unique(np.concatenate([a, b])))
    assert np.array_equal(nodes[ia], a) and np.array_equal(nodes[ib], b)


def test_jaccard_on_several_threads_equals_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    from personahub.tasks.dedup import minhash_stage as dedup_minhash

    monkeypatch.setattr(dedup_minhash, "JACCARD_CHUNK", 1000)
    rng = np.random.default_rng(1)
    sets = [np.unique(rng.integers(0, 60, rng.integers(1, 40))).astype(np.uint64) for _ in range(300)]
    offsets = np.zeros(len(sets) + 1, np.int64)
    offsets[1:] = np.cumsum([len(s) for s in sets])
    values = np.concatenate(sets)
    a, b = rng.integers(0, 300, 10_500), rng.integers(0, 300, 10_500)
    one = dedup_minhash.jaccard(a, b, offsets, values)
    assert np.array_equal(dedup_minhash.jaccard(a, b, offsets, values, threads=3), one)
    expected = [len(np.intersect1d(sets[i], sets[j])) / len(np.union1d(sets[i], sets[j])) for i, j in zip(a[:200], b[:200])]
    assert np.allclose(one[:200], expected)


def test_batch_rank_keys_use_the_hop_column_when_there_is_one() -> None:
    ids = pa.array(["a", "b"])
    with_hop = pa.RecordBatch.from_pydict({"persona_id": ids, "hop": pa.array([3, None], pa.int32())})
    without = pa.RecordBatch.from_pydict({"persona_id": ids})
    assert np.array_equal(minhash.batch_rank_keys(with_hop), minhash.rank_keys(ids, np.array([3, 0]), tier=0))
    assert np.array_equal(minhash.batch_rank_keys(without), minhash.rank_keys(ids, tier=0))
    assert minhash.rank_columns(["persona", "hop", "persona_id"]) == ["persona_id", "hop"]
