"""`luab-data build --engine ray`: the shards as Ray tasks on a real local Ray give the output a
local build gives (.beton sample for sample by key and stored bytes; Parquet row for row), also
when a task's worker is killed mid-build and retried; a shard that fails for good fails the
command with its reason and leaves nothing that looks complete."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import ray_plants
from beton_fixtures import sample_dir, source_path, stored_samples
from click.testing import CliRunner

from luab_data.beton.paths import beton_path, manifest_path
from luab_data.cli import main
from luab_data.ray_build import BuildJob, ShardsFailed, build_on_ray

ray = pytest.importorskip("ray")

KIND = "imagenet-ab"
BETON_FLAGS = ["--map-size", "16x24", "--trace-points", "8", "--max-resolution", "128"]
# the same options as BuildJob.beton holds them after the command line's parsing
BETON_GIVEN = {"recipe": None, "map_size": (16, 24), "trace_points": 8, "max_resolution": 128}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("ray")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module (2 CPUs, no dashboard); its workers import ray_plants."""
    tests = str(Path(__file__).parent)
    path = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    yield
    ray.shutdown()


def _build(root, out, *extra: str) -> None:
    args = [
        "build",
        "--src",
        str(source_path(root, KIND)),
        "--images",
        str(sample_dir(root, KIND)),
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.fixture(scope="module")
def local_beton(root):
    out = root / "local" / "all.beton"
    _build(root, out, *BETON_FLAGS, "--workers", "2")
    return out


def _assert_same(built: Path, local: Path) -> None:
    got, want = stored_samples(built), stored_samples(local)
    assert sorted(got) == sorted(want) and len(want) > 30
    for key, fields in want.items():
        assert got[key] == fields, key


def _job(root, out: Path) -> BuildJob:
    return BuildJob(
        src=str(source_path(root, KIND)),
        out=str(out),
        fmt="beton",
        images=str(sample_dir(root, KIND)),
        beton=BETON_GIVEN,
    )


@pytest.mark.timeout(600)
def test_ray_beton_build_equals_a_local_build(root, local_beton):
    out = root / "ray" / "all.beton"
    text = _build(root, out, *BETON_FLAGS, "--engine", "ray", "--shards", "3")
    assert "3 shard tasks" in text and "merged" in text
    _assert_same(out, local_beton)
    merged = json.loads(manifest_path(out).read_text())
    assert [m["shard"] for m in merged["merged_from"]] == [[0, 3], [1, 3], [2, 3]]
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "all.beton",
        "all.beton.json",
        "all.beton.rejects.jsonl",
    ]  # shards dropped once merged


@pytest.mark.timeout(600)
def test_ray_parquet_build_has_the_rows_of_a_local_build(root):
    local, on_ray = root / "pq-local", root / "pq-ray"
    _build(root, local)
    text = _build(root, on_ray, "--engine", "ray", "--shards", "3")
    assert "no merge needed" in text
    assert len(list((on_ray / "__luab__").glob("manifest-*-of-00003.json"))) == 3

    def rows(folder):
        return ds.dataset(folder).to_table().sort_by("key").replace_schema_metadata(None)

    want, got = rows(local), rows(on_ray)
    assert want.num_rows > 30 and got.equals(want)


@pytest.mark.timeout(600)
def test_a_killed_task_is_retried_and_the_output_is_unchanged(root, local_beton):
    out = root / "killed" / "all.beton"
    job = _job(root, out)
    build_on_ray(job, shards=2, quiet=True, run=ray_plants.die_mid_build)
    assert ray_plants.marker(job).exists()  # the first attempt of shard 1 was killed
    _assert_same(out, local_beton)


@pytest.mark.timeout(600)
def test_a_shard_failing_for_good_fails_the_build_and_nothing_looks_complete(root):
    out = root / "failing" / "all.beton"
    with pytest.raises(ShardsFailed, match=r"shard 1/2: ValueError: planted: shard 1/2 cannot"):
        build_on_ray(_job(root, out), shards=2, quiet=True, run=ray_plants.fail_shard_one)
    assert not out.exists() and not manifest_path(out).exists()  # nothing merged
    assert not manifest_path(beton_path(out, (1, 2))).exists()
    assert not beton_path(out, (1, 2)).exists()
    assert manifest_path(beton_path(out, (0, 2))).exists()  # the good shard stays, restartable
