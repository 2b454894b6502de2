"""A contact sheet: generated images with their traces, clicks and object boxes drawn on them.

Byproducts are read back through the project's own readers (luab_data.sources), so the sheet
shows what the pipeline will see, not what the generator meant to write.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np

from luab_data.sample.generate import COCO_JSON, IMAGENET_TAR

_ANN_COLOURS = [(255, 255, 0), (0, 255, 255), (255, 0, 255), (255, 160, 0), (160, 255, 160)]


def _labels(sample: Path, folder: str) -> dict[str, dict]:
    with open(sample / folder / "labels.csv", newline="", encoding="utf-8") as fh:
        return {row["key"]: row for row in csv.DictReader(fh)}


def _records(sample: Path, kind: str, keys: set[str]) -> list[dict]:
    """The records with these keys from the sample's byproducts, as Arrow rows (dicts)."""
    from luab_data.sources import open_source  # the viewer reads what the pipeline reads

    path = sample / (IMAGENET_TAR if kind == "imagenet-ab" else COCO_JSON)
    rows: list[dict] = []
    for batch, _ in open_source(path, kind).batches():
        found = [i for i, k in enumerate(batch.column("key").to_pylist()) if k in keys]
        rows += batch.take(found).to_pylist()
        if len(rows) >= len(keys):
            break
    return rows


def _fit(img: np.ndarray, tile: int) -> tuple[np.ndarray, float, int, int]:
    h, w = img.shape[:2]
    s = tile / max(w, h)
    small = cv2.resize(
        img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_CUBIC
    )
    canvas = np.full((tile, tile, 3), 32, np.uint8)
    oy, ox = (tile - small.shape[0]) // 2, (tile - small.shape[1]) // 2
    canvas[oy : oy + small.shape[0], ox : ox + small.shape[1]] = small
    return canvas, s, ox, oy


def _coco_boxes(sample: Path) -> dict[str, list[list[float]]]:
    """COCO kind: every object's box (x, y, w, h px) per image id, from the instances file."""
    path = sample / "annotations" / "instances_train2014.json"
    boxes: dict[str, list[list[float]]] = {}
    for a in json.loads(path.read_text())["annotations"]:
        boxes.setdefault(str(a["image_id"]), []).append(a["bbox"])
    return boxes


def _draw_tile(
    rec: dict, label: dict, sample: Path, tile: int, boxes: list[list[float]] | None = None
) -> np.ndarray:
    img = cv2.imread(str(sample / label["image"]))
    w, h = int(label["width"]), int(label["height"])
    canvas, s, ox, oy = _fit(img, tile)

    def px(x: float, y: float) -> tuple[int, int]:  # normalised -> tile pixels
        return int(round(ox + x * w * s)), int(round(oy + y * h * s))

    if boxes is None:  # the primary object's box from labels.csv
        boxes = [
            [
                float(label["box_x0"]),
                float(label["box_y0"]),
                float(label["box_x1"]) - float(label["box_x0"]),
                float(label["box_y1"]) - float(label["box_y0"]),
            ]
        ]
    for bx, by, bw, bh in boxes:
        cv2.rectangle(canvas, px(bx / w, by / h), px((bx + bw) / w, (by + bh) / h), (0, 200, 0), 1)
    ann = np.array(rec["trace_ann"], int)
    xs, ys = np.array(rec["trace_x"]), np.array(rec["trace_y"])
    for a in np.unique(ann):
        pts = np.array([px(x, y) for x, y in zip(xs[ann == a], ys[ann == a], strict=True)])
        colour = _ANN_COLOURS[a % len(_ANN_COLOURS)]
        cv2.polylines(canvas, [pts.reshape(-1, 1, 2)], False, colour, 1, cv2.LINE_AA)
        for p in pts:
            cv2.circle(canvas, tuple(int(v) for v in p), 1, colour, -1)
    for x, y in zip(rec["click_x"], rec["click_y"], strict=True):
        c = px(x, y)
        cv2.drawMarker(canvas, c, (0, 0, 255), cv2.MARKER_CROSS, 11, 2)
    caption = f"{label['class_name'][:9]} bg{label['background']}"
    caption += "" if label["matched"] == "1" else " (other)"
    cv2.putText(
        canvas,
        caption,
        (3, tile - 5),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.38,
        (255, 255, 255),
        1,
        cv2.LINE_AA,
    )
    return canvas


def contact_sheet(
    sample: str | Path, out: str | Path, n: int = 24, cols: int = 6, tile: int = 200
) -> Path:
    """Write a PNG grid of n training images (spread over the classes) of a sample, with the object
    box (green), each annotation's trace (one colour per annotation) and the select clicks or
    final icon positions (red crosses). Returns the PNG path."""
    sample, out = Path(sample), Path(out)
    kind = json.loads((sample / "sample.json").read_text())["spec"]["kind"]
    labels = _labels(sample, "train" if kind == "imagenet-ab" else "train2014")
    keys = list(labels)[:: max(1, len(labels) // n)][:n]  # spread over the classes
    rows = [
        r
        for r in _records(sample, kind, set(keys))
        if (sample / labels[r["key"]]["image"]).is_file()
    ]
    if not rows:
        raise ValueError(f"{sample}: no training images with byproducts to show")
    boxes = _coco_boxes(sample) if kind == "coco-ab" else {}
    tiles = [_draw_tile(r, labels[r["key"]], sample, tile, boxes.get(r["key"])) for r in rows]
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % cols)
    grid = np.vstack([np.hstack(tiles[i : i + cols]) for i in range(0, len(tiles), cols)])
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), grid)
    return out
