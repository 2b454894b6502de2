"""What an image file declares, read from its header before anything is decoded.

A JPEG's frame header (SOFn) or a PNG's IHDR chunk says how many pixels the decoder will
allocate; a few bytes can declare 30000 x 30000 (2.7 GB of RGB). The packer checks the declared
size against a pixel limit and against the record's original size before decoding, so its
memory stays bounded whatever the files say, and a file that is not the record's image (twice
its size, another picture) is rejected instead of being packed under wrong coordinates.
Only then is it decoded (`decode_rgb`).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import cv2
import numpy as np

DEFAULT_MAX_PIXELS = 100_000_000  # 10000 x 10000; ImageNet's largest is ~32 M pixels
DEFAULT_SIZE_TOLERANCE = 0.05  # relative, per side, plus SIZE_SLACK_PX
SIZE_SLACK_PX = 2
BYTES_PER_PIXEL_LIMIT = 4  # a file above 4 bytes per allowed pixel is not read at all

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# frame headers: baseline, extended, progressive, lossless, hierarchical, arithmetic
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RSTn: markers without a length


class ImageProblem(ValueError):
    """Why an image is not packed (the reject's detail)."""


def declared_size(data: bytes) -> tuple[int, int]:
    """(width, height) the image's header declares; ImageProblem if there is none."""
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    if data[:8] == _PNG_MAGIC:
        return _png_size(data)
    return _other_size(data)


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i, n = 2, len(data)
    while i < n:
        if data[i] != 0xFF:
            raise ImageProblem(f"JPEG: no marker at byte {i} (damaged header)")
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i + 2 >= n:
            break
        marker = data[i]
        if marker in _STANDALONE:
            i += 1
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame
            raise ImageProblem("JPEG: no frame header (SOF) before the scan")
        length = int.from_bytes(data[i + 1 : i + 3], "big")
        if marker in _SOF:
            if i + 8 >= n:
                break
            height = int.from_bytes(data[i + 4 : i + 6], "big")
            width = int.from_bytes(data[i + 6 : i + 8], "big")
            return width, height
        if length < 2:
            raise ImageProblem(f"JPEG: segment of length {length} at byte {i}")
        i += 1 + length
    raise ImageProblem("JPEG: header cut short before the frame header (SOF)")


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageProblem("PNG: no IHDR chunk")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _other_size(data: bytes) -> tuple[int, int]:
    """Formats other than JPEG and PNG (BMP, WebP, TIFF, ...): PIL reads their header only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Image.DecompressionBombError as err:
        raise ImageProblem(f"declares too many pixels ({err})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ImageProblem("not an image in a known format") from None


def size_problem(
    declared: tuple[int, int], record: tuple[int, int] | None, max_pixels: int, tolerance: float
) -> str | None:
    """Why a declared size is refused (too many pixels, or not the record's size), else None.
    Each side may differ from the record's by `tolerance` of it plus SIZE_SLACK_PX pixels."""
    width, height = declared
    if width <= 0 or height <= 0:
        return f"declares {width}x{height} pixels"
    if width * height > max_pixels:
        return (
            f"declares {width}x{height} = {width * height / 1e6:.0f} M pixels, above the "
            f"limit of {max_pixels / 1e6:g} M (--max-pixels)"
        )
    if record is None or min(record) <= 0:
        return None
    if all(
        abs(got - want) <= tolerance * want + SIZE_SLACK_PX
        for got, want in zip(declared, record, strict=True)
    ):
        return None
    turned = (height, width) == tuple(record)
    note = " (turned by 90 degrees: EXIF orientation is ignored)" if turned else ""
    return (
        f"declares {width}x{height} pixels, the record says {record[0]}x{record[1]}"
        f"{note}; tolerance {tolerance:g} per side (--size-tolerance)"
    )


def max_file_bytes(max_pixels: int) -> int:
    return BYTES_PER_PIXEL_LIMIT * max_pixels + (1 << 20)


def read_image(path: Path, max_pixels: int) -> bytes:
    """The bytes of an image file, unless it is larger than any allowed image can be."""
    size = path.stat().st_size
    if size > max_file_bytes(max_pixels):
        raise ImageProblem(f"file of {size:,} bytes, above {max_file_bytes(max_pixels):,}")
    return path.read_bytes()


def check_image(
    data: bytes, record: tuple[int, int] | None, max_pixels: int, tolerance: float
) -> tuple[int, int]:
    """The declared size of an image that may be decoded; ImageProblem with the reason if not."""
    if len(data) > max_file_bytes(max_pixels):
        raise ImageProblem(f"file of {len(data):,} bytes, above {max_file_bytes(max_pixels):,}")
    declared = declared_size(data)
    problem = size_problem(declared, record, max_pixels, tolerance)
    if problem:
        raise ImageProblem(problem)
    return declared


def decode_rgb(data: bytes | np.ndarray) -> np.ndarray:
    """JPEG (or any format OpenCV reads: ImageNet has a few PNG and CMYK files) -> RGB.
    EXIF orientation is ignored, as PIL (torchvision's ImageFolder, ffcv-imagenet) does."""
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if bgr is None:
        raise ImageProblem("the image does not decode")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr)  # in place: one image-sized buffer
