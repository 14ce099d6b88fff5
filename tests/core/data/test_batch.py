"""The typed batch: collation from dataset items, device layout, and the loader that serves it."""

import torch

from core.data.batch import Batch, BatchLayout, collate_batch
from core.data.loader import batch_order, make_loader, prepare_dataset


def test_collation_keeps_items_in_order_with_or_without_key_images():
    images = [torch.full((3, 2, 2), float(i)) for i in range(3)]
    plain = collate_batch([(image, label) for image, label in zip(images, [4, 0, 2])])
    assert plain.labels.tolist() == [4, 0, 2] and plain.labels.dtype == torch.int64 and plain.key_images is None
    assert [float(x[0, 0, 0]) for x in plain.images] == [0.0, 1.0, 2.0] and len(plain) == 3
    keyed = collate_batch([(image, 1, torch.stack([image + 10, image + 20])) for image in images])
    assert keyed.key_images.shape == (3, 2, 3, 2, 2) and float(keyed.key_images[2, 1, 0, 0, 0]) == 22.0


def test_channels_last_layout_keeps_every_value_and_shape():
    generator = torch.Generator().manual_seed(0)
    batch = Batch(torch.randn(2, 3, 4, 4, generator=generator), torch.tensor([1, 2]),
                  torch.randn(2, 3, 3, 4, 4, generator=generator))
    laid = batch.contiguous(torch.channels_last)
    assert laid.images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(laid.images, batch.images) and torch.equal(laid.key_images, batch.key_images)
    assert laid.key_images.shape == batch.key_images.shape and laid.labels is batch.labels


def test_the_loader_serves_what_the_layout_asks_for(tiny_rec):
    dataset = prepare_dataset(tiny_rec, 16, progress=False)
    for layout, keys in ((BatchLayout(), None), (BatchLayout(key_images_per_row=2), (8, 2, 3, 16, 16))):
        served, order = batch_order(dataset, layout, batch_size=8, seed=0)
        batch = next(iter(make_loader(served, order, workers=0, pin_memory=False)))
        assert isinstance(batch, Batch) and batch.images.shape == (8, 3, 16, 16)
        assert (None if batch.key_images is None else tuple(batch.key_images.shape)) == keys
