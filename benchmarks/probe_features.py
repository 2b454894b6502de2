"""Linear probes: what a trained model's features encode, object or background.

On val_ood of the shortcut sample the background family is drawn independently of the class,
so a probe can ask the two questions apart. For each run's final checkpoint the backbone's
feature map of every val_ood image (centre crop, the run's evaluation resolution) is pooled
three ways: over the whole map (what the classifier sees), over the cells whose centre lies in
the object's box, and over the other cells. Multinomial logistic regressions fitted on half the
images and scored on the other half then read out the class and the background family, and a
linear regression the object's position (its box centre in the crop, R²).

    .venv/bin/python benchmarks/probe_features.py out/train_sample/runs/rho0.9-*-seed0

A point head that makes the features encode *where* the object is (position R² up) but not
*what* it is (class from the object's cells unchanged) explains why it leaves the classifier
on the background.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train.data import FolderSplit  # noqa: E402
from train.fast_train import in_object, prepare_images  # noqa: E402
from train.models import LuabNet, make_backbone  # noqa: E402


def load_net(run: Path) -> tuple[LuabNet, dict]:
    """The run's model as trained (its heads' shapes read from the saved weights)."""
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    cfg, weights = state["config"], state["model"]
    head = weights.get("point_head.weight")
    n_points = head.shape[0] if cfg["point_head"] == "soft-argmax" else head.shape[0] // 2
    net = LuabNet(
        make_backbone(cfg["model"]),
        weights["classifier.weight"].shape[0],
        n_points,
        weights["attention_head.weight"].shape[0],
        attention_pool=cfg["att_pool"],
        point_head=cfg["point_head"],
    )
    net.load_state_dict(weights)
    return net.eval(), cfg


@torch.no_grad()
def pooled_features(net: LuabNet, split: FolderSplit) -> dict[str, torch.Tensor]:
    """(N, C) features pooled over the whole map, the object's cells, the other cells; and
    (N, 4) each image's crop box."""
    out: dict[str, list] = {"global": [], "object": [], "background": [], "crops": []}
    for batch in split:
        features = net.backbone(prepare_images(batch.images, channels_last=True)).float()
        n, _, h, w = features.shape
        inside = _cells_in_object(h, w, batch.boxes, split.object_boxes[batch.indices])
        weights = inside.view(n, 1, h, w).float()
        out["global"].append(features.mean((2, 3)))
        out["object"].append(_masked_mean(features, weights))
        out["background"].append(_masked_mean(features, 1 - weights))
        out["crops"].append(batch.boxes)
    return {k: torch.cat(v) for k, v in out.items()}


def _cells_in_object(h: int, w: int, crops: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """(N, h*w) bool: the feature cell's centre, mapped back through the crop, is in the box."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    centres = torch.stack([(xs.flatten() + 0.5) / w, (ys.flatten() + 0.5) / h], 1)
    n, cells = len(crops), h * w
    hits = in_object(
        centres.repeat(n, 1),
        crops.repeat_interleave(cells, 0),
        torch.zeros(n * cells, dtype=torch.bool),
        objects.repeat_interleave(cells, 0),
    )
    return hits.view(n, cells)


def _masked_mean(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over the weighted cells; the whole map's mean where no cell is selected."""
    total = weights.sum((2, 3))
    masked = (features * weights).sum((2, 3)) / total.clamp(min=1)
    return torch.where(total > 0, masked, features.mean((2, 3)))


def probe_accuracy(x: torch.Tensor, y: torch.Tensor, steps: int = 200) -> float:
    """Logistic regression fitted on the even images, accuracy on the odd ones."""
    fit, test = slice(0, None, 2), slice(1, None, 2)
    x = _standardised(x, fit)
    lin = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    _fit(lin, x[fit], lambda out: torch.nn.functional.cross_entropy(out, y[fit]), steps)
    with torch.no_grad():
        return float((lin(x[test]).argmax(1) == y[test]).float().mean())


def probe_r2(x: torch.Tensor, target: torch.Tensor, steps: int = 200) -> float:
    """Ridge-like linear regression fitted on the even images, R² on the odd ones."""
    fit, test = slice(0, None, 2), slice(1, None, 2)
    x = _standardised(x, fit)
    lin = torch.nn.Linear(x.shape[1], target.shape[1])
    _fit(lin, x[fit], lambda out: ((out - target[fit]) ** 2).mean(), steps)
    with torch.no_grad():
        residual = ((lin(x[test]) - target[test]) ** 2).sum()
        spread = ((target[test] - target[test].mean(0)) ** 2).sum()
        return float(1 - residual / spread)


def _standardised(x: torch.Tensor, fit: slice) -> torch.Tensor:
    mean, std = x[fit].mean(0), x[fit].std(0).clamp(min=1e-6)
    return (x - mean) / std


def _fit(lin: torch.nn.Linear, x: torch.Tensor, loss_of, steps: int) -> None:
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=steps, line_search_fn="strong_wolfe")
    decay = 1e-3  # a little L2: 128 features, 2,000 images

    def closure():
        opt.zero_grad()
        loss = loss_of(lin(x)) + decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)


def object_centres(split: FolderSplit, crops: torch.Tensor) -> torch.Tensor:
    """(N, 2) the object's box centre in crop coordinates (what a point head regresses)."""
    boxes = split.object_boxes
    centre = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    size = crops[:, 2:] - crops[:, :2]
    return (centre - crops[:, :2]) / size


def load_split(split_dir: Path, res: int) -> tuple[FolderSplit, torch.Tensor]:
    """The split (decoded once, shared by every run probed at this resolution) and each
    image's background family."""
    with open(split_dir / "labels.csv", newline="") as fh:
        background = torch.tensor([int(r["background"]) for r in csv.DictReader(fh)])
    return FolderSplit(split_dir, 256, res), background


def probe_run(run: Path, split_dir: Path, splits: dict) -> dict:
    """The probes of one run on the split at its evaluation resolution (`splits` caches the
    decoded splits between runs)."""
    net, cfg = load_net(run)
    key = (Path(split_dir), cfg["val_res"])
    if key not in splits:
        splits[key] = load_split(*key)
    split, background = splits[key]
    torch.manual_seed(0)
    feats = pooled_features(net, split)
    labels = split.labels
    return {
        "run": run.name,
        "class_from_global": probe_accuracy(feats["global"], labels),
        "class_from_object_cells": probe_accuracy(feats["object"], labels),
        "class_from_background_cells": probe_accuracy(feats["background"], labels),
        "background_from_global": probe_accuracy(feats["global"], background),
        "position_r2_from_global": probe_r2(feats["global"], object_centres(split, feats["crops"])),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="+", help="run folders holding checkpoint.pt")
    ap.add_argument("--split", type=Path, default=None, help="default: the run's val_ood")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args(argv)
    results, splits = [], {}
    for run in args.runs:
        results.append(probe_run(run, args.split or _val_ood_of(run), splits))
        print(json.dumps(results[-1]))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


def _val_ood_of(run: Path) -> Path:
    """The val_ood folder the run evaluated on (from its saved command line)."""
    cmd = json.loads((run / "command.json").read_text())["command"]
    return Path(next(p for p in cmd if p.endswith("val_ood")))


if __name__ == "__main__":
    main()
