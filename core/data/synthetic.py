"""The embedded default dataset: procedurally rendered identities with known noise.

Real face datasets cannot be shipped with the code, and their label noise is unknown, so
experiments on inter-class conflict, label noise and long-tail behaviour need data whose
ground truth is recorded. Two generators provide it:

* ``make_synthetic_dataset`` renders face-like 112x112 RGB images. An identity is a fixed
  set of appearance parameters (face shape, skin tone, hair, eyes, brows, nose, mouth,
  beard, glasses, marks); every image adds nuisance that a model must learn to ignore
  (pose, lighting, per-image background and clothing, occlusion, blur, noise, JPEG).
  Images per identity are long-tailed; label flips and split identities (one person under
  two labels) are injected on request and saved in ``ground_truth.json``. Held-out
  identities, never seen in training, give ``val.bin`` verification pairs (and
  ``val_tail.bin`` from held-out identities with few images).
* ``make_synthetic_embeddings`` / ``class_centers`` / ``embedding_batches`` draw embeddings
  straight from a long-tailed mixture on the unit hypersphere, for head-only experiments
  and benchmarks at millions of classes where rendering images would be pointless.

Everything is deterministic from a seed. Random streams are keyed by purpose and by
identity (``numpy.random.default_rng([seed, stream, index])``), so changing one option
(say ``flip_noise``) leaves the identities, their images and the counts unchanged.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from core.data.base import decode_image, encode_image
from core.data.recordio import write_insightface_rec
from core.data.verification_bin import write_verification_bin
from core.errors import ConfigError, DataError

__all__ = [
    "SyntheticConfig",
    "SyntheticEmbeddingConfig",
    "GROUND_TRUTH_FILE",
    "draw_identity_params",
    "render_identity_images",
    "long_tail_counts",
    "make_synthetic_dataset",
    "load_ground_truth",
    "make_synthetic_embeddings",
    "class_centers",
    "embedding_batches",
]

GROUND_TRUTH_FILE = "ground_truth.json"
PREVIEW_FILE = "preview.png"
# Everything make_synthetic_dataset writes: the only files it may replace.
_GENERATED_FILES = frozenset({"train.rec", "train.idx", "property", "val.bin", "val_tail.bin", GROUND_TRUTH_FILE,
                              PREVIEW_FILE})
_FORMAT = "facequeue-synthetic-v1"

# Stream ids: each purpose draws from its own generator so options stay independent.
_S_TRAIN_PARAMS = 1
_S_HELDOUT_PARAMS = 2
_S_TRAIN_IMAGES = 3
_S_HELDOUT_IMAGES = 4
_S_TRAIN_COUNTS = 5
_S_HELDOUT_COUNTS = 6
_S_SPLIT = 7
_S_FLIP = 8
_S_VAL = 9
_S_VAL_TAIL = 10
_S_VARIANTS = 11
_S_CENTERS = 12
_S_CLUSTERS = 13
_S_EMB_COUNTS = 14
_S_EMB_NOISE = 15
_S_STREAM = 16


def _rng(seed: int, *stream: int) -> np.random.Generator:
    """A generator keyed by (seed, stream...), independent of every other key."""
    return np.random.default_rng([int(seed), *[int(s) for s in stream]])


# ---------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------


@dataclass
class SyntheticConfig:
    """Options of the rendered dataset; saved verbatim in ``ground_truth.json``.

    The defaults give the CPU demo set: 600 training identities (8,407 images at seed 0,
    mean ~14 per identity, Zipf-like between 2 and 80) and 100 held-out identities for
    1,000 verification pairs; ``val_tail.bin`` is written when at least
    ``tail_min_identities`` held-out identities have ``<= tail_max_images`` images.
    ``image_size`` is the stored side; ``jpeg_quality`` the quality of the stored JPEGs.
    """

    identities: int = 600
    heldout_identities: int = 100
    min_images: int = 2
    max_images: int = 80
    zipf_exponent: float = 1.25
    flip_noise: float = 0.0
    split: float = 0.0
    val_pairs: int = 1000
    tail_max_images: int = 5
    tail_min_identities: int = 10
    image_size: int = 112
    jpeg_quality: int = 90
    seed: int = 0

    def validate(self) -> None:
        """Reject options that would produce a silently wrong dataset."""
        if self.identities < 2:
            raise ConfigError(f"synthetic.identities must be >= 2, got {self.identities}")
        if self.heldout_identities < 0:
            raise ConfigError(f"synthetic.heldout_identities must be >= 0, got {self.heldout_identities}")
        if self.heldout_identities == 1 or (self.heldout_identities and self.val_pairs < 2):
            raise ConfigError(
                "synthetic.heldout_identities must be 0 or >= 2 and synthetic.val_pairs >= 2 "
                f"(got {self.heldout_identities} identities, {self.val_pairs} pairs): "
                "verification pairs need two identities"
            )
        _validate_long_tail("synthetic", self.min_images, self.max_images, self.zipf_exponent)
        _validate_noise("synthetic", self.flip_noise, self.split)
        if self.tail_max_images < 2:
            raise ConfigError(f"synthetic.tail_max_images must be >= 2, got {self.tail_max_images}")
        if self.tail_min_identities < 2:
            raise ConfigError(f"synthetic.tail_min_identities must be >= 2, got {self.tail_min_identities}")
        if not 32 <= self.image_size <= 512:
            raise ConfigError(f"synthetic.image_size must be in [32, 512], got {self.image_size}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"synthetic.jpeg_quality must be in [1, 100], got {self.jpeg_quality}")


def _validate_long_tail(prefix: str, min_images: int, max_images: int, exponent: float) -> None:
    if min_images < 1 or max_images < min_images:
        raise ConfigError(
            f"{prefix}.min_images/max_images must satisfy 1 <= min <= max, got {min_images}/{max_images}"
        )
    if not math.isfinite(exponent) or exponent < 0:
        raise ConfigError(f"{prefix}.zipf_exponent must be a finite number >= 0, got {exponent}")


def _validate_noise(prefix: str, flip_noise: float, split: float) -> None:
    if not 0.0 <= flip_noise < 1.0:
        raise ConfigError(f"{prefix}.flip_noise must be in [0, 1), got {flip_noise}")
    if not 0.0 <= split <= 1.0:
        raise ConfigError(f"{prefix}.split must be in [0, 1], got {split}")


# ---------------------------------------------------------------------------------------
# Long tail
# ---------------------------------------------------------------------------------------


def long_tail_counts(
    n: int, min_images: int, max_images: int, exponent: float, rng: np.random.Generator
) -> np.ndarray:
    """Images per class drawn from a truncated Zipf law ``p(k) ~ k**-exponent``.

    A real identity list is dominated by rare classes with a few very frequent ones; the
    truncation keeps every class usable (``>= min_images``) and bounds the head. Draws are
    sequential from ``rng``, so the first ``n`` counts do not change when ``n`` grows.
    """
    k = np.arange(min_images, max_images + 1, dtype=np.float64)
    cdf = np.cumsum(k ** -float(exponent))
    cdf /= cdf[-1]
    u = rng.random(int(n))
    idx = np.minimum(np.searchsorted(cdf, u, side="right"), len(k) - 1)
    return (min_images + idx).astype(np.int64)


# ---------------------------------------------------------------------------------------
# Identity appearance
# ---------------------------------------------------------------------------------------

_SKIN = np.array(
    [[255, 228, 206], [243, 200, 168], [228, 176, 136], [202, 146, 104],
     [166, 110, 74], [126, 82, 54], [88, 58, 40]], dtype=np.float64)
_HAIR = {
    "black": ((24, 20, 20), 0.20), "dark_brown": ((62, 40, 28), 0.18),
    "brown": ((110, 72, 42), 0.14), "auburn": ((138, 58, 34), 0.08),
    "blonde": ((222, 192, 120), 0.10), "ginger": ((196, 98, 40), 0.07),
    "grey": ((150, 150, 152), 0.08), "white": ((232, 230, 224), 0.05),
    "blue": ((40, 80, 200), 0.034), "pink": ((224, 92, 168), 0.033),
    "green": ((50, 150, 80), 0.033),
}
_EYES = {"brown": (92, 56, 30), "dark": (40, 26, 20), "blue": (60, 120, 200),
         "green": (70, 140, 80), "grey": (120, 130, 140), "hazel": (140, 110, 50)}
_HAIR_STYLES = {"bald": 0.07, "short": 0.22, "fringe": 0.14, "side": 0.13,
                "long": 0.18, "curly": 0.12, "bun": 0.08, "receding": 0.06}
_BEARDS = {"none": 0.58, "stubble": 0.12, "moustache": 0.09, "goatee": 0.09, "full": 0.12}
_GLASSES = {"none": 0.64, "round": 0.12, "square": 0.14, "sun": 0.10}
_FRAMES = [(20, 20, 20), (120, 80, 40), (190, 190, 200), (180, 30, 30), (30, 60, 160), (200, 160, 40)]


def _pick(rng: np.random.Generator, table: dict) -> str:
    names = list(table)
    weights = np.array([v[1] if isinstance(v, tuple) else v for v in table.values()], dtype=np.float64)
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


def _jitter(rng: np.random.Generator, colour: Sequence[float], sd: float) -> list[int]:
    return [int(c) for c in np.clip(np.asarray(colour, dtype=np.float64) + rng.normal(0, sd, 3), 0, 255)]


def draw_identity_params(rng: np.random.Generator) -> dict:
    """One identity's appearance: coarse enough to survive downsizing to 32x32.

    Differences between identities live in colours, shapes, proportions, hair and
    accessories, which a small CNN can still see at low resolution; no parameter is tied
    to anything that varies per image (background, clothing, lighting).
    """
    t = rng.uniform(0, 1) * (len(_SKIN) - 1)
    lo = int(min(math.floor(t), len(_SKIN) - 2))
    skin = _SKIN[lo] + (t - lo) * (_SKIN[lo + 1] - _SKIN[lo])
    hair_name = _pick(rng, _HAIR)
    hair = _jitter(rng, _HAIR[hair_name][0], 10)
    style = _pick(rng, _HAIR_STYLES)
    beard = _pick(rng, _BEARDS)
    glasses = _pick(rng, _GLASSES)
    eye_name = str(rng.choice(list(_EYES)))
    freckles = []
    if rng.random() < 0.15:
        n = int(rng.integers(8, 18))
        freckles = [[round(float(x), 2), round(float(y), 2)]
                    for x, y in zip(rng.uniform(-1, 1, n), rng.uniform(0, 1, n))]
    mole = None
    if rng.random() < 0.3:
        mole = [round(float(rng.uniform(-0.8, 0.8)), 3), round(float(rng.uniform(-0.2, 0.8)), 3),
                round(float(rng.uniform(1.2, 2.4)), 3)]
    params = {
        "skin": _jitter(rng, skin, 6),
        "face_w": rng.uniform(28, 37),
        "face_h": rng.uniform(36, 45),
        "squareness": rng.uniform(2.0, 3.2),
        "jaw_taper": rng.uniform(0.0, 0.45),
        "ear_size": rng.uniform(6, 11),
        "hair_name": hair_name,
        "hair": hair,
        "hair_style": style,
        "hair_volume": rng.uniform(2, 9),
        "hairline": rng.uniform(0, 1),
        "hair_length": rng.uniform(15, 50),
        "part_side": float(rng.choice([-1.0, 1.0])),
        "eye_spacing": rng.uniform(11, 16),
        "eye_size": rng.uniform(4, 6.5),
        "eye_height": rng.uniform(-3, 3),
        "eye_name": eye_name,
        "eye_color": _jitter(rng, _EYES[eye_name], 8),
        "brow_thickness": rng.uniform(1.5, 4.5),
        "brow_angle": rng.uniform(-0.25, 0.3),
        "brow_arch": rng.uniform(0, 3),
        "brow_gap": rng.uniform(4.5, 8),
        "brow_dark": rng.uniform(0.0, 0.7),
        "nose_length": rng.uniform(11, 19),
        "nose_width": rng.uniform(5, 10),
        "mouth_width": rng.uniform(9, 17),
        "mouth_curve": rng.uniform(-2.5, 4.5),
        "lip_thickness": rng.uniform(1.5, 4),
        "lip_red": rng.uniform(0.1, 0.6),
        "blush": rng.uniform(0, 0.45),
        "beard": beard,
        "beard_grey": rng.uniform(0, 1) < 0.15,
        "glasses": glasses,
        "frame_color": list(_FRAMES[int(rng.integers(len(_FRAMES)))]),
        "frame_width": rng.uniform(1.0, 2.2),
        "lens_tint": _jitter(rng, (30, 30, 40), 20),
        "freckles": freckles,
        "mole": mole,
    }
    return {k: (round(float(v), 3) if isinstance(v, (float, np.floating)) else v) for k, v in params.items()}


# ---------------------------------------------------------------------------------------
# Canonical rendering (once per identity and expression)
# ---------------------------------------------------------------------------------------

_CANVAS = 160.0  # canonical canvas side, in pixels of the 112-px output frame
_WINDOW = 112.0
_CX, _CY = 80.0, 79.0  # face centre on the canvas
_SUPERSAMPLE = 2


class _Painter:
    """ImageDraw in output-frame units on a supersampled canvas, so shapes are anti-aliased.

    PIL replaces (does not blend) pixels when drawing a translucent colour on an RGBA
    image, so translucent shapes are drawn on a small layer covering just their bounding
    box and alpha-composited; opaque shapes are drawn directly.
    """

    def __init__(self, scale: float, image: Optional[Image.Image] = None) -> None:
        self.k = scale
        self.side = int(round(_CANVAS * scale))
        self.image = Image.new("RGBA", (self.side, self.side), (0, 0, 0, 0)) if image is None else image
        self.draw = ImageDraw.Draw(self.image)

    def _paint(self, box: Sequence[float], colours: Sequence[Optional[tuple]], fn) -> None:
        """Call ``fn(draw, ox, oy)`` on the canvas or, for translucent colours, on a layer."""
        if not any(c is not None and len(c) == 4 and c[3] < 255 for c in colours):
            fn(self.draw, 0.0, 0.0)
            return
        x0 = max(0, int(math.floor(box[0])) - 2)
        y0 = max(0, int(math.floor(box[1])) - 2)
        x1 = min(self.side, int(math.ceil(box[2])) + 3)
        y1 = min(self.side, int(math.ceil(box[3])) + 3)
        if x1 <= x0 or y1 <= y0:
            return
        layer = Image.new("RGBA", (x1 - x0, y1 - y0), (0, 0, 0, 0))
        fn(ImageDraw.Draw(layer), float(x0), float(y0))
        self.image.alpha_composite(layer, dest=(x0, y0))

    def poly(self, pts: np.ndarray, fill: Sequence[int]) -> None:
        xy = np.asarray(pts, dtype=np.float64) * self.k
        colour = tuple(fill)
        self._paint((*xy.min(0), *xy.max(0)), [colour],
                    lambda d, ox, oy: d.polygon([(x - ox, y - oy) for x, y in xy], fill=colour))

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, fill=None, outline=None,
                width: float = 1.0) -> None:
        k = self.k
        box = [(cx - rx) * k, (cy - ry) * k, (cx + rx) * k, (cy + ry) * k]
        fill = None if fill is None else tuple(fill)
        outline = None if outline is None else tuple(outline)
        w = max(1, int(round(width * k)))
        self._paint(box, [fill, outline], lambda d, ox, oy: d.ellipse(
            [box[0] - ox, box[1] - oy, box[2] - ox, box[3] - oy], fill=fill, outline=outline, width=w))

    def rect(self, x0: float, y0: float, x1: float, y1: float, radius: float, fill=None, outline=None,
             width: float = 1.0) -> None:
        k = self.k
        box = [x0 * k, y0 * k, x1 * k, y1 * k]
        fill = None if fill is None else tuple(fill)
        outline = None if outline is None else tuple(outline)
        w = max(1, int(round(width * k)))
        self._paint(box, [fill, outline], lambda d, ox, oy: d.rounded_rectangle(
            [box[0] - ox, box[1] - oy, box[2] - ox, box[3] - oy], radius=radius * k, fill=fill,
            outline=outline, width=w))

    def line(self, pts: np.ndarray, fill: Sequence[int], width: float) -> None:
        xy = np.asarray(pts, dtype=np.float64) * self.k
        colour = tuple(fill)
        w = max(1, int(round(width * self.k)))
        box = (*(xy.min(0) - w), *(xy.max(0) + w))
        self._paint(box, [colour], lambda d, ox, oy: d.line(
            [(x - ox, y - oy) for x, y in xy], fill=colour, width=w, joint="curve"))


def _shade(colour: Sequence[int], factor: float, alpha: int = 255) -> tuple[int, int, int, int]:
    c = np.clip(np.asarray(colour, dtype=np.float64) * factor, 0, 255).astype(int)
    return int(c[0]), int(c[1]), int(c[2]), int(alpha)


def _mix(a: Sequence[int], b: Sequence[int], t: float, alpha: int = 255) -> tuple[int, int, int, int]:
    c = (1 - t) * np.asarray(a[:3], dtype=np.float64) + t * np.asarray(b[:3], dtype=np.float64)
    c = np.clip(c, 0, 255).astype(int)
    return int(c[0]), int(c[1]), int(c[2]), int(alpha)


def _face_outline(p: dict, grow: float = 0.0, n: int = 96) -> np.ndarray:
    """Superellipse head with a tapered jaw; ``grow`` inflates it (hair caps)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    e = 2.0 / p["squareness"]
    x = (p["face_w"] + grow) * np.sign(c) * np.abs(c) ** e
    y = (p["face_h"] + grow * 0.7) * np.sign(s) * np.abs(s) ** e
    lower = np.clip(s, 0, None)
    x = x * (1 - p["jaw_taper"] * lower ** 1.5)
    return np.stack([_CX + x, _CY + y], axis=1)


