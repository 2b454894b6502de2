"""A reproduction of the official ImageNet-AB example loader, the baseline of bench_load.py.

Written from the description in docs/RELEASE_FORMATS.md (no code taken from the release): a PyTorch
Dataset over the image folder that, per sample, opens the JPEG with PIL, parses that image's
XML with ElementTree, averages the first select click of every `selected == True` annotation,
draws torchvision's RandomResizedCrop rule (224, scale 0.08-1, ratio 3/4-4/3, bicubic; written
here with PIL because torchvision does not import beside the CPU torch wheel), flips with
p = 0.5 mirroring the point, and returns a normalised float tensor, the label and the point
target in crop coordinates with its weight.
"""

from __future__ import annotations

import math
import random
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def rrc_params(width: int, height: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop.get_params: (top, left, h, w)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * random.uniform(*scale)
        aspect = math.exp(random.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return random.randint(0, height - h), random.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def xml_point(path: Path) -> tuple[float, float] | None:
    """Mean of the first select click of each selected annotation (normalised), or None."""
    root = ET.parse(path).getroot()
    points = []
    for meta in root.iter("metadata"):
        selected = meta.find("selected")
        first = meta.find("selectedRecord")
        if selected is not None and selected.text == "True" and first is not None:
            points.append((float(first.find("x").text), float(first.find("y").text)))
    if not points:
        return None
    return float(np.mean([p[0] for p in points])), float(np.mean([p[1] for p in points]))


class OfficialStyleDataset(Dataset):
    """(image tensor, label, point (2,), weight) per sample, as the official example does."""

    def __init__(self, images: Path, xml_root: Path, classes: list[str], size: int = 224):
        self.items = sorted(Path(images).glob("train/*/*.JPEG"))
        self.xml_root, self.size = Path(xml_root), size
        self.index = {w: i for i, w in enumerate(classes)}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path = self.items[i]
        wnid, stem = path.parent.name, path.stem
        image = Image.open(path).convert("RGB")
        point = xml_point(self.xml_root / wnid / f"{stem}.xml")
        original = image.size
        top, left, h, w = rrc_params(*original)
        image = image.resize(
            (self.size, self.size), Image.BICUBIC, box=(left, top, left + w, top + h)
        )
        flip = random.random() < 0.5
        if flip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        target, weight = self._target(point, original, (left, top, w, h), flip)
        pixels = (np.asarray(image, np.float32) / 255.0 - MEAN) / STD
        return (
            torch.from_numpy(pixels.transpose(2, 0, 1).copy()),
            self.index[wnid],
            torch.tensor(target),
            torch.tensor(weight),
        )

    @staticmethod
    def _target(point, image_size, box, flip) -> tuple[list[float], float]:
        if point is None:
            return [-1.0, -1.0], 0.0
        (width, height), (left, top, w, h) = image_size, box
        tx, ty = (point[0] * width - left) / w, (point[1] * height - top) / h
        if not (0 <= tx <= 1 and 0 <= ty <= 1):
            return [-1.0, -1.0], 0.0
        return [1 - tx if flip else tx, ty], 1.0


def official_loader(
    images: Path, xml_root: Path, classes: list[str], batch_size: int, workers: int
) -> DataLoader:
    dataset = OfficialStyleDataset(images, xml_root, classes)
    return DataLoader(dataset, batch_size, shuffle=True, num_workers=workers, drop_last=True)
