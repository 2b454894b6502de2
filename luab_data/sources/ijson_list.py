"""Stream a huge JSON list element by element through ijson (yajl2 C backend), in bounded memory.

ijson parses the list in one go while the elements are well-formed. When it stops at a syntax
error (or at a NaN, which yajl refuses and Python's json writes), the element it stopped in is
found by counting element boundaries (a ',' then an object opening with one of the caller's
top-level keys: nested objects of these formats never use them), decoded alone by Python's json
(which reads NaN and Infinity) or reported as broken, and ijson resumes at the next element. So
one bad element costs one element. The list's framing is checked too: a ',' before the closing
']' and anything but whitespace after it are reported (`ListProblem`); a list cut short raises
a SourceError that says where.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import ijson

from luab_data.sources.errors import SourceError

READ_SIZE = 1 << 20
_SPACE = b" \t\r\n"
_BOM = b"\xef\xbb\xbf"
_INT_KEY = r'"{}"\s*:\s*(-?\d+)'


@dataclass
class BrokenElement:
    """An element that is not valid JSON: what the decoder said, and its key if readable."""

    detail: str
    key_value: int | None  # the `key_field` integer read from its text, if any


@dataclass
class ListProblem:
    """Something wrong with the list itself, not with one element (after element `index`)."""

    detail: str


class _Resumed:
    """A file read from `offset` on, as if a '[' came first (ijson then sees a list)."""

    def __init__(self, f: IO[bytes], offset: int):
        self.f = f
        self.head = b"["
        f.seek(offset)

    def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        head, self.head = self.head, b""
        return head + self.f.read(n - len(head) if n > 0 else -1)


class JsonList:
    """Iterate (index, element | BrokenElement | ListProblem) over a JSON list of objects."""

    def __init__(self, path: Path, top_keys: tuple[str, ...], key_field: str):
        self.path = Path(path)
        keys = "|".join(re.escape(k) for k in top_keys)
        self.boundary = re.compile(rb',\s*\{\s*"(?:' + keys.encode() + rb')"\s*:')
        self.key_re = re.compile(_INT_KEY.format(re.escape(key_field)).encode())
        self.position = 0  # bytes of the file read so far (for progress)

    def __iter__(self) -> Iterator[tuple[int, object]]:
        with open(self.path, "rb") as f:
            start, index = _list_start(f, self.path), 0
            while start is not None:
                got = 0
                try:
                    for element in ijson.items(_Resumed(f, start), "item", use_float=True):
                        yield index + got, element
                        got += 1
                        if not got % 256:
                            self.position = f.tell()
                    self.position = f.tell()
                    return  # the list closed, whitespace at most after it
                except (ijson.JSONError, UnicodeDecodeError):
                    pass  # handled below, from the failing element on
                index += got
                start = yield from self._recover(f, start, got, index)
                index += 1

    def _recover(self, f: IO[bytes], start: int, got: int, index: int):
        """Handle what stopped ijson in the segment from `start` after `got` elements: yield
        the element it stopped in (decoded, or broken) or the list's problem; return where
        ijson resumes (None: the list is done)."""
        at = self._element_start(f, start, got)
        if got:  # `at` follows element got - 1: ',' or ']' expected
            if _read(f, at, 1) != b",":
                yield index, self._framing(f, at, index)
                return None
            at = _skip_space(f, at + 1)
            if _read(f, at, 1) == b"]":
                yield index, ListProblem(f"a ',' before the closing ']' at byte {at - 1}")
                problem = self._after_list(f, at + 1)
                if problem is not None:
                    yield index, problem
                return None
        elif _read(f, at, 1) == b"]":  # '[ ]' then something
            yield index, self._framing(f, at, index)
            return None
        nxt = self._next_boundary(f, at + 1)
        text = _read(f, at, (nxt if nxt is not None else _size(f)) - at)
        if nxt is None:  # the last element: the list must close after it
            body = text.rstrip(_SPACE)
            if not body.endswith(b"]"):
                raise SourceError(
                    f"{self.path}: the JSON list is truncated (no closing ']') "
                    f"inside element {index}, at byte {at}"
                )
            text = body[:-1]
        yield index, self._decode(text, at)
        return None if nxt is None else nxt + 1

    def _decode(self, text: bytes, at: int) -> object:
        """One element's bytes through Python's json (NaN and Infinity read), or broken."""
        try:
            return json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            key = self.key_re.search(text)
            where = getattr(err, "pos", 0)
            near = text[where : where + 60].decode("utf-8", "replace")
            detail = f"invalid JSON: {getattr(err, 'msg', err)} at byte {at + where}: {near!r}"
            value = int(key[1]) if key and len(key[1]) <= 19 else None
            return BrokenElement(detail, value)

    def _element_start(self, f: IO[bytes], start: int, got: int) -> int:
        """Where ijson's failing element of the segment from `start` begins: its start, or
        the end of the segment's last good element (when the failure is in the framing)."""
        if got == 0:
            return _skip_space(f, start)
        return _skip_space(f, self._end_of_element(f, self._nth_start(f, start, got - 1)))

    def _nth_start(self, f: IO[bytes], start: int, n: int) -> int | None:
        """Offset of the '{' of element n of the segment (element 0 opens it)."""
        if n == 0:
            return _skip_space(f, start)
        at = start
        for _ in range(n):
            at = self._next_boundary(f, at)
            if at is None:
                return None
            at += 1
        return _skip_space(f, at)

    def _next_boundary(self, f: IO[bytes], at: int) -> int | None:
        """Offset of the ',' of the next element boundary from `at`; None if there is none."""
        overlap = 4096
        while chunk := _read(f, at, READ_SIZE + overlap):
            m = self.boundary.search(chunk)
            if m and (m.start() < READ_SIZE or len(chunk) <= READ_SIZE):
                return at + m.start()
            if len(chunk) <= READ_SIZE:
                return None
            at += READ_SIZE
        return None

    def _end_of_element(self, f: IO[bytes], at: int | None) -> int:
        """Where the (well-formed) element starting at `at` ends."""
        if at is None:
            raise SourceError(f"{self.path}: not a JSON list of objects")
        size = READ_SIZE
        while True:
            text = _read(f, at, size).decode("utf-8", "replace")
            try:
                _, end = json.JSONDecoder().raw_decode(text)
                return at + len(text[:end].encode("utf-8", "replace"))
            except json.JSONDecodeError:
                if at + size >= _size(f):
                    raise SourceError(
                        f"{self.path}: the JSON ends inside the element at "
                        f"byte {at} (truncated file?)"
                    ) from None
                size *= 2

    def _framing(self, f: IO[bytes], at: int, index: int) -> ListProblem:
        """After an element: ']' then something (reported), or neither ',' nor ']' (fatal)."""
        c = _read(f, at, 1)
        if c == b"]":
            problem = self._after_list(f, at + 1)
            if problem is not None:
                return problem
        if not c:
            raise SourceError(
                f"{self.path}: the JSON list is truncated (no closing ']') "
                f"after element {index - 1}, at byte {at}"
            )
        raise SourceError(
            f"{self.path}: at byte {at}, after element {index - 1}: expected ',' "
            f"or ']', found {_read(f, at, 40)!r}"
        )

    def _after_list(self, f: IO[bytes], at: int) -> ListProblem | None:
        """Only whitespace may follow the list: anything else (a second list appended, say)
        would be dropped unseen, so it is reported."""
        at = _skip_space(f, at)
        text = _read(f, at, 40)
        if not text:
            return None
        return ListProblem(f"content after the list's closing ']' at byte {at}: {text!r}")


def _list_start(f: IO[bytes], path: Path) -> int:
    """Offset just past the opening '[' (a UTF-8 BOM and any whitespace before it skipped)."""
    skip = len(_BOM) if f.read(3) == _BOM else 0
    at = _skip_space(f, skip)
    c = _read(f, at, 1)
    if not c:
        raise SourceError(f"{path}: empty (or only whitespace): expected a JSON list ('[')")
    if c != b"[":
        raise SourceError(f"{path}: expected a JSON list ('[') at byte {at}")
    return at + 1


def _read(f: IO[bytes], at: int, n: int) -> bytes:
    f.seek(at)
    return f.read(n)


def _size(f: IO[bytes]) -> int:
    return f.seek(0, 2)


def _skip_space(f: IO[bytes], at: int) -> int:
    """The first offset from `at` that is not JSON whitespace (the file's size if none)."""
    while chunk := _read(f, at, READ_SIZE):
        rest = chunk.lstrip(_SPACE)
        if rest:
            return at + len(chunk) - len(rest)
        at += len(chunk)
    return at