def _half_width_at(g: dict, y: float) -> float:
    """Half-width of the face outline at height ``y`` (from the outline cached in ``g``)."""
    return float(np.interp(y, g["edge_y"], g["edge_x"]))


def _geometry(p: dict) -> dict:
    """Landmark heights and the face's right edge, computed once per canonical render."""
    top = _CY - p["face_h"]
    chin = _CY + p["face_h"]
    eye_y = _CY - p["face_h"] * 0.12 + p["eye_height"]
    nose_tip = eye_y + p["nose_length"]
    mouth_y = nose_tip + (chin - nose_tip) * 0.38
    out = _face_outline(p)
    right = out[out[:, 0] >= _CX]
    order = np.argsort(right[:, 1])
    return {"top": top, "chin": chin, "eye_y": eye_y, "nose_tip": nose_tip, "mouth_y": mouth_y,
            "edge_y": right[order, 1], "edge_x": right[order, 0] - _CX}


def _draw_back_hair(pt: _Painter, p: dict, g: dict, hair: tuple) -> None:
    style, vol = p["hair_style"], p["hair_volume"]
    if style == "long":
        w = p["face_w"] + vol + 2
        pt.rect(_CX - w, g["top"] - vol * 0.6, _CX + w, g["chin"] + p["hair_length"] - 20, radius=w * 0.8,
                fill=hair)
    elif style == "curly":
        r = p["face_w"] + vol + 5
        pt.ellipse(_CX, _CY - 6, r, p["face_h"] * 0.8 + vol + 4, fill=hair)
    elif style == "bun":
        pt.ellipse(_CX, g["top"] - vol - 6, 9 + vol * 0.6, 8 + vol * 0.5, fill=hair)


