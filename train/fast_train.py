"""fast_train.py — a lean multitask LUAB trainer, one file to read top to bottom.

    loss = CE(logits, y)  +  λ · point_loss(point head, click point)  +  μ · map_loss(attention
    head, cropped attention map)

The classifier and the paper's point head sit on globally pooled features; the attention head
predicts the loader's cropped attention map (clicks, dwell-weighted trace) at feature-map
resolution. λ = μ = 0 is the plain baseline through exactly the same code. Any loader of the
batch contract (docs/ARCHITECTURE.md, contract 3) feeds it: FFCV (default), DALI, the PyTorch
reference loader, or ``--synthetic`` device-resident tensors (the throughput ceiling).

    python train/fast_train.py --config luab_data/pipelines/train/sample-cpu.json \
        --train out/s.beton --val out/sample/val_id out/sample/val_ood --mu 1  # labels.csv split
    torchrun --nproc_per_node 8 train/fast_train.py \
        --config luab_data/pipelines/train/imagenet-rn50.json --train in.beton --val val.beton \
        --lam 1 --compile
    python train/fast_train.py --synthetic --model resnet50 --batch-size 256 --epochs 3

Outputs go to ``--out``: metrics.jsonl (one JSON record per event: start, train, epoch, eval,
final) and checkpoint.pt (written every epoch; ``--resume`` continues at the next epoch with
the same data order, crops, weights and optimiser state as an uninterrupted run).

Recipe (facts from FFCV's ImageNet example): SGD + momentum 0.9, no weight decay on
BatchNorm/bias, label smoothing 0.1, a learning rate that rises linearly from ~0 to its peak at
``lr_peak_epoch`` and falls linearly to 0 at the last epoch, updated every step; progressive
resizing from ``min_res`` to ``max_res`` between ``start_ramp`` and ``end_ramp`` epochs;
test-time flip averaging. On a GPU: bf16 autocast and channels-last.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from luab_data.loaders.contract import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    Batch,
    FieldNames,
    make_loader,
)
from train.data import FolderSplit, SyntheticLoader, json_member  # noqa: E402
from train.models import BACKBONES, LuabNet, make_backbone  # noqa: E402

# ============================================================================== configuration


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A config field with its --help text and, for a string option, its valid values (lists
    need a factory)."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Config:
    # data
    train: str = _opt("", "training .beton (image, label, map, point fields)")
    val: list = _opt([], "[name=]path, repeatable: a sample split folder (labels.csv) or a .beton")
    loader: str = _opt(
        "ffcv", "loader of .beton files (training and evaluation)", ("ffcv", "dali", "torch")
    )
    synthetic: bool = _opt(False, "random device-resident batches instead of --train (ceiling)")
    synthetic_steps: int = _opt(100, "steps per epoch with --synthetic")
    num_classes: int = _opt(0, "0: from the data (1000 with --synthetic)")
    label_field: str = _opt("label", "label field of the .beton ('labels' for COCO multi-hot)")
    map_field: str = _opt("map", "attention-map field ('' if absent)")
    point_field: str = _opt("point", "point field ('' if absent)")
    workers: int = _opt(8, "loader threads / workers per rank")
    batch_size: int = _opt(256, "per rank")
    min_res: int = _opt(160, "progressive resizing: first training resolution")
    max_res: int = _opt(192, "progressive resizing: last training resolution")
    start_ramp: int = _opt(0, "epoch where the resolution starts to grow")
    end_ramp: int = _opt(0, "epoch where it reaches max_res")
    res_step: int = _opt(32, "resolutions are rounded to a multiple of this")
    val_res: int = _opt(256, "evaluation resolution (centre crop)")
    crop_scale: list = _opt([0.08, 1.0], "RandomResizedCrop area range")
    map_size: int = _opt(0, "attention target side; 0: max_res // model stride")
    # model
    model: str = _opt("resnet50", "resnet_small | resnet18 | resnet50 | timm:<name>")
    compile: bool = _opt(False, "torch.compile the training model")
    amp: str = _opt("auto", "auto: bf16 on CUDA", ("auto", "bf16", "off"))
    channels_last: str = _opt(
        "on", "channels-last is faster on CUDA and oneDNN CPUs", ("on", "off")
    )
    # loss
    label_smoothing: float = _opt(0.1, "cross-entropy label smoothing (multi-class)")
    lam: float = _opt(0.0, "λ: weight of the point loss (0: no point head)")
    mu: float = _opt(0.0, "μ: weight of the attention-map loss (0: no attention head)")
    point_loss: str = _opt("l1", "on valid points only", ("l1", "l2", "smooth_l1"))
    point_head: str = _opt(
        "pooled",
        "pooled: the paper's regression from globally pooled features; soft-argmax: a map "
        "per point on the feature map, its softmax's expected position",
        ("pooled", "soft-argmax"),
    )
    att_loss: str = _opt(
        "kl", "kl: the map as a distribution; bce: the map / its max", ("kl", "bce")
    )
    att_channels: list = _opt([], "map channels to predict (default all: 0 clicks, 1 trace)")
    att_pool: bool = _opt(
        False,
        "classifier pools features weighted by the predicted map "
        "(channel 0), not uniformly: an extension, off in the paper's recipe",
    )
    # optimisation
    epochs: int = _opt(16, "training epochs")
    lr: float = _opt(0.5, "peak learning rate")
    lr_peak_epoch: float = _opt(2.0, "epoch of the peak")
    momentum: float = _opt(0.9, "SGD momentum")
    weight_decay: float = _opt(5e-5, "weight decay (not on BatchNorm or biases)")
    ema: float = _opt(0.0, "EMA decay per step of the evaluated weights (0: off)")
    # evaluation
    tta: bool = _opt(True, "test-time horizontal-flip averaging")
    eval_every: int = _opt(0, "evaluate every N epochs (0: only after the last)")
    # run
    seed: int = _opt(0, "model init and data order/crops")
    out: str = _opt("out/runs/last", "folder of metrics.jsonl and checkpoint.pt")
    resume: str = _opt("", "checkpoint to resume from (epoch boundary)")
    stop_after_epoch: int = _opt(0, "stop after this epoch as if interrupted (0: run all)")
    log_every: int = _opt(50, "steps between train records in metrics.jsonl")
    threads: int = _opt(0, "torch CPU threads (0: torch's default)")
    quiet: bool = _opt(False, "no progress bar")


class _Parser(argparse.ArgumentParser):
    """Errors in one line (the usage of ~50 options would bury the message)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv: list[str] | None = None) -> Config:
    """``--config`` (YAML/JSON with Config's field names) sets defaults; flags override. A
    string option outside its choices, from either, is an error."""
    pre = _Parser(add_help=False)
    pre.add_argument(
        "--config", help="JSON/YAML of Config fields, or luab_data/pipelines/train/*.json"
    )
    known, _ = pre.parse_known_args(argv)
    parser = _Parser(description=__doc__.split("\n\n")[0], parents=[pre])
    for f in fields(Config):
        _add_option(parser, f)
    if known.config:
        parser.set_defaults(**_read_config(known.config))
    args = vars(parser.parse_args(argv))
    args.pop("config")
    for f in fields(Config):  # argparse checks the choices of flags, not of --config values
        choices = f.metadata["choices"]
        if choices and args[f.name] not in choices:
            parser.error(
                f"{f.name} {args[f.name]!r} (from --config): choose from {', '.join(choices)}"
            )
    return Config(**args)


