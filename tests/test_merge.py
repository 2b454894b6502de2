"""`luab-data merge`: the shards of one build join into the file a single build writes (sample
for sample by key, byte for byte), verify passes on it, and every mismatch is refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from beton_fixtures import OPTIONS, sample_dir, source_path, stored_samples
from click.testing import CliRunner

from luab_data.beton.file import BetonFile
from luab_data.beton.merge import MergeError
from luab_data.beton.paths import ShardsNotMerged, beton_path, manifest_path, refuse_shards
from luab_data.cli import main
from luab_data.sources import open_source
from luab_data.writers.beton import build_beton
from luab_data.writers.merge import merge_betons

KIND = "imagenet-ab"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("merge")


def _build(root, out, shard=(0, 1), options=OPTIONS):
    source = open_source(source_path(root, KIND), images=sample_dir(root, KIND))
    build_beton(source, out, shard, options=options, workers=2, show_progress=False)
    return beton_path(out, shard)


@pytest.fixture(scope="module")
def single(root):
    return _build(root, root / "single" / "all.beton")


@pytest.fixture(scope="module")
def shards(root):
    return [_build(root, root / "parts" / "all.beton", (i, 3)) for i in range(3)]


@pytest.mark.timeout(600)
def test_merged_shards_equal_a_single_build_sample_for_sample(root, single, shards, tmp_path):
    out = tmp_path / "merged.beton"
    result = CliRunner().invoke(main, ["merge", str(out), str(root / "parts")])
    assert result.exit_code == 0, result.output
    merged, whole = stored_samples(out), stored_samples(single)
    assert sorted(merged) == sorted(whole) and len(merged) > 30
    for key, fields in whole.items():
        assert merged[key] == fields, key
    assert BetonFile(out).arrays("index").tolist() == list(range(len(merged)))
    manifest = json.loads(manifest_path(out).read_text())
    assert [m["shard"] for m in manifest["merged_from"]] == [[0, 3], [1, 3], [2, 3]]
    sums = [json.loads(manifest_path(s).read_text())["checksums"]["sha256"] for s in shards]
    assert [m["sha256"] for m in manifest["merged_from"]] == sums
    assert manifest["build"]["shard"] == [0, 1] and manifest["counts"]["samples"] == len(merged)
    check = CliRunner().invoke(
        main,
        [
            "verify",
            str(out),
            "--src",
            str(source_path(root, KIND)),
            "--images",
            str(sample_dir(root, KIND)),
        ],
    )
    assert check.exit_code == 0, check.output


def _refusal(out, *inputs) -> str:
    with pytest.raises(MergeError) as err:
        merge_betons(out, inputs)
    assert not out.exists() and not manifest_path(out).exists()
    return str(err.value)


@pytest.mark.timeout(600)
def test_refusals_name_the_shard_and_the_difference(root, shards, tmp_path):
    out = tmp_path / "m.beton"
    assert "missing shard of the 3-shard build: 2/3" in _refusal(out, shards[0], shards[1])
    again = tmp_path / "again-00000-of-00003.beton"
    shutil.copy(shards[0], again)
    shutil.copy(manifest_path(shards[0]), manifest_path(again))
    assert "shard 0/3 given twice" in _refusal(out, *shards, again)
    other = _build(
        root,
        tmp_path / "other" / "all.beton",
        (2, 3),
        options=OPTIONS.__class__(**{**OPTIONS.__dict__, "trace_points": 4}),
    )
    message = _refusal(out, shards[0], shards[1], other)
    assert str(other) in message and "trace_points: 8 vs 4" in message
    lone = tmp_path / "lone"
    lone.mkdir()
    for s in shards:
        shutil.copy(s, lone / s.name)
        shutil.copy(manifest_path(s), lone / manifest_path(s).name)
    manifest_path(lone / shards[1].name).unlink()
    assert "unfinished build" in _refusal(out, lone)


@pytest.mark.timeout(600)
def test_overlapping_keys_are_refused(root, shards, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for s in shards:
        shutil.copy(s, copy / s.name)
        shutil.copy(manifest_path(s), copy / manifest_path(s).name)
    m0, m1 = (manifest_path(copy / s.name) for s in shards[:2])
    first, second = json.loads(m0.read_text()), json.loads(m1.read_text())
    second["keys"][0] = first["keys"][0]
    m1.write_text(json.dumps(second))
    message = _refusal(tmp_path / "m.beton", copy)
    assert repr(first["keys"][0]) in message and "both" in message


def test_loaders_refuse_shards_with_the_merge_command(root, shards):
    with pytest.raises(ShardsNotMerged, match="luab-data merge"):
        refuse_shards(shards[0].parent)
    with pytest.raises(ShardsNotMerged, match=r"shard 1/3 .*`luab-data merge"):
        refuse_shards(shards[1])
    refuse_shards(root / "single" / "all.beton")  # a whole dataset passes
    from luab_data.loaders import make_loader

    for kind in ("torch", "ffcv", "dali"):
        with pytest.raises(ShardsNotMerged, match="luab-data merge"):
            make_loader(kind, shards[0].parent, batch_size=4)


def test_shards_store_each_sample_as_a_single_build_does(single, shards):
    """The JPEG-or-raw choice follows the record's key, not its position in a shard."""
    modes = {}
    for path in shards:
        beton, keys = BetonFile(path), json.loads(manifest_path(path).read_text())["keys"]
        modes.update(zip(keys, beton.metadata("image")["mode"].tolist(), strict=True))
    beton, keys = BetonFile(single), json.loads(manifest_path(single).read_text())["keys"]
    assert dict(zip(keys, beton.metadata("image")["mode"].tolist(), strict=True)) == modes
    assert 0 < np.mean(list(modes.values())) < 1 or len(set(modes.values())) == 2