def _hairline(p: dict, g: dict, xs: np.ndarray) -> np.ndarray:
    """y of the hairline at horizontal offsets ``xs`` (relative to the face centre)."""
    fw, fh, d = p["face_w"], p["face_h"], p["hairline"]
    u = np.clip(np.abs(xs) / fw, 0, 1)
    style = p["hair_style"]
    base = g["top"]
    if style == "fringe":
        return base + fh * (0.42 + 0.12 * d) + 0 * xs
    if style == "side":
        return base + fh * (0.22 + 0.1 * d) + p["part_side"] * xs * 0.35 + 4 * u ** 2
    if style == "long":
        return base + fh * (0.14 + 0.1 * d) + fh * 0.22 * u ** 1.2
    if style == "receding":
        return base + fh * (0.3 + 0.1 * d) - fh * 0.22 * u
    if style == "curly":
        return base + fh * (0.2 + 0.12 * d) + 3 * np.cos(xs * 0.9)
    return base + fh * (0.16 + 0.14 * d) + fh * 0.08 * u ** 2


def _draw_front_hair(pt: _Painter, p: dict, g: dict, hair: tuple) -> None:
    style, vol = p["hair_style"], p["hair_volume"]
    if style == "bald":
        # horseshoe of short hair above the ears
        for side in (-1, 1):
            x = _CX + side * (_half_width_at(g, g["eye_y"] - 6) - 2)
            pt.ellipse(x, g["eye_y"] - 6, 4, 9, fill=hair[:3] + (200,))
        return
    grow = vol * (1.6 if style == "curly" else 1.0)
    outline = _face_outline(p, grow=grow)
    side_y = g["eye_y"] + (10 if style in ("long", "curly") else 0)
    cap = outline[outline[:, 1] <= side_y]
    cap = cap[np.argsort(np.arctan2(cap[:, 1] - _CY, cap[:, 0] - _CX))]
    # inner boundary: down the face edge on both sides (temples), across along the hairline
    inset = 1.5
    y_edge = [float(_hairline(p, g, np.array([sx * p["face_w"]]))[0]) for sx in (1, -1)]
    x_edge = [_half_width_at(g, min(y, side_y)) - inset for y in y_edge]
    xs = np.linspace(x_edge[0], -x_edge[1], 40)
    ys = np.minimum(_hairline(p, g, xs), side_y)
    temple_r = [[_CX + _half_width_at(g, y) - inset, y] for y in np.linspace(side_y, ys[0], 6)]
    temple_l = [[_CX - _half_width_at(g, y) + inset, y] for y in np.linspace(ys[-1], side_y, 6)]
    inner = np.concatenate([temple_r, np.stack([_CX + xs, ys], axis=1), temple_l])
    # cap goes from the left temple over the top to the right; close it along the hairline
    left = cap[cap[:, 0] < _CX]
    right = cap[cap[:, 0] >= _CX]
    ring = np.concatenate([left[np.argsort(-left[:, 1])], right[np.argsort(right[:, 1])], inner])
    pt.poly(ring, hair)
    if style == "curly":
        # curls along the top; their sizes follow from the params, so every render matches
        for a in np.linspace(np.pi * 1.05, np.pi * 1.95, 11):
            x = _CX + (p["face_w"] + grow) * np.cos(a)
            y = _CY + (p["face_h"] + grow * 0.7) * np.sin(a)
            r = 5 + 1 + math.sin(7 * a + p["hair_volume"])
            pt.ellipse(x, y, r, r, fill=hair)


def _draw_eyes(pt: _Painter, p: dict, g: dict, openness: float, brow_raise: float) -> None:
    es, sz, ey = p["eye_spacing"], p["eye_size"], g["eye_y"]
    skin = p["skin"]
    hair = p["hair"]
    brow = _mix(hair, (20, 15, 12), p["brow_dark"])
    for side in (-1, 1):
        cx = _CX + side * es
        ry = max(0.6, sz * 0.55 * openness)
        pt.ellipse(cx, ey, sz + 0.8, ry + 0.8, fill=_shade(skin, 0.78))
        pt.ellipse(cx, ey, sz, ry, fill=(245, 245, 240, 255))
        ir = min(sz * 0.52, ry)
        pt.ellipse(cx, ey, ir, ir, fill=tuple(p["eye_color"]) + (255,))
        pt.ellipse(cx, ey, ir * 0.45, ir * 0.45, fill=(10, 10, 10, 255))
        lid = np.array([[cx - sz - 0.5, ey], [cx - sz * 0.4, ey - ry - 0.4], [cx + sz * 0.4, ey - ry - 0.4],
                        [cx + sz + 0.5, ey]])
        pt.line(lid, _shade(skin, 0.45), 1.0)
        # brow: inner end, arched middle, outer end lowered/raised by the angle
        by = ey - sz * 0.55 - p["brow_gap"] - brow_raise
        inner = [cx - side * (sz * 0.9), by + 0.5]
        mid = [cx + side * sz * 0.1, by - p["brow_arch"]]
        outer = [cx + side * (sz * 1.25), by + p["brow_angle"] * 10]
        pt.line(np.array([inner, mid, outer]), brow, p["brow_thickness"])


def _draw_nose(pt: _Painter, p: dict, g: dict) -> None:
    skin = p["skin"]
    tip, w = g["nose_tip"], p["nose_width"]
    top = g["eye_y"] + 2
    pt.poly(np.array([[_CX - 1.2, top], [_CX + 1.5, top], [_CX + w * 0.5, tip], [_CX - w * 0.45, tip]]),
            _shade(skin, 0.9, 160))
    pt.ellipse(_CX, tip - 1, w * 0.55, 2.6, fill=_shade(skin, 0.82))
    for side in (-1, 1):
        pt.ellipse(_CX + side * w * 0.3, tip, w * 0.16 + 0.4, 1.0, fill=_shade(skin, 0.35))


