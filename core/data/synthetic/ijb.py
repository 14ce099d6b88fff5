"""A small set in IJB's published layout, rendered, with every answer known: the IJB protocol's test bed.

Each identity is rendered as aligned 112 x 112 faces in several media (a photo or a
video's frames), and each face is placed in a larger "loose crop" by a random similarity
transform (scale, rotation, shift). Its landmarks in the crop are ArcFace's template
moved by that transform, so aligning the crop by them recovers the rendered face. A
template mixes media of one identity, and every pair of templates is listed: same
identity or not. The files are those of IJB-C (``meta/ijbc_*.txt``, ``loose_crop/``);
``ijb_truth.json`` adds each template's identity.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.errors import ConfigError

# Templates of each identity, as the media they hold: two mix media, one is a single medium.
TEMPLATE_MEDIA = ((0, 1), (2,), (1, 3))
MEDIA_PER_IDENTITY = 4
CROP_SIZE = 144


@dataclass(frozen=True)
class IJBConfig:
    identities: int = 20
    frames_per_media: int = 2
    seed: int = 0
    name: str = "ijbc"


def crop_transform(rng: np.random.Generator) -> np.ndarray:
    """A random 2 x 3 similarity from aligned-face pixels to loose-crop pixels that keeps the face inside."""
    scale = rng.uniform(0.8, 1.15)
    angle = np.deg2rad(rng.uniform(-20, 20))
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shift = CROP_SIZE / 2 + rng.uniform(-8, 8, size=2) - rotation @ np.array([56.0, 56.0])
    return np.hstack([rotation, shift[:, None]])


def loose_crop(aligned: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """``aligned`` placed in a CROP_SIZE square by ``transform`` (grey around it), warped as alignment warps."""
    from core.ijb import warp_affine

    return warp_affine(aligned, transform, (CROP_SIZE, CROP_SIZE), fill=(128, 128, 128))


def make_ijb_set(out_dir: str | Path, config: IJBConfig = IJBConfig()) -> dict[str, Any]:
    """Write the set into ``out_dir`` (built beside it and renamed into place); returns its counts."""
    from core.data.synthetic.faces import draw_identity_params, render_identity_images
    from core.ijb import ARCFACE_LANDMARKS

    if config.identities < 2:
        raise ConfigError(f"--identities must be >= 2 (pairs of two people are needed), got {config.identities}")
    if config.frames_per_media < 1:
        raise ConfigError(f"--frames-per-media must be >= 1, got {config.frames_per_media}")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ConfigError(f"--out {out_dir}: already exists; choose a new directory")
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    if staging.exists():
        import shutil
        shutil.rmtree(staging)
    (staging / "loose_crop").mkdir(parents=True)
    (staging / "meta").mkdir()
    rng = np.random.default_rng(config.seed)
    faces, points, identity_of_template = [], [], {}
    image_number = 0
    template = 0
    for identity in range(config.identities):
        params = draw_identity_params(rng)
        media_images: list[list[str]] = []
        for medium in range(MEDIA_PER_IDENTITY):
            names = []
            for aligned in render_identity_images(params, rng, config.frames_per_media):
                image_number += 1
                name = f"{image_number}.jpg"
                transform = crop_transform(rng)
                Image.fromarray(loose_crop(aligned, transform)).save(staging / "loose_crop" / name, quality=95)
                landmarks = ARCFACE_LANDMARKS @ transform[:, :2].T + transform[:, 2]
                points.append((name, landmarks.ravel(), float(rng.uniform(0.6, 1.0))))
                names.append(name)
            media_images.append(names)
        for held in TEMPLATE_MEDIA:
            template += 1
            identity_of_template[template] = identity
            for medium in held:
                media_id = identity * MEDIA_PER_IDENTITY + medium + 1
                faces += [(name, template, media_id) for name in media_images[medium]]
    detector = {name: (landmarks, score) for name, landmarks, score in points}
    meta = staging / "meta"
    (meta / f"{config.name}_face_tid_mid.txt").write_text(
        "".join(f"{name} {tid} {mid}\n" for name, tid, mid in faces))
    (meta / f"{config.name}_name_5pts_score.txt").write_text("".join(
        f"{name} " + " ".join(f"{v:.2f}" for v in detector[name][0]) + f" {detector[name][1]:.4f}\n"
        for name, _, _ in faces))
    ids = sorted(identity_of_template)
    pairs = [(a, b, int(identity_of_template[a] == identity_of_template[b]))
             for position, a in enumerate(ids) for b in ids[position + 1:]]
    (meta / f"{config.name}_template_pair_label.txt").write_text("".join(f"{a} {b} {label}\n" for a, b, label in pairs))
    # 1:N: each identity's first template in one of two galleries, its others probes (half of them non-mated
    # for either gallery), listed one line per face as the published CSVs are.
    rows_of = {}
    for name, tid, _ in faces:
        rows_of.setdefault(tid, []).append(name)
    first_templates = {tid for tid in identity_of_template if (tid - 1) % len(TEMPLATE_MEDIA) == 0}
    lists = {"gallery_G1": [t for t in sorted(first_templates) if identity_of_template[t] % 2 == 0],
             "gallery_G2": [t for t in sorted(first_templates) if identity_of_template[t] % 2 == 1],
             "probe_mixed": [t for t in ids if t not in first_templates]}
    for listed, members in lists.items():
        (meta / f"{config.name}_1N_{listed}.csv").write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n" + "".join(
            f"{t},{identity_of_template[t]},{name}\n" for t in members for name in rows_of[t]))
    (staging / "ijb_truth.json").write_text(json.dumps({"seed": config.seed, "identity_of_template": {
        str(t): i for t, i in identity_of_template.items()}}, indent=1) + "\n")
    os.rename(staging, out_dir)
    return {"faces": len(faces), "images": image_number, "templates": template, "pairs": len(pairs),
            "positive_pairs": sum(label for _, _, label in pairs)}
