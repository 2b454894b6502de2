"""Damaged and foreign files (issue 15, point 5): `verify` catches every damaged byte, and the
loaders refuse what they cannot read with one clear error.

Each case damages a copy of a built .beton (flipped bytes at fixed places, a cut, a damaged
header or table) and asks `luab-data verify`: exit status 1, never a traceback; damage to the
header or tables is one `Error:` line, damage to samples names their keys. The loaders open a
missing path, a folder, a foreign file, a cut or a damaged file with one FileNotFoundError or
ValueError, and refuse a training batch larger than the dataset.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from beton_fixtures import built, source_path
from click.testing import CliRunner

from luab_data.beton.fields import JPEG_MODE, RAW_MODE
from luab_data.beton.file import BetonFile
from luab_data.beton.integrity import BetonError, check_beton
from luab_data.beton.manifest import read_manifest
from luab_data.beton.paths import manifest_path, rejects_path
from luab_data.cli import main

KIND = "imagenet-ab"
FLIP = 64


@pytest.fixture(scope="session")
def root(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "luab-beton"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def copy(root, tmp_path) -> Path:
    """A copy of the built file with its manifest and rejects, to damage."""
    original = built(root, KIND)
    out = tmp_path / original.name
    for path in (original, manifest_path(original), rejects_path(original)):
        shutil.copy(path, out.with_name(path.name))
    return out


def run(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def flip(path: Path, at: int, n: int = FLIP) -> None:
    data = bytearray(path.read_bytes())
    for i in range(at, min(at + n, len(data))):
        data[i] ^= 0xA5
    path.write_bytes(bytes(data))


def cut(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


def _sample_region(beton: BetonFile, mode: int, field: str = "image") -> tuple[int, int]:
    """(sample, offset inside its stored bytes) of the first image stored in `mode`."""
    i = int(np.flatnonzero(beton.metadata(field)["mode"] == mode)[0])
    return i, int(beton.metadata(field)[i]["data_ptr"])


def _damage(case: str, path: Path) -> int | None:
    """Damage `path`; return the sample whose stored bytes were hit, if one is known."""
    size = path.stat().st_size
    beton = BetonFile(path)
    if case == "raw pixels":
        i, ptr = _sample_region(beton, RAW_MODE)
        flip(path, ptr + 30)
        return i
    if case == "jpeg stream":
        i, ptr = _sample_region(beton, JPEG_MODE)
        flip(path, ptr + 200, 8)
        return i
    if case == "map":
        flip(path, int(beton.metadata("map")[7]) + 5, 1)
        return 7
    if case == "metadata row":  # sample 3's label, inside the metadata table
        layout = check_beton(path)
        row = layout.metadata.dtype.itemsize
        flip(path, layout.metadata_start + 3 * row + layout.metadata.dtype.fields["f1"][1], 1)
        return 3
    places = {
        "25 %": size // 4,
        "50 %": size // 2,
        "4 KB": 4096,
        "200 B from the end": size - 200,
        "header": 0,
        "field table": 24 + 5,
        "allocation table": check_beton(path).alloc_ptr,
    }
    if case in places:
        flip(path, places[case])
    elif case == "cut 1 KB":
        cut(path, size - 1024)
    elif case == "cut 50 %":
        cut(path, size // 2)
    elif case == "sample count":
        data = bytearray(path.read_bytes())
        data[8:16] = (10**15).to_bytes(8, "little")
        path.write_bytes(bytes(data))
    elif case == "appended":
        path.write_bytes(path.read_bytes() + bytes(24))
    return None


SAMPLE_CASES = ["raw pixels", "jpeg stream", "map", "metadata row"]
FILE_CASES = [
    "25 %",
    "50 %",
    "4 KB",
    "200 B from the end",
    "header",
    "field table",
    "allocation table",
    "cut 1 KB",
    "cut 50 %",
    "sample count",
    "appended",
]


def _one_error_line(output: str) -> bool:
    lines = output.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("Error: ")


def test_an_intact_file_verifies_and_its_manifest_holds_checksums(copy):
    manifest = read_manifest(copy)
    sums = manifest["checksums"]
    assert sums["sha256"] == hashlib.sha256(copy.read_bytes()).hexdigest()
    assert set(sums["regions"]) == {"header", "allocation_table"}
    crc = np.frombuffer(base64.b64decode(sums["samples_crc32"]), "<u4")
    assert len(crc) == len(manifest["keys"]) and len(set(crc.tolist())) == len(crc)
    result = run("verify", copy)
    assert result.exit_code == 0 and result.output.strip().endswith("ok"), result.output
    assert "records not compared" in result.output


@pytest.mark.parametrize("case", SAMPLE_CASES + FILE_CASES)
def test_verify_catches_every_damage(copy, case):
    keys = read_manifest(copy)["keys"]
    hit = _damage(case, copy)
    result = run("verify", copy)
    assert result.exit_code == 1, f"{case}: {result.output}"
    assert "Traceback" not in result.output
    if hit is not None:
        assert f"{keys[hit]} bytes: stored bytes damaged" in result.output, result.output
        assert result.output.count(" bytes: ") == 1
    else:
        named = " * file: " in result.output or " bytes: stored bytes damaged" in result.output
        assert _one_error_line(result.output) or named, result.output


@pytest.mark.parametrize("case", ["raw pixels", "cut 1 KB", "header"])
def test_verify_with_the_source_on_a_damaged_file(root, copy, case):
    keys = read_manifest(copy)["keys"]
    hit = _damage(case, copy)
    result = run("verify", copy, "--src", source_path(root, KIND), "--decode-images", "--quiet")
    assert result.exit_code == 1 and "Traceback" not in result.output
    if hit is None:
        assert _one_error_line(result.output), result.output
    else:
        assert f"{keys[hit]} bytes: stored bytes damaged" in result.output, result.output


def test_verify_on_inputs_that_are_no_build(copy, tmp_path):
    text = tmp_path / "notes.beton"
    text.write_text("hello")
    folder = tmp_path / "folder.beton"
    folder.mkdir()
    bare = tmp_path / "bare.beton"
    shutil.copy(copy, bare)  # no manifest
    broken = tmp_path / "broken.beton"
    shutil.copy(copy, broken)
    manifest_path(broken).write_text("{not json")
    for path in (tmp_path / "missing.beton", folder, text, bare, broken):
        result = run("verify", path)
        assert result.exit_code == 1 and _one_error_line(result.output), (path, result.output)


def test_a_manifest_without_checksums_is_noted(copy):
    manifest = read_manifest(copy)
    del manifest["checksums"]
    manifest_path(copy).write_text(json.dumps(manifest))
    result = run("verify", copy)
    assert result.exit_code == 0 and "no checksums" in result.output
    cut(copy, copy.stat().st_size - 1024)  # the size is still checked
    assert _one_error_line(run("verify", copy).output)


# ---------------------------------------------------------------- loaders


def _loader(kind: str, path, batch_size=8, **kw):
    """Any loader through the contract's one door, one worker, small outputs."""
    if kind == "dali":
        pytest.importorskip("nvidia.dali")
    from luab_data.loaders.contract import make_loader

    return make_loader(
        kind,
        path,
        batch_size=batch_size,
        workers=0 if kind == "reference" else 1,
        image_size=32,
        map_size=8,
        **kw,
    )


