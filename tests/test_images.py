"""Images that are not what their records say, and the --images folder (issue 15, points 4, 7).

The packer reads each image's declared size from its header before decoding: beyond the pixel
limit or away from the record's size it is rejected as `bad-image` with the reason and its
path, undecoded, so the build's memory does not follow what a file declares. `--images` may be
the folder holding train/ or train/ itself; a build that keeps nothing fails and says why.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest
from beton_fixtures import OPTIONS, built, sample_dir, source_path
from click.testing import CliRunner

from luab_data.beton.images import ImageProblem, declared_size, size_problem
from luab_data.beton.manifest import read_manifest
from luab_data.beton.paths import manifest_path, rejects_path
from luab_data.cli import main
from luab_data.ingest import NothingKept
from luab_data.sources import open_source, read_records
from luab_data.sources.interchange import write_interchange
from luab_data.verify import verify_beton
from luab_data.writers.beton import build_beton

MAX_PIXELS = 100_000_000
BOMB_SIDE = 30_000  # 900 M pixels: 2.7 GB of pixels if it were decoded


@pytest.fixture(scope="session")
def root(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "luab-beton"
    path.mkdir(exist_ok=True)
    return path


def run(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def encode(width: int, height: int, ext: str = ".jpg", params: tuple = ()) -> bytes:
    rng = np.random.default_rng(width * height)
    pixels = rng.integers(0, 255, (height, width, 3), np.uint8)
    ok, data = cv2.imencode(ext, pixels, list(params))
    assert ok
    return data.tobytes()


def bomb(jpeg: bytes, width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> bytes:
    """A small real JPEG whose frame header (SOF0) claims another size."""
    data = bytearray(jpeg)
    at = data.index(b"\xff\xc0")
    data[at + 5 : at + 7] = height.to_bytes(2, "big")
    data[at + 7 : at + 9] = width.to_bytes(2, "big")
    return bytes(data)


def doubled(path: Path) -> None:
    image = cv2.imread(str(path))
    cv2.imwrite(str(path), cv2.resize(image, None, fx=2, fy=2))


def image_copy(root: Path, tmp_path: Path, kind: str = "imagenet-ab") -> Path:
    folder = tmp_path / "images"
    sub = "train" if kind == "imagenet-ab" else "train2014"
    shutil.copytree(sample_dir(root, kind) / sub, folder / sub)
    return folder


# ---------------------------------------------------------------- headers


@pytest.mark.parametrize(
    "ext,params",
    [(".jpg", ()), (".png", ()), (".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)), (".bmp", ())],
)
def test_declared_size_is_read_from_the_header(ext, params):
    for width, height in ((37, 23), (640, 480)):
        assert declared_size(encode(width, height, ext, params)) == (width, height)


def test_a_jpeg_with_large_segments_before_its_frame_header():
    jpeg = encode(50, 40)
    app = b"\xff\xe1" + (60_002).to_bytes(2, "big") + bytes(60_000)  # an EXIF-sized APP1
    assert declared_size(jpeg[:2] + app + app + jpeg[2:]) == (50, 40)


def test_a_bomb_declares_its_size_and_is_refused_before_decoding():
    data = bomb(encode(64, 48))
    assert declared_size(data) == (BOMB_SIDE, BOMB_SIDE)
    problem = size_problem((BOMB_SIDE, BOMB_SIDE), (64, 48), MAX_PIXELS, 0.05)
    assert "900 M pixels" in problem and "--max-pixels" in problem


NOT_IMAGES = [
    b"",
    b"\xff\xd8",
    b"\xff\xd8\xff\xe0\x00\x10JFIF",
    b"GIF89a",
    b"not an image at all",
    b"\x89PNG\r\n\x1a\n\x00\x00",
]


@pytest.mark.parametrize("data", NOT_IMAGES)
def test_headers_that_declare_nothing(data):
    with pytest.raises(ImageProblem):
        declared_size(data)


def test_size_tolerance():
    record, tol = (100, 80), 0.05
    assert size_problem((100, 80), record, MAX_PIXELS, tol) is None
    assert size_problem((107, 74), record, MAX_PIXELS, tol) is None  # 5 % + 2 px per side
    assert "the record says 100x80" in size_problem((200, 160), record, MAX_PIXELS, tol)
    assert "the record says" in size_problem((109, 80), record, MAX_PIXELS, tol)
    assert "turned by 90 degrees" in size_problem((80, 100), record, MAX_PIXELS, tol)
    assert size_problem((0, 80), record, MAX_PIXELS, tol) is not None


# ---------------------------------------------------------------- packing


@pytest.mark.timeout(300)
def test_a_bomb_and_an_image_at_twice_the_size_are_rejected_with_their_path(root, tmp_path):
    folder = image_copy(root, tmp_path)
    table, _ = read_records(source_path(root, "imagenet-ab"))
    paths, keys = table.column("image").to_pylist(), table.column("key").to_pylist()
    (folder / paths[2]).write_bytes(bomb((folder / paths[2]).read_bytes()))
    doubled(folder / paths[5])
    src = source_path(root, "imagenet-ab")
    out = tmp_path / "b.beton"
    summary = build_beton(
        open_source(src, images=folder), out, options=OPTIONS, workers=2, show_progress=False
    )
    rejects = {r["key"]: r for r in map(json.loads, rejects_path(out).read_text().splitlines())}
    assert set(rejects) == {keys[2], keys[5]} and dict(summary.rejects) == {"bad-image": 2}
    assert {r["reason"] for r in rejects.values()} == {"bad-image"}
    assert rejects[keys[2]]["where"] == str(folder / paths[2])
    assert rejects[keys[5]]["where"] == str(folder / paths[5])
    assert f"{BOMB_SIDE}x{BOMB_SIDE} = 900 M pixels" in rejects[keys[2]]["detail"]
    assert "the record says" in rejects[keys[5]]["detail"]
    assert read_manifest(out)["keys"] == [k for i, k in enumerate(keys) if i not in (2, 5)]
    assert read_manifest(out)["build"]["max_pixels"] == MAX_PIXELS
    assert verify_beton(out, src, images=folder).ok

    # a source image swapped after the build: one mismatch line each, no PIL traceback
    kept = [p for i, p in enumerate(paths) if i not in (2, 5)]
    (folder / kept[0]).write_bytes(bomb((folder / kept[0]).read_bytes()))
    doubled(folder / kept[1])
    check = run("verify", out, "--src", src, "--images", folder, "--quiet")
    assert check.exit_code == 1 and "Traceback" not in check.output
    lines = [line.split() for line in check.output.splitlines() if " image: " in line]
    named = {line[0] for line in lines}
    assert named == {keys[0], keys[1]}, check.output  # each one line or two (size and resize)
    assert any("900 M pixels" in " ".join(line) for line in lines)
    assert any("the record says" in " ".join(line) for line in lines)


@pytest.mark.timeout(300)
def test_records_whose_images_are_all_refused_fail_the_build(root, tmp_path):
    folder = image_copy(root, tmp_path)
    table, _ = read_records(source_path(root, "imagenet-ab"))
    table = table.slice(0, 8)
    for rel in table.column("image").to_pylist():
        doubled(folder / rel)
    records = tmp_path / "records.jsonl"
    with open(records, "w") as f:
        write_interchange(
            iter([table]), open_source(source_path(root, "imagenet-ab")).metadata(), f
        )
    out = tmp_path / "all.beton"
    with pytest.raises(NothingKept) as caught:
        build_beton(
            open_source(records),
            out,
            images=folder,
            options=OPTIONS,
            workers=2,
            show_progress=False,
        )
    message = str(caught.value)
    assert "bad-image       8" in message and "hint:" in message and "--size-tolerance" in message
    assert len(rejects_path(out).read_text().splitlines()) == 8
    assert not out.exists() and not manifest_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "all.beton.rejects.jsonl",
        "images",
        "records.jsonl",
    ]


def _peak_rss(proc: subprocess.Popen) -> int:
    """Largest resident size of any process of the tree while `proc` runs (bytes)."""
    peak, root = 0, psutil.Process(proc.pid)
    while proc.poll() is None:
        with_children = [root]
        try:
            with_children += root.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for p in with_children:
            try:
                peak = max(peak, p.memory_info().rss)
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.02)
    return peak


@pytest.mark.timeout(300)
def test_the_build_memory_does_not_follow_what_a_header_declares(root, tmp_path):
    """Decoding the bomb would take 2.7 GB in one process (5.67 GB peak before the check)."""
    folder = image_copy(root, tmp_path)
    paths = read_records(source_path(root, "imagenet-ab"))[0].column("image").to_pylist()
    for rel in paths[:4]:
        (folder / rel).write_bytes(bomb((folder / rel).read_bytes()))
    out = tmp_path / "m.beton"
    code = "from luab_data.cli import main; main()"
    args = [
        "build",
        "--src",
        source_path(root, "imagenet-ab"),
        "--images",
        folder,
        "--out",
        out,
        "--map-size",
        "8",
        "--workers",
        "1",
        "--quiet",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    peak: list[int] = []
    watcher = threading.Thread(target=lambda: peak.append(_peak_rss(proc)))
    watcher.start()
    output = proc.communicate(timeout=280)[0].decode()
    watcher.join()
    assert proc.returncode == 0, output
    assert "bad-image       4" in output
    assert peak[0] < 1.5e9, f"peak RSS {peak[0] / 1e9:.2f} GB"


# ---------------------------------------------------------------- --images layouts


@pytest.mark.parametrize("kind", ["imagenet-ab", "coco-ab"])
def test_images_may_be_the_folder_holding_train_or_train_itself(root, tmp_path, kind):
    src, folder = source_path(root, kind), sample_dir(root, kind)
    sub = "train" if kind == "imagenet-ab" else "train2014"
    counts = []
    layouts = ((folder, f"the folder holding {sub}/"), (folder / sub, f"the {sub}/ folder itself"))
    for i, (images, layout) in enumerate(layouts):
        out = tmp_path / f"pq{i}"
        result = run("build", "--src", src, "--images", images, "--out", out, "--quiet")
        assert result.exit_code == 0, result.output
        assert layout in result.output
        counts.append(int(result.output.split("records kept")[1].split()[0].replace(",", "")))
    assert counts[0] == counts[1] > 0


@pytest.mark.timeout(300)
def test_a_beton_build_from_the_train_folder_itself(root, tmp_path):
    src, folder = source_path(root, "imagenet-ab"), sample_dir(root, "imagenet-ab")
    out = tmp_path / "t.beton"
    result = run(
        "build",
        "--src",
        src,
        "--images",
        folder / "train",
        "--out",
        out,
        "--map-size",
        "16x24",
        "--trace-points",
        "8",
        "--max-resolution",
        "128",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert "the train/ folder itself" in result.output
    assert read_manifest(out)["keys"] == read_manifest(built(root, "imagenet-ab"))["keys"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fmt", ["parquet", "beton"])
def test_a_build_that_keeps_nothing_fails_and_keeps_its_rejects(root, tmp_path, fmt):
    src = source_path(root, "imagenet-ab")
    n = read_records(src)[0].num_rows
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    out = tmp_path / ("x.beton" if fmt == "beton" else "pq")
    result = run("build", "--src", src, "--images", empty, "--out", out, "--quiet")
    assert result.exit_code != 0
    assert f"{n:,} rejected" in result.output and f"missing-image   {n:,}" in result.output
    first = next(line for line in result.output.splitlines() if line.startswith("first "))
    assert str(empty / "train") in first  # the first path looked for
    assert f"hint: --images {empty} must be the folder holding train/" in result.output
    if fmt == "beton":
        rejects, leftovers = rejects_path(out), [out, manifest_path(out)]
    else:
        rejects, leftovers = (
            out / "__luab__/rejects-00000-of-00001.jsonl",
            [
                out / "__luab__/manifest-00000-of-00001.json",
                *out.glob("*.parquet"),
                *out.glob(".tmp*"),
            ],
        )
    assert len(rejects.read_text().splitlines()) == n
    assert str(rejects) in result.output
    assert not [p for p in leftovers if p.exists()]
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.spill"))
