"""Loading and packing, side by side in one run on the same .beton and settings.

Loaders (one epoch each, RandomResizedCrop 224 + flip, batch 64, the same workers, interleaved
repetitions; images/s, median and min-max):
  (a) ours: CoupledLoader, image + label + crop + 14x14 map + point, one crop shared by all
  (b) plain FFCV on the same file: RandomResizedCrop decoder + flip, image + label only
  (c) the reference PyTorch loader (OpenCV decode + the shared geometry, torch DataLoader)
  (d) a reproduction of the official example loader (PIL decode, one XML parse per sample from
      the extracted train_xml/ folder, torchvision's RRC rule with PIL; official_loader.py)
  (e) torchvision.transforms.v2 as its users write it: decode_jpeg, the same XML parse, one
      v2 RandomResizedCrop + flip of Image, BoundingBoxes and KeyPoints together (tv2_loader.py)
Packing (interleaved builds of the same images, ffcv-imagenet's recipe 500 px / 50 % JPEG / q90):
  ours with byproducts (default imagenet-ab recipe: 2 x 64 x 64 maps, point, 32-point trace,
  size, index), ours with images and labels only, and FFCV's plain writer over the image folder;
  file sizes with and without byproducts (whole file, and payload without FFCV's page padding).

The data: a generated ImageNet-AB sample with ImageNet-sized images (256-480 px a side).

    .venv/bin/python benchmarks/bench_load.py [--n 1000] [--reps 5] [--pack-reps 3]
    -> benchmarks/results/load.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tarfile
import time
from pathlib import Path

import cv2

RESULTS = Path(__file__).resolve().parent / "results" / "load.json"
BATCH, IMAGE, MAP = 64, 224, 14
OURS, PLAIN, REF, OFFICIAL, TV2 = (
    "ours: coupled FFCV, +14x14 map +point",
    "plain FFCV, image+label",
    "reference PyTorch (OpenCV)",
    "official example (PIL + XML)",
    "torchvision.transforms.v2 (decode_jpeg)",
)
COUPLED_BARE = "coupled FFCV, image+label only"
PACK_OURS, PACK_BARE, PACK_FFCV = (
    "ours, with byproducts",
    "ours, images+labels only",
    "plain FFCV writer, image folder",
)


def spread(values: list[float]) -> dict:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "values": [round(v, 2) for v in values],
    }


# ---------------------------------------------------------------- data


def prepare(root: Path, n: int, sides: tuple[int, int] = (256, 480)) -> Path:
    """A generated ImageNet-AB sample with ImageNet-sized images (cached in `root`)."""
    from luab_data.sample import SampleSpec, generate_sample, scenes

    out = root / f"imagenet-ab-{n}-{sides[0]}-{sides[1]}"
    if not (out / "sample.json").exists():
        # benchmark-local: the generator's image-size range, ImageNet-like instead of 64-160 px
        scenes.IMAGENET_STYLE = scenes.SceneStyle(min_side=sides[0], max_side=sides[1])
        generate_sample(out, SampleSpec(size=n, heldout=1, seed=1))
    xml_root = out / "train_xml"
    if not xml_root.exists():  # the official loader reads an extracted folder
        with tarfile.open(out / "imagenet_ab_v1_0.tar.gz") as tar:
            tar.extractall(out, filter="data")
    return out


# ---------------------------------------------------------------- packing


def build_command(sample: Path, out: Path, *extra: str) -> list[str]:
    """`luab-data build --recipe imagenet-ab` of a `prepare`d sample into `out`, as a user
    runs it (the console script of this environment), quiet, overwriting."""
    luab = str(Path(sys.executable).parent / "luab-data")
    src = str(sample / "imagenet_ab_v1_0.tar.gz")
    cmd = [luab, "build", "--src", src, "--images", str(sample), "--out", str(out)]
    return [*cmd, "--recipe", "imagenet-ab", "--quiet", "--overwrite", *extra]


def _build(sample: Path, out: Path, byproducts: bool, workers: int) -> float:
    from luab_data.recipes import beton_options, load_recipe
    from luab_data.sources import open_source
    from luab_data.writers.beton import build_beton

    build = {**load_recipe("imagenet-ab")["build"], "byproducts": byproducts}
    source = open_source(sample / "imagenet_ab_v1_0.tar.gz", images=sample)
    start = time.perf_counter()
    build_beton(
        source,
        out,
        options=beton_options(build),
        overwrite=True,
        workers=workers,
        show_progress=False,
    )
    return time.perf_counter() - start


class _Folder:
    """ImageFolder-style (path, label) pairs decoded with OpenCV, for FFCV's plain writer."""

    def __init__(self, sample: Path) -> None:
        self.items = sorted((sample / "train").glob("*/*.JPEG"))
        classes = sorted({p.parent.name for p in self.items})
        self.labels = [classes.index(p.parent.name) for p in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        bgr = cv2.imread(str(self.items[i]), cv2.IMREAD_COLOR)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.labels[i]


def _plain_write(sample: Path, out: Path, workers: int) -> float:
    from ffcv.fields import IntField, RGBImageField

    from luab_data.beton.ffcv_workers import plain_ffcv_write

    fields = {
        "image": RGBImageField(
            write_mode="proportion", max_resolution=500, compress_probability=0.5, jpeg_quality=90
        ),
        "label": IntField(),
    }
    start = time.perf_counter()
    plain_ffcv_write(str(out), fields, _Folder(sample), workers)
    return time.perf_counter() - start


def jpeg_share(path: Path) -> float:
    """Share of images stored as JPEG (the rest raw): JPEG encoding is most of packing's work."""
    from luab_data.beton.fields import JPEG_MODE
    from luab_data.beton.file import BetonFile

    return float((BetonFile(path).metadata("image")["mode"] == JPEG_MODE).mean())


def payload_bytes(path: Path) -> int:
    """Bytes of samples and metadata, without FFCV's page padding (8 MiB pages)."""
    from ffcv.reader import Reader

    reader = Reader(str(path))
    return int(reader.alloc_table["size"].sum()) + reader.metadata.nbytes


def bench_pack(sample: Path, work: Path, reps: int, workers: int) -> dict:
    n = len(list((sample / "train").glob("*/*.JPEG")))
    paths = {
        PACK_OURS: work / "with.beton",
        PACK_BARE: work / "bare.beton",
        PACK_FFCV: work / "plain.beton",
    }
    runs = {
        PACK_OURS: lambda: _build(sample, paths[PACK_OURS], True, workers),
        PACK_BARE: lambda: _build(sample, paths[PACK_BARE], False, workers),
        PACK_FFCV: lambda: _plain_write(sample, paths[PACK_FFCV], workers),
    }
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    for rep in range(reps):  # interleaved, so a busy moment of the shared machine hits all
        for name in rotated(list(runs), rep):
            paths[name].unlink(missing_ok=True)  # freeing the last run's file is not packing
            seconds[name].append(runs[name]())
    sizes = {k: p.stat().st_size for k, p in paths.items()}
    payload = {k: payload_bytes(p) for k, p in paths.items()}
    return {
        "images": n,
        "seconds": {k: spread(v) for k, v in seconds.items()},
        "images_per_s": {k: spread([n / s for s in v]) for k, v in seconds.items()},
        "time_ratio": {
            f"{PACK_OURS} / {k}": spread(
                [a / b for a, b in zip(seconds[PACK_OURS], seconds[k], strict=True)]
            )
            for k in (PACK_BARE, PACK_FFCV)
        },
        "file_bytes": sizes,
        "payload_bytes": payload,
        "jpeg_share": {k: jpeg_share(p) for k, p in paths.items()},
        "size_ratio_file": sizes[PACK_OURS] / sizes[PACK_BARE],
        "size_ratio_payload": payload[PACK_OURS] / payload[PACK_BARE],
        "paths": {k: str(p) for k, p in paths.items()},
    }


# ---------------------------------------------------------------- loading


def _plain_ffcv(path: Path, workers: int):
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.reader import Reader
    from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

    pipelines = dict.fromkeys(Reader(str(path)).handlers)  # None: not read
    pipelines["image"] = [
        RandomResizedCropRGBImageDecoder((IMAGE, IMAGE)),
        RandomHorizontalFlip(),
        ToTensor(),
        ToTorchImage(channels_last=True),
    ]
    pipelines["label"] = [IntDecoder(), ToTensor(), Squeeze(1)]
    return Loader(
        str(path),
        BATCH,
        num_workers=workers,
        order=OrderOption.RANDOM,
        drop_last=True,
        pipelines=pipelines,
    )


def make_loaders(beton: Path, sample: Path, workers: int, bare: bool = True) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from official_loader import official_loader
    from tv2_loader import torchvision_loader

    from luab_data.loaders.contract import FieldNames, make_loader

    classes = (sample / "classes.txt").read_text().split()
    common = {"batch_size": BATCH, "image_size": IMAGE, "map_size": MAP, "workers": workers}
    loaders = {OURS: make_loader("ffcv", beton, **common), PLAIN: _plain_ffcv(beton, workers)}
    if bare:
        loaders[COUPLED_BARE] = make_loader(
            "ffcv", beton, names=FieldNames(map=None, point=None), **common
        )
    loaders[REF] = make_loader("torch", beton, **common)
    loaders[OFFICIAL] = official_loader(sample, sample / "train_xml", classes, BATCH, workers)
    loaders[TV2] = torchvision_loader(sample, sample / "train_xml", classes, BATCH, workers, IMAGE)
    return loaders


def epoch_rate(loader) -> float:
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch[0])
    return n / (time.perf_counter() - start)


