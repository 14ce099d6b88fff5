"""Conflict and noise detection scored against injected flips and splits (embeddings, no images)."""

import numpy as np
import pandas as pd
import pytest

from analysis.centers import Centers, class_means
from analysis.conflict import (CONFLICT_COLUMNS, CONFLICT_FLOOR, center_neighbours, conflict_table,
                               conflict_warning, default_conflict_threshold)
from analysis.groundtruth import conflict_positives, noise_positives, score_detection
from analysis.index import BruteForceIndex
from analysis.noise import (NOISE_COLUMNS, clean_plan, noise_table, noise_warning, sample_neighbours,
                            score_cutoff)
from analysis.plda import fit_two_covariance
from core.data.synthetic import SyntheticEmbeddingConfig, make_synthetic_embeddings
from core.errors import DataError


@pytest.fixture(scope="module")
def noisy():
    """400 identities in 20 look-alike clusters, 5 % flipped samples, 5 % split identities."""
    config = SyntheticEmbeddingConfig(num_classes=400, dim=64, min_images=4, flip_noise=0.05, split=0.05,
                                      clusters=20, seed=0)
    embeddings, labels, truth = make_synthetic_embeddings(config)
    centers = class_means(embeddings, labels, int(labels.max()) + 1)
    samples = sample_neighbours(embeddings, labels, centers)
    return embeddings, labels, truth, centers, samples


def _noise_score(noisy, scores=None, threshold=None):
    embeddings, labels, truth, centers, samples = noisy
    table = noise_table(samples, labels, threshold=threshold)
    positive = noise_positives(truth, len(labels))[table["index"].to_numpy()]
    values = table["score"].to_numpy() if scores is None else scores(table)
    return score_detection("noise", values, positive, table["flagged"].to_numpy())


def _conflict_score(noisy, scores=None):
    embeddings, labels, truth, centers, samples = noisy
    table = conflict_table(centers, center_neighbours(centers, 5), None, labels, samples.top_label)
    positive, total = conflict_positives(truth, table["label_a"].to_numpy(), table["label_b"].to_numpy(),
                                         len(centers.vectors))
    values = table["similarity"].to_numpy() if scores is None else scores(table)
    return score_detection("conflict", values, positive, table["flagged"].to_numpy(), total)


def test_noise_ranking_finds_flipped_samples(noisy):
    score = _noise_score(noisy)
    assert score.positives == len(noisy[2]["flipped"]["index"]) > 100
    assert score.average_precision >= 0.95
    assert score.recall >= 0.95 and score.precision > 0.8
    # any sample nearer another center (a fixed margin of 0) also flags clean samples that merely sit near a
    # look-alike class: the same recall at visibly lower precision
    margin_zero = _noise_score(noisy, threshold=0.0)
    assert margin_zero.recall >= 0.95 and margin_zero.precision < score.precision - 0.1
    shuffled = _noise_score(noisy, lambda t: np.random.default_rng(0).permutation(t["score"].to_numpy()))
    assert shuffled.average_precision < 0.15
    # "far from its own center" alone (no nearest-other margin) is a visibly weaker detector
    own_only = _noise_score(noisy, lambda t: -t["own_similarity"].to_numpy())
    assert own_only.average_precision < score.average_precision


def test_conflict_ranking_finds_split_identities(noisy):
    score = _conflict_score(noisy)
    assert score.positives == len(noisy[2]["split_pairs"]) == 20
    assert score.average_precision >= 0.9
    assert score.precision >= 0.9 and score.recall >= 0.5
    shuffled = _conflict_score(noisy, lambda t: np.random.default_rng(0).permutation(t["similarity"].to_numpy()))
    assert shuffled.average_precision < 0.1
    reversed_ranking = _conflict_score(noisy, lambda t: -t["similarity"].to_numpy())
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


def test_missed_positives_lower_average_precision():
    scores = np.array([0.9, 0.8, 0.1])
    found = score_detection("x", scores, np.array([True, False, False]), scores > 0.5, total_positives=1)
    missed = score_detection("x", scores, np.array([True, False, False]), scores > 0.5, total_positives=2)
    assert found.average_precision == pytest.approx(1.0)
    assert missed.average_precision == pytest.approx(0.5) and missed.recall == pytest.approx(0.5)


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


def test_noise_csv_columns_and_order(noisy):
    embeddings, labels, truth, centers, samples = noisy
    table = noise_table(samples, labels, records=np.arange(1, len(labels) + 1))
    assert list(table.columns) == NOISE_COLUMNS == ["index", "record", "path", "label", "own_similarity",
                                                    "nearest_label", "nearest_similarity", "score", "flagged"]
    assert table["score"].is_monotonic_decreasing
    assert sorted(table["index"]) == list(range(len(labels)))
    assert (table["record"] == table["index"] + 1).all()
    np.testing.assert_allclose(table["score"], table["nearest_similarity"] - table["own_similarity"], atol=2e-6)
    assert (table["nearest_label"] != table["label"]).all()


def test_leave_one_out_own_center_exposes_flips_in_tiny_classes():
    # class 1 holds three images of person 1 and one of person 0 (sample 7): with itself in its own
    # class mean the flipped image keeps cosine 0.5 to it; left out, it has nothing in common with it
    rng = np.random.default_rng(0)
    person = np.eye(3, 32, dtype=np.float32)
    who = [0, 0, 0, 0, 1, 1, 1, 0, 2, 2, 2, 2]
    embeddings = person[who] + 0.02 * rng.normal(size=(12, 32)).astype(np.float32)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    samples = sample_neighbours(embeddings, labels, class_means(embeddings, labels, 3))
    assert samples.leave_one_out
    table = noise_table(samples, labels).set_index("index")
    assert table.loc[7, "own_similarity"] == pytest.approx(0.0, abs=0.05)
    assert table.loc[7, "nearest_label"] == 0 and table.loc[7, "flagged"]
    assert table.index[0] == 7  # highest score first
    assert not table.drop(index=7)["flagged"].any()


