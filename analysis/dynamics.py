"""Label noise from how training went: each sample's margin over the run, as the trainer recorded it.

The final features of a long run have fitted its flipped labels: a mislabeled image ends
up near the center of the label it was given, and "nearer another class than its own"
stops finding it (measured in docs/ANALYSIS.md). While the network was learning, though,
that image's given class lost to another one visit after visit. The trainer keeps, for
every sample, the sum of its margins (``cos(given class) - max cos(other column)``) and of
its visits, and per class pair how often one label's samples lost most to the other
(core/dynamics.py); this module reads them back and turns the margins into a per-sample
score, higher meaning more suspect (analysis/conflict.py scores the pairs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from analysis.centers import RunInfo, resolve_data_path
from core.errors import ConfigError, DataError


CLASS_SHARE = 0.5


@dataclass
class TrainingMargins:
    """Per-sample means over training, in dataset order, and the class pairs confused during it."""

    mean_margin: np.ndarray  # float64 [N]; nan: never visited
    visits: np.ndarray  # int64 [N]
    from_step: int
    to_step: int
    pair_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # sorted given * C + other
    pair_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def suspicion(self, labels: np.ndarray) -> np.ndarray:
        """``-(mean margin - CLASS_SHARE x the mean margin of the rest of its class)``: higher, more suspect.

        A clean image of a tail class is hard and its margin stays low all run, as a flipped
        image's does; against its classmates it is ordinary, while a flipped image is the one
        its class's images beat. Half of the class's own level is taken out (the share measured
        best on the development data, docs/ANALYSIS.md); a sample alone in its class, or never
        visited, is measured against all samples.
        """
        labels = np.asarray(labels, dtype=np.int64)
        visited = self.visits > 0
        overall = float(np.median(self.mean_margin[visited])) if visited.any() else 0.0
        margin = np.where(visited, self.mean_margin, overall)
        counts = np.bincount(labels, weights=visited.astype(np.float64))
        sums = np.bincount(labels, weights=np.where(visited, margin, 0.0))
        others = counts[labels] - visited
        rest = np.where(others > 0, (sums[labels] - np.where(visited, margin, 0.0)) / np.maximum(others, 1), overall)
        return -(margin - CLASS_SHARE * rest)


def training_margins(run: RunInfo, data_path: Path, num_samples: int) -> tuple[Optional[TrainingMargins], str]:
    """The run's recorded margins when ``data_path`` is the data it trained on; else None. The second value says
    which, for the report."""
    state = run.dynamics
    if state is None:
        return None, ("the run recorded no training margins (trained with --no-record-dynamics, or before they "
                      "were recorded)")
    visits = np.asarray(state["visits"], dtype=np.int64)
    if len(visits) != num_samples:
        return None, (f"the run's training margins cover {len(visits):,} samples and the analysed data holds "
                      f"{num_samples:,}: they are of other data")
    try:
        trained_on = resolve_data_path(run).resolve()
    except (ConfigError, DataError):  # the training data moved: the same number of samples is the evidence left
        trained_on = None
    if trained_on is not None and trained_on != Path(data_path).resolve():
        return None, f"the analysed data is not the data the run trained on ({trained_on})"
    margins = TrainingMargins(
        mean_margin=np.where(visits > 0, np.asarray(state["margin_sum"], dtype=np.float64) / np.maximum(visits, 1),
                             np.nan),
        visits=visits, from_step=int(state["from_step"]), to_step=run.step,
        pair_keys=np.asarray(state.get("pair_keys", np.zeros(0)), dtype=np.int64),
        pair_counts=np.asarray(state.get("pair_counts", np.zeros(0)), dtype=np.int64))
    return margins, (f"training margins of steps {margins.from_step}-{margins.to_step}, "
                     f"{int(np.median(visits))} visits per sample (median)")
