"""The bundled sample: annotator statistics, the shortcut law, determinism, and the readers'
view of what it writes (zero rejects when clean; exactly the planted rejects when spoilt)."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from luab_data.sample import AnnotatorConfig, SampleSpec, generate_sample
from luab_data.sample.backgrounds import N_FAMILIES
from luab_data.sample.classes import N_CLASSES, WNIDS
from luab_data.sample.generate import plan_split
from luab_data.sources import read_records

TAR, COCO = "imagenet_ab_v1_0.tar.gz", "coco_ab_v1_0.json"


def labels(folder: Path) -> dict[str, dict]:
    with open(folder / "labels.csv", newline="") as fh:
        return {row["key"]: row for row in csv.DictReader(fh)}


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imagenet")
    generate_sample(out, SampleSpec(size=400, heldout=60, seed=3), processes=1)
    return out


@pytest.fixture(scope="module")
def byproducts(tmp_path_factory) -> tuple[Path, SampleSpec]:
    """A byproducts-only ImageNet-AB run big enough for rates (~5,000 select clicks)."""
    out = tmp_path_factory.mktemp("byproducts")
    spec = SampleSpec(size=3000, images=False, seed=11)
    generate_sample(out, spec)
    return out, spec


def first_clicks(table) -> list[tuple[str, float, float]]:
    """(key, x, y) of the first select click of each selected annotation."""
    out = []
    for row in table.select(["key", "click_x", "click_y", "click_ann", "ann_selected"]).to_pylist():
        seen = set()
        for x, y, a in zip(row["click_x"], row["click_y"], row["click_ann"], strict=True):
            if row["ann_selected"][a] and a not in seen:
                seen.add(a)
                out.append((row["key"], x, y))
    return out


def inside_rate(table, boxes: dict[str, dict]) -> float:
    hits = []
    for key, x, y in first_clicks(table):
        b, w, h = boxes[key], float(boxes[key]["width"]), float(boxes[key]["height"])
        hits.append(
            float(b["box_x0"]) / w <= x <= float(b["box_x1"]) / w
            and float(b["box_y0"]) / h <= y <= float(b["box_y1"]) / h
        )
    return float(np.mean(hits))


# ---------------------------------------------------------------- annotators


@pytest.mark.parametrize("off", [0.05, 0.25])
def test_clicks_land_in_the_object_box_at_the_configured_rate(byproducts, tmp_path, off):
    out, spec = byproducts
    if off != spec.annotators.click_off_rate:
        out = tmp_path
        generate_sample(out, replace(spec, annotators=AnnotatorConfig(click_off_rate=off)))
    table, rejects = read_records(out / TAR)
    assert not rejects
    assert len(first_clicks(table)) > 4000
    assert inside_rate(table, labels(out / "train")) == pytest.approx(1 - off, abs=0.02)


@pytest.mark.parametrize("hz", [60.0, 30.0])
def test_traces_are_time_ordered_at_the_configured_rate(byproducts, tmp_path, hz):
    out, spec = byproducts
    if hz != spec.annotators.max_hz:
        out = tmp_path
        generate_sample(out, replace(spec, size=1000, annotators=AnnotatorConfig(max_hz=hz)))
    table, _ = read_records(out / TAR)
    t = table.column("trace_t").combine_chunks()
    ann = table.column("trace_ann").combine_chunks()
    offsets = t.offsets.to_numpy()
    same = np.ones(len(t.values), bool)  # sample j continues the trace of sample j - 1
    same[offsets[:-1]] = False
    same[1:] &= ann.values.to_numpy()[1:] == ann.values.to_numpy()[:-1]
    gaps = np.diff(t.values.to_numpy())[same[1:]]
    assert (gaps > 0).all()  # strictly increasing within each annotation's trace
    assert gaps.min() >= np.floor(1000 / hz) - 1  # throttled: never faster than the rate
    assert np.median(gaps) < 2.5 * 1000 / hz  # ... and close to it while the pointer moves
    lengths = np.bincount(np.cumsum(~same) - 1)
    assert np.median(lengths[lengths > 0]) >= 15 * hz / 60


def test_official_quirks_are_in_the_xml(imagenet):
    """Sorted child tags, True/False, None for empty lists, square display of non-square images,
    trace samples a little outside 0..1, both XML shapes, several annotations per image."""
    shapes, outside, blocks_per_doc, none_lists, non_square = set(), 0, [], 0, 0
    with tarfile.open(imagenet / TAR, "r:gz") as tar:
        for info in tar:
            if not info.isfile():
                continue
            root = ET.fromstring(tar.extractfile(info).read())
            shapes.add("box" if root.find("object") is not None else "bare")
            blocks = root.findall("metadata")
            blocks_per_doc.append(len(blocks))
            for m in blocks:
                tags = [c.tag for c in m]
                assert tags == sorted(tags)
                assert m.findtext("selected") in ("True", "False")
                assert m.findtext("imageWidth") == m.findtext("imageHeight")
                non_square += m.findtext("originalImageWidth") != m.findtext("originalImageHeight")
                none_lists += sum(c.text == "None" for c in m)
                xs = [
                    float(s.findtext("x"))
                    for s in m.findall("mouseTracking")
                    if s.find("x") is not None
                ]
                outside += sum(not 0 <= x <= 1 for x in xs)
    assert shapes == {"box", "bare"}
    assert max(blocks_per_doc) >= 3 and min(blocks_per_doc) == 1
    assert none_lists > 0 and outside > 0 and non_square > 0


# ---------------------------------------------------------------- the shortcut


@pytest.mark.parametrize("rho", [0.9, 0.6])
def test_training_rho_matches_the_request(rho, tmp_path):
    spec = SampleSpec(size=2500, rho=rho, images=False, seed=5)
    generate_sample(tmp_path, spec)
    rows = list(labels(tmp_path / "train").values())
    assert len(rows) == 2500
    matched = np.array([r["background"] == r["class"] for r in rows])
    assert matched.mean() == pytest.approx(rho, abs=0.02)
    per_class = [matched[[int(r["class"]) == c for r in rows]].mean() for c in range(N_CLASSES)]
    assert np.allclose(per_class, rho, atol=0.02)
    in_distribution = plan_split(spec, "val_id")
    assert np.mean(in_distribution.family == in_distribution.cls) == pytest.approx(rho, abs=0.02)


def test_ood_split_has_no_class_background_dependence():
    plan = plan_split(SampleSpec(size=20_000, heldout=5000, seed=2), "val_ood")
    table = np.zeros((N_CLASSES, N_FAMILIES))
    np.add.at(table, (plan.cls, plan.family), 1)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    chi2 = ((table - expected) ** 2 / expected).sum()
    assert chi2 < 124  # chi-square, 81 degrees of freedom: p > 0.001 under independence
    assert np.mean(plan.family == plan.cls) == pytest.approx(0.1, abs=0.02)


def test_held_out_splits_are_written_with_their_law(imagenet):
    ood, iid = labels(imagenet / "val_ood"), labels(imagenet / "val_id")
    assert len(ood) == len(iid) == 60
    for rows, split in ((ood, "val_ood"), (iid, "val_id")):
        for row in rows.values():
            assert row["image"].startswith(f"{split}/{row['wnid']}/")
            assert (imagenet / row["image"]).is_file()
    assert np.mean([r["matched"] == "1" for r in iid.values()]) == pytest.approx(0.9, abs=0.02)


# ---------------------------------------------------------------- determinism


def test_same_seed_same_bytes(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    spec = SampleSpec(size=120, heldout=20, seed=7, corrupt=0.1)
    generate_sample(a, spec, processes=1)
    generate_sample(b, spec, processes=1)
    assert digest(a) == digest(b)
    generate_sample(c, replace(spec, seed=8), processes=1)
    assert digest(c)[TAR] != digest(a)[TAR]
    with gzip.open(a / TAR) as fh:  # the archive itself is a plain, readable tar.gz
        names = tarfile.open(fileobj=fh, mode="r|").getnames()
    assert "train_xml/" + WNIDS[0] in names


def test_bytes_do_not_depend_on_processes(tmp_path):
    spec = SampleSpec(size=1200, images=False, seed=1)
    generate_sample(tmp_path / "one", spec, processes=1)
    generate_sample(tmp_path / "two", spec, processes=2)
    assert digest(tmp_path / "one") == digest(tmp_path / "two")


def test_coco_same_seed_same_bytes(tmp_path):
    spec = SampleSpec(kind="coco-ab", size=80, heldout=20, seed=4)
    generate_sample(tmp_path / "a", spec, processes=1)
    generate_sample(tmp_path / "b", spec, processes=1)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


# ---------------------------------------------------------------- the readers' view


def test_readers_parse_imagenet_with_zero_rejects(imagenet):
    table, rejects = read_records(imagenet / TAR, images=imagenet)
    assert rejects == []
    assert table.num_rows == 400
    assert sorted(set(table.column("wnid").to_pylist())) == sorted(WNIDS)
    assert table.column("n_trace").to_numpy().mean() > 40


def test_readers_parse_coco_with_zero_rejects(tmp_path):
    generate_sample(tmp_path, SampleSpec(kind="coco-ab", size=300, heldout=20, seed=9))
    table, rejects = read_records(tmp_path / COCO, images=tmp_path)
    assert rejects == [] and table.num_rows == 300
    truth = labels(tmp_path / "train2014")
    multi = [len(r["labels"]) for r in table.select(["labels"]).to_pylist()]
    assert np.mean(multi) > 1.5  # several classes per image
    instances = json.loads((tmp_path / "annotations" / "instances_train2014.json").read_text())
    assert len(instances["images"]) == 300 and len(instances["annotations"]) > 450
    assert {str(i["id"]) for i in instances["images"]} == set(truth)


@pytest.mark.parametrize("kind", ["imagenet-ab", "coco-ab"])
def test_exactly_the_planted_records_are_rejected(kind, tmp_path):
    spec = SampleSpec(kind=kind, size=500, heldout=20, corrupt=0.06, seed=6)
    generate_sample(tmp_path, spec)
    source = tmp_path / (TAR if kind == "imagenet-ab" else COCO)
    extra = {"classes": sorted(WNIDS)} if kind == "imagenet-ab" else {}
    table, rejects = read_records(source, images=tmp_path, **extra)
    planted = [json.loads(line) for line in (tmp_path / "planted.jsonl").read_text().splitlines()]
    assert len(planted) == 30
    assert sorted((r.where, r.reason) for r in rejects) == sorted(
        (p["where"], p["reason"]) for p in planted
    )
    assert sorted((r.key, r.reason) for r in rejects if r.reason != "malformed-json") == sorted(
        (p["key"], p["reason"]) for p in planted if p["reason"] != "malformed-json"
    )
    assert len({p["reason"] for p in planted}) >= 7
    duplicates = sum(p["reason"] == "duplicate-key" for p in planted)
    assert table.num_rows == 500 - (len(planted) - duplicates)


# ---------------------------------------------------------------- CLI and contact sheet


def test_cli_writes_a_byproducts_only_sample(tmp_path):
    from luab_data.cli import main

    result = CliRunner().invoke(
        main,
        [
            "sample",
            "--out",
            str(tmp_path),
            "--size",
            "200",
            "--no-images",
            "--quiet",
            "--seed",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "200 imagenet-ab records" in result.output
    summary = json.loads((tmp_path / "sample.json").read_text())
    assert summary["spec"]["size"] == 200 and summary["counts"]["images"] == 0
    assert not (tmp_path / "val_id").exists()


def test_contact_sheet(imagenet, tmp_path):
    import cv2

    from luab_data.sample.contact_sheet import contact_sheet

    png = contact_sheet(imagenet, tmp_path / "sheet.png", n=12, cols=4, tile=100)
    img = cv2.imread(str(png))
    assert img.shape == (300, 400, 3)
    assert img.std() > 20


def test_refuses_to_overwrite_what_it_did_not_write(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(FileExistsError):
        generate_sample(tmp_path, SampleSpec(size=20, images=False))
    assert (tmp_path / "train").is_dir()
