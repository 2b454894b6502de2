"""Serialisers of the official formats, quirks included (see docs/FORMATS.md).

ImageNet-AB XML: a byproduct block is a dict dumped to XML: child tags in sorted order, booleans
as the text True/False, an empty list as the literal text None, a list as a repeated element.
The ILSVRC box part keeps its own (unsorted) order and tab indentation. Writers stream: the
tar.gz is written member by member with fixed metadata (same bytes on every run), the COCO-AB
JSON list record by record.
"""

from __future__ import annotations

import gzip
import io
import json
import queue
import tarfile
import threading
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from xml.sax.saxutils import escape

TAR_MTIME = 1_672_531_200  # fixed member time (2023-01-01) so archives are reproducible


class Sorted(dict):
    """A dict that is dumped with its keys sorted (how the byproduct blocks were written)."""


class Repeated:
    """A repeated element given as columns: field name -> equal-length sequence.

    Values are written with %r (floats) or %s (anything else, unescaped: strings in a Repeated
    must be XML-safe, e.g. numbers already formatted by `coordinate_text`).
    """

    __slots__ = ("columns",)

    def __init__(self, columns: dict[str, Sequence]):
        self.columns = columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0


_SPECIAL = frozenset("&<>")


def text(value) -> str:
    if value is True or value is False:
        return "True" if value else "False"
    if isinstance(value, str):
        return escape(value) if _SPECIAL.intersection(value) else value
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _fmt(column: list) -> str:
    return "%r" if isinstance(column[0], float) else "%s"


def repeated_xml(tag: str, rep: Repeated, pad: str = "") -> str:
    """All elements of a Repeated in one format call (traces are the bulk of the bytes)."""
    n = len(rep)
    if n == 0:
        return f"{pad}<{tag}>None</{tag}>"
    names = sorted(rep.columns)
    flat: list = [None] * (n * len(names))
    inner = []
    for i, k in enumerate(names):
        col = list(rep.columns[k])
        if isinstance(col[0], bool):
            col = [text(v) for v in col]
        flat[i::len(names)] = col
        inner.append(f"<{k}>{_fmt(col)}</{k}>")
    one = f"{pad}<{tag}>{''.join(inner)}</{tag}>"
    return ((one + "\n") * (n - 1) + one) % tuple(flat)


_SCALARS = (str, int, float, bool)


@lru_cache(maxsize=64)
def coordinate_text(size: int, pad: int) -> tuple[str, ...]:
    """repr(px / size) for px in [-pad, size + pad], indexed by px + pad (front-end values are
    whole-pixel offsets divided by the displayed size; formatting them once is much cheaper)."""
    return tuple(repr(px / size) for px in range(-pad, size + pad + 1))


def element(tag: str, value, depth: int = 0) -> str:
    """One element (and its children) as XML text, children one per line, tab-indented."""
    pad = "\t" * depth
    if isinstance(value, _SCALARS):
        return f"{pad}<{tag}>{text(value)}</{tag}>"
    if isinstance(value, Repeated):
        return repeated_xml(tag, value, pad)
    if isinstance(value, list):
        if not value:
            return f"{pad}<{tag}>None</{tag}>"
        return "\n".join(element(tag, v, depth) for v in value)
    if isinstance(value, dict):
        keys = sorted(value) if isinstance(value, Sorted) else list(value)
        inner = pad + "\t"
        body = "\n".join([
            # scalars inline: they are most of the children and recursion is the cost
            f"{inner}<{k}>{text(v)}</{k}>" if isinstance(v, _SCALARS) else element(k, v, depth + 1)
            for k, v in ((k, value[k]) for k in keys)
        ])
        return f"{pad}<{tag}>\n{body}\n{pad}</{tag}>"
    return f"{pad}<{tag}>{text(value)}</{tag}>"


