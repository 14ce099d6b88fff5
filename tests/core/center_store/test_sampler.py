import numpy as np
import pytest
import torch

from core.center_store.sampler import CenterStoreSampler, expected_distinct_classes
from core.center_store.store import CenterStore


def test_expected_distinct_classes_known_answers():
    two_equal = np.array([5, 5])
    assert expected_distinct_classes(two_equal, 1, 0, 2) == pytest.approx(1.0)
    assert expected_distinct_classes(two_equal, 2, 0, 2) == pytest.approx(1.5)  # 1 + P(second differs)
    assert expected_distinct_classes(two_equal, 2, 1, 1) == pytest.approx(0.75)  # class 1 alone: 1 - 0.5^2
    assert expected_distinct_classes(np.array([7]), 3, 0, 1) == pytest.approx(1.0)


def test_expected_distinct_classes_matches_a_simulation():
    counts = np.random.default_rng(0).zipf(2.0, 300).clip(max=80)
    draws = np.random.default_rng(1).choice(300, size=(4000, 64), p=counts / counts.sum())
    simulated = np.mean([len(np.unique(row)) for row in draws])
    assert expected_distinct_classes(counts, 64, 0, 300) == pytest.approx(simulated, rel=0.01)


def _sampler(num_classes, rate, batch_size, world_size=1, rank=0):
    store = CenterStore(num_classes, (8,), "sgd", 0.9, 0.0, 0, rank, world_size, torch.device("cpu"))
    return CenterStoreSampler(store, rate, class_counts=np.full(num_classes, 10), batch_size=batch_size)


def test_a_rate_whose_columns_the_batch_fills_is_announced_with_the_rate_that_would_not():
    notes = _sampler(630, 0.1, 128).notes()  # 63 columns, about 114 distinct classes in a batch of 128
    assert len(notes) == 1 and "about 0 sampled negatives per step" in notes[0]
    suggested = float(notes[0].split("--sample-rate ")[2].split(" or more")[0])
    sampler = _sampler(630, suggested, 128)
    positives = expected_distinct_classes(np.full(630, 10), 128, 0, 630)
    assert sampler.num_sample - positives == pytest.approx(positives, abs=2) and sampler.notes() == []


def test_no_note_for_full_softmax_or_without_the_data_counts():
    assert _sampler(630, 1.0, 128).notes() == []
    store = CenterStore(630, (8,), "sgd", 0.9, 0.0, 0, 0, 1, torch.device("cpu"))
    assert CenterStoreSampler(store, 0.1).notes() == []


def test_the_note_counts_this_rank_s_classes():
    # 2 ranks: each holds 315 classes and 31 columns; a batch of 128 over both holds about 57 of each rank's
    notes = _sampler(630, 0.1, 128, world_size=2, rank=1).notes()
    assert "31 columns per step of this process's 315 classes" in notes[0]
