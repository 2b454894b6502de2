"""Tell what a source is from its content (the name is only a hint), or take what is forced."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from luab_data.records import COCO_AB, IMAGENET_AB
from luab_data.sources.errors import SourceError
from luab_data.sources.interchange import HEADER_KEY, RECORDS
from luab_data.sources.parquet import PARQUET

KINDS = (IMAGENET_AB, COCO_AB, RECORDS, PARQUET)


def detect_kind(path: Path) -> str:
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path} does not exist")
    if path.is_dir():
        return _detect_dir(path)
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if head[:4] == b"PAR1":
        return PARQUET
    if head[:2] == b"\x1f\x8b" or _is_tar(head):
        if head[:2] == b"\x1f\x8b":
            try:
                with gzip.open(path) as gz:
                    head = gz.read(1024)
            except (OSError, EOFError, zlib.error) as err:
                raise SourceError(f"{path}: gzip file cannot be read: {err}") from err
        if _is_tar(head):
            return IMAGENET_AB
        raise SourceError(f"{path}: a gzip file that is not a tar archive")
    text = _text_head(path, head)
    if text.startswith("{") and HEADER_KEY in text.split("\n", 1)[0]:
        return RECORDS
    if text.startswith("["):
        first = text[1:].lstrip()
        if first.startswith("{") and HEADER_KEY in first[:200]:
            return RECORDS
        if any(f'"{k}"' in text[:20000] for k in ("actionHistories", "originalImageWidth")):
            return COCO_AB
    raise SourceError(
        f"cannot tell what kind of source {path} is (expected an ImageNet-AB tar/tar.gz or "
        f"folder, a COCO-AB JSON list, records .json/.jsonl, or Parquet); force it with --kind"
    )


def _text_head(path: Path, head: bytes, size: int = 1 << 16) -> str:
    """The start of a text file past a UTF-8 BOM and any amount of leading whitespace."""
    head = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if head:
        return head.decode("utf-8", "replace")
    with open(path, "rb") as f:  # all whitespace so far: read on, a piece at a time
        f.seek(size)
        while piece := f.read(size):
            if piece := piece.lstrip():
                return (piece + f.read(size)).decode("utf-8", "replace")
    return ""


def _is_tar(head: bytes) -> bool:
    return len(head) >= 262 and head[257:262] == b"ustar"


def _detect_dir(path: Path) -> str:
    if any(path.glob("*.parquet")):
        return PARQUET
    root = path / "train_xml" if (path / "train_xml").is_dir() else path
    for sub in root.iterdir():
        if sub.is_dir() and any(sub.glob("*.xml")):
            return IMAGENET_AB
    raise SourceError(f"{path}: a folder with neither train_xml/<wnid>/*.xml nor *.parquet")
