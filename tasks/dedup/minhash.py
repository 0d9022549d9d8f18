"""MinHash signatures and LSH band keys for a batch of texts, vectorised.

The hash family is datasketch's own (datasketch >= 2.0, scheme "affine32", seed 1): each word is
hashed with sha1_hash32, pre-mixed with datasketch's MurmurHash3 finalizer, then permuted by
h -> a*h + b mod 2^32 with the (a, b) pairs datasketch draws for `MinHash(num_perm, seed)`. The
parameters are taken from datasketch itself rather than copied, so a signature here equals
`datasketch.MinHash(num_perm, seed)` updated with the same words (tests/test_minhash.py checks it)
and stored signatures stay comparable with sketches users make with datasketch.

Speed comes from doing per-record work in C: pyarrow lower-cases and splits the whole batch,
dictionary-encodes the words so each distinct word is sha1-hashed once per batch, and one compiled
loop (numba) takes the minimum over each record's words for all permutations.

Words are the paper's "word 1-grams": lower-cased runs of letters and digits, so case and
punctuation changes do not make two personas differ and word order does not matter.
(ASCII letters, digits and "_", and any other character except Unicode punctuation and spaces; see
_is_word_char.)
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numba
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from datasketch import MinHash
from datasketch.minhash import _fmix

NUM_PERM = 128
SEED = 1
THRESHOLD = 0.9
# Worst-case probability that a pair exactly at the threshold becomes a candidate; see choose_banding.
MIN_CANDIDATE_PROBABILITY = 0.995


@dataclass(frozen=True)
class Banding:
    bands: int
    rows: int

    def candidate_probability(self, similarity: float) -> float:
        """P(a pair of Jaccard `similarity` shares at least one band) = 1 - (1 - s^r)^b."""
        return 1.0 - (1.0 - similarity**self.rows) ** self.bands


def choose_banding(threshold: float = THRESHOLD, num_perm: int = NUM_PERM,
                   min_probability: float = MIN_CANDIDATE_PROBABILITY) -> Banding:
    """The banding with the fewest false candidates whose recall at the threshold is >= min_probability.

    datasketch's MinHashLSH picks (b, r) by balancing false positives against false negatives,
    which for 0.9 and 128 permutations gives 5 x 25: a pair at exactly 0.9 becomes a candidate with
    probability 1 - (1 - 0.9^25)^5 = 0.31 (76% of the >= 0.9 pairs of a real set were found). Here
    every candidate is verified on its exact word sets, so a false candidate costs ~1 us while a
    missed pair is a duplicate left in the hub: we take the longest bands (largest r, fewest false
    candidates) that still make a pair *at* the threshold a candidate with probability >=
    min_probability. For 0.9/128/0.995 that is 14 bands x 9 rows: P = 0.99895 for a pair at exactly
    0.9 and more above it (0.999999 at 0.95), while 10 x 12 would give 0.994 and 16 x 8 (0.99988)
    twice the false candidates at Jaccard 0.5 (6.2% vs 2.7% of such pairs).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    best = Banding(num_perm, 1)
    for rows in range(1, num_perm + 1):
        banding = Banding(num_perm // rows, rows)
        if banding.candidate_probability(threshold) >= min_probability:
            best = banding
        else:
            break
    return best


@lru_cache(maxsize=8)
def permutations(num_perm: int = NUM_PERM, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's (a, b) permutation parameters, as uint32 arrays."""
    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return np.ascontiguousarray(a, dtype=np.uint32), np.ascontiguousarray(b, dtype=np.uint32)


@dataclass
class Words:
    """The words of a batch of texts: record i has word ids ids[offsets[i]:offsets[i+1]] into vocab."""

    offsets: np.ndarray  # int64, n + 1
    ids: np.ndarray  # int32
    vocab: list[str]


@numba.njit(inline="always")
def _is_word_char(cp):  # pragma: no cover - compiled
    if cp < 0x80:  # ASCII: letters, digits, "_"
        return (48 <= cp <= 57) or (97 <= cp <= 122) or (65 <= cp <= 90) or cp == 95
    # Unicode punctuation and spaces: Latin-1 signs (but ª µ º), general punctuation, CJK and
    # full-width punctuation. Every other code point is part of a word (letters, marks, digits).
    if 0xA0 <= cp <= 0xBF:
        return cp == 0xAA or cp == 0xB5 or cp == 0xBA
    return not ((0x2000 <= cp <= 0x206F) or (0x3000 <= cp <= 0x303F) or (0xFE50 <= cp <= 0xFE6F)
                or (0xFF01 <= cp <= 0xFF0F) or (0xFF1A <= cp <= 0xFF20) or cp == 0xD7 or cp == 0xF7)


@numba.njit(nogil=True, cache=True)
def _split_utf8(data, offsets):  # pragma: no cover - compiled
    """Words of each UTF-8 text: (word bytes back to back, word offsets, each text's first word)."""
    n = offsets.shape[0] - 1
    out = np.empty(data.shape[0], np.uint8)
    word_offsets = np.empty(data.shape[0] + 1, np.int64)
    text_words = np.zeros(n + 1, np.int64)
    word_offsets[0] = 0
    pos = 0
    words = 0
    for i in range(n):
        j, end = offsets[i], offsets[i + 1]
        in_word = False
        while j < end:
            b = np.int64(data[j])
            if b < 0x80:
                size, cp = 1, b
            elif b >= 0xF0 and j + 3 < end:
                size, cp = 4, ((b & 0x07) << 18) | ((np.int64(data[j + 1]) & 0x3F) << 12) | ((np.int64(data[j + 2]) & 0x3F) << 6) | (np.int64(data[j + 3]) & 0x3F)
            elif b >= 0xE0 and j + 2 < end:
                size, cp = 3, ((b & 0x0F) << 12) | ((np.int64(data[j + 1]) & 0x3F) << 6) | (np.int64(data[j + 2]) & 0x3F)
            elif b >= 0xC0 and j + 1 < end:
                size, cp = 2, ((b & 0x1F) << 6) | (np.int64(data[j + 1]) & 0x3F)
            else:  # a stray or truncated byte: part of the word it is in
                size, cp = 1, 0xFFFD
            if _is_word_char(cp):
                for k in range(size):
                    out[pos] = data[j + k]
                    pos += 1
                in_word = True
            elif in_word:
                words += 1
                word_offsets[words] = pos
                in_word = False
            j += size
        if in_word:
            words += 1
            word_offsets[words] = pos
        text_words[i + 1] = words
    return out[:pos], word_offsets[:words + 1], text_words


def split_words(texts: pa.Array | pa.ChunkedArray | list[str | None]) -> Words:
    """Lower-case word 1-grams of every text (null counts as empty).

    One compiled pass over the lower-cased UTF-8 bytes (RE2's Unicode classes in pyarrow cost ~4 us
    a persona, more than everything else in a sketch together).
    """
    arr = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(texts, pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], pa.string())
    lowered = pc.utf8_lower(arr.cast(pa.large_string()).fill_null(""))
    n = len(lowered)
    offsets = np.frombuffer(lowered.buffers()[1], np.int64, count=n + 1, offset=lowered.offset * 8)
    data_buf = lowered.buffers()[2]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    word_bytes, word_offsets, text_words = _split_utf8(data, offsets)
    if len(word_offsets) == 1:
        return Words(text_words, np.zeros(0, np.int32), [])
    flat = pa.LargeStringArray.from_buffers(len(word_offsets) - 1, pa.py_buffer(word_offsets), pa.py_buffer(word_bytes))
    encoded = flat.dictionary_encode()
    return Words(text_words, encoded.indices.to_numpy().astype(np.int32), encoded.dictionary.to_pylist())


def word_hashes(vocab: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(sha1_hash32 of each word pre-mixed as datasketch does, a 64-bit hash for exact set comparison)."""
    h32 = np.empty(len(vocab), np.uint32)
    h64 = np.empty(len(vocab), np.uint64)
    for i, word in enumerate(vocab):
        digest = hashlib.sha1(word.encode("utf-8")).digest()
        h32[i], h64[i] = struct.unpack_from("<IQ", digest)
    # sha1_hash32 is the digest's first 4 bytes; datasketch then applies its finalizer once per word.
    return _fmix(h32, 32).astype(np.uint32), h64


@numba.njit(nogil=True, cache=True)
def _signatures(offsets, ids, hv, a, b):  # pragma: no cover - compiled
    n = offsets.shape[0] - 1
    k = a.shape[0]
    out = np.full((n, k), np.uint32(0xFFFFFFFF), dtype=np.uint32)
    for i in range(n):
        row = out[i]
        for t in range(offsets[i], offsets[i + 1]):
            h = hv[ids[t]]
            for j in range(k):
                # a*h + b mod 2^32: the uint32 wrap-around is the modulo, as in datasketch's affine32.
                v = np.uint32(a[j] * h + b[j])
                if v < row[j]:
                    row[j] = v
    return out


@numba.njit(nogil=True, cache=True)
def _word_sets(offsets, ids, h64):  # pragma: no cover - compiled
    """Each record's distinct 64-bit word hashes, sorted (CSR)."""
    n = offsets.shape[0] - 1
    out_offsets = np.zeros(n + 1, np.int64)
    values = np.empty(ids.shape[0], np.uint64)
    pos = 0
    for i in range(n):
        start = pos
        for t in range(offsets[i], offsets[i + 1]):
            values[pos] = h64[ids[t]]
            pos += 1
        seg = np.sort(values[start:pos])
        w = start
        for j in range(seg.shape[0]):
            if j == 0 or seg[j] != seg[j - 1]:
                values[w] = seg[j]
                w += 1
        pos = w
        out_offsets[i + 1] = pos
    return out_offsets, values[:pos].copy()


@numba.njit(nogil=True, cache=True)
def _band_keys(sig, bands, rows):  # pragma: no cover - compiled
    """One 64-bit key per (record, band): FNV-1a over the band's values, seeded by the band index.

    Equal keys are candidates; a 64-bit collision only adds a candidate that verification drops.
    """
    n = sig.shape[0]
    out = np.empty((n, bands), np.uint64)
    prime = np.uint64(1099511628211)
    for i in range(n):
        for band in range(bands):
            h = np.uint64(14695981039346656037) ^ np.uint64(band)
            for j in range(band * rows, (band + 1) * rows):
                v = sig[i, j]
                for shift in range(0, 32, 8):
                    h = (h ^ np.uint64((v >> shift) & 0xFF)) * prime
            out[i, band] = h
    return out


@dataclass
class Sketches:
    """MinHash signatures, LSH band keys and exact word sets of a batch of texts."""

    signatures: np.ndarray  # (n, num_perm) uint32
    band_keys: np.ndarray  # (n, bands) uint64
    set_offsets: np.ndarray  # (n + 1,) int64
    set_values: np.ndarray  # uint64 word hashes, sorted per record
    empty: np.ndarray  # bool: no words at all (such records are never candidates)


def sketch(texts: pa.Array | pa.ChunkedArray | list[str | None], banding: Banding,
           num_perm: int = NUM_PERM, seed: int = SEED) -> Sketches:
    """Signatures, band keys and word sets for every text of a batch."""
    if banding.bands * banding.rows > num_perm:
        raise ValueError(f"{banding} needs more than {num_perm} permutations")
    words = split_words(texts)
    hv, h64 = word_hashes(words.vocab)
    a, b = permutations(num_perm, seed)
    signatures = _signatures(words.offsets, words.ids, hv, a, b)
    set_offsets, set_values = _word_sets(words.offsets, words.ids, h64)
    keys = _band_keys(signatures, banding.bands, banding.rows)
    empty = np.diff(words.offsets) == 0
    return Sketches(signatures, keys, set_offsets, set_values, empty)


def rank_keys(persona_ids: pa.Array | pa.ChunkedArray | list[str], hop: np.ndarray | None = None,
              tier: int = 1) -> np.ndarray:
    """Which duplicate is kept: the lowest key wins. tier 0 (the existing hub) before tier 1 (new
    personas), then the lowest hop (a persona from a document before one found by expansion),
    then a hash of the persona id, so the choice never depends on shard or row order."""
    ids = persona_ids.to_pylist() if isinstance(persona_ids, (pa.Array, pa.ChunkedArray)) else list(persona_ids)
    hashed = pd.util.hash_array(np.asarray(ids, dtype=object), categorize=False).astype(np.uint64)
    hops = np.zeros(len(ids), np.uint64) if hop is None else np.clip(np.asarray(hop, np.int64), 0, 31).astype(np.uint64)
    if tier not in (0, 1):
        raise ValueError("tier is 0 (existing hub) or 1 (new)")
    return (np.uint64(tier) << np.uint64(63)) | (hops << np.uint64(58)) | (hashed >> np.uint64(6))


def rank_columns(names: Sequence[str]) -> list[str]:
    """The columns batch_rank_keys reads from a persona shard with these column names."""
    return ["persona_id"] + (["hop"] if "hop" in names else [])


def batch_rank_keys(batch: pa.RecordBatch) -> np.ndarray:
    """rank_keys of a batch of personas (its hop column if it has one), tier left to the reader."""
    hop = batch.column("hop").fill_null(0).to_numpy(zero_copy_only=False) if "hop" in batch.schema.names else None
    return rank_keys(batch.column("persona_id"), hop, tier=0)
