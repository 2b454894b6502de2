"""`luab-data verify X.beton [--src ...]`: is the file whole, and does it hold its source?

First the bytes: the file's size and SHA-256 against its manifest and, on a difference, which
part differs (header or allocation table: one error; samples: each named by its key, from the
CRC-32 of its stored bytes). A file that cannot be read at all is one error line, never a
traceback. Then, with the source, the records are read again with the build's options (class
list, COCO policy, shard, from the manifest), the maps re-rasterised and the fixed arrays
recomputed with the build's raster settings, and each compared with the file: maps bit-exact,
points and traces exact, labels, original sizes and sample indices equal, keys in the
manifest's order. Source records absent from the file must be listed in its rejects file.
With the image folder, each stored image's size must be FFCV's resize of the size its source
image's header declares (and with ``decode_images`` every stored image must decode).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import pyarrow as pa

MAX_LISTED = 20


class VerifyError(ValueError):
    """The file cannot be verified at all (missing, not a .beton, damaged header or tables)."""


@dataclass
class Report:
    samples: int = 0
    checked: int = 0
    mismatches: list[tuple[str, str, str]] = field(default_factory=list)  # key, field, detail
    notes: list[str] = field(default_factory=list)
    compared: bool = True  # the samples were compared with the source

    @property
    def ok(self) -> bool:
        return not self.mismatches and (not self.compared or self.checked == self.samples)

    def add(self, key: str, name: str, detail: str) -> None:
        self.mismatches.append((key, name, detail))

    def lines(self) -> list[str]:
        checked = f"checked {self.checked:,}" if self.compared else "bytes checked"
        out = [f"samples {self.samples:,}, {checked}, mismatches {len(self.mismatches):,}"]
        out += [f"  {k} {name}: {detail}" for k, name, detail in self.mismatches[:MAX_LISTED]]
        if len(self.mismatches) > MAX_LISTED:
            out.append(f"  ... and {len(self.mismatches) - MAX_LISTED:,} more")
        return out + [f"note: {n}" for n in self.notes]


def _open_source(src: str | Path, manifest: dict):
    from luab_data.sources import open_source

    meta = manifest["metadata"]
    classes = meta.get("classes") if meta.get("source_kind") == "imagenet-ab" else None
    options = {"coco_policy": meta["coco_policy"]} if "coco_policy" in meta else {}
    return open_source(src, classes=classes, **options)


def _kept_rows(batch: pa.RecordBatch, positions: dict[str, int]) -> tuple[pa.RecordBatch, list]:
    keys = batch.column("key").to_pylist()
    mask = [k in positions for k in keys]
    kept = [positions[k] for k, m in zip(keys, mask, strict=True) if m]
    return batch.filter(pa.array(mask)), kept


def _compare(report: Report, keys: list[str], name: str, want: np.ndarray, got: np.ndarray):
    """Row-wise exact comparison of two stacked arrays."""
    diff = (want != got).reshape(len(want), -1).any(axis=1)
    for r in np.flatnonzero(diff):
        detail = _difference(want[r], got[r])
        report.add(keys[r], name, detail)


def _difference(want: np.ndarray, got: np.ndarray) -> str:
    if want.size <= 4:
        return f"expected {want.tolist()}, file has {got.tolist()}"
    bad = np.argwhere(want != got)
    at = tuple(int(v) for v in bad[0])
    return (
        f"{len(bad)} of {want.size} values differ, first at {at}: "
        f"expected {want[at]}, file has {got[at]}"
    )


def check_block(
    report: Report, beton, batch: pa.RecordBatch, positions: list[int], options, n_labels: int
) -> None:
    """Compare one batch of source records with the samples at `positions` of the file."""
    from luab_data.beton.fields import INDEX, LABEL, LABELS, MAP, POINT, SIZE, TRACE
    from luab_data.beton.samples import block_arrays

    block = block_arrays(batch, 0, options, n_labels)
    keys = batch.column("key").to_pylist()
    idx = np.asarray(positions)
    _compare(report, keys, INDEX, idx, beton.arrays(INDEX, idx))
    _compare(
        report,
        keys,
        LABELS if n_labels else LABEL,
        block.labels,
        beton.arrays(LABELS if n_labels else LABEL, idx),
    )
    if options.byproducts:
        for name, want in (
            (MAP, block.maps),
            (POINT, block.points),
            (TRACE, block.traces),
            (SIZE, block.sizes),
        ):
            _compare(report, keys, name, want, beton.arrays(name, idx))
    report.checked += len(idx)


def check_images(
    report: Report,
    beton,
    batch: pa.RecordBatch,
    images: Path,
    positions: list[int],
    options,
    decode: bool,
) -> None:
    """The source image's header passes the build's checks (pixel limit, record's size) and
    the stored size is FFCV's resize of the declared one (nothing is decoded, whatever the
    header says); optionally decode each stored image."""
    from luab_data.beton.images import declared_size, read_image, size_problem

    stored = beton.image_size()
    columns = [batch.column(c).to_pylist() for c in ("key", "image", "width", "height")]
    for key, rel, width, height, pos in zip(*columns, positions, strict=True):
        try:
            size = declared_size(read_image(images / rel, options.max_pixels))
        except FileNotFoundError:
            report.add(key, "image", f"{images / rel} is missing")
            continue
        except (OSError, ValueError) as err:
            report.add(key, "image", f"{images / rel}: {err}")
            continue
        problem = size_problem(size, (width, height), options.max_pixels, options.size_tolerance)
        if problem:
            report.add(key, "image", f"{images / rel} {problem}")
        want = _resized(np.array(size), options.max_resolution)
        if not np.array_equal(want, stored[pos]):
            report.add(key, "image", f"stored {stored[pos].tolist()}, expected {want.tolist()}")
        if decode:
            try:
                beton.image(pos)
            except ValueError as err:
                report.add(key, "image", str(err))


def _resized(size: np.ndarray, max_resolution: int | None) -> np.ndarray:
    """FFCV's RGBImageField rule: scale the long side down to max_resolution, truncating."""
    if max_resolution is None:
        return size
    ratio = max_resolution / size.max()
    return (ratio * size).astype(int) if ratio < 1 else size


