"""The official formats parse into the canonical records exactly as worked out by hand."""

from __future__ import annotations

import tarfile

import numpy as np
import pyarrow as pa
import pytest
from official_fixtures import (
    IMAGENET_WNIDS,
    T0,
    coco_records,
    imagenet_members,
    write_json,
    write_tar,
)

from luab_data.records import RECORD_SCHEMA, read_metadata
from luab_data.sources import detect_kind, open_source, read_records
from luab_data.sources.numparse import parse_float, parse_int


@pytest.fixture
def imagenet_tar(tmp_path):
    return write_tar(tmp_path / "imagenet_ab_v1_0.tar.gz", imagenet_members())


@pytest.fixture
def coco_json(tmp_path):
    return write_json(tmp_path / "coco_ab_v1_0.json", coco_records())


def rows_by_key(table: pa.Table) -> dict[str, dict]:
    return {r["key"]: r for r in table.to_pylist()}


def test_imagenet_records_match_hand_worked_values(imagenet_tar):
    table, rejects = read_records(imagenet_tar)
    assert rejects == []
    assert table.schema.equals(RECORD_SCHEMA)
    rows = rows_by_key(table)
    assert sorted(rows) == ["n01440764_1", "n01440764_2", "n01530575_3", "n02000000_7"]

    r = rows["n01440764_1"]  # ILSVRC shape, two positive annotations
    assert (r["label"], r["labels"], r["wnid"]) == (0, [0], "n01440764")
    assert r["image"] == "train/n01440764/n01440764_1.JPEG"
    assert (r["width"], r["height"]) == (500, 375)
    assert r["point_x"] == pytest.approx(0.4) and r["point_y"] == pytest.approx(0.6)
    assert (r["n_clicks"], r["n_trace"]) == (3, 3)
    assert r["click_x"] == pytest.approx([0.2, 0.3, 0.6])
    assert r["click_y"] == pytest.approx([0.4, 0.5, 0.8])
    assert r["click_t"] == [T0 + 1000, T0 + 1500, T0 + 2000]
    assert r["click_ann"] == [0, 0, 1] and r["click_class"] == [0, 0, 0]
    assert r["trace_x"] == pytest.approx([0.5, 1.02, 0.25])  # slightly outside is kept
    assert r["trace_y"] == pytest.approx([0.5, 0.45, 0.125])
    assert r["trace_t"] == [T0 + 10, T0 + 27, T0 + 44]
    assert r["trace_ann"] == [0, 0, 0]
    assert r["ann_worker"] == ["AAAAAAAAAA", "BBBBBBBBBB"]
    assert r["ann_task"] == ["3HXCEECSQ4HXT9A9IRMIGN2RP9YZYX"] * 2
    assert r["ann_selected"] == [True, True]
    assert r["ann_duration_ms"] == [640, 0]
    assert r["ann_submit_s"] == [1600000100] * 2
    assert r["ann_page"] == [3, 3] and r["ann_hover_count"] == [1, 1]
    # box (50, 75, 250, 300) px of a 500 x 375 image
    box = [r["box_x0"][0], r["box_y0"][0], r["box_x1"][0], r["box_y1"][0]]
    assert box == pytest.approx([0.1, 0.2, 0.5, 0.8])
    assert r["box_class"] == [0]

    neg = rows["n01440764_2"]  # negative: its click is not a point target
    assert neg["point_x"] is None and neg["point_y"] is None
    assert (neg["n_clicks"], neg["n_trace"], neg["width"], neg["height"]) == (1, 2, 320, 480)
    assert neg["ann_selected"] == [False] and neg["box_x0"] == []

    mixed = rows["n01530575_3"]  # only the positive annotation's first click counts
    assert mixed["label"] == 1 and mixed["click_ann"] == [0, 1]
    assert (mixed["point_x"], mixed["point_y"]) == (0.25, 0.75)

    never = rows["n02000000_7"]  # positive, literal None click list
    assert never["label"] == 2 and never["point_x"] is None
    assert (never["n_clicks"], never["n_trace"]) == (0, 0)


def test_imagenet_class_list_is_recorded_and_overridable(imagenet_tar):
    source = open_source(imagenet_tar)
    assert source.metadata()["classes"] == IMAGENET_WNIDS
    classes = ["n00000001", *IMAGENET_WNIDS]
    table, _ = read_records(imagenet_tar, classes=classes)
    assert rows_by_key(table)["n02000000_7"]["label"] == 3


def test_extracted_folder_reads_like_the_archive(imagenet_tar, tmp_path):
    with tarfile.open(imagenet_tar) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    folder = tmp_path / "x"
    assert detect_kind(folder) == "imagenet-ab"
    from_tar, _ = read_records(imagenet_tar)
    from_dir, _ = read_records(folder)
    assert from_dir.sort_by("key").equals(from_tar.sort_by("key"))


