"""ImageNet-AB: the official tar.gz of train_xml/<wnid>/<stem>.xml, or that folder extracted.

Members are streamed (never extracted, never all in memory), grouped into chunks, scanned by
the numba kernel in worker threads (it releases the GIL) and assembled into Arrow batches in
the order they were read. Labels index the 1,000 ImageNet-1k wnids (as torchvision's ImageFolder
over the full train folder does) when the source holds only ImageNet-1k classes, so that a
partial archive or a shard numbers classes like the official loader; otherwise the sorted wnids
of the whole source (a listing pass), with a warning. macOS and Windows junk (AppleDouble `._*`
files, `.DS_Store`) is skipped and counted, not rejected.
"""

from __future__ import annotations

import itertools
import os
import re
import warnings
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa

from luab_data.records import IMAGENET_AB, Reject, RejectError, list_array, record_schema
from luab_data.sources import tar_stream, xml_scan
from luab_data.sources import validation as v
from luab_data.sources.errors import SourceError
from luab_data.sources.pipeline import threaded
from luab_data.sources.progress import Progress
from luab_data.sources.sharding import in_shard
from luab_data.sources.tar_stream import OVERSIZED, REGULAR, SPECIAL, MemberBlock

CHUNK_DOCS = 2048


@dataclass
class _Chunk:
    """Members of one block that passed the pre-checks, as offset ranges into its buffer."""

    buf: bytes
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    where: list[str] = field(default_factory=list)  # archive member or file path
    wnid: list[str] = field(default_factory=list)
    stem: list[str] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)  # position in the source, to order rejects


WNID = re.compile(r"n\d{8}")  # an ImageNet synset id: the only class folder names accepted
_MEMBER = re.compile(r"(?:\./)?train_xml/(n\d{8})/([A-Za-z0-9][A-Za-z0-9_.\-]*)\.xml")


class ClassListWarning(UserWarning):
    """The source holds a wnid outside ImageNet-1k: labels index its own sorted wnids."""


@cache
def imagenet_1k() -> tuple[str, ...]:
    """The 1,000 ILSVRC-2012 (ImageNet-1k) wnids, sorted: the class list of the official
    loaders (index = position), shipped as package data."""
    text = resources.files(__package__).joinpath("imagenet1k_wnids.txt").read_text()
    return tuple(text.split())


# Files that operating systems leave beside copied data: AppleDouble resource forks (`._name`,
# written by macOS tar and Finder) and folder metadata. Never annotations, never classes.
_JUNK_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", ".directory"})


def junk_name(name: str) -> bool:
    """An OS metadata file (by its last path component), skipped and counted."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    return base.startswith("._") or base in _JUNK_FILES


def split_member_name(name: str) -> tuple[str, str] | None:
    """'train_xml/<wnid>/<stem>.xml' -> (wnid, stem); None for any other name."""
    m = _MEMBER.fullmatch(name)
    return (m[1], m[2]) if m else None


def unsafe_name(name: str) -> str | None:
    """Why a member name cannot be trusted; None for an annotation member, or for a file that
    is plainly not one (a README beside train_xml/), which the reader skips."""
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return "absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "'..' in the path"
    if "\\" in name or any(ord(c) < 32 for c in name):
        return "backslash or control character in the name"
    if _MEMBER.fullmatch(name) or junk_name(name):
        return None
    if not (name.endswith(".xml") or "train_xml/" in name):
        return None
    return "not train_xml/<wnid>/<stem>.xml with an ImageNet wnid (n + 8 digits)"


def _xml_root(path: Path) -> Path:
    return path / "train_xml" if (path / "train_xml").is_dir() else path


def _class_dirs(root: Path) -> list[os.DirEntry]:
    """Folders of root in sorted order (symbolic links included: they are reported)."""
    return sorted((e for e in os.scandir(root) if e.is_dir()), key=lambda e: e.name)


def _folder_members(root: Path) -> Iterator[tuple[str, int]]:
    """(path, kind) of every file in the class folders; links are SPECIAL, never followed."""
    for d in _class_dirs(root):
        if d.is_symlink():
            yield d.path, SPECIAL
            continue
        for e in sorted(os.scandir(d.path), key=lambda e: e.name):
            if e.is_symlink() or not e.is_file(follow_symlinks=False):
                yield e.path, SPECIAL
            else:
                yield e.path, REGULAR


def _read_member(path: str, want: bool) -> tuple[bytes, int]:
    """A file's bytes (none unless wanted), reading at most one byte past the member limit."""
    if not want:
        return b"", REGULAR
    with open(path, "rb") as f:
        data = f.read(v.MAX_MEMBER_BYTES + 1)
    return (b"", OVERSIZED) if len(data) > v.MAX_MEMBER_BYTES else (data, REGULAR)


