"""Hostile values and names: each bad record is rejected alone, with a reason that names the
field and the value; every other record is kept, and no file outside --images is opened."""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from official_fixtures import (
    IMAGENET_WNIDS,
    T0,
    bare_xml,
    coco_action,
    coco_record,
    coco_records,
    ilsvrc_xml,
    imagenet_members,
    metadata_xml,
    write_json,
    write_tar,
)

from luab_data.sources import SourceError, open_source, read_records

GOOD_IMAGENET = ["n01440764_1", "n01440764_2", "n01530575_3", "n02000000_7"]
INT32_OVER, INT16_OVER, INT64_OVER = "3000000000", "70000", "92233720368547758070"
V = "@@VALUE@@"  # where a case's raw value goes


def value_forms(raw: str) -> set[str]:
    """How a reject's detail may spell a value: as written, or as the number it parses to."""
    forms = {raw}
    try:
        forms |= {str(float(raw)), repr(float(raw))}
        forms |= {str(int(raw))} if raw.lstrip("-").isdigit() else set()
    except ValueError:
        pass
    return forms


def assert_only_bad_rejected(table, rejects, bad_key, reason, names, raw, good):
    """Exactly the bad record is rejected, for `reason`, its detail naming one of `names` and
    the value; `where` names the member or file; every good record is kept."""
    assert sorted(table.column("key").to_pylist()) == sorted(good)
    assert [(r.key, r.reason) for r in rejects] == [(bad_key, reason)], rejects
    detail = rejects[0].detail
    assert any(n in detail for n in names), detail
    assert any(f in detail for f in value_forms(raw)), detail
    assert rejects[0].where


# ---------------------------------------------------------------- ImageNet-AB sweep


def _meta(**kw) -> str:
    base = {
        "image_id": "n01440764/n01440764_9",
        "selected": True,
        "clicks": [(T0 + 5, 0.5, 0.5)],
        "trace": [(T0 + 1, 0.5, 0.5)],
    }
    return metadata_xml(**{**base, **kw})


def _leaf(tag: str) -> str:
    """A metadata block whose <tag> leaf holds the value."""
    return (
        bare_xml("n01440764", "bad", [_meta(estimate=V, width=V, height=V, page=V)])
        .replace(f"<{tag}>{V}</{tag}>", f"<{tag}>@@KEEP@@</{tag}>")
        .replace(V, "7")
        .replace("@@KEEP@@", V)
    )


def _fixed(tag: str, old: str) -> str:
    return bare_xml("n01440764", "bad", [_meta()]).replace(f"<{tag}>{old}<", f"<{tag}>{V}<")


def _series(which: str, col: int) -> str:
    item = [T0 + 1, 0.5, 0.5]
    item[col] = V
    kw = {which: [tuple(item)]}
    return bare_xml("n01440764", "bad", [_meta(**kw)])


def _box(col: int) -> str:
    box = [50, 75, 250, 300]
    box[col] = V
    return ilsvrc_xml("n01440764", "bad", [_meta()], box=box)


def _size(tag: str) -> str:
    doc = ilsvrc_xml("n01440764", "bad", [_meta()])
    return doc.replace(f"<{tag}>{500 if tag == 'width' else 375}<", f"<{tag}>{V}<", 1)


# field -> (document with V where the value goes, names a detail may use for it)
IMAGENET_FIELDS = {
    "estimateTime": (_leaf("estimateTime"), ["estimateTime"]),
    "originalImageWidth": (_leaf("originalImageWidth"), ["originalImageWidth"]),
    "originalImageHeight": (_leaf("originalImageHeight"), ["originalImageHeight"]),
    "page_idx": (_leaf("page_idx"), ["page_idx"]),
    "hoveredCount": (_fixed("hoveredCount", "1"), ["hoveredCount"]),
    "hit_submit_time": (_fixed("hit_submit_time", "1600000100"), ["hit_submit_time"]),
    "size/width": (_size("width"), ["width"]),
    "size/height": (_size("height"), ["height"]),
    "mouseTracking/time": (_series("trace", 0), ["mouseTracking", "time"]),
    "mouseTracking/x": (_series("trace", 1), ["mouseTracking", "x"]),
    "mouseTracking/y": (_series("trace", 2), ["mouseTracking", "y"]),
    "selectedRecord/time": (_series("clicks", 0), ["selectedRecord", "time"]),
    "selectedRecord/x": (_series("clicks", 1), ["selectedRecord", "x"]),
    "selectedRecord/y": (_series("clicks", 2), ["selectedRecord", "y"]),
    **{
        f"bndbox/{c}": (_box(i), ["bndbox"]) for i, c in enumerate(("xmin", "ymin", "xmax", "ymax"))
    },
}
_INT16 = {"page_idx"}
_INT64 = {"hit_submit_time"}
_TIMES = {"mouseTracking/time", "selectedRecord/time"}
_COORDS = {"mouseTracking/x", "mouseTracking/y", "selectedRecord/x", "selectedRecord/y"}


