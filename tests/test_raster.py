"""Attention-map rasterisation: numba kernels and torch twin held to the float64 reference."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from luab_data.raster import arrow, reference
from luab_data.raster.config import RasterConfig
from luab_data.raster.ragged import Ragged, class_points, rasterise, resample_trace, trace_weights
from luab_data.raster.torch_raster import dwell_weights as torch_dwell
from luab_data.raster.torch_raster import rasterise_torch
from luab_data.records import Annotation, Record, records_to_batch

CONFIGS = {
    "float32-max": RasterConfig(dtype="float32"),
    "uint8-max": RasterConfig(),
    "sum-clip-decay-classes": RasterConfig(
        dtype="float32",
        norm="sum",
        outside="clip",
        decay_ms=300.0,
        n_classes=3,
        selected_only=True,
        size=(40, 56),
    ),
    "none-px-trace-first": RasterConfig(
        dtype="float32",
        norm="none",
        sigma=12.0,
        sigma_units="px",
        channels=("trace", "click"),
        dwell=False,
        size=(32, 48),
    ),
    "uint8-trace-only-small": RasterConfig(channels=("trace",), sigma=0.01, size=(16, 24)),
}


def random_record(rng: np.random.Generator, i: int) -> Record:
    """A record with clicks and a trace that stray outside the image, 0-3 annotations."""
    n_ann = int(rng.integers(0, 4))
    nc, nt = int(rng.integers(0, 5)), int(rng.integers(0, 80)) * (n_ann > 0)

    def xy(n):
        return rng.uniform(-0.15, 1.15, n).astype(np.float32)

    return Record(
        key=f"r{i}",
        source="imagenet-ab",
        image=f"r{i}.jpg",
        width=int(rng.integers(40, 700)),
        height=int(rng.integers(40, 700)),
        click_x=xy(nc),
        click_y=xy(nc),
        click_t=rng.integers(0, 10**6, nc),
        click_class=rng.integers(-1, 4, nc).astype(np.int32),
        click_ann=rng.integers(0, max(n_ann, 1), nc).astype(np.int16),
        trace_x=xy(nt),
        trace_y=xy(nt),
        trace_t=np.cumsum(rng.integers(-5, 400, nt)),
        trace_ann=np.sort(rng.integers(0, max(n_ann, 1), nt)).astype(np.int16),
        annotations=[Annotation("W", "T", bool(rng.integers(0, 2)), 100) for _ in range(n_ann)],
        point_x=float(rng.uniform()) if i % 3 else None,
        point_y=float(rng.uniform()),
    )


@pytest.fixture(scope="module")
def batch() -> pa.RecordBatch:
    rng = np.random.default_rng(4)
    return records_to_batch([random_record(rng, i) for i in range(48)])


def _torch_maps(batch, config, boxes=None):
    clicks = arrow.clicks_from_batch(batch, config.selected_only)
    width, height = arrow.sizes(batch)
    maps, valid = rasterise_torch(
        clicks, arrow.trace_from_batch(batch), width, height, config, boxes
    )
    return maps.numpy(), valid.numpy()


def assert_close_to_reference(maps, valid, ref, ref_valid, config):
    assert maps.dtype == np.dtype(config.dtype)
    np.testing.assert_array_equal(valid, ref_valid)
    got, want = maps.astype(np.float64), reference.quantise(ref, config).astype(np.float64)
    if config.dtype == "uint8":
        assert np.abs(got - want).max() <= 1
    else:  # norm="none" maps are densities: compare relative to their scale
        scale = max(1.0, np.abs(ref).max()) if config.norm == "none" else 1.0
        assert np.abs(got - ref).max() <= 1e-5 * scale


@pytest.mark.parametrize("name", CONFIGS)
def test_numba_and_torch_match_reference(batch, name):
    config = CONFIGS[name]
    ref, ref_valid = reference.reference_batch(batch, config)
    assert ref_valid.any() and (~ref_valid).any()
    assert_close_to_reference(*arrow.rasterise_batch(batch, config), ref, ref_valid, config)
    assert_close_to_reference(*_torch_maps(batch, config), ref, ref_valid, config)


def test_boxes_and_mirrored_boxes_match_reference(batch):
    rng = np.random.default_rng(1)
    x0, y0 = rng.uniform(0, 0.5, (2, len(batch)))
    boxes = np.stack([x0, y0, x0 + rng.uniform(0.1, 0.5, len(batch)), y0 + 0.3], axis=1)
    boxes[::2] = boxes[::2][:, [2, 1, 0, 3]]  # mirrored crops
    config = CONFIGS["float32-max"]
    ref, ref_valid = reference.reference_batch(batch, config, boxes)
    assert_close_to_reference(*arrow.rasterise_batch(batch, config, boxes), ref, ref_valid, config)
    assert_close_to_reference(*_torch_maps(batch, config, boxes), ref, ref_valid, config)


def _single(x, y, width=400, height=400, config=RasterConfig(dtype="float32"), t=None):
    """Maps of one record: clicks at (x, y) lists, and the same points as a trace."""
    clicks = Ragged.from_lists([x], [y])
    trace = Ragged.from_lists([x], [y], [t if t is not None else [0] * len(x)], [[0] * len(x)])
    maps, valid = rasterise(clicks, trace, np.array([width]), np.array([height]), config)
    return maps[0], valid[0]


def test_mass_is_the_weight_inside_the_image():
    rng = np.random.default_rng(2)
    x, y = rng.uniform(0.3, 0.7, (2, 30))
    t = np.cumsum(rng.integers(1, 700, 30))
    config = RasterConfig(dtype="float32", norm="none", dwell_cap_ms=500.0)
    maps, valid = _single(x, y, 640, 480, config, t)
    expected_dwell = np.clip(np.diff(t), 1, 500).sum() + 1  # last sample: dwell_min_ms
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), [30, expected_dwell], rtol=1e-4)
    summed, _ = _single(x, y, 640, 480, RasterConfig(dtype="float32", norm="sum"), t)
    np.testing.assert_allclose(summed.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    edge, _ = _single([0.0], [0.5], 640, 480, config)  # half the Gaussian leaves the image
    np.testing.assert_allclose(edge[0].sum(), 0.5, rtol=2e-2)


@pytest.mark.parametrize("impl", ["numba", "torch"])
def test_flip_equivariance(batch, impl):
    config = CONFIGS["sum-clip-decay-classes"]
    flipped = batch
    for name in ("click_x", "trace_x"):
        col = batch.column(name)
        mirrored = pa.ListArray.from_arrays(col.offsets, pc.subtract(1.0, col.values))
        flipped = flipped.set_column(batch.schema.get_field_index(name), name, mirrored)
    run = arrow.rasterise_batch if impl == "numba" else _torch_maps
    (a, va), (b, vb) = run(batch, config), run(flipped, config)
    np.testing.assert_array_equal(va, vb)
    np.testing.assert_allclose(a, b[..., ::-1], atol=1e-5)
    mirrored = np.tile([1.0, 0.0, 0.0, 1.0], (len(batch), 1))  # the whole image, mirrored box
    np.testing.assert_allclose(run(batch, config, mirrored)[0], b, atol=1e-5)


def _moments(channel: np.ndarray) -> tuple[float, float]:
    """Standard deviation of a map along x and y, in cells."""
    p = channel / channel.sum()
    ys, xs = np.indices(p.shape)
    sd = [math.sqrt((p * (c - (p * c).sum()) ** 2).sum()) for c in (xs, ys)]
    return sd[0], sd[1]


def _kernel_sd(truncate: float) -> float:
    """Standard deviation of the shifted, truncated kernel for σ = 1 (numerical integral)."""
    d = np.linspace(-truncate, truncate, 200001)
    g = np.exp(-0.5 * d * d) - math.exp(-0.5 * truncate**2)
    return math.sqrt((g * d * d).sum() / g.sum())


def test_sigma_scaling_and_anisotropy():
    cfg = RasterConfig(dtype="float32", size=(128, 128), sigma=0.03)
    sd1 = _moments(_single([0.5], [0.5], 400, 400, cfg)[0][0])
    sd2 = _moments(_single([0.5], [0.5], 400, 400, replace(cfg, sigma=0.06))[0][0])
    expected = 0.03 * 128 * _kernel_sd(cfg.truncate)  # σ in cells times the kernel's sd
    np.testing.assert_allclose(sd1, expected, rtol=2e-3)
    np.testing.assert_allclose(np.divide(sd2, sd1), 2.0, rtol=2e-3)
    # a 2:1 image on a square map: σ is isotropic in pixels, so twice as wide in cells along y
    wide = _moments(_single([0.5], [0.5], 800, 400, cfg)[0][0])
    np.testing.assert_allclose(wide[1] / wide[0], 2.0, rtol=2e-3)
    np.testing.assert_allclose(wide[0], expected, rtol=2e-3)
    px = replace(cfg, sigma=12.0, sigma_units="px")
    np.testing.assert_allclose(
        _moments(_single([0.5], [0.5], 400, 400, px)[0][0]), expected, rtol=2e-3
    )


def test_truncation_stays_close_to_the_exact_gaussian():
    cfg = RasterConfig(dtype="float32", size=(64, 64))
    got = _single([0.37], [0.61], 500, 375, cfg)[0][0]
    sigma = 0.03 * 500
    cx, cy = (np.arange(64) + 0.5) / 64 * 500, (np.arange(64) + 0.5) / 64 * 375
    exact = np.outer(
        np.exp(-0.5 * ((cy - 0.61 * 375) / sigma) ** 2),
        np.exp(-0.5 * ((cx - 0.37 * 500) / sigma) ** 2),
    )
    assert np.abs(got - exact / exact.max()).max() < 2 * cfg.cut


def test_empty_single_and_degenerate_inputs():
    cfg = RasterConfig()
    maps, valid = _single([], [], config=cfg)
    assert maps.shape == (2, 64, 64) and not maps.any() and not valid.any()
    maps, valid = _single([0.5 + 0.5 / 64], [0.25 + 0.5 / 64], config=cfg)  # a cell centre
    assert valid.all() and maps[0].max() == 255 and maps[0, 16, 32] == 255
    for bad_size in [(0, 300), (300, -1)]:
        maps, valid = _single([0.5], [0.5], *bad_size, config=cfg)
        assert not maps.any() and not valid.any()
    maps, valid = _single([np.nan, 1.2, -0.1], [0.5, 0.5, 0.5], config=cfg)  # NaN, outside
    assert not valid.any()
    clip = RasterConfig(outside="clip")
    maps, valid = _single([np.nan, 1.2], [0.5, 0.5], config=clip)
    assert valid.all() and maps[0, 32, 63] == 255
    same_t = _single([0.2, 0.8], [0.5, 0.5], config=RasterConfig(dtype="float32"), t=[5, 5])[0]
    np.testing.assert_allclose(same_t[1], same_t[1][:, ::-1], atol=1e-5)  # dt 0: both dwell_min
    tiny = RasterConfig(sigma=1e-4)  # σ far below a cell: sample between centres vanishes
    assert not _single([0.5], [0.5], config=tiny)[1].any()
    assert _single([0.5 + 0.5 / 64], [0.5 + 0.5 / 64], config=tiny)[1].all()
    empty = Ragged.from_lists([], [])
    maps, valid = rasterise(empty, empty, np.zeros(0), np.zeros(0), cfg)
    assert maps.shape == (0, 2, 64, 64) and valid.shape == (0, 2)
    tm, tv = rasterise_torch(empty, empty, np.zeros(0), np.zeros(0), cfg)
    assert tuple(tm.shape) == (0, 2, 64, 64) and tuple(tv.shape) == (0, 2)


def test_dwell_weights_match_reference():
    rng = np.random.default_rng(3)
    lengths = rng.integers(0, 40, 30)
    t = [np.cumsum(rng.integers(-20, 900, n)) for n in lengths]
    ann = [np.sort(rng.integers(0, 3, n)) for n in lengths]
    trace = Ragged.from_lists(
        [np.zeros(n) for n in lengths], [np.zeros(n) for n in lengths], t, ann
    )
    for cfg in [
        RasterConfig(),
        RasterConfig(decay_ms=250.0),
        RasterConfig(dwell=False, decay_ms=50.0),
    ]:
        want = np.concatenate([reference.dwell(ti, ai, cfg) for ti, ai in zip(t, ann, strict=True)])
        np.testing.assert_allclose(trace_weights(trace, cfg), want, rtol=1e-12)
        got = torch_dwell(*(torch.from_numpy(a) for a in (trace.offsets, trace.t, trace.ann)), cfg)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


def test_arrow_entry_handles_slices_tables_and_misalignment(batch):
    cfg = CONFIGS["sum-clip-decay-classes"]
    full, full_valid = arrow.rasterise_batch(batch, cfg)
    part, part_valid = arrow.rasterise_batch(batch.slice(7, 13), cfg)
    np.testing.assert_array_equal(part, full[7:20])
    np.testing.assert_array_equal(part_valid, full_valid[7:20])
    table = pa.Table.from_batches([batch.slice(0, 20), batch.slice(20)])
    np.testing.assert_array_equal(arrow.rasterise_batch(table, cfg)[0], full)
    cut = batch.set_column(
        batch.schema.get_field_index("click_y"),
        "click_y",
        pa.array([[0.5]] * len(batch), pa.list_(pa.float32())),
    )
    with pytest.raises(ValueError, match="aligned"):
        arrow.rasterise_batch(cut, cfg)


def test_selected_only_and_class_channels():
    rec = Record(
        key="k",
        source="coco-ab",
        image="i",
        width=300,
        height=200,
        click_x=np.array([0.2, 0.8, 0.5], np.float32),
        click_y=np.array([0.5] * 3, np.float32),
        click_t=np.zeros(3, np.int64),
        click_class=np.array([2, 0, 7], np.int32),
        click_ann=np.array([0, 1, 0], np.int16),
        annotations=[Annotation("W", "T", True, 1), Annotation("W", "T", False, 1)],
    )
    batch = records_to_batch([rec])
    cfg = RasterConfig(n_classes=3, channels=("trace", "click"))
    maps, valid = arrow.rasterise_batch(batch, cfg)
    assert cfg.n_channels == 4 and valid[0].tolist() == [False, True, False, True]
    maps, valid = arrow.rasterise_batch(
        batch, RasterConfig(n_classes=3, selected_only=True, channels=("click",))
    )
    assert valid[0].tolist() == [False, False, True]  # class 0 came from a 'no' vote


def test_fixed_arrays(batch):
    cfg = RasterConfig(n_classes=4, selected_only=True)
    out = arrow.fixed_arrays(batch, cfg, k=16)
    assert out["point"].shape == (48, 2) and out["trace"].shape == (48, 16, 2)
    assert out["class_points"].shape == (48, 4, 2) and out["class_points_valid"].shape == (48, 4)
    assert all(a.dtype != np.float16 for a in out.values())
    rows = batch.to_pylist()
    for i, row in enumerate(rows):
        has_point = row["point_x"] is not None
        assert out["point_valid"][i] == has_point
        if has_point:
            np.testing.assert_allclose(out["point"][i], [row["point_x"], row["point_y"]])
        want = reference.resample(
            np.array(row["trace_x"]),
            np.array(row["trace_y"]),
            np.array(row["trace_t"]),
            np.array(row["trace_ann"]),
            16,
            cfg,
        )
        assert out["trace_valid"][i] == (want is not None)
        if want is not None:
            np.testing.assert_allclose(out["trace"][i], want, atol=1e-6)
        else:
            assert (out["trace"][i] == -1).all()
    assert out["point_valid"].any() and out["trace_valid"].any() and out["class_points_valid"].any()


def test_resample_endpoints_and_class_points_last_wins():
    trace = Ragged.from_lists(
        [[0.1, 0.2, 0.9, 0.4]], [[0.1, 0.1, 0.1, 0.3]], [[0, 10, 10, 50]], [[0, 0, 1, 1]]
    )
    pts, valid = resample_trace(trace, 5)
    assert valid.all()
    np.testing.assert_allclose(pts[0, 0], [0.1, 0.1], atol=1e-7)
    np.testing.assert_allclose(pts[0, -1], [0.4, 0.3], atol=1e-7)
    one, _ = resample_trace(Ragged.from_lists([[0.3]], [[0.6]], [[0]], [[0]]), 4)
    np.testing.assert_allclose(one[0], [[0.3, 0.6]] * 4, atol=1e-7)
    clicks = Ragged.from_lists([[0.1, 0.2, 0.3]], [[0.5, 0.6, 0.7]], classes=[[1, 1, 5]])
    pts, valid = class_points(clicks, 3)
    assert valid[0].tolist() == [False, True, False]
    np.testing.assert_allclose(pts[0, 1], [0.2, 0.6], atol=1e-7)
    assert (pts[0, [0, 2]] == -1).all()


def test_config_rejects_unstorable_choices():
    with pytest.raises(ValueError):
        RasterConfig(norm="sum")  # uint8 needs max normalisation
    with pytest.raises(ValueError):
        RasterConfig(dtype="float16")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RasterConfig(channels=("click", "click"))
    assert RasterConfig(n_classes=80).n_channels == 81
    assert RasterConfig(channels=("trace", "click"), n_classes=80).click_channel == 1
