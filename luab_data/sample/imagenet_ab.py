"""ImageNet-AB byproducts of a chunk of scenes: <metadata> blocks as the front end logged them.

Each image gets one or more annotations; each annotation is one worker's visit within a task
(HIT) of 10 pages x 48 candidates. Outcomes: selected with a click on (or, at the configured
rate, off) the object; hovered but never selected (a skim); never hovered. The trace stops at
the first select, as the front end recorded it; times are epoch ms, the submit time epoch s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from luab_data.sample import ids
from luab_data.sample.annotators import (
    AnnotatorConfig,
    GesturePlan,
    Workers,
    aim_inside,
    aim_outside,
    draw_gestures,
    edge_points,
    outside_px,
)
from luab_data.sample.official_format import Repeated, Sorted, coordinate_text, ilsvrc_part
from luab_data.sample.scenes import Scenes

EPOCH0_MS = 1_640_995_200_000  # 2022-01-01: tasks fall in the 90 days after
PAGES, PER_PAGE = 10, 48
_NO_TRACE = Repeated({"time": [], "x": [], "y": []})
_NO_HOVER = Repeated({"action": [], "time": []})


@dataclass
class XmlRecord:
    """One train_xml member before serialisation (corrupt.py may edit it)."""

    wnid: str
    stem: str
    metadata: list[Sorted]
    box_part: dict | None


@dataclass(frozen=True)
class _Anns:
    """Per-annotation draws of a chunk (A rows); times in ms."""

    rec: np.ndarray
    worker: np.ndarray
    hit: np.ndarray
    page: np.ndarray
    slot: np.ndarray
    start: np.ndarray  # epoch ms the pointer entered
    clicked: np.ndarray
    hovered: np.ndarray
    off: np.ndarray
    double: np.ndarray
    deselect: np.ndarray
    click_delay: np.ndarray  # last sample -> click
    reclick_delay: np.ndarray  # first -> second select of a double click
    reclick_jig: np.ndarray  # (A, 2) px between the two selects
    linger: np.ndarray  # last event -> leave


def _draw_annotations(n: int, workers: Workers, cfg: AnnotatorConfig, rng) -> tuple:
    counts = 1 + rng.poisson(cfg.extra_annotations, n)
    a = int(counts.sum())
    n_hits = max(1, -(-a // 24))
    hit_worker = rng.choice(len(workers), n_hits, p=workers.activity)
    hit_start = EPOCH0_MS + np.floor(rng.uniform(0, 90 * 86_400_000, n_hits))
    page_ms = np.floor(rng.uniform(40_000, 120_000, n_hits))
    hit = rng.integers(0, n_hits, a)
    worker = hit_worker[hit]
    page = rng.integers(0, PAGES, a)
    start = hit_start[hit] + page * page_ms[hit] + rng.uniform(0, 1, a) * (page_ms[hit] - 15_000)
    miss = rng.random(a) < workers.miss_rate[worker]
    clicked = ~miss
    roll = rng.random(a)
    anns = _Anns(
        rec=np.repeat(np.arange(n), counts),
        worker=worker,
        hit=hit,
        page=page,
        slot=rng.integers(0, PER_PAGE, a),
        start=np.floor(start).astype(np.int64),
        clicked=clicked,
        hovered=~(miss & (rng.random(a) < cfg.unhovered_rate)),
        off=clicked & (rng.random(a) < workers.off_rate[worker]),
        double=clicked & (roll < cfg.double_click_rate),
        deselect=clicked & (roll > 1 - cfg.deselect_rate),
        click_delay=rng.integers(20, 120, a),
        reclick_delay=rng.integers(400, 2500, a),
        reclick_jig=rng.integers(-3, 4, (a, 2)),
        linger=rng.integers(150, 1500, a),
    )
    return anns, hit_worker, hit_start, page_ms


def _norm_boxes(scenes: Scenes) -> np.ndarray:
    first = scenes.obj_offsets[:-1]
    wh = np.stack([scenes.width, scenes.height] * 2, axis=1)
    return scenes.obj_box[first] / wh


def _gesture_plan(anns: _Anns, box: np.ndarray, workers: Workers, rng) -> GesturePlan:
    """Clicks approach their target and dwell; skims cross the image past the object."""
    rows = np.flatnonzero(anns.hovered)
    w, clicked, b = anns.worker[rows], anns.clicked[rows], box[anns.rec[rows]]
    g = len(rows)
    target = aim_inside(b, workers.spread[w], rng)
    off = anns.off[rows]
    target[off] = aim_outside(b[off], rng)
    target = np.where(clicked[:, None], target, edge_points(rng, g))  # skims leave again
    centre = (b[:, :2] + b[:, 2:]) / 2
    via = np.where(
        clicked[:, None], rng.uniform(0.1, 0.9, (g, 2)), centre + rng.normal(0, 0.15, (g, 2))
    )
    speed = workers.speed[w]
    size = np.maximum(np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]), 0.05)
    dist = np.hypot(*(target - via).T)
    fitts = (180 + 120 * np.log2(1 + dist / size)) * rng.lognormal(0, 0.2, g)
    approach = np.where(clicked, fitts, rng.uniform(150, 700, g)) * speed
    dwell = np.where(clicked, workers.dwell_ms[w] * rng.lognormal(0, 0.4, g), 0.0)
    return GesturePlan(
        start=edge_points(rng, g),
        via=via,
        target=target,
        wander_ms=rng.uniform(200, 1200, g) * speed,
        approach_ms=approach,
        dwell_ms=dwell,
        worker=w,
    )


@dataclass(frozen=True)
class _Motion:
    """The recorded pointer samples of a chunk's gestures, formatted once for the whole chunk."""

    offsets: list[int]  # (G + 1)
    time: list[int]  # epoch ms of every sample
    x: list[str]  # the front end's normalised coordinates, as text
    y: list[str]
    end: list[int]  # epoch ms each gesture ended
    click_px: np.ndarray  # (G, 2) whole displayed px of the (first) select


