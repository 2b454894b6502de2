"""The torchvision.transforms.v2 contender of the load bench is a correct peer: its one
RandomResizedCrop + flip moves the keypoint and the box with the pixels they mark."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from tv2_loader import paired_transform, point_weight, wrap, xml_targets  # noqa: E402

HEIGHT, WIDTH, SIZE = 240, 320, 224
BOX = [60.0, 40.0, 260.0, 200.0]  # x0, y0, x1, y1 in pixels
MARK = (150, 110)  # centre pixel (column, row) of a 9 x 9 red square inside the box


def drawn() -> torch.Tensor:
    """Grey image, the box filled blue, a red marker square inside it."""
    image = torch.full((3, HEIGHT, WIDTH), 128, dtype=torch.uint8)
    x0, y0, x1, y1 = (int(v) for v in BOX)
    image[:, y0:y1, x0:x1] = torch.tensor([0, 0, 255], dtype=torch.uint8)[:, None, None]
    cx, cy = MARK
    image[:, cy - 4 : cy + 5, cx - 4 : cx + 5] = torch.tensor([255, 0, 0], dtype=torch.uint8)[
        :, None, None
    ]
    return image


def centroid(mask: torch.Tensor) -> torch.Tensor:
    rows, cols = torch.nonzero(mask, as_tuple=True)
    return torch.stack([cols.float().mean(), rows.float().mean()]) + 0.5  # pixel centres


def extent(mask: torch.Tensor) -> torch.Tensor:
    rows, cols = torch.nonzero(mask, as_tuple=True)
    return torch.stack([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]).float()


def near_centre(xy: torch.Tensor, margin: float = 8.0) -> bool:
    return bool(((xy > margin) & (xy < SIZE - margin)).all())


def test_keypoint_and_box_follow_the_pixels() -> None:
    torch.manual_seed(0)
    transform, image = paired_transform(SIZE), drawn()
    # the marker's continuous centre, normalised as the XML's point is
    point = ((MARK[0] + 0.5) / WIDTH, (MARK[1] + 0.5) / HEIGHT)
    seen = outside = 0
    for _ in range(60):
        out, boxes, points = transform(*wrap(image, BOX, point))
        assert out.shape == (3, SIZE, SIZE) and out.dtype == torch.uint8
        r, g, b = (c.int() for c in out)
        red = (r > 160) & (g < 90) & (b < 120)
        blue = (b > 160) & (r < 90)
        kp = points[0]
        if bool(point_weight(points, True, SIZE)[0]) and near_centre(kp):
            seen += 1
            # v2 flips keypoints as pixel indices (W - 1 - x) but resizes them as coordinates,
            # so a flipped one sits 1 px left of the drawn centre (1.33 px at most measured)
            assert torch.allclose(centroid(red), kp, atol=2.0), (centroid(red), kp)
        elif not bool(point_weight(points, True, SIZE)[0]):  # left the crop: so did the marker
            outside += 1
            assert red.sum() == 0 or not near_centre(centroid(red))
        if (blue | red).sum() > 50:  # the clamped box is where its colour landed
            assert torch.allclose(extent(blue | red), boxes[0], atol=1.5), (
                extent(blue | red),
                boxes[0],
            )
    assert seen >= 15 and outside >= 3, (seen, outside)  # both cases were drawn


def test_missing_point_has_zero_weight() -> None:
    out, _, points = paired_transform(SIZE)(*wrap(drawn(), None, None))
    assert out.shape[-2:] == (SIZE, SIZE)
    assert point_weight(points, False, SIZE).tolist() == [0.0]


@pytest.mark.timeout(120)
def test_xml_targets_match_the_official_rule(tmp_path) -> None:
    """Same point as the official-style loader's parse, and the ILSVRC box where there is one."""
    from bench_load import prepare
    from official_loader import xml_point

    sample = prepare(tmp_path, 24, (96, 160))
    xmls = sorted((sample / "train_xml").glob("*/*.xml"))
    assert xmls
    boxes = 0
    for path in xmls:
        point, box = xml_targets(path)
        assert point == pytest.approx(xml_point(path)) if point else xml_point(path) is None
        if box is not None:
            boxes += 1
            assert box[0] < box[2] and box[1] < box[3]
    assert boxes, "the sample has ILSVRC box XMLs (box_rate 0.4)"
