"""Synthetic samples with a bright marker at a known point, and the measurements that prove a
loader keeps image, map and point aligned (docs/ARCHITECTURE.md, contract 4).

Every loader (FFCV, the PyTorch reference, DALI) is held to the same check: after its crop and
flip, the marker's centroid lies within one output pixel of the point target, and the map's
peak within one map cell of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MARKER_SIGMA = 1.5  # px of the stored image; the marker is a Gaussian blob of this width
MARKER_REACH = 3.0 * MARKER_SIGMA  # beyond this, the blob is dark: a crop edge that far is safe
BACKGROUND_MAX = 30  # background noise stays below this, the marker's peak is 255
_THRESHOLD = 45.0


@dataclass(frozen=True)
class MarkedSample:
    image: np.ndarray  # (H, W, 3) uint8, dark noise with a bright blob at the point
    amap: np.ndarray  # (2, Hm, Wm) uint8: 0 = Gaussian at the point, 1 = ramp along x
    point: np.ndarray  # (2,) float32 normalised (x, y); (-1, -1) when absent
    label: int


def marked_sample(
    index: int,
    map_shape: tuple[int, int] = (48, 64),
    size_range: tuple[int, int] = (96, 224),
    map_sigma_px: float = 4.0,
    absent_every: int = 0,
) -> MarkedSample:
    """A reproducible sample: random size and point (from ``index``), marker at the point.

    Every ``absent_every``-th sample (if > 0) has no point: no marker, a flat map channel 0.
    """
    rng = np.random.default_rng(1000 + index)
    height, width = (int(v) for v in rng.integers(size_range[0], size_range[1], 2))
    image = rng.integers(0, BACKGROUND_MAX, (height, width, 3), dtype=np.uint8)
    amap = np.zeros((2, *map_shape), np.uint8)
    amap[1] = np.linspace(0, 255, map_shape[1]).astype(np.uint8)[None, :]
    point = np.array([-1.0, -1.0], np.float32)
    if not (absent_every and index % absent_every == 0):
        point = rng.uniform(0.1, 0.9, 2).astype(np.float32)
        blob = _gaussian(point, (height, width), MARKER_SIGMA, (width, height))
        image = np.maximum(image, (255.0 * blob).astype(np.uint8)[..., None])
        amap[0] = (255.0 * _gaussian(point, map_shape, map_sigma_px, (width, height))).astype(
            np.uint8
        )
    return MarkedSample(image, amap, point, index % 10)


def _gaussian(
    point: np.ndarray, shape: tuple[int, int], sigma_px: float, image_size: tuple[int, int]
) -> np.ndarray:
    """Gaussian over a raster of ``shape`` covering the whole image, sigma in image pixels
    (anisotropic in cells when the raster and the image differ in aspect: contract 2)."""
    rows, cols = shape
    xs = (np.arange(cols) + 0.5) / cols - point[0]
    ys = (np.arange(rows) + 0.5) / rows - point[1]
    dx = xs * image_size[0] / sigma_px
    dy = ys * image_size[1] / sigma_px
    return np.exp(-0.5 * (dy[:, None] ** 2 + dx[None, :] ** 2))


def marker_position(image: np.ndarray) -> np.ndarray | None:
    """Brightness-weighted centroid of the marker, as a continuous (x, y) position in output
    pixels (pixel i covers [i, i+1)); None if no marker is visible. ``image``: (H, W, 3),
    uint8-valued."""
    gray = np.asarray(image, np.float64).mean(axis=-1)
    weight = np.clip(gray - _THRESHOLD, 0.0, None)
    total = weight.sum()
    if total <= 0.0:
        return None
    rows, cols = np.indices(weight.shape)
    return np.array([(weight * (cols + 0.5)).sum(), (weight * (rows + 0.5)).sum()]) / total


def map_peak(channel: np.ndarray) -> np.ndarray:
    """Centre of the arg-max cell of a (Ho, Wo) map, as a continuous (x, y) in cells."""
    row, col = np.unravel_index(int(np.argmax(channel)), channel.shape)
    return np.array([col + 0.5, row + 0.5])


def marker_clear_of_edges(point: np.ndarray, box: np.ndarray, size: tuple[int, int]) -> bool:
    """Whether the whole marker blob lies inside the crop (a clipped blob's centroid is pulled
    inward by design, so such samples only get the point/map checks). ``size``: stored
    image (width, height)."""
    width, height = size
    x, y = point[0] * width, point[1] * height
    return bool(
        x - box[0] * width >= MARKER_REACH
        and box[2] * width - x >= MARKER_REACH
        and y - box[1] * height >= MARKER_REACH
        and box[3] * height - y >= MARKER_REACH
    )


def many_points(sample: MarkedSample) -> np.ndarray:
    """A (K, 2) point field as COCO-AB has (one per class): the marker, absent, the centre."""
    return np.stack([sample.point, [-1.0, -1.0], [0.5, 0.5]]).astype(np.float32)


class _Rows:
    """The indexed dataset FFCV's writer takes: one tuple of field values per sample."""

    def __init__(self, samples: list[MarkedSample], with_many: bool) -> None:
        self.samples, self.with_many = samples, with_many

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple:
        # FFCV's 'proportion' mode draws raw vs JPEG from NumPy's global generator right after
        # this call: seeding it per sample makes the choice the same in any writer process.
        np.random.seed(i)
        s = self.samples[i]
        row = (s.image, s.label, s.amap, s.point)
        return (*row, many_points(s)) if self.with_many else row


