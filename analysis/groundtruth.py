"""Scores of the analyses against the synthetic generator's ground truth.

The synthetic data records which images had their label flipped and which identities
were split under two labels, so noise detection and conflict detection can be measured
instead of eyeballed: precision and recall of what was flagged, average precision of
the ranking, and a PR curve.

Average precision counts every true positive, including those the analysis never
ranked (a split pair missing from every class's k nearest neighbours): scikit-learn's
AP over the ranked candidates is scaled by the share of positives that were ranked at
all, which is AP with the missed positives placed at recall never reached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve

from core.errors import DataError


@dataclass
class DetectionScore:
    """How well a ranking (and its flagged set) finds the ground-truth positives."""

    task: str
    positives: int  # ground-truth positives in total
    ranked_positives: int  # of them, how many the ranking contains
    candidates: int
    flagged: int
    true_positives: int  # flagged and positive
    precision: float
    recall: float
    average_precision: float
    chance_average_precision: float  # AP of a random ranking: the positive rate
    curve_precision: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    curve_recall: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    def figures(self) -> dict[str, float | int]:
        return {"positives": self.positives, "ranked_positives": self.ranked_positives,
                "candidates": self.candidates, "flagged": self.flagged, "true_positives": self.true_positives,
                "precision": round(self.precision, 4), "recall": round(self.recall, 4),
                "average_precision": round(self.average_precision, 4),
                "chance_average_precision": round(self.chance_average_precision, 4)}


def score_detection(task: str, scores: np.ndarray, is_positive: np.ndarray, flagged: np.ndarray,
                    total_positives: Optional[int] = None) -> DetectionScore:
    """Precision / recall of ``flagged``, AP and PR curve of ``scores`` (higher = more suspect)."""
    scores = np.asarray(scores, dtype=np.float64)
    is_positive = np.asarray(is_positive, dtype=bool)
    flagged = np.asarray(flagged, dtype=bool)
    ranked = int(is_positive.sum())
    total = ranked if total_positives is None else int(total_positives)
    if total < ranked:
        raise DataError(f"{task}: {ranked} positives ranked but only {total} in the ground truth")
    true_positives = int((flagged & is_positive).sum())
    n_flagged = int(flagged.sum())
    precision = true_positives / n_flagged if n_flagged else 0.0
    recall = true_positives / total if total else 0.0
    if ranked == 0 or len(scores) == 0:
        ap, curve_p, curve_r = 0.0, np.array([1.0, 0.0]), np.array([0.0, 0.0])
    else:
        share = ranked / total
        ap = float(average_precision_score(is_positive, scores)) * share
        curve_p, curve_r, _ = precision_recall_curve(is_positive, scores)
        curve_r = curve_r * share
    chance = ranked / len(scores) if len(scores) else 0.0
    return DetectionScore(task=task, positives=total, ranked_positives=ranked, candidates=len(scores),
                          flagged=n_flagged, true_positives=true_positives, precision=precision, recall=recall,
                          average_precision=ap, chance_average_precision=chance, curve_precision=curve_p,
                          curve_recall=curve_r)


def noise_positives(ground_truth: dict, num_samples: int, records: Optional[np.ndarray] = None
                    ) -> Optional[np.ndarray]:
    """Per dataset index: was this sample's label flipped? None when samples cannot be matched.

    Image datasets name flipped samples by RecordIO key; the embedding generator by row.
    """
    flipped = ground_truth.get("flipped") or {}
    if "key" in flipped:
        if records is None:
            return None
        return np.isin(np.asarray(records, dtype=np.int64), np.asarray(flipped["key"], dtype=np.int64))
    if "index" in flipped:
        positive = np.zeros(num_samples, dtype=bool)
        index = np.asarray(flipped["index"], dtype=np.int64)
        if index.size and index.max() >= num_samples:
            raise DataError(f"ground truth names flipped row {int(index.max())} but the data has {num_samples} rows")
        positive[index] = True
        return positive
    return None


def split_pair_keys(ground_truth: dict, num_classes: int) -> np.ndarray:
    """Sorted keys ``min * C + max`` of the label pairs that are one person."""
    pairs = np.asarray(ground_truth.get("split_pairs") or np.zeros((0, 2)), dtype=np.int64).reshape(-1, 2)
    if pairs.size and pairs.max() >= num_classes:
        raise DataError(f"ground truth names label {int(pairs.max())} but the run has {num_classes} classes")
    return np.unique(pairs.min(axis=1) * num_classes + pairs.max(axis=1))


def conflict_positives(ground_truth: dict, label_a: np.ndarray, label_b: np.ndarray, num_classes: int
                       ) -> tuple[np.ndarray, int]:
    """Per candidate pair: is it a split identity? And how many split pairs exist in total."""
    truth = split_pair_keys(ground_truth, num_classes)
    a, b = np.asarray(label_a, dtype=np.int64), np.asarray(label_b, dtype=np.int64)
    keys = np.minimum(a, b) * num_classes + np.maximum(a, b)
    return np.isin(keys, truth), int(len(truth))
