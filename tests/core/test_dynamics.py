"""Per-sample training margins: known answers, the chunked loss's margins equal the simple path's, and the counters
add up and round-trip."""

from __future__ import annotations

import pytest
import torch

from core.distributed import DistributedContext
from core.dynamics import NO_COLUMN, TrainingDynamics, best_other, margins_from_logits
from core.errors import DataError


def test_margins_are_the_given_column_minus_the_best_other_one():
    cosine = torch.tensor([[0.9, 0.2, 0.5],
                           [0.1, 0.7, 0.3],
                           [0.4, 0.4, -0.2]])
    targets = torch.tensor([0, 2, 1])
    logits = 30.0 * cosine
    logits[torch.arange(3), targets] -= 10.0  # a margin on the target column does not enter the other maximum
    margins, other = margins_from_logits(cosine, logits, targets, scale=30.0,
                                         column_classes=torch.tensor([40, 41, 42]))
    torch.testing.assert_close(margins, torch.tensor([0.9 - 0.5, 0.3 - 0.7, 0.4 - 0.4]))
    assert other.tolist() == [42, 41, 40]  # the class of each row's best other column
    assert margins_from_logits(cosine, logits, targets, scale=30.0)[1].tolist() == [-1, -1, -1]  # classes unknown


def test_masked_columns_are_not_other_classes_and_a_missing_target_counts_as_none():
    cosine = torch.tensor([[0.2, 0.9, 0.5], [0.3, 0.1, 0.0], [0.7, 0.8, 0.6]])
    mask = torch.tensor([[False, True, False], [False, False, False], [False, True, True]])  # row 0: column 1 is
    logits = (10.0 * cosine).masked_fill(mask, float("-inf"))  # its own label again; row 2 has no other column
    margins, other = margins_from_logits(cosine, logits, torch.tensor([0, -1, 0]), scale=10.0,
                                         column_classes=torch.tensor([5, 6, 7]))
    torch.testing.assert_close(margins, torch.tensor([0.2 - 0.5, NO_COLUMN - 0.3, 0.7 - NO_COLUMN]))
    assert other.tolist() == [7, 5, -1]


def test_best_other_of_a_single_column_is_the_missing_value():
    cosine = torch.tensor([[0.4], [0.6]])
    value, column = best_other(cosine, torch.tensor([0, 0]), torch.tensor([True, False]), missing=-7.0)
    torch.testing.assert_close(value, torch.tensor([-7.0, 0.6]))
    assert column.tolist() == [-1, 0]


def test_the_chunked_loss_records_the_margins_of_the_simple_path():
    from core.chunked_loss import chunked_margin_cross_entropy
    from core.margins import build_margin

    generator = torch.Generator().manual_seed(0)
    embeddings, weights = torch.randn(6, 8, generator=generator), torch.randn(37, 8, generator=generator)
    targets = torch.tensor([0, 5, 9, 17, 36, 20])
    record: dict = {}
    chunked_margin_cross_entropy(embeddings, weights, targets, build_margin("arcface", 64.0, 0.5), chunk=5,
                                 record=record)
    cosine = torch.nn.functional.normalize(embeddings, dim=1) @ torch.nn.functional.normalize(weights, dim=1).t()
    margins, other = margins_from_logits(cosine, 64.0 * cosine, targets, 64.0, column_classes=torch.arange(37))
    torch.testing.assert_close(record["target_cosine"] - record["best_other"], margins, rtol=1e-5, atol=1e-6)
    assert torch.equal(record["columns"], other)


def test_the_loss_leaves_each_rows_margin_when_recording():
    from core.loss import MarginSoftmaxLoss
    from core.margins import build_margin
    from core.sampler import Selection

    loss = MarginSoftmaxLoss(build_margin("cosface", 30.0, 0.35))
    selection = Selection(embeddings=torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
                          weights=torch.tensor([[1.0, 0.0], [0.6, 0.8]]), targets=torch.tensor([0, 0]))
    loss(selection)
    assert loss.last_margins is None  # off unless asked
    loss.record_margins = True
    loss(selection)
    torch.testing.assert_close(loss.last_margins, torch.tensor([1.0 - 0.6, 0.0 - 0.8]))
    assert loss.last_other_classes.tolist() == [-1, -1]  # the selection names no column classes


def _dynamics(samples=5, classes=3, context=None):
    return TrainingDynamics(samples, classes, torch.device("cpu"), context or DistributedContext())


def test_visits_margin_sums_and_confused_pairs_add_up_and_round_trip(monkeypatch):
    import core.dynamics

    monkeypatch.setattr(core.dynamics, "PAIR_BUFFER_ROWS", 2)  # fold in the middle too
    dynamics = _dynamics()
    dynamics.record(torch.tensor([0, 3, 3]), torch.tensor([0.5, -0.25, 0.75]), torch.tensor([0, 2, 2]),
                    torch.tensor([1, 0, 2]))  # the last row "lost" to its own class: not a confusion
    dynamics.record(torch.tensor([4]), torch.tensor([1.0]), torch.tensor([2]), torch.tensor([0]))
    dynamics.record(torch.tensor([1]), torch.tensor([0.0]), torch.tensor([0]), torch.tensor([-1]))  # no class known
    state = dynamics.state_dict()
    assert state["visits"].tolist() == [1, 1, 0, 2, 1]
    assert state["margin_sum"].tolist() == pytest.approx([0.5, 0.0, 0.0, 0.5, 1.0])
    assert dict(zip(state["pair_keys"].tolist(), state["pair_counts"].tolist())) == {0 * 3 + 1: 1, 2 * 3 + 0: 2}
    restored = _dynamics()
    restored.load_state_dict(state)
    assert torch.equal(restored.visits, dynamics.visits) and torch.equal(restored.margin_sum, dynamics.margin_sum)
    assert torch.equal(restored.pair_counts, state["pair_counts"])
    with pytest.raises(DataError, match="cover 5 samples, the data has 4"):
        _dynamics(samples=4).load_state_dict(state)


def test_gathered_rows_keep_only_this_processs_own():
    dynamics = _dynamics(samples=4, context=DistributedContext(rank=1, world_size=2))
    dynamics.record(torch.tensor([2, 3]), torch.tensor([9.0, 9.0, 0.25, -0.5]), torch.tensor([1, 2]),
                    torch.tensor([0, 0, 2, 1]))  # rank 0's rows, then rank 1's
    assert dynamics.margin_sum.tolist() == [0.0, 0.0, 0.25, -0.5]
    dynamics._fold()
    assert dict(zip(dynamics.pair_keys.tolist(), dynamics.pair_counts.tolist())) == {1 * 3 + 2: 1, 2 * 3 + 1: 1}