def write_marked_beton(
    path, n: int, map_shape: tuple[int, int], absent_every: int, with_many: bool = True
) -> list[MarkedSample]:
    """A small .beton of marked samples, half JPEG and half raw, with fields image, label,
    map (uint8 (2, *map_shape)), point ((2,) float32) and, if asked, points ((3, 2))."""
    from ffcv.fields import IntField, NDArrayField, RGBImageField

    from luab_data.beton.ffcv_workers import write_indexed

    samples = [marked_sample(i, map_shape, absent_every=absent_every) for i in range(n)]
    fields = {
        "image": RGBImageField(write_mode="proportion", compress_probability=0.5, jpeg_quality=95),
        "label": IntField(),
        "map": NDArrayField(np.dtype("uint8"), (2, *map_shape)),
        "point": NDArrayField(np.dtype("float32"), (2,)),
    }
    if with_many:
        fields["points"] = NDArrayField(np.dtype("float32"), (3, 2))
    write_indexed(str(path), fields, _Rows(samples, with_many), range(n), workers=1)
    return samples


# ---------------------------------------------------------------- checks shared by loader tests


def batch_arrays(batch) -> dict[str, np.ndarray]:
    """A Batch as NumPy arrays, images (N, H, W, 3). Copies: FFCV reuses its output buffers."""
    out = {k: v.detach().cpu().numpy().copy() for k, v in batch._asdict().items() if v is not None}
    out["images"] = out["images"].transpose(0, 2, 3, 1)
    return out


def check_contract(
    b: dict, i: int, sample: MarkedSample, size, seed: int, epoch: int, train: bool = True
) -> None:
    """Reported crop = geometry's crop; point target = geometry's transform of the point; the
    map's x-ramp channel falls exactly when the sample was mirrored."""
    from luab_data import geometry as geo

    _, box, flip = geo.crop_box(*size, seed, epoch, int(b["indices"][i]), train=train)
    np.testing.assert_allclose(b["boxes"][i], box, rtol=0, atol=1e-6)
    assert bool(b["flips"][i]) == flip
    target, weight = geo.transform_points(sample.point, box, flip)
    assert b["point_weights"][i] == weight[0]
    np.testing.assert_allclose(b["points"][i], target[0], atol=1e-5)
    ramp = b["maps"][i, 1]
    assert (ramp[:, -1].mean() < ramp[:, 0].mean()) == flip


def alignment_errors(
    b: dict, i: int, sample: MarkedSample, size, image_hw, map_hw
) -> tuple[float | None, float]:
    """(marker-to-target px, None when the blob is clipped by the crop; map-peak-to-target
    cells) for sample i of a batch_arrays() batch."""
    from luab_data import geometry as geo

    target = b["points"][i]
    marker = None
    if marker_clear_of_edges(sample.point, b["boxes"][i], size):
        found = marker_position(b["images"][i])
        want = geo.target_to_pixel(target, image_hw)
        marker = np.inf if found is None else float(np.hypot(*(found - want)))
    peak = map_peak(b["maps"][i, 0])
    return marker, float(np.abs(peak - geo.target_to_pixel(target, map_hw)).max())


@dataclass
class Measured:
    marker_err: list[float]
    map_err: list[float]
    seen: int
    boxes: dict  # (epoch, index) -> reported box


def augment_and_measure(
    loader,
    samples: list[MarkedSample],
    sizes,
    seed: int,
    image_hw,
    map_hw,
    batch_size: int,
    epochs: int = 20,
    on_batch=None,
) -> Measured:
    """Run a training loader for `epochs`, check every sample's contract and collect the
    marker and map-peak errors of those with a valid point. `on_batch(batch)` checks the
    tensors themselves (dtype, layout) before conversion."""
    out = Measured([], [], 0, {})
    for epoch in range(epochs):
        assert loader.epoch == epoch
        for batch in loader:
            if on_batch is not None:
                on_batch(batch)
            b = batch_arrays(batch)
            n = batch_size
            assert b["images"].shape == (n, *image_hw, 3) and b["maps"].shape == (n, 2, *map_hw)
            for i, index in enumerate(b["indices"]):
                s, size = samples[index], tuple(sizes[index])
                assert b["labels"][i] == s.label
                check_contract(b, i, s, size, seed, epoch)
                out.boxes[epoch, int(index)] = b["boxes"][i]
                out.seen += 1
                if b["point_weights"][i] == 1.0:
                    marker, cells = alignment_errors(b, i, s, size, image_hw, map_hw)
                    out.map_err.append(cells)
                    if marker is not None:
                        out.marker_err.append(marker)
    return out
