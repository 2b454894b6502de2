"""Bad input: each kind lands in the rejects with its reason; every good record is kept."""

from __future__ import annotations

import json

import pytest
from official_fixtures import (
    T0,
    bare_xml,
    coco_action,
    coco_record,
    coco_records,
    imagenet_members,
    metadata_xml,
    write_json,
    write_tar,
)

from luab_data.sources import SourceError, read_records

GOOD_IMAGENET = {"n01440764_1", "n01440764_2", "n01530575_3", "n02000000_7"}


def meta(**kw) -> str:
    return metadata_xml(image_id="x/y", selected=True, **kw)


def bad_imagenet_members() -> list[tuple[str, str]]:
    """One bad member per reason; names say which."""

    def doc(stem: str, block: str, wnid: str = "n01440764") -> tuple[str, str]:
        return f"train_xml/{wnid}/{stem}.xml", bare_xml(wnid, stem, [block])

    malformed = (
        "train_xml/n01440764/bad_malformed.xml",
        "<annotation><metadata><selected>True</selected></annotation>",
    )
    truncated_doc = ("train_xml/n01440764/bad_cut.xml", bare_xml("n01440764", "c", [meta()])[:-40])
    return [
        malformed,
        truncated_doc,
        doc("bad_unknown", meta(), wnid="n09999999"),
        doc("bad_nan", meta(trace=[(T0, float("nan"), 0.5)])),
        doc("bad_far", meta(clicks=[(T0, 0.5, 40.0)])),
        doc("bad_order", meta(trace=[(T0 + 50, 0.1, 0.1), (T0 + 20, 0.2, 0.2)])),
        doc("bad_epoch", meta(trace=[(1234, 0.1, 0.1)])),
        doc("bad_zero", meta(width=0, height=0)),
        doc("bad_number", meta().replace("<estimateTime>800", "<estimateTime>eight")),
        doc("bad_bool", meta().replace("<selected>True", "<selected>Yes")),
        doc("bad_nometa", ""),
        # duplicate of a good record: the second occurrence is rejected
        ("train_xml/n01440764/n01440764_1.xml", bare_xml("n01440764", "n01440764_1", [meta()])),
    ]


EXPECTED_IMAGENET = {
    "bad_malformed": "malformed-xml",
    "bad_cut": "malformed-xml",
    "bad_unknown": "unknown-class",
    "bad_nan": "bad-coordinates",
    "bad_far": "bad-coordinates",
    "bad_order": "bad-times",
    "bad_epoch": "bad-times",
    "bad_zero": "zero-size",
    "bad_number": "bad-field",
    "bad_bool": "bad-field",
    "bad_nometa": "bad-field",
    "n01440764_1": "duplicate-key",
}


def test_imagenet_rejects_each_reason_and_keeps_the_rest(tmp_path):
    members = imagenet_members()
    members = members[:2] + bad_imagenet_members() + members[2:]
    tar = write_tar(tmp_path / "bad.tar.gz", members)
    classes = ["n01440764", "n01530575", "n02000000"]  # n09999999 is unknown
    table, rejects = read_records(tar, classes=classes)
    assert set(table.column("key").to_pylist()) == GOOD_IMAGENET
    assert {r.key: r.reason for r in rejects} == EXPECTED_IMAGENET
    assert len(rejects) == len(EXPECTED_IMAGENET)
    by_key = {r.key: r for r in rejects}
    assert "nan" in by_key["bad_nan"].detail.lower()  # the detail quotes the offending text
    assert by_key["bad_order"].where.endswith("bad_order.xml")
    # the duplicate is rejected, the first occurrence is the one kept
    kept = {r["key"]: r for r in table.to_pylist()}
    assert kept["n01440764_1"]["n_clicks"] == 3