def _add_option(parser: argparse.ArgumentParser, f: Any) -> None:
    flag, help_ = "--" + f.name.replace("_", "-"), f.metadata["help"]
    choices = f.metadata["choices"]
    default = f.default_factory() if callable(f.default_factory) else f.default
    if isinstance(default, bool):
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_)
    elif isinstance(default, list):
        kind = str if f.name == "val" else (int if f.name == "att_channels" else float)
        parser.add_argument(flag, type=kind, nargs="*", help=help_)
    elif f.name == "model":
        parser.add_argument(flag, type=_model_name, help=help_)
    else:
        parser.add_argument(flag, type=type(default), choices=choices, help=help_)
    parser.set_defaults(**{f.name: default})


def _model_name(name: str) -> str:
    """A project backbone or timm:<name> (whether timm knows the name is checked on use)."""
    if name in BACKBONES or (name.startswith("timm:") and len(name) > len("timm:")):
        return name
    raise argparse.ArgumentTypeError(f"{name!r}: choose from {', '.join(BACKBONES)} or timm:<name>")


def check_inputs(cfg: Config) -> None:
    """What a run needs before anything is built, each missing one a one-line exit."""
    if cfg.synthetic:
        return
    if not cfg.train:
        raise SystemExit(
            "fast_train.py: error: --train is required (a .beton built by "
            "`luab-data build`), or --synthetic for random batches"
        )
    for path in [cfg.train, *(spec.rpartition("=")[2] for spec in cfg.val)]:
        if not Path(path).exists():
            raise SystemExit(f"fast_train.py: error: {path}: no such file or folder")