def _coordinate_texts(px: np.ndarray, display: np.ndarray) -> list[str]:
    out = np.empty(len(px), object)
    for d in np.unique(display):
        rows = display == d
        pad = int(outside_px(d))
        out[rows] = np.array(coordinate_text(int(d), pad), object)[px[rows] + pad]
    return out.tolist()


def _motion(plan: GesturePlan, start: np.ndarray, workers: Workers, rng) -> _Motion:
    gest = draw_gestures(plan, workers, rng)
    owner = np.repeat(np.arange(len(start)), np.diff(gest.offsets))
    display = workers.display[plan.worker]
    return _Motion(
        offsets=gest.offsets.tolist(),
        time=(start[owner] + np.round(gest.t_ms).astype(np.int64)).tolist(),
        x=_coordinate_texts(gest.px[:, 0], display[owner]),
        y=_coordinate_texts(gest.px[:, 1], display[owner]),
        end=(start + np.round(gest.end_ms).astype(np.int64)).tolist(),
        click_px=np.round(plan.target * display[:, None]).astype(np.int64),
    )


def _trace(m: _Motion, g: int) -> Repeated:
    a, b = m.offsets[g], m.offsets[g + 1]
    return Repeated({"time": m.time[a:b], "x": m.x[a:b], "y": m.y[a:b]})