def bench_loaders(loaders: dict, reps: int) -> dict[str, list[float]]:
    for loader in loaders.values():
        epoch_rate(loader)  # compile, start workers once, warm the page cache
    rates: dict[str, list[float]] = {k: [] for k in loaders}
    for rep in range(reps):
        for name in rotated(list(loaders), rep):
            rates[name].append(epoch_rate(loaders[name]))
    return rates


def rotated(names: list[str], rep: int) -> list[str]:
    """A different order every repetition: no contender always runs after the same one."""
    k = rep % len(names)
    return names[k:] + names[:k]


def load_summary(rates: dict[str, list[float]]) -> dict:
    ours = rates[OURS]
    return {
        "images_per_s": {k: spread(v) for k, v in rates.items()},
        "ratios": {
            f"{OURS} / {k}": spread([a / b for a, b in zip(ours, v, strict=True)])
            for k, v in rates.items()
            if k != OURS
        },
    }


# ---------------------------------------------------------------- `luab-data bench` stages


def _sizes(tiny: bool, quick: bool) -> tuple[int, int, int, tuple[int, int]]:
    """(images, load reps, pack reps, image sides)."""
    import ffcv.fields  # noqa: F401  (its 5 s import is not part of any timing)

    if tiny:
        return 64, 1, 1, (96, 160)
    return (500, 3, 2, (256, 480)) if quick else (1000, 5, 3, (256, 480))