# keys of a data recipe's loader section the trainer takes, and their Config names
_FROM_LOADER = {"batch_size": "batch_size", "workers": "workers", "scale": "crop_scale"}


def _read_config(path: str) -> dict[str, Any]:
    """Config values from a file: flat Config fields, or a recipe of luab_data/pipelines/ whose
    ``loader`` section (batch size, workers, crop scale) and optional ``trainer`` section
    (Config fields) apply, after those of the data recipe it names in ``recipe``."""
    data = _load_file(path)
    if not {"loader", "trainer", "recipe"} & set(data):
        values = data
    else:
        values = {}
        if "recipe" in data:
            from luab_data.recipes import load_recipe

            values.update(_loader_values(load_recipe(data["recipe"]).get("loader", {})))
        values.update(_loader_values(data.get("loader", {})))
        values.update(data.get("trainer", {}))
    unknown = set(values) - {f.name for f in fields(Config)}
    if unknown:
        raise SystemExit(f"{path}: unknown trainer settings {sorted(unknown)}")
    return values


def _load_file(path: str) -> dict[str, Any]:
    text = Path(path).read_text()
    if path.endswith(".json"):
        return json.loads(text)
    import yaml

    return yaml.safe_load(text) or {}


def _loader_values(loader: dict[str, Any]) -> dict[str, Any]:
    return {_FROM_LOADER[k]: v for k, v in loader.items() if _FROM_LOADER.get(k)}


# ============================================================================== devices, seeds


@dataclass
class Runtime:
    rank: int
    world: int
    device: torch.device
    amp: torch.dtype | None  # autocast dtype, None: full precision
    channels_last: bool


def setup_runtime(cfg: Config) -> Runtime:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; one process per GPU."""
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    on_gpu = device.type == "cuda"
    amp = torch.bfloat16 if cfg.amp == "bf16" or (cfg.amp == "auto" and on_gpu) else None
    channels_last = cfg.channels_last == "on"
    return Runtime(rank, world, device, amp, channels_last)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ============================================================================== data


@dataclass
class DataInfo:
    num_classes: int
    multilabel: bool
    n_points: int  # 0: no point field
    map_channels: int  # 0: no map field


def describe_data(cfg: Config) -> DataInfo:
    """Head sizes from the training .beton's fields (or from the config with --synthetic)."""
    if cfg.synthetic:
        return DataInfo(cfg.num_classes or 1000, False, 1, 2)
    from luab_data.beton.file import BetonFile  # the file's tables, no FFCV pipeline

    beton = BetonFile(cfg.train)
    handlers = beton.handlers
    if cfg.label_field not in handlers:
        raise SystemExit(
            f"{cfg.train}: no label field {cfg.label_field!r} (--label-field); "
            f"it has {', '.join(handlers)}"
        )
    label = handlers[cfg.label_field]
    multilabel = hasattr(label, "shape")  # a multi-hot NDArrayField, not an IntField
    if cfg.num_classes:
        num_classes = cfg.num_classes
    elif multilabel:
        num_classes = int(np.prod(label.shape))
    elif classes := train_classes(cfg):  # the manifest knows classes no sample may carry
        num_classes = len(classes)
    else:
        num_classes = int(beton.metadata(cfg.label_field).max()) + 1
    point, amap = handlers.get(cfg.point_field), handlers.get(cfg.map_field)
    n_points = int(np.prod(point.shape)) // 2 if point is not None else 0
    n_maps = int(amap.shape[0]) if amap is not None else 0
    info = DataInfo(num_classes, multilabel, n_points, n_maps)
    if (cfg.lam > 0 and not n_points) or (cfg.mu > 0 and not info.map_channels):
        raise SystemExit(
            f"{cfg.train}: no {cfg.point_field!r}/{cfg.map_field!r} field for "
            "the LUAB terms (--lam / --mu); build it with byproducts"
        )
    return info


def resolution(epoch: int, cfg: Config) -> int:
    """Progressive resizing (FFCV recipe): min_res until start_ramp, then linear to max_res at
    end_ramp, rounded to res_step."""
    if cfg.end_ramp <= cfg.start_ramp:  # no ramp
        return cfg.max_res
    if epoch <= cfg.start_ramp:
        return cfg.min_res
    if epoch >= cfg.end_ramp:
        return cfg.max_res
    res = np.interp(epoch, [cfg.start_ramp, cfg.end_ramp], [cfg.min_res, cfg.max_res])
    return int(round(res / cfg.res_step)) * cfg.res_step


