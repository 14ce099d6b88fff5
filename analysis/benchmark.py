"""Conflict analysis at scale: exact at 100k classes, approximate at a million, with measured recall.

The question a user with a million identities asks is whether the analysis finishes and
how much it misses. This runs the real conflict path (``center_neighbours`` +
``conflict_table``) over clustered synthetic centers (``class_centers``, near-duplicate
groups as real identity lists have), times each stage, and for the approximate path
re-measures recall@k against exact search on a fresh sample of classes that the index
did not tune on, so the reported recall is not the tuning's own optimism.

With ``images_per_class`` it times the path a dataset's analysis takes instead: embeddings
drawn around those centers, class means, the same-person (PLDA) fit over every embedding
and the log-likelihood ratio of every candidate pair, as ``conflict.csv`` gets them. With
``crossval_folds`` too, it adds the cross-validated reference evidence (analysis/crossval.py)
as ``analyze crossval`` builds it from its default repeats of K fold models and an all-data
model, and the reference's candidates, pair cosine, separation and score in the table. Training
the reference models is not timed: it is R(K+1) trainings, which ``bench train`` measures.
"""

from __future__ import annotations

import functools
import platform
import resource
import time
from typing import Any, Optional

import numpy as np

from analysis.centers import Centers, class_means
from analysis.conflict import center_neighbours, conflict_table
from analysis.index import CosineIndex, measured_recall
from analysis.plda import fit_two_covariance
from core.errors import ConfigError

VERIFY_SAMPLE = 1000


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_analysis_benchmark(classes: int, dim: int = 512, k: int = 5, approximate: bool = False,
                           clusters: Optional[int] = None, seed: int = 0, progress: bool = False,
                           images_per_class: int = 0, crossval_folds: int = 0) -> dict[str, Any]:
    """Time the conflict analysis of ``classes`` clustered centers; returns the figures as a dict.

    ``clusters`` defaults to one per 100 classes (groups of about 100 similar
    identities). ``approximate`` forces IVF (tuned to recall >= 0.95); otherwise search
    is exact. ``images_per_class`` > 0 analyses the class means of that many embeddings
    per class and adds the same-person fit and ratios (``plda_fit_s``; the ratios are
    part of ``table_s``); the embeddings alone take ``classes x images x dim x 4`` bytes.
    ``crossval_folds`` K > 0 (with ``images_per_class`` >= K) builds the reference evidence (``DEFAULT_REPEATS``
    repeats, each dealing its own folds) with every model's embeddings the drawn ones (``crossval_s``, the arrays'
    size in ``crossval_bytes``) and adds it to the table.
    """
    import faiss

    from core.data.synthetic import SyntheticEmbeddingConfig, class_centers, make_synthetic_embeddings

    if images_per_class < 0 or images_per_class == 1:
        raise ConfigError(f"--images-per-class must be 0 (centers only) or >= 2 (the same-person fit needs a "
                          f"within-class spread), got {images_per_class}")
    if crossval_folds and not 2 <= crossval_folds <= images_per_class:
        raise ConfigError(f"--crossval-folds must be between 2 and --images-per-class ({images_per_class}), so that "
                          f"every class trains in every fold model, got {crossval_folds}")
    clusters = max(1, classes // 100) if clusters is None else clusters
    started = time.perf_counter()
    if images_per_class:
        embeddings, labels, _ = make_synthetic_embeddings(SyntheticEmbeddingConfig(
            num_classes=classes, dim=dim, min_images=images_per_class, max_images=images_per_class,
            clusters=clusters, seed=seed))
    else:
        vectors = class_centers(classes, dim, seed, clusters=clusters)
    generated = time.perf_counter()
    if images_per_class:
        centers = class_means(embeddings, labels, classes)
    else:
        centers = Centers(vectors=vectors, source="store", counts=np.ones(classes, dtype=np.int64))
    builder = functools.partial(CosineIndex, method="ivf" if approximate else "exact", copy=False)
    neighbours = center_neighbours(centers, k, builder, progress=progress)
    searched = time.perf_counter()
    pair_llr = None
    if images_per_class:
        pair_llr = fit_two_covariance(embeddings, labels, classes).pair_llr
    fitted = time.perf_counter()
    crossval = None
    if crossval_folds:
        from analysis.crossval import (DEFAULT_REPEATS, REPEAT_SEED_STRIDE, SAVED_ARRAYS, RepeatedCrossValidation,
                                       assign_folds, held_out_evidence)

        crossval = RepeatedCrossValidation([
            held_out_evidence([embeddings] * crossval_folds, embeddings, labels,
                              assign_folds(labels, crossval_folds, seed + REPEAT_SEED_STRIDE * repeat), classes)
            for repeat in range(DEFAULT_REPEATS)])
    evidenced = time.perf_counter()
    table = conflict_table(centers, neighbours, threshold=None, pair_llr=pair_llr, crossval=crossval)
    finished = time.perf_counter()
    info = neighbours.info
    result: dict[str, Any] = {
        "classes": classes, "dim": dim, "k": k, "clusters": clusters, "images_per_class": images_per_class,
        "method": info.method, "parameters": dict(info.parameters),
        "generate_s": round(generated - started, 2),
        "build_s": info.build_seconds, "tune_s": info.tune_seconds,
        "search_s": round(searched - generated - info.build_seconds - info.tune_seconds, 2),
        "plda_fit_s": round(fitted - searched, 2),
        "crossval_s": round(evidenced - fitted, 2) if crossval_folds else None,
        "crossval_bytes": (sum(getattr(repeat, name).nbytes for repeat in crossval.repeats for name in SAVED_ARRAYS)
                           if crossval_folds else None),
        "table_s": round(finished - evidenced, 2),
        "analysis_s": round(finished - generated, 2),
        "pairs": len(table), "flagged": int(table["flagged"].sum()),
        "llr_positive_pairs": int((table["same_person_llr"] > 0).sum()) if images_per_class else None,
        "pairs_from_crossval": table.attrs["pairs_from_crossval"],
        "tuning_recall": info.recall, "tuning_sample": info.recall_sample,
        "threads": faiss.omp_get_max_threads(), "cpu": platform.processor() or platform.machine(),
    }
    if info.method != "exact":
        rng = np.random.default_rng(seed + 12345)
        rows = np.sort(rng.choice(classes, min(VERIFY_SAMPLE, classes), replace=False))
        unit = neighbours.unit
        exact_sims, exact_ids = faiss.knn(unit[rows], unit, k + 1, faiss.METRIC_INNER_PRODUCT)
        own = exact_ids == rows[:, None]
        keep = np.argsort(own, axis=1, kind="stable")[:, :k]
        exact_sims = np.take_along_axis(exact_sims, keep, axis=1)
        exact_ids = np.take_along_axis(exact_ids.astype(np.int64), keep, axis=1)
        result["verified_recall"] = round(measured_recall(exact_sims, exact_ids, neighbours.similarities[rows],
                                                          neighbours.labels[rows]), 5)
        result["verified_sample"] = len(rows)
    result["peak_rss_gib"] = round(_peak_rss_gib(), 2)
    return result
