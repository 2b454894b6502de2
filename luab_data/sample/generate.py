"""Generate a whole sample: plan the splits, run chunks (in worker processes), write the files.

Determinism: every random draw comes from a numpy Generator seeded by (seed, kind, split,
stream, chunk), so the output depends on the seed and the options only, never on the number of
processes or on timing. Writers use fixed metadata, so two runs give identical bytes.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from luab_data.sample import coco_ab, corrupt, imagenet_ab, scenes
from luab_data.sample.annotators import AnnotatorConfig, Workers, make_workers
from luab_data.sample.backgrounds import FAMILY_NAMES
from luab_data.sample.classes import CLASSES, COCO_TABS, WNIDS
from luab_data.sample.fashion import load_items
from luab_data.sample.official_format import JsonListWriter, imagenet_ab_xml, member_name
from luab_data.sample.targz import Piece, TarGzWriter, make_piece, parent_dirs

IMAGENET_AB, COCO_AB = "imagenet-ab", "coco-ab"
KINDS = (IMAGENET_AB, COCO_AB)
SIZES = {"small": 600, "default": 2500, "large": 20_000}
CHUNK = 500
GENERATOR_VERSION = 1
_KIND_CODE = {IMAGENET_AB: 1, COCO_AB: 2}
_SPLIT_CODE = {"train": 0, "val_id": 1, "val_ood": 2}
_LAYOUT, _RENDER, _ANNOTATE, _PLAN, _CORRUPT, _WORKERS, _IDS = range(7)
_STEM_BASE = {"train": 1, "val_id": 100_001, "val_ood": 200_001}
IMAGENET_TAR = "imagenet_ab_v1_0.tar.gz"
COCO_JSON = "coco_ab_v1_0.json"


@dataclass(frozen=True)
class SampleSpec:
    """Everything the output depends on."""

    kind: str = IMAGENET_AB
    size: int = SIZES["default"]  # training records
    heldout: int | None = None  # images per held-out split; None: size // 5 (at least 50)
    seed: int = 0
    rho: float = 0.9
    corrupt: float = 0.0
    images: bool = True
    box_rate: float = 0.4  # ImageNet-AB records that carry an ILSVRC box XML
    compresslevel: int = 5  # within 2 % of gzip -6 in size at 60 % of its time
    annotators: AnnotatorConfig = field(default_factory=AnnotatorConfig)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.size < 10:
            raise ValueError("size must be at least 10 (one image per class)")
        if not 0.0 <= self.rho <= 1.0:
            raise ValueError(f"rho must be in [0, 1], got {self.rho}")

    @property
    def n_heldout(self) -> int:
        return self.heldout if self.heldout is not None else max(50, self.size // 5)

    def rng(self, *codes: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, _KIND_CODE[self.kind], *codes])


def parse_size(text: str | int) -> int:
    """--size: a number of training records or one of small/default/large."""
    if isinstance(text, int):
        return text
    if text in SIZES:
        return SIZES[text]
    try:
        return int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise ValueError(f"size must be a number or one of {', '.join(SIZES)}") from None


@lru_cache(maxsize=4)
def worker_pool(spec: SampleSpec) -> Workers:
    cfg = spec.annotators
    if spec.kind == COCO_AB:
        cfg = replace(cfg, max_hz=max(cfg.max_hz, 100.0))  # COCO-AB traces are not throttled
    n = int(min(1705, max(8, round(cfg.workers_per_1000 * spec.size / 1000))))
    return make_workers(n, cfg, spec.rng(_WORKERS))


# ---------------------------------------------------------------- the plan of a split


@dataclass(frozen=True)
class SplitPlan:
    name: str
    cls: np.ndarray
    family: np.ndarray
    stems: list[str]  # ImageNet stems, or COCO file stems
    image_ids: np.ndarray  # COCO image ids (zeros for ImageNet)

    def jobs(self, spec: SampleSpec, out: Path, spoil: dict[int, str]) -> Iterator[ChunkJob]:
        known: set[str] = set()
        for k, lo in enumerate(range(0, len(self.cls), CHUNK)):
            hi = min(lo + CHUNK, len(self.cls))
            mine = {i - lo: r for i, r in spoil.items() if lo <= i < hi}
            yield ChunkJob(
                spec,
                str(out),
                self.name,
                k,
                lo,
                self.cls[lo:hi],
                self.family[lo:hi],
                self.stems[lo:hi],
                self.image_ids[lo:hi],
                mine,
                frozenset(known),
            )
            if spec.kind == IMAGENET_AB and self.name == "train":
                for r, c in enumerate(self.cls[lo:hi]):  # the folders this chunk's members open
                    spoilt = mine.get(r) == corrupt.UNKNOWN_CLASS
                    known.update(
                        parent_dirs(member_name(corrupt.UNKNOWN_WNID if spoilt else WNIDS[c], "x"))
                    )


def _coco_ids(spec: SampleSpec) -> dict[str, np.ndarray]:
    counts = {"train": spec.size, "val_id": spec.n_heldout, "val_ood": spec.n_heldout}
    total = sum(counts.values())
    pool = spec.rng(_IDS).choice(max(581_929, 2 * total), total, replace=False) + 1
    out, at = {}, 0
    for name, n in counts.items():
        out[name] = np.sort(pool[at : at + n])
        at += n
    return out


def plan_split(spec: SampleSpec, name: str) -> SplitPlan:
    n = spec.size if name == "train" else spec.n_heldout
    cls = scenes.balanced_classes(n)
    family = scenes.background_families(cls, name, spec.rho, spec.rng(_SPLIT_CODE[name], _PLAN))
    if spec.kind == COCO_AB:
        image_ids = _coco_ids(spec)[name]
        prefix = "COCO_train2014_" if name == "train" else "COCO_val2014_"
        return SplitPlan(name, cls, family, [f"{prefix}{i:012d}" for i in image_ids], image_ids)
    start = np.searchsorted(cls, np.arange(len(CLASSES)))
    within = np.arange(n) - start[cls]
    stems = [f"{WNIDS[c]}_{_STEM_BASE[name] + j}" for c, j in zip(cls, within, strict=True)]
    return SplitPlan(name, cls, family, stems, np.zeros(n, np.int64))


def image_relpath(spec: SampleSpec, split: str, stem: str, cls: int) -> str:
    if spec.kind == COCO_AB:
        folder = "train2014" if split == "train" else split
        return f"{folder}/{stem}.jpg"
    return f"{split}/{WNIDS[cls]}/{stem}.JPEG"


# ---------------------------------------------------------------- one chunk


@dataclass
class ChunkJob:
    """Records [lo, hi) of a split, with their slice of the plan (cheap to send to a worker)."""

    spec: SampleSpec
    out: str
    split: str
    k: int
    lo: int
    cls: np.ndarray
    family: np.ndarray
    stems: list[str]
    image_ids: np.ndarray
    spoil: dict[int, str]  # record index within the chunk -> planted reason (training only)
    known_dirs: frozenset[str] = frozenset()  # archive folders that earlier chunks created


@dataclass
class ChunkResult:
    piece: Piece | None = None  # ImageNet-AB: the chunk's XML members, framed and deflated
    elements: list[str] = field(default_factory=list)  # COCO-AB JSON elements
    planted: list[dict] = field(default_factory=list)  # key/reason/where, where as a local ref
    labels: list[list] = field(default_factory=list)
    coco_images: list[str] = field(default_factory=list)  # instances.json entries (JSON text)
    coco_objects: list[str] = field(default_factory=list)
    n_images: int = 0
    n_members: int = 0


def _scenes(job: ChunkJob) -> tuple[scenes.Scenes, object]:
    spec = job.spec
    items = load_items("train" if job.split == "train" else "t10k")
    style = scenes.COCO_STYLE if spec.kind == COCO_AB else scenes.IMAGENET_STYLE
    rng = spec.rng(_SPLIT_CODE[job.split], _LAYOUT, job.k)
    return scenes.layout(job.cls, job.family, items, style, rng), items


def _write_images(job: ChunkJob, sc: scenes.Scenes, items, skip: set[int]) -> int:
    rng = job.spec.rng(_SPLIT_CODE[job.split], _RENDER, job.k)
    written = 0
    for r in range(len(sc)):
        rgb = scenes.render(sc, r, items, rng)  # rendered even when skipped: keeps the stream
        if r in skip:
            continue
        path = Path(job.out) / image_relpath(job.spec, job.split, job.stems[r], int(job.cls[r]))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(scenes.encode_jpeg(rgb))
        written += 1
    return written


def _label_rows(job: ChunkJob, sc: scenes.Scenes) -> list[list]:
    rows = []
    for r in range(len(sc)):
        c, fam = int(job.cls[r]), int(job.family[r])
        objs = list(sc.objects(r))
        box = np.round(sc.obj_box[objs[0]], 2).tolist()
        rows.append(
            [
                image_relpath(job.spec, job.split, job.stems[r], c),
                job.stems[r] if job.spec.kind == IMAGENET_AB else int(job.image_ids[r]),
                CLASSES[c].wnid,
                c,
                CLASSES[c].fashion,
                int(sc.width[r]),
                int(sc.height[r]),
                *box,
                ";".join(str(int(sc.obj_cls[j])) for j in objs),
                fam,
                FAMILY_NAMES[fam],
                int(fam == c),
            ]
        )
    return rows


LABEL_HEADER = [
    "image",
    "key",
    "wnid",
    "class",
    "class_name",
    "width",
    "height",
    "box_x0",
    "box_y0",
    "box_x1",
    "box_y1",
    "object_classes",
    "background",
    "background_name",
    "matched",
]


def _imagenet_train(job: ChunkJob, sc: scenes.Scenes, res: ChunkResult) -> set[int]:
    """XML members of the chunk (spoilt where planned); returns records without an image."""
    wnids = [WNIDS[c] for c in job.cls]
    recs = imagenet_ab.annotate_chunk(
        sc,
        wnids,
        job.stems,
        worker_pool(job.spec),
        job.spec.annotators,
        job.spec.rng(_SPLIT_CODE[job.split], _ANNOTATE, job.k),
        job.spec.box_rate,
    )
    no_image, members = set(), []
    for r, rec in enumerate(recs):
        reason = job.spoil.get(r)
        if reason in (corrupt.MALFORMED_XML, corrupt.MISSING_IMAGE, corrupt.DUPLICATE_KEY, None):
            data = imagenet_ab_xml(rec.wnid, rec.stem, rec.metadata, rec.box_part)
        else:
            rec, reason = corrupt.spoil_xml_record(rec, reason, job.lo + r + 1)
            data = imagenet_ab_xml(rec.wnid, rec.stem, rec.metadata, rec.box_part)
        name = member_name(rec.wnid, rec.stem)
        if reason == corrupt.MALFORMED_XML:
            data = corrupt.break_xml(data)
        members.append((name, data))
        if reason == corrupt.DUPLICATE_KEY:
            members.append((name, data))
        if reason in (corrupt.MISSING_IMAGE, corrupt.UNKNOWN_CLASS):
            no_image.add(r)
        if reason is not None:
            res.planted.append({"key": rec.stem, "reason": reason, "where": name})
    res.piece = make_piece(members, set(job.known_dirs), job.spec.compresslevel)
    res.n_members = len(members)
    return no_image


def _coco_train(job: ChunkJob, sc: scenes.Scenes, res: ChunkResult) -> set[int]:
    elements = coco_ab.annotate_chunk(
        sc,
        job.image_ids.tolist(),
        worker_pool(job.spec),
        job.spec.annotators,
        job.spec.rng(_SPLIT_CODE[job.split], _ANNOTATE, job.k),
    )
    no_image = set()
    for r, el in enumerate(elements):
        reason = job.spoil.get(r)
        if reason not in (
            None,
            corrupt.MALFORMED_JSON,
            corrupt.MISSING_IMAGE,
            corrupt.DUPLICATE_KEY,
        ):
            el, reason = corrupt.spoil_coco_record(el, reason)
        text_ = json.dumps(el)
        if reason == corrupt.MALFORMED_JSON:
            text_ = corrupt.break_json(text_)
        res.elements.append(text_)
        if reason == corrupt.DUPLICATE_KEY:
            res.elements.append(text_)
        if reason == corrupt.MISSING_IMAGE:
            no_image.add(r)
        if reason is not None:
            # the element's position in the file is fixed by the main process (local index here)
            res.planted.append(
                {"key": str(el["image_id"]), "reason": reason, "local": len(res.elements) - 1}
            )
    return no_image


def _coco_instances(job: ChunkJob, sc: scenes.Scenes, res: ChunkResult) -> None:
    for r in range(len(sc)):
        image_id = int(job.image_ids[r])
        w, h = int(sc.width[r]), int(sc.height[r])
        res.coco_images.append(
            json.dumps(
                {
                    "license": 1,
                    "file_name": job.stems[r] + ".jpg",
                    "coco_url": "",
                    "height": h,
                    "width": w,
                    "date_captured": "2013-11-14 11:18:45",
                    "flickr_url": "",
                    "id": image_id,
                }
            )
        )
        for n, j in enumerate(sc.objects(r)):
            x0, y0, x1, y1 = (round(float(v), 2) for v in sc.obj_box[j])
            res.coco_objects.append(
                json.dumps(
                    {
                        "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
                        "area": round((x1 - x0) * (y1 - y0), 2),
                        "iscrowd": 0,
                        "image_id": image_id,
                        "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
                        "category_id": CLASSES[int(sc.obj_cls[j])].coco_id,
                        "id": image_id * 100 + n,
                    }
                )
            )


def run_chunk(job: ChunkJob) -> ChunkResult:
    sc, items = _scenes(job)
    res = ChunkResult(labels=_label_rows(job, sc))
    no_image: set[int] = set()
    if job.split == "train":
        train = _coco_train if job.spec.kind == COCO_AB else _imagenet_train
        no_image = train(job, sc, res)
    if job.spec.kind == COCO_AB:
        _coco_instances(job, sc, res)
    if job.spec.images:
        res.n_images = _write_images(job, sc, items, no_image)
    return res


# ---------------------------------------------------------------- the whole sample

OWNED = (
    "train",
    "val_id",
    "val_ood",
    "train2014",
    "annotations",
    IMAGENET_TAR,
    COCO_JSON,
    "planted.jsonl",
    "classes.txt",
    "sample.json",
)


def _clear(out: Path) -> None:
    """Remove what an earlier sample wrote here (only the paths the generator owns); refuse to
    touch a folder that has such paths but is not a sample (e.g. a real ImageNet root)."""
    present = [name for name in OWNED if (out / name).exists()]
    if present and not (out / "sample.json").is_file():
        raise FileExistsError(
            f"{out} already holds {', '.join(present)} but no sample.json: not overwriting "
            "what the generator did not write; choose an empty or new folder"
        )
    for name in present:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _worker_signals() -> None:
    """A pool worker dies on SIGTERM at once (the CLI's handler, inherited through fork, would
    raise SystemExit inside the pool's queue code: a worker was seen to survive the pool's
    terminate() that way, and the command hung joining it) and leaves Ctrl-C to the parent."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _map(jobs: list[ChunkJob], processes: int) -> Iterator[ChunkResult]:
    if processes <= 1 or len(jobs) <= 1:
        yield from map(run_chunk, jobs)
        return
    pool = multiprocessing.get_context("fork").Pool(processes, initializer=_worker_signals)
    try:
        yield from pool.imap(run_chunk, jobs, chunksize=1)
    except BaseException:  # an error, Ctrl-C, or the consumer closing this generator early
        pool.terminate()
        raise
    else:
        pool.close()  # the normal end: each worker takes its sentinel and exits
    finally:
        pool.join()