def test_imagenet_missing_image(tmp_path):
    tar = write_tar(tmp_path / "a.tar.gz", imagenet_members())
    images = tmp_path / "images"
    for wnid, stem in [
        ("n01440764", "n01440764_1"),
        ("n01440764", "n01440764_2"),
        ("n02000000", "n02000000_7"),
    ]:
        (images / "train" / wnid).mkdir(parents=True, exist_ok=True)
        (images / "train" / wnid / f"{stem}.JPEG").write_bytes(b"\xff\xd8" + stem.encode())
    table, rejects = read_records(tar, images=images, with_jpeg=True)
    assert [(r.key, r.reason) for r in rejects] == [("n01530575_3", "missing-image")]
    jpegs = dict(
        zip(table.column("key").to_pylist(), table.column("jpeg").to_pylist(), strict=True)
    )
    assert jpegs["n01440764_2"] == b"\xff\xd8n01440764_2"


def test_truncated_archive_says_where(tmp_path):
    many = [
        (
            f"train_xml/n01440764/n01440764_{i}.xml",
            bare_xml("n01440764", str(i), [meta(trace=[(T0 + j, 0.5, 0.5) for j in range(50)])]),
        )
        for i in range(200)
    ]
    tar = write_tar(tmp_path / "full.tar.gz", many)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(SourceError, match=r"truncated or corrupt archive after \d+ members"):
        read_records(cut, classes=["n01440764"])
    with pytest.raises(SourceError, match="truncated"):
        read_records(cut)  # the class-listing pass meets it first


def bad_coco_text() -> str:
    """A JSON list with good records, a syntactically broken one, and one per reason."""
    good = coco_records()[:2]
    bad = [
        coco_record(101, [coco_action("add", "unicorn", 10, to=(0.5, 0.5))]),
        coco_record(102, trace=[(10, float("nan"), 0.5)]),
        coco_record(103, [coco_action("add", "dog", 10, to=(0.5, -9.0))]),
        coco_record(104, trace=[(30, 0.1, 0.1), (20, 0.2, 0.2)]),
        coco_record(105, [coco_action("add", "dog", 99_000_000_000, to=(0.5, 0.5))]),
        coco_record(106, width=0, height=0),
        coco_record(107, originalImageWidth="wide"),
        coco_record(9),  # duplicate of a good one
    ]
    parts = [json.dumps(r) for r in good[:1]]
    parts.append('{"image_id": 100, "worker_id": "W", "mouseTracking": [{"timeAt": 1, "x": }]}')
    parts += [json.dumps(r) for r in good[1:] + bad]
    return "[\n" + ",\n".join(parts) + "\n]\n"


def test_coco_rejects_each_reason_and_keeps_the_rest(tmp_path):
    path = tmp_path / "coco.json"
    path.write_text(bad_coco_text())
    table, rejects = read_records(path)
    assert sorted(table.column("key").to_pylist()) == ["25", "9"]
    got = {r.key: r.reason for r in rejects}
    assert got == {
        "100": "malformed-json",  # its image_id was read before the syntax error
        "101": "unknown-class",
        "102": "bad-coordinates",
        "103": "bad-coordinates",
        "104": "bad-times",
        "105": "bad-times",
        "106": "zero-size",
        "107": "bad-field",
        "9": "duplicate-key",
    }


def test_coco_missing_image(tmp_path):
    path = write_json(tmp_path / "coco.json", coco_records()[:2])
    (tmp_path / "img" / "train2014").mkdir(parents=True)
    (tmp_path / "img" / "train2014" / "COCO_train2014_000000000009.jpg").write_bytes(b"x")
    table, rejects = read_records(path, images=tmp_path / "img")
    assert table.column("key").to_pylist() == ["9"]
    assert [(r.key, r.reason) for r in rejects] == [("25", "missing-image")]


