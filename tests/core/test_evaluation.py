"""Known-answer tests for the verification protocol; every expected figure is derived by hand."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from core.errors import ConfigError, DataError
from core.evaluation import (
    embed_images,
    evaluate_bin,
    evaluate_pairs,
    tar_at_far,
    val_names,
    verification_accuracy,
)


def pairs_at_distances(distances: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """2-D unit vectors whose squared L2 distance per pair is exactly the given value."""
    d = np.asarray(distances, dtype=np.float64)
    cos = 1.0 - d / 2.0
    first = np.tile([1.0, 0.0], (d.size, 1))
    second = np.stack([cos, np.sqrt(1.0 - cos**2)], axis=1)
    return first, second


# Ten folds of two pairs (same, different), in order. Folds 0-7 are clean (0.505 / 1.505);
# fold 8 holds a hard positive (same at 1.205); fold 9 a hard negative (different at 0.305).
#
# Held out a clean fold: training counts by grid threshold t are 9 (t<=0.30), 8 (0.31-0.50),
# 16 (0.51-1.20), 17 (1.21-1.50), 9 (t>=1.51): t=1.21 scores the clean fold 2/2.
# Held out fold 8: 9, 8, then 17 for all of 0.51-1.50 -> lowest tie t=0.51; the positive at
# 1.205 is rejected: 1/2.  Held out fold 9: 9 (t<=0.50), 17 (0.51-1.20), 18 (1.21-1.50):
# t=1.21 accepts the negative at 0.305: 1/2.
# Fold accuracies: eight 1.0 and two 0.5 -> mean 0.9, variance (8*0.01 + 2*0.16)/10 = 0.04.
CRAFTED_DISTANCES = [0.505, 1.505] * 8 + [1.205, 1.505] + [0.505, 0.305]
CRAFTED_ISSAME = np.array([True, False] * 10)


def test_verification_accuracy_known_answer() -> None:
    e1, e2 = pairs_at_distances(CRAFTED_DISTANCES)
    mean, std = verification_accuracy(e1, e2, CRAFTED_ISSAME)
    assert mean == pytest.approx(0.9, abs=1e-12)
    assert std == pytest.approx(0.2, abs=1e-12)


def test_verification_accuracy_ignores_embedding_scale() -> None:
    e1, e2 = pairs_at_distances(CRAFTED_DISTANCES)
    scales = np.linspace(0.5, 3.0, len(CRAFTED_DISTANCES))[:, None]
    mean, std = verification_accuracy(e1 * scales, e2 * 7.0, CRAFTED_ISSAME)
    assert (mean, std) == pytest.approx((0.9, 0.2), abs=1e-12)


def test_verification_accuracy_folds_are_taken_in_order() -> None:
    # The same twenty pairs with both hard ones moved into fold 0. Held out fold 0, the clean
    # training folds tie at 18 for all of 0.51-1.50 -> t=0.51, which rejects the positive at
    # 1.205 and accepts the negative at 0.305: 0/2. Every clean fold sees the training counts
    # of the clean case above and scores 2/2 at t=1.21. Mean 0.9 again, but the variance is
    # now (9*0.01 + 0.81)/10 = 0.09: std 0.3, so a shuffled split would not reproduce it.
    distances = [1.205, 0.305] + [0.505, 1.505] * 9
    e1, e2 = pairs_at_distances(distances)
    mean, std = verification_accuracy(e1, e2, CRAFTED_ISSAME)
    assert mean == pytest.approx(0.9, abs=1e-12)
    assert std == pytest.approx(0.3, abs=1e-12)


def test_verification_accuracy_errors() -> None:
    e1, e2 = pairs_at_distances(CRAFTED_DISTANCES)
    with pytest.raises(DataError, match=r"20 rows.*19"):
        verification_accuracy(e1, e2[:19], CRAFTED_ISSAME)
    with pytest.raises(DataError, match=r"20 embedding pairs but 18 issame"):
        verification_accuracy(e1, e2, CRAFTED_ISSAME[:18])
    with pytest.raises(DataError, match=r"9 pairs is fewer than the 10 folds"):
        verification_accuracy(e1[:9], e2[:9], CRAFTED_ISSAME[:9])
    with pytest.raises(DataError, match="dimension"):
        verification_accuracy(e1, np.zeros((20, 3)), CRAFTED_ISSAME)
    with pytest.raises(DataError, match="NaN"):
        verification_accuracy(np.full_like(e1, np.nan), e2, CRAFTED_ISSAME)
    with pytest.raises(ConfigError, match="n_folds"):
        verification_accuracy(e1, e2, CRAFTED_ISSAME, n_folds=1)


def test_tar_at_far_known_answer() -> None:
    # Ten negatives at 0.0 .. 0.9; positives 0.95, 0.85, 0.55, 0.3, 0.05. FAR 0.1 allows one
    # false accept (the negative at 0.9), reached at threshold 0.85, where the positives
    # 0.95 and 0.85 are accepted: TAR = 2/5. Ten negatives cannot resolve FAR 1e-2 or below.
    negatives = np.arange(10) / 10.0
    positives = np.array([0.95, 0.85, 0.55, 0.3, 0.05])
    scores = np.concatenate([negatives, positives])
    issame = np.array([False] * 10 + [True] * 5)
    assert tar_at_far(scores, issame) == pytest.approx({"1e-01": 0.4})
    # FAR 0.5 allows the five negatives 0.5 .. 0.9; at threshold 0.5 the positives 0.95,
    # 0.85 and 0.55 are accepted: TAR = 3/5.
    assert tar_at_far(scores, issame, fars=(0.5,)) == pytest.approx({"5e-01": 0.6})
    assert tar_at_far(scores, issame, fars=(1.0,)) == pytest.approx({"1e+00": 1.0})


@pytest.mark.parametrize(
    "num_negatives, expected_keys",
    [
        (9, []),
        (10, ["1e-01"]),
        (99, ["1e-01"]),
        (100, ["1e-01", "1e-02"]),
        (1000, ["1e-01", "1e-02", "1e-03"]),
        (10000, ["1e-01", "1e-02", "1e-03", "1e-04"]),
    ],
)
def test_tar_at_far_reports_only_resolvable_fars(num_negatives: int, expected_keys: list[str]) -> None:
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.uniform(-1, 0.5, num_negatives), rng.uniform(0, 1, 50)])
    issame = np.array([False] * num_negatives + [True] * 50)
    assert list(tar_at_far(scores, issame)) == expected_keys


def test_tar_at_far_errors() -> None:
    with pytest.raises(DataError, match="3 scores but 2 issame"):
        tar_at_far(np.zeros(3), np.array([True, False]))
    with pytest.raises(DataError, match="both same and different"):
        tar_at_far(np.zeros(20), np.ones(20, dtype=bool))
    with pytest.raises(ConfigError, match="FAR"):
        tar_at_far(np.arange(20.0), np.arange(20) % 2 == 0, fars=(0.0,))


def interleave(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    out = np.empty((2 * first.shape[0], first.shape[1]))
    out[0::2], out[1::2] = first, second
    return out


def test_evaluate_pairs_known_answer() -> None:
    # Cosine = 1 - d/2: positives nine at 0.7475 and one at 0.3975, negatives nine at 0.2475
    # and one at 0.8475. AUC: the 90 of 100 (pos, neg) orderings not involving the 0.8475
    # negative are correct -> 0.9. FAR 0.1 admits the 0.8475 negative, and then every
    # positive scores above the other negatives -> TAR 1.0.
    e1, e2 = pairs_at_distances(CRAFTED_DISTANCES)
    result = evaluate_pairs(interleave(e1, e2), CRAFTED_ISSAME)
    assert result["num_pairs"] == 20
    assert result["accuracy"] == pytest.approx(0.9, abs=1e-12)
    assert result["accuracy_std"] == pytest.approx(0.2, abs=1e-12)
    assert result["auc"] == pytest.approx(0.9, abs=1e-12)
    assert result["tar_at_far"] == pytest.approx({"1e-01": 1.0})


def test_evaluate_pairs_errors() -> None:
    e1, e2 = pairs_at_distances(CRAFTED_DISTANCES)
    embeddings = interleave(e1, e2)
    with pytest.raises(DataError, match=r"even number of rows\), got 39"):
        evaluate_pairs(embeddings[:39], CRAFTED_ISSAME)
    with pytest.raises(DataError, match="20 embedding pairs but 21 issame"):
        evaluate_pairs(embeddings, np.append(CRAFTED_ISSAME, True))
    with pytest.raises(DataError, match="fewer than the 10 folds"):
        evaluate_pairs(embeddings[:16], CRAFTED_ISSAME[:8])
    with pytest.raises(DataError, match="both same and different"):
        evaluate_pairs(embeddings, np.ones(20, dtype=bool))


class FlattenLinear(torch.nn.Module):
    """A linear embedding without bias, so flip-summing is W(x + flip(x)) by hand."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(dim, 3 * size * size, generator=generator))
        self.modes_seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes_seen.append(self.training)
        return x.flatten(1) @ self.weight.T


