"""ImageNet-AB labels: the ImageNet-1k fact list by default, the source's own wnids otherwise,
and OS junk (AppleDouble `._*`, `.DS_Store`) skipped and counted instead of rejected."""

from __future__ import annotations

import io
import re
import tarfile
import warnings
from pathlib import Path

import pytest
from official_fixtures import IMAGENET_WNIDS, bare_xml, imagenet_members, metadata_xml, write_tar

from luab_data.sample import SampleSpec, generate_sample
from luab_data.sample.classes import WNIDS
from luab_data.sources import open_source, read_records, tar_stream
from luab_data.sources.imagenet_ab import ClassListWarning, imagenet_1k

GOOD = ["n01440764_1", "n01440764_2", "n01530575_3", "n02000000_7"]


def test_fact_list_is_the_ilsvrc2012_class_list():
    wnids = imagenet_1k()
    assert len(wnids) == len(set(wnids)) == 1000
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    assert list(wnids) == sorted(wnids)
    assert set(WNIDS) <= set(wnids)  # the bundled sample's classes are ImageNet-1k classes
    # well-known indices of the official loaders (torchvision ImageFolder over train/)
    known = {
        0: "n01440764",
        1: "n01443537",
        207: "n02099601",
        281: "n02123045",
        474: "n02963159",
        610: "n03595614",
        841: "n04370456",
        999: "n15075141",
    }
    assert {i: wnids[i] for i in known} == known


