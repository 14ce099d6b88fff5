"""The ClassSampler of a method whose softmax columns are rows of a CenterStore.

Partial FC is this sampler with one center per class; a center-based variant (sub-center
ArcFace: K prototypes per class) is this sampler with another row shape, plus whatever
it adds on top. ``store_from_options`` builds the store from the options every such
method shares (``CenterStoreOptions``) and what the trainer provides.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from core.center_store.options import CenterStoreOptions
from core.center_store.store import SAMPLINGS, CenterStore, storage_dtype
from core.data.batch import Batch
from core.errors import ConfigError
from core.sampler import ClassSampler, SamplerEnvironment, Selection


class CenterStoreSampler(ClassSampler):
    """Each step's columns: the batch's positives, topped up with sampled rows to ``int(sample_rate * C_local)``
    (at least one)."""

    def __init__(self, store: CenterStore, sample_rate: float, sampling: str = "uniform",
                 class_counts: Optional[np.ndarray] = None, batch_size: int = 0) -> None:
        """``class_counts`` (images per class) and ``batch_size`` (images per select, all ranks) only serve
        ``notes``: how many of the columns will be negatives."""
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ConfigError(f"--sample-rate must be in (0, 1], got {sample_rate}")
        if sampling not in SAMPLINGS:
            raise ConfigError(f"--pfc-sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
        self.store = store
        self.sample_rate = sample_rate
        self.sampling = sampling
        # At least one column: a rank whose shard holds none of a batch's labels must still take part in the
        # model-parallel softmax (a tiny shard times a small rate would otherwise give it no column at all).
        self.num_sample = max(1, int(sample_rate * store.shard_size))
        self.class_counts = class_counts
        self.batch_size = batch_size

    def notes(self) -> list[str]:
        """A warning when the batch's own classes fill (nearly) all the sampled columns: the softmax then sees
        (almost) no class outside the batch, which is not what a sample rate promises."""
        if self.class_counts is None or not self.batch_size or self.num_sample >= self.store.shard_size:
            return []
        start, size = self.store.shard_range()
        positives = expected_distinct_classes(self.class_counts, self.batch_size, start, size)
        negatives = max(0.0, self.num_sample - positives)
        if negatives >= NEGATIVES_NOTE_SHARE * self.num_sample:
            return []
        wanted = min(1.0, 2 * positives / size)  # as many negatives as positives
        return [f"--sample-rate {self.sample_rate:g} gives {self.num_sample} columns per step of this process's "
                f"{size:,} classes, and a batch of {self.batch_size} images holds about {positives:.0f} distinct "
                f"ones of them: about {negatives:.0f} sampled negatives per step, so the softmax sees "
                f"{'no class' if negatives < 1 else 'few classes'} outside the batch. With this few classes, "
                f"--sample-rate {wanted:.2g} or more (1.0: full softmax) gives as many negatives as positives"]
    def select(self, embeddings: torch.Tensor, batch: Batch) -> Selection:
        return self.store.select(embeddings, batch.labels, self.num_sample, self.sampling)

    def collect(self, selection: Selection) -> None:
        self.store.collect(selection)

    def step(self, lr: float) -> None:
        self.store.step(lr)

    def discard_step(self) -> None:
        self.store.discard_step()

    def sharded_state_names(self) -> list[str]:
        return [f"store.{name}" for name in self.store.sharded_state_names()]

    def shard_range(self) -> tuple[int, int]:
        return self.store.shard_range()

    def class_statistics(self) -> dict[str, torch.Tensor]:
        return self.store.class_statistics()


# Fewer expected negatives than this share of the sampled columns is worth a note.
NEGATIVES_NOTE_SHARE = 0.1


def expected_distinct_classes(class_counts: np.ndarray, batch_size: int, start: int, size: int) -> float:
    """Expected number of distinct classes ``start .. start+size`` among ``batch_size`` images drawn at random
    (with replacement: close to the loader's draw without it when classes hold many images)."""
    counts = np.asarray(class_counts, dtype=np.float64)
    share = counts[start:start + size] / max(counts.sum(), 1.0)
    return float((1.0 - np.power(1.0 - share, batch_size)).sum())


def store_from_options(options: CenterStoreOptions, environment: SamplerEnvironment,
                       row_shape: tuple[int, ...]) -> CenterStore:
    """This rank's store, following the backbone's optimizer settings (the center rows are trained alike)."""
    context = environment.context
    return CenterStore(environment.num_classes, row_shape, environment.optimizer, environment.momentum,
                       environment.weight_decay, environment.seed, context.rank, context.world_size,
                       environment.device, storage_dtype=storage_dtype(options.center_dtype),
                       head_kernel=options.head_kernel)
