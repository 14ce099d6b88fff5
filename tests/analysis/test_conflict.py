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
                                                       "same_person_llr", "training_confusion", "review_score",
                                                       "crossval_similarity", "crossval_separation",
                                                       "crossval_score"]
    assert table["same_person_llr"].isna().all()  # no model given
    assert table[["training_confusion", "review_score"]].isna().all().all()  # no training dynamics given
    assert table[["crossval_similarity", "crossval_separation", "crossval_score"]].isna().all().all()  # no reference
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


def test_training_confusion_scores_pairs_confused_both_ways_and_adds_them_as_candidates():
    from analysis.conflict import confused_pairs, training_confusion
    from analysis.dynamics import TrainingMargins

    # classes 0 and 1 are far apart at the end, but were confused both ways in training; 2 drew 3's samples only
    vectors = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.1, 1.0]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    counts = {0 * 4 + 1: 6, 1 * 4 + 0: 2, 3 * 4 + 2: 8}
    keys = np.array(sorted(counts))
    training = TrainingMargins(mean_margin=np.zeros(8), visits=np.full(8, 5), from_step=0, to_step=10,
                               pair_keys=keys, pair_counts=np.array([counts[k] for k in keys]))
    rates = training_confusion(training, labels, 4, np.array([0, 2]), np.array([1, 3]))
    assert rates.tolist() == pytest.approx([2 / 10, 0.0])  # each label has 10 visits; the smaller direction
    assert confused_pairs(training, 4).tolist() == [0 * 4 + 1]
    centers = Centers(vectors=vectors, source="means", counts=np.full(4, 2))
    neighbours = center_neighbours(centers, 1, BruteForceIndex)  # k=1: 0 and 1 are nobody's nearest
    table = conflict_table(centers, neighbours, threshold=0.9, labels=labels, top_label=np.full(8, -1),
                           training=training)
    pair = table[(table["label_a"] == 0) & (table["label_b"] == 1)]
    assert len(pair) == 1 and pair["similarity"].iloc[0] == pytest.approx(-1.0)
    assert pair["training_confusion"].iloc[0] == pytest.approx(0.2) and table.attrs["pairs_from_training"] == 1
    assert (table.loc[(table["label_a"] == 2) & (table["label_b"] == 3), "training_confusion"] == 0).all()
    # the review order averages the ranks by cosine and by confusion: the pair far apart at the end but confused
    # both ways in training ranks level with the closest pair that was never confused
    ranks = (table["similarity"].rank() + table["training_confusion"].rank()) / (2 * len(table))
    np.testing.assert_allclose(table["review_score"], ranks, atol=1e-6)