def imagenet_cases():
    """(field, kind, raw value, expected reason) for every numeric field of the XML."""
    for field in IMAGENET_FIELDS:
        if field in _TIMES:  # epoch ms: beyond int64 is unparsable, the rest is a bad time
            cases = [
                ("overflow", INT64_OVER, "bad-field"),
                ("absurd", "9" * 18, "bad-times"),
                ("negative", "-5000", "bad-times"),
            ]
        elif field in _COORDS or field.startswith("bndbox"):
            cases = [
                ("overflow", "1e39", "bad-coordinates"),
                ("inf", "inf", "bad-coordinates"),
                ("negative", "-5000", "bad-coordinates"),
            ]
        else:
            over = INT16_OVER if field in _INT16 else INT64_OVER if field in _INT64 else INT32_OVER
            cases = [
                ("overflow", over, "bad-field"),
                ("negative", "-5000", "bad-field"),
                ("float", "1.5", "bad-field"),
            ]
        cases.append(("non-numeric", "abc", "bad-field"))
        for kind, raw, reason in cases:
            yield pytest.param(field, raw, reason, id=f"{field}-{kind}")


@pytest.mark.parametrize(("field", "raw", "reason"), list(imagenet_cases()))
def test_imagenet_numeric_field_sweep(tmp_path, field, raw, reason):
    doc, names = IMAGENET_FIELDS[field]
    members = imagenet_members()
    members.insert(2, ("train_xml/n01440764/bad.xml", doc.replace(V, raw)))
    table, rejects = read_records(write_tar(tmp_path / "a.tar.gz", members))
    assert_only_bad_rejected(table, rejects, "bad", reason, names, raw, GOOD_IMAGENET)
    assert rejects[0].where == "train_xml/n01440764/bad.xml"


def test_imagenet_every_field_of_the_sweep_is_accepted_when_sane(tmp_path):
    """The sweep's documents are good records but for the planted value (so that the sweep
    tests that value, not something else)."""
    sane = {
        "estimateTime": "7",
        "page_idx": "7",
        "hoveredCount": "1",
        "bndbox/xmin": "50",
        "hit_submit_time": "1600000100",
        "mouseTracking/time": str(T0 + 1),
        "selectedRecord/time": str(T0 + 5),
        "size/width": "600",
        "size/height": "600",
    }
    members = [
        (
            f"train_xml/n01440764/ok{i}.xml",
            doc.replace(
                V,
                sane.get(f, "0.5" if (f in _COORDS) else "300" if f.startswith("bndbox") else "64"),
            ),
        )
        for i, (f, (doc, _)) in enumerate(IMAGENET_FIELDS.items())
    ]
    table, rejects = read_records(write_tar(tmp_path / "ok.tar.gz", members))
    assert rejects == [] and table.num_rows == len(IMAGENET_FIELDS)


def test_imagenet_too_many_annotations_for_int16(tmp_path):
    block = (
        "<metadata><originalImageWidth>5</originalImageWidth><originalImageHeight>5"
        "</originalImageHeight><selected>True</selected></metadata>"
    )
    members = imagenet_members()
    members.append(("train_xml/n01440764/many.xml", bare_xml("n01440764", "many", [block] * 32768)))
    table, rejects = read_records(write_tar(tmp_path / "a.tar", members))
    assert [(r.key, r.reason) for r in rejects] == [("many", "bad-field")]
    assert "int16" in rejects[0].detail and table.num_rows == 4


# ---------------------------------------------------------------- COCO-AB sweep


