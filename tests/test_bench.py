"""`luab-data bench`: the report names every stage, every baseline and the machine."""

from __future__ import annotations

import json

import pytest

from luab_data import bench


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    data = tmp_path_factory.mktemp("bench-data")
    return bench.run_bench(bench.STAGES, quick=True, data=data, echo=lambda *_: None, tiny=True)


@pytest.mark.timeout(600)
def test_report_schema_is_complete(report, tmp_path):
    machine = report["machine"]
    for key in ("cpu", "cores", "memory_gb", "gpu", "versions", "load_average", "date"):
        assert key in machine, key
    assert machine["versions"]["numpy"] and machine["versions"]["pyarrow"]
    assert list(report["stages"]) == list(bench.STAGES)
    for stage, result in report["stages"].items():
        assert "seconds" in result
        if "skipped" in result:  # allowed only with a reason (e.g. train needs a GPU)
            assert result["skipped"], stage
            continue
        assert result["entries"], stage
        for entry in result["entries"]:
            assert entry["stage"] == stage and entry["unit"] and entry["name"]
            names = list(entry["results"])
            assert len(names) >= 2, f"{stage}: ours and at least one baseline"
            for r in entry["results"].values():
                assert 0 < r["min"] <= r["median"] <= r["max"]
            # every contender is in a ratio (ours / baseline), each with a spread
            used = set()
            for label, r in entry["ratios"].items():
                ours, base = label.split(" / ", 1)
                assert ours in names and base in names and ours != base
                used |= {ours, base}
                assert r["min"] <= r["median"] <= r["max"]
            assert used == set(names), f"{stage}: contenders without a ratio"
    for stage in ("ingest", "raster"):  # these exist from the start
        assert "entries" in report["stages"][stage]
    json_path, png = bench.save(report, tmp_path / "bench.json")
    assert json.loads(json_path.read_text())["stages"].keys() == report["stages"].keys()
    assert png.stat().st_size > 1000
    text = bench.table(report)
    assert "machine:" in text and "ingest" in text and "x (" in text


@pytest.mark.timeout(600)
def test_load_stage_has_the_torchvision_peer(report):
    """(e) torchvision.transforms.v2 runs beside ours and has its ratio."""
    (entry,) = report["stages"]["load"]["entries"]
    peer = next(name for name in entry["results"] if name.startswith("torchvision.transforms.v2"))
    assert any(label.endswith(f" / {peer}") for label in entry["ratios"])
