"""`luab-data bench`: run each stage's benchmark beside its baselines and report ratios.

Each stage lives in `benchmarks/bench_<stage>.py` and exposes
`run(quick, data, tiny=False) -> list[dict]` (tiny: the smallest run that exercises the code, for
the tests), one entry per comparison:

    {"stage": "ingest", "name": "ImageNet-AB tar.gz", "unit": "records/s",
     "results": {"ours": {"median", "min", "max"}, "baseline (...)": {...}},
     "ratios": {"ours / baseline (...)": {"median", "min", "max"}}, "notes": "..."}

Ratios are computed per interleaved repetition and then summarised, so that a slow moment of a
shared machine hits both sides of a ratio alike.

`bench` is a command of a source checkout: the stages measure against baselines that live
beside them (benchmarks/official_loader.py, the FFCV plain pipeline, train/fast_train.py), import
each other and keep reference results in benchmarks/results/. Shipping them in the wheel would
make baselines and the trainer library code; an installed luab-data says so instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import click


class StageSkipped(Exception):  # noqa: N818 - read as "the stage was skipped: <why>"
    """Raised by a stage's run() that cannot measure on this machine (e.g. needs a GPU)."""


STAGES = ("ingest", "raster", "pack", "load", "dali", "train")


class NotACheckout(click.ClickException):
    """`bench` needs the benchmarks/ folder of a source checkout beside the package."""


def benchmarks_dir() -> Path:
    """benchmarks/ of the checkout this package runs from (an editable install or the tree)."""
    package = Path(__file__).resolve().parent
    found = package.parent / "benchmarks"
    if not (found / "bench_ingest.py").is_file():
        raise NotACheckout(
            f"luab-data bench runs the benchmarks of a source checkout (benchmarks/ beside "
            f"luab_data/), and this luab-data is installed without them ({package}): clone the "
            f"repository, run `bash scripts/setup.sh` there, then `.venv/bin/luab-data bench`"
        )
    return found


def spread(values: Sequence[float]) -> dict:
    """Median and min-max of repeated measurements."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def ratio_spread(ours: Sequence[float], base: Sequence[float]) -> dict:
    """Ratios of rates paired repetition by repetition (they ran side by side)."""
    return spread([a / b for a, b in zip(ours, base, strict=True)])


def _stage_module(stage: str):
    path = benchmarks_dir() / f"bench_{stage}.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"bench_{stage}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module if hasattr(module, "run") else None


def machine_info() -> dict:
    """What the figures came from: CPU, cores, memory, GPU, library versions, load."""
    info = {
        "cpu": "unknown",
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        info["cpu"] = names[0] if names else "unknown"
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kb = int(meminfo.read_text().split()[1])
        info["memory_gb"] = round(kb / 2**20, 1)
    info["load_average"] = list(os.getloadavg())
    info["gpu"] = _gpu()
    info["versions"] = _versions()
    return info


def _gpu() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - a broken CUDA install means: no GPU to report
        return None


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in (
        "luab-data",
        "numpy",
        "numba",
        "pyarrow",
        "torch",
        "ffcv",
        "opencv-python",
        "nvidia-dali-cuda130",
        "torchvision",
        "timm",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def run_bench(stages: Sequence[str], quick: bool, data: Path, echo=print, tiny=False) -> dict:
    """Run the stages in order; a stage that cannot run here says why instead of failing."""
    benchmarks_dir()  # outside a checkout: one clear error before any work
    report = {"machine": machine_info(), "quick": quick, "stages": {}}
    for stage in stages:
        module = _stage_module(stage)
        start = time.perf_counter()
        if module is None:
            report["stages"][stage] = {"skipped": f"benchmarks/bench_{stage}.py has no run()"}
        else:
            echo(f"== {stage}")
            try:
                entries = module.run(quick=quick, data=data / stage, tiny=tiny)
                report["stages"][stage] = {"entries": entries}
            except StageSkipped as why:
                report["stages"][stage] = {"skipped": str(why)}
        report["stages"][stage]["seconds"] = round(time.perf_counter() - start, 1)
    report["machine"]["load_average_end"] = list(os.getloadavg())
    return report


def table(report: dict) -> str:
    """Plain-text table: ratio first (the headline), then absolute rates."""
    m = report["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, {m.get('memory_gb', '?')} GB, "
        f"GPU: {m['gpu'] or 'none'}, load {m['load_average'][0]:.1f}"
    ]
    head = f"{'stage':8} {'ours / baseline':56} {'ratio (min-max)':22} {'ours':>10} {'base':>10}"
    lines += [head, "-" * len(head)]
    for stage, result in report["stages"].items():
        if "skipped" in result:
            lines.append(f"{stage:8} skipped: {result['skipped']}")
            continue
        for e in result["entries"]:
            lines.extend(_entry_lines(stage, e))
    return "\n".join(lines)


def _entry_lines(stage: str, e: dict) -> list[str]:
    out = [f"{stage:8} {e['name']} ({e['unit']})"]
    for label, r in e["ratios"].items():
        ours_name, base_name = label.split(" / ", 1)
        ours, base = e["results"][ours_name], e["results"][base_name]
        ratio = f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"
        out.append(
            f"{'':8} {label[:56]:56} {ratio:22} {ours['median']:>10,.0f} {base['median']:>10,.0f}"
        )
    return out


def chart(report: dict, png: Path) -> None:
    """A horizontal bar chart of every ratio with its min-max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        (f"{s}: {e['name']}\n{label}", r)
        for s, res in report["stages"].items()
        for e in res.get("entries", [])
        for label, r in e["ratios"].items()
    ]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(rows) + 1.2))
    y = range(len(rows))
    med = [r["median"] for _, r in rows]
    err = [[r["median"] - r["min"] for _, r in rows], [r["max"] - r["median"] for _, r in rows]]
    ax.barh(list(y), med, xerr=err, color="#4477aa", capsize=3)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(list(y), [label for label, _ in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ours / baseline (median, min-max); >1 is faster")
    m = report["machine"]
    ax.set_title(
        f"luab-data bench — {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def save(report: dict, out: Path) -> tuple[Path, Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    png = out.with_suffix(".png")
    chart(report, png)
    return out, png
