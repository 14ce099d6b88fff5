"""Recorded settings of resumable outputs: recorded once, compared on every resume."""

from pathlib import Path

import numpy as np

from core.io import claim_settings, read_json


def test_settings_are_recorded_then_compared_key_by_key(tmp_path: Path):
    path = tmp_path / "out" / "setup.json"
    assert claim_settings(path, {"seed": np.int64(1), "folds": 4}) == []  # recorded (numpy values as JSON)
    assert read_json(path) == {"seed": 1, "folds": 4}
    assert claim_settings(path, {"seed": 1, "folds": 4}) == []
    assert claim_settings(path, {"seed": 2, "folds": 4, "extra": True}) == ["extra", "seed"]
    assert read_json(path) == {"seed": 1, "folds": 4}  # a refused call never rewrites the record
