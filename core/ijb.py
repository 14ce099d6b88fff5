"""IJB-B / IJB-C 1:1 verification as the papers compute it, over the published layout, in bounded memory.

The layout (``DIR`` as the benchmark is distributed, ``X`` being ``ijbb`` or ``ijbc``)::

    DIR/loose_crop/*.jpg                      the face crops
    DIR/meta/X_face_tid_mid.txt               image, template id, media id   (one line per face)
    DIR/meta/X_name_5pts_score.txt            image, 5 landmarks (x y x y ...), detector score
    DIR/meta/X_template_pair_label.txt        template 1, template 2, 1 if one person

The protocol of insightface's ``eval_ijbc.py``, which the Partial FC and ArcFace papers
report: each face aligned by a similarity transform of its 5 landmarks onto ArcFace's
112 x 112 template; its embedding plus its mirror image's; weighted by the detector score;
averaged within each media (video or photo) of a template, the media summed into the
template's feature; templates compared by cosine; TAR read off sklearn's ROC at the
FAR nearest each of 1e-6 ... 1e-1.

Nothing grows with the square of the set: image features go to a memory map, a
template's feature is accumulated image by image (each weighted by one over its media's
size), and pairs are scored in batches, so IJB-C's 469,375 faces and 15.6M pairs run
in about 2 GiB.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from core.errors import DataError

# ArcFace's five landmarks (eyes, nose tip, mouth corners) in a 112 x 112 aligned face.
ARCFACE_LANDMARKS = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                              [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
ALIGNED_SIZE = 112
FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
PAIR_BATCH = 262_144  # pairs scored at once: two [batch, D] float32 gathers, 1 GiB at D = 512
POOL_CHUNK = 65_536  # image features read from the memory map at once


@dataclass
class IJBMeta:
    """One IJB set's meta files, checked against each other and against its images."""

    name: str  # ijbb or ijbc
    root: Path
    images: list[str]  # loose_crop file names, one per face line
    templates: np.ndarray  # int64 [N]
    medias: np.ndarray  # int64 [N]
    landmarks: np.ndarray  # float64 [N, 5, 2]
    detector_scores: np.ndarray  # float32 [N]
    pairs: np.ndarray  # int64 [P, 2] template ids
    labels: np.ndarray  # int8 [P]


def read_ijb_meta(root: str | Path, check_images: bool = True) -> IJBMeta:
    """The meta files of ``root``; each problem is one error naming the file and line."""
    root = Path(root)
    meta = root / "meta"
    found = sorted(meta.glob("*_face_tid_mid.txt")) if meta.is_dir() else []
    if not found:
        raise DataError(f"--ijb {root}: no meta/ijbb_face_tid_mid.txt or meta/ijbc_face_tid_mid.txt (the IJB layout: "
                        "loose_crop/, meta/)")
    name = found[0].name[: -len("_face_tid_mid.txt")]
    faces = _read_columns(meta / f"{name}_face_tid_mid.txt", "sii", "image, template id, media id")
    points = _read_columns(meta / f"{name}_name_5pts_score.txt", "s" + "f" * 11,
                           "image, 10 landmark coordinates, detector score")
    pair_lines = _read_columns(meta / f"{name}_template_pair_label.txt", "iii", "template 1, template 2, label")
    images = faces[0].astype(str).tolist()
    if len(points[0]) != len(images):
        raise DataError(f"{meta / f'{name}_name_5pts_score.txt'}: {len(points[0])} lines, but "
                        f"{name}_face_tid_mid.txt has {len(images)}; they list the same faces line by line")
    mismatched = np.flatnonzero(points[0].astype(str) != faces[0].astype(str))
    if mismatched.size:
        line = int(mismatched[0]) + 1
        raise DataError(f"{meta / f'{name}_name_5pts_score.txt'} line {line}: names {points[0][line - 1]}, but line "
                        f"{line} of {name}_face_tid_mid.txt names {images[line - 1]}")
    templates, medias = faces[1], faces[2]
    coordinates = np.stack(points[1:11], axis=1)
    scores = points[11].astype(np.float32)
    pair_file = meta / f"{name}_template_pair_label.txt"
    pairs = np.stack(pair_lines[:2], axis=1)
    labels = pair_lines[2]
    bad_label = np.flatnonzero((labels != 0) & (labels != 1))
    if bad_label.size:
        raise DataError(f"{pair_file} line {bad_label[0] + 1}: label {labels[bad_label[0]]}, expected 0 or 1")
    known = np.unique(templates)
    missing = ~np.isin(pairs, known)
    if missing.any():
        line = int(np.flatnonzero(missing.any(1))[0])
        template = int(pairs[line][missing[line]][0])
        raise DataError(f"{pair_file} line {line + 1}: template {template} has no faces in {name}_face_tid_mid.txt "
                        "(a template with no media cannot be scored)")
    if check_images:
        crops = root / "loose_crop"
        for line, image in enumerate(images, 1):
            if not (crops / image).is_file():
                raise DataError(f"{meta / f'{name}_face_tid_mid.txt'} line {line}: {crops / image} not found")
    return IJBMeta(name, root, images, templates, medias, coordinates.reshape(-1, 5, 2), scores, pairs,
                   labels.astype(np.int8))