LOADERS = ("ffcv", "reference", "dali")


def _bad_input(case: str, copy: Path, tmp_path: Path) -> Path:
    if case == "missing":
        return tmp_path / "missing.beton"
    if case == "folder":
        (tmp_path / "folder.beton").mkdir()
        return tmp_path / "folder.beton"
    if case == "text file":
        (tmp_path / "notes.beton").write_text("not a beton\n" * 100)
        return tmp_path / "notes.beton"
    if case == "jpeg":
        path = tmp_path / "photo.jpg"
        path.write_bytes(b"\xff\xd8\xff\xe0" + bytes(5000))
        return path
    if case == "cut, no manifest":
        manifest_path(copy).unlink()
        cut(copy, copy.stat().st_size - 1024)
        return copy
    _damage(case, copy)
    return copy


BAD_INPUTS = [
    "missing",
    "folder",
    "text file",
    "jpeg",
    "cut 1 KB",
    "cut 50 %",
    "cut, no manifest",
    "header",
    "sample count",
    "allocation table",
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", BAD_INPUTS)
@pytest.mark.parametrize("loader", LOADERS)
def test_loaders_open_a_bad_file_with_one_clear_error(copy, tmp_path, loader, case):
    path = _bad_input(case, copy, tmp_path)
    with pytest.raises((FileNotFoundError, ValueError)) as caught:
        _loader(loader, path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    if case == "missing":
        assert isinstance(caught.value, FileNotFoundError)
    elif case != "jpeg" or loader != "reference":
        assert isinstance(caught.value, BetonError), message


@pytest.mark.timeout(180)
@pytest.mark.parametrize("loader", LOADERS)
def test_a_training_batch_larger_than_the_dataset_is_an_error(root, loader):
    path = built(root, KIND)
    n = len(read_manifest(path)["keys"])
    with pytest.raises(ValueError, match=f"batch_size {n + 1} exceeds the {n} samples"):
        _loader(loader, path, batch_size=n + 1, train=True)
    assert len(_loader(loader, path, batch_size=n + 1, train=False)) == 1  # evaluation: kept