def _source_batches(source, shard, quiet: bool, rejected: set) -> Iterator[pa.RecordBatch]:
    from luab_data.ingest import iterate

    yield from iterate(
        source,
        tuple(shard),
        show_progress=not quiet,
        on_rejects=lambda rs: rejected.update(r.key for r in rs),
    )


def _manifest(path: Path) -> dict:
    from luab_data.beton.paths import manifest_path

    where = manifest_path(path)
    if not where.is_file():
        raise VerifyError(f"{where} is missing: {path} is not a complete luab-data build")
    try:
        manifest = json.loads(where.read_text())
    except (OSError, ValueError) as err:
        raise VerifyError(f"{where}: unreadable manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "luab-beton":
        raise VerifyError(f"{where}: not the manifest of a luab-data .beton")
    return manifest


def check_bytes(path: Path, manifest: dict) -> tuple[Report, Any]:
    """Size and checksums against the manifest: a report naming the damaged samples, or
    VerifyError when the header or tables are damaged (nothing in the file can be trusted)."""
    from luab_data.beton.file import BetonFile
    from luab_data.beton.integrity import check_integrity

    found = check_integrity(path, manifest)
    if found.fatal:
        raise VerifyError(found.fatal)
    beton = BetonFile(path)
    keys = manifest.get("keys") or []
    report = Report(samples=len(beton), notes=list(found.notes))
    if len(keys) != len(beton):
        report.add("*", "keys", f"manifest lists {len(keys)} keys, file has {len(beton)} samples")
    for problem in found.problems:
        report.add("*", "file", problem)
    for i in found.damaged:
        name = keys[i] if i < len(keys) else f"sample {i}"
        report.add(name, "bytes", "stored bytes damaged (CRC-32 differs from the manifest's)")
    return report, beton


def verify_beton(
    path: str | Path,
    src: str | Path | None = None,
    *,
    images: str | Path | None = None,
    decode_images: bool = False,
    quiet: bool = True,
) -> Report:
    """Check the bytes of a .beton, then (with `src`) every sample against its source; see
    the module docstring. VerifyError (a ValueError) or FileNotFoundError when the file
    cannot be read at all."""
    from luab_data.beton.fields import BetonOptions, label_width
    from luab_data.beton.integrity import check_path
    from luab_data.beton.manifest import describe_source
    from luab_data.beton.paths import rejects_path
    from luab_data.ingest import resolve_images

    path = check_path(path)
    manifest = _manifest(path)
    report, beton = check_bytes(path, manifest)
    if src is None:
        report.compared = False
        report.notes.append("records not compared with the source (give --src)")
        return report
    build = {k: v for k, v in manifest["build"].items() if k != "shard"}
    options = BetonOptions.from_dict(build)
    keys = manifest["keys"]
    positions = {k: i for i, k in enumerate(keys)}
    source = _open_source(src, manifest)
    if describe_source(source) != manifest["source"]:
        report.notes.append("the source differs from the one built (size, mtime or first MiB)")
    n_labels = label_width(manifest["metadata"])
    if images:
        images = resolve_images(images, manifest["metadata"].get("source_kind"))[0]
    seen, rejected, missing = set(), set(), []
    for batch in _source_batches(source, manifest["build"]["shard"], quiet, rejected):
        all_keys = batch.column("key").to_pylist()
        missing += [k for k in all_keys if k not in positions]
        kept, pos = _kept_rows(batch, positions)
        if not pos:
            continue
        seen.update(kept.column("key").to_pylist())
        check_block(report, beton, kept, pos, options, n_labels)
        if images is not None:
            check_images(report, beton, kept, images, pos, options, decode_images)
    listed = _rejected_keys(rejects_path(path))
    for key in missing:
        if key not in listed:
            report.add(key, "record", "in the source, not in the file nor in its rejects file")
    for key in set(keys) - seen:
        report.add(key, "record", "in the file, not among the source's good records")
    if images is None:
        report.notes.append("image sizes not checked (give --images)")
    return report


def _rejected_keys(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {json.loads(line)["key"] for line in path.read_text().splitlines() if line.strip()}


@click.command("verify")
@click.argument("beton", type=click.Path())
@click.option(
    "--src",
    default=None,
    type=click.Path(exists=True),
    help="The source the file was built from (release, records or Parquet); "
    "without it only the file's bytes are checked.",
)
@click.option(
    "--images",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Image folder (holding train/, or train/ itself): also check every "
    "stored image's size against its source image's header.",
)
@click.option("--decode-images", is_flag=True, help="Also decode every stored image.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def verify(beton, src, images, decode_images, quiet) -> None:
    """Check BETON's bytes against its manifest (size, SHA-256 of the file, CRC-32 of each
    sample: damaged samples are named), then read back every sample and compare it with the
    source records (maps re-rasterised bit-exact, points, traces, labels, sizes, keys).
    Exit status 1 on any mismatch or unreadable file, with a one-line error."""
    try:
        report = verify_beton(beton, src, images=images, decode_images=decode_images, quiet=quiet)
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(_one_line(str(err))) from err
    except Exception as err:  # noqa: BLE001 -- any input: an error line, never a traceback
        raise click.ClickException(_one_line(f"{type(err).__name__}: {err}")) from err
    click.echo("\n".join(report.lines()))
    if not report.ok:
        raise SystemExit(1)
    click.echo("ok")


def _one_line(message: str) -> str:
    return " ".join(message.split()) or "unreadable file"