def _folder_blocks(path: Path, progress: Progress, keep_data: bool = True) -> Iterator[MemberBlock]:
    """The extracted folder, file by file in sorted order, grouped like archive blocks. Only
    files whose relative name is an annotation member are read."""
    root = _xml_root(path)
    files = _folder_members(root)
    while batch := list(itertools.islice(files, CHUNK_DOCS)):
        datas, kinds = [], []
        for name, kind in batch:
            wanted = keep_data and kind == REGULAR and split_member_name(_relative(root, name))
            data, got = _read_member(name, bool(wanted))
            datas.append(data)
            kinds.append(got if kind == REGULAR else kind)
        ends = np.cumsum([len(d) for d in datas], dtype=np.int64)
        progress.done += len(batch)
        yield MemberBlock(
            b"".join(datas),
            [n for n, _ in batch],
            ends - [len(d) for d in datas],
            ends,
            np.array(kinds, np.int8),
        )


def _relative(root: Path, name: str) -> str:
    """A folder file's name as the archive member it stands for (train_xml/<wnid>/<file>)."""
    return "train_xml/" + name[len(str(root)) + 1 :]


@dataclass
class ImageNetABSource:
    """Reader of the official ImageNet-AB release (tar, tar.gz or the extracted folder)."""

    path: Path
    classes: list[str] | None = None  # None: the sorted wnids found in the source
    images: Path | None = None  # root holding train/<wnid>/<stem>.JPEG, checked if given
    with_jpeg: bool = False
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    kind: str = IMAGENET_AB

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.is_folder = self.path.is_dir()
        self.skipped: Counter = Counter()  # junk files skipped (shard 0 counts them)
        self._assumed: str | None = None  # ImageNet-1k chosen from these first archive members
        if self.is_folder:  # files of the folder, counted once (cheap beside parsing them)
            root = _xml_root(self.path)
            count = sum(1 if d.is_symlink() else len(os.listdir(d.path)) for d in _class_dirs(root))
            self.progress = Progress(count, unit="files")
        else:  # compressed bytes of the archive
            self.progress = Progress(self.path.stat().st_size)
        if self.with_jpeg and self.images is None:
            raise SourceError("JPEG bytes were asked for but no --images folder was given")

    def _blocks(self, progress: Progress, keep_data: bool = True) -> Iterator[MemberBlock]:
        if self.is_folder:
            return _folder_blocks(self.path, progress, keep_data)
        return threaded(tar_stream.iter_blocks(self.path, progress, keep_data))

    def class_list(self) -> list[str]:
        """The class list labels index: given; else ImageNet-1k when every wnid of the source is
        one of its classes; else the sorted wnids of the whole source (with a warning)."""
        if self.classes is None:
            if self.is_folder:  # the class folders are the wnids: cheap and exact
                dirs = _class_dirs(_xml_root(self.path))
                self.classes = self._choose(
                    [d.name for d in dirs if WNID.fullmatch(d.name) and not d.is_symlink()],
                    "class folders",
                )
            else:  # only the first block is read: no second decompression of the archive
                blocks = tar_stream.iter_blocks(self.path, None, keep_data=False)
                first = next(blocks, None)
                blocks.close()
                self.classes = self._choose(
                    _wnids([first] if first else []),
                    f"first {len(first.names) if first else 0} members",
                )
        return self.classes

    def _choose(self, wnids: list[str], seen: str) -> list[str]:
        """ImageNet-1k if `wnids` (all of a folder, or the first block of an archive) are all
        ImageNet-1k classes; else the sorted wnids of the whole source."""
        foreign = sorted(set(wnids) - set(imagenet_1k()))
        if not foreign:
            self._assumed = seen if not self.is_folder else None
            return list(imagenet_1k())
        if not self.is_folder:  # a listing pass: every shard must number classes alike
            wnids = _wnids(self._blocks(Progress(0), False))
        classes = sorted(set(wnids))
        warnings.warn(
            f"{self.path}: {len(foreign)} wnid(s) outside ImageNet-1k (first: "
            f"{foreign[0]}), so labels index the source's own {len(classes)} sorted "
            "wnids, not the 1,000 ImageNet-1k classes; --classes FILE chooses the "
            "list",
            ClassListWarning,
            stacklevel=3,
        )
        return classes

    def metadata(self) -> dict:
        return {"source_kind": self.kind, "classes": self.class_list()}

    def notes(self) -> list[str]:
        """Summary lines about what the read skipped (for build and inspect)."""
        return [f"skipped         {n:,} {what}" for what, n in sorted(self.skipped.items())]

    def batches(self, shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[pa.RecordBatch, list]]:
        """(record batch, rejects) per block of members, in source order."""
        index = {w: i for i, w in enumerate(self.class_list())}
        self.skipped.clear()
        seen: set[str] = set()
        seq = itertools.count()
        pending: deque = deque()
        with ThreadPoolExecutor(max(1, self.workers)) as pool:
            for block in self._blocks(self.progress):
                chunk, rejects = self._precheck(block, shard, index, seen, seq)
                pending.append(pool.submit(self._assemble, chunk, index, rejects))
                while len(pending) > self.workers:  # bounded read-ahead
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def _precheck(self, block: MemberBlock, shard, index: dict, seen: set, seq) -> tuple:
        """Checks that need no parsing: safe name, duplicate key, unknown class, missing image."""
        chunk, rejects = _Chunk(block.buf), []
        kinds = block.kinds if block.kinds is not None else np.zeros(len(block.names), np.int8)
        root = _xml_root(self.path) if self.is_folder else None
        for name, start, end, kind in zip(
            block.names, block.starts, block.ends, kinds.tolist(), strict=True
        ):
            n = next(seq)
            member = _relative(root, name) if root is not None else name
            parsed = split_member_name(member) if kind != SPECIAL else None  # safe if parsed
            if parsed is None:
                problem = _SPECIAL_WHY if kind == SPECIAL else unsafe_name(member)
                if problem is None and junk_name(member) and shard[0] == 0:
                    self.skipped[_JUNK_WHAT[member.rsplit("/", 1)[-1].startswith("._")]] += 1
                if problem is not None and shard[0] == 0:  # no trustworthy key: shard 0 reports
                    rejects.append((n, Reject(name, v.UNSAFE_PATH, f"{problem}: {name!r}", name)))
                continue
            if not in_shard(parsed[1], shard):
                continue
            wnid, stem = parsed
            bad = self._member_problem(wnid, stem, kind, index, seen)
            seen.add(stem)
            if bad is not None:
                rejects.append((n, Reject(stem, bad.reason, bad.detail, name)))
                continue
            for column, value in zip(
                (chunk.starts, chunk.ends, chunk.where, chunk.wnid, chunk.stem, chunk.seq),
                (start, end, name, wnid, stem, n),
                strict=True,
            ):
                column.append(value)
        return chunk, rejects

    def _member_problem(
        self, wnid: str, stem: str, kind: int, index: dict, seen: set
    ) -> RejectError | None:
        if stem in seen:
            return RejectError(v.DUPLICATE_KEY, "the same image stem occurs twice")
        if kind == OVERSIZED:
            limit = v.MAX_MEMBER_BYTES >> 20
            return RejectError(v.MALFORMED_XML, f"larger than {limit} MiB: not an annotation file")
        if wnid not in index:
            if self._assumed:  # see class_list: labels already index ImageNet-1k
                return RejectError(
                    v.UNKNOWN_CLASS,
                    f"wnid {wnid} is not an ImageNet-1k class, "
                    f"which labels index (the {self._assumed} held only "
                    "ImageNet-1k wnids); --classes FILE chooses the list",
                )
            return RejectError(v.UNKNOWN_CLASS, f"wnid {wnid} is not in the class list")
        if self.images is not None:
            image = v.image_file(self.images, _image_path(wnid, stem))
            if not image.is_file():
                return RejectError(v.MISSING_IMAGE, f"{image} does not exist")
        return None

    def _assemble(self, chunk: _Chunk, index: dict, rejects: list) -> tuple:
        starts = np.array(chunk.starts, np.int64)
        ends = np.array(chunk.ends, np.int64)
        scan = xml_scan.scan_chunk(np.frombuffer(chunk.buf, np.uint8), starts, ends)
        for d in np.flatnonzero(scan.doc_err):
            reason, _ = xml_scan.ERRORS[scan.doc_err[d]]
            doc = chunk.buf[starts[d] : ends[d]]
            detail = _error_detail(doc, int(scan.doc_err[d]), int(scan.doc_errpos[d]))
            rejects.append((chunk.seq[d], Reject(chunk.stem[d], reason, detail, chunk.where[d])))
        keep = np.flatnonzero(scan.doc_err == 0)
        wnids = [chunk.wnid[i] for i in keep]
        stems = [chunk.stem[i] for i in keep]
        labels = np.array([index[w] for w in wnids], np.int32)
        jpegs = None
        if self.with_jpeg:
            paths = [
                v.image_file(self.images, _image_path(w, s))
                for w, s in zip(wnids, stems, strict=True)
            ]
            jpegs = [p.read_bytes() for p in paths]
        batch = _columns(scan, chunk.buf, wnids, stems, labels, index, jpegs)
        return batch, [r for _, r in sorted(rejects, key=lambda sr: sr[0])]