def _coco_doc(where: str) -> str:
    """A good COCO record (image_id 77) whose `where` field holds V."""
    rec = coco_record(
        77, [coco_action("add", "dog", 100, to=(0.5, 0.5))], trace=[(10, 0.1, 0.1), (20, 0.2, 0.2)]
    )
    if where.startswith("mouseTracking/"):
        rec["mouseTracking"][1][where.split("/")[1]] = V
    elif where.startswith("actionHistories/"):
        rec["actionHistories"][0]["timeAt"] = V
    elif where.startswith("pointTo/"):
        rec["actionHistories"][0]["pointTo"][where.split("/")[1]] = V
    else:
        rec[where] = V
    return json.dumps(rec).replace(f'"{V}"', V)


COCO_INTS = {
    "image_id": INT64_OVER,
    "page_id": INT16_OVER,
    "originalImageWidth": INT32_OVER,
    "originalImageHeight": INT32_OVER,
    "timeSpent": INT32_OVER,
}
COCO_FLOATS = {
    "mouseTracking/timeAt": ("bad-times", ["mouseTracking"]),
    "mouseTracking/x": ("bad-coordinates", ["mouseTracking"]),
    "mouseTracking/y": ("bad-coordinates", ["mouseTracking"]),
    "actionHistories/timeAt": ("bad-times", ["timeAt"]),
    "pointTo/x": ("bad-coordinates", ["pointTo"]),
    "pointTo/y": ("bad-coordinates", ["pointTo"]),
}


def coco_cases():
    for field, over in COCO_INTS.items():
        for kind, raw in (
            ("overflow", over),
            ("negative", "-5000"),
            ("float", "1.5"),
            ("string", '"12"'),
            ("non-numeric", "true"),
        ):
            yield pytest.param(field, raw, "bad-field", [field], id=f"{field}-{kind}")
    for field, (reason, names) in COCO_FLOATS.items():
        for kind, raw, why in (
            ("overflow", "1e400", reason),
            ("huge", "1e39", reason),
            ("negative", "-5000", reason),
            ("non-numeric", '"abc"', "bad-field"),
        ):
            leaf = field.split("/")[1]
            yield pytest.param(field, raw, why, names + [leaf], id=f"{field}-{kind}")


@pytest.mark.parametrize(("field", "raw", "reason", "names"), list(coco_cases()))
def test_coco_numeric_field_sweep(tmp_path, field, raw, reason, names):
    good = [json.dumps(r) for r in coco_records()[:2]]
    path = tmp_path / "coco.json"
    path.write_text("[" + ",\n".join([good[0], _coco_doc(field).replace(V, raw), good[1]]) + "]")
    table, rejects = read_records(path)
    key = (
        "?coco.json[1]"
        if field == "image_id" and raw != "-5000"
        else ("-5000" if field == "image_id" else "77")
    )
    forms_raw = raw.strip('"')
    assert_only_bad_rejected(table, rejects, key, reason, names, forms_raw, ["9", "25"])
    assert rejects[0].where == "coco.json[1]"


def test_coco_sweep_documents_are_good_when_sane(tmp_path):
    sane = {
        "image_id": "77",
        "page_id": "3",
        "timeSpent": "10",
        "mouseTracking/timeAt": "20",
        "actionHistories/timeAt": "100",
    }
    docs = [
        _coco_doc(f)
        .replace(V, sane.get(f, "0.5" if "/" in f else "640"))
        .replace(
            '"image_id": 77', f'"image_id": {100 + i}' if f != "image_id" else '"image_id": 77'
        )
        for i, f in enumerate([*COCO_INTS, *COCO_FLOATS])
    ]
    path = tmp_path / "ok.json"
    path.write_text("[" + ",".join(docs) + "]")
    table, rejects = read_records(path)
    assert rejects == [] and table.num_rows == len(docs)


def test_coco_missing_image_id_is_rejected_every_time(tmp_path):
    records = coco_records()[:2]
    for _ in range(2):
        rec = coco_record(5)
        del rec["image_id"]
        records.insert(1, rec)
    table, rejects = read_records(write_json(tmp_path / "c.json", records))
    assert sorted(table.column("key").to_pylist()) == ["25", "9"]
    assert [(r.key, r.reason, r.where) for r in rejects] == [
        ("?c.json[1]", "bad-field", "c.json[1]"),
        ("?c.json[2]", "bad-field", "c.json[2]"),
    ]
    assert all("image_id is missing" in r.detail for r in rejects)
    assert "-9223372036854775808" not in str(table.column("key").to_pylist())


