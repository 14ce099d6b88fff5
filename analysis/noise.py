"""Label noise: samples nearer another class's center than their own, or far from their own.

A flipped label puts a person's image under someone else's label: under a trained
network the image still lands near its true identity's center, so its similarity to
the center of its *given* label is low while another center is close. The score is the
margin ``nearest_similarity - own_similarity``; it also grows as ``own_similarity``
falls, so outliers (far from every center) rank above clean samples too.

When centers are class means, each sample's own center is computed without the sample
itself (leave-one-out): in a tail class of three images a flipped image is a third of
its own mean and would otherwise look close to it.

A method may bring evidence of its own (sub-center ArcFace: the angle to the class's
dominant sub-center); its spec's ``noise_signals`` hook returns ``NoiseSignal`` objects,
which the report's noise section (``noise_section``, written here) scores beside this one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from analysis import plots
from analysis.centers import Centers, class_sums
from analysis.dynamics import TrainingMargins
from analysis.groundtruth import noise_positives, score_detection
from analysis.index import IndexBuilder, build_index, normalize_rows
from analysis.report import Report, write_csv
from analysis.thumbnails import EXAMPLES_PER_CLASS, add_sheet, noise_rows
from core.errors import ConfigError, DataError

if TYPE_CHECKING:
    from analysis.runner import Analysis

NOISE_COLUMNS = ["index", "record", "path", "label", "own_similarity", "nearest_label", "nearest_similarity",
                 "feature_score", "training_margin", "training_score", "crossval_score", "score", "flagged"]
# What ranks noise.csv (its `score`): with the run's training margins, the sum of two robust z-scores (each signal
# centred on its median and scaled by its robust sd, so neither's units dominate): distance from the own center
# (-own_similarity) and the training score. Without them, the final-feature score alone.
RANK_COMBINED = "own-center distance + training margins"
RANK_FEATURES = "final features (nearest other - own similarity)"
# With cross-validated reference evidence (analysis/crossval.py, --crossval): its score (held-out and all-data models'
# robust z-scores summed), plus RUN_JOIN_WEIGHT times the run's own ranking above (as a robust z-score) when the two
# agree, a Spearman rank correlation of at least RUN_AGREEMENT_TO_JOIN. Chosen on the detection benchmark's
# development scenarios: there every Partial FC run agreed at 0.67-0.86 and the sum beat either alone; every DCQ run
# agreed at 0.23-0.39 and pulled the reference down (its class means bunch). Half weight: on 34 scenarios the run's
# share 0 / 0.25 / 0.5 / 0.75 / 1 gave noise AP 0.863 / 0.868 / 0.867 / 0.863 / 0.860; a user's own backbone is far
# stronger than the small reference network, so its say is not cut further (docs/ANALYSIS.md).
RUN_AGREEMENT_TO_JOIN = 0.6
RUN_JOIN_WEIGHT = 0.5
RANK_CROSSVAL = "cross-validated reference models (held-out and all-data nearest other mean - own label)"
RANK_CROSSVAL_AND_RUN = f"cross-validated reference models + {RUN_JOIN_WEIGHT:g} x the run's own ranking"
# Both default flags are fences this many robust standard deviations (1.4826 x MAD) from
# the median of all samples: the score's above it, the own-center similarity's below it.
# Four keeps a Gaussian's false-alarm rate near 3e-5 while the few percent of flipped
# samples cannot move the median or the MAD much.
# - Outliers: the robust sd is taken as at least MIN_ROBUST_SD, so that a very tight
#   distribution (a well separated toy set) does not turn cosines 0.05 below the median
#   into "outliers".
# - Score: a sample must also sit nearer another class than its own (score > 0). Score > 0
#   alone flagged 987 samples of the main job's run to find 416 of its 420 flips
#   (precision 0.42): a clean sample of a tail class, whose leave-one-out mean is a
#   couple of images, often lands a little nearer a look-alike. The fence needs no floor
#   (the zero is one) and scales with the backbone: on a DCQ run whose cosines bunch near
#   1 it flags 8 % of the samples where score > 0 flagged 75 %.
OUTLIER_MADS = 4.0
# Real datasets are estimated to carry up to a few tens of percent of wrong labels
# (insightface's noise experiments flip 40 %); a rule that flags more than half of the
# samples is flagging a backbone that does not separate its classes, not label noise.
MAX_PLAUSIBLE_FLAGGED_SHARE = 0.5
MIN_ROBUST_SD = 0.05
# Samples per search: the normalised copy of a chunk is 512 MB at 512-d, whatever the dataset size.
SAMPLE_CHUNK_ROWS = 262_144
# --write-clean's list is staged beside the other outputs under this name, and moved to its path last.
STAGED_CLEAN_LIST = ".clean-list"
SAMPLES_SHEET = "noise_samples.jpg"  # contact sheet of the most suspect samples' faces


@dataclass
class NoiseSignal:
    """A method's own per-sample evidence of a wrong label, scored beside the project's (higher: more suspect).

    ``scores`` and ``flagged`` are in dataset order; ``name`` becomes a noise.csv column.
    """

    name: str
    title: str
    description: str  # how it is computed and what it flags, for the report
    scores: np.ndarray  # float [N]
    flagged: np.ndarray  # bool [N]


@dataclass
class SampleNeighbours:
    """Each sample against the centers: its own label's, the nearest other, the nearest of all."""

    own_similarity: np.ndarray  # float32 [N]
    nearest_label: np.ndarray  # int64 [N] nearest center that is not the sample's label (-1: none)
    nearest_similarity: np.ndarray  # float32 [N]
    leave_one_out: bool

    @property
    def top_label(self) -> np.ndarray:
        """The nearest center over all classes: the own one unless another is nearer."""
        return np.where(self.nearest_similarity > self.own_similarity, self.nearest_label, -1)


