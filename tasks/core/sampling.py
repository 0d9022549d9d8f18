"""Seeded samples by key: the crawl's max_docs sample and each Persona-to-Persona frontier.

Ids here are sha256 hex prefixes, so XOR with a constant derived from the seed (and a salt naming
the sample) is again uniform: each seed orders the ids differently, with no state and in any order,
and the n smallest keys are the sample (bottom-k), the same on every rerun.
"""

from __future__ import annotations

import hashlib

import numpy as np


def seeded_keys(ids: list[str], salt: str) -> np.ndarray:
    """A pseudo-random 64-bit key per id, from the id's first 16 hex digits and `salt`."""
    mix = int.from_bytes(hashlib.sha256(salt.encode()).digest()[:8], "big")
    return np.fromiter((int(i[:16], 16) ^ mix for i in ids), dtype=np.uint64, count=len(ids))
