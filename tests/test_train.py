"""train/fast_train.py: losses, heads, baseline equivalence, masking, resume, evaluation.

Tiny models on synthetic batches of the batch contract, on the CPU: the whole file runs in
seconds and needs no .beton.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `train` is not installed

from luab_data.loaders.contract import Batch  # noqa: E402
from train import fast_train as ft  # noqa: E402
from train.data import FolderSplit, SyntheticLoader, json_member  # noqa: E402
from train.models import BasicBlock, LuabNet, ResNet, soft_argmax  # noqa: E402

RES, CLASSES = 32, 5
RT = ft.Runtime(rank=0, world=1, device=torch.device("cpu"), amp=None, channels_last=False)
INFO = ft.DataInfo(num_classes=CLASSES, multilabel=False, n_points=1, map_channels=2)


def _net(seed: int = 0, **heads) -> LuabNet:
    torch.manual_seed(seed)
    backbone = ResNet(BasicBlock, (1, 1), (8, 16), (1, 2), stem="small")  # stride 4
    return LuabNet(backbone, CLASSES, **{"n_points": 1, "map_channels": 2, **heads})


def _batch(seed: int = 0, n: int = 16) -> Batch:
    loader = SyntheticLoader(
        n, RES, num_classes=CLASSES, map_size=(RES // 4,) * 2, seed=seed, n_distinct=1, steps=1
    )
    return loader.batches[0]


def _cfg(**kw) -> ft.Config:
    return replace(ft.parse_args([]), **kw)


def _terms(net: LuabNet, batch: Batch, cfg: ft.Config) -> dict[str, float]:
    out = net(batch.images, points=cfg.lam > 0, attention=cfg.mu > 0)
    return {k: float(v.detach()) for k, v in ft.luab_loss(out, batch, cfg, False).items()}


@pytest.mark.parametrize(
    ("point_loss", "att_loss"), [("l1", "kl"), ("smooth_l1", "bce"), ("l2", "kl")]
)
def test_one_step_lowers_every_term(point_loss: str, att_loss: str) -> None:
    net, batch = _net(), _batch()
    cfg = _cfg(
        lam=1.0, mu=1.0, point_loss=point_loss, att_loss=att_loss, momentum=0.0, weight_decay=0.0
    )
    opt = ft.make_optimizer(net, cfg)
    net.train()
    before = _terms(net, batch, cfg)
    ft.train_step(net, opt, batch, cfg, INFO, RT, lr=0.05)
    after = _terms(net, batch, cfg)
    assert set(before) == {"ce", "point", "attention", "loss"}
    for key in before:
        assert after[key] < before[key], (key, before[key], after[key])


def test_zero_weights_is_exactly_the_baseline() -> None:
    """λ = μ = 0: the loss is the label-smoothed cross-entropy bit for bit, and training
    follows a model that has no extra heads at all, weight for weight."""
    batch, cfg = _batch(), _cfg(lam=0.0, mu=0.0)
    luab, plain = _net(), _net(n_points=0, map_channels=0)
    for net in (luab, plain):
        net.point_head and net.point_head.requires_grad_(False)
        net.attention_head and net.attention_head.requires_grad_(False)
    out = luab(batch.images)
    terms = ft.luab_loss(out, batch, cfg, False)
    assert set(terms) == {"ce", "loss"}
    expected = F.cross_entropy(plain(batch.images)["logits"], batch.labels, label_smoothing=0.1)
    assert torch.equal(terms["loss"], expected)
    opts = [ft.make_optimizer(n, cfg) for n in (luab, plain)]
    for _ in range(3):
        losses = [
            ft.train_step(n, o, batch, cfg, INFO, RT, lr=0.1)["loss"]
            for n, o in zip((luab, plain), opts, strict=True)
        ]
        assert torch.equal(losses[0], losses[1])
    plain_state = plain.state_dict()
    for name, value in plain_state.items():
        assert torch.equal(luab.state_dict()[name], value), name


def test_invalid_points_give_no_gradient() -> None:
    """Weight-0 points (cropped away, unclicked) add nothing, even with NaN targets."""
    batch = _batch()
    weights = batch.point_weights.clone()
    weights[::3] = 0
    assert 0 < weights.sum() < len(weights)
    points = batch.points.clone()
    points[weights == 0] = float("nan")
    batch = batch._replace(points=points, point_weights=weights)
    net = _net()
    out = net(batch.images, attention=False)
    out["points"].retain_grad()
    loss = ft.point_loss(out["points"], batch.points, batch.point_weights, "l1")
    loss.backward()
    grad = out["points"].grad[:, 0]
    assert torch.isfinite(grad).all()
    assert torch.all(grad[weights == 0] == 0)
    assert torch.all(grad[weights == 1].abs().sum(1) > 0)
    # the head's gradient is that of the valid samples alone
    head_grad = net.point_head.weight.grad.clone()
    net.zero_grad()
    out = net(batch.images, attention=False)
    keep = weights == 1
    n_valid = keep.sum()
    loss = F.l1_loss(out["points"][keep, 0], batch.points[keep], reduction="sum") / n_valid
    loss.backward()
    torch.testing.assert_close(net.point_head.weight.grad, head_grad)


def test_no_valid_target_gives_zero_loss() -> None:
    batch = _batch()
    empty = batch._replace(
        point_weights=torch.zeros_like(batch.point_weights), maps=torch.zeros_like(batch.maps)
    )
    out = _net()(empty.images)
    terms = ft.luab_loss(out, empty, _cfg(lam=1.0, mu=1.0), False)
    terms = {k: v.detach() for k, v in terms.items()}
    assert float(terms["point"]) == 0.0 and float(terms["attention"]) == 0.0
    assert float(terms["loss"]) == float(terms["ce"])


def test_attention_loss_prefers_the_target() -> None:
    """KL and BCE are lowest for logits that put the mass where the map does."""
    maps = torch.zeros(2, 1, 4, 4)
    maps[0, 0, 1, 2] = maps[1, 0, 3, 0] = 1.0
    good, bad = (maps * 10 - 5), (maps.flip(-1) * 10 - 5)
    for kind in ("kl", "bce"):
        assert ft.attention_loss(good, maps, kind) < ft.attention_loss(bad, maps, kind)
    smaller = F.avg_pool2d(good, 2)  # a coarser prediction is resized to the target grid
    assert torch.isfinite(ft.attention_loss(smaller, maps, "kl"))


def _run(tmp: Path, name: str, *extra: str) -> list[dict]:
    out = tmp / name
    ft.main(
        [
            "--synthetic",
            "--model",
            "resnet_small",
            "--num-classes",
            str(CLASSES),
            "--batch-size",
            "8",
            "--min-res",
            str(RES),
            "--max-res",
            str(RES),
            "--synthetic-steps",
            "3",
            "--epochs",
            "3",
            "--lr",
            "0.1",
            "--lr-peak-epoch",
            "1",
            "--lam",
            "1",
            "--mu",
            "1",
            "--ema",
            "0.9",
            "--log-every",
            "1",
            "--quiet",
            "--out",
            str(out),
            *extra,
        ]
    )
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _losses(records: list[dict], epoch: int) -> list[float]:
    return [r["loss"] for r in records if r["event"] == "train" and r["epoch"] == epoch]


def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    whole = _run(tmp_path, "whole")
    _run(tmp_path, "first", "--stop-after-epoch", "2")
    resumed = _run(tmp_path, "resumed", "--resume", str(tmp_path / "first" / "checkpoint.pt"))
    assert not _losses(resumed, 0) and not _losses(resumed, 1)
    assert _losses(resumed, 2) == _losses(whole, 2)  # exactly: same weights, moments, data
    ema_whole = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)["ema"]
    ema_res = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["ema"]
    for key, value in ema_whole.items():
        assert torch.equal(value, ema_res[key]), key


def test_schedule_and_resolution() -> None:
    cfg = _cfg(
        epochs=10,
        lr=1.0,
        lr_peak_epoch=2,
        min_res=160,
        max_res=192,
        start_ramp=5,
        end_ramp=8,
        res_step=32,
    )
    assert ft.lr_at(0, cfg) == pytest.approx(1e-4)
    assert ft.lr_at(1, cfg) == pytest.approx(0.5, abs=1e-3)
    assert ft.lr_at(2, cfg) == 1.0 and ft.lr_at(6, cfg) == pytest.approx(0.5)
    assert ft.lr_at(10, cfg) == 0.0
    assert [ft.resolution(e, cfg) for e in range(10)] == [160] * 6 + [160, 192, 192, 192]
    assert ft.resolution(3, _cfg(min_res=64, max_res=96)) == 96  # no ramp: max_res


def test_localisation_helpers() -> None:
    maps = torch.zeros(2, 4, 8)
    maps[0, 1, 6] = maps[1, 3, 0] = 1
    pts = ft.peak_point(maps)
    torch.testing.assert_close(pts, torch.tensor([[6.5 / 8, 1.5 / 4], [0.5 / 8, 3.5 / 4]]))
    crop = torch.tensor([[0.5, 0.0, 1.0, 1.0]] * 2)  # right half of the image
    flips = torch.tensor([False, True])
    obj = torch.tensor([[0.8, 0.3, 1.0, 0.5], [0.95, 0.8, 1.0, 1.0]])
    # sample 0: x = 0.5 + 0.8125 * 0.5 = 0.906 in [0.8, 1]; sample 1 mirrored: 1 - 0.0625
    assert ft.in_object(pts, crop, flips, obj).tolist() == [True, True]
    assert ft.in_object(pts, crop, ~flips, obj).tolist() == [False, False]  # 0.59, 0.53
    # the pointing game's margin, a share of the crop's width (0.5 here): 0.59 is 0.21 left
    # of box 0; sample 1's x 0.53 lies 0.42 left of box 1
    assert ft.in_object(pts, crop, ~flips, obj, margin=0.5).tolist() == [True, False]


def test_mean_average_precision() -> None:
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.1, 0.8], [0.3, 0.2]])
    targets = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]])
    # class 0: hits at ranks 1 and 4 -> (1/1 + 2/4) / 2; class 1: hits at ranks 1, 2 -> 1
    expected = ((1 + 2 / 4) / 2 + 1.0) / 2
    assert ft.mean_average_precision(scores, targets) == pytest.approx(expected)


def test_soft_argmax_finds_a_peak_and_averages_two() -> None:
    logits = torch.full((1, 2, 4, 8), -1e4)
    logits[0, 0, 1, 6] = 0.0  # one peak: cell (row 1, column 6)
    logits[0, 1, 0, 0] = logits[0, 1, 3, 7] = 0.0  # two equal peaks: their midpoint
    pts = soft_argmax(logits)
    torch.testing.assert_close(pts[0, 0], torch.tensor([6.5 / 8, 1.5 / 4]))
    torch.testing.assert_close(pts[0, 1], torch.tensor([0.5, 0.5]))


def test_soft_argmax_head_trains_and_flips() -> None:
    net = _net(point_head="soft-argmax")
    batch, cfg = _batch(), _cfg(lam=1.0, momentum=0.0, weight_decay=0.0, tta=True)
    opt = ft.make_optimizer(net, cfg)
    before = _terms(net.train(), batch, cfg)["point"]
    ft.train_step(net, opt, batch, cfg, INFO, RT, lr=0.05)
    assert _terms(net, batch, cfg)["point"] < before
    net.eval()
    a = ft.predict(net, batch.images, cfg, RT)["point"]
    b = ft.predict(net, batch.images.flip(3), cfg, RT)["point"]
    torch.testing.assert_close(a[:, 0], 1 - b[:, 0])


def test_predict_with_flip_is_mirror_symmetric() -> None:
    net = _net().eval()
    images = _batch().images
    cfg = _cfg(lam=1.0, mu=1.0, tta=True)
    a, b = ft.predict(net, images, cfg, RT), ft.predict(net, images.flip(3), cfg, RT)
    torch.testing.assert_close(a["logits"], b["logits"])
    torch.testing.assert_close(a["attention"], b["attention"].flip(-1))
    torch.testing.assert_close(a["point"][:, 0], 1 - b["point"][:, 0])


def test_folder_split_uses_the_training_label_order(tmp_path: Path) -> None:
    """Sample splits are numbered like the .beton (sorted wnids), with object boxes."""
    from luab_data.sample.generate import SampleSpec, generate_sample

    generate_sample(tmp_path, SampleSpec(size=10, heldout=20), processes=1)
    split = FolderSplit(tmp_path / "val_ood", batch_size=8, image_size=24)
    rows = (tmp_path / "val_ood" / "labels.csv").read_text().splitlines()[1:]
    wnids = sorted({r.split(",")[2] for r in rows})
    assert split.labels.tolist() == [wnids.index(r.split(",")[2]) for r in rows]
    batches = list(split)
    assert sum(len(b.labels) for b in batches) == len(rows) == len(split.object_boxes)
    first = batches[0]
    assert first.images.shape == (8, 3, 24, 24) and first.images.dtype == torch.uint8
    boxes = split.object_boxes.numpy()
    assert np.all((boxes >= 0) & (boxes <= 1)) and np.all(boxes[:, 2:] > boxes[:, :2])
    evalset = ft.EvalSet("ood", split, split.object_boxes)
    metrics = ft.evaluate(_eval_net(), evalset, _cfg(lam=1.0, mu=1.0), INFO, RT)
    assert metrics["n"] == len(rows) and 0 <= metrics["top1"] <= 1
    assert {"loc_cam", "loc_point", "loc_attention", "pointing_cam"} <= set(metrics)
    assert metrics["pointing_cam"] >= metrics["loc_cam"]


def _eval_net() -> LuabNet:
    torch.manual_seed(0)
    backbone = ResNet(BasicBlock, (1, 1), (8, 16), (1, 2), stem="small")
    return LuabNet(backbone, 10)


def test_folder_split_multi_hot_for_coco(tmp_path: Path) -> None:
    """A COCO-AB sample split: multi-hot over the 80 COCO names, the main class among them."""
    from luab_data.sample.generate import SampleSpec, generate_sample
    from luab_data.sources.coco_categories import COCO_80_NAMES

    generate_sample(tmp_path, SampleSpec(kind="coco-ab", size=10, heldout=20), processes=1)
    split = FolderSplit(
        tmp_path / "val_id",
        batch_size=8,
        image_size=24,
        classes=list(COCO_80_NAMES),
        multilabel=True,
    )
    sample = json.loads((tmp_path / "sample.json").read_text())
    coco_of = {c["index"]: COCO_80_NAMES.index(c["coco_name"]) for c in sample["classes"]}
    rows = (tmp_path / "val_id" / "labels.csv").read_text().splitlines()[1:]
    assert split.labels.shape == (len(rows), 80)
    for row, hot in zip(rows, split.labels, strict=True):
        assert hot[coco_of[int(row.split(",")[3])]] == 1  # the 'class' column: main object
        assert 1 <= int(hot.sum()) <= 10


# ---------------------------------------------------------------- the command line


def _fails(capsys, argv: list[str]) -> str:
    """Run the trainer's entry point; return its one-line error (it must exit 2 or say so)."""
    with pytest.raises(SystemExit) as caught:
        ft.main(argv)
    err = capsys.readouterr().err.strip() or str(caught.value.code)
    assert caught.value.code != 0 and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--amp", "bf61"], "argument --amp: invalid choice: 'bf61'"),
        (["--loader", "tf"], "argument --loader: invalid choice: 'tf'"),
        (["--point-loss", "l3"], "argument --point-loss: invalid choice"),
        (["--att-loss", "mse"], "argument --att-loss: invalid choice"),
        (["--channels-last", "yes"], "argument --channels-last: invalid choice"),
        (["--model", "resnet51"], "argument --model: 'resnet51': choose from"),
        (["--model", "timm:"], "argument --model: 'timm:'"),
    ],
)
def test_string_options_are_validated(capsys, argv, says) -> None:
    assert says in _fails(capsys, ["--synthetic", *argv])


