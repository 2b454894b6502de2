"""The build / export / inspect commands: shards, rejects file, strictness, atomic output."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from official_fixtures import IMAGENET_WNIDS, imagenet_members, write_tar
from test_rejects import EXPECTED_IMAGENET, bad_imagenet_members

from luab_data.build import build_parquet
from luab_data.cli import main
from luab_data.sources import open_source, read_records


@pytest.fixture
def tar(tmp_path):
    return write_tar(tmp_path / "imagenet_ab_v1_0.tar.gz", imagenet_members())


@pytest.fixture
def bad_tar(tmp_path):
    return write_tar(tmp_path / "bad.tar.gz", imagenet_members() + bad_imagenet_members())


def run(*args: str) -> object:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def test_shards_partition_records_and_share_labels(tar, tmp_path):
    whole, _ = read_records(tar)
    out = tmp_path / "out"
    for i in range(3):
        assert (
            run("build", "--src", tar, "--out", out, "--shard", f"{i}/3", "--quiet").exit_code == 0
        )
    manifests = sorted((out / "__luab__").glob("manifest-*.json"))
    assert len(manifests) == 3
    parts, _ = read_records(out)
    assert sorted(parts.column("key").to_pylist()) == sorted(whole.column("key").to_pylist())
    labels = dict(
        zip(parts.column("key").to_pylist(), parts.column("label").to_pylist(), strict=True)
    )
    assert labels == dict(
        zip(whole.column("key").to_pylist(), whole.column("label").to_pylist(), strict=True)
    )
    for m in manifests:  # every shard records the same, whole-source class list
        assert json.loads(m.read_text())["metadata"]["classes"] == IMAGENET_WNIDS
    for f in out.glob("*.parquet"):
        meta = json.loads(pq.read_schema(f).metadata[b"luab"])
        assert meta["classes"] == IMAGENET_WNIDS


def test_build_writes_rejects_and_summary(bad_tar, tmp_path):
    out = tmp_path / "out"
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(IMAGENET_WNIDS) + "\n")
    result = run("build", "--src", bad_tar, "--out", out, "--classes", classes, "--quiet")
    assert result.exit_code == 0, result.output
    assert "records kept    4" in result.output
    assert f"records rejected {len(EXPECTED_IMAGENET)}" in result.output
    lines = (out / "__luab__/rejects-00000-of-00001.jsonl").read_text().splitlines()
    got = {json.loads(x)["key"]: json.loads(x)["reason"] for x in lines}
    assert got == EXPECTED_IMAGENET
    manifest = json.loads((out / "__luab__/manifest-00000-of-00001.json").read_text())
    assert manifest["rows"] == 4 and sum(manifest["summary"]["rejects"].values()) == len(got)


def test_strict_stops_and_leaves_no_output(bad_tar, tmp_path):
    out = tmp_path / "out"
    result = run("build", "--src", bad_tar, "--out", out, "--strict", "--quiet")
    assert result.exit_code != 0
    assert "bad_malformed" in result.output and "malformed-xml" in result.output
    assert list(out.iterdir()) == []  # no part, no manifest, no temporary folder


def test_interrupted_build_leaves_nothing_that_looks_complete(tar, tmp_path):
    source = open_source(tar)
    real = source.batches

    def dies(shard=(0, 1)):
        for i, item in enumerate(real(shard)):
            if i == 1:
                raise KeyboardInterrupt
            yield item

    source.batches = dies
    import luab_data.sources.tar_stream as ia

    old, ia.TARGET_MEMBERS = ia.TARGET_MEMBERS, 1
    try:
        with pytest.raises(KeyboardInterrupt):
            build_parquet(source, tmp_path / "out", show_progress=False)
    finally:
        ia.TARGET_MEMBERS = old
    assert list((tmp_path / "out").iterdir()) == []


def test_rebuild_needs_overwrite(tar, tmp_path):
    out = tmp_path / "out"
    assert run("build", "--src", tar, "--out", out, "--quiet").exit_code == 0
    again = run("build", "--src", tar, "--out", out, "--quiet")
    assert again.exit_code != 0 and "--overwrite" in again.output
    assert run("build", "--src", tar, "--out", out, "--quiet", "--overwrite").exit_code == 0
    assert len(list(out.glob("*.parquet"))) == 1


def test_export_then_build_from_records(tar, tmp_path):
    records = tmp_path / "imagenet-ab.json"
    assert run("export", "--src", tar, "--out", records, "--quiet").exit_code == 0
    assert records.read_text().startswith("[")
    out = tmp_path / "out"
    assert run("build", "--src", records, "--out", out, "--quiet").exit_code == 0
    rebuilt, _ = read_records(out)
    direct, _ = read_records(tar)
    assert rebuilt.select(direct.column_names).to_pylist() == direct.to_pylist()


def test_inspect_counts(tar):
    result = run("inspect", tar, "--json", "--quiet")
    stats = json.loads(result.output)
    assert stats["records"] == 4 and stats["annotations"] == 6
    assert stats["votes"] == {"positive": 4, "negative": 2}
    assert stats["records_with_point"] == 2 and stats["records_with_box"] == 1
    assert stats["trace_samples_per_record"]["max"] == 3
    assert stats["annotators"]["distinct"] == 3
    assert sum(map(sum, stats["click_grid_rows_top_to_bottom"])) == 6
    text = run("inspect", tar, "--quiet").output
    assert "positive 4" in text and "negative 2" in text


def test_clear_error_for_unknown_source(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00garbage")
    result = run("inspect", junk, "--quiet")
    assert result.exit_code != 0 and "--kind" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "{tmp}/pq", "--map-size", "32"], "--map-size only applies to a .beton"),
        (
            ["--out", "{tmp}/pq", "--max-pixels", "9", "--sigma", "4px"],
            "--max-pixels, --sigma only apply to a .beton",
        ),
        (
            ["--out", "{tmp}/x.beton", "--rows-per-file", "5", "--images", "{tmp}"],
            "--rows-per-file only applies to Parquet",
        ),
        (["--out", "{tmp}/x.beton"], "needs its images: --images"),
        (["--out", "{tmp}/afile", "--format", "parquet"], "is a file: a Parquet build"),
        (["--out", "{tmp}", "--format", "beton", "--images", "{tmp}"], "is a folder: a .beton"),
        (["--out", "{tmp}/pq", "--classes", "{tmp}/missing.txt"], "does not exist"),
    ],
)
def test_build_refuses_inapplicable_options_and_bad_paths_before_reading(
    tar, tmp_path, args, message
):
    (tmp_path / "afile").write_text("x")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = run("build", "--src", str(tar), *argv)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "pq").exists() and not (tmp_path / "x.beton").exists()


def test_inspect_takes_the_source_as_argument_or_src(tar):
    by_arg, by_src = run("inspect", str(tar), "--json"), run("inspect", "--src", str(tar), "--json")
    assert by_arg.exit_code == by_src.exit_code == 0
    assert json.loads(by_arg.stdout)["records"] == json.loads(by_src.stdout)["records"]
    assert run("inspect").exit_code == 2