class _Outputs:
    """The streaming writers of one run; results arrive chunk by chunk, in order."""

    def __init__(self, out: Path, spec: SampleSpec):
        self.out, self.spec = out, spec
        self.tar = (
            TarGzWriter(out / IMAGENET_TAR, spec.compresslevel)
            if spec.kind == IMAGENET_AB
            else None
        )
        self.json = JsonListWriter(out / COCO_JSON) if spec.kind == COCO_AB else None
        self.elements = 0
        self.planted: list[dict] = []
        self.labels: dict[str, tuple] = {}
        self.coco: dict[str, tuple] = {}
        self.counts = {"records": 0, "members": 0, "images": 0}

    def _label_writer(self, split: str):
        if split not in self.labels:
            folder = "train2014" if (split == "train" and self.spec.kind == COCO_AB) else split
            path = self.out / folder / "labels.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(LABEL_HEADER)
            self.labels[split] = (fh, writer)
        return self.labels[split][1]

    def _coco_parts(self, split: str) -> tuple:
        if split not in self.coco:
            (self.out / "annotations").mkdir(exist_ok=True)
            tmp = [
                open(self.out / "annotations" / f".{split}.{p}", "w", encoding="utf-8")  # noqa: SIM115
                for p in ("images", "objects")
            ]
            self.coco[split] = (tmp, [0, 0])
        return self.coco[split]

    def add(self, job: ChunkJob, res: ChunkResult) -> None:
        self._label_writer(job.split).writerows(res.labels)
        self.counts["images"] += res.n_images
        if job.split == "train":
            self.counts["records"] += len(res.labels)
        if res.piece is not None:
            self.tar.add_piece(res.piece)
        self.counts["members"] += res.n_members
        base = self.elements
        for text_ in res.elements:
            self.json.add_raw(text_)
        self.elements += len(res.elements)
        for row in res.planted:
            if "local" in row:  # COCO-AB: the element's index in the whole list
                index = base + row.pop("local")
                row["where"] = f"{COCO_JSON}[{index}]"
            self.planted.append(row)
        if self.spec.kind == COCO_AB:
            (images, objects), n = self._coco_parts(job.split)
            for fh, entries, slot in ((images, res.coco_images, 0), (objects, res.coco_objects, 1)):
                for e in entries:
                    fh.write((", " if n[slot] else "") + e)
                    n[slot] += 1

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
        if self.json is not None:
            self.json.close()
        for fh, _ in self.labels.values():
            fh.close()
        for split, (tmp, _) in self.coco.items():
            for fh in tmp:
                fh.close()
            self._assemble_instances(split, [Path(fh.name) for fh in tmp])

    def _assemble_instances(self, split: str, parts: list[Path]) -> None:
        """instances_<split>.json in COCO's shape, streamed from the chunk parts."""
        name = "instances_train2014.json" if split == "train" else f"instances_{split}.json"
        categories = json.dumps(
            [{"supercategory": c.coco_super, "id": c.coco_id, "name": c.coco_name} for c in CLASSES]
        )
        info = json.dumps(
            {
                "description": "luab-data sample (Fashion-MNIST objects)",
                "version": str(GENERATOR_VERSION),
                "year": 2014,
                "contributor": "luab-data",
                "date_created": "2023-01-01",
            }
        )
        with open(self.out / "annotations" / name, "w", encoding="utf-8") as fh:
            fh.write(
                f'{{"info": {info}, "licenses": [{{"id": 1, "name": "CC BY 4.0", '
                f'"url": ""}}], "images": ['
            )
            with open(parts[0], encoding="utf-8") as src:
                shutil.copyfileobj(src, fh)
            fh.write('], "annotations": [')
            with open(parts[1], encoding="utf-8") as src:
                shutil.copyfileobj(src, fh)
            fh.write(f'], "categories": {categories}}}')
        for p in parts:
            p.unlink()