def _read_columns(path: Path, kinds: str, what: str) -> list[np.ndarray]:
    """The whitespace-separated columns of ``path``, one per letter of ``kinds`` (``s`` text, ``i`` whole
    number, ``f`` number), read by pandas' C parser (15.6M pair lines in seconds, as numbers, not strings); a
    line that does not fit is named."""
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{path}: not found (the IJB layout has it beside the other meta files)")
    types = {"s": str, "i": np.int64, "f": np.float64}
    try:
        table = pd.read_csv(path, sep=r"\s+", header=None, engine="c", names=range(len(kinds)),
                            dtype={column: types[kind] for column, kind in enumerate(kinds)})
        if not table.isna().any().any():
            return [table[column].to_numpy() for column in range(len(kinds))]
    except (ValueError, pd.errors.ParserError):
        pass
    with open(path, errors="replace") as handle:
        for line, text in enumerate(handle, 1):
            fields = text.split()
            if len(fields) != len(kinds):
                raise DataError(f"{path} line {line}: expected {len(kinds)} fields ({what}), got {len(fields)}: "
                                f"{text.strip()[:120]!r}")
            for field, kind in zip(fields, kinds):
                try:
                    types[kind](field)
                except ValueError:
                    raise DataError(f"{path} line {line}: {field!r} is not a "
                                    f"{'whole number' if kind == 'i' else 'number'} ({what})") from None
    raise DataError(f"{path}: cannot be read as {what}")


# -- alignment ------------------------------------------------------------------------------
def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2 x 3 similarity (rotation, uniform scale, translation; no reflection) that maps ``source`` points
    onto ``target`` points best in least squares (Umeyama 1991)."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    source_mean, target_mean = source.mean(0), target.mean(0)
    source_centered, target_centered = source - source_mean, target - target_mean
    covariance = target_centered.T @ source_centered / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rotation = u @ sign @ vt
    variance = (source_centered ** 2).sum() / len(source)
    scale = float(np.trace(np.diag(singular) @ sign) / variance)
    translation = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, translation[:, None]])


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """``image`` warped so that its 5 ``landmarks`` land on ArcFace's template: a ``size`` x ``size`` face."""
    from PIL import Image

    matrix = similarity_transform(landmarks, ARCFACE_LANDMARKS * (size / ALIGNED_SIZE))
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]  # PIL maps output pixels to input ones
    warped = Image.fromarray(np.asarray(image, dtype=np.uint8)).transform(
        (size, size), Image.Transform.AFFINE, tuple(inverse.ravel()), resample=Image.Resampling.BILINEAR)
    return np.asarray(warped)


class AlignedFaces(torch.utils.data.Dataset):
    """Each face line's crop, decoded, aligned and made a model input (decoding runs in DataLoader workers)."""

    def __init__(self, meta: IJBMeta, input_size: int) -> None:
        self.meta = meta
        self.input_size = input_size

    def __len__(self) -> int:
        return len(self.meta.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        from core.data.base import decode_image
        from core.data.transforms import to_model_input

        path = self.meta.root / "loose_crop" / self.meta.images[index]
        try:
            encoded = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror})") from exc
        aligned = align_face(decode_image(encoded, str(path)), self.meta.landmarks[index])
        return to_model_input(aligned, self.input_size)[0]