@pytest.fixture(scope="module")
def sample_tar(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    generate_sample(out, SampleSpec(size=120, heldout=1, seed=4, images=False), processes=1)
    return out / "imagenet_ab_v1_0.tar.gz"


def _subset(src: Path, out: Path, keep) -> Path:
    """A copy of an archive with only the members `keep(name)` accepts."""
    with tarfile.open(src) as full, tarfile.open(out, "w:gz") as part:
        for m in full:
            if keep(m.name):
                part.addfile(m, full.extractfile(m) if m.isfile() else None)
    return out


def _labels(table) -> dict[str, int]:
    return dict(
        zip(table.column("key").to_pylist(), table.column("label").to_pylist(), strict=True)
    )


def test_partial_source_and_shards_number_classes_like_the_full_release(sample_tar, tmp_path):
    three = sorted(WNIDS)[3:6]
    part = _subset(
        sample_tar,
        tmp_path / "part.tar.gz",
        lambda n: n.count("/") == 2 and n.split("/")[1] in three,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClassListWarning)  # no fallback for ImageNet-1k wnids
        full, _ = read_records(sample_tar)
        partial, _ = read_records(part)
        shard = [b for b, _ in open_source(sample_tar).batches((1, 3))]
    assert set(partial.column("wnid").to_pylist()) == set(three)
    whole = _labels(full)
    assert _labels(partial) == {k: whole[k] for k in _labels(partial)}
    assert all(
        whole[k] == imagenet_1k().index(w)  # the fact list's index
        for k, w in zip(
            full.column("key").to_pylist(), full.column("wnid").to_pylist(), strict=True
        )
    )
    assert all(whole[k] == v for b in shard for k, v in _labels(b).items())
    assert open_source(part).metadata()["classes"] == list(imagenet_1k())
    with tarfile.open(part) as tar:  # the extracted folder: the same labels
        tar.extractall(tmp_path / "x", filter="data")
    folder, _ = read_records(tmp_path / "x")
    assert _labels(folder) == _labels(partial)


def test_a_non_imagenet_wnid_falls_back_to_the_sources_wnids_with_a_warning(tmp_path):
    tar = write_tar(tmp_path / "a.tar.gz", imagenet_members())  # n02000000 is not ImageNet-1k
    with pytest.warns(ClassListWarning, match=r"outside ImageNet-1k \(first: n02000000\).*own 3"):
        table, _ = read_records(tar)
    assert table.column("label").to_pylist() == [0, 0, 1, 2]
    assert open_source(tar, classes=list(imagenet_1k())).metadata()["classes"] == list(
        imagenet_1k()
    )  # --classes overrides, and then n02000000 is unknown
    with tarfile.open(tar) as t:
        t.extractall(tmp_path / "x", filter="data")
    with pytest.warns(ClassListWarning, match="n02000000"):
        assert open_source(tmp_path / "x").metadata()["classes"] == IMAGENET_WNIDS


def test_a_foreign_wnid_after_the_first_block_is_an_unknown_class(tmp_path, monkeypatch):
    monkeypatch.setattr(tar_stream, "TARGET_MEMBERS", 2)  # the choice sees 2 members only
    members = [m for m in imagenet_members() if "n02000000" not in m[0]]
    block = metadata_xml(image_id="n00000001/n00000001_9", selected=True)
    members.append(
        ("train_xml/n00000001/n00000001_9.xml", bare_xml("n00000001", "n00000001_9", [block]))
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClassListWarning)
        table, rejects = read_records(write_tar(tmp_path / "a.tar", members))
    assert table.num_rows == 3
    assert [(r.key, r.reason) for r in rejects] == [("n00000001_9", "unknown-class")]
    assert "not an ImageNet-1k class" in rejects[0].detail and "first 2 members" in (
        rejects[0].detail
    )


def _entry(
    tar: tarfile.TarFile,
    name: str,
    data: bytes = b"\x00\x05\x16\x07junk",
    kind: bytes = tarfile.REGTYPE,
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def test_appledouble_and_ds_store_are_skipped_and_counted(tmp_path):
    path = tmp_path / "mac.tar.gz"
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        _entry(tar, "._train_xml")  # macOS tar writes one per file and folder
        for name, text in imagenet_members():
            folder, _, base = name.rpartition("/")
            _entry(tar, f"{folder}/._{base}" if folder else f"._{base}")
            _entry(tar, name, text.encode())
        _entry(tar, "train_xml/n01440764/.DS_Store")
        _entry(tar, "train_xml/n01440764/._evil.xml", kind=tarfile.SYMTYPE)  # a link: unsafe
        _entry(tar, "train_xml/../._n01440764_1.xml")  # climbs out: unsafe
    source = open_source(path, classes=IMAGENET_WNIDS)
    rejects = [r for _, bad in source.batches() for r in bad]
    assert sorted(r.where for r in rejects) == [
        "train_xml/../._n01440764_1.xml",
        "train_xml/n01440764/._evil.xml",
    ]
    assert {r.reason for r in rejects} == {"unsafe-path"}
    double = 1 + len(imagenet_members())
    assert source.skipped == {"AppleDouble (._*) files": double, ".DS_Store-like files": 1}
    assert f"skipped         {double} AppleDouble (._*) files" in source.notes()
    table, _ = read_records(path, classes=IMAGENET_WNIDS)
    assert sorted(table.column("key").to_pylist()) == GOOD
    shard1 = open_source(path, classes=IMAGENET_WNIDS)
    list(shard1.batches((1, 2)))
    assert not shard1.skipped  # shard 0 alone counts what belongs to no record


def test_folder_junk_is_skipped_and_counted(tmp_path):
    with tarfile.open(write_tar(tmp_path / "a.tar.gz", imagenet_members())) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    root = tmp_path / "x" / "train_xml"
    (root / "n01440764" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "n01530575" / "._n01530575_3.xml").write_bytes(b"\x00\x05\x16\x07")
    (root / ".DS_Store").write_bytes(b"Bud1")  # beside the class folders: never listed
    source = open_source(tmp_path / "x", classes=IMAGENET_WNIDS)
    table, rejects = read_records(tmp_path / "x", classes=IMAGENET_WNIDS)
    assert rejects == [] and sorted(table.column("key").to_pylist()) == GOOD
    list(source.batches())
    assert source.skipped == {"AppleDouble (._*) files": 1, ".DS_Store-like files": 1}
