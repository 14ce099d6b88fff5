"""The paper's cleaning step, as analysis sees it: dominant sub-centers and the samples far from them.

After training, each class's dominant sub-center is the one most of its samples are
nearest to; a sample farther than 75 degrees from its class's dominant sub-center is
probably not that person (Deng et al. 2020 drop such samples and retrain with K = 1).
Here the angle becomes a noise signal that ``analyze`` scores against ground truth beside
its own, and the dominant sub-centers serve as the run's stored centers (the long-tail
view, ``--centers store``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis.index import normalize_rows
from analysis.noise import NoiseSignal

DROP_ANGLE = 75.0  # degrees, the paper's threshold
CHUNK_ROWS = 8192  # a chunk gathers [rows, K, D] sub-centers: 50 MB at K=3, D=512


def dominance(subcenters: np.ndarray, embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(dominant [C], cosines [N, K])``: each class's most chosen sub-center, and each sample's cosine to each
    sub-center of its own class. A class without samples keeps sub-center 0; ties go to the lower index."""
    num_classes, k, _ = subcenters.shape
    unit = subcenters / np.maximum(np.linalg.norm(subcenters, axis=2, keepdims=True), 1e-12)
    cosines = np.empty((len(labels), k), dtype=np.float32)
    for start in range(0, len(labels), CHUNK_ROWS):
        rows = normalize_rows(embeddings[start:start + CHUNK_ROWS])
        own = labels[start:start + CHUNK_ROWS]
        cosines[start:start + len(own)] = np.einsum("nd,nkd->nk", rows, unit[own])
    chosen = np.bincount(labels * k + cosines.argmax(axis=1), minlength=num_classes * k).reshape(num_classes, k)
    return chosen.argmax(axis=1), cosines


def _subcenters(tables: Any) -> np.ndarray:
    return np.asarray(tables["store.centers"], dtype=np.float32)


def stored_centers(tables: Any, embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each class's dominant sub-center, raw: the center the class's clean images trained."""
    subcenters = _subcenters(tables)
    dominant, _ = dominance(subcenters, embeddings, np.asarray(labels, dtype=np.int64))
    return subcenters[np.arange(len(subcenters)), dominant]


def noise_signals(tables: Any, embeddings: np.ndarray, labels: np.ndarray) -> list[NoiseSignal]:
    """The angle of each sample to its class's dominant sub-center; flagged beyond 75 degrees."""
    labels = np.asarray(labels, dtype=np.int64)
    dominant, cosines = dominance(_subcenters(tables), embeddings, labels)
    angle = np.degrees(np.arccos(np.clip(cosines[np.arange(len(labels)), dominant[labels]], -1.0, 1.0)))
    return [NoiseSignal(
        name="subcenter_angle", title="sub-center dominance",
        description=(f"the angle in degrees between a sample and its class's dominant sub-center (the one most of "
                     f"the class's samples are nearest to); the paper drops samples beyond {DROP_ANGLE:g} degrees "
                     "and retrains."),
        scores=angle.astype(np.float64), flagged=angle > DROP_ANGLE)]
