"""The embedding mixture: centers, in-memory embeddings with ground truth, device batches."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from core.data.synthetic.embeddings import (
    SyntheticEmbeddingConfig,
    class_centers,
    embedding_batches,
    make_synthetic_embeddings,
)
from core.errors import ConfigError


def test_class_centers_fast_path_properties():
    centers = class_centers(20_000, 64, seed=3)
    assert centers.shape == (20_000, 64) and centers.dtype == np.float32
    assert np.allclose(np.linalg.norm(centers, axis=1), 1, atol=1e-5)
    assert np.array_equal(centers, class_centers(20_000, 64, seed=3))
    assert np.array_equal(centers[:5000], class_centers(5000, 64, seed=3)), "prefix-stable"
    assert not np.array_equal(centers, class_centers(20_000, 64, seed=4))
    half = class_centers(100, 64, seed=3, dtype=np.float16)
    assert half.dtype == np.float16 and np.allclose(half, centers[:100], atol=2e-3)
    clustered = class_centers(2000, 64, seed=3, clusters=5, cluster_sigma=0.3)
    def close(c: np.ndarray) -> float:  # fraction of center pairs with cosine above 0.5
        return float(((c @ c.T) > 0.5).mean())

    assert close(clustered) > 0.1 > 0.01 > close(centers[:2000]), "clusters pull centers together"


def test_make_synthetic_embeddings():
    config = SyntheticEmbeddingConfig(num_classes=300, dim=32, flip_noise=0.1, split=0.1, noise_sigma=0.5,
                                      clusters=4, seed=1)
    emb, labels, gt = make_synthetic_embeddings(config)
    n = gt["counts"]["num_images"]
    assert emb.shape == (n, 32) and emb.dtype == np.float32
    assert labels.shape == (n,) and labels.dtype == np.int64
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert gt["counts"]["num_classes"] == 300 + 30 == labels.max() + 1
    assert gt["counts"]["num_flipped"] == round(0.1 * n) == len(gt["flipped"]["index"])
    rows = np.asarray(gt["flipped"]["index"])
    assert np.array_equal(labels[rows], gt["flipped"]["label"])
    assert np.all(np.asarray(gt["flipped"]["true_label"]) != np.asarray(gt["flipped"]["label"]))
    clean = np.ones(n, dtype=bool)
    clean[rows] = False
    assert np.array_equal(labels[clean], np.asarray(gt["samples"]["true_label"])[clean])
    person = np.asarray(gt["label_identity"])
    for original, extra in gt["split_pairs"]:
        assert person[extra] == original and (labels == extra).any() and (labels == original).any()
    assert gt["identity_cluster"].shape == (300,)
    # samples sit around their person's center at the configured spread
    centers = class_centers(300, 32, seed=1, clusters=4)
    cos = (emb * centers[np.asarray(gt["samples"]["identity"])]).sum(1)
    assert abs(cos.mean() - 1 / np.sqrt(1 + 0.5 ** 2)) < 0.05
    emb2, labels2, _ = make_synthetic_embeddings(config)
    assert np.array_equal(emb, emb2) and np.array_equal(labels, labels2)
    emb3, _, _ = make_synthetic_embeddings(replace(config, seed=2))
    assert emb3.shape != emb.shape or not np.array_equal(emb, emb3)
    same_samples, _, _ = make_synthetic_embeddings(replace(config, flip_noise=0.0, split=0.0))
    assert np.array_equal(same_samples, emb), "label noise never changes the samples"
    with pytest.raises(ConfigError, match="noise_sigma"):
        make_synthetic_embeddings(replace(config, noise_sigma=-1.0))


def test_embedding_batches_stream():
    stream = embedding_batches(1000, 16, batch_size=64, seed=0, split=0.1, flip_noise=0.2, steps=3)
    batches = list(stream)
    assert len(batches) == 3
    for emb, labels in batches:
        assert emb.shape == (64, 16) and emb.dtype == torch.float32 and labels.dtype == torch.int64
        assert torch.allclose(emb.norm(dim=1), torch.ones(64), atol=1e-5)
        assert int(labels.min()) >= 0 and int(labels.max()) < 1000 + 100
    again = next(embedding_batches(1000, 16, batch_size=64, seed=0, split=0.1, flip_noise=0.2))
    assert torch.equal(again[0], batches[0][0]) and torch.equal(again[1], batches[0][1])
    clean = next(embedding_batches(1000, 16, batch_size=4096, seed=0, noise_sigma=0.0))
    centers = torch.from_numpy(class_centers(1000, 16, seed=0))
    assert torch.allclose(clean[0], centers[clean[1]], atol=1e-5), "labels index the centers they came from"
    head = torch.bincount(clean[1], minlength=1000).float()
    assert head.max() > 5 * head.median(), "class frequencies are long-tailed"