def hand_embeddings(weight: np.ndarray, images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float64).transpose(0, 3, 1, 2) / 127.5 - 1.0  # NCHW in [-1, 1]
    summed = x + x[..., ::-1]  # flip along width
    feature = summed.reshape(len(images), -1) @ weight.T
    return feature / np.linalg.norm(feature, axis=1, keepdims=True)


def test_embed_images_matches_hand_computation_and_restores_train_mode() -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(7, 4, 4, 3), dtype=np.uint8)
    model = FlattenLinear(size=4, dim=5)
    model.train()
    embeddings = embed_images(model, images, input_size=4, batch_size=3)
    assert embeddings.dtype == np.float32 and embeddings.shape == (7, 5)
    expected = hand_embeddings(model.weight.detach().double().numpy(), images)
    np.testing.assert_allclose(embeddings, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
    assert model.modes_seen and not any(model.modes_seen)  # eval during the call
    assert model.training  # restored afterwards


def test_embed_images_keeps_eval_mode_and_accepts_plain_callables() -> None:
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(5, 4, 4, 3), dtype=np.uint8)
    model = FlattenLinear(size=4, dim=3)
    model.eval()
    from_module = embed_images(model, images, input_size=4)
    assert not model.training
    from_function = embed_images(lambda x: model(x), images, input_size=4, batch_size=2)
    np.testing.assert_allclose(from_module, from_function, atol=1e-6)


