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
template's feature; templates compared by cosine; TAR at each FAR of 1e-6 ... 1e-1
(``core.evaluation.tar_curve`` says how its reading differs from eval_ijbc.py's).

Nothing grows with the square of the set: image features go to a scratch file, a
template's feature is accumulated image by image (each weighted by one over its media's
size), and pairs are scored in blocks, so IJB-C's 469,375 faces and 15.6M pairs are
scored in 1.34 GiB (``bench ijb``; the scratch file, 0.96 GB for IJB-C, goes to the
temporary directory, which should be a disk, not a tmpfs).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from core.errors import DataError
from core.evaluation import tar_curve

# ArcFace's five landmarks (eyes, nose tip, mouth corners) in a 112 x 112 aligned face.
ARCFACE_LANDMARKS = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                              [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
ALIGNED_SIZE = 112
FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
PAIR_BATCH = 65_536  # pairs scored at once: two [batch, D] float32 gathers, 256 MiB at D = 512
POOL_CHUNK = 65_536  # image features read from the scratch file at once
# A GEMM's dot product costs about this many times less than one gathered pair's (measured on a 2-core CPU).
GEMM_BREAK_EVEN = 64
TEMPLATE_BLOCK = 1024  # templates multiplied by all others at once: [1024, T] float32, 95 MB for IJB-C


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


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int],
                fill: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """``image`` moved by the 2 x 3 ``matrix`` into a ``size`` (width, height) canvas, bilinear, as
    ``cv2.warpAffine`` does it (eval_ijbc.py's warp): pixel ``(x, y)`` is the point ``(x, y)``.

    PIL's affine transform maps output points to input points with pixel centres at
    ``+0.5``; the matrix it gets is shifted to match, else every aligned face would sit
    ``0.5 (1 - scale)`` pixels off insightface's.
    """
    from PIL import Image

    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    inverse[:, 2] += 0.5 - inverse[:, :2] @ np.array([0.5, 0.5])
    warped = Image.fromarray(np.asarray(image, dtype=np.uint8)).transform(
        size, Image.Transform.AFFINE, tuple(inverse.ravel()), resample=Image.Resampling.BILINEAR, fillcolor=fill)
    return np.asarray(warped)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """``image`` warped so that its 5 ``landmarks`` land on ArcFace's template: a ``size`` x ``size`` face."""
    matrix = similarity_transform(landmarks, ARCFACE_LANDMARKS * (size / ALIGNED_SIZE))
    return warp_affine(image, matrix, (size, size))


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
def face_features(network: torch.nn.Module, meta: IJBMeta, input_size: int, out: BinaryIO,
                  device: torch.device, batch_size: int = 128, workers: int = 2, progress: bool = True) -> int:
    """Each face's embedding plus its mirror image's (not normalised: the norm is the protocol's quality
    weight), appended to ``out`` as raw float32 rows; returns the embedding size."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    loader = DataLoader(AlignedFaces(meta, input_size), batch_size=batch_size, num_workers=workers)
    dim = 0
    for images in tqdm(loader, desc=f"{meta.name} faces", unit="batch", disable=not progress, mininterval=1.0):
        images = images.to(device)
        features = (network(images) + network(torch.flip(images, dims=[-1]))).float().cpu().numpy()
        features.tofile(out)
        dim = features.shape[1]
    return dim


def feature_rows(path: Path, dim: int, chunk: int = POOL_CHUNK) -> Iterator[np.ndarray]:
    """The raw float32 rows ``face_features`` wrote, ``chunk`` at a time, read (not mapped): memory holds one
    chunk, where a memory map's pages would count against the process until the kernel takes them back."""
    with open(path, "rb") as handle:
        while True:
            rows = np.fromfile(handle, dtype=np.float32, count=chunk * dim)
            if not rows.size:
                return
            yield rows.reshape(-1, dim)


