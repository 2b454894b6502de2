"""The GPU check: every CUDA path of luab-data run once, measured beside its baseline, in one go.

    bash scripts/gpu_check.sh                  # on a GPU machine: ~8 min, all its cores
    bash scripts/gpu_check.sh --dry-run        # the same steps on a CPU, tiny sizes (~1 min)

It makes its own data (an ImageNet-like sample of >= 10,000 JPEGs of 400-500 px with their
byproducts, from the sample generator, packed with the imagenet-ab recipe), then runs each step
in its own process under its own timeout; a step that fails, hangs or cannot run here is
recorded with its reason and the others go on. Steps:

  env          machine, GPU, driver, library versions
  loss         LUAB loss terms on CPU vs device for one fixed batch (stated tolerance); with
               λ = μ = 0 the trainer follows the baseline bit for bit on the device
  raster       the rasteriser's torch twin on the device vs the numba kernels on all cores
  prep         the sample and its .beton (cached in --work)
  loaders      coupled FFCV loader (image + map + point) vs plain FFCV (image + label), to
               the device
  train@R      ResNet-50, bf16 autocast, channels-last, batch 256 at R px: train/fast_train.py
               fed by the coupled loader / the same step on synthetic device-resident input,
               with loader wait per step, loader-alone rate and host-to-device copy time
  dali         DALI mixed (GPU decoding, hw_decoder_load 0 / 0.65 / 0.9) vs DALI CPU vs FFCV
  dali_align   alignment of the DALI GPU pipeline (marker and map peak vs point target), and
               tests/test_dali_loader.py's GPU test
  compile@R    train@R with torch.compile

Every figure keeps its spread (median, min, max, values). The table goes to stdout and the
record to benchmarks/results/gpu-<gpu name>.json (--out to choose; a dry run never writes
there). The whole run keeps to --budget-s: a step that no longer fits is "not run".
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import multiprocessing
import os
import platform
import re
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "benchmarks"):  # the repository and its benchmark modules
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

RESULTS = ROOT / "benchmarks" / "results"
GOAL = 0.95  # fed-by-the-loader / synthetic-on-device images/s that counts as full speed
LOSS_RTOL, LOSS_ATOL = 1e-5, 1e-6  # same head outputs: only the reduction order differs
FORWARD_RTOL = 1e-3  # whole fp32 forward: CPU and GPU convolution algorithms differ


class NotRun(Exception):  # noqa: N818 - read as "the step was not run: <why>"
    """A step that cannot run on this machine (a missing dependency, no data)."""


# ============================================================================== the plan


@dataclass(frozen=True)
class Plan:
    """Every size the check uses; ``gpu()`` and ``dry()`` are the two real ones."""

    dry_run: bool
    device: str  # "cuda" or "cpu"
    cores: int
    images: int = 10_000
    sides: tuple[int, int] = (400, 500)
    model: str = "resnet50"
    batch: int = 256
    resolutions: tuple[int, ...] = (160, 192, 224)
    compile_resolutions: tuple[int, ...] = (192, 224, 160)  # in order of interest
    compile: bool = True
    reps: int = 3
    loader_res: int = 224
    map_size: int = 14
    raster_records: int = 16_384
    raster_reps: int = 5
    hw_loads: tuple[float, ...] = (0.0, 0.65, 0.9)
    align_epochs: int = 8
    loss_model: str = "resnet50"
    loss_res: int = 64
    threads: int = 0  # torch CPU threads (0: torch's default)
    timeouts: dict[str, int] = field(default_factory=dict)
    min_step_s: int = 20  # a step with less time left than this is not started

    @staticmethod
    def gpu(cores: int) -> Plan:
        return Plan(dry_run=False, device="cuda", cores=cores, timeouts=dict(GPU_TIMEOUTS))

    @staticmethod
    def dry(cores: int) -> Plan:
        """One worker everywhere: FFCV compiles a pipeline without parallel loops ~2x faster,
        and compiling is most of a CPU dry run."""
        return Plan(
            dry_run=True,
            device="cpu",
            cores=1,
            images=32,
            sides=(64, 96),
            model="resnet_small",
            batch=8,
            resolutions=(32,),
            compile_resolutions=(32,),
            compile=False,
            reps=1,
            loader_res=32,
            map_size=4,
            raster_records=64,
            raster_reps=2,
            hw_loads=(0.65,),
            align_epochs=1,
            loss_model="resnet_small",
            loss_res=32,
            threads=1,
            timeouts=dict(DRY_TIMEOUTS),
        )


# seconds per step kind; a step also never runs past the whole run's budget
GPU_TIMEOUTS = {
    "env": 60,
    "loss": 120,
    "raster": 120,
    "prep": 300,
    "loaders": 150,
    "train": 150,
    "dali": 180,
    "dali_align": 200,
    "compile": 240,
}
DRY_TIMEOUTS = {
    "env": 30,
    "loss": 60,
    "raster": 60,
    "prep": 240,
    "loaders": 90,
    "train": 90,
    "dali": 90,
    "dali_align": 90,
    "compile": 90,
}
MIN_SECONDS = {"compile": 90, "train": 45, "dali": 45, "dali_align": 30}  # not worth less


@dataclass(frozen=True)
class Step:
    name: str
    kind: str  # the key of its timeout
    run: Callable[[Plan, Path], dict]


def steps_of(plan: Plan) -> list[Step]:
    """In order: cheap and independent first, so that a short budget still gets them."""
    out = [
        Step("env", "env", step_env),
        Step("loss", "loss", step_loss),
        Step("raster", "raster", step_raster),
        Step("prep", "prep", step_prep),
        Step("loaders", "loaders", step_loaders),
    ]
    out += [Step(f"train@{r}", "train", _trainer(r, False)) for r in plan.resolutions]
    out += [Step("dali", "dali", step_dali), Step("dali_align", "dali_align", step_dali_align)]
    out += [
        Step(f"compile@{r}", "compile", _trainer(r, plan.compile)) for r in plan.compile_resolutions
    ]
    return out


def _trainer(res: int, compile_: bool) -> Callable[[Plan, Path], dict]:
    return lambda plan, work: step_train(plan, work, res, compile_)


# ============================================================================== figures


def figure(values: list[float], unit: str) -> dict:
    """A measured quantity: median and min-max of its repetitions, and the values."""
    from luab_data.bench import spread

    return {**spread(values), "unit": unit, "values": [round(v, 4) for v in values]}


def ratio(ours: list[float], base: list[float]) -> dict:
    """Ratios paired repetition by repetition (the two ran side by side)."""
    return figure([a / b for a, b in zip(ours, base, strict=True)], "x")


def rotated(names: list[str], rep: int) -> list[str]:
    k = rep % len(names)
    return names[k:] + names[:k]


def sync_of(plan: Plan) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if plan.device == "cuda" else (lambda: None)


def device_of(plan: Plan):
    import torch

    return torch.device("cuda", 0) if plan.device == "cuda" else None


def data_paths(plan: Plan, work: Path) -> tuple[Path, Path]:
    """(sample folder, .beton) of this plan's data, cached between runs in ``work``."""
    tag = f"{plan.images}-{plan.sides[0]}-{plan.sides[1]}"
    return work / f"sample-{tag}", work / f"train-{tag}.beton"


