"""Simulated annotators: a pool of workers with their own habits, and the motion they make.

A gesture is one visit of the pointer to an image: it enters at an edge (sometimes a little
outside 0..1), wanders to a via point, approaches a target along a minimum-jerk path bent by the
worker's wobble, overshoots slightly, dwells with a tremor and ends (with a click, or by leaving
the image). The pointer is sampled like a browser throttled to the worker's rate (<= 60 Hz) with
jitter, in whole displayed pixels, and a sample is recorded only when the pixel changes (the
browser fires no mousemove for a still pointer), so dwelling shows as sparse samples.

Everything is vectorised over the gestures of a chunk: one call draws all of their samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from luab_data.sample.ids import worker_ids

DISPLAY_SIZES = np.array([150, 160, 175, 180, 200])  # square displayed sizes, px
MAX_OUTSIDE = 0.05  # how far (of the displayed size) a recorded sample may lie outside


def outside_px(display: int | np.ndarray):
    """The most whole pixels a recorded sample may lie outside the displayed image."""
    return np.round(np.asarray(display) * MAX_OUTSIDE).astype(np.int64)


@dataclass(frozen=True)
class AnnotatorConfig:
    """Population-level habits; each worker varies around them."""

    max_hz: float = 60.0  # the front end's throttle
    click_off_rate: float = 0.05  # a selection whose click lands off the object
    miss_rate: float = 0.12  # an annotation of a true positive that never selects it
    unhovered_rate: float = 0.4  # of those misses, the share never even hovered
    double_click_rate: float = 0.02  # select, de-select, select again
    deselect_rate: float = 0.02  # select then de-select (selected False, one record)
    extra_annotations: float = 1.0  # Poisson mean of annotations beyond the first
    workers_per_1000: float = 20.0  # pool size per 1,000 images (>= 8 workers)
    tracking_rate: float = 0.5  # COCO-AB: share of workers whose pointer was recorded
    move_rate: float = 0.1  # COCO-AB: an icon first dropped elsewhere, then moved
    wrong_icon_rate: float = 0.08  # COCO-AB: an icon of an absent class, added then removed


@dataclass(frozen=True)
class Workers:
    """The pool, as arrays indexed by worker."""

    ids: list[str]
    activity: np.ndarray  # probability that a task goes to this worker
    hz: np.ndarray  # sampling rate, <= max_hz
    jitter: np.ndarray  # mean relative extra delay between samples
    speed: np.ndarray  # movement-time multiplier
    wobble: np.ndarray  # path curvature scale (fraction of the distance)
    tremor_px: np.ndarray  # hand tremor while dwelling, displayed px
    dwell_ms: np.ndarray  # mean dwell before a click
    spread: np.ndarray  # aim spread around the object centre (fraction of the half box)
    off_rate: np.ndarray  # per-worker click-off-object probability
    miss_rate: np.ndarray  # per-worker miss probability
    display: np.ndarray  # displayed (square) image size, px
    tracks: np.ndarray  # whether the front end recorded this worker's pointer (COCO-AB)

    def __len__(self) -> int:
        return len(self.ids)


def make_workers(n: int, config: AnnotatorConfig, rng: np.random.Generator) -> Workers:
    activity = rng.lognormal(0.0, 1.0, n)
    slow = rng.random(n) < 0.2  # some machines deliver fewer events than the throttle allows
    hz = np.where(slow, rng.uniform(25, 50, n), config.max_hz)
    return Workers(
        ids=worker_ids(rng, n),
        activity=activity / activity.sum(),
        hz=np.minimum(hz, config.max_hz),
        jitter=rng.uniform(0.03, 0.35, n),
        speed=rng.lognormal(0.0, 0.3, n),
        wobble=rng.uniform(0.02, 0.12, n),
        tremor_px=rng.uniform(0.3, 1.5, n),
        dwell_ms=rng.uniform(120, 600, n),
        spread=rng.uniform(0.15, 0.5, n),
        off_rate=np.clip(config.click_off_rate * rng.uniform(0.5, 1.5, n), 0, 1),
        miss_rate=np.clip(config.miss_rate * rng.uniform(0.5, 1.5, n), 0, 1),
        display=rng.choice(DISPLAY_SIZES, n),
        tracks=rng.random(n) < config.tracking_rate,
    )


@dataclass(frozen=True)
class GesturePlan:
    """Inputs of a batch of gestures (G rows); points normalised to the displayed image."""

    start: np.ndarray  # (G, 2) entry point
    via: np.ndarray  # (G, 2)
    target: np.ndarray  # (G, 2) where the approach ends (the click point, or the exit)
    wander_ms: np.ndarray  # (G,) start -> via
    approach_ms: np.ndarray  # (G,) via -> target
    dwell_ms: np.ndarray  # (G,) still at the target (0 for a pass-through)
    worker: np.ndarray  # (G,) worker index
    display: np.ndarray | None = None  # (G, 2) displayed w, h; None: the worker's square


@dataclass(frozen=True)
class Gestures:
    """Recorded samples of a batch of gestures, flattened with offsets."""

    offsets: np.ndarray  # (G + 1,)
    t_ms: np.ndarray  # sample time since the gesture began (float, rounded by the caller)
    px: np.ndarray  # (N, 2) int displayed pixels
    end_ms: np.ndarray  # (G,) when the gesture ends (click / leave)


def edge_points(rng: np.random.Generator, n: int, outside: float = 0.03) -> np.ndarray:
    """Points on a random image edge, up to `outside` beyond it (where a pointer enters)."""
    along = rng.uniform(0.05, 0.95, n)
    across = rng.uniform(-outside, 0.02, n)
    side = rng.integers(0, 4, n)
    x = np.select([side == 0, side == 1], [across, 1 - across], along)
    y = np.select([side == 2, side == 3], [across, 1 - across], along)
    return np.stack([x, y], axis=1)


def minimum_jerk(s: np.ndarray) -> np.ndarray:
    return s * s * s * (10 - 15 * s + 6 * s * s)


def _segment_starts(offsets: np.ndarray) -> np.ndarray:
    lengths = np.diff(offsets)
    return np.repeat(offsets[:-1], lengths), np.repeat(np.arange(len(lengths)), lengths)


def _sample_times(plan: GesturePlan, workers: Workers, rng: np.random.Generator):
    """Throttled, jittered sample times (ms since the gesture began) and their offsets."""
    total = plan.wander_ms + plan.approach_ms + plan.dwell_ms
    period = 1000.0 / workers.hz[plan.worker]
    mean_gap = period * (1 + workers.jitter[plan.worker])
    counts = np.maximum(2, (total // mean_gap).astype(np.int64) + 1)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    first, owner = _segment_starts(offsets)
    gaps = period[owner] * (1 + workers.jitter[plan.worker][owner] * rng.exponential(1, len(owner)))
    gaps[offsets[:-1]] = 0.0
    t = np.cumsum(gaps)
    t -= t[first]
    return t, owner, offsets, total


def _bend(a: np.ndarray, b: np.ndarray, s: np.ndarray, amount: np.ndarray) -> np.ndarray:
    """Minimum-jerk from a to b, bowed sideways by `amount` of the distance."""
    d = b - a
    normal = np.stack([-d[:, 1], d[:, 0]], axis=1)
    mj = minimum_jerk(s)[:, None]
    return a + d * mj + normal * (amount * np.sin(np.pi * s))[:, None]


def draw_gestures(plan: GesturePlan, workers: Workers, rng: np.random.Generator) -> Gestures:
    t, owner, offsets, total = _sample_times(plan, workers, rng)
    g = len(plan.worker)
    w = plan.worker[owner]
    tau1 = (plan.wander_ms / total)[owner]
    tau2 = ((plan.wander_ms + plan.approach_ms) / total)[owner]
    tau = np.minimum(t / total[owner], 1.0)
    curve = rng.normal(0, 1, (g, 2)) * workers.wobble[plan.worker][:, None]
    overshoot = rng.normal(0, 0.015, (g, 2))
    aim = plan.target + overshoot
    s1 = np.clip(tau / np.maximum(tau1, 1e-9), 0, 1)
    s2 = np.clip((tau - tau1) / np.maximum(tau2 - tau1, 1e-9), 0, 1)
    wander = _bend(plan.start[owner], plan.via[owner], s1, curve[owner, 0])
    approach = _bend(plan.via[owner], aim[owner], s2, curve[owner, 1])
    settle = np.clip((tau - tau2) * total[owner] / 150.0, 0, 1)[:, None]  # 150 ms correction
    dwell = aim[owner] + (plan.target - aim)[owner] * minimum_jerk(settle)
    phase = np.where(tau < tau1, 0, np.where(tau < tau2, 1, 2))[:, None]
    pos = np.where(phase == 0, wander, np.where(phase == 1, approach, dwell))
    if plan.display is None:
        display = workers.display[w][:, None]
    else:
        display = plan.display[owner]
    tremor = rng.normal(0, 1, pos.shape) * np.where(phase == 2, workers.tremor_px[w][:, None], 0.3)
    pad = outside_px(display)
    px = np.clip(np.round(pos * display + tremor), -pad, display + pad).astype(np.int64)
    keep = np.ones(len(t), bool)  # a still pointer fires no event
    keep[1:] = np.any(px[1:] != px[:-1], axis=1)
    keep[offsets[:-1]] = True
    counts = np.bincount(owner[keep], minlength=g)
    return Gestures(np.concatenate([[0], np.cumsum(counts)]), t[keep], px[keep], total)


def aim_inside(box: np.ndarray, spread: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Targets on the object: around the box centre, kept within its inner 80 %."""
    centre = (box[:, :2] + box[:, 2:]) / 2
    half = (box[:, 2:] - box[:, :2]) / 2
    offset = np.clip(rng.normal(0, 1, centre.shape) * spread[:, None], -0.8, 0.8)
    return centre + offset * half


def aim_outside(
    box: np.ndarray, rng: np.random.Generator, margin: float = 0.02, reach: float = 0.15
) -> np.ndarray:
    """Targets off the object but near it: in the band left, right, above or below the box,
    at most `reach` beyond its edge (a sloppy click, not a click somewhere else)."""
    n = len(box)
    room = np.stack([box[:, 0], 1 - box[:, 2], box[:, 1], 1 - box[:, 3]], axis=1) - 2 * margin
    room = np.clip(room, 1e-6, reach)
    cum = np.cumsum(room / room.sum(axis=1, keepdims=True), axis=1)
    pick = np.minimum((rng.random(n)[:, None] > cum).sum(axis=1), 3)
    v = margin + rng.random(n) * room[np.arange(n), pick]  # depth into the chosen band
    u = rng.random(n)  # position along the band, beside the object
    along_x = box[:, 0] + u * (box[:, 2] - box[:, 0])
    along_y = box[:, 1] + u * (box[:, 3] - box[:, 1])
    x = np.select([pick == 0, pick == 1], [box[:, 0] - v, box[:, 2] + v], along_x)
    y = np.select([pick == 2, pick == 3], [box[:, 1] - v, box[:, 3] + v], along_y)
    return np.stack([x, y], axis=1)
