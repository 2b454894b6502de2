"""A Parquet output folder is a dataset every common reader opens as it is: the sidecars
(__luab__/manifest-*, __luab__/rejects-*) are skipped, the rows agree, class names are in a
column, and row groups are sized for scans."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from luab_data.build import build_parquet
from luab_data.records import record_schema
from luab_data.sample import SampleSpec, generate_sample
from luab_data.sources import open_source, read_records
from luab_data.writers.parquet import (
    ROW_GROUP_ROWS,
    SIDECARS,
    ParquetShardWriter,
    manifest_path,
    rejects_name,
    shard_tag,
)

COLUMNS = ["key", "label", "labels", "label_names", "n_trace", "n_clicks"]


def _build(src: Path, out: Path, shards: int) -> Path:
    for i in range(shards):
        build_parquet(open_source(src), out, (i, shards), rows_per_file=300, show_progress=False)
    return out


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    """The ImageNet-AB sample built in 2 shards of several parts each, sidecars beside them."""
    root = tmp_path_factory.mktemp("imagenet")
    generate_sample(root / "src", SampleSpec(size=1000, images=False, seed=5), processes=1)
    out = _build(root / "src" / "imagenet_ab_v1_0.tar.gz", root / "out", shards=2)
    sidecars = {manifest_path(out, (i, 2)) for i in range(2)}
    sidecars |= {out / rejects_name((i, 2)) for i in range(2)}
    assert set((out / SIDECARS).iterdir()) == sidecars
    assert {p.suffix for p in out.iterdir() if p.is_file()} == {".parquet"}
    return out


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    generate_sample(root / "src", SampleSpec(kind="coco-ab", size=200, images=False, seed=2))
    return _build(root / "src" / "coco_ab_v1_0.json", root / "out", shards=1)


def _rows(table: pa.Table) -> list[tuple]:
    """Rows as sorted tuples of plain values (lists as tuples), whatever the reader's types."""
    cols = [table.column(c).to_pylist() for c in COLUMNS]
    rows = zip(*cols, strict=True)
    return sorted(tuple(tuple(v) if isinstance(v, list) else v for v in row) for row in rows)


def _pandas(folder: Path) -> pa.Table:
    import pandas as pd

    return pa.Table.from_pandas(pd.read_parquet(folder, columns=COLUMNS), preserve_index=False)


def _polars(folder: Path) -> pa.Table:
    import polars as pl

    # polars 2 refuses a folder that holds anything but Parquet, even in a hidden subfolder
    return pl.read_parquet(str(folder / "*.parquet"), columns=COLUMNS).to_arrow()


def _duckdb(folder: Path) -> pa.Table:
    import duckdb

    query = f"SELECT {', '.join(COLUMNS)} FROM read_parquet('{folder}/*.parquet')"
    with duckdb.connect() as con:
        return con.sql(query).to_arrow_table()


def _pyarrow_dataset(folder: Path) -> pa.Table:
    return ds.dataset(folder, format="parquet").to_table(columns=COLUMNS)


def _hf_datasets(folder: Path) -> pa.Table:
    from datasets import load_dataset

    data = load_dataset(
        "parquet", data_dir=str(folder), split="train", cache_dir=str(folder.parent / "hf-cache")
    )
    return data.data.table.select(COLUMNS)


READERS = {
    "pandas": _pandas,
    "polars": _polars,
    "duckdb": _duckdb,
    "pyarrow.dataset": _pyarrow_dataset,
    "datasets": _hf_datasets,
}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("reader", READERS)
def test_every_reader_opens_the_folder_with_the_same_rows(imagenet, reader, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing to fetch: the folder is local
    ours = read_records(imagenet)[0]
    manifests = [json.loads(p.read_text()) for p in (imagenet / SIDECARS).glob("manifest-*")]
    assert sum(m["rows"] for m in manifests) == ours.num_rows > 0
    expected = _rows(pa.concat_tables(pq.read_table(f) for f in imagenet.glob("part-*.parquet")))
    got = _rows(READERS[reader](imagenet))
    assert len(got) == ours.num_rows
    assert got == expected
    assert sorted(r[0] for r in got) == sorted(ours.column("key").to_pylist())


def test_class_names_are_a_column(imagenet, coco):
    for folder in (imagenet, coco):
        table = ds.dataset(folder).to_table()
        classes = json.loads(table.schema.metadata[b"luab"])["classes"]
        names = table.column("label_names").to_pylist()
        labels = table.column("labels").to_pylist()
        assert names == [[classes[i] for i in row] for row in labels]
        assert any(len(row) > 1 for row in names) == (folder == coco)  # COCO: multi-label
    wnids = ds.dataset(imagenet).to_table(columns=["wnid", "label_names"]).to_pylist()
    assert all(r["label_names"] == [r["wnid"]] for r in wnids)


def test_label_names_do_not_leak_into_records(imagenet):
    """Reading our output back gives canonical records (label_names is derived on write)."""
    table, rejects = read_records(imagenet)
    assert not rejects
    assert table.schema.names == record_schema().names


def test_row_groups_hold_many_rows(imagenet):
    assert ROW_GROUP_ROWS >= 65_536
    for part in imagenet.glob("*.parquet"):
        meta = pq.ParquetFile(part).metadata
        assert meta.num_row_groups == 1, part  # 300-row parts: one group, not one per batch


def _writer_groups(imagenet: Path, tmp_path: Path, **limits) -> list[list[int]]:
    """Row-group sizes per part for 5,000 records written in source-sized batches."""
    source = read_records(imagenet)[0]
    table = pa.concat_tables([source] * (5000 // source.num_rows + 1)).slice(0, 5000)
    out = tmp_path / "out"
    writer = ParquetShardWriter(out, (0, 1), record_schema(metadata={"classes": []}), **limits)
    for batch in table.to_batches(max_chunksize=777):
        writer.write(batch)
    writer.commit({})
    files = [pq.ParquetFile(out / name).metadata for name in writer.files]
    return [[m.row_group(g).num_rows for g in range(m.num_row_groups)] for m in files]


def test_row_groups_cut_at_size_and_file_boundaries(imagenet, tmp_path):
    groups = _writer_groups(imagenet, tmp_path, rows_per_file=2500, row_group_rows=1000)
    assert groups == [[1000, 1000, 500], [1000, 1000, 500]]


def test_row_groups_cut_by_bytes(imagenet, tmp_path):
    groups = _writer_groups(imagenet, tmp_path, rows_per_file=10_000, row_group_bytes=200_000)
    sizes = [n for part in groups for n in part]
    assert sum(sizes) == 5000 and len(sizes) > 3
    assert max(sizes) < 5000


def test_older_outputs_are_rebuilt_only_with_overwrite(imagenet, tmp_path):
    """An output of luab-data 0.1 (unprefixed manifest) still counts as a finished shard."""
    out = tmp_path / "old"
    out.mkdir()
    (out / f"manifest-{shard_tag((0, 1))}.json").write_text(
        json.dumps({"files": ["part-old.parquet"], "rejects_file": "rejects-old.jsonl"})
    )
    (out / "part-old.parquet").write_bytes(b"")
    (out / "rejects-old.jsonl").write_text("")
    src = next(imagenet.parent.glob("src/*.tar.gz"))
    with pytest.raises(FileExistsError, match="already built"):
        build_parquet(open_source(src), out, show_progress=False)
    build_parquet(open_source(src), out, overwrite=True, show_progress=False)
    part = f"part-{shard_tag((0, 1))}-0000.parquet"
    assert sorted(p.name for p in out.iterdir()) == [SIDECARS, part]
