"""The linear probes of benchmarks/probe_features.py (why a LUAB form does or does not move the
classifier off the background): the read-outs must find what is there and only that, the
object's cells must be the ones under its box, and a saved model must come back as trained."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import probe_features as pf  # noqa: E402

from train.models import LuabNet, make_backbone  # noqa: E402


def test_probe_reads_a_class_that_is_there_and_not_one_that_is_not() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (2000,), generator=gen)
    noise = torch.randn(2000, 32, generator=gen)
    signal = noise.clone()
    signal[:, :10] += 6 * torch.nn.functional.one_hot(labels, 10)
    assert pf.probe_accuracy(signal, labels) > 0.95
    assert pf.probe_accuracy(noise, labels) < 0.2  # chance is 0.1


def test_position_r2_is_one_for_a_linear_code_and_near_zero_for_noise() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1000, 16, generator=gen)
    target = x[:, :2] @ torch.tensor([[0.3, -0.1], [0.2, 0.4]]) + 0.5
    assert pf.probe_r2(x, target) > 0.99
    assert pf.probe_r2(x, torch.rand(1000, 2, generator=gen)) < 0.05


def test_object_cells_are_those_under_the_box_through_the_crop() -> None:
    crops = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 1.0, 1.0]])
    objects = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 0.75, 0.75]])
    cells = pf._cells_in_object(4, 4, crops, objects).view(2, 4, 4)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[:2, :2] = True  # top-left quarter of the image / of the cropped quarter
    assert torch.equal(cells[0], expected)
    assert torch.equal(cells[1], expected)
    features = torch.arange(16.0).view(1, 1, 4, 4).repeat(2, 1, 1, 1)
    pooled = pf._masked_mean(features, cells.view(2, 1, 4, 4).float())
    assert torch.allclose(pooled, torch.full((2, 1), (0 + 1 + 4 + 5) / 4))
    empty = pf._masked_mean(features[:1], torch.zeros(1, 1, 4, 4))  # no cell: the whole map
    assert torch.allclose(empty, torch.tensor([[7.5]]))


def test_a_saved_model_comes_back_with_its_heads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = LuabNet(make_backbone("resnet_small"), 10, 1, 2, point_head="soft-argmax")
    config = {"model": "resnet_small", "point_head": "soft-argmax", "att_pool": False}
    torch.save({"model": net.state_dict(), "config": config}, tmp_path / "checkpoint.pt")
    loaded, cfg = pf.load_net(tmp_path)
    images = torch.randn(2, 3, 48, 48)
    net.eval()
    with torch.no_grad():
        a, b = net(images), loaded(images)
    assert cfg == config and not loaded.training
    for key in ("logits", "points", "attention"):
        assert torch.equal(a[key], b[key])