def _image_path(wnid: str, stem: str) -> str:
    return f"train/{wnid}/{stem}.JPEG"


_SPECIAL_WHY = "a link, device or other non-regular member (never followed)"
_JUNK_WHAT = {True: "AppleDouble (._*) files", False: ".DS_Store-like files"}


def _wnids(blocks) -> list[str]:
    """The wnids of the annotation members of some blocks (links and junk make no class)."""
    return sorted(
        {
            p[0]
            for b in blocks
            for n, k in zip(b.names, b.kinds.tolist(), strict=True)
            if k != SPECIAL and (p := split_member_name(n))
        }
    )


def _error_detail(doc: bytes, err: int, at: int) -> str:
    """What a scanner error says: the field it concerns, the value and where in the member."""
    _, what = xml_scan.ERRORS[err]
    field = xml_scan.field_at(doc, at, err)
    if err == xml_scan.E_RANGE:
        value = doc[at : doc.find(b"<", at)].strip().decode("utf-8", "replace")
        return f"{xml_scan.leaf_range_detail(field, value)}, at byte {at}"
    text = doc[at : at + 90].decode("utf-8", "replace")
    return f"{field + ': ' if field else ''}{what} at byte {at}: {text!r}"


def _offsets(ends: np.ndarray) -> np.ndarray:
    """Kept documents' row ranges, given each kept doc's end cursor (bad docs added none)."""
    return np.concatenate([[0], ends]).astype(np.int32)


