"""Label-noise scores and flags, scored against injected flips (embeddings, no images)."""

import numpy as np
import pandas as pd
import pytest

from analysis.centers import Centers, class_means
from analysis.index import BruteForceIndex
from analysis.noise import (NOISE_COLUMNS, RANK_FEATURES, clean_plan, noise_table, robust_z, sample_neighbours,
                            score_cutoff)
from core.errors import DataError
from tests.analysis.conftest import noise_detection_score


def test_noise_ranking_finds_flipped_samples(noisy):
    score = noise_detection_score(noisy)
    assert score.positives == len(noisy[2]["flipped"]["index"]) > 100
    assert score.average_precision >= 0.95
    assert score.recall >= 0.95 and score.precision > 0.8
    # any sample nearer another center (a fixed margin of 0) also flags clean samples that merely sit near a
    # look-alike class: the same recall at visibly lower precision
    margin_zero = noise_detection_score(noisy, threshold=0.0)
    assert margin_zero.recall >= 0.95 and margin_zero.precision < score.precision - 0.1
    shuffled = noise_detection_score(noisy, lambda t: np.random.default_rng(0).permutation(t["score"].to_numpy()))
    assert shuffled.average_precision < 0.15
    # "far from its own center" alone (no nearest-other margin) is a visibly weaker detector
    own_only = noise_detection_score(noisy, lambda t: -t["own_similarity"].to_numpy())
    assert own_only.average_precision < score.average_precision


def test_noise_csv_columns_and_order(noisy):
    embeddings, labels, truth, centers, samples = noisy
    table = noise_table(samples, labels, records=np.arange(1, len(labels) + 1))
    assert list(table.columns) == NOISE_COLUMNS == ["index", "record", "path", "label", "own_similarity",
                                                    "nearest_label", "nearest_similarity", "feature_score",
                                                    "training_margin", "training_score", "crossval_score", "score",
                                                    "flagged"]
    assert table["score"].is_monotonic_decreasing
    assert table[["training_margin", "training_score"]].isna().all().all()  # no run margins given
    assert table.attrs["ranking"] == RANK_FEATURES and (table["score"] == table["feature_score"]).all()
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
                          "nearest_label": [1, 1, 0, 0], "feature_score": [0.5, -0.2, 0.4, -0.1],
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


def test_robust_z_scales_by_the_mad_and_by_the_sd_when_most_values_tie():
    values = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    assert np.allclose(robust_z(values), (values - 3.0) / (1.4826 * 1.0))  # the outlier does not move the scale
    tied = np.array([0.0, 0.0, 0.0, 0.0, -1.0, -3.0])  # clipped scores: more than half at 0, so the MAD is 0
    assert np.allclose(robust_z(tied), tied / tied.std())
    assert np.array_equal(robust_z(np.zeros(4)), np.zeros(4))
