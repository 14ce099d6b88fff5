import json

import numpy as np
import pytest

from core.errors import DataError
from experiments.grid import DCQ, FULL, PFC_01, SOFTMAX, grid_cells
from experiments.report import paired, results_frame, write_report
from experiments.runner import GRID_FILE, RESULT_FILE, UPDATES_FILE


def _fake_grid(root, accuracy, conflict_llr_ap=None):
    """Result files as the runner writes them, with accuracies chosen by the test."""
    from dataclasses import asdict

    (root / GRID_FILE).write_text(json.dumps({"scale": asdict(FULL), "versions": {"torch": "x"}}))
    for cell in grid_cells(FULL):
        cell_dir = root / "cells" / cell.name
        cell_dir.mkdir(parents=True)
        value = accuracy(cell)
        result = {**cell.describe(), "name": cell.name, "train_seconds": 60.0, "steps": 10, "classes": 4,
                  "val": {"accuracy": value, "tar_at_far": {"1e-02": value - 0.2}},
                  "val_tail": {"accuracy": value - 0.01, "tar_at_far": {"1e-02": value - 0.3}}}
        if cell.analysed:
            result["analysis"] = {"noise": {"average_precision": 0.9, "chance_average_precision": 0.1},
                                  "conflict": {"average_precision": 0.5, "chance_average_precision": 0.05}}
            if conflict_llr_ap is not None:
                result["analysis"]["conflict"]["same_person_llr_average_precision"] = conflict_llr_ap
        (cell_dir / RESULT_FILE).write_text(json.dumps(result))
        counts = np.array([2, 3, 25, 30])
        queue = cell.arm is DCQ or cell.arm.label.startswith(DCQ.label)
        if queue:  # generated weights sit in the queue: exposure, not updates
            negative = np.array([5, 5, 9, 9])
        else:
            negative = np.array([40, 40, 8, 8]) if cell.arm.options["sample_rate"] < 1 else np.array([90, 90, 90, 90])
        np.savez(cell_dir / UPDATES_FILE, counts=counts, positive=counts * 2, negative=negative,
                 negative_updates_weights=np.array(not queue))


def test_paired_differences_are_per_seed_in_points(tmp_path):
    _fake_grid(tmp_path, lambda cell: 0.90 + 0.01 * cell.seed + (0.003 if cell.arm is PFC_01 else 0.0))
    from experiments.runner import load_results

    frame = results_frame(load_results(tmp_path))
    difference = paired(frame, "val_accuracy", "clean", PFC_01.label, SOFTMAX.label)
    np.testing.assert_allclose(difference.values, [0.3, 0.3, 0.3], atol=1e-9)
    assert difference.std == pytest.approx(0.0, abs=1e-9)  # the seed effect cancels in the pairing


def test_verdicts_follow_the_numbers(tmp_path):
    # PFC 0.1 within 0.3 points of softmax -> holds; DCQ 3 points below -> does not hold
    offsets = {PFC_01.label: 0.003, DCQ.label: -0.03}
    _fake_grid(tmp_path, lambda cell: 0.90 + offsets.get(cell.arm.label, 0.0))
    out = tmp_path / "docs" / "RESULTS.md"
    written = write_report(tmp_path, out)
    text = out.read_text()
    claim1 = text.split("## 1.")[1].split("## 2.")[0]
    claim3 = text.split("## 3.")[1].split("## 4.")[0]
    assert "accuracy +0.30 ± 0.00 points (n=3)" in claim1 and "**Holds on this data.**" in claim1
    assert "accuracy: -3.00 ± 0.00 points (n=3). Within 1 point: **Does not hold on this data.**" in claim3
    assert "| softmax (PFC 1.0) | 3 | 90.00 ± 0.00 |" in claim1
    assert all(path.exists() for path in written) and (out.parent / "results" / "passive_updates.png").exists()
    # the long-tail table, PFC 0.1: tail classes 40 / 4 and 40 / 6 -> 8.3; head 8 / 50 and 8 / 60 -> 0.15
    assert "| PFC 0.1 | 8.3 | 0.15 |" in text
    # positives (2+3+25+30) * 2 = 120 and negatives 96 over 10 steps
    assert "held on average 12 positive classes and 10 sampled negatives" in claim1
    assert "flipped labels at ≥ 9.0x chance; split identities at ≤ 10.0x chance" in text


@pytest.mark.parametrize("llr_ap", [None, 0.7])
def test_conflict_llr_column_appears_only_when_the_grid_was_analysed_with_it(tmp_path, llr_ap):
    _fake_grid(tmp_path, lambda cell: 0.9, conflict_llr_ap=llr_ap)
    out = tmp_path / "RESULTS.md"
    write_report(tmp_path, out)
    claim4 = out.read_text().split("## 4.")[1].split("## ")[0]
    if llr_ap is None:
        assert "same-person LLR" not in claim4
    else:
        assert "| arm | seeds | noise AP | conflict AP | conflict AP by same-person LLR |" in claim4
        assert "| 0.500 ± 0.000 | 0.700 ± 0.000 |" in claim4


