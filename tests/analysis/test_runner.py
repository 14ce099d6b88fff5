"""Warnings for flags that cannot mean what they say, and the console headline that carries them."""

import numpy as np

from analysis.conflict import conflict_warning, default_conflict_threshold
from analysis.noise import noise_warning


def test_flags_that_cannot_mean_what_they_say_come_with_a_warning():
    rng = np.random.default_rng(0)
    bunched = rng.normal(0.992, 0.005, size=600).clip(max=0.9999)  # class means of a collapsed backbone
    spread = rng.normal(0.70, 0.05, size=600)
    assert "no pair can be flagged" in conflict_warning(default_conflict_threshold(bunched))
    assert conflict_warning(default_conflict_threshold(spread)) is None
    assert noise_warning(0.5) is None
    assert noise_warning(0.75).startswith("75% of the samples are flagged")


def test_warnings_reach_the_console_headline():
    from analysis.runner import headline

    summary = {"conflict": {"flagged": 0, "pairs": 10, "threshold": 1.01, "warning": "W1"},
               "noise": {"flagged": 9, "samples": 10}}
    assert headline(summary)[-1] == "Warning (conflict): W1"
    assert not [line for line in headline({"noise": {"flagged": 1, "samples": 10}}) if "Warning" in line]
