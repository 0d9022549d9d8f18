"""Dedup stages: exact, MinHash, embeddings, vector search, keep-first selection, applying removals."""
