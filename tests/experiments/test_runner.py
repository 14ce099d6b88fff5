import json
from dataclasses import replace

import pytest

from core.errors import ConfigError
from experiments.grid import QUICK, grid_cells
from experiments.runner import RESULT_FILE, run_grid

MICRO = replace(QUICK, name="micro", identities=14, heldout_identities=12, max_images=5, epochs=1, batch_size=8,
                val_pairs=24)


def test_grid_trains_analyses_and_resumes_without_redoing_cells(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEQUEUE_CACHE", str(tmp_path / "cache"))
    cells = grid_cells(MICRO)
    first_noisy = next(i for i, cell in enumerate(cells) if cell.analysed) + 1
    lines = []
    results = run_grid(tmp_path / "grid", MICRO, echo=lines.append, only=first_noisy)
    assert len(results) == first_noisy
    noisy = json.loads((tmp_path / "grid" / "cells" / cells[first_noisy - 1].name / RESULT_FILE).read_text())
    assert {"val", "val_tail"} <= set(noisy) and set(noisy["analysis"]) == {"noise", "conflict"}
    assert noisy["classes"] > MICRO.identities  # split identities add labels on the noisy set
    stamps = {cell.name: (tmp_path / "grid" / "cells" / cell.name / RESULT_FILE).stat().st_mtime_ns
              for cell in cells[:first_noisy]}

    lines.clear()
    run_grid(tmp_path / "grid", MICRO, echo=lines.append, only=first_noisy)
    assert all("skipped" in line for line in lines) and len(lines) == first_noisy
    assert stamps == {name: (tmp_path / "grid" / "cells" / name / RESULT_FILE).stat().st_mtime_ns
                      for name in stamps}


def test_a_grid_directory_keeps_one_scale(tmp_path):
    (tmp_path / "grid").mkdir()
    run_grid(tmp_path / "grid", MICRO, only=0)
    with pytest.raises(ConfigError, match="micro grid with other settings"):
        run_grid(tmp_path / "grid", replace(MICRO, epochs=2), only=0)


def test_a_wrong_device_is_refused_before_anything_is_written(tmp_path):
    from click.testing import CliRunner

    from cli import main

    out = tmp_path / "grid"
    result = CliRunner().invoke(main, ["experiment", "run", "--out", str(out), "--quick", "--cells", "1",
                                       "--device", "bogus"])
    assert result.exit_code == 2 and "--device must be auto, cpu or cuda" in result.output
    assert not out.exists()
