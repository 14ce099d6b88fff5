"""Long-tail behaviour of class centers: how rare classes differ from frequent ones.

Under full softmax a tail class is a positive in a handful of steps but a negative in
nearly every step, so its center is mostly pushed around ("passive updates"); Partial
FC samples negatives, so tail centers receive far fewer passive updates. This module
puts the per-class quantities side by side with class frequency: raw center norm,
compactness of the class's samples around its center, cosine to the nearest other
center, and every per-class counter the run's sampler recorded (whatever the method),
and writes the report's long-tail section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from analysis import plots
from analysis.centers import Centers, ClassStatistics
from analysis.conflict import CenterNeighbours
from analysis.index import normalize_rows
from analysis.report import Report, write_csv

if TYPE_CHECKING:
    from analysis.runner import Analysis

#: The columns every run has; one column per recorded statistic follows them.
LONGTAIL_COLUMNS = ["label", "count", "center_norm", "compactness", "nearest_other_label",
                    "nearest_other_similarity"]
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
    """One row per class (``LONGTAIL_COLUMNS``, then each recorded statistic by name), most frequent first.

    ``center_norm`` is the raw norm of the method's stored center (empty for class means
    of unit vectors, whose norm would only measure compactness again).
    """
    num_classes = len(centers.vectors)
    nearest_label, nearest_similarity = neighbours.nearest_other(num_classes)
    table = pd.DataFrame({
        "label": np.arange(num_classes, dtype=np.int64),
        "count": centers.counts.astype(np.int64),
        "center_norm": centers.norms.round(6) if centers.source == "store" else np.full(num_classes, np.nan),
        "compactness": np.round(class_compactness, 6),
        "nearest_other_label": nearest_label,
        "nearest_other_similarity": np.round(nearest_similarity.astype(np.float64), 6),
        **{name: values.astype(np.int64) for name, values in stats.series.items()},
    }, columns=LONGTAIL_COLUMNS + list(stats.series))
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


def head_tail_summary(table: pd.DataFrame, split: HeadTail, stats: ClassStatistics) -> dict[str, float]:
    """Median per-class figures of head vs tail classes: the numbers the long-tail story is told with.

    The passive / positive ratio is given only when the method records passive updates
    (a negative counter that moves trained weights): for a method without class weights
    it would be zero by construction and mean nothing.
    """
    by_label = table.set_index("label")
    out: dict[str, float] = {}
    columns = (["center_norm"] if by_label["center_norm"].notna().any() else []) + [
        "compactness", "nearest_other_similarity", *stats.series]
    for column in columns:
        values = by_label[column].astype(float)
        out[f"head median {column}"] = float(np.nanmedian(values.loc[split.head]))
        out[f"tail median {column}"] = float(np.nanmedian(values.loc[split.tail]))
    positive, passive = stats.with_role("positive"), stats.passive
    if positive is not None and passive is not None:
        positives = by_label[positive["name"]].astype(float)
        ratio = by_label[passive["name"]].astype(float) / positives.where(positives > 0)
        out["head median passive / positive updates"] = float(np.nanmedian(ratio.loc[split.head]))
        out["tail median passive / positive updates"] = float(np.nanmedian(ratio.loc[split.tail]))
    return out


def longtail_section(analysis: "Analysis", report: Report) -> dict[str, Any]:
    """longtail.csv, the per-frequency plots and the report section; returns head vs tail medians."""
    inputs = analysis.inputs
    stats = inputs.run.statistics
    centers = analysis.longtail_centers
    class_compactness = compactness(inputs.embeddings, inputs.labels, centers)
    table = longtail_table(centers, stats, analysis.longtail_neighbours, class_compactness)
    write_csv(table, analysis.file("longtail.csv"))
    by_label = table.sort_values("label")
    counts = by_label["count"].to_numpy()
    split = head_tail(counts, centers.present & (counts > 0))
    report.heading("Long tail")
    report.paragraph(
        f"Per-class figures against class frequency. Head: the {int(round(100 * HEAD_FRACTION))} % most frequent "
        f"classes (>= {split.head_min_count} images); tail: the {int(round(100 * TAIL_FRACTION))} % least frequent "
        f"(<= {split.tail_max_count} images). The per-class counters are the ones the run's sampler recorded:"
        + "".join(f" `{record['name']}`: {record['meaning']}." for record in stats.records))
    for note in stats.notes:
        report.paragraph(note)
    figures = head_tail_summary(table, split, stats)
    report.figures(figures)
    has = counts > 0
    if centers.source == "store":
        plots.frequency_scatter(counts[has], {"raw center norm": by_label["center_norm"].to_numpy()[has]},
                                "raw center norm", f"{inputs.run.method}: stored center norm vs frequency",
                                analysis.figure("longtail_norm"))
        report.image(analysis.figure_name("longtail_norm"),
                     "Raw norm of each class's stored center against its frequency.")
    plots.frequency_scatter(counts[has], {"compactness": by_label["compactness"].to_numpy()[has]},
                            "mean cosine of samples to their center",
                            f"{inputs.run.method}: compactness of each class, by class frequency",
                            analysis.figure("longtail_compactness"))
    report.image(analysis.figure_name("longtail_compactness"),
                 "Compactness: mean cosine of a class's samples to its center.")
    plots.frequency_scatter(counts[has], {"nearest other center": by_label["nearest_other_similarity"]
                                          .to_numpy()[has]},
                            "cosine to the nearest other center",
                            f"{inputs.run.method}: each class's nearest other center, by class frequency",
                            analysis.figure("longtail_nearest"))
    report.image(analysis.figure_name("longtail_nearest"), "Cosine of each class's center to its nearest other center.")
    if stats.series:
        series = {record["name"].replace("_", " "): by_label[record["name"]].to_numpy()[has]
                  for record in stats.records}
        plots.frequency_scatter(counts[has], series, "count per class (symlog)",
                                f"{inputs.run.method}: what the sampler counted per class, by class frequency",
                                analysis.figure("longtail_updates"), log_y=True)
        report.image(analysis.figure_name("longtail_updates"), "What the sampler counted per class: "
                     + "; ".join(f"{record['name'].replace('_', ' ')}: {record['meaning']}"
                                 for record in stats.records) + ".")
    present = np.flatnonzero(centers.present)
    position = np.full(len(centers.vectors), -1)
    neighbours = analysis.longtail_neighbours
    position[neighbours.present] = np.arange(len(neighbours.present))
    candidates = position[present]
    head_pairs = sampled_pair_similarities(neighbours.unit, position[split.head], candidates, seed=0)
    tail_pairs = sampled_pair_similarities(neighbours.unit, position[split.tail], candidates, seed=1)
    nearest = by_label["nearest_other_similarity"].to_numpy()
    plots.head_tail_histograms(head_pairs, tail_pairs, nearest[split.head], nearest[split.tail],
                               f"head ({len(split.head)} classes)", f"tail ({len(split.tail)} classes)",
                               analysis.figure("longtail_head_tail"))
    report.image(analysis.figure_name("longtail_head_tail"), "Inter-center similarity of head vs tail classes.")
    report.table(table, "Most frequent classes (longtail.csv)", max_rows=10)
    report.table(table.iloc[::-1].reset_index(drop=True), "Least frequent classes", max_rows=10)
    summary = {"classes": len(table), "head_classes": len(split.head), "tail_classes": len(split.tail),
               "centers": centers.source,
               **{key: (None if not np.isfinite(value) else round(value, 6)) for key, value in figures.items()}}
    analysis.summary["longtail"] = summary
    return summary
