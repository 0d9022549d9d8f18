"""Store: atomic writes, Parquet (zstd), JSON, listing; on local disk and on S3 (moto)."""

from __future__ import annotations

import io
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from personahub.tasks.core import store as store_module
from personahub.tasks.core.store import Store


def _table(n: int = 5) -> pa.Table:
    return pa.table({"id": list(range(n)), "text": [f"row {i}" for i in range(n)]})


def test_local_atomic_write_leaves_no_temp_files(tmp_path) -> None:
    store = Store(str(tmp_path))
    for i in range(3):
        store.write_bytes("a/b.bin", f"v{i}".encode())
    store.write_parquet("a/c.parquet", _table())
    assert sorted(os.listdir(tmp_path / "a")) == ["b.bin", "c.parquet"]
    assert store.read_bytes("a/b.bin") == b"v2"


def test_local_failed_write_keeps_old_content(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(str(tmp_path))
    store.write_bytes("x/data.bin", b"old")

    def crash(src: str, dst: str) -> None:
        raise OSError("killed between write and rename")

    monkeypatch.setattr(store_module.os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        store.write_bytes("x/data.bin", b"new content")
    with pytest.raises(OSError):
        store.write_bytes("x/other.bin", b"never visible")
    monkeypatch.undo()

    assert store.read_bytes("x/data.bin") == b"old"
    assert os.listdir(tmp_path / "x") == ["data.bin"]  # no partial file, no temp file
    assert store.list("x") == ["x/data.bin"]
    assert not store.exists("x/other.bin")


def test_parquet_round_trip_is_zstd(store: Store) -> None:
    table = _table(100)
    size = store.write_parquet("runs/r/t.parquet", table)
    assert store.read_parquet("runs/r/t.parquet").equals(table)
    assert store.read_parquet("runs/r/t.parquet", columns=["text"]).column_names == ["text"]
    raw = store.read_bytes("runs/r/t.parquet")
    assert len(raw) == size
    meta = pq.ParquetFile(io.BytesIO(raw)).metadata
    assert {meta.row_group(0).column(i).compression for i in range(meta.num_columns)} == {"ZSTD"}
    assert [t.num_rows for t in store.iter_parquet(["runs/r/t.parquet"] * 2)] == [100, 100]


def test_json_round_trip(store: Store) -> None:
    obj = {"b": [1, 2, {"c": None}], "a": "é"}
    store.write_json("m/manifest.json", obj)
    assert store.read_json("m/manifest.json") == obj


def test_list_exists_delete(store: Store) -> None:
    assert store.list("d") == []
    assert not store.exists("d")
    store.write_bytes("d/2.json", b"2")
    store.write_bytes("d/1.json", b"1")
    store.write_bytes("d/sub/3.json", b"3")
    assert store.list("d") == ["d/1.json", "d/2.json"]  # files only, sorted, not recursive
    assert store.list("d/") == ["d/1.json", "d/2.json"]
    assert store.exists("d/1.json") and store.exists("d") and store.exists("d/sub")

    # A write after a listing must show up at once (no stale listing cache on s3).
    store.write_bytes("d/0.json", b"0")
    assert store.list("d") == ["d/0.json", "d/1.json", "d/2.json"]

    store.delete("d/1.json")
    assert not store.exists("d/1.json")
    assert store.list("d") == ["d/0.json", "d/2.json"]
    store.delete("d/missing.json")  # deleting what is not there is a no-op
    store.delete("d", recursive=True)
    assert not store.exists("d/sub/3.json")
    assert store.list("d") == []


def test_list_root(store: Store) -> None:
    store.write_bytes("top.json", b"{}")
    assert store.list("") == ["top.json"]


def test_writes_are_seen_by_another_store(store: Store, reopen_store) -> None:
    other = reopen_store()
    assert not other.exists("shared/x.json")
    assert other.list("shared") == []
    store.write_json("shared/x.json", {"v": 1})
    assert other.exists("shared/x.json")
    assert other.list("shared") == ["shared/x.json"]
    assert other.read_json("shared/x.json") == {"v": 1}


def test_uri(store: Store, store_url) -> None:
    url, endpoint = store_url
    if endpoint is None:
        assert store.uri("a/b.parquet") == os.path.join(url, "a", "b.parquet")
        assert os.path.isabs(store.uri())
    else:
        assert store.uri("a/b.parquet") == f"{url}/a/b.parquet"
        assert store.uri() == url
