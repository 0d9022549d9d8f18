"""Decontamination (METHOD.md, "Persona-driven synthesis": the quality ledger): every item's n-gram
overlap with test sets the user points to, so a synthetic item that copies a benchmark question is
caught before it is trained on.

Words are lowercased runs of letters and digits; an item's overlap is the share of its word
13-grams (n is a parameter) that occur in any reference text. An item over `max_overlap` (default 0:
any shared 13-gram, as GPT-3's decontamination did) is contaminated: dropped into the stage's
`contaminated` table and counted as filtered, or, with drop=False, kept with its overlap. An item
shorter than n words has no n-gram and overlap 0. References are JSONL / Parquet files (any fsspec
URL) with a text field: named (`file#field`) or the first of text, question, problem, prompt. Their
n-grams are kept as 64-bit hashes: a test set of 10,000 questions is a few MB.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import fsspec
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from personahub.tasks.core.checkpoint import ShardCounts
from personahub.tasks.core.stage import RowRange, StageRef
from personahub.tasks.personas.input_files import read_records
from personahub.tasks.synthesis.stage import ITEM_SCHEMA

CONTAMINATED = "contaminated"
TEXT_FIELDS = ("text", "question", "problem", "prompt")
_WORD = re.compile(r"\w+")


class DecontaminationError(ValueError):
    """A reference file that cannot be used (no text field, unreadable)."""


class Decontamination(BaseModel):
    references: list[str] = Field(default_factory=list, description="Test sets to check items against: JSONL / "
                                  "Parquet files with a text field (file#field, or text / question / problem / prompt)")
    n: int = Field(13, ge=3, description="Words per n-gram")
    max_overlap: float = Field(0.0, ge=0, lt=1, description="Largest share of an item's n-grams allowed in the "
                               "references (0: any shared n-gram is contamination)")
    drop: bool = Field(True, description="Drop contaminated items (else keep them, flagged by their overlap)")


def ngrams(text: str, n: int) -> set[int]:
    """The text's word n-grams, each as a 64-bit hash."""
    words = _WORD.findall(text.lower())
    return {int.from_bytes(hashlib.blake2b(" ".join(words[i : i + n]).encode(), digest_size=8).digest(), "big")
            for i in range(len(words) - n + 1)}


def split_reference(reference: str) -> tuple[str, str | None]:
    path, _, field = reference.partition("#")
    return path, field or None


def reference_texts(reference: str) -> Iterable[str]:
    path, field = split_reference(reference)
    with fsspec.open(path, "rb") as fh:
        for batch in read_records(path, fh):
            for i, record in enumerate(batch):
                if not isinstance(record, dict):
                    continue
                name = field or next((f for f in TEXT_FIELDS if f in record), None)
                if name is None or name not in record:
                    raise DecontaminationError(f"{path}: record {i} has no text field "
                                               f"({field or ' / '.join(TEXT_FIELDS)}); name one with {path}#field")
                if isinstance(record[name], str):
                    yield record[name]


@lru_cache(maxsize=4)
def reference_ngrams(references: tuple[str, ...], n: int) -> frozenset[int]:
    """Every reference text's n-grams (read once per process and reference list)."""
    out: set[int] = set()
    for reference in references:
        for text in reference_texts(reference):
            out |= ngrams(text, n)
    return frozenset(out)


def overlap(text: str, reference: frozenset[int], n: int) -> float:
    grams = ngrams(text, n)
    return len(grams & reference) / len(grams) if grams else 0.0


def decontaminate_rows(rows: Sequence[dict[str, Any]], settings: Decontamination) -> tuple[list[dict], list[dict]]:
    """(clean or flagged rows kept, contaminated rows dropped), each with its `contamination`."""
    reference = reference_ngrams(tuple(settings.references), settings.n)
    kept, dropped = [], []
    for row in rows:
        share = overlap(row["text"] or "", reference, settings.n)
        row = {**row, "contamination": share}
        contaminated = share > settings.max_overlap
        (dropped if contaminated and settings.drop else kept).append(row)
    return kept, dropped


@task(name="decontaminate", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def decontaminate_task(stage: StageRef, shard_id: str, source: RowRange) -> dict[str, Any]:
    """Prefect task: one shard of items checked against the reference test sets."""
    settings = Decontamination(**stage.params["decontamination"])
    rows = stage.store.read_parquet_rows(source.file, source.start, source.stop).to_pylist()
    kept, dropped = decontaminate_rows(rows, settings)
    flagged = sum(1 for row in kept if row["contamination"] > settings.max_overlap)
    counts = ShardCounts(rows_in=len(rows), rows_out=len(kept), filtered=len(dropped))
    tables = {"data": pa.Table.from_pylist(kept, schema=ITEM_SCHEMA),
              CONTAMINATED: pa.Table.from_pylist(dropped, schema=ITEM_SCHEMA)}
    reasons = {"contaminated": len(dropped)} if dropped else {}
    stage.checkpoint.write_shard(shard_id, tables, counts, extra={"reasons": reasons, "flagged": flagged})
    return {"shard_id": shard_id, "counts": counts.__dict__}
