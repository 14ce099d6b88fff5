"""The paper's cleaning step as a noise signal: dominant sub-centers and the angle of each sample to its own."""

import json

import numpy as np
import pytest

from subcenter.cleaning import DROP_ANGLE, dominance, noise_signals, stored_centers


def _unit(degrees: float) -> list[float]:
    return [np.cos(np.radians(degrees)), np.sin(np.radians(degrees)), 0.0]


def _problem():
    """Class 0: sub-centers along x, y, z (scaled by 2, 3, 4); its images near x, one at 60 degrees, one along z.
    Class 1 has images near its sub-center 2 only; class 2 has none."""
    axes = np.eye(3, dtype=np.float32)
    subcenters = np.stack([axes * np.array([[2.0], [3.0], [4.0]]), axes, axes]).astype(np.float32)
    embeddings = np.array([_unit(0), _unit(5), _unit(-5), _unit(60), [0, 0, 1.0],
                           [0, 0.1, 1.0], [0.1, 0, 1.0]], dtype=np.float32)
    labels = np.array([0, 0, 0, 0, 0, 1, 1])
    return {"store.centers": subcenters}, embeddings, labels


def test_the_dominant_subcenter_is_the_one_most_samples_choose():
    tables, embeddings, labels = _problem()
    dominant, cosines = dominance(tables["store.centers"], embeddings, labels)
    assert dominant.tolist() == [0, 2, 0]  # class 2 has no samples: sub-center 0
    assert cosines.shape == (7, 3)
    assert cosines[3, 0] == pytest.approx(0.5, abs=1e-6)  # 60 degrees from class 0's x sub-center


def test_samples_beyond_75_degrees_of_their_dominant_subcenter_are_flagged():
    (signal,) = noise_signals(*_problem())
    assert signal.name == "subcenter_angle"
    expected = [0, 5, 5, 60, 90, np.degrees(np.arctan(0.1)), np.degrees(np.arctan(0.1))]
    np.testing.assert_allclose(signal.scores, expected, atol=1e-3)
    assert signal.flagged.tolist() == [angle > DROP_ANGLE for angle in expected] == [False] * 4 + [True, False, False]


def test_stored_centers_are_the_raw_dominant_subcenters():
    tables, embeddings, labels = _problem()
    centers = stored_centers(tables, embeddings, labels)
    np.testing.assert_array_equal(centers, [[2, 0, 0], [0, 0, 1], [1, 0, 0]])


def test_analyze_scores_the_signal_against_ground_truth(tmp_path):
    from click.testing import CliRunner

    from cli import main
    from core.data.synthetic import SyntheticConfig, make_synthetic_dataset

    data = tmp_path / "data"
    make_synthetic_dataset(data, SyntheticConfig(identities=12, heldout_identities=0, min_images=4, max_images=10,
                                                 flip_noise=0.15, split=0.0, image_size=32), progress=False, workers=1)
    run, out = tmp_path / "run", tmp_path / "out"
    runner = CliRunner()
    trained = runner.invoke(main, ["train", "--method", "subcenter", "--data", str(data), "--out", str(run),
                                   "--backbone", "tiny", "--input-size", "16", "--embedding-size", "16",
                                   "--batch-size", "8", "--epochs", "2", "--sample-rate", "1.0", "--workers", "0",
                                   "--device", "cpu", "--quiet"], catch_exceptions=False)
    assert trained.exit_code == 0, trained.output
    analysed = runner.invoke(main, ["analyze", "noise", str(run), "--out", str(out), "--quiet"],
                             catch_exceptions=False)
    assert analysed.exit_code == 0 and "Noise by sub-center dominance" in analysed.output
    signal = json.loads((out / "summary.json").read_text())["noise"]["signals"]["subcenter_angle"]
    truth = signal["ground_truth"]
    assert 0.0 < truth["average_precision"] <= 1.0 and truth["chance_average_precision"] > 0
    import pandas as pd

    noise = pd.read_csv(out / "noise.csv")
    assert int(noise["subcenter_angle_flagged"].sum()) == signal["flagged"]
    assert ((noise["subcenter_angle"] > DROP_ANGLE) == noise["subcenter_angle_flagged"]).all()
