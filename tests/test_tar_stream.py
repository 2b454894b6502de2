"""The streaming tar reader returns exactly what tarfile stores, whatever the read size."""

from __future__ import annotations

import gzip
import io
import itertools
import random
import tarfile

import pytest

from luab_data.sources import SourceError, tar_stream
from luab_data.sources.tar_stream import iter_blocks


def make_tar(path, fmt: int, compress: bool, n: int = 120) -> list[tuple[str, bytes]]:
    """Names over 100 characters: GNU long-name and pax records, or the ustar prefix field."""
    rng = random.Random(fmt)
    members = []
    with tarfile.open(path, "w:gz" if compress else "w", format=fmt) as tar:
        for i in range(n):
            longest = 90 if fmt == tarfile.USTAR_FORMAT else 180  # ustar: a 100-char last part
            long_part = "x" * rng.randrange(1, longest)
            name = f"train_xml/n{i % 7:08d}/{long_part}_{i}.xml"
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 1500)))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            members.append((name, data))
            if i % 40 == 0:  # directories are skipped
                folder = tarfile.TarInfo(f"train_xml/dir{i}")
                folder.type = tarfile.DIRTYPE
                tar.addfile(folder)
    return members


def read_members(path) -> list[tuple[str, bytes]]:
    return [
        (name, b.buf[s:e])
        for b in iter_blocks(path)
        for name, s, e in zip(b.names, b.starts, b.ends, strict=True)
    ]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
@pytest.mark.parametrize("read_size", [700, 5000, 1 << 20])
def test_members_match_tarfile(tmp_path, monkeypatch, fmt, read_size):
    path = tmp_path / "a.tar.gz"
    members = make_tar(path, fmt, compress=True)
    assert max(len(name) for name, _ in members) > 100
    monkeypatch.setattr(tar_stream, "READ_SIZE", read_size)
    monkeypatch.setattr(tar_stream, "TARGET_MEMBERS", 17)
    assert read_members(path) == members


def test_uncompressed_tar(tmp_path):
    path = tmp_path / "a.tar"
    members = make_tar(path, tarfile.GNU_FORMAT, compress=False)
    assert read_members(path) == members


@pytest.mark.parametrize("keep", [0.3, 0.7, 0.999])
def test_cut_archive_raises(tmp_path, keep):
    path = tmp_path / "a.tar.gz"
    make_tar(path, tarfile.GNU_FORMAT, compress=True, n=300)
    cut = tmp_path / "cut.tar.gz"
    data = path.read_bytes()
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(SourceError, match="truncated or corrupt"):
        for _ in iter_blocks(cut):
            pass


@pytest.mark.parametrize("read_size", [1, 3, 16, 700, 1 << 20])
def test_concatenated_gzip_members_read_as_one_stream(tmp_path, monkeypatch, read_size):
    """`cat a.gz b.gz` and parallel gzip tools write several gzip members: one tar stream.
    Tiny reads put a read's end at every place, the members' ends and headers included."""
    plain = tmp_path / "a.tar"
    members = make_tar(plain, tarfile.PAX_FORMAT, compress=False, n=200)
    data = plain.read_bytes()
    cuts = [0, 777, len(data) // 2, len(data) - 3, len(data)]  # inside headers and data alike
    path = tmp_path / "multi.tar.gz"
    path.write_bytes(b"".join(gzip.compress(data[a:b]) for a, b in itertools.pairwise(cuts)))
    monkeypatch.setattr(tar_stream, "READ_SIZE", read_size)
    assert read_members(path) == members


def test_corrupt_gzip_data_raises_with_where(tmp_path):
    path = tmp_path / "a.tar.gz"
    make_tar(path, tarfile.GNU_FORMAT, compress=True, n=300)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # a run of zeros inside the deflate data
    path.write_bytes(bytes(data))
    with pytest.raises(SourceError, match=r"corrupt gzip data after \d+ bytes"):
        list(iter_blocks(path))


def test_corrupt_header_raises(tmp_path):
    path = tmp_path / "a.tar"
    make_tar(path, tarfile.GNU_FORMAT, compress=False, n=5)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # inside the first header: its checksum no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(SourceError, match=r"tar header at byte 0 .*train_xml/.*checksum"):
        list(iter_blocks(path))


def test_links_and_devices_are_listed_without_data(tmp_path):
    path = tmp_path / "a.tar"
    with tarfile.open(path, "w") as tar:
        for name, kind in (
            ("a.xml", tarfile.REGTYPE),
            ("l.xml", tarfile.SYMTYPE),
            ("h.xml", tarfile.LNKTYPE),
            ("c", tarfile.CHRTYPE),
        ):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "a.xml" if kind != tarfile.REGTYPE else ""
            info.size = 3 if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(b"abc") if kind == tarfile.REGTYPE else None)
    (block,) = list(iter_blocks(path))
    assert block.names == ["a.xml", "l.xml", "h.xml", "c"]
    assert block.kinds.tolist() == [tar_stream.REGULAR] + [tar_stream.SPECIAL] * 3
    assert (block.ends - block.starts).tolist() == [3, 0, 0, 0]