def _summary(spec: SampleSpec, plans: list[SplitPlan], outputs: _Outputs) -> dict:
    splits = {}
    for p in plans:
        splits[p.name] = {
            "n": int(len(p.cls)),
            "matched": float(np.mean(p.family == p.cls)),
            "ood": p.name in scenes.OOD_SPLITS,
        }
    spec_dict = asdict(spec)
    return {
        "generator": "luab-data sample",
        "version": GENERATOR_VERSION,
        "spec": spec_dict,
        "files": {
            "byproducts": IMAGENET_TAR if spec.kind == IMAGENET_AB else COCO_JSON,
            "planted": "planted.jsonl" if spec.corrupt > 0 else None,
        },
        "classes": [asdict(c) for c in CLASSES],
        "coco_tabs": list(COCO_TABS),
        "backgrounds": list(FAMILY_NAMES),
        "splits": splits,
        "counts": outputs.counts,
        "planted": len(outputs.planted),
    }


def default_processes(spec: SampleSpec) -> int:
    return 1 if spec.size <= 2 * CHUNK else min(2, os.cpu_count() or 1)


def generate_sample(
    out: str | Path,
    spec: SampleSpec | None = None,
    *,
    processes: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Write a sample into `out` (see the package docstring for the layout); returns the
    summary also written to sample.json. `progress(n)` is called with records done."""
    spec = spec or SampleSpec()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _clear(out)
    splits = ["train"] + (["val_id", "val_ood"] if spec.images else [])
    plans = [plan_split(spec, s) for s in splits]
    reasons = corrupt.IMAGENET_REASONS if spec.kind == IMAGENET_AB else corrupt.COCO_REASONS
    if not spec.images:
        reasons = tuple(r for r in reasons if r != corrupt.MISSING_IMAGE)
    spoil = corrupt.plan(spec.size, spec.corrupt, reasons, spec.rng(0, _CORRUPT))
    jobs = [j for p in plans for j in p.jobs(spec, out, spoil if p.name == "train" else {})]
    n_proc = default_processes(spec) if processes is None else processes
    # The pool forks at the first result, after the writers open their files: safe, since the
    # writers start no thread (a fork beside a running thread could inherit a held lock).
    results = _map(jobs, n_proc)
    outputs = _Outputs(out, spec)
    try:
        for job, res in zip(jobs, results, strict=True):
            outputs.add(job, res)
            if progress is not None:
                progress(len(res.labels))
    finally:
        outputs.close()
    if spec.corrupt > 0:
        corrupt.write_manifest(out / "planted.jsonl", outputs.planted)
    classes = sorted(WNIDS) if spec.kind == IMAGENET_AB else [c.coco_name for c in CLASSES]
    (out / "classes.txt").write_text("\n".join(classes) + "\n")
    summary = _summary(spec, plans, outputs)
    (out / "sample.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
