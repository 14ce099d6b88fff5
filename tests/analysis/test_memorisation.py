"""A run that memorises its flipped labels: the final features stop finding them, the default ranking does not, and
neither do cross-validated reference models (analyze crossval), which never train on the images they judge.

A small MLP (not the CNN: on 16-pixel patterns it cannot fit noise) trained to near-zero loss on data whose
clean images vary in contrast, so that some clean images are hard. By the end every flipped image sits in the
cluster of the label it was given, and ranked by the final features the flips mix with the hard clean
images; while it learnt, each flip lost to its true class for many epochs, which the training margins keep.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score
from torch import nn

from core.data.base import encode_image

CLASSES, PER_CLASS, SIZE, FLIPPED_SHARE = 8, 12, 16, 0.15
HIDDEN, EPOCHS = 256, 120


def _mlp(name: str, embedding_size: int, input_size: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * input_size * input_size, HIDDEN), nn.ReLU(),
                         nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, embedding_size))


def _memorising_data(root):
    """Two-colour patterns at random contrast plus noise; 15 % of the images under another class's label."""
    from core.data.recordio import write_insightface_rec

    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, size=(CLASSES, 2, 3))

    def image(label: int) -> bytes:
        pixels = np.empty((SIZE, SIZE, 3))
        pixels[: SIZE // 2], pixels[SIZE // 2:] = palette[label, 0], palette[label, 1]
        pixels = 128 + rng.uniform(0.2, 1.0) * (pixels - 128) + rng.normal(0, 40, pixels.shape)
        return encode_image(np.clip(pixels, 0, 255).astype(np.uint8))

    person = np.repeat(np.arange(CLASSES), PER_CLASS)
    label = person.copy()
    movable = np.flatnonzero(np.arange(len(person)) % PER_CLASS != 0)  # every label keeps a correct image
    flipped = np.sort(rng.choice(movable, int(FLIPPED_SHARE * len(person)), replace=False))
    label[flipped] = (person[flipped] + rng.integers(1, CLASSES, len(flipped))) % CLASSES
    order = np.argsort(label, kind="stable")
    write_insightface_rec(root, [(int(label[i]), image(int(person[i]))) for i in order], CLASSES,
                          image_size=(SIZE, SIZE))
    return np.isin(np.arange(len(person)), flipped)[order]  # dataset order is the record order


@pytest.fixture(scope="module")
def memorised(tmp_path_factory):
    import core.backbones
    import core.models
    import core.trainer
    from analysis.crossval import run_crossval
    from analysis.inputs import load_analysis_input
    from analysis.runner import AnalysisOptions, run_analyses
    from core.config import TrainConfig
    from core.trainer import Trainer

    root = tmp_path_factory.mktemp("memorise")
    is_flipped = _memorising_data(root / "data")
    patch = pytest.MonkeyPatch()
    patch.setattr(core.trainer, "build_backbone", _mlp)
    patch.setattr(core.backbones, "build_backbone", _mlp)  # the analysis rebuilds the run's network...
    patch.setattr(core.models, "build_backbone", _mlp)  # ...through core.models, patched by name so the patch ends
    try:
        config = TrainConfig(data=str(root / "data"), val=[], backbone="tiny", input_size=SIZE, embedding_size=32,
                             batch_size=12, epochs=EPOCHS, lr=0.05, weight_decay=0.0, margin="cosface", margin_m=0.0,
                             scale=64.0, warmup_epochs=0.5, workers=0, device="cpu", seed=0, checkpoint_every=0,
                             log_every=100).replace(sample_rate=1.0)
        Trainer(config, root / "run", progress=False).fit()
        inputs = load_analysis_input(root / "run", device="cpu", progress=False, workers=0)
        analysis = run_analyses(inputs, root / "out", ("noise",), AnalysisOptions(progress=False))
        # two reference models, each trained on half of every class for a third as long
        run_crossval(root / "data", root / "crossval", config.replace(epochs=EPOCHS // 3), folds=2, device="cpu",
                     progress=False, echo=lambda line: None)
        with_reference = run_analyses(inputs, root / "out-crossval", ("noise",),
                                      AnalysisOptions(progress=False, crossval=root / "crossval"))
    finally:
        patch.undo()
    table = pd.read_csv(root / "out" / "noise.csv").sort_values("index")
    crossval_table = pd.read_csv(root / "out-crossval" / "noise.csv").sort_values("index")
    return (table, is_flipped[table["index"].to_numpy()], pd.read_csv(root / "run" / "log.csv"), analysis.summary,
            crossval_table, with_reference.summary)


def test_the_run_fitted_its_flipped_labels(memorised):
    table, is_flipped, log, *_ = memorised
    assert log["loss"].iloc[-1] < 0.01
    assert is_flipped.sum() == int(FLIPPED_SHARE * CLASSES * PER_CLASS)


def test_final_features_miss_the_memorised_flips_and_the_default_ranking_finds_them(memorised):
    table, is_flipped, _, summary, *_ = memorised
    final_features = average_precision_score(is_flipped, table["feature_score"])
    default = average_precision_score(is_flipped, table["score"])
    assert final_features < 0.75
    assert default > 0.85 and default > final_features + 0.1
    assert summary["noise"]["ranking"] == "own-center distance + training margins"
    assert "fitted part of the noise" in summary["noise"]["warning"]


def test_the_cross_validated_reference_finds_the_memorised_flips(memorised):
    table, is_flipped, _, _, crossval_table, summary = memorised
    assert np.array_equal(table["index"], crossval_table["index"])
    reference = average_precision_score(is_flipped, crossval_table["crossval_score"])
    default = average_precision_score(is_flipped, crossval_table["score"])
    final_features = average_precision_score(is_flipped, crossval_table["feature_score"])
    assert reference > 0.85 and reference > final_features + 0.1
    assert default > 0.85
    assert summary["noise"]["ranking"].startswith("cross-validated reference models")
    assert "the cross-validated reference models find most suspect" in summary["noise"]["warning"]
