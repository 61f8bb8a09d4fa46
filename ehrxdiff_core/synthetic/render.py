"""Chest radiographs drawn from the latent findings, with nuisance variation a model must ignore.

Shapes are analytic in normalised coordinates, so an image at 64 px and at 256 px shows the same
findings. The patient's fixed anatomy (body, lungs, ribs, where a consolidation would sit, device
paths) is computed once per patient and view and cached; each image then adds its findings and is
rotated, scaled, shifted, exposed and noised differently (AP films are magnified and flatter); the
synthetic `nuisance` setting scales the pose and exposure changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from .process import AT, CM, CO, ED, EF, PX, SD

BACKGROUND = 0.04


@dataclass(frozen=True)
class Anatomy:
    """Per-patient constants: body habitus, sex and age cues, and where the focal findings sit.

    Sex and age leave real traces on a radiograph (breast shadows, narrower thorax; rib contrast
    falling and aortic calcification rising with age), so demographic preservation is measurable.
    """

    body_width: float
    lung_height: float
    cons_side: int  # -1 image-left (patient right), +1 image-right
    cons_y: float
    ptx_side: int
    atel_side: int
    female: bool = False
    age: float = 60.0

    @staticmethod
    def draw(rng: np.random.Generator, female: bool = False, age: float = 60.0) -> Anatomy:
        return Anatomy(
            female=bool(female),
            age=float(age),
            body_width=float(rng.uniform(0.88, 1.0) * (0.93 if female else 1.0)),
            lung_height=float(rng.uniform(0.52, 0.62)),
            cons_side=int(rng.choice([-1, 1])),
            cons_y=float(rng.uniform(0.0, 0.3)),
            ptx_side=int(rng.choice([-1, 1])),
            atel_side=int(rng.choice([-1, 1])),
        )


def _soft(d: np.ndarray, edge: float) -> np.ndarray:
    """1 inside (d < 0), 0 outside, linear ramp of width `edge` (anti-aliased masks)."""
    return np.clip(0.5 - d / edge, 0.0, 1.0)


def _ellipse(x, y, cx, cy, rx, ry, edge=0.04):
    return _soft(np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2) - 1.0, edge / min(rx, ry))


def _segment(x, y, p, q, half_width):
    """Mask of a thick line segment from p to q."""
    px, py = p
    qx, qy = q
    vx, vy = qx - px, qy - py
    t = np.clip(((x - px) * vx + (y - py) * vy) / (vx * vx + vy * vy), 0, 1)
    d = np.sqrt((x - px - t * vx) ** 2 + (y - py - t * vy) ** 2)
    return _soft(d - half_width, half_width)


@lru_cache(maxsize=8)
def _grid(px: int) -> tuple[np.ndarray, np.ndarray]:
    g = (np.arange(px, dtype=np.float32) + 0.5) / px * 2 - 1
    return tuple(np.meshgrid(g, g))  # type: ignore[return-value]


@dataclass
class _Static:
    """Layers that depend only on the patient's anatomy, the view family and the image size."""

    base: np.ndarray  # body + air-filled lungs + ribs/markings + mediastinum
    lungs: list[tuple[np.ndarray, float, float, float]]  # (mask, cx, cy, rx) per side
    lung_any: np.ndarray
    markings: np.ndarray
    lh: float
    edema: np.ndarray
    consolidation: np.ndarray
    line: np.ndarray
    chest_tube: np.ndarray
    ett: np.ndarray


