"""The shortcut experiment: baseline vs LUAB on the bundled sample, over the shortcut's
strength rho, several seeds, with train/fast_train.py on the CPU.

    .venv/bin/python benchmarks/train_sample.py --jobs 2   # the whole sweep (JSON, PNG, table)
    .venv/bin/python benchmarks/train_sample.py --quick    # README demo: one rho, one seed

The sample (``luab-data sample``) puts each class on its own background family with
probability rho in the training split and in val_id; val_ood draws backgrounds independently
of the class. A classifier that reads the background scores ~rho on val_id and ~chance on
val_ood. First the learner is checked without a shortcut (rho = 0.1: its learning curve on
val_ood), then every variant runs at every rho with seeds 0-2, and with seeds 3-4 too where
a variant's val_ood mean lies within two standard deviations of another's. Seeds pair runs:
the same seed gives the same initial weights, data order and crops to every variant, so each
variant is compared with the baseline seed by seed (mean difference, its 95 % interval).
Localisation on val_ood: the share of images whose class-activation-map peak (every model) or
head prediction (point or attention head) falls inside the object's box, and the pointing
game (within 15 image pixels of it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
CLI = [str(Path(PY).parent / "luab-data")]  # the console script of this environment
CONFIG = ROOT / "luab_data" / "pipelines" / "train" / "sample-cpu.json"
VARIANTS = {
    "baseline": [],
    "point λ=0.1": ["--lam", "0.1"],
    "point λ=1": ["--lam", "1"],
    "point λ=10": ["--lam", "10"],
    "point soft-argmax λ=1": ["--lam", "1", "--point-head", "soft-argmax"],
    "attention μ=1": ["--mu", "1"],
    "attention μ=1 + pool": ["--mu", "1", "--att-pool"],
}
# The spatial point head answers the issue's "in the forms its users would try" at one rho (the
# paper's 0.9), not across the sweep: a run costs ~90 CPU s and the sweep must fit 90 minutes.
ONLY_AT = {"point soft-argmax λ=1": (0.9,)}
QUICK_VARIANTS = ("baseline", "point λ=1", "attention μ=1 + pool")
QUICK_EPOCHS = 6
QUICK_SIZE = 10000
RHOS = (0.5, 0.8, 0.9, 0.95)
METRICS = (  # (column, split, key)
    ("val_id top-1", "val_id", "top1"),
    ("val_ood top-1", "val_ood", "top1"),
    ("CAM in box", "val_ood", "loc_cam"),
    ("CAM pointing", "val_ood", "pointing_cam"),
    ("head in box", "val_ood", "loc_head"),
)
COCO_METRICS = (
    ("val_id mAP", "val_id", "mAP"),
    ("val_ood mAP", "val_ood", "mAP"),
    ("CAM in box", "val_ood", "loc_cam"),
    ("top class's point in box", "val_ood", "loc_point"),
)
PROBE_RHO = 0.9  # where the linear probes read what the features encode
COCO_CONFIG = ROOT / "luab_data" / "pipelines" / "train" / "coco-sample-cpu.json"
COCO_VARIANTS = ("baseline", "point λ=1", "attention μ=1")
PRIMARY = "val_ood top-1"
# two-sided 95 % quantiles of Student's t by degrees of freedom (no scipy here)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306}


# ---------------------------------------------------------------- data and runs


def make_data(work: Path, rho: float, size: int, seed: int, kind: str = "imagenet-ab"):
    """The sample folder and its training .beton (built once, reused)."""
    sample = work / f"{kind}-rho{rho}-n{size}-s{seed}"
    if not (sample / "sample.json").exists():
        cmd = [*CLI, "sample", "--out", str(sample), "--rho", str(rho), "--size", str(size)]
        subprocess.run([*cmd, "--kind", kind, "--seed", str(seed), "--quiet"], check=True)
    beton = sample.parent / f"{sample.name}.beton"
    if not Path(f"{beton}.json").exists():
        src = sample / ("imagenet_ab_v1_0.tar.gz" if kind == "imagenet-ab" else "coco_ab_v1_0.json")
        cmd = [*CLI, "build", "--src", str(src), "--images", str(sample), "--out", str(beton)]
        if kind == "imagenet-ab":  # the sample's 10 classes, not ImageNet-1k's 1,000
            cmd += ["--recipe", "sample", "--classes", str(sample / "classes.txt")]
        else:  # COCO's 80 categories (10 occur), one point per class; maps for small images
            cmd += ["--recipe", "coco-ab", "--map-size", "32"]
        subprocess.run([*cmd, "--overwrite", "--quiet"], check=True)
    return sample, beton


def run_one(job: dict, data: dict[tuple, tuple[Path, Path]], args: argparse.Namespace) -> dict:
    """One training run in its own process; its final metrics record (+ the eval curve)."""
    kind = job.get("kind", "imagenet-ab")
    sample, beton = data[(kind, job["rho"])]
    name = f"{'coco-' if kind == 'coco-ab' else ''}rho{job['rho']}-{_slug(job['variant'])}"
    config = COCO_CONFIG if kind == "coco-ab" else args.config
    if Path(config).resolve() not in (CONFIG, COCO_CONFIG):  # beside the default's runs
        name += f"-{Path(config).stem}"
    run_dir = args.work / "runs" / f"{name}-seed{job['seed']}"
    cmd = [PY, str(ROOT / "train" / "fast_train.py"), "--config", str(config)]
    cmd += ["--train", str(beton), "--val", str(sample / "val_id"), str(sample / "val_ood")]
    cmd += ["--seed", str(job["seed"]), "--out", str(run_dir), "--quiet"]
    cmd += [*VARIANTS[job["variant"]], *job.get("extra", []), *args.train_args]
    records = _finished(run_dir, cmd, config) if args.reuse else None
    if records is None:  # not run yet with this command and config: run it
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        records = _records(run_dir)
        (run_dir / "command.json").write_text(json.dumps(_identity(cmd, config)))
    final = records[-1]
    for split in ("val_id", "val_ood"):  # the trained head's localisation, if any
        m = final[split]
        m["loc_head"] = m.get("loc_point", m.get("loc_attention"))
    curve = [
        {"epoch": r["epoch"], "top1": r["top1"]}
        for r in records
        if r.get("split") == "val_ood" and "top1" in r
    ]
    run = {**job, **final, "curve": curve, "dir": str(run_dir)}
    _report(run)
    return run


def _trainer(config: Path) -> dict:
    return json.loads(Path(config).read_text())["trainer"]


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _identity(cmd: list[str], config: Path) -> dict:
    return {"command": cmd[1:], "config": json.loads(Path(config).read_text())}


def _finished(run_dir: Path, cmd: list[str], config: Path) -> list[dict] | None:
    """The records of a finished earlier run of the same command and config (a sweep that
    was stopped goes on where it stopped), else None."""
    try:
        same = json.loads((run_dir / "command.json").read_text()) == _identity(cmd, config)
        records = _records(run_dir) if same else []
    except (OSError, ValueError):
        return None
    return records if records and records[-1].get("event") == "final" else None


def _slug(variant: str) -> str:
    text = variant.replace("λ", "lam").replace("μ", "mu").replace("=", "")
    return "".join(c if c.isascii() and (c.isalnum() or c == ".") else "-" for c in text)


def run_all(jobs: list[dict], data: dict, args: argparse.Namespace) -> list[dict]:
    with ThreadPoolExecutor(args.jobs) as pool:
        return list(pool.map(lambda j: run_one(j, data, args), jobs))


def close_pairs(runs: list[dict], rho: float) -> set[str]:
    """Variants whose val_ood mean lies within two standard deviations (the larger of the
    two) of the baseline's at this rho, and the baseline with them: they get more seeds. Only
    pairs with the baseline, the comparison the experiment is about (all pairs of 6 variants
    would add ~50 runs, 45 minutes here)."""
    stats = summarise([r for r in runs if r["rho"] == rho])
    if "baseline" not in stats:
        return set()
    base = stats["baseline"][PRIMARY]
    close = {
        v
        for v, row in stats.items()
        if v != "baseline"
        and abs(row[PRIMARY]["mean"] - base["mean"]) < 2 * max(row[PRIMARY]["std"], base["std"])
    }
    return close | {"baseline"} if close else set()


def probe_all(runs: list[dict], data: dict, rho: float) -> dict[str, dict[str, dict]]:
    """Linear probes of each run's features at this rho (benchmarks/probe_features.py): per
    variant, mean ± sd over seeds of what they read out (class, background, position)."""
    from probe_features import probe_run

    val_ood, splits = data[("imagenet-ab", rho)][0] / "val_ood", {}
    found: dict[str, list[dict]] = {}
    for run in (r for r in runs if r["rho"] == rho):
        found.setdefault(run["variant"], []).append(probe_run(Path(run["dir"]), val_ood, splits))
    return {
        variant: {key: spread([p[key] for p in probes]) for key in probes[0] if key != "run"}
        for variant, probes in found.items()
    }


# ---------------------------------------------------------------- statistics


def spread(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def summarise(runs: list[dict], metrics: tuple = METRICS) -> dict[str, dict[str, dict]]:
    """Per variant and metric: mean, sample standard deviation, min, max over seeds."""
    table: dict[str, dict[str, dict]] = {}
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        if not mine:
            continue
        row = {}
        for column, split, key in metrics:
            values = [r[split][key] for r in mine if r[split].get(key) is not None]
            if values:
                row[column] = spread(values)
        row["cpu_s"] = spread([r["cpu_s"] for r in mine])
        table[variant] = row
    return table


def paired(
    runs: list[dict], variant: str, column: str = PRIMARY, metrics: tuple = METRICS
) -> dict | None:
    """Variant minus baseline, seed by seed (same seed: same init, order and crops)."""
    split, key = next((s, k) for c, s, k in metrics if c == column)
    by_seed = {
        (r["variant"], r["seed"]): r[split][key] for r in runs if r[split].get(key) is not None
    }
    seeds = sorted(s for v, s in by_seed if v == variant and ("baseline", s) in by_seed)
    if len(seeds) < 2:
        return None
    diffs = [by_seed[(variant, s)] - by_seed[("baseline", s)] for s in seeds]
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = T95.get(len(diffs) - 1, 1.96) * sd / len(diffs) ** 0.5
    return {
        "mean_diff": mean,
        "sd_diff": sd,
        "n": len(diffs),
        "ci95": [mean - half, mean + half],
        "seeds_better": sum(d > 0 for d in diffs),
        "diffs": diffs,
    }


# ---------------------------------------------------------------- output


def markdown(runs: list[dict], rhos: list[float], metrics: tuple = METRICS) -> str:
    primary = metrics[1][0]  # val_ood top-1, or mAP
    head = ["rho", "variant", *(c for c, _, _ in metrics), f"Δ {primary} vs baseline (95 % CI)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rho in rhos:
        mine = [r for r in runs if r["rho"] == rho]
        for variant, row in summarise(mine, metrics).items():
            cells = [f"{rho:g}", variant]
            for column, _, _ in metrics:
                cell = row.get(column)
                cells.append("–" if cell is None else f"{cell['mean']:.3f} ± {cell['std']:.3f}")
            cmp = paired(mine, variant, primary, metrics) if variant != "baseline" else None
            cells.append(
                "–"
                if cmp is None
                else f"{cmp['mean_diff']:+.3f} ({cmp['ci95'][0]:+.3f}, {cmp['ci95'][1]:+.3f}), "
                f"n={cmp['n']}"
            )
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def probe_markdown(probes: dict[str, dict[str, dict]]) -> str:
    keys = list(next(iter(probes.values())))
    lines = ["| variant | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for variant, row in probes.items():
        cells = [f"{row[k]['mean']:.3f} ± {row[k]['std']:.3f}" for k in keys]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: list[dict], rhos: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, variant in enumerate(VARIANTS):
        xs, ys, es = [], [], []
        for rho in rhos:
            row = summarise([r for r in runs if r["rho"] == rho]).get(variant)
            if row and PRIMARY in row:
                xs.append(rho + (i - len(VARIANTS) / 2) * 0.003)  # side by side, not on top
                ys.append(row[PRIMARY]["mean"])
                es.append(row[PRIMARY]["std"])
        if xs:
            ax.errorbar(xs, ys, yerr=es, marker="o", ms=4, capsize=3, label=variant)
    ax.set_xlabel("rho (share of training images whose background matches the class)")
    ax.set_ylabel("val_ood top-1 (mean ± sd over seeds)")
    ax.set_title("Shortcut sample: accuracy on independent backgrounds")
    ax.axhline(0.1, color="grey", lw=0.8, ls=":")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def machine() -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "loadavg": os.getloadavg(),
    }


def _report(run: dict) -> None:
    ood, iid = run["val_ood"], run["val_id"]
    key = "mAP" if "mAP" in ood else "top1"
    print(
        f"{run.get('kind', 'imagenet-ab'):<11} rho {run['rho']:<5g} {run['variant']:<22} "
        f"seed {run['seed']}  val_id {key} {iid[key]:.3f}  val_ood {key} {ood[key]:.3f}  "
        f"CAM in box {ood['loc_cam']:.3f}  {run['cpu_s']:.0f} CPU s",
        flush=True,
    )


# ---------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "train_sample")
    ap.add_argument("--config", type=Path, default=CONFIG, help="trainer config")
    ap.add_argument("--rho", type=float, nargs="+", default=list(RHOS))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", type=int, default=3, help="seeds per variant (more if close)")
    ap.add_argument("--more-seeds", type=int, default=5, help="seeds where variants are close")
    ap.add_argument("--size", type=int, default=20000, help="training images of the sample")
    ap.add_argument("--sample-seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    ap.add_argument("--no-learner", action="store_true", help="skip the rho = 0.1 check")
    ap.add_argument(
        "--learner-only",
        action="store_true",
        help="only the rho = 0.1 check with --config (e.g. sample-cpu-long.json), no sweep",
    )
    ap.add_argument("--coco-seeds", type=int, default=3, help="COCO-AB runs per variant (0: none)")
    ap.add_argument("--coco-size", type=int, default=2500, help="training images, COCO-AB")
    ap.add_argument("--coco-rho", type=float, default=0.9)
    ap.add_argument(
        "--no-reuse",
        dest="reuse",
        action="store_false",
        help="rerun runs already finished in --work with the same command and config",
    )
    ap.add_argument("--quick", action="store_true", help="README demo: rho 0.9, seed 0, 3 variants")
    ap.add_argument(
        "--results", type=Path, default=None, help="write JSON and PNG here (a .json path)"
    )
    ap.add_argument("--report", type=Path, help="print the tables of a finished sweep's JSON")
    ap.epilog = "Any other option goes to train/fast_train.py (e.g. --epochs 6)."
    args, args.train_args = ap.parse_known_args(argv)
    if args.learner_only:
        args.rho, args.coco_seeds, args.no_learner = [], 0, False
    if args.quick:
        args.rho, args.seeds, args.more_seeds, args.no_learner = [0.9], 1, 1, True
        args.size = min(args.size, QUICK_SIZE)
        args.coco_seeds = 0
        args.variants = list(QUICK_VARIANTS)
        if "--epochs" not in args.train_args:
            args.train_args += ["--epochs", str(QUICK_EPOCHS)]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.report:
        return report_from(args.report)
    args.work.mkdir(parents=True, exist_ok=True)
    start, load_before = time.time(), os.getloadavg()
    rhos = sorted(set(args.rho) | (set() if args.no_learner else {0.1}))
    data = {("imagenet-ab", r): make_data(args.work, r, args.size, args.sample_seed) for r in rhos}
    if args.coco_seeds:
        data[("coco-ab", args.coco_rho)] = make_data(
            args.work, args.coco_rho, args.coco_size, args.sample_seed, "coco-ab"
        )
    # the curve: every epoch unless the config sets its own evaluation interval
    curve = [] if "eval_every" in _trainer(args.config) else ["--eval-every", "1"]
    learner_job = {"rho": 0.1, "variant": "baseline", "seed": 0, "learner": True, "extra": curve}
    jobs = [] if args.no_learner else [learner_job]
    jobs += [
        {"rho": rho, "variant": v, "seed": s}
        for rho in args.rho
        for s in range(args.seeds)
        for v in args.variants
        if rho in ONLY_AT.get(v, (rho,))
    ]
    jobs += [
        {"kind": "coco-ab", "rho": args.coco_rho, "variant": v, "seed": s}
        for s in range(args.coco_seeds)
        for v in COCO_VARIANTS
    ]
    done = run_all(jobs, data, args)
    learner = [r for r in done if r.get("learner")]
    coco = [r for r in done if r.get("kind") == "coco-ab"]
    runs = [r for r in done if not r.get("learner") and r.get("kind") != "coco-ab"]
    more = [
        {"rho": rho, "variant": v, "seed": s}
        for rho in args.rho
        for v in sorted(close_pairs(runs, rho))
        for s in range(args.seeds, args.more_seeds)
    ]
    runs += run_all(more, data, args)
    probes = probe_all(runs, data, PROBE_RHO) if PROBE_RHO in args.rho and not args.quick else {}
    wall = time.time() - start
    report(runs, args.rho, coco, args.coco_rho, probes, learner[0] if learner else None)
    print(f"\n{len(runs) + len(learner) + len(coco)} runs in {wall / 60:.1f} min wall")
    if args.results:
        write_results(args, runs, coco, learner, probes, wall, load_before)


def report(
    runs: list[dict], rhos: list, coco: list, coco_rho: float, probes: dict, learner: dict | None
) -> None:
    """The tables of a sweep (also rebuilt from its JSON with --report)."""
    if runs:
        print(markdown(runs, rhos))
    if coco:
        print("\nCOCO-AB sample (multi-label, one point per class):")
        print(markdown(coco, [coco_rho], COCO_METRICS))
    if probes:
        print(f"\nlinear probes of the features at rho {PROBE_RHO} (val_ood halves):")
        print(probe_markdown(probes))
    if learner:
        curve = ", ".join(f"{p['epoch']}: {p['top1']:.3f}" for p in learner["curve"])
        print(f"\nlearner without a shortcut (rho 0.1, baseline): val_ood by epoch {curve}")


def report_from(path: Path) -> None:
    """--report: the tables of a finished sweep, from its JSON."""
    record = json.loads(path.read_text())
    coco = [r for r in record["runs"] if r.get("kind") == "coco-ab"]
    runs = [r for r in record["runs"] if r.get("kind") != "coco-ab"]
    rhos = sorted({r["rho"] for r in runs})
    probes = (record.get("probes") or {}).get("by_variant") or {}
    coco_rho = record["settings"]["coco_rho"]
    report(runs, rhos, coco, coco_rho, probes, record.get("learner"))


def write_results(
    args: argparse.Namespace,
    runs: list[dict],
    coco: list[dict],
    learner: list[dict],
    probes: dict,
    wall: float,
    load_before: tuple,
) -> None:
    def block(mine: list[dict], variants, metrics: tuple) -> dict:
        primary = metrics[1][0]
        return {
            "summary": summarise(mine, metrics),
            "vs_baseline": {
                v: paired(mine, v, primary, metrics) for v in variants if v != "baseline"
            },
        }

    record = {
        "what": "baseline vs LUAB on the bundled shortcut sample (train/fast_train.py)",
        "settings": {
            **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "variants": {v: VARIANTS[v] for v in args.variants},
            "trainer_config": json.loads(Path(args.config).read_text()),
            "coco_trainer_config": json.loads(COCO_CONFIG.read_text()),
        },
        "machine": {**machine(), "loadavg_before": load_before},
        "wall_s": wall,
        "learner": learner[0] if learner else None,
        "by_rho": {
            str(rho): block([r for r in runs if r["rho"] == rho], args.variants, METRICS)
            for rho in args.rho
        },
        "coco": block(coco, COCO_VARIANTS, COCO_METRICS) if coco else None,
        "probes": {"rho": PROBE_RHO, "by_variant": probes} if probes else None,
        "runs": runs + coco,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(record, indent=1) + "\n")
    if runs:
        plot(runs, args.rho, args.results.with_suffix(".png"))


if __name__ == "__main__":
    main()