def test_choices_from_a_config_file_are_validated(capsys, tmp_path: Path) -> None:
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"amp": "bf61"}))
    assert "amp 'bf61' (from --config): choose from auto, bf16, off" in _fails(
        capsys, ["--config", str(config), "--synthetic"]
    )


def test_a_missing_train_file_is_one_line(capsys, tmp_path: Path) -> None:
    assert "--train is required" in _fails(capsys, ["--out", str(tmp_path)])
    missing = tmp_path / "absent.beton"
    assert f"{missing}: no such file" in _fails(capsys, ["--train", str(missing)])
    assert not (tmp_path / "metrics.jsonl").exists()  # nothing built before the check


def test_class_names_come_from_the_manifest_head(tmp_path: Path) -> None:
    """Only the manifest's ``metadata`` member is parsed: a manifest whose ``keys`` list is
    cut short (unreadable as a whole) still gives the class names."""
    beton = tmp_path / "train.beton"
    beton.write_bytes(b"")
    head = {
        "format": "luab-beton",
        "checksums": {"samples_crc32": "A" * 200_000},
        "metadata": {"classes": ["n01", "n02", "n03"], "source_kind": "imagenet-ab"},
    }
    text = json.dumps(head, indent=2)[:-2] + ',\n  "keys": ["k0", "k1", "k2'  # cut
    (tmp_path / "train.beton.json").write_text(text)
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert ft.train_classes(_cfg(train=str(beton))) == ["n01", "n02", "n03"]
    with pytest.raises(ValueError):  # a member after metadata would need the cut part
        json_member(tmp_path / "train.beton.json", "absent", chunk=64)


