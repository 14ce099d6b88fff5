"""Batch augmentation: the flips a resumed run must repeat exactly."""

import torch

from core.data.batch import Batch
from core.data.transforms import RandomFlip, random_horizontal_flip


def _batch() -> Batch:
    generator = torch.Generator().manual_seed(0)
    return Batch(torch.randn(6, 3, 4, 5, generator=generator), torch.arange(6),
                 torch.randn(6, 2, 3, 4, 5, generator=generator))


def test_queries_then_each_key_are_flipped_from_one_stream():
    batch = _batch()
    flipped = RandomFlip(seed=7)(batch)
    generator = torch.Generator().manual_seed(7)
    expected_images = random_horizontal_flip(batch.images, generator)
    expected_keys = random_horizontal_flip(batch.key_images.flatten(0, 1), generator).view_as(batch.key_images)
    assert torch.equal(flipped.images, expected_images) and torch.equal(flipped.key_images, expected_keys)
    assert torch.equal(flipped.labels, batch.labels)
    # each image is itself or its mirror, and both happen
    mirrored = [torch.equal(a, b.flip(-1)) for a, b in zip(flipped.images, batch.images)]
    kept = [torch.equal(a, b) for a, b in zip(flipped.images, batch.images)]
    assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored) and any(kept)


def test_a_restored_state_repeats_the_same_flips():
    augment = RandomFlip(seed=3)
    augment(_batch())
    saved = augment.state_dict()
    first = augment(_batch())
    other = RandomFlip(seed=99)
    other.load_state_dict(saved)
    second = other(_batch())
    assert torch.equal(first.images, second.images) and torch.equal(first.key_images, second.key_images)
