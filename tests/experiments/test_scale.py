import pytest

from experiments.grid import SOFTMAX
from core.errors import ConfigError
from experiments.scale import (PFC_01, QUICK, ScaleSetting, cells, first_class_count_within, paired_gap, run_scale,
                               with_classes, write_scale_report)


def test_paired_gap_pairs_by_seed():
    arm = {0: {"val": {"accuracy": 0.80}}, 1: {"val": {"accuracy": 0.90}}, 2: {"val": {"accuracy": 0.5}}}
    reference = {0: {"val": {"accuracy": 0.85}}, 1: {"val": {"accuracy": 0.91}}}
    mean, spread, n = paired_gap(arm, reference)
    assert n == 2 and mean == pytest.approx(-3.0) and spread == pytest.approx(2.0)


def test_the_claim_holds_from_the_first_count_after_which_every_gap_is_within():
    assert first_class_count_within({1000: -2.0, 10000: -0.3, 30000: -0.6, 100000: -0.1}) == 100000
    assert first_class_count_within({1000: -2.0, 10000: -0.4, 30000: 0.2}) == 10000
    assert first_class_count_within({1000: -2.0, 10000: -0.7}) is None
    assert first_class_count_within({1000: 0.1, 10000: None}) == 1000


def test_a_small_sweep_runs_resumes_and_reports(tmp_path):
    setting = ScaleSetting("test", (60,), (0,), epochs=1, batch_size=32, embedding_size=16, image_check=False)
    assert [c.arm.label for c in cells(setting)][:2] == [SOFTMAX.label, "PFC 0.3"]
    lines = []
    first = run_scale(tmp_path / "sweep", setting, echo=lines.append, only=2)
    assert len(first) == 2 and lines[0].startswith("[1/2]")
    lines.clear()
    second = run_scale(tmp_path / "sweep", setting, echo=lines.append, only=3)
    assert "done earlier, skipped" in lines[0] and len(second) == 3
    softmax = next(r for r in second if r["arm"] == SOFTMAX.label)
    assert 0.0 <= softmax["val"]["accuracy"] <= 1.0 and softmax["negatives_per_step"] > 0
    assert softmax["head_mib"] > 0 and softmax["classes"] == 60
    doc = tmp_path / "docs" / "SCALING.md"
    doc.parent.mkdir()
    written = write_scale_report(second, doc, setting)
    text = doc.read_text()
    assert f"| 60 | {PFC_01.label} | 1 |" in text and "| 60 | softmax (PFC 1.0) | 1 |" in text
    assert f"- {PFC_01.label}: **" in text and written[1].exists()
    with pytest.raises(Exception, match="other settings"):
        run_scale(tmp_path / "sweep", ScaleSetting("other", (60,), (0,), 2, 32, 16, False), echo=lines.append)


def test_class_counts_can_be_chosen_and_a_bad_one_is_named():
    assert with_classes(QUICK, (30_000, 1_000, 30_000)).classes == (1_000, 30_000)
    with pytest.raises(ConfigError, match="--classes must each be >= 2"):
        with_classes(QUICK, (1,))
