"""Batch augmentation: flips keyed by each sample's draw, so any split of a batch and any resume flip alike."""

import numpy as np
import pytest
import torch

from core.data.batch import Batch
from core.data.transforms import RandomFlip, fair_coins


def _batch(positions) -> Batch:
    generator = torch.Generator().manual_seed(0)
    rows = len(positions)
    return Batch(torch.randn(rows, 3, 4, 5, generator=generator), torch.arange(rows),
                 torch.randn(rows, 2, 3, 4, 5, generator=generator), torch.as_tensor(positions, dtype=torch.int64))


def test_each_image_is_itself_or_its_mirror_by_its_own_coin():
    batch = _batch(range(40))
    flipped = RandomFlip(seed=7)(batch)
    for view, (after, before) in enumerate([(flipped.images, batch.images), *(
            (flipped.key_images[:, j], batch.key_images[:, j]) for j in range(2))]):
        coins = fair_coins(7, np.arange(40), view)
        for row in range(40):
            assert torch.equal(after[row], before[row].flip(-1) if coins[row] else before[row])
    assert torch.equal(flipped.labels, batch.labels) and torch.equal(flipped.positions, batch.positions)


def test_a_row_flips_the_same_in_any_batch_that_holds_it():
    def rows(positions):  # each image and key is a fixed function of its position
        images = torch.stack([torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(p)) for p in positions])
        return Batch(images, torch.as_tensor(list(positions)), torch.stack([images, images * 2], dim=1),
                     torch.as_tensor(list(positions), dtype=torch.int64))

    whole = RandomFlip(seed=3)(rows(range(10)))
    for rank in range(2):  # the same ten rows split over two ranks, every other row each
        half = RandomFlip(seed=3)(rows(range(rank, 10, 2)))
        assert torch.equal(half.images, whole.images[rank::2])
        assert torch.equal(half.key_images, whole.key_images[rank::2])


def test_coins_are_fair_independent_of_view_and_seed():
    draws = np.arange(200_000)
    heads = fair_coins(0, draws, 0)
    assert abs(heads.mean() - 0.5) < 0.005
    for other in (fair_coins(0, draws, 1), fair_coins(1, draws, 0)):
        assert abs((heads == other).mean() - 0.5) < 0.005  # unrelated streams agree half of the time


def test_positions_are_required():
    batch = _batch(range(3))
    with pytest.raises(ValueError, match="positions"):
        RandomFlip(0)(Batch(batch.images, batch.labels))
