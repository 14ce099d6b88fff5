"""Tiny trained runs (Partial FC and DCQ) on tiny datasets, built once per test session, and a noisy set of
embeddings (no images) with detection-score helpers for the conflict and noise tests."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from analysis.centers import class_means
from analysis.conflict import center_neighbours, conflict_table
from analysis.groundtruth import DetectionScore, conflict_positives, noise_positives, score_detection
from analysis.noise import noise_table, sample_neighbours
from core.config import TrainConfig
from core.data.base import encode_image
from core.data.synthetic import SyntheticEmbeddingConfig, make_synthetic_embeddings
from core.trainer import Trainer

CLASSES = 6
PER_CLASS = 8
SIZE = 16


def _pattern(palette: np.ndarray, label: int, rng: np.random.Generator) -> np.ndarray:
    pixels = np.empty((SIZE, SIZE, 3), dtype=np.float64)
    pixels[: SIZE // 2] = palette[label, 0]
    pixels[SIZE // 2:] = palette[label, 1]
    pixels += rng.normal(0, 20, pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def write_rec(root: Path, classes: int = CLASSES, per_class: int = PER_CLASS, seed: int = 0) -> Path:
    """Class c is a two-colour pattern plus noise, as a .rec directory."""
    from core.data.recordio import write_insightface_rec

    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, size=(classes, 2, 3))
    samples = [(label, encode_image(_pattern(palette, label, rng))) for label in range(classes)
               for _ in range(per_class)]
    write_insightface_rec(root, samples, classes, image_size=(SIZE, SIZE))
    return root


def write_folder(root: Path, classes: int = CLASSES, per_class: int = PER_CLASS, seed: int = 1,
                 mislabelled: int = 2) -> Path:
    """One folder per identity; the last ``mislabelled`` images of identity 0 show identity 1."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, size=(classes, 2, 3))
    for label in range(classes):
        folder = root / f"id{label:02d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            shown = 1 if label == 0 and i >= per_class - mislabelled else label
            Image.fromarray(_pattern(palette, shown, rng)).save(folder / f"{i:03d}.png")
    return root


def train(data: Path, run_dir: Path, method: str = "pfc", epochs: int = 2, sample_rate: float = 1.0) -> Path:
    """Sample rate 1 by default: with a handful of classes every batch's positives exceed a
    partial sample, and only full softmax gives every class passive updates to count."""
    options = {"sample_rate": sample_rate} if method == "pfc" else {"queue_size": 20}
    config = TrainConfig().replace(method=method, data=str(data), val=[], backbone="tiny", input_size=SIZE,
                                   embedding_size=16, batch_size=8, epochs=epochs, lr=0.05, workers=0,
                                   checkpoint_every=0, log_every=100, seed=0, device="cpu", **options)
    Trainer(config, run_dir, progress=False).fit()
    return run_dir


@pytest.fixture(scope="session")
def folder_data(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("folder") / "faces")


@pytest.fixture(scope="session")
def folder_run(folder_data, tmp_path_factory) -> Path:
    return train(folder_data, tmp_path_factory.mktemp("runs") / "folder", epochs=3)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """The real generator at toy size: flipped labels and split identities with ground_truth.json."""
    from core.data.synthetic import SyntheticConfig, make_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic") / "data"
    make_synthetic_dataset(root, SyntheticConfig(identities=12, heldout_identities=0, min_images=4, max_images=10,
                                                 flip_noise=0.1, split=0.25, image_size=32), progress=False,
                           workers=1)
    return root


@pytest.fixture(scope="session")
def synthetic_run(synthetic_data, tmp_path_factory) -> Path:
    """Partial FC (full softmax) on the toy synthetic set: 62 images, 15 classes, 7 steps x 3 epochs."""
    return train(synthetic_data, tmp_path_factory.mktemp("runs") / "pfc", epochs=3)


@pytest.fixture(scope="session")
def dcq_run(synthetic_data, tmp_path_factory) -> Path:
    return train(synthetic_data, tmp_path_factory.mktemp("runs") / "dcq", method="dcq", epochs=1)


@pytest.fixture(scope="module")
def noisy():
    """400 identities in 20 look-alike clusters, 5 % flipped samples, 5 % split identities."""
    config = SyntheticEmbeddingConfig(num_classes=400, dim=64, min_images=4, flip_noise=0.05, split=0.05,
                                      clusters=20, seed=0)
    embeddings, labels, truth = make_synthetic_embeddings(config)
    centers = class_means(embeddings, labels, int(labels.max()) + 1)
    samples = sample_neighbours(embeddings, labels, centers)
    return embeddings, labels, truth, centers, samples


def noise_detection_score(noisy, scores=None, threshold=None) -> DetectionScore:
    """The noise table of ``noisy`` scored against its flips (by ``scores(table)`` instead of its score if given)."""
    embeddings, labels, truth, centers, samples = noisy
    table = noise_table(samples, labels, threshold=threshold)
    positive = noise_positives(truth, len(labels))[table["index"].to_numpy()]
    values = table["score"].to_numpy() if scores is None else scores(table)
    return score_detection("noise", values, positive, table["flagged"].to_numpy())


def conflict_detection_score(noisy, scores=None) -> DetectionScore:
    """The conflict table of ``noisy`` scored against its split identities."""
    embeddings, labels, truth, centers, samples = noisy
    table = conflict_table(centers, center_neighbours(centers, 5), None, labels, samples.top_label)
    positive, total = conflict_positives(truth, table["label_a"].to_numpy(), table["label_b"].to_numpy(),
                                         len(centers.vectors))
    values = table["similarity"].to_numpy() if scores is None else scores(table)
    return score_detection("conflict", values, positive, table["flagged"].to_numpy(), total)
