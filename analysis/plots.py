"""The analyses' figures, in the format the command asks for (``core.figures.save_figure``).

Scatter plots of a million classes draw a fixed random subsample
(with binned medians over all classes), so drawing time stays bounded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from core.figures import save_figure

MAX_SCATTER_POINTS = 50_000


def _subsample(n: int, limit: int = MAX_SCATTER_POINTS, seed: int = 0) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def _binned_median(x: np.ndarray, y: np.ndarray, bins: int = 12) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[keep], y[keep]
    if len(x) == 0:
        return np.zeros(0), np.zeros(0)
    edges = np.unique(np.geomspace(x.min(), x.max() + 1e-9, bins + 1))
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    centers, medians = [], []
    for b in range(len(edges) - 1):
        members = y[which == b]
        if members.size:
            centers.append(np.sqrt(edges[b] * edges[b + 1]))
            medians.append(np.median(members))
    return np.asarray(centers), np.asarray(medians)


def frequency_scatter(counts: np.ndarray, series: dict[str, np.ndarray], ylabel: str, title: str,
                      path: str | Path, log_y: bool = False) -> Path:
    """Per-class values against class frequency (log x), with a binned median per series."""
    counts = np.asarray(counts, dtype=np.float64)
    figure = Figure(figsize=(6.4, 4.2))
    axes = figure.add_subplot()
    rows = _subsample(len(counts))
    for (name, values), colour in zip(series.items(), ("tab:blue", "tab:orange", "tab:green")):
        values = np.asarray(values, dtype=np.float64)
        jitter = 1.0 + 0.08 * (np.random.default_rng(1).random(len(rows)) - 0.5)
        axes.scatter(counts[rows] * jitter, values[rows], s=6, alpha=0.35, color=colour, label=name,
                     rasterized=True, linewidths=0)
        x, y = _binned_median(counts, values)
        if len(x):
            axes.plot(x, y, color=colour, linewidth=2, label=f"{name} (median)")
    axes.set_xscale("log")
    if log_y:  # symlog: linear near zero, so classes counted 0 times stay on the plot (log would drop them)
        axes.set_yscale("symlog", linthresh=1)
        axes.set_ylim(bottom=0)  # counts: an axis running below zero would only suggest negative ones
    axes.set_xlabel("images per class (log)")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return save_figure(figure, path)


def histogram(values: np.ndarray, xlabel: str, title: str, path: str | Path,
              threshold: Optional[float] = None, threshold_label: str = "threshold",
              highlight: Optional[np.ndarray] = None, highlight_label: str = "") -> Path:
    """A histogram with an optional threshold line and an optional highlighted subset."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    figure = Figure(figsize=(6.4, 4.0))
    axes = figure.add_subplot()
    bins = np.linspace(values.min(), values.max(), 60) if values.size and values.max() > values.min() else 20
    axes.hist(values, bins=bins, color="tab:blue", alpha=0.7, label="all")
    if highlight is not None:
        marked = np.asarray(highlight, dtype=np.float64)
        marked = marked[np.isfinite(marked)]
        if marked.size:
            axes.hist(marked, bins=bins, color="tab:red", alpha=0.7, label=highlight_label)
    if threshold is not None:
        axes.axvline(threshold, color="black", linestyle="--", label=f"{threshold_label} = {threshold:.3f}")
    axes.set_yscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("count (log)")
    axes.set_title(title)
    axes.legend(fontsize=8)
    return save_figure(figure, path)


def pair_scatter(x: np.ndarray, y: np.ndarray, smaller_count: np.ndarray, xlabel: str, ylabel: str, title: str,
                 path: str | Path, x_line: Optional[float] = None, y_line: Optional[float] = None,
                 highlight: Optional[np.ndarray] = None, highlight_label: str = "") -> Path:
    """Class pairs on two scores (symlog y); dot size grows with the smaller class's image count."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    size = 4 + 6 * np.log2(np.maximum(np.asarray(smaller_count, dtype=np.float64), 1))
    marked = np.zeros(len(x), dtype=bool) if highlight is None else np.asarray(highlight, dtype=bool)
    rows = _subsample(len(x))
    rows = np.union1d(rows, np.flatnonzero(marked))  # never drop a highlighted pair
    figure = Figure(figsize=(6.4, 4.6))
    axes = figure.add_subplot()
    plain = rows[~marked[rows]]
    axes.scatter(x[plain], y[plain], s=size[plain], color="tab:blue", alpha=0.35, linewidths=0, label="other pairs")
    if marked.any():
        axes.scatter(x[marked], y[marked], s=size[marked], color="tab:red", alpha=0.85, linewidths=0,
                     label=highlight_label)
    if x_line is not None:
        axes.axvline(x_line, color="black", linestyle="--", linewidth=1, label=f"{xlabel} = {x_line:.3f}")
    if y_line is not None:
        axes.axhline(y_line, color="grey", linestyle=":", linewidth=1, label=f"{ylabel} = {y_line:g}")
    axes.set_yscale("symlog", linthresh=1.0)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(f"{ylabel} (symlog)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper left")
    return save_figure(figure, path)


def head_tail_histograms(head_pairs: np.ndarray, tail_pairs: np.ndarray, head_nearest: np.ndarray,
                         tail_nearest: np.ndarray, head_label: str, tail_label: str, path: str | Path) -> Path:
    """Inter-center similarity of head vs tail classes: sampled pairs, and nearest other center."""
    figure = Figure(figsize=(10, 4.0))
    for position, (head, tail, title) in enumerate((
            (head_pairs, tail_pairs, "cosine to other centers (sampled pairs)"),
            (head_nearest, tail_nearest, "cosine to the nearest other center"))):
        axes = figure.add_subplot(1, 2, position + 1)
        both = np.concatenate([np.asarray(head, float), np.asarray(tail, float)])
        both = both[np.isfinite(both)]
        bins = np.linspace(both.min(), both.max(), 50) if both.size and both.max() > both.min() else 20
        axes.hist(head[np.isfinite(head)], bins=bins, density=True, alpha=0.6, color="tab:blue", label=head_label)
        axes.hist(tail[np.isfinite(tail)], bins=bins, density=True, alpha=0.6, color="tab:orange", label=tail_label)
        axes.set_xlabel("cosine similarity")
        axes.set_ylabel("density")
        axes.set_title(title, fontsize=10)
        axes.legend(fontsize=8)
    return save_figure(figure, path)


def pr_curves(curves: Sequence[tuple[str, np.ndarray, np.ndarray, float, float]], path: str | Path,
              title: str = "precision-recall against ground truth") -> Path:
    """PR curves: ``(name, precision, recall, average precision, chance level)`` each."""
    figure = Figure(figsize=(5.6, 4.6))
    axes = figure.add_subplot()
    for name, precision, recall, ap, chance in curves:
        line, = axes.step(recall, precision, where="post", label=f"{name} (AP {ap:.3f})")
        axes.axhline(chance, color=line.get_color(), linestyle=":", linewidth=1,
                     label=f"{name} chance ({chance:.3f})")
    axes.set_xlim(0, 1.01)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower left")
    return save_figure(figure, path)
