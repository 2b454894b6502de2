"""COCO-AB byproducts of a chunk of multi-object scenes: one JSON element per image.

The annotator drags a class icon from the palette (right of the image) onto an instance of
each class present: some classes get no icon (miss rate), some icons land near rather than on
the object (click-off rate, for the *final* position), some are first dropped elsewhere and
then moved (move), and now and then an icon of an absent class is added and removed again.
Each drop is preceded by a switch to its super-category tab when needed. Times are ms since
the page started; the pointer trace (not throttled) is recorded for some workers only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from luab_data.sample import ids
from luab_data.sample.annotators import (
    AnnotatorConfig,
    GesturePlan,
    Gestures,
    Workers,
    aim_inside,
    aim_outside,
    draw_gestures,
)
from luab_data.sample.classes import CLASSES, COCO_TABS, N_CLASSES
from luab_data.sample.scenes import Scenes

PAGES = 20
DISPLAY_BOX = (600, 400)  # the page shows the image fitted into this box, aspect kept


@dataclass
class Drop:
    """One icon action: add / move (pointTo set) or remove (pointTo None)."""

    action: str
    cls: int
    point_from: tuple[float, float] | None
    point_to: tuple[float, float] | None


def displayed_size(width: int, height: int) -> tuple[int, int]:
    s = min(DISPLAY_BOX[0] / width, DISPLAY_BOX[1] / height)
    return int(round(width * s)), int(round(height * s))


def _point(box: np.ndarray, spread: float, off: bool, rng) -> tuple[float, float]:
    b = box[None, :]
    p = aim_outside(b, rng, reach=0.08) if off else aim_inside(b, np.array([spread]), rng)
    return float(p[0, 0]), float(p[0, 1])


def _drops(scenes: Scenes, i: int, spread: float, cfg: AnnotatorConfig, rng) -> list[Drop]:
    """The icon actions on image i, in the order the annotator made them."""
    w, h = float(scenes.width[i]), float(scenes.height[i])
    objs = list(scenes.objects(i))
    present = sorted({int(scenes.obj_cls[j]) for j in objs})
    drops: list[Drop] = []
    for c in rng.permutation(present):
        if rng.random() < cfg.miss_rate:
            continue
        j = int(rng.choice([j for j in objs if scenes.obj_cls[j] == c]))
        box = scenes.obj_box[j] / np.array([w, h, w, h])
        final = _point(box, spread, rng.random() < cfg.click_off_rate, rng)
        if rng.random() < cfg.move_rate:
            draft = (float(rng.uniform(0.05, 0.95)), float(rng.uniform(0.05, 0.95)))
            drops += [Drop("add", int(c), None, draft), Drop("move", int(c), draft, final)]
        else:
            drops.append(Drop("add", int(c), None, final))
    if rng.random() < cfg.wrong_icon_rate:
        absent = [c for c in range(N_CLASSES) if c not in present]
        if absent:
            c = int(rng.choice(absent))
            p = (float(rng.uniform(0.05, 0.95)), float(rng.uniform(0.05, 0.95)))
            at = int(rng.integers(0, len(drops) + 1))
            drops[at:at] = [Drop("add", c, None, p), Drop("remove", c, p, None)]
    return drops


def _plan(
    drops: list[Drop], owner_worker: np.ndarray, display: np.ndarray, workers: Workers, rng
) -> GesturePlan:
    """One drag gesture per action: palette -> drop, drop -> new drop, drop -> off the image."""
    g = len(drops)
    palette = np.stack([rng.uniform(1.0, 1.04, g), rng.uniform(0.1, 0.9, g)], axis=1)
    start = np.array(
        [d.point_from if d.point_from else palette[k] for k, d in enumerate(drops)], float
    ).reshape(g, 2)
    outside = np.stack([rng.uniform(1.02, 1.05, g), rng.uniform(0.1, 0.9, g)], axis=1)
    target = np.array(
        [d.point_to if d.point_to else outside[k] for k, d in enumerate(drops)], float
    ).reshape(g, 2)
    via = (start + target) / 2 + rng.normal(0, 0.08, (g, 2))
    speed = workers.speed[owner_worker]
    dist = np.hypot(*(target - start).T)
    return GesturePlan(
        start=start,
        via=via,
        target=target,
        wander_ms=rng.uniform(80, 300, g) * speed,
        approach_ms=(250 + 500 * dist) * rng.lognormal(0, 0.2, g) * speed,
        dwell_ms=rng.uniform(40, 250, g),
        worker=owner_worker,
        display=display,
    )


@dataclass(frozen=True)
class _Motion:
    """Per-drop draws of a chunk (indexed by drop, in order)."""

    gest: Gestures
    gaps: np.ndarray  # ms spent before each drag (finding the icon, switching tabs)
    keyboard: np.ndarray  # tab switched with the keyboard


def _page(drops: list[Drop], k: int, d: np.ndarray, tracks: bool, m: _Motion) -> tuple:
    """Actions, tab switches, trace and the last event time of one image's page; drops are
    m's rows k, k + 1, ...; times are ms since the page opened."""
    t, tab = 0.0, None
    actions, tabs, trace = [], [], []
    for drop in drops:
        want = COCO_TABS.index(CLASSES[drop.cls].coco_super)
        if want != tab:
            tab = want
            tabs.append(
                {
                    "categoryIndex": want,
                    "categoryName": COCO_TABS[want],
                    "timeAt": int(t + m.gaps[k] / 2),
                    "usingKeyboard": bool(m.keyboard[k]),
                }
            )
        t += float(m.gaps[k])
        if tracks:
            a, b = int(m.gest.offsets[k]), int(m.gest.offsets[k + 1])
            ts = np.round(t + m.gest.t_ms[a:b]).astype(np.int64).tolist()
            xs, ys = (m.gest.px[a:b] / d).T.tolist()
            trace += [{"timeAt": tt, "x": x, "y": y} for tt, x, y in zip(ts, xs, ys, strict=True)]
        t += float(m.gest.end_ms[k])
        actions.append(_action(drop, d, int(round(t))))
        k += 1
    return actions, tabs, trace, t


