""".beton packing: every field reads back as written, manifest and rejects, CLI, verify.

Samples are read with BetonFile (the file's own tables, no FFCV pipeline), so these tests need
no loader timeout; the FFCV loader is exercised in test_reference_loader.py.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import cv2
import numpy as np
import pyarrow as pa
import pytest
from beton_fixtures import OPTIONS, built, sample_dir, source_path
from click.testing import CliRunner

from luab_data.beton.fields import JPEG_MODE, BetonOptions
from luab_data.beton.file import BetonFile
from luab_data.beton.manifest import read_manifest
from luab_data.beton.paths import manifest_path, rejects_path
from luab_data.beton.samples import proportion_jpeg
from luab_data.cli import main
from luab_data.loaders.contract import field_names
from luab_data.raster import fixed_arrays, rasterise_batch
from luab_data.sources import open_source, read_records
from luab_data.sources.interchange import write_interchange
from luab_data.verify import verify_beton
from luab_data.writers.beton import build_beton

KINDS = ("imagenet-ab", "coco-ab")


@pytest.fixture(scope="session")
def root(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "luab-beton"
    path.mkdir(exist_ok=True)
    return path


def run(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _stored_rgb(path, max_resolution: int) -> np.ndarray:
    """What FFCV stores for a JPEG: decoded, long side scaled down to max_resolution."""
    rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    size = np.array(rgb.shape[1::-1])
    ratio = max_resolution / size.max()
    if ratio < 1:
        rgb = cv2.resize(rgb, tuple((ratio * size).astype(int)), interpolation=cv2.INTER_AREA)
    return rgb


def _jpeg_round_trip(rgb: np.ndarray, quality: int) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize("kind", KINDS)
def test_every_field_reads_back(root, kind):
    beton_path = built(root, kind)
    table, _ = read_records(source_path(root, kind))
    beton, manifest = BetonFile(beton_path), read_manifest(beton_path)
    n = table.num_rows
    assert len(beton) == n and manifest["keys"] == table.column("key").to_pylist()
    assert np.array_equal(beton.arrays("index"), np.arange(n))
    maps, _ = rasterise_batch(table, OPTIONS.raster)  # the whole table at once: batching-free
    assert np.array_equal(beton.arrays("map"), maps)  # bit-exact
    n_cls = 80 if kind == "coco-ab" else 0
    fixed = fixed_arrays(table, replace(OPTIONS.raster, n_classes=n_cls), OPTIONS.trace_points)
    assert np.array_equal(beton.arrays("point"), fixed["class_points" if n_cls else "point"])
    assert np.array_equal(beton.arrays("trace"), fixed["trace"])
    sizes = np.stack([table.column(c).to_numpy() for c in ("width", "height")], 1)
    assert np.array_equal(beton.arrays("size"), sizes)
    if n_cls:
        hot = beton.arrays("labels")
        assert hot.shape == (n, 80) and hot.dtype == np.uint8
        assert [np.flatnonzero(h).tolist() for h in hot] == [
            sorted(set(v)) for v in table.column("labels").to_pylist()
        ]
    else:
        assert np.array_equal(beton.arrays("label"), table.column("label").to_numpy())
    _check_images(beton, table, sample_dir(root, kind))


def _check_images(beton: BetonFile, table: pa.Table, folder) -> None:
    modes = beton.metadata("image")["mode"]
    keys = table.column("key").to_pylist()
    assert np.array_equal(modes == JPEG_MODE, [proportion_jpeg(k, 0.5) for k in keys])
    assert 0.25 < (modes == JPEG_MODE).mean() < 0.75
    for i, rel in enumerate(table.column("image").to_pylist()):
        want, got = _stored_rgb(folder / rel, OPTIONS.max_resolution), beton.image(i)
        assert got.shape == want.shape
        if modes[i] == JPEG_MODE:  # re-encoded at quality 90 by OpenCV, as FFCV does
            want = _jpeg_round_trip(want, OPTIONS.jpeg_quality)
        assert np.array_equal(got, want)
    assert beton.image_size().max() <= OPTIONS.max_resolution


@pytest.mark.parametrize("kind", KINDS)
def test_manifest_describes_the_build(root, kind):
    path = built(root, kind)
    m = json.loads(manifest_path(path).read_text())
    assert m["format"] == "luab-beton" and m["file"] == path.name
    assert m["bytes"] == path.stat().st_size
    assert list(m["fields"]) == BetonFile(path).names
    assert m["fields"]["map"] == {
        "type": "NDArrayField",
        "dtype": "uint8",
        "shape": [2, 16, 24],
        "channels": ["click", "trace"],
    }
    assert BetonOptions.from_dict({k: v for k, v in m["build"].items() if k != "shard"}) == OPTIONS
    assert m["source"]["size"] == source_path(root, kind).stat().st_size
    assert len(m["source"]["sha256_first_mib"]) == 64
    counts = m["counts"]
    assert counts["samples"] == counts["jpeg"] + counts["raw"] == len(m["keys"])
    assert 0 < counts["with_point"] <= counts["samples"]
    assert m["summary"]["records"] == counts["samples"]
    assert rejects_path(path).name == m["rejects_file"] and rejects_path(path).exists()
    assert not list(path.parent.glob(f"{path.name}.tmp*"))
    assert field_names(path).label == ("labels" if kind == "coco-ab" else "label")


@pytest.mark.parametrize("kind", KINDS)
def test_checksums_and_counts_do_not_depend_on_the_piece_size(root, kind, monkeypatch):
    """At 1.28 M samples they are read a piece at a time (bounded memory); pieces of 7 samples
    must give what one piece gives: the counts by hand, the CRCs of every sample."""
    from luab_data.beton import integrity
    from luab_data.beton import manifest as manifest_module

    path = built(root, kind)
    whole, stored = integrity.file_checksums(path), json.loads(manifest_path(path).read_text())
    beton = BetonFile(path)
    traces, points = beton.arrays("trace"), beton.arrays("point").reshape(len(beton), -1, 2)
    monkeypatch.setattr(integrity, "CRC_ROWS", 7)
    monkeypatch.setattr(manifest_module, "COUNT_ROWS", 7)
    assert integrity.file_checksums(path) == whole == stored["checksums"]
    counts = manifest_module._byproduct_counts(beton, OPTIONS)
    assert (
        counts["with_trace"] == int((traces[:, 0, 0] >= 0).sum()) == stored["counts"]["with_trace"]
    )
    assert counts["with_point"] == int((points[..., 0] >= 0).any(axis=1).sum())
    assert counts["with_point"] == stored["counts"]["with_point"]
    assert len(beton) > 2 * 7  # several pieces, the last one short


def test_records_source_with_missing_and_broken_images(root, tmp_path):
    """Records + image folder: a missing JPEG is rejected while reading, an undecodable one
    while packing (the file is then rewritten without it); both land in the rejects file."""
    folder = tmp_path / "images"
    shutil.copytree(sample_dir(root, "imagenet-ab") / "train", folder / "train")
    table, _ = read_records(source_path(root, "imagenet-ab"))
    images = table.column("image").to_pylist()
    (folder / images[3]).unlink()
    (folder / images[7]).write_bytes(b"not a jpeg")
    records = tmp_path / "records.jsonl"
    source = open_source(source_path(root, "imagenet-ab"))
    with open(records, "w") as f:
        write_interchange(iter([table]), source.metadata(), f)
    out = tmp_path / "r.beton"
    summary = build_beton(
        open_source(records), out, images=folder, options=OPTIONS, workers=2, show_progress=False
    )
    keys = table.column("key").to_pylist()
    rejects = [json.loads(line) for line in rejects_path(out).read_text().splitlines()]
    assert {(r["key"], r["reason"]) for r in rejects} == {
        (keys[3], "missing-image"),
        (keys[7], "bad-image"),
    }
    assert dict(summary.rejects) == {"missing-image": 1, "bad-image": 1}
    kept = [k for i, k in enumerate(keys) if i not in (3, 7)]
    assert read_manifest(out)["keys"] == kept
    assert np.array_equal(BetonFile(out).arrays("index"), np.arange(len(kept)))
    assert verify_beton(out, records, images=folder).ok


def test_cli_build_verify_and_tamper(root, tmp_path):
    folder = sample_dir(root, "coco-ab")
    src, out = source_path(root, "coco-ab"), tmp_path / "c.beton"
    args = (
        "build",
        "--src",
        src,
        "--images",
        folder,
        "--out",
        out,
        "--recipe",
        "sample",
        "--map-size",
        "8x12",
        "--sigma",
        "6px",
        "--max-resolution",
        "0",
        "--quiet",
    )
    result = run(*args)
    assert result.exit_code == 0, result.output
    m = read_manifest(out)
    assert m["build"]["raster"]["size"] == [8, 12] and m["build"]["raster"]["sigma"] == 6.0
    assert m["build"]["raster"]["sigma_units"] == "px" and m["build"]["max_resolution"] is None
    assert run(*args).exit_code != 0  # complete: refused without --overwrite
    check = run("verify", out, "--src", src, "--images", folder, "--decode-images", "--quiet")
    assert check.exit_code == 0, check.output
    beton = BetonFile(out)
    ptr = int(beton.metadata("map")[5]) + 40
    data = bytearray(out.read_bytes())
    data[ptr] ^= 0xFF
    out.write_bytes(bytes(data))
    check = run("verify", out, "--src", src, "--quiet")
    assert check.exit_code == 1
    assert f"{m['keys'][5]} map:" in check.output


def test_shards_partition_the_records(root, tmp_path):
    src = source_path(root, "imagenet-ab")
    out = tmp_path / "s.beton"
    for i in range(2):
        result = run(
            "build",
            "--src",
            src,
            "--images",
            sample_dir(root, "imagenet-ab"),
            "--out",
            out,
            "--shard",
            f"{i}/2",
            "--map-size",
            "8",
            "--quiet",
        )
        assert result.exit_code == 0, result.output
    parts = sorted(tmp_path.glob("s-*.beton"))
    assert [p.name for p in parts] == ["s-00000-of-00002.beton", "s-00001-of-00002.beton"]
    keys = [read_manifest(p)["keys"] for p in parts]
    table, _ = read_records(src)
    assert sorted(keys[0] + keys[1]) == sorted(table.column("key").to_pylist())
    assert not set(keys[0]) & set(keys[1])
    assert verify_beton(parts[1], src).ok


def test_format_from_suffix_keeps_parquet(root, tmp_path):
    src = source_path(root, "imagenet-ab")
    assert run("build", "--src", src, "--out", tmp_path / "pq", "--quiet").exit_code == 0
    assert list((tmp_path / "pq").glob("*.parquet"))
    result = run("build", "--src", src, "--out", tmp_path / "x", "--format", "beton", "--quiet")
    assert result.exit_code != 0 and ".beton" in result.output