def need_beton(plan: Plan, work: Path) -> Path:
    beton = data_paths(plan, work)[1]
    if not beton.exists():
        raise NotRun(f"no data: {beton.name} was not built (see the prep step)")
    return beton


# ============================================================================== env


def step_env(plan: Plan, work: Path) -> dict:
    """Machine (luab_data.bench.machine_info), CUDA stack and the libraries the check uses."""
    import torch

    from luab_data.bench import machine_info

    info = machine_info()
    info["versions"] = module_versions()
    info["torch_cuda"] = torch.version.cuda
    info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if plan.device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device visible to torch (use --dry-run on a CPU)")
        props = torch.cuda.get_device_properties(0)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_capability"] = f"{props.major}.{props.minor}"
        info["gpu_multiprocessors"] = props.multi_processor_count
        info["driver"] = _nvidia_smi("driver_version")
    return {"machine": info}


def module_versions() -> dict[str, str | None]:
    """Versions as the modules report them (works for packages carried on PYTHONPATH)."""
    out: dict[str, str | None] = {}
    for name in (
        "torch",
        "numpy",
        "numba",
        "llvmlite",
        "pyarrow",
        "cv2",
        "PIL",
        "ffcv",
        "nvidia.dali",
        "triton",
    ):
        try:
            module = __import__(name, fromlist=["_"])
            out[name] = str(getattr(module, "__version__", "?"))
        except Exception as e:  # noqa: BLE001 - any import failure means: not usable here
            out[name] = None if isinstance(e, ImportError) else f"broken: {e}"
    with contextlib.suppress(Exception):  # ffcv.__version__ is stale in the 1.0.2 wheel
        from importlib.metadata import version

        out["ffcv"] = version("ffcv")
    with contextlib.suppress(Exception):
        import numba

        out["numba_threads"] = str(numba.get_num_threads())
    return out


def _nvidia_smi(query: str) -> str | None:
    try:
        res = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return res.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ============================================================================== loss


