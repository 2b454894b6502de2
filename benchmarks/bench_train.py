"""`luab-data bench` train stage: fast_train images/s fed by the FFCV loader vs by synthetic
tensors already on the GPU (the ceiling). GPU only: on a CPU the stage says so and is skipped;
`benchmarks/train_throughput.py` is the full stand-alone run."""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_throughput as tt  # noqa: E402

from luab_data.bench import StageSkipped  # noqa: E402


def run(quick: bool, data: Path, tiny: bool = False) -> list[dict]:
    import torch

    if not torch.cuda.is_available():
        raise StageSkipped(
            "needs a GPU (ResNet-50 bf16 fed by FFCV vs synthetic on-device input); "
            "run benchmarks/train_throughput.py on a GPU machine"
        )
    n = 2_000 if (quick or tiny) else 20_000
    args = argparse.Namespace(
        model="resnet50",
        res=192,
        batch_size=256,
        epochs=3,
        workers=tt.os.cpu_count(),
        threads=0,
        extra=[],
    )
    data.mkdir(parents=True, exist_ok=True)
    beton = data / f"photolike-{n}.beton"
    if not beton.exists():
        tt.write_beton(beton, n, args.workers)
    steps = max(1, n // args.batch_size)
    synthetic = tt.train(["--synthetic", "--synthetic-steps", str(steps)], args, data / "syn")
    ffcv = tt.train(["--train", str(beton), "--loader", "ffcv"], args, data / "ffcv")
    a, b = ffcv["epoch_rates"], synthetic["epoch_rates"]
    k = min(len(a), len(b))
    ratio = [x / y for x, y in zip(a[:k], b[:k], strict=True)]
    summary = {
        name: {"median": statistics.median(r), "min": min(r), "max": max(r)}
        for name, r in (("fed by FFCV", a), ("synthetic on-device", b))
    }
    spread = {"median": statistics.median(ratio), "min": min(ratio), "max": max(ratio)}
    return [
        {
            "stage": "train",
            "name": f"ResNet-50 bf16 @192, {ffcv['device']}",
            "unit": "images/s",
            "results": summary,
            "ratios": {"fed by FFCV / synthetic on-device": spread},
        }
    ]
