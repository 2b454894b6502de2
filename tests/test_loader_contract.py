"""One loader contract: the three loaders, made by ``make_loader`` with the same knobs over the
same .beton, yield the same sample indices, crop boxes and flips, batch by batch, in training
and evaluation and on each rank of two; unknown knobs are refused; the reference loader runs
where FFCV cannot be imported. Every test that iterates an FFCV or DALI loader carries a
timeout (an FFCV stage can hang instead of raising).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from beton_fixtures import built, sample_dir, source_path

from luab_data.loaders.contract import (
    KINDS,
    KNOBS,
    CropSettings,
    LoaderSettings,
    epoch_order,
    make_loader,
    num_batches,
)

KIND = "coco-ab"  # multi-hot labels and (K, 2) points: the widest batch
KNOB_VALUES = {"batch_size": 16, "image_size": (40, 56), "map_size": (6, 10), "seed": 9}
LOADER_KINDS = ("ffcv", "dali", "torch")

pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <finalize object:pytest.PytestUnraisableExceptionWarning"
)


@pytest.fixture(scope="session")
def root(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "luab-beton"
    path.mkdir(exist_ok=True)
    return path


def _trace(kind: str, path: Path, epoch: int, **knobs) -> list[tuple[np.ndarray, ...]]:
    """(indices, boxes, flips) of every batch of one epoch."""
    if kind == "dali":
        pytest.importorskip("nvidia.dali")
    workers = 0 if kind == "torch" else 1
    loader = make_loader(kind, path, workers=workers, **KNOB_VALUES, **knobs)
    try:
        loader.set_epoch(epoch)
        assert loader.epoch == epoch
        out = [
            (b.indices.numpy().copy(), b.boxes.numpy().copy(), b.flips.numpy().copy())
            for b in loader
        ]
        assert len(out) == len(loader) and loader.epoch == epoch + 1
        return out
    finally:
        getattr(loader, "close", lambda: None)()


def _same_batches(traces: dict[str, list]) -> None:
    first, *others = traces
    for kind in others:
        assert len(traces[kind]) == len(traces[first]), kind
        for b, (want, got) in enumerate(zip(traces[first], traces[kind], strict=True)):
            for name, w, g in zip(("indices", "boxes", "flips"), want, got, strict=True):
                np.testing.assert_array_equal(g, w, err_msg=f"{kind} batch {b} {name}")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_three_loaders_yield_the_same_batches(root, train):
    path = built(root, KIND)
    traces = {kind: _trace(kind, path, 3, train=train) for kind in LOADER_KINDS}
    _same_batches(traces)
    indices = np.concatenate([t[0] for t in traces["torch"]])
    flips = np.concatenate([t[2] for t in traces["torch"]])
    if train:  # shuffled, the last partial batch dropped, both flips drawn
        assert len(indices) % 16 == 0 and not np.array_equal(indices, np.sort(indices))
        assert 0 < flips.mean() < 1
        other_epoch = _trace("torch", path, 4, train=True)
        assert not np.array_equal(indices, np.concatenate([t[0] for t in other_epoch]))
    else:  # every sample in file order, the centre crop, no flip
        assert np.array_equal(indices, np.arange(len(indices))) and not flips.any()
        assert traces["torch"][-1][0].shape[0] < 16  # the smaller last batch is kept


@pytest.mark.timeout(600)
@pytest.mark.parametrize("rank", [0, 1])
def test_three_loaders_agree_on_each_rank(root, rank):
    path = built(root, KIND)
    knobs = {"train": True, "rank": rank, "world_size": 2, "drop_last": False}
    traces = {kind: _trace(kind, path, 2, **knobs) for kind in LOADER_KINDS}
    _same_batches(traces)
    n = _n_samples(path)
    mine = np.concatenate([t[0] for t in traces["ffcv"]])
    assert len(mine) == -(-n // 2)  # ceil(n / 2): the shares are padded to equal length


def _n_samples(path: Path) -> int:
    from luab_data.beton.file import BetonFile

    return len(BetonFile(path))


def test_epoch_order_is_ffcv_and_torch_rule():
    """One process: NumPy's default_rng(seed + epoch) permutation (FFCV's RANDOM order);
    several: torch's DistributedSampler (FFCV's distributed order), ranks partitioning it."""
    from torch.utils.data import DistributedSampler

    indices = np.arange(100, 203)  # a subset: orders are of indices, not positions
    got = epoch_order(indices, 5, seed=7, shuffle=True)
    assert np.array_equal(got, np.random.default_rng(12).permutation(indices))
    assert np.array_equal(epoch_order(indices, 5, seed=7, shuffle=False), indices)
    shares = []
    for rank in range(3):
        sampler = DistributedSampler(indices, num_replicas=3, rank=rank, shuffle=True, seed=7)
        sampler.set_epoch(5)
        share = epoch_order(indices, 5, seed=7, rank=rank, world_size=3)
        assert np.array_equal(share, indices[list(sampler)])
        shares.append(share)
    assert len(set(np.concatenate(shares).tolist())) == len(indices)  # covered, padded by 2
    cut = epoch_order(indices, 0, batch_size=10, drop_last=True, rank=1, world_size=3)
    assert len(cut) == 30 == num_batches(len(indices), 10, True, 3) * 10


def test_settings_normalise_and_validate():
    s = LoaderSettings(batch_size=4, image_size=32, map_size=[6, 8], scale=[0.2, 1], train=False)
    assert s.image_size == (32, 32) and s.map_size == (6, 8) and s.crop.scale == (0.2, 1.0)
    assert s.shuffle is False and s.drop_last is False and (s.rank, s.world_size) == (0, 1)
    assert s.crop == CropSettings(train=False, scale=(0.2, 1.0))
    for bad in (
        {"batch_size": 0},
        {"batch_size": 4, "rank": 2, "world_size": 2},
        {"batch_size": 4, "flip_p": 1.5},
        {"batch_size": 4, "scale": (0.9, 0.1)},
        {"batch_size": 4, "image_size": (3, 4, 5)},
    ):
        with pytest.raises(ValueError):
            LoaderSettings(**bad)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("typo", "hint"),
    [("num_workers", "workers"), ("sed", "seed"), ("device_id", "device"), ("shard_id", "rank")],
)
def test_unknown_arguments_are_refused(kind, typo, hint, tmp_path):
    """Before any file is opened (the path does not exist): a TypeError naming the knob."""
    if kind == "dali":
        pytest.importorskip("nvidia.dali")
    with pytest.raises(TypeError, match=f"'{typo}' \\(did you mean '{hint}'\\?\\)"):
        make_loader(kind, tmp_path / "absent.beton", batch_size=4, **{typo: 1})
    cls_name = {"ffcv": "CoupledLoader", "dali": "DaliLoader"}.get(kind, "ReferenceLoader")
    from luab_data.loaders.contract import loader_class

    with pytest.raises(TypeError, match=cls_name):  # the classes refuse them too
        loader_class(kind)(tmp_path / "absent.beton", 4, **{typo: 1})


def test_an_extra_of_another_loader_is_refused(tmp_path):
    with pytest.raises(TypeError, match="'os_cache'"):
        make_loader("torch", tmp_path / "absent.beton", batch_size=4, os_cache=False)
    with pytest.raises(ValueError, match="unknown loader 'tf'"):
        make_loader("tf", tmp_path / "absent.beton", batch_size=4)


def test_every_loader_takes_every_knob():
    """The classes' own keyword arguments are their extras only; the knobs are shared."""
    import inspect

    from luab_data.loaders.contract import loader_class

    for kind in ("ffcv", "torch", *(("dali",) if _has_dali() else ())):
        cls = loader_class(kind)
        params = inspect.signature(cls).parameters
        own = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
        assert own == set(cls.EXTRAS) and not own & set(KNOBS), kind
        assert any(p.kind is p.VAR_KEYWORD for p in params.values()), kind


