"""Verification metrics computed exactly as insightface reports them, so numbers compare.

Published LFW / CFP-FP / AgeDB-30 figures come from insightface's protocol: flip-summed,
L2-normalised embeddings; squared L2 distance; ten folds taken in order; a threshold from
a fixed grid chosen on nine folds and scored on the tenth. Any deviation (shuffled folds,
a finer grid, cosine thresholds picked on the test fold) moves the third decimal, which
is exactly where papers in this field differ, hence the care here. AUC comes from
scikit-learn; TAR@FAR equals what scikit-learn's full ROC gives (``tar_curve``), from one
sorted copy of the impostor scores, so IJB-C's 15.6M pairs need no more.
"""

from __future__ import annotations

import json
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold

from core.data.transforms import to_model_input
from core.errors import ConfigError, DataError

# insightface's threshold grid over squared L2 distance (range [0, 4] for unit vectors).
THRESHOLDS = np.arange(0, 4, 0.01)
DEFAULT_FARS = (1e-1, 1e-2, 1e-3, 1e-4)
PROGRESS_MIN_IMAGES = 2000


@torch.no_grad()
def embed_images(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: np.ndarray,
    input_size: int,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """Flip-summed, L2-normalised embeddings ``float32 [N, D]`` of uint8 ``[N, H, W, 3]`` images.

    Adding the mirrored image's embedding is part of the published protocol (it is worth
    a few tenths of a point on AgeDB/CFP-FP), so every caller gets it. The model is put in
    eval mode for the call, because BatchNorm/dropout in train mode would make the result
    depend on the batch, and its previous mode is restored so that evaluation in the
    middle of training does not silently stop training.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"embed_images: expected images of shape [N, H, W, 3], got {list(images.shape)}")
    if images.dtype != np.uint8:
        raise DataError(f"embed_images: expected uint8 images, got dtype {images.dtype}")
    if images.shape[0] == 0:
        raise DataError("embed_images: no images to embed")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")

    is_module = isinstance(model, torch.nn.Module)
    was_training = bool(model.training) if is_module else False
    if is_module:
        model.eval()
    try:
        starts = range(0, images.shape[0], batch_size)
        if progress and images.shape[0] > PROGRESS_MIN_IMAGES:
            from tqdm import tqdm

            starts = tqdm(starts, desc="embedding", unit="batch", leave=False)
        chunks = []
        for start in starts:
            x = to_model_input(images[start : start + batch_size], input_size).to(device)
            feature = model(x) + model(torch.flip(x, dims=[-1]))
            chunks.append(F.normalize(feature.float(), dim=1).cpu())
        return torch.cat(chunks).numpy().astype(np.float32, copy=False)
    finally:
        if is_module:
            model.train(was_training)


def _l2_normalise(embeddings: np.ndarray) -> np.ndarray:
    """Unit rows; a zero row stays zero instead of becoming NaN."""
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.maximum(norms, 1e-12)


def _as_embeddings(embeddings: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(embeddings, dtype=np.float64)
    if array.ndim != 2:
        raise DataError(f"{name}: expected a 2-D array [N, D], got shape {list(array.shape)}")
    if not np.all(np.isfinite(array)):
        raise DataError(f"{name}: contains NaN or infinite values")
    return array


def verification_accuracy(
    embeddings1: np.ndarray,
    embeddings2: np.ndarray,
    issame: np.ndarray,
    n_folds: int = 10,
) -> tuple[float, float]:
    """Mean and std of held-out fold accuracies under insightface's LFW protocol.

    Folds are contiguous blocks in file order (the .bin files interleave their official
    splits that way); for each fold the grid threshold that maximises accuracy on the
    other folds (lowest one on ties, as ``np.argmax`` picks) predicts "same" where the
    squared distance is below it. Counting with ``searchsorted`` on sorted distances keeps
    memory at O(N) instead of an ``[N, 400]`` comparison matrix.
    """
    if n_folds < 2:
        raise ConfigError(f"n_folds must be >= 2, got {n_folds}")
    e1 = _as_embeddings(embeddings1, "embeddings1")
    e2 = _as_embeddings(embeddings2, "embeddings2")
    same = np.asarray(issame).astype(bool).reshape(-1)
    if e1.shape[0] != e2.shape[0]:
        raise DataError(f"embeddings1 has {e1.shape[0]} rows but embeddings2 has {e2.shape[0]}")
    if e1.shape[1] != e2.shape[1]:
        raise DataError(f"embeddings1 has dimension {e1.shape[1]} but embeddings2 has {e2.shape[1]}")
    if same.shape[0] != e1.shape[0]:
        raise DataError(f"{e1.shape[0]} embedding pairs but {same.shape[0]} issame labels")
    if same.shape[0] < n_folds:
        raise DataError(f"{same.shape[0]} pairs is fewer than the {n_folds} folds of the protocol")

    diff = _l2_normalise(e1) - _l2_normalise(e2)
    dist = np.sum(diff * diff, axis=1)

    def correct_per_threshold(indices: np.ndarray) -> np.ndarray:
        pos = np.sort(dist[indices][same[indices]])
        neg = np.sort(dist[indices][~same[indices]])
        true_accepts = np.searchsorted(pos, THRESHOLDS, side="left")  # pos with dist < t
        true_rejects = neg.size - np.searchsorted(neg, THRESHOLDS, side="left")  # neg with dist >= t
        return true_accepts + true_rejects

    all_indices = np.arange(same.shape[0])
    total_correct = correct_per_threshold(all_indices)
    accuracies = np.empty(n_folds, dtype=np.float64)
    for fold, (train, test) in enumerate(KFold(n_splits=n_folds, shuffle=False).split(all_indices)):
        test_correct = correct_per_threshold(test)
        train_correct = total_correct - test_correct
        best = int(np.argmax(train_correct))
        accuracies[fold] = test_correct[best] / test.size
    return float(np.mean(accuracies)), float(np.std(accuracies))


def _far_key(far: float) -> str:
    """``1e-01`` style, falling back to full precision so distinct FARs never share a key."""
    short = f"{far:.0e}"
    return short if float(short) == far else repr(float(far))


def _check_scores(scores: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    same = np.asarray(issame).astype(bool).reshape(-1)
    if values.shape[0] != same.shape[0]:
        raise DataError(f"{values.shape[0]} scores but {same.shape[0]} issame labels")
    if not np.all(np.isfinite(values)):
        raise DataError("scores contain NaN or infinite values")
    if same.all() or not same.any():
        raise DataError(
            f"ROC needs both same and different pairs, got {int(same.sum())} same "
            f"and {int((~same).sum())} different"
        )
    return values, same


def tar_curve(labels: np.ndarray, scores: np.ndarray, fars: Sequence[float]) -> np.ndarray:
    """The true accept rate at each false accept rate: the highest TPR of any threshold whose FPR is at most the
    FAR, as sklearn's full ROC (``drop_intermediate=False``) gives it.

    The threshold sits just above the ``floor(FAR x negatives)``-th highest impostor score,
    so one sorted copy of the impostor scores is all it holds: 62 MB for IJB-C's 15.6M
    pairs, where sklearn's ROC holds several arrays of that length in float64.
    insightface's eval_ijbc.py reads the TPR at the (thinned) ROC vertex whose FPR is
    nearest the FAR, which may lie above it; on IJB-C's 15.6M pairs the two readings differ
    by a few positive pairs at most.
    """
    labels = np.asarray(labels).astype(bool)
    impostors = np.sort(np.asarray(scores)[~labels])[::-1]
    genuine = np.sort(np.asarray(scores)[labels])
    if not len(impostors) or not len(genuine):
        raise DataError("TAR@FAR needs pairs of one person and pairs of two people; one kind is missing")
    allowed = np.floor(np.asarray(fars, dtype=np.float64) * len(impostors)).astype(np.int64)
    tar = np.ones(len(allowed))
    within = allowed < len(impostors)
    above = len(genuine) - np.searchsorted(genuine, impostors[allowed[within]], side="right")
    tar[within] = above / len(genuine)
    return tar


def tar_at_far(
    scores: np.ndarray,
    issame: np.ndarray,
    fars: Sequence[float] = DEFAULT_FARS,
) -> dict[str, float]:
    """True accept rate at each false accept rate, for the FARs the data can resolve.

    With fewer than ``1/far`` different pairs not even one false accept is allowed, so the
    figure would be the TAR at FAR 0 under another name; such FARs are left out rather
    than reported misleadingly.
    """
    values, same = _check_scores(scores, issame)
    num_negatives = int((~same).sum())
    resolved = []
    for far in map(float, fars):
        if not 0.0 < far <= 1.0:
            raise ConfigError(f"FAR must be in (0, 1], got {far}")
        if num_negatives * far >= 1.0 - 1e-9:
            resolved.append(far)
    return {_far_key(far): float(tar) for far, tar in zip(resolved, tar_curve(same, values, resolved))}


def evaluate_pairs(embeddings: np.ndarray, issame: np.ndarray) -> dict:
    """All verification figures for interleaved pair embeddings (rows ``2i``, ``2i+1``).

    Cosine similarity of the normalised embeddings is the score for TAR@FAR and AUC; the
    accuracy uses squared L2, which orders pairs identically but keeps insightface's grid.
    """
    array = _as_embeddings(embeddings, "embeddings")
    same = np.asarray(issame).astype(bool).reshape(-1)
    if array.shape[0] % 2 != 0:
        raise DataError(f"embeddings must hold pairs (an even number of rows), got {array.shape[0]}")
    num_pairs = array.shape[0] // 2
    if same.shape[0] != num_pairs:
        raise DataError(f"{num_pairs} embedding pairs but {same.shape[0]} issame labels")
    unit = _l2_normalise(array)
    first, second = unit[0::2], unit[1::2]
    accuracy, accuracy_std = verification_accuracy(first, second, same)
    scores = np.sum(first * second, axis=1)
    values, same = _check_scores(scores, same)
    return {
        "accuracy": accuracy,
        "accuracy_std": accuracy_std,
        "tar_at_far": tar_at_far(values, same),
        "auc": float(roc_auc_score(same, values)),
        "num_pairs": int(num_pairs),
    }


def val_names(paths: Sequence[str | Path]) -> list[str]:
    """Result names for ``--val`` files: the file stem (``lfw``), or ``folder/stem`` where stems collide.

    Two sets both called ``val.bin`` must not report under one name, or one result is lost.
    """
    stems = [Path(path).stem for path in paths]
    names = [f"{Path(path).parent.name}/{stem}" if stems.count(stem) > 1 else stem for path, stem in zip(paths, stems)]
    return [str(path) if names.count(name) > 1 else name for path, name in zip(paths, names)]


def evaluate_bin(
    model: Callable[[torch.Tensor], torch.Tensor],
    path: str | Path,
    input_size: int,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
) -> dict:
    """Verification figures for one insightface ``.bin`` set (lfw.bin, agedb_30.bin, ...)."""
    from core.data.verification_bin import load_verification_pairs

    images, issame = load_verification_pairs(path)
    return _evaluate_images(model, images, issame, input_size, device, batch_size, str(path))


def evaluate_pairs_file(
    model: Callable[[torch.Tensor], torch.Tensor],
    pairs_file: str | Path,
    images_dir: str | Path,
    input_size: int,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
) -> dict:
    """Verification figures for an LFW-style pairs.txt over a folder of aligned crops (see core.data.pairs)."""
    from core.data.pairs import read_pair_images
    from core.data.verification_bin import decode_pair_images

    encoded, names, issame = read_pair_images(pairs_file, images_dir)
    return _evaluate_images(model, decode_pair_images(encoded, names), issame, input_size, device, batch_size,
                            str(pairs_file))


def _evaluate_images(model: Callable[[torch.Tensor], torch.Tensor], images: np.ndarray, issame: np.ndarray,
                     input_size: int, device: str | torch.device, batch_size: int, where: str) -> dict:
    embeddings = embed_images(model, images, input_size, batch_size=batch_size, device=device)
    try:
        return evaluate_pairs(embeddings, issame)
    except DataError as exc:  # e.g. a set without different-person pairs: say which file
        raise DataError(f"{where}: {exc}") from exc


def metrics_summary(metrics: dict[str, Any]) -> str:
    """Human-readable lines: accuracy ± std and TAR@FAR for every verification set, TAR@FAR for every IJB set."""
    lines = []
    for name, result in metrics.items():
        if name.startswith("_"):
            continue
        tars = ", ".join(f"TAR@FAR={far}: {tar:.4f}" for far, tar in result["tar_at_far"].items())
        if "accuracy" in result:
            lines.append(f"{name}: accuracy {result['accuracy']:.4f} ± {result['accuracy_std']:.4f}"
                         + (f"; {tars}" if tars else "") + f"; AUC {result['auc']:.4f}")
        else:
            lines.append(f"{name}: {tars} ({result['templates']:,} templates, {result['pairs']:,} pairs)")
            if "identification" in result:
                found = result["identification"]
                tpirs = ", ".join(f"TPIR@FPIR={fpir}: {tpir:.4f}" for fpir, tpir in found["tpir_at_fpir"].items())
                lines.append(f"{name} 1:N (mean of {', '.join(found['galleries'])}): rank-1 {found['rank1']:.4f}, "
                             + tpirs)
    return "\n".join(lines)


def metrics_json(metrics: dict[str, Any]) -> str:
    """metrics.json's shape on one line (an IJB set's ROC points left out: they are for the plot)."""
    return json.dumps({name: {key: value for key, value in result.items() if key != "roc"}
                       for name, result in metrics.items() if not name.startswith("_")}, sort_keys=True)


@dataclass(frozen=True)
class EvaluationSets:
    """What ``eval`` measures a model on: .bin pair sets, an LFW-style pairs folder, IJB-B/C folders."""

    val: Sequence[str] = ()
    pairs: Optional[str] = None
    images: Optional[str] = None
    ijb: Sequence[str] = ()
    detector_score: bool = True

    def __post_init__(self) -> None:
        if (self.pairs is None) != (self.images is None):
            raise ConfigError("--pairs and --images go together: the pairs file names images in the folder")
        if not self.val and self.pairs is None and not self.ijb:
            raise ConfigError("nothing to evaluate on: give --val FILE.bin (repeatable), --pairs pairs.txt --images "
                              "DIR, or --ijb DIR")


def evaluate_model(model: Callable[[torch.Tensor], torch.Tensor], input_size: int, sets: EvaluationSets,
                   device: str | torch.device = "cpu", batch_size: int = 256, workers: int = 2,
                   progress: bool = True) -> dict[str, Any]:
    """Every set's figures by name: the .bin's stem, the pairs file's stem, the IJB set's name (IJBC)."""
    metrics = {name: evaluate_bin(model, path, input_size, device, batch_size)
               for name, path in zip(val_names(sets.val), sets.val)}
    if sets.pairs is not None:
        result = evaluate_pairs_file(model, sets.pairs, sets.images, input_size, device, batch_size)
        metrics[_unused_name(Path(sets.pairs).stem, sets.pairs, metrics)] = result
    for folder in sets.ijb:
        from core.ijb import evaluate_ijb

        result = evaluate_ijb(model, input_size, folder, torch.device(device), batch_size, workers,
                              sets.detector_score, progress)
        metrics[_unused_name(result["set"].upper(), folder, metrics)] = result
    return metrics


def _unused_name(name: str, source: str | Path, taken: dict[str, Any]) -> str:
    """``name``, or ``parent folder/name`` when another set already reports under it (two IJB-C folders, say)."""
    if name not in taken:
        return name
    qualified = f"{Path(source).resolve().parent.name}/{name}"
    return qualified if qualified not in taken else f"{Path(source)}/{name}"
