"""The GPU check's dry run (scripts/gpu_check.sh --dry-run): every step of the check runs on a
CPU with tiny sizes, so that the check cannot rot between the sessions that have a GPU.

One run of the script (a fresh work folder: it generates its sample and .beton too) feeds all
the tests; its steps iterate FFCV and DALI loaders, hence the timeout.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import pytest

if find_spec("ffcv") is None or find_spec("nvidia") is None or find_spec("nvidia.dali") is None:
    pytest.skip("needs FFCV and DALI (the dry run runs every step)", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402
from gpu_check import NotRun, Plan, Step, run_steps  # noqa: E402


def _sleeper(pid_file: Path):
    """A step that starts a grandchild and then hangs: the timeout must end both."""

    def run(plan: Plan, work: Path) -> dict:
        child = subprocess.Popen(["sleep", "120"])
        pid_file.write_text(str(child.pid))
        time.sleep(120)
        return {}

    return run


def _missing(plan: Plan, work: Path) -> dict:
    raise NotRun("no such library here")


def _broken(plan: Plan, work: Path) -> dict:
    raise ZeroDivisionError("a bug")


def _quick(plan: Plan, work: Path) -> dict:
    return {"figures": {"x": gpu_check.figure([1.0, 3.0, 2.0], "things/s")}}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie waits for its parent: it is gone too
        return fh.read().split()[2] != "Z"


@pytest.mark.timeout(60)
def test_each_step_ends_with_a_status_and_the_rest_go_on(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    plan = Plan(
        dry_run=True,
        device="cpu",
        cores=1,
        min_step_s=1,
        timeouts={"env": 3, "loss": 30, "raster": 30},
    )
    steps = [
        Step("hangs", "env", _sleeper(pid_file)),
        Step("missing", "loss", _missing),
        Step("broken", "loss", _broken),
        Step("quick", "loss", _quick),
        Step("late", "raster", _quick),
    ]
    start = time.perf_counter()
    deadline = start + 15  # "late" finds less than its 30 s timeout + 5 s, but more than 1 s
    got = run_steps(steps, plan, tmp_path, deadline, jobs=1, echo=lambda line: None)
    assert time.perf_counter() - start < 25
    assert list(got) == ["hangs", "missing", "broken", "quick", "late"]
    assert got["hangs"]["status"] == "timeout" and got["hangs"]["timeout_s"] == 3
    assert not _alive(int(pid_file.read_text()))  # killed with its step's whole session
    assert got["missing"] == {
        **got["missing"],
        "status": "not run",
        "reason": "no such library here",
    }
    assert got["broken"]["status"] == "failed" and "ZeroDivisionError" in got["broken"]["reason"]
    assert "a bug" in got["broken"]["traceback"]
    quick = got["quick"]
    assert quick["status"] == "ok" and quick["figures"]["x"]["median"] == 2.0
    assert quick["memory"]["peak_rss_mib"] > 0
    assert got["late"]["status"] == "ok" and got["late"]["timeout_s"] < 30
    refused = run_steps(steps[3:], plan, tmp_path, time.perf_counter() + 3, 1, lambda line: None)
    assert all(r["status"] == "not run" and "time budget" in r["reason"] for r in refused.values())


pytestmark = pytest.mark.timeout(600)  # the dry run; the test above has its own


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[dict, str, Path]:
    work = tmp_path_factory.mktemp("gpu_check")
    out = work / "record" / "dry.json"
    env = {**os.environ, "PYTHON": sys.executable}
    res = subprocess.run(
        [
            "bash",
            str(ROOT / "scripts" / "gpu_check.sh"),
            "--dry-run",
            "--work",
            str(work),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=570,
        env=env,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(out.read_text()), res.stdout, out


def test_every_step_ran_on_the_cpu(dry_run) -> None:
    report, _, _ = dry_run
    expected = [s.name for s in gpu_check.steps_of(gpu_check.Plan.dry(2))]
    assert list(report["steps"]) == expected
    statuses = {name: (rec["status"], rec.get("reason")) for name, rec in report["steps"].items()}
    assert all(status == "ok" for status, _ in statuses.values()), statuses
    assert report["dry_run"] is True and report["plan"]["device"] == "cpu"
    assert report["plan"]["compile"] is False
    for name, rec in report["steps"].items():
        assert rec["seconds"] >= 0 and rec["timeout_s"] > 0, name
        assert rec["memory"]["peak_rss_mib"] > 0, name


def _figures(report: dict):
    for name, rec in report["steps"].items():
        for group in ("figures", "ratios"):
            for label, fig in rec.get(group, {}).items():
                yield f"{name}: {label}", fig
        for label, fig in rec.get("explain", {}).items():
            if isinstance(fig, dict) and "median" in fig:
                yield f"{name}: {label}", fig


def test_figures_are_positive_with_their_spread(dry_run) -> None:
    report, _, _ = dry_run
    figures = dict(_figures(report))
    for step in ("raster", "loaders", "train@32", "dali", "compile@32"):
        assert any(label.startswith(step + ":") for label in figures), step
    for label, fig in figures.items():
        values = fig["values"]
        assert fig["n"] == len(values) >= 1, label
        assert all(math.isfinite(v) for v in values), label
        ok_zero = label.endswith("loader_wait_ms_per_step")  # a wait can round to 0
        assert all(v > 0 or (ok_zero and v >= 0) for v in values), (label, values)
        assert fig["min"] <= fig["median"] <= fig["max"], label
    train = report["steps"]["train@32"]
    assert set(train["figures"]) == {
        "fed by CoupledLoader",
        "synthetic on-device",
        "CoupledLoader alone (no training)",
    }
    assert train["ratios"]["fed / synthetic"]["median"] > 0
    assert isinstance(train["meets_goal"], bool) and train["diagnosis"]
    dali = report["steps"]["dali"]["figures"]
    assert {"FFCV coupled", "DALI CPU"} <= set(dali)


def test_loss_check_compares_values(dry_run) -> None:
    report, _, _ = dry_run
    loss = report["steps"]["loss"]
    assert loss["passed"] is True
    terms = loss["checks"]["terms_cpu_vs_device"]
    assert terms["compared"] >= 3 * 4 and terms["tolerance"]["rtol"] > 0  # 3 combos x 4 terms
    for combo in terms["terms"].values():
        assert set(combo) == {"ce", "point", "attention", "loss"}
        for row in combo.values():
            assert math.isfinite(row["cpu"]) and row["cpu"] > 0
            assert row["abs_diff"] == abs(row["cpu"] - row["device"]) and row["ok"]
    base = loss["checks"]["baseline_bit_for_bit"]
    assert base["loss_is_ce"] and base["losses_equal"] and base["weights_equal"]
    assert len(base["step_losses"]) == 3 and all(a == b for a, b in base["step_losses"])
    align = report["steps"]["dali_align"]["checks"]
    assert align["pass"] and align["augmentations"] > 0 and align["marker_checks"] > 0


def test_table_and_record_place(dry_run) -> None:
    report, stdout, out = dry_run
    assert "luab-data GPU check (DRY RUN, CPU)" in stdout and f"wrote {out}" in stdout
    for name in report["steps"]:
        assert f"\n{name}" in stdout
    assert report["machine"]["versions"]["torch"]
    assert not (ROOT / "benchmarks" / "results" / "gpu-none.json").exists()
