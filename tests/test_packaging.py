"""An installed wheel runs every command from any folder, and Parquet-only use needs neither
torch nor FFCV.

The wheel is built from a copy of the package (no build isolation, no index: the build tools
are the lock's) and installed with --no-deps into a fresh venv that reaches this environment's
third-party packages through a .pth file: the project's own editable install is not visible
there (its finder is a .pth that only site directories run), so `luab_data` comes from the
wheel alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK_IMPORTS = """
import sys
from luab_data.cli import main
for args in {runs}:
    try:
        main(args, standalone_mode=False)
    except SystemExit as stop:
        assert not stop.code, (args, stop.code)
heavy = sorted(m for m in ("torch", "ffcv", "nvidia.dali", "matplotlib") if m in sys.modules)
print("HEAVY", heavy)
"""


def _run(cmd: list, cwd: Path, env: dict | None = None, timeout: int = 600) -> str:
    # A PYTHONPATH of the caller's (a checkout on it) would shadow the installed wheel.
    env = env if env is not None else {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _package_files() -> set[str]:
    """What a wheel must hold: every file of the package tree but caches."""
    skip = {".pyc", ".nbi", ".nbc"}
    return {
        str(p.relative_to(ROOT))
        for p in (ROOT / "luab_data").rglob("*")
        if p.is_file() and p.suffix not in skip and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc")
    shutil.copytree(ROOT / "luab_data", src / "luab_data", ignore=ignore)
    dist = tmp_path_factory.mktemp("dist")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            dist,
            src,
        ],
        cwd=src,
    )
    (found,) = dist.glob("luab_data-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    env = tmp_path_factory.mktemp("venv") / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", env], cwd=env.parent)
    python = env / "bin" / "python"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            wheel,
        ],
        cwd=env.parent,
    )
    site = _run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=env.parent
    ).strip()
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    Path(site, "project-deps.pth").write_text("\n".join(sorted(ours)) + "\n")
    return env


def test_wheel_holds_the_package_data_and_metadata(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert _package_files() <= names, sorted(_package_files() - names)
    assert {"luab_data/pipelines/sample.json", "luab_data/pipelines/train/sample-cpu.json"} <= names
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "License-Expression: MIT" in meta
    assert "Programming Language :: Python :: 3.11" in meta and "Project-URL" in meta
    lines = meta.splitlines()
    required = [ln for ln in lines if ln.startswith("Requires-Dist") and "extra" not in ln]
    assert not [ln for ln in required if "torch" in ln or "ffcv" in ln], required
    for extra in ("ffcv", "dali", "train", "bench", "dev"):
        assert f"Provides-Extra: {extra}" in meta
    assert any("matplotlib" in ln and 'extra == "bench"' in ln for ln in lines)
    assert any("PyYAML" in ln and 'extra == "train"' in ln for ln in lines)


@pytest.mark.timeout(900)
def test_installed_wheel_runs_the_commands_from_any_folder(venv, tmp_path):
    cli, work = venv / "bin" / "luab-data", tmp_path / "elsewhere"
    work.mkdir()
    where = _run(
        [venv / "bin" / "python", "-c", "import luab_data; print(luab_data.__file__)"], cwd=work
    )
    assert where.startswith(str(venv)), where  # the wheel's copy, not the checkout
    _run([cli, "sample", "--out", "s", "--size", "small", "--quiet"], cwd=work)
    out = _run(
        [
            cli,
            "build",
            "--src",
            "s/imagenet_ab_v1_0.tar.gz",
            "--images",
            "s",
            "--out",
            "s.beton",
            "--recipe",
            "sample",
            "--quiet",
        ],
        cwd=work,
    )
    assert "records kept" in out and (work / "s.beton").stat().st_size > 0
    built = json.loads((work / "s.beton.json").read_text())["build"]
    assert built["raster"]["size"] == [32, 32]  # the sample recipe's maps, found in the wheel
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    bench = subprocess.run(
        [cli, "bench", "--stages", "ingest"],
        cwd=work,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bench.returncode != 0 and "source checkout" in bench.stderr, bench.stderr
    assert "Traceback" not in bench.stderr


@pytest.mark.timeout(600)
def test_parquet_use_imports_neither_torch_nor_ffcv(tmp_path):
    """build --format parquet, inspect and export, run through the CLI in a fresh process."""
    from official_fixtures import imagenet_members, write_tar

    tar = write_tar(tmp_path / "imagenet_ab_v1_0.tar.gz", imagenet_members())
    runs = [
        ["build", "--src", str(tar), "--out", str(tmp_path / "pq"), "--quiet"],
        ["inspect", str(tmp_path / "pq"), "--quiet"],
        ["export", "--src", str(tmp_path / "pq"), "--out", str(tmp_path / "r.jsonl"), "--quiet"],
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = _run([sys.executable, "-c", CHECK_IMPORTS.format(runs=repr(runs))], cwd=tmp_path, env=env)
    assert "HEAVY []" in out, out
    assert (tmp_path / "r.jsonl").stat().st_size > 0