def make_train_loader(
    cfg: Config, info: DataInfo, rt: Runtime, res: int, map_hw: tuple[int, int]
) -> Any:
    """A loader of the batch contract at training resolution ``res``: ``--loader`` through
    ``make_loader``. On a GPU the loader normalises there (in its own stream for FFCV and
    DALI); on the CPU images come as uint8 and are normalised after the transfer."""
    if cfg.synthetic:
        return SyntheticLoader(
            cfg.batch_size,
            res,
            num_classes=info.num_classes,
            map_size=map_hw,
            map_channels=info.map_channels,
            n_points=info.n_points,
            steps=cfg.synthetic_steps,
            seed=cfg.seed,
            device=rt.device,
            dtype=rt.amp or torch.float32,
        )
    names = FieldNames(
        label=cfg.label_field, map=cfg.map_field or None, point=cfg.point_field or None
    )
    return make_loader(
        cfg.loader,
        cfg.train,
        train=True,
        image_size=res,
        map_size=map_hw,
        scale=tuple(cfg.crop_scale),
        names=names,
        **_loader_knobs(cfg, rt),
    )


def _loader_knobs(cfg: Config, rt: Runtime) -> dict[str, Any]:
    """What the training and evaluation loaders share: batch, seed, workers, this rank's
    share, the device (and normalisation there, in the autocast dtype)."""
    on_gpu = rt.device.type == "cuda"
    return dict(
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        workers=cfg.workers,
        rank=rt.rank,
        world_size=rt.world,
        device=rt.device if on_gpu else None,
        normalize=on_gpu,
        image_dtype=rt.amp or torch.float32,
    )


@dataclass
class EvalSet:
    name: str
    loader: Iterable[Batch]
    object_boxes: torch.Tensor | None  # (N, 4) normalised, by sample index; None: no boxes


def train_classes(cfg: Config) -> list[str] | None:
    """Class names in label order from the training .beton's manifest (None if absent): its
    ``metadata`` member only, read from the head of the file, not the list of every sample's
    key that follows it."""
    from luab_data.beton.paths import manifest_path

    if cfg.synthetic or not cfg.train or not manifest_path(Path(cfg.train)).exists():
        return None
    manifest = manifest_path(Path(cfg.train))
    return (json_member(manifest, "metadata") or {}).get("classes")


def make_eval_sets(cfg: Config, info: DataInfo, rt: Runtime) -> list[EvalSet]:
    """``--val [name=]path``: a folder with labels.csv (has object boxes) or a .beton."""
    sets, classes = [], train_classes(cfg)
    for spec in cfg.val:
        name, _, path = spec.rpartition("=")
        name = name or Path(path).stem
        if Path(path, "labels.csv").exists():
            split = FolderSplit(
                path,
                cfg.batch_size,
                cfg.val_res,
                rank=rt.rank,
                world=rt.world,
                classes=classes,
                multilabel=info.multilabel,
            )
            sets.append(EvalSet(name, split, split.object_boxes))
            continue
        names = FieldNames(label=cfg.label_field, map=None, point=None)
        loader = make_loader(
            cfg.loader,
            path,
            train=False,
            image_size=cfg.val_res,
            names=names,
            **_loader_knobs(cfg, rt),
        )
        sets.append(EvalSet(name, loader, None))
    return sets


def to_device(batch: Batch, device: torch.device) -> Batch:
    return Batch(*(t if t is None else t.to(device, non_blocking=True) for t in batch))


_MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def prepare_images(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 -> normalised float in the model's layout; float input is already normalised."""
    if images.dtype == torch.uint8:
        mean, std = _MEAN.to(images.device), _STD.to(images.device)
        images = (images.float() - mean) / std
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return images.contiguous(memory_format=fmt)


# ============================================================================== model, optimiser


def build_model(cfg: Config, info: DataInfo) -> LuabNet:
    """Heads exist whatever λ, μ (same init for every run of a seed); an unused head is frozen
    so that DDP and the optimiser skip it."""
    n_maps = len(cfg.att_channels) if cfg.att_channels else info.map_channels
    net = LuabNet(
        make_backbone(cfg.model),
        info.num_classes,
        max(info.n_points, 1),
        n_maps or 1,
        attention_pool=cfg.att_pool,
        point_head=cfg.point_head,
    )
    net.point_head.requires_grad_(cfg.lam > 0)
    net.attention_head.requires_grad_(cfg.mu > 0)
    return net


def make_optimizer(net: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """SGD; no weight decay on BatchNorm parameters and biases (all the 1-D tensors)."""
    params = [p for p in net.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def lr_at(t: float, cfg: Config) -> float:
    """Learning rate at fractional epoch ``t``: linear ramp 1e-4·lr -> lr at lr_peak_epoch,
    then linear to 0 at the last epoch (FFCV's 'cyclic' schedule, interpolated per step)."""
    knots = [0.0, cfg.lr_peak_epoch, float(cfg.epochs)]
    return float(np.interp(t, knots, [1e-4 * cfg.lr, cfg.lr, 0.0]))


class EMA:
    """Exponential moving average of the weights (buffers copied): evaluated instead of the
    raw weights when enabled."""

    def __init__(self, net: nn.Module, decay: float) -> None:
        import copy

        self.net = copy.deepcopy(net).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        ema_params = list(self.net.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in net.parameters()], 1 - self.decay)
        for mine, theirs in zip(self.net.buffers(), net.buffers(), strict=True):
            mine.copy_(theirs)


# ============================================================================== losses


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, smoothing: float, multilabel: bool
) -> torch.Tensor:
    if multilabel:  # COCO: 80 independent binary decisions
        return F.binary_cross_entropy_with_logits(logits, labels.float())
    return F.cross_entropy(logits, labels, label_smoothing=smoothing)


def point_loss(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, kind: str
) -> torch.Tensor:
    """Mean over valid points (weight 1) of the per-point loss summed over x, y; no valid
    point gives 0. An invalid point's target is replaced by the (detached) prediction itself:
    zero loss and exactly zero gradient whatever its stored target (-1, -1 or NaN), without
    the host sync that boolean indexing costs on a GPU."""
    n = pred.shape[0]
    pred, target, weight = pred.reshape(n, -1, 2), target.reshape(n, -1, 2), weight.reshape(n, -1)
    valid = weight > 0
    target = torch.where(valid[..., None], target, pred.detach())
    if kind == "l1":
        per = F.l1_loss(pred, target, reduction="none")
    elif kind == "l2":
        per = F.mse_loss(pred, target, reduction="none")
    elif kind == "smooth_l1":
        per = F.smooth_l1_loss(pred, target, reduction="none", beta=0.1)
    else:
        raise ValueError(f"point loss {kind!r}")
    return per.sum() / valid.sum().clamp(min=1)


def attention_loss(logits: torch.Tensor, maps: torch.Tensor, kind: str) -> torch.Tensor:
    """Attention head logits (N, C, h, w) vs cropped maps (N, C, H, W) in [0, 1].

    Predictions are resized to the target grid when they differ (progressive resizing changes
    the feature map, not the loader's map size). Maps that are empty after the crop (no trace,
    click cropped away) carry no information and are left out.
    kl: the map as a distribution over cells, KL(map || softmax(logits)).
    bce: the map scaled to peak 1, per-cell binary cross-entropy."""
    if logits.shape[-2:] != maps.shape[-2:]:
        logits = F.interpolate(logits, size=maps.shape[-2:], mode="bilinear", align_corners=False)
    logits, maps = logits.flatten(2), maps.flatten(2)
    valid = maps.sum(-1) > 1e-6  # (N, C)
    if kind == "kl":
        target = maps / maps.sum(-1, keepdim=True).clamp(min=1e-12)
        per = (torch.xlogy(target, target) - target * F.log_softmax(logits, -1)).sum(-1)
    elif kind == "bce":
        target = maps / maps.amax(-1, keepdim=True).clamp(min=1e-12)
        per = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(-1)
    else:
        raise ValueError(f"attention loss {kind!r}")
    return torch.where(valid, per, 0.0).sum() / valid.sum().clamp(min=1)


def luab_loss(
    out: dict[str, torch.Tensor], batch: Batch, cfg: Config, multilabel: bool
) -> dict[str, torch.Tensor]:
    """``loss`` = ce + λ·point + μ·attention; a term with weight 0 is not even computed, so
    the baseline's loss is the cross-entropy itself, bit for bit."""
    terms = {
        "ce": classification_loss(
            out["logits"].float(), batch.labels, cfg.label_smoothing, multilabel
        )
    }
    loss = terms["ce"]
    if cfg.lam > 0:
        terms["point"] = point_loss(
            out["points"].float(), batch.points, batch.point_weights, cfg.point_loss
        )
        loss = loss + cfg.lam * terms["point"]
    if cfg.mu > 0:
        maps = batch.maps[:, cfg.att_channels] if cfg.att_channels else batch.maps
        terms["attention"] = attention_loss(out["attention"].float(), maps, cfg.att_loss)
        loss = loss + cfg.mu * terms["attention"]
    terms["loss"] = loss
    return terms


# ============================================================================== training


def train_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    batch: Batch,
    cfg: Config,
    info: DataInfo,
    rt: Runtime,
    lr: float,
) -> dict[str, torch.Tensor]:
    """One SGD step; returns the detached loss terms (no host sync here)."""
    for group in opt.param_groups:
        group["lr"] = lr
    images = prepare_images(batch.images, rt.channels_last)
    with torch.autocast(rt.device.type, rt.amp or torch.float32, enabled=rt.amp is not None):
        out = model(images, points=cfg.lam > 0, attention=cfg.mu > 0)
    terms = luab_loss(out, batch, cfg, info.multilabel)
    opt.zero_grad(set_to_none=True)
    terms["loss"].backward()
    opt.step()
    return {k: v.detach() for k, v in terms.items()}


