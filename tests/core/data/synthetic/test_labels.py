"""Long-tailed counts and the injected label noise: splits and flips recorded as done."""

from __future__ import annotations

import numpy as np

from core.data.synthetic import labels
from core.data.synthetic.labels import long_tail_counts


def test_long_tail_counts():
    rng = np.random.default_rng(0)
    counts = long_tail_counts(20_000, 2, 80, 1.25, rng)
    assert counts.dtype == np.int64 and counts.min() >= 2 and counts.max() <= 80
    hist = np.bincount(counts, minlength=81)
    assert hist[2] > 10 * hist[40] > 0, "rare identities dominate, frequent ones exist"
    assert 12 <= counts.mean() <= 17
    # drawing more identities keeps the first ones' counts
    assert np.array_equal(long_tail_counts(50, 2, 80, 1.25, np.random.default_rng(5)),
                          long_tail_counts(80, 2, 80, 1.25, np.random.default_rng(5))[:50])


def test_label_assignment_invariants():
    counts = long_tail_counts(300, 2, 30, 1.25, np.random.default_rng(4))
    low = labels._assign_labels(counts, 0.1, 0.05, seed=7)
    high = labels._assign_labels(counts, 0.1, 0.2, seed=7)
    assert set(low.flipped) <= set(high.flipped), "raising flip_noise only adds flips"
    for lab in (low, high):
        assert np.bincount(lab.label, minlength=lab.num_classes).min() >= 1, "no empty class"
        person = labels._label_identity(lab)
        assert np.all(person[lab.label[lab.flipped]] != lab.identity[lab.flipped])
