"""Stream a (gzipped) tar as blocks of members: member bytes stay inside the decompressed block.

Python's tarfile costs ~45 us per member in object overhead, several times the decompression of
a small XML file; ImageNet-AB has 1.28 M of them. Here a decompressed block is scanned for
512-byte headers and each member is an offset range into the block, so the XML scanner reads
members where they lie. Decompression (ISA-L's gzip, which releases the GIL like zlib) runs in
a thread of its own.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from isal import isal_zlib

from luab_data.sources import validation as v
from luab_data.sources.errors import SourceError

BLOCK = 512
READ_SIZE = 1 << 20
TARGET_MEMBERS = 2048  # members per yielded block (fewer at the end)


# Member kinds in MemberBlock.kinds: regular files carry their data; the others are reported
# (by name, with no data) so that the reader can reject them instead of dropping them unseen.
REGULAR, SPECIAL, OVERSIZED = 0, 1, 2
_DATA = (b"0", b"\0", b"7")  # regular files
_SPECIAL = (b"1", b"2", b"3", b"4", b"6")  # hard and symbolic links, devices, FIFOs


@dataclass
class MemberBlock:
    """Members whose data are buf[starts[i]:ends[i]]."""

    buf: bytes
    names: list[str]
    starts: np.ndarray
    ends: np.ndarray
    kinds: np.ndarray | None = None  # per member REGULAR / SPECIAL / OVERSIZED; None: all regular


class _BadHeader(ValueError):
    """A tar header that cannot be trusted (its message says which field)."""


def _octal(field: bytes, what: str = "numeric") -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for large sizes
        return int.from_bytes(field[1:], "big")
    text = field.rstrip(b"\0 ").strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise _BadHeader(f"its {what} field {bytes(field)!r} is not an octal number") from None


def _check_header(header: bytes) -> int:
    """The member's size, once the checksum proves the header intact."""
    stored = _octal(header[148:156], "checksum")
    if stored != sum(header[:148]) + 256 + sum(header[156:]):
        raise _BadHeader("its checksum does not match")
    return _octal(header[124:136], "size")


_MAX_META = 1 << 20  # a long-name or pax record beyond this is a corrupt header


def _check_end(stream: _Decompressed, rest: bytes, at: int) -> None:
    """After the end-of-archive marker only zero padding may follow: anything else would be
    members (a second archive appended) that a reader stopping here would drop unseen."""
    while True:
        if rest.count(0) != len(rest):
            raise SourceError(
                f"data follow the end-of-archive marker at byte {at} (two archives "
                "concatenated, or a corrupt header)"
            )
        at += len(rest)
        rest = stream.read()
        if not rest:
            return


def _pax_path(data: bytes) -> str | None:
    for line in data.split(b"\n"):
        _, _, kv = line.partition(b" ")
        if kv.startswith(b"path="):
            return kv[5:].decode("utf-8", "replace")
    return None


def _gunzip() -> Any:
    """A gzip decompressor: ISA-L's, ~3x zlib's speed (decompression bounds the records pass
    of an archive on a many-core machine: it is the one part that cannot be split)."""
    return isal_zlib.decompressobj(16 + isal_zlib.MAX_WBITS)


class _Decompressed:
    """The decompressed byte stream of a file, read in large pieces (gzip detected by magic)."""

    def __init__(self, path: Path):
        self.file = open(path, "rb")
        head = self.file.read(2)
        self.file.seek(0)
        self.zlib = _gunzip() if head == b"\x1f\x8b" else None
        self.consumed = 0  # compressed bytes read
        self.produced = 0  # decompressed bytes handed out

    def read(self) -> bytes:
        """The next piece; b'' at the end. Raises SourceError on a cut or corrupt stream."""
        while True:
            raw = self.file.read(READ_SIZE)
            self.consumed += len(raw)
            if self.zlib is None:
                return raw
            if not raw:
                if not self.zlib.eof:
                    raise SourceError("the gzip stream ends early (truncated file)")
                return b""
            try:
                out = self.zlib.decompress(raw)
                while self.zlib.eof and self.zlib.unused_data:  # concatenated gzip members
                    rest = self.zlib.unused_data
                    self.zlib = _gunzip()
                    out += self.zlib.decompress(rest)
            except (zlib.error, isal_zlib.error) as err:
                raise SourceError(
                    f"corrupt gzip data after {self.produced} bytes of tar stream "
                    f"(compressed bytes {self.consumed - len(raw)}..{self.consumed})"
                    f": {err}"
                ) from err
            self.produced += len(out)
            if out:
                return out

    def close(self) -> None:
        self.file.close()


