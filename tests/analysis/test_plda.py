"""The two-covariance same-person ratio: known answers, and the ranking it exists for."""

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from analysis.groundtruth import score_detection
from analysis.plda import fit_two_covariance
from core.errors import DataError


def _two_covariance_data(rng, class_counts, dim, between_sd=2.0, within_sd=1.0, centers=None):
    """Images drawn as latent center + noise; returns embeddings, labels and the latent centers."""
    if centers is None:
        centers = rng.normal(scale=between_sd, size=(len(class_counts), dim))
    labels = np.repeat(np.arange(len(class_counts)), class_counts)
    embeddings = centers[labels] + rng.normal(scale=within_sd, size=(len(labels), dim))
    return embeddings, labels, centers


def test_pair_llr_equals_the_gaussian_likelihood_ratio_in_the_original_space():
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 9, size=300)
    embeddings, labels, _ = _two_covariance_data(rng, counts, dim=5)
    shrinkage = 0.2
    model = fit_two_covariance(embeddings, labels, len(counts), shrinkage=shrinkage)
    assert len(model.between) == 5  # every direction separates identities here

    # Reference: the same estimates written out directly, then the ratio of two full
    # Gaussian densities of the stacked pair of means, without any diagonalisation.
    means = np.stack([embeddings[labels == c].mean(axis=0) for c in range(len(counts))])
    residual = embeddings - means[labels]
    within = residual.T @ residual / (len(labels) - len(counts))
    within = (1 - shrinkage) * within + shrinkage * np.trace(within) / 5 * np.eye(5)
    spread = means - means.mean(axis=0)
    between = spread.T @ spread / len(counts) - within * np.mean(1.0 / counts)
    pairs = [(0, 1), (2, 3), (7, 150), (10, 11)]
    expected = []
    for a, b in pairs:
        noise_a, noise_b = within / counts[a], within / counts[b]
        same = np.block([[between + noise_a, between], [between, between + noise_b]])
        apart = np.block([[between + noise_a, np.zeros((5, 5))], [np.zeros((5, 5)), between + noise_b]])
        x = np.concatenate([spread[a], spread[b]])
        expected.append(multivariate_normal(cov=same).logpdf(x) - multivariate_normal(cov=apart).logpdf(x))
    got = model.pair_llr(np.array([a for a, _ in pairs]), np.array([b for _, b in pairs]))
    np.testing.assert_allclose(got, expected, rtol=1e-6)  # class sums are float32


def test_small_split_identities_rank_above_big_look_alikes():
    """What the cosine of class means gets wrong, by construction, and the ratio gets right."""
    rng = np.random.default_rng(1)
    dim, pairs = 16, 10
    ordinary = rng.normal(scale=2.0, size=(100, dim))
    look_alike = rng.normal(scale=2.0, size=(pairs, dim))
    twins = look_alike + rng.normal(scale=0.6, size=(pairs, dim))  # two people, near but distinct
    split = rng.normal(scale=2.0, size=(pairs, dim))  # one person behind each of two labels
    centers = np.concatenate([ordinary, look_alike, twins, split, split])
    counts = np.concatenate([np.full(100, 20), np.full(2 * pairs, 60), np.full(2 * pairs, 2)])
    embeddings, labels, _ = _two_covariance_data(rng, counts, dim, centers=centers)
    model = fit_two_covariance(embeddings, labels, len(counts))

    a, b = np.triu_indices(len(counts), 1)
    first_split = 100 + 2 * pairs
    is_split = (a >= first_split) & (b == a + pairs)
    assert is_split.sum() == pairs
    means = np.stack([embeddings[labels == c].mean(axis=0) for c in range(len(counts))])
    unit = means / np.linalg.norm(means, axis=1, keepdims=True)
    cosine = np.einsum("pd,pd->p", unit[a], unit[b])
    llr = model.pair_llr(a, b)

    def ap(scores):
        return score_detection("conflict", scores, is_split, np.zeros_like(is_split)).average_precision

    assert ap(cosine) < 0.5  # the look-alikes' precise means sit closer than the split pairs' noisy ones
    assert ap(llr) > 0.9
    assert (llr[is_split] > 0).mean() >= 0.9


def test_classes_without_images_get_no_ratio():
    rng = np.random.default_rng(2)
    embeddings, labels, _ = _two_covariance_data(rng, np.full(20, 4), dim=4)
    model = fit_two_covariance(embeddings, labels, num_classes=22)  # classes 20 and 21 are empty
    llr = model.pair_llr(np.array([0, 0, 21]), np.array([1, 20, 5]))
    assert np.isfinite(llr[0]) and np.isnan(llr[1:]).all()


def test_data_that_cannot_fit_the_model_is_a_clear_error():
    rng = np.random.default_rng(3)
    embeddings = rng.normal(size=(6, 4))
    with pytest.raises(DataError, match="two or more images"):
        fit_two_covariance(embeddings, np.arange(6), 6)  # every class a single image
    with pytest.raises(DataError, match="at least two classes"):
        fit_two_covariance(embeddings, np.zeros(6, dtype=np.int64), 1)
    with pytest.raises(ValueError, match="shrinkage"):
        fit_two_covariance(embeddings, np.arange(6) // 2, 3, shrinkage=1.5)