def _entry(stage: str, name: str, unit: str, results: dict, ratios: dict, **extra) -> dict:
    return {
        "stage": stage,
        "name": name,
        "unit": unit,
        "results": results,
        "ratios": ratios,
        **extra,
    }


def run(quick: bool, data: Path, tiny: bool = False) -> list[dict]:
    """The load stage of `luab-data bench`: images/s of (a)-(e) and their ratios."""
    n, reps, _, sides = _sizes(tiny, quick)
    sample = prepare(Path(data), n, sides)
    beton = Path(data) / "load.beton"
    if not beton.exists():
        _build(sample, beton, True, _workers())
    summary = load_summary(bench_loaders(make_loaders(beton, sample, 2, bare=False), reps))
    return [
        _entry(
            "load",
            f"RRC {IMAGE} + flip, batch {BATCH}, 2 workers",
            "images/s",
            summary["images_per_s"],
            summary["ratios"],
        )
    ]


def pack_entries(quick: bool, data: Path, tiny: bool = False) -> list[dict]:
    """The pack stage of `luab-data bench`: build rate and file size with vs without."""
    n, _, reps, sides = _sizes(tiny, quick)
    sample = prepare(Path(data), n, sides)
    p = bench_pack(sample, Path(data), reps, _workers())
    rates = p["images_per_s"]
    ratios = {
        f"{PACK_OURS} / {k}": spread(
            [a / b for a, b in zip(rates[PACK_OURS]["values"], rates[k]["values"], strict=True)]
        )
        for k in (PACK_BARE, PACK_FFCV)
    }
    mb = {k: spread([v / 2**20]) for k, v in p["payload_bytes"].items() if k != PACK_FFCV}
    size_ratio = {f"{PACK_OURS} / {PACK_BARE}": spread([p["size_ratio_payload"]])}
    return [
        _entry("pack", f"{n} images -> .beton, 500 px, 50% JPEG q90", "images/s", rates, ratios),
        _entry(
            "pack",
            "payload size with vs without byproducts",
            "MiB",
            mb,
            size_ratio,
            file_bytes=p["file_bytes"],
        ),
    ]