def _has_dali() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


_WITHOUT_FFCV = textwrap.dedent("""
    import importlib.abc, sys

    class NoFFCV(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "ffcv" or name.startswith("ffcv."):
                raise ImportError(f"{name} is blocked in this test")

    sys.meta_path.insert(0, NoFFCV())
    from luab_data.loaders import make_loader
    from luab_data.loaders.reference import ReferenceLoader

    records, images = sys.argv[1], sys.argv[2]
    loader = make_loader("torch", records, images=images, batch_size=8, workers=0,
                         image_size=32, map_size=8, seed=3, rank=1, world_size=2)
    batches = list(loader)
    assert isinstance(loader, ReferenceLoader) and batches and len(batches) == len(loader)
    assert batches[0].images.shape == (8, 3, 32, 32) and batches[0].maps.shape[-2:] == (8, 8)
    assert not [m for m in sys.modules if m == "ffcv" or m.startswith("ffcv.")]
    print("ok", sum(len(b.indices) for b in batches))
""")


@pytest.mark.timeout(300)
def test_reference_loader_runs_without_ffcv(root, tmp_path):
    """In a process where ``import ffcv`` fails: the contract, make_loader("torch") and the
    reference loader import, and iterate records (a Parquet folder) and their images."""
    from luab_data.build import build_parquet
    from luab_data.sources import open_source

    kind = "imagenet-ab"
    source = open_source(source_path(root, kind))
    records = tmp_path / "records"
    build_parquet(source, records, show_progress=False)
    run = subprocess.run(
        [sys.executable, "-c", _WITHOUT_FFCV, str(records), str(sample_dir(root, kind))],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split()[0] == "ok" and int(run.stdout.split()[1]) >= 8


def test_batch_is_a_named_tuple_of_tensors():
    from luab_data.loaders.contract import Batch

    assert Batch._fields == (
        "images",
        "labels",
        "boxes",
        "flips",
        "maps",
        "points",
        "point_weights",
        "indices",
    )
    t = torch.zeros(1)
    assert Batch(t, t, t, t, None, None, None, t).maps is None


@pytest.mark.timeout(600)
def test_trainer_takes_every_loader(root, tmp_path):
    """``--loader`` reaches make_loader and nothing else: one epoch of the trainer on the same
    .beton with each loader takes the same number of steps with finite losses."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `train` is not installed
    from train import fast_train as ft

    path = built(root, KIND)
    steps = {}
    for kind in LOADER_KINDS:
        if kind == "dali" and not _has_dali():
            continue
        out = tmp_path / kind
        ft.main(
            [
                "--train",
                str(path),
                "--loader",
                kind,
                "--label-field",
                "labels",
                "--model",
                "resnet_small",
                "--batch-size",
                "16",
                "--min-res",
                "32",
                "--max-res",
                "32",
                "--epochs",
                "1",
                "--workers",
                "0",
                "--mu",
                "1",
                "--log-every",
                "1",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in records if r["event"] == "train"]
        assert losses and all(np.isfinite(losses)), kind
        steps[kind] = len(losses)
    assert len(set(steps.values())) == 1 and steps["torch"] == _n_samples(path) // 16, steps