# -- the protocol -----------------------------------------------------------------------------
@torch.no_grad()
def face_features(network: torch.nn.Module, meta: IJBMeta, input_size: int, out: np.ndarray,
                  device: torch.device, batch_size: int = 128, workers: int = 2, progress: bool = True) -> np.ndarray:
    """Each face's embedding plus its mirror image's (not normalised: the norm is the protocol's quality
    weight), into ``out`` (a float32 ``[N, D]`` memory map)."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    loader = DataLoader(AlignedFaces(meta, input_size), batch_size=batch_size, num_workers=workers)
    start = 0
    for images in tqdm(loader, desc=f"{meta.name} faces", unit="batch", disable=not progress, mininterval=1.0):
        images = images.to(device)
        features = network(images) + network(torch.flip(images, dims=[-1]))
        out[start:start + len(features)] = features.float().cpu().numpy()
        start += len(features)
    return out


def template_features(features: np.ndarray, templates: np.ndarray, medias: np.ndarray,
                      weights: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """``(template ids, unit features [T, D])``: within a template, each media's faces averaged (each face
    times its ``weights``, the detector score), the media summed, the sum normalised.

    A face contributes ``weight / (faces of its media in its template)`` to its template's
    sum, which is that average without holding a feature per media.
    """
    templates, medias = np.asarray(templates, np.int64), np.asarray(medias, np.int64)
    template_ids, template_rows = np.unique(templates, return_inverse=True)
    _, media_rows, media_sizes = np.unique(np.stack([templates, medias], axis=1), axis=0, return_inverse=True,
                                           return_counts=True)
    share = 1.0 / media_sizes[media_rows.ravel()]
    if weights is not None:
        share = share * np.asarray(weights, np.float64)
    sums = torch.zeros(len(template_ids), features.shape[1], dtype=torch.float64)
    for start in range(0, len(features), POOL_CHUNK):
        stop = min(start + POOL_CHUNK, len(features))
        chunk = torch.from_numpy(np.asarray(features[start:stop], dtype=np.float64))
        chunk.mul_(torch.from_numpy(share[start:stop])[:, None])
        sums.index_add_(0, torch.from_numpy(template_rows[start:stop]), chunk)
    return template_ids, F.normalize(sums, dim=1).float().numpy()


def score_pairs(template_ids: np.ndarray, unit_features: np.ndarray, pairs: np.ndarray,
                batch: int = PAIR_BATCH) -> np.ndarray:
    """Cosine of each template pair, ``PAIR_BATCH`` pairs at a time."""
    rows = np.searchsorted(template_ids, pairs)
    features = torch.from_numpy(unit_features)
    scores = np.empty(len(pairs), dtype=np.float32)
    for start in range(0, len(pairs), batch):
        block = torch.from_numpy(rows[start:start + batch])
        scores[start:start + len(block)] = (features[block[:, 0]] * features[block[:, 1]]).sum(1).numpy()
    return scores


def tar_at_far(labels: np.ndarray, scores: np.ndarray, fars: Sequence[float] = FARS) -> dict[str, float]:
    """TAR at each FAR read off sklearn's ROC as insightface reads it, at the FPR nearest the FAR, with one
    difference: of the ROC points at that FPR, the highest TPR. insightface takes the first, the bottom of a
    vertical stretch of the curve, which reads 0 when no negative scores above the positives (a small or an
    easy set); on IJB-C's 15.6M pairs the two differ by at most one positive pair."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    result = {}
    for far in fars:
        distance = np.abs(fpr - far)
        result[f"{far:.0e}"] = float(tpr[distance == distance.min()].max())
    return result


def evaluate_ijb(network: torch.nn.Module, input_size: int, root: str | Path, device: torch.device,
                 batch_size: int = 128, workers: int = 2, detector_score: bool = True,
                 progress: bool = True) -> dict[str, Any]:
    """The whole protocol on one IJB set: TAR at each FAR, and the ROC (subsampled) for a plot."""
    meta = read_ijb_meta(root)
    with torch.no_grad():
        probe = network(torch.zeros(2, 3, input_size, input_size, device=device))
    with tempfile.TemporaryDirectory(prefix="facequeue-ijb-") as scratch:
        features = np.lib.format.open_memmap(Path(scratch) / "features.npy", mode="w+", dtype=np.float32,
                                             shape=(len(meta.images), probe.shape[1]))
        face_features(network, meta, input_size, features, device, batch_size, workers, progress)
        template_ids, unit = template_features(features, meta.templates, meta.medias,
                                               meta.detector_scores if detector_score else None)
        del features
    scores = score_pairs(template_ids, unit, meta.pairs)
    return {"set": meta.name, "faces": len(meta.images), "templates": len(template_ids), "pairs": len(scores),
            "positive_pairs": int(meta.labels.sum()), "detector_score": detector_score,
            "tar_at_far": tar_at_far(meta.labels, scores), "roc": roc_points(meta.labels, scores)}


def roc_points(labels: np.ndarray, scores: np.ndarray, points: int = 400) -> dict[str, list[float]]:
    """The ROC at ``points`` FARs spaced evenly on a log axis, for plotting without 15M points."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    grid = np.geomspace(max(fpr[fpr > 0].min(), 1e-7) if (fpr > 0).any() else 1e-7, 1.0, points)
    return {"far": grid.tolist(), "tar": np.interp(grid, fpr, tpr).tolist()}
