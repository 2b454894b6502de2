"""A reproducible tar.gz written in pieces that worker processes frame and compress.

Members are framed exactly as tarfile frames them (GNU format, fixed mtime/owner/mode). Each
piece (the members of one chunk) is raw-deflated on its own and ends with a sync flush, so the
pieces concatenate into a single deflate stream, as pigz does; the writer adds the gzip header
(mtime 0, no name), the tar end-of-archive blocks, and the CRC-32 and length of the whole
stream, which it combines from the pieces' own CRCs. Piece boundaries are fixed by the chunking,
so the bytes are the same whatever the number of processes; any gzip / tar reader reads it.
"""

from __future__ import annotations

import struct
import tarfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

TAR_MTIME = 1_672_531_200  # fixed member time (2023-01-01)
BLOCK = tarfile.BLOCKSIZE
_NUL = b"\0"


def _header_template() -> tuple[bytes, int]:
    """A GNU header with an empty name, size 0 and a blank checksum, and the byte sum of it."""
    info = tarfile.TarInfo("")
    info.mtime, info.mode, info.uname, info.gname = TAR_MTIME, 0o644, "", ""
    buf = bytearray(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))
    buf[148:156] = b" " * 8
    return bytes(buf), sum(buf)


_TEMPLATE, _TEMPLATE_SUM = _header_template()


def header(name: str, size: int, directory: bool = False) -> bytes:
    """The 512-byte header tarfile writes for this member (names shorter than 100 bytes)."""
    raw = name.encode("utf-8")
    if len(raw) >= 100:  # a long name needs tarfile's extra header blocks
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.uname, info.gname = size, TAR_MTIME, "", ""
        info.mode, info.type = (0o755, tarfile.DIRTYPE) if directory else (0o644, tarfile.REGTYPE)
        return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
    h = bytearray(_TEMPLATE)
    h[0 : len(raw)] = raw
    h[124:136] = b"%011o\0" % size
    if directory:
        h[100:108], h[156:157] = b"0000755\0", tarfile.DIRTYPE
    h[148:156] = b"%06o\0 " % sum(h)  # the sum counts the checksum field as 8 spaces
    return bytes(h)


def frame(name: str, data: bytes) -> bytes:
    """One regular member: header, data, NUL padding to the block size."""
    return header(name, len(data)) + data + _NUL * (-len(data) % BLOCK)


def parent_dirs(name: str) -> list[str]:
    parts = name.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


@dataclass(frozen=True)
class Piece:
    """A run of framed members, raw-deflated, ready to be appended."""

    data: bytes  # raw deflate, ending with a sync flush
    crc: int  # CRC-32 of the uncompressed bytes
    size: int  # uncompressed length


def make_piece(members: Iterable[tuple[str, bytes]], known_dirs: set[str], level: int) -> Piece:
    """Frame members (adding each parent directory not in `known_dirs`, which is updated)."""
    parts: list[bytes] = []
    for name, data in members:
        for d in parent_dirs(name):
            if d not in known_dirs:
                known_dirs.add(d)
                parts.append(header(d + "/", 0, directory=True))
        parts.append(frame(name, data))
    raw = b"".join(parts)
    comp = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return Piece(comp.compress(raw) + comp.flush(zlib.Z_SYNC_FLUSH), zlib.crc32(raw), len(raw))


def _gf2_times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, row) for row in mat]


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of A+B from crc(A), crc(B) and len(B): crc1 is advanced over len2 zero bytes by
    squaring the GF(2) operator of one zero bit (zlib has this; Python's zlib does not expose it).
    """
    if len2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]  # one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four zero bits
    while True:
        even = _gf2_square(odd)  # first pass: one zero byte
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _gf2_square(even)
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


class TarGzWriter:
    """Appends pieces to a .tar.gz; close() ends the archive."""

    def __init__(self, path: Path, compresslevel: int = 6):
        self.level = compresslevel
        self._fh = open(path, "wb")  # noqa: SIM115 - closed in close()
        xfl = 2 if compresslevel == 9 else 4 if compresslevel == 1 else 0
        self._fh.write(b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + bytes([xfl, 255]))
        self._crc, self._size = 0, 0
        self.known_dirs: set[str] = set()

    def add_piece(self, piece: Piece) -> None:
        self._fh.write(piece.data)
        self._crc = crc32_combine(self._crc, piece.crc, piece.size)
        self._size += piece.size

    def add(self, members: Iterable[tuple[str, bytes]]) -> None:
        """Frame and compress here (tests, small archives)."""
        self.add_piece(make_piece(members, self.known_dirs, self.level))

    def close(self) -> None:
        end = 2 * BLOCK  # two zero blocks end the archive, then padding to tar's record size
        end += -(self._size + end) % tarfile.RECORDSIZE
        tail = _NUL * end
        comp = zlib.compressobj(self.level, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._fh.write(comp.compress(tail) + comp.flush(zlib.Z_FINISH))
        self._crc = crc32_combine(self._crc, zlib.crc32(tail), end)
        self._size += end
        self._fh.write(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))
        self._fh.close()

    def __enter__(self) -> TarGzWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