def test_report_refuses_a_directory_without_a_grid_or_cells(tmp_path):
    with pytest.raises(DataError, match="no grid.json"):
        write_report(tmp_path, tmp_path / "RESULTS.md")
    from dataclasses import asdict

    (tmp_path / GRID_FILE).write_text(json.dumps({"scale": asdict(FULL)}))
    with pytest.raises(DataError, match="no finished cell"):
        write_report(tmp_path, tmp_path / "RESULTS.md")


@pytest.mark.parametrize("damage, message", [
    (lambda root, cell: (root / GRID_FILE).write_text('{"scale": '), "grid.json: cannot read JSON"),
    (lambda root, cell: (cell / RESULT_FILE).write_text('{"arm": '), "result.json: cannot read JSON"),
    (lambda root, cell: (cell / RESULT_FILE).write_text("{}"), "result.json: not a cell result"),
    (lambda root, cell: (cell / UPDATES_FILE).write_bytes(b"PK\x03\x04 truncated"), "updates"),
    (lambda root, cell: (root / GRID_FILE).write_text('{"scale": 5}'), "grid.json: not a grid description"),
    (lambda root, cell: _edit_result(cell, dataset="foo"), "dataset 'foo' is not one of clean, noisy"),
    (lambda root, cell: _edit_result(cell, arm="bogus"), "arm 'bogus' is not an arm of the clean data"),
    (lambda root, cell: _edit_result(cell, seed="zero"), "seed 'zero' is not a whole number"),
    (lambda root, cell: _edit_result(cell, val={"accuracy": "abc"}), "val.accuracy is 'abc', not a number"),
    (lambda root, cell: _edit_result(cell, val={"accuracy": 0.9, "tar_at_far": {"1e-02": -5}}),
     r"val.tar_at_far\[1e-02\] is -5, outside"),
    (lambda root, cell: _edit_result(cell, train_seconds=None), "train_seconds is None, not a number"),
])
def test_a_damaged_grid_file_is_an_error_naming_it(tmp_path, damage, message):
    _fake_grid(tmp_path, lambda cell: 0.9)
    cell = next(path for path in sorted((tmp_path / "cells").iterdir()) if "pfc" in path.name)
    damage(tmp_path, cell)
    out = tmp_path / "docs" / "RESULTS.md"
    with pytest.raises(DataError, match=message):
        write_report(tmp_path, out)
    assert not out.parent.exists() or not any(out.parent.rglob("*"))  # no plots left without their report


def _edit_result(cell_dir, **changes):
    result = json.loads((cell_dir / RESULT_FILE).read_text())
    (cell_dir / RESULT_FILE).write_text(json.dumps({**result, **changes}))


def test_a_report_that_fails_keeps_the_previous_plots(tmp_path):
    _fake_grid(tmp_path, lambda cell: 0.9)
    out = tmp_path / "docs" / "RESULTS.md"
    write_report(tmp_path, out)
    before = {path.name: path.read_bytes() for path in (out.parent / "results").iterdir()}
    cells = [path for path in sorted((tmp_path / "cells").iterdir()) if "pfc" in path.name]
    _edit_result(cells[1], val={"accuracy": 0.5})  # a different accuracy plot would be drawn...
    (cells[0] / UPDATES_FILE).write_bytes(b"PK\x03\x04 truncated")  # ...before this fails
    with pytest.raises(DataError, match="updates"):
        write_report(tmp_path, out)
    assert {path.name: path.read_bytes() for path in (out.parent / "results").iterdir()} == before
    assert [path.name for path in out.parent.iterdir() if path.name.startswith(".")] == []


def test_counters_of_a_grid_written_before_roles_are_read_by_their_old_names(tmp_path):
    from experiments.report import _load_updates

    counts = np.array([2, 3, 25, 30])
    np.savez(tmp_path / "pfc.npz", counts=counts, positive_updates=counts * 2, negative_updates=np.array([9, 9, 1, 1]))
    np.savez(tmp_path / "dcq.npz", counts=counts, positive_updates=counts, negative_updates=np.zeros(4, dtype=int),
             queue_steps=np.array([5, 5, 9, 9]))
    pfc, dcq = _load_updates(tmp_path / "pfc.npz"), _load_updates(tmp_path / "dcq.npz")
    assert pfc["negative"].tolist() == [9, 9, 1, 1] and bool(pfc["negative_updates_weights"])
    assert dcq["negative"].tolist() == [5, 5, 9, 9] and not bool(dcq["negative_updates_weights"])
    assert pfc["positive"].tolist() == (counts * 2).tolist()


def test_the_report_s_figures_follow_figure_format(tmp_path):
    _fake_grid(tmp_path, lambda cell: 0.9)
    out = tmp_path / "docs" / "RESULTS.md"
    write_report(tmp_path, out, figure_format="svg")
    assert sorted(path.name for path in (out.parent / "results").iterdir()) == ["accuracy.svg",
                                                                               "passive_updates.svg"]
    assert "![verification accuracy](results/accuracy.svg)" in out.read_text()


def test_a_pdf_figure_is_linked_not_embedded(tmp_path):
    _fake_grid(tmp_path, lambda cell: 0.9)
    out = tmp_path / "docs" / "RESULTS.md"
    write_report(tmp_path, out, figure_format="pdf")
    text = out.read_text()
    assert "[verification accuracy (accuracy.pdf)](results/accuracy.pdf)" in text and "![" not in text