def test_timm_backbone_trains_one_step() -> None:
    """``--model timm:resnet18``: a timm trunk under the LUAB heads takes one SGD step on
    synthetic input with every loss term: the stem and every head move, and the same batch's
    loss falls. (timm zero-initialises each block's last BatchNorm, so the branches inside the
    blocks get no gradient at the first step.)"""
    pytest.importorskip("timm")
    cfg = _cfg(model="timm:resnet18", lam=1.0, mu=1.0, momentum=0.0, weight_decay=0.0)
    torch.manual_seed(0)
    net = ft.build_model(cfg, INFO)
    assert net.stride == 32
    loader = SyntheticLoader(
        4, 64, num_classes=CLASSES, map_size=(2, 2), seed=0, steps=1, n_distinct=1
    )
    batch = next(iter(loader))
    opt = ft.make_optimizer(net, cfg)
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    terms = ft.train_step(net, opt, batch, cfg, INFO, RT, lr=0.05)
    assert set(terms) == {"ce", "point", "attention", "loss"}
    assert all(torch.isfinite(v) for v in terms.values())
    moved = {name for name, p in net.named_parameters() if not torch.equal(before[name], p)}
    for part in ("backbone.net.conv1.", "classifier.", "point_head.", "attention_head."):
        assert any(name.startswith(part) for name in moved), part
    assert _terms(net.train(), batch, cfg)["loss"] < float(terms["loss"])
