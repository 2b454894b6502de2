"""The DALI loader (CPU-only mode) keeps image, map and point aligned under one crop and flip,
and agrees with the FFCV loader on the same .beton sample by sample.

The .beton holds synthetic images with a bright marker at a known point and a map peaked there,
half of them JPEG and half raw (FFCV's 'proportion' mode), so both decoder routes are covered.
Every test that iterates a loader carries a timeout (an FFCV stage can hang instead of raising).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")
pytest.importorskip("ffcv")

from ffcv.fields import IntField, RGBImageField  # noqa: E402

from luab_data import geometry as geo  # noqa: E402
from luab_data.beton.batch_file import BatchBetonFile  # noqa: E402
from luab_data.beton.ffcv_workers import write_indexed  # noqa: E402
from luab_data.beton.fields import JPEG_MODE, RAW_MODE  # noqa: E402
from luab_data.loaders.alignment import (  # noqa: E402
    augment_and_measure,
    batch_arrays,
    check_contract,
    map_peak,
    marked_sample,
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
from luab_data.loaders.dali_loader import BetonBatchSource, DaliLoader  # noqa: E402
from luab_data.loaders.ffcv_loader import CoupledLoader  # noqa: E402

N_SAMPLES = 128
ABSENT_EVERY = 9
MAP_SHAPE = (48, 64)
IMAGE_HW = (48, 64)  # non-square outputs, so that a swapped axis cannot pass
MAP_HW = (12, 16)
SEED = 11
CPU = {"device": None, "workers": 2}

pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <finalize object:pytest.PytestUnraisableExceptionWarning"
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("beton") / "marked.beton"
    return path, write_marked_beton(path, N_SAMPLES, MAP_SHAPE, ABSENT_EVERY)


def test_beton_reader_round_trip(dataset):
    path, samples = dataset
    beton = BatchBetonFile(path)
    images = beton.image_table("image")
    assert set(images.mode.tolist()) == {JPEG_MODE, RAW_MODE}
    assert np.array_equal(images.sizes, [s.image.shape[1::-1] for s in samples])
    every = np.arange(N_SAMPLES)
    assert np.array_equal(beton.gather("map", every), np.stack([s.amap for s in samples]))
    assert np.array_equal(beton.gather("point", every), np.stack([s.point for s in samples]))
    assert np.array_equal(beton.gather("label", every), [s.label for s in samples])
    for i in range(8):
        region = beton.data[images.ptr[i] : images.ptr[i] + images.nbytes[i]]
        if images.mode[i] == RAW_MODE:
            assert np.array_equal(region, samples[i].image.reshape(-1))
        else:  # a whole JPEG stream: SOI ... EOI
            assert bytes(region[:2]) == b"\xff\xd8" and bytes(region[-2:]) == b"\xff\xd9"


@pytest.mark.timeout(120)
def test_train_alignment_over_many_augmentations(dataset):
    _, samples = dataset
    loader = DaliLoader(dataset[0], 64, image_size=IMAGE_HW, map_size=MAP_HW, seed=SEED, **CPU)

    def layout(batch) -> None:
        assert batch.images.dtype == torch.uint8
        assert batch.images.is_contiguous(memory_format=torch.channels_last)

    # 20 x 128 = 2560 augmentations
    m = augment_and_measure(
        loader, samples, loader.source.sizes, SEED, IMAGE_HW, MAP_HW, batch_size=64, on_batch=layout
    )
    marker_err, map_err, seen, boxes = m.marker_err, m.map_err, m.seen, m.boxes
    assert seen == 2560 and len(marker_err) >= 1000
    assert max(marker_err) <= 1.0, np.sort(marker_err)[-5:]
    assert max(map_err) <= 1.0, np.sort(map_err)[-5:]
    differ = [not np.array_equal(boxes[0, i], boxes[1, i]) for i in range(64)]
    assert np.mean(differ) > 0.9  # a new crop every epoch

    # abandon an epoch after one batch, then replay epoch 3: the crops of the first time
    next(iter(loader))
    loader.set_epoch(3)
    replayed = 0
    for batch in loader:
        b = batch_arrays(batch)
        for i, index in enumerate(b["indices"]):
            np.testing.assert_array_equal(b["boxes"][i], boxes[3, int(index)])
            replayed += 1
    assert replayed == N_SAMPLES


@pytest.mark.timeout(60)
def test_decoupled_crops_fail_the_check(dataset):
    """Control: the same pipeline, but maps and points get the crops of another seed."""
    path, samples = dataset
    loader = DaliLoader(path, 64, image_size=IMAGE_HW, map_size=MAP_HW, seed=SEED, **CPU)
    source = loader.source
    other = BetonBatchSource(source.beton, CropSettings(seed=SEED + 1), source.names)
    coupled = source.batch

    def decoupled(indices, epoch):
        out, wrong = coupled(indices, epoch), other.batch(indices, epoch)
        for name in ("roi_start", "roi_end", "points", "weights"):
            out[name] = wrong[name]
        return out

    source.batch = decoupled
    marker_fail, map_fail = [], []
    for batch in loader:
        b = batch_arrays(batch)
        for i, index in enumerate(b["indices"]):
            s = samples[index]
            if b["point_weights"][i] == 0 or not marker_clear_of_edges(
                s.point, b["boxes"][i], s.image.shape[1::-1]
            ):
                continue
            found = marker_position(b["images"][i])
            want = geo.target_to_pixel(b["points"][i], IMAGE_HW)
            marker_fail.append(found is None or np.hypot(*(found - want)) > 1.0)
            if found is not None:  # the map followed the wrong crop too
                peak = map_peak(b["maps"][i, 0]) / np.array(MAP_HW[::-1])
                map_fail.append(np.abs(peak - found / np.array(IMAGE_HW[::-1])).max() > 0.1)
    assert len(marker_fail) >= 20
    assert np.mean(marker_fail) > 0.5
    assert np.mean(map_fail) > 0.5


@pytest.mark.timeout(120)
@pytest.mark.parametrize("train", [True, False], ids=["train", "validation"])
def test_dali_and_ffcv_agree_on_every_sample(dataset, train):
    """Same file, seed and batch size: the same samples in the same batches, identical boxes,
    flips, labels and points, maps equal to float rounding, images within a few grey levels
    (libjpeg-turbo in both, but DALI's antialiased linear resize vs OpenCV's INTER_AREA)."""
    path, _ = dataset
    common = {"image_size": IMAGE_HW, "map_size": MAP_HW, "seed": SEED, "train": train}
    dali = DaliLoader(path, 48, **common, **CPU)
    ffcv = CoupledLoader(path, 48, workers=2, **common)
    assert len(dali) == len(ffcv) == (2 if train else 3)  # drop_last when training only
    for epoch in range(2):
        image_diff, n_batches = [], 0
        for got, want in zip(dali, ffcv, strict=True):
            n_batches += 1
            assert torch.equal(got.indices, want.indices)
            assert torch.equal(got.labels, want.labels)
            assert torch.equal(got.boxes, want.boxes) and torch.equal(got.flips, want.flips)
            assert torch.equal(got.points, want.points)
            assert torch.equal(got.point_weights, want.point_weights)
            assert got.maps.dtype == want.maps.dtype == torch.float32
            torch.testing.assert_close(got.maps, want.maps, rtol=0, atol=1e-4)
            image_diff.append((got.images.float() - want.images.float()).abs().flatten(1))
        assert n_batches == len(dali) and dali.epoch == ffcv.epoch == epoch + 1
        diff = torch.cat(image_diff)
        assert diff.mean() < 2.0 and diff.mean(1).max() < 3.0, diff.mean(1).max()
        assert diff.quantile(0.99) <= 8.0


@pytest.mark.timeout(60)
def test_validation_normalisedmany_points(dataset):
    """Centre crop, no flip, float normalised channels-last images, a (K, 2) point field;
    sequential order and a smaller last batch (nothing dropped)."""
    path, samples = dataset
    common = {"train": False, "image_size": IMAGE_HW, "map_size": MAP_HW, "seed": SEED}
    loader = DaliLoader(path, 50, normalize=True, names=FieldNames(point="points"), **common, **CPU)
    plain = DaliLoader(path, 50, **common, **CPU)
    mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
    indices, sizes = [], loader.source.sizes
    for batch, ref in zip(loader, plain, strict=True):
        assert batch.images.dtype == torch.float32
        assert batch.images.is_contiguous(memory_format=torch.channels_last)
        assert batch.points.shape == (len(batch.indices), 3, 2)
        b = batch_arrays(batch)
        np.testing.assert_allclose(b["images"] * std + mean, batch_arrays(ref)["images"], atol=0.01)
        assert not b["flips"].any()
        assert (b["point_weights"][:, 1:] == [0.0, 1.0]).all()  # absent; centre always inside
        b["points"], b["point_weights"] = b["points"][:, 0], b["point_weights"][:, 0]
        for i, index in enumerate(b["indices"]):
            s, size = samples[index], tuple(sizes[index])
            check_contract(b, i, s, size, SEED, epoch=0, train=False)
        indices.extend(b["indices"].tolist())
    assert indices == list(range(N_SAMPLES))
    assert len(loader) == 3


@pytest.mark.timeout(60)
def test_shards_partition_each_epoch(dataset):
    """DDP: shards are disjoint, cover the file (padded to equal length, as FFCV's
    DistributedSampler), have equal len(), and reshuffle per epoch with the same seed."""
    path, _ = dataset
    loaders = [
        DaliLoader(
            path,
            16,
            image_size=IMAGE_HW,
            map_size=MAP_HW,
            seed=SEED,
            rank=r,
            world_size=3,
            drop_last=False,
            **CPU,
        )
        for r in range(3)
    ]
    assert {len(ld) for ld in loaders} == {3}  # ceil(128 / 3) = 43 samples: 16 + 16 + 11
    orders = [[ld.epoch_order(e) for ld in loaders] for e in range(2)]
    for per_shard in orders:
        seen = np.concatenate(per_shard)
        assert len(seen) == 3 * 43 and set(seen.tolist()) == set(range(N_SAMPLES))
    assert not np.array_equal(orders[0][0], orders[1][0])
    got = np.concatenate([b.indices.numpy() for b in loaders[1]])
    assert np.array_equal(got, orders[0][1])
    with pytest.raises(ValueError):
        DaliLoader(path, 16, rank=3, world_size=3, **CPU)


@pytest.mark.timeout(120)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and CUDA torch")
def test_gpu_pipeline_matches_cpu_pipeline(dataset):
    """Mixed decoding + GPU operators: the same crops, flips, points and labels as the CPU
    pipeline, maps equal to float rounding, images close (nvJPEG vs libjpeg-turbo), every
    tensor on the GPU, images channels-last; normalised float16 images on request."""
    path, _ = dataset
    common = {"image_size": IMAGE_HW, "map_size": MAP_HW, "seed": SEED, "workers": 2}
    gpu = DaliLoader(path, 48, device="cuda:0", hw_decoder_load=0.9, **common)
    cpu = DaliLoader(path, 48, device=None, **common)
    for got, want in zip(gpu, cpu, strict=True):
        assert all(t.is_cuda for t in got if t is not None)
        assert got.images.is_contiguous(memory_format=torch.channels_last)
        got = type(got)(*(None if t is None else t.cpu() for t in got))
        for name in ("indices", "labels", "boxes", "flips", "points", "point_weights"):
            assert torch.equal(getattr(got, name), getattr(want, name)), name
        torch.testing.assert_close(got.maps, want.maps, rtol=0, atol=1e-4)
        diff = (got.images.float() - want.images.float()).abs()
        assert diff.mean() < 2.0, diff.mean()
    half = DaliLoader(path, 48, device=0, normalize=True, image_dtype=torch.float16, **common)
    batch = next(iter(half))
    assert batch.images.dtype == torch.float16 and batch.images.is_cuda


@pytest.mark.timeout(60)
def test_plain_file_without_byproducts(tmp_path):
    """A .beton built without byproducts (image, label, index): maps and points are None,
    the field names are found by themselves, all-JPEG storage."""
    path = tmp_path / "plain.beton"
    samples = [marked_sample(i) for i in range(20)]
    fields = {"image": RGBImageField(write_mode="jpg"), "label": IntField(), "index": IntField()}
    rows = [(s.image, s.label, i) for i, s in enumerate(samples)]
    write_indexed(str(path), fields, rows, range(len(rows)), workers=1)
    loader = DaliLoader(path, 8, train=False, image_size=32, **CPU)
    batches = list(loader)
    assert [len(b.indices) for b in batches] == [8, 8, 4] and len(loader) == 3
    assert all(b.maps is None and b.points is None and b.point_weights is None for b in batches)
    labels = torch.cat([b.labels for b in batches])
    assert labels.tolist() == [s.label for s in samples]
    assert batches[0].images.shape == (8, 3, 32, 32)