# ---------------------------------------------------------------- interchange form


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("width", 3_000_000_000, "bad-field"),
        ("width", -5, "bad-field"),
        ("ann_page", [70000], "bad-field"),
        ("ann_duration_ms", [-5000], "bad-field"),
        ("ann_hover_count", ["x"], "bad-field"),
        ("trace_t", ["soon", 3], "bad-field"),
        ("label", 2**40, "bad-field"),
        ("key", 17, "bad-field"),
        ("image", "../../secret.jpg", "unsafe-path"),
        ("image", "/etc/passwd", "unsafe-path"),
    ],
)
def test_interchange_values_out_of_range(tmp_path, column, value, reason):
    from luab_data.sources.interchange import header

    table, _ = read_records(write_json(tmp_path / "c.json", coco_records()[:2]))
    rows = table.to_pylist()
    bad = dict(rows[0], key="bad")
    bad[column] = value
    if column == "trace_t":
        bad["trace_x"], bad["trace_y"], bad["trace_ann"] = [0.1, 0.2], [0.1, 0.2], [0, 0]
    out = tmp_path / "r.jsonl"
    out.write_text("\n".join(json.dumps(x) for x in [header({}), rows[0], bad, rows[1]]) + "\n")
    kept, rejects = read_records(out)
    assert kept.column("key").to_pylist() == ["9", "25"]
    assert [(r.reason, r.where) for r in rejects] == [(reason, "r.jsonl[2]")]
    assert column in rejects[0].detail


