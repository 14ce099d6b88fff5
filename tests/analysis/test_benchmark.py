"""The analysis benchmark times the path a real analysis takes, so its figures must match that path's output."""

import numpy as np
import pytest

from analysis.benchmark import run_analysis_benchmark
from analysis.centers import class_means
from analysis.conflict import center_neighbours, conflict_table
from analysis.crossval import (DEFAULT_REPEATS, REPEAT_SEED_STRIDE, RepeatedCrossValidation, assign_folds,
                               held_out_evidence)
from analysis.plda import fit_two_covariance
from core.data.synthetic import SyntheticEmbeddingConfig, make_synthetic_embeddings
from core.errors import ConfigError

CLASSES, DIM, IMAGES = 400, 16, 3


def _reference_table(folds: int = 0):
    embeddings, labels, _ = make_synthetic_embeddings(SyntheticEmbeddingConfig(
        num_classes=CLASSES, dim=DIM, min_images=IMAGES, max_images=IMAGES, clusters=CLASSES // 100, seed=0))
    centers = class_means(embeddings, labels, CLASSES)
    model = fit_two_covariance(embeddings, labels, CLASSES)
    crossval = RepeatedCrossValidation([
        held_out_evidence([embeddings] * folds, embeddings, labels,
                          assign_folds(labels, folds, REPEAT_SEED_STRIDE * repeat), CLASSES)
        for repeat in range(DEFAULT_REPEATS)]) if folds else None
    return conflict_table(centers, center_neighbours(centers, 5), threshold=None, pair_llr=model.pair_llr,
                          crossval=crossval)


def test_images_per_class_times_the_class_mean_path_with_same_person_ratios():
    result = run_analysis_benchmark(CLASSES, dim=DIM, images_per_class=IMAGES)
    reference = _reference_table()
    assert result["pairs"] == len(reference)
    assert result["flagged"] == int(reference["flagged"].sum())
    assert result["llr_positive_pairs"] == int((reference["same_person_llr"] > 0).sum())
    assert np.isfinite(reference["same_person_llr"]).all()
    assert result["plda_fit_s"] >= 0 and result["images_per_class"] == IMAGES
    assert result["crossval_s"] is None and result["pairs_from_crossval"] == 0


def test_crossval_folds_add_the_reference_evidence_an_analysis_with_crossval_gets():
    result = run_analysis_benchmark(CLASSES, dim=DIM, images_per_class=IMAGES, crossval_folds=3)
    reference = _reference_table(folds=3)
    assert result["pairs"] == len(reference) and result["pairs_from_crossval"] == reference.attrs["pairs_from_crossval"]
    assert reference["crossval_score"].notna().all() and result["crossval_s"] >= 0
    # each repeat's crossval.npz: labels, fold (int64), three per-image scores, [C, 4 D] vectors (float32), the
    # vectors' center share (one float64); the fold models' embeddings stay in their own files
    n = CLASSES * IMAGES
    assert result["crossval_bytes"] == DEFAULT_REPEATS * (n * 8 * 2 + n * 4 * 3 + CLASSES * 4 * DIM * 4 + 8)
    with pytest.raises(ConfigError, match="--crossval-folds must be between 2 and --images-per-class"):
        run_analysis_benchmark(CLASSES, dim=DIM, images_per_class=IMAGES, crossval_folds=IMAGES + 1)


def test_centers_only_skips_the_same_person_fit():
    result = run_analysis_benchmark(CLASSES, dim=DIM)
    assert result["llr_positive_pairs"] is None
    assert result["method"] == "exact" and result["pairs"] >= CLASSES * 5 // 2


@pytest.mark.parametrize("images", [-1, 1])  # one image per class leaves no within-class spread to fit
def test_images_per_class_without_a_spread_is_refused(images):
    with pytest.raises(ConfigError, match="--images-per-class"):
        run_analysis_benchmark(CLASSES, dim=DIM, images_per_class=images)