def test_chunking_and_threads_do_not_change_records(tmp_path, monkeypatch):
    """Many documents over several chunks and threads come out in source order, intact."""
    from luab_data.sources import tar_stream

    members = [m for m in imagenet_members() if m[0].endswith(".xml")]
    many = [
        (n.replace(".xml", f"{i}.xml"), t.replace("_", "_", 1))
        for i in range(60)
        for n, t in members
    ]
    tar = write_tar(tmp_path / "many.tar", many)
    monkeypatch.setattr(tar_stream, "TARGET_MEMBERS", 7)
    table, rejects = read_records(tar, workers=2)
    assert rejects == [] and table.num_rows == len(many)
    expected_keys = [n.rsplit("/", 1)[1][:-4] for n, _ in many]
    assert table.column("key").to_pylist() == expected_keys
    assert np.array_equal(table.column("n_trace").to_numpy(), np.tile([3, 2, 0, 0], 60))


def test_coco_replay_and_last_add(coco_json):
    table, rejects = read_records(coco_json)
    assert [(r.key, r.reason) for r in rejects] == [("30", "zero-size")]
    rows = rows_by_key(table)
    r = rows["9"]
    assert r["label"] == -1 and r["labels"] == [0, 15]  # person, cat (dog was removed)
    assert r["image"] == "train2014/COCO_train2014_000000000009.jpg"
    assert (r["width"], r["height"], r["point_x"]) == (640, 480, None)
    assert r["click_class"] == [0, 15]
    assert r["click_x"] == pytest.approx([0.3, 0.7]) and r["click_y"] == pytest.approx([0.4, 0.8])
    assert r["click_t"] == [300, 500]
    assert r["trace_x"] == pytest.approx([0.1, 0.2]) and r["trace_t"] == [10, 20]
    assert (r["n_clicks"], r["n_trace"]) == (2, 2)
    assert r["ann_worker"] == ["W0RKER0001"] and r["ann_duration_ms"] == [5200]
    assert r["ann_page"] == [4]
    empty = rows["25"]
    assert (empty["labels"], empty["n_clicks"], empty["n_trace"]) == ([], 0, 0)

    official, _ = read_records(coco_json, coco_policy="last-add")
    r = rows_by_key(official)["9"]
    assert r["labels"] == [0, 15, 16] and r["click_class"] == [0, 16, 15]
    assert r["click_x"] == pytest.approx([0.1, 0.5, 0.7]) and r["click_t"] == [100, 200, 500]


def test_coco_metadata_maps_names_through_ids(coco_json):
    meta = open_source(coco_json).metadata()
    assert len(meta["classes"]) == 80
    assert meta["classes"][15] == "cat" and meta["classes"][79] == "toothbrush"


def test_detection_and_forcing(imagenet_tar, coco_json, tmp_path):
    assert detect_kind(imagenet_tar) == "imagenet-ab"
    assert detect_kind(coco_json) == "coco-ab"
    renamed = tmp_path / "whatever.bin"
    renamed.write_bytes(coco_json.read_bytes())
    assert detect_kind(renamed) == "coco-ab"  # content, not the name
    table, _ = read_records(renamed, kind="coco-ab")
    assert table.num_rows == 2


def test_interchange_round_trip(imagenet_tar, coco_json, tmp_path):
    from luab_data.sources.interchange import write_interchange

    for src in (imagenet_tar, coco_json):
        table, _ = read_records(src)
        meta = open_source(src).metadata()
        for suffix in ("jsonl", "json"):
            out = tmp_path / f"records.{suffix}"
            with open(out, "w") as f:
                write_interchange(table.to_batches(), meta, f, as_list=suffix == "json")
            assert detect_kind(out) == "records"
            back, rejects = read_records(out)
            assert rejects == []
            assert back.equals(table), suffix
            assert open_source(out).metadata() == meta


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0.5", 0.5),
        ("-1.25", -1.25),
        ("1e-3", 1e-3),
        ("  0.333333 ", 0.333333),
        ("7", 7.0),
        ("1.0000000000000000000001", 1.0),
        ("2.5E2", 250.0),
    ],
)
def test_parse_float_matches_python(text, value):
    buf = np.frombuffer(text.encode(), np.uint8)
    got, ok = parse_float(buf, 0, len(buf))
    assert ok and got == pytest.approx(value, rel=1e-15)


@pytest.mark.parametrize("text", ["", "abc", "1.2.3", "--1", "."])
def test_parse_float_refuses_garbage(text):
    buf = np.frombuffer(text.encode() or b" ", np.uint8)
    assert not parse_float(buf, 0, len(text))[1]


def test_parse_int():
    buf = np.frombuffer(b"1600000000123", np.uint8)
    assert parse_int(buf, 0, len(buf)) == (1600000000123, True)
    assert not parse_int(np.frombuffer(b"12x", np.uint8), 0, 3)[1]


def test_schema_metadata_survives_parquet(imagenet_tar, tmp_path):
    from luab_data.build import build_parquet

    build_parquet(open_source(imagenet_tar), tmp_path / "out", show_progress=False)
    table, _ = read_records(tmp_path / "out")
    assert read_metadata(table.schema)["classes"] == IMAGENET_WNIDS
    direct, _ = read_records(imagenet_tar)
    assert table.select(direct.column_names).equals(
        direct.replace_schema_metadata(None).cast(table.schema)
    )