def template_features(features: np.ndarray | Iterable[np.ndarray], templates: np.ndarray, medias: np.ndarray,
                      weights: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """``(template ids, unit features [T, D])``: within a template, each media's faces averaged (each face
    times its ``weights``, the detector score), the media summed, the sum normalised. ``features``: the
    faces' rows ``[N, D]``, or chunks of them in order (``feature_rows``).

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
    chunks = features
    if isinstance(features, np.ndarray):
        whole = features
        chunks = (whole[begin:begin + POOL_CHUNK] for begin in range(0, len(whole), POOL_CHUNK))
    sums: Optional[torch.Tensor] = None
    start = 0
    for rows in chunks:
        if sums is None:
            sums = torch.zeros(len(template_ids), rows.shape[1], dtype=torch.float64)
        stop = start + len(rows)
        chunk = torch.from_numpy(np.asarray(rows, dtype=np.float64))
        chunk.mul_(torch.from_numpy(share[start:stop])[:, None])
        sums.index_add_(0, torch.from_numpy(template_rows[start:stop]), chunk)
        start = stop
    if sums is None or start != len(templates):
        raise DataError(f"{start} face features for {len(templates)} face lines")
    return template_ids, F.normalize(sums, dim=1).float().numpy()


def score_pairs(template_ids: np.ndarray, unit_features: np.ndarray, pairs: np.ndarray,
                batch: int = PAIR_BATCH) -> np.ndarray:
    """Cosine of each template pair.

    Gathering two feature rows per pair is bound by memory traffic (IJB-C: 15.6M pairs x 2
    rows x 2 KB). When the pairs cover more than 1 / GEMM_BREAK_EVEN of all template
    pairs, as IJB-C's cover 3 %, it is faster to multiply a block of templates by all of
    them, a compute-bound GEMM of ``[TEMPLATE_BLOCK, T]``, and pick the pairs' entries.
    """
    rows = np.searchsorted(template_ids, pairs)
    features = torch.from_numpy(unit_features)
    scores = np.empty(len(pairs), dtype=np.float32)
    if len(pairs) * GEMM_BREAK_EVEN >= len(template_ids) ** 2:
        order = np.argsort(rows[:, 0], kind="stable")
        bounds = np.searchsorted(rows[order, 0], np.arange(0, len(template_ids) + TEMPLATE_BLOCK, TEMPLATE_BLOCK))
        for block, (low, high) in enumerate(zip(bounds[:-1], bounds[1:])):
            if low == high:
                continue
            chosen = order[low:high]
            first = block * TEMPLATE_BLOCK
            similarities = features[first:first + TEMPLATE_BLOCK] @ features.T
            scores[chosen] = similarities[torch.from_numpy(rows[chosen, 0] - first),
                                          torch.from_numpy(rows[chosen, 1])].numpy()
        return scores
    for start in range(0, len(pairs), batch):
        block = torch.from_numpy(rows[start:start + batch])
        scores[start:start + len(block)] = torch.linalg.vecdot(features[block[:, 0]], features[block[:, 1]]).numpy()
    return scores


def tar_at_far(labels: np.ndarray, scores: np.ndarray, fars: Sequence[float] = FARS) -> dict[str, float]:
    """``core.evaluation.tar_curve`` at every FAR the papers print, keyed ``1e-04`` and so on (the .bin
    evaluation leaves out FARs its pairs cannot resolve; IJB's tables print them all)."""
    return {f"{far:.0e}": float(tar) for far, tar in zip(fars, tar_curve(labels, scores, fars))}


def evaluate_ijb(network: torch.nn.Module, input_size: int, root: str | Path, device: torch.device,
                 batch_size: int = 128, workers: int = 2, detector_score: bool = True,
                 progress: bool = True) -> dict[str, Any]:
    """The whole protocol on one IJB set: TAR at each FAR, the ROC (subsampled) for a plot, and 1:N
    identification when the set's gallery and probe lists are there (core/ijb_identification.py)."""
    from core.ijb_identification import identification, identification_lists, read_identification_lists

    meta = read_ijb_meta(root)
    lists = identification_lists(Path(root) / "meta", meta.name)
    listed = None if lists is None else read_identification_lists(lists, np.unique(meta.templates))
    with tempfile.TemporaryDirectory(prefix="facequeue-ijb-") as scratch:
        path = Path(scratch) / "features.f32"
        with open(path, "wb") as out:
            dim = face_features(network, meta, input_size, out, device, batch_size, workers, progress)
        template_ids, unit = template_features(feature_rows(path, dim), meta.templates, meta.medias,
                                               meta.detector_scores if detector_score else None)
    scores = score_pairs(template_ids, unit, meta.pairs)
    grid = roc_grid(meta.labels)
    tars = tar_curve(meta.labels, scores, (*FARS, *grid))  # one sort of the impostor scores for both
    result = {"set": meta.name, "faces": len(meta.images), "templates": len(template_ids), "pairs": len(scores),
              "positive_pairs": int(meta.labels.sum()), "detector_score": detector_score,
              "tar_at_far": {f"{far:.0e}": float(tar) for far, tar in zip(FARS, tars)},
              "roc": {"far": grid.tolist(), "tar": tars[len(FARS):].tolist()}}
    if listed is not None:
        result["identification"] = identification(listed, template_ids, unit)
    return result


def roc_grid(labels: np.ndarray, points: int = 400) -> np.ndarray:
    """``points`` FARs spaced evenly on a log axis from one impostor pair to all: the ROC drawn without 15M points."""
    negatives = int((np.asarray(labels) == 0).sum())
    return np.geomspace(1.0 / max(negatives, 1), 1.0, points)
