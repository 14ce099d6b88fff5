"""A second appearance model: abstract badges in families of look-alikes.

Detection scores tuned on the face renderer alone would be tuned to it. This renderer
draws identities that share nothing with the faces but the camera nuisance (pose,
background, light, occlusion, blur and noise come from ``faces._IdentityRenderer``): a
body of some shape and colour carrying a few coloured parts. Identities come in families
of ``FAMILY_SIZE``: each member is its family's badge with its colours shifted, its parts
moved and resized, and one part drawn anew, so every identity has a few close look-alikes,
the hard negatives that label noise from "a similar person" needs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from core.data.synthetic.faces import _CANVAS, _CX, _CY, _SUPERSAMPLE, _WINDOW, _Painter
from core.data.synthetic.streams import _S_FAMILIES, _S_VARIANTS, _rng

FAMILY_SIZE = 4
PARTS = 5
_KINDS = ("ellipse", "rect", "triangle", "bar")
_VARIANTS = 3  # canonical poses of the parts per identity, as the faces have expressions


def _part(rng: np.random.Generator) -> dict[str, Any]:
    return {"kind": str(rng.choice(_KINDS)), "x": float(rng.uniform(-20, 20)), "y": float(rng.uniform(-24, 24)),
            "size": float(rng.uniform(4, 11)), "aspect": float(rng.uniform(0.5, 1.8)),
            "colour": [int(c) for c in rng.integers(0, 256, 3)]}


def _family_badge(rng: np.random.Generator) -> dict[str, Any]:
    return {"body": str(rng.choice(("ellipse", "rect", "diamond"))), "width": float(rng.uniform(26, 38)),
            "height": float(rng.uniform(32, 46)), "colour": [int(c) for c in rng.integers(30, 226, 3)],
            "rim": [int(c) for c in rng.integers(0, 256, 3)], "rim_width": float(rng.uniform(1.5, 5)),
            "parts": [_part(rng) for _ in range(PARTS)]}


def draw_badge_params(seed: int, stream: int, index: int) -> dict[str, Any]:
    """Identity ``index``'s badge: its family's, perturbed (colours ~20 levels, parts ~3 units, one part new)."""
    badge = _family_badge(_rng(seed, _S_FAMILIES, stream, index // FAMILY_SIZE))
    rng = _rng(seed, stream, index)

    def shift(colour: list[int]) -> list[int]:
        return [int(c) for c in np.clip(np.asarray(colour) + rng.normal(0, 20, 3), 0, 255)]

    badge["colour"], badge["rim"] = shift(badge["colour"]), shift(badge["rim"])
    badge["width"] *= float(rng.uniform(0.9, 1.1))
    badge["height"] *= float(rng.uniform(0.9, 1.1))
    for part in badge["parts"]:
        part["x"] += float(rng.normal(0, 3))
        part["y"] += float(rng.normal(0, 3))
        part["size"] *= float(rng.uniform(0.85, 1.15))
        part["colour"] = shift(part["colour"])
    badge["parts"][int(rng.integers(PARTS))] = _part(rng)
    badge["family"] = index // FAMILY_SIZE
    return badge


def _draw_part(pt: _Painter, part: dict[str, Any], dx: float, dy: float) -> None:
    x, y, r = _CX + part["x"] + dx, _CY + part["y"] + dy, part["size"]
    rx, ry = r * part["aspect"], r / part["aspect"]
    fill = tuple(part["colour"]) + (255,)
    if part["kind"] == "ellipse":
        pt.ellipse(x, y, rx, ry, fill=fill)
    elif part["kind"] == "rect":
        pt.rect(x - rx, y - ry, x + rx, y + ry, radius=1.0, fill=fill)
    elif part["kind"] == "triangle":
        pt.poly(np.array([[x, y - ry], [x + rx, y + ry], [x - rx, y + ry]]), fill)
    else:
        pt.line(np.array([[x - rx * 1.5, y], [x + rx * 1.5, y]]), fill, width=max(1.5, ry * 0.6))


def render_badge_canonical(params: dict[str, Any], size: int, seed: int, stream: int,
                           index: int) -> list[Image.Image]:
    """The badge in ``_VARIANTS`` part poses, as the premultiplied canonical canvases ``_IdentityRenderer`` warps."""
    scale = size / _WINDOW * _SUPERSAMPLE
    side = int(round(_CANVAS * size / _WINDOW))
    variants = _rng(seed, _S_VARIANTS, stream, index)
    out = []
    for variant in range(_VARIANTS):
        pt = _Painter(scale)
        w, h = params["width"], params["height"]
        body = tuple(params["colour"]) + (255,)
        rim = tuple(params["rim"]) + (255,)
        if params["body"] == "ellipse":
            pt.ellipse(_CX, _CY, w, h, fill=body, outline=rim, width=params["rim_width"])
        elif params["body"] == "rect":
            pt.rect(_CX - w, _CY - h, _CX + w, _CY + h, radius=6.0, fill=body, outline=rim,
                    width=params["rim_width"])
        else:
            pt.poly(np.array([[_CX, _CY - h], [_CX + w, _CY], [_CX, _CY + h], [_CX - w, _CY]]), rim)
            pt.poly(np.array([[_CX, _CY - h + 4], [_CX + w - 4, _CY], [_CX, _CY + h - 4], [_CX - w + 4, _CY]]), body)
        for part in params["parts"]:
            dx, dy = (0.0, 0.0) if variant == 0 else (float(variants.normal(0, 1.5)), float(variants.normal(0, 1.5)))
            _draw_part(pt, part, dx, dy)
        out.append(pt.image.convert("RGBa").resize((side, side), Image.Resampling.BOX))
    return out
