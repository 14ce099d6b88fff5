"""Detection scores against ground truth: what a missed positive costs."""

import numpy as np
import pytest

from analysis.groundtruth import score_detection


def test_missed_positives_lower_average_precision():
    scores = np.array([0.9, 0.8, 0.1])
    found = score_detection("x", scores, np.array([True, False, False]), scores > 0.5, total_positives=1)
    missed = score_detection("x", scores, np.array([True, False, False]), scores > 0.5, total_positives=2)
    assert found.average_precision == pytest.approx(1.0)
    assert missed.average_precision == pytest.approx(0.5) and missed.recall == pytest.approx(0.5)
