"""Face-like images of one identity: its appearance parameters and per-image nuisance.

What tells identities apart must live only in their appearance (face shape, skin tone,
hair, eyes, brows, nose, mouth, beard, glasses, marks), while every image adds nuisance
a model must learn to ignore (pose, lighting, background and clothing, occlusion, blur,
noise); this module draws the one and renders the other, and knows nothing of labels or
files.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from core.data.synthetic.streams import _S_VARIANTS, _rng

__all__ = ["draw_identity_params", "render_identity_images"]

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
    """Renders one identity's images: canonical heads once, then cheap per-image warps.

    ``canonical`` are premultiplied ``RGBa`` canvases of the 160-unit frame (any renderer's
    appearance: faces here, abstract badges in ``shapes``); the nuisance is the same for all.
    """

    def __init__(self, canonical: Sequence[Image.Image], size: int) -> None:
        self.size = size
        self.canonical = list(canonical)
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
    renderer = _IdentityRenderer(_render_canonical(params, size, expressions), size)
    out = np.empty((int(count), size, size, 3), dtype=np.uint8)
    for i in range(int(count)):
        out[i] = renderer.render(rng)
    return out