def step_loss(plan: Plan, work: Path) -> dict:
    """(1) the loss terms of fixed head outputs on CPU and device; (2) a whole fp32 forward on
    both; (3) λ = μ = 0 vs a model without heads, trained 3 steps on the device."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS for (3)
    dev = torch.device(plan.device)
    if dev.type == "cuda":  # full fp32 for (2); (3) sets its own runtime
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    checks = {
        "terms_cpu_vs_device": _terms_check(plan, dev),
        "forward_cpu_vs_device": _forward_check(plan, dev),
        "baseline_bit_for_bit": _baseline_check(plan, dev),
    }
    return {"checks": checks, "passed": all(c["pass"] for c in checks.values())}


def _loss_inputs(plan: Plan):
    """One fixed batch of the contract (SyntheticLoader, seed 0) and a fixed LuabNet."""
    import torch

    from train import fast_train as ft
    from train.data import SyntheticLoader

    info = ft.DataInfo(num_classes=10, multilabel=False, n_points=1, map_channels=2)
    cfg = replace(ft.parse_args([]), model=plan.loss_model, lam=1.0, mu=1.0)
    torch.manual_seed(0)
    net = ft.build_model(cfg, info)
    side = plan.loss_res // net.stride
    batch = SyntheticLoader(
        16, plan.loss_res, num_classes=10, map_size=(side, side), seed=0, n_distinct=1, steps=1
    ).batches[0]
    return ft, cfg, info, net, batch


def _moved(batch, dev):
    return type(batch)(*(None if t is None else t.to(dev) for t in batch))


def _compare(cpu: dict, other: dict, rtol: float, atol: float) -> dict:
    rows = {}
    for k in cpu:
        a, b = float(cpu[k]), float(other[k])
        rows[k] = {
            "cpu": a,
            "device": b,
            "abs_diff": abs(a - b),
            "rel_diff": abs(a - b) / max(abs(a), 1e-30),
            "ok": abs(a - b) <= atol + rtol * abs(a),
        }
    return rows


def _terms_check(plan: Plan, dev) -> dict:
    ft, cfg, info, net, batch = _loss_inputs(plan)
    out = {k: v.detach() for k, v in net(batch.images).items()}
    rows = {}
    for point, att in (("l1", "kl"), ("smooth_l1", "bce"), ("l2", "kl")):
        c = replace(cfg, point_loss=point, att_loss=att)
        cpu = ft.luab_loss(out, batch, c, False)
        there = ft.luab_loss({k: v.to(dev) for k, v in out.items()}, _moved(batch, dev), c, False)
        rows[f"{point}+{att}"] = _compare(cpu, there, LOSS_RTOL, LOSS_ATOL)
    return _verdict(
        rows,
        {
            "rtol": LOSS_RTOL,
            "atol": LOSS_ATOL,
            "dtype": "float32",
            "what": "same head outputs, loss computed on each device",
        },
    )


def _forward_check(plan: Plan, dev) -> dict:
    ft, cfg, info, net, batch = _loss_inputs(plan)
    import torch

    net.eval()  # BatchNorm from its running statistics: no batch-size-dependent reduction
    with torch.no_grad():
        cpu = ft.luab_loss(net(batch.images), batch, cfg, False)
        moved = copy.deepcopy(net).to(dev)
        there = ft.luab_loss(moved(batch.images.to(dev)), _moved(batch, dev), cfg, False)
    rows = {"l1+kl": _compare(cpu, there, FORWARD_RTOL, 0.0)}
    return _verdict(
        rows,
        {
            "rtol": FORWARD_RTOL,
            "atol": 0.0,
            "dtype": "float32, TF32 off",
            "what": f"{plan.loss_model} forward + loss on each device",
        },
    )


def _verdict(rows: dict, tolerance: dict) -> dict:
    flat = [r for combo in rows.values() for r in combo.values()]
    return {
        "tolerance": tolerance,
        "terms": rows,
        "compared": len(flat),
        "max_rel_diff": max(r["rel_diff"] for r in flat),
        "pass": all(r["ok"] for r in flat),
    }


def _baseline_check(plan: Plan, dev) -> dict:
    """tests/test_train.py's equivalence, on the device with the trainer's GPU runtime."""
    import torch
    import torch.nn.functional as F

    from train.models import LuabNet, make_backbone

    ft, cfg, info, _, batch = _loss_inputs(plan)
    cfg = replace(cfg, lam=0.0, mu=0.0)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    rt = ft.Runtime(0, 1, dev, torch.bfloat16 if dev.type == "cuda" else None, True)
    nets = []
    for heads in ({}, {"n_points": 0, "map_channels": 0}):
        torch.manual_seed(0)
        net = LuabNet(
            make_backbone(plan.loss_model), 10, **{"n_points": 1, "map_channels": 2, **heads}
        )
        for head in (net.point_head, net.attention_head):
            if head is not None:
                head.requires_grad_(False)
        nets.append(net.to(dev).to(memory_format=torch.channels_last))
    batch = _moved(batch, dev)
    images = ft.prepare_images(batch.images, rt.channels_last)
    with torch.autocast(dev.type, torch.bfloat16, enabled=rt.amp is not None):
        terms = ft.luab_loss(nets[0](images), batch, cfg, False)
        plain = nets[1](images)["logits"].float()
    expected = F.cross_entropy(plain, batch.labels, label_smoothing=cfg.label_smoothing)
    loss_is_ce = set(terms) == {"ce", "loss"} and torch.equal(terms["loss"], expected)
    opts = [ft.make_optimizer(n, cfg) for n in nets]
    steps = [
        [
            float(ft.train_step(n, o, batch, cfg, info, rt, lr=0.1)["loss"])
            for n, o in zip(nets, opts, strict=True)
        ]
        for _ in range(3)
    ]
    plain_state = nets[1].state_dict()
    weights = all(torch.equal(nets[0].state_dict()[k], v) for k, v in plain_state.items())
    same = all(a == b for a, b in steps)
    return {
        "runtime": f"{dev.type}, autocast {rt.amp}, channels-last",
        "loss_is_ce": loss_is_ce,
        "step_losses": steps,
        "losses_equal": same,
        "weights_equal": weights,
        "compared": len(steps) * 2 + len(plain_state),
        "pass": bool(loss_is_ce and same and weights),
    }


# ============================================================================== raster


def step_raster(plan: Plan, work: Path) -> dict:
    """maps/s of rasterise_torch on the device (inputs already there) vs the numba kernel on
    every core; the maps must agree to a grey level."""
    import numba
    import numpy as np
    import torch
    from bench_raster import synthetic

    from luab_data.raster.config import RasterConfig
    from luab_data.raster.ragged import rasterise
    from luab_data.raster.torch_raster import rasterise_torch

    n, cfg, dev = plan.raster_records, RasterConfig(), torch.device(plan.device)
    sync = sync_of(plan)
    clicks, trace, width, height = synthetic(n, 100)
    on_dev = [_ragged_to(r, dev) for r in (clicks, trace)]
    wh = [torch.as_tensor(a).to(dev) for a in (width, height)]
    runs = {
        "numba, all cores": lambda: rasterise(clicks, trace, width, height, cfg),
        f"torch twin on {dev.type}": lambda: rasterise_torch(*on_dev, *wh, cfg),
    }
    ref, twin = runs["numba, all cores"]()[0], runs[f"torch twin on {dev.type}"]()[0]
    sync()
    rates: dict[str, list[float]] = {k: [] for k in runs}
    for rep in range(plan.raster_reps):
        for name in rotated(list(runs), rep):
            start = time.perf_counter()
            runs[name]()
            sync()
            rates[name].append(n / (time.perf_counter() - start))
    diff = np.abs(twin.cpu().numpy().astype(np.int16) - ref.astype(np.int16))
    twin_name = f"torch twin on {dev.type}"
    return {
        "figures": {k: figure(v, "maps/s") for k, v in rates.items()},
        "ratios": {
            f"{twin_name} / numba, all cores": ratio(rates[twin_name], rates["numba, all cores"])
        },
        "checks": {
            "max_abs_levels": int(diff.max()),
            "mean_abs_levels": float(diff.mean()),
            "pass": int(diff.max()) <= 1,
        },
        "notes": f"{n} records, 64x64x2 uint8, 100-sample traces, "
        f"{numba.get_num_threads()} numba threads",
    }


def _ragged_to(r, dev):
    import torch

    from luab_data.raster.ragged import Ragged

    return Ragged(
        *(
            None if a is None else torch.as_tensor(a).to(dev)
            for a in (r.offsets, r.x, r.y, r.t, r.ann, r.cls, r.keep)
        )
    )


# ============================================================================== prep


def step_prep(plan: Plan, work: Path) -> dict:
    """The generated sample (ImageNet-AB layout, JPEGs of plan.sides px) and its .beton."""
    from bench_load import _build, jpeg_share

    from luab_data.sample import SampleSpec, generate_sample, scenes

    sample, beton = data_paths(plan, work)
    figures, notes = {}, []
    if not (sample / "sample.json").exists():
        scenes.IMAGENET_STYLE = scenes.SceneStyle(min_side=plan.sides[0], max_side=plan.sides[1])
        start = time.perf_counter()
        generate_sample(
            sample, SampleSpec(size=plan.images, heldout=1, seed=1), processes=plan.cores
        )
        figures["generate"] = figure([plan.images / (time.perf_counter() - start)], "images/s")
    else:
        notes.append("sample cached")
    if not beton.exists():
        start = time.perf_counter()
        _build(sample, beton, True, plan.cores)
        figures["pack .beton"] = figure([plan.images / (time.perf_counter() - start)], "images/s")
    else:
        notes.append(".beton cached")
    figures["file size"] = figure([beton.stat().st_size / 2**20], "MiB")
    jpegs = len(list((sample / "train").glob("*/*.JPEG")))
    return {
        "figures": figures,
        "beton": str(beton),
        "jpegs": jpegs,
        "jpeg_share_in_beton": jpeg_share(beton),
        "notes": "; ".join(notes),
    }


# ============================================================================== loaders


def plain_ffcv(path: Path, plan: Plan, res: int):
    """Plain FFCV, image + label (ffcv-imagenet's training pipeline), to the device."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.reader import Reader
    from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToDevice, ToTensor, ToTorchImage

    dev = device_of(plan)
    to = [ToDevice(dev, non_blocking=True)] if dev is not None else []
    pipelines = dict.fromkeys(Reader(str(path)).handlers)  # None: not read
    pipelines["image"] = [
        RandomResizedCropRGBImageDecoder((res, res)),
        RandomHorizontalFlip(),
        ToTensor(),
        *to,
        ToTorchImage(channels_last=True),
    ]
    pipelines["label"] = [IntDecoder(), ToTensor(), Squeeze(1), *to]
    return Loader(
        str(path),
        plan.batch,
        num_workers=plan.cores,
        order=OrderOption.RANDOM,
        drop_last=True,
        pipelines=pipelines,
    )


def coupled(path: Path, plan: Plan, res: int, **kw):
    from luab_data.loaders.contract import make_loader

    return make_loader(
        "ffcv",
        path,
        batch_size=plan.batch,
        image_size=res,
        map_size=plan.map_size,
        workers=plan.cores,
        device=device_of(plan),
        drop_last=True,
        **kw,
    )


def epoch_rate(loader, sync: Callable[[], None]) -> float:
    """Images/s of one epoch, first request to last batch on the device."""
    n, start = 0, time.perf_counter()
    for batch in loader:
        n += len(batch[0])
    sync()
    return n / (time.perf_counter() - start)


def interleaved(loaders: dict[str, Any], reps: int, sync) -> dict[str, list[float]]:
    for loader in loaders.values():  # compile the pipelines, start workers, page cache
        epoch_rate(loader, sync)
    rates: dict[str, list[float]] = {k: [] for k in loaders}
    for rep in range(reps):
        for name in rotated(list(loaders), rep):
            rates[name].append(epoch_rate(loaders[name], sync))
    return rates


def step_loaders(plan: Plan, work: Path) -> dict:
    """uint8 images both (the trainer's normalising path is measured in train@R)."""
    beton, res = need_beton(plan, work), plan.loader_res
    ours, plain = "coupled FFCV: image+map+point", "plain FFCV: image+label"
    loaders = {ours: coupled(beton, plan, res), plain: plain_ffcv(beton, plan, res)}
    rates = interleaved(loaders, plan.reps, sync_of(plan))
    return {
        "figures": {k: figure(v, "images/s") for k, v in rates.items()},
        "ratios": {f"{ours} / {plain}": ratio(rates[ours], rates[plain])},
        "notes": f"RRC {res} + flip, batch {plan.batch}, {plan.cores} workers, "
        f"map {plan.map_size}x{plan.map_size}, to {plan.device}",
    }


# ============================================================================== train


class Timed:
    """A loader whose iterator records the host time spent waiting for each batch."""

    def __init__(self, loader) -> None:
        self.loader, self.waits = loader, []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        it, self.waits = iter(self.loader), []
        while True:
            start = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.waits.append(time.perf_counter() - start)
            yield batch


def trainer_setup(plan: Plan, work: Path, res: int, compile_: bool):
    """train/fast_train.py's own objects, as its main() makes them."""
    import torch

    from train import fast_train as ft

    beton = need_beton(plan, work)
    argv = [
        "--train",
        str(beton),
        "--model",
        plan.model,
        "--batch-size",
        str(plan.batch),
        "--min-res",
        str(res),
        "--max-res",
        str(res),
        "--workers",
        str(plan.cores),
        "--lam",
        "1",
        "--mu",
        "1",
        "--lr",
        "0.01",
        "--epochs",
        "100",
        "--quiet",
        "--threads",
        str(plan.threads),
        "--out",
        str(work / "runs" / f"r{res}"),
    ]
    cfg = ft.parse_args(argv + (["--compile"] if compile_ else []))
    rt = ft.setup_runtime(cfg)
    ft.seed_everything(cfg.seed)
    info = ft.describe_data(cfg)
    net = ft.build_model(cfg, info).to(rt.device)
    if rt.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = ft.make_optimizer(net, cfg)
    model = torch.compile(net) if cfg.compile else net
    side = cfg.map_size or res // net.stride
    fed = ft.make_train_loader(cfg, info, rt, res, (side, side))
    syn_cfg = replace(cfg, synthetic=True, synthetic_steps=len(fed))
    syn = ft.make_train_loader(syn_cfg, info, rt, res, (side, side))
    return ft, cfg, rt, info, model, opt, fed, syn


def step_train(plan: Plan, work: Path, res: int, compile_: bool) -> dict:
    ft, cfg, rt, info, model, opt, fed, syn = trainer_setup(plan, work, res, compile_)
    log = ft.MetricsLog(Path(os.devnull), False)
    feeds = {"fed by CoupledLoader": Timed(fed), "synthetic on-device": Timed(syn)}
    epoch, warm = 0, {}
    for name, loader in feeds.items():  # compile / cudnn autotune / loader start-up
        start = time.perf_counter()
        ft.train_epoch(model, opt, loader, epoch, cfg, info, rt, log, None)
        warm[name], epoch = time.perf_counter() - start, epoch + 1
    rates: dict[str, list[float]] = {k: [] for k in feeds}
    waits: list[float] = []
    for rep in range(plan.reps):
        for name in rotated(list(feeds), rep):
            stats = ft.train_epoch(model, opt, feeds[name], epoch, cfg, info, rt, log, None)
            rates[name].append(stats["images_per_s"])
            epoch += 1
            if name == "fed by CoupledLoader":
                waits += feeds[name].waits[1:]  # the first is the epoch's start-up
    alone = [epoch_rate(fed, sync_of(plan)) for _ in range(max(1, plan.reps - 1))]
    return _train_record(plan, res, compile_, rates, waits, alone, warm, len(fed))


def _train_record(plan, res, compile_, rates, waits, alone, warm, steps) -> dict:
    fed, syn = rates["fed by CoupledLoader"], rates["synthetic on-device"]
    share = ratio(fed, syn)
    step_ms = 1e3 * plan.batch / max(sum(fed) / len(fed), 1e-9)
    explain = {
        "loader_wait_ms_per_step": figure([1e3 * w for w in waits] or [0.0], "ms"),
        "fed_step_ms": step_ms,
        "steps_per_epoch": steps,
        "warmup_s": {k: round(v, 2) for k, v in warm.items()},
    }
    explain["loader_wait_share"] = sum(waits) / max(len(waits) * step_ms / 1e3, 1e-9)
    if plan.device == "cuda":
        explain["h2d_copy"] = h2d_copy(plan, res)
    figures = {
        "fed by CoupledLoader": figure(fed, "images/s"),
        "synthetic on-device": figure(syn, "images/s"),
        "CoupledLoader alone (no training)": figure(alone, "images/s"),
    }
    return {
        "figures": figures,
        "ratios": {"fed / synthetic": share},
        "meets_goal": share["median"] >= GOAL,
        "goal": GOAL,
        "explain": explain,
        "diagnosis": diagnose(share["median"], explain, figures),
        "notes": f"{plan.model}, batch {plan.batch}, {res} px, λ = μ = 1, "
        f"{'bf16 autocast' if plan.device == 'cuda' else 'fp32'}, channels-last, "
        f"compile {'on' if compile_ else 'off'}, {plan.cores} loader workers",
    }


def diagnose(share: float, explain: dict, figures: dict) -> str:
    """One sentence on where the time goes when the loader-fed rate falls short."""
    if share >= GOAL:
        return f"at full speed ({share:.2f} of synthetic)"
    alone = figures["CoupledLoader alone (no training)"]["median"]
    ceiling = figures["synthetic on-device"]["median"]
    why = [f"loader waits {100 * explain['loader_wait_share']:.0f}% of a step"]
    if alone < ceiling:
        why.append(
            f"the loader alone gives {alone:,.0f} img/s < {ceiling:,.0f} (decode-bound "
            "on these cores)"
        )
    else:
        why.append(
            "the loader alone is fast enough: contention between decoding threads "
            "and the training loop"
        )
    if "h2d_copy" in explain:
        why.append(f"H2D {explain['h2d_copy']['ms_per_batch']['median']:.2f} ms/batch")
    return f"{share:.2f} of synthetic: " + "; ".join(why)


def h2d_copy(plan: Plan, res: int) -> dict:
    """Host-to-device time of one batch as the loader copies it (pinned uint8 images, maps,
    points), by CUDA events."""
    import torch

    n, s = plan.batch, plan.map_size
    host = [
        torch.empty((n, res, res, 3), dtype=torch.uint8).pin_memory(),
        torch.empty((n, 2, s, s), dtype=torch.float32).pin_memory(),
        torch.empty((n, 3), dtype=torch.float32).pin_memory(),
    ]
    nbytes = sum(t.numel() * t.element_size() for t in host)
    times = []
    for _ in range(12):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for t in host:
            t.to("cuda", non_blocking=True)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times = times[2:]
    return {
        "ms_per_batch": figure(times, "ms"),
        "bytes_per_batch": nbytes,
        "gb_per_s": nbytes / (sorted(times)[len(times) // 2] * 1e-3) / 1e9,
    }


# ============================================================================== DALI


def _need_dali() -> None:
    try:
        import nvidia.dali  # noqa: F401
    except Exception as e:  # noqa: BLE001 - a missing or broken DALI both mean: not here
        raise NotRun(f"DALI not importable here ({type(e).__name__}: {e})") from e


def step_dali(plan: Plan, work: Path) -> dict:
    """bench_dali's loaders and interleaved timing, on this plan's .beton."""
    _need_dali()
    import bench_dali

    beton = need_beton(plan, work)
    argv = [
        "--beton",
        str(beton),
        "--batch",
        str(plan.batch),
        "--threads",
        str(plan.cores),
        "--reps",
        str(plan.reps),
        "--image-size",
        str(plan.loader_res),
        "--map-size",
        str(plan.map_size),
        "--device",
        "gpu" if plan.device == "cuda" else "cpu",
        "--hw-decoder-load",
        *(str(x) for x in plan.hw_loads),
    ]
    args = bench_dali.parse_args(argv)
    rates = bench_dali.measure(bench_dali.make_loaders(beton, args), plan.reps, sync_of(plan))
    label = bench_dali.label
    return {
        "figures": {label(k): figure(v, "images/s") for k, v in rates.items()},
        "ratios": {
            f"{label(k)} / {label('ffcv')}": ratio(v, rates["ffcv"])
            for k, v in rates.items()
            if k != "ffcv"
        },
        "notes": f"RRC {plan.loader_res} + map + point, batch {plan.batch}, "
        f"{plan.cores} threads/workers, uint8 images",
    }


def step_dali_align(plan: Plan, work: Path) -> dict:
    """The DALI pipeline (mixed decoding on a GPU) over marked samples: every crop checked
    against geometry, marker and map peak within one pixel / cell of the point target."""
    _need_dali()
    from luab_data.loaders.alignment import augment_and_measure, write_marked_beton
    from luab_data.loaders.contract import make_loader

    image_hw, map_hw, seed, batch = (48, 64), (12, 16), 11, 64
    path = work / "marked.beton"
    samples = write_marked_beton(path, 128, (48, 64), 9)
    gpu = plan.device == "cuda"
    loader = make_loader(
        "dali",
        path,
        batch_size=batch,
        image_size=image_hw,
        map_size=map_hw,
        seed=seed,
        device="cuda:0" if gpu else None,
        workers=min(plan.cores, 4),
    )
    m = augment_and_measure(
        loader,
        samples,
        loader.source.sizes,
        seed,
        image_hw,
        map_hw,
        batch_size=batch,
        epochs=plan.align_epochs,
    )
    checks = {
        "augmentations": m.seen,
        "marker_checks": len(m.marker_err),
        "max_marker_err_px": max(m.marker_err, default=0.0),
        "max_map_err_cells": max(m.map_err, default=0.0),
    }
    checks["pass"] = checks["max_marker_err_px"] <= 1.0 and checks["max_map_err_cells"] <= 1.0
    checks["pytest_gpu_test"] = _gpu_pytest(plan)
    return {"checks": checks, "notes": f"DALI {'mixed, GPU' if gpu else 'CPU'} pipeline"}


def _gpu_pytest(plan: Plan) -> dict:
    """tests/test_dali_loader.py::test_gpu_pipeline_matches_cpu_pipeline (skipped on a CPU)."""
    if plan.device != "cuda":
        return {"outcome": "not run", "reason": "dry run: the test skips itself without CUDA"}
    node = "tests/test_dali_loader.py::test_gpu_pipeline_matches_cpu_pipeline"
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", node]
    try:
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired:
        return {"outcome": "timeout", "node": node}
    outcome = {0: "passed", 1: "failed", 5: "no test"}.get(res.returncode, f"rc {res.returncode}")
    if outcome == "passed" and " skipped" in res.stdout:
        outcome = "skipped"
    return {"outcome": outcome, "node": node, "tail": res.stdout[-800:]}


# ============================================================================== one step


def run_step(step: Step, plan: Plan, work: Path) -> dict:
    """The step in this process: its record, with the peak memory it used."""
    if plan.threads:
        import torch

        torch.set_num_threads(plan.threads)
    try:
        record = step.run(plan, work)
        record = {"status": "ok", **record}
    except NotRun as why:
        record = {"status": "not run", "reason": str(why)}
    record["memory"] = _memory(plan)
    return record


def _memory(plan: Plan) -> dict:
    out = {"peak_rss_mib": _peak_rss_mib()}
    if plan.device == "cuda":
        import torch

        if torch.cuda.is_initialized():
            out["gpu_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
            out["gpu_max_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
    return out


def _peak_rss_mib() -> float:
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(step: Step, plan: Plan, work: Path, result: Path, log: Path) -> None:
    """Body of a step's process: its own session (so that a timeout kills all it started),
    output to its log, the record to ``result``; exits hard (loader threads may linger)."""
    os.setsid()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        record = run_step(step, plan, work)
    except BaseException as e:  # noqa: BLE001 - recorded, then the check goes on
        record = {
            "status": "failed",
            "reason": f"{type(e).__name__}: {e}"[:500],
            "traceback": traceback.format_exc()[-3000:],
        }
    result.write_text(json.dumps(record, default=_jsonable) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _jsonable(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else str(x)


class Running:
    """A step in its forked process, with its deadline; ``collect`` kills it past that."""

    def __init__(self, step: Step, plan: Plan, work: Path, timeout: float) -> None:
        logs = work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.step, self.timeout = step, timeout
        self.result, self.log = logs / f"{_slug(step.name)}.json", logs / f"{_slug(step.name)}.log"
        self.result.unlink(missing_ok=True)
        self.proc = multiprocessing.get_context("fork").Process(
            target=_child, args=(step, plan, work, self.result, self.log)
        )
        self.start = time.perf_counter()
        self.proc.start()

    def finished(self, wait: float = 0.0) -> bool:
        self.proc.join(wait)
        return not self.proc.is_alive() or time.perf_counter() - self.start > self.timeout

    def collect(self) -> dict:
        timed_out = self.proc.is_alive()
        if timed_out:  # the whole session: loader workers, writer processes, pytest
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.join()
        if self.result.exists() and not timed_out:
            record = json.loads(self.result.read_text())
        elif timed_out:
            record = {"status": "timeout", "reason": f"no result after {self.timeout:.0f} s"}
        else:
            record = {"status": "failed", "reason": f"process ended with {self.proc.exitcode}"}
        if record["status"] in ("failed", "timeout"):
            record["log_tail"] = _tail(self.log)
        seconds = round(time.perf_counter() - self.start, 1)
        return {**record, "seconds": seconds, "timeout_s": round(self.timeout)}


NEEDS_DATA = {"loaders", "train", "dali", "compile"}


def run_steps(
    steps: list[Step],
    plan: Plan,
    work: Path,
    deadline: float,
    jobs: int,
    echo: Callable[[str], None],
) -> dict[str, dict]:
    """Steps in order, ``jobs`` at a time (1 for measurements; more only for the dry run);
    a step that reads the .beton starts after prep has ended."""
    pending, running, done = list(steps), [], {}
    while pending or running:
        for r in [r for r in running if r.finished(0.05)]:
            running.remove(r)
            done[r.step.name] = r.collect()
            echo(_progress_line(r.step.name, done[r.step.name], deadline))
        while pending and len(running) < jobs:
            step = next((s for s in pending if _ready(s, steps, done)), None)
            if step is None:
                break
            pending.remove(step)
            refusal = _budget_refusal(step, plan, deadline - time.perf_counter())
            if refusal:
                done[step.name] = refusal
                echo(_progress_line(step.name, refusal, deadline))
                continue
            timeout = min(plan.timeouts[step.kind], deadline - time.perf_counter() - 5)
            running.append(Running(step, plan, work, timeout))
    return {s.name: done[s.name] for s in steps}


def _ready(step: Step, steps: list[Step], done: dict) -> bool:
    prep_listed = any(s.name == "prep" for s in steps)
    return step.kind not in NEEDS_DATA or not prep_listed or "prep" in done


def _budget_refusal(step: Step, plan: Plan, left: float) -> dict | None:
    floor = plan.min_step_s if plan.dry_run else MIN_SECONDS.get(step.kind, plan.min_step_s)
    if min(plan.timeouts[step.kind], left - 5) >= floor:
        return None
    return {
        "status": "not run",
        "reason": f"time budget: {max(left, 0):.0f} s left, the step needs >= {floor} s",
    }


def _progress_line(name: str, record: dict, deadline: float) -> str:
    reason = f": {record['reason']}" if record.get("reason") else ""
    left = deadline - time.perf_counter()
    return f"[{left:6.0f} s left] {name:12} {record['status']}{reason}"


def _tail(path: Path, chars: int = 2000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower()


# ============================================================================== the run


def preload(plan: Plan) -> None:
    """Import the heavy modules once, before forking: every step then starts in a second.
    CUDA is not touched here (a forked child could not use it)."""
    import torch  # noqa: F401

    import luab_data.raster.torch_raster  # noqa: F401
    import train.fast_train  # noqa: F401

    with contextlib.suppress(Exception):  # a step says why if these are missing
        import ffcv.loader  # noqa: F401

        import luab_data.loaders.ffcv_loader  # noqa: F401
    with contextlib.suppress(Exception):
        import luab_data.loaders.dali_loader  # noqa: F401


def run_check(
    plan: Plan,
    work: Path,
    budget_s: float,
    only: list[str] | None = None,
    jobs: int = 1,
    echo=print,
) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    preload(plan)
    report: dict[str, Any] = {
        "what": "luab-data GPU check (benchmarks/gpu_check.py)",
        "dry_run": plan.dry_run,
        "plan": asdict(plan),
        "jobs": jobs,
        "budget_s": budget_s,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "preload_s": round(time.perf_counter() - start, 1),
    }
    steps = steps_of(plan)
    chosen = [s for s in steps if not only or s.name == "env" or {s.name, s.kind} & set(only)]
    echo(f"preloaded in {report['preload_s']} s; {len(chosen)} steps, budget {budget_s:.0f} s")
    records = run_steps(
        chosen, plan, work, start + budget_s, jobs, lambda line: echo(line, flush=True)
    )
    skipped = {"status": "not run", "reason": "not selected (--steps)"}
    report["steps"] = {s.name: records.get(s.name, skipped) for s in steps}
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["machine"] = report["steps"]["env"].get("machine") or {"platform": platform.platform()}
    report["summary"] = summary(report)
    return report


def summary(report: dict) -> dict:
    steps = report["steps"]
    counts: dict[str, int] = {}
    for record in steps.values():
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    train = {
        k: v["ratios"]["fed / synthetic"]["median"]
        for k, v in steps.items()
        if v["status"] == "ok" and "fed / synthetic" in v.get("ratios", {})
    }
    return {
        "statuses": counts,
        "fed_over_synthetic": train,
        "all_train_meet_goal": bool(train) and all(x >= GOAL for x in train.values()),
    }


# ============================================================================== the table


def table(report: dict) -> str:
    m = report["machine"]
    gpu = m.get("gpu") or "none"
    lines = [
        f"luab-data GPU check{' (DRY RUN, CPU)' if report['dry_run'] else ''}: GPU {gpu}, "
        f"{m.get('cores', '?')} cores, torch {m.get('versions', {}).get('torch')}, "
        f"{report['seconds']:.0f} s"
    ]
    head = f"{'step':12} {'figure':62} {'median':>10} {'min-max':>19} {'unit':>8}"
    lines += [head, "-" * len(head)]
    for name, rec in report["steps"].items():
        lines += _step_lines(name, rec)
    return "\n".join(lines)


def _step_lines(name: str, rec: dict) -> list[str]:
    status = rec["status"] + (f": {rec['reason']}" if rec.get("reason") else "")
    gpu_mib = rec.get("memory", {}).get("gpu_max_allocated_mib")
    mem = f", GPU max {gpu_mib:,.0f} MiB" if gpu_mib is not None else ""
    out = [f"{name:12} [{status[:110]}] {rec.get('seconds', 0):.0f} s{mem}"]
    for label, f in {**rec.get("figures", {}), **rec.get("ratios", {})}.items():
        out.append(
            f"{'':12} {label[:62]:62} {_num(f['median']):>10} "
            f"{_num(f['min']) + '-' + _num(f['max']):>19} {f['unit']:>8}"
        )
    for key in ("diagnosis",):
        if rec.get(key):
            out.append(f"{'':12} {rec[key]}")
    for label, check in rec.get("checks", {}).items():
        if isinstance(check, dict) and "pass" in check:
            worst, detail = check.get("max_rel_diff"), ""
            if worst is not None:
                detail = f" (max rel. diff {worst:.2g}, {check['compared']} values)"
            out.append(f"{'':12} check {label}: {'pass' if check['pass'] else 'FAIL'}{detail}")
    if "checks" in rec and "pass" in rec["checks"]:
        out.append(f"{'':12} check: {'pass' if rec['checks']['pass'] else 'FAIL'}")
    return out


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


# ============================================================================== main


def default_out(report: dict) -> Path:
    gpu = report["machine"].get("gpu") or "none"
    return RESULTS / f"gpu-{_slug(gpu)}.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, every step")
    ap.add_argument(
        "--out",
        type=Path,
        help="the JSON record (default: results/gpu-<gpu>.json;"
        " a dry run: <work>/gpu-check-dry-run.json)",
    )
    ap.add_argument("--work", type=Path, help="data, logs, runs (default: out/gpu_check[_dry])")
    ap.add_argument("--budget-s", type=float, help="whole run (default 540; dry run 400)")
    ap.add_argument("--images", type=int, help="images to generate (default 10000)")
    ap.add_argument("--steps", nargs="+", help="only these steps or kinds (env always runs)")
    ap.add_argument(
        "--jobs",
        type=int,
        help="steps at a time (default 1; dry run 2: its "
        "figures mean nothing, only that every step runs)",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    plan = Plan.dry(cores) if args.dry_run else Plan.gpu(cores or 1)
    if args.images:
        plan = replace(plan, images=args.images)
    work = args.work or ROOT / "out" / ("gpu_check_dry" if args.dry_run else "gpu_check")
    budget = args.budget_s or (400.0 if args.dry_run else 540.0)
    jobs = args.jobs or (2 if args.dry_run else 1)
    report = run_check(plan, work, budget, args.steps, jobs)
    out = args.out or (work / "gpu-check-dry-run.json" if args.dry_run else default_out(report))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=_jsonable) + "\n")
    print(table(report))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
