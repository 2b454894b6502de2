"""Read a huge JSON list element by element, in bounded memory.

The C decoder parses each element in place (json.JSONDecoder.raw_decode); the buffer only
ever holds the current element plus one read. A syntactically broken element is reported and
skipped: the reader resynchronises at the next element that opens with one of the caller's
top-level keys (nested objects of these formats never use them), so one bad record costs one
record, and a file cut short raises a SourceError that says where.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from luab_data.sources.errors import SourceError

READ_SIZE = 1 << 20
_WS = re.compile(r"\s*")
_DECODER = json.JSONDecoder()


@dataclass
class BrokenElement:
    """An element that is not valid JSON: where it starts and what the decoder said."""

    offset: int  # character offset of the element in the file
    message: str


class JsonListReader:
    """Iterate (index, element or BrokenElement) over a JSON list in a text or binary file."""

    def __init__(self, file: IO[bytes], name: str, top_keys: tuple[str, ...]):
        self.file = file
        self.name = name
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")  # BOM skipped
        self.buf = ""
        self.pos = 0
        self.base = 0  # file character offset of buf[0]
        self.eof = False
        keys = "|".join(re.escape(k) for k in top_keys)
        self.resync = re.compile(r',\s*\{\s*"(?:' + keys + r')"\s*:')

    def _more(self) -> bool:
        if self.eof:
            return False
        data = self.file.read(READ_SIZE)
        if not data:
            self.eof = True
            self.buf += self.decoder.decode(b"", final=True)
            return False
        if self.pos > READ_SIZE:  # drop what is consumed, keep memory bounded
            self.base += self.pos
            self.buf = self.buf[self.pos :]
            self.pos = 0
        self.buf += self.decoder.decode(data)
        return True

    def _skip_ws(self) -> str:
        """Skip whitespace; return the next character ('' at the end of the file)."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or not self._more():
                return self.buf[self.pos : self.pos + 1]

    def _where(self) -> str:
        return f"{self.name} at character {self.base + self.pos}"

    def __iter__(self) -> Iterator[tuple[int, object]]:
        if self._skip_ws() != "[":
            raise SourceError(f"{self._where()}: expected a JSON list ('[')")
        self.pos += 1
        index = 0
        if self._skip_ws() == "]":
            return
        while True:
            yield index, self._element(index)
            index += 1
            sep = self._skip_ws()
            if sep == "]":
                return
            if sep == "":
                raise SourceError(
                    f"{self._where()}: the JSON list is truncated after element {index - 1}"
                )
            if sep != ",":
                raise SourceError(f"{self._where()}: expected ',' or ']' after element {index - 1}")
            self.pos += 1
            self._skip_ws()

    def _element(self, index: int) -> object:
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as err:
                nxt = self.resync.search(self.buf, self.pos)
                if nxt is None and self._more():
                    continue  # the element may simply not be all in the buffer yet
                if nxt is None:
                    raise SourceError(
                        f"{self._where()}: the JSON ends inside element {index} "
                        f"(truncated file?): {err.msg}"
                    ) from err
                broken = BrokenElement(self.base + self.pos, f"{err.msg} (element {index})")
                self.pos = nxt.start()  # at the ',' before the next element
                return broken
            self.pos = end
            return value