def test_truncated_json_says_where(tmp_path):
    text = json.dumps(
        [coco_record(i, trace=[(j, 0.5, 0.5) for j in range(30)]) for i in range(1, 400)]
    )
    path = tmp_path / "cut.json"
    path.write_text(text[: len(text) // 2])
    with pytest.raises(SourceError, match=r"truncated.*element \d+|ends inside element \d+"):
        read_records(path)


def test_interchange_rows_are_validated(tmp_path):
    from luab_data.sources.interchange import header

    table, _ = read_records(write_json(tmp_path / "c.json", coco_records()[:2]))
    rows = table.to_pylist()
    rows[0]["trace_x"][0] = 7.0  # absurd
    rows[1]["ann_page"] = []  # lengths disagree with ann_worker
    good = dict(table.to_pylist()[1], key="26")
    dup = dict(good, key="9")  # fine in itself, but key 9 came first (and was rejected)
    out = tmp_path / "r.jsonl"
    lines = [header({"classes": []}), *rows, good, dup]
    out.write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n")
    kept, rejects = read_records(out)
    assert kept.column("key").to_pylist() == ["26"]
    assert sorted((r.key, r.reason) for r in rejects) == sorted(
        [
            ("9", "bad-coordinates"),
            ("25", "bad-field"),
            ("9", "duplicate-key"),
            ("?r.jsonl[5]", "malformed-json"),
        ]
    )


@pytest.mark.parametrize("kind", ["imagenet-ab", "coco-ab"])
def test_planted_bad_fields_cover_out_of_range_values(kind, tmp_path):
    """The sample's planted bad fields include values outside the record columns' integer
    types and negative ones; each is rejected alone, its detail naming the field and value."""
    from luab_data.sample import SampleSpec, generate_sample
    from luab_data.sample import corrupt as plant
    from luab_data.sample.classes import WNIDS

    spec = SampleSpec(kind=kind, size=300, heldout=50, corrupt=0.9, seed=3, images=False)
    generate_sample(tmp_path, spec)
    if kind == "imagenet-ab":
        table, rejects = read_records(tmp_path / "imagenet_ab_v1_0.tar.gz", classes=sorted(WNIDS))
    else:
        table, rejects = read_records(tmp_path / "coco_ab_v1_0.json")
    planted = [json.loads(line) for line in (tmp_path / "planted.jsonl").read_text().splitlines()]
    bad_field = {p["where"] for p in planted if p["reason"] == "bad-field"}
    details = [r.detail for r in rejects if r.where in bad_field]
    assert len(details) == len(bad_field)
    variants = plant.XML_BAD_FIELDS if kind == "imagenet-ab" else plant.COCO_BAD_FIELDS
    for name, value in variants:
        shown = '"' if value == "text" else str(value)  # "text": the number as a JSON string
        assert any(name in d and shown in d for d in details), (name, value, details)
    assert table.num_rows > 0


@pytest.mark.parametrize("read_size", [64, 1 << 20])
def test_coco_reader_resumes_after_each_broken_element(tmp_path, monkeypatch, read_size):
    """ijson stops at a syntax error (or a NaN, which yajl refuses): the element is found by
    its boundaries, decoded alone or reported, and reading resumes; also when the boundary
    search and the decoding need several reads (a small read size)."""
    from luab_data.sources import ijson_list

    monkeypatch.setattr(ijson_list, "READ_SIZE", read_size)
    parts = [
        json.dumps(coco_record(i, trace=[(j, 0.5, 0.5) for j in range(20)])) for i in range(1, 31)
    ]
    parts[2] = parts[2].replace('"x": 0.5', '"x": ', 1)  # image_id 3: broken
    parts[16] = parts[16].replace('"page_id": 4', '"page_id": 4 4')  # image_id 17: broken
    parts[9] = json.dumps(coco_record(10, trace=[(1, float("nan"), 0.5)]))  # NaN: decoded
    parts[29] = parts[29][:-1]  # the last element is cut: then the list closes
    path = tmp_path / "c.json"
    path.write_text("[" + ",\n".join(parts) + " ,\n]")
    table, rejects = read_records(path)
    assert sorted(map(int, table.column("key").to_pylist())) == [
        i for i in range(1, 30) if i not in (3, 10, 17)
    ]
    assert [(r.key, r.reason, r.where) for r in rejects] == [
        ("3", "malformed-json", "c.json[2]"),
        ("10", "bad-coordinates", "c.json[9]"),
        ("17", "malformed-json", "c.json[16]"),
        ("30", "malformed-json", "c.json[29]"),
    ]
    assert "invalid JSON" in rejects[0].detail and "byte" in rejects[0].detail
