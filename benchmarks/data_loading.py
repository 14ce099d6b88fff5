"""Decode + load throughput of the image pipeline (no network), by number of workers."""

from __future__ import annotations

import time
from pathlib import Path

from core.data.loader import EpochBatchSampler, make_loader, open_dataset
from core.data.transforms import ModelInputTransform
from core.errors import DataError


def images_per_second(data: str | Path, size: int, workers: int, batch_size: int, max_images: int) -> float:
    """Images/s through JPEG decode, resize, scaling and collation into batches."""
    dataset = open_dataset(data, transform=ModelInputTransform(size))
    sampler = EpochBatchSampler(len(dataset), batch_size, seed=0)
    loader = make_loader(dataset, sampler, workers, pin_memory=False)
    if len(sampler) < 2:
        raise DataError(f"--data {data}: {len(dataset)} images make {len(sampler)} batch(es) of {batch_size}; "
                        "timing needs two (one warms the workers up)")
    batches = max(1, min(len(sampler) - 1, max_images // batch_size))  # the warm-up batch is one of them
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)