def _mouth_curve(p: dict, g: dict, curve: float, n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    xs = np.linspace(-p["mouth_width"], p["mouth_width"], n)
    ys = g["mouth_y"] - curve * (xs / p["mouth_width"]) ** 2 + curve * 0.3
    return xs, ys


def _draw_beard(pt: _Painter, p: dict, g: dict) -> None:
    kind = p["beard"]
    if kind == "none":
        return
    colour = (175, 175, 172) if p["beard_grey"] else tuple(p["hair"])
    mw = p["mouth_width"]
    if kind in ("stubble", "full"):
        outline = _face_outline(p, grow=0.6 if kind == "full" else 0.0)
        y0 = g["nose_tip"] - 2 if kind == "full" else g["nose_tip"] + 1
        jaw = outline[outline[:, 1] >= y0]
        jaw = jaw[np.argsort(jaw[:, 0])]
        jaw = jaw[np.argsort(np.arctan2(jaw[:, 1] - _CY, jaw[:, 0] - _CX))]
        upper = np.array([[_CX - mw - 4, y0 + 3], [_CX, g["nose_tip"] + 2.5], [_CX + mw + 4, y0 + 3]])
        # jaw points run from right (angle 0) to left (angle pi); close across the upper lip
        shape = np.concatenate([jaw, upper])
        pt.poly(shape, colour + ((110,) if kind == "stubble" else (255,)))
    if kind in ("moustache", "goatee", "full"):
        y = g["mouth_y"] - 2.5
        pt.poly(np.array([[_CX - mw - 1.5, y + 2.5], [_CX - mw * 0.6, y - 2], [_CX, y - 3.2],
                          [_CX + mw * 0.6, y - 2], [_CX + mw + 1.5, y + 2.5], [_CX, y + 0.8]]),
                colour + (255,))
    if kind == "goatee":
        pt.ellipse(_CX, (g["mouth_y"] + g["chin"]) / 2 + 2, mw * 0.6, (g["chin"] - g["mouth_y"]) / 2,
                   fill=colour + (255,))


def _draw_mouth(pt: _Painter, p: dict, g: dict, curve: float) -> None:
    lip = _mix(_shade(p["skin"], 0.72), (170, 40, 50), p["lip_red"])
    xs, ys = _mouth_curve(p, g, curve)
    taper = np.sqrt(np.clip(1 - (xs / p["mouth_width"]) ** 2, 0, 1))
    th = p["lip_thickness"]
    upper = np.stack([_CX + xs, ys - th * 0.8 * taper], axis=1)
    lower = np.stack([_CX + xs, ys + th * taper], axis=1)
    pt.poly(np.concatenate([upper, lower[::-1]]), lip)
    pt.line(np.stack([_CX + xs, ys], axis=1), _shade(lip, 0.45), 0.9)


def _draw_glasses(pt: _Painter, p: dict, g: dict) -> None:
    kind = p["glasses"]
    if kind == "none":
        return
    es, sz, ey = p["eye_spacing"], p["eye_size"], g["eye_y"]
    frame = tuple(p["frame_color"]) + (255,)
    width = p["frame_width"]
    rx, ry = sz + 3.2, sz * 0.75 + 2.8
    for side in (-1, 1):
        cx = _CX + side * es
        fill = tuple(p["lens_tint"]) + (235,) if kind == "sun" else (220, 235, 255, 40)
        if kind == "square":
            pt.rect(cx - rx, ey - ry, cx + rx, ey + ry, radius=2.0, fill=fill, outline=frame, width=width)
        else:
            pt.ellipse(cx, ey, rx, ry, fill=fill, outline=frame, width=width)
        edge = _half_width_at(g, ey)
        pt.line(np.array([[cx + side * rx, ey - ry * 0.4], [_CX + side * (edge + 0.5), ey - ry * 0.6]]),
                frame, width)
    pt.line(np.array([[_CX - es + rx, ey - 1.5], [_CX, ey - 3], [_CX + es - rx, ey - 1.5]]), frame, width)


def _render_canonical(p: dict, size: int,
                      expressions: Sequence[tuple[float, float, float]]) -> list[Image.Image]:
    """One identity's head per expression, as premultiplied ``RGBa`` canonical canvases.

    The canvas is larger than the output window (160 vs 112 units) so pose shifts never
    reveal a cut edge; premultiplied alpha keeps bilinear warps free of dark fringes.
    Everything but the mouth, eyes and brows is drawn once: the layers below them are
    copied and the layers above (front hair, glasses) composited for each expression.
    """
    scale = size / _WINDOW * _SUPERSAMPLE
    pt = _Painter(scale)
    g = _geometry(p)
    skin = tuple(p["skin"]) + (255,)
    hair = tuple(p["hair"]) + (255,)
    _draw_back_hair(pt, p, g, hair)
    # neck and ears
    neck_w = p["face_w"] * 0.55
    pt.rect(_CX - neck_w, _CY + p["face_h"] * 0.4, _CX + neck_w, _CANVAS, radius=4, fill=_shade(skin, 0.82))
    for side in (-1, 1):
        x = _CX + side * (_half_width_at(g, g["eye_y"] + 4) - 1)
        pt.ellipse(x, g["eye_y"] + 5, p["ear_size"] * 0.5, p["ear_size"], fill=_shade(skin, 0.9))
        pt.ellipse(x + side * 1.0, g["eye_y"] + 5, p["ear_size"] * 0.22, p["ear_size"] * 0.6,
                   fill=_shade(skin, 0.72))
    pt.poly(_face_outline(p), skin)
    # a lighter inner face gives the head some volume (darker rim), without leaving the outline
    inner = _face_outline(p)
    inner = np.stack([_CX + (inner[:, 0] - _CX) * 0.8, _CY - 3 + (inner[:, 1] - _CY) * 0.86], axis=1)
    pt.poly(inner, _shade(skin, 1.07, 70))
    if p["blush"] > 0.05:
        for side in (-1, 1):
            pt.ellipse(_CX + side * (p["eye_spacing"] + 2), g["nose_tip"] - 1, 6, 4,
                       fill=(220, 80, 90, int(120 * p["blush"])))
    for fx, fy in p["freckles"]:
        pt.ellipse(_CX + fx * (p["eye_spacing"] + 4), g["eye_y"] + 5 + fy * 8, 0.8, 0.8,
                   fill=_shade(skin, 0.6))
    if p["mole"] is not None:
        mx, my, mr = p["mole"]
        pt.ellipse(_CX + mx * p["face_w"] * 0.8, _CY + my * p["face_h"] * 0.6, mr, mr, fill=(60, 35, 25, 255))
    _draw_beard(pt, p, g)
    _draw_nose(pt, p, g)
    top = _Painter(scale)
    _draw_front_hair(top, p, g, hair)
    _draw_glasses(top, p, g)
    side = int(round(_CANVAS * size / _WINDOW))
    out = []
    for curve_delta, openness, brow_raise in expressions:
        face = _Painter(scale, pt.image.copy())
        _draw_mouth(face, p, g, p["mouth_curve"] + curve_delta)
        _draw_eyes(face, p, g, openness, brow_raise)
        face.image.alpha_composite(top.image)
        out.append(face.image.convert("RGBa").resize((side, side), Image.Resampling.BOX))
    return out


_EXPRESSIONS = 3
_SHIRT_CENTRE = (_CX, 169.0)  # shoulders: an ellipse on the canonical canvas
_SHIRT_RADII = (78.0, 31.0)


def _expressions(seed: int, stream: int, index: int) -> list[tuple[float, float, float]]:
    """Neutral plus a few fixed variations (smile/frown, eye openness, brow raise)."""
    rng = _rng(seed, _S_VARIANTS, stream, index)
    out = [(0.0, 1.0, 0.0)]
    for _ in range(_EXPRESSIONS - 1):
        out.append((float(rng.uniform(-2.5, 3.0)), float(rng.uniform(0.45, 1.15)), float(rng.uniform(-1.2, 2.0))))
    return out


# ---------------------------------------------------------------------------------------
# Per-image nuisance
# ---------------------------------------------------------------------------------------


def _background(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """A per-image background ``[3, S, S]`` in [0, 1]: flat, gradient, blotchy or striped.

    Drawn fresh for every image, in random colours, so that it can never identify the
    person. Channel-first, so per-channel arithmetic runs over whole planes.
    """
    size = xx.shape[0]
    kind = int(rng.integers(4))
    c0 = rng.uniform(0, 1, 3).astype(np.float32)[:, None, None]
    if kind == 0:
        return np.broadcast_to(c0, (3, size, size))
    if kind == 2:
        cells = int(rng.integers(2, 7))
        grid = (0.5 * rng.uniform(0, 1, (cells, cells, 3)) + 0.5 * c0[:, 0, 0]) * 255
        small = Image.fromarray(grid.astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(small).transpose(2, 0, 1) * np.float32(1 / 255)
    c1 = rng.uniform(0, 1, 3).astype(np.float32)[:, None, None]
    a = rng.uniform(0, 2 * np.pi)
    proj = np.float32(np.cos(a)) * xx + np.float32(np.sin(a)) * yy
    if kind == 1:
        t = np.clip(proj + np.float32(0.5 - (np.cos(a) + np.sin(a)) * 0.5), 0, 1)
    else:
        t = 0.5 + 0.5 * np.sin(np.float32(2 * np.pi * rng.uniform(3, 12)) * proj)
    return c0 + (c1 - c0) * t


def _occlude(img: np.ndarray, rng: np.random.Generator, cx: float, cy: float,
             xx: np.ndarray, yy: np.ndarray) -> None:
    """A patch over part of the face (hand, mask, scarf, object) in random colour/texture."""
    size = xx.shape[0]
    w = rng.uniform(0.16, 0.4)
    h = rng.uniform(0.11, 0.3)
    x0 = cx / size + rng.uniform(-0.3, 0.3) - w / 2
    y0 = cy / size + rng.uniform(-0.27, 0.3) - h / 2
    if rng.random() < 0.5:
        mask = (xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)
    else:
        mask = ((xx - x0 - w / 2) / (w / 2)) ** 2 + ((yy - y0 - h / 2) / (h / 2)) ** 2 <= 1
    colour = rng.uniform(0, 255, 3)
    if rng.random() < 0.5:
        texture = 0.75 + 0.5 * rng.random((int(mask.sum()), 1))
        img[mask] = np.clip(colour * texture, 0, 255).astype(np.uint8)
    else:
        img[mask] = colour.astype(np.uint8)


class _IdentityRenderer:
    """Renders one identity's images: canonical heads once, then cheap per-image warps."""

    def __init__(self, params: dict, size: int, expressions: Sequence[tuple[float, float, float]]) -> None:
        self.size = size
        self.canonical = _render_canonical(params, size, expressions)
        grid = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.yy, self.xx = np.meshgrid(grid, grid, indexing="ij")
        self.ramp_x = (self.xx - 0.5) * 2
        self.ramp_y = (self.yy - 0.5) * 2
        self._noise = _noise_bank(size)

    def _pose(self, rng: np.random.Generator) -> tuple[tuple, float, float]:
        """Inverse affine (output -> canonical) for shift, rotation, scale and a yaw-like squash."""
        unit = self.size / _WINDOW
        angle = math.radians(float(np.clip(rng.normal(0, 9), -22, 22)))
        scale = rng.uniform(0.88, 1.1)
        squash = rng.uniform(0.86, 1.04)
        dx = float(np.clip(rng.normal(0, 4), -10, 10)) * unit
        dy = float(np.clip(rng.normal(0, 4), -8, 8)) * unit
        margin = (_CANVAS - _WINDOW) / 2
        cx_in, cy_in = _CX * unit, _CY * unit
        cx_out, cy_out = (_CX - margin) * unit + dx, (_CY - margin) * unit + dy
        c, s = math.cos(angle), math.sin(angle)
        a, b = c / (scale * squash), s / (scale * squash)
        d, e = -s / scale, c / scale
        matrix = (a, b, cx_in - a * cx_out - b * cy_out, d, e, cy_in - d * cx_out - e * cy_out)
        return matrix, cx_out, cy_out

    def _shoulders(self, matrix: tuple) -> np.ndarray:
        """Soft mask ``[S, S]`` of the shoulders under the head's pose.

        The shoulders are an ellipse on the canonical canvas; mapping the output grid
        through the inverse affine and testing the ellipse analytically is much cheaper
        than warping a second image.
        """
        unit = self.size / _WINDOW
        a, b, c, d, e, f = matrix
        px, py = self.xx * self.size, self.yy * self.size
        u = (a * px + b * py + c) / unit - _SHIRT_CENTRE[0]
        v = (d * px + e * py + f) / unit - _SHIRT_CENTRE[1]
        r = np.sqrt((u / _SHIRT_RADII[0]) ** 2 + (v / _SHIRT_RADII[1]) ** 2)
        edge = _SHIRT_RADII[1] / unit  # about one output pixel of soft edge
        return np.clip((1 - r) * np.float32(edge) + np.float32(0.5), 0, 1)

    def render(self, rng: np.random.Generator) -> np.ndarray:
        """One image: posed head over a fresh scene, then light, occlusion, blur, noise.

        Arithmetic runs channel-first so per-channel factors apply to whole planes.
        """
        size = self.size
        canonical = self.canonical[int(rng.integers(len(self.canonical)))]
        matrix, cx_out, cy_out = self._pose(rng)
        head = canonical.transform((size, size), Image.Transform.AFFINE, matrix,
                                   resample=Image.Resampling.BILINEAR)
        head_p = np.asarray(head).transpose(2, 0, 1).astype(np.float32)  # premultiplied, 0..255
        scene = _background(rng, self.xx, self.yy)
        shirt = rng.uniform(0, 1, 3).astype(np.float32)[:, None, None]
        scene = scene + (shirt - scene) * self._shoulders(matrix)
        img = scene * (np.float32(255) - head_p[3])
        img += head_p[:3]
        # light: a directional gain ramp, then brightness, contrast and colour cast per channel
        g_angle = rng.uniform(0, 2 * np.pi)
        g_amp = rng.uniform(0, 0.6)
        gain = 1 + np.float32(g_amp * np.cos(g_angle)) * self.ramp_x + np.float32(g_amp * np.sin(g_angle)) * self.ramp_y
        brightness = rng.uniform(0.65, 1.25)
        contrast = rng.uniform(0.65, 1.2)
        cast = 1 + rng.normal(0, 0.07, 3)
        scale_c = (brightness * contrast * cast).astype(np.float32)[:, None, None]
        shift_c = (255 * 0.5 * (1 - contrast) * cast + 0.5).astype(np.float32)[:, None, None]
        img *= gain * scale_c
        img += shift_c
        np.clip(img, 0, 255, out=img)
        # a gamma-like tone curve, x + k x (1 - x) on [0, 1], costs far less than a power
        k = np.float32(rng.uniform(-0.3, 0.3) / 255)
        img += k * img * (np.float32(255) - img)
        arr = img.transpose(1, 2, 0).astype(np.uint8)
        if rng.random() < 0.3:
            _occlude(arr, rng, cx_out, cy_out, self.xx, self.yy)
        if rng.random() < 0.5:
            # blur as a camera at lower resolution would: down-sample, then back up
            low = max(8, int(round(size / rng.uniform(1.4, 3.2))))
            pixels = Image.fromarray(arr).resize((low, low), Image.Resampling.BILINEAR)
            arr = np.asarray(pixels.resize((size, size), Image.Resampling.BILINEAR))
        oy, ox = (int(v) for v in rng.integers(0, size, 2))
        out = self._noise[oy:oy + size, ox:ox + size] * np.float32(rng.uniform(1, 10))
        out += arr
        out += np.float32(0.5)
        np.clip(out, 0, 255, out=out)
        return out.astype(np.uint8)


_NOISE_BANKS: dict[int, np.ndarray] = {}


def _noise_bank(size: int) -> np.ndarray:
    """A fixed field of Gaussian pixel noise; images take random windows of it.

    Drawing fresh normals for every pixel of every image was the largest single cost of
    rendering; a window at a random offset is just as unrelated to identity.
    """
    bank = _NOISE_BANKS.get(size)
    if bank is None:
        bank = np.random.default_rng(0x5EED).standard_normal((2 * size, 2 * size, 3), dtype=np.float32)
        _NOISE_BANKS[size] = bank
    return bank


def render_identity_images(params: dict, rng: np.random.Generator, count: int, size: int = 112,
                           expressions: Optional[Sequence[tuple[float, float, float]]] = None) -> np.ndarray:
    """``count`` uint8 images ``[count, size, size, 3]`` of one identity.

    Images are drawn one after another from ``rng``, so asking for more images of an
    identity appends to the same sequence instead of changing the first ones.
    ``expressions`` defaults to a neutral face plus variations drawn from ``rng``.
    """
    if expressions is None:
        expressions = [(0.0, 1.0, 0.0)] + [
            (float(rng.uniform(-2.5, 3.0)), float(rng.uniform(0.45, 1.15)), float(rng.uniform(-1.2, 2.0)))
            for _ in range(_EXPRESSIONS - 1)]
    renderer = _IdentityRenderer(params, size, expressions)
    out = np.empty((int(count), size, size, 3), dtype=np.uint8)
    for i in range(int(count)):
        out[i] = renderer.render(rng)
    return out


# ---------------------------------------------------------------------------------------
# Labels: splits and flips (shared by the image and the embedding generators)
# ---------------------------------------------------------------------------------------


@dataclass
class _Labelling:
    """Per-sample truth and given labels, in identity order (identity, then image index)."""

    identity: np.ndarray  # int64 [N] true identity of each sample
    within: np.ndarray  # int64 [N] image index inside its identity
    true_label: np.ndarray  # int64 [N] label after splitting, before flipping
    label: np.ndarray  # int64 [N] label written to the dataset
    flipped: np.ndarray  # int64 [F] sample indices (identity order) whose label was flipped
    split_pairs: np.ndarray  # int64 [S, 2] (original label, extra label)
    num_classes: int

    def record_order(self) -> np.ndarray:
        """Samples grouped by given label ascending, identity order kept inside a label."""
        return np.argsort(self.label, kind="stable")


def _assign_labels(counts: np.ndarray, split: float, flip_noise: float, seed: int) -> _Labelling:
    """Inject split identities and label flips, recording exactly what was done.

    Split identities keep their label for part of their images and give the rest a new
    label ``identities + j``: one person under two labels. Flips give a sample a label of
    another identity, never one of its own person's labels. Every label keeps at least one
    correctly labelled sample so that no class ends up empty. Flipped samples are the
    ones with the smallest random priority, so raising ``flip_noise`` only adds flips.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n_id = len(counts)
    total = int(counts.sum())
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    identity = np.repeat(np.arange(n_id, dtype=np.int64), counts)
    within = np.arange(total, dtype=np.int64) - np.repeat(starts, counts)

    n_split = int(round(split * n_id))
    rng = _rng(seed, _S_SPLIT)
    eligible = np.flatnonzero(counts >= 4)
    if len(eligible) < n_split:
        eligible = np.flatnonzero(counts >= 2)
    if n_split > len(eligible):
        raise ConfigError(
            f"split={split} asks for {n_split} split identities but only {len(eligible)} identities "
            "have the two or more images a split needs")
    chosen = np.sort(rng.permutation(eligible)[:n_split]).astype(np.int64)
    frac = rng.uniform(0.3, 0.7, n_split)
    n_extra = np.clip(np.round(counts[chosen] * frac), 1, counts[chosen] - 1).astype(np.int64)
    extra_of = np.full(n_id, -1, dtype=np.int64)
    extra_of[chosen] = n_id + np.arange(n_split, dtype=np.int64)
    first_extra = counts.copy()  # image index from which an identity's images move to its extra label
    first_extra[chosen] = counts[chosen] - n_extra
    true_label = identity.copy()
    moved = within >= first_extra[identity]
    true_label[moved] = extra_of[identity[moved]]
    num_classes = n_id + n_split

    n_flip = int(round(flip_noise * total))
    flipped = np.zeros(0, dtype=np.int64)
    label = true_label.copy()
    if n_flip:
        anchor = (within == 0) | (within == first_extra[identity])
        candidates = np.flatnonzero(~anchor)
        if n_flip > len(candidates):
            raise ConfigError(
                f"flip_noise={flip_noise} asks for {n_flip} flipped samples but only {len(candidates)} can be "
                "flipped while every label keeps one correct sample")
        frng = _rng(seed, _S_FLIP)
        priority = frng.random(total)
        offset = frng.integers(0, max(num_classes - 1, 1), total)
        pick = candidates[np.argpartition(priority[candidates], n_flip - 1)[:n_flip]] if n_flip < len(
            candidates) else candidates
        flipped = np.sort(pick)
        own = true_label[flipped]
        new = offset[flipped] + (offset[flipped] >= own)
        sibling = np.where(own == identity[flipped], extra_of[identity[flipped]], identity[flipped])
        clash = np.flatnonzero(new == sibling)
        retry = _rng(seed, _S_FLIP, 1)
        while len(clash):
            r = retry.integers(0, num_classes - 1, len(clash))
            new[clash] = r + (r >= own[clash])
            clash = clash[new[clash] == sibling[clash]]
        label[flipped] = new
    split_pairs = np.stack([chosen, extra_of[chosen]], axis=1) if n_split else np.zeros((0, 2), dtype=np.int64)
    return _Labelling(identity, within, true_label, label, flipped, split_pairs, num_classes)


def _label_identity(lab: _Labelling) -> np.ndarray:
    """True identity behind every label (extra labels point at the split person)."""
    out = np.arange(lab.num_classes, dtype=np.int64)
    if len(lab.split_pairs):
        out[lab.split_pairs[:, 1]] = lab.split_pairs[:, 0]
    return out


# ---------------------------------------------------------------------------------------
# Verification pairs
# ---------------------------------------------------------------------------------------


def _verification_pairs(counts: Sequence[int], n_pairs: int,
                        rng: np.random.Generator) -> tuple[list[tuple[int, int, int, int]], list[bool]]:
    """Balanced, distinct pairs ``(identity_a, image_a, identity_b, image_b)``.

    Positives pick an identity uniformly (as LFW-style protocols do, so large identities do
    not dominate) and two different images of it; negatives pick two different
    identities. Halves are equal; fewer pairs are returned when the identities cannot
    supply enough distinct ones.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n_id = len(counts)
    multi = np.flatnonzero(counts >= 2)
    pos_available = int((counts * (counts - 1) // 2).sum())
    neg_available = int((counts.sum() ** 2 - (counts ** 2).sum()) // 2)
    half = min(n_pairs // 2, pos_available, neg_available)
    positives: dict[tuple[int, int, int, int], None] = {}
    if half > pos_available // 2:
        every = [(int(i), a, int(i), b) for i in multi for a in range(counts[i]) for b in range(a + 1, counts[i])]
        for j in np.sort(rng.choice(len(every), half, replace=False)):
            positives[every[int(j)]] = None
    while len(positives) < half:
        i = int(multi[rng.integers(len(multi))])
        a, b = sorted(int(x) for x in rng.choice(int(counts[i]), 2, replace=False))
        positives.setdefault((i, a, i, b), None)
    negatives: dict[tuple[int, int, int, int], None] = {}
    while len(negatives) < half:
        i, j = sorted(int(x) for x in rng.choice(n_id, 2, replace=False))
        negatives.setdefault((i, int(rng.integers(counts[i])), j, int(rng.integers(counts[j]))), None)
    pairs = list(positives) + list(negatives)
    same = [True] * half + [False] * half
    order = rng.permutation(len(pairs))
    return [pairs[int(k)] for k in order], [same[int(k)] for k in order]


# ---------------------------------------------------------------------------------------
# The rendered dataset
# ---------------------------------------------------------------------------------------


def _identity_images_job(job: tuple) -> list[bytes]:
    """Render and JPEG-encode one identity's images (runs in a worker process)."""
    params, seed, params_stream, images_stream, index, count, size, quality = job
    renderer = _IdentityRenderer(params, size, _expressions(seed, params_stream, index))
    rng = _rng(seed, images_stream, index)
    return [encode_image(renderer.render(rng), quality) for _ in range(count)]


def _render_all(jobs: list[tuple], workers: int, progress: bool, desc: str) -> list[list[bytes]]:
    """Run identity jobs in order, on ``workers`` processes when that pays off.

    Rendering holds the GIL too much for threads to help, so it uses processes. They are
    forked where the platform allows (a spawned worker would spend seconds importing
    torch through ``core.data``) and before the progress bar starts its monitor thread;
    workers touch only numpy and PIL, never torch or OpenMP. Results come back in job
    order, so the output does not depend on the number of workers.
    """
    results: list[list[bytes]] = []
    if workers <= 1 or len(jobs) < 8:
        with tqdm(total=len(jobs), desc=desc, unit="id", disable=not progress) as bar:
            for job in jobs:
                results.append(_identity_images_job(job))
                bar.update(1)
        return results
    import multiprocessing as mp

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(min(workers, len(jobs))) as pool:
        with tqdm(total=len(jobs), desc=desc, unit="id", disable=not progress) as bar:
            for images in pool.imap(_identity_images_job, jobs, chunksize=4):
                results.append(images)
                bar.update(1)
    return results


def _default_workers() -> int:
    try:
        return max(1, min(len(os.sched_getaffinity(0)), 8))
    except AttributeError:  # platforms without sched_getaffinity
        return max(1, min(os.cpu_count() or 1, 8))


def _check_destination(out_dir: Path) -> None:
    """Refuse to replace anything but an earlier synthetic dataset (its own files only) or an empty folder."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise DataError(f"{out_dir}: exists and is not a directory; cannot write a synthetic dataset there")
        if any(out_dir.iterdir()) and not (out_dir / GROUND_TRUTH_FILE).is_file():
            raise DataError(
                f"{out_dir}: directory is not empty and holds no {GROUND_TRUTH_FILE}; refusing to replace "
                "data that is not a synthetic dataset")
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in _GENERATED_FILES)
        if foreign:
            raise DataError(
                f"{out_dir}: besides an earlier synthetic dataset it holds {', '.join(foreign[:5])}"
                f"{' …' if len(foreign) > 5 else ''}, which regenerating would delete; move them or choose "
                "another --out")


def _install(tmp: Path, out_dir: Path) -> None:
    """Swap the finished temporary folder into place, so readers never see half a dataset.

    Two runs may generate the same default set at once; if another one has installed a
    complete dataset meanwhile, ours is dropped instead of failing (same config, same bytes).
    """
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        old.rmdir()
        os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.rename(tmp, out_dir)
    except OSError:
        if not (out_dir / GROUND_TRUTH_FILE).is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _preview(images: list[list[bytes]], counts: np.ndarray, path: Path, rows: int = 6, cols: int = 8) -> None:
    """A grid of a few identities (rows) by several of their images (columns)."""
    chosen = [i for i in range(len(counts)) if counts[i] >= cols][:rows]
    if len(chosen) < rows:
        chosen = list(np.argsort(-counts, kind="stable")[:rows])
    tiles = []
    for i in chosen:
        row = [decode_image(b, f"preview identity {i}") for b in images[int(i)][:cols]]
        size = row[0].shape[0]
        while len(row) < cols:
            row.append(np.full((size, size, 3), 255, dtype=np.uint8))
        tiles.append(row)
    size = tiles[0][0].shape[0]
    gap = 2
    grid = np.full((len(tiles) * (size + gap) - gap, cols * (size + gap) - gap, 3), 255, dtype=np.uint8)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            grid[r * (size + gap):r * (size + gap) + size, c * (size + gap):c * (size + gap) + size] = tile
    Image.fromarray(grid).save(path, format="PNG")


def _json_ready(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _pairs_record(pairs: list[tuple[int, int, int, int]], issame: list[bool], offset: int) -> dict:
    return {"identity_a": [p[0] + offset for p in pairs], "image_a": [p[1] for p in pairs],
            "identity_b": [p[2] + offset for p in pairs], "image_b": [p[3] for p in pairs],
            "issame": list(issame)}


def make_synthetic_dataset(out_dir: str | Path, config: SyntheticConfig, progress: bool = True,
                           workers: Optional[int] = None) -> dict:
    """Render the dataset into ``out_dir``; returns a summary of what was written.

    Writes ``train.rec``/``train.idx``/``property`` (insightface layout), ``val.bin``,
    ``val_tail.bin`` when enough held-out identities have few images, ``ground_truth.json``
    and ``preview.png``. The folder is built beside ``out_dir`` and renamed into place at
    the end, so an interrupted run never leaves something that looks complete. The
    output is byte-identical for a given config whatever ``workers`` is.
    """
    config.validate()
    out_dir = Path(out_dir)
    _check_destination(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    workers = _default_workers() if workers is None else max(1, int(workers))
    started = time.perf_counter()
    seed, size = config.seed, config.image_size
    n_id, n_held = config.identities, config.heldout_identities

    counts = long_tail_counts(n_id, config.min_images, config.max_images, config.zipf_exponent,
                              _rng(seed, _S_TRAIN_COUNTS))
    held_counts = long_tail_counts(n_held, config.min_images, config.max_images, config.zipf_exponent,
                                   _rng(seed, _S_HELDOUT_COUNTS))
    params = [draw_identity_params(_rng(seed, _S_TRAIN_PARAMS, i)) for i in range(n_id)]
    held_params = [draw_identity_params(_rng(seed, _S_HELDOUT_PARAMS, h)) for h in range(n_held)]
    if n_held and not np.any(held_counts >= 2):
        raise ConfigError(
            f"synthetic: no held-out identity drew two images (min_images={config.min_images}, "
            f"heldout_identities={n_held}), so val.bin could hold no positive pairs")
    lab = _assign_labels(counts, config.split, config.flip_noise, seed)

    jobs = [(params[i], seed, _S_TRAIN_PARAMS, _S_TRAIN_IMAGES, i, int(counts[i]), size, config.jpeg_quality)
            for i in range(n_id)]
    jobs += [(held_params[h], seed, _S_HELDOUT_PARAMS, _S_HELDOUT_IMAGES, h, int(held_counts[h]), size,
              config.jpeg_quality) for h in range(n_held)]

    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        rendered = _render_all(jobs, workers, progress, desc="synthetic identities")
        train_images, held_images = rendered[:n_id], rendered[n_id:]

        order = lab.record_order()
        flat = [img for images in train_images for img in images]
        samples = ((int(lab.label[j]), flat[j]) for j in order)
        num_images = write_insightface_rec(tmp, samples, lab.num_classes, image_size=(size, size))
        if num_images != len(order):
            raise DataError(f"{tmp}: wrote {num_images} images, expected {len(order)}")
        key_of = np.empty(len(order), dtype=np.int64)
        key_of[order] = np.arange(1, len(order) + 1)

        val_info, tail_info = None, None
        if n_held:
            pairs, issame = _verification_pairs(held_counts, config.val_pairs, _rng(seed, _S_VAL))
            write_verification_bin(
                tmp / "val.bin", [x for i, a, j, b in pairs for x in (held_images[i][a], held_images[j][b])], issame)
            val_info = {"file": "val.bin", "pairs": len(pairs), "positives": int(sum(issame)),
                        **_pairs_record(pairs, issame, n_id)}
            tail_ids = np.flatnonzero(held_counts <= config.tail_max_images)
            if len(tail_ids) >= config.tail_min_identities:
                tpairs, tsame = _verification_pairs(held_counts[tail_ids], config.val_pairs,
                                                    _rng(seed, _S_VAL_TAIL))
                tpairs = [(int(tail_ids[i]), a, int(tail_ids[j]), b) for i, a, j, b in tpairs]
                if tpairs:
                    write_verification_bin(
                        tmp / "val_tail.bin",
                        [x for i, a, j, b in tpairs for x in (held_images[i][a], held_images[j][b])], tsame)
                    tail_info = {"file": "val_tail.bin", "pairs": len(tpairs), "positives": int(sum(tsame)),
                                 "identities": (tail_ids + n_id).tolist(), **_pairs_record(tpairs, tsame, n_id)}

        _preview(train_images, counts, tmp / PREVIEW_FILE)
        label_identity = _label_identity(lab)
        per_label = np.bincount(lab.label, minlength=lab.num_classes)
        ground_truth = {
            "format": _FORMAT,
            "kind": "images",
            "seed": seed,
            "config": asdict(config),
            "counts": {
                "num_images": int(len(order)),
                "num_classes": int(lab.num_classes),
                "num_identities": n_id,
                "num_flipped": int(len(lab.flipped)),
                "num_split_pairs": int(len(lab.split_pairs)),
                "num_heldout_identities": n_held,
                "images_per_identity": counts,
                "images_per_label": per_label,
            },
            "label_identity": label_identity,
            "split_pairs": lab.split_pairs,
            "flipped": {
                "key": key_of[lab.flipped],
                "label": lab.label[lab.flipped],
                "true_label": lab.true_label[lab.flipped],
                "identity": lab.identity[lab.flipped],
            },
            # per record, indexed by key - 1: the person and the correct label behind each image
            "samples": {
                "identity": lab.identity[order],
                "true_label": lab.true_label[order],
                "image_index": lab.within[order],
            },
            "identities": [{"id": i, "role": "train", "num_images": int(counts[i]), "params": params[i]}
                           for i in range(n_id)]
            + [{"id": n_id + h, "role": "heldout", "num_images": int(held_counts[h]), "params": held_params[h]}
               for h in range(n_held)],
            "heldout": {
                "identities": list(range(n_id, n_id + n_held)),
                "images_per_identity": held_counts,
                "tail_max_images": config.tail_max_images,
                "tail_identities": (np.flatnonzero(held_counts <= config.tail_max_images) + n_id),
            },
            "val": val_info,
            "val_tail": tail_info,
        }
        with open(tmp / GROUND_TRUTH_FILE, "w", encoding="utf-8") as fh:
            json.dump(_json_ready(ground_truth), fh, separators=(",", ":"))
        _install(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    paths = {"train_rec": out_dir / "train.rec", "train_idx": out_dir / "train.idx",
             "property": out_dir / "property", "ground_truth": out_dir / GROUND_TRUTH_FILE,
             "preview": out_dir / PREVIEW_FILE}
    if val_info:
        paths["val"] = out_dir / "val.bin"
    if tail_info:
        paths["val_tail"] = out_dir / "val_tail.bin"
    return {
        "root": str(out_dir),
        "num_images": int(len(order)),
        "num_classes": int(lab.num_classes),
        "num_identities": n_id,
        "num_flipped": int(len(lab.flipped)),
        "num_split_pairs": int(len(lab.split_pairs)),
        "num_heldout_identities": n_held,
        "val_pairs": val_info["pairs"] if val_info else 0,
        "val_tail_pairs": tail_info["pairs"] if tail_info else 0,
        "seconds": round(time.perf_counter() - started, 2),
        "paths": {k: str(v) for k, v in paths.items()},
    }


def load_ground_truth(root: str | Path) -> Optional[dict]:
    """The ground truth saved beside a synthetic dataset, or None for real data.

    Analysis code calls this on any dataset root to decide whether precision/recall
    against known flips and splits can be reported. Layout (labels are 0-based, record
    keys 1-based as in train.rec):

    * ``config``, ``seed``: how to regenerate the data exactly;
    * ``counts``: num_images, num_classes, num_identities, num_flipped, num_split_pairs,
      num_heldout_identities, images_per_identity, images_per_label;
    * ``label_identity[label]``: the person behind each label;
    * ``split_pairs``: ``[original_label, extra_label]`` pairs that are one person;
    * ``flipped``: columns ``key``, ``label`` (given), ``true_label``, ``identity``;
    * ``samples``: columns ``identity``, ``true_label``, ``image_index`` per record
      (row ``key - 1``);
    * ``identities``: id, role (train/heldout), num_images and appearance params;
    * ``heldout``: held-out identity ids, their image counts and the tail subset;
    * ``val`` / ``val_tail``: the pairs of ``val.bin`` / ``val_tail.bin`` (identity and
      image index of both sides, issame), or None when not written.
    """
    path = Path(root) / GROUND_TRUTH_FILE
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read ground truth ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise DataError(f"{path}: not a facequeue synthetic ground truth (expected format {_FORMAT!r})")
    return data


# ---------------------------------------------------------------------------------------
# Embeddings drawn directly: a long-tailed mixture on the unit hypersphere
# ---------------------------------------------------------------------------------------

_CENTER_CHUNK = 8192  # rows per random stream; fixed so results do not depend on threads


@dataclass
class SyntheticEmbeddingConfig:
    """Options of the embedding mixture; the same label-noise knobs as the image set.

    ``noise_sigma`` is the norm of the noise relative to the (unit) center: a sample is
    ``normalise(center + noise_sigma * g / sqrt(dim))`` with ``g ~ N(0, I)``, so its cosine
    to its center is about ``1 / sqrt(1 + noise_sigma**2)`` whatever ``dim`` is.
    ``clusters > 0`` groups centers around that many random directions (spread
    ``cluster_sigma``, same convention), which creates near-duplicate classes as real
    identity sets have.
    """

    num_classes: int = 10_000
    dim: int = 512
    min_images: int = 2
    max_images: int = 80
    zipf_exponent: float = 1.25
    flip_noise: float = 0.0
    split: float = 0.0
    noise_sigma: float = 0.6
    clusters: int = 0
    cluster_sigma: float = 0.8
    seed: int = 0

    def validate(self) -> None:
        """Reject options that would produce a silently wrong mixture."""
        if self.num_classes < 2:
            raise ConfigError(f"embeddings.num_classes must be >= 2, got {self.num_classes}")
        if self.dim < 2:
            raise ConfigError(f"embeddings.dim must be >= 2, got {self.dim}")
        _validate_long_tail("embeddings", self.min_images, self.max_images, self.zipf_exponent)
        _validate_noise("embeddings", self.flip_noise, self.split)
        if not (math.isfinite(self.noise_sigma) and self.noise_sigma >= 0):
            raise ConfigError(f"embeddings.noise_sigma must be >= 0, got {self.noise_sigma}")
        if self.clusters < 0:
            raise ConfigError(f"embeddings.clusters must be >= 0, got {self.clusters}")
        if not (math.isfinite(self.cluster_sigma) and self.cluster_sigma >= 0):
            raise ConfigError(f"embeddings.cluster_sigma must be >= 0, got {self.cluster_sigma}")


def _normalise_rows(block: np.ndarray) -> None:
    """L2-normalise rows in place (zero rows stay zero instead of becoming NaN)."""
    norms = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float32))
    np.maximum(norms, np.float32(1e-12), out=norms)
    block /= norms[:, None]


def _parallel_chunks(n_rows: int, fn, workers: Optional[int] = None) -> None:
    """Run ``fn(chunk_index, start, stop)`` over fixed-size row chunks on threads.

    numpy's generators and ufuncs release the GIL, so threads scale; chunk boundaries are
    fixed so the numbers never depend on how many threads ran.
    """
    from concurrent.futures import ThreadPoolExecutor

    chunks = [(j, s, min(s + _CENTER_CHUNK, n_rows)) for j, s in enumerate(range(0, n_rows, _CENTER_CHUNK))]
    workers = _default_workers() if workers is None else max(1, int(workers))
    if workers == 1 or len(chunks) == 1:
        for c in chunks:
            fn(*c)
        return
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(lambda c: fn(*c), chunks):
            pass


def _centers_and_clusters(num_classes: int, dim: int, seed: int, clusters: int, cluster_sigma: float,
                          dtype: Any) -> tuple[np.ndarray, Optional[np.ndarray]]:
    out = np.empty((int(num_classes), int(dim)), dtype=dtype)
    means = None
    assignment = None
    if clusters > 0:
        means = np.empty((int(clusters), int(dim)), dtype=np.float32)
        for j, s in enumerate(range(0, clusters, _CENTER_CHUNK)):
            block = means[s:s + _CENTER_CHUNK]
            _rng(seed, _S_CLUSTERS, j).standard_normal(out=block, dtype=np.float32)
            _normalise_rows(block)
        assignment = np.empty(int(num_classes), dtype=np.int64)
    scale = np.float32(cluster_sigma / math.sqrt(dim))
    direct = np.dtype(dtype) == np.float32

    def fill(j: int, start: int, stop: int) -> None:
        rng = _rng(seed, _S_CENTERS, j)
        block = out[start:stop] if direct else np.empty((stop - start, dim), dtype=np.float32)
        if means is not None:
            ids = rng.integers(0, clusters, stop - start)
            assignment[start:stop] = ids
            rng.standard_normal(out=block, dtype=np.float32)
            block *= scale
            block += means[ids]
        else:
            rng.standard_normal(out=block, dtype=np.float32)
        _normalise_rows(block)
        if not direct:
            out[start:stop] = block

    _parallel_chunks(int(num_classes), fill)
    return out, assignment


def class_centers(num_classes: int, dim: int, seed: int, clusters: int = 0, dtype: Any = np.float32,
                  cluster_sigma: float = 0.8) -> np.ndarray:
    """Random unit class centers ``[num_classes, dim]``, optionally clustered.

    Built in fixed chunks on all cores, in place, so 1M x 512 float32 costs one pass over
    its 2 GB; the values depend only on ``(seed, dim, clusters, cluster_sigma)`` and the
    first rows stay the same when ``num_classes`` grows.
    """
    if num_classes < 1 or dim < 1:
        raise ConfigError(f"class_centers: num_classes and dim must be >= 1, got {num_classes} and {dim}")
    return _centers_and_clusters(num_classes, dim, seed, clusters, cluster_sigma, dtype)[0]


def make_synthetic_embeddings(config: SyntheticEmbeddingConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    """Embeddings ``float32 [N, D]``, given labels ``int64 [N]`` and their ground truth.

    For analysis tests and head-only experiments of small to medium size (everything is
    held in memory). Rows are in identity order (identity, then sample index), so the
    samples stay the same when only ``flip_noise`` or ``split`` change. The ground truth
    has the same layout as the image dataset's (see ``load_ground_truth``), with ``index``
    (row) in place of ``key``; per-sample and per-class columns are numpy arrays rather
    than lists, ``identity_cluster`` gives each identity's cluster (None without clusters).
    """
    config.validate()
    seed, dim = config.seed, config.dim
    counts = long_tail_counts(config.num_classes, config.min_images, config.max_images, config.zipf_exponent,
                              _rng(seed, _S_EMB_COUNTS))
    centers, assignment = _centers_and_clusters(config.num_classes, dim, seed, config.clusters,
                                                config.cluster_sigma, np.float32)
    lab = _assign_labels(counts, config.split, config.flip_noise, seed)
    total = len(lab.identity)
    emb = np.empty((total, dim), dtype=np.float32)
    scale = np.float32(config.noise_sigma / math.sqrt(dim))

    def fill(j: int, start: int, stop: int) -> None:
        block = emb[start:stop]
        _rng(seed, _S_EMB_NOISE, j).standard_normal(out=block, dtype=np.float32)
        block *= scale
        block += centers[lab.identity[start:stop]]
        _normalise_rows(block)

    _parallel_chunks(total, fill)
    ground_truth = {
        "format": _FORMAT,
        "kind": "embeddings",
        "seed": seed,
        "config": asdict(config),
        "counts": {
            "num_images": int(total),
            "num_classes": int(lab.num_classes),
            "num_identities": int(config.num_classes),
            "num_flipped": int(len(lab.flipped)),
            "num_split_pairs": int(len(lab.split_pairs)),
            "images_per_identity": counts,
            "images_per_label": np.bincount(lab.label, minlength=lab.num_classes),
        },
        "label_identity": _label_identity(lab),
        "split_pairs": lab.split_pairs.tolist(),
        "flipped": {
            "index": lab.flipped,
            "label": lab.label[lab.flipped],
            "true_label": lab.true_label[lab.flipped],
            "identity": lab.identity[lab.flipped],
        },
        "samples": {"identity": lab.identity, "true_label": lab.true_label, "image_index": lab.within},
        "identity_cluster": assignment,
    }
    return emb, lab.label.copy(), ground_truth


def embedding_batches(num_classes: int, dim: int, batch_size: int, seed: int = 0, *,
                      noise_sigma: float = 0.6, min_images: int = 2, max_images: int = 80,
                      zipf_exponent: float = 1.25, flip_noise: float = 0.0, split: float = 0.0,
                      clusters: int = 0, cluster_sigma: float = 0.8, centers: Optional[np.ndarray] = None,
                      device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                      steps: Optional[int] = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (or ``steps``-long) stream of ``(embeddings [B, D], labels [B])`` on ``device``.

    Feeds head-only training-step benchmarks at millions of classes without a backbone or
    a dataset on disk: classes are drawn with the long-tailed frequencies that
    ``make_synthetic_embeddings`` would give them, and samples are generated on the device
    so that the stream costs no host-to-device traffic per step. Split classes put half
    their samples under an extra label ``num_classes + j``; a flip relabels a sample to a
    uniformly random other label. Labels range over ``num_classes + round(split *
    num_classes)``. Deterministic for a given seed on a given device.
    """
    if batch_size < 1:
        raise ConfigError(f"embedding_batches: batch_size must be >= 1, got {batch_size}")
    _validate_long_tail("embedding_batches", min_images, max_images, zipf_exponent)
    _validate_noise("embedding_batches", flip_noise, split)
    device = torch.device(device)
    counts = long_tail_counts(num_classes, min_images, max_images, zipf_exponent, _rng(seed, _S_EMB_COUNTS))
    if centers is None:
        centers = class_centers(num_classes, dim, seed, clusters=clusters, cluster_sigma=cluster_sigma)
    if tuple(centers.shape) != (num_classes, dim):
        raise ConfigError(f"embedding_batches: centers have shape {tuple(centers.shape)}, "
                          f"expected ({num_classes}, {dim})")
    table = torch.as_tensor(np.asarray(centers)).to(device=device, dtype=dtype)
    cdf = torch.as_tensor(np.cumsum(counts) / counts.sum(), dtype=torch.float64, device=device)
    n_split = int(round(split * num_classes))
    extra_of = torch.full((num_classes,), -1, dtype=torch.int64, device=device)
    if n_split:
        eligible = np.flatnonzero(counts >= 2)
        chosen = np.sort(_rng(seed, _S_SPLIT).permutation(eligible)[:n_split])
        extra_of[torch.as_tensor(chosen, device=device)] = torch.arange(
            num_classes, num_classes + len(chosen), device=device)
    num_labels = num_classes + n_split
    gen = torch.Generator(device=device)
    gen.manual_seed(int(np.random.SeedSequence([int(seed), _S_STREAM]).generate_state(1, np.uint64)[0] >> 1))
    scale = noise_sigma / math.sqrt(dim)
    step = 0
    while steps is None or step < steps:
        u = torch.rand(batch_size, generator=gen, device=device, dtype=torch.float64)
        cls = torch.searchsorted(cdf, u, right=True).clamp_(max=num_classes - 1)
        noise = torch.randn(batch_size, dim, generator=gen, device=device, dtype=dtype)
        emb = torch.nn.functional.normalize(table[cls] + scale * noise, dim=1)
        labels = cls.clone()
        if n_split:
            extra = extra_of[cls]
            move = (extra >= 0) & (torch.rand(batch_size, generator=gen, device=device) < 0.5)
            labels = torch.where(move, extra, labels)
        if flip_noise > 0:
            flip = torch.rand(batch_size, generator=gen, device=device) < flip_noise
            other = torch.randint(0, num_labels - 1, (batch_size,), generator=gen, device=device)
            other = other + (other >= labels).long()
            labels = torch.where(flip, other, labels)
        yield emb, labels
        step += 1