def _columns(
    scan, raw: bytes, wnids: list[str], stems: list[str], labels, index: dict, jpegs
) -> pa.RecordBatch:
    keep = scan.doc_err == 0
    ann_off = _offsets(scan.doc_ann_end[keep])
    smp_off = _offsets(scan.doc_smp_end[keep])
    clk_off = _offsets(scan.doc_clk_end[keep])
    obj_off = _offsets(scan.doc_obj_end[keep])
    n = len(stems)
    ann_doc = np.repeat(np.arange(n), np.diff(ann_off))
    first_ann = ann_off[:-1]
    width = scan.ann_int[first_ann, 4] if n else np.zeros(0, np.int64)
    height = scan.ann_int[first_ann, 5] if n else np.zeros(0, np.int64)
    point_x, point_y = _paper_point(scan, ann_doc, n)
    smp_local = scan.smp_ann - first_ann[ann_doc[scan.smp_ann]] if len(scan.smp_ann) else []
    clk_local = scan.clk_ann - first_ann[ann_doc[scan.clk_ann]] if len(scan.clk_ann) else []
    clk_class = labels[ann_doc[scan.clk_ann]] if len(scan.clk_ann) else []
    missing = scan.ann_int == xml_scan.MISSING
    ints = np.where(missing, 0, scan.ann_int)  # masked below; 0 keeps narrow casts in range

    def text(col: int) -> list[str]:
        return [raw[s:e].decode("utf-8", "replace") for s, e in scan.ann_str[:, col]]

    obj_doc = np.repeat(np.arange(n), np.diff(obj_off))
    box_w = np.where(scan.doc_size[keep, 0] > 0, scan.doc_size[keep, 0], width)[obj_doc]
    box_h = np.where(scan.doc_size[keep, 1] > 0, scan.doc_size[keep, 1], height)[obj_doc]
    names = [raw[s:e].decode("utf-8", "replace") for s, e in scan.obj_name]
    f32 = pa.float32()
    cols = {
        "key": pa.array(stems, pa.string()),
        "source": pa.array([IMAGENET_AB] * n, pa.string()),
        "image": pa.array(list(map(_image_path, wnids, stems)), pa.string()),
        "wnid": pa.array(wnids, pa.string()),
        "label": pa.array(labels, pa.int32()),
        "labels": list_array(np.arange(n + 1), labels, pa.int32()),
        "width": pa.array(width, pa.int32()),
        "height": pa.array(height, pa.int32()),
        "point_x": pa.array(point_x, f32, mask=np.isnan(point_x)),
        "point_y": pa.array(point_y, f32, mask=np.isnan(point_y)),
        "n_clicks": pa.array(np.diff(clk_off), pa.int32()),
        "n_trace": pa.array(np.diff(smp_off), pa.int32()),
        "click_x": list_array(clk_off, scan.clk_x, f32),
        "click_y": list_array(clk_off, scan.clk_y, f32),
        "click_t": list_array(clk_off, scan.clk_t, pa.int64()),
        "click_class": list_array(clk_off, clk_class, pa.int32()),
        "click_ann": list_array(clk_off, clk_local, pa.int16()),
        "trace_x": list_array(smp_off, scan.smp_x, f32),
        "trace_y": list_array(smp_off, scan.smp_y, f32),
        "trace_t": list_array(smp_off, scan.smp_t, pa.int64()),
        "trace_ann": list_array(smp_off, smp_local, pa.int16()),
        "ann_worker": list_array(ann_off, text(0), pa.string()),
        "ann_task": list_array(ann_off, text(1), pa.string()),
        "ann_selected": list_array(ann_off, scan.ann_sel == 1, pa.bool_()),
        "ann_duration_ms": list_array(ann_off, ints[:, 0], pa.int32(), missing[:, 0]),
        "ann_submit_s": list_array(ann_off, ints[:, 1], pa.int64(), missing[:, 1]),
        "ann_page": list_array(ann_off, ints[:, 3], pa.int16(), missing[:, 3]),
        "ann_hover_count": list_array(ann_off, ints[:, 2], pa.int32(), missing[:, 2]),
        "box_x0": list_array(obj_off, scan.obj_box[:, 0] / box_w, f32),
        "box_y0": list_array(obj_off, scan.obj_box[:, 1] / box_h, f32),
        "box_x1": list_array(obj_off, scan.obj_box[:, 2] / box_w, f32),
        "box_y1": list_array(obj_off, scan.obj_box[:, 3] / box_h, f32),
        "box_class": list_array(obj_off, [index.get(w, -1) for w in names], pa.int32()),
    }
    if jpegs is not None:
        cols["jpeg"] = pa.array(jpegs, pa.binary())
    schema = record_schema(jpegs is not None)
    return pa.RecordBatch.from_arrays([cols[f.name] for f in schema], schema=schema)


def _paper_point(scan, ann_doc: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean over selected annotations of each one's first click; NaN where there is none."""
    anns, first = np.unique(scan.clk_ann, return_index=True)  # clicks are in document order
    chosen = scan.ann_sel[anns] == 1
    anns, first = anns[chosen], first[chosen]
    docs = ann_doc[anns]
    count = np.bincount(docs, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        px = np.bincount(docs, scan.clk_x[first], minlength=n) / count
        py = np.bincount(docs, scan.clk_y[first], minlength=n) / count
    return px, py