def ilsvrc_part(wnid: str, stem: str, width: int, height: int, boxes: Iterable) -> dict:
    """The original ILSVRC box annotation (its own field order), boxes in whole pixels."""
    objects = [
        {
            "name": wnid, "pose": "Unspecified", "truncated": 0, "difficult": 0,
            "bndbox": {"xmin": x0, "ymin": y0, "xmax": x1, "ymax": y1},
        }
        for x0, y0, x1, y1 in boxes
    ]
    return {
        "folder": wnid, "filename": stem, "source": {"database": "ILSVRC_2012"},
        "size": {"width": width, "height": height, "depth": 3}, "segmented": 0,
        "object": objects,
    }


def imagenet_ab_xml(
    wnid: str, stem: str, metadata: list[Sorted], box_part: dict | None = None
) -> bytes:
    """One train_xml/<wnid>/<stem>.xml: the box XML with blocks appended, or the bare shape."""
    if box_part is None:
        root = Sorted(filename=stem, folder=wnid, metadata=metadata)
    else:
        root = dict(box_part, metadata=metadata)
    return (element("annotation", root) + "\n").encode()


def member_name(wnid: str, stem: str) -> str:
    return f"train_xml/{wnid}/{stem}.xml"


class _ThreadedGzip:
    """A write-only file that gzips in a background thread (zlib releases the GIL), so
    compression runs beside the Python that produces the members. Bytes are identical to a
    plain GzipFile of the same level."""

    FLUSH = 4 << 20

    def __init__(self, path: Path, compresslevel: int):
        self._raw = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0,
                                 compresslevel=compresslevel)
        self._buf = bytearray()
        self._written = 0
        self._queue: queue.Queue = queue.Queue(maxsize=4)  # bounded: memory stays small
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        try:
            while (block := self._queue.get()) is not None:
                self._gz.write(block)
        except BaseException as err:  # surfaced in close()
            self._error = err
            while self._queue.get() is not None:
                pass

    def tell(self) -> int:
        return self._written

    def write(self, data) -> int:
        self._written += len(data)
        self._buf += data
        if len(self._buf) >= self.FLUSH:
            self._queue.put(bytes(self._buf))
            self._buf.clear()
        return len(data)

    def close(self) -> None:
        if self._buf:
            self._queue.put(bytes(self._buf))
            self._buf.clear()
        self._queue.put(None)
        self._thread.join()
        self._gz.close()
        self._raw.close()
        if self._error is not None:
            raise self._error


class TarGzWriter:
    """A reproducible tar.gz written member by member (fixed mtime/owner; gzip mtime 0)."""

    def __init__(self, path: Path, compresslevel: int = 6):
        self._sink = _ThreadedGzip(path, compresslevel)
        self._tar = tarfile.open(fileobj=self._sink, mode="w", format=tarfile.GNU_FORMAT)
        self._dirs: set[str] = set()

    def _info(self, name: str, kind: bytes, size: int = 0, mode: int = 0o644) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.size, info.mode, info.mtime = kind, size, mode, TAR_MTIME
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    def _ensure_dirs(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self._dirs:
                self._dirs.add(d)
                self._tar.addfile(self._info(d + "/", tarfile.DIRTYPE, mode=0o755))

    def add(self, name: str, data: bytes) -> None:
        self._ensure_dirs(name)
        self._tar.addfile(self._info(name, tarfile.REGTYPE, len(data)), io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()
        self._sink.close()

    def __enter__(self) -> TarGzWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class JsonListWriter:
    """A JSON list written record by record, as json.dump would write the whole list."""

    def __init__(self, path: Path):
        self._fh = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._fh.write("[")
        self._first = True

    def add_raw(self, text_: str) -> None:
        """One already-serialised element (lets corrupt.py plant malformed ones)."""
        self._fh.write(text_ if self._first else ", " + text_)
        self._first = False

    def add(self, record: dict) -> None:
        self.add_raw(json.dumps(record))

    def close(self) -> None:
        self._fh.write("]")
        self._fh.close()

    def __enter__(self) -> JsonListWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
