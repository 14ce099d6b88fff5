"""The detection benchmark: stratified conflict AP and the baseline's scores as known answers, the fixed
scenario split, the table and the doc block, and two cells end to end (resumed: a finished cell is skipped)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from analysis.noise import RANK_CROSSVAL_AND_RUN
from core.errors import ConfigError
from experiments import detection
from experiments.detection import (BASELINE, FULL, HELD_OUT, QUICK, SCENARIOS, Scale, baseline_scores, cells,
                                   detection_table, stratified_conflict_ap, write_detection_report)


def test_conflict_ap_per_stratum_ranks_its_own_positives_against_every_negative():
    # five candidate pairs: two true (smaller halves 1 and 6), three not; one true pair (size 3) never ranked
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    positive = np.array([False, True, False, True, False])
    sizes = np.array([4, 6, 2, 1, 9])
    truth_sizes = np.array([6, 1, 3])
    ap = stratified_conflict_ap(scores, positive, sizes, truth_sizes)
    assert ap["all"] == pytest.approx((1 / 2 + 2 / 4) / 3)  # precision at each hit, over all three true pairs
    assert ap["5+"] == pytest.approx(1 / 2)  # the size-6 pair, ranked second among itself and the negatives
    assert ap["1"] == pytest.approx(1 / 3)  # the size-1 pair behind two negatives (the size-6 pair left out)
    assert ap["2-4"] == pytest.approx(0.0)  # its only true pair was never ranked


def test_a_stratum_without_true_pairs_has_no_figure():
    ap = stratified_conflict_ap(np.array([0.5]), np.array([True]), np.array([7]), np.array([7]))
    assert ap == {"all": 1.0, "1": None, "2-4": None, "5+": 1.0}


def test_baseline_scores_are_best_other_mean_minus_own_mean_and_mean_cosines():
    embeddings = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    labels = np.array([0, 0, 1, 1, 1])  # the last sample sits with class 0's images
    noise, similarity = baseline_scores(embeddings, labels, 2)
    mean_1 = np.array([1.0, 2.0]) / np.sqrt(5)  # class 1 holds the flipped sample in its own mean
    assert noise[4] == pytest.approx(1.0 - mean_1[0])
    assert noise[0] == pytest.approx(mean_1[0] - 1.0)
    assert similarity[0, 1] == pytest.approx(mean_1[0])
    assert noise.argmax() == 4


def test_the_split_is_fixed_and_both_renderers_and_noise_kinds_are_held_out():
    held = [s for s in SCENARIOS if s.held_out]
    assert len(held) >= 4 and all(s.name.startswith("held-") == s.held_out for s in SCENARIOS)
    assert {s.renderer for s in held} == {"faces", "shapes"}
    assert {s.flip_target for s in held if s.flip_noise} == {"uniform", "lookalike"} and any(s.open_set for s in held)
    assert len({s.seed for s in SCENARIOS}) == len(SCENARIOS)
    assert cells(FULL)[0].regime is BASELINE and len(cells(FULL)) == len(SCENARIOS) * 4
    assert {c.scenario.name for c in cells(QUICK)} == set(QUICK.scenarios)
    assert [c.name for c in cells(HELD_OUT)] == [c.name for c in cells(FULL) if c.scenario.held_out]


def _result(scenario, regime, noise, conflict, held_out=True):
    return {"scenario": scenario, "regime": regime, "held_out": held_out, "epochs": 12, "val_accuracy": 0.9,
            "final_loss": 1.5, "scale": "full", "noise": noise, "conflict": conflict}


def test_the_table_puts_each_baseline_beside_its_scenario_and_averages_by_split(tmp_path):
    strata = {"all": 0.5, "1": None, "2-4": 0.2, "5+": 0.8}
    results = [_result("held-a", "baseline", {"baseline": 0.7}, {"baseline": dict(strata, **{"5+": 0.6})}),
               _result("held-a", "pfc-12", {"score": 0.9, "run_score": 0.85, "crossval_score": 0.8,
                                            "feature_score": 0.75},
                       {"crossval": dict(strata, **{"5+": 0.9}), "crossval_cosine": dict(strata, **{"5+": 0.85}),
                        "llr": strata, "cosine": dict(strata, **{"5+": 0.7})}),
               _result("held-b", "baseline", {"baseline": 0.5}, {"baseline": strata}),
               _result("held-b", "pfc-12", {"score": 0.7, "run_score": 0.65, "crossval_score": 0.6,
                                            "feature_score": 0.55},
                       {"crossval": strata, "llr": strata, "cosine": strata})]
    results[1]["noise_ranking"] = RANK_CROSSVAL_AND_RUN
    table = detection_table(results)
    assert ("| held-a | pfc-12 (12 ep) | 0.900 | 1.50 | 0.900 | reference + run/2 | 0.850 | 0.800 | 0.750 | "
            "0.700 | 0.900 | 0.850 | 0.700 | 0.800 | – | 0.600 | 0.200 / – | 0.200 / – |") in table  # no review: –
    assert "| held-b | pfc-12 (12 ep) | 0.900 | 1.50 | 0.700 | run |" in table  # no ranking recorded: the run's
    assert ("| **mean, held out** (2 runs) | | | | **0.800** |  | **0.750** | **0.700** | **0.650** | **0.600** | "
            "**0.850** | **0.850** |") in table  # a column one run lacks averages the runs that have it
    doc = tmp_path / "ANALYSIS.md"
    doc.write_text(f"intro\n{detection.DOC_START}\nold\n{detection.DOC_END}\noutro\n")
    write_detection_report(tmp_path, results, doc)
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text and table in text
    with pytest.raises(ConfigError, match="detection:start"):
        (tmp_path / "other.md").write_text("no markers")
        write_detection_report(tmp_path, results, tmp_path / "other.md")


def test_two_cells_train_analyse_score_and_resume(tmp_path, monkeypatch):
    tiny = Scale("test", identity_share=0.15, epoch_share=0.1, scenarios=("dev-faces-uniform",),
                 regimes=("baseline", "pfc-12"))
    scenario = replace(SCENARIOS[0], identities=400)
    monkeypatch.setattr(detection, "SCENARIOS", (scenario,))
    echoed: list[str] = []
    results = detection.run_detection(tmp_path, tiny, echo=echoed.append)
    assert [r["regime"] for r in results] == ["baseline", "pfc-12"]
    base, run = results
    assert set(base["noise"]) == {"baseline"}
    assert set(run["noise"]) >= {"score", "run_score", "crossval_score", "feature_score", "training_score"}
    assert set(run["conflict"]) == set(detection.CONFLICT_RANKINGS)  # confusions were recorded
    assert run["noise_ranking"].startswith("cross-validated reference models")
    assert (tmp_path / "crossval" / "dev-faces-uniform" / "crossval.npz").is_file()
    for value in [*run["noise"].values(), base["noise"]["baseline"]]:
        assert run["noise_rate"] < value <= 1.0  # every signal ranks above chance
    assert run["strata_pairs"]["5+"] + run["strata_pairs"]["2-4"] + run["strata_pairs"]["1"] == 3  # 5 % of 60
    again = detection.run_detection(tmp_path, tiny, echo=echoed.append)
    assert again == results and sum("done earlier" in line for line in echoed) == 2
    with pytest.raises(ConfigError, match="other settings"):
        detection.run_detection(tmp_path, replace(tiny, epoch_share=0.2))


def test_a_scenario_reference_is_handed_to_run_crossval_every_time_with_its_seed_and_scaled_epochs(tmp_path,
                                                                                                 monkeypatch):
    """run_crossval reads a finished result back, completes one with fewer repeats and rebuilds one an older version
    wrote (tests/analysis/test_crossval.py), so the benchmark never judges a stored result itself."""
    import analysis.crossval as crossval_module

    calls = []
    monkeypatch.setattr(crossval_module, "run_crossval",
                        lambda data, root, recipe, **kwargs: calls.append((root, recipe.epochs, kwargs["seed"])))
    root = tmp_path / "crossval" / SCENARIOS[0].name
    assert detection.crossval_root(tmp_path, SCENARIOS[0], FULL, tmp_path / "data", "cpu") == root
    detection.crossval_root(tmp_path, SCENARIOS[0], FULL, tmp_path / "data", "cpu")
    quick = replace(FULL, epoch_share=0.25)
    detection.crossval_root(tmp_path, SCENARIOS[0], quick, tmp_path / "data", "cpu")
    assert calls == [(root, BASELINE.epochs, SCENARIOS[0].seed)] * 2 + [
        (root, max(2, round(BASELINE.epochs * 0.25)), SCENARIOS[0].seed)]