def _events(anns: _Anns, i: int, g: int, m: _Motion, d: int) -> dict:
    """Trace, hovers and select clicks of one hovered annotation."""
    start, end = int(anns.start[i]), m.end[g]
    trace = _trace(m, g)
    if not anns.clicked[i]:
        leave = end + int(anns.linger[i]) // 50
        return dict(
            mouseTracking=trace,
            estimateTime=leave - start,
            selected=False,
            selectedRecord=_NO_TRACE,
            hoveredRecord=_hovers(start, leave),
            last=leave,
        )
    t0 = end + int(anns.click_delay[i])
    cx, cy = (int(v) for v in m.click_px[g])
    times, xs, ys = [t0], [cx / d], [cy / d]
    if anns.double[i]:
        jig = anns.reclick_jig[i]
        times.append(t0 + int(anns.reclick_delay[i]))
        xs.append((cx + int(jig[0])) / d)
        ys.append((cy + int(jig[1])) / d)
    leave = times[-1] + int(anns.linger[i])
    deselected = bool(anns.deselect[i])
    unselected_ms = (t0 - start) + ((leave - t0) // 2 if deselected else 0)
    return dict(
        mouseTracking=trace,
        estimateTime=unselected_ms,
        selected=not deselected,
        selectedRecord=Repeated({"time": times, "x": xs, "y": ys}),
        hoveredRecord=_hovers(start, leave),
        last=leave,
    )


def _hovers(enter: int, leave: int) -> Repeated:
    return Repeated({"action": ["enter", "leave"], "time": [enter, leave]})


_UNHOVERED = dict(
    mouseTracking=_NO_TRACE,
    estimateTime=0,
    selected=False,
    selectedRecord=_NO_TRACE,
    hoveredRecord=_NO_HOVER,
)


def _block(
    anns: _Anns,
    i: int,
    g: int,
    m: _Motion,
    workers: Workers,
    scenes: Scenes,
    hit_ids: tuple[str, str, str],
) -> tuple[Sorted, int]:
    """One <metadata> block and the last event time in it."""
    w, r, slot = int(anns.worker[i]), int(anns.rec[i]), int(anns.slot[i])
    d = int(workers.display[w])
    ev = _events(anns, i, g, m, d) if g >= 0 else dict(_UNHOVERED, last=int(anns.start[i]))
    last = ev.pop("last")
    block = Sorted(
        ev,
        assignment_id=hit_ids[0],
        hit_id=hit_ids[1],
        imagenet_hit_id=hit_ids[2],
        hit_submit_time=0,
        worker_id=workers.ids[w],
        page_idx=int(anns.page[i]),
        image_idx=slot,
        imageID="",
        originalImageWidth=int(scenes.width[r]),
        originalImageHeight=int(scenes.height[r]),
        imageWidth=d,
        imageHeight=d,
        imagePosition={"x": 20 + (slot % 8) * (d + 12), "y": 140 + (slot // 8) * (d + 12)},
        hoveredCount=len(ev["hoveredRecord"]) // 2,
        selectedCount=len(ev["selectedRecord"]),
    )
    return block, last


def ilsvrc_boxes(scenes: Scenes, r: int) -> list[tuple[int, int, int, int]]:
    """Whole-pixel inclusive corners of the objects of scene r."""
    w, h = int(scenes.width[r]), int(scenes.height[r])
    out = []
    for j in scenes.objects(r):
        x0, y0, x1, y1 = scenes.obj_box[j]
        out.append(
            (
                max(0, int(np.floor(x0))),
                max(0, int(np.floor(y0))),
                min(w - 1, int(np.ceil(x1)) - 1),
                min(h - 1, int(np.ceil(y1)) - 1),
            )
        )
    return out


def annotate_chunk(
    scenes: Scenes,
    wnids: list[str],
    stems: list[str],
    workers: Workers,
    cfg: AnnotatorConfig,
    rng: np.random.Generator,
    box_rate: float = 0.4,
) -> list[XmlRecord]:
    """The train_xml records of a chunk of single-object scenes."""
    n = len(scenes)
    anns, hit_worker, hit_start, page_ms = _draw_annotations(n, workers, cfg, rng)
    plan = _gesture_plan(anns, _norm_boxes(scenes), workers, rng)
    motion = _motion(plan, anns.start[anns.hovered], workers, rng)
    n_hits = len(hit_worker)
    hit_ids = list(
        zip(
            ids.mturk_ids(rng, n_hits),
            ids.mturk_ids(rng, n_hits),
            ids.task_hashes(rng, n_hits),
            strict=True,
        )
    )
    gesture_of = np.cumsum(anns.hovered) - 1
    gesture_of[~anns.hovered] = -1
    records = [XmlRecord(wnids[r], stems[r], [], None) for r in range(n)]
    last = np.zeros(len(anns.rec), np.int64)
    for i in range(len(anns.rec)):
        r = int(anns.rec[i])
        block, last[i] = _block(
            anns, i, int(gesture_of[i]), motion, workers, scenes, hit_ids[anns.hit[i]]
        )
        block["imageID"] = f"{wnids[r]}/{stems[r]}"
        records[r].metadata.append(block)
    submit_ms = hit_start + PAGES * page_ms
    np.maximum.at(submit_ms, anns.hit, last)
    submit_s = (submit_ms // 1000).astype(np.int64) + rng.integers(1, 60, n_hits)
    for i, block in enumerate(b for rec in records for b in rec.metadata):
        block["hit_submit_time"] = int(submit_s[anns.hit[i]])
    for r in np.flatnonzero(rng.random(n) < box_rate):
        rec = records[r]
        rec.box_part = ilsvrc_part(
            rec.wnid, rec.stem, int(scenes.width[r]), int(scenes.height[r]), ilsvrc_boxes(scenes, r)
        )
    return records
