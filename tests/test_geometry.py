"""The crop/flip arithmetic of luab_data.geometry: RNG, crop rules, points, maps, alignment."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from luab_data import geometry as geo
from luab_data.loaders.alignment import (
    map_peak,
    marked_sample,
    marker_clear_of_edges,
    marker_position,
)

MASK = (1 << 64) - 1
OUT_HW = (48, 64)  # non-square on purpose: a swapped axis cannot pass
MAP_HW = (12, 16)
_DEFAULTS = ((0.08, 1.0), (3 / 4, 4 / 3))  # scale, ratio


def _mix64_py(z: int) -> int:
    z &= MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def _torchvision_rule(width, height, draw, scale, ratio):
    """torchvision.transforms.RandomResizedCrop.get_params, written out, fed our draws."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for attempt in range(10):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * draw(4 * attempt))
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * draw(4 * attempt + 1))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            i = int(draw(4 * attempt + 2) * (height - h + 1))
            j = int(draw(4 * attempt + 3) * (width - w + 1))
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def test_counter_rng_matches_splitmix64_and_is_uniform():
    for z in (0, 1, 12345, MASK, 0x9E3779B97F4A7C15):
        assert int(geo.mix64(np.uint64(z))) == _mix64_py(z)
    key = np.uint64(geo.sample_key(7, 3, 11))
    draws = np.array([geo.uniform(key, c) for c in range(20000)])
    assert draws.min() >= 0.0 and draws.max() < 1.0
    assert abs(draws.mean() - 0.5) < 0.01
    assert np.histogram(draws, bins=10, range=(0, 1))[0].min() > 1800
    assert geo.sample_key(7, 3, 11) == key
    assert len({int(geo.sample_key(7, e, i)) for e in range(10) for i in range(100)}) == 1000


def test_random_resized_crop_is_torchvisions_rule():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        width, height = (int(v) for v in rng.integers(8, 800, 2))
        key = np.uint64(geo.sample_key(int(rng.integers(1 << 31)), int(rng.integers(100)), 5))
        got = geo.random_resized_crop(width, height, key, 0.08, 1.0, 3 / 4, 4 / 3)
        want = _torchvision_rule(width, height, lambda c, k=key: geo.uniform(k, c), *_DEFAULTS)
        assert tuple(int(v) for v in got) == want
        top, left, h, w = want
        assert 0 <= top and 0 <= left and 0 < h and 0 < w
        assert top + h <= height and left + w <= width


def test_fallback_is_the_central_crop():
    # no 3/4..4/3 box of >= 8% area fits a 2000 x 20 strip: all 10 attempts fail
    assert tuple(geo.random_resized_crop(2000, 20, np.uint64(9), 0.08, 1.0, 0.75, 4 / 3)) == (
        0,
        (2000 - 27) // 2,
        20,
        27,
    )
    assert tuple(geo.random_resized_crop(20, 2000, np.uint64(9), 0.08, 1.0, 0.75, 4 / 3)) == (
        (2000 - 27) // 2,
        0,
        27,
        20,
    )


def test_center_crop_matches_ffcv():
    from ffcv.fields.rgb_image import get_center_crop

    for width, height in [(500, 375), (375, 500), (224, 224), (97, 301), (1, 1)]:
        want = get_center_crop(height, width, None, geo.DEFAULT_CENTER_RATIO)
        got = geo.center_crop(width, height, geo.DEFAULT_CENTER_RATIO)
        assert tuple(int(v) for v in got) == tuple(int(v) for v in want)


def test_crop_is_a_function_of_seed_epoch_index():
    a = geo.crop_box(500, 375, seed=3, epoch=1, index=42)
    assert a == geo.crop_box(500, 375, seed=3, epoch=1, index=42)
    others = [
        geo.crop_box(500, 375, seed=3, epoch=2, index=42),
        geo.crop_box(500, 375, seed=4, epoch=1, index=42),
        geo.crop_box(500, 375, seed=3, epoch=1, index=43),
    ]
    assert all(o[0] != a[0] for o in others)
    draws = [geo.crop_box(300, 200, 0, e, i) for e in range(4) for i in range(1000)]
    flips = np.array([d[2] for d in draws])
    assert 0.46 < flips.mean() < 0.54
    areas = np.array([(b[2] - b[0]) * (b[3] - b[1]) for _, b, _ in draws])
    assert areas.min() >= 0.07 and areas.max() <= 1.0 and 0.3 < areas.mean() < 0.5
    pixels, box, flip = geo.crop_box(500, 375, 0, 0, 0, train=False)
    assert pixels == (23, 86, 328, 328) and flip is False
    # to the last bit or one ulp away, depending on how LLVM compiled the division
    assert box == pytest.approx((86 / 500, 23 / 375, 414 / 500, 351 / 375), rel=1e-15)