def iter_blocks(path: Path, progress=None, keep_data: bool = True) -> Iterator[MemberBlock]:
    """Members of a tar (or tar.gz), grouped into blocks, in archive order: regular files with
    their data; links, devices and members over MAX_MEMBER_BYTES by name only (see kinds)."""
    stream = _Decompressed(Path(path))
    buf = b""
    pos = 0
    base = 0  # offset of buf[0] in the (decompressed) tar stream
    count = 0
    last = "the first member"
    names: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    kinds: list[int] = []
    long_name: str | None = None

    def flush(cut: int) -> MemberBlock:
        block = MemberBlock(
            buf[:cut] if keep_data else b"",
            list(names),
            np.array(starts, np.int64),
            np.array(ends, np.int64),
            np.array(kinds, np.int8),
        )
        names.clear(), starts.clear(), ends.clear(), kinds.clear()
        return block

    def add(name: str, start: int, end: int, kind: int) -> None:
        nonlocal count, last
        count += 1
        last = name
        names.append(name), starts.append(start), ends.append(end), kinds.append(kind)

    try:
        while True:
            if len(buf) - pos < BLOCK:
                if names:
                    yield flush(min(pos, len(buf)))
                # pos may lie past the buffer (padding or skipped data not read yet)
                cut = min(pos, len(buf))
                buf, pos, base = buf[cut:], pos - cut, base + cut
                more = stream.read()
                if progress is not None:
                    progress.done = stream.consumed
                if not more:
                    raise SourceError("the archive ends without its end-of-archive marker")
                buf += more
                continue
            header = buf[pos : pos + BLOCK]
            if header.count(0) == BLOCK:
                _check_end(stream, buf[pos:], base + pos)
                break  # end-of-archive marker
            try:
                size = _check_header(header)
            except _BadHeader as err:
                raise SourceError(
                    f"the tar header at byte {base + pos} of the tar stream "
                    f"(member {_name(header)!r}) is corrupt: {err}"
                ) from None
            kind = header[156:157]
            step = BLOCK + -(-size // BLOCK) * BLOCK
            meta = kind in (b"L", b"x")  # GNU long name / pax header for the next member
            buffered = meta or (kind in _DATA and size <= v.MAX_MEMBER_BYTES)
            if meta and size > _MAX_META:
                raise SourceError(
                    f"the tar header at byte {base + pos} declares a {size}-byte "
                    "name record (corrupt archive)"
                )
            end = pos + BLOCK + size
            if buffered and end > len(buf):  # the member's data are not all in the buffer yet
                if names:
                    yield flush(pos)
                buf, pos, base = buf[pos:], 0, base + pos
                while len(buf) < BLOCK + size:
                    more = stream.read()
                    if not more:
                        raise SourceError(
                            f"the archive ends inside member {long_name or _name(header)}"
                        )
                    buf += more
                if progress is not None:
                    progress.done = stream.consumed
                continue
            if meta:
                data = buf[pos + BLOCK : end]
                long_name = (
                    data.rstrip(b"\0").decode("utf-8", "replace")
                    if kind == b"L"
                    else _pax_path(data)
                )
            elif buffered:
                add(long_name or _name(header), pos + BLOCK, end, REGULAR)
                long_name = None
                if len(names) >= TARGET_MEMBERS:
                    yield flush(end)
                    buf, pos, base = buf[end:], step - BLOCK - size, base + end  # padding left
                    continue
            elif kind in _DATA or kind in _SPECIAL:  # reported by name, data skipped unread
                add(
                    long_name or _name(header),
                    pos + BLOCK,
                    pos + BLOCK,
                    OVERSIZED if kind in _DATA else SPECIAL,
                )
                long_name = None
            elif kind != b"K":  # directories, global headers (K: a long link target)
                long_name = None
            pos += step
        if names:
            yield flush(pos)
    except SourceError as err:
        raise SourceError(
            f"{path}: truncated or corrupt archive after {count} members (last read: {last}): {err}"
        ) from err
    finally:
        stream.close()
    if progress is not None:
        progress.done = progress.total


def _name(header: bytes) -> str:
    name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
        if prefix:
            return f"{prefix}/{name}"
    return name