@lru_cache(maxsize=8)
def _static(an: Anatomy, ap: bool, px: int) -> _Static:
    x, y = _grid(px)
    img = np.full(x.shape, BACKGROUND, np.float32)
    img += 0.5 * _ellipse(x, y, 0.0, 0.15, 0.95 * an.body_width, 1.15)
    lh = an.lung_height * (0.9 if ap else 1.0)  # AP films are taken with poorer inspiration
    bone = float(np.clip(1.35 - an.age / 100.0, 0.45, 1.2))  # rib contrast falls with age (osteopenia)
    ribs = 0.06 * bone * (np.sin(y * 26 + np.abs(x) * 7) > 0.55)
    markings = 0.035 * np.sin(x * 41 + 3 * y) * np.sin(y * 37 - 2 * x)
    lungs = []
    lung_any = np.zeros_like(img)
    for side in (-1, 1):
        cx, cy, rx = 0.4 * side * an.body_width, -0.05, 0.28 * an.body_width
        lung = _ellipse(x, y, cx, cy, rx, lh)
        lungs.append((lung, cx, cy, rx))
        lung_any += lung
        img += lung * (markings + ribs - 0.42)
    img += 0.3 * _ellipse(x, y, 0.0, -0.35, 0.11, 0.5) * (1 - lung_any)
    # aortic knob: calcified rim brighter with age
    knob = _ellipse(x, y, -0.14, -0.48, 0.09, 0.07) - _ellipse(x, y, -0.14, -0.48, 0.07, 0.05)
    img += float(np.clip((an.age - 35) / 60.0, 0.0, 1.0)) * 0.25 * np.clip(knob, 0, 1)
    if an.female:  # breast soft-tissue shadows over the lower zones
        for side in (-1, 1):
            img += 0.13 * _ellipse(x, y, 0.42 * side * an.body_width, 0.42, 0.3 * an.body_width, 0.22, edge=0.15)
    img -= 0.2 * _ellipse(x, y, 0.0, -0.6, 0.035, 0.35)
    hil = sum(np.exp(-(((x - 0.2 * s) / 0.2) ** 2 + (y / 0.3) ** 2)) for s in (-1, 1))
    cx = 0.38 * an.cons_side * an.body_width
    blob = np.exp(-(((x - cx) / 0.15) ** 2 + ((y - an.cons_y) / 0.17) ** 2))
    texture = 1 - 0.25 * (np.sin(x * 55) * np.sin(y * 47) > 0.6)
    hw = 0.018
    return _Static(
        base=img,
        lungs=lungs,
        lung_any=lung_any,
        markings=markings + ribs,
        lh=lh,
        edema=lung_any * (0.42 * hil + 0.12),
        consolidation=lung_any * blob * texture * 0.65,
        line=_segment(x, y, (-0.5, -0.75), (-0.04, -0.15), hw),
        chest_tube=_segment(x, y, (0.75, 0.5), (0.45, -0.4), hw),
        ett=_segment(x, y, (0.0, -1.0), (0.0, -0.3), hw * 1.3),
    )


def acquisition(rng: np.random.Generator, view: str, nuisance: float = 1.0) -> tuple[float, ...]:
    """One film's (angle in degrees, scale, dx, dy, gamma, noise sd).

    `nuisance` scales the pose (rotation up to 5 degrees, scale 0.92-1.05, shift up to 5 %) and the
    exposure (gamma 0.8-1.25) about the neutral pose and exposure: 1 is the full range, 0 takes every
    film of a patient and view in the same position and exposure. The same draws are made at every value,
    and 1 gives exactly the films drawn before the setting existed (1 + k * (u - 1) is u at k = 1 for u in
    [0.5, 2]: the subtraction and the sum are exact). Pixel noise is not scaled.
    """
    ang = nuisance * rng.uniform(-5, 5)
    scale = (1.0 + nuisance * (rng.uniform(0.92, 1.05) - 1.0)) * (1.08 if view == "AP" else 1.0)
    dx, dy = nuisance * rng.uniform(-0.05, 0.05, 2)
    gamma = 1.0 + nuisance * (rng.uniform(0.8, 1.25) - 1.0)
    noise_sd = rng.uniform(0.01, 0.035)
    return float(ang), float(scale), float(dx), float(dy), float(gamma), float(noise_sd)


