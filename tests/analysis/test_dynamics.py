"""Noise from training margins: the class-relative score, the combined ranking, the memorisation figure, and
margins used only on the data the run trained on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.dynamics import CLASS_SHARE, TrainingMargins, training_margins
from analysis.noise import (RANK_COMBINED, SampleNeighbours, memorisation, memorisation_warning, noise_table,
                            robust_z)


def _margins(values, visits=None) -> TrainingMargins:
    values = np.asarray(values, dtype=np.float64)
    visits = np.ones(len(values), dtype=np.int64) if visits is None else np.asarray(visits)
    return TrainingMargins(mean_margin=np.where(visits > 0, values, np.nan), visits=visits, from_step=0, to_step=10)


def test_suspicion_is_the_margin_against_half_the_rest_of_its_class():
    labels = np.array([0, 0, 0, 1, 1, 2])
    margins = _margins([0.6, 0.4, -0.2, -0.3, -0.1, 0.5])
    out = margins.suspicion(labels)
    assert out[2] == pytest.approx(-(-0.2 - CLASS_SHARE * 0.5))  # its classmates average 0.5
    assert out[3] == pytest.approx(-(-0.3 - CLASS_SHARE * -0.1))
    median = np.median([0.6, 0.4, -0.2, -0.3, -0.1, 0.5])
    assert out[5] == pytest.approx(-(0.5 - CLASS_SHARE * median))  # alone in its class: against everyone
    assert out.argmax() == 2  # beaten by its own classmates: the flip
    # a hard tail class whose every image has a low margin does not rank above the flip in a clean class
    assert out[3] < out[2]


def test_unvisited_samples_carry_no_evidence():
    margins = _margins([0.5, 0.0, -0.5], visits=[1, 0, 1])
    out = margins.suspicion(np.array([0, 0, 1]))
    assert np.isfinite(out).all() and out[1] == pytest.approx(-(0.0 - CLASS_SHARE * 0.5))


def test_the_combined_ranking_adds_robust_z_scores_of_own_distance_and_training_score():
    rng = np.random.default_rng(0)
    n = 200
    own = rng.uniform(0.6, 0.9, n).astype(np.float32)
    samples = SampleNeighbours(own_similarity=own, nearest_label=np.zeros(n, dtype=np.int64),
                               nearest_similarity=own - 0.3, leave_one_out=True)
    labels = np.repeat(np.arange(20), 10)
    margins = _margins(rng.normal(0.3, 0.05, n))
    margins.mean_margin[17] = -0.4  # beaten all run, while its final features look ordinary
    table = noise_table(samples, labels, training=margins).set_index("index")
    assert table.attrs["ranking"] == RANK_COMBINED
    expected = robust_z(-own.astype(np.float64)) + robust_z(margins.suspicion(labels))
    np.testing.assert_allclose(table.sort_index()["score"], expected, atol=1e-5)
    assert table["score"].idxmax() == 17 and table.loc[17, "flagged"]
    assert table.loc[17, "training_margin"] == pytest.approx(-0.4)


def test_memorisation_is_how_many_training_suspects_the_final_features_still_place_elsewhere():
    n = 1000
    training = np.linspace(1.0, 0.0, n)  # rows 0-19 are the top 2 %
    fitted = pd.DataFrame({"training_score": training, "feature_score": np.where(np.arange(n) < 10, 0.2, -0.1)})
    assert memorisation(fitted) == pytest.approx(0.5)
    assert memorisation(fitted.iloc[:100]) == pytest.approx(1.0)  # at least 10 samples: rows 0-9
    assert "only 50%" in memorisation_warning(0.5) and memorisation_warning(0.9) is None
    assert memorisation(fitted.assign(training_score=np.nan)) is None
    by_reference = fitted.assign(crossval_score=training[::-1])  # the reference suspects the other end: rows 980-999
    assert memorisation(by_reference, "crossval_score") == pytest.approx(0.0)
    assert "cross-validated reference models find most" in memorisation_warning(0.0, "crossval_score")


class _Run:
    def __init__(self, dynamics, data):
        self.dynamics, self.config, self.step, self.method = dynamics, {"data": str(data)}, 10, "pfc"
        self.checkpoint = Path("run/checkpoint.pt")


def test_margins_are_used_only_on_the_data_the_run_trained_on(tmp_path):
    import torch

    data, other = tmp_path / "train.lst", tmp_path / "other.lst"
    data.write_text("x 0\n")
    other.write_text("x 0\n")
    state = {"margin_sum": torch.tensor([0.5, -1.0]), "visits": torch.tensor([2, 0], dtype=torch.int32),
             "from_step": 3}
    margins, note = training_margins(_Run(state, data), data, 2)
    assert margins.mean_margin[0] == pytest.approx(0.25) and np.isnan(margins.mean_margin[1])
    assert margins.from_step == 3 and "steps 3-10" in note
    assert training_margins(_Run(state, data), other, 2)[0] is None
    assert "cover 2 samples" in training_margins(_Run(state, data), data, 3)[1]
    assert "recorded no training margins" in training_margins(_Run(None, data), data, 2)[1]
