"""Conflict candidates and their rankings, scored against injected split identities (embeddings, no images)."""

import numpy as np
import pandas as pd
import pytest

from analysis.centers import Centers
from analysis.conflict import (CONFLICT_COLUMNS, CONFLICT_FLOOR, center_neighbours, conflict_table,
                               default_conflict_threshold)
from analysis.groundtruth import conflict_positives, score_detection
from analysis.index import BruteForceIndex
from analysis.noise import sample_neighbours
from analysis.plda import fit_two_covariance
from tests.analysis.conftest import conflict_detection_score


def test_conflict_ranking_finds_split_identities(noisy):
    score = conflict_detection_score(noisy)
    assert score.positives == len(noisy[2]["split_pairs"]) == 20
    assert score.average_precision >= 0.9
    assert score.precision >= 0.9 and score.recall >= 0.5
    shuffled = conflict_detection_score(
        noisy, lambda t: np.random.default_rng(0).permutation(t["similarity"].to_numpy()))
    assert shuffled.average_precision < 0.1
    reversed_ranking = conflict_detection_score(noisy, lambda t: -t["similarity"].to_numpy())
    assert reversed_ranking.average_precision < 0.1


def test_same_person_llr_ranks_split_identities(noisy):
    embeddings, labels, truth, centers, samples = noisy
    model = fit_two_covariance(embeddings, labels, len(centers.vectors))
    table = conflict_table(centers, center_neighbours(centers, 5), None, labels, samples.top_label,
                           pair_llr=model.pair_llr)
    positive, total = conflict_positives(truth, table["label_a"].to_numpy(), table["label_b"].to_numpy(),
                                         len(centers.vectors))
    llr = table["same_person_llr"].to_numpy()
    assert np.isfinite(llr).all()
    assert score_detection("conflict", llr, positive, table["flagged"].to_numpy(), total).average_precision >= 0.9
    # one person under two labels is more likely than two people: positive LLR; look-alikes: negative
    assert np.median(llr[positive]) > 0 > np.median(llr[~positive])


def test_sample_evidence_is_high_for_split_pairs(noisy):
    embeddings, labels, truth, centers, samples = noisy
    table = conflict_table(centers, center_neighbours(centers, 5), None, labels, samples.top_label)
    positive, _ = conflict_positives(truth, table["label_a"].to_numpy(), table["label_b"].to_numpy(),
                                     len(centers.vectors))
    evidence = table["a_samples_nearest_b"] + table["b_samples_nearest_a"]
    assert evidence[positive].median() > 0.3 > evidence[~positive].median()


def test_injected_backend_gives_the_same_tables(noisy):
    embeddings, labels, truth, centers, samples = noisy
    default = conflict_table(centers, center_neighbours(centers, 3), 0.7, labels, samples.top_label)
    brute = conflict_table(centers, center_neighbours(centers, 3, BruteForceIndex), 0.7, labels,
                           sample_neighbours(embeddings, labels, centers, BruteForceIndex).top_label)
    pd.testing.assert_frame_equal(default[["label_a", "label_b", "flagged"]], brute[["label_a", "label_b", "flagged"]])
    np.testing.assert_allclose(default["similarity"], brute["similarity"], atol=1e-5)


def test_conflict_csv_columns_and_order(noisy):
    embeddings, labels, truth, centers, samples = noisy
    table = conflict_table(centers, center_neighbours(centers, 5), 0.8, labels, samples.top_label)
    assert list(table.columns) == CONFLICT_COLUMNS == ["label_a", "label_b", "similarity", "count_a", "count_b",
                                                       "flagged", "a_samples_nearest_b", "b_samples_nearest_a",
                                                       "same_person_llr"]
    assert table["same_person_llr"].isna().all()  # no model given
    assert table["similarity"].is_monotonic_decreasing
    assert (table["label_a"] < table["label_b"]).all()
    assert not table.duplicated(["label_a", "label_b"]).any()
    assert (table["flagged"] == (table["similarity"] > 0.8)).all()
    counts = np.bincount(labels)
    assert (table["count_a"] == counts[table["label_a"]]).all()


def test_flagged_pairs_beyond_k_are_completed_by_range_search():
    # one "person" under six labels: with k=2 each label sees only two of its five twins
    rng = np.random.default_rng(1)
    base = rng.normal(size=(1, 16))
    vectors = np.concatenate([base + 0.01 * rng.normal(size=(6, 16)), rng.normal(size=(30, 16))]).astype(np.float32)
    centers = Centers(vectors=vectors, source="store", counts=np.ones(36, dtype=np.int64))
    table = conflict_table(centers, center_neighbours(centers, 2), 0.9)
    twins = table[(table["label_a"] < 6) & (table["label_b"] < 6)]
    assert len(twins) == 15 and twins["flagged"].all()
    assert table.attrs["pairs_beyond_k"] > 0


def test_default_threshold_is_a_robust_fence_with_a_floor():
    rng = np.random.default_rng(0)
    values = rng.normal(0.6, 0.05, 1000)
    assert default_conflict_threshold(values) == pytest.approx(0.6 + 2.5 * 0.05, abs=0.01)
    assert default_conflict_threshold(rng.normal(0.0, 0.05, 1000)) == CONFLICT_FLOOR
