"""Inter-class conflict: pairs of classes whose centers are so close they are probably one person.

A person filed under two labels trains two centers from the same faces, so the two end
up nearer each other than centers of different people ever get. The candidates are
the k nearest other centers of every class (deduplicated into unordered pairs); pairs
above the threshold are flagged. Sample-level evidence backs each pair: the fraction of
a's samples whose nearest center is b's (and the reverse). For two different people it
is about zero; for one person under two labels a network cannot tell the labels apart,
so a sizeable share of each label's images lands on the other's center. A second
ranking, ``same_person_llr`` (analysis/plda.py), weighs how many images stand behind each
center, which the cosine cannot: small split identities have noisy means. The report's
conflict section is written here too (``conflict_section``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
import pandas as pd

from analysis import plots
from analysis.centers import Centers
from analysis.choices import DEFAULT_K
from analysis.crossval import (CENTER_SHARE, MUTUAL_RANK_WEIGHT, SEPARATION_WEIGHT, RepeatedCrossValidation,
                               conflict_score, nonzero_rows)
from analysis.dynamics import TrainingMargins
from analysis.groundtruth import DetectionScore, conflict_positives, score_detection
from analysis.index import IndexBuilder, IndexInfo, build_index, normalize_rows, self_neighbours
from analysis.report import Report, write_csv
from analysis.thumbnails import EXAMPLES_PER_CLASS, add_sheet, conflict_rows
from core.errors import ConfigError, DataError

if TYPE_CHECKING:
    from analysis.runner import Analysis

CONFLICT_COLUMNS = ["label_a", "label_b", "similarity", "count_a", "count_b", "flagged",
                    "a_samples_nearest_b", "b_samples_nearest_a", "same_person_llr", "training_confusion",
                    "review_score", "crossval_similarity", "crossval_separation", "crossval_score"]
# review_score, when the run recorded its training dynamics: the mean of the pair's rank by cosine and by training
# confusion, as a share of the pairs. Chosen on the detection benchmark's development scenarios, where it ranked
# split pairs of 5+ images better than either alone; on the held-out ones it did so on 30-epoch runs only
# (docs/ANALYSIS.md).
PAIRS_SHEET = "conflict_pairs.jpg"  # contact sheet of the most similar pairs' faces
# The default threshold adapts to the run: a class's nearest-other-center cosine is
# "ordinary" up to FENCE_SDS robust standard deviations above the median over all
# classes, and never below insightface's duplicate threshold (interclass filtering 0.4).
# See default_conflict_threshold and conflict_threshold_rationale.
CONFLICT_FLOOR = 0.4
FENCE_SDS = 2.5


@dataclass
class CenterNeighbours:
    """Each class's k nearest other centers (classes without a center are left out)."""

    present: np.ndarray  # int64 [P] classes that have a center
    labels: np.ndarray  # int64 [P, k] neighbour classes, -1 where missing
    similarities: np.ndarray  # float32 [P, k]
    unit: np.ndarray  # float32 [P, D] unit centers of the present classes
    index: object  # the NeighborIndex, kept for range search
    info: Optional[IndexInfo]

    def nearest_other(self, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """Per class (all C): nearest other class and its cosine (-1 / NaN without a center)."""
        label = np.full(num_classes, -1, dtype=np.int64)
        similarity = np.full(num_classes, np.nan, dtype=np.float32)
        label[self.present] = self.labels[:, 0]
        similarity[self.present] = np.where(self.labels[:, 0] >= 0, self.similarities[:, 0], np.nan)
        return label, similarity


def center_neighbours(centers: Centers, k: int = DEFAULT_K, index_builder: IndexBuilder = build_index,
                      progress: bool = False) -> CenterNeighbours:
    """One all-centers kNN (self excluded) shared by the conflict and long-tail analyses."""
    if k < 1:
        raise ConfigError(f"--k must be >= 1, got {k}")
    present = np.flatnonzero(centers.present)
    if len(present) < 2:
        raise DataError(f"only {len(present)} class(es) have a center; conflicts need at least two")
    unit = normalize_rows(centers.vectors[present])
    index = index_builder(unit)
    sims, rows = self_neighbours(index, unit, min(k, len(present) - 1), progress=progress)
    labels = np.where(rows >= 0, present[np.maximum(rows, 0)], -1)
    return CenterNeighbours(present=present, labels=labels, similarities=sims, unit=unit, index=index,
                            info=getattr(index, "info", None))


def _evidence(labels: np.ndarray, top_label: np.ndarray, num_classes: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Sorted keys ``a * C + b`` and how many of a's samples have b's center nearest."""
    moved = top_label >= 0
    keys = labels[moved].astype(np.int64) * num_classes + top_label[moved].astype(np.int64)
    return np.unique(keys, return_counts=True)


def _lookup(keys: np.ndarray, counts: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    if len(keys) == 0:
        return np.zeros(len(wanted), dtype=np.int64)
    at = np.clip(np.searchsorted(keys, wanted), 0, len(keys) - 1)
    return np.where(keys[at] == wanted, counts[at], 0)


def training_confusion(training: TrainingMargins, labels: np.ndarray, num_classes: int, label_a: np.ndarray,
                       label_b: np.ndarray) -> np.ndarray:
    """Per pair: the share of each label's training visits whose best other column was the other label, the
    smaller of the two directions. One person under two labels is confused both ways early in training, even once
    training has pulled the labels apart; a look-alike class that draws a tail class's samples is confused one way.
    """
    class_visits = np.bincount(np.asarray(labels, dtype=np.int64), weights=training.visits, minlength=num_classes)

    def rate(given: np.ndarray, other: np.ndarray) -> np.ndarray:
        return _lookup(training.pair_keys, training.pair_counts, given * num_classes + other) / np.maximum(
            class_visits[given], 1)

    return np.minimum(rate(label_a, label_b), rate(label_b, label_a))


def confused_pairs(training: TrainingMargins, num_classes: int) -> np.ndarray:
    """Keys ``min * C + max`` of the label pairs confused both ways during training: candidates that the final
    centers' nearest neighbours may miss when training has pulled the two labels apart."""
    given, other = training.pair_keys // num_classes, training.pair_keys % num_classes
    both = np.isin(other * num_classes + given, training.pair_keys)
    return np.unique(np.minimum(given, other)[both] * num_classes + np.maximum(given, other)[both])


def crossval_candidates(crossval: RepeatedCrossValidation, k: int) -> np.ndarray:
    """Keys ``min * C + max`` of each class's k nearest other classes by the reference models' cosine: a
    split person whose labels the analysed run pulled apart (or whose DCQ means bunch) is near under them."""
    vectors = crossval.class_vectors  # built on access: [C, R (K+1) D] float32, read once
    num_classes = len(vectors)
    present = np.flatnonzero(nonzero_rows(vectors))
    if len(present) < 2:
        return np.zeros(0, dtype=np.int64)
    if len(present) < num_classes:  # a second copy only when some class has no image
        vectors = vectors[present]
    _, rows = self_neighbours(build_index(vectors), vectors, min(k, len(present) - 1))
    given = np.repeat(present, rows.shape[1])
    other = np.where(rows >= 0, present[np.maximum(rows, 0)], -1).reshape(-1)
    valid = other >= 0
    return np.unique(np.minimum(given, other)[valid] * num_classes + np.maximum(given, other)[valid])


def default_conflict_threshold(nearest_other: np.ndarray) -> float:
    """``max(0.4, median + 2.5 x 1.4826 x MAD)`` of every class's nearest-other-center cosine.

    Absolute cosines are not comparable across backbones and center sources (class
    means of a small network sit in a narrow cone, Partial FC centers are nearly
    orthogonal), so a fixed number would flag everything for one and nothing for the
    other. What is comparable is how far a pair stands above the typical nearest
    neighbour of this run: the median and MAD are untouched by the few percent of
    conflicting classes, and 2.5 robust standard deviations is exceeded by about 0.6 %
    of a Gaussian's draws. The floor keeps pairs below insightface's duplicate threshold
    from ever being called conflicts.
    """
    values = np.asarray(nearest_other, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return CONFLICT_FLOOR
    median = float(np.median(values))
    robust_sd = 1.4826 * float(np.median(np.abs(values - median)))
    return round(max(CONFLICT_FLOOR, median + FENCE_SDS * robust_sd), 4)


def conflict_warning(threshold: float) -> Optional[str]:
    """A warning when no cosine can exceed the threshold (class means bunched near one direction), else None."""
    if threshold < 1.0:
        return None
    return (f"the cosine threshold {threshold:.4f} is not below 1, so no pair can be flagged: this run's class "
            "means sit almost on one direction (its backbone separates its training classes poorly); rank by "
            "same_person_llr or set --threshold")


def conflict_table(centers: Centers, neighbours: CenterNeighbours, threshold: Optional[float] = None,
                   labels: Optional[np.ndarray] = None, top_label: Optional[np.ndarray] = None,
                   complete_flagged: bool = True,
                   pair_llr: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None,
                   training: Optional[TrainingMargins] = None,
                   crossval: Optional[RepeatedCrossValidation] = None) -> pd.DataFrame:
    """Candidate pairs (``CONFLICT_COLUMNS``), sorted by similarity, highest first.

    With ``complete_flagged`` a class whose k-th neighbour is still above the threshold
    may have more flagged partners than k: those classes are range-searched (on CPU)
    and every pair above the threshold is added, so the flagged set never depends on k.
    ``labels`` / ``top_label`` (per sample: its class, its nearest center over all
    classes or -1 for its own) give the sample-level evidence columns. ``pair_llr`` (for
    instance ``TwoCovarianceModel.pair_llr``) fills ``same_person_llr``, a ranking that
    weighs how many images stand behind each center. ``training`` (the run's recorded
    dynamics, with ``labels``) fills ``training_confusion`` and adds the pairs confused both
    ways during training to the candidates. ``crossval`` (analysis/crossval.py) fills
    ``crossval_similarity`` (the pair's cosine under the reference models),
    ``crossval_separation`` (how well the fold models tell the two labels' held-out images
    apart) and ``crossval_score`` (the two combined over the candidates), and adds each
    class's k nearest under it to the candidates. ``threshold`` None:
    ``default_conflict_threshold`` of this run.
    """
    num_classes = len(centers.vectors)
    if threshold is None:
        threshold = default_conflict_threshold(neighbours.nearest_other(num_classes)[1])
    present = neighbours.present
    k = neighbours.labels.shape[1]

    def pair_keys(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.minimum(a, b) * num_classes + np.maximum(a, b)

    b = neighbours.labels.reshape(-1)
    valid = b >= 0
    keys = pair_keys(np.repeat(present, k)[valid], b[valid])
    sim = neighbours.similarities.reshape(-1)[valid]
    knn_keys = np.unique(keys)
    if complete_flagged and hasattr(neighbours.index, "range_search"):
        full = np.flatnonzero(neighbours.similarities[:, -1] > threshold)
        if full.size:
            rows, ids, sims = neighbours.index.range_search(neighbours.unit[full], threshold, query_ids=full)
            keys = np.concatenate([keys, pair_keys(present[full[rows]], present[ids])])
            sim = np.concatenate([sim, sims])
    # Deduplicate (a, b) / (b, a), keeping the higher similarity (approximate search
    # may find a pair from one side only, or with a different rounding).
    order = np.lexsort((-sim, keys))
    keys, sim = keys[order], sim[order]
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    keys, sim = keys[first], sim[first]
    beyond_k = int(len(keys) - len(knn_keys))
    def add_candidates(extra: np.ndarray) -> int:
        """Append the pairs ``extra`` (keys) not yet candidates, with their cosine under the searched centers."""
        nonlocal keys, sim
        extra = np.setdiff1d(extra, keys)
        extra = extra[centers.present[extra // num_classes] & centers.present[extra % num_classes]]
        unit = neighbours.unit  # the searched unit centers, by position among the present classes
        extra_sim = np.einsum("ij,ij->i", unit[np.searchsorted(present, extra // num_classes)],
                              unit[np.searchsorted(present, extra % num_classes)])
        keys, sim = np.concatenate([keys, extra]), np.concatenate([sim, extra_sim])
        return len(extra)

    from_training = (add_candidates(confused_pairs(training, num_classes))
                     if training is not None and labels is not None else 0)
    from_crossval = 0 if crossval is None else add_candidates(crossval_candidates(crossval, k))
    label_a, label_b = keys // num_classes, keys % num_classes
    counts = centers.counts
    table = pd.DataFrame({
        "label_a": label_a.astype(np.int64),
        "label_b": label_b.astype(np.int64),
        "similarity": sim.astype(np.float64).round(6),
        "count_a": counts[label_a].astype(np.int64),
        "count_b": counts[label_b].astype(np.int64),
        "flagged": sim > threshold,
    })
    if labels is not None and top_label is not None:
        ev_keys, ev_counts = _evidence(np.asarray(labels), np.asarray(top_label), num_classes)
        a_to_b = _lookup(ev_keys, ev_counts, label_a * num_classes + label_b)
        b_to_a = _lookup(ev_keys, ev_counts, label_b * num_classes + label_a)
        table["a_samples_nearest_b"] = (a_to_b / np.maximum(counts[label_a], 1)).round(6)
        table["b_samples_nearest_a"] = (b_to_a / np.maximum(counts[label_b], 1)).round(6)
    else:
        table["a_samples_nearest_b"] = np.nan
        table["b_samples_nearest_a"] = np.nan
    table["same_person_llr"] = np.nan if pair_llr is None else pair_llr(label_a, label_b).round(4)
    table["training_confusion"] = (np.nan if training is None or labels is None else
                                   training_confusion(training, labels, num_classes, label_a, label_b).round(6))
    table["review_score"] = ((table["similarity"].rank() + table["training_confusion"].rank()) / (2 * len(table))
                             ).round(6)
    if crossval is None:
        table[["crossval_similarity", "crossval_separation", "crossval_score"]] = np.nan
    else:
        similarity, separation = crossval.pair_similarity(label_a, label_b), crossval.pair_separation(label_a, label_b)
        table["crossval_similarity"] = similarity.round(6)
        table["crossval_separation"] = separation.round(6)
        table["crossval_score"] = conflict_score(similarity, separation, label_a, label_b).round(6)
    table = table[CONFLICT_COLUMNS].sort_values(["similarity", "label_a", "label_b"], ascending=[False, True, True],
                                                kind="stable").reset_index(drop=True)
    table.attrs.update({"k": k, "threshold": threshold, "pairs_beyond_k": beyond_k,
                        "pairs_from_training": from_training, "pairs_from_crossval": from_crossval})
    return table


def best_f1_threshold(similarity: np.ndarray, positive: np.ndarray, total_positives: int
                      ) -> Optional[tuple[float, float, float]]:
    """The cosine threshold with the best F1 against ground truth: ``(threshold, precision, recall)``."""
    if total_positives == 0 or not positive.any():
        return None
    order = np.argsort(-similarity, kind="stable")
    hits = np.cumsum(positive[order])
    flagged = np.arange(1, len(order) + 1)
    precision = hits / flagged
    recall = hits / total_positives
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1))
    below = similarity[order[best + 1]] if best + 1 < len(order) else similarity[order[best]] - 1e-3
    threshold = float((similarity[order[best]] + below) / 2)
    return threshold, float(precision[best]), float(recall[best])


def conflict_threshold_rationale(threshold: float, chosen_by_default: bool, nearest_other: np.ndarray,
                                 table: pd.DataFrame, score: Optional[DetectionScore] = None,
                                 positive: Optional[np.ndarray] = None) -> str:
    """Why the threshold is where it is, in this run's own numbers (for the report)."""
    nearest_other = nearest_other[np.isfinite(nearest_other)]
    parts = []
    if nearest_other.size:
        median = float(np.median(nearest_other))
        robust_sd = 1.4826 * float(np.median(np.abs(nearest_other - median)))
        fence = median + FENCE_SDS * robust_sd
        above = 100 * float(np.mean(nearest_other > threshold))
        if chosen_by_default:
            parts.append(
                f"The threshold {threshold:.4f} is the default rule max({CONFLICT_FLOOR}, median + {FENCE_SDS} robust "
                f"sd) over every class's nearest-other-center cosine: median {median:.4f}, robust sd (1.4826 x MAD) "
                f"{robust_sd:.4f}, fence {fence:.4f}. Absolute cosines depend on the backbone and on the center "
                "source (class means of a small network sit in a narrow cone; Partial FC centers are nearly "
                "orthogonal), so a fixed number would flag everything in one run and nothing in another; how far a "
                "pair stands above this run's typical nearest neighbour is comparable. The median and MAD are not "
                f"moved by the few conflicting classes, and {FENCE_SDS} robust sd is exceeded by about 0.6 % of "
                f"ordinary (Gaussian) classes. The floor {CONFLICT_FLOOR} is insightface's duplicate threshold "
                "(interclass_filtering_threshold in its conflict configs): below it no pair is called a conflict.")
        else:
            parts.append(f"The threshold {threshold} was set with --threshold; the default rule (median + "
                         f"{FENCE_SDS} robust sd of the nearest-other-center cosines, at least {CONFLICT_FLOOR}) "
                         f"would give {max(CONFLICT_FLOOR, fence):.4f} here.")
        parts.append(f"{above:.2f} % of the classes have their nearest other center above it "
                     f"(99th percentile of nearest-other cosines: {np.percentile(nearest_other, 99):.4f}).")
    if score is not None:
        parts.append(f"Against the ground truth it gives precision {score.precision:.3f} and recall "
                     f"{score.recall:.3f} over {score.positives} split pairs.")
        if positive is not None:
            best = best_f1_threshold(table["similarity"].to_numpy(), positive, score.positives)
            if best is not None:
                parts.append(f"The F1-best threshold on this data would be {best[0]:.4f} (precision {best[1]:.3f}, "
                             f"recall {best[2]:.3f}); it uses the ground truth, which real data does not have.")
    return " ".join(parts)


def last_where_missing(scores: np.ndarray) -> np.ndarray:
    """Missing scores (a pair with a class the reference has no image of) rank last."""
    finite = np.isfinite(scores)
    return np.where(finite, scores, (scores[finite].min() - 1.0) if finite.any() else 0.0)


def conflict_section(analysis: "Analysis", report: Report) -> dict[str, Any]:
    """conflict.csv, its histogram and, with ground truth, its PR curve; returns the key figures."""
    inputs, options = analysis.inputs, analysis.options
    centers = analysis.detection_centers
    _, nearest = analysis.neighbours.nearest_other(inputs.num_classes)
    threshold = options.conflict_threshold
    chosen_by_default = threshold is None
    if threshold is None:
        threshold = default_conflict_threshold(nearest)
    model = analysis.same_person
    crossval = analysis.crossval
    table = conflict_table(centers, analysis.neighbours, threshold, inputs.labels, analysis.samples.top_label,
                           pair_llr=None if model is None else model.pair_llr, training=analysis.training_margins[0],
                           crossval=crossval)
    write_csv(table, analysis.file("conflict.csv"))
    llr_positive_pairs = int((table["same_person_llr"] > 0).sum())
    scores: list[DetectionScore] = []
    truth = None
    if inputs.ground_truth is not None and inputs.ground_truth.get("split_pairs") is not None:
        truth, total = conflict_positives(inputs.ground_truth, table["label_a"].to_numpy(),
                                          table["label_b"].to_numpy(), inputs.num_classes)
        flagged = table["flagged"].to_numpy()
        scores.append(score_detection("conflict", table["similarity"].to_numpy(), truth, flagged, total))
        if model is not None:
            llr = table["same_person_llr"].to_numpy()
            llr = np.where(np.isnan(llr), -np.finfo(np.float64).max, llr)  # classes without images: last
            scores.append(score_detection("conflict by same-person LLR", llr, truth, llr > 0, total))
        if crossval is not None:
            scores.append(score_detection("conflict by cross-validated reference", last_where_missing(
                table["crossval_score"].to_numpy()), truth, np.zeros(len(table), bool), total))
    confusion = table["training_confusion"].to_numpy()
    recorded = not np.isnan(confusion).all()
    confusion_ap = ({name: score_detection(f"conflict by {name}", table[name].to_numpy(), truth,
                                           np.zeros(len(table), bool), total).average_precision
                     for name in ("training_confusion", "review_score")} if truth is not None and recorded else None)
    score = scores[0] if scores else None
    nearest = nearest[np.isfinite(nearest)]
    figures: dict[str, Any] = {
        "candidate pairs (k nearest, deduplicated)": len(table),
        "flagged pairs": int(table["flagged"].sum()),
        "flagged pairs found beyond the k nearest (range search)": table.attrs["pairs_beyond_k"],
        "pairs added because training confused them both ways": table.attrs["pairs_from_training"],
        "pairs added as nearest under the cross-validated reference models": table.attrs["pairs_from_crossval"],
        "threshold (cosine)": threshold,
        "pairs with same-person LLR > 0 (the data favour one person)": llr_positive_pairs,
        "median nearest-other-center cosine": float(np.median(nearest)),
        "99th percentile nearest-other-center cosine": float(np.percentile(nearest, 99)),
    }
    if analysis.neighbours.info is not None:
        figures["index"] = analysis.neighbours.info.describe()
    report.heading("Inter-class conflict")
    report.paragraph(
        f"Every pair among each class's {table.attrs['k']} nearest other centers, deduplicated, sorted by "
        "cosine similarity. `a_samples_nearest_b` is the fraction of a's samples whose nearest center is "
        "b's (and the reverse): near zero for two different people, sizeable when one person carries both "
        "labels. `same_person_llr` is the log-likelihood ratio (nats) of one person against two under the "
        "two-covariance (PLDA) model fitted to these embeddings: unlike the cosine it knows that a label "
        "with two images has a far noisier mean than one with forty, so sorting by it puts small split "
        "identities ahead of big look-alike pairs."
        + ("" if model is not None else " It is empty here: no class has two images to estimate the "
           "within-class spread from.")
        + (" `training_confusion` is, over the run's training, the share of each label's visits whose best other "
           "column was the other label, the smaller of the two directions: one person under two labels keeps "
           "being confused both ways early on, even once training has pulled the labels apart; pairs confused "
           "both ways are candidates even when they are not among the nearest centers. `review_score` averages "
           "the pair's rank by cosine and by training confusion (a share of the pairs, 1 first). On the detection "
           "benchmark's held-out 30-epoch runs, whose training pulled the two labels of a split person apart, it "
           "ranked split pairs of 5+ images better than the cosine and far better than the LLR; on 12-epoch runs "
           "the cosine and the LLR rank better (docs/ANALYSIS.md)." if recorded else
           " `training_confusion` and `review_score` are empty: the run recorded no training dynamics (or they "
           "are of other data).")
        + (" `crossval_similarity` is the cosine of the two classes' means (each of the "
           f"{CENTER_SHARE:.0%} of its images nearest its plain mean, so that its intruders do not pull it off its "
           "person) under the reference models of "
           f"`analyze crossval` ({analysis.crossval_dir}, analysis/crossval.py), half averaged over the fold models "
           "and half the model trained on all the data, none of them shaped by the analysed run's training; each "
           "class's nearest under it join the candidates. `crossval_separation` is, over both labels' held-out "
           "images, the median of min(0, similarity to the other label's images minus to its own label's, each the 3 "
           "most similar that the image's fold model trained on, leaving out images that stand out within their "
           "own label as likely intruders): near 0 when "
           "the fold models cannot tell a new image of one label from the other (one person), negative when they "
           f"can. `crossval_score` adds the two as robust z-scores over the candidates, the separation's weighted "
           f"{SEPARATION_WEIGHT:g}, less {MUTUAL_RANK_WEIGHT:g} x the robust z of how far down its two labels' "
           "lists of pairs the pair stands by that sum (a split person's labels are each other's best match, a "
           "family of look-alikes has several). On the detection benchmark's "
           "held-out scenarios it ranked split pairs of 5+ images at 0.87-0.90 whatever the run, where a run's own "
           "cosine and LLR fall after long training and for DCQ (docs/ANALYSIS.md): it is the order to review in."
           if crossval is not None else
           " The `crossval_` columns are empty: no --crossval reference was given (python cli.py analyze "
           "crossval)."))
    report.figures(figures)
    warning = conflict_warning(threshold)
    if warning:
        report.paragraph(f"**Warning:** {warning}.")
    report.heading("Why this threshold", level=3)
    report.paragraph(conflict_threshold_rationale(threshold, chosen_by_default, nearest, table, score, truth))
    shown = table.copy()
    if truth is not None:  # the report's tables only: conflict.csv keeps CONFLICT_COLUMNS for every dataset
        shown.insert(shown.columns.get_loc("label_b") + 1, "true_split", truth)
        report.paragraph("`true_split` (a column of the report, not of conflict.csv): the ground truth says the "
                         "pair is one person under two labels.")
    report.table(shown, "Most similar class pairs (conflict.csv)")
    if crossval is not None:
        report.table(shown.sort_values("crossval_score", ascending=False, kind="stable", na_position="last"),
                     "Pairs most likely one person under the cross-validated reference models (conflict.csv sorted "
                     "by crossval_score): the order in which to review them")
    if model is not None:
        report.table(shown.sort_values("same_person_llr", ascending=False, kind="stable", na_position="last"),
                     "Pairs most likely to be one person (conflict.csv sorted by same_person_llr): the order in "
                     "which to review them")
    if recorded:
        report.table(shown.sort_values("review_score", ascending=False, kind="stable"),
                     "conflict.csv sorted by review_score (cosine and training confusion): the better order when "
                     "the noise section says the final features have fitted the noise")
    add_sheet(analysis, report, conflict_rows(table, inputs.labels, truth), PAIRS_SHEET,
              f"The faces behind the most similar pairs (the first rows of conflict.csv): up to "
              f"{EXAMPLES_PER_CLASS} images of each label (its first in dataset order) under the pair's cosine and "
              "same-person LLR." + (" Green rows: one person under both labels, by the ground truth."
                                    if truth is not None else ""))
    sims = table["similarity"].to_numpy()
    plots.histogram(sims, "cosine similarity of the pair's centers",
                    f"Conflict: each class against its {analysis.options.k} nearest other classes",
                    analysis.figure("conflict_similarity"), threshold=threshold,
                    highlight=sims[truth] if truth is not None else None,
                    highlight_label="split identities (ground truth)")
    report.image(analysis.figure_name("conflict_similarity"),
                 "Similarity of candidate pairs; red: pairs that are one person "
                 "under two labels (ground truth), when known.")
    if model is not None:
        plots.pair_scatter(sims, table["same_person_llr"].to_numpy(),
                           np.minimum(table["count_a"], table["count_b"]).to_numpy(), "cosine",
                           "same-person LLR", "Conflict: candidate pairs by cosine and by same-person LLR",
                           analysis.figure("conflict_llr"), x_line=threshold, y_line=0.0, highlight=truth,
                           highlight_label="split identities (ground truth)")
        report.image(analysis.figure_name("conflict_llr"),
                     "Each candidate pair by cosine and by same-person LLR; bigger dots: "
                     "more images on the pair's smaller label. Small pairs need a higher cosine for the same "
                     "evidence, which is what the LLR accounts for.")
    summary = {"pairs": len(table), "flagged": int(table["flagged"].sum()),
               "threshold": threshold, "threshold_rule": "default" if chosen_by_default else "--threshold",
               "centers": centers.source, "pairs_beyond_k": table.attrs["pairs_beyond_k"],
               "pairs_from_training": table.attrs["pairs_from_training"],
               "pairs_from_crossval": table.attrs["pairs_from_crossval"],
               "llr_positive_pairs": llr_positive_pairs}
    if warning:
        summary["warning"] = warning
    if scores:
        analysis.score_block(report, scores, "conflict_pr", "split label pairs")
        summary["ground_truth"] = scores[0].figures()
        if confusion_ap is not None:
            summary["ground_truth"].update({name + "_average_precision": round(value, 4)
                                            for name, value in confusion_ap.items()})
        if crossval is not None:
            summary["ground_truth"]["crossval_score_average_precision"] = round(scores[-1].average_precision, 4)
        if model is not None:
            llr_score = scores[1]
            summary["ground_truth"].update({
                "same_person_llr_average_precision": round(llr_score.average_precision, 4),
                "llr_positive_precision": round(llr_score.precision, 4),
                "llr_positive_recall": round(llr_score.recall, 4)})
    if analysis.neighbours.info is not None:
        summary["index"] = analysis.neighbours.info.to_dict()
    analysis.summary["conflict"] = summary
    return summary
