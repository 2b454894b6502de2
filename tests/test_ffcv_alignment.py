"""The FFCV loader keeps image, attention map and point aligned under one crop and flip.

A small .beton of synthetic images (bright marker at a known point, map peaked there) is read
back through the coupled loader; every test that iterates a loader carries a timeout, because a
numba error inside an FFCV stage hangs instead of raising.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("ffcv")

from ffcv.loader import Loader, OrderOption  # noqa: E402
from ffcv.reader import Reader  # noqa: E402

from luab_data import geometry as geo  # noqa: E402
from luab_data.loaders.alignment import (  # noqa: E402
    alignment_errors,
    augment_and_measure,
    batch_arrays,
    check_contract,
    many_points,
    map_peak,
    marker_clear_of_edges,
    marker_position,
    write_marked_beton,
)
from luab_data.loaders.contract import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    CropSettings,
    FieldNames,
)
from luab_data.loaders.ffcv_loader import CoupledLoader, build_pipelines  # noqa: E402
from luab_data.loaders.ffcv_ops import CropPlan  # noqa: E402

N_SAMPLES = 128
ABSENT_EVERY = 9  # samples 0, 9, 18, ... have no point
MAP_SHAPE = (48, 64)
IMAGE_HW = (48, 64)  # output sizes, non-square so that a swapped axis cannot pass
MAP_HW = (12, 16)
SEED = 11

# numba's dispatcher finaliser can raise a KeyError ("Exception ignored") when a loader's
# compiled functions are collected while another loader's thread runs; FFCV's own decoders do
# it too. Harmless, and not what these tests are about.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <finalize object:pytest.PytestUnraisableExceptionWarning"
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("beton") / "marked.beton"
    return path, write_marked_beton(path, N_SAMPLES, MAP_SHAPE, ABSENT_EVERY)


@pytest.fixture(scope="module")
def train_loader(dataset):
    path, _ = dataset
    return CoupledLoader(path, 64, image_size=IMAGE_HW, map_size=MAP_HW, seed=SEED, workers=2)


@pytest.mark.timeout(180)
def test_round_trip_of_fields(dataset):
    path, samples = dataset
    loader = Loader(
        str(path),
        batch_size=50,
        num_workers=1,
        order=OrderOption.SEQUENTIAL,
        drop_last=False,
        pipelines={"image": None},
    )
    got = {"label": [], "map": [], "point": [], "points": []}
    for outputs in loader:
        for name, value in zip(got, outputs, strict=True):
            got[name].append(value.numpy().copy())
    got = {k: np.concatenate(v) for k, v in got.items()}
    assert np.array_equal(got["label"][:, 0], [s.label for s in samples])
    assert np.array_equal(got["map"], np.stack([s.amap for s in samples]))  # bit-exact
    assert np.array_equal(got["point"], np.stack([s.point for s in samples]))
    assert np.array_equal(got["points"], np.stack([many_points(s) for s in samples]))
    reader = Reader(str(path))
    sizes = np.stack([reader.metadata["f0"]["width"], reader.metadata["f0"]["height"]], 1)
    assert np.array_equal(sizes, [s.image.shape[1::-1] for s in samples])
    assert set(reader.metadata["f0"]["mode"]) == {0, 1}  # both JPEG and raw images exercised


@pytest.mark.timeout(240)
def test_train_alignment_over_many_augmentations(dataset, train_loader):
    _, samples = dataset
    # 20 x 128 = 2560 augmentations
    m = augment_and_measure(
        train_loader, samples, train_loader.plan.sizes, SEED, IMAGE_HW, MAP_HW, batch_size=64
    )
    marker_err, map_err, seen, boxes_by_epoch = m.marker_err, m.map_err, m.seen, m.boxes
    assert seen == 2560 and len(marker_err) >= 1000
    assert max(marker_err) <= 1.0, np.sort(marker_err)[-5:]
    assert max(map_err) <= 1.0, np.sort(map_err)[-5:]
    differ = [not np.array_equal(boxes_by_epoch[0, i], boxes_by_epoch[1, i]) for i in range(64)]
    assert np.mean(differ) > 0.9  # a new crop every epoch

    # abandon an epoch half-way, then replay epoch 3: same crops as the first time
    next(iter(train_loader))
    train_loader.set_epoch(3)
    for batch in train_loader:
        b = batch_arrays(batch)
        for i, index in enumerate(b["indices"]):
            np.testing.assert_array_equal(b["boxes"][i], boxes_by_epoch[3, int(index)])


@pytest.mark.timeout(180)
def test_decoupled_crops_fail_the_check(dataset):
    """Control: the same loader, but maps and points draw their crops with another seed."""
    path, samples = dataset
    reader = Reader(str(path))
    plan = CropPlan.from_reader(reader, CropSettings(seed=SEED))
    other = CropPlan.from_reader(reader, CropSettings(seed=SEED + 1))
    pipelines = build_pipelines(
        reader, plan, image_size=IMAGE_HW, map_size=MAP_HW, map_plan=other, point_plan=other
    )
    loader = Loader(str(path), 64, num_workers=2, order=OrderOption.RANDOM, pipelines=pipelines)
    outputs = list(loader.pipeline_specs)
    marker_fail, map_fail = [], []
    for outs in loader:
        b = {k: v.numpy().copy() for k, v in zip(outputs, outs, strict=True)}
        images = b["image"].transpose(0, 2, 3, 1)
        for i, index in enumerate(b["luab_index"]):
            s = samples[index]
            tx, ty, weight = b["point"][i, 0]
            box = b["luab_crop"][i, :4]
            if weight == 0 or not marker_clear_of_edges(s.point, box, s.image.shape[1::-1]):
                continue
            found = marker_position(images[i])
            want = geo.target_to_pixel(np.array([tx, ty]), IMAGE_HW)
            marker_fail.append(found is None or np.hypot(*(found - want)) > 1.0)
            # the map followed the decoupled crop too: its peak is away from the marker
            if found is not None:
                peak = map_peak(b["map"][i, 0]) / np.array(MAP_HW[::-1])
                map_fail.append(np.abs(peak - found / np.array(IMAGE_HW[::-1])).max() > 0.1)
    assert len(marker_fail) >= 20
    assert np.mean(marker_fail) > 0.5
    assert np.mean(map_fail) > 0.5


@pytest.mark.timeout(180)
def test_validation_pipeline_centre_crop_normalised(dataset):
    """Centre crop, no flip, normalised images; device="cpu" runs the GPU pipeline's shape
    (ToDevice, channels-last, normalisation after the copy); a (K, 2) point field."""
    path, samples = dataset
    loader = CoupledLoader(
        path,
        50,
        train=False,
        image_size=IMAGE_HW,
        map_size=MAP_HW,
        seed=SEED,
        workers=2,
        normalize=True,
        device="cpu",
        names=FieldNames(point="points"),
    )
    mean = np.array(IMAGENET_MEAN, np.float32)
    std = np.array(IMAGENET_STD, np.float32)
    sizes, indices, checked = loader.plan.sizes, [], 0
    for batch in loader:
        assert batch.images.dtype == torch.float32
        assert batch.images.is_contiguous(memory_format=torch.channels_last)
        assert batch.points.shape == (len(batch.indices), 3, 2)
        b = batch_arrays(batch)
        b["images"] = np.rint(b["images"] * std + mean)  # back to the uint8 scale
        assert not b["flips"].any()
        assert (b["point_weights"][:, 1:] == [0.0, 1.0]).all()  # absent; centre always inside
        for i, index in enumerate(b["indices"]):
            want, _ = geo.transform_points(many_points(samples[index]), b["boxes"][i], False)
            np.testing.assert_allclose(b["points"][i, 2], want[2], atol=1e-5)
        b["points"], b["point_weights"] = b["points"][:, 0], b["point_weights"][:, 0]
        for i, index in enumerate(b["indices"]):
            s, size = samples[index], tuple(sizes[index])
            check_contract(b, i, s, size, SEED, epoch=0, train=False)
            if b["point_weights"][i] == 1.0:
                marker, cells = alignment_errors(b, i, s, size, IMAGE_HW, MAP_HW)
                assert cells <= 1.0
                if marker is not None:
                    assert marker <= 1.0
                    checked += 1
        indices.extend(b["indices"].tolist())
    assert indices == list(range(N_SAMPLES))  # sequential, nothing dropped
    assert checked >= 50
