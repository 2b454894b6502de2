"""The reference PyTorch loader keeps image, map and point aligned, and agrees with FFCV's.

Marked samples (a bright blob at the point, the map peaked there) go through the reference
loader for >= 1,000 augmentations; a control whose map and point take another seed's crop must
fail the same check. Then the reference and the coupled FFCV loader read the same built .beton
and must produce the same batch contract. Tests that iterate an FFCV loader carry a timeout
(a numba error inside FFCV hangs instead of raising).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from beton_fixtures import OPTIONS, built, sample_dir, source_path

from luab_data import geometry as geo
from luab_data.beton.file import BetonFile
from luab_data.loaders.alignment import (
    map_peak,
    marker_clear_of_edges,
    marker_position,
    write_marked_beton,
)
from luab_data.loaders.contract import IMAGENET_MEAN, IMAGENET_STD, CropSettings, field_names
from luab_data.loaders.reference import (
    BetonSamples,
    ReferenceDataset,
    ReferenceLoader,
    collate,
)

N_MARKED = 128
ABSENT_EVERY = 9
MAP_SHAPE = (48, 64)
IMAGE_HW = (48, 64)  # non-square outputs: a swapped axis cannot pass
MAP_HW = (12, 16)
SEED = 5

pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <finalize object:pytest.PytestUnraisableExceptionWarning"
)


@pytest.fixture(scope="session")
def root(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "luab-beton"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def marked(tmp_path_factory):
    path = tmp_path_factory.mktemp("marked") / "marked.beton"
    return path, write_marked_beton(path, N_MARKED, MAP_SHAPE, ABSENT_EVERY, with_many=False)


def _errors(images, maps, points, boxes, i, sample) -> tuple[float | None, float]:
    """(marker-to-target px or None when the blob is clipped, map-peak-to-target cells)."""
    size = sample.image.shape[1::-1]
    marker = None
    if marker_clear_of_edges(sample.point, boxes[i], size):
        found = marker_position(images[i])
        want = geo.target_to_pixel(points[i], IMAGE_HW)
        marker = np.inf if found is None else float(np.hypot(*(found - want)))
    peak = map_peak(maps[i, 0])
    return marker, float(np.abs(peak - geo.target_to_pixel(points[i], MAP_HW)).max())


def _measure(batches, samples) -> tuple[list[float], list[float], int]:
    marker_err, map_err, seen = [], [], 0
    for b in batches:
        images = b.images.permute(0, 2, 3, 1).numpy()
        boxes, maps, points = b.boxes.numpy(), b.maps.numpy(), b.points.numpy()
        for i, index in enumerate(b.indices.tolist()):
            seen += 1
            if b.point_weights[i] == 1.0:
                marker, cells = _errors(images, maps, points, boxes, i, samples[index])
                map_err.append(cells)
                if marker is not None:
                    marker_err.append(marker)
    return marker_err, map_err, seen


@pytest.mark.timeout(120)
def test_alignment_over_many_augmentations(marked):
    path, samples = marked
    loader = ReferenceLoader(path, 32, image_size=IMAGE_HW, map_size=MAP_HW, seed=SEED, workers=0)
    marker_err, map_err, seen = [], [], 0
    for epoch in range(20):  # 20 x 128 = 2560 augmentations
        assert loader.epoch == epoch
        batches = list(loader)
        for b in batches:  # the crop reported is the geometry's crop of (seed, epoch, index)
            for i, index in enumerate(b.indices.tolist()):
                w, h = samples[index].image.shape[1::-1]
                _, box, flip = geo.crop_box(w, h, SEED, epoch, index)
                np.testing.assert_allclose(b.boxes[i].numpy(), box, atol=1e-6)
                assert bool(b.flips[i]) == flip
        m, c, s = _measure(batches, samples)
        marker_err, map_err, seen = marker_err + m, map_err + c, seen + s
    assert seen == 2560 and len(marker_err) >= 1000 and len(map_err) >= 1000
    assert max(marker_err) <= 1.0, np.sort(marker_err)[-5:]
    assert max(map_err) <= 1.0, np.sort(map_err)[-5:]


class _Decoupled(ReferenceDataset):
    """Control: the image takes one seed's crop, the map and point another's."""

    def __init__(self, samples, crop: CropSettings, image_size, map_size) -> None:
        super().__init__(samples, crop, image_size, map_size)
        wrong = replace(crop, seed=crop.seed + 1)
        self.other = ReferenceDataset(samples, wrong, image_size, map_size)

    def __getitem__(self, index: int) -> dict:
        out, wrong = super().__getitem__(index), self.other[index]
        out["map"], out["point"] = wrong["map"], wrong["point"]
        return out


@pytest.mark.timeout(120)
def test_decoupled_crops_fail_the_check(marked):
    path, samples = marked
    loader = ReferenceLoader(path, 32, image_size=IMAGE_HW, map_size=MAP_HW, seed=SEED, workers=0)
    data = loader.dataset
    loader.dataset = _Decoupled(data.samples, data.crop, data.image_size, data.map_size)
    marker_err, _, _ = _measure(loader, samples)
    assert len(marker_err) >= 20
    assert np.mean(np.array(marker_err) > 1.0) > 0.5
    map_off = []  # the map followed the other crop too: its peak is away from the marker
    for b in loader:
        images = b.images.permute(0, 2, 3, 1).numpy()
        for i in range(len(b.indices)):
            found = marker_position(images[i])
            if found is not None and b.point_weights[i] == 1.0:
                peak = map_peak(b.maps[i, 0].numpy()) / np.array(MAP_HW[::-1])
                map_off.append(np.abs(peak - found / np.array(IMAGE_HW[::-1])).max() > 0.1)
    assert len(map_off) >= 20 and np.mean(map_off) > 0.5


def _numpy(batch) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in batch._asdict().items() if v is not None}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["imagenet-ab", "coco-ab"])
def test_reference_and_ffcv_agree(root, kind):
    """Same .beton, seed and epoch: identical crops, flips, points, weights, labels and maps;
    images equal up to the JPEG decoder (FFCV's and OpenCV's libjpeg-turbo calls)."""
    from luab_data.loaders.ffcv_loader import CoupledLoader

    path = built(root, kind)
    names = field_names(path)
    common = {"image_size": (40, 56), "map_size": (6, 10), "seed": 9, "names": names}
    ffcv = CoupledLoader(path, 20, workers=2, **common)
    ref = ReferenceLoader(path, 20, workers=0, **common)
    for loader in (ffcv, ref):
        loader.set_epoch(2)
    got = [_numpy(b) for b in ffcv]
    want = {int(i): s for s in map(_per_sample, ref) for i, s in s.items()}
    assert len(got) * 20 == (len(BetonFile(path)) // 20) * 20
    modes = BetonFile(path).metadata("image")["mode"]
    for b in got:
        for r, index in enumerate(b["indices"]):
            w = want[int(index)]
            for key in ("boxes", "flips", "labels", "points", "point_weights"):
                np.testing.assert_array_equal(b[key][r], w[key], err_msg=key)
            np.testing.assert_allclose(b["maps"][r], w["maps"], atol=1e-6)
            diff = np.abs(b["images"][r].astype(int) - w["images"]).mean()
            assert diff < (0.5 if modes[index] else 3.0), (index, diff)


def _per_sample(batch) -> dict[int, dict[str, np.ndarray]]:
    b = _numpy(batch)
    return {int(i): {k: v[r] for k, v in b.items()} for r, i in enumerate(b["indices"])}


@pytest.mark.timeout(120)
def test_records_and_image_folder_match_the_beton(root):
    """Over records + JPEG folder (maps rasterised on the fly) the reference loader yields
    what it reads from the .beton, for images the build did not resize."""
    path = built(root, "imagenet-ab")
    beton = BetonSamples(path, field_names(path))
    from_file = ReferenceDataset(beton, CropSettings(seed=4), (32, 32), (8, 8))
    loader = ReferenceLoader(
        source_path(root, "imagenet-ab"),
        8,
        options=OPTIONS,
        seed=4,
        images=sample_dir(root, "imagenet-ab"),
        image_size=(32, 32),
        map_size=(8, 8),
        workers=0,
    )
    sizes, checked = BetonFile(path).image_size(), 0
    for index in range(len(beton)):
        a, b = loader.dataset[index], from_file[index]
        np.testing.assert_array_equal(a["label"], b["label"])
        if sizes[index].max() < OPTIONS.max_resolution:  # same stored raster, same crop
            for key in ("box", "flip", "point"):
                np.testing.assert_array_equal(a[key], b[key])
            np.testing.assert_array_equal(a["map"], b["map"])
            checked += 1
    assert checked >= 10
    batch = collate([loader.dataset[i] for i in range(4)], squeeze_points=True)
    assert batch["point"].shape == (4, 3) and batch["image"].dtype == torch.uint8


def test_recipe_loader_settings(root):
    from luab_data.recipes import load_recipe, loader_kwargs

    recipe = load_recipe("sample")
    assert loader_kwargs(recipe)["shuffle"] is True
    path = built(root, "coco-ab")
    kwargs = {
        **loader_kwargs(recipe, train=False),
        "batch_size": 16,
        "workers": 0,
        "image_size": 64,
    }
    batch = next(iter(ReferenceLoader(path, names=field_names(path), **kwargs)))
    assert batch.images.shape == (16, 3, 64, 64) and not batch.flips.any()
    assert batch.indices.tolist() == list(range(16)) and batch.labels.shape == (16, 80)
    assert batch.maps.shape == (16, 2, 14, 14) and batch.points.shape == (16, 80, 2)


def test_normalised_images_on_a_device(root):
    path = built(root, "imagenet-ab")
    common = {
        "batch_size": 8,
        "train": False,
        "image_size": 32,
        "workers": 0,
        "indices": range(8),
        "names": field_names(path),
    }
    raw = next(iter(ReferenceLoader(path, **common)))
    norm = next(iter(ReferenceLoader(path, normalize=True, device="cpu", **common)))
    assert norm.images.dtype == torch.float32
    assert norm.images.is_contiguous(memory_format=torch.channels_last)
    mean = torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
    torch.testing.assert_close(norm.images * std + mean, raw.images.float(), atol=1e-3, rtol=0)