def test_parquet_rows_with_unsafe_image_paths_are_rejected(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table, _ = read_records(write_json(tmp_path / "c.json", coco_records()[:2]))
    images = table.column("image").to_pylist()
    images[0] = "train2014/../../../etc/passwd"
    table = table.set_column(
        table.schema.get_field_index("image"), "image", pa.array(images, pa.string())
    )
    (tmp_path / "out").mkdir()
    pq.write_table(table, tmp_path / "out" / "part-0.parquet")
    kept, rejects = read_records(tmp_path / "out")
    assert kept.column("key").to_pylist() == ["25"]
    assert [(r.key, r.reason, r.where) for r in rejects] == [("9", "unsafe-path", "part-0.parquet")]


# ---------------------------------------------------------------- unsafe names


class OpenedFiles:
    """Every file opened by this process while active (an audit hook: nothing is mocked)."""

    active: list | None = None

    @classmethod
    def hook(cls, event: str, args: tuple) -> None:
        if event == "open" and cls.active is not None and isinstance(args[0], str | bytes):
            cls.active.append(os.path.realpath(os.fsdecode(args[0])))

    def __enter__(self) -> list[str]:
        OpenedFiles.active = []
        return OpenedFiles.active

    def __exit__(self, *exc) -> None:
        OpenedFiles.active = None


sys.addaudithook(OpenedFiles.hook)


def _tar_entry(
    tar: tarfile.TarFile,
    name: str,
    data: bytes = b"",
    link: str | None = None,
    kind: bytes = tarfile.REGTYPE,
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    if link is not None:
        info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _evil(stem: str, wnid: str = "n01440764") -> bytes:
    return bare_xml(wnid, stem, [_meta()]).encode()


UNSAFE = [
    "train_xml/../../etc/evil_1.xml",
    "/etc/evil_2.xml",
    "train_xml/../secret.xml",  # wnid '..': would read <images>/train/../secret.JPEG
    "train_xml/etc/evil_3.xml",  # not an ImageNet wnid
    "train_xml/n01440764/deeper/evil_4.xml",
    "other/train_xml/n01440764/evil_5.xml",
    "train_xml\\n01440764\\evil_6.xml",
    "../train_xml/n01440764/._n01440764_1.xml",  # junk by name, but it climbs out: unsafe
]
LINKS = {
    "train_xml/n01440764/evil_sym.xml": (tarfile.SYMTYPE, "/etc/passwd"),
    "train_xml/n01440764/evil_hard.xml": (tarfile.LNKTYPE, "train_xml/n01440764/x.xml"),
    "train_xml/n01440764/evil_fifo.xml": (tarfile.FIFOTYPE, None),
}


def _hostile_tar(path: Path) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        for i, (name, text) in enumerate(imagenet_members()):
            _tar_entry(tar, name, text.encode())
            if i == 1:  # hostile members between good ones
                for bad in UNSAFE:
                    _tar_entry(tar, bad, _evil("n01440764_1"))  # a good stem: no duplicate
                for bad, (kind, target) in LINKS.items():
                    _tar_entry(tar, bad, link=target, kind=kind)
    return path


def _images(root: Path) -> Path:
    for wnid, stem in (
        ("n01440764", "n01440764_1"),
        ("n01440764", "n01440764_2"),
        ("n01530575", "n01530575_3"),
        ("n02000000", "n02000000_7"),
    ):
        (root / "train" / wnid).mkdir(parents=True, exist_ok=True)
        (root / "train" / wnid / f"{stem}.JPEG").write_bytes(b"\xff\xd8" + stem.encode())
    for secret in (
        root / "secret.JPEG",
        root.parent / "secret.JPEG",
        root.parent / "etc" / "evil_1.JPEG",
    ):
        secret.parent.mkdir(exist_ok=True)
        secret.write_bytes(b"SECRET")
    return root


def test_unsafe_member_names_are_rejected_and_never_opened(tmp_path):
    tar = _hostile_tar(tmp_path / "evil.tar.gz")
    clean, _ = read_records(write_tar(tmp_path / "clean.tar.gz", imagenet_members()))
    images = _images(tmp_path / "images")
    with OpenedFiles() as opened:
        table, rejects = read_records(tar, images=images, with_jpeg=True)
    expected = UNSAFE + list(LINKS)
    assert [(r.key, r.reason, r.where) for r in rejects] == [
        (n, "unsafe-path", n) for n in expected
    ]
    assert table.column("key").to_pylist() == GOOD_IMAGENET
    # no class from a hostile name, so no label shifts
    assert table.column("label").to_pylist() == clean.column("label").to_pylist()
    assert b"SECRET" not in table.column("jpeg").to_pylist()
    ours = [p for p in opened if p.startswith(str(tmp_path.resolve()))]
    inside = str((images / "train").resolve()) + os.sep
    assert ours and all(p == str(tar.resolve()) or p.startswith(inside) for p in ours), ours
    paths = table.column("image").to_pylist()
    assert all((images / p).resolve().is_relative_to((images / "train").resolve()) for p in paths)


def test_unsafe_members_make_no_classes(tmp_path):
    assert open_source(_hostile_tar(tmp_path / "evil.tar")).metadata()["classes"] == (
        IMAGENET_WNIDS
    )


def test_unsafe_members_are_reported_by_shard_zero_only(tmp_path):
    tar = _hostile_tar(tmp_path / "evil.tar.gz")
    counts = []
    for i in range(3):
        rejects = [r for _, bad in open_source(tar).batches((i, 3)) for r in bad]
        counts.append(sum(r.reason == "unsafe-path" for r in rejects))
    assert counts == [len(UNSAFE) + len(LINKS), 0, 0]


def test_folder_links_and_foreign_folders_are_rejected(tmp_path):
    with tarfile.open(write_tar(tmp_path / "a.tar.gz", imagenet_members())) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    root = tmp_path / "x" / "train_xml"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "n09999999_1.xml").write_bytes(_evil("n09999999_1", "n09999999"))
    (root / "n09999999").symlink_to(outside)  # a class folder that is a link
    (root / "n01440764" / "n01440764_5.xml").symlink_to(outside / "n09999999_1.xml")
    (root / "etc").mkdir()
    (root / "etc" / "evil.xml").write_bytes(_evil("evil"))
    with OpenedFiles() as opened:
        table, rejects = read_records(tmp_path / "x")
    assert table.column("key").to_pylist() == GOOD_IMAGENET
    assert sorted(Path(r.where).relative_to(root).as_posix() for r in rejects) == [
        "etc/evil.xml",
        "n01440764/n01440764_5.xml",
        "n09999999",
    ]
    assert {r.reason for r in rejects} == {"unsafe-path"}
    assert not [p for p in opened if p.startswith(str(outside.resolve()))]
    assert open_source(tmp_path / "x").metadata()["classes"] == IMAGENET_WNIDS


def test_coco_image_paths_come_from_the_integer_id_only(tmp_path):
    images = tmp_path / "img"
    (images / "train2014").mkdir(parents=True)
    (images / "train2014" / "COCO_train2014_000000000009.jpg").write_bytes(b"nine")
    (tmp_path / "secret.jpg").write_bytes(b"SECRET")
    records = coco_records()[:1] + [coco_record("../secret"), coco_record(-9)]
    with OpenedFiles() as opened:
        table, rejects = read_records(
            write_json(tmp_path / "c.json", records), images=images, with_jpeg=True
        )
    assert table.column("jpeg").to_pylist() == [b"nine"]
    assert sorted(r.reason for r in rejects) == ["bad-field", "bad-field"]
    ours = [p for p in opened if p.startswith(str(tmp_path.resolve()))]
    assert all(p.endswith("c.json") or "/img/train2014/" in p for p in ours), ours


# ---------------------------------------------------------------- tar headers and faults


def _member_offsets(path: Path) -> list[tuple[str, int]]:
    with tarfile.open(path) as tar:
        return [(m.name, m.offset) for m in tar.getmembers()]


@pytest.mark.parametrize(("field", "span"), [("checksum", (148, 156)), ("size", (124, 136))])
def test_corrupt_header_names_member_and_offset(tmp_path, field, span):
    tar = write_tar(tmp_path / "a.tar.gz", imagenet_members())
    plain = tmp_path / "a.tar"
    import gzip

    data = bytearray(gzip.decompress(tar.read_bytes()))
    name, offset = _member_offsets(tar)[3]
    data[offset + span[0] : offset + span[1]] = b"y>0.1562"[: span[1] - span[0]].ljust(
        span[1] - span[0], b"!"
    )
    for path, raw in ((plain, bytes(data)), (tar, gzip.compress(bytes(data)))):
        path.write_bytes(raw)
        with pytest.raises(SourceError) as err:
            read_records(path, classes=IMAGENET_WNIDS)
        message = str(err.value)
        assert f"at byte {offset}" in message and name in message, message
        assert "invalid literal" not in message


def test_data_after_the_end_marker_is_not_dropped_silently(tmp_path):
    one = write_tar(tmp_path / "one.tar", imagenet_members()[:2])
    two = write_tar(tmp_path / "two.tar", imagenet_members()[2:])
    both = tmp_path / "both.tar"
    both.write_bytes(one.read_bytes() + two.read_bytes())
    with pytest.raises(SourceError, match="end-of-archive marker"):
        read_records(both, classes=IMAGENET_WNIDS)


def test_oversized_member_is_rejected_unread(tmp_path, monkeypatch):
    from luab_data.sources import validation

    monkeypatch.setattr(validation, "MAX_MEMBER_BYTES", 2000)
    members = imagenet_members()  # n01440764_1 is the only document over 2000 bytes
    assert [len(t) > 2000 for _, t in members] == [True, False, False, False, False]
    table, rejects = read_records(write_tar(tmp_path / "a.tar.gz", members))
    assert [(r.key, r.reason) for r in rejects] == [("n01440764_1", "malformed-xml")]
    assert table.num_rows == 3


@pytest.mark.parametrize("compressed", [True, False])
def test_flipped_bytes_end_in_rejects_or_one_clear_error(tmp_path, compressed):
    """64 flipped bytes anywhere: records and rejects, or a SourceError that says where."""
    many = [
        (
            f"train_xml/n01440764/n01440764_{i}.xml",
            bare_xml("n01440764", f"n01440764_{i}", [_meta()]),
        )
        for i in range(60)
    ]
    tar = write_tar(tmp_path / "a.tar.gz", many)
    raw = tar.read_bytes()
    if not compressed:
        import gzip

        raw = gzip.decompress(raw)
    rng = np.random.default_rng(7)
    for trial in range(25):
        data = bytearray(raw)
        at = int(rng.integers(0, len(data) - 64))
        data[at : at + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
        path = tmp_path / f"flip{trial}.tar"
        path.write_bytes(bytes(data))
        try:
            table, rejects = read_records(path, classes=["n01440764"])
        except SourceError as err:
            assert "byte" in str(err) or "gzip" in str(err) or "ends" in str(err), str(err)
            continue
        assert table.num_rows + len(rejects) >= 1
        assert all(r.where and r.reason for r in rejects)


def test_coco_flipped_bytes_end_in_rejects_or_one_clear_error(tmp_path):
    text = json.dumps(
        [coco_record(i, trace=[(j, 0.5, 0.5) for j in range(5)]) for i in range(1, 60)]
    ).encode()
    rng = np.random.default_rng(11)
    for trial in range(25):
        data = bytearray(text)
        at = int(rng.integers(0, len(data) - 16))
        data[at : at + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
        path = tmp_path / f"flip{trial}.json"
        path.write_bytes(bytes(data))
        try:
            table, rejects = read_records(path, kind="coco-ab")
        except SourceError:
            continue
        assert all(r.where.startswith(f"flip{trial}.json[") for r in rejects)


# ---------------------------------------------------------------- JSON list framing


@pytest.mark.parametrize(
    "lead", [b"\xef\xbb\xbf", b" " * 5000, b"\n\t " * 30000, b"\xef\xbb\xbf" + b" \r\n" * 40000]
)
def test_coco_bom_and_any_leading_whitespace(tmp_path, lead):
    path = tmp_path / "c.json"
    path.write_bytes(lead + json.dumps(coco_records()[:2]).encode())
    table, rejects = read_records(path)  # detected, too
    assert sorted(table.column("key").to_pylist()) == ["25", "9"] and rejects == []


def test_coco_trailing_comma_and_trailing_content_are_rejected(tmp_path):
    text = json.dumps(coco_records()[:2])
    for name, raw, what in (
        ("comma.json", text[:-1] + " ,\n]", "',' before the closing ']'"),
        ("two.json", text + "\n" + text, "content after"),
    ):
        path = tmp_path / name
        path.write_text(raw)
        table, rejects = read_records(path)
        assert sorted(table.column("key").to_pylist()) == ["25", "9"]
        assert [(r.reason, r.where) for r in rejects] == [("malformed-json", f"{name}[2]")]
        assert what in rejects[0].detail


def test_coco_empty_list_and_no_list(tmp_path):
    (tmp_path / "e.json").write_text(" [ ] ")
    table, rejects = read_records(tmp_path / "e.json", kind="coco-ab")
    assert table.num_rows == 0 and rejects == []
    (tmp_path / "w.json").write_text(" " * 100)
    with pytest.raises(SourceError, match="only whitespace"):
        read_records(tmp_path / "w.json", kind="coco-ab")


# ---------------------------------------------------------------- XML well-formedness

LOL = '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'


@pytest.mark.parametrize(
    ("doc", "what"),
    [
        (
            bare_xml("n01440764", "bad", [_meta()]).replace("annotation>", "annotations>"),
            "root element",
        ),
        (bare_xml("n01440764", "bad", [_meta(worker="AB\0CD")]), "NUL byte"),
        (bare_xml("n01440764", "bad", [_meta()]).replace("<folder>", "<folder a='\0'>"), "NUL"),
        (bare_xml("n01440764", "bad", [_meta()]).replace("<folder>", "<!-- \0 --><folder>"), "NUL"),
        (
            bare_xml("n01440764", "bad", [_meta()]).replace("<folder>", "<folder>&lol3;"),
            "entity reference",
        ),
        (LOL + bare_xml("n01440764", "bad", [_meta()]), "DOCTYPE"),  # billion laughs
        (
            bare_xml("n01440764", "bad", [_meta()]).replace("<folder>", "<folder><![CDATA[x]]>"),
            "CDATA",
        ),
        (bare_xml("n01440764", "bad", [_meta()]).replace("<folder>", "<folder>& "), "entity"),
    ],
)
def test_xml_well_formedness(tmp_path, doc, what):
    members = imagenet_members()
    members.insert(1, ("train_xml/n01440764/bad.xml", doc))
    table, rejects = read_records(write_tar(tmp_path / "a.tar.gz", members))
    assert [(r.key, r.reason, r.where) for r in rejects] == [
        ("bad", "malformed-xml", "train_xml/n01440764/bad.xml")
    ]
    assert what in rejects[0].detail, rejects[0].detail
    assert table.column("key").to_pylist() == GOOD_IMAGENET


def test_xml_predefined_entities_and_comments_are_fine(tmp_path):
    doc = bare_xml("n01440764", "ok", [_meta()]).replace(
        "<folder>", "<!-- a & b --><folder>&amp;&lt;&#65;&#x41;"
    )
    members = [("train_xml/n01440764/ok.xml", doc)]
    table, rejects = read_records(write_tar(tmp_path / "a.tar.gz", members))
    assert rejects == [] and table.column("key").to_pylist() == ["ok"]
