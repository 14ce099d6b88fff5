"""Decode + load throughput of the image pipeline (no network), by number of workers."""

from __future__ import annotations

import time
from pathlib import Path

from core.data.loader import EpochBatchSampler, make_loader, open_dataset
from core.data.transforms import ModelInputTransform


def images_per_second(data: str | Path, size: int, workers: int, batch_size: int, max_images: int) -> float:
    """Images/s through JPEG decode, resize, scaling and collation into batches."""
    dataset = open_dataset(data, transform=ModelInputTransform(size))
    sampler = EpochBatchSampler(len(dataset), batch_size, seed=0)
    loader = make_loader(dataset, sampler, workers, pin_memory=False)
    batches = max(1, min(len(sampler), max_images // batch_size))
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)
