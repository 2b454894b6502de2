"""The torchvision.transforms.v2 peer of bench_load.py: paired geometry the way its users write it.

A torch Dataset over the image folder: per sample, `decode_jpeg(read_file(path))`, one parse of
that image's XML (train_xml/) for the point (the mean first select click of the selected
annotations, as the official example) and the ILSVRC box (the first `bndbox`, else the whole
image), wrapped as `tv_tensors.Image`, `BoundingBoxes` and `KeyPoints` and passed together
through `v2.Compose([v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip()])`, so
that one crop and one flip move all three. A torch DataLoader with default collate batches
(uint8 images, label, box, point in crop pixels, point weight), as ours yields uint8 images.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms import v2


def paired_transform(size: int = 224) -> v2.Compose:
    """One RandomResizedCrop and one flip, applied alike to image, boxes and keypoints."""
    return v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])


def xml_targets(path: Path) -> tuple[tuple[float, float] | None, list[float] | None]:
    """(normalised point or None, first ILSVRC box [x0, y0, x1, y1] in pixels or None)."""
    root = ET.parse(path).getroot()
    clicks = []
    for meta in root.iter("metadata"):
        selected, first = meta.find("selected"), meta.find("selectedRecord")
        if selected is not None and selected.text == "True" and first is not None:
            clicks.append((float(first.find("x").text), float(first.find("y").text)))
    point = None
    if clicks:
        point = (sum(c[0] for c in clicks) / len(clicks), sum(c[1] for c in clicks) / len(clicks))
    bndbox = root.find("object/bndbox")
    box = None
    if bndbox is not None:
        box = [float(bndbox.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
    return point, box


def wrap(image: torch.Tensor, box: list[float] | None, point: tuple[float, float] | None):
    """tv_tensors for one sample: point and box in pixels; a missing point is kept (at 0, 0)
    with weight 0, so that every sample has the same shapes for default collate."""
    height, width = image.shape[-2:]
    box = box if box is not None else [0.0, 0.0, float(width), float(height)]
    xy = [point[0] * width, point[1] * height] if point is not None else [0.0, 0.0]
    return (
        tv_tensors.Image(image),
        tv_tensors.BoundingBoxes([box], format="XYXY", canvas_size=(height, width)),
        tv_tensors.KeyPoints([xy], canvas_size=(height, width)),
    )


def point_weight(points: torch.Tensor, present: bool, size: int) -> torch.Tensor:
    """1 where the point exists and lands inside the crop (v2 does not clamp keypoints)."""
    inside = ((points >= 0) & (points < size)).all(-1)
    return (inside & present).float()


class TorchvisionV2Dataset(Dataset):
    """(uint8 image (3, S, S), label, box (1, 4), point (1, 2), weight (1,)) per sample."""

    def __init__(self, images: Path, xml_root: Path, classes: list[str], size: int = 224):
        self.items = sorted(Path(images).glob("train/*/*.JPEG"))
        self.xml_root, self.size = Path(xml_root), size
        self.index = {w: i for i, w in enumerate(classes)}
        self.transform = paired_transform(size)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path = self.items[i]
        image = decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB)
        point, box = xml_targets(self.xml_root / path.parent.name / f"{path.stem}.xml")
        image, boxes, points = self.transform(*wrap(image, box, point))
        weight = point_weight(points, point is not None, self.size)
        return image, self.index[path.parent.name], boxes, points, weight


def torchvision_loader(
    images: Path, xml_root: Path, classes: list[str], batch_size: int, workers: int, size: int = 224
) -> DataLoader:
    # persistent workers: a tuned user's setting, so worker start-up is not billed per epoch
    return DataLoader(
        TorchvisionV2Dataset(images, xml_root, classes, size),
        batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
    )