@pytest.mark.parametrize(
    ("point", "flip", "want"),
    [
        ((0.5, 0.5), False, (0.5, 0.5, 1.0)),
        ((0.25, 0.25), False, (0.0, 0.0, 1.0)),  # on the corner: inside (inclusive)
        ((0.75, 0.75), False, (1.0, 1.0, 1.0)),
        ((0.75, 0.5), True, (0.0, 0.5, 1.0)),  # mirrored
        ((0.3, 0.5), True, (0.9, 0.5, 1.0)),
        ((0.7500001, 0.5), False, (-1.0, -1.0, 0.0)),  # just outside
        ((0.5, 0.2), True, (-1.0, -1.0, 0.0)),
        ((-1.0, -1.0), False, (-1.0, -1.0, 0.0)),  # absent point
        ((math.nan, 0.5), False, (-1.0, -1.0, 0.0)),
    ],
)
def test_point_rule(point, flip, want):
    got = geo.transform_point(point[0], point[1], 0.25, 0.25, 0.75, 0.75, flip)
    assert got == pytest.approx(want)


def test_transform_points_vectorised():
    targets, weights = geo.transform_points(
        np.array([[0.5, 0.5], [0.9, 0.1]]), (0.0, 0.0, 0.5, 1.0), True
    )
    np.testing.assert_allclose(targets, [[0.0, 0.5], [-1.0, -1.0]])
    np.testing.assert_array_equal(weights, [1.0, 0.0])


def test_map_identity_flip_and_constant():
    rng = np.random.default_rng(1)
    amap = rng.integers(0, 255, (3, 20, 30)).astype(np.uint8)
    whole = (0.0, 0.0, 1.0, 1.0)
    np.testing.assert_allclose(geo.crop_map(amap, whole, False, (20, 30)), amap, atol=1e-4)
    np.testing.assert_allclose(
        geo.crop_map(amap, whole, True, (20, 30)), amap[:, :, ::-1], atol=1e-4
    )
    flat = np.full((1, 20, 30), 77, np.uint8)
    out = geo.crop_map(flat, (0.1, 0.3, 0.4, 0.9), True, (7, 5), scale=2.0)
    np.testing.assert_allclose(out, 154.0, rtol=1e-6)  # weights sum to one, edges replicate


def test_map_downsampling_keeps_a_narrow_peak():
    amap = np.zeros((1, 64, 64), np.float32)
    amap[0, 40, 21] = 1.0
    out = geo.crop_map(amap, (0.0, 0.0, 1.0, 1.0), False, (8, 8))
    assert out.sum() == pytest.approx(1.0 / 64, rel=0.05)  # mass kept: not skipped by sampling
    np.testing.assert_allclose(map_peak(out[0]), [2.5, 5.5])


def _reference_augment(image: np.ndarray, pixel_box, flip: bool) -> np.ndarray:
    """The reference loader's image path: crop, cv2 INTER_AREA resize (as FFCV), mirror."""
    top, left, h, w = pixel_box
    out = cv2.resize(image[top : top + h, left : left + w], OUT_HW[::-1], cv2.INTER_AREA)
    return out[:, ::-1] if flip else out


def _alignment_errors(n: int, target_epoch_shift: int = 0) -> tuple[list[float], list[float]]:
    """Marker-to-target (px) and map-peak-to-target (cells) errors over ``n`` augmentations.

    ``target_epoch_shift`` != 0 draws the targets' crop from another epoch: decoupled."""
    marker_err, map_err = [], []
    for k in range(n):
        index, epoch = k % 64, k // 64
        s = marked_sample(index)
        height, width = s.image.shape[:2]
        pix, box, flip = geo.crop_box(width, height, 5, epoch, index)
        _, tbox, tflip = geo.crop_box(width, height, 5, epoch + target_epoch_shift, index)
        target, weight = geo.transform_points(s.point, tbox, tflip)
        if weight[0] == 0 or not marker_clear_of_edges(s.point, np.array(box), (width, height)):
            continue
        found = marker_position(_reference_augment(s.image, pix, flip))
        want = geo.target_to_pixel(target[0], OUT_HW)
        marker_err.append(np.inf if found is None else float(np.hypot(*(found - want))))
        peak = map_peak(geo.crop_map(s.amap, box, flip, MAP_HW)[0])
        map_err.append(float(np.abs(peak - geo.target_to_pixel(target[0], MAP_HW)).max()))
    return marker_err, map_err


def test_marker_lands_on_target_reference_path():
    marker_err, map_err = _alignment_errors(2400)
    assert len(marker_err) >= 1000
    assert max(marker_err) <= 1.0, np.sort(marker_err)[-5:]
    assert max(map_err) <= 1.0, np.sort(map_err)[-5:]


def test_decoupled_crops_fail_reference_path():
    marker_err, map_err = _alignment_errors(600, target_epoch_shift=1)
    assert np.mean(np.array(marker_err) > 1.0) > 0.5
    assert np.mean(np.array(map_err) > 1.0) > 0.5