def _motion(
    per_image: list[list[Drop]], worker: np.ndarray, disp: np.ndarray, workers: Workers, rng
) -> _Motion:
    counts = np.array([len(d) for d in per_image])
    owner = np.repeat(np.arange(len(per_image)), counts)
    flat = [d for ds in per_image for d in ds]
    gest = draw_gestures(_plan(flat, worker[owner], disp[owner], workers, rng), workers, rng)
    gaps = rng.uniform(300, 2500, len(flat))  # looking for the next icon, before its drag
    firsts = (np.cumsum(counts) - counts)[counts > 0]
    gaps[firsts] = rng.uniform(800, 3000, len(firsts))  # a first look at the image
    return _Motion(gest, gaps, rng.random(len(flat)) < 0.1)


def annotate_chunk(
    scenes: Scenes,
    image_ids: list[int],
    workers: Workers,
    cfg: AnnotatorConfig,
    rng,
) -> list[dict]:
    """The COCO-AB elements of a chunk of scenes, in image order."""
    n = len(scenes)
    n_hits = max(1, -(-n // PAGES))
    hit_worker = rng.choice(len(workers), n_hits, p=workers.activity)
    hit_ids = ids.task_hashes(rng, n_hits)
    hit = rng.integers(0, n_hits, n)
    worker = hit_worker[hit]
    disp = np.array(
        [displayed_size(int(w), int(h)) for w, h in zip(scenes.width, scenes.height, strict=True)]
    )
    per_image = [_drops(scenes, i, float(workers.spread[worker[i]]), cfg, rng) for i in range(n)]
    motion = _motion(per_image, worker, disp, workers, rng)
    tail = rng.uniform(400, 3000, n)  # after the last drop, before the next page
    page_id = rng.integers(0, PAGES, n)
    out, k = [], 0
    for i in range(n):
        actions, tabs, trace, t = _page(
            per_image[i], k, disp[i], bool(workers.tracks[worker[i]]), motion
        )
        k += len(per_image[i])
        out.append(
            {
                "image_id": int(image_ids[i]),
                "worker_id": workers.ids[worker[i]],
                "hit_id": hit_ids[hit[i]],
                "page_id": int(page_id[i]),
                "imageWidth": int(disp[i][0]),
                "imageHeight": int(disp[i][1]),
                "originalImageWidth": int(scenes.width[i]),
                "originalImageHeight": int(scenes.height[i]),
                "timeSpent": int(round(t + tail[i] + (0 if actions else 2000))),
                "actionHistories": actions,
                "categoryHistories": tabs,
                "mouseTracking": trace,
            }
        )
    return out


def _snap(p: tuple[float, float] | None, d: np.ndarray) -> dict | None:
    """A point as the front end stored it: whole displayed pixels over the displayed size."""
    if p is None:
        return None
    return {"x": round(p[0] * d[0]) / int(d[0]), "y": round(p[1] * d[1]) / int(d[1])}


def _action(drop: Drop, d: np.ndarray, t: int) -> dict:
    return {
        "actionType": drop.action,
        "iconType": CLASSES[drop.cls].coco_name,
        "pointFrom": _snap(drop.point_from, d),
        "pointTo": _snap(drop.point_to, d),
        "timeAt": t,
    }