def render_chest(
    state: np.ndarray, anatomy: Anatomy, view: str, px: int, rng: np.random.Generator, nuisance: float = 1.0
) -> np.ndarray:
    """Return a uint8 (px, px) radiograph of the findings `state` (7,) seen in `view`.

    `nuisance` scales the film's pose and exposure change (`acquisition`).
    """
    ang, scale, dx, dy, gamma, noise_sd = acquisition(rng, view, nuisance)

    if view in ("LATERAL", "LL"):
        img = _lateral(state, anatomy, px)
    else:
        img = _frontal(state, anatomy, view == "AP", px)

    # nuisance pose: rotate/scale/shift about the centre (PIL resamples in C)
    c, s = np.cos(np.deg2rad(ang)) / scale, np.sin(np.deg2rad(ang)) / scale
    half = px / 2
    ox, oy = half - dx * half, half - dy * half
    coeffs = (c, s, half - c * ox - s * oy, -s, c, half + s * ox - c * oy)
    img = np.asarray(
        Image.fromarray(img.astype(np.float32)).transform(
            (px, px), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR, fillcolor=BACKGROUND
        )
    )

    lo, hi = (0.06, 0.92) if view == "PA" else (0.12, 0.85)  # AP films look flatter
    img = lo + (hi - lo) * np.clip(img, 0, 1) ** gamma
    img = img + noise_sd * rng.standard_normal(img.shape, dtype=np.float32)
    # side marker: position differs between AP and PA (a nuisance cue real films also carry)
    m = max(2, px // 32)
    r0 = m if view != "AP" else px - 3 * m
    img[r0 : r0 + m, m : 2 * m] = 0.97
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _frontal(st: np.ndarray, an: Anatomy, ap: bool, px: int) -> np.ndarray:
    S = _static(an, ap, px)
    x, y = _grid(px)
    img = S.base.copy()
    for side, (lung, cx, cy, rx) in zip((-1, 1), S.lungs):
        if side == an.ptx_side and st[PX] > 0.02:  # collapsed lung: lucent rim without markings
            shrink = 1.0 - 0.5 * st[PX]
            inner = _ellipse(
                x,
                y,
                cx - 0.3 * side * rx * (1 - shrink),
                cy + 0.1 * (1 - shrink),
                rx * shrink,
                S.lh * (0.5 + 0.5 * shrink),
            )
            rim = lung * (1 - inner)
            img -= rim * (0.42 + S.markings) * 0.95
            img += 0.25 * rim * _soft(np.abs(inner - 0.5) - 0.45, 0.05)  # visible pleural line
        fluid = 0.0
        if st[EF] > 0.02:  # dependent fluid, meniscus rising laterally, blunted costophrenic angle
            level = cy + S.lh - 1.1 * S.lh * st[EF]
            meniscus = level - 0.25 * st[EF] * ((x - cx) * side / rx).clip(0, 1) ** 2
            fluid = lung * _soft(meniscus - y, 0.06) * (0.42 * min(1.0, 0.6 + st[EF]))
        collapse = 0.0
        if side == an.atel_side and st[AT] > 0.02:  # lower-lobe collapse: airless base rising medially
            level = cy + S.lh - 0.9 * S.lh * st[AT]
            edge = level - 0.6 * S.lh * st[AT] * ((cx - x) * side / rx).clip(0, 1)
            collapse = lung * _soft(edge - y, 0.05) * (0.42 * min(1.0, 0.6 + st[AT]))
        img += fluid + collapse  # fluid and airless lung at the same base: their densities add
    heart_w = (0.2 + 0.22 * st[CM]) * (1.1 if ap else 1.0) * an.body_width  # AP magnifies the heart
    shift = 0.12 * st[AT] * an.atel_side * an.body_width  # volume loss pulls the heart towards the collapse
    img += _ellipse(x, y, 0.07 + shift, 0.3, heart_w, 0.24) * (0.2 + 0.25 * S.lung_any).clip(0.2, 0.45)
    img += st[ED] * S.edema + st[CO] * S.consolidation
    if st[SD] > 0.5:  # a central line, then a chest tube, then an endotracheal tube as the level rises
        img += 0.5 * np.clip((st[SD] - 0.6) * 10, 0, 1) * S.line
        img += 0.55 * np.clip((st[SD] - 0.8) * 20, 0, 1) * S.chest_tube
        img += 0.6 * np.clip((st[SD] - 0.9) * 20, 0, 1) * S.ett
    return img


def _lateral(st: np.ndarray, an: Anatomy, px: int) -> np.ndarray:
    x, y = _grid(px)
    img = np.full(x.shape, BACKGROUND, np.float32)
    img += 0.5 * _ellipse(x, y, 0.0, 0.15, 0.8, 1.15)
    lung = _ellipse(x, y, 0.0, -0.05, 0.55, an.lung_height * 1.05)
    img -= 0.4 * lung
    img += 0.35 * _ellipse(x, y, -0.3, 0.3, 0.18 + 0.15 * st[CM], 0.25) * lung  # heart, anterior
    img += 0.3 * _soft(np.abs(x - 0.62) - 0.08, 0.03) * (y > -0.8)  # spine
    level = 0.55 - 0.6 * st[EF]
    img += 0.35 * lung * _soft(level - y, 0.05) * (x > -0.2)  # posterior fluid
    img += 0.25 * st[ED] * lung + 0.3 * st[CO] * lung * np.exp(-((x / 0.3) ** 2 + ((y - 0.2) / 0.2) ** 2))
    return img
