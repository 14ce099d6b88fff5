"""Long-tail behaviour of class centers: how rare classes differ from frequent ones.

Under full softmax a tail class is a positive in a handful of steps but a negative in
nearly every step, so its center is mostly pushed around ("passive updates"); Partial
FC samples negatives, so tail centers receive far fewer passive updates. This module
puts the per-class quantities side by side with class frequency: raw center norm,
compactness of the class's samples around its center, cosine to the nearest other
center, and the sampler's positive / passive update counters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.centers import Centers, ClassStatistics
from analysis.conflict import CenterNeighbours
from analysis.index import normalize_rows

LONGTAIL_COLUMNS = ["label", "count", "center_norm", "compactness", "nearest_other_label",
                    "nearest_other_similarity", "positive_updates", "negative_updates", "queue_entries",
                    "queue_steps"]
HEAD_FRACTION = 0.2  # the most frequent fifth of the classes
TAIL_FRACTION = 0.5  # the least frequent half
PAIR_SAMPLE_CLASSES = 500
PAIR_SAMPLE_OTHERS = 2000


def compactness(embeddings: np.ndarray, labels: np.ndarray, centers: Centers, chunk: int = 65_536) -> np.ndarray:
    """Mean cosine of each class's samples to its center ``[C]`` (NaN for classes without samples)."""
    unit = normalize_rows(centers.vectors)
    num_classes = len(unit)
    totals = np.zeros(num_classes, dtype=np.float64)
    for start in range(0, len(labels), chunk):
        own = labels[start:start + chunk]
        cos = np.einsum("ij,ij->i", normalize_rows(embeddings[start:start + chunk]), unit[own])
        totals += np.bincount(own, weights=cos, minlength=num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)


def longtail_table(centers: Centers, stats: ClassStatistics, neighbours: CenterNeighbours,
                   class_compactness: np.ndarray) -> pd.DataFrame:
    """One row per class (``LONGTAIL_COLUMNS``), most frequent first.

    ``center_norm`` is the raw norm of Partial FC's stored center (empty for DCQ, whose
    class means of unit vectors would only measure compactness again).
    """
    num_classes = len(centers.vectors)
    nearest_label, nearest_similarity = neighbours.nearest_other(num_classes)
    empty = np.full(num_classes, np.nan)
    table = pd.DataFrame({
        "label": np.arange(num_classes, dtype=np.int64),
        "count": centers.counts.astype(np.int64),
        "center_norm": centers.norms.round(6) if centers.source == "store" else empty,
        "compactness": np.round(class_compactness, 6),
        "nearest_other_label": nearest_label,
        "nearest_other_similarity": np.round(nearest_similarity.astype(np.float64), 6),
        "positive_updates": stats.positive_updates.astype(np.int64),
        "negative_updates": stats.negative_updates.astype(np.int64),
        "queue_entries": pd.array(stats.queue_entries, dtype="Int64") if stats.queue_entries is not None
        else pd.array([pd.NA] * num_classes, dtype="Int64"),
        "queue_steps": pd.array(stats.queue_steps, dtype="Int64") if stats.queue_steps is not None
        else pd.array([pd.NA] * num_classes, dtype="Int64"),
    }, columns=LONGTAIL_COLUMNS)
    return table.sort_values(["count", "label"], ascending=[False, True], kind="stable").reset_index(drop=True)


@dataclass
class HeadTail:
    """Frequent and rare classes, chosen by rank so both groups exist whatever the count ties."""

    head: np.ndarray  # class ids of the most frequent HEAD_FRACTION
    tail: np.ndarray  # class ids of the least frequent TAIL_FRACTION
    head_min_count: int
    tail_max_count: int


def head_tail(counts: np.ndarray, present: np.ndarray) -> HeadTail:
    """Split by frequency rank (ties broken by label), so the groups have fixed sizes."""
    classes = np.flatnonzero(present)
    order = classes[np.lexsort((classes, -counts[classes]))]
    n_head = max(1, int(round(HEAD_FRACTION * len(order))))
    n_tail = max(1, int(round(TAIL_FRACTION * len(order))))
    head, tail = order[:n_head], order[-n_tail:]
    return HeadTail(head=np.sort(head), tail=np.sort(tail), head_min_count=int(counts[head].min()),
                    tail_max_count=int(counts[tail].max()))


def sampled_pair_similarities(unit: np.ndarray, classes: np.ndarray, candidates: np.ndarray, seed: int = 0
                              ) -> np.ndarray:
    """Cosines between (up to 500 of) ``classes`` and (up to 2000) random other centers.

    A sample keeps the histogram's cost fixed at a million classes.
    """
    rng = np.random.default_rng(seed)
    chosen = classes if len(classes) <= PAIR_SAMPLE_CLASSES else rng.choice(classes, PAIR_SAMPLE_CLASSES,
                                                                            replace=False)
    others = candidates if len(candidates) <= PAIR_SAMPLE_OTHERS else rng.choice(candidates, PAIR_SAMPLE_OTHERS,
                                                                                 replace=False)
    sims = unit[chosen] @ unit[others].T
    not_self = chosen[:, None] != others[None, :]
    return sims[not_self].astype(np.float64)


def head_tail_summary(table: pd.DataFrame, split: HeadTail, method: str) -> dict[str, float]:
    """Median per-class figures of head vs tail classes: the numbers the long-tail story is told with."""
    by_label = table.set_index("label")
    out: dict[str, float] = {}
    columns = ["compactness", "nearest_other_similarity", "positive_updates", "negative_updates"]
    if method == "pfc":
        columns.insert(0, "center_norm")
    else:
        columns += ["queue_entries", "queue_steps"]
    for column in columns:
        values = by_label[column]
        out[f"head median {column}"] = float(np.nanmedian(values.loc[split.head].astype(float)))
        out[f"tail median {column}"] = float(np.nanmedian(values.loc[split.tail].astype(float)))
    positives = by_label["positive_updates"].astype(float)
    negatives = by_label["negative_updates"].astype(float)
    ratio = negatives / positives.where(positives > 0)
    out["head median passive / positive updates"] = float(np.nanmedian(ratio.loc[split.head]))
    out["tail median passive / positive updates"] = float(np.nanmedian(ratio.loc[split.tail]))
    return out
