"""Scenes: Fashion-MNIST items pasted at random position and scale on a background family.

The shortcut lives here. In the training split (and the in-distribution test split, which
follows the same law) each class comes with its own background family with probability rho:
round(rho * n) images in all get their class's family, spread as evenly as the class sizes allow
(floor(rho * n_c) each, the remainder to random classes); the others get a family drawn
uniformly from the other nine. The out-of-distribution split draws the family independently of
the class. Layout (what is where) and rendering (pixels) use separate random streams, so the
byproducts are the same with or without images.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from luab_data.sample.backgrounds import N_FAMILIES, render_background
from luab_data.sample.classes import N_CLASSES
from luab_data.sample.fashion import ITEM_SIZE, Items

SPLITS = ("train", "val_id", "val_ood")
OOD_SPLITS = frozenset({"val_ood"})


@dataclass(frozen=True)
class SceneStyle:
    """Size and crowding of the images of one kind."""

    min_side: int = 64
    max_side: int = 160
    max_aspect: float = 1.7  # width/height in [1/max_aspect, max_aspect]
    min_objects: int = 1
    max_objects: int = 1
    primary_scale: tuple[float, float] = (0.45, 0.85)  # item side / shorter image side
    other_scale: tuple[float, float] = (0.25, 0.45)


IMAGENET_STYLE = SceneStyle()
COCO_STYLE = SceneStyle(min_side=96, max_side=200, max_objects=4, primary_scale=(0.4, 0.6))


@dataclass(frozen=True)
class Scenes:
    """A run of scenes as arrays; objects are flattened with offsets (object 0 is primary)."""

    cls: np.ndarray  # (n,) primary class
    family: np.ndarray  # (n,) background family
    width: np.ndarray  # (n,) int
    height: np.ndarray  # (n,) int
    obj_offsets: np.ndarray  # (n + 1,)
    obj_cls: np.ndarray  # (m,)
    obj_item: np.ndarray  # (m,) index into the Items of the split
    obj_side: np.ndarray  # (m,) pasted item side, px
    obj_xy: np.ndarray  # (m, 2) top-left of the pasted item, px
    obj_box: np.ndarray  # (m, 4) tight object box x0, y0, x1, y1 in px (float)

    def __len__(self) -> int:
        return len(self.cls)

    def objects(self, i: int) -> range:
        return range(int(self.obj_offsets[i]), int(self.obj_offsets[i + 1]))


def balanced_classes(n: int) -> np.ndarray:
    """Class-major class list (the order of an ImageNet wnid folder walk), sizes within 1."""
    counts = np.full(N_CLASSES, n // N_CLASSES)
    counts[: n % N_CLASSES] += 1
    return np.repeat(np.arange(N_CLASSES), counts).astype(np.int16)


def _matched_counts(sizes: np.ndarray, rho: float, rng: np.random.Generator) -> np.ndarray:
    """How many images of each class get their own family: round(rho * n) in all, shared out
    as evenly as the class sizes allow (floor(rho * n_c), the rest to random classes)."""
    base = np.floor(rho * sizes).astype(np.int64)
    extra = int(round(rho * sizes.sum())) - int(base.sum())
    room = np.flatnonzero(base < sizes)
    base[rng.permutation(room)[:extra]] += 1
    return base


def background_families(
    cls: np.ndarray, split: str, rho: float, rng: np.random.Generator
) -> np.ndarray:
    """The shortcut law: family == class for round(rho * n) images, spread evenly over the
    classes; the others get one of the nine other families, uniformly."""
    if split in OOD_SPLITS:
        return rng.integers(0, N_FAMILIES, len(cls)).astype(np.int16)
    other = rng.integers(1, N_FAMILIES, len(cls))  # an offset, never 0: some other family
    family = ((cls + other) % N_FAMILIES).astype(np.int16)
    members = [np.flatnonzero(cls == c) for c in range(N_CLASSES)]
    counts = _matched_counts(np.array([len(m) for m in members]), rho, rng)
    for m, k in zip(members, counts, strict=True):
        family[rng.permutation(m)[:k]] = cls[m[0]] if len(m) else 0
    return family


def _image_sizes(n: int, style: SceneStyle, rng: np.random.Generator):
    side = rng.uniform(style.min_side, style.max_side, n)
    aspect = np.exp(rng.uniform(-1, 1, n) * np.log(style.max_aspect))
    w = np.clip(np.round(side * np.sqrt(aspect)), style.min_side, style.max_side)
    h = np.clip(np.round(side / np.sqrt(aspect)), style.min_side, style.max_side)
    return w.astype(np.int32), h.astype(np.int32)


def _overlap(box: np.ndarray, others: list[np.ndarray]) -> float:
    """Largest fraction of `box` covered by any box in `others`."""
    worst = 0.0
    for o in others:
        iw = min(box[2], o[2]) - max(box[0], o[0])
        ih = min(box[3], o[3]) - max(box[1], o[1])
        if iw > 0 and ih > 0:
            area = (box[2] - box[0]) * (box[3] - box[1])
            worst = max(worst, iw * ih / area)
    return worst


def _boxes(item_box: np.ndarray, side: np.ndarray, xy: np.ndarray) -> np.ndarray:
    scale = (side / ITEM_SIZE)[:, None]
    return np.concatenate([xy + item_box[:, :2] * scale, xy + item_box[:, 2:] * scale], axis=1)


def _separate(
    j: int,
    first: int,
    side: int,
    w: int,
    h: int,
    item_box: np.ndarray,
    xy: np.ndarray,
    box: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """A few more tries to keep object j off the objects placed before it in its scene."""
    for _ in range(12):
        if _overlap(box[j], list(box[first:j])) < 0.25:
            return
        xy[j] = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
        box[j] = _boxes(item_box[None], np.array([side]), xy[j][None])[0]


def layout(
    cls: np.ndarray,
    family: np.ndarray,
    items: Items,
    style: SceneStyle,
    rng: np.random.Generator,
) -> Scenes:
    """Sizes, extra objects and placements for scenes whose class and family are given."""
    n = len(cls)
    width, height = _image_sizes(n, style, rng)
    n_obj = rng.integers(style.min_objects, style.max_objects + 1, n)
    offsets = np.concatenate([[0], np.cumsum(n_obj)]).astype(np.int64)
    m = int(offsets[-1])
    obj_cls = rng.integers(0, N_CLASSES, m).astype(np.int16)
    obj_cls[offsets[:-1]] = cls
    pick = (rng.random(m) * items.class_sizes[obj_cls]).astype(np.int64)
    obj_item = items.by_class_table[obj_cls, pick]
    scale = rng.uniform(*style.other_scale, m)
    scale[offsets[:-1]] = rng.uniform(*style.primary_scale, n)
    scene = np.repeat(np.arange(n), n_obj)
    short = np.minimum(width, height)[scene]
    side = np.maximum(np.round(scale * short), 8).astype(np.int32)
    room = np.stack([width[scene] - side + 1, height[scene] - side + 1], axis=1)
    xy = (rng.random((m, 2)) * room).astype(np.int64)
    item_box = items.boxes[obj_item]
    box = _boxes(item_box, side, xy)
    for j in np.flatnonzero(np.arange(m) != offsets[scene]):  # objects after a scene's first
        i = scene[j]
        _separate(
            j,
            int(offsets[i]),
            int(side[j]),
            int(width[i]),
            int(height[i]),
            item_box[j],
            xy,
            box,
            rng,
        )
    return Scenes(
        cls, family, width, height, offsets, obj_cls, obj_item, side, xy.astype(np.int32), box
    )


def _tint(rng: np.random.Generator) -> np.ndarray:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(40, 200), rng.uniform(170, 255)]]])
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def render(scenes: Scenes, i: int, items: Items, rng: np.random.Generator) -> np.ndarray:
    """The (h, w, 3) uint8 RGB image of scene i."""
    w, h = int(scenes.width[i]), int(scenes.height[i])
    img = render_background(int(scenes.family[i]), w, h, rng).astype(np.float32)
    for j in scenes.objects(i):
        s = int(scenes.obj_side[j])
        x, y = (int(v) for v in scenes.obj_xy[j])
        item = cv2.resize(
            items.images[scenes.obj_item[j]], (s, s), interpolation=cv2.INTER_LINEAR
        ).astype(np.float32)
        alpha = np.clip(item / 60.0, 0.0, 1.0)[..., None]
        colour = _tint(rng) * (0.25 + 0.75 * item[..., None] / 255.0)
        patch = img[y : y + s, x : x + s]
        img[y : y + s, x : x + s] = patch * (1 - alpha) + colour * alpha
    return img.clip(0, 255).astype(np.uint8)


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()