def train_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loader: Any,
    epoch: int,
    cfg: Config,
    info: DataInfo,
    rt: Runtime,
    log: MetricsLog,
    ema: EMA | None,
) -> dict[str, float]:
    """One pass; the learning rate moves every step. Returns mean terms and images/s."""
    model.train()
    iters, seen, sums = len(loader), 0, {}
    bar = _progress(loader, iters, f"epoch {epoch}", cfg.quiet or rt.rank != 0)
    start = None
    for step, batch in enumerate(bar):
        start = start or time.perf_counter()  # from the first batch: loader start-up excluded
        batch = to_device(batch, rt.device)
        lr = lr_at(epoch + step / iters, cfg)
        terms = train_step(model, opt, batch, cfg, info, rt, lr)
        if ema is not None:
            ema.update(_unwrap(model))
        seen += batch.labels.shape[0]
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v
        if (step + 1) % cfg.log_every == 0 or step + 1 == iters:
            values = {k: round(float(v), 6) for k, v in terms.items()}
            res = batch.images.shape[-1]
            log.write("train", epoch=epoch, step=step, lr=round(lr, 8), res=res, **values)
            bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{lr:.3g}")
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
    took = time.perf_counter() - (start or time.perf_counter())
    means = {k: float(v) / max(iters, 1) for k, v in sums.items()}
    return {**means, "images_per_s": seen * rt.world / max(took, 1e-9), "epoch_s": took}


def _progress(it: Iterable, total: int, desc: str, disable: bool) -> Any:
    from tqdm import tqdm

    return tqdm(it, total=total, desc=desc, disable=disable, leave=False, dynamic_ncols=True)


def _unwrap(model: nn.Module) -> LuabNet:
    """The LuabNet under DDP and/or torch.compile wrappers."""
    while not isinstance(model, LuabNet):
        model = getattr(model, "module", None) or model._orig_mod
    return model


# ============================================================================== evaluation


@torch.no_grad()
def predict(net: LuabNet, images: torch.Tensor, cfg: Config, rt: Runtime) -> dict:
    """Logits, and the maps whose peak localises the object: class-activation map of the
    predicted class, attention head, point head; with --tta averaged with the mirrored view
    (mirrored back)."""
    views = [images, images.flip(3)] if cfg.tta else [images]
    with torch.autocast(rt.device.type, rt.amp or torch.float32, enabled=rt.amp is not None):
        outs = [net(v, points=cfg.lam > 0, attention=cfg.mu > 0) for v in views]
    logits = sum(o["logits"].float() for o in outs) / len(outs)
    pred = logits.argmax(1)  # multi-label: the top-scoring class
    res = {"logits": logits, "cam": _merge_views([net.cam(o["features"], pred) for o in outs])}
    if cfg.mu > 0:
        res["attention"] = _merge_views([o["attention"].float()[:, 0] for o in outs])
    if cfg.lam > 0:  # the predicted class's point (COCO has one per class)
        which = pred if outs[0]["points"].shape[1] > 1 else torch.zeros_like(pred)
        rows = torch.arange(len(pred), device=pred.device)
        pts = [o["points"].float()[rows, which] for o in outs]
        if len(pts) == 2:
            pts[1] = torch.stack([1 - pts[1][:, 0], pts[1][:, 1]], 1)
        res["point"] = sum(pts) / len(pts)
    return res


