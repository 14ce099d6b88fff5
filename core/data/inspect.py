"""What ``data inspect`` reports: counts of a dataset or of a verification .bin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np



def inspect_path(path: str | Path) -> dict[str, Any]:
    """Counts for a .bin (pairs) or any ``--data`` dataset (images, classes, per-class stats).

    A .rec dataset also has a sample of its records read and parsed (``records_checked`` of
    ``records``), so a file whose bytes are corrupt fails here rather than reporting counts.
    """
    path = Path(path)
    if path.suffix == ".bin":
        from core.data.verification_bin import read_verification_bin
        images, issame = read_verification_bin(path)
        return {"num_pairs": int(len(issame)), "num_positive_pairs": int(np.sum(issame)),
                "num_images": len(images)}
    from core.data.loader import open_dataset
    dataset = open_dataset(path)
    counts = dataset.class_counts()
    present = counts[counts > 0]
    summary = {"num_images": len(dataset), "num_classes": int(dataset.num_classes),
               "empty_classes": int((counts == 0).sum()),
               "images_per_class_min": int(present.min()) if present.size else 0,
               "images_per_class_median": float(np.median(present)) if present.size else 0.0,
               "images_per_class_max": int(present.max()) if present.size else 0,
               "counts": counts}
    from core.data.recordio import RecordDataset
    if isinstance(dataset, RecordDataset):
        summary["records"] = len(dataset.reader)
        summary["records_checked"] = dataset.reader.verify_sample()
    return summary


def plot_class_histogram(counts: np.ndarray, out: str | Path, name: str) -> Path:
    """Histogram of images per class on log axes: the shape of the long tail at a glance. ``out``'s suffix
    names the format (png, pdf, svg); ``name`` is the dataset's, for the title."""
    from matplotlib.figure import Figure

    from core.figures import save_figure

    present = counts[counts > 0]
    figure = Figure(figsize=(7, 4))
    axis = figure.add_subplot()
    bins = np.unique(np.logspace(0, np.log10(max(2, present.max() + 1)), 30).astype(int))
    axis.hist(present, bins=bins, color="tab:blue", edgecolor="white")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("images per class")
    axis.set_ylabel("classes")
    axis.set_title(f"Images per class of {name}: {present.size:,} classes, {int(counts.sum()):,} images",
                   fontsize=10)
    return save_figure(figure, out)
