"""The stage contract: shards, per-shard entries, manifest last; on local disk and on S3 (moto)."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pydantic import BaseModel

from personahub.tasks.core.checkpoint import (
    Manifest,
    CountsMismatch,
    ShardCounts,
    StageCheckpoint,
    StageIncomplete,
    params_hash,
)
from personahub.tasks.core.store import Store

PARAMS = {"min_chars": 200, "langs": ["en", "fr"], "model": "m1"}
SHARDS = [f"{i:05d}" for i in range(4)]


class FilterParams(BaseModel):
    min_chars: int
    langs: list[str]
    model: str


def _table(shard: str, n: int) -> pa.Table:
    return pa.table({"shard": [shard] * n, "i": list(range(n))})


def _write(cp: StageCheckpoint, shard: str, n_out: int = 3, n_quarantine: int = 1, n_filtered: int = 2):
    tables = {"data": _table(shard, n_out), "quarantine": _table(shard, n_quarantine)}
    counts = ShardCounts(n_out + n_filtered + n_quarantine, n_out, filtered=n_filtered, quarantined=n_quarantine)
    return cp.write_shard(shard, tables, counts, extra={"prompt_tokens": 10, "model": "m1"})


# --- params_hash ----------------------------------------------------------------------------------
def test_params_hash_is_canonical() -> None:
    h = params_hash(PARAMS)
    assert len(h) == 16 and int(h, 16) >= 0
    assert params_hash(dict(reversed(list(PARAMS.items())))) == h  # key order does not matter
    assert params_hash(FilterParams(**PARAMS)) == h  # a pydantic model hashes like its dump
    assert params_hash({**PARAMS, "min_chars": 201}) != h
    assert params_hash({"s": {"b", "a", "c"}}) == params_hash({"s": ["a", "b", "c"]})
    with pytest.raises(Exception):
        params_hash({"x": object()})  # no JSON form: refuse rather than hash a repr


# --- the contract, on both backends ---------------------------------------------------------------
def test_shards_then_manifest_last(store: Store) -> None:
    cp = StageCheckpoint(store, "run1", "filter", PARAMS)
    assert cp.prefix == "runs/run1/filter"
    for shard in reversed(SHARDS):  # completion order is not shard order
        entry = _write(cp, shard)
        assert entry.files["data"] == f"runs/run1/filter/data/{shard}.parquet"
        assert store.exists(f"runs/run1/filter/_done/{shard}.json")
    assert cp.manifest() is None and not cp.is_complete()  # nothing finalized yet
    assert list(cp.done_shards()) == SHARDS

    manifest = cp.finalize(expected_shards=SHARDS, summary={"note": "ok"})
    assert cp.is_complete()
    written = store.read_json(cp.manifest_path)
    assert written == manifest.to_json() and Manifest.from_json(written) == manifest
    assert [s["id"] for s in written["shards"]] == [s.id for s in manifest.shards] == SHARDS
    assert written["params"] == PARAMS and written["params_hash"] == params_hash(PARAMS)
    assert written["totals"] == {
        "rows_in": 24, "rows_out": 12, "filtered": 8, "quarantined": 4, "shards": 4,
        "rows": {"data": 12, "quarantine": 4}, "extra": {"prompt_tokens": 40},
    }
    assert written["summary"] == {"note": "ok"}
    assert max(e.finished_at for e in cp.done_shards().values()) <= written["created_at"]
    assert manifest.rows("quarantine") == 4 and manifest.digest() != ""

    assert cp.files() == [f"runs/run1/filter/data/{s}.parquet" for s in SHARDS]
    assert cp.files("quarantine") == [f"runs/run1/filter/quarantine/{s}.parquet" for s in SHARDS]
    assert store.read_parquet(cp.files()[2]).column("shard").to_pylist() == ["00002"] * 3
    assert manifest.files() == cp.files() and list(manifest.inputs()) == SHARDS


def test_rerun_with_same_params_is_skipped(store: Store, reopen_store) -> None:
    cp = StageCheckpoint(store, "run1", "filter", PARAMS)
    for shard in SHARDS:
        _write(cp, shard)
    cp.finalize(SHARDS)

    again = StageCheckpoint(reopen_store(), "run1", "filter", FilterParams(**PARAMS))
    assert again.is_complete()
    assert list(again.done_shards()) == SHARDS
    assert all(again.is_shard_done(s) for s in SHARDS)


def test_changed_params_redo_everything(store: Store, reopen_store) -> None:
    old = StageCheckpoint(store, "run1", "filter", PARAMS)
    for shard in SHARDS:
        _write(old, shard)
    old.finalize(SHARDS)

    new = StageCheckpoint(reopen_store(), "run1", "filter", {**PARAMS, "min_chars": 500})
    assert not new.is_complete()
    assert new.done_shards() == {}
    assert not new.is_shard_done(SHARDS[0])
    with pytest.raises(StageIncomplete):
        new.files()

    # Redoing a shard under the new params withdraws the old manifest and the shard's old entry:
    # the old params must not vouch for files that now hold the new output.
    _write(new, SHARDS[0])
    assert list(new.done_shards()) == [SHARDS[0]]
    assert not old.is_complete() and old.manifest() is None
    assert not old.is_shard_done(SHARDS[0])
    assert list(old.done_shards()) == SHARDS[1:]


def test_parquet_without_entry_is_redone(store: Store) -> None:
    cp = StageCheckpoint(store, "run1", "filter", PARAMS)
    store.write_parquet(cp.shard_path("00001"), _table("00001", 3))  # files written, entry not
    assert not cp.is_shard_done("00001")
    assert cp.done_shards() == {}
    with pytest.raises(StageIncomplete, match="00001"):
        cp.finalize(expected_shards=["00001"])
    _write(cp, "00001")
    assert cp.is_shard_done("00001")


def test_crash_after_two_of_four_shards_resumes(store: Store, reopen_store, monkeypatch: pytest.MonkeyPatch) -> None:
    cp = StageCheckpoint(store, "run1", "filter", PARAMS)
    _write(cp, SHARDS[0])
    _write(cp, SHARDS[1])

    def killed(rel: str, obj: object) -> None:
        raise KeyboardInterrupt("killed after the shard's parquet, before its entry")

    monkeypatch.setattr(store, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        _write(cp, SHARDS[2])
    monkeypatch.undo()
    assert store.exists(cp.shard_path(SHARDS[2]))  # its parquet landed, but it is not done

    resumed = StageCheckpoint(reopen_store(), "run1", "filter", PARAMS)
    done = resumed.done_shards()
    assert list(done) == SHARDS[:2]
    assert not resumed.is_complete()

    redone = [s for s in SHARDS if not resumed.is_shard_done(s)]
    for shard in redone:
        _write(resumed, shard)
    assert redone == SHARDS[2:]
    manifest = resumed.finalize(SHARDS)
    assert [s.id for s in manifest.shards] == SHARDS
    after = resumed.done_shards()
    assert all(after[s].finished_at == done[s].finished_at for s in SHARDS[:2])  # not rewritten


def test_counts_must_reconcile(store: Store) -> None:
    cp = StageCheckpoint(store, "run1", "filter", PARAMS)
    with pytest.raises(CountsMismatch, match="do not reconcile"):
        cp.write_shard("00000", {"data": _table("00000", 5)}, ShardCounts(10, 5, filtered=2, quarantined=1))
    with pytest.raises(CountsMismatch, match="'data' table has 4 rows"):
        cp.write_shard("00000", {"data": _table("00000", 4)}, ShardCounts(10, 5, filtered=5))
    with pytest.raises(CountsMismatch, match="negative"):
        cp.write_shard("00000", {"data": _table("00000", 5)}, ShardCounts(5, 5, filtered=-1, quarantined=1))
    assert not store.exists(cp.shard_path("00000")) and cp.done_shards() == {}

    # An entry whose counts do not add up (written by a buggy or older stage) fails the finalize.
    entry = _write(cp, "00000").to_json()
    entry["counts"]["rows_in"] += 1
    store.write_json(cp.entry_path("00000"), entry)
    with pytest.raises(CountsMismatch, match="do not reconcile"):
        cp.finalize(["00000"])
    assert cp.manifest() is None


def test_finalize_with_missing_expected_shard_raises(store: Store) -> None:
    cp = StageCheckpoint(store, "run1", "filter", PARAMS)
    for shard in SHARDS[:3]:
        _write(cp, shard)
    with pytest.raises(StageIncomplete, match=r"1 of 4 expected shards are not done: 00003"):
        cp.finalize(SHARDS)
    assert cp.manifest() is None and not cp.is_complete()
    # Without an expected list, the manifest lists what is done; extra done shards are left out
    # when an expected list is given.
    assert [s.id for s in cp.finalize(SHARDS[:2]).shards] == SHARDS[:2]


def test_shard_with_no_output_is_done(store: Store) -> None:
    cp = StageCheckpoint(store, "run1", "filter", PARAMS)
    entry = cp.write_shard("00000", {}, ShardCounts(4, 0, filtered=4))  # every row filtered out
    assert entry.files == {} and cp.is_shard_done("00000")
    manifest = cp.finalize(["00000"])
    assert manifest.totals.filtered == 4 and cp.files() == []


def test_names_must_be_single_safe_segments(store: Store) -> None:
    with pytest.raises(ValueError):
        StageCheckpoint(store, "run/1", "filter", PARAMS)
    cp = StageCheckpoint(store, "run1", "filter", PARAMS)
    for bad in ("../x", ".hidden", "a/b", ""):
        with pytest.raises(ValueError):
            cp.write_shard(bad, {"data": _table("x", 1)}, ShardCounts(1, 1))
    for kind in ("_done", "manifest.json"):  # would collide with the contract's own objects
        with pytest.raises(ValueError, match="table kind"):
            cp.write_shard("00000", {kind: _table("x", 1)}, ShardCounts(1, 1, filtered=0))