def _merge_views(maps: list[torch.Tensor]) -> torch.Tensor:
    """Mean of (N, h, w) maps of the plain and (second) mirrored view, mirrored back."""
    if len(maps) == 2:
        maps[1] = maps[1].flip(-1)
    return sum(maps) / len(maps)


def peak_point(maps: torch.Tensor) -> torch.Tensor:
    """(N, h, w) -> (N, 2) crop coordinates (x, y) of each map's maximum cell centre."""
    n, h, w = maps.shape
    flat = maps.reshape(n, -1).argmax(1)
    return torch.stack([(flat % w + 0.5) / w, (flat // w + 0.5) / h], 1).float()


# The pointing game's margin around the box (Zhang et al., 2018): 15 pixels of a 224-pixel
# evaluation crop, here as that share of each image's crop width
POINTING_MARGIN = 15 / 224


def in_object(
    points: torch.Tensor,
    crop: torch.Tensor,
    flips: torch.Tensor,
    objects: torch.Tensor,
    margin: float = 0.0,
) -> torch.Tensor:
    """Crop-coordinate points -> whole-image coordinates (undoing flip and crop); inside the
    object box (inclusive), grown on every side by `margin` times the crop's width?"""
    x = torch.where(flips, 1 - points[:, 0], points[:, 0])
    x = crop[:, 0] + x * (crop[:, 2] - crop[:, 0])
    y = crop[:, 1] + points[:, 1] * (crop[:, 3] - crop[:, 1])
    margin = margin * (crop[:, 2] - crop[:, 0])
    x0, y0, x1, y1 = (objects[:, i] for i in range(4))
    return (x >= x0 - margin) & (x <= x1 + margin) & (y >= y0 - margin) & (y <= y1 + margin)


def evaluate(net: LuabNet, data: EvalSet, cfg: Config, info: DataInfo, rt: Runtime) -> dict:
    """top-1 (mAP when multi-label) and, where object boxes exist, the share of images whose
    CAM peak / attention peak / predicted point falls inside the object box (``loc_*``) or
    within 15/224 of the crop's width of it (``pointing_*``, the pointing game)."""
    net.eval()
    sums: dict[str, float] = {}
    scores, targets = [], []
    for batch in data.loader:
        batch = to_device(batch, rt.device)
        res = predict(net, prepare_images(batch.images, rt.channels_last), cfg, rt)
        n = batch.labels.shape[0]
        _add(sums, "n", n)
        if info.multilabel:
            scores.append(res["logits"].cpu())
            targets.append(batch.labels.cpu())
        else:
            _add(sums, "top1", (res["logits"].argmax(1) == batch.labels).sum())
        if data.object_boxes is not None:
            objects = data.object_boxes.to(rt.device)[batch.indices]
            for key in ("cam", "attention", "point"):
                if key in res:
                    pts = res[key] if key == "point" else peak_point(res[key])
                    hits = in_object(pts, batch.boxes, batch.flips, objects)
                    _add(sums, f"loc_{key}", hits.sum())
                    near = in_object(pts, batch.boxes, batch.flips, objects, POINTING_MARGIN)
                    _add(sums, f"pointing_{key}", near.sum())
    totals = _all_reduce(sums, rt)
    metrics = {k: v / max(totals["n"], 1) for k, v in totals.items() if k != "n"}
    metrics["n"] = int(totals["n"])
    if info.multilabel:
        metrics["mAP"] = mean_average_precision(*_gather(scores, targets, rt))
    net.train()
    return metrics


def _add(sums: dict[str, float], key: str, value: Any) -> None:
    sums[key] = sums.get(key, 0.0) + float(value)


def _all_reduce(sums: dict[str, float], rt: Runtime) -> dict[str, float]:
    if rt.world == 1:
        return sums
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=rt.device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist(), strict=True))


def _gather(scores: list, targets: list, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    s, t = torch.cat(scores), torch.cat(targets)
    if rt.world > 1:
        parts: list = [None] * rt.world
        dist.all_gather_object(parts, (s, t))
        s, t = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return s, t


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over classes with a positive of the average precision (area under the
    precision-recall steps, as sklearn's average_precision_score)."""
    order = scores.argsort(0, descending=True)
    hits = targets.gather(0, order).float()  # (N, L) sorted per class
    ranks = torch.arange(1, hits.shape[0] + 1, dtype=torch.float32)[:, None]
    precision = hits.cumsum(0) / ranks
    positives = hits.sum(0)
    ap = (precision * hits).sum(0) / positives.clamp(min=1)
    return float(ap[positives > 0].mean()) if (positives > 0).any() else float("nan")


# ============================================================================== checkpoints, log


def save_checkpoint(
    path: Path, net: LuabNet, opt: torch.optim.Optimizer, ema: EMA | None, epoch: int, cfg: Config
) -> None:
    """Atomic: a crash while writing leaves the previous checkpoint."""
    state = {
        "epoch": epoch,
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "ema": ema.net.state_dict() if ema else None,
        "config": asdict(cfg),
        "torch_rng": torch.get_rng_state(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, net: LuabNet, opt: torch.optim.Optimizer, ema: EMA | None) -> int:
    """Restore; returns the epoch to run next."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    net.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    if ema is not None and state["ema"] is not None:
        ema.net.load_state_dict(state["ema"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["epoch"]) + 1


class MetricsLog:
    """JSON lines, one record per event, written by rank 0. The file is opened per record
    (events are few): a record is on disk at once, and no handle outlives the run."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path if enabled else None

    def write(self, event: str, **values: Any) -> None:
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps({"event": event, "time": time.time(), **values}) + "\n")


# ============================================================================== main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    wall_start = time.perf_counter()
    cfg = parse_args(argv)
    check_inputs(cfg)
    rt = setup_runtime(cfg)
    seed_everything(cfg.seed)
    info = describe_data(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(out / "metrics.jsonl", rt.rank == 0)
    net = build_model(cfg, info).to(rt.device)
    if rt.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = make_optimizer(net, cfg)
    ema = EMA(net, cfg.ema) if cfg.ema else None
    start = load_checkpoint(cfg.resume, net, opt, ema) if cfg.resume else 0
    model: nn.Module = net
    if rt.world > 1:
        ids = [rt.device] if rt.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(net, ids)
    if cfg.compile:
        model = torch.compile(model)
    map_side = cfg.map_size or cfg.max_res // net.stride
    evals = make_eval_sets(cfg, info, rt)
    log.write(
        "start",
        config=asdict(cfg),
        world=rt.world,
        device=str(rt.device),
        params=sum(p.numel() for p in net.parameters()),
        start_epoch=start,
    )
    loader, loader_res, summary, stats = None, None, {}, {}
    for epoch in range(start, cfg.epochs):
        res = resolution(epoch, cfg)
        if res != loader_res:  # the crop of a sample depends on (seed, epoch, index) only
            loader, loader_res = make_train_loader(cfg, info, rt, res, (map_side, map_side)), res
        loader.set_epoch(epoch)
        stats = train_epoch(model, opt, loader, epoch, cfg, info, rt, log, ema)
        log.write("epoch", epoch=epoch, res=res, **stats)
        _say(
            rt,
            f"epoch {epoch:3d}  res {res}  loss {stats.get('loss', 0):.4f}  "
            f"{stats['images_per_s']:,.0f} img/s",
        )
        last = epoch + 1 == cfg.epochs
        if evals and (last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0)):
            summary = evaluate_all(ema.net if ema else net, evals, epoch, cfg, info, rt, log)
        if rt.rank == 0:
            save_checkpoint(out / "checkpoint.pt", net, opt, ema, epoch, cfg)
        if cfg.stop_after_epoch and epoch + 1 >= cfg.stop_after_epoch:
            break
    final = {
        "train": stats,
        **summary,
        "cpu_s": time.process_time(),
        "wall_s": time.perf_counter() - wall_start,
    }
    log.write("final", **final)
    return final


def evaluate_all(
    net: LuabNet,
    evals: list[EvalSet],
    epoch: int,
    cfg: Config,
    info: DataInfo,
    rt: Runtime,
    log: MetricsLog,
) -> dict[str, dict]:
    results = {}
    for data in evals:
        metrics = evaluate(net, data, cfg, info, rt)
        log.write("eval", epoch=epoch, split=data.name, **metrics)
        keys = sorted(set(metrics) - {"n"}, key=lambda k: (not k.startswith(("top1", "mAP")), k))
        shown = "  ".join(f"{k} {metrics[k]:.3f}" for k in keys)
        _say(rt, f"  {data.name:<10} {shown}")
        results[data.name] = metrics
    return results


def _say(rt: Runtime, text: str) -> None:
    if rt.rank == 0:
        print(text, flush=True)


if __name__ == "__main__":
    main()
    if dist.is_initialized():
        dist.destroy_process_group()