def _workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


# ---------------------------------------------------------------- standalone


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="training images")
    ap.add_argument("--reps", type=int, default=5, help="interleaved loading repetitions")
    ap.add_argument("--pack-reps", type=int, default=3, help="interleaved packing repetitions")
    ap.add_argument("--workers", type=int, default=2, help="loader workers (all loaders)")
    ap.add_argument("--data", type=Path, default=Path("/tmp/luab-bench-load"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    from luab_data.bench import machine_info

    _sizes(False, False)  # imports FFCV before any timing
    machine = machine_info()
    sample = prepare(args.data, args.n)
    pack = bench_pack(sample, args.data, args.pack_reps, _workers())
    beton = Path(pack["paths"][PACK_OURS])
    rates = bench_loaders(make_loaders(beton, sample, args.workers), args.reps)
    machine["load_average_end"] = list(os.getloadavg())
    load = load_summary(rates)
    report = {
        "machine": machine,
        "settings": _settings(args),
        "pack": pack,
        "load": load,
        "targets": _targets(pack, load),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    print(f"wrote {args.out}")


def _settings(args) -> dict:
    return {
        "images": args.n,
        "image_sides": [256, 480],
        "batch": BATCH,
        "image_size": IMAGE,
        "map_size": MAP,
        "loader_workers": args.workers,
        "writer_workers": _workers(),
        "load_reps": args.reps,
        "pack_reps": args.pack_reps,
        "recipe": "imagenet-ab",
        "epoch": "one pass over the file, drop_last",
    }


def _targets(pack: dict, load: dict) -> dict:
    r = load["ratios"]
    return {
        "a >= 0.9 x b": r[f"{OURS} / {PLAIN}"]["median"] >= 0.9,
        "a >= 5 x d": r[f"{OURS} / {OFFICIAL}"]["median"] >= 5.0,
        "byproducts <= 10% of the file": pack["size_ratio_file"] <= 1.10,
        "byproducts <= 10% of the payload": pack["size_ratio_payload"] <= 1.10,
        "packing <= 1.15 x without": pack["time_ratio"][f"{PACK_OURS} / {PACK_BARE}"]["median"]
        <= 1.15,
        "packing <= 1.15 x plain FFCV": pack["time_ratio"][f"{PACK_OURS} / {PACK_FFCV}"]["median"]
        <= 1.15,
    }


def format_report(report: dict) -> str:
    m, load, pack = report["machine"], report["load"], report["pack"]
    lines = [
        f"{m['cpu']}, {m['cores']} cores, load {m['load_average'][0]:.1f} -> "
        f"{m['load_average_end'][0]:.1f}",
        "",
        f"{'loader':40} {'img/s':>8} {'min-max':>14} {'ours / it':>18}",
    ]
    for name, s in load["images_per_s"].items():
        r = load["ratios"].get(f"{OURS} / {name}")
        ratio = f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})" if r else ""
        lines.append(f"{name:40} {s['median']:8.0f} {s['min']:6.0f}-{s['max']:<7.0f} {ratio:>18}")
    lines += ["", f"{'packing':40} {'img/s':>8} {'min-max':>14}"]
    for name, s in pack["images_per_s"].items():
        lines.append(f"{name:40} {s['median']:8.0f} {s['min']:6.0f}-{s['max']:<7.0f}")
    for name, r in pack["time_ratio"].items():
        lines.append(f"time {name}: {r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f})")
    lines.append(
        f"file size with / without byproducts: {pack['size_ratio_file']:.3f} (file), "
        f"{pack['size_ratio_payload']:.3f} (payload)"
    )
    lines += [
        "",
        "targets: "
        + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in report["targets"].items()),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