def sample_neighbours(embeddings: np.ndarray, labels: np.ndarray, centers: Centers,
                      index_builder: IndexBuilder = build_index, progress: bool = False,
                      chunk_rows: int = SAMPLE_CHUNK_ROWS, unit_sums: Optional[np.ndarray] = None,
                      leave_one_out: Optional[bool] = None) -> SampleNeighbours:
    """Similarities of every sample to its own center and to the nearest other center.

    One kNN search (k=2) over the centers answers "nearest other" for all samples: the
    own center can take at most one of the two places. Samples are read ``chunk_rows`` at
    a time, so ``embeddings`` may be a memory map far larger than memory. ``unit_sums``:
    per-class sums of the L2-normalised rows, when the caller already has them.
    ``leave_one_out`` (default: when the centers are class means) takes each sample out of
    its own class mean; False for means of other samples (analysis/crossval.py).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(embeddings) != len(labels):
        raise DataError(f"{len(embeddings)} embeddings but {len(labels)} labels")
    if len(labels) == 0:
        raise DataError("the dataset holds no samples to analyse")
    num_classes = len(centers.vectors)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"labels range over [{labels.min()}, {labels.max()}] but there are {num_classes} centers")
    unit = normalize_rows(centers.vectors)
    present = np.flatnonzero(centers.present)
    index = index_builder(unit[present])
    k = min(2, len(present))
    if leave_one_out is None:
        leave_one_out = centers.source == "means"
    if leave_one_out:
        sums = (class_sums(embeddings, labels, num_classes, chunk_rows=chunk_rows, unit_rows=True)
                if unit_sums is None else unit_sums)
        counts = np.bincount(labels, minlength=num_classes)
    own = np.empty(len(labels), dtype=np.float32)
    nearest_label = np.empty(len(labels), dtype=np.int64)
    nearest_similarity = np.empty(len(labels), dtype=np.float32)
    for start in tqdm(range(0, len(labels), chunk_rows), desc="samples vs centers", unit="chunk",
                      disable=not progress, leave=False):
        stop = start + chunk_rows
        x, own_labels = normalize_rows(embeddings[start:stop]), labels[start:stop]
        sims, rows = index.search(x, k)
        found = np.where(rows >= 0, present[np.maximum(rows, 0)], -1)
        first_is_own = found[:, 0] == own_labels
        if k == 2:
            nearest = np.where(first_is_own, found[:, 1], found[:, 0])
            similarity = np.where(first_is_own, sims[:, 1], sims[:, 0])
        else:
            nearest = np.where(first_is_own, -1, found[:, 0])
            similarity = np.where(first_is_own, -np.inf, sims[:, 0])
        nearest_label[start:stop] = nearest
        nearest_similarity[start:stop] = np.where(nearest >= 0, similarity, -1.0)
        own[start:stop] = (_leave_one_out_similarity(x, own_labels, sums, counts) if leave_one_out
                           else np.einsum("ij,ij->i", x, unit[own_labels]))
    return SampleNeighbours(own_similarity=own, nearest_label=nearest_label, nearest_similarity=nearest_similarity,
                            leave_one_out=leave_one_out)


def _leave_one_out_similarity(unit_rows: np.ndarray, labels: np.ndarray, unit_sums: np.ndarray,
                              counts: np.ndarray) -> np.ndarray:
    """cos(x, mean of the other samples of x's class); a single-sample class keeps cos(x, x) = 1."""
    rest = unit_sums[labels] - unit_rows
    norms = np.linalg.norm(rest, axis=1)
    value = np.einsum("ij,ij->i", unit_rows, rest) / np.maximum(norms, 1e-12)
    return np.where(counts[labels] > 1, value, 1.0)


def _median_and_robust_sd(values: np.ndarray, min_sd: float = 0.0) -> tuple[float, float]:
    median = float(np.median(values))
    return median, max(float(np.median(np.abs(values - median))) * 1.4826, min_sd)


def outlier_cutoff(own_similarity: np.ndarray, mads: float = OUTLIER_MADS) -> float:
    """Own-center similarity below which a sample is an outlier (median - mads x robust sd, sd >= 0.05)."""
    median, robust_sd = _median_and_robust_sd(own_similarity, MIN_ROBUST_SD)
    return median - mads * robust_sd


def score_cutoff(score: np.ndarray, mads: float = OUTLIER_MADS) -> float:
    """Score above which a sample is flagged as mislabeled: max(0, median + mads x robust sd)."""
    median, robust_sd = _median_and_robust_sd(score)
    return max(0.0, median + mads * robust_sd)


def robust_z(values: np.ndarray) -> np.ndarray:
    """``(values - median) / robust sd``: signals in different units on one scale, unmoved by a few percent of noise.
    When more than half the values are equal (no robust spread) the standard deviation scales instead, so one signal
    never swamps the others it is summed with."""
    values = np.asarray(values, dtype=np.float64)
    median, robust_sd = _median_and_robust_sd(values)
    if robust_sd <= 0:
        robust_sd = float(np.std(values)) or 1.0
    return (values - median) / robust_sd


def noise_table(neighbours: SampleNeighbours, labels: np.ndarray, records: Optional[np.ndarray] = None,
                paths: Optional[Sequence[str]] = None, threshold: Optional[float] = None,
                outlier_similarity: Optional[float] = None, training: Optional[TrainingMargins] = None,
                crossval: Optional[np.ndarray] = None) -> pd.DataFrame:
    """One row per sample (``NOISE_COLUMNS``), sorted by score, highest first.

    ``score`` ranks by the run's own evidence: ``RANK_COMBINED`` when its ``training`` margins
    are given, else ``RANK_FEATURES`` (``feature_score``). With ``crossval`` (the reference
    score per sample, analysis/crossval.py's ``noise_score``; NaN: none) the ranking is ``RANK_CROSSVAL``, joined
    by ``RUN_JOIN_WEIGHT`` times the run's own when the two agree (``RUN_AGREEMENT_TO_JOIN``).
    ``table.attrs["ranking"]`` says which, ``attrs["agreement"]`` the rank correlation. ``flagged``: a score above
    ``threshold`` (default: ``score_cutoff``), or an ``own_similarity`` below
    ``outlier_similarity`` (default: ``outlier_cutoff``). The values used are in ``table.attrs``.
    """
    n = len(labels)
    cutoff = outlier_cutoff(neighbours.own_similarity) if outlier_similarity is None else outlier_similarity
    feature_score = neighbours.nearest_similarity - neighbours.own_similarity
    if training is not None:
        training_margin, training_score = training.mean_margin, training.suspicion(labels)
    else:
        training_margin = training_score = np.full(n, np.nan)
    score, ranking = run_ranking(neighbours.own_similarity, feature_score, training_score)
    agreement = None
    crossval_score = np.full(n, np.nan) if crossval is None else np.asarray(crossval, dtype=np.float64)
    if crossval is not None:
        reference = robust_z(neutral_where_missing(crossval_score))
        agreement = rank_correlation(reference, score)
        joined = agreement >= RUN_AGREEMENT_TO_JOIN
        score = reference + RUN_JOIN_WEIGHT * robust_z(score) if joined else reference
        ranking = RANK_CROSSVAL_AND_RUN if joined else RANK_CROSSVAL
    if threshold is None:
        threshold = score_cutoff(score)
    flagged = (score > threshold) | (neighbours.own_similarity < cutoff)
    table = pd.DataFrame({
        "index": np.arange(n, dtype=np.int64),
        "record": pd.array(records, dtype="Int64") if records is not None else pd.array([pd.NA] * n, dtype="Int64"),
        "path": list(paths) if paths is not None else [""] * n,
        "label": np.asarray(labels, dtype=np.int64),
        "own_similarity": neighbours.own_similarity.round(6),
        "nearest_label": neighbours.nearest_label,
        "nearest_similarity": neighbours.nearest_similarity.round(6),
        "feature_score": feature_score.round(6),
        "training_margin": np.round(training_margin, 6),
        "training_score": np.round(training_score, 6),
        "crossval_score": np.round(crossval_score, 6),
        "score": score.round(6),
        "flagged": flagged,
    }, columns=NOISE_COLUMNS)
    table.attrs["outlier_similarity"] = cutoff
    table.attrs["threshold"] = threshold
    table.attrs["ranking"] = ranking
    table.attrs["agreement"] = agreement
    return table.sort_values(["score", "index"], ascending=[False, True], kind="stable").reset_index(drop=True)


def run_ranking(own_similarity: np.ndarray, feature_score: np.ndarray, training_score: np.ndarray
                ) -> tuple[np.ndarray, str]:
    """The run's own noise score and its name: ``RANK_COMBINED`` from the own-center distance and the training
    score, or ``RANK_FEATURES`` (``feature_score``) when the training score is empty (all NaN)."""
    if np.isnan(training_score).all():
        return np.asarray(feature_score), RANK_FEATURES
    return robust_z(-np.asarray(own_similarity, dtype=np.float64)) + robust_z(training_score), RANK_COMBINED


def neutral_where_missing(values: np.ndarray) -> np.ndarray:
    """Samples a score cannot judge (NaN: no own class mean to compare with) sit at its median."""
    present = np.isfinite(values)
    return np.where(present, values, np.median(values[present]) if present.any() else 0.0)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (ties share their mean rank)."""
    from scipy.stats import rankdata

    ranks_a, ranks_b = rankdata(a), rankdata(b)
    if ranks_a.std() == 0 or ranks_b.std() == 0:
        return 0.0
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


@dataclass
class CleanPlan:
    """What ``--write-clean`` does to each sample (by dataset index)."""

    keep: np.ndarray  # bool [N]
    labels: np.ndarray  # int64 [N] label to write (relabelled where moved)
    dropped: int
    relabelled: int
    kept_last: int  # flagged samples kept because they were their class's last one


RANKING_TEXT = {
    RANK_COMBINED: "`score`, which ranks the table, adds two robust z-scores (each signal less its median, over its "
                   "robust sd): the distance from the own center (-own_similarity) and `training_score`. A long run's "
                   "final features fit flipped labels (a mislabeled image ends near the center of the label it was "
                   "given); the margins over training still show the class it kept losing to.",
    RANK_FEATURES: "`score`, which ranks the table, is `feature_score`: the run recorded no training margins (or they "
                   "are of other data), so only the final features rank.",
    RANK_CROSSVAL: "`score`, which ranks the table, is `crossval_score` (`analyze crossval`): the robust z-scores of "
                   "each image's nearest other class mean minus its own, read through a reference model that never "
                   "trained on it and through one trained on all the data, summed. The run's own ranking disagreed "
                   f"with it (rank correlation below {RUN_AGREEMENT_TO_JOIN}), so it was left out: on the detection "
                   "benchmark the runs that disagree are the ones whose class means bunch (DCQ), and they rank worse "
                   "than the reference alone.",
    RANK_CROSSVAL_AND_RUN: "`score`, which ranks the table, adds the robust z-score of `crossval_score` (`analyze "
                           "crossval`: each image's nearest other class mean minus its own, read through a reference "
                           "model that never trained on it and through one trained on all the data) and "
                           f"{RUN_JOIN_WEIGHT:g} times that of the run's own ranking (own-center distance + training "
                           "margins, or the final features without margins), which agreed with it (rank correlation "
                           f"at least {RUN_AGREEMENT_TO_JOIN}).",
}
# Of the samples the training margins find most suspect (this top share), how many the final features still place
# nearer another class's center. 100 % on the main job's 12-epoch run, 60 % after 30 epochs (docs/ANALYSIS.md).
MEMORISATION_SHARE = 0.02
MEMORISED_BELOW = 0.8


def memorisation_sample(samples: int) -> int:
    """How many top suspects the memorisation figure looks at: MEMORISATION_SHARE, at least 10 (a small set's 2 %
    would be one or two samples)."""
    return min(samples, max(10, int(MEMORISATION_SHARE * samples)))


# The evidence the memorisation figure trusts, by noise.csv column: what the final features have not shaped.
MEMORISATION_REFERENCES = {"crossval_score": "the cross-validated reference models",
                           "training_score": "the training margins"}


def memorisation(table: pd.DataFrame, reference: str = "training_score") -> Optional[float]:
    """The share of the most suspect samples by ``reference`` (a ``MEMORISATION_REFERENCES`` column) that still sit
    nearer another class in the final features; None when the column is empty."""
    values = table[reference].to_numpy(dtype=np.float64)
    if np.isnan(values).all():
        return None
    top = np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")[:memorisation_sample(len(table))]
    return float((table["feature_score"].to_numpy()[top] > 0).mean())


def memorisation_warning(agreement: Optional[float], reference: str = "training_score") -> Optional[str]:
    if agreement is None or agreement >= MEMORISED_BELOW:
        return None
    source = MEMORISATION_REFERENCES[reference]
    return (f"the final features have fitted part of the noise: of the samples {source} find most "
            f"suspect (the top {MEMORISATION_SHARE:.0%}), only {agreement:.0%} still sit nearer another class's "
            f"center, so a ranking by final features alone (feature_score) would miss the rest; the default score "
            f"ranks by {source} too")


def noise_warning(flagged_share: float) -> Optional[str]:
    """A warning when the flags cannot be label noise (see MAX_PLAUSIBLE_FLAGGED_SHARE), else None."""
    if flagged_share <= MAX_PLAUSIBLE_FLAGGED_SHARE:
        return None
    return (f"{flagged_share:.0%} of the samples are flagged: more sit nearer another class's center than their "
            "own than label noise can explain, so this run's backbone does not separate its training classes and "
            "the flags are no cleaning list (check the run's verification accuracy first)")


def clean_plan(table: pd.DataFrame, num_classes: int, relabel: bool = False) -> CleanPlan:
    """Drop flagged samples (or move them to their nearest class with ``relabel``).

    A flagged sample is relabelled only when another center is actually nearer than
    its own; flagged outliers with no better class are dropped. No class is ever
    emptied: its most typical flagged sample stays, so the cleaned list keeps the run's
    class numbering and can be analysed against the same run.
    """
    ordered = table.sort_values("index", kind="stable")
    labels = ordered["label"].to_numpy(dtype=np.int64)
    flagged = ordered["flagged"].to_numpy(dtype=bool)
    nearest = ordered["nearest_label"].to_numpy(dtype=np.int64)
    better = ordered["feature_score"].to_numpy() > 0
    own = ordered["own_similarity"].to_numpy()
    move = flagged & relabel & better & (nearest >= 0)
    drop = flagged & ~move
    new_labels = np.where(move, nearest, labels)
    original = np.bincount(labels, minlength=num_classes) > 0
    kept_last = 0
    while True:
        leaving = drop | move
        remaining = np.bincount(labels[~leaving], minlength=num_classes) + np.bincount(
            new_labels[move], minlength=num_classes)
        empty = np.flatnonzero((remaining == 0) & original)
        if empty.size == 0:
            break
        # Restoring a sample only ever shrinks the set that leaves, so this ends.
        for label in empty:
            members = np.flatnonzero((labels == label) & leaving)
            keep_row = members[np.argmax(own[members])]
            drop[keep_row] = move[keep_row] = False
            new_labels[keep_row] = label
            kept_last += 1
    return CleanPlan(keep=~drop, labels=np.where(drop, labels, new_labels), dropped=int(drop.sum()),
                     relabelled=int(move.sum()), kept_last=kept_last)


def record_reference(rec_path: Path, key: int) -> str:
    """A list-file path naming one record of a .rec file: ``/abs/train.rec#KEY``."""
    return f"{Path(rec_path).resolve()}#{int(key)}"


def write_clean_list(path: str | Path, plan: CleanPlan, dataset, records: Optional[np.ndarray],
                     paths: Optional[Sequence[str]]) -> int:
    """Write the cleaned samples as a ``path label`` list usable as ``--data``; returns the line count.

    Folder and list data are written as absolute image paths. RecordIO data is written
    as ``/abs/train.rec#KEY label`` lines, so cleaning rewrites only an index, never the
    images (the TFace-style convention). Labels are the dense class numbers: because no
    class is emptied, reading the list back gives every sample its class number again.
    """
    from core.data.folder import write_list

    keep = np.flatnonzero(plan.keep)
    if paths is not None:
        entries = [str(Path(paths[i]).absolute()) for i in keep]
    elif records is not None:
        rec_path = getattr(dataset, "rec_path", None)
        if rec_path is None:
            raise DataError("--write-clean: the dataset has record keys but no .rec file path to reference")
        entries = [record_reference(rec_path, records[i]) for i in keep]
    else:
        raise ConfigError("--write-clean needs data whose samples have paths or record keys")
    write_list(path, entries, plan.labels[keep].tolist())
    return len(keep)


def noise_section(analysis: "Analysis", report: Report) -> dict[str, Any]:
    """noise.csv, the optional cleaned list, plots and ground-truth scores; returns the key figures."""
    inputs, options = analysis.inputs, analysis.options
    sources = inputs.sources
    training, training_note = analysis.training_margins
    crossval = analysis.crossval
    table = noise_table(analysis.samples, inputs.labels, sources.records, sources.paths, options.noise_threshold,
                        options.outlier_similarity, training,
                        crossval.noise_score if crossval is not None else None)
    ranking = table.attrs["ranking"]
    rows = table["index"].to_numpy()
    signals = analysis.noise_signals
    for signal in signals:
        table[signal.name] = np.round(signal.scores[rows], 6)
        table[f"{signal.name}_flagged"] = signal.flagged[rows]
    write_csv(table, analysis.file("noise.csv"))
    flagged = table["flagged"].to_numpy()
    threshold = float(table.attrs["threshold"])
    rule = "default" if options.noise_threshold is None else "--threshold"
    figures: dict[str, Any] = {
        "samples": len(table),
        "flagged samples": int(flagged.sum()),
        "flagged share (the estimated noise rate)": float(flagged.mean()),
        "ranked by": ranking,
        "training margins": training_note,
        "cross-validated reference": (f"{len(crossval.repeats)} repeats of {crossval.folds} folds "
                                      f"({analysis.crossval_dir}); its rank correlation with the run's own ranking: "
                                      f"{table.attrs['agreement']:.2f}" if crossval is not None
                                      else "none (python cli.py analyze crossval RUN, then analyze again)"),
        "score threshold": f"{threshold:.4f} ({rule})",
        "outlier cutoff (own similarity)": round(float(table.attrs["outlier_similarity"]), 4),
        "nearer another class's center than their own": int((table["feature_score"] > 0).sum()),
        "own center": "leave-one-out class mean" if analysis.samples.leave_one_out else "the method's stored center",
    }
    summary: dict[str, Any] = {"samples": len(table), "flagged": int(flagged.sum()),
                               "threshold": round(threshold, 6), "threshold_rule": rule, "ranking": ranking,
                               "outlier_similarity": float(table.attrs["outlier_similarity"])}
    if crossval is not None:
        summary["crossval_agreement"] = round(float(table.attrs["agreement"]), 4)
    reference = "crossval_score" if crossval is not None else "training_score"
    fitted = memorisation(table, reference)
    if fitted is not None:
        figures[f"most suspect by {MEMORISATION_REFERENCES[reference]} that the final features still place nearer "
                "another class"] = f"{fitted:.0%} (of the top {memorisation_sample(len(table)):,})"
        summary["final_features_agree"] = round(fitted, 4)
    not_credible = noise_warning(float(flagged.mean()))
    # a memorised run's flags, by the default, still hold
    warning = not_credible or memorisation_warning(fitted, reference)
    if warning:
        summary["warning"] = warning
    if options.write_clean is not None and not_credible:
        figures["clean list"] = f"not written ({options.write_clean}): the flags are not credible"
        summary["clean"] = {"path": str(options.write_clean), "written": False}
    elif options.write_clean is not None:
        plan = clean_plan(table, inputs.num_classes, relabel=options.relabel)
        # staged with the other outputs, moved to its place only when the whole command succeeds
        lines = write_clean_list(analysis.out_dir / STAGED_CLEAN_LIST, plan, inputs.dataset, sources.records,
                                 sources.paths)
        analysis.written.append(Path(options.write_clean))
        figures.update({"clean list": str(options.write_clean), "clean list samples": lines,
                        "dropped": plan.dropped, "relabelled": plan.relabelled,
                        "flagged but kept (last sample of their class)": plan.kept_last})
        summary["clean"] = {"path": str(options.write_clean), "written": True, "samples": lines,
                            "dropped": plan.dropped, "relabelled": plan.relabelled, "kept_last": plan.kept_last}
    score = None
    truth_by_row = None
    if inputs.ground_truth is not None:
        truth = noise_positives(inputs.ground_truth, len(inputs.labels), sources.records)
        if truth is not None:
            truth_by_row = truth[rows]
            score = score_detection("noise", table["score"].to_numpy(), truth_by_row, flagged)
    signal_scores = []
    for signal in signals:
        entry: dict[str, Any] = {"title": signal.title, "flagged": int(signal.flagged.sum())}
        if truth_by_row is not None:
            detection = score_detection(f"noise by {signal.title}", signal.scores[rows], truth_by_row,
                                        signal.flagged[rows])
            signal_scores.append(detection)
            entry["ground_truth"] = detection.figures()
        summary.setdefault("signals", {})[signal.name] = entry
    report.heading("Label noise")
    report.paragraph(
        "Each sample's cosine to the center of its own label (`own_similarity`) and to the nearest other "
        "center (`nearest_similarity`, `nearest_label`); `feature_score` = nearest - own, so samples that sit "
        "nearer another class and samples far from their own center rank first by the final features. "
        "`training_margin` is the sample's mean margin over training (its given class's cosine minus the best "
        "other column's, at every visit) and `training_score` the same against the rest of its class (higher: "
        "more suspect); they are empty when the run recorded no margins. `crossval_score` is the cross-validated "
        "reference's score, empty without --crossval. " + RANKING_TEXT[ranking] + " Flagged: "
        "score above the threshold, or own similarity below the outlier cutoff. By default both are fences 4 "
        "robust standard deviations (1.4826 x MAD) from the median of all samples, the score's above it and at "
        "least 0, the own similarity's below it; the fences scale with how tightly this backbone clusters its "
        "classes.")
    if warning:
        report.paragraph(f"**Warning:** {warning}.")
    report.figures(figures)
    for signal in signals:
        report.paragraph(f"`{signal.name}` ({signal.title}, from the {inputs.run.method} run's own state): "
                         f"{signal.description} It flags {int(signal.flagged.sum()):,} samples "
                         f"(`{signal.name}_flagged`).")
    shown = table.copy()
    if truth_by_row is not None:  # the report's table only: noise.csv keeps its columns for every dataset
        shown.insert(shown.columns.get_loc("path") + 1, "true_flip", truth_by_row)
        report.paragraph("`true_flip` (a column of the report, not of noise.csv): the ground truth says the "
                         "sample's label was flipped.")
    report.table(shown, "Most suspect samples (noise.csv)")
    add_sheet(analysis, report, noise_rows(table, inputs.labels, truth_by_row), SAMPLES_SHEET,
              f"The most suspect samples (the first rows of noise.csv), each beside up to {EXAMPLES_PER_CLASS} "
              "images of its given label and of its nearest other label (their first in dataset order, the "
              "sheet's suspects left out)." + (" Green rows: the label was flipped, by the ground truth."
                                               if truth_by_row is not None else ""))
    scores = table["score"].to_numpy()
    plots.histogram(scores, f"score ({ranking})", f"Label noise: each sample's score, ranked by {ranking}",
                    analysis.figure("noise_score"), threshold=threshold,
                    highlight=scores[truth_by_row] if truth_by_row is not None else None,
                    highlight_label="flipped labels (ground truth)")
    report.image(analysis.figure_name("noise_score"),
                 "Noise score of every sample; red: samples whose label was flipped "
                 "(ground truth), when known.")
    if score is not None:
        analysis.score_block(report, [score, *signal_scores], "noise_pr", "flipped images")
        summary["ground_truth"] = score.figures()
    analysis.summary["noise"] = summary
    return summary