def test_embed_images_restores_mode_after_a_failure() -> None:
    class Failing(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    model = Failing().train()
    with pytest.raises(RuntimeError, match="boom"):
        embed_images(model, np.zeros((2, 4, 4, 3), dtype=np.uint8), input_size=4)
    assert model.training


def test_embed_images_errors() -> None:
    model = FlattenLinear(size=4, dim=3)
    with pytest.raises(DataError, match=r"\[N, H, W, 3\]"):
        embed_images(model, np.zeros((2, 4, 4), dtype=np.uint8), input_size=4)
    with pytest.raises(DataError, match="uint8"):
        embed_images(model, np.zeros((2, 4, 4, 3), dtype=np.float32), input_size=4)
    with pytest.raises(DataError, match="no images"):
        embed_images(model, np.zeros((0, 4, 4, 3), dtype=np.uint8), input_size=4)
    with pytest.raises(ConfigError, match="batch_size"):
        embed_images(model, np.zeros((2, 4, 4, 3), dtype=np.uint8), input_size=4, batch_size=0)


def test_evaluate_bin_uses_the_verification_loader(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(40, 4, 4, 3), dtype=np.uint8)
    issame = np.array([True, False] * 10)
    requested = []

    def load_verification_pairs(path):
        requested.append(path)
        return images, issame

    fake = types.ModuleType("core.data.verification_bin")
    fake.load_verification_pairs = load_verification_pairs
    monkeypatch.setitem(sys.modules, "core.data.verification_bin", fake)

    model = FlattenLinear(size=4, dim=6)
    bin_path = tmp_path / "lfw.bin"
    result = evaluate_bin(model, bin_path, input_size=4, batch_size=16)
    assert requested == [bin_path]
    expected = evaluate_pairs(embed_images(model, images, input_size=4), issame)
    assert result["num_pairs"] == 20
    assert result["accuracy"] == pytest.approx(expected["accuracy"])
    assert result["auc"] == pytest.approx(expected["auc"])
    assert result["tar_at_far"] == pytest.approx(expected["tar_at_far"])


def test_embed_images_large_input_goes_through_the_progress_bar_path() -> None:
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(2001, 2, 2, 3), dtype=np.uint8)
    model = FlattenLinear(size=2, dim=4)
    embeddings = embed_images(model, images, input_size=2, batch_size=500)
    expected = hand_embeddings(model.weight.detach().double().numpy(), images)
    np.testing.assert_allclose(embeddings, expected, atol=1e-5)


def test_val_names_are_stems_unless_two_files_share_one() -> None:
    assert val_names(["/data/lfw.bin", "/data/agedb_30.bin"]) == ["lfw", "agedb_30"]
    assert val_names(["/a/val.bin", "/b/val.bin", "/b/lfw.bin"]) == ["a/val", "b/val", "lfw"]
    assert val_names(["/x/a/val.bin", "/y/a/val.bin"]) == ["/x/a/val.bin", "/y/a/val.bin"]
