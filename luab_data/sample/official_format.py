"""Serialisers of the official formats, quirks included (see docs/RELEASE_FORMATS.md).

ImageNet-AB XML: a byproduct block is a dict dumped to XML: child tags in sorted order, booleans
as the text True/False, an empty list as the literal text None, a list as a repeated element.
The ILSVRC box part keeps its own (unsorted) order and tab indentation. The COCO-AB JSON list
is written record by record (the tar.gz writer lives in targz.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from xml.sax.saxutils import escape


class Sorted(dict):
    """A dict that is dumped with its keys sorted (how the byproduct blocks were written)."""


class Repeated:
    """A repeated element given as columns: field name -> equal-length sequence.

    Values are written with %r (floats) or %s (anything else, unescaped: strings in a Repeated
    must be XML-safe, e.g. numbers already formatted by `coordinate_text`).
    """

    __slots__ = ("columns", "n")

    def __init__(self, columns: dict[str, Sequence]):
        self.columns = columns  # edit values in place only (the length is kept)
        self.n = len(next(iter(columns.values()))) if columns else 0

    def __len__(self) -> int:
        return self.n


def _str_text(value: str) -> str:
    return escape(value) if ("&" in value or "<" in value or ">" in value) else value


_TEXT = {
    bool: lambda v: "True" if v else "False",  # the releases' spelling of booleans
    int: str,
    float: repr,
    str: _str_text,
}


def text(value) -> str:
    """Element text of a scalar as the releases wrote it."""
    return _TEXT.get(type(value), str)(value)


_TEMPLATES: dict[tuple, tuple[str, tuple[str, ...]]] = {}
_SORTED: dict[tuple[str, ...], list[str]] = {}


def _sorted_keys(keys: tuple[str, ...]) -> list[str]:
    """sorted(keys), memoised: a few dict shapes recur millions of times."""
    out = _SORTED.get(keys)
    if out is None:
        out = _SORTED[keys] = sorted(keys)
    return out


def _template(tag: str, columns: dict, pad: str) -> tuple[str, tuple[str, ...]]:
    """The format string of one element of a Repeated, and its field order."""
    floats = tuple(type(c[0]) is float for c in columns.values())
    key = (tag, tuple(columns), floats, pad)
    found = _TEMPLATES.get(key)
    if found is None:
        kind = dict(zip(columns, floats, strict=True))
        names = tuple(sorted(columns))
        inner = "".join(f"<{k}>{'%r' if kind[k] else '%s'}</{k}>" for k in names)
        found = _TEMPLATES[key] = (f"{pad}<{tag}>{inner}</{tag}>", names)
    return found


def repeated_xml(tag: str, rep: Repeated, pad: str = "") -> str:
    """All elements of a Repeated in one format call (traces are the bulk of the bytes)."""
    n = rep.n
    if n == 0:
        return f"{pad}<{tag}>None</{tag}>"
    cols = rep.columns
    one, names = _template(tag, cols, pad)
    m = len(names)
    flat: list = [None] * (n * m)
    for i, k in enumerate(names):
        c = cols[k]
        flat[i::m] = [text(v) for v in c] if type(c[0]) is bool else c
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
    kind = type(value)
    if kind in _TEXT:
        return f"{pad}<{tag}>{_TEXT[kind](value)}</{tag}>"
    if kind is Repeated:
        return repeated_xml(tag, value, pad)
    if isinstance(value, list):
        if not value:
            return f"{pad}<{tag}>None</{tag}>"
        return "\n".join(element(tag, v, depth) for v in value)
    if isinstance(value, dict):
        keys = _sorted_keys(tuple(value)) if kind is Sorted else list(value)
        inner = pad + "\t"
        parts = []
        for k in keys:  # scalars inline: they are most children, and recursion is the cost
            v = value[k]
            conv = _TEXT.get(type(v))
            parts.append(f"{inner}<{k}>{conv(v)}</{k}>" if conv else element(k, v, depth + 1))
        return f"{pad}<{tag}>\n" + "\n".join(parts) + f"\n{pad}</{tag}>"
    return f"{pad}<{tag}>{text(value)}</{tag}>"


def ilsvrc_part(wnid: str, stem: str, width: int, height: int, boxes: Iterable) -> dict:
    """The original ILSVRC box annotation (its own field order), boxes in whole pixels."""
    objects = [
        {
            "name": wnid,
            "pose": "Unspecified",
            "truncated": 0,
            "difficult": 0,
            "bndbox": {"xmin": x0, "ymin": y0, "xmax": x1, "ymax": y1},
        }
        for x0, y0, x1, y1 in boxes
    ]
    return {
        "folder": wnid,
        "filename": stem,
        "source": {"database": "ILSVRC_2012"},
        "size": {"width": width, "height": height, "depth": 3},
        "segmented": 0,
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
