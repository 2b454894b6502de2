"""FFCV operations that apply one crop and flip per sample to image, map and points alike.

FFCV's RandomResizedCrop decoder draws its crop from NumPy's global generator and does not
expose it, and a pipeline stage has a single input, so stages cannot hand a crop to each other.
Instead every stage *recomputes* the sample's crop from a :class:`CropPlan`: a pure function
of (seed, epoch, sample index, stored image size) built from :mod:`luab_data.geometry` and the
loader's :class:`~luab_data.loaders.contract.CropSettings`. The image decoder, the map and
point decoders and the crop-box output all call the same compiled kernel with the same
arguments and therefore agree, whatever order or thread FFCV runs them on.

The plan's only runtime inputs are the epoch (set by the loader before an epoch starts) and the
per-sample stored image sizes. Numba freezes arrays captured by a compiled function as
constants, so the kernel reads both through their raw addresses instead; the plan owns the
arrays and every operation holds the plan, which keeps them alive as long as the compiled code.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numba
import numpy as np
import torch
from ffcv.fields.ndarray import NDArrayDecoder
from ffcv.fields.rgb_image import IMAGE_MODES, ResizedCropRGBImageDecoder
from ffcv.libffcv import imdecode, resize_crop
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.state import State
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from luab_data import geometry as geo
from luab_data.loaders.contract import CropSettings

CROP_WIDTH = 5  # per-sample crop output: x0, y0, x1, y1, flip


@intrinsic
def _address_as_pointer(typingctx, address):  # typingctx: part of numba's intrinsic protocol
    """An integer address as a void pointer, so ``numba.carray`` can view live memory."""

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(address), codegen


@njit(cache=True)
def mirror_columns(image: np.ndarray) -> None:
    """Mirror an (H, W, C) image left-right in place."""
    height, width, n_ch = image.shape
    for r in range(height):
        for c in range(width // 2):
            for k in range(n_ch):
                tmp = image[r, c, k]
                image[r, c, k] = image[r, width - 1 - c, k]
                image[r, width - 1 - c, k] = tmp


class CropPlan:
    """A loader's :class:`CropSettings` compiled for its FFCV stages, which all hold it.

    ``sizes`` holds (width, height) of every *stored* image (after FFCV's max_resolution), the
    raster the crop is drawn on. The epoch is runtime state: :meth:`set_epoch` before an epoch.
    """

    def __init__(self, sizes: np.ndarray, settings: CropSettings = CropSettings()) -> None:
        self.sizes = np.ascontiguousarray(np.asarray(sizes).reshape(-1, 2), dtype=np.int64)
        self.settings = settings
        self._state = np.array([settings.seed, 0], dtype=np.int64)  # (seed, epoch), run time
        self.crop_kernel, self.size_kernel = self._compile()

    @classmethod
    def from_reader(
        cls, reader: Any, settings: CropSettings = CropSettings(), image_field: str = "image"
    ) -> CropPlan:
        """Plan for a .beton: sizes come from the image field's metadata."""
        f_ix = list(reader.handlers).index(image_field)
        meta = reader.metadata[f"f{f_ix}"]
        sizes = np.stack([meta["width"], meta["height"]], axis=1)
        return cls(sizes, settings)

    @property
    def seed(self) -> int:
        return int(self._state[0])

    @property
    def epoch(self) -> int:
        return int(self._state[1])

    def set_epoch(self, epoch: int) -> None:
        """In place: compiled kernels read this memory at every call."""
        self._state[1] = epoch

    def crop(self, index: int) -> tuple[geo.Box, bool]:
        """(normalised box, flip) of a sample in the current epoch, as the stages compute it."""
        width, height = self.size_kernel(index)
        top, left, h, w, flip = self.crop_kernel(index, width, height)
        return geo.normalised_box(top, left, h, w, width, height), bool(flip)

    def _compile(self) -> tuple[Any, Any]:
        state_addr, sizes_addr = self._state.ctypes.data, self.sizes.ctypes.data
        n = self.sizes.shape[0]
        rule = self.settings
        train, (s_lo, s_hi), (r_lo, r_hi) = rule.train, rule.scale, rule.ratio
        flip_p, center_ratio = rule.flip_p, rule.center_ratio

        @njit
        def crop_kernel(index, width, height):  # -> (top, left, h, w, flip)
            if train:
                state = numba.carray(_address_as_pointer(state_addr), (2,), np.int64)
                return geo.train_crop(
                    width, height, state[0], state[1], index, s_lo, s_hi, r_lo, r_hi, flip_p
                )
            top, left, h, w = geo.center_crop(width, height, center_ratio)
            return top, left, h, w, False

        @njit
        def size_kernel(index):  # -> (width, height) of the stored image
            sizes = numba.carray(_address_as_pointer(sizes_addr), (n, 2), np.int64)
            return sizes[index, 0], sizes[index, 1]

        return crop_kernel, size_kernel


class CoupledCropDecoder(ResizedCropRGBImageDecoder):
    """RGB image decoder: decode, crop with the plan's crop, resize to ``output_size`` (H, W)
    with FFCV's own ``cv::resize`` (INTER_AREA), then mirror if the plan says so."""

    def __init__(self, plan: CropPlan, output_size: tuple[int, int]) -> None:
        super().__init__(tuple(output_size))
        self.plan = plan

    @property
    def get_crop_generator(self) -> Any:  # abstract in FFCV; our crops come from the plan
        return self.plan.crop_kernel

    def generate_code(self) -> Any:
        jpg = IMAGE_MODES["jpg"]
        read = self.memory_read
        loop = Compiler.get_iterator()
        # Fresh dispatchers per call, and no writable 1-D uint8 argument: FFCV's OS-cache
        # reader flips numba's *interned* uint8[::1] type to read-only at every Loader
        # construction, which corrupts the overload table of any long-lived dispatcher
        # compiled with that type (a KeyError in the loader thread, i.e. a hang).
        decode_jpeg = Compiler.compile(imdecode)
        crop_resize = Compiler.compile(resize_crop)
        crop_of = self.plan.crop_kernel

        def decode(indices, buffers, metadata, storage_state):
            out, scratch = buffers
            for i in loop(len(indices)):
                index = indices[i]
                meta = metadata[index]
                raw = read(meta["data_ptr"], storage_state)
                height, width = np.int64(meta["height"]), np.int64(meta["width"])
                if meta["mode"] == jpg:
                    image = scratch[i][: height * width * 3].reshape(height, width, 3)
                    decode_jpeg(raw, image, height, width, height, width, 0, 0, 1, 1, False, False)
                else:
                    image = raw.reshape(height, width, 3)
                top, left, h, w, flip = crop_of(index, width, height)
                crop_resize(image, top, top + h, left, left + w, out[i])
                if flip:
                    mirror_columns(out[i])
            return out[: len(indices)]

        decode.is_parallel = True
        return decode


class CropBoxDecoder(Operation):
    """Per sample, float32 (x0, y0, x1, y1, flip): the crop the other stages apply.

    Attach it to any field (conventionally the image field); it reads nothing from the file.
    """

    def __init__(self, plan: CropPlan) -> None:
        super().__init__()
        self.plan = plan

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        shape, dtype = (CROP_WIDTH,), np.dtype(np.float32)
        state = replace(previous_state, jit_mode=True, shape=shape, dtype=dtype)
        return state, AllocationQuery(shape, dtype)

    def generate_code(self) -> Any:
        loop = Compiler.get_iterator()
        crop_of, size_of = self.plan.crop_kernel, self.plan.size_kernel

        def decode(indices, out, metadata, storage_state):
            for i in loop(len(indices)):
                width, height = size_of(indices[i])
                top, left, h, w, flip = crop_of(indices[i], width, height)
                x0, y0, x1, y1 = geo.normalised_box(top, left, h, w, width, height)
                out[i, 0], out[i, 1], out[i, 2], out[i, 3] = x0, y0, x1, y1
                out[i, 4] = 1.0 if flip else 0.0
            return out[: len(indices)]

        decode.is_parallel = True
        return decode


class CroppedMapDecoder(NDArrayDecoder):
    """Decoder of an NDArrayField map (C, Hm, Wm) over the whole image: crop it with the plan's
    box, mirror it with the plan's flip, resample it to ``size`` (Ho, Wo); float32 output,
    multiplied by ``scale`` (default 1/255 for uint8 maps, so they come out in [0, 1])."""

    def __init__(self, plan: CropPlan, size: tuple[int, int], scale: float | None = None):
        super().__init__()
        self.plan = plan
        self.size = (int(size[0]), int(size[1]))
        self.scale = scale

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        if len(self.field.shape) != 3:
            raise ValueError(f"map field must be (C, Hm, Wm), got {self.field.shape}")
        shape, dtype = (self.field.shape[0], *self.size), np.dtype(np.float32)
        state = replace(previous_state, jit_mode=True, shape=shape, dtype=dtype)
        return state, AllocationQuery(shape, dtype)

    def generate_code(self) -> Any:
        read = self.memory_read
        loop = Compiler.get_iterator()
        crop_of, size_of = self.plan.crop_kernel, self.plan.size_kernel
        shape, scalar = tuple(int(s) for s in self.field.shape), self.field.dtype.type
        scale = self.scale
        if scale is None:
            scale = 1.0 / 255.0 if self.field.dtype == np.uint8 else 1.0

        def decode(indices, out, metadata, storage_state):
            for i in loop(len(indices)):
                index = indices[i]
                width, height = size_of(index)
                top, left, h, w, flip = crop_of(index, width, height)
                x0, y0, x1, y1 = geo.normalised_box(top, left, h, w, width, height)
                src = read(metadata[index], storage_state).view(scalar).reshape(shape)
                geo.warp_map(src, x0, y0, x1, y1, flip, out[i], scale)
            return out[: len(indices)]

        decode.is_parallel = True
        return decode


class CroppedPointDecoder(NDArrayDecoder):
    """Decoder of an NDArrayField of normalised points, (2,) or (K, 2) float32 (x, y), absent
    points stored as (-1, -1) or NaN: per sample (K, 3) float32 rows of (tx, ty, weight) in
    crop coordinates with the plan's box and flip (geometry.transform_point)."""

    def __init__(self, plan: CropPlan) -> None:
        super().__init__()
        self.plan = plan

    @property
    def n_points(self) -> int:
        return int(np.prod(self.field.shape)) // 2

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        if self.field.shape[-1] != 2 or self.field.dtype not in (np.float32, np.float64):
            raise ValueError(f"point field must be float (..., 2), got {self.field.shape}")
        shape, dtype = (self.n_points, 3), np.dtype(np.float32)
        state = replace(previous_state, jit_mode=True, shape=shape, dtype=dtype)
        return state, AllocationQuery(shape, dtype)

    def generate_code(self) -> Any:
        read = self.memory_read
        loop = Compiler.get_iterator()
        crop_of, size_of = self.plan.crop_kernel, self.plan.size_kernel
        k, scalar = self.n_points, self.field.dtype.type

        def decode(indices, out, metadata, storage_state):
            for i in loop(len(indices)):
                index = indices[i]
                width, height = size_of(index)
                top, left, h, w, flip = crop_of(index, width, height)
                x0, y0, x1, y1 = geo.normalised_box(top, left, h, w, width, height)
                pts = read(metadata[index], storage_state).view(scalar).reshape((k, 2))
                geo.transform_points_into(pts, x0, y0, x1, y1, flip, out[i])
            return out[: len(indices)]

        decode.is_parallel = True
        return decode


class SampleIndexDecoder(Operation):
    """Per sample, its index in the .beton (int64, shape (1,)); attach to any field."""

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        shape, dtype = (1,), np.dtype(np.int64)
        state = replace(previous_state, jit_mode=True, shape=shape, dtype=dtype)
        return state, AllocationQuery(shape, dtype)

    def generate_code(self) -> Any:
        def decode(indices, out, metadata, storage_state):
            for i in range(len(indices)):
                out[i, 0] = indices[i]
            return out[: len(indices)]

        return decode


class NormalizeTorchImage(Operation):
    """(x - mean) / std of a uint8 (N, C, H, W) channels-last tensor, on whatever device it is
    (after ToDevice: on the GPU, in the loader's CUDA stream), into a reused channels-last
    buffer of ``dtype``. Plain torch, so it needs neither cupy nor a GPU to be tested."""

    def __init__(self, mean: Any, std: Any, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.dtype = dtype

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        n_ch, height, width = previous_state.shape
        device = previous_state.device
        self._mean = self.mean.to(device=device, dtype=self.dtype)
        self._inv_std = (1.0 / self.std).to(device=device, dtype=self.dtype)
        alloc = AllocationQuery((height, width, n_ch), self.dtype, device)  # NHWC memory
        return replace(previous_state, jit_mode=False, dtype=self.dtype), alloc

    def generate_code(self) -> Any:
        def normalize(images, buffer):
            out = buffer[: images.shape[0]].permute(0, 3, 1, 2)  # channels-last view
            out.copy_(images)
            return out.sub_(self._mean).mul_(self._inv_std)

        return normalize