def test_clean_plan_never_empties_a_class():
    table = pd.DataFrame({"index": [0, 1, 2, 3], "label": [0, 0, 1, 2], "flagged": [True, False, True, True],
                          "nearest_label": [1, 1, 0, 0], "score": [0.5, -0.2, 0.4, -0.1],
                          "own_similarity": [0.1, 0.8, 0.2, 0.05]})
    dropped = clean_plan(table, 3)
    assert dropped.keep.tolist() == [False, True, True, True]  # classes 1 and 2 keep their only sample
    assert dropped.kept_last == 2 and dropped.dropped == 1
    moved = clean_plan(table, 3, relabel=True)  # 0 and 2 swap classes, so neither class empties
    assert moved.labels.tolist() == [1, 0, 0, 2] and moved.relabelled == 2 and moved.keep.all()
    assert moved.kept_last == 1  # sample 3 is an outlier with no better class, but class 2's last sample


def test_mismatched_inputs_are_errors(noisy):
    embeddings, labels, truth, centers, samples = noisy
    with pytest.raises(DataError, match="labels"):
        sample_neighbours(embeddings[:10], labels, centers)
    few = Centers(vectors=centers.vectors[:5], source="store", counts=np.ones(5, dtype=np.int64))
    with pytest.raises(DataError, match="centers"):
        sample_neighbours(embeddings, labels, few)


def test_default_threshold_is_a_robust_fence_with_a_floor():
    rng = np.random.default_rng(0)
    values = rng.normal(0.6, 0.05, 1000)
    assert default_conflict_threshold(values) == pytest.approx(0.6 + 2.5 * 0.05, abs=0.01)
    assert default_conflict_threshold(rng.normal(0.0, 0.05, 1000)) == CONFLICT_FLOOR


def test_default_noise_margin_is_a_robust_fence_never_below_zero():
    rng = np.random.default_rng(0)
    scores = rng.normal(-0.2, 0.1, 5000)
    assert score_cutoff(scores) == pytest.approx(-0.2 + 4 * 0.1, abs=0.02)
    # a backbone that separates its classes well: the fence would fall below 0, where a sample is still
    # nearer its own center than any other, so the margin stays 0
    assert score_cutoff(rng.normal(-0.6, 0.05, 5000)) == 0.0
    # bunched cosines (a collapsed backbone): the fence shrinks with them instead of flagging half the data
    bunched = rng.normal(0.0, 0.01, 5000)
    assert score_cutoff(bunched) == pytest.approx(0.04, abs=0.005) and (bunched > score_cutoff(bunched)).mean() < 0.01


def test_flags_that_cannot_mean_what_they_say_come_with_a_warning():
    rng = np.random.default_rng(0)
    bunched = rng.normal(0.992, 0.005, size=600).clip(max=0.9999)  # class means of a collapsed backbone
    spread = rng.normal(0.70, 0.05, size=600)
    assert "no pair can be flagged" in conflict_warning(default_conflict_threshold(bunched))
    assert conflict_warning(default_conflict_threshold(spread)) is None
    assert noise_warning(0.5) is None
    assert noise_warning(0.75).startswith("75% of the samples are flagged")


def test_warnings_reach_the_console_headline():
    from analysis.runner import headline

    summary = {"conflict": {"flagged": 0, "pairs": 10, "threshold": 1.01, "warning": "W1"},
               "noise": {"flagged": 9, "samples": 10}}
    assert headline(summary)[-1] == "Warning (conflict): W1"
    assert not [line for line in headline({"noise": {"flagged": 1, "samples": 10}}) if "Warning" in line]


@pytest.mark.parametrize("source", ["means", "store"])
def test_chunked_sample_search_equals_one_pass(noisy, source):
    embeddings, labels, truth, centers, samples = noisy
    if source == "store":
        centers = Centers(vectors=centers.vectors * 3.0, source="store", counts=centers.counts)
    whole = sample_neighbours(embeddings, labels, centers, BruteForceIndex, chunk_rows=len(labels))
    chunked = sample_neighbours(embeddings, labels, centers, BruteForceIndex, chunk_rows=97)
    np.testing.assert_array_equal(chunked.nearest_label, whole.nearest_label)
    np.testing.assert_allclose(chunked.nearest_similarity, whole.nearest_similarity, rtol=0, atol=1e-6)
    np.testing.assert_allclose(chunked.own_similarity, whole.own_similarity, rtol=0, atol=1e-6)


def test_memory_mapped_embeddings_are_read_in_chunks(tmp_path):
    # 60 MB of embeddings on disk; the search may hold a few chunks of them, never a copy of all.
    import tracemalloc

    rng = np.random.default_rng(0)
    path = tmp_path / "embeddings.npy"
    stored = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(120_000, 128))
    labels = rng.integers(0, 50, len(stored))
    for start in range(0, len(stored), 10_000):
        stored[start:start + 10_000] = rng.normal(size=(10_000, 128))
    stored.flush()
    del stored
    embeddings = np.load(path, mmap_mode="r")
    centers = class_means(embeddings, labels, 50)
    tracemalloc.start()
    try:
        samples = sample_neighbours(embeddings, labels, centers, BruteForceIndex, chunk_rows=8192)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < embeddings.nbytes / 3, f"peak {peak / 2**20:.1f} MiB for {embeddings.nbytes / 2**20:.1f} MiB"
    assert (samples.nearest_label >= 0).all() and np.isfinite(samples.own_similarity).all()
