import numpy as np
import pytest
import torch

from core.data.loader import CachedImages, EpochBatchSampler, open_dataset, prepare_dataset
from core.errors import DataError


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_each_sample_is_seen_once_per_epoch_across_ranks(world_size):
    seen = []
    for rank in range(world_size):
        sampler = EpochBatchSampler(103, 4, seed=7, rank=rank, world_size=world_size)
        sampler.set_position(epoch=2)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 103 // (4 * world_size)
        seen += [index for batch in batches for index in batch]
    assert len(seen) == len(set(seen))  # never twice
    assert 103 - len(seen) < 4 * world_size  # only the incomplete last round is dropped


def test_order_depends_on_seed_and_epoch_and_resumes_mid_epoch():
    sampler = EpochBatchSampler(50, 5, seed=1)
    sampler.set_position(epoch=0)
    epoch0 = list(sampler)
    sampler.set_position(epoch=1)
    assert list(sampler) != epoch0
    sampler.set_position(epoch=0, start_batch=6)
    assert list(sampler) == epoch0[6:]
    other = EpochBatchSampler(50, 5, seed=2)
    assert list(other) != epoch0


def test_batch_larger_than_dataset():
    with pytest.raises(DataError, match="--batch-size 64 x 2 process"):
        EpochBatchSampler(100, 64, seed=0, world_size=2)


def test_cached_images_equal_decoded_and_resized(tiny_rec):
    plain = prepare_dataset(tiny_rec, 8, cache="off", progress=False)
    cached = prepare_dataset(tiny_rec, 8, cache="on", progress=False)
    assert isinstance(cached, CachedImages) and not isinstance(plain, CachedImages)
    for index in (0, 17, 47):
        image, label = plain[index]
        cached_image, cached_label = cached[index]
        assert label == cached_label and torch.equal(image, cached_image)
    batch = cached.__getitems__([3, 5])
    assert torch.equal(batch[1][0], cached[5][0]) and batch[1][1] == cached[5][1]


def test_open_dataset_accepts_the_rec_file_itself(tiny_rec):
    assert len(open_dataset(tiny_rec / "train.rec")) == 48
    assert np.array_equal(open_dataset(tiny_rec).labels, np.repeat(np.arange(6), 8))


def test_key_images_are_other_images_of_the_rows_identity(tiny_rec):
    from core.data.batch import BatchLayout
    from core.data.loader import batch_order

    dataset = prepare_dataset(tiny_rec, 16, progress=False)
    _, order = batch_order(dataset, BatchLayout(key_images_per_row=3), batch_size=8, seed=1)
    labels = dataset.labels
    for items in order:
        for query, *keys in items:
            assert len(keys) == 3 and all(labels[key] == labels[query] and key != query for key in keys)
